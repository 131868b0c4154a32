//! `[[tenant]]`: one deployment, many issuers (README, "Running many tenants").
//!
//! A tenant is a projection of the whole configuration: its own issuer
//! (`{server.issuer}/t/{name}`), catalogue, keyring, deny list, audit log and secret
//! namespace, with everything else (limits, Vault, tokens) shared. [`Config::tenant`]
//! makes that projection, so every part that works on a [`Config`] (the server, `keys`,
//! `scopes check`, `deny`) works on a tenant unchanged. The checks here are the ones
//! that keep tenants apart: names from a closed alphabet, and no two tenants (nor a
//! tenant and the top-level configuration) sharing a keyring, an audit log or a secret
//! prefix.

use std::path::PathBuf;

use serde::Deserialize;

use super::{Check, Config, ConfigError, KeyStoreKind, deny_list_beside, vault_name};

/// Longest tenant name (a DNS label's length: names end up in URLs and metric labels).
pub const MAX_TENANT_NAME: usize = 63;

/// Most tenants one process serves (the bound of the `tenant` metric label).
pub const MAX_TENANTS: usize = 256;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenant {
    name: String,
    scopes_dir: String,
    trusts: Vec<String>,
    secrets_prefix: String,
    keys_dir: Option<String>,
    keys_vault_path: Option<String>,
    audit_path: String,
}

/// One validated `[[tenant]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantConfig {
    /// `[a-z0-9-]`, at most [`MAX_TENANT_NAME`]: the URL segment and metric label.
    pub name: String,
    pub scopes_dir: PathBuf,
    /// The `[[trust]]` names whose workload identities this tenant accepts.
    pub trusts: Vec<String>,
    /// Every credential path of the tenant's catalogue resolves under this prefix.
    pub secrets_prefix: String,
    /// `keys_dir`, `keys_vault_path`, or (Transit) `keys_vault_path` as the key name.
    pub keys: KeyStoreKind,
    /// The deny list, beside the keyring (as for the top-level configuration).
    pub deny: KeyStoreKind,
    pub audit_path: PathBuf,
}

/// Whether `name` may name a tenant.
pub fn valid_tenant_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TENANT_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Whether two slash-separated prefixes overlap: one is the other, or lies under it.
fn overlaps(a: &str, b: &str) -> bool {
    let under = |long: &str, short: &str| {
        long == short
            || (long.starts_with(short) && long.as_bytes().get(short.len()) == Some(&b'/'))
    };
    under(a, b) || under(b, a)
}

/// Validates the `[[tenant]]` entries against the top-level `keys` store, `deny`
/// store, trusts and audit path they must differ from.
pub(super) fn validate_tenants(
    c: &Check,
    raw: Vec<RawTenant>,
    key_store: &KeyStoreKind,
    deny_store: &KeyStoreKind,
    trusts: &[String],
    audit_path: &std::path::Path,
) -> Result<Vec<TenantConfig>, ConfigError> {
    if raw.len() > MAX_TENANTS {
        return Err(c.err("tenant", format!("at most {MAX_TENANTS} tenants")));
    }
    let mut tenants: Vec<TenantConfig> = Vec::with_capacity(raw.len());
    for (i, t) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("tenant[{i}].{k}");
        if !valid_tenant_name(&t.name) {
            return Err(c.err(
                &key("name"),
                format!("must be 1 to {MAX_TENANT_NAME} characters of [a-z0-9-]"),
            ));
        }
        if tenants.iter().any(|o| o.name == t.name) {
            return Err(c.err(&key("name"), format!("{:?} is named twice", t.name)));
        }
        if t.scopes_dir.is_empty() {
            return Err(c.err(&key("scopes_dir"), "must not be empty"));
        }
        if t.trusts.is_empty() {
            return Err(c.err(&key("trusts"), "must name at least one [[trust]]"));
        }
        for (j, name) in t.trusts.iter().enumerate() {
            if !trusts.contains(name) {
                return Err(c.err(
                    &format!("tenant[{i}].trusts[{j}]"),
                    format!("no [[trust]] named {name:?}"),
                ));
            }
            if t.trusts[..j].contains(name) {
                return Err(c.err(
                    &format!("tenant[{i}].trusts[{j}]"),
                    format!("{name:?} is listed twice"),
                ));
            }
        }
        let secrets_prefix = vault_name(c, &key("secrets_prefix"), &t.secrets_prefix, true)?;
        if let Some(other) = tenants
            .iter()
            .find(|o| overlaps(&o.secrets_prefix, &secrets_prefix))
        {
            return Err(c.err(
                &key("secrets_prefix"),
                format!(
                    "overlaps tenant {:?}'s ({:?}): each tenant's credentials have a prefix of their own",
                    other.name, other.secrets_prefix
                ),
            ));
        }
        let (keys, deny) = tenant_keyring(c, i, &t, key_store)?;
        if keys == *key_store || deny == *deny_store {
            return Err(c.err(
                &key(keyring_key(key_store)),
                "must differ from the top-level keyring: each tenant signs with keys of its own",
            ));
        }
        if let Some(other) = tenants.iter().find(|o| o.keys == keys || o.deny == deny) {
            return Err(c.err(
                &key(keyring_key(key_store)),
                format!("is tenant {:?}'s keyring too", other.name),
            ));
        }
        let audit = PathBuf::from(&t.audit_path);
        if t.audit_path.is_empty() {
            return Err(c.err(&key("audit_path"), "must not be empty"));
        }
        if audit == audit_path || tenants.iter().any(|o| o.audit_path == audit) {
            return Err(c.err(
                &key("audit_path"),
                "must be a log of its own: each tenant's audit chain is apart",
            ));
        }
        tenants.push(TenantConfig {
            name: t.name,
            scopes_dir: PathBuf::from(t.scopes_dir),
            trusts: t.trusts,
            secrets_prefix,
            keys,
            deny,
            audit_path: audit,
        });
    }
    Ok(tenants)
}

/// The key naming a tenant's keyring for the top-level `keys.store`.
fn keyring_key(store: &KeyStoreKind) -> &'static str {
    match store {
        KeyStoreKind::File { .. } => "keys_dir",
        KeyStoreKind::Vault { .. } | KeyStoreKind::Transit { .. } => "keys_vault_path",
    }
}

/// A tenant's keyring and deny-list locations, in the top-level store's kind: a
/// directory (the deny list inside it), a KV path (the deny list its sibling
/// `deny-list`), or a Transit key in the same mount (the deny list at
/// `agent-sts/tenants/{name}/deny-list`).
fn tenant_keyring(
    c: &Check,
    i: usize,
    t: &RawTenant,
    store: &KeyStoreKind,
) -> Result<(KeyStoreKind, KeyStoreKind), ConfigError> {
    let key = |k: &str| format!("tenant[{i}].{k}");
    let (wanted, unwanted) = match store {
        KeyStoreKind::File { .. } => (&t.keys_dir, ("keys_vault_path", &t.keys_vault_path)),
        _ => (&t.keys_vault_path, ("keys_dir", &t.keys_dir)),
    };
    if unwanted.1.is_some() {
        return Err(c.err(
            &key(unwanted.0),
            format!(
                "does not apply with keys.store = \"{}\"",
                match store {
                    KeyStoreKind::File { .. } => "file",
                    KeyStoreKind::Vault { .. } => "vault",
                    KeyStoreKind::Transit { .. } => "transit",
                }
            ),
        ));
    }
    let Some(location) = wanted.as_deref() else {
        return Err(c.err(&key(keyring_key(store)), "is required"));
    };
    Ok(match store {
        KeyStoreKind::File { .. } => {
            if location.is_empty() {
                return Err(c.err(&key("keys_dir"), "must not be empty"));
            }
            let dir = PathBuf::from(location);
            (
                KeyStoreKind::File { dir: dir.clone() },
                KeyStoreKind::File { dir },
            )
        }
        KeyStoreKind::Vault { .. } => {
            let path = vault_name(c, &key("keys_vault_path"), location, true)?;
            let deny = deny_list_beside(&path);
            (
                KeyStoreKind::Vault { path },
                KeyStoreKind::Vault { path: deny },
            )
        }
        KeyStoreKind::Transit { mount, .. } => {
            let name = vault_name(c, &key("keys_vault_path"), location, false)?;
            (
                KeyStoreKind::Transit {
                    mount: mount.clone(),
                    key: name,
                },
                KeyStoreKind::Vault {
                    path: format!("agent-sts/tenants/{}/deny-list", t.name),
                },
            )
        }
    })
}

impl Config {
    /// `{server.issuer}/t/{name}`: a tenant's issuer.
    pub fn tenant_issuer(&self, name: &str) -> String {
        format!("{}/t/{name}", self.server.issuer.trim_end_matches('/'))
    }

    /// The configuration tenant `name` runs with: the top-level one with the tenant's
    /// issuer, catalogue, trusts, keyring, deny list, audit log and secret prefix, and
    /// no tenants of its own. `None` when no tenant has that name.
    pub fn tenant(&self, name: &str) -> Option<Config> {
        let t = self.tenants.iter().find(|t| t.name == name)?;
        let mut view = self.clone();
        view.server.issuer = self.tenant_issuer(name);
        view.server.scopes_dir = t.scopes_dir.clone();
        view.trusts.retain(|trust| t.trusts.contains(&trust.name));
        // An introspection caller pattern names its trust first (`TRUST:PATTERN`):
        // only the tenant's own trusts can introspect its tokens.
        view.introspection = self
            .introspection
            .iter()
            .filter_map(|grant| {
                let callers: Vec<String> = grant
                    .callers
                    .iter()
                    .filter(|c| {
                        c.split_once(':')
                            .is_some_and(|(trust, _)| t.trusts.iter().any(|n| n == trust))
                    })
                    .cloned()
                    .collect();
                (!callers.is_empty()).then(|| super::IntrospectionGrant {
                    callers,
                    audiences: grant.audiences.clone(),
                })
            })
            .collect();
        view.keys.store = t.keys.clone();
        view.deny.store = t.deny.clone();
        view.audit.path = t.audit_path.clone();
        view.secrets_prefix = Some(t.secrets_prefix.clone());
        view.tenant = Some(t.name.clone());
        view.tenants = Vec::new();
        Some(view)
    }

    /// The configuration `--tenant NAME` names (the top-level one without it), or the
    /// error naming the unknown tenant (exit 2).
    pub fn for_tenant(self, name: Option<&str>) -> Result<Config, ConfigError> {
        match name {
            None => Ok(self),
            Some(name) => self.tenant(name).ok_or_else(|| ConfigError::Invalid {
                file: self.source.clone(),
                key: "tenant".into(),
                message: format!("no [[tenant]] named {name:?}"),
            }),
        }
    }

    /// The secret prefixes of the tenants, each with its tenant's name: credential
    /// paths of the top-level catalogue must not lie under them.
    pub fn reserved_secret_prefixes(&self) -> Vec<(String, String)> {
        self.tenants
            .iter()
            .map(|t| (t.secrets_prefix.clone(), t.name.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_a_closed_alphabet() {
        for good in ["acme", "a", "team-7", &"x".repeat(63)] {
            assert!(valid_tenant_name(good), "{good}");
        }
        for bad in [
            "",
            "Acme",
            "a_b",
            "a/b",
            "a.b",
            "..",
            "a b",
            &"x".repeat(64),
            "é",
        ] {
            assert!(!valid_tenant_name(bad), "{bad}");
        }
    }

    #[test]
    fn prefixes_overlap_on_segments_only() {
        assert!(overlaps("tenants/acme", "tenants/acme"));
        assert!(overlaps("tenants/acme", "tenants/acme/sub"));
        assert!(overlaps("tenants", "tenants/acme"));
        assert!(!overlaps("tenants/acme", "tenants/acme2"));
        assert!(!overlaps("tenants/a", "other/a"));
    }
}
