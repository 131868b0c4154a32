//! The verifier library: how a downstream service, or the shim, checks agent-sts
//! access tokens offline, through the STS's JWKS only (RFC 9068 §4).
//!
//! It is the workload-identity machinery of `trust.rs` pointed at the STS: one trust
//! whose issuer is the STS and whose expected audience is the caller's own, so it
//! inherits everything there (JWKS fetched with size and time caps and same-origin
//! redirects only, cached, one refetch on an unknown kid then a cooldown, the last good
//! keys kept while the STS is down or serves garbage, the algorithm taken from the key
//! and never from the header, strict claim types with an explicit leeway, a cache of
//! verified tokens that never outlives them). On top it checks what makes the token an
//! agent-sts access token: `typ` is `at+jwt`, and `jti`, `client_id` and a single-action
//! `scope` are present, with `act` well-formed when there.
//!
//! ```no_run
//! # async fn example(token: &str) -> Result<(), Box<dyn std::error::Error>> {
//! use agent_sts::verifier::Verifier;
//! let verifier = Verifier::new(
//!     "https://sts.example.org",
//!     "https://github-shim.internal",
//!     "https://sts.example.org/.well-known/jwks.json",
//! )?;
//! let token = verifier.verify(token, agent_sts::trust::unix_now()).await?;
//! assert_eq!(token.action, "github.issues.create");
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::config::{
    IssuerAlgorithm, JwksSource, LimitsConfig, MAX_TOKEN_TTL, TrustConfig, parse_jwks_uri,
};
use crate::metrics::Metrics;
use crate::mint::Actor;
use crate::secret::SubjectToken;
use crate::trust::{TrustError, TrustStore};

/// Clock skew allowed on `exp` and `nbf`.
pub const LEEWAY: Duration = Duration::from_secs(30);

/// A verified agent-sts access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessToken {
    /// `sub`: the agent, or the delegating user.
    pub subject: String,
    /// `act`, when delegated: the agent acting for the subject.
    pub actor: Option<Actor>,
    /// `scope`: the one catalogue action.
    pub action: String,
    /// `client_id`: the agent as `TRUST:SUB`.
    pub client_id: String,
    pub jti: String,
    /// `exp`, unix seconds.
    pub expires_at: u64,
}

/// Why a token was refused. Carries no token content.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error(transparent)]
    Token(#[from] TrustError),
    #[error("not an access token: typ is not at+jwt")]
    NotAccessToken,
    #[error("claim {0} is missing or malformed")]
    Claim(&'static str),
}

/// Why a verifier could not be built.
#[derive(Debug, thiserror::Error)]
pub enum VerifierError {
    #[error("jwks_uri: {0}")]
    JwksUri(&'static str),
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Verifies agent-sts tokens for one audience.
#[derive(Debug)]
pub struct Verifier {
    store: TrustStore,
}

impl Verifier {
    /// A verifier accepting tokens from `issuer` (the STS) for `audience` (this
    /// service), with keys from `jwks_uri` (https, or http on loopback).
    pub fn new(issuer: &str, audience: &str, jwks_uri: &str) -> Result<Verifier, VerifierError> {
        Self::with_limits(issuer, audience, jwks_uri, &LimitsConfig::default())
    }

    /// Like [`new`](Self::new), with the token size cap, JWKS fetch limits and cache
    /// capacity of `limits` (the shim passes its `[limits]`).
    pub fn with_limits(
        issuer: &str,
        audience: &str,
        jwks_uri: &str,
        limits: &LimitsConfig,
    ) -> Result<Verifier, VerifierError> {
        let url = parse_jwks_uri(jwks_uri).map_err(VerifierError::JwksUri)?;
        let trust = TrustConfig {
            name: "sts".into(),
            issuer: issuer.to_string(),
            jwks: JwksSource::Uri(url),
            algorithms: vec![IssuerAlgorithm::ES256, IssuerAlgorithm::EdDSA],
            spiffe_trust_domains: Vec::new(),
            max_token_lifetime: MAX_TOKEN_TTL,
            leeway: LEEWAY,
            jwks_refresh: Duration::from_secs(300),
            jwks_max_stale: Duration::from_secs(3600),
        };
        // The expected audience stands where the STS puts its own issuer.
        let store = TrustStore::new(&[trust], audience, limits, Arc::new(Metrics::new()))?;
        Ok(Verifier { store })
    }

    /// Verifies `token` at `now` (unix seconds).
    pub async fn verify(&self, token: &str, now: u64) -> Result<AccessToken, VerifyError> {
        let verified = self.store.verify(&SubjectToken::new(token), now).await?;
        // RFC 9068 §4: `typ` compared case-insensitively, with or without the
        // `application/` prefix.
        let typ = verified.typ.as_deref().unwrap_or("").to_ascii_lowercase();
        if typ != "at+jwt" && typ != "application/at+jwt" {
            return Err(VerifyError::NotAccessToken);
        }
        let c = &verified.claims;
        let text = |name: &'static str| {
            c.get(name)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or(VerifyError::Claim(name))
        };
        let action = text("scope")?;
        if action.contains(' ') {
            return Err(VerifyError::Claim("scope"));
        }
        let actor = match c.get("act") {
            None => None,
            Some(act) => {
                let field = |k: &str| act.get(k).and_then(Value::as_str).map(str::to_string);
                match (field("sub"), field("iss")) {
                    (Some(sub), Some(iss)) => Some(Actor { sub, iss }),
                    _ => return Err(VerifyError::Claim("act")),
                }
            }
        };
        Ok(AccessToken {
            subject: verified.subject.clone(),
            actor,
            action,
            client_id: text("client_id")?,
            jti: text("jti")?,
            expires_at: verified.expires_at,
        })
    }
}
