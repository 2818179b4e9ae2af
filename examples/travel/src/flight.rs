//! A flight (stream `flight-<flight number>`): its seats, and the seats each trip holds on it.
//! A hold that does not fit is refused with `not_enough_seats`; holding or releasing twice
//! changes nothing, so a saga's repeated command is harmless.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use sagaflow::{Aggregate, DomainCommand, DomainError, DomainEvent};

/// A flight's seats and their holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Flight {
    /// Seats on the flight; 0 until it is scheduled.
    pub seats: u32,
    /// Seats held, by trip id.
    pub held: BTreeMap<String, u32>,
}

impl Flight {
    /// Seats neither held nor sold.
    pub fn free(&self) -> u32 {
        self.seats - self.held.values().sum::<u32>()
    }
}

/// What a flight can be asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(
    tag = "command",
    content = "payload",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum FlightCommand {
    /// Puts the flight on sale with this many seats, 1 to 1,000.
    Schedule {
        /// Seats on the flight.
        #[schema(minimum = 1, maximum = 1000)]
        seats: u32,
    },
    /// Holds seats for a trip (a step of the booking saga).
    Hold {
        /// The trip the seats are for.
        trip_id: String,
        /// How many.
        #[schema(minimum = 1)]
        seats: u32,
    },
    /// Lets a trip's seats go (the compensation of `hold`).
    Release {
        /// The trip whose seats go.
        trip_id: String,
    },
}

impl DomainCommand for FlightCommand {
    fn name(&self) -> &'static str {
        match self {
            FlightCommand::Schedule { .. } => "schedule",
            FlightCommand::Hold { .. } => "hold",
            FlightCommand::Release { .. } => "release",
        }
    }
}

/// What happened to a flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "payload", rename_all = "snake_case")]
pub enum FlightEvent {
    /// The flight went on sale.
    FlightScheduled {
        /// Seats on it.
        seats: u32,
    },
    /// Seats were held for a trip.
    SeatsHeld {
        /// The trip.
        trip_id: String,
        /// How many.
        seats: u32,
    },
    /// A trip's seats were let go.
    SeatsReleased {
        /// The trip.
        trip_id: String,
        /// How many.
        seats: u32,
    },
}

impl DomainEvent for FlightEvent {}

/// Why a flight refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlightError {
    /// The flight was never scheduled.
    #[error("no such flight")]
    NotFound,
    /// The flight is scheduled already.
    #[error("the flight is scheduled already")]
    AlreadyScheduled,
    /// Seats out of bounds.
    #[error("a flight has 1 to 1,000 seats, a hold at least 1")]
    InvalidSeats,
    /// Fewer free seats than asked for.
    #[error("only {free} seats are free")]
    NotEnoughSeats {
        /// The free seats.
        free: u32,
    },
}

impl DomainError for FlightError {
    fn code(&self) -> &'static str {
        match self {
            FlightError::NotFound => "flight_not_found",
            FlightError::AlreadyScheduled => "flight_already_scheduled",
            FlightError::InvalidSeats => "invalid_seats",
            FlightError::NotEnoughSeats { .. } => "not_enough_seats",
        }
    }

    fn is_not_found(&self) -> bool {
        matches!(self, FlightError::NotFound)
    }
}

impl Aggregate for Flight {
    const TYPE: &'static str = "flight";
    const CONTEXT: &'static str = "flights";
    type Command = FlightCommand;
    type Event = FlightEvent;
    type Error = FlightError;

    fn handle(&self, command: &FlightCommand) -> Result<Vec<FlightEvent>, FlightError> {
        let scheduled = self.seats > 0;
        match command {
            FlightCommand::Schedule { .. } if scheduled => Err(FlightError::AlreadyScheduled),
            FlightCommand::Schedule { seats } if !(1..=1000).contains(seats) => {
                Err(FlightError::InvalidSeats)
            }
            FlightCommand::Schedule { seats } => {
                Ok(vec![FlightEvent::FlightScheduled { seats: *seats }])
            }
            _ if !scheduled => Err(FlightError::NotFound),
            FlightCommand::Hold { trip_id, .. } if self.held.contains_key(trip_id) => Ok(vec![]),
            FlightCommand::Hold { seats: 0, .. } => Err(FlightError::InvalidSeats),
            FlightCommand::Hold { seats, .. } if *seats > self.free() => {
                Err(FlightError::NotEnoughSeats { free: self.free() })
            }
            FlightCommand::Hold { trip_id, seats } => Ok(vec![FlightEvent::SeatsHeld {
                trip_id: trip_id.clone(),
                seats: *seats,
            }]),
            FlightCommand::Release { trip_id } => Ok(self
                .held
                .get(trip_id)
                .map(|seats| FlightEvent::SeatsReleased {
                    trip_id: trip_id.clone(),
                    seats: *seats,
                })
                .into_iter()
                .collect()),
        }
    }

    fn apply(&mut self, event: &FlightEvent) {
        match event {
            FlightEvent::FlightScheduled { seats } => self.seats = *seats,
            FlightEvent::SeatsHeld { trip_id, seats } => {
                self.held.insert(trip_id.clone(), *seats);
            }
            FlightEvent::SeatsReleased { trip_id, .. } => {
                self.held.remove(trip_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use sagaflow::testing::given;

    use super::*;

    fn held(trip_id: &str, seats: u32) -> FlightEvent {
        FlightEvent::SeatsHeld {
            trip_id: trip_id.into(),
            seats,
        }
    }

    #[test]
    fn seats_are_held_while_they_last() {
        given::<Flight>([FlightEvent::FlightScheduled { seats: 3 }, held("a", 2)])
            .when(FlightCommand::Hold {
                trip_id: "b".into(),
                seats: 1,
            })
            .then([held("b", 1)]);
        given::<Flight>([FlightEvent::FlightScheduled { seats: 3 }, held("a", 2)])
            .when(FlightCommand::Hold {
                trip_id: "b".into(),
                seats: 2,
            })
            .then_error("not_enough_seats");
    }

    #[test]
    fn holding_or_releasing_twice_changes_nothing() {
        given::<Flight>([FlightEvent::FlightScheduled { seats: 3 }, held("a", 2)])
            .when(FlightCommand::Hold {
                trip_id: "a".into(),
                seats: 2,
            })
            .then([]);
        given::<Flight>([FlightEvent::FlightScheduled { seats: 3 }])
            .when(FlightCommand::Release {
                trip_id: "a".into(),
            })
            .then([]);
    }
}
