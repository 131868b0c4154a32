//! Fixtures the agent-sts integration tests (`tests/it/`) and benchmarks (`benches/`)
//! share, so neither re-implements the other: the OAuth constants, the committed test
//! keys of `keys/test/`, request forms, throwaway servers on `127.0.0.1:0`, and a
//! workload issuer ([`TestIssuer`]) that signs tokens with a fixture key and serves its
//! JWKS, with a switch to make that endpoint fail. Test code: it panics on any error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

/// RFC 8693 §2.1 `grant_type`.
pub const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 §3 token type of a JWT subject or actor token.
pub const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A file of `keys/test/` (committed fixtures, with the script that regenerates them).
pub fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../keys/test")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Writes a file of secrets (a secrets store, a Vault token or AppRole file) with mode
/// 0600, as an operator must: agent-sts refuses to start on one others can read.
pub fn write_secret_file(path: &Path, contents: impl AsRef<[u8]>) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Unpadded base64url.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `s` with its last character changed (a tampered signature that always differs).
pub fn flip_last(s: &str) -> String {
    let last = if s.ends_with('A') { "B" } else { "A" };
    format!("{}{last}", &s[..s.len() - 1])
}

/// An `application/x-www-form-urlencoded` body of `params`, in order.
pub fn form(params: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        s.append_pair(k, v);
    }
    s.finish()
}

/// The form of a plain token exchange of `subject_token` for `scope`.
pub fn exchange_form(subject_token: &str, scope: &str) -> String {
    form(&[
        ("grant_type", GRANT),
        ("subject_token", subject_token),
        ("subject_token_type", JWT_TYPE),
        ("scope", scope),
    ])
}

/// An STS configuration on the file stores of `dir` (keys in `dir/keys`, secrets in
/// `dir/secrets.toml`, the catalogue in `dir/scopes`), issuing as `issuer` and
/// listening on 127.0.0.1:0, the keyring re-read every `refresh_interval`, the audit
/// log at `audit_path`; `extra` (more sections: `[limits]`, `[[trust]]`, ...) follows.
pub fn sts_config_toml(
    issuer: &str,
    dir: &Path,
    refresh_interval: &str,
    audit_path: &str,
    extra: &str,
) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
issuer = "{issuer}"
scopes_dir = "{dir}/scopes"

[tokens]
max_ttl = "15m"

[keys]
store = "file"
dir = "{dir}/keys"
refresh_interval = "{refresh_interval}"
publish_lead = "10m"
jwks_max_age = "5m"

[secrets]
store = "file"
file = "{dir}/secrets.toml"

[audit]
path = "{audit_path}"
{extra}
"#,
        dir = dir.display()
    )
}

/// Serves `router` on 127.0.0.1:0 on the current runtime; returns its address.
pub async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    addr
}

/// A server that accepts every connection and closes it at once: an upstream or Vault
/// that is down. (A port that was bound and released instead could be taken by another
/// test's server meanwhile, which would then receive the request.)
pub async fn closing_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((connection, _)) = listener.accept().await {
            drop(connection);
        }
    });
    addr
}

/// What a JWKS endpoint does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwksMode {
    Serve,
    Fail,
    Garbage,
}

/// A JWKS endpoint (`/jwks.json`) that counts its fetches and can be made to fail.
#[derive(Clone)]
pub struct JwksServer {
    pub uri: String,
    shared: Arc<JwksShared>,
}

struct JwksShared {
    jwks: Mutex<Value>,
    mode: Mutex<JwksMode>,
    fetches: AtomicUsize,
}

impl JwksServer {
    /// Serves `jwks` (a JWK set document) on 127.0.0.1:0.
    pub async fn start(jwks: Value) -> JwksServer {
        let shared = Arc::new(JwksShared {
            jwks: Mutex::new(jwks),
            mode: Mutex::new(JwksMode::Serve),
            fetches: AtomicUsize::new(0),
        });
        let router = axum::Router::new()
            .route("/jwks.json", get(serve_jwks))
            .with_state(shared.clone());
        let addr = serve(router).await;
        JwksServer {
            uri: format!("http://{addr}/jwks.json"),
            shared,
        }
    }

    pub fn fetches(&self) -> usize {
        self.shared.fetches.load(Ordering::SeqCst)
    }

    pub fn set_mode(&self, mode: JwksMode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    pub fn set_jwks(&self, jwks: Value) {
        *self.shared.jwks.lock().unwrap() = jwks;
    }

    /// The JWK set document it serves in [`JwksMode::Serve`].
    pub fn jwks(&self) -> Value {
        self.shared.jwks.lock().unwrap().clone()
    }
}

async fn serve_jwks(State(s): State<Arc<JwksShared>>) -> Response {
    s.fetches.fetch_add(1, Ordering::SeqCst);
    let mode = *s.mode.lock().unwrap();
    match mode {
        JwksMode::Serve => axum::Json(s.jwks.lock().unwrap().clone()).into_response(),
        JwksMode::Fail => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        JwksMode::Garbage => "{\"keys\": 7".into_response(),
    }
}

/// A workload issuer: signs tokens with a fixture key, serves its JWKS.
pub struct TestIssuer {
    pub iss: String,
    pub jwks_uri: String,
    pub alg: Algorithm,
    pub kid: String,
    /// The audience its standard claims name (the STS under test).
    pub audience: String,
    key: EncodingKey,
    jwks: JwksServer,
}

impl TestIssuer {
    /// An issuer `iss` signing with fixture `pem` under `alg` (RS256 or ES256), whose
    /// standard tokens are for `audience`.
    pub async fn start(iss: &str, pem: &str, alg: Algorithm, audience: &str) -> TestIssuer {
        let bytes = fixture(pem);
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&bytes).unwrap(),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&bytes).unwrap(),
            other => panic!("unsupported fixture alg {other:?}"),
        };
        let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
        let kid = format!("{}-key-1", pem.trim_end_matches(".pem"));
        jwk.common.key_id = Some(kid.clone());
        let jwks = JwksServer::start(json!({ "keys": [jwk] })).await;
        TestIssuer {
            iss: iss.to_string(),
            jwks_uri: jwks.uri.clone(),
            alg,
            kid,
            audience: audience.to_string(),
            key,
            jwks,
        }
    }

    pub fn fetches(&self) -> usize {
        self.jwks.fetches()
    }

    pub fn set_mode(&self, mode: JwksMode) {
        self.jwks.set_mode(mode);
    }

    /// The JWK set its endpoint serves (at start, its one key under [`TestIssuer::kid`]).
    pub fn jwks(&self) -> Value {
        self.jwks.jwks()
    }

    /// Serves `jwks` from now on (the issuer drops, adds or swaps keys).
    pub fn set_jwks(&self, jwks: Value) {
        self.jwks.set_jwks(jwks);
    }

    /// Standard good claims for `sub`: this issuer, the audience, ten minutes.
    pub fn claims(&self, sub: &str) -> Value {
        let n = now();
        json!({"iss": self.iss, "sub": sub, "aud": [self.audience], "iat": n, "nbf": n, "exp": n + 600})
    }

    pub fn header(&self) -> Value {
        json!({"alg": alg_name(self.alg), "kid": self.kid, "typ": "JWT"})
    }

    /// Signs `claims` under the standard header.
    pub fn token(&self, claims: &Value) -> String {
        self.token_with_header(&self.header(), claims)
    }

    /// Signs `claims` under an arbitrary `header`, with this issuer's key and alg.
    pub fn token_with_header(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &self.key, self.alg).unwrap();
        format!("{input}.{sig}")
    }

    /// A good token for `sub`.
    pub fn token_for(&self, sub: &str) -> String {
        self.token(&self.claims(sub))
    }
}

/// The JOSE name of `alg`.
pub fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        Algorithm::EdDSA => "EdDSA",
        _ => "other",
    }
}

/// An agent runtime's DPoP key (RFC 9449): a fresh P-256 (ES256, the default) or
/// Ed25519 (EdDSA) key that signs proofs.
pub struct DpopKey {
    pair: DpopPair,
}

enum DpopPair {
    Es256(aws_lc_rs::signature::EcdsaKeyPair),
    EdDsa(aws_lc_rs::signature::Ed25519KeyPair),
}

impl Default for DpopKey {
    fn default() -> Self {
        Self::new()
    }
}

impl DpopKey {
    /// A fresh P-256 key (ES256).
    pub fn new() -> DpopKey {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        DpopKey {
            pair: DpopPair::Es256(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap(),
            ),
        }
    }

    /// A fresh Ed25519 key (EdDSA).
    pub fn ed25519() -> DpopKey {
        DpopKey {
            pair: DpopPair::EdDsa(aws_lc_rs::signature::Ed25519KeyPair::generate().unwrap()),
        }
    }

    /// The JOSE `alg` of the proofs this key signs.
    pub fn alg(&self) -> &'static str {
        match self.pair {
            DpopPair::Es256(_) => "ES256",
            DpopPair::EdDsa(_) => "EdDSA",
        }
    }

    /// The public JWK (`kty`, `crv`, `x`, `y`; or `kty`, `crv`, `x` for Ed25519).
    pub fn jwk(&self) -> serde_json::Value {
        use aws_lc_rs::signature::KeyPair;
        match &self.pair {
            DpopPair::Es256(pair) => {
                let p = pair.public_key().as_ref();
                serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(&p[1..33]), "y": b64(&p[33..65])})
            }
            DpopPair::EdDsa(pair) => {
                serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref())})
            }
        }
    }

    /// The RFC 7638 thumbprint of [`DpopKey::jwk`]: what `cnf.jkt` must be.
    pub fn thumbprint(&self) -> String {
        let jwk = self.jwk();
        let x = jwk["x"].as_str().unwrap();
        let canonical = match &self.pair {
            DpopPair::Es256(_) => format!(
                r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{}"}}"#,
                jwk["y"].as_str().unwrap()
            ),
            DpopPair::EdDsa(_) => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#),
        };
        b64(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes()).as_ref())
    }

    /// Signs `header` and `claims` as given (for malformed proofs).
    pub fn sign(&self, header: &serde_json::Value, claims: &serde_json::Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = match &self.pair {
            DpopPair::Es256(pair) => {
                let rng = aws_lc_rs::rand::SystemRandom::new();
                pair.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec()
            }
            DpopPair::EdDsa(pair) => pair.sign(input.as_bytes()).as_ref().to_vec(),
        };
        format!("{input}.{}", b64(&signature))
    }

    /// The standard header: `typ` `dpop+jwt`, the key's `alg`, the public `jwk`.
    pub fn header(&self) -> serde_json::Value {
        serde_json::json!({"typ": "dpop+jwt", "alg": self.alg(), "jwk": self.jwk()})
    }

    /// The standard claims for `method` `url` now, with a fresh `jti`, and `ath` for
    /// `access_token` and `nonce` when given.
    pub fn claims(
        &self,
        method: &str,
        url: &str,
        access_token: Option<&str>,
        nonce: Option<&str>,
    ) -> serde_json::Value {
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti).unwrap();
        let mut claims = serde_json::json!({
            "jti": b64(&jti), "htm": method, "htu": url, "iat": now(),
        });
        if let Some(token) = access_token {
            claims["ath"] = serde_json::json!(b64(aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                token.as_bytes()
            )
            .as_ref()));
        }
        if let Some(nonce) = nonce {
            claims["nonce"] = serde_json::json!(nonce);
        }
        claims
    }

    /// A valid proof for `method` `url` (and `access_token`, `nonce`).
    pub fn proof(
        &self,
        method: &str,
        url: &str,
        access_token: Option<&str>,
        nonce: Option<&str>,
    ) -> String {
        self.sign(
            &self.header(),
            &self.claims(method, url, access_token, nonce),
        )
    }
}
