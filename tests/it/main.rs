//! Integration tests: one binary, real HTTP on 127.0.0.1:0 against real servers.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

mod attacks;
mod catalogue_reload;
mod cli;
mod exchange;
mod faults;
mod harness;
mod leaks;
mod process;
mod rotation;
mod router;
mod rvault;
mod shim;
mod vault;
mod vault_recorded;
mod verifier;
