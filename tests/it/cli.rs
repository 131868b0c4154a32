//! The command-line contract (DESIGN.md): commands, `--help`, exit codes 0/1/2, errors
//! naming the file and the key, `keys list` never printing key material.

use crate::harness::*;
use crate::process::*;

#[test]
fn every_command_has_help() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["dev", "--help"],
        vec!["keys", "rotate", "--help"],
        vec!["keys", "list", "--help"],
        vec!["scopes", "check", "--help"],
        vec!["audit", "verify", "--help"],
    ] {
        let out = run(&args, dir.path());
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("Usage"), "{args:?}");
    }
    let out = run(&["frobnicate"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["serve"], dir.path());
    assert_eq!(out.status.code(), Some(2), "missing --config is bad usage");
}

#[test]
fn invalid_configuration_exits_2_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[server]\nissuer = \"https://sts\"\n[tokens]\nmax_ttl = \"3h\"\n",
    )
    .unwrap();
    let out = run(&["serve", "--config", config.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("tokens.max_ttl"),
        "{err}"
    );

    std::fs::write(
        &config,
        "[server]\nissuer = \"https://sts\"\nlisten_addr = \"x\"\n",
    )
    .unwrap();
    let out = run(
        &["keys", "list", "--config", config.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("listen_addr"),
        "{err}"
    );

    let out = run(
        &["serve", "--config", "/nonexistent/agent-sts.toml"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/agent-sts.toml"));
}

#[test]
fn scopes_check_prints_actions_or_file_and_line() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = run(&["scopes", "check", "scopes"], repo);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    for action in [
        "github.issues.create",
        "salesforce.opportunity.update",
        "slack.message.post",
        "docs.read",
    ] {
        assert!(listing.contains(action), "{listing}");
    }

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("scopes")).unwrap();
    std::fs::write(
        dir.path().join("scopes/bad.toml"),
        "[[action]]\nname = \"x.y\"\naudience = \"https://a\"\nttl = \"1m\"\nagents = [\"k8s-staging:sa\"]\n",
    )
    .unwrap();
    let out = run(&["scopes", "check", "scopes"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("scopes/bad.toml:5") && err.contains("k8s-staging"),
        "{err}"
    );
}

#[tokio::test]
async fn keys_rotate_and_list_follow_the_lifecycle_without_printing_keys() {
    let issuers = Issuers::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent-sts.toml");
    std::fs::write(&config, config_toml(dir.path(), &issuers.specs(), "")).unwrap();
    let c = config.to_str().unwrap();

    let first = run(&["keys", "rotate", "--config", c], dir.path());
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(
        text(&first.stdout).contains("active"),
        "empty ring: active at once"
    );
    let second = run(&["keys", "rotate", "--config", c], dir.path());
    assert!(
        text(&second.stdout).contains("next"),
        "{}",
        text(&second.stdout)
    );

    let list = run(&["keys", "list", "--config", c], dir.path());
    assert!(list.status.success());
    let listing = text(&list.stdout);
    assert!(
        listing.contains("active") && listing.contains("next"),
        "{listing}"
    );
    let ring = std::fs::read_to_string(dir.path().join("keys/signing-keys.json")).unwrap();
    let ring: serde_json::Value = serde_json::from_str(&ring).unwrap();
    for key in ring["keys"].as_array().unwrap() {
        let pem = key["private_key"].as_str().unwrap();
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!listing.contains(line));
        }
        assert!(listing.contains(key["kid"].as_str().unwrap()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("keys/signing-keys.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "key file readable by others: {mode:o}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_an_empty_keyring_runs_not_ready_and_refuses_with_503() {
    let issuers = Issuers::start().await;
    let (dir, config) = sts_dir(&issuers);
    let sts = ServeProcess::start(&config, dir.path(), "info");
    let ready = reqwest::get(format!("{}/readyz", sts.url)).await.unwrap();
    assert_eq!(ready.status(), 503);
    let r = post_form(
        &format!("{}/token", sts.url),
        exchange_form(&issuers.k8s_token("triage"), "docs.read"),
    )
    .await;
    r.assert_error(503, "temporarily_unavailable", &[]);
    assert!(r.headers.contains_key("retry-after"));
    assert!(
        !dir.path().join("keys/signing-keys.json").exists(),
        "serve never creates keys"
    );

    // `keys rotate` while it runs: picked up within refresh_interval, no restart.
    let c = config.to_str().unwrap();
    assert!(
        run(&["keys", "rotate", "--config", c], dir.path())
            .status
            .success()
    );
    let mut issued = false;
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let r = post_form(
            &format!("{}/token", sts.url),
            exchange_form(&issuers.k8s_token("triage"), "docs.read"),
        )
        .await;
        if r.status == 200 {
            issued = true;
            break;
        }
    }
    assert!(issued, "the new key was not picked up");
    drop(sts);
}

#[tokio::test]
async fn audit_verify_passes_a_real_log_and_fails_at_the_first_broken_link() {
    let (sts, issuers) = TestSts::standard().await;
    for scope in ["docs.read", "github.issues.create", "nope"] {
        sts.exchange_for(&issuers.k8s_token("triage"), scope).await;
    }
    sts.exchange(&[("grant_type", "password")]).await;
    let path = sts.audit_path();
    let p = path.to_str().unwrap();
    let ok = run(&["audit", "verify", p], sts.dir.path());
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(text(&ok.stdout).contains("4 lines"), "{}", text(&ok.stdout));

    let log = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines[1].contains("\"decision\":\"allow\""), "{}", lines[1]);
    let edited = log.replacen("\"decision\":\"deny\"", "\"decision\":\"allow\"", 1);
    std::fs::write(&path, edited).unwrap();
    let bad = run(&["audit", "verify", p], sts.dir.path());
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad.stderr).contains("line"), "{}", text(&bad.stderr));
}

/// Insecure setups do not start without a word: a secrets file others can read (as
/// ssh refuses a readable private key, naming the file and the fix), Vault over plain
/// http to another host, two trusts claiming one SPIFFE trust domain.
#[test]
fn insecure_configurations_exit_2_and_say_why() {
    use std::os::unix::fs::PermissionsExt;

    let issuers = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(Issuers::start());
    let (dir, config) = sts_dir(&issuers);
    let secrets = dir.path().join("secrets.toml");
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&["serve", "--config", config.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("secrets.toml") && err.contains("chmod 600"),
        "{err}"
    );
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();

    let original = std::fs::read_to_string(&config).unwrap();
    let cases = [
        (
            "\n[vault]\naddress = \"http://vault.example.org:8200\"\n",
            "vault.address",
        ),
        (
            "\n[[trust]]\nname = \"spire-2\"\nissuer = \"https://spire-2.example.org\"\njwks_uri = \"https://spire-2.example.org/jwks\"\nalgorithms = [\"ES256\"]\nspiffe_trust_domains = [\"example.org\"]\n",
            "spiffe_trust_domains",
        ),
    ];
    for (extra, key) in cases {
        std::fs::write(&config, format!("{original}{extra}")).unwrap();
        let out = run(&["serve", "--config", config.to_str().unwrap()], dir.path());
        assert_eq!(out.status.code(), Some(2), "{key}");
        let err = text(&out.stderr);
        assert!(err.contains(key), "{key}: {err}");
    }
}

/// With `[audit] max_file_bytes`, the log rotates into `audit.log.1`, `.2`, ... and
/// the chain continues across files: `audit verify` over all of them, oldest first,
/// passes; over the newest alone it says which earlier file it continues; in the
/// wrong order it fails.
#[tokio::test]
async fn a_rotated_audit_log_verifies_as_one_chain() {
    let issuers = Issuers::start().await;
    let sts = TestSts::start(
        &issuers.specs(),
        SCOPES,
        "max_file_bytes = 65536\n[limits]\nrate_per_second = 100000\nrate_burst = 100000\n",
    )
    .await;
    let token = issuers.k8s_token("triage");
    let audit = sts.audit_path();
    let first = std::path::PathBuf::from(format!("{}.1", audit.display()));
    let mut exchanges = 0;
    while !std::path::PathBuf::from(format!("{}.2", audit.display())).exists() {
        assert_eq!(sts.exchange_for(&token, "docs.read").await.status, 200);
        exchanges += 1;
        assert!(exchanges < 5000, "no rotation after {exchanges} exchanges");
    }
    assert!(first.exists());
    // One more, so the current file holds a line of its own.
    assert_eq!(sts.exchange_for(&token, "docs.read").await.status, 200);
    exchanges += 1;
    let second = format!("{}.2", audit.display());
    let (first, current) = (first.display().to_string(), audit.display().to_string());

    let all = run(
        &["audit", "verify", &first, &second, &current],
        sts.dir.path(),
    );
    assert!(all.status.success(), "{}", text(&all.stderr));
    let out = text(&all.stdout);
    assert!(out.contains(&format!("{exchanges} lines")), "{out}");
    assert!(!out.contains("continues"), "{out}");

    // The newest file alone starts mid-chain: refused (lines deleted from the head
    // look the same), unless declared a continuation.
    let newest = run(&["audit", "verify", &current], sts.dir.path());
    assert_eq!(newest.status.code(), Some(1));
    let newest = run(
        &["audit", "verify", "--continued", &current],
        sts.dir.path(),
    );
    assert!(newest.status.success(), "{}", text(&newest.stderr));
    assert!(text(&newest.stdout).contains("continues an earlier file"));

    let swapped = run(&["audit", "verify", &second, &first], sts.dir.path());
    assert_eq!(swapped.status.code(), Some(1));
}

/// The base64 lines of every private key in `ring` (what no output may show).
fn pem_lines(ring: &serde_json::Value) -> Vec<String> {
    ring["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["private_key"].as_str())
        .flat_map(|p| p.lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .collect()
}

/// `keys list` and `keys rotate` run the check `serve` runs: on a ring `serve` would
/// refuse they exit 1 with the reason on stderr, print no listing, never panic, and
/// write nothing.
#[tokio::test]
async fn keys_list_and_rotate_refuse_a_ring_serve_would_refuse() {
    let issuers = Issuers::start().await;
    let (dir, config) = sts_dir(&issuers);
    let c = config.to_str().unwrap();
    let rotated = run(&["keys", "rotate", "--config", c], dir.path());
    assert!(rotated.status.success(), "{}", text(&rotated.stderr));
    let path = dir.path().join("keys/signing-keys.json");
    let good: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let kid = good["keys"][0]["kid"].as_str().unwrap().to_string();

    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit, &str); 7] = [
        (
            "duplicate kid",
            |r| {
                let copy = r["keys"][0].clone();
                r["keys"].as_array_mut().unwrap().push(copy);
            },
            "duplicate kid",
        ),
        (
            "unparsable key",
            |r| {
                let pem = r["keys"][0]["private_key"].as_str().unwrap();
                r["keys"][0]["private_key"] = pem.replacen("MIG", "AAA", 1).into();
            },
            "does not parse for ES256",
        ),
        (
            "unknown field",
            |r| r["keys"][0]["rotated_by"] = "alice".into(),
            "unknown field `rotated_by`",
        ),
        (
            "activates_at past year 9999",
            |r| r["keys"][0]["activates_at"] = 253_402_300_800u64.into(),
            "activates_at 253402300800 is out of range",
        ),
        (
            "activates_at u64::MAX",
            |r| r["keys"][0]["activates_at"] = u64::MAX.into(),
            "activates_at 18446744073709551615 is out of range",
        ),
        (
            "created_at past year 9999",
            |r| r["keys"][0]["created_at"] = 300_000_000_000u64.into(),
            "created_at 300000000000 is out of range",
        ),
        (
            "activates_at beyond u64",
            |r| r["keys"][0]["activates_at"] = serde_json::json!(1e30),
            "wrong type or is out of range",
        ),
    ];
    for (name, edit, reason) in cases {
        let mut ring = good.clone();
        edit(&mut ring);
        let bytes = serde_json::to_vec_pretty(&ring).unwrap();
        write_secret_file(&path, &bytes);
        let secrets = pem_lines(&ring);
        for command in ["list", "rotate"] {
            let out = run(&["keys", command, "--config", c], dir.path());
            let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
            assert_eq!(
                out.status.code(),
                Some(1),
                "{name}, keys {command}: {stderr}"
            );
            assert!(stderr.contains(reason), "{name}, keys {command}: {stderr}");
            assert!(!stderr.contains("panicked"), "{name}: {stderr}");
            assert!(stdout.is_empty(), "{name}, keys {command}: {stdout}");
            for line in &secrets {
                assert!(!stderr.contains(line.as_str()), "{name}: key material");
            }
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "{name}: written");
        }
        // Problems of one key name it by index and kid; parse errors by position.
        let parse_error = name == "unknown field" || name == "activates_at beyond u64";
        let stderr = text(&run(&["keys", "list", "--config", c], dir.path()).stderr);
        assert_eq!(stderr.contains(&kid), !parse_error, "{name}: {stderr}");
        assert_eq!(stderr.contains("line "), parse_error, "{name}: {stderr}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path().join("keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["signing-keys.json"], "temporary files left");

    // Back to the good ring: both work again.
    write_secret_file(&path, serde_json::to_vec_pretty(&good).unwrap());
    let list = run(&["keys", "list", "--config", c], dir.path());
    assert!(list.status.success(), "{}", text(&list.stderr));
    assert!(text(&list.stdout).contains(&kid));
}

/// A running `serve` whose keyring file gets an unknown field keeps signing with the
/// last good ring (the file store has no `max_stale`), `/readyz` names the field, and
/// the reason is logged once, not on every refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_keeps_the_last_good_ring_when_the_keyring_file_turns_invalid() {
    let issuers = Issuers::start().await;
    let (dir, config) = sts_dir(&issuers);
    let text_config = std::fs::read_to_string(&config)
        .unwrap()
        .replace("refresh_interval = \"1s\"", "refresh_interval = \"200ms\"");
    std::fs::write(&config, text_config).unwrap();
    let c = config.to_str().unwrap();
    assert!(
        run(&["keys", "rotate", "--config", c], dir.path())
            .status
            .success()
    );
    let sts = ServeProcess::start(&config, dir.path(), "info");
    let token = || issuers.k8s_token("triage");
    let exchange = || async {
        post_form(
            &format!("{}/token", sts.url),
            exchange_form(&token(), "docs.read"),
        )
        .await
    };
    let first = exchange().await;
    assert_eq!(first.status, 200, "{first:?}");
    let kid = jsonwebtoken::decode_header(first.token())
        .unwrap()
        .kid
        .unwrap();

    let path = dir.path().join("keys/signing-keys.json");
    let good = std::fs::read(&path).unwrap();
    let mut ring: serde_json::Value = serde_json::from_slice(&good).unwrap();
    ring["keys"][0]["rotated_by"] = "alice".into();
    write_secret_file(&path, serde_json::to_vec_pretty(&ring).unwrap());
    let readyz =
        || async { reply(reqwest::get(format!("{}/readyz", sts.url)).await.unwrap()).await };
    let noticed = crate::vault::eventually(5, || async {
        readyz().await.json()["checks"]["keyring"]
            .as_str()
            .is_some_and(|k| k.contains("unknown field `rotated_by`"))
    })
    .await;
    assert!(noticed, "{:?}", readyz().await);
    // Several refreshes later: still signing with the last good key, still published.
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let ready = readyz().await;
    assert_eq!(ready.status, 200, "{ready:?}");
    assert!(
        ready.json()["checks"]["keyring"]
            .as_str()
            .unwrap()
            .contains("rotated_by")
    );
    let r = exchange().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        jsonwebtoken::decode_header(r.token()).unwrap().kid.unwrap(),
        kid
    );
    let jwks = reqwest::get(format!("{}/.well-known/jwks.json", sts.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(jwks.contains(&kid), "{jwks}");

    // Fixed: the error clears.
    write_secret_file(&path, &good);
    let healed = crate::vault::eventually(5, || async {
        readyz().await.json()["checks"]["keyring"] == "ok"
    })
    .await;
    assert!(healed);
    let (_, log) = sts.stop();
    let failures = log
        .lines()
        .filter(|l| l.contains("keyring refresh failed"))
        .count();
    assert_eq!(failures, 1, "logged once per distinct reason:\n{log}");
    assert!(log.contains("unknown field `rotated_by`"), "{log}");
}

/// Relative paths in a configuration file resolve against the file's directory, not
/// the working directory: `keys rotate` from elsewhere writes the ring next to the
/// config and says where (and that it made the first key); `keys list` from a third
/// directory reads it back; nothing lands in the working directories.
#[test]
fn relative_paths_resolve_against_the_config_file_not_the_working_directory() {
    let home = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let third = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join("scopes")).unwrap();
    std::fs::write(
        home.path().join("scopes/test.toml"),
        "[[action]]\nname = \"docs.read\"\naudience = \"https://docs.internal\"\nagents = [\"k8s-prod:system:serviceaccount:agents:*\"]\n",
    )
    .unwrap();
    std::fs::write(home.path().join("k8s-jwks.json"), "{\"keys\": []}").unwrap();
    let config = home.path().join("prod.toml");
    std::fs::write(
        &config,
        "[server]\nissuer = \"https://sts.example.org\"\nscopes_dir = \"scopes\"\n\n[keys]\nstore = \"file\"\ndir = \"keys\"\n\n[[trust]]\nname = \"k8s-prod\"\nissuer = \"https://kubernetes.default.svc\"\njwks_file = \"k8s-jwks.json\"\nalgorithms = [\"RS256\"]\n\n[audit]\npath = \"audit.log\"\n",
    )
    .unwrap();
    let c = config.to_str().unwrap();

    let out = run(&["keys", "rotate", "--config", c], elsewhere.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    let ring = home.path().join("keys/signing-keys.json");
    assert!(ring.is_file(), "the ring is not next to the config");
    assert!(said.contains("first key"), "{said}");
    let canonical = std::fs::canonicalize(&ring).unwrap();
    assert!(
        said.contains(&ring.display().to_string())
            || said.contains(&canonical.display().to_string()),
        "the absolute path written is not printed: {said}"
    );
    assert!(!elsewhere.path().join("keys").exists());

    let out = run(&["keys", "list", "--config", c], third.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("active"),
        "{}",
        text(&out.stdout)
    );
    let out = run(&["scopes", "check", "--config", c], third.path());
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    for dir in [elsewhere.path(), third.path()] {
        assert_eq!(
            std::fs::read_dir(dir).unwrap().count(),
            0,
            "wrote into the cwd"
        );
    }
}

/// A log filter that does not parse is an error naming the variable (exit 2), not a
/// silent fallback to the default.
#[test]
fn an_invalid_log_filter_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args([
            "scopes",
            "check",
            concat!(env!("CARGO_MANIFEST_DIR"), "/scopes"),
        ])
        .current_dir(dir.path())
        .env("AGENT_STS_LOG", "agent_sts=[[[")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("AGENT_STS_LOG"),
        "{}",
        text(&out.stderr)
    );
    // The same command with a good filter succeeds.
    let ok = std::process::Command::new(BIN)
        .args([
            "scopes",
            "check",
            concat!(env!("CARGO_MANIFEST_DIR"), "/scopes"),
        ])
        .current_dir(dir.path())
        .env("AGENT_STS_LOG", "agent_sts=debug")
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", text(&ok.stderr));
}

/// `keys rotate` guardrails: the second rotation says when its key starts signing; a
/// third while that key is still `next` is refused (exit 1, nothing written) unless
/// `--force`; `keys list` shows when each key retires and leaves the JWKS.
#[test]
fn rotate_refuses_to_overtake_a_pending_key_and_list_shows_the_timeline() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sts.toml");
    std::fs::write(
        &config,
        "[server]\nissuer = \"https://sts.example.org\"\n\n[keys]\ndir = \"keys\"\npublish_lead = \"10m\"\njwks_max_age = \"5m\"\n",
    )
    .unwrap();
    let c = config.to_str().unwrap();
    let first = run(&["keys", "rotate", "--config", c], dir.path());
    assert!(first.status.success(), "{}", text(&first.stderr));
    let second = run(&["keys", "rotate", "--config", c], dir.path());
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert!(
        text(&second.stdout).contains("signs from"),
        "{}",
        text(&second.stdout)
    );
    let ring = dir.path().join("keys/signing-keys.json");
    let before = std::fs::read(&ring).unwrap();
    let third = run(&["keys", "rotate", "--config", c], dir.path());
    assert_eq!(third.status.code(), Some(1), "{}", text(&third.stdout));
    assert!(
        text(&third.stderr).contains("--force"),
        "{}",
        text(&third.stderr)
    );
    assert_eq!(
        std::fs::read(&ring).unwrap(),
        before,
        "written despite the refusal"
    );
    let forced = run(&["keys", "rotate", "--force", "--config", c], dir.path());
    assert!(forced.status.success(), "{}", text(&forced.stderr));

    let list = text(&run(&["keys", "list", "--config", c], dir.path()).stdout);
    let header = list.lines().next().unwrap();
    assert!(
        header.contains("retires_at") && header.contains("removed_at"),
        "{list}"
    );
    let active = list.lines().find(|l| l.contains(" active ")).unwrap();
    let timestamps = active
        .split_whitespace()
        .filter(|w| w.len() == 20 && w.ends_with('Z') && w.as_bytes()[10] == b'T')
        .count();
    assert_eq!(
        timestamps, 4,
        "created, activates, retires, removed: {active}"
    );
}

/// `--json` on `keys list`, `scopes check` and `audit verify`; `audit verify
/// --expect-last HASH` catches a log cut short that still chains.
#[tokio::test]
async fn json_output_and_the_expected_last_hash() {
    let (sts, issuers) = TestSts::standard().await;
    for scope in ["docs.read", "github.issues.create"] {
        sts.exchange_for(&issuers.k8s_token("triage"), scope).await;
    }
    let cwd = sts.dir.path();
    let config = sts.config_path.to_str().unwrap();
    let json_of = |out: &std::process::Output| -> serde_json::Value {
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}{}", text(&out.stdout), text(&out.stderr)))
    };

    let keys = json_of(&run(&["keys", "list", "--json", "--config", config], cwd));
    assert_eq!(keys["keys"][0]["state"], "active", "{keys}");
    assert!(keys["keys"][0]["activates_at"].is_u64(), "{keys}");

    let scopes = json_of(&run(
        &["scopes", "check", "--json", "--config", config],
        cwd,
    ));
    assert_eq!(scopes["ok"], true, "{scopes}");
    assert!(
        scopes["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == "docs.read"),
        "{scopes}"
    );
    let broken = tempfile::tempdir().unwrap();
    std::fs::write(broken.path().join("bad.toml"), "[[action]]\nname = \"x\"\n").unwrap();
    let out = run(
        &[
            "scopes",
            "check",
            "--json",
            "--config",
            config,
            broken.path().to_str().unwrap(),
        ],
        cwd,
    );
    assert_eq!(out.status.code(), Some(2));
    let doc = json_of(&out);
    assert_eq!(doc["ok"], false, "{doc}");
    assert!(!doc["errors"].as_array().unwrap().is_empty(), "{doc}");

    let audit = sts.audit_path();
    let a = audit.to_str().unwrap();
    let report = json_of(&run(&["audit", "verify", "--json", a], cwd));
    assert_eq!(
        (report["lines"].as_u64(), report["intact"].as_bool()),
        (Some(2), Some(true))
    );
    let last = report["last_hash"].as_str().unwrap().to_owned();
    let ok = run(&["audit", "verify", "--expect-last", &last, a], cwd);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    // Cut the last line off: the rest still chains, the recorded hash says otherwise.
    let log = std::fs::read_to_string(&audit).unwrap();
    let first = log.lines().next().unwrap();
    std::fs::write(&audit, format!("{first}\n")).unwrap();
    let cut = run(&["audit", "verify", "--expect-last", &last, a], cwd);
    assert_eq!(cut.status.code(), Some(1), "{}", text(&cut.stdout));
    assert!(
        text(&cut.stderr).contains("cut short"),
        "{}",
        text(&cut.stderr)
    );
}

/// A path the configuration names that is not there stops `serve` at once (exit 2),
/// naming the key, the path and the OS's reason, before it logs that anything started.
#[test]
fn missing_paths_stop_serve_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("scopes")).unwrap();
    std::fs::write(dir.path().join("secrets.toml"), "").unwrap();
    let base = "[server]\nissuer = \"https://sts.example.org\"\nlisten = \"127.0.0.1:0\"\nscopes_dir = \"scopes\"\n\n[secrets]\nstore = \"file\"\nfile = \"secrets.toml\"\n\n[audit]\npath = \"audit.log\"\n";
    let cases = [
        (
            "server.scopes_dir",
            base.replace("scopes_dir = \"scopes\"", "scopes_dir = \"scoeps\""),
        ),
        (
            "secrets.file",
            base.replace("file = \"secrets.toml\"", "file = \"secret.toml\""),
        ),
        (
            "audit.path",
            base.replace("path = \"audit.log\"", "path = \"no-such-dir/audit.log\""),
        ),
        (
            "trust[k8s].jwks_file",
            format!(
                "{base}\n[[trust]]\nname = \"k8s\"\nissuer = \"https://k8s\"\njwks_file = \"k8s-jwks.json\"\nalgorithms = [\"RS256\"]\n"
            ),
        ),
    ];
    for (key, config_text) in cases {
        let config = dir.path().join("sts.toml");
        std::fs::write(&config, config_text).unwrap();
        let out = std::process::Command::new(BIN)
            .args(["serve", "--config", config.to_str().unwrap()])
            .current_dir(dir.path())
            .env_remove("AGENT_STS_LOG")
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{key}: {err}");
        assert!(
            err.contains(key) && err.contains("No such file or directory"),
            "{key}: {err}"
        );
        assert!(
            !err.contains("INFO"),
            "{key}: logged before refusing: {err}"
        );
    }
}

/// Every command that writes names the absolute path it wrote, whatever the working
/// directory: `dev` each file it creates on first run (and none on the next), `serve`
/// its audit log in the line that says where it listens (a relative `audit.path`
/// resolved against the configuration's directory), `keys rotate` its keyring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_that_writes_prints_the_absolute_path_it_wrote() {
    let work = tempfile::tempdir().unwrap();
    let cwd = std::fs::canonicalize(work.path()).unwrap();
    let scopes = concat!(env!("CARGO_MANIFEST_DIR"), "/scopes");
    let args = [
        "dev",
        "--listen",
        "127.0.0.1:0",
        "--shim-listen",
        "127.0.0.1:0",
        "--keys",
        "keys",
        "--scopes",
        scopes,
    ]
    .map(std::ffi::OsStr::new);
    let start = || {
        ServeProcess::spawn(&args, &[], work.path(), "warn", |out, _| {
            out.contains("curl -s -X").then(|| "started".to_string())
        })
    };
    let (first, _) = start().stop();
    for file in ["signing-keys.json", "dev-secrets.toml", "dev-issuers.json"] {
        let path = cwd.join("keys").join(file);
        assert!(path.is_file(), "{file}");
        assert!(
            first.contains(&format!("  wrote {}\n", path.display())),
            "{file}: {first}"
        );
    }
    assert!(
        first.contains(&format!("audit logs: {}", cwd.join("keys").display())),
        "{first}"
    );
    let (second, _) = start().stop();
    assert!(
        !second.contains("  wrote "),
        "nothing new written: {second}"
    );

    let issuers = Issuers::start().await;
    let (dir, config) = sts_files(
        &issuers.specs(),
        SCOPES,
        "",
        ConfigTweaks {
            audit_path: Some("audit.log"),
            ..ConfigTweaks::default()
        },
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let rotate = run(
        &["keys", "rotate", "--config", config.to_str().unwrap()],
        elsewhere.path(),
    );
    assert!(
        text(&rotate.stdout).contains(&format!(
            "written to {}",
            dir.path().join("keys/signing-keys.json").display()
        )),
        "{}",
        text(&rotate.stdout)
    );
    let sts = ServeProcess::start(&config, elsewhere.path(), "info");
    let (_, log) = sts.stop();
    let line = log
        .lines()
        .find(|l| l.contains("agent-sts serving"))
        .unwrap();
    assert!(
        line.contains(&format!("audit={}", dir.path().join("audit.log").display())),
        "{line}"
    );
}
