//! SPIFFE IDs checked against their own syntax (the SPIFFE ID specification, §2)
//! before any catalogue pattern sees them, so that `spiffe://example.org/agent/../x`,
//! `spiffe://Example.org/a`, `spiffe://example.org/a/` or a percent-encoded path never
//! matches a pattern written for a well-formed identity.

/// Longest SPIFFE ID accepted, in bytes (the specification's limit).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// Whether `id`, which starts with a `spiffe:` scheme in any case, is a valid SPIFFE ID:
/// `spiffe://` (lowercase), a trust domain of lowercase letters, digits, `.`, `-` and
/// `_`, then an optional path of non-empty segments of letters, digits, `.`, `-` and
/// `_` that are not `.` or `..`, with no trailing slash, query, fragment, port,
/// user info or percent-encoding.
pub fn is_valid_spiffe_id(id: &str) -> Result<(), &'static str> {
    if id.len() > MAX_SPIFFE_ID_LEN {
        return Err("is longer than 2048 bytes");
    }
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or("does not start with spiffe:// in lowercase")?;
    let (domain, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if domain.is_empty() {
        return Err("has an empty trust domain");
    }
    if !domain
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err("has a trust domain with characters other than [a-z0-9.-_]");
    }
    if path.is_empty() {
        return Ok(());
    }
    for segment in path[1..].split('/') {
        if segment.is_empty() {
            return Err("has an empty path segment or a trailing slash");
        }
        if segment == "." || segment == ".." {
            return Err("has a '.' or '..' path segment");
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err("has a path segment with characters other than [a-zA-Z0-9.-_]");
        }
    }
    Ok(())
}

/// Whether `sub` claims to be a SPIFFE ID (its scheme is `spiffe`, in any case).
pub fn looks_like_spiffe(sub: &str) -> bool {
    sub.get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("spiffe:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specifications_examples() {
        for good in [
            "spiffe://example.org",
            "spiffe://example.org/agent/triage",
            "spiffe://prod-1.example_org/ns/agents/sa/a.b-c_d",
        ] {
            assert_eq!(is_valid_spiffe_id(good), Ok(()), "{good}");
        }
        for bad in [
            "SPIFFE://example.org/a",
            "spiffe://Example.org/a",
            "spiffe:///a",
            "spiffe://example.org/",
            "spiffe://example.org/a/",
            "spiffe://example.org//a",
            "spiffe://example.org/a/../b",
            "spiffe://example.org/./a",
            "spiffe://example.org/a%2Fb",
            "spiffe://example.org/a?x=1",
            "spiffe://example.org/a#f",
            "spiffe://example.org:443/a",
            "spiffe://user@example.org/a",
            "spiffe://example.org/caf\u{e9}",
            "spiffe:example.org/a",
        ] {
            assert!(is_valid_spiffe_id(bad).is_err(), "{bad}");
            assert!(looks_like_spiffe(bad), "{bad}");
        }
        let long = format!("spiffe://example.org/{}", "a".repeat(MAX_SPIFFE_ID_LEN));
        assert!(is_valid_spiffe_id(&long).is_err());
        assert!(!looks_like_spiffe("system:serviceaccount:a:b"));
    }
}
