//! Given / when / then tests for aggregates, without a database:
//!
//! ```
//! # use sagaflow_engine::doc_fixtures::{Wallet, WalletCommand, WalletEvent};
//! use sagaflow_engine::testing::given;
//!
//! let hold = || "payout-1".to_owned();
//! given::<Wallet>([WalletEvent::Deposited { cents: 10 }])
//!     .when(WalletCommand::Hold { hold: hold(), cents: 4 })
//!     .then([WalletEvent::Held { hold: hold(), cents: 4 }]);
//! given::<Wallet>([WalletEvent::Deposited { cents: 10 }])
//!     .when(WalletCommand::Hold { hold: hold(), cents: 40 })
//!     .then_error("not_enough");
//! ```

use std::fmt::Debug;

use crate::aggregate::{Aggregate, DomainError};

/// An aggregate built from past events.
pub struct Given<A: Aggregate> {
    state: A,
}

/// The decision of an aggregate on one command.
pub struct Then<A: Aggregate> {
    state: A,
    result: Result<Vec<A::Event>, A::Error>,
}

/// Starts a test from the aggregate's history (empty for a new aggregate).
pub fn given<A: Aggregate>(history: impl IntoIterator<Item = A::Event>) -> Given<A> {
    let mut state = A::default();
    for e in history {
        state.apply(&e);
    }
    Given { state }
}

impl<A: Aggregate> Given<A> {
    /// Lets the aggregate decide on `command`, in the state the history folds into.
    pub fn when(self, command: A::Command) -> Then<A> {
        let result = self.state.handle(&command);
        Then {
            state: self.state,
            result,
        }
    }

    /// The state the history folds into.
    pub fn state(&self) -> &A {
        &self.state
    }
}

impl<A: Aggregate> Then<A>
where
    A::Event: PartialEq + Debug,
    A::Error: Debug,
{
    /// Expects exactly these events, in this order. Returns the state after applying them.
    pub fn then(self, expected: impl IntoIterator<Item = A::Event>) -> A {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match self.result {
            Ok(events) => {
                assert_eq!(events, expected, "unexpected events");
                let mut state = self.state;
                for e in &events {
                    state.apply(e);
                }
                state
            }
            Err(e) => panic!("expected events {expected:?}, got error {e:?}"),
        }
    }

    /// Expects no events (an idempotent no-op), and no error.
    pub fn then_nothing(self) -> A {
        self.then([])
    }

    /// Expects a rejection with this error code.
    pub fn then_error(self, code: &str) -> A::Error {
        match self.result {
            Ok(events) => panic!("expected error {code}, got events {events:?}"),
            Err(e) => {
                assert_eq!(e.code(), code, "unexpected error {e:?}");
                e
            }
        }
    }
}
