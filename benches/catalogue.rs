//! Criterion benchmark of loading the scope catalogue: `cargo bench --bench catalogue`.
//!
//! A generated catalogue of 10,000 actions (each with delegation, subjects, a
//! credential and an `[action.request]`, about 400 bytes of TOML), written to a temp
//! dir as one file and as 20 files of 500, loaded with [`Catalogue::load_dir`]: what
//! the STS and the shim do at start and on every reload.
//!
//! `CATALOGUE_SIZES=5000,10000,20000` (one file each) prints one timed load per size
//! before criterion runs, to show how load time grows with the number of actions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use agent_sts::catalogue::{Catalogue, TrustDirectory};
use criterion::{Criterion, criterion_group, criterion_main};

fn trusts() -> TrustDirectory {
    TrustDirectory::new([
        ("k8s-prod".to_owned(), vec![]),
        ("corp-idp".to_owned(), vec![]),
        ("spire".to_owned(), vec!["example.org".to_owned()]),
    ])
}

/// `count` actions numbered from `first`, as TOML.
fn actions(first: usize, count: usize) -> String {
    let mut text = String::new();
    for i in first..first + count {
        text.push_str(&format!(
            r#"[[action]]
name = "svc{i}.items.update"
description = "Update one item in service {i}"
audience = "https://svc{i}-shim.internal"
ttl = "5m"
agents = ["spiffe://example.org/agent/a{i}", "k8s-prod:system:serviceaccount:agents:*"]
delegation = "optional"
subjects = ["corp-idp:*@example.org"]
credential = "integrations/svc{i}"

[action.request]
method = "PATCH"
path = "/items/{{id}}"
headers = ["X-Api-Version"]

"#
        ));
    }
    text
}

/// Writes `files` files of `per_file` actions each into `dir`.
fn write_catalogue(dir: &Path, files: usize, per_file: usize) {
    for f in 0..files {
        std::fs::write(
            dir.join(format!("part{f:03}.toml")),
            actions(f * per_file, per_file),
        )
        .unwrap();
    }
}

fn timed_sizes(trusts: &TrustDirectory) {
    let Ok(sizes) = std::env::var("CATALOGUE_SIZES") else {
        return;
    };
    for n in sizes
        .split(',')
        .filter_map(|s| s.trim().parse::<usize>().ok())
    {
        let dir = tempfile::tempdir().unwrap();
        write_catalogue(dir.path(), 1, n);
        let start = Instant::now();
        let catalogue = Catalogue::load_dir(dir.path(), trusts).unwrap();
        let took = start.elapsed();
        assert_eq!(catalogue.len(), n);
        println!("load_dir: {n} actions in one file: {took:.3?}");
    }
}

fn bench_load(c: &mut Criterion) {
    let trusts = trusts();
    timed_sizes(&trusts);
    let one = tempfile::tempdir().unwrap();
    write_catalogue(one.path(), 1, 10_000);
    let twenty = tempfile::tempdir().unwrap();
    write_catalogue(twenty.path(), 20, 500);

    let mut group = c.benchmark_group("catalogue");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("load_dir 10k actions, one file", |b| {
        b.iter(|| {
            let c = Catalogue::load_dir(black_box(one.path()), &trusts).unwrap();
            assert_eq!(c.len(), 10_000);
            c
        })
    });
    group.bench_function("load_dir 10k actions, 20 files", |b| {
        b.iter(|| {
            let c = Catalogue::load_dir(black_box(twenty.path()), &trusts).unwrap();
            assert_eq!(c.len(), 10_000);
            c
        })
    });
    group.finish();
}

criterion_group!(benches, bench_load);
criterion_main!(benches);
