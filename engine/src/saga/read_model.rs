//! The `sagas` read model: one row per saga, written by the orchestrator in the same
//! transaction as the saga's events (an inline projection of the `saga-<id>` streams), and the
//! queries over it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

/// Every state a saga can be in, as stored.
pub const STATES: [&str; 5] = [
    "running",
    "compensating",
    "completed",
    "compensated",
    "failed",
];

/// The terminal states.
pub const TERMINAL_STATES: [&str; 3] = ["completed", "compensated", "failed"];

/// One saga as the read model holds it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct SagaView {
    /// The saga's id ([`saga_id`](super::saga_id) of its type and its starting stream).
    pub saga_id: Uuid,
    /// The saga type's name.
    pub saga_type: String,
    /// `running | compensating | completed | compensated | failed`
    pub state: String,
    /// The step being run or compensated; absent between steps and once the saga ended.
    pub current_step: Option<String>,
    /// The saga data, as the steps left it.
    pub data: Value,
    /// Why the saga stopped as `failed`, or else why it compensates: `{step, code, message}`
    /// ([`Failure`](super::Failure)). Absent while nothing went wrong.
    pub failure: Option<Value>,
    /// Every step of the saga, as a list of [`StepView`](super::StepView)s.
    pub steps: Value,
    /// The correlation id of the request that started the saga.
    pub correlation_id: Uuid,
    /// When the saga started.
    pub started_at: DateTime<Utc>,
    /// When the saga's last event was recorded.
    pub updated_at: DateTime<Utc>,
    /// The version of the saga's stream this row reflects.
    pub version: i64,
}

/// One saga from the read model.
pub async fn find(pool: &PgPool, saga_id: Uuid) -> Result<Option<SagaView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT saga_id, saga_type, state, current_step, data, failure, steps, correlation_id,
                started_at, updated_at, version
         FROM sagas WHERE saga_id = $1",
    )
    .bind(saga_id)
    .fetch_optional(pool)
    .await
}

/// Which sagas [`list`] returns. Every field narrows; `None` does not.
#[derive(Debug, Clone, Default)]
pub struct SagaFilter {
    /// Sagas in one of these states.
    pub states: Option<Vec<String>>,
    /// Sagas whose last event was recorded at or before this time.
    pub updated_at_or_before: Option<DateTime<Utc>>,
    /// Sagas of this type only.
    pub saga_type: Option<String>,
    /// Continue after this `(updated_at, saga_id)`, the last of the previous page.
    pub after: Option<(DateTime<Utc>, Uuid)>,
}

/// A saga in a list: everything but its data and steps.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SagaRow {
    /// The saga's id.
    pub saga_id: Uuid,
    /// The saga type's name.
    pub saga_type: String,
    /// `running | compensating | completed | compensated | failed`
    pub state: String,
    /// The step being run or compensated; absent between steps and once the saga ended.
    pub current_step: Option<String>,
    /// Why the saga stopped as `failed`, or else why it compensates: `{step, code, message}`.
    pub failure: Option<Value>,
    /// When the saga started.
    pub started_at: DateTime<Utc>,
    /// When the saga's last event was recorded.
    pub updated_at: DateTime<Utc>,
    /// The version of the saga's stream this row reflects.
    pub version: i64,
}

/// Up to `limit` sagas matching `filter`, least recently updated first (keyset order
/// `(updated_at, saga_id)`).
pub async fn list(
    pool: &PgPool,
    filter: &SagaFilter,
    limit: i64,
) -> Result<Vec<SagaRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT saga_id, saga_type, state, current_step, failure, started_at, updated_at, version
         FROM sagas
         WHERE ($1::text[] IS NULL OR state = ANY($1))
           AND ($2::timestamptz IS NULL OR updated_at <= $2)
           AND ($3::text IS NULL OR saga_type = $3)
           AND ($4::timestamptz IS NULL OR (updated_at, saga_id) > ($4, $5))
         ORDER BY updated_at, saga_id
         LIMIT $6",
    )
    .bind(&filter.states)
    .bind(filter.updated_at_or_before)
    .bind(filter.saga_type.as_deref())
    .bind(filter.after.map(|a| a.0))
    .bind(filter.after.map(|a| a.1))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// How many sagas there are of each `(saga_type, state)`.
pub async fn count_by_type_and_state(
    pool: &PgPool,
) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT saga_type, state, count(*) FROM sagas GROUP BY saga_type, state")
        .fetch_all(pool)
        .await
}

/// Of `ids`, those of sagas in a terminal state.
pub async fn ended_among(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        // A join, not `saga_id = ANY($1)`: that one may be planned as a scan of the whole
        // table once the statement's generic plan is taken.
        "SELECT s.saga_id FROM UNNEST($1::uuid[]) AS w(saga_id)
         JOIN sagas s ON s.saga_id = w.saga_id
         WHERE s.state IN ('completed', 'compensated', 'failed')",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// Every saga in a terminal state, with the time it ended.
pub async fn ended(pool: &PgPool) -> Result<Vec<(Uuid, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT saga_id, updated_at FROM sagas WHERE state IN ('completed', 'compensated', 'failed')",
    )
    .fetch_all(pool)
    .await
}
