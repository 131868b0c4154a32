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
//!
//! JWKS come from `jwks_file`s in a temp dir, so no server runs inside criterion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_sts::catalogue::{Catalogue, Principal};
use agent_sts::config::{Config, SigningAlgorithm};
use agent_sts::keys::LoadedKey;
use agent_sts::metrics::Metrics;
use agent_sts::mint::{self, Grant};
use agent_sts::secret::{PrivateKeyPem, SubjectToken};
use agent_sts::signing_key::SigningKey;
use agent_sts::trust::{TrustStore, unix_now};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self as lc, KeyPair, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::json;

const STS_ISSUER: &str = "https://sts.bench.example";
const SPIRE_ISSUER: &str = "https://spire.example.org";
const K8S_ISSUER: &str = "https://kubernetes.default.svc";

/// Distinct ES256 subject tokens signed up front.
const ES256_POOL: usize = 20_000;
/// Distinct RS256 subject tokens: RSA signing is slow, and the store is replaced
/// whenever the pool runs out, so a smaller pool suffices.
const RS256_POOL: usize = 2_000;

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("keys/test")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

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
        let spire = SigningKey::from_pem(
            SigningAlgorithm::ES256,
            &PrivateKeyPem::new(fixture("spire-es256.pem")),
        )
        .unwrap();
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
            &self.config.limits,
            Arc::new(Metrics::new()),
        )
        .unwrap()
    }

    /// A SPIFFE JWT-SVID (the real shape), made distinct by `n`.
    fn svid(&self, n: usize) -> SubjectToken {
        let now = unix_now();
        let header = json!({"alg": "ES256", "kid": self.spire.kid, "typ": "JWT"});
        let claims = json!({
            "sub": format!("spiffe://example.org/agent/worker-{}", n % 64),
            "aud": [STS_ISSUER],
            "exp": now + 3600,
            "iat": now,
            "iss": SPIRE_ISSUER,
            "jti": format!("svid-{n}"),
        });
        let token = self
            .spire
            .sign_compact(header.to_string().as_bytes(), claims.to_string().as_bytes())
            .unwrap();
        SubjectToken::new(token)
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

/// Signs `n` tokens with `make`, on every core.
fn pool(n: usize, make: impl Fn(usize) -> SubjectToken + Sync) -> Vec<SubjectToken> {
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
    let es256 = pool(ES256_POOL + 1, |n| issuers.svid(n));
    let rs256 = pool(RS256_POOL + 1, |n| issuers.k8s_token(n));
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

/// The claims `mint` writes, for `jsonwebtoken::encode`.
#[derive(Serialize)]
struct AccessClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
    iat: u64,
    nbf: u64,
    jti: String,
    client_id: &'a str,
    scope: &'a str,
}

/// A fresh 128-bit `jti`, as `mint` makes it.
fn jti() -> String {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    b64(&bytes)
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
                        jti: jti(),
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

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30)
        .nresamples(20_000)
        .without_plots()
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_verify, bench_mint, bench_policy
}
criterion_main!(benches);
