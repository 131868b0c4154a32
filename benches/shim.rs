//! Benchmark of the `agent-sts shim` reverse proxy over real HTTP, against calling the
//! same upstream directly: `cargo bench --bench shim`.
//!
//! Everything runs in this process on 127.0.0.1:0, on the same cores:
//! - an UPSTREAM: a bare axum `GET /items/{id}` answering a fixed 196-byte JSON body
//!   (it only counts the requests that carry the injected credential, so the run can
//!   check that the shim injected it), the same server for both paths, so the
//!   comparison is about the shim alone;
//! - a fake workload issuer (SPIRE, ES256 fixture `keys/test/spire-es256.pem`) serving
//!   its JWKS, and the real STS started as `benches/load.rs` starts it (temp dir
//!   configuration, a key from [`agent_sts::keys::rotate`], [`agent_sts::sts::build`],
//!   `App::serve`), with one catalogue action `items.read` for the shim's audience,
//!   with a credential and `[action.request] GET /items/{id}`;
//! - the real SHIM: [`agent_sts::shim::build`] from a [`ShimConfig`] in the same temp
//!   dir, served with `ShimApp::serve`: the STS's JWKS, the same `scopes/`, the file
//!   secret store (credential header `Authorization`, a 40-byte value) and its own
//!   audit log. No tracing subscriber (logging off).
//!
//! Before measuring, `SHIM_TOKENS` (default 64) JWT-SVIDs are exchanged at
//! `POST /token` for as many access tokens (one per agent identity); requests cycle
//! through them, so after the first 64 requests the shim's verified-token cache hits, as it
//! does for a warm shim serving a few dozen agents. The tokens live 15 minutes: a run
//! longer than that shows errors.
//!
//! A hyper HTTP/1.1 client (the load generator of `benches/common/`) sends, in
//! scenarios interleaved in `SHIM_ROUNDS` rounds (each slice after its own warm-up on
//! fresh connections, so a change in what else the machine is doing touches all alike):
//! - A: DIRECT, `GET /items/42` to the upstream with `Authorization: Bearer <access
//!   token>` (the same header as B, so both requests are the same size);
//! - B: THROUGH THE SHIM, the same request to the shim, which verifies the token,
//!   authorises the path, swaps the `Authorization` header for the credential,
//!   forwards on its pooled keep-alive connections, scrubs the response and appends
//!   one audit line;
//! - C (only with `SHIM_BARE_PROXY=1`): a BARE PROXY, for scale: an axum handler that
//!   forwards with a reqwest client built like the shim's before it moved to hyper
//!   (issue 12, item 5), swapping the `Authorization` header for the credential, and
//!   relays status, `Content-Type` and body; no token check, policy, scrubbing or
//!   audit. What the extra loopback hop costs on its own (C against A), and what the
//!   shim's own work costs (B against C); and D, the same bare proxy on hyper-util's
//!   pooled client, the kind of client the shim now uses.
//!
//! Each is measured twice: (i) LATENCY, one connection, requests one after another: p50 and p99
//! of A and B and the ADDED p50 = p50(B) − p50(A) (target ≤ 100 µs); (ii) THROUGHPUT,
//! `SHIM_CONNECTIONS` keep-alive connections kept busy (each sends its next request as
//! soon as the previous answer is read): req/s of A and B and B/A (target ≥ 0.7). An
//! answer other than 200 is an error. Timings are not asserted: the machine is shared
//! and noisy, so only the ratios against the direct baseline of the same run mean much.
//!
//! Environment: `SHIM_SECONDS` (measured seconds per scenario, over all rounds; default
//! 8), `SHIM_ROUNDS` (default 2), `SHIM_WARMUP` (seconds before each slice, default 1),
//! `SHIM_CONNECTIONS` (default 64), `SHIM_TOKENS` (default 64), `SHIM_BARE_PROXY`
//! (`1` adds scenario C; default off), `SHIM_RUNTIME`
//! (`shared`: servers and load generator on one tokio runtime of `SHIM_SERVER_THREADS`
//! workers; `split`: the load generator on its own runtime of `SHIM_CLIENT_THREADS`
//! workers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use agent_sts::config::ShimConfig;
use agent_sts::identity::unix_now;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::{Knobs, Measured, Runtimes, STS_ISSUER, Source, Unit, env_or};
use http_body_util::Full;

const ACTION: &str = "items.read";
const AUDIENCE: &str = "https://items-shim.internal";
const PATH: &str = "/items/42";
/// The credential the shim injects (40 bytes).
const CREDENTIAL: &str = "Bearer itm_0123456789abcdefghijklmnopqrs";

const SCOPES: &str = r#"
[[action]]
name = "items.read"
description = "Read one item"
audience = "https://items-shim.internal"
ttl = "15m"
agents = ["spiffe://example.org/agent/*"]
credential = "integrations/items"

[action.request]
method = "GET"
path = "/items/{id}"
"#;

/// The upstream's answer, the same for every request.
const BODY: &str = r#"{"id":42,"name":"widget","description":"A fixed answer of the bench upstream","price":{"amount":1999,"currency":"EUR"},"tags":["bench","fixed"],"in_stock":true,"updated_at":"2025-01-01T00:00:00Z"}"#;

/// The upstream: a fixed JSON body; counts requests that carry the credential.
async fn item(State(injected): State<Arc<AtomicUsize>>, headers: HeaderMap) -> impl IntoResponse {
    if headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == CREDENTIAL.as_bytes())
    {
        injected.fetch_add(1, Ordering::Relaxed);
    }
    ([(header::CONTENT_TYPE, "application/json")], BODY)
}

/// Scenario C: the least a credential-injecting proxy does, for scale: reqwest (built
/// as the shim builds it) forwards the path with the `Authorization` header swapped for
/// the credential, and relays status, `Content-Type` and body. No token check, no
/// policy, no scrubbing, no audit.
struct BareProxy {
    base: String,
    client: reqwest::Client,
    credential: HeaderValue,
}

async fn bare_proxy(State(p): State<Arc<BareProxy>>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let url = format!("{}{}", p.base, parts.uri.path());
    let mut headers = parts.headers;
    headers.remove(header::HOST);
    headers.insert(header::AUTHORIZATION, p.credential.clone());
    let Ok(answer) = p.client.get(url).headers(headers).send().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let status = answer.status();
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    let Ok(body) = answer.bytes().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let mut response = (status, body).into_response();
    if let Some(v) = content_type {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    response
}

/// Scenario D: scenario C with hyper-util's pooled client in place of reqwest (no
/// redirects, no proxy, keep-alive), to measure what reqwest's layers cost on the
/// upstream hop. The shim's own upstream client is of this kind since issue 12, item
/// 5 (with a rustls connector for https upstreams).
struct HyperProxy {
    base: String,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<bytes::Bytes>,
    >,
    credential: HeaderValue,
}

async fn hyper_proxy(State(p): State<Arc<HyperProxy>>, request: Request) -> Response {
    use http_body_util::BodyExt;
    let (parts, _) = request.into_parts();
    let url = format!("{}{}", p.base, parts.uri.path());
    let mut upstream = hyper::Request::get(url).body(Full::default()).unwrap();
    let headers = upstream.headers_mut();
    for (name, value) in &parts.headers {
        if name != header::HOST && name != header::AUTHORIZATION {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(header::AUTHORIZATION, p.credential.clone());
    let Ok(answer) = p.client.request(upstream).await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let status = answer.status();
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    let Ok(body) = answer.into_body().collect().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let mut response = (status, body.to_bytes()).into_response();
    if let Some(v) = content_type {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    response
}

struct Servers {
    upstream: SocketAddr,
    shim: SocketAddr,
    /// The bare proxy (scenario C), when asked for.
    bare: Option<SocketAddr>,
    /// The bare proxy on hyper's client (scenario D), with C.
    bare_hyper: Option<SocketAddr>,
    /// Upstream requests that carried the injected credential.
    injected: Arc<AtomicUsize>,
    /// `Bearer <access token>`, one per agent identity.
    authorizations: Arc<Vec<HeaderValue>>,
    dir: tempfile::TempDir,
}

/// Starts the upstream, the issuer, the STS and the shim on the current runtime, and
/// mints `tokens` access tokens.
async fn start_servers(tokens: usize, bare: bool) -> Servers {
    let injected = Arc::new(AtomicUsize::new(0));
    let upstream = common::spawn_router(
        axum::Router::new()
            .route("/items/{id}", get(item))
            .with_state(injected.clone()),
    )
    .await;

    let issuer_key = common::spire_key();
    let issuer = common::spawn_issuer(&issuer_key).await;
    let secrets = format!(
        r#"
[secret."integrations/items"]
header = "Authorization"
value = "{CREDENTIAL}"
"#
    );
    let sts = common::start_sts(&issuer, SCOPES, &secrets).await;

    let d = sts.dir.path();
    let shim_toml = format!(
        r#"
[shim]
listen = "127.0.0.1:0"
audience = "{AUDIENCE}"
upstream = "http://{upstream}"
issuer = "{STS_ISSUER}"
jwks_uri = "http://{sts}/.well-known/jwks.json"
scopes_dir = "{dir}/scopes"

[secrets]
store = "file"
file = "{dir}/secrets.toml"

[audit]
path = "{dir}/shim-audit.log"
"#,
        sts = sts.addr,
        dir = d.display()
    );
    let config = ShimConfig::from_toml(&shim_toml, "<shim bench>", &BTreeMap::new()).unwrap();
    let shim_app = agent_sts::shim::build(&config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shim = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = shim_app.serve(listener).await;
    });

    let bare = if bare {
        let proxy = Arc::new(BareProxy {
            base: format!("http://{upstream}"),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .build()
                .unwrap(),
            credential: HeaderValue::from_static(CREDENTIAL),
        });
        Some(common::spawn_router(axum::Router::new().fallback(bare_proxy).with_state(proxy)).await)
    } else {
        None
    };
    let bare_hyper = if bare.is_some() {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        let proxy = Arc::new(HyperProxy {
            base: format!("http://{upstream}"),
            client,
            credential: HeaderValue::from_static(CREDENTIAL),
        });
        Some(
            common::spawn_router(axum::Router::new().fallback(hyper_proxy).with_state(proxy)).await,
        )
    } else {
        None
    };

    let now = unix_now();
    let mut authorizations = Vec::with_capacity(tokens);
    for i in 0..tokens {
        let svid = common::svid(&issuer_key, "shim", i, now);
        let token = common::exchange(sts.addr, &svid, ACTION).await;
        authorizations.push(HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
    }
    Servers {
        upstream,
        shim,
        bare,
        bare_hyper,
        injected,
        authorizations: Arc::new(authorizations),
        dir: sts.dir,
    }
}

/// One request each way: all answer 200 with the upstream's body, and the proxies
/// injected the credential.
async fn preflight(servers: &Servers) {
    let proxies = [Some(servers.shim), servers.bare, servers.bare_hyper]
        .into_iter()
        .flatten();
    let targets = std::iter::once((servers.upstream, false)).chain(proxies.map(|p| (p, true)));
    for (addr, via_shim) in targets {
        let before = servers.injected.load(Ordering::Relaxed);
        let request = hyper::Request::get(PATH)
            .header(header::HOST, addr.to_string())
            .header(header::AUTHORIZATION, servers.authorizations[0].clone())
            .body(Full::default())
            .unwrap();
        let (status, _, body) = common::fetch(addr, request).await;
        assert_eq!(
            (status, &body[..]),
            (StatusCode::OK, BODY.as_bytes()),
            "GET {PATH} (via a proxy: {via_shim}): {}",
            String::from_utf8_lossy(&body)
        );
        let injected = servers.injected.load(Ordering::Relaxed) - before;
        assert_eq!(injected, usize::from(via_shim), "credential injected");
    }
}

fn main() {
    let knobs = Knobs::from_env("SHIM");
    let tokens: usize = env_or("SHIM_TOKENS", 64usize).max(1);
    let bare: bool = env_or("SHIM_BARE_PROXY", 0u8) != 0;
    let runtimes = Runtimes::from_env("SHIM");
    let cpus = std::thread::available_parallelism().map_or(0, |p| p.get());
    println!(
        "agent-sts shim benchmark: {cpus} CPUs; latency on 1 connection, throughput on {} connections; {} s per scenario in {} rounds, each after a {} s warm-up; runtime {}",
        knobs.connections,
        knobs.seconds,
        knobs.rounds,
        knobs.warmup,
        runtimes.describe()
    );

    let started = Instant::now();
    let servers = runtimes.server().block_on(start_servers(tokens, bare));
    runtimes.client().block_on(preflight(&servers));
    println!(
        "upstream {} body bytes, credential {} bytes; minted {tokens} access tokens ({} bytes each with `Bearer `) in {:.1?}",
        BODY.len(),
        CREDENTIAL.len(),
        servers.authorizations[0].len(),
        started.elapsed()
    );

    let source = || Arc::new(Source::get_authorized(PATH, servers.authorizations.clone()));
    let n = knobs.connections;
    let targets = [
        Some(("A direct", servers.upstream)),
        Some(("B shim", servers.shim)),
        servers.bare.map(|addr| ("C bare proxy", addr)),
        servers.bare_hyper.map(|addr| ("D bare hyper proxy", addr)),
    ];
    let targets: Vec<_> = targets.into_iter().flatten().collect();
    let mut latency: Vec<Measured> = targets
        .iter()
        .map(|(name, addr)| Measured::new(format!("{name}, 1 connection"), *addr, 1, source()))
        .collect();
    let mut throughput: Vec<Measured> = targets
        .iter()
        .map(|(name, addr)| Measured::new(format!("{name}, {n} connections"), *addr, n, source()))
        .collect();
    let mut runs: Vec<&mut Measured> = latency.iter_mut().chain(throughput.iter_mut()).collect();
    common::run_rounds(runtimes.client(), &mut runs, &knobs);

    println!();
    let rows: Vec<&Measured> = latency.iter().chain(&throughput).collect();
    common::print_table(&rows, Unit::Micros);

    let verdict = |pass: bool| if pass { "PASS" } else { "MISS" };
    let p50 = |m: &Measured| m.percentile_micros(0.5);
    let p99 = |m: &Measured| m.percentile_micros(0.99);
    let labels = ["A direct  ", "B via shim", "C bare    ", "D hyper   "];
    println!();
    println!("== shim summary ==");
    println!("latency, 1 connection, sequential requests:");
    for (label, m) in labels.iter().zip(&latency) {
        println!(
            "  {label}   p50 {:>6.0} µs   p99 {:>6.0} µs   errors {}",
            p50(m),
            p99(m),
            m.stats.errors
        );
    }
    let (a, b) = (&latency[0], &latency[1]);
    let added = p50(b) - p50(a);
    println!(
        "  added p50 = p50(B) - p50(A) = {added:.0} µs   (target <= 100 µs)   {}",
        verdict(added <= 100.0)
    );
    println!(
        "  (added p99 = p99(B) - p99(A) = {:.0} µs)",
        p99(b) - p99(a)
    );
    if let Some(c) = latency.get(2) {
        println!(
            "  (bare proxy: p50(C) - p50(A) = {:.0} µs)",
            p50(c) - p50(a)
        );
    }
    if let Some(d) = latency.get(3) {
        println!(
            "  (bare hyper proxy: p50(D) - p50(A) = {:.0} µs)",
            p50(d) - p50(a)
        );
    }
    println!("throughput, {n} keep-alive connections:");
    for (label, m) in labels.iter().zip(&throughput) {
        println!(
            "  {label}   {:>8.0} req/s   errors {}",
            m.per_second(),
            m.stats.errors
        );
    }
    let (a, b) = (&throughput[0], &throughput[1]);
    let ratio = b.per_second() / a.per_second();
    println!(
        "  B/A = {ratio:.2}x   (target >= 0.7x)   {}",
        verdict(ratio >= 0.7)
    );
    if let Some(c) = throughput.get(2) {
        println!(
            "  (bare proxy: C/A = {:.2}x, B/C = {:.2}x)",
            c.per_second() / a.per_second(),
            b.per_second() / c.per_second()
        );
    }
    if let Some(d) = throughput.get(3) {
        println!(
            "  (bare hyper proxy: D/A = {:.2}x)",
            d.per_second() / a.per_second()
        );
    }
    let audit = servers.dir.path().join("shim-audit.log");
    let audited = std::fs::metadata(&audit).map_or(0, |m| m.len());
    println!(
        "upstream saw the injected credential on {} requests; shim audit log {:.1} MB",
        servers.injected.load(Ordering::Relaxed),
        audited as f64 / 1e6
    );

    runtimes.shutdown();
    drop(servers);
}
