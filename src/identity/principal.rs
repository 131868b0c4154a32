//! Who a verified token speaks for, as the catalogue sees it: the configured trusts
//! (their names and the SPIFFE trust domains each speaks for) and one verified
//! identity ([`Principal`]). Subjects are unique only per issuer, so an identity is
//! always the pair (trust, subject), never a bare `sub`.

use std::collections::{BTreeMap, BTreeSet};

/// What the catalogue knows of the configured trusts: their names, and which
/// SPIFFE trust domains each speaks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustDirectory {
    trusts: BTreeMap<String, BTreeSet<String>>,
    /// Accepts every trust name and SPIFFE domain: see [`TrustDirectory::any`].
    any: bool,
    /// Secret prefixes that belong to tenants, with the tenant's name: the top-level
    /// catalogue may not name a credential under them.
    reserved_credentials: Vec<(String, String)>,
}

impl TrustDirectory {
    /// Builds the directory from `(trust name, spiffe_trust_domains)` pairs. A name
    /// given twice has its domains merged (rejecting duplicates is the config's job).
    pub fn new(trusts: impl IntoIterator<Item = (String, Vec<String>)>) -> Self {
        let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (name, domains) in trusts {
            map.entry(name).or_default().extend(domains);
        }
        Self {
            trusts: map,
            any: false,
            reserved_credentials: Vec::new(),
        }
    }

    /// This directory, refusing credential paths under the given `(prefix, tenant)`
    /// secret prefixes (README, "Running many tenants").
    pub fn with_reserved_credentials(mut self, reserved: Vec<(String, String)>) -> Self {
        self.reserved_credentials = reserved;
        self
    }

    /// The tenant whose secret prefix `credential` lies under, if any.
    pub fn credential_owner(&self, credential: &str) -> Option<&str> {
        self.reserved_credentials
            .iter()
            .find(|(prefix, _)| {
                credential
                    .strip_prefix(prefix.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
            .map(|(_, tenant)| tenant.as_str())
    }

    /// The directory of a process that does not decide entitlement: the shim reads the
    /// catalogue only for each action's audience, request shape and credential (the STS
    /// checked `agents` and `subjects` when it minted the token), so it accepts any
    /// trust name and SPIFFE domain and needs no `[[trust]]` configuration.
    pub fn any() -> Self {
        Self {
            trusts: BTreeMap::new(),
            any: true,
            reserved_credentials: Vec::new(),
        }
    }

    /// Whether a trust of this name is configured.
    pub fn knows(&self, trust: &str) -> bool {
        self.any || self.trusts.contains_key(trust)
    }

    /// Whether at least one configured trust lists this SPIFFE trust domain.
    pub fn speaks_for(&self, spiffe_domain: &str) -> bool {
        self.any
            || self
                .trusts
                .values()
                .any(|domains| domains.contains(spiffe_domain))
    }

    /// Configured trust names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.trusts.keys().map(String::as_str)
    }
}

/// A verified identity: the configured trust that verified the token, the token's
/// subject, and the SPIFFE trust domains that trust speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal<'a> {
    pub trust: &'a str,
    pub subject: &'a str,
    pub spiffe_domains: &'a [String],
}
