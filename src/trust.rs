//! Workload identity: verifying the JWTs that agents (and delegating users) present.
//!
//! A subject token is trusted only through configuration (SECURITY.md properties 3, 4
//! and 7):
//! - its `iss` must equal, byte for byte, the `issuer` of one configured `[[trust]]`;
//!   that trust alone decides which keys and algorithms count;
//! - the header's `alg` must be in the trust's allow-list and fit the key (the key's own
//!   `alg`, or its type); `kid` only picks among keys already fetched from the
//!   configured JWKS; `jku`, `x5u`, `jwk` and `x5c` are never read, and any `crit`
//!   header is refused because we implement no JWS extension;
//! - claims are checked with our own strict code, not the JWT library's defaults: `iss`
//!   and `sub` strings, `aud` a string or non-empty array of strings containing this
//!   STS's issuer, integer-valued `exp`/`iat` (and `nbf` when present) with an explicit
//!   leeway, and a cap on `exp - iat` and on `exp - now`.
//!
//! Keys come from `jwks_uri` (fetched with reqwest: size and time capped, redirects only
//! to the same origin) or `jwks_file`. Fetched sets live in a moka cache whose entries
//! expire at the trust's `jwks_max_stale`, so the last good keys keep serving while the
//! issuer is down, and not longer. A token naming an unknown `kid` triggers at most one
//! refetch per trust per cooldown, whatever the request rate.
//!
//! Successful verifications are cached (moka, keyed by the SHA-256 of the token, never
//! outliving the token's `exp`); only verified tokens enter, so memory cannot grow with
//! unverified input.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::signature::ParsedPublicKey;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use serde::Deserialize;
use serde_json::Value;

use crate::config::{IssuerAlgorithm, JwksSource, LimitsConfig, TrustConfig};
use crate::metrics::Metrics;
use crate::secret::SubjectToken;

/// Why a token was not accepted. Never carries token content: only the trust name
/// (from configuration) and fixed words.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TrustError {
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("token has a crit header; no JWS extension is supported")]
    CriticalHeader,
    #[error("token issuer is not a configured trust")]
    UnknownIssuer,
    #[error("token was issued by this STS; its own tokens are not subject tokens")]
    OwnToken,
    #[error("trust {trust}: algorithm not allowed")]
    AlgorithmNotAllowed { trust: String },
    #[error("trust {trust}: no key in the JWKS matches the token's kid")]
    UnknownKid { trust: String },
    #[error("trust {trust}: no usable key for the token")]
    NoUsableKey { trust: String },
    #[error("trust {trust}: bad signature")]
    BadSignature { trust: String },
    #[error("trust {trust}: claim {claim}: {problem}")]
    Claim {
        trust: String,
        claim: &'static str,
        problem: &'static str,
    },
    #[error("trust {trust}: JWKS unavailable: {reason}")]
    JwksUnavailable { trust: String, reason: JwksError },
}

/// Why a JWKS could not be loaded.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum JwksError {
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("request failed or timed out")]
    Transport,
    #[error("larger than the size limit")]
    TooLarge,
    #[error("not a JWK set")]
    Parse,
    #[error("no usable signing key")]
    NoKeys,
    #[error("cannot read file")]
    File,
    #[error("not fetched: the last attempt failed within the refetch cooldown")]
    Cooldown,
}

/// A token that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The `[[trust]]` it verified under.
    pub trust: Arc<str>,
    pub issuer: Arc<str>,
    pub subject: String,
    /// `exp`, unix seconds.
    pub expires_at: u64,
    /// The trust's `spiffe_trust_domains`.
    pub spiffe_domains: Arc<[String]>,
    /// The header's `typ`, if any.
    pub typ: Option<String>,
    /// Every claim, as verified (for callers that need more than `sub` and `exp`).
    pub claims: serde_json::Map<String, Value>,
}

/// Longest `sub` accepted.
const MAX_SUBJECT_LEN: usize = 1024;

/// One verification key from a JWKS: for each algorithm it may be used with, the
/// public key parsed once (aws-lc-rs), so a signature check does no key parsing.
struct VerifyingKey {
    kid: Option<String>,
    parsed: Vec<(Algorithm, ParsedPublicKey)>,
}

impl VerifyingKey {
    fn supports(&self, alg: Algorithm) -> bool {
        self.parsed.iter().any(|(a, _)| *a == alg)
    }

    /// Checks the base64url `signature` over `message` under `alg`.
    fn verify(&self, alg: Algorithm, message: &[u8], signature: &str) -> bool {
        let Some((_, key)) = self.parsed.iter().find(|(a, _)| *a == alg) else {
            return false;
        };
        let Ok(signature) = URL_SAFE_NO_PAD.decode(signature) else {
            return false;
        };
        key.verify_sig(message, &signature).is_ok()
    }
}

/// A parsed JWK set and when it was fetched.
struct KeySet {
    keys: Vec<VerifyingKey>,
    fetched_at: Instant,
    /// Age after which one request refetches: the trust's `jwks_refresh`, or the
    /// response's `Cache-Control: max-age` when shorter (the issuer says how fresh its
    /// key list must be; the fetch cooldown still bounds how often that happens).
    refresh_after: Duration,
    max_stale: Duration,
}

/// A configured issuer and its key cache state.
struct Issuer {
    config: TrustConfig,
    allowed: Vec<Algorithm>,
    spiffe_domains: Arc<[String]>,
    name: Arc<str>,
    issuer: Arc<str>,
    /// Serialises fetches (single flight).
    fetch_lock: tokio::sync::Mutex<()>,
    /// When the last fetch was attempted, for the refetch cooldown.
    last_attempt: Mutex<Option<Instant>>,
}

struct StaleAfter;

impl moka::Expiry<usize, Arc<KeySet>> for StaleAfter {
    fn expire_after_create(&self, _: &usize, v: &Arc<KeySet>, _: Instant) -> Option<Duration> {
        Some(v.max_stale)
    }
    fn expire_after_update(
        &self,
        _: &usize,
        v: &Arc<KeySet>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.max_stale)
    }
}

struct UntilExpiry;

impl moka::Expiry<[u8; 32], Arc<VerifiedToken>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _: &[u8; 32],
        v: &Arc<VerifiedToken>,
        _: Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(v.expires_at.saturating_sub(unix_now())))
    }
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// All configured trusts: verifies subject and actor tokens.
pub struct TrustStore {
    issuers: Vec<Issuer>,
    by_issuer: HashMap<String, usize>,
    own_issuer: String,
    keys: moka::future::Cache<usize, Arc<KeySet>>,
    verified: moka::sync::Cache<[u8; 32], Arc<VerifiedToken>>,
    http: reqwest::Client,
    limits: LimitsConfig,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustStore")
            .field("trusts", &self.by_issuer.len())
            .finish()
    }
}

impl TrustStore {
    /// Builds the store; no key is fetched until first needed.
    pub fn new(
        trusts: &[TrustConfig],
        own_issuer: &str,
        limits: &LimitsConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, reqwest::Error> {
        let issuers: Vec<Issuer> = trusts
            .iter()
            .map(|t| Issuer {
                allowed: t.algorithms.iter().map(|a| to_jwt_algorithm(*a)).collect(),
                spiffe_domains: t.spiffe_trust_domains.clone().into(),
                name: t.name.as_str().into(),
                issuer: t.issuer.as_str().into(),
                config: t.clone(),
                fetch_lock: tokio::sync::Mutex::new(()),
                last_attempt: Mutex::new(None),
            })
            .collect();
        let by_issuer = issuers
            .iter()
            .enumerate()
            .map(|(i, t)| (t.config.issuer.clone(), i))
            .collect();
        let http = reqwest::Client::builder()
            .timeout(limits.jwks_fetch_timeout)
            .connect_timeout(limits.jwks_fetch_timeout)
            .redirect(same_origin_redirects())
            .user_agent(concat!("agent-sts/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(TrustStore {
            keys: moka::future::Cache::builder()
                .max_capacity(issuers.len() as u64 + 1)
                .expire_after(StaleAfter)
                .build(),
            verified: moka::sync::Cache::builder()
                .max_capacity(limits.subject_cache_capacity)
                .expire_after(UntilExpiry)
                .build(),
            issuers,
            by_issuer,
            own_issuer: own_issuer.to_string(),
            http,
            limits: limits.clone(),
            metrics,
        })
    }

    /// Verifies `token` at time `now` (unix seconds) against its issuer's configured
    /// keys and the claim rules; results are cached until the token expires.
    pub async fn verify(
        &self,
        token: &SubjectToken,
        now: u64,
    ) -> Result<Arc<VerifiedToken>, TrustError> {
        let raw = token.expose();
        if raw.len() > self.limits.max_token_bytes {
            return Err(TrustError::Malformed("too large"));
        }
        let digest = sha256(raw.as_bytes());
        if let Some(hit) = self.verified.get(&digest)
            && now <= hit.expires_at
        {
            return Ok(hit);
        }
        let verified = Arc::new(self.verify_uncached(raw, now).await?);
        self.verified.insert(digest, verified.clone());
        Ok(verified)
    }

    async fn verify_uncached(&self, raw: &str, now: u64) -> Result<VerifiedToken, TrustError> {
        let parts = split_compact(raw)?;
        let header = parse_header(parts.header)?;
        let claims = parse_claims(parts.payload)?;

        let iss = match claims.get("iss") {
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(TrustError::Malformed("iss is not a string")),
            None => return Err(TrustError::Malformed("iss is missing")),
        };
        if iss == self.own_issuer {
            return Err(TrustError::OwnToken);
        }
        let index = *self.by_issuer.get(iss).ok_or(TrustError::UnknownIssuer)?;
        let issuer = &self.issuers[index];
        let trust = || issuer.config.name.clone();

        let alg = parse_algorithm(&header.alg)
            .filter(|a| issuer.allowed.contains(a))
            .ok_or_else(|| TrustError::AlgorithmNotAllowed { trust: trust() })?;

        let mut keys = self.key_set(index, false).await?;
        let key = match pick_key(&keys, header.kid.as_deref(), alg) {
            Pick::Found(k) => k,
            Pick::NoneFits => return Err(TrustError::NoUsableKey { trust: trust() }),
            Pick::UnknownKid => {
                // The issuer may have rotated: one refetch, rate-limited per trust.
                keys = self.key_set(index, true).await?;
                match pick_key(&keys, header.kid.as_deref(), alg) {
                    Pick::Found(k) => k,
                    _ => return Err(TrustError::UnknownKid { trust: trust() }),
                }
            }
        };
        let message = &raw[..parts.header.len() + 1 + parts.payload.len()];
        if !key.verify(alg, message.as_bytes(), parts.signature) {
            return Err(TrustError::BadSignature { trust: trust() });
        }

        let checked = check_claims(&claims, &issuer.config, &self.own_issuer, now).map_err(
            |(claim, problem)| TrustError::Claim {
                trust: trust(),
                claim,
                problem,
            },
        )?;
        Ok(VerifiedToken {
            trust: issuer.name.clone(),
            issuer: issuer.issuer.clone(),
            subject: checked.subject,
            expires_at: checked.expires_at,
            spiffe_domains: issuer.spiffe_domains.clone(),
            typ: header.typ,
            claims,
        })
    }

    /// The trust's keys. The hot path is one cache read. Past `jwks_refresh` one
    /// request refreshes them, without waiting for the lock if another fetch is under
    /// way and without failing if the issuer does (the cached set serves until it is
    /// stale). With no usable set, or for an unknown `kid`, the request waits for any
    /// fetch in flight, then fetches itself only if the per-trust cooldown allows: a
    /// flood of unknown kids costs at most one fetch per cooldown.
    async fn key_set(&self, index: usize, unknown_kid: bool) -> Result<Arc<KeySet>, TrustError> {
        let issuer = &self.issuers[index];
        let cached = self.keys.get(&index).await;
        if let (Some(set), false) = (&cached, unknown_kid) {
            if set.fetched_at.elapsed() < set.refresh_after {
                return Ok(set.clone());
            }
            let Ok(_guard) = issuer.fetch_lock.try_lock() else {
                return Ok(set.clone());
            };
            if !self.may_fetch(index) {
                return Ok(set.clone());
            }
            return Ok(self
                .fetch_locked(index)
                .await
                .unwrap_or_else(|_| set.clone()));
        }
        let seen = cached.as_ref().map(|s| s.fetched_at);
        let _guard = issuer.fetch_lock.lock().await;
        if let Some(set) = self.keys.get(&index).await
            && seen.is_none_or(|t| set.fetched_at > t)
        {
            return Ok(set); // fetched by the request we waited for
        }
        if !self.may_fetch(index) {
            return cached.ok_or_else(|| TrustError::JwksUnavailable {
                trust: issuer.config.name.clone(),
                reason: JwksError::Cooldown,
            });
        }
        match self.fetch_locked(index).await {
            Ok(set) => Ok(set),
            Err(e) => cached.ok_or(e),
        }
    }

    /// True when the cooldown since the last fetch attempt has passed (and records
    /// this attempt).
    fn may_fetch(&self, index: usize) -> bool {
        let issuer = &self.issuers[index];
        let Ok(mut last) = issuer.last_attempt.lock() else {
            return false;
        };
        let now = Instant::now();
        match *last {
            Some(t) if now.duration_since(t) < self.limits.jwks_refetch_cooldown => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }

    /// Fetches and installs the trust's JWKS; the caller holds the trust's fetch lock.
    async fn fetch_locked(&self, index: usize) -> Result<Arc<KeySet>, TrustError> {
        let issuer = &self.issuers[index];
        let name = issuer.config.name.as_str();
        let result = match &issuer.config.jwks {
            JwksSource::Uri(url) => self.fetch_uri(url).await,
            JwksSource::File(path) => tokio::fs::read(path)
                .await
                .map(|bytes| (bytes, None))
                .map_err(|_| JwksError::File),
        }
        .and_then(|(bytes, max_age)| Ok((parse_jwks(&bytes, &issuer.allowed)?, max_age)));
        match result {
            Ok((keys, max_age)) => {
                self.metrics.jwks_fetch(name, "ok");
                let refresh = issuer.config.jwks_refresh;
                let set = Arc::new(KeySet {
                    keys,
                    fetched_at: Instant::now(),
                    refresh_after: max_age.map_or(refresh, |age| age.min(refresh)),
                    max_stale: issuer.config.jwks_max_stale,
                });
                self.keys.insert(index, set.clone()).await;
                Ok(set)
            }
            Err(reason) => {
                self.metrics.jwks_fetch(name, "error");
                tracing::warn!(trust = name, %reason, "JWKS fetch failed; keeping the last good keys until they are stale");
                Err(TrustError::JwksUnavailable {
                    trust: name.to_string(),
                    reason,
                })
            }
        }
    }

    /// The JWKS body and the response's `Cache-Control: max-age`, if any.
    async fn fetch_uri(
        &self,
        url: &reqwest::Url,
    ) -> Result<(Vec<u8>, Option<Duration>), JwksError> {
        let mut response = self
            .http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|_| JwksError::Transport)?;
        if !response.status().is_success() {
            return Err(JwksError::Status(response.status().as_u16()));
        }
        let cap = self.limits.jwks_max_bytes;
        if response.content_length().is_some_and(|n| n as usize > cap) {
            return Err(JwksError::TooLarge);
        }
        let max_age = response
            .headers()
            .get_all(reqwest::header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(max_age);
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|_| JwksError::Transport)? {
            if body.len() + chunk.len() > cap {
                return Err(JwksError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, max_age))
    }

    /// Trust names and SPIFFE domains, for the catalogue.
    pub fn names(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.issuers.iter().map(|i| {
            (
                i.config.name.as_str(),
                i.config.spiffe_trust_domains.as_slice(),
            )
        })
    }
}

/// The `max-age` directive of a `Cache-Control` value (RFC 9111 §5.2.2.1).
fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control.split(',').find_map(|directive| {
        let (name, value) = directive.trim().split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("max-age") {
            return None;
        }
        value
            .trim()
            .trim_matches('"')
            .parse()
            .ok()
            .map(Duration::from_secs)
    })
}

/// Redirects are followed only within the same origin, at most three times.
fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same = attempt.previous().first().is_some_and(|first| {
            first.scheme() == attempt.url().scheme()
                && first.host_str() == attempt.url().host_str()
                && first.port_or_known_default() == attempt.url().port_or_known_default()
        });
        if !same || attempt.previous().len() > 3 {
            attempt.stop()
        } else {
            attempt.follow()
        }
    })
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The three segments of a compact JWS.
pub struct CompactParts<'a> {
    pub header: &'a str,
    pub payload: &'a str,
    pub signature: &'a str,
}

/// Splits a compact JWS into exactly three non-empty base64url segments.
pub fn split_compact(raw: &str) -> Result<CompactParts<'_>, TrustError> {
    let mut it = raw.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (it.next(), it.next(), it.next(), it.next())
    else {
        return Err(TrustError::Malformed("not three segments"));
    };
    for part in [header, payload, signature] {
        if part.is_empty() {
            return Err(TrustError::Malformed("empty segment"));
        }
        if !part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(TrustError::Malformed("segment is not base64url"));
        }
    }
    Ok(CompactParts {
        header,
        payload,
        signature,
    })
}

/// The header fields we read. Everything else (`jku`, `x5u`, `jwk`, `x5c`, ...) is
/// ignored: keys come from configuration only.
#[derive(Debug, Deserialize)]
pub struct JoseHeader {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub typ: Option<String>,
    /// Present at all (even `null`) means refused.
    #[serde(default, deserialize_with = "present")]
    pub crit: Option<Value>,
}

/// `Some` whenever the member is present, `null` included.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Decodes and checks the protected header.
pub fn parse_header(segment: &str) -> Result<JoseHeader, TrustError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TrustError::Malformed("header is not base64url"))?;
    let header: JoseHeader = serde_json::from_slice(&bytes)
        .map_err(|_| TrustError::Malformed("header is not a JOSE header"))?;
    if header.crit.is_some() {
        return Err(TrustError::CriticalHeader);
    }
    Ok(header)
}

fn parse_claims(segment: &str) -> Result<serde_json::Map<String, Value>, TrustError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TrustError::Malformed("payload is not base64url"))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(TrustError::Malformed("payload is not a JSON object")),
    }
}

/// Only asymmetric algorithms exist here: `none` and `HS*` parse to nothing.
fn parse_algorithm(alg: &str) -> Option<Algorithm> {
    IssuerAlgorithm::parse(alg).map(to_jwt_algorithm)
}

fn to_jwt_algorithm(a: IssuerAlgorithm) -> Algorithm {
    match a {
        IssuerAlgorithm::ES256 => Algorithm::ES256,
        IssuerAlgorithm::ES384 => Algorithm::ES384,
        IssuerAlgorithm::RS256 => Algorithm::RS256,
        IssuerAlgorithm::RS384 => Algorithm::RS384,
        IssuerAlgorithm::RS512 => Algorithm::RS512,
        IssuerAlgorithm::PS256 => Algorithm::PS256,
        IssuerAlgorithm::PS384 => Algorithm::PS384,
        IssuerAlgorithm::PS512 => Algorithm::PS512,
        IssuerAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

enum Pick<'a> {
    Found(&'a VerifyingKey),
    UnknownKid,
    NoneFits,
}

fn pick_key<'a>(set: &'a KeySet, kid: Option<&str>, alg: Algorithm) -> Pick<'a> {
    match kid {
        Some(kid) => {
            let Some(key) = set.keys.iter().find(|k| k.kid.as_deref() == Some(kid)) else {
                return Pick::UnknownKid;
            };
            if key.supports(alg) {
                Pick::Found(key)
            } else {
                Pick::NoneFits
            }
        }
        // No kid: acceptable only when exactly one key fits, so a token cannot make us
        // try every key.
        None => {
            let mut fitting = set.keys.iter().filter(|k| k.supports(alg));
            match (fitting.next(), fitting.next()) {
                (Some(k), None) => Pick::Found(k),
                _ => Pick::NoneFits,
            }
        }
    }
}

/// Parses a JWK set, keeping the keys usable for signature checks under the allowed
/// algorithms. Keys of other types (e.g. symmetric `oct`), other uses, or
/// algorithms outside the allow-list are skipped.
fn parse_jwks(bytes: &[u8], allowed: &[Algorithm]) -> Result<Vec<VerifyingKey>, JwksError> {
    #[derive(Deserialize)]
    struct RawSet {
        keys: Vec<Value>,
    }
    let raw: RawSet = serde_json::from_slice(bytes).map_err(|_| JwksError::Parse)?;
    let mut keys = Vec::new();
    for value in raw.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let fits = key_algorithms(&jwk);
        let algorithms: Vec<Algorithm> = match jwk.common.key_algorithm {
            Some(declared) => match key_algorithm_to_jwt(declared) {
                Some(a) if fits.contains(&a) => vec![a],
                _ => continue,
            },
            None => fits,
        }
        .into_iter()
        .filter(|a| allowed.contains(a))
        .collect();
        let parsed: Vec<(Algorithm, ParsedPublicKey)> = algorithms
            .into_iter()
            .filter_map(|a| parse_public_key(&jwk, a).map(|k| (a, k)))
            .collect();
        if parsed.is_empty() {
            continue;
        }
        keys.push(VerifyingKey {
            kid: jwk.common.key_id.clone(),
            parsed,
        });
    }
    if keys.is_empty() {
        return Err(JwksError::NoKeys);
    }
    Ok(keys)
}

/// The JWK's public key parsed for `alg` (fixed-size `r || s` for ECDSA, RFC 7518
/// §3.4, so a DER-encoded signature never verifies).
fn parse_public_key(jwk: &Jwk, alg: Algorithm) -> Option<ParsedPublicKey> {
    use aws_lc_rs::signature as sig;
    let b64 = |s: &str| URL_SAFE_NO_PAD.decode(s).ok();
    match (&jwk.algorithm, alg) {
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256 | Algorithm::ES384) => {
            let (verification, size): (&'static sig::EcdsaVerificationAlgorithm, usize) = match alg
            {
                Algorithm::ES256 => (&sig::ECDSA_P256_SHA256_FIXED, 32),
                _ => (&sig::ECDSA_P384_SHA384_FIXED, 48),
            };
            let (x, y) = (b64(&p.x)?, b64(&p.y)?);
            if x.len() != size || y.len() != size {
                return None;
            }
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            ParsedPublicKey::new(verification, point).ok()
        }
        (AlgorithmParameters::OctetKeyPair(p), Algorithm::EdDSA) => {
            ParsedPublicKey::new(&sig::ED25519, b64(&p.x)?).ok()
        }
        (AlgorithmParameters::RSA(p), _) => {
            let params: &'static sig::RsaParameters = match alg {
                Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
                Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
                Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
                Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
                Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
                Algorithm::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
                _ => return None,
            };
            let (n, e) = (b64(&p.n)?, b64(&p.e)?);
            let strip = |v: &[u8]| {
                v.iter()
                    .position(|b| *b != 0)
                    .map_or(Vec::new(), |i| v[i..].to_vec())
            };
            sig::RsaPublicKeyComponents {
                n: strip(&n),
                e: strip(&e),
            }
            .to_parsed_public_key(params)
            .ok()
        }
        _ => None,
    }
}

/// Algorithms a key's type admits.
fn key_algorithms(jwk: &Jwk) -> Vec<Algorithm> {
    use Algorithm::*;
    match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![ES256],
            EllipticCurve::P384 => vec![ES384],
            _ => vec![],
        },
        AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => vec![EdDSA],
            _ => vec![],
        },
        _ => vec![],
    }
}

fn key_algorithm_to_jwt(k: KeyAlgorithm) -> Option<Algorithm> {
    use Algorithm::*;
    Some(match k {
        KeyAlgorithm::ES256 => ES256,
        KeyAlgorithm::ES384 => ES384,
        KeyAlgorithm::RS256 => RS256,
        KeyAlgorithm::RS384 => RS384,
        KeyAlgorithm::RS512 => RS512,
        KeyAlgorithm::PS256 => PS256,
        KeyAlgorithm::PS384 => PS384,
        KeyAlgorithm::PS512 => PS512,
        KeyAlgorithm::EdDSA => EdDSA,
        _ => return None,
    })
}

struct CheckedClaims {
    subject: String,
    expires_at: u64,
}

/// A NumericDate (RFC 7519 §2): a JSON number of seconds. Fractions are truncated;
/// negative, non-finite or non-number values are refused.
fn numeric_date(
    claims: &serde_json::Map<String, Value>,
    name: &'static str,
) -> Result<Option<u64>, (&'static str, &'static str)> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(v) = n.as_u64() {
                Ok(Some(v))
            } else {
                match n.as_f64() {
                    Some(f) if (0.0..1e11).contains(&f) => Ok(Some(f as u64)),
                    _ => Err((name, "is not a valid NumericDate")),
                }
            }
        }
        Some(_) => Err((name, "is not a number")),
    }
}

/// The claim rules of SECURITY.md property 4, at time `now`.
fn check_claims(
    claims: &serde_json::Map<String, Value>,
    trust: &TrustConfig,
    audience: &str,
    now: u64,
) -> Result<CheckedClaims, (&'static str, &'static str)> {
    let leeway = trust.leeway.as_secs();
    let max_life = trust.max_token_lifetime.as_secs();

    let subject = match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_SUBJECT_LEN => s.clone(),
        Some(Value::String(_)) => return Err(("sub", "is empty or too long")),
        Some(_) => return Err(("sub", "is not a string")),
        None => return Err(("sub", "is missing")),
    };
    if subject.chars().any(char::is_control) {
        return Err(("sub", "contains control characters"));
    }

    match claims.get("aud") {
        Some(Value::String(a)) if a == audience => {}
        Some(Value::Array(list)) if !list.is_empty() => {
            if !list.iter().all(Value::is_string) {
                return Err(("aud", "array holds a non-string"));
            }
            if !list.iter().any(|a| a.as_str() == Some(audience)) {
                return Err(("aud", "does not name this STS"));
            }
        }
        Some(Value::String(_)) => return Err(("aud", "does not name this STS")),
        Some(Value::Array(_)) => return Err(("aud", "is an empty array")),
        Some(_) => return Err(("aud", "is not a string or array of strings")),
        None => return Err(("aud", "is missing")),
    }

    let exp = numeric_date(claims, "exp")?.ok_or(("exp", "is missing"))?;
    let iat = numeric_date(claims, "iat")?.ok_or(("iat", "is missing"))?;
    if now > exp.saturating_add(leeway) {
        return Err(("exp", "has passed"));
    }
    if exp.saturating_sub(now) > max_life.saturating_add(leeway) {
        return Err(("exp", "is too far in the future"));
    }
    if iat > now.saturating_add(leeway) {
        return Err(("iat", "is in the future"));
    }
    if exp <= iat {
        return Err(("exp", "is not after iat"));
    }
    if exp - iat > max_life {
        return Err((
            "exp",
            "token lifetime exceeds the trust's max_token_lifetime",
        ));
    }
    if let Some(nbf) = numeric_date(claims, "nbf")?
        && nbf > now.saturating_add(leeway)
    {
        return Err(("nbf", "is in the future"));
    }
    Ok(CheckedClaims {
        subject,
        expires_at: exp,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    fn trust() -> TrustConfig {
        TrustConfig {
            name: "k8s".into(),
            issuer: "https://k8s".into(),
            jwks: JwksSource::File("x".into()),
            algorithms: vec![IssuerAlgorithm::ES256],
            spiffe_trust_domains: vec![],
            max_token_lifetime: Duration::from_secs(3600),
            leeway: Duration::from_secs(30),
            jwks_refresh: Duration::from_secs(300),
            jwks_max_stale: Duration::from_secs(3600),
        }
    }

    fn claims(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    const NOW: u64 = 1_800_000_000;

    fn check(v: Value) -> Result<CheckedClaims, (&'static str, &'static str)> {
        check_claims(&claims(v), &trust(), "https://sts", NOW)
    }

    #[test]
    fn claim_rules() {
        let good =
            json!({"iss":"https://k8s","sub":"a","aud":"https://sts","exp":NOW+60,"iat":NOW});
        assert!(check(good).is_ok());
        let array = json!({"sub":"a","aud":["x","https://sts"],"exp":NOW+60,"iat":NOW});
        assert!(check(array).is_ok());
        let cases = [
            (json!({"sub":"a","exp":NOW+60,"iat":NOW}), "aud"),
            (json!({"sub":"a","aud":7,"exp":NOW+60,"iat":NOW}), "aud"),
            (
                json!({"sub":"a","aud":{"a":1},"exp":NOW+60,"iat":NOW}),
                "aud",
            ),
            (json!({"sub":"a","aud":[],"exp":NOW+60,"iat":NOW}), "aud"),
            (
                json!({"sub":"a","aud":"other","exp":NOW+60,"iat":NOW}),
                "aud",
            ),
            (
                json!({"sub":"a","aud":["https://sts", 1],"exp":NOW+60,"iat":NOW}),
                "aud",
            ),
            (json!({"sub":"a","aud":"https://sts","iat":NOW}), "exp"),
            (
                json!({"sub":"a","aud":"https://sts","exp":"soon","iat":NOW}),
                "exp",
            ),
            (
                json!({"sub":"a","aud":"https://sts","exp":-5,"iat":NOW}),
                "exp",
            ),
            (
                json!({"sub":"a","aud":"https://sts","exp":NOW+10_000_000,"iat":NOW}),
                "exp",
            ),
            (
                json!({"sub":"a","aud":"https://sts","exp":NOW-31,"iat":NOW-100}),
                "exp",
            ),
            (json!({"sub":"a","aud":"https://sts","exp":NOW+60}), "iat"),
            (
                json!({"sub":"a","aud":"https://sts","exp":NOW+60,"iat":NOW+120}),
                "iat",
            ),
            (
                json!({"sub":"a","aud":"https://sts","exp":NOW+60,"iat":NOW,"nbf":NOW+60}),
                "nbf",
            ),
            (
                json!({"sub":"a","aud":"https://sts","exp":NOW+60,"iat":NOW,"nbf":"x"}),
                "nbf",
            ),
            (json!({"aud":"https://sts","exp":NOW+60,"iat":NOW}), "sub"),
            (
                json!({"sub":5,"aud":"https://sts","exp":NOW+60,"iat":NOW}),
                "sub",
            ),
            (
                json!({"sub":"","aud":"https://sts","exp":NOW+60,"iat":NOW}),
                "sub",
            ),
        ];
        for (c, claim) in cases {
            let got = check(c.clone()).err().map(|e| e.0);
            assert_eq!(got, Some(claim), "{c}");
        }
        // Leeway: expired 20 s ago is still inside 30 s.
        let within = json!({"sub":"a","aud":"https://sts","exp":NOW-20,"iat":NOW-100});
        assert!(check(within).is_ok());
    }

    #[test]
    fn compact_split_rejects_bad_shapes() {
        assert!(split_compact("a.b.c").is_ok());
        for bad in ["a.b", "a.b.c.d", "a..c", "a.b.", "a.b.c=", "a.b+.c", ""] {
            assert!(split_compact(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn header_with_crit_is_refused() {
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","crit":["exp"],"exp":1}"#);
        assert_eq!(parse_header(&h).unwrap_err(), TrustError::CriticalHeader);
        let null = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","crit":null}"#);
        assert_eq!(parse_header(&null).unwrap_err(), TrustError::CriticalHeader);
        let ok = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","jku":"http://169.254.169.254/"}"#);
        assert_eq!(parse_header(&ok).unwrap().alg, "ES256");
    }

    #[test]
    fn symmetric_and_none_never_parse() {
        for a in ["none", "HS256", "HS384", "HS512", "", "es256"] {
            assert!(parse_algorithm(a).is_none(), "{a}");
        }
    }

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(max_age("max-age=300"), Some(Duration::from_secs(300)));
        assert_eq!(
            max_age("public, Max-Age = \"60\", must-revalidate"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(max_age("no-store"), None);
        assert_eq!(max_age("max-age=soon"), None);
        assert_eq!(max_age("s-maxage=5"), None);
    }
}
