//! Running the real `agent-sts` binary: one-shot commands and a `serve` process whose
//! logs are captured to files (for the leak hunt and the CLI contract).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_agent-sts");

/// Runs `agent-sts ARGS` to completion.
pub fn run(args: &[&str], cwd: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env_remove("AGENT_STS_LOG")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A running `agent-sts serve`, killed on drop.
pub struct ServeProcess {
    pub child: Child,
    pub url: String,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl ServeProcess {
    /// Starts `agent-sts serve --config CONFIG` with `log` as the log filter; waits
    /// until it says where it listens. (The child is waited for by `stop` or `Drop`,
    /// which clippy cannot see through the struct.)
    #[allow(clippy::zombie_processes)]
    pub fn start(config: &Path, dir: &Path, log: &str) -> ServeProcess {
        let stdout = dir.join("serve.stdout");
        let stderr = dir.join("serve.stderr");
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(config)
            .current_dir(dir)
            .env("AGENT_STS_LOG", log)
            .env("AGENT_STS_SERVER_LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = std::fs::read_to_string(&stderr).unwrap_or_default();
            if let Some(addr) = log
                .lines()
                .find(|l| l.contains("agent-sts serving"))
                .and_then(|l| l.split("listen=").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
            {
                return ServeProcess {
                    child,
                    url: format!("http://{addr}"),
                    stdout,
                    stderr,
                };
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("serve did not start:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the process and returns (stdout, stderr).
    pub fn stop(mut self) -> (String, String) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        (
            std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default(),
        )
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
