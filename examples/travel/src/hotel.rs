//! A hotel (stream `hotel-<hotel id>`): its rooms, and the rooms each trip holds in it.
//! A hold that does not fit is refused with `no_rooms`; holding or releasing twice
//! changes nothing, so a saga's repeated command is harmless.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use sagaflow::{Aggregate, DomainCommand, DomainError, DomainEvent};

/// A hotel's rooms and their holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Hotel {
    /// Rooms in the hotel; 0 until it opens.
    pub rooms: u32,
    /// Rooms held, by trip id.
    pub held: BTreeMap<String, u32>,
}

impl Hotel {
    /// Rooms neither held nor sold.
    pub fn free(&self) -> u32 {
        self.rooms - self.held.values().sum::<u32>()
    }
}

/// What a hotel can be asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(
    tag = "command",
    content = "payload",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum HotelCommand {
    /// Opens the hotel for booking with this many rooms, 1 to 1,000.
    Open {
        /// Rooms on the hotel.
        #[schema(minimum = 1, maximum = 1000)]
        rooms: u32,
    },
    /// Holds rooms for a trip (a step of the booking saga).
    Hold {
        /// The trip the rooms are for.
        trip_id: String,
        /// How many.
        #[schema(minimum = 1)]
        rooms: u32,
    },
    /// Lets a trip's rooms go (the compensation of `hold`).
    Release {
        /// The trip whose rooms go.
        trip_id: String,
    },
}

impl DomainCommand for HotelCommand {
    fn name(&self) -> &'static str {
        match self {
            HotelCommand::Open { .. } => "open",
            HotelCommand::Hold { .. } => "hold",
            HotelCommand::Release { .. } => "release",
        }
    }
}

/// What happened to a hotel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "payload", rename_all = "snake_case")]
pub enum HotelEvent {
    /// The hotel opened for booking.
    HotelOpened {
        /// Rooms on it.
        rooms: u32,
    },
    /// Rooms were held for a trip.
    RoomsHeld {
        /// The trip.
        trip_id: String,
        /// How many.
        rooms: u32,
    },
    /// A trip's rooms were let go.
    RoomsReleased {
        /// The trip.
        trip_id: String,
        /// How many.
        rooms: u32,
    },
}

impl DomainEvent for HotelEvent {}

/// Why a hotel refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HotelError {
    /// The hotel never opened.
    #[error("no such hotel")]
    NotFound,
    /// The hotel is open already.
    #[error("the hotel is open already")]
    AlreadyOpen,
    /// Rooms out of bounds.
    #[error("a hotel has 1 to 1,000 rooms, a hold at least 1")]
    InvalidRooms,
    /// Fewer free rooms than asked for.
    #[error("only {free} rooms are free")]
    NoRooms {
        /// The free rooms.
        free: u32,
    },
}

impl DomainError for HotelError {
    fn code(&self) -> &'static str {
        match self {
            HotelError::NotFound => "hotel_not_found",
            HotelError::AlreadyOpen => "hotel_already_open",
            HotelError::InvalidRooms => "invalid_rooms",
            HotelError::NoRooms { .. } => "no_rooms",
        }
    }

    fn is_not_found(&self) -> bool {
        matches!(self, HotelError::NotFound)
    }
}

impl Aggregate for Hotel {
    const TYPE: &'static str = "hotel";
    const CONTEXT: &'static str = "hotels";
    type Command = HotelCommand;
    type Event = HotelEvent;
    type Error = HotelError;

    fn handle(&self, command: &HotelCommand) -> Result<Vec<HotelEvent>, HotelError> {
        let open = self.rooms > 0;
        match command {
            HotelCommand::Open { .. } if open => Err(HotelError::AlreadyOpen),
            HotelCommand::Open { rooms } if !(1..=1000).contains(rooms) => {
                Err(HotelError::InvalidRooms)
            }
            HotelCommand::Open { rooms } => Ok(vec![HotelEvent::HotelOpened { rooms: *rooms }]),
            _ if !open => Err(HotelError::NotFound),
            HotelCommand::Hold { trip_id, .. } if self.held.contains_key(trip_id) => Ok(vec![]),
            HotelCommand::Hold { rooms: 0, .. } => Err(HotelError::InvalidRooms),
            HotelCommand::Hold { rooms, .. } if *rooms > self.free() => {
                Err(HotelError::NoRooms { free: self.free() })
            }
            HotelCommand::Hold { trip_id, rooms } => Ok(vec![HotelEvent::RoomsHeld {
                trip_id: trip_id.clone(),
                rooms: *rooms,
            }]),
            HotelCommand::Release { trip_id } => Ok(self
                .held
                .get(trip_id)
                .map(|rooms| HotelEvent::RoomsReleased {
                    trip_id: trip_id.clone(),
                    rooms: *rooms,
                })
                .into_iter()
                .collect()),
        }
    }

    fn apply(&mut self, event: &HotelEvent) {
        match event {
            HotelEvent::HotelOpened { rooms } => self.rooms = *rooms,
            HotelEvent::RoomsHeld { trip_id, rooms } => {
                self.held.insert(trip_id.clone(), *rooms);
            }
            HotelEvent::RoomsReleased { trip_id, .. } => {
                self.held.remove(trip_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use sagaflow::testing::given;

    use super::*;

    fn held(trip_id: &str, rooms: u32) -> HotelEvent {
        HotelEvent::RoomsHeld {
            trip_id: trip_id.into(),
            rooms,
        }
    }

    #[test]
    fn rooms_are_held_while_they_last() {
        given::<Hotel>([HotelEvent::HotelOpened { rooms: 3 }, held("a", 2)])
            .when(HotelCommand::Hold {
                trip_id: "b".into(),
                rooms: 1,
            })
            .then([held("b", 1)]);
        given::<Hotel>([HotelEvent::HotelOpened { rooms: 3 }, held("a", 2)])
            .when(HotelCommand::Hold {
                trip_id: "b".into(),
                rooms: 2,
            })
            .then_error("no_rooms");
    }

    #[test]
    fn holding_or_releasing_twice_changes_nothing() {
        given::<Hotel>([HotelEvent::HotelOpened { rooms: 3 }, held("a", 2)])
            .when(HotelCommand::Hold {
                trip_id: "a".into(),
                rooms: 2,
            })
            .then([]);
        given::<Hotel>([HotelEvent::HotelOpened { rooms: 3 }])
            .when(HotelCommand::Release {
                trip_id: "a".into(),
            })
            .then([]);
    }
}
