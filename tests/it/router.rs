//! The STS's HTTP layer driven with `oneshot`, no socket: the transport rules of
//! `/token` (each refused before the form is read, in the JSON shape of RFC 6749 §5.2,
//! audited), the discovery endpoints, readiness and metrics, exactly as the router and
//! its layers answer them.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use crate::harness::*;

/// Sends `request` through a fresh router of `app` and returns status, headers and
/// the body as JSON (or a string value for non-JSON bodies).
async fn send(
    app: &agent_sts::sts::App,
    request: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let response = app.router(None).oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (parts.status, parts.headers, value)
}

fn token_request(uri: &str) -> axum::http::request::Builder {
    Request::builder()
        .method("POST")
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
}

#[tokio::test]
async fn transport_rules_refuse_before_the_form_in_the_oauth_shape_and_are_audited() {
    let issuers = Issuers::start().await;
    let (dir, app) = TestSts::app(&issuers.specs()).await;
    let form = format!(
        "grant_type={GRANT}&subject_token={}&subject_token_type={JWT_TYPE}&scope=docs.read",
        issuers.k8s_token("triage")
    );
    let cases: Vec<(Request<Body>, StatusCode, &str, &str)> = vec![
        (
            Request::get("/token").body(Body::empty()).unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "method_not_allowed",
        ),
        (
            token_request("/token?scope=docs.read")
                .body(Body::from(form.clone()))
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "parameters_in_url",
        ),
        (
            token_request("/token")
                .header(header::AUTHORIZATION, "Basic YTpi")
                .body(Body::from(form.clone()))
                .unwrap(),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client_authentication",
        ),
        (
            Request::post("/token")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{}"))
                .unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request",
            "unsupported_media_type",
        ),
        (
            token_request("/token")
                .body(Body::from(format!("{form}&pad={}", "a".repeat(70_000))))
                .unwrap(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
            "body_too_large",
        ),
    ];
    for (request, status, code, reason) in cases {
        let (got, headers, body) = send(&app, request).await;
        assert_eq!(got, status, "{reason}: {body}");
        assert_eq!(body["error"], code, "{reason}");
        assert_eq!(headers[header::CACHE_CONTROL], "no-store", "{reason}");
        assert_eq!(headers[header::PRAGMA], "no-cache", "{reason}");
        let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
        let last: Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
        assert_eq!(last["reason"], reason);
        assert_eq!(last["decision"], "deny");
    }
    // Each status carries the header its RFC asks for.
    let (_, headers, _) = send(&app, Request::get("/token").body(Body::empty()).unwrap()).await;
    assert_eq!(headers[header::ALLOW], "POST");
    let basic = token_request("/token")
        .header(header::AUTHORIZATION, "Basic YTpi")
        .body(Body::from(form.clone()))
        .unwrap();
    let (_, headers, _) = send(&app, basic).await;
    assert!(headers.contains_key(header::WWW_AUTHENTICATE));

    // The same form, sent properly, gets a token.
    let (status, headers, body) = send(
        &app,
        token_request("/token").body(Body::from(form)).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
}

#[tokio::test]
async fn discovery_readiness_and_metrics_answer_from_the_router() {
    let issuers = Issuers::start().await;
    let (_dir, app) = TestSts::app(&issuers.specs()).await;

    let (status, headers, jwks) = send(
        &app,
        Request::get("/.well-known/jwks.json")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CACHE_CONTROL], "public, max-age=300");
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    assert!(jwks["keys"][0].get("d").is_none());

    let (_, _, metadata) = send(
        &app,
        Request::get("/.well-known/oauth-authorization-server")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(metadata["issuer"], STS_ISSUER);
    assert_eq!(metadata["token_endpoint"], format!("{STS_ISSUER}/token"));
    assert!(metadata.get("scopes_supported").is_none());

    let (status, _, ready) = send(&app, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["checks"]["signing_key"], "ok");

    let (status, _, health) =
        send(&app, Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!((status, health), (StatusCode::OK, Value::from("ok\n")));

    // The latency layer times every /token request, refused ones included.
    send(&app, Request::get("/token").body(Body::empty()).unwrap()).await;
    let (_, headers, text) =
        send(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = text.as_str().unwrap();
    let count = text
        .lines()
        .find(|l| l.starts_with("agent_sts_token_request_duration_seconds_count"))
        .unwrap_or_else(|| panic!("no latency histogram in\n{text}"));
    assert!(count.ends_with(" 1"), "{count}");
}
