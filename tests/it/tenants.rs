//! Tenants (README, "Running many tenants"): three `[[tenant]]` issuers beside the
//! top-level one in one real `agent-sts serve` process, sharing one secret store.
//! Every cross-tenant attempt is refused, each tenant's decisions land in its own
//! audit chain, and no tenant's canary credential reaches anything.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{
    CANARY_CREDENTIAL, ConfigTweaks, GRANT, Issuers, JWT_TYPE, Reply, SCOPES, STS_ISSUER,
    claims_of, config_toml_with, form, now, post_form, reply, write_secret_file,
};
use crate::process::{ServeProcess, TRACE_ALL, run, text};

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];

/// Each tenant's canary credential: must never appear in any output.
fn canary(tenant: &str) -> String {
    format!("Bearer {tenant}-CANARY-crm-7f3a9c0e5b1d")
}

fn issuer_of(tenant: &str) -> String {
    format!("{STS_ISSUER}/t/{tenant}")
}

/// The trusts each tenant accepts.
fn trusts_of(tenant: &str) -> &'static [&'static str] {
    match tenant {
        "acme" => &["k8s-prod"],
        "globex" => &["k8s-prod", "spire"],
        _ => &["spire"],
    }
}

/// A tenant's catalogue: `crm.read` for the agents its trusts can name.
fn scopes_of(tenant: &str) -> String {
    let mut agents = Vec::new();
    if trusts_of(tenant).contains(&"k8s-prod") {
        agents.push("\"k8s-prod:system:serviceaccount:agents:triage\"");
    }
    if trusts_of(tenant).contains(&"spire") {
        agents.push("\"spiffe://example.org/agent/triage\"");
    }
    format!(
        r#"
[[action]]
name = "crm.read"
audience = "https://crm-shim.{tenant}.internal"
ttl = "5m"
agents = [{}]
credential = "integrations/crm"

[action.request]
method = "GET"
path = "/crm/records"
"#,
        agents.join(", ")
    )
}

/// Where a test tenant's keyring lives.
#[derive(Clone, Copy)]
enum Keyring {
    /// `dir/tenants/NAME/keys`.
    Dir,
    /// KV `agent-sts/tenants/NAME/signing-keys`.
    Vault,
    /// The Transit key `agent-sts-NAME`.
    Transit,
}

/// A `[[tenant]]` table for `tenant` under `dir`, its keyring at `keyring`.
fn tenant_toml(dir: &Path, tenant: &str, keyring: Keyring) -> String {
    let trusts: Vec<String> = trusts_of(tenant).iter().map(|t| format!("{t:?}")).collect();
    let d = dir.display();
    let keyring = match keyring {
        Keyring::Dir => format!("keys_dir = \"{d}/tenants/{tenant}/keys\""),
        Keyring::Vault => {
            format!("keys_vault_path = \"agent-sts/tenants/{tenant}/signing-keys\"")
        }
        Keyring::Transit => format!("keys_vault_path = \"agent-sts-{tenant}\""),
    };
    format!(
        r#"
[[tenant]]
name = "{tenant}"
scopes_dir = "{d}/tenants/{tenant}/scopes"
trusts = [{}]
secrets_prefix = "tenants/{tenant}"
{keyring}
audit_path = "{d}/tenants/{tenant}/audit.log"
"#,
        trusts.join(", "),
    )
}

/// The configuration with the top level and `tenants`.
fn config_text(dir: &Path, issuers: &Issuers, tenants: &[&str]) -> String {
    let blocks: String = tenants
        .iter()
        .map(|t| tenant_toml(dir, t, Keyring::Dir))
        .collect();
    let extra = format!("\n[deny]\nrefresh_interval = \"1s\"\n{blocks}");
    config_toml_with(dir, &issuers.specs(), &extra, ConfigTweaks::default())
}

/// A directory with the top-level catalogue, one per tenant, one secrets file holding
/// every tenant's credential under its prefix, and the configuration.
fn tenant_files(issuers: &Issuers) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("scopes")).unwrap();
    std::fs::write(d.join("scopes/test.toml"), SCOPES).unwrap();
    let mut secrets = crate::harness::secrets_toml();
    for t in TENANTS.iter().chain(["hooli"].iter()) {
        std::fs::create_dir_all(d.join(format!("tenants/{t}/scopes"))).unwrap();
        std::fs::write(d.join(format!("tenants/{t}/scopes/crm.toml")), scopes_of(t)).unwrap();
        secrets.push_str(&format!(
            "\n[secret.\"tenants/{t}/integrations/crm\"]\nheader = \"Authorization\"\nvalue = \"{}\"\n",
            canary(t)
        ));
    }
    write_secret_file(&d.join("secrets.toml"), secrets);
    let config = d.join("agent-sts.toml");
    std::fs::write(&config, config_text(d, issuers, &TENANTS)).unwrap();
    (dir, config)
}

/// `agent-sts keys rotate --config CONFIG [--tenant TENANT]`, run in `dir`.
fn keys_rotate(config: &Path, dir: &Path, tenant: Option<&str>) -> std::process::Output {
    let mut args = vec!["keys", "rotate", "--config", config.to_str().unwrap()];
    args.extend(tenant.iter().flat_map(|t| ["--tenant", *t]));
    run(&args, dir)
}

/// `agent-sts keys rotate` for the top level and each tenant, through the CLI.
fn rotate_all(config: &Path, dir: &Path, tenants: &[&str]) {
    for tenant in std::iter::once(None).chain(tenants.iter().map(|t| Some(*t))) {
        let out = keys_rotate(config, dir, tenant);
        assert!(out.status.success(), "{tenant:?}: {}", text(&out.stderr));
    }
}

/// A Kubernetes service-account token for `audience` (a tenant's issuer).
fn k8s_token(issuers: &Issuers, audience: &str) -> String {
    let n = now();
    issuers.k8s.token(&json!({
        "iss": issuers.k8s.iss,
        "sub": "system:serviceaccount:agents:triage",
        "aud": [audience],
        "iat": n, "nbf": n, "exp": n + 600,
    }))
}

/// A SPIFFE JWT-SVID for `audience`.
fn svid(issuers: &Issuers, audience: &str) -> String {
    let n = now();
    issuers.spire.token(&json!({
        "iss": issuers.spire.iss,
        "sub": "spiffe://example.org/agent/triage",
        "aud": [audience],
        "iat": n, "exp": n + 300,
    }))
}

/// The agent token a tenant's trusts accept, for `audience`.
fn agent_token(issuers: &Issuers, tenant: &str, audience: &str) -> String {
    if trusts_of(tenant).contains(&"k8s-prod") {
        k8s_token(issuers, audience)
    } else {
        svid(issuers, audience)
    }
}

async fn exchange_at(url: &str, path: &str, subject: &str, scope: &str) -> Reply {
    post_form(
        &format!("{url}{path}"),
        form(&[
            ("grant_type", GRANT),
            ("subject_token", subject),
            ("subject_token_type", JWT_TYPE),
            ("scope", scope),
        ]),
    )
    .await
}

/// Tenant `t`'s own agent asking `t`'s token endpoint for `crm.read`.
async fn mint_at(url: &str, issuers: &Issuers, t: &str) -> Reply {
    let subject = agent_token(issuers, t, &issuer_of(t));
    exchange_at(url, &format!("/t/{t}/token"), &subject, "crm.read").await
}

async fn get(url: &str) -> Reply {
    reply(reqwest::get(url).await.unwrap()).await
}

/// Verifies `token` with only the JWKS at `jwks_url`, for issuer `iss`.
async fn verify_with(
    jwks_url: &str,
    iss: &str,
    token: &str,
    audience: &str,
) -> Result<Value, String> {
    let jwks: jsonwebtoken::jwk::JwkSet =
        reqwest::get(jwks_url).await.unwrap().json().await.unwrap();
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let jwk = jwks
        .find(header.kid.as_deref().unwrap_or_default())
        .ok_or("kid not in this JWKS")?;
    let mut v = jsonwebtoken::Validation::new(header.alg);
    v.set_issuer(&[iss]);
    v.set_audience(&[audience]);
    jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?,
        &v,
    )
    .map(|d| d.claims)
    .map_err(|e| e.to_string())
}

/// Polls `check` (every 100 ms, 20 s at most) until it holds.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_tenants_share_a_process_and_nothing_crosses() {
    let issuers = Issuers::start().await;
    let (dir, config) = tenant_files(&issuers);
    let d = dir.path();
    rotate_all(&config, d, &TENANTS);
    let c = config.to_str().unwrap();

    // `scopes check` and `keys list` per tenant.
    for t in TENANTS {
        let out = run(
            &["scopes", "check", "--config", c, "--tenant", t, "--json"],
            d,
        );
        assert!(out.status.success(), "{t}: {}", text(&out.stdout));
        assert!(text(&out.stdout).contains("crm.read"));
        let out = run(&["keys", "list", "--config", c, "--tenant", t, "--json"], d);
        assert!(out.status.success());
    }
    let out = run(&["keys", "list", "--config", c, "--tenant", "nope"], d);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown tenant is a usage error"
    );
    let kids: Vec<String> = TENANTS
        .iter()
        .map(|t| {
            let out = run(&["keys", "list", "--config", c, "--tenant", t, "--json"], d);
            let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
            doc["keys"][0]["kid"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(
        kids[0] != kids[1] && kids[1] != kids[2],
        "each tenant signs with its own key"
    );

    let sts = ServeProcess::start(&config, d, TRACE_ALL);
    let url = sts.url.clone();
    let mut seen: Vec<String> = Vec::new();

    // Metadata at the path-inserted location (RFC 8414 §3.1), endpoints under the
    // tenant's issuer; the top level is unchanged.
    let top = get(&format!("{url}/.well-known/oauth-authorization-server")).await;
    assert_eq!(top.json()["issuer"], STS_ISSUER);
    for t in TENANTS {
        let m = get(&format!(
            "{url}/.well-known/oauth-authorization-server/t/{t}"
        ))
        .await;
        assert_eq!(m.status, 200, "{t}");
        let m = m.json();
        assert_eq!(m["issuer"], issuer_of(t));
        assert_eq!(m["token_endpoint"], format!("{}/token", issuer_of(t)));
        assert_eq!(
            m["jwks_uri"],
            format!("{}/.well-known/jwks.json", issuer_of(t))
        );
    }

    // Each tenant mints for its own agent; the token is its issuer's and verifies
    // with its JWKS only.
    let mut tokens = Vec::new();
    for t in TENANTS {
        let r = mint_at(&url, &issuers, t).await;
        assert_eq!(r.status, 200, "{t}: {}", r.text);
        let token = r.token();
        let claims = claims_of(&token);
        assert_eq!(claims["iss"], issuer_of(t));
        let aud = format!("https://crm-shim.{t}.internal");
        let jwks = format!("{url}/t/{t}/.well-known/jwks.json");
        verify_with(&jwks, &issuer_of(t), &token, &aud)
            .await
            .unwrap();
        for other in TENANTS.iter().filter(|o| **o != t) {
            let jwks = format!("{url}/t/{other}/.well-known/jwks.json");
            assert!(
                verify_with(&jwks, &issuer_of(other), &token, &aud)
                    .await
                    .is_err(),
                "{t}'s token must not verify with {other}'s JWKS"
            );
        }
        assert!(
            verify_with(
                &format!("{url}/.well-known/jwks.json"),
                STS_ISSUER,
                &token,
                &aud
            )
            .await
            .is_err()
        );
        seen.push(r.text);
        tokens.push(token);
    }

    // An agent of acme at globex's and initech's token endpoints: its workload token
    // names acme's issuer; initech does not even trust its issuer.
    let acme_agent = k8s_token(&issuers, &issuer_of("acme"));
    for other in ["globex", "initech"] {
        let r = exchange_at(&url, &format!("/t/{other}/token"), &acme_agent, "crm.read").await;
        assert_eq!(r.status, 400, "{other}: {}", r.text);
        assert!(r.json().get("access_token").is_none());
        seen.push(r.text);
    }
    // A trust initech does not list, even with initech's audience.
    let r = exchange_at(
        &url,
        "/t/initech/token",
        &k8s_token(&issuers, &issuer_of("initech")),
        "crm.read",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);
    // A trust acme does not list.
    let r = exchange_at(
        &url,
        "/t/acme/token",
        &svid(&issuers, &issuer_of("acme")),
        "crm.read",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);
    // The top level does not know a tenant's action, nor accept a tenant's audience.
    let r = exchange_at(&url, "/token", &k8s_token(&issuers, STS_ISSUER), "crm.read").await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = exchange_at(&url, "/token", &acme_agent, "crm.read").await;
    assert_eq!(r.status, 400, "{}", r.text);
    // An acme token used as the subject of a globex sub-agent exchange.
    let r = post_form(
        &format!("{url}/t/globex/token"),
        form(&[
            ("grant_type", GRANT),
            ("subject_token", &tokens[0]),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
            ("scope", "crm.read"),
        ]),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);

    // An unknown tenant is indistinguishable from any path that does not exist.
    let missing = get(&format!("{url}/no-such-path")).await;
    for path in [
        "/t/nope/token",
        "/t/nope/.well-known/jwks.json",
        "/t/ACME/.well-known/jwks.json",
        "/t/acme%2F../.well-known/jwks.json",
        "/.well-known/oauth-authorization-server/t/nope",
    ] {
        let r = get(&format!("{url}{path}")).await;
        assert_eq!(
            (r.status, r.text.as_str()),
            (missing.status, missing.text.as_str()),
            "{path}"
        );
    }
    let r = exchange_at(&url, "/t/nope/token", &acme_agent, "crm.read").await;
    assert_eq!((r.status, r.text.as_str()), (404, ""));

    // The kill switch is per tenant: stopping the agent at acme leaves globex alone.
    let out = run(
        &[
            "deny",
            "add",
            "--config",
            c,
            "--tenant",
            "acme",
            "--agent",
            "k8s-prod:system:serviceaccount:agents:triage",
        ],
        d,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    eventually("acme refuses the denied agent", || async {
        exchange_at(
            &url,
            "/t/acme/token",
            &k8s_token(&issuers, &issuer_of("acme")),
            "crm.read",
        )
        .await
        .status
            == 400
    })
    .await;
    let r = exchange_at(
        &url,
        "/t/globex/token",
        &k8s_token(&issuers, &issuer_of("globex")),
        "crm.read",
    )
    .await;
    assert_eq!(r.status, 200, "globex is not acme's deny list: {}", r.text);
    let out = run(
        &[
            "deny", "list", "--config", c, "--tenant", "globex", "--json",
        ],
        d,
    );
    assert!(
        !text(&out.stdout).contains("serviceaccount"),
        "globex's list is its own"
    );

    // Readiness per tenant and for the process; metrics labelled by tenant.
    for t in TENANTS {
        assert_eq!(get(&format!("{url}/t/{t}/readyz")).await.status, 200, "{t}");
    }
    let ready = get(&format!("{url}/readyz")).await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(ready.json()["tenants"]["acme"], "ok");
    let metrics = get(&format!("{url}/metrics")).await.text;
    assert!(
        metrics.contains("agent_sts_tokens_issued_total{tenant=\"acme\",action=\"crm.read\"}"),
        "{metrics}"
    );
    let types: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("# TYPE "))
        .collect();
    let mut unique = types.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(types.len(), unique.len(), "each family once:\n{metrics}");
    assert!(metrics.ends_with("# EOF\n"));
    seen.push(metrics);

    let (stdout, stderr) = sts.stop();

    // Each tenant's audit chain is its own and verifies; none names another tenant.
    for t in TENANTS {
        let log = d.join(format!("tenants/{t}/audit.log"));
        let out = run(&["audit", "verify", log.to_str().unwrap()], d);
        assert!(out.status.success(), "{t}: {}", text(&out.stderr));
        let audit = std::fs::read_to_string(&log).unwrap();
        assert!(audit.contains("crm.read"), "{t}'s decisions are in its log");
        if t != "acme" {
            assert!(
                audit.contains("invalid_subject_token"),
                "acme's agent refused at {t}, in {t}'s log: {audit}"
            );
        }
        for other in TENANTS.iter().filter(|o| **o != t) {
            assert!(
                !audit.contains(&format!("crm-shim.{other}")),
                "{t}'s log names {other}"
            );
        }
    }

    // No tenant's credential anywhere: responses, logs, any audit log.
    let mut outputs = seen;
    outputs.extend([stdout, stderr]);
    outputs.push(std::fs::read_to_string(d.join("audit.log")).unwrap_or_default());
    for t in TENANTS {
        outputs.push(std::fs::read_to_string(d.join(format!("tenants/{t}/audit.log"))).unwrap());
    }
    for out in &outputs {
        for t in TENANTS {
            assert!(!out.contains(&canary(t)[7..]), "{t}'s canary leaked");
        }
        assert!(
            !out.contains(&CANARY_CREDENTIAL[7..]),
            "the top level's canary leaked"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_added_and_removed_without_a_restart() {
    let issuers = Issuers::start().await;
    let (dir, config) = tenant_files(&issuers);
    let d = dir.path();
    rotate_all(&config, d, &TENANTS);
    let sts = ServeProcess::start(&config, d, "info");
    let url = sts.url.clone();
    let globex = mint_at(&url, &issuers, "globex").await;
    assert_eq!(globex.status, 200, "{}", globex.text);

    let globex_verifier = agent_sts_verifier::Verifier::builder(
        &issuer_of("globex"),
        "https://crm-shim.globex.internal",
        &format!("{url}/t/globex/.well-known/jwks.json"),
    )
    .deny_refresh(Duration::from_secs(1))
    .build()
    .unwrap();
    globex_verifier
        .verify(&globex.token(), now())
        .await
        .unwrap();

    // globex goes, hooli comes (its key made first, as an operator would).
    let next = ["acme", "initech", "hooli"];
    std::fs::write(&config, config_text(d, &issuers, &next)).unwrap();
    let out = keys_rotate(&config, d, Some("hooli"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    eventually("globex removed", || async {
        get(&format!("{url}/t/globex/.well-known/jwks.json"))
            .await
            .status
            == 404
    })
    .await;
    let r = mint_at(&url, &issuers, "globex").await;
    assert_eq!(r.status, 404);
    eventually("hooli serving", || async {
        mint_at(&url, &issuers, "hooli").await.status == 200
    })
    .await;
    // The others never stopped.
    let r = mint_at(&url, &issuers, "acme").await;
    assert_eq!(r.status, 200, "{}", r.text);

    // A removed tenant's tokens stop verifying wherever they are checked: its feed
    // and JWKS answer 404, an answer, not an outage (the verifier's deny feed says
    // so within `deny_refresh`, long before its cached JWKS is due).
    let token = globex.token();
    let refusal = std::sync::Mutex::new(None);
    eventually("globex's token refused after its removal", || async {
        match globex_verifier.verify(&token, now()).await {
            Ok(_) => false,
            Err(e) => {
                *refusal.lock().unwrap() = Some(e.to_string());
                true
            }
        }
    })
    .await;
    let refusal = refusal.into_inner().unwrap();
    assert_eq!(refusal.as_deref(), Some("the token's issuer was removed"));
    let jwks_only = agent_sts_verifier::Verifier::builder(
        &issuer_of("globex"),
        "https://crm-shim.globex.internal",
        &format!("{url}/t/globex/.well-known/jwks.json"),
    )
    .without_deny_feed()
    .build()
    .unwrap();
    assert!(
        jwks_only.verify(&token, now()).await.is_err(),
        "no keys behind a 404 JWKS"
    );

    // A configuration that no longer loads leaves the tenants as they are.
    std::fs::write(&config, "not = [valid").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = mint_at(&url, &issuers, "hooli").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let (_, stderr) = sts.stop();
    assert!(stderr.contains("tenant removed"), "{stderr}");
    assert!(stderr.contains("configuration reload failed"), "{stderr}");
}

/// What the configuration refuses, each naming the key (exit 2 at `serve`).
#[test]
fn tenant_configuration_errors_name_the_key() {
    let env = std::collections::BTreeMap::new();
    let base = r#"
[server]
issuer = "https://sts.example.com"
[[trust]]
name = "k8s"
issuer = "https://k8s.example.com"
jwks_uri = "https://k8s.example.com/jwks"
algorithms = ["RS256"]
"#;
    let tenant = |name: &str, prefix: &str, keys: &str, audit: &str| {
        format!(
            "[[tenant]]\nname = \"{name}\"\nscopes_dir = \"s\"\ntrusts = [\"k8s\"]\nsecrets_prefix = \"{prefix}\"\nkeys_dir = \"{keys}\"\naudit_path = \"{audit}\"\n"
        )
    };
    let ok = tenant("acme", "tenants/acme", "k/acme", "a/acme.log");
    let cases = [
        (tenant("Acme", "p", "k", "a"), "tenant[0].name"),
        (tenant("a_b", "p", "k", "a"), "tenant[0].name"),
        (tenant("../x", "p", "k", "a"), "tenant[0].name"),
        (format!("{ok}{}", tenant("acme", "q", "k2", "a2")), "tenant[1].name"),
        (format!("{ok}{}", tenant("beta", "tenants/acme/b", "k2", "a2")), "tenant[1].secrets_prefix"),
        (format!("{ok}{}", tenant("beta", "tenants", "k2", "a2")), "tenant[1].secrets_prefix"),
        (format!("{ok}{}", tenant("beta", "q", "k/acme", "a2")), "tenant[1].keys_dir"),
        (format!("{ok}{}", tenant("beta", "q", "k2", "a/acme.log")), "tenant[1].audit_path"),
        (tenant("acme", "../up", "k", "a"), "tenant[0].secrets_prefix"),
        (tenant("acme", "/abs", "k", "a"), "tenant[0].secrets_prefix"),
        (tenant("acme", "p", "keys", "a"), "tenant[0].keys_dir"),
        (tenant("acme", "p", "k", "audit.log"), "tenant[0].audit_path"),
        (
            "[[tenant]]\nname = \"acme\"\nscopes_dir = \"s\"\ntrusts = [\"nope\"]\nsecrets_prefix = \"p\"\nkeys_dir = \"k\"\naudit_path = \"a\"\n".to_string(),
            "tenant[0].trusts[0]",
        ),
        (
            "[[tenant]]\nname = \"acme\"\nscopes_dir = \"s\"\ntrusts = [\"k8s\"]\nsecrets_prefix = \"p\"\nkeys_vault_path = \"x/y\"\naudit_path = \"a\"\n".to_string(),
            "tenant[0].keys_vault_path",
        ),
    ];
    for (tenants, key) in cases {
        let text = format!("{base}{tenants}");
        let err = agent_sts::config::Config::from_toml(&text, "t.toml", &env)
            .expect_err(&tenants)
            .to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
    let config =
        agent_sts::config::Config::from_toml(&format!("{base}{ok}"), "t.toml", &env).unwrap();
    let view = config.tenant("acme").unwrap();
    assert_eq!(view.server.issuer, "https://sts.example.com/t/acme");
    assert!(config.tenant("beta").is_none());
}

/// The top-level catalogue cannot name a credential under a tenant's prefix.
#[tokio::test]
async fn the_top_level_catalogue_stays_out_of_tenant_secrets() {
    let issuers = Issuers::start().await;
    let (dir, config) = tenant_files(&issuers);
    let d = dir.path();
    std::fs::write(
        d.join("scopes/steal.toml"),
        "[[action]]\nname = \"steal\"\naudience = \"https://x.internal\"\nagents = [\"k8s-prod:*\"]\ncredential = \"tenants/acme/integrations/crm\"\n",
    )
    .unwrap();
    let out = run(
        &["scopes", "check", "--config", config.to_str().unwrap()],
        d,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("tenant \"acme\""),
        "{}",
        text(&out.stderr)
    );
    // A tenant's catalogue naming `../` is refused as any bad credential path is.
    std::fs::write(
        d.join("tenants/acme/scopes/up.toml"),
        "[[action]]\nname = \"up\"\naudience = \"https://x.internal\"\nagents = [\"k8s-prod:*\"]\ncredential = \"../globex/integrations/crm\"\n",
    )
    .unwrap();
    let out = run(
        &[
            "scopes",
            "check",
            "--config",
            config.to_str().unwrap(),
            "--tenant",
            "acme",
        ],
        d,
    );
    assert_eq!(out.status.code(), Some(2));
}

/// `keys/vault/tenant/FILE` rendered for `tenant`: its keyring at
/// `agent-sts/tenants/{tenant}/signing-keys` (or the Transit key `agent-sts-{tenant}`),
/// the deny list beside it, its credentials under `tenants/{tenant}`.
fn tenant_policy(file: &str, tenant: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("keys/vault/tenant")
        .join(file);
    std::fs::read_to_string(path)
        .unwrap()
        .replace("TENANT_TRANSIT_KEY", &format!("agent-sts-{tenant}"))
        .replace(
            "TENANT_KEYS_PATH",
            &format!("agent-sts/tenants/{tenant}/signing-keys"),
        )
        .replace(
            "TENANT_DENY_PATH",
            &format!("agent-sts/tenants/{tenant}/deny-list"),
        )
        .replace("TENANT_SECRETS_PREFIX", &format!("tenants/{tenant}"))
}

/// Two tenants on one OpenBao with the shipped tenant policy templates enforced: each
/// rotate token reaches its own keyring only, each shim token its own credentials
/// only, and a shim bound to acme injects acme's credential and refuses globex's
/// tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_policies_keep_each_tenant_and_its_shim_to_its_own_paths() {
    use crate::openbao::OpenBao;
    let vault = OpenBao::start().await;
    let two = ["acme", "globex"];
    for t in two {
        for (file, name) in [
            ("agent-sts.hcl.tmpl", format!("agent-sts-tenant-{t}")),
            ("shim.hcl.tmpl", format!("agent-sts-tenant-shim-{t}")),
            ("rotate.hcl.tmpl", format!("agent-sts-tenant-rotate-{t}")),
        ] {
            vault.load_policy(&name, &tenant_policy(file, t)).await;
        }
        vault
            .write(
                &format!("tenants/{t}/integrations/crm"),
                json!({"header": "Authorization", "value": canary(t)}),
            )
            .await;
    }
    crate::vault::plant_credentials(&vault).await;

    // The shim token of acme reads acme's credentials and nothing of globex's.
    let (shim_token, _) = vault
        .token(&["agent-sts-tenant-shim-acme"], "1h", true)
        .await;
    let get = reqwest::Method::GET;
    let read = |t: &str| format!("secret/data/tenants/{t}/integrations/crm");
    assert_eq!(
        vault
            .as_token(&shim_token, get.clone(), &read("acme"), None)
            .await
            .0,
        200
    );
    assert_eq!(
        vault
            .as_token(&shim_token, get.clone(), &read("globex"), None)
            .await
            .0,
        403
    );
    assert_eq!(
        vault
            .as_token(
                &shim_token,
                get.clone(),
                "secret/data/agent-sts/tenants/acme/signing-keys",
                None
            )
            .await
            .0,
        403,
        "a shim never reads a keyring"
    );
    let write = json!({"data": {"header": "Authorization", "value": "Bearer planted"}});
    assert_eq!(
        vault
            .as_token(
                &shim_token,
                reqwest::Method::POST,
                &read("acme"),
                Some(write)
            )
            .await
            .0,
        403,
        "a shim writes nothing"
    );

    // The STS: keys and credentials in Vault, two tenants with keyrings of their own.
    let issuers = Issuers::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("scopes")).unwrap();
    std::fs::write(d.join("scopes/test.toml"), SCOPES).unwrap();
    let mut blocks = String::new();
    for t in two {
        std::fs::create_dir_all(d.join(format!("tenants/{t}/scopes"))).unwrap();
        std::fs::write(d.join(format!("tenants/{t}/scopes/crm.toml")), scopes_of(t)).unwrap();
        blocks.push_str(&tenant_toml(d, t, Keyring::Vault));
    }
    let write_config = |name: &str, auth: &str| {
        let vault_section = crate::vault::vault_section(&vault, auth, "2s");
        let text = config_toml_with(
            d,
            &issuers.specs(),
            &format!("{vault_section}{blocks}"),
            ConfigTweaks::default(),
        )
        .replace("store = \"file\"", "store = \"vault\"");
        let path = d.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let rotate_top = write_config(
        "rotate.toml",
        &vault.token_auth(&["agent-sts-rotate"]).await,
    );
    let out = keys_rotate(&rotate_top, d, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rotate_acme = write_config(
        "rotate-acme.toml",
        &vault.token_auth(&["agent-sts-tenant-rotate-acme"]).await,
    );
    let out = keys_rotate(&rotate_acme, d, Some("acme"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = keys_rotate(&rotate_acme, d, Some("globex"));
    assert!(
        !out.status.success(),
        "acme's rotate token cannot write globex's keyring"
    );
    let out = keys_rotate(&rotate_acme, d, None);
    assert!(!out.status.success(), "nor the top level's");
    let rotate_globex = write_config(
        "rotate-globex.toml",
        &vault.token_auth(&["agent-sts-tenant-rotate-globex"]).await,
    );
    let out = keys_rotate(&rotate_globex, d, Some("globex"));
    assert!(out.status.success(), "{}", text(&out.stderr));

    let serve = write_config(
        "agent-sts.toml",
        &vault
            .token_auth(&[
                "agent-sts",
                "agent-sts-tenant-acme",
                "agent-sts-tenant-globex",
            ])
            .await,
    );
    let sts = ServeProcess::start(&serve, d, "info");
    let url = sts.url.clone();
    let mut tokens = Vec::new();
    for t in two {
        let r = mint_at(&url, &issuers, t).await;
        assert_eq!(r.status, 200, "{t}: {}", r.text);
        tokens.push(r.token());
    }

    // A shim bound to acme (its issuer, its prefix, its token) in front of an echo.
    let (echo, upstream) = crate::shim::start_echo().await;
    let shim_dir = tempfile::tempdir().unwrap();
    let shim_config = shim_dir.path().join("shim.toml");
    std::fs::write(
        &shim_config,
        format!(
            "[shim]\nlisten = \"127.0.0.1:0\"\naudience = \"https://crm-shim.acme.internal\"\nupstream = \"{upstream}\"\nissuer = \"{}\"\njwks_uri = \"{url}/t/acme/.well-known/jwks.json\"\nscopes_dir = \"{}\"\nsecrets_prefix = \"tenants/acme\"\n\n[secrets]\nstore = \"vault\"\n\n{}\n[audit]\npath = \"{}\"\n",
            issuer_of("acme"),
            d.join("tenants/acme/scopes").display(),
            crate::vault::vault_section(&vault, &format!("auth = \"token\"\ntoken_file = \"{}\"", {
                let file = shim_dir.path().join("token");
                crate::harness::write_secret_file(&file, &shim_token);
                file.display().to_string()
            }), "2s"),
            shim_dir.path().join("audit.log").display(),
        ),
    )
    .unwrap();
    let shim = ServeProcess::start_shim(&shim_config, shim_dir.path(), "info");
    let call = |token: &str| {
        reqwest::Client::new()
            .get(format!("{}/crm/records", shim.url))
            .bearer_auth(token)
            .send()
    };
    let ok = call(&tokens[0]).await.unwrap();
    assert_eq!(ok.status(), 200);
    let seen = echo.last().unwrap();
    assert_eq!(
        seen["headers"]["authorization"][0],
        canary("acme"),
        "acme's credential, injected"
    );
    let body = ok.text().await.unwrap();
    assert!(
        !body.contains(&canary("acme")[7..]),
        "and scrubbed from the answer"
    );
    let hits = echo.hits();
    let refused = call(&tokens[1]).await.unwrap();
    assert_eq!(refused.status(), 401, "globex's token at acme's shim");
    assert_eq!(echo.hits(), hits, "nothing reached the upstream");
    drop(shim);
    drop(sts);
}

/// A tenant whose keys never leave Vault: with `keys.store = "transit"` its
/// `keys_vault_path` names its own Transit key, made by `keys rotate --tenant` with the
/// rendered transit-rotate policy, and its tokens are signed by it and published in
/// its JWKS only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transit_tenant_signs_with_its_own_transit_key() {
    use crate::openbao::OpenBao;
    let vault = OpenBao::start().await;
    vault.enable_transit().await;
    for (file, name) in [
        ("transit.hcl.tmpl", "agent-sts-tenant-transit-acme"),
        (
            "transit-rotate.hcl.tmpl",
            "agent-sts-tenant-transit-rotate-acme",
        ),
    ] {
        vault.load_policy(name, &tenant_policy(file, "acme")).await;
    }
    vault
        .write(
            "tenants/acme/integrations/crm",
            json!({"header": "Authorization", "value": canary("acme")}),
        )
        .await;
    crate::vault::plant_credentials(&vault).await;

    let issuers = Issuers::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("scopes")).unwrap();
    std::fs::write(d.join("scopes/test.toml"), SCOPES).unwrap();
    std::fs::create_dir_all(d.join("tenants/acme/scopes")).unwrap();
    std::fs::write(d.join("tenants/acme/scopes/crm.toml"), scopes_of("acme")).unwrap();
    let acme = tenant_toml(d, "acme", Keyring::Transit);
    let write_config = |name: &str, auth: &str| {
        let text = format!(
            "{}{acme}",
            crate::transit::transit_config(d, &issuers, &vault, auth)
        );
        let path = d.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let top_rotate = write_config(
        "rotate.toml",
        &vault.token_auth(&["agent-sts-transit-rotate"]).await,
    );
    let out = keys_rotate(&top_rotate, d, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rotate_acme = write_config(
        "rotate-acme.toml",
        &vault
            .token_auth(&["agent-sts-tenant-transit-rotate-acme"])
            .await,
    );
    let out = keys_rotate(&rotate_acme, d, Some("acme"));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("transit/keys/agent-sts-acme"), "{stdout}");
    let out = keys_rotate(&rotate_acme, d, None);
    assert!(
        !out.status.success(),
        "acme's token cannot rotate the top level's key"
    );

    let serve = write_config(
        "agent-sts.toml",
        &vault
            .token_auth(&["agent-sts-transit", "agent-sts-tenant-transit-acme"])
            .await,
    );
    let sts = ServeProcess::start(&serve, d, "info");
    let url = sts.url.clone();
    let r = mint_at(&url, &issuers, "acme").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let token = r.token();
    let aud = "https://crm-shim.acme.internal";
    let jwks = format!("{url}/t/acme/.well-known/jwks.json");
    verify_with(&jwks, &issuer_of("acme"), &token, aud)
        .await
        .unwrap();
    let top_jwks = format!("{url}/.well-known/jwks.json");
    assert!(
        verify_with(&top_jwks, STS_ISSUER, &token, aud)
            .await
            .is_err(),
        "the top level's Transit key is not acme's"
    );
    drop(sts);
}
