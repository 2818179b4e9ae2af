//! The dead-letter admin routes (see [`crate::consumer::dead_letters`] for what retrying and
//! discarding guarantee):
//!
//! | route | answers |
//! |---|---|
//! | `GET /admin/dead-letters?status=&consumer=&limit=&after=` | [`DeadLetterPage`], oldest first |
//! | `GET /admin/dead-letters/{id}` | one [`DeadLetter`] |
//! | `POST /admin/dead-letters/{id}/retry` | 200 with the row, now `retried`; the message is delivered again |
//! | `POST /admin/dead-letters/{id}/discard` | 200 with the row, now `discarded` |
//!
//! Only a `parked` row can be retried or discarded (409 `dead_letter_not_parked` otherwise);
//! an unknown id is 404. The routes are returned unprotected: the application puts them
//! behind the admin token ([`super::admin::protect`]).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use sqlx::PgPool;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::admin::{audited, AdminAction};
use super::{ApiError, ErrorBody, PathParams, QueryParams};
use crate::consumer::dead_letters::{
    self, DeadLetter, DeadLetterError, DeadLetterPage, DEFAULT_PAGE, MAX_PAGE, STATUSES,
};
use crate::doorbell::Doorbell;
use crate::outbox::Publishing;
use crate::transport::TopicLayout;

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

#[derive(Clone)]
struct AdminState {
    pool: PgPool,
    layout: TopicLayout,
    publishing: Publishing,
    outbox_bell: Doorbell,
}

/// The dead-letter admin routes, over the deployment's topic `layout` (to find a parked
/// message's logical topic), its `publishing` (where a retried message is written) and the
/// `outbox_bell` rung after a retry (the bell of that publishing).
pub fn router(
    pool: PgPool,
    layout: TopicLayout,
    publishing: Publishing,
    outbox_bell: Doorbell,
) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get_one))
        .routes(routes!(retry))
        .routes(routes!(discard))
        .with_state(AdminState {
            pool,
            layout,
            publishing,
            outbox_bell,
        })
}

/// The query of `GET /admin/dead-letters`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// `parked`, `retried` or `discarded`; every status when absent.
    #[param(pattern = "^(parked|retried|discarded)?$")]
    status: Option<String>,
    /// Only those of this consumer group.
    consumer: Option<String>,
    /// Rows per page, 1 to 500 (50 by default).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// The `next_after` of the previous page.
    after: Option<i64>,
}

/// The messages consumers parked, oldest first.
#[utoipa::path(
    get,
    path = "/admin/dead-letters",
    tag = "admin",
    params(ListQuery),
    responses((status = 200, description = "a page of dead letters", body = DeadLetterPage))
)]
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
    let page = dead_letters::list(
        &state.pool,
        status.as_deref(),
        q.consumer.as_deref().filter(|c| !c.is_empty()),
        q.after.unwrap_or(0),
        limit,
    )
    .await?;
    Ok(Json(page))
}

/// One parked message.
#[utoipa::path(
    get,
    path = "/admin/dead-letters/{id}",
    tag = "admin",
    params(("id" = i64, Path, description = "The dead letter's id")),
    responses(
        (status = 200, description = "the dead letter", body = DeadLetter),
        (status = 404, description = "`dead_letter_not_found`", body = ErrorBody),
    )
)]
async fn get_one(
    State(state): State<AdminState>,
    PathParams(id): PathParams<i64>,
) -> Result<Json<DeadLetter>, ApiError> {
    dead_letters::find(&state.pool, id)
        .await?
        .map(Json)
        .ok_or_else(|| DeadLetterError::NotFound(id).into())
}

/// Delivers a parked message again; its group applies it once.
#[utoipa::path(
    post,
    path = "/admin/dead-letters/{id}/retry",
    tag = "admin",
    params(("id" = i64, Path, description = "The dead letter's id")),
    responses(
        (status = 200, description = "the row, now `retried`", body = DeadLetter),
        (status = 404, description = "`dead_letter_not_found`", body = ErrorBody),
        (status = 409, description = "`dead_letter_not_parked`, `dead_letter_undecodable` or `dead_letter_foreign_topic`", body = ErrorBody),
    )
)]
async fn retry(State(state): State<AdminState>, PathParams(id): PathParams<i64>) -> Response {
    let result = dead_letters::retry(&state.pool, &state.layout, &state.publishing, id).await;
    if let Ok(row) = &result {
        state.outbox_bell.ring();
        tracing::info!(id, message_id = %row.message_id, consumer = %row.consumer, "dead letter retried");
    }
    audited(
        AdminAction::DeadLetterRetry,
        id,
        result.map(Json).map_err(ApiError::from),
    )
}

/// Gives up on a parked message: its group never applies it.
#[utoipa::path(
    post,
    path = "/admin/dead-letters/{id}/discard",
    tag = "admin",
    params(("id" = i64, Path, description = "The dead letter's id")),
    responses(
        (status = 200, description = "the row, now `discarded`", body = DeadLetter),
        (status = 404, description = "`dead_letter_not_found`", body = ErrorBody),
        (status = 409, description = "`dead_letter_not_parked`", body = ErrorBody),
    )
)]
async fn discard(State(state): State<AdminState>, PathParams(id): PathParams<i64>) -> Response {
    let result = dead_letters::discard(&state.pool, id).await;
    if let Ok(row) = &result {
        tracing::info!(id, message_id = %row.message_id, consumer = %row.consumer, "dead letter discarded");
    }
    audited(
        AdminAction::DeadLetterDiscard,
        id,
        result.map(Json).map_err(ApiError::from),
    )
}
