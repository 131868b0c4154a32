//! The audit log: every token decision of the STS (allowed or denied) and every call a
//! shim proxies becomes one JSON line in an append-only, hash-chained file, written
//! before the response leaves; a record that cannot be written means no token and no
//! proxied call. Each line is `{"seq":N,"prev":"<64 hex>",...record fields...}\n`, where
//! `seq` counts lines from 1 and `prev` is the SHA-256 of the previous line's bytes
//! (without its newline; 64 zeros on line 1). Records are serialized by `serde_json`,
//! whose escaping keeps every record on one line, so an attacker-influenced field
//! (a subject, an audience, a URL) cannot end a line or forge the next one. [`verify`]
//! detects an edited, removed, reordered or inserted line, and a torn last line.
//!
//! What the chain does not detect, honestly: it carries no secret, so someone who can
//! write the file can rewrite every line from the one they changed to the end and
//! recompute a valid chain; and dropping the last lines (truncating the tail) or
//! editing the very last line leaves a valid, shorter or different chain. Both are
//! caught only by comparing with an anchor kept elsewhere: the line count and the
//! hash of the last line ([`VerifyReport`]) recorded outside this file, for example by
//! a log shipper or another system. This module does not keep that anchor.
//!
//! Durability is the OS page cache: lines are not fsynced one by one (that would cap
//! the STS at the disk's flush rate). A line that `write` accepted survives a crash of
//! the process, not a crash of the kernel or a power loss; then the last lines may be
//! lost or the last one torn, and [`AuditLog::open`] refuses to extend a torn log until
//! an operator repairs it ([`verify`] names the line). [`AuditLog::sync`] flushes to
//! disk, for shutdown.
//!
//! Concurrency: one `std::sync::Mutex` guards the file and the chain state. The record
//! is serialized and checked before the lock is taken; under the lock are only the
//! header (`seq`, `prev`), one SHA-256 and one `write_all` of the whole line, so a line
//! costs one write syscall and the lock is never held across an `.await`. The write
//! goes to the page cache and usually takes microseconds, but it is blocking I/O: a
//! stalled disk (dirty-page throttling, a network filesystem) stalls the calling tokio
//! worker too. A failed write does not advance the chain, and the bytes it may have
//! written are truncated away; if even that fails, the log refuses every later append
//! (fail closed). One process writes one file: there is no file lock.
//!
//! Rotation is the log's own ([`AuditLog::open_rotating`], `[audit] max_file_bytes`):
//! a full file is renamed to `<path>.<N>` and the chain continues in a new file, its
//! first line linking to the last line before; [`verify_files`] checks the files in
//! order. (External `copytruncate` would break the chain.)
//!
//! A leaf: imports nothing of the crate's; the STS and the shim write their records
//! through it.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::ser::{Error as _, Serializer};
use serde::{Deserialize, Serialize};

/// The longest line the log writes or reads, trailing newline included. A record
/// whose line would be longer is refused ([`AuditError::TooLarge`]), so that reopening
/// and verifying never have to hold an unbounded line in memory.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// `prev` of the first line.
const GENESIS: [u8; 64] = [b'0'; 64];

/// Bytes reserved in front of a serialized record for the header that replaces its
/// opening `{`: `{"seq":` + up to 20 digits + `,"prev":"` + 64 hex + `"` + `,` is 102.
const PREFIX: usize = 101;

/// Chunk size for reading the last line of an existing log backwards.
const TAIL_CHUNK: usize = 8 * 1024;

/// Seconds from the epoch to the year 10000, where RFC 3339 (four-digit years) ends.
const RFC3339_END_SECS: u64 = 253_402_300_800;

/// What went wrong with the audit log. Messages name the path, a line number and a
/// fixed reason, never a record's contents (records carry attacker-influenced text).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The file cannot be opened or created (a missing directory is not created).
    #[error("cannot open audit log {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file cannot be read (while resuming the chain or verifying).
    #[error("cannot read audit log {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The existing log ends in something that is not a complete audit line; it is not
    /// extended. `verify` names the line.
    #[error("audit log {} is corrupt, refusing to extend it: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: &'static str },
    /// A line could not be written (or synced); the chain did not advance.
    #[error("cannot write audit log {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A write failed and its partial bytes could not be removed: the file's tail is in
    /// an unknown state, so nothing more is appended until the log is repaired.
    #[error("audit log {} is in an unknown state after a failed write", path.display())]
    Broken { path: PathBuf },
    /// `verify` found a line that breaks the chain (1-based line number).
    #[error("audit chain broken at {} line {line}: {reason}", path.display())]
    BrokenLink {
        path: PathBuf,
        line: u64,
        reason: &'static str,
    },
    /// The record does not serialize to a JSON object.
    #[error("audit record does not serialize to a JSON object")]
    NotAnObject,
    /// The record failed to serialize (the serializer's message is dropped: it may
    /// quote the record).
    #[error("audit record cannot be serialized to JSON")]
    Serialize,
    /// The record has a field the log writes itself.
    #[error("audit record has the reserved field `{field}`")]
    ReservedField { field: &'static str },
    /// The record serialized with a raw line break (only possible through
    /// `serde_json::value::RawValue`), which would split the line.
    #[error("audit record serializes with a raw line break")]
    LineBreak,
    /// The record's line would exceed [`MAX_LINE_BYTES`].
    #[error("audit record exceeds {max} bytes")]
    TooLarge { max: usize },
    /// A thread panicked while holding the log's lock.
    #[error("audit log lock poisoned")]
    Poisoned,
}

/// Whether the STS issued the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Allow,
    Deny,
}

/// The STS's record of one token decision. Absent values serialize as `null`, so every
/// decision line has the same fields in the same order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Decision<'a> {
    /// When the decision was made; written as RFC 3339 UTC with milliseconds. A time
    /// before 1970 or after 9999 fails serialization (and so the append).
    #[serde(serialize_with = "rfc3339_millis")]
    pub time: SystemTime,
    /// The trust (identity provider configuration) that verified the subject token.
    pub trust: Option<&'a str>,
    /// The subject (workload) identity.
    pub subject: Option<&'a str>,
    /// The actor (agent) identity, when delegated.
    pub actor: Option<&'a str>,
    /// The requested action.
    pub action: Option<&'a str>,
    /// The audience of the issued token.
    pub audience: Option<&'a str>,
    /// Allowed or denied.
    pub decision: Outcome,
    /// A fixed reason code such as `issued` or `invalid_subject_token`.
    pub reason: &'a str,
    /// The issued token's `jti`.
    pub jti: Option<&'a str>,
    /// The signing key's `kid`.
    pub kid: Option<&'a str>,
    /// The issued token's expiry, in Unix seconds.
    pub expires_at: Option<u64>,
    /// The grant the request came in as (`token-exchange`, `jwt-bearer`), once read;
    /// `revocation` or `introspection` for those endpoints' lines (where `actor` is the
    /// calling service of an introspection).
    pub grant: Option<&'a str>,
}

impl<'a> Decision<'a> {
    /// A decision made now with every optional field absent; fill the rest with struct
    /// update syntax: `Decision { subject: Some(s), ..Decision::now(Outcome::Deny, r) }`.
    pub fn now(decision: Outcome, reason: &'a str) -> Self {
        Self {
            time: SystemTime::now(),
            trust: None,
            subject: None,
            actor: None,
            action: None,
            audience: None,
            decision,
            reason,
            jti: None,
            kid: None,
            expires_at: None,
            grant: None,
        }
    }
}

/// A shim's record of one request: proxied (allowed) or refused. Absent values
/// serialize as `null`, so every line of a shim has the same fields in the same order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProxiedCall<'a> {
    /// When the call ended (the response was ready to leave), RFC 3339 UTC.
    #[serde(serialize_with = "rfc3339_millis")]
    pub time: SystemTime,
    /// The shim's audience: which shim wrote the line.
    pub shim: &'a str,
    /// `sub` of the access token.
    pub subject: Option<&'a str>,
    /// `iss` of the access token (the STS that minted it).
    pub issuer: Option<&'a str>,
    /// `client_id` of the access token: the agent as `TRUST:SUB`.
    pub client_id: Option<&'a str>,
    /// `act.sub`, when delegated.
    pub actor: Option<&'a str>,
    /// The whole `act` chain, when delegated (newest actor outermost).
    pub act: Option<&'a agent_sts_verifier::Actor>,
    /// `scope`: the action.
    pub action: Option<&'a str>,
    /// `jti` of the access token.
    pub jti: Option<&'a str>,
    pub method: &'a str,
    /// The matched `[action.request]` path template (never the raw path).
    pub path: Option<&'a str>,
    /// Proxied or refused.
    pub decision: Outcome,
    /// A fixed reason code such as `proxied` or `insufficient_scope`.
    pub reason: &'a str,
    /// The upstream's HTTP status, when it answered.
    pub upstream_status: Option<u16>,
    /// Credential bytes removed from the response headers and body (for a streamed
    /// answer: from its headers; the body's count is in its [`StreamEnd`] line).
    pub bytes_scrubbed: u64,
    /// For an answer relayed as a stream: its id, which its [`StreamEnd`] line repeats.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<&'a str>,
}

/// The completion record of an answer the shim relayed as a stream: written after its
/// last byte left (or when it ended otherwise), in the same chain as the
/// [`ProxiedCall`] line written before its first byte, which carries the same `stream`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StreamEnd<'a> {
    /// When the stream ended, RFC 3339 UTC.
    #[serde(serialize_with = "rfc3339_millis")]
    pub time: SystemTime,
    /// The shim's audience.
    pub shim: &'a str,
    /// Always `stream_end`: what kind of line this is.
    pub event: &'a str,
    /// The id the call's decision line carries.
    pub stream: &'a str,
    pub action: Option<&'a str>,
    pub jti: Option<&'a str>,
    /// How it ended: `complete`, `idle_timeout`, `client_gone` or `upstream_error`.
    pub ended: &'a str,
    /// Body bytes handed to the agent (after scrubbing).
    pub bytes_relayed: u64,
    /// Credential bytes removed from the body.
    pub bytes_scrubbed: u64,
    /// From the decision line to the end.
    pub duration_ms: u64,
}

/// Opens (creating, mode 0640) a log file for appending and reading its tail.
fn open_log_file(path: &Path) -> Result<File, AuditError> {
    let mut options = OpenOptions::new();
    options.read(true).append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o640);
    }
    options.open(path).map_err(|source| AuditError::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// `<path>.<n>`.
fn rotated_name(path: &Path, n: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// The highest `n` of the `<path>.<n>` files beside `path`.
fn newest_index(path: &Path) -> Option<u64> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let base = path.file_name()?.to_string_lossy().into_owned();
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().to_string_lossy().into_owned();
            name.strip_prefix(&base)?
                .strip_prefix('.')?
                .parse::<u64>()
                .ok()
        })
        .max()
}

/// The newest rotated file of `path`, if any.
fn newest_rotated(path: &Path) -> Option<PathBuf> {
    newest_index(path).map(|n| rotated_name(path, n))
}

/// A summary line: how many refusals of one reason, decided before any identity was
/// known, were counted since `since` without a line of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RefusalSummary<'a> {
    #[serde(serialize_with = "rfc3339_millis")]
    pub time: SystemTime,
    #[serde(serialize_with = "rfc3339_millis")]
    pub since: SystemTime,
    /// Always `deny`.
    pub decision: Outcome,
    pub reason: &'a str,
    /// Refusals of this reason not written one by one.
    pub count: u64,
}

/// Bounds what anonymous traffic writes to the audit log (README, "Security
/// properties" 12). A refusal decided before any identity is known (bad framing, no
/// token, a token that does not verify) gets its own line only if it is the first of
/// its reason in the current window; the others are counted, and [`flush`](Self::flush)
/// writes one [`RefusalSummary`] line per reason. So the record stays complete (every
/// refusal is counted in a line) while its size grows with the number of reasons and
/// windows, never with the attacker's request rate. Reasons are fixed codes: the
/// counters are bounded by the code's set of reasons.
#[derive(Debug)]
pub struct RefusalWindow {
    state: Mutex<WindowState>,
}

#[derive(Debug)]
struct WindowState {
    since: SystemTime,
    /// Per reason: refusals seen in this window (the first was written in full).
    seen: std::collections::BTreeMap<&'static str, u64>,
}

impl Default for RefusalWindow {
    fn default() -> Self {
        RefusalWindow {
            state: Mutex::new(WindowState {
                since: SystemTime::now(),
                seen: std::collections::BTreeMap::new(),
            }),
        }
    }
}

impl RefusalWindow {
    /// Counts one anonymous refusal; true when it is the first of its reason in this
    /// window and must be written in full.
    pub fn admit(&self, reason: &'static str) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return true; // a poisoned lock: write everything rather than lose it
        };
        let seen = state.seen.entry(reason).or_insert(0);
        *seen += 1;
        *seen == 1
    }

    /// Writes one summary line per reason with refusals not written one by one, and
    /// starts a new window. Returns the number of lines written.
    pub fn flush(&self, log: &AuditLog) -> Result<usize, AuditError> {
        let (since, seen) = {
            let Ok(mut state) = self.state.lock() else {
                return Ok(0);
            };
            let since = std::mem::replace(&mut state.since, SystemTime::now());
            (since, std::mem::take(&mut state.seen))
        };
        let now = SystemTime::now();
        let mut lines = 0;
        let mut pending = seen.into_iter().filter(|(_, seen)| *seen > 1);
        while let Some((reason, seen)) = pending.next() {
            let summary = RefusalSummary {
                time: now,
                since,
                decision: Outcome::Deny,
                reason,
                count: seen - 1,
            };
            if let Err(e) = log.append(&summary) {
                // Keep what was not written for the next flush: every refusal stays
                // counted in some line.
                if let Ok(mut state) = self.state.lock() {
                    state.since = since;
                    for (reason, seen) in std::iter::once((reason, seen)).chain(pending) {
                        *state.seen.entry(reason).or_insert(0) += seen;
                    }
                }
                return Err(e);
            }
            lines += 1;
        }
        Ok(lines)
    }
}

pub fn rfc3339_millis<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    // humantime panics on a time before the epoch and fails (which serde_json turns
    // into a panic) after year 9999: check the range first.
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) if since.as_secs() < RFC3339_END_SECS => {
            serializer.collect_str(&humantime::format_rfc3339_millis(*time))
        }
        _ => Err(S::Error::custom("time outside the RFC 3339 range")),
    }
}

/// The result of a clean [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Number of lines (records) in the log.
    pub lines: u64,
    /// `seq` of the first line: 1, or more when the first file continues an earlier
    /// one that was not given (rotated away).
    pub first_seq: u64,
    /// When `first_seq` > 1: the `prev` of the first line, i.e. the hash the last line
    /// of the missing earlier file must have.
    pub continues: Option<String>,
    /// Lowercase hex SHA-256 of the last line (64 zeros for an empty log): the value the
    /// next line's `prev` will hold. Recorded elsewhere, it anchors the tail, which the
    /// chain alone cannot protect against truncation or rewriting.
    pub last_hash: String,
}

/// The append-only, hash-chained audit log. Share it behind an `Arc`; [`append`]
/// takes `&self` and is safe to call from many tasks and threads.
///
/// [`append`]: AuditLog::append
pub struct AuditLog {
    path: PathBuf,
    chain: Mutex<Chain<File>>,
    /// Rotate once the file holds this many bytes (0: never).
    max_file_bytes: u64,
    /// Whether the last append succeeded (see [`AuditLog::accepting`]).
    accepting: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens the log at `path` for appending, creating the file (with mode 0640 on Unix)
    /// but not its directory, and resumes the chain from the last line. The last line is
    /// found by reading backwards from the end, so a large log is not read whole. A log
    /// whose last line is torn (no trailing newline), too long, or not a JSON object
    /// with a numeric `seq` is refused: run [`verify`] to find the damage.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        Self::open_rotating(path, 0)
    }

    /// Like [`open`](Self::open), rotating the file once it holds `max_file_bytes`
    /// (0: never): the full file is renamed to `<path>.<N>` (N one more than the
    /// highest already there) and a new file continues the same chain, its first line
    /// linking to the last line of the one before. An empty file beside rotated ones
    /// resumes the chain from the newest of them. [`verify_files`] checks a set of them
    /// in order.
    pub fn open_rotating(path: &Path, max_file_bytes: u64) -> Result<AuditLog, AuditError> {
        let mut file = open_log_file(path)?;
        let len = file
            .metadata()
            .map_err(|source| AuditError::Open {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        let (last_seq, prev_hex) = match (len, newest_rotated(path)) {
            (0, Some(rotated)) => {
                let mut old = File::open(&rotated).map_err(|source| AuditError::Open {
                    path: rotated.clone(),
                    source,
                })?;
                let old_len = old
                    .metadata()
                    .map_err(|source| AuditError::Open {
                        path: rotated.clone(),
                        source,
                    })?
                    .len();
                read_tail(&mut old, old_len, &rotated)?
            }
            _ => read_tail(&mut file, len, path)?,
        };
        Ok(AuditLog {
            path: path.to_path_buf(),
            chain: Mutex::new(Chain::new(file, last_seq, prev_hex, len)),
            max_file_bytes,
            accepting: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Renames the full file aside and continues the chain in a new one; on failure
    /// the current file keeps growing (a warning, not a refused request).
    fn rotate(&self, chain: &mut Chain<File>) {
        let target = rotated_name(&self.path, newest_index(&self.path).map_or(1, |n| n + 1));
        let renamed = std::fs::rename(&self.path, &target);
        match renamed.and_then(|()| {
            open_log_file(&self.path).map_err(|e| match e {
                AuditError::Open { source, .. } => source,
                other => io::Error::other(other.to_string()),
            })
        }) {
            Ok(file) => {
                chain.sink = file;
                chain.len = 0;
                tracing::info!(rotated = %target.display(), "audit log rotated; the chain continues in a new file");
            }
            Err(e) => {
                tracing::warn!(error = %e, "audit log rotation failed; the file keeps growing");
            }
        }
    }

    /// The file this log writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `record` as the next line. The record must serialize to a JSON object
    /// without `seq` or `prev` fields; its fields follow `seq` and `prev` in its own
    /// order. Returns once the line is handed to the OS (not fsynced). On error nothing
    /// was added to the chain and the caller must not proceed as if it were recorded.
    pub fn append<T: Serialize + ?Sized>(&self, record: &T) -> Result<(), AuditError> {
        let mut encoded = Encoded::new(record, check_body)?;
        self.commit(&mut encoded)
    }

    /// Appends the STS's own [`Decision`] record: the same line as [`AuditLog::append`]
    /// without re-reading the serialized record, because its shape is fixed here (named
    /// fields, none of them `seq` or `prev`, strings that serde_json escapes). This is
    /// the token endpoint's hot path.
    pub fn append_decision(&self, record: &Decision<'_>) -> Result<(), AuditError> {
        let mut encoded = Encoded::new(record, |_| Ok(true))?;
        self.commit(&mut encoded)
    }

    /// Appends a shim's [`ProxiedCall`] record: like [`AuditLog::append_decision`], the
    /// shape is fixed here, so the serialized record is not re-read.
    pub fn append_call(&self, record: &ProxiedCall<'_>) -> Result<(), AuditError> {
        let mut encoded = Encoded::new(record, |_| Ok(true))?;
        self.commit(&mut encoded)
    }

    /// Appends a shim's [`StreamEnd`] record (fixed shape, as [`AuditLog::append_call`]).
    pub fn append_stream_end(&self, record: &StreamEnd<'_>) -> Result<(), AuditError> {
        let mut encoded = Encoded::new(record, |_| Ok(true))?;
        self.commit(&mut encoded)
    }

    /// Whether the last line handed to the log was written. A shim forwards a call only
    /// while this holds: its line is written after the upstream answers (it records the
    /// status), so an unwritable log must stop the next call before it reaches the
    /// upstream, not only withhold its answer. Any later successful append (a refusal's
    /// line, say) sets it again.
    pub fn accepting(&self) -> bool {
        self.accepting.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn commit(&self, encoded: &mut Encoded) -> Result<(), AuditError> {
        let result = match self.chain.lock() {
            Ok(mut chain) => {
                let committed = chain.commit(encoded, &self.path);
                if committed.is_ok() && self.max_file_bytes > 0 && chain.len >= self.max_file_bytes
                {
                    self.rotate(&mut chain);
                }
                committed
            }
            Err(_) => Err(AuditError::Poisoned),
        };
        self.accepting
            .store(result.is_ok(), std::sync::atomic::Ordering::Relaxed);
        result
    }

    /// Flushes written lines to the disk (`fdatasync`), for shutdown or a checkpoint.
    pub fn sync(&self) -> Result<(), AuditError> {
        let chain = self.chain.lock().map_err(|_| AuditError::Poisoned)?;
        chain.sink.sync_data().map_err(|source| AuditError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

/// A serialized record laid out for the line: `PREFIX` spare bytes, the record's JSON
/// object (starting with `{`), then `\n`. The header is later written over the spare
/// bytes and the `{`, so the line is built without copying the record.
struct Encoded {
    buf: Vec<u8>,
    /// The object has at least one field (so the header ends with a comma).
    has_fields: bool,
}

impl Encoded {
    fn new<T: Serialize + ?Sized>(
        record: &T,
        check: fn(&[u8]) -> Result<bool, AuditError>,
    ) -> Result<Self, AuditError> {
        let mut buf = Vec::with_capacity(PREFIX + 384);
        buf.resize(PREFIX, 0);
        serde_json::to_writer(&mut buf, record).map_err(|_| AuditError::Serialize)?;
        let has_fields = check(&buf[PREFIX..])?;
        buf.push(b'\n');
        // The line is never longer than the buffer (the header fits in the prefix).
        if buf.len() > MAX_LINE_BYTES {
            return Err(AuditError::TooLarge {
                max: MAX_LINE_BYTES,
            });
        }
        Ok(Self { buf, has_fields })
    }

    /// Writes the header for `seq`/`prev` in front of the record's fields and returns
    /// the complete line, trailing newline included.
    fn line(&mut self, seq: u64, prev_hex: &[u8; 64]) -> &[u8] {
        let mut header = [0u8; PREFIX + 1];
        let mut len = 0;
        let mut put = |bytes: &[u8]| {
            header[len..len + bytes.len()].copy_from_slice(bytes);
            len += bytes.len();
        };
        put(b"{\"seq\":");
        put(decimal(seq, &mut [0u8; 20]));
        put(b",\"prev\":\"");
        put(prev_hex);
        put(b"\"");
        if self.has_fields {
            put(b",");
        }
        // The header replaces the record's opening `{` at index PREFIX.
        let start = PREFIX + 1 - len;
        self.buf[start..=PREFIX].copy_from_slice(&header[..len]);
        &self.buf[start..]
    }
}

/// Checks a serialized record: a JSON object, no reserved top-level field, no raw line
/// break. Returns whether the object has any field.
fn check_body(body: &[u8]) -> Result<bool, AuditError> {
    if body.first() != Some(&b'{') {
        return Err(AuditError::NotAnObject);
    }
    // serde_json escapes line breaks inside strings; only a RawValue can carry one.
    if body.contains(&b'\n') {
        return Err(AuditError::LineBreak);
    }
    let keys: TopLevelKeys = serde_json::from_slice(body).map_err(|_| AuditError::Serialize)?;
    match keys.reserved {
        Some(field) => Err(AuditError::ReservedField { field }),
        None => Ok(keys.count > 0),
    }
}

/// Scans the top-level keys of a JSON object for `seq` and `prev`, skipping values.
struct TopLevelKeys {
    reserved: Option<&'static str>,
    count: usize,
}

impl<'de> Deserialize<'de> for TopLevelKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeysVisitor;
        impl<'de> Visitor<'de> for KeysVisitor {
            type Value = TopLevelKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevelKeys, A::Error> {
                let mut keys = TopLevelKeys {
                    reserved: None,
                    count: 0,
                };
                while let Some(Key(found)) = map.next_key::<Key>()? {
                    map.next_value::<IgnoredAny>()?;
                    keys.reserved = keys.reserved.or(found);
                    keys.count += 1;
                }
                Ok(keys)
            }
        }
        deserializer.deserialize_map(KeysVisitor)
    }
}

/// An object key: `Some` if it is reserved.
struct Key(Option<&'static str>);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(Key(match key {
                    "seq" => Some("seq"),
                    "prev" => Some("prev"),
                    _ => None,
                }))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Where lines go. `File` in production; tests substitute a sink that fails on demand.
trait Sink {
    /// Writes the whole line (one `write_all`).
    fn write_line(&mut self, line: &[u8]) -> io::Result<()>;
    /// Current length in bytes.
    fn current_len(&self) -> io::Result<u64>;
    /// Cuts the sink back to `len` bytes.
    fn cut_to(&mut self, len: u64) -> io::Result<()>;
}

impl Sink for File {
    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        self.write_all(line)
    }
    fn current_len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn cut_to(&mut self, len: u64) -> io::Result<()> {
        self.set_len(len)
    }
}

/// The chain state and the sink, guarded together by the log's mutex.
struct Chain<S> {
    sink: S,
    /// `seq` of the last line written (0: empty log).
    last_seq: u64,
    /// Hex SHA-256 of the last line written (the next line's `prev`).
    prev_hex: [u8; 64],
    /// Bytes of complete lines in the sink.
    len: u64,
    /// A failed write could not be rolled back: refuse every append.
    broken: bool,
}

impl<S: Sink> Chain<S> {
    fn new(sink: S, last_seq: u64, prev_hex: [u8; 64], len: u64) -> Self {
        Self {
            sink,
            last_seq,
            prev_hex,
            len,
            broken: false,
        }
    }

    /// Writes `encoded` as the next line. The chain advances only after the write
    /// succeeded; a failed write is rolled back to the last complete line.
    fn commit(&mut self, encoded: &mut Encoded, path: &Path) -> Result<(), AuditError> {
        if self.broken {
            return Err(AuditError::Broken {
                path: path.to_path_buf(),
            });
        }
        let seq = self
            .last_seq
            .checked_add(1)
            .ok_or_else(|| AuditError::Corrupt {
                path: path.to_path_buf(),
                reason: "sequence number exhausted",
            })?;
        let line = encoded.line(seq, &self.prev_hex);
        let hash = sha256_hex(line.strip_suffix(b"\n").unwrap_or(line));
        match self.sink.write_line(line) {
            Ok(()) => {
                self.last_seq = seq;
                self.prev_hex = hash;
                self.len += line.len() as u64;
                Ok(())
            }
            Err(source) => {
                self.roll_back(path);
                Err(AuditError::Write {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }

    /// Removes whatever a failed write left after the last complete line, or marks the
    /// log broken if that cannot be done safely.
    fn roll_back(&mut self, path: &Path) {
        let result = match self.sink.current_len() {
            // Shorter than what we wrote: someone else truncated the file; cutting
            // "back" would extend it with zeros.
            Ok(current) if current < self.len => Err(None),
            Ok(current) if current == self.len => Ok(()),
            Ok(_) => self.sink.cut_to(self.len).map_err(Some),
            Err(error) => Err(Some(error)),
        };
        match result {
            Ok(()) => tracing::warn!(
                path = %path.display(),
                "audit write failed; chain not advanced"
            ),
            Err(error) => {
                self.broken = true;
                tracing::error!(
                    path = %path.display(),
                    error = ?error,
                    "audit write failed and could not be rolled back; refusing further appends"
                );
            }
        }
    }
}

/// Verifies the whole log at `path`, streaming it line by line: every line a JSON
/// object with `seq` one more than the previous (1 first) and `prev` the SHA-256 of the
/// previous line (64 zeros first), every line ending in a newline. An empty file
/// verifies with 0 lines. See the module documentation for what this cannot detect.
pub fn verify(path: &Path) -> Result<VerifyReport, AuditError> {
    verify_files(&[path], false)
}

/// Verifies one chain spread over `paths` (oldest first, e.g. `audit.log.1
/// audit.log.2 audit.log`): each file's first line must continue the previous file's
/// last, and the chain must start at `seq` 1, so lines deleted from its head are
/// caught. With `continued`, the first file may continue an earlier one that was
/// rotated away (its first `seq` above 1); the report then says which hash that
/// earlier file must end with, an anchor to check elsewhere.
pub fn verify_files<P: AsRef<Path>>(
    paths: &[P],
    continued: bool,
) -> Result<VerifyReport, AuditError> {
    let mut state: Option<Link> = None;
    let mut report = VerifyReport {
        lines: 0,
        first_seq: 1,
        continues: None,
        last_hash: String::new(),
    };
    for path in paths {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| AuditError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let reader = BufReader::with_capacity(64 * 1024, file);
        let (lines, last) = verify_stream(reader, path, &mut state, &mut report, continued)?;
        report.lines += lines;
        if let Some(last) = last {
            state = Some(last);
        }
    }
    let prev_hex = state.map_or(GENESIS, |(_, hash)| hash);
    report.last_hash = prev_hex.iter().map(|&b| char::from(b)).collect();
    Ok(report)
}

/// The `seq` and hex SHA-256 of the last line verified.
type Link = (u64, [u8; 64]);

/// Verifies one file's lines, continuing `state` (the last link so far, if any line
/// came before). Returns the lines read and the new last link.
fn verify_stream<R: BufRead>(
    mut reader: R,
    path: &Path,
    state: &mut Option<Link>,
    report: &mut VerifyReport,
    continued: bool,
) -> Result<(u64, Option<Link>), AuditError> {
    let mut buf = Vec::with_capacity(1024);
    let mut last = *state;
    let mut lines = 0u64;
    loop {
        buf.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES as u64)
            .read_until(b'\n', &mut buf)
            .map_err(|source| AuditError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        if read == 0 {
            break;
        }
        lines += 1;
        let broken = |reason| AuditError::BrokenLink {
            path: path.to_path_buf(),
            line: lines,
            reason,
        };
        let Some(line) = buf.strip_suffix(b"\n") else {
            return Err(broken(if buf.len() >= MAX_LINE_BYTES {
                "line too long"
            } else {
                "no trailing newline (torn write)"
            }));
        };
        let head = parse_head(line).map_err(broken)?;
        match last {
            Some((seq, prev_hex)) => {
                if Some(head.seq) != seq.checked_add(1) {
                    return Err(broken("seq is not the previous seq plus one"));
                }
                if head.prev.as_bytes() != prev_hex {
                    return Err(broken("prev is not the hash of the previous line"));
                }
            }
            // The very first line of the chain: seq 1 from the genesis hash, or a
            // continuation of an earlier file that was not given.
            None if head.seq == 1 => {
                if head.prev.as_bytes() != GENESIS {
                    return Err(broken("prev is not the hash of the previous line"));
                }
            }
            None => {
                if !continued || head.seq == 0 || head.prev.len() != 64 {
                    return Err(broken(
                        "seq does not start at 1 (a continued file needs --continued)",
                    ));
                }
                report.first_seq = head.seq;
                report.continues = Some(head.prev.to_string());
            }
        }
        last = Some((head.seq, sha256_hex(line)));
    }
    Ok((lines, last))
}

/// The chain fields of a line; other fields are skipped (but must be valid JSON).
#[derive(Deserialize)]
struct Head<'a> {
    seq: u64,
    prev: &'a str,
}

fn parse_head(line: &[u8]) -> Result<Head<'_>, &'static str> {
    // A derived struct would also accept a JSON array; insist on an object.
    if line.first() != Some(&b'{') {
        return Err("not a JSON object");
    }
    serde_json::from_slice(line)
        .map_err(|_| "not a JSON object with a numeric seq and a string prev")
}

/// Reads the last line of a log of `len` bytes backwards in chunks and returns its
/// `seq` and hash.
fn read_tail(file: &mut File, len: u64, path: &Path) -> Result<(u64, [u8; 64]), AuditError> {
    if len == 0 {
        return Ok((0, GENESIS));
    }
    let corrupt = |reason| AuditError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let read_error = |source| AuditError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut read_at = |start: u64, buf: &mut [u8]| -> Result<(), AuditError> {
        file.seek(SeekFrom::Start(start)).map_err(read_error)?;
        file.read_exact(buf).map_err(read_error)
    };

    let mut last = [0u8; 1];
    read_at(len - 1, &mut last)?;
    if last != *b"\n" {
        return Err(corrupt("last line has no trailing newline (torn write)"));
    }
    // Chunks of the last line, from its end backwards.
    let line_end = len - 1;
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut pos = line_end;
    while pos > 0 {
        if line_end - pos >= MAX_LINE_BYTES as u64 {
            return Err(corrupt("last line too long"));
        }
        let start = pos.saturating_sub(TAIL_CHUNK as u64);
        let mut chunk = vec![0u8; (pos - start) as usize];
        read_at(start, &mut chunk)?;
        if let Some(newline) = chunk.iter().rposition(|&b| b == b'\n') {
            chunks.push(chunk.split_off(newline + 1));
            break;
        }
        chunks.push(chunk);
        pos = start;
    }
    let line: Vec<u8> = chunks.into_iter().rev().flatten().collect();
    if line.len() >= MAX_LINE_BYTES {
        return Err(corrupt("last line too long"));
    }
    let head = parse_head(&line).map_err(|_| corrupt("last line is not an audit record"))?;
    if head.seq == 0 {
        return Err(corrupt("last line has seq 0"));
    }
    Ok((head.seq, sha256_hex(&line)))
}

fn sha256_hex(bytes: &[u8]) -> [u8; 64] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = digest::digest(&digest::SHA256, bytes);
    let mut out = [0u8; 64];
    for (pair, byte) in out.chunks_exact_mut(2).zip(digest.as_ref()) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
    out
}

/// Formats `n` in decimal into the end of `buf` and returns the digits.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[start..]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    #[derive(Serialize)]
    struct Rec {
        n: u64,
        note: &'static str,
    }

    fn temp_log() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        (dir, path)
    }

    fn write_records(path: &Path, count: u64) {
        let log = AuditLog::open(path).unwrap();
        for n in 1..=count {
            log.append(&Rec { n, note: "ok" }).unwrap();
        }
    }

    fn read_lines(path: &Path) -> Vec<Vec<u8>> {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(bytes.last(), Some(&b'\n'));
        bytes[..bytes.len() - 1]
            .split(|&b| b == b'\n')
            .map(<[u8]>::to_vec)
            .collect()
    }

    fn write_lines(path: &Path, lines: &[Vec<u8>]) {
        let mut bytes = lines.join(&b'\n');
        bytes.push(b'\n');
        std::fs::write(path, bytes).unwrap();
    }

    fn hex_of(line: &[u8]) -> String {
        hex::encode(digest::digest(&digest::SHA256, line))
    }

    fn assert_broken_at(path: &Path, expected_line: u64, expected_reason: &str) {
        match verify(path) {
            Err(AuditError::BrokenLink { line, reason, .. }) => {
                assert_eq!(line, expected_line, "reason: {reason}");
                assert!(reason.contains(expected_reason), "reason: {reason}");
            }
            other => panic!("expected a broken link at line {expected_line}, got {other:?}"),
        }
    }

    #[test]
    fn round_trip_and_line_format() {
        let (_dir, path) = temp_log();
        let log = AuditLog::open(&path).unwrap();
        log.append(&Rec { n: 1, note: "a" }).unwrap();
        log.append(&Decision::now(Outcome::Deny, "invalid_subject_token"))
            .unwrap();
        let mut map = BTreeMap::new();
        map.insert("upstream", "https://api.example.com/x");
        log.append(&map).unwrap();
        log.append(&serde_json::json!({})).unwrap();
        log.append(&Rec { n: 5, note: "e" }).unwrap();
        log.sync().unwrap();

        let report = verify(&path).unwrap();
        assert_eq!(report.lines, 5);
        let lines = read_lines(&path);
        assert_eq!(lines.len(), 5);
        assert_eq!(report.last_hash, hex_of(&lines[4]));

        let first = String::from_utf8(lines[0].clone()).unwrap();
        assert_eq!(
            first,
            format!(
                r#"{{"seq":1,"prev":"{}","n":1,"note":"a"}}"#,
                "0".repeat(64)
            )
        );
        let fourth = String::from_utf8(lines[3].clone()).unwrap();
        assert_eq!(
            fourth,
            format!(r#"{{"seq":4,"prev":"{}"}}"#, hex_of(&lines[2]))
        );
        for (i, line) in lines.iter().enumerate() {
            let value: serde_json::Value = serde_json::from_slice(line).unwrap();
            assert_eq!(value["seq"], i as u64 + 1);
            let expected_prev = if i == 0 {
                "0".repeat(64)
            } else {
                hex_of(&lines[i - 1])
            };
            assert_eq!(value["prev"], expected_prev.as_str());
        }
        let decision: serde_json::Value = serde_json::from_slice(&lines[1]).unwrap();
        assert_eq!(decision["decision"], "deny");
        assert_eq!(decision["subject"], serde_json::Value::Null);
    }

    #[test]
    fn decision_schema_is_fixed() {
        let decision = Decision {
            time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            trust: Some("k8s"),
            subject: Some("system:serviceaccount:ns:sa"),
            action: Some("github.issues.read"),
            audience: Some("https://api.github.com"),
            jti: Some("j1"),
            kid: Some("k1"),
            expires_at: Some(1_700_000_300),
            grant: Some("jwt-bearer"),
            ..Decision::now(Outcome::Allow, "issued")
        };
        assert_eq!(
            serde_json::to_string(&decision).unwrap(),
            r#"{"time":"2023-11-14T22:13:20.123Z","trust":"k8s","subject":"system:serviceaccount:ns:sa","actor":null,"action":"github.issues.read","audience":"https://api.github.com","decision":"allow","reason":"issued","jti":"j1","kid":"k1","expires_at":1700000300,"grant":"jwt-bearer"}"#
        );
        let deny = Decision {
            time: UNIX_EPOCH,
            ..Decision::now(Outcome::Deny, "rate_limited")
        };
        assert_eq!(
            serde_json::to_string(&deny).unwrap(),
            r#"{"time":"1970-01-01T00:00:00.000Z","trust":null,"subject":null,"actor":null,"action":null,"audience":null,"decision":"deny","reason":"rate_limited","jti":null,"kid":null,"expires_at":null,"grant":null}"#
        );
    }

    #[test]
    fn append_decision_writes_the_same_line_as_append() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.log"), dir.path().join("b.log"));
        let (la, lb) = (AuditLog::open(&a).unwrap(), AuditLog::open(&b).unwrap());
        let quote = "x\"}\n{\"seq\":99";
        for subject in [Some("alice"), Some(quote), None] {
            let d = Decision {
                time: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
                subject,
                ..Decision::now(Outcome::Deny, "invalid_scope")
            };
            la.append(&d).unwrap();
            lb.append_decision(&d).unwrap();
        }
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert_eq!(verify(&b).unwrap().lines, 3);
    }

    #[test]
    fn append_stream_end_writes_the_same_line_as_append_and_chains() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.log"), dir.path().join("b.log"));
        let (la, lb) = (AuditLog::open(&a).unwrap(), AuditLog::open(&b).unwrap());
        for jti in [Some("j1"), Some("x\"}\n{\"seq\":99"), None] {
            let end = StreamEnd {
                time: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
                shim: "https://shim.example",
                event: "stream_end",
                stream: "00112233aabbccdd",
                action: Some("mcp.tools.call"),
                jti,
                ended: "idle_timeout",
                bytes_relayed: 1234,
                bytes_scrubbed: 51,
                duration_ms: 700,
            };
            la.append(&end).unwrap();
            lb.append_stream_end(&end).unwrap();
        }
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert_eq!(verify(&b).unwrap().lines, 3);
    }

    #[test]
    fn append_call_writes_the_same_line_as_append() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.log"), dir.path().join("b.log"));
        let (la, lb) = (AuditLog::open(&a).unwrap(), AuditLog::open(&b).unwrap());
        let quote = "x\"}\n{\"seq\":99";
        for subject in [Some("alice"), Some(quote), None] {
            let call = ProxiedCall {
                time: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
                shim: "https://shim.example",
                subject,
                issuer: Some("https://sts.example"),
                client_id: Some("k8s:agent"),
                actor: None,
                act: None,
                action: Some("docs.read"),
                jti: Some("j1"),
                method: "GET",
                path: Some("/docs/{page}"),
                decision: Outcome::Allow,
                reason: "proxied",
                upstream_status: Some(200),
                bytes_scrubbed: 7,
                stream: None,
            };
            la.append(&call).unwrap();
            lb.append_call(&call).unwrap();
        }
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert_eq!(verify(&b).unwrap().lines, 3);
    }

    #[test]
    fn time_out_of_range_is_an_error_not_a_panic() {
        let (_dir, path) = temp_log();
        let log = AuditLog::open(&path).unwrap();
        let before_epoch = Decision {
            time: UNIX_EPOCH - Duration::from_secs(1),
            ..Decision::now(Outcome::Deny, "internal")
        };
        assert!(matches!(
            log.append(&before_epoch),
            Err(AuditError::Serialize)
        ));
        let after_9999 = Decision {
            time: UNIX_EPOCH + Duration::from_secs(RFC3339_END_SECS),
            ..Decision::now(Outcome::Deny, "internal")
        };
        assert!(matches!(
            log.append(&after_9999),
            Err(AuditError::Serialize)
        ));
        assert_eq!(verify(&path).unwrap().lines, 0);
    }

    #[test]
    fn reopen_resumes_seq_and_chain() {
        let (_dir, path) = temp_log();
        write_records(&path, 3);
        write_records(&path, 2);
        let report = verify(&path).unwrap();
        assert_eq!(report.lines, 5);
        let lines = read_lines(&path);
        let fourth: serde_json::Value = serde_json::from_slice(&lines[3]).unwrap();
        assert_eq!(fourth["seq"], 4);
        assert_eq!(fourth["prev"], hex_of(&lines[2]).as_str());
    }

    #[test]
    fn reopen_of_an_empty_log_starts_at_one() {
        let (_dir, path) = temp_log();
        drop(AuditLog::open(&path).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        write_records(&path, 1);
        let lines = read_lines(&path);
        assert!(
            lines[0].starts_with(format!(r#"{{"seq":1,"prev":"{}""#, "0".repeat(64)).as_bytes())
        );
        assert_eq!(verify(&path).unwrap().lines, 1);
    }

    #[test]
    fn reopen_reads_a_last_line_longer_than_a_chunk() {
        let (_dir, path) = temp_log();
        let long = "y".repeat(3 * TAIL_CHUNK + 17);
        {
            let log = AuditLog::open(&path).unwrap();
            // Only line: the backwards scan reaches the start of the file.
            log.append(&BTreeMap::from([("long", long.as_str())]))
                .unwrap();
        }
        write_records(&path, 1);
        {
            let log = AuditLog::open(&path).unwrap();
            // A long last line preceded by other lines.
            log.append(&BTreeMap::from([("long", long.as_str())]))
                .unwrap();
        }
        write_records(&path, 1);
        assert_eq!(verify(&path).unwrap().lines, 4);
    }

    #[test]
    fn open_does_not_create_directories() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("audit.jsonl");
        assert!(matches!(
            AuditLog::open(&path),
            Err(AuditError::Open { .. })
        ));
    }

    #[test]
    fn open_refuses_a_corrupt_tail() {
        let (_dir, path) = temp_log();
        let cases: &[&[u8]] = &[
            b"{\"seq\":1,\"prev\":\"00\"}",       // torn: no newline
            b"not json\n",                        // garbage
            b"{\"prev\":\"00\"}\n",               // no seq
            b"{\"seq\":\"1\",\"prev\":\"00\"}\n", // seq not numeric
            b"[1,\"00\"]\n",                      // not an object
            b"{\"seq\":0,\"prev\":\"00\"}\n",     // seq 0
            b"\n",                                // empty last line
        ];
        for case in cases {
            std::fs::write(&path, case).unwrap();
            match AuditLog::open(&path) {
                Err(AuditError::Corrupt { path: p, .. }) => assert_eq!(p, path),
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(case)),
            }
        }
    }

    #[test]
    fn open_refuses_an_overlong_last_line() {
        let (_dir, path) = temp_log();
        let mut bytes = vec![b'x'; MAX_LINE_BYTES + 10];
        bytes.push(b'\n');
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            AuditLog::open(&path),
            Err(AuditError::Corrupt {
                reason: "last line too long",
                ..
            })
        ));
        assert_broken_at(&path, 1, "too long");
    }

    #[test]
    fn empty_file_verifies_with_zero_lines() {
        let (_dir, path) = temp_log();
        std::fs::write(&path, b"").unwrap();
        let report = verify(&path).unwrap();
        assert_eq!(report.lines, 0);
        assert_eq!(report.last_hash, "0".repeat(64));
    }

    #[test]
    fn verify_missing_file_is_an_open_error() {
        let (_dir, path) = temp_log();
        assert!(matches!(verify(&path), Err(AuditError::Open { .. })));
    }

    #[test]
    fn tamper_edit_a_field_breaks_the_next_link() {
        let (_dir, path) = tampered(|lines| {
            let edited = String::from_utf8(lines[1].clone())
                .unwrap()
                .replace("\"n\":2", "\"n\":7");
            assert_ne!(edited.as_bytes(), lines[1]);
            lines[1] = edited.into_bytes();
        });
        // Line 2 itself still links to line 1; line 3 no longer links to line 2.
        assert_broken_at(&path, 3, "prev");
    }

    /// A log of five records, with `edit` applied to its lines.
    fn tampered(edit: impl FnOnce(&mut Vec<Vec<u8>>)) -> (tempfile::TempDir, std::path::PathBuf) {
        let (dir, path) = temp_log();
        write_records(&path, 5);
        let mut lines = read_lines(&path);
        edit(&mut lines);
        write_lines(&path, &lines);
        (dir, path)
    }

    #[test]
    fn tamper_edit_seq_is_caught_on_that_line() {
        let (_dir, path) = tampered(|lines| {
            lines[1] = String::from_utf8(lines[1].clone())
                .unwrap()
                .replace("\"seq\":2", "\"seq\":9")
                .into_bytes();
        });
        assert_broken_at(&path, 2, "seq");
    }

    #[test]
    fn tamper_delete_a_middle_line() {
        let (_dir, path) = tampered(|lines| {
            lines.remove(2);
        });
        assert_broken_at(&path, 3, "seq");
    }

    #[test]
    fn tamper_swap_two_lines() {
        let (_dir, path) = tampered(|lines| {
            lines.swap(1, 2);
        });
        assert_broken_at(&path, 2, "seq");
    }

    #[test]
    fn tamper_insert_a_forged_line() {
        let (_dir, path) = tampered(|lines| {
            // A well-formed forgery that links correctly to line 2 ...
            let forged = format!(
                r#"{{"seq":3,"prev":"{}","n":99,"note":"forged"}}"#,
                hex_of(&lines[1])
            );
            lines.insert(2, forged.into_bytes());
        });
        // ... is exposed by the genuine line after it.
        assert_broken_at(&path, 4, "seq");

        // Renumbering the genuine line does not help: its prev no longer matches.
        let mut lines = read_lines(&path);
        lines[3] = String::from_utf8(lines[3].clone())
            .unwrap()
            .replace("\"seq\":3", "\"seq\":4")
            .into_bytes();
        write_lines(&path, &lines);
        assert_broken_at(&path, 4, "prev");
    }

    #[test]
    fn tamper_truncate_mid_line() {
        let (_dir, path) = temp_log();
        write_records(&path, 5);
        let bytes = std::fs::read(&path).unwrap();
        let lines = read_lines(&path);
        let fourth_start: usize = lines[..3].iter().map(|l| l.len() + 1).sum();
        std::fs::write(&path, &bytes[..fourth_start + 10]).unwrap();
        assert_broken_at(&path, 4, "torn");
        assert!(matches!(
            AuditLog::open(&path),
            Err(AuditError::Corrupt { .. })
        ));
    }

    #[test]
    fn tamper_lines_that_are_not_records() {
        let (_dir, path) = temp_log();
        write_records(&path, 2);
        let mut lines = read_lines(&path);
        lines.insert(1, b"[2,\"x\"]".to_vec());
        write_lines(&path, &lines);
        assert_broken_at(&path, 2, "not a JSON object");

        let mut lines = read_lines(&path);
        lines[1] = b"{\"seq\":2,\"prev\":\"x\",\"n\":}".to_vec();
        write_lines(&path, &lines);
        assert_broken_at(&path, 2, "not a JSON object");

        // Duplicate keys could hide a second seq; serde rejects them.
        let (_dir2, other) = temp_log();
        std::fs::write(
            &other,
            format!("{{\"seq\":1,\"seq\":1,\"prev\":\"{}\"}}\n", "0".repeat(64)),
        )
        .unwrap();
        assert_broken_at(&other, 1, "not a JSON object");

        // A first line whose prev is not the genesis value.
        std::fs::write(
            &other,
            format!("{{\"seq\":1,\"prev\":\"{}\"}}\n", "1".repeat(64)),
        )
        .unwrap();
        assert_broken_at(&other, 1, "prev");
    }

    /// The limits the module documentation admits, pinned so they stay documented.
    #[test]
    fn tail_truncation_and_last_line_edits_need_an_external_anchor() {
        let (_dir, path) = temp_log();
        write_records(&path, 5);
        let anchor = verify(&path).unwrap();
        let lines = read_lines(&path);

        write_lines(&path, &lines[..3]);
        let truncated = verify(&path).unwrap();
        assert_eq!(truncated.lines, 3);
        assert_ne!(truncated, anchor);

        let mut edited = lines.clone();
        edited[4] = String::from_utf8(edited[4].clone())
            .unwrap()
            .replace("\"n\":5", "\"n\":6")
            .into_bytes();
        write_lines(&path, &edited);
        let report = verify(&path).unwrap();
        assert_eq!(report.lines, 5);
        assert_ne!(report.last_hash, anchor.last_hash);
    }

    #[test]
    fn field_values_cannot_split_or_forge_lines() {
        let (_dir, path) = temp_log();
        let log = AuditLog::open(&path).unwrap();
        let forged_tail = format!("x\"}}\n{{\"seq\":99,\"prev\":\"{}\"}}\n", "0".repeat(64));
        let payloads = [
            forged_tail.as_str(),
            "x\"}\n{\"seq\":99",
            "\r\n\u{2028}\u{0}\\\"",
            "\",\"seq\":1,\"x\":\"",
        ];
        for payload in payloads {
            let decision = Decision {
                subject: Some(payload),
                audience: Some(payload),
                ..Decision::now(Outcome::Deny, "invalid_subject_token")
            };
            log.append(&decision).unwrap();
            // A key is escaped the same way.
            log.append(&BTreeMap::from([(payload, payload)])).unwrap();
        }
        let report = verify(&path).unwrap();
        assert_eq!(report.lines, 2 * payloads.len() as u64);
        let lines = read_lines(&path);
        assert_eq!(lines.len(), 2 * payloads.len());
        for (i, payload) in payloads.iter().enumerate() {
            let decision: serde_json::Value = serde_json::from_slice(&lines[2 * i]).unwrap();
            assert_eq!(decision["seq"], 2 * i as u64 + 1);
            assert_eq!(decision["subject"], *payload);
            let map: serde_json::Value = serde_json::from_slice(&lines[2 * i + 1]).unwrap();
            assert_eq!(map[*payload], *payload);
        }
    }

    #[test]
    fn raw_line_breaks_are_refused() {
        // Only serde_json's RawValue can emit one; check the guard directly.
        assert!(matches!(
            check_body(b"{\"a\":\n1}"),
            Err(AuditError::LineBreak)
        ));
        assert!(check_body(b"{\"a\":1}").unwrap());
        // Emptiness is decided by parsing, not by the byte length, so a raw `{ }`
        // (whitespace) still gets a valid header.
        assert!(!check_body(b"{ }").unwrap());
        assert!(!check_body(b"{}").unwrap());
        let mut raw = vec![0u8; PREFIX];
        raw.extend_from_slice(b"{ }\n");
        let mut encoded = Encoded {
            buf: raw,
            has_fields: false,
        };
        let line = encoded.line(7, &GENESIS);
        let value: serde_json::Value = serde_json::from_slice(line).unwrap();
        assert_eq!(value["seq"], 7);
    }

    #[test]
    fn reserved_fields_are_refused() {
        #[derive(Serialize)]
        struct WithSeq {
            seq: u64,
        }
        #[derive(Serialize)]
        struct WithPrev<'a> {
            a: u8,
            prev: &'a str,
        }
        #[derive(Serialize)]
        struct Nested {
            inner: WithSeq,
        }
        let (_dir, path) = temp_log();
        let log = AuditLog::open(&path).unwrap();
        assert!(matches!(
            log.append(&WithSeq { seq: 99 }),
            Err(AuditError::ReservedField { field: "seq" })
        ));
        assert!(matches!(
            log.append(&WithPrev { a: 1, prev: "x" }),
            Err(AuditError::ReservedField { field: "prev" })
        ));
        assert!(matches!(
            log.append(&BTreeMap::from([("prev", 1)])),
            Err(AuditError::ReservedField { field: "prev" })
        ));
        assert_eq!(verify(&path).unwrap().lines, 0);
        // Only top-level names are reserved.
        log.append(&Nested {
            inner: WithSeq { seq: 5 },
        })
        .unwrap();
        assert_eq!(verify(&path).unwrap().lines, 1);
    }

    #[test]
    fn non_objects_are_refused() {
        #[derive(Serialize)]
        struct Unit;
        let (_dir, path) = temp_log();
        let log = AuditLog::open(&path).unwrap();
        assert!(matches!(log.append(&42), Err(AuditError::NotAnObject)));
        assert!(matches!(log.append("text"), Err(AuditError::NotAnObject)));
        assert!(matches!(log.append(&[1, 2]), Err(AuditError::NotAnObject)));
        assert!(matches!(
            log.append(&None::<u8>),
            Err(AuditError::NotAnObject)
        ));
        assert!(matches!(log.append(&Unit), Err(AuditError::NotAnObject)));
        // Maps with non-string keys cannot be JSON objects.
        assert!(matches!(
            log.append(&BTreeMap::from([((1, 2), 3)])),
            Err(AuditError::Serialize)
        ));
        assert_eq!(verify(&path).unwrap().lines, 0);
    }

    #[test]
    fn oversized_records_are_refused() {
        let (_dir, path) = temp_log();
        let log = AuditLog::open(&path).unwrap();
        let big = "z".repeat(MAX_LINE_BYTES);
        assert!(matches!(
            log.append(&BTreeMap::from([("big", big.as_str())])),
            Err(AuditError::TooLarge { .. })
        ));
        // Just under the cap is written, and reopens and verifies.
        let fits = "z".repeat(MAX_LINE_BYTES - PREFIX - 20);
        log.append(&BTreeMap::from([("fits", fits.as_str())]))
            .unwrap();
        drop(log);
        write_records(&path, 1);
        assert_eq!(verify(&path).unwrap().lines, 2);
    }

    #[test]
    fn concurrent_appends_keep_the_chain() {
        let (_dir, path) = temp_log();
        let log = AuditLog::open(&path).unwrap();
        std::thread::scope(|scope| {
            for thread in 0..8u64 {
                let log = &log;
                scope.spawn(move || {
                    for i in 0..500u64 {
                        log.append(&Rec {
                            n: thread * 1000 + i,
                            note: "concurrent",
                        })
                        .unwrap();
                    }
                });
            }
        });
        assert_eq!(verify(&path).unwrap().lines, 4000);
        let mut seen: Vec<u64> = read_lines(&path)
            .iter()
            .map(|line| {
                let value: serde_json::Value = serde_json::from_slice(line).unwrap();
                value["n"].as_u64().unwrap()
            })
            .collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 4000);
    }

    #[test]
    fn audit_log_is_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<AuditLog>();
    }

    /// A sink that can fail a write after writing part of the line, and fail the
    /// rollback, to test the chain's commit logic (the same code `AuditLog` runs with a
    /// `File`).
    #[derive(Default)]
    struct FlakySink {
        bytes: Vec<u8>,
        fail_next_after: Option<usize>,
        cut_fails: bool,
    }

    impl Sink for FlakySink {
        fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
            if let Some(written) = self.fail_next_after.take() {
                self.bytes
                    .extend_from_slice(&line[..written.min(line.len())]);
                return Err(io::Error::other("disk full"));
            }
            self.bytes.extend_from_slice(line);
            Ok(())
        }
        fn current_len(&self) -> io::Result<u64> {
            Ok(self.bytes.len() as u64)
        }
        fn cut_to(&mut self, len: u64) -> io::Result<()> {
            if self.cut_fails {
                return Err(io::Error::other("cannot truncate"));
            }
            self.bytes.truncate(usize::try_from(len).unwrap());
            Ok(())
        }
    }

    fn commit(chain: &mut Chain<FlakySink>, n: u64) -> Result<(), AuditError> {
        let mut encoded = Encoded::new(&Rec { n, note: "flaky" }, check_body)?;
        chain.commit(&mut encoded, Path::new("test.jsonl"))
    }

    #[test]
    fn failed_write_does_not_advance_the_chain() {
        let mut chain = Chain::new(FlakySink::default(), 0, GENESIS, 0);
        commit(&mut chain, 1).unwrap();
        commit(&mut chain, 2).unwrap();
        let (seq, prev, len) = (chain.last_seq, chain.prev_hex, chain.len);

        chain.sink.fail_next_after = Some(10);
        assert!(matches!(
            commit(&mut chain, 3),
            Err(AuditError::Write { .. })
        ));
        assert_eq!(
            (chain.last_seq, chain.prev_hex, chain.len),
            (seq, prev, len)
        );
        assert_eq!(chain.sink.bytes.len() as u64, len, "partial line removed");

        commit(&mut chain, 4).unwrap();
        let mut report = VerifyReport {
            lines: 0,
            first_seq: 1,
            continues: None,
            last_hash: String::new(),
        };
        let (lines, _) = verify_stream(
            chain.sink.bytes.as_slice(),
            Path::new("test.jsonl"),
            &mut None,
            &mut report,
            false,
        )
        .unwrap();
        assert_eq!(lines, 3);
        let text = String::from_utf8(chain.sink.bytes.clone()).unwrap();
        let third: serde_json::Value = serde_json::from_str(text.lines().nth(2).unwrap()).unwrap();
        assert_eq!(third["seq"], 3);
        assert_eq!(third["n"], 4);
    }

    #[test]
    fn failed_rollback_refuses_further_appends() {
        let mut chain = Chain::new(FlakySink::default(), 0, GENESIS, 0);
        commit(&mut chain, 1).unwrap();
        chain.sink.fail_next_after = Some(10);
        chain.sink.cut_fails = true;
        assert!(matches!(
            commit(&mut chain, 2),
            Err(AuditError::Write { .. })
        ));
        let len = chain.sink.bytes.len();
        assert!(matches!(
            commit(&mut chain, 3),
            Err(AuditError::Broken { .. })
        ));
        assert_eq!(chain.sink.bytes.len(), len, "nothing written once broken");
    }

    #[test]
    fn failed_write_after_external_truncation_does_not_extend_the_file() {
        let mut chain = Chain::new(FlakySink::default(), 0, GENESIS, 0);
        commit(&mut chain, 1).unwrap();
        chain.sink.bytes.clear(); // e.g. logrotate copytruncate
        chain.sink.fail_next_after = Some(0);
        assert!(commit(&mut chain, 2).is_err());
        assert!(chain.sink.bytes.is_empty());
        assert!(matches!(
            commit(&mut chain, 3),
            Err(AuditError::Broken { .. })
        ));
    }

    /// The same with a real `File`: /dev/full fails every write with ENOSPC and
    /// accepts nothing, so there is nothing to roll back and the chain stays put.
    #[cfg(target_os = "linux")]
    #[test]
    fn real_write_failure_on_dev_full() {
        let path = Path::new("/dev/full");
        let Ok(log) = AuditLog::open(path) else {
            return; // not available in this sandbox
        };
        for n in 1..=2 {
            match log.append(&Rec { n, note: "x" }) {
                Err(AuditError::Write { source, .. }) => {
                    assert_eq!(source.raw_os_error(), Some(28)) // ENOSPC
                }
                other => panic!("{other:?}"),
            }
            let chain = log.chain.lock().unwrap();
            assert_eq!(
                (chain.last_seq, chain.prev_hex, chain.broken),
                (0, GENESIS, false)
            );
        }
    }

    #[test]
    fn errors_do_not_echo_record_contents() {
        struct Hostile;
        impl Serialize for Hostile {
            fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(S::Error::custom("SECRET-VALUE"))
            }
        }
        let (_dir, path) = temp_log();
        let log = AuditLog::open(&path).unwrap();
        let mut messages = vec![log.append(&Hostile).unwrap_err().to_string()];

        std::fs::write(&path, "SECRET-VALUE\n").unwrap();
        messages.push(verify(&path).unwrap_err().to_string());
        messages.push(AuditLog::open(&path).unwrap_err().to_string());

        std::fs::write(&path, "{\"seq\":1,\"prev\":\"SECRET-VALUE\"}\n").unwrap();
        messages.push(verify(&path).unwrap_err().to_string());

        std::fs::write(&path, "{\"seq\":\"SECRET-VALUE\",\"prev\":\"\"}\n").unwrap();
        messages.push(verify(&path).unwrap_err().to_string());
        messages.push(AuditLog::open(&path).unwrap_err().to_string());

        for message in messages {
            assert!(!message.contains("SECRET"), "{message}");
        }
    }

    #[test]
    fn debug_prints_the_path_only() {
        let (_dir, path) = temp_log();
        let log = AuditLog::open(&path).unwrap();
        log.append(&Rec {
            n: 1,
            note: "hidden",
        })
        .unwrap();
        let debug = format!("{log:?}");
        assert!(debug.contains("audit.jsonl"), "{debug}");
        assert!(
            !debug.contains("seq") && !debug.contains("hidden"),
            "{debug}"
        );
    }

    #[test]
    fn decimal_formats_the_extremes() {
        assert_eq!(decimal(0, &mut [0; 20]), b"0");
        assert_eq!(decimal(1, &mut [0; 20]), b"1");
        assert_eq!(
            decimal(u64::MAX, &mut [0; 20]),
            u64::MAX.to_string().as_bytes()
        );
    }

    #[test]
    fn sequence_exhaustion_is_an_error() {
        let mut chain = Chain::new(FlakySink::default(), u64::MAX, GENESIS, 0);
        assert!(matches!(
            commit(&mut chain, 1),
            Err(AuditError::Corrupt { .. })
        ));
        assert!(chain.sink.bytes.is_empty());
    }

    #[test]
    fn anonymous_refusals_write_one_line_per_reason_per_window() {
        let (_dir, path) = temp_log();
        let log = AuditLog::open(&path).unwrap();
        let window = RefusalWindow::default();
        let mut written = 0;
        for i in 0..10_000 {
            let reason = if i % 2 == 0 {
                "missing_token"
            } else {
                "bad_signature"
            };
            if window.admit(reason) {
                log.append(&serde_json::json!({"decision": "deny", "reason": reason}))
                    .unwrap();
                written += 1;
            }
        }
        assert_eq!(written, 2, "the first of each reason only");
        assert_eq!(window.flush(&log).unwrap(), 2);
        let text = std::fs::read_to_string(&path).unwrap();
        let counts: u64 = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["count"].as_u64())
            .sum();
        assert_eq!(counts + 2, 10_000, "every refusal is counted in some line");
        assert_eq!(text.lines().count(), 4);
        // A new window: the next refusal gets its own line again; nothing to summarise.
        assert!(window.admit("missing_token"));
        assert_eq!(window.flush(&log).unwrap(), 0);
        assert_eq!(verify(&path).unwrap().lines, 4);
    }

    #[test]
    fn rotation_continues_the_chain_across_files_and_verify_follows_it() {
        let (dir, path) = temp_log();
        let log = AuditLog::open_rotating(&path, 300).unwrap();
        for n in 0..20 {
            log.append(&serde_json::json!({"n": n, "pad": "x".repeat(40)}))
                .unwrap();
        }
        drop(log);
        let mut files: Vec<PathBuf> = (1..)
            .map(|n| rotated_name(&path, n))
            .take_while(|p| p.exists())
            .collect();
        assert!(files.len() >= 3, "{files:?}");
        files.push(path.clone());
        let all = verify_files(&files, false).unwrap();
        assert_eq!(
            (all.lines, all.first_seq, all.continues.as_deref()),
            (20, 1, None)
        );
        // The newest files alone: refused unless declared a continuation, and then the
        // report names the hash the missing file must end with.
        assert!(verify_files(&files[1..], false).is_err());
        let tail = verify_files(&files[1..], true).unwrap();
        assert!(tail.first_seq > 1);
        assert_eq!(tail.last_hash, all.last_hash);
        let head = verify_files(&files[..1], false).unwrap();
        assert_eq!(tail.continues.as_deref(), Some(head.last_hash.as_str()));
        // Out of order, or with a file missing in the middle, the chain breaks.
        assert!(verify_files(&[&files[1], &files[0]], true).is_err());
        assert!(verify_files(&[&files[0], &files[2]], true).is_err());
        // An empty current file beside rotated ones (say, rotated just before a crash)
        // resumes the chain from the newest rotated file.
        let rotated = &files[..files.len() - 1];
        let before = verify_files(rotated, false).unwrap();
        std::fs::write(&path, "").unwrap();
        let log = AuditLog::open_rotating(&path, 0).unwrap();
        log.append(&serde_json::json!({"n": "resumed"})).unwrap();
        drop(log);
        let resumed = verify_files(&files, false).unwrap();
        assert_eq!(resumed.lines, before.lines + 1);
        let line: serde_json::Value =
            serde_json::from_str(std::fs::read_to_string(&path).unwrap().trim_end()).unwrap();
        assert_eq!(line["seq"], before.lines + 1);
        assert_eq!(line["prev"], before.last_hash.as_str());
        drop(dir);
    }
}
