//! Prometheus metrics (`GET /metrics`, text exposition format).
//!
//! Every label value comes from a closed set known before any request arrives: action
//! names from the catalogue (anything else is counted as `other`), reason codes from
//! the STS's `Rejection::reason` and the shim's `ShimError::reason`, trust names from
//! the configuration and fixed outcome words. No label is ever built from unverified
//! input, so a client cannot grow the metric families (README, "Security properties"
//! 7) or plant a secret in them (property 1).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenialLabels {
    pub action: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetchLabels {
    pub trust: String,
    pub outcome: &'static str,
}

/// The STS's metrics and the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub tokens_issued: Family<ActionLabels, Counter>,
    pub tokens_denied: Family<DenialLabels, Counter>,
    pub token_latency: Histogram,
    pub jwks_fetches: Family<FetchLabels, Counter>,
    pub signing_keys: Gauge,
    pub keyring_refresh_failures: Counter,
    pub catalogue_reloads_kept: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

/// The Vault client's counters and gauges (`vault_*`), registered by the server that
/// uses the client (the STS, or a shim under its own prefix).
#[derive(Debug, Clone, Default)]
pub struct VaultMetrics {
    /// Requests sent to Vault, by outcome.
    pub requests: Family<OutcomeLabels, Counter>,
    /// Logins, by outcome (`ok`, `failed`).
    pub logins: Family<OutcomeLabels, Counter>,
    /// Operations refused because the token's policy denies the path (each caller).
    pub permission_denied: Counter,
    /// When the Vault token expires (unix seconds; 0 when it does not).
    pub token_expires_at: Gauge,
    /// 1 when the Vault token can be renewed.
    pub token_renewable: Gauge,
}

impl VaultMetrics {
    pub fn request(&self, outcome: &'static str) {
        self.requests
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub fn login(&self, outcome: &'static str) {
        self.logins.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "vault_requests",
            "Requests sent to Vault, by outcome",
            self.requests.clone(),
        );
        registry.register(
            "vault_logins",
            "Vault logins, by outcome",
            self.logins.clone(),
        );
        registry.register(
            "vault_permission_denied",
            "Operations refused because the Vault token's policy denies the path",
            self.permission_denied.clone(),
        );
        registry.register(
            "vault_token_expires_at_seconds",
            "When the Vault token expires (unix seconds; 0 when it does not)",
            self.token_expires_at.clone(),
        );
        registry.register(
            "vault_token_renewable",
            "1 when the Vault token can be renewed",
            self.token_renewable.clone(),
        );
    }
}
/// The deny list's counters and gauges (`deny_list_*`), registered by the STS.
#[derive(Debug, Clone, Default)]
pub struct DenyMetrics {
    /// Reads of the deny list from the store, by outcome (`ok`, `failed`, `malformed`).
    pub reads: Family<OutcomeLabels, Counter>,
    /// Changes seen in the list.
    pub changes: Counter,
    /// Entries in force at the last read.
    pub entries: Gauge,
    /// Unix seconds of the last successful read.
    pub last_read: Gauge,
}

impl DenyMetrics {
    pub fn read(&self, outcome: &'static str) {
        self.reads.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "deny_list_reads",
            "Reads of the deny list from the key store, by outcome (ok, failed, malformed: the last good list is kept)",
            self.reads.clone(),
        );
        registry.register(
            "deny_list_changes",
            "Changes seen in the deny list",
            self.changes.clone(),
        );
        registry.register(
            "deny_list_entries",
            "Deny-list entries in force at the last read",
            self.entries.clone(),
        );
        registry.register(
            "deny_list_last_read_seconds",
            "When the deny list was last read successfully (unix seconds)",
            self.last_read.clone(),
        );
    }
}

/// Help of the STS's and the shim's `catalogue_reloads_kept` counter.
const CATALOGUE_RELOADS_KEPT_HELP: &str = "Catalogue reloads that kept the last good catalogue (a scope file still settling, changing while read, too large or invalid)";

/// Label value for an action name that is not in the catalogue.
pub const OTHER_ACTION: &str = "other";

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("agent_sts");
        let tokens_issued = Family::<ActionLabels, Counter>::default();
        let tokens_denied = Family::<DenialLabels, Counter>::default();
        let token_latency = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        let jwks_fetches = Family::<FetchLabels, Counter>::default();
        let signing_keys = Gauge::default();
        let keyring_refresh_failures = Counter::default();
        let catalogue_reloads_kept = Counter::default();
        registry.register(
            "tokens_issued",
            "Tokens minted, by action",
            tokens_issued.clone(),
        );
        registry.register(
            "tokens_denied",
            "Token requests refused, by action and reason",
            tokens_denied.clone(),
        );
        registry.register(
            "token_request_duration_seconds",
            "Time to answer POST /token",
            token_latency.clone(),
        );
        registry.register(
            "jwks_fetches",
            "Workload issuer JWKS fetches, by trust and outcome",
            jwks_fetches.clone(),
        );
        registry.register(
            "signing_keys_published",
            "Signing keys currently in the JWKS",
            signing_keys.clone(),
        );
        registry.register(
            "keyring_refresh_failures",
            "Keyring reads that failed or held a malformed ring (the last good ring is kept)",
            keyring_refresh_failures.clone(),
        );
        registry.register(
            "catalogue_reloads_kept",
            CATALOGUE_RELOADS_KEPT_HELP,
            catalogue_reloads_kept.clone(),
        );
        Metrics {
            registry,
            tokens_issued,
            tokens_denied,
            token_latency,
            jwks_fetches,
            signing_keys,
            keyring_refresh_failures,
            catalogue_reloads_kept,
        }
    }

    /// These metrics and those of the Vault client in use.
    pub fn with_vault(mut self, vault: Option<&VaultMetrics>) -> Self {
        if let Some(v) = vault {
            v.register(&mut self.registry);
        }
        self
    }

    /// These metrics and the deny list's.
    pub fn with_deny(mut self, deny: &DenyMetrics) -> Self {
        deny.register(&mut self.registry);
        self
    }

    /// Counts a JWKS fetch of a configured trust.
    pub fn jwks_fetch(&self, trust: &str, outcome: &'static str) {
        self.jwks_fetches
            .get_or_create(&FetchLabels {
                trust: trust.to_string(),
                outcome,
            })
            .inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShimLabels {
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// `proxied`, or the refusal's reason code (the shim's `ShimError::reason`).
    pub reason: &'static str,
}

/// A shim's metrics (`agent_sts_shim_*`, on its admin listener).
#[derive(Debug)]
pub struct ShimMetrics {
    registry: Registry,
    pub requests: Family<ShimLabels, Counter>,
    pub duration: Histogram,
    pub catalogue_reloads_kept: Counter,
}

impl ShimMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("agent_sts_shim");
        let requests = Family::<ShimLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.000_05, 2.0, 18));
        registry.register(
            "requests",
            "Requests answered, by decision and reason",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer a request, upstream included",
            duration.clone(),
        );
        let catalogue_reloads_kept = Counter::default();
        registry.register(
            "catalogue_reloads_kept",
            CATALOGUE_RELOADS_KEPT_HELP,
            catalogue_reloads_kept.clone(),
        );
        ShimMetrics {
            registry,
            requests,
            duration,
            catalogue_reloads_kept,
        }
    }

    /// These metrics and those of the Vault client in use.
    pub fn with_vault(mut self, vault: Option<&VaultMetrics>) -> Self {
        if let Some(v) = vault {
            v.register(&mut self.registry);
        }
        self
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

impl Default for ShimMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The text exposition of `registry` (empty if encoding fails).
fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
