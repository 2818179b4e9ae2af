//! Stock of one SKU: units on hand, and the part of them reserved for orders.
//!
//! Invariant, after any history this aggregate decided: `0 <= reserved <= on_hand`, and
//! `reserved` is the sum of the per-order reservations. Stock is never negative and never
//! reserved twice.

mod commands;
mod events;
#[cfg(test)]
mod tests;

pub use commands::InventoryCommand;
pub use events::InventoryEvent;

use std::collections::BTreeMap;

use serde::Serialize;
use uuid::Uuid;

use sagaflow_engine::{Aggregate, DomainError};

use crate::types::{Quantity, Sku};

/// The stock of one SKU (stream `inventory-<sku>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Inventory {
    on_hand: i64,
    reserved: i64,
    reservations: BTreeMap<Uuid, i64>,
}

impl Inventory {
    /// Units physically in stock, reserved or not. Never negative.
    pub fn on_hand(&self) -> i64 {
        self.on_hand
    }

    /// Units set aside for orders. Never negative, never more than [`Self::on_hand`].
    pub fn reserved(&self) -> i64 {
        self.reserved
    }

    /// Units that a new reservation may take: `on_hand - reserved`, never negative.
    pub fn available(&self) -> i64 {
        self.on_hand - self.reserved
    }

    /// The units reserved for `order_id`, if it holds a reservation.
    pub fn reservation(&self, order_id: Uuid) -> Option<i64> {
        self.reservations.get(&order_id).copied()
    }

    /// Every open reservation, by order id.
    pub fn reservations(&self) -> &BTreeMap<Uuid, i64> {
        &self.reservations
    }

    fn restock(&self, quantity: Quantity) -> Result<Vec<InventoryEvent>, InventoryError> {
        self.on_hand
            .checked_add(quantity.get())
            .ok_or(InventoryError::QuantityTooLarge)?;
        Ok(vec![InventoryEvent::StockRestocked {
            quantity: quantity.get(),
        }])
    }

    fn reserve(
        &self,
        order_id: Uuid,
        quantity: Quantity,
    ) -> Result<Vec<InventoryEvent>, InventoryError> {
        let requested = quantity.get();
        match self.reservation(order_id) {
            Some(held) if held == requested => Ok(vec![]),
            Some(held) => Err(InventoryError::ReservationMismatch {
                order_id,
                held,
                requested,
            }),
            None if self.available() < requested => Err(InventoryError::InsufficientStock {
                requested,
                available: self.available(),
            }),
            None => Ok(vec![InventoryEvent::StockReserved {
                order_id,
                quantity: requested,
            }]),
        }
    }

    fn release(&self, order_id: Uuid) -> Vec<InventoryEvent> {
        self.reservation(order_id)
            .map(|quantity| InventoryEvent::StockReleased { order_id, quantity })
            .into_iter()
            .collect()
    }

    fn commit(&self, order_id: Uuid) -> Result<Vec<InventoryEvent>, InventoryError> {
        let quantity = self
            .reservation(order_id)
            .ok_or(InventoryError::ReservationNotFound { order_id })?;
        Ok(vec![InventoryEvent::StockCommitted { order_id, quantity }])
    }
}

/// Why an inventory command was refused. Nothing was recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    /// Restocking would take the stock on hand past `i64::MAX`.
    #[error("restocking would overflow the stock on hand")]
    QuantityTooLarge,
    /// The order already holds a reservation of another quantity.
    #[error("order {order_id} already reserved {held} units, not {requested}")]
    ReservationMismatch {
        /// The order.
        order_id: Uuid,
        /// Units it holds.
        held: i64,
        /// Units asked for now.
        requested: i64,
    },
    /// Fewer units are available than the reservation asks for.
    #[error("{requested} units requested, only {available} available")]
    InsufficientStock {
        /// Units asked for.
        requested: i64,
        /// Units available: on hand and not reserved.
        available: i64,
    },
    /// The order holds no reservation here to commit.
    #[error("order {order_id} holds no reservation")]
    ReservationNotFound {
        /// The order.
        order_id: Uuid,
    },
}

impl DomainError for InventoryError {
    fn code(&self) -> &'static str {
        match self {
            InventoryError::QuantityTooLarge => "quantity_too_large",
            InventoryError::ReservationMismatch { .. } => "reservation_mismatch",
            InventoryError::InsufficientStock { .. } => "insufficient_stock",
            InventoryError::ReservationNotFound { .. } => "reservation_not_found",
        }
    }
}

impl Aggregate for Inventory {
    const TYPE: &'static str = "inventory";
    const CONTEXT: &'static str = "inventory";
    type Command = InventoryCommand;
    type Event = InventoryEvent;
    type Error = InventoryError;

    fn handle(&self, command: &InventoryCommand) -> Result<Vec<InventoryEvent>, InventoryError> {
        match command {
            InventoryCommand::Restock { quantity } => self.restock(*quantity),
            InventoryCommand::Reserve { order_id, quantity } => self.reserve(*order_id, *quantity),
            InventoryCommand::Release { order_id } => Ok(self.release(*order_id)),
            InventoryCommand::Commit { order_id } => self.commit(*order_id),
        }
    }

    // `handle` only decides events that keep the invariant, so this arithmetic cannot overflow
    // on a history it decided; saturating keeps `apply` infallible on any other input.
    fn apply(&mut self, event: &InventoryEvent) {
        match event {
            InventoryEvent::StockRestocked { quantity } => {
                self.on_hand = self.on_hand.saturating_add(*quantity);
            }
            InventoryEvent::StockReserved { order_id, quantity } => {
                self.reserved = self.reserved.saturating_add(*quantity);
                self.reservations.insert(*order_id, *quantity);
            }
            InventoryEvent::StockReleased { order_id, quantity } => {
                self.reserved = self.reserved.saturating_sub(*quantity);
                self.reservations.remove(order_id);
            }
            InventoryEvent::StockCommitted { order_id, quantity } => {
                self.on_hand = self.on_hand.saturating_sub(*quantity);
                self.reserved = self.reserved.saturating_sub(*quantity);
                self.reservations.remove(order_id);
            }
        }
    }

    /// The SKU rule of [`Sku`]: 1 to 64 characters of `A-Z a-z 0-9 _ . -`.
    fn validate_id(id: &str) -> Result<(), String> {
        Sku::check(id).map_err(|e| e.to_string())
    }

    fn id_schema() -> utoipa::openapi::Schema {
        crate::types::sku_schema()
    }
}
