//! A real Vault-API server for the integration tests: RustyVault (`rvault`, from
//! `cargo install rusty_vault --version 0.2.1 --locked`) on a free 127.0.0.1 port,
//! with file storage in a temp dir, initialized with one unseal key and unsealed.
//! KV v1 is mounted at `secret/`; AppRole can be enabled on demand. rvault's own
//! stdout and stderr go to files in the temp dir, not to the test output.
//!
//! rvault 0.2.1 has no `/v1/sys/health`, ACL policies, KV v2, Transit or
//! `renew-self`; tests that need those cannot use it.

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

const INSTALL: &str = "cargo install rusty_vault --version 0.2.1 --locked";
/// How long one start may take before it counts as failed.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Fresh ports tried by `start` before giving up.
const START_ATTEMPTS: usize = 3;

pub struct Rvault {
    /// `http://127.0.0.1:PORT`
    pub addr: String,
    pub root_token: String,
    pub unseal_key: String,
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
    http: reqwest::Client,
}

/// The `rvault` binary: `$RVAULT_BIN`, else the first on `PATH`, else
/// `$CARGO_HOME/bin` or `~/.cargo/bin`. Panics with the install command when none.
fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("RVAULT_BIN") {
        return PathBuf::from(bin);
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("rvault"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(cargo_home) = std::env::var_os("CARGO_HOME") {
        candidates.push(PathBuf::from(cargo_home).join("bin/rvault"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/rvault"));
    }
    candidates
        .into_iter()
        .find(|c| c.is_file())
        .unwrap_or_else(|| {
            panic!("rvault (RustyVault) is not installed; these tests need it: `{INSTALL}`")
        })
}

/// A port that was free a moment ago (bound on 127.0.0.1:0, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(dir: &Path, port: u16) -> PathBuf {
    let data = dir.join("data");
    let pid = dir.join("rvault.pid");
    let config = format!(
        r#"storage "file" {{
  path = "{}"
}}
listener "tcp" {{
  address = "127.0.0.1:{port}"
  tls_disable = true
}}
api_addr = "http://127.0.0.1:{port}"
log_level = "info"
pid_file = "{}"
"#,
        data.display(),
        pid.display()
    );
    let path = dir.join("rvault.hcl");
    std::fs::write(&path, config).unwrap();
    path
}

/// The tail of rvault's captured output, for failure messages.
fn output_tail(dir: &Path) -> String {
    let mut out = String::new();
    for name in ["rvault.stdout", "rvault.stderr"] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        let start = (start..=text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        out.push_str(&format!("--- {name}\n{}\n", &text[start..]));
    }
    out
}

/// Spawns rvault on `port` and waits until `/v1/sys/seal-status` answers at all. On failure
/// (exit, or no answer within `START_TIMEOUT`) the child is killed and reaped and
/// the reason returned.
async fn spawn(dir: &Path, port: u16, http: &reqwest::Client) -> Result<Child, String> {
    let config = write_config(dir, port);
    // Appended, so a restart keeps the earlier run's output.
    let open = |name: &str| {
        File::options()
            .create(true)
            .append(true)
            .open(dir.join(name))
            .unwrap()
    };
    let mut child = Command::new(binary())
        .args(["server", "--config"])
        .arg(&config)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(open("rvault.stdout"))
        .stderr(open("rvault.stderr"))
        .spawn()
        .unwrap_or_else(|e| panic!("starting rvault: {e} (install it: `{INSTALL}`)"));
    let url = format!("http://127.0.0.1:{port}/v1/sys/seal-status");
    let deadline = Instant::now() + START_TIMEOUT;
    let failure = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break format!("rvault exited with {status}");
        }
        if Instant::now() > deadline {
            break format!("rvault did not answer on port {port} within {START_TIMEOUT:?}");
        }
        let answer = http.get(&url).timeout(Duration::from_secs(1)).send().await;
        // Any HTTP answer means it listens: before `sys/init`, seal-status is a 500.
        if answer.is_ok() {
            return Ok(child);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    Err(format!("{failure}\n{}", output_tail(dir)))
}

impl Rvault {
    /// Starts rvault on a free port (trying a few), initializes it with one unseal
    /// key, and unseals it. (The child is waited for by `kill` or `Drop`, which clippy
    /// cannot see through the struct.)
    #[allow(clippy::zombie_processes)]
    pub async fn start() -> Rvault {
        binary();
        let dir = tempfile::tempdir().unwrap();
        let http = reqwest::Client::new();
        let mut failures = Vec::new();
        let mut started = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            match spawn(dir.path(), port, &http).await {
                Ok(child) => {
                    started = Some((child, port));
                    break;
                }
                Err(e) => failures.push(e),
            }
        }
        let Some((child, port)) = started else {
            panic!(
                "rvault did not come up in {START_ATTEMPTS} attempts:\n{}",
                failures.join("\n")
            );
        };
        let addr = format!("http://127.0.0.1:{port}");
        let mut vault = Rvault {
            addr,
            root_token: String::new(),
            unseal_key: String::new(),
            dir,
            child,
            port,
            http,
        };
        let init = vault
            .call(
                reqwest::Method::POST,
                "sys/init",
                None,
                Some(json!({"secret_shares": 1, "secret_threshold": 1})),
            )
            .await;
        let init = vault.expect_json(init, StatusCode::OK, "sys/init").await;
        vault.unseal_key = init["keys"][0]
            .as_str()
            .unwrap_or_else(|| panic!("sys/init: no key in {init}"))
            .to_owned();
        vault.root_token = init["root_token"]
            .as_str()
            .unwrap_or_else(|| panic!("sys/init: no root_token in {init}"))
            .to_owned();
        vault.unseal().await;
        vault
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temp dir holding storage, config and rvault's stdout/stderr.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// rvault's captured output so far (the last 2000 bytes of each stream).
    pub fn output(&self) -> String {
        output_tail(self.dir.path())
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut request = self
            .http
            .request(method, format!("{}/v1/{path}", self.addr))
            .timeout(Duration::from_secs(10));
        if let Some(token) = token {
            request = request.header("X-Vault-Token", token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        request
            .send()
            .await
            .unwrap_or_else(|e| panic!("rvault {path}: {e}\n{}", self.output()))
    }

    async fn expect_status(&self, response: reqwest::Response, want: StatusCode, what: &str) {
        let status = response.status();
        if status != want {
            let body = response.text().await.unwrap_or_default();
            panic!("rvault {what}: {status} (want {want}): {body}");
        }
    }

    async fn expect_json(
        &self,
        response: reqwest::Response,
        want: StatusCode,
        what: &str,
    ) -> Value {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, want, "rvault {what}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("rvault {what}: {e}: {body}"))
    }

    /// Writes `data` (a JSON object) to KV v1 at `secret/<path>` as root.
    pub async fn write(&self, path: &str, data: Value) {
        let what = format!("secret/{path}");
        let r = self
            .call(
                reqwest::Method::POST,
                &what,
                Some(&self.root_token),
                Some(data),
            )
            .await;
        self.expect_status(r, StatusCode::NO_CONTENT, &what).await;
    }

    /// Reads KV v1 `secret/<path>` as root: its `data`, or `None` when missing.
    pub async fn read(&self, path: &str) -> Option<Value> {
        let what = format!("secret/{path}");
        let r = self
            .call(reqwest::Method::GET, &what, Some(&self.root_token), None)
            .await;
        if r.status() == StatusCode::NOT_FOUND {
            return None;
        }
        let mut body = self.expect_json(r, StatusCode::OK, &what).await;
        Some(body["data"].take())
    }

    pub async fn seal(&self) {
        let r = self
            .call(
                reqwest::Method::PUT,
                "sys/seal",
                Some(&self.root_token),
                None,
            )
            .await;
        self.expect_status(r, StatusCode::NO_CONTENT, "sys/seal")
            .await;
    }

    pub async fn unseal(&self) {
        let r = self
            .call(
                reqwest::Method::PUT,
                "sys/unseal",
                None,
                Some(json!({"key": self.unseal_key})),
            )
            .await;
        let body = self.expect_json(r, StatusCode::OK, "sys/unseal").await;
        assert_eq!(body["sealed"], json!(false), "rvault sys/unseal: {body}");
    }

    /// Enables AppRole at `auth/approle/` (once; a second call reuses it), creates
    /// `role` with the default policy and a 1h token TTL, and returns its role id
    /// and a fresh secret id.
    pub async fn enable_approle(&self, role: &str) -> (String, String) {
        let root = Some(self.root_token.as_str());
        let mounts = self
            .call(reqwest::Method::GET, "sys/auth", root, None)
            .await;
        let mounts: Value = if mounts.status().is_success() {
            mounts.json().await.unwrap_or_default()
        } else {
            Value::Null
        };
        let enabled = mounts.get("approle/").is_some()
            || mounts
                .get("data")
                .is_some_and(|d| d.get("approle/").is_some());
        if !enabled {
            let r = self
                .call(
                    reqwest::Method::POST,
                    "sys/auth/approle",
                    root,
                    Some(json!({"type": "approle"})),
                )
                .await;
            self.expect_status(r, StatusCode::NO_CONTENT, "sys/auth/approle")
                .await;
        }
        let role_path = format!("auth/approle/role/{role}");
        let r = self
            .call(
                reqwest::Method::POST,
                &role_path,
                root,
                Some(json!({"token_ttl": "1h", "token_policies": "default"})),
            )
            .await;
        self.expect_status(r, StatusCode::NO_CONTENT, &role_path)
            .await;
        let what = format!("{role_path}/role-id");
        let r = self.call(reqwest::Method::GET, &what, root, None).await;
        let body = self.expect_json(r, StatusCode::OK, &what).await;
        let role_id = body["data"]["role_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no role_id in {body}"))
            .to_owned();
        let what = format!("{role_path}/secret-id");
        let r = self.call(reqwest::Method::POST, &what, root, None).await;
        let body = self.expect_json(r, StatusCode::OK, &what).await;
        let secret_id = body["data"]["secret_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no secret_id in {body}"))
            .to_owned();
        (role_id, secret_id)
    }

    /// SIGKILLs the server and reaps it; storage stays for `restart`. The HTTP
    /// client is replaced so no pooled connection to the dead server is reused.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.http = reqwest::Client::new();
    }

    /// Starts rvault again on the same port and storage (killing it first if it
    /// still runs), then unseals it. (The old child is reaped by `kill`; the new one
    /// by a later `kill` or `Drop`.)
    #[allow(clippy::zombie_processes)]
    pub async fn restart(&mut self) {
        self.kill();
        let mut failures = Vec::new();
        // The port was ours a moment ago; a few tries cover a slow release.
        for _ in 0..START_ATTEMPTS {
            match spawn(self.dir.path(), self.port, &self.http).await {
                Ok(child) => {
                    self.child = child;
                    self.unseal().await;
                    return;
                }
                Err(e) => {
                    failures.push(e);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        panic!(
            "rvault did not restart on port {}:\n{}",
            self.port,
            failures.join("\n")
        );
    }
}

impl Drop for Rvault {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn rvault_starts_inits_unseals_and_serves_kv_and_approle() {
    let mut vault = Rvault::start().await;
    assert!(
        vault.addr.starts_with("http://127.0.0.1:"),
        "{}",
        vault.addr
    );
    assert!(!vault.root_token.is_empty());
    assert!(!vault.unseal_key.is_empty());
    let http = reqwest::Client::new();

    // KV v1: round trip, and a missing path reads as None.
    let secret = json!({"token": "ghp_test", "owner": "octo"});
    vault.write("integrations/github", secret.clone()).await;
    assert_eq!(
        vault.read("integrations/github").await,
        Some(secret.clone())
    );
    assert_eq!(vault.read("integrations/missing").await, None);

    // A bad token is refused.
    let denied = http
        .get(format!("{}/v1/secret/integrations/github", vault.addr))
        .header("X-Vault-Token", "not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);

    // AppRole: the ids log in over plain HTTP and yield a client token.
    let (role_id, secret_id) = vault.enable_approle("agent-sts").await;
    let login: Value = http
        .post(format!("{}/v1/auth/approle/login", vault.addr))
        .json(&json!({"role_id": role_id, "secret_id": secret_id}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let client_token = login["auth"]["client_token"].as_str().unwrap();
    assert!(!client_token.is_empty(), "{login}");
    assert!(
        login["auth"]["lease_duration"].as_u64().unwrap() > 0,
        "{login}"
    );
    // A second role reuses the mount.
    let (other_role, _) = vault.enable_approle("other").await;
    assert_ne!(other_role, role_id);
    // ... and leaves the first role in place.
    let again = http
        .post(format!("{}/v1/auth/approle/login", vault.addr))
        .json(&json!({"role_id": role_id, "secret_id": secret_id}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK);

    // Sealed: reads answer 503; unsealed again: they work.
    vault.seal().await;
    let sealed = http
        .get(format!("{}/v1/secret/integrations/github", vault.addr))
        .header("X-Vault-Token", &vault.root_token)
        .send()
        .await
        .unwrap();
    assert_eq!(sealed.status(), StatusCode::SERVICE_UNAVAILABLE);
    vault.unseal().await;
    assert_eq!(
        vault.read("integrations/github").await,
        Some(secret.clone())
    );

    // Killed: the port refuses connections.
    let port = vault.port();
    vault.kill();
    assert_eq!(
        TcpStream::connect(("127.0.0.1", port)).unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    // A fresh client: the shared one may hold a pooled connection to the dead server.
    let refused = reqwest::Client::new()
        .get(format!("{}/v1/sys/seal-status", vault.addr))
        .send()
        .await
        .unwrap_err();
    assert!(refused.is_connect(), "{refused}");

    // Restarted on the same port and storage: the data is still there.
    vault.restart().await;
    assert_eq!(vault.port(), port);
    assert_eq!(vault.read("integrations/github").await, Some(secret));
    assert!(
        vault.dir().join("rvault.stderr").exists() || vault.dir().join("rvault.stdout").exists()
    );
}
