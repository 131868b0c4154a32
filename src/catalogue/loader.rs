//! Loading a catalogue directory: the TOML file format, and every check `scopes
//! check` performs, each failure naming `FILE:LINE: KEY` (the line from the TOML
//! parser's byte spans, the key from [`super::toml_span`]).
//!
//! Loading is linear in the size of the catalogue: a byte offset becomes a line by a
//! binary search in the file's line starts (counted once per file), and names are
//! checked for duplicates in a map.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::toml_span::{KeySeg, locate_key, render_key};
use super::*;

// ---------------------------------------------------------------------------
// Loading and validation
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    action: Vec<Spanned<RawAction>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    name: Spanned<String>,
    description: Option<Spanned<String>>,
    audience: Spanned<String>,
    ttl: Option<Spanned<String>>,
    agents: Spanned<Vec<Spanned<String>>>,
    delegation: Option<Spanned<String>>,
    subjects: Option<Spanned<Vec<Spanned<String>>>>,
    credential: Option<Spanned<String>>,
    sender_constraint: Option<Spanned<String>>,
    delegable_to: Option<Vec<Spanned<String>>>,
    request: Option<RawRequest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    method: Spanned<String>,
    path: Spanned<String>,
    #[serde(default)]
    headers: Vec<Spanned<String>>,
}

/// One file being loaded: turns byte spans into locations.
struct Site<'a> {
    file: &'a Path,
    text: &'a str,
    /// The byte offset of each line break, in order.
    breaks: Vec<usize>,
}

impl<'a> Site<'a> {
    fn new(file: &'a Path, text: &'a str) -> Self {
        let breaks = text
            .bytes()
            .enumerate()
            .filter_map(|(i, b)| (b == b'\n').then_some(i))
            .collect();
        Site { file, text, breaks }
    }

    /// The 1-based line of `span`'s start: one more than the line breaks before it.
    fn location(&self, span: Range<usize>) -> Location {
        let line = self.breaks.partition_point(|&b| b < span.start) + 1;
        Location {
            file: self.file.to_owned(),
            line,
        }
    }

    fn invalid(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        problem: Problem,
    ) -> CatalogueError {
        CatalogueError::Invalid {
            at: self.location(span),
            key: key.into(),
            problem,
        }
    }
}

pub(super) struct Loader<'t> {
    trusts: &'t TrustDirectory,
    actions: BTreeMap<String, Action>,
    /// Where each valid name was first defined (the line of its `name` key).
    names: BTreeMap<String, Location>,
    /// `delegable_to` entries, checked against the whole catalogue at the end:
    /// (action, index, named action, where).
    delegable: Vec<(String, usize, String, Location)>,
    pub(super) errors: Vec<CatalogueError>,
}

impl<'t> Loader<'t> {
    pub(super) fn new(trusts: &'t TrustDirectory) -> Self {
        Self {
            trusts,
            actions: BTreeMap::new(),
            names: BTreeMap::new(),
            delegable: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// The catalogue, once every `delegable_to` names an action of the same audience
    /// (a sub-agent's token never reaches further than its parent's).
    pub(super) fn finish(mut self) -> (Catalogue, Vec<CatalogueError>) {
        for (action, i, named, at) in std::mem::take(&mut self.delegable) {
            let problem = match (self.actions.get(&action), self.actions.get(&named)) {
                (Some(_), None) => Problem::UnknownDelegable { name: named },
                (Some(from), Some(to)) if from.audience != to.audience => {
                    Problem::DelegableAudience {
                        name: named,
                        audience: to.audience.clone(),
                    }
                }
                _ => continue,
            };
            self.errors.push(CatalogueError::Invalid {
                at,
                key: format!("delegable_to[{i}]"),
                problem,
            });
        }
        (
            Catalogue {
                actions: self.actions,
            },
            self.errors,
        )
    }

    pub(super) fn file(&mut self, file: &Path, text: &str) {
        let site = Site::new(file, text);
        let raw: RawFile = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(error) => {
                self.errors.push(parse_error(&site, &error));
                return;
            }
        };
        let count = raw.action.len();
        let first_error = self.errors.len();
        for action in raw.action {
            if self.actions.len() >= MAX_ACTIONS {
                self.errors.push(CatalogueError::TooManyActions {
                    at: site.location(action.span()),
                    limit: MAX_ACTIONS,
                });
                break;
            }
            if let Some(action) = self.action(&site, action) {
                self.actions.insert(action.name.clone(), action);
            }
        }
        // Files in the order loaded; within a file, by line (stable, so errors on
        // one line keep their field order).
        self.errors[first_error..].sort_by_key(|e| e.location().map(|at| at.line));
        tracing::debug!(file = %file.display(), actions = count, "read scope file");
    }

    fn action(&mut self, site: &Site<'_>, raw: Spanned<RawAction>) -> Option<Action> {
        let source = site.location(raw.span());
        let raw = raw.into_inner();
        let mut errs = Vec::new();

        let name = keep(
            &mut errs,
            validate_name(raw.name.get_ref()).map_err(|p| site.invalid(raw.name.span(), "name", p)),
        );
        let name = name.and_then(|name| match self.names.get(&name) {
            Some(first) => {
                errs.push(CatalogueError::Duplicate {
                    at: site.location(raw.name.span()),
                    name,
                    first: first.clone(),
                });
                None
            }
            None => {
                self.names
                    .insert(name.clone(), site.location(raw.name.span()));
                Some(name)
            }
        });
        let description = raw.description.map(Spanned::into_inner).unwrap_or_default();
        let audience = keep(
            &mut errs,
            validate_audience(raw.audience.get_ref())
                .map_err(|p| site.invalid(raw.audience.span(), "audience", p)),
        );
        let ttl = keep_optional(&mut errs, site, &raw.ttl, "ttl", validate_ttl);
        let credential = keep_optional(
            &mut errs,
            site,
            &raw.credential,
            "credential",
            validate_credential,
        );
        if let (Some(Some(path)), Some(value)) = (&credential, &raw.credential)
            && let Some(tenant) = self.trusts.credential_owner(path)
        {
            errs.push(site.invalid(
                value.span(),
                "credential",
                Problem::TenantCredential {
                    value: path.clone(),
                    tenant: tenant.to_string(),
                },
            ));
        }
        let request = match &raw.request {
            None => Some(None),
            Some(r) => keep(&mut errs, self.request(site, r).map(Some)),
        };
        let delegation = match &raw.delegation {
            None => Some(Delegation::Forbidden),
            Some(d) => keep(
                &mut errs,
                Delegation::from_name(d.get_ref()).ok_or_else(|| {
                    site.invalid(
                        d.span(),
                        "delegation",
                        Problem::InvalidDelegation {
                            value: d.get_ref().clone(),
                        },
                    )
                }),
            ),
        };
        let sender_constraint = match &raw.sender_constraint {
            None => Some(None),
            Some(s) => keep(
                &mut errs,
                SenderConstraint::from_name(s.get_ref())
                    .map(Some)
                    .ok_or_else(|| {
                        site.invalid(
                            s.span(),
                            "sender_constraint",
                            Problem::InvalidSenderConstraint {
                                value: s.get_ref().clone(),
                            },
                        )
                    }),
            ),
        };
        let mut delegable_to = Vec::new();
        for (i, entry) in raw.delegable_to.iter().flatten().enumerate() {
            match validate_name(entry.get_ref()) {
                Ok(named) => {
                    if let Ok(from) = validate_name(raw.name.get_ref()) {
                        self.delegable
                            .push((from, i, named.clone(), site.location(entry.span())));
                    }
                    delegable_to.push(named);
                }
                Err(p) => errs.push(site.invalid(entry.span(), format!("delegable_to[{i}]"), p)),
            }
        }
        if raw.agents.get_ref().is_empty() {
            errs.push(site.invalid(raw.agents.span(), "agents", Problem::EmptyList));
        }
        let agents = self.patterns(site, "agents", &raw.agents, &mut errs);
        let subjects = match &raw.subjects {
            None => Some(Vec::new()),
            Some(list) => self.patterns(site, "subjects", list, &mut errs),
        };
        // Fail closed on the delegation/subjects pairing.
        match (delegation, &raw.subjects) {
            (Some(Delegation::Forbidden), Some(list)) if !list.get_ref().is_empty() => {
                errs.push(site.invalid(
                    list.span(),
                    "subjects",
                    Problem::SubjectsWithoutDelegation,
                ));
            }
            (Some(delegation @ (Delegation::Optional | Delegation::Required)), list) => {
                let problem = Problem::DelegationNeedsSubjects { delegation };
                match (list, &raw.delegation) {
                    (Some(list), _) if list.get_ref().is_empty() => {
                        errs.push(site.invalid(list.span(), "subjects", problem));
                    }
                    (None, Some(d)) => errs.push(site.invalid(d.span(), "delegation", problem)),
                    _ => {}
                }
            }
            _ => {}
        }

        if !errs.is_empty() {
            self.errors.append(&mut errs);
            return None;
        }
        let action = Action {
            name: name?,
            description,
            audience: audience?,
            ttl: ttl?,
            agents: agents?,
            delegation: delegation?,
            subjects: subjects?,
            credential: credential?,
            request: request?,
            sender_constraint: sender_constraint?,
            delegable_to,
            source,
        };
        for pattern in action.agents.iter().chain(&action.subjects) {
            if pattern.is_catch_all() {
                tracing::warn!(
                    action = %action.name,
                    at = %action.source,
                    pattern = %pattern,
                    "pattern admits every subject of its trust"
                );
            }
        }
        Some(action)
    }

    fn patterns(
        &self,
        site: &Site<'_>,
        key: &str,
        list: &Spanned<Vec<Spanned<String>>>,
        errs: &mut Vec<CatalogueError>,
    ) -> Option<Vec<SubjectPattern>> {
        let before = errs.len();
        let mut patterns = Vec::with_capacity(list.get_ref().len());
        for (i, entry) in list.get_ref().iter().enumerate() {
            match SubjectPattern::parse(entry.get_ref(), self.trusts) {
                Ok(p) => patterns.push(p),
                Err(e) => errs.push(site.invalid(entry.span(), format!("{key}[{i}]"), e.into())),
            }
        }
        (errs.len() == before).then_some(patterns)
    }

    fn request(&self, site: &Site<'_>, raw: &RawRequest) -> Result<RequestShape, CatalogueError> {
        let method = raw.method.get_ref().to_ascii_uppercase();
        if !METHODS.contains(&method.as_str()) {
            return Err(site.invalid(
                raw.method.span(),
                "request.method",
                Problem::InvalidMethod {
                    value: raw.method.get_ref().clone(),
                },
            ));
        }
        let path = PathTemplate::parse(raw.path.get_ref()).map_err(|reason| {
            site.invalid(
                raw.path.span(),
                "request.path",
                Problem::InvalidPath {
                    value: raw.path.get_ref().clone(),
                    reason,
                },
            )
        })?;
        let mut headers: Vec<String> = Vec::new();
        for (i, raw_header) in raw.headers.iter().enumerate() {
            let name = raw_header.get_ref().to_ascii_lowercase();
            let problem = if name.is_empty() || !name.bytes().all(is_tchar) {
                Some("not an HTTP field name")
            } else if let Some(reason) = never_forwarded(&name) {
                Some(reason)
            } else if DEFAULT_HEADERS.iter().any(|(h, _)| *h == name) || headers.contains(&name) {
                Some("listed twice (or forwarded already by default)")
            } else {
                None
            };
            if let Some(reason) = problem {
                return Err(site.invalid(
                    raw_header.span(),
                    format!("request.headers[{i}]"),
                    Problem::InvalidHeader {
                        value: raw_header.get_ref().clone(),
                        reason,
                    },
                ));
            }
            headers.push(name);
        }
        Ok(RequestShape {
            method,
            path,
            headers,
        })
    }
}

/// A `tchar` of an HTTP field name (RFC 9110 §5.1, §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Records the error, if any, and keeps the value, if any.
fn keep<T>(errs: &mut Vec<CatalogueError>, result: Result<T, CatalogueError>) -> Option<T> {
    result.map_err(|e| errs.push(e)).ok()
}

/// An optional string key checked by `validate`: `Some(None)` when absent,
/// `Some(Some(value))` when valid, `None` (the error recorded at `key`) when not.
fn keep_optional<T>(
    errs: &mut Vec<CatalogueError>,
    site: &Site<'_>,
    raw: &Option<Spanned<String>>,
    key: &'static str,
    validate: fn(&str) -> Result<T, Problem>,
) -> Option<Option<T>> {
    match raw {
        None => Some(None),
        Some(value) => keep(
            errs,
            validate(value.get_ref())
                .map(Some)
                .map_err(|p| site.invalid(value.span(), key, p)),
        ),
    }
}

/// Whether `name` is a well-formed action name (what [`validate_name`] accepts).
pub fn is_action_name(name: &str) -> bool {
    validate_name(name).is_ok()
}

fn validate_name(name: &str) -> Result<String, Problem> {
    let invalid = |reason| Problem::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(Problem::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid("longer than 128 characters"));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(invalid("must start with a lowercase letter"));
    }
    if !name
        .bytes()
        .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
    {
        return Err(invalid("only [a-z0-9._-] allowed"));
    }
    Ok(name.to_owned())
}

fn validate_audience(audience: &str) -> Result<String, Problem> {
    if audience.is_empty() {
        return Err(Problem::Empty);
    }
    if audience
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Problem::InvalidAudience {
            audience: audience.to_owned(),
        });
    }
    Ok(audience.to_owned())
}

fn validate_ttl(value: &str) -> Result<Duration, Problem> {
    let invalid = |reason: String| Problem::InvalidTtl {
        value: value.to_owned(),
        reason,
    };
    let ttl = humantime::parse_duration(value).map_err(|e| invalid(e.to_string()))?;
    // Token lifetimes are whole seconds (`exp` is a NumericDate): less than one second
    // would mint tokens that are expired when they are issued.
    if ttl < Duration::from_secs(1) {
        return Err(invalid("must be at least 1s".to_owned()));
    }
    if ttl > MAX_TTL {
        return Err(invalid("must be at most 24h".to_owned()));
    }
    Ok(ttl)
}

fn validate_credential(value: &str) -> Result<String, Problem> {
    let invalid = |reason| Problem::InvalidCredential {
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() {
        return Err(Problem::Empty);
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
    {
        return Err(invalid("only [A-Za-z0-9._/-] allowed"));
    }
    if value.starts_with('/') || value.ends_with('/') {
        return Err(invalid("no leading or trailing '/'"));
    }
    if value
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(invalid("no empty, '.' or '..' segment"));
    }
    Ok(value.to_owned())
}

/// A TOML syntax or shape error: the line from toml's span, the key found by
/// walking a best-effort parse of the document to the deepest entry covering it.
fn parse_error(site: &Site<'_>, error: &toml::de::Error) -> CatalogueError {
    let span = error.span().unwrap_or(0..0);
    let message = error.message().trim().to_owned();
    let mut key = locate_key(site.text, &span);
    // serde names the missing field only in its message; the span is the table's.
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(field, _)| field)
    {
        key.push(KeySeg::Key(field.to_owned()));
    }
    CatalogueError::Parse {
        at: site.location(span),
        key: render_key(&key),
        message,
    }
}
