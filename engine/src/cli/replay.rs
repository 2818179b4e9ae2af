//! `replay <stream_id> [--at-version n] [--json]`: every event of a stream with its
//! metadata and the state right after it, read straight from the event store (old payloads
//! upcast to their current schema, as every reader sees them).

use std::io::Write;

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::app::App;
use crate::command::{CommandBus, CommandBusConfig};
use crate::envelope::RecordedEvent;
use crate::fold::StreamFold;
use crate::replay::{self, StateAt};

/// How `replay` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFormat {
    /// Readable in a terminal: a block per event.
    Text,
    /// One JSON object per event and line, for tools.
    JsonLines,
}

/// Prints events `1..=at_version` of `stream_id` (all without it) to `out`, each with the
/// state after it, and returns the final state. Fails, printing nothing, for an unknown
/// stream type, an empty stream or a version beyond the head.
pub async fn replay_stream(
    app: &App,
    pool: &PgPool,
    stream_id: &str,
    at_version: Option<i64>,
    format: ReplayFormat,
    out: &mut dyn Write,
) -> anyhow::Result<StateAt> {
    let registry = app.registry(&CommandBus::new(pool.clone(), CommandBusConfig::default()))?;
    let store = crate::store::EventStore::new(pool.clone());
    let mut lines: Vec<String> = Vec::new();
    let aggregate_type = replay::stream_type(stream_id).to_owned();
    let at = replay::replay(&store, &registry, stream_id, at_version, |event, fold| {
        lines.push(match format {
            ReplayFormat::Text => text_block(event, fold),
            ReplayFormat::JsonLines => json_line(&aggregate_type, event, fold),
        })
    })
    .await?;
    if format == ReplayFormat::Text {
        writeln!(
            out,
            "{} ({}): events 1..={} of {}\n",
            at.stream_id, at.aggregate_type, at.version, at.head_version
        )?;
    }
    for line in lines {
        writeln!(out, "{line}")?;
    }
    Ok(at)
}

fn text_block(event: &RecordedEvent, fold: &dyn StreamFold) -> String {
    let e = &event.envelope;
    let m = &e.metadata;
    let current = fold.current_schema_version(&e.event_type);
    let schema = if e.schema_version < current {
        format!("schema v{}, read as v{current}", e.schema_version)
    } else {
        format!("schema v{}", e.schema_version)
    };
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    let state = serde_json::to_string_pretty(&fold.state())
        .expect("JSON prints")
        .replace('\n', "\n             ");
    format!(
        "── v{}  {}  {}  ({schema})\n   \
         message     {}  (global position {})\n   \
         correlation {}  causation {}\n   \
         saga        {}  step {}  attempt {}\n   \
         payload     {}\n   \
         state after  {state}\n",
        e.stream_version,
        event
            .recorded_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        e.event_type,
        e.message_id,
        event.global_position,
        m.correlation_id,
        or_dash(m.causation_id.map(|c| c.to_string())),
        or_dash(m.saga_id.clone()),
        or_dash(m.saga_step.clone()),
        or_dash(m.attempt.map(|a| a.to_string())),
        e.payload,
    )
}

fn json_line(aggregate_type: &str, event: &RecordedEvent, fold: &dyn StreamFold) -> String {
    let e = &event.envelope;
    let line: Value = json!({
        "stream_id": e.stream_id,
        "aggregate_type": aggregate_type,
        "stream_version": e.stream_version,
        "global_position": event.global_position,
        "recorded_at": event.recorded_at,
        "event_type": e.event_type,
        "schema_version": e.schema_version,
        "current_schema_version": fold.current_schema_version(&e.event_type),
        "message_id": e.message_id,
        "metadata": e.metadata,
        "payload": e.payload,
        "state": fold.state(),
    });
    line.to_string()
}
