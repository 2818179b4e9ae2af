//! `dead_letters`: the messages consumers parked, and the operator's side of them: list,
//! retry, discard (served over HTTP by the admin routes of [`crate::http`]).
//!
//! Only a `parked` row can be retried or discarded ([`DeadLetterError::NotParked`]
//! otherwise).
//!
//! **A retried message is applied once.** Retrying puts the parked envelope back in the
//! outbox, unchanged (same `message_id`, topic and key), in the transaction that moves the
//! row from `parked` to `retried` under a row lock; the relay then publishes it again. So:
//! - the group that parked it applies it exactly once: parking rolled its handler back, so the
//!   group never recorded the message id in `processed_messages`, and applying it records the
//!   id in the same transaction as the effects and the offset;
//! - every group that applied the original already holds its id and skips the copy, and a copy
//!   published twice (a relay retry) is skipped the same way;
//! - a second retry, concurrent or not, finds the row `retried` and is refused with 409, so
//!   nothing is enqueued twice;
//! - every other group that had parked the same message receives the copy too, so its row is
//!   moved to `retried` in the same transaction;
//! - if the handler fails again, the consumer parks the message again: the same row goes back
//!   to `parked` with its attempts added up.
//!
//! **A discarded message is never applied** by its group: discarding records its id in the
//! group's `processed_messages`, so a later copy (another group's retry) is skipped. A group
//! that records no ids ([`super::ConsumerConfig::handler_is_idempotent`], the projectors)
//! would apply such a copy; a projector folds every stored event of its streams anyway.
//!
//! The copy is appended at the end of its partition, after messages that arrived meanwhile:
//! a retry does not restore the original order relative to later messages of the same key.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::envelope::Envelope;
use crate::outbox::{OutboxMessage, Publishing};
use crate::transport::{Delivery, TopicLayout};

/// A parked message as an operator sees it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct DeadLetter {
    /// The row's id: what an operator retries or discards.
    pub id: i64,
    /// The consumer group that parked it.
    pub consumer: String,
    /// The physical topic it was read from.
    pub topic: String,
    /// The partition it was read from.
    pub partition: i32,
    /// Its offset in the partition; the group moved past it when it parked it.
    pub offset: i64,
    /// The message's id. A group parks one message once: parking it again updates this row.
    pub message_id: Uuid,
    /// The key it was published with.
    pub partition_key: String,
    /// The envelope's stream id; absent if the message was never an envelope.
    pub stream_id: Option<String>,
    /// The envelope's event type; absent if the message was never an envelope.
    pub event_type: Option<String>,
    /// The handler's last error.
    pub error: String,
    /// Failed attempts, over every time it was parked.
    pub attempts: i32,
    /// When the first attempt of the first parking failed.
    pub first_failed_at: DateTime<Utc>,
    /// When the latest attempt failed.
    pub last_failed_at: DateTime<Utc>,
    /// `parked`, `retried` or `discarded`.
    pub status: String,
    /// When it was last retried or discarded.
    pub resolved_at: Option<DateTime<Utc>>,
    /// The message as it was delivered; for bytes that were not an envelope, those bytes as a JSON
    /// string.
    pub envelope: Value,
}

const COLUMNS: &str = "id, consumer_group AS consumer, topic, partition, \"offset\", message_id,
    partition_key, envelope->>'stream_id' AS stream_id, envelope->>'event_type' AS event_type,
    error, attempts, first_failed_at, last_failed_at, status, resolved_at, envelope";

/// The statuses a row can be in.
pub const STATUSES: [&str; 3] = ["parked", "retried", "discarded"];

/// The most dead letters one page holds.
pub const MAX_PAGE: i64 = 500;
/// Dead letters in a page when the caller does not say.
pub const DEFAULT_PAGE: i64 = 50;

/// Why a dead letter cannot be retried or discarded.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// No dead letter has this id.
    #[error("no dead letter {0}")]
    NotFound(i64),
    /// The dead letter was retried or discarded already.
    #[error("dead letter {id} is {status}; only a parked message can be retried or discarded")]
    NotParked {
        /// The dead letter's id.
        id: i64,
        /// Its status: `retried` or `discarded`.
        status: String,
    },
    /// The parked bytes were never an envelope, so there is nothing to publish again.
    #[error("dead letter {id} was never a readable envelope ({error}); it can only be discarded")]
    Undecodable {
        /// The dead letter's id.
        id: i64,
        /// Why the bytes did not decode.
        error: String,
    },
    /// The dead letter was read from a topic outside this deployment's prefix, so there is no
    /// logical topic to publish it on.
    #[error("dead letter {id} comes from topic {topic}, which is not under this deployment's prefix {prefix:?}")]
    ForeignTopic {
        /// The dead letter's id.
        id: i64,
        /// The physical topic it was read from.
        topic: String,
        /// This deployment's topic prefix.
        prefix: String,
    },
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// One dead letter.
pub async fn find(pool: &PgPool, id: i64) -> Result<Option<DeadLetter>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM dead_letters WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

async fn lock_parked(tx: &mut PgConnection, id: i64) -> Result<DeadLetter, DeadLetterError> {
    let row: Option<DeadLetter> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM dead_letters WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let row = row.ok_or(DeadLetterError::NotFound(id))?;
    if row.status != "parked" {
        return Err(DeadLetterError::NotParked {
            id,
            status: row.status,
        });
    }
    Ok(row)
}

/// Delivers a parked message again (see the module documentation for why it is applied
/// once), published where `publishing` says. Returns the row as it is now. Ring the bell of
/// that publishing afterwards (the relay's, or the log's) to deliver it at once.
pub async fn retry(
    pool: &PgPool,
    layout: &TopicLayout,
    publishing: &Publishing,
    id: i64,
) -> Result<DeadLetter, DeadLetterError> {
    let mut tx = pool.begin().await?;
    let row = lock_parked(&mut tx, id).await?;
    // A message that was never an envelope was wrapped under a fresh id by the transport;
    // publishing the wrapper would deliver something that never was sent.
    let envelope: Envelope = serde_json::from_value(row.envelope.clone())
        .ok()
        .filter(|e: &Envelope| e.event_type != "undecodable" || e.schema_version != 0)
        .ok_or_else(|| DeadLetterError::Undecodable {
            id,
            error: row.error.clone(),
        })?;
    let logical = row
        .topic
        .strip_prefix(&format!("{}.", layout.prefix))
        .ok_or_else(|| DeadLetterError::ForeignTopic {
            id,
            topic: row.topic.clone(),
            prefix: layout.prefix.clone(),
        })?;
    // The copy reaches every group on the topic: each that parked it gets it again too.
    sqlx::query(
        "UPDATE dead_letters SET status = 'retried', resolved_at = now()
         WHERE message_id = $1 AND topic = $2 AND status = 'parked'",
    )
    .bind(row.message_id)
    .bind(&row.topic)
    .execute(&mut *tx)
    .await?;
    // The last write: on the embedded log it locks a partition head until the commit.
    publishing
        .write(
            &mut tx,
            &[OutboxMessage {
                topic: logical.to_owned(),
                partition_key: row.partition_key.clone(),
                envelope,
            }],
        )
        .await?;
    tx.commit().await?;
    Ok(find(pool, id).await?.expect("the row exists"))
}

/// Gives up on a parked message: its group will never apply it. Returns the row as it is now.
pub async fn discard(pool: &PgPool, id: i64) -> Result<DeadLetter, DeadLetterError> {
    let mut tx = pool.begin().await?;
    let row = lock_parked(&mut tx, id).await?;
    sqlx::query(
        "INSERT INTO processed_messages (consumer_group, message_id) VALUES ($1, $2)
         ON CONFLICT DO NOTHING",
    )
    .bind(&row.consumer)
    .bind(row.message_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE dead_letters SET status = 'discarded', resolved_at = now() WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(find(pool, id).await?.expect("the row exists"))
}

/// A page of dead letters, in id order (the order they were first parked).
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterPage {
    /// The page's dead letters, in id order.
    pub dead_letters: Vec<DeadLetter>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<i64>,
}

/// Up to `limit` dead letters with an id above `after`, of `status` and `consumer` when given.
pub async fn list(
    pool: &PgPool,
    status: Option<&str>,
    consumer: Option<&str>,
    after: i64,
    limit: i64,
) -> Result<DeadLetterPage, sqlx::Error> {
    let rows: Vec<DeadLetter> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM dead_letters
         WHERE ($1::text IS NULL OR status = $1)
           AND ($2::text IS NULL OR consumer_group = $2)
           AND id > $3
         ORDER BY id LIMIT $4"
    ))
    .bind(status)
    .bind(consumer)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let next_after = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    Ok(DeadLetterPage {
        dead_letters: rows,
        next_after,
    })
}

/// Parks `m`, which consumer group `group` could not apply after `attempts` attempts, in
/// `tx` (the caller moves the group's offset past it in the same transaction). A message the
/// group had parked before goes back to `parked`, its attempts added up.
pub(crate) async fn park(
    tx: &mut PgConnection,
    group: &str,
    m: &Delivery,
    error: &str,
    attempts: u32,
    first_failed_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let envelope = serde_json::to_value(&m.envelope).expect("envelopes serialize");
    sqlx::query(
        "INSERT INTO dead_letters (consumer_group, topic, partition, \"offset\", message_id, partition_key,
                                   envelope, error, attempts, first_failed_at, last_failed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now())
         ON CONFLICT (consumer_group, message_id) DO UPDATE
         SET error = EXCLUDED.error, attempts = dead_letters.attempts + EXCLUDED.attempts,
             last_failed_at = now(), status = 'parked'",
    )
    .bind(group)
    .bind(&m.topic)
    .bind(m.partition)
    .bind(m.offset)
    .bind(m.message_id())
    .bind(&m.key)
    .bind(&envelope)
    .bind(error)
    .bind(attempts as i32)
    .bind(first_failed_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Parks an outbox row whose envelope cannot be read (only a bug writes one) under `group`,
/// in `tx`, so that it is visible instead of stalling its shard. JSON that is not an envelope
/// is kept as it is; anything else as a JSON string.
pub(crate) async fn park_unreadable(
    tx: &mut PgConnection,
    group: &str,
    topic: &str,
    outbox_id: i64,
    key: &str,
    payload: &str,
    error: &str,
) -> Result<(), sqlx::Error> {
    let payload: Value =
        serde_json::from_str(payload).unwrap_or_else(|_| Value::String(payload.to_owned()));
    sqlx::query(
        "INSERT INTO dead_letters (consumer_group, topic, partition, \"offset\", message_id, partition_key,
                                   envelope, error, attempts, first_failed_at, last_failed_at)
         VALUES ($1, $2, -1, $3, gen_random_uuid(), $4, $5, $6, 1, now(), now())",
    )
    .bind(group)
    .bind(topic)
    .bind(outbox_id)
    .bind(key)
    .bind(&payload)
    .bind(error)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// How many rows there are of each `(consumer_group, status)`.
pub async fn count_by_group_and_status(
    pool: &PgPool,
) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT consumer_group, status, count(*) FROM dead_letters GROUP BY 1, 2")
        .fetch_all(pool)
        .await
}

/// Deletes at most `batch` dead letters retried or discarded before `before`; how many. A
/// parked one is never deleted: it waits for an operator.
pub async fn prune_resolved(
    pool: &PgPool,
    before: DateTime<Utc>,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM dead_letters WHERE id IN (
             SELECT id FROM dead_letters
             WHERE status <> 'parked' AND resolved_at < $1 ORDER BY resolved_at LIMIT $2)",
    )
    .bind(before)
    .bind(batch)
    .execute(pool)
    .await?
    .rows_affected())
}
