//! The kill switch as a verifier sees it: the STS's deny list, published as a signed
//! feed, and the rule that a token matching any entry is refused even though its
//! signature and claims are good.
//!
//! The STS serves the list at `<base>/deny-list` (beside its JWKS) as a compact JWS
//! signed with its own keys (`typ` `deny-list+jwt`; `iss` and `sub` the STS, `aud`
//! `<issuer>/deny-list`, a short `exp`, and the entries under `deny`). A verifier
//! fetches it at most every `refresh`, checks it against the same JWKS as the tokens,
//! never goes back to an older document than the one it holds, and refuses every
//! token once its last good copy is older than `max_stale`: a deny list that cannot be
//! read fails closed, like keys that cannot be fetched.
//!
//! Why a signed list and not the IETF Token Status List: a status list marks tokens
//! one by one through an index each token carries, which suits long-lived credentials.
//! agent-sts tokens live minutes, and what an operator stops is an agent, a subject or
//! an action (every token it holds now and will be given), which a pattern says in
//! one entry and a per-token bit cannot. Revoked `jti`s ride in the same list until
//! their token's `exp`, so it stays small.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::access_token::AccessToken;
use crate::glob::glob_match;

/// The media type and JOSE `typ` of the feed.
pub const FEED_TYPE: &str = "deny-list+jwt";

/// The feed's path under the STS's base URL, and the suffix of its `aud`.
pub const FEED_PATH: &str = "/deny-list";

/// How often a verifier re-reads the feed by default.
pub const DEFAULT_DENY_REFRESH: Duration = Duration::from_secs(2);

/// How long a verifier keeps using its last good feed when it cannot fetch a new one,
/// by default; after that every token is refused.
pub const DEFAULT_DENY_MAX_STALE: Duration = Duration::from_secs(60);

/// Largest feed accepted, in bytes.
pub const MAX_FEED_BYTES: usize = 4 * 1024 * 1024;

/// One entry of the deny list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DenyRule {
    /// The entry's id (`deny remove ID`), named in refusals and audit lines.
    pub id: String,
    #[serde(flatten)]
    pub target: DenyTarget,
    /// Unix seconds from which the entry no longer applies (`--for`, or a revoked
    /// token's `exp`); none: until removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
}

/// What an entry stops.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DenyTarget {
    /// An agent, wherever it appears in a token: `sub`, `client_id` or any actor of
    /// the `act` chain.
    Agent(IdentityRule),
    /// The subject (`sub`) a token is for.
    Subject(IdentityRule),
    /// Every token for one catalogue action.
    Action { action: String },
    /// One token.
    Jti { jti: String },
}

/// `TRUST:PATTERN` as a deny entry holds it: the trust's name and, in the feed, its
/// issuer (actors in `act` carry the issuer, `client_id` the trust name).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdentityRule {
    pub trust: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    pub pattern: String,
}

impl IdentityRule {
    fn matches(&self, subject: &str) -> bool {
        glob_match(self.pattern.as_bytes(), subject.as_bytes())
    }

    /// Whether the rule names `subject` as verified by the trust `trust`.
    pub fn matches_identity(&self, trust: &str, subject: &str) -> bool {
        trust == self.trust && self.matches(subject)
    }

    /// `client_id` is `TRUST:SUB`.
    fn matches_client(&self, client_id: &str) -> bool {
        client_id
            .split_once(':')
            .is_some_and(|(trust, sub)| self.matches_identity(trust, sub))
    }

    /// `sub`: the agent itself when the token is not delegated (so its trust is the
    /// `client_id`'s); in a delegated token its trust is not recorded, so the pattern
    /// alone decides (a kill switch errs towards refusing).
    fn matches_subject(&self, token: &AccessToken) -> bool {
        match token.actor {
            None => self.matches_client(&token.client_id),
            Some(_) => self.matches(&token.subject),
        }
    }

    fn matches_actor(&self, iss: &str, sub: &str) -> bool {
        self.iss.as_deref() == Some(iss) && self.matches(sub)
    }
}

impl DenyRule {
    /// Whether the entry is in force at `now`.
    pub fn in_force(&self, now: u64) -> bool {
        self.until.is_none_or(|until| now < until)
    }

    /// Whether the entry stops `token` (whatever the time).
    pub fn refuses(&self, token: &AccessToken) -> bool {
        match &self.target {
            DenyTarget::Action { action } => token.action == *action,
            DenyTarget::Jti { jti } => token.jti == *jti,
            DenyTarget::Subject(rule) => rule.matches_subject(token),
            DenyTarget::Agent(rule) => {
                rule.matches_subject(token)
                    || rule.matches_client(&token.client_id)
                    || token.actors().any(|a| rule.matches_actor(&a.iss, &a.sub))
            }
        }
    }
}

/// A deny list as published at one time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DenyList {
    /// When the STS signed it (the feed's `iat`).
    pub issued_at: u64,
    pub rules: Vec<DenyRule>,
}

impl DenyList {
    /// The first entry in force at `now` that stops `token`.
    pub fn refusal(&self, token: &AccessToken, now: u64) -> Option<&DenyRule> {
        self.rules
            .iter()
            .find(|r| r.in_force(now) && r.refuses(token))
    }
}

/// Where and how often a verifier reads the feed.
#[derive(Debug, Clone)]
pub(crate) struct FeedSettings {
    pub url: reqwest::Url,
    /// The feed's expected `aud`: `<issuer>/deny-list`.
    pub audience: String,
    pub refresh: Duration,
    pub max_stale: Duration,
}

/// The feed URL beside a JWKS URL: `https://sts.example/.well-known/jwks.json` →
/// `https://sts.example/deny-list` (tenants too: `/t/acme/.well-known/jwks.json` →
/// `/t/acme/deny-list`). `None` when the JWKS URL has another shape.
pub fn feed_url_beside(jwks_uri: &str) -> Option<String> {
    jwks_uri
        .strip_suffix("/.well-known/jwks.json")
        .map(|base| format!("{base}{FEED_PATH}"))
}

/// Why no deny list could be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    #[error("the deny-list feed could not be fetched")]
    Fetch,
    #[error("the deny-list feed did not verify")]
    Invalid,
    #[error("the deny-list feed is older than the one already held")]
    Older,
    /// `404`/`410` at the feed's URL: the STS no longer serves this issuer (a removed
    /// tenant). An answer, not an outage: every token of the issuer is refused.
    #[error("the issuer's deny-list feed is gone: the issuer was removed")]
    Withdrawn,
}

/// The last good feed and when it was fetched.
#[derive(Debug)]
struct Held {
    list: Arc<DenyList>,
    fetched_at: u64,
}

/// A verifier's copy of the feed: refreshed on use at most every `refresh` (one fetch
/// at a time, which other requests do not wait for while a held list is usable; at
/// most one attempt per second after a failure).
#[derive(Debug)]
pub(crate) struct FeedCache {
    pub settings: FeedSettings,
    held: RwLock<Option<Held>>,
    fetching: tokio::sync::Mutex<u64>,
    /// The last fetch was answered [`FeedError::Withdrawn`] (cleared by a good one).
    withdrawn: std::sync::atomic::AtomicBool,
}

impl FeedCache {
    pub fn new(settings: FeedSettings) -> Self {
        FeedCache {
            settings,
            held: RwLock::new(None),
            fetching: tokio::sync::Mutex::new(0),
            withdrawn: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether the STS said the issuer is gone (see [`FeedError::Withdrawn`]).
    pub fn withdrawn(&self) -> bool {
        self.withdrawn.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn fresh(&self, now: u64, within: Duration) -> Option<Arc<DenyList>> {
        let held = self.held.read().unwrap_or_else(|e| e.into_inner());
        held.as_ref()
            .filter(|h| now < h.fetched_at.saturating_add(within.as_secs().max(1)))
            .map(|h| h.list.clone())
    }

    /// The list to check tokens against at `now`, fetching through `fetch` when the
    /// held one is due; `None` when none is fresh enough (fail closed).
    pub async fn current<F, Fut>(&self, now: u64, fetch: F) -> Option<Arc<DenyList>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<DenyList, FeedError>>,
    {
        if let Some(list) = self.fresh(now, self.settings.refresh) {
            return Some(list);
        }
        // One request refreshes; while it does, the others keep the held list (still
        // within `max_stale`) instead of queueing behind the fetch.
        let mut last_attempt = match self.fetching.try_lock() {
            Ok(guard) => guard,
            Err(_) => match self.fresh(now, self.settings.max_stale) {
                Some(list) => return Some(list),
                None => self.fetching.lock().await,
            },
        };
        if let Some(list) = self.fresh(now, self.settings.refresh) {
            return Some(list);
        }
        if *last_attempt != now {
            *last_attempt = now;
            let fetched = fetch().await;
            self.withdrawn.store(
                matches!(fetched, Err(FeedError::Withdrawn)),
                std::sync::atomic::Ordering::Relaxed,
            );
            match fetched {
                Err(FeedError::Withdrawn) => {
                    tracing::warn!(error = %FeedError::Withdrawn, "deny-list feed withdrawn");
                    *self.held.write().unwrap_or_else(|e| e.into_inner()) = None;
                    return None;
                }
                Ok(list) => {
                    let mut held = self.held.write().unwrap_or_else(|e| e.into_inner());
                    let older = held
                        .as_ref()
                        .is_some_and(|h| list.issued_at < h.list.issued_at);
                    if older {
                        tracing::warn!(error = %FeedError::Older, "deny-list feed refused");
                    } else {
                        let list = Arc::new(list);
                        *held = Some(Held {
                            list: list.clone(),
                            fetched_at: now,
                        });
                        return Some(list);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "deny-list feed not refreshed"),
            }
        }
        self.fresh(now, self.settings.max_stale)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::access_token::Actor;

    fn token(sub: &str, client_id: &str, actor: Option<(&str, &str)>) -> AccessToken {
        AccessToken {
            issuer: "https://sts.test".into(),
            subject: sub.into(),
            actor: actor.map(|(iss, sub)| Actor {
                iss: iss.into(),
                sub: sub.into(),
                act: None,
            }),
            action: "github.issues.create".into(),
            client_id: client_id.into(),
            jti: "j1".into(),
            expires_at: 2000,
            jkt: None,
        }
    }

    fn identity(trust: &str, iss: &str, pattern: &str) -> IdentityRule {
        IdentityRule {
            trust: trust.into(),
            iss: Some(iss.into()),
            pattern: pattern.into(),
        }
    }

    fn rule(target: DenyTarget, until: Option<u64>) -> DenyRule {
        DenyRule {
            id: "d1".into(),
            target,
            until,
        }
    }

    const K8S: &str = "https://k8s.test";

    #[test]
    fn agents_are_matched_wherever_they_appear() {
        let agent = rule(
            DenyTarget::Agent(identity("k8s", K8S, "system:serviceaccount:ci:*")),
            None,
        );
        let direct = token(
            "system:serviceaccount:ci:bot",
            "k8s:system:serviceaccount:ci:bot",
            None,
        );
        assert!(agent.refuses(&direct));
        // The same subject from another trust is another identity.
        let other_trust = token(
            "system:serviceaccount:ci:bot",
            "gha:system:serviceaccount:ci:bot",
            None,
        );
        assert!(!agent.refuses(&other_trust));
        // As the actor of a delegated token, and as its subject.
        let acting = token(
            "alice",
            "k8s:x",
            Some((K8S, "system:serviceaccount:ci:bot")),
        );
        assert!(agent.refuses(&acting));
        let acting_other_issuer = token(
            "alice",
            "gha:y",
            Some(("https://gha.test", "system:serviceaccount:ci:bot")),
        );
        assert!(!agent.refuses(&acting_other_issuer));
        let for_it = token(
            "system:serviceaccount:ci:bot",
            "gha:y",
            Some(("https://gha.test", "z")),
        );
        assert!(agent.refuses(&for_it));
    }

    #[test]
    fn subjects_actions_and_jtis() {
        let subject = rule(DenyTarget::Subject(identity("k8s", K8S, "alice")), None);
        assert!(subject.refuses(&token("alice", "k8s:alice", None)));
        assert!(!subject.refuses(&token("alice", "gha:alice", None)));
        assert!(subject.refuses(&token(
            "alice",
            "gha:bot",
            Some(("https://gha.test", "bot"))
        )));
        // A subject entry does not stop the agent acting for someone else.
        assert!(!subject.refuses(&token("bob", "k8s:alice", Some((K8S, "alice")))));

        let action = rule(
            DenyTarget::Action {
                action: "github.issues.create".into(),
            },
            None,
        );
        assert!(action.refuses(&token("a", "k8s:a", None)));
        let jti = rule(DenyTarget::Jti { jti: "j1".into() }, Some(2000));
        assert!(jti.refuses(&token("a", "k8s:a", None)));
        let list = DenyList {
            issued_at: 1,
            rules: vec![jti],
        };
        assert!(list.refusal(&token("a", "k8s:a", None), 1999).is_some());
        assert!(list.refusal(&token("a", "k8s:a", None), 2000).is_none());
    }

    #[test]
    fn the_wire_form_is_tagged_and_flat() {
        let r = rule(DenyTarget::Agent(identity("k8s", K8S, "bot-*")), Some(5));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id": "d1", "kind": "agent", "trust": "k8s", "iss": K8S,
                               "pattern": "bot-*", "until": 5})
        );
        assert_eq!(serde_json::from_value::<DenyRule>(json).unwrap(), r);
        assert!(
            serde_json::from_value::<DenyRule>(serde_json::json!({"id": "x", "kind": "everyone"}))
                .is_err()
        );
    }

    fn cache() -> FeedCache {
        FeedCache::new(FeedSettings {
            url: reqwest::Url::parse("https://sts.test/deny-list").unwrap(),
            audience: "https://sts.test/deny-list".into(),
            refresh: std::time::Duration::from_secs(2),
            max_stale: std::time::Duration::from_secs(10),
        })
    }

    fn list(issued_at: u64) -> DenyList {
        DenyList {
            issued_at,
            rules: vec![rule(DenyTarget::Jti { jti: "j1".into() }, None)],
        }
    }

    #[tokio::test]
    async fn a_withdrawn_feed_refuses_at_once_and_a_good_one_restores() {
        let feed = cache();
        assert!(
            feed.current(100, || async { Ok(list(100)) })
                .await
                .is_some()
        );
        // Due for a refresh, answered 404: nothing held any more, not max_stale later.
        let gone = feed
            .current(103, || async { Err(FeedError::Withdrawn) })
            .await;
        assert!(gone.is_none() && feed.withdrawn());
        let back = feed.current(105, || async { Ok(list(105)) }).await;
        assert!(back.is_some() && !feed.withdrawn());
    }

    #[tokio::test]
    async fn the_feed_is_refreshed_kept_through_failures_then_refused_and_never_rolled_back() {
        let feed = cache();
        let fail = || async { Err::<DenyList, _>(FeedError::Fetch) };
        // Nothing held and nothing fetched: no list (every token refused); no second
        // attempt within the same second.
        assert!(feed.current(99, fail).await.is_none());
        assert!(feed.current(99, || async { Ok(list(99)) }).await.is_none());
        let got = feed.current(100, || async { Ok(list(100)) }).await.unwrap();
        assert_eq!(got.issued_at, 100);
        // Fresh: no fetch at all.
        let never = || async { panic!("fetched while fresh") };
        assert_eq!(feed.current(101, never).await.unwrap().issued_at, 100);
        // Due, but the fetch fails: the held list serves until max_stale.
        assert_eq!(feed.current(105, fail).await.unwrap().issued_at, 100);
        assert!(feed.current(111, fail).await.is_none());
        // An older document than the one held is not taken.
        let newer = feed.current(112, || async { Ok(list(112)) }).await.unwrap();
        assert_eq!(newer.issued_at, 112);
        let older = feed.current(115, || async { Ok(list(50)) }).await.unwrap();
        assert_eq!(older.issued_at, 112);
    }

    #[test]
    fn the_feed_sits_beside_the_jwks() {
        assert_eq!(
            feed_url_beside("https://sts.example/.well-known/jwks.json").as_deref(),
            Some("https://sts.example/deny-list")
        );
        assert_eq!(
            feed_url_beside("http://127.0.0.1:9/t/acme/.well-known/jwks.json").as_deref(),
            Some("http://127.0.0.1:9/t/acme/deny-list")
        );
        assert_eq!(feed_url_beside("https://sts.example/keys"), None);
    }
}
