//! What sagas and participants send each other, inside ordinary envelopes.
//!
//! - A **saga command** goes to `<context>.commands`, keyed by the target stream id (so one
//!   aggregate's commands keep their order), with `event_type = "saga_command"`.
//! - A **reply** goes to `saga.replies`, keyed by the saga id (so one saga's replies keep their
//!   order), with `event_type = "saga_reply"`. It names the command it answers.
//!
//! Both carry `saga_id`, `saga_step` and `attempt` in their metadata, and the correlation id
//! of the request that started the saga.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Logical topic of all replies.
pub const REPLIES_TOPIC: &str = "saga.replies";
pub const COMMAND_EVENT_TYPE: &str = "saga_command";
pub const REPLY_EVENT_TYPE: &str = "saga_reply";

/// Logical topic of the saga commands for a bounded context.
pub fn commands_topic(context: &str) -> String {
    format!("{context}.commands")
}

/// The payload of a saga command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaCommand {
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The participant aggregate's command, as its serde form (`{"command": .., "payload": ..}`).
    pub command: Value,
}

/// The payload of a reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaReply {
    /// The message id of the command this answers.
    pub command_id: Uuid,
    #[serde(flatten)]
    pub outcome: ReplyOutcome,
}

/// How a participant answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReplyOutcome {
    /// The command was applied; these are the events it recorded (none for an idempotent
    /// repeat).
    Succeeded { events: Vec<ReplyEvent> },
    /// The domain rejected the command: a business outcome, never retried.
    Rejected { code: String, message: String },
}

/// An event recorded by a participant, as carried in a reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplyEvent {
    pub event_type: String,
    pub payload: Value,
}
