//! Answers the shim relays as a stream (issue 12, item 3) over real HTTP: server-sent
//! events passed on as they arrive, the credential redacted wherever the upstream's
//! chunks cut it (a proptest over real connections, and 1-byte chunks), a stream that
//! never ends cut at `stream_idle_timeout`, a stream larger than any buffer with a
//! slow reader (backpressure: the upstream cannot run ahead), an agent that goes away
//! ending the upstream call, a chunked request body; each stream's decision line and
//! completion record in the verified hash chain.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;

use crate::harness::*;
use crate::shim::*;

/// A streamed answer with `chunks` sent one by one, `pause` apart.
fn sse(chunks: Vec<Vec<u8>>, pause: Duration) -> Response {
    let stream = futures_util::stream::iter(chunks).then(move |chunk| async move {
        tokio::time::sleep(pause).await;
        Ok::<_, Infallible>(Bytes::from(chunk))
    });
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// The credential part as the upstream received it, from its headers.
fn received(headers: &HeaderMap) -> String {
    headers["authorization"].to_str().unwrap().to_string()
}

/// The forms of the canary that must never reach the agent.
fn canary_forms() -> Vec<String> {
    vec![
        CANARY_PART.to_string(),
        STANDARD.encode(CANARY_CREDENTIAL),
        URL_SAFE_NO_PAD.encode(CANARY_PART),
        CANARY_PART[..20].to_string(),
    ]
}

fn assert_clean(body: &[u8], what: &str) {
    let text = String::from_utf8_lossy(body);
    for form in canary_forms() {
        assert!(
            !text.contains(&form),
            "{what}: a form of the credential got through"
        );
    }
}

/// The shim's audit lines for stream `id`: (decision line, completion record), once
/// the completion record is there (10 s at most).
async fn stream_lines(shim: &TestShim, reason_line: impl Fn(&Value) -> bool) -> (Value, Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = shim.audit();
        if let Some(decision) = lines.iter().rev().find(|l| reason_line(l)) {
            let id = decision["stream"]
                .as_str()
                .expect("a stream id")
                .to_string();
            if let Some(end) = lines
                .iter()
                .find(|l| l["event"] == "stream_end" && l["stream"] == id.as_str())
            {
                let verified = agent_sts::audit::verify(&shim.audit_path).unwrap();
                assert_eq!(verified.lines as usize, lines.len());
                return (decision.clone(), end.clone());
            }
        }
        assert!(Instant::now() < deadline, "no stream_end line: {lines:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn proxied(line: &Value) -> bool {
    line["reason"] == "proxied"
}

/// `POST` to the shim's issues route with `token`, the answer's head read (200): the
/// body is left to the test, chunk by chunk.
async fn open_stream(shim: &TestShim, token: &str) -> reqwest::Response {
    let response = client()
        .post(format!("{}{ISSUES}", shim.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_relayed_as_they_arrive_scrubbed_and_audited_before_and_after() {
    let (sts, issuers) = TestSts::standard().await;
    // The upstream sends the second event only once the agent has the first: a shim
    // that buffered the answer would never deliver either.
    let gate = Arc::new(tokio::sync::Notify::new());
    let opened = gate.clone();
    let (_, upstream) = start_upstream(move |headers| {
        let credential = received(&headers);
        let gate = opened.clone();
        let first = futures_util::stream::once(async {
            Ok::<_, Infallible>(Bytes::from_static(b"event: message\ndata: {\"n\":1}\n\n"))
        });
        let rest = futures_util::stream::once(async move {
            gate.notified().await;
            Ok(Bytes::from(format!(
                "event: message\ndata: {{\"echo\":\"{credential}\"}}\n\n"
            )))
        });
        (
            [("content-type", "text/event-stream")],
            Body::from_stream(first.chain(rest)),
        )
            .into_response()
    })
    .await;
    let shim = TestShim::start(&sts, GITHUB, &upstream, "").await;
    let token = access_token(&sts, &issuers, "github.issues.create").await;

    let mut response = client()
        .post(format!("{}{ISSUES}", shim.url))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = Vec::new();
    let first = tokio::time::timeout(Duration::from_secs(5), response.chunk())
        .await
        .expect("the first event arrives before the answer ends")
        .unwrap()
        .unwrap();
    body.extend_from_slice(&first);
    // The decision line is written before the first byte leaves.
    let lines = shim.audit();
    let decision = lines.iter().find(|l| proxied(l)).expect("decision line");
    assert!(decision["stream"].is_string(), "{decision}");
    assert!(lines.iter().all(|l| l["event"] != "stream_end"));
    gate.notify_one();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(5), response.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(body.clone()).unwrap();
    assert!(
        text.starts_with("event: message\ndata: {\"n\":1}\n\n"),
        "{text}"
    );
    assert!(text.contains("{\"echo\":\"[redacted]\"}"), "{text}");
    assert_clean(&body, "sse");

    let (decision, end) = stream_lines(&shim, proxied).await;
    assert_eq!(decision["decision"], "allow");
    assert_eq!(decision["upstream_status"], 200);
    assert_eq!(end["ended"], "complete");
    assert_eq!(end["bytes_relayed"], body.len() as u64);
    assert_eq!(end["bytes_scrubbed"], CANARY_CREDENTIAL.len() as u64);
    assert_eq!(end["action"], "github.issues.create");
    assert_eq!(end["jti"], decision["jti"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_sent_one_byte_per_chunk_is_redacted_in_every_encoding() {
    let (sts, issuers) = TestSts::standard().await;
    let (_, upstream) = start_upstream(|headers| {
        let credential = received(&headers);
        let part = credential.split_once(' ').unwrap().1.to_string();
        let body = format!(
            "raw={credential}&b64={}&pct={}&json={}&html={}",
            STANDARD.encode(&credential),
            part.bytes()
                .map(|b| format!("%{b:02X}"))
                .collect::<String>(),
            part.chars()
                .map(|c| format!("\\u{:04x}", u32::from(c)))
                .collect::<String>(),
            part.chars()
                .map(|c| format!("&#x{:x};", u32::from(c)))
                .collect::<String>(),
        );
        let chunks = body.bytes().map(|b| vec![b]).collect();
        sse(chunks, Duration::from_micros(200))
    })
    .await;
    let shim = TestShim::start(&sts, GITHUB, &upstream, "").await;
    let token = access_token(&sts, &issuers, "github.issues.create").await;
    let r = call(&shim.url, "POST", ISSUES, Some(&token), "{}").await;
    assert_eq!(r.status, 200);
    assert_clean(r.text.as_bytes(), "1-byte chunks");
    assert_eq!(r.text.matches("[redacted]").count(), 5, "{}", r.text);
    let (_, end) = stream_lines(&shim, proxied).await;
    assert_eq!(end["ended"], "complete");
}

/// One encoding of `credential` (the whole header value or its part after `Bearer`).
fn encode(credential: &str, how: u8) -> String {
    let part = credential.split_once(' ').unwrap().1;
    match how % 6 {
        0 => credential.to_string(),
        1 => STANDARD.encode(credential),
        2 => URL_SAFE_NO_PAD.encode(part),
        3 => part.bytes().map(|b| format!("%{b:02x}")).collect(),
        4 => part
            .chars()
            .map(|c| format!("\\u{:04X}", u32::from(c)))
            .collect(),
        _ => part
            .chars()
            .map(|c| format!("&#{};", u32::from(c)))
            .collect(),
    }
}

/// The chunk-boundary property over real HTTP: an upstream sends a body holding the
/// credential in one of the scrubber's encodings, cut into pieces at random points
/// (each its own chunk, flushed); what the agent gets holds no form of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_split_of_a_streamed_credential_is_redacted_over_http() {
    use proptest::prelude::*;
    let (sts, issuers) = TestSts::standard().await;
    type Plan = (String, String, u8, Vec<usize>);
    let plan: Arc<Mutex<Plan>> = Arc::default();
    let shared = plan.clone();
    let (_, upstream) = start_upstream(move |headers| {
        let credential = received(&headers);
        let (before, after, how, cuts) = shared.lock().unwrap().clone();
        let body = format!("{before}{}{after}", encode(&credential, how)).into_bytes();
        let mut at: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        at.push(0);
        at.push(body.len());
        at.sort_unstable();
        let chunks = at.windows(2).map(|w| body[w[0]..w[1]].to_vec()).collect();
        sse(chunks, Duration::from_millis(1))
    })
    .await;
    let shim = TestShim::start(&sts, GITHUB, &upstream, "").await;
    let token = access_token(&sts, &issuers, "github.issues.create").await;
    let handle = tokio::runtime::Handle::current();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(40));
    let strategy = (
        "[ -~]{0,30}",
        "[ -~]{0,30}",
        any::<u8>(),
        proptest::collection::vec(any::<usize>(), 0..8),
    );
    let result = tokio::task::block_in_place(|| {
        runner.run(&strategy, |case| {
            *plan.lock().unwrap() = case.clone();
            let r = handle.block_on(call(&shim.url, "POST", ISSUES, Some(&token), "{}"));
            prop_assert_eq!(r.status, 200);
            for form in canary_forms() {
                prop_assert!(
                    !r.text.contains(&form),
                    "encoding {}: {}",
                    case.2 % 6,
                    r.text
                );
            }
            prop_assert!(r.text.contains("[redacted]"));
            Ok(())
        })
    });
    result.unwrap();
    let verified = agent_sts::audit::verify(&shim.audit_path).unwrap();
    assert!(verified.lines >= 80, "a decision and an end line per call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_never_ends_is_cut_at_the_idle_timeout_and_audited() {
    let (sts, issuers) = TestSts::standard().await;
    let (_, upstream) = start_upstream(|_| {
        let first = futures_util::stream::once(async {
            Ok::<_, Infallible>(Bytes::from_static(b"data: hello\n\n"))
        });
        let never = futures_util::stream::pending();
        (
            [("content-type", "text/event-stream")],
            Body::from_stream(first.chain(never)),
        )
            .into_response()
    })
    .await;
    let shim = TestShim::start(&sts, GITHUB, &upstream, "stream_idle_timeout = \"700ms\"").await;
    let token = access_token(&sts, &issuers, "github.issues.create").await;
    let started = Instant::now();
    let mut response = open_stream(&shim, &token).await;
    let first = response.chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], b"data: hello\n\n");
    // The agent is told: the answer ends without its last chunk, an error to the client.
    let rest = tokio::time::timeout(Duration::from_secs(10), response.chunk())
        .await
        .expect("the shim ends the stream");
    assert!(
        rest.is_err(),
        "a truncated answer, not a clean end: {rest:?}"
    );
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(700), "{waited:?}");
    let (_, end) = stream_lines(&shim, proxied).await;
    assert_eq!(end["ended"], "idle_timeout");
    assert_eq!(end["bytes_relayed"], first.len() as u64);
}

/// A 64 MiB answer of unknown length, the credential at its start, across a chunk
/// boundary in the middle and at its end, through a shim whose `max_response_bytes`
/// is 1 KiB: relayed whole and scrubbed. While the agent does not read, the upstream
/// cannot run ahead by more than the sockets' buffers (backpressure, no unbounded
/// buffering in the shim).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_larger_than_any_buffer_is_relayed_to_a_slow_reader_with_backpressure() {
    const CHUNK: usize = 256 * 1024;
    const CHUNKS: usize = 256;
    let (sts, issuers) = TestSts::standard().await;
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let (_, upstream) = start_upstream(move |headers| {
        let credential = received(&headers);
        let counter = counter.clone();
        let stream = futures_util::stream::iter(0..CHUNKS).map(move |i| {
            let mut chunk = vec![b'.'; CHUNK];
            if i == 0 {
                chunk[..credential.len()].copy_from_slice(credential.as_bytes());
            }
            if i == CHUNKS / 2 - 1 {
                chunk[CHUNK - 10..].copy_from_slice(&credential.as_bytes()[..10]);
            }
            if i == CHUNKS / 2 {
                chunk[..credential.len() - 10].copy_from_slice(&credential.as_bytes()[10..]);
            }
            if i == CHUNKS - 1 {
                chunk[CHUNK - credential.len()..].copy_from_slice(credential.as_bytes());
            }
            counter.fetch_add(CHUNK as u64, Ordering::SeqCst);
            Ok::<_, Infallible>(Bytes::from(chunk))
        });
        Body::from_stream(stream).into_response()
    })
    .await;
    let shim = TestShim::start(&sts, GITHUB, &upstream, "max_response_bytes = 1024").await;
    let token = access_token(&sts, &issuers, "github.issues.create").await;
    let mut response = open_stream(&shim, &token).await;
    let mut received_bytes = 0usize;
    let mut redactions = 0;
    let mut tail: Vec<u8> = Vec::new();
    let first = response.chunk().await.unwrap().unwrap();
    received_bytes += first.len();
    tail.extend_from_slice(&first);
    // The agent stops reading: the upstream stalls once the buffers on the way fill.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ahead = sent.load(Ordering::SeqCst);
    assert!(
        ahead < (CHUNK * CHUNKS / 2) as u64,
        "the upstream ran {ahead} bytes ahead of a reader that took {received_bytes}"
    );
    while let Some(chunk) = response.chunk().await.unwrap() {
        received_bytes += chunk.len();
        tail.extend_from_slice(&chunk);
        // Search a window that spans the chunk boundary, then keep its end.
        let text = String::from_utf8_lossy(&tail);
        assert!(!text.contains(CANARY_PART), "the credential got through");
        redactions += text.matches("[redacted]").count();
        let keep = tail.len().min(64);
        let cut = tail.len() - keep;
        // A `[redacted]` inside the kept tail is counted again next time: drop it.
        let kept = tail.split_off(cut);
        let kept_text = String::from_utf8_lossy(&kept);
        redactions -= kept_text.matches("[redacted]").count();
        tail = kept;
    }
    redactions += String::from_utf8_lossy(&tail).matches("[redacted]").count();
    assert_eq!(redactions, 3);
    let scrubbed = 3 * CANARY_CREDENTIAL.len();
    assert_eq!(
        received_bytes,
        CHUNK * CHUNKS - scrubbed + 3 * "[redacted]".len()
    );
    let (_, end) = stream_lines(&shim, proxied).await;
    assert_eq!(end["ended"], "complete");
    assert_eq!(end["bytes_relayed"], received_bytes as u64);
    assert_eq!(end["bytes_scrubbed"], scrubbed as u64);
}

/// Drops set `flag`: the upstream's body stream was dropped (its connection closed).
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_goes_away_ends_the_upstream_call() {
    let (sts, issuers) = TestSts::standard().await;
    let dropped = Arc::new(AtomicBool::new(false));
    let events = Arc::new(AtomicUsize::new(0));
    let (flag, count) = (dropped.clone(), events.clone());
    let (_, upstream) = start_upstream(move |_| {
        let guard = Arc::new(DropFlag(flag.clone()));
        let count = count.clone();
        let stream = futures_util::stream::unfold(0u64, move |n| {
            let guard = guard.clone();
            let count = count.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                count.fetch_add(1, Ordering::SeqCst);
                let _alive = &guard;
                Some((
                    Ok::<_, Infallible>(Bytes::from(format!("data: {n}\n\n"))),
                    n + 1,
                ))
            }
        });
        (
            [("content-type", "text/event-stream")],
            Body::from_stream(stream),
        )
            .into_response()
    })
    .await;
    let shim = TestShim::start(&sts, GITHUB, &upstream, "").await;
    let token = access_token(&sts, &issuers, "github.issues.create").await;
    let mut response = open_stream(&shim, &token).await;
    response.chunk().await.unwrap().unwrap();
    drop(response);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !dropped.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the upstream still streams after the agent left ({} events)",
            events.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, end) = stream_lines(&shim, proxied).await;
    assert_eq!(end["ended"], "client_gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_request_body_is_forwarded_whole_with_a_content_length() {
    let (_sts, _issuers, echo, shim, token) = github_world("max_request_bytes = 1024").await;
    let body = "{\"title\":\"sent in chunks\"}";
    let (a, b) = body.split_at(10);
    let request = format!(
        "POST {ISSUES} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         {:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    let (status, answer) = raw(&shim.url, request.as_bytes()).await;
    assert_eq!(status, 200, "{answer}");
    let seen = echo.last().unwrap();
    assert_eq!(seen["body"], body);
    let headers = &seen["headers"];
    assert_eq!(
        headers["content-length"][0],
        body.len().to_string(),
        "{seen}"
    );
    assert!(headers.get("transfer-encoding").is_none(), "{seen}");
    assert!(!answer.contains(CANARY_PART));

    // A real client's chunked upload (a body of unknown length) works too.
    let stream = futures_util::stream::iter(vec![
        Ok::<_, Infallible>(Bytes::from_static(b"{\"title\":")),
        Ok(Bytes::from_static(b"\"streamed\"}")),
    ]);
    let r = client()
        .post(format!("{}{ISSUES}", shim.url))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(echo.last().unwrap()["body"], "{\"title\":\"streamed\"}");
}

/// A form of the credential the scrubber cannot see whole (a character reference with
/// more leading zeros than it matches), arriving mid-stream: the stream is aborted
/// there, nothing of the reference is released, and its end is `upstream_error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unscrubbable_form_mid_stream_ends_the_stream_without_releasing_it() {
    let (sts, issuers) = TestSts::standard().await;
    let (_, upstream) = start_upstream(|headers| {
        let credential = received(&headers);
        let padded: String = credential
            .chars()
            .map(|c| format!("&#{}{};", "0".repeat(40), u32::from(c)))
            .collect();
        sse(
            vec![
                b"data: first\n\n".to_vec(),
                format!("data: {padded}\n\n").into_bytes(),
            ],
            Duration::from_millis(100),
        )
    })
    .await;
    let shim = TestShim::start(&sts, GITHUB, &upstream, "").await;
    let token = access_token(&sts, &issuers, "github.issues.create").await;
    let mut response = open_stream(&shim, &token).await;
    let mut body = Vec::new();
    let ended = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    assert!(ended.is_err(), "the answer is aborted");
    assert_eq!(
        body,
        b"data: first\n\n",
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (_, end) = stream_lines(&shim, proxied).await;
    assert_eq!(end["ended"], "upstream_error");
}
