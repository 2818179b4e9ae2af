//! Sagas: long-running business processes written in Rust as ordered steps with
//! compensations, driven by the [`Orchestrator`] over the transport, with [`Participant`]s
//! running their commands against aggregates. See [`definition`] for the DSL.

pub mod definition;
pub(crate) mod local;
pub mod messages;
pub(crate) mod metrics;
pub mod orchestrator;
pub mod participant;
pub mod read_model;
pub mod state;
pub mod testing;
pub mod timeline;

pub use definition::{
    saga_id, saga_stream, Backoff, Failure, Invoke, Saga, SagaData, SagaDefinition,
};
pub use orchestrator::{load_saga, Commanded, Orchestrator, StartSagas, ORCHESTRATOR_GROUP};
pub use participant::Participant;
pub use state::{
    decide, CompletingReply, DeadlineKind, SagaEvent, SagaFold, SagaInput, SagaState, SagaStatus,
    StepStatus, StepView, ABORTED, ABORTED_BY_OPERATOR, SAGA_STREAM_TYPE,
};
