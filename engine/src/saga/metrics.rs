//! The sagas' series:
//!
//! | series | type | labels | what |
//! |---|---|---|---|
//! | `sagaflow_saga_step_seconds` | histogram | `step`, `outcome` | from a saga step's command being sent to its reply being applied by the orchestrator; `outcome` is `succeeded` or `rejected` |

use std::sync::LazyLock;

use prometheus::HistogramVec;

use crate::metrics::{histogram_vec, SLOW_BUCKETS};

pub(crate) struct SagaMetrics {
    pub step_seconds: HistogramVec,
}

pub(crate) fn metrics() -> &'static SagaMetrics {
    static METRICS: LazyLock<SagaMetrics> = LazyLock::new(|| {
        SagaMetrics {
        step_seconds: histogram_vec(
            "sagaflow_saga_step_seconds",
            "Time from a saga step's command being sent to its reply being applied by the orchestrator, in seconds.",
            &["step", "outcome"],
            SLOW_BUCKETS,
        ),
    }
    });
    &METRICS
}
