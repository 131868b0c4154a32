//! Answers relayed as they arrive (README, "Streaming"): an event stream, a body of
//! unknown length, or one longer than `max_response_bytes`. The head was checked and
//! scrubbed by the proxy, and the call's decision line written, before the first byte
//! leaves; the body then goes through a [`StreamScrubber`], which holds back only the
//! bytes that could still begin a match, and its completion record ([`StreamEnd`]:
//! bytes relayed, bytes scrubbed, how it ended) is written after the last byte, in the
//! same hash chain.
//!
//! Shaped as a pull: [`Relay`] is the response body, and it reads the upstream only
//! when hyper asks for more, so a slow agent slows the upstream (TCP backpressure) and
//! the shim holds at most one upstream chunk plus the scrubber's tail per stream. Time
//! counts only while the shim waits on the upstream: `stream_idle_timeout` between
//! chunks, not a deadline for the whole answer. An agent that goes away drops the body,
//! which drops the upstream response and so closes the upstream connection; the drop
//! writes the `client_gone` record. An ending other than `complete` aborts the answer
//! (hyper closes the connection without the last chunk, which the agent's HTTP client
//! reports as a truncated body) and drops what the scrubber held back: bytes of a
//! possible match are never released by an ending.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures_util::Stream;
use hyper::body::{Body as _, Incoming};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::audit::{AuditLog, StreamEnd};
use crate::shim::scrub::{Scrubber, StreamScrubber};
use crate::telemetry::metrics::StreamLabels;

/// What the proxy answers: a response read whole, or a stream to start once the
/// decision line is written.
#[derive(Debug)]
pub(crate) enum Answer {
    Whole(Response),
    Stream(Box<PendingStream>),
}

/// The upstream body of a stream's answer, read frame by frame.
type UpstreamBody = Incoming;

/// A streamed answer whose head is checked and scrubbed and whose body has not been
/// read yet.
pub(crate) struct PendingStream {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    /// Credential bytes removed from the head.
    pub(crate) header_scrubbed: u64,
    pub(crate) body: UpstreamBody,
    pub(crate) scrubber: Arc<Scrubber>,
}

impl std::fmt::Debug for PendingStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingStream")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// What a stream's completion record needs.
pub(crate) struct StreamAudit {
    pub(crate) audit: Arc<AuditLog>,
    pub(crate) failures: Counter,
    /// `streams_ended{ended}`.
    pub(crate) ended: Family<StreamLabels, Counter>,
    pub(crate) shim: String,
    pub(crate) id: String,
    pub(crate) action: Option<String>,
    pub(crate) jti: Option<String>,
    pub(crate) started: Instant,
}

/// How a stream ended (`ended` in its [`StreamEnd`] line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Complete,
    IdleTimeout,
    ClientGone,
    UpstreamError,
}

impl Ended {
    fn as_str(self) -> &'static str {
        match self {
            Ended::Complete => "complete",
            Ended::IdleTimeout => "idle_timeout",
            Ended::ClientGone => "client_gone",
            Ended::UpstreamError => "upstream_error",
        }
    }
}

impl PendingStream {
    /// The response whose body relays and scrubs the upstream's; `slot` (a place in
    /// `[limits] max_concurrency`) is held until the stream ends.
    pub(crate) fn start(
        self,
        audit: StreamAudit,
        slot: tokio::sync::OwnedSemaphorePermit,
        idle: Duration,
    ) -> Response {
        let relay = Relay {
            upstream: self.body,
            scrubber: StreamScrubber::new(self.scrubber),
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
            waiting: false,
            relayed: 0,
            finished: false,
            audit: Some(audit),
            slot: Some(slot),
        };
        let mut response = Response::new(Body::from_stream(relay));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        response
    }
}

/// The body of a streamed answer (module doc).
struct Relay {
    upstream: UpstreamBody,
    scrubber: StreamScrubber,
    idle: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// Whether `sleep` runs: armed when the upstream first has nothing, disarmed by
    /// its next bytes. So a slow agent's time is not counted as the upstream's.
    waiting: bool,
    relayed: u64,
    /// The upstream ended and its last bytes were handed on.
    finished: bool,
    /// Until the completion record is written.
    audit: Option<StreamAudit>,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Relay {
    /// Writes the completion record (once) and frees the concurrency slot.
    fn end(&mut self, how: Ended) {
        self.slot = None;
        let Some(audit) = self.audit.take() else {
            return;
        };
        let record = StreamEnd {
            time: SystemTime::now(),
            shim: &audit.shim,
            event: "stream_end",
            stream: &audit.id,
            action: audit.action.as_deref(),
            jti: audit.jti.as_deref(),
            ended: how.as_str(),
            bytes_relayed: self.relayed,
            bytes_scrubbed: self.scrubber.removed(),
            duration_ms: u64::try_from(audit.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        audit
            .ended
            .get_or_create(&StreamLabels {
                ended: how.as_str(),
            })
            .inc();
        if let Err(e) = audit.audit.append_stream_end(&record) {
            audit.failures.inc();
            tracing::error!(error = %e, stream = %audit.id, "audit log unwritable: stream end not recorded");
        }
        if how == Ended::Complete {
            tracing::debug!(stream = %audit.id, relayed = self.relayed, scrubbed = self.scrubber.removed(), "stream complete");
        } else {
            tracing::info!(stream = %audit.id, ended = how.as_str(), relayed = self.relayed, "stream ended early");
        }
    }

    /// Ends the stream abnormally: the answer is aborted.
    fn fail(
        &mut self,
        how: Ended,
        why: &'static str,
    ) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        self.finished = true;
        self.end(how);
        Poll::Ready(Some(Err(std::io::Error::other(why))))
    }
}

impl Stream for Relay {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.finished {
            this.end(Ended::Complete);
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut this.upstream).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    this.waiting = false;
                    // Trailers are not relayed (the shim frames what it sends).
                    let Ok(chunk) = frame.into_data() else {
                        continue;
                    };
                    match this.scrubber.push(&chunk) {
                        Ok(out) if out.is_empty() => continue,
                        Ok(out) => {
                            this.relayed += out.len() as u64;
                            return Poll::Ready(Some(Ok(out)));
                        }
                        Err(_) => {
                            return this.fail(Ended::UpstreamError, "unscrubbable upstream answer");
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(
                        incomplete = e.is_incomplete_message(),
                        "upstream stream failed"
                    );
                    return this.fail(Ended::UpstreamError, "upstream answer failed");
                }
                Poll::Ready(None) => {
                    return match this.scrubber.finish() {
                        Ok(out) if out.is_empty() => {
                            this.finished = true;
                            this.end(Ended::Complete);
                            Poll::Ready(None)
                        }
                        Ok(out) => {
                            this.finished = true;
                            this.relayed += out.len() as u64;
                            Poll::Ready(Some(Ok(out)))
                        }
                        Err(_) => this.fail(Ended::UpstreamError, "unscrubbable upstream answer"),
                    };
                }
                Poll::Pending => {
                    if !this.waiting {
                        this.waiting = true;
                        let at = tokio::time::Instant::now() + this.idle;
                        this.sleep.as_mut().reset(at);
                    }
                    if this.sleep.as_mut().poll(cx).is_ready() {
                        return this.fail(Ended::IdleTimeout, "upstream idle timeout");
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Dropped before the end was recorded: the agent went away (or the server shut
        // down) mid-stream. Dropping `upstream` closes the upstream connection.
        if self.audit.is_some() {
            self.end(Ended::ClientGone);
        }
    }
}

/// A fresh stream id: 16 random hex digits.
pub(crate) fn new_stream_id() -> String {
    let mut bytes = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
