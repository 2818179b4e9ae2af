//! Vacuum and analyze for the engine's tables, where autovacuum does not do them (soon enough).
//!
//! - **Vacuum.** The outbox is a queue (every row is inserted, then deleted once relayed), and
//!   saga deadlines, the sagas read model, consumer offsets and transport heads are updated on
//!   every step. Without vacuum their dead rows pile up: the relay's `ORDER BY id LIMIT n`
//!   walks them on every poll, and each update lands on a fuller page. These tables (only
//!   these, `SKIP_LOCKED`) are vacuumed every `vacuum_interval`, without truncating the file: giving
//!   back trailing pages needs an exclusive lock that every writer of a queue would wait for,
//!   and vacuum waits up to 5 s for it.
//! - **Analyze.** A prepared statement's cached generic plan is made for the table's size at
//!   that moment, and only an `ANALYZE` (or DDL) makes sessions plan again. A table that was
//!   empty when the engine started (a new deployment, a truncated benchmark) would keep its
//!   sequential-scan plans once it is large. Twice a second, each table of the schema that
//!   more than doubled since the planner last measured it (`pg_class.relpages`) is analyzed,
//!   so a table of any size is analyzed a logarithmic number of times. Once the planner has
//!   seen a table at [`ANALYZE_CEILING_PAGES`] it is left alone: the planner scales a known
//!   row density by the file's current size, so more growth cannot turn an index lookup into
//!   a scan, and re-analyzing a large table mid-run costs far more. Autovacuum analyzes
//!   too, but only after a tenth of the table changed and up to a minute later; this runs
//!   whether autovacuum is on or not, and costs little because it so rarely finds work.
//!
//! With autovacuum on, only the analyze runs.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// The tables vacuumed: those whose rows are updated or deleted as messages flow.
pub const CHURNED_TABLES: &[&str] = &[
    "outbox",
    "saga_deadlines",
    "sagas",
    "consumer_offsets",
    "message_log_heads",
];

/// How often the churned tables are vacuumed when autovacuum is off.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

/// Whether the server runs autovacuum.
pub async fn autovacuum_enabled(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let setting: String = sqlx::query_scalar("SELECT current_setting('autovacuum')")
        .fetch_one(pool)
        .await?;
    Ok(setting == "on")
}

/// Vacuums [`CHURNED_TABLES`], skipping any that another session holds (another engine
/// process vacuuming it right now). Emptied pages at the end of a table stay allocated (see
/// the module documentation); they are reused by the next inserts.
pub async fn vacuum_churned_tables(pool: &PgPool) -> Result<(), sqlx::Error> {
    let sql = format!(
        "VACUUM (SKIP_LOCKED, TRUNCATE false) {}",
        CHURNED_TABLES.join(", ")
    );
    sqlx::query(&sql).execute(pool).await?;
    Ok(())
}

/// Pages a table may grow by, beyond doubling, before it is analyzed again.
const GROWTH_SLACK_PAGES: i64 = 8;

/// A table the planner has measured at this many pages (8 MiB) or more is not analyzed for
/// its growth any more (see the module documentation).
pub const ANALYZE_CEILING_PAGES: i64 = 1024;

/// Analyzes the tables of the current schema whose file grew to more than twice the size the
/// planner last recorded for them; returns their names.
///
/// Only the indexed columns are analyzed: they decide between an index lookup and a scan,
/// and skipping the JSON payloads makes it about six times cheaper. The table's size, which
/// made the stale plan, is recorded either way.
pub async fn analyze_grown_tables(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    let grown: Vec<(String, Vec<String>)> = sqlx::query_as(
        "SELECT c.relname::text, array_agg(DISTINCT a.attname::text ORDER BY a.attname::text)
         FROM pg_class c
         JOIN pg_index i ON i.indrelid = c.oid
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (i.indkey)
         WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'
           AND pg_relation_size(c.oid) / current_setting('block_size')::int8
               > 2 * c.relpages::int8 + $1
           AND c.relpages < $2
         GROUP BY c.relname
         ORDER BY c.relname",
    )
    .bind(GROWTH_SLACK_PAGES)
    .bind(ANALYZE_CEILING_PAGES as i32)
    .fetch_all(pool)
    .await?;
    for (table, columns) in &grown {
        let columns: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
        let sql = format!(
            "ANALYZE (SKIP_LOCKED) {} ({})",
            quote_ident(table),
            columns.join(", ")
        );
        sqlx::query(&sql).execute(pool).await?;
    }
    Ok(grown.into_iter().map(|(table, _)| table).collect())
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// How often tables are checked for growth. The check reads `pg_class` and the tables' file
/// sizes, and is cheap; a stale plan on a table that grows fast costs more the longer it lives.
pub const GROWTH_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Until `shutdown`: analyzes grown tables every [`GROWTH_CHECK_INTERVAL`] and, given a
/// `vacuum_interval`, vacuums the churned tables that often if autovacuum is off.
pub async fn run(pool: PgPool, vacuum_interval: Option<Duration>, shutdown: CancellationToken) {
    let vacuum_interval = match vacuum_interval {
        Some(interval) => match autovacuum_enabled(&pool).await {
            Ok(true) => None,
            Ok(false) => Some(interval),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the autovacuum setting; not vacuuming");
                None
            }
        },
        None => None,
    };
    if let Some(interval) = vacuum_interval {
        tracing::info!(
            every_seconds = interval.as_secs_f64(),
            "autovacuum is off: the engine vacuums its queue tables itself"
        );
    }
    let mut next_vacuum = tokio::time::Instant::now() + vacuum_interval.unwrap_or_default();
    loop {
        match analyze_grown_tables(&pool).await {
            Ok(grown) if !grown.is_empty() => {
                tracing::debug!(tables = ?grown, "analyzed grown tables")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "analyze of grown tables failed; trying again later")
            }
        }
        if let Some(interval) = vacuum_interval {
            if tokio::time::Instant::now() >= next_vacuum {
                if let Err(e) = vacuum_churned_tables(&pool).await {
                    tracing::warn!(error = %e, "vacuum of the queue tables failed; trying again later");
                }
                next_vacuum = tokio::time::Instant::now() + interval;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(GROWTH_CHECK_INTERVAL) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Metadata;
    use crate::store::{read_stream_on, EventStore, NewEvent};

    #[sqlx::test(migrations = "./migrations")]
    async fn vacuum_lets_a_drained_outbox_reuse_its_pages(pool: PgPool) {
        let fill_and_drain = || async {
            sqlx::query(
                "INSERT INTO outbox (shard, topic, partition_key, message_id, envelope)
                 SELECT 0, 't', 'k', gen_random_uuid(), '{}' FROM generate_series(1, 2000)",
            )
            .execute(&pool)
            .await
            .unwrap();
            sqlx::query("DELETE FROM outbox")
                .execute(&pool)
                .await
                .unwrap();
            sqlx::query_scalar::<_, i64>("SELECT pg_relation_size('outbox') / 8192")
                .fetch_one(&pool)
                .await
                .unwrap()
        };
        let pages = fill_and_drain().await;
        assert!(pages > 1, "2,000 dead rows fill pages");
        vacuum_churned_tables(&pool).await.unwrap();
        // The dead rows' space is free again: the next 2,000 rows fit in the same pages.
        assert_eq!(fill_and_drain().await, pages);
    }

    fn event() -> NewEvent {
        NewEvent {
            message_id: uuid::Uuid::now_v7(),
            event_type: "counted".into(),
            schema_version: 1,
            payload: serde_json::json!({}),
            metadata: Metadata::new_root(),
        }
    }

    /// Appends and stream reads that first ran while `events` was empty (a new deployment, or
    /// a table truncated under a running pool) use the stream index again once the grown table
    /// is analyzed. Without the analyze, the session keeps the generic plan made for an empty
    /// table: a sequential scan of all of `events` for every append.
    #[sqlx::test(migrations = "./migrations")]
    async fn statements_planned_on_an_empty_table_use_the_index_once_it_grew(test_pool: PgPool) {
        let pool = crate::db::connect_with(test_pool.connect_options().as_ref().clone(), 1)
            .await
            .unwrap();
        let store = EventStore::new(pool.clone());
        let append_and_read = |stream: String| {
            let (pool, store) = (pool.clone(), store.clone());
            async move {
                let mut tx = crate::db::begin_reusing_plans(&pool).await.unwrap();
                // This backend's scans of `events` not yet reported (earlier ones included).
                let scans =
                    "SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'events'";
                let before: i64 = sqlx::query_scalar(scans).fetch_one(&mut *tx).await.unwrap();
                store.append(&mut tx, &stream, 0, &[event()]).await.unwrap();
                let other = format!("{stream}-other");
                store
                    .append_many(
                        &mut tx,
                        &[
                            (stream.as_str(), 1, &[event()]),
                            (other.as_str(), 0, &[event()]),
                        ],
                    )
                    .await
                    .unwrap();
                let read = read_stream_on(&mut *tx, &stream, 1, 10).await.unwrap();
                assert_eq!(read.len(), 2);
                let after: i64 = sqlx::query_scalar(scans).fetch_one(&mut *tx).await.unwrap();
                tx.commit().await.unwrap();
                after - before
            }
        };
        // Emptied and analyzed as empty: the planner knows the table is small.
        for sql in ["TRUNCATE events CASCADE", "ANALYZE events"] {
            sqlx::query(sql).execute(&test_pool).await.unwrap();
        }
        // Generic plans, made for an empty table.
        for i in 0..3 {
            append_and_read(format!("s-{i}")).await;
        }
        sqlx::query(
            "INSERT INTO events (stream_id, stream_version, message_id, event_type, payload, metadata)
             SELECT 'bulk-' || n, 1, gen_random_uuid(), 'counted', '{}', '{}'
             FROM generate_series(1, 20000) AS n",
        )
        .execute(&test_pool)
        .await
        .unwrap();
        let analyzed = analyze_grown_tables(&test_pool).await.unwrap();
        assert!(analyzed.contains(&"events".to_string()), "{analyzed:?}");
        assert_eq!(
            append_and_read("late".into()).await,
            0,
            "a statement scanned the whole events table"
        );
        // Nothing grew since: nothing is analyzed again.
        assert_eq!(
            analyze_grown_tables(&test_pool).await.unwrap(),
            Vec::<String>::new()
        );
    }

    #[sqlx::test(migrations = "./migrations")]
    async fn a_table_measured_large_is_not_analyzed_for_growth(pool: PgPool) {
        let pages = |pool: PgPool| async move {
            sqlx::query_scalar::<_, i32>("SELECT relpages FROM pg_class WHERE relname = 'wide'")
                .fetch_one(&pool)
                .await
                .unwrap()
        };
        let fill = |rows: i32| {
            let pool = pool.clone();
            async move {
                sqlx::query(
                    "INSERT INTO wide (body) SELECT repeat('x', 1500) FROM generate_series(1, $1)",
                )
                .bind(rows)
                .execute(&pool)
                .await
                .unwrap();
            }
        };
        sqlx::query(
            "CREATE TABLE wide (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text)",
        )
        .execute(&pool)
        .await
        .unwrap();
        // Small, then grown past the ceiling: analyzed.
        fill(100).await;
        sqlx::query("ANALYZE wide").execute(&pool).await.unwrap();
        fill(6_000).await;
        assert!(analyze_grown_tables(&pool)
            .await
            .unwrap()
            .contains(&"wide".to_string()));
        assert!(i64::from(pages(pool.clone()).await) >= ANALYZE_CEILING_PAGES);
        // Measured large and then tripled: left alone.
        fill(12_000).await;
        assert!(!analyze_grown_tables(&pool)
            .await
            .unwrap()
            .contains(&"wide".to_string()));
    }
}
