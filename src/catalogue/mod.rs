//! The scope catalogue: `scopes/*.toml`, loaded and validated into [`Action`]s that
//! say which agent may do which action, for which audience, for how long, with or
//! without a delegating user, and which one call shape the shim lets through. This
//! module owns the file format, every check `scopes check` performs (each failure
//! names `FILE:LINE: KEY`), and the subject-pattern matcher the token exchange uses
//! to decide entitlement. A pattern is always bound to a trust: `TRUST:PATTERN`
//! only matches identities verified by that configured trust, and the unprefixed
//! `spiffe://DOMAIN/...` form only matches identities from a trust that lists
//! `DOMAIN` in its `spiffe_trust_domains`. Subjects are only unique per issuer, so
//! the same `sub` minted by another issuer must never inherit an entitlement. The
//! matcher knows one wildcard, `*`, and is the classic two-pointer algorithm: no
//! recursion, no backtracking blow-up, O(pattern × subject) in the worst case, and
//! subjects longer than [`MAX_SUBJECT_LEN`] never match, so a hostile token or a
//! careless pattern cannot turn an authorisation check into a CPU sink.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Subjects longer than this many bytes never match any pattern; patterns longer
/// than this are rejected when the catalogue is loaded.
pub const MAX_SUBJECT_LEN: usize = 1024;
/// Longest allowed action name, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Upper bound on an action's `ttl` (the STS caps it further by its own `max_ttl`).
pub const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// The HTTP methods an `[action.request]` may name.
pub const METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

const SPIFFE_SCHEME: &str = "spiffe://";

// ---------------------------------------------------------------------------
// Trusts and principals
// ---------------------------------------------------------------------------

/// What the catalogue knows of the configured trusts: their names, and which
/// SPIFFE trust domains each speaks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustDirectory {
    trusts: BTreeMap<String, BTreeSet<String>>,
    /// Accepts every trust name and SPIFFE domain: see [`TrustDirectory::any`].
    any: bool,
}

impl TrustDirectory {
    /// Builds the directory from `(trust name, spiffe_trust_domains)` pairs. A name
    /// given twice has its domains merged (rejecting duplicates is the config's job).
    pub fn new(trusts: impl IntoIterator<Item = (String, Vec<String>)>) -> Self {
        let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (name, domains) in trusts {
            map.entry(name).or_default().extend(domains);
        }
        Self {
            trusts: map,
            any: false,
        }
    }

    /// The directory of a process that does not decide entitlement: the shim reads the
    /// catalogue only for each action's audience, request shape and credential (the STS
    /// checked `agents` and `subjects` when it minted the token), so it accepts any
    /// trust name and SPIFFE domain and needs no `[[trust]]` configuration.
    pub fn any() -> Self {
        Self {
            trusts: BTreeMap::new(),
            any: true,
        }
    }

    /// Whether a trust of this name is configured.
    pub fn knows(&self, trust: &str) -> bool {
        self.any || self.trusts.contains_key(trust)
    }

    /// Whether at least one configured trust lists this SPIFFE trust domain.
    pub fn speaks_for(&self, spiffe_domain: &str) -> bool {
        self.any
            || self
                .trusts
                .values()
                .any(|domains| domains.contains(spiffe_domain))
    }

    /// Configured trust names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.trusts.keys().map(String::as_str)
    }
}

/// A verified identity: the configured trust that verified the token, the token's
/// subject, and the SPIFFE trust domains that trust speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal<'a> {
    pub trust: &'a str,
    pub subject: &'a str,
    pub spiffe_domains: &'a [String],
}

// ---------------------------------------------------------------------------
// Subject patterns
// ---------------------------------------------------------------------------

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

/// `*` matches any run of bytes (including none, slashes and colons); every other
/// byte matches itself. Classic two-pointer wildcard matching: when a literal
/// fails after a `*`, only the most recent `*` is widened by one byte, which is
/// sufficient for `*`-only globs. O(|pattern| × |text|) worst case, no recursion.
/// Byte-wise matching is sound for UTF-8 because literal runs are whole UTF-8
/// sequences, which can only align at character boundaries.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    // Position in `pattern` just after the last `*` seen, and the text position
    // that `*` currently extends to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                p += 1;
                star = Some((p, t));
            }
            Some(&c) if c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((after_star, upto)) => {
                    p = after_star;
                    t = upto + 1;
                    star = Some((after_star, t));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

// ---------------------------------------------------------------------------
// Delegation and request shapes
// ---------------------------------------------------------------------------

/// Whether a delegated (on-behalf-of-a-user) exchange is allowed for an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Delegation {
    /// Only the agent acting on its own account (the default).
    #[default]
    Forbidden,
    /// Either on its own account or on behalf of a listed subject.
    Optional,
    /// Only on behalf of a listed subject.
    Required,
}

impl Delegation {
    /// The catalogue spelling: `"forbidden"`, `"optional"` or `"required"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forbidden => "forbidden",
            Self::Optional => "optional",
            Self::Required => "required",
        }
    }

    /// Parses the catalogue spelling (exact, lowercase).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "forbidden" => Some(Self::Forbidden),
            "optional" => Some(Self::Optional),
            "required" => Some(Self::Required),
            _ => None,
        }
    }
}

impl fmt::Display for Delegation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The one call shape the shim lets through for an action.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestShape {
    /// Uppercase, one of [`METHODS`].
    pub method: String,
    pub path: PathTemplate,
}

impl RequestShape {
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

// ---------------------------------------------------------------------------
// Actions and the catalogue
// ---------------------------------------------------------------------------

/// Where something is in the catalogue: a file and a 1-based line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// One `[[action]]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub name: String,
    pub description: String,
    pub audience: String,
    /// Lifetime of tokens for this action; `None` takes the STS's `tokens.default_ttl`.
    pub ttl: Option<Duration>,
    pub agents: Vec<SubjectPattern>,
    pub delegation: Delegation,
    /// Who may delegate; empty exactly when `delegation` is forbidden.
    pub subjects: Vec<SubjectPattern>,
    pub credential: Option<String>,
    pub request: Option<RequestShape>,
    /// The line of the `[[action]]` header.
    pub source: Location,
}

impl Action {
    /// Whether the verified agent (the actor) may obtain this action.
    pub fn permits_agent(&self, p: &Principal<'_>) -> bool {
        self.agents.iter().any(|pat| pat.matches(p))
    }

    /// Whether the verified delegating user may delegate this action. Always false
    /// when delegation is forbidden.
    pub fn permits_subject(&self, p: &Principal<'_>) -> bool {
        self.delegation != Delegation::Forbidden && self.subjects.iter().any(|pat| pat.matches(p))
    }
}

/// What is wrong with a value in the catalogue (the part after `KEY: `).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    #[error("must not be empty")]
    Empty,
    #[error("invalid action name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("audience {audience:?} must not hold whitespace or control characters")]
    InvalidAudience { audience: String },
    #[error("invalid ttl {value:?}: {reason}")]
    InvalidTtl { value: String, reason: String },
    #[error("must list at least one entry")]
    EmptyList,
    #[error(transparent)]
    Pattern(#[from] PatternError),
    #[error("unknown delegation {value:?}: expected \"forbidden\", \"optional\" or \"required\"")]
    InvalidDelegation { value: String },
    #[error("delegation is {delegation} but no subjects are listed: say who may delegate")]
    DelegationNeedsSubjects { delegation: Delegation },
    #[error(
        "subjects are listed but delegation is forbidden: set delegation = \"optional\" or \"required\", or drop subjects"
    )]
    SubjectsWithoutDelegation,
    #[error("invalid credential path {value:?}: {reason}")]
    InvalidCredential { value: String, reason: &'static str },
    #[error("unsupported method {value:?}: expected one of GET, HEAD, POST, PUT, PATCH, DELETE")]
    InvalidMethod { value: String },
    #[error("invalid path template {value:?}: {reason}")]
    InvalidPath {
        value: String,
        reason: PathTemplateError,
    },
}

/// A catalogue that could not be loaded. Apart from the two I/O variants, each
/// displays as `FILE:LINE: KEY: what is wrong`, KEY relative to its `[[action]]`
/// (`agents[1]`, `request.path`) or top-level.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogueError {
    #[error("{}: cannot list scope directory: {error}", dir.display())]
    ReadDir { dir: PathBuf, error: io::Error },
    #[error("{}: cannot read scope file: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
    /// TOML syntax, or a document whose shape is wrong (unknown or missing key,
    /// wrong type, duplicate key).
    #[error("{at}: {key}: {message}")]
    Parse {
        at: Location,
        key: String,
        message: String,
    },
    /// A well-formed value that fails validation.
    #[error("{at}: {key}: {problem}")]
    Invalid {
        at: Location,
        key: String,
        problem: Problem,
    },
    /// An action name already used (in this or an earlier file).
    #[error("{at}: name: action {name:?} is already defined at {first}")]
    Duplicate {
        at: Location,
        name: String,
        first: Location,
    },
}

impl CatalogueError {
    /// File and line, for every variant but the I/O ones.
    pub fn location(&self) -> Option<&Location> {
        match self {
            Self::ReadDir { .. } | Self::Read { .. } => None,
            Self::Parse { at, .. } | Self::Invalid { at, .. } | Self::Duplicate { at, .. } => {
                Some(at)
            }
        }
    }

    /// The offending key, for every variant but the I/O ones.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::ReadDir { .. } | Self::Read { .. } => None,
            Self::Parse { key, .. } | Self::Invalid { key, .. } => Some(key),
            Self::Duplicate { .. } => Some("name"),
        }
    }
}

/// Every action of the catalogue, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalogue {
    actions: BTreeMap<String, Action>,
}

impl Catalogue {
    /// Loads every `*.toml` file of `dir` (sorted by file name; other files and
    /// sub-directories are ignored) and returns the first error in file and line
    /// order. A directory without actions yields an empty catalogue.
    pub fn load_dir(dir: &Path, trusts: &TrustDirectory) -> Result<Catalogue, CatalogueError> {
        let (catalogue, errors) = Self::load_dir_all(dir, trusts);
        match errors.into_iter().next() {
            Some(first) => Err(first),
            None => Ok(catalogue),
        }
    }

    /// Like [`load_dir`](Self::load_dir), but reports every error found (for
    /// `scopes check`). The returned vector is never empty.
    pub fn check_dir(
        dir: &Path,
        trusts: &TrustDirectory,
    ) -> Result<Catalogue, Vec<CatalogueError>> {
        let (catalogue, errors) = Self::load_dir_all(dir, trusts);
        if errors.is_empty() {
            Ok(catalogue)
        } else {
            Err(errors)
        }
    }

    /// Builds a catalogue from in-memory `(file name, TOML text)` sources, in the
    /// order given; the file names are only used in locations.
    pub fn from_sources<P, S>(
        sources: impl IntoIterator<Item = (P, S)>,
        trusts: &TrustDirectory,
    ) -> Result<Catalogue, CatalogueError>
    where
        P: Into<PathBuf>,
        S: AsRef<str>,
    {
        let mut loader = Loader::new(trusts);
        for (file, text) in sources {
            loader.file(&file.into(), text.as_ref());
        }
        let (catalogue, errors) = loader.finish();
        match errors.into_iter().next() {
            Some(first) => Err(first),
            None => Ok(catalogue),
        }
    }

    fn load_dir_all(dir: &Path, trusts: &TrustDirectory) -> (Catalogue, Vec<CatalogueError>) {
        let mut loader = Loader::new(trusts);
        let files = match toml_files(dir) {
            Ok(files) => files,
            Err(error) => {
                loader.errors.push(error);
                return loader.finish();
            }
        };
        for path in &files {
            match fs::read_to_string(path) {
                Ok(text) => loader.file(path, &text),
                Err(error) => loader.errors.push(CatalogueError::Read {
                    path: path.clone(),
                    error,
                }),
            }
        }
        let (catalogue, errors) = loader.finish();
        if errors.is_empty() {
            tracing::info!(
                dir = %dir.display(),
                files = files.len(),
                actions = catalogue.len(),
                "loaded scope catalogue"
            );
        }
        (catalogue, errors)
    }

    /// The action of that name.
    pub fn get(&self, name: &str) -> Option<&Action> {
        self.actions.get(name)
    }

    /// All actions, sorted by name.
    pub fn actions(&self) -> impl Iterator<Item = &Action> {
        self.actions.values()
    }

    /// The distinct audiences of all actions, sorted.
    pub fn audiences(&self) -> BTreeSet<&str> {
        self.actions.values().map(|a| a.audience.as_str()).collect()
    }

    pub fn len(&self) -> usize {
        self.actions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

/// The `*.toml` files of `dir`, sorted by file name.
fn toml_files(dir: &Path) -> Result<Vec<PathBuf>, CatalogueError> {
    let read_dir_error = |error| CatalogueError::ReadDir {
        dir: dir.to_owned(),
        error,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_dir_error)? {
        let path = entry.map_err(read_dir_error)?.path();
        if path.extension().is_none_or(|ext| ext != "toml") {
            continue;
        }
        // Follows symlinks; a dangling one is an error rather than silently skipped.
        let meta = fs::metadata(&path).map_err(|error| CatalogueError::Read {
            path: path.clone(),
            error,
        })?;
        if meta.is_file() {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

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
    request: Option<RawRequest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    method: Spanned<String>,
    path: Spanned<String>,
}

/// One file being loaded: turns byte spans into locations.
struct Site<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Site<'_> {
    fn location(&self, span: Range<usize>) -> Location {
        let end = span.start.min(self.text.len());
        let line = self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
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

struct Loader<'t> {
    trusts: &'t TrustDirectory,
    actions: BTreeMap<String, Action>,
    /// Where each valid name was first defined (the line of its `name` key).
    names: BTreeMap<String, Location>,
    errors: Vec<CatalogueError>,
}

impl<'t> Loader<'t> {
    fn new(trusts: &'t TrustDirectory) -> Self {
        Self {
            trusts,
            actions: BTreeMap::new(),
            names: BTreeMap::new(),
            errors: Vec::new(),
        }
    }

    fn finish(self) -> (Catalogue, Vec<CatalogueError>) {
        (
            Catalogue {
                actions: self.actions,
            },
            self.errors,
        )
    }

    fn file(&mut self, file: &Path, text: &str) {
        let site = Site { file, text };
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
        let ttl = match &raw.ttl {
            None => Some(None),
            Some(ttl) => keep(
                &mut errs,
                validate_ttl(ttl.get_ref())
                    .map(Some)
                    .map_err(|p| site.invalid(ttl.span(), "ttl", p)),
            ),
        };
        let credential = match &raw.credential {
            None => Some(None),
            Some(c) => keep(
                &mut errs,
                validate_credential(c.get_ref())
                    .map(Some)
                    .map_err(|p| site.invalid(c.span(), "credential", p)),
            ),
        };
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
        Ok(RequestShape { method, path })
    }
}

/// Records the error, if any, and keeps the value, if any.
fn keep<T>(errs: &mut Vec<CatalogueError>, result: Result<T, CatalogueError>) -> Option<T> {
    result.map_err(|e| errs.push(e)).ok()
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
    if ttl.is_zero() {
        return Err(invalid("must be positive".to_owned()));
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

enum KeySeg {
    Key(String),
    Index(usize),
    /// Key text as written in the file (possibly dotted or quoted).
    Raw(String),
}

fn locate_key(text: &str, span: &Range<usize>) -> Vec<KeySeg> {
    let (doc, _) = DeTable::parse_recoverable(text);
    let mut path = Vec::new();
    if find_in_table(doc.get_ref(), span, &mut path) {
        return path;
    }
    // Not in the (recovered) tree, e.g. a repeated key or broken syntax: name the
    // header, or the table the error sits in and the key written on its line.
    let line_start = text
        .get(..span.start)
        .and_then(|before| before.rfind('\n'))
        .map_or(0, |i| i + 1);
    let line = text
        .get(line_start..)
        .and_then(|rest| rest.lines().next())
        .unwrap_or_default()
        .trim();
    if line.starts_with('[') {
        let header = line
            .split('#')
            .next()
            .unwrap_or_default()
            .trim_matches(|c: char| c == '[' || c == ']' || c.is_whitespace());
        return vec![KeySeg::Raw(header.to_owned())];
    }
    path.clear();
    enclosing_table(doc.get_ref(), span.start, &mut path);
    let written = match line.split_once('=') {
        Some((key, _)) => key.trim(),
        None => line.split_whitespace().next().unwrap_or_default(),
    };
    let token = text.get(span.clone()).unwrap_or_default();
    let is_key = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.\"' ".contains(&b))
    };
    if is_key(written) {
        path.push(KeySeg::Raw(written.to_owned()));
    } else if is_key(token) {
        path.push(KeySeg::Raw(token.to_owned()));
    }
    path
}

/// Descends into the table whose header comes last before `offset`.
fn enclosing_table<'a, 'i>(table: &'a DeTable<'i>, offset: usize, path: &mut Vec<KeySeg>) {
    let mut best: Option<(usize, Vec<KeySeg>, &'a DeTable<'i>)> = None;
    let mut consider = |value: &'a Spanned<DeValue<'i>>, segs: Vec<KeySeg>| {
        if let DeValue::Table(inner) = value.get_ref() {
            let start = value.span().start;
            if start <= offset && best.as_ref().is_none_or(|(b, _, _)| start >= *b) {
                best = Some((start, segs, inner));
            }
        }
    };
    for (key, value) in table.iter() {
        let name = || KeySeg::Key(key.get_ref().to_string());
        match value.get_ref() {
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    consider(item, vec![name(), KeySeg::Index(i)]);
                }
            }
            _ => consider(value, vec![name()]),
        }
    }
    if let Some((_, segs, inner)) = best {
        path.extend(segs);
        enclosing_table(inner, offset, path);
    }
}

fn covers(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    if inner.is_empty() {
        outer.contains(&inner.start)
    } else {
        outer.start <= inner.start && inner.end <= outer.end
    }
}

fn find_in_table(table: &DeTable<'_>, span: &Range<usize>, path: &mut Vec<KeySeg>) -> bool {
    for (key, value) in table.iter() {
        path.push(KeySeg::Key(key.get_ref().to_string()));
        if find_in_value(value, span, path)
            || covers(&key.span(), span)
            || covers(&value.span(), span)
        {
            return true;
        }
        path.pop();
    }
    false
}

fn find_in_value(
    value: &Spanned<DeValue<'_>>,
    span: &Range<usize>,
    path: &mut Vec<KeySeg>,
) -> bool {
    match value.get_ref() {
        DeValue::Table(table) => find_in_table(table, span, path),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(KeySeg::Index(i));
                if find_in_value(item, span, path) || covers(&item.span(), span) {
                    return true;
                }
                path.pop();
            }
            false
        }
        _ => false,
    }
}

/// Renders a key path relative to its `[[action]]` (`agents[1]`,
/// `request.method`); a bare `action[N]` or a top-level key stays as it is; an
/// unlocated error is keyed `toml`.
fn render_key(path: &[KeySeg]) -> String {
    let rel = match path {
        [KeySeg::Key(a), KeySeg::Index(_), rest @ ..] if a == "action" && !rest.is_empty() => rest,
        _ => path,
    };
    if rel.is_empty() {
        return "toml".to_owned();
    }
    let mut out = String::new();
    for seg in rel {
        match seg {
            KeySeg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let bare = !k.is_empty()
                    && k.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if bare {
                    out.push_str(k);
                } else {
                    out.push_str(&format!("{k:?}"));
                }
            }
            KeySeg::Raw(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            KeySeg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Instant;

    fn trusts() -> TrustDirectory {
        TrustDirectory::new([
            ("k8s-prod".to_owned(), vec![]),
            ("k8s-staging-other".to_owned(), vec![]),
            ("spire".to_owned(), vec!["example.org".to_owned()]),
            ("spire-b".to_owned(), vec!["other.example".to_owned()]),
            ("corp-idp".to_owned(), vec![]),
        ])
    }

    /// Writes the files into a fresh directory and loads it.
    fn load(files: &[(&str, &str)]) -> (tempfile::TempDir, Result<Catalogue, CatalogueError>) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            fs::write(dir.path().join(name), text).unwrap();
        }
        let result = Catalogue::load_dir(dir.path(), &trusts());
        (dir, result)
    }

    /// The Display of the error loading `text` as `a.toml`, with the temporary
    /// directory shown as `scopes`.
    fn error_of(files: &[(&str, &str)]) -> String {
        let (dir, result) = load(files);
        let err = result.expect_err("catalogue should be rejected");
        err.to_string()
            .replace(&dir.path().display().to_string(), "scopes")
    }

    fn error_in(text: &str) -> String {
        error_of(&[("a.toml", text)])
    }

    /// A valid action with `extra` lines appended (line 1 is `[[action]]`).
    fn action_with(extra: &str) -> String {
        format!(
            "[[action]]\nname = \"x.y\"\naudience = \"https://x\"\nttl = \"5m\"\nagents = [\"k8s-prod:a\"]\n{extra}"
        )
    }

    fn principal<'a>(trust: &'a str, subject: &'a str, domains: &'a [String]) -> Principal<'a> {
        Principal {
            trust,
            subject,
            spiffe_domains: domains,
        }
    }

    const GITHUB: &str = r#"# GitHub actions
[[action]]
name = "github.issues.create"
description = "Open an issue in one repository"
audience = "https://github-shim.internal"
ttl = "5m"
agents = ["spiffe://example.org/agent/triage", "k8s-prod:system:serviceaccount:agents:*"]
delegation = "optional"
subjects = ["corp-idp:*@example.org"]
credential = "integrations/github"

[action.request]
method = "post"
path = "/repos/{owner}/{repo}/issues"

[[action]]
name = "github.issues.read"
audience = "https://github-shim.internal"
ttl = "1h 30m"
agents = [
  "k8s-prod:system:serviceaccount:agents:triage",
]
"#;

    const SLACK: &str = r#"
[[action]]
name = "slack.post"
audience = "https://slack-shim.internal"
ttl = "24h"
agents = ["spire:spiffe://example.org/bot"]
delegation = "required"
subjects = ["corp-idp:alice@example.org", "corp-idp:bob@example.org"]
"#;

    #[test]
    fn good_catalogue_loads() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("github.toml"), GITHUB).unwrap();
        fs::write(dir.path().join("slack.toml"), SLACK).unwrap();
        fs::write(dir.path().join("empty.toml"), "# nothing here yet\n").unwrap();
        fs::write(dir.path().join("README.md"), "not [toml").unwrap();
        fs::write(dir.path().join("github.toml.bak"), "not [toml").unwrap();
        fs::create_dir(dir.path().join("nested.toml")).unwrap();

        let cat = Catalogue::load_dir(dir.path(), &trusts()).unwrap();
        assert_eq!(cat.len(), 3);
        assert!(!cat.is_empty());
        let names: Vec<_> = cat.actions().map(|a| a.name.as_str()).collect();
        assert_eq!(
            names,
            ["github.issues.create", "github.issues.read", "slack.post"]
        );
        assert_eq!(
            cat.audiences().into_iter().collect::<Vec<_>>(),
            [
                "https://github-shim.internal",
                "https://slack-shim.internal"
            ]
        );

        let create = cat.get("github.issues.create").unwrap();
        assert_eq!(create.description, "Open an issue in one repository");
        assert_eq!(create.ttl, Some(Duration::from_secs(300)));
        assert_eq!(create.delegation, Delegation::Optional);
        assert_eq!(create.credential.as_deref(), Some("integrations/github"));
        assert_eq!(create.source.file, dir.path().join("github.toml"));
        assert_eq!(create.source.line, 2);
        assert_eq!(
            create
                .agents
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            [
                "spiffe://example.org/agent/triage",
                "k8s-prod:system:serviceaccount:agents:*"
            ]
        );
        assert_eq!(create.agents[0].spiffe_trust_domain(), Some("example.org"));
        assert_eq!(create.agents[1].trust(), Some("k8s-prod"));
        let request = create.request.as_ref().unwrap();
        assert_eq!(request.method, "POST");
        assert_eq!(request.path.as_str(), "/repos/{owner}/{repo}/issues");
        assert!(!request.matches("post", "/repos/acme/widgets/issues"));
        assert!(!request.matches("GET", "/repos/acme/widgets/issues"));

        let read = cat.get("github.issues.read").unwrap();
        assert_eq!(read.description, "");
        assert_eq!(read.ttl, Some(Duration::from_secs(90 * 60)));
        assert_eq!(read.delegation, Delegation::Forbidden);
        assert!(read.subjects.is_empty());
        assert!(read.credential.is_none() && read.request.is_none());
        assert_eq!(read.source.line, 16);

        let slack = cat.get("slack.post").unwrap();
        assert_eq!(slack.ttl, Some(MAX_TTL));
        assert_eq!(slack.delegation, Delegation::Required);
        assert_eq!(slack.subjects.len(), 2);
        assert_eq!(slack.source.line, 2);
        assert!(cat.get("slack.read").is_none());
    }

    #[test]
    fn permits_agent_and_subject() {
        let (_dir, cat) = load(&[("github.toml", GITHUB), ("slack.toml", SLACK)]);
        let cat = cat.unwrap();
        let create = cat.get("github.issues.create").unwrap();
        let read = cat.get("github.issues.read").unwrap();
        let spire = ["example.org".to_owned()];

        let triage = principal("k8s-prod", "system:serviceaccount:agents:triage", &[]);
        assert!(create.permits_agent(&triage));
        assert!(read.permits_agent(&triage));
        let spiffe = principal("spire", "spiffe://example.org/agent/triage", &spire);
        assert!(create.permits_agent(&spiffe));
        assert!(!read.permits_agent(&spiffe));
        // The same sub from another trust does not inherit the entitlement.
        let other = principal(
            "k8s-staging-other",
            "system:serviceaccount:agents:triage",
            &[],
        );
        assert!(!create.permits_agent(&other));

        let alice = principal("corp-idp", "alice@example.org", &[]);
        assert!(create.permits_subject(&alice));
        assert!(!create.permits_subject(&principal("k8s-prod", "alice@example.org", &[])));
        // Delegation forbidden: nobody may delegate, and agents are not subjects.
        assert!(!read.permits_subject(&alice));
        assert!(!read.permits_subject(&triage));
    }

    #[test]
    fn empty_directory_is_an_empty_catalogue() {
        let (_dir, cat) = load(&[]);
        let cat = cat.unwrap();
        assert!(cat.is_empty());
        assert_eq!(cat.len(), 0);
        assert!(cat.audiences().is_empty());
        let (_dir, cat) = load(&[("a.toml", ""), ("b.toml", "# only comments\n")]);
        assert!(cat.unwrap().is_empty());
    }

    #[test]
    fn missing_directory_is_a_read_dir_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = Catalogue::load_dir(&missing, &trusts()).unwrap_err();
        assert!(matches!(err, CatalogueError::ReadDir { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with(&format!("{}: ", missing.display()))
        );
        assert!(err.location().is_none());
    }

    #[test]
    fn the_design_doc_example_error() {
        let text = r#"# scopes
[[action]]
name = "github.issues.create"
audience = "https://github-shim.internal"
ttl = "5m"

agents = ["k8s-prod:a", "k8s-staging:system:serviceaccount:agents:*"]
"#;
        assert_eq!(
            error_of(&[("github.toml", text)]),
            r#"scopes/github.toml:7: agents[1]: unknown trust "k8s-staging""#
        );
        let (_dir, result) = load(&[("github.toml", text)]);
        let err = result.unwrap_err();
        assert_eq!(err.location().unwrap().line, 7);
        assert_eq!(err.key(), Some("agents[1]"));
        assert!(matches!(
            err,
            CatalogueError::Invalid {
                problem: Problem::Pattern(PatternError::UnknownTrust { .. }),
                ..
            }
        ));
    }

    #[test]
    fn toml_shape_errors_name_line_and_key() {
        let cases: &[(&str, &str)] = &[
            // unknown key inside an action
            (
                &action_with("colour = \"red\"\n"),
                "scopes/a.toml:6: colour: unknown field `colour`",
            ),
            // unknown top-level key
            (
                &format!("version = 2\n{}", action_with("")),
                "scopes/a.toml:1: version: unknown field `version`",
            ),
            // missing key: the line of its [[action]]
            (
                "[[action]]\nname = \"a\"\naudience = \"b\"\nttl = \"1m\"\nagents = [\"k8s-prod:a\"]\n\n[[action]]\nname = \"b\"\nttl = \"1m\"\nagents = [\"k8s-prod:a\"]\n",
                "scopes/a.toml:7: audience: missing field `audience`",
            ),
            // wrong type
            (
                "[[action]]\nname = \"a\"\naudience = \"b\"\nttl = 300\n",
                "scopes/a.toml:4: ttl: invalid type: integer `300`, expected a string",
            ),
            (
                &action_with("subjects = \"corp-idp:a\"\n"),
                "scopes/a.toml:6: subjects: invalid type: string",
            ),
            (
                "[[action]]\nname = \"a\"\nagents = [\"k8s-prod:a\",\n  7]\n",
                "scopes/a.toml:4: agents[1]: invalid type: integer `7`",
            ),
            // `action` must be an array of tables
            (
                "[action]\nname = \"a\"\n",
                "scopes/a.toml:1: action: invalid type: map, expected a sequence",
            ),
            // duplicate key
            (
                "[[action]]\nname = \"a\"\nname = \"b\"\n",
                "scopes/a.toml:3: name: duplicate key",
            ),
            // request sub-table
            (
                &action_with("[action.request]\nmethod = \"GET\"\npath = \"/\"\nquery = \"x\"\n"),
                "scopes/a.toml:9: request.query: unknown field `query`",
            ),
            (
                &action_with("\n[action.request]\nmethod = \"GET\"\n"),
                "scopes/a.toml:7: request.path: missing field `path`",
            ),
        ];
        for (text, want) in cases {
            let got = error_in(text);
            assert!(got.starts_with(want), "got {got:?}\nwant {want:?}…");
        }
    }

    #[test]
    fn toml_syntax_errors_name_line_and_key() {
        let cases = [
            (
                "[[action]]\nname = \"a\"\naudience = \"unterminated\nttl = \"5m\"\n",
                "scopes/a.toml:3: audience: ",
            ),
            (
                "# fine\n\n[[action]\nname = \"a\"\n",
                "scopes/a.toml:3: action: ",
            ),
            (
                "[[action]]\nname = \"a\"\nagents = [\"k8s-prod:a\" \"x\"]\n",
                "scopes/a.toml:3: agents[1]: ",
            ),
            (
                "[[action]]\nname = \"a\"\n[action.request]\nmethod = GET\n",
                "scopes/a.toml:4: request.method: ",
            ),
            (
                "[[action]]\nname = \"a\"\nttl 5m\n",
                "scopes/a.toml:3: ttl: ",
            ),
            (
                "[[action]]\nname = \"a\"\n[action.request]\nmethod = \"GET\"\nmethod = \"GET\"\n",
                "scopes/a.toml:5: request.method: duplicate key",
            ),
            ("a = 1\na = 2\n", "scopes/a.toml:2: a: duplicate key"),
        ];
        for (text, want) in cases {
            let got = error_in(text);
            assert!(got.starts_with(want), "got {got:?}\nwant {want:?}…");
            assert!(!got.trim_end().ends_with(':'), "no message in {got:?}");
        }
    }

    #[test]
    fn validation_errors_name_line_and_key() {
        let long_name = format!("a{}", "b".repeat(MAX_NAME_LEN));
        let long_pattern = format!(
            "agents = [\"k8s-prod:{}\"]\n",
            "a".repeat(MAX_SUBJECT_LEN + 1)
        );
        let cases: Vec<(String, &str)> = vec![
            // name
            (
                "[[action]]\nname = \"\"\n".to_owned()
                    + "audience = \"a\"\nttl = \"1m\"\nagents = [\"k8s-prod:a\"]\n",
                "scopes/a.toml:2: name: must not be empty",
            ),
            (
                action_with("").replace("x.y", "Github.create"),
                "scopes/a.toml:2: name: invalid action name \"Github.create\": must start with a lowercase letter",
            ),
            (
                action_with("").replace("x.y", "1github"),
                "scopes/a.toml:2: name: invalid action name \"1github\": must start with a lowercase letter",
            ),
            (
                action_with("").replace("x.y", "github issues"),
                "scopes/a.toml:2: name: invalid action name \"github issues\": only [a-z0-9._-] allowed",
            ),
            (
                action_with("").replace("x.y", &long_name),
                "scopes/a.toml:2: name: invalid action name",
            ),
            // audience
            (
                action_with("").replace("https://x", ""),
                "scopes/a.toml:3: audience: must not be empty",
            ),
            (
                action_with("").replace("https://x", "https://x y"),
                "scopes/a.toml:3: audience: audience \"https://x y\" must not hold whitespace",
            ),
            // ttl
            (
                action_with("").replace("5m", "0s"),
                "scopes/a.toml:4: ttl: invalid ttl \"0s\": must be positive",
            ),
            (
                action_with("").replace("5m", "24h 1s"),
                "scopes/a.toml:4: ttl: invalid ttl \"24h 1s\": must be at most 24h",
            ),
            (
                action_with("").replace("5m", "five minutes"),
                "scopes/a.toml:4: ttl: invalid ttl \"five minutes\": ",
            ),
            // agents
            (
                action_with("").replace("[\"k8s-prod:a\"]", "[]"),
                "scopes/a.toml:5: agents: must list at least one entry",
            ),
            (
                action_with("").replace("k8s-prod:a", "system:serviceaccount:agents:x"),
                "scopes/a.toml:5: agents[0]: unknown trust \"system\"",
            ),
            (
                action_with("").replace("k8s-prod:a", "triage-bot"),
                "scopes/a.toml:5: agents[0]: \"triage-bot\" names no trust: write TRUST:PATTERN, or a spiffe:// ID",
            ),
            (
                action_with("").replace("k8s-prod:a", ":triage-bot"),
                "scopes/a.toml:5: agents[0]: \":triage-bot\" names no trust",
            ),
            (
                action_with("").replace("k8s-prod:a", "k8s-prod:"),
                "scopes/a.toml:5: agents[0]: empty pattern after trust \"k8s-prod\"",
            ),
            (
                action_with("").replace("k8s-prod:a", ""),
                "scopes/a.toml:5: agents[0]: empty entry",
            ),
            (
                action_with("").replace("k8s-prod:a", "spiffe://elsewhere.org/agent/*"),
                "scopes/a.toml:5: agents[0]: no trust speaks for SPIFFE trust domain \"elsewhere.org\"",
            ),
            (
                action_with("").replace("k8s-prod:a", "spiffe://*.org/agent"),
                "scopes/a.toml:5: agents[0]: invalid SPIFFE ID pattern \"spiffe://*.org/agent\": the trust domain must be literal (no `*`)",
            ),
            (
                action_with("").replace("k8s-prod:a", "spiffe://example.org"),
                "scopes/a.toml:5: agents[0]: invalid SPIFFE ID pattern \"spiffe://example.org\": a path must follow the trust domain",
            ),
            (
                action_with("").replace("k8s-prod:a", "spiffe://example.org/"),
                "scopes/a.toml:5: agents[0]: invalid SPIFFE ID pattern \"spiffe://example.org/\": a path must follow the trust domain",
            ),
            (
                action_with("").replace("k8s-prod:a", "spiffe:///agent"),
                "scopes/a.toml:5: agents[0]: invalid SPIFFE ID pattern \"spiffe:///agent\": empty trust domain",
            ),
            (
                action_with("").replace("agents = [\"k8s-prod:a\"]\n", &long_pattern),
                "scopes/a.toml:5: agents[0]: pattern is 1025 bytes long",
            ),
            // delegation and subjects
            (
                action_with("delegation = \"sometimes\"\nsubjects = [\"corp-idp:*\"]\n"),
                "scopes/a.toml:6: delegation: unknown delegation \"sometimes\"",
            ),
            (
                action_with("delegation = \"required\"\n"),
                "scopes/a.toml:6: delegation: delegation is required but no subjects are listed: say who may delegate",
            ),
            (
                action_with("delegation = \"optional\"\n\nsubjects = []\n"),
                "scopes/a.toml:8: subjects: delegation is optional but no subjects are listed",
            ),
            (
                action_with("subjects = [\"corp-idp:*@example.org\"]\n"),
                "scopes/a.toml:6: subjects: subjects are listed but delegation is forbidden",
            ),
            (
                action_with(
                    "delegation = \"forbidden\"\nsubjects = [\"corp-idp:*@example.org\"]\n",
                ),
                "scopes/a.toml:7: subjects: subjects are listed but delegation is forbidden",
            ),
            (
                action_with(
                    "delegation = \"optional\"\nsubjects = [\n  \"corp-idp:*\",\n  \"okta:*\",\n]\n",
                ),
                "scopes/a.toml:9: subjects[1]: unknown trust \"okta\"",
            ),
            // credential
            (
                action_with("credential = \"\"\n"),
                "scopes/a.toml:6: credential: must not be empty",
            ),
            (
                action_with("credential = \"/integrations/github\"\n"),
                "scopes/a.toml:6: credential: invalid credential path \"/integrations/github\": no leading or trailing '/'",
            ),
            (
                action_with("credential = \"integrations/../root\"\n"),
                "scopes/a.toml:6: credential: invalid credential path \"integrations/../root\": no empty, '.' or '..' segment",
            ),
            (
                action_with("credential = \"integrations/git hub\"\n"),
                "scopes/a.toml:6: credential: invalid credential path \"integrations/git hub\": only [A-Za-z0-9._/-] allowed",
            ),
            // request
            (
                action_with("[action.request]\nmethod = \"CONNECT\"\npath = \"/\"\n"),
                "scopes/a.toml:7: request.method: unsupported method \"CONNECT\"",
            ),
            (
                action_with("[action.request]\nmethod = \"GET\"\npath = \"repos\"\n"),
                "scopes/a.toml:8: request.path: invalid path template \"repos\": must start with '/'",
            ),
            (
                action_with("[action.request]\nmethod = \"GET\"\npath = \"/search?q=x\"\n"),
                "scopes/a.toml:8: request.path: invalid path template \"/search?q=x\": must not hold a query or fragment",
            ),
            (
                action_with("[action.request]\nmethod = \"GET\"\npath = \"/repos//issues\"\n"),
                "scopes/a.toml:8: request.path: invalid path template \"/repos//issues\": empty segment",
            ),
            (
                action_with("[action.request]\nmethod = \"GET\"\npath = \"/repos/../admin\"\n"),
                "scopes/a.toml:8: request.path: invalid path template \"/repos/../admin\": '.' and '..' segments are not allowed",
            ),
            (
                action_with("[action.request]\nmethod = \"GET\"\npath = \"/repos/x{owner}\"\n"),
                "scopes/a.toml:8: request.path: invalid path template \"/repos/x{owner}\": segment \"x{owner}\": a placeholder must be a whole segment, like {name}",
            ),
            (
                action_with("[action.request]\nmethod = \"GET\"\npath = \"/repos/{Owner}\"\n"),
                "scopes/a.toml:8: request.path: invalid path template \"/repos/{Owner}\": placeholder {Owner}: names are [a-z_][a-z0-9_]*",
            ),
            (
                action_with("[action.request]\nmethod = \"GET\"\npath = \"/{a}/{a}\"\n"),
                "scopes/a.toml:8: request.path: invalid path template \"/{a}/{a}\": placeholder {a} appears twice",
            ),
        ];
        for (text, want) in &cases {
            let got = error_in(text);
            assert!(
                got.starts_with(want),
                "got  {got:?}\nwant {want:?}…\nfor\n{text}"
            );
        }
    }

    #[test]
    fn duplicate_names_point_at_the_second_and_name_the_first() {
        let first = action_with("");
        let got = error_of(&[("a.toml", &first), ("b.toml", &format!("\n\n{first}"))]);
        assert_eq!(
            got,
            "scopes/b.toml:4: name: action \"x.y\" is already defined at scopes/a.toml:2"
        );
        let twice = format!("{first}\n{first}");
        assert_eq!(
            error_in(&twice),
            "scopes/a.toml:8: name: action \"x.y\" is already defined at scopes/a.toml:2"
        );
    }

    #[test]
    fn files_load_in_name_order() {
        // z.toml would come first in creation order; a.toml's definition wins.
        let got = error_of(&[("z.toml", &action_with("")), ("a.toml", &action_with(""))]);
        assert!(got.starts_with("scopes/z.toml:2: name: "), "{got}");
        assert!(got.ends_with("already defined at scopes/a.toml:2"), "{got}");
    }

    #[test]
    fn check_dir_reports_every_error_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let bad_b = action_with("credential = \"/x\"\n").replace("k8s-prod:a", "nobody:a");
        fs::write(dir.path().join("b.toml"), bad_b).unwrap();
        fs::write(dir.path().join("a.toml"), "[[action]\n").unwrap();
        fs::write(
            dir.path().join("c.toml"),
            action_with("").replace("x.y", "c"),
        )
        .unwrap();
        let errors = Catalogue::check_dir(dir.path(), &trusts()).unwrap_err();
        let at: Vec<_> = errors
            .iter()
            .map(|e| {
                let loc = e.location().unwrap();
                (
                    loc.file.file_name().unwrap().to_string_lossy().into_owned(),
                    loc.line,
                    e.key().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            at,
            [
                ("a.toml".to_owned(), 1, at[0].2.clone()),
                ("b.toml".to_owned(), 5, "agents[0]".to_owned()),
                ("b.toml".to_owned(), 6, "credential".to_owned()),
            ]
        );
        // A good directory checks clean.
        let good = tempfile::tempdir().unwrap();
        fs::write(good.path().join("c.toml"), action_with("")).unwrap();
        assert_eq!(
            Catalogue::check_dir(good.path(), &trusts()).unwrap().len(),
            1
        );
    }

    #[test]
    fn from_sources_uses_the_given_names() {
        let cat = Catalogue::from_sources([("scopes/x.toml", action_with(""))], &trusts()).unwrap();
        assert_eq!(
            cat.get("x.y").unwrap().source.to_string(),
            "scopes/x.toml:1"
        );
        let err = Catalogue::from_sources(
            [("scopes/x.toml", action_with("delegation = \"required\"\n"))],
            &trusts(),
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("scopes/x.toml:6: delegation: "),
            "{err}"
        );
    }

    // -- pattern matching ---------------------------------------------------

    fn pattern(text: &str) -> SubjectPattern {
        SubjectPattern::parse(text, &trusts()).unwrap()
    }

    #[test]
    fn bound_patterns_match_only_their_trust() {
        let p = pattern("k8s-prod:system:serviceaccount:agents:*");
        assert_eq!(p.to_string(), "k8s-prod:system:serviceaccount:agents:*");
        assert!(p.matches(&principal(
            "k8s-prod",
            "system:serviceaccount:agents:triage",
            &[]
        )));
        // colons and slashes under `*`
        assert!(p.matches(&principal(
            "k8s-prod",
            "system:serviceaccount:agents:a:b/c",
            &[]
        )));
        assert!(p.matches(&principal("k8s-prod", "system:serviceaccount:agents:", &[])));
        assert!(!p.matches(&principal(
            "k8s-prod",
            "system:serviceaccount:other:triage",
            &[]
        )));
        // same sub, another issuer
        assert!(!p.matches(&principal(
            "k8s-staging-other",
            "system:serviceaccount:agents:triage",
            &[]
        )));
        // the trust must be equal, not a prefix
        assert!(!p.matches(&principal(
            "k8s-pro",
            "system:serviceaccount:agents:triage",
            &[]
        )));
        assert!(!p.matches(&principal(
            "k8s-prod2",
            "system:serviceaccount:agents:triage",
            &[]
        )));
    }

    #[test]
    fn spiffe_patterns_need_a_trust_speaking_for_the_domain() {
        let example = ["example.org".to_owned()];
        let other = ["other.example".to_owned()];
        let p = pattern("spiffe://example.org/agent/*");
        assert_eq!(p.trust(), None);
        assert!(p.matches(&principal(
            "spire",
            "spiffe://example.org/agent/triage",
            &example
        )));
        assert!(p.matches(&principal(
            "spire",
            "spiffe://example.org/agent/ns/x:y",
            &example
        )));
        // same sub from a trust that does not speak for example.org
        assert!(!p.matches(&principal(
            "spire-b",
            "spiffe://example.org/agent/triage",
            &other
        )));
        assert!(!p.matches(&principal(
            "k8s-prod",
            "spiffe://example.org/agent/triage",
            &[]
        )));
        // the domain is literal: no suffix or prefix tricks
        assert!(!p.matches(&principal(
            "spire",
            "spiffe://example.org.evil/agent/x",
            &example
        )));
        assert!(!p.matches(&principal(
            "spire",
            "spiffe://evil.example.org/agent/x",
            &example
        )));
        assert!(!p.matches(&principal("spire", "spiffe://example.org/agentx", &example)));
        // a bound pattern may also name SPIFFE IDs of a given trust
        let bound = pattern("spire-b:spiffe://example.org/agent/*");
        assert!(bound.matches(&principal(
            "spire-b",
            "spiffe://example.org/agent/triage",
            &other
        )));
        assert!(!bound.matches(&principal(
            "spire",
            "spiffe://example.org/agent/triage",
            &example
        )));
    }

    #[test]
    fn literal_characters_are_literal() {
        let p = pattern("corp-idp:*@example.org");
        assert!(p.matches(&principal("corp-idp", "alice@example.org", &[])));
        assert!(p.matches(&principal("corp-idp", "@example.org", &[])));
        assert!(!p.matches(&principal("corp-idp", "alice@exampleXorg", &[])));
        assert!(!p.matches(&principal("corp-idp", "alice@example.org.evil.com", &[])));
        assert!(!p.matches(&principal("corp-idp", "alice@EXAMPLE.ORG", &[])));
        let q = pattern("corp-idp:a?b[c]");
        assert!(q.matches(&principal("corp-idp", "a?b[c]", &[])));
        assert!(!q.matches(&principal("corp-idp", "axb[c]", &[])));
        assert!(!q.matches(&principal("corp-idp", "abc", &[])));
    }

    #[test]
    fn catch_all_and_subject_bounds() {
        let p = pattern("k8s-prod:*");
        assert!(p.is_catch_all());
        assert!(!pattern("k8s-prod:a*").is_catch_all());
        assert!(p.matches(&principal("k8s-prod", "anything:at/all", &[])));
        // Empty and over-long subjects never match.
        assert!(!p.matches(&principal("k8s-prod", "", &[])));
        let long = "a".repeat(MAX_SUBJECT_LEN + 1);
        assert!(!p.matches(&principal("k8s-prod", &long, &[])));
        let max = "a".repeat(MAX_SUBJECT_LEN);
        assert!(p.matches(&principal("k8s-prod", &max, &[])));
    }

    #[test]
    fn pattern_parse_errors() {
        let t = trusts();
        let err = |s: &str| SubjectPattern::parse(s, &t).unwrap_err();
        assert_eq!(err(""), PatternError::Empty);
        assert!(matches!(err("alice"), PatternError::Unprefixed { .. }));
        assert!(matches!(err("*"), PatternError::Unprefixed { .. }));
        assert!(matches!(
            err("spiffe://"),
            PatternError::InvalidSpiffe { .. }
        ));
        assert!(matches!(
            err("spiffe://Example.org/x"),
            PatternError::InvalidSpiffe { .. }
        ));
        assert!(matches!(
            err("spiffe://ex ample.org/x"),
            PatternError::InvalidSpiffe { .. }
        ));
        assert!(matches!(
            err("spiffe://h:1/x"),
            PatternError::InvalidSpiffe { .. }
        ));
        assert!(matches!(
            err("SPIFFE://example.org/x"),
            PatternError::UnknownTrust { .. }
        ));
        assert!(matches!(err("*:x"), PatternError::UnknownTrust { .. }));
        let domain = "spiffe://other.example/x";
        assert_eq!(
            SubjectPattern::parse(domain, &TrustDirectory::default()).unwrap_err(),
            PatternError::UnservedDomain {
                domain: "other.example".to_owned()
            }
        );
        assert!(SubjectPattern::parse(domain, &t).is_ok());
    }

    // -- path templates -----------------------------------------------------

    #[test]
    fn path_templates_match_whole_segments() {
        let t = PathTemplate::parse("/repos/{owner}/{repo}/issues").unwrap();
        assert_eq!(t.as_str(), "/repos/{owner}/{repo}/issues");
        assert_eq!(t.params().collect::<Vec<_>>(), ["owner", "repo"]);
        assert!(t.matches("/repos/acme/widgets/issues"));
        assert_eq!(
            t.captures("/repos/acme/wid.gets/issues").unwrap(),
            [("owner", "acme"), ("repo", "wid.gets")]
        );
        for bad in [
            "/repos/acme/widgets/issues/",
            "/repos/acme/widgets/issues/1",
            "/repos/acme/issues",
            "/repos//widgets/issues",
            "/repos/acme/widgets/Issues",
            "/repos/acme/a/b/issues",
            "repos/acme/widgets/issues",
            "/repos/../widgets/issues",
            "/repos/./widgets/issues",
            "/repos/acme/w?x/issues",
            "/repos/acme/widgets/issues?state=open",
            "",
            "/",
        ] {
            assert!(!t.matches(bad), "{bad}");
        }

        let root = PathTemplate::parse("/").unwrap();
        assert!(root.matches("/"));
        assert!(!root.matches("/x"));
        assert!(!root.matches(""));
        assert!(!root.matches("//"));

        let lit = PathTemplate::parse("/api/v1.2/*").unwrap();
        assert!(lit.matches("/api/v1.2/*"));
        assert!(!lit.matches("/api/v1.2/x"));
        assert!(!lit.matches("/api/v1x2/*"));

        let trailing = PathTemplate::parse("/a/{b}").unwrap();
        assert!(trailing.matches("/a/x"));
        assert!(!trailing.matches("/a/"));
        assert!(!trailing.matches("/a"));
    }

    #[test]
    fn path_template_errors() {
        use PathTemplateError as E;
        let err = |s: &str| PathTemplate::parse(s).unwrap_err();
        assert_eq!(err(""), E::NoLeadingSlash);
        assert_eq!(err("x/y"), E::NoLeadingSlash);
        assert_eq!(err("/x#y"), E::QueryOrFragment);
        assert_eq!(err("/x y"), E::BadCharacter);
        assert_eq!(err("/x/"), E::EmptySegment);
        assert_eq!(err("//x"), E::EmptySegment);
        assert_eq!(err("/./x"), E::DotSegment);
        assert!(matches!(err("/{a}b"), E::PartialPlaceholder { .. }));
        assert!(matches!(err("/{a"), E::PartialPlaceholder { .. }));
        assert!(matches!(err("/{{a}}"), E::PartialPlaceholder { .. }));
        assert!(matches!(err("/{}"), E::BadParamName { .. }));
        assert!(matches!(err("/{1a}"), E::BadParamName { .. }));
        assert!(matches!(err("/{a-b}"), E::BadParamName { .. }));
        assert!(matches!(err("/{a}/x/{a}"), E::DuplicateParam { .. }));
        assert!(PathTemplate::parse("/{_a1}/{b_2}").is_ok());
    }

    // -- the matcher --------------------------------------------------------

    fn glob(p: &str, t: &str) -> bool {
        glob_match(p.as_bytes(), t.as_bytes())
    }

    /// Reference matcher: dynamic programming over (pattern, text) prefixes.
    fn glob_reference(p: &[u8], t: &[u8]) -> bool {
        let mut dp = vec![vec![false; t.len() + 1]; p.len() + 1];
        dp[0][0] = true;
        for i in 1..=p.len() {
            for j in 0..=t.len() {
                dp[i][j] = if p[i - 1] == b'*' {
                    dp[i - 1][j] || (j > 0 && dp[i][j - 1])
                } else {
                    j > 0 && dp[i - 1][j - 1] && p[i - 1] == t[j - 1]
                };
            }
        }
        dp[p.len()][t.len()]
    }

    #[test]
    fn glob_basics() {
        assert!(glob("", ""));
        assert!(!glob("", "a"));
        assert!(glob("*", ""));
        assert!(glob("**", "abc"));
        assert!(glob("a*", "a"));
        assert!(glob("*a", "bba"));
        assert!(!glob("*a", "bab"));
        assert!(glob("a*b*c", "a:/b/:c"));
        assert!(glob("a*b*c", "abbbcbc"));
        assert!(!glob("a*b*c", "abbbcb"));
        assert!(glob("*é*", "café au lait"));
        assert!(!glob("é", "e"));
    }

    fn insert_stars(s: &str, positions: &[prop::sample::Index], stars: usize) -> String {
        let boundaries: Vec<usize> = s
            .char_indices()
            .map(|(i, _)| i)
            .chain(std::iter::once(s.len()))
            .collect();
        let mut cuts: Vec<usize> = positions
            .iter()
            .take(stars)
            .map(|ix| boundaries[ix.index(boundaries.len())])
            .collect();
        cuts.sort_unstable();
        let mut out = String::new();
        let mut last = 0;
        for cut in cuts {
            out.push_str(&s[last..cut]);
            out.push('*');
            last = cut;
        }
        out.push_str(&s[last..]);
        out
    }

    proptest! {
        #[test]
        fn pattern_with_inserted_stars_matches_the_original(
            s in "\\PC{0,200}",
            positions in prop::collection::vec(any::<prop::sample::Index>(), 8),
            stars in 0usize..8,
        ) {
            let pat = insert_stars(&s, &positions, stars);
            prop_assert!(glob(&pat, &s), "{pat:?} vs {s:?}");
            // and through the public API, bound to a trust
            prop_assume!(!pat.is_empty());
            let entry = SubjectPattern::parse(&format!("corp-idp:{pat}"), &trusts()).unwrap();
            prop_assert_eq!(entry.matches(&principal("corp-idp", &s, &[])), !s.is_empty());
            prop_assert!(!entry.matches(&principal("k8s-prod", &s, &[])));
        }

        #[test]
        fn pattern_without_stars_matches_only_itself(
            a in "[^*]{0,64}",
            b in "[^*]{0,64}",
            edit in 0usize..4,
            at in any::<prop::sample::Index>(),
        ) {
            prop_assert!(glob(&a, &a));
            prop_assert_eq!(glob(&a, &b), a == b);
            // near misses: one byte dropped, appended or prefixed
            let chars: Vec<char> = a.chars().collect();
            let near: String = match edit {
                0 if !chars.is_empty() => {
                    let i = at.index(chars.len());
                    chars.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, c)| c).collect()
                }
                1 => format!("{a}x"),
                2 => format!("x{a}"),
                _ => format!("{a}{b}"),
            };
            prop_assert_eq!(glob(&a, &near), a == near);
        }

        #[test]
        fn matcher_agrees_with_reference(
            p in "[ab*]{0,12}",
            t in "[ab]{0,16}",
        ) {
            prop_assert_eq!(glob(&p, &t), glob_reference(p.as_bytes(), t.as_bytes()));
        }

        #[test]
        fn matcher_is_fast_on_adversarial_input(
            stars in 1usize..64,
            len in 0usize..=MAX_SUBJECT_LEN,
            tail in "[ab]{0,2}",
        ) {
            let pat = format!("{}*b", "*a".repeat(stars));
            let text = format!("{}{tail}", "a".repeat(len));
            let started = Instant::now();
            let matched = glob(&pat, &text);
            prop_assert!(started.elapsed() < Duration::from_secs(1));
            prop_assert_eq!(matched, len >= stars && text.ends_with('b'));

            let entry = SubjectPattern::parse(&format!("k8s-prod:{pat}"), &trusts()).unwrap();
            let started = Instant::now();
            let _ = entry.matches(&principal("k8s-prod", &text, &[]));
            prop_assert!(started.elapsed() < Duration::from_secs(1));
        }

        #[test]
        fn matching_never_panics(p in "\\PC{0,300}", t in "\\PC{0,300}") {
            let _ = glob(&p, &t);
            if let Ok(entry) = SubjectPattern::parse(&p, &trusts()) {
                let domains = ["example.org".to_owned()];
                let _ = entry.matches(&principal("k8s-prod", &t, &domains));
            }
            if let Ok(template) = PathTemplate::parse(&p) {
                let _ = template.captures(&t);
            }
        }
    }
}
