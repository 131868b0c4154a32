//! The Vault client against recorded HashiCorp Vault responses: KV v2, AppRole and
//! Kubernetes logins, `auth/token/renew-self` and Vault's `{"errors": [...]}` error
//! shape, none of which RustyVault (the real server of `vault.rs`) has. A small axum
//! server on 127.0.0.1:0 answers from per-test canned replies, shaped as Vault's API
//! documentation shows them, and records every request so the tests assert on what
//! the client sent, not only on what it returned.

use std::collections::HashMap;
use std::fmt::{Debug, Display};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_sts::config::{VaultAuth, VaultConfig};
use agent_sts::keys::signing_key::SigningAlgorithm;
use agent_sts::keys::{KeyState, KeyStore, KeyStoreError, StoreVersion, StoredRing, rotate};
use agent_sts::secret::VaultToken;
use agent_sts::store::secrets::SecretStore;
use agent_sts::store::vault::{Vault, VaultError, VaultKeyStore, VaultSecretStore};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

// Canaries: none of these may ever appear in a formatted error or client.
const CLIENT_TOKEN: &str = "hvs.CAESIClientTokenCanary7f3aQ";
const CLIENT_TOKEN_2: &str = "hvs.CAESISecondTokenCanary9b1eZ";
const ENV_TOKEN: &str = "hvs.CAESIEnvTokenCanary51c2X";
const ROLE_ID: &str = "role-id-canary-0d4e-675153f3";
const SECRET_ID: &str = "secret-id-canary-8a6b-2c1dd7a0";
const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJrOHMiOiJqd3QtY2FuYXJ5In0.c2ln-k8s-jwt-canary";
const SECRET_VALUE: &str = "ghp_plantedCredentialCanary4e7d";
const PLANTED_KEY: &str =
    "-----BEGIN PRIVATE KEY-----\nplantedKeyCanary93aa\n-----END PRIVATE KEY-----\n";
const CANARIES: &[&str] = &[
    CLIENT_TOKEN,
    CLIENT_TOKEN_2,
    ENV_TOKEN,
    ROLE_ID,
    SECRET_ID,
    JWT,
    SECRET_VALUE,
    "plantedKeyCanary93aa",
];

const KEYS_PATH: &str = "sts/signing-keys";

/// Fails if `Debug` or `Display` of `e` shows any canary; returns the Display text.
fn clean<E: Debug + Display>(e: &E) -> String {
    let printed = [format!("{e:?}"), format!("{e:#?}"), e.to_string()];
    for p in &printed {
        for canary in CANARIES {
            assert!(!p.contains(canary), "{canary} leaked in {p}");
        }
    }
    printed[2].clone()
}

fn clean_debug<T: Debug>(t: &T) {
    let p = format!("{t:?}");
    for canary in CANARIES {
        assert!(!p.contains(canary), "{canary} leaked in {p}");
    }
}

// ---------------------------------------------------------------------------------
// Recorded response shapes (developer.hashicorp.com/vault/api-docs).

/// `GET /v1/<mount>/data/<path>` (KV v2 read secret version).
fn kv2_read(data: Value, version: u64) -> Value {
    let metadata = kv2_version("2018-03-22T02:24:06.945319214Z", version);
    let data = json!({ "data": data, "metadata": metadata });
    envelope("b0a3a9e8-2c7a-4f53-9c9d-3c7f0f3e2b11", data, Value::Null)
}

/// `POST /v1/<mount>/data/<path>` (KV v2 create/update secret).
fn kv2_written(version: u64) -> Value {
    let data = kv2_version("2018-03-22T02:36:43.986212308Z", version);
    envelope("0f0e6c1c-7d3e-4b0e-9d68-0c6a1c6a9a01", data, Value::Null)
}

/// The metadata of one KV v2 version.
fn kv2_version(created_time: &str, version: u64) -> Value {
    json!({
        "created_time": created_time,
        "custom_metadata": null,
        "deletion_time": "",
        "destroyed": false,
        "version": version
    })
}

/// `GET /v1/<mount>/data/<path>` whose latest version was deleted (`vault kv delete`):
/// Vault answers 404 with that version's metadata and no data.
fn kv2_deleted(version: u64) -> Reply {
    let mut metadata = kv2_version("2018-03-22T02:24:06.945319214Z", version);
    metadata["deletion_time"] = json!("2026-01-09T10:11:12.131415161Z");
    let data = json!({ "data": null, "metadata": metadata });
    reply(
        404,
        envelope("6a4d2b3e-2d9c-4a55-8d1e-52f8c5a7e0b1", data, Value::Null),
    )
}

/// The same for a destroyed latest version (`vault kv destroy`): `destroyed` is true
/// and `deletion_time` may be empty.
fn kv2_destroyed(version: u64) -> Reply {
    let mut metadata = kv2_version("2018-03-22T02:24:06.945319214Z", version);
    metadata["destroyed"] = json!(true);
    let data = json!({ "data": null, "metadata": metadata });
    reply(
        404,
        envelope("9c1f7e2a-0b4d-4e6f-a8c3-7d5e9f1a2b3c", data, Value::Null),
    )
}

/// Vault's response envelope around `data` and `auth`.
fn envelope(request_id: &str, data: Value, auth: Value) -> Value {
    json!({
        "request_id": request_id,
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": data,
        "wrap_info": null,
        "warnings": null,
        "auth": auth
    })
}

/// A login (`auth/<mount>/login`) or `auth/token/renew-self` response.
fn auth_response(token: &str, lease: u64, renewable: bool) -> Value {
    let auth = json!({
        "client_token": token,
        "accessor": "0e9e354a-520f-df04-6867-ee81cae3d42d",
        "policies": ["default"],
        "token_policies": ["default"],
        "metadata": {"role_name": "my-role"},
        "lease_duration": lease,
        "renewable": renewable,
        "entity_id": "8b8b1c63-6e1c-2a1a-7c5e-1f2b3c4d5e6f",
        "token_type": "service",
        "orphan": true
    });
    envelope("1d5a8c1e-5f0e-7f2a-3c4d-6e7f8a9b0c1d", Value::Null, auth)
}

fn errors(messages: &[&str]) -> Value {
    json!({ "errors": messages })
}

// ---------------------------------------------------------------------------------
// The fake Vault.

#[derive(Clone)]
struct Reply {
    status: u16,
    body: String,
    delay: Duration,
}

fn reply(status: u16, body: Value) -> Reply {
    Reply {
        status,
        body: body.to_string(),
        delay: Duration::ZERO,
    }
}

fn ok(body: Value) -> Reply {
    reply(200, body)
}

fn not_found() -> Reply {
    reply(404, errors(&[]))
}

fn forbidden() -> Reply {
    reply(403, errors(&["permission denied"]))
}

/// `lookup-self` unless a test routes it: `VAULT_TOKEN` ([`ENV_TOKEN`]) is a valid
/// token without expiry (as a root or periodic token reads); any other token has
/// been revoked (a 403 on it is the token, not the policy).
fn lookup_self(headers: &HeaderMap) -> Reply {
    let token = headers.get("x-vault-token").and_then(|v| v.to_str().ok());
    if token == Some(ENV_TOKEN) {
        ok(json!({
            "request_id": "5e6b2ad8-3d1f-6c2b-5e5e-1f0b2a0c9d11",
            "lease_id": "",
            "renewable": false,
            "lease_duration": 0,
            "data": {
                "accessor": "8609694a-cdbc-db9b-d345-e782dbb562ed",
                "creation_time": 1523979354,
                "creation_ttl": 0,
                "display_name": "token",
                "entity_id": "",
                "expire_time": null,
                "explicit_max_ttl": 0,
                "id": ENV_TOKEN,
                "issue_time": "2026-11-30T12:00:00.000000Z",
                "meta": null,
                "num_uses": 0,
                "orphan": true,
                "path": "auth/token/create",
                "policies": ["agent-sts"],
                "renewable": false,
                "ttl": 0,
                "type": "service"
            },
            "wrap_info": null,
            "warnings": null,
            "auth": null
        }))
    } else {
        forbidden()
    }
}

/// One route of the fake: method, path, and its replies in order (the last repeats).
type Route = (&'static str, String, Vec<Reply>);

fn route(method: &'static str, path: &str, replies: Vec<Reply>) -> Route {
    (method, path.to_string(), replies)
}

/// `POST /v1/auth/approle/login`.
fn approle_login(replies: Vec<Reply>) -> Route {
    route("POST", "/v1/auth/approle/login", replies)
}

/// Two AppRole logins in turn: the first hands out `CLIENT_TOKEN`, the second
/// `CLIENT_TOKEN_2`.
fn approle_login_twice() -> Route {
    approle_login(vec![
        ok(auth_response(CLIENT_TOKEN, 3600, true)),
        ok(auth_response(CLIENT_TOKEN_2, 3600, true)),
    ])
}

/// `GET /v1/secret/data/{path}` (a KV v2 read at mount `secret`).
fn kv2_get(path: &str, replies: Vec<Reply>) -> Route {
    route("GET", &format!("/v1/secret/data/{path}"), replies)
}

#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    token: Option<String>,
    body: Option<Value>,
}

#[derive(Default)]
struct FakeState {
    /// `(method, path)` → replies in order; the last one repeats.
    routes: Mutex<HashMap<(String, String), Vec<Reply>>>,
    log: Mutex<Vec<Recorded>>,
}

struct Fake {
    addr: String,
    state: Arc<FakeState>,
}

impl Fake {
    async fn start(routes: Vec<Route>) -> Fake {
        let state = Arc::new(FakeState {
            routes: Mutex::new(
                routes
                    .into_iter()
                    .map(|(m, p, r)| ((m.to_string(), p), r))
                    .collect(),
            ),
            log: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Fake { addr, state }
    }

    /// Replaces the replies of one route: Vault's state changing while a test runs.
    fn set_route(&self, (method, path, replies): Route) {
        let mut routes = self.state.routes.lock().unwrap();
        routes.insert((method.to_string(), path), replies);
    }

    /// Every request but `lookup-self` (token auth sends one at login, and a 403
    /// one to tell a dead token from a denying policy): see [`Fake::requests_to`].
    fn log(&self) -> Vec<Recorded> {
        let log = self.state.log.lock().unwrap();
        log.iter()
            .filter(|r| r.path != "/v1/auth/token/lookup-self")
            .cloned()
            .collect()
    }

    fn requests_to(&self, path: &str) -> Vec<Recorded> {
        let log = self.state.log.lock().unwrap();
        log.iter().filter(|r| r.path == path).cloned().collect()
    }

    fn config(&self, auth: VaultAuth, timeout: Duration) -> VaultConfig {
        VaultConfig {
            address: self.addr.clone(),
            kv_mount: "secret".into(),
            kv_version: 2,
            auth,
            timeout,
            max_stale: Duration::from_secs(2),
            env_token: None,
        }
    }

    /// A client with token auth (`VAULT_TOKEN` = [`ENV_TOKEN`]).
    fn token_client(&self, timeout: Duration) -> Arc<Vault> {
        let config = self.config(VaultAuth::Token { token_file: None }, timeout);
        Arc::new(Vault::new(&config, Some(VaultToken::new(ENV_TOKEN))).unwrap())
    }
}

async fn handle(
    State(state): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let method = method.as_str().to_string();
    let path = uri.path().to_string();
    let token = headers
        .get("x-vault-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = if body.is_empty() {
        None
    } else {
        Some(serde_json::from_slice(&body).unwrap_or(Value::String("<not json>".into())))
    };
    let seen = {
        let mut log = state.log.lock().unwrap();
        let seen = log
            .iter()
            .filter(|r| r.method == method && r.path == path)
            .count();
        log.push(Recorded {
            method: method.clone(),
            path: path.clone(),
            token,
            body,
        });
        seen
    };
    let routed = state
        .routes
        .lock()
        .unwrap()
        .get(&(method.clone(), path.clone()))
        .cloned();
    let reply = match routed {
        Some(replies) => replies[seen.min(replies.len() - 1)].clone(),
        None if method == "GET" && path == "/v1/auth/token/lookup-self" => lookup_self(&headers),
        None => not_found(),
    };
    tokio::time::sleep(reply.delay).await;
    (
        StatusCode::from_u16(reply.status).unwrap(),
        [("content-type", "application/json")],
        reply.body,
    )
        .into_response()
}

fn ring_json() -> Value {
    json!({"keys": [{
        "kid": "k-2024-01",
        "alg": "ES256",
        "private_key": PLANTED_KEY,
        "public_jwk": null,
        "created_at": 1_700_000_000u64,
        "activates_at": 1_700_000_000u64
    }]})
}

fn approle(dir: &std::path::Path) -> VaultAuth {
    // Trailing newlines, as `vault read -field` or an editor leaves them.
    std::fs::write(dir.join("role-id"), format!("{ROLE_ID}\n")).unwrap();
    std::fs::write(dir.join("secret-id"), format!("{SECRET_ID}\n")).unwrap();
    VaultAuth::AppRole {
        mount: "approle".into(),
        role_id_file: dir.join("role-id"),
        secret_id_file: dir.join("secret-id"),
    }
}

fn approle_client(fake: &Fake, dir: &std::path::Path, timeout: Duration) -> Arc<Vault> {
    let config = fake.config(approle(dir), timeout);
    Arc::new(Vault::new(&config, None).unwrap())
}

const TIMEOUT: Duration = Duration::from_secs(2);

/// `n` concurrent reads of `integrations/github`, each expected to fail: the errors.
async fn failed_concurrent_reads(vault: &Arc<Vault>, n: usize) -> Vec<VaultError> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let vault = vault.clone();
            tokio::spawn(async move { vault.kv_read("integrations/github").await })
        })
        .collect();
    let mut errors = Vec::new();
    for t in tasks {
        errors.push(t.await.unwrap().unwrap_err());
    }
    errors
}

// ---------------------------------------------------------------------------------
// 1. KV v2 key store.

#[tokio::test]
async fn kv2_key_store_loads_the_ring_and_saves_with_cas() {
    let path = "/v1/secret/data/sts/signing-keys";
    let fake = Fake::start(vec![
        route("GET", path, vec![ok(kv2_read(ring_json(), 2))]),
        route("POST", path, vec![ok(kv2_written(3))]),
    ])
    .await;
    let vault = fake.token_client(TIMEOUT);
    let store = VaultKeyStore::new(vault.clone(), KEYS_PATH);

    let (ring, version) = store.load().await.unwrap();
    assert_eq!(version, StoreVersion("2".into()));
    assert_eq!(ring.keys.len(), 1);
    assert_eq!(ring.keys[0].kid, "k-2024-01");
    assert_eq!(ring.keys[0].private_key.expose(), PLANTED_KEY);

    store.save(&ring, &version).await.unwrap();

    let log = fake.log();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(
        (log[0].method.as_str(), log[0].path.as_str()),
        ("GET", path)
    );
    assert_eq!(log[0].token.as_deref(), Some(ENV_TOKEN));
    assert_eq!(log[0].body, None);
    assert_eq!(
        (log[1].method.as_str(), log[1].path.as_str()),
        ("POST", path)
    );
    assert_eq!(log[1].token.as_deref(), Some(ENV_TOKEN));
    let body = log[1].body.as_ref().unwrap();
    assert_eq!(body["options"], json!({"cas": 2}));
    assert_eq!(body["data"], ring_json(), "the ring is written as read");
    clean_debug(&store);
    clean_debug(&vault);
}

#[tokio::test]
async fn kv2_cas_mismatch_is_a_conflict() {
    let path = "/v1/secret/data/sts/signing-keys";
    let fake = Fake::start(vec![route(
        "POST",
        path,
        vec![reply(
            400,
            errors(&["check-and-set parameter did not match the current version"]),
        )],
    )])
    .await;
    let store = VaultKeyStore::new(fake.token_client(TIMEOUT), KEYS_PATH);
    let ring: StoredRing = serde_json::from_value(ring_json()).unwrap();

    let err = store
        .save(&ring, &StoreVersion("2".into()))
        .await
        .unwrap_err();
    assert!(matches!(err, KeyStoreError::Conflict { .. }), "{err:?}");
    clean(&err);

    let writes = fake.requests_to(path);
    assert_eq!(writes.len(), 1, "a 400 is not retried: {writes:?}");
    assert_eq!(writes[0].body.as_ref().unwrap()["options"]["cas"], 2);
}

#[tokio::test]
async fn rotate_creates_the_ring_with_cas_zero() {
    let path = "/v1/secret/data/sts/signing-keys";
    let fake = Fake::start(vec![
        route("GET", path, vec![not_found()]),
        route("POST", path, vec![ok(kv2_written(1))]),
    ])
    .await;
    let store = VaultKeyStore::new(fake.token_client(TIMEOUT), KEYS_PATH);

    let (ring, version) = store.load().await.unwrap();
    assert!(ring.keys.is_empty());
    assert_eq!(version, StoreVersion("0".into()));

    let now = 1_750_000_000;
    let (kid, state) = rotate(
        &store,
        SigningAlgorithm::ES256,
        now,
        Duration::from_secs(3600),
        Duration::from_secs(900),
    )
    .await
    .unwrap();
    assert_eq!(state, KeyState::Active, "the first key signs at once");

    let writes: Vec<_> = fake
        .requests_to(path)
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(writes.len(), 1, "{writes:?}");
    let body = writes[0].body.as_ref().unwrap();
    assert_eq!(body["options"], json!({"cas": 0}), "create only if absent");
    let keys = body["data"]["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kid"], kid.as_str());
    assert_eq!(keys[0]["alg"], "ES256");
    assert_eq!(keys[0]["activates_at"], now);
    assert!(
        keys[0]["private_key"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    assert!(keys[0]["public_jwk"].is_object());
    assert_eq!(writes[0].token.as_deref(), Some(ENV_TOKEN));
}

/// A KV v2 keyring whose latest version was deleted or destroyed is not an empty ring
/// (which `keys rotate` would fill with a fresh key over it): loading it fails, naming
/// what happened, the version and how to bring it back, and `rotate` writes nothing.
#[tokio::test]
async fn a_deleted_or_destroyed_kv2_keyring_is_refused_not_empty() {
    let path = "/v1/secret/data/sts/signing-keys";
    let fake = Fake::start(vec![route("POST", path, vec![ok(kv2_written(9))])]).await;
    let store = VaultKeyStore::new(fake.token_client(TIMEOUT), KEYS_PATH);
    let soft_deleted_200 = ok({
        let mut v = kv2_read(Value::Null, 5);
        v["data"]["metadata"]["deletion_time"] = json!("2026-01-09T10:11:12Z");
        v
    });
    let cases = [
        (
            kv2_deleted(3),
            "version 3",
            "deleted",
            "vault kv undelete -versions=3 secret/sts/signing-keys",
        ),
        (
            kv2_destroyed(4),
            "version 4",
            "destroyed",
            "vault kv metadata delete secret/sts/signing-keys",
        ),
        (
            soft_deleted_200,
            "version 5",
            "deleted",
            "undelete -versions=5",
        ),
    ];
    for (answer, version, what, fix) in cases {
        fake.set_route(route("GET", path, vec![answer]));
        let err = store.load().await.unwrap_err();
        let text = clean(&err);
        assert!(matches!(err, KeyStoreError::Deleted { .. }), "{err:?}");
        for needle in [version, what, fix] {
            assert!(text.contains(needle), "{needle}: {text}");
        }
        let err = rotate(
            &store,
            SigningAlgorithm::ES256,
            1_750_000_000,
            Duration::from_secs(3600),
            Duration::from_secs(900),
        )
        .await
        .unwrap_err();
        assert!(clean(&err).contains(what), "{err}");
    }
    let writes: Vec<_> = fake
        .requests_to(path)
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert!(
        writes.is_empty(),
        "rotate wrote over a deleted ring: {writes:?}"
    );

    // A path that never existed (404, `{"errors": []}`) is still an empty ring.
    fake.set_route(route("GET", path, vec![not_found()]));
    let (ring, version) = store.load().await.unwrap();
    assert!(ring.keys.is_empty());
    assert_eq!(version, StoreVersion("0".into()));
}

/// `serve` with its keyring in KV v2 whose latest version gets deleted, then
/// destroyed: the last good ring keeps signing and stays published, `/readyz` names
/// the deletion and, once the last good read is older than `max_stale`, reports not
/// ready (as for an unreachable Vault); `keys list` and `keys rotate` exit 1 saying
/// so, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_keeps_the_last_good_ring_when_the_kv2_keyring_is_deleted() {
    use crate::harness::{ConfigTweaks, Issuers, SCOPES, TestSts, now, sts_files};
    use crate::process::{run, text};
    use crate::vault::eventually;
    use agent_sts::keys::signing_key::SigningKey;

    let path = "/v1/secret/data/agent-sts/signing-keys";
    let (key, pem) = SigningKey::generate(SigningAlgorithm::ES256).unwrap();
    let since = now() - 60;
    let ring = json!({"keys": [{
        "kid": key.kid,
        "alg": "ES256",
        "private_key": pem.expose(),
        "public_jwk": key.public_jwk,
        "created_at": since,
        "activates_at": since,
    }]});
    let fake = Fake::start(vec![
        route("GET", path, vec![ok(kv2_read(ring, 1))]),
        route("POST", path, vec![ok(kv2_written(2))]),
    ])
    .await;
    let issuers = Issuers::start().await;
    let extra = format!(
        "[vault]\naddress = \"{}\"\nkv_mount = \"secret\"\nkv_version = 2\nauth = \"token\"\ntoken_file = \"TOKEN_FILE\"\ntimeout = \"1s\"\nmax_stale = \"5s\"\n",
        fake.addr
    );
    let (dir, config) = sts_files(&issuers.specs(), SCOPES, &extra, ConfigTweaks::default());
    let token_file = dir.path().join("vault-token");
    crate::harness::write_secret_file(&token_file, ENV_TOKEN);
    let text_config = std::fs::read_to_string(&config)
        .unwrap()
        .replacen("store = \"file\"", "store = \"vault\"", 1)
        .replace("TOKEN_FILE", token_file.to_str().unwrap());
    std::fs::write(&config, text_config).unwrap();
    // Bootstraps with `keys rotate` (which reads the good ring and writes a `next`
    // key the fake does not keep), then serves the ring of version 1.
    let sts = TestSts::serve(dir, config).await;
    let subject = || issuers.k8s_token("triage");
    let kid_of =
        |r: &crate::harness::Reply| jsonwebtoken::decode_header(r.token()).unwrap().kid.unwrap();
    let first = sts.exchange_for(&subject(), "docs.read").await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(kid_of(&first), key.kid);
    let writes = || {
        fake.requests_to(path)
            .into_iter()
            .filter(|r| r.method == "POST")
            .count()
    };
    let written = writes();

    fake.set_route(route("GET", path, vec![kv2_deleted(3)]));
    let keyring = || async { sts.get("/readyz").await.json()["checks"]["keyring"].clone() };
    let noticed = eventually(5, || async {
        keyring()
            .await
            .as_str()
            .is_some_and(|k| k.contains("deleted") && k.contains("version 3"))
    })
    .await;
    assert!(noticed, "{}", keyring().await);
    let r = sts.exchange_for(&subject(), "docs.read").await;
    assert_eq!(r.status, 200, "the last good ring keeps signing: {r:?}");
    assert_eq!(kid_of(&r), key.kid);
    assert!(
        sts.get("/.well-known/jwks.json")
            .await
            .text
            .contains(&key.kid)
    );

    // Not the "empty ring" of old: the CLI refuses, naming the fix, writing nothing.
    let c = sts.config_path.to_str().unwrap();
    for command in ["list", "rotate"] {
        let out = run(&["keys", command, "--config", c], sts.dir.path());
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "keys {command}: {stderr}");
        assert!(
            stderr.contains("vault kv undelete -versions=3 secret/agent-sts/signing-keys"),
            "keys {command}: {stderr}"
        );
        assert!(!stderr.contains(ENV_TOKEN), "{stderr}");
    }
    assert_eq!(
        writes(),
        written,
        "keys rotate wrote over a deleted keyring"
    );

    // Past `max_stale` since the last good read: not ready, the reason still shown.
    let stale = eventually(10, || async { sts.get("/readyz").await.status == 503 }).await;
    assert!(stale);
    let ready = sts.get("/readyz").await.json();
    assert_eq!(
        ready["checks"]["signing_key"], "no active signing key",
        "{ready}"
    );
    assert!(
        ready["checks"]["keyring"]
            .as_str()
            .unwrap()
            .contains("deleted")
    );
    let r = sts.exchange_for(&subject(), "docs.read").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        sts.get("/.well-known/jwks.json")
            .await
            .text
            .contains(&key.kid)
    );

    // Destroyed: a new reason, shown at once.
    fake.set_route(route("GET", path, vec![kv2_destroyed(4)]));
    let destroyed = eventually(5, || async {
        keyring()
            .await
            .as_str()
            .is_some_and(|k| k.contains("destroyed") && k.contains("version 4"))
    })
    .await;
    assert!(destroyed, "{}", keyring().await);
}

/// For an integration credential, a deleted or destroyed latest version is simply
/// missing (the gate stays closed), as a credential that never existed.
#[tokio::test]
async fn a_deleted_or_destroyed_credential_is_missing() {
    let fake = Fake::start(vec![
        kv2_get("integrations/github", vec![kv2_deleted(2)]),
        kv2_get("integrations/slack", vec![kv2_destroyed(7)]),
    ])
    .await;
    let store = VaultSecretStore::new(fake.token_client(TIMEOUT));
    for path in [
        "integrations/github",
        "integrations/slack",
        "integrations/none",
    ] {
        assert!(store.read(path).await.unwrap().is_none(), "{path}");
    }
}

/// Vault documents 404 as "Invalid path" (e.g. a `kv_mount` that is not mounted:
/// "no handler for route ... route entry not found"). A write answered 404 stored
/// nothing, so `save` (and `keys rotate`) must fail, not report success.
#[tokio::test]
async fn kv2_write_answered_404_is_not_success() {
    let fake = Fake::start(vec![route(
        "POST",
        "/v1/secret/data/sts/signing-keys",
        vec![reply(
            404,
            errors(&[
                "no handler for route \"secret/data/sts/signing-keys\". route entry not found.",
            ]),
        )],
    )])
    .await;
    let store = VaultKeyStore::new(fake.token_client(TIMEOUT), KEYS_PATH);
    let ring: StoredRing = serde_json::from_value(ring_json()).unwrap();
    let saved = store.save(&ring, &StoreVersion("0".into())).await;
    assert_eq!(fake.log().len(), 1);
    assert!(
        saved.is_err(),
        "BUG (src/vault.rs, Vault::send maps 404 to Ok(Value::Null) for every method, \
         so kv_write/VaultKeyStore::save report success for a write Vault refused)"
    );
}

// ---------------------------------------------------------------------------------
// 2. KV v2 secret store.

#[tokio::test]
async fn kv2_secret_store_reads_disabled_deleted_and_missing() {
    let fake = Fake::start(vec![
        kv2_get(
            "integrations/github",
            vec![ok(kv2_read(
                json!({"header": "Authorization", "value": SECRET_VALUE, "disabled": true}),
                7,
            ))],
        ),
        kv2_get(
            "integrations/slack", // A version deleted with `kv delete` (soft delete): data is null.
            vec![ok({
                let mut v = kv2_read(Value::Null, 3);
                v["data"]["metadata"]["deletion_time"] = json!("2018-03-22T02:40:00.5Z");
                v
            })],
        ),
        kv2_get(
            "integrations/jira",
            vec![ok(kv2_read(json!({"value": SECRET_VALUE}), 1))],
        ),
    ])
    .await;
    let vault = fake.token_client(TIMEOUT);
    let store = VaultSecretStore::new(vault.clone());

    let github = store.read("integrations/github").await.unwrap().unwrap();
    assert!(github.disabled);
    assert_eq!(github.header, "Authorization");
    assert_eq!(github.value.expose(), SECRET_VALUE);
    clean_debug(&github);

    assert!(store.read("integrations/slack").await.unwrap().is_none());
    assert!(store.read("integrations/missing").await.unwrap().is_none());

    let jira = store.read("integrations/jira").await.unwrap().unwrap();
    assert!(!jira.disabled);
    assert_eq!(jira.header, "Authorization", "the default header");

    let log = fake.log();
    let paths: Vec<_> = log
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    assert_eq!(
        paths,
        [
            ("GET", "/v1/secret/data/integrations/github"),
            ("GET", "/v1/secret/data/integrations/slack"),
            ("GET", "/v1/secret/data/integrations/missing"),
            ("GET", "/v1/secret/data/integrations/jira"),
        ]
    );
    assert!(log.iter().all(|r| r.token.as_deref() == Some(ENV_TOKEN)));
    clean_debug(&store);
}

// ---------------------------------------------------------------------------------
// 3-4. AppRole and Kubernetes logins.

#[tokio::test]
async fn approle_logs_in_from_files_and_reads_with_the_client_token() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::start(vec![
        approle_login(vec![ok(auth_response(CLIENT_TOKEN, 3600, true))]),
        kv2_get(
            "integrations/github",
            vec![ok(kv2_read(json!({"value": SECRET_VALUE}), 1))],
        ),
    ])
    .await;
    let vault = approle_client(&fake, dir.path(), TIMEOUT);
    let store = VaultSecretStore::new(vault.clone());

    // Lazy: the first use logs in.
    let cred = store.read("integrations/github").await.unwrap().unwrap();
    assert_eq!(cred.value.expose(), SECRET_VALUE);
    // A second read reuses the session.
    store.read("integrations/github").await.unwrap().unwrap();

    let log = fake.log();
    assert_eq!(log.len(), 3, "{log:?}");
    assert_eq!(log[0].method, "POST");
    assert_eq!(log[0].path, "/v1/auth/approle/login");
    assert_eq!(log[0].token, None, "a login carries no token");
    assert_eq!(
        log[0].body,
        Some(json!({"role_id": ROLE_ID, "secret_id": SECRET_ID})),
        "trimmed file contents"
    );
    for read in &log[1..] {
        assert_eq!(read.path, "/v1/secret/data/integrations/github");
        assert_eq!(read.token.as_deref(), Some(CLIENT_TOKEN));
    }
    clean_debug(&vault);
}

#[tokio::test]
async fn kubernetes_login_sends_role_and_jwt_to_its_mount() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), JWT).unwrap();
    let fake = Fake::start(vec![
        route(
            "POST",
            "/v1/auth/k8s-prod/login",
            vec![ok(auth_response(CLIENT_TOKEN, 3600, true))],
        ),
        kv2_get(
            "integrations/github",
            vec![ok(kv2_read(json!({"value": SECRET_VALUE}), 1))],
        ),
    ])
    .await;
    let config = fake.config(
        VaultAuth::Kubernetes {
            mount: "k8s-prod".into(),
            role: "agent-sts".into(),
            token_file: dir.path().join("token"),
        },
        TIMEOUT,
    );
    let vault = Arc::new(Vault::new(&config, Some(VaultToken::new(ENV_TOKEN))).unwrap());
    vault.login(0).await.unwrap();
    let read = vault.kv_read("integrations/github").await.unwrap().unwrap();
    assert_eq!(read.0["value"], SECRET_VALUE);
    assert_eq!(read.1, Some(1));

    let log = fake.log();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(
        log[0].path, "/v1/auth/k8s-prod/login",
        "the mount is honoured"
    );
    assert_eq!(log[0].token, None);
    assert_eq!(log[0].body, Some(json!({"role": "agent-sts", "jwt": JWT})));
    assert_eq!(
        log[1].token.as_deref(),
        Some(CLIENT_TOKEN),
        "the login's token, not VAULT_TOKEN"
    );
    clean_debug(&vault);
}

// ---------------------------------------------------------------------------------
// 5. 403: one re-login, one retry, no storm.

#[tokio::test]
async fn forbidden_logs_in_again_once_and_retries_once() {
    let dir = tempfile::tempdir().unwrap();
    let read_path = "/v1/secret/data/integrations/github";
    let fake = Fake::start(vec![
        approle_login_twice(),
        route(
            "GET",
            read_path,
            vec![forbidden(), ok(kv2_read(json!({"value": SECRET_VALUE}), 4))],
        ),
    ])
    .await;
    let vault = approle_client(&fake, dir.path(), TIMEOUT);
    let (data, version) = vault.kv_read("integrations/github").await.unwrap().unwrap();
    assert_eq!(data["value"], SECRET_VALUE);
    assert_eq!(version, Some(4));

    let sent: Vec<_> = fake.log().into_iter().map(|r| (r.path, r.token)).collect();
    assert_eq!(
        sent,
        [
            ("/v1/auth/approle/login".to_string(), None),
            (read_path.to_string(), Some(CLIENT_TOKEN.to_string())),
            ("/v1/auth/approle/login".to_string(), None),
            (read_path.to_string(), Some(CLIENT_TOKEN_2.to_string())),
        ]
    );
}

#[tokio::test]
async fn a_second_forbidden_fails_with_forbidden() {
    let dir = tempfile::tempdir().unwrap();
    let read_path = "/v1/secret/data/integrations/github";
    let fake = Fake::start(vec![
        approle_login_twice(),
        route("GET", read_path, vec![forbidden()]),
    ])
    .await;
    let vault = approle_client(&fake, dir.path(), TIMEOUT);
    let err = vault.kv_read("integrations/github").await.unwrap_err();
    assert_eq!(err, VaultError::Forbidden);
    clean(&err);
    assert_eq!(fake.requests_to("/v1/auth/approle/login").len(), 2);
    let reads = fake.requests_to(read_path);
    assert_eq!(reads.len(), 2, "one retry only: {reads:?}");
    assert_eq!(reads[1].token.as_deref(), Some(CLIENT_TOKEN_2));

    // Through the secret store, at once: unavailable, and no third login (forced
    // logins are rate-limited globally), reason without secrets.
    let store = VaultSecretStore::new(vault.clone());
    let err = store.read("integrations/github").await.unwrap_err();
    assert!(clean(&err).contains("less than 10s ago"), "{err}");
    assert_eq!(fake.requests_to("/v1/auth/approle/login").len(), 2);

    // Token auth, a token lookup-self still accepts: the 403 is the policy's. No
    // login; the path is answered as denied from memory afterwards.
    let token_vault = fake.token_client(TIMEOUT);
    let before = fake.requests_to(read_path).len();
    for _ in 0..3 {
        let err = token_vault
            .kv_read("integrations/github")
            .await
            .unwrap_err();
        assert_eq!(
            err,
            VaultError::PermissionDenied {
                path: "secret/data/integrations/github".into()
            }
        );
        clean(&err);
    }
    let reads = fake.requests_to(read_path);
    assert_eq!(
        reads.len() - before,
        1,
        "one read, then the denial is known"
    );
    assert_eq!(reads[before].token.as_deref(), Some(ENV_TOKEN));
    let store = VaultSecretStore::new(token_vault);
    let err = store.read("integrations/github").await.unwrap_err();
    assert!(clean(&err).contains("policy denies"), "{err}");
}

#[tokio::test]
async fn concurrent_forbidden_reads_cause_one_login_when_vault_refuses_everything() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::start(vec![
        approle_login(vec![forbidden()]),
        kv2_get("integrations/github", vec![forbidden()]),
    ])
    .await;
    let vault = approle_client(&fake, dir.path(), TIMEOUT);
    let results = failed_concurrent_reads(&vault, 20).await;
    let logins = fake.requests_to("/v1/auth/approle/login").len();
    assert_eq!(logins, 1, "one login within the cooldown, not a storm");
    assert_eq!(
        fake.requests_to("/v1/secret/data/integrations/github")
            .len(),
        0
    );
    let failed = results.iter().filter(|e| **e == approle_refused()).count();
    let cooled = results
        .iter()
        .filter(|e| **e == VaultError::LoginCooldown)
        .count();
    assert_eq!((failed, cooled), (1, 19), "{results:?}");
    for e in &results {
        clean(e);
    }
    // Still within the cooldown: no new login.
    let err = vault.kv_read("integrations/github").await.unwrap_err();
    assert_eq!(err, VaultError::LoginCooldown);
    assert_eq!(fake.requests_to("/v1/auth/approle/login").len(), 1);
}

#[tokio::test]
async fn concurrent_forbidden_reads_cause_one_relogin() {
    let dir = tempfile::tempdir().unwrap();
    let read_path = "/v1/secret/data/integrations/github";
    let fake = Fake::start(vec![
        approle_login(
            // The first login works; then the secret_id has been revoked.
            vec![ok(auth_response(CLIENT_TOKEN, 3600, true)), forbidden()],
        ),
        route("GET", read_path, vec![forbidden()]),
    ])
    .await;
    let vault = approle_client(&fake, dir.path(), TIMEOUT);
    vault.login(0).await.unwrap(); // as at startup
    let results = failed_concurrent_reads(&vault, 20).await;
    assert_eq!(
        fake.requests_to("/v1/auth/approle/login").len(),
        2,
        "the startup login and ONE re-login for 20 requests that saw 403"
    );
    let reads = fake.requests_to(read_path);
    assert_eq!(reads.len(), 20, "no retry without a new token");
    assert!(
        reads
            .iter()
            .all(|r| r.token.as_deref() == Some(CLIENT_TOKEN))
    );
    for e in &results {
        assert!(
            *e == approle_refused()
                || *e == VaultError::LoginCooldown
                || *e == VaultError::LoginTooSoon,
            "{e:?}"
        );
        clean(e);
    }
}

// ---------------------------------------------------------------------------------
// 6. Retries within the budget.

#[tokio::test]
async fn server_errors_and_rate_limits_are_retried_within_the_budget() {
    let fake = Fake::start(vec![
        kv2_get(
            "a",
            vec![
                reply(500, errors(&["internal error"])),
                ok(kv2_read(json!({"value": "x"}), 1)),
            ],
        ),
        kv2_get(
            "b",
            vec![
                reply(
                    429,
                    errors(&["request path \"secret/data/b\": rate limit quota exceeded"]),
                ),
                ok(kv2_read(json!({"value": "x"}), 1)),
            ],
        ),
        kv2_get("c", vec![reply(500, errors(&["internal error"]))]),
    ])
    .await;
    let vault = fake.token_client(TIMEOUT);

    assert!(vault.kv_read("a").await.unwrap().is_some());
    assert_eq!(fake.requests_to("/v1/secret/data/a").len(), 2);
    assert!(vault.kv_read("b").await.unwrap().is_some());
    assert_eq!(fake.requests_to("/v1/secret/data/b").len(), 2);

    let start = Instant::now();
    let err = vault.kv_read("c").await.unwrap_err();
    let elapsed = start.elapsed();
    assert_eq!(err, VaultError::Status(500));
    clean(&err);
    let n = fake.requests_to("/v1/secret/data/c").len();
    assert!((2..=4).contains(&n), "bounded retries: {n}");
    assert!(elapsed < TIMEOUT, "{elapsed:?}");
}

#[tokio::test]
async fn sealed_is_not_retried() {
    let fake = Fake::start(vec![kv2_get(
        "a",
        vec![reply(503, errors(&["Vault is sealed"]))],
    )])
    .await;
    let vault = fake.token_client(TIMEOUT);
    let start = Instant::now();
    let err = vault.kv_read("a").await.unwrap_err();
    assert_eq!(err, VaultError::Sealed);
    clean(&err);
    assert_eq!(fake.requests_to("/v1/secret/data/a").len(), 1);
    assert!(start.elapsed() < TIMEOUT);

    let err = VaultKeyStore::new(vault, "a").load().await.unwrap_err();
    assert!(clean(&err).contains("sealed"), "{err}");
}

#[tokio::test]
async fn a_hanging_vault_fails_within_the_timeout() {
    let timeout = Duration::from_millis(800);
    let fake = Fake::start(vec![kv2_get(
        "a",
        vec![Reply {
            delay: Duration::from_secs(10),
            ..ok(kv2_read(json!({"value": "x"}), 1))
        }],
    )])
    .await;
    let vault = fake.token_client(timeout);
    let start = Instant::now();
    let err = vault.kv_read("a").await.unwrap_err();
    let elapsed = start.elapsed();
    assert_eq!(err, VaultError::Unavailable);
    assert!(
        elapsed < timeout + Duration::from_millis(300),
        "{elapsed:?}"
    );
    assert_eq!(fake.requests_to("/v1/secret/data/a").len(), 1);
}

/// The module promises one time budget per operation, retries included; the
/// re-login after a 403 is part of the operation but runs outside its deadline.
#[tokio::test]
async fn a_relogin_after_403_stays_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let timeout = Duration::from_millis(1000);
    let fake = Fake::start(vec![
        approle_login(vec![
            ok(auth_response(CLIENT_TOKEN, 3600, true)),
            Reply {
                delay: Duration::from_secs(5),
                ..ok(auth_response(CLIENT_TOKEN_2, 3600, true))
            },
        ]),
        kv2_get(
            "a",
            vec![Reply {
                delay: Duration::from_millis(600),
                ..forbidden()
            }],
        ),
    ])
    .await;
    let vault = approle_client(&fake, dir.path(), timeout);
    vault.login(0).await.unwrap();
    let start = Instant::now();
    let err = vault.kv_read("a").await.unwrap_err();
    let elapsed = start.elapsed();
    clean(&err);
    assert_eq!(fake.requests_to("/v1/auth/approle/login").len(), 2);
    assert!(
        elapsed < timeout + Duration::from_millis(300),
        "BUG (src/vault.rs, Vault::call: `self.login(session.generation).await?` after a \
         403 is not bounded by `deadline`): the operation took {elapsed:?} against a \
         {timeout:?} budget ({err:?})"
    );
}

// ---------------------------------------------------------------------------------
// 7. Renewal. RENEW_MIN is 5 s: a 6 s lease renews at max(4.2 s, 5 s) = 5 s, so these
// tests take ~5 s each (they run in parallel with the rest).

async fn wait_for(fake: &Fake, path: &str, count: usize, limit: Duration) -> Duration {
    let start = Instant::now();
    while fake.requests_to(path).len() < count {
        assert!(
            start.elapsed() < limit,
            "{path} not requested {count} times in {limit:?}: {:?}",
            fake.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

#[tokio::test]
async fn renewal_renews_self_with_the_current_token() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::start(vec![
        approle_login(vec![ok(auth_response(CLIENT_TOKEN, 6, true))]),
        route(
            "POST",
            "/v1/auth/token/renew-self",
            vec![ok(auth_response(CLIENT_TOKEN, 6, true))],
        ),
        kv2_get("a", vec![ok(kv2_read(json!({"value": "x"}), 1))]),
    ])
    .await;
    let vault = approle_client(&fake, dir.path(), TIMEOUT);
    vault.login(0).await.unwrap();
    vault.spawn_renewal();
    let waited = wait_for(
        &fake,
        "/v1/auth/token/renew-self",
        1,
        Duration::from_secs(8),
    )
    .await;
    assert!(
        waited >= Duration::from_millis(4500),
        "renewed too early: {waited:?}"
    );

    let renew = &fake.requests_to("/v1/auth/token/renew-self")[0];
    assert_eq!(renew.method, "POST");
    assert_eq!(renew.token.as_deref(), Some(CLIENT_TOKEN));
    assert_eq!(
        fake.requests_to("/v1/auth/approle/login").len(),
        1,
        "renewed, not re-logged in"
    );

    vault.kv_read("a").await.unwrap().unwrap();
    let reads = fake.requests_to("/v1/secret/data/a");
    assert_eq!(reads[0].token.as_deref(), Some(CLIENT_TOKEN));
}

#[tokio::test]
async fn failed_renewal_logs_in_again() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::start(vec![
        approle_login(vec![
            ok(auth_response(CLIENT_TOKEN, 6, true)),
            ok(auth_response(CLIENT_TOKEN_2, 3600, true)),
        ]),
        route(
            "POST",
            "/v1/auth/token/renew-self", // Past the token's max TTL.
            vec![forbidden()],
        ),
        kv2_get("a", vec![ok(kv2_read(json!({"value": "x"}), 1))]),
    ])
    .await;
    let vault = approle_client(&fake, dir.path(), TIMEOUT);
    vault.login(0).await.unwrap();
    vault.spawn_renewal();
    wait_for(&fake, "/v1/auth/approle/login", 2, Duration::from_secs(8)).await;
    let renews = fake.requests_to("/v1/auth/token/renew-self");
    assert_eq!(renews.len(), 1);
    assert_eq!(renews[0].token.as_deref(), Some(CLIENT_TOKEN));

    // The login request has arrived; its answer may still be on the way back:
    // poll (bounded) until reads carry the new token.
    let mut latest = None;
    for _ in 0..40 {
        vault.kv_read("a").await.unwrap().unwrap();
        latest = fake
            .requests_to("/v1/secret/data/a")
            .last()
            .and_then(|r| r.token.clone());
        if latest.as_deref() == Some(CLIENT_TOKEN_2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(latest.as_deref(), Some(CLIENT_TOKEN_2), "the new token");
}

#[tokio::test]
async fn a_non_renewable_lease_is_replaced_by_a_login() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::start(vec![approle_login(vec![
        ok(auth_response(CLIENT_TOKEN, 6, false)),
        ok(auth_response(CLIENT_TOKEN_2, 3600, false)),
    ])])
    .await;
    let vault = approle_client(&fake, dir.path(), TIMEOUT);
    vault.login(0).await.unwrap();
    vault.spawn_renewal();
    wait_for(&fake, "/v1/auth/approle/login", 2, Duration::from_secs(8)).await;
    assert!(
        fake.requests_to("/v1/auth/token/renew-self").is_empty(),
        "a non-renewable token is not renewed"
    );
}

// ---------------------------------------------------------------------------------
// 8. Nothing secret prints.

#[tokio::test]
async fn no_error_nor_the_client_prints_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwt"), JWT).unwrap();
    let fake = Fake::start(vec![
        approle_login(vec![ok(auth_response(CLIENT_TOKEN, 3600, true))]),
        kv2_get(
            "garbled",
            vec![Reply {
                status: 200,
                body: format!("{{\"data\": {{\"value\": \"{SECRET_VALUE}\" {CLIENT_TOKEN}"),
                delay: Duration::ZERO,
            }],
        ),
        kv2_get(
            "wrong-shape",
            vec![ok(json!({"data": {"data": [SECRET_VALUE, CLIENT_TOKEN]}}))],
        ),
        kv2_get(
            "bad-header",
            vec![ok(kv2_read(
                json!({"header": format!("X {SECRET_VALUE}"), "value": SECRET_VALUE}),
                1,
            ))],
        ),
        kv2_get(
            "bad-ring",
            vec![ok(kv2_read(
                json!({"keys": [], SECRET_VALUE: PLANTED_KEY}),
                1,
            ))],
        ),
        kv2_get(
            "sealed",
            vec![reply(503, errors(&["Vault is sealed", CLIENT_TOKEN]))],
        ),
        kv2_get(
            "broken",
            vec![reply(500, errors(&["internal error", SECRET_VALUE]))],
        ),
        kv2_get("limited", vec![reply(429, errors(&[SECRET_VALUE]))]),
        kv2_get(
            "denied",
            vec![reply(403, errors(&["permission denied", SECRET_ID]))],
        ),
        route(
            "POST",
            "/v1/auth/k8s/login",
            vec![reply(400, errors(&["invalid role name", JWT]))],
        ),
    ])
    .await;
    let vault = approle_client(&fake, dir.path(), TIMEOUT);
    let mut printed: Vec<String> = Vec::new();
    let mut record = |s: String| printed.push(s);

    for path in [
        "garbled",
        "wrong-shape",
        "sealed",
        "broken",
        "limited",
        "denied",
    ] {
        let e = vault.kv_read(path).await.unwrap_err();
        record(clean(&e));
    }
    let secrets = VaultSecretStore::new(vault.clone());
    for path in ["garbled", "bad-header", "sealed"] {
        let e = secrets.read(path).await.unwrap_err();
        record(clean(&e));
    }
    let keys = VaultKeyStore::new(vault.clone(), "bad-ring");
    record(clean(&keys.load().await.unwrap_err()));
    let keys = VaultKeyStore::new(vault.clone(), "garbled");
    record(clean(&keys.load().await.unwrap_err()));

    // Login failures: a refused Kubernetes login, a missing credential file, no token,
    // an unreachable Vault, the cooldown after a failure.
    let k8s = fake.config(
        VaultAuth::Kubernetes {
            mount: "k8s".into(),
            role: "agent-sts".into(),
            token_file: dir.path().join("jwt"),
        },
        TIMEOUT,
    );
    let k8s = Vault::new(&k8s, None).unwrap();
    let e = k8s.login(0).await.unwrap_err();
    // Vault's refusal of the login itself names the method, mount and role.
    assert_eq!(
        e,
        VaultError::Login(Box::new(VaultError::LoginRefused {
            method: "kubernetes",
            mount: "k8s".into(),
            role: Some("agent-sts".into()),
        }))
    );
    assert!(e.to_string().contains("for role agent-sts"), "{e}");
    record(clean(&e));
    let e = k8s.login(0).await.unwrap_err();
    assert_eq!(e, VaultError::LoginCooldown);
    record(clean(&e));
    clean_debug(&k8s);

    let missing = fake.config(
        VaultAuth::AppRole {
            mount: "approle".into(),
            role_id_file: dir.path().join("role-id"),
            secret_id_file: dir.path().join("no-such-file"),
        },
        TIMEOUT,
    );
    let e = Vault::new(&missing, None)
        .unwrap()
        .login(0)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, VaultError::Login(inner) if matches!(**inner, VaultError::CredentialFile { .. })),
        "{e:?}"
    );
    record(clean(&e));

    let no_token = fake.config(VaultAuth::Token { token_file: None }, TIMEOUT);
    let e = Vault::new(&no_token, None)
        .unwrap()
        .kv_read("a")
        .await
        .unwrap_err();
    assert_eq!(e, VaultError::Login(Box::new(VaultError::NoToken)));
    record(clean(&e));

    let closed = crate::harness::closing_server().await;
    let mut down = fake.config(approle(dir.path()), Duration::from_millis(500));
    down.address = format!("http://{closed}");
    let down = Vault::new(&down, None).unwrap();
    let e = down.kv_read("a").await.unwrap_err();
    assert_eq!(e, VaultError::Login(Box::new(VaultError::Unavailable)));
    record(clean(&e));
    clean_debug(&down);

    let malformed_login = Fake::start(vec![approle_login(vec![ok(
        json!({"auth": {"client_token": 7, "accessor": CLIENT_TOKEN}}),
    )])])
    .await;
    let e = approle_client(&malformed_login, dir.path(), TIMEOUT)
        .login(0)
        .await
        .unwrap_err();
    assert_eq!(e, VaultError::Login(Box::new(VaultError::Malformed)));
    record(clean(&e));

    // The logged-in client itself, and its stores.
    clean_debug(&vault);
    clean_debug(&secrets);
    clean_debug(&keys);
    assert!(format!("{vault:?}").contains("[redacted]"));
    assert!(printed.len() >= 15, "{printed:?}");
}

/// What a login Vault refuses (403) with AppRole at `auth/approle` is.
fn approle_refused() -> VaultError {
    VaultError::Login(Box::new(VaultError::LoginRefused {
        method: "approle",
        mount: "approle".into(),
        role: None,
    }))
}
