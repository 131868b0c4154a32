//! The echo upstream: a small HTTP server that answers every request with what it
//! received, for `agent-sts dev` (the legacy API behind the demo shim) and for the
//! tests (the hostile upstream that tries to hand the credential back).
//!
//! The body is JSON: `method`, `path`, `query`, `headers` (name → list of values) and
//! `body` (the request body as text, lossy). Every request header is also returned as a
//! response header `x-echo-<name>`, so a credential the shim injected comes back in
//! both places, and only the shim's scrubbing keeps it from the agent. The server
//! counts requests and keeps the last one, so a test can tell whether anything reached
//! it at all.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Largest request body the echo reads.
const MAX_BODY: usize = 1 << 20;

/// What the echo upstream has seen.
#[derive(Debug, Default)]
pub struct Echo {
    hits: AtomicUsize,
    last: Mutex<Option<Value>>,
}

impl Echo {
    pub fn new() -> Arc<Echo> {
        Arc::new(Echo::default())
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// The last request, as echoed.
    pub fn last(&self) -> Option<Value> {
        self.last.lock().ok().and_then(|l| l.clone())
    }

    /// The echo server's routes: every method and path echoes.
    pub fn router(self: Arc<Self>) -> axum::Router {
        axum::Router::new().fallback(echo).with_state(self)
    }
}

async fn echo(State(echo): State<Arc<Echo>>, request: Request) -> Response {
    echo.hits.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .unwrap_or_default();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        headers
            .entry(name.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let seen = json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    if let Ok(mut last) = echo.last.lock() {
        *last = Some(seen.clone());
    }
    let mut response = axum::Json(seen).into_response();
    for (name, value) in &parts.headers {
        let Ok(echoed) = HeaderName::from_bytes(format!("x-echo-{name}").as_bytes()) else {
            continue;
        };
        if let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) {
            response.headers_mut().append(echoed, value);
        }
    }
    response
}

/// Serves the echo upstream on `listener` in the background.
pub fn spawn(echo: Arc<Echo>, listener: tokio::net::TcpListener) {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, echo.router()).await {
            tracing::error!(error = %e, "echo upstream stopped");
        }
    });
}
