//! Subject patterns: the `agents` and `subjects` entries of an action.
//!
//! A pattern is always bound to a trust: `TRUST:PATTERN` only matches identities
//! verified by that configured trust, and the unprefixed `spiffe://DOMAIN/...` form
//! only matches identities from a trust that lists `DOMAIN` in its
//! `spiffe_trust_domains`, so the same `sub` minted by another issuer never inherits
//! an entitlement. The matcher knows one wildcard, `*`, and is the classic two-pointer
//! algorithm: no recursion, no backtracking blow-up, O(pattern × subject) in the worst
//! case, and subjects longer than [`MAX_SUBJECT_LEN`] never match, so a hostile token
//! or a careless pattern cannot turn an authorisation check into a CPU sink.

use std::fmt;

use agent_sts_verifier::glob::glob_match;

use crate::identity::principal::{Principal, TrustDirectory};

/// Subjects longer than this many bytes never match any pattern; patterns longer
/// than this are rejected when the catalogue is loaded.
pub const MAX_SUBJECT_LEN: usize = 1024;

const SPIFFE_SCHEME: &str = "spiffe://";

/// One `agents` or `subjects` entry: `TRUST:PATTERN` or `spiffe://DOMAIN/PATH`.
/// `Display` gives back the original text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubjectPattern {
    text: String,
    kind: PatternKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PatternKind {
    /// `TRUST:PATTERN`: matches subjects verified by exactly that trust.
    Bound { trust: String, pattern: String },
    /// `spiffe://DOMAIN/PATH`: the whole text is the pattern; matches only
    /// principals whose trust lists `domain`.
    Spiffe { domain: String },
}

/// Why an `agents` or `subjects` entry is not a valid pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    #[error("empty entry")]
    Empty,
    #[error("{entry:?} names no trust: write TRUST:PATTERN, or a spiffe:// ID")]
    Unprefixed { entry: String },
    #[error("unknown trust {trust:?}")]
    UnknownTrust { trust: String },
    #[error("empty pattern after trust {trust:?}")]
    EmptyPattern { trust: String },
    #[error("invalid SPIFFE ID pattern {entry:?}: {reason}")]
    InvalidSpiffe { entry: String, reason: &'static str },
    #[error("no trust speaks for SPIFFE trust domain {domain:?}")]
    UnservedDomain { domain: String },
    #[error("pattern is {len} bytes long; at most {MAX_SUBJECT_LEN} can ever match")]
    TooLong { len: usize },
}

impl SubjectPattern {
    /// Parses an entry against the configured trusts.
    pub fn parse(entry: &str, trusts: &TrustDirectory) -> Result<Self, PatternError> {
        if entry.is_empty() {
            return Err(PatternError::Empty);
        }
        let kind = if let Some(rest) = entry.strip_prefix(SPIFFE_SCHEME) {
            let invalid = |reason| PatternError::InvalidSpiffe {
                entry: entry.to_owned(),
                reason,
            };
            let (domain, path) = rest
                .split_once('/')
                .ok_or_else(|| invalid("a path must follow the trust domain"))?;
            if domain.is_empty() {
                return Err(invalid("empty trust domain"));
            }
            if domain.contains('*') {
                return Err(invalid("the trust domain must be literal (no `*`)"));
            }
            if !domain
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            {
                return Err(invalid(
                    "the trust domain may only hold lowercase letters, digits, '.', '-' and '_'",
                ));
            }
            if path.is_empty() {
                return Err(invalid("a path must follow the trust domain"));
            }
            if entry.len() > MAX_SUBJECT_LEN {
                return Err(PatternError::TooLong { len: entry.len() });
            }
            if !trusts.speaks_for(domain) {
                return Err(PatternError::UnservedDomain {
                    domain: domain.to_owned(),
                });
            }
            PatternKind::Spiffe {
                domain: domain.to_owned(),
            }
        } else {
            let (trust, pattern) =
                entry
                    .split_once(':')
                    .ok_or_else(|| PatternError::Unprefixed {
                        entry: entry.to_owned(),
                    })?;
            if !trusts.knows(trust) {
                return Err(if trust.is_empty() {
                    PatternError::Unprefixed {
                        entry: entry.to_owned(),
                    }
                } else {
                    PatternError::UnknownTrust {
                        trust: trust.to_owned(),
                    }
                });
            }
            if pattern.is_empty() {
                return Err(PatternError::EmptyPattern {
                    trust: trust.to_owned(),
                });
            }
            if pattern.len() > MAX_SUBJECT_LEN {
                return Err(PatternError::TooLong { len: pattern.len() });
            }
            PatternKind::Bound {
                trust: trust.to_owned(),
                pattern: pattern.to_owned(),
            }
        };
        Ok(Self {
            text: entry.to_owned(),
            kind,
        })
    }

    /// Whether this pattern admits the verified principal. Empty subjects and
    /// subjects longer than [`MAX_SUBJECT_LEN`] never match.
    pub fn matches(&self, p: &Principal<'_>) -> bool {
        if p.subject.is_empty() || p.subject.len() > MAX_SUBJECT_LEN {
            return false;
        }
        match &self.kind {
            PatternKind::Bound { trust, pattern } => {
                p.trust == trust && glob_match(pattern.as_bytes(), p.subject.as_bytes())
            }
            PatternKind::Spiffe { domain } => {
                p.spiffe_domains.iter().any(|d| d == domain)
                    && glob_match(self.text.as_bytes(), p.subject.as_bytes())
            }
        }
    }

    /// The trust a `TRUST:PATTERN` entry is bound to (`None` for the SPIFFE form).
    pub fn trust(&self) -> Option<&str> {
        match &self.kind {
            PatternKind::Bound { trust, .. } => Some(trust),
            PatternKind::Spiffe { .. } => None,
        }
    }

    /// The trust domain of a `spiffe://` entry (`None` for the bound form).
    pub fn spiffe_trust_domain(&self) -> Option<&str> {
        match &self.kind {
            PatternKind::Bound { .. } => None,
            PatternKind::Spiffe { domain } => Some(domain),
        }
    }

    /// Whether the pattern admits every subject of its trust (`k8s-prod:*`).
    pub fn is_catch_all(&self) -> bool {
        match &self.kind {
            PatternKind::Bound { pattern, .. } => pattern.bytes().all(|b| b == b'*'),
            PatternKind::Spiffe { .. } => false,
        }
    }

    /// The entry as written in the catalogue.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for SubjectPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}
