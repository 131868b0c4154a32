//! HTTP: the router, thin handlers and the protective layers.
//!
//! Handlers only extract, call and convert: `POST /token` checks the transport rules
//! (no query string, no client authentication header, a form content type, the body
//! cap), hands the body to [`crate::sts::token_exchange::parse`] (token exchange or
//! jwt-bearer, one normalized request) and the result to
//! [`crate::sts::exchange::Sts::exchange`], and turns the outcome into an RFC 8693 §2.2
//! (or RFC 6749 §5.1) response.
//! Every refusal, even one decided before the form is read, goes through
//! [`Sts::refuse`] so it is audited (anonymous ones summarised per window) and counted
//! like any other decision.
//!
//! Layers (tower-http and tower): a request body cap (413), a request deadline (503),
//! a global concurrency cap, and a trace span that records the method and path only:
//! never the query string, which is where a misguided client would put a token. With
//! `[telemetry]` on, the span is exported as a child of the caller's W3C
//! `traceparent`, with the decision as attributes (README, "Traces").

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::identity::unix_now;
use crate::secret::{DpopProof, SubjectToken};
use crate::sts::exchange::{Readiness, Sts};
use crate::sts::oauth_error::{RETRY_AFTER_SECONDS, Rejection};
use crate::sts::revocation;
use crate::sts::token_exchange::{self, GRANT_TYPE_JWT_BEARER, GRANT_TYPE_TOKEN_EXCHANGE};

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    pub sts: Arc<Sts>,
    pub max_body_bytes: usize,
    pub max_token_bytes: usize,
    pub jwks_max_age: Duration,
}

/// Transport limits applied around the router.
#[derive(Clone, Copy, Debug)]
pub struct Layers {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub max_concurrency: usize,
}

/// One issuer's endpoints (the top level's at `/`, a tenant's under `/t/{name}/`):
/// token, JWKS, deny-list feed, revocation, introspection, RFC 8414 metadata, and, for
/// a tenant (`own_readiness`), its own `/readyz` (the top level's is the process's).
pub fn issuer_router(state: AppState, own_readiness: bool) -> Router {
    let timed = axum::middleware::from_fn_with_state(state.sts.clone(), token_latency);
    let router = if own_readiness {
        Router::new().route("/readyz", get(readyz))
    } else {
        Router::new()
    };
    router
        .route(
            "/token",
            post(token).fallback(token_wrong_method).layer(timed),
        )
        .route("/.well-known/jwks.json", get(jwks))
        .route(agent_sts_verifier::deny::FEED_PATH, get(deny_feed))
        .route("/revoke", post(revoke).fallback(wrong_method))
        .route("/introspect", post(introspect).fallback(wrong_method))
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .with_state(state)
}

/// Wraps one issuer's router in the per-request limits. The OAuth-shaping middleware
/// sits outside the body-limit and timeout layers so the bare responses they produce
/// themselves (413 on a declared Content-Length over the cap, 503 at the deadline) are
/// reshaped and, on `/token`, audited by that issuer.
pub fn with_issuer_layers(router: Router, layers: Layers, sts: Arc<Sts>) -> Router {
    router
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            layers.request_timeout,
        ))
        .layer(RequestBodyLimitLayer::new(layers.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            sts,
            json_transport_errors,
        ))
}

/// Wraps the whole router in what is the process's: the global concurrency cap and a
/// trace span per request.
pub fn with_process_layers(router: Router, layers: Layers) -> Router {
    router
        .layer(tower::limit::ConcurrencyLimitLayer::new(
            layers.max_concurrency,
        ))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
}

/// The span of one request: method and path. With `[telemetry]` on it is exported as
/// a child of the caller's W3C `traceparent`, with the decision as attributes
/// ([`crate::sts::exchange`] records them; README, "Traces").
fn request_span(req: &Request) -> tracing::Span {
    if !crate::telemetry::traces::installed() {
        return tracing::info_span!("http", method = %req.method(), path = %req.uri().path());
    }
    // Exported: the path only when it names an endpoint, so nothing a client puts in a
    // path (a token, by mistake) leaves in a span.
    let span = tracing::info_span!(
        "http",
        otel.kind = "server",
        method = %req.method(),
        path = endpoint(req.uri().path()),
    );
    crate::telemetry::traces::adopt_parent(&span, req.headers());
    span
}

/// The endpoints an exported span names by their path (under `/t/{tenant}` too).
const ENDPOINTS: &[&str] = &[
    "/token",
    "/revoke",
    "/introspect",
    "/.well-known/jwks.json",
    "/.well-known/oauth-authorization-server",
    agent_sts_verifier::deny::FEED_PATH,
    "/healthz",
    "/readyz",
    "/metrics",
];

/// `path` when it is one of [`ENDPOINTS`], alone or under `/t/{tenant}` (a tenant
/// name's syntax; RFC 8414's `/.well-known/oauth-authorization-server/t/{tenant}`
/// too); else `other`.
fn endpoint(path: &str) -> &str {
    let tenant = |name: &str| {
        (1..=crate::config::tenant::MAX_TENANT_NAME).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    let known = |rest: &str| ENDPOINTS.contains(&rest);
    let named = match path.strip_prefix("/t/").and_then(|p| p.split_once('/')) {
        Some((name, rest)) => tenant(name) && known(&path[path.len() - rest.len() - 1..]),
        None => match path.strip_prefix("/.well-known/oauth-authorization-server/t/") {
            Some(name) => tenant(name),
            None => known(path),
        },
    };
    if named { path } else { "other" }
}

/// The body-limit and timeout layers answer with bare statuses; clients get the OAuth
/// JSON shape instead, and a refusal on the token endpoint is audited like any other.
async fn json_transport_errors(
    State(sts): State<Arc<Sts>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let token_endpoint = request.uri().path() == "/token";
    let response = next.run(request).await;
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return response;
    }
    let rejection = match response.status() {
        StatusCode::PAYLOAD_TOO_LARGE => Rejection::BodyTooLarge,
        StatusCode::SERVICE_UNAVAILABLE
            if !response.headers().contains_key(header::RETRY_AFTER) =>
        {
            Rejection::RequestTimeout
        }
        _ => return response,
    };
    if token_endpoint {
        sts.refuse(rejection).into_response()
    } else {
        rejection.into_response()
    }
}

/// A successful token exchange response (RFC 8693 §2.2.1).
#[derive(serde::Serialize)]
struct TokenResponse<'a> {
    access_token: &'a str,
    issued_token_type: &'static str,
    token_type: &'static str,
    expires_in: u64,
    scope: &'a str,
}

/// Records the latency of every `/token` request, whatever its outcome.
async fn token_latency(
    State(sts): State<Arc<Sts>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let started = Instant::now();
    let response = next.run(request).await;
    sts.observe_token_latency(started.elapsed());
    response
}

async fn token(State(state): State<AppState>, request: Request) -> Response {
    let now = unix_now();
    let mut response = match read_exchange(&state, request).await {
        Ok(exchange) => match state.sts.exchange(exchange, now).await {
            Ok(issued) => {
                let body = TokenResponse {
                    access_token: issued.access_token.expose(),
                    issued_token_type: token_exchange::TOKEN_TYPE_ACCESS_TOKEN,
                    token_type: issued.token_type,
                    expires_in: issued.expires_in,
                    scope: &issued.scope,
                };
                let mut response = (StatusCode::OK, axum::Json(body)).into_response();
                no_store(&mut response);
                response
            }
            Err(rejection) => rejection.into_response(),
        },
        Err(rejection) => state.sts.refuse(rejection).into_response(),
    };
    // RFC 9449 §8: with nonces on, every answer carries the current one, so a client
    // refused with `use_dpop_nonce` retries at once.
    if let Some(nonce) = state.sts.dpop_nonce(now)
        && let Ok(value) = HeaderValue::from_str(&nonce)
    {
        response.headers_mut().insert(DPOP_NONCE, value);
    }
    response
}

/// The transport rules of every form endpoint (`/token`, `/revoke`, `/introspect`):
/// nothing in the query string (tokens are never read from URLs), and a form body.
fn form_transport(parts: &axum::http::request::Parts) -> Result<(), Rejection> {
    if parts.uri.query().is_some() {
        return Err(Rejection::ParametersInUrl);
    }
    let form = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if form {
        Ok(())
    } else {
        Err(Rejection::UnsupportedMediaType)
    }
}

/// RFC 7009 `POST /revoke`: the caller's own token in `Authorization` (with its DPoP
/// proof when bound), the token to end in the form; 200 with no body.
async fn revoke(State(state): State<AppState>, request: Request) -> Response {
    let now = unix_now();
    let (parts, body) = request.into_parts();
    let result = async {
        form_transport(&parts)?;
        let caller =
            agent_sts_verifier::layer::presented_token(&parts.headers, state.max_token_bytes)
                .map_err(|_| Rejection::InvalidClient)?;
        let bytes = read_body(body, state.max_body_bytes).await?;
        let token = revocation::token_parameter(&bytes, state.max_token_bytes)?;
        state.sts.revoke(caller, &token, now).await
    }
    .await;
    match result {
        Ok(()) => {
            let mut response = StatusCode::OK.into_response();
            no_store(&mut response);
            response
        }
        Err(rejection) => rejection.into_response(),
    }
}

/// RFC 7662 `POST /introspect`: the calling service's workload token in
/// `Authorization: Bearer`, the token to look at in the form; the answer as JSON.
async fn introspect(State(state): State<AppState>, request: Request) -> Response {
    let now = unix_now();
    let (parts, body) = request.into_parts();
    let result = async {
        form_transport(&parts)?;
        let caller =
            match agent_sts_verifier::layer::presented_token(&parts.headers, state.max_token_bytes)
            {
                Ok(agent_sts_verifier::Presented::Bearer(t)) => SubjectToken::new(t.to_string()),
                _ => return Err(state.sts.refuse(Rejection::InvalidClient)),
            };
        let bytes = read_body(body, state.max_body_bytes).await?;
        let token = revocation::token_parameter(&bytes, state.max_token_bytes)?;
        state.sts.introspect(&caller, &token, now).await
    }
    .await;
    match result {
        Ok(answer) => {
            let mut response = (StatusCode::OK, axum::Json(answer)).into_response();
            no_store(&mut response);
            response
        }
        Err(rejection) => rejection.into_response(),
    }
}

/// `DPoP-Nonce` (RFC 9449 §8.1).
const DPOP_NONCE: header::HeaderName = header::HeaderName::from_static("dpop-nonce");

async fn wrong_method() -> Response {
    Rejection::MethodNotAllowed.into_response()
}

async fn token_wrong_method(State(state): State<AppState>) -> Response {
    state
        .sts
        .refuse(Rejection::MethodNotAllowed)
        .into_response()
}

/// The transport rules of the token endpoint, then the form.
async fn read_exchange(
    state: &AppState,
    request: Request,
) -> Result<token_exchange::ExchangeRequest, Rejection> {
    let (parts, body) = request.into_parts();
    form_transport(&parts)?;
    if parts.headers.contains_key(header::AUTHORIZATION) {
        return Err(Rejection::ClientAuthentication);
    }
    let dpop = agent_sts_verifier::layer::dpop_proof(&parts.headers)
        .map_err(|_| Rejection::InvalidDpopProof)?
        .map(DpopProof::new);
    let bytes = read_body(body, state.max_body_bytes).await?;
    let mut exchange = token_exchange::parse(&bytes, state.max_token_bytes)?;
    exchange.dpop = dpop;
    Ok(exchange)
}

async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, Rejection> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        // The cap (ours or tower-http's) surfaces as `LengthLimitError` somewhere in
        // the error chain; anything else is a broken body.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(err) = source {
            if err.is::<http_body_util::LengthLimitError>() {
                return Rejection::BodyTooLarge;
            }
            source = err.source();
        }
        Rejection::MalformedBody
    })
}

async fn jwks(State(state): State<AppState>) -> Response {
    let body = state.sts.jwks(unix_now());
    let mut response = axum::Json(body).into_response();
    let cache = format!("public, max-age={}", state.jwks_max_age.as_secs());
    if let Ok(v) = HeaderValue::from_str(&cache) {
        response.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    response
}

/// The deny list, signed (see `agent_sts_verifier::deny`): shims and services refuse
/// live tokens it names. 503 when this replica's list is stale, so they fail closed.
async fn deny_feed(State(state): State<AppState>) -> Response {
    match state.sts.deny_feed(unix_now()).await {
        Some(document) => (
            [
                (header::CONTENT_TYPE, "application/deny-list+jwt"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            document.to_string(),
        )
            .into_response(),
        None => {
            let mut response = (
                StatusCode::SERVICE_UNAVAILABLE,
                "the deny list is unavailable\n",
            )
                .into_response();
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&RETRY_AFTER_SECONDS.to_string())
                    .unwrap_or(HeaderValue::from_static("1")),
            );
            response
        }
    }
}

/// RFC 8414 §2 metadata. `scopes_supported` is left out on purpose: the catalogue is
/// not enumerable from outside.
async fn metadata(State(state): State<AppState>) -> Response {
    let issuer = state.sts.issuer().trim_end_matches('/');
    axum::Json(json!({
        "issuer": state.sts.issuer(),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "revocation_endpoint": format!("{issuer}/revoke"),
        "introspection_endpoint": format!("{issuer}/introspect"),
        "grant_types_supported": [GRANT_TYPE_TOKEN_EXCHANGE, GRANT_TYPE_JWT_BEARER],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": ["none"],
        "token_endpoint_auth_signing_alg_values_supported": [],
        "dpop_signing_alg_values_supported": state.sts.dpop_algorithms(),
    }))
    .into_response()
}

/// One issuer's readiness: 200 when it can mint, else 503.
async fn readyz(State(state): State<AppState>) -> Response {
    let r = state.sts.readiness(unix_now()).await;
    let status = if r.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(readiness_body(&r))).into_response()
}

/// The `/readyz` document of one issuer: ready = catalogue loaded, a signing key
/// active, the deny list fresh, the secret store (and Vault) reachable.
pub fn readiness_body(r: &Readiness) -> serde_json::Value {
    let mut body = json!({
        "ready": r.ready(),
        "checks": {
            "catalogue": if r.catalogue { "ok" } else { "no actions loaded" },
            "signing_key": if r.signing_key { "ok" } else { "no active signing key" },
            "secret_store": r.secret_store.detail,
            "keyring": r.keyring_error.as_deref().unwrap_or("ok"),
            "deny_list": if r.deny_list { "ok" } else { "not read within deny.max_stale" },
        }
    });
    if let Some(vault) = &r.vault {
        body["checks"]["vault"] = json!(vault.detail);
    }
    body
}

/// The OpenMetrics exposition `text` as a response.
pub fn metrics_response(text: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Headers every token endpoint response carries (RFC 6749 §5.1).
fn no_store(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// A refusal as the RFC 6749 §5.2 JSON error response, with the headers its status
/// calls for: `Retry-After` on 429 and 503, a `WWW-Authenticate` challenge on 401,
/// `Allow` on 405.
impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let body = json!({
            "error": self.code(),
            "error_description": self.description(),
        });
        let mut response = (self.status(), axum::Json(body)).into_response();
        no_store(&mut response);
        let headers = response.headers_mut();
        match self.status() {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
            }
            StatusCode::UNAUTHORIZED => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"agent-sts\""),
                );
            }
            StatusCode::METHOD_NOT_ALLOWED => {
                headers.insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::endpoint;

    #[test]
    fn an_exported_span_names_only_endpoints() {
        for path in [
            "/token",
            "/t/acme/token",
            "/t/acme-2/.well-known/jwks.json",
            "/deny-list",
            "/.well-known/oauth-authorization-server/t/acme",
        ] {
            assert_eq!(endpoint(path), path);
        }
        for path in [
            "/token/eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
            "/t/Acme/token",
            "/t//token",
            "/t/acme/token/x",
            "/t/acme",
            "/.well-known/oauth-authorization-server/t/a/b",
            "/",
            "",
        ] {
            assert_eq!(endpoint(path), "other", "{path}");
        }
    }
}
