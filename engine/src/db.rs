//! Connecting to PostgreSQL: create the database if it is missing, apply the migrations.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

/// The numbered migrations of `migrations/`, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

const DUPLICATE_DATABASE: &str = "42P04";
const UNIQUE_VIOLATION: &str = "23505";

/// Creates the database named in `url` if it does not exist (connecting to the server's
/// `postgres` database to do so).
pub async fn ensure_database(url: &str) -> Result<(), sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?;
    let name = options.get_database().unwrap_or("postgres").to_owned();
    if name == "postgres" {
        return Ok(());
    }
    let mut conn = PgConnection::connect_with(&options.clone().database("postgres")).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match sqlx::query(&format!("CREATE DATABASE {quoted}"))
            .execute(&mut conn)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another process created it at the same moment.
            Err(sqlx::Error::Database(e))
                if matches!(
                    e.code().as_deref(),
                    Some(DUPLICATE_DATABASE) | Some(UNIQUE_VIOLATION)
                ) => {}
            Err(e) => return Err(e),
        }
    }
    conn.close().await?;
    Ok(())
}

/// A pool of at most `max_connections` connections to `url`.
///
/// Its sessions plan every prepared statement for the values it runs with
/// (`plan_cache_mode = force_custom_plan`). Every query of the engine is an index lookup, and
/// PostgreSQL's default switches a statement to a generic plan after five runs, made for the
/// table's size at that moment: on a table that was empty then (a new deployment, a
/// truncated benchmark) that plan is a sequential scan, and it stays cached on the connection
/// until the table is analyzed again, which without autovacuum is never. One such plan on
/// `events` turned appends into scans of the whole table and stalled every saga.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    connect_with(PgConnectOptions::from_str(url)?, max_connections).await
}

/// [`connect`] with options already parsed.
pub async fn connect_with(
    options: PgConnectOptions,
    max_connections: u32,
) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options.options([("plan_cache_mode", "force_custom_plan")]))
        .await
}

/// Applies the pending migrations. Safe to run from several processes at once (sqlx takes an
/// advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

#[cfg(test)]
mod tests {
    use sqlx::PgPool;

    use crate::envelope::Metadata;
    use crate::store::{read_stream_on, EventStore, NewEvent};

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
    /// a table truncated under a running pool) still use the stream index once it is large.
    #[sqlx::test(migrations = "../migrations")]
    async fn statements_planned_on_an_empty_table_stay_index_lookups(test_pool: PgPool) {
        let pool = super::connect_with(test_pool.connect_options().as_ref().clone(), 1)
            .await
            .unwrap();
        let store = EventStore::new(pool.clone());
        let append_and_read = |stream: String| {
            let (pool, store) = (pool.clone(), store.clone());
            async move {
                let mut tx = pool.begin().await.unwrap();
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
        for i in 0..10 {
            append_and_read(format!("s-{i}")).await;
        }
        // Emptied and analyzed as empty: the planner now knows the table is small.
        for sql in ["TRUNCATE events CASCADE", "ANALYZE events"] {
            sqlx::query(sql).execute(&test_pool).await.unwrap();
        }
        for i in 0..3 {
            append_and_read(format!("t-{i}")).await;
        }
        sqlx::query(
            "INSERT INTO events (stream_id, stream_version, message_id, event_type, payload, metadata)
             SELECT 'bulk-' || n, 1, gen_random_uuid(), 'counted', '{}', '{}'
             FROM generate_series(1, 20000) AS n",
        )
        .execute(&test_pool)
        .await
        .unwrap();
        assert_eq!(
            append_and_read("late".into()).await,
            0,
            "a statement scanned the whole events table"
        );
    }
}
