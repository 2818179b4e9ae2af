//! The order: placed by a customer, then confirmed, rejected or cancelled exactly once.
//!
//! ```text
//!            place            confirm
//!   (none) ───────► pending ───────────► confirmed
//!                      │ reject / cancel
//!                      ▼
//!               rejected / cancelled
//! ```
//!
//! Every transition out of `pending` is idempotent: repeating the command that led to the
//! current state decides nothing, any other transition out of a final state is refused.

mod commands;
mod events;
#[cfg(test)]
mod tests;

pub use commands::{OrderCommand, OrderLine};
pub use events::OrderEvent;

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;
use uuid::Uuid;

use sagaflow_engine::{Aggregate, DomainError};

use crate::types::{check_canonical_uuid, AmountCents, Sku};

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Placed, waiting for its fulfillment.
    Pending,
    /// Fulfilled: stock reserved and payment authorized. Final once its saga completed: a
    /// confirmation applied after the saga gave up waiting for it is revoked by the saga's
    /// rejection (see [`OrderCommand::Reject`]).
    Confirmed,
    /// Its fulfillment failed. Final.
    Rejected,
    /// The customer cancelled it. Final.
    Cancelled,
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Rejected => "rejected",
            OrderStatus::Cancelled => "cancelled",
        })
    }
}

/// An order, identified by a UUID (stream `order-<uuid>`).
///
/// Once placed, its customer, lines and total never change; only its status moves, once,
/// out of `pending`, with one exception: a rejection revokes a confirmation. The saga confirms
/// the order in a step with a timeout; a confirmation that is applied only after the step
/// timed out (its participant was down longer than the step's retries) finds the stock
/// released and the payment voided already, and the saga's rejection, sent after the
/// confirmation in the same partition, must win.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Order {
    status: Option<OrderStatus>,
    customer_id: Option<Uuid>,
    lines: Vec<OrderLine>,
    total_cents: i64,
    reason: Option<String>,
}

impl Order {
    /// The most lines one order may have.
    pub const MAX_LINES: usize = 100;
    /// The longest rejection or cancellation reason, in characters.
    pub const MAX_REASON_CHARS: usize = 500;

    /// `None` until the order is placed.
    pub fn status(&self) -> Option<OrderStatus> {
        self.status
    }

    /// The customer who placed the order; `None` until it is placed.
    pub fn customer_id(&self) -> Option<Uuid> {
        self.customer_id
    }

    /// The lines as placed: never empty once placed, at most one line per SKU.
    pub fn lines(&self) -> &[OrderLine] {
        &self.lines
    }

    /// The sum of the lines' subtotals; 0 before the order is placed.
    pub fn total_cents(&self) -> i64 {
        self.total_cents
    }

    /// Why the order was rejected or cancelled, if a reason was given.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    fn place(&self, customer_id: Uuid, lines: &[OrderLine]) -> Result<Vec<OrderEvent>, OrderError> {
        if self.status.is_some() {
            return Err(OrderError::AlreadyPlaced);
        }
        if lines.is_empty() {
            return Err(OrderError::EmptyOrder);
        }
        if lines.len() > Self::MAX_LINES {
            return Err(OrderError::TooManyLines { count: lines.len() });
        }
        let mut skus = BTreeSet::new();
        if let Some(line) = lines.iter().find(|l| !skus.insert(&l.sku)) {
            return Err(OrderError::DuplicateSku {
                sku: line.sku.clone(),
            });
        }
        let total_cents = lines
            .iter()
            .try_fold(0i64, |total, line| {
                total.checked_add(line.subtotal_cents()?)
            })
            .filter(|total| *total <= AmountCents::MAX)
            .ok_or(OrderError::AmountTooLarge)?;
        Ok(vec![OrderEvent::OrderPlaced {
            customer_id,
            lines: lines.to_vec(),
            total_cents,
        }])
    }

    fn confirm(&self) -> Result<Vec<OrderEvent>, OrderError> {
        match self.status {
            None => Err(OrderError::NotFound),
            Some(OrderStatus::Pending) => Ok(vec![OrderEvent::OrderConfirmed]),
            Some(OrderStatus::Confirmed) => Ok(vec![]),
            Some(OrderStatus::Cancelled) => Err(OrderError::Cancelled),
            Some(status @ OrderStatus::Rejected) => Err(OrderError::NotPending { status }),
        }
    }

    fn reject(&self, reason: &str) -> Result<Vec<OrderEvent>, OrderError> {
        check_reason(reason)?;
        match self.status {
            None => Err(OrderError::NotFound),
            Some(OrderStatus::Pending) => Ok(vec![OrderEvent::OrderRejected {
                reason: reason.to_owned(),
            }]),
            Some(OrderStatus::Rejected) => Ok(vec![]),
            // Confirmed after its saga gave up the step: the saga's verdict wins.
            Some(OrderStatus::Confirmed) => Ok(vec![OrderEvent::OrderRejected {
                reason: reason.to_owned(),
            }]),
            Some(status) => Err(OrderError::NotPending { status }),
        }
    }

    fn cancel(&self, reason: Option<&str>) -> Result<Vec<OrderEvent>, OrderError> {
        if let Some(reason) = reason {
            check_reason(reason)?;
        }
        match self.status {
            None => Err(OrderError::NotFound),
            Some(OrderStatus::Pending) => Ok(vec![OrderEvent::OrderCancelled {
                reason: reason.map(str::to_owned),
            }]),
            Some(OrderStatus::Cancelled) => Ok(vec![]),
            Some(status) => Err(OrderError::NotPending { status }),
        }
    }
}

fn check_reason(reason: &str) -> Result<(), OrderError> {
    if reason.trim().is_empty() || reason.chars().count() > Order::MAX_REASON_CHARS {
        Err(OrderError::InvalidReason)
    } else {
        Ok(())
    }
}

/// Why an order command was refused. Nothing was recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// The order exists already: `place` is not repeated.
    #[error("the order was already placed")]
    AlreadyPlaced,
    /// The order has no line.
    #[error("an order needs at least one line")]
    EmptyOrder,
    /// The order has more than [`Order::MAX_LINES`] lines.
    #[error("an order has at most {max} lines, got {count}", max = Order::MAX_LINES)]
    TooManyLines {
        /// How many lines it has.
        count: usize,
    },
    /// Two lines name one SKU.
    #[error("sku {sku} appears on more than one line")]
    DuplicateSku {
        /// The SKU named twice.
        sku: Sku,
    },
    /// The order's total exceeds [`AmountCents::MAX`], or does not fit an `i64`.
    #[error("the order total exceeds {max} cents", max = AmountCents::MAX)]
    AmountTooLarge,
    /// The order was never placed.
    #[error("no such order")]
    NotFound,
    /// Confirming a cancelled order: the customer's cancellation wins.
    #[error("the order was cancelled; a cancelled order is never confirmed")]
    Cancelled,
    /// The order left `pending` another way already.
    #[error("the order is {status}, not pending")]
    NotPending {
        /// Where the order is.
        status: OrderStatus,
    },
    /// A reason is blank or longer than [`Order::MAX_REASON_CHARS`] characters.
    #[error("a reason must not be blank and has at most {max} characters", max = Order::MAX_REASON_CHARS)]
    InvalidReason,
}

impl DomainError for OrderError {
    fn code(&self) -> &'static str {
        match self {
            OrderError::AlreadyPlaced => "order_already_placed",
            OrderError::EmptyOrder => "empty_order",
            OrderError::TooManyLines { .. } => "too_many_lines",
            OrderError::DuplicateSku { .. } => "duplicate_sku",
            OrderError::AmountTooLarge => "amount_too_large",
            OrderError::NotFound => "order_not_found",
            OrderError::Cancelled => "order_cancelled",
            OrderError::NotPending { .. } => "order_not_pending",
            OrderError::InvalidReason => "invalid_reason",
        }
    }

    fn is_not_found(&self) -> bool {
        matches!(self, OrderError::NotFound)
    }
}

impl Aggregate for Order {
    const TYPE: &'static str = "order";
    const CONTEXT: &'static str = "order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    fn handle(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        match command {
            OrderCommand::Place { customer_id, lines } => self.place(*customer_id, lines),
            OrderCommand::Confirm => self.confirm(),
            OrderCommand::Reject { reason } => self.reject(reason),
            OrderCommand::Cancel { reason } => self.cancel(reason.as_deref()),
        }
    }

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::OrderPlaced {
                customer_id,
                lines,
                total_cents,
            } => {
                self.status = Some(OrderStatus::Pending);
                self.customer_id = Some(*customer_id);
                self.lines.clone_from(lines);
                self.total_cents = *total_cents;
            }
            OrderEvent::OrderConfirmed => self.status = Some(OrderStatus::Confirmed),
            OrderEvent::OrderRejected { reason } => {
                self.status = Some(OrderStatus::Rejected);
                self.reason = Some(reason.clone());
            }
            OrderEvent::OrderCancelled { reason } => {
                self.status = Some(OrderStatus::Cancelled);
                self.reason.clone_from(reason);
            }
        }
    }

    /// Only the canonical lowercase hyphenated UUID form, so one order has one stream.
    fn validate_id(id: &str) -> Result<(), String> {
        check_canonical_uuid(id, "order id")
    }

    fn id_schema() -> utoipa::openapi::Schema {
        crate::types::canonical_uuid_schema("order id")
    }
}
