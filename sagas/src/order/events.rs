//! What happened to an order. The `event_type` strings (`order_placed`, ...) are stored
//! forever: renaming a variant must keep its serde name.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use sagaflow_engine::DomainEvent;

use super::OrderLine;

/// Events of the [`Order`](super::Order) aggregate. They do not repeat the order id: the stream
/// id `order-<uuid>` carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "payload", rename_all = "snake_case")]
pub enum OrderEvent {
    /// The order exists and is pending. `total_cents` is the sum of the lines' subtotals,
    /// never negative and at most [`AmountCents::MAX`](crate::types::AmountCents::MAX), so a
    /// positive total always fits an authorization.
    OrderPlaced {
        /// The customer who ordered.
        customer_id: Uuid,
        /// The lines as ordered, at most one per SKU.
        lines: Vec<OrderLine>,
        /// The sum of the lines' subtotals, in cents.
        total_cents: i64,
    },
    /// The order is confirmed: its stock is reserved and its payment authorized.
    OrderConfirmed,
    /// The order is rejected: its fulfillment could not complete.
    OrderRejected {
        /// Why; from the fulfillment saga, its failure code (`insufficient_stock`,
        /// `insufficient_funds`, …).
        reason: String,
    },
    /// The customer cancelled the pending order.
    OrderCancelled {
        /// Why, if the customer said.
        #[serde(default)]
        reason: Option<String>,
    },
}

impl DomainEvent for OrderEvent {}
