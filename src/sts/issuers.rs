//! Many issuers in one process (README, "Running many tenants").
//!
//! The top-level configuration is one issuer at `server.issuer`, exactly as without
//! tenants; each `[[tenant]]` is another at `{server.issuer}/t/{name}`, a whole token
//! service of its own ([`Sts`]: trusts, catalogue, keyring, deny list, audit log, rate
//! limiter, secret prefix), sharing only the Vault session and the transport limits.
//! Nothing of one tenant is reachable from another's: requests under `/t/{name}/` are
//! handed to that tenant's own router, with its own state, and an unknown name is a
//! bare 404 that says nothing of which tenants exist.
//!
//! The set of tenants is read again from the configuration file every
//! `keys.refresh_interval`: an added tenant is built and served, a removed one stops
//! answering (404) and its background work ends, a changed one is rebuilt. A tenant
//! that fails to build is logged and left out; the others keep serving.
//!
//! `/healthz`, `/readyz` and `/metrics` belong to the process: `/readyz` is ready when
//! every issuer with a catalogue is, and `/metrics` labels a tenant's series with
//! `tenant` (a closed set: the configured names). Each tenant's own readiness is at
//! `/t/{name}/readyz`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use tower::ServiceExt;

use crate::catalogue::{self, ReloadCounters, TrustDirectory};
use crate::config::{Config, ProcessEnv, TenantConfig};
use crate::identity::unix_now;
use crate::runtime::every;
use crate::sts::app::{Shared, build_tenant};
use crate::sts::exchange::Sts;
use crate::sts::http::{self, AppState};

/// What an issuer re-reads in the background, and how often.
#[derive(Debug)]
pub struct Refreshers {
    pub scopes_dir: PathBuf,
    pub directory: Arc<TrustDirectory>,
    /// The keyring and the catalogue (`keys.refresh_interval`).
    pub keys: Duration,
    /// The deny list (`deny.refresh_interval`).
    pub deny: Duration,
    /// Summaries of anonymous refusals (`audit.summary_interval`).
    pub summary: Duration,
    pub reload_counters: ReloadCounters,
}

/// One issuer: the top level (`name` none) or a tenant.
#[derive(Debug)]
pub struct Issuer {
    pub name: Option<String>,
    pub state: AppState,
    pub refreshers: Refreshers,
    /// Its background tasks, stopped when it is dropped (a removed tenant).
    pub tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Issuer {
    pub fn sts(&self) -> &Arc<Sts> {
        &self.state.sts
    }

    /// Starts its refreshers: keyring, deny list, refusal summaries and catalogue.
    fn start(&self) {
        let r = &self.refreshers;
        let sts = self.sts();
        let keys = {
            let sts = sts.clone();
            every(r.keys, move || {
                let sts = sts.clone();
                async move { sts.refresh_keys(unix_now()).await }
            })
        };
        let deny = {
            let sts = sts.clone();
            every(r.deny, move || {
                let sts = sts.clone();
                async move { sts.refresh_deny_list(unix_now()).await }
            })
        };
        let summary = {
            let sts = sts.clone();
            every(r.summary, move || {
                let sts = sts.clone();
                async move { sts.flush_anonymous_refusals() }
            })
        };
        let sts = sts.clone();
        let catalogue = catalogue::spawn_reloader(
            r.scopes_dir.clone(),
            r.directory.clone(),
            r.keys,
            r.reload_counters.clone(),
            move |c| sts.replace_catalogue(c),
        );
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.extend([keys, deny, summary, catalogue]);
        }
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.get_mut() {
            tasks.iter().for_each(tokio::task::AbortHandle::abort);
        }
    }
}

/// An issuer with its router (its endpoints inside its own protective layers).
#[derive(Debug)]
struct Serving {
    issuer: Issuer,
    router: Router,
}

impl Serving {
    fn new(issuer: Issuer, shared: &Shared) -> Arc<Serving> {
        let router = http::with_issuer_layers(
            http::issuer_router(issuer.state.clone(), issuer.name.is_some()),
            shared.layers,
            issuer.sts().clone(),
        );
        Arc::new(Serving { issuer, router })
    }
}

/// A tenant as served: its configuration (to tell a changed entry on reload) and
/// its issuer.
#[derive(Debug)]
struct Tenant {
    config: TenantConfig,
    serving: Arc<Serving>,
}

/// Every issuer of the process.
#[derive(Debug)]
pub struct Issuers {
    top: Arc<Serving>,
    tenants: ArcSwap<BTreeMap<String, Arc<Tenant>>>,
    shared: Shared,
    /// Refreshers run (set by [`Issuers::start`]): a tenant added later starts its own.
    started: AtomicBool,
    /// Serialises reloads.
    reloading: tokio::sync::Mutex<()>,
}

impl Issuers {
    pub fn new(top: Issuer, tenants: Vec<(TenantConfig, Issuer)>, shared: Shared) -> Issuers {
        let tenants = tenants
            .into_iter()
            .map(|(config, issuer)| {
                let serving = Serving::new(issuer, &shared);
                (config.name.clone(), Arc::new(Tenant { config, serving }))
            })
            .collect();
        Issuers {
            top: Serving::new(top, &shared),
            tenants: ArcSwap::from_pointee(tenants),
            shared,
            started: AtomicBool::new(false),
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// The configured tenant names, sorted.
    pub fn tenant_names(&self) -> Vec<String> {
        self.tenants.load().keys().cloned().collect()
    }

    /// Starts every issuer's refreshers.
    pub fn start(&self) {
        self.started.store(true, Ordering::SeqCst);
        self.top.issuer.start();
        for tenant in self.tenants.load().values() {
            tenant.serving.issuer.start();
        }
    }

    /// Every `keys.refresh_interval`, reads `path` again and applies its `[[tenant]]`
    /// entries ([`Issuers::reload`]). A file that does not load is logged (once per
    /// distinct error) and the tenants stay as they are.
    pub fn watch(self: Arc<Self>, path: PathBuf) {
        let interval = self.top.issuer.refreshers.keys;
        let last_error: Arc<Mutex<Option<String>>> = Arc::default();
        let issuers = self;
        every(interval, move || {
            let (issuers, path, last_error) = (issuers.clone(), path.clone(), last_error.clone());
            async move {
                let loaded =
                    tokio::task::spawn_blocking(move || Config::load(&path, &ProcessEnv)).await;
                match loaded {
                    Ok(Ok(config)) => {
                        if let Ok(mut last) = last_error.lock() {
                            *last = None;
                        }
                        issuers.reload(&config).await;
                    }
                    Ok(Err(e)) => {
                        let text = e.to_string();
                        let mut last = last_error.lock().ok();
                        let repeated = last
                            .as_deref()
                            .is_some_and(|l| l.as_deref() == Some(text.as_str()));
                        if !repeated {
                            tracing::error!(error = %text, "configuration reload failed; the tenants stay as they are");
                        }
                        if let Some(last) = last.as_deref_mut() {
                            *last = Some(text);
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "configuration reload task failed"),
                }
            }
        });
    }

    /// Serves the `[[tenant]]` entries of `config`: builds the added and changed ones,
    /// drops the removed ones (their requests are 404 from now on and their background
    /// work stops; requests already in flight finish). Returns the names now served.
    pub async fn reload(&self, config: &Config) -> Vec<String> {
        let _one_at_a_time = self.reloading.lock().await;
        let current = self.tenants.load_full();
        let unchanged = |t: &TenantConfig| current.get(&t.name).filter(|c| c.config == *t);
        if config.tenants.len() == current.len()
            && config.tenants.iter().all(|t| unchanged(t).is_some())
        {
            return self.tenant_names();
        }
        let mut next = BTreeMap::new();
        for wanted in &config.tenants {
            if let Some(kept) = unchanged(wanted) {
                next.insert(wanted.name.clone(), kept.clone());
                continue;
            }
            if current.contains_key(&wanted.name) {
                // Changed: the old issuer goes before the new one opens its keyring
                // and audit log.
                let mut without = (*self.tenants.load_full()).clone();
                without.remove(&wanted.name);
                self.tenants.store(Arc::new(without));
            }
            match build_tenant(config, wanted, &self.shared).await {
                Ok(issuer) => {
                    if self.started.load(Ordering::SeqCst) {
                        issuer.start();
                    }
                    tracing::info!(tenant = %wanted.name, "tenant serving");
                    let serving = Serving::new(issuer, &self.shared);
                    next.insert(
                        wanted.name.clone(),
                        Arc::new(Tenant {
                            config: wanted.clone(),
                            serving,
                        }),
                    );
                }
                Err(e) => {
                    tracing::error!(tenant = %wanted.name, error = %e, "tenant not served: it could not be built");
                }
            }
        }
        for gone in current.keys().filter(|n| !next.contains_key(*n)) {
            tracing::info!(tenant = %gone, "tenant removed: its tokens are refused and its endpoints answer 404");
        }
        self.tenants.store(Arc::new(next));
        self.tenant_names()
    }

    /// The public router: the top-level issuer's endpoints, each tenant's under
    /// `/t/{name}/` (and its RFC 8414 metadata at the path-inserted location), and the
    /// process's `/healthz`, `/readyz` and (unless on the admin listener) `/metrics`.
    pub fn router(self: &Arc<Self>, public_metrics: bool) -> Router {
        let process = Router::new()
            .route("/t/{tenant}/{*rest}", any(to_tenant))
            .route(
                "/.well-known/oauth-authorization-server/t/{tenant}",
                get(tenant_metadata),
            )
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz));
        let process = if public_metrics {
            process.route("/metrics", get(metrics))
        } else {
            process
        };
        self.top
            .router
            .clone()
            .merge(process.with_state(self.clone()))
    }

    async fn readiness(&self) -> (bool, serde_json::Value) {
        let now = unix_now();
        let top = self.top.issuer.sts().readiness(now).await;
        let mut body = http::readiness_body(&top);
        let mut with_catalogue = usize::from(top.catalogue);
        let mut ready = !top.catalogue || top.ready();
        let tenants = self.tenants.load_full();
        if !tenants.is_empty() {
            let mut states = serde_json::Map::new();
            for (name, tenant) in tenants.iter() {
                let r = tenant.serving.issuer.sts().readiness(now).await;
                with_catalogue += usize::from(r.catalogue);
                ready &= !r.catalogue || r.ready();
                let state = if r.ready() { "ok" } else { "not ready" };
                states.insert(name.clone(), state.into());
            }
            body["tenants"] = states.into();
        }
        let ready = ready && with_catalogue > 0;
        body["ready"] = ready.into();
        (ready, body)
    }

    /// Every issuer's metrics, a tenant's series labelled with its name.
    fn render_metrics(&self) -> String {
        let top = self.top.issuer.sts().render_metrics();
        let tenants = self.tenants.load_full();
        let rendered: Vec<(&str, String)> = tenants
            .iter()
            .map(|(name, t)| (name.as_str(), t.serving.issuer.sts().render_metrics()))
            .collect();
        crate::telemetry::metrics::merge_labelled(top, &rendered)
    }
}

/// The admin listener's routes (`server.admin_listen`): `/healthz`, `/readyz` and
/// `/metrics`, the same handlers as on the public port.
pub fn admin_router(issuers: Arc<Issuers>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(issuers)
}

/// `/t/{name}/{rest}`: tenant `name`'s router answers `/{rest}`. An unknown name is a
/// bare 404, as for any path that does not exist.
async fn to_tenant(State(issuers): State<Arc<Issuers>>, request: Request) -> Response {
    let path = request.uri().path();
    let Some((name, rest)) = path
        .strip_prefix("/t/")
        .and_then(|p| p.split_once('/'))
        .map(|(n, r)| (n.to_string(), format!("/{r}")))
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    forward(&issuers, &name, &rest, request).await
}

/// RFC 8414 §3.1: `/.well-known/oauth-authorization-server/t/{name}` is tenant
/// `name`'s metadata.
async fn tenant_metadata(State(issuers): State<Arc<Issuers>>, request: Request) -> Response {
    let Some(name) = request
        .uri()
        .path()
        .strip_prefix("/.well-known/oauth-authorization-server/t/")
        .map(str::to_string)
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    forward(
        &issuers,
        &name,
        "/.well-known/oauth-authorization-server",
        request,
    )
    .await
}

/// Hands `request` to tenant `name`'s router as a request for `path` (its query kept).
async fn forward(issuers: &Issuers, name: &str, path: &str, mut request: Request) -> Response {
    let Some(router) = issuers
        .tenants
        .load()
        .get(name)
        .map(|t| t.serving.router.clone())
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let target = match request.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    match target.parse() {
        Ok(uri) => *request.uri_mut() = uri,
        Err(_) => return StatusCode::NOT_FOUND.into_response(),
    }
    match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when every issuer with a catalogue can mint (and at least one has one); the
/// top-level issuer's checks in `checks`, and each tenant's state in `tenants`.
async fn readyz(State(issuers): State<Arc<Issuers>>) -> Response {
    let (ready, body) = issuers.readiness().await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(issuers): State<Arc<Issuers>>) -> Response {
    http::metrics_response(issuers.render_metrics())
}
