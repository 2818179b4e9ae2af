//! The outside-world participants' series:
//!
//! | series | type | labels | what |
//! |---|---|---|---|
//! | `sagaflow_external_calls_total` | counter | `participant`, `outcome` | calls to the outside system: `succeeded`, `rejected` (a business answer), `failed` (unreachable, timed out, a technical error), and `short_circuited` (not made: the circuit breaker was open) |
//! | `sagaflow_external_call_seconds` | histogram | `participant` | duration of the calls made |
//! | `sagaflow_circuit_breaker_state` | gauge | `participant` | 0 closed, 1 half-open (a probe call is allowed), 2 open (calls wait) |
//! | `sagaflow_circuit_breaker_opened_total` | counter | `participant` | times the breaker opened |

use std::sync::LazyLock;

use prometheus::{HistogramVec, IntCounterVec, IntGaugeVec};

use crate::metrics::{counter_vec, gauge_vec, histogram_vec, SLOW_BUCKETS};

pub(crate) struct ExternalMetrics {
    pub calls: IntCounterVec,
    pub call_seconds: HistogramVec,
    pub breaker_state: IntGaugeVec,
    pub breaker_opened: IntCounterVec,
}

pub(crate) fn metrics() -> &'static ExternalMetrics {
    static METRICS: LazyLock<ExternalMetrics> = LazyLock::new(|| {
        ExternalMetrics {
        calls: counter_vec(
            "sagaflow_external_calls_total",
            "Calls of outside-world participants to their outside system, by outcome: succeeded, rejected, failed, short_circuited (not made, the breaker was open).",
            &["participant", "outcome"],
        ),
        call_seconds: histogram_vec(
            "sagaflow_external_call_seconds",
            "Duration of the calls outside-world participants made, in seconds.",
            &["participant"],
            SLOW_BUCKETS,
        ),
        breaker_state: gauge_vec(
            "sagaflow_circuit_breaker_state",
            "State of an outside-world participant's circuit breaker: 0 closed, 1 half-open, 2 open.",
            &["participant"],
        ),
        breaker_opened: counter_vec(
            "sagaflow_circuit_breaker_opened_total",
            "Times an outside-world participant's circuit breaker opened.",
            &["participant"],
        ),
    }
    });
    &METRICS
}
