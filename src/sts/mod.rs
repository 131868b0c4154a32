//! The token service: `POST /token` from the wire to a minted token, and the STS's
//! other endpoints (JWKS, metadata, health, metrics).
//!
//! - [`token_exchange`]: the RFC 8693 form, parsed into a checked request (no HTTP);
//! - [`exchange`]: the decision, step by step, and its audit record;
//! - [`delegation`]: a sub-agent's token from its parent's (chains that only narrow);
//! - [`mint`]: the RFC 9068 access token;
//! - [`rate_limit`]: per verified agent;
//! - [`revocation`]: RFC 7009 `POST /revoke`, and checking tokens this STS minted;
//! - [`introspection`]: RFC 7662 `POST /introspect` for the services allowed to ask;
//! - [`oauth_error`]: the RFC 6749 §5.2 error table (no HTTP);
//! - [`http`]: the axum router, thin handlers and protective layers (the only place
//!   that turns a refusal into a response);
//! - [`app`]: assembly from a validated configuration;
//! - [`issuers`]: the top-level issuer and the `[[tenant]]` issuers beside it, their
//!   routing, background refreshers and reload.
//!
//! May import every component folder (`identity`, `catalogue`, `keys`, `store`,
//! `audit`, `telemetry`) and `runtime`; nothing imports `sts` but `dev` and `main`.

pub mod app;
pub mod delegation;
pub mod exchange;
pub mod http;
pub mod introspection;
pub mod issuers;
pub mod mint;
pub mod oauth_error;
pub mod rate_limit;
pub mod revocation;
pub mod token_exchange;

pub use app::{App, build, trust_directory};
pub use exchange::{Issued, Sts};
