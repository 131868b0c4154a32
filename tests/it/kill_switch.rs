//! The kill switch end to end (README, "Stopping an agent"): two STS replicas, a shim
//! and a downstream service on the verifier crate, all sharing one OpenBao under the
//! shipped policies; `agent-sts deny` run as the security team would, and the time
//! until each of the four refuses measured against the configured bound.

use std::time::{Duration, Instant};

use agent_sts_verifier::{AccessToken, RequireAccessToken, Verifier};
use axum::{Extension, routing::get};
use serde_json::{Value, json};

use crate::harness::*;
use crate::openbao::OpenBao;
use crate::process::{run, text};
use crate::shim::{GITHUB, ISSUES, TestShim, audit_lines, start_echo};
use crate::vault::{plant_credentials, serve_token_auth, vault_section, vault_sts_with};

/// `deny.refresh_interval` of the replicas and `deny_refresh` of the shim and the
/// service in these tests.
const REFRESH: Duration = Duration::from_secs(1);

/// The propagation bound: the replicas read the store within `REFRESH`, a verifier
/// reads a replica's feed within its own `REFRESH`, plus a second for the reads.
const BOUND: Duration = Duration::from_secs(3);

const TRIAGE: &str = "k8s-prod:system:serviceaccount:agents:triage";
const DOCS: &str = "https://docs.internal";

fn deny_section(extra: &str) -> String {
    format!("\n[deny]\nrefresh_interval = \"1s\"\n{extra}")
}

/// The STS configuration of `sts` with `auth` lines instead of its own, written to
/// `name` beside it: how an operator's credentials are given to the CLI.
async fn operator_config(vault: &OpenBao, sts: &TestSts, name: &str, policy: &str) -> String {
    let own = std::fs::read_to_string(&sts.config_path).unwrap();
    let start = own.find("[vault]").unwrap();
    let end = own[start..]
        .find("\n[")
        .map_or(own.len(), |i| start + i + 1);
    let section = vault_section(vault, &vault.token_auth(&[policy]).await, "2s");
    let text = format!("{}{section}{}", &own[..start], &own[end..]);
    let path = sts.dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// `agent-sts deny ARGS --config CONFIG`; stdout, or the failure.
fn deny(config: &str, args: &[&str]) -> String {
    let mut all = vec!["deny", args[0], "--config", config];
    all.extend_from_slice(&args[1..]);
    let out = run(&all, std::path::Path::new("/"));
    assert!(out.status.success(), "deny {args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// A downstream service on the verifier crate's layer, reading `sts`'s JWKS and feed.
async fn downstream(sts: &TestSts) -> String {
    let jwks = format!("{}/.well-known/jwks.json", sts.url);
    let verifier = Verifier::builder(STS_ISSUER, DOCS, &jwks)
        .deny_refresh(REFRESH)
        .build()
        .unwrap();
    let app = axum::Router::new()
        .route(
            "/doc",
            get(|Extension(t): Extension<AccessToken>| async move { t.client_id }),
        )
        .layer(RequireAccessToken::new(std::sync::Arc::new(verifier)));
    let addr = agent_sts_testkit::serve(app).await;
    format!("http://{addr}")
}

async fn status(request: reqwest::RequestBuilder) -> u16 {
    request.send().await.map_or(0, |r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_add_reaches_two_replicas_a_shim_and_a_service_within_the_bound() {
    let vault = OpenBao::start().await;
    plant_credentials(&vault).await;
    let issuers = Issuers::start().await;
    let auth = serve_token_auth(&vault).await;
    let a = vault_sts_with(&vault, &issuers, &auth, |t| t + &deny_section("")).await;
    let b_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(b_dir.path().join("scopes")).unwrap();
    std::fs::copy(
        a.dir.path().join("scopes/test.toml"),
        b_dir.path().join("scopes/test.toml"),
    )
    .unwrap();
    let b_config = b_dir.path().join("agent-sts.toml");
    let a_text = std::fs::read_to_string(&a.config_path).unwrap();
    std::fs::write(
        &b_config,
        a_text.replace(
            &a.dir.path().display().to_string(),
            &b_dir.path().display().to_string(),
        ),
    )
    .unwrap();
    let b = TestSts::replica(b_dir, b_config).await;

    let (echo, upstream) = start_echo().await;
    let shim = TestShim::write_config(
        &a,
        GITHUB,
        &upstream,
        "deny_refresh = \"1s\"",
        &a.dir.path().join("scopes"),
    );
    shim.use_vault(&vault, &["agent-sts-shim"]).await;
    let app = shim.build().await;
    let shim = shim.serve(app).await;
    let service = downstream(&b).await;
    let ops = operator_config(&vault, &a, "deny.toml", "agent-sts-deny").await;

    // Live tokens, each working where it is meant to.
    let subject = issuers.k8s_token("triage");
    let github_token = a
        .exchange_for(&subject, "github.issues.create")
        .await
        .token();
    let docs_token = b.exchange_for(&subject, "docs.read").await.token();
    let http = reqwest::Client::new();
    let shim_call = || {
        http.post(format!("{}{ISSUES}", shim.url))
            .bearer_auth(&github_token)
            .header("content-type", "application/json")
            .body("{}")
    };
    let service_call = || http.get(format!("{service}/doc")).bearer_auth(&docs_token);
    assert_eq!(status(shim_call()).await, 200);
    assert_eq!(status(service_call()).await, 200);

    let id = deny(
        &ops,
        &["add", "--agent", TRIAGE, "--reason", "incident 4711"],
    )
    .trim()
    .to_string();
    assert!(id.starts_with("d-"), "{id}");
    let mint_refused = |sts: &TestSts| {
        let (url, subject) = (sts.url.clone(), subject.clone());
        async move {
            let r = post_form(
                &format!("{url}/token"),
                exchange_form(&subject, "docs.read"),
            )
            .await;
            r.status == 400 && r.error() == "invalid_request"
        }
    };
    // Each place polled until it refuses; the time from the command's return.
    let places = [
        "replica A, new tokens",
        "replica B, new tokens",
        "shim, live token",
        "service, live token",
    ];
    let started = Instant::now();
    let mut took: [Option<Duration>; 4] = [None; 4];
    while started.elapsed() < Duration::from_secs(10) && took.iter().any(Option::is_none) {
        let refused = [
            took[0].is_some() || mint_refused(&a).await,
            took[1].is_some() || mint_refused(&b).await,
            took[2].is_some() || status(shim_call()).await == 401,
            took[3].is_some() || status(service_call()).await == 401,
        ];
        for (slot, now_refused) in took.iter_mut().zip(refused) {
            if slot.is_none() && now_refused {
                *slot = Some(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen: Vec<(&str, Option<Duration>)> = places.into_iter().zip(took).collect();
    for (place, took) in &seen {
        eprintln!("kill switch: {place} refused after {took:?} (bound {BOUND:?})");
        let took = took.unwrap_or_else(|| panic!("{place} never refused"));
        assert!(
            took <= BOUND,
            "{place} took {took:?}, over the bound {BOUND:?}"
        );
    }
    // Refused at the shim, nothing forwarded, the refusal and the change audited.
    let hits = echo.hits();
    assert_eq!(status(shim_call()).await, 401);
    let refused_at_shim = shim.audit();
    assert!(
        refused_at_shim
            .iter()
            .any(|l| l["reason"] == "denied" && l["decision"] == "deny"),
        "{refused_at_shim:?}"
    );
    assert_eq!(echo.hits(), hits, "a denied token was forwarded");
    let changes: Vec<Value> = audit_lines(&a.dir.path().join("audit.log"))
        .into_iter()
        .filter(|l| l["event"] == "deny_list_changed")
        .collect();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0]["added"], json!([id]));
    let refusals: Vec<Value> = audit_lines(&a.dir.path().join("audit.log"))
        .into_iter()
        .filter(|l| l["reason"] == "denied")
        .collect();
    assert!(!refusals.is_empty());
    let metrics = a.get("/metrics").await.text;
    assert!(
        metrics.contains("agent_sts_deny_list_changes_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("reason=\"denied\""), "{metrics}");

    // The operator's view, then the entry lifted: the same live tokens work again.
    let listed: Value = serde_json::from_str(&deny(&ops, &["list", "--json"])).unwrap();
    let entry = &listed["entries"][0];
    assert_eq!(
        (
            &entry["id"],
            &entry["kind"],
            &entry["reason"],
            &entry["in_force"]
        ),
        (
            &json!(id),
            &json!("agent"),
            &json!("incident 4711"),
            &json!(true)
        )
    );
    let table = deny(&ops, &["list"]);
    assert!(
        table.contains(&id) && table.contains(&format!("agent {TRIAGE}")),
        "{table}"
    );
    assert!(deny(&ops, &["remove", &id]).contains(&id));
    let back = crate::vault::eventually(5, || async { status(shim_call()).await == 200 }).await;
    assert!(back, "the shim kept refusing after the entry was removed");
    let back = crate::vault::eventually(5, || async {
        a.exchange_for(&subject, "docs.read").await.status == 200
    })
    .await;
    assert!(back, "replica A kept refusing after the entry was removed");
}
