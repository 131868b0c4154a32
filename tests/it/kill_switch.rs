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

/// A file-store STS (deny list in `keys/deny-list.json`) with `deny` settings, and a
/// shim in front of an echo upstream reading its feed every second.
async fn file_world(deny: &str, shim_extra: &str) -> (TestSts, Issuers, TestShim, String) {
    let issuers = Issuers::start().await;
    let sts = TestSts::start(&issuers.specs(), SCOPES, &deny_section(deny)).await;
    let (_echo, upstream) = start_echo().await;
    let extra = format!("deny_refresh = \"1s\"\n{shim_extra}");
    let shim = TestShim::start(&sts, GITHUB, &upstream, &extra).await;
    let config = sts.config_path.to_str().unwrap().to_string();
    (sts, issuers, shim, config)
}

async fn shim_status(shim: &TestShim, token: &str) -> u16 {
    status(
        reqwest::Client::new()
            .post(format!("{}{ISSUES}", shim.url))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body("{}"),
    )
    .await
}

/// One token stopped by its `jti` (others of the same agent keep working), and an
/// entry with `--for` lifting itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jti_entry_stops_one_token_and_a_timed_entry_lifts_itself() {
    let (sts, issuers, shim, config) = file_world("", "").await;
    let stolen = crate::shim::access_token(&sts, &issuers, "github.issues.create").await;
    let other = crate::shim::access_token(&sts, &issuers, "github.issues.create").await;
    let jti = claims_of(&stolen)["jti"].as_str().unwrap().to_string();
    deny(
        &config,
        &["add", "--jti", &jti, "--reason", "leaked in a log"],
    );
    let refused =
        crate::vault::eventually(5, || async { shim_status(&shim, &stolen).await == 401 }).await;
    assert!(refused, "the denied jti still works at the shim");
    assert_eq!(
        shim_status(&shim, &other).await,
        200,
        "another token of the agent was refused"
    );

    deny(
        &config,
        &["add", "--action", "github.issues.create", "--for", "3s"],
    );
    let refused =
        crate::vault::eventually(5, || async { shim_status(&shim, &other).await == 401 }).await;
    assert!(refused, "the denied action still works at the shim");
    let subject = issuers.k8s_token("triage");
    assert_eq!(
        sts.exchange_for(&subject, "github.issues.create")
            .await
            .error(),
        "invalid_request"
    );
    assert_eq!(
        sts.exchange_for(&subject, "docs.read").await.status,
        200,
        "another action was refused"
    );
    let lifted =
        crate::vault::eventually(8, || async { shim_status(&shim, &other).await == 200 }).await;
    assert!(lifted, "the timed entry did not lift itself");
    assert_eq!(
        sts.exchange_for(&subject, "github.issues.create")
            .await
            .status,
        200
    );
    assert_eq!(
        shim_status(&shim, &stolen).await,
        401,
        "the jti entry lifted with the timed one"
    );
}

/// Eight operators adding at once through check-and-set: no entry lost (file store,
/// under its lock; the Vault store's `cas` is exercised by the OpenBao test above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deny_adds_lose_no_entry() {
    let (_sts, _issuers, _shim, config) = file_world("", "").await;
    let adds: Vec<std::thread::JoinHandle<String>> = (0..8)
        .map(|i| {
            let config = config.clone();
            std::thread::spawn(move || {
                deny(&config, &["add", "--jti", &format!("jti-{i}")])
                    .trim()
                    .to_string()
            })
        })
        .collect();
    let mut ids: Vec<String> = adds.into_iter().map(|h| h.join().unwrap()).collect();
    ids.sort();
    let listed: Value = serde_json::from_str(&deny(&config, &["list", "--json"])).unwrap();
    let mut stored: Vec<String> = listed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    stored.sort();
    assert_eq!(stored, ids);
}

/// A malformed list in the store: the last good list stays enforced and the failure
/// is counted; past `deny.max_stale` the replica refuses every token (503), is not
/// ready and stops serving the feed, and past its own `deny_max_stale` so does the
/// shim. A good list heals both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_deny_list_keeps_the_last_good_one_then_fails_closed() {
    let (sts, issuers, shim, config) =
        file_world("max_stale = \"3s\"", "deny_max_stale = \"2s\"").await;
    let token = crate::shim::access_token(&sts, &issuers, "github.issues.create").await;
    let subject = issuers.k8s_token("triage");
    deny(&config, &["add", "--action", "docs.read"]);
    let denied = crate::vault::eventually(5, || async {
        sts.exchange_for(&subject, "docs.read").await.error() == "invalid_request"
    })
    .await;
    assert!(denied);

    let path = sts.dir.path().join("keys/deny-list.json");
    let good = std::fs::read(&path).unwrap();
    std::fs::write(
        &path,
        br#"{"entries": [{"id": "d-1", "kind": "everyone"}]}"#,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let metrics = sts.get("/metrics").await.text;
    assert!(
        metrics.contains("agent_sts_deny_list_reads_total{outcome=\"malformed\"}"),
        "{metrics}"
    );
    assert_eq!(
        sts.exchange_for(&subject, "docs.read").await.error(),
        "invalid_request",
        "the last good list was dropped"
    );
    assert_eq!(shim_status(&shim, &token).await, 200);

    let closed = crate::vault::eventually(8, || async {
        let r = sts.exchange_for(&subject, "slack.message.post").await;
        r.status == 503 && r.error() == "temporarily_unavailable"
    })
    .await;
    assert!(closed, "a stale deny list did not stop minting");
    let ready = sts.get("/readyz").await;
    assert_eq!(ready.status, 503);
    assert_ne!(ready.json()["checks"]["deny_list"], "ok");
    assert_eq!(sts.get("/deny-list").await.status, 503);
    let shim_closed =
        crate::vault::eventually(8, || async { shim_status(&shim, &token).await == 503 }).await;
    assert!(
        shim_closed,
        "the shim kept accepting tokens without a fresh deny list"
    );

    std::fs::write(&path, good).unwrap();
    let healed = crate::vault::eventually(8, || async {
        sts.exchange_for(&subject, "slack.message.post")
            .await
            .status
            == 200
            && shim_status(&shim, &token).await == 200
    })
    .await;
    assert!(healed, "a good list did not heal the replica and the shim");
}

/// The same against Vault KV v2, whose `cas` makes each write conditional in Vault:
/// eight operators at once under the shipped deny policy, no entry lost; and a
/// revocation written by the STS under the shipped serve policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deny_adds_in_vault_lose_no_entry() {
    let vault = OpenBao::start().await;
    plant_credentials(&vault).await;
    let issuers = Issuers::start().await;
    let auth = serve_token_auth(&vault).await;
    let sts = vault_sts_with(&vault, &issuers, &auth, |t| t + &deny_section("")).await;
    let ops = operator_config(&vault, &sts, "deny.toml", "agent-sts-deny").await;
    let adds: Vec<std::thread::JoinHandle<String>> = (0..8)
        .map(|i| {
            let ops = ops.clone();
            std::thread::spawn(move || {
                deny(&ops, &["add", "--jti", &format!("jti-{i}")])
                    .trim()
                    .to_string()
            })
        })
        .collect();
    let mut ids: Vec<String> = adds.into_iter().map(|h| h.join().unwrap()).collect();
    ids.sort();
    let stored = vault.read("agent-sts/deny-list").await.unwrap();
    let mut kept: Vec<String> = stored["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    kept.sort();
    assert_eq!(kept, ids);

    let token = sts
        .exchange_for(&issuers.k8s_token("triage"), "docs.read")
        .await
        .token();
    let r = revoke(&sts, "Bearer", &token, None, &token).await;
    assert_eq!(r.status, 200, "{r:?}");
    let stored = vault.read("agent-sts/deny-list").await.unwrap();
    assert_eq!(stored["entries"].as_array().unwrap().len(), 9);
    assert!(
        stored
            .to_string()
            .contains(claims_of(&token)["jti"].as_str().unwrap())
    );
}

/// `POST /revoke` with `token` in the form and the caller's own token in
/// `Authorization` (`scheme` `Bearer` or `DPoP`, with `proof`).
async fn revoke(
    sts: &TestSts,
    scheme: &str,
    caller: &str,
    proof: Option<&str>,
    token: &str,
) -> Reply {
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .append_pair("token_type_hint", "access_token")
        .finish();
    let mut request = reqwest::Client::new()
        .post(format!("{}/revoke", sts.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", format!("{scheme} {caller}"))
        .body(body);
    if let Some(p) = proof {
        request = request.header("DPoP", p);
    }
    reply(request.send().await.unwrap()).await
}

/// RFC 7009: an agent ends its own token (every verifier refuses it within the kill
/// switch's bound; the entry drops out at the token's `exp`); another agent's token is
/// refused; an invalid token is answered 200 with nothing done; a caller without a
/// token of ours is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_revokes_its_own_token_and_only_its_own() {
    let (sts, issuers, shim, config) = file_world("", "").await;
    let token = crate::shim::access_token(&sts, &issuers, "github.issues.create").await;
    let spare = crate::shim::access_token(&sts, &issuers, "github.issues.create").await;
    let other_agent = sts
        .exchange_for(&issuers.k8s_token("planner"), "docs.read")
        .await
        .token();
    assert_eq!(shim_status(&shim, &token).await, 200);

    // Another agent's token: refused, and it keeps working.
    let r = revoke(&sts, "Bearer", &token, None, &other_agent).await;
    assert_eq!(
        (r.status, r.error().as_str()),
        (400, "unauthorized_client"),
        "{r:?}"
    );
    // Not a token of ours: 200, nothing written.
    let r = revoke(&sts, "Bearer", &token, None, "not.a.token").await;
    assert_eq!(r.status, 200, "{r:?}");
    let listed: Value = serde_json::from_str(&deny(&config, &["list", "--json"])).unwrap();
    assert_eq!(listed["entries"], json!([]));
    // No caller token, or one that is not ours.
    for caller in ["", &issuers.k8s_token("triage")] {
        let r = revoke(&sts, "Bearer", caller, None, &token).await;
        assert_eq!(
            (r.status, r.error().as_str()),
            (401, "invalid_client"),
            "{r:?}"
        );
    }

    // The agent ends its token, presenting it.
    let r = revoke(&sts, "Bearer", &token, None, &token).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.headers["cache-control"], "no-store");
    let refused =
        crate::vault::eventually(5, || async { shim_status(&shim, &token).await == 401 }).await;
    assert!(refused, "a revoked token still works at the shim");
    assert_eq!(
        shim_status(&shim, &spare).await,
        200,
        "revoking one token stopped another"
    );
    let listed: Value = serde_json::from_str(&deny(&config, &["list", "--json"])).unwrap();
    let entry = &listed["entries"][0];
    let claims = claims_of(&token);
    assert_eq!(entry["kind"], "jti");
    assert_eq!(entry["jti"], claims["jti"]);
    assert_eq!(entry["until"], json!(claims["exp"].as_u64().unwrap() + 1));
    assert_eq!(entry["added_by"], claims["client_id"]);
    // Another token of the same agent can end the spare one.
    let fresh = crate::shim::access_token(&sts, &issuers, "github.issues.create").await;
    assert_eq!(
        revoke(&sts, "Bearer", &fresh, None, &spare).await.status,
        200
    );
    let audit = audit_lines(&sts.dir.path().join("audit.log"));
    let revoked: Vec<&Value> = audit.iter().filter(|l| l["reason"] == "revoked").collect();
    assert_eq!(revoked.len(), 2, "{audit:?}");
    assert!(audit.iter().any(|l| l["reason"] == "not_your_token"));
}

/// A DPoP-bound token revokes only with its key's proof for `{issuer}/revoke`: a
/// copied bound token cannot end anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_token_is_revoked_only_with_its_proof() {
    let (sts, issuers, _shim, _config) = file_world("", "").await;
    let key = agent_sts_testkit::DpopKey::new();
    let token_url = format!("{STS_ISSUER}/token");
    let bound = reply(
        reqwest::Client::new()
            .post(format!("{}/token", sts.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("DPoP", key.proof("POST", &token_url, None, None))
            .body(exchange_form(&issuers.k8s_token("triage"), "docs.read"))
            .send()
            .await
            .unwrap(),
    )
    .await
    .token();
    let revoke_url = format!("{STS_ISSUER}/revoke");
    let thief = agent_sts_testkit::DpopKey::new();
    for (scheme, proof) in [
        ("Bearer", None),
        ("DPoP", None),
        (
            "DPoP",
            Some(thief.proof("POST", &revoke_url, Some(&bound), None)),
        ),
        (
            "DPoP",
            Some(key.proof("POST", &token_url, Some(&bound), None)),
        ),
    ] {
        let r = revoke(&sts, scheme, &bound, proof.as_deref(), &bound).await;
        assert!(
            r.status == 401 || r.status == 400,
            "{scheme} {proof:?}: {r:?}"
        );
    }
    let proof = key.proof("POST", &revoke_url, Some(&bound), None);
    let r = revoke(&sts, "DPoP", &bound, Some(&proof), &bound).await;
    assert_eq!(r.status, 200, "{r:?}");
    let again = revoke(&sts, "DPoP", &bound, Some(&proof), &bound).await;
    assert_ne!(again.status, 200, "a replayed proof was accepted");
}

/// The STS with one `[[introspection]]` grant: the `docs-reader` service may ask about
/// `docs.internal` and `salesforce-shim.internal` tokens.
async fn introspection_world() -> (TestSts, Issuers) {
    let issuers = Issuers::start().await;
    let extra = format!(
        "{}\n[[introspection]]\ncallers = [\"k8s-prod:system:serviceaccount:agents:docs-reader\"]\naudiences = [\"{DOCS}\", \"https://salesforce-shim.internal\"]\n",
        deny_section("")
    );
    let sts = TestSts::start(&issuers.specs(), SCOPES, &extra).await;
    (sts, issuers)
}

async fn introspect(sts: &TestSts, caller: &str, token: &str) -> Reply {
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .finish();
    reply(
        reqwest::Client::new()
            .post(format!("{}/introspect", sts.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("authorization", format!("Bearer {caller}"))
            .body(body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// RFC 7662: an allowed service learns the claims of an active token of its
/// audiences (the `act` chain and `cnf` included, never the token); everything else
/// (another audience, malformed, revoked, denied) is `{"active": false}` with no
/// reason; a caller that is not allowed, or not a workload, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_answers_allowed_callers_about_their_audiences_only() {
    let (sts, issuers) = introspection_world().await;
    let reader = issuers.k8s_token("docs-reader");
    let agent = issuers.k8s_token("triage");
    let docs = sts.exchange_for(&agent, "docs.read").await.token();

    let r = introspect(&sts, &reader, &docs).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.headers["cache-control"], "no-store");
    let answer = r.json();
    let claims = claims_of(&docs);
    assert_eq!(answer["active"], true);
    for name in [
        "scope",
        "client_id",
        "sub",
        "aud",
        "iss",
        "exp",
        "iat",
        "jti",
    ] {
        assert_eq!(answer[name], claims[name], "{name}");
    }
    assert_eq!(answer["token_type"], "Bearer");
    assert!(!r.text.contains(&docs), "the token came back");

    // A bound token: its `cnf` and the DPoP type.
    let key = agent_sts_testkit::DpopKey::ed25519();
    let bound = reply(
        reqwest::Client::new()
            .post(format!("{}/token", sts.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .header(
                "DPoP",
                key.proof("POST", &format!("{STS_ISSUER}/token"), None, None),
            )
            .body(exchange_form(&agent, "docs.read"))
            .send()
            .await
            .unwrap(),
    )
    .await
    .token();
    let answer = introspect(&sts, &reader, &bound).await.json();
    assert_eq!(
        (&answer["token_type"], &answer["cnf"]),
        (&json!("DPoP"), &json!({"jkt": key.thumbprint()}))
    );

    // A delegated token: the chain comes along.
    let delegated = sts
        .exchange_delegated(
            &issuers.user_token("alice@sales.example.org"),
            &issuers.k8s_token("triage"),
            "salesforce.opportunity.update",
        )
        .await;
    assert_eq!(delegated.status, 200, "{delegated:?}");
    let answer = introspect(&sts, &reader, &delegated.token()).await.json();
    assert_eq!(answer["active"], true);
    assert_eq!(answer["act"], claims_of(&delegated.token())["act"]);

    // Inactive, all alike.
    let github = sts
        .exchange_for(&agent, "github.issues.create")
        .await
        .token();
    let revoked = sts.exchange_for(&agent, "docs.read").await.token();
    assert_eq!(
        revoke(&sts, "Bearer", &revoked, None, &revoked)
            .await
            .status,
        200
    );
    let mut tampered = docs.clone();
    tampered.push('A');
    for (what, token) in [
        ("another audience", github.as_str()),
        ("malformed", "not.a.token"),
        ("tampered", tampered.as_str()),
        ("a workload token", agent.as_str()),
        ("revoked", revoked.as_str()),
    ] {
        let r = introspect(&sts, &reader, token).await;
        assert_eq!(
            (r.status, r.json()),
            (200, json!({"active": false})),
            "{what}"
        );
    }
    let config = sts.config_path.to_str().unwrap().to_string();
    deny(&config, &["add", "--agent", TRIAGE]);
    let inactive = crate::vault::eventually(5, || async {
        introspect(&sts, &reader, &docs).await.json() == json!({"active": false})
    })
    .await;
    assert!(inactive, "a denied agent's token stayed active");

    // Callers.
    for (what, caller) in [
        ("not allowed", issuers.k8s_token("triage")),
        ("an access token", docs.clone()),
        ("nothing", String::new()),
    ] {
        let r = introspect(&sts, &caller, &docs).await;
        assert_eq!(
            (r.status, r.error().as_str()),
            (401, "invalid_client"),
            "{what}: {r:?}"
        );
    }
    let audit = audit_lines(&sts.dir.path().join("audit.log"));
    for reason in [
        "introspected_active",
        "introspected_inactive",
        "introspection_not_allowed",
    ] {
        assert!(audit.iter().any(|l| l["reason"] == reason), "{reason}");
    }
    let metadata = sts
        .get("/.well-known/oauth-authorization-server")
        .await
        .json();
    assert_eq!(
        metadata["introspection_endpoint"],
        format!("{STS_ISSUER}/introspect")
    );
    assert_eq!(
        metadata["revocation_endpoint"],
        format!("{STS_ISSUER}/revoke")
    );
}

/// The request-shape rules of `/token` hold at `/revoke` and `/introspect` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_and_introspect_refuse_bad_request_shapes() {
    let (sts, issuers) = introspection_world().await;
    let token = sts
        .exchange_for(&issuers.k8s_token("triage"), "docs.read")
        .await
        .token();
    let reader = issuers.k8s_token("docs-reader");
    let http = reqwest::Client::new();
    for (path, caller) in [("/revoke", &token), ("/introspect", &reader)] {
        let url = format!("{}{path}", sts.url);
        let form = "application/x-www-form-urlencoded";
        let huge = format!("token={}", "a".repeat(20_000));
        let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
            ("GET", http.get(&url), 405, "invalid_request"),
            (
                "token in the query",
                http.post(format!("{url}?token={token}"))
                    .header("content-type", form)
                    .body(""),
                400,
                "invalid_request",
            ),
            (
                "JSON body",
                http.post(&url)
                    .header("content-type", "application/json")
                    .body("{}"),
                415,
                "invalid_request",
            ),
            (
                "token twice",
                http.post(&url)
                    .header("content-type", form)
                    .body(format!("token={token}&token=x")),
                400,
                "invalid_request",
            ),
            (
                "no token",
                http.post(&url)
                    .header("content-type", form)
                    .body("token_type_hint=access_token"),
                400,
                "invalid_request",
            ),
            (
                "a token over the cap",
                http.post(&url).header("content-type", form).body(huge),
                400,
                "invalid_request",
            ),
        ];
        for (what, request, status, code) in cases {
            let r = reply(request.bearer_auth(caller).send().await.unwrap()).await;
            assert_eq!(
                (r.status, r.error().as_str()),
                (status, code),
                "{path} {what}: {r:?}"
            );
            assert!(
                !r.text.contains(&token),
                "{path} {what}: the token came back"
            );
        }
    }
}
