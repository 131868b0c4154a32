//! Delegation chains that only narrow (RFC 8693 §4.1 nested `act`; README, "Delegating
//! to a sub-agent").
//!
//! A sub-agent exchanges its parent's access token (`subject_token_type`
//! `...:access_token`) and its own workload token (`actor_token`) for a token for an
//! action the parent's action lists in `delegable_to`. What it gets never reaches
//! further than what the parent holds:
//! - the action is one the catalogue declares delegable from the parent's action, and
//!   the catalogue grants it to the sub-agent like to any agent;
//! - the audience is the parent's (the catalogue refuses a `delegable_to` naming
//!   another audience);
//! - `exp` is never after the parent's (nor the sub-agent's workload token's);
//! - the chain nests with the newest actor outermost, `sub` stays the parent's, and
//!   it is at most `tokens.max_delegation_depth` actors deep;
//! - a DPoP-bound parent is usable only with a proof by its key (carrying its hash),
//!   and the child is bound to the same key;
//! - a parent that is expired, revoked, for another audience or stopped by the deny
//!   list (any identity of its chain) gives nothing, and neither does a sub-agent the
//!   deny list names.
//!
//! Our own tokens are accepted as subject here only; as a workload token anywhere else
//! they are still refused.

use agent_sts_verifier::{AccessToken, Proof, ProofTarget};

use crate::catalogue::{Action, SenderConstraint};
use crate::control::DenyCheck;
use crate::sts::exchange::{Facts, Sts, principal, qualified, refused_identity};
use crate::sts::mint::{Actor, Grant, Minted};
use crate::sts::oauth_error::Rejection;
use crate::sts::token_exchange::ExchangeRequest;

impl Sts {
    /// The decision for a sub-agent's request (see the module docs).
    pub(crate) async fn decide_sub_delegation(
        &self,
        req: &ExchangeRequest,
        proof: Option<Proof>,
        now: u64,
        facts: &mut Facts,
    ) -> Result<Minted, Rejection> {
        // 1. The parent token (ours, any audience) and the sub-agent.
        let parent_raw = req.subject_token.expose();
        let (parent, parent_audience) = self
            .own_token_and_audience(parent_raw, now)
            .await
            .ok_or(Rejection::InvalidSubjectToken)?;
        facts.parent_subject = Some(parent.subject.clone());
        let actor_token = req
            .actor_token
            .as_ref()
            .ok_or(Rejection::DelegationRequired)?;
        let actor = self
            .trusts
            .verify(actor_token, now)
            .await
            .map_err(|e| refused_identity(&e, "actor_token", Rejection::InvalidActorToken))?;
        facts.actor = Some(actor.clone());
        let client_id = qualified(&actor);

        // 2. Rate limit, then the proof: a bound parent only with its key's proof.
        if !self.rate_limiter.allow(&client_id) {
            return Err(Rejection::RateLimited);
        }
        let proof = match (&parent.jkt, proof) {
            (Some(jkt), Some(p)) => Some(self.check_parent_proof(req, &p, jkt, now)?),
            (Some(_), None) => return Err(Rejection::InvalidDpopProof),
            (None, p) => p,
        };
        if let Some(p) = &proof {
            self.proofs
                .remember(p)
                .map_err(|_| Rejection::InvalidDpopProof)?;
        }

        // 3. The chain's depth, then the catalogue: delegable from the parent's action,
        // granted to the sub-agent, for the parent's audience.
        let depth = parent.actors().count() + 1;
        if depth > self.max_delegation_depth {
            return Err(Rejection::DelegationTooDeep);
        }
        if crate::catalogue::is_action_name(&req.action) {
            facts.requested = Some(req.action.clone());
        }
        let catalogue = self.catalogue.load();
        let from = catalogue
            .get(&parent.action)
            .ok_or(Rejection::NotDelegable)?;
        if !from.delegable_to.contains(&req.action) {
            return Err(Rejection::NotDelegable);
        }
        let action: &Action = catalogue.get(&req.action).ok_or(Rejection::NotDelegable)?;
        if !action.permits_agent(&principal(&actor)) {
            return Err(Rejection::ActionNotPermitted);
        }
        facts.action = Some(action.name.as_str().into());
        facts.audience = Some(action.audience.clone());
        if parent_audience != action.audience
            || req
                .audiences
                .iter()
                .chain(&req.resources)
                .any(|t| *t != action.audience)
        {
            return Err(Rejection::InvalidTarget);
        }

        // 4. The kill switch: every identity of the parent's chain, the sub-agent, the
        // action.
        self.check_chain(&parent, &actor, &action.name, now)?;
        let constraint = action.sender_constraint.unwrap_or(self.dpop.default);
        if constraint == SenderConstraint::Dpop && proof.is_none() {
            return Err(Rejection::InvalidDpopProof);
        }

        // 5. Credential gate, then the mint: the parent's subject, the chain one actor
        // deeper, never outliving the parent.
        self.credential_gate(action).await?;
        let act = Actor {
            sub: actor.subject.clone(),
            iss: actor.issuer.to_string(),
            act: parent.actor.clone().map(Box::new),
        };
        let grant = Grant {
            issuer: &self.issuer,
            subject: &parent.subject,
            client_id: &client_id,
            audience: &action.audience,
            action: &action.name,
            actor: Some(&act),
            ttl_secs: self.ttl_secs(action),
            not_after: parent.expires_at.min(actor.expires_at),
            jkt: proof.as_ref().map(|p| p.jkt.as_str()),
        };
        self.sign(&grant, now, Rejection::InvalidSubjectToken).await
    }

    /// A bound parent's proof: by its key, for the token endpoint, carrying the
    /// parent token's hash.
    fn check_parent_proof(
        &self,
        req: &ExchangeRequest,
        proof: &Proof,
        jkt: &str,
        now: u64,
    ) -> Result<Proof, Rejection> {
        let raw = req
            .dpop
            .as_ref()
            .ok_or(Rejection::InvalidDpopProof)?
            .expose();
        let target = ProofTarget {
            method: "POST",
            url: &self.token_url,
            access_token: Some(req.subject_token.expose()),
        };
        let checked = self
            .proofs
            .check(raw, &target, now)
            .map_err(|_| Rejection::InvalidDpopProof)?;
        if checked.jkt != jkt || checked.jkt != proof.jkt {
            return Err(Rejection::InvalidDpopProof);
        }
        Ok(checked)
    }

    /// The deny list against the parent token (its subject, client and every actor),
    /// the sub-agent and the action.
    fn check_chain(
        &self,
        parent: &AccessToken,
        actor: &crate::identity::VerifiedToken,
        action: &str,
        now: u64,
    ) -> Result<(), Rejection> {
        if !self.deny.fresh(now) {
            return Err(Rejection::DenyListUnavailable);
        }
        if let Some(entry) = self.deny.refusal(parent, now) {
            tracing::warn!(entry = %entry, "a sub-agent's parent token is on the deny list");
            return Err(Rejection::Denied);
        }
        match self.deny.check(None, Some(&principal(actor)), action, now) {
            DenyCheck::Allowed => Ok(()),
            DenyCheck::Denied(entry) => {
                tracing::warn!(entry = %entry, "a sub-agent is on the deny list");
                Err(Rejection::Denied)
            }
            DenyCheck::Unavailable => Err(Rejection::DenyListUnavailable),
        }
    }
}
