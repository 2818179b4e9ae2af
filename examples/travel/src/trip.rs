//! The trip: requested by a traveller, approved, then confirmed, or rejected once.
//!
//! ```text
//!            request            approve            confirm
//!   (none) ──────────► requested ────────► approved ────────► confirmed
//!                          │ reject            │ reject
//!                          ▼                   ▼
//!                       rejected            rejected
//! ```

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use sagaflow::{Aggregate, DomainCommand, DomainError, DomainEvent};

/// The most travellers one trip may take; a larger party is refused at approval.
pub const MAX_TRAVELLERS: u32 = 6;

/// Where a trip is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TripStatus {
    /// Requested; its booking saga runs.
    Requested,
    /// Its party was approved; it waits for confirmation.
    Approved,
    /// Booked. Final: a confirmed trip is never rejected.
    Confirmed,
    /// Refused, or its booking failed. Final.
    Rejected,
}

/// A trip (stream `trip-<id>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Trip {
    status: Option<TripStatus>,
    destination: String,
    travellers: u32,
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
        /// Where to, 1 to 100 characters.
        #[schema(min_length = 1, max_length = 100)]
        destination: String,
        /// How many travellers, 1 to 100; more than [`MAX_TRAVELLERS`] are refused at approval.
        #[schema(minimum = 1, maximum = 100)]
        travellers: u32,
    },
    /// Approves a requested trip (a step of the booking saga).
    Approve,
    /// Confirms an approved trip (a step of the booking saga).
    Confirm,
    /// Rejects a trip that is not confirmed (the booking saga compensated).
    Reject {
        /// Why; the booking saga gives its failure code.
        #[schema(min_length = 1, max_length = 200)]
        reason: String,
    },
}

impl DomainCommand for TripCommand {
    fn name(&self) -> &'static str {
        match self {
            TripCommand::Request { .. } => "request",
            TripCommand::Approve => "approve",
            TripCommand::Confirm => "confirm",
            TripCommand::Reject { .. } => "reject",
        }
    }
}

/// What happened to a trip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "payload", rename_all = "snake_case")]
pub enum TripEvent {
    /// The trip was requested: the event that starts its booking saga.
    TripRequested {
        /// Where to.
        destination: String,
        /// How many travellers.
        travellers: u32,
    },
    /// The party was approved.
    TripApproved,
    /// The trip is booked.
    TripConfirmed,
    /// The trip was refused, or its booking failed.
    TripRejected {
        /// Why; the booking saga gives its failure code.
        reason: String,
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
    /// The destination or the party size is out of bounds.
    #[error("a destination is 1 to 100 characters and a party 1 to 100 travellers")]
    InvalidRequest,
    /// The party has more than [`MAX_TRAVELLERS`] travellers.
    #[error("parties of more than {MAX_TRAVELLERS} travellers are not booked")]
    PartyTooLarge,
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
            TripError::PartyTooLarge => "party_too_large",
            TripError::WrongStatus(_) => "wrong_status",
        }
    }

    fn is_not_found(&self) -> bool {
        matches!(self, TripError::NotFound)
    }
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
                    destination,
                    travellers,
                },
                None,
            ) => {
                let length = destination.chars().count();
                if !(1..=100).contains(&length) || !(1..=100).contains(travellers) {
                    return Err(TripError::InvalidRequest);
                }
                Ok(vec![TripEvent::TripRequested {
                    destination: destination.clone(),
                    travellers: *travellers,
                }])
            }
            (_, None) => Err(TripError::NotFound),
            (TripCommand::Approve, Some(Approved | Confirmed)) => Ok(vec![]),
            (TripCommand::Approve, Some(Requested)) if self.travellers > MAX_TRAVELLERS => {
                Err(TripError::PartyTooLarge)
            }
            (TripCommand::Approve, Some(Requested)) => Ok(vec![TripEvent::TripApproved]),
            (TripCommand::Confirm, Some(Confirmed)) => Ok(vec![]),
            (TripCommand::Confirm, Some(Approved)) => Ok(vec![TripEvent::TripConfirmed]),
            (TripCommand::Reject { .. }, Some(Rejected)) => Ok(vec![]),
            (TripCommand::Reject { reason }, Some(Requested | Approved)) => {
                Ok(vec![TripEvent::TripRejected {
                    reason: reason.clone(),
                }])
            }
            (_, Some(status)) => Err(TripError::WrongStatus(status)),
        }
    }

    fn apply(&mut self, event: &TripEvent) {
        match event {
            TripEvent::TripRequested {
                destination,
                travellers,
            } => {
                self.status = Some(TripStatus::Requested);
                self.destination.clone_from(destination);
                self.travellers = *travellers;
            }
            TripEvent::TripApproved => self.status = Some(TripStatus::Approved),
            TripEvent::TripConfirmed => self.status = Some(TripStatus::Confirmed),
            TripEvent::TripRejected { reason } => {
                self.status = Some(TripStatus::Rejected);
                self.reason = Some(reason.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use sagaflow::testing::given;

    use super::*;

    fn requested(travellers: u32) -> TripEvent {
        TripEvent::TripRequested {
            destination: "Lisbon".into(),
            travellers,
        }
    }

    #[test]
    fn a_small_party_is_approved_then_confirmed() {
        given::<Trip>([requested(2)])
            .when(TripCommand::Approve)
            .then([TripEvent::TripApproved]);
        given::<Trip>([requested(2), TripEvent::TripApproved])
            .when(TripCommand::Confirm)
            .then([TripEvent::TripConfirmed]);
    }

    #[test]
    fn a_large_party_is_refused_at_approval() {
        given::<Trip>([requested(MAX_TRAVELLERS + 1)])
            .when(TripCommand::Approve)
            .then_error("party_too_large");
    }

    #[test]
    fn a_confirmed_trip_is_never_rejected() {
        given::<Trip>([
            requested(2),
            TripEvent::TripApproved,
            TripEvent::TripConfirmed,
        ])
        .when(TripCommand::Reject {
            reason: "late".into(),
        })
        .then_error("wrong_status");
    }
}
