//! The consumers' series:
//!
//! | series | type | labels | what |
//! |---|---|---|---|
//! | `sagaflow_consumer_messages_total` | counter | `consumer_group`, `outcome` | messages `applied`, or skipped as a `duplicate` |
//! | `sagaflow_consumer_batch_seconds` | histogram | `consumer_group` | one consumer transaction (handler and offset) |
//! | `sagaflow_consumer_failures_total` | counter | `consumer_group` | failed handler calls and batches |
//! | `sagaflow_consumer_dead_lettered_total` | counter | `consumer_group` | messages parked in `dead_letters` |

use std::sync::LazyLock;

use prometheus::{HistogramVec, IntCounterVec};

use crate::metrics::{counter_vec, histogram_vec, FAST_BUCKETS};

pub(crate) struct ConsumerMetrics {
    pub messages: IntCounterVec,
    pub batch_seconds: HistogramVec,
    pub failures: IntCounterVec,
    pub dead_lettered: IntCounterVec,
}

pub(crate) fn metrics() -> &'static ConsumerMetrics {
    static METRICS: LazyLock<ConsumerMetrics> = LazyLock::new(|| ConsumerMetrics {
        messages: counter_vec(
            "sagaflow_consumer_messages_total",
            "Messages a consumer group applied, or skipped as already applied (duplicate).",
            &["consumer_group", "outcome"],
        ),
        batch_seconds: histogram_vec(
            "sagaflow_consumer_batch_seconds",
            "Duration of one consumer transaction (handler and offset), in seconds.",
            &["consumer_group"],
            FAST_BUCKETS,
        ),
        failures: counter_vec(
            "sagaflow_consumer_failures_total",
            "Failed handler calls and consumer batches.",
            &["consumer_group"],
        ),
        dead_lettered: counter_vec(
            "sagaflow_consumer_dead_lettered_total",
            "Messages a consumer group parked in dead_letters.",
            &["consumer_group"],
        ),
    });
    &METRICS
}
