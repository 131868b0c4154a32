//! The shim's upstream hop: hyper's pooled client (hyper-util's legacy `Client`) over
//! a rustls connector, without reqwest's layers (README, "The shim", upstream hop).
//!
//! The guarantees the reqwest client gave, kept one by one:
//! - no redirect is followed: hyper's client has no redirect logic, a `3xx` comes back
//!   as any other answer and is relayed (scrubbed) to the agent;
//! - no proxy: the connector dials the upstream itself and reads no environment;
//! - `shim.connect_timeout` bounds the connect, TCP and TLS handshake together
//!   ([`TimedConnector`]); the proxy bounds the answer's head
//!   (`upstream_timeout`) and, for a stream, each wait for the next bytes;
//! - connections are pooled and reused per origin (idle ones kept 90 s, as before);
//! - https is verified by `rustls-platform-verifier` (the system roots) with the
//!   aws-lc-rs provider, exactly the verifier reqwest built; plain http only reaches
//!   an upstream the configuration allows it for (a loopback host:
//!   [`crate::config::parse_upstream`]);
//! - a request carries `Accept: */*` unless the agent's forwarded headers set one, as
//!   reqwest added; nothing else is added beyond `Host` (and the body's length).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::Uri;
use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

/// The body of an upstream request: the agent's, read whole, or none.
pub(crate) type UpstreamBody = Full<Bytes>;

/// The pooled client of the upstream hop.
pub(crate) type UpstreamClient = Client<TimedConnector, UpstreamBody>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The https-or-http connector under one deadline for the whole connect (TCP and TLS
/// handshake), as reqwest's `connect_timeout` was; running out is an I/O `TimedOut`.
#[derive(Clone, Debug)]
pub(crate) struct TimedConnector {
    inner: HttpsConnector<HttpConnector>,
    timeout: Duration,
}

impl tower::Service<Uri> for TimedConnector {
    type Response = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(connected) => connected,
                Err(_) => Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "upstream connect timed out",
                )) as BoxError),
            }
        })
    }
}

/// How long an idle pooled connection is kept (reqwest's default).
const POOL_IDLE: Duration = Duration::from_secs(90);

/// TCP keepalive on upstream connections (reqwest's default).
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Builds the client: connect timeout `connect`, TLS verified against the platform's
/// roots, HTTP/1.1 only. The error names what failed, never a secret (there is none
/// here).
pub(crate) fn client(connect: Duration) -> Result<UpstreamClient, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = rustls_platform_verifier::Verifier::new(provider.clone())
        .map_err(|e| format!("TLS verifier: {e}"))?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];

    let mut http = HttpConnector::new();
    // The https connector below decides the scheme; `parse_upstream` decided which.
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect));
    http.set_nodelay(true);
    http.set_keepalive(Some(KEEPALIVE));
    // https or http as the upstream's scheme says (the builder would drop the ALPN
    // `http/1.1` that reqwest offered; this keeps it).
    let https = HttpsConnector::from((http, tls));
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_timer(TokioTimer::new())
        .build(TimedConnector {
            inner: https,
            timeout: connect,
        }))
}

/// Whether a failed call timed out connecting (`shim.connect_timeout`): an error
/// whose chain holds an I/O `TimedOut`.
pub(crate) fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;

    /// A plain-HTTP server on loopback that answers `302` to everything and counts the
    /// connections it accepts.
    async fn counting_server() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(|_req| async {
                    hyper::Response::builder()
                        .status(302)
                        .header("location", "http://127.0.0.1:9/elsewhere")
                        .body(Full::new(Bytes::from_static(b"moved")))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        (format!("http://{addr}"), accepted)
    }

    fn get(uri: &str) -> hyper::Request<UpstreamBody> {
        hyper::Request::get(uri).body(Full::default()).unwrap()
    }

    #[tokio::test]
    async fn a_redirect_comes_back_and_the_connection_is_reused() {
        let (url, accepted) = counting_server().await;
        let client = client(Duration::from_secs(2)).unwrap();
        for _ in 0..3 {
            let answer = client.request(get(&format!("{url}/x"))).await.unwrap();
            assert_eq!(answer.status(), 302, "the redirect was followed");
            let body = answer.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"moved");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "connection not reused");
    }

    #[tokio::test]
    async fn https_is_tls_and_never_falls_back_to_plain_http() {
        let (url, accepted) = counting_server().await;
        let client = client(Duration::from_secs(2)).unwrap();
        let https = url.replace("http://", "https://");
        let e = client.request(get(&https)).await.unwrap_err();
        assert!(e.is_connect(), "{e:?}");
        assert!(!timed_out(&e));
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn connect_timeout_covers_a_tls_handshake_that_never_answers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepts and holds the connection, never answering the ClientHello.
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let client = client(Duration::from_millis(200)).unwrap();
        let started = std::time::Instant::now();
        let call = client.request(get(&format!("https://{addr}/")));
        let e = tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .expect("the connect timeout did not cut the handshake off")
            .unwrap_err();
        assert!(timed_out(&e), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_timed_out_io_error_anywhere_in_the_chain_is_a_timeout() {
        /// What hyper-util's `ConnectError` is: a message over an I/O cause.
        #[derive(Debug)]
        struct Wrapped(std::io::Error);
        impl std::fmt::Display for Wrapped {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("tcp connect error")
            }
        }
        impl std::error::Error for Wrapped {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let timeout = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout");
        assert!(timed_out(&Wrapped(timeout)));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!timed_out(&Wrapped(refused)));
    }
}
