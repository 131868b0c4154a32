//! `agent-sts dev`: the STS on the embedded default, with no configuration and no
//! Vault.
//!
//! It simulates a production setup on one machine: a dev workload issuer plays the
//! identity providers the example catalogue names (a Kubernetes cluster `k8s-prod`, a
//! SPIRE server for `example.org`, GitHub Actions OIDC, and a corporate IdP for
//! delegating users), each with its own key and a JWKS served by this process under
//! `/dev/issuers/<trust>/jwks.json` and verified through the same `jwks_uri` code path
//! as a real issuer. First run creates, under `keys/` (git-ignored): the file keyring
//! (bootstrapped with one active key), the dev issuers' keys, and dev secrets with
//! random values for every `credential` the catalogue names. Then it prints a freshly
//! minted workload token and the `curl` that exchanges it.
//!
//! The dev issuer also mints workload tokens on demand (`POST /dev/issuers/<trust>/token`
//! with a form field `sub`), for scripts. It exists only in `dev`, which listens on
//! loopback by default.
//!
//! The top of the crate beside `main`: may import everything, and nothing imports it.

pub mod echo;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::catalogue::{Catalogue, Delegation, TrustDirectory};
use crate::config::{Config, ShimConfig};
use crate::identity::unix_now;
use crate::keys::signing_key::SigningAlgorithm;
use crate::keys::signing_key::SigningKey;
use crate::keys::{FileKeyStore, KeyStore};
use crate::runtime::{self, StartError};
use crate::secret::PrivateKeyPem;
use crate::sts;

/// Arguments of `agent-sts dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Address to listen on (also the dev issuer's and the STS's URL; port 0 picks a
    /// free one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Catalogue directory.
    #[arg(long, default_value = "scopes")]
    pub scopes: PathBuf,
    /// Where dev keys, dev secrets and the audit logs live.
    #[arg(long, default_value = "keys")]
    pub keys: PathBuf,
    /// Address of the demo shim (in front of the built-in echo upstream; port 0 picks a
    /// free one).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub shim_listen: SocketAddr,
}

/// The identity providers the dev issuer plays: (trust name, `iss`, SPIFFE domains).
pub const DEV_TRUSTS: &[(&str, &str, &[&str])] = &[
    ("k8s-prod", "https://kubernetes.default.svc", &[]),
    ("spire", "https://spire.example.org", &["example.org"]),
    (
        "github-actions",
        "https://token.actions.githubusercontent.com",
        &[],
    ),
    ("corp-idp", "https://idp.example.org", &[]),
];

/// Lifetime of the workload tokens the dev issuer mints.
pub const DEV_TOKEN_LIFETIME: u64 = 3600;

/// The trusts of the embedded default, for `scopes check` without `--config`.
pub fn trust_directory() -> TrustDirectory {
    TrustDirectory::new(DEV_TRUSTS.iter().map(|(name, _, domains)| {
        (
            name.to_string(),
            domains.iter().map(|d| d.to_string()).collect(),
        )
    }))
}

/// The embedded default configuration for `listen`, `scopes` and `keys`.
pub fn dev_config_toml(listen: SocketAddr, scopes: &Path, keys: &Path) -> String {
    let base = format!("http://{listen}");
    let mut text = format!(
        r#"[server]
listen = "{listen}"
issuer = "{base}"
scopes_dir = "{scopes}"

[tokens]
default_ttl = "5m"
max_ttl = "15m"
algorithm = "ES256"

[keys]
store = "file"
dir = "{keys}"
refresh_interval = "5s"
publish_lead = "1m"
jwks_max_age = "30s"
{stores}"#,
        scopes = scopes.display(),
        keys = keys.display(),
        stores = file_stores_toml(keys, "dev-audit.log"),
    );
    for (name, issuer, domains) in DEV_TRUSTS {
        let domains: Vec<String> = domains.iter().map(|d| format!("{d:?}")).collect();
        text.push_str(&format!(
            r#"
[[trust]]
name = "{name}"
issuer = "{issuer}"
jwks_uri = "{base}/dev/issuers/{name}/jwks.json"
algorithms = ["ES256"]
spiffe_trust_domains = [{}]
"#,
            domains.join(", ")
        ));
    }
    text
}

/// The `[secrets]` and `[audit]` sections of the dev STS and the demo shim: the dev
/// secrets file and the audit log `audit_file`, both under `keys`.
fn file_stores_toml(keys: &Path, audit_file: &str) -> String {
    format!(
        "\n[secrets]\nstore = \"file\"\nfile = \"{keys}/dev-secrets.toml\"\n\n[audit]\npath = \"{keys}/{audit_file}\"\n",
        keys = keys.display()
    )
}

/// The demo shim's configuration: in front of the echo upstream at `upstream`, for
/// `audience`, trusting the dev STS at `sts`; agents address it at `listen` (its
/// `public_url`, which DPoP proofs name).
pub fn dev_shim_config_toml(
    listen: SocketAddr,
    audience: &str,
    upstream: SocketAddr,
    sts: &str,
    scopes: &Path,
    keys: &Path,
) -> String {
    format!(
        r#"[shim]
listen = "{listen}"
public_url = "http://{listen}"
audience = "{audience}"
upstream = "http://{upstream}"
issuer = "{sts}"
jwks_uri = "{sts}/.well-known/jwks.json"
scopes_dir = "{scopes}"
refresh_interval = "5s"
{stores}"#,
        scopes = scopes.display(),
        stores = file_stores_toml(keys, "dev-shim-audit.log"),
    )
}

/// The dev issuers' keys as stored in `keys/dev-issuers.json`.
#[derive(Serialize, Deserialize, Default)]
struct StoredIssuers {
    #[serde(flatten)]
    pem: BTreeMap<String, String>,
}

/// The dev workload issuer: one key per simulated trust.
pub struct DevIssuer {
    keys: BTreeMap<String, (String, SigningKey)>,
    audience: String,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer")
            .field("trusts", &self.keys.keys())
            .finish()
    }
}

impl DevIssuer {
    /// Loads `keys/dev-issuers.json`, creating missing keys.
    pub fn load_or_create(dir: &Path, audience: &str) -> Result<Self, StartError> {
        let path = dir.join("dev-issuers.json");
        let mut stored: StoredIssuers = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|_| {
                StartError::Runtime(format!(
                    "{}: not a dev issuer key file; delete it to start over",
                    path.display()
                ))
            })?,
            Err(_) => StoredIssuers::default(),
        };
        let mut keys = BTreeMap::new();
        let mut changed = false;
        for (name, issuer, _) in DEV_TRUSTS {
            let key = match stored.pem.get(*name) {
                Some(pem) => {
                    SigningKey::from_pem(SigningAlgorithm::ES256, &PrivateKeyPem::new(pem.clone()))
                }
                None => SigningKey::generate(SigningAlgorithm::ES256).map(|(key, pem)| {
                    stored
                        .pem
                        .insert(name.to_string(), pem.expose().to_string());
                    changed = true;
                    key
                }),
            }
            .map_err(|e| StartError::Runtime(format!("{}: {name}: {e}", path.display())))?;
            keys.insert(name.to_string(), (issuer.to_string(), key));
        }
        if changed {
            let bytes = serde_json::to_vec_pretty(&stored)
                .map_err(|e| StartError::Runtime(e.to_string()))?;
            crate::keys::write_private_file(&path, &bytes)
                .map_err(|e| StartError::Runtime(format!("{}: {e}", path.display())))?;
        }
        Ok(DevIssuer {
            keys,
            audience: audience.to_string(),
        })
    }

    /// A workload token from `trust` for `sub`, valid for [`DEV_TOKEN_LIFETIME`].
    pub fn token(&self, trust: &str, sub: &str) -> Option<String> {
        let (issuer, key) = self.keys.get(trust)?;
        let now = unix_now();
        let header = serde_json::json!({"alg": "ES256", "kid": key.kid, "typ": "JWT"});
        let claims = serde_json::json!({
            "iss": issuer,
            "sub": sub,
            "aud": [self.audience],
            "iat": now,
            "nbf": now,
            "exp": now + DEV_TOKEN_LIFETIME,
        });
        key.sign_compact(header.to_string().as_bytes(), claims.to_string().as_bytes())
            .ok()
    }

    fn jwks(&self, trust: &str) -> Option<serde_json::Value> {
        let (_, key) = self.keys.get(trust)?;
        Some(serde_json::json!({ "keys": [key.public_jwk] }))
    }

    /// Routes of the dev issuer.
    pub fn router(self: Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route("/dev/issuers/{trust}/jwks.json", get(dev_jwks))
            .route("/dev/issuers/{trust}/token", post(dev_token))
            .with_state(self)
    }
}

async fn dev_jwks(
    State(issuer): State<Arc<DevIssuer>>,
    UrlPath(trust): UrlPath<String>,
) -> Response {
    match issuer.jwks(&trust) {
        Some(jwks) => axum::Json(jwks).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[derive(Deserialize)]
struct DevTokenForm {
    sub: String,
}

async fn dev_token(
    State(issuer): State<Arc<DevIssuer>>,
    UrlPath(trust): UrlPath<String>,
    axum::Form(form): axum::Form<DevTokenForm>,
) -> Response {
    match issuer.token(&trust, &form.sub) {
        Some(token) => token.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Adds a random dev value for every credential the catalogue names and the secrets
/// file lacks; returns whether it wrote the file.
fn ensure_dev_secrets(path: &Path, catalogue: &Catalogue) -> Result<bool, StartError> {
    let mut doc: toml::Table = match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|_| {
            StartError::Runtime(format!("{}: not a valid secrets file", path.display()))
        })?,
        Err(_) => toml::Table::new(),
    };
    let secrets = doc
        .entry("secret")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let Some(secrets) = secrets.as_table_mut() else {
        return Err(StartError::Runtime(format!(
            "{}: `secret` is not a table",
            path.display()
        )));
    };
    let mut changed = false;
    for action in catalogue.actions() {
        let Some(credential) = &action.credential else {
            continue;
        };
        if secrets.contains_key(credential) {
            continue;
        }
        let mut random = [0u8; 24];
        aws_lc_rs::rand::fill(&mut random)
            .map_err(|_| StartError::Runtime("no randomness".into()))?;
        let mut entry = toml::Table::new();
        entry.insert("header".into(), "Authorization".into());
        entry.insert(
            "value".into(),
            format!("Bearer dev-{}", hex::encode(random)).into(),
        );
        secrets.insert(credential.clone(), toml::Value::Table(entry));
        changed = true;
    }
    if changed {
        let text = toml::to_string_pretty(&doc).map_err(|e| StartError::Runtime(e.to_string()))?;
        crate::keys::write_private_file(path, text.as_bytes())
            .map_err(|e| StartError::Runtime(format!("{}: {e}", path.display())))?;
    }
    Ok(changed)
}

/// Runs `agent-sts dev`.
pub async fn run(mut args: DevArgs) -> Result<(), StartError> {
    // Absolute from here on: every path printed, and every file written, is named
    // whole, whatever the working directory.
    for path in [&mut args.keys, &mut args.scopes] {
        if let Ok(absolute) = std::path::absolute(&*path) {
            *path = absolute;
        }
    }
    // Bound first, so `--listen 127.0.0.1:0` works: the issuer URL is the real address.
    let listener = runtime::bind(args.listen).await?;
    let listen = listener
        .local_addr()
        .map_err(|e| StartError::Runtime(e.to_string()))?;
    let text = dev_config_toml(listen, &args.scopes, &args.keys);
    let config = Config::from_toml(&text, "<embedded default>", &BTreeMap::new())
        .map_err(|e| StartError::Config(e.to_string()))?;
    std::fs::create_dir_all(&args.keys)
        .map_err(|e| StartError::Runtime(format!("{}: {e}", args.keys.display())))?;

    // What this run creates, printed with the example.
    let mut wrote: Vec<PathBuf> = Vec::new();
    // Signing keys: bootstrap one active key on first run.
    let store = FileKeyStore::new(&args.keys);
    let (ring, _) = store
        .load()
        .await
        .map_err(|e| StartError::Runtime(e.to_string()))?;
    if ring.keys.is_empty() {
        crate::keys::rotate(
            &store,
            config.tokens.algorithm,
            unix_now(),
            config.keys.publish_lead,
            config.tokens.max_ttl,
        )
        .await
        .map_err(|e| StartError::Runtime(e.to_string()))?;
        wrote.push(PathBuf::from(store.location()));
    }
    let catalogue = Catalogue::load_dir(&config.server.scopes_dir, &sts::trust_directory(&config))
        .map_err(|e| StartError::Config(e.to_string()))?;
    if let crate::config::SecretsConfig::File { path } = &config.secrets
        && ensure_dev_secrets(path, &catalogue)?
    {
        wrote.push(path.clone());
    }
    let issuer_keys = args.keys.join("dev-issuers.json");
    let had_issuer_keys = issuer_keys.exists();
    let issuer = Arc::new(DevIssuer::load_or_create(
        &args.keys,
        &config.server.issuer,
    )?);
    if !had_issuer_keys {
        wrote.push(issuer_keys);
    }
    let app = sts::build(&config).await?;
    let demo = demo_action(&catalogue);
    // The demo shim needs an action it can complete; without one the STS runs alone.
    let shim_url = match demo {
        Some(action) if action.request.is_some() && action.credential.is_some() => {
            Some(start_demo_shim(&args, &config, action).await?)
        }
        _ => None,
    };
    print_example(
        &config,
        &catalogue,
        &issuer,
        demo,
        shim_url.as_deref(),
        &wrote,
    );
    app.serve(listener, Some(issuer.router())).await
}

/// The dev workload the example speaks for.
const DEMO_AGENT: (&str, &str) = ("k8s-prod", "system:serviceaccount:agents:triage");

/// The action the example uses: one the demo agent may take alone, preferring one the
/// shim can complete (a credential and an `[action.request]`).
fn demo_action(catalogue: &Catalogue) -> Option<&crate::catalogue::Action> {
    let (trust, subject) = DEMO_AGENT;
    let principal = crate::catalogue::Principal {
        trust,
        subject,
        spiffe_domains: &[],
    };
    let usable = |a: &&crate::catalogue::Action| {
        a.delegation != Delegation::Required && a.permits_agent(&principal)
    };
    catalogue
        .actions()
        .filter(usable)
        .find(|a| a.credential.is_some() && a.request.is_some())
        .or_else(|| catalogue.actions().find(usable))
}

/// Starts the echo upstream on a free loopback port and the demo shim in front of it
/// for `action`'s audience; returns the shim's URL.
async fn start_demo_shim(
    args: &DevArgs,
    config: &Config,
    action: &crate::catalogue::Action,
) -> Result<String, StartError> {
    let echo_listener = runtime::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let echo_addr = echo_listener
        .local_addr()
        .map_err(|e| StartError::Runtime(e.to_string()))?;
    crate::dev::echo::spawn(crate::dev::echo::Echo::new(), echo_listener);
    // Bound first: its real address (port 0 picks one) is the shim's public URL.
    let listener = runtime::bind(args.shim_listen).await?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Runtime(e.to_string()))?;
    let text = dev_shim_config_toml(
        addr,
        &action.audience,
        echo_addr,
        &config.server.issuer,
        &args.scopes,
        &args.keys,
    );
    let shim_config = ShimConfig::from_toml(&text, "<embedded demo shim>", &BTreeMap::new())
        .map_err(|e| StartError::Config(e.to_string()))?;
    let shim = crate::shim::build(&shim_config).await?;
    tracing::info!(listen = %addr, audience = %action.audience, upstream = %echo_addr, "demo shim serving");
    tokio::spawn(async move {
        if let Err(e) = shim.serve(listener).await {
            tracing::error!(error = %e, "demo shim stopped");
        }
    });
    Ok(format!("http://{addr}"))
}

/// The copy-paste example: a workload token, the exchange that uses it, and the call
/// through the demo shim.
fn print_example(
    config: &Config,
    catalogue: &Catalogue,
    issuer: &DevIssuer,
    action: Option<&crate::catalogue::Action>,
    shim_url: Option<&str>,
    wrote: &[PathBuf],
) {
    let base = &config.server.issuer;
    println!("agent-sts dev: STS at {base} (issuer {base})");
    println!(
        "  catalogue: {} actions from {}",
        catalogue.len(),
        config.server.scopes_dir.display()
    );
    println!(
        "  dev keys, dev secrets and the audit logs: {}",
        config
            .audit
            .path
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
    for path in wrote {
        println!("  wrote {}", path.display());
    }
    println!("  dev workload issuer: POST {base}/dev/issuers/<trust>/token -d sub=<subject>");
    let (trust, sub) = DEMO_AGENT;
    let (Some(action), Some(token)) = (action, issuer.token(trust, sub)) else {
        println!(
            "\n(no catalogue action grants {trust}:{sub}; add one to {} for an example)",
            config.server.scopes_dir.display()
        );
        return;
    };
    if let Some(shim) = shim_url {
        println!(
            "  demo shim: {shim} for {} -> built-in echo upstream (echoes every header back)",
            action.audience
        );
    }
    println!(
        "\n1. A workload token ({trust}:{sub}, valid {}m), exchanged for a {} token:\n",
        DEV_TOKEN_LIFETIME / 60,
        action.name
    );
    println!("TOKEN='{token}'");
    println!(
        "ACCESS=$(curl -s {base}/token \\\n  -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange \\\n  -d subject_token_type=urn:ietf:params:oauth:token-type:jwt \\\n  -d subject_token=\"$TOKEN\" \\\n  -d scope={} | sed -E 's/.*\"access_token\":\"([^\"]+)\".*/\\1/')\n",
        action.name
    );
    let (Some(shim), Some(request)) = (shim_url, &action.request) else {
        println!(
            "(no demo shim: no action granted to {trust}:{sub} has both a credential and an [action.request])"
        );
        return;
    };
    let path = example_path(request.path.as_str());
    let body = if matches!(request.method.as_str(), "POST" | "PUT" | "PATCH") {
        " -H 'Content-Type: application/json' -d '{\"title\":\"hello from an agent\"}'"
    } else {
        ""
    };
    println!(
        "2. The call through the shim: it checks the token, injects the credential from the\n   secret store, and scrubs it from the echo's answer (look for \"[redacted]\"):\n"
    );
    println!(
        "curl -s -X {} {shim}{path} -H \"Authorization: Bearer $ACCESS\"{body}\n",
        request.method
    );
}

/// A concrete path for a template: each `{name}` becomes `example-name`.
fn example_path(template: &str) -> String {
    template
        .split('/')
        .map(
            |segment| match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => format!("example-{name}"),
                None => segment.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}
