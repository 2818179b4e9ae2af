//! sagaflow-projections: the shop's read models and their query routes, and [`shop`], which
//! installs the whole shop (the domain of `sagaflow-sagas` and these read models) with one
//! call.
//!
//! | projection | table | streams | topic | routes |
//! |---|---|---|---|---|
//! | `orders` | `read_orders` | `order-<id>` | `order.events` | `GET /orders/{order_id}`, `GET /orders` |
//! | `inventory` | `read_inventory` | `inventory-<sku>` | `inventory.events` | `GET /inventory/{sku}` |
//! | `accounts` | `read_accounts` | `account-<id>` | `payment.events` | `GET /accounts/{customer_id}` |
//!
//! Each is a [`Projector`](sagaflow_engine::projection::Projector) on the engine's projection
//! runtime: its live consumer, its rebuild and its admin entry come from registering it.

#![warn(missing_docs)]

pub mod accounts;
pub mod inventory;
pub mod orders;

#[cfg(test)]
mod tests;

use sagaflow_engine::http::query::QueryState;
use sagaflow_engine::App;
use sqlx::migrate::Migrator;

/// The read models' tables (`migrations/` at the top of the workspace).
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Installs the whole shop: orders, inventory and accounts with the order fulfillment saga and
/// the domain's command routes ([`sagaflow_sagas::install`]), and the read models with their
/// query routes ([`read_models`]).
pub fn shop(app: App) -> App {
    app.install(sagaflow_sagas::install).install(read_models)
}

/// Registers the shop's read models, their tables and their query routes.
pub fn read_models(app: App) -> App {
    app.migrations("sagaflow-projections", &MIGRATOR)
        .projection(orders::OrdersProjection)
        .projection(inventory::InventoryProjection)
        .projection(accounts::AccountsProjection)
        .routes(|services| routes(services.query()))
}

/// The query routes of every read model of the shop.
pub fn routes(state: QueryState) -> utoipa_axum::router::OpenApiRouter {
    orders::routes(state.clone())
        .merge(inventory::routes(state.clone()))
        .merge(accounts::routes(state))
}
