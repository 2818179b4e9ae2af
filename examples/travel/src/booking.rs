//! The booking of a trip, as the agency runs it:
//!
//! 1. `hold_seats` on the flight — not enough seats: the trip is rejected;
//! 2. `hold_rooms` in the hotel — no rooms: the seats are released, the trip rejected;
//! 3. `charge_card` at the payment provider — declined: the rooms are released, then the
//!    seats, and the trip is rejected;
//! 4. `confirm_trip` — the trip is booked.
//!
//! Cancelling the trip (its `trip_cancelled`) while this runs aborts the saga: what was done
//! is undone in reverse order, the step that was running included: the charge is refunded if
//! it was made, the rooms and the seats are released. The trip itself is cancelled already,
//! so nothing rejects it. A confirmed trip cannot be cancelled (`wrong_status`): once
//! `confirm_trip` succeeded the saga has completed and there is nothing left to undo.
//!
//! Commands to one aggregate keep their order (they share a partition), so a compensation
//! never overtakes the command it undoes: a refund reaches the provider after the charge.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use sagaflow::saga::ABORTED;
use sagaflow::saga::{Backoff, Invoke, Saga, SagaDefinition};

use crate::flight::{Flight, FlightCommand};
use crate::hotel::{Hotel, HotelCommand};
use crate::payment::{Payment, PaymentCommand};
use crate::trip::{Trip, TripCommand, TripEvent};

/// The saga's name, part of every booking's saga id: never change it.
pub const TRIP_BOOKING: &str = "trip_booking";

/// What a booking remembers: the trip, as requested.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Booking {
    /// The trip's id (its stream is `trip-<id>`).
    pub trip_id: String,
    /// The flight.
    pub flight: String,
    /// Seats on it.
    pub seats: u32,
    /// The hotel.
    pub hotel: String,
    /// Rooms in it.
    pub rooms: u32,
    /// What the card is charged, in cents.
    pub amount_cents: i64,
    /// The card's token at the payment provider.
    pub card_token: String,
}

/// The saga id of a trip's booking: derived from the trip's stream, so it is known before the
/// saga starts and a redelivered request never books twice.
pub fn saga_id_of(trip_id: &str) -> uuid::Uuid {
    sagaflow::saga::saga_id(TRIP_BOOKING, &format!("trip-{trip_id}"))
}

/// The booking saga: started by `trip_requested`, the event of the starter aggregate
/// ([`Trip`]), aborted by its `trip_cancelled`.
pub fn trip_booking() -> Arc<Saga> {
    SagaDefinition::<Booking>::new(TRIP_BOOKING)
        .started_by::<Trip>(|event, envelope| match event {
            TripEvent::TripRequested {
                flight,
                seats,
                hotel,
                rooms,
                amount_cents,
                card_token,
            } => Some(Booking {
                trip_id: envelope.stream_id.strip_prefix("trip-")?.to_owned(),
                flight: flight.clone(),
                seats: *seats,
                hotel: hotel.clone(),
                rooms: *rooms,
                amount_cents: *amount_cents,
                card_token: card_token.clone(),
            }),
            _ => None,
        })
        .aborted_by::<Trip>(|event| match event {
            TripEvent::TripCancelled { reason } => {
                Some(reason.clone().unwrap_or_else(|| "trip cancelled".into()))
            }
            _ => None,
        })
        .step("hold_seats")
        .invoke::<Flight>(|b| {
            Invoke::new(
                &b.flight,
                FlightCommand::Hold {
                    trip_id: b.trip_id.clone(),
                    seats: b.seats,
                },
            )
        })
        .compensate::<Flight>(|b| {
            Invoke::new(
                &b.flight,
                FlightCommand::Release {
                    trip_id: b.trip_id.clone(),
                },
            )
        })
        .step("hold_rooms")
        .invoke::<Hotel>(|b| {
            Invoke::new(
                &b.hotel,
                HotelCommand::Hold {
                    trip_id: b.trip_id.clone(),
                    rooms: b.rooms,
                },
            )
        })
        .compensate::<Hotel>(|b| {
            Invoke::new(
                &b.hotel,
                HotelCommand::Release {
                    trip_id: b.trip_id.clone(),
                },
            )
        })
        .step("charge_card")
        .invoke::<Payment>(|b| {
            Invoke::new(
                &b.trip_id,
                PaymentCommand::Charge {
                    amount_cents: b.amount_cents,
                    card_token: b.card_token.clone(),
                },
            )
        })
        .compensate::<Payment>(|b| Invoke::new(&b.trip_id, PaymentCommand::Refund))
        // The provider may be down for a while: every attempt carries the same message id, so
        // waiting long is safe, and an outage must not turn into a rejected trip.
        .timeout(Duration::from_secs(20))
        .retry(Backoff::exponential(Duration::from_secs(1), 10))
        .step("confirm_trip")
        .invoke::<Trip>(|b| Invoke::new(&b.trip_id, TripCommand::Confirm))
        .on_compensated::<Trip>(|b, why| {
            // A cancelled trip is cancelled already; anything else rejects it.
            (why.code != ABORTED).then(|| {
                Invoke::new(
                    &b.trip_id,
                    TripCommand::Reject {
                        reason: why.code.clone(),
                    },
                )
            })
        })
        .build()
}

#[cfg(test)]
mod tests {
    use sagaflow::saga::{SagaStatus, SagaTest};

    use super::*;

    fn booking(card_token: &str) -> Booking {
        Booking {
            trip_id: "t-1".into(),
            flight: "TP101".into(),
            seats: 2,
            hotel: "lisbon-palace".into(),
            rooms: 1,
            amount_cents: 48_000,
            card_token: card_token.into(),
        }
    }

    fn hold_seats() -> FlightCommand {
        FlightCommand::Hold {
            trip_id: "t-1".into(),
            seats: 2,
        }
    }

    fn hold_rooms() -> HotelCommand {
        HotelCommand::Hold {
            trip_id: "t-1".into(),
            rooms: 1,
        }
    }

    fn release_seats() -> Vec<(&'static str, FlightCommand)> {
        vec![(
            "TP101",
            FlightCommand::Release {
                trip_id: "t-1".into(),
            },
        )]
    }

    fn release_rooms() -> Vec<(&'static str, HotelCommand)> {
        vec![(
            "lisbon-palace",
            HotelCommand::Release {
                trip_id: "t-1".into(),
            },
        )]
    }

    fn charge() -> PaymentCommand {
        PaymentCommand::Charge {
            amount_cents: 48_000,
            card_token: "tok_visa".into(),
        }
    }

    #[test]
    fn a_trip_is_held_charged_then_confirmed() {
        SagaTest::start(trip_booking(), &booking("tok_visa"))
            .expect_command::<Flight>("TP101", hold_seats())
            .all_ok()
            .expect_command::<Hotel>("lisbon-palace", hold_rooms())
            .all_ok()
            .expect_command::<Payment>("t-1", charge())
            .all_ok()
            .expect_command::<Trip>("t-1", TripCommand::Confirm)
            .all_ok()
            .expect_status(SagaStatus::Completed);
    }

    #[test]
    fn no_rooms_releases_the_seats_and_rejects_the_trip() {
        SagaTest::start(trip_booking(), &booking("tok_visa"))
            .all_ok()
            .reply_rejected(0, "no_rooms")
            .expect_compensation::<Flight>(release_seats())
            .all_ok()
            .expect_compensated_with::<Trip>(
                "t-1",
                TripCommand::Reject {
                    reason: "no_rooms".into(),
                },
            );
    }

    #[test]
    fn a_declined_card_releases_the_rooms_then_the_seats() {
        SagaTest::start(trip_booking(), &booking("tok_visa"))
            .all_ok()
            .all_ok()
            .reply_rejected(0, "card_declined")
            .expect_compensation::<Hotel>(release_rooms())
            .all_ok()
            .expect_compensation::<Flight>(release_seats())
            .all_ok()
            .expect_compensated_with::<Trip>(
                "t-1",
                TripCommand::Reject {
                    reason: "card_declined".into(),
                },
            );
    }

    #[test]
    fn a_cancel_during_the_charge_refunds_releases_and_rejects_nothing() {
        SagaTest::start(trip_booking(), &booking("tok_visa"))
            .all_ok()
            .all_ok()
            .expect_command::<Payment>("t-1", charge())
            .abort("changed my mind")
            .expect_compensation::<Payment>(vec![("t-1", PaymentCommand::Refund)])
            .all_ok()
            .expect_compensation::<Hotel>(release_rooms())
            .all_ok()
            .expect_compensation::<Flight>(release_seats())
            .all_ok()
            .expect_status(SagaStatus::Compensated);
    }
}
