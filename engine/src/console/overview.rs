//! `GET /admin/console/overview`: the state of the whole application at a glance, read from
//! the database (and the transport, for lag) when asked, so every process agrees on it.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};

use super::rows::{page, Filter};
use super::sagas::ConsoleSaga;
use super::Console;
use crate::http::{ApiError, QueryParams};
use crate::saga::read_model::{self, STATES, TERMINAL_STATES};

/// Buckets of the throughput and latency series.
const BUCKETS: i64 = 30;
/// The most recently updated sagas of each state whose steps the latency is measured over.
const LATENCY_SAMPLE: i64 = 2_000;
/// Sagas listed as the ones that have not moved for longest.
const STUCK: i64 = 5;
/// Longest wait for one consumer group's lag.
const LAG_TIMEOUT: Duration = Duration::from_secs(1);

/// The query of `GET /admin/console/overview`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct OverviewQuery {
    /// The minutes the series cover, 1 to 1440 (15 by default).
    #[param(minimum = 1, maximum = 1440)]
    window: Option<i64>,
}

/// Sagas of one type in one state.
#[derive(Debug, Serialize, ToSchema)]
pub struct StateCount {
    /// The saga type.
    pub saga_type: String,
    /// One of `running`, `compensating`, `completed`, `compensated`, `failed`.
    pub state: String,
    /// How many sagas of that type are in that state now.
    pub count: i64,
}

/// Sagas that ended in one interval, by how they ended.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ThroughputBucket {
    /// When the interval starts (it lasts `bucket_seconds`).
    pub start: DateTime<Utc>,
    /// Sagas that completed in the interval (their last update is in it).
    pub completed: i64,
    /// Sagas that compensated in the interval.
    pub compensated: i64,
    /// Sagas that failed in the interval.
    pub failed: i64,
}

/// Step latency in one interval: the steps that finished in it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LatencyBucket {
    /// When the interval starts (it lasts `bucket_seconds`).
    pub start: DateTime<Utc>,
    /// Steps measured.
    pub count: i64,
    /// The median, in milliseconds (absent without steps).
    pub p50_ms: Option<f64>,
    /// The 95th percentile, in milliseconds.
    pub p95_ms: Option<f64>,
}

/// The latency of one step of one saga type over the window.
#[derive(Debug, Serialize, ToSchema)]
pub struct StepLatency {
    /// The saga type.
    pub saga_type: String,
    /// The step's name.
    pub step: String,
    /// Steps measured: succeeded or failed, from first invocation to their end.
    pub count: i64,
    /// Median, in milliseconds.
    pub p50_ms: f64,
    /// 95th percentile, in milliseconds.
    pub p95_ms: f64,
    /// The slowest, in milliseconds.
    pub max_ms: f64,
}

/// How far one consumer group is behind on one topic.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsumerLag {
    /// The consumer group.
    pub group: String,
    /// The logical topic.
    pub topic: String,
    /// Messages behind the transport's end, summed over partitions (absent if the transport
    /// could not be asked: see `error`).
    pub lag: Option<i64>,
    /// Why the lag is unknown.
    pub error: Option<String>,
}

/// The outbox: what waits to be published.
#[derive(Debug, Serialize, ToSchema)]
pub struct OutboxInfo {
    /// Rows waiting.
    pub depth: i64,
    /// Age of the oldest row, in seconds.
    pub oldest_seconds: Option<f64>,
}

/// Dead letters of one consumer group in one status.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterCount {
    /// The consumer group that parked them.
    pub consumer: String,
    /// `parked`, `retried` or `discarded`.
    pub status: String,
    /// How many.
    pub count: i64,
}

/// The whole application at a glance.
#[derive(Debug, Serialize, ToSchema)]
pub struct Overview {
    /// When it was read.
    pub at: DateTime<Utc>,
    /// The interval the series cover, in seconds.
    pub window_seconds: i64,
    /// The length of one bucket of the series, in seconds.
    pub bucket_seconds: i64,
    /// Sagas by type and state, now.
    pub sagas: Vec<StateCount>,
    /// Sagas that ended, per bucket, oldest first.
    pub throughput: Vec<ThroughputBucket>,
    /// Latency of the steps that finished, per bucket, oldest first: measured over the
    /// `latency_sample` most recently updated sagas of each state.
    pub latency: Vec<LatencyBucket>,
    /// The same steps, per saga type and step.
    pub steps: Vec<StepLatency>,
    /// How many of the most recently updated sagas of each state the latency is measured over.
    pub latency_sample: i64,
    /// The lag of every consumer group of the application, whichever process runs it.
    pub consumers: Vec<ConsumerLag>,
    /// What waits to be published.
    pub outbox: OutboxInfo,
    /// Dead letters by consumer group and status.
    pub dead_letters: Vec<DeadLetterCount>,
    /// The sagas that have not ended and have not moved for longest.
    pub stuck: Vec<ConsoleSaga>,
}

/// The `p` quantile (0 to 1) of sorted `values`, nearest rank.
fn quantile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

fn bucket_of(t: DateTime<Utc>, from: DateTime<Utc>, bucket_seconds: i64) -> Option<usize> {
    let offset = (t - from).num_milliseconds();
    if offset < 0 {
        return None;
    }
    let i = offset / (bucket_seconds * 1000);
    (i < BUCKETS).then_some(i as usize)
}

async fn throughput(
    pool: &PgPool,
    from: DateTime<Utc>,
    bucket_seconds: i64,
) -> Result<Vec<ThroughputBucket>, sqlx::Error> {
    // One index range of (state, updated_at) per terminal state.
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT state, floor(extract(epoch FROM (updated_at - $1)) / $2)::int8 AS bucket, count(*)
         FROM sagas WHERE state = ANY($3) AND updated_at >= $1
         GROUP BY 1, 2",
    )
    .bind(from)
    .bind(bucket_seconds as f64)
    .bind(TERMINAL_STATES.as_slice())
    .fetch_all(pool)
    .await?;
    let mut buckets: Vec<ThroughputBucket> = (0..BUCKETS)
        .map(|i| ThroughputBucket {
            start: from + chrono::Duration::seconds(i * bucket_seconds),
            completed: 0,
            compensated: 0,
            failed: 0,
        })
        .collect();
    for (state, i, n) in rows {
        let Some(b) = usize::try_from(i).ok().and_then(|i| buckets.get_mut(i)) else {
            continue;
        };
        match state.as_str() {
            "completed" => b.completed += n,
            "compensated" => b.compensated += n,
            _ => b.failed += n,
        }
    }
    Ok(buckets)
}

type StepRow = (String, String, DateTime<Utc>, DateTime<Utc>);

async fn latency(
    pool: &PgPool,
    from: DateTime<Utc>,
    bucket_seconds: i64,
) -> Result<(Vec<LatencyBucket>, Vec<StepLatency>), sqlx::Error> {
    // The most recently updated sagas of each state (an index scan each), and their steps
    // that finished in the window.
    let branches: Vec<String> = (0..STATES.len())
        .map(|i| {
            format!(
                "(SELECT saga_type, steps FROM sagas WHERE state = ${} AND updated_at >= $1
                  ORDER BY updated_at DESC LIMIT $2)",
                i + 3
            )
        })
        .collect();
    let sql = format!(
        "SELECT r.saga_type, s->>'name', (s->>'started_at')::timestamptz,
                (s->>'finished_at')::timestamptz
         FROM ({}) r, jsonb_array_elements(r.steps) s
         WHERE s->>'status' IN ('succeeded', 'failed') AND s->>'started_at' IS NOT NULL
           AND (s->>'finished_at')::timestamptz >= $1",
        branches.join(" UNION ALL ")
    );
    let mut query = sqlx::query_as::<_, StepRow>(&sql)
        .bind(from)
        .bind(LATENCY_SAMPLE);
    for state in STATES {
        query = query.bind(state);
    }
    let rows = query.fetch_all(pool).await?;
    let mut per_bucket: Vec<Vec<f64>> = vec![Vec::new(); BUCKETS as usize];
    let mut per_step: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for (saga_type, step, started, finished) in rows {
        let ms = (finished - started).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0;
        if let Some(i) = bucket_of(finished, from, bucket_seconds) {
            per_bucket[i].push(ms);
        }
        per_step.entry((saga_type, step)).or_default().push(ms);
    }
    let sort = |v: &mut Vec<f64>| v.sort_by(f64::total_cmp);
    let buckets = per_bucket
        .into_iter()
        .enumerate()
        .map(|(i, mut v)| {
            sort(&mut v);
            LatencyBucket {
                start: from + chrono::Duration::seconds(i as i64 * bucket_seconds),
                count: v.len() as i64,
                p50_ms: quantile(&v, 0.5),
                p95_ms: quantile(&v, 0.95),
            }
        })
        .collect();
    let steps = per_step
        .into_iter()
        .map(|((saga_type, step), mut v)| {
            sort(&mut v);
            StepLatency {
                saga_type,
                step,
                count: v.len() as i64,
                p50_ms: quantile(&v, 0.5).unwrap_or_default(),
                p95_ms: quantile(&v, 0.95).unwrap_or_default(),
                max_ms: v.last().copied().unwrap_or_default(),
            }
        })
        .collect();
    Ok((buckets, steps))
}

async fn consumers(console: &Console) -> Vec<ConsumerLag> {
    let per_group = console.groups.iter().map(|g| async move {
        let topics: Vec<&str> = g.topics.iter().map(String::as_str).collect();
        let lag = tokio::time::timeout(
            LAG_TIMEOUT,
            crate::consumer::group_lag(&console.pool, &*console.transport, &g.group, &topics),
        )
        .await;
        g.topics
            .iter()
            .map(|topic| {
                let physical = console.transport.layout().topic(topic);
                let (lag, error) = match &lag {
                    Ok(Ok(partitions)) => (
                        Some(
                            partitions
                                .iter()
                                .filter(|p| p.topic == physical)
                                .map(|p| p.lag)
                                .sum(),
                        ),
                        None,
                    ),
                    Ok(Err(e)) => (None, Some(e.to_string())),
                    Err(_) => (None, Some("the transport did not answer within 1 s".into())),
                };
                ConsumerLag {
                    group: g.group.clone(),
                    topic: topic.clone(),
                    lag,
                    error,
                }
            })
            .collect::<Vec<_>>()
    });
    futures::future::join_all(per_group)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Sagas by state and type, throughput and step latency over the last minutes, consumer lag,
/// outbox depth, dead letters, and the sagas stuck longest.
#[utoipa::path(
    get,
    path = "/admin/console/overview",
    tag = "console",
    params(OverviewQuery),
    responses((status = 200, description = "the application at a glance", body = Overview))
)]
pub(super) async fn console_overview(
    State(console): State<Console>,
    QueryParams(q): QueryParams<OverviewQuery>,
) -> Result<Json<Overview>, ApiError> {
    let minutes = q.window.unwrap_or(15);
    if !(1..=1440).contains(&minutes) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "window must be between 1 and 1440 minutes",
        ));
    }
    let at = Utc::now();
    let window_seconds = minutes * 60;
    let bucket_seconds = window_seconds / BUCKETS;
    let from = at - chrono::Duration::seconds(bucket_seconds * BUCKETS);
    let pool = &console.pool;
    let everything = Filter::default();
    let (counts, throughput, latency, outbox, dead, stuck, consumers) = tokio::join!(
        read_model::count_by_type_and_state(pool),
        throughput(pool, from, bucket_seconds),
        latency(pool, from, bucket_seconds),
        sqlx::query_as::<_, (i64, Option<f64>)>(
            "SELECT count(*), extract(epoch FROM now() - min(created_at))::float8 FROM outbox"
        )
        .fetch_one(pool),
        crate::consumer::dead_letters::count_by_group_and_status(pool),
        page(
            pool,
            &["running", "compensating"],
            true,
            &everything,
            None,
            STUCK
        ),
        consumers(&console),
    );
    let mut sagas: Vec<StateCount> = counts?
        .into_iter()
        .map(|(saga_type, state, count)| StateCount {
            saga_type,
            state,
            count,
        })
        .collect();
    sagas.sort_by(|a, b| {
        let rank = |s: &str| STATES.iter().position(|x| *x == s);
        (&a.saga_type, rank(&a.state)).cmp(&(&b.saga_type, rank(&b.state)))
    });
    let (latency, steps) = latency?;
    let (depth, oldest_seconds) = outbox?;
    let mut dead_letters: Vec<DeadLetterCount> = dead?
        .into_iter()
        .map(|(consumer, status, count)| DeadLetterCount {
            consumer,
            status,
            count,
        })
        .collect();
    dead_letters.sort_by(|a, b| (&a.consumer, &a.status).cmp(&(&b.consumer, &b.status)));
    Ok(Json(Overview {
        at,
        window_seconds,
        bucket_seconds,
        sagas,
        throughput: throughput?,
        latency,
        steps,
        latency_sample: LATENCY_SAMPLE,
        consumers,
        outbox: OutboxInfo {
            depth,
            oldest_seconds,
        },
        dead_letters,
        stuck: stuck?
            .into_iter()
            .map(|r| ConsoleSaga::from_row(r, at))
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.95), Some(95.0));
        assert_eq!(quantile(&[7.0], 0.95), Some(7.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn a_time_falls_in_its_bucket_or_none() {
        let from: DateTime<Utc> = "2024-05-01T12:00:00Z".parse().unwrap();
        let at = |s: i64| from + chrono::Duration::seconds(s);
        assert_eq!(bucket_of(at(0), from, 30), Some(0));
        assert_eq!(bucket_of(at(29), from, 30), Some(0));
        assert_eq!(bucket_of(at(30), from, 30), Some(1));
        assert_eq!(
            bucket_of(at(30 * BUCKETS - 1), from, 30),
            Some(BUCKETS as usize - 1)
        );
        assert_eq!(bucket_of(at(30 * BUCKETS), from, 30), None);
        assert_eq!(bucket_of(at(-1), from, 30), None);
    }
}
