//! The trip: the starter aggregate. A traveller requests a trip; its `trip_requested` starts
//! the [`booking`](crate::booking) saga, which confirms the trip or rejects it. The traveller
//! may cancel it while the saga runs.
//!
//! ```text
//!            request             confirm
//!   (none) ──────────► requested ────────► confirmed
//!                       │      │ reject
//!                cancel │      ▼
//!                       ▼    rejected
//!                   cancelled
//! ```

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use sagaflow::{Aggregate, DomainCommand, DomainError, DomainEvent};

/// The most seats or rooms one trip may hold.
pub const MAX_PARTY: u32 = 9;

/// The most one trip may cost, in cents.
pub const MAX_AMOUNT_CENTS: i64 = 10_000_000;

/// Where a trip is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TripStatus {
    /// Requested; its booking saga runs.
    Requested,
    /// Seats and rooms held and the card charged. Final.
    Confirmed,
    /// Its booking failed (no seats, no rooms, card declined). Final.
    Rejected,
    /// Cancelled by the traveller before it was confirmed. Final.
    Cancelled,
}

impl TripStatus {
    /// `requested`, `confirmed`, `rejected` or `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            TripStatus::Requested => "requested",
            TripStatus::Confirmed => "confirmed",
            TripStatus::Rejected => "rejected",
            TripStatus::Cancelled => "cancelled",
        }
    }

    /// The status named `s`, if any.
    pub fn parse(s: &str) -> Option<Self> {
        [
            TripStatus::Requested,
            TripStatus::Confirmed,
            TripStatus::Rejected,
            TripStatus::Cancelled,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

/// A trip (stream `trip-<id>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Trip {
    status: Option<TripStatus>,
    flight: String,
    seats: u32,
    hotel: String,
    rooms: u32,
    amount_cents: i64,
    reason: Option<String>,
}

impl Trip {
    /// `None` until the trip is requested.
    pub fn status(&self) -> Option<TripStatus> {
        self.status
    }
}

/// What a trip can be asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(
    tag = "command",
    content = "payload",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum TripCommand {
    /// Requests the trip; its booking saga starts.
    Request {
        /// The flight to hold seats on.
        #[schema(min_length = 1, max_length = 50)]
        flight: String,
        /// Seats to hold, 1 to 9.
        #[schema(minimum = 1, maximum = 9)]
        seats: u32,
        /// The hotel to hold rooms in.
        #[schema(min_length = 1, max_length = 50)]
        hotel: String,
        /// Rooms to hold, 1 to 9.
        #[schema(minimum = 1, maximum = 9)]
        rooms: u32,
        /// What the card is charged, in cents, 1 to 10,000,000.
        #[schema(minimum = 1, maximum = 10_000_000)]
        amount_cents: i64,
        /// The card, as the payment provider's token (never a card number).
        #[schema(min_length = 1, max_length = 100)]
        card_token: String,
    },
    /// Confirms the trip (the booking saga's last step).
    Confirm,
    /// Rejects a trip that is not confirmed (the booking saga compensated).
    Reject {
        /// Why; the booking saga gives its failure code.
        #[schema(min_length = 1, max_length = 200)]
        reason: String,
    },
    /// Cancels a trip that is not confirmed: its booking saga undoes what it did.
    Cancel {
        /// Why, if the traveller said.
        #[schema(max_length = 200)]
        reason: Option<String>,
    },
}

impl DomainCommand for TripCommand {
    fn name(&self) -> &'static str {
        match self {
            TripCommand::Request { .. } => "request",
            TripCommand::Confirm => "confirm",
            TripCommand::Reject { .. } => "reject",
            TripCommand::Cancel { .. } => "cancel",
        }
    }
}

/// What happened to a trip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "payload", rename_all = "snake_case")]
pub enum TripEvent {
    /// The trip was requested: the event that starts its booking saga.
    TripRequested {
        /// The flight.
        flight: String,
        /// Seats on it.
        seats: u32,
        /// The hotel.
        hotel: String,
        /// Rooms in it.
        rooms: u32,
        /// What the card is charged, in cents.
        amount_cents: i64,
        /// The card's token at the payment provider.
        card_token: String,
    },
    /// The trip is booked.
    TripConfirmed,
    /// The booking failed.
    TripRejected {
        /// Why; the booking saga gives its failure code.
        reason: String,
    },
    /// The traveller cancelled the trip: the event that aborts its booking saga.
    TripCancelled {
        /// Why, if the traveller said.
        reason: Option<String>,
    },
}

impl DomainEvent for TripEvent {}

/// Why a trip refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TripError {
    /// The trip exists already: `request` is not repeated.
    #[error("the trip was requested already")]
    AlreadyRequested,
    /// The trip was never requested.
    #[error("no such trip")]
    NotFound,
    /// A field of the request is out of bounds.
    #[error("flight and hotel are 1 to 50 characters, seats and rooms 1 to {MAX_PARTY}, the amount 1 to {MAX_AMOUNT_CENTS} cents, the card token 1 to 100 characters")]
    InvalidRequest,
    /// The trip was cancelled: it is not confirmed any more.
    #[error("the trip was cancelled")]
    Cancelled,
    /// The command does not apply to a trip in this status.
    #[error("the trip is {0:?}")]
    WrongStatus(TripStatus),
}

impl DomainError for TripError {
    fn code(&self) -> &'static str {
        match self {
            TripError::AlreadyRequested => "trip_already_requested",
            TripError::NotFound => "trip_not_found",
            TripError::InvalidRequest => "invalid_request",
            TripError::Cancelled => "trip_cancelled",
            TripError::WrongStatus(_) => "wrong_status",
        }
    }

    fn is_not_found(&self) -> bool {
        matches!(self, TripError::NotFound)
    }
}

fn valid_name(s: &str) -> bool {
    (1..=50).contains(&s.chars().count())
}

impl Aggregate for Trip {
    const TYPE: &'static str = "trip";
    const CONTEXT: &'static str = "trip";
    type Command = TripCommand;
    type Event = TripEvent;
    type Error = TripError;

    fn handle(&self, command: &TripCommand) -> Result<Vec<TripEvent>, TripError> {
        use TripStatus::*;
        match (command, self.status) {
            (TripCommand::Request { .. }, Some(_)) => Err(TripError::AlreadyRequested),
            (
                TripCommand::Request {
                    flight,
                    seats,
                    hotel,
                    rooms,
                    amount_cents,
                    card_token,
                },
                None,
            ) => {
                let valid = valid_name(flight)
                    && valid_name(hotel)
                    && (1..=MAX_PARTY).contains(seats)
                    && (1..=MAX_PARTY).contains(rooms)
                    && (1..=MAX_AMOUNT_CENTS).contains(amount_cents)
                    && (1..=100).contains(&card_token.chars().count());
                if !valid {
                    return Err(TripError::InvalidRequest);
                }
                Ok(vec![TripEvent::TripRequested {
                    flight: flight.clone(),
                    seats: *seats,
                    hotel: hotel.clone(),
                    rooms: *rooms,
                    amount_cents: *amount_cents,
                    card_token: card_token.clone(),
                }])
            }
            (_, None) => Err(TripError::NotFound),
            (TripCommand::Confirm, Some(Confirmed)) => Ok(vec![]),
            (TripCommand::Confirm, Some(Requested)) => Ok(vec![TripEvent::TripConfirmed]),
            (TripCommand::Confirm, Some(Cancelled)) => Err(TripError::Cancelled),
            // A cancelled trip is cancelled already: the saga's rejection changes nothing.
            (TripCommand::Reject { .. }, Some(Rejected | Cancelled)) => Ok(vec![]),
            (TripCommand::Reject { reason }, Some(Requested)) => {
                Ok(vec![TripEvent::TripRejected {
                    reason: reason.clone(),
                }])
            }
            (TripCommand::Cancel { .. }, Some(Cancelled)) => Ok(vec![]),
            (TripCommand::Cancel { reason }, Some(Requested)) => {
                Ok(vec![TripEvent::TripCancelled {
                    reason: reason.clone(),
                }])
            }
            (_, Some(status)) => Err(TripError::WrongStatus(status)),
        }
    }

    fn apply(&mut self, event: &TripEvent) {
        match event {
            TripEvent::TripRequested {
                flight,
                seats,
                hotel,
                rooms,
                amount_cents,
                ..
            } => {
                self.status = Some(TripStatus::Requested);
                self.flight.clone_from(flight);
                self.seats = *seats;
                self.hotel.clone_from(hotel);
                self.rooms = *rooms;
                self.amount_cents = *amount_cents;
            }
            TripEvent::TripConfirmed => self.status = Some(TripStatus::Confirmed),
            TripEvent::TripRejected { reason } => {
                self.status = Some(TripStatus::Rejected);
                self.reason = Some(reason.clone());
            }
            TripEvent::TripCancelled { reason } => {
                self.status = Some(TripStatus::Cancelled);
                self.reason.clone_from(reason);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use sagaflow::testing::given;

    use super::*;

    fn requested() -> TripEvent {
        TripEvent::TripRequested {
            flight: "TP1".into(),
            seats: 2,
            hotel: "H1".into(),
            rooms: 1,
            amount_cents: 50_000,
            card_token: "tok_visa".into(),
        }
    }

    #[test]
    fn a_requested_trip_is_confirmed_once() {
        given::<Trip>([requested()])
            .when(TripCommand::Confirm)
            .then([TripEvent::TripConfirmed]);
        given::<Trip>([requested(), TripEvent::TripConfirmed])
            .when(TripCommand::Confirm)
            .then([]);
    }

    #[test]
    fn a_request_out_of_bounds_is_refused() {
        given::<Trip>([])
            .when(TripCommand::Request {
                flight: "TP1".into(),
                seats: MAX_PARTY + 1,
                hotel: "H1".into(),
                rooms: 1,
                amount_cents: 100,
                card_token: "tok_visa".into(),
            })
            .then_error("invalid_request");
    }

    #[test]
    fn a_cancelled_trip_is_never_confirmed_and_a_confirmed_one_never_cancelled() {
        given::<Trip>([requested(), TripEvent::TripCancelled { reason: None }])
            .when(TripCommand::Confirm)
            .then_error("trip_cancelled");
        given::<Trip>([requested(), TripEvent::TripCancelled { reason: None }])
            .when(TripCommand::Reject {
                reason: "card_declined".into(),
            })
            .then([]);
        given::<Trip>([requested(), TripEvent::TripConfirmed])
            .when(TripCommand::Cancel { reason: None })
            .then_error("wrong_status");
    }
}
