//! What happened to an account. The `event_type` strings (`payment_authorized`, ...) are
//! stored forever: renaming a variant must keep its serde name.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use sagaflow_engine::DomainEvent;

/// Events of the [`Account`](super::Account) aggregate. They do not repeat the customer id:
/// the stream id `account-<uuid>` carries it. Amounts are always positive integer cents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "payload", rename_all = "snake_case")]
pub enum AccountEvent {
    /// Money was added to the balance.
    FundsDeposited {
        /// How much, in cents (schema v1 said `amount`).
        amount_cents: i64,
    },
    /// Money was held for an order.
    PaymentAuthorized {
        /// The order it is held for.
        order_id: Uuid,
        /// How much, in cents.
        amount_cents: i64,
    },
    /// The order's whole hold was taken (balance and held both drop by it).
    PaymentCaptured {
        /// The order whose hold it was.
        order_id: Uuid,
        /// How much was taken, in cents.
        amount_cents: i64,
    },
    /// The order's whole hold went back to the available balance.
    PaymentVoided {
        /// The order whose hold it was.
        order_id: Uuid,
        /// How much went back, in cents.
        amount_cents: i64,
    },
}

/// Schema history:
/// - `funds_deposited` v1 was `{"amount": n}`; v2 (current) is `{"amount_cents": n}`, like
///   every other amount of the domain. Stored v1 events are read through [`DomainEvent::upcast`].
/// - every other event type is at v1.
impl DomainEvent for AccountEvent {
    fn schema_version(event_type: &str) -> i32 {
        match event_type {
            "funds_deposited" => 2,
            _ => 1,
        }
    }

    fn upcast(event_type: &str, from: i32, payload: Value) -> Value {
        match (event_type, from, payload) {
            // v1 -> v2: `amount` became `amount_cents`. A v1 payload that already says
            // `amount_cents` (written before the version was bumped) is left as it is.
            ("funds_deposited", 1, Value::Object(mut fields)) => {
                if !fields.contains_key("amount_cents") {
                    if let Some(amount) = fields.remove("amount") {
                        fields.insert("amount_cents".into(), amount);
                    }
                }
                Value::Object(fields)
            }
            (_, _, payload) => payload,
        }
    }
}
