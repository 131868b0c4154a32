//! What changes underneath a running verifier, over real HTTP on 127.0.0.1:0: a JWK
//! set the issuer publishes is its answer (a key it drops, or swaps under the same
//! `kid`, stops verifying at the next successful fetch, cached verifications included),
//! and only a failed fetch is an outage (the last good keys serve until `max_stale`,
//! then verification fails closed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_sts_verifier::{
    Algorithm, IssuerConfig, IssuerSet, JwtError, KeySource, Limits, Verifier, VerifyError,
    unix_now,
};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, KeyPair};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "https://service.test";

/// An ES256 key and the `kid` it is published under.
struct TestKey {
    kid: String,
    pair: EcdsaKeyPair,
}

impl TestKey {
    fn new(kid: &str) -> TestKey {
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .unwrap();
        TestKey {
            kid: kid.to_string(),
            pair,
        }
    }

    fn jwk(&self) -> Value {
        let point = self.pair.public_key().as_ref();
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        })
    }

    /// A token with `typ` and `claims` (standard ones filled in), signed by this key.
    fn sign(&self, typ: &str, extra: Value) -> String {
        let now = unix_now();
        let mut claims = json!({
            "iss": ISSUER, "sub": "agent", "aud": AUDIENCE, "iat": now, "nbf": now,
            "exp": now + 600, "jti": format!("{}-{}", self.kid, rand_u64()),
        });
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let header = json!({"alg": "ES256", "kid": self.kid, "typ": typ});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }

    /// An agent-sts access token.
    fn access_token(&self) -> String {
        self.sign(
            "at+jwt",
            json!({"scope": "docs.read", "client_id": "k8s:agent"}),
        )
    }
}

fn rand_u64() -> u64 {
    let mut bytes = [0u8; 8];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    u64::from_le_bytes(bytes)
}

/// A JWKS endpoint whose answer the test changes: a status and a body.
#[derive(Clone)]
struct Jwks {
    uri: String,
    answer: Arc<Mutex<(StatusCode, String)>>,
    fetches: Arc<Mutex<usize>>,
}

impl Jwks {
    async fn start(keys: &[&TestKey]) -> Jwks {
        let answer = Arc::new(Mutex::new((StatusCode::OK, String::new())));
        let fetches = Arc::new(Mutex::new(0));
        let (a, f) = (answer.clone(), fetches.clone());
        let router = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let (a, f) = (a.clone(), f.clone());
                async move {
                    *f.lock().unwrap() += 1;
                    let (status, body) = a.lock().unwrap().clone();
                    (status, body).into_response()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        let jwks = Jwks {
            uri,
            answer,
            fetches,
        };
        jwks.publish(keys);
        jwks
    }

    /// Serves a JWK set of `keys` (none: `{"keys": []}`).
    fn publish(&self, keys: &[&TestKey]) {
        let set = json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() });
        *self.answer.lock().unwrap() = (StatusCode::OK, set.to_string());
    }

    /// Answers `status` with `body`: an outage.
    fn fail(&self, status: StatusCode, body: &str) {
        *self.answer.lock().unwrap() = (status, body.to_string());
    }

    fn fetches(&self) -> usize {
        *self.fetches.lock().unwrap()
    }
}

/// Polls `check` every 50 ms until it is true or `within` passes.
async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A verifier whose keys are refreshed every `refresh` and kept through an outage for
/// `max_stale`; the refetch cooldown stays at its 30 s default. This issuer publishes
/// keys only, no deny list.
fn verifier(jwks: &Jwks, refresh: Duration, max_stale: Duration) -> Verifier {
    Verifier::builder(ISSUER, AUDIENCE, &jwks.uri)
        .without_deny_feed()
        .jwks_refresh(refresh)
        .jwks_max_stale(max_stale)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_key_the_sts_stops_publishing_stops_verifying_within_the_refresh() {
    let (old, new) = (TestKey::new("old"), TestKey::new("new"));
    let jwks = Jwks::start(&[&old, &new]).await;
    let v = verifier(&jwks, Duration::from_millis(300), Duration::from_secs(3600));
    let token = old.access_token();
    let other = new.access_token();
    assert_eq!(
        v.verify(&token, unix_now()).await.unwrap().action,
        "docs.read"
    );
    v.verify(&other, unix_now()).await.unwrap();

    // Emergency removal: the STS publishes its set without the old key. The token,
    // verified once and cached, is refused after the next refresh.
    jwks.publish(&[&new]);
    let refused = eventually(Duration::from_secs(10), async || {
        v.verify(&token, unix_now()).await.is_err()
    })
    .await;
    assert!(refused, "a removed key keeps verifying from the cache");
    assert!(matches!(
        v.verify(&token, unix_now()).await,
        Err(VerifyError::Token(JwtError::UnknownKid { .. }))
    ));
    // A fresh token signed by the removed key too; the other key still verifies.
    assert!(v.verify(&old.access_token(), unix_now()).await.is_err());
    v.verify(&other, unix_now()).await.unwrap();

    // The keyring emptied: an empty set is an answer, not an outage.
    jwks.publish(&[]);
    let refused = eventually(Duration::from_secs(10), async || {
        v.verify(&other, unix_now()).await.is_err()
    })
    .await;
    assert!(refused, "an empty JWKS is treated as an outage");
    assert!(matches!(
        v.verify(&new.access_token(), unix_now()).await,
        Err(VerifyError::Token(JwtError::UnknownKid { .. }))
    ));
}

#[tokio::test]
async fn an_outage_serves_the_last_good_keys_until_max_stale_then_fails_closed() {
    let key = TestKey::new("k1");
    let jwks = Jwks::start(&[&key]).await;
    let v = verifier(&jwks, Duration::from_millis(200), Duration::from_secs(2));
    let cached = key.access_token();
    let started = Instant::now();
    v.verify(&cached, unix_now()).await.unwrap();

    // The STS answers 500, then garbage: an outage. Both the cached token and new
    // ones keep verifying with the last good keys, past the refresh, attempts made.
    jwks.fail(StatusCode::INTERNAL_SERVER_ERROR, "");
    tokio::time::sleep(Duration::from_millis(400)).await;
    v.verify(&key.access_token(), unix_now()).await.unwrap();
    jwks.fail(StatusCode::OK, "{\"keys\": 7");
    tokio::time::sleep(Duration::from_millis(400)).await;
    v.verify(&cached, unix_now()).await.unwrap();
    v.verify(&key.access_token(), unix_now()).await.unwrap();
    assert!(jwks.fetches() >= 2, "the refresh was attempted");

    // Once the keys are `max_stale` old: refusal, the cached token included.
    let refused = eventually(Duration::from_secs(10), async || {
        v.verify(&cached, unix_now()).await.is_err()
    })
    .await;
    assert!(refused, "stale keys keep serving");
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(matches!(
        v.verify(&key.access_token(), unix_now()).await,
        Err(VerifyError::Token(JwtError::JwksUnavailable { .. }))
    ));
}

/// The issuer publishes other material under the same `kid`: a verification cached
/// under the old material no longer holds; a token of the new material verifies.
#[tokio::test]
async fn the_same_kid_over_other_material_invalidates_cached_verifications() {
    let (before, after) = (TestKey::new("k1"), TestKey::new("k1"));
    let jwks = Jwks::start(&[&before]).await;
    let v = verifier(&jwks, Duration::from_millis(300), Duration::from_secs(3600));
    let token = before.access_token();
    v.verify(&token, unix_now()).await.unwrap();

    jwks.publish(&[&after]);
    let refused = eventually(Duration::from_secs(10), async || {
        v.verify(&token, unix_now()).await.is_err()
    })
    .await;
    assert!(refused, "a cached verification outlives its key's material");
    assert!(matches!(
        v.verify(&token, unix_now()).await,
        Err(VerifyError::Token(JwtError::BadSignature { .. }))
    ));
    v.verify(&after.access_token(), unix_now()).await.unwrap();
}

/// An issuer that answers with an empty set, or a set of another `kid`, costs no more
/// fetches than the cooldown allows, however many tokens (cached or not) ask.
#[tokio::test]
async fn a_dropped_key_costs_no_more_fetches_than_the_cooldown() {
    let key = TestKey::new("k1");
    let jwks = Jwks::start(&[&key]).await;
    let limits = Limits {
        jwks_refetch_cooldown: Duration::from_secs(2),
        ..Limits::default()
    };
    let set = IssuerSet::new(
        &[IssuerConfig {
            name: "workload".into(),
            issuer: ISSUER.into(),
            keys: KeySource::uri(&jwks.uri).unwrap(),
            algorithms: vec![Algorithm::ES256],
            max_token_lifetime: Duration::from_secs(3600),
            leeway: Duration::from_secs(30),
            jwks_refresh: Duration::from_secs(300),
            jwks_max_stale: Duration::from_secs(3600),
        }],
        AUDIENCE,
        &limits,
        None,
    )
    .unwrap();
    let cached: Vec<String> = (0..20).map(|_| key.sign("JWT", json!({}))).collect();
    for t in &cached {
        set.verify(t, unix_now()).await.unwrap();
    }
    assert_eq!(jwks.fetches(), 1);
    jwks.publish(&[]);
    // Nothing is refetched before the refresh is due: cached tokens still verify.
    for t in &cached {
        set.verify(t, unix_now()).await.unwrap();
    }
    // New tokens with a kid the cached set lacks, once the cooldown since the first
    // fetch has passed: one refetch, then the cooldown.
    let strangers: Vec<String> = (0..10)
        .map(|i| TestKey::new(&format!("stranger-{i}")).sign("JWT", json!({})))
        .collect();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for t in &strangers {
        assert!(set.verify(t, unix_now()).await.is_err());
    }
    assert_eq!(jwks.fetches(), 2, "one refetch for unknown kids");
    // That refetch replaced the set: every cached token is now refused, with no fetch.
    for t in &cached {
        assert!(matches!(
            set.verify(t, unix_now()).await,
            Err(JwtError::UnknownKid { .. })
        ));
    }
    assert_eq!(jwks.fetches(), 2, "refusals from the cache cost no fetch");
}

#[test]
fn zero_freshness_bounds_are_refused() {
    for (refresh, max_stale) in [(0, 1), (1, 0)] {
        let built = Verifier::builder(ISSUER, AUDIENCE, "https://issuer.test/jwks")
            .jwks_refresh(Duration::from_secs(refresh))
            .jwks_max_stale(Duration::from_secs(max_stale))
            .build();
        assert!(built.is_err());
    }
}
