//! The aggregate abstraction: a pure decision function and a pure evolution function.
//!
//! An aggregate never performs I/O. The runtime ([`crate::command::CommandBus`]) loads it by
//! replaying its stream, asks it to decide, and appends what it decided under an
//! optimistic-concurrency guard.

use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

/// A domain event of some aggregate.
///
/// Events are serde enums declared with
/// `#[serde(tag = "event_type", content = "payload", rename_all = "snake_case")]`
/// (adjacently tagged): the tag is the stable `event_type` string stored in the event store, the
/// content is the JSON payload. Renaming a Rust variant must keep its `rename` so stored
/// history stays readable.
pub trait DomainEvent: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// The schema version written with new events of `event_type`. Older stored versions are
    /// turned into the current shape by [`DomainEvent::upcast`] before they are deserialized.
    fn schema_version(_event_type: &str) -> i32 {
        1
    }

    /// Turns a stored payload of `event_type` at schema version `from` into the shape of
    /// version `from + 1`. Every reader that decodes through [`decode_event_at`] (the command
    /// bus, the participants, time travel, replay, the orchestrator) chains it from the stored
    /// version up to [`DomainEvent::schema_version`], so `apply` only ever sees the current
    /// shape and stored history is never rewritten. The default is the identity: an event
    /// type whose shape never changed needs nothing.
    fn upcast(_event_type: &str, _from: i32, payload: Value) -> Value {
        payload
    }
}

/// A command the aggregate decides on. Commands are serde enums declared with
/// `#[serde(tag = "command", content = "payload", rename_all = "snake_case")]`, which is exactly
/// the body of `POST /commands/{aggregate_type}/{aggregate_id}`; their
/// [`ToSchema`](utoipa::ToSchema) is that body's schema in the OpenAPI document, so a request
/// built from it is one the route accepts. Commands are also serialized: sagas send them to
/// participants through the outbox.
pub trait DomainCommand:
    Serialize + DeserializeOwned + utoipa::ToSchema + Send + Sync + 'static
{
    /// The command's name, for logs and metrics.
    fn name(&self) -> &'static str;
}

/// A rejection decided by the domain. It is a business outcome, not a fault: it is never
/// retried and the HTTP layer reports it as `422` with [`DomainError::code`].
pub trait DomainError: std::error::Error + Send + Sync + 'static {
    /// A stable, machine-readable snake_case code (`insufficient_stock`, `order_not_pending`).
    fn code(&self) -> &'static str;
    /// Whether the error means "this aggregate does not exist" (reported as `404`).
    fn is_not_found(&self) -> bool {
        false
    }
}

/// An event-sourced aggregate.
///
/// `handle` must be a pure function of the current state and the command, and `apply` must be
/// infallible: an event that was recorded is a fact, and replaying the same events always
/// yields the same state.
/// `Serialize` exposes the state to the debugging tools (time travel, replay); it is never
/// stored, so its shape may change freely between releases.
pub trait Aggregate: Default + Clone + Serialize + Send + Sync + 'static {
    /// The aggregate type name; it prefixes stream ids (`<TYPE>-<id>`) and names routes.
    const TYPE: &'static str;
    /// The bounded context whose topic carries this aggregate's events (`<context>.events`).
    const CONTEXT: &'static str;
    /// What the aggregate decides on: the body of its command route and of saga commands to it.
    type Command: DomainCommand;
    /// What the aggregate records in its stream; the only input of [`Aggregate::apply`].
    type Event: DomainEvent;
    /// Why the aggregate refuses a command: a business outcome, never retried.
    type Error: DomainError;

    /// Decides which events a command produces. An empty vector means "nothing to do"
    /// (for example a repeated idempotent release).
    fn handle(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Evolves the state by one recorded event.
    fn apply(&mut self, event: &Self::Event);

    /// Validates the textual aggregate id taken from a URL before anything is loaded. The
    /// default accepts any non-empty id of at most 200 characters without control characters.
    fn validate_id(id: &str) -> Result<(), String> {
        if id.is_empty() || id.chars().count() > 200 || id.chars().any(char::is_control) {
            Err(format!("invalid {} id", Self::TYPE))
        } else {
            Ok(())
        }
    }

    /// The schema of the ids [`Aggregate::validate_id`] accepts, for the OpenAPI document: an
    /// aggregate that narrows the rule describes it here too, so that every id the document
    /// allows is one the routes accept.
    fn id_schema() -> utoipa::openapi::Schema {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .min_length(Some(1))
            .max_length(Some(200))
            .pattern(Some(r"^[^\x00-\x1f\x7f-\x9f]+$"))
            .examples([serde_json::json!("id-1")])
            .into()
    }
}

/// The stream id of an aggregate instance: `<type>-<id>`.
pub fn stream_id<A: Aggregate>(id: &str) -> String {
    format!("{}-{}", A::TYPE, id)
}

/// The logical topic an aggregate's events are published on: `<context>.events`.
pub fn events_topic<A: Aggregate>() -> String {
    format!("{}.events", A::CONTEXT)
}

/// Splits an event enum value into its `(event_type, payload)` parts.
pub fn encode_event<E: DomainEvent>(event: &E) -> (String, Value) {
    let value = serde_json::to_value(event).expect("domain events serialize to JSON");
    match value {
        Value::Object(mut map) => {
            let event_type = match map.remove("event_type") {
                Some(Value::String(t)) => t,
                _ => panic!(
                    "domain events must be #[serde(tag = \"event_type\", content = \"payload\")]"
                ),
            };
            let payload = map.remove("payload").unwrap_or(Value::Null);
            (event_type, payload)
        }
        _ => panic!("domain events must serialize to an object"),
    }
}

/// Rebuilds an event enum value from a `(event_type, payload)` pair whose payload is in the
/// current schema (a freshly recorded event). For stored events use [`decode_event_at`].
pub fn decode_event<E: DomainEvent>(
    event_type: &str,
    payload: &Value,
) -> Result<E, serde_json::Error> {
    let mut map = serde_json::Map::with_capacity(2);
    map.insert("event_type".into(), Value::String(event_type.to_owned()));
    if !payload.is_null() {
        map.insert("payload".into(), payload.clone());
    }
    serde_json::from_value(Value::Object(map))
}

/// Rebuilds an event enum value from a stored `(event_type, schema_version, payload)`: a
/// payload older than `E::schema_version(event_type)` is upcast step by step
/// ([`DomainEvent::upcast`]) first. A payload at the current version, or at a newer one
/// written by a later release, is decoded as it is.
pub fn decode_event_at<E: DomainEvent>(
    event_type: &str,
    schema_version: i32,
    payload: &Value,
) -> Result<E, serde_json::Error> {
    let current = E::schema_version(event_type);
    if schema_version >= current {
        return decode_event(event_type, payload);
    }
    decode_event(
        event_type,
        &upcast_payload::<E>(event_type, schema_version, payload.clone()),
    )
}

/// The payload of a stored `event_type` at `schema_version`, upcast to the current schema.
pub fn upcast_payload<E: DomainEvent>(
    event_type: &str,
    schema_version: i32,
    payload: Value,
) -> Value {
    let current = E::schema_version(event_type);
    (schema_version.max(0)..current).fold(payload, |p, from| E::upcast(event_type, from, p))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    /// `renamed` went v1 `{"n"}` -> v2 `{"count"}` -> v3 `{"count", "unit"}`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "event_type", content = "payload", rename_all = "snake_case")]
    enum Evolving {
        Renamed { count: i64, unit: String },
        Stable { n: i64 },
    }

    impl DomainEvent for Evolving {
        fn schema_version(event_type: &str) -> i32 {
            if event_type == "renamed" {
                3
            } else {
                1
            }
        }

        fn upcast(event_type: &str, from: i32, payload: Value) -> Value {
            match (event_type, from) {
                ("renamed", 1) => json!({"count": payload["n"]}),
                ("renamed", 2) => json!({"count": payload["count"], "unit": "piece"}),
                _ => payload,
            }
        }
    }

    #[test]
    fn upcasters_are_chained_from_the_stored_version_to_the_current_one() {
        let expected = Evolving::Renamed {
            count: 7,
            unit: "piece".into(),
        };
        for (version, payload) in [
            (1, json!({"n": 7})),
            (2, json!({"count": 7})),
            (3, json!({"count": 7, "unit": "piece"})),
        ] {
            assert_eq!(
                decode_event_at::<Evolving>("renamed", version, &payload).unwrap(),
                expected,
                "from v{version}"
            );
        }
        // Other types and current payloads pass through untouched.
        assert_eq!(
            decode_event_at::<Evolving>("stable", 1, &json!({"n": 1})).unwrap(),
            Evolving::Stable { n: 1 }
        );
        assert!(decode_event::<Evolving>("renamed", &json!({"n": 7})).is_err());
    }
}
