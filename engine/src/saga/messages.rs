//! What sagas and participants send each other, inside ordinary envelopes.
//!
//! - A **saga command** goes to `<context>.commands`, keyed by the target stream id (so one
//!   aggregate's commands keep their order), with `event_type = "saga_command"`.
//! - A **reply** goes to `saga.replies`, keyed by the saga id (so one saga's replies keep their
//!   order), with `event_type = "saga_reply"`. It names the command it answers.
//!
//! Both carry `saga_id`, `saga_step` and `attempt` in their metadata, and the correlation id
//! of the request that started the saga.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Logical topic of all replies.
pub const REPLIES_TOPIC: &str = "saga.replies";
/// The `event_type` of a saga command's envelope.
pub const COMMAND_EVENT_TYPE: &str = "saga_command";
/// The `event_type` of a reply's envelope.
pub const REPLY_EVENT_TYPE: &str = "saga_reply";

/// Logical topic of the saga commands for a bounded context.
pub fn commands_topic(context: &str) -> String {
    format!("{context}.commands")
}

/// The payload of a saga command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaCommand {
    /// The participant's aggregate type.
    pub aggregate_type: String,
    /// The target aggregate's id, without its type prefix.
    pub aggregate_id: String,
    /// The participant aggregate's command, as its serde form (`{"command": .., "payload": ..}`).
    pub command: Value,
    /// When the saga stops waiting for this attempt's reply: an outside-world participant
    /// stops retrying a failing call then (the saga decides what follows). Absent in commands
    /// written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_at: Option<DateTime<Utc>>,
}

/// The payload of a reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaReply {
    /// The message id of the command this answers.
    pub command_id: Uuid,
    /// Whether the command was applied or rejected.
    #[serde(flatten)]
    pub outcome: ReplyOutcome,
}

/// How a participant answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReplyOutcome {
    /// The command was applied; these are the events it recorded (none for an idempotent
    /// repeat).
    Succeeded {
        /// The events, in the order they were recorded.
        events: Vec<ReplyEvent>,
    },
    /// The domain rejected the command: a business outcome, never retried.
    Rejected {
        /// The rejection's stable code ([`DomainError::code`](crate::DomainError::code)).
        code: String,
        /// The rejection's message, for people.
        message: String,
    },
}

/// An event recorded by a participant, as carried in a reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplyEvent {
    /// The event's `snake_case` tag.
    pub event_type: String,
    /// The event's payload, in its current schema.
    pub payload: Value,
}
