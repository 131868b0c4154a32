//! The leak hunt (SECURITY.md property 1): canary credentials in the secret store, a
//! canary subject token, the signing key; the real binary at TRACE logging; every
//! response, log line, metric and audit line searched: zero hits.

use crate::harness::*;
use crate::process::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_responses_logs_metrics_or_the_audit_log() {
    let issuers = Issuers::start().await;
    let (dir, config) = sts_dir(&issuers);
    let rotate = run(
        &["keys", "rotate", "--config", config.to_str().unwrap()],
        dir.path(),
    );
    assert!(rotate.status.success(), "{}", text(&rotate.stderr));

    let sts = ServeProcess::start(&config, dir.path(), TRACE_ALL);
    let client = reqwest::Client::new();
    let mut responses = String::new();
    let mut record = |r: Reply| {
        responses.push_str(&format!("{} {:?} {}\n", r.status, r.headers, r.text));
        r
    };

    // The canary subject token: valid, and exchanged for actions whose credentials
    // are canaries (the gate reads them).
    let canary = issuers.k8s_token("triage");
    let canary_sig = canary.rsplit('.').next().unwrap().to_string();
    let post = |body: String| {
        let client = client.clone();
        let url = format!("{}/token", sts.url);
        async move {
            reply(
                client
                    .post(url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body)
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };
    let exchange = |scope: &str, subject: &str| {
        form(&[
            ("grant_type", GRANT),
            ("subject_token", subject),
            ("subject_token_type", JWT_TYPE),
            ("scope", scope),
        ])
    };
    for scope in [
        "github.issues.create",
        "slack.message.post",
        "disabled.thing",
        "missing.thing",
        "docs.read",
    ] {
        record(post(exchange(scope, &canary)).await);
    }
    // The canary everywhere it should never go: a tampered copy, the actor slot, the
    // scope and audience parameters, the query string, a JSON body.
    let tampered = format!("{}x", &canary[..canary.len() - 1]);
    record(post(exchange("github.issues.create", &tampered)).await);
    record(post(exchange(&canary, &canary)).await);
    record(
        post(form(&[
            ("grant_type", GRANT),
            ("subject_token", &canary),
            ("subject_token_type", JWT_TYPE),
            ("actor_token", &canary),
            ("actor_token_type", "urn:x:bogus"),
            ("scope", "github.issues.create"),
            ("audience", &canary),
        ]))
        .await,
    );
    record(
        post(format!(
            "{}&subject_token={canary}",
            exchange("docs.read", &canary)
        ))
        .await,
    );
    // The jwt-bearer grant: the canary as a good assertion (its audience, the issuer,
    // is one the grant takes), tampered, repeated, and as the resource.
    let bearer = |assertion: &str, resource: &str| {
        form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion),
            ("scope", "github.issues.create"),
            ("resource", resource),
        ])
    };
    record(post(bearer(&canary, "https://github-shim.internal")).await);
    record(post(bearer(&tampered, "https://github-shim.internal")).await);
    record(post(bearer(&canary, &canary)).await);
    record(
        post(format!(
            "{}&assertion={canary}",
            bearer(&canary, "https://github-shim.internal")
        ))
        .await,
    );
    // Control after issuance: an access token of ours revoked, introspected, handed to
    // a sub-agent; the canary as caller, parameter, parent and actor everywhere.
    let access = post(exchange("docs.read", &canary)).await;
    let access = access.token();
    let to = |path: &str, auth: &str, body: String| {
        let request = client
            .post(format!("{}{path}", sts.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("authorization", format!("Bearer {auth}"))
            .body(body);
        async move { reply(request.send().await.unwrap()).await }
    };
    let token_form = |token: &str| form(&[("token", token)]);
    record(to("/introspect", &canary, token_form(&access)).await);
    record(to("/introspect", &access, token_form(&canary)).await);
    record(to("/introspect", &canary, token_form(&tampered)).await);
    record(to("/revoke", &canary, token_form(&access)).await);
    record(to("/revoke", &access, token_form(&canary)).await);
    let sub_agent = |parent: &str, actor: &str| {
        form(&[
            ("grant_type", GRANT),
            ("subject_token", parent),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
            ("actor_token", actor),
            ("actor_token_type", JWT_TYPE),
            ("scope", "docs.read"),
        ])
    };
    record(post(sub_agent(&access, &canary)).await);
    record(post(sub_agent(&canary, &canary)).await);
    record(post(sub_agent(&access, &access)).await);
    record(to("/revoke", &access, token_form(&access)).await);
    record(to("/introspect", &canary, token_form(&access)).await);
    let query = client
        .post(format!("{}/token?subject_token={canary}", sts.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(exchange("docs.read", &canary))
        .send()
        .await
        .unwrap();
    record(reply(query).await);
    let json = client
        .post(format!("{}/token", sts.url))
        .json(&serde_json::json!({"subject_token": canary}))
        .send()
        .await
        .unwrap();
    record(reply(json).await);
    for path in [
        "/metrics",
        "/deny-list",
        "/readyz",
        "/healthz",
        "/.well-known/jwks.json",
        "/.well-known/oauth-authorization-server",
    ] {
        let r = client
            .get(format!("{}{path}", sts.url))
            .send()
            .await
            .unwrap();
        record(reply(r).await);
    }
    let metrics = client
        .get(format!("{}/metrics", sts.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (stdout, stderr) = sts.stop();
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();

    // TRACE was really on, and the work really happened.
    assert!(stderr.contains("TRACE"), "no TRACE lines captured");
    assert!(
        responses.contains("\"access_token\""),
        "no token was issued: {responses}"
    );
    assert!(
        metrics.contains("agent_sts_tokens_issued_total"),
        "{metrics}"
    );
    assert!(audit.lines().count() >= 10, "{audit}");

    // Everything that must never travel.
    let ring = std::fs::read_to_string(dir.path().join("keys/signing-keys.json")).unwrap();
    let ring: serde_json::Value = serde_json::from_str(&ring).unwrap();
    let pem = ring["keys"][0]["private_key"].as_str().unwrap().to_string();
    let pem_body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let mut secrets = vec![
        CANARY_CREDENTIAL.to_string(),
        "sf-CANARY-salesforce-0123456789".to_string(),
        "xoxb-CANARY-slack-0123456789".to_string(),
        "CANARY-disabled-0123456789".to_string(),
        canary.clone(),
        canary_sig.clone(),
        tampered.clone(),
    ];
    secrets.extend(
        pem.lines()
            .filter(|l| !l.starts_with("-----") && l.len() > 16)
            .map(String::from),
    );
    secrets.push(pem_body[..40].to_string());
    let outputs = [
        ("responses", &responses),
        ("stdout", &stdout),
        ("stderr", &stderr),
        ("metrics", &metrics),
        ("audit log", &audit),
    ];
    // An access token travels in its /token answer only.
    let access_sig = access.rsplit('.').next().unwrap();
    for (name, output) in &outputs[1..] {
        assert!(
            !output.contains(access_sig),
            "{name} contains an access token"
        );
    }
    let deny_list = std::fs::read_to_string(dir.path().join("keys/deny-list.json")).unwrap();
    assert!(
        deny_list.contains("\"jti\""),
        "the revocation was not written: {deny_list}"
    );
    for (name, output) in outputs {
        for secret in &secrets {
            assert!(
                !output.contains(secret.as_str()),
                "{name} contains a secret ({} chars starting {:?})",
                secret.len(),
                &secret[..8]
            );
        }
    }
}

/// One decision event per `/token` request at `info` (issue: refusals left no trace):
/// who (trust, subject, client id), what, why and how long, never a token; anonymous
/// refusals are sampled like the audit log's, so a flood of junk is a few lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_is_one_info_event_and_junk_floods_are_sampled() {
    let issuers = Issuers::start().await;
    let (dir, config) = sts_dir(&issuers);
    let rotate = run(
        &["keys", "rotate", "--config", config.to_str().unwrap()],
        dir.path(),
    );
    assert!(rotate.status.success(), "{}", text(&rotate.stderr));
    let sts = ServeProcess::start(&config, dir.path(), "info");
    let url = format!("{}/token", sts.url);
    let subject = issuers.k8s_token("triage");
    let ok = post_form(&url, exchange_form(&subject, "docs.read")).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    let denied = post_form(&url, exchange_form(&subject, "no.such.action")).await;
    assert_eq!(denied.status, 400);
    for _ in 0..100 {
        post_form(&url, exchange_form("garbage", "docs.read")).await;
    }
    let (_, stderr) = sts.stop();
    let events: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("token request decided"))
        .collect();
    let allow = events
        .iter()
        .find(|l| l.contains("decision=\"allow\""))
        .unwrap();
    for field in [
        "trust=",
        "subject=",
        "client_id=",
        "action=",
        "latency_us=",
        "kid=",
    ] {
        assert!(allow.contains(field), "{field} missing: {allow}");
    }
    assert!(
        allow.contains("k8s-prod:system:serviceaccount:agents:triage"),
        "{allow}"
    );
    assert!(
        events
            .iter()
            .any(|l| l.contains("reason=\"action_not_permitted\"")),
        "{events:?}"
    );
    let junk = events
        .iter()
        .filter(|l| l.contains("invalid_subject_token"))
        .count();
    assert!(
        (1..=3).contains(&junk),
        "100 junk requests made {junk} events"
    );
    assert!(!stderr.contains(&ok.token()) && !stderr.contains(&subject));
}
