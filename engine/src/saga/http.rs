//! Saga routes, for operators and for debugging:
//!
//! | route | answers |
//! |---|---|
//! | `GET /sagas/{saga_id}` | the saga from the `sagas` read model ([`SagaView`]) |
//! | `GET /sagas?state=&older_than=&saga_type=&limit=&after=` | sagas by state and age, oldest first ([`SagaPage`]) |
//! | `GET /sagas/{saga_id}/timeline?limit=` | the saga's events and its participants' events, in order ([`Timeline`]) |
//! | `POST /admin/sagas/{saga_id}/retry-step` | re-drives a failed saga or a timed-out step ([`SagaInput::RetryStep`]) |
//! | `POST /admin/sagas/{saga_id}/abort` `{"reason"}` | compensates and ends a running saga |
//!
//! The read model is kept by the orchestrator in the same transaction as each saga's events;
//! the timeline is read from the event store itself. The admin routes are returned by
//! [`admin_router`] unprotected: the application wraps them with
//! [`crate::http::admin::protect`].

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use super::definition::saga_stream;
use super::messages::ReplyOutcome;
use super::orchestrator::{Commanded, Orchestrator};
use super::state::{DeadlineKind, SagaEvent, SagaInput, SagaState};
use crate::command::decode_envelope;
use crate::consumer::HandlerError;
use crate::doorbell::Doorbell;
use crate::envelope::{Envelope, Metadata};
use crate::http::{ApiError, CommandRequest, PathParams, QueryParams};

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

/// The public saga routes: `GET /sagas`, `GET /sagas/{saga_id}`,
/// `GET /sagas/{saga_id}/timeline`.
pub fn router(pool: PgPool) -> Router {
    Router::new()
        .route("/sagas", get(list_sagas))
        .route("/sagas/{saga_id}", get(get_saga))
        .route("/sagas/{saga_id}/timeline", get(timeline))
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

// ---------------------------------------------------------------------------------------------
// GET /sagas?state=&older_than=

/// The most sagas one page of `GET /sagas` holds.
pub const MAX_SAGA_PAGE: i64 = 500;
const DEFAULT_SAGA_PAGE: i64 = 50;
const SAGA_STATES: [&str; 5] = [
    "running",
    "compensating",
    "completed",
    "compensated",
    "failed",
];

/// The query of `GET /sagas`. Every parameter is optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// One state or several, comma-separated (`running,compensating`).
    state: Option<String>,
    /// Only sagas that have not moved (no event) for at least this long: a number of seconds,
    /// or an RFC 3339 timestamp (sagas last updated at or before it).
    older_than: Option<String>,
    saga_type: Option<String>,
    limit: Option<i64>,
    /// The `next_after` of the previous page.
    after: Option<String>,
}

/// One saga in a page of `GET /sagas`.
#[derive(Debug, Serialize)]
pub struct SagaSummary {
    pub saga_id: Uuid,
    pub saga_type: String,
    pub state: String,
    pub current_step: Option<String>,
    pub failure: Option<Value>,
    pub started_at: DateTime<Utc>,
    /// When its last event was recorded.
    pub updated_at: DateTime<Utc>,
    /// Seconds since `updated_at`: how long it has not moved.
    pub idle_seconds: i64,
    pub version: i64,
    /// `{"saga": "/sagas/<id>", "timeline": "/sagas/<id>/timeline"}`
    pub links: Value,
}

/// A page of `GET /sagas`, least recently updated first.
#[derive(Debug, Serialize)]
pub struct SagaPage {
    pub sagas: Vec<SagaSummary>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<String>,
}

#[derive(sqlx::FromRow)]
struct SummaryRow {
    saga_id: Uuid,
    saga_type: String,
    state: String,
    current_step: Option<String>,
    failure: Option<Value>,
    started_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    version: i64,
}

fn links(saga_id: Uuid) -> Value {
    json!({
        "saga": format!("/sagas/{saga_id}"),
        "timeline": format!("/sagas/{saga_id}/timeline"),
    })
}

fn parse_older_than(v: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(seconds) = v.parse::<i64>() {
        if seconds < 0 {
            return Err(ApiError::bad_request(
                "invalid_query",
                "older_than must not be negative",
            ));
        }
        return Ok(now - chrono::Duration::seconds(seconds.min(100 * 365 * 86_400)));
    }
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            ApiError::bad_request(
                "invalid_query",
                format!(
                    "older_than must be a number of seconds or an RFC 3339 timestamp, not {v:?}"
                ),
            )
        })
}

fn cursor(updated_at: DateTime<Utc>, saga_id: Uuid) -> String {
    format!(
        "{}_{saga_id}",
        updated_at.to_rfc3339_opts(SecondsFormat::Micros, true)
    )
}

fn parse_cursor(v: &str) -> Result<(DateTime<Utc>, Uuid), ApiError> {
    let bad = || ApiError::bad_request("invalid_query", "after must be a next_after of GET /sagas");
    let (t, id) = v.split_once('_').ok_or_else(bad)?;
    let t = DateTime::parse_from_rfc3339(t).map_err(|_| bad())?;
    let id = Uuid::parse_str(id).map_err(|_| bad())?;
    Ok((t.with_timezone(&Utc), id))
}

/// `GET /sagas`: sagas by state and age, least recently updated first, keyset-paged.
async fn list_sagas(
    State(pool): State<PgPool>,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<SagaPage>, ApiError> {
    let now = Utc::now();
    let states: Option<Vec<String>> = match q.state.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(list) => {
            let states: Vec<String> = list.split(',').map(|s| s.trim().to_owned()).collect();
            if let Some(bad) = states.iter().find(|s| !SAGA_STATES.contains(&s.as_str())) {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!(
                        "unknown saga state {bad:?}; one of {}",
                        SAGA_STATES.join(", ")
                    ),
                ));
            }
            Some(states)
        }
    };
    let cutoff = q
        .older_than
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|v| parse_older_than(v, now))
        .transpose()?;
    let limit = q.limit.unwrap_or(DEFAULT_SAGA_PAGE);
    if !(1..=MAX_SAGA_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be between 1 and {MAX_SAGA_PAGE}"),
        ));
    }
    let after = q
        .after
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(parse_cursor)
        .transpose()?;
    let rows: Vec<SummaryRow> = sqlx::query_as(
        "SELECT saga_id, saga_type, state, current_step, failure, started_at, updated_at, version
         FROM sagas
         WHERE ($1::text[] IS NULL OR state = ANY($1))
           AND ($2::timestamptz IS NULL OR updated_at <= $2)
           AND ($3::text IS NULL OR saga_type = $3)
           AND ($4::timestamptz IS NULL OR (updated_at, saga_id) > ($4, $5))
         ORDER BY updated_at, saga_id
         LIMIT $6",
    )
    .bind(&states)
    .bind(cutoff)
    .bind(q.saga_type.as_deref().filter(|s| !s.is_empty()))
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .fetch_all(&pool)
    .await?;
    let next_after = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| cursor(r.updated_at, r.saga_id)))
        .flatten();
    let sagas = rows
        .into_iter()
        .map(|r| SagaSummary {
            links: links(r.saga_id),
            idle_seconds: (now - r.updated_at).num_seconds().max(0),
            saga_id: r.saga_id,
            saga_type: r.saga_type,
            state: r.state,
            current_step: r.current_step,
            failure: r.failure,
            started_at: r.started_at,
            updated_at: r.updated_at,
            version: r.version,
        })
        .collect();
    Ok(Json(SagaPage { sagas, next_after }))
}

// ---------------------------------------------------------------------------------------------
// GET /sagas/{saga_id}/timeline

/// The most entries one timeline answer holds.
pub const MAX_TIMELINE: i64 = 10_000;
const DEFAULT_TIMELINE: i64 = 1_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimelineQuery {
    limit: Option<i64>,
}

/// What happened to one saga, in order: its own events (`saga-<id>`) and every event that
/// carries its correlation id and either names this saga or no saga at all (the event that
/// started it, the participants' events, a cancellation). Sorted by the time the events were
/// recorded (their transaction's start), then by global position, so an event recorded because
/// of another (a participant's event after the saga's command, the saga's reply handling after
/// it) always comes after it. The events of one stream are always in version order: in the
/// rare case where two writers of one stream raced and the later version's transaction started
/// first, the two swap places (and the times shown there go backwards).
#[derive(Debug, Serialize)]
pub struct Timeline {
    pub saga_id: Uuid,
    pub saga_type: String,
    pub state: String,
    pub correlation_id: Uuid,
    pub entries: Vec<TimelineEntry>,
    /// More entries exist than `limit` allowed.
    pub truncated: bool,
}

/// A command the saga sent, as the timeline shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SentSummary {
    pub message_id: Uuid,
    /// The target stream (`inventory-APPLE`).
    pub target: String,
    /// The participant's command (`reserve`).
    pub command: String,
}

/// One entry of a [`Timeline`].
#[derive(Debug, Serialize)]
pub struct TimelineEntry {
    /// When the event was recorded.
    pub at: DateTime<Utc>,
    pub global_position: i64,
    pub stream_id: String,
    pub stream_version: i64,
    /// `saga` for the saga's own events, `participant` for the others.
    pub source: &'static str,
    pub event_type: String,
    /// The saga step the event belongs to (`on_compensated` for the final command).
    pub step: Option<String>,
    pub attempt: Option<u32>,
    /// The commands sent by an invocation (`step_invoked`, `compensation_invoked`,
    /// `final_command_invoked`); for a reply, the command it answers.
    pub commands: Vec<SentSummary>,
    /// For a reply: `succeeded` or `rejected`; for the end of a compensated saga, how its
    /// final command was answered.
    pub outcome: Option<String>,
    /// The rejection, failure or timeout code.
    pub code: Option<String>,
    pub message: Option<String>,
    /// Until when an invocation waits for replies, or when a timed-out step is tried again.
    pub due_at: Option<DateTime<Utc>>,
    /// One line for a human.
    pub summary: String,
    pub message_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub payload: Value,
}

#[derive(Default, sqlx::FromRow)]
struct TimelineRow {
    global_position: i64,
    stream_id: String,
    stream_version: i64,
    message_id: Uuid,
    event_type: String,
    schema_version: i32,
    payload: Value,
    metadata: Value,
    recorded_at: DateTime<Utc>,
}

async fn timeline(
    State(pool): State<PgPool>,
    PathParams(saga_id): PathParams<Uuid>,
    QueryParams(q): QueryParams<TimelineQuery>,
) -> Result<Json<Timeline>, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_TIMELINE);
    if !(1..=MAX_TIMELINE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be between 1 and {MAX_TIMELINE}"),
        ));
    }
    let Some(view) = find_saga(&pool, saga_id).await? else {
        return Err(ApiError::not_found(
            "saga_not_found",
            format!("no saga {saga_id}"),
        ));
    };
    // Two index scans: the saga's stream, and the correlation id (0005_debugging.sql).
    let mut rows: Vec<TimelineRow> = sqlx::query_as(
        "SELECT * FROM (
             SELECT global_position, stream_id, stream_version, message_id, event_type,
                    schema_version, payload, metadata, recorded_at
             FROM events WHERE stream_id = $1
             UNION ALL
             SELECT global_position, stream_id, stream_version, message_id, event_type,
                    schema_version, payload, metadata, recorded_at
             FROM events
             WHERE metadata->>'correlation_id' = $2 AND stream_id <> $1
               AND (metadata->>'saga_id' IS NULL OR metadata->>'saga_id' = $3)
         ) t
         ORDER BY recorded_at, global_position
         LIMIT $4",
    )
    .bind(saga_stream(saga_id))
    .bind(view.correlation_id.to_string())
    .bind(saga_id.to_string())
    .bind(limit + 1)
    .fetch_all(&pool)
    .await?;
    let truncated = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    keep_stream_order(&mut rows);
    let mut describe = Describer::default();
    let entries = rows
        .into_iter()
        .map(|r| describe.entry(r))
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Json(Timeline {
        saga_id,
        saga_type: view.saga_type,
        state: view.state,
        correlation_id: view.correlation_id,
        entries,
        truncated,
    }))
}

/// The event types a participant recorded for a reply, in words.
fn recorded(events: &[super::messages::ReplyEvent]) -> String {
    if events.is_empty() {
        return "nothing to do".to_owned();
    }
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    types.join(", ")
}

/// Puts each stream's events back in version order, in the places its events hold.
fn keep_stream_order(rows: &mut [TimelineRow]) {
    let mut slots: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, r) in rows.iter().enumerate() {
        slots.entry(r.stream_id.clone()).or_default().push(i);
    }
    for places in slots.into_values() {
        let versions: Vec<i64> = places.iter().map(|&i| rows[i].stream_version).collect();
        if versions.windows(2).all(|w| w[0] < w[1]) {
            continue;
        }
        let mut order = places.clone();
        order.sort_by_key(|&i| rows[i].stream_version);
        let taken: Vec<TimelineRow> = order
            .iter()
            .map(|&i| std::mem::take(&mut rows[i]))
            .collect();
        for (slot, row) in places.into_iter().zip(taken) {
            rows[slot] = row;
        }
    }
}

/// Turns stored events into timeline entries, remembering what earlier entries said (step
/// names by index, the commands sent) to describe later ones.
#[derive(Default)]
struct Describer {
    steps: Vec<String>,
    sent: HashMap<Uuid, SentSummary>,
}

impl Describer {
    fn entry(&mut self, r: TimelineRow) -> Result<TimelineEntry, ApiError> {
        let metadata: Metadata = serde_json::from_value(r.metadata).unwrap_or_default();
        let mut e = TimelineEntry {
            at: r.recorded_at,
            global_position: r.global_position,
            stream_id: r.stream_id,
            stream_version: r.stream_version,
            source: "participant",
            event_type: r.event_type,
            step: metadata.saga_step.clone(),
            attempt: metadata.attempt,
            commands: Vec::new(),
            outcome: None,
            code: None,
            message: None,
            due_at: None,
            summary: String::new(),
            message_id: r.message_id,
            causation_id: metadata.causation_id,
            payload: r.payload,
        };
        if !e.stream_id.starts_with("saga-") {
            e.summary = format!("{}: {}", e.stream_id, e.event_type);
            return Ok(e);
        }
        e.source = "saga";
        e.step = None;
        e.attempt = None;
        let envelope = Envelope {
            message_id: e.message_id,
            stream_id: e.stream_id.clone(),
            stream_version: e.stream_version,
            event_type: e.event_type.clone(),
            schema_version: r.schema_version,
            payload: e.payload.clone(),
            metadata,
        };
        let event = decode_envelope::<SagaEvent>(&envelope)?;
        self.describe(&mut e, event);
        Ok(e)
    }

    fn sent(&mut self, commands: &[super::state::SentCommand]) -> Vec<SentSummary> {
        commands
            .iter()
            .map(|c| {
                let s = SentSummary {
                    message_id: c.message_id,
                    target: super::definition::target_stream(&c.invocation),
                    command: c
                        .invocation
                        .command
                        .get("command")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_owned(),
                };
                self.sent.insert(c.message_id, s.clone());
                s
            })
            .collect()
    }

    /// The command a reply answers, as a list of at most one, and in words.
    fn answered(&self, command_id: Uuid) -> (Vec<SentSummary>, String) {
        let to = self.sent.get(&command_id).cloned();
        let what = to.as_ref().map_or_else(
            || format!("command {command_id}"),
            |c| format!("{} on {}", c.command, c.target),
        );
        (to.into_iter().collect(), what)
    }

    fn step_name(&self, step: usize) -> String {
        self.steps
            .get(step)
            .cloned()
            .unwrap_or_else(|| format!("#{step}"))
    }

    fn describe(&mut self, e: &mut TimelineEntry, event: SagaEvent) {
        let list = |c: &[SentSummary]| {
            c.iter()
                .map(|c| format!("{} on {}", c.command, c.target))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match event {
            SagaEvent::SagaStarted {
                saga_type, steps, ..
            } => {
                e.summary = format!("{saga_type} started: {}", steps.join(" → "));
                self.steps = steps;
            }
            SagaEvent::StepInvoked {
                name,
                attempt,
                commands,
                deadline_at,
                ..
            }
            | SagaEvent::CompensationInvoked {
                name,
                attempt,
                commands,
                deadline_at,
                ..
            } => {
                let verb = if e.event_type == "compensation_invoked" {
                    "compensate with"
                } else {
                    "invoke"
                };
                e.commands = self.sent(&commands);
                e.summary = format!("{name}: {verb} {} (attempt {attempt})", list(&e.commands));
                (e.step, e.attempt, e.due_at) = (Some(name), Some(attempt), Some(deadline_at));
            }
            SagaEvent::ReplyReceived {
                name,
                command_id,
                outcome,
                ..
            } => {
                let what;
                (e.commands, what) = self.answered(command_id);
                match outcome {
                    ReplyOutcome::Succeeded { events } => {
                        e.summary = format!("{name}: {what} succeeded ({})", recorded(&events));
                        e.outcome = Some("succeeded".into());
                    }
                    ReplyOutcome::Rejected { code, message } => {
                        e.summary = format!("{name}: {what} rejected: {code}");
                        e.outcome = Some("rejected".into());
                        (e.code, e.message) = (Some(code), Some(message));
                    }
                }
                e.step = Some(name);
            }
            SagaEvent::StepSucceeded {
                name, reply: None, ..
            } => {
                e.summary = format!("{name} succeeded");
                e.step = Some(name);
            }
            SagaEvent::StepSucceeded {
                name,
                reply: Some(reply),
                ..
            } => {
                // The step's last reply, folded into the event it caused.
                let what;
                (e.commands, what) = self.answered(reply.command_id);
                e.summary = format!("{name} succeeded: {what} ({})", recorded(&reply.events));
                e.outcome = Some("succeeded".into());
                e.step = Some(name);
            }
            SagaEvent::StepFailed {
                name,
                code,
                message,
                ..
            } => {
                e.summary = format!("{name} failed: {code}");
                (e.step, e.code, e.message) = (Some(name), Some(code), Some(message));
            }
            SagaEvent::StepTimedOut {
                name,
                attempt,
                retry_at,
                ..
            }
            | SagaEvent::CompensationTimedOut {
                name,
                attempt,
                retry_at,
                ..
            } => {
                let what = if e.event_type == "compensation_timed_out" {
                    "compensation"
                } else {
                    "attempt"
                };
                e.summary = match retry_at {
                    Some(at) => format!("{name}: {what} {attempt} timed out; next attempt at {at}"),
                    None => format!("{name}: {what} {attempt} timed out; no attempts left"),
                };
                (e.step, e.attempt, e.due_at) = (Some(name), Some(attempt), retry_at);
                e.code = Some("timeout".into());
            }
            SagaEvent::CompensationStarted { failure, steps } => {
                let names: Vec<String> = steps.iter().map(|s| self.step_name(*s)).collect();
                e.summary = format!(
                    "compensating [{}] because {} {}: {}",
                    names.join(", "),
                    failure.step,
                    failure.code,
                    failure.message
                );
                (e.step, e.code, e.message) = (
                    Some(failure.step),
                    Some(failure.code),
                    Some(failure.message),
                );
            }
            SagaEvent::CompensationDone { name, .. } => {
                e.summary = format!("{name} compensated");
                e.step = Some(name);
            }
            SagaEvent::SagaCompleted => e.summary = "saga completed".into(),
            SagaEvent::FinalCommandInvoked {
                attempt,
                command,
                deadline_at,
            } => {
                e.commands = self.sent(std::slice::from_ref(&command));
                e.summary = format!(
                    "on_compensated: send {} (attempt {attempt})",
                    list(&e.commands)
                );
                (e.step, e.attempt, e.due_at) = (
                    Some("on_compensated".into()),
                    Some(attempt),
                    Some(deadline_at),
                );
            }
            SagaEvent::SagaCompensated {
                failure,
                final_outcome,
            } => {
                e.summary = format!(
                    "saga compensated ({} {}){}",
                    failure.step,
                    failure.code,
                    final_outcome
                        .as_deref()
                        .map(|o| format!("; final command {o}"))
                        .unwrap_or_default()
                );
                (e.code, e.outcome) = (Some(failure.code), final_outcome);
            }
            SagaEvent::SagaFailed { failure } => {
                e.summary = format!(
                    "saga failed at {}: {}: {}",
                    failure.step, failure.code, failure.message
                );
                (e.step, e.code, e.message) = (
                    Some(failure.step),
                    Some(failure.code),
                    Some(failure.message),
                );
            }
            SagaEvent::RetryRequested => e.summary = "an operator re-drove the saga".into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// POST /admin/sagas/{saga_id}/retry-step | abort

#[derive(Clone)]
struct AdminState {
    orchestrator: Arc<Orchestrator>,
    outbox_bell: Doorbell,
}

/// The saga admin routes (`POST /admin/sagas/{saga_id}/retry-step`,
/// `POST /admin/sagas/{saga_id}/abort`), to be wrapped with
/// [`crate::http::admin::protect`]. Each runs one [`SagaInput`] through
/// [`Orchestrator::command`]: decided on the saga's committed state under its lock, so it
/// is serialized with the replies and deadlines of that saga, and written (events, commands,
/// deadline, read model) in one transaction. 202 with the events decided and the saga's new
/// state; 404 for an unknown saga; 409 when the input does not apply to the saga as it is.
pub fn admin_router(orchestrator: Arc<Orchestrator>, outbox_bell: Doorbell) -> Router {
    Router::new()
        .route("/admin/sagas/{saga_id}/retry-step", post(retry_step))
        .route("/admin/sagas/{saga_id}/abort", post(abort))
        .with_state(AdminState {
            orchestrator,
            outbox_bell,
        })
}

/// Body of `POST /admin/sagas/{saga_id}/abort`; the body is optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortBody {
    #[serde(default)]
    pub reason: Option<String>,
}

async fn retry_step(
    State(admin): State<AdminState>,
    PathParams(saga_id): PathParams<Uuid>,
) -> Result<Response, ApiError> {
    run_admin(&admin, saga_id, SagaInput::RetryStep, |state| {
        let step = state.current_step_name().unwrap_or("-");
        match (state.status, state.deadline) {
            (Some(s), _) if s.is_terminal() => {
                format!("the saga is {}; nothing to retry", s.as_str())
            }
            (_, Some(d)) if d.kind == DeadlineKind::Reply => format!(
                "step {step} is waiting for replies until {}; only a failed saga or a timed-out step can be retried",
                d.at.to_rfc3339_opts(SecondsFormat::Millis, true)
            ),
            _ => "nothing is waiting to be retried".to_owned(),
        }
    })
    .await
}

async fn abort(
    State(admin): State<AdminState>,
    PathParams(saga_id): PathParams<Uuid>,
    request: CommandRequest<Option<AbortBody>>,
) -> Result<Response, ApiError> {
    let reason = request
        .body
        .and_then(|b| b.reason)
        .unwrap_or_else(|| "aborted by an operator".to_owned());
    let input = SagaInput::Abort {
        reason,
        by_operator: true,
    };
    run_admin(&admin, saga_id, input, |state| {
        format!(
            "the saga is {}; only a running saga can be aborted",
            state.status.map_or("unknown", |s| s.as_str())
        )
    })
    .await
}

async fn run_admin(
    admin: &AdminState,
    saga_id: Uuid,
    input: SagaInput,
    why_not: impl Fn(&SagaState) -> String,
) -> Result<Response, ApiError> {
    let outcome = admin
        .orchestrator
        .command(saga_id, input)
        .await
        .map_err(internal)?;
    match outcome {
        Commanded::Unknown => Err(ApiError::not_found(
            "saga_not_found",
            format!("no saga {saga_id}"),
        )),
        Commanded::Unchanged(state) => {
            let error = ApiError::new(StatusCode::CONFLICT, "saga_not_applicable", why_not(&state));
            let mut body = error.body();
            body["saga"] = saga_json(saga_id, &state);
            Ok((StatusCode::CONFLICT, Json(body)).into_response())
        }
        Commanded::Applied { events, state } => {
            admin.outbox_bell.ring();
            let decided: Vec<String> = events
                .iter()
                .map(|e| crate::aggregate::encode_event(e).0)
                .collect();
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({
                    "saga_id": saga_id,
                    "decided": decided,
                    "saga": saga_json(saga_id, &state),
                })),
            )
                .into_response())
        }
    }
}

fn saga_json(saga_id: Uuid, state: &SagaState) -> Value {
    let mut v = serde_json::to_value(state).expect("saga states serialize");
    v["saga_id"] = json!(saga_id);
    v["state"] = json!(state.status.map(|s| s.as_str()));
    v["current_step"] = json!(state.current_step_name());
    v["links"] = links(saga_id);
    v
}

fn internal(e: HandlerError) -> ApiError {
    match e.downcast::<sqlx::Error>() {
        Ok(e) => ApiError::from(*e),
        Err(e) => {
            tracing::error!(error = %e, "operator command failed");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(stream: &str, version: i64) -> TimelineRow {
        TimelineRow {
            stream_id: stream.to_owned(),
            stream_version: version,
            ..Default::default()
        }
    }

    #[test]
    fn each_stream_keeps_its_version_order_in_the_places_it_holds() {
        let mut rows = vec![
            row("saga-1", 1),
            row("inventory-A", 4),
            row("saga-1", 3), // its transaction started before version 2's
            row("order-9", 1),
            row("saga-1", 2),
        ];
        keep_stream_order(&mut rows);
        let order: Vec<(&str, i64)> = rows
            .iter()
            .map(|r| (r.stream_id.as_str(), r.stream_version))
            .collect();
        assert_eq!(
            order,
            [
                ("saga-1", 1),
                ("inventory-A", 4),
                ("saga-1", 2),
                ("order-9", 1),
                ("saga-1", 3),
            ]
        );
    }

    #[test]
    fn older_than_is_seconds_or_a_timestamp() {
        let now = Utc::now();
        assert_eq!(
            parse_older_than("90", now).unwrap(),
            now - chrono::Duration::seconds(90)
        );
        assert_eq!(
            parse_older_than("2024-05-01T12:00:00Z", now).unwrap(),
            "2024-05-01T12:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        for bad in ["-1", "yesterday", "12:00"] {
            assert_eq!(
                parse_older_than(bad, now).unwrap_err().code,
                "invalid_query"
            );
        }
        let id = Uuid::now_v7();
        let t = "2024-05-01T12:00:00.123456Z".parse().unwrap();
        assert_eq!(parse_cursor(&cursor(t, id)).unwrap(), (t, id));
    }
}
