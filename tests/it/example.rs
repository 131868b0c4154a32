//! Keeps `examples/production/agent-sts.toml` runnable (issue 16, item 2): the real
//! binary lints it with `scopes check --config` and serves it against a real Vault-API
//! server, from another working directory, changing only what a test machine must
//! (addresses, the AppRole files, the audit path) through `AGENT_STS_*` overrides.
//! And keeps the README pointing at it: its configuration block is that file, and
//! every repository path it names exists (items 2 and 11).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::harness::*;
use crate::openbao::OpenBao;
use crate::process::*;
use crate::vault::plant_credentials;

/// The shipped production example.
fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/production/agent-sts.toml")
}

/// `http://ADDR` from the first JSON log line whose message is `message`.
fn json_listen(log: &str, message: &str) -> Option<String> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == message)
        .and_then(|v| v["listen"].as_str().map(|a| format!("http://{a}")))
}

#[test]
fn the_production_example_passes_scopes_check_from_another_directory() {
    let elsewhere = tempfile::tempdir().unwrap();
    let out = run(
        &["scopes", "check", "--config", example().to_str().unwrap()],
        elsewhere.path(),
    );
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let said = text(&out.stdout);
    assert!(said.contains("5 actions ok"), "{said}");
    for action in [
        "docs.read",
        "github.issues.create",
        "github.pulls.read",
        "salesforce.opportunity.update",
        "slack.message.post",
    ] {
        assert!(said.contains(action), "{action}: {said}");
    }
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
}

/// `keys rotate` (with the rotate policy's token) then `serve` (AppRole with the
/// shipped serve policy, as the example says) on the example: ready, one key in the
/// JWKS, `/metrics` on the admin port only, JSON logs as the file asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_production_example_serves_against_vault() {
    let vault = OpenBao::start().await;
    plant_credentials(&vault).await;
    let work = tempfile::tempdir().unwrap();
    let config = example();
    let (_, rotate_token) = vault.token(&["agent-sts-rotate"], "1h", true).await;
    let rotate = Command::new(BIN)
        .args(["keys", "rotate", "--config", config.to_str().unwrap()])
        .current_dir(work.path())
        .env_remove("AGENT_STS_LOG")
        .env("AGENT_STS_VAULT_ADDRESS", &vault.addr)
        .env("AGENT_STS_VAULT_AUTH", "token")
        .env("AGENT_STS_VAULT_TOKEN_FILE", &rotate_token)
        .output()
        .unwrap();
    assert!(rotate.status.success(), "{}", text(&rotate.stderr));
    assert!(
        text(&rotate.stdout).contains("agent-sts/signing-keys"),
        "{}",
        text(&rotate.stdout)
    );

    let (role_id, secret_id) = vault.enable_approle("agent-sts", &["agent-sts"]).await;
    write_secret_file(&work.path().join("role-id"), &role_id);
    write_secret_file(&work.path().join("secret-id"), &secret_id);
    let file = |name: &str| work.path().join(name).display().to_string();
    let (role_file, secret_file, audit) = (file("role-id"), file("secret-id"), file("audit.log"));
    let env = [
        ("AGENT_STS_SERVER_LISTEN", "127.0.0.1:0"),
        ("AGENT_STS_SERVER_ADMIN_LISTEN", "127.0.0.1:0"),
        ("AGENT_STS_VAULT_ADDRESS", vault.addr.as_str()),
        ("AGENT_STS_VAULT_ROLE_ID_FILE", role_file.as_str()),
        ("AGENT_STS_VAULT_SECRET_ID_FILE", secret_file.as_str()),
        ("AGENT_STS_AUDIT_PATH", audit.as_str()),
    ];
    let args = [
        OsStr::new("serve"),
        OsStr::new("--config"),
        config.as_os_str(),
    ];
    let sts = ServeProcess::spawn(&args, &env, work.path(), "info", |_, err| {
        json_listen(err, "agent-sts admin serving")?;
        json_listen(err, "agent-sts serving")
    });
    let log = std::fs::read_to_string(&sts.stderr).unwrap();
    let admin = json_listen(&log, "agent-sts admin serving").unwrap();

    let ready = reqwest::get(format!("{admin}/readyz")).await.unwrap();
    let status = ready.status();
    let body = ready.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    let jwks: Value = reqwest::get(format!("{}/.well-known/jwks.json", sts.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1, "{jwks}");
    let public = reqwest::get(format!("{}/metrics", sts.url)).await.unwrap();
    assert_eq!(public.status(), 404);
    let metrics = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("agent_sts_vault_logins_total{outcome=\"ok\"} 1"),
        "{metrics}"
    );
    let (_, stderr) = sts.stop();
    for line in stderr.lines() {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "not JSON: {line}"
        );
        assert!(!line.contains(&secret_id) && !line.contains(&role_id));
    }
    assert_eq!(
        std::fs::read_dir(work.path()).unwrap().count(),
        5,
        "only the test's files, the audit log and the captured output are in the cwd"
    );
}

/// The README's configuration example is the shipped file, word for word.
#[test]
fn the_readme_configuration_example_is_the_shipped_file() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = &readme[readme.find("\n## Configuration\n").unwrap()..];
    let block = &section[section.find("```toml\n").unwrap() + 8..];
    let block = &block[..block.find("```\n").unwrap()];
    assert_eq!(block, std::fs::read_to_string(example()).unwrap());
}

/// Every repository path the README names (`src/...`, `tests/...`, `examples/...`,
/// `keys/vault/...`, links) is in the repository.
#[test]
fn the_readme_names_only_files_the_repository_has() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let roots = [
        "src/",
        "tests/",
        "verifier/",
        "examples/",
        "keys/vault/",
        "keys/test/",
        "benches/",
        "clients/",
        "testkit/",
        ".ci/",
    ];
    let mut checked = 0;
    for (i, _) in readme.match_indices(['`', '(']) {
        let rest = &readme[i + 1..];
        let end = rest.find(['`', ')', ' ', ':', ',']).unwrap_or(rest.len());
        let candidate = &rest[..end];
        if !roots.iter().any(|r| candidate.starts_with(r)) || candidate.contains(['*', '<', '{']) {
            continue;
        }
        checked += 1;
        assert!(
            root.join(candidate).exists(),
            "the README names {candidate}, which the repository does not have"
        );
    }
    assert!(checked > 20, "only {checked} paths found");
}
