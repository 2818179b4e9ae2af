//! The PostgreSQL event store.
//!
//! Guarantees:
//! - an append is all or nothing, and only succeeds if the stream is exactly at the expected
//!   version (`UNIQUE (stream_id, stream_version)` plus a head check), so versions are gap-free
//!   and no decision is made on stale state;
//! - appends run inside a caller's transaction, so the published messages (and anything else the
//!   caller writes) commit or roll back together with the events.

#[cfg(test)]
mod tests;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::aggregate::{decode_event_at, Aggregate, DomainEvent};
use crate::envelope::{Envelope, Metadata, RecordedEvent};
use crate::outbox::{OutboxMessage, Publishing};

/// An event about to be appended.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// UUIDv7 minted by the writer; unique across the store, so an event is never stored twice.
    pub message_id: Uuid,
    /// The stable `snake_case` tag of the event enum's variant.
    pub event_type: String,
    /// The payload's schema version (see [`DomainEvent::schema_version`]).
    pub schema_version: i32,
    /// The event's data, in the shape of `schema_version`.
    pub payload: Value,
    /// Correlation, causation, trace and saga context, stored with the event.
    pub metadata: Metadata,
}

/// Why an append wrote nothing that may be committed: the caller rolls its transaction back.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The stream is not at the expected version: someone else appended first.
    #[error("stream {stream_id} is at version {actual}, expected {expected}")]
    Conflict {
        /// The stream that was not at its expected version.
        stream_id: String,
        /// The version the writer decided on.
        expected: i64,
        /// The stream's committed version, written by someone else.
        actual: i64,
    },
    /// The database failed; whether the stream moved is unknown.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Why stored events could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A stored payload does not decode into the event type, even after upcasting.
    #[error("stored event {message_id} ({event_type}) cannot be decoded: {source}")]
    Decode {
        /// The undecodable event's message id.
        message_id: Uuid,
        /// Its event type.
        event_type: String,
        /// What the decoder reported.
        source: serde_json::Error,
    },
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The append: the rows of streams at their expected head are inserted. The head check makes
/// an append with a stale *higher* expected version fail instead of leaving a gap. Two
/// appenders that both saw the same head race on the unique key: the loser waits for the
/// winner, and `DO NOTHING` keeps the loser's transaction usable, so it can report the actual
/// version without a second connection.
///
/// Only a stream's first row checks the head (one index probe per stream, not per event): the
/// rows after it can only follow it. If the first row fails, a later row may still be
/// inserted, past the head; the append then reports a conflict and the caller rolls back, as
/// it must after any conflict.
const APPEND: &str = "
INSERT INTO events (stream_id, stream_version, message_id, event_type, schema_version, payload, metadata)
SELECT t.stream_id, t.stream_version, t.message_id, t.event_type, t.schema_version, t.payload, t.metadata
FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::uuid[], $5::text[], $6::int4[], $7::jsonb[], $8::jsonb[])
     WITH ORDINALITY AS t(stream_id, stream_version, expected, message_id, event_type, schema_version,
                          payload, metadata, ord)
WHERE (t.stream_version > t.expected + 1
       OR (SELECT COALESCE(MAX(e.stream_version), 0) FROM events e WHERE e.stream_id = t.stream_id) = t.expected)
ORDER BY t.ord
ON CONFLICT (stream_id, stream_version) DO NOTHING
RETURNING message_id, global_position, recorded_at";

/// The `inserted` CTE of the append statements that publish: [`APPEND`] over the rows of a
/// CTE `t` (with the columns [`APPEND`] unnests), returning the inserted events whole.
macro_rules! inserted_cte {
    () => {
        "inserted AS (
    INSERT INTO events (stream_id, stream_version, message_id, event_type, schema_version, payload, metadata)
    SELECT t.stream_id, t.stream_version, t.message_id, t.event_type, t.schema_version, t.payload, t.metadata
    FROM t
    WHERE (t.stream_version > t.expected + 1
           OR (SELECT COALESCE(MAX(e.stream_version), 0) FROM events e WHERE e.stream_id = t.stream_id) = t.expected)
    ORDER BY t.ord
    ON CONFLICT (stream_id, stream_version) DO NOTHING
    RETURNING global_position, stream_id, stream_version, message_id, event_type, schema_version, payload,
              metadata, recorded_at
)"
    };
}

/// An inserted event `i` as its [`Envelope`], encoded: what is published.
macro_rules! envelope_of_inserted {
    () => {
        "jsonb_build_object('message_id', i.message_id, 'stream_id', i.stream_id,
                              'stream_version', i.stream_version, 'event_type', i.event_type,
                              'schema_version', i.schema_version, 'payload', i.payload, 'metadata', i.metadata)::text"
    };
}

/// [`APPEND`], and an outbox row for each inserted event (topic `$9`, shard `$10`), built from
/// the inserted row: the envelope is the event as [`Envelope`] serializes it. Outbox ids follow
/// the events' global positions, so a stream's events are relayed in version order.
const APPEND_AND_PUBLISH: &str = concat!(
    "
WITH t AS (
    SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::uuid[], $5::text[], $6::int4[], $7::jsonb[],
                         $8::jsonb[], $9::text[], $10::int2[])
         WITH ORDINALITY AS t(stream_id, stream_version, expected, message_id, event_type, schema_version,
                              payload, metadata, topic, shard, ord)
), ",
    inserted_cte!(),
    ", published AS (
    INSERT INTO outbox (shard, topic, partition_key, message_id, envelope)
    SELECT t.shard, t.topic, i.stream_id, i.message_id, ",
    envelope_of_inserted!(),
    "
    FROM inserted i JOIN t ON t.message_id = i.message_id
    ORDER BY i.global_position
)
SELECT message_id, global_position, recorded_at FROM inserted"
);

/// [`APPEND_AND_PUBLISH`] for [`Publishing::Log`]: each event goes to the embedded log (on
/// physical topic `$9`, partition `$10`) instead of the outbox, as
/// [`crate::outbox::append_to_log`] does it: offsets from the head rows, locked in (topic,
/// partition) byte order until the commit. The heads count every event given: if one is not
/// inserted (a conflict), the caller rolls the transaction back, offsets and all.
const APPEND_AND_LOG: &str = concat!(
    "
WITH t AS (
    SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::uuid[], $5::text[], $6::int4[], $7::jsonb[],
                         $8::jsonb[], $9::text[], $10::int4[])
         WITH ORDINALITY AS t(stream_id, stream_version, expected, message_id, event_type, schema_version,
                              payload, metadata, topic, partition, ord)
), ",
    inserted_cte!(),
    ", ",
    crate::outbox::log_heads_ctes!("t"),
    r#", logged AS (
    INSERT INTO message_log (topic, partition, "offset", partition_key, message_id, envelope)
    SELECT t.topic, t.partition,
           heads.next_offset - counts.n - 1
               + row_number() OVER (PARTITION BY t.topic, t.partition ORDER BY i.global_position),
           i.stream_id, i.message_id, "#,
    envelope_of_inserted!(),
    "
    FROM inserted i
    JOIN t ON t.message_id = i.message_id
    JOIN counts ON counts.topic = t.topic AND counts.partition = t.partition
    JOIN heads ON heads.topic = t.topic AND heads.partition = t.partition
)
SELECT message_id, global_position, recorded_at FROM inserted"
);

/// The event store: the `events` table, appended to under the expected-version guard and read
/// by stream or in global order. Cloning shares the pool.
#[derive(Clone)]
pub struct EventStore {
    pool: PgPool,
    publishing: Publishing,
}

impl EventStore {
    /// An event store on `pool`, whose database the engine's migrations were applied to,
    /// publishing to the outbox.
    pub fn new(pool: PgPool) -> Self {
        EventStore {
            pool,
            publishing: Publishing::Outbox,
        }
    }

    /// The same store, publishing where `publishing` says: every writer of a deployment must
    /// publish the same way.
    pub fn with_publishing(mut self, publishing: Publishing) -> Self {
        self.publishing = publishing;
        self
    }

    /// Where the store's writers publish.
    pub fn publishing(&self) -> &Publishing {
        &self.publishing
    }

    /// Publishes `messages` inside `tx` where [`EventStore::publishing`] says, in their order.
    /// Call it as the transaction's last write (see [`crate::outbox::append_to_log`]).
    pub async fn publish(
        &self,
        tx: &mut PgConnection,
        messages: &[OutboxMessage],
    ) -> Result<(), sqlx::Error> {
        self.publishing.write(tx, messages).await
    }

    /// The pool the store reads with (appends run on the caller's transaction).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Appends `events` to `stream_id`, which must be at `expected_version` (0 for a new
    /// stream), inside the caller's transaction `tx`. On [`AppendError::Conflict`] the caller
    /// must roll `tx` back (some of the events may have been inserted).
    pub async fn append(
        &self,
        tx: &mut PgConnection,
        stream_id: &str,
        expected_version: i64,
        events: &[NewEvent],
    ) -> Result<Vec<RecordedEvent>, AppendError> {
        let mut recorded = self
            .append_many(tx, &[(stream_id, expected_version, events)])
            .await?;
        Ok(recorded.pop().unwrap_or_default())
    }

    /// Appends to several streams in one statement, each at its expected version, inside
    /// `tx`; returns each stream's recorded events. All or nothing: if any stream is not at
    /// its expected version the result is [`AppendError::Conflict`] (for the first such
    /// stream) and the caller must roll `tx` back.
    pub async fn append_many(
        &self,
        tx: &mut PgConnection,
        streams: &[(&str, i64, &[NewEvent])],
    ) -> Result<Vec<Vec<RecordedEvent>>, AppendError> {
        self.append_streams(tx, streams, None, true).await
    }

    /// [`EventStore::append_many`] for a writer that keeps no copy of what it appended (the
    /// orchestrator holds its sagas' state): the same checks, without building the recorded
    /// events.
    pub async fn append_batch(
        &self,
        tx: &mut PgConnection,
        streams: &[(&str, i64, &[NewEvent])],
    ) -> Result<(), AppendError> {
        self.append_streams(tx, streams, None, false).await?;
        Ok(())
    }

    /// [`EventStore::append`] that also writes each event to the outbox on `topic`, keyed by
    /// the stream id (see [`EventStore::append_and_publish`]).
    pub async fn append_and_publish_one(
        &self,
        tx: &mut PgConnection,
        stream_id: &str,
        expected_version: i64,
        events: &[NewEvent],
        topic: &str,
    ) -> Result<Vec<RecordedEvent>, AppendError> {
        let mut recorded = self
            .append_and_publish(tx, &[(stream_id, expected_version, events)], &[topic])
            .await?;
        Ok(recorded.pop().unwrap_or_default())
    }

    /// [`EventStore::append_many`] that also publishes each appended event (to the outbox, or
    /// to the log: [`EventStore::publishing`]), on the
    /// topic given for its stream and keyed by its stream id, in the same statement: the
    /// events are sent (and parsed) once, and the message costs no round trip of its own. With
    /// [`Publishing::Log`] it locks partition heads until the transaction ends: make it the
    /// transaction's last write but for [`EventStore::publish`].
    pub async fn append_and_publish(
        &self,
        tx: &mut PgConnection,
        streams: &[(&str, i64, &[NewEvent])],
        topics: &[&str],
    ) -> Result<Vec<Vec<RecordedEvent>>, AppendError> {
        assert_eq!(streams.len(), topics.len(), "one topic per stream");
        self.append_streams(tx, streams, Some(topics), true).await
    }

    /// Appends `streams`; with `record`, returns each stream's recorded events, and otherwise
    /// nothing (but still a conflict).
    async fn append_streams(
        &self,
        tx: &mut PgConnection,
        streams: &[(&str, i64, &[NewEvent])],
        topics: Option<&[&str]>,
        record: bool,
    ) -> Result<Vec<Vec<RecordedEvent>>, AppendError> {
        let total: usize = streams.iter().map(|s| s.2.len()).sum();
        if total == 0 {
            return Ok(streams.iter().map(|_| Vec::new()).collect());
        }
        let mut stream_ids = Vec::with_capacity(total);
        let mut versions = Vec::with_capacity(total);
        let mut expected = Vec::with_capacity(total);
        let mut ids = Vec::with_capacity(total);
        let mut types = Vec::with_capacity(total);
        let mut schema_versions = Vec::with_capacity(total);
        let mut payloads = Vec::with_capacity(total);
        // Events of one decision share their metadata: encoded once per run of equal ones.
        let mut metadata_values: Vec<Value> = Vec::new();
        let mut metadata_of = Vec::with_capacity(total);
        let mut last_metadata: Option<&Metadata> = None;
        let mut event_topics: Vec<&str> = Vec::with_capacity(total);
        let mut shards = Vec::with_capacity(total);
        let mut log_topics: Vec<String> = Vec::new();
        let mut partitions = Vec::new();
        for (n, (stream, expected_version, events)) in streams.iter().enumerate() {
            match (topics, &self.publishing) {
                (None, _) => {}
                (Some(topics), Publishing::Outbox) => {
                    let shard = crate::outbox::shard_of(stream);
                    event_topics.extend(std::iter::repeat_n(topics[n], events.len()));
                    shards.extend(std::iter::repeat_n(shard, events.len()));
                }
                (Some(topics), Publishing::Log(layout)) => {
                    let topic = layout.topic(topics[n]);
                    let partition = layout.partition_of(stream);
                    log_topics.extend(std::iter::repeat_n(topic, events.len()));
                    partitions.extend(std::iter::repeat_n(partition, events.len()));
                }
            }
            for (i, e) in events.iter().enumerate() {
                stream_ids.push(*stream);
                versions.push(expected_version + 1 + i as i64);
                expected.push(*expected_version);
                ids.push(e.message_id);
                types.push(e.event_type.as_str());
                schema_versions.push(e.schema_version);
                payloads.push(&e.payload);
                if last_metadata != Some(&e.metadata) {
                    metadata_values
                        .push(serde_json::to_value(&e.metadata).expect("metadata serializes"));
                    last_metadata = Some(&e.metadata);
                }
                metadata_of.push(metadata_values.len() - 1);
            }
        }
        let metadata: Vec<&Value> = metadata_of.iter().map(|&i| &metadata_values[i]).collect();
        // Open until the statement has run.
        let _spans = append_spans(streams);
        let query = match (topics, &self.publishing) {
            (None, _) => sqlx::query(APPEND),
            (Some(_), Publishing::Outbox) => sqlx::query(APPEND_AND_PUBLISH),
            (Some(_), Publishing::Log(_)) => sqlx::query(APPEND_AND_LOG),
        };
        let query = query
            .bind(&stream_ids)
            .bind(&versions)
            .bind(&expected)
            .bind(&ids)
            .bind(&types)
            .bind(&schema_versions)
            .bind(&payloads)
            .bind(&metadata);
        let query = match (topics, &self.publishing) {
            (None, _) => query,
            (Some(_), Publishing::Outbox) => query.bind(&event_topics).bind(&shards),
            (Some(_), Publishing::Log(_)) => query.bind(&log_topics).bind(&partitions),
        };
        // The `publish` spans of the events, open until the statement ran.
        let _publish_spans = match (topics, &self.publishing) {
            (Some(_), Publishing::Log(_)) => log_spans(streams, &log_topics, &partitions),
            _ => Vec::new(),
        };
        let rows = query.fetch_all(&mut *tx).await?;
        let mut inserted: std::collections::HashMap<Uuid, (i64, DateTime<Utc>)> = rows
            .iter()
            .map(|r| {
                (
                    r.get::<Uuid, _>(0),
                    (r.get::<i64, _>(1), r.get::<DateTime<Utc>, _>(2)),
                )
            })
            .collect();
        if !record && inserted.len() == total {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(streams.len());
        for (stream, expected_version, events) in streams {
            let mut recorded = Vec::with_capacity(events.len());
            for (i, e) in events.iter().enumerate() {
                let Some((global_position, recorded_at)) = inserted.remove(&e.message_id) else {
                    let stream_ids: Vec<Uuid> = events.iter().map(|e| e.message_id).collect();
                    let actual: i64 = sqlx::query_scalar(
                        "SELECT COALESCE(MAX(stream_version), 0) FROM events
                         WHERE stream_id = $1 AND message_id <> ALL($2)",
                    )
                    .bind(*stream)
                    .bind(&stream_ids)
                    .fetch_one(&mut *tx)
                    .await?;
                    return Err(AppendError::Conflict {
                        stream_id: (*stream).to_owned(),
                        expected: *expected_version,
                        actual,
                    });
                };
                if !record {
                    continue;
                }
                recorded.push(RecordedEvent {
                    global_position,
                    recorded_at,
                    envelope: Envelope {
                        message_id: e.message_id,
                        stream_id: (*stream).to_owned(),
                        stream_version: expected_version + 1 + i as i64,
                        event_type: e.event_type.clone(),
                        schema_version: e.schema_version,
                        payload: e.payload.clone(),
                        metadata: e.metadata.clone(),
                    },
                });
            }
            out.push(recorded);
        }
        Ok(out)
    }

    /// The committed version of a stream (0 if it has no events).
    pub async fn stream_version(&self, stream_id: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT COALESCE(MAX(stream_version), 0) FROM events WHERE stream_id = $1",
        )
        .bind(stream_id)
        .fetch_one(&self.pool)
        .await
    }

    /// Reads up to `limit` events of a stream, starting at `from_version`, in version order.
    pub async fn read_stream(
        &self,
        stream_id: &str,
        from_version: i64,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        read_stream_on(&self.pool, stream_id, from_version, limit).await
    }

    /// Reads up to `limit` events with a global position greater than `after_position`, in
    /// position order. Positions come from an identity column: a reader that follows the head
    /// while appends are in flight can see a later position commit before an earlier one, so
    /// live consumers follow the outbox transport, not this method.
    pub async fn read_all(
        &self,
        after_position: i64,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT global_position, stream_id, stream_version, message_id, event_type, schema_version,
                    payload, metadata, recorded_at
             FROM events WHERE global_position > $1
             ORDER BY global_position LIMIT $2",
        )
        .bind(after_position)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row_to_event).collect()
    }
}

/// [`EventStore::read_stream`] on any executor: inside a transaction it also sees that
/// transaction's own uncommitted events.
pub async fn read_stream_on<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    stream_id: &str,
    from_version: i64,
    limit: i64,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT global_position, stream_id, stream_version, message_id, event_type, schema_version,
                payload, metadata, recorded_at
         FROM events WHERE stream_id = $1 AND stream_version >= $2
         ORDER BY stream_version LIMIT $3",
    )
    .bind(stream_id)
    .bind(from_version)
    .bind(limit)
    .fetch_all(executor)
    .await?;
    rows.iter().map(row_to_event).collect()
}

/// Reads up to `limit` events of each stream from its version on, in one statement, on any
/// executor (inside a transaction it sees the transaction's own writes). The events come
/// stream by stream in the order of `from`, each stream's in version order.
pub async fn read_streams_on<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    from: &[(&str, i64)],
    limit: i64,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    if from.is_empty() {
        return Ok(Vec::new());
    }
    let streams: Vec<&str> = from.iter().map(|(s, _)| *s).collect();
    let versions: Vec<i64> = from.iter().map(|(_, v)| *v).collect();
    let rows = sqlx::query(
        "SELECT e.global_position, e.stream_id, e.stream_version, e.message_id, e.event_type,
                e.schema_version, e.payload, e.metadata, e.recorded_at
         FROM UNNEST($1::text[], $2::int8[]) WITH ORDINALITY AS s(stream_id, from_version, ord)
         CROSS JOIN LATERAL (
             SELECT * FROM events
             WHERE events.stream_id = s.stream_id AND events.stream_version >= s.from_version
             ORDER BY events.stream_version LIMIT $3
         ) e
         ORDER BY s.ord, e.stream_version",
    )
    .bind(&streams)
    .bind(&versions)
    .bind(limit)
    .fetch_all(executor)
    .await?;
    rows.iter().map(row_to_event).collect()
}

fn row_to_event(row: &sqlx::postgres::PgRow) -> Result<RecordedEvent, sqlx::Error> {
    let metadata: Value = row.try_get("metadata")?;
    let metadata: Metadata =
        serde_json::from_value(metadata).map_err(|e| sqlx::Error::ColumnDecode {
            index: "metadata".into(),
            source: Box::new(e),
        })?;
    Ok(RecordedEvent {
        global_position: row.try_get("global_position")?,
        recorded_at: row.try_get::<DateTime<Utc>, _>("recorded_at")?,
        envelope: Envelope {
            message_id: row.try_get("message_id")?,
            stream_id: row.try_get("stream_id")?,
            stream_version: row.try_get("stream_version")?,
            event_type: row.try_get("event_type")?,
            schema_version: row.try_get("schema_version")?,
            payload: row.try_get("payload")?,
            metadata,
        },
    })
}

/// Decodes a stored event into the aggregate's event type.
pub fn decode<A: Aggregate>(e: &RecordedEvent) -> Result<A::Event, StoreError> {
    decode_envelope::<A::Event>(&e.envelope)
}

/// Decodes an envelope into an event enum, upcasting a payload of an older schema version
/// first (see [`DomainEvent::upcast`]).
pub fn decode_envelope<E: DomainEvent>(e: &Envelope) -> Result<E, StoreError> {
    decode_event_at(&e.event_type, e.schema_version, &e.payload).map_err(|source| {
        StoreError::Decode {
            message_id: e.message_id,
            event_type: e.event_type.clone(),
            source,
        }
    })
}

/// One `append` span per trace among the events of `streams` (a batch of the orchestrator
/// holds many sagas): a child of the span that wrote the events, as their `traceparent`
/// names it. None when the per-message spans are off.
/// The `publish` span of each event written straight to the log, on `topics[i]` and
/// `partitions[i]` for the i-th event.
fn log_spans(
    streams: &[(&str, i64, &[NewEvent])],
    topics: &[String],
    partitions: &[i32],
) -> Vec<tracing::Span> {
    if !crate::trace::hop_spans_enabled() {
        return Vec::new();
    }
    streams
        .iter()
        .flat_map(|s| s.2.iter())
        .zip(topics.iter().zip(partitions))
        .map(|(e, (topic, partition))| {
            crate::outbox::publish_span(e.message_id, &e.event_type, &e.metadata, topic, *partition)
        })
        .collect()
}

/// The `event_type` of several events stored as one: a saga's events of one decision
/// (`SagaEvent::Decided`), whose payload is `{"events": [{"event_type": …, "payload": …}, …]}`.
pub const DECIDED_EVENT_TYPE: &str = "decided";

/// The types of the events `e` stands for: its own, or those it packs
/// ([`DECIDED_EVENT_TYPE`]), for the spans.
fn event_types(e: &NewEvent) -> Vec<&str> {
    let packed = (e.event_type == DECIDED_EVENT_TYPE)
        .then(|| e.payload.get("events").and_then(Value::as_array))
        .flatten();
    match packed {
        Some(events) => events
            .iter()
            .filter_map(|p| p.get("event_type").and_then(Value::as_str))
            .collect(),
        None => vec![e.event_type.as_str()],
    }
}

fn append_spans(streams: &[(&str, i64, &[NewEvent])]) -> Vec<tracing::Span> {
    use crate::trace::{SpanIdHex, TraceContext, TraceIdHex, TRACE_TARGET};
    if !crate::trace::hop_spans_enabled() {
        return Vec::new();
    }
    // (the writer's context, its first stream and correlation id, its events, their types)
    let mut traces: Vec<(TraceContext, &str, Uuid, usize, Vec<&str>)> = Vec::new();
    for (stream, _, events) in streams {
        for e in events.iter() {
            let Some(context) = e
                .metadata
                .traceparent
                .as_deref()
                .and_then(TraceContext::parse)
            else {
                continue;
            };
            let at = match traces.iter().position(|t| t.0 == context) {
                Some(at) => at,
                None => {
                    traces.push((context, stream, e.metadata.correlation_id, 0, Vec::new()));
                    traces.len() - 1
                }
            };
            let entry = &mut traces[at];
            entry.3 += 1;
            for t in event_types(e) {
                if !entry.4.contains(&t) {
                    entry.4.push(t);
                }
            }
        }
    }
    traces
        .into_iter()
        .map(|(context, stream, correlation_id, events, types)| {
            let own = context.with_span(crate::trace::random_span_id());
            let span = tracing::debug_span!(
                target: TRACE_TARGET,
                "append",
                stream_id = stream,
                events,
                event_types = %types.join(","),
                correlation_id = %correlation_id,
                trace_id = %TraceIdHex(context.trace_id),
                span_id = %SpanIdHex(own.span_id),
                parent_span_id = %SpanIdHex(context.span_id),
            );
            crate::telemetry::adopt(&span, Some(context), own);
            span
        })
        .collect()
}
