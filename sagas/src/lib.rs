//! sagaflow-sagas: the order / inventory / payment domain of sagaflow.
//!
//! Three aggregates, each in the module named after its concept: [`order::Order`] (placed,
//! then confirmed, rejected or cancelled once), [`inventory::Inventory`] (stock per SKU, never
//! negative, reserved per order) and [`payment::Account`] (money per customer, held per order,
//! never held beyond the balance). [`types`] holds the validated values their commands carry,
//! and [`http`] the domain's command routes.

pub mod http;
pub mod inventory;
pub mod order;
pub mod order_fulfillment;
pub mod payment;
pub mod types;

use std::sync::Arc;

use axum::Router;
use sagaflow_engine::command::{CommandBus, Repository};
use sagaflow_engine::http::CommandRegistry;

use inventory::Inventory;
use order::Order;
use payment::Account;

/// The domain's repositories. Cloning shares them (and their caches of loaded aggregates).
#[derive(Clone)]
pub struct Domain {
    pub orders: Arc<Repository<Order>>,
    pub inventory: Arc<Repository<Inventory>>,
    pub accounts: Arc<Repository<Account>>,
}

impl Domain {
    pub fn new(bus: &CommandBus) -> Self {
        Domain {
            orders: Arc::new(Repository::new(bus.clone())),
            inventory: Arc::new(Repository::new(bus.clone())),
            accounts: Arc::new(Repository::new(bus.clone())),
        }
    }

    /// Makes `order`, `inventory` and `account` reachable through the engine's generic route
    /// `POST /commands/{aggregate_type}/{aggregate_id}`, sharing these repositories (so the
    /// generic and the domain routes serialize commands for one stream in one queue).
    pub fn register(&self, registry: &mut CommandRegistry) {
        registry
            .register(self.orders.clone())
            .register(self.inventory.clone())
            .register(self.accounts.clone());
    }
}

/// The sagas of the domain, for the orchestrator.
pub fn sagas() -> Vec<Arc<sagaflow_engine::saga::Saga>> {
    vec![order_fulfillment::order_fulfillment()]
}

/// The domain's command routes (see [`http`]), with their state applied.
pub fn router(domain: &Domain) -> Router {
    http::routes(domain.clone())
}
