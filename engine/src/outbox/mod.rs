//! The transactional outbox: messages are written in the same transaction as the events (or
//! saga state) that caused them, so nothing is published that was not committed and nothing
//! committed is lost.
//!
//! Where they are written is the deployment's [`Publishing`]:
//! - [`Publishing::Outbox`] (the Kafka transport): to the `outbox` table, from which the relay
//!   ([`crate::relay`], one per shard) moves them to the transport after the commit;
//! - [`Publishing::Log`] (the embedded transport): straight into the transport's log,
//!   `message_log`, by [`append_to_log`] in the writer's own transaction. The commit that
//!   makes the events visible makes the messages visible, with no relay hop in between.

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::envelope::Envelope;
use crate::hash::fnv1a;
use crate::trace;

/// The notification channel rung after a transaction wrote outbox rows.
pub const OUTBOX_CHANNEL: &str = "sagaflow_outbox";

/// Naming and partitioning shared by both transports.
#[derive(Debug, Clone)]
pub struct TopicLayout {
    /// Prepended to every logical topic: `<prefix>.<context>.events`.
    pub prefix: String,
    /// Partitions per topic. Fixed for the life of a deployment: a key always maps to the
    /// same partition, which is what keeps per-key order.
    pub partitions: i32,
}

impl Default for TopicLayout {
    fn default() -> Self {
        TopicLayout {
            prefix: "sagaflow".into(),
            partitions: 8,
        }
    }
}

impl TopicLayout {
    /// The physical topic of a logical one (`trip.events` → `sagaflow.trip.events`).
    pub fn topic(&self, logical: &str) -> String {
        format!("{}.{}", self.prefix, logical)
    }

    /// The partition of a key: FNV-1a modulo the partition count, the same in every process
    /// and for both transports.
    pub fn partition_of(&self, key: &str) -> i32 {
        (fnv1a(key.as_bytes()) % self.partitions.max(1) as u64) as i32
    }
}

/// Where a writer's messages go; the same for every writer of one deployment.
#[derive(Debug, Clone, Default)]
pub enum Publishing {
    /// To the `outbox` table; the relay publishes them after the commit (the Kafka transport).
    #[default]
    Outbox,
    /// Into the embedded transport's log, in the writer's transaction ([`append_to_log`]),
    /// under this layout.
    Log(TopicLayout),
}

impl Publishing {
    /// Writes `messages` inside the caller's transaction, in the given order: to the outbox,
    /// or to the log. With [`Publishing::Log`] it locks the head rows of the partitions it
    /// writes until the transaction ends: call it as the transaction's last write (see
    /// [`append_to_log`]).
    pub async fn write(
        &self,
        tx: &mut PgConnection,
        messages: &[OutboxMessage],
    ) -> Result<(), sqlx::Error> {
        match self {
            Publishing::Outbox => enqueue(tx, messages).await,
            Publishing::Log(layout) => {
                let entries: Vec<LogEntry> = messages
                    .iter()
                    .map(|m| LogEntry {
                        topic: layout.topic(&m.topic),
                        partition: layout.partition_of(&m.partition_key),
                        key: m.partition_key.clone(),
                        message_id: m.envelope.message_id,
                        envelope: serde_json::to_string(&m.envelope).expect("envelopes serialize"),
                    })
                    .collect();
                // Open until the statement ran: the consumers' spans hang under them.
                let _spans: Vec<tracing::Span> = messages
                    .iter()
                    .zip(&entries)
                    .map(|(m, e)| {
                        publish_span(
                            m.envelope.message_id,
                            &m.envelope.event_type,
                            &m.envelope.metadata,
                            &e.topic,
                            e.partition,
                        )
                    })
                    .collect();
                append_to_log(tx, &entries).await
            }
        }
    }
}

/// One message for the embedded log: where it goes and what it is.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// Physical topic.
    pub topic: String,
    /// Its partition: [`TopicLayout::partition_of`] of `key`.
    pub partition: i32,
    /// The partition key.
    pub key: String,
    /// The envelope's message id.
    pub message_id: Uuid,
    /// The envelope, encoded.
    pub envelope: String,
}

/// Appends `entries` to the embedded log (`message_log`) inside the caller's transaction, in
/// one statement, in the given order within each partition.
///
/// Offsets come from `message_log_heads`: the statement takes each partition's next offsets
/// by updating its head row, which stays locked until the transaction ends. So a partition's
/// offsets are gap-free and become visible in offset order: a reader that saw offset `n`
/// will never find a message below `n` appear later. Head rows are locked in one fixed order
/// (topic, then partition; byte order), and a transaction writes to the log at most twice,
/// the events of its streams then its other messages (a command that starts a saga appends
/// once, its events with the saga's first commands, after the saga's rows; the orchestrator
/// once, the events of the steps it ran locally with the commands it sends). After its first
/// append it waits for no lock another appender holds while waiting for a head: the rest of
/// the transaction is its other messages and the offsets. So they cannot deadlock.
/// The price is that commits to one partition follow each other; holding the lock only from
/// the last writes to the commit keeps that short.
pub async fn append_to_log(tx: &mut PgConnection, entries: &[LogEntry]) -> Result<(), sqlx::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    let topics: Vec<&str> = entries.iter().map(|e| e.topic.as_str()).collect();
    let partitions: Vec<i32> = entries.iter().map(|e| e.partition).collect();
    let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
    let ids: Vec<Uuid> = entries.iter().map(|e| e.message_id).collect();
    let envelopes: Vec<&str> = entries.iter().map(|e| e.envelope.as_str()).collect();
    sqlx::query(APPEND_TO_LOG)
        .bind(&topics)
        .bind(&partitions)
        .bind(&keys)
        .bind(&ids)
        .bind(&envelopes)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The `counts` and `heads` CTEs of every append to the log, over the rows of `$source` (with
/// `topic` and `partition` columns): each partition's head moved past its new messages, its
/// row locked until the transaction ends. The heads are upserted in (topic, partition) byte
/// order, the order every writer of the log locks them in. A message's offset is then
/// `heads.next_offset - counts.n - 1 + <its rank in the partition, from 1>`.
macro_rules! log_heads_ctes {
    ($source:literal) => {
        concat!(
            "counts AS (
    SELECT topic, partition, count(*) AS n FROM ",
            $source,
            r#" GROUP BY topic, partition
), heads AS (
    INSERT INTO message_log_heads AS h (topic, partition, next_offset)
    SELECT topic, partition, n FROM counts ORDER BY topic COLLATE "C", partition
    ON CONFLICT (topic, partition) DO UPDATE SET next_offset = h.next_offset + EXCLUDED.next_offset
    RETURNING h.topic, h.partition, h.next_offset
)"#
        )
    };
}
pub(crate) use log_heads_ctes;

/// See [`append_to_log`].
const APPEND_TO_LOG: &str = concat!(
    r#"
WITH m AS (
    SELECT * FROM UNNEST($1::text[], $2::int4[], $3::text[], $4::uuid[], $5::text[])
         WITH ORDINALITY AS m(topic, partition, partition_key, message_id, envelope, ord)
), "#,
    log_heads_ctes!("m"),
    r#"
INSERT INTO message_log (topic, partition, "offset", partition_key, message_id, envelope)
SELECT m.topic, m.partition,
       heads.next_offset - counts.n - 1 + row_number() OVER (PARTITION BY m.topic, m.partition ORDER BY m.ord),
       m.partition_key, m.message_id, m.envelope
FROM m
JOIN counts ON counts.topic = m.topic AND counts.partition = m.partition
JOIN heads ON heads.topic = m.topic AND heads.partition = m.partition"#
);

/// Number of outbox shards. Fixed for the life of a database: a key always maps to the same
/// shard, which is what keeps per-key order across relays.
pub const OUTBOX_SHARDS: i16 = 4;

/// A message to publish: a logical topic (without the deployment's prefix), the partition key
/// (stream id, saga id or target aggregate id) and the envelope.
#[derive(Debug, Clone)]
pub struct OutboxMessage {
    /// Logical topic, such as `<context>.events`; the relay prepends the deployment's prefix.
    pub topic: String,
    /// Decides the shard, the partition and so the order: messages with one key keep theirs.
    pub partition_key: String,
    /// What is published, byte for byte as it is stored.
    pub envelope: Envelope,
}

/// The shard of a partition key: a stable FNV-1a hash, the same in every process and release.
pub fn shard_of(key: &str) -> i16 {
    (fnv1a(key.as_bytes()) % OUTBOX_SHARDS as u64) as i16
}

/// Rows waiting in the outbox (all shards).
pub async fn depth(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(pool)
        .await
}

/// Writes `messages` to the outbox inside the caller's transaction, in the given order.
pub async fn enqueue(tx: &mut PgConnection, messages: &[OutboxMessage]) -> Result<(), sqlx::Error> {
    if messages.is_empty() {
        return Ok(());
    }
    let mut shards = Vec::with_capacity(messages.len());
    let mut topics = Vec::with_capacity(messages.len());
    let mut keys = Vec::with_capacity(messages.len());
    let mut ids = Vec::with_capacity(messages.len());
    let mut envelopes = Vec::with_capacity(messages.len());
    for m in messages {
        shards.push(shard_of(&m.partition_key));
        topics.push(m.topic.as_str());
        keys.push(m.partition_key.as_str());
        ids.push(m.envelope.message_id);
        envelopes.push(serde_json::to_string(&m.envelope).expect("envelopes serialize"));
    }
    sqlx::query(
        "INSERT INTO outbox (shard, topic, partition_key, message_id, envelope)
         SELECT s, t, k, m, e
         FROM UNNEST($1::int2[], $2::text[], $3::text[], $4::uuid[], $5::text[])
              WITH ORDINALITY AS u(s, t, k, m, e, ord)
         ORDER BY ord",
    )
    .bind(&shards)
    .bind(&topics)
    .bind(&keys)
    .bind(&ids)
    .bind(&envelopes)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The `publish` span of message `message_id` (see [`crate::trace`]), on `partition` of
/// physical `topic`; it closes when dropped. Disabled while hop spans are off.
pub(crate) fn publish_span(
    message_id: Uuid,
    event_type: &str,
    metadata: &crate::envelope::Metadata,
    topic: &str,
    partition: i32,
) -> tracing::Span {
    if !trace::hop_spans_enabled() {
        return tracing::Span::none();
    }
    let context = metadata
        .traceparent
        .as_deref()
        .and_then(trace::TraceContext::parse);
    let span = tracing::debug_span!(
        target: trace::TRACE_TARGET,
        "publish",
        message_id = %message_id,
        topic = %topic,
        partition = partition,
        event_type = %event_type,
        correlation_id = %metadata.correlation_id,
        causation_id = metadata.causation_id.map(tracing::field::display),
        trace_id = context.map(|c| tracing::field::display(trace::TraceIdHex(c.trace_id))),
        span_id = context.map(|_| tracing::field::display(trace::SpanIdHex(trace::publish_span_id(message_id)))),
        parent_span_id = context.map(|c| tracing::field::display(trace::SpanIdHex(c.span_id))),
    );
    if let Some(c) = context {
        crate::telemetry::adopt(
            &span,
            Some(c),
            c.with_span(trace::publish_span_id(message_id)),
        );
    }
    span
}
