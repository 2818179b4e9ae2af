//! The outbox relay's series:
//!
//! | series | type | labels | what |
//! |---|---|---|---|
//! | `sagaflow_relay_published_total` | counter | | messages the relay published |
//! | `sagaflow_relay_batches_total` | counter | | batches the relay published |
//! | `sagaflow_relay_failures_total` | counter | | relay batches that failed (their rows stay) |
//! | `sagaflow_relay_batch_seconds` | histogram | | one relay batch: read, publish, delete, commit |
//! | `sagaflow_relay_latency_seconds` | histogram | | a message's age when the relay's batch committed (outbox write to published) |

use std::sync::LazyLock;

use prometheus::{Histogram, IntCounter};

use crate::metrics::{counter, histogram, FAST_BUCKETS, SLOW_BUCKETS};

pub(crate) struct RelayMetrics {
    pub published: IntCounter,
    pub batches: IntCounter,
    pub failures: IntCounter,
    pub batch_seconds: Histogram,
    pub latency_seconds: Histogram,
}

pub(crate) fn metrics() -> &'static RelayMetrics {
    static METRICS: LazyLock<RelayMetrics> = LazyLock::new(|| {
        RelayMetrics {
        published: counter(
            "sagaflow_relay_published_total",
            "Messages the outbox relay published.",
        ),
        batches: counter(
            "sagaflow_relay_batches_total",
            "Batches the outbox relay published.",
        ),
        failures: counter(
            "sagaflow_relay_failures_total",
            "Relay batches that failed; their outbox rows stay and are sent again.",
        ),
        batch_seconds: histogram(
            "sagaflow_relay_batch_seconds",
            "Duration of one relay batch (read, publish, delete, commit), in seconds.",
            FAST_BUCKETS,
        ),
        latency_seconds: histogram(
            "sagaflow_relay_latency_seconds",
            "Age of a message when the relay's batch committed: from its outbox write to published, in seconds.",
            SLOW_BUCKETS,
        ),
    }
    });
    &METRICS
}
