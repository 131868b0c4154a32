//! RFC 9728 protected-resource metadata, served by the shim itself: what an MCP client
//! (or any OAuth client) fetches to learn which authorization server mints tokens for
//! this resource, which scopes (actions) it serves and how to present a token.
//!
//! The document lives at `/.well-known/oauth-protected-resource` and at every
//! path-suffixed form of it (`/.well-known/oauth-protected-resource/mcp`, RFC 9728
//! §3.1): the shim guards one resource, `shim.public_url`, whatever path a client
//! derived the metadata URL from, and the client checks `resource` against what it
//! called (§3.3). A request for it is answered here and **never forwarded**, however
//! it is spelled: [`names_metadata`] reads the canonical path (percent-escapes
//! decoded) case-insensitively, and a `;parameter` on its second segment does not
//! hide it, so an upstream that serves its own metadata (or would read the path
//! another way) is never asked.
//!
//! Every 401 and 403 of the shim points at the document ([`Challenge`]):
//! `WWW-Authenticate: Bearer resource_metadata="<public_url>/.well-known/oauth-protected-resource"`
//! (§5.1), with `scope="<action>"` when the request's method and path fit exactly one
//! action the shim serves. The URL is `shim.public_url` joined with the well-known
//! path, so behind a load balancer that strips a path prefix it still reaches the
//! shim; with a `public_url` without a path it is exactly the §3.1 URL.

use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use crate::shim::request_target;

/// The well-known path of RFC 9728 §3.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// How long clients may cache the document: the actions served change only with the
/// catalogue.
const MAX_AGE_SECONDS: u32 = 60;

/// Whether `uri` asks for the protected-resource metadata, however spelled: the first
/// segment of its canonical path is `.well-known` and the second, up to any `;`, is
/// `oauth-protected-resource`, in any case. A target that does not canonicalize is
/// not (the proxy refuses it, and forwards nothing).
pub fn names_metadata(uri: &Uri) -> bool {
    let raw = uri.path();
    let maybe = raw.contains('%')
        || raw
            .get(..13)
            .is_some_and(|p| p.eq_ignore_ascii_case("/.well-known/"));
    if !maybe {
        return false;
    }
    let Ok(target) = request_target::canonicalize(uri) else {
        return false;
    };
    let mut segments = target.path.trim_start_matches('/').split('/');
    let first = segments.next().unwrap_or_default();
    let second = segments
        .next()
        .and_then(|s| s.split(';').next())
        .unwrap_or_default();
    first.eq_ignore_ascii_case(".well-known")
        && second.eq_ignore_ascii_case("oauth-protected-resource")
}

/// The shim's metadata: fixed at start but for the actions, which follow the catalogue.
#[derive(Debug, Clone)]
pub struct ResourceMetadata {
    /// `shim.public_url`.
    resource: String,
    /// The STS (`shim.issuer`).
    authorization_server: String,
    /// DPoP proof algorithms the shim's verifier takes.
    dpop_algorithms: Vec<&'static str>,
    /// Where the document is: `public_url` + [`METADATA_PATH`].
    url: String,
}

impl ResourceMetadata {
    pub fn new(public_url: &str, issuer: &str, dpop_algorithms: Vec<&'static str>) -> Self {
        let resource = public_url.trim_end_matches('/').to_string();
        ResourceMetadata {
            url: format!("{resource}{METADATA_PATH}"),
            resource,
            authorization_server: issuer.to_string(),
            dpop_algorithms,
        }
    }

    /// The document's URL, for `resource_metadata` in challenges.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The RFC 9728 §2 document for a shim serving `scopes` (action names).
    pub fn document(&self, scopes: &[&str]) -> serde_json::Value {
        serde_json::json!({
            "resource": self.resource,
            "authorization_servers": [self.authorization_server],
            "scopes_supported": scopes,
            "bearer_methods_supported": ["header"],
            "dpop_signing_alg_values_supported": self.dpop_algorithms,
        })
    }

    /// The answer to a request for the document: 200 with it for GET and HEAD, else
    /// 405 (`Allow: GET, HEAD`).
    pub fn response(&self, method: &Method, scopes: &[&str]) -> Response {
        if method != Method::GET && method != Method::HEAD {
            let body = serde_json::json!({
                "error": "invalid_request",
                "error_description": "the protected-resource metadata accepts only GET and HEAD",
            });
            let mut response = (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response();
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let mut response = axum::Json(self.document(scopes)).into_response();
        if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={MAX_AGE_SECONDS}")) {
            response.headers_mut().insert(header::CACHE_CONTROL, v);
        }
        response
    }
}

/// The RFC 9728 §5.1 parameters every 401 and 403 challenge of the shim carries.
#[derive(Debug, Clone, Copy)]
pub struct Challenge<'a> {
    /// The metadata document's URL.
    pub resource_metadata: &'a str,
    /// The action the request's method and path fit, when exactly one does.
    pub scope: Option<&'a str>,
}

impl Challenge<'_> {
    /// `, resource_metadata="…"[, scope="…"]`, each value a quoted-string (RFC 9110
    /// §5.6.4; `"` and `\` escaped).
    pub fn params(&self) -> String {
        let mut out = format!(", resource_metadata=\"{}\"", quoted(self.resource_metadata));
        if let Some(scope) = self.scope {
            out.push_str(&format!(", scope=\"{}\"", quoted(scope)));
        }
        out
    }
}

fn quoted(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_metadata_path_is_recognised_however_spelled() {
        for path in [
            "/.well-known/oauth-protected-resource",
            "/.well-known/oauth-protected-resource/mcp",
            "/.well-known/oauth-protected-resource/a/b?x=1",
            "/.WELL-KNOWN/OAuth-Protected-Resource",
            "/%2Ewell-known/oauth-protected-resource",
            "/.well-known/oauth%2Dprotected%2Dresource",
            "/.well-known/oauth-protected-resource;v=1",
        ] {
            let uri: Uri = path.parse().unwrap();
            assert!(names_metadata(&uri), "{path}");
        }
        for path in [
            "/",
            "/.well-known/jwks.json",
            "/.well-known/oauth-authorization-server",
            "/repos/.well-known/oauth-protected-resource",
            "/.well-known/oauth-protected-resources",
            "/mcp",
        ] {
            let uri: Uri = path.parse().unwrap();
            assert!(!names_metadata(&uri), "{path}");
        }
    }

    #[test]
    fn challenge_parameters_are_quoted_strings() {
        let c = Challenge {
            resource_metadata: "https://shim.example/.well-known/oauth-protected-resource",
            scope: Some("github.issues.create"),
        };
        assert_eq!(
            c.params(),
            ", resource_metadata=\"https://shim.example/.well-known/oauth-protected-resource\", scope=\"github.issues.create\""
        );
        let odd = Challenge {
            resource_metadata: "a\"b\\c",
            scope: None,
        };
        assert_eq!(odd.params(), ", resource_metadata=\"a\\\"b\\\\c\"");
    }
}
