//! A short chaos run on each transport: `sagaflow bench chaos` runs the shop as separate
//! processes under mixed traffic, injects faults on a seeded schedule (kill -9, PostgreSQL
//! sessions terminated or the server restarted, a participant stopped, on Kafka the broker
//! paused and its network cut), then checks that every saga ended, that no effect was applied
//! twice or left half undone, that the outbox is empty, that nothing was parked and that every
//! read model equals a fold of the event store. The run fails the test if any check fails.
//!
//! The seed is random and printed; `SAGAFLOW_CHAOS_SEED` replays one, and
//! `SAGAFLOW_CHAOS_SECONDS` sets the length of each run (40 s). The Kafka run starts a broker
//! of its own, from `SAGAFLOW_TANSU` (`scripts/test.sh` sets it).
//!
//! It may restart the PostgreSQL server every test shares, so it is the only test of its
//! binary (test binaries run one after another).

use std::process::Command;

fn run(transport: &str, seed: u64, seconds: &str) {
    let mut url = url::Url::parse(
        &std::env::var("DATABASE_URL").expect("DATABASE_URL is set (scripts/test.sh sets it)"),
    )
    .expect("DATABASE_URL is a URL");
    url.set_path("/sagaflow_chaos_test");
    eprintln!("chaos run on the {transport} transport, seed {seed}, {seconds} s");
    let status = Command::new(env!("CARGO_BIN_EXE_sagaflow"))
        .args([
            "bench",
            "chaos",
            "--transport",
            transport,
            "--seconds",
            seconds,
            "--seed",
            &seed.to_string(),
            "--converge-seconds",
            "180",
        ])
        .env("DATABASE_URL", url.as_str())
        .env("RUST_LOG", "warn")
        .status()
        .expect("start sagaflow bench chaos");
    assert!(
        status.success(),
        "the chaos run on {transport} failed (seed {seed}; SAGAFLOW_CHAOS_SEED={seed} replays it): {status}"
    );
}

#[test]
fn nothing_is_lost_or_applied_twice_under_faults_on_either_transport() {
    let seed = std::env::var("SAGAFLOW_CHAOS_SEED")
        .ok()
        .map(|s| s.parse().expect("SAGAFLOW_CHAOS_SEED is a number"))
        .unwrap_or_else(rand::random::<u64>);
    let seconds = std::env::var("SAGAFLOW_CHAOS_SECONDS").unwrap_or_else(|_| "40".into());
    run("postgres", seed, &seconds);
    assert!(
        std::env::var_os("SAGAFLOW_TANSU").is_some(),
        "the Kafka run starts a broker of its own: set SAGAFLOW_TANSU (scripts/test.sh does)"
    );
    run("kafka", seed, &seconds);
}
