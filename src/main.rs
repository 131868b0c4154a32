//! The `agent-sts` command line (README, "Commands"): parses arguments, sets up
//! logging, runs one command, and maps its outcome to the exit codes 0 (success),
//! 1 (runtime failure) and 2 (bad usage or invalid configuration).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use agent_sts::config::{Config, ProcessEnv, ShimConfig};
use agent_sts::runtime::{self, StartError};
use agent_sts::telemetry::logs::{self, LogFormat};
use agent_sts::telemetry::traces;
use agent_sts::{audit, catalogue, control, dev, identity, keys, shim, store, sts};
use opentelemetry_sdk::trace::SdkTracerProvider;

#[derive(Parser)]
#[command(
    name = "agent-sts",
    version,
    about = "A security token service for AI agents: RFC 8693 token exchange from workload identity to one-action, minutes-lived JWTs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the STS.
    Serve {
        /// Configuration file (agent-sts.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the credential-injecting reverse proxy in front of one upstream.
    Shim {
        /// Shim configuration file ([shim], [secrets], [vault], [audit], [limits], [telemetry]).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the STS on the embedded default: no Vault, no configuration; dev keys and
    /// secrets under keys/, a dev workload issuer, and a ready-to-paste example.
    Dev(dev::DevArgs),
    /// Manage signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Work with the scope catalogue.
    Scopes {
        #[command(subcommand)]
        command: ScopesCommand,
    },
    /// Work with the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The kill switch: stop agents, subjects, actions or tokens at every STS replica,
    /// shim and verifier within seconds.
    Deny {
        #[command(subcommand)]
        command: DenyCommand,
    },
}

#[derive(Subcommand)]
enum DenyCommand {
    /// Add an entry; prints its id (and, on stderr, where it was written).
    Add {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        target: DenyTargetArgs,
        /// Why (kept in the store, shown by `deny list`; one line).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Lift the entry after DURATION (e.g. `30m`, `2h`); default: until removed.
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
    },
    /// List the entries: id, state, when, until, who, what and why.
    List {
        #[command(flatten)]
        config: ConfigArgs,
        /// One JSON document instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Remove the entry ID.
    Remove {
        #[command(flatten)]
        config: ConfigArgs,
        id: String,
    },
}

/// What `deny add` stops: exactly one.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct DenyTargetArgs {
    /// An agent wherever it appears in a token (subject, client, any actor).
    #[arg(long, value_name = "TRUST:PATTERN")]
    agent: Option<String>,
    /// The subject tokens are for.
    #[arg(long, value_name = "TRUST:PATTERN")]
    subject: Option<String>,
    /// Every token for one catalogue action.
    #[arg(long, value_name = "NAME")]
    action: Option<String>,
    /// One token, by its `jti`.
    #[arg(long, value_name = "JTI")]
    jti: Option<String>,
}

impl DenyTargetArgs {
    fn target(self) -> Option<control::commands::Target> {
        use control::commands::Target;
        self.agent
            .map(Target::Agent)
            .or(self.subject.map(Target::Subject))
            .or(self.action.map(Target::Action))
            .or(self.jti.map(Target::Jti))
    }
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create the next signing key (published before it signs; active at once on an
    /// empty keyring).
    Rotate {
        #[command(flatten)]
        config: ConfigArgs,
        /// Rotate even though a `next` key is still pending (it would be overtaken).
        #[arg(long)]
        force: bool,
    },
    /// List kid, algorithm, state and dates; never key material.
    List {
        #[command(flatten)]
        config: ConfigArgs,
        /// One JSON document instead of the table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ScopesCommand {
    /// Validate a catalogue and print one line per action.
    Check {
        /// Catalogue directory (default: the configuration's `server.scopes_dir` with
        /// --config, else `scopes`).
        dir: Option<PathBuf>,
        /// Configuration whose [[trust]] names the catalogue may use (default: the
        /// embedded `agent-sts dev` trusts).
        #[arg(long)]
        config: Option<PathBuf>,
        /// One JSON document instead of the lines (errors too, on stdout, exit 2).
        #[arg(long)]
        json: bool,
        /// Check this `[[tenant]]`'s catalogue (its `scopes_dir` and trusts).
        #[arg(long, value_name = "NAME", requires = "config")]
        tenant: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the hash chain; fails at the first broken link.
    Verify {
        /// Audit log files of one chain, oldest first (`audit.log.1 audit.log.2
        /// audit.log` after rotation).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The first file continues an earlier one that was rotated away: accept a
        /// first `seq` above 1 and print the hash the earlier file must end with.
        #[arg(long)]
        continued: bool,
        /// Fail (exit 1) unless the last line hashes to HASH: a copy of the last hash
        /// kept elsewhere catches a log cut short, which the chain alone cannot.
        #[arg(long, value_name = "HASH")]
        expect_last: Option<String>,
        /// One JSON document instead of the lines.
        #[arg(long)]
        json: bool,
    },
}

/// Logs go to stderr; `AGENT_STS_LOG` (or `RUST_LOG`) sets the filter, by default
/// `info` for the servers and `warn` for one-shot commands, and `AGENT_STS_LOG_FORMAT`
/// (else the configuration's `[log] format`) the format. A filter or format that does
/// not parse is an error naming the variable (exit 2), never a silent fallback.
/// Called once the configuration is read, so its `[log] format` applies from the first
/// line; errors before that are printed by `main`.
fn init_logging(default: &str, configured: Option<LogFormat>) -> Result<(), StartError> {
    init_telemetry(default, configured, None).map(|_| ())
}

/// [`init_logging`], and for a server with `[telemetry]` the span export pipeline
/// (README, "Traces"), returned to be shut down (flushed) at exit.
fn init_telemetry(
    default: &str,
    configured: Option<LogFormat>,
    settings: Option<&traces::Settings>,
) -> Result<Option<SdkTracerProvider>, StartError> {
    let filter_var = ["AGENT_STS_LOG", "RUST_LOG"]
        .into_iter()
        .find_map(|name| std::env::var(name).ok().map(|v| (name, v)));
    let filter = logs::filter(filter_var.as_ref().map(|(n, v)| (*n, v.as_str())), default)
        .map_err(StartError::Config)?;
    let format = logs::format(std::env::var(logs::FORMAT_VAR).ok().as_deref(), configured)
        .map_err(StartError::Config)?;
    let provider = settings
        .map(traces::provider)
        .transpose()
        .map_err(StartError::Runtime)?;
    logs::install(filter, format, provider.as_ref());
    Ok(provider)
}

/// Flushes the spans still queued at exit, waiting at most one export.
fn finish_telemetry(provider: Option<SdkTracerProvider>, settings: Option<&traces::Settings>) {
    if let (Some(provider), Some(settings)) = (provider, settings) {
        traces::shutdown(&provider, settings.export_timeout);
    }
}

/// The default log filter of `serve`, `shim` and `dev`.
const SERVER_LOG: &str = "info";
/// The default log filter of one-shot commands.
const COMMAND_LOG: &str = "warn";

fn load_config(path: &std::path::Path) -> Result<Config, StartError> {
    Config::load(path, &ProcessEnv).map_err(|e| StartError::Config(e.to_string()))
}

/// `--config FILE [--tenant NAME]`: the configuration a command works on, the
/// top-level one or a `[[tenant]]`'s (its keyring, deny list, catalogue).
#[derive(clap::Args)]
struct ConfigArgs {
    /// Configuration file (agent-sts.toml).
    #[arg(long)]
    config: PathBuf,
    /// Work on this `[[tenant]]` of the configuration instead of the top level.
    #[arg(long, value_name = "NAME")]
    tenant: Option<String>,
}

impl ConfigArgs {
    fn load(&self) -> Result<Config, StartError> {
        load_config(&self.config)?
            .for_tenant(self.tenant.as_deref())
            .map_err(|e| StartError::Config(e.to_string()))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agent-sts: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent-sts: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(command: Command) -> Result<(), StartError> {
    match command {
        Command::Serve { config } => {
            let config_path = config;
            let config = load_config(&config_path)?;
            let telemetry = config.telemetry.as_ref();
            let provider = init_telemetry(SERVER_LOG, Some(config.log_format), telemetry)?;
            let app = sts::app::build_from(&config, Some(config_path)).await?;
            let listener = runtime::bind(config.server.listen).await?;
            let addr = listener
                .local_addr()
                .map_err(|e| StartError::Runtime(e.to_string()))?;
            tracing::info!(listen = %addr, issuer = %config.server.issuer, audit = %config.audit.path.display(), "agent-sts serving");
            let served = app.serve(listener, None).await;
            finish_telemetry(provider, telemetry);
            served
        }
        Command::Shim { config } => {
            let config = ShimConfig::load(&config, &ProcessEnv)
                .map_err(|e| StartError::Config(e.to_string()))?;
            let telemetry = config.telemetry.as_ref();
            let provider = init_telemetry(SERVER_LOG, Some(config.log_format), telemetry)?;
            let shim = shim::build(&config).await?;
            let listener = runtime::bind(config.shim.listen).await?;
            let addr = listener
                .local_addr()
                .map_err(|e| StartError::Runtime(e.to_string()))?;
            tracing::info!(listen = %addr, audience = %config.shim.audience, upstream = %config.shim.upstream, audit = %config.audit.path.display(), "agent-sts shim serving");
            let served = shim.serve(listener).await;
            finish_telemetry(provider, telemetry);
            served
        }
        Command::Dev(args) => {
            init_logging(SERVER_LOG, None)?;
            dev::run(args).await
        }
        Command::Keys { command } => match command {
            KeysCommand::Rotate { config, force } => {
                let config = config.load()?;
                init_logging(COMMAND_LOG, Some(config.log_format))?;
                let now = identity::unix_now();
                let store = match store::open(&config).await?.keys {
                    keys::KeySource::Stored(store) => store,
                    keys::KeySource::Remote(remote) => {
                        return rotate_remote(remote.as_ref(), &config, now, force).await;
                    }
                };
                let (ring, _) = keys::load_valid(store.as_ref())
                    .await
                    .map_err(|e| StartError::Runtime(e.to_string()))?;
                let pending = keys::list(&ring, now, config.tokens.max_ttl)
                    .into_iter()
                    .find(|k| k.state == keys::KeyState::Next);
                if let (Some(next), false) = (pending, force) {
                    return Err(StartError::Runtime(format!(
                        "key {} is still pending: it starts signing at {}; rotate after that, or pass --force to add another next key now",
                        next.kid,
                        rfc3339(next.activates_at)
                    )));
                }
                let (kid, state) = keys::rotate(
                    store.as_ref(),
                    config.tokens.algorithm,
                    now,
                    config.keys.publish_lead,
                    config.tokens.max_ttl,
                )
                .await
                .map_err(|e| StartError::Runtime(e.to_string()))?;
                println!(
                    "created {kid} ({}, {})",
                    config.tokens.algorithm.as_str(),
                    state.as_str()
                );
                if state == keys::KeyState::Active {
                    println!(
                        "the keyring was empty: this is its first key, active at once; written to {}",
                        store.location()
                    );
                } else {
                    let (ring, _) = keys::load_valid(store.as_ref())
                        .await
                        .map_err(|e| StartError::Runtime(e.to_string()))?;
                    if let Some(k) = ring.keys.iter().find(|k| k.kid == kid) {
                        println!(
                            "published now, signs from {} (in {} s)",
                            rfc3339(k.activates_at),
                            k.activates_at.saturating_sub(now)
                        );
                    }
                    println!("written to {}", store.location());
                }
                Ok(())
            }
            KeysCommand::List { config, json } => {
                let config = config.load()?;
                init_logging(COMMAND_LOG, Some(config.log_format))?;
                let now = identity::unix_now();
                let rows = match store::open(&config).await?.keys {
                    keys::KeySource::Stored(store) => {
                        // The check `serve` runs: a ring it would refuse is refused here too.
                        let (ring, _) = keys::load_valid(store.as_ref())
                            .await
                            .map_err(|e| StartError::Runtime(e.to_string()))?;
                        keys::list(&ring, now, config.tokens.max_ttl)
                    }
                    keys::KeySource::Remote(remote) => {
                        remote_rows(remote.as_ref(), &config, now).await?.1
                    }
                };
                if json {
                    let keys: Vec<serde_json::Value> = rows
                        .iter()
                        .map(|r| {
                            serde_json::json!({
                                "kid": r.kid,
                                "alg": r.alg.as_str(),
                                "state": r.state.as_str(),
                                "created_at": r.created_at,
                                "activates_at": r.activates_at,
                                "retires_at": r.retires_at,
                                "removed_at": r.removed_at,
                            })
                        })
                        .collect();
                    println!("{}", serde_json::json!({ "keys": keys }));
                    return Ok(());
                }
                println!(
                    "{:<44} {:<6} {:<9} {:<21} {:<21} {:<21} removed_at",
                    "kid", "alg", "state", "created_at", "activates_at", "retires_at"
                );
                let when = |t: Option<u64>| t.map_or_else(|| "-".to_string(), rfc3339);
                for row in rows {
                    println!(
                        "{:<44} {:<6} {:<9} {:<21} {:<21} {:<21} {}",
                        row.kid,
                        row.alg.as_str(),
                        row.state.as_str(),
                        rfc3339(row.created_at),
                        rfc3339(row.activates_at),
                        when(row.retires_at),
                        when(row.removed_at)
                    );
                }
                Ok(())
            }
        },
        Command::Scopes {
            command:
                ScopesCommand::Check {
                    dir,
                    config,
                    json,
                    tenant,
                },
        } => {
            let (directory, dir) = match config {
                Some(path) => {
                    let config = load_config(&path)?
                        .for_tenant(tenant.as_deref())
                        .map_err(|e| StartError::Config(e.to_string()))?;
                    init_logging(COMMAND_LOG, Some(config.log_format))?;
                    let dir = dir.unwrap_or_else(|| config.server.scopes_dir.clone());
                    (sts::trust_directory(&config), dir)
                }
                None => {
                    init_logging(COMMAND_LOG, None)?;
                    (
                        dev::trust_directory(),
                        dir.unwrap_or_else(|| PathBuf::from("scopes")),
                    )
                }
            };
            let checked = catalogue::Catalogue::check_dir(&dir, &directory);
            if json {
                let doc = match &checked {
                    Ok(c) => serde_json::json!({
                        "dir": dir.display().to_string(),
                        "ok": true,
                        "actions": c.actions().map(action_json).collect::<Vec<_>>(),
                    }),
                    Err(errors) => serde_json::json!({
                        "dir": dir.display().to_string(),
                        "ok": false,
                        "errors": errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    }),
                };
                println!("{doc}");
                return match checked {
                    Ok(_) => Ok(()),
                    Err(errors) => Err(StartError::Config(format!(
                        "{} error(s) in {}",
                        errors.len(),
                        dir.display()
                    ))),
                };
            }
            let catalogue = checked.map_err(|errors| {
                let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
                StartError::Config(format!("{} error(s):\n{}", lines.len(), lines.join("\n")))
            })?;
            for action in catalogue.actions() {
                println!("{}", describe(action));
            }
            println!("{}: {} actions ok", dir.display(), catalogue.len());
            Ok(())
        }
        Command::Audit {
            command:
                AuditCommand::Verify {
                    files,
                    continued,
                    expect_last,
                    json,
                },
        } => {
            init_logging(COMMAND_LOG, None)?;
            let report = audit::verify_files(&files, continued)
                .map_err(|e| StartError::Runtime(e.to_string()))?;
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            let expected = expect_last
                .as_deref()
                .map(|h| h.trim().eq_ignore_ascii_case(&report.last_hash));
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "files": names,
                        "lines": report.lines,
                        "first_seq": report.first_seq,
                        "continues": report.continues,
                        "last_hash": report.last_hash,
                        "intact": true,
                        "expected_last": expected,
                    })
                );
            } else {
                println!("{}: {} lines, chain intact", names.join(" "), report.lines);
            }
            if expected == Some(false) {
                return Err(StartError::Runtime(format!(
                    "the last line hashes to {}, not the expected hash: the log was cut short or replaced after that hash was recorded",
                    report.last_hash
                )));
            }
            if json {
                return Ok(());
            }
            if let Some(prev) = report.continues {
                println!(
                    "the chain starts at seq {} and continues an earlier file not given: its last line must hash to {prev}",
                    report.first_seq
                );
            }
            println!("last line hash {}", report.last_hash);
            Ok(())
        }
        Command::Deny { command } => run_deny(command).await,
    }
}

async fn run_deny(command: DenyCommand) -> Result<(), StartError> {
    let now = identity::unix_now();
    match command {
        DenyCommand::Add {
            config,
            target,
            reason,
            duration,
        } => {
            let config = config.load()?;
            init_logging(COMMAND_LOG, Some(config.log_format))?;
            let duration = duration
                .map(|d| {
                    humantime::parse_duration(&d)
                        .ok()
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| {
                            StartError::Config(format!(
                                "--for: not a duration: {d:?} (use e.g. \"30m\", \"2h\")"
                            ))
                        })
                })
                .transpose()?;
            let target = target
                .target()
                .ok_or_else(|| StartError::Config("name what to deny".into()))?;
            let store = control::commands::open(&config).await?;
            let entry =
                control::commands::add(&config, store.as_ref(), target, reason, duration, now)
                    .await?;
            println!("{}", entry.rule.id);
            eprintln!(
                "denied {} ({}); written to {}; every replica refuses within deny.refresh_interval ({}), every verifier within that plus its own refresh",
                control::commands::describe_target(&entry.rule.target),
                entry
                    .rule
                    .until
                    .and_then(keys::format_timestamp)
                    .map_or_else(|| "until removed".to_string(), |t| format!("until {t}")),
                store.location(),
                humantime::format_duration(config.deny.refresh_interval)
            );
            Ok(())
        }
        DenyCommand::List { config, json } => {
            let config = config.load()?;
            init_logging(COMMAND_LOG, Some(config.log_format))?;
            let store = control::commands::open(&config).await?;
            let list = control::commands::list(store.as_ref()).await?;
            if json {
                println!("{}", control::commands::json(&list, now));
            } else {
                print!("{}", control::commands::table(&list, now));
            }
            Ok(())
        }
        DenyCommand::Remove { config, id } => {
            let config = config.load()?;
            init_logging(COMMAND_LOG, Some(config.log_format))?;
            let store = control::commands::open(&config).await?;
            let entry = control::commands::remove(store.as_ref(), &id, now).await?;
            println!(
                "removed {} ({}) from {}",
                entry.rule.id,
                control::commands::describe_target(&entry.rule.target),
                store.location()
            );
            Ok(())
        }
    }
}

/// One action of `scopes check --json`.
fn action_json(a: &catalogue::Action) -> serde_json::Value {
    serde_json::json!({
        "name": a.name,
        "source": a.source.to_string(),
        "audience": a.audience,
        "ttl_seconds": a.ttl.map(|t| t.as_secs()),
        "delegation": a.delegation.as_str(),
        "agents": a.agents.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "subjects": a.subjects.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "credential": a.credential,
        "sender_constraint": a.sender_constraint.map(|s| s.as_str()),
        "delegable_to": a.delegable_to,
        "request": a.request.as_ref().map(|r| serde_json::json!({
            "method": r.method,
            "path": r.path.as_str(),
            "headers": r.headers,
        })),
    })
}

/// One line of `scopes check`.
fn describe(a: &catalogue::Action) -> String {
    let agents: Vec<String> = a.agents.iter().map(ToString::to_string).collect();
    format!(
        "{}: {} {} ttl={} delegation={} agents=[{}]{}{}",
        a.source,
        a.name,
        a.audience,
        a.ttl
            .map(|t| humantime::format_duration(t).to_string())
            .unwrap_or_else(|| "default".into()),
        a.delegation,
        agents.join(", "),
        a.credential
            .as_deref()
            .map(|c| format!(" credential={c}"))
            .unwrap_or_default(),
        a.request
            .as_ref()
            .map(|r| {
                let headers = if r.headers.is_empty() {
                    String::new()
                } else {
                    format!(" headers={}", r.headers.join(","))
                };
                format!(" request={} {}{headers}", r.method, r.path)
            })
            .unwrap_or_default()
    )
}

/// A stored timestamp for `keys list`; the ring was validated, so out of range is
/// unreachable, but still never a panic.
/// The versions of a remote (Transit) key as `keys list` rows, and whether it exists.
async fn remote_rows(
    remote: &dyn keys::RemoteKeys,
    config: &Config,
    now: u64,
) -> Result<(bool, Vec<keys::KeyListing>), StartError> {
    let Some(set) = remote
        .versions()
        .await
        .map_err(|e| StartError::Runtime(e.to_string()))?
    else {
        return Ok((false, Vec::new()));
    };
    // A listing only: no signature is made, the public keys give the kids.
    let rows = keys::list_remote(
        &set,
        now,
        config.tokens.max_ttl,
        config.keys.publish_lead,
        std::sync::Arc::new(NoSigner),
    )
    .map_err(|e| StartError::Runtime(e.to_string()))?;
    Ok((true, rows))
}

/// The signer of a listing, which never signs.
#[derive(Debug)]
struct NoSigner;

#[async_trait::async_trait]
impl keys::signing_key::RemoteSign for NoSigner {
    async fn sign(&self, _: u64, _: &[u8]) -> Result<Vec<u8>, keys::signing_key::KeyMaterialError> {
        Err(keys::signing_key::KeyMaterialError::NotLocal)
    }
}

/// `keys rotate` with `keys.store = "transit"`: creates the Transit key (its first
/// version signs at once) or adds a version (published now, signs `publish_lead`
/// after its creation); refuses while a version is pending, unless `force`.
async fn rotate_remote(
    remote: &dyn keys::RemoteKeys,
    config: &Config,
    now: u64,
    force: bool,
) -> Result<(), StartError> {
    let runtime = |e: String| StartError::Runtime(e);
    let (_, rows) = remote_rows(remote, config, now).await?;
    if let (Some(next), false) = (rows.iter().find(|k| k.state == keys::KeyState::Next), force) {
        return Err(runtime(format!(
            "key {} is still pending: it starts signing at {}; rotate after that, or pass --force to add another next key now",
            next.kid,
            rfc3339(next.activates_at)
        )));
    }
    let outcome = remote
        .rotate(config.tokens.algorithm)
        .await
        .map_err(|e| runtime(e.to_string()))?;
    // Vault dates the new version; list it at our time after it was made.
    let now = identity::unix_now().max(now);
    let (_, rows) = remote_rows(remote, config, now).await?;
    let newest = rows
        .iter()
        .max_by_key(|r| (r.activates_at, r.created_at))
        .ok_or_else(|| runtime(format!("{}: no version after rotating", remote.location())))?;
    println!(
        "created {} ({}, {})",
        newest.kid,
        config.tokens.algorithm.as_str(),
        newest.state.as_str()
    );
    if outcome == keys::RemoteRotation::Created {
        println!(
            "the transit key was created: this is its first version, active at once; in {}",
            remote.location()
        );
    } else {
        println!(
            "published now, signs from {} (in {} s)",
            rfc3339(newest.activates_at),
            newest.activates_at.saturating_sub(now)
        );
        println!("rotated {}", remote.location());
    }
    Ok(())
}

fn rfc3339(unix: u64) -> String {
    keys::format_timestamp(unix).unwrap_or_else(|| format!("{unix} (out of range)"))
}
