//! Where durable secrets are read: the secret store seam (integration credentials) and
//! the Vault client that also backs the key store.
//!
//! - [`secrets`]: the [`SecretStore`] trait, the file store (`agent-sts dev` and tests
//!   without Vault) and the [`CredentialCache`] gate in front of either;
//! - [`vault`]: the thin Vault HTTP client (login, renewal, KV v1/v2) and the Vault
//!   implementations of [`SecretStore`] and of the keyring's [`KeyStore`];
//! - [`open`] here: the configured stores, for the STS and the shim alike.
//!
//! May import `keys` (for the [`KeyStore`] trait it implements), `config`, `secret`
//! and `telemetry`; never `sts` or `shim`.

pub mod secrets;
pub mod vault;

use std::sync::Arc;

pub use secrets::{
    CREDENTIAL_CACHE_TTL, CredentialCache, CredentialError, FileSecretStore, SecretStore,
    SecretStoreError, StoreHealth, StoredCredential,
};

use crate::config::{Config, KeyStoreKind, SecretsConfig, VaultAuth, VaultConfig};
use crate::keys::{FileKeyStore, KeySource};
use crate::runtime::StartError;
use vault::transit::TransitKeys;
use vault::{Vault, VaultKeyStore, VaultSecretStore};

/// The configured stores, and the Vault client behind them when one is configured.
#[derive(Debug, Clone)]
pub struct Stores {
    pub keys: KeySource,
    pub secrets: Arc<dyn SecretStore>,
    pub vault: Option<Arc<Vault>>,
}

/// Builds the configured key and secret stores. With Vault, logs in once now; a failed
/// login is logged, not fatal: every Vault call logs in again when it can, and until
/// then the STS refuses tokens (fail closed) and reports not ready.
pub async fn open(config: &Config) -> Result<Stores, StartError> {
    check_secret_files(
        Some(&config.keys.store),
        Some(&config.secrets),
        config.vault.as_ref(),
    )?;
    let uses_vault = matches!(
        config.keys.store,
        KeyStoreKind::Vault { .. } | KeyStoreKind::Transit { .. }
    ) || matches!(config.secrets, SecretsConfig::Vault);
    let vault = match (&config.vault, uses_vault) {
        (Some(v), true) => Some(connect_vault(v).await?),
        _ => None,
    };
    stores(config, vault)
}

/// The stores of a tenant's view of the configuration over the process's open Vault
/// session (README, "Running many tenants"). Only the tenant's keyring is its own to
/// check: the secrets file and Vault's files are the top level's, checked by [`open`].
pub fn open_with(config: &Config, vault: Option<Arc<Vault>>) -> Result<Stores, StartError> {
    check_secret_files(Some(&config.keys.store), None, None)?;
    stores(config, vault)
}

/// The key and secret stores of `config` over `vault`, its files already checked.
fn stores(config: &Config, vault: Option<Arc<Vault>>) -> Result<Stores, StartError> {
    let keys = match (&config.keys.store, &vault) {
        (KeyStoreKind::File { dir }, _) => KeySource::Stored(Arc::new(FileKeyStore::new(dir))),
        (KeyStoreKind::Vault { path }, Some(vault)) => {
            KeySource::Stored(Arc::new(VaultKeyStore::new(vault.clone(), path.clone())))
        }
        (KeyStoreKind::Transit { mount, key }, Some(vault)) => {
            KeySource::Remote(Arc::new(TransitKeys::new(vault.clone(), mount, key)))
        }
        (KeyStoreKind::Vault { .. } | KeyStoreKind::Transit { .. }, None) => {
            return Err(StartError::Config(format!(
                "{}: keys.store = \"vault\" or \"transit\" needs [vault]",
                config.source
            )));
        }
    };
    let secrets = secret_store(&config.secrets, vault.as_ref(), &config.source)?;
    let secrets = prefixed(secrets, config.secrets_prefix.as_deref());
    Ok(Stores {
        keys,
        secrets,
        vault,
    })
}

/// Refuses to start with a file of secrets (the file keyring, the file secret store,
/// Vault's token, role-id and secret-id files) that group or others can access. The
/// Kubernetes service-account token is the platform's to mount and is not checked.
pub fn check_secret_files(
    keys: Option<&KeyStoreKind>,
    secrets: Option<&SecretsConfig>,
    vault: Option<&VaultConfig>,
) -> Result<(), StartError> {
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    if let Some(KeyStoreKind::File { dir }) = keys {
        files.push(FileKeyStore::new(dir).path().to_path_buf());
    }
    if let Some(SecretsConfig::File { path }) = secrets {
        files.push(path.clone());
    }
    match vault.map(|v| &v.auth) {
        Some(VaultAuth::Token {
            token_file: Some(f),
        }) => files.push(f.clone()),
        Some(VaultAuth::AppRole {
            role_id_file,
            secret_id_file,
            ..
        }) => files.extend([role_id_file.clone(), secret_id_file.clone()]),
        _ => {}
    }
    files
        .iter()
        .try_for_each(|f| crate::keys::check_private_file(f))
        .map_err(StartError::Config)
}

/// A Vault client for `v`, logged in once (a failed login is logged, not fatal).
pub async fn connect_vault(v: &VaultConfig) -> Result<Arc<Vault>, StartError> {
    let vault = Arc::new(
        Vault::new(v, v.env_token.clone())
            .map_err(|e| StartError::Runtime(format!("vault: {e}")))?,
    );
    if let Err(e) = vault.login(0).await {
        tracing::error!(error = %e, "vault login at startup failed; requests needing Vault are refused until it succeeds");
    }
    Ok(vault)
}

/// The configured secret store (the STS's credential gate, the shim's injection).
pub fn secret_store(
    secrets: &SecretsConfig,
    vault: Option<&Arc<Vault>>,
    source: &str,
) -> Result<Arc<dyn SecretStore>, StartError> {
    match (secrets, vault) {
        (SecretsConfig::File { path }, _) => Ok(Arc::new(FileSecretStore::new(path))),
        (SecretsConfig::Vault, Some(vault)) => Ok(Arc::new(VaultSecretStore::new(vault.clone()))),
        (SecretsConfig::Vault, None) => Err(StartError::Config(format!(
            "{source}: secrets.store = \"vault\" needs [vault]"
        ))),
    }
}

/// `store` as a tenant sees it: under `prefix`, when there is one.
pub fn prefixed(store: Arc<dyn SecretStore>, prefix: Option<&str>) -> Arc<dyn SecretStore> {
    match prefix {
        Some(prefix) => Arc::new(secrets::PrefixedSecretStore::new(store, prefix)),
        None => store,
    }
}

/// How long credentials are served from memory: at most 30 s, and with Vault at most
/// `vault.max_stale`.
pub fn credential_ttl(secrets: &SecretsConfig, vault: Option<&VaultConfig>) -> std::time::Duration {
    match (secrets, vault) {
        (SecretsConfig::Vault, Some(v)) => v.max_stale.min(CREDENTIAL_CACHE_TTL),
        _ => CREDENTIAL_CACHE_TTL,
    }
}
