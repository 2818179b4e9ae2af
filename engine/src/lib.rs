//! sagaflow-engine: the generic runtime of sagaflow. It knows aggregates, events, streams,
//! the outbox, transports, sagas, projections and HTTP, and nothing of any particular domain.
//!
//! Modules depend only downward:
//! - leaves: [`hash`], [`trace`], [`telemetry`], [`metrics`], [`envelope`], [`db`], [`doorbell`], [`backoff`];
//! - core: [`aggregate`], [`store`], [`outbox`], [`command`], [`fold`], [`registry`],
//!   [`replay`], [`testing`];
//! - messaging: [`transport`], [`consumer`], [`relay`];
//! - sagas and read models: [`saga`], outside-world participants ([`external`]), [`projection`];
//! - the HTTP surface and operations: [`http`], [`ops`], the web [`console`];
//! - the application and its command line: [`app`], [`cli`].

#![warn(missing_docs)]

pub mod aggregate;
pub mod app;
pub mod backoff;
pub mod cli;
pub mod command;
pub mod console;
pub mod consumer;
pub mod db;
#[doc(hidden)]
pub mod doc_fixtures;
pub mod doorbell;
pub mod envelope;
pub mod external;
pub mod fold;
pub mod hash;
pub mod http;
pub mod metrics;
pub mod ops;
pub mod outbox;
pub mod projection;
pub mod registry;
pub mod relay;
pub mod replay;
pub mod saga;
pub mod store;
pub mod telemetry;
pub mod testing;
pub mod trace;
pub mod transport;

pub use aggregate::{Aggregate, DomainCommand, DomainError, DomainEvent};
pub use app::{App, Module};
pub use envelope::{Envelope, Metadata, RecordedEvent};
