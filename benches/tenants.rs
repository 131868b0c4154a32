//! What tenants cost at `POST /token`, over real HTTP: `cargo bench --bench tenants`.
//!
//! Two real STSs in this process on 127.0.0.1:0, built by
//! [`common::start_sts_with_tenants`] from the same catalogue, trust and secrets: one
//! with no `[[tenant]]` (requests at `/token`), one with three tenants `a`, `b`, `c`
//! beside its top level (requests spread evenly over `/t/a/token`, `/t/b/token` and
//! `/t/c/token`, each subject token minted for its tenant's issuer). Four scenarios,
//! interleaved in rounds on the same cores so that a drift in what else the machine
//! does touches all alike:
//! - 1B / 3B: distinct subject tokens (each request verifies its JWT-SVID);
//! - 1C / 3C: 64 subject tokens per issuer, repeated (the verified-subject cache hits;
//!   routing is the larger share of what remains).
//!
//! It prints requests, req/s, p50 and p99 and the ratios 3B/1B and 3C/1C (target
//! ≥ 0.9: three tenants no more than 10 % slower than one).
//!
//! Environment: `TENANTS_SECONDS` (default 8), `TENANTS_ROUNDS` (2), `TENANTS_WARMUP`
//! (1), `TENANTS_CONNECTIONS` (64), `TENANTS_POOL` (distinct subject tokens per
//! scenario, default 250000), `TENANTS_RUNTIME` (`shared` or `split`, as in the load
//! bench).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Instant;

use agent_sts::identity::unix_now;
use axum::body::Bytes;
use common::{Knobs, Measured, Runtimes, STS_ISSUER, Source, Unit, env_or};

const ACTION: &str = "github.issues.create";
const TENANTS: [&str; 3] = ["a", "b", "c"];

const SCOPES: &str = r#"
[[action]]
name = "github.issues.create"
audience = "https://github-shim.internal"
ttl = "5m"
agents = ["spiffe://example.org/agent/*"]
credential = "integrations/github"
"#;

/// `n` requests: to `/token` with no tenants, else spread over the tenants' token
/// endpoints, each subject token for its issuer (`distinct` tokens, or 64 per issuer).
fn requests(
    key: &agent_sts::keys::signing_key::SigningKey,
    n: usize,
    tag: &str,
    tenants: &[&str],
) -> Vec<(String, Bytes)> {
    let now = unix_now();
    common::on_every_core(n, |i| {
        let (path, audience) = match tenants {
            [] => ("/token".to_string(), STS_ISSUER.to_string()),
            _ => {
                let t = tenants[i % tenants.len()];
                (format!("/t/{t}/token"), format!("{STS_ISSUER}/t/{t}"))
            }
        };
        let svid = common::svid_for(key, tag, i, now, &audience);
        (path, common::exchange_form(&svid, ACTION))
    })
}

fn main() {
    let knobs = Knobs::from_env("TENANTS");
    let pool: usize = env_or("TENANTS_POOL", 250_000);
    let runtimes = Runtimes::from_env("TENANTS");
    let cpus = std::thread::available_parallelism().map_or(0, |p| p.get());
    println!(
        "agent-sts tenants benchmark: {cpus} CPUs; {} connections; {} s per scenario in {} rounds, each after a {} s warm-up; runtime {}",
        knobs.connections,
        knobs.seconds,
        knobs.rounds,
        knobs.warmup,
        runtimes.describe()
    );
    let key = common::spire_key();
    let (one, three) = runtimes.server().block_on(async {
        let issuer = common::spawn_issuer(&key).await;
        let one = common::start_sts_with_tenants(&issuer, SCOPES, common::SECRETS, &[]).await;
        let three =
            common::start_sts_with_tenants(&issuer, SCOPES, common::SECRETS, &TENANTS).await;
        (one, three)
    });

    let started = Instant::now();
    let distinct_one = Arc::new(requests(&key, pool, "one", &[]));
    let distinct_three = Arc::new(requests(&key, pool, "three", &TENANTS));
    let cached_one = Arc::new(requests(&key, common::AGENTS, "one-cached", &[]));
    let cached_three = Arc::new(requests(
        &key,
        common::AGENTS * TENANTS.len(),
        "three-cached",
        &TENANTS,
    ));
    println!(
        "signed {} ES256 subject tokens in {:.1?}",
        2 * pool + 4 * common::AGENTS,
        started.elapsed()
    );

    let mut runs = [
        (
            "1B one issuer, distinct subject tokens",
            one.addr,
            distinct_one,
        ),
        (
            "3B three tenants, distinct subject tokens",
            three.addr,
            distinct_three,
        ),
        (
            "1C one issuer, 64 repeated subject tokens",
            one.addr,
            cached_one,
        ),
        (
            "3C three tenants, 64 repeated subject tokens each",
            three.addr,
            cached_three,
        ),
    ]
    .map(|(name, addr, requests)| {
        Measured::new(
            name,
            addr,
            knobs.connections,
            Arc::new(Source::post_forms_at(requests)),
        )
    });
    let mut refs: Vec<&mut Measured> = runs.iter_mut().collect();
    common::run_rounds(runtimes.client(), &mut refs, &knobs);

    println!();
    let rows: Vec<&Measured> = runs.iter().collect();
    common::print_table(&rows, Unit::Millis);
    for m in &runs[..2] {
        if m.source.reused() > 0 {
            println!(
                "note: {} reused {} tokens (cache hits); raise TENANTS_POOL",
                m.name,
                m.source.reused()
            );
        }
    }
    println!();
    common::ratio_line(
        "3B/1B (three tenants / one, cache misses)",
        runs[1].per_second() / runs[0].per_second(),
        0.9,
    );
    common::ratio_line(
        "3C/1C (three tenants / one, cache hits)  ",
        runs[3].per_second() / runs[2].per_second(),
        0.9,
    );
    runtimes.shutdown();
    drop((one, three));
}
