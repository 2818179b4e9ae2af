//! Replaying a stream for debugging: the state of any stream as of any version, event by
//! event, read straight from the event store (never through the command bus's cache), with
//! every stored payload upcast to its current schema on the way.
//!
//! A stream's type is the prefix of its id before the first `-` (`trip-…` folds into the
//! aggregate registered as `trip`); the [`Registry`] knows every registered type.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::envelope::RecordedEvent;
use crate::fold::StreamFold;
use crate::registry::Registry;
use crate::store::{EventStore, StoreError};

/// The aggregate type a stream id names: its prefix before the first `-` (the whole id if it
/// has none).
pub fn stream_type(stream_id: &str) -> &str {
    stream_id.split_once('-').map_or(stream_id, |(t, _)| t)
}

/// Why a replay could not produce what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// No stream type is registered under the stream id's prefix.
    #[error("no aggregate type {aggregate_type:?} (stream ids are <type>-<id>; known: {known})")]
    UnknownType {
        /// The stream id's prefix before its first `-`.
        aggregate_type: String,
        /// The registered stream types, comma-separated.
        known: String,
    },
    /// The stream has no events: it does not exist.
    #[error("stream {stream_id:?} has no events")]
    EmptyStream {
        /// The stream asked for.
        stream_id: String,
    },
    /// The version asked for is past the stream's head.
    #[error("stream {stream_id:?} is at version {head}; it has no version {requested}")]
    BeyondHead {
        /// The stream asked for.
        stream_id: String,
        /// The version asked for.
        requested: i64,
        /// The stream's committed version.
        head: i64,
    },
    /// A version below 1 was asked for.
    #[error("at_version must be at least 1")]
    InvalidVersion,
    /// Reading the stream, or decoding one of its events, failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ReplayError {
    fn from(e: sqlx::Error) -> Self {
        ReplayError::Store(StoreError::Database(e))
    }
}

/// A stream's state as of one version.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StateAt {
    /// The stream replayed.
    pub stream_id: String,
    /// The stream's type: its id's prefix before the first `-`.
    pub aggregate_type: String,
    /// The version the state reflects: the fold of events `1..=version`.
    pub version: i64,
    /// The stream's committed version when it was read.
    pub head_version: i64,
    /// When event `version` was recorded.
    pub recorded_at: DateTime<Utc>,
    /// The folded state as JSON (the type's `Serialize` form): for reading, never stored.
    pub state: Value,
}

/// Replays `stream_id` from version 1 up to `at_version` (its head when `None`), calling
/// `visit` with each event and the state right after it, in version order. Returns the state
/// as of the last event. Reads pages straight from the store, so the result is the fold of
/// exactly the committed events `1..=version`, whatever any cache holds.
pub async fn replay(
    store: &EventStore,
    registry: &Registry,
    stream_id: &str,
    at_version: Option<i64>,
    mut visit: impl FnMut(&RecordedEvent, &dyn StreamFold),
) -> Result<StateAt, ReplayError> {
    const PAGE: i64 = 1000;
    let aggregate_type = stream_type(stream_id);
    let mut fold = registry
        .fold_for(aggregate_type)
        .ok_or_else(|| ReplayError::UnknownType {
            aggregate_type: aggregate_type.to_owned(),
            known: registry.stream_types().join(", "),
        })?;
    if at_version.is_some_and(|v| v < 1) {
        return Err(ReplayError::InvalidVersion);
    }
    let head = store.stream_version(stream_id).await?;
    if head == 0 {
        return Err(ReplayError::EmptyStream {
            stream_id: stream_id.to_owned(),
        });
    }
    let until = at_version.unwrap_or(head);
    if until > head {
        return Err(ReplayError::BeyondHead {
            stream_id: stream_id.to_owned(),
            requested: until,
            head,
        });
    }
    let mut version = 0;
    let mut recorded_at = None;
    while version < until {
        let page = store
            .read_stream(stream_id, version + 1, PAGE.min(until - version))
            .await?;
        if page.is_empty() {
            break;
        }
        for e in &page {
            fold.apply(e)?;
            visit(e, fold.as_ref());
            version = e.envelope.stream_version;
            recorded_at = Some(e.recorded_at);
        }
    }
    Ok(StateAt {
        stream_id: stream_id.to_owned(),
        aggregate_type: aggregate_type.to_owned(),
        version,
        head_version: head,
        recorded_at: recorded_at.expect("the stream has events up to its head"),
        state: fold.state(),
    })
}
