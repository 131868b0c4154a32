//! Load benchmark of `POST /token` over real HTTP: `cargo bench --bench load`.
//!
//! Everything runs in this process on 127.0.0.1:0, on the same cores:
//! - a fake workload issuer (SPIRE, ES256 fixture `keys/test/spire-es256.pem`) serving
//!   its JWKS, which the STS fetches like any `jwks_uri`;
//! - the real STS: configuration written to a temp dir, a key bootstrapped with
//!   [`agent_sts::keys::rotate`], [`agent_sts::app::build`], served with
//!   [`App::serve`](agent_sts::app::App::serve); no tracing subscriber (logging off),
//!   the audit log and the file secret store in the temp dir, a rate limit too high to
//!   interfere, and one catalogue action (with a credential) granted to the subjects;
//! - a CEILING: a bare axum `POST /token` that reads the form, does only
//!   `jsonwebtoken::decode` of the subject token (ES256, key from the same JWKS) and
//!   `jsonwebtoken::encode` of a small claims set with the STS's own ES256 key, and
//!   answers JSON. It is what the STS would cost with no policy, no audit log, no
//!   metrics and no caches.
//!
//! A hyper HTTP/1.1 client keeps `LOAD_CONNECTIONS` keep-alive connections busy (each
//! sends its next request as soon as the previous answer is read) for a warm-up, then
//! for the measured time, in three scenarios, interleaved in `LOAD_ROUNDS` rounds (A, B,
//! C, A, B, C, ...; each slice with its own warm-up on fresh connections) so that a
//! change in what else the machine is doing touches all three alike:
//! - A: the ceiling, each request with a distinct subject token from a pool signed up
//!   front;
//! - B: the STS, each request with a distinct subject token (no verified-subject cache
//!   hits);
//! - C: the STS, 64 subject tokens repeated (the verified-subject cache hits).
//!
//! It prints requests, req/s, p50 and p99 latency and errors (non-200) for each, and
//! the ratios B/A (target ≥ 0.8) and C/A (target ≥ 1.5).
//!
//! Environment: `LOAD_SECONDS` (measured seconds per scenario, over all rounds; default
//! 8), `LOAD_ROUNDS` (default 2), `LOAD_WARMUP` (seconds before each slice, default 1),
//! `LOAD_CONNECTIONS` (default 64), `LOAD_POOL` (distinct subject tokens, default
//! 300000), `LOAD_RUNTIME` (`shared`: servers and load generator on one tokio runtime
//! of `LOAD_SERVER_THREADS` workers; `split`: the load generator on its own runtime of
//! `LOAD_CLIENT_THREADS` workers), `LOAD_SCENARIOS` (a subset such as `B` or `AC`, for
//! profiling one scenario).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agent_sts::config::{Config, SigningAlgorithm};
use agent_sts::keys::{FileKeyStore, KeyStore};
use agent_sts::secret::PrivateKeyPem;
use agent_sts::signing_key::SigningKey;
use agent_sts::trust::unix_now;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::json;

const STS_ISSUER: &str = "https://sts.bench.example";
const SPIRE_ISSUER: &str = "https://spire.example.org";
const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const ACTION: &str = "github.issues.create";
const AUDIENCE: &str = "https://github-shim.internal";
/// Distinct agent identities the subject tokens are for (each token is distinct by
/// its `jti`; identities repeat, as workloads do).
const AGENTS: usize = 64;
/// Subject tokens in scenario C.
const REPEATED: usize = 64;

const SCOPES: &str = r#"
[[action]]
name = "github.issues.create"
description = "Open an issue in one repository"
audience = "https://github-shim.internal"
ttl = "5m"
agents = ["spiffe://example.org/agent/*"]
delegation = "optional"
subjects = ["spiffe://example.org/user/*"]
credential = "integrations/github"

[action.request]
method = "POST"
path = "/repos/{owner}/{repo}/issues"
"#;

const SECRETS: &str = r#"
[secret."integrations/github"]
header = "Authorization"
value = "Bearer ghp_bench0000000000000000000000000000000000"
"#;

/// Run settings, from the environment.
struct Settings {
    seconds: f64,
    warmup: f64,
    connections: usize,
    pool: usize,
    split: bool,
    rounds: usize,
    server_threads: usize,
    client_threads: usize,
    scenarios: String,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} does not parse")),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Settings {
        let cpus = std::thread::available_parallelism().map_or(2, |p| p.get());
        let runtime: String = env_or("LOAD_RUNTIME", "shared".to_string());
        Settings {
            seconds: env_or("LOAD_SECONDS", 8.0),
            warmup: env_or("LOAD_WARMUP", 1.0),
            connections: env_or("LOAD_CONNECTIONS", 64),
            pool: env_or("LOAD_POOL", 300_000),
            split: match runtime.as_str() {
                "shared" => false,
                "split" => true,
                other => panic!("LOAD_RUNTIME={other:?}: use shared or split"),
            },
            rounds: env_or("LOAD_ROUNDS", 2usize).max(1),
            server_threads: env_or("LOAD_SERVER_THREADS", cpus),
            client_threads: env_or("LOAD_CLIENT_THREADS", cpus),
            scenarios: env_or("LOAD_SCENARIOS", "ABC".to_string()).to_ascii_uppercase(),
        }
    }
}

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("keys/test")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A fresh 128-bit `jti`.
fn jti() -> String {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    b64(&bytes)
}

/// Starts `router` on 127.0.0.1:0 on the current runtime; returns its address.
async fn spawn_router(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    addr
}

// ---------------------------------------------------------------------------------
// The ceiling: decode + encode and nothing else.

struct Ceiling {
    decoding: DecodingKey,
    validation: Validation,
    encoding: EncodingKey,
    header: Header,
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: String,
    subject_token: String,
    subject_token_type: String,
    scope: String,
}

#[derive(Deserialize)]
struct SubjectClaims {
    sub: String,
    exp: u64,
}

#[derive(Serialize)]
struct AccessClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
    iat: u64,
    nbf: u64,
    jti: String,
    client_id: String,
    scope: &'a str,
}

async fn ceiling_token(
    State(c): State<Arc<Ceiling>>,
    axum::Form(form): axum::Form<TokenForm>,
) -> Response {
    if form.grant_type != GRANT || form.subject_token_type != JWT_TYPE {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let Ok(subject) =
        jsonwebtoken::decode::<SubjectClaims>(&form.subject_token, &c.decoding, &c.validation)
    else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let now = unix_now();
    let exp = (now + 300).min(subject.claims.exp);
    let claims = AccessClaims {
        iss: STS_ISSUER,
        sub: &subject.claims.sub,
        aud: AUDIENCE,
        exp,
        iat: now,
        nbf: now,
        jti: jti(),
        client_id: format!("spire:{}", subject.claims.sub),
        scope: &form.scope,
    };
    let Ok(token) = jsonwebtoken::encode(&c.header, &claims, &c.encoding) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let body = json!({
        "access_token": token,
        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "token_type": "Bearer",
        "expires_in": exp - now,
        "scope": form.scope,
    });
    (
        StatusCode::OK,
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        axum::Json(body),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------
// Setup.

struct Servers {
    sts: SocketAddr,
    ceiling: SocketAddr,
    _dir: tempfile::TempDir,
}

/// Starts the issuer, the STS and the ceiling on the current runtime.
async fn start_servers(issuer_key: &SigningKey) -> Servers {
    let jwks = json!({ "keys": [issuer_key.public_jwk] });
    let issuer_router = {
        let jwks = jwks.clone();
        axum::Router::new().route(
            "/jwks.json",
            get(move || {
                let jwks = jwks.clone();
                async move { axum::Json(jwks) }
            }),
        )
    };
    let issuer = spawn_router(issuer_router).await;

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("scopes")).unwrap();
    std::fs::write(d.join("scopes/bench.toml"), SCOPES).unwrap();
    std::fs::write(d.join("secrets.toml"), SECRETS).unwrap();
    let config_text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
issuer = "{STS_ISSUER}"
scopes_dir = "{dir}/scopes"

[tokens]
max_ttl = "15m"
algorithm = "ES256"

[keys]
store = "file"
dir = "{dir}/keys"
refresh_interval = "30s"
publish_lead = "10m"
jwks_max_age = "5m"

[secrets]
store = "file"
file = "{dir}/secrets.toml"

[audit]
path = "{dir}/audit.log"

[limits]
rate_per_second = 1000000
rate_burst = 1000000

[[trust]]
name = "spire"
issuer = "{SPIRE_ISSUER}"
jwks_uri = "http://{issuer}/jwks.json"
algorithms = ["ES256"]
spiffe_trust_domains = ["example.org"]
"#,
        dir = d.display()
    );
    let config_path = d.join("agent-sts.toml");
    std::fs::write(&config_path, config_text).unwrap();
    let config = Config::load(&config_path, &BTreeMap::new()).unwrap();

    let store = FileKeyStore::new(d.join("keys"));
    agent_sts::keys::rotate(
        &store,
        config.tokens.algorithm,
        unix_now(),
        config.keys.publish_lead,
        config.tokens.max_ttl,
    )
    .await
    .unwrap();
    let app = agent_sts::app::build(&config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sts = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = app.serve(listener, None).await;
    });

    // The ceiling signs with the STS's own key and verifies with the issuer's JWK.
    let (ring, _) = store.load().await.unwrap();
    let sts_key = &ring.keys[0];
    assert_eq!(sts_key.alg, SigningAlgorithm::ES256);
    let jwk: jsonwebtoken::jwk::Jwk =
        serde_json::from_value(issuer_key.public_jwk.clone()).unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[STS_ISSUER]);
    validation.set_issuer(&[SPIRE_ISSUER]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(sts_key.kid.clone());
    header.typ = Some("at+jwt".into());
    let ceiling = Arc::new(Ceiling {
        decoding: DecodingKey::from_jwk(&jwk).unwrap(),
        validation,
        encoding: EncodingKey::from_ec_pem(sts_key.private_key.expose().as_bytes()).unwrap(),
        header,
    });
    let ceiling = spawn_router(
        axum::Router::new()
            .route("/token", post(ceiling_token))
            .with_state(ceiling),
    )
    .await;
    Servers {
        sts,
        ceiling,
        _dir: dir,
    }
}

/// A form-encoded exchange request for `token`.
fn form(token: &str) -> Bytes {
    let mut s = form_urlencoded::Serializer::new(String::new());
    s.append_pair("grant_type", GRANT);
    s.append_pair("subject_token", token);
    s.append_pair("subject_token_type", JWT_TYPE);
    s.append_pair("scope", ACTION);
    Bytes::from(s.finish())
}

/// `n` request bodies, each with a distinct JWT-SVID, signed on every core.
fn bodies(key: &SigningKey, n: usize, tag: &str) -> Vec<Bytes> {
    let now = unix_now();
    let header = json!({"alg": "ES256", "kid": key.kid, "typ": "JWT"}).to_string();
    let make = |i: usize| {
        let claims = json!({
            "sub": format!("spiffe://example.org/agent/worker-{}", i % AGENTS),
            "aud": [STS_ISSUER],
            "exp": now + 3600,
            "iat": now,
            "iss": SPIRE_ISSUER,
            "jti": format!("{tag}-{i}"),
        });
        let token = key
            .sign_compact(header.as_bytes(), claims.to_string().as_bytes())
            .unwrap();
        form(&token)
    };
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

// ---------------------------------------------------------------------------------
// The load generator.

/// Where request bodies come from: each request takes the next one; past the end of
/// the pool it wraps around (counted, so a reused token in scenario B shows).
struct Source {
    bodies: Arc<Vec<Bytes>>,
    next: AtomicUsize,
}

impl Source {
    fn new(bodies: Arc<Vec<Bytes>>) -> Source {
        Source {
            bodies,
            next: AtomicUsize::new(0),
        }
    }

    fn take(&self) -> Bytes {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.bodies[i % self.bodies.len()].clone()
    }

    /// Requests that reused a body already sent.
    fn reused(&self) -> usize {
        self.next
            .load(Ordering::Relaxed)
            .saturating_sub(self.bodies.len())
    }
}

#[derive(Default)]
struct ConnStats {
    /// Latencies (µs) of requests answered inside the measurement window.
    latencies: Vec<u32>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

/// One keep-alive connection, sending back to back until `end`; counts what
/// completes in `[measure_from, end]`.
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
            let request = hyper::Request::post("/token")
                .header(header::HOST, &host)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Full::new(source.take()))
                .unwrap();
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

/// What one scenario measured, over all its rounds.
struct Measured {
    name: &'static str,
    source: Arc<Source>,
    stats: ConnStats,
    seconds: f64,
}

impl Measured {
    fn per_second(&self) -> f64 {
        self.stats.ok as f64 / self.seconds
    }

    /// The `p` quantile of latency, in ms (latencies must be sorted).
    fn percentile(&self, p: f64) -> f64 {
        let l = &self.stats.latencies;
        if l.is_empty() {
            return f64::NAN;
        }
        let i = ((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1;
        f64::from(l[i]) / 1000.0
    }
}

/// One slice of a scenario: `settings.connections` connections, a warm-up, then
/// `seconds` measured; adds what it measured to `into`.
async fn run_slice(addr: SocketAddr, into: &mut Measured, settings: &Settings, seconds: f64) {
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(settings.warmup);
    let end = measure_from + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..settings.connections)
        .map(|_| tokio::spawn(connection(addr, into.source.clone(), measure_from, end)))
        .collect();
    for task in tasks {
        let s = task.await.unwrap();
        into.stats.latencies.extend(s.latencies);
        into.stats.ok += s.ok;
        into.stats.errors += s.errors;
        if into.stats.first_error.is_none() {
            into.stats.first_error = s.first_error;
        }
    }
    into.seconds += seconds;
}

fn ratio_line(label: &str, value: f64, target: f64) {
    let verdict = if value >= target { "PASS" } else { "MISS" };
    println!("{label} = {value:.2}x   (target >= {target:.1}x)   {verdict}");
}

fn main() {
    let settings = Settings::from_env();
    let cpus = std::thread::available_parallelism().map_or(0, |p| p.get());
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.server_threads)
        .thread_name("server")
        .enable_all()
        .build()
        .unwrap();
    let client_rt = settings.split.then(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(settings.client_threads)
            .thread_name("client")
            .enable_all()
            .build()
            .unwrap()
    });
    let runtime = if settings.split {
        format!(
            "split: servers on {} workers, load generator on {}",
            settings.server_threads, settings.client_threads
        )
    } else {
        format!(
            "shared: servers and load generator on one runtime of {} workers",
            settings.server_threads
        )
    };
    println!(
        "agent-sts load benchmark: {cpus} CPUs; {} connections; {} s per scenario in {} rounds, each after a {} s warm-up; runtime {runtime}",
        settings.connections, settings.seconds, settings.rounds, settings.warmup
    );

    let issuer_key = SigningKey::from_pem(
        SigningAlgorithm::ES256,
        &PrivateKeyPem::new(fixture("spire-es256.pem")),
    )
    .unwrap();
    let servers = server_rt.block_on(start_servers(&issuer_key));

    let started = Instant::now();
    let pool = Arc::new(bodies(&issuer_key, settings.pool, "pool"));
    let repeated = Arc::new(bodies(&issuer_key, REPEATED, "repeated"));
    println!(
        "signed {} distinct ES256 subject tokens (+{REPEATED} for C) in {:.1?}",
        pool.len(),
        started.elapsed()
    );

    let scenarios: [(char, &'static str, SocketAddr, &Arc<Vec<Bytes>>); 3] = [
        (
            'A',
            "A ceiling: jsonwebtoken decode+encode, distinct tokens",
            servers.ceiling,
            &pool,
        ),
        (
            'B',
            "B STS, distinct subject tokens (cache misses)",
            servers.sts,
            &pool,
        ),
        (
            'C',
            "C STS, 64 repeated subject tokens (cache hits)",
            servers.sts,
            &repeated,
        ),
    ];
    let client = client_rt.as_ref().unwrap_or(&server_rt);
    let mut runs: BTreeMap<char, (SocketAddr, Measured)> = scenarios
        .into_iter()
        .filter(|s| settings.scenarios.contains(s.0))
        .map(|(id, name, addr, bodies)| {
            let m = Measured {
                name,
                source: Arc::new(Source::new(bodies.clone())),
                stats: ConnStats::default(),
                seconds: 0.0,
            };
            (id, (addr, m))
        })
        .collect();
    // Interleave the scenarios in rounds, so a drift in what else the machine does
    // touches all of them alike.
    let slice = settings.seconds / settings.rounds as f64;
    for round in 1..=settings.rounds {
        for (addr, m) in runs.values_mut() {
            client.block_on(run_slice(*addr, m, &settings, slice));
            eprintln!(
                "  round {round}/{}: {}: {:.0} req/s so far",
                settings.rounds,
                m.name,
                m.per_second()
            );
            // Let the servers drain before the next slice.
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let mut results: BTreeMap<char, Measured> =
        runs.into_iter().map(|(id, (_, m))| (id, m)).collect();
    for m in results.values_mut() {
        m.stats.latencies.sort_unstable();
    }

    println!();
    println!(
        "{:<56} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "scenario", "requests", "req/s", "p50 ms", "p99 ms", "errors"
    );
    for r in results.values() {
        println!(
            "{:<56} {:>9} {:>9.0} {:>9.2} {:>9.2} {:>7}",
            r.name,
            r.stats.ok,
            r.per_second(),
            r.percentile(0.50),
            r.percentile(0.99),
            r.stats.errors
        );
    }
    for r in results.values() {
        if let Some(e) = &r.stats.first_error {
            println!("{}: first error: {e}", r.name);
        }
    }
    if let Some(b) = results.get(&'B')
        && b.source.reused() > 0
    {
        println!(
            "note: the pool ran out; B reused {} tokens (cache hits); raise LOAD_POOL",
            b.source.reused()
        );
    }
    println!();
    if let Some(a) = results.get(&'A') {
        if let Some(b) = results.get(&'B') {
            ratio_line(
                "B/A (STS, cache misses / ceiling)",
                b.per_second() / a.per_second(),
                0.8,
            );
        }
        if let Some(c) = results.get(&'C') {
            ratio_line(
                "C/A (STS, cache hits / ceiling)  ",
                c.per_second() / a.per_second(),
                1.5,
            );
        }
    }
    if let Some(rt) = client_rt {
        rt.shutdown_timeout(Duration::from_secs(1));
    }
    server_rt.shutdown_timeout(Duration::from_secs(1));
    drop(servers);
}
