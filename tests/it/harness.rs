//! Real parts for the integration tests: the standard fake workload issuers (the
//! shared `agent-sts-testkit` issuers, fixture keys from `keys/test/`), the standard
//! catalogue and secrets, and an STS built from a configuration written to a temp dir,
//! serving real HTTP on 127.0.0.1:0.

use std::path::{Path, PathBuf};

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

pub use agent_sts_testkit::{
    GRANT, JWT_TYPE, JwksMode, TestIssuer, alg_name, b64, closing_server, exchange_form, fixture,
    flip_last, form, now, serve, sts_config_toml, write_secret_file,
};

/// The STS under test: `iss` of its tokens, the audience of workload tokens.
pub const STS_ISSUER: &str = "https://sts.test.example";

/// Serves `router` on 127.0.0.1:0; returns its base URL.
pub async fn spawn_router(router: axum::Router) -> String {
    format!("http://{}", serve(router).await)
}

/// The example catalogue used by most tests.
pub const SCOPES: &str = r#"
[[action]]
name = "github.issues.create"
audience = "https://github-shim.internal"
ttl = "5m"
agents = ["spiffe://example.org/agent/triage", "k8s-prod:system:serviceaccount:agents:triage"]
delegation = "optional"
subjects = ["corp-idp:*@example.org"]
credential = "integrations/github"

[action.request]
method = "POST"
path = "/repos/{owner}/{repo}/issues"
headers = ["X-GitHub-Api-Version"]

[[action]]
name = "salesforce.opportunity.update"
audience = "https://salesforce-shim.internal"
ttl = "2m"
agents = ["k8s-prod:system:serviceaccount:agents:*"]
delegation = "required"
subjects = ["corp-idp:*@sales.example.org"]
credential = "integrations/salesforce"

[[action]]
name = "docs.read"
audience = "https://docs.internal"
ttl = "30m"
agents = ["k8s-prod:system:serviceaccount:agents:*", "ci:repo:example/agent-sts:*"]

[[action]]
name = "slack.message.post"
audience = "https://slack-shim.internal"
ttl = "1m"
agents = ["k8s-prod:system:serviceaccount:agents:*"]
credential = "integrations/slack"

[action.request]
method = "POST"
path = "/api/chat.postMessage"

[[action]]
name = "disabled.thing"
audience = "https://disabled.internal"
ttl = "1m"
agents = ["k8s-prod:system:serviceaccount:agents:*"]
credential = "integrations/disabled"

[action.request]
method = "GET"
path = "/thing"

[[action]]
name = "missing.thing"
audience = "https://missing.internal"
ttl = "1m"
agents = ["k8s-prod:system:serviceaccount:agents:*"]
credential = "integrations/missing"

[action.request]
method = "GET"
path = "/thing"
"#;

/// A canary planted in the secret store: must never appear in any output.
pub const CANARY_CREDENTIAL: &str = "Bearer ghp_CANARY0secret0value0d41d8cd98f00b204e980";

pub fn secrets_toml() -> String {
    format!(
        r#"
[secret."integrations/github"]
header = "Authorization"
value = "{CANARY_CREDENTIAL}"

[secret."integrations/salesforce"]
header = "Authorization"
value = "Bearer sf-CANARY-salesforce-0123456789"

[secret."integrations/slack"]
header = "Authorization"
value = "Bearer xoxb-CANARY-slack-0123456789"

[secret."integrations/disabled"]
header = "Authorization"
value = "Bearer CANARY-disabled-0123456789"
disabled = true
"#
    )
}

/// A trust to configure: name, issuer, SPIFFE domains.
pub struct TrustSpec<'a> {
    pub name: &'a str,
    pub issuer: &'a TestIssuer,
    pub domains: &'a [&'a str],
}

/// What a test can change in the generated configuration beyond `extra` (which
/// lands inside `[audit]` and may open further sections).
#[derive(Clone, Copy, Debug, Default)]
pub struct ConfigTweaks<'a> {
    /// Lines appended to every `[[trust]]` table (e.g. `jwks_max_stale = "3s"`).
    pub trust_lines: &'a str,
    /// The audit log path, instead of `audit.log` in the temp dir.
    pub audit_path: Option<&'a str>,
}

/// Builds a configuration file for `trusts` in `dir`.
pub fn config_toml(dir: &Path, trusts: &[TrustSpec], extra: &str) -> String {
    config_toml_with(dir, trusts, extra, ConfigTweaks::default())
}

/// [`config_toml`] with `tweaks` applied.
pub fn config_toml_with(
    dir: &Path,
    trusts: &[TrustSpec],
    extra: &str,
    tweaks: ConfigTweaks,
) -> String {
    let audit_path = match tweaks.audit_path {
        Some(p) => p.to_string(),
        None => format!("{}/audit.log", dir.display()),
    };
    let mut text = sts_config_toml(STS_ISSUER, dir, "1s", &audit_path, extra);
    for t in trusts {
        let domains: Vec<String> = t.domains.iter().map(|d| format!("{d:?}")).collect();
        text.push_str(&format!(
            "\n[[trust]]\nname = \"{}\"\nissuer = \"{}\"\njwks_uri = \"{}\"\nalgorithms = [\"{}\"]\nspiffe_trust_domains = [{}]\n{}\n",
            t.name,
            t.issuer.iss,
            t.issuer.jwks_uri,
            alg_name(t.issuer.alg),
            domains.join(", "),
            tweaks.trust_lines
        ));
    }
    text
}

/// The claims of a JWT, unverified (for looking at what was minted).
pub fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    let bytes =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// A response, with the parts tests look at.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    /// Every `WWW-Authenticate` value.
    pub fn challenges(&self) -> Vec<String> {
        self.headers
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or("").to_string()
    }

    pub fn token(&self) -> String {
        self.json()["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Every `/token` answer: `Cache-Control: no-store`, `Pragma: no-cache`.
    pub fn assert_no_store(&self) {
        assert_eq!(
            self.headers
                .get("cache-control")
                .map(|v| v.to_str().unwrap()),
            Some("no-store"),
            "{self:?}"
        );
        assert_eq!(
            self.headers.get("pragma").map(|v| v.to_str().unwrap()),
            Some("no-cache"),
            "{self:?}"
        );
    }

    /// An RFC 6749 §5.2 error with this status and code, and a body that never echoes
    /// the given inputs.
    pub fn assert_error(&self, status: u16, code: &str, never: &[&str]) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.error(), code, "{self:?}");
        assert!(self.json()["error_description"].is_string(), "{self:?}");
        self.assert_no_store();
        for n in never {
            assert!(!self.text.contains(n), "response echoes input: {self:?}");
        }
    }
}

/// The STS under test.
pub struct TestSts {
    pub url: String,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub client: reqwest::Client,
}

impl TestSts {
    /// Writes config, scopes and secrets to a temp dir, bootstraps a key, and serves.
    pub async fn start(trusts: &[TrustSpec<'_>], scopes: &str, extra_config: &str) -> TestSts {
        Self::start_with(trusts, scopes, extra_config, ConfigTweaks::default()).await
    }

    /// [`TestSts::start`] with [`ConfigTweaks`].
    pub async fn start_with(
        trusts: &[TrustSpec<'_>],
        scopes: &str,
        extra_config: &str,
        tweaks: ConfigTweaks<'_>,
    ) -> TestSts {
        let (dir, config_path) = sts_files(trusts, scopes, extra_config, tweaks);
        TestSts::serve(dir, config_path).await
    }

    /// Serves the configuration at `config_path` (kept in `dir`) in-process on
    /// 127.0.0.1:0, after bootstrapping a key.
    pub async fn serve(dir: tempfile::TempDir, config_path: PathBuf) -> TestSts {
        let app = Self::bootstrap(&config_path).await;
        Self::serve_app(dir, config_path, app).await
    }

    /// Like [`TestSts::serve`], the key bootstrapped with `rotate_config` (the
    /// operator's credentials) and the STS built from `config_path` (its own).
    pub async fn serve_rotated_by(
        dir: tempfile::TempDir,
        config_path: PathBuf,
        rotate_config: &Path,
    ) -> TestSts {
        drop(Self::bootstrap(rotate_config).await);
        let env = std::collections::BTreeMap::new();
        let config = agent_sts::config::Config::load(&config_path, &env).unwrap();
        let app = agent_sts::sts::build(&config).await.unwrap();
        Self::serve_app(dir, config_path, app).await
    }

    /// Another replica: builds and serves the configuration at `config_path` (kept in
    /// `dir`), whose keys are already in its store.
    pub async fn replica(dir: tempfile::TempDir, config_path: PathBuf) -> TestSts {
        let env = std::collections::BTreeMap::new();
        let config = agent_sts::config::Config::load(&config_path, &env).unwrap();
        let app = agent_sts::sts::build(&config).await.unwrap();
        Self::serve_app(dir, config_path, app).await
    }

    async fn serve_app(
        dir: tempfile::TempDir,
        config_path: PathBuf,
        app: agent_sts::sts::App,
    ) -> TestSts {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = app.serve(listener, None).await;
        });
        TestSts {
            url,
            dir,
            config_path,
            client: reqwest::Client::new(),
        }
    }

    /// The STS of the standard catalogue for `trusts`, built (a key bootstrapped) but
    /// not served: for `oneshot` router tests. Keep the directory alive.
    pub async fn app(trusts: &[TrustSpec<'_>]) -> (tempfile::TempDir, agent_sts::sts::App) {
        let (dir, config_path) = sts_files(trusts, SCOPES, "", ConfigTweaks::default());
        let app = Self::bootstrap(&config_path).await;
        (dir, app)
    }

    /// Loads the configuration at `config_path`, bootstraps a key in its key store
    /// (file or Vault) with `keys rotate`, and builds the STS.
    async fn bootstrap(config_path: &Path) -> agent_sts::sts::App {
        let env = std::collections::BTreeMap::new();
        let config = agent_sts::config::Config::load(config_path, &env).unwrap();
        let stores = agent_sts::store::open(&config).await.unwrap();
        agent_sts::keys::rotate(
            stores.keys.stored().unwrap().as_ref(),
            config.tokens.algorithm,
            now(),
            config.keys.publish_lead,
            config.tokens.max_ttl,
        )
        .await
        .unwrap();
        agent_sts::sts::build(&config).await.unwrap()
    }

    /// The standard three trusts: k8s-prod (RS256), spire (ES256, example.org),
    /// corp-idp (ES256), with the standard catalogue.
    pub async fn standard() -> (TestSts, Issuers) {
        let issuers = Issuers::start().await;
        let sts = TestSts::start(&issuers.specs(), SCOPES, "").await;
        (sts, issuers)
    }

    pub fn audit_path(&self) -> PathBuf {
        self.dir.path().join("audit.log")
    }

    /// POSTs a form to `/token`.
    pub async fn exchange(&self, params: &[(&str, &str)]) -> Reply {
        let body = form(params);
        self.post("/token", "application/x-www-form-urlencoded", body)
            .await
    }

    /// POSTs a raw body.
    pub async fn post(&self, path: &str, content_type: &str, body: String) -> Reply {
        let r = self
            .client
            .post(format!("{}{path}", self.url))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        reply(r).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        reply(
            self.client
                .get(format!("{}{path}", self.url))
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// A delegated exchange: `actor` acting for `subject`, for `scope`.
    pub async fn exchange_delegated(&self, subject: &str, actor: &str, scope: &str) -> Reply {
        self.exchange(&[
            ("grant_type", GRANT),
            ("subject_token", subject),
            ("subject_token_type", JWT_TYPE),
            ("actor_token", actor),
            ("actor_token_type", JWT_TYPE),
            ("scope", scope),
        ])
        .await
    }

    /// A plain exchange of `subject` for `scope`.
    pub async fn exchange_for(&self, subject: &str, scope: &str) -> Reply {
        self.exchange(&[
            ("grant_type", GRANT),
            ("subject_token", subject),
            ("subject_token_type", JWT_TYPE),
            ("scope", scope),
        ])
        .await
    }
}

pub async fn reply(r: reqwest::Response) -> Reply {
    Reply {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        text: r.text().await.unwrap(),
    }
}

/// POSTs `body` as a form to `url`.
pub async fn post_form(url: &str, body: String) -> Reply {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    reply(r).await
}

/// A directory with the standard catalogue, secrets and a configuration for
/// `issuers` (no keys yet): what `agent-sts serve --config` needs.
pub fn sts_dir(issuers: &Issuers) -> (tempfile::TempDir, PathBuf) {
    sts_files(&issuers.specs(), SCOPES, "", ConfigTweaks::default())
}

/// A temp dir holding `scopes/test.toml` (`scopes`), `secrets.toml` and
/// `agent-sts.toml` for `trusts`; returns it and the configuration's path.
pub fn sts_files(
    trusts: &[TrustSpec<'_>],
    scopes: &str,
    extra_config: &str,
    tweaks: ConfigTweaks<'_>,
) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("scopes")).unwrap();
    std::fs::write(dir.path().join("scopes/test.toml"), scopes).unwrap();
    write_secret_file(&dir.path().join("secrets.toml"), secrets_toml());
    let config_path = dir.path().join("agent-sts.toml");
    let config = config_toml_with(dir.path(), trusts, extra_config, tweaks);
    std::fs::write(&config_path, config).unwrap();
    (dir, config_path)
}

/// The standard fake issuers.
pub struct Issuers {
    pub k8s: TestIssuer,
    pub spire: TestIssuer,
    pub idp: TestIssuer,
    pub ci: TestIssuer,
}

impl Issuers {
    pub async fn start() -> Issuers {
        Issuers {
            k8s: TestIssuer::start(
                "https://kubernetes.default.svc",
                "k8s-rs256.pem",
                Algorithm::RS256,
                STS_ISSUER,
            )
            .await,
            spire: TestIssuer::start(
                "https://spire.example.org",
                "spire-es256.pem",
                Algorithm::ES256,
                STS_ISSUER,
            )
            .await,
            idp: TestIssuer::start(
                "https://idp.example.org",
                "idp-es256.pem",
                Algorithm::ES256,
                STS_ISSUER,
            )
            .await,
            ci: TestIssuer::start(
                "https://token.actions.githubusercontent.com",
                "ci-rs256.pem",
                Algorithm::RS256,
                STS_ISSUER,
            )
            .await,
        }
    }

    pub fn specs(&self) -> Vec<TrustSpec<'_>> {
        vec![
            TrustSpec {
                name: "k8s-prod",
                issuer: &self.k8s,
                domains: &[],
            },
            TrustSpec {
                name: "spire",
                issuer: &self.spire,
                domains: &["example.org"],
            },
            TrustSpec {
                name: "corp-idp",
                issuer: &self.idp,
                domains: &[],
            },
            TrustSpec {
                name: "ci",
                issuer: &self.ci,
                domains: &[],
            },
        ]
    }

    /// A Kubernetes projected service-account token (real shape).
    pub fn k8s_token(&self, sa: &str) -> String {
        let n = now();
        let claims = json!({
            "aud": [STS_ISSUER],
            "exp": n + 3600,
            "iat": n,
            "iss": self.k8s.iss,
            "jti": "1c9e6a7b-7d1f-4a59-9b8a-5f0f8c2e3d41",
            "kubernetes.io": {
                "namespace": "agents",
                "node": {"name": "node-1", "uid": "8d5e0b53-2a7e-4c1b-9f6e-1a2b3c4d5e6f"},
                "pod": {"name": format!("{sa}-7d9f8c6b5-x2x4z"), "uid": "0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d"},
                "serviceaccount": {"name": sa, "uid": "6f5e4d3c-2b1a-0f9e-8d7c-6b5a4f3e2d1c"},
                "warnafter": n + 3000
            },
            "nbf": n,
            "sub": format!("system:serviceaccount:agents:{sa}")
        });
        self.k8s.token(&claims)
    }

    /// A SPIFFE JWT-SVID (real shape: sub is the SPIFFE ID, aud, exp, iat).
    pub fn svid(&self, path: &str) -> String {
        let n = now();
        let claims = json!({
            "sub": format!("spiffe://example.org/{path}"),
            "aud": [STS_ISSUER],
            "exp": n + 300,
            "iat": n,
            "iss": self.spire.iss,
        });
        self.spire.token(&claims)
    }

    /// A user's ID token from the corporate IdP.
    pub fn user_token(&self, email: &str) -> String {
        let n = now();
        let claims = json!({
            "iss": self.idp.iss,
            "sub": email,
            "aud": STS_ISSUER,
            "exp": n + 900,
            "iat": n,
            "email": email,
            "email_verified": true,
        });
        self.idp.token(&claims)
    }
}

/// Verifies a minted token independently: fetches only the JWKS over HTTP and checks
/// it with `jsonwebtoken` (RFC 9068 §4: typ, iss, aud, exp, algorithm from the key).
pub async fn verify_independently(sts_url: &str, token: &str, audience: &str) -> Value {
    let jwks: jsonwebtoken::jwk::JwkSet = reqwest::get(format!("{sts_url}/.well-known/jwks.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let jwk = jwks
        .find(header.kid.as_deref().unwrap())
        .expect("kid published in the JWKS");
    let alg = match jwk.common.key_algorithm {
        Some(jsonwebtoken::jwk::KeyAlgorithm::ES256) => Algorithm::ES256,
        Some(jsonwebtoken::jwk::KeyAlgorithm::EdDSA) => Algorithm::EdDSA,
        other => panic!("unexpected key algorithm {other:?}"),
    };
    let mut v = jsonwebtoken::Validation::new(alg);
    v.set_issuer(&[STS_ISSUER]);
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub", "nbf"]);
    v.leeway = 5;
    jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
        &v,
    )
    .expect("minted token verifies through the JWKS")
    .claims
}
