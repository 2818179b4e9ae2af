//! What can be asked of a customer's account.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use sagaflow_engine::DomainCommand;

use crate::types::AmountCents;

/// Commands of the [`Account`](super::Account) aggregate, in the wire shape
/// `{"command": "authorize", "payload": {"order_id": "...", "amount_cents": 1250}}`. Unknown
/// fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(
    tag = "command",
    content = "payload",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum AccountCommand {
    /// Adds money to the balance.
    Deposit {
        /// Money to add, in cents.
        amount_cents: AmountCents,
    },
    /// Holds money for an order. Idempotent per order: repeating it with the same amount
    /// decides nothing.
    Authorize {
        /// The order the money is held for; an order holds at most once per account.
        order_id: Uuid,
        /// Money to hold, in cents.
        amount_cents: AmountCents,
    },
    /// Takes an order's held money: balance and held both drop by it.
    Capture {
        /// The order whose hold is taken.
        order_id: Uuid,
    },
    /// Lets an order's hold go (a saga compensation). Idempotent: voiding what is not held
    /// decides nothing.
    Void {
        /// The order whose hold goes back.
        order_id: Uuid,
    },
}

impl DomainCommand for AccountCommand {
    fn name(&self) -> &'static str {
        match self {
            AccountCommand::Deposit { .. } => "deposit",
            AccountCommand::Authorize { .. } => "authorize",
            AccountCommand::Capture { .. } => "capture",
            AccountCommand::Void { .. } => "void",
        }
    }
}
