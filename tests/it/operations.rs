//! What an on-call sees of a running STS, through the real binary: the admin listener
//! and the metrics on it (issue 16, item 6), logs as JSON lines without the HTTP
//! stack's chatter, and reload logs that report changes rather than the steady state
//! (item 5).

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;
use crate::process::*;

/// `agent-sts serve --config CONFIG` on 127.0.0.1:0 with an admin listener on
/// 127.0.0.1:0 and `env`; returns the process and the admin URL.
fn serve_with_admin(
    config: &Path,
    dir: &Path,
    log: &str,
    env: &[(&str, &str)],
) -> (ServeProcess, String) {
    let args = [
        OsStr::new("serve"),
        OsStr::new("--config"),
        config.as_os_str(),
    ];
    let mut all = vec![
        ("AGENT_STS_SERVER_LISTEN", "127.0.0.1:0"),
        ("AGENT_STS_SERVER_ADMIN_LISTEN", "127.0.0.1:0"),
    ];
    all.extend_from_slice(env);
    let sts = ServeProcess::spawn(&args, &all, dir, log, |_, err| {
        listen_address(err, "agent-sts admin serving")?;
        listen_address(err, "agent-sts serving")
    });
    let err = std::fs::read_to_string(&sts.stderr).unwrap();
    let admin = listen_address(&err, "agent-sts admin serving").unwrap();
    (sts, admin)
}

/// The value of the sample `name` (with its labels, as written) in `exposition`.
fn sample(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// `server.admin_listen`: `/metrics` leaves the public port and is served, with
/// `/healthz` and `/readyz`, on the admin listener; the exposition carries the build,
/// process, reload, audit, JWKS and key-timeline figures, every counter ends in
/// `_total` (once), and no label holds a subject or a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_serves_metrics_an_on_call_needs_and_the_public_port_does_not() {
    let issuers = Issuers::start().await;
    let (dir, config) = sts_dir(&issuers);
    let c = config.to_str().unwrap();
    assert!(
        run(&["keys", "rotate", "--config", c], dir.path())
            .status
            .success()
    );
    assert!(
        run(&["keys", "rotate", "--config", c], dir.path())
            .status
            .success(),
        "a next key, so the next activation is in the future"
    );
    let (sts, admin) = serve_with_admin(&config, dir.path(), "info", &[]);
    let subject = issuers.k8s_token("triage");
    let r = post_form(
        &format!("{}/token", sts.url),
        exchange_form(&subject, "docs.read"),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let access = r.token();

    let public = reqwest::get(format!("{}/metrics", sts.url)).await.unwrap();
    assert_eq!(public.status(), 404, "/metrics is off the public port");
    for path in ["/healthz", "/readyz"] {
        let on_public = reqwest::get(format!("{}{path}", sts.url)).await.unwrap();
        assert_eq!(on_public.status(), 200, "{path} stays on the public port");
        let on_admin = reqwest::get(format!("{admin}{path}")).await.unwrap();
        assert_eq!(on_admin.status(), 200, "{path} on the admin port");
    }
    let answer = reqwest::get(format!("{admin}/metrics")).await.unwrap();
    assert_eq!(answer.status(), 200);
    let metrics = answer.text().await.unwrap();
    assert!(admin_has_no_token_endpoint(&admin).await);

    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        sample(
            &metrics,
            &format!("agent_sts_build_info{{version=\"{version}\"}}")
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(sample(&metrics, "agent_sts_process_resident_memory_bytes").unwrap() > 1e6);
    assert!(sample(&metrics, "agent_sts_process_open_fds").unwrap() >= 3.0);
    assert!(sample(&metrics, "agent_sts_process_cpu_seconds_total").unwrap() >= 0.0);
    let started = sample(&metrics, "agent_sts_process_start_time_seconds").unwrap();
    assert!((unix_now() - started).abs() < 120.0, "start time {started}");
    assert_eq!(
        sample(&metrics, "agent_sts_catalogue_reload_failures_total"),
        Some(0.0)
    );
    assert_eq!(
        sample(&metrics, "agent_sts_audit_write_failures_total"),
        Some(0.0)
    );
    let fetched = sample(
        &metrics,
        "agent_sts_jwks_last_success_seconds{trust=\"k8s-prod\"}",
    )
    .unwrap();
    assert!((unix_now() - fetched).abs() < 60.0, "{metrics}");
    let age = sample(&metrics, "agent_sts_signing_key_age_seconds").unwrap();
    assert!((0.0..60.0).contains(&age), "{age}");
    let next = sample(&metrics, "agent_sts_signing_key_next_activation_seconds").unwrap();
    assert!(next > 500.0 && next <= 610.0, "publish_lead is 10m: {next}");
    assert_eq!(
        sample(
            &metrics,
            "agent_sts_tokens_issued_total{action=\"docs.read\"}"
        ),
        Some(1.0)
    );

    // Every counter's samples end in `_total`, added once by the encoder.
    let counters: Vec<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    assert!(counters.len() >= 7, "{metrics}");
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap();
        if let Some(counter) = counters.iter().find(|c| name.starts_with(*c)) {
            assert!(
                name == format!("{counter}_total") || name == format!("{counter}_created"),
                "{line}"
            );
        }
        assert!(!name.ends_with("_total_total"), "{line}");
    }
    for secret in [
        subject.as_str(),
        access.as_str(),
        "system:serviceaccount",
        "triage",
    ] {
        assert!(!metrics.contains(secret), "a label carries {secret:?}");
    }
    drop(sts);
}

/// The admin listener serves only its three routes.
async fn admin_has_no_token_endpoint(admin: &str) -> bool {
    let r = reqwest::Client::new()
        .post(format!("{admin}/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=x")
        .send()
        .await
        .unwrap();
    r.status() == 404
}

/// `[log] format = "json"`: one JSON object per line, fields at the top level;
/// `AGENT_STS_LOG=debug` shows the STS's debug lines but none of hyper's, h2's,
/// rustls's or reqwest's (a JWKS fetch happens); `AGENT_STS_LOG_FORMAT=text` wins over
/// the file, and an unknown format is an error naming the variable (exit 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_without_the_http_stack_at_debug() {
    let issuers = Issuers::start().await;
    let (dir, config) = sts_files(
        &issuers.specs(),
        SCOPES,
        "\n[log]\nformat = \"json\"\n",
        ConfigTweaks::default(),
    );
    let c = config.to_str().unwrap();
    assert!(
        run(&["keys", "rotate", "--config", c], dir.path())
            .status
            .success()
    );
    let args = [
        OsStr::new("serve"),
        OsStr::new("--config"),
        config.as_os_str(),
    ];
    let env = [("AGENT_STS_SERVER_LISTEN", "127.0.0.1:0")];
    let sts = ServeProcess::spawn(&args, &env, dir.path(), "debug", |_, err| {
        err.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["message"] == "agent-sts serving")
            .and_then(|v| v["listen"].as_str().map(|a| format!("http://{a}")))
    });
    let subject = issuers.k8s_token("triage");
    let r = post_form(
        &format!("{}/token", sts.url),
        exchange_form(&subject, "docs.read"),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let (_, stderr) = sts.stop();

    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    assert!(lines.iter().any(|l| l["level"] == "DEBUG"), "{stderr}");
    let decision = lines
        .iter()
        .find(|l| l["target"] == "agent_sts::decision")
        .unwrap_or_else(|| panic!("no decision event: {stderr}"));
    assert_eq!(decision["decision"], "allow");
    assert_eq!(decision["action"], "docs.read");
    for line in &lines {
        let target = line["target"].as_str().unwrap();
        for noisy in ["hyper", "h2", "rustls", "reqwest"] {
            assert!(
                target != noisy && !target.starts_with(&format!("{noisy}::")),
                "{line}"
            );
        }
    }
    assert!(!stderr.contains(&subject));
    assert!(!stderr.contains(&r.token()));

    // The variable wins over the file; an unknown format is refused naming it.
    let check = |format: &str| {
        std::process::Command::new(BIN)
            .args(["keys", "list", "--config", c])
            .current_dir(dir.path())
            .env("AGENT_STS_LOG", "debug")
            .env("AGENT_STS_LOG_FORMAT", format)
            .output()
            .unwrap()
    };
    let text_out = check("text");
    assert!(text_out.status.success(), "{}", text(&text_out.stderr));
    let yaml = check("yaml");
    assert_eq!(yaml.status.code(), Some(2));
    assert!(
        text(&yaml.stderr).contains("AGENT_STS_LOG_FORMAT"),
        "{}",
        text(&yaml.stderr)
    );
}

/// A periodic reload logs changes, not the steady state: nothing at `info` while
/// nothing changes; `scope catalogue changed` naming the action added; a broken
/// catalogue logged once with every error, however many reloads keep failing; `signing
/// key published` when `keys rotate` adds one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_log_what_changed_and_each_failure_once_with_every_error() {
    let issuers = Issuers::start().await;
    let (dir, config) = sts_dir(&issuers);
    let c = config.to_str().unwrap();
    assert!(
        run(&["keys", "rotate", "--config", c], dir.path())
            .status
            .success()
    );
    let sts = ServeProcess::start(&config, dir.path(), "info");
    // Refresh every 1 s: three quiet reloads.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let quiet = std::fs::read_to_string(&sts.stderr).unwrap();
    let reload_lines = |log: &str, what: &str| log.lines().filter(|l| l.contains(what)).count();
    assert_eq!(reload_lines(&quiet, "loaded scope catalogue"), 1, "{quiet}");
    assert_eq!(reload_lines(&quiet, "scope catalogue"), 1, "{quiet}");

    // A new action, deployed by rename.
    let scopes = dir.path().join("scopes");
    let staged = scopes.join(".extra.toml.tmp");
    std::fs::write(
        &staged,
        "[[action]]\nname = \"reports.read\"\naudience = \"https://reports.internal\"\nagents = [\"k8s-prod:system:serviceaccount:agents:*\"]\n",
    )
    .unwrap();
    std::fs::rename(&staged, scopes.join("extra.toml")).unwrap();
    let changed = wait_for_log(&sts, "scope catalogue changed", 8).await;
    assert!(changed.contains("reports.read"), "{changed}");

    // Two errors in one broken file: one line with both, logged once.
    std::fs::write(
        &staged,
        "[[action]]\nname = \"bad.one\"\naudience = \"https://x.internal\"\nagents = [\"nosuchtrust:a\"]\n\n[[action]]\nname = \"bad.two\"\naudience = \"https://x.internal\"\nagents = [\"othertrust:b\"]\n",
    )
    .unwrap();
    std::fs::rename(&staged, scopes.join("broken.toml")).unwrap();
    let failed = wait_for_log(&sts, "catalogue reload failed", 8).await;
    assert!(
        failed.contains("nosuchtrust") && failed.contains("othertrust"),
        "{failed}"
    );
    tokio::time::sleep(Duration::from_millis(3000)).await;

    // A key published while it runs.
    assert!(
        run(&["keys", "rotate", "--config", c], dir.path())
            .status
            .success()
    );
    wait_for_log(&sts, "signing key published", 8).await;
    let (_, log) = sts.stop();
    assert_eq!(
        reload_lines(&log, "catalogue reload failed;"),
        1,
        "one line per distinct failure:\n{log}"
    );
    assert_eq!(reload_lines(&log, "loaded scope catalogue"), 1, "{log}");
}

/// Waits up to `secs` for a log line of `sts` containing `what`; returns it.
async fn wait_for_log(sts: &ServeProcess, what: &str, secs: u64) -> String {
    for _ in 0..secs * 10 {
        let log = std::fs::read_to_string(&sts.stderr).unwrap();
        if let Some(line) = log.lines().find(|l| l.contains(what)) {
            return line.to_string();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "no {what:?} in the log:\n{}",
        std::fs::read_to_string(&sts.stderr).unwrap()
    );
}
