//! The catalogue under change, over real HTTP: a scope file rewritten in place,
//! slowly, is never served half-written. A prefix of a catalogue file is usually
//! valid TOML, and an action cut before its `delegation` or `credential` line is
//! broader than the one written; the reloader must keep the previous catalogue until
//! the file is whole.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::harness::*;

/// The catalogue the test deploys: the standard one plus two actions that must
/// never be minted in the checks below: `reports.export` only on behalf of a user,
/// `gated.thing` only while `integrations/disabled` is enabled (it never is).
fn deployed() -> String {
    format!(
        r#"{SCOPES}
[[action]]
name = "reports.export"
audience = "https://reports.internal"
ttl = "1m"
agents = ["k8s-prod:system:serviceaccount:agents:*"]
delegation = "required"
subjects = ["corp-idp:*@example.org"]

[[action]]
name = "gated.thing"
audience = "https://gated.internal"
ttl = "1m"
agents = ["k8s-prod:system:serviceaccount:agents:*"]
credential = "integrations/disabled"
"#
    )
}

/// Exchanges that the deployed catalogue refuses, whatever state the reload is in:
/// each must never yield a token.
async fn assert_never_minted(sts: &TestSts, issuers: &Issuers, stage: &str) {
    let agent = issuers.k8s_token("triage");
    let plain = sts.exchange_for(&agent, "reports.export").await;
    assert!(
        !plain.text.contains("access_token"),
        "{stage}: reports.export minted without a delegating user: {plain:?}"
    );
    let gated = sts.exchange_for(&agent, "gated.thing").await;
    assert!(
        !gated.text.contains("access_token"),
        "{stage}: gated.thing minted while its credential is disabled: {gated:?}"
    );
    // The rest of the catalogue keeps serving meanwhile (the previous one, whole).
    let docs = sts.exchange_for(&agent, "docs.read").await;
    assert_eq!(docs.status, 200, "{stage}: {docs:?}");
}

/// Requests in a loop for `pause` (each check as above), then returns.
async fn hammer_for(sts: &TestSts, issuers: &Issuers, pause: Duration, stage: &str) -> usize {
    let until = Instant::now() + pause;
    let mut rounds = 0;
    while Instant::now() < until {
        assert_never_minted(sts, issuers, stage).await;
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rounds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_in_place_rewrite_never_serves_a_torn_action() {
    let issuers = Issuers::start().await;
    let (dir, config_path) = sts_files(&issuers.specs(), SCOPES, "", ConfigTweaks::default());
    // Reload often, so that every torn state is seen by several reloads.
    let config = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace("refresh_interval = \"1s\"", "refresh_interval = \"200ms\"")
        .replace(
            "[audit]",
            "[limits]\nrate_per_second = 100000\nrate_burst = 100000\n\n[audit]",
        );
    std::fs::write(&config_path, config).unwrap();
    let sts = TestSts::serve(dir, config_path).await;
    assert_never_minted(&sts, &issuers, "before").await;

    let full = deployed();
    // Two cuts at line starts, each leaving valid TOML with a broader action: before
    // reports.export's `delegation` line, and before gated.thing's `credential` line.
    let cut_delegation = full.find("delegation = \"required\"\nsubjects = [\"corp-idp:*@example.org\"]\n\n[[action]]\nname = \"gated.thing\"").unwrap();
    let cut_credential = full
        .rfind("credential = \"integrations/disabled\"")
        .unwrap();
    let torn = |end: usize| {
        agent_sts::catalogue::Catalogue::from_sources(
            [("t.toml", &full[..end])],
            &agent_sts::catalogue::TrustDirectory::new(
                ["k8s-prod", "spire", "corp-idp", "ci"].map(|t| {
                    let domains = if t == "spire" {
                        vec!["example.org".to_owned()]
                    } else {
                        vec![]
                    };
                    (t.to_owned(), domains)
                }),
            ),
        )
    };
    assert!(torn(cut_delegation).is_ok(), "the first cut is valid TOML");
    assert!(torn(cut_credential).is_ok(), "the second cut is valid TOML");

    // The writer: truncate the live file and write it in three pieces, pausing
    // between them (shorter than the settle window, longer than several reloads).
    let path = sts.dir.path().join("scopes/test.toml");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let pause = Duration::from_millis(1500);
    let mut rounds = 0;
    let mut written = 0;
    for (stage, end) in [
        ("cut before delegation", cut_delegation),
        ("cut before credential", cut_credential),
    ] {
        file.write_all(&full.as_bytes()[written..end]).unwrap();
        file.flush().unwrap();
        written = end;
        rounds += hammer_for(&sts, &issuers, pause, stage).await;
    }
    file.write_all(&full.as_bytes()[written..]).unwrap();
    file.flush().unwrap();
    drop(file);
    assert!(rounds >= 4, "the torn states were probed ({rounds} rounds)");

    // Once whole and settled, the new catalogue is served: reports.export on behalf
    // of a user. Still never without one, and never gated.thing.
    let user = issuers.user_token("alice@example.org");
    let agent = issuers.k8s_token("triage");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert_never_minted(&sts, &issuers, "after").await;
        let r = sts
            .exchange_delegated(&user, &agent, "reports.export")
            .await;
        if r.status == 200 {
            assert_eq!(r.json()["scope"], "reports.export", "{r:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the whole file was never loaded: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_never_minted(&sts, &issuers, "settled").await;
}

/// The documented way to deploy: write beside the catalogue under a name the loader
/// ignores, then rename over. Picked up within the settle window plus a reload, and
/// nothing in between is ever torn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalogue_renamed_into_place_is_served_after_it_settles() {
    let issuers = Issuers::start().await;
    let (dir, config_path) = sts_files(&issuers.specs(), SCOPES, "", ConfigTweaks::default());
    let config = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace("refresh_interval = \"1s\"", "refresh_interval = \"200ms\"");
    std::fs::write(&config_path, config).unwrap();
    let sts = TestSts::serve(dir, config_path).await;

    // Editor leftovers in the directory are never read, even when they are broken.
    let scopes = sts.dir.path().join("scopes");
    std::fs::write(scopes.join(".test.toml.swp"), "[[action]\n").unwrap();
    std::fs::write(scopes.join("test.toml~"), "[[action]\n").unwrap();

    let staged = scopes.join(".test.toml.tmp");
    std::fs::write(&staged, deployed()).unwrap();
    std::fs::rename(&staged, scopes.join("test.toml")).unwrap();

    let user = issuers.user_token("alice@example.org");
    let agent = issuers.k8s_token("triage");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = sts
            .exchange_delegated(&user, &agent, "reports.export")
            .await;
        if r.status == 200 {
            break;
        }
        r.assert_error(400, "invalid_scope", &[&user, &agent]);
        assert!(Instant::now() < deadline, "never reloaded: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = sts.exchange_for(&agent, "reports.export").await;
    assert!(!r.text.contains("access_token"), "{r:?}");
}
