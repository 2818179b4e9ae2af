//! What happened to a SKU's stock. The `event_type` strings (`stock_reserved`, ...) are stored
//! forever: renaming a variant must keep its serde name.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use sagaflow_engine::DomainEvent;

/// Events of the [`Inventory`](super::Inventory) aggregate. They do not repeat the SKU: the
/// stream id `inventory-<sku>` carries it. Quantities are always positive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "payload", rename_all = "snake_case")]
pub enum InventoryEvent {
    /// Units arrived.
    StockRestocked {
        /// How many.
        quantity: i64,
    },
    /// Units were set aside for an order.
    StockReserved {
        /// The order they are for.
        order_id: Uuid,
        /// How many.
        quantity: i64,
    },
    /// The order's whole reservation went back to the available stock.
    StockReleased {
        /// The order whose reservation it was.
        order_id: Uuid,
        /// How many units it held.
        quantity: i64,
    },
    /// The order's whole reservation left the stock (on hand and reserved both drop by it).
    StockCommitted {
        /// The order whose reservation it was.
        order_id: Uuid,
        /// How many units left the stock.
        quantity: i64,
    },
}

impl DomainEvent for InventoryEvent {}
