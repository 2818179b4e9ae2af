//! The process's metric registry, and the helpers each subsystem declares its series with.
//!
//! Every subsystem names its own series in a `metrics.rs` of its own (the command bus, the
//! HTTP surface, the relay, the consumers, the sagas), with a table of them in that file's
//! documentation; they all register here, in one registry per process, so that
//! `GET /metrics` renders them together with the series collected at scrape time (see
//! [`crate::ops`]). Series are registered the first time their subsystem touches them; the
//! operations layer touches them all at start-up, so a scrape lists every series from the
//! first one on.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use uuid::Uuid;

/// Latency buckets for work that takes milliseconds (commands, batches).
pub const FAST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Latency buckets for work that crosses processes (relay latency, saga steps).
pub const SLOW_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The registry every series of this process is registered in.
pub fn registry() -> &'static Registry {
    static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);
    &REGISTRY
}

fn register<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    registry()
        .register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

/// A counter with labels, registered in [`registry`].
pub fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

/// A counter, registered in [`registry`].
pub fn counter(name: &str, help: &str) -> IntCounter {
    register(IntCounter::with_opts(Opts::new(name, help)).expect("valid metric"))
}

/// A gauge, registered in [`registry`].
pub fn gauge(name: &str, help: &str) -> IntGauge {
    register(IntGauge::with_opts(Opts::new(name, help)).expect("valid metric"))
}

/// A gauge with labels, registered in [`registry`].
pub fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

/// A histogram with labels, registered in [`registry`].
pub fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    register(
        HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            labels,
        )
        .expect("valid metric"),
    )
}

/// A histogram, registered in [`registry`].
pub fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    register(
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
            .expect("valid metric"),
    )
}

/// Seconds since the UUIDv7 `id` was minted (its embedded millisecond clock); `None` for
/// other versions.
pub fn age_of(id: Uuid) -> Option<f64> {
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    let minted = Duration::new(secs, nanos);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    Some(now.saturating_sub(minted).as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_age_of_a_fresh_uuid_v7_is_small() {
        let age = age_of(Uuid::now_v7()).unwrap();
        assert!((0.0..5.0).contains(&age), "{age}");
        assert_eq!(age_of(Uuid::new_v4()), None);
    }
}
