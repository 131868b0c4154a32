//! Running the real `agent-sts` binary: one-shot commands and long-running `serve`,
//! `shim` or `dev` processes whose output is captured to files (for the leak hunts and
//! the CLI contract).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_agent-sts");

/// The log filter of the leak hunts: everything at TRACE, the HTTP and TLS stack
/// included (it is held at `warn` unless the filter names it).
pub const TRACE_ALL: &str = "trace,hyper=trace,h2=trace,rustls=trace,reqwest=trace";

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
    /// until it says where it listens.
    pub fn start(config: &Path, dir: &Path, log: &str) -> ServeProcess {
        let args = [
            OsStr::new("serve"),
            OsStr::new("--config"),
            config.as_os_str(),
        ];
        let env = [("AGENT_STS_SERVER_LISTEN", "127.0.0.1:0")];
        Self::spawn(&args, &env, dir, log, |_, err| {
            listen_address(err, "agent-sts serving")
        })
    }

    /// Starts `agent-sts shim --config CONFIG` on 127.0.0.1:0 with `log` as the log
    /// filter; waits until it says where it listens.
    pub fn start_shim(config: &Path, dir: &Path, log: &str) -> ServeProcess {
        let args = [
            OsStr::new("shim"),
            OsStr::new("--config"),
            config.as_os_str(),
        ];
        let env = [("AGENT_STS_SHIM_LISTEN", "127.0.0.1:0")];
        Self::spawn(&args, &env, dir, log, |_, err| {
            listen_address(err, "agent-sts shim serving")
        })
    }

    /// Starts `agent-sts ARGS` in `dir` with `env` and `log` as the log filter, its
    /// output captured to `<dir>/<ARGS[0]>.stdout` and `.stderr`; waits (20 s at most)
    /// until `ready(stdout, stderr)` returns the URL it serves. (The child is waited for
    /// by `stop` or `Drop`, which clippy cannot see through the struct.)
    #[allow(clippy::zombie_processes)]
    pub fn spawn(
        args: &[&OsStr],
        env: &[(&str, &str)],
        dir: &Path,
        log: &str,
        ready: impl Fn(&str, &str) -> Option<String>,
    ) -> ServeProcess {
        let name = args.first().and_then(|a| a.to_str()).unwrap_or("agent-sts");
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        let mut child = Command::new(BIN)
            .args(args)
            .current_dir(dir)
            .env_remove("RUST_LOG")
            .env("AGENT_STS_LOG", log)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = std::fs::read_to_string(&stdout).unwrap_or_default();
            let err = std::fs::read_to_string(&stderr).unwrap_or_default();
            if let Some(url) = ready(&out, &err) {
                return ServeProcess {
                    child,
                    url,
                    stdout,
                    stderr,
                };
            }
            if Instant::now() >= deadline || child.try_wait().is_ok_and(|s| s.is_some()) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("agent-sts {name} did not start:\n{out}\n{err}");
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

/// `http://ADDR` from the first log line holding `marker` and `listen=ADDR`.
pub fn listen_address(log: &str, marker: &str) -> Option<String> {
    log.lines()
        .find(|l| l.contains(marker))
        .and_then(|l| l.split("listen=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .map(|addr| format!("http://{addr}"))
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
