//! Saga routes: `GET /sagas/{saga_id}`, served from the `sagas` read model that the
//! orchestrator keeps in the same transaction as each saga's events.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::http::{ApiError, PathParams};

/// A saga as `GET /sagas/{saga_id}` shows it.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct SagaView {
    pub saga_id: Uuid,
    pub saga_type: String,
    /// `running | compensating | completed | compensated | failed`
    pub state: String,
    pub current_step: Option<String>,
    pub data: Value,
    pub failure: Option<Value>,
    pub steps: Value,
    pub correlation_id: Uuid,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

pub fn router(pool: PgPool) -> Router {
    Router::new()
        .route("/sagas/{saga_id}", get(get_saga))
        .with_state(pool)
}

/// One saga from the read model.
pub async fn find_saga(pool: &PgPool, saga_id: Uuid) -> Result<Option<SagaView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT saga_id, saga_type, state, current_step, data, failure, steps, correlation_id,
                started_at, updated_at, version
         FROM sagas WHERE saga_id = $1",
    )
    .bind(saga_id)
    .fetch_optional(pool)
    .await
}

async fn get_saga(
    State(pool): State<PgPool>,
    PathParams(saga_id): PathParams<Uuid>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(view) = find_saga(&pool, saga_id).await? else {
        return Err(ApiError::not_found(
            "saga_not_found",
            format!("no saga {saga_id}"),
        ));
    };
    let etag = format!("\"saga-{}@{}\"", view.saga_id, view.version);
    let etag_value = HeaderValue::from_str(&etag).expect("ascii");
    if headers.get(header::IF_NONE_MATCH) == Some(&etag_value) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response());
    }
    Ok(([(header::ETAG, etag_value)], Json(view)).into_response())
}
