//! The one place where errors become HTTP status codes and `{"error": {"code", "message"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::aggregate::DomainError;
use crate::command::CommandError;
use crate::store::StoreError;

/// The body of every error answer: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable snake_case code (`invalid_body`, `party_too_large`, …).
    pub code: String,
    /// For a human.
    pub message: String,
}

/// An error response: a status, a stable snake_case code and a human-readable message.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable snake_case code that clients may match on.
    pub code: &'static str,
    /// What went wrong, for a human.
    pub message: String,
}

impl ApiError {
    /// An error answered with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// A 400: the request is malformed.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// A 404: what the request names does not exist.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// A 422: the request is well-formed, but refused.
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// The answer's body, as JSON.
    pub fn body(&self) -> serde_json::Value {
        serde_json::to_value(ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message.clone(),
            },
        })
        .expect("errors serialize")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            e if crate::db::is_unavailable(&e) => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database_unavailable",
                    "the database is unavailable, retry later",
                )
            }
            e if crate::db::is_contention(&e) => {
                tracing::warn!(error = %e, "transaction rolled back by contention");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database_contention",
                    "the request ran into concurrent writes and was not applied; retry it",
                )
            }
            e => {
                tracing::error!(error = %e, "database error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Database(e) => e.into(),
            e @ StoreError::Decode { .. } => {
                tracing::error!(error = %e, "undecodable stored event");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "undecodable_event",
                    e.to_string(),
                )
            }
        }
    }
}

impl<E: DomainError> From<CommandError<E>> for ApiError {
    fn from(e: CommandError<E>) -> Self {
        match e {
            CommandError::Rejected(r) if r.is_not_found() => {
                ApiError::not_found(r.code(), r.to_string())
            }
            CommandError::Rejected(r) => ApiError::unprocessable(r.code(), r.to_string()),
            e @ CommandError::Conflict { .. } => {
                ApiError::new(StatusCode::CONFLICT, "concurrency_conflict", e.to_string())
            }
            e @ CommandError::IdempotencyMismatch { .. } => {
                ApiError::unprocessable("idempotency_key_reused", e.to_string())
            }
            CommandError::Store(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request that lost a deadlock (PostgreSQL rolled its transaction back) is answered
    /// 503 with `Retry-After`, not 500: nothing was written, and it can be sent again.
    #[sqlx::test]
    async fn contention_is_503_with_retry_after(pool: sqlx::PgPool) {
        let e = crate::db::provoke_deadlock(&pool).await;
        for e in [crate::db::copy_error(&e), e] {
            let response = ApiError::from(e).into_response();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        }
    }
}
