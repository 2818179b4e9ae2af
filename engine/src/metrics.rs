//! Every metric the engine exports, by name, in Prometheus' text format at `GET /metrics`.
//!
//! Recorded as things happen (process-wide, since the process started):
//!
//! | series | type | labels | what |
//! |---|---|---|---|
//! | `sagaflow_commands_total` | counter | `aggregate_type`, `command`, `outcome` | HTTP commands by outcome: `accepted`, `rejected`, `conflict`, `error`, `replayed` |
//! | `sagaflow_command_seconds` | histogram | `aggregate_type` | HTTP command latency, from parsed request to answer |
//! | `sagaflow_append_seconds` | histogram | `aggregate_type` | the command bus's append transaction (events, outbox rows, idempotency key) |
//! | `sagaflow_commands_in_flight` | gauge | | command requests being executed now |
//! | `sagaflow_commands_shed_total` | counter | `reason` | command requests refused: `overloaded` (503 at once) or `timeout` |
//! | `sagaflow_relay_published_total` | counter | | messages the relay published |
//! | `sagaflow_relay_batches_total` | counter | | batches the relay published |
//! | `sagaflow_relay_failures_total` | counter | | relay batches that failed (their rows stay) |
//! | `sagaflow_relay_batch_seconds` | histogram | | one relay batch: read, publish, delete, commit |
//! | `sagaflow_relay_latency_seconds` | histogram | | a message's age when the relay's batch committed (outbox write to published) |
//! | `sagaflow_consumer_messages_total` | counter | `consumer_group`, `outcome` | messages `applied`, or skipped as a `duplicate` |
//! | `sagaflow_consumer_batch_seconds` | histogram | `consumer_group` | one consumer transaction (handler and offset) |
//! | `sagaflow_consumer_failures_total` | counter | `consumer_group` | failed handler calls and batches |
//! | `sagaflow_consumer_dead_lettered_total` | counter | `consumer_group` | messages parked in `dead_letters` |
//! | `sagaflow_saga_step_seconds` | histogram | `step`, `outcome` | from a saga step's command being sent to its reply being applied by the orchestrator; `outcome` is `succeeded` or `rejected` |
//!
//! Collected when scraped, from the database and the transport (so they agree with them),
//! concurrently and each within [`Scraper::timeout`]:
//!
//! | series | type | labels | what |
//! |---|---|---|---|
//! | `sagaflow_outbox_depth` | gauge | | rows waiting in the outbox |
//! | `sagaflow_consumer_lag` | gauge | `consumer_group`, `topic` | messages behind the transport's end, summed over partitions |
//! | `sagaflow_sagas` | gauge | `saga_type`, `state` | sagas by state (the `sagas` table) |
//! | `sagaflow_dead_letters` | gauge | `consumer_group`, `status` | rows of `dead_letters` |
//! | `sagaflow_scrape_collector_success` | gauge | `collector` | 1 if the collector answered in time, else 0 (its series are then missing) |

use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::saga::messages::REPLY_EVENT_TYPE;
use crate::saga::ORCHESTRATOR_GROUP;
use crate::transport::{Delivery, Transport};

/// Latency buckets for work that takes milliseconds (commands, batches).
const FAST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Latency buckets for work that crosses processes (relay latency, saga steps).
const SLOW_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The engine's metrics recorded as things happen. See the module documentation.
pub struct EngineMetrics {
    registry: Registry,
    pub commands: IntCounterVec,
    pub command_seconds: HistogramVec,
    pub append_seconds: HistogramVec,
    pub commands_in_flight: IntGauge,
    pub commands_shed: IntCounterVec,
    pub relay_published: IntCounter,
    pub relay_batches: IntCounter,
    pub relay_failures: IntCounter,
    pub relay_batch_seconds: Histogram,
    pub relay_latency_seconds: Histogram,
    pub consumer_messages: IntCounterVec,
    pub consumer_batch_seconds: HistogramVec,
    pub consumer_failures: IntCounterVec,
    pub consumer_dead_lettered: IntCounterVec,
    pub saga_step_seconds: HistogramVec,
}

/// The process's engine metrics.
pub fn metrics() -> &'static EngineMetrics {
    static METRICS: LazyLock<EngineMetrics> = LazyLock::new(EngineMetrics::new);
    &METRICS
}

fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(
        registry,
        IntCounter::with_opts(Opts::new(name, help)).expect("valid metric"),
    )
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    register(
        registry,
        HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            labels,
        )
        .expect("valid metric"),
    )
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    register(
        registry,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
            .expect("valid metric"),
    )
}

impl EngineMetrics {
    fn new() -> Self {
        let r = Registry::new();
        EngineMetrics {
            commands: counter_vec(
                &r,
                "sagaflow_commands_total",
                "HTTP commands by aggregate type, command and outcome (accepted, rejected, conflict, error, replayed).",
                &["aggregate_type", "command", "outcome"],
            ),
            command_seconds: histogram_vec(
                &r,
                "sagaflow_command_seconds",
                "HTTP command latency from the parsed request to the answer, in seconds.",
                &["aggregate_type"],
                FAST_BUCKETS,
            ),
            append_seconds: histogram_vec(
                &r,
                "sagaflow_append_seconds",
                "Duration of the command bus's append transaction (events, outbox rows, idempotency key), in seconds.",
                &["aggregate_type"],
                FAST_BUCKETS,
            ),
            commands_in_flight: register(
                &r,
                IntGauge::with_opts(Opts::new(
                    "sagaflow_commands_in_flight",
                    "Command requests being executed now.",
                ))
                .expect("valid metric"),
            ),
            commands_shed: counter_vec(
                &r,
                "sagaflow_commands_shed_total",
                "Command requests refused with 503: overloaded (at the concurrency limit) or timeout.",
                &["reason"],
            ),
            relay_published: counter(
                &r,
                "sagaflow_relay_published_total",
                "Messages the outbox relay published.",
            ),
            relay_batches: counter(
                &r,
                "sagaflow_relay_batches_total",
                "Batches the outbox relay published.",
            ),
            relay_failures: counter(
                &r,
                "sagaflow_relay_failures_total",
                "Relay batches that failed; their outbox rows stay and are sent again.",
            ),
            relay_batch_seconds: histogram(
                &r,
                "sagaflow_relay_batch_seconds",
                "Duration of one relay batch (read, publish, delete, commit), in seconds.",
                FAST_BUCKETS,
            ),
            relay_latency_seconds: histogram(
                &r,
                "sagaflow_relay_latency_seconds",
                "Age of a message when the relay's batch committed: from its outbox write to published, in seconds.",
                SLOW_BUCKETS,
            ),
            consumer_messages: counter_vec(
                &r,
                "sagaflow_consumer_messages_total",
                "Messages a consumer group applied, or skipped as already applied (duplicate).",
                &["consumer_group", "outcome"],
            ),
            consumer_batch_seconds: histogram_vec(
                &r,
                "sagaflow_consumer_batch_seconds",
                "Duration of one consumer transaction (handler and offset), in seconds.",
                &["consumer_group"],
                FAST_BUCKETS,
            ),
            consumer_failures: counter_vec(
                &r,
                "sagaflow_consumer_failures_total",
                "Failed handler calls and consumer batches.",
                &["consumer_group"],
            ),
            consumer_dead_lettered: counter_vec(
                &r,
                "sagaflow_consumer_dead_lettered_total",
                "Messages a consumer group parked in dead_letters.",
                &["consumer_group"],
            ),
            saga_step_seconds: histogram_vec(
                &r,
                "sagaflow_saga_step_seconds",
                "Time from a saga step's command being sent to its reply being applied by the orchestrator, in seconds.",
                &["step", "outcome"],
                SLOW_BUCKETS,
            ),
            registry: r,
        }
    }

    /// The current values of every recorded series.
    pub fn gather(&self) -> Vec<MetricFamily> {
        self.registry.gather()
    }
}

/// Seconds since the UUIDv7 `id` was minted (its embedded millisecond clock); `None` for
/// other versions.
pub fn age_of(id: Uuid) -> Option<f64> {
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    let minted = Duration::new(secs, nanos);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    Some(now.saturating_sub(minted).as_secs_f64())
}

/// Records what a consumer group's committed batch says about saga steps: for each reply the
/// orchestrator applied, the time since the command it answers was sent (the command's id is
/// a UUIDv7 minted when the step was invoked).
pub(crate) fn observe_applied(group: &str, applied: &[Delivery]) {
    if group != ORCHESTRATOR_GROUP {
        return;
    }
    for m in applied {
        let e = &m.envelope;
        if e.event_type != REPLY_EVENT_TYPE {
            continue;
        }
        let (Some(command_id), Some(step)) = (e.metadata.causation_id, &e.metadata.saga_step)
        else {
            continue;
        };
        let outcome = match e.payload.get("outcome").and_then(|o| o.as_str()) {
            Some("succeeded") => "succeeded",
            Some("rejected") => "rejected",
            _ => "other",
        };
        if let Some(age) = age_of(command_id) {
            metrics()
                .saga_step_seconds
                .with_label_values(&[step.as_str(), outcome])
                .observe(age);
        }
    }
}

/// A consumer group and the logical topics it reads, for `sagaflow_consumer_lag`.
#[derive(Debug, Clone)]
pub struct ConsumerGroup {
    pub group: String,
    pub topics: Vec<String>,
}

/// Renders `GET /metrics`: the recorded series, the ones collected from the database and the
/// transport at scrape time, and any `extra` registries (the binary's own series).
#[derive(Clone)]
pub struct Scraper {
    pub pool: PgPool,
    pub transport: Arc<dyn Transport>,
    /// The groups whose lag is reported (all the application's, whichever process runs them).
    pub groups: Vec<ConsumerGroup>,
    pub extra: Vec<Registry>,
    /// Longest wait for each scrape-time collector; one that takes longer is reported as
    /// failed in `sagaflow_scrape_collector_success`, so a scrape never takes much longer.
    pub timeout: Duration,
}

impl Scraper {
    pub fn new(pool: PgPool, transport: Arc<dyn Transport>, groups: Vec<ConsumerGroup>) -> Self {
        Scraper {
            pool,
            transport,
            groups,
            extra: Vec::new(),
            timeout: Duration::from_secs(1),
        }
    }

    /// Every series, in Prometheus' text exposition format.
    pub async fn render(&self) -> String {
        let mut families = metrics().gather();
        families.extend(self.collect().await);
        for r in &self.extra {
            families.extend(r.gather());
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut out)
            .expect("the text encoder writes to memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    /// The scrape-time series, collected concurrently.
    async fn collect(&self) -> Vec<MetricFamily> {
        let r = Registry::new();
        let outbox_depth = register(
            &r,
            IntGauge::with_opts(Opts::new(
                "sagaflow_outbox_depth",
                "Rows waiting in the outbox (all shards).",
            ))
            .expect("valid metric"),
        );
        let lag = gauge_vec(
            &r,
            "sagaflow_consumer_lag",
            "Messages a consumer group is behind the transport's end, summed over the topic's partitions.",
            &["consumer_group", "topic"],
        );
        let sagas = gauge_vec(
            &r,
            "sagaflow_sagas",
            "Sagas by type and state, from the sagas table.",
            &["saga_type", "state"],
        );
        let dead_letters = gauge_vec(
            &r,
            "sagaflow_dead_letters",
            "Rows of dead_letters by consumer group and status.",
            &["consumer_group", "status"],
        );
        let success = gauge_vec(
            &r,
            "sagaflow_scrape_collector_success",
            "1 if a scrape-time collector answered within its timeout, else 0 (its series are missing).",
            &["collector"],
        );
        let timeout = self.timeout;
        let depth = async {
            let depth = within(timeout, crate::outbox::relay::outbox_depth(&self.pool)).await?;
            outbox_depth.set(depth);
            Some(())
        };
        let saga_counts = async {
            let rows: Vec<(String, String, i64)> = within(
                timeout,
                sqlx::query_as(
                    "SELECT saga_type, state, count(*) FROM sagas GROUP BY saga_type, state",
                )
                .fetch_all(&self.pool),
            )
            .await?;
            for (saga_type, state, n) in rows {
                sagas.with_label_values(&[&saga_type, &state]).set(n);
            }
            Some(())
        };
        let dead = async {
            let rows: Vec<(String, String, i64)> = within(
                timeout,
                sqlx::query_as(
                    "SELECT consumer_group, status, count(*) FROM dead_letters GROUP BY 1, 2",
                )
                .fetch_all(&self.pool),
            )
            .await?;
            for (group, status, n) in rows {
                dead_letters.with_label_values(&[&group, &status]).set(n);
            }
            Some(())
        };
        let lags = async {
            let per_group = self.groups.iter().map(|g| async move {
                let topics: Vec<&str> = g.topics.iter().map(String::as_str).collect();
                let lag = within(
                    timeout,
                    crate::consumer::group_lag(
                        &self.pool,
                        self.transport.as_ref(),
                        &g.group,
                        &topics,
                    ),
                )
                .await?;
                Some((g, lag))
            });
            let mut ok = true;
            for result in futures::future::join_all(per_group).await {
                match result {
                    Some((g, partitions)) => {
                        for topic in &g.topics {
                            let physical = self.transport.layout().topic(topic);
                            let behind: i64 = partitions
                                .iter()
                                .filter(|p| p.topic == physical)
                                .map(|p| p.lag)
                                .sum();
                            lag.with_label_values(&[&g.group, &physical]).set(behind);
                        }
                    }
                    None => ok = false,
                }
            }
            ok.then_some(())
        };
        let (depth, saga_counts, dead, lags) = tokio::join!(depth, saga_counts, dead, lags);
        for (collector, result) in [
            ("outbox_depth", depth),
            ("sagas", saga_counts),
            ("dead_letters", dead),
            ("consumer_lag", lags),
        ] {
            success
                .with_label_values(&[collector])
                .set(i64::from(result.is_some()));
        }
        let mut families = r.gather();
        // A collector that failed leaves its gauge empty; drop it rather than report zero.
        families.retain(|f| !f.get_metric().is_empty());
        families
    }
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        registry,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

/// `work`'s result if it succeeds within `timeout`; failures are logged at debug level.
async fn within<T, E: std::fmt::Display>(
    timeout: Duration,
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Option<T> {
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "metrics collector failed");
            None
        }
        Err(_) => {
            tracing::debug!(
                timeout_ms = timeout.as_millis() as u64,
                "metrics collector timed out"
            );
            None
        }
    }
}

/// `GET /metrics`, rendered by `scraper`.
pub fn router(scraper: Scraper) -> Router {
    Router::new()
        .route("/metrics", get(render))
        .with_state(Arc::new(scraper))
}

async fn render(State(scraper): State<Arc<Scraper>>) -> Response {
    let body = scraper.render().await;
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_recorded_series_is_named_sagaflow_and_documented() {
        // Touch one child of each vector so it appears in the output.
        let m = metrics();
        m.commands
            .with_label_values(&["t", "c", "accepted"])
            .inc_by(0);
        m.command_seconds.with_label_values(&["t"]);
        m.append_seconds.with_label_values(&["t"]);
        m.commands_shed.with_label_values(&["overloaded"]);
        m.consumer_messages.with_label_values(&["g", "applied"]);
        m.consumer_batch_seconds.with_label_values(&["g"]);
        m.consumer_failures.with_label_values(&["g"]);
        m.consumer_dead_lettered.with_label_values(&["g"]);
        m.saga_step_seconds.with_label_values(&["s", "succeeded"]);
        let docs = include_str!("metrics.rs");
        let families = m.gather();
        assert_eq!(families.len(), 15);
        for f in families {
            assert!(f.name().starts_with("sagaflow_"), "{}", f.name());
            assert!(!f.help().is_empty());
            assert!(
                docs.contains(&format!("| `{}` |", f.name())),
                "{} is missing from the table in the module documentation",
                f.name()
            );
        }
    }

    #[test]
    fn the_age_of_a_fresh_uuid_v7_is_small() {
        let age = age_of(Uuid::now_v7()).unwrap();
        assert!((0.0..5.0).contains(&age), "{age}");
        assert_eq!(age_of(Uuid::new_v4()), None);
    }
}
