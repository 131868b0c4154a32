//! Load benchmark of `POST /token` over real HTTP: `cargo bench --bench load`.
//!
//! Everything runs in this process on 127.0.0.1:0, on the same cores:
//! - a fake workload issuer (SPIRE, ES256 fixture `keys/test/spire-es256.pem`) serving
//!   its JWKS, which the STS fetches like any `jwks_uri`;
//! - the real STS: configuration written to a temp dir, a key bootstrapped with
//!   [`agent_sts::keys::rotate`], [`agent_sts::sts::build`], served with
//!   [`App::serve`](agent_sts::sts::app::App::serve); no tracing subscriber (logging off),
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
//! - C: the STS, 64 subject tokens repeated (the verified-subject cache hits);
//! - D: as C, each request with a fresh DPoP proof (RFC 9449) from one of 64 agent
//!   keys, so the token is bound: what sender constraint costs at `/token` when the
//!   subject token is cached (one proof signature check more per request);
//! - E: as B (distinct subject tokens), each with a fresh DPoP proof.
//!
//! It prints requests, req/s, p50 and p99 latency and errors (non-200) for each, and
//! the ratios B/A (target ≥ 0.8), C/A (target ≥ 1.5), D/C and E/B (target ≥ 0.7). The
//! proofs of D and E are signed before the rounds, their `iat` a few seconds ahead: keep the
//! whole run within `tokens.dpop_max_age` (60 s) of that, or D counts stale proofs as
//! errors (`LOAD_SECONDS` ≤ 20 with the default rounds).
//!
//! Environment: `LOAD_SECONDS` (measured seconds per scenario, over all rounds; default
//! 8), `LOAD_ROUNDS` (default 2), `LOAD_WARMUP` (seconds before each slice, default 1),
//! `LOAD_CONNECTIONS` (default 64), `LOAD_POOL` (distinct subject tokens, default
//! 300000), `LOAD_RUNTIME` (`shared`: servers and load generator on one tokio runtime
//! of `LOAD_SERVER_THREADS` workers; `split`: the load generator on its own runtime of
//! `LOAD_CLIENT_THREADS` workers), `LOAD_SCENARIOS` (a subset such as `B` or `AC`, for
//! profiling one scenario), `LOAD_TRACES` (`1`: every span exported over OTLP/HTTP to
//! a discarding collector in this process, as `[telemetry] otlp_endpoint` does; what
//! traces cost), `LOAD_DPOP_ALG` (`EdDSA`, the default, as the Python
//! client signs, or `ES256`: the agents' proof keys in D and E).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use agent_sts::identity::unix_now;
use agent_sts::keys::KeyStore;
use agent_sts::keys::signing_key::SigningAlgorithm;
use agent_sts::keys::signing_key::SigningKey;
use agent_sts_testkit::{GRANT, JWT_TYPE};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::{
    AccessClaims, Knobs, Measured, Runtimes, SPIRE_ISSUER, STS_ISSUER, Source, Unit, env_or,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;
use serde_json::json;

const ACTION: &str = "github.issues.create";
const AUDIENCE: &str = "https://github-shim.internal";
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

/// Run settings, from the environment (the shared ones in [`Knobs`] and [`Runtimes`]).
struct Settings {
    knobs: Knobs,
    pool: usize,
    scenarios: String,
    /// The proofs' algorithm in D and E: `ES256` or `EdDSA`.
    dpop_alg: String,
}

impl Settings {
    fn from_env() -> Settings {
        Settings {
            knobs: Knobs::from_env("LOAD"),
            pool: env_or("LOAD_POOL", 300_000),
            scenarios: env_or("LOAD_SCENARIOS", "ABCDE".to_string()).to_ascii_uppercase(),
            dpop_alg: match env_or("LOAD_DPOP_ALG", "EdDSA".to_string()).as_str() {
                "EdDSA" => "EdDSA".to_string(),
                "ES256" => "ES256".to_string(),
                other => panic!("LOAD_DPOP_ALG must be ES256 or EdDSA, not {other}"),
            },
        }
    }
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
    let client_id = format!("spire:{}", subject.claims.sub);
    let claims = AccessClaims {
        iss: STS_ISSUER,
        sub: &subject.claims.sub,
        aud: AUDIENCE,
        exp,
        iat: now,
        nbf: now,
        jti: common::jti(),
        client_id: &client_id,
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
    let issuer = common::spawn_issuer(issuer_key).await;
    let sts = common::start_sts(&issuer, SCOPES, common::SECRETS).await;

    // The ceiling signs with the STS's own key and verifies with the issuer's JWK.
    let (ring, _) = sts.keys.load().await.unwrap();
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
    let ceiling = common::spawn_router(
        axum::Router::new()
            .route("/token", post(ceiling_token))
            .with_state(ceiling),
    )
    .await;
    Servers {
        sts: sts.addr,
        ceiling,
        _dir: sts.dir,
    }
}

/// `n` request bodies, each with a distinct JWT-SVID, signed on every core.
fn bodies(key: &SigningKey, n: usize, tag: &str) -> Vec<Bytes> {
    let now = unix_now();
    common::on_every_core(n, |i| {
        common::exchange_form(&common::svid(key, tag, i, now), ACTION)
    })
}

/// `n` token requests (the bodies of `bodies`, in turn), each with its own DPoP proof
/// for the STS's token endpoint from one of 64 agent keys (`alg` ES256 or EdDSA), `iat`
/// 4 s ahead.
fn bound_requests(bodies: &[Bytes], n: usize, alg: &str) -> Vec<(Bytes, axum::http::HeaderValue)> {
    let keys: Vec<agent_sts_testkit::DpopKey> = (0..64)
        .map(|_| match alg {
            "EdDSA" => agent_sts_testkit::DpopKey::ed25519(),
            _ => agent_sts_testkit::DpopKey::new(),
        })
        .collect();
    let url = format!("{STS_ISSUER}/token");
    let iat = unix_now() + 4;
    common::on_every_core(n, |i| {
        let key = &keys[i % keys.len()];
        let mut claims = key.claims("POST", &url, None, None);
        claims["iat"] = serde_json::json!(iat);
        let proof = key.sign(&key.header(), &claims);
        (
            bodies[i % bodies.len()].clone(),
            axum::http::HeaderValue::from_str(&proof).unwrap(),
        )
    })
}

fn main() {
    let settings = Settings::from_env();
    let knobs = &settings.knobs;
    let runtimes = Runtimes::from_env("LOAD");
    let cpus = std::thread::available_parallelism().map_or(0, |p| p.get());
    println!(
        "agent-sts load benchmark: {cpus} CPUs; {} connections; {} s per scenario in {} rounds, each after a {} s warm-up; runtime {}",
        knobs.connections,
        knobs.seconds,
        knobs.rounds,
        knobs.warmup,
        runtimes.describe()
    );

    let issuer_key = common::spire_key();
    let servers = runtimes.server().block_on(start_servers(&issuer_key));
    // With LOAD_TRACES=1 every span is exported, as with `[telemetry] otlp_endpoint`,
    // to a collector in this process that accepts and discards them.
    let traces = (env_or("LOAD_TRACES", 0u8) == 1).then(|| {
        runtimes.server().block_on(async {
            let collector = common::spawn_router(axum::Router::new().route(
                "/v1/traces",
                post(|| async { ([(header::CONTENT_TYPE, "application/x-protobuf")], "") }),
            ))
            .await;
            let settings = agent_sts::telemetry::traces::Settings {
                endpoint: format!("http://{collector}").parse().unwrap(),
                service_name: "agent-sts".into(),
                sample_ratio: 1.0,
                max_queue: agent_sts::telemetry::traces::DEFAULT_MAX_QUEUE,
                export_timeout: agent_sts::telemetry::traces::DEFAULT_EXPORT_TIMEOUT,
                export_interval: agent_sts::telemetry::traces::DEFAULT_EXPORT_INTERVAL,
            };
            let provider = agent_sts::telemetry::traces::provider(&settings).unwrap();
            agent_sts::telemetry::logs::install(
                tracing_subscriber::EnvFilter::new("off"),
                agent_sts::telemetry::logs::LogFormat::Text,
                Some(&provider),
            );
            println!("traces: every span exported to a discarding collector at {collector}");
            provider
        })
    });

    let started = Instant::now();
    let pool = Arc::new(bodies(&issuer_key, settings.pool, "pool"));
    let repeated = Arc::new(bodies(&issuer_key, REPEATED, "repeated"));
    println!(
        "signed {} distinct ES256 subject tokens (+{REPEATED} for C) in {:.1?}",
        pool.len(),
        started.elapsed()
    );

    let with_proofs = |id: char, bodies: &[Bytes]| {
        settings.scenarios.contains(id).then(|| {
            let started = Instant::now();
            let proofs = Arc::new(bound_requests(
                bodies,
                settings.pool / 2,
                &settings.dpop_alg,
            ));
            println!(
                "signed {} {} DPoP proofs for {id} in {:.1?}",
                proofs.len(),
                settings.dpop_alg,
                started.elapsed()
            );
            proofs
        })
    };
    let proofs_d = with_proofs('D', &repeated);
    let proofs_e = with_proofs('E', &pool[pool.len() / 2..]);

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
    let mut results: BTreeMap<char, Measured> = scenarios
        .into_iter()
        .filter(|s| settings.scenarios.contains(s.0))
        .map(|(id, name, addr, bodies)| {
            let source = Arc::new(Source::post_form("/token", bodies.clone()));
            (id, Measured::new(name, addr, knobs.connections, source))
        })
        .collect();
    for (id, name, proofs) in [
        (
            'D',
            "D STS, as C with a fresh DPoP proof each (bound tokens)",
            proofs_d,
        ),
        (
            'E',
            "E STS, as B with a fresh DPoP proof each (bound tokens)",
            proofs_e,
        ),
    ] {
        if let Some(proofs) = proofs {
            let source = Arc::new(Source::post_form_with_proofs("/token", proofs));
            results.insert(
                id,
                Measured::new(name, servers.sts, knobs.connections, source),
            );
        }
    }
    let mut runs: Vec<&mut Measured> = results.values_mut().collect();
    common::run_rounds(runtimes.client(), &mut runs, knobs);

    println!();
    let rows: Vec<&Measured> = results.values().collect();
    common::print_table(&rows, Unit::Millis);
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
            common::ratio_line(
                "B/A (STS, cache misses / ceiling)",
                b.per_second() / a.per_second(),
                0.8,
            );
        }
        if let Some(c) = results.get(&'C') {
            common::ratio_line(
                "C/A (STS, cache hits / ceiling)  ",
                c.per_second() / a.per_second(),
                1.5,
            );
        }
    }
    if let (Some(c), Some(d)) = (results.get(&'C'), results.get(&'D')) {
        common::ratio_line(
            "D/C (DPoP / bearer, cache hits)  ",
            d.per_second() / c.per_second(),
            0.7,
        );
    }
    if let (Some(b), Some(e)) = (results.get(&'B'), results.get(&'E')) {
        common::ratio_line(
            "E/B (DPoP / bearer, cache misses)",
            e.per_second() / b.per_second(),
            0.7,
        );
    }
    if traces.is_some() {
        use agent_sts::telemetry::traces::{EXPORT_FAILURES, SPANS_DROPPED};
        println!(
            "traces: {} spans dropped (queue full), {} exports failed",
            SPANS_DROPPED.get(),
            EXPORT_FAILURES.get()
        );
    }
    runtimes.shutdown();
    drop(servers);
}
