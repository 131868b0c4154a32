//! The jwt-bearer grant at `/token` (RFC 7523 §2.1 with RFC 8707 `resource`, as the
//! MCP workload-identity extension profiles it), over real HTTP: the same decision,
//! audit line and minted token as token exchange, an assertion whose `aud` is the STS's
//! issuer or its token endpoint, exactly one `resource`, single-use assertions where
//! the trust says so, and `invalid_grant` for every bad assertion (RFC 7523 §3.1).

use std::sync::Arc;

use agent_sts_testkit::DpopKey;
use agent_sts_verifier::Verifier;
use serde_json::{Value, json};

use crate::harness::*;

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const TOKEN_URL: &str = "https://sts.test.example/token";
const DOCS: &str = "https://docs.internal";
const GITHUB: &str = "https://github-shim.internal";
const TRIAGE: &str = "system:serviceaccount:agents:triage";

/// POSTs a jwt-bearer request for `scope` at `resources` with `assertion` (and a
/// `DPoP` proof when given).
async fn bearer_grant(
    sts: &TestSts,
    assertion: &str,
    scope: &str,
    resources: &[&str],
    proof: Option<&str>,
) -> Reply {
    let mut params = vec![("grant_type", JWT_BEARER), ("assertion", assertion)];
    if !scope.is_empty() {
        params.push(("scope", scope));
    }
    for r in resources {
        params.push(("resource", r));
    }
    let mut request = sts
        .client
        .post(format!("{}/token", sts.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&params));
    if let Some(proof) = proof {
        request = request.header("DPoP", proof);
    }
    reply(request.send().await.unwrap()).await
}

/// A k8s-prod assertion for the triage service account with `edit` applied to its
/// claims (audience: the token endpoint, a `jti`, ten minutes).
fn assertion(issuers: &Issuers, edit: impl FnOnce(&mut Value)) -> String {
    let mut claims = issuers.k8s.claims(TRIAGE);
    claims["aud"] = json!(TOKEN_URL);
    claims["jti"] = json!(unique_jti());
    edit(&mut claims);
    issuers.k8s.token(&claims)
}

/// A `jti` no other assertion of this test binary has.
fn unique_jti() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("jti-{t}-{n}")
}

fn audit(sts: &TestSts) -> Vec<Value> {
    std::fs::read_to_string(sts.audit_path())
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_assertion_gets_the_same_token_as_an_exchange() {
    let (sts, issuers) = TestSts::standard().await;

    let metadata = sts
        .get("/.well-known/oauth-authorization-server")
        .await
        .json();
    assert_eq!(
        metadata["grant_types_supported"],
        json!([GRANT, JWT_BEARER])
    );

    // The assertion names the token endpoint.
    let a = assertion(&issuers, |_| {});
    let r = bearer_grant(&sts, &a, "github.issues.create", &[GITHUB], None).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.assert_no_store();
    let body = r.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "github.issues.create");
    assert_eq!(
        body["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    // The verifier crate takes it exactly as a downstream service would.
    let jwks = format!("{}/.well-known/jwks.json", sts.url);
    let verifier = Arc::new(Verifier::new(STS_ISSUER, GITHUB, &jwks).unwrap());
    let token = verifier.verify(&r.token(), now()).await.unwrap();
    assert_eq!(token.subject, TRIAGE);
    assert_eq!(token.action, "github.issues.create");
    assert_eq!(token.client_id, format!("k8s-prod:{TRIAGE}"));
    // And so does the same workload's token exchange: same claims but `jti`/times.
    let exchanged = sts
        .exchange_for(&issuers.k8s_token("triage"), "github.issues.create")
        .await;
    let (mut x, mut b) = (claims_of(&exchanged.token()), claims_of(&r.token()));
    for volatile in ["jti", "iat", "nbf", "exp"] {
        x.as_object_mut().unwrap().remove(volatile);
        b.as_object_mut().unwrap().remove(volatile);
    }
    assert_eq!(x, b);

    // The issuer itself is an audience too, as a string or in an array.
    for aud in [
        json!(STS_ISSUER),
        json!(["https://elsewhere.example", STS_ISSUER]),
    ] {
        let a = assertion(&issuers, |c| c["aud"] = aud.clone());
        let r = bearer_grant(&sts, &a, "docs.read", &[DOCS], None).await;
        assert_eq!(r.status, 200, "{aud}: {r:?}");
    }

    // One audit line per decision, the grant named, never the assertion.
    let lines = audit(&sts);
    let issued: Vec<&Value> = lines
        .iter()
        .filter(|l| l["grant"] == "jwt-bearer" && l["decision"] == "allow")
        .collect();
    assert_eq!(issued.len(), 3, "{lines:?}");
    assert_eq!(issued[0]["subject"], TRIAGE);
    assert_eq!(issued[0]["trust"], "k8s-prod");
    assert_eq!(issued[0]["action"], "github.issues.create");
    assert_eq!(issued[0]["audience"], GITHUB);
    let text = std::fs::read_to_string(sts.audit_path()).unwrap();
    assert!(!text.contains(&a));
}

/// What is wrong, the assertion, `scope`, the `resource`s, and the expected status
/// and error code.
type Case<'a> = (&'a str, String, &'a str, Vec<&'a str>, u16, &'a str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_assertion_or_target_is_refused_and_mints_nothing() {
    let (sts, issuers) = TestSts::standard().await;
    let good = assertion(&issuers, |_| {});
    let ours = sts
        .exchange_for(&issuers.k8s_token("triage"), "docs.read")
        .await
        .token();
    let n = now();
    let cases: Vec<Case> = vec![
        (
            "an access token this STS minted",
            ours.clone(),
            "docs.read",
            vec![DOCS],
            400,
            "invalid_grant",
        ),
        (
            "an access token this STS minted, for an action at the issuer",
            {
                // Even one whose `aud` would pass: refused by its issuer.
                let key = sts_signing_key(&sts);
                let header = json!({"alg": "ES256", "kid": key.kid, "typ": "at+jwt"});
                let claims = json!({"iss": STS_ISSUER, "sub": TRIAGE, "aud": TOKEN_URL,
                    "iat": n, "exp": n + 300, "jti": "minted-1", "scope": "docs.read"});
                key.sign_compact(header.to_string().as_bytes(), claims.to_string().as_bytes())
                    .unwrap()
            },
            "docs.read",
            vec![DOCS],
            400,
            "invalid_grant",
        ),
        (
            "aud the action's audience",
            assertion(&issuers, |c| c["aud"] = json!(DOCS)),
            "docs.read",
            vec![DOCS],
            400,
            "invalid_grant",
        ),
        (
            "aud another endpoint of the STS",
            assertion(&issuers, |c| {
                c["aud"] = json!(format!("{STS_ISSUER}/introspect"))
            }),
            "docs.read",
            vec![DOCS],
            400,
            "invalid_grant",
        ),
        (
            "expired",
            assertion(&issuers, |c| {
                c["iat"] = json!(n - 1200);
                c["nbf"] = json!(n - 1200);
                c["exp"] = json!(n - 600);
            }),
            "docs.read",
            vec![DOCS],
            400,
            "invalid_grant",
        ),
        (
            "bad signature",
            flip_last(&good),
            "docs.read",
            vec![DOCS],
            400,
            "invalid_grant",
        ),
        (
            "unknown issuer",
            assertion(&issuers, |c| c["iss"] = json!("https://unknown.example")),
            "docs.read",
            vec![DOCS],
            400,
            "invalid_grant",
        ),
        (
            "two resource values",
            good.clone(),
            "docs.read",
            vec![DOCS, DOCS],
            400,
            "invalid_target",
        ),
        (
            "no resource",
            good.clone(),
            "docs.read",
            vec![],
            400,
            "invalid_target",
        ),
        (
            "resource naming another action's audience",
            good.clone(),
            "docs.read",
            vec![GITHUB],
            400,
            "invalid_target",
        ),
        (
            "missing scope",
            good.clone(),
            "",
            vec![DOCS],
            400,
            "invalid_scope",
        ),
        (
            "an action not in the catalogue",
            good.clone(),
            "no.such.action",
            vec![DOCS],
            400,
            "invalid_scope",
        ),
        (
            "an action that requires delegation (jwt-bearer has no actor)",
            good.clone(),
            "salesforce.opportunity.update",
            vec!["https://salesforce-shim.internal"],
            400,
            "invalid_request",
        ),
    ];
    let allowed = |sts: &TestSts| {
        audit(sts)
            .iter()
            .filter(|l| l["decision"] == "allow")
            .count()
    };
    let before = allowed(&sts);
    for (what, assertion, scope, resources, status, code) in &cases {
        let r = bearer_grant(&sts, assertion, scope, resources, None).await;
        r.assert_error(*status, code, &[assertion.as_str(), TRIAGE]);
        assert!(r.token().is_empty(), "{what}: {r:?}");
        assert!(
            !format!("{r:?}").contains(assertion.as_str()),
            "{what} echoed"
        );
    }
    assert_eq!(before, allowed(&sts), "something was minted");
    // An assertion for the token endpoint is no subject token (whose audience is the
    // issuer alone), even once verified and cached as an assertion.
    let for_endpoint = assertion(&issuers, |_| {});
    let r = bearer_grant(&sts, &for_endpoint, "docs.read", &[DOCS], None).await;
    assert_eq!(r.status, 200, "{r:?}");
    sts.exchange_for(&for_endpoint, "docs.read")
        .await
        .assert_error(400, "invalid_request", &[&for_endpoint]);
    // The assertion was never the problem in the target cases: the same request with
    // one right resource passes (the trust is not single-use, the assertion reusable).
    let r = bearer_grant(&sts, &good, "docs.read", &[DOCS], None).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = bearer_grant(&sts, &good, "docs.read", &[DOCS], None).await;
    assert_eq!(r.status, 200, "reusable assertion refused: {r:?}");
    let reasons: Vec<String> = audit(&sts)
        .iter()
        .filter(|l| l["decision"] == "deny")
        .map(|l| l["reason"].as_str().unwrap().to_string())
        .collect();
    // (Refusals of the form itself are decided before the grant is read: no `grant`.)
    for reason in ["invalid_assertion", "resource_not_one", "invalid_target"] {
        assert!(reasons.iter().any(|r| r == reason), "{reason}: {reasons:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_use_trusts_assertion_is_spent_once() {
    let issuers = Issuers::start().await;
    let tweaks = ConfigTweaks {
        trust_lines: "single_use_assertions = true",
        ..ConfigTweaks::default()
    };
    let sts = TestSts::start_with(&issuers.specs(), SCOPES, "", tweaks).await;
    let a = assertion(&issuers, |_| {});
    let first = bearer_grant(&sts, &a, "docs.read", &[DOCS], None).await;
    assert_eq!(first.status, 200, "{first:?}");
    // The same assertion again, for the same or another action: replayed.
    for (scope, resource) in [("docs.read", DOCS), ("github.issues.create", GITHUB)] {
        bearer_grant(&sts, &a, scope, &[resource], None)
            .await
            .assert_error(400, "invalid_grant", &[&a]);
    }
    // Another assertion with the same jti is the same assertion.
    let again = assertion(&issuers, |c| {
        c["jti"] = claims_of(&a)["jti"].clone();
        c["iat"] = json!(now() - 1);
    });
    bearer_grant(&sts, &again, "docs.read", &[DOCS], None)
        .await
        .assert_error(400, "invalid_grant", &[]);
    // Without a jti, a single-use trust's assertion cannot be spent: refused.
    let no_jti = assertion(&issuers, |c| {
        c.as_object_mut().unwrap().remove("jti");
    });
    bearer_grant(&sts, &no_jti, "docs.read", &[DOCS], None)
        .await
        .assert_error(400, "invalid_grant", &[]);
    // A fresh jti passes; token exchange is unaffected (subject tokens are reusable).
    let fresh = assertion(&issuers, |_| {});
    assert_eq!(
        bearer_grant(&sts, &fresh, "docs.read", &[DOCS], None)
            .await
            .status,
        200
    );
    let subject = issuers.k8s_token("triage");
    for _ in 0..2 {
        assert_eq!(sts.exchange_for(&subject, "docs.read").await.status, 200);
    }
    let replayed = audit(&sts)
        .iter()
        .filter(|l| l["reason"] == "assertion_replayed")
        .count();
    assert_eq!(replayed, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dpop_proof_binds_a_jwt_bearer_token() {
    let (sts, issuers) = TestSts::standard().await;
    let key = DpopKey::new();
    let proof = key.proof("POST", TOKEN_URL, None, None);
    let a = assertion(&issuers, |_| {});
    let r = bearer_grant(&sts, &a, "docs.read", &[DOCS], Some(&proof)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["token_type"], "DPoP");
    assert_eq!(
        claims_of(&r.token())["cnf"],
        json!({"jkt": key.thumbprint()})
    );
    verify_independently(&sts.url, &r.token(), DOCS).await;
    // The proof is spent with the request; a bad one is refused before the assertion.
    let again = assertion(&issuers, |_| {});
    bearer_grant(&sts, &again, "docs.read", &[DOCS], Some(&proof))
        .await
        .assert_error(400, "invalid_dpop_proof", &[]);
    bearer_grant(
        &sts,
        &flip_last(&again),
        "docs.read",
        &[DOCS],
        Some("x.y.z"),
    )
    .await
    .assert_error(400, "invalid_dpop_proof", &[]);
}

/// The STS's active signing key, read from its file keyring.
fn sts_signing_key(sts: &TestSts) -> agent_sts::keys::signing_key::SigningKey {
    crate::shim::sts_key(sts)
}
