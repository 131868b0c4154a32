//! Where log lines go and what they look like: stderr, as text for people or as one
//! JSON object per line for machines (`[log] format`, `AGENT_STS_LOG_FORMAT`).
//!
//! It exists so the filter rules live in one tested place rather than in `main`: the
//! filter comes from `AGENT_STS_LOG` (or `RUST_LOG`) and a filter that does not parse
//! is an error naming the variable, never a silent fallback; the HTTP and TLS stack's
//! own debug chatter (hyper, h2, rustls, reqwest) is held at `warn` unless the filter
//! names that crate, so `AGENT_STS_LOG=debug` shows this program's decisions rather
//! than every socket read. Nothing here decides what is logged: callers never put a
//! token, secret or Vault token in an event (README, "Security properties" 1).

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (tracing's default formatter).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, the event's fields
    /// at the top level, and the span it happened in.
    Json,
}

impl LogFormat {
    /// `"text"` or `"json"`.
    pub fn from_name(name: &str) -> Option<LogFormat> {
        match name {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// The variable that chooses the format over the configuration's `[log] format`.
pub const FORMAT_VAR: &str = "AGENT_STS_LOG_FORMAT";

/// Dependencies whose debug and trace events are connection plumbing: held at `warn`
/// unless the filter names them (a directive's target starting with the name).
pub const QUIET_UNLESS_NAMED: &[&str] = &["hyper", "h2", "rustls", "reqwest"];

/// `spec` with `CRATE=warn` added for each of [`QUIET_UNLESS_NAMED`] it does not name.
/// A more specific directive wins in tracing's filter, so `debug` stays `debug` for
/// everything else.
pub fn with_quiet_dependencies(spec: &str) -> String {
    let named = |krate: &str| {
        spec.split(',').any(|directive| {
            let target = directive
                .trim()
                .split(['=', '['])
                .next()
                .unwrap_or_default();
            target == krate || target.starts_with(&format!("{krate}::"))
        })
    };
    let mut out = spec.trim().to_string();
    for krate in QUIET_UNLESS_NAMED {
        if !named(krate) {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(krate);
            out.push_str("=warn");
        }
    }
    out
}

/// The filter: `variable` (its name and value) when set, else `default`. A value that
/// does not parse is an error naming the variable.
pub fn filter(
    variable: Option<(&str, &str)>,
    default: &str,
) -> Result<tracing_subscriber::EnvFilter, String> {
    let spec = match variable {
        Some((name, value)) => {
            tracing_subscriber::EnvFilter::builder()
                .parse(value)
                .map_err(|e| {
                    format!("{name}: not a log filter ({e}); e.g. info, or agent_sts=debug")
                })?;
            value
        }
        None => default,
    };
    tracing_subscriber::EnvFilter::builder()
        .parse(with_quiet_dependencies(spec))
        .map_err(|e| format!("log filter {spec:?}: {e}"))
}

/// The format: `AGENT_STS_LOG_FORMAT` when set (an unknown value is an error naming
/// it), else the configuration's, else text.
pub fn format(variable: Option<&str>, configured: Option<LogFormat>) -> Result<LogFormat, String> {
    match variable {
        Some(value) => LogFormat::from_name(value.trim())
            .ok_or_else(|| format!("{FORMAT_VAR}: must be \"text\" or \"json\", not {value:?}")),
        None => Ok(configured.unwrap_or_default()),
    }
}

/// Installs the process's subscriber: `filter`, `format`, to stderr (colours only on
/// a terminal, and never in JSON); and, when `traces` is given, the layer that exports
/// this program's spans to it ([`super::traces`]), which the log filter does not
/// narrow. Without `traces` the subscriber is exactly the logging one.
pub fn install(
    filter: tracing_subscriber::EnvFilter,
    format: LogFormat,
    traces: Option<&opentelemetry_sdk::trace::SdkTracerProvider>,
) {
    use std::io::IsTerminal;
    let Some(provider) = traces else {
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match format {
            LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
            LogFormat::Json => builder
                .json()
                .flatten_event(true)
                .with_span_list(false)
                .init(),
        }
        return;
    };
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    type Boxed = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines: Boxed = match format {
        LogFormat::Text => lines
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => lines
            .json()
            .flatten_event(true)
            .with_span_list(false)
            .with_filter(filter)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(lines)
        .with(super::traces::layer(provider))
        .init();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn dependencies_are_quiet_unless_the_filter_names_them() {
        assert_eq!(
            with_quiet_dependencies("debug"),
            "debug,hyper=warn,h2=warn,rustls=warn,reqwest=warn"
        );
        assert_eq!(
            with_quiet_dependencies("debug,hyper=trace"),
            "debug,hyper=trace,h2=warn,rustls=warn,reqwest=warn"
        );
        assert_eq!(
            with_quiet_dependencies("info,reqwest::connect=debug,rustls[x]=info"),
            "info,reqwest::connect=debug,rustls[x]=info,hyper=warn,h2=warn"
        );
        // `hyper_util` is hyper's: a directive for it names it, not hyper.
        assert!(with_quiet_dependencies("hyper_util=debug").contains(",hyper=warn"));
    }

    #[test]
    fn a_bad_filter_or_format_names_its_variable() {
        let e = filter(Some(("AGENT_STS_LOG", "agent_sts=[[[")), "info").unwrap_err();
        assert!(e.starts_with("AGENT_STS_LOG:"), "{e}");
        assert!(filter(Some(("RUST_LOG", "debug")), "info").is_ok());
        let e = format(Some("yaml"), None).unwrap_err();
        assert!(e.starts_with(FORMAT_VAR), "{e}");
        assert_eq!(
            format(Some("json"), Some(LogFormat::Text)),
            Ok(LogFormat::Json)
        );
        assert_eq!(format(None, Some(LogFormat::Json)), Ok(LogFormat::Json));
        assert_eq!(format(None, None), Ok(LogFormat::Text));
    }
}
