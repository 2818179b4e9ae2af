//! Connecting to PostgreSQL: create the database if it is missing, apply the migrations.

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{Migration, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Transaction};

/// The engine's own migrations (its tables only), embedded at build time. An application
/// applies them with every part's as one history ([`crate::app::App::migrator`]).
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Migrations whose text changed after databases applied them, with the checksum those
/// databases recorded: `0003_read_models` created the projection runtime's table too, until
/// each part owned its tables (`0009_projection_status` of the engine creates it now, if it is
/// missing).
const REWRITTEN: &[(i64, &str)] = &[(
    3,
    "9323ba3a9f63a3d75d77c78bff26b7410eaac226137855ebccd48693d08dfc61d95fb0fb88e8043eb0c97ca98f69c63f",
)];

const DUPLICATE_DATABASE: &str = "42P04";

/// Whether `e` means that the database cannot be reached or is not serving right now (it is
/// restarting or shutting down, out of connections, the connection broke): nothing was written
/// by the failed statement's transaction, and the same work can be tried again later.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // Class 08: connection exception; 57P01-57P03: the server is shutting down,
            // crashed or not yet accepting connections; 53300: too many connections.
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

/// SQLSTATE 40P01: PostgreSQL broke a deadlock by rolling this transaction back.
const DEADLOCK_DETECTED: &str = "40P01";
/// SQLSTATE 40001: a serializable transaction could not be serialized.
const SERIALIZATION_FAILURE: &str = "40001";

/// Whether `e` means that PostgreSQL rolled the transaction back because it ran into another
/// one (a deadlock it broke, a serialization failure): nothing of the transaction was
/// written, and the same work can be tried again at once. Transactions that write several
/// streams in different orders can deadlock (a group commit of the command routes and the
/// orchestrator's local steps on the same accounts, say); PostgreSQL picks one to roll back.
pub fn is_contention(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| matches!(code.as_ref(), DEADLOCK_DETECTED | SERIALIZATION_FAILURE)),
        _ => false,
    }
}

/// An error like `e`, for one more waiter: whether it means "unavailable" (see
/// [`is_unavailable`]) or "contention" (see [`is_contention`]) is kept, the message too.
pub fn copy_error(e: &sqlx::Error) -> sqlx::Error {
    if is_unavailable(e) {
        sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            e.to_string(),
        ))
    } else if let sqlx::Error::Database(db) = e {
        sqlx::Error::Database(Box::new(CopiedDatabaseError {
            message: db.message().to_owned(),
            code: db.code().map(Cow::into_owned),
        }))
    } else {
        sqlx::Error::Protocol(e.to_string())
    }
}

/// A database error's message and SQLSTATE, copied for another waiter ([`copy_error`]).
#[derive(Debug)]
struct CopiedDatabaseError {
    message: String,
    code: Option<String>,
}

impl std::fmt::Display for CopiedDatabaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CopiedDatabaseError {}

impl sqlx::error::DatabaseError for CopiedDatabaseError {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        self.code.as_deref().map(Cow::Borrowed)
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        match self.code.as_deref() {
            Some(UNIQUE_VIOLATION) => sqlx::error::ErrorKind::UniqueViolation,
            _ => sqlx::error::ErrorKind::Other,
        }
    }
}
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
/// Prepared statements keep PostgreSQL's default plan caching: planning the append statement
/// for every call cost more than running it. A generic plan made while a table was empty is a
/// sequential scan that would stay cached once the table is large; what replaces it is an
/// `ANALYZE` of the grown table ([`crate::ops::housekeeping`]'s, or autovacuum's), which makes
/// every session plan again.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    connect_with(PgConnectOptions::from_str(url)?, max_connections).await
}

/// [`connect`] with options already parsed.
pub async fn connect_with(
    options: PgConnectOptions,
    max_connections: u32,
) -> Result<PgPool, sqlx::Error> {
    pool_options(max_connections).connect_with(options).await
}

/// How long a request waits for a connection before it is answered `503 database_unavailable`:
/// a blip of the database is waited out, an outage is answered at once, and `/readyz` turns
/// 503 within a second so that traffic goes elsewhere.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// A pooled connection idle for this long is pinged before it is handed out again.
pub const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// The pool's settings. By default sqlx pings every connection it hands out, a round trip
/// (and a wakeup of the server's backend) before each transaction; in `bench saga` those pings
/// were a tenth of the engine's own CPU time. A connection that was in use less than
/// [`PING_AFTER_IDLE`] ago is handed out as is: if the server dropped it meanwhile, the
/// statement fails like any other database error, the transaction writes nothing, and the
/// pool drops the connection.
fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for < PING_AFTER_IDLE {
                    return Ok(true);
                }
                // A connection that does not answer is closed, and another one is tried.
                Ok(conn.ping().await.is_ok())
            })
        })
}

/// A pool of at most `max_connections` sessions, opened when first needed, on the options of
/// `pool`, whose planner reads a table in key order through its index where one serves: no
/// sequential scan, and no bitmap scan (which reads every matching row and sorts them).
///
/// For a queue table such as the outbox: rows are inserted and deleted all the time, so its
/// statistics swing between empty and full, and a file that vacuum keeps at its high-water
/// size makes a sequential scan read every page of it. Measured in `bench saga`: the relay's
/// poll planned as a scan and sort of 752 mostly empty pages (about 2 ms) against 6 pages
/// through the index; with the scan ruled out, it planned as a bitmap scan of every row of
/// the shard, sorted, for its first thousand.
pub fn keyed_pool(pool: &PgPool, max_connections: u32) -> PgPool {
    let options = pool
        .connect_options()
        .as_ref()
        .clone()
        .options([("enable_seqscan", "off"), ("enable_bitmapscan", "off")]);
    pool_options(max_connections).connect_lazy_with(options)
}

/// Makes the rest of the transaction run its prepared statements on the plan the session
/// cached for them (`plan_cache_mode = force_generic_plan`).
///
/// The engine's hot statements take arrays (`UNNEST($1::text[], …)`), for which PostgreSQL's
/// default keeps planning every call for its values: the generic plan's estimate of ten
/// elements per array never looks cheaper than a custom plan for two. Planning the append
/// statement cost about as much as running it. Their plans are index lookups whatever the
/// values, so planning once per session is enough; a plan made while a table was small is
/// replaced once the table grew (see [`crate::ops::housekeeping`]).
pub const REUSE_PLANS: &str = "SET LOCAL plan_cache_mode = force_generic_plan";

/// Begins a transaction that reuses cached plans (see [`REUSE_PLANS`]), in one round trip.
/// Only for transactions whose statements are all the engine's own.
pub async fn begin_reusing_plans(
    pool: &PgPool,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    pool.begin_with(format!("BEGIN; {REUSE_PLANS}")).await
}

/// Applies the pending migrations of `migrator`. Safe to run from several processes at once
/// (sqlx takes an advisory lock). A database whose history recorded a migration that was
/// rewritten since (see `REWRITTEN`) has that record updated first, in one statement.
pub async fn migrate(
    pool: &PgPool,
    migrator: &Migrator,
) -> Result<(), sqlx::migrate::MigrateError> {
    accept_rewritten(pool, migrator).await?;
    migrator.run(pool).await
}

/// Updates the recorded checksum of each rewritten migration of `migrator` that a database
/// applied in its earlier text.
async fn accept_rewritten(pool: &PgPool, migrator: &Migrator) -> Result<(), sqlx::Error> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(());
    }
    for (version, old) in REWRITTEN {
        let Some(now) = migrator.iter().find(|m| m.version == *version) else {
            continue;
        };
        let old: Vec<u8> = (0..old.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&old[i..i + 2], 16).expect("a hex checksum"))
            .collect();
        let updated = sqlx::query(
            "UPDATE _sqlx_migrations SET checksum = $3 WHERE version = $1 AND checksum = $2",
        )
        .bind(version)
        .bind(&old)
        .bind(now.checksum.as_ref())
        .execute(pool)
        .await?
        .rows_affected();
        if updated > 0 {
            tracing::info!(
                version,
                description = %now.description,
                "accepted the rewritten text of an applied migration"
            );
        }
    }
    Ok(())
}

/// A migrator of `migrations` (sorted by version), which apply in one history.
pub fn migrator_of(migrations: Vec<Migration>) -> Migrator {
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}

/// A real deadlock, for tests: two transactions lock two rows in opposite orders and
/// PostgreSQL rolls one back. Returns the victim's error.
#[cfg(test)]
pub(crate) async fn provoke_deadlock(pool: &PgPool) -> sqlx::Error {
    sqlx::query("CREATE TABLE pair (id int PRIMARY KEY, n int NOT NULL)")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO pair VALUES (1, 0), (2, 0)")
        .execute(pool)
        .await
        .unwrap();
    let mut first = pool.begin().await.unwrap();
    let mut second = pool.begin().await.unwrap();
    let bump = "UPDATE pair SET n = n + 1 WHERE id = $1";
    sqlx::query(bump)
        .bind(1)
        .execute(&mut *first)
        .await
        .unwrap();
    sqlx::query(bump)
        .bind(2)
        .execute(&mut *second)
        .await
        .unwrap();
    let (a, b) = tokio::join!(
        sqlx::query(bump).bind(2).execute(&mut *first),
        sqlx::query(bump).bind(1).execute(&mut *second),
    );
    let e = match (a, b) {
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => e,
        other => panic!("expected one deadlock victim, got {other:?}"),
    };
    first.rollback().await.unwrap();
    second.rollback().await.unwrap();
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deadlock is contention (to retry), and stays so once copied for another waiter;
    /// other database errors keep their SQLSTATE too.
    #[sqlx::test]
    async fn a_deadlock_is_contention(pool: PgPool) {
        let e = provoke_deadlock(&pool).await;
        assert!(is_contention(&e), "{e:?}");
        assert!(!is_unavailable(&e));
        let copied = copy_error(&e);
        assert!(is_contention(&copied), "{copied:?}");
        let unique = sqlx::query("INSERT INTO pair VALUES (1, 0)")
            .execute(&pool)
            .await
            .unwrap_err();
        assert!(!is_contention(&unique));
        assert!(
            matches!(&copy_error(&unique), sqlx::Error::Database(d) if d.is_unique_violation())
        );
    }
}
