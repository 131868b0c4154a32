//! `agent-sts deny add|list|remove` (README, "Stopping an agent"): the operator's side
//! of the kill switch. Each command opens the configured store (file or Vault, as
//! `serve` does), edits or reads the list with check-and-set, and returns what to
//! print; `main` only dispatches.

use std::time::Duration;

use agent_sts_verifier::deny::{DenyRule, DenyTarget};

use super::deny_list::{self, DenyEntry, EditError, StoredDenyList};
use super::store::{self as deny_store, DenyStore};
use crate::config::Config;
use crate::runtime::StartError;

/// What `deny add` stops: exactly one of these.
#[derive(Debug, Clone)]
pub enum Target {
    Agent(String),
    Subject(String),
    Action(String),
    Jti(String),
}

/// Opens the deny list of `config`'s store (logging in to Vault when it is there).
pub async fn open(config: &Config) -> Result<std::sync::Arc<dyn DenyStore>, StartError> {
    let stores = crate::store::open(config).await?;
    deny_store::open(config, stores.vault.as_ref())
}

/// Who runs the command, for `added_by`: `$USER` (or `$LOGNAME`), else `unknown`.
pub fn operator() -> String {
    ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok())
        .filter(|u| !u.is_empty() && u.len() <= 64 && !u.chars().any(char::is_control))
        .unwrap_or_else(|| "unknown".into())
}

/// Adds an entry; the new entry.
pub async fn add(
    config: &Config,
    store: &dyn DenyStore,
    target: Target,
    reason: Option<String>,
    duration: Option<Duration>,
    now: u64,
) -> Result<DenyEntry, StartError> {
    let trusts: Vec<&str> = config.trusts.iter().map(|t| t.name.as_str()).collect();
    let usage = StartError::Config;
    let target = match target {
        Target::Agent(t) => {
            DenyTarget::Agent(deny_list::identity_rule(&t, &trusts).map_err(usage)?)
        }
        Target::Subject(t) => {
            DenyTarget::Subject(deny_list::identity_rule(&t, &trusts).map_err(usage)?)
        }
        Target::Action(action) => {
            if !crate::catalogue::is_action_name(&action) {
                return Err(usage(format!("{action:?} is not an action name")));
            }
            DenyTarget::Action { action }
        }
        Target::Jti(jti) => DenyTarget::Jti { jti },
    };
    if reason
        .as_deref()
        .is_some_and(|r| r.len() > deny_list::MAX_TEXT || r.chars().any(char::is_control))
    {
        return Err(usage(format!(
            "--reason: at most {} bytes, one line",
            deny_list::MAX_TEXT
        )));
    }
    let entry = DenyEntry {
        rule: DenyRule {
            id: deny_list::new_id(),
            target,
            until: duration.map(|d| now + d.as_secs().max(1)),
        },
        reason: reason.filter(|r| !r.is_empty()),
        added_by: operator(),
        added_at: now,
    };
    deny_list::add(store, entry, now).await.map_err(edit_error)
}

/// Removes the entry `id`; the removed entry.
pub async fn remove(store: &dyn DenyStore, id: &str, now: u64) -> Result<DenyEntry, StartError> {
    deny_list::remove(store, id, now).await.map_err(edit_error)
}

/// The list as stored (expired entries included until the next edit drops them).
pub async fn list(store: &dyn DenyStore) -> Result<StoredDenyList, StartError> {
    store
        .load()
        .await
        .map(|(list, _)| list)
        .map_err(|e| StartError::Runtime(e.to_string()))
}

fn edit_error(e: EditError) -> StartError {
    match e {
        EditError::Invalid(_) => StartError::Config(e.to_string()),
        _ => StartError::Runtime(e.to_string()),
    }
}

/// What an entry stops, in the command line's words (`agent k8s:ci-*`).
pub fn describe_target(target: &DenyTarget) -> String {
    match target {
        DenyTarget::Agent(r) => format!("agent {}:{}", r.trust, r.pattern),
        DenyTarget::Subject(r) => format!("subject {}:{}", r.trust, r.pattern),
        DenyTarget::Action { action } => format!("action {action}"),
        DenyTarget::Jti { jti } => format!("jti {jti}"),
    }
}

/// `deny list` as a table.
pub fn table(list: &StoredDenyList, now: u64) -> String {
    let time = |t: u64| crate::keys::format_timestamp(t).unwrap_or_else(|| t.to_string());
    let mut out = format!(
        "{:<16} {:<8} {:<21} {:<21} {:<12} {:<40} reason\n",
        "id", "state", "added_at", "until", "added_by", "target"
    );
    for e in &list.entries {
        out.push_str(&format!(
            "{:<16} {:<8} {:<21} {:<21} {:<12} {:<40} {}\n",
            e.rule.id,
            if e.rule.in_force(now) {
                "in force"
            } else {
                "expired"
            },
            time(e.added_at),
            e.rule.until.map_or_else(|| "-".to_string(), time),
            e.added_by,
            describe_target(&e.rule.target),
            e.reason.as_deref().unwrap_or("-")
        ));
    }
    out
}

/// `deny list --json`: `{"entries": [...]}` as stored, each with `in_force`.
pub fn json(list: &StoredDenyList, now: u64) -> serde_json::Value {
    let entries: Vec<serde_json::Value> = list
        .entries
        .iter()
        .map(|e| {
            let mut v = serde_json::to_value(e).unwrap_or_default();
            v["in_force"] = serde_json::Value::Bool(e.rule.in_force(now));
            v
        })
        .collect();
    serde_json::json!({ "entries": entries })
}
