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
//! backoff while the budget lasts; a 403 triggers one re-login (one per token
//! generation, however many requests saw it, and none within [`LOGIN_COOLDOWN`] of a
//! failed login) and one retry, then the operation fails. The token is a
//! [`VaultToken`]: it never prints.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use serde_json::{Map, Value, json};

use crate::config::{VaultAuth, VaultConfig};
use crate::keys::{KeyStore, KeyStoreError, StoreVersion, StoredRing};
use crate::secret::VaultToken;
use crate::store::secrets::{SecretStore, SecretStoreError, StoredCredential, stored};

/// No new login attempt this soon after a failed one.
pub const LOGIN_COOLDOWN: Duration = Duration::from_secs(5);

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
    #[error("vault denied access (403)")]
    Forbidden,
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
    #[error("login refused: the last login failed less than 5s ago")]
    LoginCooldown,
}

impl VaultError {
    fn retryable(&self) -> bool {
        matches!(self, VaultError::Unavailable)
            || matches!(self, VaultError::Status(s) if *s == 429 || (*s >= 500 && *s != 503))
    }
}

struct Session {
    token: VaultToken,
    /// Increases with every login, so concurrent 403s re-login once.
    generation: u64,
    /// Lease of the token, when it has one.
    lease: Option<Duration>,
    renewable: bool,
}

/// A logged-in Vault client.
pub struct Vault {
    http: reqwest::Client,
    config: VaultConfig,
    base: String,
    session: ArcSwapOption<Session>,
    generation: AtomicU64,
    login_lock: tokio::sync::Mutex<Option<Instant>>,
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
            env_token,
        })
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
            Ok((token, lease, renewable)) => {
                let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
                self.session.store(Some(Arc::new(Session {
                    token,
                    generation,
                    lease,
                    renewable,
                })));
                *last_failure = None;
                tracing::info!(generation, "vault login succeeded");
                Ok(())
            }
            Err(e) => {
                *last_failure = Some(Instant::now());
                tracing::error!(error = %e, "vault login failed");
                Err(VaultError::Login(Box::new(e)))
            }
        }
    }

    async fn do_login(&self) -> Result<(VaultToken, Option<Duration>, bool), VaultError> {
        let (path, body) = match &self.config.auth {
            VaultAuth::Token { token_file } => {
                let token = match token_file {
                    Some(path) => read_credential(path, "vault token")?,
                    None => self.env_token.clone().ok_or(VaultError::NoToken)?,
                };
                return Ok((token, None, false));
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
        };
        let response = self
            .send(reqwest::Method::POST, &path, None, Some(&body))
            .await?;
        auth_of(&response)
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
    /// 404 on a read.
    async fn send(
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

    /// An authenticated call with the retry, re-login and time-budget rules.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, VaultError> {
        let deadline = Instant::now() + self.config.timeout;
        let mut relogged = false;
        let mut attempt = 0u32;
        loop {
            let session = within(deadline, self.session()).await?;
            let result = within(
                deadline,
                self.send(method.clone(), path, Some(&session.token), body),
            )
            .await;
            match result {
                Err(VaultError::Forbidden) if !relogged => {
                    relogged = true;
                    tracing::warn!("vault answered 403; logging in again once");
                    within(deadline, self.login(session.generation)).await?;
                }
                Err(e) if e.retryable() && attempt < 3 => {
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

    /// Keeps the token alive: renews at ~70% of its lease, re-logs in when renewal
    /// fails or is not possible. Runs forever.
    pub fn spawn_renewal(self: &Arc<Self>) {
        let vault = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let Some(session) = vault.session.load_full() else {
                    // Not logged in (startup login failed): keep trying, not hourly.
                    tokio::time::sleep(RENEW_MIN).await;
                    let _ = vault.login(vault.generation.load(Ordering::SeqCst)).await;
                    continue;
                };
                let Some(lease) = session.lease else {
                    tokio::time::sleep(RENEW_MAX).await;
                    continue;
                };
                tokio::time::sleep(renew_after(lease)).await;
                let Some(session) = vault.session.load_full() else {
                    continue;
                };
                let renewed = if session.renewable {
                    vault.renew(&session).await
                } else {
                    Err(VaultError::Status(400))
                };
                if let Err(e) = renewed {
                    tracing::info!(error = %e, "vault token renewal failed; logging in again");
                    let _ = vault.login(session.generation).await;
                }
            }
        });
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
        let (_, lease, renewable) = auth_of(&v)?;
        self.session.store(Some(Arc::new(Session {
            token: session.token.clone(),
            generation: session.generation,
            lease,
            renewable,
        })));
        Ok(())
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
fn auth_of(v: &Value) -> Result<(VaultToken, Option<Duration>, bool), VaultError> {
    let auth = v.get("auth").ok_or(VaultError::Malformed)?;
    let token = auth
        .get("client_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or(VaultError::Malformed)?;
    let lease = auth
        .get("lease_duration")
        .and_then(Value::as_u64)
        .filter(|s| *s > 0)
        .map(Duration::from_secs);
    let renewable = auth
        .get("renewable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok((VaultToken::new(token), lease, renewable))
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
        let data = self
            .vault
            .kv_read(path)
            .await
            .map_err(|e| SecretStoreError::Unavailable {
                location: location.clone(),
                reason: e.to_string(),
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

    fn location(&self) -> String {
        format!("vault {}/{}", self.vault.config.kv_mount, self.path)
    }
}

/// KV v1 has no versions: the version is a hash of the content.
fn content_version(data: &Map<String, Value>) -> StoreVersion {
    let bytes = serde_json::to_vec(data).unwrap_or_default();
    StoreVersion(hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        &bytes,
    )))
}

#[async_trait::async_trait]
impl KeyStore for VaultKeyStore {
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
        let cas = if self.vault.config.kv_version == 2 {
            Some(
                expected
                    .0
                    .parse::<u64>()
                    .map_err(|_| write_err("bad version".into()))?,
            )
        } else {
            // No check-and-set on KV v1: compare right before writing (a narrow race
            // remains; KV v2 closes it).
            let (_, current) = self.load().await?;
            if &current != expected {
                return Err(KeyStoreError::Conflict {
                    location: self.location(),
                });
            }
            None
        };
        self.vault
            .kv_write(&self.path, &data, cas)
            .await
            .map_err(|e| match e {
                VaultError::Status(400) if cas.is_some() => KeyStoreError::Conflict {
                    location: self.location(),
                },
                other => write_err(other.to_string()),
            })
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
