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
//! [`admin_router`] unprotected: the application puts them behind the admin token
//! ([`super::admin::protect`]).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::admin::{audited, AdminAction};
use super::{ApiError, CommandRequest, ErrorBody, ErrorDetail, PathParams, QueryParams};
use crate::consumer::HandlerError;
use crate::doorbell::Doorbell;
use crate::saga::read_model::{self, SagaFilter, SagaView, STATES};
use crate::saga::timeline::{self, Timeline, MAX_TIMELINE};
use crate::saga::{Commanded, DeadlineKind, Orchestrator, SagaInput, SagaState};

/// The public saga routes: `GET /sagas`, `GET /sagas/{saga_id}`,
/// `GET /sagas/{saga_id}/timeline`.
pub fn router(pool: PgPool) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list_sagas))
        .routes(routes!(get_saga))
        .routes(routes!(get_timeline))
        .with_state(pool)
}

fn saga_not_found(saga_id: Uuid) -> ApiError {
    ApiError::not_found("saga_not_found", format!("no saga {saga_id}"))
}

/// A saga from the `sagas` read model, with `ETag: "saga-<id>@<version>"`.
#[utoipa::path(
    get,
    path = "/sagas/{saga_id}",
    tag = "sagas",
    params(
        ("saga_id" = Uuid, Path, description = "The saga's id"),
        ("if-none-match" = Option<String>, Header, description = "A tag of an earlier answer: 304 if the saga has not moved"),
    ),
    responses(
        (status = 200, description = "the saga", body = SagaView),
        (status = 304, description = "the saga has not moved since the tag"),
        (status = 404, description = "`saga_not_found`", body = ErrorBody),
    )
)]
async fn get_saga(
    State(pool): State<PgPool>,
    PathParams(saga_id): PathParams<Uuid>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let view: SagaView = read_model::find(&pool, saga_id)
        .await?
        .ok_or_else(|| saga_not_found(saga_id))?;
    let etag = format!("\"saga-{}@{}\"", view.saga_id, view.version);
    let etag_value = HeaderValue::from_str(&etag).expect("ascii");
    if headers.get(header::IF_NONE_MATCH) == Some(&etag_value) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response());
    }
    Ok(([(header::ETAG, etag_value)], Json(view)).into_response())
}

/// The most sagas one page of `GET /sagas` holds.
pub const MAX_SAGA_PAGE: i64 = 500;
const DEFAULT_SAGA_PAGE: i64 = 50;

/// The query of `GET /sagas`. Every parameter is optional.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// One state or several, comma-separated (`running,compensating`): `running`,
    /// `compensating`, `completed`, `compensated`, `failed`.
    #[param(
        pattern = r"^(running|compensating|completed|compensated|failed)?( *, *(running|compensating|completed|compensated|failed))*$",
        example = "running,compensating"
    )]
    state: Option<String>,
    /// Only sagas that have not moved (no event) for at least this long: a number of seconds,
    /// or an RFC 3339 timestamp (sagas last updated at or before it).
    #[param(
        pattern = r"^([0-9]{1,12}|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2}))$",
        example = "60"
    )]
    older_than: Option<String>,
    /// Only sagas of this type.
    saga_type: Option<String>,
    /// Sagas per page, 1 to 500 (50 by default).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// The `next_after` of the previous page.
    #[param(
        pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?Z_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
        example = "2026-01-01T00:00:00.000000Z_0193a0c4-0000-7000-8000-000000000001"
    )]
    after: Option<String>,
}

/// One saga in a page of `GET /sagas`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SagaSummary {
    /// The saga's id.
    pub saga_id: Uuid,
    /// The saga type's name.
    pub saga_type: String,
    /// `running | compensating | completed | compensated | failed`
    pub state: String,
    /// The step being run or compensated; absent between steps and once the saga ended.
    pub current_step: Option<String>,
    /// Why the saga stopped as `failed`, or else why it compensates: `{step, code, message}`.
    /// Absent while nothing went wrong.
    pub failure: Option<Value>,
    /// When the saga started.
    pub started_at: DateTime<Utc>,
    /// When its last event was recorded.
    pub updated_at: DateTime<Utc>,
    /// Seconds since `updated_at`: how long it has not moved.
    pub idle_seconds: i64,
    /// The version of the saga's stream the row reflects.
    pub version: i64,
    /// `{"saga": "/sagas/<id>", "timeline": "/sagas/<id>/timeline"}`
    pub links: Value,
}

/// A page of `GET /sagas`, least recently updated first.
#[derive(Debug, Serialize, ToSchema)]
pub struct SagaPage {
    /// The page's sagas.
    pub sagas: Vec<SagaSummary>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<String>,
}

fn links(saga_id: Uuid) -> Value {
    json!({
        "saga": format!("/sagas/{saga_id}"),
        "timeline": format!("/sagas/{saga_id}/timeline"),
    })
}

/// A comma-separated list of saga states (`running,compensating`); `None` for no list or an
/// empty one; 400 `invalid_query` naming an unknown state.
pub(crate) fn parse_states(list: Option<&str>) -> Result<Option<Vec<String>>, ApiError> {
    let Some(list) = list.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let states: Vec<String> = list.split(',').map(|s| s.trim().to_owned()).collect();
    if let Some(bad) = states.iter().find(|s| !STATES.contains(&s.as_str())) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("unknown saga state {bad:?}; one of {}", STATES.join(", ")),
        ));
    }
    Ok(Some(states))
}

/// `older_than`: a number of seconds before `now`, or an RFC 3339 timestamp; 400
/// `invalid_query` otherwise.
pub(crate) fn parse_older_than(v: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
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

/// Sagas by state and age, least recently updated first, keyset-paged: stuck sagas first.
#[utoipa::path(
    get,
    path = "/sagas",
    tag = "sagas",
    params(ListQuery),
    responses((status = 200, description = "a page of sagas", body = SagaPage))
)]
async fn list_sagas(
    State(pool): State<PgPool>,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<SagaPage>, ApiError> {
    let now = Utc::now();
    let states = parse_states(q.state.as_deref())?;
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
    let filter = SagaFilter {
        states,
        updated_at_or_before: cutoff,
        saga_type: q.saga_type.filter(|s| !s.is_empty()),
        after,
    };
    let rows = read_model::list(&pool, &filter, limit).await?;
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

const DEFAULT_TIMELINE: i64 = 1_000;

/// The query of `GET /sagas/{saga_id}/timeline`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct TimelineQuery {
    /// Entries at most, 1 to 10000 (1000 by default).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<i64>,
}

/// The saga's events and its participants' events, in order, each described.
#[utoipa::path(
    get,
    path = "/sagas/{saga_id}/timeline",
    tag = "sagas",
    params(("saga_id" = Uuid, Path, description = "The saga's id"), TimelineQuery),
    responses(
        (status = 200, description = "the timeline", body = Timeline),
        (status = 404, description = "`saga_not_found`", body = ErrorBody),
    )
)]
async fn get_timeline(
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
    timeline::timeline(&pool, saga_id, limit)
        .await?
        .map(Json)
        .ok_or_else(|| saga_not_found(saga_id))
}

#[derive(Clone)]
struct AdminState {
    orchestrator: Arc<Orchestrator>,
    outbox_bell: Doorbell,
}

/// The saga admin routes (`POST /admin/sagas/{saga_id}/retry-step`,
/// `POST /admin/sagas/{saga_id}/abort`), to be wrapped with
/// [`super::admin::protect`]. Each runs one [`SagaInput`] through
/// [`Orchestrator::command`]: decided on the saga's committed state under its lock, so it
/// is serialized with the replies and deadlines of that saga, and written (events, commands,
/// deadline, read model) in one transaction. 202 with the events decided and the saga's new
/// state; 404 for an unknown saga; 409 when the input does not apply to the saga as it is.
pub fn admin_router(orchestrator: Arc<Orchestrator>, outbox_bell: Doorbell) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(retry_step))
        .routes(routes!(abort))
        .with_state(AdminState {
            orchestrator,
            outbox_bell,
        })
}

/// Body of `POST /admin/sagas/{saga_id}/abort`; the body is optional.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AbortBody {
    /// Why; recorded as the saga's failure.
    #[serde(default)]
    pub reason: Option<String>,
}

/// What an operator's input decided.
#[derive(Debug, Serialize, ToSchema)]
pub struct SagaCommanded {
    /// The saga the input was run on.
    pub saga_id: Uuid,
    /// The types of the saga events it appended, in order.
    pub decided: Vec<String>,
    /// The saga's state after them.
    pub saga: Value,
}

/// An operator's input that does not apply to the saga as it is.
#[derive(Debug, Serialize, ToSchema)]
pub struct SagaNotApplicable {
    /// `saga_not_applicable`, and why.
    pub error: ErrorDetail,
    /// The saga's state.
    pub saga: Value,
}

/// Re-drives a failed saga, or a step that timed out, now.
#[utoipa::path(
    post,
    path = "/admin/sagas/{saga_id}/retry-step",
    tag = "admin",
    params(("saga_id" = Uuid, Path, description = "The saga's id")),
    responses(
        (status = 202, description = "decided and written", body = SagaCommanded),
        (status = 404, description = "`saga_not_found`", body = ErrorBody),
        (status = 409, description = "`saga_not_applicable`: nothing waits to be retried", body = SagaNotApplicable),
    )
)]
async fn retry_step(
    State(admin): State<AdminState>,
    PathParams(saga_id): PathParams<Uuid>,
) -> Response {
    let result = run_admin(&admin, saga_id, SagaInput::RetryStep, |state| {
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
    .await;
    audited(AdminAction::SagaRetryStep, saga_id, result)
}

/// Compensates the completed steps of a running saga and ends it.
#[utoipa::path(
    post,
    path = "/admin/sagas/{saga_id}/abort",
    tag = "admin",
    params(("saga_id" = Uuid, Path, description = "The saga's id")),
    request_body(content = Option<AbortBody>, description = "optional: why"),
    responses(
        (status = 202, description = "decided and written", body = SagaCommanded),
        (status = 404, description = "`saga_not_found`", body = ErrorBody),
        (status = 409, description = "`saga_not_applicable`: the saga is not running", body = SagaNotApplicable),
    )
)]
async fn abort(
    State(admin): State<AdminState>,
    PathParams(saga_id): PathParams<Uuid>,
    request: CommandRequest<Option<AbortBody>>,
) -> Response {
    let reason = request
        .body
        .and_then(|b| b.reason)
        .unwrap_or_else(|| "aborted by an operator".to_owned());
    let input = SagaInput::Abort {
        reason,
        by_operator: true,
    };
    let result = run_admin(&admin, saga_id, input, |state| {
        format!(
            "the saga is {}; only a running saga can be aborted",
            state.status.map_or("unknown", |s| s.as_str())
        )
    })
    .await;
    audited(AdminAction::SagaAbort, saga_id, result)
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
            let body = SagaNotApplicable {
                error: ErrorDetail {
                    code: "saga_not_applicable".to_owned(),
                    message: why_not(&state),
                },
                saga: saga_json(saga_id, &state),
            };
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
                Json(SagaCommanded {
                    saga_id,
                    decided,
                    saga: saga_json(saga_id, &state),
                }),
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
