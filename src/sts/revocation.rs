//! Revocation (RFC 7009, `POST /revoke`): an agent that is done with a token ends it.
//!
//! The caller authenticates with one of its own access tokens, as it would at a shim
//! (`Authorization: Bearer`, or `DPoP` with a proof for `{issuer}/revoke` when the token
//! is bound: a copied bound token cannot revoke anything). The `token` parameter names
//! the token to end: the caller's own, or another one issued to the same agent
//! (`client_id`); a token of another agent is refused (`unauthorized_client`), and a
//! token that does not verify (malformed, expired, foreign) is answered 200 with
//! nothing done, as §2.2 asks. The token's `jti` joins the deny list until its `exp`
//! (and then drops out by itself), so every replica, shim and verifier refuses it
//! within the kill switch's bound; this replica's feed has it at once.

use agent_sts_verifier::deny::{DenyRule, DenyTarget};
use agent_sts_verifier::{
    AccessToken, Algorithm, IssuerConfig, IssuerSet, KeySource, Limits, LocalJwks, Presented,
    ProofTarget,
};

use crate::audit::{Decision, Outcome};
use crate::control::{DenyEntry, deny_list};
use crate::identity::unix_now;
use crate::keys::Keyring;
use crate::sts::exchange::Sts;
use crate::sts::oauth_error::Rejection;

/// Longest an access token of ours may live (the verifier crate's cap).
const OWN_TOKEN_MAX_LIFETIME: std::time::Duration = std::time::Duration::from_secs(3600);

/// Checks tokens this STS minted, against the keys its keyring publishes now (re-read
/// every second, so a removed key stops verifying here as fast as anywhere).
pub fn own_token_verifier(
    issuer: &str,
    keyring: std::sync::Arc<Keyring>,
    limits: &Limits,
) -> Result<IssuerSet, reqwest::Error> {
    let jwks =
        LocalJwks::new(move || serde_json::to_vec(&keyring.jwks(unix_now())).unwrap_or_default());
    let own = IssuerConfig {
        name: "sts".into(),
        issuer: issuer.to_string(),
        keys: KeySource::Local(jwks),
        algorithms: vec![Algorithm::ES256, Algorithm::EdDSA],
        max_token_lifetime: OWN_TOKEN_MAX_LIFETIME,
        leeway: std::time::Duration::from_secs(5),
        jwks_refresh: std::time::Duration::from_secs(1),
        jwks_max_stale: std::time::Duration::from_secs(3600),
    };
    let limits = Limits {
        jwks_refetch_cooldown: std::time::Duration::from_secs(1),
        ..*limits
    };
    IssuerSet::new(&[own], issuer, &limits, None)
}

/// The `aud` a JWT names (unverified): which audience to check it against when any of
/// ours will do. `None` when it has no single string audience.
fn claimed_audience(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    match &claims["aud"] {
        serde_json::Value::String(aud) => Some(aud.clone()),
        _ => None,
    }
}

/// The `token` parameter of a `/revoke` or `/introspect` form (RFC 7009 §2.1, RFC 7662
/// §2.1): exactly once, at most `max_token_bytes`; `token_type_hint` at most once and
/// otherwise ignored (only access tokens exist here), other parameters ignored.
pub fn token_parameter(body: &[u8], max_token_bytes: usize) -> Result<String, Rejection> {
    let mut token: Option<String> = None;
    let mut hint = false;
    for (name, value) in form_urlencoded::parse(body) {
        match &*name {
            "token" if token.is_some() => return Err(Rejection::RepeatedParameter),
            "token" => token = Some(value.into_owned()),
            "token_type_hint" if hint => return Err(Rejection::RepeatedParameter),
            "token_type_hint" => hint = true,
            _ => {}
        }
    }
    let token = token
        .filter(|t| !t.is_empty())
        .ok_or(Rejection::MissingTokenParameter)?;
    if token.len() > max_token_bytes {
        return Err(Rejection::TokenTooLarge);
    }
    Ok(token)
}

impl Sts {
    /// An access token of ours, for whatever audience it names (`None`: it is not one).
    pub(crate) async fn own_token(&self, token: &str, now: u64) -> Option<AccessToken> {
        self.own_token_and_audience(token, now)
            .await
            .map(|(token, _)| token)
    }

    /// [`own_token`](Self::own_token), and the audience it was verified for.
    pub(crate) async fn own_token_and_audience(
        &self,
        token: &str,
        now: u64,
    ) -> Option<(AccessToken, String)> {
        let audience = claimed_audience(token)?;
        let verified = self
            .own_tokens
            .verify_for(token, now, &[&audience])
            .await
            .ok()?;
        Some((AccessToken::from_verified(&verified).ok()?, audience))
    }

    /// The caller of `/revoke` (or another endpoint an agent calls with its token):
    /// its token as presented, with the proof a bound token needs for `url`.
    pub(crate) async fn authenticate_agent(
        &self,
        presented: Presented<'_>,
        url: &str,
        now: u64,
    ) -> Result<AccessToken, Rejection> {
        match presented {
            Presented::Bearer(raw) => {
                let token = self
                    .own_token(raw, now)
                    .await
                    .ok_or(Rejection::InvalidClient)?;
                // A bound token is worth nothing without its key's proof.
                if token.jkt.is_some() {
                    return Err(Rejection::InvalidClient);
                }
                Ok(token)
            }
            Presented::Dpop { token: raw, proof } => {
                let token = self
                    .own_token(raw, now)
                    .await
                    .ok_or(Rejection::InvalidClient)?;
                let Some(jkt) = token.jkt.as_deref() else {
                    return Err(Rejection::InvalidClient);
                };
                let target = ProofTarget {
                    method: "POST",
                    url,
                    access_token: Some(raw),
                };
                let proof = self
                    .proofs
                    .verify(proof, &target, now)
                    .map_err(|_| Rejection::InvalidDpopProof)?;
                if proof.jkt != jkt {
                    return Err(Rejection::InvalidDpopProof);
                }
                Ok(token)
            }
        }
    }

    /// `POST /revoke`: ends `token` for the agent presenting `caller`.
    pub async fn revoke(
        &self,
        caller: Presented<'_>,
        token: &str,
        now: u64,
    ) -> Result<(), Rejection> {
        let url = format!("{}/revoke", self.issuer.trim_end_matches('/'));
        let result = self.revoke_checked(caller, token, &url, now).await;
        let (outcome, reason, revoked) = match &result {
            Ok(Some(t)) => (Outcome::Allow, "revoked", Some(t)),
            Ok(None) => (Outcome::Allow, "revoke_not_a_token", None),
            Err(r) => (Outcome::Deny, r.reason(), None),
        };
        let record = Decision {
            subject: revoked.map(|t| t.subject.as_str()),
            actor: revoked
                .and_then(|t| t.actor.as_ref())
                .map(|a| a.sub.as_str()),
            action: revoked.map(|t| t.action.as_str()),
            jti: revoked.map(|t| t.jti.as_str()),
            expires_at: revoked.map(|t| t.expires_at),
            grant: Some("revocation"),
            ..Decision::now(outcome, reason)
        };
        let decision = if outcome == Outcome::Allow {
            "allow"
        } else {
            "deny"
        };
        if let Err(e) = self.audit.append_decision(&record) {
            tracing::error!(error = %e, "audit line of a revocation not written");
            let reason = Rejection::AuditUnavailable.reason();
            crate::sts::exchange::record_decision("deny", reason, None, None, None);
            return Err(Rejection::AuditUnavailable);
        }
        let action = revoked.map(|t| t.action.as_str());
        crate::sts::exchange::record_decision(decision, reason, action, None, None);
        result.map(|_| ())
    }

    async fn revoke_checked(
        &self,
        caller: Presented<'_>,
        token: &str,
        url: &str,
        now: u64,
    ) -> Result<Option<AccessToken>, Rejection> {
        let agent = self.authenticate_agent(caller, url, now).await?;
        if !self.rate_limiter.allow(&agent.client_id) {
            return Err(Rejection::RateLimited);
        }
        let Some(target) = self.own_token(token, now).await else {
            // RFC 7009 §2.2: an invalid token is no error; there is nothing to end.
            return Ok(None);
        };
        if target.client_id != agent.client_id {
            return Err(Rejection::NotYourToken);
        }
        let entry = DenyEntry {
            rule: DenyRule {
                id: deny_list::new_id(),
                target: DenyTarget::Jti {
                    jti: target.jti.clone(),
                },
                until: Some(target.expires_at.saturating_add(1)),
            },
            reason: Some("revoked by its holder (RFC 7009)".into()),
            added_by: agent.client_id.clone(),
            added_at: now,
        };
        self.deny
            .revoke(entry, now, &self.audit)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "revocation not written to the deny list");
                Rejection::DenyListUnavailable
            })?;
        tracing::info!(jti = %target.jti, client_id = %target.client_id, "token revoked");
        Ok(Some(target))
    }
}
