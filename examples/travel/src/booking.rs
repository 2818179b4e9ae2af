//! The booking of a trip, as the agency runs it: approve the party, then confirm the trip. A
//! refusal at either step rejects the trip.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use sagaflow::saga::{Backoff, Invoke, Saga, SagaDefinition};

use crate::trip::{Trip, TripCommand, TripEvent};

/// The saga's name, part of every booking's saga id.
pub const TRIP_BOOKING: &str = "trip_booking";

/// What a booking remembers: the trip it books.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Booking {
    /// The trip's id (its stream is `trip-<id>`).
    pub trip_id: String,
}

/// The saga id of a trip's booking: derived from the trip's stream, so it is known before the
/// saga starts and a redelivered request never books twice.
pub fn saga_id_of(trip_id: &str) -> uuid::Uuid {
    sagaflow::saga::saga_id(TRIP_BOOKING, &format!("trip-{trip_id}"))
}

/// The booking saga: started by `trip_requested`, the event of the trip's starter aggregate.
pub fn trip_booking() -> Arc<Saga> {
    SagaDefinition::<Booking>::new(TRIP_BOOKING)
        .started_by::<Trip>(|event, envelope| match event {
            TripEvent::TripRequested { .. } => Some(Booking {
                trip_id: envelope.stream_id.strip_prefix("trip-")?.to_owned(),
            }),
            _ => None,
        })
        .step("approve")
        .invoke::<Trip>(|b| Invoke::new(&b.trip_id, TripCommand::Approve))
        .timeout(Duration::from_secs(10))
        .retry(Backoff::exponential(Duration::from_millis(500), 3))
        .step("confirm")
        .invoke::<Trip>(|b| Invoke::new(&b.trip_id, TripCommand::Confirm))
        .on_compensated::<Trip>(|b, why| {
            Some(Invoke::new(
                &b.trip_id,
                TripCommand::Reject {
                    reason: why.code.clone(),
                },
            ))
        })
        .build()
}
