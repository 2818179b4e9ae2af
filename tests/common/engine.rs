//! A whole engine in this process (HTTP, relay, orchestrator, participants, projectors) on a
//! given transport, and the domain helpers the saga tests use.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use sagaflow::config::Component;
use sagaflow::{AppOptions, Engine};
use sagaflow_engine::outbox::RelayConfig;
use sagaflow_engine::transport::Transport;
use sagaflow_sagas::order::OrderStatus;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use super::transport::eventually;

pub struct Running {
    pub engine: Engine,
    pub base: String,
    pub client: reqwest::Client,
    pub pool: PgPool,
}

/// Starts the given components; HTTP is always served.
pub async fn start_engine(
    pool: &PgPool,
    transport: &Arc<dyn Transport>,
    components: &[Component],
) -> Running {
    let topics = sagaflow::all_topics();
    transport
        .ensure_topics(&topics.iter().map(String::as_str).collect::<Vec<_>>())
        .await
        .expect("topics");
    let components: HashSet<Component> = components.iter().copied().collect();
    let engine = Engine::start(
        pool.clone(),
        transport.clone(),
        &components,
        RelayConfig {
            idle_poll: Duration::from_millis(200),
            max_backoff: Duration::from_secs(1),
            ..Default::default()
        },
        &AppOptions::default(),
    );
    let addr = sagaflow::spawn_server(engine.app.router.clone())
        .await
        .unwrap();
    Running {
        engine,
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        pool: pool.clone(),
    }
}

pub fn everything() -> Vec<Component> {
    Component::ALL.to_vec()
}

pub fn everything_but(excluded: &[Component]) -> Vec<Component> {
    Component::ALL
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
        self.engine.stop().await;
    }
}

/// (on_hand, reserved) from the event store.
pub async fn stock(pool: &PgPool, sku: &str) -> (i64, i64) {
    let app = sagaflow::build_app(
        pool.clone(),
        super::transport::postgres(pool),
        &AppOptions::default(),
    );
    let inv = app.domain.inventory.load(sku).await.unwrap().state;
    (inv.on_hand(), inv.reserved())
}

/// (balance, held) from the event store.
pub async fn account(pool: &PgPool, customer: Uuid) -> (i64, i64) {
    let app = sagaflow::build_app(
        pool.clone(),
        super::transport::postgres(pool),
        &AppOptions::default(),
    );
    let acc = app
        .domain
        .accounts
        .load(&customer.to_string())
        .await
        .unwrap()
        .state;
    (acc.balance_cents(), acc.held_cents())
}

pub async fn order_status(pool: &PgPool, order_id: Uuid) -> Option<OrderStatus> {
    let app = sagaflow::build_app(
        pool.clone(),
        super::transport::postgres(pool),
        &AppOptions::default(),
    );
    app.domain
        .orders
        .load(&order_id.to_string())
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
