//! Reading a catalogue directory whole: which files count, how big they may be, and
//! how a file that is being written is told apart from one that is done.
//!
//! A file cut off mid-write is often still valid TOML, and an `[[action]]` cut before
//! its `delegation` or `credential` key is *broader* than the one its author wrote
//! (no delegation required, no credential gate). TOML has no end marker, so a torn
//! file cannot be recognised by its text; it is recognised by its metadata instead:
//!
//! - every file is `stat`ed (length, mtime and ctime to the nanosecond, device and
//!   inode, through symlinks) before it is opened, `fstat`ed once opened and again
//!   after it is read, and the read must return exactly the length stat'ed; after the
//!   last file the directory is listed and stat'ed again. Any difference means
//!   something changed while the catalogue was read: the whole read is retried a few
//!   times, then given up ([`CatalogueError::Changed`]). Nothing read in a changing
//!   attempt is used.
//! - a read that saw no change still says when each file last changed
//!   ([`Snapshot::unsettled`]): a reload ignores a catalogue in which any file changed
//!   less than [`SETTLE`] ago (or claims to have changed in the future), keeps the
//!   previous catalogue whole and tries again once the file has settled. An
//!   in-place rewrite that pauses for longer than [`SETTLE`] cannot be detected; the
//!   README ("Deploying catalogue changes") says how to deploy atomically instead.
//!
//! Only `*.toml` names that start with neither `.` nor `#` count, so editors'
//! lock, swap and backup files (`.#a.toml`, `.a.toml.swp`, `a.toml~`, `#a.toml#`)
//! and a Kubernetes ConfigMap mount's `..data` and `..<timestamp>` entries are
//! never read; the ConfigMap's per-key symlinks (`a.toml -> ..data/a.toml`) are
//! followed. A file over [`MAX_FILE_BYTES`], or files together over
//! [`MAX_CATALOGUE_BYTES`], are a load error naming the file and the cap, found from
//! the metadata; each file is then read through a reader bounded by the length
//! stat'ed, so one that grows meanwhile is never read past the caps.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::CatalogueError;

/// Largest scope file read, in bytes (8 MiB: ~20,000 actions of ~400 bytes).
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;
/// Largest total of all scope files of a catalogue, in bytes. Every file is held in
/// memory while the catalogue is checked, so this bounds a reload's memory.
pub const MAX_CATALOGUE_BYTES: u64 = 32 * 1024 * 1024;
/// How long a file must be left unchanged before a reload uses it: an in-place
/// rewrite in progress is usually modified again within this time.
pub const SETTLE: Duration = Duration::from_secs(2);
/// Reads of the whole directory before a catalogue that keeps changing is given up.
pub(super) const ATTEMPTS: u32 = 4;
/// Pause between two attempts (the reload runs on a blocking thread).
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Whether a directory entry's name is a scope file's: `*.toml` with a non-empty
/// stem, not hidden (`.`), not an editor's autosave (`#`). Everything else is
/// ignored without being opened.
pub fn is_scope_file_name(name: &str) -> bool {
    name.len() > ".toml".len()
        && name.ends_with(".toml")
        && !name.starts_with('.')
        && !name.starts_with('#')
}

/// What identifies one version of a file: if any of it differs, the file changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    /// The inode change time (a rename or a `chmod` moves it, not only a write).
    changed: Option<SystemTime>,
    dev: u64,
    ino: u64,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        #[cfg(unix)]
        let (changed, dev, ino) = {
            use std::os::unix::fs::MetadataExt;
            let changed = u64::try_from(meta.ctime())
                .ok()
                .zip(u32::try_from(meta.ctime_nsec()).ok())
                .and_then(|(s, ns)| SystemTime::UNIX_EPOCH.checked_add(Duration::new(s, ns)));
            (changed, meta.dev(), meta.ino())
        };
        #[cfg(not(unix))]
        let (changed, dev, ino) = (None, 0, 0);
        Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            changed,
            dev,
            ino,
        }
    }

    /// The latest of mtime and ctime; `None` when neither is known.
    fn last_change(&self) -> Option<SystemTime> {
        self.modified.max(self.changed)
    }
}

/// The scope files of a directory, read whole, in name order.
#[derive(Debug)]
pub(super) struct Snapshot {
    pub(super) files: Vec<(PathBuf, String)>,
    stamps: Vec<(PathBuf, Stamp)>,
}

impl Snapshot {
    /// The file changed most recently, if that was less than `settle` before `now`
    /// (or after `now`, a clock skew or a forged mtime, which is never trusted), and
    /// how long until it will have settled. A file whose times are unknown counts as
    /// settled.
    pub(super) fn unsettled(&self, now: SystemTime, settle: Duration) -> Option<(&Path, Duration)> {
        self.stamps
            .iter()
            .filter_map(|(path, stamp)| {
                let last = stamp.last_change()?;
                let wait = match now.duration_since(last) {
                    Ok(age) if age >= settle => return None,
                    Ok(age) => settle - age,
                    // In the future: wait a whole window (it may never settle).
                    Err(_) => settle,
                };
                Some((path.as_path(), wait))
            })
            .max_by_key(|(_, wait)| *wait)
    }
}

/// The outcome of one attempt at reading the directory.
enum Attempt {
    Read(Snapshot),
    /// Something changed while it was read: this file (or the directory).
    Changed(PathBuf),
}

/// Reads every scope file of `dir` whole, retrying while anything changes under
/// the read. `after_read` runs after each file's bytes are in (a test seam: it may
/// change the file, which the checks must then notice).
pub(super) fn read_whole(
    dir: &Path,
    after_read: &mut dyn FnMut(&Path),
) -> Result<Snapshot, CatalogueError> {
    let mut changed = dir.to_owned();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(RETRY_PAUSE);
        }
        let outcome = match read_once(dir, after_read) {
            // A file (or a symlink's target) listed but gone by the time it is
            // stat'ed: removed or being replaced, as in a ConfigMap update.
            Err(CatalogueError::Read { path, error })
                if error.kind() == io::ErrorKind::NotFound && attempt + 1 < ATTEMPTS =>
            {
                Attempt::Changed(path)
            }
            other => other?,
        };
        match outcome {
            Attempt::Read(snapshot) => return Ok(snapshot),
            Attempt::Changed(path) => {
                tracing::debug!(file = %path.display(), attempt, "scope file changed while read; retrying");
                changed = path;
            }
        }
    }
    Err(CatalogueError::Changed {
        path: changed,
        attempts: ATTEMPTS,
    })
}

fn read_once(dir: &Path, after_read: &mut dyn FnMut(&Path)) -> Result<Attempt, CatalogueError> {
    let before = list(dir)?;
    let mut total: u64 = 0;
    let mut files = Vec::with_capacity(before.len());
    for (path, stamp) in &before {
        total = total.saturating_add(stamp.len);
        if total > MAX_CATALOGUE_BYTES {
            return Err(CatalogueError::CatalogueTooLarge {
                dir: dir.to_owned(),
                path: path.clone(),
                limit: MAX_CATALOGUE_BYTES,
            });
        }
        let read_error = |error| CatalogueError::Read {
            path: path.clone(),
            error,
        };
        let mut file = match fs::File::open(path) {
            Ok(file) => file,
            // Removed or replaced between the listing and the open.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Attempt::Changed(path.clone()));
            }
            Err(e) => return Err(read_error(e)),
        };
        if Stamp::of(&file.metadata().map_err(read_error)?) != *stamp {
            return Ok(Attempt::Changed(path.clone()));
        }
        // At most one byte more than stat'ed (which is within both caps): a file that
        // grew since is told by that byte, and read again (then refused, if it grew
        // past a cap), never read to its end.
        let mut bytes = Vec::with_capacity(usize::try_from(stamp.len).unwrap_or(0));
        (&mut file)
            .take(stamp.len + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        after_read(path);
        let after = Stamp::of(&file.metadata().map_err(read_error)?);
        if after != *stamp || bytes.len() as u64 != stamp.len {
            return Ok(Attempt::Changed(path.clone()));
        }
        let text = String::from_utf8(bytes)
            .map_err(|e| read_error(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        files.push((path.clone(), text));
    }
    // The same files, the same versions, at the end as at the start: nothing was
    // added, removed, renamed over or swapped in (a ConfigMap's `..data`) meanwhile.
    let after = list(dir)?;
    if after != before {
        let path = after
            .iter()
            .zip(&before)
            .find(|(a, b)| a != b)
            .map_or_else(|| dir.to_owned(), |(a, _)| a.0.clone());
        return Ok(Attempt::Changed(path));
    }
    Ok(Attempt::Read(Snapshot {
        files,
        stamps: before,
    }))
}

/// The scope files of `dir` (symlinks followed; sub-directories ignored), sorted by
/// file name, each with its stamp. A file over [`MAX_FILE_BYTES`] is refused here,
/// before it is opened.
fn list(dir: &Path) -> Result<Vec<(PathBuf, Stamp)>, CatalogueError> {
    let read_dir_error = |error| CatalogueError::ReadDir {
        dir: dir.to_owned(),
        error,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_dir_error)? {
        let entry = entry.map_err(read_dir_error)?;
        let name = entry.file_name();
        if !name.to_str().is_some_and(is_scope_file_name) {
            continue;
        }
        let path = entry.path();
        // Follows symlinks; a dangling one is an error rather than silently skipped.
        let meta = fs::metadata(&path).map_err(|error| CatalogueError::Read {
            path: path.clone(),
            error,
        })?;
        if !meta.is_file() {
            continue;
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err(CatalogueError::FileTooLarge {
                path,
                limit: MAX_FILE_BYTES,
            });
        }
        files.push((path, Stamp::of(&meta)));
    }
    files.sort_by(|a, b| a.0.file_name().cmp(&b.0.file_name()));
    Ok(files)
}
