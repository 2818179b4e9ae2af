//! What travels between the parts of sagaflow: a recorded event or a saga message plus its
//! metadata. One envelope is encoded to JSON once and carried as is by every transport.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Tracing and saga context carried with every message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Shared by everything caused, directly or not, by one external request.
    pub correlation_id: Uuid,
    /// The message that directly caused this one (absent for external requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// W3C trace context of the request that caused this message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saga_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saga_step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
}

impl Metadata {
    /// Metadata for a message caused by an external request that carried no correlation id.
    pub fn new_root() -> Self {
        Metadata {
            correlation_id: Uuid::now_v7(),
            ..Default::default()
        }
    }

    /// Metadata for a message caused by `cause`: same correlation and trace, new causation.
    /// Inside a consumer's handler the trace context names the span applying `cause` as the
    /// parent (see [`crate::telemetry::caused_traceparent`]).
    pub fn caused_by(cause: &Envelope) -> Self {
        Metadata {
            correlation_id: cause.metadata.correlation_id,
            causation_id: Some(cause.message_id),
            traceparent: crate::telemetry::caused_traceparent(cause),
            saga_id: cause.metadata.saga_id.clone(),
            saga_step: cause.metadata.saga_step.clone(),
            attempt: cause.metadata.attempt,
        }
    }
}

/// A message as stored and transported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// UUIDv7; unique across the whole system, the key of consumer de-duplication.
    pub message_id: Uuid,
    pub stream_id: String,
    /// Position of the event in its stream, starting at 1 (0 for messages that are not
    /// events of a stream, such as saga commands).
    pub stream_version: i64,
    pub event_type: String,
    pub schema_version: i32,
    pub payload: Value,
    pub metadata: Metadata,
}

/// An event read back from the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    pub global_position: i64,
    #[serde(flatten)]
    pub envelope: Envelope,
    pub recorded_at: DateTime<Utc>,
}
