//! Assembly: from a validated [`Config`] to a running STS.
//!
//! `build` wires the parts (trusts, catalogue, keyring, secret store, audit log) of the
//! top-level issuer and of each `[[tenant]]` (one [`Issuer`] each, served together by
//! [`Issuers`]) and reports a startup failure as a [`StartError`] (README, "Commands":
//! exit code 2 for invalid configuration, 1 for a runtime failure). `serve` binds,
//! starts the background refreshers (keyring and catalogue, every
//! `keys.refresh_interval`; the deny list, every `deny.refresh_interval`; the
//! `[[tenant]]` entries of the configuration file), the admin listener when
//! `server.admin_listen` is set, and runs until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;

use crate::audit::AuditLog;
use crate::catalogue::{self, Catalogue, TrustDirectory};
use crate::config::{Config, KeyStoreKind};
use crate::control::{self, DenyGuard};
use crate::identity::{TrustStore, unix_now};
use crate::keys::Keyring;
use crate::runtime::{self, ConnectionLimits, StartError, shutdown_signal};
use crate::store::{self, CredentialCache, vault::Vault};
use crate::sts::exchange::{DpopSettings, Sts, StsParts};
use crate::sts::http::{AppState, Layers};
use crate::sts::issuers::{Issuer, Issuers, Refreshers};
use crate::sts::rate_limit::IdentityRateLimiter;
use crate::telemetry::metrics::{DenyMetrics, Metrics};

/// The largest header section a token request needs (the token travels in the body).
const STS_MAX_HEADER_BYTES: usize = 16 * 1024;

/// The trust names and SPIFFE domains of a configuration, for the catalogue, and the
/// tenants' secret prefixes its credential paths must stay out of.
pub fn trust_directory(config: &Config) -> TrustDirectory {
    TrustDirectory::new(
        config
            .trusts
            .iter()
            .map(|t| (t.name.clone(), t.spiffe_trust_domains.clone())),
    )
    .with_reserved_credentials(config.reserved_secret_prefixes())
}

/// What every issuer of the process shares: the Vault session and the transport
/// limits. Metrics are the process's (the top level) or a tenant's own registry.
#[derive(Debug, Clone)]
pub struct Shared {
    pub vault: Option<Arc<Vault>>,
    pub layers: Layers,
}

/// A built STS, ready to serve: the top-level issuer, the `[[tenant]]` issuers beside
/// it, and what the process serves once (health, readiness, metrics).
#[derive(Debug)]
pub struct App {
    pub issuers: Arc<Issuers>,
    pub layers: Layers,
    pub vault: Option<Arc<Vault>>,
    /// Header-read timeout and connection caps of the listener.
    pub connections: ConnectionLimits,
    /// Where `/healthz`, `/readyz` and `/metrics` are served apart (then `/metrics`
    /// leaves the public router).
    pub admin_listen: Option<std::net::SocketAddr>,
    /// The configuration file, re-read for `[[tenant]]` changes (none for `dev`).
    pub config_path: Option<PathBuf>,
}

/// Checks the paths the configuration names (the catalogue directory, the secrets
/// file, trusts' `jwks_file`) and opens the audit log: the audit log, or the refusal
/// naming the key, the path and the OS's reason (exit 2).
fn preflight(config: &Config) -> Result<AuditLog, StartError> {
    let source = &config.source;
    let key = |k: &str| match &config.tenant {
        Some(t) => format!("tenant {t:?}: {k}"),
        None => k.to_string(),
    };
    runtime::require_path(
        source,
        &key("server.scopes_dir"),
        &config.server.scopes_dir,
        true,
    )?;
    if let crate::config::SecretsConfig::File { path } = &config.secrets {
        runtime::require_path(source, "secrets.file", path, false)?;
    }
    for trust in &config.trusts {
        if let agent_sts_verifier::KeySource::File(path) = &trust.jwks {
            let key = format!("trust[{}].jwks_file", trust.name);
            runtime::require_path(source, &key, path, false)?;
        }
    }
    AuditLog::open_rotating(&config.audit.path, config.audit.max_file_bytes).map_err(|e| {
        let reason = runtime::with_causes(&e);
        StartError::Config(format!("{source}: {}: {reason}", key("audit.path")))
    })
}

/// Wires every part from `config`: the top-level issuer and each `[[tenant]]`.
pub async fn build(config: &Config) -> Result<App, StartError> {
    build_from(config, None).await
}

/// [`build`], remembering `path` so `[[tenant]]` changes there are picked up.
pub async fn build_from(config: &Config, path: Option<PathBuf>) -> Result<App, StartError> {
    // The paths first, before anything starts or logs: a typo exits 2 naming the key.
    let audit = preflight(config)?;
    let stores = store::open(config).await?;
    let metrics = Metrics::new().with_vault(stores.vault.as_deref().map(Vault::metrics));
    let shared = Shared {
        vault: stores.vault.clone(),
        layers: Layers {
            max_body_bytes: config.limits.max_body_bytes,
            request_timeout: config.limits.request_timeout,
            max_concurrency: config.limits.max_concurrency,
        },
    };
    let top = build_issuer(config, stores, audit, metrics).await?;
    let mut tenants = Vec::with_capacity(config.tenants.len());
    for tenant in &config.tenants {
        tenants.push((tenant.clone(), build_tenant(config, tenant, &shared).await?));
    }
    Ok(App {
        issuers: Arc::new(Issuers::new(top, tenants, shared.clone())),
        layers: shared.layers,
        vault: shared.vault,
        connections: config.limits.connections(STS_MAX_HEADER_BYTES),
        admin_listen: config.server.admin_listen,
        config_path: path,
    })
}

/// Builds the issuer of `[[tenant]]` `tenant` of `config`, over the shared Vault
/// session, with metrics of its own (labelled with its name when rendered).
pub async fn build_tenant(
    config: &Config,
    tenant: &crate::config::TenantConfig,
    shared: &Shared,
) -> Result<Issuer, StartError> {
    let view = config
        .tenant(&tenant.name)
        .ok_or_else(|| StartError::Config(format!("no tenant {:?}", tenant.name)))?;
    let audit = preflight(&view)?;
    let stores = store::open_with(&view, shared.vault.clone())?;
    build_issuer(&view, stores, audit, Metrics::for_tenant()).await
}

/// One issuer from its configuration (the top level, or a tenant's view).
async fn build_issuer(
    config: &Config,
    stores: store::Stores,
    audit: AuditLog,
    metrics: Metrics,
) -> Result<Issuer, StartError> {
    let deny_metrics = DenyMetrics::default();
    let metrics = Arc::new(metrics.with_deny(&deny_metrics));
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
    // Keys and credentials from Vault are served from memory at most `max_stale`
    // after the last successful read; the file stores have no such limit.
    let max_stale = match (&config.keys.store, &config.vault) {
        (KeyStoreKind::Vault { .. } | KeyStoreKind::Transit { .. }, Some(v)) => Some(v.max_stale),
        _ => None,
    };
    let keyring = Arc::new(Keyring::from_source(
        stores.keys.clone(),
        config.keys.publish_lead,
        config.tokens.max_ttl,
        max_stale,
        metrics.clone(),
    ));
    match keyring.refresh(unix_now()).await {
        Ok(0) => {
            tracing::warn!(
                tenant = config.tenant.as_deref(),
                "the keyring is empty: not ready; run `agent-sts keys rotate`"
            )
        }
        Ok(n) => tracing::info!(
            tenant = config.tenant.as_deref(),
            keys = n,
            "keyring loaded"
        ),
        Err(e) => {
            tracing::error!(tenant = config.tenant.as_deref(), error = %e, "keyring unreadable: not ready")
        }
    }
    let deny = DenyGuard::new(
        control::store::open(config, stores.vault.as_ref())?,
        &config.server.issuer,
        config
            .trusts
            .iter()
            .map(|t| (t.name.clone(), t.issuer.clone()))
            .collect(),
        config.deny.max_stale,
        config.deny.feed_max_age,
        deny_metrics,
    );
    deny.refresh(unix_now(), &audit).await;
    let own_tokens = crate::sts::revocation::own_token_verifier(
        &config.server.issuer,
        keyring.clone(),
        &config.limits.verification(),
    )
    .map_err(|e| StartError::Runtime(format!("HTTP client: {e}")))?;
    let introspection = crate::sts::introspection::IntrospectionPolicy::new(
        &config.introspection,
        &directory,
        &config.source,
    )?;
    let ttl = store::credential_ttl(&config.secrets, config.vault.as_ref());
    let credentials = CredentialCache::new(stores.secrets.clone(), ttl);
    let reload_counters = catalogue::ReloadCounters {
        kept: metrics.catalogue_reloads_kept.clone(),
        failures: metrics.catalogue_reload_failures.clone(),
    };
    let sts = Sts::new(StsParts {
        issuer: config.server.issuer.clone(),
        default_ttl: config.tokens.default_ttl,
        max_ttl: config.tokens.max_ttl,
        trusts,
        catalogue,
        keyring,
        credentials,
        vault: stores.vault.clone(),
        audit,
        metrics,
        rate_limiter: IdentityRateLimiter::new(
            config.limits.rate_per_second,
            config.limits.rate_burst,
        ),
        dpop: DpopSettings {
            default: config.tokens.sender_constraint,
            nonces: config.tokens.dpop_nonces,
            max_age: config.tokens.dpop_max_age,
        },
        deny,
        own_tokens,
        introspection,
        max_delegation_depth: config.tokens.max_delegation_depth,
    });
    Ok(Issuer {
        name: config.tenant.clone(),
        state: AppState {
            sts: Arc::new(sts),
            max_body_bytes: config.limits.max_body_bytes,
            max_token_bytes: config.limits.max_token_bytes,
            jwks_max_age: config.keys.jwks_max_age,
        },
        refreshers: Refreshers {
            scopes_dir: config.server.scopes_dir.clone(),
            directory,
            keys: config.keys.refresh_interval,
            deny: config.deny.refresh_interval,
            summary: config.audit.summary_interval,
            reload_counters,
        },
        tasks: std::sync::Mutex::default(),
    })
}

impl App {
    /// Starts the background work: Vault token renewal, every issuer's refreshers,
    /// and (with a configuration file) the watch for `[[tenant]]` changes.
    pub fn spawn_refreshers(&self) {
        if let Some(vault) = &self.vault {
            vault.spawn_renewal();
        }
        self.issuers.start();
        if let Some(path) = &self.config_path {
            self.issuers.clone().watch(path.clone());
        }
    }

    /// The router with its layers, plus `extra` routes (the dev issuer).
    pub fn router(&self, extra: Option<axum::Router>) -> axum::Router {
        let public_metrics = self.admin_listen.is_none();
        let mut router = self.issuers.router(public_metrics);
        if let Some(extra) = extra {
            router = router.merge(extra);
        }
        crate::sts::http::with_process_layers(router, self.layers)
    }

    /// Serves on `listener` until SIGINT/SIGTERM.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        extra: Option<axum::Router>,
    ) -> Result<(), StartError> {
        self.spawn_refreshers();
        if let Some(addr) = self.admin_listen {
            let admin = crate::sts::issuers::admin_router(self.issuers.clone());
            runtime::serve_admin("agent-sts", addr, admin, self.connections).await?;
        }
        let router = self.router(extra);
        runtime::serve(listener, router, self.connections, shutdown_signal())
            .await
            .map_err(|e| StartError::Runtime(format!("server: {e}")))
    }
}
