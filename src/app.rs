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
use crate::config::{Config, KeyStoreKind, SecretsConfig};
use crate::keys::{FileKeyStore, KeyStore, Keyring};
use crate::metrics::Metrics;
use crate::rate_limit::IdentityRateLimiter;
use crate::secrets::{CREDENTIAL_CACHE_TTL, CredentialCache, FileSecretStore, SecretStore};
use crate::server::{AppState, Layers};
use crate::sts::Sts;
use crate::trust::{TrustStore, unix_now};

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

/// The configured key store.
pub fn key_store(config: &Config) -> Result<Arc<dyn KeyStore>, StartError> {
    match &config.keys.store {
        KeyStoreKind::File { dir } => Ok(Arc::new(FileKeyStore::new(dir))),
        KeyStoreKind::Vault { .. } => Err(StartError::Runtime(format!(
            "{}: keys.store = \"vault\": the Vault key store is not in this build yet; use \"file\"",
            config.source
        ))),
    }
}

/// The configured secret store.
pub fn secret_store(config: &Config) -> Result<Arc<dyn SecretStore>, StartError> {
    match &config.secrets {
        SecretsConfig::File { path } => Ok(Arc::new(FileSecretStore::new(path))),
        SecretsConfig::Vault => Err(StartError::Runtime(format!(
            "{}: secrets.store = \"vault\": the Vault secret store is not in this build yet; use \"file\"",
            config.source
        ))),
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
}

/// Wires every part from `config`.
pub async fn build(config: &Config) -> Result<App, StartError> {
    let metrics = Arc::new(Metrics::new());
    let trusts = TrustStore::new(
        &config.trusts,
        &config.server.issuer,
        &config.limits,
        metrics.clone(),
    )
    .map_err(|e| StartError::Runtime(format!("HTTP client: {e}")))?;
    let directory = Arc::new(trust_directory(config));
    let catalogue = Catalogue::load_dir(&config.server.scopes_dir, &directory)
        .map_err(|e| StartError::Config(e.to_string()))?;
    if catalogue.is_empty() {
        tracing::warn!(dir = %config.server.scopes_dir.display(), "the scope catalogue has no actions: every exchange will be refused");
    }
    let keyring = Arc::new(Keyring::new(
        key_store(config)?,
        config.tokens.max_ttl,
        None,
        metrics.clone(),
    ));
    match keyring.refresh(unix_now()).await {
        Ok(0) => tracing::warn!("the keyring is empty: not ready; run `agent-sts keys rotate`"),
        Ok(n) => tracing::info!(keys = n, "keyring loaded"),
        Err(e) => tracing::error!(error = %e, "keyring unreadable: not ready"),
    }
    let credentials = CredentialCache::new(secret_store(config)?, CREDENTIAL_CACHE_TTL);
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
    })
}

impl App {
    /// Starts the keyring and catalogue refreshers: both re-read their source every
    /// `keys.refresh_interval` and keep the last good state on failure.
    pub fn spawn_refreshers(&self) {
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
fn every<F, Fut>(interval: std::time::Duration, task: F)
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

async fn shutdown_signal() {
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
