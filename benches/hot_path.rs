//! Criterion benchmarks of the per-request hot path of `POST /token`, one part at a
//! time, on one core: run with `cargo bench --bench hot_path`.
//!
//! - `verify`: [`TrustStore::verify`] of a subject token that is not in the
//!   verified-subject cache (ES256 JWT-SVID and RS256 Kubernetes shapes), and of one
//!   that is. The cache is keyed by the token's SHA-256, so an uncached measurement
//!   needs a distinct token per iteration: a pool is signed up front, and when an
//!   iteration count outruns it a fresh store (empty cache, JWKS loaded before the
//!   clock starts) takes over. Next to it, the signature check alone: through
//!   `jsonwebtoken::crypto::verify` as `trust.rs` calls it (the public key is re-read
//!   on every call), and through aws-lc-rs with the key parsed once, to show how much
//!   of `verify` is the crypto itself.
//! - `mint`: [`mint::mint`] with a pre-parsed ES256 and EdDSA key, against
//!   `jsonwebtoken::encode` of the same header and claims with an `EncodingKey`, which
//!   re-parses the PKCS#8 key on every call.
//! - `policy`: [`Catalogue::get`] + [`Action::permits_agent`](agent_sts::catalogue::Action::permits_agent)
//!   over the repository's own `scopes/`, granted and refused.
//! - `canonicalize`: the shim's [`request_target::canonicalize`] of a typical API path
//!   and of a percent-encoded one (escapes decoded and upper-cased), per request.
//! - `scrub`: [`Scrubber::new`] for a 48-byte credential (once per credential change),
//!   and [`Scrubber::scrub`] of a 1 KiB, 16 KiB and 256 KiB JSON response body without
//!   the credential (the common case: one scan, no copy) and with it once (a copy).
//!
//! JWKS come from `jwks_file`s in a temp dir, so no server runs inside criterion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_sts::catalogue::{Catalogue, Principal};
use agent_sts::config::Config;
use agent_sts::identity::{TrustStore, unix_now};
use agent_sts::keys::LoadedKey;
use agent_sts::keys::signing_key::SigningAlgorithm;
use agent_sts::keys::signing_key::SigningKey;
use agent_sts::secret::SubjectToken;
use agent_sts::shim::request_target;
use agent_sts::shim::scrub::Scrubber;
use agent_sts::sts::mint::{self, Grant};
use agent_sts::telemetry::metrics::Metrics;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self as lc, KeyPair, RsaKeyPair};
use axum::body::Bytes;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{AccessClaims, SPIRE_ISSUER, STS_ISSUER, b64, fixture};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const K8S_ISSUER: &str = "https://kubernetes.default.svc";

/// Distinct ES256 subject tokens signed up front.
const ES256_POOL: usize = 20_000;
/// Distinct RS256 subject tokens: RSA signing is slow, and the store is replaced
/// whenever the pool runs out, so a smaller pool suffices.
const RS256_POOL: usize = 2_000;

/// The fake workload issuers: SPIRE (ES256, fixture `spire-es256.pem`) and a
/// Kubernetes cluster (RS256, fixture `k8s-rs256.pem`), with their JWKS on disk and a
/// configuration that trusts them.
struct Issuers {
    _dir: tempfile::TempDir,
    config: Config,
    spire: SigningKey,
    k8s: RsaKeyPair,
    k8s_kid: String,
    k8s_jwk: jsonwebtoken::jwk::Jwk,
}

impl Issuers {
    fn new() -> Issuers {
        let dir = tempfile::tempdir().unwrap();
        let spire = common::spire_key();
        let k8s_pem = fixture("k8s-rs256.pem");
        let k8s = RsaKeyPair::from_pkcs8(pem::parse(&k8s_pem).unwrap().contents()).unwrap();
        let k8s_kid = "k8s-bench-1".to_string();
        let mut k8s_jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(
            &EncodingKey::from_rsa_pem(k8s_pem.as_bytes()).unwrap(),
            Algorithm::RS256,
        )
        .unwrap();
        k8s_jwk.common.key_id = Some(k8s_kid.clone());

        let spire_jwks = dir.path().join("spire-jwks.json");
        let k8s_jwks = dir.path().join("k8s-jwks.json");
        std::fs::write(
            &spire_jwks,
            json!({ "keys": [spire.public_jwk] }).to_string(),
        )
        .unwrap();
        std::fs::write(&k8s_jwks, json!({ "keys": [&k8s_jwk] }).to_string()).unwrap();
        let text = format!(
            r#"
[server]
issuer = "{STS_ISSUER}"

[[trust]]
name = "spire"
issuer = "{SPIRE_ISSUER}"
jwks_file = "{spire_jwks}"
algorithms = ["ES256"]
spiffe_trust_domains = ["example.org"]

[[trust]]
name = "k8s-prod"
issuer = "{K8S_ISSUER}"
jwks_file = "{k8s_jwks}"
algorithms = ["RS256"]
"#,
            spire_jwks = spire_jwks.display(),
            k8s_jwks = k8s_jwks.display(),
        );
        let config = Config::from_toml(&text, "<bench>", &BTreeMap::new()).unwrap();
        Issuers {
            _dir: dir,
            config,
            spire,
            k8s,
            k8s_kid,
            k8s_jwk,
        }
    }

    /// A store with an empty verified-subject cache and its JWKS not yet read.
    fn store(&self) -> TrustStore {
        TrustStore::new(
            &self.config.trusts,
            &self.config.server.issuer,
            &self.config.limits.verification(),
            Arc::new(Metrics::new()),
        )
        .unwrap()
    }

    /// A SPIFFE JWT-SVID (the real shape), made distinct by `n`.
    fn svid(&self, n: usize) -> SubjectToken {
        SubjectToken::new(common::svid(&self.spire, "svid", n, unix_now()))
    }

    /// A projected Kubernetes service-account token (the real shape), distinct by `n`.
    fn k8s_token(&self, n: usize) -> SubjectToken {
        let now = unix_now();
        let header = json!({"alg": "RS256", "kid": self.k8s_kid, "typ": "JWT"});
        let sa = format!("worker-{}", n % 64);
        let claims = json!({
            "aud": [STS_ISSUER],
            "exp": now + 3600,
            "iat": now,
            "iss": K8S_ISSUER,
            "jti": format!("k8s-{n}"),
            "kubernetes.io": {
                "namespace": "agents",
                "node": {"name": "node-1", "uid": "8d5e0b53-2a7e-4c1b-9f6e-1a2b3c4d5e6f"},
                "pod": {"name": format!("{sa}-7d9f8c6b5-x2x4z"), "uid": "0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d"},
                "serviceaccount": {"name": sa, "uid": "6f5e4d3c-2b1a-0f9e-8d7c-6b5a4f3e2d1c"},
                "warnafter": now + 3000
            },
            "nbf": now,
            "sub": format!("system:serviceaccount:agents:{sa}"),
        });
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let mut signature = vec![0u8; self.k8s.public_modulus_len()];
        self.k8s
            .sign(
                &lc::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut signature,
            )
            .unwrap();
        SubjectToken::new(format!("{input}.{}", b64(&signature)))
    }
}

/// Times `iters` verifications, each of a token the store has not seen.
fn verify_uncached(
    rt: &tokio::runtime::Runtime,
    issuers: &Issuers,
    primer: &SubjectToken,
    tokens: &[SubjectToken],
    iters: u64,
) -> Duration {
    rt.block_on(async {
        let mut total = Duration::ZERO;
        let mut done = 0u64;
        while done < iters {
            let store = issuers.store();
            // Loads the JWKS before the clock starts.
            store.verify(primer, unix_now()).await.unwrap();
            let n = (iters - done).min(tokens.len() as u64) as usize;
            let now = unix_now();
            let start = Instant::now();
            for token in &tokens[..n] {
                black_box(store.verify(token, now).await.unwrap());
            }
            total += start.elapsed();
            done += n as u64;
        }
        total
    })
}

fn bench_verify(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let issuers = Issuers::new();
    let started = Instant::now();
    let es256 = common::on_every_core(ES256_POOL + 1, |n| issuers.svid(n));
    let rs256 = common::on_every_core(RS256_POOL + 1, |n| issuers.k8s_token(n));
    eprintln!(
        "signed {} ES256 and {} RS256 subject tokens in {:.1?}",
        es256.len(),
        rs256.len(),
        started.elapsed()
    );
    let (es_primer, es_pool) = es256.split_first().unwrap();
    let (rs_primer, rs_pool) = rs256.split_first().unwrap();

    let mut group = c.benchmark_group("verify");
    group.bench_function("TrustStore::verify ES256, uncached", |b| {
        b.iter_custom(|iters| verify_uncached(&rt, &issuers, es_primer, es_pool, iters))
    });
    group.bench_function("TrustStore::verify RS256, uncached", |b| {
        b.iter_custom(|iters| verify_uncached(&rt, &issuers, rs_primer, rs_pool, iters))
    });
    let store = issuers.store();
    rt.block_on(store.verify(es_primer, unix_now())).unwrap();
    group.bench_function("TrustStore::verify ES256, cached", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let now = unix_now();
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(store.verify(black_box(es_primer), now).await.unwrap());
                }
                start.elapsed()
            })
        })
    });

    // The signature check alone, on the same tokens: through `jsonwebtoken` with a
    // key from the JWK (rebuilt on every call), and through aws-lc-rs with the key
    // parsed once (what trust.rs does).
    let split = |t: &SubjectToken| {
        let raw = t.expose();
        let dot = raw.rfind('.').unwrap();
        (raw.as_bytes()[..dot].to_vec(), raw[dot + 1..].to_string())
    };
    let spire_jwk = &issuers.spire.public_jwk;
    let coordinate = |k: &str| {
        URL_SAFE_NO_PAD
            .decode(spire_jwk[k].as_str().unwrap())
            .unwrap()
    };
    let cases = [
        (
            "ES256",
            es_primer,
            serde_json::from_value(spire_jwk.clone()).unwrap(),
            Algorithm::ES256,
            &lc::ECDSA_P256_SHA256_FIXED as &'static dyn lc::VerificationAlgorithm,
            [vec![4u8], coordinate("x"), coordinate("y")].concat(),
        ),
        (
            "RS256",
            rs_primer,
            issuers.k8s_jwk.clone(),
            Algorithm::RS256,
            &lc::RSA_PKCS1_2048_8192_SHA256,
            issuers.k8s.public_key().as_ref().to_vec(),
        ),
    ];
    for (name, token, jwk, alg, lc_alg, public) in cases {
        let (message, signature) = split(token);
        let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        group.bench_function(
            format!("jsonwebtoken::crypto::verify {name} (key rebuilt per call)"),
            |b| {
                b.iter(|| {
                    let ok = jsonwebtoken::crypto::verify(
                        black_box(&signature),
                        black_box(&message),
                        &decoding,
                        alg,
                    );
                    assert!(ok.unwrap());
                })
            },
        );
        let parsed = lc::ParsedPublicKey::new(lc_alg, &public).unwrap();
        let raw_signature = URL_SAFE_NO_PAD.decode(&signature).unwrap();
        group.bench_function(
            format!("aws-lc {name} signature, key parsed once, as trust.rs does"),
            |b| {
                b.iter(|| {
                    parsed
                        .verify_sig(black_box(&message), black_box(&raw_signature))
                        .unwrap()
                })
            },
        );
    }
    group.finish();
}

fn bench_mint(c: &mut Criterion) {
    let now = unix_now();
    let grant = Grant {
        issuer: STS_ISSUER,
        subject: "spiffe://example.org/agent/triage",
        client_id: "spire:spiffe://example.org/agent/triage",
        audience: "https://github-shim.internal",
        action: "github.issues.create",
        actor: None,
        ttl_secs: 300,
        not_after: now + 3600,
        jkt: None,
    };
    let mut group = c.benchmark_group("mint");
    for (alg, jwt_alg, name) in [
        (SigningAlgorithm::ES256, Algorithm::ES256, "ES256"),
        (SigningAlgorithm::EdDSA, Algorithm::EdDSA, "EdDSA"),
    ] {
        let (key, pem) = SigningKey::generate(alg).unwrap();
        let kid = key.kid.clone();
        let loaded = LoadedKey {
            key,
            created_at: now,
            activates_at: now,
            fingerprint: [0; 32],
        };
        group.bench_function(format!("mint::mint {name} (key parsed once)"), |b| {
            b.iter(|| mint::mint(black_box(&loaded), black_box(&grant), now).unwrap())
        });

        let encoding = match jwt_alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(pem.expose().as_bytes()),
            _ => EncodingKey::from_ed_pem(pem.expose().as_bytes()),
        }
        .unwrap();
        let mut header = Header::new(jwt_alg);
        header.kid = Some(kid);
        header.typ = Some("at+jwt".into());
        group.bench_function(
            format!("jsonwebtoken::encode {name} (key parsed per call)"),
            |b| {
                b.iter(|| {
                    let claims = AccessClaims {
                        iss: grant.issuer,
                        sub: grant.subject,
                        aud: grant.audience,
                        exp: now + grant.ttl_secs,
                        iat: now,
                        nbf: now,
                        jti: common::jti(),
                        client_id: grant.client_id,
                        scope: grant.action,
                    };
                    jsonwebtoken::encode(black_box(&header), &claims, black_box(&encoding)).unwrap()
                })
            },
        );
    }
    group.finish();
}

fn bench_policy(c: &mut Criterion) {
    let scopes: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("scopes");
    let catalogue = Catalogue::load_dir(&scopes, &agent_sts::dev::trust_directory()).unwrap();
    let example_org = ["example.org".to_string()];
    let release_bot = Principal {
        trust: "k8s-prod",
        subject: "system:serviceaccount:agents:release-bot",
        spiffe_domains: &[],
    };
    let spiffe_agent = Principal {
        trust: "spire",
        subject: "spiffe://example.org/agent/triage",
        spiffe_domains: &example_org,
    };
    let triage = Principal {
        trust: "k8s-prod",
        subject: "system:serviceaccount:agents:triage",
        spiffe_domains: &[],
    };
    let decide = |action: &str, p: &Principal| {
        catalogue
            .get(black_box(action))
            .is_some_and(|a| a.permits_agent(black_box(p)))
    };
    let cases = [
        (
            "granted: github.issues.create, 3rd pattern (k8s wildcard)",
            "github.issues.create",
            &release_bot,
            true,
        ),
        (
            "granted: docs.read, SPIFFE pattern",
            "docs.read",
            &spiffe_agent,
            true,
        ),
        (
            "refused: salesforce.opportunity.update, no pattern matches",
            "salesforce.opportunity.update",
            &triage,
            false,
        ),
        (
            "refused: unknown action",
            "github.repos.delete",
            &triage,
            false,
        ),
    ];
    let mut group = c.benchmark_group("policy");
    for (name, action, principal, expected) in cases {
        assert_eq!(decide(action, principal), expected, "{name}");
        group.bench_function(name, |b| b.iter(|| decide(action, principal)));
    }
    group.finish();
}

fn bench_canonicalize(c: &mut Criterion) {
    let cases = [
        (
            "typical API path",
            "/repos/acme/widgets/issues?state=open",
            "/repos/acme/widgets/issues",
        ),
        (
            "percent-encoded path",
            "/repos/acme/my%2dwidgets/contents/docs/caf%c3%a9%20menu%7E1.md?ref=main",
            "/repos/acme/my-widgets/contents/docs/caf%C3%A9%20menu~1.md",
        ),
    ];
    let mut group = c.benchmark_group("canonicalize");
    for (name, target, canonical) in cases {
        // hyper parses the request line into a Uri before the shim sees it.
        let uri: http::Uri = target.parse().unwrap();
        assert_eq!(
            request_target::canonicalize(&uri).unwrap().path,
            canonical,
            "{name}"
        );
        group.bench_function(format!("request_target::canonicalize, {name}"), |b| {
            b.iter(|| request_target::canonicalize(black_box(&uri)).unwrap())
        });
    }
    group.finish();
}

/// A JSON array of GitHub-issue-like objects (with URLs, hex and base64-ish ids, so
/// the bytes are varied like a real API answer) of exactly `size` bytes; with
/// `secret`, one object in the middle echoes it once.
fn json_body(size: usize, secret: Option<&str>) -> Bytes {
    // Deterministic pseudo-random text (an LCG), so every run scans the same bytes.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut random = |alphabet: &[u8], n: usize| -> String {
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                char::from(alphabet[(state >> 33) as usize % alphabet.len()])
            })
            .collect()
    };
    const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const HEX: &[u8] = b"0123456789abcdef";
    let mut item = |i: usize, echo: &str| {
        format!(
            r#"{{"id":{id},"node_id":"I_kwDO{node}","number":{n},"html_url":"https://github.com/acme/widgets/issues/{n}","title":"Widget {i} does not frobnicate","state":"open","labels":["bug","triage"],"user":{{"login":"octocat","id":583231,"avatar_url":"https://avatars.githubusercontent.com/u/583231?v=4"}},"created_at":"2024-05-{day:02}T12:34:56Z","head_sha":"{sha}","body":"Steps to reproduce: open the widget, press frob.{echo}"}}"#,
            id = 2_000_000_000 + i * 7919,
            node = random(BASE64URL, 16),
            n = 1000 + i,
            day = 1 + i % 28,
            sha = random(HEX, 40),
        )
    };
    let closing = r#",{"pad":""}]"#.len();
    let mut items = Vec::new();
    let mut len = 1;
    loop {
        let next = item(items.len(), "");
        if len + next.len() + 1 + closing > size {
            break;
        }
        len += next.len() + 1;
        items.push(next);
    }
    if let Some(secret) = secret {
        let middle = items.len() / 2;
        items[middle] = item(middle, &format!(" Sent with {secret}"));
    }
    let mut out = format!("[{}", items.join(","));
    let pad = size - out.len() - closing;
    out.push_str(&format!(r#",{{"pad":"{}"}}]"#, "x".repeat(pad)));
    assert_eq!(out.len(), size);
    Bytes::from(out)
}

fn bench_scrub(c: &mut Criterion) {
    // A 48-byte credential header value, as the shim injects it.
    let secret = "Bearer ghp_0123456789abcdefghijklmnopqrstuvwxyzA";
    assert_eq!(secret.len(), 48);
    let mut group = c.benchmark_group("scrub");
    group.bench_function("Scrubber::new, 48-byte credential", |b| {
        b.iter(|| Scrubber::new(black_box(secret)))
    });
    let scrubber = Scrubber::new(secret);
    for (size, label) in [
        (1 << 10, "1 KiB"),
        (16 << 10, "16 KiB"),
        (256 << 10, "256 KiB"),
    ] {
        group.throughput(Throughput::Bytes(size as u64));
        for (with, secret) in [("clean", None), ("secret once", Some(secret))] {
            let body = json_body(size, secret);
            let (_, removed) = scrubber.scrub(body.clone());
            assert_eq!(
                removed,
                if secret.is_some() { 48 } else { 0 },
                "{label} {with}"
            );
            group.bench_function(format!("Scrubber::scrub, {label} JSON, {with}"), |b| {
                b.iter(|| scrubber.scrub(black_box(body.clone())))
            });
        }
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30)
        .nresamples(20_000)
        .without_plots()
}

/// A DPoP proof (RFC 9449) checked as the STS and the shim check it: header (parsed
/// once per agent key, then cached), signature, htm/htu, iat, ath, and the replay cache
/// (each proof fresh, so every check inserts a new jti; the cache is at its 100k cap
/// after warm-up); for ES256 and EdDSA proofs, and for a key seen for the first time.
fn bench_dpop(c: &mut Criterion) {
    use agent_sts_verifier::{DpopRules, DpopVerifier, ProofTarget};
    let verifier = DpopVerifier::new(DpopRules::default());
    let key = agent_sts_testkit::DpopKey::new();
    let url = "https://github-shim.internal/repos/acme/widgets/issues";
    let token = "eyJhbGciOiJFUzI1NiJ9.eyJzY29wZSI6ImdpdGh1Yi5pc3N1ZXMuY3JlYXRlIn0.sig";
    let target = ProofTarget {
        method: "POST",
        url,
        access_token: Some(token),
    };
    let mut group = c.benchmark_group("dpop");
    group.throughput(Throughput::Elements(1));
    let ed25519 = agent_sts_testkit::DpopKey::ed25519();
    for key in [&key, &ed25519] {
        group.bench_function(
            format!("verify proof ({}, ath, replay cache)", key.alg()),
            |b| {
                b.iter_batched(
                    || key.proof("POST", url, Some(token), None),
                    |proof| verifier.verify(&proof, &target, unix_now()).unwrap(),
                    criterion::BatchSize::SmallInput,
                )
            },
        );
    }
    group.bench_function("verify proof (ES256, a new key each time)", |b| {
        b.iter_batched(
            || agent_sts_testkit::DpopKey::new().proof("POST", url, Some(token), None),
            |proof| verifier.verify(&proof, &target, unix_now()).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();

    // The replay cache's memory at its cap: resident set before and after 100,000
    // fresh proofs are checked by a new verifier (the proofs are made first).
    let fresh = DpopVerifier::new(DpopRules::default());
    let cap = fresh.rules().replay_capacity as usize;
    let proofs: Vec<String> = (0..cap)
        .map(|_| key.proof("POST", url, Some(token), None))
        .collect();
    let before = resident_bytes();
    for proof in &proofs {
        fresh.verify(proof, &target, unix_now()).unwrap();
    }
    let held = fresh.remembered();
    let grown = resident_bytes().saturating_sub(before);
    println!(
        "dpop replay cache at its cap: {held} jtis, resident set +{:.1} MiB ({} bytes per entry)",
        grown as f64 / (1024.0 * 1024.0),
        grown / held.max(1)
    );
}

/// Resident set size of this process (Linux `/proc/self/statm`), 0 elsewhere.
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_verify, bench_mint, bench_policy, bench_canonicalize, bench_scrub, bench_dpop
}
criterion_main!(benches);
