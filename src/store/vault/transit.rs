//! Signing keys that never leave Vault: the Transit secrets engine holds the private
//! key, the STS holds its versions' public keys and asks Transit for each signature.
//!
//! `GET <mount>/keys/<key>` lists the versions Transit still has (each with its
//! public key, a PEM SubjectPublicKeyInfo for `ecdsa-p256`, base64 for `ed25519`, and
//! its `creation_time`); the keyring builds the JWKS from them and decides which
//! version signs (see `keys`). `POST <mount>/sign/<key>` signs one JWS signing input
//! with an explicit `key_version` and `marshaling_algorithm = "jws"` (ECDSA `R || S`,
//! base64url), so the signature is the JWS signature as is. A sign is not retried on
//! a 5xx (the request it is for answers 503 at once, the client retries); the 403
//! rules of the client apply as to any call.
//!
//! Concurrent signs are coalesced into Transit batch requests (`batch_input`): a sign
//! goes out at once when fewer than [`MAX_IN_FLIGHT`] requests are waiting on Vault;
//! while they all are, the signs that arrive queue and leave together, up to
//! [`MAX_BATCH`] per request, as soon as one returns. So an idle STS adds no wait at all,
//! a loaded one waits at most for one request in flight, and Vault sees one request
//! per batch instead of one per token.
//!
//! Nothing here logs or returns a response body: errors are the client's
//! [`VaultError`] descriptions.

use std::sync::{Arc, OnceLock};

use tokio::sync::{Semaphore, mpsc, oneshot};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use super::{Vault, VaultError};
use crate::keys::signing_key::{KeyMaterialError, RemoteSign, SigningAlgorithm};
use crate::keys::{
    KeyStoreError, RemoteKeySet, RemoteKeys, RemoteRotation, RemoteVersion, printable,
};

/// The fixed DER prefix of a P-256 SubjectPublicKeyInfo (id-ecPublicKey, prime256v1,
/// a 65-byte uncompressed point in the BIT STRING).
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Sign requests to Transit in flight at once; more signs queue and are batched.
pub const MAX_IN_FLIGHT: usize = 2;

/// Signs in one batch request at most.
pub const MAX_BATCH: usize = 128;

/// Signs waiting for the batcher at most; beyond, a sign fails at once (503).
const QUEUE: usize = 8192;

/// One sign waiting for its batch.
struct Job {
    version: u64,
    message: Vec<u8>,
    reply: oneshot::Sender<Result<Vec<u8>, KeyMaterialError>>,
}

/// A Transit key: `<mount>/keys/<key>`.
pub struct TransitKeys {
    signer: Arc<Signer>,
    /// The batcher's queue, started by the first sign.
    queue: OnceLock<mpsc::Sender<Job>>,
    vault: Arc<Vault>,
    mount: String,
    key: String,
}

impl std::fmt::Debug for TransitKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransitKeys")
            .field("mount", &self.mount)
            .field("key", &self.key)
            .finish()
    }
}

/// What the batcher signs with.
struct Signer {
    vault: Arc<Vault>,
    path: String,
}

impl Signer {
    fn failed(e: &VaultError) -> KeyMaterialError {
        KeyMaterialError::Remote {
            transient: matches!(e, VaultError::Unavailable | VaultError::Sealed),
            reason: e.to_string(),
        }
    }

    fn malformed() -> KeyMaterialError {
        KeyMaterialError::Remote {
            reason: "vault transit answered something that is not a signature".into(),
            transient: false,
        }
    }

    /// One sign request: a single input, or a batch of them, all with `version`.
    async fn sign(
        &self,
        version: u64,
        messages: &[&[u8]],
    ) -> Vec<Result<Vec<u8>, KeyMaterialError>> {
        let mut body = json!({
            "key_version": version,
            "marshaling_algorithm": "jws",
            "hash_algorithm": "sha2-256",
        });
        if let [one] = messages {
            body["input"] = json!(STANDARD.encode(one));
        } else {
            body["batch_input"] = messages
                .iter()
                .map(|m| json!({ "input": STANDARD.encode(m) }))
                .collect();
        }
        let answer = match self
            .vault
            .call_with(reqwest::Method::POST, &self.path, Some(&body), false)
            .await
        {
            Ok(answer) => answer,
            Err(e) => return messages.iter().map(|_| Err(Self::failed(&e))).collect(),
        };
        let data = answer.get("data");
        if messages.len() == 1 {
            return vec![
                data.and_then(|d| parse_signature(d, version))
                    .ok_or_else(Self::malformed),
            ];
        }
        let results = data
            .and_then(|d| d.get("batch_results"))
            .and_then(Value::as_array)
            .filter(|r| r.len() == messages.len());
        match results {
            Some(results) => results
                .iter()
                .map(|r| parse_signature(r, version).ok_or_else(Self::malformed))
                .collect(),
            None => messages.iter().map(|_| Err(Self::malformed())).collect(),
        }
    }

    /// Signs `jobs` (grouped by version, one request per group) and answers each.
    async fn run(&self, jobs: Vec<Job>) {
        let mut versions: Vec<u64> = jobs.iter().map(|j| j.version).collect();
        versions.sort_unstable();
        versions.dedup();
        let mut jobs: Vec<Option<Job>> = jobs.into_iter().map(Some).collect();
        for version in versions {
            let group: Vec<Job> = jobs
                .iter_mut()
                .filter(|j| j.as_ref().is_some_and(|j| j.version == version))
                .filter_map(Option::take)
                .collect();
            let messages: Vec<&[u8]> = group.iter().map(|j| j.message.as_slice()).collect();
            let results = self.sign(version, &messages).await;
            for (job, result) in group.into_iter().zip(results) {
                let _ = job.reply.send(result);
            }
        }
    }
}

/// The batcher: takes a free slot, then everything queued (up to [`MAX_BATCH`]), and
/// signs it in the background; ends when the key is dropped.
async fn batch_loop(signer: Arc<Signer>, mut queue: mpsc::Receiver<Job>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let signer = signer.clone();
        tokio::spawn(async move {
            signer.run(jobs).await;
            drop(slot);
        });
    }
}

impl TransitKeys {
    pub fn new(vault: Arc<Vault>, mount: impl Into<String>, key: impl Into<String>) -> Self {
        let (mount, key) = (mount.into(), key.into());
        TransitKeys {
            signer: Arc::new(Signer {
                vault: vault.clone(),
                path: format!("{mount}/sign/{key}"),
            }),
            queue: OnceLock::new(),
            vault,
            mount,
            key,
        }
    }

    fn read_error(&self, e: &VaultError) -> KeyStoreError {
        KeyStoreError::Read {
            location: RemoteKeys::location(self),
            reason: e.to_string(),
        }
    }
}

/// The Transit key type of an algorithm.
fn transit_type(algorithm: SigningAlgorithm) -> &'static str {
    match algorithm {
        SigningAlgorithm::ES256 => "ecdsa-p256",
        SigningAlgorithm::EdDSA => "ed25519",
    }
}

/// The raw public key of one version: the uncompressed point of a P-256 SPKI PEM, or
/// the 32 bytes of an Ed25519 key.
fn raw_public_key(algorithm: SigningAlgorithm, text: &str) -> Option<Vec<u8>> {
    match algorithm {
        SigningAlgorithm::ES256 => {
            let parsed = pem::parse(text).ok()?;
            let der = parsed.contents();
            (parsed.tag() == "PUBLIC KEY"
                && der.len() == P256_SPKI_PREFIX.len() + 65
                && der.starts_with(&P256_SPKI_PREFIX))
            .then(|| der[P256_SPKI_PREFIX.len()..].to_vec())
        }
        SigningAlgorithm::EdDSA => STANDARD.decode(text.trim()).ok().filter(|k| k.len() == 32),
    }
}

/// Parses the data of a `GET <mount>/keys/<key>` answer. A key of another type, or
/// a version whose public key or creation time does not parse, is refused whole.
fn parse_key_info(data: &Value) -> Result<RemoteKeySet, String> {
    let algorithm = match data.get("type").and_then(Value::as_str) {
        Some("ecdsa-p256") => SigningAlgorithm::ES256,
        Some("ed25519") => SigningAlgorithm::EdDSA,
        Some(other) => {
            return Err(format!(
                "the key's type is {}, not ecdsa-p256 or ed25519",
                printable(other).unwrap_or("(not shown)")
            ));
        }
        None => return Err("the key info has no type".into()),
    };
    if data.get("supports_signing") == Some(&Value::Bool(false)) {
        return Err("the key does not support signing".into());
    }
    let Some(Value::Object(keys)) = data.get("keys") else {
        return Err("the key info has no versions".into());
    };
    let mut versions = Vec::with_capacity(keys.len());
    for (number, info) in keys {
        let version: u64 = number
            .parse()
            .map_err(|_| "a version number does not parse".to_string())?;
        let bad = |what: &str| format!("version {version}: {what} does not parse");
        let public_key = info
            .get("public_key")
            .and_then(Value::as_str)
            .and_then(|t| raw_public_key(algorithm, t))
            .ok_or_else(|| bad("its public key"))?;
        let created_at = info
            .get("creation_time")
            .and_then(Value::as_str)
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .ok_or_else(|| bad("its creation_time"))?;
        versions.push(RemoteVersion {
            version,
            public_key,
            created_at,
        });
    }
    if versions.is_empty() {
        return Err("the key info has no versions".into());
    }
    versions.sort_by_key(|v| v.version);
    Ok(RemoteKeySet {
        algorithm,
        versions,
    })
}

/// The signature bytes of a Transit `vault:vN:<base64url>` answer for `version`.
fn parse_signature(data: &Value, version: u64) -> Option<Vec<u8>> {
    let text = data.get("signature").and_then(Value::as_str)?;
    let rest = text.strip_prefix("vault:v")?;
    let (number, encoded) = rest.split_once(':')?;
    if number.parse::<u64>().ok()? != version {
        return None;
    }
    URL_SAFE_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .ok()
        .or_else(|| STANDARD.decode(encoded).ok())
}

#[async_trait::async_trait]
impl RemoteSign for TransitKeys {
    async fn sign(&self, version: u64, message: &[u8]) -> Result<Vec<u8>, KeyMaterialError> {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(batch_loop(self.signer.clone(), rx));
            tx
        });
        let (reply, answer) = oneshot::channel();
        let job = Job {
            version,
            message: message.to_vec(),
            reply,
        };
        let busy = || KeyMaterialError::Remote {
            reason: "too many signs waiting for vault transit".into(),
            transient: true,
        };
        queue.try_send(job).map_err(|_| busy())?;
        answer.await.map_err(|_| busy())?
    }
}

#[async_trait::async_trait]
impl RemoteKeys for TransitKeys {
    fn location(&self) -> String {
        format!("vault transit {}/keys/{}", self.mount, self.key)
    }

    async fn versions(&self) -> Result<Option<RemoteKeySet>, KeyStoreError> {
        let path = format!("{}/keys/{}", self.mount, self.key);
        let answer = self
            .vault
            .call(reqwest::Method::GET, &path, None)
            .await
            .map_err(|e| self.read_error(&e))?;
        if answer.is_null() {
            return Ok(None);
        }
        let data = answer.get("data").ok_or_else(|| KeyStoreError::Read {
            location: RemoteKeys::location(self),
            reason: VaultError::Malformed.to_string(),
        })?;
        parse_key_info(data)
            .map(Some)
            .map_err(|reason| KeyStoreError::Read {
                location: RemoteKeys::location(self),
                reason,
            })
    }

    async fn rotate(&self, algorithm: SigningAlgorithm) -> Result<RemoteRotation, KeyStoreError> {
        let write_err = |e: VaultError| KeyStoreError::Write {
            location: RemoteKeys::location(self),
            reason: e.to_string(),
        };
        match self.versions().await? {
            None => {
                let path = format!("{}/keys/{}", self.mount, self.key);
                self.vault
                    .call(
                        reqwest::Method::POST,
                        &path,
                        Some(&json!({ "type": transit_type(algorithm) })),
                    )
                    .await
                    .map_err(write_err)?;
                Ok(RemoteRotation::Created)
            }
            Some(set) if set.algorithm != algorithm => Err(KeyStoreError::Write {
                location: RemoteKeys::location(self),
                reason: format!(
                    "the key is {} ({}), but tokens.algorithm is {}",
                    transit_type(set.algorithm),
                    set.algorithm.as_str(),
                    algorithm.as_str()
                ),
            }),
            Some(_) => {
                let path = format!("{}/keys/{}/rotate", self.mount, self.key);
                self.vault
                    .call(reqwest::Method::POST, &path, Some(&json!({})))
                    .await
                    .map_err(write_err)?;
                Ok(RemoteRotation::Rotated)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn parses_the_key_info_openbao_answers() {
        let data = json!({
            "type": "ecdsa-p256",
            "supports_signing": true,
            "latest_version": 2,
            "keys": {
                "1": {"creation_time": "2026-11-30T22:50:17.113545208Z", "name": "P-256",
                      "public_key": "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEQgzPxAc3RSIuf1kFL70S8YzRvqad\nnhjfEotN7pLUXjvGQQMmNoZWrfhFcf08IByoV9SQhk9OT6xcnp/HsYR1vg==\n-----END PUBLIC KEY-----\n"},
                "2": {"creation_time": "2026-11-30T22:50:17.783627628Z", "name": "P-256",
                      "public_key": "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAExHUs6zPtAXnD5SEAi0WlnD0cYjyt\nJTA18sDfPll+VsgBlu1oqP3W2spftwbGsRQCwHdp84FQu9nZmn2DnqM1BA==\n-----END PUBLIC KEY-----\n"}
            }
        });
        let set = parse_key_info(&data).unwrap();
        assert_eq!(set.algorithm, SigningAlgorithm::ES256);
        assert_eq!(set.versions.len(), 2);
        assert_eq!(set.versions[0].version, 1);
        assert_eq!(set.versions[0].public_key.len(), 65);
        assert_eq!(set.versions[0].created_at, 1_796_079_017);

        let ed = json!({"type": "ed25519", "keys": {"1": {
            "creation_time": "2026-11-30T22:50:17.433371829Z",
            "public_key": "B8b+7XbFiuDJPVq8CtlxYg3r0vXoD4k1M//qrNh5MFk="}}});
        let set = parse_key_info(&ed).unwrap();
        assert_eq!(set.algorithm, SigningAlgorithm::EdDSA);
        assert_eq!(set.versions[0].public_key.len(), 32);

        let aes = json!({"type": "aes256-gcm96", "keys": {"1": 1700000000}});
        assert!(parse_key_info(&aes).unwrap_err().contains("aes256-gcm96"));
    }

    #[test]
    fn a_signature_must_name_the_version_asked_for() {
        let data = json!({"signature": "vault:v2:AAEC"});
        assert_eq!(parse_signature(&data, 2), Some(vec![0, 1, 2]));
        assert_eq!(parse_signature(&data, 1), None);
        assert_eq!(parse_signature(&json!({"signature": "AAEC"}), 2), None);
    }
}
