//! The scope catalogue: `scopes/*.toml`, loaded and validated into [`Action`]s that
//! say which agent may do which action, for which audience, for how long, with or
//! without a delegating user, and which one call shape the shim lets through.
//!
//! - [`pattern`]: the trust-bound subject patterns of `agents` and `subjects`;
//! - [`request_shape`]: `[action.request]`, the method and path template;
//! - [`files`]: which files of the directory count, and reading them whole (a file
//!   that changes while read, or that changed moments ago, is not used), within
//!   size caps;
//! - [`loader`]: the file format and every check `scopes check` performs;
//! - [`toml_span`]: locating a TOML error's key, for `FILE:LINE: KEY` messages;
//! - here: [`Action`], [`Catalogue`] and its errors, and the periodic reloader the
//!   STS and the shim share.
//!
//! May import `identity` (principals and the trust directory) and `runtime`.

pub mod files;
pub mod loader;
pub mod pattern;
pub mod request_shape;
#[cfg(test)]
mod tests;
pub mod toml_span;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;

pub use crate::identity::principal::{Principal, TrustDirectory};
pub use files::{MAX_CATALOGUE_BYTES, MAX_FILE_BYTES, SETTLE, is_scope_file_name};
use files::{Snapshot, read_whole};
use loader::Loader;
pub use loader::is_action_name;
pub use pattern::{MAX_SUBJECT_LEN, PatternError, SubjectPattern};
pub use request_shape::{
    DEFAULT_HEADERS, METHODS, PathTemplate, PathTemplateError, RequestShape, never_forwarded,
};

/// Longest allowed action name, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Most actions a catalogue may hold: bounds the memory of a load (with the byte
/// caps of [`files`]) far above any real catalogue.
pub const MAX_ACTIONS: usize = 100_000;
/// Upper bound on an action's `ttl` (the STS caps it further by its own `max_ttl`).
pub const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

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

/// How an action's tokens are bound to the agent (RFC 9449).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SenderConstraint {
    /// A bearer token, unless the agent sends a DPoP proof anyway (then it is bound).
    #[default]
    None,
    /// Only with a DPoP proof: the token is bound to the proof's key (`cnf.jkt`).
    Dpop,
}

impl SenderConstraint {
    /// The spelling in the catalogue and `[tokens]`: `"none"` or `"dpop"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Dpop => "dpop",
        }
    }

    /// Parses the spelling (exact, lowercase).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "none" => Some(Self::None),
            "dpop" => Some(Self::Dpop),
            _ => None,
        }
    }
}

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
    /// `sender_constraint`; `None` takes the STS's `tokens.sender_constraint`.
    pub sender_constraint: Option<SenderConstraint>,
    /// Actions a holder of a token for this one may hand to a sub-agent (RFC 8693
    /// §4.1 chains): each of the same audience, checked at load.
    pub delegable_to: Vec<String>,
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
    #[error("unknown sender_constraint {value:?}: expected \"none\" or \"dpop\"")]
    InvalidSenderConstraint { value: String },
    #[error("delegation is {delegation} but no subjects are listed: say who may delegate")]
    DelegationNeedsSubjects { delegation: Delegation },
    #[error(
        "subjects are listed but delegation is forbidden: set delegation = \"optional\" or \"required\", or drop subjects"
    )]
    SubjectsWithoutDelegation,
    #[error("invalid credential path {value:?}: {reason}")]
    InvalidCredential { value: String, reason: &'static str },
    #[error(
        "credential path {value:?} lies under tenant {tenant:?}'s secrets_prefix: another tenant's secrets are not this catalogue's"
    )]
    TenantCredential { value: String, tenant: String },
    #[error("unsupported method {value:?}: expected one of GET, HEAD, POST, PUT, PATCH, DELETE")]
    InvalidMethod { value: String },
    #[error("invalid path template {value:?}: {reason}")]
    InvalidPath {
        value: String,
        reason: PathTemplateError,
    },
    #[error("header {value:?} cannot be forwarded: {reason}")]
    InvalidHeader { value: String, reason: &'static str },
    #[error("no action {name:?} in the catalogue")]
    UnknownDelegable { name: String },
    #[error(
        "action {name:?} is for another audience ({audience:?}): a sub-agent's token never reaches further than its parent's"
    )]
    DelegableAudience { name: String, audience: String },
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
    /// The catalogue would hold more than [`MAX_ACTIONS`]; `at` is the first action
    /// over the cap.
    #[error("{at}: action: the catalogue holds more than {limit} actions")]
    TooManyActions { at: Location, limit: usize },
    /// A scope file over [`MAX_FILE_BYTES`] (refused without reading it past the cap).
    #[error("{}: scope file is larger than the cap of {} per file", path.display(), Bytes(*limit))]
    FileTooLarge { path: PathBuf, limit: u64 },
    /// The scope files of `dir`, up to and including `path`, over
    /// [`MAX_CATALOGUE_BYTES`].
    #[error("{}: the scope files of {} up to this one exceed the cap of {} per catalogue", path.display(), dir.display(), Bytes(*limit))]
    CatalogueTooLarge {
        dir: PathBuf,
        path: PathBuf,
        limit: u64,
    },
    /// A scope file (or the directory) kept changing while it was read, on every one
    /// of `attempts` reads: nothing of it was used.
    #[error("{}: changed while being read, {attempts} times in a row; not used", path.display())]
    Changed { path: PathBuf, attempts: u32 },
    /// A reload found a scope file changed less than [`SETTLE`] ago (possibly still
    /// being written): nothing of the directory was used; it settles in `wait`.
    #[error("{}: modified less than {} ago, maybe still being written; not used yet", path.display(), humantime::format_duration(*settle))]
    Unsettled {
        path: PathBuf,
        settle: Duration,
        wait: Duration,
    },
}

/// A byte count for messages: `8 MiB`, or bytes when not a whole MiB.
struct Bytes(u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MIB: u64 = 1024 * 1024;
        if self.0 >= MIB && self.0.is_multiple_of(MIB) {
            write!(f, "{} MiB", self.0 / MIB)
        } else {
            write!(f, "{} bytes", self.0)
        }
    }
}

impl CatalogueError {
    /// File and line, for the errors in a file's text.
    pub fn location(&self) -> Option<&Location> {
        match self {
            Self::Parse { at, .. }
            | Self::Invalid { at, .. }
            | Self::Duplicate { at, .. }
            | Self::TooManyActions { at, .. } => Some(at),
            Self::ReadDir { .. }
            | Self::Read { .. }
            | Self::FileTooLarge { .. }
            | Self::CatalogueTooLarge { .. }
            | Self::Changed { .. }
            | Self::Unsettled { .. } => None,
        }
    }

    /// The offending key, for the errors in a file's text.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Parse { key, .. } | Self::Invalid { key, .. } => Some(key),
            Self::Duplicate { .. } => Some("name"),
            Self::TooManyActions { .. } => Some("action"),
            Self::ReadDir { .. }
            | Self::Read { .. }
            | Self::FileTooLarge { .. }
            | Self::CatalogueTooLarge { .. }
            | Self::Changed { .. }
            | Self::Unsettled { .. } => None,
        }
    }

    /// The file named by an error about a whole file (not its text).
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::Read { path, .. }
            | Self::FileTooLarge { path, .. }
            | Self::CatalogueTooLarge { path, .. }
            | Self::Changed { path, .. }
            | Self::Unsettled { path, .. } => Some(path),
            _ => None,
        }
    }
}

/// Every action of the catalogue, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalogue {
    actions: BTreeMap<String, Action>,
}

impl Catalogue {
    /// Loads every scope file of `dir` ([`is_scope_file_name`], sorted by file name;
    /// other files and sub-directories are ignored) and returns the first error in
    /// file and line order. A directory without actions yields an empty catalogue.
    ///
    /// The files are read whole ([`files`]): one that changes while read is read
    /// again. This is the load at start, where there is no previous catalogue to keep:
    /// a file modified less than [`SETTLE`] ago is used (with a warning) if it was
    /// read whole; the reloader ([`Catalogue::reload_dir`]) is stricter.
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

    /// The load of a periodic reload at `now`: like [`load_dir`](Self::load_dir), but
    /// if any scope file changed less than [`SETTLE`] before `now` (or claims a change
    /// after `now`), nothing is used: [`CatalogueError::Unsettled`] says which file
    /// and when to try again, and the caller keeps its previous catalogue whole.
    pub fn reload_dir(
        dir: &Path,
        trusts: &TrustDirectory,
        now: SystemTime,
    ) -> Result<Catalogue, CatalogueError> {
        Self::reload_dir_with(dir, trusts, now, SETTLE, &mut |_| {})
    }

    /// [`reload_dir`](Self::reload_dir) with every error of the catalogue, not only the
    /// first (a file still settling or changing while read is the one error).
    pub fn reload_dir_all(
        dir: &Path,
        trusts: &TrustDirectory,
        now: SystemTime,
    ) -> Result<Catalogue, Vec<CatalogueError>> {
        Self::reload_dir_every(dir, trusts, now, SETTLE, &mut |_| {})
    }

    /// [`reload_dir`](Self::reload_dir) with the settle window given and a hook run
    /// after each file is read (tests change files there).
    fn reload_dir_with(
        dir: &Path,
        trusts: &TrustDirectory,
        now: SystemTime,
        settle: Duration,
        after_read: &mut dyn FnMut(&Path),
    ) -> Result<Catalogue, CatalogueError> {
        Self::reload_dir_every(dir, trusts, now, settle, after_read).map_err(|errors| {
            // Never empty; the fallback only keeps this free of panics.
            errors
                .into_iter()
                .next()
                .unwrap_or_else(|| CatalogueError::ReadDir {
                    dir: dir.to_owned(),
                    error: io::Error::other("reload failed"),
                })
        })
    }

    /// The reload with every error it finds.
    fn reload_dir_every(
        dir: &Path,
        trusts: &TrustDirectory,
        now: SystemTime,
        settle: Duration,
        after_read: &mut dyn FnMut(&Path),
    ) -> Result<Catalogue, Vec<CatalogueError>> {
        let snapshot = read_whole(dir, after_read).map_err(|e| vec![e])?;
        if let Some((path, wait)) = snapshot.unsettled(now, settle) {
            return Err(vec![CatalogueError::Unsettled {
                path: path.to_owned(),
                settle,
                wait,
            }]);
        }
        let (catalogue, errors) = Self::parse(dir, snapshot, trusts);
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
        let snapshot = match read_whole(dir, &mut |_| {}) {
            Ok(snapshot) => snapshot,
            Err(error) => return (Catalogue::default(), vec![error]),
        };
        if let Some((path, _)) = snapshot.unsettled(SystemTime::now(), SETTLE) {
            tracing::warn!(
                file = %path.display(),
                settle = %humantime::format_duration(SETTLE),
                "scope file modified moments ago, used as read; deploy catalogue changes by rename (see the README)"
            );
        }
        let files = snapshot.files.len();
        let (catalogue, errors) = Self::parse(dir, snapshot, trusts);
        if errors.is_empty() {
            tracing::info!(dir = %dir.display(), files, actions = catalogue.len(), "loaded scope catalogue");
        }
        (catalogue, errors)
    }

    fn parse(
        dir: &Path,
        snapshot: Snapshot,
        trusts: &TrustDirectory,
    ) -> (Catalogue, Vec<CatalogueError>) {
        let mut loader = Loader::new(trusts);
        for (path, text) in &snapshot.files {
            loader.file(path, text);
        }
        let (catalogue, errors) = loader.finish();
        if errors.is_empty() {
            tracing::debug!(
                dir = %dir.display(),
                files = snapshot.files.len(),
                actions = catalogue.len(),
                "read scope catalogue"
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

/// The counters a catalogue reloader keeps (the STS's and the shim's metrics).
#[derive(Debug, Clone, Default)]
pub struct ReloadCounters {
    /// Every reload that kept the last good catalogue, for whatever reason.
    pub kept: Counter,
    /// Reloads that failed on the catalogue's content or files (not a file still
    /// settling or changing while read, which only defers the reload).
    pub failures: Counter,
}

/// Re-reads the catalogue in `dir` every `interval` (first one interval from now) and
/// hands each good one to `install`, which returns the catalogue it replaced; a failed
/// read is logged, counted and the last good catalogue stays whole (the STS and the
/// shim alike).
///
/// What is logged is what changed, not the steady state: a catalogue that differs from
/// the one it replaces (`info`, with the actions added and removed), a failure with
/// every error it found (`error`, once per distinct set of errors; repeats at `debug`),
/// and the first good reload after failures. An unchanged reload logs at `debug`.
///
/// A reload that finds a file still settling ([`CatalogueError::Unsettled`]) tries
/// once more as soon as it will have settled, if that comes before the next tick;
/// otherwise the next tick reads it. Nothing is remembered between reloads but the
/// last failure's text, so a deferred change is never forgotten: every tick reads the
/// directory afresh.
pub fn spawn_reloader<F>(
    dir: PathBuf,
    trusts: Arc<TrustDirectory>,
    interval: Duration,
    counters: ReloadCounters,
    install: F,
) -> tokio::task::AbortHandle
where
    F: Fn(Arc<Catalogue>) -> Arc<Catalogue> + Send + Sync + 'static,
{
    let install = Arc::new(install);
    let last_failure: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    crate::runtime::every(interval, move || {
        let (dir, trusts, install, counters, last_failure) = (
            dir.clone(),
            trusts.clone(),
            install.clone(),
            counters.clone(),
            last_failure.clone(),
        );
        async move {
            let mut early_retry = true;
            loop {
                let (d, t) = (dir.clone(), trusts.clone());
                let loaded = tokio::task::spawn_blocking(move || {
                    Catalogue::reload_dir_all(&d, &t, SystemTime::now())
                })
                .await;
                let failure = match loaded {
                    Ok(Ok(c)) => {
                        let new = Arc::new(c);
                        let old = install(new.clone());
                        log_change(&dir, &old, &new);
                        if let Ok(mut last) = last_failure.lock()
                            && let Some(previous) = last.take()
                        {
                            tracing::info!(dir = %dir.display(), previous_error = %previous, "scope catalogue reloads again");
                        }
                        return;
                    }
                    Ok(Err(errors)) => errors,
                    Err(e) => {
                        counters.kept.inc();
                        counters.failures.inc();
                        tracing::error!(error = %e, "catalogue reload task failed");
                        return;
                    }
                };
                counters.kept.inc();
                match failure.as_slice() {
                    [CatalogueError::Unsettled { path, wait, .. }]
                        if early_retry && *wait < interval =>
                    {
                        tracing::info!(file = %path.display(), "scope file still settling; keeping the last good catalogue and reading again shortly");
                        early_retry = false;
                        tokio::time::sleep(*wait + UNSETTLED_MARGIN).await;
                        continue;
                    }
                    [e @ (CatalogueError::Unsettled { .. } | CatalogueError::Changed { .. })] => {
                        tracing::warn!(error = %e, "scope files changing; keeping the last good catalogue until the next reload");
                    }
                    errors => {
                        counters.failures.inc();
                        let text = errors
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; ");
                        let mut last = last_failure.lock().ok();
                        let repeated = last
                            .as_deref()
                            .is_some_and(|l| l.as_deref() == Some(text.as_str()));
                        if repeated {
                            tracing::debug!(errors = errors.len(), error = %text, "catalogue reload failed again; keeping the last good catalogue");
                        } else {
                            tracing::error!(errors = errors.len(), error = %text, "catalogue reload failed; keeping the last good catalogue");
                        }
                        if let Some(last) = last.as_deref_mut() {
                            *last = Some(text);
                        }
                    }
                }
                return;
            }
        }
    })
}

/// Logs what a reload changed: at `info` the actions added, removed and changed when
/// the catalogue differs, at `debug` when it does not.
fn log_change(dir: &Path, old: &Catalogue, new: &Catalogue) {
    if old == new {
        tracing::debug!(dir = %dir.display(), actions = new.len(), "scope catalogue unchanged");
        return;
    }
    let names = |from: &Catalogue, to: &Catalogue| -> Vec<String> {
        from.actions
            .keys()
            .filter(|n| !to.actions.contains_key(*n))
            .cloned()
            .collect()
    };
    let added = names(new, old);
    let removed = names(old, new);
    let changed: Vec<String> = new
        .actions
        .iter()
        .filter(|(n, a)| old.actions.get(*n).is_some_and(|o| o != *a))
        .map(|(n, _)| n.clone())
        .collect();
    tracing::info!(
        dir = %dir.display(),
        actions = new.len(),
        added = %added.join(","),
        removed = %removed.join(","),
        changed = %changed.join(","),
        "scope catalogue changed"
    );
}

/// Added to the settle wait before an early retry, so the file is settled by then.
const UNSETTLED_MARGIN: Duration = Duration::from_millis(100);
