//! The operations' series:
//!
//! | series | type | labels | what |
//! |---|---|---|---|
//! | `sagaflow_retention_deleted_total` | counter | `table` | rows retention deleted |

use std::sync::LazyLock;

use prometheus::IntCounterVec;

use crate::metrics::counter_vec;

pub(crate) struct OpsMetrics {
    pub retention_deleted: IntCounterVec,
}

pub(crate) fn metrics() -> &'static OpsMetrics {
    static METRICS: LazyLock<OpsMetrics> = LazyLock::new(|| OpsMetrics {
        retention_deleted: counter_vec(
            "sagaflow_retention_deleted_total",
            "Rows retention deleted, by table.",
            &["table"],
        ),
    });
    &METRICS
}
