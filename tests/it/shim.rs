//! The shim (`agent-sts shim`, SECURITY.md property 9) over real HTTP: an in-process
//! STS mints the tokens, the shim verifies them through the STS's JWKS and forwards to
//! an upstream on 127.0.0.1 (the built-in echo, or a hostile one written here). Every
//! refusal is checked for its status, code, challenge and `Cache-Control: no-store`,
//! and for what did NOT happen: the upstream's hit count. Requests an HTTP client
//! would normalise (dot segments, backslashes, absolute-form, bad framing) are written
//! byte for byte over a TcpStream.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_sts::config::ShimConfig;
use agent_sts::dev::echo::Echo;
use agent_sts::keys::signing_key::SigningAlgorithm;
use agent_sts::keys::signing_key::SigningKey;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;
use crate::process::*;

pub const GITHUB: &str = "https://github-shim.internal";
const SLACK: &str = "https://slack-shim.internal";
const DOCS: &str = "https://docs.internal";
pub const ISSUES: &str = "/repos/acme/widgets/issues";
pub const TEMPLATE: &str = "/repos/{owner}/{repo}/issues";
/// The credential part (after the scheme) of [`CANARY_CREDENTIAL`].
pub const CANARY_PART: &str = "ghp_CANARY0secret0value0d41d8cd98f00b204e980";

// ---------------------------------------------------------------------------------
// Harness: a shim in front of an upstream, upstreams, raw HTTP, forged tokens.

/// A shim serving in-process on 127.0.0.1:0.
pub struct TestShim {
    pub url: String,
    pub dir: tempfile::TempDir,
    pub audit_path: PathBuf,
    pub config_path: PathBuf,
}

impl TestShim {
    /// A shim for `audience` in front of `upstream`, trusting `sts`, with its catalogue
    /// and secrets; `extra` lands at the end of `[shim]` (and may open more sections).
    pub async fn start(sts: &TestSts, audience: &str, upstream: &str, extra: &str) -> TestShim {
        let scopes = sts.dir.path().join("scopes");
        Self::start_with_scopes(sts, audience, upstream, extra, &scopes).await
    }

    async fn start_with_scopes(
        sts: &TestSts,
        audience: &str,
        upstream: &str,
        extra: &str,
        scopes: &Path,
    ) -> TestShim {
        let shim = Self::write_config(sts, audience, upstream, extra, scopes);
        let app = shim.build().await;
        shim.serve(app).await
    }

    /// The shim built from the configuration written at `config_path`.
    pub async fn build(&self) -> agent_sts::shim::ShimApp {
        let config = ShimConfig::load(&self.config_path, &BTreeMap::new()).unwrap();
        agent_sts::shim::build(&config).await.unwrap()
    }

    /// Serves `app` on 127.0.0.1:0; `url` is set.
    pub async fn serve(self, app: agent_sts::shim::ShimApp) -> TestShim {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(app.serve(listener));
        TestShim { url, ..self }
    }

    /// Switches the written configuration to Vault's secret store, logging in with a
    /// token of `policies` (`max_stale` 2 s).
    pub async fn use_vault(&self, vault: &crate::openbao::OpenBao, policies: &[&str]) {
        let text = std::fs::read_to_string(&self.config_path)
            .unwrap()
            .replace("store = \"file\"", "store = \"vault\"");
        let auth = vault.token_auth(policies).await;
        let vault_section = crate::vault::vault_section(vault, &auth, "2s");
        std::fs::write(&self.config_path, format!("{text}\n{vault_section}")).unwrap();
    }

    /// Only writes `shim.toml` (for `agent-sts shim --config`); `url` stays empty.
    pub fn write_config(
        sts: &TestSts,
        audience: &str,
        upstream: &str,
        extra: &str,
        scopes: &Path,
    ) -> TestShim {
        let dir = tempfile::tempdir().unwrap();
        let audit_path = dir.path().join("shim-audit.log");
        let config_path = dir.path().join("shim.toml");
        let text = format!(
            r#"[shim]
listen = "127.0.0.1:0"
audience = "{audience}"
upstream = "{upstream}"
issuer = "{STS_ISSUER}"
jwks_uri = "{sts}/.well-known/jwks.json"
scopes_dir = "{scopes}"
{extra}

[secrets]
store = "file"
file = "{secrets}"

[audit]
path = "{audit}"
summary_interval = "1s"
"#,
            sts = sts.url,
            scopes = scopes.display(),
            secrets = sts.dir.path().join("secrets.toml").display(),
            audit = audit_path.display(),
        );
        std::fs::write(&config_path, text).unwrap();
        TestShim {
            url: String::new(),
            dir,
            audit_path,
            config_path,
        }
    }

    pub fn audit(&self) -> Vec<Value> {
        audit_lines(&self.audit_path)
    }

    /// The audit line with `reason` (exactly one).
    fn audit_line(&self, reason: &str) -> Value {
        let lines: Vec<Value> = self
            .audit()
            .into_iter()
            .filter(|l| l["reason"] == reason)
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "audit lines with reason {reason}: {lines:?}"
        );
        lines.into_iter().next().unwrap()
    }
}

/// `s` with its last character changed: on a JWT, a signature that no longer verifies
/// (always a different character; a signature's last base64url character carries only
/// 2 bits, so overwriting it with a fixed one would leave a quarter of them unchanged).
/// Refusals in a shim's audit log by reason, summary lines counted by their `count`,
/// once at least `at_least` are there (the summary of repeated anonymous refusals is
/// written every `summary_interval`, 1 s here) or after 10 s.
async fn refusals_audited(shim: &TestShim, at_least: u64) -> BTreeMap<String, u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for line in shim.audit() {
            if line["decision"] != "deny" {
                continue;
            }
            let n = line["count"].as_u64().unwrap_or(1);
            *counts
                .entry(line["reason"].as_str().unwrap().to_string())
                .or_default() += n;
        }
        if counts.values().sum::<u64>() >= at_least || Instant::now() > deadline {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn audit_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The echo upstream on 127.0.0.1:0.
pub async fn start_echo() -> (Arc<Echo>, String) {
    let echo = Echo::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    agent_sts::dev::echo::spawn(echo.clone(), listener);
    (echo, url)
}

/// An upstream answering every request with `answer`; counts its hits.
pub async fn start_upstream<F>(answer: F) -> (Arc<AtomicUsize>, String)
where
    F: Fn(HeaderMap) -> Response + Clone + Send + Sync + 'static,
{
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let router = axum::Router::new().fallback(move |headers: HeaderMap| {
        counter.fetch_add(1, Ordering::SeqCst);
        let answer = answer.clone();
        async move { answer(headers) }
    });
    (hits, spawn_router(router).await)
}

/// An agent's HTTP client: never follows a redirect itself.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// `method url+path` with `Authorization: Bearer TOKEN` and a JSON `body` (if any).
pub async fn call(url: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> Reply {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client().request(method, format!("{url}{path}"));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if !body.is_empty() {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    reply(request.send().await.unwrap()).await
}

/// What the echo upstream saw of a proxied `POST ISSUES` with a JSON body, the bearer
/// `token` and the extra `headers` (the call must succeed).
pub async fn echoed(url: &str, token: &str, headers: &[(&str, &str)], echo: &Echo) -> Value {
    let mut request = client()
        .post(format!("{url}{ISSUES}"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body("{}");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let r = reply(request.send().await.unwrap()).await;
    assert_eq!(r.status, 200, "{r:?}");
    echo.last().unwrap()
}

/// An access token for `action`, exchanged from the `triage` workload token.
pub async fn access_token(sts: &TestSts, issuers: &Issuers, action: &str) -> String {
    let r = sts.exchange_for(&issuers.k8s_token("triage"), action).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.token()
}

/// Where most shim tests start: the standard STS and issuers, an echo upstream, a
/// shim for `GITHUB` in front of it (`extra` at the end of `[shim]`), and a
/// `github.issues.create` token. Keep the STS and the issuers bound (as `_sts`,
/// `_issuers` when unused): they hold the servers and files the shim relies on.
pub async fn github_world(extra: &str) -> (TestSts, Issuers, Arc<Echo>, TestShim, String) {
    let (sts, issuers) = TestSts::standard().await;
    let (echo, upstream) = start_echo().await;
    let shim = TestShim::start(&sts, GITHUB, &upstream, extra).await;
    let token = access_token(&sts, &issuers, "github.issues.create").await;
    (sts, issuers, echo, shim, token)
}

/// Writes `request` to the server at `url` as is and reads the answer until the server
/// closes (requests carry `Connection: close`) or 3 s pass: (status, whole answer).
pub async fn raw(url: &str, request: &[u8]) -> (u16, String) {
    let addr = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before it has read everything: keep going.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        let mut chunk = [0u8; 8192];
        while let Ok(n @ 1..) = stream.read(&mut chunk).await {
            answer.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

/// A raw `POST TARGET` with the bearer `token`, a two-byte JSON body and `extra`
/// header lines (each ending in CRLF).
fn raw_post(target: &str, token: &str, extra: &str) -> Vec<u8> {
    format!(
        "POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n{extra}\r\n{{}}"
    )
    .into_bytes()
}

/// Status, every header and the body of a reply, as one text to search.
fn everything(r: &Reply) -> String {
    let mut text = format!("{}\n", r.status);
    for (name, value) in &r.headers {
        text.push_str(&format!(
            "{name}: {}\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    text.push_str(&r.text);
    text
}

/// A shim refusal: status, `error` code, `Cache-Control: no-store`, the RFC 6750
/// challenge for 401 and 403, and a body that does not quote `never`.
fn assert_refused(r: &Reply, status: u16, code: &str, never: &[&str]) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.error(), code, "{r:?}");
    assert!(r.json()["error_description"].is_string(), "{r:?}");
    assert_eq!(
        r.headers.get("cache-control").map(|v| v.as_bytes()),
        Some(&b"no-store"[..]),
        "{r:?}"
    );
    let challenge = match status {
        401 => Some("invalid_token"),
        403 => Some("insufficient_scope"),
        _ => None,
    };
    if let Some(challenge) = challenge {
        let www = r.headers.get("www-authenticate").unwrap().to_str().unwrap();
        assert!(www.starts_with("Bearer "), "{www}");
        assert!(www.contains(&format!("error=\"{challenge}\"")), "{www}");
    }
    let text = everything(r);
    for n in never {
        assert!(!text.contains(n), "refusal quotes its input: {r:?}");
    }
}

/// The claims of a compact JWS.
fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// The STS's own signing key, read from its key store.
pub fn sts_key(sts: &TestSts) -> SigningKey {
    let bytes = std::fs::read(sts.dir.path().join("keys/signing-keys.json")).unwrap();
    let ring: agent_sts::keys::StoredRing = serde_json::from_slice(&bytes).unwrap();
    let stored = ring.keys.first().unwrap();
    SigningKey::from_pem(stored.alg, &stored.private_key).unwrap()
}

/// `model`'s claims, edited, signed by `key` under `kid` with header `typ`.
fn sign_as(
    key: &SigningKey,
    kid: &str,
    typ: &str,
    model: &str,
    edit: impl FnOnce(&mut Value),
) -> String {
    let mut claims = claims_of(model);
    edit(&mut claims);
    let header = json!({"alg": key.algorithm.as_str(), "kid": kid, "typ": typ});
    key.sign_compact(header.to_string().as_bytes(), claims.to_string().as_bytes())
        .unwrap()
}

/// Every percent escape, with `upper` or lower hex, of the bytes outside RFC 3986's
/// unreserved set.
fn percent(s: &str, upper: bool) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ if upper => format!("%{b:02X}"),
            _ => format!("%{b:02x}"),
        })
        .collect()
}

/// What must never reach the agent for credential value `v` whose secret part is
/// `part`: each plain, percent-, form- and JSON-encoded, base64 in both alphabets
/// (padded or not), and the stretch of base64 that encodes only the credential when it
/// sits inside a longer blob at each of the three byte alignments.
/// `s` as serializers and templates write it when they escape some characters and
/// leave others: .NET's JSON writer (`\u002B` for `+`, `\u0022` for `"`), Python's
/// `quote` and JS `encodeURI` (`/` left alone), HTML templates (numeric and named
/// character references), and a mix of all of them, character by character.
fn mixed_spellings(s: &str) -> Vec<String> {
    let dotnet: String = s
        .chars()
        .map(|c| match c {
            '+' | '"' | '\'' | '<' | '>' | '&' => format!("\\u{:04X}", u32::from(c)),
            '\\' => "\\\\".to_string(),
            c => c.to_string(),
        })
        .collect();
    let quote = percent(s, true).replace("%2F", "/");
    let html: String = s
        .chars()
        .map(|c| match c {
            '+' => "&#43;".to_string(),
            '/' => "&#x2F;".to_string(),
            '=' => "&equals;".to_string(),
            '"' => "&quot;".to_string(),
            c if c.is_ascii_alphanumeric() => c.to_string(),
            c => format!("&#{};", u32::from(c)),
        })
        .collect();
    let mixed: String = s
        .chars()
        .enumerate()
        .map(|(i, c)| match i % 4 {
            0 => c.to_string(),
            1 => format!("%{:02x}", u32::from(c)),
            2 => format!("\\u{:04x}", u32::from(c)),
            _ => format!("&#x{:X};", u32::from(c)),
        })
        .collect();
    vec![dotnet, quote, html, mixed]
}

fn forbidden_forms(v: &str, part: &str) -> Vec<String> {
    let mut forms = Vec::new();
    for s in [v, part] {
        let json = serde_json::to_string(s).unwrap();
        let json = json[1..json.len() - 1].to_string();
        forms.extend(mixed_spellings(s));
        forms.extend([
            s.to_string(),
            percent(s, true),
            percent(s, false),
            form_urlencoded::byte_serialize(s.as_bytes()).collect(),
            json.replace('/', "\\/"),
            json,
            STANDARD_NO_PAD.encode(s),
            URL_SAFE_NO_PAD.encode(s),
        ]);
        for k in 0..3 {
            let shifted = format!("{}{s}", "x".repeat(k));
            for encoded in [STANDARD.encode(&shifted), URL_SAFE.encode(&shifted)] {
                forms.push(encoded[4..encoded.len() - 4].to_string());
            }
        }
    }
    forms.sort();
    forms.dedup();
    forms
}

fn assert_free_of(text: &str, forms: &[String], what: &str) {
    for form in forms {
        assert!(
            !text.contains(form.as_str()),
            "{what} holds the credential as {form:?}:\n{text}"
        );
    }
}

// ---------------------------------------------------------------------------------
// 1. The whole flow.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_flow_injects_the_credential_scrubs_it_from_the_answer_and_audits_the_call() {
    let (_sts, _issuers, echo, shim, token) = github_world("").await;
    let signature = token.rsplit('.').next().unwrap();

    let body = r#"{"title":"flaky test","body":"seen twice"}"#;
    let request = client()
        .post(format!("{}{ISSUES}?labels=bug", shim.url))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("x-forwarded-for", "10.9.8.7")
        .header("proxy-authorization", "Basic c3B5OnNweQ==")
        .header("accept-encoding", "gzip")
        .body(body);
    let r = reply(request.send().await.unwrap()).await;
    assert_eq!(r.status, 200, "{r:?}");

    // The upstream got the canonical request with the credential, and not the token.
    assert_eq!(echo.hits(), 1);
    let seen = echo.last().unwrap();
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["path"], ISSUES);
    assert_eq!(seen["query"], "labels=bug");
    assert_eq!(seen["body"], body);
    assert_eq!(seen["headers"]["authorization"], json!([CANARY_CREDENTIAL]));
    assert_eq!(seen["headers"]["accept-encoding"], json!(["identity"]));
    assert_eq!(seen["headers"]["content-type"], json!(["application/json"]));
    for dropped in ["x-forwarded-for", "proxy-authorization"] {
        assert!(
            seen["headers"].get(dropped).is_none(),
            "{dropped} forwarded: {seen}"
        );
    }
    let seen_text = seen.to_string();
    assert!(!seen_text.contains(&token) && !seen_text.contains(signature));

    // The agent got the echo with the credential redacted everywhere.
    let all = everything(&r);
    assert_free_of(
        &all,
        &forbidden_forms(CANARY_CREDENTIAL, CANARY_PART),
        "the answer",
    );
    assert!(all.contains("[redacted]"), "{all}");
    assert_eq!(r.json()["headers"]["authorization"], json!(["[redacted]"]));
    assert_eq!(r.headers["x-echo-authorization"], "[redacted]");
    assert_eq!(r.json()["body"], body);

    // One audit line for the call, and the chain verifies.
    let claims = claims_of(&token);
    let lines = shim.audit();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["shim"], GITHUB);
    assert_eq!(line["decision"], "allow");
    assert_eq!(line["reason"], "proxied");
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], TEMPLATE);
    assert_eq!(line["upstream_status"], 200);
    assert!(line["bytes_scrubbed"].as_u64().unwrap() > 0, "{line}");
    assert_eq!(line["subject"], claims["sub"]);
    assert_eq!(line["issuer"], STS_ISSUER);
    assert_eq!(line["client_id"], claims["client_id"]);
    assert_eq!(line["action"], "github.issues.create");
    assert_eq!(line["jti"], claims["jti"]);
    let audit = std::fs::read_to_string(&shim.audit_path).unwrap();
    assert!(!audit.contains(CANARY_PART) && !audit.contains(signature));
    assert_eq!(agent_sts::audit::verify(&shim.audit_path).unwrap().lines, 1);
}

// ---------------------------------------------------------------------------------
// 2. An upstream that hands the credential back in every encoding it can think of.

/// A credential whose encodings all differ from it: `/`, `+`, `=`, `"` and `\` change
/// under percent-, JSON- and form-encoding.
const TRICKY_PART: &str = r#"CANARY/tr1cky+cred=="q"\zz"#;

fn hand_back_in_every_encoding(headers: HeaderMap) -> Response {
    let v = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let part = v
        .split_once(' ')
        .map(|(_, p)| p.to_string())
        .unwrap_or_default();
    let json = serde_json::to_string(&v).unwrap();
    let form: String = form_urlencoded::byte_serialize(v.as_bytes()).collect();
    let mut lines = vec![
        format!("plain: {v}"),
        format!("part: {part}"),
        format!("json: {{\"token\":{json}}}"),
        format!("json-slash: {}", json.replace('/', "\\/")),
        format!("pct: {}", percent(&v, true)),
        format!("pct-lower: {}", percent(&v, false)),
        format!("pct-part: {}", percent(&part, true)),
        format!("form: {form}"),
    ];
    for (i, spelled) in mixed_spellings(&v)
        .into_iter()
        .chain(mixed_spellings(&part))
        .enumerate()
    {
        lines.push(format!("mixed-{i}: {spelled}"));
    }
    for s in [&v, &part] {
        for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
            lines.push(format!("b64: {}", engine.encode(s)));
        }
    }
    for prefix in ["x", "xy", "xyz", "user:"] {
        lines.push(format!(
            "blob: {}",
            STANDARD.encode(format!("{prefix}{v}!"))
        ));
        lines.push(format!(
            "blob-url: {}",
            URL_SAFE_NO_PAD.encode(format!("{prefix}{part}"))
        ));
    }
    let body = lines.join("\n");
    (
        axum::http::StatusCode::CREATED,
        axum::response::AppendHeaders([
            ("set-cookie", format!("session={v}; HttpOnly")),
            ("set-cookie", format!("b64={}", STANDARD.encode(&v))),
            (
                "location",
                format!("https://evil.example/cb?t={}", percent(&v, true)),
            ),
            ("x-token-json", json),
            ("x-token-part", part),
        ]),
        body,
    )
        .into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_handed_back_in_any_encoding_or_header_never_reaches_the_agent() {
    let (sts, issuers) = TestSts::standard().await;
    // The github credential becomes one whose encodings differ from it.
    let tricky = format!("Token {TRICKY_PART}");
    let secrets = secrets_toml().replacen(
        &format!("\"{CANARY_CREDENTIAL}\""),
        &serde_json::to_string(&tricky).unwrap(),
        1,
    );
    write_secret_file(&sts.dir.path().join("secrets.toml"), secrets);

    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    let (hits, upstream) = start_upstream(move |headers: HeaderMap| {
        if let Some(v) = headers.get("authorization") {
            log.lock().unwrap().push(v.to_str().unwrap().to_string());
        }
        hand_back_in_every_encoding(headers)
    })
    .await;
    let shim = TestShim::start(&sts, GITHUB, &upstream, "").await;
    let token = access_token(&sts, &issuers, "github.issues.create").await;

    let r = call(&shim.url, "POST", ISSUES, Some(&token), "{}").await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![tricky.clone()],
        "the upstream got the credential"
    );

    // Positive control: what the upstream sent holds every one of the forms.
    let forms = forbidden_forms(&tricky, TRICKY_PART);
    let mut headers = HeaderMap::new();
    headers.insert("authorization", tricky.parse().unwrap());
    let sent = hand_back_in_every_encoding(headers);
    let mut sent_text = format!("{:?}", sent.headers());
    let sent_body = axum::body::to_bytes(sent.into_body(), 1 << 20)
        .await
        .unwrap();
    sent_text.push_str(&String::from_utf8_lossy(&sent_body));
    for form in &forms {
        assert!(
            sent_text.contains(form.as_str()),
            "the upstream never sends {form:?}"
        );
    }
    assert_free_of(&everything(&r), &forms, "the answer");
    for line in r.text.lines() {
        assert!(line.contains("[redacted]"), "not scrubbed: {line}");
    }
    // Cookies the upstream sets (a session for the credential) are not relayed at all.
    assert!(r.headers.get("set-cookie").is_none(), "{r:?}");
    for name in ["location", "x-token-json", "x-token-part"] {
        let value = r.headers[name].to_str().unwrap();
        assert!(value.contains("[redacted]"), "{name}: {value}");
    }
    let line = shim.audit_line("proxied");
    assert_eq!(line["upstream_status"], 201);
    assert!(line["bytes_scrubbed"].as_u64().unwrap() > 20 * TRICKY_PART.len() as u64);
}

// ---------------------------------------------------------------------------------
// 3. Tokens: wrong audience, absent, malformed, not an access token, forged, expired.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_with_401_and_nothing_is_forwarded() {
    let (sts, issuers) = TestSts::standard().await;
    let (echo_a, upstream_a) = start_echo().await;
    let (echo_b, upstream_b) = start_echo().await;
    let shim_a = TestShim::start(&sts, GITHUB, &upstream_a, "").await;
    // A header cap above the token cap, so the oversized token meets the token check.
    let shim_b = TestShim::start(&sts, SLACK, &upstream_b, "max_header_bytes = 65536").await;
    let github = access_token(&sts, &issuers, "github.issues.create").await;
    let slack = access_token(&sts, &issuers, "slack.message.post").await;
    let post = "/api/chat.postMessage";

    // Positive controls: each token works at its own shim, and so does a token the
    // test signs itself with the STS's key (so the forgeries below fail on their flaw).
    assert_eq!(
        call(&shim_a.url, "POST", ISSUES, Some(&github), "{}")
            .await
            .status,
        200
    );
    assert_eq!(
        call(&shim_b.url, "POST", post, Some(&slack), "{}")
            .await
            .status,
        200
    );
    let key = sts_key(&sts);
    let resigned = sign_as(&key, &key.kid, "at+jwt", &slack, |_| {});
    assert_eq!(
        call(&shim_b.url, "POST", post, Some(&resigned), "{}")
            .await
            .status,
        200
    );
    assert_eq!((echo_a.hits(), echo_b.hits()), (1, 2));

    let (header, payload, signature) = {
        let mut parts = slack.split('.');
        let mut next = || parts.next().unwrap().to_string();
        (next(), next(), next())
    };
    let other_scope = {
        let mut claims = claims_of(&slack);
        claims["scope"] = json!("github.issues.create");
        URL_SAFE_NO_PAD.encode(claims.to_string())
    };
    let n = now();
    let (foreign, _) = SigningKey::generate(SigningAlgorithm::ES256).unwrap();
    let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"at+jwt"}"#);
    let workload = issuers.k8s_token("triage");
    let tokens: Vec<(&str, String, &str)> = vec![
        ("token for another shim", github.clone(), "wrong_audience"),
        ("workload token", workload.clone(), "wrong_issuer"),
        (
            "tampered signature",
            format!("{header}.{payload}.{}", flip_last(&signature)),
            "bad_signature",
        ),
        (
            "tampered claims",
            format!("{header}.{other_scope}.{signature}"),
            "bad_signature",
        ),
        (
            "foreign key under the STS's kid",
            sign_as(&foreign, &key.kid, "at+jwt", &slack, |_| {}),
            "bad_signature",
        ),
        (
            "foreign key under its own kid",
            sign_as(&foreign, &foreign.kid, "at+jwt", &slack, |_| {}),
            "unknown_kid",
        ),
        (
            "alg none",
            format!("{none_header}.{payload}."),
            "malformed_token",
        ),
        (
            "STS key, typ JWT",
            sign_as(&key, &key.kid, "JWT", &slack, |_| {}),
            "not_an_access_token",
        ),
        (
            "STS key, expired 2 minutes ago",
            sign_as(&key, &key.kid, "at+jwt", &slack, |c| {
                c["iat"] = json!(n - 180);
                c["nbf"] = json!(n - 180);
                c["exp"] = json!(n - 120);
            }),
            "token_expired",
        ),
    ];
    let mut expected_reasons = Vec::new();
    for (what, token, reason) in &tokens {
        let r = call(&shim_b.url, "POST", post, Some(token), "{}").await;
        assert_eq!(r.status, 401, "{what}: {r:?}");
        assert_refused(&r, 401, "invalid_token", &[token.as_str()]);
        expected_reasons.push(*reason);
    }

    // Authorization headers that are not one bearer token.
    let long = format!("Bearer {}", "a".repeat(20 * 1024));
    // (what, the Authorization values sent, status, audited reason).
    let malformed = "malformed_authorization";
    let garbage: Vec<(&str, Vec<Vec<u8>>, u16, &str)> = vec![
        ("no Authorization", vec![], 401, "missing_token"),
        ("Bearer alone", vec![b"Bearer".to_vec()], 401, malformed),
        (
            "Bearer and nothing",
            vec![b"Bearer ".to_vec()],
            401,
            malformed,
        ),
        ("two words", vec![b"Bearer a b".to_vec()], 401, malformed),
        ("Basic", vec![b"Basic xxx".to_vec()], 401, malformed),
        (
            "bearer in Basic",
            vec![format!("Basic {slack}").into_bytes()],
            401,
            malformed,
        ),
        (
            "non-ASCII",
            vec![b"Bearer \xe2\x82\xac\xff".to_vec()],
            401,
            malformed,
        ),
        ("20 KB token", vec![long.into_bytes()], 401, malformed),
        (
            "two Authorization headers",
            vec![format!("Bearer {slack}").into_bytes(), b"Bearer x".to_vec()],
            400,
            "duplicate_authorization",
        ),
    ];
    for (what, values, status, reason) in &garbage {
        let mut request = client()
            .post(format!("{}{post}", shim_b.url))
            .header("content-type", "application/json")
            .body("{}");
        for v in values {
            request = request.header(
                "authorization",
                reqwest::header::HeaderValue::from_bytes(v).unwrap(),
            );
        }
        let r = reply(request.send().await.unwrap()).await;
        assert_eq!(r.status, *status, "{what}: {r:?}");
        if *status == 401 {
            assert_refused(&r, 401, "invalid_token", &[&slack]);
        } else {
            assert_refused(&r, 400, "invalid_request", &[&slack]);
            let www = r.headers["www-authenticate"].to_str().unwrap();
            assert!(www.contains("error=\"invalid_request\""), "{www}");
        }
        expected_reasons.push(*reason);
    }

    assert_eq!(
        (echo_a.hits(), echo_b.hits()),
        (1, 2),
        "a refused request was forwarded"
    );
    // Every refusal is in the audit log: its own line, or (a repeat of its reason
    // within the summary window) counted in a summary line.
    let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
    for reason in &expected_reasons {
        *expected.entry(reason).or_default() += 1;
    }
    let audited = refusals_audited(&shim_b, expected.values().sum()).await;
    let expected: BTreeMap<String, u64> = expected
        .into_iter()
        .map(|(r, n)| (r.to_string(), n))
        .collect();
    assert_eq!(audited, expected);
    let lines = shim_b.audit();
    assert!(
        lines[2..]
            .iter()
            .all(|l| l["decision"] == "deny" && l["upstream_status"].is_null())
    );
    agent_sts::audit::verify(&shim_b.audit_path).unwrap();
}

// ---------------------------------------------------------------------------------
// 4. Entitlement: the token's one method and path template, and nothing else.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_outside_the_actions_method_and_path_are_refused_with_403() {
    let (sts, issuers) = TestSts::standard().await;
    let (echo, upstream) = start_echo().await;
    let shim = TestShim::start(&sts, GITHUB, &upstream, "").await;
    let token = access_token(&sts, &issuers, "github.issues.create").await;

    for (method, path) in [
        ("GET", ISSUES),
        ("PUT", ISSUES),
        ("DELETE", ISSUES),
        ("POST", "/repos/acme/widgets/pulls"),
        ("POST", "/repos/acme/issues"),
        ("POST", "/repos/acme/widgets/issues/extra"),
        ("POST", "/repos/acme/widgets/issues.json"),
        ("POST", "/REPOS/acme/widgets/issues"),
        ("POST", "/"),
        ("POST", "/admin"),
    ] {
        let r = call(&shim.url, method, path, Some(&token), "{}").await;
        assert_eq!(r.status, 403, "{method} {path}: {r:?}");
        assert_refused(&r, 403, "insufficient_scope", &[&token]);
    }
    let lines = shim.audit();
    assert!(
        lines
            .iter()
            .all(|l| l["reason"] == "request_not_allowed" && l["path"].is_null())
    );
    assert!(lines.iter().all(|l| l["action"] == "github.issues.create"));

    // docs.read has this shim's audience but no [action.request]: nothing to allow.
    let (docs_echo, docs_upstream) = start_echo().await;
    let docs = TestShim::start(&sts, DOCS, &docs_upstream, "").await;
    let docs_token = access_token(&sts, &issuers, "docs.read").await;
    for (method, path) in [("GET", "/"), ("GET", "/thing"), ("POST", ISSUES)] {
        let r = call(&docs.url, method, path, Some(&docs_token), "").await;
        assert_refused(&r, 403, "insufficient_scope", &[&docs_token]);
    }
    assert_eq!(docs.audit()[0]["reason"], "action_not_served");

    // A shim whose catalogue puts the token's action at another audience refuses it.
    let scopes = tempfile::tempdir().unwrap();
    std::fs::write(
        scopes.path().join("test.toml"),
        SCOPES.replacen(
            "audience = \"https://github-shim.internal\"",
            "audience = \"https://elsewhere.internal\"",
            1,
        ),
    )
    .unwrap();
    let moved = TestShim::start_with_scopes(&sts, GITHUB, &upstream, "", scopes.path()).await;
    let r = call(&moved.url, "POST", ISSUES, Some(&token), "{}").await;
    assert_refused(&r, 403, "insufficient_scope", &[&token]);
    assert_eq!(moved.audit()[0]["reason"], "action_not_served");

    assert_eq!(
        (echo.hits(), docs_echo.hits()),
        (0, 0),
        "a refused request was forwarded"
    );
    // Positive control: the same token, the allowed request.
    assert_eq!(
        call(&shim.url, "POST", ISSUES, Some(&token), "{}")
            .await
            .status,
        200
    );
    assert_eq!(echo.hits(), 1);
}

/// RFC 9110 §9.1: methods are case-sensitive; `post` is not `POST`. Matching it
/// anyway and forwarding the agent's spelling lets the shim allow one method while the
/// upstream routes another (the method twin of the path canonicalisation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_spelled_in_another_case_is_not_the_method_the_token_allows() {
    let (_sts, _issuers, echo, shim, token) = github_world("").await;
    for method in ["post", "Post"] {
        let r = call(&shim.url, method, ISSUES, Some(&token), "{}").await;
        let seen = echo.last().map(|l| l["method"].clone());
        assert_eq!(r.status, 403, "{method}: the upstream saw method {seen:?}");
        assert_refused(&r, 403, "insufficient_scope", &[&token]);
    }
    assert_eq!(echo.hits(), 0);
}

// ---------------------------------------------------------------------------------
// 5. Paths that could route differently at the upstream.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_and_ambiguous_targets_are_refused_and_never_forwarded() {
    let (_sts, _issuers, echo, shim, token) = github_world("").await;

    for target in [
        "/repos/acme/widgets/issues/../../../admin",
        "/repos/acme/widgets/../widgets/issues",
        "/repos/acme/widgets/%2e%2e/issues",
        "/repos/acme/%2E%2E/x/issues",
        "/repos/acme/./widgets/issues",
        "/repos/acme/widgets/%2e/issues",
        "/repos/acme//widgets/issues",
        "/repos/acme/widgets/issues/",
        "/repos/acme%2Fwidgets/x/issues",
        "/repos/acme%2fx/widgets/issues",
        "/repos/acme/widgets%5Cx/issues",
        "/repos/acme/widgets/issues/..;/",
        "/repos/acme/..;/acme/widgets/issues",
        "/repos/acme/widgets/..%3B/issues",
        "/repos/acme/widgets\\issues",
        "/repos/acme\\..\\x/widgets/issues",
        "/repos/acme/wid%00gets/issues",
        "/repos/acme/wid%0d%0agets/issues",
        "/repos/acme/wid%zzgets/issues",
        "/repos/acme/wid%gets/issues",
        "/repos/acme/w\u{ff0e}\u{ff0e}/issues",
        "/repos/acme/wid|gets/issues",
        "/repos/acme/.../widgets/issues",
        "/repos/acme/widgets/..%20/issues",
        "/repos/acme/widgets/.%20/issues",
        "/repos/acme/widgets/..%C2%A0/issues",
        "/repos/acme/widgets::$DATA/issues",
        "/repos/acme/widgets/issues::$DATA",
        "http://evil.example/repos/a/b/issues",
        "https://evil.example/repos/a/b/issues",
        "//evil.example/repos/a/b/issues",
        "evil.example:80",
        "*",
    ] {
        let (status, answer) = raw(&shim.url, &raw_post(target, &token, "")).await;
        assert!(
            status == 400 || status == 403,
            "{target:?} answered {status}:\n{answer}"
        );
        assert!(!answer.contains(&token), "{target:?}: {answer}");
    }
    assert_eq!(
        echo.hits(),
        0,
        "a traversal reached the upstream: {:?}",
        echo.last()
    );

    // Escapes of unreserved characters are the same path, forwarded canonical.
    for target in [
        "/repos/%61cme/widgets/issues",
        "/repos/acme/%77idgets/%69ssues",
    ] {
        let (status, answer) = raw(&shim.url, &raw_post(target, &token, "")).await;
        assert_eq!(status, 200, "{target:?}:\n{answer}");
        assert_eq!(echo.last().unwrap()["path"], ISSUES);
    }
    // Other escapes are kept (uppercased) and never decoded into separators.
    let (status, _) = raw(
        &shim.url,
        &raw_post("/repos/a%c3%a9/b%3f/issues", &token, ""),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(echo.last().unwrap()["path"], "/repos/a%C3%A9/b%3F/issues");
    assert_eq!(echo.hits(), 3);
    let refused: u64 = refusals_audited(&shim, 20).await.values().sum();
    assert!(refused >= 20, "refusals audited: {refused}");
}

// ---------------------------------------------------------------------------------
// 6. Redirects stay with the agent.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_origin_redirect_is_relayed_not_followed() {
    let (sts, issuers) = TestSts::standard().await;
    let (other, other_url) = start_echo().await;
    let location = format!("{other_url}/stolen?x=1");
    let target = location.clone();
    let (hits, upstream) = start_upstream(move |_| {
        (
            axum::http::StatusCode::FOUND,
            [("location", target.clone())],
        )
            .into_response()
    })
    .await;
    let shim = TestShim::start(&sts, GITHUB, &upstream, "").await;
    let token = access_token(&sts, &issuers, "github.issues.create").await;

    let r = call(&shim.url, "POST", ISSUES, Some(&token), "{}").await;
    assert_eq!(r.status, 302, "{r:?}");
    assert_eq!(r.headers["location"], location.as_str());
    assert_free_of(
        &everything(&r),
        &forbidden_forms(CANARY_CREDENTIAL, CANARY_PART),
        "the answer",
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(other.hits(), 0, "the shim followed the redirect");
    let line = shim.audit_line("proxied");
    assert_eq!(line["upstream_status"], 302);
}

// ---------------------------------------------------------------------------------
// 7. No usable credential: nothing is forwarded.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_disabled_credential_answers_502_and_forwards_nothing() {
    let (sts, issuers) = TestSts::standard().await;
    let (echo, upstream) = start_echo().await;
    // The STS mints only while the credential is usable, so the token comes first;
    // each shim then starts with an empty credential cache.
    let token = access_token(&sts, &issuers, "github.issues.create").await;
    let secrets = sts.dir.path().join("secrets.toml");
    let github = "[secret.\"integrations/github\"]";
    let cases = [
        (
            "missing",
            secrets_toml().replacen(github, "[secret.\"integrations/elsewhere\"]", 1),
        ),
        (
            "disabled",
            secrets_toml().replacen(
                &format!("value = \"{CANARY_CREDENTIAL}\""),
                &format!("value = \"{CANARY_CREDENTIAL}\"\ndisabled = true"),
                1,
            ),
        ),
    ];
    for (what, text) in cases {
        std::fs::write(&secrets, text).unwrap();
        let shim = TestShim::start(&sts, GITHUB, &upstream, "").await;
        let r = call(&shim.url, "POST", ISSUES, Some(&token), "{}").await;
        assert_refused(&r, 502, "credential_unavailable", &[CANARY_PART, &token]);
        let line = shim.audit_line("credential_unavailable");
        assert_eq!(line["path"], TEMPLATE, "{what}");
        assert!(line["upstream_status"].is_null(), "{what}");
        assert_eq!(echo.hits(), 0, "{what}: forwarded without a credential");
    }
}

// ---------------------------------------------------------------------------------
// 8. Framing and size: smuggling shapes, oversized headers and bodies.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_and_oversized_requests_are_refused_before_the_upstream() {
    let (_sts, _issuers, echo, shim, token) = github_world("max_request_bytes = 1024").await;
    let head = format!(
        "POST {ISSUES} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nConnection: close\r\n"
    );
    let big = "x".repeat(2000);

    let cases: Vec<(&str, String, &[u16])> = vec![
        (
            "gzip, chunked",
            format!("{head}Transfer-Encoding: gzip, chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"),
            &[400, 501],
        ),
        (
            "two transfer codings headers",
            format!(
                "{head}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
            ),
            &[400, 501],
        ),
        (
            "two differing Content-Length",
            format!("{head}Content-Length: 2\r\nContent-Length: 40\r\n\r\n{{}}"),
            &[400],
        ),
        (
            "a 20 KB header",
            format!(
                "{head}X-Pad: {}\r\nContent-Length: 2\r\n\r\n{{}}",
                "p".repeat(20 * 1024)
            ),
            &[431],
        ),
        (
            "200 headers",
            format!(
                "{head}{}Content-Length: 2\r\n\r\n{{}}",
                (0..200)
                    .map(|i| format!("X-H{i}: v\r\n"))
                    .collect::<String>()
            ),
            &[431],
        ),
        (
            "2000-byte body with Content-Length",
            format!("{head}Content-Length: 2000\r\n\r\n{big}"),
            &[413],
        ),
        // A chunked body is read whole under the same cap as a Content-Length one
        // (module doc, step 1); the small one passes (the positive control below).
        (
            "2000-byte body chunked",
            format!("{head}Transfer-Encoding: chunked\r\n\r\n7d0\r\n{big}\r\n0\r\n\r\n"),
            &[413],
        ),
        (
            "2000-byte body in 100-byte chunks",
            format!(
                "{head}Transfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n",
                format!("64\r\n{}\r\n", "y".repeat(100)).repeat(20)
            ),
            &[413],
        ),
        (
            "a chunked body with a coding beside chunked, in two fields",
            format!(
                "{head}Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
            ),
            &[400, 501],
        ),
    ];
    for (what, request, statuses) in &cases {
        let (status, answer) = raw(&shim.url, request.as_bytes()).await;
        assert!(statuses.contains(&status), "{what}: {status}\n{answer}");
        assert!(!answer.contains(&token), "{what}: {answer}");
    }
    assert_eq!(echo.hits(), 0, "{:?}", echo.last());

    // Unknown path with a good token: 403. And the positive control: 1024 bytes pass.
    let r = call(&shim.url, "POST", "/nope", Some(&token), "{}").await;
    assert_refused(&r, 403, "insufficient_scope", &[&token]);
    let fits = format!("\"{}\"", "z".repeat(1022));
    assert_eq!(
        call(&shim.url, "POST", ISSUES, Some(&token), &fits)
            .await
            .status,
        200
    );
    assert_eq!(echo.hits(), 1);
    let reasons: Vec<String> = shim
        .audit()
        .iter()
        .map(|l| l["reason"].as_str().unwrap().to_string())
        .collect();
    for reason in ["ambiguous_framing", "headers_too_large", "body_too_large"] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "{reason} not audited: {reasons:?}"
        );
    }
}

/// The smuggling shape (RFC 9112 §6.1): a front proxy that trusts Content-Length and a
/// shim that trusts Transfer-Encoding read different bodies and different next
/// requests. The shim's contract (module doc, step 1) is to refuse the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_beside_transfer_encoding_is_refused() {
    let (_sts, _issuers, echo, shim, token) = github_world("").await;
    let head = format!(
        "POST {ISSUES} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\n"
    );
    let body = format!(
        "0\r\n\r\nPOST /admin HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Length: 2\r\n\r\n{{}}"
    );
    for (what, framing) in [
        (
            "Content-Length then Transfer-Encoding",
            format!(
                "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                body.len()
            ),
        ),
        (
            "Transfer-Encoding then Content-Length",
            format!(
                "Transfer-Encoding: chunked\r\nContent-Length: {}\r\n",
                body.len()
            ),
        ),
    ] {
        let request = format!("{head}{framing}\r\n{body}");
        let (status, answer) = raw(&shim.url, request.as_bytes()).await;
        assert_eq!(
            status,
            400,
            "{what}: upstream saw {:?}\n{answer}",
            echo.last()
        );
    }
    assert_eq!(echo.hits(), 0);
    assert_eq!(shim.audit()[0]["reason"], "ambiguous_framing");
}

// ---------------------------------------------------------------------------------
// 9. The upstream fails: down, slow, compressed, too large.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_answer_502_or_504_and_are_audited() {
    let (sts, issuers) = TestSts::standard().await;
    let token = access_token(&sts, &issuers, "github.issues.create").await;

    let down = format!("http://{}", closing_server().await);
    let sleeper = axum::Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        "late"
    });
    let slow = spawn_router(sleeper).await;
    let (_, gzip) = start_upstream(|headers: HeaderMap| {
        let leak = headers["authorization"].to_str().unwrap().to_string();
        ([("content-encoding", "gzip")], leak).into_response()
    })
    .await;
    let cases = [
        (
            "down",
            down,
            "",
            502,
            "upstream_error",
            "upstream_unreachable",
            None,
        ),
        (
            "slow",
            slow,
            "upstream_timeout = \"500ms\"",
            504,
            "upstream_timeout",
            "upstream_timeout",
            None,
        ),
        (
            "gzip",
            gzip,
            "",
            502,
            "upstream_error",
            "upstream_encoding",
            Some(200),
        ),
    ];
    for (what, upstream, extra, status, code, reason, upstream_status) in cases {
        let shim = TestShim::start(&sts, GITHUB, &upstream, extra).await;
        // The slow upstream answers 200 after 3 s: a 504 shows the timeout cut it off.
        let r = call(&shim.url, "POST", ISSUES, Some(&token), "{}").await;
        assert_refused(&r, status, code, &[CANARY_PART, &token]);
        let line = shim.audit_line(reason);
        assert_eq!(line["decision"], "deny", "{what}");
        assert_eq!(line["path"], TEMPLATE, "{what}");
        assert_eq!(line["upstream_status"], json!(upstream_status), "{what}");
        assert_eq!(line["bytes_scrubbed"], 0, "{what}");
    }
}

// ---------------------------------------------------------------------------------
// 10. The leak hunt through the real binary.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shim_binary_leaks_no_credential_or_token_at_trace_level() {
    let (sts, issuers) = TestSts::standard().await;
    let (echo, upstream) = start_echo().await;
    let scopes = sts.dir.path().join("scopes");
    let config = TestShim::write_config(&sts, GITHUB, &upstream, "", &scopes);
    let shim = ServeProcess::start_shim(&config.config_path, config.dir.path(), TRACE_ALL);

    let workload = issuers.k8s_token("triage");
    let token = access_token(&sts, &issuers, "github.issues.create").await;
    let slack = access_token(&sts, &issuers, "slack.message.post").await;
    let tampered = flip_last(&token);
    let mut responses = String::new();
    let mut proxied = 0;
    for (method, path, bearer) in [
        ("POST", ISSUES, Some(token.as_str())),
        ("POST", ISSUES, Some(token.as_str())),
        ("GET", ISSUES, Some(token.as_str())),
        ("POST", "/repos/acme/widgets/pulls", Some(token.as_str())),
        ("POST", ISSUES, None),
        ("POST", ISSUES, Some(workload.as_str())),
        ("POST", ISSUES, Some(slack.as_str())),
        ("POST", ISSUES, Some(tampered.as_str())),
        ("POST", ISSUES, Some("not-a-jwt")),
    ] {
        let r = call(&shim.url, method, path, bearer, "{\"title\":\"t\"}").await;
        proxied += usize::from(r.status == 200);
        responses.push_str(&everything(&r));
        responses.push('\n');
    }
    for request in [
        raw_post("/repos/acme/widgets/%2e%2e/issues", &token, ""),
        raw_post("http://evil.example/repos/a/b/issues", &token, ""),
        raw_post(
            ISSUES,
            &token,
            &format!("X-Pad: {}\r\n", "p".repeat(20 * 1024)),
        ),
        raw_post(ISSUES, &token, "Transfer-Encoding: chunked\r\n"),
        // Byte ranges would hand the credential back in pieces: never forwarded.
        raw_post(ISSUES, &token, "Range: bytes=0-5\r\nIf-Range: x\r\n"),
        raw_post(ISSUES, &token, "Range: bytes=6-11\r\n"),
    ] {
        responses.push_str(&raw(&shim.url, &request).await.1);
        responses.push('\n');
    }
    let (stdout, stderr) = shim.stop();
    let audit = std::fs::read_to_string(&config.audit_path).unwrap();

    // The work really happened, at TRACE.
    assert!(stderr.contains("TRACE"), "no TRACE lines captured");
    // The shim's own lines print values, not Rust `Option`s.
    let own: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(" proxied") || l.contains(" refused"))
        .collect();
    assert!(own.len() >= 9, "{stderr}");
    for line in own {
        assert!(!line.contains("Some(") && !line.contains("=None"), "{line}");
    }
    assert_eq!(
        echo.hits(),
        4,
        "the two Range requests went through, without Range"
    );
    assert!(echo.last().unwrap()["headers"].get("range").is_none());
    assert_eq!(proxied, 2, "{responses}");
    assert_eq!(audit.lines().count(), 15, "{audit}");
    agent_sts::audit::verify(&config.audit_path).unwrap();

    let mut secrets = forbidden_forms(CANARY_CREDENTIAL, CANARY_PART);
    for t in [&token, &slack, &workload, &tampered] {
        secrets.push(t.to_string());
        secrets.push(t.rsplit('.').next().unwrap().to_string());
    }
    for (name, output) in [
        ("responses", &responses),
        ("stdout", &stdout),
        ("stderr", &stderr),
        ("audit log", &audit),
    ] {
        for secret in &secrets {
            assert!(
                !output.contains(secret.as_str()),
                "{name} contains a secret ({} chars starting {:?})",
                secret.len(),
                &secret[..8.min(secret.len())]
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// 11. `agent-sts dev`: the printed example, end to end.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_sts_dev_runs_its_printed_example_and_redacts_the_dev_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys");
    let scopes = Path::new(env!("CARGO_MANIFEST_DIR")).join("scopes");
    // Port 0 for both: dev prints the addresses it bound.
    let args = [
        OsStr::new("dev"),
        OsStr::new("--listen"),
        OsStr::new("127.0.0.1:0"),
        OsStr::new("--shim-listen"),
        OsStr::new("127.0.0.1:0"),
        OsStr::new("--keys"),
        keys.as_os_str(),
        OsStr::new("--scopes"),
        scopes.as_os_str(),
    ];
    let printed_url = |out: &str, prefix: &str| {
        out.lines()
            .find_map(|l| l.trim_start().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string)
    };
    let dev = ServeProcess::spawn(&args, &[], tmp.path(), TRACE_ALL, |out, _| {
        out.contains("curl -s -X")
            .then(|| printed_url(out, "agent-sts dev: STS at "))
            .flatten()
    });
    assert!(!dev.url.ends_with(":0"), "{}", dev.url);
    let printed = std::fs::read_to_string(&dev.stdout).unwrap();

    // The example: TOKEN='...', the exchange for `scope=`, the call through the shim.
    let line = |prefix: &str| {
        printed
            .lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{printed}"))
            .trim()
            .to_string()
    };
    let workload = line("TOKEN='")
        .trim_start_matches("TOKEN='")
        .trim_end_matches('\'')
        .to_string();
    let scope = line("-d scope=")
        .trim_start_matches("-d scope=")
        .split([' ', '|'])
        .next()
        .unwrap()
        .to_string();
    let shim_call = line("curl -s -X");
    let words: Vec<&str> = shim_call.split_whitespace().collect();
    let (method, url) = (words[3], words[4]);
    let shim_url = printed_url(&printed, "demo shim: ").unwrap();
    assert!(!shim_url.ends_with(":0"), "{shim_url}");
    assert!(url.starts_with(&format!("{shim_url}/")), "{shim_call}");
    let body = shim_call
        .split_once("-d '")
        .map(|(_, b)| b.trim_end_matches('\'').to_string())
        .unwrap_or_default();

    let exchanged = post_form(
        &format!("{}/token", dev.url),
        exchange_form(&workload, &scope),
    )
    .await;
    assert_eq!(exchanged.status, 200, "{exchanged:?}");
    let access = exchanged.token();
    let path = url.trim_start_matches(&shim_url);
    let r = call(&shim_url, method, path, Some(&access), &body).await;
    assert_eq!(r.status, 200, "{r:?}");
    let echoed = r.json();
    assert_eq!(
        echoed["headers"]["authorization"],
        json!(["[redacted]"]),
        "{r:?}"
    );
    assert_eq!(echoed["path"], path);
    assert_eq!(echoed["body"], body);

    let (stdout, stderr) = dev.stop();
    let secrets: toml::Table =
        toml::from_str(&std::fs::read_to_string(keys.join("dev-secrets.toml")).unwrap()).unwrap();
    let values: Vec<String> = secrets["secret"]
        .as_table()
        .unwrap()
        .values()
        .map(|s| s["value"].as_str().unwrap().to_string())
        .collect();
    assert!(!values.is_empty());
    let answer = everything(&r);
    for value in &values {
        let part = value.split_once(' ').map_or(value.as_str(), |(_, p)| p);
        let forms = forbidden_forms(value, part);
        assert_free_of(&answer, &forms, "the shim's answer");
        assert_free_of(&stdout, &forms, "dev's stdout");
        assert_free_of(&stderr, &forms, "dev's stderr");
    }
    let signature = access.rsplit('.').next().unwrap();
    assert!(!stderr.contains(signature), "dev logged the access token");
}

/// SECURITY.md: key rotation under load → zero verification failures at a shim. Clients
/// mint and call the real shim continuously while the STS's keys rotate twice on a
/// short lifecycle (publish_lead 2 s, jwks_max_age 1 s, refresh 300 ms). The shim's
/// verifier learns new keys from the JWKS `max-age` and, as a backstop, one refetch on
/// an unknown kid; its refetch cooldown is shortened like the rest of the lifecycle
/// (200 ms against 30 s by default, below the 1 s `max-age`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_under_load_with_zero_failures_at_the_shim() {
    let issuers = Issuers::start().await;
    let base = TestSts::start(&issuers.specs(), SCOPES, "").await;
    let text = crate::rotation::fast_lifecycle(std::fs::read_to_string(&base.config_path).unwrap());
    std::fs::write(&base.config_path, &text).unwrap();
    let sts = TestSts::serve(base.dir, base.config_path.clone()).await;
    let (echo, upstream) = start_echo().await;
    let shim = TestShim::start(
        &sts,
        GITHUB,
        &upstream,
        "\n[limits]\njwks_refetch_cooldown = \"200ms\"",
    )
    .await;
    let config = agent_sts::config::Config::load(&sts.config_path, &BTreeMap::new()).unwrap();
    let store = agent_sts::keys::FileKeyStore::new(sts.dir.path().join("keys"));

    let body = exchange_form(&issuers.k8s_token("triage"), "github.issues.create");
    let (calls, failures) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Mutex::new(Vec::new())),
    );
    let kids = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..6 {
        let (sts_url, shim_url, body) = (sts.url.clone(), shim.url.clone(), body.clone());
        let (calls, failures, kids) = (calls.clone(), failures.clone(), kids.clone());
        workers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            while started.elapsed() < Duration::from_secs(7) {
                let minted = client
                    .post(format!("{sts_url}/token"))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                let minted = reply(minted).await;
                assert_eq!(minted.status, 200, "{minted:?}");
                let token = minted.token();
                let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
                let r = client
                    .post(format!("{shim_url}{ISSUES}"))
                    .header("authorization", format!("Bearer {token}"))
                    .header("content-type", "application/json")
                    .body("{}")
                    .send()
                    .await
                    .unwrap();
                let r = reply(r).await;
                if r.status == 200 {
                    calls.fetch_add(1, Ordering::SeqCst);
                    *kids.lock().unwrap().entry(kid).or_default() += 1;
                } else {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("{kid}: {} {}", r.status, r.text));
                }
            }
        }));
    }
    crate::rotation::rotate_twice(&store, &config).await;
    for w in workers {
        w.await.unwrap();
    }
    let (calls, failures) = (
        calls.load(Ordering::SeqCst),
        failures.lock().unwrap().clone(),
    );
    let kids = kids.lock().unwrap().clone();
    println!(
        "rotation under load at the shim: {calls} calls proxied, {} failures, kids {kids:?}",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(calls > 50, "too little load: {calls}");
    assert!(
        kids.len() >= 2,
        "rotation did not happen under load: {kids:?}"
    );
    assert_eq!(echo.hits(), calls);
    agent_sts::audit::verify(&shim.audit_path).unwrap();
}

/// Emergency removal of a signing key (README, "Runbook"): the STS's keyring is
/// emptied; every replica publishes `{"keys": []}` within its `refresh_interval` (1 s
/// here), and the shim, with `[shim] jwks_refresh = "1s"` (the STS's `max-age` is 5 m;
/// the refetch cooldown keeps its 30 s default), refuses a token it already accepted
/// and cached from its next successful JWKS fetch, and forwards nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_removed_from_the_sts_keyring_is_refused_by_the_shim_within_its_jwks_refresh() {
    use agent_sts::keys::{FileKeyStore, KeyStore, StoredRing};

    let (sts, issuers) = TestSts::standard().await;
    let (echo, upstream) = start_echo().await;
    let shim = TestShim::start(&sts, GITHUB, &upstream, "jwks_refresh = \"1s\"").await;
    let token = access_token(&sts, &issuers, "github.issues.create").await;
    let r = call(&shim.url, "POST", ISSUES, Some(&token), "{}").await;
    assert_eq!(r.status, 200, "{r:?}");

    let store = FileKeyStore::new(sts.dir.path().join("keys"));
    let (ring, version) = store.load().await.unwrap();
    assert_eq!(ring.keys.len(), 1);
    store.save(&StoredRing::default(), &version).await.unwrap();
    let removed = Instant::now();

    let deadline = removed + Duration::from_secs(15);
    let refused = loop {
        let r = call(&shim.url, "POST", ISSUES, Some(&token), "{}").await;
        if r.status != 200 {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the shim still accepts a removed key's token 15 s later: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_refused(&refused, 401, "invalid_token", &[&token]);
    let forwarded = echo.hits();
    for _ in 0..3 {
        let r = call(&shim.url, "POST", ISSUES, Some(&token), "{}").await;
        assert_refused(&r, 401, "invalid_token", &[&token]);
    }
    assert_eq!(
        echo.hits(),
        forwarded,
        "nothing forwarded after the refusal"
    );
    let jwks = sts.get("/.well-known/jwks.json").await.json();
    assert_eq!(jwks, json!({"keys": []}));
}

/// The credential from Vault (the production secret store): the shim injects the value
/// Vault holds (not the file's), and stops forwarding once it is disabled there, within
/// `vault.max_stale` (2 s here; the cache never holds a credential longer than 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_held_in_vault_is_injected_and_its_revocation_followed() {
    const VAULT_CREDENTIAL: &str = "Bearer ghp_VAULT0canary0only0in0vault0a1b2c3d4e5";
    let vault = crate::openbao::OpenBao::start().await;
    let github = json!({"header": "Authorization", "value": VAULT_CREDENTIAL});
    vault.write("integrations/github", github).await;
    let (sts, issuers) = TestSts::standard().await;
    let (echo, upstream) = start_echo().await;
    let shim = TestShim::write_config(&sts, GITHUB, &upstream, "", &sts.dir.path().join("scopes"));
    shim.use_vault(&vault, &["agent-sts-shim"]).await;
    let app = shim.build().await;
    let shim = shim.serve(app).await;
    let url = shim.url.clone();

    let token = access_token(&sts, &issuers, "github.issues.create").await;
    let r = call(&url, "POST", ISSUES, Some(&token), "{}").await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = echo.last().unwrap();
    assert_eq!(seen["headers"]["authorization"], json!([VAULT_CREDENTIAL]));
    assert!(!everything(&r).contains("VAULT0canary"), "{r:?}");

    let disabled = json!({"header": "Authorization", "value": VAULT_CREDENTIAL, "disabled": true});
    vault.write("integrations/github", disabled).await;
    let refused = crate::vault::eventually(6, || async {
        call(&url, "POST", ISSUES, Some(&token), "{}").await.status == 502
    })
    .await;
    assert!(
        refused,
        "disabling the credential in Vault did not stop the shim"
    );
    let hits = echo.hits();
    let r = call(&url, "POST", ISSUES, Some(&token), "{}").await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (502, Some("credential_unavailable"))
    );
    assert_eq!(
        echo.hits(),
        hits,
        "a call was forwarded without a usable credential"
    );
}

/// Method and URL overrides that common frameworks honour (header or `_method` query
/// parameter) would let a token for `POST .../issues` run another method or route:
/// the headers are not forwarded, the parameter is refused; and the agent's cookies
/// never reach the upstream (its session is the credential's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_and_url_overrides_and_cookies_never_reach_the_upstream() {
    let (_sts, _issuers, echo, shim, token) = github_world("").await;
    let overrides = [
        ("x-http-method-override", "DELETE"),
        ("x-http-method", "DELETE"),
        ("x-method-override", "DELETE"),
        ("x-original-url", "/admin"),
        ("x-rewrite-url", "/admin"),
        ("x-forwarded-prefix", "/admin"),
        ("cookie", "session=agent-chosen"),
    ];
    let seen = echoed(&shim.url, &token, &overrides, &echo).await;
    for (name, _) in overrides {
        assert!(
            seen["headers"].get(name).is_none(),
            "{name} forwarded: {seen}"
        );
    }
    assert_eq!(seen["method"], "POST");

    let hits = echo.hits();
    for query in ["?_method=DELETE", "?a=1&%5Fmethod=delete", "?_METHOD=PUT"] {
        let r = call(
            &shim.url,
            "POST",
            &format!("{ISSUES}{query}"),
            Some(&token),
            "{}",
        )
        .await;
        assert_eq!(
            (r.status, r.error()),
            (400, "invalid_request".to_string()),
            "{query}: {r:?}"
        );
    }
    assert_eq!(echo.hits(), hits);
    assert!(
        shim.audit()
            .iter()
            .any(|l| l["reason"] == "method_override")
    );
}

/// The audit line of a call is written when the upstream has answered; if that write
/// fails, the answer is withheld (503), and no later call reaches the upstream while
/// lines cannot be written. (`/dev/full`: every write fails with ENOSPC.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_audit_log_withholds_the_answer_and_stops_forwarding() {
    if !Path::new("/dev/full").exists() {
        eprintln!("skipped: /dev/full does not exist on this system");
        return;
    }
    let (sts, issuers) = TestSts::standard().await;
    let (echo, upstream) = start_echo().await;
    let shim = TestShim::write_config(&sts, GITHUB, &upstream, "", &sts.dir.path().join("scopes"));
    let text = std::fs::read_to_string(&shim.config_path).unwrap().replace(
        &format!("path = \"{}\"", shim.audit_path.display()),
        "path = \"/dev/full\"",
    );
    std::fs::write(&shim.config_path, text).unwrap();
    let config = ShimConfig::load(&shim.config_path, &BTreeMap::new()).unwrap();
    assert_eq!(config.audit.path, Path::new("/dev/full"));
    let app = shim.build().await;
    let shim = shim.serve(app).await;
    let url = shim.url.clone();
    let token = access_token(&sts, &issuers, "github.issues.create").await;

    // The first call reaches the upstream; its line cannot be written: withheld.
    let r = call(&url, "POST", ISSUES, Some(&token), "{}").await;
    assert_eq!(
        (r.status, r.error()),
        (503, "temporarily_unavailable".to_string()),
        "{r:?}"
    );
    assert!(r.headers.get("retry-after").is_some());
    assert!(!r.text.contains("ghp_"), "{r:?}");
    assert_eq!(echo.hits(), 1);
    // Later calls stop before the upstream.
    for _ in 0..3 {
        let r = call(&url, "POST", ISSUES, Some(&token), "{}").await;
        assert_eq!(r.status, 503, "{r:?}");
    }
    assert_eq!(
        echo.hits(),
        1,
        "calls were forwarded while the audit log fails"
    );
}

/// The admin routes (`[shim] admin_listen`, apart from the proxied path space):
/// health, readiness with its reasons, and metrics with closed label sets that carry
/// no credential or token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_report_health_readiness_and_metrics_without_secrets() {
    let (sts, issuers) = TestSts::standard().await;
    let (_echo, upstream) = start_echo().await;
    let shim = TestShim::write_config(&sts, GITHUB, &upstream, "", &sts.dir.path().join("scopes"));
    let app = shim.build().await;
    let admin = spawn_router(app.admin_router()).await;
    let shim = shim.serve(app).await;
    let url = shim.url.clone();

    let token = access_token(&sts, &issuers, "github.issues.create").await;
    assert_eq!(
        call(&url, "POST", ISSUES, Some(&token), "{}").await.status,
        200
    );
    assert_eq!(call(&url, "POST", ISSUES, None, "{}").await.status, 401);
    assert_eq!(
        call(&url, "GET", ISSUES, Some(&token), "").await.status,
        403
    );

    let get = |path: &'static str| {
        let admin = admin.clone();
        async move { reply(client().get(format!("{admin}{path}")).send().await.unwrap()).await }
    };
    assert_eq!(get("/healthz").await.text, "ok");
    let ready = get("/readyz").await;
    assert_eq!(ready.status, 200, "{ready:?}");
    assert_eq!(ready.json()["actions"], 1);
    let metrics = get("/metrics").await.text;
    for line in [
        "agent_sts_shim_requests_total{decision=\"allow\",reason=\"proxied\"} 1",
        "agent_sts_shim_requests_total{decision=\"deny\",reason=\"missing_token\"} 1",
        "agent_sts_shim_requests_total{decision=\"deny\",reason=\"request_not_allowed\"} 1",
        "agent_sts_shim_request_duration_seconds_count 3",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    for secret in [CANARY_CREDENTIAL, CANARY_PART, token.as_str()] {
        assert!(!metrics.contains(secret));
    }
    // The admin routes are not on the proxied listener: there, /metrics is a path of
    // the upstream, refused without a token.
    assert_eq!(call(&url, "GET", "/metrics", None, "").await.status, 401);
}

// ---------------------------------------------------------------------------------
// The shim's routers, driven with `oneshot`.

/// The shim's routers without a socket: refusals decided before the upstream answer
/// in the RFC 6750 shape and reach no upstream; a valid call goes through; the admin
/// router reports readiness and the decisions it counted.
#[tokio::test]
async fn the_shim_routers_answer_with_oneshot() {
    use axum::body::Body;
    use tower::ServiceExt;

    let (sts, issuers) = TestSts::standard().await;
    let (echo, upstream) = start_echo().await;
    let shim = TestShim::write_config(&sts, GITHUB, &upstream, "", &sts.dir.path().join("scopes"));
    let app = shim.build().await;
    let request = |token: Option<&str>| {
        let mut r = axum::http::Request::post(ISSUES).header("content-type", "application/json");
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        r.body(Body::from("{}")).unwrap()
    };

    let missing = app.router().oneshot(request(None)).await.unwrap();
    assert_eq!(missing.status(), 401);
    assert!(
        missing.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer error=\"invalid_token\"")
    );
    let token = access_token(&sts, &issuers, "github.issues.create").await;
    let garbled = app
        .router()
        .oneshot(request(Some(&flip_last(&token))))
        .await
        .unwrap();
    assert_eq!(garbled.status(), 401);
    assert_eq!(echo.hits(), 0, "a refusal reached the upstream");

    let ok = app.router().oneshot(request(Some(&token))).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(echo.hits(), 1);

    let admin = |path: &str| {
        let request = axum::http::Request::get(path).body(Body::empty()).unwrap();
        app.admin_router().oneshot(request)
    };
    assert_eq!(admin("/readyz").await.unwrap().status(), 200);
    let metrics = admin("/metrics").await.unwrap().into_body();
    let bytes = http_body_util::BodyExt::collect(metrics).await.unwrap();
    let text = String::from_utf8(bytes.to_bytes().to_vec()).unwrap();
    assert!(
        text.contains("{decision=\"allow\",reason=\"proxied\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("{decision=\"deny\",reason=\"bad_signature\"} 1"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------
// Request headers are an allow-list; partial answers are refused.

/// Only the default headers and the action's own `headers` reach the upstream: a
/// `Range` (which would hand back the credential in pieces shorter than any scrubbing
/// pattern), an unknown vendor header, and every override or forwarding header stay
/// behind; the action's `X-GitHub-Api-Version` and the defaults pass.
#[tokio::test]
async fn only_allowed_request_headers_reach_the_upstream() {
    let (_sts, _issuers, echo, shim, token) = github_world("").await;
    let sent = [
        ("accept", "application/vnd.github+json"),
        ("user-agent", "agent/1.0"),
        ("if-match", "\"v1\""),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("x-github-api-version", "2022-11-28"),
        ("range", "bytes=0-5"),
        ("if-range", "\"v1\""),
        ("x-custom-debug", "1"),
        ("x-api-key", "agent-chosen"),
        ("origin", "https://evil.example"),
        ("x-forwarded-host", "admin.internal"),
        ("x-http-method-override", "DELETE"),
    ];
    let seen = echoed(&shim.url, &token, &sent, &echo).await;
    let got: Vec<&str> = seen["headers"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for passed in [
        "accept",
        "user-agent",
        "if-match",
        "traceparent",
        "x-github-api-version",
        "content-type",
    ] {
        assert!(got.contains(&passed), "{passed} not forwarded: {got:?}");
    }
    for kept in [
        "range",
        "if-range",
        "x-custom-debug",
        "x-api-key",
        "origin",
        "x-forwarded-host",
        "x-http-method-override",
    ] {
        assert!(!got.contains(&kept), "{kept} forwarded: {got:?}");
    }
}

/// An upstream that answers with a piece of a representation (it honours `Range` on
/// its own, or always answers `206`, `Content-Range` or `multipart/byteranges`) gets
/// a 502: the agent never receives a piece the scrubber could not see whole, so a
/// credential cannot be read back six bytes at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_answers_are_refused_so_a_credential_never_comes_back_in_pieces() {
    let (sts, issuers) = TestSts::standard().await;
    let token = access_token(&sts, &issuers, "github.issues.create").await;
    // Each upstream echoes the Authorization it got, six bytes of it per answer.
    let piece = |headers: &HeaderMap| {
        let auth = headers["authorization"].to_str().unwrap().to_string();
        auth.as_bytes()[..6].to_vec()
    };
    type Answer = fn(Vec<u8>) -> Response;
    let shapes: [(&str, Answer); 3] = [
        ("206", |b| {
            (
                StatusCode::PARTIAL_CONTENT,
                [("content-range", "bytes 0-5/48")],
                b,
            )
                .into_response()
        }),
        ("Content-Range on a 200", |b| {
            (StatusCode::OK, [("content-range", "bytes 0-5/48")], b).into_response()
        }),
        ("multipart/byteranges", |b| {
            let ct = "multipart/byteranges; boundary=X";
            (StatusCode::OK, [("content-type", ct)], b).into_response()
        }),
    ];
    for (what, answer) in shapes {
        let (hits, upstream) = start_upstream(move |h: HeaderMap| answer(piece(&h))).await;
        let shim = TestShim::start(&sts, GITHUB, &upstream, "").await;
        let r = call(&shim.url, "POST", ISSUES, Some(&token), "{}").await;
        assert_eq!(r.status, 502, "{what}: {r:?}");
        assert_eq!(r.error(), "upstream_error", "{what}");
        assert_eq!(hits.load(Ordering::SeqCst), 1, "{what}");
        assert!(!r.text.contains(&CANARY_CREDENTIAL[..6]), "{what}: {r:?}");
        assert_eq!(
            shim.audit_line("upstream_partial")["upstream_status"],
            if what == "206" { 206 } else { 200 },
            "{what}"
        );
    }
}

/// A method override in the body (form, multipart or JSON, with PHP's name mangling)
/// is refused before the upstream, as in the query; so is a form or JSON body the shim
/// cannot read. A body that only mentions `_method` as a value passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_overrides_in_bodies_are_refused_before_the_upstream() {
    let (_sts, _issuers, echo, shim, token) = github_world("").await;
    let multipart =
        "--b1\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--b1--\r\n";
    let cases = [
        (
            "application/x-www-form-urlencoded",
            "title=x&_method=DELETE",
            400,
        ),
        ("application/x-www-form-urlencoded", ".method=DELETE", 400),
        ("application/x-www-form-urlencoded", "%5Bmethod=DELETE", 400),
        (
            "application/x-www-form-urlencoded",
            "_method%5B%5D=DELETE",
            400,
        ),
        ("multipart/form-data; boundary=b1", multipart, 400),
        (
            "application/json",
            r#"{"title":"x","_METHOD":"DELETE"}"#,
            400,
        ),
        ("application/json; charset=utf-8", "{not json", 400),
        ("application/json", r#"{"title":"_method"}"#, 200),
    ];
    for (content_type, body, status) in cases {
        let hits = echo.hits();
        let r = reply(
            client()
                .post(format!("{}{ISSUES}", shim.url))
                .bearer_auth(&token)
                .header("content-type", content_type)
                .body(body.to_string())
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, status, "{content_type} {body}: {r:?}");
        let forwarded = echo.hits() - hits;
        assert_eq!(
            forwarded,
            usize::from(status == 200),
            "{content_type} {body}"
        );
    }
    // The query too, with mangled names.
    for query in [
        "%20method=DELETE",
        "_Method=PUT",
        "x-http-method-override=DELETE",
    ] {
        let r = call(
            &shim.url,
            "POST",
            &format!("{ISSUES}?{query}"),
            Some(&token),
            "{}",
        )
        .await;
        assert_eq!(r.status, 400, "{query}: {r:?}");
    }
}

/// A shim whose Vault policy does not grant the credential it injects: every call is
/// refused as for a missing credential (502 `credential_unavailable`, no `Retry-After`,
/// nothing forwarded), one Vault read serves many calls, and no call or readiness
/// probe makes the shim log in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_the_vault_policy_denies_is_a_configuration_error_at_the_shim() {
    let vault = crate::openbao::OpenBao::start().await;
    vault
        .write(
            "integrations/github",
            json!({"header": "Authorization", "value": "Bearer ghp_DENIED0canary"}),
        )
        .await;
    let (sts, issuers) = TestSts::standard().await;
    let (echo, upstream) = start_echo().await;
    let shim = TestShim::write_config(&sts, GITHUB, &upstream, "", &sts.dir.path().join("scopes"));
    // Renew and look itself up, but no credential: a policy that forgot them.
    shim.use_vault(&vault, &["default"]).await;
    let app = shim.build().await;
    let admin = spawn_router(app.admin_router()).await;
    let shim = shim.serve(app).await;

    let token = access_token(&sts, &issuers, "github.issues.create").await;
    for _ in 0..50 {
        let r = call(&shim.url, "POST", ISSUES, Some(&token), "{}").await;
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (502, Some("credential_unavailable")),
            "{r:?}"
        );
        assert!(!r.headers.contains_key("retry-after"));
    }
    for _ in 0..50 {
        let ready = client()
            .get(format!("{admin}/readyz"))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200);
    }
    assert_eq!(echo.hits(), 0, "forwarded without its credential");
    assert_eq!(vault.count("secret/data/integrations/github"), 1);
    assert_eq!(vault.count("auth/"), vault.count("auth/token/lookup-self"));
    let audit = std::fs::read_to_string(&shim.audit_path).unwrap();
    assert!(audit.contains("credential_unavailable"), "{audit}");
}
