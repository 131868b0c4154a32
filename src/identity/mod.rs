//! Workload identity: the STS's trust policy over the verifier crate's JOSE machinery.
//!
//! Verification itself (issuer match, keys from the configured JWKS only, algorithm
//! allow-list, strict claims, JWKS caching and refetch limits, the verified-token
//! cache) is [`agent_sts_verifier::IssuerSet`]; see the README's "Workload identity"
//! section. What the STS adds here:
//! - the audience every subject and actor token must carry is this STS's issuer;
//! - a token this STS issued is refused as a subject token ([`JwtError::RefusedIssuer`])
//!   until delegation chains define how a re-exchange may only narrow;
//! - each verified identity carries its trust's SPIFFE trust domains, for the
//!   catalogue's unprefixed `spiffe://` patterns, and a subject that claims to be a
//!   SPIFFE ID must be a valid one ([`spiffe`]) before any pattern sees it;
//! - a token carrying `act` (itself delegated) is refused: its chain would be lost;
//! - JWKS fetches are counted per trust and failures logged.
//!
//! May import `config` (the `[[trust]]` entries), `secret` and `telemetry`; the
//! catalogue and both programs import it, never the reverse.

pub mod principal;
pub mod spiffe;

use std::ops::Deref;
use std::sync::Arc;

use agent_sts_verifier::jwks::FetchObserver;
use agent_sts_verifier::{IssuerConfig, IssuerSet, Limits, VerifiedJwt};

pub use agent_sts_verifier::{JwksError, JwtError, unix_now};

use crate::config::TrustConfig;
use crate::secret::SubjectToken;
use crate::telemetry::metrics::Metrics;

/// A workload (or delegating user) token that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub jwt: Arc<VerifiedJwt>,
    /// The trust's `spiffe_trust_domains`.
    pub spiffe_domains: Arc<[String]>,
}

impl Deref for VerifiedToken {
    type Target = VerifiedJwt;

    fn deref(&self) -> &VerifiedJwt {
        &self.jwt
    }
}

/// All configured trusts: verifies subject and actor tokens.
#[derive(Debug)]
pub struct TrustStore {
    issuers: IssuerSet,
    /// Per trust name, its SPIFFE trust domains.
    spiffe_domains: Vec<(Arc<str>, Arc<[String]>)>,
}

impl TrustStore {
    /// Builds the store for `trusts`, accepting tokens whose audience is `own_issuer`
    /// and refusing tokens it issued. No key is fetched until first needed.
    pub fn new(
        trusts: &[TrustConfig],
        own_issuer: &str,
        limits: &Limits,
        metrics: Arc<Metrics>,
    ) -> Result<Self, reqwest::Error> {
        let issuers: Vec<IssuerConfig> = trusts.iter().map(TrustConfig::issuer_config).collect();
        let observer: FetchObserver = Arc::new(move |trust, outcome| match outcome {
            Ok(()) => metrics.jwks_fetch(trust, "ok", unix_now()),
            Err(reason) => {
                metrics.jwks_fetch(trust, "error", unix_now());
                tracing::warn!(trust, %reason, "JWKS fetch failed; keeping the last good keys until they are stale");
            }
        });
        Ok(TrustStore {
            issuers: IssuerSet::new(&issuers, own_issuer, limits, Some(observer))?
                .refuse_issuer(own_issuer),
            spiffe_domains: trusts
                .iter()
                .map(|t| {
                    (
                        t.name.as_str().into(),
                        t.spiffe_trust_domains.clone().into(),
                    )
                })
                .collect(),
        })
    }

    /// Verifies `token` at time `now` (unix seconds) against its issuer's configured
    /// keys and the claim rules; results are cached until the token expires.
    pub async fn verify(&self, token: &SubjectToken, now: u64) -> Result<VerifiedToken, JwtError> {
        let jwt = self.issuers.verify(token.expose(), now).await?;
        let claim_error = |claim, problem| JwtError::Claim {
            trust: jwt.trust.to_string(),
            claim,
            problem,
        };
        if spiffe::looks_like_spiffe(&jwt.subject) {
            spiffe::is_valid_spiffe_id(&jwt.subject).map_err(|p| claim_error("sub", p))?;
        }
        // A workload token that is itself delegated: its chain would be dropped here,
        // so it is refused until delegation chains define how one may only narrow.
        if jwt.claims.contains_key("act") {
            return Err(claim_error(
                "act",
                "delegated workload tokens are not accepted",
            ));
        }
        let spiffe_domains = self
            .spiffe_domains
            .iter()
            .find(|(name, _)| *name == jwt.trust)
            .map(|(_, domains)| domains.clone())
            .unwrap_or_else(|| Arc::from(Vec::new()));
        Ok(VerifiedToken {
            jwt,
            spiffe_domains,
        })
    }
}
