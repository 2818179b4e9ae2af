//! sagaflow-projections: read models kept by projectors, and the query routes over them.
//!
//! | projection | table | streams | topic | routes |
//! |---|---|---|---|---|
//! | `orders` | `read_orders` | `order-<id>` | `order.events` | `GET /orders/{order_id}`, `GET /orders` |
//! | `inventory` | `read_inventory` | `inventory-<sku>` | `inventory.events` | `GET /inventory/{sku}` |
//! | `accounts` | `read_accounts` | `account-<id>` | `payment.events` | `GET /accounts/{customer_id}` |
//!
//! Each projection is a [`Projector`] (see [`projector`] for the guarantees: idempotent by
//! stream version, self-healing from the event store, rows and offset in one transaction),
//! run live by its own consumer group `projection:<name>`, and rebuildable from the event
//! store at any time while traffic continues ([`rebuild`]). Responses say how fresh they are
//! ([`query`]).
//!
//! **Adding a read model** takes one module (a [`Projector`] with its routes), one migration
//! (its table), and one line in [`registry`]; its consumer, rebuild (CLI and admin route) and
//! `GET /admin/projections` entry follow.

pub mod accounts;
mod admin;
pub mod inventory;
pub mod orders;
pub mod projector;
pub mod query;
pub mod rebuild;

#[cfg(test)]
mod tests;

pub use admin::ProjectionInfo;
pub use projector::{
    ProjectionError, Projector, ProjectorHandler, StoredEvent, Versioned, EVENT_COLUMNS,
};
pub use rebuild::{
    ProgressFn, RebuildError, RebuildJob, RebuildOptions, RebuildProgress, RebuildReport,
};

use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use sagaflow_engine::consumer::{Consumer, ConsumerConfig, Handler};
use sagaflow_engine::transport::Transport;
use sqlx::PgPool;

use query::QueryState;

/// Every read model of sagaflow, in the order `GET /admin/projections` lists them.
pub fn registry() -> Vec<Arc<dyn Projection>> {
    vec![
        register(orders::OrdersProjection),
        register(inventory::InventoryProjection),
        register(accounts::AccountsProjection),
    ]
}

/// The consumer group of a projection's live projector.
pub fn group_of(name: &str) -> String {
    format!("projection:{name}")
}

/// A registered projection, whatever its row type: what the runtime needs of it.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// The logical topic its live projector consumes.
    fn topic(&self) -> &'static str;
    /// The prefix of the streams it folds, one row each.
    fn stream_prefix(&self) -> &'static str;
    /// Its tables (the first holds one row per stream, with its `version`).
    fn tables(&self) -> &'static [&'static str];
    /// The live projector, for a [`Consumer`].
    fn handler(&self) -> Arc<dyn Handler>;
    fn routes(&self, state: QueryState) -> Router;
    /// Starts a rebuild; see [`rebuild::begin`].
    async fn begin_rebuild(
        &self,
        pool: PgPool,
        options: RebuildOptions,
        on_progress: ProgressFn,
    ) -> Result<RebuildJob, RebuildError>;
}

/// Wraps a [`Projector`] as a [`Projection`].
pub fn register<P: Projector>(projector: P) -> Arc<dyn Projection> {
    Arc::new(Registered(Arc::new(projector)))
}

struct Registered<P>(Arc<P>);

#[async_trait]
impl<P: Projector> Projection for Registered<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn topic(&self) -> &'static str {
        P::TOPIC
    }

    fn stream_prefix(&self) -> &'static str {
        P::STREAM_PREFIX
    }

    fn tables(&self) -> &'static [&'static str] {
        P::TABLES
    }

    fn handler(&self) -> Arc<dyn Handler> {
        Arc::new(ProjectorHandler::new(self.0.clone()))
    }

    fn routes(&self, state: QueryState) -> Router {
        self.0.routes(state)
    }

    async fn begin_rebuild(
        &self,
        pool: PgPool,
        options: RebuildOptions,
        on_progress: ProgressFn,
    ) -> Result<RebuildJob, RebuildError> {
        rebuild::begin(self.0.clone(), pool, options, on_progress).await
    }
}

/// The names of every projection.
pub fn names() -> Vec<&'static str> {
    registry().iter().map(|p| p.name()).collect()
}

/// Starts rebuilding projection `name` over `pool` (no transport needed: the rebuild reads the
/// event store). Await or spawn the returned job's `run`.
pub async fn begin_rebuild(
    pool: PgPool,
    name: &str,
    options: RebuildOptions,
    on_progress: ProgressFn,
) -> Result<RebuildJob, RebuildError> {
    let Some(p) = registry().into_iter().find(|p| p.name() == name) else {
        return Err(RebuildError::UnknownProjection {
            name: name.to_owned(),
            known: names().join(", "),
        });
    };
    p.begin_rebuild(pool, options, on_progress).await
}

/// The read models of sagaflow: their projectors, query routes and admin routes.
#[derive(Clone)]
pub struct Projections {
    pool: PgPool,
    transport: Arc<dyn Transport>,
    all: Arc<[Arc<dyn Projection>]>,
}

impl Projections {
    pub fn new(pool: PgPool, transport: Arc<dyn Transport>) -> Self {
        Projections {
            pool,
            transport,
            all: registry().into(),
        }
    }

    /// The public query routes of every projection.
    pub fn router(&self) -> Router {
        let state = QueryState {
            pool: self.pool.clone(),
            layout: self.transport.layout().clone(),
        };
        self.all
            .iter()
            .fold(Router::new(), |r, p| r.merge(p.routes(state.clone())))
    }

    /// The `/admin/projections…` routes; the caller puts them behind the admin token.
    pub fn admin_router(&self) -> Router {
        admin::routes(admin::AdminState {
            pool: self.pool.clone(),
            transport: self.transport.clone(),
            projections: self.all.clone(),
        })
    }

    /// The live projectors, one consumer group (`projection:<name>`) each, for the caller to
    /// run. Any number of processes may run them: the group shares the partitions.
    pub fn consumers(&self) -> Vec<Consumer> {
        self.all
            .iter()
            .map(|p| {
                Consumer::new(
                    self.pool.clone(),
                    self.transport.clone(),
                    p.handler(),
                    // A projector skips an event at or below its row's version itself.
                    ConsumerConfig::new(group_of(p.name()), &[p.topic()]).handler_is_idempotent(),
                )
            })
            .collect()
    }
}
