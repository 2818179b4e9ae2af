//! sagaflow-sagas: the order / inventory / payment domain of the shop, sagaflow's first user.
//!
//! Three aggregates, each in the module named after its concept: [`order::Order`] (placed,
//! then confirmed, rejected or cancelled once), [`inventory::Inventory`] (stock per SKU, never
//! negative, reserved per order) and [`payment::Account`] (money per customer, held per order,
//! never held beyond the balance). [`types`] holds the validated values their commands carry,
//! [`order_fulfillment`] the saga, and [`http`] the domain's command routes. [`install`]
//! registers all of it with an application; the shop's read models are in
//! `sagaflow-projections`, whose `shop` installs the whole shop.

#![warn(missing_docs)]

pub mod bench;
pub mod http;
pub mod inventory;
pub mod order;
pub mod order_fulfillment;
pub mod payment;
pub mod types;

use std::sync::Arc;

use sagaflow_engine::app::Services;
use sagaflow_engine::command::Repository;
use sagaflow_engine::App;

use inventory::Inventory;
use order::Order;
use payment::Account;

/// Registers the domain with `app`: the three aggregates, each also a saga participant, the
/// order fulfillment saga, the domain's command routes and its benchmark workload.
pub fn install(app: App) -> App {
    app.participant::<Order>()
        .participant::<Inventory>()
        .participant::<Account>()
        .saga(order_fulfillment::order_fulfillment())
        .routes(|services| http::routes(Domain::of(services)))
        .bench_workload(bench::ShopWorkload)
}

/// The domain's repositories, shared with the rest of the process (the generic command route
/// and the participants serialize commands for one stream in the same queue).
#[derive(Clone)]
pub struct Domain {
    /// The repository of the [`Order`] aggregate.
    pub orders: Arc<Repository<Order>>,
    /// The repository of the [`Inventory`] aggregate.
    pub inventory: Arc<Repository<Inventory>>,
    /// The repository of the [`Account`] aggregate.
    pub accounts: Arc<Repository<Account>>,
}

impl Domain {
    /// The domain's repositories in a built application.
    pub fn of(services: &Services) -> Self {
        Domain {
            orders: services.repository::<Order>(),
            inventory: services.repository::<Inventory>(),
            accounts: services.repository::<Account>(),
        }
    }
}
