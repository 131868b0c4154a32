//! agent-sts-verifier: how a downstream service checks agent-sts access tokens offline,
//! through the STS's JWKS alone, without depending on the STS itself.
//!
//! The layers, bottom up (each a module):
//! - [`jose`]: compact JWS and protected-header parsing (RFC 7515), the algorithm
//!   allow-list ([`Algorithm`]: asymmetric only, so `none` and `HS*` never parse);
//! - [`jwk`]: JWKs (RFC 7517/7518) to public keys parsed once with aws-lc-rs;
//! - [`jwks`]: fetching and caching one issuer's key set (size and time caps, same-origin
//!   redirects only, `Cache-Control: max-age`, one refetch on an unknown `kid` then a
//!   cooldown; a fetched set replaces the last, even an empty one, and only a failed
//!   fetch keeps the last good keys, up to a staleness bound);
//! - [`claims`]: strictly typed registered claims (RFC 7519 §4.1) with explicit leeway;
//! - [`issuers`]: a set of trusted issuers verifying any JWT from one of them, with a
//!   cache of verified tokens that never outlives them (agent-sts verifies workload
//!   identities with it); a cached verification holds only while its key is published;
//! - [`dpop`]: DPoP proofs (RFC 9449): the §4.3 checks, the RFC 7638 thumbprint a
//!   token is bound to, a replay cache and stateless server nonces;
//! - [`access_token`]: the RFC 9068 access-token profile agent-sts mints, for one
//!   expected issuer and audience;
//! - `layer` (feature `tower`, on by default): a tower [`Layer`](layer::RequireAccessToken)
//!   that refuses requests without a valid token (RFC 6750 §3) and hands the verified
//!   [`AccessToken`] to the handler as a request extension.
//!
//! Key selection never follows the token: `jku`, `x5u`, `jwk` and `x5c` are not read,
//! `kid` only picks among keys already fetched from the configured JWKS, and the
//! algorithm must fit the key. Errors carry no token content.
#![forbid(unsafe_code)]
#![doc = include_str!("../README.md")]

pub mod access_token;
mod base64url;
pub mod claims;
pub mod deny;
pub mod dpop;
pub mod error;
pub mod glob;
pub mod issuers;
pub mod jose;
pub mod jwk;
pub mod jwks;
#[cfg(feature = "tower")]
pub mod layer;

pub use access_token::{
    AccessToken, Actor, Presented, RequestTarget, Verifier, VerifierBuilder, VerifierError,
    VerifyError,
};
pub use dpop::{DpopError, DpopRules, DpopVerifier, NonceSource, Proof, ProofTarget};
pub use error::{JwksError, JwtError};
pub use issuers::{IssuerConfig, IssuerSet, Limits, VerifiedJwt};
pub use jose::Algorithm;
pub use jwks::{KeySource, LocalJwks};
#[cfg(feature = "tower")]
pub use layer::RequireAccessToken;

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
