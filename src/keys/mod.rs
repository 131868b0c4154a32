//! The signing keyring: which keys exist, which one signs, which ones the JWKS
//! publishes, and how every running STS follows a rotation without a restart.
//!
//! A key's state is derived, never stored: from its `activates_at` timestamp, the
//! current time, and `max_ttl`. So every replica computes the same states from the same
//! ring at the same instant, and `serve` never writes the store (README, "Signing keys and rotation"):
//! - `next`: `activates_at` is in the future. Published, not signing.
//! - `active`: the most recent key whose `activates_at` has passed. Signs.
//! - `retiring`: superseded by a later active key, published until every token it
//!   signed has expired (`successor.activates_at + max_ttl + REMOVAL_MARGIN`).
//! - removed: past that; dropped from the JWKS, pruned from the store by the next
//!   `keys rotate`.
//!
//! `keys rotate` adds a key with `activates_at = now + publish_lead` (or `now` on an
//! empty ring). Every replica publishes it within `refresh_interval`, and a verifier
//! caches the JWKS for at most `jwks_max_age`; configuration requires
//! `jwks_max_age + refresh_interval <= publish_lead`, so a verifier always knows a kid
//! before it signs (README, "Security properties" 6).
//!
//! One check decides whether a stored ring is usable, [`StoredRing::validate`], and
//! `serve`, `keys list` and `keys rotate` all go through it (README, "Signing keys and
//! rotation"): the stored form parses with no unknown field, every kid is unique, every
//! key parses with its stated algorithm and passes its self-test, and every timestamp
//! is at most [`MAX_TIMESTAMP`] (the last second RFC 3339 can write). Its errors name
//! the field, the key (by index and kid) and the problem, never a value: a serde error
//! is reduced to a field name or a position ([`RingFormatError`]).
//!
//! The running STS re-reads the store every `refresh_interval`. A new ring is accepted
//! only when it passes that check; otherwise the last good ring stays (with Vault,
//! signing until `max_stale` after the last good read, as when Vault is unreachable),
//! the failure is counted, logged once per distinct reason, and `/readyz` says why.
//! Keys already loaded are reused by fingerprint, so a refresh costs one read and no
//! crypto for known keys. The current ring is published through `ArcSwap`: the hot path
//! takes no lock.
//!
//! Keys that never leave Vault (`keys.store = "transit"`) come through
//! [`RemoteKeys`] instead of a stored ring: the versions of one Transit key, each
//! with its public key and creation time. The oldest listed version signs from its
//! creation, every later one `publish_lead` after its creation (so a version made by
//! `agent-sts keys rotate`, by `bao write -f transit/keys/NAME/rotate` or by Vault's
//! auto-rotation is published before it signs, and until then the previous version
//! signs by explicit `key_version`); the states then follow as above. Every new
//! version passes the self-test through the remote signer, and the signing version
//! is probed again on every refresh: a key that was deleted or whose version no
//! longer signs stops signing at once (not ready, nothing minted) while the JWKS keeps
//! the published keys; an unreachable Vault falls under `max_stale` as for the KV ring.
//!
//! May import `secret` and `telemetry`; the Vault key store lives in `store` and
//! implements [`KeyStore`] from there.

pub mod signing_key;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::keys::signing_key::{KeyMaterialError, RemoteSign, SigningKey};
use crate::secret::PrivateKeyPem;
use crate::telemetry::metrics::Metrics;
use signing_key::SigningAlgorithm;

/// Margin added to `max_ttl` before a retiring key is removed, for clock skew between
/// replicas and verifiers.
pub const REMOVAL_MARGIN: Duration = Duration::from_secs(60);

/// The latest timestamp a stored key may carry: 9999-12-31T23:59:59Z, the last second
/// RFC 3339 (four-digit years) can write. Anything later is refused by
/// [`StoredRing::validate`], so no listing, state or arithmetic ever meets it.
pub const MAX_TIMESTAMP: u64 = 253_402_300_799;

/// One key as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredKey {
    pub kid: String,
    pub alg: SigningAlgorithm,
    #[serde(serialize_with = "expose_pem", deserialize_with = "read_pem")]
    pub private_key: PrivateKeyPem,
    /// The public JWK, checked against the private key by the self-test.
    #[serde(default)]
    pub public_jwk: Option<Value>,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds: when it starts signing.
    pub activates_at: u64,
}

/// Writing a key to its store is the one place a private key is serialized.
fn expose_pem<S: serde::Serializer>(pem: &PrivateKeyPem, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(pem.expose())
}

fn read_pem<'de, D: serde::Deserializer<'de>>(d: D) -> Result<PrivateKeyPem, D::Error> {
    String::deserialize(d).map(PrivateKeyPem::new)
}

/// The whole ring as stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredRing {
    pub keys: Vec<StoredKey>,
}

/// Where in a stored file a problem is; nothing for a ring read from Vault (already
/// parsed JSON, no lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            return Ok(());
        }
        write!(f, " (line {} column {})", self.line, self.column)
    }
}

/// Why the stored form of a ring does not parse, reduced to what is safe to print: a
/// field name shaped like one ([`field_name`]), a registered JOSE algorithm name, a
/// position. serde's own messages may quote the offending value (`invalid type: string
/// "-----BEGIN PRIVATE KEY-----..."`), and an unknown "field" may be a pasted secret
/// used as a name, so they are classified, never passed on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingFormatError {
    #[error("not valid JSON{at}")]
    Syntax { at: Position },
    #[error("unknown field {}{at}", name_or_hidden(.field.as_deref()))]
    UnknownField { field: Option<String>, at: Position },
    #[error("missing field {}{at}", name_or_hidden(.field.as_deref()))]
    MissingField { field: Option<String>, at: Position },
    #[error("duplicate field {}{at}", name_or_hidden(.field.as_deref()))]
    DuplicateField { field: Option<String>, at: Position },
    #[error("unsupported algorithm {} (ES256 or EdDSA){at}", name_or_hidden(.name.as_deref()))]
    UnknownAlgorithm { name: Option<String>, at: Position },
    #[error("a value has the wrong type or is out of range{at}")]
    BadValue { at: Position },
}

/// A kid, if it is safe to print in an error: 1 to 64 characters of ASCII letters,
/// digits, `_`, `-`, `.` or `:` (an RFC 7638 thumbprint is 43 base64url characters).
/// A kid is public (the JWKS publishes it); anything else in that field (a newline, a
/// pasted PEM) is not shown.
pub fn printable(s: &str) -> Option<&str> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':');
    (!s.is_empty() && s.len() <= 64 && s.chars().all(plain)).then_some(s)
}

/// A field name from a stored ring, if it is shaped like one: 1 to 32 characters of
/// lowercase ASCII letters, `_` and `-`, with at most two digits (`activate_at`,
/// `note`, `key2`). A name outside that shape (mixed case, many digits: a token or a
/// key pasted where a name goes) may be a secret and is not shown.
pub fn field_name(s: &str) -> Option<&str> {
    let shaped = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-');
    let digits = s.chars().filter(char::is_ascii_digit).count();
    (!s.is_empty() && s.len() <= 32 && s.chars().all(shaped) && digits <= 2).then_some(s)
}

/// An algorithm name, if it is a registered JWS one (RFC 7518 §3.1, RFC 8037 §3.1).
fn jose_algorithm(s: &str) -> Option<&str> {
    const REGISTERED: &[&str] = &[
        "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256",
        "PS384", "PS512", "none", "EdDSA", "ES256K", "Ed25519", "Ed448",
    ];
    REGISTERED.contains(&s).then_some(s)
}

fn name_or_hidden(name: Option<&str>) -> String {
    match name {
        Some(n) => format!("`{n}`"),
        None => "(name not shown: not a plain identifier)".into(),
    }
}

impl RingFormatError {
    /// Classifies a serde_json error: the names it quotes are extracted (and shown only
    /// if [`printable`]); every other message, which may quote a value, is dropped.
    fn classify(e: &serde_json::Error) -> RingFormatError {
        let at = Position {
            line: e.line(),
            column: e.column(),
        };
        if e.classify() != serde_json::error::Category::Data {
            return RingFormatError::Syntax { at };
        }
        let message = e.to_string();
        // serde's messages: "unknown field `NAME`, expected ...", "missing field
        // `NAME`", "duplicate field `NAME`", "unknown variant `NAME`, expected ...".
        // NAME may itself hold a backtick: cut at the last delimiter serde wrote.
        let between = |prefix: &str, end: &str, shown: fn(&str) -> Option<&str>| {
            let rest = message.strip_prefix(prefix)?;
            let name = &rest[..rest.rfind(end)?];
            Some(shown(name).map(str::to_string))
        };
        let expected = |prefix, shown| {
            between(prefix, "`, expected ", shown)
                .or_else(|| between(prefix, "`, there are no", shown))
        };
        if let Some(field) = expected("unknown field `", field_name) {
            RingFormatError::UnknownField { field, at }
        } else if let Some(field) = between("missing field `", "`", field_name) {
            RingFormatError::MissingField { field, at }
        } else if let Some(field) = between("duplicate field `", "`", field_name) {
            RingFormatError::DuplicateField { field, at }
        } else if let Some(name) = expected("unknown variant `", jose_algorithm) {
            RingFormatError::UnknownAlgorithm { name, at }
        } else {
            RingFormatError::BadValue { at }
        }
    }
}

impl StoredRing {
    /// Parses a ring from its stored JSON (the file store). Only the shape is checked
    /// here; [`StoredRing::validate`] checks the rest.
    pub fn from_json(bytes: &[u8]) -> Result<StoredRing, RingFormatError> {
        serde_json::from_slice(bytes).map_err(|e| RingFormatError::classify(&e))
    }

    /// Parses a ring from the data of a KV entry (the Vault store).
    pub fn from_map(data: serde_json::Map<String, Value>) -> Result<StoredRing, RingFormatError> {
        serde_json::from_value(Value::Object(data)).map_err(|e| RingFormatError::classify(&e))
    }

    /// The one check of a stored ring, run by `serve` on every refresh and by `keys
    /// list` and `keys rotate` before they act: every timestamp at most
    /// [`MAX_TIMESTAMP`], every kid unique, every key parsing with its stated algorithm
    /// (and its stored public JWK naming the same one) and passing its self-test.
    /// Returns every key parsed, in stored order; a key of `known` with the same
    /// fingerprint (the same stored form, already checked) is reused without crypto.
    pub fn validate(&self, known: &[Arc<LoadedKey>]) -> Result<Vec<Arc<LoadedKey>>, KeyringError> {
        let mut loaded = Vec::with_capacity(self.keys.len());
        for (index, stored) in self.keys.iter().enumerate() {
            let key = || KeyRef::new(index, &stored.kid);
            for (field, value) in [
                ("created_at", stored.created_at),
                ("activates_at", stored.activates_at),
            ] {
                if value > MAX_TIMESTAMP {
                    return Err(KeyringError::Timestamp {
                        key: key(),
                        field,
                        value,
                    });
                }
            }
            if let Some(first) = self.keys[..index].iter().position(|k| k.kid == stored.kid) {
                return Err(KeyringError::DuplicateKid { key: key(), first });
            }
            let print = fingerprint(stored);
            if let Some(k) = known.iter().find(|k| k.fingerprint == print) {
                loaded.push(k.clone());
                continue;
            }
            let signing = check_key(stored, key())?;
            loaded.push(Arc::new(LoadedKey {
                key: signing,
                created_at: stored.created_at,
                activates_at: stored.activates_at,
                fingerprint: print,
            }));
        }
        Ok(loaded)
    }

    /// Each stored key's state at `now` (see [`key_states`]).
    pub fn states(&self, now: u64, max_ttl: Duration) -> Vec<KeyState> {
        let activations: Vec<u64> = self.keys.iter().map(|k| k.activates_at).collect();
        key_states(&activations, now, max_ttl)
    }
}

/// An opaque version of what a store holds, for check-and-set writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreVersion(pub String);

#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    #[error("key store {location}: cannot read: {reason}")]
    Read { location: String, reason: String },
    #[error("key store {location}: malformed keyring: {problem}")]
    Malformed {
        location: String,
        problem: RingFormatError,
    },
    /// The latest version of a KV v2 keyring was deleted or destroyed: not an empty
    /// ring (which `keys rotate` would fill with a fresh key), a refusal.
    #[error("key store vault {path}: {}", deleted_hint(.path, *.version, *.destroyed))]
    Deleted {
        /// `<kv_mount>/<path>`, as the `vault kv` commands take it.
        path: String,
        version: Option<u64>,
        destroyed: bool,
    },
    #[error("key store {location}: cannot write: {reason}")]
    Write { location: String, reason: String },
    #[error("key store {location}: changed since it was read; retry")]
    Conflict { location: String },
}

/// What happened to a deleted KV v2 keyring and how an operator brings it back.
fn deleted_hint(path: &str, version: Option<u64>, destroyed: bool) -> String {
    let v = version
        .map(|v| format!(" (version {v})"))
        .unwrap_or_default();
    if destroyed {
        format!(
            "the keyring's latest version{v} was destroyed; write a good earlier version back \
             (`vault kv rollback -version=<N> {path}`), or, to start a new keyring, \
             `vault kv metadata delete {path}` then `agent-sts keys rotate`"
        )
    } else {
        let n = version
            .map(|v| v.to_string())
            .unwrap_or_else(|| "<N>".into());
        format!(
            "the keyring's latest version{v} was deleted; restore it with \
             `vault kv undelete -versions={n} {path}`"
        )
    }
}

/// Where the keyring lives: the file store here; Vault implements it in `store::vault`.
#[async_trait::async_trait]
pub trait KeyStore: Send + Sync + std::fmt::Debug {
    /// Reads the ring and its version.
    async fn load(&self) -> Result<(StoredRing, StoreVersion), KeyStoreError>;
    /// Writes the ring if the store still holds `expected` (check-and-set).
    async fn save(&self, ring: &StoredRing, expected: &StoreVersion) -> Result<(), KeyStoreError>;
    /// Where the ring lives, for messages (an absolute path, or the Vault mount and path).
    fn location(&self) -> String;
}

/// One version of a remote key, as its holder lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteVersion {
    pub version: u64,
    /// The raw public key: an uncompressed P-256 point, or 32 Ed25519 bytes.
    pub public_key: Vec<u8>,
    /// Unix seconds.
    pub created_at: u64,
}

/// The versions of a remote key that can still sign or verify.
#[derive(Debug, Clone)]
pub struct RemoteKeySet {
    pub algorithm: SigningAlgorithm,
    pub versions: Vec<RemoteVersion>,
}

/// What `keys rotate` did to a remote key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteRotation {
    /// The key did not exist and was created: its first version signs at once.
    Created,
    /// A new version was added.
    Rotated,
}

/// Keys whose private parts live elsewhere (Vault Transit); `store::vault`
/// implements it.
#[async_trait::async_trait]
pub trait RemoteKeys: RemoteSign {
    /// The versions, or `None` when the key does not exist (deleted, never created).
    async fn versions(&self) -> Result<Option<RemoteKeySet>, KeyStoreError>;
    /// Adds a version, creating the key for `algorithm` when there is none.
    async fn rotate(&self, algorithm: SigningAlgorithm) -> Result<RemoteRotation, KeyStoreError>;
    /// Where the key lives, for messages.
    fn location(&self) -> String;
}

/// Where the keyring comes from: a stored ring (file, Vault KV), or a remote key.
#[derive(Debug, Clone)]
pub enum KeySource {
    Stored(Arc<dyn KeyStore>),
    Remote(Arc<dyn RemoteKeys>),
}

impl KeySource {
    /// The stored ring's store, when the keys are stored.
    pub fn stored(&self) -> Option<&Arc<dyn KeyStore>> {
        match self {
            KeySource::Stored(s) => Some(s),
            KeySource::Remote(_) => None,
        }
    }

    pub fn location(&self) -> String {
        match self {
            KeySource::Stored(s) => s.location(),
            KeySource::Remote(r) => r.location(),
        }
    }
}

/// Activation times of remote versions (in any order) at `now`: the oldest listed
/// version signs from its creation (a new key, or what an operator trimmed down to;
/// at once, too, when Vault's clock is ahead of ours: no token can need the lead
/// before the first key), every later one `publish_lead` after its creation.
pub fn remote_activations(
    versions: &[RemoteVersion],
    publish_lead: Duration,
    now: u64,
) -> Vec<u64> {
    let oldest = versions.iter().map(|v| v.version).min();
    versions
        .iter()
        .map(|v| {
            if Some(v.version) == oldest {
                v.created_at.min(now)
            } else {
                v.created_at.saturating_add(publish_lead.as_secs())
            }
        })
        .collect()
}

/// The fingerprint of a remote version: what it is, not a secret.
fn remote_fingerprint(
    location: &str,
    alg: SigningAlgorithm,
    v: &RemoteVersion,
    activates_at: u64,
) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(b"remote\0");
    ctx.update(location.as_bytes());
    ctx.update(&[0]);
    ctx.update(alg.as_str().as_bytes());
    ctx.update(&[0]);
    ctx.update(&v.version.to_be_bytes());
    ctx.update(&v.public_key);
    ctx.update(&v.created_at.to_be_bytes());
    ctx.update(&activates_at.to_be_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Rows of `keys list` for a remote key at `now`.
pub fn list_remote(
    set: &RemoteKeySet,
    now: u64,
    max_ttl: Duration,
    publish_lead: Duration,
    backend: Arc<dyn RemoteSign>,
) -> Result<Vec<KeyListing>, KeyringError> {
    let activations = remote_activations(&set.versions, publish_lead, now);
    let mut entries = Vec::with_capacity(set.versions.len());
    for (index, (v, activates_at)) in set.versions.iter().zip(&activations).enumerate() {
        let key = SigningKey::remote(set.algorithm, &v.public_key, backend.clone(), v.version)
            .map_err(|source| KeyringError::BadKey {
                key: KeyRef {
                    index,
                    kid: Some(format!("v{}", v.version)),
                },
                source,
            })?;
        entries.push((key.kid, set.algorithm, v.created_at, *activates_at));
    }
    Ok(list_entries(entries, now, max_ttl))
}

/// The embedded key store: one JSON file, `<dir>/signing-keys.json`, mode 0600.
#[derive(Debug, Clone)]
pub struct FileKeyStore {
    path: PathBuf,
}

impl FileKeyStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileKeyStore {
            path: dir.into().join("signing-keys.json"),
        }
    }

    /// The keyring file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }
}

/// The version of a stored document without one of its own: a hash of its bytes.
pub fn version_of(bytes: &[u8]) -> StoreVersion {
    StoreVersion(hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        bytes,
    )))
}

#[async_trait::async_trait]
impl KeyStore for FileKeyStore {
    fn location(&self) -> String {
        std::path::absolute(&self.path)
            .unwrap_or_else(|_| self.path.clone())
            .display()
            .to_string()
    }

    async fn load(&self) -> Result<(StoredRing, StoreVersion), KeyStoreError> {
        let bytes = match tokio::fs::read(&self.path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((StoredRing::default(), StoreVersion(String::new())));
            }
            Err(e) => {
                return Err(KeyStoreError::Read {
                    location: self.location(),
                    reason: e.kind().to_string(),
                });
            }
        };
        let ring = StoredRing::from_json(&bytes).map_err(|problem| KeyStoreError::Malformed {
            location: self.location(),
            problem,
        })?;
        Ok((ring, version_of(&bytes)))
    }

    async fn save(&self, ring: &StoredRing, expected: &StoreVersion) -> Result<(), KeyStoreError> {
        let (_, current) = self.load().await.or_else(|e| match e {
            KeyStoreError::Malformed { .. } => {
                Ok((StoredRing::default(), StoreVersion("malformed".into())))
            }
            other => Err(other),
        })?;
        if &current != expected {
            return Err(KeyStoreError::Conflict {
                location: self.location(),
            });
        }
        let bytes = serde_json::to_vec_pretty(ring).map_err(|e| KeyStoreError::Write {
            location: self.location(),
            reason: e.to_string(),
        })?;
        let path = self.path.clone();
        let location = self.location();
        tokio::task::spawn_blocking(move || write_private_file(&path, &bytes))
            .await
            .map_err(|e| KeyStoreError::Write {
                location: location.clone(),
                reason: e.to_string(),
            })?
            .map_err(|e| KeyStoreError::Write {
                location,
                reason: e.kind().to_string(),
            })
    }
}

/// Writes `bytes` to `path` atomically, readable by the owner only: a temporary file
/// with an unpredictable name beside it, created exclusively (`O_CREAT|O_EXCL`, which
/// never follows a symlink planted at that name, nor reuses a file left there) with
/// mode 0600 from its first byte, synced, then renamed over `path`.
pub fn write_private_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut attempts = 0;
    let (tmp, mut file) = loop {
        let mut nonce = [0u8; 8];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| std::io::Error::other("no randomness"))?;
        let name = format!(
            ".{}.{}.tmp",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            hex::encode(nonce)
        );
        let tmp = path.with_file_name(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(file) => break (tmp, file),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempts < 3 => {
                attempts += 1;
            }
            Err(e) => return Err(e),
        }
    };
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

/// Refuses a file holding a secret that group or others may read or write (as ssh
/// does for private keys). A missing file is not checked: it holds nothing yet.
pub fn check_private_file(path: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{}: holds secrets but is accessible to group or others (mode {mode:04o}); run: chmod 600 {}",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

/// A key's state at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Next,
    Active,
    Retiring,
    Removed,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Next => "next",
            KeyState::Active => "active",
            KeyState::Retiring => "retiring",
            KeyState::Removed => "removed",
        }
    }
}

/// States of keys given their activation times (any order), at `now`.
pub fn key_states(activations: &[u64], now: u64, max_ttl: Duration) -> Vec<KeyState> {
    let mut order: Vec<usize> = (0..activations.len()).collect();
    order.sort_by_key(|&i| activations[i]);
    let live: Vec<usize> = order
        .into_iter()
        .filter(|&i| activations[i] <= now)
        .collect();
    let keep = max_ttl.as_secs().saturating_add(REMOVAL_MARGIN.as_secs());
    let mut states = vec![KeyState::Next; activations.len()];
    for (pos, &i) in live.iter().enumerate() {
        states[i] = match live.get(pos + 1) {
            None => KeyState::Active,
            Some(&successor) if now < activations[successor].saturating_add(keep) => {
                KeyState::Retiring
            }
            Some(_) => KeyState::Removed,
        };
    }
    states
}

/// A parsed key of the ring.
#[derive(Debug)]
pub struct LoadedKey {
    pub key: SigningKey,
    pub created_at: u64,
    pub activates_at: u64,
    /// SHA-256 of the stored entry: a key is reused across refreshes only while its
    /// stored form is unchanged, so an edit in the store is parsed and self-tested.
    pub fingerprint: [u8; 32],
}

/// The fingerprint of a stored key (its whole stored form, private key included; the
/// hash is kept in memory only).
fn fingerprint(stored: &StoredKey) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(stored.kid.as_bytes());
    ctx.update(&[0]);
    ctx.update(stored.alg.as_str().as_bytes());
    ctx.update(&[0]);
    ctx.update(stored.private_key.expose().as_bytes());
    ctx.update(&[0]);
    ctx.update(
        stored
            .public_jwk
            .as_ref()
            .map(|v| v.to_string())
            .unwrap_or_default()
            .as_bytes(),
    );
    ctx.update(&stored.created_at.to_be_bytes());
    ctx.update(&stored.activates_at.to_be_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// A key of a stored ring, for errors: its index, and its kid when [`printable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRef {
    pub index: usize,
    pub kid: Option<String>,
}

impl KeyRef {
    fn new(index: usize, kid: &str) -> Self {
        KeyRef {
            index,
            kid: printable(kid).map(str::to_string),
        }
    }
}

impl std::fmt::Display for KeyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kid {
            Some(kid) => write!(f, "keys[{}] (kid {kid})", self.index),
            None => write!(
                f,
                "keys[{}] (kid not shown: not a plain identifier)",
                self.index
            ),
        }
    }
}

/// Why a ring was not accepted. Never carries key material or a stored value other
/// than a [`printable`] kid and a timestamp.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error(transparent)]
    Store(#[from] KeyStoreError),
    #[error("{key}: unusable key: {source}")]
    BadKey {
        key: KeyRef,
        source: KeyMaterialError,
    },
    #[error("{key}: duplicate kid (also keys[{first}])")]
    DuplicateKid { key: KeyRef, first: usize },
    #[error("{key}: algorithm mismatch: alg is {}, but {found}", .stated.as_str())]
    AlgorithmMismatch {
        key: KeyRef,
        stated: SigningAlgorithm,
        found: &'static str,
    },
    #[error("{key}: {field} {value} is out of range (after 9999-12-31T23:59:59Z)")]
    Timestamp {
        key: KeyRef,
        field: &'static str,
        value: u64,
    },
    #[error("{location}: the key does not exist (deleted?); nothing signs until it is back")]
    RemoteMissing { location: String },
}

impl KeyringError {
    /// Whether this failure stops a remote key from signing at once, rather than
    /// after `max_stale`: the key is gone, or it answered but refused to sign, or its
    /// signature did not verify. An unreachable or sealed Vault is not such a
    /// failure: the last good keys sign on until `max_stale`.
    pub fn blocks_signing(&self) -> bool {
        match self {
            KeyringError::RemoteMissing { .. } => true,
            KeyringError::BadKey { source, .. } => !matches!(
                source,
                KeyMaterialError::Remote {
                    transient: true,
                    ..
                }
            ),
            _ => false,
        }
    }
}

/// Parses one stored key with its stated algorithm and runs its self-test. A key that
/// parses only with the other algorithm, or whose stored public JWK names another
/// `alg`, is an algorithm mismatch.
fn check_key(stored: &StoredKey, key: KeyRef) -> Result<SigningKey, KeyringError> {
    let stated = stored.alg;
    let mismatch = |key, found| KeyringError::AlgorithmMismatch { key, stated, found };
    let jwk_alg = stored
        .public_jwk
        .as_ref()
        .and_then(|j| j.get("alg"))
        .and_then(Value::as_str);
    if jwk_alg.is_some_and(|a| a != stated.as_str()) {
        return Err(mismatch(key, "public_jwk names another alg"));
    }
    let signing = match SigningKey::from_pem(stated, &stored.private_key) {
        Ok(k) => k,
        Err(source @ KeyMaterialError::Unparsable(_)) => {
            let other = match stated {
                SigningAlgorithm::ES256 => SigningAlgorithm::EdDSA,
                SigningAlgorithm::EdDSA => SigningAlgorithm::ES256,
            };
            return Err(match SigningKey::from_pem(other, &stored.private_key) {
                Ok(_) => mismatch(
                    key,
                    match other {
                        SigningAlgorithm::ES256 => "the private key is an ES256 (P-256) key",
                        SigningAlgorithm::EdDSA => "the private key is an EdDSA (Ed25519) key",
                    },
                ),
                Err(_) => KeyringError::BadKey { key, source },
            });
        }
        Err(source) => return Err(KeyringError::BadKey { key, source }),
    };
    signing
        .self_test(&stored.kid, stored.public_jwk.as_ref())
        .map_err(|source| KeyringError::BadKey { key, source })?;
    Ok(signing)
}

/// How the ring is doing, for `/readyz`.
#[derive(Debug, Clone)]
pub struct RingHealth {
    /// When the store was last read successfully.
    pub last_success: Option<Instant>,
    /// Why the last read failed, if it did (no key material, ever).
    pub last_error: Option<String>,
}

/// The running keyring.
pub struct Keyring {
    source: KeySource,
    /// With a remote key: how long after its creation a later version signs.
    publish_lead: Duration,
    /// Why the remote key cannot sign right now (deleted, a version that refuses to
    /// sign, a signature that does not verify): nothing signs until a refresh clears
    /// it, while the JWKS keeps the published keys.
    blocked: arc_swap::ArcSwapOption<String>,
    current: ArcSwap<Vec<Arc<LoadedKey>>>,
    health: ArcSwap<RingHealth>,
    max_ttl: Duration,
    /// When set, keys stop signing this long after the last successful read.
    max_stale: Option<Duration>,
    metrics: Arc<Metrics>,
    /// What the last refresh saw (published kids, the active kid), so a refresh logs
    /// what changed since, not the steady state; `None` before the first refresh.
    seen: std::sync::Mutex<Option<SeenKeys>>,
}

/// The published kids and the active kid a refresh saw.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct SeenKeys {
    published: std::collections::BTreeSet<String>,
    active: Option<String>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("source", &self.source)
            .field("keys", &self.current.load().len())
            .finish()
    }
}

impl Keyring {
    /// A keyring over `store`, empty until the first [`Keyring::refresh`].
    pub fn new(
        store: Arc<dyn KeyStore>,
        max_ttl: Duration,
        max_stale: Option<Duration>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self::from_source(
            KeySource::Stored(store),
            Duration::ZERO,
            max_ttl,
            max_stale,
            metrics,
        )
    }

    /// A keyring over `source`; `publish_lead` places a remote key's later versions.
    pub fn from_source(
        source: KeySource,
        publish_lead: Duration,
        max_ttl: Duration,
        max_stale: Option<Duration>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Keyring {
            source,
            publish_lead,
            blocked: arc_swap::ArcSwapOption::empty(),
            current: ArcSwap::from_pointee(Vec::new()),
            health: ArcSwap::from_pointee(RingHealth {
                last_success: None,
                last_error: Some("keyring not read yet".into()),
            }),
            max_ttl,
            max_stale,
            metrics,
            seen: std::sync::Mutex::new(None),
        }
    }

    /// Re-reads the store. On success the new ring is live; on failure the last good
    /// ring stays and the reason is recorded.
    pub async fn refresh(&self, now: u64) -> Result<usize, KeyringError> {
        match self.read_ring(now).await {
            Ok(keys) => {
                let n = keys.len();
                let published = self.published(&keys, now);
                self.metrics.signing_keys.set(published.len() as i64);
                let seen = SeenKeys {
                    published: published.iter().map(|k| k.key.kid.clone()).collect(),
                    active: keys
                        .iter()
                        .rev()
                        .find(|k| k.activates_at <= now)
                        .map(|k| k.key.kid.clone()),
                };
                self.log_changes(seen, &keys);
                self.current.store(Arc::new(keys));
                if let Some(reason) = self.blocked.swap(None) {
                    tracing::info!(previous_error = %reason, "the remote signing key signs again");
                }
                let previous = self.health.load();
                if previous.last_success.is_some()
                    && let Some(error) = &previous.last_error
                {
                    tracing::info!(previous_error = %error, "keyring refreshed again");
                }
                self.health.store(Arc::new(RingHealth {
                    last_success: Some(Instant::now()),
                    last_error: None,
                }));
                Ok(n)
            }
            Err(e) => {
                self.metrics.keyring_refresh_failures.inc();
                let reason = e.to_string();
                if matches!(self.source, KeySource::Remote(_)) && e.blocks_signing() {
                    self.blocked.store(Some(Arc::new(reason.clone())));
                }
                let previous = self.health.load_full();
                // Once per distinct reason, not on every tick; the counter counts them all.
                if previous.last_error.as_deref() == Some(reason.as_str()) {
                    tracing::debug!(error = %reason, "keyring refresh failed again; keeping the last good keyring");
                } else {
                    tracing::error!(error = %reason, "keyring refresh failed; keeping the last good keyring");
                }
                self.health.store(Arc::new(RingHealth {
                    last_success: previous.last_success,
                    last_error: Some(reason),
                }));
                Err(e)
            }
        }
    }

    /// Logs, at `info`, the keys published, activated and gone from the JWKS since the
    /// last refresh (nothing on the first, which `serve` reports itself, and nothing
    /// when nothing changed).
    fn log_changes(&self, now_seen: SeenKeys, keys: &[Arc<LoadedKey>]) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        if let Some(before) = seen.as_ref() {
            for kid in now_seen.published.difference(&before.published) {
                let activates_at = keys
                    .iter()
                    .find(|k| &k.key.kid == kid)
                    .map(|k| k.activates_at);
                tracing::info!(kid = %kid, activates_at, "signing key published");
            }
            if now_seen.active != before.active
                && let Some(kid) = &now_seen.active
            {
                tracing::info!(kid = %kid, previous = %before.active.as_deref().unwrap_or("none"), "signing key activated");
            }
            for kid in before.published.difference(&now_seen.published) {
                tracing::info!(kid = %kid, "signing key removed from the JWKS");
            }
        }
        *seen = Some(now_seen);
    }

    /// Seconds the signing key has been active, and seconds until the pending `next`
    /// key activates, at `now` (for `/metrics`).
    pub fn timeline(&self, now: u64) -> (Option<u64>, Option<u64>) {
        let keys = self.current.load();
        let active = keys.iter().rev().find(|k| k.activates_at <= now);
        let next = keys.iter().find(|k| k.activates_at > now);
        (
            active.map(|k| now - k.activates_at),
            next.map(|k| k.activates_at - now),
        )
    }

    async fn read_ring(&self, now: u64) -> Result<Vec<Arc<LoadedKey>>, KeyringError> {
        let store = match &self.source {
            KeySource::Stored(store) => store,
            KeySource::Remote(remote) => return self.read_remote(remote, now).await,
        };
        let (ring, _) = store.load().await?;
        let checked = ring.validate(&self.current.load())?;
        let states = ring.states(now, self.max_ttl);
        // Removed keys are checked like the others but not kept: they neither sign
        // nor publish, and their private keys need not stay in memory.
        let mut keys: Vec<Arc<LoadedKey>> = checked
            .into_iter()
            .zip(states)
            .filter(|(_, state)| *state != KeyState::Removed)
            .map(|(k, _)| k)
            .collect();
        keys.sort_by_key(|k| k.activates_at);
        Ok(keys)
    }

    /// The versions of the remote key: new ones built and self-tested through the
    /// remote signer, known ones reused; then the version that signs at `now` is
    /// probed (one remote signature per refresh), so a key deleted or a version
    /// that no longer signs is found within `refresh_interval`.
    async fn read_remote(
        &self,
        remote: &Arc<dyn RemoteKeys>,
        now: u64,
    ) -> Result<Vec<Arc<LoadedKey>>, KeyringError> {
        let location = remote.location();
        let Some(set) = remote.versions().await? else {
            return Err(KeyringError::RemoteMissing { location });
        };
        let activations = remote_activations(&set.versions, self.publish_lead, now);
        let states = key_states(&activations, now, self.max_ttl);
        let known = self.current.load();
        let backend: Arc<dyn RemoteSign> = remote.clone();
        let mut keys = Vec::with_capacity(set.versions.len());
        for (index, ((v, activates_at), state)) in
            set.versions.iter().zip(activations).zip(states).enumerate()
        {
            if state == KeyState::Removed {
                continue;
            }
            let key_ref = || KeyRef {
                index,
                kid: Some(format!("version {}", v.version)),
            };
            let print = remote_fingerprint(&location, set.algorithm, v, activates_at);
            if let Some(k) = known.iter().find(|k| k.fingerprint == print) {
                keys.push(k.clone());
                continue;
            }
            let key = SigningKey::remote(set.algorithm, &v.public_key, backend.clone(), v.version)
                .map_err(|source| KeyringError::BadKey {
                    key: key_ref(),
                    source,
                })?;
            let kid = key.kid.clone();
            key.self_test_async(&kid)
                .await
                .map_err(|source| KeyringError::BadKey {
                    key: key_ref(),
                    source,
                })?;
            keys.push(Arc::new(LoadedKey {
                key,
                created_at: v.created_at,
                activates_at,
                fingerprint: print,
            }));
        }
        keys.sort_by_key(|k| k.activates_at);
        // The signing version signs now, and what it signs verifies.
        if let Some(signer) = keys.iter().rev().find(|k| k.activates_at <= now) {
            let kid = signer.key.kid.clone();
            signer
                .key
                .self_test_async(&kid)
                .await
                .map_err(|source| KeyringError::BadKey {
                    key: KeyRef {
                        index: 0,
                        kid: signer.key.remote_version().map(|v| format!("version {v}")),
                    },
                    source,
                })?;
        }
        Ok(keys)
    }

    fn published<'a>(&self, keys: &'a [Arc<LoadedKey>], now: u64) -> Vec<&'a Arc<LoadedKey>> {
        let states = key_states(
            &keys.iter().map(|k| k.activates_at).collect::<Vec<_>>(),
            now,
            self.max_ttl,
        );
        keys.iter()
            .zip(states)
            .filter(|(_, s)| *s != KeyState::Removed)
            .map(|(k, _)| k)
            .collect()
    }

    /// Secrets for `label` derived from the keys published at `now` (HMAC-SHA256 keyed
    /// by each key's private fingerprint), the signer's first: every replica that read
    /// the same ring derives the same ones, and they change as the keys do. Used for
    /// DPoP nonces, which any replica must accept.
    pub fn derived_secrets(&self, label: &[u8], now: u64) -> Vec<[u8; 32]> {
        let derive = |k: &LoadedKey| {
            let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &k.fingerprint);
            let mut out = [0u8; 32];
            out.copy_from_slice(aws_lc_rs::hmac::sign(&key, label).as_ref());
            out
        };
        let keys = self.current.load();
        let signer = self.signer(now);
        let mut secrets: Vec<[u8; 32]> = signer.iter().map(|k| derive(k)).collect();
        secrets.extend(
            self.published(&keys, now)
                .into_iter()
                .filter(|k| signer.as_ref().is_none_or(|s| !Arc::ptr_eq(s, k)))
                .map(|k| derive(k)),
        );
        secrets
    }

    /// The key that signs at `now`: the latest activated one, if the ring is fresh.
    pub fn signer(&self, now: u64) -> Option<Arc<LoadedKey>> {
        if self.blocked.load().is_some() {
            return None;
        }
        if let Some(max_stale) = self.max_stale {
            let fresh = self
                .health
                .load()
                .last_success
                .is_some_and(|t| t.elapsed() <= max_stale);
            if !fresh {
                return None;
            }
        }
        self.current
            .load()
            .iter()
            .rev()
            .find(|k| k.activates_at <= now)
            .cloned()
    }

    /// The JWKS document (RFC 7517): next, active and retiring keys.
    pub fn jwks(&self, now: u64) -> Value {
        let keys = self.current.load();
        let published: Vec<Value> = self
            .published(&keys, now)
            .into_iter()
            .map(|k| k.key.public_jwk.clone())
            .collect();
        serde_json::json!({ "keys": published })
    }

    /// Health for `/readyz`.
    pub fn health(&self) -> Arc<RingHealth> {
        self.health.load_full()
    }
}

/// A row of `keys list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyListing {
    pub kid: String,
    pub alg: SigningAlgorithm,
    pub state: KeyState,
    pub created_at: u64,
    pub activates_at: u64,
    /// When it stops signing (its successor activates), if it has one.
    pub retires_at: Option<u64>,
    /// When it leaves the JWKS (`max_ttl` + 60 s after it retires).
    pub removed_at: Option<u64>,
}

/// States of every stored key at `now` (no key material).
pub fn list(ring: &StoredRing, now: u64, max_ttl: Duration) -> Vec<KeyListing> {
    list_entries(
        ring.keys
            .iter()
            .map(|k| (k.kid.clone(), k.alg, k.created_at, k.activates_at))
            .collect(),
        now,
        max_ttl,
    )
}

/// Rows of `keys list` from `(kid, alg, created_at, activates_at)` entries.
fn list_entries(
    entries: Vec<(String, SigningAlgorithm, u64, u64)>,
    now: u64,
    max_ttl: Duration,
) -> Vec<KeyListing> {
    let activations: Vec<u64> = entries.iter().map(|e| e.3).collect();
    let states = key_states(&activations, now, max_ttl);
    let mut rows: Vec<KeyListing> = entries
        .into_iter()
        .zip(states)
        .map(|((kid, alg, created_at, activates_at), state)| KeyListing {
            kid,
            alg,
            state,
            created_at,
            activates_at,
            retires_at: None,
            removed_at: None,
        })
        .collect();
    rows.sort_by_key(|r| r.activates_at);
    let keep = max_ttl.as_secs().saturating_add(REMOVAL_MARGIN.as_secs());
    for i in 1..rows.len() {
        let successor = rows[i].activates_at;
        rows[i - 1].retires_at = Some(successor);
        rows[i - 1].removed_at = Some(successor.saturating_add(keep));
    }
    rows
}

/// `unix` as RFC 3339 (`2024-05-01T12:00:00Z`), or `None` past [`MAX_TIMESTAMP`]
/// (which a validated ring never holds): never a panic, whatever the value.
pub fn format_timestamp(unix: u64) -> Option<String> {
    use std::fmt::Write;
    if unix > MAX_TIMESTAMP {
        return None;
    }
    let time = std::time::UNIX_EPOCH.checked_add(Duration::from_secs(unix))?;
    let mut out = String::new();
    write!(out, "{}", humantime::format_rfc3339_seconds(time)).ok()?;
    Some(out)
}

/// Reads the ring and runs [`StoredRing::validate`] on it: what `keys list` and `keys
/// rotate` act on, so they refuse exactly the rings `serve` refuses.
pub async fn load_valid(store: &dyn KeyStore) -> Result<(StoredRing, StoreVersion), KeyringError> {
    let (ring, version) = store.load().await?;
    ring.validate(&[])?;
    Ok((ring, version))
}

/// `keys rotate`: prunes removed keys and adds a new one: `active` at once on an empty
/// ring, else `next`, activating after `publish_lead`. Returns the new key's kid.
/// Refuses (writing nothing) a stored ring that fails [`StoredRing::validate`], and
/// checks the new ring the same way before writing it.
pub async fn rotate(
    store: &dyn KeyStore,
    algorithm: SigningAlgorithm,
    now: u64,
    publish_lead: Duration,
    max_ttl: Duration,
) -> Result<(String, KeyState), KeyringError> {
    let (mut ring, version) = load_valid(store).await?;
    let states = ring.states(now, max_ttl);
    let mut states = states.into_iter();
    ring.keys
        .retain(|_| states.next() != Some(KeyState::Removed));
    let (key, pem) = SigningKey::generate(algorithm).map_err(|source| KeyringError::BadKey {
        key: KeyRef {
            index: ring.keys.len(),
            kid: None,
        },
        source,
    })?;
    let (activates_at, state) = if ring.keys.is_empty() {
        (now, KeyState::Active)
    } else {
        // `now` is truncated to the second: one more second keeps the full lead.
        (
            now.saturating_add(publish_lead.as_secs()).saturating_add(1),
            KeyState::Next,
        )
    };
    let kid = key.kid.clone();
    ring.keys.push(StoredKey {
        kid: kid.clone(),
        alg: algorithm,
        private_key: pem,
        public_jwk: Some(key.public_jwk.clone()),
        created_at: now,
        activates_at,
    });
    // The new key's timestamps (a clock or a lead past year 9999) and self-test.
    ring.validate(&[])?;
    store.save(&ring, &version).await?;
    Ok((kid, state))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use KeyState::*;

    const TTL: Duration = Duration::from_secs(900);

    #[test]
    fn states_follow_the_timeline() {
        // One key active since 100; a second activating at 1000.
        let keep = TTL.as_secs() + REMOVAL_MARGIN.as_secs();
        assert_eq!(key_states(&[100, 1000], 500, TTL), vec![Active, Next]);
        assert_eq!(key_states(&[100, 1000], 1000, TTL), vec![Retiring, Active]);
        assert_eq!(
            key_states(&[100, 1000], 1000 + keep - 1, TTL),
            vec![Retiring, Active]
        );
        assert_eq!(
            key_states(&[100, 1000], 1000 + keep, TTL),
            vec![Removed, Active]
        );
        assert_eq!(key_states(&[1000, 100], 1000, TTL), vec![Active, Retiring]);
        assert_eq!(key_states(&[], 1000, TTL), Vec::<KeyState>::new());
        assert_eq!(key_states(&[2000], 1000, TTL), vec![Next]);
    }

    #[tokio::test]
    async fn rotate_bootstraps_then_adds_next_and_ring_follows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FileKeyStore::new(dir.path()));
        let lead = Duration::from_secs(600);
        let (first, state) = rotate(store.as_ref(), SigningAlgorithm::ES256, 1000, lead, TTL)
            .await
            .unwrap();
        assert_eq!(state, Active);
        let ring = Keyring::new(store.clone(), TTL, None, Arc::new(Metrics::new()));
        ring.refresh(1000).await.unwrap();
        assert_eq!(ring.signer(1000).unwrap().key.kid, first);

        let (second, state) = rotate(store.as_ref(), SigningAlgorithm::ES256, 1100, lead, TTL)
            .await
            .unwrap();
        assert_eq!(state, Next);
        ring.refresh(1100).await.unwrap();
        // Published before it signs.
        let jwks = ring.jwks(1100).to_string();
        assert!(jwks.contains(&second) && jwks.contains(&first));
        assert_eq!(ring.signer(1100).unwrap().key.kid, first);
        assert_eq!(ring.signer(1700).unwrap().key.kid, first);
        assert_eq!(ring.signer(1701).unwrap().key.kid, second);
        // The retired key leaves the JWKS once its tokens have expired.
        let gone = 1701 + TTL.as_secs() + REMOVAL_MARGIN.as_secs();
        assert!(ring.jwks(gone - 1).to_string().contains(&first));
        assert!(!ring.jwks(gone).to_string().contains(&first));

        // The file never holds the key in a form `keys list` would print.
        let (stored, _) = store.load().await.unwrap();
        let rows = list(&stored, 1100, TTL);
        assert_eq!(
            rows.iter().map(|r| r.state).collect::<Vec<_>>(),
            vec![Active, Next]
        );
    }

    /// Captures the events of the current thread while it lives.
    fn capture_logs() -> (
        Arc<std::sync::Mutex<Vec<u8>>>,
        tracing::subscriber::DefaultGuard,
    ) {
        #[derive(Clone)]
        struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Capture {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = Capture(buffer.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || writer.clone())
            .finish();
        (buffer, tracing::subscriber::set_default(subscriber))
    }

    /// A refresh logs what changed since the last one, at info: a key published, a key
    /// activated (by time passing, with the ring unchanged), a key gone from the JWKS;
    /// nothing on the first refresh or while nothing changes.
    #[tokio::test]
    async fn refreshes_log_keys_published_activated_and_removed_not_the_steady_state() {
        let (logs, _guard) = capture_logs();
        let text = || String::from_utf8(logs.lock().unwrap().clone()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FileKeyStore::new(dir.path()));
        let lead = Duration::from_secs(600);
        let (first, _) = rotate(store.as_ref(), SigningAlgorithm::ES256, 1000, lead, TTL)
            .await
            .unwrap();
        let ring = Keyring::new(store.clone(), TTL, None, Arc::new(Metrics::new()));
        ring.refresh(1000).await.unwrap();
        ring.refresh(1030).await.unwrap();
        assert_eq!(
            text(),
            "",
            "the first refresh and an unchanged one say nothing"
        );

        let (second, _) = rotate(store.as_ref(), SigningAlgorithm::ES256, 1100, lead, TTL)
            .await
            .unwrap();
        ring.refresh(1100).await.unwrap();
        ring.refresh(1130).await.unwrap();
        let published: Vec<String> = text()
            .lines()
            .filter(|l| l.contains("signing key published"))
            .map(str::to_string)
            .collect();
        assert_eq!(published.len(), 1, "{}", text());
        assert!(published[0].contains(&second) && published[0].contains("activates_at=1701"));
        assert_eq!(ring.timeline(1130), (Some(130), Some(571)));

        ring.refresh(1701).await.unwrap();
        ring.refresh(1731).await.unwrap();
        let log = text();
        let activated: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("signing key activated"))
            .collect();
        assert_eq!(activated.len(), 1, "{log}");
        assert!(activated[0].contains(&format!("kid={second}")));
        assert!(activated[0].contains(&format!("previous={first}")));
        assert_eq!(ring.timeline(1731), (Some(30), None));

        let gone = 1701 + TTL.as_secs() + REMOVAL_MARGIN.as_secs();
        ring.refresh(gone).await.unwrap();
        let log = text();
        let removed: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("signing key removed from the JWKS"))
            .collect();
        assert_eq!(removed.len(), 1, "{log}");
        assert!(removed[0].contains(&first));
        assert!(!log.contains("PRIVATE KEY"), "{log}");
    }

    /// A remote key whose signer is scripted: its versions' public keys, and the key
    /// that actually signs (another one, to play a signer that does not match).
    #[derive(Debug)]
    struct ScriptedRemote {
        public: SigningKey,
        signs_with: SigningKey,
        gone: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl RemoteSign for ScriptedRemote {
        async fn sign(&self, _: u64, message: &[u8]) -> Result<Vec<u8>, KeyMaterialError> {
            use base64::Engine;
            let sig = self.signs_with.sign(message)?;
            Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(sig)
                .unwrap())
        }
    }

    #[async_trait::async_trait]
    impl RemoteKeys for ScriptedRemote {
        async fn versions(&self) -> Result<Option<RemoteKeySet>, KeyStoreError> {
            if self.gone.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(None);
            }
            let x = |m: &str| {
                use base64::Engine;
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(self.public.public_jwk[m].as_str().unwrap())
                    .unwrap()
            };
            let mut raw = vec![4u8];
            raw.extend(x("x"));
            raw.extend(x("y"));
            Ok(Some(RemoteKeySet {
                algorithm: SigningAlgorithm::ES256,
                versions: vec![RemoteVersion {
                    version: 1,
                    public_key: raw,
                    created_at: 900,
                }],
            }))
        }
        async fn rotate(&self, _: SigningAlgorithm) -> Result<RemoteRotation, KeyStoreError> {
            Ok(RemoteRotation::Rotated)
        }
        fn location(&self) -> String {
            "scripted".into()
        }
    }

    fn scripted(matching: bool) -> Arc<ScriptedRemote> {
        let (public, pem) = SigningKey::generate(SigningAlgorithm::ES256).unwrap();
        let signs_with = if matching {
            SigningKey::from_pem(SigningAlgorithm::ES256, &pem).unwrap()
        } else {
            SigningKey::generate(SigningAlgorithm::ES256).unwrap().0
        };
        Arc::new(ScriptedRemote {
            public,
            signs_with,
            gone: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The keyring self-test applies to a remote key: a signer whose signatures do
    /// not verify under the published key is refused (nothing signs, not even with
    /// max_stale to spare), and a remote key that is gone stops signing at once
    /// while the JWKS keeps it.
    #[tokio::test]
    async fn remote_keys_are_self_tested_and_a_missing_key_stops_signing_at_once() {
        let lead = Duration::from_secs(600);
        let stale = Some(Duration::from_secs(3600));
        let metrics = Arc::new(Metrics::new());
        let bad = scripted(false);
        let ring = Keyring::from_source(KeySource::Remote(bad), lead, TTL, stale, metrics.clone());
        let e = ring.refresh(1000).await.unwrap_err();
        assert!(e.to_string().contains("does not verify"), "{e}");
        assert!(ring.signer(1000).is_none());

        let good = scripted(true);
        let ring = Keyring::from_source(KeySource::Remote(good.clone()), lead, TTL, stale, metrics);
        ring.refresh(1000).await.unwrap();
        let signer = ring.signer(1000).unwrap();
        assert_eq!(signer.key.kid, good.public.kid);
        assert!(
            signer.key.sign_compact(b"{}", b"{}").is_err(),
            "remote keys never sign locally"
        );
        let jws = signer.key.sign_compact_async(b"{}", b"{}").await.unwrap();
        assert_eq!(jws.split('.').count(), 3);

        good.gone.store(true, std::sync::atomic::Ordering::SeqCst);
        let e = ring.refresh(1001).await.unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(ring.signer(1001).is_none(), "a deleted key signs on");
        assert!(ring.jwks(1001).to_string().contains(&good.public.kid));
        good.gone.store(false, std::sync::atomic::Ordering::SeqCst);
        ring.refresh(1002).await.unwrap();
        assert!(ring.signer(1002).is_some());
    }

    #[test]
    fn remote_versions_activate_a_lead_after_creation_except_the_oldest() {
        let v = |version, created_at| RemoteVersion {
            version,
            public_key: vec![],
            created_at,
        };
        let lead = Duration::from_secs(600);
        assert_eq!(
            remote_activations(&[v(2, 5000), v(1, 1000), v(3, 9000)], lead, 9999),
            vec![5600, 1000, 9600]
        );
        // Trimmed down to version 3: it is the oldest, and signs from its creation.
        assert_eq!(remote_activations(&[v(3, 9000)], lead, 9999), vec![9000]);
        // A first version Vault dated ahead of our clock signs at once.
        assert_eq!(remote_activations(&[v(1, 9000)], lead, 8998), vec![8998]);
    }

    #[tokio::test]
    async fn malformed_ring_keeps_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FileKeyStore::new(dir.path()));
        let (kid, _) = rotate(
            store.as_ref(),
            SigningAlgorithm::EdDSA,
            1000,
            Duration::from_secs(600),
            TTL,
        )
        .await
        .unwrap();
        let ring = Keyring::new(store.clone(), TTL, None, Arc::new(Metrics::new()));
        ring.refresh(1000).await.unwrap();

        // A key whose public part does not match its private key.
        let (mut stored, version) = store.load().await.unwrap();
        let (other, _) = SigningKey::generate(SigningAlgorithm::EdDSA).unwrap();
        stored.keys[0].public_jwk = Some(other.public_jwk.clone());
        store.save(&stored, &version).await.unwrap();
        assert!(ring.refresh(1001).await.is_err());
        assert_eq!(ring.signer(1001).unwrap().key.kid, kid);
        assert!(ring.health().last_error.is_some());

        // Garbage.
        std::fs::write(dir.path().join("signing-keys.json"), b"{not json").unwrap();
        assert!(ring.refresh(1002).await.is_err());
        assert_eq!(ring.signer(1002).unwrap().key.kid, kid);
    }

    #[tokio::test]
    async fn concurrent_writers_conflict_instead_of_losing_a_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileKeyStore::new(dir.path());
        let (ring, version) = store.load().await.unwrap();
        store.save(&ring, &version).await.unwrap();
        let err = store.save(&ring, &version).await.unwrap_err();
        assert!(matches!(err, KeyStoreError::Conflict { .. }));
    }
}

#[cfg(test)]
mod validation {
    //! The one ring check: each class of error, no panic on any timestamp, and no key
    //! material in any message or `Debug`.
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    const TTL: Duration = Duration::from_secs(900);

    /// A stored key that passes every check, as JSON.
    fn good(alg: SigningAlgorithm, activates_at: u64) -> Value {
        let (key, pem) = SigningKey::generate(alg).unwrap();
        json!({
            "kid": key.kid,
            "alg": alg.as_str(),
            "private_key": pem.expose(),
            "public_jwk": key.public_jwk,
            "created_at": activates_at,
            "activates_at": activates_at,
        })
    }

    fn ring(keys: Vec<Value>) -> StoredRing {
        StoredRing::from_json(json!({ "keys": keys }).to_string().as_bytes()).unwrap()
    }

    /// The base64 lines of `pems` (what must never be printed).
    fn pem_lines(pems: &[&str]) -> Vec<String> {
        let lines: Vec<String> = pems
            .iter()
            .flat_map(|p| p.lines())
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            .map(str::to_string)
            .collect();
        assert!(!lines.is_empty());
        lines
    }

    fn assert_no_material<E: std::fmt::Debug + std::fmt::Display>(e: &E, secrets: &[String]) {
        for printed in [e.to_string(), format!("{e:?}"), format!("{e:#?}")] {
            for s in secrets {
                // Any 12-character run of a base64 line is too much.
                for start in (0..s.len().saturating_sub(12)).step_by(4) {
                    let piece = &s[start..start + 12];
                    assert!(!printed.contains(piece), "key material in {printed}");
                }
            }
        }
    }

    #[test]
    fn a_good_ring_validates_and_reuses_known_keys() {
        let r = ring(vec![
            good(SigningAlgorithm::ES256, 1000),
            good(SigningAlgorithm::EdDSA, 2000),
        ]);
        let loaded = r.validate(&[]).unwrap();
        assert_eq!(loaded.len(), 2);
        let again = r.validate(&loaded).unwrap();
        assert!(Arc::ptr_eq(&loaded[0], &again[0]) && Arc::ptr_eq(&loaded[1], &again[1]));
        // The last second RFC 3339 can write is still a valid timestamp.
        let edge = ring(vec![good(SigningAlgorithm::ES256, MAX_TIMESTAMP)]);
        edge.validate(&[]).unwrap();
        assert_eq!(
            format_timestamp(MAX_TIMESTAMP).as_deref(),
            Some("9999-12-31T23:59:59Z")
        );
    }

    #[tokio::test]
    async fn unknown_fields_are_named_and_values_never_shown() {
        // A key whose private key is broken, with a planted PEM in an unknown field.
        let mut key = good(SigningAlgorithm::ES256, 1000);
        let pem = key["private_key"].as_str().unwrap().to_string();
        let broken = pem.replacen("MIG", "AAA", 1);
        key["private_key"] = json!(broken);
        let (_, planted) = SigningKey::generate(SigningAlgorithm::ES256).unwrap();
        key["private_key_backup"] = json!(planted.expose());
        let secrets = pem_lines(&[planted.expose(), &pem, &broken]);
        let text = json!({ "keys": [key] }).to_string();
        let e = StoredRing::from_json(text.as_bytes()).unwrap_err();
        assert!(
            matches!(&e, RingFormatError::UnknownField { field: Some(f), at } if f == "private_key_backup" && at.line == 1),
            "{e:?}"
        );
        assert!(
            e.to_string().contains("unknown field `private_key_backup`"),
            "{e}"
        );
        assert_no_material(&e, &secrets);
        // As the file store and `keys list` report it.
        let dir = tempfile::tempdir().unwrap();
        let store = FileKeyStore::new(dir.path());
        std::fs::write(store.path(), &text).unwrap();
        let e = load_valid(&store).await.unwrap_err();
        assert!(e.to_string().contains("unknown field `private_key_backup`"));
        assert_no_material(&e, &secrets);

        // Through the Vault path (a parsed map): the same, without a position.
        let Value::Object(map) = json!({ "keys": [key.clone()] }) else {
            unreachable!()
        };
        let e = StoredRing::from_map(map).unwrap_err();
        assert_eq!(e.to_string(), "unknown field `private_key_backup`");

        // Without the unknown field, the broken key is named, still without material.
        key.as_object_mut().unwrap().remove("private_key_backup");
        std::fs::write(store.path(), json!({ "keys": [key] }).to_string()).unwrap();
        let e = load_valid(&store).await.unwrap_err();
        assert!(e.to_string().contains("does not parse"), "{e}");
        assert_no_material(&e, &secrets);

        // At the top level, too.
        let e = StoredRing::from_json(br#"{"keys": [], "extra": 1}"#).unwrap_err();
        assert!(e.to_string().starts_with("unknown field `extra`"), "{e}");

        // A "name" that is a pasted key or token, or holds a backtick and a newline:
        // not shown.
        for name in [
            planted.expose(),
            "a`, expected \n`b",
            "ghp_plantedCredentialCanary4e7d",
            "d41d8cd98f00b204e980",
            "AKIAIOSFODNN7EXAMPLE",
        ] {
            let mut k = good(SigningAlgorithm::ES256, 1000);
            k[name] = json!(1);
            let e =
                StoredRing::from_json(json!({ "keys": [k] }).to_string().as_bytes()).unwrap_err();
            assert!(
                matches!(e, RingFormatError::UnknownField { field: None, .. }),
                "{e:?}"
            );
            assert_no_material(&e, &pem_lines(&[planted.expose()]));
            assert!(!format!("{e} {e:?}").contains(name), "{e:?}");
        }
        // An unknown algorithm is named only when it is a registered one.
        let mut k = good(SigningAlgorithm::ES256, 1000);
        k["alg"] = json!("ghp_plantedCredentialCanary4e7d");
        let e = StoredRing::from_json(json!({ "keys": [k] }).to_string().as_bytes()).unwrap_err();
        assert!(!format!("{e} {e:?}").contains("Canary"), "{e:?}");
    }

    #[test]
    fn serde_messages_that_quote_values_are_reduced_to_a_position() {
        let (_, planted) = SigningKey::generate(SigningAlgorithm::ES256).unwrap();
        let mut key = good(SigningAlgorithm::ES256, 1000);
        key["created_at"] = json!(planted.expose());
        let text = json!({ "keys": [key] }).to_string();
        // serde itself would print the value...
        let raw = serde_json::from_str::<StoredRing>(&text)
            .unwrap_err()
            .to_string();
        assert!(raw.contains("BEGIN PRIVATE KEY"), "{raw}");
        // ...the classified error does not.
        let e = StoredRing::from_json(text.as_bytes()).unwrap_err();
        assert!(matches!(e, RingFormatError::BadValue { .. }), "{e:?}");
        assert_no_material(&e, &pem_lines(&[planted.expose()]));

        let cases: [(&[u8], &str); 6] = [
            (b"{not json", "not valid JSON (line 1"),
            (br#"{"keys": [{"kid": "a"}]}"#, "missing field `alg`"),
            (br#"{"keys": [], "keys": []}"#, "duplicate field `keys`"),
            (
                br#"{"keys": [{"kid": "a", "alg": "RS256"}]}"#,
                "unsupported algorithm `RS256`",
            ),
            (
                br#"{"keys": [{"kid": "a", "alg": "ES256", "private_key": "x", "created_at": -1, "activates_at": 0}]}"#,
                "wrong type or is out of range (line 1",
            ),
            (
                br#"{"keys": [{"kid": "a", "alg": "ES256", "private_key": "x", "created_at": 1e300, "activates_at": 0}]}"#,
                "wrong type or is out of range",
            ),
        ];
        for (text, expected) in cases {
            let e = StoredRing::from_json(text).unwrap_err().to_string();
            assert!(e.contains(expected), "{e}");
        }
    }

    #[test]
    fn duplicate_kids_are_refused() {
        let key = good(SigningAlgorithm::ES256, 1000);
        let mut later = key.clone();
        later["activates_at"] = json!(5000);
        let e = ring(vec![
            key.clone(),
            good(SigningAlgorithm::EdDSA, 2000),
            later,
        ])
        .validate(&[])
        .unwrap_err();
        assert!(
            matches!(
                &e,
                KeyringError::DuplicateKid {
                    key: KeyRef { index: 2, .. },
                    first: 0
                }
            ),
            "{e:?}"
        );
        let kid = key["kid"].as_str().unwrap();
        assert_eq!(
            e.to_string(),
            format!("keys[2] (kid {kid}): duplicate kid (also keys[0])")
        );
    }

    #[test]
    fn unparsable_keys_are_named_by_kid_never_shown() {
        let mut key = good(SigningAlgorithm::ES256, 1000);
        // Valid PEM armour around a body that is not PKCS#8.
        let pem = key["private_key"].as_str().unwrap().to_string();
        let broken = pem.replacen("MIG", "AAA", 1);
        assert_ne!(broken, pem);
        key["private_key"] = json!(broken);
        let e = ring(vec![key.clone()]).validate(&[]).unwrap_err();
        assert!(matches!(e, KeyringError::BadKey { .. }), "{e:?}");
        let kid = key["kid"].as_str().unwrap();
        assert!(e.to_string().contains(kid), "{e}");
        assert!(e.to_string().contains("does not parse"), "{e}");
        assert_no_material(&e, &pem_lines(&[&broken, &pem]));

        // Not PEM at all; a kid that is itself a pasted key is not shown either.
        let mut key = good(SigningAlgorithm::EdDSA, 1000);
        key["private_key"] = json!("garbage");
        key["kid"] = json!(pem);
        let e = ring(vec![key]).validate(&[]).unwrap_err();
        assert!(e.to_string().contains("keys[0] (kid not shown"), "{e}");
        assert_no_material(&e, &pem_lines(&[&pem]));

        // A public JWK that belongs to another key.
        let mut key = good(SigningAlgorithm::ES256, 1000);
        key["public_jwk"] = good(SigningAlgorithm::ES256, 1)["public_jwk"].clone();
        let e = ring(vec![key]).validate(&[]).unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
    }

    #[test]
    fn algorithm_mismatches_are_named() {
        let mut key = good(SigningAlgorithm::EdDSA, 1000);
        key["alg"] = json!("ES256");
        key["public_jwk"] = Value::Null;
        let e = ring(vec![key]).validate(&[]).unwrap_err();
        assert!(
            matches!(
                e,
                KeyringError::AlgorithmMismatch {
                    stated: SigningAlgorithm::ES256,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("EdDSA (Ed25519) key"), "{e}");

        let mut key = good(SigningAlgorithm::ES256, 1000);
        key["public_jwk"]["alg"] = json!("EdDSA");
        let e = ring(vec![key]).validate(&[]).unwrap_err();
        assert!(e.to_string().contains("algorithm mismatch"), "{e}");
    }

    #[test]
    fn timestamps_past_year_9999_are_refused_never_a_panic() {
        for value in [MAX_TIMESTAMP + 1, 10_u64.pow(15), i64::MAX as u64, u64::MAX] {
            for field in ["created_at", "activates_at"] {
                let mut key = good(SigningAlgorithm::ES256, 1000);
                key[field] = json!(value);
                let r = ring(vec![good(SigningAlgorithm::ES256, 500), key]);
                let e = r.validate(&[]).unwrap_err();
                assert!(
                    matches!(&e, KeyringError::Timestamp { field: f, value: v, .. } if *f == field && *v == value),
                    "{e:?}"
                );
                assert!(e.to_string().contains("out of range"), "{e}");
                // Nothing derived from such a ring panics either.
                let _ = r.states(u64::MAX, Duration::MAX);
                let _ = list(&r, u64::MAX, TTL);
            }
            assert_eq!(format_timestamp(value), None);
        }
        assert_eq!(format_timestamp(0).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(key_states(&[u64::MAX, 0], u64::MAX, Duration::MAX).len(), 2);
    }

    #[tokio::test]
    async fn rotate_refuses_an_invalid_ring_and_an_out_of_range_clock_writing_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileKeyStore::new(dir.path());
        let path = store.path().to_path_buf();
        let mut key = good(SigningAlgorithm::ES256, 1000);
        key["note"] = json!("hand edit");
        let text = json!({ "keys": [key] }).to_string();
        std::fs::write(&path, &text).unwrap();
        let lead = Duration::from_secs(600);
        let e = rotate(&store, SigningAlgorithm::ES256, 2000, lead, TTL)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("unknown field `note`"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        let e = load_valid(&store).await.unwrap_err();
        assert!(e.to_string().contains("unknown field `note`"), "{e}");

        // A clock (or lead) that puts the new key past year 9999.
        std::fs::remove_file(&path).unwrap();
        rotate(&store, SigningAlgorithm::ES256, 1000, lead, TTL)
            .await
            .unwrap();
        let before = std::fs::read(&path).unwrap();
        for (now, lead) in [(MAX_TIMESTAMP, lead), (2000, Duration::MAX)] {
            let e = rotate(&store, SigningAlgorithm::ES256, now, lead, TTL)
                .await
                .unwrap_err();
            assert!(matches!(e, KeyringError::Timestamp { .. }), "{e:?}");
        }
        assert_eq!(std::fs::read(&path).unwrap(), before, "nothing written");
    }

    #[tokio::test]
    async fn serve_keeps_the_last_good_ring_until_max_stale_and_names_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FileKeyStore::new(dir.path()));
        let lead = Duration::from_secs(600);
        let (kid, _) = rotate(store.as_ref(), SigningAlgorithm::ES256, 1000, lead, TTL)
            .await
            .unwrap();
        let max_stale = Duration::from_millis(300);
        let metrics = Arc::new(Metrics::new());
        let ring = Keyring::new(store.clone(), TTL, Some(max_stale), metrics);
        ring.refresh(1000).await.unwrap();
        assert!(ring.health().last_error.is_none());

        let path = store.path().to_path_buf();
        let mut stored: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        stored["keys"][0]["comment"] = json!("rotated by hand");
        std::fs::write(&path, stored.to_string()).unwrap();
        for now in [1001, 1002] {
            assert!(ring.refresh(now).await.is_err());
            assert_eq!(
                ring.signer(now).unwrap().key.kid,
                kid,
                "last good ring signs"
            );
            assert!(ring.jwks(now).to_string().contains(&kid));
            let error = ring.health().last_error.clone().unwrap();
            assert!(error.contains("unknown field `comment`"), "{error}");
        }
        // As for an unreachable store: no signing once the last good read is stale.
        tokio::time::sleep(max_stale + Duration::from_millis(50)).await;
        assert!(ring.signer(1003).is_none());
        assert!(
            ring.jwks(1003).to_string().contains(&kid),
            "still published"
        );

        // Fixed: signing again at the next refresh.
        stored["keys"][0].as_object_mut().unwrap().remove("comment");
        std::fs::write(&path, stored.to_string()).unwrap();
        ring.refresh(1004).await.unwrap();
        assert_eq!(ring.signer(1004).unwrap().key.kid, kid);
        assert!(ring.health().last_error.is_none());
    }
}

#[cfg(test)]
mod private_files {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_never_follow_a_planted_link_nor_keep_a_loose_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing-keys.json");
        // An attacker's symlinks at the names a predictable writer would use, and a
        // group-readable file already in place.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        for planted in ["signing-keys.tmp", ".signing-keys.json.tmp"] {
            std::os::unix::fs::symlink(&victim, dir.path().join(planted)).unwrap();
        }
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();

        write_private_file(&path, b"{\"keys\":[]}").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"keys\":[]}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(check_private_file(&path), Ok(()));
        // No temporary file is left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| {
                n.ends_with(".tmp")
                    && !n.starts_with("signing-keys")
                    && n != ".signing-keys.json.tmp"
            })
            .collect();
        assert!(left.is_empty(), "{left:?}");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = check_private_file(&path).unwrap_err();
        assert!(e.contains("chmod 600") && e.contains("0640"), "{e}");
        assert_eq!(check_private_file(&dir.path().join("missing")), Ok(()));
    }
}
