//! Integration credentials: the secret store seam and the credential gate.
//!
//! A catalogue action names a `credential`, a path in the secret store. The STS mints
//! a token for the action only while that credential exists, is non-empty and is not
//! `disabled` (revocation at the source); the shim reads the same entry to inject it.
//! Neither ever returns the value to a client.
//!
//! [`SecretStore`] is the seam: [`FileSecretStore`] here (the embedded default, for
//! `agent-sts dev` and tests without Vault), Vault in [`crate::store::vault`]. [`CredentialCache`]
//! sits in front of either: a moka cache with a short time-to-live (entries never older
//! than [`CREDENTIAL_CACHE_TTL`]), loading each path once however many requests miss at
//! the same moment. Store failures are not cached: the next request asks again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::secret::Credential;

/// Longest a credential's state is served from memory.
pub const CREDENTIAL_CACHE_TTL: Duration = Duration::from_secs(30);

/// One stored credential.
#[derive(Debug, Clone)]
pub struct StoredCredential {
    /// The HTTP header the shim sets upstream.
    pub header: String,
    pub value: Credential,
    pub disabled: bool,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SecretStoreError {
    #[error("secret store {location}: unavailable: {reason}")]
    Unavailable { location: String, reason: String },
    #[error("secret store {location}: the store's policy denies {path}: a configuration error")]
    Denied { location: String, path: String },
    #[error("secret store {location}: secret {path} is malformed: {reason}")]
    Malformed {
        location: String,
        path: String,
        reason: &'static str,
    },
}

/// Whether a store can serve reads, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreHealth {
    pub ok: bool,
    /// `ok`, why not, or a warning that does not stop serving.
    pub detail: String,
}

impl StoreHealth {
    pub fn ok() -> StoreHealth {
        StoreHealth {
            ok: true,
            detail: "ok".into(),
        }
    }

    pub fn failing(detail: impl Into<String>) -> StoreHealth {
        StoreHealth {
            ok: false,
            detail: detail.into(),
        }
    }
}

/// Where credentials live.
#[async_trait::async_trait]
pub trait SecretStore: Send + Sync + std::fmt::Debug {
    /// The credential at `path`, or `None` when there is none.
    async fn read(&self, path: &str) -> Result<Option<StoredCredential>, SecretStoreError>;

    /// Whether reads can be served. Never a network request: a readiness probe must
    /// not turn into traffic to the store.
    async fn health(&self) -> StoreHealth;
}

/// A tenant's view of a store: every path resolves under its `secrets_prefix`
/// (README, "Running many tenants"). Catalogue credential paths are relative (no
/// leading `/`, no `.` or `..` segment), so a tenant's catalogue can name nothing
/// outside its prefix.
#[derive(Debug)]
pub struct PrefixedSecretStore {
    inner: Arc<dyn SecretStore>,
    prefix: String,
}

impl PrefixedSecretStore {
    pub fn new(inner: Arc<dyn SecretStore>, prefix: &str) -> Self {
        PrefixedSecretStore {
            inner,
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }
}

#[async_trait::async_trait]
impl SecretStore for PrefixedSecretStore {
    async fn read(&self, path: &str) -> Result<Option<StoredCredential>, SecretStoreError> {
        self.inner.read(&format!("{}/{path}", self.prefix)).await
    }

    async fn health(&self) -> StoreHealth {
        self.inner.health().await
    }
}

/// The embedded store: a TOML file of `[secret."<path>"]` tables with `header`,
/// `value` and optional `disabled`.
#[derive(Debug, Clone)]
pub struct FileSecretStore {
    path: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretFile {
    #[serde(default)]
    secret: BTreeMap<String, RawSecret>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    header: Option<String>,
    value: Option<String>,
    #[serde(default)]
    disabled: bool,
}

impl FileSecretStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileSecretStore { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait::async_trait]
impl SecretStore for FileSecretStore {
    async fn read(&self, path: &str) -> Result<Option<StoredCredential>, SecretStoreError> {
        let location = self.path.display().to_string();
        let text = tokio::fs::read_to_string(&self.path).await.map_err(|e| {
            SecretStoreError::Unavailable {
                location: location.clone(),
                reason: e.kind().to_string(),
            }
        })?;
        // toml's error message may quote the offending line, which could hold a
        // secret: report a fixed reason instead.
        let file: SecretFile =
            toml::from_str(&text).map_err(|_| SecretStoreError::Unavailable {
                location: location.clone(),
                reason: "not a valid secrets file".into(),
            })?;
        let Some(raw) = file.secret.get(path) else {
            return Ok(None);
        };
        stored(raw.header.clone(), raw.value.clone(), raw.disabled)
            .map(Some)
            .map_err(|reason| SecretStoreError::Malformed {
                location,
                path: path.to_string(),
                reason,
            })
    }

    /// The file is local: reading and parsing it is the check.
    async fn health(&self) -> StoreHealth {
        match self.read("agent-sts/readiness-probe").await {
            Ok(_) => StoreHealth::ok(),
            Err(_) => StoreHealth::failing("the secrets file cannot be read"),
        }
    }
}

/// Validates the fields of a stored credential (shared with the Vault store).
pub fn stored(
    header: Option<String>,
    value: Option<String>,
    disabled: bool,
) -> Result<StoredCredential, &'static str> {
    let header = header.unwrap_or_else(|| "Authorization".into());
    if header.is_empty()
        || !header
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err("header is not a valid HTTP header name");
    }
    let value = value.ok_or("value is missing")?;
    Ok(StoredCredential {
        header,
        value: Credential::new(value),
        disabled,
    })
}

/// Why a credential cannot be used.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    #[error("credential {path} is missing")]
    Missing { path: String },
    #[error("credential {path} is empty")]
    Empty { path: String },
    #[error("credential {path} is disabled")]
    Disabled { path: String },
    #[error(transparent)]
    Store(#[from] SecretStoreError),
}

/// The credential gate: a bounded, short-lived cache over a [`SecretStore`].
#[derive(Debug)]
pub struct CredentialCache {
    store: Arc<dyn SecretStore>,
    cache: moka::future::Cache<String, Option<Arc<StoredCredential>>>,
}

impl CredentialCache {
    pub fn new(store: Arc<dyn SecretStore>, ttl: Duration) -> Self {
        CredentialCache {
            store,
            cache: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(ttl.min(CREDENTIAL_CACHE_TTL))
                .build(),
        }
    }

    /// The usable credential at `path`: present, non-empty, not disabled.
    pub async fn usable(&self, path: &str) -> Result<Arc<StoredCredential>, CredentialError> {
        let store = self.store.clone();
        let key = path.to_string();
        let entry = self
            .cache
            .try_get_with(key.clone(), async move {
                store.read(&key).await.map(|c| c.map(Arc::new))
            })
            .await
            .map_err(|e: Arc<SecretStoreError>| CredentialError::Store((*e).clone()))?;
        let path = path.to_string();
        match entry {
            None => Err(CredentialError::Missing { path }),
            Some(c) if c.disabled => Err(CredentialError::Disabled { path }),
            Some(c) if c.value.expose().is_empty() => Err(CredentialError::Empty { path }),
            Some(c) => Ok(c),
        }
    }

    /// Whether the store can serve reads (for `/readyz`), without asking it.
    pub async fn health(&self) -> StoreHealth {
        self.store.health().await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[tokio::test]
    async fn gate_refuses_missing_empty_disabled_and_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        std::fs::write(
            &file,
            r#"
[secret."ok"]
header = "Authorization"
value = "Bearer canary-1"
[secret."off"]
value = "x"
disabled = true
[secret."empty"]
value = ""
[secret."novalue"]
header = "X-Key"
"#,
        )
        .unwrap();
        let gate =
            CredentialCache::new(Arc::new(FileSecretStore::new(&file)), CREDENTIAL_CACHE_TTL);
        assert_eq!(
            gate.usable("ok").await.unwrap().value.expose(),
            "Bearer canary-1"
        );
        assert!(matches!(
            gate.usable("off").await,
            Err(CredentialError::Disabled { .. })
        ));
        assert!(matches!(
            gate.usable("empty").await,
            Err(CredentialError::Empty { .. })
        ));
        assert!(matches!(
            gate.usable("nope").await,
            Err(CredentialError::Missing { .. })
        ));
        let e = gate.usable("novalue").await.unwrap_err();
        assert!(matches!(
            e,
            CredentialError::Store(SecretStoreError::Malformed { .. })
        ));
        assert!(!format!("{e} {e:?}").contains("canary"));
        assert!(gate.health().await.ok);
    }
}
