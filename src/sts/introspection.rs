//! Introspection (RFC 7662, `POST /introspect`): for services that cannot verify JWTs
//! themselves.
//!
//! The caller authenticates with its own workload token (`Authorization: Bearer`, a
//! JWT from a configured trust whose `aud` is this STS, checked like a subject token)
//! and must match an `[[introspection]]` entry's `callers`; it learns only about
//! tokens for that entry's `audiences`. A token that is malformed, foreign, expired,
//! for another audience, revoked or stopped by the deny list is `{"active": false}`,
//! with no reason given (§2.2). An active token's answer carries the claims a
//! resource needs, the whole `act` chain and `cnf` included, from an allow-list of
//! members; never the token itself.

use agent_sts_verifier::AccessToken;
use serde_json::{Map, Value, json};

use crate::audit::{Decision, Outcome};
use crate::catalogue::{SubjectPattern, TrustDirectory};
use crate::config::IntrospectionGrant;
use crate::identity::principal::Principal;
use crate::runtime::StartError;
use crate::secret::SubjectToken;
use crate::sts::exchange::Sts;
use crate::sts::oauth_error::Rejection;

/// Claims of an active token that the answer repeats (RFC 7662 §2.2, RFC 8693 §4.1,
/// RFC 7800 §3.1); anything else the token holds stays out.
const ANSWERED_CLAIMS: [&str; 11] = [
    "scope",
    "client_id",
    "sub",
    "aud",
    "iss",
    "exp",
    "iat",
    "nbf",
    "jti",
    "act",
    "cnf",
];

/// `[[introspection]]` with its patterns parsed.
#[derive(Debug, Default)]
pub struct IntrospectionPolicy {
    grants: Vec<(Vec<SubjectPattern>, Vec<String>)>,
}

impl IntrospectionPolicy {
    /// Parses every `callers` pattern against the configured trusts.
    pub fn new(
        grants: &[IntrospectionGrant],
        trusts: &TrustDirectory,
        source: &str,
    ) -> Result<Self, StartError> {
        let mut parsed = Vec::with_capacity(grants.len());
        for (i, grant) in grants.iter().enumerate() {
            let callers = grant
                .callers
                .iter()
                .map(|c| {
                    SubjectPattern::parse(c, trusts).map_err(|e| {
                        StartError::Config(format!("{source}: introspection[{i}].callers: {e}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            parsed.push((callers, grant.audiences.clone()));
        }
        Ok(IntrospectionPolicy { grants: parsed })
    }

    /// The audiences `caller` may ask about (empty: not allowed at all).
    fn audiences(&self, caller: &Principal<'_>) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .grants
            .iter()
            .filter(|(callers, _)| callers.iter().any(|p| p.matches(caller)))
            .flat_map(|(_, audiences)| audiences.iter().map(String::as_str))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

impl Sts {
    /// `POST /introspect`: the answer for `token`, asked by the workload `caller`.
    pub async fn introspect(
        &self,
        caller: &SubjectToken,
        token: &str,
        now: u64,
    ) -> Result<Value, Rejection> {
        let Ok(verified) = self.trusts.verify(caller, now).await else {
            return Err(self.refuse(Rejection::InvalidClient));
        };
        let principal = Principal {
            trust: &verified.trust,
            subject: &verified.subject,
            spiffe_domains: &verified.spiffe_domains,
        };
        let client_id = format!("{}:{}", verified.trust, verified.subject);
        let audit = |outcome, reason: &str, token: Option<&AccessToken>| {
            let record = Decision {
                trust: Some(&verified.trust),
                subject: token.map(|t| t.subject.as_str()),
                actor: Some(&client_id),
                action: token.map(|t| t.action.as_str()),
                jti: token.map(|t| t.jti.as_str()),
                expires_at: token.map(|t| t.expires_at),
                grant: Some("introspection"),
                ..Decision::now(outcome, reason)
            };
            crate::sts::exchange::record_decision(
                if outcome == Outcome::Allow {
                    "allow"
                } else {
                    "deny"
                },
                reason,
                token.map(|t| t.action.as_str()),
                Some(&verified.trust),
                None,
            );
            self.audit.append_decision(&record).map_err(|e| {
                tracing::error!(error = %e, "audit line of an introspection not written");
                Rejection::AuditUnavailable
            })
        };
        let audiences = self.introspection.audiences(&principal);
        if audiences.is_empty() {
            audit(Outcome::Deny, "introspection_not_allowed", None)?;
            return Err(Rejection::InvalidClient);
        }
        if !self.rate_limiter.allow(&client_id) {
            audit(Outcome::Deny, Rejection::RateLimited.reason(), None)?;
            return Err(Rejection::RateLimited);
        }
        if !self.deny.fresh(now) {
            audit(Outcome::Deny, Rejection::DenyListUnavailable.reason(), None)?;
            return Err(Rejection::DenyListUnavailable);
        }
        let Ok(jwt) = self.own_tokens.verify_for(token, now, &audiences).await else {
            audit(Outcome::Allow, "introspected_inactive", None)?;
            return Ok(json!({"active": false}));
        };
        let Ok(access) = AccessToken::from_verified(&jwt) else {
            audit(Outcome::Allow, "introspected_inactive", None)?;
            return Ok(json!({"active": false}));
        };
        if let Some(entry) = self.deny.refusal(&access, now) {
            tracing::info!(entry = %entry, "introspected token is on the deny list");
            audit(Outcome::Allow, "introspected_inactive", Some(&access))?;
            return Ok(json!({"active": false}));
        }
        audit(Outcome::Allow, "introspected_active", Some(&access))?;
        let mut answer = Map::new();
        answer.insert("active".into(), Value::Bool(true));
        for name in ANSWERED_CLAIMS {
            if let Some(v) = jwt.claims.get(name) {
                answer.insert(name.into(), v.clone());
            }
        }
        let token_type = if access.jkt.is_some() {
            "DPoP"
        } else {
            "Bearer"
        };
        answer.insert("token_type".into(), Value::String(token_type.into()));
        Ok(Value::Object(answer))
    }
}
