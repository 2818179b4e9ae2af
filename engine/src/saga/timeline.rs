//! A saga's timeline: its own events and its participants' events, in order, each described
//! for a human (the step, the commands sent, the outcome, one line of summary).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use super::definition::{saga_stream, target_stream};
use super::messages::{ReplyEvent, ReplyOutcome};
use super::read_model;
use super::state::{SagaEvent, SentCommand, DECIDED_EVENT_TYPE};
use crate::envelope::{Envelope, Metadata};
use crate::store::{decode_envelope, StoreError};

/// The most entries one timeline holds.
pub const MAX_TIMELINE: i64 = 10_000;

/// What happened to one saga, in order: its own events (`saga-<id>`) and every event that
/// carries its correlation id and either names this saga or no saga at all (the event that
/// started it, the participants' events, a cancellation). Sorted by the time the events were
/// recorded (their transaction's start), then by global position, so an event recorded because
/// of another (a participant's event after the saga's command, the saga's reply handling after
/// it) always comes after it. The events of one stream are always in version order: in the
/// rare case where two writers of one stream raced and the later version's transaction started
/// first, the two swap places (and the times shown there go backwards).
#[derive(Debug, Serialize, ToSchema)]
pub struct Timeline {
    /// The saga's id.
    pub saga_id: Uuid,
    /// The saga type's name.
    pub saga_type: String,
    /// The saga's status in the `sagas` read model: `running`, `compensating`, …
    pub state: String,
    /// The correlation id the saga's events and its participants' events share.
    pub correlation_id: Uuid,
    /// The entries, in the order described above.
    pub entries: Vec<TimelineEntry>,
    /// More entries exist than `limit` allowed.
    pub truncated: bool,
}

/// A command the saga sent, as the timeline shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SentSummary {
    /// The command's message id; a reply names it as the command it answers.
    pub message_id: Uuid,
    /// The target stream (`hotel-LIS-1`).
    pub target: String,
    /// The participant's command (`reserve`).
    pub command: String,
}

/// One entry of a [`Timeline`].
#[derive(Debug, Serialize, ToSchema)]
pub struct TimelineEntry {
    /// When the event was recorded.
    pub at: DateTime<Utc>,
    /// The event's position in the whole store; it orders events recorded at the same time.
    pub global_position: i64,
    /// The stream the event belongs to.
    pub stream_id: String,
    /// The event's version in its stream.
    pub stream_version: i64,
    /// `saga` for the saga's own events, `participant` for the others.
    pub source: &'static str,
    /// The event's type (`step_invoked`, `reply_received`, or a participant's own).
    pub event_type: String,
    /// The saga step the event belongs to (`on_compensated` for the final command).
    pub step: Option<String>,
    /// The attempt of the step, compensation or final command the event belongs to, from 1.
    pub attempt: Option<u32>,
    /// The commands sent by an invocation (`step_invoked`, `compensation_invoked`,
    /// `final_command_invoked`); for a reply, the command it answers.
    pub commands: Vec<SentSummary>,
    /// For a reply: `succeeded` or `rejected`; for the end of a compensated saga, how its
    /// final command was answered.
    pub outcome: Option<String>,
    /// The rejection, failure or timeout code.
    pub code: Option<String>,
    /// The rejection's or failure's message, for people.
    pub message: Option<String>,
    /// Until when an invocation waits for replies, or when a timed-out step is tried again.
    pub due_at: Option<DateTime<Utc>>,
    /// One line for a human.
    pub summary: String,
    /// The event's message id.
    pub message_id: Uuid,
    /// The message that caused the event, if it was caused by one.
    pub causation_id: Option<Uuid>,
    /// The event's stored payload.
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

/// The timeline of saga `saga_id`, at most `limit` entries (`None` for an unknown saga).
pub async fn timeline(
    pool: &PgPool,
    saga_id: Uuid,
    limit: i64,
) -> Result<Option<Timeline>, StoreError> {
    let Some(view) = read_model::find(pool, saga_id).await? else {
        return Ok(None);
    };
    // Two index scans: the saga's stream, and the correlation id (migration 0005).
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
    .fetch_all(pool)
    .await?;
    let stream = saga_stream(saga_id);
    let mut truncated = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let mut rows = one_per_event(rows, &stream);
    truncated |= rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    follow_their_commands(&mut rows, &stream);
    keep_stream_order(&mut rows);
    let mut describe = Describer::default();
    let entries = rows
        .into_iter()
        .map(|r| describe.entry(r))
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Some(Timeline {
        saga_id,
        saga_type: view.saga_type,
        state: view.state,
        correlation_id: view.correlation_id,
        entries,
        truncated,
    }))
}

/// The event types a participant recorded for a reply, in words.
fn recorded(events: &[ReplyEvent]) -> String {
    if events.is_empty() {
        return "nothing to do".to_owned();
    }
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    types.join(", ")
}

/// The saga's stored `decided` events (the events of one transaction, stored as one) as one
/// row per event, each at the stored event's position, version and id, and with its own
/// cause where it names one.
fn one_per_event(rows: Vec<TimelineRow>, saga_stream: &str) -> Vec<TimelineRow> {
    let mut out = Vec::with_capacity(rows.len());
    for mut r in rows {
        let is_pack = r.stream_id == saga_stream && r.event_type == DECIDED_EVENT_TYPE;
        let events = match r.payload.get_mut("events") {
            Some(Value::Array(events)) if is_pack && !events.is_empty() => std::mem::take(events),
            // Not a pack (or not one this release wrote: shown as stored, and describing it
            // reports why).
            _ => {
                out.push(r);
                continue;
            }
        };
        for mut e in events {
            let mut metadata = r.metadata.clone();
            // An event caused by another message than the stored event names it.
            if let (Some(cause), Value::Object(m)) = (e.get_mut("causation_id"), &mut metadata) {
                m.insert("causation_id".to_owned(), cause.take());
            }
            out.push(TimelineRow {
                event_type: e
                    .get("event_type")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                payload: e.get_mut("payload").map_or(Value::Null, Value::take),
                stream_id: r.stream_id.clone(),
                metadata,
                ..r
            });
        }
    }
    out
}

/// Puts the events that a saga command caused right after the saga event that sent the
/// command, keeping the rest in place. A local step's events commit in the transaction of the
/// saga events that sent the command and took its reply, and are stored after all of them; a
/// participant's are stored between the two already, and stay where they are.
fn follow_their_commands(rows: &mut Vec<TimelineRow>, saga_stream: &str) {
    let id_of = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .and_then(|s| s.parse::<Uuid>().ok())
    };
    let mut sender: HashMap<Uuid, usize> = HashMap::new();
    for (i, r) in rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.stream_id == saga_stream)
    {
        let sent = r.payload.get("commands").and_then(Value::as_array);
        for c in sent.into_iter().flatten().chain(r.payload.get("command")) {
            if let Some(id) = id_of(c.get("message_id")) {
                sender.insert(id, i);
            }
        }
    }
    if sender.is_empty() {
        return;
    }
    // Sorted by (the row it follows, 1 if it follows one, where it was).
    let mut keyed: Vec<(usize, u8, usize, TimelineRow)> = rows
        .drain(..)
        .enumerate()
        .map(|(i, r)| {
            let anchor = (r.stream_id != saga_stream)
                .then(|| id_of(r.metadata.get("causation_id")))
                .flatten()
                .and_then(|c| sender.get(&c).copied())
                .filter(|&a| a < i);
            match anchor {
                Some(a) => (a, 1, i, r),
                None => (i, 0, i, r),
            }
        })
        .collect();
    keyed.sort_by_key(|(a, follows, i, _)| (*a, *follows, *i));
    rows.extend(keyed.into_iter().map(|(.., r)| r));
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
    fn entry(&mut self, r: TimelineRow) -> Result<TimelineEntry, StoreError> {
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

    fn sent(&mut self, commands: &[SentCommand]) -> Vec<SentSummary> {
        commands
            .iter()
            .map(|c| {
                let s = SentSummary {
                    message_id: c.message_id,
                    target: target_stream(&c.invocation),
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
            // Taken apart before it is described (`one_per_event`).
            SagaEvent::Decided { events } => {
                e.summary = format!("{} events of one decision", events.len())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::state::DecidedPack;

    fn row(stream: &str, version: i64) -> TimelineRow {
        TimelineRow {
            stream_id: stream.to_owned(),
            stream_version: version,
            ..Default::default()
        }
    }

    /// A saga's `decided` event is one row per event it packs, at its version; a payload
    /// of another stream with an `events` field is left alone.
    #[test]
    fn a_decided_event_is_one_row_per_event() {
        let (cause, reply) = (Uuid::now_v7(), Uuid::now_v7());
        let (event_type, payload) = DecidedPack::of(
            Some(cause),
            &[
                (SagaEvent::RetryRequested, Some(cause)),
                (SagaEvent::SagaCompleted, Some(reply)),
            ],
        )
        .unwrap();
        let pack = TimelineRow {
            event_type,
            payload,
            metadata: serde_json::json!({ "causation_id": cause, "saga_id": "1" }),
            ..row("saga-1", 7)
        };
        let foreign = TimelineRow {
            event_type: DECIDED_EVENT_TYPE.to_owned(),
            payload: serde_json::json!({ "events": [1, 2] }),
            ..row("hotel-A", 2)
        };
        let rows = one_per_event(vec![pack, foreign], "saga-1");
        let seen: Vec<(&str, i64, &str)> = rows
            .iter()
            .map(|r| {
                (
                    r.stream_id.as_str(),
                    r.stream_version,
                    r.event_type.as_str(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("saga-1", 7, "retry_requested"),
                ("saga-1", 7, "saga_completed"),
                ("hotel-A", 2, DECIDED_EVENT_TYPE),
            ]
        );
        assert_eq!(rows[2].payload, serde_json::json!({ "events": [1, 2] }));
        // Each event keeps the stored event's metadata, with its own cause.
        let causes: Vec<&Value> = rows[..2]
            .iter()
            .map(|r| &r.metadata["causation_id"])
            .collect();
        assert_eq!(
            causes,
            [&serde_json::json!(cause), &serde_json::json!(reply)]
        );
        assert_eq!(rows[1].metadata["saga_id"], "1");
        assert!(rows[1].payload.get("causation_id").is_none());
    }

    #[test]
    fn each_stream_keeps_its_version_order_in_the_places_it_holds() {
        let mut rows = vec![
            row("saga-1", 1),
            row("hotel-A", 4),
            row("saga-1", 3), // its transaction started before version 2's
            row("trip-9", 1),
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
                ("hotel-A", 4),
                ("saga-1", 2),
                ("trip-9", 1),
                ("saga-1", 3),
            ]
        );
    }

    #[test]
    fn a_commands_events_follow_the_event_that_sent_it() {
        let (c1, c2, other) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let sent = |v, commands: Value| TimelineRow {
            payload: commands,
            ..row("saga-1", v)
        };
        let caused = |stream: &str, v, by: Uuid| TimelineRow {
            metadata: serde_json::json!({ "causation_id": by }),
            ..row(stream, v)
        };
        // As a local step stores them: the saga's events, then what its commands recorded.
        let mut rows = vec![
            row("order-7", 1),
            sent(1, serde_json::json!({ "commands": [{ "message_id": c1 }] })),
            row("saga-1", 2),
            sent(3, serde_json::json!({ "command": { "message_id": c2 } })),
            row("saga-1", 4),
            caused("inventory-A", 5, c1),
            caused("order-7", 2, c2),
            caused("account-X", 3, other),
        ];
        follow_their_commands(&mut rows, "saga-1");
        let order: Vec<(&str, i64)> = rows
            .iter()
            .map(|r| (r.stream_id.as_str(), r.stream_version))
            .collect();
        assert_eq!(
            order,
            [
                ("order-7", 1),
                ("saga-1", 1),
                ("inventory-A", 5),
                ("saga-1", 2),
                ("saga-1", 3),
                ("order-7", 2),
                ("saga-1", 4),
                ("account-X", 3),
            ]
        );
    }
}
