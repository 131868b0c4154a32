//! The verifier library against a running STS: tokens verify through the JWKS alone
//! and come back typed; a token for another audience, a workload token and garbage
//! are refused.

use agent_sts_verifier::{Verifier, VerifyError};

use crate::harness::*;

#[tokio::test]
async fn minted_tokens_verify_offline_and_come_back_typed() {
    let (sts, issuers) = TestSts::standard().await;
    let jwks = format!("{}/.well-known/jwks.json", sts.url);
    let github = Verifier::new(STS_ISSUER, "https://github-shim.internal", &jwks).unwrap();

    let r = sts
        .exchange_for(&issuers.k8s_token("triage"), "github.issues.create")
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let token = github.verify(&r.token(), now()).await.unwrap();
    assert_eq!(token.subject, "system:serviceaccount:agents:triage");
    assert_eq!(token.action, "github.issues.create");
    assert_eq!(
        token.client_id,
        "k8s-prod:system:serviceaccount:agents:triage"
    );
    assert!(token.actor.is_none());
    assert_eq!(token.jti.len(), 22);
    assert!(token.expires_at > now());

    // Delegated: `act` comes back.
    let r = sts
        .exchange_delegated(
            &issuers.user_token("alice@example.org"),
            &issuers.k8s_token("triage"),
            "github.issues.create",
        )
        .await;
    let token = github.verify(&r.token(), now()).await.unwrap();
    assert_eq!(token.subject, "alice@example.org");
    let actor = token.actor.unwrap();
    assert_eq!(actor.sub, "system:serviceaccount:agents:triage");
    assert_eq!(actor.iss, "https://kubernetes.default.svc");
}

#[tokio::test]
async fn other_audiences_workload_tokens_and_garbage_are_refused() {
    let (sts, issuers) = TestSts::standard().await;
    let jwks = format!("{}/.well-known/jwks.json", sts.url);
    let slack = Verifier::new(STS_ISSUER, "https://slack-shim.internal", &jwks).unwrap();
    let r = sts
        .exchange_for(&issuers.k8s_token("triage"), "github.issues.create")
        .await;
    let for_github = r.token();
    assert!(matches!(
        slack.verify(&for_github, now()).await,
        Err(VerifyError::Token(_))
    ));

    // A token from another issuer (a workload token) is not an STS token.
    let workload = issuers.k8s_token("triage");
    assert!(slack.verify(&workload, now()).await.is_err());
    // Garbage, and a tampered STS token.
    for bad in [
        "",
        "a.b.c",
        "not a token",
        &format!("{}x", &for_github[..for_github.len() - 1]),
    ] {
        let e = slack.verify(bad, now()).await.unwrap_err();
        assert!(!format!("{e} {e:?}").contains(&for_github[..40]));
    }
    // Past its expiry (beyond the leeway), the github token is refused too.
    let github = Verifier::new(STS_ISSUER, "https://github-shim.internal", &jwks).unwrap();
    assert!(github.verify(&for_github, now() + 3600).await.is_err());
    // Plain http to a non-loopback host is refused at construction.
    assert!(Verifier::new(STS_ISSUER, "x", "http://sts.example.org/jwks").is_err());
}

/// The crate's downstream example, compiled here as it is shipped.
#[allow(dead_code)]
#[path = "../../verifier/examples/downstream.rs"]
mod downstream;

/// The downstream example served on a real port in front of a running STS: a minted
/// `docs.read` token reaches the handler, which sees who called; no token, a bad one,
/// a token for another audience, or one for another action is answered by the layer
/// per RFC 6750 §3, before the handler runs.
#[tokio::test]
async fn the_downstream_example_guards_its_route_with_the_layer() {
    use std::sync::Arc;

    use agent_sts_verifier::RequireAccessToken;

    let (sts, issuers) = TestSts::standard().await;
    let jwks = format!("{}/.well-known/jwks.json", sts.url);
    let verifier = Arc::new(Verifier::new(STS_ISSUER, "https://docs.internal", &jwks).unwrap());
    let serve = |router: axum::Router| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        url
    };
    let url = serve(downstream::app(verifier.clone())).await;
    let client = reqwest::Client::new();
    let get = |auth: Option<String>| {
        let mut request = client.get(format!("{url}/reports"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        async move { request.send().await.unwrap() }
    };

    let docs = sts
        .exchange_for(&issuers.k8s_token("triage"), "docs.read")
        .await
        .token();
    let ok = get(Some(format!("Bearer {docs}"))).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(
        ok.text().await.unwrap(),
        "reports for k8s-prod:system:serviceaccount:agents:triage (docs.read)"
    );

    let missing = get(None).await;
    assert_eq!(missing.status(), 401);
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");

    let github = sts
        .exchange_for(&issuers.k8s_token("triage"), "github.issues.create")
        .await
        .token();
    let tampered = flip_last(&docs);
    for bad in [github.as_str(), tampered.as_str(), "a.b.c"] {
        let r = get(Some(format!("Bearer {bad}"))).await;
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer error=\"invalid_token\""
        );
        assert_eq!(r.headers()["cache-control"], "no-store");
        assert!(r.text().await.unwrap().is_empty());
    }
    let basic = get(Some("Basic dXNlcjpwdw==".into())).await;
    assert_eq!(basic.status(), 400);

    // The same token where the route serves another action: 403.
    let other = serve(
        axum::Router::new()
            .route("/reports", axum::routing::get(|| async { "never" }))
            .layer(RequireAccessToken::new(verifier).for_actions(["docs.write"])),
    )
    .await;
    let r = client
        .get(format!("{other}/reports"))
        .bearer_auth(&docs)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer error=\"insufficient_scope\""
    );
}
