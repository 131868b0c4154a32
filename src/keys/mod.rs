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
//! The running STS re-reads the store every `refresh_interval`. A new ring is accepted
//! only when every key in it parses and passes its self-test; otherwise the last good
//! ring stays, the failure is logged and counted, and `/readyz` says why. Keys already
//! loaded are reused by kid, so a refresh costs one read and no crypto for known keys.
//! The current ring is published through `ArcSwap`: the hot path takes no lock.
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

use crate::keys::signing_key::{KeyMaterialError, SigningKey};
use crate::secret::PrivateKeyPem;
use crate::telemetry::metrics::Metrics;
use signing_key::SigningAlgorithm;

/// Margin added to `max_ttl` before a retiring key is removed, for clock skew between
/// replicas and verifiers.
pub const REMOVAL_MARGIN: Duration = Duration::from_secs(60);

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

impl StoredRing {
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
    #[error("key store {location}: malformed keyring: {reason}")]
    Malformed { location: String, reason: String },
    #[error("key store {location}: cannot write: {reason}")]
    Write { location: String, reason: String },
    #[error("key store {location}: changed since it was read; retry")]
    Conflict { location: String },
}

/// Where the keyring lives: the file store here; Vault implements it in `store::vault`.
#[async_trait::async_trait]
pub trait KeyStore: Send + Sync + std::fmt::Debug {
    /// Reads the ring and its version.
    async fn load(&self) -> Result<(StoredRing, StoreVersion), KeyStoreError>;
    /// Writes the ring if the store still holds `expected` (check-and-set).
    async fn save(&self, ring: &StoredRing, expected: &StoreVersion) -> Result<(), KeyStoreError>;
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

fn version_of(bytes: &[u8]) -> StoreVersion {
    StoreVersion(hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        bytes,
    )))
}

#[async_trait::async_trait]
impl KeyStore for FileKeyStore {
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
        let ring = serde_json::from_slice(&bytes).map_err(|e| KeyStoreError::Malformed {
            location: self.location(),
            // serde_json's message names the line and column, never the value.
            reason: format!(
                "line {} column {}: {:?}",
                e.line(),
                e.column(),
                e.classify()
            ),
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
    let keep = max_ttl.as_secs() + REMOVAL_MARGIN.as_secs();
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

/// Why a ring was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error(transparent)]
    Store(#[from] KeyStoreError),
    #[error("key {kid}: {source}")]
    BadKey {
        kid: String,
        source: KeyMaterialError,
    },
    #[error("duplicate kid {kid}")]
    DuplicateKid { kid: String },
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
    store: Arc<dyn KeyStore>,
    current: ArcSwap<Vec<Arc<LoadedKey>>>,
    health: ArcSwap<RingHealth>,
    max_ttl: Duration,
    /// When set, keys stop signing this long after the last successful read.
    max_stale: Option<Duration>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("store", &self.store)
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
        Keyring {
            store,
            current: ArcSwap::from_pointee(Vec::new()),
            health: ArcSwap::from_pointee(RingHealth {
                last_success: None,
                last_error: Some("keyring not read yet".into()),
            }),
            max_ttl,
            max_stale,
            metrics,
        }
    }

    /// Re-reads the store. On success the new ring is live; on failure the last good
    /// ring stays and the reason is recorded.
    pub async fn refresh(&self, now: u64) -> Result<usize, KeyringError> {
        match self.read_ring(now).await {
            Ok(keys) => {
                let n = keys.len();
                let published = self.published(&keys, now).len();
                self.metrics.signing_keys.set(published as i64);
                self.current.store(Arc::new(keys));
                self.health.store(Arc::new(RingHealth {
                    last_success: Some(Instant::now()),
                    last_error: None,
                }));
                Ok(n)
            }
            Err(e) => {
                self.metrics.keyring_refresh_failures.inc();
                tracing::error!(error = %e, "keyring refresh failed; keeping the last good keyring");
                let last_success = self.health.load().last_success;
                self.health.store(Arc::new(RingHealth {
                    last_success,
                    last_error: Some(e.to_string()),
                }));
                Err(e)
            }
        }
    }

    async fn read_ring(&self, now: u64) -> Result<Vec<Arc<LoadedKey>>, KeyringError> {
        let (ring, _) = self.store.load().await?;
        let states = ring.states(now, self.max_ttl);
        let known = self.current.load();
        let mut keys: Vec<Arc<LoadedKey>> = Vec::new();
        for (stored, state) in ring.keys.iter().zip(states) {
            if state == KeyState::Removed {
                continue;
            }
            if keys.iter().any(|k| k.key.kid == stored.kid) {
                return Err(KeyringError::DuplicateKid {
                    kid: stored.kid.clone(),
                });
            }
            let print = fingerprint(stored);
            if let Some(k) = known.iter().find(|k| k.fingerprint == print) {
                keys.push(k.clone());
                continue;
            }
            let bad = |source| KeyringError::BadKey {
                kid: stored.kid.clone(),
                source,
            };
            let key = SigningKey::from_pem(stored.alg, &stored.private_key).map_err(bad)?;
            key.self_test(&stored.kid, stored.public_jwk.as_ref())
                .map_err(bad)?;
            keys.push(Arc::new(LoadedKey {
                key,
                created_at: stored.created_at,
                activates_at: stored.activates_at,
                fingerprint: print,
            }));
        }
        keys.sort_by_key(|k| k.activates_at);
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

    /// The key that signs at `now`: the latest activated one, if the ring is fresh.
    pub fn signer(&self, now: u64) -> Option<Arc<LoadedKey>> {
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
}

/// States of every stored key at `now` (no key material).
pub fn list(ring: &StoredRing, now: u64, max_ttl: Duration) -> Vec<KeyListing> {
    let states = ring.states(now, max_ttl);
    let mut rows: Vec<KeyListing> = ring
        .keys
        .iter()
        .zip(states)
        .map(|(k, state)| KeyListing {
            kid: k.kid.clone(),
            alg: k.alg,
            state,
            created_at: k.created_at,
            activates_at: k.activates_at,
        })
        .collect();
    rows.sort_by_key(|r| r.activates_at);
    rows
}

/// `keys rotate`: prunes removed keys and adds a new one: `active` at once on an empty
/// ring, else `next`, activating after `publish_lead`. Returns the new key's kid.
pub async fn rotate(
    store: &dyn KeyStore,
    algorithm: SigningAlgorithm,
    now: u64,
    publish_lead: Duration,
    max_ttl: Duration,
) -> Result<(String, KeyState), KeyringError> {
    let (mut ring, version) = store.load().await?;
    let states = ring.states(now, max_ttl);
    let mut states = states.into_iter();
    ring.keys
        .retain(|_| states.next() != Some(KeyState::Removed));
    let (key, pem) = SigningKey::generate(algorithm).map_err(|source| KeyringError::BadKey {
        kid: "(new)".into(),
        source,
    })?;
    let (activates_at, state) = if ring.keys.is_empty() {
        (now, KeyState::Active)
    } else {
        // `now` is truncated to the second: one more second keeps the full lead.
        (now + publish_lead.as_secs() + 1, KeyState::Next)
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
