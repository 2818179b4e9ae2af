//! Vacuuming the tables the engine churns, when PostgreSQL's autovacuum is off.
//!
//! The outbox is a queue (every row is inserted, then deleted once relayed), and saga
//! deadlines, the sagas read model, consumer offsets and transport heads are updated on every
//! step. Without vacuum their dead rows pile up: the relay's `ORDER BY id LIMIT n` walks them
//! on every poll, and each update lands on a fuller page. Autovacuum normally takes care of it;
//! a server that runs with `autovacuum = off` gets the same from the engine, which vacuums
//! these tables (only these, `SKIP_LOCKED`) every `interval`. With autovacuum on it does
//! nothing.

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
/// process vacuuming it right now).
pub async fn vacuum_churned_tables(pool: &PgPool) -> Result<(), sqlx::Error> {
    let sql = format!("VACUUM (SKIP_LOCKED) {}", CHURNED_TABLES.join(", "));
    sqlx::query(&sql).execute(pool).await?;
    Ok(())
}

/// Vacuums the churned tables every `interval` until `shutdown`, if autovacuum is off.
pub async fn run(pool: PgPool, interval: Duration, shutdown: CancellationToken) {
    match autovacuum_enabled(&pool).await {
        Ok(true) => return,
        Ok(false) => tracing::info!(
            every_seconds = interval.as_secs_f64(),
            "autovacuum is off: the engine vacuums its queue tables itself"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the autovacuum setting; not vacuuming");
            return;
        }
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
        if let Err(e) = vacuum_churned_tables(&pool).await {
            tracing::warn!(error = %e, "vacuum of the queue tables failed; trying again later");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[sqlx::test(migrations = "../migrations")]
    async fn vacuum_gives_back_the_pages_of_a_drained_outbox(pool: PgPool) {
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
        let pages = || async {
            sqlx::query_scalar::<_, i64>("SELECT pg_relation_size('outbox') / 8192")
                .fetch_one(&pool)
                .await
                .unwrap()
        };
        assert!(pages().await > 1, "2,000 dead rows fill pages");
        vacuum_churned_tables(&pool).await.unwrap();
        // Vacuum frees the dead rows and gives the emptied pages back.
        assert_eq!(pages().await, 0);
    }
}
