//! Faults (README, "Security properties"): the issuer's JWKS down or slow, the audit log
//! unwritable, the catalogue changed under a running STS. In every case the STS fails
//! closed: no token, a standard error, and `Retry-After` when waiting helps.

use std::time::{Duration, Instant};

use axum::routing::get;
use serde_json::{Value, json};

use crate::harness::*;

/// A fresh SVID for `path` (a new `jti`, so it is never served from the cache of
/// verified tokens).
fn fresh_svid(issuers: &Issuers, path: &str, n: usize) -> String {
    let mut claims = issuers
        .spire
        .claims(&format!("spiffe://example.org/{path}"));
    claims["jti"] = json!(format!("fault-{n}-{}", now()));
    issuers.spire.token(&claims)
}

#[tokio::test]
async fn jwks_down_last_good_keys_serve_until_stale_then_refusal() {
    let issuers = Issuers::start().await;
    let sts = TestSts::start_with(
        &issuers.specs(),
        SCOPES,
        "[limits]\njwks_refetch_cooldown = \"1s\"\n",
        ConfigTweaks {
            trust_lines: "jwks_refresh = \"1s\"\njwks_max_stale = \"3s\"",
            ..ConfigTweaks::default()
        },
    )
    .await;
    let spire = &issuers.spire;
    let mut n = 0;
    let mut next = || {
        n += 1;
        fresh_svid(&issuers, "agent/triage", n)
    };
    let r = sts.exchange_for(&next(), "github.issues.create").await;
    assert_eq!(r.status, 200, "{r:?}");
    let loaded = Instant::now();
    assert_eq!(spire.fetches(), 1);

    // The issuer goes down. New tokens still verify with the last good keys...
    spire.set_mode(JwksMode::Fail);
    let r = sts.exchange_for(&next(), "github.issues.create").await;
    assert_eq!(r.status, 200, "last good keys serve: {r:?}");
    // ... also once the keys are due for a refresh that fails (jwks_refresh = 1s).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = sts.exchange_for(&next(), "github.issues.create").await;
    assert_eq!(r.status, 200, "a failed refresh keeps the keys: {r:?}");
    assert!(spire.fetches() >= 2, "the refresh was attempted");

    // Once they are stale (jwks_max_stale = 3s), refusal.
    let mut refused = None;
    while loaded.elapsed() < Duration::from_secs(15) {
        let token = next();
        let r = sts.exchange_for(&token, "github.issues.create").await;
        if r.status != 200 {
            refused = Some((token, r));
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // An outage of the issuer is ours to report: 503 with Retry-After, not a bad token.
    let (token, r) = refused.expect("stale keys stop serving");
    r.assert_error(503, "temporarily_unavailable", &[&token]);
    assert!(r.headers.contains_key("retry-after"), "{r:?}");
    // And it stays refused while the issuer is down: no fallback key.
    for _ in 0..3 {
        let token = next();
        let r = sts.exchange_for(&token, "github.issues.create").await;
        r.assert_error(503, "temporarily_unavailable", &[&token]);
    }

    // The issuer comes back: after the cooldown the keys are fetched again.
    spire.set_mode(JwksMode::Serve);
    let back = Instant::now();
    let mut recovered = false;
    while back.elapsed() < Duration::from_secs(10) {
        let r = sts.exchange_for(&next(), "github.issues.create").await;
        if r.status == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(recovered, "keys are fetched again once the issuer is back");
}

#[tokio::test]
async fn jwks_garbage_is_not_a_key_set() {
    let issuers = Issuers::start().await;
    let sts = TestSts::start(&issuers.specs(), SCOPES, "").await;
    // Never fetched successfully: garbage from the start gives nothing to serve.
    // The fault is the issuer's, not the client's: 503, retry later.
    issuers.spire.set_mode(JwksMode::Garbage);
    let token = issuers.svid("agent/triage");
    let r = sts.exchange_for(&token, "github.issues.create").await;
    r.assert_error(503, "temporarily_unavailable", &[&token]);
    issuers.spire.set_mode(JwksMode::Fail);
    let token = fresh_svid(&issuers, "agent/triage", 1);
    let r = sts.exchange_for(&token, "github.issues.create").await;
    r.assert_error(503, "temporarily_unavailable", &[&token]);
    // Other trusts are unaffected.
    let r = sts
        .exchange_for(&issuers.k8s_token("triage"), "docs.read")
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test]
async fn jwks_slow_ends_within_the_request_deadline_with_503_and_retry_after() {
    // An issuer whose JWKS answers only after 10 s; the STS's request deadline is 1 s
    // (shorter than its 3 s JWKS fetch timeout).
    let slow = axum::Router::new().route(
        "/jwks.json",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            axum::Json(json!({"keys": []}))
        }),
    );
    let base = spawn_router(slow).await;
    let mut issuers = Issuers::start().await;
    issuers.spire.jwks_uri = format!("{base}/jwks.json");
    let sts = TestSts::start(
        &issuers.specs(),
        SCOPES,
        "[limits]\nrequest_timeout = \"1s\"\n",
    )
    .await;
    let token = issuers.svid("agent/triage");
    let r = tokio::time::timeout(
        Duration::from_secs(8),
        sts.exchange_for(&token, "github.issues.create"),
    )
    .await
    .expect("the STS answers within its deadline, not the issuer's");
    assert!(r.json().get("access_token").is_none(), "{r:?}");
    r.assert_error(503, "temporarily_unavailable", &[&token]);
    assert!(r.headers.contains_key("retry-after"), "{r:?}");
}

#[tokio::test]
async fn audit_log_unwritable_is_503_with_retry_after_and_no_token() {
    if !std::path::Path::new("/dev/full").exists() {
        eprintln!("skipped: /dev/full does not exist on this system");
        return;
    }
    let issuers = Issuers::start().await;
    let sts = TestSts::start_with(
        &issuers.specs(),
        SCOPES,
        "",
        ConfigTweaks {
            audit_path: Some("/dev/full"),
            ..ConfigTweaks::default()
        },
    )
    .await;
    for (token, scope) in [
        (issuers.k8s_token("triage"), "github.issues.create"),
        (issuers.svid("agent/triage"), "github.issues.create"),
        (issuers.k8s_token("triage"), "docs.read"),
    ] {
        let r = sts.exchange_for(&token, scope).await;
        assert!(!r.text.contains("access_token"), "a token left: {r:?}");
        r.assert_error(503, "temporarily_unavailable", &[&token]);
        let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(retry >= 1, "{r:?}");
    }
}

#[tokio::test]
async fn action_removed_from_the_catalogue_is_refused_on_the_next_exchange() {
    let (sts, issuers) = TestSts::standard().await;
    let subject = issuers.k8s_token("triage");
    let r = sts.exchange_for(&subject, "docs.read").await;
    assert_eq!(r.status, 200, "{r:?}");

    // Remove docs.read; write the new file beside the catalogue, then rename it in, so
    // the reload never sees half a file.
    let docs = r#"
[[action]]
name = "docs.read"
audience = "https://docs.internal"
ttl = "30m"
agents = ["k8s-prod:system:serviceaccount:agents:*", "ci:repo:example/agent-sts:*"]
"#;
    let without = SCOPES.replace(docs, "");
    assert_ne!(without, SCOPES, "the fixture still holds docs.read");
    let staged = sts.dir.path().join("test.toml.new");
    std::fs::write(&staged, &without).unwrap();
    std::fs::rename(&staged, sts.dir.path().join("scopes/test.toml")).unwrap();

    // The catalogue reloads every second: within a bounded wait the action is refused.
    let changed = Instant::now();
    let mut refused = None;
    while changed.elapsed() < Duration::from_secs(10) {
        let r = sts.exchange_for(&subject, "docs.read").await;
        if r.status != 200 {
            refused = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = refused.expect("the removed action is refused after the reload");
    r.assert_error(400, "invalid_scope", &[&subject]);
    // No stale allow afterwards, and the rest of the catalogue still stands.
    for _ in 0..5 {
        let r = sts.exchange_for(&subject, "docs.read").await;
        r.assert_error(400, "invalid_scope", &[&subject]);
    }
    let r = sts.exchange_for(&subject, "github.issues.create").await;
    assert_eq!(r.status, 200, "{r:?}");
    let body: Value = r.json();
    assert_eq!(body["scope"], "github.issues.create");
}

/// Slowloris and connection floods: half-sent requests are closed after
/// `header_read_timeout`, a peer over `max_connections_per_peer` has its new
/// connections closed at once, and once the half-open ones are gone the STS answers
/// again. Every wait is bounded.
#[tokio::test]
async fn half_sent_requests_are_closed_and_one_peer_cannot_hold_every_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let issuers = Issuers::start().await;
    let sts = TestSts::start(
        &issuers.specs(),
        SCOPES,
        "[limits]\nheader_read_timeout = \"1s\"\nmax_connections_per_peer = 8\n",
    )
    .await;
    let addr = sts.url.trim_start_matches("http://").to_string();
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        c.write_all(b"POST /token HTTP/1.1\r\nHost: sts\r\nContent-Type: appl")
            .await
            .unwrap();
        held.push(c);
    }
    // The ninth connection from the same peer is closed without an answer.
    let mut ninth = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let _ = ninth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: sts\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), ninth.read(&mut buf))
        .await
        .expect("the ninth connection is closed, not left hanging")
        .unwrap_or(0);
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf[..n]));

    // The half-sent requests are closed by the server after the header timeout.
    for mut c in held {
        let read = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .expect("a half-sent request is closed within the header timeout");
        let answer = String::from_utf8_lossy(&buf[..read.unwrap_or(0)]).into_owned();
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{answer}"
        );
    }
    // And the STS answers again.
    let mut answered = false;
    for _ in 0..50 {
        if sts.get("/healthz").await.status == 200 {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered);
}

/// A flood of anonymous refusals (no token, a form with garbage) grows the audit log
/// by one line per reason per summary window, not per request, while every refusal is
/// still counted; a legitimate agent gets its token during and after the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_flood_does_not_grow_the_audit_log() {
    let (sts, issuers) = TestSts::standard().await;
    let before = std::fs::read_to_string(sts.audit_path()).unwrap_or_default();
    let flood = 2000;
    let client = reqwest::Client::new();
    let url = format!("{}/token", sts.url);
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..flood / 16 {
                let request = if (i + worker) % 2 == 0 {
                    client.get(&url)
                } else {
                    client
                        .post(&url)
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(format!("grant_type={GRANT}&subject_token=junk{i}&subject_token_type={JWT_TYPE}&scope=docs.read"))
                };
                let status = request.send().await.unwrap().status().as_u16();
                assert!(status == 400 || status == 405, "{status}");
            }
        }));
    }
    // A legitimate agent during the flood.
    let r = sts
        .exchange_for(&issuers.k8s_token("triage"), "docs.read")
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    for t in tasks {
        t.await.unwrap();
    }
    let after = std::fs::read_to_string(sts.audit_path()).unwrap();
    let grown = after.lines().count() - before.lines().count();
    assert!(
        grown <= 8,
        "{grown} audit lines for {flood} anonymous refusals"
    );
    // Every refusal is counted in the metrics.
    let metrics = sts.get("/metrics").await.text;
    let denied: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("agent_sts_tokens_denied_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(denied >= f64::from(flood), "{denied} denials counted");
    // And after it.
    let r = sts
        .exchange_for(&issuers.k8s_token("triage"), "docs.read")
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}
