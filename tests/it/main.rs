//! Integration tests: one binary, real HTTP on 127.0.0.1:0 against real servers.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

mod attacks;
mod catalogue_reload;
mod cli;
mod delegation;
mod dpop;
mod example;
mod exchange;
mod faults;
mod harness;
mod jwt_bearer;
mod key_removal;
mod kill_switch;
mod leaks;
mod openbao;
mod operations;
mod process;
mod resource_metadata;
mod rotation;
mod router;
mod shim;
mod streaming;
mod telemetry;
mod tenants;
mod transit;
mod vault;
mod vault_auth;
mod vault_recorded;
mod verifier;
