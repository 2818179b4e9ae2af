//! sagaflow-engine: the generic runtime of sagaflow. It knows aggregates, events, streams,
//! the outbox and HTTP, and nothing of any particular domain.

pub mod aggregate;
pub mod command;
pub mod consumer;
pub mod db;
pub mod doorbell;
pub mod envelope;
pub mod housekeeping;
pub mod http;
pub mod metrics;
pub mod outbox;
pub mod replay;
pub mod saga;
pub mod store;
pub mod telemetry;
pub mod testing;
pub mod transport;

pub use aggregate::{Aggregate, DomainCommand, DomainError, DomainEvent};
pub use envelope::{Envelope, Metadata, RecordedEvent};
