//! # sagaflow
//!
//! An event-sourced CQRS and saga orchestration engine on PostgreSQL (and, if you want it,
//! Kafka). A team writes its aggregates, sagas and read models in its own crate and gets a
//! whole service from one `main.rs`: commands and queries over HTTP, a transactional outbox
//! relayed to a log, sagas driven with compensations, read models kept and rebuilt, time
//! travel over any stream, metrics, an OpenAPI document generated from the code, and the
//! command line `serve | migrate | replay | projections rebuild | bench`.
//!
//! ## A service
//!
//! An aggregate decides (`handle`) and evolves (`apply`), purely; a saga is a list of steps,
//! each sending a command to a participant and undone by its compensation when a later step
//! fails; an [`App`] registers them and derives everything else (topics, consumer groups,
//! routes, components, replay, the OpenAPI document):
//!
//! ```no_run
//! use std::process::ExitCode;
//!
//! use sagaflow::saga::{Invoke, SagaDefinition};
//! use sagaflow::{Aggregate, App, DomainCommand, DomainError, DomainEvent};
//! use serde::{Deserialize, Serialize};
//!
//! /// A counter that refuses to go past ten.
//! #[derive(Debug, Clone, Default, Serialize)]
//! struct Counter {
//!     value: u32,
//! }
//!
//! #[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
//! #[serde(tag = "command", content = "payload", rename_all = "snake_case")]
//! enum CounterCommand {
//!     Add { n: u32 },
//!     Double,
//! }
//!
//! impl DomainCommand for CounterCommand {
//!     fn name(&self) -> &'static str {
//!         match self {
//!             CounterCommand::Add { .. } => "add",
//!             CounterCommand::Double => "double",
//!         }
//!     }
//! }
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! #[serde(tag = "event_type", content = "payload", rename_all = "snake_case")]
//! enum CounterEvent {
//!     Added { n: u32 },
//! }
//!
//! impl DomainEvent for CounterEvent {}
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("a counter never goes past ten")]
//! struct TooMuch;
//!
//! impl DomainError for TooMuch {
//!     fn code(&self) -> &'static str {
//!         "too_much"
//!     }
//! }
//!
//! impl Aggregate for Counter {
//!     const TYPE: &'static str = "counter";
//!     const CONTEXT: &'static str = "counting";
//!     type Command = CounterCommand;
//!     type Event = CounterEvent;
//!     type Error = TooMuch;
//!
//!     fn handle(&self, command: &CounterCommand) -> Result<Vec<CounterEvent>, TooMuch> {
//!         let n = match command {
//!             CounterCommand::Add { n } => *n,
//!             CounterCommand::Double => self.value,
//!         };
//!         if self.value + n > 10 {
//!             return Err(TooMuch);
//!         }
//!         Ok(vec![CounterEvent::Added { n }])
//!     }
//!
//!     fn apply(&mut self, event: &CounterEvent) {
//!         let CounterEvent::Added { n } = event;
//!         self.value += n;
//!     }
//! }
//!
//! /// Every counter that is added to is then doubled, once.
//! #[derive(Clone, Serialize, Deserialize)]
//! struct Doubling {
//!     counter: String,
//! }
//!
//! fn main() -> ExitCode {
//!     let doubling = SagaDefinition::<Doubling>::new("doubling")
//!         .started_by::<Counter>(|_event, envelope| {
//!             let counter = envelope.stream_id.strip_prefix("counter-")?.to_owned();
//!             Some(Doubling { counter })
//!         })
//!         .step("double")
//!         .invoke::<Counter>(|d| Invoke::new(&d.counter, CounterCommand::Double))
//!         .build();
//!     App::new("counters", "0.1.0")
//!         .participant::<Counter>()
//!         .saga(doubling)
//!         .run_cli()
//! }
//! ```
//!
//! `counters serve` creates its database, migrates it, and serves
//! `POST /commands/counter/{aggregate_id}`, `GET /streams/{stream_id}/state`, `GET /sagas`,
//! `GET /openapi.json`, `GET /metrics` and the rest, on `127.0.0.1:8080`.
//!
//! ## Where to look
//!
//! - [`App`]: registering the parts, [`App::run_cli`], [`App::build`] (tests, embedding);
//!   [`Module`] for parts that install together.
//! - [`Aggregate`], [`DomainCommand`], [`DomainEvent`], [`DomainError`]: the domain, and
//!   [`testing`] for `given / when / then`.
//! - [`saga`]: the saga DSL ([`saga::SagaDefinition`]) and its test harness.
//! - [`projection`]: read models ([`projection::Projector`]).
//! - [`http`]: your own routes on the engine's error mapping, idempotency and tracing
//!   ([`http::run_command`]).
//! - [`runtime`]: the engine underneath (event store, outbox, transports, consumers), for
//!   tools and tests.
//!
//! ## Guarantees
//!
//! An append succeeds only at the stream's expected version; events and their outbox rows
//! commit together; every consumer applies a message's effects exactly once, with its offset,
//! in one transaction; a saga's state is its own event stream; a command sent with an
//! `Idempotency-Key` is applied once. Each item's documentation says what it guarantees.

#![warn(missing_docs)]

#[doc(inline)]
pub use sagaflow_engine::aggregate::{Aggregate, DomainCommand, DomainError, DomainEvent};
#[doc(inline)]
pub use sagaflow_engine::app::{App, Module};
#[doc(inline)]
pub use sagaflow_engine::envelope::{Envelope, Metadata, RecordedEvent};

/// Building and running an application: what it registers, what a built one holds, what one
/// process runs.
pub mod app {
    #[doc(inline)]
    pub use sagaflow_engine::app::{
        App, AppError, Component, Components, Module, Options, Request, RoutesFn, Running, Service,
        Services, Workload,
    };
}

/// Sagas: business processes written as ordered steps with compensations, and their test
/// harness.
pub mod saga {
    #[doc(inline)]
    pub use sagaflow_engine::saga::testing::SagaTest;
    #[doc(inline)]
    pub use sagaflow_engine::saga::{
        saga_id, saga_stream, Backoff, Failure, Invoke, Saga, SagaData, SagaDefinition, SagaState,
        SagaStatus, StepStatus, StepView, ABORTED, ABORTED_BY_OPERATOR,
    };
}

/// Outside-world participants: saga steps served by calling an external system, with the
/// command's message id as idempotency key, retries with backoff and a circuit breaker.
pub mod external {
    #[doc(inline)]
    pub use sagaflow_engine::external::{
        Backoff, BreakerSettings, BreakerState, Call, CallError, ExternalParticipant,
        ExternalSettings,
    };
}

/// Read models: one row per stream, kept by a projector, rebuildable at any time.
pub mod projection {
    #[doc(inline)]
    pub use sagaflow_engine::projection::{
        ProjectionError, Projector, RebuildOptions, StoredEvent, Versioned, EVENT_COLUMNS,
    };
}

/// HTTP: routes of your own on the engine's error mapping, idempotency and tracing.
pub mod http {
    #[doc(inline)]
    pub use sagaflow_engine::http::admin::AdminToken;
    #[doc(inline)]
    pub use sagaflow_engine::http::query::{self, QueryState};
    #[doc(inline)]
    pub use sagaflow_engine::http::{
        accepted_body, run_command, AcceptedCommand, ApiError, CommandLimits, CommandRequest,
        ErrorBody, PathParams, QueryParams,
    };
}

/// Testing aggregates and sagas without a database.
pub mod testing {
    #[doc(inline)]
    pub use sagaflow_engine::saga::testing::SagaTest;
    #[doc(inline)]
    pub use sagaflow_engine::testing::{given, Given, Then};
}

/// Repositories: loading aggregates and running commands on them.
pub mod command {
    #[doc(inline)]
    pub use sagaflow_engine::command::{
        CommandContext, CommandError, CommandOutcome, Executed, Loaded, Repository,
    };
}

/// The engine underneath: event store, outbox, transports, consumers, the command line. Its
/// modules are public for tools and tests that need them; a service needs the items above.
pub mod runtime {
    #[doc(inline)]
    pub use sagaflow_engine::*;
}

/// The command line's pieces, for tools that print what `replay` prints.
pub mod cli {
    #[doc(inline)]
    pub use sagaflow_engine::cli::{replay_stream, ReplayFormat};
}
