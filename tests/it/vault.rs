//! Vault custody against a real Vault-API server (OpenBao on 127.0.0.1, KV v2, the
//! shipped least-privilege policies enforced): keys and credentials read from Vault,
//! token and AppRole auth, the credential gate following Vault, and failing closed
//! while Vault is sealed or down, recovering after.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;
use crate::openbao::OpenBao;
use crate::process::TRACE_ALL;

/// An STS whose key store and secret store are OpenBao, with `auth` lines for
/// `[vault]` (its own credentials); `max_stale` 2 s so the tests see staleness
/// quickly. Its first key is made by `keys rotate` with the rotate policy's token.
async fn vault_sts(vault: &OpenBao, issuers: &Issuers, auth: &str) -> TestSts {
    vault_sts_with(vault, issuers, auth, |c| c).await
}

/// [`vault_sts`] with `edit` applied to the configuration text.
pub async fn vault_sts_with(
    vault: &OpenBao,
    issuers: &Issuers,
    auth: &str,
    edit: impl Fn(String) -> String,
) -> TestSts {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("scopes")).unwrap();
    std::fs::write(dir.path().join("scopes/test.toml"), SCOPES).unwrap();
    let write = |name: &str, auth: &str| {
        let text = edit(
            config_toml(
                dir.path(),
                &issuers.specs(),
                &vault_section(vault, auth, "2s"),
            )
            .replace("store = \"file\"", "store = \"vault\""),
        );
        let path = dir.path().join(name);
        std::fs::write(&path, &text).unwrap();
        path
    };
    let config_path = write("agent-sts.toml", auth);
    let rotate = write(
        "rotate.toml",
        &vault.token_auth(&["agent-sts-rotate"]).await,
    );
    TestSts::serve_rotated_by(dir, config_path, &rotate).await
}

/// The `[vault]` section for `vault` (KV v2 at `secret/`) with `auth` lines.
pub fn vault_section(vault: &OpenBao, auth: &str, max_stale: &str) -> String {
    format!(
        "[vault]\naddress = \"{}\"\nkv_mount = \"secret\"\nkv_version = 2\n{auth}\ntimeout = \"1s\"\nmax_stale = \"{max_stale}\"\n",
        vault.addr
    )
}

pub async fn plant_credentials(vault: &OpenBao) {
    vault
        .write(
            "integrations/github",
            json!({"header": "Authorization", "value": CANARY_CREDENTIAL}),
        )
        .await;
    vault
        .write(
            "integrations/slack",
            json!({"header": "Authorization", "value": "Bearer xoxb-CANARY-slack-0123456789"}),
        )
        .await;
}

/// `auth = "token"` lines for a token with the shipped `agent-sts` (serve) policy.
pub async fn serve_token_auth(vault: &OpenBao) -> String {
    vault.token_auth(&["agent-sts"]).await
}

/// Polls `f` every 100 ms for up to `secs` seconds until it is true.
pub async fn eventually<F, Fut>(secs: u64, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..secs * 10 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_mints_with_a_vault_key_verified_via_jwks_and_the_gate_follows_vault() {
    let vault = OpenBao::start().await;
    plant_credentials(&vault).await;
    let issuers = Issuers::start().await;
    let sts = vault_sts(&vault, &issuers, &serve_token_auth(&vault).await).await;

    // The keyring lives in Vault, not on disk.
    let ring = vault
        .read("agent-sts/signing-keys")
        .await
        .expect("keyring written to Vault");
    assert_eq!(ring["keys"].as_array().unwrap().len(), 1);
    assert!(!sts.dir.path().join("keys/signing-keys.json").exists());

    let subject = issuers.k8s_token("triage");
    let r = sts.exchange_for(&subject, "github.issues.create").await;
    assert_eq!(r.status, 200, "{r:?}");
    let claims = verify_independently(&sts.url, &r.token(), "https://github-shim.internal").await;
    assert_eq!(claims["scope"], "github.issues.create");
    assert!(!r.text.contains(CANARY_CREDENTIAL));
    // Vault latency by operation: the start's lookup-self and the reads of the ring
    // and the credential, from a fixed set of operation names.
    let metrics = sts.get("/metrics").await.text;
    for operation in ["read", "lookup"] {
        let count =
            format!("agent_sts_vault_request_duration_seconds_count{{operation=\"{operation}\"}} ");
        assert!(metrics.contains(&count), "{operation}: {metrics}");
    }
    assert!(!metrics.contains(&vault.root_token), "{metrics}");

    // Missing in Vault → no token.
    sts.exchange_for(&subject, "disabled.thing")
        .await
        .assert_error(400, "invalid_scope", &[]);

    // Disabled at the source: refused once the cache entry expires (≤ max_stale).
    vault
        .write(
            "integrations/github",
            json!({"header": "Authorization", "value": CANARY_CREDENTIAL, "disabled": true}),
        )
        .await;
    let refused = eventually(5, || async {
        sts.exchange_for(&subject, "github.issues.create")
            .await
            .error()
            == "invalid_scope"
    })
    .await;
    assert!(
        refused,
        "disabling the credential in Vault did not stop new tokens"
    );
    // A credential without `value` is refused, not a crash.
    vault
        .write("integrations/slack", json!({"header": "Authorization"}))
        .await;
    let refused = eventually(5, || async {
        sts.exchange_for(&subject, "slack.message.post")
            .await
            .status
            != 200
    })
    .await;
    assert!(refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approle_login_works_and_a_bad_token_fails_closed() {
    let vault = OpenBao::start().await;
    plant_credentials(&vault).await;
    let (role_id, secret_id) = vault.enable_approle("agent-sts", &["agent-sts"]).await;
    let dir = vault.dir();
    write_secret_file(&dir.join("role-id"), &role_id);
    write_secret_file(&dir.join("secret-id"), &secret_id);
    let issuers = Issuers::start().await;
    // Keys are bootstrapped with the root token (ops), the STS reads with AppRole.
    let approle = format!(
        "auth = \"approle\"\nrole_id_file = \"{}\"\nsecret_id_file = \"{}\"",
        dir.join("role-id").display(),
        dir.join("secret-id").display()
    );
    let sts = vault_sts(&vault, &issuers, &approle).await;
    let r = sts
        .exchange_for(&issuers.k8s_token("triage"), "github.issues.create")
        .await;
    assert_eq!(r.status, 200, "{r:?}");

    // A bad token: every request fails closed, quickly, with 503 and Retry-After.
    let bad = vault.dir().join("bad-token");
    write_secret_file(&bad, "not-a-valid-token");
    let extra = vault_section(
        &vault,
        &format!("auth = \"token\"\ntoken_file = \"{}\"", bad.display()),
        "2s",
    );
    let bad_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(bad_dir.path().join("scopes")).unwrap();
    std::fs::write(bad_dir.path().join("scopes/test.toml"), SCOPES).unwrap();
    let text = config_toml(bad_dir.path(), &issuers.specs(), &extra)
        .replace("store = \"file\"", "store = \"vault\"");
    let path = bad_dir.path().join("agent-sts.toml");
    std::fs::write(&path, text).unwrap();
    let config =
        agent_sts::config::Config::load(&path, &std::collections::BTreeMap::new()).unwrap();
    let app = agent_sts::sts::build(&config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = app.serve(listener, None).await;
    });
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let r = post_form(
            &format!("{url}/token"),
            exchange_form(&issuers.k8s_token("triage"), "github.issues.create"),
        )
        .await;
        r.assert_error(503, "temporarily_unavailable", &["not-a-valid-token"]);
        assert!(r.headers.contains_key("retry-after"));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "not inside the deadline"
        );
    }
    let ready = reqwest::get(format!("{url}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_or_dead_vault_means_503_then_recovery() {
    let mut vault = OpenBao::start().await;
    plant_credentials(&vault).await;
    let issuers = Issuers::start().await;
    let sts = vault_sts(&vault, &issuers, &serve_token_auth(&vault).await).await;
    let token = || issuers.k8s_token("triage");
    let r = sts.exchange_for(&token(), "github.issues.create").await;
    assert_eq!(r.status, 200, "{r:?}");

    for outage in ["seal", "kill"] {
        match outage {
            "seal" => vault.seal().await,
            _ => vault.kill(),
        }
        let down = eventually(8, || async {
            let r = sts.exchange_for(&token(), "github.issues.create").await;
            r.status == 503 && r.headers.contains_key("retry-after")
        })
        .await;
        assert!(
            down,
            "{outage}: no 503 once keys and credentials went stale"
        );
        assert_eq!(
            sts.get("/healthz").await.status,
            200,
            "{outage}: liveness stays up"
        );
        assert_eq!(
            sts.get("/.well-known/jwks.json").await.status,
            200,
            "{outage}: JWKS stays up"
        );
        assert_eq!(sts.get("/readyz").await.status, 503, "{outage}: not ready");

        match outage {
            "seal" => vault.unseal().await,
            _ => vault.restart().await,
        }
        let back = eventually(8, || async {
            sts.exchange_for(&token(), "github.issues.create")
                .await
                .status
                == 200
        })
        .await;
        assert!(back, "{outage}: did not recover");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_leak_hunt_at_trace_finds_no_token_secret_id_credential_or_key() {
    use crate::process::{ServeProcess, run, text};
    let vault = OpenBao::start().await;
    plant_credentials(&vault).await;
    let (role_id, secret_id) = vault.enable_approle("agent-sts", &["agent-sts"]).await;
    let issuers = Issuers::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("scopes")).unwrap();
    std::fs::write(dir.path().join("scopes/test.toml"), SCOPES).unwrap();
    write_secret_file(&dir.path().join("role-id"), &role_id);
    write_secret_file(&dir.path().join("secret-id"), &secret_id);
    let approle = format!(
        "auth = \"approle\"\nrole_id_file = \"{d}/role-id\"\nsecret_id_file = \"{d}/secret-id\"",
        d = dir.path().display()
    );
    let (rotate_token, rotate_token_file) = vault.token(&["agent-sts-rotate"], "1h", true).await;
    let write_config = |name: &str, auth: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            config_toml(
                dir.path(),
                &issuers.specs(),
                &vault_section(&vault, auth, "2s"),
            )
            .replace("store = \"file\"", "store = \"vault\""),
        )
        .unwrap();
        path
    };
    let config = write_config("agent-sts.toml", &approle);
    let ops = write_config(
        "rotate.toml",
        &format!(
            "auth = \"token\"\ntoken_file = \"{}\"",
            rotate_token_file.display()
        ),
    );
    let ops = ops.to_str().unwrap();
    let rotate = run(&["keys", "rotate", "--config", ops], dir.path());
    assert!(rotate.status.success(), "{}", text(&rotate.stderr));
    let list = run(&["keys", "list", "--config", ops], dir.path());
    assert!(list.status.success(), "{}", text(&list.stderr));

    let sts = ServeProcess::start(&config, dir.path(), TRACE_ALL);
    let subject = issuers.k8s_token("triage");
    let url = format!("{}/token", sts.url);
    let mut responses = String::new();
    for scope in [
        "github.issues.create",
        "slack.message.post",
        "disabled.thing",
    ] {
        let r = post_form(&url, exchange_form(&subject, scope)).await;
        responses.push_str(&format!("{} {:?} {}\n", r.status, r.headers, r.text));
    }
    assert!(responses.contains("\"access_token\""), "{responses}");
    vault.seal().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for _ in 0..3 {
        let r = post_form(&url, exchange_form(&subject, "github.issues.create")).await;
        responses.push_str(&format!("{} {:?} {}\n", r.status, r.headers, r.text));
    }
    assert!(responses.contains("503"), "{responses}");
    vault.unseal().await;
    for path in ["/metrics", "/readyz", "/.well-known/jwks.json"] {
        let r = reqwest::get(format!("{}{path}", sts.url)).await.unwrap();
        responses.push_str(&reply(r).await.text);
    }
    let (stdout, stderr) = sts.stop();
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert!(stderr.contains("TRACE"), "no TRACE lines captured");

    let ring = vault.read("agent-sts/signing-keys").await.unwrap();
    let pem = ring["keys"][0]["private_key"].as_str().unwrap().to_string();
    let mut secrets: Vec<String> = vec![
        vault.root_token.clone(),
        rotate_token.clone(),
        secret_id.clone(),
        role_id.clone(),
        CANARY_CREDENTIAL.to_string(),
        "xoxb-CANARY-slack-0123456789".to_string(),
        subject.clone(),
    ];
    secrets.extend(
        pem.lines()
            .filter(|l| !l.starts_with("-----") && l.len() > 16)
            .map(String::from),
    );
    let cli = format!(
        "{}{}{}{}",
        text(&rotate.stdout),
        text(&rotate.stderr),
        text(&list.stdout),
        text(&list.stderr)
    );
    for (name, output) in [
        ("responses", &responses),
        ("stdout", &stdout),
        ("stderr", &stderr),
        ("audit log", &audit),
        ("keys rotate/list", &cli),
    ] {
        for secret in &secrets {
            assert!(
                !output.contains(secret.as_str()),
                "{name} contains a secret ({} chars starting {:?})",
                secret.len(),
                &secret[..6]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_in_vault_reaches_two_sts_processes_before_it_signs() {
    use crate::process::{ServeProcess, run, text};
    let vault = OpenBao::start().await;
    plant_credentials(&vault).await;
    let issuers = Issuers::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("scopes")).unwrap();
    std::fs::write(dir.path().join("scopes/test.toml"), SCOPES).unwrap();
    let write_config = |name: &str, auth: &str| {
        let text_config = config_toml(
            dir.path(),
            &issuers.specs(),
            &vault_section(&vault, auth, "5s"),
        )
        .replace("store = \"file\"", "store = \"vault\"")
        .replace("refresh_interval = \"1s\"", "refresh_interval = \"300ms\"")
        .replace("publish_lead = \"10m\"", "publish_lead = \"4s\"")
        .replace("jwks_max_age = \"5m\"", "jwks_max_age = \"1s\"");
        let path = dir.path().join(name);
        std::fs::write(&path, text_config).unwrap();
        path
    };
    let config = write_config("agent-sts.toml", &serve_token_auth(&vault).await);
    let ops = write_config(
        "rotate.toml",
        &vault.token_auth(&["agent-sts-rotate"]).await,
    );
    let c = ops.to_str().unwrap();
    assert!(
        run(&["keys", "rotate", "--config", c], dir.path())
            .status
            .success()
    );

    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let a = ServeProcess::start(&config, &dir_a, "info");
    let b = ServeProcess::start(&config, &dir_b, "info");
    let kid_of = |token: &str| jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
    let mint = |url: String| {
        let subject = issuers.k8s_token("triage");
        async move {
            let r = post_form(
                &format!("{url}/token"),
                exchange_form(&subject, "docs.read"),
            )
            .await;
            assert_eq!(r.status, 200, "{r:?}");
            r.token()
        }
    };
    let old_kid = kid_of(&mint(a.url.clone()).await);

    let rotated = run(&["keys", "rotate", "--config", c], dir.path());
    assert!(rotated.status.success(), "{}", text(&rotated.stderr));
    let new_kid = text(&rotated.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    assert_ne!(new_kid, old_kid);

    // Every replica publishes the new kid while the old one still signs.
    let published = |url: String, kid: String| async move {
        let jwks = reqwest::get(format!("{url}/.well-known/jwks.json"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        jwks.contains(&kid)
    };
    for sts in [&a, &b] {
        let seen = eventually(3, || published(sts.url.clone(), new_kid.clone())).await;
        assert!(seen, "{} did not publish the new kid within 3 s", sts.url);
        assert_eq!(
            kid_of(&mint(sts.url.clone()).await),
            old_kid,
            "signed before the lead time"
        );
    }
    // After the lead time both sign with it, and each token verifies through the other
    // replica's JWKS (the retiring key stays published there too).
    for (signer, verifier) in [(&a, &b), (&b, &a)] {
        let mut token = String::new();
        let mut switched = false;
        for _ in 0..80 {
            token = mint(signer.url.clone()).await;
            if kid_of(&token) == new_kid {
                switched = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(switched, "{} never signed with the new kid", signer.url);
        verify_independently(&verifier.url, &token, "https://docs.internal").await;
        let jwks = reqwest::get(format!("{}/.well-known/jwks.json", verifier.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            jwks.contains(&old_kid),
            "the retiring key left too early: {jwks}"
        );
    }
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_keyring_in_vault_keeps_the_last_good_one() {
    let vault = OpenBao::start().await;
    plant_credentials(&vault).await;
    let issuers = Issuers::start().await;
    let sts = vault_sts(&vault, &issuers, &serve_token_auth(&vault).await).await;
    let token = || issuers.k8s_token("triage");
    let first = sts.exchange_for(&token(), "docs.read").await;
    assert_eq!(first.status, 200, "{first:?}");
    let kid = jsonwebtoken::decode_header(first.token())
        .unwrap()
        .kid
        .unwrap();
    let good = vault.read("agent-sts/signing-keys").await.unwrap();

    // A key whose stored public part belongs to another key, then plain garbage.
    let mut mismatched = good.clone();
    let other = agent_sts::keys::signing_key::SigningKey::generate(
        agent_sts::keys::signing_key::SigningAlgorithm::ES256,
    )
    .unwrap()
    .0;
    mismatched["keys"][0]["public_jwk"] = other.public_jwk.clone();
    for bad in [mismatched, json!({"keys": "not a list"})] {
        vault.write("agent-sts/signing-keys", bad).await;
        let noticed = eventually(5, || async {
            let ready = sts.get("/readyz").await.json();
            ready["checks"]["keyring"]
                .as_str()
                .is_some_and(|k| k != "ok")
        })
        .await;
        assert!(noticed, "/readyz does not report the malformed keyring");
        let r = sts.exchange_for(&token(), "docs.read").await;
        assert_eq!(r.status, 200, "the last good ring must keep signing: {r:?}");
        assert_eq!(
            jsonwebtoken::decode_header(r.token()).unwrap().kid.unwrap(),
            kid
        );
        let metrics = sts.get("/metrics").await.text;
        assert!(
            !metrics.contains("agent_sts_keyring_refresh_failures_total 0"),
            "{metrics}"
        );
    }
    vault.write("agent-sts/signing-keys", good).await;
    let healed = eventually(5, || async {
        sts.get("/readyz").await.json()["checks"]["keyring"] == "ok"
    })
    .await;
    assert!(healed);
}

/// A policy a real operator might write by mistake: the serve policy, but the
/// credentials granted one by one, and `integrations/slack` forgotten.
const NARROW_POLICY: &str = r#"
path "secret/data/agent-sts/signing-keys" { capabilities = ["read"] }
path "secret/data/agent-sts/deny-list" { capabilities = ["read"] }
path "secret/data/integrations/github" { capabilities = ["read"] }
path "auth/token/renew-self" { capabilities = ["update"] }
path "auth/token/lookup-self" { capabilities = ["read"] }
"#;

/// An `agent-sts serve` process logging in with AppRole under `policies`, its keyring
/// made with the rotate policy, rate limits out of the way; `(process, dir)`.
async fn serve_process_with_approle(
    vault: &OpenBao,
    issuers: &Issuers,
    policies: &[&str],
) -> (crate::process::ServeProcess, tempfile::TempDir) {
    use crate::process::{ServeProcess, run, text};
    let (role_id, secret_id) = vault.enable_approle("agent-sts", policies).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("scopes")).unwrap();
    std::fs::write(dir.path().join("scopes/test.toml"), SCOPES).unwrap();
    write_secret_file(&dir.path().join("role-id"), &role_id);
    write_secret_file(&dir.path().join("secret-id"), &secret_id);
    let approle = format!(
        "auth = \"approle\"\nrole_id_file = \"{d}/role-id\"\nsecret_id_file = \"{d}/secret-id\"",
        d = dir.path().display()
    );
    let write_config = |name: &str, auth: &str| {
        let section = format!(
            "{}\n[limits]\nrate_per_second = 100000\nrate_burst = 100000\n",
            vault_section(vault, auth, "5s")
        );
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            config_toml(dir.path(), &issuers.specs(), &section)
                .replace("store = \"file\"", "store = \"vault\""),
        )
        .unwrap();
        path
    };
    let config = write_config("agent-sts.toml", &approle);
    let ops = write_config(
        "rotate.toml",
        &vault.token_auth(&["agent-sts-rotate"]).await,
    );
    let rotate = run(
        &["keys", "rotate", "--config", ops.to_str().unwrap()],
        dir.path(),
    );
    assert!(rotate.status.success(), "{}", text(&rotate.stderr));
    let sts = ServeProcess::start(&config, dir.path(), "info");
    (sts, dir)
}

/// Issue: anonymous `/readyz` and `/token` for a credential the policy denies turned
/// into Vault logins and reads, one or more per request. Now readiness is computed
/// from what the client holds, and a denial is answered from memory: the Vault
/// traffic of 1,000 of each is a constant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_probes_and_a_denied_credential_cost_vault_a_constant() {
    let vault = OpenBao::start().await;
    plant_credentials(&vault).await;
    vault
        .root(
            reqwest::Method::PUT,
            "sys/policies/acl/narrow",
            json!({ "policy": NARROW_POLICY }),
        )
        .await;
    let issuers = Issuers::start().await;
    let (sts, _dir) = serve_process_with_approle(&vault, &issuers, &["narrow"]).await;
    let http = reqwest::Client::new();
    let ready = http
        .get(format!("{}/readyz", sts.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "{:?}", ready.text().await);

    // What the STS sends on its own (keyring refresh, health check-in) is not what
    // is measured: only logins and the paths the requests would cause.
    let logins = || vault.count("auth/approle/login");
    let caused = || {
        vault
            .requests()
            .iter()
            .filter(|r| {
                !r.by_root
                    && r.path != "secret/data/agent-sts/signing-keys"
                    && r.path != "secret/data/agent-sts/deny-list"
                    && r.path != "auth/token/lookup-self"
            })
            .count()
    };
    let (logins_before, caused_before) = (logins(), caused());
    for _ in 0..20 {
        let probes = (0..50).map(|_| http.get(format!("{}/readyz", sts.url)).send());
        for r in futures_util::future::join_all(probes).await {
            assert_eq!(r.unwrap().status(), 200);
        }
    }
    assert_eq!(logins(), logins_before, "1,000 /readyz logged in to Vault");
    assert_eq!(
        caused(),
        caused_before,
        "1,000 /readyz caused Vault requests"
    );

    // 1,000 /token for an action whose credential the policy denies.
    let subject = issuers.k8s_token("triage");
    let lookups_before = vault.count("auth/token/lookup-self");
    let started = std::time::Instant::now();
    let token_url = format!("{}/token", sts.url);
    for _ in 0..20 {
        let calls =
            (0..50).map(|_| post_form(&token_url, exchange_form(&subject, "slack.message.post")));
        for r in futures_util::future::join_all(calls).await {
            r.assert_error(400, "invalid_scope", &["integrations/slack"]);
            assert!(
                !r.headers.contains_key("retry-after"),
                "a configuration error invites no retry"
            );
        }
    }
    let windows = 1 + started.elapsed().as_secs() as usize / 30;
    let reads = vault.count("secret/data/integrations/slack");
    let lookups = vault.count("auth/token/lookup-self") - lookups_before;
    assert!(
        (1..=windows).contains(&reads),
        "{reads} reads of the denied path for 1,000 requests"
    );
    assert!(lookups <= 2 * windows, "{lookups} lookup-self calls");
    assert_eq!(logins(), logins_before, "a policy denial caused a login");
    eprintln!(
        "1,000 /readyz: 0 Vault requests; 1,000 /token on a denied path: {reads} read(s), {lookups} lookup-self, 0 logins"
    );

    // The allowed action still works with the same token; the denial is counted.
    let ok = post_form(
        &format!("{}/token", sts.url),
        exchange_form(&subject, "github.issues.create"),
    )
    .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    let metrics = http
        .get(format!("{}/metrics", sts.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counter = |prefix: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in {metrics}"))
    };
    // Per caller (concurrent callers share one store lookup, so the Vault client's
    // own counter counts operations, not callers).
    assert_eq!(
        counter(
            "agent_sts_tokens_denied_total{action=\"slack.message.post\",reason=\"credential_unavailable\"} "
        ),
        1000
    );
    assert!(counter("agent_sts_vault_permission_denied_total ") >= 1);

    // Logged once per interval, not once per request.
    let (_, stderr) = sts.stop();
    let logged = stderr.matches("policy denies this path").count();
    assert!(
        (1..=windows).contains(&logged),
        "the denial was logged {logged} times"
    );
}

/// A token that Vault revokes (or that expires) under a running STS: the next call
/// sees a 403, `lookup-self` confirms the token is gone, and the STS logs in once,
/// however many requests were in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_means_one_login_not_one_per_request() {
    let vault = OpenBao::start().await;
    plant_credentials(&vault).await;
    let issuers = Issuers::start().await;
    let (sts, _dir) = serve_process_with_approle(&vault, &issuers, &["agent-sts"]).await;
    let subject = issuers.k8s_token("triage");
    let token_url = format!("{}/token", sts.url);
    let mint = || post_form(&token_url, exchange_form(&subject, "github.issues.create"));
    assert_eq!(mint().await.status, 200);
    let logins_before = vault.count("auth/approle/login");
    vault
        .root(
            reqwest::Method::PUT,
            "sys/leases/revoke-prefix/auth/approle/login",
            json!({}),
        )
        .await;
    // Past the credential cache (max 30 s, min(max_stale=5 s)): every request reads.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let batch = futures_util::future::join_all((0..20).map(|_| mint())).await;
        statuses.extend(batch.iter().map(|r| r.status));
    }
    assert!(
        statuses.iter().filter(|s| **s == 200).count() >= 190,
        "{statuses:?}"
    );
    let logins = vault.count("auth/approle/login") - logins_before;
    assert_eq!(logins, 1, "{logins} logins after one revocation");
}

/// `auth = "token"`: the token is looked up at start and renewed at 70% of its TTL
/// (a 6 s token serves for 15 s); a token that cannot be renewed is reported in
/// `/readyz` and the metrics before it expires, and not ready once it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_renews_its_token_and_reports_one_that_cannot_be() {
    let vault = OpenBao::start().await;
    plant_credentials(&vault).await;
    let issuers = Issuers::start().await;
    let (_, renewable) = vault.token(&["agent-sts"], "6s", true).await;
    let auth = format!("auth = \"token\"\ntoken_file = \"{}\"", renewable.display());
    let sts = vault_sts(&vault, &issuers, &auth).await;
    let subject = issuers.k8s_token("triage");
    let until = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < until {
        let r = sts.exchange_for(&subject, "github.issues.create").await;
        assert_eq!(r.status, 200, "the renewable token lapsed: {r:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(vault.count("auth/token/renew-self") >= 2);
    assert!(vault.count("auth/token/lookup-self") >= 1);

    let (_, fixed) = vault.token(&["agent-sts"], "8s", false).await;
    let auth = format!("auth = \"token\"\ntoken_file = \"{}\"", fixed.display());
    let sts = vault_sts(&vault, &issuers, &auth).await;
    let ready = sts.get("/readyz").await;
    assert_eq!(ready.status, 200, "{ready:?}");
    let detail = ready.json()["checks"]["vault"].as_str().unwrap().to_owned();
    assert!(
        detail.contains("cannot be renewed and expires in"),
        "{detail}"
    );
    let metrics = sts.get("/metrics").await.text;
    assert!(
        metrics.contains("agent_sts_vault_token_renewable 0"),
        "{metrics}"
    );
    let expires_at: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("agent_sts_vault_token_expires_at_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(
        expires_at > now() && expires_at <= now() + 9,
        "{expires_at}"
    );
    let expired = eventually(15, || async {
        let r = sts.get("/readyz").await;
        r.status == 503 && r.text.contains("expired")
    })
    .await;
    assert!(expired, "{:?}", sts.get("/readyz").await);
}
