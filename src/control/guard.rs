//! One replica's deny list: re-read from the store every `deny.refresh_interval`,
//! checked at `/token` for every identity of a request and its action, and published
//! as the signed feed that verifiers read (`GET /deny-list`, see
//! [`agent_sts_verifier::deny`]).
//!
//! A read that fails, or finds a malformed list, keeps the last good list and is
//! counted; once no read has succeeded for `deny.max_stale`, the replica refuses every
//! token (503), reports not ready and stops serving the feed, so verifiers fail closed
//! in turn. Every change a replica sees is written to its audit log (entries added and
//! removed, by id) and logged.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use agent_sts_verifier::deny::{DenyRule, DenyTarget, FEED_PATH, FEED_TYPE};
use arc_swap::ArcSwap;
use serde::Serialize;

use super::deny_list::StoredDenyList;
use super::store::DenyStore;
use crate::audit::AuditLog;
use crate::identity::principal::Principal;
use crate::keys::{Keyring, StoreVersion};
use crate::telemetry::metrics::DenyMetrics;

/// What a replica holds.
#[derive(Debug, Default)]
struct Held {
    list: Arc<StoredDenyList>,
    /// The same entries as verifiers see them (identity rules with their trust's
    /// issuer), made once per read: what the feed publishes and `refusal` matches.
    published: Vec<DenyRule>,
    version: Option<StoreVersion>,
    /// Unix seconds of the last successful read.
    read_at: Option<u64>,
}

/// The verdict on a token request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyCheck {
    Allowed,
    /// Stopped by the entry with this id.
    Denied(String),
    /// No deny list fresh enough to check against.
    Unavailable,
}

/// The signed feed last made, reused within a second while the list is unchanged.
#[derive(Debug, Clone)]
struct SignedFeed {
    version: Option<StoreVersion>,
    issued_at: u64,
    kid: String,
    document: Arc<str>,
}

/// A replica's deny list and feed.
#[derive(Debug)]
pub struct DenyGuard {
    store: Arc<dyn DenyStore>,
    held: ArcSwap<Held>,
    /// `trust` name → issuer, so the feed can name actors the way tokens do.
    issuers: Vec<(String, String)>,
    /// The STS's issuer: the feed's `iss` and `sub`, and with `/deny-list` its `aud`.
    issuer: String,
    max_stale: Duration,
    feed_max_age: Duration,
    feed: RwLock<Option<SignedFeed>>,
    metrics: DenyMetrics,
}

/// The audit record of a change in the list.
#[derive(Serialize)]
struct ChangeRecord<'a> {
    #[serde(serialize_with = "crate::audit::rfc3339_millis")]
    time: std::time::SystemTime,
    event: &'static str,
    added: Vec<&'a str>,
    removed: Vec<&'a str>,
    entries: usize,
}

impl DenyGuard {
    pub fn new(
        store: Arc<dyn DenyStore>,
        issuer: &str,
        issuers: Vec<(String, String)>,
        max_stale: Duration,
        feed_max_age: Duration,
        metrics: DenyMetrics,
    ) -> Self {
        DenyGuard {
            store,
            held: ArcSwap::from_pointee(Held::default()),
            issuers,
            issuer: issuer.trim_end_matches('/').to_string(),
            max_stale,
            feed_max_age,
            feed: RwLock::new(None),
            metrics,
        }
    }

    /// Re-reads the list; a failure keeps the last good one (and is counted and
    /// logged). A change is audited and logged.
    pub async fn refresh(&self, now: u64, audit: &AuditLog) {
        match self.store.load().await {
            Ok((list, version)) => {
                let held = self.held.load();
                if held.version.as_ref() != Some(&version) {
                    self.record_change(&held.list, &list, held.read_at.is_none(), audit);
                }
                self.metrics.read("ok");
                self.metrics.entries.set(list.in_force(now).count() as i64);
                self.metrics.last_read.set(now as i64);
                let published = list
                    .entries
                    .iter()
                    .map(|e| self.published(&e.rule))
                    .collect();
                self.held.store(Arc::new(Held {
                    list: Arc::new(list),
                    published,
                    version: Some(version),
                    read_at: Some(now),
                }));
            }
            Err(e) => {
                let malformed = matches!(e, super::DenyStoreError::Malformed { .. });
                self.metrics
                    .read(if malformed { "malformed" } else { "failed" });
                tracing::warn!(error = %e, "deny list not refreshed; the last good list is kept");
            }
        }
    }

    fn record_change(
        &self,
        before: &StoredDenyList,
        after: &StoredDenyList,
        first: bool,
        audit: &AuditLog,
    ) {
        let ids = |l: &StoredDenyList| -> BTreeSet<String> {
            l.entries.iter().map(|e| e.rule.id.clone()).collect()
        };
        let (old, new) = (ids(before), ids(after));
        let added: Vec<&str> = new.difference(&old).map(String::as_str).collect();
        let removed: Vec<&str> = old.difference(&new).map(String::as_str).collect();
        // The first read of an empty list changes nothing; of a list with entries, it
        // is recorded (the entries this replica enforces from now on).
        if added.is_empty() && removed.is_empty() {
            return;
        }
        if first {
            tracing::info!(entries = after.entries.len(), "deny list loaded");
        } else {
            self.metrics.changes.inc();
            tracing::info!(added = ?added, removed = ?removed, entries = after.entries.len(), "deny list changed");
        }
        let record = ChangeRecord {
            time: std::time::SystemTime::now(),
            event: if first {
                "deny_list_loaded"
            } else {
                "deny_list_changed"
            },
            added,
            removed,
            entries: after.entries.len(),
        };
        if let Err(e) = audit.append(&record) {
            tracing::error!(error = %e, "audit line of a deny-list change not written");
        }
    }

    /// Adds `entry` to the store (a revocation) and re-reads the list, so this
    /// replica refuses it, and publishes it, at once.
    pub async fn revoke(
        &self,
        entry: super::DenyEntry,
        now: u64,
        audit: &AuditLog,
    ) -> Result<(), super::deny_list::EditError> {
        super::deny_list::add(self.store.as_ref(), entry, now).await?;
        self.refresh(now, audit).await;
        Ok(())
    }

    /// Whether the list is fresh enough to decide with at `now`.
    pub fn fresh(&self, now: u64) -> bool {
        self.held
            .load()
            .read_at
            .is_some_and(|t| now.saturating_sub(t) <= self.max_stale.as_secs())
    }

    /// The verdict for a request by `subject` (and `actor`, when delegating) for
    /// `action` at `now`: `--agent` entries match either, `--subject` entries the
    /// subject. A sub-agent acting on a parent's token has no verified subject here
    /// (the parent token is checked whole with [`DenyGuard::refusal`]).
    pub fn check(
        &self,
        subject: Option<&Principal<'_>>,
        actor: Option<&Principal<'_>>,
        action: &str,
        now: u64,
    ) -> DenyCheck {
        if !self.fresh(now) {
            return DenyCheck::Unavailable;
        }
        let held = self.held.load();
        let hit = held.list.in_force(now).find(|e| match &e.rule.target {
            DenyTarget::Action { action: a } => a == action,
            DenyTarget::Jti { .. } => false,
            DenyTarget::Subject(rule) => subject.is_some_and(|s| identity_matches(rule, s)),
            DenyTarget::Agent(rule) => [subject, actor]
                .into_iter()
                .flatten()
                .any(|p| identity_matches(rule, p)),
        });
        match hit {
            Some(entry) => DenyCheck::Denied(entry.rule.id.clone()),
            None => DenyCheck::Allowed,
        }
    }

    /// The id of the first entry in force at `now` that stops `token` (one of ours),
    /// matched as verifiers match it.
    pub fn refusal(&self, token: &agent_sts_verifier::AccessToken, now: u64) -> Option<String> {
        let held = self.held.load();
        held.published
            .iter()
            .find(|r| r.in_force(now) && r.refuses(token))
            .map(|r| r.id.clone())
    }

    /// The signed feed at `now`, or `None` when the list is stale or no key signs.
    /// With a remote signing key (Vault Transit) signing is one request, made at most
    /// once per second: the document is cached for its `iat`.
    pub async fn feed(&self, keyring: &Keyring, now: u64) -> Option<Arc<str>> {
        if !self.fresh(now) {
            return None;
        }
        let held = self.held.load_full();
        let key = keyring.signer(now)?;
        if let Some(feed) = self.feed.read().unwrap_or_else(|e| e.into_inner()).as_ref()
            && feed.version == held.version
            && feed.issued_at == now
            && feed.kid == key.key.kid
        {
            return Some(feed.document.clone());
        }
        let rules: Vec<&DenyRule> = held.published.iter().filter(|r| r.in_force(now)).collect();
        let header = serde_json::json!({"alg": key.key.algorithm.as_str(), "kid": key.key.kid, "typ": FEED_TYPE});
        let claims = serde_json::json!({
            "iss": self.issuer,
            "sub": self.issuer,
            "aud": format!("{}{FEED_PATH}", self.issuer),
            "iat": now,
            "exp": now + self.feed_max_age.as_secs(),
            "deny": rules,
        });
        let document: Arc<str> = key
            .key
            .sign_compact_async(
                &serde_json::to_vec(&header).ok()?,
                &serde_json::to_vec(&claims).ok()?,
            )
            .await
            .map_err(|e| tracing::error!(error = %e, "deny-list feed not signed"))
            .ok()?
            .into();
        *self.feed.write().unwrap_or_else(|e| e.into_inner()) = Some(SignedFeed {
            version: held.version.clone(),
            issued_at: now,
            kid: key.key.kid.clone(),
            document: document.clone(),
        });
        Some(document)
    }

    /// An entry as verifiers see it: identity rules carry their trust's issuer.
    fn published(&self, rule: &DenyRule) -> DenyRule {
        let mut rule = rule.clone();
        if let DenyTarget::Agent(identity) | DenyTarget::Subject(identity) = &mut rule.target {
            identity.iss = self
                .issuers
                .iter()
                .find(|(name, _)| *name == identity.trust)
                .map(|(_, iss)| iss.clone());
        }
        rule
    }
}

/// `TRUST:PATTERN` against a verified identity.
fn identity_matches(rule: &agent_sts_verifier::deny::IdentityRule, p: &Principal<'_>) -> bool {
    rule.matches_identity(p.trust, p.subject)
}
