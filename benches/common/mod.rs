//! Code shared by the benches (`mod common;` in each): the fake workload issuer and its
//! JWT-SVIDs, the in-process STS, and the HTTP/1.1 load generator with its report.
//!
//! Not every bench uses every item, hence `dead_code` is allowed here.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agent_sts::config::Config;
use agent_sts::identity::unix_now;
use agent_sts::keys::FileKeyStore;
use agent_sts::keys::signing_key::SigningAlgorithm;
use agent_sts::keys::signing_key::SigningKey;
use agent_sts::secret::PrivateKeyPem;
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::json;

pub use agent_sts_testkit::b64;

pub const STS_ISSUER: &str = "https://sts.bench.example";
pub const SPIRE_ISSUER: &str = "https://spire.example.org";
/// The file secret store of the benches: the one credential their catalogues name.
pub const SECRETS: &str = r#"
[secret."integrations/github"]
header = "Authorization"
value = "Bearer ghp_bench0000000000000000000000000000000000"
"#;

/// Distinct agent identities the subject tokens are for (each token is distinct by
/// its `jti`; identities repeat, as workloads do).
pub const AGENTS: usize = 64;

// ---------------------------------------------------------------------------------
// Small helpers.

/// The environment variable `name` parsed, or `default` when unset.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} does not parse")),
        Err(_) => default,
    }
}

/// A file of `keys/test/`, as text.
pub fn fixture(name: &str) -> String {
    String::from_utf8(agent_sts_testkit::fixture(name)).unwrap()
}

/// A fresh 128-bit `jti`, as `mint` makes it.
pub fn jti() -> String {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    b64(&bytes)
}

/// The claims of an access token as `mint` writes them, for `jsonwebtoken::encode`.
#[derive(Serialize)]
pub struct AccessClaims<'a> {
    pub iss: &'a str,
    pub sub: &'a str,
    pub aud: &'a str,
    pub exp: u64,
    pub iat: u64,
    pub nbf: u64,
    pub jti: String,
    pub client_id: &'a str,
    pub scope: &'a str,
}

// ---------------------------------------------------------------------------------
// The fake workload issuer (SPIRE) and its tokens.

/// The SPIRE issuer's key (ES256, fixture `spire-es256.pem`).
pub fn spire_key() -> SigningKey {
    SigningKey::from_pem(
        SigningAlgorithm::ES256,
        &PrivateKeyPem::new(fixture("spire-es256.pem")),
    )
    .unwrap()
}

/// A SPIFFE JWT-SVID (the real shape) for the STS, for agent `n % AGENTS`, made
/// distinct by its `jti` `{tag}-{n}`.
pub fn svid(key: &SigningKey, tag: &str, n: usize, now: u64) -> String {
    svid_for(key, tag, n, now, STS_ISSUER)
}

/// [`svid`] for the issuer `audience` (a tenant's, `{STS_ISSUER}/t/{name}`).
pub fn svid_for(key: &SigningKey, tag: &str, n: usize, now: u64, audience: &str) -> String {
    let header = json!({"alg": "ES256", "kid": key.kid, "typ": "JWT"});
    let claims = json!({
        "sub": format!("spiffe://example.org/agent/worker-{}", n % AGENTS),
        "aud": [audience],
        "exp": now + 3600,
        "iat": now,
        "iss": SPIRE_ISSUER,
        "jti": format!("{tag}-{n}"),
    });
    key.sign_compact(header.to_string().as_bytes(), claims.to_string().as_bytes())
        .unwrap()
}

/// `make(0..n)`, on every core (signing pools of tokens).
pub fn on_every_core<T: Send>(n: usize, make: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get());
    let chunk = n.div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let make = &make;
                s.spawn(move || {
                    (t * chunk..((t + 1) * chunk).min(n))
                        .map(make)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

/// A form-encoded token-exchange request for `subject_token` and one action.
pub fn exchange_form(subject_token: &str, scope: &str) -> Bytes {
    Bytes::from(agent_sts_testkit::exchange_form(subject_token, scope))
}

// ---------------------------------------------------------------------------------
// Servers.

/// Starts `router` on 127.0.0.1:0 on the current runtime; returns its address.
pub async fn spawn_router(router: axum::Router) -> SocketAddr {
    agent_sts_testkit::serve(router).await
}

/// Serves `key`'s JWKS at `/jwks.json`, as the workload issuer would; returns the
/// JWKS URL.
pub async fn spawn_issuer(key: &SigningKey) -> String {
    agent_sts_testkit::JwksServer::start(json!({ "keys": [key.public_jwk] }))
        .await
        .uri
}

/// A running STS and its temp dir (configuration, keys, `scopes/bench.toml`,
/// `secrets.toml`, `audit.log`).
pub struct Sts {
    pub addr: SocketAddr,
    pub keys: FileKeyStore,
    pub dir: tempfile::TempDir,
}

/// Starts the real STS on the current runtime: configuration written to a temp dir
/// trusting the SPIRE issuer whose JWKS is at `jwks_uri`, a key bootstrapped with
/// [`agent_sts::keys::rotate`], [`agent_sts::sts::build`], served with `App::serve`.
/// The catalogue is `scopes` and the file secret store `secrets`; the rate limit is too
/// high to interfere.
pub async fn start_sts(jwks_uri: &str, scopes: &str, secrets: &str) -> Sts {
    start_sts_with_tenants(jwks_uri, scopes, secrets, &[]).await
}

/// [`start_sts`] with `[[tenant]]` issuers `tenants` beside the top level, each with
/// the same catalogue, its own keyring (bootstrapped) and audit log, the spire trust,
/// and `secrets` copied under its `secrets_prefix`.
pub async fn start_sts_with_tenants(
    jwks_uri: &str,
    scopes: &str,
    secrets: &str,
    tenants: &[&str],
) -> Sts {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("scopes")).unwrap();
    std::fs::write(d.join("scopes/bench.toml"), scopes).unwrap();
    let mut all_secrets = secrets.to_string();
    let mut tenant_blocks = String::new();
    for t in tenants {
        std::fs::create_dir_all(d.join(format!("tenants/{t}/scopes"))).unwrap();
        std::fs::write(d.join(format!("tenants/{t}/scopes/bench.toml")), scopes).unwrap();
        all_secrets.push_str(&secrets.replace("[secret.\"", &format!("[secret.\"tenants/{t}/")));
        tenant_blocks.push_str(&format!(
            "\n[[tenant]]\nname = \"{t}\"\nscopes_dir = \"{d}/tenants/{t}/scopes\"\ntrusts = [\"spire\"]\nsecrets_prefix = \"tenants/{t}\"\nkeys_dir = \"{d}/tenants/{t}/keys\"\naudit_path = \"{d}/tenants/{t}/audit.log\"\n",
            d = d.display()
        ));
    }
    agent_sts_testkit::write_secret_file(&d.join("secrets.toml"), &all_secrets);
    let trust = format!(
        r#"
[limits]
rate_per_second = 1000000
rate_burst = 1000000

[[trust]]
name = "spire"
issuer = "{SPIRE_ISSUER}"
jwks_uri = "{jwks_uri}"
algorithms = ["ES256"]
spiffe_trust_domains = ["example.org"]
{tenant_blocks}"#
    );
    let audit = d.join("audit.log").display().to_string();
    let config_text = agent_sts_testkit::sts_config_toml(STS_ISSUER, d, "30s", &audit, &trust);
    let config_path = d.join("agent-sts.toml");
    std::fs::write(&config_path, config_text).unwrap();
    let config = Config::load(&config_path, &BTreeMap::new()).unwrap();

    // A first key for the top level and for each tenant, each in its own keyring.
    let views =
        std::iter::once(config.clone()).chain(tenants.iter().map(|t| config.tenant(t).unwrap()));
    for view in views {
        let agent_sts::config::KeyStoreKind::File { dir } = &view.keys.store else {
            unreachable!("the benches keep file keyrings")
        };
        agent_sts::keys::rotate(
            &FileKeyStore::new(dir),
            view.tokens.algorithm,
            unix_now(),
            view.keys.publish_lead,
            view.tokens.max_ttl,
        )
        .await
        .unwrap();
    }
    let keys = FileKeyStore::new(d.join("keys"));
    let app = agent_sts::sts::build(&config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = app.serve(listener, None).await;
    });
    Sts { addr, keys, dir }
}

/// Sends one request on a fresh connection; the status, headers and whole body.
pub async fn fetch(
    addr: SocketAddr,
    request: hyper::Request<Full<Bytes>>,
) -> (StatusCode, HeaderMap, Bytes) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

/// Exchanges `subject_token` at the STS for an access token for `action`.
pub async fn exchange(sts: SocketAddr, subject_token: &str, action: &str) -> String {
    let request = hyper::Request::post("/token")
        .header(header::HOST, sts.to_string())
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(exchange_form(subject_token, action)))
        .unwrap();
    let (status, _, body) = fetch(sts, request).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "POST /token: {}",
        String::from_utf8_lossy(&body)
    );
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    answer["access_token"].as_str().unwrap().to_string()
}

// ---------------------------------------------------------------------------------
// Run settings shared by the load benches.

/// Measurement knobs, from `{PREFIX}_SECONDS` (measured seconds per scenario over all
/// rounds), `{PREFIX}_ROUNDS`, `{PREFIX}_WARMUP` (seconds before each slice) and
/// `{PREFIX}_CONNECTIONS`.
pub struct Knobs {
    pub seconds: f64,
    pub warmup: f64,
    pub connections: usize,
    pub rounds: usize,
}

impl Knobs {
    pub fn from_env(prefix: &str) -> Knobs {
        Knobs {
            seconds: env_or(&format!("{prefix}_SECONDS"), 8.0),
            warmup: env_or(&format!("{prefix}_WARMUP"), 1.0),
            connections: env_or(&format!("{prefix}_CONNECTIONS"), 64),
            rounds: env_or(&format!("{prefix}_ROUNDS"), 2usize).max(1),
        }
    }
}

/// The tokio runtimes, from `{PREFIX}_RUNTIME` (`shared`: servers and load generator
/// on one runtime of `{PREFIX}_SERVER_THREADS` workers; `split`: the load generator on
/// its own runtime of `{PREFIX}_CLIENT_THREADS` workers).
pub struct Runtimes {
    server: tokio::runtime::Runtime,
    client: Option<tokio::runtime::Runtime>,
    server_threads: usize,
    client_threads: usize,
}

impl Runtimes {
    pub fn from_env(prefix: &str) -> Runtimes {
        let cpus = std::thread::available_parallelism().map_or(2, |p| p.get());
        let name = format!("{prefix}_RUNTIME");
        let runtime: String = env_or(&name, "shared".to_string());
        let split = match runtime.as_str() {
            "shared" => false,
            "split" => true,
            other => panic!("{name}={other:?}: use shared or split"),
        };
        let server_threads = env_or(&format!("{prefix}_SERVER_THREADS"), cpus);
        let client_threads = env_or(&format!("{prefix}_CLIENT_THREADS"), cpus);
        let build = |threads: usize, name: &str| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name(name)
                .enable_all()
                .build()
                .unwrap()
        };
        Runtimes {
            server: build(server_threads, "server"),
            client: split.then(|| build(client_threads, "client")),
            server_threads,
            client_threads,
        }
    }

    /// Where the servers run.
    pub fn server(&self) -> &tokio::runtime::Runtime {
        &self.server
    }

    /// Where the load generator runs.
    pub fn client(&self) -> &tokio::runtime::Runtime {
        self.client.as_ref().unwrap_or(&self.server)
    }

    pub fn describe(&self) -> String {
        if self.client.is_some() {
            format!(
                "split: servers on {} workers, load generator on {}",
                self.server_threads, self.client_threads
            )
        } else {
            format!(
                "shared: servers and load generator on one runtime of {} workers",
                self.server_threads
            )
        }
    }

    pub fn shutdown(self) {
        if let Some(rt) = self.client {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
        self.server.shutdown_timeout(Duration::from_secs(1));
    }
}

// ---------------------------------------------------------------------------------
// The load generator.

enum Items {
    /// `POST` with these form bodies.
    Forms(Arc<Vec<Bytes>>),
    /// `GET` with these `Authorization` values.
    Authorizations(Arc<Vec<HeaderValue>>),
    /// `POST` with these form bodies, each with a `DPoP` header.
    FormsWithProofs(Arc<Vec<(Bytes, HeaderValue)>>),
    /// `POST` these form bodies, each to its own path (tenants' token endpoints).
    FormsAt(Arc<Vec<(String, Bytes)>>),
}

/// Where requests come from: each request takes the next item of a pool; past the end
/// of the pool it wraps around (counted, so a reused token shows).
pub struct Source {
    path: &'static str,
    items: Items,
    next: AtomicUsize,
}

impl Source {
    /// `POST path` with a form body, the next of `bodies` each time.
    pub fn post_form(path: &'static str, bodies: Arc<Vec<Bytes>>) -> Source {
        assert!(!bodies.is_empty());
        Source {
            path,
            items: Items::Forms(bodies),
            next: AtomicUsize::new(0),
        }
    }

    /// `GET path` with an `Authorization` header, the next of `values` each time.
    pub fn get_authorized(path: &'static str, values: Arc<Vec<HeaderValue>>) -> Source {
        assert!(!values.is_empty());
        Source {
            path,
            items: Items::Authorizations(values),
            next: AtomicUsize::new(0),
        }
    }

    /// `POST path` with a form body and a `DPoP` proof, the next pair each time.
    pub fn post_form_with_proofs(
        path: &'static str,
        requests: Arc<Vec<(Bytes, HeaderValue)>>,
    ) -> Source {
        assert!(!requests.is_empty());
        Source {
            path,
            items: Items::FormsWithProofs(requests),
            next: AtomicUsize::new(0),
        }
    }

    /// `POST` each form body to its own path, the next pair each time.
    pub fn post_forms_at(requests: Arc<Vec<(String, Bytes)>>) -> Source {
        assert!(!requests.is_empty());
        Source {
            path: "/",
            items: Items::FormsAt(requests),
            next: AtomicUsize::new(0),
        }
    }

    fn len(&self) -> usize {
        match &self.items {
            Items::FormsAt(v) => v.len(),
            Items::Forms(v) => v.len(),
            Items::Authorizations(v) => v.len(),
            Items::FormsWithProofs(v) => v.len(),
        }
    }

    /// The next request, for `host`.
    pub fn request(&self, host: &str) -> hyper::Request<Full<Bytes>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let builder = hyper::Request::builder().header(header::HOST, host);
        match &self.items {
            Items::Forms(bodies) => builder
                .method("POST")
                .uri(self.path)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Full::new(bodies[i % bodies.len()].clone())),
            Items::FormsAt(requests) => {
                let (path, body) = &requests[i % requests.len()];
                builder
                    .method("POST")
                    .uri(path.as_str())
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(Full::new(body.clone()))
            }
            Items::FormsWithProofs(requests) => {
                let (body, proof) = &requests[i % requests.len()];
                builder
                    .method("POST")
                    .uri(self.path)
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .header("dpop", proof.clone())
                    .body(Full::new(body.clone()))
            }
            Items::Authorizations(values) => builder
                .method("GET")
                .uri(self.path)
                .header(header::AUTHORIZATION, values[i % values.len()].clone())
                .body(Full::new(Bytes::new())),
        }
        .unwrap()
    }

    /// Requests that reused an item already sent.
    pub fn reused(&self) -> usize {
        self.next.load(Ordering::Relaxed).saturating_sub(self.len())
    }
}

#[derive(Default)]
pub struct ConnStats {
    /// Latencies (µs) of requests answered inside the measurement window.
    pub latencies: Vec<u32>,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

/// One keep-alive connection, sending back to back until `end`; counts what
/// completes in `[measure_from, end]`. A non-200 answer is an error.
async fn connection(
    addr: SocketAddr,
    source: Arc<Source>,
    measure_from: Instant,
    end: Instant,
) -> ConnStats {
    let mut stats = ConnStats::default();
    let host = addr.to_string();
    'reconnect: while Instant::now() < end {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        loop {
            let started = Instant::now();
            if started >= end {
                break 'reconnect;
            }
            let request = source.request(&host);
            let outcome = match sender.send_request(request).await {
                Ok(response) => {
                    let status = response.status();
                    match response.into_body().collect().await {
                        Ok(_) if status == StatusCode::OK => Ok(()),
                        Ok(body) => Err(format!(
                            "{status}: {}",
                            String::from_utf8_lossy(&body.to_bytes())
                        )),
                        Err(e) => Err(format!("reading the body: {e}")),
                    }
                }
                Err(e) => Err(format!("request: {e}")),
            };
            let done = Instant::now();
            let in_window = started >= measure_from && done <= end;
            match outcome {
                Ok(()) if in_window => {
                    stats.ok += 1;
                    let micros = done.duration_since(started).as_micros();
                    stats.latencies.push(micros.min(u32::MAX as u128) as u32);
                }
                Ok(()) => {}
                Err(e) => {
                    if in_window {
                        stats.errors += 1;
                    }
                    stats.first_error.get_or_insert(e);
                }
            }
            if sender.ready().await.is_err() {
                continue 'reconnect;
            }
        }
    }
    stats
}

/// One scenario: where it sends, over how many connections, and what it measured
/// over all its rounds.
pub struct Measured {
    pub name: String,
    pub addr: SocketAddr,
    pub connections: usize,
    pub source: Arc<Source>,
    pub stats: ConnStats,
    pub seconds: f64,
}

impl Measured {
    pub fn new(
        name: impl Into<String>,
        addr: SocketAddr,
        connections: usize,
        source: Arc<Source>,
    ) -> Measured {
        Measured {
            name: name.into(),
            addr,
            connections,
            source,
            stats: ConnStats::default(),
            seconds: 0.0,
        }
    }

    pub fn per_second(&self) -> f64 {
        self.stats.ok as f64 / self.seconds
    }

    /// The `p` quantile of latency, in µs (after [`run_rounds`], which sorts).
    pub fn percentile_micros(&self, p: f64) -> f64 {
        let l = &self.stats.latencies;
        if l.is_empty() {
            return f64::NAN;
        }
        let i = ((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1;
        f64::from(l[i])
    }

    /// The `p` quantile of latency, in ms.
    pub fn percentile(&self, p: f64) -> f64 {
        self.percentile_micros(p) / 1000.0
    }

    /// One slice: `self.connections` connections, a warm-up of `warmup` seconds on
    /// them, then `seconds` measured, added to what was measured before.
    async fn run_slice(&mut self, warmup: f64, seconds: f64) {
        let start = Instant::now();
        let measure_from = start + Duration::from_secs_f64(warmup);
        let end = measure_from + Duration::from_secs_f64(seconds);
        let tasks: Vec<_> = (0..self.connections)
            .map(|_| {
                tokio::spawn(connection(
                    self.addr,
                    self.source.clone(),
                    measure_from,
                    end,
                ))
            })
            .collect();
        for task in tasks {
            let s = task.await.unwrap();
            self.stats.latencies.extend(s.latencies);
            self.stats.ok += s.ok;
            self.stats.errors += s.errors;
            if self.stats.first_error.is_none() {
                self.stats.first_error = s.first_error;
            }
        }
        self.seconds += seconds;
    }
}

/// Runs the scenarios interleaved in `knobs.rounds` rounds (A, B, ..., A, B, ...; each
/// slice with its own warm-up on fresh connections) on `rt`, so that a drift in what
/// else the machine does touches all of them alike; each gets `knobs.seconds` measured
/// in all. Sorts the latencies at the end.
pub fn run_rounds(rt: &tokio::runtime::Runtime, runs: &mut [&mut Measured], knobs: &Knobs) {
    let slice = knobs.seconds / knobs.rounds as f64;
    for round in 1..=knobs.rounds {
        for m in runs.iter_mut() {
            rt.block_on(m.run_slice(knobs.warmup, slice));
            eprintln!(
                "  round {round}/{}: {}: {:.0} req/s so far",
                knobs.rounds,
                m.name,
                m.per_second()
            );
            // Let the servers drain before the next slice.
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    for m in runs.iter_mut() {
        m.stats.latencies.sort_unstable();
    }
}

/// The unit of the latency columns.
#[derive(Clone, Copy)]
pub enum Unit {
    Millis,
    Micros,
}

/// The results table: requests, req/s, p50, p99 and errors per scenario, then the
/// first error of each scenario that had one.
pub fn print_table(results: &[&Measured], unit: Unit) {
    let width = results
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(0)
        .max(56);
    let (p50, p99) = match unit {
        Unit::Millis => ("p50 ms", "p99 ms"),
        Unit::Micros => ("p50 µs", "p99 µs"),
    };
    println!(
        "{:<width$} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "scenario", "requests", "req/s", p50, p99, "errors"
    );
    for r in results {
        let (p50, p99) = match unit {
            Unit::Millis => (
                format!("{:.2}", r.percentile(0.50)),
                format!("{:.2}", r.percentile(0.99)),
            ),
            Unit::Micros => (
                format!("{:.0}", r.percentile_micros(0.50)),
                format!("{:.0}", r.percentile_micros(0.99)),
            ),
        };
        println!(
            "{:<width$} {:>9} {:>9.0} {:>9} {:>9} {:>7}",
            r.name,
            r.stats.ok,
            r.per_second(),
            p50,
            p99,
            r.stats.errors
        );
    }
    for r in results {
        if let Some(e) = &r.stats.first_error {
            println!("{}: first error: {e}", r.name);
        }
    }
}

/// `label = value x (target >= t x) PASS|MISS`.
pub fn ratio_line(label: &str, value: f64, target: f64) {
    let verdict = if value >= target { "PASS" } else { "MISS" };
    println!("{label} = {value:.2}x   (target >= {target:.1}x)   {verdict}");
}
