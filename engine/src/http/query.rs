//! What every query route shares: its state, and how a response says how fresh it is.
//!
//! - A single row is answered with `ETag: "<stream_id>@<version>"`, the stream version the row
//!   reflects, and `Cache-Control: no-cache`. A request whose `If-None-Match` names that tag
//!   gets `304 Not Modified` without a body. A client that just wrote version `n` of a stream
//!   (the command's `202` says which) knows the read model caught up when the tag's version
//!   reaches `n`.
//! - A list is answered with `X-Projection-Position`: the sum, over the partitions of the
//!   projection's topic, of the consumer group's committed offsets, that is the number of
//!   messages the projection has consumed. It only grows; `GET /admin/projections` shows it
//!   beside the transport's end offsets (the lag).

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use sqlx::PgPool;

use super::ApiError;
use crate::projection::{group_of, rebuild};
use crate::transport::TopicLayout;

/// The header that carries a list's projection position.
pub const POSITION_HEADER: &str = "x-projection-position";

/// State of the query routes.
#[derive(Clone)]
pub struct QueryState {
    /// The pool the read models are read from.
    pub pool: PgPool,
    /// The topic layout, which names the topics whose offsets make a list's position.
    pub layout: TopicLayout,
}

impl QueryState {
    /// The consumed position of `projection` on its logical `topic`: the sum of its group's
    /// committed offsets.
    pub async fn position(&self, projection: &str, topic: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT COALESCE(sum(next_offset), 0)::int8 FROM consumer_offsets
             WHERE consumer_group = $1 AND topic = $2",
        )
        .bind(group_of(projection))
        .bind(self.layout.topic(topic))
        .fetch_one(&self.pool)
        .await
    }

    /// A 404 for an id the read model does not hold. While the projection is being rebuilt the
    /// row may only be missing for now, and the message says so.
    pub async fn not_found(
        &self,
        projection: &str,
        code: &'static str,
        message: String,
    ) -> ApiError {
        match rebuild::is_rebuilding(&self.pool, projection).await {
            Ok(true) => ApiError::not_found(
                code,
                format!("{message} (the {projection} read model is being rebuilt; retry shortly)"),
            ),
            _ => ApiError::not_found(code, message),
        }
    }
}

/// The entity tag of a row: its stream and the version it reflects.
pub fn etag(stream_id: &str, version: i64) -> String {
    format!("\"{stream_id}@{version}\"")
}

/// Answers one row: `304` if `If-None-Match` names its tag, else `200` with the body.
pub fn single<T: Serialize>(
    headers: &HeaderMap,
    stream_id: &str,
    version: i64,
    body: &T,
) -> Response {
    let tag = etag(stream_id, version);
    let mut response = if matches_tag(headers, &tag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Json(body).into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&tag) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Answers a list with its projection position.
pub fn list<T: Serialize>(position: i64, body: &T) -> Response {
    let mut response = Json(body).into_response();
    response.headers_mut().insert(
        HeaderName::from_static(POSITION_HEADER),
        HeaderValue::from(position),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Whether `If-None-Match` (a list of tags, possibly weak, or `*`) names `tag`.
fn matches_tag(headers: &HeaderMap, tag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn if_none_match_names_the_tag_strongly_weakly_in_a_list_or_by_star() {
        let tag = etag("trip-1", 3);
        assert_eq!(tag, "\"trip-1@3\"");
        assert!(matches_tag(&with("\"trip-1@3\""), &tag));
        assert!(matches_tag(&with("W/\"trip-1@3\""), &tag));
        assert!(matches_tag(&with("\"x@1\", \"trip-1@3\""), &tag));
        assert!(matches_tag(&with("*"), &tag));
        assert!(!matches_tag(&with("\"trip-1@2\""), &tag));
        assert!(!matches_tag(&with("trip-1@3"), &tag));
        assert!(!matches_tag(&HeaderMap::new(), &tag));
    }
}
