//! Signing keys that never leave Vault (`keys.store = "transit"`), against OpenBao's
//! Transit engine with the shipped `agent-sts-transit` (serve) and
//! `agent-sts-transit-rotate` policies: tokens signed through Transit verify with the
//! STS's JWKS; `agent-sts keys rotate` and `bao write -f transit/keys/NAME/rotate`
//! both publish a version `publish_lead` before it signs (the older version signs by
//! explicit `key_version` until then); trimming old versions; and failing closed when
//! the key is deleted or its version no longer signs (503 + Retry-After, not ready,
//! the JWKS kept).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;
use crate::openbao::OpenBao;
use crate::process::{run, text};
use crate::vault::{eventually, plant_credentials, vault_section};

/// The STS's configuration for Transit at `transit/`, key `agent-sts`, the
/// credentials in KV, with `auth` lines; a 1 s refresh and a 6 s publish lead.
pub fn transit_config(dir: &Path, issuers: &Issuers, vault: &OpenBao, auth: &str) -> String {
    config_toml(dir, &issuers.specs(), &vault_section(vault, auth, "2s"))
        .replace(
            &format!("store = \"file\"\ndir = \"{}/keys\"", dir.display()),
            "store = \"transit\"",
        )
        .replace("store = \"file\"", "store = \"vault\"")
        .replace("publish_lead = \"10m\"", "publish_lead = \"6s\"")
        .replace("jwks_max_age = \"5m\"", "jwks_max_age = \"1s\"")
}

struct TransitSts {
    sts: TestSts,
    rotate_config: PathBuf,
    serve_token: String,
}

/// An STS signing through Transit: the key created by `agent-sts keys rotate` (the
/// CLI, with the rotate policy's token), the STS built with the serve policy's.
async fn transit_sts(vault: &OpenBao, issuers: &Issuers) -> TransitSts {
    vault.enable_transit().await;
    plant_credentials(vault).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("scopes")).unwrap();
    // docs.read may be handed to sub-agents: their tokens are signed through Transit too.
    let scopes = SCOPES.replace(
        "name = \"docs.read\"\n",
        "name = \"docs.read\"\ndelegable_to = [\"docs.read\"]\n",
    );
    std::fs::write(dir.path().join("scopes/test.toml"), scopes).unwrap();
    let (serve_token, serve_file) = vault.token(&["agent-sts-transit"], "1h", true).await;
    let (_, rotate_file) = vault.token(&["agent-sts-transit-rotate"], "1h", true).await;
    let auth = |file: &Path| format!("auth = \"token\"\ntoken_file = \"{}\"", file.display());
    let config_path = dir.path().join("agent-sts.toml");
    std::fs::write(
        &config_path,
        transit_config(dir.path(), issuers, vault, &auth(&serve_file)),
    )
    .unwrap();
    let rotate_config = dir.path().join("rotate.toml");
    std::fs::write(
        &rotate_config,
        transit_config(dir.path(), issuers, vault, &auth(&rotate_file)),
    )
    .unwrap();

    let out = run(
        &[
            "keys",
            "rotate",
            "--config",
            rotate_config.to_str().unwrap(),
        ],
        dir.path(),
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("(ES256, active)"), "{stdout}");
    assert!(
        stdout.contains("vault transit transit/keys/agent-sts"),
        "{stdout}"
    );

    let config =
        agent_sts::config::Config::load(&config_path, &std::collections::BTreeMap::new()).unwrap();
    let app = agent_sts::sts::build(&config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = app.serve(listener, None).await;
    });
    TransitSts {
        sts: TestSts {
            url,
            dir,
            config_path,
            client: reqwest::Client::new(),
        },
        rotate_config,
        serve_token,
    }
}

/// The kid of a minted token.
fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

/// The kids the STS's JWKS publishes.
async fn published(sts: &TestSts) -> Vec<String> {
    let jwks: Value = sts.get("/.well-known/jwks.json").await.json();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

/// `keys list --json` rows as (kid, state).
fn listed(config: &Path, dir: &Path) -> Vec<(String, String)> {
    let out = run(
        &[
            "keys",
            "list",
            "--json",
            "--config",
            config.to_str().unwrap(),
        ],
        dir,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["kid"].as_str().unwrap().to_string(),
                k["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transit_signs_and_follows_rotations_by_the_cli_and_by_bao_and_trimming() {
    let vault = OpenBao::start().await;
    let issuers = Issuers::start().await;
    let t = transit_sts(&vault, &issuers).await;
    let sts = &t.sts;
    let mint = || async {
        let r = sts
            .exchange_for(&issuers.k8s_token("triage"), "github.issues.create")
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        r.token()
    };

    let token = mint().await;
    let claims = verify_independently(&sts.url, &token, "https://github-shim.internal").await;
    assert_eq!(claims["scope"], "github.issues.create");
    let v1 = kid_of(&token);
    // A sub-agent's token, from a parent's, is signed through Transit as well.
    let parent = sts
        .exchange_for(&issuers.k8s_token("triage"), "docs.read")
        .await
        .token();
    let child = crate::delegation::sub_exchange(
        sts,
        &parent,
        &issuers.k8s_token("planner"),
        "docs.read",
        None,
    )
    .await;
    assert_eq!(child.status, 200, "{child:?}");
    assert_eq!(kid_of(&child.token()), v1);
    let claims = verify_independently(&sts.url, &child.token(), "https://docs.internal").await;
    assert_eq!(claims["act"]["sub"], "system:serviceaccount:agents:planner");
    assert_eq!(published(sts).await, vec![v1.clone()]);
    assert!(vault.count("transit/sign/agent-sts") >= 1);
    // The serve policy signs and reads; it cannot rotate, export or read the KV ring.
    let (status, _) = vault
        .as_token(
            &t.serve_token,
            reqwest::Method::POST,
            "transit/keys/agent-sts/rotate",
            None,
        )
        .await;
    assert_eq!(status, 403, "the serve policy must not rotate");

    // Concurrent mints are coalesced into Transit batch requests; every token is
    // signed by the key the JWKS publishes.
    let signs_before = vault.count("transit/sign/agent-sts");
    let tokens = futures_util::future::join_all((0..48).map(|_| async {
        let r = sts
            .exchange_for(&issuers.k8s_token("triage"), "github.issues.create")
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        r.token()
    }))
    .await;
    for token in &tokens {
        assert_eq!(kid_of(token), v1);
        verify_independently(&sts.url, token, "https://github-shim.internal").await;
    }
    let signs = vault.count("transit/sign/agent-sts") - signs_before;
    assert!(signs <= 48, "{signs} sign requests for 48 tokens");
    eprintln!("48 concurrent tokens: {signs} transit sign requests");

    // `bao write -f transit/keys/agent-sts/rotate`: version 2 is published at once
    // (within the 1 s refresh), and version 1 signs until the 6 s lead has passed.
    vault.bao(&["write", "-f", "transit/keys/agent-sts/rotate"]);
    assert!(
        eventually(5, || async { published(sts).await.len() == 2 }).await,
        "version 2 was not published"
    );
    let both = published(sts).await;
    let v2 = both.iter().find(|k| **k != v1).unwrap().clone();
    let states = listed(&t.rotate_config, sts.dir.path());
    assert!(states.contains(&(v2.clone(), "next".into())), "{states:?}");
    assert_eq!(
        kid_of(&mint().await),
        v1,
        "a next version signed before its lead"
    );
    // A second rotate while version 2 is pending is refused without --force.
    let out = run(
        &[
            "keys",
            "rotate",
            "--config",
            t.rotate_config.to_str().unwrap(),
        ],
        sts.dir.path(),
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("still pending"),
        "{}",
        text(&out.stderr)
    );
    let switched = eventually(15, || async {
        let r = sts
            .exchange_for(&issuers.k8s_token("triage"), "github.issues.create")
            .await;
        r.status == 200 && kid_of(&r.token()) == v2
    })
    .await;
    assert!(switched, "version 2 never started signing");
    let token = mint().await;
    verify_independently(&sts.url, &token, "https://github-shim.internal").await;
    assert!(
        published(sts).await.contains(&v1),
        "v1 is retiring, still published"
    );

    // `agent-sts keys rotate` (the CLI): version 3, next.
    let out = run(
        &[
            "keys",
            "rotate",
            "--config",
            t.rotate_config.to_str().unwrap(),
        ],
        sts.dir.path(),
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("(ES256, next)"), "{stdout}");
    assert!(
        eventually(5, || async { published(sts).await.len() == 3 }).await,
        "version 3 was not published"
    );

    // Trimming: versions below 3 are gone from Transit (an operator's act, with
    // their own token): the JWKS drops them, and version 3, now the oldest,
    // signs at once.
    vault.bao(&[
        "write",
        "transit/keys/agent-sts/config",
        "min_decryption_version=3",
        "min_encryption_version=3",
    ]);
    vault.bao(&[
        "write",
        "transit/keys/agent-sts/trim",
        "min_available_version=3",
    ]);
    assert!(
        eventually(5, || async { published(sts).await.len() == 1 }).await,
        "trimmed versions still published: {:?}",
        published(sts).await
    );
    let v3 = published(sts).await.remove(0);
    assert!(v3 != v1 && v3 != v2);
    let token = mint().await;
    assert_eq!(kid_of(&token), v3);
    verify_independently(&sts.url, &token, "https://github-shim.internal").await;
    assert_eq!(sts.get("/readyz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transit_key_that_stops_signing_or_is_deleted_fails_closed_and_keeps_the_jwks() {
    let vault = OpenBao::start().await;
    let issuers = Issuers::start().await;
    let t = transit_sts(&vault, &issuers).await;
    let sts = &t.sts;
    let exchange = || async {
        sts.exchange_for(&issuers.k8s_token("triage"), "github.issues.create")
            .await
    };
    let r = exchange().await;
    assert_eq!(r.status, 200, "{r:?}");
    let v1 = kid_of(&r.token());

    // Version 2 is created (next) and version 1 may no longer sign: the request that
    // meets the refusal answers 503 + Retry-After at once, and the next refresh
    // (1 s) takes the STS out of readiness. The JWKS keeps both keys.
    vault.bao(&["write", "-f", "transit/keys/agent-sts/rotate"]);
    assert!(eventually(5, || async { published(sts).await.len() == 2 }).await);
    vault.bao(&[
        "write",
        "transit/keys/agent-sts/config",
        "min_encryption_version=2",
    ]);
    let started = std::time::Instant::now();
    let r = exchange().await;
    r.assert_error(
        503,
        "temporarily_unavailable",
        &[&vault.root_token, &t.serve_token],
    );
    assert!(r.headers.contains_key("retry-after"));
    assert!(started.elapsed() < Duration::from_secs(2), "not at once");
    assert!(
        eventually(5, || async { sts.get("/readyz").await.status == 503 }).await,
        "a key that no longer signs left the STS ready"
    );
    let ready = sts.get("/readyz").await;
    assert!(ready.text.contains("keyring"), "{}", ready.text);
    assert!(!ready.text.contains(&t.serve_token));
    assert!(published(sts).await.contains(&v1), "the JWKS keeps v1");

    // Allowed again: signing and readiness come back within a refresh.
    vault.bao(&[
        "write",
        "transit/keys/agent-sts/config",
        "min_encryption_version=0",
    ]);
    assert!(
        eventually(5, || async { exchange().await.status == 200 }).await,
        "no recovery after signing was allowed again"
    );
    assert!(eventually(5, || async { sts.get("/readyz").await.status == 200 }).await);

    // The key deleted: nothing is minted, not ready, the JWKS keeps what it published.
    vault.bao(&[
        "write",
        "transit/keys/agent-sts/config",
        "deletion_allowed=true",
    ]);
    vault.bao(&["delete", "transit/keys/agent-sts"]);
    let r = exchange().await;
    r.assert_error(503, "temporarily_unavailable", &[]);
    assert!(r.headers.contains_key("retry-after"));
    assert!(eventually(5, || async { sts.get("/readyz").await.status == 503 }).await);
    let ready = sts.get("/readyz").await;
    assert!(ready.text.contains("does not exist"), "{}", ready.text);
    let jwks = published(sts).await;
    assert!(jwks.contains(&v1) && jwks.len() == 2, "{jwks:?}");
    // Still refused after a few refreshes (never a fallback).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    exchange()
        .await
        .assert_error(503, "temporarily_unavailable", &[]);
}

/// The TRACE leak hunt for Transit with JWT auth: `serve` (the real binary, every
/// target at TRACE) signs through Transit and logs in with its workload token; the
/// CLI rotates with an operator's token; then signing is refused. No token (root,
/// operator, workload JWT, subject), no credential shows in a response, a log line,
/// the CLI's output or the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transit_and_jwt_auth_leak_hunt_at_trace() {
    use crate::process::{ServeProcess, TRACE_ALL};
    const VAULT_AUDIENCE: &str = "https://vault.example.test";
    const SUBJECT: &str = "system:serviceaccount:agent-sts:agent-sts";
    let vault = OpenBao::start().await;
    vault.enable_transit().await;
    plant_credentials(&vault).await;
    let issuers = Issuers::start().await;
    let platform = TestIssuer::start(
        "https://oidc.platform.example.test",
        "ci-rs256.pem",
        jsonwebtoken::Algorithm::RS256,
        VAULT_AUDIENCE,
    )
    .await;
    vault.enable_auth("jwt", "jwt").await;
    vault
        .root(
            reqwest::Method::POST,
            "auth/jwt/config",
            serde_json::json!({"jwks_url": platform.jwks_uri, "bound_issuer": platform.iss}),
        )
        .await;
    vault
        .root(
            reqwest::Method::POST,
            "auth/jwt/role/agent-sts",
            serde_json::json!({
                "role_type": "jwt", "user_claim": "sub", "bound_subject": SUBJECT,
                "bound_audiences": [VAULT_AUDIENCE], "token_policies": ["agent-sts-transit"],
                "token_ttl": "1h",
            }),
        )
        .await;
    let workload = platform.token_for(SUBJECT);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("scopes")).unwrap();
    std::fs::write(dir.path().join("scopes/test.toml"), SCOPES).unwrap();
    std::fs::write(dir.path().join("workload-token"), &workload).unwrap();
    let jwt = format!(
        "auth = \"jwt\"\njwt_role = \"agent-sts\"\njwt_token_file = \"{}\"",
        dir.path().join("workload-token").display()
    );
    let (rotate_token, rotate_file) = vault.token(&["agent-sts-transit-rotate"], "1h", true).await;
    let config = dir.path().join("agent-sts.toml");
    std::fs::write(&config, transit_config(dir.path(), &issuers, &vault, &jwt)).unwrap();
    let ops = dir.path().join("rotate.toml");
    let ops_auth = format!(
        "auth = \"token\"\ntoken_file = \"{}\"",
        rotate_file.display()
    );
    std::fs::write(
        &ops,
        transit_config(dir.path(), &issuers, &vault, &ops_auth),
    )
    .unwrap();
    let ops = ops.to_str().unwrap();
    let rotate = run(&["keys", "rotate", "--config", ops], dir.path());
    assert!(rotate.status.success(), "{}", text(&rotate.stderr));
    let list = run(&["keys", "list", "--config", ops], dir.path());
    assert!(list.status.success(), "{}", text(&list.stderr));

    let sts = ServeProcess::start(&config, dir.path(), TRACE_ALL);
    let subject = issuers.k8s_token("triage");
    let url = format!("{}/token", sts.url);
    let mut responses = String::new();
    for scope in ["github.issues.create", "slack.message.post"] {
        let r = post_form(&url, exchange_form(&subject, scope)).await;
        responses.push_str(&format!("{} {:?} {}\n", r.status, r.headers, r.text));
    }
    assert!(responses.contains("\"access_token\""), "{responses}");
    // Signing refused: the error path logs too.
    vault.bao(&["write", "-f", "transit/keys/agent-sts/rotate"]);
    vault.bao(&[
        "write",
        "transit/keys/agent-sts/config",
        "min_encryption_version=2",
    ]);
    for _ in 0..3 {
        let r = post_form(&url, exchange_form(&subject, "github.issues.create")).await;
        responses.push_str(&format!("{} {:?} {}\n", r.status, r.headers, r.text));
    }
    assert!(responses.contains("503"), "{responses}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for path in ["/metrics", "/readyz", "/.well-known/jwks.json"] {
        let r = reqwest::get(format!("{}{path}", sts.url)).await.unwrap();
        responses.push_str(&reply(r).await.text);
    }
    let (stdout, stderr) = sts.stop();
    assert!(stderr.contains("TRACE"), "no TRACE lines captured");
    assert!(stderr.contains("vault login succeeded"), "{stderr}");
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    let cli = format!(
        "{}{}{}{}",
        text(&rotate.stdout),
        text(&rotate.stderr),
        text(&list.stdout),
        text(&list.stderr)
    );
    let secrets = [
        vault.root_token.clone(),
        rotate_token,
        workload.clone(),
        // The workload token's signature alone, in case it were cut up.
        workload.rsplit('.').next().unwrap().to_string(),
        CANARY_CREDENTIAL.to_string(),
        "xoxb-CANARY-slack-0123456789".to_string(),
        subject,
    ];
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
