//! The outbox relay: moves committed outbox rows to the transport.
//!
//! - **One active relay per shard.** Leadership is a session advisory lock
//!   (`pg_try_advisory_lock`) held on a dedicated connection; a standby process retries and
//!   takes over as soon as the leader's connection goes away (a crash, a kill -9).
//! - **Nothing lost, nothing published uncommitted.** A batch is read in `id` order, deleted
//!   with `DELETE … RETURNING` inside a transaction (which also fences off any other relay that
//!   still believes it leads: it blocks on the rows and then finds them gone), handed to the
//!   transport, and the transaction commits only after the transport acknowledged every
//!   message. On any error the transaction rolls back and the rows stay for the next attempt,
//!   with exponential backoff while the sink is down.
//! - **Per-key order.** A key always maps to one shard and one partition, and its rows are
//!   published in `id` order, which is commit order for one stream.
//!
//! Delivery is at-least-once: a crash after the transport acknowledged but before the commit
//! publishes the batch again (the embedded transport writes in the same transaction, so for
//! it the relay is exactly-once). Consumers de-duplicate by message id.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Postgres, Row};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub(crate) mod metrics;

use crate::backoff::Backoff;
use crate::consumer::dead_letters;
use crate::doorbell::Doorbell;
use crate::envelope::Envelope;
use crate::metrics::age_of;
use crate::outbox::OUTBOX_SHARDS;
use crate::transport::{OutgoingMessage, Transport};
use metrics::metrics;

/// First key of the relay's advisory locks (the second is the shard).
const RELAY_LOCK_CLASS: i32 = 0x5346_5201;

/// Settings of the outbox relay.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows per batch.
    pub batch_size: i64,
    /// Polling fallback when no notification arrives.
    pub idle_poll: Duration,
    /// How often a standby tries to become leader.
    pub standby_retry: Duration,
    /// Longest pause between batches while the transport fails (the engine's [`Backoff`],
    /// from 100 ms).
    pub max_backoff: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            batch_size: 1000,
            idle_poll: Duration::from_millis(500),
            standby_retry: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// What the relay did, for metrics and tests.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Messages published since the relay was built.
    pub published: AtomicU64,
    /// Batches published since the relay was built.
    pub batches: AtomicU64,
    /// Batches that failed; their rows stayed in the outbox and were sent again.
    pub failures: AtomicU64,
    /// Duration of the last successful batch, in microseconds.
    pub last_batch_micros: AtomicU64,
    /// Bit i is set while this process leads shard i.
    pub leading: AtomicU64,
}

impl RelayStats {
    /// Whether this process leads at least one outbox shard.
    pub fn leads_any(&self) -> bool {
        self.leading.load(Ordering::Relaxed) != 0
    }
}

/// The outbox relay of one process: a task per shard, publishing only while it holds that shard's
/// advisory lock.
pub struct Relay {
    pool: PgPool,
    lock_options: PgConnectOptions,
    transport: Arc<dyn Transport>,
    bell: Doorbell,
    config: RelayConfig,
    stats: Arc<RelayStats>,
}

impl Relay {
    /// `outbox_bell` must be the doorbell the command side rings after writing outbox rows.
    pub fn new(
        pool: PgPool,
        transport: Arc<dyn Transport>,
        outbox_bell: Doorbell,
        config: RelayConfig,
    ) -> Self {
        let lock_options = pool.connect_options().as_ref().clone();
        Relay {
            // One session per shard task, kept between its batches, and as many spare for a
            // shard that replaces a broken one.
            pool: crate::db::keyed_pool(&pool, 2 * OUTBOX_SHARDS as u32),
            lock_options,
            transport,
            bell: outbox_bell,
            config,
            stats: Arc::new(RelayStats::default()),
        }
    }

    /// What the relay did so far, updated while it runs.
    pub fn stats(&self) -> Arc<RelayStats> {
        self.stats.clone()
    }

    /// Runs one task per shard until `shutdown` is cancelled. A batch in flight finishes.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let mut tasks = JoinSet::new();
        for shard in 0..OUTBOX_SHARDS {
            let this = this.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move { this.run_shard(shard, shutdown).await });
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn run_shard(&self, shard: i16, shutdown: CancellationToken) {
        let mut waiter = self.bell.waiter();
        let mut floor = Floor::default();
        let mut lock: Option<PgConnection> = None;
        // The session the shard's polls and batches run on, kept between them: the pool
        // pings every connection it takes back, a round trip per poll and per batch.
        let mut session: Option<PoolConnection<Postgres>> = None;
        let backoff = Backoff::unlimited(Duration::from_millis(100), self.config.max_backoff);
        // Batches failed in a row.
        let mut failed: u32 = 0;
        let mut last_lock_check = Instant::now();
        while !shutdown.is_cancelled() {
            if lock.is_none() {
                match self.try_lead(shard).await {
                    Ok(Some(conn)) => {
                        tracing::info!(shard, "relay leads shard");
                        self.stats.leading.fetch_or(1 << shard, Ordering::Relaxed);
                        lock = Some(conn);
                        last_lock_check = Instant::now();
                    }
                    Ok(None) => {
                        sleep_or_cancel(self.config.standby_retry, &shutdown).await;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(shard, error = %e, "relay cannot reach the database");
                        sleep_or_cancel(self.config.standby_retry, &shutdown).await;
                        continue;
                    }
                }
            }
            // The lock lives as long as its connection: check it now and then, and step down
            // if it is gone (another relay may lead by now).
            if last_lock_check.elapsed() > Duration::from_secs(1) {
                let alive = match lock.as_mut() {
                    Some(conn) => conn.ping().await.is_ok(),
                    None => false,
                };
                if !alive {
                    tracing::warn!(shard, "relay lost its leadership connection; stepping down");
                    self.stats
                        .leading
                        .fetch_and(!(1 << shard), Ordering::Relaxed);
                    lock = None;
                    continue;
                }
                last_lock_check = Instant::now();
            }
            let conn = match session.as_mut() {
                Some(conn) => conn,
                None => match self.pool.acquire().await {
                    Ok(conn) => session.insert(conn),
                    Err(e) => {
                        tracing::warn!(shard, error = %e, "relay cannot reach the database");
                        sleep_or_cancel(self.config.standby_retry, &shutdown).await;
                        continue;
                    }
                },
            };
            match self.relay_batch(shard, &mut floor, conn).await {
                Ok(0) => {
                    failed = 0;
                    tokio::select! {
                        _ = waiter.wait(self.config.idle_poll) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
                Ok(_) => failed = 0,
                Err(e) => {
                    // Whatever broke, the next batch starts on a session the pool checked.
                    session = None;
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    metrics().failures.inc();
                    failed += 1;
                    let pause = backoff.random_delay(failed);
                    tracing::warn!(shard, error = %e, retry_in_ms = pause.as_millis() as u64, "relay batch failed; rows kept");
                    sleep_or_cancel(pause, &shutdown).await;
                }
            }
        }
        self.stats
            .leading
            .fetch_and(!(1 << shard), Ordering::Relaxed);
        if let Some(conn) = lock {
            let _ = conn.close().await;
        }
    }

    /// Moves every row the outbox holds, as the running relay does, and returns how many this
    /// call moved once the outbox is empty. A shard another relay leads is left to that relay,
    /// and waited for.
    ///
    /// For a process whose writers append to the embedded log themselves: rows written to the
    /// outbox before that (by an earlier release) must reach the log before anything written
    /// after them, or a stream's events would be read out of order. It logs its progress while
    /// rows remain.
    pub async fn drain(&self) -> Result<u64, RelayError> {
        let mut moved = 0u64;
        let mut last_report = Instant::now();
        loop {
            let left = crate::outbox::depth(&self.pool).await?;
            if left == 0 {
                return Ok(moved);
            }
            if last_report.elapsed() > Duration::from_secs(2) {
                tracing::info!(
                    left,
                    moved,
                    "moving the outbox's rows to the log before starting"
                );
                last_report = Instant::now();
            }
            let mut led = false;
            for shard in 0..OUTBOX_SHARDS {
                let Some(lock) = self.try_lead(shard).await? else {
                    continue;
                };
                led = true;
                let mut conn = self.pool.acquire().await?;
                let mut floor = Floor::default();
                loop {
                    let n = self.relay_batch(shard, &mut floor, &mut conn).await?;
                    if n == 0 {
                        break;
                    }
                    moved += n as u64;
                }
                let _ = lock.close().await;
            }
            if !led {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// A dedicated connection holding the shard's lock, or `None` if another relay leads.
    async fn try_lead(&self, shard: i16) -> Result<Option<PgConnection>, sqlx::Error> {
        let mut conn = self.lock_options.connect().await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
            .bind(RELAY_LOCK_CLASS)
            .bind(i32::from(shard))
            .fetch_one(&mut conn)
            .await?;
        if got {
            Ok(Some(conn))
        } else {
            conn.close().await?;
            Ok(None)
        }
    }

    /// Moves one batch of the shard, reading above `floor` and raising it when it may;
    /// returns how many messages were published.
    async fn relay_batch(
        &self,
        shard: i16,
        floor: &mut Floor,
        conn: &mut PgConnection,
    ) -> Result<usize, RelayError> {
        let started = Instant::now();
        // The rows' ids and places, and the oldest transaction running when they were read,
        // from one statement.
        let rows: Vec<(Option<i64>, Option<String>, i64)> = sqlx::query_as(
            "SELECT o.id, o.ctid::text, pg_snapshot_xmin(s.snapshot)::text::int8
             FROM (SELECT pg_current_snapshot() AS snapshot) s
             LEFT JOIN LATERAL (
                 SELECT id, ctid FROM outbox WHERE shard = $1 AND id > $2 ORDER BY id LIMIT $3
             ) o ON true",
        )
        .bind(shard)
        .bind(floor.below)
        .bind(self.config.batch_size)
        .fetch_all(&mut *conn)
        .await?;
        let xmin = rows.first().map(|r| r.2).unwrap_or_default();
        let mut found: Vec<(i64, String)> = rows
            .into_iter()
            .filter_map(|(id, place, ..)| Some((id?, place?)))
            .collect();
        found.sort_unstable_by_key(|f| f.0);
        let (ids, places): (Vec<i64>, Vec<String>) = found.into_iter().unzip();
        let complete = ids.len() < self.config.batch_size as usize;
        let risen = floor.ripe(xmin, complete, ids.last().copied());
        if ids.is_empty() {
            floor.rise(risen, None);
            return Ok(0);
        }
        let mut tx = conn.begin().await?;
        // The rows are fetched by their place (a TID scan), and their ids are checked: a place
        // can only hold another row if this one was moved (by a relay that still thought it
        // led) and vacuumed meanwhile. `+ 0` keeps the planner off the key index, which would
        // walk every deleted entry of the shard that vacuum has not removed yet.
        let rows = sqlx::query(
            "DELETE FROM outbox WHERE ctid = ANY($3::text[]::tid[]) AND shard + 0 = $1 AND id + 0 = ANY($2)
             RETURNING id, topic, partition_key, envelope, pg_current_xact_id()::text::int8",
        )
        .bind(shard)
        .bind(&ids)
        .bind(&places)
        .fetch_all(&mut *tx)
        .await?;
        // This transaction's id (the delete gave it one): every transaction that drew an id
        // below the last one read had its own id before the poll, so below this one.
        let bound: Option<i64> = rows.first().map(|r| r.get(4));
        let layout = self.transport.layout();
        let mut batch = Vec::with_capacity(rows.len());
        for row in rows {
            let payload: String = row.get(3);
            let key: String = row.get(2);
            let envelope = match Envelope::decode_header(&payload) {
                Ok(e) => e,
                Err(e) => {
                    // Only a bug writes such a row; park it visibly instead of stalling the shard.
                    let id: i64 = row.get(0);
                    tracing::error!(outbox_id = id, error = %e, "outbox row is not an envelope; parked in dead_letters");
                    dead_letters::park_unreadable(
                        &mut tx,
                        RELAY_DEAD_LETTER_GROUP,
                        &row.get::<String, _>(1),
                        id,
                        &key,
                        &payload,
                        &e.to_string(),
                    )
                    .await?;
                    continue;
                }
            };
            let topic: String = row.get(1);
            batch.push(OutgoingMessage {
                outbox_id: row.get(0),
                topic: layout.topic(&topic),
                partition: layout.partition_of(&key),
                key,
                envelope,
                payload,
            });
        }
        // DELETE … RETURNING does not keep the order of `ids`.
        batch.sort_by_key(|m| m.outbox_id);
        let span = tracing::info_span!("relay_batch", shard, size = batch.len());
        // One span per message, open until the batch is acknowledged and committed.
        let spans: Vec<tracing::Span> = batch.iter().map(publish_span).collect();
        self.transport
            .publish(&mut tx, &batch)
            .instrument(span)
            .await?;
        tx.commit().await?;
        drop(spans);
        self.transport.published();
        let next = ids
            .last()
            .zip(bound)
            .map(|(&id, bound)| Candidate { id, bound });
        floor.rise(risen, next);
        let n = batch.len();
        let m = metrics();
        m.published.inc_by(n as u64);
        m.batches.inc();
        m.batch_seconds.observe(started.elapsed().as_secs_f64());
        for message in &batch {
            // Message ids are UUIDv7s minted just before their outbox row was written.
            if let Some(age) = age_of(message.envelope.message_id) {
                m.latency_seconds.observe(age);
            }
        }
        self.stats.published.fetch_add(n as u64, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .last_batch_micros
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        tracing::debug!(
            shard,
            messages = n,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "relayed batch"
        );
        Ok(n)
    }
}

/// How far down a shard's poll has to look. The relay deletes what it moves, but until vacuum
/// runs, a poll from the start of the shard walks the index entries of every row moved since:
/// under load, most of its work. Reading above the floor skips them.
///
/// The floor is raised to an id only once no row at or below it can still commit. Outbox ids
/// are drawn after the writing transaction has its transaction id (migration 0008), and in
/// increasing order. So a row with an id below `id`, a row a poll saw committed, was written
/// by a transaction that had its transaction id before that poll, so an id below that of the
/// batch transaction that follows the poll (the candidate's `bound`). Once the oldest running
/// transaction of a later poll (its snapshot's `xmin`) is at or past `bound`, every such
/// transaction has ended and its rows are visible; the batch that reads all visible rows up to
/// `id` moves them, and the floor rises to `id`. A long-running transaction elsewhere only
/// holds the floor where it is.
///
/// The bound is not the poll snapshot's `xmax`: PostgreSQL sets that to the latest *completed*
/// transaction id plus one, so a transaction that took its id before an older one committed
/// is running, not in the snapshot's list, and at or above its `xmax`. A floor bounded by it
/// rose past such a transaction's row, which then stayed in the outbox until the relay
/// restarted (a chaos run found one).
#[derive(Debug, Default)]
struct Floor {
    /// No row of the shard at or below this id is left or can still commit.
    below: i64,
    /// The id to raise the floor to once every transaction running at its poll has ended.
    candidate: Option<Candidate>,
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    /// The highest id a poll read: it read every committed row between the floor and it.
    id: i64,
    /// The transaction id of the batch that followed that poll: the transactions that may
    /// still commit rows below `id` are below it.
    bound: i64,
}

impl Floor {
    /// The candidate the floor may rise to once this poll's batch is moved: the poll's snapshot
    /// has no transaction left from below the candidate's bound, and the poll read every
    /// committed row up to the candidate (all it found, or up to an id at or past it).
    fn ripe(&self, xmin: i64, complete: bool, last: Option<i64>) -> Option<i64> {
        let c = self.candidate?;
        (xmin >= c.bound && (complete || last.is_some_and(|l| l >= c.id))).then_some(c.id)
    }

    /// After a poll's batch was moved: the floor rises to `ripe`, and the poll becomes the
    /// next candidate unless an older one is still waiting.
    fn rise(&mut self, ripe: Option<i64>, next: Option<Candidate>) {
        if let Some(id) = ripe {
            self.below = self.below.max(id);
            self.candidate = None;
        }
        if self.candidate.is_none() {
            self.candidate = next.filter(|c| c.id > self.below);
        }
    }
}

/// Why a relay batch failed; its rows stay in the outbox and are sent again.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The transport did not accept the whole batch.
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The consumer group under which the relay parks outbox rows it cannot read.
pub const RELAY_DEAD_LETTER_GROUP: &str = "outbox-relay";

/// The `publish` span of `m`; it closes when dropped.
fn publish_span(m: &OutgoingMessage) -> tracing::Span {
    let e = &m.envelope;
    crate::outbox::publish_span(
        e.message_id,
        &e.event_type,
        &e.metadata,
        &m.topic,
        m.partition,
    )
}

async fn sleep_or_cancel(d: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = shutdown.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Metadata;
    use crate::outbox::{enqueue, shard_of, OutboxMessage};
    use crate::transport::postgres::PostgresTransport;
    use crate::transport::TopicLayout;
    use uuid::Uuid;

    fn message(key: &str) -> OutboxMessage {
        OutboxMessage {
            topic: "t".into(),
            partition_key: key.into(),
            envelope: Envelope {
                message_id: Uuid::now_v7(),
                stream_id: key.into(),
                stream_version: 1,
                event_type: "e".into(),
                schema_version: 1,
                payload: serde_json::json!({}),
                metadata: Metadata::new_root(),
            },
        }
    }

    async fn xid(conn: &mut PgConnection) -> i64 {
        sqlx::query_scalar("SELECT pg_current_xact_id()::text::int8")
            .fetch_one(conn)
            .await
            .unwrap()
    }

    /// The interleaving a chaos run hit. `early` takes its transaction id, then `late` takes a
    /// higher one and writes row 1; `early` writes row 2 and commits. A poll now reads row 2
    /// while `late`, with a transaction id above the snapshot's `xmax` (the latest completed
    /// id plus one), runs unlisted. Once anything else commits, `late` shows up as the oldest
    /// running transaction, at the old snapshot's `xmax`: a floor bounded by it rose past row
    /// 1, and row 1, committed next, stayed in the outbox.
    #[sqlx::test(migrations = "./migrations")]
    async fn a_row_committed_after_a_higher_one_is_still_moved(pool: PgPool) {
        let transport = Arc::new(PostgresTransport::new(pool.clone(), TopicLayout::default()));
        let relay = Relay::new(
            pool.clone(),
            transport,
            Doorbell::new(pool.clone(), crate::outbox::OUTBOX_CHANNEL),
            RelayConfig::default(),
        );
        let key = "stream-1";
        let shard = shard_of(key);
        let mut early = pool.begin().await.unwrap();
        xid(&mut early).await;
        let mut late = pool.begin().await.unwrap();
        enqueue(&mut late, &[message(key)]).await.unwrap();
        enqueue(&mut early, &[message(key)]).await.unwrap();
        early.commit().await.unwrap();

        let mut floor = Floor::default();
        let mut conn = pool.acquire().await.unwrap();
        assert_eq!(
            relay
                .relay_batch(shard, &mut floor, &mut conn)
                .await
                .unwrap(),
            1
        );
        // Another transaction completes, then the relay polls again, and again.
        let mut other = pool.begin().await.unwrap();
        xid(&mut other).await;
        other.commit().await.unwrap();
        for _ in 0..2 {
            assert_eq!(
                relay
                    .relay_batch(shard, &mut floor, &mut conn)
                    .await
                    .unwrap(),
                0
            );
        }
        late.commit().await.unwrap();
        assert_eq!(
            relay
                .relay_batch(shard, &mut floor, &mut conn)
                .await
                .unwrap(),
            1,
            "the row committed last is moved (floor {floor:?})"
        );
        assert_eq!(crate::outbox::depth(&pool).await.unwrap(), 0);
    }

    /// `drain` moves every row the outbox holds (in each shard's id order, so a key keeps its
    /// order), and for a shard another relay leads it waits until that relay moved them.
    #[sqlx::test(migrations = "./migrations")]
    async fn drain_empties_the_outbox_and_waits_for_a_shard_led_elsewhere(pool: PgPool) {
        let transport = Arc::new(PostgresTransport::new(pool.clone(), TopicLayout::default()));
        let relay = || {
            Relay::new(
                pool.clone(),
                transport.clone(),
                Doorbell::new(pool.clone(), crate::outbox::OUTBOX_CHANNEL),
                RelayConfig::default(),
            )
        };
        let keys: Vec<String> = (0..20).map(|i| format!("stream-{i}")).collect();
        let mut tx = pool.begin().await.unwrap();
        for _ in 0..3 {
            let batch: Vec<OutboxMessage> = keys.iter().map(|k| message(k)).collect();
            enqueue(&mut tx, &batch).await.unwrap();
        }
        tx.commit().await.unwrap();
        // Another relay leads the first key's shard and moves nothing until released.
        let held = shard_of(&keys[0]);
        let other = relay();
        let lock = other
            .try_lead(held)
            .await
            .unwrap()
            .expect("the shard is free");
        let draining = tokio::spawn({
            let relay = relay();
            async move { relay.drain().await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !draining.is_finished(),
            "the held shard's rows are still there"
        );
        let left = crate::outbox::depth(&pool).await.unwrap();
        let in_held: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE shard = $1")
            .bind(held)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(left, in_held, "every other shard was moved");
        // The leader moves its shard (as its run loop would), and the drain returns.
        let mut conn = pool.acquire().await.unwrap();
        let mut floor = Floor::default();
        while other
            .relay_batch(held, &mut floor, &mut conn)
            .await
            .unwrap()
            > 0
        {}
        lock.close().await.unwrap();
        let moved = tokio::time::timeout(Duration::from_secs(10), draining)
            .await
            .expect("the drain ends once the outbox is empty")
            .unwrap();
        assert_eq!(moved as i64, 60 - in_held);
        assert_eq!(crate::outbox::depth(&pool).await.unwrap(), 0);
        // Each key's three messages are in the log in the order they were written.
        let logged: Vec<(String, Uuid)> = sqlx::query_as(
            "SELECT partition_key, message_id FROM message_log ORDER BY partition, \"offset\"",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(logged.len(), 60);
        for key in &keys {
            let ids: Vec<Uuid> = logged.iter().filter(|l| &l.0 == key).map(|l| l.1).collect();
            let mut sorted = ids.clone();
            sorted.sort();
            assert_eq!(ids, sorted, "{key} in order");
        }
    }

    #[test]
    fn the_floor_waits_for_the_transactions_running_at_its_candidate() {
        let mut floor = Floor::default();
        // A full batch up to id 100, read while transactions from xid 50 to 59 ran.
        let ripe = floor.ripe(50, false, Some(100));
        floor.rise(ripe, Some(Candidate { id: 100, bound: 60 }));
        assert_eq!(floor.below, 0);
        // Transaction 55 still runs: it may commit a row below 100.
        let ripe = floor.ripe(55, true, Some(130));
        assert_eq!(ripe, None);
        floor.rise(ripe, Some(Candidate { id: 130, bound: 70 }));
        assert_eq!(floor.below, 0, "the waiting candidate is kept");
        // All of them ended, but the poll was full and stopped short of 100.
        assert_eq!(floor.ripe(60, false, Some(90)), None);
        // The poll read everything up to 100: the floor rises once its batch moved.
        let ripe = floor.ripe(60, false, Some(100));
        assert_eq!(ripe, Some(100));
        floor.rise(ripe, Some(Candidate { id: 150, bound: 75 }));
        assert_eq!(floor.below, 100);
        // An empty poll with nothing left running below the candidate's bound.
        let ripe = floor.ripe(75, true, None);
        floor.rise(ripe, None);
        assert_eq!(floor.below, 150);
        assert!(floor.candidate.is_none());
    }
}
