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
//! - a jwt-bearer assertion (RFC 7523) is verified like a subject token, but its
//!   `aud` may name the STS's issuer *or* its token endpoint URL (RFC 7523 §3 allows
//!   either for the authorization server), and a trust with `single_use_assertions`
//!   has each assertion's `jti` spent once ([`replay`]);
//! - JWKS fetches are counted per trust and failures logged.
//!
//! May import `config` (the `[[trust]]` entries), `secret` and `telemetry`; the
//! catalogue and both programs import it, never the reverse.

pub mod principal;
pub mod replay;
pub mod spiffe;

use std::ops::Deref;
use std::sync::Arc;

use agent_sts_verifier::jwks::FetchObserver;
use agent_sts_verifier::{IssuerConfig, IssuerSet, Limits, VerifiedJwt};

pub use agent_sts_verifier::{JwksError, JwtError, unix_now};

use crate::config::TrustConfig;
use crate::identity::replay::{ReplayError, SpentAssertions};
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
    /// The audiences a jwt-bearer assertion may name: the issuer and `{issuer}/token`.
    assertion_audiences: [String; 2],
    /// Trusts whose assertions are single-use, with their leeway (seconds).
    single_use: Vec<(Arc<str>, u64)>,
    spent: SpentAssertions,
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
            assertion_audiences: [
                own_issuer.to_string(),
                format!("{}/token", own_issuer.trim_end_matches('/')),
            ],
            single_use: trusts
                .iter()
                .filter(|t| t.single_use_assertions)
                .map(|t| (t.name.as_str().into(), t.leeway.as_secs()))
                .collect(),
            spent: SpentAssertions::new(replay::DEFAULT_CAPACITY),
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
        self.admit(jwt)
    }

    /// Verifies a jwt-bearer `assertion` (RFC 7523 §3) at `now`: as a subject token,
    /// except that its `aud` may name this STS's issuer or its token endpoint URL. Its
    /// `jti` is not spent here: see [`TrustStore::spend_assertion`].
    pub async fn verify_assertion(
        &self,
        assertion: &SubjectToken,
        now: u64,
    ) -> Result<VerifiedToken, JwtError> {
        let [issuer, token_endpoint] = &self.assertion_audiences;
        let jwt = self
            .issuers
            .verify_for(assertion.expose(), now, &[issuer, token_endpoint])
            .await?;
        self.admit(jwt)
    }

    /// Spends a verified assertion's `jti` when its trust has `single_use_assertions`
    /// (a no-op for other trusts): the second presentation within its lifetime is
    /// refused. Call once the agent is known to be within its rate limit.
    pub fn spend_assertion(&self, assertion: &VerifiedToken, now: u64) -> Result<(), ReplayError> {
        let Some((_, leeway)) = self.single_use.iter().find(|(t, _)| *t == assertion.trust) else {
            return Ok(());
        };
        let jti = match assertion.claims.get("jti") {
            Some(serde_json::Value::String(j)) if !j.is_empty() => j,
            _ => {
                return Err(ReplayError::MissingJti {
                    trust: assertion.trust.to_string(),
                });
            }
        };
        self.spent.spend(
            &assertion.trust,
            jti,
            assertion.expires_at.saturating_add(*leeway),
            now,
        )
    }

    /// How many single-use assertions are spent and still remembered.
    pub fn spent_len(&self) -> usize {
        self.spent.len()
    }

    /// Whether no single-use assertion is remembered.
    pub fn spent_is_empty(&self) -> bool {
        self.spent.is_empty()
    }

    /// The STS's own rules over a token the issuer set verified.
    fn admit(&self, jwt: Arc<agent_sts_verifier::VerifiedJwt>) -> Result<VerifiedToken, JwtError> {
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
