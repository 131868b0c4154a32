//! The access tokens agent-sts mints (RFC 9068), verified for one expected issuer (the
//! STS) and one expected audience (this service), with keys from the STS's JWKS only.
//!
//! On top of [`crate::issuers`] (keys, signature, registered claims) it checks what
//! makes the token an agent-sts access token (RFC 9068 §4): `typ` is `at+jwt`
//! (case-insensitive, with or without the `application/` prefix), `jti` and
//! `client_id` are present, `scope` names exactly one action, and `act` (RFC 8693 §4.1)
//! is well-formed when present.
//!
//! A token bound to a DPoP key (`cnf.jkt`, RFC 9449 §6.1) is worth nothing without
//! that key: [`Verifier::verify_presented`] accepts it only as `Authorization: DPoP`
//! with a proof ([`crate::dpop`]) for this request, signed by that key, carrying the
//! token's hash; sent as `Bearer` it is refused (the downgrade of §7.1).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::deny::{
    DEFAULT_DENY_MAX_STALE, DEFAULT_DENY_REFRESH, DenyList, FEED_PATH, FEED_TYPE, FeedCache,
    FeedError, FeedSettings, MAX_FEED_BYTES, feed_url_beside,
};
use crate::dpop::{DpopError, DpopRules, DpopVerifier, NonceSource, ProofTarget};
use crate::error::JwtError;
use crate::issuers::{IssuerConfig, IssuerSet, Limits, VerifiedJwt};
use crate::jose::Algorithm;
use crate::jwks::KeySource;

/// Clock skew allowed on `exp` and `nbf`.
pub const LEEWAY: Duration = Duration::from_secs(30);

/// Longest lifetime of an access token the STS can mint (its `max_ttl` cap).
pub const MAX_ACCESS_TOKEN_LIFETIME: Duration = Duration::from_secs(60 * 60);

/// Default for how long the STS's keys are used before a refetch (the JWKS's own
/// `max-age` wins when shorter): a key the STS stops publishing stops verifying here
/// at the next successful fetch, so this bounds how long a removed key keeps working.
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(300);

/// Default for how long the last good keys keep serving while the STS's JWKS cannot
/// be fetched (an outage: transport failure, non-2xx, not a JWK set). A fetched set,
/// even an empty one, replaces them at once.
pub const DEFAULT_JWKS_MAX_STALE: Duration = Duration::from_secs(3600);

/// The actor of a delegated token (RFC 8693 §4.1): the agent acting now, and in
/// `act` the one it acts for when that one was itself delegated (the newest actor
/// outermost).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Actor {
    pub sub: String,
    pub iss: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

/// Deepest `act` nesting a token may carry.
pub const MAX_ACTOR_DEPTH: usize = 8;

impl Actor {
    /// This actor and every one below it, newest first.
    pub fn chain(&self) -> impl Iterator<Item = &Actor> {
        std::iter::successors(Some(self), |a| a.act.as_deref())
    }

    /// The `act` claim, checked: `sub` and `iss` strings at every level, at most
    /// [`MAX_ACTOR_DEPTH`] levels, nothing else read.
    fn from_claim(act: &Value, depth: usize) -> Option<Actor> {
        if depth >= MAX_ACTOR_DEPTH {
            return None;
        }
        let field = |k: &str| {
            act.get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let inner = match act.get("act") {
            None => None,
            Some(inner) => Some(Box::new(Actor::from_claim(inner, depth + 1)?)),
        };
        Some(Actor {
            sub: field("sub")?,
            iss: field("iss")?,
            act: inner,
        })
    }
}

/// A verified agent-sts access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessToken {
    /// `iss`: the STS that minted it.
    pub issuer: String,
    /// `sub`: the agent, or the delegating user.
    pub subject: String,
    /// `act`, when delegated: the agent acting for the subject, and below it the
    /// chain of agents that delegated to it.
    pub actor: Option<Actor>,
    /// `scope`: the one catalogue action.
    pub action: String,
    /// `client_id`: the agent as `TRUST:SUB`.
    pub client_id: String,
    pub jti: String,
    /// `exp`, unix seconds.
    pub expires_at: u64,
    /// `cnf.jkt`: the thumbprint of the DPoP key the token is bound to.
    pub jkt: Option<String>,
}

/// An access token as a request presents it.
#[derive(Debug, Clone, Copy)]
pub enum Presented<'a> {
    /// `Authorization: Bearer <token>` (RFC 6750 §2.1).
    Bearer(&'a str),
    /// `Authorization: DPoP <token>` and the `DPoP` proof header (RFC 9449 §7.1).
    Dpop { token: &'a str, proof: &'a str },
}

/// The request a presented token must be for (DPoP's `htm` and `htu`).
#[derive(Debug, Clone, Copy)]
pub struct RequestTarget<'a> {
    pub method: &'a str,
    /// The URL the client addressed, as it sent it (its public form).
    pub url: &'a str,
}

/// Why a token was refused. Carries no token content.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error(transparent)]
    Token(#[from] JwtError),
    #[error("not an access token: typ is not at+jwt")]
    NotAccessToken,
    #[error("claim {0} is missing or malformed")]
    Claim(&'static str),
    #[error(transparent)]
    Dpop(#[from] DpopError),
    #[error("a DPoP-bound token was sent as a bearer token")]
    Downgrade,
    #[error("a token without a DPoP binding was sent with the DPoP scheme")]
    NotBound,
    /// The token matches deny-list entry `entry` (the kill switch, or a revocation).
    #[error("the token is refused by deny-list entry {entry}")]
    Denied { entry: String },
    /// No deny list fresh enough to check tokens against: every token is refused.
    #[error("the STS's deny list could not be read for longer than allowed")]
    DenyListUnavailable,
    /// The STS no longer serves the token's issuer (its deny-list feed answers 404: a
    /// removed tenant): every token of it is refused.
    #[error("the token's issuer was removed")]
    IssuerWithdrawn,
}

/// Why a verifier could not be built.
#[derive(Debug, thiserror::Error)]
pub enum VerifierError {
    #[error("jwks_uri: {0}")]
    JwksUri(&'static str),
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("{0}: must be greater than zero")]
    ZeroDuration(&'static str),
    #[error("deny_feed_uri: {0}")]
    DenyFeed(&'static str),
}

/// Verifies agent-sts access tokens for one audience.
#[derive(Debug)]
pub struct Verifier {
    issuers: IssuerSet,
    audience: String,
    /// DPoP proofs seen, for bound tokens.
    proofs: DpopVerifier,
    /// When set, proofs must carry one of its nonces (RFC 9449 §9).
    nonces: Option<NonceSource>,
    /// The STS's deny list, unless turned off ([`VerifierBuilder::without_deny_feed`]).
    deny: Option<FeedCache>,
}

/// Builds a [`Verifier`] ([`Verifier::builder`]).
#[derive(Debug, Clone)]
#[must_use]
pub struct VerifierBuilder {
    issuer: String,
    audience: String,
    jwks_uri: String,
    limits: Limits,
    jwks_refresh: Duration,
    jwks_max_stale: Duration,
    nonce_secret: Option<NonceSecret>,
    deny: DenySettings,
}

/// How the deny-list feed is read.
#[derive(Debug, Clone)]
struct DenySettings {
    enabled: bool,
    uri: Option<String>,
    refresh: Duration,
    max_stale: Duration,
}

/// The nonce secret, never printed.
#[derive(Clone)]
struct NonceSecret(Vec<u8>);

impl std::fmt::Debug for NonceSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceSecret([redacted])")
    }
}

impl VerifierBuilder {
    /// Requires DPoP proofs to carry a server nonce (RFC 9449 §9) made from `secret`
    /// (at least 32 bytes, shared by every replica of the service): a proof without a
    /// current one is refused with `use_dpop_nonce`, and [`Verifier::dpop_nonce`] gives
    /// the nonce to send in `DPoP-Nonce`.
    pub fn dpop_nonces(mut self, secret: &[u8]) -> Self {
        self.nonce_secret = Some(NonceSecret(secret.to_vec()));
        self
    }

    /// The token size cap, JWKS fetch limits (including the refetch cooldown) and
    /// cache capacity.
    pub fn limits(mut self, limits: &Limits) -> Self {
        self.limits = *limits;
        self
    }

    /// How long fetched keys are used before the next request refetches them
    /// (default [`DEFAULT_JWKS_REFRESH`]; the JWKS's `Cache-Control: max-age` wins when
    /// shorter). A key the STS stops publishing stops verifying at the next successful
    /// fetch, cached verifications included.
    pub fn jwks_refresh(mut self, refresh: Duration) -> Self {
        self.jwks_refresh = refresh;
        self
    }

    /// How long the last good keys keep serving while the JWKS cannot be fetched
    /// (default [`DEFAULT_JWKS_MAX_STALE`]); after that, verification fails closed.
    pub fn jwks_max_stale(mut self, max_stale: Duration) -> Self {
        self.jwks_max_stale = max_stale;
        self
    }

    /// How often the STS's deny list is re-read (default [`DEFAULT_DENY_REFRESH`]): a
    /// denied agent's live tokens are refused here at most this long (plus the STS's
    /// own refresh of the list) after `agent-sts deny add`.
    pub fn deny_refresh(mut self, refresh: Duration) -> Self {
        self.deny.refresh = refresh;
        self
    }

    /// How long the last good deny list keeps serving while the feed cannot be read
    /// (default [`DEFAULT_DENY_MAX_STALE`]); after that every token is refused.
    pub fn deny_max_stale(mut self, max_stale: Duration) -> Self {
        self.deny.max_stale = max_stale;
        self
    }

    /// Where the deny-list feed is read (https, or http on loopback). By default it
    /// sits beside the JWKS: `.../.well-known/jwks.json` → `.../deny-list`.
    pub fn deny_feed_uri(mut self, uri: &str) -> Self {
        self.deny.uri = Some(uri.to_string());
        self
    }

    /// Turns the deny-list feed off: tokens the STS has been told to stop keep working
    /// here until they expire. For verifiers of an issuer that publishes no feed.
    pub fn without_deny_feed(mut self) -> Self {
        self.deny.enabled = false;
        self
    }

    /// The verifier; fails on a `jwks_uri` or deny feed URL that is not https (or http
    /// on loopback), a zero refresh or staleness bound, or an HTTP client that cannot
    /// be built.
    pub fn build(self) -> Result<Verifier, VerifierError> {
        for (name, d) in [
            ("jwks_refresh", self.jwks_refresh),
            ("jwks_max_stale", self.jwks_max_stale),
            ("deny_refresh", self.deny.refresh),
            ("deny_max_stale", self.deny.max_stale),
        ] {
            if d.is_zero() {
                return Err(VerifierError::ZeroDuration(name));
            }
        }
        let deny = match &self.deny {
            DenySettings { enabled: false, .. } => None,
            settings => {
                let uri = match &settings.uri {
                    Some(uri) => uri.clone(),
                    None => feed_url_beside(&self.jwks_uri).ok_or(VerifierError::DenyFeed(
                        "the jwks_uri does not end in /.well-known/jwks.json: set the feed's URL",
                    ))?,
                };
                Some(FeedCache::new(FeedSettings {
                    url: crate::jwks::parse_jwks_uri(&uri).map_err(VerifierError::DenyFeed)?,
                    audience: format!("{}{FEED_PATH}", self.issuer.trim_end_matches('/')),
                    refresh: settings.refresh,
                    max_stale: settings.max_stale.max(settings.refresh),
                }))
            }
        };
        let sts = IssuerConfig {
            name: "sts".into(),
            issuer: self.issuer,
            keys: KeySource::uri(&self.jwks_uri).map_err(VerifierError::JwksUri)?,
            algorithms: vec![Algorithm::ES256, Algorithm::EdDSA],
            max_token_lifetime: MAX_ACCESS_TOKEN_LIFETIME,
            leeway: LEEWAY,
            jwks_refresh: self.jwks_refresh,
            jwks_max_stale: self.jwks_max_stale,
        };
        let issuers = IssuerSet::new(&[sts], &self.audience, &self.limits, None)?;
        let rules = DpopRules::default();
        let nonces = self
            .nonce_secret
            .map(|secret| NonceSource::new(&secret.0, rules.max_age));
        Ok(Verifier {
            issuers,
            audience: self.audience,
            proofs: DpopVerifier::new(rules),
            nonces,
            deny,
        })
    }
}

impl Verifier {
    /// A verifier accepting tokens from `expected_issuer` (the STS) for
    /// `expected_audience` (this service), with keys from `jwks_uri` (https, or http
    /// on loopback), and the default limits and JWKS freshness.
    pub fn new(
        expected_issuer: &str,
        expected_audience: &str,
        jwks_uri: &str,
    ) -> Result<Verifier, VerifierError> {
        Self::builder(expected_issuer, expected_audience, jwks_uri).build()
    }

    /// Like [`new`](Self::new), with the token size cap, JWKS fetch limits and cache
    /// capacity of `limits`.
    pub fn with_limits(
        expected_issuer: &str,
        expected_audience: &str,
        jwks_uri: &str,
        limits: &Limits,
    ) -> Result<Verifier, VerifierError> {
        Self::builder(expected_issuer, expected_audience, jwks_uri)
            .limits(limits)
            .build()
    }

    /// A [`VerifierBuilder`] for the same three values as [`new`](Self::new), to set
    /// the limits and how fresh the STS's keys are kept.
    pub fn builder(
        expected_issuer: &str,
        expected_audience: &str,
        jwks_uri: &str,
    ) -> VerifierBuilder {
        VerifierBuilder {
            issuer: expected_issuer.to_string(),
            audience: expected_audience.to_string(),
            jwks_uri: jwks_uri.to_string(),
            limits: Limits::default(),
            jwks_refresh: DEFAULT_JWKS_REFRESH,
            jwks_max_stale: DEFAULT_JWKS_MAX_STALE,
            nonce_secret: None,
            deny: DenySettings {
                enabled: true,
                uri: None,
                refresh: DEFAULT_DENY_REFRESH,
                max_stale: DEFAULT_DENY_MAX_STALE,
            },
        }
    }

    /// The audience this verifier accepts (this service's URL).
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The `DPoP-Nonce` to hand out at `now`, when nonces are required.
    pub fn dpop_nonce(&self, now: u64) -> Option<String> {
        self.nonces.as_ref().map(|n| n.issue(now))
    }

    /// The DPoP proof checker (its rules, and the replay cache's size).
    pub fn proofs(&self) -> &DpopVerifier {
        &self.proofs
    }

    /// Verifies a token as presented with a request to `target` at `now`: a bearer
    /// token as [`verify`](Self::verify) does; a DPoP-bound one only with the `DPoP`
    /// scheme and a proof for `target` by its key, carrying its hash, not seen before.
    pub async fn verify_presented(
        &self,
        presented: Presented<'_>,
        target: &RequestTarget<'_>,
        now: u64,
    ) -> Result<AccessToken, VerifyError> {
        match presented {
            Presented::Bearer(raw) => {
                let token = self.verify(raw, now).await?;
                if token.jkt.is_some() {
                    return Err(VerifyError::Downgrade);
                }
                Ok(token)
            }
            Presented::Dpop { token: raw, proof } => {
                let token = self.verify(raw, now).await?;
                let Some(jkt) = token.jkt.as_deref() else {
                    return Err(VerifyError::NotBound);
                };
                let target = ProofTarget {
                    method: target.method,
                    url: target.url,
                    access_token: Some(raw),
                };
                let proof = self.proofs.verify(proof, &target, now)?;
                if proof.jkt != jkt {
                    return Err(DpopError::KeyMismatch.into());
                }
                if let Some(nonces) = &self.nonces
                    && !proof
                        .nonce
                        .as_deref()
                        .is_some_and(|n| nonces.accepts(n, now))
                {
                    return Err(DpopError::UseNonce.into());
                }
                Ok(token)
            }
        }
    }

    /// Verifies `token` at `now` (unix seconds), whatever its binding: use
    /// [`verify_presented`](Self::verify_presented) to accept requests.
    pub async fn verify(&self, token: &str, now: u64) -> Result<AccessToken, VerifyError> {
        let token = self.verify_signed(token, now).await?;
        if let Some(feed) = &self.deny {
            let list = feed
                .current(now, || self.fetch_deny_list(feed, now))
                .await
                .ok_or_else(|| match feed.withdrawn() {
                    true => VerifyError::IssuerWithdrawn,
                    false => VerifyError::DenyListUnavailable,
                })?;
            if let Some(rule) = list.refusal(&token, now) {
                return Err(VerifyError::Denied {
                    entry: rule.id.clone(),
                });
            }
        }
        Ok(token)
    }

    /// The deny list in force here at `now` (fetching it when due), for a service's
    /// own checks and reports; `None` when the feed is off or too stale.
    pub async fn deny_list(&self, now: u64) -> Option<Arc<DenyList>> {
        let feed = self.deny.as_ref()?;
        feed.current(now, || self.fetch_deny_list(feed, now)).await
    }

    async fn fetch_deny_list(&self, feed: &FeedCache, now: u64) -> Result<DenyList, FeedError> {
        let (body, _) = crate::jwks::fetch_uri(
            self.issuers.http(),
            &feed.settings.url,
            "application/jwt",
            MAX_FEED_BYTES,
        )
        .await
        .map_err(|e| match e.withdrawn() {
            true => FeedError::Withdrawn,
            false => FeedError::Fetch,
        })?;
        let text = std::str::from_utf8(&body).map_err(|_| FeedError::Invalid)?;
        let verified = self
            .issuers
            .verify_document(text.trim(), &feed.settings.audience, FEED_TYPE, now)
            .await
            .map_err(|e| match e {
                JwtError::JwksUnavailable { .. } => FeedError::Fetch,
                _ => FeedError::Invalid,
            })?;
        let issued_at = verified
            .claims
            .get("iat")
            .and_then(Value::as_u64)
            .ok_or(FeedError::Invalid)?;
        let rules = verified
            .claims
            .get("deny")
            .cloned()
            .ok_or(FeedError::Invalid)
            .and_then(|d| serde_json::from_value(d).map_err(|_| FeedError::Invalid))?;
        Ok(DenyList { issued_at, rules })
    }

    async fn verify_signed(&self, token: &str, now: u64) -> Result<AccessToken, VerifyError> {
        AccessToken::from_verified(&*self.issuers.verify(token, now).await?)
    }
}

impl AccessToken {
    /// Every actor of the `act` chain, newest first (none when not delegated).
    pub fn actors(&self) -> impl Iterator<Item = &Actor> {
        self.actor.iter().flat_map(Actor::chain)
    }

    /// The access token a verified JWT is: `typ` `at+jwt`, one action in `scope`,
    /// `client_id` and `jti` present, `act` and `cnf` well-formed when present.
    pub fn from_verified(verified: &VerifiedJwt) -> Result<AccessToken, VerifyError> {
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
            Some(act) => Some(Actor::from_claim(act, 0).ok_or(VerifyError::Claim("act"))?),
        };
        Ok(AccessToken {
            issuer: verified.issuer.to_string(),
            subject: verified.subject.clone(),
            actor,
            action,
            client_id: text("client_id")?,
            jti: text("jti")?,
            expires_at: verified.expires_at,
            jkt: match c.get("cnf") {
                None => None,
                Some(cnf) => Some(
                    cnf.get("jkt")
                        .and_then(Value::as_str)
                        .filter(|j| j.len() == 43)
                        .map(str::to_string)
                        .ok_or(VerifyError::Claim("cnf"))?,
                ),
            },
        })
    }
}
