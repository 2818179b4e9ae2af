//! What can be asked of an order.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use sagaflow_engine::DomainCommand;

use crate::types::{PriceCents, Quantity, Sku};

/// One line of an order: so many units of one SKU at a unit price. Every field is validated
/// when deserialized, so a line always has a positive quantity and a non-negative price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLine {
    /// The SKU ordered.
    pub sku: Sku,
    /// How many units of it.
    pub quantity: Quantity,
    /// The price of one unit, in cents.
    pub unit_price_cents: PriceCents,
}

impl OrderLine {
    /// `quantity × unit_price_cents`, or `None` if it does not fit an `i64`.
    pub fn subtotal_cents(&self) -> Option<i64> {
        self.unit_price_cents.get().checked_mul(self.quantity.get())
    }
}

/// Commands of the [`Order`](super::Order) aggregate, in the wire shape
/// `{"command": "place", "payload": {...}}`. `confirm` carries no data and may omit `payload`;
/// `cancel` needs one, `{}` when there is no reason. Unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(
    tag = "command",
    content = "payload",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum OrderCommand {
    /// Places a new order. Its total is computed here, never taken from the caller.
    Place {
        /// The customer who orders; their account pays.
        customer_id: Uuid,
        /// What is ordered: 1 to [`Order::MAX_LINES`](super::Order::MAX_LINES) lines, at most one
        /// per SKU.
        lines: Vec<OrderLine>,
    },
    /// Confirms a pending order. Idempotent: confirming a confirmed order does nothing.
    Confirm,
    /// Rejects a pending order (the saga could not fulfil it). Idempotent. Also revokes a
    /// confirmation: one applied after the saga's confirm step timed out, when the saga had
    /// already undone the reservation and the authorization.
    Reject {
        /// Why the order is rejected: not blank, at most
        /// [`Order::MAX_REASON_CHARS`](super::Order::MAX_REASON_CHARS) characters.
        reason: String,
    },
    /// Cancels a pending order at the customer's request. Idempotent.
    Cancel {
        /// Why the customer cancels, if they said: not blank, at most
        /// [`Order::MAX_REASON_CHARS`](super::Order::MAX_REASON_CHARS) characters.
        #[serde(default)]
        reason: Option<String>,
    },
}

impl DomainCommand for OrderCommand {
    fn name(&self) -> &'static str {
        match self {
            OrderCommand::Place { .. } => "place",
            OrderCommand::Confirm => "confirm",
            OrderCommand::Reject { .. } => "reject",
            OrderCommand::Cancel { .. } => "cancel",
        }
    }
}
