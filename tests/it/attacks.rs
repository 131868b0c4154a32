//! What the STS refuses (SECURITY.md "Cases": request shape, signatures and headers,
//! claims), over real HTTP against real fake issuers. Every refusal is checked for
//! its status and RFC code, `Cache-Control: no-store` / `Pragma: no-cache`, and a
//! description that does not echo the token or garbage that was sent. Each family of
//! bad tokens starts with a positive control (the same construction with good values
//! is accepted), so a refusal is never an accident of a broken fixture.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

// ---------------------------------------------------------------------------------
// Helpers: minimal DER, keys, hand-made tokens.

/// One DER TLV.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else if n < 0x100 {
        out.extend_from_slice(&[0x81, n as u8]);
    } else {
        out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]);
    }
    out.extend_from_slice(content);
    out
}

/// A DER SEQUENCE of already-encoded parts.
fn der_seq(parts: &[&[u8]]) -> Vec<u8> {
    der(0x30, &parts.concat())
}

/// A DER INTEGER from unsigned big-endian bytes (minimal, non-negative).
fn der_uint(bytes: &[u8]) -> Vec<u8> {
    let start = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len() - 1);
    let mut v = bytes[start..].to_vec();
    if v[0] & 0x80 != 0 {
        v.insert(0, 0);
    }
    der(0x02, &v)
}

/// A DER BIT STRING with no unused bits.
fn der_bits(bytes: &[u8]) -> Vec<u8> {
    der(0x03, &[&[0u8][..], bytes].concat())
}

const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_ECDSA_SHA256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const OID_RSA: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
const DER_NULL: &[u8] = &[0x05, 0x00];

/// JWS ES256 `r || s` (RFC 7518 §3.4) to an ASN.1 DER `Ecdsa-Sig-Value`.
fn ecdsa_fixed_to_der(fixed: &[u8]) -> Vec<u8> {
    assert_eq!(fixed.len(), 64);
    der_seq(&[&der_uint(&fixed[..32]), &der_uint(&fixed[32..])])
}

fn unb64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).unwrap()
}

fn pem_text(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// SubjectPublicKeyInfo DER of a public JWK (EC P-256 or RSA).
fn spki_of(jwk: &Value) -> Vec<u8> {
    match jwk["kty"].as_str().unwrap() {
        "EC" => {
            let point = [
                &[0x04u8][..],
                &unb64(jwk["x"].as_str().unwrap()),
                &unb64(jwk["y"].as_str().unwrap()),
            ]
            .concat();
            der_seq(&[&der_seq(&[OID_EC_PUBLIC_KEY, OID_P256]), &der_bits(&point)])
        }
        "RSA" => der_seq(&[&der_seq(&[OID_RSA, DER_NULL]), &der_bits(&pkcs1_of(jwk))]),
        other => panic!("unexpected kty {other}"),
    }
}

/// PKCS#1 `RSAPublicKey` DER of an RSA JWK.
fn pkcs1_of(jwk: &Value) -> Vec<u8> {
    der_seq(&[
        &der_uint(&unb64(jwk["n"].as_str().unwrap())),
        &der_uint(&unb64(jwk["e"].as_str().unwrap())),
    ])
}

/// The issuer's published JWKS document, fetched like any attacker would.
async fn published_jwks(issuer: &TestIssuer) -> String {
    reqwest::get(&issuer.jwks_uri)
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// `header.claims.signature` with the signature computed by `key` under `alg`.
fn signed(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let input = unsigned(header, claims);
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).unwrap();
    format!("{input}.{sig}")
}

/// `header.claims`, the signing input.
fn unsigned(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// A key no trust knows, with its public JWK.
struct Attacker {
    key: EncodingKey,
    kid: &'static str,
    jwk: Value,
}

fn attacker() -> Attacker {
    let key = EncodingKey::from_ec_pem(&fixture("attacker-es256.pem")).unwrap();
    let kid = "attacker-key-1";
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(kid.into());
    let jwk = serde_json::to_value(&jwk).unwrap();
    assert!(jwk.get("d").is_none(), "public JWK only");
    Attacker { key, kid, jwk }
}

impl Attacker {
    fn sign(&self, header: &Value, claims: &Value) -> String {
        signed(header, claims, &self.key, Algorithm::ES256)
    }

    /// A self-signed X.509 certificate for the attacker key (base64 DER, as in `x5c`).
    fn self_signed_cert(&self) -> String {
        let name = der_seq(&[&der(
            0x31,
            &der_seq(&[
                &[0x06, 0x03, 0x55, 0x04, 0x03][..],
                &der(0x0c, b"spire.example.org"),
            ]),
        )]);
        let validity = der_seq(&[&der(0x17, b"250101000000Z"), &der(0x17, b"491231235959Z")]);
        let tbs = der_seq(&[
            &der(0xa0, &der_uint(&[2])),
            &der_uint(&[0x01, 0x23, 0x45]),
            &der_seq(&[OID_ECDSA_SHA256]),
            &name,
            &validity,
            &name,
            &spki_of(&self.jwk),
        ]);
        let fixed = unb64(&jsonwebtoken::crypto::sign(&tbs, &self.key, Algorithm::ES256).unwrap());
        let cert = der_seq(&[
            &tbs,
            &der_seq(&[OID_ECDSA_SHA256]),
            &der_bits(&ecdsa_fixed_to_der(&fixed)),
        ]);
        STANDARD.encode(cert)
    }
}

/// Distinct values for `jti`, so no two tokens of a test are the same bytes.
fn jti() -> String {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    hex::encode(bytes)
}

/// Good claims for `sub` from `issuer`, with a fresh `jti`.
fn good_claims(issuer: &TestIssuer, sub: &str) -> Value {
    let mut c = issuer.claims(sub);
    c["jti"] = json!(jti());
    c
}

/// Claim edits for [`edit`].
type ClaimEdits<'a> = Vec<(&'a str, Option<Value>)>;

/// A way to spoil a signature, given the good one.
type SigMutation<'a> = Box<dyn Fn(&[u8]) -> Vec<u8> + 'a>;

/// `base` with each `(name, Some(v))` set and each `(name, None)` removed.
fn edit(base: &Value, changes: &[(&str, Option<Value>)]) -> Value {
    let mut c = base.clone();
    let map = c.as_object_mut().unwrap();
    for (name, value) in changes {
        match value {
            Some(v) => map.insert((*name).to_string(), v.clone()),
            None => map.remove(*name),
        };
    }
    c
}

const TRIAGE_SVID: &str = "spiffe://example.org/agent/triage";
const TRIAGE_SA: &str = "system:serviceaccount:agents:triage";
const GITHUB: &str = "github.issues.create";

/// The token and its longer segments: none may appear in a response.
fn secrets_of(token: &str) -> Vec<&str> {
    std::iter::once(token)
        .chain(token.split('.'))
        .filter(|s| s.len() >= 8)
        .collect()
}

/// `token` exchanged for `scope` is refused as a bad subject token.
async fn assert_refused(sts: &TestSts, token: &str, scope: &str, why: &str) {
    let r = sts.exchange_for(token, scope).await;
    assert_eq!(r.status, 400, "{why}: {r:?}");
    assert_eq!(r.error(), "invalid_request", "{why}: {r:?}");
    r.assert_error(400, "invalid_request", &secrets_of(token));
    assert!(r.json().get("access_token").is_none(), "{why}: {r:?}");
}

/// `token` exchanged for `scope` is accepted (positive controls).
async fn assert_accepted(sts: &TestSts, token: &str, scope: &str, why: &str) {
    let r = sts.exchange_for(token, scope).await;
    assert_eq!(r.status, 200, "{why}: {r:?}");
    r.assert_no_store();
}

/// A server that counts every request it gets, on any path, and answers with
/// `body` (a JWKS holding the attacker key, or anything else an attacker would serve).
async fn counting_server(body: Value) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let state = (hits.clone(), Arc::new(body));
    let router = axum::Router::new()
        .fallback(
            |State((hits, body)): State<(Arc<AtomicUsize>, Arc<Value>)>| async move {
                hits.fetch_add(1, Ordering::SeqCst);
                axum::Json((*body).clone())
            },
        )
        .with_state(state);
    (spawn_router(router).await, hits)
}

// ---------------------------------------------------------------------------------
// Request shape.

#[tokio::test]
async fn token_endpoint_answers_other_methods_with_405() {
    let (sts, issuers) = TestSts::standard().await;
    let subject = issuers.svid("agent/triage");
    let query = form(&[
        ("grant_type", GRANT),
        ("subject_token", &subject),
        ("subject_token_type", JWT_TYPE),
        ("scope", GITHUB),
    ]);
    for path in ["/token".to_string(), format!("/token?{query}")] {
        for method in [
            reqwest::Method::GET,
            reqwest::Method::PUT,
            reqwest::Method::DELETE,
            reqwest::Method::PATCH,
        ] {
            let r = reply(
                sts.client
                    .request(method.clone(), format!("{}{path}", sts.url))
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            r.assert_error(405, "invalid_request", &secrets_of(&subject));
            assert_eq!(r.headers["allow"], "POST", "{method} {r:?}");
        }
    }
}

#[tokio::test]
async fn parameters_in_the_query_string_are_refused_even_with_a_good_body() {
    let (sts, issuers) = TestSts::standard().await;
    let subject = issuers.svid("agent/triage");
    let good = form(&[
        ("grant_type", GRANT),
        ("subject_token", &subject),
        ("subject_token_type", JWT_TYPE),
        ("scope", GITHUB),
    ]);
    // Control: the body alone is accepted.
    let r = sts
        .post("/token", "application/x-www-form-urlencoded", good.clone())
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let other = issuers.svid("agent/triage");
    for query in [
        good.clone(),
        form(&[("subject_token", &other)]),
        form(&[("scope", GITHUB)]),
        "x=1".to_string(),
    ] {
        let r = sts
            .post(
                &format!("/token?{query}"),
                "application/x-www-form-urlencoded",
                good.clone(),
            )
            .await;
        let mut never = secrets_of(&subject);
        never.extend(secrets_of(&other));
        r.assert_error(400, "invalid_request", &never);
    }
}

#[tokio::test]
async fn grant_type_missing_or_not_token_exchange_is_refused() {
    let (sts, issuers) = TestSts::standard().await;
    let subject = issuers.svid("agent/triage");
    let rest = [
        ("subject_token", subject.as_str()),
        ("subject_token_type", JWT_TYPE),
        ("scope", GITHUB),
    ];
    let with = |grant: Option<&'static str>| {
        let mut p: Vec<(&str, &str)> = grant.map(|g| ("grant_type", g)).into_iter().collect();
        p.extend_from_slice(&rest);
        p
    };
    sts.exchange(&with(None))
        .await
        .assert_error(400, "invalid_request", &secrets_of(&subject));
    sts.exchange(&with(Some("")))
        .await
        .assert_error(400, "invalid_request", &secrets_of(&subject));
    for grant in [
        "password",
        "client_credentials",
        "authorization_code",
        "urn:ietf:params:oauth:grant-type:saml2-bearer",
        "urn:ietf:params:oauth:grant-type:token-exchange ",
        "urn:ietf:params:oauth:grant-type:jwt-bearer ",
    ] {
        let r = sts.exchange(&with(Some(grant))).await;
        r.assert_error(400, "unsupported_grant_type", &secrets_of(&subject));
    }
    // The password grant's own fields change nothing.
    let r = sts
        .exchange(&[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "hunter2-CANARY"),
            ("scope", GITHUB),
        ])
        .await;
    r.assert_error(400, "unsupported_grant_type", &["hunter2-CANARY"]);
    // Control.
    assert_accepted(&sts, &subject, GITHUB, "good grant").await;
}

#[tokio::test]
async fn repeated_parameters_are_refused_never_last_value_wins() {
    let (sts, issuers) = TestSts::standard().await;
    let subject = issuers.svid("agent/triage");
    let other = issuers.svid("agent/other");
    let agent = issuers.k8s_token("triage");
    let base = vec![
        ("grant_type", GRANT),
        ("subject_token", subject.as_str()),
        ("subject_token_type", JWT_TYPE),
        ("scope", GITHUB),
    ];
    let repeats: Vec<(&str, &str)> = vec![
        ("grant_type", GRANT),
        ("grant_type", "password"),
        ("subject_token", subject.as_str()),
        ("subject_token", other.as_str()),
        ("subject_token_type", JWT_TYPE),
        ("scope", GITHUB),
        ("scope", "docs.read"),
        (
            "requested_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        ),
    ];
    for extra in repeats {
        let mut p = base.clone();
        if extra.0 == "requested_token_type" {
            p.push(extra);
        }
        p.push(extra);
        let r = sts.exchange(&p).await;
        let mut never = secrets_of(&subject);
        never.extend(secrets_of(&other));
        r.assert_error(400, "invalid_request", &never);
    }
    // Repeated actor parameters (delegation).
    let user = issuers.user_token("alice@example.org");
    let delegated = vec![
        ("grant_type", GRANT),
        ("subject_token", user.as_str()),
        ("subject_token_type", JWT_TYPE),
        ("actor_token", agent.as_str()),
        ("actor_token_type", JWT_TYPE),
        ("scope", GITHUB),
    ];
    assert_eq!(sts.exchange(&delegated).await.status, 200, "control");
    for extra in [
        ("actor_token", agent.as_str()),
        ("actor_token_type", JWT_TYPE),
    ] {
        let mut p = delegated.clone();
        p.push(extra);
        let r = sts.exchange(&p).await;
        r.assert_error(400, "invalid_request", &secrets_of(&agent));
    }
    // A repeat hidden by an empty first value is still a repeat.
    let mut p = base.clone();
    p.insert(0, ("scope", ""));
    sts.exchange(&p)
        .await
        .assert_error(400, "invalid_request", &secrets_of(&subject));
}

#[tokio::test]
async fn scope_must_name_exactly_one_action() {
    let (sts, issuers) = TestSts::standard().await;
    let subject = issuers.k8s_token("triage");
    let never = secrets_of(&subject);
    let base = [
        ("grant_type", GRANT),
        ("subject_token", subject.as_str()),
        ("subject_token_type", JWT_TYPE),
    ];
    // Missing.
    sts.exchange(&base)
        .await
        .assert_error(400, "invalid_scope", &never);
    for scope in [
        "",
        " ",
        "github.issues.create docs.read",
        "docs.read docs.read",
        "  docs.read   slack.message.post ",
    ] {
        let mut p = base.to_vec();
        p.push(("scope", scope));
        sts.exchange(&p)
            .await
            .assert_error(400, "invalid_scope", &never);
    }
    let mut p = base.to_vec();
    p.push(("scope", " docs.read "));
    assert_eq!(sts.exchange(&p).await.status, 200, "one action, padded");
}

#[tokio::test]
async fn ungranted_action_is_invalid_scope_and_unbound_audience_is_invalid_target() {
    let (sts, issuers) = TestSts::standard().await;
    // ci may read docs but not open issues; spire's other agent gets nothing.
    let ci = issuers.ci.token(
        &issuers
            .ci
            .claims("repo:example/agent-sts:ref:refs/heads/main"),
    );
    assert_accepted(&sts, &ci, "docs.read", "granted").await;
    for (token, scope) in [
        (ci.as_str(), GITHUB),
        (ci.as_str(), "slack.message.post"),
        (ci.as_str(), "no.such.action"),
        (ci.as_str(), "docs.read.*"),
        (ci.as_str(), "*"),
    ] {
        let r = sts.exchange_for(token, scope).await;
        r.assert_error(400, "invalid_scope", &secrets_of(token));
    }
    // An unknown action and an ungranted one look the same.
    let a = sts.exchange_for(&ci, GITHUB).await;
    let b = sts.exchange_for(&ci, "no.such.action").await;
    assert_eq!(a.text, b.text);
    // Audience not bound to the action.
    let subject = issuers.k8s_token("triage");
    for (name, value) in [
        ("audience", "https://docs.internal"),
        ("audience", "https://github-shim.internal/"),
        ("resource", "https://evil.example/CANARY-target"),
    ] {
        let r = sts
            .exchange(&[
                ("grant_type", GRANT),
                ("subject_token", &subject),
                ("subject_token_type", JWT_TYPE),
                ("scope", GITHUB),
                (name, value),
            ])
            .await;
        let mut never = secrets_of(&subject);
        never.push("CANARY-target");
        r.assert_error(400, "invalid_target", &never);
    }
}

#[tokio::test]
async fn actor_token_type_alone_and_unknown_token_types_are_refused() {
    let (sts, issuers) = TestSts::standard().await;
    let user = issuers.user_token("alice@example.org");
    let agent = issuers.k8s_token("triage");
    let mut never = secrets_of(&user);
    never.extend(secrets_of(&agent));
    let cases: Vec<Vec<(&str, &str)>> = vec![
        // actor_token_type without actor_token.
        vec![
            ("subject_token", &user),
            ("subject_token_type", JWT_TYPE),
            ("actor_token_type", JWT_TYPE),
        ],
        // actor_token without actor_token_type.
        vec![
            ("subject_token", &user),
            ("subject_token_type", JWT_TYPE),
            ("actor_token", &agent),
        ],
        // Unknown subject token types.
        vec![
            ("subject_token", &agent),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:saml2",
            ),
        ],
        vec![
            ("subject_token", &agent),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
        ],
        vec![("subject_token", &agent), ("subject_token_type", "jwt")],
        vec![("subject_token", &agent)],
        // Unknown actor token type.
        vec![
            ("subject_token", &user),
            ("subject_token_type", JWT_TYPE),
            ("actor_token", &agent),
            (
                "actor_token_type",
                "urn:ietf:params:oauth:token-type:refresh_token",
            ),
        ],
        // No subject token at all.
        vec![("subject_token_type", JWT_TYPE)],
    ];
    for case in cases {
        let mut p = vec![("grant_type", GRANT), ("scope", GITHUB)];
        p.extend(case);
        let r = sts.exchange(&p).await;
        r.assert_error(400, "invalid_request", &never);
    }
}

#[tokio::test]
async fn body_over_the_cap_is_413_json() {
    let (sts, issuers) = TestSts::standard().await;
    let subject = issuers.svid("agent/triage");
    // Default cap: 64 KiB. Content-Length tells the server before it reads anything.
    let padding = format!("CANARY{}", "A".repeat(70_000));
    let body = form(&[
        ("grant_type", GRANT),
        ("subject_token", &subject),
        ("subject_token_type", JWT_TYPE),
        ("scope", GITHUB),
        ("padding", &padding),
    ]);
    let r = sts
        .post("/token", "application/x-www-form-urlencoded", body)
        .await;
    r.assert_error(413, "invalid_request", &["CANARYAAAA", &subject]);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "{r:?}"
    );
}

/// Sends `body` chunked (no Content-Length) over a raw connection; returns the
/// status, the headers (lower-cased names) and the body.
async fn post_chunked(url: &str, body: &[u8]) -> (u16, Vec<(String, String)>, String) {
    let addr = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /token HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let (mut rd, mut wr) = stream.split();
    let write = async {
        wr.write_all(head.as_bytes()).await?;
        for chunk in body.chunks(8192) {
            wr.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            wr.write_all(chunk).await?;
            wr.write_all(b"\r\n").await?;
        }
        wr.write_all(b"0\r\n\r\n").await?;
        wr.flush().await
    };
    let read = async {
        let mut out = Vec::new();
        // The server may answer and close before the body is sent in full; keep what
        // arrived.
        let _ = rd.read_to_end(&mut out).await;
        out
    };
    let (_, raw) =
        tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(write, read) })
            .await
            .expect("the server answers");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

#[tokio::test]
async fn chunked_body_over_the_cap_is_413_json() {
    let (sts, _issuers) = TestSts::standard().await;
    let body = format!("grant_type={GRANT}&padding=CANARY{}", "A".repeat(70_000));
    let (status, headers, text) = post_chunked(&sts.url, body.as_bytes()).await;
    assert_eq!(status, 413, "{headers:?} {text}");
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header("cache-control"), Some("no-store"), "{headers:?}");
    assert_eq!(header("pragma"), Some("no-cache"), "{headers:?}");
    let json = text
        .find('{')
        .zip(text.rfind('}'))
        .map(|(a, b)| &text[a..=b])
        .unwrap_or("");
    let v: Value = serde_json::from_str(json).unwrap_or(Value::Null);
    assert_eq!(v["error"], "invalid_request", "{text}");
    assert!(v["error_description"].is_string(), "{text}");
    assert!(!text.contains("CANARYAAAA"), "{text}");
}

#[tokio::test]
async fn json_multipart_and_other_bodies_are_415() {
    let (sts, issuers) = TestSts::standard().await;
    let subject = issuers.svid("agent/triage");
    let json_body = json!({
        "grant_type": GRANT, "subject_token": subject,
        "subject_token_type": JWT_TYPE, "scope": GITHUB,
    })
    .to_string();
    let boundary = "XyZ0123456789boundary";
    let mut multipart = String::new();
    for (k, v) in [
        ("grant_type", GRANT),
        ("subject_token", subject.as_str()),
        ("subject_token_type", JWT_TYPE),
        ("scope", GITHUB),
    ] {
        multipart.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
        ));
    }
    multipart.push_str(&format!("--{boundary}--\r\n"));
    let good_form = form(&[
        ("grant_type", GRANT),
        ("subject_token", &subject),
        ("subject_token_type", JWT_TYPE),
        ("scope", GITHUB),
    ]);
    let cases = [
        ("application/json", json_body.clone()),
        ("application/json; charset=utf-8", json_body),
        (
            &*format!("multipart/form-data; boundary={boundary}"),
            multipart,
        ),
        ("text/plain", good_form.clone()),
        ("application/x-www-form-urlencoded-evil", good_form.clone()),
    ];
    for (content_type, body) in cases {
        let r = sts.post("/token", content_type, body).await;
        r.assert_error(415, "invalid_request", &secrets_of(&subject));
    }
    // No content type at all.
    let r = reply(
        sts.client
            .post(format!("{}/token", sts.url))
            .body(good_form.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.assert_error(415, "invalid_request", &secrets_of(&subject));
    // Control: the same parameters as a form, with a charset parameter.
    let r = sts
        .post(
            "/token",
            "application/x-www-form-urlencoded; charset=UTF-8",
            good_form,
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test]
async fn rate_limit_gives_429_with_retry_after() {
    let issuers = Issuers::start().await;
    let sts = TestSts::start(
        &issuers.specs(),
        SCOPES,
        "[limits]\nrate_per_second = 1\nrate_burst = 2\n",
    )
    .await;
    let subject = issuers.k8s_token("triage");
    // The burst passes; then, within at most a few more tries, the identity is limited.
    for i in 0..2 {
        let r = sts.exchange_for(&subject, "docs.read").await;
        assert_eq!(r.status, 200, "burst request {i}: {r:?}");
    }
    let mut limited = None;
    for _ in 0..20 {
        let r = sts.exchange_for(&subject, "docs.read").await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 200, "{r:?}");
    }
    let r = limited.expect("the identity is rate limited");
    r.assert_error(429, "temporarily_unavailable", &secrets_of(&subject));
    assert!(r.json().get("access_token").is_none());
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1, "{r:?}");
    // Another identity has its own budget.
    let other = issuers.k8s_token("sales-bot");
    let r = sts.exchange_for(&other, "docs.read").await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test]
async fn unknown_issuer_is_invalid_request_and_never_contacted() {
    let (sts, issuers) = TestSts::standard().await;
    // A real issuer with a real JWKS, just not configured.
    let rogue = TestIssuer::start(
        "https://evil.example",
        "attacker-es256.pem",
        Algorithm::ES256,
        STS_ISSUER,
    )
    .await;
    let token = rogue.token(&rogue.claims(TRIAGE_SVID));
    assert_refused(&sts, &token, GITHUB, "unknown issuer").await;
    // Close to a configured issuer is not it.
    for iss in [
        "https://spire.example.org/",
        "http://spire.example.org",
        "https://SPIRE.example.org",
        "https://spire.example.org.evil.example",
        "",
    ] {
        let claims = edit(
            &good_claims(&issuers.spire, TRIAGE_SVID),
            &[("iss", Some(json!(iss)))],
        );
        let token = issuers.spire.token(&claims);
        assert_refused(&sts, &token, GITHUB, iss).await;
    }
    assert_eq!(rogue.fetches(), 0, "an unconfigured JWKS is never fetched");
}

#[tokio::test]
async fn same_sub_from_another_trust_gets_nothing_extra() {
    let issuers = Issuers::start().await;
    let staging = TestIssuer::start(
        "https://k8s-staging.example.org",
        "idp-es256.pem",
        Algorithm::ES256,
        STS_ISSUER,
    )
    .await;
    let mut specs = issuers.specs();
    specs.push(TrustSpec {
        name: "k8s-staging",
        issuer: &staging,
        domains: &[],
    });
    let sts = TestSts::start(&specs, SCOPES, "").await;
    // Controls: the sub from the trust the catalogue names.
    let prod = issuers.k8s_token("triage");
    assert_accepted(&sts, &prod, GITHUB, "k8s-prod triage").await;
    assert_accepted(&sts, &prod, "docs.read", "k8s-prod triage").await;
    assert_accepted(&sts, &issuers.svid("agent/triage"), GITHUB, "spire svid").await;
    // The same subjects from another trust: granted nothing.
    for (sub, scope) in [
        (TRIAGE_SA, GITHUB),
        (TRIAGE_SA, "docs.read"),
        (TRIAGE_SA, "slack.message.post"),
        // A SPIFFE ID from a trust that does not list the example.org trust domain.
        (TRIAGE_SVID, GITHUB),
    ] {
        let token = staging.token(&good_claims(&staging, sub));
        let r = sts.exchange_for(&token, scope).await;
        r.assert_error(400, "invalid_scope", &secrets_of(&token));
    }
    // Nor from the corporate IdP (configured, but named for nothing here).
    let token = issuers.idp.token(&good_claims(&issuers.idp, TRIAGE_SVID));
    let r = sts.exchange_for(&token, GITHUB).await;
    r.assert_error(400, "invalid_scope", &secrets_of(&token));
}

#[tokio::test]
async fn token_issued_by_this_sts_is_not_a_subject_token() {
    let (sts, issuers) = TestSts::standard().await;
    let r = sts
        .exchange_for(&issuers.k8s_token("triage"), "docs.read")
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let own = r.token();
    verify_independently(&sts.url, &own, "https://docs.internal").await;
    for scope in ["docs.read", GITHUB] {
        assert_refused(&sts, &own, scope, "own token as subject").await;
    }
    // Nor as the actor of a delegation.
    let r = sts
        .exchange_delegated(&issuers.user_token("alice@example.org"), &own, GITHUB)
        .await;
    r.assert_error(400, "invalid_request", &secrets_of(&own));
    // Nor under the access-token type.
    let r = sts
        .exchange(&[
            ("grant_type", GRANT),
            ("subject_token", &own),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
            ("scope", "docs.read"),
        ])
        .await;
    r.assert_error(400, "invalid_request", &secrets_of(&own));
}

// ---------------------------------------------------------------------------------
// Signatures and headers.

#[tokio::test]
async fn alg_none_and_empty_signatures_are_refused() {
    let (sts, issuers) = TestSts::standard().await;
    let spire = &issuers.spire;
    let claims = good_claims(spire, TRIAGE_SVID);
    assert_accepted(&sts, &spire.token(&claims), GITHUB, "control").await;
    let mut tokens = Vec::new();
    for alg in ["none", "None", "NONE", "nOnE"] {
        for kid in [None, Some(spire.kid.as_str())] {
            let mut header = json!({"alg": alg, "typ": "JWT"});
            if let Some(kid) = kid {
                header["kid"] = json!(kid);
            }
            let claims = good_claims(spire, TRIAGE_SVID);
            let input = unsigned(&header, &claims);
            tokens.push(format!("{input}."));
            tokens.push(input.clone());
            // `none` with some signature bytes anyway.
            tokens.push(format!("{input}.{}", b64(b"AAAA")));
        }
    }
    // The real header with the signature segment emptied or missing.
    let real = spire.token(&good_claims(spire, TRIAGE_SVID));
    let input = real.rsplit_once('.').unwrap().0.to_string();
    tokens.push(format!("{input}."));
    tokens.push(input.clone());
    tokens.push(format!("{input}.."));
    tokens.push(format!("{input}.{}", b64(b"")));
    for token in &tokens {
        assert_refused(&sts, token, GITHUB, token).await;
    }
}

#[tokio::test]
async fn hs256_keyed_with_the_issuer_public_key_is_refused() {
    let (sts, issuers) = TestSts::standard().await;
    for (issuer, sub) in [(&issuers.spire, TRIAGE_SVID), (&issuers.k8s, TRIAGE_SA)] {
        assert_accepted(
            &sts,
            &issuer.token(&good_claims(issuer, sub)),
            GITHUB,
            "control",
        )
        .await;
        let document = published_jwks(issuer).await;
        let jwks: Value = serde_json::from_str(&document).unwrap();
        let jwk = &jwks["keys"][0];
        let spki = spki_of(jwk);
        let spki_pem = pem_text("PUBLIC KEY", &spki);
        let mut secrets: Vec<Vec<u8>> = vec![
            spki_pem.clone().into_bytes(),
            spki_pem.trim_end().as_bytes().to_vec(),
            spki_pem.replace('\n', "\r\n").into_bytes(),
            spki.clone(),
            jwk.to_string().into_bytes(),
            serde_json::to_string_pretty(jwk).unwrap().into_bytes(),
            document.into_bytes(),
        ];
        if jwk["kty"] == "RSA" {
            let pkcs1 = pkcs1_of(jwk);
            secrets.push(pem_text("RSA PUBLIC KEY", &pkcs1).into_bytes());
            secrets.push(pkcs1);
        } else {
            let x = unb64(jwk["x"].as_str().unwrap());
            let y = unb64(jwk["y"].as_str().unwrap());
            secrets.push([&[4u8][..], &x, &y].concat());
        }
        for secret in &secrets {
            let key = EncodingKey::from_secret(secret);
            for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
                let alg_name = format!("{alg:?}");
                for header in [
                    json!({"alg": alg_name, "kid": issuer.kid, "typ": "JWT"}),
                    json!({"alg": alg_name, "typ": "JWT"}),
                ] {
                    let token = signed(&header, &good_claims(issuer, sub), &key, alg);
                    assert_refused(&sts, &token, GITHUB, &format!("{header}")).await;
                }
            }
        }
    }
}

#[tokio::test]
async fn ecdsa_zero_der_and_truncated_signatures_are_refused() {
    let (sts, issuers) = TestSts::standard().await;
    let spire = &issuers.spire;
    let real = spire.token(&good_claims(spire, TRIAGE_SVID));
    let (input, sig) = real.rsplit_once('.').unwrap();
    let fixed = unb64(sig);
    assert_eq!(fixed.len(), 64, "ES256 JWS signatures are r || s");
    // The conversion below is right: the same r, s in the fixed form verify.
    let back = format!("{input}.{}", b64(&fixed));
    assert_accepted(&sts, &back, GITHUB, "control").await;

    // P-256 group order n: r = s = n is "zero" modulo n (CVE-2022-21449's cousin).
    let n =
        hex::decode("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551").unwrap();
    // Each bad signature goes on a fresh signing input (a new jti), so no refusal can
    // be a cache effect of another.
    let fresh = || {
        let t = spire.token(&good_claims(spire, TRIAGE_SVID));
        let (i, s) = t.rsplit_once('.').unwrap();
        (i.to_string(), unb64(s))
    };
    let bad: Vec<SigMutation> = vec![
        // r = s = 0, fixed and DER.
        Box::new(|_| vec![0u8; 64]),
        Box::new(|_| der_seq(&[&der_uint(&[0]), &der_uint(&[0])])),
        // r = s = n.
        Box::new(|_| [n.as_slice(), n.as_slice()].concat()),
        // The right signature, DER-encoded.
        Box::new(ecdsa_fixed_to_der),
        // Truncated: one byte short, r alone.
        Box::new(|s| s[..63].to_vec()),
        Box::new(|s| s[..32].to_vec()),
        // One byte too many; r and s swapped.
        Box::new(|s| [s, &[0u8][..]].concat()),
        Box::new(|s| [&s[32..], &s[..32]].concat()),
    ];
    let mut tokens = Vec::new();
    for f in &bad {
        let (i, s) = fresh();
        tokens.push(format!("{i}.{}", b64(&f(&s))));
    }
    // A base64url segment cut mid-character.
    let (i, s) = fresh();
    let text = b64(&s);
    tokens.push(format!("{i}.{}", &text[..text.len() - 1]));
    for token in &tokens {
        assert_refused(&sts, token, GITHUB, token).await;
    }
    // The exact DER form of the original, valid signature is refused too.
    let der_of_real = format!("{input}.{}", b64(&ecdsa_fixed_to_der(&fixed)));
    assert_refused(&sts, &der_of_real, GITHUB, "DER signature of a valid token").await;
}

#[tokio::test]
async fn attacker_signature_under_the_real_kid_is_refused() {
    let (sts, issuers) = TestSts::standard().await;
    let spire = &issuers.spire;
    let evil = attacker();
    assert_accepted(&sts, &issuers.svid("agent/triage"), GITHUB, "control").await;
    let before = spire.fetches();
    for header in [
        spire.header(),
        json!({"alg": "ES256"}),
        json!({"alg": "ES256", "kid": evil.kid}),
    ] {
        let token = evil.sign(&header, &good_claims(spire, TRIAGE_SVID));
        assert_refused(&sts, &token, GITHUB, &header.to_string()).await;
    }
    assert!(spire.fetches() <= before + 1);
}

#[tokio::test]
async fn jku_and_x5u_headers_fetch_nothing() {
    let issuers = Issuers::start().await;
    // A deadline shorter than the JWKS fetch timeout: an outbound fetch to a
    // black-holed address would turn the refusal into a 503.
    let sts = TestSts::start(
        &issuers.specs(),
        SCOPES,
        "[limits]\nrequest_timeout = \"2s\"\n",
    )
    .await;
    let spire = &issuers.spire;
    let evil = attacker();
    let (evil_url, hits) = counting_server(json!({ "keys": [evil.jwk] })).await;
    assert_accepted(&sts, &issuers.svid("agent/triage"), GITHUB, "control").await;
    let before = spire.fetches();
    let metadata = "http://169.254.169.254/latest/meta-data/";
    let mut headers = Vec::new();
    for url in [
        format!("{evil_url}/jwks.json"),
        metadata.to_string(),
        "http://127.0.0.1:1/jwks.json".to_string(),
    ] {
        for kid in [evil.kid, spire.kid.as_str()] {
            headers.push(json!({"alg": "ES256", "kid": kid, "jku": url}));
            headers.push(json!({"alg": "ES256", "kid": kid, "x5u": url}));
        }
        headers.push(json!({"alg": "ES256", "jku": url, "x5u": url}));
    }
    for header in &headers {
        let token = evil.sign(header, &good_claims(spire, TRIAGE_SVID));
        let r = sts.exchange_for(&token, GITHUB).await;
        r.assert_error(400, "invalid_request", &secrets_of(&token));
    }
    // Give any fetch started in the background a moment to land.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a header-named URL was fetched"
    );
    assert!(
        spire.fetches() <= before + 1,
        "unknown kids refetch the configured JWKS at most once per cooldown"
    );
}

#[tokio::test]
async fn embedded_jwk_and_x5c_choose_nothing() {
    let (sts, issuers) = TestSts::standard().await;
    let spire = &issuers.spire;
    let evil = attacker();
    let cert = evil.self_signed_cert();
    assert_accepted(&sts, &issuers.svid("agent/triage"), GITHUB, "control").await;
    let mut headers = Vec::new();
    for kid in [None, Some(evil.kid), Some(spire.kid.as_str())] {
        let mut with_jwk = json!({"alg": "ES256", "jwk": evil.jwk});
        let mut with_x5c = json!({"alg": "ES256", "x5c": [cert]});
        let mut both = json!({"alg": "ES256", "jwk": evil.jwk, "x5c": [cert]});
        if let Some(kid) = kid {
            for h in [&mut with_jwk, &mut with_x5c, &mut both] {
                h["kid"] = json!(kid);
            }
        }
        headers.extend([with_jwk, with_x5c, both]);
    }
    for header in &headers {
        let token = evil.sign(header, &good_claims(spire, TRIAGE_SVID));
        let r = sts.exchange_for(&token, GITHUB).await;
        r.assert_error(400, "invalid_request", &secrets_of(&token));
    }
    // An issuer that also does not know the attacker: the embedded key is for another
    // iss's subject (the corporate IdP's user).
    let token = evil.sign(
        &json!({"alg": "ES256", "jwk": evil.jwk, "kid": issuers.idp.kid}),
        &good_claims(&issuers.idp, "alice@example.org"),
    );
    assert_refused(&sts, &token, "docs.read", "idp + embedded jwk").await;
}

#[tokio::test]
async fn crit_header_is_refused() {
    let (sts, issuers) = TestSts::standard().await;
    let spire = &issuers.spire;
    assert_accepted(&sts, &issuers.svid("agent/triage"), GITHUB, "control").await;
    let n = now();
    for extra in [
        json!({"crit": ["exp"], "exp": n + 60}),
        json!({"crit": ["b64"], "b64": false}),
        json!({"crit": ["b64"], "b64": true}),
        json!({"crit": ["http://example.invalid/unknown"], "http://example.invalid/unknown": 1}),
        json!({"crit": []}),
        json!({"crit": "exp"}),
    ] {
        let mut header = spire.header();
        for (k, v) in extra.as_object().unwrap() {
            header[k] = v.clone();
        }
        // Signed by the real key: only the header is wrong.
        let token = spire.token_with_header(&header, &good_claims(spire, TRIAGE_SVID));
        assert_refused(&sts, &token, GITHUB, &header.to_string()).await;
    }
}

#[tokio::test]
async fn random_kid_flood_refetches_the_jwks_at_most_once() {
    let (sts, issuers) = TestSts::standard().await;
    let spire = &issuers.spire;
    let evil = attacker();
    assert_accepted(&sts, &issuers.svid("agent/triage"), GITHUB, "warm the JWKS").await;
    let before = spire.fetches();
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let header = json!({"alg": "ES256", "kid": jti()});
        let token = evil.sign(&header, &good_claims(spire, TRIAGE_SVID));
        let (client, url) = (sts.client.clone(), sts.url.clone());
        flood.spawn(async move {
            let body = form(&[
                ("grant_type", GRANT),
                ("subject_token", &token),
                ("subject_token_type", JWT_TYPE),
                ("scope", GITHUB),
            ]);
            let r = client
                .post(format!("{url}/token"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap();
            (token, reply(r).await)
        });
    }
    while let Some(done) = flood.join_next().await {
        let (token, r) = done.unwrap();
        r.assert_error(400, "invalid_request", &secrets_of(&token));
    }
    let after = spire.fetches();
    assert!(
        after <= before + 1,
        "{} JWKS fetches for one flood (at most 1 per cooldown)",
        after - before
    );
    // The good token still works from the cached keys.
    assert_accepted(&sts, &issuers.svid("agent/triage"), GITHUB, "after flood").await;
}

// ---------------------------------------------------------------------------------
// Claims.

#[tokio::test]
async fn aud_must_be_present_well_typed_and_name_this_sts() {
    let (sts, issuers) = TestSts::standard().await;
    let spire = &issuers.spire;
    for aud in [
        json!(STS_ISSUER),
        json!([STS_ISSUER]),
        json!(["x", STS_ISSUER]),
    ] {
        let token = spire.token(&edit(
            &good_claims(spire, TRIAGE_SVID),
            &[("aud", Some(aud.clone()))],
        ));
        assert_accepted(&sts, &token, GITHUB, &aud.to_string()).await;
    }
    for aud in [
        None,
        Some(json!(7)),
        Some(json!({"aud": STS_ISSUER})),
        Some(json!([])),
        Some(json!("https://other-sts.example")),
        Some(json!(["https://other-sts.example"])),
        Some(json!(format!("{STS_ISSUER}/"))),
        Some(json!([STS_ISSUER, 7])),
        Some(json!([[STS_ISSUER]])),
        Some(json!(null)),
        Some(json!(true)),
        Some(json!("")),
    ] {
        let why = format!("aud = {aud:?}");
        let token = spire.token(&edit(&good_claims(spire, TRIAGE_SVID), &[("aud", aud)]));
        assert_refused(&sts, &token, GITHUB, &why).await;
    }
}

#[tokio::test]
async fn exp_must_be_present_numeric_bounded_and_unexpired() {
    let (sts, issuers) = TestSts::standard().await;
    let spire = &issuers.spire;
    let n = now();
    assert_accepted(
        &sts,
        &spire.token(&good_claims(spire, TRIAGE_SVID)),
        GITHUB,
        "control",
    )
    .await;
    let cases: Vec<(&str, ClaimEdits)> = vec![
        ("missing", vec![("exp", None)]),
        ("string", vec![("exp", Some(json!((n + 600).to_string())))]),
        ("negative", vec![("exp", Some(json!(-1)))]),
        ("very negative", vec![("exp", Some(json!(-(n as i64))))]),
        ("null", vec![("exp", Some(json!(null)))]),
        ("array", vec![("exp", Some(json!([n + 600])))]),
        ("boolean", vec![("exp", Some(json!(true)))]),
        // Far future: beyond the trust's 24 h max_token_lifetime, by one hour and by
        // centuries (u64::MAX, a float beyond any date).
        ("25 h", vec![("exp", Some(json!(n + 25 * 3600)))]),
        ("10 years", vec![("exp", Some(json!(n + 10 * 365 * 86400)))]),
        ("u64::MAX", vec![("exp", Some(json!(u64::MAX)))]),
        ("1e300", vec![("exp", Some(json!(1e300)))]),
        // Lifetime within the cap but starting long ago is fine only if unexpired:
        // expired two minutes ago, beyond the 30 s leeway.
        (
            "expired",
            vec![
                ("exp", Some(json!(n - 120))),
                ("iat", Some(json!(n - 600))),
                ("nbf", Some(json!(n - 600))),
            ],
        ),
        ("exp before iat", vec![("exp", Some(json!(n - 1)))]),
    ];
    for (why, changes) in cases {
        let token = spire.token(&edit(&good_claims(spire, TRIAGE_SVID), &changes));
        assert_refused(&sts, &token, GITHUB, why).await;
    }
}

#[tokio::test]
async fn iat_and_nbf_are_enforced() {
    let (sts, issuers) = TestSts::standard().await;
    let spire = &issuers.spire;
    let n = now();
    // nbf is optional; iat slightly in the past is fine.
    let token = spire.token(&edit(
        &good_claims(spire, TRIAGE_SVID),
        &[("nbf", None), ("iat", Some(json!(n - 60)))],
    ));
    assert_accepted(&sts, &token, GITHUB, "control").await;
    let cases: Vec<(&str, ClaimEdits)> = vec![
        ("iat missing", vec![("iat", None)]),
        ("iat string", vec![("iat", Some(json!(n.to_string())))]),
        (
            "iat in the future",
            vec![
                ("iat", Some(json!(n + 3600))),
                ("exp", Some(json!(n + 7200))),
            ],
        ),
        (
            "nbf in the future",
            vec![
                ("nbf", Some(json!(n + 3600))),
                ("exp", Some(json!(n + 7200))),
            ],
        ),
        ("nbf string", vec![("nbf", Some(json!(n.to_string())))]),
        ("nbf negative", vec![("nbf", Some(json!(-1)))]),
    ];
    for (why, changes) in cases {
        let token = spire.token(&edit(&good_claims(spire, TRIAGE_SVID), &changes));
        assert_refused(&sts, &token, GITHUB, why).await;
    }
}

#[tokio::test]
async fn iss_must_be_a_string_and_sub_a_non_empty_string() {
    let (sts, issuers) = TestSts::standard().await;
    let spire = &issuers.spire;
    let iss = spire.iss.as_str();
    let cases: Vec<(&str, ClaimEdits)> = vec![
        ("iss array", vec![("iss", Some(json!([iss])))]),
        (
            "iss array with another",
            vec![("iss", Some(json!([iss, "https://evil.example"])))],
        ),
        ("iss object", vec![("iss", Some(json!({"iss": iss})))]),
        ("iss missing", vec![("iss", None)]),
        ("iss null", vec![("iss", Some(json!(null)))]),
        ("sub missing", vec![("sub", None)]),
        ("sub number", vec![("sub", Some(json!(42)))]),
        ("sub array", vec![("sub", Some(json!([TRIAGE_SVID])))]),
        (
            "sub object",
            vec![("sub", Some(json!({"id": TRIAGE_SVID})))],
        ),
        ("sub null", vec![("sub", Some(json!(null)))]),
        ("sub empty", vec![("sub", Some(json!("")))]),
    ];
    for (why, changes) in cases {
        let token = spire.token(&edit(&good_claims(spire, TRIAGE_SVID), &changes));
        assert_refused(&sts, &token, GITHUB, why).await;
    }
    // A payload that is not a JSON object at all.
    let header = b64(spire.header().to_string().as_bytes());
    for payload in [json!([1, 2]), json!("claims"), json!(null)] {
        let input = format!("{header}.{}", b64(payload.to_string().as_bytes()));
        let sig = jsonwebtoken::crypto::sign(
            input.as_bytes(),
            &EncodingKey::from_ec_pem(&fixture("spire-es256.pem")).unwrap(),
            Algorithm::ES256,
        )
        .unwrap();
        assert_refused(&sts, &format!("{input}.{sig}"), GITHUB, "payload").await;
    }
}

// ---------------------------------------------------------------------------------
// Identities are what their specs say; claims and headers that would change meaning.

/// SPIFFE IDs that break the SPIFFE ID syntax never reach a pattern (the catalogue
/// grants `spiffe://example.org/agent/triage`); a `sub` with bidirectional or
/// zero-width characters, an `nbf` after `exp`, an `act` inside a workload token, and
/// header parameters that change processing are refused as invalid tokens.
#[tokio::test]
async fn malformed_identities_claims_and_headers_are_refused() {
    let (sts, issuers) = TestSts::standard().await;
    let spire = &issuers.spire;
    let n = now();
    let svid = |sub: &str| json!({"sub": sub, "aud": [STS_ISSUER], "exp": n + 300, "iat": n, "iss": spire.iss});
    let good = spire.token(&svid("spiffe://example.org/agent/triage"));
    assert_eq!(
        sts.exchange_for(&good, "github.issues.create").await.status,
        200
    );

    let mut bad: Vec<(&str, String)> = [
        "spiffe://example.org/agent/../agent/triage",
        "spiffe://example.org/agent/./triage",
        "spiffe://example.org/agent/triage/",
        "spiffe://example.org//agent/triage",
        "spiffe://Example.org/agent/triage",
        "SPIFFE://example.org/agent/triage",
        "spiffe://example.org/agent/%74riage",
        "spiffe://example.org:443/agent/triage",
        "spiffe://example.org/agent/triage\u{200B}",
        "spiffe://example.org/agent/\u{202E}egairt",
    ]
    .into_iter()
    .map(|sub| (sub, spire.token(&svid(sub))))
    .collect();
    let mut claims = svid("spiffe://example.org/agent/triage");
    claims["nbf"] = json!(n + 10);
    claims["exp"] = json!(n + 5);
    bad.push(("nbf after exp", spire.token(&claims)));
    let mut claims = svid("spiffe://example.org/agent/triage");
    claims["act"] = json!({"sub": "spiffe://example.org/agent/other"});
    bad.push(("act in a workload token", spire.token(&claims)));
    for extra in [
        json!({"zip": "DEF"}),
        json!({"b64": false}),
        json!({"cty": "JWT"}),
    ] {
        let mut header = spire.header();
        header
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let claims = svid("spiffe://example.org/agent/triage");
        bad.push((
            "header parameter",
            spire.token_with_header(&header, &claims),
        ));
    }
    for (what, token) in bad {
        let r = sts.exchange_for(&token, "github.issues.create").await;
        assert_eq!(r.status, 400, "{what}: {r:?}");
        r.assert_error(400, "invalid_request", &[&token]);
    }
}

/// A subject token's `may_act` (RFC 8693 §4.4) decides which actor may act for it:
/// another actor is refused even where the catalogue would allow it.
#[tokio::test]
async fn may_act_names_the_only_actor_allowed() {
    let (sts, issuers) = TestSts::standard().await;
    let n = now();
    let user = |may_act: Value| {
        let mut claims = json!({
            "iss": issuers.idp.iss, "sub": "alice@example.org", "aud": STS_ISSUER,
            "exp": n + 900, "iat": n,
        });
        if !may_act.is_null() {
            claims["may_act"] = may_act;
        }
        issuers.idp.token(&claims)
    };
    let triage = "system:serviceaccount:agents:triage";
    let actor = issuers.k8s_token("triage");
    let cases = [
        (Value::Null, 200),
        (json!({"sub": triage}), 200),
        (json!({"sub": triage, "iss": issuers.k8s.iss}), 200),
        (json!({"sub": "system:serviceaccount:agents:other"}), 400),
        (
            json!({"sub": triage, "iss": "https://elsewhere.example"}),
            400,
        ),
        (json!({"iss": issuers.k8s.iss}), 400),
        (json!("triage"), 400),
    ];
    for (may_act, status) in cases {
        let r = sts
            .exchange_delegated(&user(may_act.clone()), &actor, "github.issues.create")
            .await;
        assert_eq!(r.status, status, "may_act {may_act}: {r:?}");
        if status == 400 {
            r.assert_error(400, "invalid_request", &[&actor]);
        }
    }
}
