//! A customer's account: a balance, and the part of it held for orders.
//!
//! Invariant, after any history this aggregate decided: `0 <= held <= balance`, and `held`
//! is the sum of the per-order holds. No hold ever exceeds what the balance can cover, and an
//! order holds at most once.

mod commands;
mod events;
#[cfg(test)]
mod tests;

pub use commands::AccountCommand;
pub use events::AccountEvent;

use std::collections::BTreeMap;

use serde::Serialize;
use uuid::Uuid;

use sagaflow_engine::{Aggregate, DomainError};

use crate::types::{check_canonical_uuid, AmountCents};

/// The account of one customer (stream `account-<customer uuid>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Account {
    balance_cents: i64,
    held_cents: i64,
    holds: BTreeMap<Uuid, i64>,
}

impl Account {
    /// Money in the account, held or not. Never negative.
    pub fn balance_cents(&self) -> i64 {
        self.balance_cents
    }

    /// Money held for orders. Never negative, never more than [`Self::balance_cents`].
    pub fn held_cents(&self) -> i64 {
        self.held_cents
    }

    /// Money a new authorization may hold: `balance - held`, never negative.
    pub fn available_cents(&self) -> i64 {
        self.balance_cents - self.held_cents
    }

    /// The amount held for `order_id`, if it holds one.
    pub fn hold(&self, order_id: Uuid) -> Option<i64> {
        self.holds.get(&order_id).copied()
    }

    /// Every open hold, by order id.
    pub fn holds(&self) -> &BTreeMap<Uuid, i64> {
        &self.holds
    }

    fn deposit(&self, amount: AmountCents) -> Result<Vec<AccountEvent>, AccountError> {
        self.balance_cents
            .checked_add(amount.get())
            .ok_or(AccountError::AmountTooLarge)?;
        Ok(vec![AccountEvent::FundsDeposited {
            amount_cents: amount.get(),
        }])
    }

    fn authorize(
        &self,
        order_id: Uuid,
        amount: AmountCents,
    ) -> Result<Vec<AccountEvent>, AccountError> {
        let requested = amount.get();
        match self.hold(order_id) {
            Some(held) if held == requested => Ok(vec![]),
            Some(held) => Err(AccountError::AuthorizationMismatch {
                order_id,
                held,
                requested,
            }),
            None if self.available_cents() < requested => Err(AccountError::InsufficientFunds {
                requested,
                available: self.available_cents(),
            }),
            None => Ok(vec![AccountEvent::PaymentAuthorized {
                order_id,
                amount_cents: requested,
            }]),
        }
    }

    fn capture(&self, order_id: Uuid) -> Result<Vec<AccountEvent>, AccountError> {
        let amount_cents = self
            .hold(order_id)
            .ok_or(AccountError::AuthorizationNotFound { order_id })?;
        Ok(vec![AccountEvent::PaymentCaptured {
            order_id,
            amount_cents,
        }])
    }

    fn void(&self, order_id: Uuid) -> Vec<AccountEvent> {
        self.hold(order_id)
            .map(|amount_cents| AccountEvent::PaymentVoided {
                order_id,
                amount_cents,
            })
            .into_iter()
            .collect()
    }
}

/// Why an account command was refused. Nothing was recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// Depositing would take the balance past `i64::MAX` cents.
    #[error("depositing would overflow the balance")]
    AmountTooLarge,
    /// The order already holds another amount.
    #[error("order {order_id} already holds {held} cents, not {requested}")]
    AuthorizationMismatch {
        /// The order.
        order_id: Uuid,
        /// Cents it holds.
        held: i64,
        /// Cents asked for now.
        requested: i64,
    },
    /// The balance not held cannot cover the authorization.
    #[error("{requested} cents requested, only {available} available")]
    InsufficientFunds {
        /// Cents asked for.
        requested: i64,
        /// Cents available: the balance not held.
        available: i64,
    },
    /// The order holds nothing here to capture.
    #[error("order {order_id} holds no authorization")]
    AuthorizationNotFound {
        /// The order.
        order_id: Uuid,
    },
}

impl DomainError for AccountError {
    fn code(&self) -> &'static str {
        match self {
            AccountError::AmountTooLarge => "amount_too_large",
            AccountError::AuthorizationMismatch { .. } => "authorization_mismatch",
            AccountError::InsufficientFunds { .. } => "insufficient_funds",
            AccountError::AuthorizationNotFound { .. } => "authorization_not_found",
        }
    }
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    const CONTEXT: &'static str = "payment";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;

    fn handle(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Deposit { amount_cents } => self.deposit(*amount_cents),
            AccountCommand::Authorize {
                order_id,
                amount_cents,
            } => self.authorize(*order_id, *amount_cents),
            AccountCommand::Capture { order_id } => self.capture(*order_id),
            AccountCommand::Void { order_id } => Ok(self.void(*order_id)),
        }
    }

    // `handle` only decides events that keep the invariant, so this arithmetic cannot overflow
    // on a history it decided; saturating keeps `apply` infallible on any other input.
    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::FundsDeposited { amount_cents } => {
                self.balance_cents = self.balance_cents.saturating_add(*amount_cents);
            }
            AccountEvent::PaymentAuthorized {
                order_id,
                amount_cents,
            } => {
                self.held_cents = self.held_cents.saturating_add(*amount_cents);
                self.holds.insert(*order_id, *amount_cents);
            }
            AccountEvent::PaymentCaptured {
                order_id,
                amount_cents,
            } => {
                self.balance_cents = self.balance_cents.saturating_sub(*amount_cents);
                self.held_cents = self.held_cents.saturating_sub(*amount_cents);
                self.holds.remove(order_id);
            }
            AccountEvent::PaymentVoided {
                order_id,
                amount_cents,
            } => {
                self.held_cents = self.held_cents.saturating_sub(*amount_cents);
                self.holds.remove(order_id);
            }
        }
    }

    /// Only the canonical lowercase hyphenated UUID form, so one customer has one stream.
    fn validate_id(id: &str) -> Result<(), String> {
        check_canonical_uuid(id, "customer id")
    }

    fn id_schema() -> utoipa::openapi::Schema {
        crate::types::canonical_uuid_schema("customer id")
    }
}
