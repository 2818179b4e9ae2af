//! Order fulfillment, as the business runs it:
//!
//! 1. reserve stock for every line — out of stock: the order is rejected;
//! 2. authorize the payment — declined: the stock is released and the order rejected;
//! 3. confirm the order — the point of no return;
//! 4. capture the payment (retried until it succeeds: the order is confirmed).
//!
//! Cancelling the order while this runs compensates what was done (release the stock, void
//! the authorization); the order itself is already cancelled then.
//!
//! Commands to one aggregate keep their order (they share a partition), so a compensation
//! can never overtake the command it undoes.

use std::sync::Arc;
use std::time::Duration;

use sagaflow_engine::saga::{Backoff, Invoke, Saga, SagaDefinition};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::inventory::{Inventory, InventoryCommand};
use crate::order::{Order, OrderCommand, OrderEvent, OrderLine};
use crate::payment::{Account, AccountCommand};
use crate::types::AmountCents;

/// The saga's name: it derives every fulfillment's saga id ([`saga_id_of`]) and must never change.
pub const ORDER_FULFILLMENT: &str = "order_fulfillment";

/// What the saga remembers about the order it fulfils.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderSaga {
    /// The order being fulfilled.
    pub order_id: Uuid,
    /// Its customer, whose account pays.
    pub customer_id: Uuid,
    /// Its lines, as placed.
    pub lines: Vec<OrderLine>,
    /// Its total, in cents; 0 for a free order, which authorizes and captures nothing.
    pub total_cents: i64,
}

impl OrderSaga {
    /// The authorization, unless the order is free.
    fn payment(&self) -> Option<AmountCents> {
        AmountCents::new(self.total_cents).ok()
    }
}

/// The saga id of an order's fulfillment.
pub fn saga_id_of(order_id: Uuid) -> Uuid {
    sagaflow_engine::saga::saga_id(ORDER_FULFILLMENT, &format!("order-{order_id}"))
}

/// The order fulfillment saga, started by each `order_placed` and aborted by the order's
/// `order_cancelled`.
pub fn order_fulfillment() -> Arc<Saga> {
    SagaDefinition::<OrderSaga>::new(ORDER_FULFILLMENT)
        .started_by::<Order>(|event, envelope| match event {
            OrderEvent::OrderPlaced {
                customer_id,
                lines,
                total_cents,
            } => Some(OrderSaga {
                order_id: envelope.stream_id.strip_prefix("order-")?.parse().ok()?,
                customer_id: *customer_id,
                lines: lines.clone(),
                total_cents: *total_cents,
            }),
            _ => None,
        })
        .aborted_by::<Order>(|event| match event {
            OrderEvent::OrderCancelled { reason } => {
                Some(reason.clone().unwrap_or_else(|| "order cancelled".into()))
            }
            _ => None,
        })
        .step("reserve_stock")
        .invoke_each::<Inventory>(|s| {
            s.lines
                .iter()
                .map(|l| {
                    Invoke::new(
                        &l.sku,
                        InventoryCommand::Reserve {
                            order_id: s.order_id,
                            quantity: l.quantity,
                        },
                    )
                })
                .collect()
        })
        .compensate_each::<Inventory>(|s| {
            s.lines
                .iter()
                .map(|l| {
                    Invoke::new(
                        &l.sku,
                        InventoryCommand::Release {
                            order_id: s.order_id,
                        },
                    )
                })
                .collect()
        })
        .timeout(Duration::from_secs(10))
        .retry(Backoff::exponential(Duration::from_millis(500), 3))
        .step("authorize_payment")
        .invoke_each::<Account>(|s| {
            s.payment()
                .map(|amount_cents| {
                    Invoke::new(
                        s.customer_id,
                        AccountCommand::Authorize {
                            order_id: s.order_id,
                            amount_cents,
                        },
                    )
                })
                .into_iter()
                .collect()
        })
        .compensate_each::<Account>(|s| {
            s.payment()
                .map(|_| {
                    Invoke::new(
                        s.customer_id,
                        AccountCommand::Void {
                            order_id: s.order_id,
                        },
                    )
                })
                .into_iter()
                .collect()
        })
        .timeout(Duration::from_secs(10))
        .retry(Backoff::exponential(Duration::from_millis(500), 3))
        .step("confirm_order")
        .invoke::<Order>(|s| Invoke::new(s.order_id, OrderCommand::Confirm))
        .timeout(Duration::from_secs(10))
        .retry(Backoff::exponential(Duration::from_millis(500), 5))
        .step("capture_payment")
        .invoke_each::<Account>(|s| {
            s.payment()
                .map(|_| {
                    Invoke::new(
                        s.customer_id,
                        AccountCommand::Capture {
                            order_id: s.order_id,
                        },
                    )
                })
                .into_iter()
                .collect()
        })
        // After the confirmation there is no going back: keep trying for about an hour.
        .timeout(Duration::from_secs(10))
        .retry(Backoff::exponential(Duration::from_secs(1), 60))
        .on_compensated::<Order>(|s, why| {
            // A cancelled order is cancelled already; anything else rejects it.
            (why.code != sagaflow_engine::saga::ABORTED).then(|| {
                Invoke::new(
                    s.order_id,
                    OrderCommand::Reject {
                        reason: why.code.clone(),
                    },
                )
            })
        })
        .build()
}

#[cfg(test)]
mod tests;
