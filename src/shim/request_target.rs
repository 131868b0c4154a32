//! The request target the shim matches and forwards: one canonical, origin-form path.
//!
//! The shim authorises a request by matching its path against the one
//! `[action.request]` template the token allows, then forwards it to a legacy upstream.
//! If the shim matched one spelling and the upstream routed another (`/a/%2e%2e/admin`,
//! `/a//b`, `/a%2Fb`, `/a/..;/b`, `http://other/x`), the token would open a door it was
//! never issued for. So this module owns the single spelling both sides see: the shim
//! matches [`Target::path`] and forwards exactly that string. Normalisation is limited
//! to the two rewrites RFC 3986 calls equivalence-preserving for every URI consumer:
//! "percent-encoded octets that correspond to unreserved characters ... should be
//! decoded" (§6.2.2.2) and "uppercase hexadecimal digits" in the remaining escapes
//! (§6.2.2.1). Everything whose meaning depends on the server — dot segments, which
//! §5.2.4 removes but servers remove before or after decoding, or after stripping
//! `;` parameters; empty segments some servers merge; encoded or back-slashed
//! separators; stray or control escapes — is refused rather than repaired, because a
//! repair is a guess about the upstream and a wrong guess is a bypass.

use std::fmt::Write as _;

/// Longest path (as received, in bytes) the shim accepts; legitimate API paths are far
/// shorter, and a bound keeps the work per request small.
pub const MAX_PATH_BYTES: usize = 8192;

/// A request target the shim may forward: origin-form, canonical.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Canonical path: starts with '/', percent-escapes of unreserved characters decoded,
    /// remaining escapes with uppercase hex.
    pub path: String,
    /// The query as received (without '?'), if any. Not interpreted.
    pub query: Option<String>,
}

/// Why a request target is refused. Messages are fixed and never quote the input: the
/// input is attacker text and ends up in logs and responses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error(
        "the request target must be a path (origin-form), not an absolute URI, an authority, \
         '*' or a path starting with '//'"
    )]
    NotOriginForm,
    #[error("the request target must not hold a fragment ('#')")]
    Fragment,
    #[error("the request path is longer than {max} bytes", max = MAX_PATH_BYTES)]
    TooLong,
    #[error(
        "the request path must not hold an empty segment ('//', a trailing '/', or a segment \
         that is only ';' parameters)"
    )]
    EmptySegment,
    #[error(
        "the request path must not hold a segment a server could read as '.' or '..' (encoded, with ';' parameters, or with trailing dots or spaces)"
    )]
    DotSegment,
    #[error("the request path must not name an NTFS alternate data stream (':$' or '::')")]
    AlternateStream,
    #[error("the request path must not hold a backslash")]
    Backslash,
    #[error("the request path must not hold an encoded separator (%2F or %5C)")]
    EncodedSeparator,
    #[error("every '%' in the request path must start a two-hex-digit escape (%XX)")]
    BadEscape,
    #[error("the request path must not hold a control character, raw or percent-encoded")]
    ControlCharacter,
    #[error("the request path holds a character that must be percent-encoded")]
    InvalidCharacter,
    #[error("the request path must not hold an encoded '%' (%25): double encoding is refused")]
    DoubleEncoding,
    #[error(
        "percent-encoded non-ASCII in the request path must be valid UTF-8 and not a character servers fold to '.', '/' or '\\'"
    )]
    AmbiguousUnicode,
}

impl TargetError {
    /// A stable snake_case code for audit records and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotOriginForm => "not_origin_form",
            Self::Fragment => "fragment",
            Self::TooLong => "too_long",
            Self::EmptySegment => "empty_segment",
            Self::DotSegment => "dot_segment",
            Self::AlternateStream => "alternate_stream",
            Self::Backslash => "backslash",
            Self::EncodedSeparator => "encoded_separator",
            Self::BadEscape => "bad_escape",
            Self::ControlCharacter => "control_character",
            Self::InvalidCharacter => "invalid_character",
            Self::DoubleEncoding => "double_encoding",
            Self::AmbiguousUnicode => "ambiguous_unicode",
        }
    }
}

/// Canonicalises a request URI as received by the server (http::Uri).
pub fn canonicalize(uri: &http::Uri) -> Result<Target, TargetError> {
    // hyper hands absolute-form (`GET http://other/x`) and authority-form targets to the
    // server as they came; forwarding either would let the client pick the host.
    if uri.scheme().is_some() || uri.authority().is_some() {
        return Err(TargetError::NotOriginForm);
    }
    let path = uri.path();
    // `*` has no leading '/'. `//host/x` parses as a path here, but as a relative
    // reference it is a network-path naming another host (RFC 3986 §4.2), so it is
    // refused as such rather than merely as an empty segment.
    let Some(rest) = path.strip_prefix('/') else {
        return Err(TargetError::NotOriginForm);
    };
    if rest.starts_with('/') {
        return Err(TargetError::NotOriginForm);
    }
    // http::Uri drops a fragment while parsing, so this holds only if that ever changes;
    // a fragment must never be silently forwarded or matched as part of the path.
    if uri
        .path_and_query()
        .is_some_and(|pq| pq.as_str().contains('#'))
    {
        return Err(TargetError::Fragment);
    }
    // Checked on the received form: decoding only shortens, so the canonical path is
    // bounded too, and the work below is bounded before it starts.
    if path.len() > MAX_PATH_BYTES {
        return Err(TargetError::TooLong);
    }

    let mut canonical = String::with_capacity(path.len());
    if rest.is_empty() {
        canonical.push('/');
    } else {
        for raw in rest.split('/') {
            canonical.push('/');
            let start = canonical.len();
            canonical_segment(raw.as_bytes(), &mut canonical)?;
            let segment = canonical.get(start..).unwrap_or_default();
            check_unicode(segment)?;
            check_segment(segment)?;
        }
    }
    Ok(Target {
        path: canonical,
        query: uri.query().map(str::to_owned),
    })
}

/// Appends the canonical form of one raw segment (the bytes between two '/').
fn canonical_segment(raw: &[u8], out: &mut String) -> Result<(), TargetError> {
    if raw.is_empty() {
        return Err(TargetError::EmptySegment);
    }
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        match b {
            b'%' => {
                let hi = raw.get(i + 1).copied().and_then(hex_value);
                let lo = raw.get(i + 2).copied().and_then(hex_value);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(TargetError::BadEscape);
                };
                push_decoded((hi << 4) | lo, out)?;
                i += 3;
            }
            // Windows-flavoured servers and some proxies treat '\' as '/'.
            b'\\' => return Err(TargetError::Backslash),
            _ if is_control(b) => return Err(TargetError::ControlCharacter),
            _ if is_pchar(b) => {
                out.push(char::from(b));
                i += 1;
            }
            // Raw non-ASCII (http::Uri accepts UTF-8 here) and the few ASCII characters
            // http tolerates but RFC 3986 does not (`"{}|^[]`): servers differ on how
            // they decode or normalise these (Latin-1 vs UTF-8, full-width '．' folded
            // to '.'), so there is no one spelling to match; clients must escape them.
            _ => return Err(TargetError::InvalidCharacter),
        }
    }
    Ok(())
}

/// Appends one percent-decoded octet in canonical form.
fn push_decoded(byte: u8, out: &mut String) -> Result<(), TargetError> {
    match byte {
        // `%25` decodes to '%': an upstream that decodes once more (or a framework that
        // decodes twice) would see `%2e%2e` or `%2F` where we saw plain text.
        b'%' => Err(TargetError::DoubleEncoding),
        // An encoded separator is one segment to us and two to a server that decodes
        // before routing; neither reading can be chosen safely.
        b'/' | b'\\' => Err(TargetError::EncodedSeparator),
        _ if is_control(byte) => Err(TargetError::ControlCharacter),
        // RFC 3986 §6.2.2.2: escapes of unreserved characters are equivalent to them.
        _ if is_unreserved(byte) => {
            out.push(char::from(byte));
            Ok(())
        }
        // Everything else keeps its escape (decoding '%25', '%3F', '%23' ... would change
        // meaning), with uppercase hex (§6.2.2.1). Writing to a String cannot fail.
        _ => {
            let _ = write!(out, "%{byte:02X}");
            Ok(())
        }
    }
}

/// Characters that Unicode compatibility normalisation (NFKC), which some servers and
/// frameworks apply to paths, folds into '.', '..', '...', '/' or '\\'.
const FOLDS_TO_SEPARATOR_OR_DOT: [char; 8] = [
    '\u{2024}', // ONE DOT LEADER → .
    '\u{2025}', // TWO DOT LEADER → ..
    '\u{2026}', // HORIZONTAL ELLIPSIS → ...
    '\u{FE52}', // SMALL FULL STOP → .
    '\u{FF0E}', // FULLWIDTH FULL STOP → .
    '\u{FF0F}', // FULLWIDTH SOLIDUS → /
    '\u{FE68}', // SMALL REVERSE SOLIDUS → \
    '\u{FF3C}', // FULLWIDTH REVERSE SOLIDUS → \
];

/// Refuses percent-encoded non-ASCII that is not one unambiguous UTF-8 text: invalid
/// or overlong sequences (`%C0%AE` is an overlong '.', which lenient decoders accept)
/// and characters servers fold into separators or dots.
fn check_unicode(segment: &str) -> Result<(), TargetError> {
    if !segment.contains('%') {
        return Ok(());
    }
    let bytes = decoded_bytes(segment);
    if bytes.is_ascii() {
        return Ok(());
    }
    match std::str::from_utf8(&bytes) {
        Ok(text) if !text.contains(FOLDS_TO_SEPARATOR_OR_DOT) => Ok(()),
        _ => Err(TargetError::AmbiguousUnicode),
    }
}

/// Refuses a canonical segment whose meaning a server may change: a dot segment, also
/// behind `;` parameters (`..;` is Tomcat's traversal), and a segment that is nothing
/// but parameters (servers that strip them see an empty segment). `%3B` counts as `;`
/// because some servers decode before stripping parameters.
fn check_segment(segment: &str) -> Result<(), TargetError> {
    let stem_end = [segment.find(';'), segment.find("%3B")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(segment.len());
    let stem = segment.get(..stem_end).unwrap_or(segment);
    if stem.is_empty() {
        return Err(TargetError::EmptySegment);
    }
    let decoded = percent_decoded(stem);
    // Windows (IIS, http.sys) drops trailing dots and spaces, and some servers trim any
    // whitespace: a segment of dots and blanks may be read as '.' or '..', or vanish.
    let visible: String = decoded
        .chars()
        .filter(|c| !c.is_whitespace() && !is_invisible(*c))
        .collect();
    if visible.is_empty() {
        return Err(TargetError::EmptySegment);
    }
    if visible.chars().all(|c| c == '.') {
        return Err(TargetError::DotSegment);
    }
    // `name::$DATA`, `name:stream:$DATA`: NTFS reads the file's data stream.
    if decoded.contains(":$") || decoded.contains("::") {
        return Err(TargetError::AlternateStream);
    }
    Ok(())
}

/// Zero-width and other invisible format characters some servers drop.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200B}'..='\u{200F}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}' | '\u{00AD}' | '\u{180E}'
    )
}

/// `segment` with its percent-escapes decoded (lossily: invalid UTF-8 was refused
/// already by [`check_unicode`]).
fn percent_decoded(segment: &str) -> String {
    if !segment.contains('%') {
        return segment.to_string();
    }
    String::from_utf8_lossy(&decoded_bytes(segment)).into_owned()
}

/// The bytes of `segment` with its `%XX` escapes decoded.
fn decoded_bytes(segment: &str) -> Vec<u8> {
    let raw = segment.as_bytes();
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        let escaped = (b == b'%')
            .then(|| Some((hex_value(*raw.get(i + 1)?)? << 4) | hex_value(*raw.get(i + 2)?)?))
            .flatten();
        match escaped {
            Some(decoded) => {
                bytes.push(decoded);
                i += 3;
            }
            None => {
                bytes.push(b);
                i += 1;
            }
        }
    }
    bytes
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7F
}

/// RFC 3986 §2.3: ALPHA / DIGIT / "-" / "." / "_" / "~".
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 §3.3 pchar, less pct-encoded (handled by the caller): unreserved /
/// sub-delims / ":" / "@".
fn is_pchar(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;

    fn canon(s: &str) -> Result<Target, TargetError> {
        let uri: http::Uri = s.parse().expect("test input must parse as http::Uri");
        canonicalize(&uri)
    }

    #[test]
    fn accepted_inputs_and_their_canonical_form() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("/", "/", None),
            ("/repos/a/b/issues", "/repos/a/b/issues", None),
            ("/docs/%7Euser", "/docs/~user", None),
            ("/docs/%7euser", "/docs/~user", None),
            ("/a%2db", "/a-b", None),
            ("/%41%7a%30%2E%5F", "/Az0._", None),
            ("/a%c3%a9", "/a%C3%A9", None),
            ("/a%3f%23%3b", "/a%3F%23%3B", None),
            ("/docs/caf%c3%a9", "/docs/caf%C3%A9", None),
            ("/a?x=1&y=..", "/a", Some("x=1&y=..")),
            ("/a?x=%2F..%2f&z=//", "/a", Some("x=%2F..%2f&z=//")),
            ("/a?q\\z", "/a", Some("q\\z")),
            ("/a?", "/a", Some("")),
            ("/a;v=1/b", "/a;v=1/b", None),
            ("/a/.well-known/x", "/a/.well-known/x", None),
            ("/a/..a/b.json", "/a/..a/b.json", None),
            ("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,=", None),
        ];
        for (input, path, query) in cases {
            let t = canon(input).unwrap_or_else(|e| panic!("{input:?} refused: {e:?}"));
            assert_eq!(t.path, *path, "path of {input:?}");
            assert_eq!(t.query.as_deref(), *query, "query of {input:?}");
        }
    }

    #[test]
    fn refused_inputs_with_their_reason() {
        use TargetError::*;
        let long_ok = format!("/{}", "a".repeat(MAX_PATH_BYTES - 1));
        let too_long = format!("/{}", "a".repeat(MAX_PATH_BYTES));
        assert_eq!(canon(&long_ok).unwrap().path, long_ok);
        let cases: &[(&str, TargetError)] = &[
            ("/a/../b", DotSegment),
            ("/a/%2e%2e/b", DotSegment),
            ("/a/.%2E/b", DotSegment),
            ("/a/%2E/b", DotSegment),
            ("/./a", DotSegment),
            ("/a/..", DotSegment),
            ("/a/..;/b", DotSegment),
            ("/a/..;x=1/b", DotSegment),
            ("/a/.;/b", DotSegment),
            ("/a/%2e%2e%3b/b", DotSegment),
            ("/a/..%3Bx/b", DotSegment),
            ("/a/.../b", DotSegment),
            ("/a/..%20/b", DotSegment),
            ("/a/.%20/b", DotSegment),
            ("/a/..%C2%A0/b", DotSegment),
            ("/a/%20../b", DotSegment),
            ("/a/.%E2%80%8B./b", DotSegment),
            ("/a/%20/b", EmptySegment),
            ("/a/x::$DATA", AlternateStream),
            ("/a/x:stream:$data", AlternateStream),
            ("/a/x%3A%3A%24DATA", AlternateStream),
            ("/a//b", EmptySegment),
            ("/a/", EmptySegment),
            ("/a/;x/b", EmptySegment),
            ("/a/%3bx", EmptySegment),
            ("/a%2fb", EncodedSeparator),
            ("/a%2Fb", EncodedSeparator),
            ("/a%5Cb", EncodedSeparator),
            ("/a%5cb", EncodedSeparator),
            ("/a/..%2f..%2fadmin", EncodedSeparator),
            ("/a\\b", Backslash),
            ("/a/..\\..\\admin", Backslash),
            ("/a%00b", ControlCharacter),
            ("/a%0d%0aX:1", ControlCharacter),
            ("/a%1F", ControlCharacter),
            ("/a%7f", ControlCharacter),
            ("/a%zz", BadEscape),
            ("/a%2", BadEscape),
            ("/a%", BadEscape),
            ("/a%%41", BadEscape),
            ("/a%g1", BadEscape),
            ("/é", InvalidCharacter),
            ("/\u{ff0e}\u{ff0e}/admin", InvalidCharacter),
            ("/a{b}", InvalidCharacter),
            ("/a|b", InvalidCharacter),
            ("/a\"b", InvalidCharacter),
            ("/a^b", InvalidCharacter),
            ("/a[1]", InvalidCharacter),
            ("/a%25b", DoubleEncoding),
            ("/a/%252e%252e/b", DoubleEncoding),
            ("/a%252Fb", DoubleEncoding),
            ("/%EF%BC%8E%EF%BC%8E/admin", AmbiguousUnicode),
            ("/a%EF%BC%8Fb", AmbiguousUnicode),
            ("/%E2%80%A5/admin", AmbiguousUnicode),
            ("/%C0%AE%C0%AE/admin", AmbiguousUnicode),
            ("/a%C3", AmbiguousUnicode),
            ("/a%FF", AmbiguousUnicode),
            ("http://evil/x", NotOriginForm),
            ("HTTPS://evil/x", NotOriginForm),
            ("http://evil", NotOriginForm),
            ("evil:80", NotOriginForm),
            ("evil.example", NotOriginForm),
            ("*", NotOriginForm),
            ("//evil/x", NotOriginForm),
            ("///x", NotOriginForm),
            ("//", NotOriginForm),
            (&too_long, TooLong),
        ];
        for (input, want) in cases {
            assert_eq!(canon(input).as_ref(), Err(want), "{input:?}");
        }
    }

    /// What http::Uri refuses before we are called: these never reach `canonicalize`.
    #[test]
    fn http_uri_refuses_these_itself() {
        for input in [
            "",
            "/a b",
            "/a\tb",
            "/a\r\nb",
            "/a\0b",
            "/a\u{7f}b",
            "/a<b>",
            "/a`b",
            "a/b",
            "?x",
        ] {
            assert!(input.parse::<http::Uri>().is_err(), "{input:?} parsed");
        }
        assert!(http::Uri::try_from(&b"/a\xff"[..]).is_err());
        assert!(
            format!("/{}", "a".repeat(70_000))
                .parse::<http::Uri>()
                .is_err()
        );
    }

    /// http::Uri drops the fragment while parsing (`/a#x` has path `/a`), so what we
    /// match and forward never includes it: the `Fragment` check is defence in depth.
    #[test]
    fn http_uri_strips_fragments_and_they_never_reach_the_path() {
        for (input, path, query) in [
            ("/a#frag", "/a", None),
            ("/a#/../../admin", "/a", None),
            ("/a?x=1#/../admin", "/a", Some("x=1")),
            ("/a?#", "/a", Some("")),
        ] {
            let uri: http::Uri = input.parse().unwrap();
            assert!(!uri.path_and_query().unwrap().as_str().contains('#'));
            let t = canonicalize(&uri).unwrap();
            assert_eq!(
                (t.path.as_str(), t.query.as_deref()),
                (path, query),
                "{input:?}"
            );
        }
    }

    #[test]
    fn messages_are_fixed_and_reasons_distinct() {
        use TargetError::*;
        let all = [
            NotOriginForm,
            Fragment,
            TooLong,
            EmptySegment,
            DotSegment,
            Backslash,
            EncodedSeparator,
            BadEscape,
            ControlCharacter,
            InvalidCharacter,
            DoubleEncoding,
            AmbiguousUnicode,
            AlternateStream,
        ];
        let mut reasons: Vec<_> = all.iter().map(TargetError::reason).collect();
        assert!(
            reasons.iter().all(|r| {
                !r.is_empty() && r.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            })
        );
        reasons.sort_unstable();
        reasons.dedup();
        assert_eq!(reasons.len(), all.len());
        assert!(TooLong.to_string().contains("8192"));
        let err = canon("/evil-marker/../x").unwrap_err();
        assert!(!err.to_string().contains("evil-marker"));
    }

    fn assert_canonical_shape(t: &Target) {
        assert!(t.path.starts_with('/'));
        assert!(t.path.len() <= MAX_PATH_BYTES);
        assert!(!t.path.contains('\\'));
        let upper = t.path.to_ascii_uppercase();
        assert!(!upper.contains("%2F") && !upper.contains("%5C"), "{t:?}");
        if t.path != "/" {
            for seg in t.path[1..].split('/') {
                assert!(!seg.is_empty() && seg != "." && seg != "..", "{t:?}");
                let stem = seg.split(';').next().unwrap();
                assert!(stem != "." && stem != "..", "{t:?}");
            }
        }
        // Forwarding the canonical path can never name another host.
        let uri: http::Uri = t.path.parse().unwrap();
        assert!(uri.scheme().is_none() && uri.authority().is_none());
    }

    fn check_property(input: &str) {
        let Ok(uri) = input.parse::<http::Uri>() else {
            return;
        };
        if let Ok(t) = canonicalize(&uri) {
            assert_canonical_shape(&t);
            let again = match &t.query {
                Some(q) => format!("{}?{q}", t.path),
                None => t.path.clone(),
            };
            assert_eq!(canon(&again), Ok(t.clone()), "not a fixed point: {input:?}");
        }
    }

    fn tricky_segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just("%2e%2e".to_owned()),
            Just(".%2E".to_owned()),
            Just("..;".to_owned()),
            Just("%2e%2E%3b".to_owned()),
            "[a-zA-Z0-9._~;%25cCeEfF]{1,8}",
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic_and_canonical_is_a_fixed_point(s in any::<String>()) {
            check_property(&s);
        }

        #[test]
        fn uri_like_strings_never_panic_and_canonical_is_a_fixed_point(
            s in "[/?#%.;:@a-zA-Z0-9\\\\~_{}é*-]{0,40}",
        ) {
            check_property(&s);
        }

        #[test]
        fn traversal_shaped_paths_are_fixed_points_or_refused(
            segs in prop::collection::vec(tricky_segment(), 0..6),
            query in proptest::option::of("[a-z=&./%]{0,10}"),
        ) {
            let mut s = format!("/{}", segs.join("/"));
            if let Some(q) = query {
                s.push('?');
                s.push_str(&q);
            }
            check_property(&s);
        }

        /// Escaping unreserved characters does not change the canonical form (§6.2.2.2).
        #[test]
        fn escaping_unreserved_characters_is_equivalent(
            segs in prop::collection::vec("[a-zA-Z0-9_~-][a-zA-Z0-9._~-]{0,6}", 1..5),
            mask in any::<u64>(),
            upper in any::<bool>(),
        ) {
            let plain = format!("/{}", segs.join("/"));
            let mut escaped = String::new();
            for (i, c) in plain.chars().enumerate() {
                if c != '/' && mask & (1 << (i % 64)) != 0 {
                    if upper {
                        escaped.push_str(&format!("%{:02X}", c as u32));
                    } else {
                        escaped.push_str(&format!("%{:02x}", c as u32));
                    }
                } else {
                    escaped.push(c);
                }
            }
            let a = canon(&plain);
            prop_assert_eq!(canon(&escaped), a.clone());
            if let Ok(t) = a {
                prop_assert_eq!(t.path, plain);
            }
        }
    }
}
