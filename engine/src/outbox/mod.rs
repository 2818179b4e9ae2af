//! The transactional outbox: messages are written in the same transaction as the events (or
//! saga state) that caused them, so nothing is published that was not committed and nothing
//! committed is lost. The relay ([`crate::relay`], one per shard) moves them to the
//! transport.

use sqlx::{PgConnection, PgPool};

use crate::envelope::Envelope;
use crate::hash::fnv1a;

/// The notification channel rung after a transaction wrote outbox rows.
pub const OUTBOX_CHANNEL: &str = "sagaflow_outbox";

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
