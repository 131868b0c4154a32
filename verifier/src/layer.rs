//! A tower [`Layer`] that guards a route with agent-sts access tokens (RFC 6750).
//!
//! Each request must carry exactly one `Authorization` header, `Bearer <token>` or,
//! for a token bound to a DPoP key, `DPoP <token>` with one `DPoP` proof header (RFC
//! 9449 §7.1), whose token the [`Verifier`] accepts (and, when the layer names
//! actions, whose action is one of them). The proof must be for this request as the
//! client addressed it: the method, and the service's public URL
//! ([`RequireAccessToken::public_url`], by default the verifier's audience) joined
//! with the request path. The verified [`AccessToken`] is then inserted into the request's
//! extensions, where an axum handler takes it with `Extension<AccessToken>` and a
//! tonic or hyper service with `req.extensions().get::<AccessToken>()`. Anything
//! else is answered here, before the inner service runs, per RFC 6750 §3:
//!
//! | request | status | `WWW-Authenticate` |
//! | --- | --- | --- |
//! | no `Authorization` header | 401 | `Bearer` and `DPoP algs="ES256 EdDSA"` (no error code, §3.1) |
//! | two headers, or not a bearer or DPoP token | 400 | `Bearer error="invalid_request"` |
//! | token refused | 401 | `Bearer error="invalid_token"` |
//! | DPoP proof missing, repeated or refused; a bound token sent as `Bearer` | 401 | `DPoP algs="ES256 EdDSA", error="invalid_dpop_proof"` / `error="invalid_token"` |
//! | action not allowed here | 403 | `Bearer error="insufficient_scope"` |
//! | the STS's keys unreachable and none cached | 503 + `Retry-After` | none |
//!
//! Answers have an empty body and `Cache-Control: no-store`; the challenge carries only
//! fixed words, never the token or why it failed in detail.
//!
//! ```
//! use std::sync::Arc;
//! use agent_sts_verifier::{AccessToken, RequireAccessToken, Verifier};
//! use axum::{Extension, Router, routing::get};
//!
//! # fn app() -> Result<Router, agent_sts_verifier::VerifierError> {
//! let verifier = Arc::new(Verifier::new(
//!     "https://sts.example.org",
//!     "https://reports.internal",
//!     "https://sts.example.org/.well-known/jwks.json",
//! )?);
//! let app = Router::new()
//!     .route("/reports", get(|Extension(token): Extension<AccessToken>| async move {
//!         format!("hello {}", token.client_id)
//!     }))
//!     .layer(RequireAccessToken::new(verifier).for_actions(["reports.read"]));
//! # Ok(app) }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use crate::access_token::{AccessToken, Presented, RequestTarget, Verifier, VerifyError};
use crate::error::JwtError;

/// Longest bearer token read from a header.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why the `Authorization` header does not yield a bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BearerError {
    #[error("no Authorization header")]
    Missing,
    #[error("more than one Authorization header")]
    Duplicate,
    #[error("the Authorization header is not a bearer or DPoP token")]
    Malformed,
    #[error("a DPoP token without exactly one DPoP proof header")]
    Proof,
}

/// The token of the `Authorization` header as presented: `Bearer`, or `DPoP` with the
/// one `DPoP` proof header (RFC 9449 §7.1). Same token rules as [`bearer_token`].
pub fn presented_token(
    headers: &HeaderMap,
    max_bytes: usize,
) -> Result<Presented<'_>, BearerError> {
    let (scheme, token) = authorization(headers, max_bytes)?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(Presented::Bearer(token));
    }
    if !scheme.eq_ignore_ascii_case("dpop") {
        return Err(BearerError::Malformed);
    }
    match dpop_proof(headers)? {
        Some(proof) => Ok(Presented::Dpop { token, proof }),
        None => Err(BearerError::Proof),
    }
}

/// The `DPoP` proof header (RFC 9449 §4.1): none, or exactly one visible-ASCII value
/// (trimmed); two, or one that is not text, is [`BearerError::Proof`]. The token
/// endpoint and resource servers read it alike.
pub fn dpop_proof(headers: &HeaderMap) -> Result<Option<&str>, BearerError> {
    let mut proofs = headers.get_all("dpop").iter();
    match (proofs.next(), proofs.next()) {
        (None, _) => Ok(None),
        (Some(proof), None) => proof
            .to_str()
            .map(|p| Some(p.trim()))
            .map_err(|_| BearerError::Proof),
        (Some(_), Some(_)) => Err(BearerError::Proof),
    }
}

/// `(scheme, token)` of the one `Authorization` header, the token a `b64token` of at
/// most `max_bytes`.
fn authorization(headers: &HeaderMap, max_bytes: usize) -> Result<(&str, &str), BearerError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(BearerError::Missing)?;
    if values.next().is_some() {
        return Err(BearerError::Duplicate);
    }
    let text = value.to_str().map_err(|_| BearerError::Malformed)?;
    let (scheme, token) = text.split_once(' ').ok_or(BearerError::Malformed)?;
    let token = token.trim_matches(' ');
    let b64token = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b);
    if token.is_empty() || token.len() > max_bytes || !token.bytes().all(b64token) {
        return Err(BearerError::Malformed);
    }
    Ok((scheme, token))
}

/// The bearer token of the `Authorization` header (RFC 6750 §2.1): one header, scheme
/// `Bearer` in any case, a `b64token` of at most `max_bytes`.
pub fn bearer_token(headers: &HeaderMap, max_bytes: usize) -> Result<&str, BearerError> {
    match authorization(headers, max_bytes)? {
        (scheme, token) if scheme.eq_ignore_ascii_case("bearer") => Ok(token),
        _ => Err(BearerError::Malformed),
    }
}

/// The layer: wraps a service so it only sees requests with a valid access token.
#[derive(Clone, Debug)]
pub struct RequireAccessToken {
    verifier: Arc<Verifier>,
    actions: Option<Arc<[String]>>,
    public_url: Arc<str>,
}

impl RequireAccessToken {
    /// Requires a token `verifier` accepts, for any action.
    pub fn new(verifier: Arc<Verifier>) -> Self {
        let public_url = Arc::from(verifier.audience().trim_end_matches('/'));
        RequireAccessToken {
            verifier,
            actions: None,
            public_url,
        }
    }

    /// The URL clients address this service at (behind a load balancer), to which the
    /// request path is joined for DPoP's `htu`; by default the verifier's audience.
    pub fn public_url(mut self, url: &str) -> Self {
        self.public_url = Arc::from(url.trim_end_matches('/'));
        self
    }

    /// Also requires the token's action to be one of `actions` (403 otherwise).
    pub fn for_actions<I, A>(mut self, actions: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<String>,
    {
        self.actions = Some(actions.into_iter().map(Into::into).collect());
        self
    }

    /// The verified token, or the refusal to send instead.
    async fn check(
        &self,
        method: &str,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<AccessToken, Refusal> {
        let presented = presented_token(headers, MAX_TOKEN_BYTES).map_err(|e| match e {
            BearerError::Missing => Refusal::MissingToken,
            BearerError::Duplicate | BearerError::Malformed => Refusal::InvalidRequest,
            BearerError::Proof => Refusal::InvalidDpopProof,
        })?;
        let url = format!("{}{path}", self.public_url);
        let target = RequestTarget { method, url: &url };
        let token = self
            .verifier
            .verify_presented(presented, &target, crate::unix_now())
            .await
            .map_err(|e| match e {
                VerifyError::Token(JwtError::JwksUnavailable { .. })
                | VerifyError::DenyListUnavailable => Refusal::KeysUnavailable,
                VerifyError::Dpop(crate::dpop::DpopError::UseNonce) => Refusal::UseDpopNonce,
                VerifyError::Dpop(_) => Refusal::InvalidDpopProof,
                VerifyError::Downgrade | VerifyError::NotBound => Refusal::DpopInvalidToken,
                _ => Refusal::InvalidToken,
            })?;
        match &self.actions {
            Some(allowed) if !allowed.contains(&token.action) => Err(Refusal::InsufficientScope),
            _ => Ok(token),
        }
    }
}

impl<S> Layer<S> for RequireAccessToken {
    type Service = RequireAccessTokenService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireAccessTokenService {
            inner,
            guard: self.clone(),
        }
    }
}

/// The service [`RequireAccessToken`] produces.
#[derive(Clone, Debug)]
pub struct RequireAccessTokenService<S> {
    inner: S,
    guard: RequireAccessToken,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequireAccessTokenService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // The clone is not ready; the ready one goes into the future (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let guard = self.guard.clone();
        Box::pin(async move {
            let method = request.method().as_str().to_string();
            let path = request.uri().path().to_string();
            match guard.check(&method, &path, request.headers()).await {
                Ok(token) => {
                    request.extensions_mut().insert(token);
                    inner.call(request).await
                }
                Err(refusal) => {
                    let mut response = refusal.response();
                    // RFC 9449 §9: the nonce to use next rides on the refusal.
                    if let Some(nonce) = guard.verifier.dpop_nonce(crate::unix_now())
                        && let Ok(value) = HeaderValue::from_str(&nonce)
                    {
                        response.headers_mut().insert("dpop-nonce", value);
                    }
                    Ok(response)
                }
            }
        })
    }
}

/// Why a request is answered by the layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    MissingToken,
    InvalidRequest,
    InvalidToken,
    InsufficientScope,
    KeysUnavailable,
    InvalidDpopProof,
    /// Nonces are required and the proof lacks a current one.
    UseDpopNonce,
    /// A bound token as `Bearer`, or an unbound one as `DPoP`.
    DpopInvalidToken,
}

/// The `DPoP` challenge's scheme and algorithms (RFC 9449 §7.1), for any server that
/// challenges as this layer does.
pub const DPOP_CHALLENGE: &str = "DPoP algs=\"ES256 EdDSA\"";

impl Refusal {
    fn response<B: Default>(self) -> Response<B> {
        let (status, challenge) = match self {
            Refusal::MissingToken => (StatusCode::UNAUTHORIZED, Some("Bearer")),
            Refusal::InvalidRequest => (
                StatusCode::BAD_REQUEST,
                Some("Bearer error=\"invalid_request\""),
            ),
            Refusal::InvalidToken => (
                StatusCode::UNAUTHORIZED,
                Some("Bearer error=\"invalid_token\""),
            ),
            Refusal::InsufficientScope => (
                StatusCode::FORBIDDEN,
                Some("Bearer error=\"insufficient_scope\""),
            ),
            Refusal::KeysUnavailable => (StatusCode::SERVICE_UNAVAILABLE, None),
            Refusal::InvalidDpopProof => (
                StatusCode::UNAUTHORIZED,
                Some("DPoP algs=\"ES256 EdDSA\", error=\"invalid_dpop_proof\""),
            ),
            Refusal::UseDpopNonce => (
                StatusCode::UNAUTHORIZED,
                Some("DPoP algs=\"ES256 EdDSA\", error=\"use_dpop_nonce\""),
            ),
            Refusal::DpopInvalidToken => (
                StatusCode::UNAUTHORIZED,
                Some("DPoP algs=\"ES256 EdDSA\", error=\"invalid_token\""),
            ),
        };
        let mut response = Response::new(B::default());
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(challenge) = challenge {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        if self == Refusal::MissingToken {
            headers.append(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(DPOP_CHALLENGE),
            );
        }
        if self == Refusal::KeysUnavailable {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_tokens_follow_rfc_6750() {
        assert_eq!(bearer_token(&headers(&["Bearer a.b.c"]), 64), Ok("a.b.c"));
        assert_eq!(bearer_token(&headers(&["bearer  a.b.c "]), 64), Ok("a.b.c"));
        assert_eq!(bearer_token(&headers(&[]), 64), Err(BearerError::Missing));
        assert_eq!(
            bearer_token(&headers(&["Bearer a", "Bearer b"]), 64),
            Err(BearerError::Duplicate)
        );
        for bad in [
            "Basic a.b.c",
            "Bearer",
            "Bearer a b",
            "Bearer a\"b",
            "Bearera.b",
        ] {
            assert_eq!(
                bearer_token(&headers(&[bad]), 64),
                Err(BearerError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            bearer_token(&headers(&["Bearer abcdef"]), 5),
            Err(BearerError::Malformed)
        );
    }
}
