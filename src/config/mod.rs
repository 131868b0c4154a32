//! Configuration: `agent-sts.toml` exactly as the README's "Configuration" gives it, plus the `[limits]`
//! section the README documents.
//!
//! Loading is two steps. First the file is read into raw structs that mirror it
//! one-to-one (`#[serde(deny_unknown_fields)]`, so a typo is an error, not a silently
//! ignored key), with every `AGENT_STS_<SECTION>_<KEY>` environment variable applied on
//! top. Then `validate()` turns the raw structs into runtime types (`Duration`s,
//! `SocketAddr`s, enums), checking every cross-field rule. Every error names the file
//! (or the environment variable) and the key. The environment is read through the
//! [`Environment`] trait so tests never call `set_var`.
//!
//! `[[tenant]]` lives in [`tenant`]: a tenant's view of the whole configuration.
//!
//! May import the domain types it validates into (`keys::signing_key`, `secret`,
//! `catalogue::SenderConstraint`, `telemetry::traces::Settings`); components take the
//! parts they need, never the whole configuration (a tenant's view is a whole
//! configuration, for the assembly and the commands that work per tenant).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_sts_verifier::jwks::parse_jwks_uri;
use agent_sts_verifier::{Algorithm, IssuerConfig, KeySource, Limits};
use serde::Deserialize;

use crate::catalogue::SenderConstraint;
use crate::keys::signing_key::SigningAlgorithm;
use crate::secret::VaultToken;

pub mod tenant;
use crate::telemetry::logs::LogFormat;
use crate::telemetry::traces::{self, Settings as TraceSettings};
pub use tenant::TenantConfig;

/// Where environment variables come from.
/// The one way the process environment is read (`AGENT_STS_*` overrides and
/// `VAULT_TOKEN`), so tests pass a map instead of setting variables.
pub trait Environment {
    /// All variables whose name starts with `prefix`.
    fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)>;

    /// The variable `name`, if set (and valid Unicode).
    fn var(&self, name: &str) -> Option<String> {
        self.vars_with_prefix(name)
            .into_iter()
            .find_map(|(k, v)| (k == name).then_some(v))
    }
}

/// The process environment.
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        std::env::vars()
            .filter(|(k, _)| k.starts_with(prefix))
            .collect()
    }

    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Environment for BTreeMap<String, String> {
    fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        self.iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// The variable token auth reads when `vault.token_file` is not set.
pub const VAULT_TOKEN: &str = "VAULT_TOKEN";

/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "AGENT_STS_";

/// Sections an environment variable may override in the STS configuration
/// (`[[trust]]` is a list and cannot be).
const ENV_SECTIONS: &[&str] = &[
    "server",
    "tokens",
    "keys",
    "deny",
    "secrets",
    "vault",
    "audit",
    "limits",
    "telemetry",
];

/// Sections an environment variable may override in the shim configuration.
const SHIM_ENV_SECTIONS: &[&str] = &["shim", "secrets", "vault", "audit", "limits", "telemetry"];

/// `AGENT_STS_*` variables that are not configuration overrides (lowercase, prefix off).
const NOT_OVERRIDES: &[&str] = &["log", "log_format"];

/// A configuration error: always names where (file or variable) and which key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: {key}: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
}

// ---------------------------------------------------------------------------------
// Raw structs: the file as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    #[serde(default)]
    tokens: RawTokens,
    #[serde(default)]
    keys: RawKeys,
    #[serde(default)]
    deny: RawDeny,
    #[serde(default)]
    introspection: Vec<RawIntrospection>,
    #[serde(default)]
    secrets: RawSecrets,
    vault: Option<RawVault>,
    #[serde(default)]
    trust: Vec<RawTrust>,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    tenant: Vec<tenant::RawTenant>,
    #[serde(default)]
    telemetry: RawTelemetry,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    issuer: String,
    scopes_dir: Option<String>,
    admin_listen: Option<String>,
}

/// `[log]`: how log lines are written (the filter is `AGENT_STS_LOG`, not a setting).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
}

/// `[telemetry]`: OpenTelemetry traces, off unless `otlp_endpoint` is set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    otlp_endpoint: Option<String>,
    service_name: Option<String>,
    sample_ratio: Option<f64>,
    max_queue: Option<i64>,
    export_timeout: Option<String>,
    export_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokens {
    default_ttl: Option<String>,
    max_ttl: Option<String>,
    algorithm: Option<String>,
    sender_constraint: Option<String>,
    dpop_nonces: Option<bool>,
    dpop_max_age: Option<String>,
    max_delegation_depth: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    store: Option<String>,
    dir: Option<String>,
    vault_path: Option<String>,
    transit_mount: Option<String>,
    transit_key: Option<String>,
    refresh_interval: Option<String>,
    publish_lead: Option<String>,
    jwks_max_age: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntrospection {
    callers: Vec<String>,
    audiences: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeny {
    vault_path: Option<String>,
    refresh_interval: Option<String>,
    max_stale: Option<String>,
    feed_max_age: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecrets {
    store: Option<String>,
    file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVault {
    address: String,
    kv_mount: Option<String>,
    kv_version: Option<i64>,
    auth: Option<String>,
    token_file: Option<String>,
    role_id_file: Option<String>,
    secret_id_file: Option<String>,
    approle_mount: Option<String>,
    kubernetes_role: Option<String>,
    kubernetes_token_file: Option<String>,
    kubernetes_mount: Option<String>,
    jwt_role: Option<String>,
    jwt_token_file: Option<String>,
    jwt_mount: Option<String>,
    timeout: Option<String>,
    max_stale: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    name: String,
    issuer: String,
    jwks_uri: Option<String>,
    jwks_file: Option<String>,
    algorithms: Vec<String>,
    #[serde(default)]
    spiffe_trust_domains: Vec<String>,
    max_token_lifetime: Option<String>,
    leeway: Option<String>,
    jwks_refresh: Option<String>,
    jwks_max_stale: Option<String>,
    single_use_assertions: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    path: Option<String>,
    summary_interval: Option<String>,
    max_file_bytes: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_body_bytes: Option<i64>,
    max_token_bytes: Option<i64>,
    request_timeout: Option<String>,
    max_concurrency: Option<i64>,
    rate_per_second: Option<i64>,
    rate_burst: Option<i64>,
    subject_cache_capacity: Option<i64>,
    jwks_fetch_timeout: Option<String>,
    jwks_max_bytes: Option<i64>,
    jwks_refetch_cooldown: Option<String>,
    header_read_timeout: Option<String>,
    max_connection_age: Option<String>,
    max_connections: Option<i64>,
    max_connections_per_peer: Option<i64>,
}

/// The shim's file: `[shim]` plus the STS's `[secrets]`, `[vault]`, `[audit]`, `[limits]`, `[telemetry]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShimConfig {
    shim: RawShim,
    #[serde(default)]
    secrets: RawSecrets,
    vault: Option<RawVault>,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    telemetry: RawTelemetry,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShim {
    listen: Option<String>,
    audience: String,
    upstream: String,
    issuer: String,
    jwks_uri: String,
    scopes_dir: Option<String>,
    upstream_timeout: Option<String>,
    stream_idle_timeout: Option<String>,
    connect_timeout: Option<String>,
    max_request_bytes: Option<i64>,
    max_response_bytes: Option<i64>,
    max_header_bytes: Option<i64>,
    refresh_interval: Option<String>,
    admin_listen: Option<String>,
    jwks_refresh: Option<String>,
    jwks_max_stale: Option<String>,
    public_url: Option<String>,
    dpop_nonce_secret_file: Option<String>,
    deny_refresh: Option<String>,
    deny_max_stale: Option<String>,
    deny_feed_uri: Option<String>,
    secrets_prefix: Option<String>,
}

// ---------------------------------------------------------------------------------
// Runtime types.

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from (a path, or `<embedded default>`), for messages.
    pub source: String,
    pub server: ServerConfig,
    pub tokens: TokensConfig,
    pub keys: KeysConfig,
    pub deny: DenyConfig,
    /// Who may call `POST /introspect`, and about which audiences.
    pub introspection: Vec<IntrospectionGrant>,
    pub secrets: SecretsConfig,
    pub vault: Option<VaultConfig>,
    pub trusts: Vec<TrustConfig>,
    pub audit: AuditConfig,
    pub limits: LimitsConfig,
    /// `[log] format`; `AGENT_STS_LOG_FORMAT` wins over it.
    pub log_format: LogFormat,
    /// The `[[tenant]]` entries: issuers served beside this one.
    pub tenants: Vec<TenantConfig>,
    /// Which tenant this is a view of ([`Config::tenant`]); `None` for the top level.
    pub tenant: Option<String>,
    /// Where the catalogue's credential paths resolve in the secret store: under this
    /// prefix for a tenant, as written for the top level.
    pub secrets_prefix: Option<String>,
    /// `[telemetry]`: where spans are exported; `None` (no `otlp_endpoint`): off.
    pub telemetry: Option<TraceSettings>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// `iss` of minted tokens and the audience incoming workload tokens must carry.
    pub issuer: String,
    pub scopes_dir: PathBuf,
    /// Where `/metrics`, `/healthz` and `/readyz` are served apart from the public
    /// port; when set, `/metrics` leaves the public port.
    pub admin_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct TokensConfig {
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    pub algorithm: SigningAlgorithm,
    /// How actions without their own `sender_constraint` bind their tokens.
    pub sender_constraint: SenderConstraint,
    /// Whether DPoP proofs at `/token` must carry a server nonce (RFC 9449 §8).
    pub dpop_nonces: bool,
    /// Most actors an `act` chain may hold (a sub-agent's token from a parent's).
    pub max_delegation_depth: usize,
    /// How old a DPoP proof's `iat` may be.
    pub dpop_max_age: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyStoreKind {
    File {
        dir: PathBuf,
    },
    Vault {
        path: String,
    },
    /// Keys that never leave Vault: the Transit key `<mount>/keys/<key>` signs.
    Transit {
        mount: String,
        key: String,
    },
}

#[derive(Debug, Clone)]
pub struct KeysConfig {
    pub store: KeyStoreKind,
    pub refresh_interval: Duration,
    pub publish_lead: Duration,
    pub jwks_max_age: Duration,
}

/// One `[[introspection]]` entry: services whose workload identity matches one of
/// `callers` (`TRUST:PATTERN`, checked against the trusts when the STS is built) may
/// introspect tokens for `audiences`.
#[derive(Debug, Clone)]
pub struct IntrospectionGrant {
    pub callers: Vec<String>,
    pub audiences: Vec<String>,
}

/// The kill switch (`[deny]`): where the deny list lives (beside the keyring) and how
/// fast it travels.
#[derive(Debug, Clone)]
pub struct DenyConfig {
    /// The deny list: `<keys.dir>/deny-list.json`, or this KV path in Vault.
    pub store: KeyStoreKind,
    /// How often each replica re-reads the list.
    pub refresh_interval: Duration,
    /// How long a replica keeps its last good list when the store cannot be read (or
    /// holds a malformed one); after that it refuses every token and is not ready.
    pub max_stale: Duration,
    /// The `exp` of the signed feed, after its `iat`.
    pub feed_max_age: Duration,
}

#[derive(Debug, Clone)]
pub enum SecretsConfig {
    File { path: PathBuf },
    Vault,
}

#[derive(Debug, Clone)]
pub enum VaultAuth {
    /// `VAULT_TOKEN`, or the token in `token_file`.
    Token { token_file: Option<PathBuf> },
    AppRole {
        mount: String,
        role_id_file: PathBuf,
        secret_id_file: PathBuf,
    },
    Kubernetes {
        mount: String,
        role: String,
        token_file: PathBuf,
    },
    /// Vault's JWT auth method with the STS's own workload token (a projected
    /// service-account token, a CI OIDC token), re-read from `token_file` at each
    /// login so a rotated token is picked up.
    Jwt {
        mount: String,
        role: String,
        token_file: PathBuf,
    },
}

#[derive(Debug, Clone)]
pub struct VaultConfig {
    pub address: String,
    pub kv_mount: String,
    pub kv_version: u8,
    pub auth: VaultAuth,
    pub timeout: Duration,
    pub max_stale: Duration,
    /// `VAULT_TOKEN`, read from the environment when the configuration was loaded.
    pub env_token: Option<VaultToken>,
}

#[derive(Debug, Clone)]
pub struct TrustConfig {
    pub name: String,
    pub issuer: String,
    pub jwks: KeySource,
    pub algorithms: Vec<Algorithm>,
    pub spiffe_trust_domains: Vec<String>,
    /// Longest `exp - iat` a subject token may have.
    pub max_token_lifetime: Duration,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// How long fetched keys are used before a background refetch.
    pub jwks_refresh: Duration,
    /// How long the last good keys keep serving when the JWKS endpoint fails.
    pub jwks_max_stale: Duration,
    /// The issuer mints a token per request, each with a `jti`: as a jwt-bearer
    /// assertion (RFC 7523), one without a `jti` is refused, and a `jti` is accepted
    /// once within the token's lifetime. Off by default: platform tokens (Kubernetes
    /// projected tokens, CI OIDC tokens) are presented many times while they live.
    pub single_use_assertions: bool,
}

impl TrustConfig {
    /// The issuer as the verifier crate takes it.
    pub fn issuer_config(&self) -> IssuerConfig {
        IssuerConfig {
            name: self.name.clone(),
            issuer: self.issuer.clone(),
            keys: self.jwks.clone(),
            algorithms: self.algorithms.clone(),
            max_token_lifetime: self.max_token_lifetime,
            leeway: self.leeway,
            jwks_refresh: self.jwks_refresh,
            jwks_max_stale: self.jwks_max_stale,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub path: PathBuf,
    /// How often refusals decided before any identity is known are summarised: the
    /// first of each reason per interval gets its own line, the rest one count line.
    pub summary_interval: Duration,
    /// Rotate the log file once it holds this many bytes (0: never); the chain
    /// continues in the next file.
    pub max_file_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct LimitsConfig {
    pub max_body_bytes: usize,
    pub max_token_bytes: usize,
    pub request_timeout: Duration,
    pub max_concurrency: usize,
    pub rate_per_second: u32,
    pub rate_burst: u32,
    pub subject_cache_capacity: u64,
    pub jwks_fetch_timeout: Duration,
    pub jwks_max_bytes: usize,
    pub jwks_refetch_cooldown: Duration,
    /// Longest wait for a request's header section, the wait for its first byte on a
    /// kept-alive connection included; then the connection is closed.
    pub header_read_timeout: Duration,
    /// Longest a connection stays open, whatever it does.
    pub max_connection_age: Duration,
    /// Open connections at most (lowered to leave file descriptors in reserve).
    pub max_connections: usize,
    /// Open connections at most from one peer address.
    pub max_connections_per_peer: usize,
}

/// The `[limits]` defaults (README, configuration table); those that bound token
/// verification are the verifier crate's own defaults, one source for both.
impl Default for LimitsConfig {
    fn default() -> Self {
        let verify = Limits::default();
        LimitsConfig {
            max_body_bytes: 64 * 1024,
            max_token_bytes: verify.max_token_bytes,
            request_timeout: Duration::from_secs(5),
            max_concurrency: 1024,
            rate_per_second: 100,
            rate_burst: 200,
            subject_cache_capacity: verify.verified_cache_capacity,
            jwks_fetch_timeout: verify.jwks_fetch_timeout,
            jwks_max_bytes: verify.jwks_max_bytes,
            jwks_refetch_cooldown: verify.jwks_refetch_cooldown,
            header_read_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(600),
            max_connections: 4096,
            max_connections_per_peer: 256,
        }
    }
}

impl LimitsConfig {
    /// The limits that bound connections (header section read with `header_bytes`).
    pub fn connections(&self, header_bytes: usize) -> crate::runtime::ConnectionLimits {
        crate::runtime::ConnectionLimits {
            header_read_timeout: self.header_read_timeout,
            max_connections: self.max_connections,
            max_connections_per_peer: self.max_connections_per_peer,
            header_bytes,
            max_connection_age: self.max_connection_age,
        }
    }

    /// The limits that bound token verification.
    pub fn verification(&self) -> Limits {
        Limits {
            max_token_bytes: self.max_token_bytes,
            verified_cache_capacity: self.subject_cache_capacity,
            jwks_fetch_timeout: self.jwks_fetch_timeout,
            jwks_max_bytes: self.jwks_max_bytes,
            jwks_refetch_cooldown: self.jwks_refetch_cooldown,
        }
    }
}

/// The validated shim configuration (`agent-sts shim --config FILE`).
#[derive(Debug, Clone)]
pub struct ShimConfig {
    /// Where it came from, for messages.
    pub source: String,
    pub shim: ShimSection,
    pub secrets: SecretsConfig,
    pub vault: Option<VaultConfig>,
    pub audit: AuditConfig,
    pub limits: LimitsConfig,
    /// `[log] format`; `AGENT_STS_LOG_FORMAT` wins over it.
    pub log_format: LogFormat,
    /// `[telemetry]`: where spans are exported; `None` (no `otlp_endpoint`): off.
    pub telemetry: Option<TraceSettings>,
}

/// `[shim]`: the README's keys ("The shim"), plus the timeouts and size caps the README documents.
#[derive(Debug, Clone)]
pub struct ShimSection {
    pub listen: SocketAddr,
    /// The `aud` tokens presented here must carry; also the audience their action must
    /// have in the catalogue.
    pub audience: String,
    /// The URL agents address the shim at (behind load balancers): DPoP proofs name it
    /// (`htu` = this joined with the request path). Defaults to `audience`.
    pub public_url: String,
    /// The one upstream every call goes to: scheme, host, port and an optional base path.
    pub upstream: reqwest::Url,
    /// The STS: tokens must carry this `iss`.
    pub issuer: String,
    pub jwks_uri: reqwest::Url,
    pub scopes_dir: PathBuf,
    /// Upstream exchange, from connect to the response head, and for an answer read
    /// whole, to its last byte.
    pub upstream_timeout: Duration,
    /// For an answer relayed as a stream: the longest wait for the upstream's next
    /// bytes; the stream then ends (`idle_timeout` in its audit line).
    pub stream_idle_timeout: Duration,
    pub connect_timeout: Duration,
    /// Cap on a request body; larger answers 413 and nothing is forwarded.
    pub max_request_bytes: usize,
    /// Cap on an upstream response body; larger answers 502.
    pub max_response_bytes: usize,
    /// Cap on the request's header section (names, values and line overhead).
    pub max_header_bytes: usize,
    /// How often the catalogue is re-read.
    pub refresh_interval: Duration,
    /// Where `/healthz`, `/readyz` and `/metrics` are served, if anywhere: not on
    /// `listen`, whose every path belongs to the upstream.
    pub admin_listen: Option<SocketAddr>,
    /// How long the STS's keys are used before a refetch (its JWKS `max-age` wins when
    /// shorter): a key the STS stops publishing stops verifying here at the next
    /// successful fetch.
    pub jwks_refresh: Duration,
    /// How long the last good keys keep serving while the STS's JWKS cannot be fetched.
    pub jwks_max_stale: Duration,
    /// When set, DPoP proofs must carry a nonce keyed by this file's secret, which
    /// every replica of the shim shares (RFC 9449 §9).
    pub dpop_nonce_secret_file: Option<PathBuf>,
    /// How often the STS's deny list (the kill switch) is re-read.
    pub deny_refresh: Duration,
    /// How long the last good deny list serves while the feed cannot be read; after
    /// that every token is refused (503).
    pub deny_max_stale: Duration,
    /// Where the deny-list feed is read; default beside `jwks_uri`.
    pub deny_feed_uri: Option<String>,
    /// A tenant's shim: the tenant's `secrets_prefix`, under which the catalogue's
    /// credential paths resolve (README, "Running many tenants").
    pub secrets_prefix: Option<String>,
}

/// Upper bound on minted token lifetime: tokens live minutes, not hours.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(60 * 60);

/// Upper bound on `tokens.dpop_max_age`.
pub const MAX_DPOP_AGE: Duration = Duration::from_secs(5 * 60);

impl Config {
    /// Reads, overrides from the environment, and validates `path`. Relative paths in
    /// it resolve against the file's directory, as systemd units and Vault's own
    /// configuration files do, never against the working directory.
    pub fn load(path: &Path, env: &dyn Environment) -> Result<Config, ConfigError> {
        let (text, file) = read(path)?;
        let mut config = Self::from_toml(&text, &file, env)?;
        let base = base_dir(path);
        let at = |p: &mut PathBuf| resolve(&base, p);
        at(&mut config.server.scopes_dir);
        if let KeyStoreKind::File { dir } = &mut config.keys.store {
            at(dir);
        }
        if let KeyStoreKind::File { dir } = &mut config.deny.store {
            at(dir);
        }
        for tenant in &mut config.tenants {
            at(&mut tenant.scopes_dir);
            at(&mut tenant.audit_path);
            for store in [&mut tenant.keys, &mut tenant.deny] {
                if let KeyStoreKind::File { dir } = store {
                    at(dir);
                }
            }
        }
        for trust in &mut config.trusts {
            if let KeySource::File(path) = &mut trust.jwks {
                at(path);
            }
        }
        resolve_stores(
            &base,
            &mut config.secrets,
            config.vault.as_mut(),
            &mut config.audit,
        );
        Ok(config)
    }

    /// Parses `text` (named `file` in messages), applies the environment, validates.
    pub fn from_toml(text: &str, file: &str, env: &dyn Environment) -> Result<Config, ConfigError> {
        let mut raw: RawConfig = parse_raw(text, file, env, ENV_SECTIONS)?;
        let otel = otel_endpoint(&mut raw.telemetry, env);
        let mut config = validate(raw, file)
            .map_err(|e| blame_override(e, env))
            .map_err(|e| blame_otel(e, otel))?;
        if let Some(v) = &mut config.vault {
            v.env_token = env.var(VAULT_TOKEN).map(VaultToken::new);
        }
        Ok(config)
    }
}

impl ShimConfig {
    /// Reads, overrides from the environment (`AGENT_STS_SHIM_<KEY>` and the shared
    /// sections), and validates `path`; relative paths resolve against its directory.
    pub fn load(path: &Path, env: &dyn Environment) -> Result<ShimConfig, ConfigError> {
        let (text, file) = read(path)?;
        let mut config = Self::from_toml(&text, &file, env)?;
        let base = base_dir(path);
        let at = |p: &mut PathBuf| resolve(&base, p);
        at(&mut config.shim.scopes_dir);
        if let Some(f) = &mut config.shim.dpop_nonce_secret_file {
            at(f);
        }
        resolve_stores(
            &base,
            &mut config.secrets,
            config.vault.as_mut(),
            &mut config.audit,
        );
        Ok(config)
    }

    /// Parses `text` (named `file` in messages), applies the environment, validates.
    pub fn from_toml(
        text: &str,
        file: &str,
        env: &dyn Environment,
    ) -> Result<ShimConfig, ConfigError> {
        let mut raw: RawShimConfig = parse_raw(text, file, env, SHIM_ENV_SECTIONS)?;
        let otel = otel_endpoint(&mut raw.telemetry, env);
        let mut config = validate_shim(raw, file)
            .map_err(|e| blame_override(e, env))
            .map_err(|e| blame_otel(e, otel))?;
        if let Some(v) = &mut config.vault {
            v.env_token = env.var(VAULT_TOKEN).map(VaultToken::new);
        }
        Ok(config)
    }
}

/// The absolute directory of the configuration file at `path`.
fn base_dir(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    absolute.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// `path` joined to `base` when it is relative.
fn resolve(base: &Path, path: &mut PathBuf) {
    if path.is_relative() {
        *path = base.join(&*path);
    }
}

/// The paths the STS and the shim share, resolved against `base`: the secrets file,
/// Vault's credential files and the audit log.
fn resolve_stores(
    base: &Path,
    secrets: &mut SecretsConfig,
    vault: Option<&mut VaultConfig>,
    audit: &mut AuditConfig,
) {
    if let SecretsConfig::File { path } = secrets {
        resolve(base, path);
    }
    if let Some(v) = vault {
        v.auth.resolve(base);
    }
    resolve(base, &mut audit.path);
}

impl VaultAuth {
    /// Its credential files resolved against `base`.
    fn resolve(&mut self, base: &Path) {
        match self {
            VaultAuth::Token { token_file } => {
                if let Some(f) = token_file {
                    resolve(base, f);
                }
            }
            VaultAuth::AppRole {
                role_id_file,
                secret_id_file,
                ..
            } => {
                resolve(base, role_id_file);
                resolve(base, secret_id_file);
            }
            VaultAuth::Kubernetes { token_file, .. } | VaultAuth::Jwt { token_file, .. } => {
                resolve(base, token_file)
            }
        }
    }
}

/// The text of a configuration file and its name for messages.
fn read(path: &Path) -> Result<(String, String), ConfigError> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((text, file)),
        Err(source) => Err(ConfigError::Read { file, source }),
    }
}

/// The raw structs of `text`, with the environment overrides of `sections` applied.
/// The text is parsed once as is, so syntax and unknown-key errors carry line numbers.
fn parse_raw<R: serde::de::DeserializeOwned>(
    text: &str,
    file: &str,
    env: &dyn Environment,
    sections: &[&str],
) -> Result<R, ConfigError> {
    let raw: R = toml::from_str(text).map_err(|e| ConfigError::Parse {
        file: file.to_string(),
        message: e.to_string(),
    })?;
    let overrides = env.vars_with_prefix(ENV_PREFIX);
    if overrides.is_empty() {
        return Ok(raw);
    }
    apply_env(text, file, &overrides, sections)
}

/// Applies `AGENT_STS_<SECTION>_<KEY>` overrides for `sections` to the document and
/// re-reads it.
fn apply_env<R: serde::de::DeserializeOwned>(
    text: &str,
    file: &str,
    vars: &[(String, String)],
    sections: &[&str],
) -> Result<R, ConfigError> {
    let mut doc: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
        file: file.to_string(),
        message: e.to_string(),
    })?;
    let mut names = Vec::new();
    for (name, value) in vars {
        let rest = &name[ENV_PREFIX.len()..].to_ascii_lowercase();
        if NOT_OVERRIDES.contains(&rest.as_str()) {
            continue;
        }
        let Some((section, key)) = sections.iter().find_map(|s| {
            rest.strip_prefix(s)
                .and_then(|r| r.strip_prefix('_'))
                .map(|k| (*s, k))
        }) else {
            // A section of the other program (the STS's [server] for a shim sharing
            // its environment) is not this one's to read.
            let elsewhere = ENV_SECTIONS
                .iter()
                .chain(SHIM_ENV_SECTIONS)
                .any(|s| rest.strip_prefix(s).is_some_and(|r| r.starts_with('_')));
            if elsewhere {
                continue;
            }
            // As an unknown key in the file is: a typo is an error, not silence.
            return Err(ConfigError::Invalid {
                file: format!("environment variable {name}"),
                key: rest.clone(),
                message: format!(
                    "not a setting: AGENT_STS_<SECTION>_<KEY> overrides a key of [{}] (AGENT_STS_LOG and AGENT_STS_LOG_FORMAT set logging)",
                    sections.join("], [")
                ),
            });
        };
        let table = doc
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(table) = table.as_table_mut() else {
            return Err(ConfigError::Invalid {
                file: name.clone(),
                key: section.to_string(),
                message: "is not a table".into(),
            });
        };
        table.insert(key.to_string(), env_value(value));
        names.push(name.clone());
    }
    let merged = toml::to_string(&doc).map_err(|e| ConfigError::Parse {
        file: file.to_string(),
        message: e.to_string(),
    })?;
    toml::from_str(&merged).map_err(|e| ConfigError::Parse {
        file: format!("{file} with environment overrides {}", names.join(", ")),
        message: e.message().to_string(),
    })
}

/// The OpenTelemetry SDKs' variable for the collector's base URL: the endpoint when
/// neither the file nor `AGENT_STS_TELEMETRY_OTLP_ENDPOINT` sets one.
pub const OTEL_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Fills `telemetry.otlp_endpoint` from [`OTEL_ENDPOINT`] when it is unset (an empty
/// variable counts as unset); true when it did.
fn otel_endpoint(raw: &mut RawTelemetry, env: &dyn Environment) -> bool {
    if raw.otlp_endpoint.is_some() {
        return false;
    }
    raw.otlp_endpoint = env.var(OTEL_ENDPOINT).filter(|v| !v.trim().is_empty());
    raw.otlp_endpoint.is_some()
}

/// An error about `telemetry.otlp_endpoint` taken from [`OTEL_ENDPOINT`] names it.
fn blame_otel(error: ConfigError, from_otel: bool) -> ConfigError {
    match error {
        ConfigError::Invalid { file, key, message }
            if from_otel && key == "telemetry.otlp_endpoint" =>
        {
            ConfigError::Invalid {
                file: format!("environment variable {OTEL_ENDPOINT} (for {file})"),
                key,
                message,
            }
        }
        other => other,
    }
}

/// An error about a key an environment variable set names that variable, not the file
/// whose value it replaced.
fn blame_override(error: ConfigError, env: &dyn Environment) -> ConfigError {
    match error {
        ConfigError::Invalid { file, key, message } => {
            let var = format!("{ENV_PREFIX}{}", key.replace('.', "_").to_ascii_uppercase());
            let overridden = env
                .vars_with_prefix(ENV_PREFIX)
                .iter()
                .any(|(n, _)| *n == var);
            ConfigError::Invalid {
                file: if overridden {
                    format!("environment variable {var} (overriding {file})")
                } else {
                    file
                },
                key,
                message,
            }
        }
        other => other,
    }
}

/// An override's value: a TOML scalar or array when it parses as one, else a string.
fn env_value(value: &str) -> toml::Value {
    let probe = format!("v = {value}");
    match toml::from_str::<toml::Table>(&probe) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(value.into())),
        Err(_) => toml::Value::String(value.to_string()),
    }
}

struct Check<'a> {
    file: &'a str,
}

impl Check<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_string(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// `value` parsed, or `default` when absent.
    fn duration_or(
        &self,
        key: &str,
        value: Option<&str>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match value {
            Some(text) => self.duration(key, Some(text), ""),
            None => Ok(default),
        }
    }

    fn duration(
        &self,
        key: &str,
        value: Option<&str>,
        default: &str,
    ) -> Result<Duration, ConfigError> {
        let text = value.unwrap_or(default);
        let d = humantime::parse_duration(text).map_err(|_| {
            self.err(
                key,
                format!("not a duration: {text:?} (use e.g. \"30s\", \"5m\")"),
            )
        })?;
        if d.is_zero() {
            return Err(self.err(key, "must be greater than zero"));
        }
        Ok(d)
    }

    fn positive(
        &self,
        key: &str,
        value: Option<i64>,
        default: i64,
        max: i64,
    ) -> Result<i64, ConfigError> {
        let v = value.unwrap_or(default);
        if v <= 0 || v > max {
            return Err(self.err(key, format!("must be between 1 and {max}")));
        }
        Ok(v)
    }
}

fn validate(raw: RawConfig, file: &str) -> Result<Config, ConfigError> {
    let c = Check { file };

    // [server]
    let listen_text = raw.server.listen.as_deref().unwrap_or("127.0.0.1:8080");
    let listen: SocketAddr = listen_text
        .parse()
        .map_err(|_| c.err("server.listen", "not an address:port"))?;
    let issuer = raw.server.issuer;
    if issuer.is_empty() || issuer.chars().any(char::is_whitespace) {
        return Err(c.err("server.issuer", "must be a non-empty URL without spaces"));
    }
    // Verifiers fetch `{issuer}/.well-known/jwks.json` and DPoP proofs name
    // `{issuer}/token`: an absolute https URL (http only on loopback), nothing after
    // the path.
    match parse_jwks_uri(&issuer) {
        Ok(url) if url.query().is_none() && url.fragment().is_none() => {}
        Ok(_) => return Err(c.err("server.issuer", "must not have a query or fragment")),
        Err(problem) => return Err(c.err("server.issuer", problem)),
    }
    let scopes_dir = PathBuf::from(raw.server.scopes_dir.as_deref().unwrap_or("scopes"));

    // [tokens]
    let default_ttl = c.duration(
        "tokens.default_ttl",
        raw.tokens.default_ttl.as_deref(),
        "5m",
    )?;
    let max_ttl = c.duration("tokens.max_ttl", raw.tokens.max_ttl.as_deref(), "15m")?;
    if max_ttl > MAX_TOKEN_TTL {
        return Err(c.err(
            "tokens.max_ttl",
            "must be at most 1h: minted tokens live minutes",
        ));
    }
    if default_ttl > max_ttl {
        return Err(c.err("tokens.default_ttl", "must not exceed tokens.max_ttl"));
    }
    let algorithm = match raw.tokens.algorithm.as_deref().unwrap_or("ES256") {
        "ES256" => SigningAlgorithm::ES256,
        "EdDSA" => SigningAlgorithm::EdDSA,
        _ => return Err(c.err("tokens.algorithm", "must be \"ES256\" or \"EdDSA\"")),
    };
    let sender_constraint = match raw.tokens.sender_constraint.as_deref() {
        None => SenderConstraint::None,
        Some(name) => SenderConstraint::from_name(name)
            .ok_or_else(|| c.err("tokens.sender_constraint", "must be \"none\" or \"dpop\""))?,
    };
    let dpop_max_age = c.duration(
        "tokens.dpop_max_age",
        raw.tokens.dpop_max_age.as_deref(),
        "60s",
    )?;
    if dpop_max_age < Duration::from_secs(1) || dpop_max_age > MAX_DPOP_AGE {
        return Err(c.err(
            "tokens.dpop_max_age",
            "must be between 1s and 5m: a proof is made for one request",
        ));
    }

    // [keys]
    let key_store = match raw.keys.store.as_deref().unwrap_or("file") {
        "file" => KeyStoreKind::File {
            dir: PathBuf::from(raw.keys.dir.as_deref().unwrap_or("keys")),
        },
        "vault" => KeyStoreKind::Vault {
            path: raw
                .keys
                .vault_path
                .clone()
                .unwrap_or_else(|| "agent-sts/signing-keys".into()),
        },
        "transit" => KeyStoreKind::Transit {
            mount: vault_name(
                &c,
                "keys.transit_mount",
                raw.keys.transit_mount.as_deref().unwrap_or("transit"),
                true,
            )?,
            key: vault_name(
                &c,
                "keys.transit_key",
                raw.keys.transit_key.as_deref().unwrap_or("agent-sts"),
                false,
            )?,
        },
        _ => {
            return Err(c.err("keys.store", "must be \"file\", \"vault\" or \"transit\""));
        }
    };
    if !matches!(key_store, KeyStoreKind::Transit { .. })
        && (raw.keys.transit_mount.is_some() || raw.keys.transit_key.is_some())
    {
        return Err(c.err(
            if raw.keys.transit_mount.is_some() {
                "keys.transit_mount"
            } else {
                "keys.transit_key"
            },
            "only with keys.store = \"transit\"",
        ));
    }
    // DPoP nonces are keyed by secrets derived from the signing keys' private
    // material; a Transit key's private part never leaves Vault, and a secret derived
    // from its public key would let anyone compute the nonces.
    if matches!(key_store, KeyStoreKind::Transit { .. }) && raw.tokens.dpop_nonces == Some(true) {
        return Err(c.err(
            "tokens.dpop_nonces",
            "is not available with keys.store = \"transit\": nonces are keyed by private key material, which Transit never hands out",
        ));
    }
    let refresh_interval = c.duration(
        "keys.refresh_interval",
        raw.keys.refresh_interval.as_deref(),
        "30s",
    )?;
    let publish_lead = c.duration("keys.publish_lead", raw.keys.publish_lead.as_deref(), "10m")?;
    let jwks_max_age = c.duration("keys.jwks_max_age", raw.keys.jwks_max_age.as_deref(), "5m")?;
    // A new key reaches every replica's JWKS within `refresh_interval` of being
    // written, and a verifier may hold a JWKS fetched just before that for
    // `jwks_max_age`: both must fit in the lead, or a kid could sign before a verifier
    // could know it.
    if jwks_max_age + refresh_interval > publish_lead {
        return Err(c.err(
            "keys.publish_lead",
            "must be at least keys.jwks_max_age + keys.refresh_interval (every verifier must see a key before it signs)",
        ));
    }

    // [deny]
    let deny = DenyConfig {
        store: match &key_store {
            KeyStoreKind::File { dir } => KeyStoreKind::File { dir: dir.clone() },
            KeyStoreKind::Vault { path } => KeyStoreKind::Vault {
                path: raw
                    .deny
                    .vault_path
                    .clone()
                    .unwrap_or_else(|| deny_list_beside(path)),
            },
            // Transit signs; the deny list stays a KV entry beside where a KV keyring
            // would be.
            KeyStoreKind::Transit { .. } => KeyStoreKind::Vault {
                path: raw
                    .deny
                    .vault_path
                    .clone()
                    .unwrap_or_else(|| "agent-sts/deny-list".into()),
            },
        },
        refresh_interval: c.duration(
            "deny.refresh_interval",
            raw.deny.refresh_interval.as_deref(),
            "2s",
        )?,
        max_stale: c.duration("deny.max_stale", raw.deny.max_stale.as_deref(), "1m")?,
        feed_max_age: c.duration("deny.feed_max_age", raw.deny.feed_max_age.as_deref(), "1m")?,
    };
    if deny.max_stale < deny.refresh_interval {
        return Err(c.err("deny.max_stale", "must be at least deny.refresh_interval"));
    }
    if let (KeyStoreKind::File { .. }, Some(_)) = (&deny.store, &raw.deny.vault_path) {
        return Err(c.err("deny.vault_path", "only with keys.store = \"vault\""));
    }

    // [[introspection]]
    let mut introspection = Vec::with_capacity(raw.introspection.len());
    for (i, grant) in raw.introspection.into_iter().enumerate() {
        if grant.callers.is_empty() {
            return Err(c.err(
                &format!("introspection[{i}].callers"),
                "must name at least one TRUST:PATTERN",
            ));
        }
        if grant.audiences.is_empty() || grant.audiences.iter().any(String::is_empty) {
            return Err(c.err(
                &format!("introspection[{i}].audiences"),
                "must name at least one audience",
            ));
        }
        introspection.push(IntrospectionGrant {
            callers: grant.callers,
            audiences: grant.audiences,
        });
    }

    let secrets = validate_secrets(&c, &raw.secrets)?;

    // [vault]
    let vault = raw.vault.map(|v| validate_vault(&c, v)).transpose()?;
    let needs_vault = matches!(
        key_store,
        KeyStoreKind::Vault { .. } | KeyStoreKind::Transit { .. }
    ) || matches!(secrets, SecretsConfig::Vault);
    if needs_vault && vault.is_none() {
        return Err(c.err(
            "vault",
            "a [vault] section is required when a store is \"vault\"",
        ));
    }

    // [[trust]]
    let mut trusts = Vec::with_capacity(raw.trust.len());
    let mut names = HashSet::new();
    let mut issuers = HashSet::new();
    let mut spiffe_domains = HashSet::new();
    for (i, t) in raw.trust.into_iter().enumerate() {
        let key = |k: &str| format!("trust[{i}].{k}");
        if t.name.is_empty()
            || !t
                .name
                .chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-' || ch == '_')
        {
            return Err(c.err(&key("name"), "must be non-empty [a-z0-9_-] (no ':')"));
        }
        if !names.insert(t.name.clone()) {
            return Err(c.err(&key("name"), format!("duplicate trust name {:?}", t.name)));
        }
        if t.issuer.is_empty() {
            return Err(c.err(&key("issuer"), "must not be empty"));
        }
        if t.issuer == issuer {
            return Err(c.err(
                &key("issuer"),
                "must differ from server.issuer: this STS's own tokens are never subject tokens",
            ));
        }
        if !issuers.insert(t.issuer.clone()) {
            return Err(c.err(&key("issuer"), "another trust has the same issuer"));
        }
        let jwks = match (t.jwks_uri, t.jwks_file) {
            (Some(uri), None) => KeySource::Uri(validate_jwks_uri(&c, &key("jwks_uri"), &uri)?),
            (None, Some(path)) => KeySource::File(PathBuf::from(path)),
            _ => {
                return Err(c.err(
                    &key("jwks_uri"),
                    "set exactly one of jwks_uri and jwks_file",
                ));
            }
        };
        if t.algorithms.is_empty() {
            return Err(c.err(&key("algorithms"), "must list at least one algorithm"));
        }
        let mut algorithms = Vec::new();
        for a in &t.algorithms {
            match Algorithm::parse(a) {
                Some(alg) if !algorithms.contains(&alg) => algorithms.push(alg),
                Some(_) => {}
                None => {
                    return Err(c.err(
                        &key("algorithms"),
                        format!(
                            "unsupported algorithm {a:?} (allowed: ES256 ES384 RS256 RS384 RS512 PS256 PS384 PS512 EdDSA; never HS* or none)"
                        ),
                    ));
                }
            }
        }
        for d in &t.spiffe_trust_domains {
            // The SPIFFE ID specification's trust domain: lowercase letters, digits,
            // '.', '-' and '_'.
            let valid = !d.is_empty()
                && d.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
                });
            if !valid {
                return Err(c.err(
                    &key("spiffe_trust_domains"),
                    format!("not a trust domain (lowercase [a-z0-9.-_]): {d:?}"),
                ));
            }
            // One issuer speaks for a trust domain: two would let either mint any
            // identity of the other's workloads.
            if !spiffe_domains.insert(d.clone()) {
                return Err(c.err(
                    &key("spiffe_trust_domains"),
                    format!("trust domain {d:?} is already claimed by another trust"),
                ));
            }
        }
        let max_token_lifetime = c.duration(
            &key("max_token_lifetime"),
            t.max_token_lifetime.as_deref(),
            "24h",
        )?;
        let leeway = humantime::parse_duration(t.leeway.as_deref().unwrap_or("30s"))
            .map_err(|_| c.err(&key("leeway"), "not a duration"))?;
        if leeway > Duration::from_secs(300) {
            return Err(c.err(&key("leeway"), "must be at most 5m"));
        }
        let jwks_refresh = c.duration(&key("jwks_refresh"), t.jwks_refresh.as_deref(), "5m")?;
        let jwks_max_stale =
            c.duration(&key("jwks_max_stale"), t.jwks_max_stale.as_deref(), "1h")?;
        trusts.push(TrustConfig {
            name: t.name,
            issuer: t.issuer,
            jwks,
            algorithms,
            spiffe_trust_domains: t.spiffe_trust_domains,
            max_token_lifetime,
            leeway,
            jwks_refresh,
            jwks_max_stale,
            single_use_assertions: t.single_use_assertions.unwrap_or(false),
        });
    }

    let audit = validate_audit(&c, &raw.audit)?;
    let trust_names: Vec<String> = trusts.iter().map(|t| t.name.clone()).collect();
    let tenants = tenant::validate_tenants(
        &c,
        raw.tenant,
        &key_store,
        &deny.store,
        &trust_names,
        &audit.path,
    )?;
    let limits = validate_limits(&c, raw.limits)?;
    let log_format = validate_log(&c, &raw.log)?;
    let telemetry = validate_telemetry(&c, raw.telemetry, traces::STS_SERVICE)?;
    let admin_listen = raw
        .server
        .admin_listen
        .as_deref()
        .map(|a| a.parse::<SocketAddr>())
        .transpose()
        .map_err(|_| c.err("server.admin_listen", "not an address:port"))?;
    if admin_listen.is_some_and(|a| a == listen && a.port() != 0) {
        return Err(c.err(
            "server.admin_listen",
            "must differ from server.listen: it takes /metrics off the public port",
        ));
    }

    Ok(Config {
        source: file.to_string(),
        server: ServerConfig {
            listen,
            issuer,
            scopes_dir,
            admin_listen,
        },
        tokens: TokensConfig {
            default_ttl,
            max_ttl,
            algorithm,
            sender_constraint,
            dpop_nonces: raw.tokens.dpop_nonces.unwrap_or(false),
            max_delegation_depth: c.positive(
                "tokens.max_delegation_depth",
                raw.tokens.max_delegation_depth,
                3,
                agent_sts_verifier::access_token::MAX_ACTOR_DEPTH as i64,
            )? as usize,
            dpop_max_age,
        },
        keys: KeysConfig {
            store: key_store,
            refresh_interval,
            publish_lead,
            jwks_max_age,
        },
        deny,
        introspection,
        secrets,
        vault,
        trusts,
        audit,
        limits,
        log_format,
        tenants,
        tenant: None,
        secrets_prefix: None,
        telemetry,
    })
}

/// The KV path of the deny list beside a KV keyring at `keys_path`: its sibling
/// `deny-list` (`agent-sts/signing-keys` → `agent-sts/deny-list`).
fn deny_list_beside(keys_path: &str) -> String {
    match keys_path.rsplit_once('/') {
        Some((parent, _)) => format!("{parent}/deny-list"),
        None => "deny-list".into(),
    }
}

fn validate_shim(raw: RawShimConfig, file: &str) -> Result<ShimConfig, ConfigError> {
    let c = Check { file };
    let r = raw.shim;
    let listen: SocketAddr = r
        .listen
        .as_deref()
        .unwrap_or("127.0.0.1:9090")
        .parse()
        .map_err(|_| c.err("shim.listen", "not an address:port"))?;
    for (key, value) in [("shim.audience", &r.audience), ("shim.issuer", &r.issuer)] {
        if value.is_empty() || value.chars().any(char::is_whitespace) {
            return Err(c.err(key, "must be a non-empty URL without spaces"));
        }
    }
    let upstream =
        parse_upstream(&r.upstream).map_err(|problem| c.err("shim.upstream", problem))?;
    let jwks_uri = validate_jwks_uri(&c, "shim.jwks_uri", &r.jwks_uri)?;
    let secrets = validate_secrets(&c, &raw.secrets)?;
    let vault = raw.vault.map(|v| validate_vault(&c, v)).transpose()?;
    if matches!(secrets, SecretsConfig::Vault) && vault.is_none() {
        return Err(c.err(
            "vault",
            "a [vault] section is required when secrets.store is \"vault\"",
        ));
    }
    let public_url = r.public_url.unwrap_or_else(|| r.audience.clone());
    if agent_sts_verifier::dpop::normalize_htu(&public_url).is_none()
        || public_url.contains(['?', '#'])
    {
        return Err(c.err(
            "shim.public_url",
            "must be an absolute http(s) URL without credentials, query or fragment (it defaults to shim.audience)",
        ));
    }
    let shim = ShimSection {
        listen,
        public_url: public_url.trim_end_matches('/').to_string(),
        audience: r.audience,
        upstream,
        issuer: r.issuer,
        jwks_uri,
        scopes_dir: PathBuf::from(r.scopes_dir.as_deref().unwrap_or("scopes")),
        upstream_timeout: c.duration(
            "shim.upstream_timeout",
            r.upstream_timeout.as_deref(),
            "30s",
        )?,
        stream_idle_timeout: c.duration(
            "shim.stream_idle_timeout",
            r.stream_idle_timeout.as_deref(),
            "60s",
        )?,
        connect_timeout: c.duration("shim.connect_timeout", r.connect_timeout.as_deref(), "5s")?,
        max_request_bytes: c.positive(
            "shim.max_request_bytes",
            r.max_request_bytes,
            1 << 20,
            64 << 20,
        )? as usize,
        max_response_bytes: c.positive(
            "shim.max_response_bytes",
            r.max_response_bytes,
            4 << 20,
            256 << 20,
        )? as usize,
        max_header_bytes: c.positive(
            "shim.max_header_bytes",
            r.max_header_bytes,
            16 * 1024,
            256 * 1024,
        )? as usize,
        refresh_interval: c.duration(
            "shim.refresh_interval",
            r.refresh_interval.as_deref(),
            "30s",
        )?,
        admin_listen: r
            .admin_listen
            .as_deref()
            .map(|a| a.parse())
            .transpose()
            .map_err(|_| c.err("shim.admin_listen", "not an address:port"))?,
        jwks_refresh: c.duration("shim.jwks_refresh", r.jwks_refresh.as_deref(), "5m")?,
        jwks_max_stale: c.duration("shim.jwks_max_stale", r.jwks_max_stale.as_deref(), "1h")?,
        dpop_nonce_secret_file: r.dpop_nonce_secret_file.map(PathBuf::from),
        deny_refresh: c.duration("shim.deny_refresh", r.deny_refresh.as_deref(), "2s")?,
        deny_max_stale: c.duration("shim.deny_max_stale", r.deny_max_stale.as_deref(), "1m")?,
        deny_feed_uri: r.deny_feed_uri,
        secrets_prefix: r
            .secrets_prefix
            .as_deref()
            .map(|p| vault_name(&c, "shim.secrets_prefix", p, true))
            .transpose()?,
    };
    Ok(ShimConfig {
        source: file.to_string(),
        shim,
        secrets,
        vault,
        audit: validate_audit(&c, &raw.audit)?,
        limits: validate_limits(&c, raw.limits)?,
        log_format: validate_log(&c, &raw.log)?,
        telemetry: validate_telemetry(&c, raw.telemetry, traces::SHIM_SERVICE)?,
    })
}

/// The rule for the shim's upstream: https (plain http only for a loopback host, where
/// the credential never crosses a network), no credentials, query or fragment; a base
/// path is allowed and every forwarded path is appended to it.
pub fn parse_upstream(uri: &str) -> Result<reqwest::Url, &'static str> {
    let url = parse_jwks_uri(uri)?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not carry a query or fragment");
    }
    if url.host().is_none() {
        return Err("must name a host");
    }
    Ok(url)
}

/// `[secrets]`, shared by the STS and the shim.
/// `[telemetry]`, shared by the STS and the shim (`service` is the program's default
/// `service.name`). Every key is checked even without `otlp_endpoint`, so a typo in a
/// section about to be switched on is caught now.
fn validate_telemetry(
    c: &Check,
    raw: RawTelemetry,
    service: &str,
) -> Result<Option<TraceSettings>, ConfigError> {
    let service_name = raw.service_name.unwrap_or_else(|| service.to_string());
    if service_name.is_empty()
        || service_name.len() > 128
        || service_name.chars().any(|ch| ch.is_control())
    {
        return Err(c.err(
            "telemetry.service_name",
            "must be 1 to 128 characters, none of them control characters",
        ));
    }
    let sample_ratio = raw.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        return Err(c.err("telemetry.sample_ratio", "must be a number from 0.0 to 1.0"));
    }
    let max_queue = c.positive(
        "telemetry.max_queue",
        raw.max_queue,
        traces::DEFAULT_MAX_QUEUE as i64,
        1 << 20,
    )? as usize;
    let export_timeout = c.duration_or(
        "telemetry.export_timeout",
        raw.export_timeout.as_deref(),
        traces::DEFAULT_EXPORT_TIMEOUT,
    )?;
    let export_interval = c.duration_or(
        "telemetry.export_interval",
        raw.export_interval.as_deref(),
        traces::DEFAULT_EXPORT_INTERVAL,
    )?;
    let Some(endpoint) = raw.otlp_endpoint else {
        return Ok(None);
    };
    let endpoint = url::Url::parse(&endpoint)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .filter(|u| u.username().is_empty() && u.password().is_none())
        .filter(|u| u.query().is_none() && u.fragment().is_none())
        .ok_or_else(|| {
            c.err(
                "telemetry.otlp_endpoint",
                "must be the collector's http(s) base URL (e.g. \"http://127.0.0.1:4318\"), without credentials, query or fragment",
            )
        })?;
    Ok(Some(TraceSettings {
        endpoint,
        service_name,
        sample_ratio,
        max_queue,
        export_timeout,
        export_interval,
    }))
}

fn validate_log(c: &Check, raw: &RawLog) -> Result<LogFormat, ConfigError> {
    match raw.format.as_deref() {
        None => Ok(LogFormat::Text),
        Some(name) => LogFormat::from_name(name)
            .ok_or_else(|| c.err("log.format", "must be \"text\" or \"json\"")),
    }
}

fn validate_secrets(c: &Check, raw: &RawSecrets) -> Result<SecretsConfig, ConfigError> {
    match raw.store.as_deref().unwrap_or("file") {
        "file" => Ok(SecretsConfig::File {
            path: PathBuf::from(raw.file.as_deref().unwrap_or("keys/dev-secrets.toml")),
        }),
        "vault" => Ok(SecretsConfig::Vault),
        _ => Err(c.err("secrets.store", "must be \"file\" or \"vault\"")),
    }
}

/// `[audit]`, shared by the STS and the shim.
fn validate_audit(c: &Check, raw: &RawAudit) -> Result<AuditConfig, ConfigError> {
    Ok(AuditConfig {
        path: PathBuf::from(raw.path.as_deref().unwrap_or("audit.log")),
        summary_interval: c.duration(
            "audit.summary_interval",
            raw.summary_interval.as_deref(),
            "10s",
        )?,
        max_file_bytes: match raw.max_file_bytes {
            None | Some(0) => 0,
            Some(n) if (1 << 16..=1 << 40).contains(&n) => n as u64,
            Some(_) => {
                return Err(c.err(
                    "audit.max_file_bytes",
                    "must be 0 (no rotation) or between 64 KiB and 1 TiB",
                ));
            }
        },
    })
}

/// `[limits]`, shared by the STS and the shim.
fn validate_limits(c: &Check, l: RawLimits) -> Result<LimitsConfig, ConfigError> {
    let d = LimitsConfig::default();
    Ok(LimitsConfig {
        max_body_bytes: c.positive(
            "limits.max_body_bytes",
            l.max_body_bytes,
            d.max_body_bytes as i64,
            1 << 20,
        )? as usize,
        max_token_bytes: c.positive(
            "limits.max_token_bytes",
            l.max_token_bytes,
            d.max_token_bytes as i64,
            64 * 1024,
        )? as usize,
        request_timeout: c.duration_or(
            "limits.request_timeout",
            l.request_timeout.as_deref(),
            d.request_timeout,
        )?,
        header_read_timeout: c.duration_or(
            "limits.header_read_timeout",
            l.header_read_timeout.as_deref(),
            d.header_read_timeout,
        )?,
        max_connection_age: c.duration_or(
            "limits.max_connection_age",
            l.max_connection_age.as_deref(),
            d.max_connection_age,
        )?,
        max_connections: c.positive(
            "limits.max_connections",
            l.max_connections,
            d.max_connections as i64,
            1 << 20,
        )? as usize,
        max_connections_per_peer: c.positive(
            "limits.max_connections_per_peer",
            l.max_connections_per_peer,
            d.max_connections_per_peer as i64,
            1 << 20,
        )? as usize,
        max_concurrency: c.positive(
            "limits.max_concurrency",
            l.max_concurrency,
            d.max_concurrency as i64,
            1 << 20,
        )? as usize,
        rate_per_second: c.positive(
            "limits.rate_per_second",
            l.rate_per_second,
            d.rate_per_second.into(),
            1_000_000,
        )? as u32,
        rate_burst: c.positive(
            "limits.rate_burst",
            l.rate_burst,
            d.rate_burst.into(),
            1_000_000,
        )? as u32,
        subject_cache_capacity: c.positive(
            "limits.subject_cache_capacity",
            l.subject_cache_capacity,
            d.subject_cache_capacity as i64,
            10_000_000,
        )? as u64,
        jwks_fetch_timeout: c.duration_or(
            "limits.jwks_fetch_timeout",
            l.jwks_fetch_timeout.as_deref(),
            d.jwks_fetch_timeout,
        )?,
        jwks_max_bytes: c.positive(
            "limits.jwks_max_bytes",
            l.jwks_max_bytes,
            d.jwks_max_bytes as i64,
            4 << 20,
        )? as usize,
        jwks_refetch_cooldown: c.duration_or(
            "limits.jwks_refetch_cooldown",
            l.jwks_refetch_cooldown.as_deref(),
            d.jwks_refetch_cooldown,
        )?,
    })
}

fn validate_jwks_uri(c: &Check, key: &str, uri: &str) -> Result<reqwest::Url, ConfigError> {
    parse_jwks_uri(uri).map_err(|problem| c.err(key, problem))
}

/// A Vault mount path or Transit key name: `[A-Za-z0-9_.-]` (and `/` between the
/// segments of a mount path), so it can only ever name the one path it is meant to.
fn vault_name(c: &Check, key: &str, value: &str, slashes: bool) -> Result<String, ConfigError> {
    let plain = |ch: char| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.');
    let ok = !value.is_empty()
        && value
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != ".." && seg.chars().all(plain))
        && (slashes || !value.contains('/'));
    if ok {
        Ok(value.to_string())
    } else {
        Err(c.err(
            key,
            if slashes {
                "must be a Vault mount path: [A-Za-z0-9_.-] segments separated by /"
            } else {
                "must be a name of [A-Za-z0-9_.-]"
            },
        ))
    }
}

fn validate_vault(c: &Check, v: RawVault) -> Result<VaultConfig, ConfigError> {
    let address = v.address;
    // The Vault token, the signing keys and the credentials cross this connection:
    // plain http only to a loopback host, as for JWKS URLs.
    match reqwest::Url::parse(&address) {
        Ok(u) if u.scheme() == "http" && parse_jwks_uri(&address).is_err() => {
            return Err(c.err(
                "vault.address",
                "must be https (plain http only to a loopback host): the Vault token, keys and credentials would cross the network in clear",
            ));
        }
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
        _ => return Err(c.err("vault.address", "must be an http(s) URL")),
    }
    let kv_version = match v.kv_version.unwrap_or(2) {
        1 => 1,
        2 => 2,
        _ => return Err(c.err("vault.kv_version", "must be 1 or 2")),
    };
    let need = |key: &str, value: Option<String>| {
        value.ok_or_else(|| c.err(key, "is required for this vault.auth"))
    };
    let auth =
        match v.auth.as_deref().unwrap_or("token") {
            "token" => VaultAuth::Token {
                token_file: v.token_file.map(PathBuf::from),
            },
            "approle" => VaultAuth::AppRole {
                mount: v.approle_mount.unwrap_or_else(|| "approle".into()),
                role_id_file: PathBuf::from(need("vault.role_id_file", v.role_id_file)?),
                secret_id_file: PathBuf::from(need("vault.secret_id_file", v.secret_id_file)?),
            },
            "kubernetes" => VaultAuth::Kubernetes {
                mount: v.kubernetes_mount.unwrap_or_else(|| "kubernetes".into()),
                role: need("vault.kubernetes_role", v.kubernetes_role)?,
                token_file: PathBuf::from(v.kubernetes_token_file.unwrap_or_else(|| {
                    "/var/run/secrets/kubernetes.io/serviceaccount/token".into()
                })),
            },
            "jwt" => VaultAuth::Jwt {
                mount: vault_name(
                    c,
                    "vault.jwt_mount",
                    v.jwt_mount.as_deref().unwrap_or("jwt"),
                    true,
                )?,
                role: need("vault.jwt_role", v.jwt_role)?,
                token_file: PathBuf::from(need("vault.jwt_token_file", v.jwt_token_file)?),
            },
            _ => {
                return Err(c.err(
                    "vault.auth",
                    "must be \"token\", \"approle\", \"kubernetes\" or \"jwt\"",
                ));
            }
        };
    Ok(VaultConfig {
        address,
        kv_mount: v.kv_mount.unwrap_or_else(|| "secret".into()),
        kv_version,
        auth,
        timeout: c.duration("vault.timeout", v.timeout.as_deref(), "2s")?,
        max_stale: c.duration("vault.max_stale", v.max_stale.as_deref(), "60s")?,
        env_token: None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const MINIMAL: &str = r#"
[server]
issuer = "https://sts.example.org"

[[trust]]
name = "k8s-prod"
issuer = "https://kubernetes.default.svc"
jwks_uri = "https://kubernetes.default.svc/openid/v1/jwks"
algorithms = ["ES256", "RS256"]
"#;

    fn no_env() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    fn err(text: &str) -> String {
        Config::from_toml(text, "sts.toml", &no_env())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn telemetry_is_off_without_an_endpoint_and_every_key_is_checked() {
        let c = Config::from_toml(MINIMAL, "sts.toml", &no_env()).unwrap();
        assert_eq!(c.telemetry, None);
        // Keys without an endpoint: checked, still off.
        let c = Config::from_toml(
            &format!("{MINIMAL}\n[telemetry]\nsample_ratio = 0.5\n"),
            "sts.toml",
            &no_env(),
        )
        .unwrap();
        assert_eq!(c.telemetry, None);

        let on = format!("{MINIMAL}\n[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\n");
        let t = Config::from_toml(&on, "sts.toml", &no_env())
            .unwrap()
            .telemetry
            .unwrap();
        assert_eq!(t.endpoint.as_str(), "http://127.0.0.1:4318/");
        assert_eq!(t.service_name, "agent-sts");
        assert_eq!(t.sample_ratio, 1.0);
        assert_eq!(t.max_queue, 2048);
        assert_eq!(t.export_timeout, Duration::from_secs(10));
        assert_eq!(t.export_interval, Duration::from_secs(5));

        // From the environment, an integer ratio included.
        let env = BTreeMap::from([
            (
                "AGENT_STS_TELEMETRY_OTLP_ENDPOINT".to_string(),
                "https://otel.example:4318/prefix".to_string(),
            ),
            (
                "AGENT_STS_TELEMETRY_SAMPLE_RATIO".to_string(),
                "0".to_string(),
            ),
            (
                "AGENT_STS_TELEMETRY_MAX_QUEUE".to_string(),
                "16".to_string(),
            ),
        ]);
        let t = Config::from_toml(MINIMAL, "sts.toml", &env)
            .unwrap()
            .telemetry
            .unwrap();
        assert_eq!(t.endpoint.as_str(), "https://otel.example:4318/prefix");
        assert_eq!((t.sample_ratio, t.max_queue), (0.0, 16));

        for (key, value) in [
            ("otlp_endpoint", "\"collector:4318\""),
            ("otlp_endpoint", "\"ftp://collector:4318\""),
            ("otlp_endpoint", "\"http://user:pw@collector:4318\""),
            ("otlp_endpoint", "\"http://collector:4318/?x=1\""),
            ("sample_ratio", "1.5"),
            ("sample_ratio", "-0.1"),
            ("max_queue", "0"),
            ("export_timeout", "\"soon\""),
            ("export_interval", "\"0s\""),
            ("service_name", "\"\""),
        ] {
            let e = err(&format!("{MINIMAL}\n[telemetry]\n{key} = {value}\n"));
            assert!(e.starts_with(&format!("sts.toml: telemetry.{key}:")), "{e}");
        }
        assert!(err(&format!("{MINIMAL}\n[telemetry]\nendpoint = \"x\"\n")).contains("endpoint"));
        let e = Config::from_toml(
            MINIMAL,
            "sts.toml",
            &BTreeMap::from([(
                "AGENT_STS_TELEMETRY_SAMPLE_RATIO".to_string(),
                "2".to_string(),
            )]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("environment variable AGENT_STS_TELEMETRY_SAMPLE_RATIO"),
            "{e}"
        );
    }

    #[test]
    fn the_otel_endpoint_variable_turns_traces_on_unless_the_file_says_where() {
        let otel = |v: &str| BTreeMap::from([(OTEL_ENDPOINT.to_string(), v.to_string())]);
        let t = Config::from_toml(MINIMAL, "sts.toml", &otel("http://collector:4318"))
            .unwrap()
            .telemetry
            .unwrap();
        assert_eq!(t.endpoint.as_str(), "http://collector:4318/");
        let shim = ShimConfig::from_toml(SHIM, "shim.toml", &otel("http://collector:4318"))
            .unwrap()
            .telemetry
            .unwrap();
        assert_eq!(shim.service_name, "agent-sts-shim");
        // Empty: unset.
        let c = Config::from_toml(MINIMAL, "sts.toml", &otel(" ")).unwrap();
        assert_eq!(c.telemetry, None);
        // The file (or AGENT_STS_TELEMETRY_OTLP_ENDPOINT) wins.
        let file = format!("{MINIMAL}\n[telemetry]\notlp_endpoint = \"http://mine:4318\"\n");
        let t = Config::from_toml(&file, "sts.toml", &otel("not a url"))
            .unwrap()
            .telemetry
            .unwrap();
        assert_eq!(t.endpoint.as_str(), "http://mine:4318/");
        // A bad value names the variable.
        let e = Config::from_toml(MINIMAL, "sts.toml", &otel("collector:4318"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "environment variable OTEL_EXPORTER_OTLP_ENDPOINT (for sts.toml): telemetry.otlp_endpoint:"
            ),
            "{e}"
        );
    }

    #[test]
    fn the_shim_takes_telemetry_under_its_own_service_name() {
        let text = format!("{SHIM}\n[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\n");
        let t = ShimConfig::from_toml(&text, "shim.toml", &no_env())
            .unwrap()
            .telemetry
            .unwrap();
        assert_eq!(t.service_name, "agent-sts-shim");
        let e = ShimConfig::from_toml(
            &format!("{SHIM}\n[telemetry]\nmax_queue = -1\n"),
            "shim.toml",
            &no_env(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("shim.toml: telemetry.max_queue:"), "{e}");
    }

    #[test]
    fn transit_keys_and_jwt_auth_parse_with_their_defaults_and_refuse_misuse() {
        let vault = "[vault]\naddress = \"http://127.0.0.1:8200\"\n";
        let with = |keys: &str, vault_extra: &str| {
            format!("{MINIMAL}\n[keys]\n{keys}\n{vault}{vault_extra}\n")
        };
        let jwt = "auth = \"jwt\"\njwt_role = \"agent-sts\"\njwt_token_file = \"/run/token\"\n";
        let c =
            Config::from_toml(&with("store = \"transit\"", jwt), "sts.toml", &no_env()).unwrap();
        assert!(matches!(
            &c.keys.store,
            KeyStoreKind::Transit { mount, key } if mount == "transit" && key == "agent-sts"
        ));
        // The deny list stays a KV entry.
        assert!(
            matches!(&c.deny.store, KeyStoreKind::Vault { path } if path == "agent-sts/deny-list")
        );
        assert!(matches!(
            &c.vault.as_ref().unwrap().auth,
            VaultAuth::Jwt { mount, role, token_file }
                if mount == "jwt" && role == "agent-sts" && token_file == Path::new("/run/token")
        ));
        let c = Config::from_toml(
            &with(
                "store = \"transit\"\ntransit_mount = \"ops/transit\"\ntransit_key = \"sts-1\"",
                "auth = \"jwt\"\njwt_role = \"r\"\njwt_token_file = \"t\"\njwt_mount = \"oidc\"",
            ),
            "sts.toml",
            &no_env(),
        )
        .unwrap();
        assert!(matches!(
            &c.keys.store,
            KeyStoreKind::Transit { mount, key } if mount == "ops/transit" && key == "sts-1"
        ));

        assert!(
            err(&with("store = \"transit\"\ntransit_key = \"../sys\"", ""))
                .contains("keys.transit_key")
        );
        assert!(
            err(&with("store = \"transit\"\ntransit_mount = \"a//b\"", ""))
                .contains("keys.transit_mount")
        );
        assert!(
            err(&with("store = \"vault\"\ntransit_key = \"k\"", ""))
                .contains("only with keys.store = \"transit\"")
        );
        assert!(err(&format!("{MINIMAL}\n[keys]\nstore = \"transit\"\n")).contains("[vault]"));
        assert!(
            err(&with(
                "store = \"transit\"",
                "auth = \"jwt\"\njwt_token_file = \"t\""
            ))
            .contains("vault.jwt_role")
        );
        assert!(
            err(&with(
                "store = \"transit\"",
                "auth = \"jwt\"\njwt_role = \"r\""
            ))
            .contains("vault.jwt_token_file")
        );
        let nonces = format!(
            "{MINIMAL}\n[tokens]\ndpop_nonces = true\n[keys]\nstore = \"transit\"\n{vault}"
        );
        assert!(err(&nonces).contains("tokens.dpop_nonces"));
    }

    #[test]
    fn design_example_parses() {
        let text = r#"
[server]
listen = "127.0.0.1:8080"
issuer = "https://sts.example.org"
scopes_dir = "scopes"
[tokens]
default_ttl = "5m"
max_ttl = "15m"
algorithm = "ES256"
[keys]
store = "vault"
dir = "keys"
vault_path = "agent-sts/signing-keys"
refresh_interval = "30s"
publish_lead = "10m"
jwks_max_age = "5m"
[secrets]
store = "vault"
file = "keys/dev-secrets.toml"
[vault]
address = "http://127.0.0.1:8200"
kv_mount = "secret"
kv_version = 2
auth = "approle"
role_id_file = "/run/secrets/role-id"
secret_id_file = "/run/secrets/secret-id"
timeout = "2s"
max_stale = "60s"
[[trust]]
name = "k8s-prod"
issuer = "https://kubernetes.default.svc"
jwks_uri = "https://kubernetes.default.svc/openid/v1/jwks"
algorithms = ["ES256", "RS256"]
spiffe_trust_domains = []
[audit]
path = "audit.log"
"#;
        let c = Config::from_toml(text, "sts.toml", &no_env()).unwrap();
        assert_eq!(c.tokens.max_ttl, Duration::from_secs(900));
        assert!(matches!(c.keys.store, KeyStoreKind::Vault { .. }));
        assert_eq!(c.vault.as_ref().unwrap().kv_version, 2);
        assert_eq!(
            c.trusts[0].algorithms,
            vec![Algorithm::ES256, Algorithm::RS256]
        );
        assert!(c.vault.as_ref().unwrap().env_token.is_none());

        // VAULT_TOKEN comes through the Environment, and never prints.
        let env = BTreeMap::from([("VAULT_TOKEN".to_string(), "hvs.canary-token".to_string())]);
        let c = Config::from_toml(text, "sts.toml", &env).unwrap();
        let vault = c.vault.unwrap();
        assert_eq!(
            vault.env_token.as_ref().unwrap().expose(),
            "hvs.canary-token"
        );
        assert!(!format!("{vault:?}").contains("canary"));
    }

    #[test]
    fn log_format_and_admin_listen() {
        let c = Config::from_toml(MINIMAL, "sts.toml", &no_env()).unwrap();
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.server.admin_listen, None);
        let text = MINIMAL.replace(
            "[server]\n",
            "[log]\nformat = \"json\"\n\n[server]\nadmin_listen = \"127.0.0.1:9100\"\n",
        );
        let c = Config::from_toml(&text, "sts.toml", &no_env()).unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(
            c.server.admin_listen,
            Some("127.0.0.1:9100".parse().unwrap())
        );
        // From the environment, blamed on the variable; AGENT_STS_LOG_FORMAT is not a
        // setting and leaves the file's format alone.
        let env = BTreeMap::from([
            (
                "AGENT_STS_SERVER_ADMIN_LISTEN".to_string(),
                "nine".to_string(),
            ),
            ("AGENT_STS_LOG_FORMAT".to_string(), "text".to_string()),
        ]);
        let e = Config::from_toml(&text, "sts.toml", &env)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("environment variable AGENT_STS_SERVER_ADMIN_LISTEN")
                && e.contains("server.admin_listen: not an address:port"),
            "{e}"
        );
        let env = BTreeMap::from([("AGENT_STS_LOG_FORMAT".to_string(), "text".to_string())]);
        let c = Config::from_toml(&text, "sts.toml", &env).unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        let e = err(&MINIMAL.replace("[server]\n", "[log]\nformat = \"yaml\"\n\n[server]\n"));
        assert!(
            e.contains("log.format: must be \"text\" or \"json\""),
            "{e}"
        );
        let e = err(&MINIMAL.replace(
            "[server]\n",
            "[server]\nlisten = \"127.0.0.1:8080\"\nadmin_listen = \"127.0.0.1:8080\"\n",
        ));
        assert!(e.contains("server.admin_listen: must differ"), "{e}");
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let e = err(&format!("{MINIMAL}\n[audit]\npaht = \"x\"\n"));
        assert!(e.starts_with("sts.toml"), "{e}");
        assert!(e.contains("paht"), "{e}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let before_trust =
            |section: &str| MINIMAL.replace("[[trust]]", &format!("{section}\n[[trust]]"));
        let cases = [
            (before_trust("[tokens]\nmax_ttl = \"2h\""), "tokens.max_ttl"),
            (
                MINIMAL.replace("\"ES256\", \"RS256\"", "\"HS256\""),
                "trust[0].algorithms",
            ),
            (
                MINIMAL.replace("\"ES256\", \"RS256\"", "\"none\""),
                "trust[0].algorithms",
            ),
            (
                MINIMAL.replace(
                    "https://kubernetes.default.svc/openid",
                    "http://kubernetes.default.svc/openid",
                ),
                "trust[0].jwks_uri",
            ),
            (
                MINIMAL.replace(
                    "issuer = \"https://kubernetes.default.svc\"",
                    "issuer = \"https://sts.example.org\"",
                ),
                "trust[0].issuer",
            ),
            (
                before_trust("[keys]\npublish_lead = \"1m\""),
                "keys.publish_lead",
            ),
            (
                before_trust(
                    "[keys]\npublish_lead = \"5m\"\njwks_max_age = \"5m\"\nrefresh_interval = \"1s\"",
                ),
                "keys.publish_lead",
            ),
            (before_trust("[secrets]\nstore = \"vault\""), "vault"),
        ];
        for (text, key) in cases {
            let e = err(&text);
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn environment_overrides_win_and_name_the_variable() {
        let mut env = BTreeMap::new();
        env.insert(
            "AGENT_STS_SERVER_LISTEN".to_string(),
            "127.0.0.1:9999".to_string(),
        );
        env.insert("AGENT_STS_TOKENS_MAX_TTL".to_string(), "10m".to_string());
        env.insert("AGENT_STS_LIMITS_RATE_BURST".to_string(), "7".to_string());
        env.insert("AGENT_STS_LOG".to_string(), "debug".to_string());
        let c = Config::from_toml(MINIMAL, "sts.toml", &env).unwrap();
        assert_eq!(c.server.listen.port(), 9999);
        assert_eq!(c.tokens.max_ttl, Duration::from_secs(600));
        assert_eq!(c.limits.rate_burst, 7);

        let mut bad = BTreeMap::new();
        bad.insert("AGENT_STS_SERVER_LISTN".to_string(), "x".to_string());
        let e = Config::from_toml(MINIMAL, "sts.toml", &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("AGENT_STS_SERVER_LISTN"), "{e}");
        assert!(e.contains("listn"), "{e}");
    }

    /// A bad value from the environment is blamed on its variable, not the file; a
    /// variable naming no section is an error like an unknown key; the logging ones
    /// are not settings and pass.
    #[test]
    fn environment_errors_name_the_variable_and_unknown_names_are_refused() {
        let one = |name: &str, value: &str| {
            let mut env = BTreeMap::new();
            env.insert(name.to_string(), value.to_string());
            env
        };
        let e = Config::from_toml(
            MINIMAL,
            "sts.toml",
            &one("AGENT_STS_SERVER_LISTEN", "nowhere"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("environment variable AGENT_STS_SERVER_LISTEN")
                && e.contains("server.listen"),
            "{e}"
        );
        let e = Config::from_toml(
            MINIMAL,
            "sts.toml",
            &one("AGENT_STS_SERVR_LISTEN", "127.0.0.1:1"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("AGENT_STS_SERVR_LISTEN") && e.contains("not a setting"),
            "{e}"
        );
        let e = ShimConfig::from_toml(
            SHIM,
            "shim.toml",
            &one("AGENT_STS_SHIMM_LISTEN", "127.0.0.1:1"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("AGENT_STS_SHIMM_LISTEN"), "{e}");
        // The STS's own sections are left to it when a shim shares its environment.
        ShimConfig::from_toml(SHIM, "shim.toml", &one("AGENT_STS_SERVER_LISTEN", "x")).unwrap();
        for name in ["AGENT_STS_LOG", "AGENT_STS_LOG_FORMAT"] {
            Config::from_toml(MINIMAL, "sts.toml", &one(name, "json")).unwrap();
        }
        // A value in the file that is wrong is still blamed on the file.
        let e = Config::from_toml(
            &MINIMAL.replace("[server]", "[server]\nlisten = \"nowhere\""),
            "sts.toml",
            &one("AGENT_STS_LOG", "info"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("sts.toml: server.listen"), "{e}");
    }

    const SHIM: &str = r#"
[shim]
listen = "127.0.0.1:9090"
audience = "https://github-shim.internal"
upstream = "https://api.github.com"
issuer = "https://sts.example.org"
jwks_uri = "https://sts.example.org/.well-known/jwks.json"
scopes_dir = "scopes"
"#;

    fn shim_err(text: &str) -> String {
        ShimConfig::from_toml(text, "shim.toml", &no_env())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn shim_design_example_parses_with_defaults() {
        let c = ShimConfig::from_toml(SHIM, "shim.toml", &no_env()).unwrap();
        assert_eq!(c.shim.listen.port(), 9090);
        assert_eq!(c.shim.upstream.as_str(), "https://api.github.com/");
        assert_eq!(c.shim.upstream_timeout, Duration::from_secs(30));
        assert_eq!(c.shim.stream_idle_timeout, Duration::from_secs(60));
        assert_eq!(c.shim.max_request_bytes, 1 << 20);
        assert!(matches!(c.secrets, SecretsConfig::File { .. }));
        assert_eq!(
            c.limits.max_token_bytes,
            LimitsConfig::default().max_token_bytes
        );
        assert_eq!(c.shim.jwks_refresh, Duration::from_secs(300));
        assert_eq!(c.shim.jwks_max_stale, Duration::from_secs(3600));
    }

    #[test]
    fn shim_jwks_freshness_is_configurable_and_checked() {
        let text = format!("{SHIM}jwks_refresh = \"10s\"\njwks_max_stale = \"2m\"\n");
        let c = ShimConfig::from_toml(&text, "shim.toml", &no_env()).unwrap();
        assert_eq!(c.shim.jwks_refresh, Duration::from_secs(10));
        assert_eq!(c.shim.jwks_max_stale, Duration::from_secs(120));
        for bad in ["jwks_refresh = \"0s\"", "jwks_max_stale = \"soon\""] {
            let e = shim_err(&format!("{SHIM}{bad}\n"));
            let key = bad.split(' ').next().unwrap();
            assert!(e.contains(&format!("shim.{key}")), "{e}");
            assert!(e.contains("shim.toml"), "{e}");
        }
    }

    #[test]
    fn shim_upstream_and_jwks_rules_name_the_key() {
        for (bad, key) in [
            ("http://api.github.com", "shim.upstream"),
            ("https://user:pw@api.github.com", "shim.upstream"),
            ("https://api.github.com/?x=1", "shim.upstream"),
            ("ftp://api.github.com", "shim.upstream"),
        ] {
            let text = SHIM.replace("https://api.github.com", bad);
            assert!(shim_err(&text).contains(key), "{bad}: {}", shim_err(&text));
        }
        let loopback = SHIM.replace("https://api.github.com", "http://127.0.0.1:8081/api");
        let c = ShimConfig::from_toml(&loopback, "shim.toml", &no_env()).unwrap();
        assert_eq!(c.shim.upstream.path(), "/api");
        let jwks = SHIM.replace(
            "https://sts.example.org/.well-known",
            "http://sts.example.org/.well-known",
        );
        assert!(shim_err(&jwks).contains("shim.jwks_uri"));
        let typo = format!("{SHIM}upstrem = \"x\"\n");
        assert!(shim_err(&typo).contains("upstrem"));
        let vault = format!("{SHIM}[secrets]\nstore = \"vault\"\n");
        assert!(shim_err(&vault).contains("vault"));
        let server = format!("{SHIM}[server]\nissuer = \"x\"\n");
        assert!(shim_err(&server).contains("server"));
    }

    #[test]
    fn shim_environment_overrides() {
        let mut env = BTreeMap::new();
        env.insert(
            "AGENT_STS_SHIM_LISTEN".to_string(),
            "0.0.0.0:9999".to_string(),
        );
        env.insert(
            "AGENT_STS_SHIM_UPSTREAM_TIMEOUT".to_string(),
            "2s".to_string(),
        );
        env.insert("AGENT_STS_SERVER_LISTEN".to_string(), "ignored".to_string());
        env.insert("AGENT_STS_SHIM_JWKS_REFRESH".to_string(), "15s".to_string());
        env.insert(
            "AGENT_STS_SHIM_JWKS_MAX_STALE".to_string(),
            "5m".to_string(),
        );
        env.insert(
            "AGENT_STS_SHIM_STREAM_IDLE_TIMEOUT".to_string(),
            "90s".to_string(),
        );
        let c = ShimConfig::from_toml(SHIM, "shim.toml", &env).unwrap();
        assert_eq!(c.shim.listen.port(), 9999);
        assert_eq!(c.shim.upstream_timeout, Duration::from_secs(2));
        assert_eq!(c.shim.stream_idle_timeout, Duration::from_secs(90));
        assert_eq!(c.shim.jwks_refresh, Duration::from_secs(15));
        assert_eq!(c.shim.jwks_max_stale, Duration::from_secs(300));
    }

    #[test]
    fn relative_paths_resolve_against_the_files_directory() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("etc");
        std::fs::create_dir_all(&conf).unwrap();
        let path = conf.join("sts.toml");
        std::fs::write(
            &path,
            r#"
[server]
issuer = "https://sts.example.org"
scopes_dir = "scopes"

[keys]
dir = "../keys"

[secrets]
store = "file"
file = "secrets.toml"

[vault]
address = "http://127.0.0.1:8200"
auth = "approle"
role_id_file = "role-id"
secret_id_file = "/run/secrets/secret-id"

[[trust]]
name = "k8s-prod"
issuer = "https://kubernetes.default.svc"
jwks_file = "jwks/k8s.json"
algorithms = ["RS256"]

[audit]
path = "audit.log"
"#,
        )
        .unwrap();
        let c = Config::load(&path, &BTreeMap::new()).unwrap();
        let base = std::path::absolute(&conf).unwrap();
        assert_eq!(c.server.scopes_dir, base.join("scopes"));
        assert!(
            matches!(&c.keys.store, KeyStoreKind::File { dir } if *dir == base.join("../keys"))
        );
        assert!(
            matches!(&c.secrets, SecretsConfig::File { path } if *path == base.join("secrets.toml"))
        );
        match &c.vault.as_ref().unwrap().auth {
            VaultAuth::AppRole {
                role_id_file,
                secret_id_file,
                ..
            } => {
                assert_eq!(*role_id_file, base.join("role-id"));
                assert_eq!(*secret_id_file, PathBuf::from("/run/secrets/secret-id"));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(&c.trusts[0].jwks, KeySource::File(p) if *p == base.join("jwks/k8s.json"))
        );
        assert_eq!(c.audit.path, base.join("audit.log"));
    }

    #[test]
    fn the_issuer_is_an_absolute_https_url() {
        for bad in [
            "sts.example.org",
            "http://sts.example.org",
            "ftp://sts.example.org",
            "https://user:pw@sts.example.org",
            "https://sts.example.org/?x=1",
            "https://sts.example.org/#f",
        ] {
            let e = err(&MINIMAL.replace("https://sts.example.org", bad));
            assert!(e.contains("server.issuer"), "{bad}: {e}");
        }
        for good in [
            "http://127.0.0.1:8080",
            "http://localhost:8080",
            "https://sts.example.org/t/acme",
        ] {
            Config::from_toml(
                &MINIMAL.replace("https://sts.example.org", good),
                "sts.toml",
                &no_env(),
            )
            .unwrap_or_else(|e| panic!("{good}: {e}"));
        }
    }
}
