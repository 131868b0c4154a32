//! A set of trusted issuers: verifies any JWT signed by one of them, for one expected
//! audience.
//!
//! A token is trusted only through configuration:
//! - its `iss` must equal, byte for byte, the `issuer` of one configured
//!   [`IssuerConfig`]; that issuer alone decides which keys and algorithms count;
//! - the header's `alg` must be in the issuer's allow-list and fit the key; `kid` only
//!   picks among keys already fetched from the configured source ([`crate::jwks`]);
//! - the claims pass [`crate::claims`] under the issuer's leeway and lifetime cap.
//!
//! Verified tokens are cached (moka, keyed by the SHA-256 of the token, never outliving
//! the token's `exp`); only verified tokens enter, so memory cannot grow with
//! unverified input, and no cache key is ever built from an unverified `iss` or `kid`.
//! A cached verification is tied to the key that made it (its `kid`, algorithm and
//! [`KeyFingerprint`]): a hit holds only while the issuer's current key set still picks
//! that same key, checked without crypto; once the issuer stops publishing it, or
//! publishes other material under its `kid`, the token is verified again (and fails).
//! A hit also drives the issuer's scheduled JWKS refresh, like any verification.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::claims::{ClaimRules, check_claims_for, names_audience};
use crate::jose::{self, Algorithm};
use crate::jwk::KeyFingerprint;
use crate::jwks::{FetchObserver, Freshness, JwksCache, KeySource, Pick, http_client};

use crate::error::JwtError;

/// One trusted issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerConfig {
    /// A short name for errors, logs and metrics (the STS's `[[trust]] name`).
    pub name: String,
    /// The exact `iss` its tokens carry.
    pub issuer: String,
    pub keys: KeySource,
    /// The algorithms its tokens may use.
    pub algorithms: Vec<Algorithm>,
    /// Longest `exp - iat` a token may have.
    pub max_token_lifetime: Duration,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// How long fetched keys are used before a refetch.
    pub jwks_refresh: Duration,
    /// How long the last good keys keep serving when the key source fails (an outage;
    /// a well-formed key set, even an empty one, replaces them at once).
    pub jwks_max_stale: Duration,
}

/// Bounds on what verification may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest token accepted, in bytes.
    pub max_token_bytes: usize,
    /// Verified tokens kept in the cache.
    pub verified_cache_capacity: u64,
    /// Whole-request timeout of a JWKS fetch.
    pub jwks_fetch_timeout: Duration,
    /// Largest JWKS body read.
    pub jwks_max_bytes: usize,
    /// Least time between two JWKS fetches outside the refresh schedule.
    pub jwks_refetch_cooldown: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_token_bytes: 16 * 1024,
            verified_cache_capacity: 100_000,
            jwks_fetch_timeout: Duration::from_secs(3),
            jwks_max_bytes: 256 * 1024,
            jwks_refetch_cooldown: Duration::from_secs(30),
        }
    }
}

/// A token that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedJwt {
    /// The configured name of the issuer it verified under.
    pub trust: Arc<str>,
    pub issuer: Arc<str>,
    pub subject: String,
    /// `exp`, unix seconds.
    pub expires_at: u64,
    /// The header's `typ`, if any.
    pub typ: Option<String>,
    /// Every claim, as verified (for callers that need more than `sub` and `exp`).
    pub claims: serde_json::Map<String, Value>,
}

/// A configured issuer and its keys.
struct Issuer {
    name: Arc<str>,
    issuer: Arc<str>,
    allowed: Vec<Algorithm>,
    rules: ClaimRules,
    keys: JwksCache,
}

/// The key a token verified with: what a cache hit checks the current key set against.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyBinding {
    /// Index of the issuer in [`IssuerSet::issuers`].
    issuer: usize,
    /// The token's `kid` and algorithm, which picked the key.
    kid: Option<String>,
    alg: Algorithm,
    fingerprint: KeyFingerprint,
}

/// A cached verification and the key that made it.
struct Cached {
    jwt: Arc<VerifiedJwt>,
    key: KeyBinding,
}

/// Evicts a verified token when its `exp` passes.
struct UntilExpiry;

impl moka::Expiry<[u8; 32], Arc<Cached>> for UntilExpiry {
    fn expire_after_create(&self, _: &[u8; 32], v: &Arc<Cached>, _: Instant) -> Option<Duration> {
        Some(Duration::from_secs(
            v.jwt.expires_at.saturating_sub(crate::unix_now()),
        ))
    }
}

/// Trusted issuers and the audience their tokens must name.
pub struct IssuerSet {
    issuers: Vec<Issuer>,
    by_issuer: HashMap<String, usize>,
    audience: String,
    refused: Vec<String>,
    verified: moka::sync::Cache<[u8; 32], Arc<Cached>>,
    http: reqwest::Client,
    max_token_bytes: usize,
}

impl std::fmt::Debug for IssuerSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerSet")
            .field("issuers", &self.issuers.len())
            .field("audience", &self.audience)
            .finish()
    }
}

impl IssuerSet {
    /// Builds the set; no key is fetched until first needed. `observer`, if any, hears
    /// of every JWKS fetch (for metrics and logs).
    pub fn new(
        issuers: &[IssuerConfig],
        audience: &str,
        limits: &Limits,
        observer: Option<FetchObserver>,
    ) -> Result<IssuerSet, reqwest::Error> {
        let issuers: Vec<Issuer> = issuers
            .iter()
            .map(|c| {
                let name: Arc<str> = c.name.as_str().into();
                Issuer {
                    keys: JwksCache::new(
                        name.clone(),
                        c.keys.clone(),
                        c.algorithms.clone(),
                        Freshness {
                            refresh: c.jwks_refresh,
                            max_stale: c.jwks_max_stale,
                            refetch_cooldown: limits.jwks_refetch_cooldown,
                        },
                        limits.jwks_max_bytes,
                        observer.clone(),
                    ),
                    name,
                    issuer: c.issuer.as_str().into(),
                    allowed: c.algorithms.clone(),
                    rules: ClaimRules {
                        leeway: c.leeway,
                        max_lifetime: c.max_token_lifetime,
                    },
                }
            })
            .collect();
        let by_issuer = issuers
            .iter()
            .enumerate()
            .map(|(i, t)| (t.issuer.to_string(), i))
            .collect();
        Ok(IssuerSet {
            verified: moka::sync::Cache::builder()
                .max_capacity(limits.verified_cache_capacity)
                .expire_after(UntilExpiry)
                .build(),
            issuers,
            by_issuer,
            audience: audience.to_string(),
            refused: Vec::new(),
            http: http_client(limits.jwks_fetch_timeout)?,
            max_token_bytes: limits.max_token_bytes,
        })
    }

    /// Refuses tokens whose `iss` is `issuer` with [`JwtError::RefusedIssuer`], before
    /// any key is looked at (an STS refusing its own tokens as subject tokens).
    pub fn refuse_issuer(mut self, issuer: &str) -> IssuerSet {
        self.refused.push(issuer.to_string());
        self
    }

    /// Configured names of the issuers, in configuration order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.issuers.iter().map(|i| &*i.name)
    }

    /// Verifies `token` at time `now` (unix seconds) against its issuer's configured
    /// keys and the claim rules; results are cached until the token expires, and hold
    /// only while the issuer still publishes the key that verified them.
    pub async fn verify(&self, token: &str, now: u64) -> Result<Arc<VerifiedJwt>, JwtError> {
        self.verify_for(token, now, &[self.audience.as_str()]).await
    }

    /// [`verify`](Self::verify) where `aud` may name any one of `audiences` instead of
    /// the set's audience. The cache of verified tokens is shared: a hit holds only if
    /// its `aud` names one of `audiences` too, so a token verified for one audience is
    /// never taken for another.
    pub async fn verify_for(
        &self,
        token: &str,
        now: u64,
        audiences: &[&str],
    ) -> Result<Arc<VerifiedJwt>, JwtError> {
        if token.len() > self.max_token_bytes {
            return Err(JwtError::Malformed("too large"));
        }
        let digest = sha256(token.as_bytes());
        if let Some(hit) = self.verified.get(&digest)
            && now <= hit.jwt.expires_at
        {
            let binding = &hit.key;
            let keys = self.issuers[binding.issuer]
                .keys
                .key_set(&self.http, false)
                .await?;
            if keys.still_picks(binding.kid.as_deref(), binding.alg, &binding.fingerprint) {
                names_audience(&hit.jwt.claims, audiences).map_err(|(claim, problem)| {
                    JwtError::Claim {
                        trust: hit.jwt.trust.to_string(),
                        claim,
                        problem,
                    }
                })?;
                return Ok(hit.jwt.clone());
            }
            // The key that verified it is gone or changed: verify again (and fail).
            self.verified.invalidate(&digest);
        }
        let (verified, key) = self.verify_uncached(token, now, audiences).await?;
        let verified = Arc::new(verified);
        self.verified.insert(
            digest,
            Arc::new(Cached {
                jwt: verified.clone(),
                key,
            }),
        );
        Ok(verified)
    }

    /// Verifies a signed document of an issuer (not a token for this service: its
    /// `aud` is `audience`, its `typ` must be `typ`), with the same keys and claim
    /// rules as tokens, and no cache.
    pub async fn verify_document(
        &self,
        document: &str,
        audience: &str,
        typ: &str,
        now: u64,
    ) -> Result<VerifiedJwt, JwtError> {
        let (verified, _) = self.verify_uncached(document, now, &[audience]).await?;
        if !verified
            .typ
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case(typ))
        {
            return Err(JwtError::Malformed("typ"));
        }
        Ok(verified)
    }

    /// The HTTP client the set fetches with.
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    async fn verify_uncached(
        &self,
        raw: &str,
        now: u64,
        audiences: &[&str],
    ) -> Result<(VerifiedJwt, KeyBinding), JwtError> {
        let jws = jose::split_compact(raw)?;
        let header = jose::parse_header(jws.header)?;
        let claims = jose::parse_claims(jws.payload)?;

        let iss = match claims.get("iss") {
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(JwtError::Malformed("iss is not a string")),
            None => return Err(JwtError::Malformed("iss is missing")),
        };
        if self.refused.iter().any(|r| r == iss) {
            return Err(JwtError::RefusedIssuer);
        }
        let index = *self.by_issuer.get(iss).ok_or(JwtError::UnknownIssuer)?;
        let issuer = &self.issuers[index];
        let trust = || issuer.name.to_string();

        let alg = Algorithm::parse(&header.alg)
            .filter(|a| issuer.allowed.contains(a))
            .ok_or_else(|| JwtError::AlgorithmNotAllowed { trust: trust() })?;

        let mut keys = issuer.keys.key_set(&self.http, false).await?;
        let key = match keys.pick(header.kid.as_deref(), alg) {
            Pick::Found(k) => k,
            Pick::NoneFits => return Err(JwtError::NoUsableKey { trust: trust() }),
            Pick::UnknownKid => {
                // The issuer may have rotated: one refetch, rate-limited per issuer.
                keys = issuer.keys.key_set(&self.http, true).await?;
                match keys.pick(header.kid.as_deref(), alg) {
                    Pick::Found(k) => k,
                    _ => return Err(JwtError::UnknownKid { trust: trust() }),
                }
            }
        };
        let signature = jose::decode_signature(jws.signature)
            .ok_or_else(|| JwtError::BadSignature { trust: trust() })?;
        if !key.verify(alg, jws.signing_input.as_bytes(), &signature) {
            return Err(JwtError::BadSignature { trust: trust() });
        }

        let checked = check_claims_for(&claims, &issuer.rules, audiences, now).map_err(
            |(claim, problem)| JwtError::Claim {
                trust: trust(),
                claim,
                problem,
            },
        )?;
        let binding = KeyBinding {
            issuer: index,
            kid: header.kid,
            alg,
            fingerprint: *key.fingerprint(),
        };
        let verified = VerifiedJwt {
            trust: issuer.name.clone(),
            issuer: issuer.issuer.clone(),
            subject: checked.subject,
            expires_at: checked.expires_at,
            typ: header.typ,
            claims,
        };
        Ok((verified, binding))
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}
