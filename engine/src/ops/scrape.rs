//! `GET /metrics`: every series of the process in Prometheus' text format, and the series
//! collected when scraped, from the database and the transport (so they agree with them),
//! concurrently and each within [`Scraper::timeout`]:
//!
//! | series | type | labels | what |
//! |---|---|---|---|
//! | `sagaflow_outbox_depth` | gauge | | rows waiting in the outbox |
//! | `sagaflow_consumer_lag` | gauge | `consumer_group`, `topic` | messages behind the transport's end, summed over partitions |
//! | `sagaflow_sagas` | gauge | `saga_type`, `state` | sagas by state (the `sagas` table) |
//! | `sagaflow_dead_letters` | gauge | `consumer_group`, `status` | rows of `dead_letters` |
//! | `sagaflow_table_bytes` | gauge | `table` | each table's size with its indexes, in bytes |
//! | `sagaflow_table_rows` | gauge | `table` | each table's live rows, as PostgreSQL's statistics estimate them |
//! | `sagaflow_scrape_collector_success` | gauge | `collector` | 1 if the collector answered in time, else 0 (its series are then missing) |
//!
//! The series recorded as things happen are named by their subsystems (the `metrics.rs` of
//! the command bus, the HTTP surface, the relay, the consumers and the sagas).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use prometheus::proto::MetricFamily;
use prometheus::{Encoder, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use sqlx::PgPool;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::transport::Transport;

/// A consumer group and the logical topics it reads, for `sagaflow_consumer_lag`.
#[derive(Debug, Clone)]
pub struct ConsumerGroup {
    /// The consumer group.
    pub group: String,
    /// Its logical topics; the lag is reported per topic, summed over partitions.
    pub topics: Vec<String>,
}

/// Renders `GET /metrics`: the recorded series, the ones collected from the database and the
/// transport at scrape time, and any `extra` registries (the binary's own series).
#[derive(Clone)]
pub struct Scraper {
    /// The database the scrape-time series are read from.
    pub pool: PgPool,
    /// The transport whose end offsets the lag is measured against.
    pub transport: Arc<dyn Transport>,
    /// The groups whose lag is reported (all the application's, whichever process runs them).
    pub groups: Vec<ConsumerGroup>,
    /// Registries rendered after the engine's own, such as a process's own series.
    pub extra: Vec<Registry>,
    /// Longest wait for each scrape-time collector; one that takes longer is reported as
    /// failed in `sagaflow_scrape_collector_success`, so a scrape never takes much longer.
    pub timeout: Duration,
}

impl Scraper {
    /// A scraper of `groups` over `pool` and `transport`, with no extra registry and 1 s for the
    /// scrape-time reads.
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
        let mut families = crate::metrics::registry().gather();
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
        let outbox_depth = IntGauge::with_opts(Opts::new(
            "sagaflow_outbox_depth",
            "Rows waiting in the outbox (all shards).",
        ))
        .expect("valid metric");
        r.register(Box::new(outbox_depth.clone()))
            .expect("metric names are unique");
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
        let table_bytes = gauge_vec(
            &r,
            "sagaflow_table_bytes",
            "Size of each table of the database's schema, with its indexes and TOAST, in bytes.",
            &["table"],
        );
        let table_rows = gauge_vec(
            &r,
            "sagaflow_table_rows",
            "Live rows of each table of the database's schema, as PostgreSQL's statistics estimate them.",
            &["table"],
        );
        let success = gauge_vec(
            &r,
            "sagaflow_scrape_collector_success",
            "1 if a scrape-time collector answered within its timeout, else 0 (its series are missing).",
            &["collector"],
        );
        let timeout = self.timeout;
        let depth = async {
            let depth = within(timeout, crate::outbox::depth(&self.pool)).await?;
            outbox_depth.set(depth);
            Some(())
        };
        let saga_counts = async {
            let rows = within(
                timeout,
                crate::saga::read_model::count_by_type_and_state(&self.pool),
            )
            .await?;
            for (saga_type, state, n) in rows {
                sagas.with_label_values(&[&saga_type, &state]).set(n);
            }
            Some(())
        };
        let dead = async {
            let rows = within(
                timeout,
                crate::consumer::dead_letters::count_by_group_and_status(&self.pool),
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
        let tables = async {
            let rows: Vec<(String, i64, i64)> = within(
                timeout,
                sqlx::query_as(
                    "SELECT s.relname::text, pg_total_relation_size(s.relid), s.n_live_tup
                     FROM pg_stat_user_tables s WHERE s.schemaname = current_schema()",
                )
                .fetch_all(&self.pool),
            )
            .await?;
            for (table, bytes, live) in rows {
                table_bytes.with_label_values(&[&table]).set(bytes);
                table_rows.with_label_values(&[&table]).set(live);
            }
            Some(())
        };
        let (depth, saga_counts, dead, lags, tables) =
            tokio::join!(depth, saga_counts, dead, lags, tables);
        for (collector, result) in [
            ("outbox_depth", depth),
            ("sagas", saga_counts),
            ("dead_letters", dead),
            ("consumer_lag", lags),
            ("tables", tables),
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
    let gauge = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(gauge.clone()))
        .expect("metric names are unique");
    gauge
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
pub fn router(scraper: Scraper) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(render))
        .with_state(Arc::new(scraper))
}

/// Every series of the process, in Prometheus' text exposition format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "the series", content_type = "text/plain", body = String))
)]
async fn render(State(scraper): State<Arc<Scraper>>) -> Response {
    let body = scraper.render().await;
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
