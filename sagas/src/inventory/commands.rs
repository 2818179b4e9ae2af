//! What can be asked of a SKU's stock.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use sagaflow_engine::DomainCommand;

use crate::types::Quantity;

/// Commands of the [`Inventory`](super::Inventory) aggregate, in the wire shape
/// `{"command": "reserve", "payload": {"order_id": "...", "quantity": 2}}`. Unknown fields are
/// refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(
    tag = "command",
    content = "payload",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum InventoryCommand {
    /// Adds units to the stock on hand.
    Restock {
        /// Units to add.
        quantity: Quantity,
    },
    /// Sets units aside for an order. Idempotent per order: repeating it with the same
    /// quantity decides nothing.
    Reserve {
        /// The order the units are for; an order holds at most one reservation per SKU.
        order_id: Uuid,
        /// Units to set aside.
        quantity: Quantity,
    },
    /// Gives an order's reservation back (a saga compensation). Idempotent: releasing what is
    /// not reserved decides nothing.
    Release {
        /// The order whose reservation goes back.
        order_id: Uuid,
    },
    /// Ships an order's reservation: the units leave the stock.
    Commit {
        /// The order whose reservation ships.
        order_id: Uuid,
    },
}

impl DomainCommand for InventoryCommand {
    fn name(&self) -> &'static str {
        match self {
            InventoryCommand::Restock { .. } => "restock",
            InventoryCommand::Reserve { .. } => "reserve",
            InventoryCommand::Release { .. } => "release",
            InventoryCommand::Commit { .. } => "commit",
        }
    }
}
