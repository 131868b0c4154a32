//! Keys taken away underneath a running STS (README, "Runbook": "Revoking an issuer
//! key"): a workload issuer that stops publishing a key, publishes `{"keys": []}`, or
//! publishes other material under the same `kid` has answered; from the STS's next
//! successful fetch of its JWKS (here `jwks_refresh = 1s`; the refetch cooldown keeps
//! its 30 s default) subject tokens signed by the old key are refused as bad tokens
//! (400 `invalid_request`), those already verified and cached included. Only a failed
//! fetch is an outage (`faults.rs`).

use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

use crate::harness::*;

/// The standard issuers and an STS refreshing their keys every second.
async fn sts_refreshing_every_second() -> (TestSts, Issuers) {
    let issuers = Issuers::start().await;
    let sts = TestSts::start_with(
        &issuers.specs(),
        SCOPES,
        "",
        ConfigTweaks {
            trust_lines: "jwks_refresh = \"1s\"",
            ..ConfigTweaks::default()
        },
    )
    .await;
    (sts, issuers)
}

/// A fresh SVID for the triage agent signed by `issuer` (a new `jti` each time, so it
/// is never served from the cache of verified tokens).
fn fresh_svid(issuer: &TestIssuer) -> String {
    let mut claims = issuer.claims("spiffe://example.org/agent/triage");
    claims["jti"] = json!(format!("removal-{}", rand_suffix()));
    issuer.token(&claims)
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Exchanges what `token()` gives every 200 ms until the answer is not 200, or 10 s
/// pass; returns the token refused and the refusal.
async fn refused_within_deadline(
    sts: &TestSts,
    mut token: impl FnMut() -> String,
) -> (String, Reply) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = token();
        let r = sts.exchange_for(&t, "github.issues.create").await;
        if r.status != 200 {
            return (t, r);
        }
        assert!(
            Instant::now() < deadline,
            "still accepted 10 s after the issuer changed its keys: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `jwk` published under `kid` instead of its own.
fn renamed(mut jwk: Value, kid: &str) -> Value {
    jwk["kid"] = json!(kid);
    jwk
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_issuer_stops_publishing_stops_verifying_even_from_the_cache() {
    let (sts, issuers) = sts_refreshing_every_second().await;
    let spire = &issuers.spire;
    let subject = fresh_svid(spire);
    let r = sts.exchange_for(&subject, "github.issues.create").await;
    assert_eq!(r.status, 200, "{r:?}");

    // The issuer rotates the key out: its JWKS now holds another key only.
    let other = renamed(issuers.idp.jwks()["keys"][0].clone(), "spire-next");
    spire.set_jwks(json!({ "keys": [other] }));

    // The same token, verified once and cached, is refused after the next refresh.
    let (_, r) = refused_within_deadline(&sts, || subject.clone()).await;
    r.assert_error(400, "invalid_request", &[&subject]);
    // And stays refused; a fresh token of the dropped key too.
    for token in [subject.clone(), fresh_svid(spire)] {
        let r = sts.exchange_for(&token, "github.issues.create").await;
        r.assert_error(400, "invalid_request", &[&token]);
    }
    // Other trusts are untouched.
    let r = sts
        .exchange_for(&issuers.k8s_token("triage"), "docs.read")
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_jwks_is_an_answer_not_an_outage() {
    let (sts, issuers) = sts_refreshing_every_second().await;
    let spire = &issuers.spire;
    let r = sts
        .exchange_for(&fresh_svid(spire), "github.issues.create")
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let fetched = spire.fetches();

    // The issuer publishes no key at all. New tokens signed by the old key are refused
    // after the next fetch: not served from the last good keys for jwks_max_stale (1 h),
    // and not reported as an outage (503): the token is bad.
    spire.set_jwks(json!({ "keys": [] }));
    let (token, r) = refused_within_deadline(&sts, || fresh_svid(spire)).await;
    r.assert_error(400, "invalid_request", &[&token]);
    assert!(spire.fetches() > fetched, "the empty set was fetched");
    for _ in 0..3 {
        let token = fresh_svid(spire);
        let r = sts.exchange_for(&token, "github.issues.create").await;
        r.assert_error(400, "invalid_request", &[&token]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_material_under_the_same_kid_invalidates_cached_verifications() {
    let (sts, issuers) = sts_refreshing_every_second().await;
    let spire = &issuers.spire;
    let subject = fresh_svid(spire);
    let r = sts.exchange_for(&subject, "github.issues.create").await;
    assert_eq!(r.status, 200, "{r:?}");

    // The issuer swaps the key behind the same kid (here: the IdP's fixture key,
    // published as spire's kid; both ES256).
    let mut swapped = TestIssuer::start(
        &spire.iss,
        "idp-es256.pem",
        Algorithm::ES256,
        &spire.audience,
    )
    .await;
    swapped.kid = spire.kid.clone();
    spire.set_jwks(json!({ "keys": [renamed(swapped.jwks()["keys"][0].clone(), &spire.kid)] }));

    // The verification cached under the old material no longer holds.
    let (_, r) = refused_within_deadline(&sts, || subject.clone()).await;
    r.assert_error(400, "invalid_request", &[&subject]);
    // A token of the new material under that kid verifies.
    let r = sts
        .exchange_for(&fresh_svid(&swapped), "github.issues.create")
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}
