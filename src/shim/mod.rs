//! `agent-sts shim`: the credential-injecting reverse proxy (README, "The shim").
//!
//! - [`proxy`]: the request pipeline (frame, verify, authorise, strip and inject,
//!   forward, scrub, audit) and its assembly;
//! - [`request_target`]: the one canonical origin-form path the shim matches and
//!   forwards;
//! - [`method_override`]: `_method` and its kin, in the query and in form, multipart
//!   and JSON bodies;
//! - [`scrub`]: removing the credential, in every encoding, from what comes back;
//! - [`stream`]: answers relayed as they arrive, scrubbed on the way, with their
//!   completion record;
//! - [`upstream`]: the upstream hop, hyper's pooled client over rustls;
//! - [`error`]: every refusal, sorted by who is at fault, as an RFC 6750 response;
//! - [`resource_metadata`]: the RFC 9728 document, served here and never forwarded,
//!   and the `resource_metadata` every challenge points at.
//!
//! Tokens are checked with the `agent-sts-verifier` crate, exactly as a downstream
//! service would. May import `catalogue`, `store`, `audit`, `telemetry`, `config`,
//! `runtime` and `secret`; never `sts`.

pub mod error;
pub mod method_override;
pub mod proxy;
pub mod request_target;
pub mod resource_metadata;
pub mod scrub;
pub mod stream;
pub(crate) mod upstream;

pub use proxy::{Shim, ShimApp, build};
