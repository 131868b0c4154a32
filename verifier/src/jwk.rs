//! JSON Web Keys (RFC 7517, key types of RFC 7518 §6 and RFC 8037) turned into public
//! keys that aws-lc-rs parsed once, so checking a signature does no key parsing.
//!
//! A JWK set is read leniently and used strictly: a key of another type (`oct`), with a
//! `use` other than `sig`, a declared `alg` that does not fit its type, or an algorithm
//! outside the caller's allow-list is skipped, not an error, because issuers publish
//! keys for other consumers beside ours. A set in which no key is usable (`{"keys": []}`
//! included) is still a set: the issuer's answer that it publishes nothing we can use.
//! ECDSA keys verify the fixed-size `r || s` signature of RFC 7518 §3.4 only, so a
//! DER-encoded signature never verifies.
//!
//! Each key carries a fingerprint of its `kid`, algorithms and public key material, so
//! a verification cached under one key can be checked, without any crypto, against the
//! key an issuer publishes now: the same `kid` over other material is another key.

use aws_lc_rs::signature::{self as sig, ParsedPublicKey};
use serde::Deserialize;
use serde_json::Value;

use crate::base64url;
use crate::error::JwksError;
use crate::jose::Algorithm;

/// One verification key: for each algorithm it may be used with, the parsed key.
pub struct VerifyingKey {
    kid: Option<String>,
    parsed: Vec<(Algorithm, ParsedPublicKey)>,
    fingerprint: KeyFingerprint,
}

/// SHA-256 over a key's `kid`, algorithms and public key material: equal only for the
/// same key published again.
pub type KeyFingerprint = [u8; 32];

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algorithms: Vec<&str> = self.parsed.iter().map(|(a, _)| a.as_str()).collect();
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("algorithms", &algorithms)
            .finish()
    }
}

impl VerifyingKey {
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// What identifies this key across fetches (see [`KeyFingerprint`]).
    pub fn fingerprint(&self) -> &KeyFingerprint {
        &self.fingerprint
    }

    pub fn supports(&self, alg: Algorithm) -> bool {
        self.parsed.iter().any(|(a, _)| *a == alg)
    }

    /// The key of one JWK object for `alg` (a DPoP proof's `jwk`, RFC 9449 §4.2), or
    /// `None` when it is not a usable public key of a type that fits `alg`.
    pub fn from_jwk(jwk: &serde_json::Map<String, Value>, alg: Algorithm) -> Option<VerifyingKey> {
        let raw: RawJwk = serde_json::from_value(Value::Object(jwk.clone())).ok()?;
        verifying_key(&raw, &[alg])
    }

    /// Checks the raw `signature` over `message` under `alg`.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        self.parsed
            .iter()
            .find(|(a, _)| *a == alg)
            .is_some_and(|(_, key)| key.verify_sig(message, signature).is_ok())
    }
}

/// The members of a JWK we read; others are ignored.
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    public_key_use: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
}

/// Parses a JWK set, keeping the keys usable for signature checks under `allowed`.
/// Only a document that is not a JSON object with a `keys` array is an error
/// ([`JwksError::Parse`]); a set with no usable key is an empty list.
pub fn parse_jwks(bytes: &[u8], allowed: &[Algorithm]) -> Result<Vec<VerifyingKey>, JwksError> {
    #[derive(Deserialize)]
    struct RawSet {
        keys: Vec<Value>,
    }
    let raw: RawSet = serde_json::from_slice(bytes).map_err(|_| JwksError::Parse)?;
    Ok(raw
        .keys
        .into_iter()
        .filter_map(|value| serde_json::from_value::<RawJwk>(value).ok())
        .filter_map(|jwk| verifying_key(&jwk, allowed))
        .collect())
}

fn verifying_key(jwk: &RawJwk, allowed: &[Algorithm]) -> Option<VerifyingKey> {
    if jwk.public_key_use.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    let fits = key_algorithms(jwk);
    let algorithms = match jwk.alg.as_deref() {
        Some(declared) => match Algorithm::parse(declared) {
            Some(a) if fits.contains(&a) => vec![a],
            _ => return None,
        },
        None => fits,
    };
    let mut print = Fingerprinter::new(jwk.kid.as_deref());
    let parsed: Vec<(Algorithm, ParsedPublicKey)> = algorithms
        .into_iter()
        .filter(|a| allowed.contains(a))
        .filter_map(|a| {
            let (key, material) = public_key(jwk, a)?;
            print.add(a, &material);
            Some((a, key))
        })
        .collect();
    (!parsed.is_empty()).then(|| VerifyingKey {
        kid: jwk.kid.clone(),
        parsed,
        fingerprint: print.finish(),
    })
}

/// Builds a [`KeyFingerprint`]: every field length-prefixed, so no two keys share an
/// encoding.
struct Fingerprinter(aws_lc_rs::digest::Context);

impl Fingerprinter {
    fn new(kid: Option<&str>) -> Self {
        let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        match kid {
            None => context.update(&[0]),
            Some(kid) => {
                context.update(&[1]);
                context.update(&(kid.len() as u64).to_be_bytes());
                context.update(kid.as_bytes());
            }
        }
        Fingerprinter(context)
    }

    fn add(&mut self, alg: Algorithm, material: &[u8]) {
        let name = alg.as_str().as_bytes();
        self.0.update(&(name.len() as u64).to_be_bytes());
        self.0.update(name);
        self.0.update(&(material.len() as u64).to_be_bytes());
        self.0.update(material);
    }

    fn finish(self) -> KeyFingerprint {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.finish().as_ref());
        out
    }
}

/// Algorithms a key's type (and curve) admits.
fn key_algorithms(jwk: &RawJwk) -> Vec<Algorithm> {
    use Algorithm::*;
    match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("EC", Some("P-256")) => vec![ES256],
        ("EC", Some("P-384")) => vec![ES384],
        ("RSA", _) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        ("OKP", Some("Ed25519")) => vec![EdDSA],
        _ => vec![],
    }
}

/// The JWK's public key parsed for `alg`, and the material it was parsed from.
fn public_key(jwk: &RawJwk, alg: Algorithm) -> Option<(ParsedPublicKey, Vec<u8>)> {
    let member = |m: &Option<String>| m.as_deref().and_then(base64url::decode);
    match alg {
        Algorithm::ES256 | Algorithm::ES384 => {
            let (verification, size): (&'static sig::EcdsaVerificationAlgorithm, usize) = match alg
            {
                Algorithm::ES256 => (&sig::ECDSA_P256_SHA256_FIXED, 32),
                _ => (&sig::ECDSA_P384_SHA384_FIXED, 48),
            };
            let (x, y) = (member(&jwk.x)?, member(&jwk.y)?);
            if x.len() != size || y.len() != size {
                return None;
            }
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let key = ParsedPublicKey::new(verification, &point).ok()?;
            Some((key, point))
        }
        Algorithm::EdDSA => {
            let x = member(&jwk.x)?;
            let key = ParsedPublicKey::new(&sig::ED25519, &x).ok()?;
            Some((key, x))
        }
        _ => {
            let params: &'static sig::RsaParameters = match alg {
                Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
                Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
                Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
                Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
                Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
                _ => &sig::RSA_PSS_2048_8192_SHA512,
            };
            let (n, e) = (member(&jwk.n)?, member(&jwk.e)?);
            let strip = |v: &[u8]| {
                v.iter()
                    .position(|b| *b != 0)
                    .map_or(Vec::new(), |i| v[i..].to_vec())
            };
            let (n, e) = (strip(&n), strip(&e));
            let key = sig::RsaPublicKeyComponents { n: &n, e: &e }
                .to_parsed_public_key(params)
                .ok()?;
            let mut material = (n.len() as u64).to_be_bytes().to_vec();
            material.extend_from_slice(&n);
            material.extend_from_slice(&e);
            Some((key, material))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::base64url::encode;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair};

    fn p256() -> (EcdsaKeyPair, Value) {
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .unwrap();
        let point = pair.public_key().as_ref().to_vec();
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": "k1",
            "x": encode(&point[1..33]), "y": encode(&point[33..]),
        });
        (pair, jwk)
    }

    #[test]
    fn an_ec_key_verifies_its_fixed_size_signatures_only() {
        let (pair, jwk) = p256();
        let set = serde_json::to_vec(&serde_json::json!({ "keys": [jwk] })).unwrap();
        let keys = parse_jwks(&set, &[Algorithm::ES256]).unwrap();
        let signature = pair.sign(&SystemRandom::new(), b"message").unwrap();
        assert!(keys[0].verify(Algorithm::ES256, b"message", signature.as_ref()));
        assert!(!keys[0].verify(Algorithm::ES256, b"other", signature.as_ref()));
        assert!(!keys[0].verify(Algorithm::ES256, b"message", &[0u8; 64]));
        assert!(!keys[0].verify(Algorithm::RS256, b"message", signature.as_ref()));
        assert_eq!(keys[0].kid(), Some("k1"));
    }

    #[test]
    fn keys_outside_use_type_or_allow_list_are_skipped() {
        let (_, jwk) = p256();
        let with = |extra: Value| {
            let mut k = jwk.clone();
            k.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            serde_json::to_vec(&serde_json::json!({ "keys": [k] })).unwrap()
        };
        let skipped = [
            with(serde_json::json!({"use": "enc"})),
            with(serde_json::json!({"alg": "RS256"})),
            with(serde_json::json!({"alg": "HS256"})),
            with(serde_json::json!({"crv": "P-521"})),
            with(serde_json::json!({"x": "AAAA"})),
            serde_json::to_vec(&serde_json::json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}))
                .unwrap(),
            b"{\"keys\": []}".to_vec(),
        ];
        // A set without a usable key is an answer (no keys), not a failure.
        for set in skipped {
            assert!(parse_jwks(&set, &Algorithm::ALL).unwrap().is_empty());
        }
        // Allowed only for RSA here: the EC key is skipped.
        assert!(
            parse_jwks(&with(serde_json::json!({})), &[Algorithm::RS256])
                .unwrap()
                .is_empty()
        );
        // What is not a JWK set at all is an error.
        for garbage in [&b"[]"[..], b"{\"keys\": 7", b"{}", b"{\"keys\": {}}"] {
            assert_eq!(
                parse_jwks(garbage, &Algorithm::ALL).unwrap_err(),
                JwksError::Parse
            );
        }
    }

    #[test]
    fn a_fingerprint_names_kid_algorithms_and_material() {
        let (_, jwk) = p256();
        let (_, other) = p256();
        let print = |jwk: &Value| {
            let set = serde_json::to_vec(&serde_json::json!({ "keys": [jwk] })).unwrap();
            *parse_jwks(&set, &Algorithm::ALL).unwrap()[0].fingerprint()
        };
        // The same key published again: the same fingerprint.
        assert_eq!(print(&jwk), print(&jwk.clone()));
        // Same kid, other material (a swapped key): another fingerprint.
        assert_ne!(print(&jwk), print(&other));
        // Same material under another kid, or with no kid: another fingerprint.
        let mut renamed = jwk.clone();
        renamed["kid"] = serde_json::json!("k2");
        assert_ne!(print(&jwk), print(&renamed));
        renamed.as_object_mut().unwrap().remove("kid");
        assert_ne!(print(&jwk), print(&renamed));
    }
}
