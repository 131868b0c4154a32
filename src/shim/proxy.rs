//! `agent-sts shim`: the credential-injecting reverse proxy in front of one legacy
//! upstream (README, "The shim"; "Security properties" 9).
//!
//! Each request goes through the same steps, in this order (verify, strip, inject, forward, scrub):
//! 1. **Frame**: the header section fits `max_header_bytes`, the body (if any) is framed
//!    by one Content-Length or by `Transfer-Encoding: chunked` alone (never both, even
//!    where hyper hid the pair: [`crate::runtime::framing`]), and the request target
//!    is one canonical origin-form path ([`crate::shim::request_target`]): anything that could
//!    route differently at the upstream is refused, never repaired.
//! 2. **Verify** the bearer token through the STS's JWKS (the `agent-sts-verifier` crate): issuer, this
//!    shim's audience, expiry, `typ` at+jwt.
//! 3. **Authorise**: the token's action has this audience in the catalogue and its
//!    `[action.request]` method and path template match the canonical request.
//! 4. **Forward only what is allowed, and inject**: of the agent's headers only the
//!    allow-list passes (the defaults an API call needs plus the action's
//!    `[action.request] headers`; never its `Authorization`, cookies, `Range`, framing,
//!    forwarding or override headers, nor a header of the credential's name), and a
//!    method override in the query or body is refused; the credential from the secret
//!    store (cached at most 30 s) goes in. A missing or disabled credential stops here:
//!    502, nothing forwarded.
//! 5. **Forward** to the bound upstream only: no redirect is followed, connect and
//!    `upstream_timeout` (to the answer's head) apply, and the request body is read whole
//!    first (capped), so an oversized or truncated body never reaches the upstream, and
//!    it goes with the shim's own `Content-Length`, however the agent framed it.
//! 6. **Scrub** the response: every occurrence of the credential, in its plain, base64,
//!    percent- and JSON-encoded forms, is replaced in the body and in every header
//!    ([`crate::shim::scrub`]); `Set-Cookie` is dropped. A compressed body, or a partial
//!    one (`206`, `Content-Range`, `multipart/byteranges`), cannot be scrubbed whole and
//!    answers 502; the shim asks the upstream for `identity` encoding. A body of known
//!    length within `max_response_bytes` is read whole (by `upstream_timeout`) and
//!    scrubbed whole; an event stream, a body of unknown length or a longer one is
//!    relayed as it arrives ([`crate::shim::stream`]), scrubbed by a tail-holding
//!    scrubber, with `stream_idle_timeout` between chunks.
//! 7. **Audit** one hash-chained line per request ([`crate::audit`], [`ProxiedCall`]) before
//!    the response leaves; a line that cannot be written withholds the response (503),
//!    and while the log fails no further call is forwarded. A streamed answer gets a
//!    second line, its [`crate::audit::StreamEnd`], after its last byte.
//!
//! Memory: a request body is at most `max_request_bytes`, a body read whole at most
//! `max_response_bytes`, a stream one upstream chunk plus the scrubber's window; at
//! most `[limits] max_concurrency` requests and streams in flight (a request waits
//! for a slot at most `[limits] request_timeout`, then answers 503; a stream holds its
//! slot until it ends). Health, readiness and metrics are on
//! a separate `admin_listen`: every path of `listen` belongs to the upstream, but for
//! the RFC 9728 metadata ([`crate::shim::resource_metadata`]), which the shim answers
//! itself before any of the steps above and never forwards.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header, request};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};

use crate::audit::{AuditLog, Outcome, ProxiedCall, RefusalWindow};
use crate::catalogue::{self, Catalogue, RequestShape, TrustDirectory};
use crate::config::ShimConfig;
use crate::runtime::framing::AmbiguousFraming;
use crate::runtime::{self, StartError};
use crate::shim::error::ShimError;
use crate::shim::method_override;
use crate::shim::request_target::{self, Target};
use crate::shim::resource_metadata::{self, Challenge, ResourceMetadata};
use crate::shim::scrub::Scrubber;
use crate::shim::stream::{Answer, PendingStream, StreamAudit, new_stream_id};
use crate::shim::upstream::{self, UpstreamBody, UpstreamClient};
use crate::store;
use crate::store::secrets::{CredentialCache, CredentialError, SecretStoreError, StoredCredential};
use crate::store::vault::Vault;
use crate::telemetry::metrics::{ShimLabels, ShimMetrics};
use crate::telemetry::traces;
use agent_sts_verifier::layer::{BearerError, presented_token};
use agent_sts_verifier::{AccessToken, Verifier, VerifierError, VerifyError};
use agent_sts_verifier::{JwtError, unix_now};
use agent_sts_verifier::{Presented, RequestTarget};
use tracing::Instrument as _;

/// Headers that describe one hop, never forwarded in either direction (RFC 9110 §7.6.1),
/// besides any header the `Connection` header names.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Response headers never relayed: a session cookie the upstream sets for the injected
/// credential would let the agent call the upstream directly, past its token's action
/// and expiry.
const NOT_RELAYED: [HeaderName; 1] = [header::SET_COOKIE];

/// The size caps and deadlines of one shim.
#[derive(Debug, Clone, Copy)]
struct Caps {
    request_bytes: usize,
    response_bytes: usize,
    header_bytes: usize,
    token_bytes: usize,
    /// Deadline for reading the agent's request body.
    body_read: Duration,
    /// Deadline for the upstream's answer head, and for an answer read whole, its body.
    upstream: Duration,
    /// Longest wait for the next bytes of an answer relayed as a stream.
    stream_idle: Duration,
}

/// One shim: everything a request needs, shared by all of them.
#[derive(Debug)]
pub struct Shim {
    audience: String,
    /// `shim.public_url`: what agents address, for DPoP's `htu`.
    public_url: String,
    upstream: url::Url,
    verifier: Verifier,
    catalogue: ArcSwap<Catalogue>,
    /// The actions this shim serves (this audience, with an `[action.request]`), by
    /// name: the metadata's `scopes_supported` and a challenge's `scope`. Replaced with
    /// the catalogue.
    served: ArcSwap<Vec<(String, RequestShape)>>,
    /// The RFC 9728 document and its URL.
    metadata: ResourceMetadata,
    credentials: CredentialCache,
    /// The scrubber of each credential path, rebuilt when the credential changes.
    scrubbers: moka::sync::Cache<String, (Arc<StoredCredential>, Arc<Scrubber>)>,
    client: UpstreamClient,
    audit: Arc<AuditLog>,
    /// Refusals before a token verified, summarised per window.
    anonymous: RefusalWindow,
    caps: Caps,
    /// Requests in flight (`[limits] max_concurrency`); one waits for a slot at most
    /// `[limits] request_timeout`, then answers 503.
    slots: Arc<tokio::sync::Semaphore>,
    metrics: ShimMetrics,
    /// The Vault client behind the secret store, when Vault is configured.
    vault: Option<Arc<Vault>>,
    /// `[telemetry]` is on: each request gets a span, a child of the agent's W3C
    /// `traceparent`, and the upstream hop carries the hop span's own `traceparent`
    /// in place of the agent's. Off: no span, and the agent's Trace Context headers
    /// pass as any allowed header does.
    traced: bool,
}

/// What the audit line of one request says, filled in as the request goes.
#[derive(Debug, Default)]
struct Call {
    token: Option<AccessToken>,
    /// The canonical request path, once known (for a challenge's `scope`).
    target: Option<String>,
    path: Option<String>,
    upstream_status: Option<u16>,
    scrubbed: u64,
}

/// A built shim and what it needs to run.
#[derive(Debug)]
pub struct ShimApp {
    pub shim: Arc<Shim>,
    scopes_dir: std::path::PathBuf,
    refresh_interval: Duration,
    admin_listen: Option<std::net::SocketAddr>,
    vault: Option<Arc<Vault>>,
    connections: runtime::ConnectionLimits,
    summary_interval: Duration,
}

/// The shared secret of `shim.dpop_nonce_secret_file`: a private file (mode 0600) of at
/// least 32 bytes, whitespace trimmed.
fn nonce_secret(file: &std::path::Path, source: &str) -> Result<Vec<u8>, StartError> {
    crate::keys::check_private_file(file).map_err(StartError::Config)?;
    let secret = std::fs::read(file).map_err(|e| {
        StartError::Config(format!(
            "{source}: shim.dpop_nonce_secret_file: {}: {}",
            file.display(),
            e.kind()
        ))
    })?;
    let secret = secret.trim_ascii().to_vec();
    if secret.len() < 32 {
        return Err(StartError::Config(format!(
            "{source}: shim.dpop_nonce_secret_file: {}: needs at least 32 bytes of secret",
            file.display()
        )));
    }
    Ok(secret)
}

/// Wires a shim from its configuration.
pub async fn build(config: &ShimConfig) -> Result<ShimApp, StartError> {
    let s = &config.shim;
    // The paths first, before anything starts or logs: a typo exits 2 naming the key.
    runtime::require_path(&config.source, "shim.scopes_dir", &s.scopes_dir, true)?;
    if let crate::config::SecretsConfig::File { path } = &config.secrets {
        runtime::require_path(&config.source, "secrets.file", path, false)?;
    }
    let audit =
        AuditLog::open_rotating(&config.audit.path, config.audit.max_file_bytes).map_err(|e| {
            let reason = runtime::with_causes(&e);
            StartError::Config(format!("{}: audit.path: {reason}", config.source))
        })?;
    let mut verifier = Verifier::builder(&s.issuer, &s.audience, s.jwks_uri.as_str())
        .limits(&config.limits.verification())
        .jwks_refresh(s.jwks_refresh)
        .jwks_max_stale(s.jwks_max_stale)
        .deny_refresh(s.deny_refresh)
        .deny_max_stale(s.deny_max_stale);
    if let Some(uri) = &s.deny_feed_uri {
        verifier = verifier.deny_feed_uri(uri);
    }
    if let Some(file) = &s.dpop_nonce_secret_file {
        verifier = verifier.dpop_nonces(&nonce_secret(file, &config.source)?);
    }
    let verifier = verifier.build().map_err(|e| match e {
        VerifierError::Client(e) => StartError::Runtime(format!("HTTP client: {e}")),
        // `jwks_uri: ...`, `jwks_refresh: ...`: the key is in the message.
        e => StartError::Config(format!("{}: shim.{e}", config.source)),
    })?;
    let catalogue = Catalogue::load_dir(&s.scopes_dir, &TrustDirectory::any())
        .map_err(|e| StartError::Config(e.to_string()))?;
    let served = served_actions(&catalogue, &s.audience);
    if served.is_empty() {
        tracing::warn!(audience = %s.audience, "no catalogue action has this shim's audience and an [action.request]: every request will be refused");
    }
    if s.public_url != s.audience.trim_end_matches('/') {
        tracing::warn!(
            public_url = %s.public_url,
            audience = %s.audience,
            "shim.public_url and shim.audience differ: the RFC 9728 metadata names public_url as the resource, so a client asking the STS for a token with resource=public_url gets invalid_target unless the action's audience is public_url too"
        );
    }
    let dpop_algorithms = verifier
        .proofs()
        .rules()
        .algorithms
        .iter()
        .map(|a| a.as_str())
        .collect();
    let metadata = ResourceMetadata::new(&s.public_url, &s.issuer, dpop_algorithms);
    // The shim keeps no keyring: its secrets and Vault files are checked.
    store::check_secret_files(None, Some(&config.secrets), config.vault.as_ref())?;
    let vault = match (&config.secrets, &config.vault) {
        (crate::config::SecretsConfig::Vault, Some(v)) => Some(store::connect_vault(v).await?),
        _ => None,
    };
    let store = store::prefixed(
        store::secret_store(&config.secrets, vault.as_ref(), &config.source)?,
        s.secrets_prefix.as_deref(),
    );
    let ttl = store::credential_ttl(&config.secrets, config.vault.as_ref());
    let client = upstream::client(s.connect_timeout)
        .map_err(|e| StartError::Runtime(format!("upstream client: {e}")))?;
    let shim = Shim {
        audience: s.audience.clone(),
        public_url: s.public_url.clone(),
        upstream: s.upstream.clone(),
        verifier,
        catalogue: ArcSwap::from_pointee(catalogue),
        served: ArcSwap::from_pointee(served),
        metadata,
        credentials: CredentialCache::new(store, ttl),
        scrubbers: moka::sync::Cache::new(10_000),
        client,
        audit: Arc::new(audit),
        anonymous: RefusalWindow::default(),
        caps: Caps {
            request_bytes: s.max_request_bytes,
            response_bytes: s.max_response_bytes,
            header_bytes: s.max_header_bytes,
            token_bytes: config.limits.max_token_bytes,
            body_read: config.limits.request_timeout,
            upstream: s.upstream_timeout,
            stream_idle: s.stream_idle_timeout,
        },
        slots: Arc::new(tokio::sync::Semaphore::new(config.limits.max_concurrency)),
        metrics: ShimMetrics::new().with_vault(vault.as_deref().map(Vault::metrics)),
        vault: vault.clone(),
        traced: config.telemetry.is_some(),
    };
    tracing::info!(audience = %s.audience, actions = shim.served.load().len(), "shim ready");
    Ok(ShimApp {
        shim: Arc::new(shim),
        scopes_dir: s.scopes_dir.clone(),
        refresh_interval: s.refresh_interval,
        admin_listen: s.admin_listen,
        vault,
        connections: config.limits.connections(s.max_header_bytes),
        summary_interval: config.audit.summary_interval,
    })
}

impl ShimApp {
    /// The shim's router: every method and path goes to [`Shim::handle`].
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .fallback(handle)
            .with_state(self.shim.clone())
    }

    /// Re-reads the catalogue every `refresh_interval` (keeping the last good one on
    /// failure) and renews the Vault session.
    pub fn spawn_refreshers(&self) {
        if let Some(vault) = &self.vault {
            vault.spawn_renewal();
        }
        let shim = self.shim.clone();
        runtime::every(self.summary_interval, move || {
            let shim = shim.clone();
            async move {
                if let Err(e) = shim.anonymous.flush(&shim.audit) {
                    shim.metrics.audit_write_failures.inc();
                    tracing::error!(error = %e, "audit summary of anonymous refusals not written");
                }
            }
        });
        let shim = self.shim.clone();
        catalogue::spawn_reloader(
            self.scopes_dir.clone(),
            Arc::new(TrustDirectory::any()),
            self.refresh_interval,
            catalogue::ReloadCounters {
                kept: shim.metrics.catalogue_reloads_kept.clone(),
                failures: shim.metrics.catalogue_reload_failures.clone(),
            },
            move |c| shim.replace_catalogue(c),
        );
    }

    /// The admin routes: `/healthz` (the process answers), `/readyz` (JSON; 503 unless
    /// this shim serves at least one action, its audit log accepts lines and its secret
    /// store answers) and `/metrics` (Prometheus text).
    pub fn admin_router(&self) -> axum::Router {
        axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .route("/readyz", axum::routing::get(readyz))
            .route("/metrics", axum::routing::get(metrics))
            .with_state(self.shim.clone())
    }

    /// Serves on `listener` until SIGINT/SIGTERM, and the admin routes on
    /// `shim.admin_listen` when configured.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> Result<(), StartError> {
        self.spawn_refreshers();
        if let Some(addr) = self.admin_listen {
            runtime::serve_admin(
                "agent-sts shim",
                addr,
                self.admin_router(),
                self.connections,
            )
            .await?;
        }
        let router = self.router();
        runtime::serve(
            listener,
            router,
            self.connections,
            runtime::shutdown_signal(),
        )
        .await
        .map_err(|e| StartError::Runtime(format!("server: {e}")))
    }
}

async fn handle(State(shim): State<Arc<Shim>>, request: Request) -> Response {
    // RFC 9728: the shim's own document, never forwarded, however the path is spelled.
    if resource_metadata::names_metadata(request.uri()) {
        return shim.metadata_response(request.method());
    }
    let span = if shim.traced {
        let span = tracing::info_span!(
            "shim",
            otel.kind = "server",
            method = %request.method(),
            route = tracing::field::Empty,
            decision = tracing::field::Empty,
            reason = tracing::field::Empty,
            action = tracing::field::Empty,
            trust = tracing::field::Empty,
            upstream_status = tracing::field::Empty,
        );
        traces::adopt_parent(&span, request.headers());
        span
    } else {
        tracing::Span::none()
    };
    let mut response = shim.handle(request).instrument(span).await;
    // RFC 9449 §9: with nonces on, every answer carries the one to use next.
    if let Some(nonce) = shim.verifier.dpop_nonce(unix_now())
        && let Ok(value) = axum::http::HeaderValue::from_str(&nonce)
    {
        response.headers_mut().insert("dpop-nonce", value);
    }
    response
}

async fn readyz(State(shim): State<Arc<Shim>>) -> Response {
    let actions = shim
        .catalogue
        .load()
        .actions()
        .filter(|a| a.audience == shim.audience && a.request.is_some())
        .count();
    let audit = shim.audit.accepting();
    let secrets = shim.credentials.health().await;
    let vault = shim.vault.as_ref().map(|v| v.health());
    let ready = actions > 0 && audit && secrets.ok && vault.as_ref().is_none_or(|v| v.ok);
    let mut body = serde_json::json!({
        "ready": ready,
        "actions": actions,
        "audit_log": if audit { "ok" } else { "failing" },
        "secret_store": secrets.detail,
    });
    if let Some(vault) = vault {
        body["vault"] = serde_json::json!(vault.detail);
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(shim): State<Arc<Shim>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shim.metrics.render(),
    )
        .into_response()
}

/// The actions of `catalogue` a shim for `audience` serves, sorted by name.
fn served_actions(catalogue: &Catalogue, audience: &str) -> Vec<(String, RequestShape)> {
    let mut served: Vec<(String, RequestShape)> = catalogue
        .actions()
        .filter(|a| a.audience == audience)
        .filter_map(|a| Some((a.name.clone(), a.request.clone()?)))
        .collect();
    served.sort_by(|a, b| a.0.cmp(&b.0));
    served
}

impl Shim {
    /// Serves `catalogue` from the next request on; the one it replaces.
    pub fn replace_catalogue(&self, catalogue: Arc<Catalogue>) -> Arc<Catalogue> {
        self.served
            .store(Arc::new(served_actions(&catalogue, &self.audience)));
        self.catalogue.swap(catalogue)
    }

    /// The RFC 9728 metadata document (or 405 for a method other than GET and HEAD).
    pub fn metadata_response(&self, method: &Method) -> Response {
        let served = self.served.load();
        let scopes: Vec<&str> = served.iter().map(|(name, _)| name.as_str()).collect();
        self.metadata.response(method, &scopes)
    }

    /// A refusal as its response; a 401 or 403 challenge names the metadata and, when
    /// the request's method and path fit exactly one action served here, its scope.
    fn refusal_response(&self, refusal: ShimError, method: &Method, call: &Call) -> Response {
        let served = self.served.load();
        let mut fitting = served.iter().filter(|(_, shape)| {
            call.target
                .as_deref()
                .is_some_and(|path| shape.matches(method.as_str(), path))
        });
        let scope = match (fitting.next(), fitting.next()) {
            (Some((name, _)), None) => Some(name.as_str()),
            _ => None,
        };
        refusal.response(Some(&Challenge {
            resource_metadata: self.metadata.url(),
            scope,
        }))
    }

    /// Handles one request: proxies it or refuses it, and audits either way.
    pub async fn handle(&self, request: Request) -> Response {
        let started = std::time::Instant::now();
        let method = request.method().clone();
        let mut call = Call::default();
        let wait =
            tokio::time::timeout(self.caps.body_read, self.slots.clone().acquire_owned()).await;
        let result = match wait {
            Ok(Ok(slot)) => self.proxy(request, &mut call).await.map(|a| (a, slot)),
            _ => Err(ShimError::Overloaded),
        };
        let stream_id = matches!(result, Ok((Answer::Stream(_), _))).then(new_stream_id);
        let (outcome, reason) = match &result {
            Ok(_) => (Outcome::Allow, "proxied"),
            Err(e) => (Outcome::Deny, e.reason()),
        };
        let token = call.token.as_ref();
        let record = ProxiedCall {
            time: SystemTime::now(),
            shim: &self.audience,
            subject: token.map(|t| t.subject.as_str()),
            issuer: token.map(|t| t.issuer.as_str()),
            client_id: token.map(|t| t.client_id.as_str()),
            actor: token.and_then(|t| t.actor.as_ref()).map(|a| a.sub.as_str()),
            act: token.and_then(|t| t.actor.as_ref()),
            action: token.map(|t| t.action.as_str()),
            jti: token.map(|t| t.jti.as_str()),
            method: method.as_str(),
            path: call.path.as_deref(),
            decision: outcome,
            reason,
            upstream_status: call.upstream_status,
            bytes_scrubbed: call.scrubbed,
            stream: stream_id.as_deref(),
        };
        // Refusals before the token verified are anonymous: the first of each reason per
        // window is written, the rest counted into a summary line.
        let summarised =
            outcome == Outcome::Deny && token.is_none() && !self.anonymous.admit(reason);
        let audited = if summarised {
            Ok(())
        } else {
            self.audit.append_call(&record)
        };
        if audited.is_err() {
            self.metrics.audit_write_failures.inc();
        }
        let decision = match (outcome, &audited) {
            (Outcome::Allow, Ok(())) => ("allow", reason),
            (Outcome::Allow, Err(_)) => ("deny", ShimError::AuditUnavailable.reason()),
            (Outcome::Deny, _) => ("deny", reason),
        };
        self.metrics
            .requests
            .get_or_create(&ShimLabels {
                decision: decision.0,
                reason: decision.1,
            })
            .inc();
        if self.traced {
            record_call(decision, token, &call);
        }
        self.metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok((answer, slot)) => match audited {
                Ok(()) => {
                    tracing::debug!(method = %method, path = call.path.as_deref().unwrap_or("-"), status = call.upstream_status.unwrap_or_default(), scrubbed = call.scrubbed, stream = stream_id.as_deref().unwrap_or("-"), "proxied");
                    match answer {
                        Answer::Whole(response) => response,
                        Answer::Stream(pending) => {
                            let audit = StreamAudit {
                                audit: self.audit.clone(),
                                failures: self.metrics.audit_write_failures.clone(),
                                ended: self.metrics.streams.clone(),
                                shim: self.audience.clone(),
                                id: stream_id.unwrap_or_default(),
                                action: token.map(|t| t.action.clone()),
                                jti: token.map(|t| t.jti.clone()),
                                started: std::time::Instant::now(),
                            };
                            pending.start(audit, slot, self.caps.stream_idle)
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit log unwritable: upstream response withheld");
                    ShimError::AuditUnavailable.into_response()
                }
            },
            Err(refusal) => {
                if let Err(e) = audited {
                    tracing::error!(error = %e, "audit log unwritable");
                }
                tracing::info!(method = %method, path = call.path.as_deref().unwrap_or("-"), reason = refusal.reason(), status = refusal.status().as_u16(), "refused");
                self.refusal_response(refusal, &method, &call)
            }
        }
    }

    async fn proxy(&self, request: Request, call: &mut Call) -> Result<Answer, ShimError> {
        let (parts, body) = request.into_parts();
        check_header_size(&parts, self.caps.header_bytes)?;
        let framing = check_framing(&parts)?;
        let target = request_target::canonicalize(&parts.uri).map_err(ShimError::Target)?;
        call.target = Some(target.path.clone());
        if target
            .query
            .as_deref()
            .is_some_and(method_override::in_query)
        {
            return Err(ShimError::MethodOverride);
        }

        let presented = presented(&parts.headers, self.caps.token_bytes)?;
        // The URL as the agent addressed it: DPoP's htu (RFC 9449 §4.3).
        let url = format!("{}{}", self.public_url, parts.uri.path());
        let addressed = RequestTarget {
            method: parts.method.as_str(),
            url: &url,
        };
        let token = self
            .verifier
            .verify_presented(presented, &addressed, unix_now())
            .await
            .map_err(token_error)?;
        let token = call.token.insert(token);

        let catalogue = self.catalogue.load();
        let action = catalogue
            .get(&token.action)
            .filter(|a| a.audience == self.audience)
            .ok_or(ShimError::ActionNotServed)?;
        let shape = action.request.as_ref().ok_or(ShimError::ActionNotServed)?;
        if !shape.matches(parts.method.as_str(), &target.path) {
            return Err(ShimError::RequestNotAllowed);
        }
        call.path = Some(shape.path.as_str().to_string());

        let path = action
            .credential
            .as_deref()
            .ok_or(ShimError::CredentialUnavailable)?;
        let (credential, scrubber) = self.credential(path).await?;
        let body = read_body(body, framing, &parts.headers, self.caps).await?;
        // One readable Content-Type, or none: what the shim checks is what is forwarded.
        let mut types = parts.headers.get_all(header::CONTENT_TYPE).iter();
        let content_type = match (types.next(), types.next()) {
            (None, _) => None,
            (Some(v), None) => Some(v.to_str().map_err(|_| ShimError::BodyUnreadable)?),
            (Some(_), Some(_)) => return Err(ShimError::BodyUnreadable),
        };
        method_override::in_body(content_type, body.as_deref().unwrap_or_default()).map_err(
            |refusal| match refusal {
                method_override::Refusal::Override => ShimError::MethodOverride,
                method_override::Refusal::Unreadable => ShimError::BodyUnreadable,
            },
        )?;
        if !self.audit.accepting() {
            return Err(ShimError::AuditUnavailable);
        }
        let mut upstream = self.upstream_request(&parts, &target, shape, &credential, body)?;
        // The upstream hop's span, and its Trace Context in place of the agent's.
        let hop = if self.traced {
            let hop = tracing::info_span!("upstream", otel.kind = "client");
            traces::inject(&hop, upstream.headers_mut());
            hop
        } else {
            tracing::Span::none()
        };

        let deadline = tokio::time::Instant::now() + self.caps.upstream;
        let sent = self.client.request(upstream);
        let response = if self.traced {
            tokio::time::timeout_at(deadline, sent.instrument(hop))
                .await
                .map_err(|_| ShimError::UpstreamTimeout)?
        } else {
            tokio::time::timeout_at(deadline, sent)
                .await
                .map_err(|_| ShimError::UpstreamTimeout)?
        }
        .map_err(upstream_error)?;
        call.upstream_status = Some(response.status().as_u16());
        let head = parts.method == Method::HEAD;
        if self.streams(&response, head) {
            let pending = self.relay_stream(response, scrubber)?;
            call.scrubbed = pending.header_scrubbed;
            return Ok(Answer::Stream(Box::new(pending)));
        }
        let (response, scrubbed) = self.relay(response, &scrubber, head, deadline).await?;
        call.scrubbed = scrubbed;
        Ok(Answer::Whole(response))
    }

    /// Whether the answer is relayed as a stream: one that has a body and is an event
    /// stream, or of unknown length, or longer than `max_response_bytes`. Everything
    /// else (a `HEAD`, `204` or `304` answer, a body of known length within the cap) is
    /// read whole, as before streaming existed.
    fn streams(&self, upstream: &hyper::Response<Incoming>, head: bool) -> bool {
        let status = upstream.status();
        if head
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || status.is_informational()
        {
            return false;
        }
        let length = upstream
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match length {
            None => true,
            Some(n) => n > self.caps.response_bytes as u64 || is_event_stream(upstream.headers()),
        }
    }

    /// The head of an answer relayed as a stream, checked and scrubbed; its body goes
    /// through a [`StreamScrubber`] once the decision line is written
    /// ([`PendingStream::start`]). A compressed or partial answer cannot be scrubbed
    /// and is refused before any byte leaves.
    fn relay_stream(
        &self,
        upstream: hyper::Response<Incoming>,
        scrubber: Arc<Scrubber>,
    ) -> Result<PendingStream, ShimError> {
        if is_encoded(upstream.headers()) {
            return Err(ShimError::UpstreamEncoding);
        }
        let status = upstream.status();
        if is_partial(status, upstream.headers()) {
            return Err(ShimError::UpstreamPartial);
        }
        let (headers, header_scrubbed) = relay_headers(upstream.headers(), &scrubber, false)?;
        Ok(PendingStream {
            status,
            headers,
            header_scrubbed: header_scrubbed as u64,
            body: upstream.into_body(),
            scrubber,
        })
    }

    /// The usable credential at `path` and its scrubber, built once per credential value
    /// (~0.4 ms): a reload of the same value (every 30 s) keeps the scrubber.
    async fn credential(
        &self,
        path: &str,
    ) -> Result<(Arc<StoredCredential>, Arc<Scrubber>), ShimError> {
        let stored = self.credentials.usable(path).await.map_err(|e| match e {
            // Logged once per interval by the Vault client, not per call.
            CredentialError::Store(SecretStoreError::Denied { .. }) => {
                ShimError::CredentialUnavailable
            }
            e => {
                tracing::warn!(error = %e, "credential unavailable: nothing forwarded");
                ShimError::CredentialUnavailable
            }
        })?;
        if let Some((known, scrubber)) = self.scrubbers.get(path)
            && known.value.expose() == stored.value.expose()
        {
            return Ok((stored, scrubber));
        }
        let scrubber = Arc::new(Scrubber::new(stored.value.expose()));
        self.scrubbers
            .insert(path.to_string(), (stored.clone(), scrubber.clone()));
        Ok((stored, scrubber))
    }

    /// The upstream request: the bound upstream's origin and base path + the canonical
    /// path and query, the agent's headers that the action's shape forwards (an
    /// allow-list: [`RequestShape::forwards`]), plus the credential.
    fn upstream_request(
        &self,
        parts: &request::Parts,
        target: &Target,
        shape: &RequestShape,
        credential: &StoredCredential,
        body: Option<Bytes>,
    ) -> Result<hyper::Request<UpstreamBody>, ShimError> {
        let mut url = self.upstream.clone();
        let base = url.path().trim_end_matches('/');
        let path = format!("{base}{}", target.path);
        url.set_path(&path);
        url.set_query(target.query.as_deref());
        let uri: axum::http::Uri = url
            .as_str()
            .parse()
            .map_err(|_| ShimError::UpstreamUnreachable)?;

        let injected = HeaderName::from_bytes(credential.header.as_bytes())
            .map_err(|_| ShimError::CredentialUnavailable)?;
        let mut value = HeaderValue::from_str(credential.value.expose())
            .map_err(|_| ShimError::CredentialUnavailable)?;
        value.set_sensitive(true);

        let listed = connection_listed(&parts.headers);
        let mut headers = HeaderMap::with_capacity(parts.headers.len() + 2);
        for (name, v) in &parts.headers {
            if !shape.forwards(name.as_str()) || *name == injected || listed.contains(name) {
                continue;
            }
            headers.append(name.clone(), v.clone());
        }
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        headers.insert(injected, value);
        // What reqwest added to every request, kept so the upstream sees the same.
        if !headers.contains_key(header::ACCEPT) {
            headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        }

        let mut request = hyper::Request::new(Full::new(body.unwrap_or_default()));
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        Ok(request)
    }

    /// Reads the upstream response whole (capped, by `deadline`), scrubs its headers
    /// and body.
    async fn relay(
        &self,
        upstream: hyper::Response<Incoming>,
        scrubber: &Scrubber,
        head: bool,
        deadline: tokio::time::Instant,
    ) -> Result<(Response, u64), ShimError> {
        let cap = self.caps.response_bytes;
        let (upstream, mut body) = upstream.into_parts();
        if body.size_hint().exact().is_some_and(|n| n > cap as u64) {
            return Err(ShimError::UpstreamTooLarge);
        }
        let mut buffer = BytesMut::new();
        loop {
            let frame = tokio::time::timeout_at(deadline, body.frame())
                .await
                .map_err(|_| ShimError::UpstreamTimeout)?;
            let Some(frame) = frame else { break };
            // Trailers are not relayed (the shim frames what it sends).
            let Ok(chunk) = frame.map_err(body_error)?.into_data() else {
                continue;
            };
            if buffer.len() + chunk.len() > cap {
                return Err(ShimError::UpstreamTooLarge);
            }
            buffer.extend_from_slice(&chunk);
        }
        if is_encoded(&upstream.headers) && !buffer.is_empty() {
            return Err(ShimError::UpstreamEncoding);
        }
        let status = upstream.status;
        if is_partial(status, &upstream.headers) {
            return Err(ShimError::UpstreamPartial);
        }
        if !scrubber.sees_whole(&buffer) {
            return Err(ShimError::UpstreamEncoding);
        }
        let (body, scrubbed) = scrubber.scrub(buffer.freeze());
        // A HEAD or 304 answer describes a body it does not carry: keep its length.
        let keep_length = head || status == StatusCode::NOT_MODIFIED;
        let (headers, in_headers) = relay_headers(&upstream.headers, scrubber, keep_length)?;
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok((response, (scrubbed + in_headers) as u64))
    }
}

/// Records one call's decision on the request span (README, "Traces"): the decision
/// and reason code, the route template, the action and the trust of the verified
/// token (`client_id` is `TRUST:SUB`: only the trust is kept), the upstream's status.
/// Never the subject, the token or the credential.
fn record_call(decision: (&'static str, &'static str), token: Option<&AccessToken>, call: &Call) {
    let span = tracing::Span::current();
    span.record("decision", decision.0);
    span.record("reason", decision.1);
    if let Some(route) = &call.path {
        span.record("route", route.as_str());
    }
    if let Some(token) = token {
        span.record("action", token.action.as_str());
        if let Some((trust, _)) = token.client_id.split_once(':') {
            span.record("trust", trust);
        }
    }
    if let Some(status) = call.upstream_status {
        span.record("upstream_status", status);
    }
}

/// The upstream's answer headers as relayed: hop-by-hop, framing (the shim frames
/// what it sends; `Content-Length` stays only when `keep_length`) and
/// [`NOT_RELAYED`] headers dropped, every value scrubbed. Refused when a value holds
/// what the scrubber cannot see whole.
fn relay_headers(
    upstream: &HeaderMap,
    scrubber: &Scrubber,
    keep_length: bool,
) -> Result<(HeaderMap, usize), ShimError> {
    if upstream
        .values()
        .any(|v| !scrubber.sees_whole(v.as_bytes()))
    {
        return Err(ShimError::UpstreamEncoding);
    }
    let listed = connection_listed(upstream);
    let mut headers = HeaderMap::with_capacity(upstream.len());
    let mut scrubbed = 0;
    for (name, value) in upstream {
        if HOP_BY_HOP.contains(name)
            || NOT_RELAYED.contains(name)
            || *name == header::TRANSFER_ENCODING
            || (*name == header::CONTENT_LENGTH && !keep_length)
            || listed.contains(name)
        {
            continue;
        }
        match scrubber.scrub_header(value) {
            Some((clean, n)) => {
                scrubbed += n;
                headers.append(name.clone(), clean);
            }
            None => {
                headers.append(name.clone(), value.clone());
            }
        }
    }
    Ok((headers, scrubbed))
}

/// A content coding, or a transfer coding other than `chunked` (which hyper has already
/// removed), leaves the body in a form the scrubber cannot read.
fn is_encoded(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
        || headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|coding| !coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// A `Content-Type` of `text/event-stream` (SSE): relayed as a stream whatever its
/// length.
fn is_event_stream(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONTENT_TYPE).iter().any(|v| {
        v.to_str().is_ok_and(|t| {
            t.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
    })
}

/// An answer that is a piece of a representation (a `206`, a `Content-Range`, a
/// `multipart/byteranges` body): the scrubber would see only that piece, so a
/// credential split across pieces could come back whole over several calls.
fn is_partial(status: StatusCode, headers: &HeaderMap) -> bool {
    status == StatusCode::PARTIAL_CONTENT
        || headers.contains_key(header::CONTENT_RANGE)
        || headers.get_all(header::CONTENT_TYPE).iter().any(|v| {
            v.to_str().is_ok_and(|t| {
                t.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("multipart/byteranges")
            })
        })
}

/// Refuses a header section larger than `cap` bytes (each field counted as
/// `name: value\r\n`, plus the request target).
fn check_header_size(parts: &request::Parts, cap: usize) -> Result<(), ShimError> {
    let fields: usize = parts
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    let target = parts.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if fields + target > cap {
        return Err(ShimError::HeadersTooLarge);
    }
    Ok(())
}

/// How the agent's request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// One `Content-Length`, or no body.
    Length,
    /// `Transfer-Encoding: chunked` alone.
    Chunked,
}

/// The request body's framing (RFC 9112 §6): one `Content-Length`, or exactly one
/// `Transfer-Encoding` field whose one coding is `chunked`; anything else is refused.
/// The smuggling pair, a `Content-Length` beside a `Transfer-Encoding`, is refused too,
/// though hyper removes the `Content-Length` of such a request before the shim sees it:
/// the connection's [`AmbiguousFraming`] mark remembers it (a request without the mark,
/// i.e. not served by [`crate::runtime::serve`], may not be chunked at all). The body
/// is read whole and forwarded with a `Content-Length` of the shim's own, so the
/// upstream never sees the agent's framing.
fn check_framing(parts: &request::Parts) -> Result<Framing, ShimError> {
    let headers = &parts.headers;
    let mark = parts.extensions.get::<AmbiguousFraming>();
    if mark.is_some_and(AmbiguousFraming::seen) {
        return Err(ShimError::Framing);
    }
    let lengths = headers.get_all(header::CONTENT_LENGTH).iter().count();
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (codings.next(), codings.next()) {
        (None, _) if lengths <= 1 => Ok(Framing::Length),
        (Some(coding), None)
            if lengths == 0
                && mark.is_some()
                && coding
                    .as_bytes()
                    .trim_ascii()
                    .eq_ignore_ascii_case(b"chunked") =>
        {
            Ok(Framing::Chunked)
        }
        _ => Err(ShimError::Framing),
    }
}

/// The token of the `Authorization` header: `Bearer` (RFC 6750 §2.1), or `DPoP` with
/// its one proof header (RFC 9449 §7.1).
fn presented(headers: &HeaderMap, max_bytes: usize) -> Result<Presented<'_>, ShimError> {
    presented_token(headers, max_bytes).map_err(|e| match e {
        BearerError::Missing => ShimError::MissingToken,
        BearerError::Duplicate => ShimError::DuplicateAuthorization,
        BearerError::Malformed => ShimError::MalformedAuthorization,
        BearerError::Proof => ShimError::InvalidDpopProof,
    })
}

/// The reason a token was refused, for the audit log; a JWKS outage is ours (503).
fn token_error(e: VerifyError) -> ShimError {
    let reason = match &e {
        VerifyError::Token(JwtError::JwksUnavailable { .. }) => {
            return ShimError::KeysUnavailable;
        }
        VerifyError::DenyListUnavailable => return ShimError::DenyListUnavailable,
        VerifyError::IssuerWithdrawn => "issuer_withdrawn",
        VerifyError::Denied { entry } => {
            tracing::info!(entry = %entry, "token refused by the deny list");
            "denied"
        }
        VerifyError::Token(JwtError::Claim { claim: "exp", .. }) => "token_expired",
        VerifyError::Token(JwtError::Claim { claim: "aud", .. }) => "wrong_audience",
        VerifyError::Token(JwtError::UnknownIssuer) => "wrong_issuer",
        VerifyError::Token(JwtError::BadSignature { .. }) => "bad_signature",
        VerifyError::Token(JwtError::UnknownKid { .. }) => "unknown_kid",
        VerifyError::Token(JwtError::Malformed(_)) => "malformed_token",
        VerifyError::NotAccessToken => "not_an_access_token",
        VerifyError::Dpop(agent_sts_verifier::DpopError::UseNonce) => {
            return ShimError::UseDpopNonce;
        }
        VerifyError::Dpop(e) => {
            tracing::debug!(error = %e, "DPoP proof refused");
            return ShimError::InvalidDpopProof;
        }
        VerifyError::Downgrade => {
            return ShimError::DpopBinding {
                reason: "dpop_token_as_bearer",
            };
        }
        VerifyError::NotBound => {
            return ShimError::DpopBinding {
                reason: "bearer_token_as_dpop",
            };
        }
        _ => "invalid_token",
    };
    tracing::debug!(error = %e, "token refused");
    ShimError::InvalidToken { reason }
}

/// A failed upstream call: a connect that timed out is a timeout, anything else
/// unreachable. Only the kind is logged (the request, with its credential, is never).
fn upstream_error(e: hyper_util::client::legacy::Error) -> ShimError {
    if upstream::timed_out(&e) {
        ShimError::UpstreamTimeout
    } else {
        tracing::warn!(connect = e.is_connect(), "upstream request failed");
        ShimError::UpstreamUnreachable
    }
}

/// A failed read of an answer read whole.
fn body_error(e: hyper::Error) -> ShimError {
    if e.is_timeout() || upstream::timed_out(&e) {
        ShimError::UpstreamTimeout
    } else {
        tracing::warn!(
            incomplete = e.is_incomplete_message(),
            "upstream answer failed"
        );
        ShimError::UpstreamUnreachable
    }
}

/// Reads the agent's request body whole, at most `caps.request_bytes`, within
/// `caps.body_read`. `None` when the request declares no body (neither a
/// `Content-Length` nor chunked framing).
async fn read_body(
    body: Body,
    framing: Framing,
    headers: &HeaderMap,
    caps: Caps,
) -> Result<Option<Bytes>, ShimError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(ShimError::Framing)
        })
        .transpose()?;
    let declared = match (declared, framing) {
        (Some(n), _) => n,
        (None, Framing::Chunked) => 0,
        (None, Framing::Length) => return Ok(None),
    };
    if declared > caps.request_bytes as u64 {
        return Err(ShimError::BodyTooLarge);
    }
    let limited = http_body_util::Limited::new(body, caps.request_bytes);
    match tokio::time::timeout(caps.body_read, limited.collect()).await {
        Err(_) => Err(ShimError::BodyUnreadable),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(ShimError::BodyTooLarge),
        Ok(Err(_)) => Err(ShimError::BodyUnreadable),
        Ok(Ok(collected)) => Ok(Some(collected.to_bytes())),
    }
}

/// The header names a `Connection` header lists (hop-by-hop by declaration).
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect()
}
