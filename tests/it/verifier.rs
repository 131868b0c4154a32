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
        .exchange(&[
            ("grant_type", GRANT),
            ("subject_token", &issuers.user_token("alice@example.org")),
            ("subject_token_type", JWT_TYPE),
            ("actor_token", &issuers.k8s_token("triage")),
            ("actor_token_type", JWT_TYPE),
            ("scope", "github.issues.create"),
        ])
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
