//! `GET /admin/console/sagas` (sagas, stuck ones first) and `GET /admin/console/sagas/{saga_id}`
//! (one saga: its path, timeline, data after each step, and the streams it touched).

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::path::{saga_path, PathNode};
use super::rows::{page, sagas_by_id, Filter};
use super::{saga_info, Console, SagaInfo};
use crate::http::sagas::{parse_older_than, parse_states};
use crate::http::{ApiError, ErrorBody, PathParams, QueryParams};
use crate::saga::read_model::{self, SagaRow, SagaView};
use crate::saga::saga_stream;
use crate::saga::state::{DeadlineKind, SagaEvent, SagaState, SagaStatus};
use crate::saga::timeline::{self, Timeline};
use crate::store::decode_envelope;

/// States of sagas that have not ended: listed first, least recently updated first.
const ACTIVE: [&str; 2] = ["running", "compensating"];
/// States of sagas that ended: listed after, most recently updated first.
const ENDED: [&str; 3] = ["failed", "compensated", "completed"];
const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 500;
/// Entries of the timeline a saga's page shows.
const TIMELINE: i64 = 1_000;
/// The most events of a saga's own stream its page folds.
const MAX_SAGA_EVENTS: i64 = 10_000;

/// The query of `GET /admin/console/sagas`. Every parameter is optional.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// Only sagas of this type.
    saga_type: Option<String>,
    /// One state or several, comma-separated.
    #[param(
        pattern = r"^(running|compensating|completed|compensated|failed)?( *, *(running|compensating|completed|compensated|failed))*$",
        example = "running,compensating"
    )]
    state: Option<String>,
    /// Only sagas that have not moved for at least this long: a number of seconds, or an
    /// RFC 3339 timestamp.
    #[param(
        pattern = r"^([0-9]{1,12}|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2}))$",
        example = "60"
    )]
    older_than: Option<String>,
    /// Only the sagas this id leads to (a saga id, a correlation id, or the id of the
    /// aggregate that started it), as `GET /admin/console/search` resolves it. One page.
    q: Option<String>,
    /// Sagas per page, 1 to 500 (50 by default).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// The `next_after` of the previous page.
    #[param(
        pattern = r"^[ae]\.[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?Z_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
        example = "a.2026-01-01T00:00:00.000000Z_0193a0c4-0000-7000-8000-000000000001"
    )]
    after: Option<String>,
}

/// A saga in the console's list.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsoleSaga {
    /// The saga's id.
    pub saga_id: Uuid,
    /// Its type.
    pub saga_type: String,
    /// `running`, `compensating`, `completed`, `compensated` or `failed`.
    pub state: String,
    /// The step it executes or compensates now.
    pub current_step: Option<String>,
    /// Why it compensates or failed: `{step, code, message}`.
    pub failure: Option<Value>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When its last event was recorded.
    pub updated_at: DateTime<Utc>,
    /// Seconds since `updated_at`: how long it has not moved.
    pub idle_seconds: i64,
    /// The version of its stream the row reflects.
    pub version: i64,
    /// Running or compensating: it has not ended.
    pub active: bool,
}

impl ConsoleSaga {
    pub(super) fn from_row(r: SagaRow, now: DateTime<Utc>) -> Self {
        ConsoleSaga {
            idle_seconds: (now - r.updated_at).num_seconds().max(0),
            active: ACTIVE.contains(&r.state.as_str()),
            saga_id: r.saga_id,
            saga_type: r.saga_type,
            state: r.state,
            current_step: r.current_step,
            failure: r.failure,
            started_at: r.started_at,
            updated_at: r.updated_at,
            version: r.version,
        }
    }
}

/// A page of the console's saga list: the sagas that have not ended first (least recently
/// updated first: the stuck ones), then those that ended (most recently updated first).
#[derive(Debug, Serialize, ToSchema)]
pub struct SagaList {
    /// The page, in the list's order.
    pub sagas: Vec<ConsoleSaga>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<String>,
}

fn cursor(active: bool, r: &SagaRow) -> String {
    format!(
        "{}.{}_{}",
        if active { "a" } else { "e" },
        r.updated_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        r.saga_id
    )
}

fn parse_cursor(v: &str) -> Result<(bool, DateTime<Utc>, Uuid), ApiError> {
    let bad = || {
        ApiError::bad_request(
            "invalid_query",
            "after must be a next_after of GET /admin/console/sagas",
        )
    };
    let (phase, rest) = v.split_once('.').ok_or_else(bad)?;
    let active = match phase {
        "a" => true,
        "e" => false,
        _ => return Err(bad()),
    };
    let (t, id) = rest.split_once('_').ok_or_else(bad)?;
    let t = DateTime::parse_from_rfc3339(t).map_err(|_| bad())?;
    let id = Uuid::parse_str(id).map_err(|_| bad())?;
    Ok((active, t.with_timezone(&Utc), id))
}

/// Sagas, the stuck ones first: those that have not ended (running, compensating), least
/// recently updated first, then those that ended, most recently updated first. Keyset-paged.
#[utoipa::path(
    get,
    path = "/admin/console/sagas",
    tag = "console",
    params(ListQuery),
    responses((status = 200, description = "a page of sagas", body = SagaList))
)]
pub(super) async fn console_sagas(
    State(console): State<Console>,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<SagaList>, ApiError> {
    let now = Utc::now();
    let states = parse_states(q.state.as_deref())?;
    let wanted = |s: &&str| {
        states
            .as_ref()
            .is_none_or(|w| w.iter().any(|x| x.as_str() == *s))
    };
    let active: Vec<&str> = ACTIVE.into_iter().filter(wanted).collect();
    let ended: Vec<&str> = ENDED.into_iter().filter(wanted).collect();
    let filter = Filter {
        saga_type: q.saga_type.filter(|s| !s.is_empty()),
        updated_at_or_before: q
            .older_than
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|v| parse_older_than(v, now))
            .transpose()?,
    };
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be between 1 and {MAX_PAGE}"),
        ));
    }
    let after = q
        .after
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(parse_cursor)
        .transpose()?;

    if let Some(query) = q.q.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        let ids = super::search::saga_ids(&console, query).await?;
        let mut rows: Vec<SagaRow> = sagas_by_id(&console.pool, &ids)
            .await?
            .into_iter()
            .filter(|r| active.contains(&r.state.as_str()) || ended.contains(&r.state.as_str()))
            .filter(|r| filter.saga_type.as_ref().is_none_or(|t| *t == r.saga_type))
            .filter(|r| {
                filter
                    .updated_at_or_before
                    .is_none_or(|c| r.updated_at <= c)
            })
            .collect();
        rows.sort_by_key(|r| (!ACTIVE.contains(&r.state.as_str()), r.updated_at));
        let sagas = rows
            .into_iter()
            .map(|r| ConsoleSaga::from_row(r, now))
            .collect();
        return Ok(Json(SagaList {
            sagas,
            next_after: None,
        }));
    }

    let mut rows: Vec<(bool, SagaRow)> = Vec::new();
    let in_ended = matches!(after, Some((false, _, _)));
    if !in_ended {
        let after = after.map(|(_, t, id)| (t, id));
        let found = page(&console.pool, &active, true, &filter, after, limit + 1).await?;
        rows.extend(found.into_iter().map(|r| (true, r)));
    }
    if (rows.len() as i64) <= limit {
        let after = after.filter(|a| !a.0).map(|(_, t, id)| (t, id));
        let left = limit + 1 - rows.len() as i64;
        let found = page(&console.pool, &ended, false, &filter, after, left).await?;
        rows.extend(found.into_iter().map(|r| (false, r)));
    }
    let next_after = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|(active, r)| cursor(*active, r))
    } else {
        None
    };
    let sagas = rows
        .into_iter()
        .map(|(_, r)| ConsoleSaga::from_row(r, now))
        .collect();
    Ok(Json(SagaList { sagas, next_after }))
}

/// The saga data as it was after one point of the saga: its start, or a step that succeeded.
#[derive(Debug, Serialize, ToSchema)]
pub struct DataAfter {
    /// `start`, or the step's name.
    pub after: String,
    /// The version of the saga's stream that recorded it.
    pub version: i64,
    /// When that version was recorded.
    pub at: DateTime<Utc>,
    /// Whether this point changed the data (a step's replies may leave it as it was).
    pub changed: bool,
    /// The whole data after this point.
    pub data: Value,
}

/// What an operator can do to the saga now.
#[derive(Debug, Serialize, ToSchema)]
pub struct SagaActions {
    /// `POST /admin/sagas/{saga_id}/retry-step` applies: the saga failed, or its step timed
    /// out and waits for its next attempt.
    pub retry_step: bool,
    /// `POST /admin/sagas/{saga_id}/abort` applies: the saga is running.
    pub abort: bool,
}

/// A message of the saga's request that a consumer parked: often why a saga is stuck.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct SagaDeadLetter {
    /// Its id among the dead letters.
    pub id: i64,
    /// The consumer group that parked it.
    pub consumer: String,
    /// The stream it concerns (a saga command's target).
    pub stream_id: Option<String>,
    /// The event's type, or for a saga command, the command's.
    pub message: Option<String>,
    /// The handler's last error.
    pub error: String,
    /// Failed attempts, over every time it was parked.
    pub attempts: i32,
    /// `parked`, `retried` or `discarded`.
    pub status: String,
    /// When it last failed.
    pub last_failed_at: DateTime<Utc>,
}

/// The most dead letters a saga's page lists.
const MAX_DEAD_LETTERS: i64 = 50;

/// The dead letters of correlation id `correlation_id`, oldest first (an index scan: migration
/// 0011).
async fn dead_letters_of(
    pool: &PgPool,
    correlation_id: Uuid,
) -> Result<Vec<SagaDeadLetter>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, consumer_group AS consumer, envelope->>'stream_id' AS stream_id,
                COALESCE(envelope->'payload'->'command'->>'command', envelope->>'event_type') AS message,
                error, attempts, status, last_failed_at
         FROM dead_letters WHERE envelope->'metadata'->>'correlation_id' = $1
         ORDER BY id LIMIT $2",
    )
    .bind(correlation_id.to_string())
    .bind(MAX_DEAD_LETTERS)
    .fetch_all(pool)
    .await
}

/// One saga, everything the console shows of it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SagaDetail {
    /// The `sagas` read model's row.
    pub saga: SagaView,
    /// Its registered definition; absent if this application does not register the type.
    pub definition: Option<SagaInfo>,
    /// Forward steps, the failure, the compensations in the order they ran, the final command,
    /// the end.
    pub path: Vec<PathNode>,
    /// The saga data after its start and after each step that succeeded.
    pub data: Vec<DataAfter>,
    /// Every stream it touched: its own first, then in the order they appear in its timeline.
    pub streams: Vec<String>,
    /// Its events and its participants' events, in order (at most 1000).
    pub timeline: Timeline,
    /// Messages of the saga's request that a consumer parked (at most 50).
    pub dead_letters: Vec<SagaDeadLetter>,
    /// What an operator can do to it now.
    pub actions: SagaActions,
}

/// A saga: its path, timeline, data after each step and streams.
#[utoipa::path(
    get,
    path = "/admin/console/sagas/{saga_id}",
    tag = "console",
    params(("saga_id" = Uuid, Path, description = "The saga's id")),
    responses(
        (status = 200, description = "the saga", body = SagaDetail),
        (status = 404, description = "`saga_not_found`", body = ErrorBody),
    )
)]
pub(super) async fn console_saga(
    State(console): State<Console>,
    PathParams(saga_id): PathParams<Uuid>,
) -> Result<Json<SagaDetail>, ApiError> {
    let not_found = || ApiError::not_found("saga_not_found", format!("no saga {saga_id}"));
    let saga = read_model::find(&console.pool, saga_id)
        .await?
        .ok_or_else(not_found)?;
    let timeline = timeline::timeline(&console.pool, saga_id, TIMELINE)
        .await?
        .ok_or_else(not_found)?;
    let stream = saga_stream(saga_id);
    let recorded = console
        .store
        .read_stream(&stream, 1, MAX_SAGA_EVENTS)
        .await?;
    let mut events = Vec::with_capacity(recorded.len());
    for r in &recorded {
        let event: SagaEvent = decode_envelope(&r.envelope).map_err(ApiError::from)?;
        for event in event.flatten() {
            events.push((event, r.recorded_at, r.envelope.stream_version));
        }
    }
    let path = saga_path(events.iter().map(|(e, at, _)| (e, *at)));
    let mut state = SagaState::default();
    let mut data: Vec<DataAfter> = Vec::new();
    for (event, at, version) in &events {
        state.apply(event, *at);
        let (after, changed) = match event {
            SagaEvent::SagaStarted { .. } => ("start".to_owned(), true),
            SagaEvent::StepSucceeded { name, data, .. } => (name.clone(), data.is_some()),
            _ => continue,
        };
        data.push(DataAfter {
            after,
            version: *version,
            at: *at,
            changed,
            data: state.data.clone(),
        });
    }
    let actions = SagaActions {
        retry_step: match state.status {
            Some(SagaStatus::Failed) => true,
            Some(s) if !s.is_terminal() => {
                state.current.is_some()
                    && state
                        .deadline
                        .is_some_and(|d| d.kind == DeadlineKind::Retry)
            }
            _ => false,
        },
        abort: state.status == Some(SagaStatus::Running),
    };
    let mut streams = vec![stream];
    let touched = timeline.entries.iter().flat_map(|e| {
        std::iter::once(e.stream_id.clone()).chain(e.commands.iter().map(|c| c.target.clone()))
    });
    for s in touched {
        if !streams.contains(&s) {
            streams.push(s);
        }
    }
    let dead_letters = dead_letters_of(&console.pool, saga.correlation_id).await?;
    let definition = console
        .sagas
        .iter()
        .find(|s| s.name == saga.saga_type)
        .map(|s| saga_info(s));
    Ok(Json(SagaDetail {
        saga,
        definition,
        path,
        data,
        streams,
        timeline,
        dead_letters,
        actions,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_names_its_phase() {
        let row = SagaRow {
            saga_id: Uuid::now_v7(),
            saga_type: "trip".into(),
            state: "running".into(),
            current_step: None,
            failure: None,
            started_at: Utc::now(),
            updated_at: "2024-05-01T12:00:00.123456Z".parse().unwrap(),
            version: 3,
        };
        for active in [true, false] {
            assert_eq!(
                parse_cursor(&cursor(active, &row)).unwrap(),
                (active, row.updated_at, row.saga_id)
            );
        }
        for bad in [
            "",
            "x.2024-05-01T12:00:00Z_1",
            "a.yesterday_1",
            "a.2024-05-01T12:00:00Z",
        ] {
            assert_eq!(parse_cursor(bad).unwrap_err().code, "invalid_query");
        }
    }
}
