//! `GET /admin/console/search?q=`: where an id someone pasted leads, for any application.
//!
//! In this order, each a few index lookups:
//! 1. a saga id (`sagas`) → that saga;
//! 2. a correlation id → the sagas it started (their streams' events carry it: the
//!    `events_correlation_id` index);
//! 3. a stream id with events → that stream;
//! 4. the id of an aggregate whose events start a registered saga: for each saga started by
//!    type `T`, the saga `saga_id(saga, "T-<id>")` → that saga;
//! 5. for each registered aggregate type `T`, the stream `T-<id>` with events → that stream.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::rows::sagas_by_id;
use super::Console;
use crate::http::{ApiError, QueryParams};
use crate::saga::{saga_id, SAGA_STREAM_TYPE};

/// The longest query searched.
const MAX_QUERY: usize = 512;
/// The most sagas one correlation id leads to that a search lists.
const MAX_CORRELATED: i64 = 20;

/// The query of `GET /admin/console/search`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct SearchQuery {
    /// An id: a saga id, a correlation id, a stream id (`<type>-<id>`), or the id of an
    /// aggregate (a trip's id, say). Without one, nothing is found.
    #[param(example = "LIS-1")]
    q: Option<String>,
}

/// One place an id leads to.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SearchMatch {
    /// `saga` or `stream`.
    pub kind: &'static str,
    /// How the id matched, best first: `saga_id`, `correlation_id`, `stream_id`,
    /// `started_by` (the aggregate that started the saga), `aggregate_id`.
    pub how: &'static str,
    /// The saga's id or the stream's id.
    pub id: String,
    /// One line for a human: the saga's type and state, or the stream's version.
    pub label: String,
    /// The console's page of it.
    pub href: String,
}

/// Where an id leads: every match, the best first.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResult {
    /// The query, trimmed.
    pub query: String,
    /// Every place it leads to, the best first; none for an unknown id.
    pub matches: Vec<SearchMatch>,
}

fn saga_match(how: &'static str, saga_id: Uuid, saga_type: &str, state: &str) -> SearchMatch {
    SearchMatch {
        kind: "saga",
        how,
        id: saga_id.to_string(),
        label: format!("{saga_type} saga, {state}"),
        href: format!("/console/sagas/{saga_id}"),
    }
}

fn stream_match(how: &'static str, stream_id: &str, version: i64) -> SearchMatch {
    SearchMatch {
        kind: "stream",
        how,
        id: stream_id.to_owned(),
        label: format!("stream at version {version}"),
        href: format!("/console/streams/{}", encode_segment(stream_id)),
    }
}

/// Percent-encodes everything but unreserved characters, for one path segment.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The head versions of those of `streams` that have events.
async fn existing_streams(
    pool: &PgPool,
    streams: &[String],
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    if streams.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(
        "SELECT w.stream_id, h.version FROM UNNEST($1::text[]) WITH ORDINALITY AS w(stream_id, n)
         CROSS JOIN LATERAL (
             SELECT max(stream_version) AS version FROM events e WHERE e.stream_id = w.stream_id
         ) h
         WHERE h.version IS NOT NULL
         ORDER BY w.n",
    )
    .bind(streams)
    .fetch_all(pool)
    .await
}

/// The sagas whose own events carry correlation id `id`.
async fn correlated_sagas(pool: &PgPool, id: Uuid) -> Result<Vec<Uuid>, sqlx::Error> {
    let streams: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT stream_id FROM events
         WHERE metadata->>'correlation_id' = $1 AND stream_id LIKE 'saga-%'
         LIMIT $2",
    )
    .bind(id.to_string())
    .bind(MAX_CORRELATED)
    .fetch_all(pool)
    .await?;
    Ok(streams
        .iter()
        .filter_map(|s| s.strip_prefix("saga-")?.parse().ok())
        .collect())
}

/// Every match of `q`, best first, each place once.
pub(super) async fn resolve(console: &Console, q: &str) -> Result<Vec<SearchMatch>, ApiError> {
    let q = q.trim();
    if q.is_empty() {
        return Ok(Vec::new());
    }
    if q.len() > MAX_QUERY {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("q is at most {MAX_QUERY} bytes"),
        ));
    }
    let pool = &console.pool;
    let mut matches = Vec::new();
    if let Ok(id) = Uuid::parse_str(q) {
        for r in sagas_by_id(pool, &[id]).await? {
            matches.push(saga_match("saga_id", r.saga_id, &r.saga_type, &r.state));
        }
        let correlated = correlated_sagas(pool, id).await?;
        for r in sagas_by_id(pool, &correlated).await? {
            matches.push(saga_match(
                "correlation_id",
                r.saga_id,
                &r.saga_type,
                &r.state,
            ));
        }
    }
    for (stream, version) in existing_streams(pool, &[q.to_owned()]).await? {
        matches.push(stream_match("stream_id", &stream, version));
    }
    let started: Vec<Uuid> = console
        .sagas
        .iter()
        .filter_map(|s| Some(saga_id(s.name, &format!("{}-{q}", s.started_by?))))
        .collect();
    for r in sagas_by_id(pool, &started).await? {
        matches.push(saga_match("started_by", r.saga_id, &r.saga_type, &r.state));
    }
    let typed: Vec<String> = console
        .aggregate_types
        .iter()
        .chain(std::iter::once(&SAGA_STREAM_TYPE))
        .map(|t| format!("{t}-{q}"))
        .collect();
    for (stream, version) in existing_streams(pool, &typed).await? {
        matches.push(stream_match("aggregate_id", &stream, version));
    }
    let mut seen = std::collections::HashSet::new();
    matches.retain(|m| seen.insert((m.kind, m.id.clone())));
    Ok(matches)
}

/// The ids of the sagas `q` leads to.
pub(super) async fn saga_ids(console: &Console, q: &str) -> Result<Vec<Uuid>, ApiError> {
    Ok(resolve(console, q)
        .await?
        .into_iter()
        .filter(|m| m.kind == "saga")
        .filter_map(|m| m.id.parse().ok())
        .collect())
}

/// Where an id leads: a saga (by its id, a correlation id, or the id of the aggregate that
/// started it) or a stream (by its id, or an aggregate's id). Every match, the best first.
#[utoipa::path(
    get,
    path = "/admin/console/search",
    tag = "console",
    params(SearchQuery),
    responses((status = 200, description = "every match, the best first; none for an unknown id", body = SearchResult))
)]
pub(super) async fn console_search(
    State(console): State<Console>,
    QueryParams(q): QueryParams<SearchQuery>,
) -> Result<Json<SearchResult>, ApiError> {
    let query = q.q.unwrap_or_default().trim().to_owned();
    let matches = resolve(&console, &query).await?;
    Ok(Json(SearchResult { query, matches }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_id_is_one_path_segment() {
        assert_eq!(encode_segment("trip-0193a0c4"), "trip-0193a0c4");
        assert_eq!(encode_segment("a b/c?d"), "a%20b%2Fc%3Fd");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }
}
