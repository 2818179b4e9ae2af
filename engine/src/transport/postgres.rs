//! The embedded transport: a partitioned log in the `message_log` table.
//!
//! Writers append to it in their own transactions ([`crate::outbox::Publishing::Log`]): the
//! events of a command, a saga's commands, a participant's replies are in the log when the
//! transaction that decided them commits, with no relay hop. The relay appends what is left in
//! the outbox (rows from before writers appended directly, dead letters sent again) the same
//! way, inside its own transaction. Offsets come from `message_log_heads`, whose row stays
//! locked until the appending transaction commits, so offsets within a partition are gap-free
//! and become visible in order ([`crate::outbox::append_to_log`]). Readers are woken by a
//! doorbell (`LISTEN/NOTIFY`), rung by the writers after their commit, and poll as a fallback.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::{PgConnection, PgPool, Row};

use super::{Delivery, OutgoingMessage, Position, Reader, TopicLayout, Transport, TransportError};
use crate::doorbell::Doorbell;
use crate::envelope::Envelope;
use crate::outbox::{append_to_log, LogEntry};

/// The notification channel rung after a commit that appended messages to the log.
pub const LOG_CHANNEL: &str = "sagaflow_message_log";

/// The embedded transport: a partitioned log in the engine's own database, needing no broker.
pub struct PostgresTransport {
    pool: PgPool,
    layout: TopicLayout,
    bell: Doorbell,
}

impl PostgresTransport {
    /// A transport on `pool`'s database with `layout`; readers wait on the [`LOG_CHANNEL`]
    /// doorbell.
    pub fn new(pool: PgPool, layout: TopicLayout) -> Self {
        let bell = Doorbell::new(pool.clone(), LOG_CHANNEL);
        PostgresTransport { pool, layout, bell }
    }
}

#[async_trait]
impl Transport for PostgresTransport {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn layout(&self) -> &TopicLayout {
        &self.layout
    }

    async fn ensure_topics(&self, _logical: &[&str]) -> Result<(), TransportError> {
        // Topics and partitions of the log exist implicitly.
        Ok(())
    }

    async fn publish(
        &self,
        tx: &mut PgConnection,
        batch: &[OutgoingMessage],
    ) -> Result<(), TransportError> {
        if batch.is_empty() {
            return Ok(());
        }
        let entries: Vec<LogEntry> = batch
            .iter()
            .map(|m| LogEntry {
                topic: m.topic.clone(),
                partition: m.partition,
                key: m.key.clone(),
                message_id: m.envelope.message_id,
                envelope: m.payload.clone(),
            })
            .collect();
        append_to_log(tx, &entries).await?;
        Ok(())
    }

    fn log_bell(&self) -> Option<Doorbell> {
        Some(self.bell.clone())
    }

    fn published(&self) {
        self.bell.ring();
    }

    async fn end_offsets(&self, topic: &str) -> Result<Vec<i64>, TransportError> {
        let heads: Vec<(i32, i64)> =
            sqlx::query_as("SELECT partition, next_offset FROM message_log_heads WHERE topic = $1")
                .bind(topic)
                .fetch_all(&self.pool)
                .await?;
        let mut ends = vec![0; self.layout.partitions.max(0) as usize];
        for (p, next) in heads {
            if let Some(slot) = ends.get_mut(p as usize) {
                *slot = next;
            }
        }
        Ok(ends)
    }

    async fn reader(&self) -> Result<Box<dyn Reader>, TransportError> {
        Ok(Box::new(PgReader {
            pool: self.pool.clone(),
            waiter: self.bell.waiter(),
            next: BTreeMap::new(),
        }))
    }

    async fn check(&self) -> Result<(), TransportError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

struct PgReader {
    pool: PgPool,
    waiter: crate::doorbell::Waiter,
    /// Next offset to read per assigned (topic, partition).
    next: BTreeMap<(String, i32), i64>,
}

impl PgReader {
    async fn fetch(&mut self, max: usize) -> Result<Vec<Delivery>, TransportError> {
        if self.next.is_empty() || max == 0 {
            return Ok(Vec::new());
        }
        let per_partition = (max / self.next.len()).max(1) as i64;
        let topics: Vec<&str> = self.next.keys().map(|k| k.0.as_str()).collect();
        let partitions: Vec<i32> = self.next.keys().map(|k| k.1).collect();
        let offsets: Vec<i64> = self.next.values().copied().collect();
        let rows = sqlx::query(
            "SELECT m.topic, m.partition, m.\"offset\", m.partition_key, m.envelope
             FROM UNNEST($1::text[], $2::int4[], $3::int8[]) AS a(topic, partition, next)
             CROSS JOIN LATERAL (
                 SELECT l.topic, l.partition, l.\"offset\", l.partition_key, l.envelope
                 FROM message_log l
                 WHERE l.topic = a.topic AND l.partition = a.partition AND l.\"offset\" >= a.next
                 ORDER BY l.\"offset\" LIMIT $4
             ) m
             ORDER BY m.topic, m.partition, m.\"offset\"",
        )
        .bind(&topics)
        .bind(&partitions)
        .bind(&offsets)
        .bind(per_partition)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let topic: String = row.get(0);
            let partition: i32 = row.get(1);
            let offset: i64 = row.get(2);
            let key: String = row.get(3);
            let raw: &str = row.get(4);
            self.next.insert((topic.clone(), partition), offset + 1);
            out.push(match serde_json::from_str::<Envelope>(raw) {
                Ok(envelope) => Delivery {
                    topic,
                    partition,
                    offset,
                    key,
                    envelope,
                    decode_error: None,
                },
                Err(e) => Delivery::undecodable(
                    topic,
                    partition,
                    offset,
                    key,
                    raw.as_bytes(),
                    e.to_string(),
                ),
            });
        }
        Ok(out)
    }
}

#[async_trait]
impl Reader for PgReader {
    async fn assign(&mut self, positions: &[Position]) -> Result<(), TransportError> {
        self.next = positions
            .iter()
            .map(|p| ((p.topic.clone(), p.partition), p.offset))
            .collect();
        Ok(())
    }

    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, TransportError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let batch = self.fetch(max).await?;
            let now = tokio::time::Instant::now();
            if !batch.is_empty() || now >= deadline {
                return Ok(batch);
            }
            self.waiter.wait(deadline - now).await;
        }
    }
}

/// Every partition the log has written to, with its next offset: `(topic, partition, next)`.
pub async fn log_heads(pool: &PgPool) -> Result<Vec<(String, i32, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT topic, partition, next_offset FROM message_log_heads")
        .fetch_all(pool)
        .await
}

/// Deletes at most `batch` messages of one partition below offset `below` that were appended
/// before `appended_before`, oldest first; how many. The relay appends above every committed
/// offset, so this never touches a row it writes.
pub async fn prune_log(
    pool: &PgPool,
    topic: &str,
    partition: i32,
    below: i64,
    appended_before: chrono::DateTime<chrono::Utc>,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM message_log WHERE topic = $1 AND partition = $2 AND \"offset\" IN (
             SELECT \"offset\" FROM message_log
             WHERE topic = $1 AND partition = $2 AND \"offset\" < $3 AND appended_at < $4
             ORDER BY \"offset\" LIMIT $5)",
    )
    .bind(topic)
    .bind(partition)
    .bind(below)
    .bind(appended_before)
    .bind(batch)
    .execute(pool)
    .await?
    .rows_affected())
}
