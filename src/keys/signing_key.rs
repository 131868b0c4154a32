//! One signing key: generation, parsing from PKCS#8 PEM, its public JWK and RFC 7638
//! thumbprint, the self-test every key passes before it is published, and compact-JWS
//! signing.
//!
//! A key is either held here (a parsed key pair: signing is a local, synchronous
//! call) or held elsewhere ([`RemoteSign`], Vault Transit: only the public key and a
//! version number are here, and signing is a request). The remote kind signs only
//! through [`SigningKey::sign_compact_async`], and every signature it gets back is
//! verified under the key's published public key before it is used: a signature
//! that would not verify downstream never leaves the STS.
//!
//! Keys are parsed once into aws-lc-rs key pairs and kept parsed: signing with a
//! pre-parsed pair avoids re-decoding PKCS#8 (and re-deriving the public point) on every
//! token, which the `mint` benchmark shows is most of the cost of signing through
//! `jsonwebtoken::encode`. Verification of our own tokens (the self-test, the verifier
//! library, the tests) goes through `jsonwebtoken`, so every key is checked by an
//! implementation other than the one that signs.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::secret::PrivateKeyPem;

/// What the self-test signs.
const SELF_TEST_PROBE: &[u8] = b"agent-sts key self-test";

/// `BASE64URL(header) . BASE64URL(claims)`: the JWS signing input (RFC 7515 §5.1).
fn signing_input(header: &[u8], claims: &[u8]) -> String {
    let mut out = String::with_capacity((header.len() + claims.len()) * 4 / 3 + 100);
    URL_SAFE_NO_PAD.encode_string(header, &mut out);
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(claims, &mut out);
    out
}

/// Algorithms the STS signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SigningAlgorithm {
    ES256,
    EdDSA,
}

impl SigningAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlgorithm::ES256 => "ES256",
            SigningAlgorithm::EdDSA => "EdDSA",
        }
    }
}

/// Why a key cannot be used. Never carries key material.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KeyMaterialError {
    #[error("private key is not PKCS#8 PEM")]
    NotPem,
    #[error("private key does not parse for {0}")]
    Unparsable(&'static str),
    #[error("stored public key does not match the private key")]
    PublicMismatch,
    #[error("kid is not the RFC 7638 thumbprint of the key")]
    KidMismatch,
    #[error("self-test signature did not verify")]
    SelfTestFailed,
    #[error("key generation failed")]
    Generate,
    #[error("signing failed")]
    Sign,
    /// The remote signer refused or could not be reached; `transient` when it was
    /// unreachable, sealed or slow (the store's staleness rule applies), not when
    /// it answered with a refusal (a deleted key, a disabled version, a policy).
    #[error("remote signing failed: {reason}")]
    Remote { reason: String, transient: bool },
    #[error("the remote signature does not verify under the published key")]
    RemoteMismatch,
    #[error("this key signs remotely (use the async signer)")]
    NotLocal,
}

/// A signer that holds the private key elsewhere (Vault Transit) and signs one
/// message with one version of its key, returning the raw JWS signature bytes
/// (`R || S` for ES256, 64 bytes for Ed25519).
#[async_trait::async_trait]
pub trait RemoteSign: Send + Sync + std::fmt::Debug {
    async fn sign(&self, version: u64, message: &[u8]) -> Result<Vec<u8>, KeyMaterialError>;
}

/// One version of a remote key.
struct RemoteKey {
    backend: std::sync::Arc<dyn RemoteSign>,
    version: u64,
    /// The public key, to verify what the remote signer returns.
    verify: aws_lc_rs::signature::UnparsedPublicKey<Vec<u8>>,
}

enum Pair {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
    Remote(RemoteKey),
}

/// The public JWK members (`kty`, `crv`, `x`, `y`) of a raw public key: an
/// uncompressed P-256 point (65 bytes) or an Ed25519 key (32 bytes).
fn public_members(algorithm: SigningAlgorithm, raw: &[u8]) -> Result<Value, KeyMaterialError> {
    match algorithm {
        SigningAlgorithm::ES256 => {
            if raw.len() != 65 || raw[0] != 4 {
                return Err(KeyMaterialError::Unparsable("ES256"));
            }
            Ok(json!({
                "crv": "P-256",
                "kty": "EC",
                "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
            }))
        }
        SigningAlgorithm::EdDSA => {
            if raw.len() != 32 {
                return Err(KeyMaterialError::Unparsable("EdDSA"));
            }
            Ok(json!({
                "crv": "Ed25519",
                "kty": "OKP",
                "x": URL_SAFE_NO_PAD.encode(raw),
            }))
        }
    }
}

/// The published JWK and kid of the public members `jwk`.
fn complete_jwk(
    algorithm: SigningAlgorithm,
    mut jwk: Value,
) -> Result<(Value, String), KeyMaterialError> {
    // RFC 7638 §3: the thumbprint hashes the required members in lexicographic
    // order with no whitespace; serde_json's map keeps keys sorted.
    let canonical = serde_json::to_vec(&jwk).map_err(|_| KeyMaterialError::Unparsable("jwk"))?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &canonical);
    let kid = URL_SAFE_NO_PAD.encode(digest.as_ref());
    if let Value::Object(map) = &mut jwk {
        map.insert("kid".into(), Value::String(kid.clone()));
        map.insert("alg".into(), Value::String(algorithm.as_str().into()));
        map.insert("use".into(), Value::String("sig".into()));
    }
    Ok((jwk, kid))
}

/// A parsed private key with its public JWK and kid.
pub struct SigningKey {
    pub kid: String,
    pub algorithm: SigningAlgorithm,
    /// The public JWK as published (`kty`, `crv`, `x`, `y`, `kid`, `alg`, `use`).
    pub public_jwk: Value,
    pair: Pair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("private", &"[redacted]")
            .finish()
    }
}

impl SigningKey {
    /// Generates a fresh key; returns it with its PEM for storage.
    pub fn generate(
        algorithm: SigningAlgorithm,
    ) -> Result<(SigningKey, PrivateKeyPem), KeyMaterialError> {
        let rng = SystemRandom::new();
        let der = match algorithm {
            SigningAlgorithm::ES256 => {
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| KeyMaterialError::Generate)?
            }
            SigningAlgorithm::EdDSA => {
                Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyMaterialError::Generate)?
            }
        };
        let pem = PrivateKeyPem::new(pem::encode(&pem::Pem::new(
            "PRIVATE KEY",
            der.as_ref().to_vec(),
        )));
        let key = SigningKey::from_pem(algorithm, &pem)?;
        Ok((key, pem))
    }

    /// Parses a PKCS#8 PEM private key; the kid is its RFC 7638 thumbprint.
    pub fn from_pem(
        algorithm: SigningAlgorithm,
        pem: &PrivateKeyPem,
    ) -> Result<SigningKey, KeyMaterialError> {
        let parsed = pem::parse(pem.expose()).map_err(|_| KeyMaterialError::NotPem)?;
        if parsed.tag() != "PRIVATE KEY" {
            return Err(KeyMaterialError::NotPem);
        }
        let der = parsed.contents();
        let (pair, members) = match algorithm {
            SigningAlgorithm::ES256 => {
                let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .map_err(|_| KeyMaterialError::Unparsable("ES256"))?;
                let members = public_members(algorithm, pair.public_key().as_ref())?;
                (Pair::Es256(pair), members)
            }
            SigningAlgorithm::EdDSA => {
                let pair = Ed25519KeyPair::from_pkcs8(der)
                    .map_err(|_| KeyMaterialError::Unparsable("EdDSA"))?;
                let members = public_members(algorithm, pair.public_key().as_ref())?;
                (Pair::EdDsa(pair), members)
            }
        };
        let (jwk, kid) = complete_jwk(algorithm, members)?;
        Ok(SigningKey {
            kid,
            algorithm,
            public_jwk: jwk,
            pair,
        })
    }

    /// Version `version` of a key held by `backend`, whose raw public key is `raw`
    /// (an uncompressed P-256 point, or 32 Ed25519 bytes); the kid is its RFC 7638
    /// thumbprint, as for a local key.
    pub fn remote(
        algorithm: SigningAlgorithm,
        raw: &[u8],
        backend: std::sync::Arc<dyn RemoteSign>,
        version: u64,
    ) -> Result<SigningKey, KeyMaterialError> {
        let members = public_members(algorithm, raw)?;
        let (jwk, kid) = complete_jwk(algorithm, members)?;
        let verify_alg: &'static dyn aws_lc_rs::signature::VerificationAlgorithm = match algorithm {
            SigningAlgorithm::ES256 => &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            SigningAlgorithm::EdDSA => &aws_lc_rs::signature::ED25519,
        };
        Ok(SigningKey {
            kid,
            algorithm,
            public_jwk: jwk,
            pair: Pair::Remote(RemoteKey {
                backend,
                version,
                verify: aws_lc_rs::signature::UnparsedPublicKey::new(verify_alg, raw.to_vec()),
            }),
        })
    }

    /// Whether signing is a request to a remote signer (use the async signers).
    pub fn is_remote(&self) -> bool {
        matches!(self.pair, Pair::Remote(_))
    }

    /// The remote key's version, when it is one.
    pub fn remote_version(&self) -> Option<u64> {
        match &self.pair {
            Pair::Remote(r) => Some(r.version),
            _ => None,
        }
    }

    /// Signs `message` (the JWS signing input) and returns the base64url signature.
    /// A remote key cannot sign here ([`KeyMaterialError::NotLocal`]).
    pub fn sign(&self, message: &[u8]) -> Result<String, KeyMaterialError> {
        let signature = match &self.pair {
            Pair::Es256(p) => p
                .sign(&SystemRandom::new(), message)
                .map_err(|_| KeyMaterialError::Sign)?
                .as_ref()
                .to_vec(),
            Pair::EdDsa(p) => p.sign(message).as_ref().to_vec(),
            Pair::Remote(_) => return Err(KeyMaterialError::NotLocal),
        };
        Ok(URL_SAFE_NO_PAD.encode(signature))
    }

    /// Signs `message` locally, or through the remote signer; a remote signature is
    /// verified under the public key before it is returned.
    pub async fn sign_async(&self, message: &[u8]) -> Result<String, KeyMaterialError> {
        let Pair::Remote(remote) = &self.pair else {
            return self.sign(message);
        };
        let signature = remote.backend.sign(remote.version, message).await?;
        remote
            .verify
            .verify(message, &signature)
            .map_err(|_| KeyMaterialError::RemoteMismatch)?;
        Ok(URL_SAFE_NO_PAD.encode(signature))
    }

    /// [`SigningKey::sign_compact`] for any key, local or remote.
    pub async fn sign_compact_async(
        &self,
        header: &[u8],
        claims: &[u8],
    ) -> Result<String, KeyMaterialError> {
        if !self.is_remote() {
            return self.sign_compact(header, claims);
        }
        let mut out = signing_input(header, claims);
        let signature = self.sign_async(out.as_bytes()).await?;
        out.push('.');
        out.push_str(&signature);
        Ok(out)
    }

    /// Signs a compact JWS with `header` and `claims` (both JSON objects).
    pub fn sign_compact(&self, header: &[u8], claims: &[u8]) -> Result<String, KeyMaterialError> {
        let mut out = signing_input(header, claims);
        let signature = self.sign(out.as_bytes())?;
        out.push('.');
        out.push_str(&signature);
        Ok(out)
    }

    /// The self-test a key passes before it is published: the expected kid and public
    /// JWK (when stored) match what the private key derives, and a probe signed with it
    /// verifies under `jsonwebtoken` with the public JWK alone.
    pub fn self_test(
        &self,
        expected_kid: &str,
        stored_public: Option<&Value>,
    ) -> Result<(), KeyMaterialError> {
        if self.kid != expected_kid {
            return Err(KeyMaterialError::KidMismatch);
        }
        if let Some(stored) = stored_public {
            for member in ["kty", "crv", "x", "y"] {
                if stored.get(member) != self.public_jwk.get(member) {
                    return Err(KeyMaterialError::PublicMismatch);
                }
            }
        }
        let signature = self.sign(SELF_TEST_PROBE)?;
        self.check_probe(&signature)
    }

    /// The self-test of a remote key: the expected kid, and a probe signed by the
    /// remote signer verifies under `jsonwebtoken` with the public JWK alone.
    pub async fn self_test_async(&self, expected_kid: &str) -> Result<(), KeyMaterialError> {
        if self.kid != expected_kid {
            return Err(KeyMaterialError::KidMismatch);
        }
        let signature = self.sign_async(SELF_TEST_PROBE).await?;
        self.check_probe(&signature)
    }

    fn check_probe(&self, signature: &str) -> Result<(), KeyMaterialError> {
        let probe = SELF_TEST_PROBE;
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(self.public_jwk.clone())
            .map_err(|_| KeyMaterialError::SelfTestFailed)?;
        let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk)
            .map_err(|_| KeyMaterialError::SelfTestFailed)?;
        let alg = match self.algorithm {
            SigningAlgorithm::ES256 => jsonwebtoken::Algorithm::ES256,
            SigningAlgorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
        };
        match jsonwebtoken::crypto::verify(signature, probe, &decoding, alg) {
            Ok(true) => Ok(()),
            _ => Err(KeyMaterialError::SelfTestFailed),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn generated_keys_pass_the_self_test_and_never_print() {
        for alg in [SigningAlgorithm::ES256, SigningAlgorithm::EdDSA] {
            let (key, pem) = SigningKey::generate(alg).unwrap();
            key.self_test(&key.kid, Some(&key.public_jwk)).unwrap();
            let again = SigningKey::from_pem(alg, &pem).unwrap();
            assert_eq!(again.kid, key.kid);
            let debug = format!("{key:?}");
            let body = pem.expose().lines().nth(1).unwrap();
            assert!(!debug.contains(body));
            assert_eq!(key.kid.len(), 43);
        }
    }

    #[test]
    fn mismatches_are_caught() {
        let (a, _) = SigningKey::generate(SigningAlgorithm::ES256).unwrap();
        let (b, _) = SigningKey::generate(SigningAlgorithm::ES256).unwrap();
        assert_eq!(
            a.self_test(&b.kid, None),
            Err(KeyMaterialError::KidMismatch)
        );
        assert_eq!(
            a.self_test(&a.kid, Some(&b.public_jwk)),
            Err(KeyMaterialError::PublicMismatch)
        );
        let (_, ed_pem) = SigningKey::generate(SigningAlgorithm::EdDSA).unwrap();
        assert!(SigningKey::from_pem(SigningAlgorithm::ES256, &ed_pem).is_err());
        assert_eq!(
            SigningKey::from_pem(SigningAlgorithm::ES256, &PrivateKeyPem::new("garbage"))
                .unwrap_err(),
            KeyMaterialError::NotPem
        );
    }
}
