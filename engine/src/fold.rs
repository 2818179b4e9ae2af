//! Folding a stream's events into its state with the aggregate type erased: what time travel,
//! replay and the tools need of any registered stream type.

use serde_json::Value;

use crate::aggregate::{Aggregate, DomainEvent};
use crate::envelope::RecordedEvent;
use crate::store::{decode, StoreError};

/// A fold over one stream's events with its type erased.
pub trait StreamFold: Send {
    /// Evolves the state by one stored event (upcast to the current schema first).
    fn apply(&mut self, event: &RecordedEvent) -> Result<(), StoreError>;
    /// The state so far, as JSON.
    fn state(&self) -> Value;
    /// The schema version new events of `event_type` are written at.
    fn current_schema_version(&self, event_type: &str) -> i32;
}

/// Folds the events of aggregate type `A`.
pub struct AggregateFold<A: Aggregate>(A);

impl<A: Aggregate> Default for AggregateFold<A> {
    fn default() -> Self {
        AggregateFold(A::default())
    }
}

impl<A: Aggregate> StreamFold for AggregateFold<A> {
    fn apply(&mut self, event: &RecordedEvent) -> Result<(), StoreError> {
        self.0.apply(&decode::<A>(event)?);
        Ok(())
    }

    fn state(&self) -> Value {
        serde_json::to_value(&self.0).expect("aggregate states serialize")
    }

    fn current_schema_version(&self, event_type: &str) -> i32 {
        A::Event::schema_version(event_type)
    }
}
