//! OpenTelemetry traces (README, "Traces"), through the real binaries: an OTLP/HTTP
//! receiver on 127.0.0.1:0 decodes every `POST /v1/traces` it gets with the
//! `opentelemetry-proto` messages. An exchange's span carries its decision and a JWKS
//! fetch below it; an agent's `traceparent` is its parent; the shim's span and its
//! upstream hop carry the trace to the upstream; a collector that is down or never
//! answers delays nothing, and the spans a full queue drops are counted. The leak
//! hunt searches everything the receiver got for the canaries.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use crate::harness::*;
use crate::process::*;
use crate::shim::{CANARY_PART, GITHUB, ISSUES, TestShim, access_token, echoed, start_echo};

/// The agent's trace: its trace id and the span the request is made from.
const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_ID: &str = "b7ad6b7169203331";

fn traceparent() -> String {
    format!("00-{TRACE_ID}-{PARENT_ID}-01")
}

/// What an OTLP/HTTP collector received: every request body, raw and decoded.
#[derive(Default)]
struct Received {
    bodies: Mutex<Vec<Bytes>>,
}

impl Received {
    fn requests(&self) -> Vec<ExportTraceServiceRequest> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .map(|b| ExportTraceServiceRequest::decode(b.clone()).unwrap())
            .collect()
    }

    /// Every span received, with the resource's `service.name`.
    fn spans(&self) -> Vec<(String, Span)> {
        let mut out = Vec::new();
        for request in self.requests() {
            for rs in request.resource_spans {
                let service = rs
                    .resource
                    .as_ref()
                    .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                    .and_then(|kv| text(kv.value.as_ref()?.value.as_ref()?))
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    for span in ss.spans {
                        out.push((service.clone(), span));
                    }
                }
            }
        }
        out
    }

    /// The spans, once `done` says they are all there (20 s at most).
    async fn wait_for(&self, done: impl Fn(&[(String, Span)]) -> bool) -> Vec<(String, Span)> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self.spans();
            if done(&spans) || Instant::now() > deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Everything received, as text: the decoded messages and the raw bodies.
    fn everything(&self) -> String {
        let mut all = format!("{:?}", self.requests());
        for body in self.bodies.lock().unwrap().iter() {
            all.push_str(&String::from_utf8_lossy(body));
        }
        all
    }
}

fn text(value: &Any) -> Option<String> {
    match value {
        Any::StringValue(s) => Some(s.clone()),
        Any::IntValue(i) => Some(i.to_string()),
        Any::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The attribute `key` of `span`, as text.
fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| text(kv.value.as_ref()?.value.as_ref()?))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/HTTP receiver on 127.0.0.1:0; returns its base URL.
async fn collector() -> (Arc<Received>, String) {
    async fn traces(
        State(received): State<Arc<Received>>,
        body: Bytes,
    ) -> impl axum::response::IntoResponse {
        received.bodies.lock().unwrap().push(body);
        // An empty ExportTraceServiceResponse: full success.
        (
            [("content-type", "application/x-protobuf")],
            Vec::<u8>::new(),
        )
    }
    let received = Arc::new(Received::default());
    let router = axum::Router::new()
        .route("/v1/traces", axum::routing::post(traces))
        .with_state(received.clone());
    (received, spawn_router(router).await)
}

/// A collector that accepts connections and never answers.
async fn silent_collector() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    format!("http://{addr}")
}

/// The `[telemetry]` section for `endpoint`, exporting every 100 ms.
fn telemetry_section(endpoint: &str, extra: &str) -> String {
    format!("\n[telemetry]\notlp_endpoint = \"{endpoint}\"\nexport_interval = \"100ms\"\n{extra}\n")
}

/// `agent-sts serve` (the real binary: the exporter is process-wide) with a key and
/// `[telemetry]` appended to the standard configuration.
fn serve_traced(issuers: &Issuers, telemetry: &str) -> (tempfile::TempDir, ServeProcess) {
    let (dir, config) = sts_dir(issuers);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}{telemetry}")).unwrap();
    let rotate = run(
        &["keys", "rotate", "--config", config.to_str().unwrap()],
        dir.path(),
    );
    assert!(rotate.status.success(), "{}", text_of(&rotate.stderr));
    let sts = ServeProcess::start(&config, dir.path(), "info");
    (dir, sts)
}

fn text_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `POST /token` with `body` and the extra `headers`.
async fn post_token(url: &str, body: String, headers: &[(&str, &str)]) -> Reply {
    let mut request = reqwest::Client::new()
        .post(format!("{url}/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    reply(request.send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_request_span_carries_its_decision_and_parent_and_no_secret() {
    let issuers = Issuers::start().await;
    let (received, endpoint) = collector().await;
    let (dir, sts) = serve_traced(&issuers, &telemetry_section(&endpoint, ""));
    let subject = issuers.k8s_token("triage");

    // Allowed, in the agent's trace (the first request: the trust's JWKS is fetched).
    let parent = traceparent();
    let allowed = post_token(
        &sts.url,
        exchange_form(&subject, "docs.read"),
        &[("traceparent", &parent), ("tracestate", "agent=1")],
    )
    .await;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    // A malformed traceparent is ignored: a new root, and the request is served.
    let malformed = post_token(
        &sts.url,
        exchange_form(&subject, "github.issues.create"),
        &[("traceparent", "00-zz-not-a-trace-01")],
    )
    .await;
    assert_eq!(malformed.status, 200, "{malformed:?}");
    // Denied, with its reason.
    let denied = post_token(&sts.url, exchange_form(&subject, "no.such.action"), &[]).await;
    assert_eq!(denied.status, 400, "{denied:?}");
    // The canary where it must never go: as the subject token, the scope, the query.
    let tampered = flip_last(&subject);
    post_token(&sts.url, exchange_form(&tampered, "docs.read"), &[]).await;
    post_token(&sts.url, exchange_form(&subject, &subject), &[]).await;
    let query = reqwest::Client::new()
        .post(format!("{}/token?subject_token={subject}", sts.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(exchange_form(&subject, "docs.read"))
        .send()
        .await
        .unwrap();
    assert_eq!(query.status(), 400);
    let in_path = reqwest::Client::new()
        .post(format!("{}/token/{subject}", sts.url))
        .send()
        .await
        .unwrap();
    assert_eq!(in_path.status(), 404);

    let spans = received
        .wait_for(|spans| {
            let decided = |d: &str| {
                spans
                    .iter()
                    .filter(|(_, s)| attr(s, "decision").as_deref() == Some(d))
                    .count()
            };
            let other = spans
                .iter()
                .any(|(_, s)| attr(s, "path").as_deref() == Some("other"));
            decided("allow") >= 2 && decided("deny") >= 4 && other
        })
        .await;
    let (_, stderr) = sts.stop();
    let token_spans: Vec<&Span> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.name == "http" && attr(s, "path").as_deref() == Some("/token"))
        .collect();
    let find = |action: &str| {
        token_spans
            .iter()
            .find(|s| attr(s, "action").as_deref() == Some(action))
            .copied()
            .unwrap_or_else(|| panic!("no /token span for {action}: {spans:#?}\n{stderr}"))
    };

    let span = find("docs.read");
    assert!(spans.iter().all(|(service, _)| service == "agent-sts"));
    assert_eq!(attr(span, "decision").as_deref(), Some("allow"));
    assert_eq!(attr(span, "reason").as_deref(), Some("issued"));
    assert_eq!(attr(span, "trust").as_deref(), Some("k8s-prod"));
    assert_eq!(attr(span, "method").as_deref(), Some("POST"));
    let ring = std::fs::read_to_string(dir.path().join("keys/signing-keys.json")).unwrap();
    let ring: serde_json::Value = serde_json::from_str(&ring).unwrap();
    let kid = ring["keys"][0]["kid"].as_str().unwrap();
    assert_eq!(attr(span, "kid").as_deref(), Some(kid));
    // The agent's trace: same trace id, its span the parent; a server span.
    assert_eq!(hex(&span.trace_id), TRACE_ID);
    assert_eq!(hex(&span.parent_span_id), PARENT_ID);
    assert_eq!(span.kind, 2, "SPAN_KIND_SERVER");
    // The JWKS fetch it waited for is its child.
    let fetch = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == "jwks_fetch" && s.parent_span_id == span.span_id)
        .unwrap_or_else(|| panic!("no jwks_fetch below the first exchange: {spans:#?}"));
    assert_eq!(attr(fetch, "trust").as_deref(), Some("k8s-prod"));
    assert_eq!(attr(fetch, "outcome").as_deref(), Some("ok"));
    assert_eq!(fetch.trace_id, span.trace_id);

    // The malformed traceparent: a root of its own trace.
    let root = find("github.issues.create");
    assert_eq!(attr(root, "decision").as_deref(), Some("allow"));
    assert!(root.parent_span_id.is_empty(), "{root:?}");
    assert_ne!(hex(&root.trace_id), TRACE_ID);

    // Denied: the reason code, and no action that is not in the catalogue.
    let refused = token_spans
        .iter()
        .find(|s| attr(s, "reason").as_deref() == Some("action_not_permitted"))
        .unwrap_or_else(|| panic!("no denied span: {token_spans:#?}"));
    assert_eq!(attr(refused, "decision").as_deref(), Some("deny"));
    assert_eq!(attr(refused, "action"), None);
    assert_eq!(attr(refused, "kid"), None);
    assert!(
        token_spans
            .iter()
            .any(|s| attr(s, "reason").as_deref() == Some("parameters_in_url")),
        "{token_spans:#?}"
    );

    // A path that names no endpoint is exported as `other`.
    assert!(
        spans
            .iter()
            .any(|(_, s)| attr(s, "path").as_deref() == Some("other")),
        "{spans:#?}"
    );

    // Nothing secret, and never the subject, in anything exported.
    let everything = received.everything();
    let signature = subject.rsplit('.').next().unwrap();
    let access_sig = allowed.token().rsplit('.').next().unwrap().to_string();
    for secret in [
        subject.as_str(),
        signature,
        tampered.as_str(),
        access_sig.as_str(),
        CANARY_CREDENTIAL,
        "system:serviceaccount:agents:triage",
    ] {
        assert!(
            !everything.contains(secret),
            "an exported span holds a secret or the subject ({}…)",
            &secret[..8]
        );
    }
    let pem = ring["keys"][0]["private_key"].as_str().unwrap();
    for line in pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
    {
        assert!(
            !everything.contains(line),
            "an exported span holds key material"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shim_span_and_its_upstream_hop_carry_the_agents_trace_upstream() {
    let (sts, issuers) = TestSts::standard().await;
    let (echo, upstream) = start_echo().await;
    let (received, endpoint) = collector().await;
    let scopes = sts.dir.path().join("scopes");
    let config = TestShim::write_config(
        &sts,
        GITHUB,
        &upstream,
        &telemetry_section(&endpoint, ""),
        &scopes,
    );
    let shim = ServeProcess::start_shim(&config.config_path, config.dir.path(), "info");
    let token = access_token(&sts, &issuers, "github.issues.create").await;

    let parent = traceparent();
    let seen = echoed(
        &shim.url,
        &token,
        &[("traceparent", &parent), ("tracestate", "agent=1")],
        &echo,
    )
    .await;
    // The upstream got a traceparent of the agent's trace, but the shim's hop as parent.
    let upstream_parent = seen["headers"]["traceparent"][0]
        .as_str()
        .unwrap()
        .to_string();
    let parts: Vec<&str> = upstream_parent.split('-').collect();
    assert_eq!(parts.len(), 4, "{upstream_parent}");
    assert_eq!(parts[1], TRACE_ID);
    assert_ne!(
        parts[2], PARENT_ID,
        "the agent's traceparent was forwarded as is"
    );
    // A refusal is traced too.
    let refused = crate::shim::call(&shim.url, "POST", ISSUES, Some("not-a-jwt"), "{}").await;
    assert_eq!(refused.status, 401);

    let spans = received
        .wait_for(|spans| {
            spans.iter().any(|(_, s)| s.name == "upstream")
                && spans
                    .iter()
                    .filter(|(_, s)| s.name == "shim" && attr(s, "decision").is_some())
                    .count()
                    >= 2
        })
        .await;
    let (_, stderr) = shim.stop();
    let shim_span = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == "shim" && attr(s, "decision").as_deref() == Some("allow"))
        .unwrap_or_else(|| panic!("no shim span: {spans:#?}\n{stderr}"));
    assert!(spans.iter().all(|(service, _)| service == "agent-sts-shim"));
    assert_eq!(hex(&shim_span.trace_id), TRACE_ID);
    assert_eq!(hex(&shim_span.parent_span_id), PARENT_ID);
    assert_eq!(attr(shim_span, "reason").as_deref(), Some("proxied"));
    assert_eq!(
        attr(shim_span, "action").as_deref(),
        Some("github.issues.create")
    );
    assert_eq!(attr(shim_span, "trust").as_deref(), Some("k8s-prod"));
    assert_eq!(
        attr(shim_span, "route").as_deref(),
        Some("/repos/{owner}/{repo}/issues")
    );
    assert_eq!(attr(shim_span, "upstream_status").as_deref(), Some("200"));
    let hop = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == "upstream")
        .unwrap();
    assert_eq!(hop.parent_span_id, shim_span.span_id);
    assert_eq!(
        hex(&hop.span_id),
        parts[2],
        "the upstream's parent is the hop"
    );
    assert_eq!(hop.kind, 3, "SPAN_KIND_CLIENT");
    let denied = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == "shim" && attr(s, "decision").as_deref() == Some("deny"))
        .unwrap();
    assert_eq!(attr(denied, "reason").as_deref(), Some("malformed_token"));
    assert!(denied.parent_span_id.is_empty());

    let everything = received.everything();
    for secret in [
        token.as_str(),
        token.rsplit('.').next().unwrap(),
        CANARY_CREDENTIAL,
        CANARY_PART,
        "system:serviceaccount:agents:triage",
    ] {
        assert!(
            !everything.contains(secret),
            "an exported span holds a secret or the subject ({}…)",
            &secret[..8]
        );
    }
}

/// Without `[telemetry]` the shim forwards the agent's Trace Context headers as any
/// allowed header, exactly as before traces existed.
#[tokio::test]
async fn without_telemetry_the_shim_passes_the_agents_traceparent_unchanged() {
    let (sts, issuers) = TestSts::standard().await;
    let (echo, upstream) = start_echo().await;
    let shim = TestShim::start(&sts, GITHUB, &upstream, "").await;
    let token = access_token(&sts, &issuers, "github.issues.create").await;
    let parent = traceparent();
    let seen = echoed(
        &shim.url,
        &token,
        &[("traceparent", &parent), ("tracestate", "agent=1")],
        &echo,
    )
    .await;
    assert_eq!(seen["headers"]["traceparent"], serde_json::json!([parent]));
    assert_eq!(
        seen["headers"]["tracestate"],
        serde_json::json!(["agent=1"])
    );
}

/// The value of the counter `name` at `url`'s `/metrics`.
async fn counter(url: &str, name: &str) -> u64 {
    let metrics = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name}: {metrics}"))
        .trim()
        .parse()
        .unwrap()
}

/// A collector that never answers, with a queue of one span: every request is served,
/// and the spans that found the queue full are counted. One that is down: every request
/// is served, and its failed exports are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_or_down_collector_delays_nothing_and_drops_are_counted() {
    let issuers = Issuers::start().await;
    let subject = issuers.k8s_token("triage");
    let silent = silent_collector().await;
    let down = format!("http://{}", closing_server().await);
    for (endpoint, queue) in [(silent, 1), (down, 2048)] {
        let extra = format!("max_queue = {queue}\nexport_timeout = \"30s\"");
        let (_dir, sts) = serve_traced(&issuers, &telemetry_section(&endpoint, &extra));
        for _ in 0..10 {
            let r = post_token(&sts.url, exchange_form(&subject, "docs.read"), &[]).await;
            assert_eq!(r.status, 200, "{endpoint}: {r:?}");
        }
        if queue == 1 {
            // Eleven spans or more (ten requests, a JWKS fetch); at most two admitted:
            // one in the export that never ends, one waiting. The rest were dropped.
            let dropped = counter(&sts.url, "agent_sts_trace_spans_dropped_total").await;
            assert!(dropped >= 8, "{dropped} dropped");
        } else {
            // The collector that is down: its exports fail, and are counted.
            let deadline = Instant::now() + Duration::from_secs(20);
            while counter(&sts.url, "agent_sts_trace_export_failures_total").await == 0
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let failed = counter(&sts.url, "agent_sts_trace_export_failures_total").await;
            assert!(failed > 0, "no failed export counted");
            assert_eq!(
                counter(&sts.url, "agent_sts_trace_spans_dropped_total").await,
                0
            );
        }
        sts.stop();
    }
}

/// A bad `[telemetry]` value stops `serve` at start: exit 2, naming the key.
#[tokio::test]
async fn a_bad_telemetry_value_exits_2_naming_the_key() {
    let issuers = Issuers::start().await;
    let (dir, config) = sts_dir(&issuers);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!(
            "{text}\n[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\nsample_ratio = 2\n"
        ),
    )
    .unwrap();
    let out = run(&["serve", "--config", config.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", text_of(&out.stderr));
    assert!(
        text_of(&out.stderr).contains("telemetry.sample_ratio"),
        "{}",
        text_of(&out.stderr)
    );
}
