//! DPoP at `/token` (RFC 9449 §5, §8), over real HTTP: a valid proof binds the token
//! (`cnf.jkt`, `token_type: DPoP`); an action with `sender_constraint = "dpop"` needs
//! one; every bad proof is the fixed `invalid_dpop_proof`, audited, nothing minted;
//! nonces are stateless and shared by replicas that read the same keyring.

use serde_json::{Value, json};

use crate::harness::*;
use agent_sts::config::ShimConfig;
use agent_sts_testkit::DpopKey;

const TOKEN_URL: &str = "https://sts.test.example/token";

/// The standard catalogue plus an action that only takes DPoP-bound tokens.
fn scopes() -> String {
    format!(
        "{SCOPES}\n[[action]]\nname = \"payments.refund\"\naudience = \"https://payments.internal\"\nagents = [\"k8s-prod:system:serviceaccount:agents:*\"]\nsender_constraint = \"dpop\"\n"
    )
}

/// POSTs the exchange of `subject` for `scope` with `proofs` as `DPoP` headers.
async fn exchange_with(sts: &TestSts, subject: &str, scope: &str, proofs: &[&str]) -> Reply {
    let mut request = reqwest::Client::new()
        .post(format!("{}/token", sts.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(exchange_form(subject, scope));
    for proof in proofs {
        request = request.header("DPoP", *proof);
    }
    reply(request.send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_proof_binds_the_token_to_its_key() {
    let issuers = Issuers::start().await;
    let sts = TestSts::start(&issuers.specs(), &scopes(), "").await;
    let subject = issuers.k8s_token("triage");
    let key = DpopKey::new();

    // Bearer by default, bound when a proof comes along.
    let bearer = exchange_with(&sts, &subject, "docs.read", &[]).await;
    assert_eq!(bearer.status, 200, "{bearer:?}");
    assert_eq!(bearer.json()["token_type"], "Bearer");
    assert!(claims_of(&bearer.token()).get("cnf").is_none());

    let proof = key.proof("POST", TOKEN_URL, None, None);
    let bound = exchange_with(&sts, &subject, "docs.read", &[&proof]).await;
    assert_eq!(bound.status, 200, "{bound:?}");
    assert_eq!(bound.json()["token_type"], "DPoP");
    let claims = claims_of(&bound.token());
    assert_eq!(claims["cnf"], json!({"jkt": key.thumbprint()}));
    verify_independently(&sts.url, &bound.token(), "https://docs.internal").await;

    // An action that requires DPoP: refused without a proof, bound with one.
    exchange_with(&sts, &subject, "payments.refund", &[])
        .await
        .assert_error(400, "invalid_dpop_proof", &[]);
    let proof = key.proof("POST", TOKEN_URL, None, None);
    let r = exchange_with(&sts, &subject, "payments.refund", &[&proof]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(claims_of(&r.token())["cnf"]["jkt"], key.thumbprint());

    let metadata = sts
        .get("/.well-known/oauth-authorization-server")
        .await
        .json();
    assert_eq!(
        metadata["dpop_signing_alg_values_supported"],
        json!(["ES256", "EdDSA"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_proof_is_refused_audited_and_mints_nothing() {
    let issuers = Issuers::start().await;
    let sts = TestSts::start(&issuers.specs(), &scopes(), "").await;
    let subject = issuers.k8s_token("triage");
    let key = DpopKey::new();
    let other = DpopKey::new();
    let n = now();

    let with_claims = |edit: &dyn Fn(&mut Value)| {
        let mut c = key.claims("POST", TOKEN_URL, None, None);
        edit(&mut c);
        key.sign(&key.header(), &c)
    };
    let with_header = |edit: &dyn Fn(&mut Value)| {
        let mut h = key.header();
        edit(&mut h);
        key.sign(&h, &key.claims("POST", TOKEN_URL, None, None))
    };
    let replayed = key.proof("POST", TOKEN_URL, None, None);
    let first = exchange_with(&sts, &subject, "docs.read", &[&replayed]).await;
    assert_eq!(first.status, 200, "{first:?}");

    let cases: Vec<(&str, String)> = vec![
        (
            "signed by another key than its jwk",
            other.sign(&key.header(), &key.claims("POST", TOKEN_URL, None, None)),
        ),
        (
            "private key in jwk",
            with_header(&|h| h["jwk"]["d"] = json!("AAAA")),
        ),
        ("alg none", with_header(&|h| h["alg"] = json!("none"))),
        ("alg HS256", with_header(&|h| h["alg"] = json!("HS256"))),
        ("typ JWT", with_header(&|h| h["typ"] = json!("JWT"))),
        ("htm GET", with_claims(&|c| c["htm"] = json!("GET"))),
        (
            "htu other host",
            with_claims(&|c| c["htu"] = json!("https://evil.example/token")),
        ),
        (
            "htu other port",
            with_claims(&|c| c["htu"] = json!("https://sts.test.example:8443/token")),
        ),
        (
            "htu other path",
            with_claims(&|c| c["htu"] = json!("https://sts.test.example/introspect")),
        ),
        (
            "htu with a query",
            with_claims(&|c| c["htu"] = json!("https://sts.test.example/token?a=b")),
        ),
        ("iat too old", with_claims(&|c| c["iat"] = json!(n - 600))),
        (
            "iat in the future",
            with_claims(&|c| c["iat"] = json!(n + 600)),
        ),
        (
            "no jti",
            with_claims(&|c| drop(c.as_object_mut().unwrap().remove("jti"))),
        ),
        ("replayed jti", replayed.clone()),
        ("oversized", format!("{}{}", "a".repeat(9000), replayed)),
        ("garbage", "not-a-jwt".into()),
    ];
    for (what, proof) in &cases {
        let r = exchange_with(&sts, &subject, "docs.read", &[proof.as_str()]).await;
        r.assert_error(400, "invalid_dpop_proof", &[]);
        assert!(!r.text.contains("access_token"), "{what}: {r:?}");
    }
    // Two DPoP headers, each valid on its own.
    let (a, b) = (
        key.proof("POST", TOKEN_URL, None, None),
        key.proof("POST", TOKEN_URL, None, None),
    );
    exchange_with(&sts, &subject, "docs.read", &[&a, &b])
        .await
        .assert_error(400, "invalid_dpop_proof", &[]);

    let audit = std::fs::read_to_string(sts.audit_path()).unwrap();
    let refused = audit.matches("\"invalid_dpop_proof\"").count();
    assert!(refused >= 1, "no audit line for a refused proof: {audit}");
    let issued = audit.matches("\"issued\"").count();
    assert_eq!(issued, 1, "only the first, valid proof minted a token");
    for (_, proof) in &cases {
        assert!(!audit.contains(proof.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonces_are_required_handed_out_and_shared_by_replicas() {
    let issuers = Issuers::start().await;
    let config = "[tokens]\ndpop_nonces = true\n";
    let (dir, config_path) = sts_files(&issuers.specs(), &scopes(), "", ConfigTweaks::default());
    let text = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace("[tokens]\n", config);
    std::fs::write(&config_path, text).unwrap();
    let a = TestSts::serve(dir, config_path.clone()).await;
    // A second replica on the same keyring and catalogue.
    let env = std::collections::BTreeMap::new();
    let b_config = agent_sts::config::Config::load(&config_path, &env).unwrap();
    let b_app = agent_sts::sts::build(&b_config).await.unwrap();
    let b_url = spawn_router(b_app.router(None)).await;

    let subject = issuers.k8s_token("triage");
    let key = DpopKey::new();
    let r = exchange_with(
        &a,
        &subject,
        "docs.read",
        &[&key.proof("POST", TOKEN_URL, None, None)],
    )
    .await;
    r.assert_error(400, "use_dpop_nonce", &[]);
    let nonce = r.headers["dpop-nonce"].to_str().unwrap().to_owned();

    // The nonce from replica A is good at replica B.
    let proof = key.proof("POST", TOKEN_URL, None, Some(&nonce));
    let r = reqwest::Client::new()
        .post(format!("{b_url}/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("DPoP", proof)
        .body(exchange_form(&subject, "docs.read"))
        .send()
        .await
        .unwrap();
    let r = reply(r).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["token_type"], "DPoP");
    assert!(r.headers.contains_key("dpop-nonce"));

    // A made-up nonce is refused like a missing one.
    let proof = key.proof(
        "POST",
        TOKEN_URL,
        None,
        Some("bm9uY2Utbm9uY2Utbm9uY2Utbm9uY2U"),
    );
    exchange_with(&a, &subject, "docs.read", &[&proof])
        .await
        .assert_error(400, "use_dpop_nonce", &[]);
}

// ---------------------------------------------------------------------------------
// At the shim (RFC 9449 §7): the token is worth nothing without its key.

use crate::shim::{CANARY_PART, GITHUB, ISSUES, TestShim, access_token, client, start_echo};

/// `POST shim ISSUES` with `Authorization: SCHEME TOKEN` and `proofs` as `DPoP` headers.
async fn call_shim(shim: &TestShim, scheme: &str, token: &str, proofs: &[&str]) -> Reply {
    let mut request = client()
        .post(format!("{}{ISSUES}", shim.url))
        .header("authorization", format!("{scheme} {token}"))
        .header("content-type", "application/json")
        .body("{}");
    for proof in proofs {
        request = request.header("DPoP", *proof);
    }
    reply(request.send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_shim_a_bound_token_works_only_with_its_key_and_a_fresh_proof() {
    let (sts, issuers) = TestSts::standard().await;
    let (echo, upstream) = start_echo().await;
    let shim = TestShim::start(&sts, GITHUB, &upstream, "").await;
    let subject = issuers.k8s_token("triage");
    let key = DpopKey::new();
    let bound = exchange_with(
        &sts,
        &subject,
        "github.issues.create",
        &[&key.proof("POST", TOKEN_URL, None, None)],
    )
    .await;
    assert_eq!(bound.json()["token_type"], "DPoP", "{bound:?}");
    let token = bound.token();
    let htu = format!("{GITHUB}{ISSUES}");

    // The agent's runtime: its key, a fresh proof with the token's hash.
    let proof = key.proof("POST", &htu, Some(&token), None);
    let ok = call_shim(&shim, "DPoP", &token, &[&proof]).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    let seen = echo.last().unwrap();
    assert!(
        seen["headers"].get("dpop").is_none(),
        "proof forwarded: {seen}"
    );
    let forwarded = seen["headers"]["authorization"].to_string();
    assert!(forwarded.contains(CANARY_PART) && !forwarded.contains(&token));

    let other_token = access_token(&sts, &issuers, "github.issues.create").await;
    let thief = DpopKey::new();
    let refused: Vec<(&str, Reply)> = vec![
        // A stolen token and its stolen proof, replayed from another client.
        (
            "replayed proof",
            call_shim(&shim, "DPoP", &token, &[&proof]).await,
        ),
        // The stolen token with a proof of the thief's own key.
        (
            "thief's key",
            call_shim(
                &shim,
                "DPoP",
                &token,
                &[&thief.proof("POST", &htu, Some(&token), None)],
            )
            .await,
        ),
        // A proof for token A sent with token B (ath).
        (
            "proof of another token",
            call_shim(
                &shim,
                "DPoP",
                &token,
                &[&key.proof("POST", &htu, Some(&other_token), None)],
            )
            .await,
        ),
        // A proof made for another shim, or another method.
        (
            "proof for another shim",
            call_shim(
                &shim,
                "DPoP",
                &token,
                &[&key.proof(
                    "POST",
                    &format!("https://slack-shim.internal{ISSUES}"),
                    Some(&token),
                    None,
                )],
            )
            .await,
        ),
        (
            "proof for GET",
            call_shim(
                &shim,
                "DPoP",
                &token,
                &[&key.proof("GET", &htu, Some(&token), None)],
            )
            .await,
        ),
        ("no proof", call_shim(&shim, "DPoP", &token, &[]).await),
        (
            "two proofs",
            call_shim(
                &shim,
                "DPoP",
                &token,
                &[
                    &key.proof("POST", &htu, Some(&token), None),
                    &key.proof("POST", &htu, Some(&token), None),
                ],
            )
            .await,
        ),
    ];
    for (what, r) in &refused {
        assert_eq!(r.status, 401, "{what}: {r:?}");
        assert_eq!(r.json()["error"], "invalid_dpop_proof", "{what}: {r:?}");
        let c = r.challenges();
        assert!(
            c.iter().any(|c| c.starts_with("DPoP algs=\"ES256 EdDSA\"")
                && c.contains("error=\"invalid_dpop_proof\"")),
            "{what}: {c:?}"
        );
    }
    // The downgrade: the bound token as a bearer token, even with a good proof.
    let proof = key.proof("POST", &htu, Some(&token), None);
    let r = call_shim(&shim, "Bearer", &token, &[&proof]).await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (401, Some("invalid_token"))
    );
    assert!(
        r.challenges().iter().any(|c| c.starts_with("DPoP")),
        "{r:?}"
    );
    // A bearer token dressed as DPoP.
    let r = call_shim(
        &shim,
        "DPoP",
        &other_token,
        &[&key.proof("POST", &htu, Some(&other_token), None)],
    )
    .await;
    assert_eq!(r.status, 401, "{r:?}");
    // No token: both schemes are offered.
    let r = reply(
        client()
            .post(format!("{}{ISSUES}", shim.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let c = r.challenges();
    assert!(
        c.iter().any(|c| c.starts_with("Bearer")) && c.iter().any(|c| c.starts_with("DPoP")),
        "{c:?}"
    );
    assert_eq!(echo.hits(), 1, "a refused call reached the upstream");
}

/// Behind a load balancer the agent addresses `shim.public_url`: proofs name it, and a
/// proof naming the shim's audience host instead is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ed25519_key_binds_and_uses_tokens_like_a_p256_one() {
    let (sts, issuers) = TestSts::standard().await;
    let (_echo, upstream) = start_echo().await;
    let shim = TestShim::start(&sts, GITHUB, &upstream, "").await;
    let subject = issuers.k8s_token("triage");
    let key = DpopKey::ed25519();
    let bound = exchange_with(
        &sts,
        &subject,
        "github.issues.create",
        &[&key.proof("POST", TOKEN_URL, None, None)],
    )
    .await;
    assert_eq!(bound.json()["token_type"], "DPoP", "{bound:?}");
    let token = bound.token();
    assert_eq!(claims_of(&token)["cnf"]["jkt"], key.thumbprint());
    let htu = format!("{GITHUB}{ISSUES}");
    let ok = call_shim(
        &shim,
        "DPoP",
        &token,
        &[&key.proof("POST", &htu, Some(&token), None)],
    )
    .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    // The same header (cached after the first proof) with another key's signature.
    let forged =
        DpopKey::ed25519().sign(&key.header(), &key.claims("POST", &htu, Some(&token), None));
    let refused = call_shim(&shim, "DPoP", &token, &[&forged]).await;
    assert_eq!(refused.status, 401, "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shim_checks_htu_against_its_public_url() {
    let (sts, issuers) = TestSts::standard().await;
    let (_echo, upstream) = start_echo().await;
    let public = "https://agents.example.com/github";
    let shim = TestShim::start(
        &sts,
        GITHUB,
        &upstream,
        &format!("public_url = \"{public}\""),
    )
    .await;
    let key = DpopKey::new();
    let token = exchange_with(
        &sts,
        &issuers.k8s_token("triage"),
        "github.issues.create",
        &[&key.proof("POST", TOKEN_URL, None, None)],
    )
    .await
    .token();
    let at = |base: &str| key.proof("POST", &format!("{base}{ISSUES}"), Some(&token), None);
    let r = call_shim(&shim, "DPoP", &token, &[&at(GITHUB)]).await;
    assert_eq!(r.status, 401, "{r:?}");
    let r = call_shim(&shim, "DPoP", &token, &[&at(public)]).await;
    assert_eq!(r.status, 200, "{r:?}");
}

/// A downstream service using the verifier crate's layer gets the same check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verifier_layer_requires_the_bound_key() {
    use agent_sts_verifier::{AccessToken, RequireAccessToken, Verifier};
    use axum::{Extension, routing::post};
    use std::sync::Arc;

    let (sts, issuers) = TestSts::standard().await;
    let jwks = format!("{}/.well-known/jwks.json", sts.url);
    let verifier = Arc::new(Verifier::new(STS_ISSUER, GITHUB, &jwks).unwrap());
    let app = axum::Router::new()
        .route(
            ISSUES,
            post(|Extension(t): Extension<AccessToken>| async move { t.jkt.unwrap_or_default() }),
        )
        .layer(RequireAccessToken::new(verifier));
    let url = spawn_router(app).await;
    let key = DpopKey::new();
    let token = exchange_with(
        &sts,
        &issuers.k8s_token("triage"),
        "github.issues.create",
        &[&key.proof("POST", TOKEN_URL, None, None)],
    )
    .await
    .token();
    let send = |scheme: &str, proof: Option<String>| {
        let mut r = client()
            .post(format!("{url}{ISSUES}"))
            .header("authorization", format!("{scheme} {token}"));
        if let Some(p) = proof {
            r = r.header("DPoP", p);
        }
        async move { reply(r.send().await.unwrap()).await }
    };
    let htu = format!("{GITHUB}{ISSUES}");
    let proof = key.proof("POST", &htu, Some(&token), None);
    let ok = send("DPoP", Some(proof.clone())).await;
    assert_eq!(
        (ok.status, ok.text.as_str()),
        (200, key.thumbprint().as_str())
    );
    for (what, r) in [
        ("replayed", send("DPoP", Some(proof)).await),
        ("no proof", send("DPoP", None).await),
        (
            "as Bearer",
            send("Bearer", Some(key.proof("POST", &htu, Some(&token), None))).await,
        ),
        (
            "thief's key",
            send(
                "DPoP",
                Some(DpopKey::new().proof("POST", &htu, Some(&token), None)),
            )
            .await,
        ),
    ] {
        assert_eq!(r.status, 401, "{what}: {r:?}");
        assert!(
            r.challenges().iter().any(|c| c.starts_with("DPoP")),
            "{what}: {r:?}"
        );
    }
}

/// `shim.dpop_nonce_secret_file`: proofs need a nonce made from the shared secret, so
/// a nonce from one shim replica is good at another; a short secret does not start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shim_nonces_are_required_and_shared_by_replicas() {
    let (sts, issuers) = TestSts::standard().await;
    let (echo, upstream) = start_echo().await;
    let secret = sts.dir.path().join("nonce-secret");
    write_secret_file(&secret, "a-shared-secret-of-at-least-32-bytes-0123456789");
    let extra = format!("dpop_nonce_secret_file = \"{}\"", secret.display());
    let a = TestShim::start(&sts, GITHUB, &upstream, &extra).await;
    let b = TestShim::start(&sts, GITHUB, &upstream, &extra).await;
    let key = DpopKey::new();
    let token = exchange_with(
        &sts,
        &issuers.k8s_token("triage"),
        "github.issues.create",
        &[&key.proof("POST", TOKEN_URL, None, None)],
    )
    .await
    .token();
    let htu = format!("{GITHUB}{ISSUES}");
    let r = call_shim(
        &a,
        "DPoP",
        &token,
        &[&key.proof("POST", &htu, Some(&token), None)],
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (401, Some("use_dpop_nonce")),
        "{r:?}"
    );
    assert!(
        r.challenges()
            .iter()
            .any(|c| c.contains("error=\"use_dpop_nonce\""))
    );
    let nonce = r.headers["dpop-nonce"].to_str().unwrap().to_owned();
    let proof = key.proof("POST", &htu, Some(&token), Some(&nonce));
    let r = call_shim(&b, "DPoP", &token, &[&proof]).await;
    assert_eq!(r.status, 200, "the nonce of replica a at replica b: {r:?}");
    assert_eq!(echo.hits(), 1);

    write_secret_file(&secret, "too-short");
    let config = ShimConfig::load(&a.config_path, &std::collections::BTreeMap::new()).unwrap();
    let e = agent_sts::shim::build(&config)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("dpop_nonce_secret_file") && !e.contains("too-short"),
        "{e}"
    );
}
