//! Minting: the RFC 9068 JWT access token for one action.
//!
//! Header `{"alg", "kid", "typ": "at+jwt"}` (RFC 9068 §2.1); claims `iss`, `sub`,
//! `aud` (one audience), `exp`, `iat`, `nbf`, `jti` (128 random bits), `client_id`,
//! `scope` (the one action), when delegated `act` (RFC 8693 §4.1), and when bound to a
//! DPoP key `cnf.jkt` (RFC 9449 §6.1). Reserved
//! claims are computed here and nowhere else; nothing from the request reaches a claim
//! except the verified identities and the catalogue's own action and audience.
//!
//! Time is passed in (`now`), so lifetimes are testable: `exp = min(now + ttl,
//! subject_exp)` and a token never outlives the token it was exchanged for.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

pub use agent_sts_verifier::Actor;

use crate::keys::LoadedKey;
use crate::keys::signing_key::KeyMaterialError;
use crate::secret::MintedJwt;

/// Seconds `iat`/`nbf` are not backdated: verifiers apply their own leeway.
pub const ISSUED_AT_BACKDATE: u64 = 0;

/// What a token is minted for; every field already checked.
#[derive(Debug)]
pub struct Grant<'a> {
    pub issuer: &'a str,
    pub subject: &'a str,
    pub client_id: &'a str,
    pub audience: &'a str,
    pub action: &'a str,
    pub actor: Option<&'a Actor>,
    /// Lifetime asked for (action ttl capped by `max_ttl`).
    pub ttl_secs: u64,
    /// The subject token's `exp` (and the actor token's, whichever is sooner).
    pub not_after: u64,
    /// The RFC 7638 thumbprint of the DPoP key the token is bound to (`cnf.jkt`).
    pub jkt: Option<&'a str>,
}

#[derive(Serialize)]
struct Confirmation<'a> {
    jkt: &'a str,
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'static str,
    kid: &'a str,
    typ: &'static str,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
    iat: u64,
    nbf: u64,
    jti: &'a str,
    client_id: &'a str,
    scope: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    act: Option<&'a Actor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cnf: Option<Confirmation<'a>>,
}

/// A minted token.
#[derive(Debug)]
pub struct Minted {
    pub access_token: MintedJwt,
    pub jti: String,
    pub kid: String,
    pub expires_at: u64,
    pub expires_in: u64,
    /// Bound to a DPoP key (`cnf.jkt`).
    pub bound: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MintError {
    #[error("the subject token expires too soon to mint a token")]
    SubjectExpiring,
    #[error("no randomness for jti")]
    Random,
    #[error("cannot encode the token")]
    Encode,
    #[error(transparent)]
    Key(#[from] KeyMaterialError),
}

/// A fresh `jti`: 128 random bits, base64url.
fn new_jti() -> Result<String, MintError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| MintError::Random)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Signs the token for `grant` with `key` at `now`: locally (no await point), or
/// through the key's remote signer (Vault Transit). What the STS calls.
pub async fn mint_with(key: &LoadedKey, grant: &Grant<'_>, now: u64) -> Result<Minted, MintError> {
    if !key.key.is_remote() {
        return mint(key, grant, now);
    }
    let (header, claims, unsigned) = prepare(key, grant, now)?;
    let access_token = MintedJwt::new(key.key.sign_compact_async(&header, &claims).await?);
    Ok(unsigned.signed(access_token))
}

/// Signs the token for `grant` with the local `key` at `now` (a remote key:
/// [`MintError::Key`] with [`KeyMaterialError::NotLocal`]; use [`mint_with`]).
pub fn mint(key: &LoadedKey, grant: &Grant, now: u64) -> Result<Minted, MintError> {
    let (header, claims, unsigned) = prepare(key, grant, now)?;
    let access_token = MintedJwt::new(key.key.sign_compact(&header, &claims)?);
    Ok(unsigned.signed(access_token))
}

/// A token's facts before its signature.
struct Unsigned {
    jti: String,
    kid: String,
    expires_at: u64,
    expires_in: u64,
    bound: bool,
}

impl Unsigned {
    fn signed(self, access_token: MintedJwt) -> Minted {
        Minted {
            access_token,
            jti: self.jti,
            kid: self.kid,
            expires_at: self.expires_at,
            expires_in: self.expires_in,
            bound: self.bound,
        }
    }
}

/// The header and claims (JSON) of the token for `grant` at `now`, and its facts.
fn prepare(
    key: &LoadedKey,
    grant: &Grant,
    now: u64,
) -> Result<(Vec<u8>, Vec<u8>, Unsigned), MintError> {
    let exp = now.saturating_add(grant.ttl_secs).min(grant.not_after);
    if exp <= now {
        return Err(MintError::SubjectExpiring);
    }
    let jti = new_jti()?;
    let iat = now - ISSUED_AT_BACKDATE;
    let header = Header {
        alg: key.key.algorithm.as_str(),
        kid: &key.key.kid,
        typ: "at+jwt",
    };
    let claims = Claims {
        iss: grant.issuer,
        sub: grant.subject,
        aud: grant.audience,
        exp,
        iat,
        nbf: iat,
        jti: &jti,
        client_id: grant.client_id,
        scope: grant.action,
        act: grant.actor,
        cnf: grant.jkt.map(|jkt| Confirmation { jkt }),
    };
    let header = serde_json::to_vec(&header).map_err(|_| MintError::Encode)?;
    let claims = serde_json::to_vec(&claims).map_err(|_| MintError::Encode)?;
    let unsigned = Unsigned {
        jti,
        kid: key.key.kid.clone(),
        expires_at: exp,
        expires_in: exp - now,
        bound: grant.jkt.is_some(),
    };
    Ok((header, claims, unsigned))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::keys::signing_key::SigningAlgorithm;
    use crate::keys::signing_key::SigningKey;

    #[test]
    fn minted_token_verifies_with_jsonwebtoken_and_is_capped() {
        for alg in [SigningAlgorithm::ES256, SigningAlgorithm::EdDSA] {
            let (key, _) = SigningKey::generate(alg).unwrap();
            let jwk: jsonwebtoken::jwk::Jwk =
                serde_json::from_value(key.public_jwk.clone()).unwrap();
            let loaded = LoadedKey {
                key,
                created_at: 0,
                activates_at: 0,
                fingerprint: [0; 32],
            };
            let actor = Actor {
                act: None,
                sub: "spiffe://example.org/agent/triage".into(),
                iss: "https://spire".into(),
            };
            let now = jsonwebtoken::get_current_timestamp();
            let grant = Grant {
                issuer: "https://sts",
                subject: "alice@example.org",
                client_id: "spire:spiffe://example.org/agent/triage",
                audience: "https://github-shim",
                action: "github.issues.create",
                actor: Some(&actor),
                ttl_secs: 300,
                not_after: now + 120,
                jkt: None,
            };
            let m = mint(&loaded, &grant, now).unwrap();
            assert_eq!(m.expires_in, 120, "never outlives the subject token");
            let header = jsonwebtoken::decode_header(m.access_token.expose()).unwrap();
            assert_eq!(header.typ.as_deref(), Some("at+jwt"));
            assert_eq!(header.kid.as_deref(), Some(loaded.key.kid.as_str()));
            let mut v = jsonwebtoken::Validation::new(header.alg);
            v.set_audience(&["https://github-shim"]);
            v.set_issuer(&["https://sts"]);
            let data = jsonwebtoken::decode::<serde_json::Value>(
                m.access_token.expose(),
                &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(),
                &v,
            )
            .unwrap();
            assert_eq!(data.claims["scope"], "github.issues.create");
            assert_eq!(
                data.claims["act"]["sub"],
                "spiffe://example.org/agent/triage"
            );
            assert_eq!(data.claims["jti"].as_str().unwrap().len(), 22);

            let expired = Grant {
                not_after: now,
                ..grant
            };
            assert_eq!(
                mint(&loaded, &expired, now).unwrap_err(),
                MintError::SubjectExpiring
            );
        }
    }
}
