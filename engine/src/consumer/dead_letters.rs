//! The operator's side of `dead_letters`: list the messages consumers parked, retry them, or
//! discard them.
//!
//! | route | answers |
//! |---|---|
//! | `GET /admin/dead-letters?status=&consumer=&limit=&after=` | [`DeadLetterPage`], oldest first |
//! | `GET /admin/dead-letters/{id}` | one [`DeadLetter`] |
//! | `POST /admin/dead-letters/{id}/retry` | 200 with the row, now `retried`; the message is delivered again |
//! | `POST /admin/dead-letters/{id}/discard` | 200 with the row, now `discarded` |
//!
//! Only a `parked` row can be retried or discarded (409 `dead_letter_not_parked` otherwise);
//! an unknown id is 404. The routes are returned by [`router`] unprotected: the application
//! wraps them with [`crate::http::admin::protect`].
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

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::doorbell::Doorbell;
use crate::envelope::Envelope;
use crate::http::{ApiError, PathParams, QueryParams};
use crate::outbox::{self, OutboxMessage};
use crate::transport::TopicLayout;

/// A parked message as an operator sees it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeadLetter {
    pub id: i64,
    /// The consumer group that parked it.
    pub consumer: String,
    /// The physical topic it was read from.
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub message_id: Uuid,
    pub partition_key: String,
    pub stream_id: Option<String>,
    pub event_type: Option<String>,
    /// The handler's last error.
    pub error: String,
    /// Failed attempts, over every time it was parked.
    pub attempts: i32,
    pub first_failed_at: DateTime<Utc>,
    pub last_failed_at: DateTime<Utc>,
    /// `parked`, `retried` or `discarded`.
    pub status: String,
    /// When it was last retried or discarded.
    pub resolved_at: Option<DateTime<Utc>>,
    pub envelope: Value,
}

const COLUMNS: &str = "id, consumer_group AS consumer, topic, partition, \"offset\", message_id,
    partition_key, envelope->>'stream_id' AS stream_id, envelope->>'event_type' AS event_type,
    error, attempts, first_failed_at, last_failed_at, status, resolved_at, envelope";

const STATUSES: [&str; 3] = ["parked", "retried", "discarded"];

/// The most dead letters one page holds.
pub const MAX_PAGE: i64 = 500;
const DEFAULT_PAGE: i64 = 50;

/// Why a dead letter cannot be retried or discarded.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("no dead letter {0}")]
    NotFound(i64),
    #[error("dead letter {id} is {status}; only a parked message can be retried or discarded")]
    NotParked { id: i64, status: String },
    #[error("dead letter {id} was never a readable envelope ({error}); it can only be discarded")]
    Undecodable { id: i64, error: String },
    #[error("dead letter {id} comes from topic {topic}, which is not under this deployment's prefix {prefix:?}")]
    ForeignTopic {
        id: i64,
        topic: String,
        prefix: String,
    },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<DeadLetterError> for ApiError {
    fn from(e: DeadLetterError) -> Self {
        let message = e.to_string();
        match e {
            DeadLetterError::NotFound(_) => ApiError::not_found("dead_letter_not_found", message),
            DeadLetterError::NotParked { .. } => {
                ApiError::new(StatusCode::CONFLICT, "dead_letter_not_parked", message)
            }
            DeadLetterError::Undecodable { .. } => {
                ApiError::new(StatusCode::CONFLICT, "dead_letter_undecodable", message)
            }
            DeadLetterError::ForeignTopic { .. } => {
                ApiError::new(StatusCode::CONFLICT, "dead_letter_foreign_topic", message)
            }
            DeadLetterError::Database(e) => e.into(),
        }
    }
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
/// once). Returns the row as it is now. Ring the outbox bell afterwards to publish at once.
pub async fn retry(
    pool: &PgPool,
    layout: &TopicLayout,
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
    outbox::enqueue(
        &mut tx,
        &[OutboxMessage {
            topic: logical.to_owned(),
            partition_key: row.partition_key.clone(),
            envelope,
        }],
    )
    .await?;
    // The copy reaches every group on the topic: each that parked it gets it again too.
    sqlx::query(
        "UPDATE dead_letters SET status = 'retried', resolved_at = now()
         WHERE message_id = $1 AND topic = $2 AND status = 'parked'",
    )
    .bind(row.message_id)
    .bind(&row.topic)
    .execute(&mut *tx)
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

#[derive(Clone)]
struct AdminState {
    pool: PgPool,
    layout: TopicLayout,
    outbox_bell: Doorbell,
}

/// The dead-letter admin routes, over the deployment's topic `layout` (to find a parked
/// message's logical topic) and the `outbox_bell` (rung after a retry).
pub fn router(pool: PgPool, layout: TopicLayout, outbox_bell: Doorbell) -> Router {
    Router::new()
        .route("/admin/dead-letters", get(list))
        .route("/admin/dead-letters/{id}", get(get_one))
        .route("/admin/dead-letters/{id}/retry", post(retry_route))
        .route("/admin/dead-letters/{id}/discard", post(discard_route))
        .with_state(AdminState {
            pool,
            layout,
            outbox_bell,
        })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// `parked`, `retried` or `discarded`; every status when absent.
    status: Option<String>,
    consumer: Option<String>,
    limit: Option<i64>,
    /// The `next_after` of the previous page.
    after: Option<i64>,
}

/// A page of `GET /admin/dead-letters`, in id order (the order they were first parked).
#[derive(Debug, Serialize)]
pub struct DeadLetterPage {
    pub dead_letters: Vec<DeadLetter>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<i64>,
}

async fn list(
    State(state): State<AdminState>,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    let status = q.status.filter(|s| !s.is_empty());
    if let Some(s) = &status {
        if !STATUSES.contains(&s.as_str()) {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("status must be one of {}", STATUSES.join(", ")),
            ));
        }
    }
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be between 1 and {MAX_PAGE}"),
        ));
    }
    let rows: Vec<DeadLetter> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM dead_letters
         WHERE ($1::text IS NULL OR status = $1)
           AND ($2::text IS NULL OR consumer_group = $2)
           AND id > $3
         ORDER BY id LIMIT $4"
    ))
    .bind(&status)
    .bind(q.consumer.as_deref().filter(|c| !c.is_empty()))
    .bind(q.after.unwrap_or(0))
    .bind(limit)
    .fetch_all(&state.pool)
    .await?;
    let next_after = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    Ok(Json(DeadLetterPage {
        dead_letters: rows,
        next_after,
    }))
}

async fn get_one(
    State(state): State<AdminState>,
    PathParams(id): PathParams<i64>,
) -> Result<Json<DeadLetter>, ApiError> {
    find(&state.pool, id)
        .await?
        .map(Json)
        .ok_or_else(|| DeadLetterError::NotFound(id).into())
}

async fn retry_route(
    State(state): State<AdminState>,
    PathParams(id): PathParams<i64>,
) -> Result<Json<DeadLetter>, ApiError> {
    let row = retry(&state.pool, &state.layout, id).await?;
    state.outbox_bell.ring();
    tracing::info!(id, message_id = %row.message_id, consumer = %row.consumer, "dead letter retried");
    Ok(Json(row))
}

async fn discard_route(
    State(state): State<AdminState>,
    PathParams(id): PathParams<i64>,
) -> Result<Json<DeadLetter>, ApiError> {
    let row = discard(&state.pool, id).await?;
    tracing::info!(id, message_id = %row.message_id, consumer = %row.consumer, "dead letter discarded");
    Ok(Json(row))
}
