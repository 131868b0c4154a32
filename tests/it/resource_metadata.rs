//! RFC 9728 at the shim, over real HTTP: the protected-resource metadata (and its
//! path-suffixed form) is answered by the shim and never reaches the upstream, however
//! the path is spelled; every 401 and 403 challenge points at it (`resource_metadata`,
//! and `scope` where the route names one action); and a client that starts from the
//! metadata alone gets a jwt-bearer token that the shim takes, while its own
//! `Authorization` never reaches the upstream.

use serde_json::{Value, json};

use crate::harness::*;
use crate::shim::{CANARY_PART, GITHUB, ISSUES, TestShim, access_token, call, client, start_echo};

const METADATA: &str = "/.well-known/oauth-protected-resource";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shim_serves_its_metadata_itself_and_never_forwards_it() {
    let (sts, issuers) = TestSts::standard().await;
    let (echo, upstream) = start_echo().await;
    let shim = TestShim::start(&sts, GITHUB, &upstream, "").await;
    let token = access_token(&sts, &issuers, "github.issues.create").await;

    let expected = json!({
        "resource": GITHUB,
        "authorization_servers": [STS_ISSUER],
        "scopes_supported": ["github.issues.create"],
        "bearer_methods_supported": ["header"],
        "dpop_signing_alg_values_supported": ["ES256", "EdDSA"],
    });
    for path in [
        METADATA.to_string(),
        format!("{METADATA}/mcp"),
        format!("{METADATA}/repos/acme/widgets"),
        format!("{METADATA}?x=1"),
        "/%2Ewell-known/oauth-protected-resource".to_string(),
        "/.WELL-KNOWN/oauth-protected-resource".to_string(),
        format!("{METADATA};v=1"),
    ] {
        // With and without a token: the document either way, never the upstream.
        for token in [None, Some(token.as_str())] {
            let r = call(&shim.url, "GET", &path, token, "").await;
            assert_eq!(r.status, 200, "{path}: {r:?}");
            assert_eq!(r.json(), expected, "{path}");
            assert_eq!(r.headers["content-type"], "application/json");
        }
    }
    let head = call(&shim.url, "HEAD", METADATA, None, "").await;
    assert_eq!(head.status, 200, "{head:?}");
    for method in ["POST", "DELETE", "PUT"] {
        let r = call(&shim.url, method, METADATA, Some(&token), "{}").await;
        assert_eq!(r.status, 405, "{method}: {r:?}");
        assert_eq!(r.headers["allow"], "GET, HEAD");
    }
    assert_eq!(echo.hits(), 0, "a metadata request reached the upstream");
    // Not in the shim's audit log either: it is no decision.
    assert!(crate::shim::audit_lines(&shim.audit_path).is_empty());

    // A real call still goes through, and the agent's Authorization stays behind: the
    // upstream gets the injected credential, never the access token.
    let r = call(&shim.url, "POST", ISSUES, Some(&token), "{}").await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = echo.last().unwrap();
    assert_eq!(seen["path"], ISSUES);
    assert_eq!(seen["headers"]["authorization"], json!([CANARY_CREDENTIAL]));
    assert!(!seen.to_string().contains(&token));
    assert!(!r.text.contains(CANARY_PART));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_challenge_points_at_the_metadata_and_names_the_routes_scope() {
    let (sts, issuers) = TestSts::standard().await;
    let (echo, upstream) = start_echo().await;
    let shim = TestShim::start(&sts, GITHUB, &upstream, "").await;
    let metadata = format!("resource_metadata=\"{GITHUB}{METADATA}\"");
    let scope = "scope=\"github.issues.create\"";
    let slack = access_token(&sts, &issuers, "slack.message.post").await;
    let github = access_token(&sts, &issuers, "github.issues.create").await;

    // No token, on the action's route: both schemes, each with the metadata and scope.
    let r = call(&shim.url, "POST", ISSUES, None, "{}").await;
    assert_eq!(r.status, 401, "{r:?}");
    let c = r.challenges();
    assert_eq!(c.len(), 2, "{c:?}");
    assert!(c[0].starts_with("Bearer "), "{c:?}");
    assert!(c[1].starts_with("DPoP algs="), "{c:?}");
    for challenge in &c {
        assert!(challenge.contains(&metadata), "{challenge}");
        assert!(challenge.contains(scope), "{challenge}");
    }
    // A bad token: invalid_token, the metadata, the scope.
    let r = call(&shim.url, "POST", ISSUES, Some(&flip_last(&github)), "{}").await;
    assert_eq!(r.status, 401);
    let c = r.challenges();
    assert!(c[0].contains("error=\"invalid_token\""), "{c:?}");
    assert!(c[0].contains(&metadata) && c[0].contains(scope), "{c:?}");
    assert!(!c[0].contains(&github[github.len() - 20..]));
    // A route no action has: the metadata, no scope.
    let r = call(&shim.url, "GET", "/nothing/here", None, "").await;
    assert_eq!(r.status, 401);
    for challenge in r.challenges() {
        assert!(challenge.contains(&metadata), "{challenge}");
        assert!(!challenge.contains("scope="), "{challenge}");
    }
    // A bearer token sent as DPoP: the DPoP challenge carries them too.
    let r = client()
        .post(format!("{}{ISSUES}", shim.url))
        .header("authorization", format!("DPoP {github}"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    let r = reply(r).await;
    assert_eq!(r.status, 401, "{r:?}");
    let c = r.challenges();
    assert!(c[0].starts_with("DPoP "), "{c:?}");
    assert!(c[0].contains(&metadata), "{c:?}");
    // A token for another shim is no token here: 401, the metadata and the scope.
    let r = call(&shim.url, "POST", ISSUES, Some(&slack), "{}").await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.challenges()[0].contains(&metadata) && r.challenges()[0].contains(scope));
    // 403 insufficient_scope stays (a method the action does not allow), pointing at
    // the metadata; no action fits the route, so no scope.
    let r = call(&shim.url, "GET", ISSUES, Some(&github), "").await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.error(), "insufficient_scope");
    let c = r.challenges();
    assert!(c[0].contains("error=\"insufficient_scope\""), "{c:?}");
    assert!(
        c[0].contains(&metadata) && !c[0].contains("scope=\""),
        "{c:?}"
    );
    assert_eq!(echo.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_starting_from_the_metadata_gets_a_token_the_shim_takes() {
    let (sts, issuers) = TestSts::standard().await;
    let (echo, upstream) = start_echo().await;
    let shim = TestShim::start(&sts, GITHUB, &upstream, "").await;

    // 1. The 401 names the metadata; 2. the metadata names the STS and the scope.
    let r = call(&shim.url, "POST", ISSUES, None, "{}").await;
    assert!(r.challenges()[0].contains("resource_metadata="));
    let doc: Value = call(&shim.url, "GET", METADATA, None, "").await.json();
    assert_eq!(doc["authorization_servers"][0], STS_ISSUER);
    let resource = doc["resource"].as_str().unwrap();
    let scope = doc["scopes_supported"][0].as_str().unwrap();
    // 3. The STS's metadata offers jwt-bearer; 4. the workload's token is the assertion.
    let meta = sts
        .get("/.well-known/oauth-authorization-server")
        .await
        .json();
    let grants = meta["grant_types_supported"].as_array().unwrap();
    assert!(
        grants
            .iter()
            .any(|g| g == "urn:ietf:params:oauth:grant-type:jwt-bearer")
    );
    let mut claims = issuers.k8s.claims("system:serviceaccount:agents:triage");
    claims["aud"] = json!(meta["token_endpoint"]);
    let assertion = issuers.k8s.token(&claims);
    let r = sts
        .exchange(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", &assertion),
            ("scope", scope),
            ("resource", resource),
        ])
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    // 5. The shim takes it.
    let called = call(&shim.url, "POST", ISSUES, Some(&r.token()), "{}").await;
    assert_eq!(called.status, 200, "{called:?}");
    assert_eq!(echo.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_names_the_public_url_when_it_differs() {
    let (sts, _issuers) = TestSts::standard().await;
    let (_echo, upstream) = start_echo().await;
    let public = "https://github.example.org/api";
    let shim = TestShim::start(
        &sts,
        GITHUB,
        &upstream,
        &format!("public_url = \"{public}\""),
    )
    .await;
    let doc = call(&shim.url, "GET", METADATA, None, "").await.json();
    assert_eq!(doc["resource"], public);
    let r = call(&shim.url, "POST", ISSUES, None, "{}").await;
    assert!(
        r.challenges()[0].contains(&format!("resource_metadata=\"{public}{METADATA}\"")),
        "{r:?}"
    );
}
