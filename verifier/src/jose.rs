//! JOSE: the compact JWS serialization (RFC 7515 §7.1), the protected header we read,
//! and the algorithms a verifier may accept (RFC 7518 §3).
//!
//! Only asymmetric algorithms exist in [`Algorithm`]: `none` and `HS*` cannot be
//! configured or parsed, since a public JWKS cannot key an HMAC. Of the header only
//! `alg`, `kid` and `typ` are read; `jku`, `x5u`, `jwk`, `x5c` and `x5t` are tolerated
//! and ignored (keys come from configuration only); any `crit` is refused because no JWS
//! extension is implemented (RFC 7515 §4.1.11), and so is every other parameter that
//! would change processing (`zip`, `b64`, a nested `cty: JWT`, JWE parameters).

use serde::Deserialize;
use serde_json::Value;

use crate::base64url;
use crate::error::JwtError;

/// A JWS signature algorithm a verifier may allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    ES256,
    ES384,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    EdDSA,
}

impl Algorithm {
    /// Every algorithm, in a stable order.
    pub const ALL: [Algorithm; 9] = [
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::EdDSA,
    ];

    /// The algorithm named `s` exactly (case-sensitive, as RFC 7518 registers it).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        use Algorithm::*;
        match self {
            ES256 => "ES256",
            ES384 => "ES384",
            RS256 => "RS256",
            RS384 => "RS384",
            RS512 => "RS512",
            PS256 => "PS256",
            PS384 => "PS384",
            PS512 => "PS512",
            EdDSA => "EdDSA",
        }
    }
}

/// The three segments of a compact JWS.
#[derive(Debug, Clone, Copy)]
pub struct CompactJws<'a> {
    pub header: &'a str,
    pub payload: &'a str,
    pub signature: &'a str,
    /// `header.payload`: the bytes the signature covers.
    pub signing_input: &'a str,
}

/// Splits a compact JWS into exactly three non-empty base64url segments.
pub fn split_compact(raw: &str) -> Result<CompactJws<'_>, JwtError> {
    let mut it = raw.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (it.next(), it.next(), it.next(), it.next())
    else {
        return Err(JwtError::Malformed("not three segments"));
    };
    for part in [header, payload, signature] {
        if part.is_empty() {
            return Err(JwtError::Malformed("empty segment"));
        }
        if !base64url::is_alphabet(part) {
            return Err(JwtError::Malformed("segment is not base64url"));
        }
    }
    Ok(CompactJws {
        header,
        payload,
        signature,
        signing_input: &raw[..header.len() + 1 + payload.len()],
    })
}

/// The header fields we read.
#[derive(Debug, Deserialize)]
pub struct JoseHeader {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub typ: Option<String>,
}

/// Header parameters a token may carry. Only `alg`, `kid` and `typ` are used; the
/// key-reference parameters (`jku`, `x5u`, `jwk`, `x5c`, `x5t`, `x5t#S256`) are
/// tolerated because real issuers send them, and never read; `cty` is tolerated
/// unless it announces a nested JWT. Anything else (`zip` compression, `b64`
/// unencoded payloads, JWE parameters, extensions) changes how the token must be
/// processed, and is refused rather than ignored.
const KNOWN_HEADER_PARAMETERS: [&str; 10] = [
    "alg", "kid", "typ", "cty", "jku", "x5u", "jwk", "x5c", "x5t", "x5t#S256",
];

/// Decodes and checks the protected header.
pub fn parse_header(segment: &str) -> Result<JoseHeader, JwtError> {
    let bytes = base64url::decode(segment).ok_or(JwtError::Malformed("header is not base64url"))?;
    let object: serde_json::Map<String, Value> = serde_json::from_slice(&bytes)
        .map_err(|_| JwtError::Malformed("header is not a JOSE header"))?;
    if object.contains_key("crit") {
        return Err(JwtError::CriticalHeader);
    }
    let nested = object
        .get("cty")
        .and_then(Value::as_str)
        .is_some_and(|cty| cty.eq_ignore_ascii_case("jwt"));
    if nested
        || !object
            .keys()
            .all(|k| KNOWN_HEADER_PARAMETERS.contains(&k.as_str()))
    {
        return Err(JwtError::UnsupportedHeader);
    }
    serde_json::from_value(Value::Object(object))
        .map_err(|_| JwtError::Malformed("header is not a JOSE header"))
}

/// Decodes the payload as a JSON object (the JWT claims set, RFC 7519 §7.2).
pub fn parse_claims(segment: &str) -> Result<serde_json::Map<String, Value>, JwtError> {
    let bytes =
        base64url::decode(segment).ok_or(JwtError::Malformed("payload is not base64url"))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwtError::Malformed("payload is not a JSON object")),
    }
}

/// Decodes a signature segment.
pub fn decode_signature(segment: &str) -> Option<Vec<u8>> {
    base64url::decode(segment)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::base64url::encode;

    #[test]
    fn compact_split_rejects_bad_shapes() {
        for bad in ["", "a.b", "a.b.c.d", "a..c", "a.b.c=", "a.b.c d", "a.b+.c"] {
            assert!(split_compact(bad).is_err(), "{bad}");
        }
        let jws = split_compact("aa.bb.cc").unwrap();
        assert_eq!(jws.signing_input, "aa.bb");
    }

    #[test]
    fn header_with_crit_is_refused() {
        for header in [
            r#"{"alg":"ES256","crit":["exp"]}"#,
            r#"{"alg":"ES256","crit":null}"#,
        ] {
            assert_eq!(
                parse_header(&encode(header.as_bytes())).unwrap_err(),
                JwtError::CriticalHeader
            );
        }
        let h = parse_header(&encode(br#"{"alg":"ES256","kid":"k","jku":"http://x"}"#));
        assert_eq!(h.unwrap().kid.as_deref(), Some("k"));
    }

    #[test]
    fn parameters_that_change_processing_are_refused() {
        for header in [
            r#"{"alg":"ES256","zip":"DEF"}"#,
            r#"{"alg":"ES256","b64":false}"#,
            r#"{"alg":"ES256","cty":"JWT"}"#,
            r#"{"alg":"ES256","enc":"A128GCM"}"#,
            r#"{"alg":"ES256","epk":{}}"#,
            r#"{"alg":"ES256","x-custom":1}"#,
        ] {
            assert_eq!(
                parse_header(&encode(header.as_bytes())).unwrap_err(),
                JwtError::UnsupportedHeader,
                "{header}"
            );
        }
        for header in [
            r#"{"alg":"RS256","kid":"k","typ":"JWT","x5t":"abc"}"#,
            r#"{"alg":"ES256","x5t#S256":"abc","x5c":["a"],"jwk":{},"x5u":"u"}"#,
            r#"{"alg":"ES256","cty":"application/json"}"#,
        ] {
            assert!(parse_header(&encode(header.as_bytes())).is_ok(), "{header}");
        }
    }

    #[test]
    fn symmetric_and_none_never_parse() {
        for name in ["none", "HS256", "HS384", "HS512", "es256", "ES256K", ""] {
            assert_eq!(Algorithm::parse(name), None, "{name}");
        }
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::parse(a.as_str()), Some(a));
        }
    }

    #[test]
    fn claims_must_be_an_object() {
        assert!(parse_claims(&encode(b"[1]")).is_err());
        assert!(parse_claims(&encode(b"{\"a\":1}")).is_ok());
    }
}
