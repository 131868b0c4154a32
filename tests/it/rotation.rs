//! Rotation under load (SECURITY.md property 6): clients mint continuously while keys
//! rotate; an independent verifier that caches the JWKS for its `max-age`, as a shim
//! would, checks every token. Zero failures, and more than one kid must have signed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio::sync::Mutex;

use crate::harness::*;

/// A verifier that refreshes its JWKS only when the cached copy is older than the
/// `max-age` the STS advertised: it never refetches on an unknown kid, so it fails if
/// a key ever signs before the verifier could have seen it published.
struct CachingVerifier {
    url: String,
    cache: Mutex<Option<(Instant, Duration, JwkSet)>>,
    fetches: AtomicUsize,
}

impl CachingVerifier {
    async fn jwks(&self) -> JwkSet {
        let mut cache = self.cache.lock().await;
        if let Some((at, max_age, set)) = &*cache
            && at.elapsed() < *max_age
        {
            return set.clone();
        }
        let r = reqwest::get(format!("{}/.well-known/jwks.json", self.url))
            .await
            .unwrap();
        let max_age = r.headers()["cache-control"]
            .to_str()
            .unwrap()
            .split("max-age=")
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap();
        let set: JwkSet = r.json().await.unwrap();
        self.fetches.fetch_add(1, Ordering::SeqCst);
        *cache = Some((Instant::now(), Duration::from_secs(max_age), set.clone()));
        set
    }

    async fn verify(&self, token: &str) -> Result<String, String> {
        let set = self.jwks().await;
        let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
        let kid = header.kid.clone().unwrap_or_default();
        let jwk = set
            .find(&kid)
            .ok_or_else(|| format!("kid {kid} not in cached JWKS"))?;
        let mut v = Validation::new(Algorithm::ES256);
        v.set_issuer(&[STS_ISSUER]);
        v.set_audience(&["https://docs.internal"]);
        jsonwebtoken::decode::<serde_json::Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &v)
            .map_err(|e| e.to_string())?;
        Ok(kid)
    }
}

/// Short key lifecycle for rotation tests.
pub fn fast_lifecycle(config: String) -> String {
    config
        .replace("refresh_interval = \"1s\"", "refresh_interval = \"300ms\"")
        .replace("publish_lead = \"10m\"", "publish_lead = \"2s\"")
        .replace("jwks_max_age = \"5m\"", "jwks_max_age = \"1s\"")
        .replace(
            "[audit]",
            "[limits]\nrate_per_second = 100000\nrate_burst = 100000\n\n[audit]",
        )
}

/// Mints from `url` with 6 clients for 7 s while `store` rotates twice; every token is
/// checked by a [`CachingVerifier`]. Asserts zero failures and ≥ 2 signing kids.
async fn rotate_under_load(
    label: &str,
    url: String,
    issuers: &Issuers,
    config_path: &std::path::Path,
    store: &dyn agent_sts::keys::KeyStore,
) {
    let config = agent_sts::config::Config::load(config_path, &BTreeMap::new()).unwrap();
    let verifier = Arc::new(CachingVerifier {
        url: url.clone(),
        cache: Mutex::new(None),
        fetches: AtomicUsize::new(0),
    });
    let body = exchange_form(&issuers.k8s_token("triage"), "docs.read");
    let minted = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let kids = Arc::new(std::sync::Mutex::new(BTreeMap::<String, usize>::new()));
    let run_for = Duration::from_secs(7);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..6 {
        let (url, body, verifier) = (url.clone(), body.clone(), verifier.clone());
        let (minted, failures, kids) = (minted.clone(), failures.clone(), kids.clone());
        workers.push(tokio::spawn(async move {
            let client = reqwest::Client::new(); // keep-alive: one connection per worker
            while started.elapsed() < run_for {
                let sent = client
                    .post(format!("{url}/token"))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                let r = reply(sent).await;
                if r.status != 200 {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("mint: {} {}", r.status, r.text));
                    continue;
                }
                minted.fetch_add(1, Ordering::SeqCst);
                match verifier.verify(&r.token()).await {
                    Ok(kid) => *kids.lock().unwrap().entry(kid).or_default() += 1,
                    Err(e) => failures.lock().unwrap().push(e),
                }
            }
        }));
    }
    rotate_twice(store, &config).await;
    for w in workers {
        w.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    let kids = kids.lock().unwrap().clone();
    let minted = minted.load(Ordering::SeqCst);
    println!(
        "rotation under load ({label}): {minted} tokens minted and verified, {} failures, signed by {} kids: {kids:?}, JWKS fetched {} times",
        failures.len(),
        kids.len(),
        verifier.fetches.load(Ordering::SeqCst)
    );
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(minted > 100, "too little load: {minted}");
    assert!(
        kids.len() >= 2,
        "rotation did not happen under load: {kids:?}"
    );
}

/// Rotates twice, 1.5 s apart, while load runs.
pub async fn rotate_twice(
    store: &dyn agent_sts::keys::KeyStore,
    config: &agent_sts::config::Config,
) {
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        agent_sts::keys::rotate(
            store,
            config.tokens.algorithm,
            now(),
            config.keys.publish_lead,
            config.tokens.max_ttl,
        )
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_under_load_with_zero_verification_failures() {
    let issuers = Issuers::start().await;
    let sts = TestSts::start(&issuers.specs(), SCOPES, "").await;
    // A second STS from the same directory with a short key lifecycle.
    let text = fast_lifecycle(std::fs::read_to_string(&sts.config_path).unwrap());
    std::fs::write(&sts.config_path, &text).unwrap();
    let config = agent_sts::config::Config::load(&sts.config_path, &BTreeMap::new()).unwrap();
    let app = agent_sts::sts::build(&config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = app.serve(listener, None).await;
    });
    let store = agent_sts::keys::FileKeyStore::new(sts.dir.path().join("keys"));
    rotate_under_load("file store", url, &issuers, &sts.config_path, &store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_keys_rotate_under_load_with_zero_verification_failures() {
    let vault = crate::openbao::OpenBao::start().await;
    crate::vault::plant_credentials(&vault).await;
    let issuers = Issuers::start().await;
    let auth = crate::vault::serve_token_auth(&vault).await;
    let sts = crate::vault::vault_sts_with(&vault, &issuers, &auth, fast_lifecycle).await;
    // The operator rotates with the rotate policy; the STS reads with its own.
    let rotate = sts.dir.path().join("rotate.toml");
    let config = agent_sts::config::Config::load(&rotate, &BTreeMap::new()).unwrap();
    let stores = agent_sts::store::open(&config).await.unwrap();
    rotate_under_load(
        "Vault store",
        sts.url.clone(),
        &issuers,
        &sts.config_path,
        stores.keys.stored().unwrap().as_ref(),
    )
    .await;
}
