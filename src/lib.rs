//! agent-sts: a security token service for AI agents.
//!
//! An agent proves who it is with its workload identity (a JWT from a trusted issuer),
//! asks `POST /token` (RFC 8693 token exchange) for exactly one catalogue action, and
//! gets back a minutes-lived, one-audience JWT access token (RFC 9068) that downstream
//! services verify offline through `/.well-known/jwks.json`. The README maps each
//! module to its concern; the flow of one exchange is in [`sts`].
#![forbid(unsafe_code)]

pub mod app;
pub mod audit;
pub mod catalogue;
pub mod config;
pub mod dev;
pub mod echo;
pub mod keys;
pub mod metrics;
pub mod mint;
pub mod oauth_error;
pub mod rate_limit;
pub mod request_target;
pub mod scrub;
pub mod secret;
pub mod secrets;
pub mod server;
pub mod shim;
pub mod shim_error;
pub mod signing_key;
pub mod sts;
pub mod token_exchange;
pub mod trust;
pub mod vault;
