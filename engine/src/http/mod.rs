//! The HTTP surface every application gets: the generic command route of each registered
//! aggregate type, stream reads and time travel, sagas, dead letters, projections; one
//! [`ApiError`] that maps every error to HTTP, and extractors whose rejections are JSON 4xx.
//! Applications add their own routes with [`run_command`], which applies the same error
//! mapping, idempotency rules and tracing everywhere.

pub mod admin;
mod commands;
pub mod dead_letters;
mod error;
mod extract;
pub mod hygiene;
mod limit;
pub(crate) mod metrics;
pub mod openapi;
pub mod projections;
pub mod query;
pub mod sagas;
pub mod streams;

pub use commands::{
    accepted_body, command_route, run_command, run_generic, AcceptedCommand, AcceptedEvent,
    GenericCommand,
};
pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use extract::{
    metadata_from_headers, parse_json, CommandRequest, PathParams, QueryParams, MAX_BODY_BYTES,
};
pub use limit::{limit_commands, CommandLimits};

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::Router;

/// Wraps the merged application router with what every route shares: the body size limit,
/// the refusal of input PostgreSQL cannot store ([`hygiene`]), and JSON answers for unknown
/// routes and methods. A command for an aggregate type that is
/// not among `aggregate_types` is 404 `unknown_aggregate_type`, naming those that are.
pub fn finish(app: Router, aggregate_types: Vec<&'static str>) -> Router {
    let known = aggregate_types.join(", ");
    app.fallback(move |uri: axum::http::Uri| async move {
        let unknown_type = uri
            .path()
            .strip_prefix("/commands/")
            .and_then(|rest| rest.split_once('/'))
            .map(|(t, _)| t.to_owned());
        match unknown_type {
            Some(t) => ApiError::not_found(
                "unknown_aggregate_type",
                format!("unknown aggregate type {t:?}; known: {known}"),
            ),
            None => ApiError::not_found("route_not_found", "no such route"),
        }
    })
    .method_not_allowed_fallback(|| async {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this route",
        )
    })
    .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
    .layer(axum::middleware::from_fn(hygiene::refuse_unstorable))
}
