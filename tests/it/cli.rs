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
