//! Reading streams: `GET /streams/{stream_id}/events` (a stream's events, paged) and
//! `GET /streams/{stream_id}/state?at_version=n` (time travel: its state as of any version).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, PathParams, QueryParams};
use crate::envelope::RecordedEvent;
use crate::registry::Registry;
use crate::replay::{self, ReplayError, StateAt};
use crate::store::EventStore;

/// State of the stream routes.
#[derive(Clone)]
pub struct StreamsState {
    /// The stream types that can be folded.
    pub registry: Arc<Registry>,
    /// The store the events are read from.
    pub store: EventStore,
}

/// `GET /streams/{stream_id}/events` and `GET /streams/{stream_id}/state`.
pub fn router(state: StreamsState) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(stream_events))
        .routes(routes!(stream_state))
        .with_state(state)
}

/// The query of `GET /streams/{stream_id}/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct StreamQuery {
    /// The first version to return (1 by default).
    #[param(minimum = 1)]
    from_version: Option<i64>,
    /// Events per page, 1 to 1000 (100 by default).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// A page of a stream's events, in version order.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamPage {
    /// The stream the page belongs to.
    pub stream_id: String,
    /// Up to the page's limit of events, in version order.
    pub events: Vec<RecordedEvent>,
    /// Where the next page starts, if this page was full.
    pub next_from_version: Option<i64>,
}

/// A stream's events with their metadata, paged.
#[utoipa::path(
    get,
    path = "/streams/{stream_id}/events",
    tag = "streams",
    params(("stream_id" = String, Path, description = "`<aggregate type>-<id>` or `saga-<id>`"), StreamQuery),
    responses(
        (status = 200, description = "the page", body = StreamPage),
        (status = 404, description = "`stream_not_found`: the stream has no events", body = super::ErrorBody),
    )
)]
async fn stream_events(
    State(state): State<StreamsState>,
    PathParams(stream_id): PathParams<String>,
    QueryParams(q): QueryParams<StreamQuery>,
) -> Result<Json<StreamPage>, ApiError> {
    let from_version = q.from_version.unwrap_or(1);
    if from_version < 1 {
        return Err(ApiError::bad_request(
            "invalid_query",
            "from_version must be at least 1",
        ));
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "limit must be between 1 and 1000",
        ));
    }
    let events = state
        .store
        .read_stream(&stream_id, from_version, limit)
        .await?;
    if events.is_empty() && state.store.stream_version(&stream_id).await? == 0 {
        return Err(ApiError::not_found(
            "stream_not_found",
            format!("stream {stream_id:?} has no events"),
        ));
    }
    let next_from_version = (events.len() as i64 == limit)
        .then(|| events.last().map(|e| e.envelope.stream_version + 1))
        .flatten();
    Ok(Json(StreamPage {
        stream_id,
        events,
        next_from_version,
    }))
}

/// The query of `GET /streams/{stream_id}/state`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct StateQuery {
    /// The version to fold up to; the stream's head by default.
    #[param(minimum = 1)]
    at_version: Option<i64>,
}

/// `GET /streams/{stream_id}/state?at_version=n`: the fold of the stream's events `1..=n`
/// (all of them without `at_version`), read from the store, with old payloads upcast.
/// `{stream_id, aggregate_type, version, head_version, recorded_at, state}`; 404
/// `unknown_aggregate_type`, `stream_not_found` or `version_not_found`, 400 for
/// `at_version < 1`.
#[utoipa::path(
    get,
    path = "/streams/{stream_id}/state",
    tag = "streams",
    params(("stream_id" = String, Path, description = "`<aggregate type>-<id>` or `saga-<id>`"), StateQuery),
    responses(
        (status = 200, description = "the stream's state as of the version", body = StateAt),
        (status = 404, description = "`unknown_aggregate_type`, `stream_not_found` or `version_not_found`", body = super::ErrorBody),
    )
)]
async fn stream_state(
    State(state): State<StreamsState>,
    PathParams(stream_id): PathParams<String>,
    QueryParams(q): QueryParams<StateQuery>,
) -> Result<Json<StateAt>, ApiError> {
    replay::replay(
        &state.store,
        &state.registry,
        &stream_id,
        q.at_version,
        |_, _| {},
    )
    .await
    .map(Json)
    .map_err(ApiError::from)
}

impl From<ReplayError> for ApiError {
    fn from(e: ReplayError) -> Self {
        let message = e.to_string();
        match e {
            ReplayError::UnknownType { .. } => {
                ApiError::not_found("unknown_aggregate_type", message)
            }
            ReplayError::EmptyStream { .. } => ApiError::not_found("stream_not_found", message),
            ReplayError::BeyondHead { .. } => ApiError::not_found("version_not_found", message),
            ReplayError::InvalidVersion => ApiError::bad_request("invalid_query", message),
            ReplayError::Store(e) => e.into(),
        }
    }
}
