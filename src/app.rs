//! Assembly: from a validated [`Config`] to a running STS.
//!
//! `build` wires the parts (trusts, catalogue, keyring, secret store, audit log) and
//! reports a startup failure as a [`StartError`] whose exit code follows DESIGN.md
//! (2 for invalid configuration, 1 for a runtime failure). `serve` binds, starts the
//! background refreshers (keyring and catalogue, every `keys.refresh_interval`) and
//! runs until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::audit::AuditLog;
use crate::catalogue::{Catalogue, TrustDirectory};
use crate::config::{Config, KeyStoreKind, SecretsConfig, VaultConfig};
use crate::keys::{FileKeyStore, KeyStore, Keyring};
use crate::metrics::Metrics;
use crate::rate_limit::IdentityRateLimiter;
use crate::secret::VaultToken;
use crate::secrets::{CREDENTIAL_CACHE_TTL, CredentialCache, FileSecretStore, SecretStore};
use crate::server::{AppState, Layers};
use crate::sts::Sts;
use crate::trust::{TrustStore, unix_now};
use crate::vault::{Vault, VaultKeyStore, VaultSecretStore};

/// Why the STS could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Runtime(String),
}

impl StartError {
    /// DESIGN.md exit codes.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) => 2,
            StartError::Runtime(_) => 1,
        }
    }
}

/// The trust names and SPIFFE domains of a configuration, for the catalogue.
pub fn trust_directory(config: &Config) -> TrustDirectory {
    TrustDirectory::new(
        config
            .trusts
            .iter()
            .map(|t| (t.name.clone(), t.spiffe_trust_domains.clone())),
    )
}

/// The configured stores, and the Vault client behind them when one is configured.
#[derive(Debug, Clone)]
pub struct Stores {
    pub keys: Arc<dyn KeyStore>,
    pub secrets: Arc<dyn SecretStore>,
    pub vault: Option<Arc<Vault>>,
}

/// Builds the configured key and secret stores. With Vault, logs in once now; a failed
/// login is logged, not fatal: every Vault call logs in again when it can, and until
/// then the STS refuses tokens (fail closed) and reports not ready.
pub async fn stores(config: &Config) -> Result<Stores, StartError> {
    let uses_vault = matches!(config.keys.store, KeyStoreKind::Vault { .. })
        || matches!(config.secrets, SecretsConfig::Vault);
    let vault = match (&config.vault, uses_vault) {
        (Some(v), true) => Some(connect_vault(v).await?),
        _ => None,
    };
    let keys: Arc<dyn KeyStore> = match (&config.keys.store, &vault) {
        (KeyStoreKind::File { dir }, _) => Arc::new(FileKeyStore::new(dir)),
        (KeyStoreKind::Vault { path }, Some(vault)) => {
            Arc::new(VaultKeyStore::new(vault.clone(), path.clone()))
        }
        (KeyStoreKind::Vault { .. }, None) => {
            return Err(StartError::Config(format!(
                "{}: keys.store = \"vault\" needs [vault]",
                config.source
            )));
        }
    };
    let secrets = secret_store(&config.secrets, vault.as_ref(), &config.source)?;
    Ok(Stores {
        keys,
        secrets,
        vault,
    })
}

/// A Vault client for `v`, logged in once (a failed login is logged, not fatal).
pub async fn connect_vault(v: &VaultConfig) -> Result<Arc<Vault>, StartError> {
    let env_token = std::env::var("VAULT_TOKEN").ok().map(VaultToken::new);
    let vault =
        Arc::new(Vault::new(v, env_token).map_err(|e| StartError::Runtime(format!("vault: {e}")))?);
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

/// How long credentials are served from memory: at most 30 s, and with Vault at most
/// `vault.max_stale`.
pub fn credential_ttl(secrets: &SecretsConfig, vault: Option<&VaultConfig>) -> std::time::Duration {
    match (secrets, vault) {
        (SecretsConfig::Vault, Some(v)) => v.max_stale.min(CREDENTIAL_CACHE_TTL),
        _ => CREDENTIAL_CACHE_TTL,
    }
}

/// A built STS, ready to serve.
#[derive(Debug)]
pub struct App {
    pub state: AppState,
    pub layers: Layers,
    pub scopes_dir: PathBuf,
    pub directory: Arc<TrustDirectory>,
    pub refresh_interval: std::time::Duration,
    pub vault: Option<Arc<Vault>>,
}

/// Wires every part from `config`.
pub async fn build(config: &Config) -> Result<App, StartError> {
    let metrics = Arc::new(Metrics::new());
    let trusts = TrustStore::new(
        &config.trusts,
        &config.server.issuer,
        &config.limits.verification(),
        metrics.clone(),
    )
    .map_err(|e| StartError::Runtime(format!("HTTP client: {e}")))?;
    let directory = Arc::new(trust_directory(config));
    let catalogue = Catalogue::load_dir(&config.server.scopes_dir, &directory)
        .map_err(|e| StartError::Config(e.to_string()))?;
    if catalogue.is_empty() {
        tracing::warn!(dir = %config.server.scopes_dir.display(), "the scope catalogue has no actions: every exchange will be refused");
    }
    let stores = stores(config).await?;
    // Keys and credentials from Vault are served from memory at most `max_stale`
    // after the last successful read; the file stores have no such limit.
    let max_stale = match (&config.keys.store, &config.vault) {
        (KeyStoreKind::Vault { .. }, Some(v)) => Some(v.max_stale),
        _ => None,
    };
    let keyring = Arc::new(Keyring::new(
        stores.keys.clone(),
        config.tokens.max_ttl,
        max_stale,
        metrics.clone(),
    ));
    match keyring.refresh(unix_now()).await {
        Ok(0) => tracing::warn!("the keyring is empty: not ready; run `agent-sts keys rotate`"),
        Ok(n) => tracing::info!(keys = n, "keyring loaded"),
        Err(e) => tracing::error!(error = %e, "keyring unreadable: not ready"),
    }
    let ttl = credential_ttl(&config.secrets, config.vault.as_ref());
    let credentials = CredentialCache::new(stores.secrets.clone(), ttl);
    let audit =
        AuditLog::open(&config.audit.path).map_err(|e| StartError::Runtime(e.to_string()))?;
    let sts = Sts {
        issuer: config.server.issuer.clone(),
        default_ttl: config.tokens.default_ttl,
        max_ttl: config.tokens.max_ttl,
        trusts,
        catalogue: ArcSwap::from_pointee(catalogue),
        keyring,
        credentials,
        audit,
        metrics,
        rate_limiter: IdentityRateLimiter::new(
            config.limits.rate_per_second,
            config.limits.rate_burst,
        ),
    };
    Ok(App {
        state: AppState {
            sts: Arc::new(sts),
            max_body_bytes: config.limits.max_body_bytes,
            max_token_bytes: config.limits.max_token_bytes,
            jwks_max_age: config.keys.jwks_max_age,
        },
        layers: Layers {
            max_body_bytes: config.limits.max_body_bytes,
            request_timeout: config.limits.request_timeout,
            max_concurrency: config.limits.max_concurrency,
        },
        scopes_dir: config.server.scopes_dir.clone(),
        directory,
        refresh_interval: config.keys.refresh_interval,
        vault: stores.vault,
    })
}

impl App {
    /// Starts the keyring and catalogue refreshers: both re-read their source every
    /// `keys.refresh_interval` and keep the last good state on failure.
    pub fn spawn_refreshers(&self) {
        if let Some(vault) = &self.vault {
            vault.spawn_renewal();
        }
        let sts = self.state.sts.clone();
        every(self.refresh_interval, move || {
            let sts = sts.clone();
            async move {
                let _ = sts.keyring.refresh(unix_now()).await;
            }
        });
        let sts = self.state.sts.clone();
        let (dir, directory) = (self.scopes_dir.clone(), self.directory.clone());
        every(self.refresh_interval, move || {
            let (sts, dir, directory) = (sts.clone(), dir.clone(), directory.clone());
            async move {
                match tokio::task::spawn_blocking(move || Catalogue::load_dir(&dir, &directory))
                    .await
                {
                    Ok(Ok(c)) => sts.catalogue.store(Arc::new(c)),
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "catalogue reload failed; keeping the last good catalogue")
                    }
                    Err(e) => tracing::error!(error = %e, "catalogue reload task failed"),
                }
            }
        });
    }

    /// The router with its layers, plus `extra` routes (the dev issuer).
    pub fn router(&self, extra: Option<axum::Router>) -> axum::Router {
        let mut router = crate::server::router(self.state.clone());
        if let Some(extra) = extra {
            router = router.merge(extra);
        }
        crate::server::with_layers(router, self.layers, self.state.sts.clone())
    }

    /// Serves on `listener` until SIGINT/SIGTERM.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        extra: Option<axum::Router>,
    ) -> Result<(), StartError> {
        self.spawn_refreshers();
        let router = self.router(extra);
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .map_err(|e| StartError::Runtime(format!("server: {e}")))
    }
}

/// Runs `task` every `interval` (first run one interval from now), forever; a slow
/// run delays the next instead of piling up.
pub fn every<F, Fut>(interval: std::time::Duration, task: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            task().await;
        }
    });
}

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

/// Binds `addr`, naming it on failure.
pub async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, StartError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Runtime(format!("cannot listen on {addr}: {e}")))
}
