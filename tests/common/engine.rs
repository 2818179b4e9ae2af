//! A whole engine in this process (HTTP, relay, orchestrator, participants, projectors) on a
//! given transport, and the domain helpers the saga tests use.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
pub use sagaflow::app::Component;
use sagaflow::app::{Components, Options, Running as Started, Service};
use sagaflow_engine::relay::RelayConfig;
use sagaflow_engine::transport::Transport;
use sagaflow_sagas::inventory::Inventory;
use sagaflow_sagas::order::{Order, OrderStatus};
use sagaflow_sagas::payment::Account;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use super::transport::eventually;

/// The shop's participants, as components.
pub const PAYMENT: Component = Component::Participant("account");
pub const INVENTORY: Component = Component::Participant("inventory");
pub const ORDER: Component = Component::Participant("order");

/// The relay settings of the tests: quick polls and short backoffs.
pub fn test_relay() -> RelayConfig {
    RelayConfig {
        idle_poll: Duration::from_millis(200),
        max_backoff: Duration::from_secs(1),
        ..Default::default()
    }
}

pub struct Running {
    pub service: Service,
    started: Started,
    pub base: String,
    pub client: reqwest::Client,
    pub pool: PgPool,
}

/// Starts the given components, with every saga command through its participant's topic
/// (the tests that use it stop participants to make sagas wait, or follow a command across
/// the transport); HTTP is always served. `tests/local_steps.rs` runs the default, local
/// steps, with [`start_engine_with`].
pub async fn start_engine(
    pool: &PgPool,
    transport: &Arc<dyn Transport>,
    components: &[Component],
) -> Running {
    start_engine_with(pool, transport, components, through_topics()).await
}

/// The default options, but every saga command through its participant's topic.
pub fn through_topics() -> Options {
    Options {
        local_steps: false,
        ..Default::default()
    }
}

/// [`start_engine`] with options.
pub async fn start_engine_with(
    pool: &PgPool,
    transport: &Arc<dyn Transport>,
    components: &[Component],
    options: Options,
) -> Running {
    let app = super::shop();
    let topics = app.topics();
    transport
        .ensure_topics(&topics.iter().map(String::as_str).collect::<Vec<_>>())
        .await
        .expect("topics");
    let service = app
        .build(pool.clone(), transport.clone(), &options)
        .expect("the shop fits together");
    let started = service.start(&Components::new(components.iter().copied()), test_relay());
    let addr = super::spawn_server(service.router.clone()).await;
    Running {
        service,
        started,
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        pool: pool.clone(),
    }
}

pub fn everything() -> Vec<Component> {
    super::shop().components().iter().copied().collect()
}

pub fn everything_but(excluded: &[Component]) -> Vec<Component> {
    everything()
        .into_iter()
        .filter(|c| !excluded.contains(c))
        .collect()
}

impl Running {
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        super::read(r).await
    }

    pub async fn restock(&self, sku: &str, quantity: i64) {
        let (s, b) = self
            .post(
                &format!("/inventory/{sku}/restock"),
                json!({"quantity": quantity}),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    }

    pub async fn deposit(&self, customer: Uuid, cents: i64) {
        let (s, b) = self
            .post(
                &format!("/accounts/{customer}/deposits"),
                json!({"amount_cents": cents}),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    }

    /// Places an order; returns (order id, saga id).
    pub async fn order(&self, customer: Uuid, lines: &[(&str, i64, i64)]) -> (Uuid, Uuid) {
        let lines: Vec<Value> = lines
            .iter()
            .map(|(sku, q, p)| json!({"sku": sku, "quantity": q, "unit_price_cents": p}))
            .collect();
        let (s, b) = self
            .post("/orders", json!({"customer_id": customer, "lines": lines}))
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{b}");
        (
            b["order_id"].as_str().unwrap().parse().unwrap(),
            b["saga_id"].as_str().unwrap().parse().unwrap(),
        )
    }

    pub async fn stop(self) {
        self.started.stop().await;
    }
}

/// A fresh copy of the shop over `pool`, for reading aggregates from the event store.
fn fresh(pool: &PgPool) -> Service {
    super::shop()
        .build(
            pool.clone(),
            super::transport::postgres(pool),
            &Options::default(),
        )
        .expect("the shop fits together")
}

/// (on_hand, reserved) from the event store.
pub async fn stock(pool: &PgPool, sku: &str) -> (i64, i64) {
    let repo = fresh(pool).repository::<Inventory>().unwrap();
    let inv = repo.load(sku).await.unwrap().state;
    (inv.on_hand(), inv.reserved())
}

/// (balance, held) from the event store.
pub async fn account(pool: &PgPool, customer: Uuid) -> (i64, i64) {
    let repo = fresh(pool).repository::<Account>().unwrap();
    let acc = repo.load(&customer.to_string()).await.unwrap().state;
    (acc.balance_cents(), acc.held_cents())
}

pub async fn order_status(pool: &PgPool, order_id: Uuid) -> Option<OrderStatus> {
    let repo = fresh(pool).repository::<Order>().unwrap();
    repo.load(&order_id.to_string())
        .await
        .unwrap()
        .state
        .status()
}

/// The saga's state in the read model, if it started.
pub async fn saga_state(pool: &PgPool, saga_id: Uuid) -> Option<String> {
    sqlx::query_scalar("SELECT state FROM sagas WHERE saga_id = $1")
        .bind(saga_id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

/// Waits until every saga is completed, compensated or failed.
pub async fn wait_terminal(pool: &PgPool, sagas: &[Uuid], timeout: Duration) {
    let ids = sagas.to_vec();
    eventually(timeout, &format!("{} sagas reaching a terminal state", ids.len()), || {
        let ids = ids.clone();
        async move {
            let done: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM sagas WHERE saga_id = ANY($1) AND state IN ('completed', 'compensated', 'failed')",
            )
            .bind(&ids)
            .fetch_one(pool)
            .await
            .unwrap();
            done == ids.len() as i64
        }
    })
    .await;
}
