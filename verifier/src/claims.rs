//! The registered claims (RFC 7519 §4.1), checked with our own strict code rather than a
//! JWT library's defaults, which accept a missing `aud` or `iss`, an `iss` array, a
//! far-future `exp` or a future `nbf`:
//! - `sub` a non-empty string without control, invisible or bidirectional-control
//!   characters, at most 1 KiB;
//! - `aud` a string, or a non-empty array of strings, naming the expected audience;
//! - `exp` and `iat` present, `nbf` honoured when present (and not after `exp`), all
//!   NumericDates (§2);
//! - an explicit leeway, and a cap on both `exp - iat` and `exp - now`.
//!
//! `iss` is matched before this (it chooses the keys): see [`crate::issuers`].

use std::time::Duration;

use serde_json::Value;

/// Longest `sub` accepted.
pub const MAX_SUBJECT_LEN: usize = 1024;

/// How strictly time claims are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimRules {
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// Longest `exp - iat` (and `exp - now`) accepted.
    pub max_lifetime: Duration,
}

/// What the checks establish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedClaims {
    pub subject: String,
    /// `exp`, unix seconds.
    pub expires_at: u64,
}

/// A refused claim: its name and a fixed description of the problem.
pub type ClaimProblem = (&'static str, &'static str);

/// Characters that make one identity look like another: zero-width and other
/// invisible format characters, and bidirectional controls (which reorder what an
/// operator reads in a log line).
pub fn is_invisible_or_bidi(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{E0000}'..='\u{E007F}'
            | '\u{E0100}'..='\u{E01EF}'
    )
}

/// A NumericDate (RFC 7519 §2): a JSON number of seconds. Fractions are truncated;
/// negative, non-finite or non-number values are refused.
pub fn numeric_date(
    claims: &serde_json::Map<String, Value>,
    name: &'static str,
) -> Result<Option<u64>, ClaimProblem> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(v) = n.as_u64() {
                Ok(Some(v))
            } else {
                match n.as_f64() {
                    Some(f) if (0.0..1e11).contains(&f) => Ok(Some(f as u64)),
                    _ => Err((name, "is not a valid NumericDate")),
                }
            }
        }
        Some(_) => Err((name, "is not a number")),
    }
}

/// Whether `aud` (a string, or a non-empty array of strings) names one of
/// `audiences`, exactly.
pub fn names_audience(
    claims: &serde_json::Map<String, Value>,
    audiences: &[&str],
) -> Result<(), ClaimProblem> {
    let expected = |a: &str| audiences.contains(&a);
    match claims.get("aud") {
        Some(Value::String(a)) if expected(a) => Ok(()),
        Some(Value::Array(list)) if !list.is_empty() => {
            if !list.iter().all(Value::is_string) {
                return Err(("aud", "array holds a non-string"));
            }
            if !list.iter().filter_map(Value::as_str).any(expected) {
                return Err(("aud", "does not name the expected audience"));
            }
            Ok(())
        }
        Some(Value::String(_)) => Err(("aud", "does not name the expected audience")),
        Some(Value::Array(_)) => Err(("aud", "is an empty array")),
        Some(_) => Err(("aud", "is not a string or array of strings")),
        None => Err(("aud", "is missing")),
    }
}

/// Checks `sub`, `aud`, `exp`, `iat` and `nbf` against `audience` at `now`.
pub fn check_claims(
    claims: &serde_json::Map<String, Value>,
    rules: &ClaimRules,
    audience: &str,
    now: u64,
) -> Result<CheckedClaims, ClaimProblem> {
    check_claims_for(claims, rules, &[audience], now)
}

/// [`check_claims`] where `aud` may name any one of `audiences` (an authorization
/// server known by its issuer and by its token endpoint URL, RFC 7523 §3).
pub fn check_claims_for(
    claims: &serde_json::Map<String, Value>,
    rules: &ClaimRules,
    audiences: &[&str],
    now: u64,
) -> Result<CheckedClaims, ClaimProblem> {
    let leeway = rules.leeway.as_secs();
    let max_life = rules.max_lifetime.as_secs();

    let subject = match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_SUBJECT_LEN => s.clone(),
        Some(Value::String(_)) => return Err(("sub", "is empty or too long")),
        Some(_) => return Err(("sub", "is not a string")),
        None => return Err(("sub", "is missing")),
    };
    if subject.chars().any(char::is_control) {
        return Err(("sub", "contains control characters"));
    }
    if subject.chars().any(is_invisible_or_bidi) {
        return Err((
            "sub",
            "contains invisible or bidirectional-control characters",
        ));
    }

    names_audience(claims, audiences)?;

    let exp = numeric_date(claims, "exp")?.ok_or(("exp", "is missing"))?;
    let iat = numeric_date(claims, "iat")?.ok_or(("iat", "is missing"))?;
    if now > exp.saturating_add(leeway) {
        return Err(("exp", "has passed"));
    }
    if exp.saturating_sub(now) > max_life.saturating_add(leeway) {
        return Err(("exp", "is too far in the future"));
    }
    if iat > now.saturating_add(leeway) {
        return Err(("iat", "is in the future"));
    }
    if exp <= iat {
        return Err(("exp", "is not after iat"));
    }
    if exp - iat > max_life {
        return Err(("exp", "token lifetime exceeds the allowed maximum"));
    }
    if let Some(nbf) = numeric_date(claims, "nbf")? {
        if nbf > now.saturating_add(leeway) {
            return Err(("nbf", "is in the future"));
        }
        if nbf > exp {
            return Err(("nbf", "is after exp"));
        }
    }
    Ok(CheckedClaims {
        subject,
        expires_at: exp,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn check(v: Value) -> Result<CheckedClaims, ClaimProblem> {
        let rules = ClaimRules {
            leeway: Duration::from_secs(30),
            max_lifetime: Duration::from_secs(3600),
        };
        check_claims(v.as_object().unwrap(), &rules, "https://sts", NOW)
    }

    #[test]
    fn claim_rules() {
        let good =
            json!({"iss":"https://k8s","sub":"a","aud":"https://sts","exp":NOW+60,"iat":NOW});
        assert!(check(good).is_ok());
        let array = json!({"sub":"a","aud":["x","https://sts"],"exp":NOW+60,"iat":NOW});
        assert!(check(array).is_ok());
        let cases = [
            (json!({"sub":"a","exp":NOW+60,"iat":NOW}), "aud"),
            (json!({"sub":"a","aud":7,"exp":NOW+60,"iat":NOW}), "aud"),
            (
                json!({"sub":"a","aud":{"a":1},"exp":NOW+60,"iat":NOW}),
                "aud",
            ),
            (json!({"sub":"a","aud":[],"exp":NOW+60,"iat":NOW}), "aud"),
            (
                json!({"sub":"a","aud":"other","exp":NOW+60,"iat":NOW}),
                "aud",
            ),
            (
                json!({"sub":"a","aud":["https://sts", 1],"exp":NOW+60,"iat":NOW}),
                "aud",
            ),
            (json!({"sub":"a","aud":"https://sts","iat":NOW}), "exp"),
            (
                json!({"sub":"a","aud":"https://sts","exp":"soon","iat":NOW}),
                "exp",
            ),
            (
                json!({"sub":"a","aud":"https://sts","exp":-5,"iat":NOW}),
                "exp",
            ),
            (
                json!({"sub":"a","aud":"https://sts","exp":NOW+10_000_000,"iat":NOW}),
                "exp",
            ),
            (
                json!({"sub":"a","aud":"https://sts","exp":NOW-31,"iat":NOW-100}),
                "exp",
            ),
            (json!({"sub":"a","aud":"https://sts","exp":NOW+60}), "iat"),
            (
                json!({"sub":"a","aud":"https://sts","exp":NOW+60,"iat":NOW+120}),
                "iat",
            ),
            (
                json!({"sub":"a","aud":"https://sts","exp":NOW+60,"iat":NOW,"nbf":NOW+60}),
                "nbf",
            ),
            (
                json!({"sub":"a","aud":"https://sts","exp":NOW+60,"iat":NOW,"nbf":"x"}),
                "nbf",
            ),
            (json!({"aud":"https://sts","exp":NOW+60,"iat":NOW}), "sub"),
            (
                json!({"sub":5,"aud":"https://sts","exp":NOW+60,"iat":NOW}),
                "sub",
            ),
            (
                json!({"sub":"","aud":"https://sts","exp":NOW+60,"iat":NOW}),
                "sub",
            ),
            (
                json!({"sub":"a\u{7}","aud":"https://sts","exp":NOW+60,"iat":NOW}),
                "sub",
            ),
            (
                json!({"sub":"adm\u{202E}nimda","aud":"https://sts","exp":NOW+60,"iat":NOW}),
                "sub",
            ),
            (
                json!({"sub":"a\u{200B}b","aud":"https://sts","exp":NOW+60,"iat":NOW}),
                "sub",
            ),
            (
                json!({"sub":"a","aud":"https://sts","exp":NOW+10,"iat":NOW-10,"nbf":NOW+20}),
                "nbf",
            ),
        ];
        for (c, claim) in cases {
            let got = check(c.clone()).err().map(|e| e.0);
            assert_eq!(got, Some(claim), "{c}");
        }
        // Leeway: expired 20 s ago is still inside 30 s.
        let within = json!({"sub":"a","aud":"https://sts","exp":NOW-20,"iat":NOW-100});
        assert!(check(within).is_ok());
    }
}
