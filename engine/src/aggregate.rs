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
    /// turned into the current shape by upcasters before they are deserialized.
    fn schema_version(_event_type: &str) -> i32 {
        1
    }
}

/// A command the aggregate decides on. Commands are serde enums declared with
/// `#[serde(tag = "command", content = "payload", rename_all = "snake_case")]`, which is exactly
/// the body of `POST /commands/{aggregate_type}/{aggregate_id}`.
/// Commands are also serialized: sagas send them to participants through the outbox.
pub trait DomainCommand: Serialize + DeserializeOwned + Send + Sync + 'static {
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
pub trait Aggregate: Default + Clone + Send + Sync + 'static {
    /// The aggregate type name; it prefixes stream ids (`<TYPE>-<id>`) and names routes.
    const TYPE: &'static str;
    /// The bounded context whose topic carries this aggregate's events (`<context>.events`).
    const CONTEXT: &'static str;
    type Command: DomainCommand;
    type Event: DomainEvent;
    type Error: DomainError;

    /// Decides which events a command produces. An empty vector means "nothing to do"
    /// (for example a repeated idempotent release).
    fn handle(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Evolves the state by one recorded event.
    fn apply(&mut self, event: &Self::Event);

    /// Validates the textual aggregate id taken from a URL before anything is loaded. The
    /// default accepts any non-empty id of at most 200 characters without control characters.
    fn validate_id(id: &str) -> Result<(), String> {
        if id.is_empty() || id.len() > 200 || id.chars().any(char::is_control) {
            Err(format!("invalid {} id", Self::TYPE))
        } else {
            Ok(())
        }
    }
}

/// The stream id of an aggregate instance: `<type>-<id>`.
pub fn stream_id<A: Aggregate>(id: &str) -> String {
    format!("{}-{}", A::TYPE, id)
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

/// Rebuilds an event enum value from a stored `(event_type, payload)` pair.
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
