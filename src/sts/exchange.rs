//! The token service: one exchange, from a checked request to a minted token or a
//! refusal. No HTTP here: the handler in [`crate::sts::http`] extracts, calls
//! [`Sts::exchange`], and converts.
//!
//! Both grants arrive as one [`ExchangeRequest`]: a jwt-bearer (RFC 7523) request is
//! a token exchange whose subject token is the assertion, with no actor and one
//! `resource`. Only step 1 (how the identity token is verified, and the error code of
//! a bad one) and the spending of a single-use assertion in step 2 depend on the grant.
//!
//! The order of checks is the policy:
//! 1. verify the subject token (and the actor token, when delegating) against the
//!    configured trusts; a jwt-bearer assertion may name the issuer or the token
//!    endpoint as its audience, and a bad one is `invalid_grant`;
//! 2. rate-limit the verified agent identity; then its DPoP proof's `jti` and, for a
//!    trust with `single_use_assertions`, its assertion's `jti` are spent;
//! 3. the catalogue: the action exists and is granted to the agent, bound to its
//!    (trust, subject); an unknown action and an ungranted one are the same refusal,
//!    so the catalogue cannot be enumerated; then the deny list (the kill switch): no
//!    identity of the request and not its action is stopped, and the list is fresh;
//! 4. delegation as the action allows, the delegating subject granted by `subjects`,
//!    and the actor named by the subject token's `may_act` when it has one;
//! 5. `audience`/`resource`, if sent, name the action's audience;
//! 6. the action's credential is present and enabled at the source;
//! 7. a signing key is active; mint with `exp = min(action ttl, max_ttl, subject exp)`;
//! 8. the decision is in the audit log before the token is returned.
//!
//! Every decision, allowed or denied, is audited and counted; denials are logged with
//! the component error (never token content) while the client sees only the fixed
//! description of its [`Rejection`].

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::audit::{AuditLog, Decision, Outcome, RefusalWindow};
use crate::catalogue::{Action, Catalogue, Delegation, Principal, SenderConstraint};
use crate::control::{DenyCheck, DenyGuard};
use crate::identity::replay::ReplayError;
use crate::identity::{JwtError, TrustStore, VerifiedToken};
use crate::keys::Keyring;
use crate::keys::signing_key::KeyMaterialError;
use crate::secret::{DpopProof, MintedJwt};
use crate::store::secrets::{CredentialCache, CredentialError, SecretStoreError, StoreHealth};
use crate::store::vault::Vault;
use crate::sts::mint::{Actor, Grant, MintError, mint_with};
use crate::sts::oauth_error::Rejection;
use crate::sts::rate_limit::IdentityRateLimiter;
use crate::sts::token_exchange::{ExchangeRequest, GrantType, SubjectType};
use crate::telemetry::metrics::{ActionLabels, DenialLabels, Metrics, OTHER_ACTION};
use agent_sts_verifier::{DpopRules, DpopVerifier, IssuerSet, NonceSource, Proof, ProofTarget};

/// A successful exchange (RFC 8693 §2.2.1).
#[derive(Debug)]
pub struct Issued {
    pub access_token: MintedJwt,
    pub expires_in: u64,
    pub scope: String,
    /// `DPoP` for a token bound to a proof's key (RFC 9449 §5), else `Bearer`.
    pub token_type: &'static str,
}

/// How the STS treats DPoP proofs at `/token`.
#[derive(Debug, Clone, Copy)]
pub struct DpopSettings {
    /// For actions that do not say: bearer unless a proof is sent, or proof required.
    pub default: SenderConstraint,
    /// Proofs must carry a current server nonce.
    pub nonces: bool,
    /// How old a proof's `iat` may be (also a nonce window).
    pub max_age: Duration,
}

/// Label of the secret DPoP nonces are keyed with (derived from the keyring).
const NONCE_LABEL: &[u8] = b"agent-sts dpop nonce v1";

/// What a token service is built from (see [`crate::sts::app`]).
pub struct StsParts {
    /// `iss` of minted tokens, and the audience workload tokens must carry.
    pub issuer: String,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    pub trusts: TrustStore,
    pub catalogue: Catalogue,
    pub keyring: Arc<Keyring>,
    pub credentials: CredentialCache,
    /// The Vault client behind the stores, when Vault is configured (for readiness).
    pub vault: Option<Arc<Vault>>,
    pub audit: AuditLog,
    pub metrics: Arc<Metrics>,
    pub rate_limiter: IdentityRateLimiter,
    pub dpop: DpopSettings,
    /// The kill switch: this replica's deny list.
    pub deny: DenyGuard,
    /// Verifies this STS's own tokens ([`crate::sts::revocation::own_token_verifier`]).
    pub own_tokens: IssuerSet,
    /// Who may introspect which audiences.
    pub introspection: crate::sts::introspection::IntrospectionPolicy,
    /// Most actors a delegation chain may hold.
    pub max_delegation_depth: usize,
}

/// A token service. Its parts are its own: handlers and refreshers go through the
/// methods below.
pub struct Sts {
    pub(crate) issuer: String,
    pub(crate) default_ttl: Duration,
    pub(crate) max_ttl: Duration,
    pub(crate) trusts: TrustStore,
    pub(crate) catalogue: ArcSwap<Catalogue>,
    pub(crate) keyring: Arc<Keyring>,
    pub(crate) credentials: CredentialCache,
    vault: Option<Arc<Vault>>,
    pub(crate) audit: AuditLog,
    /// Refusals before any identity is known, summarised per window.
    anonymous: RefusalWindow,
    metrics: Arc<Metrics>,
    pub(crate) rate_limiter: IdentityRateLimiter,
    pub(crate) dpop: DpopSettings,
    /// Checks proofs and remembers their `jti`s.
    pub(crate) proofs: DpopVerifier,
    /// `{issuer}/token`: the `htu` proofs must name.
    pub(crate) token_url: String,
    pub(crate) deny: DenyGuard,
    /// Verifies the access tokens this STS minted (revocation, introspection).
    pub(crate) own_tokens: IssuerSet,
    pub(crate) introspection: crate::sts::introspection::IntrospectionPolicy,
    /// Most actors a delegation chain may hold (`tokens.max_delegation_depth`).
    pub(crate) max_delegation_depth: usize,
}

impl std::fmt::Debug for Sts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sts")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// The readiness checks of `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// The catalogue has at least one action.
    pub catalogue: bool,
    /// A signing key is active now.
    pub signing_key: bool,
    /// Whether the secret store can serve reads, as it last knew.
    pub secret_store: StoreHealth,
    /// The Vault session, when Vault is configured: its health, or a warning.
    pub vault: Option<StoreHealth>,
    /// The keyring's last refresh error, if its last refresh failed.
    pub keyring_error: Option<String>,
    /// The deny list was read within `deny.max_stale`.
    pub deny_list: bool,
}

impl Readiness {
    /// Ready to mint: catalogue, signing key and secret store all ok.
    pub fn ready(&self) -> bool {
        self.catalogue
            && self.signing_key
            && self.deny_list
            && self.secret_store.ok
            && self.vault.as_ref().is_none_or(|v| v.ok)
    }
}

/// What is known about a request when it is decided, for the audit record.
#[derive(Default)]
pub(crate) struct Facts {
    pub(crate) subject: Option<VerifiedToken>,
    pub(crate) actor: Option<VerifiedToken>,
    /// The catalogue action, once known to exist and be granted (metric label).
    pub(crate) action: Option<Arc<str>>,
    /// The action asked for, when it is a well-formed action name: the audit log
    /// records it even when it is unknown or not granted (never a metric label).
    pub(crate) requested: Option<String>,
    pub(crate) audience: Option<String>,
    /// For a sub-agent's request: the parent token's subject (the audit's `subject`).
    pub(crate) parent_subject: Option<String>,
}

/// Records a decision on the current (request) span when it is exported (README,
/// "Traces"): `decision`, `reason` (the audit reason code), the catalogue `action`,
/// the `trust` name and the signing `kid`; the same for `/revoke` and `/introspect`
/// at their audit points. With telemetry off this does nothing: the span's log
/// fields stay as they were.
pub(crate) fn record_decision(
    decision: &'static str,
    reason: &str,
    action: Option<&str>,
    trust: Option<&str>,
    kid: Option<&str>,
) {
    crate::telemetry::traces::set_attributes(
        &tracing::Span::current(),
        &[
            ("decision", Some(decision)),
            ("reason", Some(reason)),
            ("action", action),
            ("trust", trust),
            ("kid", kid),
        ],
    );
}

pub(crate) fn principal(v: &VerifiedToken) -> Principal<'_> {
    Principal {
        trust: &v.trust,
        subject: &v.subject,
        spiffe_domains: &v.spiffe_domains,
    }
}

/// The refusal for a subject or actor token that did not verify: `invalid` (400), or
/// 503 when the cause is ours (the issuer's keys could not be fetched and none are
/// cached), so a client retries instead of giving up on a good token.
pub(crate) fn refused_identity(
    error: &JwtError,
    which: &'static str,
    invalid: Rejection,
) -> Rejection {
    if let JwtError::JwksUnavailable { .. } = error {
        tracing::warn!(token = which, error = %error, "token not checked: the issuer's keys are unavailable");
        Rejection::IssuerKeysUnavailable
    } else {
        tracing::debug!(token = which, error = %error, "token refused");
        invalid
    }
}

/// Whether the subject token lets `actor` act for it: no `may_act` claim (RFC 8693
/// §4.4) leaves it to the catalogue; one that is present must name the actor's `sub`
/// (and `iss`, when it gives one). A malformed `may_act` allows no one.
fn may_act(subject: &VerifiedToken, actor: &VerifiedToken) -> bool {
    let Some(may) = subject.claims.get("may_act") else {
        return true;
    };
    let named = |k: &str| may.get(k).and_then(serde_json::Value::as_str);
    named("sub") == Some(actor.subject.as_str())
        && match may.get("iss") {
            None => true,
            Some(_) => named("iss") == Some(&*actor.issuer),
        }
}

/// `trust:subject`: an identity qualified by the trust it verified under.
pub(crate) fn qualified(v: &VerifiedToken) -> String {
    format!("{}:{}", v.trust, v.subject)
}

impl Sts {
    pub fn new(parts: StsParts) -> Sts {
        let token_url = format!("{}/token", parts.issuer.trim_end_matches('/'));
        Sts {
            token_url,
            issuer: parts.issuer,
            default_ttl: parts.default_ttl,
            max_ttl: parts.max_ttl,
            trusts: parts.trusts,
            catalogue: ArcSwap::from_pointee(parts.catalogue),
            keyring: parts.keyring,
            credentials: parts.credentials,
            vault: parts.vault,
            audit: parts.audit,
            anonymous: RefusalWindow::default(),
            metrics: parts.metrics,
            rate_limiter: parts.rate_limiter,
            proofs: DpopVerifier::new(DpopRules {
                max_age: parts.dpop.max_age,
                ..DpopRules::default()
            }),
            dpop: parts.dpop,
            deny: parts.deny,
            own_tokens: parts.own_tokens,
            introspection: parts.introspection,
            max_delegation_depth: parts.max_delegation_depth,
        }
    }

    /// The algorithms DPoP proofs may use (metadata).
    pub fn dpop_algorithms(&self) -> Vec<&'static str> {
        self.proofs
            .rules()
            .algorithms
            .iter()
            .map(|a| a.as_str())
            .collect()
    }

    /// The nonces valid at `now`: keyed by secrets derived from the published keys,
    /// so every replica with the same keyring issues and accepts the same ones.
    fn nonce_sources(&self, now: u64) -> Vec<NonceSource> {
        self.keyring
            .derived_secrets(NONCE_LABEL, now)
            .iter()
            .map(|secret| NonceSource::new(secret, self.dpop.max_age))
            .collect()
    }

    /// The `DPoP-Nonce` to hand out at `now`, when nonces are on.
    pub fn dpop_nonce(&self, now: u64) -> Option<String> {
        if !self.dpop.nonces {
            return None;
        }
        self.nonce_sources(now).first().map(|n| n.issue(now))
    }

    /// Checks the `DPoP` proof of a token request (RFC 9449 §5): the key it proves,
    /// or the refusal. A bad proof is refused before any identity is looked at; its
    /// `jti` is remembered only once the agent is known (see `decide`).
    fn check_proof(&self, proof: &DpopProof, now: u64) -> Result<Proof, Rejection> {
        let target = ProofTarget {
            method: "POST",
            url: &self.token_url,
            access_token: None,
        };
        let proof = self
            .proofs
            .check(proof.expose(), &target, now)
            .map_err(|e| {
                tracing::debug!(error = %e, "DPoP proof refused");
                Rejection::InvalidDpopProof
            })?;
        if self.dpop.nonces {
            let fresh = proof
                .nonce
                .as_deref()
                .is_some_and(|n| self.nonce_sources(now).iter().any(|s| s.accepts(n, now)));
            if !fresh {
                return Err(Rejection::UseDpopNonce);
            }
        }
        Ok(proof)
    }

    /// `iss` of minted tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The JWKS document at `now`: next, active and retiring keys.
    pub fn jwks(&self, now: u64) -> serde_json::Value {
        self.keyring.jwks(now)
    }

    /// Writes the summary lines of the anonymous refusals counted since the last call.
    pub fn flush_anonymous_refusals(&self) {
        if let Err(e) = self.anonymous.flush(&self.audit) {
            self.metrics.audit_write_failures.inc();
            tracing::error!(error = %e, "audit summary of anonymous refusals not written");
        }
    }

    /// Re-reads the deny list (the periodic refresher); failures keep the last good one.
    pub async fn refresh_deny_list(&self, now: u64) {
        self.deny.refresh(now, &self.audit).await;
    }

    /// The signed deny-list feed at `now` (`None`: the list is stale, or no key signs).
    pub async fn deny_feed(&self, now: u64) -> Option<Arc<str>> {
        self.deny.feed(&self.keyring, now).await
    }

    /// Re-reads the keyring (the periodic refresher); failures keep the last good ring.
    pub async fn refresh_keys(&self, now: u64) {
        let _ = self.keyring.refresh(now).await;
    }

    /// Serves `catalogue` from the next request on.
    /// Installs `catalogue` and returns the one it replaces.
    pub fn replace_catalogue(&self, catalogue: Arc<Catalogue>) -> Arc<Catalogue> {
        self.catalogue.swap(catalogue)
    }

    /// What `/readyz` reports at `now`.
    pub async fn readiness(&self, now: u64) -> Readiness {
        Readiness {
            catalogue: !self.catalogue.load().is_empty(),
            signing_key: self.keyring.signer(now).is_some(),
            secret_store: self.credentials.health().await,
            vault: self.vault.as_ref().map(|v| v.health()),
            keyring_error: self.keyring.health().last_error.clone(),
            deny_list: self.deny.fresh(now),
        }
    }

    /// Records how long one `/token` request took.
    pub fn observe_token_latency(&self, elapsed: Duration) {
        self.metrics.token_latency.observe(elapsed.as_secs_f64());
    }

    /// The metrics in the text exposition format.
    pub fn render_metrics(&self) -> String {
        let (age, next) = self.keyring.timeline(crate::identity::unix_now());
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        match age {
            Some(age) => self.metrics.signing_key_age.set(gauge(age)),
            None => self.metrics.signing_key_age.set(0),
        };
        self.metrics.next_key_activation.set(next.map_or(0, gauge));
        self.metrics.render()
    }

    /// Decides one exchange at `now` (unix seconds).
    pub async fn exchange(&self, request: ExchangeRequest, now: u64) -> Result<Issued, Rejection> {
        let started = std::time::Instant::now();
        let mut facts = Facts::default();
        let result = self.decide(&request, now, &mut facts).await;
        let (outcome, reason, minted) = match &result {
            Ok(m) => (Outcome::Allow, "issued", Some(m)),
            Err(r) => (Outcome::Deny, r.reason(), None),
        };
        let actor = facts.actor.as_ref().map(qualified);
        let record = Decision {
            trust: facts.subject.as_ref().map(|s| &*s.trust),
            subject: facts
                .subject
                .as_ref()
                .map(|s| s.subject.as_str())
                .or(facts.parent_subject.as_deref()),
            actor: actor.as_deref(),
            action: facts.action.as_deref().or(facts.requested.as_deref()),
            audience: facts.audience.as_deref(),
            jti: minted.map(|m| m.jti.as_str()),
            kid: minted.map(|m| m.kid.as_str()),
            expires_at: minted.map(|m| m.expires_at),
            grant: Some(request.grant.as_str()),
            ..Decision::now(outcome, reason)
        };
        // A refusal before any identity verified is anonymous: the first of each reason
        // per window is written, the rest counted into a summary line.
        let summarised = minted.is_none()
            && facts.subject.is_none()
            && facts.actor.is_none()
            && !self.anonymous.admit(reason);
        let written = if summarised {
            Ok(())
        } else {
            self.audit.append_decision(&record)
        };
        if let Err(e) = written {
            self.metrics.audit_write_failures.inc();
            tracing::error!(error = %e, "audit log write failed; refusing the request");
            self.count_denial(facts.action.as_deref(), Rejection::AuditUnavailable);
            record_decision(
                "deny",
                Rejection::AuditUnavailable.reason(),
                facts.action.as_deref(),
                facts.subject.as_ref().map(|s| &*s.trust),
                None,
            );
            return Err(Rejection::AuditUnavailable);
        }
        // The request span's decision (README, "Traces"): closed sets and the
        // configured trust name only; never the subject or a token.
        record_decision(
            if minted.is_some() { "allow" } else { "deny" },
            reason,
            facts.action.as_deref(),
            facts.subject.as_ref().map(|s| &*s.trust),
            minted.map(|m| m.kid.as_str()),
        );
        if !summarised {
            // One decision event per request, at the level operators keep on: who, what,
            // why, how long; never a token. Anonymous refusals are sampled like the audit
            // log's (the first of each reason per window).
            let agent = facts.actor.as_ref().or(facts.subject.as_ref());
            tracing::info!(
                target: "agent_sts::decision",
                decision = if minted.is_some() { "allow" } else { "deny" },
                reason,
                grant = request.grant.as_str(),
                trust = facts.subject.as_ref().map(|s| &*s.trust),
                subject = facts.subject.as_ref().map(|s| s.subject.as_str()),
                client_id = agent.map(qualified),
                action = record.action,
                kid = minted.map(|m| m.kid.as_str()),
                bound = minted.map(|m| m.bound),
                latency_us = started.elapsed().as_micros() as u64,
                "token request decided"
            );
        }
        match result {
            Ok(m) => {
                let action = facts.action.as_deref().unwrap_or(OTHER_ACTION);
                self.metrics
                    .tokens_issued
                    .get_or_create(&ActionLabels {
                        action: action.to_string(),
                    })
                    .inc();
                Ok(Issued {
                    access_token: m.access_token,
                    expires_in: m.expires_in,
                    scope: action.to_string(),
                    token_type: if m.bound { "DPoP" } else { "Bearer" },
                })
            }
            Err(r) => {
                self.count_denial(facts.action.as_deref(), r);
                Err(r)
            }
        }
    }

    /// Records a refusal decided before the request could be read (transport rules,
    /// form errors): audited and counted like any other decision.
    pub fn refuse(&self, rejection: Rejection) -> Rejection {
        let record = Decision::now(Outcome::Deny, rejection.reason());
        let admitted = self.anonymous.admit(rejection.reason());
        let written = if admitted {
            self.audit.append_decision(&record)
        } else {
            Ok(())
        };
        let rejection = match written {
            Ok(()) => rejection,
            Err(e) => {
                self.metrics.audit_write_failures.inc();
                tracing::error!(error = %e, "audit log write failed");
                Rejection::AuditUnavailable
            }
        };
        record_decision("deny", rejection.reason(), None, None, None);
        if admitted {
            tracing::info!(
                target: "agent_sts::decision",
                decision = "deny",
                reason = rejection.reason(),
                "token request decided"
            );
        }
        self.count_denial(None, rejection);
        rejection
    }

    fn count_denial(&self, action: Option<&str>, r: Rejection) {
        self.metrics
            .tokens_denied
            .get_or_create(&DenialLabels {
                action: action.unwrap_or(OTHER_ACTION).to_string(),
                reason: r.reason(),
            })
            .inc();
    }

    async fn decide(
        &self,
        req: &ExchangeRequest,
        now: u64,
        facts: &mut Facts,
    ) -> Result<crate::sts::mint::Minted, Rejection> {
        // 0. Proof of possession, when sent: a bad one stops here (RFC 9449 §5).
        let proof = match &req.dpop {
            Some(p) => Some(self.check_proof(p, now)?),
            None => None,
        };

        // A parent agent's token handed to a sub-agent: its own path, which only
        // narrows (crate::sts::delegation).
        if req.subject_type == SubjectType::AccessToken {
            return self.decide_sub_delegation(req, proof, now, facts).await;
        }

        // 1. Identities.
        let subject = match req.grant {
            GrantType::TokenExchange => self.trusts.verify(&req.subject_token, now).await,
            GrantType::JwtBearer => self.trusts.verify_assertion(&req.subject_token, now).await,
        }
        .map_err(|e| match req.grant {
            GrantType::TokenExchange => {
                refused_identity(&e, "subject_token", Rejection::InvalidSubjectToken)
            }
            GrantType::JwtBearer => refused_identity(&e, "assertion", Rejection::InvalidAssertion),
        })?;
        facts.subject = Some(subject.clone());
        let actor = match &req.actor_token {
            Some(t) => {
                let a = self.trusts.verify(t, now).await.map_err(|e| {
                    refused_identity(&e, "actor_token", Rejection::InvalidActorToken)
                })?;
                facts.actor = Some(a.clone());
                Some(a)
            }
            None => None,
        };
        let agent = actor.as_ref().unwrap_or(&subject);
        let client_id = qualified(agent);

        // 2. Rate limit the verified agent; only then may its proof take a place in
        // the bounded replay cache (an anonymous flood of fresh-key proofs cannot).
        if !self.rate_limiter.allow(&client_id) {
            return Err(Rejection::RateLimited);
        }
        if let Some(p) = &proof {
            self.proofs.remember(p).map_err(|_| {
                tracing::debug!("DPoP proof replayed");
                Rejection::InvalidDpopProof
            })?;
        }
        if req.grant == GrantType::JwtBearer {
            self.trusts
                .spend_assertion(&subject, now)
                .map_err(|e| match e {
                    ReplayError::Full => {
                        tracing::warn!(error = %e, "single-use assertion refused");
                        Rejection::SpentAssertionsFull
                    }
                    e => {
                        tracing::debug!(error = %e, "assertion refused");
                        Rejection::AssertionReplayed
                    }
                })?;
        }

        // 3. Catalogue.
        if crate::catalogue::is_action_name(&req.action) {
            facts.requested = Some(req.action.clone());
        }
        let catalogue = self.catalogue.load();
        let action: &Action = catalogue
            .get(&req.action)
            .ok_or(Rejection::ActionNotPermitted)?;
        if !action.permits_agent(&principal(agent)) {
            return Err(Rejection::ActionNotPermitted);
        }
        facts.action = Some(action.name.as_str().into());
        facts.audience = Some(action.audience.clone());
        match self.deny.check(
            Some(&principal(&subject)),
            actor.as_ref().map(principal).as_ref(),
            &action.name,
            now,
        ) {
            DenyCheck::Allowed => {}
            DenyCheck::Denied(entry) => {
                tracing::warn!(entry = %entry, client_id = %client_id, action = %action.name, "token request refused by the deny list");
                return Err(Rejection::Denied);
            }
            DenyCheck::Unavailable => return Err(Rejection::DenyListUnavailable),
        }
        let constraint = action.sender_constraint.unwrap_or(self.dpop.default);
        if constraint == SenderConstraint::Dpop && proof.is_none() {
            return Err(Rejection::InvalidDpopProof);
        }

        // 4. Delegation.
        match (&actor, action.delegation) {
            (Some(_), Delegation::Forbidden) => return Err(Rejection::DelegationForbidden),
            (None, Delegation::Required) => return Err(Rejection::DelegationRequired),
            (Some(_), _) if !action.permits_subject(&principal(&subject)) => {
                return Err(Rejection::ActionNotPermitted);
            }
            (Some(actor), _) if !may_act(&subject, actor) => {
                return Err(Rejection::ActorNotAllowed);
            }
            _ => {}
        }

        // 5. Target.
        if req
            .audiences
            .iter()
            .chain(&req.resources)
            .any(|t| *t != action.audience)
        {
            return Err(Rejection::InvalidTarget);
        }

        // 6. Credential gate.
        self.credential_gate(action).await?;

        // 7. Mint.
        let act = actor.as_ref().map(|a| Actor {
            sub: a.subject.clone(),
            iss: a.issuer.to_string(),
            act: None,
        });
        let not_after = match &actor {
            Some(a) => subject.expires_at.min(a.expires_at),
            None => subject.expires_at,
        };
        let grant = Grant {
            issuer: &self.issuer,
            subject: &subject.subject,
            client_id: &client_id,
            audience: &action.audience,
            action: &action.name,
            actor: act.as_ref(),
            ttl_secs: self.ttl_secs(action),
            not_after,
            jkt: proof.as_ref().map(|p| p.jkt.as_str()),
        };
        let expiring = match req.grant {
            GrantType::JwtBearer => Rejection::InvalidAssertion,
            GrantType::TokenExchange => Rejection::InvalidSubjectToken,
        };
        self.sign(&grant, now, expiring).await
    }

    /// The lifetime asked for `action`: its `ttl`, else `tokens.default_ttl`, capped
    /// by `tokens.max_ttl`.
    pub(crate) fn ttl_secs(&self, action: &Action) -> u64 {
        action
            .ttl
            .unwrap_or(self.default_ttl)
            .min(self.max_ttl)
            .as_secs()
    }

    /// The credential gate (step 6 of every path that mints): the action's integration
    /// credential is present and enabled at the source.
    pub(crate) async fn credential_gate(&self, action: &Action) -> Result<(), Rejection> {
        let Some(path) = &action.credential else {
            return Ok(());
        };
        self.credentials.usable(path).await.map_err(|e| match e {
            // A configuration error, like a missing credential, and no reason to
            // retry; logged once per interval by the Vault client.
            CredentialError::Store(SecretStoreError::Denied { .. }) => {
                Rejection::CredentialUnavailable
            }
            CredentialError::Store(_) => {
                tracing::warn!(action = %action.name, error = %e, "secret store unavailable");
                Rejection::SecretStoreUnavailable
            }
            _ => {
                tracing::debug!(action = %action.name, error = %e, "credential gate closed");
                Rejection::CredentialUnavailable
            }
        })?;
        Ok(())
    }

    /// Signs `grant` with the active key (step 7 of every path that mints), locally or
    /// through the remote signer (Vault Transit); `expiring` is the refusal when the
    /// identity token expires too soon to mint anything.
    pub(crate) async fn sign(
        &self,
        grant: &Grant<'_>,
        now: u64,
        expiring: Rejection,
    ) -> Result<crate::sts::mint::Minted, Rejection> {
        let key = self.keyring.signer(now).ok_or_else(|| {
            tracing::error!("no active signing key");
            Rejection::SigningKeyUnavailable
        })?;
        mint_with(&key, grant, now).await.map_err(|e| match e {
            MintError::SubjectExpiring => expiring,
            // The remote signer (Vault Transit) refused, failed or answered a
            // signature that does not verify: ours, and nothing is minted.
            MintError::Key(
                ref k @ (KeyMaterialError::Remote { .. } | KeyMaterialError::RemoteMismatch),
            ) => {
                tracing::error!(kid = %key.key.kid, error = %k, "remote signing failed; nothing minted");
                Rejection::SigningKeyUnavailable
            }
            other => {
                tracing::error!(error = %other, "minting failed");
                Rejection::Internal
            }
        })
    }
}

/// The order of the checks is the policy: for a request that would fail several steps,
/// the earliest step's refusal wins. Each case below breaks one step and every step
/// after it, and expects the refusal of the one it broke.
#[cfg(test)]
mod check_order {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::catalogue::TrustDirectory;
    use crate::config::TrustConfig;
    use crate::keys::signing_key::{SigningAlgorithm, SigningKey};
    use crate::keys::{FileKeyStore, KeyStore};
    use crate::secret::SubjectToken;
    use crate::store::FileSecretStore;
    use agent_sts_verifier::{Algorithm, KeySource, Limits, unix_now};

    const STS: &str = "https://sts.test";
    const IDP: &str = "https://idp.test";
    const CATALOGUE: &str = r#"
[[action]]
name = "docs.read"
audience = "https://docs.test"
agents = ["idp:agent-*"]
credential = "integrations/docs"

[[action]]
name = "docs.write"
audience = "https://docs.test"
agents = ["idp:agent-*"]
delegation = "required"
subjects = ["idp:user-*"]

[[action]]
name = "gone.read"
audience = "https://gone.test"
agents = ["idp:agent-*"]
credential = "integrations/missing"
"#;

    /// The workload issuer (its key, its JWKS file) and a temp dir for the STS's state.
    struct World {
        dir: tempfile::TempDir,
        idp: SigningKey,
    }

    /// What to break below the identity checks, if anything.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Break {
        Nothing,
        RateBurstOfOne,
        NoSigningKey,
        AuditUnwritable,
    }

    impl World {
        fn new() -> World {
            let dir = tempfile::tempdir().unwrap();
            let (idp, _) = SigningKey::generate(SigningAlgorithm::ES256).unwrap();
            let jwks = serde_json::json!({ "keys": [idp.public_jwk] });
            std::fs::write(dir.path().join("idp.jwks"), jwks.to_string()).unwrap();
            std::fs::write(
                dir.path().join("secrets.toml"),
                "[secret.\"integrations/docs\"]\nvalue = \"Bearer docs-canary\"\n",
            )
            .unwrap();
            World { dir, idp }
        }

        fn token(&self, sub: &str) -> SubjectToken {
            let now = unix_now();
            let header = serde_json::json!({"alg": "ES256", "kid": self.idp.kid, "typ": "JWT"});
            let claims = serde_json::json!({
                "iss": IDP, "sub": sub, "aud": STS, "iat": now, "exp": now + 300,
            });
            SubjectToken::new(
                self.idp
                    .sign_compact(header.to_string().as_bytes(), claims.to_string().as_bytes())
                    .unwrap(),
            )
        }

        async fn sts(&self, broken: Break) -> Sts {
            let metrics = Arc::new(Metrics::new());
            let trust = TrustConfig {
                name: "idp".into(),
                issuer: IDP.into(),
                jwks: KeySource::File(self.dir.path().join("idp.jwks")),
                algorithms: vec![Algorithm::ES256],
                spiffe_trust_domains: vec![],
                max_token_lifetime: Duration::from_secs(3600),
                leeway: Duration::from_secs(30),
                jwks_refresh: Duration::from_secs(300),
                jwks_max_stale: Duration::from_secs(3600),
                single_use_assertions: true,
            };
            let trusts =
                TrustStore::new(&[trust], STS, &Limits::default(), metrics.clone()).unwrap();
            let directory = TrustDirectory::new([("idp".to_string(), vec![])]);
            let catalogue =
                Catalogue::from_sources([("test.toml", CATALOGUE)], &directory).unwrap();
            let key_dir = tempfile::tempdir_in(self.dir.path()).unwrap();
            let store: Arc<dyn KeyStore> = Arc::new(FileKeyStore::new(key_dir.keep()));
            let max_ttl = Duration::from_secs(900);
            if broken != Break::NoSigningKey {
                crate::keys::rotate(
                    store.as_ref(),
                    SigningAlgorithm::ES256,
                    unix_now(),
                    Duration::from_secs(600),
                    max_ttl,
                )
                .await
                .unwrap();
            }
            let keyring = Arc::new(Keyring::new(store, max_ttl, None, metrics.clone()));
            keyring.refresh(unix_now()).await.unwrap();
            let secrets = Arc::new(FileSecretStore::new(self.dir.path().join("secrets.toml")));
            let audit_path = if broken == Break::AuditUnwritable {
                std::path::PathBuf::from("/dev/full")
            } else {
                self.dir.path().join(format!("audit-{}.log", rand_suffix()))
            };
            let burst = if broken == Break::RateBurstOfOne {
                1
            } else {
                100
            };
            let deny = DenyGuard::new(
                Arc::new(crate::control::FileDenyStore::new(self.dir.path())),
                STS,
                vec![("idp".into(), IDP.into())],
                Duration::from_secs(60),
                Duration::from_secs(60),
                Default::default(),
            );
            let deny_audit = self.dir.path().join(format!("deny-{}.log", rand_suffix()));
            deny.refresh(unix_now(), &AuditLog::open(&deny_audit).unwrap())
                .await;
            let own_tokens = crate::sts::revocation::own_token_verifier(
                STS,
                keyring.clone(),
                &Limits::default(),
            )
            .unwrap();
            Sts::new(StsParts {
                issuer: STS.into(),
                default_ttl: Duration::from_secs(300),
                max_ttl,
                trusts,
                catalogue,
                keyring,
                credentials: CredentialCache::new(secrets, Duration::from_secs(30)),
                vault: None,
                audit: AuditLog::open(&audit_path).unwrap(),
                metrics,
                rate_limiter: IdentityRateLimiter::new(1, burst),
                dpop: DpopSettings {
                    default: SenderConstraint::None,
                    nonces: false,
                    max_age: Duration::from_secs(60),
                },
                deny,
                own_tokens,
                introspection: Default::default(),
                max_delegation_depth: 3,
            })
        }
    }

    fn rand_suffix() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    }

    /// The subject of a tampered token (its signature does not verify).
    const FORGED: &str = "forged";
    const WRONG: &str = "https://elsewhere.test";

    /// What `sts` answers to a request for `action` at `audience` with a token for
    /// `subject` ([`FORGED`]: a tampered one).
    async fn answer(
        world: &World,
        sts: &Sts,
        subject: &str,
        action: &str,
        audience: &str,
    ) -> Result<Issued, Rejection> {
        let subject_token = match subject {
            FORGED => SubjectToken::new(format!("{}x", world.token("agent-1").expose())),
            _ => world.token(subject),
        };
        let request = ExchangeRequest {
            subject_type: SubjectType::Workload,
            grant: GrantType::TokenExchange,
            subject_token,
            actor_token: None,
            action: action.into(),
            audiences: vec![audience.into()],
            resources: vec![],
            dpop: None,
        };
        sts.exchange(request, unix_now()).await
    }

    /// Asserts each `(subject, action, audience)` is refused as given, in order.
    async fn expect_refusals(world: &World, sts: &Sts, cases: &[(&str, &str, &str, Rejection)]) {
        for (subject, action, audience, expected) in cases {
            let got = answer(world, sts, subject, action, audience).await;
            assert_eq!(got.err(), Some(*expected), "{subject} {action} {audience}");
        }
    }

    #[tokio::test]
    async fn each_steps_refusal_wins_over_every_later_one() {
        let world = World::new();
        let sts = world.sts(Break::Nothing).await;
        let cases = [
            // 1. Identity first: a bad token for an unknown action at a wrong audience.
            (FORGED, "no.such", WRONG, Rejection::InvalidSubjectToken),
            // 3. Catalogue before delegation, target and credential.
            (
                "intruder",
                "gone.read",
                WRONG,
                Rejection::ActionNotPermitted,
            ),
            // 4. Delegation before target.
            (
                "agent-1",
                "docs.write",
                WRONG,
                Rejection::DelegationRequired,
            ),
            // 5. Target before the credential gate.
            ("agent-1", "gone.read", WRONG, Rejection::InvalidTarget),
            // 6. The credential gate.
            (
                "agent-1",
                "gone.read",
                "https://gone.test",
                Rejection::CredentialUnavailable,
            ),
        ];
        expect_refusals(&world, &sts, &cases).await;
        // And a request that breaks nothing gets its token.
        let issued = answer(&world, &sts, "agent-1", "docs.read", "https://docs.test")
            .await
            .unwrap();
        assert_eq!(issued.scope, "docs.read");
        assert!(!format!("{issued:?}").contains(issued.access_token.expose()));
    }

    #[tokio::test]
    async fn rate_limit_signing_key_and_audit_come_in_their_places() {
        let world = World::new();
        let docs = ("agent-1", "docs.read", "https://docs.test");

        // 2. The rate limit comes after identity and before the catalogue: the first
        // call spends the burst of one; an invalid token has no identity to limit.
        let limited = world.sts(Break::RateBurstOfOne).await;
        answer(&world, &limited, docs.0, docs.1, docs.2)
            .await
            .unwrap();
        let cases = [
            ("agent-1", "no.such", WRONG, Rejection::RateLimited),
            (FORGED, "no.such", WRONG, Rejection::InvalidSubjectToken),
        ];
        expect_refusals(&world, &limited, &cases).await;

        // 7. The signing key comes after the credential gate.
        let keyless = world.sts(Break::NoSigningKey).await;
        let cases = [
            (
                "agent-1",
                "gone.read",
                "https://gone.test",
                Rejection::CredentialUnavailable,
            ),
            (docs.0, docs.1, docs.2, Rejection::SigningKeyUnavailable),
        ];
        expect_refusals(&world, &keyless, &cases).await;

        // 8. The audit record comes last, and without it there is no token.
        let unaudited = world.sts(Break::AuditUnwritable).await;
        let cases = [(docs.0, docs.1, docs.2, Rejection::AuditUnavailable)];
        expect_refusals(&world, &unaudited, &cases).await;
    }

    /// A jwt-bearer assertion from a single-use trust is spent only once it verified and
    /// its agent passed the rate limit: forged or rate-limited ones take no place in
    /// the bounded set, and a spent one is refused the second time as `invalid_grant`.
    #[tokio::test]
    async fn only_a_verified_admitted_assertion_is_spent() {
        let world = World::new();
        let sts = world.sts(Break::Nothing).await;
        // Claims are stamped at the start; each decision takes the clock as it is then
        // (the keys of a fresh `World` activate at their creation).
        let now = unix_now();
        let assertion = |sub: &str, jti: &str, aud: &str| {
            let header = serde_json::json!({"alg": "ES256", "kid": world.idp.kid, "typ": "JWT"});
            let claims = serde_json::json!({
                "iss": IDP, "sub": sub, "aud": aud, "iat": now, "exp": now + 300, "jti": jti,
            });
            SubjectToken::new(
                world
                    .idp
                    .sign_compact(header.to_string().as_bytes(), claims.to_string().as_bytes())
                    .unwrap(),
            )
        };
        let request = |token: SubjectToken| ExchangeRequest {
            subject_type: SubjectType::Workload,
            grant: GrantType::JwtBearer,
            subject_token: token,
            actor_token: None,
            action: "docs.read".into(),
            audiences: vec![],
            resources: vec!["https://docs.test".into()],
            dpop: None,
        };
        let token_url = format!("{STS}/token");
        for i in 0..20 {
            let forged = assertion("agent-1", &format!("f{i}"), &token_url);
            let forged = SubjectToken::new(format!("{}x", forged.expose()));
            let got = sts.exchange(request(forged), unix_now()).await;
            assert_eq!(got.err(), Some(Rejection::InvalidAssertion));
        }
        // Wrong audience: the issuer and the token endpoint only.
        let got = sts
            .exchange(
                request(assertion("agent-1", "w", "https://docs.test")),
                unix_now(),
            )
            .await;
        assert_eq!(got.err(), Some(Rejection::InvalidAssertion));
        assert!(sts.trusts.spent_is_empty());

        sts.exchange(request(assertion("agent-1", "a", &token_url)), unix_now())
            .await
            .unwrap();
        sts.exchange(request(assertion("agent-1", "b", STS)), unix_now())
            .await
            .unwrap();
        let again = sts
            .exchange(request(assertion("agent-1", "a", &token_url)), unix_now())
            .await;
        let again = again.err();
        assert_eq!(again, Some(Rejection::AssertionReplayed));
        assert_eq!(again.map(Rejection::code), Some("invalid_grant"));

        let limited = world.sts(Break::RateBurstOfOne).await;
        limited
            .exchange(request(assertion("agent-1", "c", STS)), unix_now())
            .await
            .unwrap();
        let over = limited
            .exchange(request(assertion("agent-1", "d", STS)), unix_now())
            .await;
        assert_eq!(over.err(), Some(Rejection::RateLimited));
        assert_eq!(limited.trusts.spent_len(), 1);
    }

    /// Anyone can sign a valid proof with a fresh key: a proof sent with a token that
    /// does not verify is refused without taking a place in the bounded replay cache,
    /// so a flood of them cannot push real `jti`s out. A verified agent's proof is
    /// remembered, and refused the second time.
    #[tokio::test]
    async fn only_a_verified_agents_proof_enters_the_replay_cache() {
        let world = World::new();
        let sts = world.sts(Break::Nothing).await;
        let key = agent_sts_testkit::DpopKey::new();
        let url = format!("{STS}/token");
        let request = |subject: SubjectToken, proof: &str| ExchangeRequest {
            subject_type: SubjectType::Workload,
            grant: GrantType::TokenExchange,
            subject_token: subject,
            actor_token: None,
            action: "docs.read".into(),
            audiences: vec![],
            resources: vec![],
            dpop: Some(DpopProof::new(proof)),
        };
        for _ in 0..50 {
            let proof = key.proof("POST", &url, None, None);
            let forged = SubjectToken::new(format!("{}x", world.token("agent-1").expose()));
            let got = sts.exchange(request(forged, &proof), unix_now()).await;
            assert_eq!(got.err(), Some(Rejection::InvalidSubjectToken));
        }
        assert_eq!(sts.proofs.remembered(), 0);
        let proof = key.proof("POST", &url, None, None);
        let issued = sts
            .exchange(request(world.token("agent-1"), &proof), unix_now())
            .await
            .unwrap();
        assert_eq!(issued.token_type, "DPoP");
        assert_eq!(sts.proofs.remembered(), 1);
        let again = sts
            .exchange(request(world.token("agent-1"), &proof), unix_now())
            .await;
        assert_eq!(again.err(), Some(Rejection::InvalidDpopProof));
    }
}
