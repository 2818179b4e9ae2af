//! Commands over HTTP: the generic route of every registered aggregate type
//! (`POST /commands/{aggregate_type}/{aggregate_id}`, one route per type) and
//! [`run_command`], which every command route of an application runs on, so that all of them
//! share one error mapping, one idempotency rule and one trace.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::Instrument;

use super::metrics::metrics;
use super::{ApiError, CommandRequest, PathParams};
use crate::aggregate::{Aggregate, DomainCommand};
use crate::command::{
    CommandContext, CommandError, CommandOutcome, Executed, Previous, Repository, StoredResponse,
};
use crate::trace::{self, SpanIdHex, TraceContext};

/// `POST /commands/{A::TYPE}/{aggregate_id}`: the generic command route of aggregate type `A`
/// (body `{"command": "...", "payload": {...}}`, the serde form of `A::Command`), on `repo`.
pub fn command_route<A: Aggregate>(repo: Arc<Repository<A>>) -> Router {
    Router::new()
        .route(
            &format!("/commands/{}/{{aggregate_id}}", A::TYPE),
            post(generic_command::<A>),
        )
        .with_state(repo)
}

async fn generic_command<A: Aggregate>(
    State(repo): State<Arc<Repository<A>>>,
    PathParams(aggregate_id): PathParams<String>,
    request: CommandRequest<GenericCommand>,
) -> Response {
    run_generic(&repo, &aggregate_id, request).await
}

/// The body of `POST /commands/{aggregate_type}/{aggregate_id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericCommand {
    /// The command's name: the `snake_case` tag of a variant of the aggregate's command enum.
    pub command: String,
    /// The command's fields; absent for a command that has none.
    #[serde(default)]
    pub payload: Option<Value>,
}

/// The default response to an accepted command.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AcceptedCommand<'a> {
    /// The stream the command ran on: `<aggregate type>-<id>`.
    pub stream_id: &'a str,
    /// The stream's version after the command; a read model has caught up with it once it reports
    /// this version.
    pub version: i64,
    /// The events the command recorded, in order; empty if it decided nothing.
    pub events: Vec<AcceptedEvent<'a>>,
}

/// An event a command recorded.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AcceptedEvent<'a> {
    /// The event's message id.
    pub message_id: uuid::Uuid,
    /// Its version in the stream.
    pub stream_version: i64,
    /// Its type.
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
    let mut trace = incoming
        .unwrap_or_else(TraceContext::new_root)
        .with_span(trace::random_span_id());
    let span = tracing::info_span!(
        target: trace::TRACE_TARGET,
        "command",
        aggregate_type = A::TYPE,
        aggregate_id = %id,
        command = command.name(),
        correlation_id = %metadata.correlation_id,
        trace_id = %trace.trace_id_hex(),
        span_id = %SpanIdHex(trace.span_id),
        parent_span_id = incoming.map(|c| tracing::field::display(SpanIdHex(c.span_id))),
    );
    // A command span the exporter's sampler left out is passed on as not sampled, so that the
    // hops after it are left out too (the whole trace or none of it).
    if crate::telemetry::adopt(&span, incoming, trace) == Some(false) {
        trace.flags &= !0x01;
    }
    metadata.traceparent = Some(trace.header());
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
