//! Delegation chains that only narrow (README, "Delegating to a sub-agent"): a parent
//! agent's token handed to sub-agents, over real HTTP, verified at a shim, and killed
//! by denying the middle hop.

use serde_json::{Value, json};

use crate::harness::*;
use crate::process::{run, text};
use crate::shim::{GITHUB, ISSUES, TestShim, audit_lines, start_echo};

const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

const CATALOGUE: &str = r#"
[[action]]
name = "github.issues.create"
audience = "https://github-shim.internal"
agents = ["k8s-prod:system:serviceaccount:agents:triage"]
credential = "integrations/github"
delegable_to = ["github.issues.read"]

[action.request]
method = "POST"
path = "/repos/{owner}/{repo}/issues"

[[action]]
name = "github.issues.read"
audience = "https://github-shim.internal"
ttl = "15m"
agents = ["k8s-prod:system:serviceaccount:agents:*"]
credential = "integrations/github"
delegable_to = ["github.issues.read"]

[action.request]
method = "GET"
path = "/repos/{owner}/{repo}/issues"

[[action]]
name = "docs.read"
audience = "https://docs.internal"
agents = ["k8s-prod:system:serviceaccount:agents:*"]
"#;

/// The STS (chains at most two actors deep, the deny list read every second) and a
/// shim for GitHub reading its feed every second.
async fn world() -> (TestSts, Issuers, TestShim) {
    let issuers = Issuers::start().await;
    let extra = "\n[deny]\nrefresh_interval = \"1s\"\n";
    let (dir, config_path) = sts_files(&issuers.specs(), CATALOGUE, extra, ConfigTweaks::default());
    let text = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace("[tokens]\n", "[tokens]\nmax_delegation_depth = 2\n");
    std::fs::write(&config_path, text).unwrap();
    let sts = TestSts::serve(dir, config_path).await;
    let (_echo, upstream) = start_echo().await;
    let shim = TestShim::start(&sts, GITHUB, &upstream, "deny_refresh = \"1s\"").await;
    (sts, issuers, shim)
}

/// A sub-agent's exchange: `parent` (an access token of ours) and the sub-agent's
/// workload token, for `scope`, with DPoP `proof` when given.
pub async fn sub_exchange(
    sts: &TestSts,
    parent: &str,
    actor: &str,
    scope: &str,
    proof: Option<&str>,
) -> Reply {
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", GRANT)
        .append_pair("subject_token", parent)
        .append_pair("subject_token_type", ACCESS_TOKEN_TYPE)
        .append_pair("actor_token", actor)
        .append_pair("actor_token_type", JWT_TYPE)
        .append_pair("scope", scope)
        .finish();
    let mut request = reqwest::Client::new()
        .post(format!("{}/token", sts.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some(p) = proof {
        request = request.header("DPoP", p);
    }
    reply(request.send().await.unwrap()).await
}

async fn read_issues(shim: &TestShim, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{}{ISSUES}", shim.url))
        .bearer_auth(token)
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_hop_chain_narrows_is_audited_whole_and_dies_with_its_middle_hop() {
    let (sts, issuers, shim) = world().await;
    let triage = sts
        .exchange_for(&issuers.k8s_token("triage"), "github.issues.create")
        .await
        .token();
    let planner = sub_exchange(
        &sts,
        &triage,
        &issuers.k8s_token("planner"),
        "github.issues.read",
        None,
    )
    .await;
    assert_eq!(planner.status, 200, "{planner:?}");
    let planner = planner.token();
    let worker = sub_exchange(
        &sts,
        &planner,
        &issuers.k8s_token("worker"),
        "github.issues.read",
        None,
    )
    .await;
    assert_eq!(worker.status, 200, "{worker:?}");
    let worker = worker.token();

    // The chain: the parent's subject, the newest actor outermost, never outliving
    // the parent (though the child's action allows 15 minutes).
    let (t1, t2, t3) = (claims_of(&triage), claims_of(&planner), claims_of(&worker));
    let k8s = t1["client_id"]
        .as_str()
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(k8s, "k8s-prod");
    assert_eq!(t3["sub"], t1["sub"]);
    assert_eq!(
        t3["client_id"],
        "k8s-prod:system:serviceaccount:agents:worker"
    );
    assert_eq!(t3["act"]["sub"], "system:serviceaccount:agents:worker");
    assert_eq!(
        t3["act"]["act"]["sub"],
        "system:serviceaccount:agents:planner"
    );
    assert!(t3["act"]["act"].get("act").is_none());
    assert_eq!(t2["act"]["sub"], "system:serviceaccount:agents:planner");
    assert!(t3["exp"].as_u64() <= t1["exp"].as_u64() && t2["exp"].as_u64() <= t1["exp"].as_u64());
    assert_eq!(
        (&t3["aud"], &t3["scope"]),
        (&json!(GITHUB), &json!("github.issues.read"))
    );

    // Verified at the shim, the whole chain in its audit line.
    assert_eq!(read_issues(&shim, &worker).await, 200);
    let line = shim
        .audit()
        .into_iter()
        .rfind(|l| l["reason"] == "proxied")
        .unwrap();
    assert_eq!(line["act"], t3["act"], "{line}");
    assert_eq!(line["actor"], "system:serviceaccount:agents:worker");

    // Denying the middle hop kills every token below it, and only those.
    let config = sts.config_path.to_str().unwrap();
    let out = run(
        &[
            "deny",
            "add",
            "--config",
            config,
            "--agent",
            "k8s-prod:system:serviceaccount:agents:planner",
        ],
        std::path::Path::new("/"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dead = crate::vault::eventually(5, || async {
        read_issues(&shim, &worker).await == 401 && read_issues(&shim, &planner).await == 401
    })
    .await;
    assert!(dead, "tokens below a denied hop still work");
    let alive = reqwest::Client::new()
        .post(format!("{}{ISSUES}", shim.url))
        .bearer_auth(&triage)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(alive, 200, "the hop above the denied one was refused");
    // And the denied hop's tokens make no new children.
    let r = sub_exchange(
        &sts,
        &planner,
        &issuers.k8s_token("other"),
        "github.issues.read",
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.error().as_str()),
        (400, "invalid_request"),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_agent_never_gets_more_than_its_parent() {
    let (sts, issuers, _shim) = world().await;
    let triage = sts
        .exchange_for(&issuers.k8s_token("triage"), "github.issues.create")
        .await
        .token();
    let docs = sts
        .exchange_for(&issuers.k8s_token("triage"), "docs.read")
        .await
        .token();
    let sub = issuers.k8s_token("planner");
    let planner = sub_exchange(&sts, &triage, &sub, "github.issues.read", None)
        .await
        .token();
    let worker = sub_exchange(
        &sts,
        &planner,
        &issuers.k8s_token("worker"),
        "github.issues.read",
        None,
    )
    .await
    .token();
    let revoked = sts
        .exchange_for(&issuers.k8s_token("triage"), "github.issues.create")
        .await
        .token();
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("token", &revoked)
        .finish();
    let r = reqwest::Client::new()
        .post(format!("{}/revoke", sts.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .bearer_auth(&revoked)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A token whose inner `act` was rewritten (the signature no longer holds).
    let forged = {
        let mut parts: Vec<String> = planner.split('.').map(str::to_string).collect();
        let mut claims = claims_of(&planner);
        claims["act"]["sub"] = json!("system:serviceaccount:agents:admin");
        parts[1] = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            serde_json::to_vec(&claims).unwrap(),
        );
        parts.join(".")
    };
    let cases: Vec<(&str, Reply, &str, &str)> = vec![
        (
            "a chain one hop too deep",
            sub_exchange(
                &sts,
                &worker,
                &issuers.k8s_token("deep"),
                "github.issues.read",
                None,
            )
            .await,
            "invalid_request",
            "delegation_too_deep",
        ),
        (
            "an action not in delegable_to",
            sub_exchange(&sts, &triage, &sub, "docs.read", None).await,
            "invalid_scope",
            "not_delegable",
        ),
        (
            "the parent's own action, widened back",
            sub_exchange(&sts, &planner, &sub, "github.issues.create", None).await,
            "invalid_scope",
            "not_delegable",
        ),
        (
            "a parent for another audience",
            sub_exchange(&sts, &docs, &sub, "github.issues.read", None).await,
            "invalid_scope",
            "not_delegable",
        ),
        (
            "a revoked parent",
            sub_exchange(&sts, &revoked, &sub, "github.issues.read", None).await,
            "invalid_request",
            "denied",
        ),
        (
            "a forged inner act",
            sub_exchange(&sts, &forged, &sub, "github.issues.read", None).await,
            "invalid_request",
            "invalid_subject_token",
        ),
        (
            "a workload token as the parent",
            sub_exchange(
                &sts,
                &issuers.k8s_token("triage"),
                &sub,
                "github.issues.read",
                None,
            )
            .await,
            "invalid_request",
            "invalid_subject_token",
        ),
        (
            "our token as a workload token",
            sts.exchange_for(&triage, "github.issues.read").await,
            "invalid_request",
            "invalid_subject_token",
        ),
        (
            "our token as the actor",
            sub_exchange(&sts, &triage, &planner, "github.issues.read", None).await,
            "invalid_request",
            "invalid_actor_token",
        ),
    ];
    let audit = audit_lines(&sts.dir.path().join("audit.log"));
    for (what, r, code, reason) in cases {
        assert_eq!((r.status, r.error().as_str()), (400, code), "{what}: {r:?}");
        assert!(r.json().get("access_token").is_none(), "{what}");
        assert!(
            audit
                .iter()
                .any(|l| l["reason"] == reason && l["decision"] == "deny"),
            "{what}: {reason} not audited"
        );
    }
    // Without an actor_token, a parent's token is refused outright.
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", GRANT)
        .append_pair("subject_token", &triage)
        .append_pair("subject_token_type", ACCESS_TOKEN_TYPE)
        .append_pair("scope", "github.issues.read")
        .finish();
    let r = post_form(&format!("{}/token", sts.url), body).await;
    assert_eq!(
        (r.status, r.error().as_str()),
        (400, "invalid_request"),
        "{r:?}"
    );
}

/// A DPoP-bound parent is usable only with a proof by its key carrying its hash; the
/// child is bound to the same key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_parent_needs_its_proof_and_binds_the_child() {
    let (sts, issuers, _shim) = world().await;
    let key = agent_sts_testkit::DpopKey::new();
    let token_url = format!("{STS_ISSUER}/token");
    let parent = reply(
        reqwest::Client::new()
            .post(format!("{}/token", sts.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("DPoP", key.proof("POST", &token_url, None, None))
            .body(exchange_form(
                &issuers.k8s_token("triage"),
                "github.issues.create",
            ))
            .send()
            .await
            .unwrap(),
    )
    .await
    .token();
    let sub = issuers.k8s_token("planner");
    let thief = agent_sts_testkit::DpopKey::new();
    for (what, proof) in [
        ("no proof", None),
        (
            "another key's proof",
            Some(thief.proof("POST", &token_url, Some(&parent), None)),
        ),
        (
            "a proof without the parent's hash",
            Some(key.proof("POST", &token_url, None, None)),
        ),
    ] {
        let r = sub_exchange(&sts, &parent, &sub, "github.issues.read", proof.as_deref()).await;
        assert_eq!(
            (r.status, r.error().as_str()),
            (400, "invalid_dpop_proof"),
            "{what}: {r:?}"
        );
    }
    let proof = key.proof("POST", &token_url, Some(&parent), None);
    let r = sub_exchange(&sts, &parent, &sub, "github.issues.read", Some(&proof)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["token_type"], "DPoP");
    let child: Value = claims_of(&r.token());
    assert_eq!(child["cnf"]["jkt"], key.thumbprint());
}
