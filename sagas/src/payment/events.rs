//! What happened to an account. The `event_type` strings (`payment_authorized`, ...) are
//! stored forever: renaming a variant must keep its serde name.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use sagaflow_engine::DomainEvent;

/// Events of the [`Account`](super::Account) aggregate. They do not repeat the customer id:
/// the stream id `account-<uuid>` carries it. Amounts are always positive integer cents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "payload", rename_all = "snake_case")]
pub enum AccountEvent {
    FundsDeposited {
        amount_cents: i64,
    },
    PaymentAuthorized {
        order_id: Uuid,
        amount_cents: i64,
    },
    /// The order's whole hold was taken (balance and held both drop by it).
    PaymentCaptured {
        order_id: Uuid,
        amount_cents: i64,
    },
    /// The order's whole hold went back to the available balance.
    PaymentVoided {
        order_id: Uuid,
        amount_cents: i64,
    },
}

impl DomainEvent for AccountEvent {}
