//! The engine's generic HTTP surface: commands by aggregate type, stream reads, health. Domain
//! crates add their own routes with [`run_command`], which applies the same error mapping and
//! idempotency rules everywhere.

pub mod admin;
mod error;
mod extract;
mod ops;
mod registry;

pub use error::ApiError;
pub use extract::{
    metadata_from_headers, parse_json, CommandRequest, PathParams, QueryParams, MAX_BODY_BYTES,
};
pub use ops::{limit_commands, readiness_router, CommandLimits, Readiness};
pub use registry::{CommandRegistry, DynRepository};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use tracing::Instrument;

use crate::aggregate::{Aggregate, DomainCommand};
use crate::command::{
    CommandContext, CommandError, CommandOutcome, Executed, Previous, Repository, StoredResponse,
};
use crate::envelope::RecordedEvent;
use crate::metrics::metrics;
use crate::replay::{self, ReplayError, StateAt};
use crate::store::EventStore;
use crate::telemetry::{self, SpanIdHex, TraceContext};

/// State of the engine's routes.
#[derive(Clone)]
pub struct EngineState {
    pub registry: Arc<CommandRegistry>,
    pub store: EventStore,
}

/// The generic routes: `POST /commands/{aggregate_type}/{aggregate_id}`,
/// `GET /streams/{stream_id}/events`, `GET /streams/{stream_id}/state`, `GET /healthz`.
pub fn router(state: EngineState) -> Router {
    Router::new()
        .route(
            "/commands/{aggregate_type}/{aggregate_id}",
            post(generic_command),
        )
        .route("/streams/{stream_id}/events", get(stream_events))
        .route("/streams/{stream_id}/state", get(stream_state))
        .route("/healthz", get(healthz))
        .with_state(state)
}

/// Wraps the merged application router with what every route shares: the body size limit
/// and JSON answers for unknown routes and methods.
pub fn finish(app: Router) -> Router {
    app.fallback(|| async { ApiError::not_found("route_not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// The body of `POST /commands/{aggregate_type}/{aggregate_id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericCommand {
    pub command: String,
    #[serde(default)]
    pub payload: Option<Value>,
}

/// The default response to an accepted command.
#[derive(Debug, Serialize)]
pub struct AcceptedCommand<'a> {
    pub stream_id: &'a str,
    pub version: i64,
    pub events: Vec<AcceptedEvent<'a>>,
}

#[derive(Debug, Serialize)]
pub struct AcceptedEvent<'a> {
    pub message_id: uuid::Uuid,
    pub stream_version: i64,
    pub event_type: &'a str,
}

/// The default JSON body for an accepted command: its stream, new version and events.
pub fn accepted_body(outcome: &CommandOutcome) -> Value {
    serde_json::to_value(AcceptedCommand {
        stream_id: &outcome.stream_id,
        version: outcome.version,
        events: outcome
            .events
            .iter()
            .map(|e| AcceptedEvent {
                message_id: e.envelope.message_id,
                stream_version: e.envelope.stream_version,
                event_type: &e.envelope.event_type,
            })
            .collect(),
    })
    .expect("serializable")
}

async fn generic_command(
    State(state): State<EngineState>,
    PathParams((aggregate_type, aggregate_id)): PathParams<(String, String)>,
    request: CommandRequest<GenericCommand>,
) -> Response {
    let Some(repo) = state.registry.by_type(&aggregate_type) else {
        return ApiError::not_found(
            "unknown_aggregate_type",
            format!(
                "unknown aggregate type {aggregate_type:?}; known: {}",
                state.registry.types().join(", ")
            ),
        )
        .into_response();
    };
    repo.execute_generic(&aggregate_id, request).await
}

/// Validates the id, then runs a command the way every command route does. See
/// [`run_command`].
pub async fn run_generic<A: Aggregate>(
    repo: &Repository<A>,
    id: &str,
    request: CommandRequest<GenericCommand>,
) -> Response {
    if let Err(message) = A::validate_id(id) {
        return ApiError::bad_request("invalid_id", message).into_response();
    }
    let CommandRequest {
        body: GenericCommand { command, payload },
        metadata,
        idempotency,
    } = request;
    let tagged = |payload: Option<Value>| {
        let mut tagged = serde_json::Map::new();
        tagged.insert("command".into(), Value::String(command.clone()));
        if let Some(payload) = payload {
            tagged.insert("payload".into(), payload);
        }
        Value::Object(tagged)
    };
    let parsed = match payload {
        Some(payload) => serde_json::from_value(tagged(Some(payload))),
        // Unit commands take no payload; commands whose fields are all optional take `{}`.
        None => serde_json::from_value(tagged(None)).or_else(|e| {
            if e.to_string().contains("missing field `payload`") {
                serde_json::from_value(tagged(Some(Value::Object(Default::default()))))
            } else {
                Err(e)
            }
        }),
    };
    let command: A::Command = match parsed {
        Ok(c) => c,
        Err(e) if e.to_string().starts_with("unknown variant") => {
            return ApiError::unprocessable(
                "unknown_command",
                format!("{} has no command {command:?}: {e}", A::TYPE),
            )
            .into_response()
        }
        Err(e) => return ApiError::unprocessable("invalid_body", e.to_string()).into_response(),
    };
    let request = CommandRequest {
        body: command,
        metadata,
        idempotency,
    };
    run_command(repo, id, request, false, accepted_body).await
}

/// Runs a command from an HTTP request and answers it: 202 with `respond(outcome)` when
/// accepted, the first response for a repeated `Idempotency-Key`, a JSON 4xx for rejections
/// and conflicts. A rejection sent with a key is remembered too, so its repeat answers the same.
pub async fn run_command<A: Aggregate>(
    repo: &Repository<A>,
    id: &str,
    request: CommandRequest<A::Command>,
    new_stream: bool,
    respond: impl Fn(&CommandOutcome) -> Value,
) -> Response {
    let CommandRequest {
        body: command,
        mut metadata,
        idempotency,
    } = request;
    // The command is a span of the request's trace (of a new one without `traceparent`), and
    // the parent of everything it causes: its events carry this span's context.
    let incoming = metadata
        .traceparent
        .as_deref()
        .and_then(TraceContext::parse);
    let trace = incoming
        .unwrap_or_else(TraceContext::new_root)
        .with_span(telemetry::random_span_id());
    metadata.traceparent = Some(trace.header());
    let span = tracing::info_span!(
        "command",
        aggregate_type = A::TYPE,
        aggregate_id = %id,
        command = command.name(),
        correlation_id = %metadata.correlation_id,
        trace_id = %trace.trace_id_hex(),
        span_id = %SpanIdHex(trace.span_id),
        parent_span_id = incoming.map(|c| tracing::field::display(SpanIdHex(c.span_id))),
    );
    let started = std::time::Instant::now();
    let ctx = CommandContext {
        metadata,
        idempotency,
        new_stream,
    };
    let result = repo
        .execute(id, &command, &ctx, |o| StoredResponse {
            status: StatusCode::ACCEPTED.as_u16(),
            body: respond(o),
        })
        .instrument(span)
        .await;
    record_command::<A>(command.name(), &result, started);
    let mut response = match result {
        Ok(Executed::Applied { response, .. }) => stored(response, false),
        Ok(Executed::Replayed(response)) => stored(response, true),
        Err(CommandError::Rejected(r)) if ctx.idempotency.is_some() => {
            let idem = ctx.idempotency.as_ref().expect("checked");
            let error = ApiError::from(CommandError::<A::Error>::Rejected(r));
            let response = StoredResponse {
                status: error.status.as_u16(),
                body: error.body(),
            };
            match idem.remember(repo.bus().pool(), &response).await {
                Ok(None) => error.into_response(),
                Ok(Some(Previous::Same(first))) => stored(first, true),
                Ok(Some(Previous::Mismatch)) => {
                    ApiError::from(CommandError::<A::Error>::IdempotencyMismatch {
                        key: idem.key.clone(),
                    })
                    .into_response()
                }
                Err(e) => ApiError::from(e).into_response(),
            }
        }
        Err(e) => ApiError::from(e).into_response(),
    };
    // W3C Trace Context Level 2: the trace the command joined (or started).
    if let Ok(v) = HeaderValue::from_str(&trace.header()) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("traceresponse"), v);
    }
    response
}

/// Counts a command by its outcome and records its latency.
fn record_command<A: Aggregate>(
    command: &str,
    result: &Result<Executed, CommandError<A::Error>>,
    started: std::time::Instant,
) {
    let outcome = match result {
        Ok(Executed::Applied { .. }) => "accepted",
        Ok(Executed::Replayed(_)) => "replayed",
        Err(CommandError::Rejected(_) | CommandError::IdempotencyMismatch { .. }) => "rejected",
        Err(CommandError::Conflict { .. }) => "conflict",
        Err(CommandError::Store(_)) => "error",
    };
    let m = metrics();
    m.commands
        .with_label_values(&[A::TYPE, command, outcome])
        .inc();
    m.command_seconds
        .with_label_values(&[A::TYPE])
        .observe(started.elapsed().as_secs_f64());
}

fn stored(response: StoredResponse, replayed: bool) -> Response {
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::OK);
    let mut r = (status, Json(response.body)).into_response();
    if replayed {
        r.headers_mut().insert(
            HeaderName::from_static("idempotent-replayed"),
            HeaderValue::from_static("true"),
        );
    }
    r
}

#[derive(Debug, Deserialize)]
struct StreamQuery {
    from_version: Option<i64>,
    limit: Option<i64>,
}

#[derive(Debug, Serialize)]
struct StreamPage {
    stream_id: String,
    events: Vec<RecordedEvent>,
    /// Where the next page starts, if this page was full.
    next_from_version: Option<i64>,
}

async fn stream_events(
    State(state): State<EngineState>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateQuery {
    at_version: Option<i64>,
}

/// `GET /streams/{stream_id}/state?at_version=n`: the fold of the stream's events `1..=n`
/// (all of them without `at_version`), read from the store, with old payloads upcast.
/// `{stream_id, aggregate_type, version, head_version, recorded_at, state}`; 404
/// `unknown_aggregate_type`, `stream_not_found` or `version_not_found`, 400 for
/// `at_version < 1`.
async fn stream_state(
    State(state): State<EngineState>,
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

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}
