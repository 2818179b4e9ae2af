//! Replaying a stream for debugging: the state of any stream as of any version, event by
//! event, read straight from the event store (never through the command bus's cache), with
//! every stored payload upcast to its current schema on the way.
//!
//! A stream's kind is the prefix of its id before the first `-`: `order-…`, `inventory-…`,
//! `account-…` fold into the aggregate registered under that type, `saga-…` into
//! [`SagaState`].

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::aggregate::{Aggregate, DomainEvent};
use crate::command::{decode, decode_envelope};
use crate::envelope::RecordedEvent;
use crate::http::CommandRegistry;
use crate::saga::state::{SagaEvent, SagaState};
use crate::store::{EventStore, StoreError};

/// The stream-id prefix of saga streams.
pub const SAGA_STREAM_TYPE: &str = "saga";

/// A fold over one stream's events with its type erased.
pub trait StreamFold: Send {
    /// Evolves the state by one stored event (upcast to the current schema first).
    fn apply(&mut self, event: &RecordedEvent) -> Result<(), StoreError>;
    /// The state so far, as JSON.
    fn state(&self) -> Value;
    /// The schema version new events of `event_type` are written at.
    fn current_schema_version(&self, event_type: &str) -> i32;
}

/// Folds the events of aggregate type `A`.
pub struct AggregateFold<A: Aggregate>(A);

impl<A: Aggregate> Default for AggregateFold<A> {
    fn default() -> Self {
        AggregateFold(A::default())
    }
}

impl<A: Aggregate> StreamFold for AggregateFold<A> {
    fn apply(&mut self, event: &RecordedEvent) -> Result<(), StoreError> {
        self.0.apply(&decode::<A>(event)?);
        Ok(())
    }

    fn state(&self) -> Value {
        serde_json::to_value(&self.0).expect("aggregate states serialize")
    }

    fn current_schema_version(&self, event_type: &str) -> i32 {
        A::Event::schema_version(event_type)
    }
}

/// Folds a saga's own stream (`saga-<id>`).
#[derive(Default)]
pub struct SagaFold(SagaState);

impl StreamFold for SagaFold {
    fn apply(&mut self, event: &RecordedEvent) -> Result<(), StoreError> {
        self.0.apply(
            &decode_envelope::<SagaEvent>(&event.envelope)?,
            event.recorded_at,
        );
        self.0.version = event.envelope.stream_version;
        Ok(())
    }

    fn state(&self) -> Value {
        serde_json::to_value(&self.0).expect("saga states serialize")
    }

    fn current_schema_version(&self, event_type: &str) -> i32 {
        SagaEvent::schema_version(event_type)
    }
}

/// The aggregate type a stream id names: its prefix before the first `-` (the whole id if it
/// has none).
pub fn stream_type(stream_id: &str) -> &str {
    stream_id.split_once('-').map_or(stream_id, |(t, _)| t)
}

/// A fresh fold for streams of `aggregate_type`, if it is a registered aggregate or `saga`.
pub fn fold_for(registry: &CommandRegistry, aggregate_type: &str) -> Option<Box<dyn StreamFold>> {
    if aggregate_type == SAGA_STREAM_TYPE {
        return Some(Box::new(SagaFold::default()));
    }
    registry.by_type(aggregate_type).map(|r| r.fold())
}

/// Why a replay could not produce what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no aggregate type {aggregate_type:?} (stream ids are <type>-<id>; known: {known})")]
    UnknownType {
        aggregate_type: String,
        known: String,
    },
    #[error("stream {stream_id:?} has no events")]
    EmptyStream { stream_id: String },
    #[error("stream {stream_id:?} is at version {head}; it has no version {requested}")]
    BeyondHead {
        stream_id: String,
        requested: i64,
        head: i64,
    },
    #[error("at_version must be at least 1")]
    InvalidVersion,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ReplayError {
    fn from(e: sqlx::Error) -> Self {
        ReplayError::Store(StoreError::Database(e))
    }
}

/// A stream's state as of one version.
#[derive(Debug, Clone, Serialize)]
pub struct StateAt {
    pub stream_id: String,
    pub aggregate_type: String,
    /// The version the state reflects: the fold of events `1..=version`.
    pub version: i64,
    /// The stream's committed version when it was read.
    pub head_version: i64,
    /// When event `version` was recorded.
    pub recorded_at: DateTime<Utc>,
    pub state: Value,
}

/// Replays `stream_id` from version 1 up to `at_version` (its head when `None`), calling
/// `visit` with each event and the state right after it, in version order. Returns the state
/// as of the last event. Reads pages straight from the store, so the result is the fold of
/// exactly the committed events `1..=version`, whatever any cache holds.
pub async fn replay(
    store: &EventStore,
    registry: &CommandRegistry,
    stream_id: &str,
    at_version: Option<i64>,
    mut visit: impl FnMut(&RecordedEvent, &dyn StreamFold),
) -> Result<StateAt, ReplayError> {
    const PAGE: i64 = 1000;
    let aggregate_type = stream_type(stream_id);
    let mut fold = fold_for(registry, aggregate_type).ok_or_else(|| {
        let mut known = registry.types();
        known.push(SAGA_STREAM_TYPE);
        known.sort_unstable();
        ReplayError::UnknownType {
            aggregate_type: aggregate_type.to_owned(),
            known: known.join(", "),
        }
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
