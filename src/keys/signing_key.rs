//! One signing key: generation, parsing from PKCS#8 PEM, its public JWK and RFC 7638
//! thumbprint, the self-test every key passes before it is published, and compact-JWS
//! signing.
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
}

enum Pair {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
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
        let (pair, mut jwk) = match algorithm {
            SigningAlgorithm::ES256 => {
                let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .map_err(|_| KeyMaterialError::Unparsable("ES256"))?;
                let point = pair.public_key().as_ref();
                if point.len() != 65 || point[0] != 4 {
                    return Err(KeyMaterialError::Unparsable("ES256"));
                }
                let jwk = json!({
                    "crv": "P-256",
                    "kty": "EC",
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                    "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
                });
                (Pair::Es256(pair), jwk)
            }
            SigningAlgorithm::EdDSA => {
                let pair = Ed25519KeyPair::from_pkcs8(der)
                    .map_err(|_| KeyMaterialError::Unparsable("EdDSA"))?;
                let jwk = json!({
                    "crv": "Ed25519",
                    "kty": "OKP",
                    "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
                });
                (Pair::EdDsa(pair), jwk)
            }
        };
        // RFC 7638 §3: the thumbprint hashes the required members in lexicographic
        // order with no whitespace; serde_json's map keeps keys sorted.
        let canonical =
            serde_json::to_vec(&jwk).map_err(|_| KeyMaterialError::Unparsable("jwk"))?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &canonical);
        let kid = URL_SAFE_NO_PAD.encode(digest.as_ref());
        if let Value::Object(map) = &mut jwk {
            map.insert("kid".into(), Value::String(kid.clone()));
            map.insert("alg".into(), Value::String(algorithm.as_str().into()));
            map.insert("use".into(), Value::String("sig".into()));
        }
        Ok(SigningKey {
            kid,
            algorithm,
            public_jwk: jwk,
            pair,
        })
    }

    /// Signs `message` (the JWS signing input) and returns the base64url signature.
    pub fn sign(&self, message: &[u8]) -> Result<String, KeyMaterialError> {
        let signature = match &self.pair {
            Pair::Es256(p) => p
                .sign(&SystemRandom::new(), message)
                .map_err(|_| KeyMaterialError::Sign)?
                .as_ref()
                .to_vec(),
            Pair::EdDsa(p) => p.sign(message).as_ref().to_vec(),
        };
        Ok(URL_SAFE_NO_PAD.encode(signature))
    }

    /// Signs a compact JWS with `header` and `claims` (both JSON objects).
    pub fn sign_compact(&self, header: &[u8], claims: &[u8]) -> Result<String, KeyMaterialError> {
        let mut out = String::with_capacity((header.len() + claims.len()) * 4 / 3 + 100);
        URL_SAFE_NO_PAD.encode_string(header, &mut out);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(claims, &mut out);
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
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(self.public_jwk.clone())
            .map_err(|_| KeyMaterialError::SelfTestFailed)?;
        let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk)
            .map_err(|_| KeyMaterialError::SelfTestFailed)?;
        let probe = b"agent-sts key self-test";
        let signature = self.sign(probe)?;
        let alg = match self.algorithm {
            SigningAlgorithm::ES256 => jsonwebtoken::Algorithm::ES256,
            SigningAlgorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
        };
        match jsonwebtoken::crypto::verify(&signature, probe, &decoding, alg) {
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
