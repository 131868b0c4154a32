//! Prometheus metrics (`GET /metrics`, text exposition format).
//!
//! Every label value comes from a closed set known before any request arrives: action
//! names from the catalogue (anything else is counted as `other`), reason codes from
//! the STS's `Rejection::reason` and the shim's `ShimError::reason`, trust names from
//! the configuration and fixed outcome words. No label is ever built from unverified
//! input, so a client cannot grow the metric families (README, "Security properties"
//! 7) or plant a secret in them (property 1).
//!
//! Counters are registered without `_total`: prometheus-client appends it to every
//! counter in the exposition (`agent_sts_tokens_issued_total`), as OpenMetrics asks.
//! Figures that are a function of time (key age, process figures) are computed at
//! each scrape, not by a ticking task.

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrustLabels {
    /// A configured trust's name.
    pub trust: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// One of [`VAULT_OPERATIONS`].
    pub operation: &'static str,
}

/// The `operation` label values of `agent_sts_vault_request_duration_seconds`.
pub const VAULT_OPERATIONS: &[&str] = &["read", "write", "login", "renew", "lookup", "sign"];

/// A histogram family whose buckets are fixed by a plain function.
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn vault_latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

/// What every program registers: `build_info{version}` = 1 and the process figures.
fn register_common(registry: &mut Registry) {
    let build_info = Family::<VersionLabels, Gauge>::default();
    build_info
        .get_or_create(&VersionLabels {
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
    registry.register(
        "build_info",
        "Always 1; the version label names the running build",
        build_info,
    );
    registry.register_collector(Box::new(super::process::ProcessCollector));
    registry.register(
        "trace_spans_dropped",
        super::traces::SPANS_DROPPED_HELP,
        super::traces::SPANS_DROPPED.clone(),
    );
    registry.register(
        "trace_export_failures",
        super::traces::EXPORT_FAILURES_HELP,
        super::traces::EXPORT_FAILURES.clone(),
    );
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
    pub catalogue_reload_failures: Counter,
    pub audit_write_failures: Counter,
    /// When each trust's JWKS was last fetched successfully (unix seconds).
    pub jwks_last_success: Family<TrustLabels, Gauge>,
    /// How long the signing key has been active (seconds; 0 without one).
    pub signing_key_age: Gauge,
    /// Seconds until the pending `next` key starts signing (0 when none is pending).
    pub next_key_activation: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

/// The Vault client's counters and gauges (`vault_*`), registered by the server that
/// uses the client (the STS, or a shim under its own prefix).
#[derive(Debug, Clone)]
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
    /// Time per request, by operation ([`VAULT_OPERATIONS`]).
    pub request_duration: HistogramFamily<OperationLabels>,
}

impl Default for VaultMetrics {
    fn default() -> Self {
        VaultMetrics {
            requests: Family::default(),
            logins: Family::default(),
            permission_denied: Counter::default(),
            token_expires_at: Gauge::default(),
            token_renewable: Gauge::default(),
            request_duration: Family::new_with_constructor(vault_latency_histogram),
        }
    }
}

impl VaultMetrics {
    /// Records how long one request of `operation` took.
    pub fn observe(&self, operation: &'static str, elapsed: std::time::Duration) {
        self.request_duration
            .get_or_create(&OperationLabels { operation })
            .observe(elapsed.as_secs_f64());
    }

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
        registry.register(
            "vault_request_duration_seconds",
            "Time per Vault request, by operation (read, write, login, renew, lookup)",
            self.request_duration.clone(),
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

/// Help of the STS's and the shim's `catalogue_reload_failures` counter.
const CATALOGUE_RELOAD_FAILURES_HELP: &str = "Catalogue reloads that failed (an invalid, unreadable or oversized scope file; not one still settling); the last good catalogue is kept";

/// Help of the STS's and the shim's `audit_write_failures` counter.
const AUDIT_WRITE_FAILURES_HELP: &str =
    "Audit lines that could not be written (the request was refused or its answer withheld)";

/// Label value for an action name that is not in the catalogue.
pub const OTHER_ACTION: &str = "other";

impl Metrics {
    /// The process's metrics: the top-level issuer's, `build_info` and the process
    /// figures.
    pub fn new() -> Self {
        let mut metrics = Self::for_tenant();
        register_common(&mut metrics.registry);
        metrics
    }

    /// A tenant's metrics: the issuer's own series, without what belongs to the
    /// process (rendered with a `tenant` label by [`merge_labelled`]).
    pub fn for_tenant() -> Self {
        let mut registry = Registry::with_prefix("agent_sts");
        let tokens_issued = Family::<ActionLabels, Counter>::default();
        let tokens_denied = Family::<DenialLabels, Counter>::default();
        let token_latency = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        let jwks_fetches = Family::<FetchLabels, Counter>::default();
        let signing_keys = Gauge::default();
        let keyring_refresh_failures = Counter::default();
        let catalogue_reloads_kept = Counter::default();
        let catalogue_reload_failures = Counter::default();
        let audit_write_failures = Counter::default();
        let jwks_last_success = Family::<TrustLabels, Gauge>::default();
        let signing_key_age = Gauge::default();
        let next_key_activation = Gauge::default();
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
        registry.register(
            "catalogue_reload_failures",
            CATALOGUE_RELOAD_FAILURES_HELP,
            catalogue_reload_failures.clone(),
        );
        registry.register(
            "audit_write_failures",
            AUDIT_WRITE_FAILURES_HELP,
            audit_write_failures.clone(),
        );
        registry.register(
            "jwks_last_success_seconds",
            "When each trust's JWKS was last fetched successfully (unix seconds)",
            jwks_last_success.clone(),
        );
        registry.register(
            "signing_key_age_seconds",
            "How long the active signing key has been signing",
            signing_key_age.clone(),
        );
        registry.register(
            "signing_key_next_activation_seconds",
            "Seconds until the pending next signing key starts signing (0 when none is pending)",
            next_key_activation.clone(),
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
            catalogue_reload_failures,
            audit_write_failures,
            jwks_last_success,
            signing_key_age,
            next_key_activation,
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

    /// Counts a JWKS fetch of a configured trust; a successful one (`ok`) also sets
    /// its `jwks_last_success_seconds` to `now`.
    pub fn jwks_fetch(&self, trust: &str, outcome: &'static str, now: u64) {
        self.jwks_fetches
            .get_or_create(&FetchLabels {
                trust: trust.to_string(),
                outcome,
            })
            .inc();
        if outcome == "ok" {
            self.jwks_last_success
                .get_or_create(&TrustLabels {
                    trust: trust.to_string(),
                })
                .set(i64::try_from(now).unwrap_or(i64::MAX));
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

/// How a streamed answer ended: `complete`, `idle_timeout`, `client_gone` or
/// `upstream_error`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub ended: &'static str,
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
    /// Answers relayed as streams, by how they ended.
    pub streams: Family<StreamLabels, Counter>,
    pub duration: Histogram,
    pub catalogue_reloads_kept: Counter,
    pub catalogue_reload_failures: Counter,
    pub audit_write_failures: Counter,
}

impl ShimMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("agent_sts_shim");
        register_common(&mut registry);
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
        let streams = Family::<StreamLabels, Counter>::default();
        registry.register(
            "streams_ended",
            "Answers relayed as streams, by how they ended",
            streams.clone(),
        );
        let catalogue_reloads_kept = Counter::default();
        registry.register(
            "catalogue_reloads_kept",
            CATALOGUE_RELOADS_KEPT_HELP,
            catalogue_reloads_kept.clone(),
        );
        let catalogue_reload_failures = Counter::default();
        registry.register(
            "catalogue_reload_failures",
            CATALOGUE_RELOAD_FAILURES_HELP,
            catalogue_reload_failures.clone(),
        );
        let audit_write_failures = Counter::default();
        registry.register(
            "audit_write_failures",
            AUDIT_WRITE_FAILURES_HELP,
            audit_write_failures.clone(),
        );
        ShimMetrics {
            registry,
            requests,
            streams,
            duration,
            catalogue_reloads_kept,
            catalogue_reload_failures,
            audit_write_failures,
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

/// `top`'s exposition with the series of each `(tenant, exposition)` merged in,
/// labelled `tenant="NAME"`: one family block per metric name (its `# HELP`/`# TYPE`
/// once, as the format requires), the top level's series first. Tenant names are
/// `[a-z0-9-]` (checked by the configuration), so they need no escaping. With no
/// tenants, `top` unchanged.
pub fn merge_labelled(top: String, tenants: &[(&str, String)]) -> String {
    if tenants.is_empty() {
        return top;
    }
    // Family blocks in first-seen order; a family's `#` lines come from the
    // exposition that showed it first.
    struct Block {
        name: String,
        from: usize,
        meta: Vec<String>,
        samples: Vec<String>,
    }
    let mut families: Vec<Block> = Vec::new();
    let sources = std::iter::once((None, top.as_str()))
        .chain(tenants.iter().map(|(t, text)| (Some(*t), text.as_str())));
    for (pass, (tenant, text)) in sources.enumerate() {
        let mut current: Option<usize> = None;
        for line in text.lines().filter(|l| !l.is_empty() && *l != "# EOF") {
            if let Some(meta) = line.strip_prefix("# ") {
                let name = meta.split(' ').nth(1).unwrap_or_default();
                let index = families
                    .iter()
                    .position(|b| b.name == name)
                    .unwrap_or_else(|| {
                        families.push(Block {
                            name: name.to_string(),
                            from: pass,
                            meta: Vec::new(),
                            samples: Vec::new(),
                        });
                        families.len() - 1
                    });
                if families[index].from == pass {
                    families[index].meta.push(line.to_string());
                }
                current = Some(index);
            } else if let Some(index) = current {
                families[index].samples.push(match tenant {
                    None => line.to_string(),
                    Some(t) => with_tenant_label(line, t),
                });
            }
        }
    }
    let mut out = String::with_capacity(top.len() * (tenants.len() + 1));
    for block in families {
        for line in block.meta.iter().chain(&block.samples) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str("# EOF\n");
    out
}

/// `sample` (`name{labels} value` or `name value`) with `tenant="NAME"` first among
/// its labels.
fn with_tenant_label(sample: &str, tenant: &str) -> String {
    match sample.find(['{', ' ']) {
        Some(i) if sample.as_bytes()[i] == b'{' => {
            let rest = &sample[i + 1..];
            let sep = if rest.starts_with('}') { "" } else { "," };
            format!("{}{{tenant=\"{tenant}\"{sep}{rest}", &sample[..i])
        }
        Some(i) => format!("{}{{tenant=\"{tenant}\"}}{}", &sample[..i], &sample[i..]),
        None => sample.to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_series_join_their_family_once_labelled() {
        let top = Metrics::new();
        top.tokens_issued
            .get_or_create(&ActionLabels { action: "a".into() })
            .inc();
        let tenant = Metrics::for_tenant();
        tenant
            .tokens_issued
            .get_or_create(&ActionLabels { action: "b".into() })
            .inc();
        tenant.signing_keys.set(2);
        let text = merge_labelled(top.render(), &[("acme", tenant.render())]);
        assert!(text.contains("agent_sts_tokens_issued_total{action=\"a\"} 1\n"));
        assert!(text.contains("agent_sts_tokens_issued_total{tenant=\"acme\",action=\"b\"} 1\n"));
        assert!(text.contains("agent_sts_signing_keys_published{tenant=\"acme\"} 2\n"));
        // One HELP and TYPE per family, its samples together, one EOF at the end.
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let mut unique = types.clone();
        unique.dedup();
        unique.sort();
        unique.dedup();
        assert_eq!(types.len(), unique.len(), "{text}");
        let issued: Vec<usize> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| l.starts_with("agent_sts_tokens_issued_total"))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(issued.len(), 2);
        assert_eq!(issued[1], issued[0] + 1, "{text}");
        assert!(text.ends_with("# EOF\n") && text.matches("# EOF").count() == 1);
        // Process figures stay the process's: never under a tenant.
        assert!(!text.contains("build_info{tenant"));
        // No tenants: the exposition unchanged.
        let alone = tenant.render();
        assert_eq!(merge_labelled(alone.clone(), &[]), alone);
    }

    #[test]
    fn the_tenant_label_goes_first() {
        assert_eq!(with_tenant_label("m 1", "t"), "m{tenant=\"t\"} 1");
        assert_eq!(with_tenant_label("m{} 1", "t"), "m{tenant=\"t\"} 1");
        assert_eq!(
            with_tenant_label("m_bucket{le=\"0.1\"} 3", "t"),
            "m_bucket{tenant=\"t\",le=\"0.1\"} 3"
        );
    }
}
