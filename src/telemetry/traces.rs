//! OpenTelemetry traces (README, "Traces"): off unless `[telemetry] otlp_endpoint` is
//! set; then the `tracing` spans of this crate and the verifier's are exported over
//! OTLP/HTTP with protobuf bodies (the OTLP specification's `POST /v1/traces`).
//!
//! Why it is shaped so:
//! - Only spans, and only this program's (targets `agent_sts` and
//!   `agent_sts_verifier`), reach the exporter: log events never become span events,
//!   so what a span carries is exactly the fields its `span!` names, each chosen to
//!   hold no token, key, credential or subject (README, "Security properties" 1). The
//!   log filter does not apply to them: `AGENT_STS_LOG=warn` keeps traces whole.
//! - A collector that is slow or down never delays a request: spans wait in a bounded
//!   queue (`max_queue`) that the SDK's batch processor drains on its own thread; a
//!   span that finds the queue full is dropped and counted in
//!   `agent_sts_trace_spans_dropped_total` ([`SPANS_DROPPED`]). The SDK counts its
//!   drops privately, so [`Bounded`] keeps the count itself and never lets the
//!   processor's channel fill. Failed exports are counted too
//!   (`agent_sts_trace_export_failures_total`): a collector that is down is seen.
//! - The export's HTTP request runs on the program's tokio runtime through the one
//!   reqwest already in the tree ([`Collector`]); the batch thread only waits for it.
//!   Every request is cut off at `export_timeout`, and the collector's answer is read
//!   to at most [`MAX_ANSWER_BYTES`].
//! - W3C Trace Context (<https://www.w3.org/TR/trace-context/>): an incoming
//!   `traceparent`/`tracestate` makes the request span a child of the caller's trace
//!   ([`adopt_parent`]); one that does not parse is ignored (a new root). The shim
//!   writes its own upstream hop's `traceparent` ([`inject`]).
//!
//! The counters are process-wide, as the pipeline is: `tracing` has one global
//! subscriber per process, so there is one export queue to count.

use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};
use prometheus_client::metrics::counter::Counter;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// `[telemetry]` as validated: where and how spans are exported.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The collector's OTLP/HTTP base URL; spans go to `<endpoint>/v1/traces`.
    pub endpoint: url::Url,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// The share of new traces kept (0.0 to 1.0); a caller's sampled flag is honoured.
    pub sample_ratio: f64,
    /// Spans waiting for export at most; more are dropped and counted.
    pub max_queue: usize,
    /// One export request's time limit.
    pub export_timeout: Duration,
    /// How long a span waits at most before its batch is sent.
    pub export_interval: Duration,
}

/// The default `service.name` of `agent-sts serve` (and `dev`).
pub const STS_SERVICE: &str = "agent-sts";
/// The default `service.name` of `agent-sts shim`.
pub const SHIM_SERVICE: &str = "agent-sts-shim";
/// Defaults of the `[telemetry]` keys.
pub const DEFAULT_MAX_QUEUE: usize = 2048;
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_EXPORT_INTERVAL: Duration = Duration::from_secs(5);

/// Spans per export request at most (the SDK's default).
const MAX_BATCH: usize = 512;

/// How much of a collector's answer is read (an `ExportTraceServiceResponse` is a few
/// bytes; a partial-success message a few hundred).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Spans dropped because the export queue was full, since the process started;
/// registered by both programs as `trace_spans_dropped` (`_total` in the exposition).
pub static SPANS_DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// Help of the `trace_spans_dropped` counter.
pub const SPANS_DROPPED_HELP: &str =
    "Trace spans dropped because the export queue ([telemetry] max_queue) was full";

/// Export requests that failed (the collector refused them, was unreachable or did
/// not answer within `export_timeout`, retries included); their spans are lost.
/// Registered by both programs as `trace_export_failures`.
pub static EXPORT_FAILURES: LazyLock<Counter> = LazyLock::new(Counter::default);

/// Help of the `trace_export_failures` counter.
pub const EXPORT_FAILURES_HELP: &str =
    "Trace export requests that failed (refused, unreachable or timed out); their spans are lost";

/// The export pipeline, built from `settings` on the current tokio runtime (the
/// export requests run there). Keep the provider until exit and [`shutdown`] it then.
pub fn provider(settings: &Settings) -> Result<SdkTracerProvider, String> {
    let http = reqwest::Client::builder()
        .timeout(settings.export_timeout)
        .connect_timeout(settings.export_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("agent-sts/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("telemetry: HTTP client: {e}"))?;
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| "telemetry: no tokio runtime to export on".to_string())?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(Collector { http, runtime })
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(traces_url(&settings.endpoint))
        .with_timeout(settings.export_timeout)
        .build()
        .map_err(|e| format!("telemetry: OTLP exporter: {e}"))?;
    let waiting = Arc::new(AtomicUsize::new(0));
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(settings.max_queue)
        .with_max_export_batch_size(MAX_BATCH.min(settings.max_queue))
        .with_scheduled_delay(settings.export_interval)
        .build();
    let processor = BatchSpanProcessor::builder(Counted {
        inner: exporter,
        waiting: waiting.clone(),
    })
    .with_batch_config(batch)
    .build();
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name(settings.service_name.clone())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(Bounded {
            inner: processor,
            waiting,
            capacity: settings.max_queue,
        })
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.sample_ratio,
        ))))
        .with_resource(resource)
        .build())
}

/// The `tracing` layer that hands this program's spans to `provider`: spans only,
/// targets `agent_sts*` only, at any level (the log filter does not apply).
pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S> + Send + Sync
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
{
    use tracing_subscriber::Layer as _;
    let ours = tracing_subscriber::filter::filter_fn(|meta| {
        meta.is_span() && meta.target().starts_with("agent_sts")
    });
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("agent-sts"))
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(ours)
        .and_then(Exporting)
}

/// Flushes what is queued (waiting at most `timeout`) and stops the export thread.
pub fn shutdown(provider: &SdkTracerProvider, timeout: Duration) {
    let _ = provider.shutdown_with_timeout(timeout);
}

/// `<endpoint>/v1/traces`, as the OTLP exporter specification builds a signal's URL
/// from `OTEL_EXPORTER_OTLP_ENDPOINT`.
pub fn traces_url(endpoint: &url::Url) -> String {
    format!("{}/v1/traces", endpoint.as_str().trim_end_matches('/'))
}

/// Makes `span` a child of the W3C Trace Context in `headers`, when there is one. No
/// `traceparent`: nothing is done (and nothing is parsed). A malformed one is ignored:
/// the span stays a new root. Without the OpenTelemetry layer installed this does
/// nothing at all, so telemetry off costs one header lookup.
pub fn adopt_parent(span: &tracing::Span, headers: &HeaderMap) {
    if !headers.contains_key(TRACEPARENT) {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    use opentelemetry::trace::TraceContextExt as _;
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Marks a subscriber whose spans are exported: [`installed`] finds it the way
/// tracing-opentelemetry finds its own layer (a downcast through the layers).
struct Exporting;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Exporting {}

/// Whether this thread's subscriber exports spans (`[telemetry]` is on). A lookup
/// and a few type comparisons: no allocation.
pub fn installed() -> bool {
    tracing::dispatcher::get_default(|d| d.downcast_ref::<Exporting>().is_some())
}

/// Sets the present `attributes` on `span` when spans are exported (they are
/// OpenTelemetry attributes, not `tracing` fields: log lines never show them); else
/// does nothing, allocating nothing.
pub fn set_attributes(span: &tracing::Span, attributes: &[(&'static str, Option<&str>)]) {
    if span.is_disabled() || !installed() {
        return;
    }
    for (key, value) in attributes {
        if let Some(value) = value {
            span.set_attribute(*key, value.to_string());
        }
    }
}

/// Replaces any `traceparent`/`tracestate` in `headers` with `span`'s context: what
/// was there goes, and the span's own is written when it has one (an incoming
/// `tracestate` comes back only as the propagator parsed it into the span's parent).
pub fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    headers.remove(TRACEPARENT);
    headers.remove(TRACESTATE);
    let context = span.context();
    use opentelemetry::trace::TraceContextExt as _;
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, &mut HeadersMut(headers));
    }
}

/// W3C Trace Context header names.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        // A repeated header is ambiguous: none of it is trusted (a new root).
        let mut values = self.0.get_all(key).iter();
        match (values.next(), values.next()) {
            (Some(v), None) => v.to_str().ok(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The batch processor behind a count of the spans waiting for export: a span that
/// would make more than `capacity` wait is dropped here and counted, so the SDK's own
/// channel (of the same capacity) never fills and never drops uncounted.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    waiting: Arc<AtomicUsize>,
    capacity: usize,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            SPANS_DROPPED.inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, telling [`Bounded`] when spans leave the queue (a batch handed
/// to the exporter is no longer waiting, whatever becomes of its export) and counting
/// the exports that fail ([`EXPORT_FAILURES`]).
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    waiting: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        self.waiting.fetch_sub(batch.len(), Ordering::AcqRel);
        let export = self.inner.export(batch);
        async move {
            let result = export.await;
            if result.is_err() {
                EXPORT_FAILURES.inc();
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The exporter's HTTP client: reqwest on the program's runtime. The batch thread
/// awaits the spawned request, so the runtime's workers never wait for a collector.
#[derive(Debug)]
struct Collector {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for Collector {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let http = self.http.clone();
        let sent = self.runtime.spawn(async move {
            let request = reqwest::Request::try_from(request)?;
            let mut answer = http.execute(request).await?;
            let mut body = Vec::new();
            while let Some(chunk) = answer.chunk().await? {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            let mut response = http::Response::new(Bytes::from(body));
            *response.status_mut() = answer.status();
            Ok::<_, reqwest::Error>(response)
        });
        Ok(sent.await??)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_traces_url_is_the_base_plus_the_signal_path() {
        let base = url::Url::parse("http://collector:4318").unwrap();
        assert_eq!(traces_url(&base), "http://collector:4318/v1/traces");
        let prefixed = url::Url::parse("https://otel.example/prefix/").unwrap();
        assert_eq!(
            traces_url(&prefixed),
            "https://otel.example/prefix/v1/traces"
        );
    }

    #[test]
    fn a_repeated_or_unreadable_traceparent_is_not_read() {
        let mut headers = HeaderMap::new();
        headers.append(TRACEPARENT, HeaderValue::from_static("a"));
        assert_eq!(Headers(&headers).get(TRACEPARENT), Some("a"));
        headers.append(TRACEPARENT, HeaderValue::from_static("b"));
        assert_eq!(Headers(&headers).get(TRACEPARENT), None);
    }

    #[test]
    fn the_marker_is_found_only_where_the_layer_is_installed() {
        use tracing_subscriber::layer::SubscriberExt as _;
        assert!(!installed());
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry().with(layer(&provider));
        tracing::subscriber::with_default(subscriber, || assert!(installed()));
        let plain = tracing_subscriber::registry().with(tracing_subscriber::fmt::layer());
        tracing::subscriber::with_default(plain, || assert!(!installed()));
    }

    #[test]
    fn a_span_without_context_injects_nothing_and_drops_what_was_sent() {
        // No OpenTelemetry layer: the span has no context; the caller's headers are
        // never passed on in its name.
        let span = tracing::Span::none();
        let mut headers = HeaderMap::new();
        let sent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        headers.insert(TRACEPARENT, HeaderValue::from_static(sent));
        headers.insert(TRACESTATE, HeaderValue::from_static("k=v"));
        adopt_parent(&span, &headers);
        inject(&span, &mut headers);
        assert!(headers.is_empty(), "{headers:?}");
    }
}
