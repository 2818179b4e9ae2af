//! Retention: every table that grows with traffic, other than `events` (the truth) and the
//! read models (one row per business entity), keeps only what it still needs, pruned by the
//! component that runs the relay, in batches of a few hundred rows, each its own short
//! transaction that takes no lock a writer waits for (old rows only; writers add new ones).
//!
//! | table | kept | default |
//! |---|---|---|
//! | `message_log` (the embedded transport) | every message some registered consumer group has not committed, and every message younger than the window | 1 h |
//! | `processed_messages` | ids younger than the window (see [`crate::consumer::prune_processed`] for why that is safe) | 7 days |
//! | `idempotency_keys` | keys first used within the window: a repeat within it answers the first response, after it runs again | 24 h |
//! | `dead_letters` | parked ones always; retried or discarded ones for the window | 7 days |
//!
//! The others do not grow: the outbox is drained by the relay, a saga's deadline row is
//! deleted in the transaction that ends the saga, consumer offsets and transport heads are one
//! row per partition. `sagas` holds one row per saga, like a read model: it is the business's
//! history and stays. With autovacuum off, a table retention deleted from is vacuumed
//! afterwards, so its pages are reused.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::metrics::metrics;
use super::scrape::ConsumerGroup;
use crate::transport::TopicLayout;

/// How long each table keeps what it no longer needs; see the module's table.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Messages of the embedded log every registered group committed are kept this long.
    pub log: Duration,
    /// Message ids consumer groups recorded are kept this long.
    pub processed: Duration,
    /// Idempotency keys are kept this long.
    pub idempotency_keys: Duration,
    /// Retried and discarded dead letters are kept this long.
    pub dead_letters: Duration,
    /// How often the tables are pruned.
    pub interval: Duration,
    /// Rows per delete.
    pub batch: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            log: Duration::from_secs(3600),
            processed: Duration::from_secs(7 * 86_400),
            idempotency_keys: Duration::from_secs(86_400),
            dead_letters: Duration::from_secs(7 * 86_400),
            interval: Duration::from_secs(10),
            batch: 500,
        }
    }
}

fn before(window: Duration) -> chrono::DateTime<Utc> {
    Utc::now() - chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX)
}

/// Repeats `delete` (which deletes at most `batch` rows) until it deletes fewer; the total.
async fn drain<F, Fut>(table: &str, batch: i64, mut delete: F) -> Result<u64, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, sqlx::Error>>,
{
    let mut total = 0;
    loop {
        let n = delete().await?;
        total += n;
        if n > 0 {
            metrics()
                .retention_deleted
                .with_label_values(&[table])
                .inc_by(n);
        }
        if (n as i64) < batch {
            return Ok(total);
        }
        // Leave room for the writers between batches.
        tokio::task::yield_now().await;
    }
}

/// One pass over every table; the rows deleted, by table.
pub async fn prune(
    pool: &PgPool,
    groups: &[ConsumerGroup],
    layout: &TopicLayout,
    retention: &Retention,
) -> Result<HashMap<&'static str, u64>, sqlx::Error> {
    let batch = retention.batch.max(1);
    let mut deleted = HashMap::new();

    // The log: below the lowest position of the groups that read each topic.
    let appended_before = before(retention.log);
    let mut log = 0;
    for (topic, partition, _) in crate::transport::postgres::log_heads(pool).await? {
        let readers: Vec<&ConsumerGroup> = groups
            .iter()
            .filter(|g| g.topics.iter().any(|t| layout.topic(t) == topic))
            .collect();
        let mut below = i64::MAX;
        for g in &readers {
            let committed = crate::consumer::committed_offsets(pool, &g.group, &topic).await?;
            below = below.min(committed.get(&partition).copied().unwrap_or(0));
        }
        if readers.is_empty() || below == 0 {
            // A topic no registered group reads is kept whole: it may be another
            // application's, or a group's not registered yet.
            continue;
        }
        log += drain("message_log", batch, || {
            crate::transport::postgres::prune_log(
                pool,
                &topic,
                partition,
                below,
                appended_before,
                batch,
            )
        })
        .await?;
    }
    deleted.insert("message_log", log);
    let processed = before(retention.processed);
    deleted.insert(
        "processed_messages",
        drain("processed_messages", batch, || {
            crate::consumer::prune_processed(pool, processed, batch)
        })
        .await?,
    );
    let keys = before(retention.idempotency_keys);
    deleted.insert(
        "idempotency_keys",
        drain("idempotency_keys", batch, || {
            crate::command::prune_keys(pool, keys, batch)
        })
        .await?,
    );
    let letters = before(retention.dead_letters);
    deleted.insert(
        "dead_letters",
        drain("dead_letters", batch, || {
            crate::consumer::dead_letters::prune_resolved(pool, letters, batch)
        })
        .await?,
    );
    Ok(deleted)
}

/// Prunes every `retention.interval` until `shutdown`, vacuuming what it deleted from when
/// autovacuum is off.
pub async fn run(
    pool: PgPool,
    groups: Vec<ConsumerGroup>,
    layout: TopicLayout,
    retention: Retention,
    shutdown: CancellationToken,
) {
    let vacuum = !super::housekeeping::autovacuum_enabled(&pool)
        .await
        .unwrap_or(true);
    loop {
        match prune(&pool, &groups, &layout, &retention).await {
            Ok(deleted) => {
                let tables: Vec<&str> = deleted
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(t, _)| *t)
                    .collect();
                if !tables.is_empty() {
                    tracing::debug!(?deleted, "retention pruned");
                    if vacuum {
                        let sql =
                            format!("VACUUM (SKIP_LOCKED, TRUNCATE false) {}", tables.join(", "));
                        if let Err(e) = sqlx::query(&sql).execute(&pool).await {
                            tracing::warn!(error = %e, "vacuum after retention failed");
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "retention failed; trying again later"),
        }
        tokio::select! {
            _ = tokio::time::sleep(retention.interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
