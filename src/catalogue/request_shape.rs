//! Request shapes: the one call an action lets through the shim (`[action.request]`),
//! a method, a path template such as `/repos/{owner}/{repo}/issues`, and the request
//! headers the agent may send along.
//!
//! Headers are an allow-list (README, "The shim"): [`DEFAULT_HEADERS`], which an API
//! call needs, plus the action's own `headers`. A header that would let the agent
//! reach around the shim ([`never_forwarded`]: credentials, framing, byte ranges,
//! encodings, client-address and method/URL overrides) cannot be added by any action.

use std::collections::BTreeSet;
use std::fmt;

/// The HTTP methods an `[action.request]` may name.
pub const METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

/// Request headers every action forwards, each for a reason an API call has.
pub const DEFAULT_HEADERS: [(&str, &str); 10] = [
    (
        "accept",
        "content negotiation: which representation the agent can read",
    ),
    (
        "accept-language",
        "content negotiation: the language of messages",
    ),
    (
        "content-type",
        "the media type of the body the upstream must parse",
    ),
    (
        "user-agent",
        "some APIs refuse calls without one (GitHub) or rate-limit by it",
    ),
    (
        "if-match",
        "optimistic concurrency: update only the version the agent read",
    ),
    (
        "if-none-match",
        "conditional reads: 304 instead of the same body again",
    ),
    ("if-modified-since", "conditional reads by date"),
    ("if-unmodified-since", "optimistic concurrency by date"),
    (
        "traceparent",
        "W3C Trace Context: one trace across agent, shim and upstream",
    ),
    ("tracestate", "W3C Trace Context vendor data"),
];

/// Why `name` (lowercase) may never be forwarded, even when an action lists it.
pub fn never_forwarded(name: &str) -> Option<&'static str> {
    Some(match name {
        "authorization" | "proxy-authorization" | "cookie" => {
            "credentials: the shim injects the action's own and never passes the agent's"
        }
        "dpop" => "the agent's proof of possession is for the shim, not the upstream",
        "host" | "content-length" | "transfer-encoding" | "te" | "trailer" | "connection"
        | "keep-alive" | "proxy-connection" | "upgrade" | "expect" => {
            "message framing and connection handling belong to the shim"
        }
        "range" | "if-range" => {
            "byte ranges return the answer in pieces the scrubber cannot see whole"
        }
        "accept-encoding" => "the shim asks for identity encoding so it can scrub the answer",
        "content-encoding" => "a compressed body cannot be checked for method overrides",
        "forwarded" | "x-real-ip" | "x-client-ip" | "true-client-ip" => {
            "client addresses an upstream may trust"
        }
        "x-http-method-override"
        | "x-http-method"
        | "x-method-override"
        | "x-original-url"
        | "x-rewrite-url" => "method and URL overrides would run another call than the token's",
        _ if name.starts_with("x-forwarded-") => "client addresses an upstream may trust",
        _ => return None,
    })
}

/// The one call shape the shim lets through for an action.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestShape {
    /// Uppercase, one of [`METHODS`].
    pub method: String,
    pub path: PathTemplate,
    /// Request headers forwarded beside [`DEFAULT_HEADERS`], lowercase.
    pub headers: Vec<String>,
}

impl RequestShape {
    /// Whether the agent's request header `name` (lowercase, as `http` keeps names)
    /// goes to the upstream.
    pub fn forwards(&self, name: &str) -> bool {
        DEFAULT_HEADERS.iter().any(|(h, _)| *h == name) || self.headers.iter().any(|h| h == name)
    }

    /// Whether a request (already-normalised path) fits. Methods are case-sensitive
    /// (RFC 9110 §9.1): `post` is not `POST`, and a shim forwards the spelling it got.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        self.method == method && self.path.matches(path)
    }
}

/// A path template such as `/repos/{owner}/{repo}/issues`: literal segments and
/// `{name}` segments, each placeholder a whole segment matching one non-empty
/// segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathTemplate {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Segment {
    Literal(String),
    Param(String),
}

/// Why a `path` is not a valid template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathTemplateError {
    #[error("must start with '/'")]
    NoLeadingSlash,
    #[error("must not hold a query or fragment ('?' or '#')")]
    QueryOrFragment,
    #[error("must not hold whitespace or control characters")]
    BadCharacter,
    #[error("empty segment ('//' or a trailing '/')")]
    EmptySegment,
    #[error("'.' and '..' segments are not allowed")]
    DotSegment,
    #[error("segment {segment:?}: a placeholder must be a whole segment, like {{name}}")]
    PartialPlaceholder { segment: String },
    #[error("placeholder {{{name}}}: names are [a-z_][a-z0-9_]*")]
    BadParamName { name: String },
    #[error("placeholder {{{name}}} appears twice")]
    DuplicateParam { name: String },
}

impl PathTemplate {
    /// Parses and validates a template.
    pub fn parse(text: &str) -> Result<Self, PathTemplateError> {
        let rest = text
            .strip_prefix('/')
            .ok_or(PathTemplateError::NoLeadingSlash)?;
        if text.contains(['?', '#']) {
            return Err(PathTemplateError::QueryOrFragment);
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(PathTemplateError::BadCharacter);
        }
        let mut segments = Vec::new();
        let mut seen = BTreeSet::new();
        if !rest.is_empty() {
            for seg in rest.split('/') {
                if seg.is_empty() {
                    return Err(PathTemplateError::EmptySegment);
                }
                if seg == "." || seg == ".." {
                    return Err(PathTemplateError::DotSegment);
                }
                if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    if name.contains(['{', '}']) {
                        return Err(PathTemplateError::PartialPlaceholder {
                            segment: seg.to_owned(),
                        });
                    }
                    if !is_param_name(name) {
                        return Err(PathTemplateError::BadParamName {
                            name: name.to_owned(),
                        });
                    }
                    if !seen.insert(name) {
                        return Err(PathTemplateError::DuplicateParam {
                            name: name.to_owned(),
                        });
                    }
                    segments.push(Segment::Param(name.to_owned()));
                } else if seg.contains(['{', '}']) {
                    return Err(PathTemplateError::PartialPlaceholder {
                        segment: seg.to_owned(),
                    });
                } else {
                    segments.push(Segment::Literal(seg.to_owned()));
                }
            }
        }
        Ok(Self {
            text: text.to_owned(),
            segments,
        })
    }

    /// Whether an already-normalised path (no query) fits the template. A
    /// placeholder matches one non-empty segment, which for defence in depth must
    /// not be `.` or `..` nor hold '?' or '#'.
    pub fn matches(&self, path: &str) -> bool {
        self.captures(path).is_some()
    }

    /// Like [`matches`](Self::matches), returning `(placeholder, value)` pairs in
    /// template order.
    pub fn captures<'p>(&self, path: &'p str) -> Option<Vec<(&str, &'p str)>> {
        let rest = path.strip_prefix('/')?;
        let mut parts = (!rest.is_empty())
            .then(|| rest.split('/'))
            .into_iter()
            .flatten();
        let mut captured = Vec::new();
        for segment in &self.segments {
            let part = parts.next()?;
            match segment {
                Segment::Literal(lit) => {
                    if part != lit {
                        return None;
                    }
                }
                Segment::Param(name) => {
                    if part.is_empty() || part == "." || part == ".." || part.contains(['?', '#']) {
                        return None;
                    }
                    captured.push((name.as_str(), part));
                }
            }
        }
        parts.next().is_none().then_some(captured)
    }

    /// Placeholder names in template order.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Param(name) => Some(name.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn is_param_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
}
