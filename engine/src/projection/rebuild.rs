//! Rebuilding a read model from the event store while live traffic continues.
//!
//! A rebuild of projection `P`:
//! 1. takes a session advisory lock on `P` (a second rebuild of `P`, from any process, is
//!    refused with [`RebuildError::AlreadyRunning`]; if the process dies the lock goes with it);
//! 2. marks `P` `rebuilding` in `projection_status` and empties its tables, in one transaction;
//! 3. reads `P`'s events from `events` in `global_position` order, in pages, all in one
//!    `REPEATABLE READ` snapshot taken after the tables were emptied; folds them in memory and
//!    writes the changed rows with version-guarded upserts, in short transactions, when many
//!    are pending and at the end; records its progress in `projection_status` every second;
//! 4. marks `P` `idle` (or `failed`, with the error) and releases the lock.
//!
//! Why nothing is missed or doubled while the live consumer keeps running: every writer keeps
//! a row at version `v` equal to the fold of events `1..=v` and never moves it backwards (see
//! [`super::projector`]). The snapshot holds, for each stream, every event committed before the
//! tables were emptied, which covers whatever the live consumer had applied; within one
//! snapshot a stream's visible events are always `1..=k` (version `k+1` is only written after
//! `k` committed), so the fold has no holes. Whatever commits after the snapshot reaches the
//! live consumer, which folds it on top of the rebuilt row, or first reads the missing tail
//! from the store if the rebuild has not written that row yet. When both write the same row,
//! the one that folded further wins and the other's write is a no-op.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use sqlx::{Connection, PgConnection, PgPool, Postgres, Row, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::projector::{
    fold, Folded, ProjectionError, Projector, StoredEvent, Versioned, EVENT_COLUMNS,
};
use crate::hash::fnv1a;

/// How a rebuild reads and writes; the defaults suit any store.
#[derive(Debug, Clone)]
pub struct RebuildOptions {
    /// Events read per page.
    pub page_size: i64,
    /// Changed rows are written once this many are pending, and at the end. Writing late
    /// writes a row once however many of its events the rebuild folds.
    pub flush_rows: usize,
    /// Rows per write transaction: short transactions hold the rows' locks briefly, so the
    /// live consumer is never held up for long.
    pub write_chunk: usize,
    /// Write transactions run concurrently (on disjoint rows, each in stream-id order).
    pub writers: usize,
    /// Streams whose state is kept in memory. Beyond it, the states are written and dropped,
    /// and read back from the table when their stream shows up again, so memory stays bounded
    /// however many streams the store holds.
    pub max_states: usize,
}

impl Default for RebuildOptions {
    fn default() -> Self {
        RebuildOptions {
            page_size: 10_000,
            flush_rows: 500_000,
            write_chunk: 10_000,
            writers: 2,
            max_states: 2_000_000,
        }
    }
}

/// How often a running rebuild records its progress in `projection_status`.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// First key of the rebuild locks (the second is the projection's name hashed).
const REBUILD_LOCK_CLASS: i32 = 0x5346_5202;

fn lock_key(name: &str) -> i32 {
    (fnv1a(name.as_bytes()) & 0x7fff_ffff) as i32
}

/// Why a rebuild did not start or did not finish; one that stopped after it started leaves the
/// projection `failed`.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// No projection is registered under this name.
    #[error("no projection named {name:?}; known: {known}")]
    UnknownProjection {
        /// The name asked for.
        name: String,
        /// The registered projections' names, comma-separated.
        known: String,
    },
    /// A rebuild of this projection (named here) holds its lock, in this or another process.
    #[error("projection {0} is already being rebuilt")]
    AlreadyRunning(String),
    /// Folding or writing failed.
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    /// The rebuild's `reader` or `writer` task (named here) stopped unexpectedly.
    #[error("the rebuild's {0} task stopped unexpectedly")]
    TaskFailed(&'static str),
    /// The snapshot's events were not all folded: `counted` when the rebuild started, `read` in the
    /// end.
    #[error("the snapshot holds {counted} events but {read} were read")]
    CountMismatch {
        /// The events the snapshot held when the rebuild started.
        counted: u64,
        /// The events the rebuild folded.
        read: u64,
    },
}

impl From<sqlx::Error> for RebuildError {
    fn from(e: sqlx::Error) -> Self {
        RebuildError::Projection(ProjectionError::Database(e))
    }
}

/// How far a running rebuild is.
#[derive(Debug, Clone)]
pub struct RebuildProgress {
    /// The projection's name.
    pub name: &'static str,
    /// Events of the store folded so far.
    pub events_processed: u64,
    /// Events the rebuild folds in all (those committed when it started).
    pub events_total: u64,
    /// Rows written so far (most are written once the events are folded).
    pub rows_written: u64,
    /// Time since the rebuild started.
    pub elapsed: Duration,
}

impl RebuildProgress {
    /// Events folded per second since the rebuild started.
    pub fn events_per_second(&self) -> f64 {
        self.events_processed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Called after every page a rebuild folds and every chunk of rows it writes, from the
/// rebuild's tasks.
pub type ProgressFn = Arc<dyn Fn(&RebuildProgress) + Send + Sync>;

/// Counts a rebuild's progress and reports it to its [`ProgressFn`].
#[derive(Clone)]
struct Reporter {
    name: &'static str,
    total: u64,
    started: Instant,
    processed: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
    on_progress: ProgressFn,
}

impl Reporter {
    fn folded(&self, events: u64) {
        self.processed.fetch_add(events, Ordering::Relaxed);
        self.report();
    }

    fn wrote(&self, rows: u64) {
        self.written.fetch_add(rows, Ordering::Relaxed);
        self.report();
    }

    fn processed(&self) -> u64 {
        self.processed.load(Ordering::Relaxed)
    }

    fn report(&self) {
        (self.on_progress)(&RebuildProgress {
            name: self.name,
            events_processed: self.processed(),
            events_total: self.total,
            rows_written: self.written.load(Ordering::Relaxed),
            elapsed: self.started.elapsed(),
        });
    }
}

/// What a finished rebuild did.
#[derive(Debug, Clone)]
pub struct RebuildReport {
    /// The projection's name.
    pub name: &'static str,
    /// Events folded: every event of the projection's streams in the rebuild's snapshot.
    pub events: u64,
    /// Row writes issued (a stream's row may be written by several flushes).
    pub rows_written: u64,
    /// How long the rebuild took.
    pub elapsed: Duration,
}

impl RebuildReport {
    /// Events folded per second over the whole rebuild.
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The state of a projection's last rebuild, as `GET /admin/projections` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct RebuildStatus {
    /// `idle` (never rebuilt, or the last rebuild finished), `rebuilding`, or `failed` (the
    /// last rebuild stopped with `error`, or its process died: the read model may lack rows
    /// until it is rebuilt again).
    pub state: &'static str,
    /// When the last (or running) rebuild started; absent if there never was one.
    pub started_at: Option<DateTime<Utc>>,
    /// When the last rebuild ended; absent while one runs or if there never was one.
    pub finished_at: Option<DateTime<Utc>>,
    /// Events the last (or running) rebuild folded, as it last recorded them (every second).
    pub events_processed: i64,
    /// Events the last (or running) rebuild folds in all; absent if there never was one.
    pub events_total: Option<i64>,
    /// Average rate of the last (or running) rebuild.
    pub events_per_second: Option<f64>,
    /// Why the last rebuild failed.
    pub error: Option<String>,
}

/// The last rebuild of `name` (`idle` if it was never rebuilt).
pub async fn status(pool: &PgPool, name: &str) -> Result<RebuildStatus, sqlx::Error> {
    let row = sqlx::query(
        "SELECT s.state, s.started_at, s.finished_at, s.events_processed, s.events_total, s.error,
                EXISTS (SELECT 1 FROM pg_locks
                        WHERE locktype = 'advisory' AND objsubid = 2 AND granted
                          AND classid = ($2::int8)::oid AND objid = ($3::int8)::oid
                          AND database = (SELECT oid FROM pg_database WHERE datname = current_database())),
                now()
         FROM projection_status s WHERE s.name = $1",
    )
    .bind(name)
    .bind(i64::from(REBUILD_LOCK_CLASS))
    .bind(i64::from(lock_key(name)))
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(RebuildStatus {
            state: "idle",
            started_at: None,
            finished_at: None,
            events_processed: 0,
            events_total: None,
            events_per_second: None,
            error: None,
        });
    };
    let stored: String = row.try_get(0)?;
    let running: bool = row.try_get(6)?;
    let now: DateTime<Utc> = row.try_get(7)?;
    let mut error: Option<String> = row.try_get(5)?;
    let state = match stored.as_str() {
        "rebuilding" if running => "rebuilding",
        "rebuilding" => {
            error =
                Some("interrupted: the process running the rebuild stopped; rebuild again".into());
            "failed"
        }
        "failed" => "failed",
        _ => "idle",
    };
    let started_at: Option<DateTime<Utc>> = row.try_get(1)?;
    let finished_at: Option<DateTime<Utc>> = row.try_get(2)?;
    let events_processed: i64 = row.try_get(3)?;
    let events_per_second = started_at.map(|s| {
        let end = finished_at.unwrap_or(now);
        let secs = (end - s).num_microseconds().unwrap_or(0) as f64 / 1e6;
        events_processed as f64 / secs.max(1e-3)
    });
    Ok(RebuildStatus {
        state,
        started_at,
        finished_at,
        events_processed,
        events_total: row.try_get(4)?,
        events_per_second,
        error,
    })
}

/// Whether a rebuild of `name` is running now (in any process).
pub async fn is_rebuilding(pool: &PgPool, name: &str) -> Result<bool, sqlx::Error> {
    Ok(status(pool, name).await?.state == "rebuilding")
}

/// The rest of a started rebuild, to await or to spawn.
pub type RebuildFuture = Pin<Box<dyn Future<Output = Result<RebuildReport, RebuildError>> + Send>>;

/// A rebuild that has started: the lock is held, the tables are empty and the snapshot taken.
pub struct RebuildJob {
    /// The status right after the start (`rebuilding`, with `events_total`).
    pub status: RebuildStatus,
    /// Folds the store into the tables and marks the projection `idle` (or `failed`). Dropping
    /// it without running it leaves the projection `failed`: the tables stay empty until the
    /// live consumer or another rebuild fills them.
    pub run: RebuildFuture,
}

/// Starts rebuilding `projector`'s read model (steps 1–2 of the module's description, and
/// the snapshot of step 3); the returned job does the rest.
pub async fn begin<P: Projector>(
    projector: Arc<P>,
    pool: PgPool,
    options: RebuildOptions,
    on_progress: ProgressFn,
) -> Result<RebuildJob, RebuildError> {
    let name = P::NAME;
    let mut lock = PgConnection::connect_with(&pool.connect_options()).await?;
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
        .bind(REBUILD_LOCK_CLASS)
        .bind(lock_key(name))
        .fetch_one(&mut lock)
        .await?;
    if !got {
        let _ = lock.close().await;
        return Err(RebuildError::AlreadyRunning(name.to_owned()));
    }
    let started = async {
        let mut tx = pool.begin().await?;
        // Emptying the tables waits for the transactions using them; never indefinitely.
        sqlx::query("SET LOCAL lock_timeout = '30s'")
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO projection_status (name, state, started_at, finished_at, events_processed, events_total, error, updated_at)
             VALUES ($1, 'rebuilding', now(), NULL, 0, NULL, NULL, now())
             ON CONFLICT (name) DO UPDATE SET state = 'rebuilding', started_at = now(), finished_at = NULL,
                 events_processed = 0, events_total = NULL, error = NULL, updated_at = now()",
        )
        .bind(name)
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!("TRUNCATE {}", P::TABLES.join(", ")))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        // The snapshot is taken by the first query, after the tables were emptied.
        let mut snapshot = pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *snapshot)
            .await?;
        let total: i64 =
            sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_id LIKE $1")
                .bind(like_prefix(P::STREAM_PREFIX))
                .fetch_one(&mut *snapshot)
                .await?;
        sqlx::query(
            "UPDATE projection_status SET events_total = $2, updated_at = now() WHERE name = $1",
        )
        .bind(name)
        .bind(total)
        .execute(&pool)
        .await?;
        Ok::<_, sqlx::Error>((snapshot, total))
    }
    .await;
    let (snapshot, total) = match started {
        Ok(s) => s,
        Err(e) => {
            mark_failed(&pool, name, &e.to_string()).await;
            let _ = lock.close().await;
            return Err(e.into());
        }
    };
    let status = status(&pool, name).await?;
    let run = Box::pin(async move {
        let started = Instant::now();
        let result = fold_store(
            projector.clone(),
            pool.clone(),
            snapshot,
            &options,
            total as u64,
            on_progress,
            started,
        )
        .await;
        match &result {
            Ok(report) => {
                let done = sqlx::query(
                    "UPDATE projection_status SET state = 'idle', finished_at = now(), events_processed = $2,
                         error = NULL, updated_at = now() WHERE name = $1",
                )
                .bind(name)
                .bind(report.events as i64)
                .execute(&pool)
                .await;
                if let Err(e) = done {
                    tracing::warn!(projection = name, error = %e, "cannot record the end of a rebuild");
                }
                tracing::info!(
                    projection = name,
                    events = report.events,
                    rows = report.rows_written,
                    seconds = report.elapsed.as_secs_f64(),
                    "rebuild finished"
                );
            }
            Err(e) => {
                tracing::error!(projection = name, error = %e, "rebuild failed");
                mark_failed(&pool, name, &e.to_string()).await;
            }
        }
        // Closing the session releases the lock.
        let _ = lock.close().await;
        result
    });
    Ok(RebuildJob { status, run })
}

async fn mark_failed(pool: &PgPool, name: &str, error: &str) {
    let r = sqlx::query(
        "UPDATE projection_status SET state = 'failed', finished_at = now(), error = $2, updated_at = now()
         WHERE name = $1",
    )
    .bind(name)
    .bind(error)
    .execute(pool)
    .await;
    if let Err(e) = r {
        tracing::warn!(projection = name, error = %e, "cannot record a failed rebuild");
    }
}

/// `prefix%`, with LIKE's special characters in `prefix` escaped.
fn like_prefix(prefix: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('%');
    s
}

type Page = Result<Vec<StoredEvent>, sqlx::Error>;

/// Reads the projection's events in `global_position` order, page by page, in the snapshot.
async fn read_pages(
    mut snapshot: Transaction<'static, Postgres>,
    like: String,
    page_size: i64,
    out: mpsc::Sender<Page>,
) {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE global_position > $1 AND stream_id LIKE $2
         ORDER BY global_position LIMIT $3"
    );
    let mut after = 0i64;
    loop {
        let page = sqlx::query(&sql)
            .bind(after)
            .bind(&like)
            .bind(page_size)
            .fetch_all(&mut *snapshot)
            .await
            .and_then(|rows| {
                rows.iter()
                    .map(StoredEvent::from_row)
                    .collect::<Result<Vec<_>, _>>()
            });
        let last = match &page {
            Ok(events) => events.last().map(|e| e.global_position),
            Err(_) => None,
        };
        let full = matches!(&page, Ok(events) if events.len() as i64 == page_size);
        if matches!(&page, Ok(events) if events.is_empty()) || out.send(page).await.is_err() {
            return;
        }
        match last {
            Some(last) if full => after = last,
            _ => return,
        }
    }
}

/// Rows to write.
struct Flush<R> {
    rows: Vec<Versioned<R>>,
    /// Answered once this flush (and every one before it) committed.
    done: Option<oneshot::Sender<()>>,
}

/// Writes flushes one after the other; each in chunks of `write_chunk` rows, one transaction
/// per chunk, `writers` chunks at a time. Returns the rows written.
async fn write_rows<P: Projector>(
    projector: Arc<P>,
    pool: PgPool,
    options: RebuildOptions,
    reporter: Reporter,
    mut flushes: mpsc::Receiver<Flush<P::Row>>,
) -> Result<(), ProjectionError> {
    while let Some(flush) = flushes.recv().await {
        let mut rows = flush.rows.into_iter().peekable();
        let mut chunks = Vec::new();
        while rows.peek().is_some() {
            let chunk: Vec<Versioned<P::Row>> =
                rows.by_ref().take(options.write_chunk.max(1)).collect();
            chunks.push(write_chunk(projector.clone(), pool.clone(), chunk));
        }
        let mut chunks = futures::stream::iter(chunks).buffer_unordered(options.writers.max(1));
        while let Some(n) = chunks.next().await {
            reporter.wrote(n?);
        }
        if let Some(done) = flush.done {
            let _ = done.send(());
        }
    }
    Ok(())
}

/// Writes `rows` (in stream-id order) in one transaction.
async fn write_chunk<P: Projector>(
    projector: Arc<P>,
    pool: PgPool,
    rows: Vec<Versioned<P::Row>>,
) -> Result<u64, ProjectionError> {
    let mut tx = pool.begin().await?;
    let refs: Vec<&Versioned<P::Row>> = rows.iter().collect();
    projector.store(&mut tx, &refs).await?;
    tx.commit().await?;
    Ok(rows.len() as u64)
}

async fn record_progress(pool: &PgPool, name: &str, processed: u64) {
    let r = sqlx::query(
        "UPDATE projection_status SET events_processed = $2, updated_at = now() WHERE name = $1",
    )
    .bind(name)
    .bind(processed as i64)
    .execute(pool)
    .await;
    if let Err(e) = r {
        tracing::warn!(projection = name, error = %e, "cannot record rebuild progress");
    }
}

/// A stream's state during a rebuild, and whether it changed since the last flush.
struct Slot<R> {
    state: Option<Versioned<R>>,
    dirty: bool,
}

/// The streams' states of a rebuild, and which of them changed since the last flush.
struct States<R> {
    slots: HashMap<String, Slot<R>>,
    dirty: Vec<String>,
    /// Set once states were dropped: a stream that is not in `slots` may have a row then.
    evicted: bool,
}

impl<R: Clone> States<R> {
    /// The changed rows in stream-id order (the order every writer locks rows in). With `keep`
    /// their states stay in memory (copied), else they are moved out.
    fn take_dirty(&mut self, keep: bool) -> Vec<Versioned<R>> {
        let mut keys = std::mem::take(&mut self.dirty);
        keys.sort_unstable();
        keys.iter()
            .filter_map(|k| {
                if keep {
                    let slot = self.slots.get_mut(k)?;
                    slot.dirty = false;
                    slot.state.clone()
                } else {
                    self.slots.remove(k)?.state
                }
            })
            .collect()
    }
}

/// Step 3 of the rebuild: reader, folder (this task) and writer run concurrently, so reading
/// the store, decoding and writing rows overlap.
async fn fold_store<P: Projector>(
    projector: Arc<P>,
    pool: PgPool,
    snapshot: Transaction<'static, Postgres>,
    options: &RebuildOptions,
    total: u64,
    on_progress: ProgressFn,
    started: Instant,
) -> Result<RebuildReport, RebuildError> {
    let name = P::NAME;
    let reporter = Reporter {
        name,
        total,
        started,
        processed: Arc::default(),
        written: Arc::default(),
        on_progress,
    };
    let (page_tx, mut pages) = mpsc::channel::<Page>(2);
    let reader = tokio::spawn(read_pages(
        snapshot,
        like_prefix(P::STREAM_PREFIX),
        options.page_size.max(1),
        page_tx,
    ));
    let (flush_tx, flush_rx) = mpsc::channel::<Flush<P::Row>>(1);
    let writer = tokio::spawn(write_rows(
        projector.clone(),
        pool.clone(),
        options.clone(),
        reporter.clone(),
        flush_rx,
    ));
    let folded = async {
        let mut states = States::<P::Row> {
            slots: HashMap::new(),
            dirty: Vec::new(),
            evicted: false,
        };
        let mut last_progress = Instant::now();
        while let Some(page) = pages.recv().await {
            let page = page?;
            if states.evicted {
                reload(&*projector, &pool, &mut states, &page).await?;
            }
            for e in &page {
                let slot = match states.slots.get_mut(&e.stream_id) {
                    Some(slot) => slot,
                    None => states.slots.entry(e.stream_id.clone()).or_insert(Slot {
                        state: None,
                        dirty: false,
                    }),
                };
                match fold(&*projector, &mut slot.state, e)? {
                    Folded::Applied if !slot.dirty => {
                        slot.dirty = true;
                        states.dirty.push(e.stream_id.clone());
                    }
                    Folded::Applied | Folded::Skipped => {}
                    Folded::Gap { have } => {
                        return Err(ProjectionError::MissingEvents {
                            stream_id: e.stream_id.clone(),
                            missing: have + 1,
                        }
                        .into())
                    }
                }
            }
            reporter.folded(page.len() as u64);
            if last_progress.elapsed() >= PROGRESS_EVERY {
                record_progress(&pool, name, reporter.processed()).await;
                last_progress = Instant::now();
            }
            let evict = states.slots.len() > options.max_states;
            if evict || states.dirty.len() >= options.flush_rows {
                let (done, committed) = oneshot::channel();
                let flush = Flush {
                    rows: states.take_dirty(!evict),
                    done: evict.then_some(done),
                };
                if flush_tx.send(flush).await.is_err() {
                    break; // the writer failed; its error is reported below
                }
                if evict {
                    // Every state is in the table once this flush committed.
                    if committed.await.is_err() {
                        break;
                    }
                    states.slots.clear();
                    states.evicted = true;
                }
            }
        }
        let rows = states.take_dirty(false);
        if !rows.is_empty() {
            let _ = flush_tx.send(Flush { rows, done: None }).await;
        }
        Ok::<(), RebuildError>(())
    }
    .await;
    drop(flush_tx);
    drop(pages);
    let written = writer
        .await
        .map_err(|_| RebuildError::TaskFailed("writer"))?;
    reader
        .await
        .map_err(|_| RebuildError::TaskFailed("reader"))?;
    folded?;
    written?;
    let (events, rows_written) = (
        reporter.processed(),
        reporter.written.load(Ordering::Relaxed),
    );
    if events != total {
        return Err(RebuildError::CountMismatch {
            counted: total,
            read: events,
        });
    }
    Ok(RebuildReport {
        name,
        events,
        rows_written,
        elapsed: started.elapsed(),
    })
}

/// After an eviction: loads the rows of the page's streams that are not in memory, in one
/// query (they were flushed before being dropped, or written by the live consumer since).
async fn reload<P: Projector>(
    projector: &P,
    pool: &PgPool,
    states: &mut States<P::Row>,
    page: &[StoredEvent],
) -> Result<(), ProjectionError> {
    let mut missing: Vec<&str> = page
        .iter()
        .map(|e| e.stream_id.as_str())
        .filter(|s| !states.slots.contains_key(*s))
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let mut conn = pool.acquire().await?;
    let rows = projector.load(&mut conn, &missing).await?;
    for s in missing {
        states.slots.insert(
            s.to_owned(),
            Slot {
                state: None,
                dirty: false,
            },
        );
    }
    for v in rows {
        if let Some(slot) = states.slots.get_mut(&v.stream_id) {
            slot.state = Some(v);
        }
    }
    Ok(())
}
