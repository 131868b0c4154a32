//! One issuer's JSON Web Key Set: where it comes from, how it is fetched, and how long
//! a fetched set is trusted.
//!
//! - **Fetching** is bounded: a whole-request timeout, a body-size cap checked while
//!   streaming, redirects followed only within the same origin (at most three), and
//!   `https` or loopback `http` only (checked where the URL is configured).
//! - **Freshness**: a set is used for `refresh` (or the response's `Cache-Control:
//!   max-age`, RFC 9111 §5.2.2.1, when shorter), then the next request refreshes it
//!   while the others keep using the cached set. A `max-age` shorter than
//!   `min(refresh, refetch_cooldown)` is not honoured below that, so an issuer cannot
//!   make us fetch more often than the configuration allows.
//! - **An answer replaces the set.** A successful fetch of a well-formed JWK set (a
//!   JSON object with a `keys` array, RFC 7517 §5) is the issuer's current set even
//!   when it holds no usable key (`{"keys": []}`): a key the issuer stopped publishing
//!   stops verifying at the next successful fetch.
//! - **Withdrawn**: `404 Not Found` or `410 Gone` at the JWKS URL is an answer too (an
//!   issuer that was removed, such as a tenant): an empty set, so its tokens stop
//!   verifying at that fetch rather than `max_stale` later.
//! - **Outages**: only a failed fetch (transport, timeout, another non-2xx status, a body
//!   that is too large or not a JWK set) is an outage. It keeps the last good set until
//!   that is `max_stale` old, so an outage is survived for a bounded time and not
//!   longer; then verification fails closed.
//! - **Unknown `kid`**: one refetch (the issuer may have rotated), then a per-issuer
//!   cooldown, so a flood of random `kid`s costs at most one fetch per cooldown.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::error::{JwksError, JwtError};
use crate::jose::Algorithm;
use crate::jwk::{KeyFingerprint, VerifyingKey, parse_jwks};

/// Where an issuer's keys are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// Fetched over HTTP(S).
    Uri(reqwest::Url),
    /// Read from a file (e.g. a Kubernetes cluster's exported JWKS).
    File(PathBuf),
    /// Held by this process (the STS checking tokens it minted itself).
    Local(LocalJwks),
}

/// A JWK set this process holds, read through a function at each refresh.
#[derive(Clone)]
pub struct LocalJwks(Arc<dyn Fn() -> Vec<u8> + Send + Sync>);

impl LocalJwks {
    /// `jwks` returns the current JWK set document.
    pub fn new(jwks: impl Fn() -> Vec<u8> + Send + Sync + 'static) -> Self {
        LocalJwks(Arc::new(jwks))
    }
}

impl std::fmt::Debug for LocalJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalJwks")
    }
}

impl PartialEq for LocalJwks {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for LocalJwks {}

impl KeySource {
    /// A `jwks_uri` (see [`parse_jwks_uri`]).
    pub fn uri(uri: &str) -> Result<KeySource, &'static str> {
        parse_jwks_uri(uri).map(KeySource::Uri)
    }
}

/// The rule for a JWKS URL: an absolute `https` URL, or `http` to a loopback host only
/// (where nothing crosses a network), with no credentials in it.
pub fn parse_jwks_uri(uri: &str) -> Result<reqwest::Url, &'static str> {
    let url = reqwest::Url::parse(uri).map_err(|_| "not a URL")?;
    let host = url.host_str().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => return Err("must be https (plain http only for a loopback host)"),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials");
    }
    Ok(url)
}

/// How a key set is kept fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// How long a fetched set is used before one request refreshes it (the response's
    /// `max-age` wins when shorter).
    pub refresh: Duration,
    /// How long the last good set keeps serving when fetches fail (an outage; a
    /// well-formed set, even an empty one, replaces it at once).
    pub max_stale: Duration,
    /// Least time between two fetch attempts outside the refresh schedule (unknown
    /// `kid`, no usable set). Scheduled refreshes are at least `min(refresh,
    /// refetch_cooldown)` apart.
    pub refetch_cooldown: Duration,
}

/// What a successful or failed fetch reports to an observer (metrics, logs).
pub type FetchObserver = Arc<dyn Fn(&str, Result<(), &JwksError>) + Send + Sync>;

/// A parsed key set and when it was fetched.
#[derive(Debug)]
pub struct KeySet {
    keys: Vec<VerifyingKey>,
    fetched_at: Instant,
    /// Age after which one request refetches.
    refresh_after: Duration,
}

/// The result of looking a token's key up in a set.
pub enum Pick<'a> {
    Found(&'a VerifyingKey),
    /// The `kid` names no key in the set.
    UnknownKid,
    /// No key fits: the `kid`'s key does not support the algorithm, or the token has
    /// no `kid` and not exactly one key fits.
    NoneFits,
}

impl KeySet {
    /// True when this set still picks, for `kid` and `alg`, the key of `fingerprint`:
    /// a verification made with that key still holds. No crypto.
    pub fn still_picks(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        fingerprint: &KeyFingerprint,
    ) -> bool {
        matches!(self.pick(kid, alg), Pick::Found(k) if k.fingerprint() == fingerprint)
    }

    /// The key for a token's `kid` and algorithm. Without a `kid` the token is
    /// acceptable only when exactly one key fits, so a token cannot make us try every
    /// key.
    pub fn pick(&self, kid: Option<&str>, alg: Algorithm) -> Pick<'_> {
        match kid {
            Some(kid) => match self.keys.iter().find(|k| k.kid() == Some(kid)) {
                None => Pick::UnknownKid,
                Some(key) if key.supports(alg) => Pick::Found(key),
                Some(_) => Pick::NoneFits,
            },
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.supports(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => Pick::Found(k),
                    _ => Pick::NoneFits,
                }
            }
        }
    }
}

/// One issuer's keys: the cached set and its fetch state.
pub struct JwksCache {
    name: Arc<str>,
    source: KeySource,
    allowed: Vec<Algorithm>,
    freshness: Freshness,
    max_bytes: usize,
    current: RwLock<Option<Arc<KeySet>>>,
    /// Serialises fetches (single flight).
    fetch_lock: tokio::sync::Mutex<()>,
    /// When the last fetch was attempted, for the refetch cooldown.
    last_attempt: Mutex<Option<Instant>>,
    observer: Option<FetchObserver>,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache")
            .field("name", &self.name)
            .field("source", &self.source)
            .finish()
    }
}

impl JwksCache {
    /// A cache for the keys at `source` usable under `allowed`; `name` labels errors
    /// and observations. Nothing is fetched until first needed.
    pub fn new(
        name: Arc<str>,
        source: KeySource,
        allowed: Vec<Algorithm>,
        freshness: Freshness,
        max_bytes: usize,
        observer: Option<FetchObserver>,
    ) -> JwksCache {
        JwksCache {
            name,
            source,
            allowed,
            freshness,
            max_bytes,
            current: RwLock::new(None),
            fetch_lock: tokio::sync::Mutex::new(()),
            last_attempt: Mutex::new(None),
            observer,
        }
    }

    /// The set, if one was fetched and is not yet stale.
    fn cached(&self) -> Option<Arc<KeySet>> {
        let current = self.current.read().ok()?.clone()?;
        (current.fetched_at.elapsed() < self.freshness.max_stale).then_some(current)
    }

    /// The keys. The hot path is one read. Past the refresh age one request refreshes
    /// them, without waiting if another fetch is under way and without failing if the
    /// issuer does (the cached set serves until it is stale). With no usable set, or
    /// for an unknown `kid`, the request waits for any fetch in flight, then fetches
    /// itself only if the cooldown allows.
    pub async fn key_set(
        &self,
        http: &reqwest::Client,
        unknown_kid: bool,
    ) -> Result<Arc<KeySet>, JwtError> {
        let cached = self.cached();
        if let (Some(set), false) = (&cached, unknown_kid) {
            if set.fetched_at.elapsed() < set.refresh_after {
                return Ok(set.clone());
            }
            let Ok(_guard) = self.fetch_lock.try_lock() else {
                return Ok(set.clone());
            };
            let floor = self.freshness.refresh.min(self.freshness.refetch_cooldown);
            if !self.may_fetch(floor) {
                return Ok(set.clone());
            }
            return Ok(self
                .fetch_locked(http)
                .await
                .unwrap_or_else(|_| set.clone()));
        }
        let seen = cached.as_ref().map(|s| s.fetched_at);
        let _guard = self.fetch_lock.lock().await;
        if let Some(set) = self.cached()
            && seen.is_none_or(|t| set.fetched_at > t)
        {
            return Ok(set); // fetched by the request we waited for
        }
        if !self.may_fetch(self.freshness.refetch_cooldown) {
            return cached.ok_or_else(|| JwtError::JwksUnavailable {
                trust: self.name.to_string(),
                reason: JwksError::Cooldown,
            });
        }
        match self.fetch_locked(http).await {
            Ok(set) => Ok(set),
            Err(e) => cached.ok_or(e),
        }
    }

    /// True when `cooldown` has passed since the last fetch attempt (and records this
    /// attempt).
    fn may_fetch(&self, cooldown: Duration) -> bool {
        let Ok(mut last) = self.last_attempt.lock() else {
            return false;
        };
        let now = Instant::now();
        match *last {
            Some(t) if now.duration_since(t) < cooldown => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }

    /// Fetches and installs the set; the caller holds the fetch lock. A well-formed
    /// set replaces the current one whatever it holds; a failure leaves it in place.
    async fn fetch_locked(&self, http: &reqwest::Client) -> Result<Arc<KeySet>, JwtError> {
        // A child of the request that waits for it (exported as an OpenTelemetry span
        // by a program that installs one): the trust's name and the outcome, nothing
        // of the keys.
        let span = tracing::debug_span!(
            "jwks_fetch",
            otel.kind = "client",
            trust = %self.name,
            outcome = tracing::field::Empty,
        );
        let result = match &self.source {
            KeySource::Uri(url) => {
                use tracing::Instrument as _;
                fetch_uri(http, url, "application/json", self.max_bytes)
                    .instrument(span.clone())
                    .await
            }
            KeySource::File(path) => tokio::fs::read(path)
                .await
                .map(|bytes| (bytes, None))
                .map_err(|_| JwksError::File),
            KeySource::Local(jwks) => Ok(((jwks.0)(), None)),
        }
        .and_then(|(bytes, max_age)| Ok((parse_jwks(&bytes, &self.allowed)?, max_age)))
        .or_else(|e| match e.withdrawn() {
            // The issuer says there is no key set here any more (a removed tenant):
            // an answer, not an outage, so its keys stop verifying now.
            true => Ok((Vec::new(), None)),
            false => Err(e),
        });
        span.record("outcome", if result.is_ok() { "ok" } else { "failed" });
        if let Some(observe) = &self.observer {
            observe(&self.name, result.as_ref().map(|_| ()));
        }
        match result {
            Ok((keys, max_age)) => {
                let refresh = self.freshness.refresh;
                let set = Arc::new(KeySet {
                    keys,
                    fetched_at: Instant::now(),
                    refresh_after: max_age.map_or(refresh, |age| age.min(refresh)),
                });
                if let Ok(mut current) = self.current.write() {
                    *current = Some(set.clone());
                }
                Ok(set)
            }
            Err(reason) => Err(JwtError::JwksUnavailable {
                trust: self.name.to_string(),
                reason,
            }),
        }
    }
}

/// The HTTP client for JWKS fetches: `timeout` for connect and for the whole request,
/// redirects only within the same origin.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(same_origin_redirects())
        .user_agent(concat!("agent-sts-verifier/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// The body at `url` (a JWKS, or another document of the issuer's, of media type
/// `accept`) and the response's `Cache-Control: max-age`, if any.
pub(crate) async fn fetch_uri(
    http: &reqwest::Client,
    url: &reqwest::Url,
    accept: &str,
    cap: usize,
) -> Result<(Vec<u8>, Option<Duration>), JwksError> {
    let mut response = http
        .get(url.clone())
        .header(reqwest::header::ACCEPT, accept)
        .send()
        .await
        .map_err(|_| JwksError::Transport)?;
    if !response.status().is_success() {
        return Err(JwksError::Status(response.status().as_u16()));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn jwks_uris_are_https_or_loopback_http_without_credentials() {
        let cases = [
            ("https://sts.example.org/jwks", true),
            ("http://127.0.0.1:8080/jwks", true),
            ("http://localhost/jwks", true),
            ("http://[::1]:1/jwks", true),
            ("http://sts.example.org/jwks", false),
            ("ftp://127.0.0.1/jwks", false),
            ("https://user:pw@sts.example.org/jwks", false),
            ("/jwks", false),
        ];
        for (uri, accepted) in cases {
            assert_eq!(KeySource::uri(uri).is_ok(), accepted, "{uri}");
        }
    }
}
