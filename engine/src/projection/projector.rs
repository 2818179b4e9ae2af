//! The projector abstraction and its live runner on the consumer runtime.
//!
//! A [`Projector`] keeps one read-model row per stream of one aggregate type. Every row carries
//! the stream version it reflects, and the one rule every writer follows is:
//!
//! > a row at version `v` is the fold of its stream's events `1..=v`.
//!
//! From it follow the guarantees of both writers, the live [`ProjectorHandler`] and the
//! [rebuild](super::rebuild):
//! - **Idempotent by `(stream_id, stream_version)`.** An event at or below a row's version is
//!   already reflected and skipped: redelivery, a relay that published twice, or a rebuild that
//!   got there first change nothing.
//! - **Self-healing.** A delivered event above `version + 1` (the row was emptied by a rebuild,
//!   or is missing) makes the projector read the missing events from the `events` table in the
//!   same transaction and fold them in order. The event store is the truth; deliveries only say
//!   which streams moved and how far.
//! - **Never backwards.** Rows are written with upserts guarded by `version`, so when two
//!   writers race (the live consumer and a rebuild), the one that folded further wins, and both
//!   folds are correct. Rows are always written in stream-id order, so racing writers lock rows
//!   in the same order and cannot deadlock.
//! - **Exactly-once effects.** The live runner writes rows in the consumer's transaction, with
//!   its offset.
//!
//! Batching: one delivery batch costs three statements whatever its size (load the rows, read
//! the missing events, upsert the changed rows).

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use crate::aggregate::{decode_event_at, DomainEvent};
use crate::consumer::{Handler, HandlerError};
use crate::transport::Delivery;

/// An event as a projector reads it from the `events` table.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// The event's position in the whole store.
    pub global_position: i64,
    /// The stream it belongs to: the row it changes.
    pub stream_id: String,
    /// Its version in the stream: the version the row is at once it is folded.
    pub stream_version: i64,
    /// Its type: the event enum's `snake_case` tag.
    pub event_type: String,
    /// The schema version of `payload`; [`StoredEvent::decode`] upcasts from it.
    pub schema_version: i32,
    /// The stored payload, in the shape of `schema_version`.
    pub payload: Value,
    /// When it was appended.
    pub recorded_at: DateTime<Utc>,
}

/// The columns of `events` a projector reads, in [`StoredEvent::from_row`]'s order.
pub const EVENT_COLUMNS: &str =
    "global_position, stream_id, stream_version, event_type, schema_version, payload, recorded_at";

impl StoredEvent {
    /// Reads a row selected with [`EVENT_COLUMNS`].
    pub fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(StoredEvent {
            global_position: row.try_get(0)?,
            stream_id: row.try_get(1)?,
            stream_version: row.try_get(2)?,
            event_type: row.try_get(3)?,
            schema_version: row.try_get(4)?,
            payload: row.try_get(5)?,
            recorded_at: row.try_get(6)?,
        })
    }

    /// Decodes the event into a domain event enum, upcast from its stored schema version,
    /// exactly as the command side does ([`decode_event_at`]), so a read model sees the
    /// events its aggregate sees.
    pub fn decode<E: DomainEvent>(&self) -> Result<E, ProjectionError> {
        decode_event_at(&self.event_type, self.schema_version, &self.payload).map_err(|source| {
            ProjectionError::Decode {
                stream_id: self.stream_id.clone(),
                stream_version: self.stream_version,
                event_type: self.event_type.clone(),
                source,
            }
        })
    }

    /// An error saying this event cannot be applied (a history the domain never decides).
    pub fn invalid(&self, message: impl Into<String>) -> ProjectionError {
        ProjectionError::Invalid {
            stream_id: self.stream_id.clone(),
            stream_version: self.stream_version,
            message: message.into(),
        }
    }
}

/// A read-model row and the stream version it reflects.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<R> {
    /// The stream the row folds.
    pub stream_id: String,
    /// The stream version the row reflects: it is the fold of events `1..=version`.
    pub version: i64,
    /// The row's state.
    pub row: R,
}

/// Why a projector could not fold or write a batch; the consumer retries it, a rebuild stops.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// A stored payload does not decode into the event type, even after upcasting.
    #[error("event {stream_id}@{stream_version} ({event_type}) cannot be decoded: {source}")]
    Decode {
        /// The event's stream.
        stream_id: String,
        /// Its version in the stream.
        stream_version: i64,
        /// Its type.
        event_type: String,
        /// What the decoder reported.
        source: serde_json::Error,
    },
    /// The projector cannot apply the event: a history its aggregate never decides.
    #[error("event {stream_id}@{stream_version} cannot be applied: {message}")]
    Invalid {
        /// The event's stream.
        stream_id: String,
        /// Its version in the stream.
        stream_version: i64,
        /// Why it cannot be applied.
        message: String,
    },
    /// The store does not hold an event that a delivery or a later event implies.
    #[error("stream {stream_id}: the event store holds no version {missing}")]
    MissingEvents {
        /// The stream with the hole.
        stream_id: String,
        /// The first version the store does not hold.
        missing: i64,
    },
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A read model: one row per stream whose id starts with [`Projector::STREAM_PREFIX`].
///
/// Implementing one is all a new read model needs (plus its table in a migration, and its
/// registration with the application): the live consumer, the rebuild (CLI and admin route),
/// idempotency, gap repair and `GET /admin/projections` come from the runtime.
#[async_trait]
pub trait Projector: Send + Sync + 'static {
    /// The state of one row.
    type Row: Clone + Send + Sync + 'static;

    /// The projection's name (`trips`): the CLI argument, the admin route segment, and the
    /// consumer group `projection:<name>`.
    const NAME: &'static str;

    /// The logical topic that carries its events (`trip.events`).
    const TOPIC: &'static str;

    /// The prefix of the streams it folds, one row each (`trip-`). Other streams on the topic
    /// are ignored.
    const STREAM_PREFIX: &'static str;

    /// The tables a rebuild empties before replaying the store; the first holds one row per
    /// stream, with its `version`.
    const TABLES: &'static [&'static str];

    /// Evolves a stream's row by the stream's next event (`row` is `None` before its first
    /// event) and leaves a row. Must be deterministic, a function of the row and the event
    /// only, and mean what the aggregate's `apply` means. An error means the history cannot be
    /// projected: the consumer retries the message and eventually parks it; a rebuild stops.
    fn apply(
        &self,
        row: &mut Option<Self::Row>,
        event: &StoredEvent,
    ) -> Result<(), ProjectionError>;

    /// The stored rows of these streams (those that exist), in one query.
    async fn load(
        &self,
        conn: &mut PgConnection,
        stream_ids: &[&str],
    ) -> Result<Vec<Versioned<Self::Row>>, ProjectionError>;

    /// Writes `rows` (distinct streams, in stream-id order) in one statement, each only where
    /// the stored row is absent or at a lower version.
    async fn store(
        &self,
        conn: &mut PgConnection,
        rows: &[&Versioned<Self::Row>],
    ) -> Result<(), ProjectionError>;
}

/// What folding one event into a stream's state did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Folded {
    /// The event was the next version; the state now reflects it.
    Applied,
    /// The state already reflects this version.
    Skipped,
    /// The event is beyond the next version; the events in between are missing.
    Gap {
        /// The version the state is at.
        have: i64,
    },
}

/// Folds `event` into `state` (`None`: the stream has no row yet) if it is the next version:
/// the one rule every writer of a read model follows.
pub fn fold<P: Projector>(
    projector: &P,
    state: &mut Option<Versioned<P::Row>>,
    event: &StoredEvent,
) -> Result<Folded, ProjectionError> {
    let have = state.as_ref().map_or(0, |s| s.version);
    if event.stream_version <= have {
        return Ok(Folded::Skipped);
    }
    if event.stream_version != have + 1 {
        return Ok(Folded::Gap { have });
    }
    let mut row = state.take().map(|s| s.row);
    projector.apply(&mut row, event)?;
    let row = row.ok_or_else(|| event.invalid("the projector kept no row for this stream"))?;
    *state = Some(Versioned {
        stream_id: event.stream_id.clone(),
        version: event.stream_version,
        row,
    });
    Ok(Folded::Applied)
}

/// Reads the events `from..=to` of each stream in one query: the streams in the order of
/// `ranges` (not in the database's collation order), each in version order.
pub(crate) async fn read_ranges(
    conn: &mut PgConnection,
    ranges: &[(&str, i64, i64)],
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let streams: Vec<&str> = ranges.iter().map(|r| r.0).collect();
    let from: Vec<i64> = ranges.iter().map(|r| r.1).collect();
    let to: Vec<i64> = ranges.iter().map(|r| r.2).collect();
    let sql = format!(
        "SELECT {cols}
         FROM UNNEST($1::text[], $2::int8[], $3::int8[]) WITH ORDINALITY AS r(stream_id, from_version, to_version, ord)
         JOIN events e ON e.stream_id = r.stream_id AND e.stream_version BETWEEN r.from_version AND r.to_version
         ORDER BY r.ord, e.stream_version",
        cols = EVENT_COLUMNS
            .split(", ")
            .map(|c| format!("e.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let rows = sqlx::query(&sql)
        .bind(&streams)
        .bind(&from)
        .bind(&to)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(StoredEvent::from_row).collect()
}

/// Runs a [`Projector`] on the consumer runtime: its rows change in the consumer's transaction,
/// together with the offset.
pub struct ProjectorHandler<P: Projector> {
    projector: Arc<P>,
    _row: PhantomData<fn() -> P::Row>,
}

impl<P: Projector> ProjectorHandler<P> {
    /// Runs `projector` live; [`consumer`](super::consumer) builds its consumer.
    pub fn new(projector: Arc<P>) -> Self {
        ProjectorHandler {
            projector,
            _row: PhantomData,
        }
    }

    /// Brings every stream named in `deliveries` up to the highest version delivered for it,
    /// reading the events from the store. Returns the number of rows written.
    pub async fn apply_deliveries(
        &self,
        conn: &mut PgConnection,
        deliveries: &[Delivery],
    ) -> Result<usize, ProjectionError> {
        let prefix = P::STREAM_PREFIX;
        let mut wanted: BTreeMap<&str, i64> = BTreeMap::new();
        for d in deliveries {
            let e = &d.envelope;
            if e.stream_version > 0 && e.stream_id.starts_with(prefix) {
                let v = wanted.entry(e.stream_id.as_str()).or_default();
                *v = (*v).max(e.stream_version);
            }
        }
        if wanted.is_empty() {
            return Ok(0);
        }
        let streams: Vec<&str> = wanted.keys().copied().collect();
        let mut states: HashMap<String, Versioned<P::Row>> = self
            .projector
            .load(conn, &streams)
            .await?
            .into_iter()
            .map(|v| (v.stream_id.clone(), v))
            .collect();
        let ranges: Vec<(&str, i64, i64)> = wanted
            .iter()
            .filter_map(|(&s, &to)| {
                let have = states.get(s).map_or(0, |v| v.version);
                (to > have).then_some((s, have + 1, to))
            })
            .collect();
        if ranges.is_empty() {
            return Ok(0); // every delivery is already reflected
        }
        let events = read_ranges(conn, &ranges).await?;
        let mut events = events.iter().peekable();
        let mut changed: Vec<Versioned<P::Row>> = Vec::with_capacity(ranges.len());
        for &(stream, _, to) in &ranges {
            let mut state = states.remove(stream);
            while let Some(e) = events.next_if(|e| e.stream_id == stream) {
                if let Folded::Gap { have } = fold(&*self.projector, &mut state, e)? {
                    return Err(ProjectionError::MissingEvents {
                        stream_id: stream.to_owned(),
                        missing: have + 1,
                    });
                }
            }
            let reached = state.as_ref().map_or(0, |s| s.version);
            if reached != to {
                return Err(ProjectionError::MissingEvents {
                    stream_id: stream.to_owned(),
                    missing: reached + 1,
                });
            }
            changed.extend(state);
        }
        // `ranges` follows `wanted`, a BTreeMap: rows are in stream-id order.
        let rows: Vec<&Versioned<P::Row>> = changed.iter().collect();
        self.projector.store(conn, &rows).await?;
        Ok(rows.len())
    }
}

#[async_trait]
impl<P: Projector> Handler for ProjectorHandler<P> {
    async fn handle(&self, tx: &mut PgConnection, message: &Delivery) -> Result<(), HandlerError> {
        self.handle_batch(tx, std::slice::from_ref(message)).await
    }

    async fn handle_batch(
        &self,
        tx: &mut PgConnection,
        messages: &[Delivery],
    ) -> Result<(), HandlerError> {
        self.apply_deliveries(tx, messages).await?;
        Ok(())
    }
}
