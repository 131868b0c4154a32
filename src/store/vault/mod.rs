//! HashiCorp Vault over its HTTP API: login, KV reads and writes, and the Vault
//! implementations of the key store and the secret store.
//!
//! The client is a thin layer on reqwest rather than vaultrs: vaultrs 0.8's typed
//! responses require fields (`request_id`, `accessor`, ...) that RustyVault, our test
//! server, does not send, and its parse errors keep the raw response body, i.e. the
//! secret, in their `Debug` output. Here every response is parsed tolerantly (Vault's
//! `{"errors": [...]}` and RustyVault's `{"error": "..."}` alike) and no response body
//! ever reaches an error, a log line or a client.
//!
//! Fail closed, bounded: every operation has one time budget (`vault.timeout`) that
//! covers its retries; 5xx (other than sealed) and 429 are retried with jittered
//! backoff while the budget lasts. The token is a [`VaultToken`]: it never prints.
//!
//! A 403 means one of two things, and only one is fixed by logging in again:
//! - the token is no longer valid (expired, revoked): `lookup-self` is refused too.
//!   Then the client logs in again and retries once: one login per token generation
//!   however many requests saw it, none within [`FORCED_LOGIN_INTERVAL`] of the last
//!   such forced login, none within [`LOGIN_COOLDOWN`] of a failed one;
//! - the token is valid but its policy does not grant the path: a configuration
//!   error. No login; the path is remembered as denied for [`DENIAL_RECHECK`] (for
//!   that token), so callers get [`VaultError::PermissionDenied`] at once without a
//!   request to Vault, the denial is logged once per interval and counted for every
//!   caller.
//!
//! Readiness never calls Vault: [`Vault::health`] reports what the last exchange,
//! the session and its lease say, and [`Vault::spawn_renewal`] keeps that fresh
//! (renewal at 70% of the lease, a `lookup-self` when Vault has not been heard from
//! for [`HEALTH_INTERVAL`]). A token given as `auth = "token"` is looked up at login,
//! so its TTL and renewability are known like a login's lease.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use serde_json::{Map, Value, json};

pub mod transit;

use crate::config::{VaultAuth, VaultConfig};
use crate::keys::{KeyStore, KeyStoreError, StoreVersion, StoredRing};
use crate::secret::VaultToken;
use crate::store::secrets::{SecretStore, SecretStoreError, StoreHealth, StoredCredential, stored};
use crate::telemetry::metrics::VaultMetrics;

/// No new login attempt this soon after a failed one.
pub const LOGIN_COOLDOWN: Duration = Duration::from_secs(5);

/// No login forced by a 403 this soon after the last forced one, whatever the callers.
pub const FORCED_LOGIN_INTERVAL: Duration = Duration::from_secs(10);

/// How long a path the token's policy denied is answered as denied without asking.
pub const DENIAL_RECHECK: Duration = Duration::from_secs(30);

/// How long a `lookup-self` verdict on the current token is trusted. Short: a token
/// revoked just after a "valid" verdict would otherwise have its 403s taken for the
/// policy's (and their paths remembered as denied) until the verdict expires. Denied
/// paths are answered from memory anyway, so this costs at most one lookup per second
/// of fresh 403s.
const TOKEN_CHECK_TTL: Duration = Duration::from_secs(1);

/// Vault not heard from for this long: the health task asks `lookup-self`.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(10);

/// A token that cannot be renewed is logged as expiring this long before it does
/// (once per token; `/readyz` and the metrics say it all along).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(300);

/// At most this many denied paths are remembered (they come from configuration).
const DENIED_PATHS_CAP: usize = 10_000;

/// Renew (or re-login) at this fraction of the token's lease.
const RENEW_AT: f64 = 0.7;

/// Bounds on the renewal delay.
const RENEW_MIN: Duration = Duration::from_secs(5);
const RENEW_MAX: Duration = Duration::from_secs(3600);

/// When to renew a token whose lease is `lease`: at 70% of it, clamped between
/// [`RENEW_MIN`] and [`RENEW_MAX`].
fn renew_after(lease: Duration) -> Duration {
    lease.mul_f64(RENEW_AT).clamp(RENEW_MIN, RENEW_MAX)
}

/// Why a Vault operation failed. Never carries a response body or a token.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum VaultError {
    #[error("vault is sealed")]
    Sealed,
    #[error("vault refused the token (403)")]
    Forbidden,
    #[error(
        "vault's policy for this token denies {path}: a configuration error (grant it, or fix the path)"
    )]
    PermissionDenied { path: String },
    #[error("vault is unreachable or timed out")]
    Unavailable,
    #[error("vault answered HTTP {0}")]
    Status(u16),
    #[error("vault answered something that is not the expected JSON")]
    Malformed,
    #[error("no vault token: set VAULT_TOKEN or vault.token_file")]
    NoToken,
    #[error("cannot read {what} from {path}")]
    CredentialFile { what: &'static str, path: PathBuf },
    #[error("login failed: {0}")]
    Login(Box<VaultError>),
    /// Vault answered the login itself with a refusal (400 or 403): the credential
    /// is expired, revoked, for another audience, or not bound to the role. Vault's
    /// own answer is not kept (it may quote a claim); its server log has the reason.
    #[error(
        "vault refused the {method} login at auth/{mount}/login{}: the credential is expired, revoked, for another audience or issuer, or not bound to this role (vault's server log says which)",
        role.as_deref().map(|r| format!(" for role {r}")).unwrap_or_default()
    )]
    LoginRefused {
        method: &'static str,
        mount: String,
        role: Option<String>,
    },
    #[error("login refused: the last login failed less than 5s ago")]
    LoginCooldown,
    #[error("login refused: the last login forced by a refused token was less than 10s ago")]
    LoginTooSoon,
}

impl VaultError {
    fn retryable(&self) -> bool {
        matches!(self, VaultError::Unavailable)
            || matches!(self, VaultError::Status(s) if *s == 429 || (*s >= 500 && *s != 503))
    }
}

/// What a login, renewal or lookup says about a token.
#[derive(Clone, Copy)]
struct Lease {
    /// Time to live left, when the token expires at all.
    ttl: Option<Duration>,
    renewable: bool,
}

struct Session {
    token: VaultToken,
    /// Increases with every login, so concurrent 403s re-login once.
    generation: u64,
    lease: Lease,
    /// When the token expires, when it does.
    expires_at: Option<Instant>,
    /// When to renew it (or log in again), when it expires.
    renew_at: Option<Instant>,
}

impl Session {
    fn new(token: VaultToken, generation: u64, lease: Lease) -> Session {
        let now = Instant::now();
        Session {
            token,
            generation,
            lease,
            expires_at: lease.ttl.map(|ttl| now + ttl),
            renew_at: lease.ttl.map(|ttl| now + renew_after(ttl)),
        }
    }
}

/// How the last exchange with Vault went, for [`Vault::health`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reach {
    Answered,
    Sealed,
    Unreachable,
}

/// What the client knows without asking Vault.
#[derive(Default)]
struct Observed {
    last_exchange: Option<(Instant, Reach)>,
    last_forced_login: Option<Instant>,
    /// `(generation, when, valid)` of the last `lookup-self` verdict on a 403.
    token_check: Option<(u64, Instant, bool)>,
    /// Paths the token's policy denied: `(generation, when)`.
    denied: HashMap<String, (u64, Instant)>,
}

/// A logged-in Vault client.
pub struct Vault {
    http: reqwest::Client,
    pub(crate) config: VaultConfig,
    base: String,
    session: ArcSwapOption<Session>,
    generation: AtomicU64,
    login_lock: tokio::sync::Mutex<Option<Instant>>,
    observed: Mutex<Observed>,
    /// The generation whose coming expiry was last logged.
    warned: AtomicU64,
    metrics: VaultMetrics,
    /// `VAULT_TOKEN` as read at startup.
    env_token: Option<VaultToken>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("address", &self.config.address)
            .field("kv_mount", &self.config.kv_mount)
            .field("token", &"[redacted]")
            .finish()
    }
}

/// Reads a credential file (role id, secret id, token), trimmed.
fn read_credential(path: &Path, what: &'static str) -> Result<VaultToken, VaultError> {
    std::fs::read_to_string(path)
        .map(|s| VaultToken::new(s.trim()))
        .map_err(|_| VaultError::CredentialFile {
            what,
            path: path.to_path_buf(),
        })
}

/// `f`, or `Unavailable` if it has not finished by `deadline`.
async fn within<T>(
    deadline: Instant,
    f: impl std::future::Future<Output = Result<T, VaultError>>,
) -> Result<T, VaultError> {
    tokio::time::timeout_at(deadline.into(), f)
        .await
        .unwrap_or(Err(VaultError::Unavailable))
}

fn jitter(max_ms: u64) -> Duration {
    let mut b = [0u8; 2];
    let _ = aws_lc_rs::rand::fill(&mut b);
    Duration::from_millis(u64::from(u16::from_le_bytes(b)) % max_ms.max(1))
}

/// The outcome label of one exchange, for `vault_requests`.
fn outcome_label(result: &Result<Value, VaultError>) -> &'static str {
    match result {
        Ok(Value::Null) => "not_found_or_empty",
        Ok(_) => "ok",
        Err(VaultError::Forbidden) => "forbidden",
        Err(VaultError::Sealed) => "sealed",
        Err(VaultError::Unavailable) => "unreachable",
        Err(VaultError::Malformed) => "malformed",
        Err(_) => "error",
    }
}

impl Vault {
    /// A client for `config`; logs in lazily (first use) or through [`Vault::login`].
    pub fn new(config: &VaultConfig, env_token: Option<VaultToken>) -> Result<Vault, VaultError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|_| VaultError::Unavailable)?;
        Ok(Vault {
            http,
            base: config.address.trim_end_matches('/').to_string(),
            config: config.clone(),
            session: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            login_lock: tokio::sync::Mutex::new(None),
            observed: Mutex::new(Observed::default()),
            warned: AtomicU64::new(0),
            metrics: VaultMetrics::default(),
            env_token,
        })
    }

    /// The client's counters and gauges, to register with a server's metrics.
    pub fn metrics(&self) -> &VaultMetrics {
        &self.metrics
    }

    fn observed(&self) -> std::sync::MutexGuard<'_, Observed> {
        self.observed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Logs in with the configured method, unless another login since `seen` already
    /// did, or the last login failed within [`LOGIN_COOLDOWN`].
    pub async fn login(&self, seen: u64) -> Result<(), VaultError> {
        let mut last_failure = self.login_lock.lock().await;
        if self.generation.load(Ordering::SeqCst) > seen {
            return Ok(());
        }
        if last_failure.is_some_and(|t| t.elapsed() < LOGIN_COOLDOWN) {
            return Err(VaultError::LoginCooldown);
        }
        match self.do_login().await {
            Ok((token, lease)) => {
                let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
                self.store_session(Session::new(token, generation, lease));
                *last_failure = None;
                self.metrics.login("ok");
                tracing::info!(generation, "vault login succeeded");
                Ok(())
            }
            Err(e) => {
                *last_failure = Some(Instant::now());
                self.metrics.login("failed");
                tracing::error!(error = %e, "vault login failed");
                Err(VaultError::Login(Box::new(e)))
            }
        }
    }

    /// A login forced by a 403 on a token that `lookup-self` says is no longer valid:
    /// at most one per [`FORCED_LOGIN_INTERVAL`], whatever the callers.
    async fn forced_login(&self, seen: u64) -> Result<(), VaultError> {
        if self.generation.load(Ordering::SeqCst) > seen {
            return Ok(()); // another caller already did
        }
        {
            let mut observed = self.observed();
            if observed
                .last_forced_login
                .is_some_and(|t| t.elapsed() < FORCED_LOGIN_INTERVAL)
            {
                return Err(VaultError::LoginTooSoon);
            }
            observed.last_forced_login = Some(Instant::now());
        }
        tracing::warn!("vault refused the token; logging in again");
        self.login(seen).await
    }

    fn store_session(&self, session: Session) {
        let expires_at = session.expires_at.map(|at| {
            let left = at.saturating_duration_since(Instant::now());
            (SystemTime::now() + left)
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        });
        self.metrics.token_expires_at.set(expires_at.unwrap_or(0));
        self.metrics
            .token_renewable
            .set(i64::from(session.lease.renewable));
        self.session.store(Some(Arc::new(session)));
    }

    async fn do_login(&self) -> Result<(VaultToken, Lease), VaultError> {
        let (method, mount, role): (&'static str, &str, Option<&str>) = match &self.config.auth {
            VaultAuth::Token { .. } => ("token", "token", None),
            VaultAuth::AppRole { mount, .. } => ("approle", mount, None),
            VaultAuth::Kubernetes { mount, role, .. } => ("kubernetes", mount, Some(role)),
            VaultAuth::Jwt { mount, role, .. } => ("jwt", mount, Some(role)),
        };
        let (path, body) = match &self.config.auth {
            VaultAuth::Token { token_file } => {
                let token = match token_file {
                    Some(path) => read_credential(path, "vault token")?,
                    None => self.env_token.clone().ok_or(VaultError::NoToken)?,
                };
                // A given token has a TTL and a renewability of its own: learn them.
                let lease = self.lookup(&token).await?;
                return Ok((token, lease));
            }
            VaultAuth::AppRole {
                mount,
                role_id_file,
                secret_id_file,
            } => {
                let role_id = read_credential(role_id_file, "approle role_id")?;
                let secret_id = read_credential(secret_id_file, "approle secret_id")?;
                (
                    format!("auth/{mount}/login"),
                    json!({"role_id": role_id.expose(), "secret_id": secret_id.expose()}),
                )
            }
            VaultAuth::Kubernetes {
                mount,
                role,
                token_file,
            } => {
                let jwt = read_credential(token_file, "kubernetes service-account token")?;
                (
                    format!("auth/{mount}/login"),
                    json!({"role": role, "jwt": jwt.expose()}),
                )
            }
            // Re-read at every login: a projected token the platform rotated is
            // picked up by the next login (renewal failure, a 403 on a dead token).
            VaultAuth::Jwt {
                mount,
                role,
                token_file,
            } => {
                let jwt = read_credential(token_file, "jwt auth workload token")?;
                (
                    format!("auth/{mount}/login"),
                    json!({"role": role, "jwt": jwt.expose()}),
                )
            }
        };
        let response = self
            .send(reqwest::Method::POST, &path, None, Some(&body))
            .await
            .map_err(|e| match e {
                VaultError::Status(400) | VaultError::Forbidden => VaultError::LoginRefused {
                    method,
                    mount: mount.to_string(),
                    role: role.map(str::to_string),
                },
                other => other,
            })?;
        auth_of(&response)
    }

    /// `lookup-self` with `token`: its TTL and renewability.
    async fn lookup(&self, token: &VaultToken) -> Result<Lease, VaultError> {
        let v = self
            .send(
                reqwest::Method::GET,
                "auth/token/lookup-self",
                Some(token),
                None,
            )
            .await?;
        let data = v.get("data").ok_or(VaultError::Malformed)?;
        Ok(Lease {
            ttl: data
                .get("ttl")
                .and_then(Value::as_u64)
                .filter(|s| *s > 0)
                .map(Duration::from_secs),
            renewable: data
                .get("renewable")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }

    /// The current session, logging in first if there is none.
    async fn session(&self) -> Result<Arc<Session>, VaultError> {
        if let Some(s) = self.session.load_full() {
            return Ok(s);
        }
        self.login(self.generation.load(Ordering::SeqCst)).await?;
        self.session.load_full().ok_or(VaultError::NoToken)
    }

    /// One HTTP exchange; maps the status, parses JSON. `Value::Null` is a 204, or a
    /// 404 on a read. Recorded for [`Vault::health`] and counted.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&VaultToken>,
        body: Option<&Value>,
    ) -> Result<Value, VaultError> {
        let operation = operation(&method, path);
        let started = Instant::now();
        // A child of the request (or refresher) that waits for Vault, exported when
        // `[telemetry]` is on: the operation and its outcome, never the path or token.
        let span = tracing::debug_span!(
            "vault",
            otel.kind = "client",
            operation,
            outcome = tracing::field::Empty,
        );
        let result = {
            use tracing::Instrument as _;
            self.exchange(method, path, token, body)
                .instrument(span.clone())
                .await
        };
        span.record("outcome", outcome_label(&result));
        self.metrics.observe(operation, started.elapsed());
        let reach = match &result {
            Err(VaultError::Unavailable) => Reach::Unreachable,
            Err(VaultError::Sealed) => Reach::Sealed,
            Err(VaultError::Status(s)) if *s >= 500 => Reach::Unreachable,
            _ => Reach::Answered,
        };
        self.observed().last_exchange = Some((Instant::now(), reach));
        self.metrics.request(outcome_label(&result));
        result
    }

    async fn exchange(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&VaultToken>,
        body: Option<&Value>,
    ) -> Result<Value, VaultError> {
        let read = method == reqwest::Method::GET;
        let mut request = self
            .http
            .request(method, format!("{}/v1/{path}", self.base))
            .header("X-Vault-Request", "true");
        if let Some(token) = token {
            request = request.header("X-Vault-Token", token.expose());
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|_| VaultError::Unavailable)?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|_| VaultError::Unavailable)?;
        match status {
            200..=299 if bytes.is_empty() => Ok(Value::Null),
            200..=299 => serde_json::from_slice(&bytes).map_err(|_| VaultError::Malformed),
            // Absent on a read, unless it is a KV v2 version that was deleted or
            // destroyed (see `deleted_version`); on a write, Vault refused the path
            // ("invalid path").
            404 if read => Ok(deleted_version(&bytes)),
            403 => Err(VaultError::Forbidden),
            503 => Err(VaultError::Sealed),
            other => Err(VaultError::Status(other)),
        }
    }

    /// Whether `path` was denied to the token of `generation` less than
    /// [`DENIAL_RECHECK`] ago.
    fn known_denied(&self, path: &str, generation: u64) -> bool {
        self.observed()
            .denied
            .get(path)
            .is_some_and(|(g, at)| *g == generation && at.elapsed() < DENIAL_RECHECK)
    }

    /// Remembers that the token of `generation` may not use `path`, logging it once
    /// per [`DENIAL_RECHECK`].
    fn remember_denied(&self, path: &str, generation: u64) {
        let mut observed = self.observed();
        if observed.denied.len() >= DENIED_PATHS_CAP {
            observed.denied.clear();
        }
        observed
            .denied
            .insert(path.to_string(), (generation, Instant::now()));
        drop(observed);
        tracing::error!(
            path,
            recheck_after_secs = DENIAL_RECHECK.as_secs(),
            "vault's policy denies this path to the STS's token: a configuration error; requests needing it are refused without asking vault until the recheck"
        );
    }

    /// After a 403: is the token of `session` still valid (so the 403 was its
    /// policy)? One `lookup-self` per token per [`TOKEN_CHECK_TTL`].
    async fn token_valid(&self, session: &Session) -> Result<bool, VaultError> {
        if let Some((generation, at, valid)) = self.observed().token_check
            && generation == session.generation
            && at.elapsed() < TOKEN_CHECK_TTL
        {
            return Ok(valid);
        }
        let valid = match self.lookup(&session.token).await {
            Ok(_) => true,
            Err(VaultError::Forbidden) => false,
            Err(e) => return Err(e),
        };
        self.observed().token_check = Some((session.generation, Instant::now(), valid));
        Ok(valid)
    }

    /// An authenticated call with the retry, re-login and time-budget rules.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, VaultError> {
        self.call_with(method, path, body, true).await
    }

    /// [`Vault::call`]; without `retry`, a 5xx or 429 is answered at once (a
    /// signature a request waits for: the client retries, not us).
    async fn call_with(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        retry: bool,
    ) -> Result<Value, VaultError> {
        let deadline = Instant::now() + self.config.timeout;
        let denied = || {
            self.metrics.permission_denied.inc();
            VaultError::PermissionDenied {
                path: path.to_string(),
            }
        };
        let mut relogged = false;
        let mut attempt = 0u32;
        loop {
            let session = within(deadline, self.session()).await?;
            if self.known_denied(path, session.generation) {
                return Err(denied());
            }
            let result = within(
                deadline,
                self.send(method.clone(), path, Some(&session.token), body),
            )
            .await;
            match result {
                Err(VaultError::Forbidden) => {
                    if within(deadline, self.token_valid(&session)).await? {
                        self.remember_denied(path, session.generation);
                        return Err(denied());
                    }
                    if relogged {
                        return Err(VaultError::Forbidden);
                    }
                    relogged = true;
                    within(deadline, self.forced_login(session.generation)).await?;
                }
                Err(e) if retry && e.retryable() && attempt < 3 => {
                    attempt += 1;
                    let backoff = Duration::from_millis(50 << attempt) + jitter(50);
                    if Instant::now() + backoff >= deadline {
                        return Err(e);
                    }
                    tokio::time::sleep(backoff).await;
                }
                other => return other,
            }
        }
    }

    /// Reads the KV secret at `path`: its data and its version (KV v2), or `None` when
    /// it never existed or its latest version was deleted or destroyed.
    pub async fn kv_read(
        &self,
        path: &str,
    ) -> Result<Option<(Map<String, Value>, Option<u64>)>, VaultError> {
        Ok(match self.kv_entry(path).await? {
            KvEntry::Present { data, version } => Some((data, version)),
            KvEntry::Absent | KvEntry::Deleted { .. } => None,
        })
    }

    /// Reads the KV secret at `path`, telling an entry that never existed from one
    /// whose latest version was deleted or destroyed (KV v2).
    pub async fn kv_entry(&self, path: &str) -> Result<KvEntry, VaultError> {
        let mount = &self.config.kv_mount;
        if self.config.kv_version == 2 {
            let v = self
                .call(reqwest::Method::GET, &format!("{mount}/data/{path}"), None)
                .await?;
            if v.is_null() {
                return Ok(KvEntry::Absent);
            }
            let data = v.get("data").ok_or(VaultError::Malformed)?;
            let version = data.pointer("/metadata/version").and_then(Value::as_u64);
            match data.get("data") {
                Some(Value::Object(m)) => Ok(KvEntry::Present {
                    data: m.clone(),
                    version,
                }),
                // A version without data: deleted (`vault kv delete`) or destroyed.
                Some(Value::Null) => Ok(KvEntry::Deleted {
                    version,
                    destroyed: data.pointer("/metadata/destroyed") == Some(&Value::Bool(true)),
                }),
                _ => Err(VaultError::Malformed),
            }
        } else {
            let v = self
                .call(reqwest::Method::GET, &format!("{mount}/{path}"), None)
                .await?;
            match v.get("data") {
                _ if v.is_null() => Ok(KvEntry::Absent),
                Some(Value::Object(m)) => Ok(KvEntry::Present {
                    data: m.clone(),
                    version: None,
                }),
                _ => Err(VaultError::Malformed),
            }
        }
    }

    /// Writes `data` at `path`; on KV v2 with check-and-set `cas` (0: must not exist).
    pub async fn kv_write(
        &self,
        path: &str,
        data: &Map<String, Value>,
        cas: Option<u64>,
    ) -> Result<(), VaultError> {
        let mount = &self.config.kv_mount;
        let (url, body) = if self.config.kv_version == 2 {
            let mut body = json!({ "data": data });
            if let Some(cas) = cas {
                body["options"] = json!({ "cas": cas });
            }
            (format!("{mount}/data/{path}"), body)
        } else {
            (format!("{mount}/{path}"), Value::Object(data.clone()))
        };
        self.call(reqwest::Method::POST, &url, Some(&body))
            .await
            .map(|_| ())
    }

    /// Writes `data` at `path` only if it still holds `expected` (check-and-set): KV v2
    /// makes the write conditional in Vault itself (`cas`); KV v1 cannot, so `current`
    /// (the caller's read of the version) is compared right before writing, and a
    /// narrow race remains. A read error from `current` is the caller's.
    pub async fn kv_write_if<E>(
        &self,
        path: &str,
        data: &Map<String, Value>,
        expected: &StoreVersion,
        current: impl AsyncFnOnce() -> Result<StoreVersion, E>,
    ) -> Result<CasWrite, E> {
        let cas = if self.config.kv_version == 2 {
            match expected.0.parse::<u64>() {
                Ok(v) => Some(v),
                Err(_) => return Ok(CasWrite::Failed("bad version".into())),
            }
        } else {
            if &current().await? != expected {
                return Ok(CasWrite::Conflict);
            }
            None
        };
        Ok(match self.kv_write(path, data, cas).await {
            Ok(()) => CasWrite::Written,
            Err(VaultError::Status(400)) if cas.is_some() => CasWrite::Conflict,
            Err(other) => CasWrite::Failed(other.to_string()),
        })
    }

    /// Keeps the token alive and the health fresh: renews at ~70% of the lease, logs
    /// in again when renewal fails or is not possible, and asks `lookup-self` when
    /// Vault has not been heard from for [`HEALTH_INTERVAL`]. Runs forever.
    pub fn spawn_renewal(self: &Arc<Self>) {
        let vault = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let Some(session) = vault.session.load_full() else {
                    // Not logged in (startup login failed): keep trying.
                    tokio::time::sleep(RENEW_MIN).await;
                    let _ = vault.login(vault.generation.load(Ordering::SeqCst)).await;
                    continue;
                };
                let now = Instant::now();
                if session.renew_at.is_some_and(|at| at <= now) {
                    let renewed = if session.lease.renewable {
                        vault.renew(&session).await
                    } else {
                        Err(VaultError::Status(400))
                    };
                    if let Err(e) = renewed {
                        tracing::info!(error = %e, "vault token renewal not possible; logging in again");
                        if vault.login(session.generation).await.is_err() {
                            tokio::time::sleep(RENEW_MIN).await;
                        }
                    }
                    continue;
                }
                let wake = session
                    .renew_at
                    .map_or(now + HEALTH_INTERVAL, |at| at.min(now + HEALTH_INTERVAL));
                tokio::time::sleep_until(wake.into()).await;
                vault.check_in(&session).await;
            }
        });
    }

    /// A `lookup-self` when Vault has not been heard from for [`HEALTH_INTERVAL`]:
    /// keeps [`Vault::health`] true to what Vault says now.
    async fn check_in(&self, session: &Session) {
        let expiring = !session.lease.renewable
            && session
                .expires_at
                .is_some_and(|at| at.saturating_duration_since(Instant::now()) < EXPIRY_WARNING);
        if expiring && self.warned.swap(session.generation, Ordering::SeqCst) != session.generation
        {
            tracing::warn!(
                "the vault token cannot be renewed and expires within 5 minutes: replace it"
            );
        }
        let quiet = self
            .observed()
            .last_exchange
            .is_none_or(|(at, _)| at.elapsed() >= HEALTH_INTERVAL);
        if quiet && let Err(VaultError::Forbidden) = self.lookup(&session.token).await {
            let _ = self.forced_login(session.generation).await;
        }
    }

    async fn renew(&self, session: &Session) -> Result<(), VaultError> {
        let v = self
            .send(
                reqwest::Method::POST,
                "auth/token/renew-self",
                Some(&session.token),
                Some(&json!({})),
            )
            .await?;
        let (_, lease) = auth_of(&v)?;
        self.store_session(Session::new(
            session.token.clone(),
            session.generation,
            lease,
        ));
        Ok(())
    }

    /// What readiness reports, from state the client already holds (no request).
    pub fn health(&self) -> StoreHealth {
        let bad = StoreHealth::failing;
        let Some(session) = self.session.load_full() else {
            return bad("not logged in to vault");
        };
        match self.observed().last_exchange {
            Some((_, Reach::Sealed)) => return bad("vault is sealed"),
            Some((_, Reach::Unreachable)) => return bad("vault is unreachable"),
            _ => {}
        }
        match session.expires_at {
            Some(at) if at <= Instant::now() => bad("the vault token has expired"),
            Some(at) if !session.lease.renewable => {
                let left = at.saturating_duration_since(Instant::now());
                let detail = format!(
                    "ok, but the vault token cannot be renewed and expires in {}s",
                    left.as_secs()
                );
                StoreHealth { ok: true, detail }
            }
            _ => StoreHealth::ok(),
        }
    }
}

/// What a KV read found. Its `Debug` never prints the data (a credential, a key).
pub enum KvEntry {
    /// Never written, or its metadata deleted (KV v1: not there).
    Absent,
    /// KV v2: the latest version was deleted (`vault kv delete`, undeletable) or
    /// destroyed (`vault kv destroy`); `version` is that version.
    Deleted {
        version: Option<u64>,
        destroyed: bool,
    },
    Present {
        data: Map<String, Value>,
        /// KV v2: the version read.
        version: Option<u64>,
    },
}

impl std::fmt::Debug for KvEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KvEntry::Absent => f.write_str("Absent"),
            KvEntry::Deleted { version, destroyed } => f
                .debug_struct("Deleted")
                .field("version", version)
                .field("destroyed", destroyed)
                .finish(),
            KvEntry::Present { version, .. } => f
                .debug_struct("Present")
                .field("data", &"[redacted]")
                .field("version", version)
                .finish(),
        }
    }
}

/// The body of a 404 answer to a read. Vault answers a KV v2 read of a deleted or
/// destroyed latest version with 404 and that version's metadata
/// (`{"data": {"data": null, "metadata": {"deletion_time": "...", "destroyed": ...,
/// "version": 3}}}`), and a path that never existed with `{"errors": []}`. Only the
/// metadata of a deleted or destroyed version is kept, and never data: a 404 is at
/// most a deletion, `Value::Null` (absent) otherwise.
fn deleted_version(bytes: &[u8]) -> Value {
    let Ok(body) = serde_json::from_slice::<Value>(bytes) else {
        return Value::Null;
    };
    let Some(metadata) = body.pointer("/data/metadata").filter(|m| m.is_object()) else {
        return Value::Null;
    };
    let deleted = metadata
        .get("deletion_time")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.is_empty());
    let destroyed = metadata.get("destroyed") == Some(&Value::Bool(true));
    if deleted || destroyed {
        json!({ "data": { "data": null, "metadata": metadata } })
    } else {
        Value::Null
    }
}

/// The token, lease and renewability of a login or renewal response.
fn auth_of(v: &Value) -> Result<(VaultToken, Lease), VaultError> {
    let auth = v.get("auth").ok_or(VaultError::Malformed)?;
    let token = auth
        .get("client_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or(VaultError::Malformed)?;
    let ttl = auth
        .get("lease_duration")
        .and_then(Value::as_u64)
        .filter(|s| *s > 0)
        .map(Duration::from_secs);
    let renewable = auth
        .get("renewable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok((VaultToken::new(token), Lease { ttl, renewable }))
}

/// Credentials in Vault: `<kv_mount>/<path>` with `header`, `value`, `disabled`.
#[derive(Debug)]
pub struct VaultSecretStore {
    vault: Arc<Vault>,
}

impl VaultSecretStore {
    pub fn new(vault: Arc<Vault>) -> Self {
        VaultSecretStore { vault }
    }
}

#[async_trait::async_trait]
impl SecretStore for VaultSecretStore {
    async fn read(&self, path: &str) -> Result<Option<StoredCredential>, SecretStoreError> {
        let location = format!("vault {}", self.vault.config.kv_mount);
        let data = self.vault.kv_read(path).await.map_err(|e| match e {
            VaultError::PermissionDenied { .. } => SecretStoreError::Denied {
                location: location.clone(),
                path: path.to_string(),
            },
            e => SecretStoreError::Unavailable {
                location: location.clone(),
                reason: e.to_string(),
            },
        })?;
        let Some((data, _)) = data else {
            return Ok(None);
        };
        let text = |k: &str| data.get(k).and_then(Value::as_str).map(str::to_string);
        let disabled = match data.get("disabled") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s == "true",
            Some(_) => true, // unreadable: fail closed
        };
        stored(text("header"), text("value"), disabled)
            .map(Some)
            .map_err(|reason| SecretStoreError::Malformed {
                location,
                path: path.to_string(),
                reason,
            })
    }

    async fn health(&self) -> StoreHealth {
        self.vault.health()
    }
}

/// How a check-and-set write ([`Vault::kv_write_if`]) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasWrite {
    Written,
    /// The stored version is not the one expected: read again and retry.
    Conflict,
    /// Vault refused or failed (the reason names no value).
    Failed(String),
}

/// The signing keyring in Vault, at `<kv_mount>/<vault_path>`, as `{"keys": [...]}`.
#[derive(Debug)]
pub struct VaultKeyStore {
    vault: Arc<Vault>,
    path: String,
}

impl VaultKeyStore {
    pub fn new(vault: Arc<Vault>, path: impl Into<String>) -> Self {
        VaultKeyStore {
            vault,
            path: path.into(),
        }
    }
}

/// KV v1 has no versions: the version is a hash of the content.
pub fn content_version(data: &Map<String, Value>) -> StoreVersion {
    crate::keys::version_of(&serde_json::to_vec(data).unwrap_or_default())
}

#[async_trait::async_trait]
impl KeyStore for VaultKeyStore {
    fn location(&self) -> String {
        format!("vault {}/{}", self.vault.config.kv_mount, self.path)
    }

    async fn load(&self) -> Result<(StoredRing, StoreVersion), KeyStoreError> {
        let read = self
            .vault
            .kv_entry(&self.path)
            .await
            .map_err(|e| KeyStoreError::Read {
                location: self.location(),
                reason: e.to_string(),
            })?;
        let (data, version) = match read {
            KvEntry::Present { data, version } => (data, version),
            KvEntry::Absent => return Ok((StoredRing::default(), StoreVersion("0".into()))),
            // Not an empty ring: `serve` keeps its last good ring, `keys rotate` does
            // not start a new one over it.
            KvEntry::Deleted { version, destroyed } => {
                return Err(KeyStoreError::Deleted {
                    path: format!("{}/{}", self.vault.config.kv_mount, self.path),
                    version,
                    destroyed,
                });
            }
        };
        let version = match version {
            Some(v) => StoreVersion(v.to_string()),
            None => content_version(&data),
        };
        // Classified: a field name or nothing, never a (secret) value.
        let ring = StoredRing::from_map(data).map_err(|problem| KeyStoreError::Malformed {
            location: self.location(),
            problem,
        })?;
        Ok((ring, version))
    }

    async fn save(&self, ring: &StoredRing, expected: &StoreVersion) -> Result<(), KeyStoreError> {
        let write_err = |reason: String| KeyStoreError::Write {
            location: self.location(),
            reason,
        };
        let Value::Object(data) =
            serde_json::to_value(ring).map_err(|e| write_err(e.to_string()))?
        else {
            return Err(write_err("keyring is not an object".into()));
        };
        let current = async || self.load().await.map(|(_, version)| version);
        match self
            .vault
            .kv_write_if(&self.path, &data, expected, current)
            .await?
        {
            CasWrite::Written => Ok(()),
            CasWrite::Conflict => Err(KeyStoreError::Conflict {
                location: self.location(),
            }),
            CasWrite::Failed(reason) => Err(write_err(reason)),
        }
    }
}

/// The `operation` label of a request (one of `telemetry::metrics::VAULT_OPERATIONS`):
/// from the method and the fixed path shapes this client sends, never from a value.
fn operation(method: &reqwest::Method, path: &str) -> &'static str {
    if path.starts_with("auth/") && path.ends_with("/login") {
        "login"
    } else if path == "auth/token/renew-self" {
        "renew"
    } else if path == "auth/token/lookup-self" {
        "lookup"
    } else if *method == reqwest::Method::POST && path.contains("/sign/") {
        "sign"
    } else if *method == reqwest::Method::GET {
        "read"
    } else {
        "write"
    }
}

#[cfg(test)]
mod renewal_schedule {
    use super::*;

    #[test]
    fn renews_at_seventy_percent_clamped() {
        assert_eq!(
            renew_after(Duration::from_secs(100)),
            Duration::from_secs(70)
        );
        assert_eq!(renew_after(Duration::from_secs(1)), RENEW_MIN);
        assert_eq!(renew_after(Duration::from_secs(30 * 24 * 3600)), RENEW_MAX);
    }
}
