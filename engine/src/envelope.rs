//! What travels between the parts of sagaflow: a recorded event or a saga message plus its
//! metadata. One envelope is encoded to JSON once and carried as is by every transport.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

/// Tracing and saga context carried with every message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Metadata {
    /// Shared by everything caused, directly or not, by one external request.
    pub correlation_id: Uuid,
    /// The message that directly caused this one (absent for external requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// W3C trace context of the request that caused this message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The saga this message belongs to (a saga's events, its commands, their replies and the
    /// events the commands recorded); absent outside sagas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saga_id: Option<String>,
    /// The saga step a command or reply belongs to, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saga_step: Option<String>,
    /// Which attempt of the step a command or reply belongs to, from 1.
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
    /// parent (see [`crate::trace::caused_traceparent`]).
    pub fn caused_by(cause: &Envelope) -> Self {
        Metadata {
            correlation_id: cause.metadata.correlation_id,
            causation_id: Some(cause.message_id),
            traceparent: crate::trace::caused_traceparent(
                cause.message_id,
                cause.metadata.traceparent.as_deref(),
            ),
            saga_id: cause.metadata.saga_id.clone(),
            saga_step: cause.metadata.saga_step.clone(),
            attempt: cause.metadata.attempt,
        }
    }
}

/// A message as stored and transported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Envelope {
    /// UUIDv7; unique across the whole system, the key of consumer de-duplication.
    pub message_id: Uuid,
    /// The stream of an event; the target aggregate's stream for a saga command, and the saga's
    /// own `saga-<id>` stream for a reply.
    pub stream_id: String,
    /// Position of the event in its stream, starting at 1 (0 for messages that are not
    /// events of a stream, such as saga commands).
    pub stream_version: i64,
    /// The stable name of what the message is: an event enum's `snake_case` tag, `saga_command`
    /// or `saga_reply`.
    pub event_type: String,
    /// The payload's schema version; an older one is upcast when read.
    pub schema_version: i32,
    /// The message's data, in the shape of `schema_version`.
    pub payload: Value,
    /// Correlation, causation, trace and saga context.
    pub metadata: Metadata,
}

impl Envelope {
    /// Decodes an encoded envelope's header: every field but the payload, which must be
    /// there and is checked to be JSON, but is skipped rather than built into a tree (it is
    /// left `Null`). For a hop that passes the encoded bytes on, such as the relay.
    pub fn decode_header(encoded: &str) -> Result<Envelope, serde_json::Error> {
        #[derive(Deserialize)]
        struct Header {
            message_id: Uuid,
            stream_id: String,
            stream_version: i64,
            event_type: String,
            schema_version: i32,
            #[allow(dead_code)]
            payload: serde::de::IgnoredAny,
            metadata: Metadata,
        }
        let h: Header = serde_json::from_str(encoded)?;
        Ok(Envelope {
            message_id: h.message_id,
            stream_id: h.stream_id,
            stream_version: h.stream_version,
            event_type: h.event_type,
            schema_version: h.schema_version,
            payload: Value::Null,
            metadata: h.metadata,
        })
    }
}

/// An event read back from the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RecordedEvent {
    /// The event's position in the whole store, from an identity column: unique and increasing,
    /// but it may have gaps and commit out of order.
    pub global_position: i64,
    /// The event itself, its fields flattened into this object.
    #[serde(flatten)]
    pub envelope: Envelope,
    /// When the event was appended: the database clock at the start of the appending transaction.
    pub recorded_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_header_is_the_envelope_without_its_payload() {
        let envelope = Envelope {
            message_id: Uuid::now_v7(),
            stream_id: "trip-1".into(),
            stream_version: 3,
            event_type: "trip_requested".into(),
            schema_version: 2,
            payload: json!({"rooms": [{"hotel": "A", "nights": 1}], "note": "a \"quoted\" word"}),
            metadata: Metadata {
                causation_id: Some(Uuid::now_v7()),
                traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
                ..Metadata::new_root()
            },
        };
        let header = Envelope::decode_header(&serde_json::to_string(&envelope).unwrap()).unwrap();
        assert_eq!(
            header,
            Envelope {
                payload: Value::Null,
                ..envelope.clone()
            }
        );
        // The payload must be there, and be JSON.
        let mut without = serde_json::to_value(&envelope).unwrap();
        without.as_object_mut().unwrap().remove("payload");
        assert!(Envelope::decode_header(&without.to_string()).is_err());
        let broken = serde_json::to_string(&envelope)
            .unwrap()
            .replace("\"rooms\"", "rooms");
        assert!(Envelope::decode_header(&broken).is_err());
    }

    const HEADER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn envelope(traceparent: Option<&str>) -> Envelope {
        Envelope {
            message_id: Uuid::now_v7(),
            stream_id: "s-1".into(),
            stream_version: 1,
            event_type: "e".into(),
            schema_version: 1,
            payload: serde_json::json!({}),
            metadata: Metadata {
                traceparent: traceparent.map(str::to_owned),
                ..Metadata::new_root()
            },
        }
    }

    #[tokio::test]
    async fn a_caused_message_is_a_child_of_the_consuming_span() {
        let cause = envelope(Some(HEADER));
        let caused = crate::trace::in_consumer("group-a".into(), async {
            Metadata::caused_by(&cause).traceparent.unwrap()
        })
        .await;
        let c = crate::trace::TraceContext::parse(&caused).unwrap();
        assert_eq!(c.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(
            c.span_id,
            crate::trace::consume_span_id(cause.message_id, "group-a")
        );
        assert_ne!(
            c.span_id,
            crate::trace::consume_span_id(cause.message_id, "group-b")
        );
        assert_ne!(c.span_id, crate::trace::publish_span_id(cause.message_id));
        // Outside a consumer the cause's context is kept as it is.
        assert_eq!(
            Metadata::caused_by(&cause).traceparent.as_deref(),
            Some(HEADER)
        );
        assert_eq!(Metadata::caused_by(&envelope(None)).traceparent, None);
    }
}
