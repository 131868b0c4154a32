//! The deny list as the key store keeps it, `{"entries": [...]}`, and its edits.
//!
//! Each entry is an [`agent_sts_verifier::deny::DenyRule`] (what it stops, until
//! when) plus who added it, when and why. The list is validated whole on every read:
//! a malformed list is refused (the replica keeps its last good one), never half used.
//! Edits are read-modify-write with check-and-set, retried on conflict, so entries
//! added by two operators at the same time are both kept; expired entries are dropped
//! at each edit.

use agent_sts_verifier::deny::{DenyRule, DenyTarget, IdentityRule};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::store::{DenyStore, DenyStoreError};
use crate::catalogue::{MAX_SUBJECT_LEN, is_action_name};

/// Most entries a list may hold.
pub const MAX_ENTRIES: usize = 10_000;

/// Longest `reason`, `added_by` or `jti`, in bytes.
pub const MAX_TEXT: usize = 512;

/// How often an edit is retried when another edit got in first.
const EDIT_ATTEMPTS: usize = 32;

/// One entry: the rule, and who added it, when and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DenyEntry {
    #[serde(flatten)]
    pub rule: DenyRule,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub added_by: String,
    /// Unix seconds.
    pub added_at: u64,
}

/// The whole list.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredDenyList {
    pub entries: Vec<DenyEntry>,
}

/// Why a stored list was refused: names the entry and the field, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DenyFormatError {
    #[error("not a deny list ({{\"entries\": [...]}})")]
    Shape,
    #[error("entry {index}: {problem}")]
    Entry { index: usize, problem: &'static str },
    #[error("more than {MAX_ENTRIES} entries")]
    TooMany,
}

impl StoredDenyList {
    /// Parses and validates a stored list.
    pub fn from_map(map: Map<String, Value>) -> Result<Self, DenyFormatError> {
        if map.keys().any(|k| k != "entries") {
            return Err(DenyFormatError::Shape);
        }
        let Some(Value::Array(items)) = map.get("entries") else {
            return match map.get("entries") {
                None => Ok(StoredDenyList::default()),
                Some(_) => Err(DenyFormatError::Shape),
            };
        };
        if items.len() > MAX_ENTRIES {
            return Err(DenyFormatError::TooMany);
        }
        let mut entries = Vec::with_capacity(items.len());
        let mut ids = std::collections::HashSet::new();
        for (index, item) in items.iter().enumerate() {
            let bad = |problem| DenyFormatError::Entry { index, problem };
            let entry: DenyEntry =
                serde_json::from_value(item.clone()).map_err(|_| bad("not a deny entry"))?;
            entry.check().map_err(bad)?;
            if !ids.insert(entry.rule.id.clone()) {
                return Err(bad("duplicate id"));
            }
            entries.push(entry);
        }
        Ok(StoredDenyList { entries })
    }

    /// Parses a stored list from JSON bytes (the file store).
    pub fn from_json(bytes: &[u8]) -> Result<Self, DenyFormatError> {
        match serde_json::from_slice(bytes) {
            Ok(Value::Object(map)) => Self::from_map(map),
            _ => Err(DenyFormatError::Shape),
        }
    }

    /// The list as a JSON object.
    pub fn to_map(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        }
    }

    /// The entries in force at `now`.
    pub fn in_force(&self, now: u64) -> impl Iterator<Item = &DenyEntry> {
        self.entries.iter().filter(move |e| e.rule.in_force(now))
    }
}

impl DenyEntry {
    /// Field rules: ids `d-` and hex; printable text of bounded length; patterns as
    /// the catalogue's; action names as the catalogue's.
    fn check(&self) -> Result<(), &'static str> {
        let id = &self.rule.id;
        if !(id.len() <= 64
            && id.starts_with("d-")
            && id.len() > 2
            && id[2..].bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err("id");
        }
        let printable = |s: &str, max: usize| {
            !s.is_empty() && s.len() <= max && !s.chars().any(char::is_control)
        };
        if !printable(&self.added_by, MAX_TEXT) {
            return Err("added_by");
        }
        if self
            .reason
            .as_deref()
            .is_some_and(|r| !printable(r, MAX_TEXT))
        {
            return Err("reason");
        }
        match &self.rule.target {
            DenyTarget::Agent(rule) | DenyTarget::Subject(rule) => check_identity(rule),
            DenyTarget::Action { action } if is_action_name(action) => Ok(()),
            DenyTarget::Action { .. } => Err("action"),
            DenyTarget::Jti { jti } if printable(jti, MAX_TEXT) => Ok(()),
            DenyTarget::Jti { .. } => Err("jti"),
        }
    }
}

fn check_identity(rule: &IdentityRule) -> Result<(), &'static str> {
    if rule.iss.is_some() {
        // Resolved from the configuration when published, never stored.
        return Err("iss");
    }
    if rule.trust.is_empty() || rule.trust.contains(':') {
        return Err("trust");
    }
    if rule.pattern.is_empty()
        || rule.pattern.len() > MAX_SUBJECT_LEN
        || rule.pattern.chars().any(char::is_control)
    {
        return Err("pattern");
    }
    Ok(())
}

/// Parses `TRUST:PATTERN` for `--agent` / `--subject`, against the configured trusts.
pub fn identity_rule(text: &str, trusts: &[&str]) -> Result<IdentityRule, String> {
    let (trust, pattern) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?}: write TRUST:PATTERN"))?;
    if !trusts.contains(&trust) {
        return Err(format!(
            "unknown trust {trust:?} (configured: {})",
            trusts.join(", ")
        ));
    }
    let rule = IdentityRule {
        trust: trust.to_string(),
        iss: None,
        pattern: pattern.to_string(),
    };
    check_identity(&rule).map_err(|_| {
        format!("{text:?}: the pattern must be 1 to {MAX_SUBJECT_LEN} printable bytes")
    })?;
    Ok(rule)
}

/// A fresh entry id: `d-` and 12 hex digits.
pub fn new_id() -> String {
    let mut bytes = [0u8; 6];
    // The id names an entry; it protects nothing, so a failed fill is not fatal.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    format!("d-{}", hex::encode(bytes))
}

/// Why an edit failed.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error(transparent)]
    Store(#[from] DenyStoreError),
    #[error("the entry is not valid: {0}")]
    Invalid(&'static str),
    #[error("the deny list is full ({MAX_ENTRIES} entries)")]
    Full,
    #[error("no entry {0}")]
    NotFound(String),
    #[error("the deny list kept changing while it was edited; retry")]
    Busy,
}

/// Adds `entry` (its id already set) and returns it; expired entries are dropped.
pub async fn add(
    store: &dyn DenyStore,
    entry: DenyEntry,
    now: u64,
) -> Result<DenyEntry, EditError> {
    entry.check().map_err(EditError::Invalid)?;
    edit(store, now, |list| {
        if list.entries.len() >= MAX_ENTRIES {
            return Err(EditError::Full);
        }
        list.entries.push(entry.clone());
        Ok(())
    })
    .await?;
    Ok(entry)
}

/// Removes the entry `id` and returns it.
pub async fn remove(store: &dyn DenyStore, id: &str, now: u64) -> Result<DenyEntry, EditError> {
    let mut removed = None;
    edit(store, now, |list| {
        let at = list
            .entries
            .iter()
            .position(|e| e.rule.id == id)
            .ok_or_else(|| EditError::NotFound(id.to_string()))?;
        removed = Some(list.entries.remove(at));
        Ok(())
    })
    .await?;
    removed.ok_or_else(|| EditError::NotFound(id.to_string()))
}

/// Read, change, write with check-and-set; again from the read on a conflict.
async fn edit(
    store: &dyn DenyStore,
    now: u64,
    mut change: impl FnMut(&mut StoredDenyList) -> Result<(), EditError>,
) -> Result<(), EditError> {
    for _ in 0..EDIT_ATTEMPTS {
        let (mut list, version) = store.load().await?;
        list.entries.retain(|e| e.rule.in_force(now));
        change(&mut list)?;
        match store.save(&list, &version).await {
            Ok(()) => return Ok(()),
            Err(DenyStoreError::Conflict { .. }) => {
                // Another edit got in: spread the retries so they do not collide again.
                let mut jitter = [0u8; 1];
                let _ = aws_lc_rs::rand::fill(&mut jitter);
                tokio::time::sleep(std::time::Duration::from_millis(
                    5 + u64::from(jitter[0]) / 4,
                ))
                .await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(EditError::Busy)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn entry(id: &str, target: DenyTarget) -> DenyEntry {
        DenyEntry {
            rule: DenyRule {
                id: id.into(),
                target,
                until: None,
            },
            reason: Some("incident 42".into()),
            added_by: "alice".into(),
            added_at: 1,
        }
    }

    #[test]
    fn a_stored_list_is_validated_whole() {
        let good = json!({"entries": [
            {"id": "d-01", "kind": "agent", "trust": "k8s", "pattern": "ci:*", "added_by": "a", "added_at": 1},
            {"id": "d-02", "kind": "action", "action": "github.issues.create", "added_by": "a", "added_at": 1, "until": 9},
            {"id": "d-03", "kind": "jti", "jti": "abc", "added_by": "a", "added_at": 1},
        ]});
        let list = StoredDenyList::from_map(good.as_object().unwrap().clone()).unwrap();
        assert_eq!(list.entries.len(), 3);
        assert_eq!(list.in_force(10).count(), 2);
        let round = StoredDenyList::from_map(list.to_map()).unwrap();
        assert_eq!(round, list);

        for (bad, problem) in [
            (json!({"entries": "x"}), None),
            (json!({"entries": [], "other": 1}), None),
            (
                json!({"entries": [{"id": "d-01", "kind": "everyone", "added_by": "a", "added_at": 1}]}),
                Some("not a deny entry"),
            ),
            (
                json!({"entries": [{"id": "x", "kind": "jti", "jti": "j", "added_by": "a", "added_at": 1}]}),
                Some("id"),
            ),
            (
                json!({"entries": [{"id": "d-01", "kind": "action", "action": "Not An Action", "added_by": "a", "added_at": 1}]}),
                Some("action"),
            ),
            (
                json!({"entries": [{"id": "d-01", "kind": "agent", "trust": "k8s", "iss": "https://x", "pattern": "p", "added_by": "a", "added_at": 1}]}),
                Some("iss"),
            ),
            (
                json!({"entries": [{"id": "d-01", "kind": "jti", "jti": "a\nb", "added_by": "a", "added_at": 1}]}),
                Some("jti"),
            ),
            (
                json!({"entries": [
                {"id": "d-01", "kind": "jti", "jti": "a", "added_by": "a", "added_at": 1},
                {"id": "d-01", "kind": "jti", "jti": "b", "added_by": "a", "added_at": 1}]}),
                Some("duplicate id"),
            ),
        ] {
            let err = StoredDenyList::from_map(bad.as_object().unwrap().clone()).unwrap_err();
            match problem {
                None => assert_eq!(err, DenyFormatError::Shape),
                Some(p) => assert!(
                    matches!(err, DenyFormatError::Entry { problem, .. } if problem == p),
                    "{err}"
                ),
            }
        }
        assert_eq!(
            StoredDenyList::from_map(Map::new()).unwrap(),
            StoredDenyList::default()
        );
    }

    #[test]
    fn identity_patterns_name_a_configured_trust() {
        let rule = identity_rule("k8s:system:serviceaccount:ci:*", &["k8s", "gha"]).unwrap();
        assert_eq!(rule.trust, "k8s");
        assert_eq!(rule.pattern, "system:serviceaccount:ci:*");
        assert!(
            identity_rule("nope:x", &["k8s"])
                .unwrap_err()
                .contains("unknown trust")
        );
        assert!(identity_rule("k8s:", &["k8s"]).is_err());
        assert!(identity_rule("no-colon", &["k8s"]).is_err());
        let id = new_id();
        assert!(
            entry(&id, DenyTarget::Jti { jti: "j".into() })
                .check()
                .is_ok()
        );
    }
}
