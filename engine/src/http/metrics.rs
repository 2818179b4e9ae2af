//! The HTTP surface's series:
//!
//! | series | type | labels | what |
//! |---|---|---|---|
//! | `sagaflow_commands_total` | counter | `aggregate_type`, `command`, `outcome` | HTTP commands by outcome: `accepted`, `rejected`, `conflict`, `error`, `replayed` |
//! | `sagaflow_command_seconds` | histogram | `aggregate_type` | HTTP command latency, from parsed request to answer |
//! | `sagaflow_commands_in_flight` | gauge | | command requests being executed now |
//! | `sagaflow_commands_shed_total` | counter | `reason` | command requests refused: `overloaded` (503 at once) or `timeout` |
//! | `sagaflow_admin_actions_total` | counter | `action` | admin actions asked for with the right token, whatever their outcome: `saga_retry_step`, `saga_abort`, `dead_letter_retry`, `dead_letter_discard`, `projection_rebuild` (each also logged, target `sagaflow::audit`) |

use std::sync::LazyLock;

use prometheus::{HistogramVec, IntCounterVec, IntGauge};

use crate::metrics::{counter_vec, gauge, histogram_vec, FAST_BUCKETS};

pub(crate) struct HttpMetrics {
    pub commands: IntCounterVec,
    pub command_seconds: HistogramVec,
    pub commands_in_flight: IntGauge,
    pub commands_shed: IntCounterVec,
    pub admin_actions: IntCounterVec,
}

pub(crate) fn metrics() -> &'static HttpMetrics {
    static METRICS: LazyLock<HttpMetrics> = LazyLock::new(|| {
        HttpMetrics {
        commands: counter_vec(
            "sagaflow_commands_total",
            "HTTP commands by aggregate type, command and outcome (accepted, rejected, conflict, error, replayed).",
            &["aggregate_type", "command", "outcome"],
        ),
        command_seconds: histogram_vec(
            "sagaflow_command_seconds",
            "HTTP command latency from the parsed request to the answer, in seconds.",
            &["aggregate_type"],
            FAST_BUCKETS,
        ),
        commands_in_flight: gauge(
            "sagaflow_commands_in_flight",
            "Command requests being executed now.",
        ),
        commands_shed: counter_vec(
            "sagaflow_commands_shed_total",
            "Command requests refused with 503: overloaded (at the concurrency limit) or timeout.",
            &["reason"],
        ),
        admin_actions: counter_vec(
            "sagaflow_admin_actions_total",
            "Admin actions asked for with the right token, by action, whatever their outcome.",
            &["action"],
        ),
    }
    });
    &METRICS
}
