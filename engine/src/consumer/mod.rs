//! The consumer runtime shared by the orchestrator, the participants and the projectors.
//!
//! - **Offsets in PostgreSQL, in the handler's transaction.** A batch of one partition is
//!   applied in one transaction that also advances the group's offset (compare-and-set on the
//!   previous offset), so effects are exactly-once even though delivery is at-least-once.
//! - **Redelivered messages are skipped** by message id (`processed_messages`), which covers a
//!   relay that published a batch twice. A group whose handler is idempotent by itself (a
//!   projector: by stream version) can leave the ids out
//!   ([`ConsumerConfig::handler_is_idempotent`]); a message delivered twice in one batch is
//!   still handed over once.
//! - **Per-key order.** A key lives in one partition; a partition is consumed by one member of
//!   the group at a time, in offset order.
//! - **Poison messages are parked.** A message whose handler keeps failing is retried with
//!   exponential backoff (its partition waits, the others go on); after `max_attempts` it is
//!   written to `dead_letters` with its error, and the partition moves on.
//! - **Groups are coordinated by PostgreSQL** (see the `leases` module), for both transports:
//!   members share the partitions, and a dead member's partitions are taken over within seconds.

pub mod dead_letters;
mod leases;
pub(crate) mod metrics;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::doorbell::Doorbell;
use crate::trace::{self, SpanIdHex, TraceContext, TraceIdHex, TRACE_TARGET};
use crate::transport::{Delivery, Position, Transport};
use leases::Leases;
use metrics::metrics;

/// An error of a handler. Any error rolls the batch back; the message is retried and, after
/// `max_attempts`, parked, unless the error is a [`Wait`].
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// A handler's answer for a message that cannot be applied yet through no fault of its own
/// (the outside system it calls is down): the batch rolls back and the partition pauses at
/// that message until `until`, without counting a failure, so the message is never parked for
/// it. The other partitions go on.
#[derive(Debug)]
pub struct Wait {
    /// When to try the message again.
    pub until: Instant,
    /// Why, for the log.
    pub reason: String,
}

impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "waiting: {}", self.reason)
    }
}

impl std::error::Error for Wait {}

impl Wait {
    /// A wait of 5 to 50 ms (random, so that writers that ran into each other part): for a
    /// message that lost a race to another writer and can be applied again at once.
    pub fn shortly(reason: impl Into<String>) -> Self {
        Wait {
            until: Instant::now() + Duration::from_millis(5 + rand::random::<u64>() % 45),
            reason: reason.into(),
        }
    }
}

/// The pause `error` asks for, if it is a [`Wait`]; a short one if PostgreSQL rolled the
/// batch back for contention ([`crate::db::is_contention`]: a deadlock it broke), which is no
/// fault of the messages either.
fn wait_of(error: &HandlerError) -> Option<Instant> {
    if let Some(w) = error.downcast_ref::<Wait>() {
        return Some(w.until);
    }
    error
        .downcast_ref::<sqlx::Error>()
        .filter(|e| crate::db::is_contention(e))
        .map(|_| Wait::shortly("").until)
}

/// Applies messages inside the consumer's transaction.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Called with a batch's messages before its transaction begins (the group may have
    /// applied some of them already): the place for work that must not hold a transaction
    /// open, such as calling an outside system. The default does nothing. An error rolls
    /// nothing back (nothing began) and is handled like one of [`Handler::handle_batch`].
    async fn prepare(&self, messages: &[&Delivery]) -> Result<(), HandlerError> {
        let _ = messages;
        Ok(())
    }

    /// Applies one message. Everything it writes through `tx` commits together with the
    /// consumer offset, or not at all.
    async fn handle(&self, tx: &mut PgConnection, message: &Delivery) -> Result<(), HandlerError>;

    /// Applies several messages of one partition, in offset order. Override it to batch
    /// writes (one upsert for many rows); the default calls [`Handler::handle`] for each.
    async fn handle_batch(
        &self,
        tx: &mut PgConnection,
        messages: &[Delivery],
    ) -> Result<(), HandlerError> {
        for m in messages {
            self.handle(tx, m).await?;
        }
        Ok(())
    }

    /// Called after the transaction of the last `handle_batch` committed (not after a
    /// rollback): the moment to publish in-memory state that must only reflect committed
    /// work, such as cached aggregates.
    async fn after_commit(&self) {}

    /// How the handling of `message` is traced: as a saga step (a participant running a
    /// step's command, the orchestrator applying its reply) or as any other message (the
    /// default).
    fn hop(&self, message: &Delivery) -> Hop {
        let _ = message;
        Hop::Message
    }
}

/// What a consumer's handling of one message is, for its span's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// A `consume_message` span.
    Message,
    /// A `saga_step` span.
    SagaStep,
}

/// Settings of a [`Consumer`].
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// The group: its members share the partitions, and its offsets are its own.
    pub group: String,
    /// Logical topics (`trip.events`); the transport's layout names them.
    pub topics: Vec<String>,
    /// Messages per poll (they are applied in one transaction per partition).
    pub batch_size: usize,
    /// Longest wait for new messages before checking leases and shutdown again.
    pub poll_wait: Duration,
    /// Attempts before a failing message is parked in `dead_letters`.
    pub max_attempts: u32,
    /// First retry delay of a failing message; doubles per attempt up to 30 s (the engine's
    /// [`Backoff`]).
    pub retry_backoff: Duration,
    /// How often partition ownership is rebalanced.
    pub rebalance_interval: Duration,
    /// Record each applied message id in `processed_messages` and skip the ids found there.
    /// On by default; see [`ConsumerConfig::handler_is_idempotent`].
    pub skip_processed_ids: bool,
}

impl ConsumerConfig {
    /// Settings for group `group` on logical topics `topics`: 500 messages per poll, a failing
    /// message parked after 5 attempts, applied message ids recorded.
    pub fn new(group: impl Into<String>, topics: &[&str]) -> Self {
        ConsumerConfig {
            group: group.into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            batch_size: 500,
            poll_wait: Duration::from_millis(250),
            max_attempts: 5,
            retry_backoff: Duration::from_millis(100),
            rebalance_interval: Duration::from_secs(2),
            skip_processed_ids: true,
        }
    }

    /// For a handler that applies a redelivered message as a no-op by itself (a projector
    /// compares each event's stream version with its row's): the group records no message
    /// ids, which saves a row and its index entries per message. The handler then also
    /// receives messages that the `processed_messages` table would have skipped, such as one
    /// an operator discarded from the group's dead letters.
    pub fn handler_is_idempotent(mut self) -> Self {
        self.skip_processed_ids = false;
        self
    }
}

/// What a consumer did, for metrics and tests.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    /// Messages handed to the handler whose transaction committed.
    pub applied: AtomicU64,
    /// Messages skipped: applied by the group before, or delivered twice in one batch.
    pub duplicates: AtomicU64,
    /// Messages parked in `dead_letters`.
    pub dead_lettered: AtomicU64,
    /// Failed attempts at a message and failed batches; each is retried.
    pub failures: AtomicU64,
    /// Partitions this member owns now.
    pub owned_partitions: AtomicU64,
}

/// One member of a consumer group: it reads the partitions it leases and applies each batch in one
/// transaction with the group's offsets.
pub struct Consumer {
    pool: PgPool,
    transport: Arc<dyn Transport>,
    handler: Arc<dyn Handler>,
    config: ConsumerConfig,
    stats: Arc<ConsumerStats>,
    outbox_bell: Option<Doorbell>,
    /// `config.group`, shared with the handler's task for tracing.
    group_name: Arc<str>,
}

struct Failure {
    attempts: u32,
    first_failed_at: DateTime<Utc>,
    retry_at: Instant,
    error: String,
}

type PartitionKey = (String, i32);

impl Consumer {
    /// A member of `config.group` that reads through `transport` and applies with `handler`; its
    /// offsets, leases and dead letters live in `pool`'s database.
    pub fn new(
        pool: PgPool,
        transport: Arc<dyn Transport>,
        handler: Arc<dyn Handler>,
        config: ConsumerConfig,
    ) -> Self {
        Consumer {
            pool,
            transport,
            handler,
            group_name: config.group.as_str().into(),
            config,
            stats: Arc::new(ConsumerStats::default()),
            outbox_bell: None,
        }
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.config.group
    }

    /// The logical topics it reads.
    pub fn topics(&self) -> &[String] {
        &self.config.topics
    }

    /// Rings `bell` after each committed batch: for handlers that publish messages (the relay's
    /// bell, or the log's when writers append to it).
    pub fn with_outbox_bell(mut self, bell: Doorbell) -> Self {
        self.outbox_bell = Some(bell);
        self
    }

    /// What this member did so far, updated while it runs.
    pub fn stats(&self) -> Arc<ConsumerStats> {
        self.stats.clone()
    }

    /// Consumes until `shutdown` is cancelled; the batch in flight is finished first.
    pub async fn run(
        self,
        shutdown: CancellationToken,
    ) -> Result<(), crate::transport::TransportError> {
        let layout = self.transport.layout().clone();
        let topics: Vec<String> = self.config.topics.iter().map(|t| layout.topic(t)).collect();
        let mut leases = Leases::new(
            self.pool.connect_options().as_ref().clone(),
            &self.config.group,
            &topics,
            layout.partitions,
        );
        let mut reader = self.transport.reader().await?;
        let mut positions: BTreeMap<PartitionKey, i64> = BTreeMap::new();
        let mut failures: HashMap<Uuid, Failure> = HashMap::new();
        let mut paused: HashMap<PartitionKey, Instant> = HashMap::new();
        let mut next_rebalance = Instant::now();
        while !shutdown.is_cancelled() {
            if Instant::now() >= next_rebalance {
                if leases.rebalance().await {
                    match self.load_positions(&leases).await {
                        Ok(p) => positions = p,
                        Err(e) => {
                            tracing::warn!(group = %self.config.group, error = %e, "cannot load offsets");
                            positions.clear();
                        }
                    }
                    reader.assign(&to_positions(&positions)).await?;
                    self.stats
                        .owned_partitions
                        .store(positions.len() as u64, Ordering::Relaxed);
                    tracing::info!(group = %self.config.group, partitions = positions.len(), "consumer owns partitions");
                }
                next_rebalance = Instant::now() + self.config.rebalance_interval;
            }
            if positions.is_empty() {
                tokio::select! {
                    _ = tokio::time::sleep(self.config.rebalance_interval) => {}
                    _ = shutdown.cancelled() => {}
                }
                continue;
            }
            let wait = self.config.poll_wait;
            let messages = tokio::select! {
                r = reader.poll(self.config.batch_size, wait) => r,
                _ = shutdown.cancelled() => break,
            };
            let messages = match messages {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(group = %self.config.group, error = %e, "transport poll failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => {}
                    }
                    continue;
                }
            };
            let mut rewind = false;
            let mut groups = by_partition(messages);
            // The common case: every partition of the poll applied in one transaction.
            let clean = groups.iter().all(|(key, batch)| {
                positions.contains_key(key)
                    && !paused.contains_key(key)
                    && batch.iter().all(|m| {
                        m.decode_error.is_none() && !failures.contains_key(&m.message_id())
                    })
            });
            if clean && groups.len() > 1 {
                for (key, batch) in groups.iter_mut() {
                    let from = positions[key];
                    batch.retain(|m| m.offset >= from);
                }
                groups.retain(|_, batch| !batch.is_empty());
                match self.apply_together(&positions, &groups).await {
                    Ok(()) => {
                        for (key, batch) in &groups {
                            positions
                                .insert(key.clone(), batch.last().expect("non-empty").offset + 1);
                        }
                        continue;
                    }
                    // Fall back to one transaction per partition, which isolates the failure.
                    Err(e) => {
                        tracing::debug!(group = %self.config.group, error = %e, "combined batch failed")
                    }
                }
            }
            for (key, batch) in groups {
                let Some(&expected) = positions.get(&key) else {
                    rewind = true; // no longer ours
                    continue;
                };
                if let Some(until) = paused.get(&key) {
                    if Instant::now() < *until {
                        rewind = true;
                        continue;
                    }
                    paused.remove(&key);
                }
                // Anything before the committed position was applied already.
                let batch: Vec<Delivery> =
                    batch.into_iter().filter(|m| m.offset >= expected).collect();
                if batch.is_empty() {
                    continue;
                }
                match self
                    .apply_partition(&key, expected, batch, &mut failures)
                    .await
                {
                    Ok(Applied::All(next)) => {
                        positions.insert(key, next);
                    }
                    Ok(Applied::Stopped { next, retry_at }) => {
                        positions.insert(key.clone(), next);
                        paused.insert(key, retry_at);
                        rewind = true;
                    }
                    Err(e) => {
                        self.stats.failures.fetch_add(1, Ordering::Relaxed);
                        self.count_failure();
                        tracing::warn!(group = %self.config.group, topic = %key.0, partition = key.1, error = %e, "batch failed; re-reading from the committed offset");
                        match self.committed_offset(&key).await {
                            Ok(o) => {
                                positions.insert(key, o);
                            }
                            Err(_) => next_rebalance = Instant::now(),
                        }
                        rewind = true;
                    }
                }
            }
            if rewind {
                reader.assign(&to_positions(&positions)).await?;
                if !paused.is_empty() {
                    // Nothing else to read may be ready; do not spin on a paused partition.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        leases.release_all().await;
        Ok(())
    }

    async fn load_positions(
        &self,
        leases: &Leases,
    ) -> Result<BTreeMap<PartitionKey, i64>, sqlx::Error> {
        let mut positions = BTreeMap::new();
        for key in &leases.owned {
            positions.insert(key.clone(), self.committed_offset(key).await?);
        }
        Ok(positions)
    }

    async fn committed_offset(
        &self,
        (topic, partition): &PartitionKey,
    ) -> Result<i64, sqlx::Error> {
        let offset: Option<i64> = sqlx::query_scalar(
            "SELECT next_offset FROM consumer_offsets WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
        )
        .bind(&self.config.group)
        .bind(topic)
        .bind(partition)
        .fetch_optional(&self.pool)
        .await?;
        Ok(offset.unwrap_or(0))
    }

    /// Applies a partition's batch in one transaction; if it fails, applies its messages one
    /// by one to find the failing one, which is retried later or parked.
    async fn apply_partition(
        &self,
        key: &PartitionKey,
        expected: i64,
        batch: Vec<Delivery>,
        failures: &mut HashMap<Uuid, Failure>,
    ) -> Result<Applied, ConsumeError> {
        let span = tracing::info_span!("consume", group = %self.config.group, topic = %key.0, partition = key.1, messages = batch.len());
        let first_try = batch
            .iter()
            .all(|m| !failures.contains_key(&m.message_id()));
        if first_try && batch.iter().all(|m| m.decode_error.is_none()) {
            match self
                .apply(key, expected, &batch)
                .instrument(span.clone())
                .await
            {
                Ok(next) => return Ok(Applied::All(next)),
                Err(ConsumeError::Handler(e)) if batch.len() == 1 && wait_of(&e).is_some() => {
                    return Ok(Applied::Stopped {
                        next: expected,
                        retry_at: wait_of(&e).expect("checked"),
                    });
                }
                Err(ConsumeError::Handler(_)) if batch.len() > 1 => {}
                Err(ConsumeError::Handler(e)) => {
                    return self
                        .record_failure(key, expected, &batch[0], e.to_string(), failures)
                        .await;
                }
                Err(e) => return Err(e),
            }
        }
        let mut next = expected;
        for m in &batch {
            if let Some(error) = &m.decode_error {
                self.park(key, next, m, error, 1, Utc::now()).await?;
                next = m.offset + 1;
                continue;
            }
            if let Some(f) = failures.get(&m.message_id()) {
                if Instant::now() < f.retry_at {
                    return Ok(Applied::Stopped {
                        next,
                        retry_at: f.retry_at,
                    });
                }
            }
            match self
                .apply(key, next, std::slice::from_ref(m))
                .instrument(span.clone())
                .await
            {
                Ok(n) => {
                    failures.remove(&m.message_id());
                    next = n;
                }
                Err(ConsumeError::Handler(e)) if wait_of(&e).is_some() => {
                    return Ok(Applied::Stopped {
                        next,
                        retry_at: wait_of(&e).expect("checked"),
                    });
                }
                Err(ConsumeError::Handler(e)) => {
                    return self
                        .record_failure(key, next, m, e.to_string(), failures)
                        .await;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Applied::All(next))
    }

    async fn record_failure(
        &self,
        key: &PartitionKey,
        next: i64,
        m: &Delivery,
        error: String,
        failures: &mut HashMap<Uuid, Failure>,
    ) -> Result<Applied, ConsumeError> {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        self.count_failure();
        let f = failures.entry(m.message_id()).or_insert_with(|| Failure {
            attempts: 0,
            first_failed_at: Utc::now(),
            retry_at: Instant::now(),
            error: String::new(),
        });
        f.attempts += 1;
        f.error = error;
        tracing::warn!(group = %self.config.group, topic = %key.0, partition = key.1, offset = m.offset,
            message_id = %m.message_id(), attempt = f.attempts, error = %f.error, "handler failed");
        if f.attempts >= self.config.max_attempts {
            let (attempts, first, error) = (f.attempts, f.first_failed_at, f.error.clone());
            failures.remove(&m.message_id());
            self.park(key, next, m, &error, attempts, first).await?;
            return Ok(Applied::Stopped {
                next: m.offset + 1,
                retry_at: Instant::now(),
            });
        }
        f.retry_at = Instant::now()
            + Backoff::unlimited(self.config.retry_backoff, Duration::from_secs(30))
                .random_delay(f.attempts);
        Ok(Applied::Stopped {
            next,
            retry_at: f.retry_at,
        })
    }

    /// Applies the batches of several partitions in one transaction with all their offsets
    /// (each moved by compare-and-set from its position). A message already applied by this
    /// group, or delivered twice in the batch, is applied once.
    async fn apply_together(
        &self,
        positions: &BTreeMap<PartitionKey, i64>,
        groups: &BTreeMap<PartitionKey, Vec<Delivery>>,
    ) -> Result<(), ConsumeError> {
        let started = Instant::now();
        let all: Vec<&Delivery> = groups.values().flatten().collect();
        self.handler
            .prepare(&all)
            .await
            .map_err(ConsumeError::Handler)?;
        let mut tx = self.pool.begin().await?;
        let ids: Vec<Uuid> = all.iter().map(|m| m.message_id()).collect();
        let mut fresh: HashSet<Uuid> = if self.config.skip_processed_ids {
            sqlx::query_scalar(
                "INSERT INTO processed_messages (consumer_group, message_id)
                 SELECT $1, UNNEST($2::uuid[]) ON CONFLICT DO NOTHING RETURNING message_id",
            )
            .bind(&self.config.group)
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect()
        } else {
            ids.iter().copied().collect()
        };
        let todo: Vec<Delivery> = all
            .iter()
            .filter(|m| fresh.remove(&m.message_id()))
            .map(|m| (*m).clone())
            .collect();
        let _spans = self.handle_traced(&mut tx, &todo).await?;
        let moves: Vec<(&PartitionKey, i64, i64)> = groups
            .iter()
            .map(|(key, batch)| {
                let next = batch.last().expect("non-empty").offset + 1;
                (key, positions[key], next)
            })
            .collect();
        self.commit_offsets(&mut tx, &moves).await?;
        tx.commit().await?;
        self.record_applied(&todo, ids.len() - todo.len(), started);
        if !todo.is_empty() {
            self.handler.after_commit().await;
        }
        if let Some(bell) = &self.outbox_bell {
            bell.ring();
        }
        self.stats
            .applied
            .fetch_add(todo.len() as u64, Ordering::Relaxed);
        self.stats
            .duplicates
            .fetch_add((ids.len() - todo.len()) as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Applies `messages` (consecutive, from offset `expected` of one partition) in one
    /// transaction with the offset; returns the next offset.
    async fn apply(
        &self,
        key: &PartitionKey,
        expected: i64,
        messages: &[Delivery],
    ) -> Result<i64, ConsumeError> {
        let positions = BTreeMap::from([(key.clone(), expected)]);
        let groups = BTreeMap::from([(key.clone(), messages.to_vec())]);
        self.apply_together(&positions, &groups).await?;
        Ok(messages.last().expect("non-empty batch").offset + 1)
    }

    /// Hands `todo` to the handler in `tx`, inside one span per message (returned: they stay
    /// open until the caller's transaction ends) and as this consumer group, so that what the
    /// handler writes is traced as caused by this group's handling of each message.
    async fn handle_traced(
        &self,
        tx: &mut PgConnection,
        todo: &[Delivery],
    ) -> Result<Vec<tracing::Span>, ConsumeError> {
        let spans = todo
            .iter()
            .map(|m| consume_span(&self.config.group, self.handler.hop(m), m))
            .collect();
        if !todo.is_empty() {
            trace::in_consumer(self.group_name.clone(), self.handler.handle_batch(tx, todo))
                .await
                .map_err(ConsumeError::Handler)?;
        }
        Ok(spans)
    }

    fn count_failure(&self) {
        metrics()
            .failures
            .with_label_values(&[&self.config.group])
            .inc();
    }

    /// Records a committed batch in the metrics.
    fn record_applied(&self, applied: &[Delivery], duplicates: usize, started: Instant) {
        let m = metrics();
        let group = self.config.group.as_str();
        m.batch_seconds
            .with_label_values(&[group])
            .observe(started.elapsed().as_secs_f64());
        m.messages
            .with_label_values(&[group, "applied"])
            .inc_by(applied.len() as u64);
        if duplicates > 0 {
            m.messages
                .with_label_values(&[group, "duplicate"])
                .inc_by(duplicates as u64);
        }
    }

    /// Moves the offset from `expected` to `next`, or fails if another member moved it.
    async fn commit_offset(
        &self,
        tx: &mut PgConnection,
        key: &PartitionKey,
        expected: i64,
        next: i64,
    ) -> Result<(), ConsumeError> {
        self.commit_offsets(tx, &[(key, expected, next)]).await
    }

    /// Moves each partition's offset from its expected value to its next one, in one
    /// statement, or fails if another member moved any of them (compare-and-set: an update
    /// that waited for a concurrent one sees its new offset and matches nothing). A partition
    /// without a row yet gets one.
    async fn commit_offsets(
        &self,
        tx: &mut PgConnection,
        moves: &[(&PartitionKey, i64, i64)],
    ) -> Result<(), ConsumeError> {
        let topics: Vec<&str> = moves.iter().map(|(k, _, _)| k.0.as_str()).collect();
        let partitions: Vec<i32> = moves.iter().map(|(k, _, _)| k.1).collect();
        let expected: Vec<i64> = moves.iter().map(|(_, e, _)| *e).collect();
        let next: Vec<i64> = moves.iter().map(|(_, _, n)| *n).collect();
        let moved: Vec<(String, i32)> = sqlx::query_as(
            "WITH m AS (
                 SELECT * FROM UNNEST($2::text[], $3::int4[], $4::int8[], $5::int8[])
                          AS m(topic, partition, expected, next)
             ), updated AS (
                 UPDATE consumer_offsets o SET next_offset = m.next, updated_at = now()
                 FROM m
                 WHERE o.consumer_group = $1 AND o.topic = m.topic AND o.partition = m.partition
                   AND o.next_offset = m.expected
                 RETURNING o.topic, o.partition
             ), inserted AS (
                 INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset)
                 SELECT $1, m.topic, m.partition, m.next FROM m
                 WHERE NOT EXISTS (SELECT 1 FROM consumer_offsets o
                                   WHERE o.consumer_group = $1 AND o.topic = m.topic
                                     AND o.partition = m.partition)
                 ON CONFLICT (consumer_group, topic, partition) DO NOTHING
                 RETURNING topic, partition
             )
             SELECT topic, partition FROM updated UNION ALL SELECT topic, partition FROM inserted",
        )
        .bind(&self.config.group)
        .bind(&topics)
        .bind(&partitions)
        .bind(&expected)
        .bind(&next)
        .fetch_all(&mut *tx)
        .await?;
        if moved.len() == moves.len() {
            return Ok(());
        }
        let (key, expected, _) = moves
            .iter()
            .find(|(k, _, _)| !moved.iter().any(|(t, p)| *t == k.0 && *p == k.1))
            .expect("fewer partitions moved than asked");
        Err(ConsumeError::OffsetMoved {
            topic: key.0.clone(),
            partition: key.1,
            expected: *expected,
        })
    }

    /// Parks a message in `dead_letters` and moves the offset past it, in one transaction.
    async fn park(
        &self,
        key: &PartitionKey,
        expected: i64,
        m: &Delivery,
        error: &str,
        attempts: u32,
        first_failed_at: DateTime<Utc>,
    ) -> Result<(), ConsumeError> {
        let mut tx = self.pool.begin().await?;
        dead_letters::park(
            &mut tx,
            &self.config.group,
            m,
            error,
            attempts,
            first_failed_at,
        )
        .await?;
        self.commit_offset(&mut tx, key, expected, m.offset + 1)
            .await?;
        tx.commit().await?;
        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        metrics()
            .dead_lettered
            .with_label_values(&[&self.config.group])
            .inc();
        tracing::error!(group = %self.config.group, topic = %m.topic, partition = m.partition, offset = m.offset,
            message_id = %m.message_id(), attempts, error, "message parked in dead_letters");
        Ok(())
    }
}

enum Applied {
    /// Everything was applied (or skipped as a duplicate); the next offset.
    All(i64),
    /// Stopped at a failing message: the partition resumes at `next` after `retry_at`.
    Stopped { next: i64, retry_at: Instant },
}

#[derive(Debug, thiserror::Error)]
enum ConsumeError {
    #[error("handler failed: {0}")]
    Handler(HandlerError),
    #[error("offset of {topic}/{partition} is no longer {expected}: another member moved it")]
    OffsetMoved {
        topic: String,
        partition: i32,
        expected: i64,
    },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// How far one partition of a group is behind the transport.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct PartitionLag {
    /// Physical topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The group's committed position: the next offset it will apply.
    pub position: i64,
    /// The offset after the last message in the partition.
    pub end: i64,
    /// Messages the group has yet to apply: `end - position`, never negative.
    pub lag: i64,
}

/// The committed positions of `group` on physical `topic`, by partition (a partition the group
/// never committed is absent: its position is 0).
pub async fn committed_offsets(
    pool: &PgPool,
    group: &str,
    topic: &str,
) -> Result<HashMap<i32, i64>, sqlx::Error> {
    Ok(sqlx::query_as(
        "SELECT partition, next_offset FROM consumer_offsets WHERE consumer_group = $1 AND topic = $2",
    )
    .bind(group)
    .bind(topic)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect())
}

/// Deletes at most `batch` rows of `processed_messages` recorded before `before`; how many.
/// A message delivered again after its row is gone is applied again by a group that records
/// ids, so the window must be longer than any redelivery: the relay's (seconds) and a dead
/// letter's retry (which only reaches the group that parked it, which never recorded it).
pub async fn prune_processed(
    pool: &PgPool,
    before: DateTime<Utc>,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM processed_messages WHERE (consumer_group, message_id) IN (
             SELECT consumer_group, message_id FROM processed_messages
             WHERE processed_at < $1 ORDER BY processed_at LIMIT $2)",
    )
    .bind(before)
    .bind(batch)
    .execute(pool)
    .await?
    .rows_affected())
}

/// The lag of `group` on the given logical topics, per partition.
pub async fn group_lag(
    pool: &PgPool,
    transport: &dyn Transport,
    group: &str,
    logical_topics: &[&str],
) -> Result<Vec<PartitionLag>, crate::transport::TransportError> {
    let mut out = Vec::new();
    for logical in logical_topics {
        let topic = transport.layout().topic(logical);
        let ends = transport.end_offsets(&topic).await?;
        let committed = committed_offsets(pool, group, &topic).await?;
        for (partition, end) in ends.into_iter().enumerate() {
            let partition = partition as i32;
            let position = committed.get(&partition).copied().unwrap_or(0);
            out.push(PartitionLag {
                topic: topic.clone(),
                partition,
                position,
                end,
                lag: (end - position).max(0),
            });
        }
    }
    Ok(out)
}

/// The span of consumer group `group` applying `m`: `saga_step` or `consume_message` as the
/// handler says; `saga_id`, `saga_step` and `attempt` are recorded when the message carries
/// them. It closes when dropped.
fn consume_span(group: &str, hop: Hop, m: &Delivery) -> tracing::Span {
    if !trace::hop_spans_enabled() {
        return tracing::Span::none();
    }
    let e = &m.envelope;
    let context = e
        .metadata
        .traceparent
        .as_deref()
        .and_then(TraceContext::parse);
    macro_rules! span {
        ($name:literal) => {
            tracing::debug_span!(
                target: TRACE_TARGET,
                $name,
                consumer_group = group,
                message_id = %e.message_id,
                event_type = %e.event_type,
                correlation_id = %e.metadata.correlation_id,
                causation_id = e.metadata.causation_id.map(display),
                trace_id = context.map(|c| display(TraceIdHex(c.trace_id))),
                span_id = context.map(|_| display(SpanIdHex(trace::consume_span_id(e.message_id, group)))),
                parent_span_id = context.map(|_| display(SpanIdHex(trace::publish_span_id(e.message_id)))),
                saga_id = e.metadata.saga_id.as_deref(),
                saga_step = e.metadata.saga_step.as_deref(),
                attempt = e.metadata.attempt,
            )
        };
    }
    let span = match hop {
        Hop::SagaStep => span!("saga_step"),
        Hop::Message => span!("consume_message"),
    };
    if let Some(c) = context {
        crate::telemetry::adopt(
            &span,
            Some(c.with_span(trace::publish_span_id(e.message_id))),
            c.with_span(trace::consume_span_id(e.message_id, group)),
        );
    }
    span
}

fn to_positions(positions: &BTreeMap<PartitionKey, i64>) -> Vec<Position> {
    positions
        .iter()
        .map(|((topic, partition), offset)| Position {
            topic: topic.clone(),
            partition: *partition,
            offset: *offset,
        })
        .collect()
}

/// Groups messages by partition, keeping each partition's order.
fn by_partition(messages: Vec<Delivery>) -> BTreeMap<PartitionKey, Vec<Delivery>> {
    let mut out: BTreeMap<PartitionKey, Vec<Delivery>> = BTreeMap::new();
    for m in messages {
        out.entry((m.topic.clone(), m.partition))
            .or_default()
            .push(m);
    }
    out
}
