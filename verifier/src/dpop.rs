//! DPoP proofs (RFC 9449): the proof-of-possession JWT a client sends in the `DPoP`
//! header, checked as §4.3 lists, plus what a server needs around it: the RFC 7638
//! thumbprint that binds a token to the proof's key (`cnf.jkt`, §6), the access-token
//! hash `ath` (§4.2), a bounded replay cache of `jti`s (§11.1), and server nonces
//! (§8) that replicas can check without sharing state beyond a secret.
//!
//! The proof names its own key (`jwk` in the header); that is the point of DPoP, so the
//! key is trusted only to check the proof's signature and to compute the thumbprint
//! the token is (or will be) bound to. Only ES256 and EdDSA are accepted by default;
//! `none`, HMAC and RSA never parse, and a JWK carrying any private member is refused.
//! The target comparison (`htm`, `htu`) is exact after the normalisation of §4.3
//! point 9 (RFC 3986 §6.2.2 and §6.2.3): scheme and host case, default port, empty
//! path, percent-encoding case and unreserved characters; the request's query and
//! fragment are left out, and a proof whose `htu` has either is refused (§4.2 defines
//! `htu` without them).

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::{constant_time, digest, hmac};
use serde_json::{Map, Value};

use crate::base64url;
use crate::jose::{self, Algorithm};
use crate::jwk::VerifyingKey;

/// The `typ` of a DPoP proof (§4.2).
pub const PROOF_TYPE: &str = "dpop+jwt";

/// Largest proof accepted, in bytes (a P-256 proof is ~600).
pub const MAX_PROOF_BYTES: usize = 4096;

/// Longest `jti` accepted.
const MAX_JTI_BYTES: usize = 256;

/// How many distinct proof headers (one per agent key, in practice) keep their parsed
/// key: a runtime signs every proof with the same key, so its header is the same bytes
/// each time and the key is parsed and thumbprinted once.
const HEADER_CACHE_CAPACITY: u64 = 10_000;

/// Header parameters a proof may carry (§4.2); anything else is refused.
const PROOF_HEADER: [&str; 4] = ["typ", "alg", "jwk", "kid"];

/// JWK members that only a private key has (RFC 7518 §6.2.2, §6.3.2, §6.4; RFC 8037).
const PRIVATE_MEMBERS: [&str; 9] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k", "priv"];

/// Why a proof was refused. Carries no proof content; every variant is answered to the
/// client with one fixed description (`invalid_dpop_proof`), or `use_dpop_nonce`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DpopError {
    #[error("the DPoP proof is malformed: {0}")]
    Malformed(&'static str),
    #[error("the DPoP proof's algorithm is not accepted")]
    Algorithm,
    #[error("the DPoP proof's key is not an acceptable public key")]
    Key,
    #[error("the DPoP proof's signature does not verify")]
    Signature,
    #[error("the DPoP proof is for another method or URL")]
    Target,
    #[error("the DPoP proof's iat is outside the accepted window")]
    Time,
    #[error("the DPoP proof was used before")]
    Replayed,
    #[error("the DPoP proof does not carry this access token's hash")]
    AccessTokenHash,
    #[error("the DPoP proof's key is not the one the access token is bound to")]
    KeyMismatch,
    #[error("the DPoP proof lacks a current server nonce")]
    UseNonce,
}

impl DpopError {
    /// The OAuth error code (RFC 9449 §5, §7.1, §8).
    pub fn code(self) -> &'static str {
        match self {
            DpopError::UseNonce => "use_dpop_nonce",
            _ => "invalid_dpop_proof",
        }
    }
}

/// How proofs are checked.
#[derive(Debug, Clone)]
pub struct DpopRules {
    /// Algorithms a proof may use.
    pub algorithms: Vec<Algorithm>,
    /// How old a proof's `iat` may be.
    pub max_age: Duration,
    /// How far in the future a proof's `iat` may be (clock skew).
    pub max_skew: Duration,
    /// How many `jti`s the replay cache holds at most.
    pub replay_capacity: u64,
}

impl Default for DpopRules {
    fn default() -> Self {
        DpopRules {
            algorithms: vec![Algorithm::ES256, Algorithm::EdDSA],
            max_age: Duration::from_secs(60),
            max_skew: Duration::from_secs(5),
            replay_capacity: 100_000,
        }
    }
}

/// The request a proof must be for.
#[derive(Debug, Clone, Copy)]
pub struct ProofTarget<'a> {
    /// The HTTP method, as sent.
    pub method: &'a str,
    /// The URL the client addressed (its public form; query and fragment ignored).
    pub url: &'a str,
    /// The access token presented with the proof, if any: its hash must be `ath`.
    pub access_token: Option<&'a str>,
}

/// A proof that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// RFC 7638 SHA-256 thumbprint of the proof's key, base64url: `cnf.jkt`.
    pub jkt: String,
    pub algorithm: Algorithm,
    pub issued_at: u64,
    /// The server nonce the proof carries, for the caller to check when it requires
    /// one ([`NonceSource::accepts`]).
    pub nonce: Option<String>,
    /// Names the proof in the replay cache (SHA-256 of its key and `jti`).
    replay_id: [u8; 32],
}

/// Checks proofs: the §4.3 list and the replay cache. Nonces are the caller's (the
/// secret they derive from may change while it runs): see [`Proof::nonce`].
pub struct DpopVerifier {
    rules: DpopRules,
    seen: moka::sync::Cache<[u8; 32], ()>,
    /// Proof headers (the base64url segment, exactly as sent) that passed every header
    /// check, with what they yield. The same bytes always yield the same result, so a
    /// hit skips only work whose outcome is known; the signature is checked every time.
    headers: moka::sync::Cache<Box<str>, Arc<CheckedHeader>>,
}

/// What a valid proof header yields: the key to check the signature with, and the
/// binding it names.
struct CheckedHeader {
    key: VerifyingKey,
    jkt: String,
    algorithm: Algorithm,
}

impl std::fmt::Debug for DpopVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopVerifier")
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

impl DpopVerifier {
    pub fn new(rules: DpopRules) -> Self {
        let seen = moka::sync::Cache::builder()
            .max_capacity(rules.replay_capacity)
            .time_to_live(rules.max_age + rules.max_skew + Duration::from_secs(1))
            .build();
        let headers = moka::sync::Cache::builder()
            .max_capacity(HEADER_CACHE_CAPACITY)
            .build();
        DpopVerifier {
            rules,
            seen,
            headers,
        }
    }

    pub fn rules(&self) -> &DpopRules {
        &self.rules
    }

    /// How many `jti`s the replay cache holds now.
    pub fn remembered(&self) -> u64 {
        self.seen.run_pending_tasks();
        self.seen.entry_count()
    }

    /// Checks `proof` (the `DPoP` header value) for `target` at `now` (unix seconds)
    /// and remembers it: the same `jti` is refused for the window ([`check`](Self::check)
    /// then [`remember`](Self::remember)).
    pub fn verify(
        &self,
        proof: &str,
        target: &ProofTarget<'_>,
        now: u64,
    ) -> Result<Proof, DpopError> {
        let proof = self.check(proof, target, now)?;
        self.remember(&proof)?;
        Ok(proof)
    }

    /// Takes the proof's `jti` for the window, or refuses a proof seen before. Callers
    /// that can tell who is calling remember only after that (the STS, after the
    /// workload token verified): anyone can mint valid proofs with a fresh key, so an
    /// anonymous flood must not be able to push real `jti`s out of the bounded cache.
    pub fn remember(&self, proof: &Proof) -> Result<(), DpopError> {
        if self.seen.entry(proof.replay_id).or_insert(()).is_fresh() {
            Ok(())
        } else {
            Err(DpopError::Replayed)
        }
    }

    /// Every check of §4.3 but the replay cache: stateless.
    pub fn check(
        &self,
        proof: &str,
        target: &ProofTarget<'_>,
        now: u64,
    ) -> Result<Proof, DpopError> {
        let (checked, claims) = self.check_signed(proof)?;
        let text = |name: &'static str| {
            claims
                .get(name)
                .and_then(Value::as_str)
                .ok_or(DpopError::Malformed(name))
        };
        let jti = text("jti")?;
        if jti.is_empty() || jti.len() > MAX_JTI_BYTES {
            return Err(DpopError::Malformed("jti"));
        }
        if text("htm")? != target.method {
            return Err(DpopError::Target);
        }
        let expected = normalize_htu(target.url).ok_or(DpopError::Target)?;
        let htu = text("htu")?;
        // §4.2: `htu` is the URI "without query and fragment parts".
        if htu.contains(['?', '#']) || normalize_htu(htu) != Some(expected) {
            return Err(DpopError::Target);
        }
        let issued_at = claims
            .get("iat")
            .and_then(Value::as_u64)
            .ok_or(DpopError::Malformed("iat"))?;
        if issued_at > now.saturating_add(self.rules.max_skew.as_secs())
            || issued_at.saturating_add(self.rules.max_age.as_secs()) < now
        {
            return Err(DpopError::Time);
        }
        if let Some(token) = target.access_token {
            let ath = claims.get("ath").and_then(Value::as_str);
            let want = access_token_hash(token);
            if !ath.is_some_and(|a| {
                constant_time::verify_slices_are_equal(a.as_bytes(), want.as_bytes()).is_ok()
            }) {
                return Err(DpopError::AccessTokenHash);
            }
        }
        let nonce = match claims.get("nonce") {
            None => None,
            Some(Value::String(n)) if n.len() <= MAX_JTI_BYTES => Some(n.clone()),
            Some(_) => return Err(DpopError::Malformed("nonce")),
        };
        let mut key = digest::Context::new(&digest::SHA256);
        key.update(checked.jkt.as_bytes());
        key.update(b".");
        key.update(jti.as_bytes());
        let mut replay_id = [0u8; 32];
        replay_id.copy_from_slice(key.finish().as_ref());
        Ok(Proof {
            jkt: checked.jkt,
            algorithm: checked.algorithm,
            issued_at,
            nonce,
            replay_id,
        })
    }

    /// Form, header, key and signature: everything that does not depend on the request.
    fn check_signed(&self, proof: &str) -> Result<(Signed, Map<String, Value>), DpopError> {
        if proof.len() > MAX_PROOF_BYTES {
            return Err(DpopError::Malformed("too large"));
        }
        let jws =
            jose::split_compact(proof).map_err(|_| DpopError::Malformed("not a compact JWS"))?;
        let header = match self.headers.get(jws.header) {
            Some(header) => header,
            None => {
                let header = Arc::new(self.check_header(jws.header)?);
                self.headers.insert(jws.header.into(), Arc::clone(&header));
                header
            }
        };
        let signature = jose::decode_signature(jws.signature).ok_or(DpopError::Signature)?;
        if !header
            .key
            .verify(header.algorithm, jws.signing_input.as_bytes(), &signature)
        {
            return Err(DpopError::Signature);
        }
        let claims = jose::parse_claims(jws.payload).map_err(|_| DpopError::Malformed("claims"))?;
        let signed = Signed {
            jkt: header.jkt.clone(),
            algorithm: header.algorithm,
        };
        Ok((signed, claims))
    }

    /// The header's checks (§4.3 points 4 to 6): `typ`, an accepted `alg`, a public
    /// `jwk` that parses for it, no other parameter.
    fn check_header(&self, segment: &str) -> Result<CheckedHeader, DpopError> {
        let header_bytes = base64url::decode(segment).ok_or(DpopError::Malformed("header"))?;
        let header: Map<String, Value> =
            serde_json::from_slice(&header_bytes).map_err(|_| DpopError::Malformed("header"))?;
        if !header.keys().all(|k| PROOF_HEADER.contains(&k.as_str())) {
            return Err(DpopError::Malformed("header parameter"));
        }
        if header.get("typ").and_then(Value::as_str) != Some(PROOF_TYPE) {
            return Err(DpopError::Malformed("typ"));
        }
        let algorithm = header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(Algorithm::parse)
            .filter(|a| self.rules.algorithms.contains(a))
            .ok_or(DpopError::Algorithm)?;
        let jwk = header
            .get("jwk")
            .and_then(Value::as_object)
            .ok_or(DpopError::Malformed("jwk"))?;
        if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
            return Err(DpopError::Key);
        }
        let key = VerifyingKey::from_jwk(jwk, algorithm).ok_or(DpopError::Key)?;
        let jkt = jwk_thumbprint(jwk).ok_or(DpopError::Key)?;
        Ok(CheckedHeader {
            key,
            jkt,
            algorithm,
        })
    }
}

struct Signed {
    jkt: String,
    algorithm: Algorithm,
}

/// `ath` for `access_token`: base64url(SHA-256(ASCII(token))) (§4.2).
pub fn access_token_hash(access_token: &str) -> String {
    base64url::encode(digest::digest(&digest::SHA256, access_token.as_bytes()).as_ref())
}

/// The RFC 7638 SHA-256 thumbprint of a public EC or OKP JWK: the required members
/// in lexicographic order, no whitespace. `None` for another key type or a member
/// that is missing or not a string.
pub fn jwk_thumbprint(jwk: &Map<String, Value>) -> Option<String> {
    let member = |name: &str| jwk.get(name).and_then(Value::as_str);
    let kty = member("kty")?;
    let mut canonical = Map::new();
    let required: &[&str] = match kty {
        "EC" => &["crv", "kty", "x", "y"],
        "OKP" => &["crv", "kty", "x"],
        _ => return None,
    };
    for name in required {
        canonical.insert(
            (*name).to_string(),
            Value::String(member(name)?.to_string()),
        );
    }
    // serde_json's Map keeps keys sorted (no `preserve_order`), so this is canonical.
    let text = serde_json::to_string(&Value::Object(canonical)).ok()?;
    Some(base64url::encode(
        digest::digest(&digest::SHA256, text.as_bytes()).as_ref(),
    ))
}

/// `url` as §4.3 point 9 compares it: scheme and host lower-cased, default port
/// removed, empty path as `/`, percent-encodings upper-cased and unreserved characters
/// decoded (RFC 3986 §6.2.2), query and fragment removed. `None` unless it is an
/// absolute http(s) URL.
pub fn normalize_htu(url: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    if !matches!(parsed.scheme(), "https" | "http") || parsed.cannot_be_a_base() {
        return None;
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return None;
    }
    let host = parsed.host_str()?;
    let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
    let path = normalize_percent(parsed.path())?;
    Some(format!("{}://{host}{port}{path}", parsed.scheme()))
}

/// Upper-cases percent-encodings and decodes those of unreserved characters.
fn normalize_percent(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = path.get(i + 1..i + 3)?;
            let value = u8::from_str_radix(hex, 16).ok()?;
            if value.is_ascii_alphanumeric() || b"-._~".contains(&value) {
                out.push(char::from(value));
            } else {
                out.push('%');
                out.push_str(&hex.to_ascii_uppercase());
            }
            i += 3;
        } else {
            out.push(char::from(bytes[i]));
            i += 1;
        }
    }
    Some(out)
}

/// Server nonces (§8) any replica holding the same secret can check: a nonce names a
/// time window and carries a MAC of it, so nothing is stored. A nonce is accepted in
/// its window and the next one, so it lives one to two windows.
pub struct NonceSource {
    key: hmac::Key,
    window_secs: u64,
}

impl std::fmt::Debug for NonceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceSource")
            .field("window_secs", &self.window_secs)
            .finish_non_exhaustive()
    }
}

/// Bytes of MAC a nonce carries.
const NONCE_MAC_BYTES: usize = 16;

impl NonceSource {
    /// Nonces keyed by `secret` (at least 32 bytes, shared by the replicas), each
    /// window `window` long (at least one second).
    pub fn new(secret: &[u8], window: Duration) -> Self {
        NonceSource {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            window_secs: window.as_secs().max(1),
        }
    }

    fn mac(&self, window: u64) -> [u8; NONCE_MAC_BYTES] {
        let tag = hmac::sign(
            &self.key,
            &[b"dpop-nonce.".as_slice(), &window.to_be_bytes()].concat(),
        );
        let mut mac = [0u8; NONCE_MAC_BYTES];
        mac.copy_from_slice(&tag.as_ref()[..NONCE_MAC_BYTES]);
        mac
    }

    /// The nonce of the window holding `now`.
    pub fn issue(&self, now: u64) -> String {
        let window = now / self.window_secs;
        let mut bytes = window.to_be_bytes().to_vec();
        bytes.extend_from_slice(&self.mac(window));
        base64url::encode(&bytes)
    }

    /// Whether `nonce` is of the current or the previous window, with a valid MAC.
    pub fn accepts(&self, nonce: &str, now: u64) -> bool {
        let Some(bytes) = base64url::decode(nonce) else {
            return false;
        };
        if bytes.len() != 8 + NONCE_MAC_BYTES {
            return false;
        }
        let mut window = [0u8; 8];
        window.copy_from_slice(&bytes[..8]);
        let window = u64::from_be_bytes(window);
        let current = now / self.window_secs;
        (window == current || window.saturating_add(1) == current)
            && constant_time::verify_slices_are_equal(&bytes[8..], &self.mac(window)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
    };
    use serde_json::json;

    const URL: &str = "https://sts.example.org/token";
    const NOW: u64 = 1_800_000_000;

    enum Key {
        Es(EcdsaKeyPair),
        Ed(Ed25519KeyPair),
    }

    impl Key {
        fn es256() -> Key {
            let rng = SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            Key::Es(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap(),
            )
        }

        fn ed25519() -> Key {
            Key::Ed(Ed25519KeyPair::generate().unwrap())
        }

        fn alg(&self) -> &'static str {
            match self {
                Key::Es(_) => "ES256",
                Key::Ed(_) => "EdDSA",
            }
        }

        fn jwk(&self) -> Value {
            match self {
                Key::Es(k) => {
                    let p = k.public_key().as_ref();
                    json!({"kty": "EC", "crv": "P-256",
                        "x": base64url::encode(&p[1..33]), "y": base64url::encode(&p[33..65])})
                }
                Key::Ed(k) => json!({"kty": "OKP", "crv": "Ed25519",
                    "x": base64url::encode(k.public_key().as_ref())}),
            }
        }

        fn sign(&self, input: &[u8]) -> Vec<u8> {
            match self {
                Key::Es(k) => k
                    .sign(&SystemRandom::new(), input)
                    .unwrap()
                    .as_ref()
                    .to_vec(),
                Key::Ed(k) => k.sign(input).as_ref().to_vec(),
            }
        }

        fn proof_with(&self, header: Value, claims: Value) -> String {
            let h = base64url::encode(header.to_string().as_bytes());
            let c = base64url::encode(claims.to_string().as_bytes());
            let input = format!("{h}.{c}");
            let sig = base64url::encode(&self.sign(input.as_bytes()));
            format!("{input}.{sig}")
        }

        fn header(&self) -> Value {
            json!({"typ": "dpop+jwt", "alg": self.alg(), "jwk": self.jwk()})
        }

        fn proof(&self, claims: Value) -> String {
            self.proof_with(self.header(), claims)
        }
    }

    fn claims(jti: &str) -> Value {
        json!({"jti": jti, "htm": "POST", "htu": URL, "iat": NOW})
    }

    fn target() -> ProofTarget<'static> {
        ProofTarget {
            method: "POST",
            url: URL,
            access_token: None,
        }
    }

    fn verifier() -> DpopVerifier {
        DpopVerifier::new(DpopRules::default())
    }

    #[test]
    fn the_rfc_9449_example_key_has_the_rfc_thumbprint() {
        let jwk = json!({"kty": "EC",
            "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
            "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA",
            "crv": "P-256"});
        assert_eq!(
            jwk_thumbprint(jwk.as_object().unwrap()).unwrap(),
            "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
        );
    }

    #[test]
    fn a_valid_proof_passes_once_and_names_its_key() {
        for key in [Key::es256(), Key::ed25519()] {
            let v = verifier();
            let proof = key.proof(claims("a"));
            let ok = v.verify(&proof, &target(), NOW).unwrap();
            assert_eq!(
                ok.jkt,
                jwk_thumbprint(key.jwk().as_object().unwrap()).unwrap()
            );
            assert_eq!(v.verify(&proof, &target(), NOW), Err(DpopError::Replayed));
            // Another jti from the same key is fine.
            assert!(v.verify(&key.proof(claims("b")), &target(), NOW).is_ok());
        }
    }

    #[test]
    fn method_and_url_must_match_after_normalisation() {
        let key = Key::es256();
        let v = verifier();
        let mut c = claims("m");
        c["htm"] = json!("GET");
        assert_eq!(
            v.verify(&key.proof(c), &target(), NOW),
            Err(DpopError::Target)
        );
        for other in [
            "https://sts.example.org/token2",
            "https://other.example.org/token",
            "http://sts.example.org/token",
            "https://sts.example.org:8443/token",
            "https://sts.example.org/token?x=1",
            "https://sts.example.org/token#frag",
            "not a url",
        ] {
            let mut c = claims(other);
            c["htu"] = json!(other);
            assert_eq!(
                v.verify(&key.proof(c), &target(), NOW),
                Err(DpopError::Target),
                "{other}"
            );
        }
        for same in [
            "HTTPS://STS.Example.ORG:443/token",
            "https://sts.example.org/%74oken",
        ] {
            let mut c = claims(same);
            c["htu"] = json!(same);
            assert!(v.verify(&key.proof(c), &target(), NOW).is_ok(), "{same}");
        }
        assert_eq!(
            normalize_htu("https://a.example/x%2fy%7e"),
            Some("https://a.example/x%2Fy~".into())
        );
        assert_eq!(
            normalize_htu("https://a.example"),
            Some("https://a.example/".into())
        );
        assert_eq!(normalize_htu("https://u:p@a.example/"), None);
        // The request's own query does not matter.
        let t = ProofTarget {
            url: "https://sts.example.org/token?via=lb",
            ..target()
        };
        assert!(v.verify(&key.proof(claims("q")), &t, NOW).is_ok());
        assert_eq!(normalize_htu("ftp://a.example/"), None);
    }

    #[test]
    fn iat_must_be_inside_the_window() {
        let key = Key::es256();
        let v = verifier();
        for (iat, ok) in [
            (NOW - 60, true),
            (NOW - 61, false),
            (NOW + 5, true),
            (NOW + 6, false),
        ] {
            let mut c = claims(&format!("t{iat}"));
            c["iat"] = json!(iat);
            let r = v.verify(&key.proof(c), &target(), NOW);
            assert_eq!(r.is_ok(), ok, "{iat}: {r:?}");
        }
        let mut c = claims("s");
        c["iat"] = json!("1800000000");
        assert_eq!(
            v.verify(&key.proof(c), &target(), NOW),
            Err(DpopError::Malformed("iat"))
        );
    }

    #[test]
    fn header_key_and_signature_are_checked() {
        let key = Key::es256();
        let v = verifier();
        let mut h = key.header();
        h["typ"] = json!("JWT");
        assert_eq!(
            v.verify(&key.proof_with(h, claims("1")), &target(), NOW),
            Err(DpopError::Malformed("typ"))
        );
        for alg in ["none", "HS256", "RS256", "ES384", "es256"] {
            let mut h = key.header();
            h["alg"] = json!(alg);
            assert_eq!(
                v.verify(&key.proof_with(h, claims(alg)), &target(), NOW),
                Err(DpopError::Algorithm),
                "{alg}"
            );
        }
        let mut h = key.header();
        h["jwk"]["d"] = json!("c2VjcmV0");
        assert_eq!(
            v.verify(&key.proof_with(h, claims("2")), &target(), NOW),
            Err(DpopError::Key)
        );
        let mut h = key.header();
        h["jku"] = json!("https://attacker.example/jwks");
        assert!(matches!(
            v.verify(&key.proof_with(h, claims("3")), &target(), NOW),
            Err(DpopError::Malformed(_))
        ));
        // A proof signed by another key than the one it names.
        let other = Key::es256();
        let forged = other.proof_with(key.header(), claims("4"));
        assert_eq!(v.verify(&forged, &target(), NOW), Err(DpopError::Signature));
        // An EdDSA header with an EC key, and an OKP key on another curve.
        let mut h = key.header();
        h["alg"] = json!("EdDSA");
        assert_eq!(
            v.verify(&key.proof_with(h, claims("5")), &target(), NOW),
            Err(DpopError::Key)
        );
        let mut h = Key::ed25519().header();
        h["jwk"]["crv"] = json!("X25519");
        assert_eq!(
            v.verify(&key.proof_with(h, claims("6")), &target(), NOW),
            Err(DpopError::Key)
        );
        assert_eq!(
            v.verify(&"a".repeat(MAX_PROOF_BYTES + 1), &target(), NOW),
            Err(DpopError::Malformed("too large"))
        );
        assert!(matches!(
            v.verify("a.b", &target(), NOW),
            Err(DpopError::Malformed(_))
        ));
    }

    #[test]
    fn a_known_header_still_needs_a_valid_signature() {
        for key in [Key::es256(), Key::ed25519()] {
            let v = verifier();
            assert!(v.verify(&key.proof(claims("1")), &target(), NOW).is_ok());
            // Same header bytes (now cached), signed by a key that is not the one named.
            let other = if key.alg() == "ES256" {
                Key::es256()
            } else {
                Key::ed25519()
            };
            let forged = other.proof_with(key.header(), claims("2"));
            assert_eq!(v.verify(&forged, &target(), NOW), Err(DpopError::Signature));
            // The claims of a valid proof under another cached header's signature.
            let valid = key.proof(claims("3"));
            let (signed, signature) = valid.rsplit_once('.').unwrap();
            let tampered = format!("{}.{signature}", signed.replace(".", ".e30"));
            assert!(v.verify(&tampered, &target(), NOW).is_err());
            assert!(v.verify(&valid, &target(), NOW).is_ok());
        }
    }

    #[test]
    fn a_refused_proof_does_not_use_up_its_jti() {
        let key = Key::es256();
        let v = verifier();
        let mut c = claims("once");
        c["htm"] = json!("GET");
        assert!(v.verify(&key.proof(c), &target(), NOW).is_err());
        assert!(v.verify(&key.proof(claims("once")), &target(), NOW).is_ok());
    }

    #[test]
    fn ath_binds_the_access_token() {
        let key = Key::ed25519();
        let v = verifier();
        let token = "eyJ.the-access-token.sig";
        let with = |jti: &str, ath: Option<String>| {
            let mut c = claims(jti);
            if let Some(a) = ath {
                c["ath"] = json!(a);
            }
            key.proof(c)
        };
        let t = ProofTarget {
            access_token: Some(token),
            ..target()
        };
        assert_eq!(
            v.verify(&with("1", None), &t, NOW),
            Err(DpopError::AccessTokenHash)
        );
        assert_eq!(
            v.verify(&with("2", Some(access_token_hash("another"))), &t, NOW),
            Err(DpopError::AccessTokenHash)
        );
        assert!(
            v.verify(&with("3", Some(access_token_hash(token))), &t, NOW)
                .is_ok()
        );
        // RFC 9449 §7.1's example token and its ath.
        assert_eq!(
            access_token_hash("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"),
            "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
        );
    }

    #[test]
    fn nonces_are_checked_statelessly_across_replicas() {
        let secret = [7u8; 32];
        let a = NonceSource::new(&secret, Duration::from_secs(60));
        let b = NonceSource::new(&secret, Duration::from_secs(60));
        let stranger = NonceSource::new(&[8u8; 32], Duration::from_secs(60));
        let nonce = a.issue(NOW);
        assert!(b.accepts(&nonce, NOW));
        assert!(
            b.accepts(&nonce, NOW + 60),
            "the next window still accepts it"
        );
        assert!(!b.accepts(&nonce, NOW + 180));
        assert!(!stranger.accepts(&nonce, NOW));
        assert!(!b.accepts("bm90LWEtbm9uY2U", NOW));

        assert_eq!(DpopError::UseNonce.code(), "use_dpop_nonce");
        let key = Key::es256();
        let v = verifier();
        let mut c = claims("n1");
        c["nonce"] = json!(nonce);
        let proof = v.verify(&key.proof(c), &target(), NOW).unwrap();
        assert!(proof.nonce.is_some_and(|n| b.accepts(&n, NOW)));
        assert_eq!(
            v.verify(&key.proof(claims("n2")), &target(), NOW)
                .unwrap()
                .nonce,
            None
        );
        let mut c = claims("n3");
        c["nonce"] = json!(7);
        assert_eq!(
            v.verify(&key.proof(c), &target(), NOW),
            Err(DpopError::Malformed("nonce"))
        );
    }

    #[test]
    fn errors_carry_no_proof_content() {
        let key = Key::es256();
        let proof = key.proof(claims("secret-jti-value"));
        let v = verifier();
        let t = ProofTarget {
            method: "GET",
            ..target()
        };
        let e = v.verify(&proof, &t, NOW).unwrap_err();
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("secret-jti-value") && !shown.contains(&proof[..20]));
        assert_eq!(e.code(), "invalid_dpop_proof");
    }
}
