//! The command bus's series:
//!
//! | series | type | labels | what |
//! |---|---|---|---|
//! | `sagaflow_append_seconds` | histogram | `aggregate_type` | the command bus's append transaction (events, outbox rows, idempotency key) |

use std::sync::LazyLock;

use prometheus::HistogramVec;

use crate::metrics::{histogram_vec, FAST_BUCKETS};

pub(crate) struct CommandMetrics {
    pub append_seconds: HistogramVec,
}

pub(crate) fn metrics() -> &'static CommandMetrics {
    static METRICS: LazyLock<CommandMetrics> = LazyLock::new(|| {
        CommandMetrics {
        append_seconds: histogram_vec(
            "sagaflow_append_seconds",
            "Duration of the command bus's append transaction (events, outbox rows, idempotency key), in seconds.",
            &["aggregate_type"],
            FAST_BUCKETS,
        ),
    }
    });
    &METRICS
}
