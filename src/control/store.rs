//! Where the deny list lives: beside the keyring, in the same store.
//!
//! - the file store: `<keys.dir>/deny-list.json`, mode 0600, replaced atomically; a
//!   save compares and writes under an exclusive lock on `deny-list.json.lock`, so
//!   check-and-set holds between processes on one machine;
//! - Vault KV: `deny.vault_path` (default beside `keys.vault_path`); KV v2's `cas`
//!   makes the write conditional in Vault itself.

use std::path::PathBuf;
use std::sync::Arc;

use super::deny_list::{DenyFormatError, StoredDenyList};
use crate::keys::{StoreVersion, version_of, write_private_file};
use crate::store::vault::{CasWrite, KvEntry, Vault, content_version};

/// Why the deny list could not be read or written. Names the place and the kind of
/// failure, never a value.
#[derive(Debug, thiserror::Error)]
pub enum DenyStoreError {
    #[error("deny list {location}: cannot read: {reason}")]
    Read { location: String, reason: String },
    #[error("deny list {location}: malformed: {problem}")]
    Malformed {
        location: String,
        problem: DenyFormatError,
    },
    #[error("deny list {location}: cannot write: {reason}")]
    Write { location: String, reason: String },
    #[error("deny list {location}: changed since it was read; retry")]
    Conflict { location: String },
}

/// A deny list kept with check-and-set.
#[async_trait::async_trait]
pub trait DenyStore: Send + Sync + std::fmt::Debug {
    /// The list and its version (an empty list when none was ever written).
    async fn load(&self) -> Result<(StoredDenyList, StoreVersion), DenyStoreError>;
    /// Writes the list if the store still holds `expected`.
    async fn save(
        &self,
        list: &StoredDenyList,
        expected: &StoreVersion,
    ) -> Result<(), DenyStoreError>;
    /// Where the list lives, for messages.
    fn location(&self) -> String;
}

/// `<dir>/deny-list.json`.
#[derive(Debug, Clone)]
pub struct FileDenyStore {
    path: PathBuf,
}

impl FileDenyStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileDenyStore {
            path: dir.into().join("deny-list.json"),
        }
    }

    fn read_blocking(path: &std::path::Path) -> std::io::Result<Option<Vec<u8>>> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[async_trait::async_trait]
impl DenyStore for FileDenyStore {
    fn location(&self) -> String {
        std::path::absolute(&self.path)
            .unwrap_or_else(|_| self.path.clone())
            .display()
            .to_string()
    }

    async fn load(&self) -> Result<(StoredDenyList, StoreVersion), DenyStoreError> {
        let bytes = match tokio::fs::read(&self.path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((StoredDenyList::default(), StoreVersion(String::new())));
            }
            Err(e) => {
                return Err(DenyStoreError::Read {
                    location: self.location(),
                    reason: e.kind().to_string(),
                });
            }
        };
        let list =
            StoredDenyList::from_json(&bytes).map_err(|problem| DenyStoreError::Malformed {
                location: self.location(),
                problem,
            })?;
        Ok((list, version_of(&bytes)))
    }

    async fn save(
        &self,
        list: &StoredDenyList,
        expected: &StoreVersion,
    ) -> Result<(), DenyStoreError> {
        let location = self.location();
        let bytes = serde_json::to_vec_pretty(list).map_err(|e| DenyStoreError::Write {
            location: location.clone(),
            reason: e.to_string(),
        })?;
        let path = self.path.clone();
        let expected = expected.clone();
        let outcome = tokio::task::spawn_blocking(move || -> Result<bool, std::io::Error> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut lock_path = path.clone().into_os_string();
            lock_path.push(".lock");
            let lock = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(PathBuf::from(lock_path))?;
            lock.lock()?;
            let current = Self::read_blocking(&path)?
                .map(|b| version_of(&b))
                .unwrap_or(StoreVersion(String::new()));
            if current != expected {
                return Ok(false);
            }
            write_private_file(&path, &bytes)?;
            Ok(true)
        })
        .await
        .map_err(|e| DenyStoreError::Write {
            location: location.clone(),
            reason: e.to_string(),
        })?;
        match outcome {
            Ok(true) => Ok(()),
            Ok(false) => Err(DenyStoreError::Conflict { location }),
            Err(e) => Err(DenyStoreError::Write {
                location,
                reason: e.kind().to_string(),
            }),
        }
    }
}

/// The deny list in Vault KV at `<kv_mount>/<path>`.
#[derive(Debug)]
pub struct VaultDenyStore {
    vault: Arc<Vault>,
    path: String,
}

impl VaultDenyStore {
    pub fn new(vault: Arc<Vault>, path: impl Into<String>) -> Self {
        VaultDenyStore {
            vault,
            path: path.into(),
        }
    }
}

#[async_trait::async_trait]
impl DenyStore for VaultDenyStore {
    fn location(&self) -> String {
        format!("vault {}/{}", self.vault.config.kv_mount, self.path)
    }

    async fn load(&self) -> Result<(StoredDenyList, StoreVersion), DenyStoreError> {
        let read = self
            .vault
            .kv_entry(&self.path)
            .await
            .map_err(|e| DenyStoreError::Read {
                location: self.location(),
                reason: e.to_string(),
            })?;
        let (data, version) = match read {
            KvEntry::Present { data, version } => (data, version),
            // A deleted list is an empty one that `deny add` writes over: the version
            // to write over is the deleted one's.
            KvEntry::Absent => (Default::default(), Some(0)),
            KvEntry::Deleted { version, .. } => (Default::default(), version),
        };
        let version = match version {
            Some(v) => StoreVersion(v.to_string()),
            None => content_version(&data),
        };
        let list = StoredDenyList::from_map(data).map_err(|problem| DenyStoreError::Malformed {
            location: self.location(),
            problem,
        })?;
        Ok((list, version))
    }

    async fn save(
        &self,
        list: &StoredDenyList,
        expected: &StoreVersion,
    ) -> Result<(), DenyStoreError> {
        let current = async || self.load().await.map(|(_, version)| version);
        match self
            .vault
            .kv_write_if(&self.path, &list.to_map(), expected, current)
            .await?
        {
            CasWrite::Written => Ok(()),
            CasWrite::Conflict => Err(DenyStoreError::Conflict {
                location: self.location(),
            }),
            CasWrite::Failed(reason) => Err(DenyStoreError::Write {
                location: self.location(),
                reason,
            }),
        }
    }
}

/// The configured deny-list store; `vault` is the client the other stores use, when
/// one is configured.
pub fn open(
    config: &crate::config::Config,
    vault: Option<&Arc<Vault>>,
) -> Result<Arc<dyn DenyStore>, crate::runtime::StartError> {
    use crate::config::KeyStoreKind;
    Ok(match (&config.deny.store, vault) {
        (KeyStoreKind::File { dir }, _) => Arc::new(FileDenyStore::new(dir)),
        (KeyStoreKind::Vault { path }, Some(vault)) => {
            Arc::new(VaultDenyStore::new(vault.clone(), path.clone()))
        }
        // Configuration never puts the deny list in Transit (it is a KV entry).
        (KeyStoreKind::Transit { .. }, Some(_)) => {
            return Err(crate::runtime::StartError::Config(format!(
                "{}: the deny list cannot live in Transit",
                config.source
            )));
        }
        (KeyStoreKind::Vault { .. } | KeyStoreKind::Transit { .. }, None) => {
            return Err(crate::runtime::StartError::Config(format!(
                "{}: the deny list in Vault needs [vault]",
                config.source
            )));
        }
    })
}
