//! Local steps (`Options::local_steps`): the orchestrator runs a saga's commands to the
//! application's participants in its own transaction. On both transports: the paths of order
//! fulfillment end right with no participant running, a whole saga commits in one
//! transaction, contention on one SKU with the command routes writing the same accounts loses
//! nothing, and a saga started without local steps keeps its commands on the topics.

// Amounts are written as dollars_cents (`17_00` is $17.00).
#![allow(clippy::inconsistent_digit_grouping)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::engine::{
    account, everything_but, order_status, saga_state, start_engine, start_engine_with, stock,
    wait_terminal, Component, INVENTORY, ORDER, PAYMENT,
};
use common::transport::{eventually, kafka, postgres};
use sagaflow::app::Options;
use sagaflow_engine::saga::saga_stream;
use sagaflow_engine::transport::Transport;
use sagaflow_sagas::order::OrderStatus;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(120);

fn local() -> Options {
    Options {
        local_steps: true,
        ..Default::default()
    }
}

/// Every component but the participants: a saga that ends did so through local steps.
fn without_participants() -> Vec<Component> {
    everything_but(&[PAYMENT, INVENTORY, ORDER])
}

/// How many transactions wrote a saga's events.
async fn saga_transactions(pool: &PgPool, saga: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM events WHERE stream_id = $1")
        .bind(saga_stream(saga))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Confirmed, out of stock and declined, with no participant running: each saga ends, in one
/// transaction, with the stock and the accounts as the participants would have left them.
async fn every_path_ends_without_a_participant(pool: PgPool, transport: Arc<dyn Transport>) {
    let engine = start_engine_with(&pool, &transport, &without_participants(), local()).await;
    engine.restock("APPLE", 10).await;
    engine.restock("PEAR", 1).await;
    let rich = Uuid::now_v7();
    let poor = Uuid::now_v7();
    engine.deposit(rich, 100_00).await;
    engine.deposit(poor, 1_00).await;

    let (happy, happy_saga) = engine
        .order(rich, &[("APPLE", 3, 5_00), ("PEAR", 1, 2_00)])
        .await;
    wait_terminal(&pool, &[happy_saga], WAIT).await;
    assert_eq!(
        saga_state(&pool, happy_saga).await.as_deref(),
        Some("completed")
    );
    assert_eq!(
        order_status(&pool, happy).await,
        Some(OrderStatus::Confirmed)
    );
    assert_eq!(stock(&pool, "APPLE").await, (10, 3));
    assert_eq!(stock(&pool, "PEAR").await, (1, 1));
    assert_eq!(account(&pool, rich).await, (100_00 - 17_00, 0));
    // Started, four steps and the end: one commit.
    assert_eq!(saga_transactions(&pool, happy_saga).await, 1);

    // Out of stock: the APPLE reservation released, nothing charged.
    let (no_stock, no_stock_saga) = engine
        .order(rich, &[("APPLE", 2, 5_00), ("PEAR", 1, 2_00)])
        .await;
    wait_terminal(&pool, &[no_stock_saga], WAIT).await;
    assert_eq!(
        saga_state(&pool, no_stock_saga).await.as_deref(),
        Some("compensated")
    );
    assert_eq!(
        order_status(&pool, no_stock).await,
        Some(OrderStatus::Rejected)
    );
    assert_eq!(stock(&pool, "APPLE").await, (10, 3));
    assert_eq!(account(&pool, rich).await, (83_00, 0));

    // Declined: stock released, order rejected, the failure recorded.
    let (declined, declined_saga) = engine.order(poor, &[("APPLE", 1, 5_00)]).await;
    wait_terminal(&pool, &[declined_saga], WAIT).await;
    assert_eq!(
        order_status(&pool, declined).await,
        Some(OrderStatus::Rejected)
    );
    assert_eq!(stock(&pool, "APPLE").await, (10, 3));
    assert_eq!(account(&pool, poor).await, (1_00, 0));
    let view: serde_json::Value = engine
        .client
        .get(format!("{}/sagas/{declined_saga}", engine.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["state"], "compensated");
    assert_eq!(view["failure"]["code"], "insufficient_funds");
    assert_eq!(saga_transactions(&pool, declined_saga).await, 1);

    // The timeline still tells every command and its reply.
    let timeline: serde_json::Value = engine
        .client
        .get(format!("{}/sagas/{happy_saga}/timeline", engine.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = timeline.to_string();
    for step in [
        "reserve_stock",
        "authorize_payment",
        "confirm_order",
        "capture_payment",
    ] {
        assert!(text.contains(step), "{step} missing from {text}");
    }
    // Its whole life is one stored event; each step's outcome names the local command it
    // answers as its cause, in the view and in the timeline alike.
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_id = $1")
        .bind(saga_stream(happy_saga))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 1);
    // A few KB, so compressed: with lz4 (migration 0014) on a server built with it, as ours.
    let compression: Option<String> = sqlx::query_scalar(
        "SELECT pg_column_compression(payload) FROM events WHERE stream_id = $1",
    )
    .bind(saga_stream(happy_saga))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(compression.as_deref(), Some("lz4"));
    let rows: Vec<(String, Value, Option<Uuid>)> = sqlx::query_as(
        "SELECT event_type, payload, (metadata->>'causation_id')::uuid FROM saga_events
         WHERE stream_id = $1 ORDER BY stream_version, part",
    )
    .bind(saga_stream(happy_saga))
    .fetch_all(&pool)
    .await
    .unwrap();
    // The commands each step sent, and the step outcomes' causes: the command each answers.
    let mut sent: Vec<Uuid> = Vec::new();
    let mut answered: Vec<Uuid> = Vec::new();
    for (event_type, payload, cause) in &rows {
        let id = |v: &Value| -> Uuid { v.as_str().unwrap().parse().unwrap() };
        match event_type.as_str() {
            "step_invoked" => sent.extend(
                payload["commands"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| id(&c["message_id"])),
            ),
            "step_succeeded" => {
                let command = id(&payload["reply"]["command_id"]);
                assert_eq!(*cause, Some(command), "{payload}");
                assert!(sent.contains(&command), "{payload}");
                answered.push(command);
            }
            _ => {}
        }
    }
    assert_eq!(answered.len(), 4, "{rows:?}");
    let timeline_causes: Vec<Option<Uuid>> = timeline["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"] == "step_succeeded")
        .map(|e| e["causation_id"].as_str().map(|s| s.parse().unwrap()))
        .collect();
    assert_eq!(
        timeline_causes,
        answered.into_iter().map(Some).collect::<Vec<_>>()
    );
    engine.stop().await;
}

/// 200 concurrent orders for one SKU with stock 50, while the deposit route writes the same
/// accounts: exactly 50 confirmed, every cent accounted for, and no saga input parked (an
/// account that moved under a local step is tried again, not counted as a failure).
async fn contention_with_the_command_routes(pool: PgPool, transport: Arc<dyn Transport>) {
    let engine = start_engine_with(&pool, &transport, &without_participants(), local()).await;
    engine.restock("HOT", 50).await;
    let customers: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
    for c in &customers {
        engine.deposit(*c, 1_000_00).await;
    }
    let engine = Arc::new(engine);
    let mut orders = Vec::new();
    for i in 0..200 {
        let (engine, customer) = (engine.clone(), customers[i % customers.len()]);
        orders.push(tokio::spawn(async move {
            engine.order(customer, &[("HOT", 1, 7_00)]).await
        }));
    }
    // 200 concurrent deposits on the same accounts: the command routes' group commits and
    // the orchestrator's local steps write the same streams in different orders, so
    // PostgreSQL can find them deadlocked; the loser is tried again, never answered 500.
    let mut deposits = Vec::new();
    for i in 0..200 {
        let (engine, customer) = (engine.clone(), customers[i % customers.len()]);
        deposits.push(tokio::spawn(
            async move { engine.deposit(customer, 1).await },
        ));
    }
    let mut placed = Vec::new();
    for t in orders {
        placed.push(t.await.unwrap());
    }
    for t in deposits {
        t.await.unwrap();
    }
    let sagas: Vec<Uuid> = placed.iter().map(|o| o.1).collect();
    wait_terminal(&pool, &sagas, WAIT).await;
    let (mut confirmed, mut rejected) = (0, 0);
    for (order, _) in &placed {
        match order_status(&pool, *order).await {
            Some(OrderStatus::Confirmed) => confirmed += 1,
            Some(OrderStatus::Rejected) => rejected += 1,
            other => panic!("order {order} ended {other:?}"),
        }
    }
    assert_eq!((confirmed, rejected), (50, 150));
    assert_eq!(stock(&pool, "HOT").await, (50, 50));
    let mut charged = 0;
    for c in &customers {
        let (balance, held) = account(&pool, *c).await;
        assert_eq!(held, 0);
        // 20 deposits of a cent each.
        charged += 1_000_00 + 20 - balance;
    }
    assert_eq!(charged, 50 * 7_00);
    let (failed, parked): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM sagas WHERE state = 'failed'),
                (SELECT count(*) FROM dead_letters)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((failed, parked), (0, 0));
    Arc::into_inner(engine).unwrap().stop().await;
}

/// A saga started without local steps waits for its payment (the participant is down); the
/// engine comes back with local steps and no participant. The saga keeps its commands on the
/// topics: it moves only when the payment participant runs again, and its cancel compensates
/// through them too, in order (the void after the authorization it undoes).
async fn a_saga_started_without_them_keeps_the_topics(pool: PgPool, transport: Arc<dyn Transport>) {
    let before = start_engine(&pool, &transport, &everything_but(&[PAYMENT])).await;
    before.restock("LAMP", 5).await;
    let customer = Uuid::now_v7();
    before.deposit(customer, 100_00).await;
    let (waiting, waiting_saga) = before.order(customer, &[("LAMP", 2, 10_00)]).await;
    let (cancelled, cancelled_saga) = before.order(customer, &[("LAMP", 1, 10_00)]).await;
    let at_payment = |saga: Uuid| {
        let pool = pool.clone();
        async move {
            let step: Option<String> =
                sqlx::query_scalar("SELECT current_step FROM sagas WHERE saga_id = $1")
                    .bind(saga)
                    .fetch_optional(&pool)
                    .await
                    .unwrap()
                    .flatten();
            step.as_deref() == Some("authorize_payment")
        }
    };
    eventually(WAIT, "both sagas waiting for their payment", || async {
        at_payment(waiting_saga).await && at_payment(cancelled_saga).await
    })
    .await;
    before.stop().await;

    let after = start_engine_with(&pool, &transport, &without_participants(), local()).await;
    // A new saga runs locally beside them.
    let (fresh, fresh_saga) = after.order(customer, &[("LAMP", 1, 10_00)]).await;
    wait_terminal(&pool, &[fresh_saga], WAIT).await;
    assert_eq!(
        order_status(&pool, fresh).await,
        Some(OrderStatus::Confirmed)
    );
    let (s, body) = after
        .post(
            &format!("/orders/{cancelled}/cancel"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(s, reqwest::StatusCode::ACCEPTED, "{body}");
    eventually(WAIT, "the cancelled saga compensating", || async {
        saga_state(&pool, cancelled_saga).await.as_deref() == Some("compensating")
    })
    .await;
    // Nothing runs their commands here: they wait on the payment's topic.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(at_payment(waiting_saga).await);
    assert_eq!(
        saga_state(&pool, cancelled_saga).await.as_deref(),
        Some("compensating")
    );
    assert_eq!(stock(&pool, "LAMP").await, (5, 4));

    let payment = start_engine(&pool, &transport, &[PAYMENT, INVENTORY, ORDER]).await;
    wait_terminal(&pool, &[waiting_saga, cancelled_saga], WAIT).await;
    assert_eq!(
        saga_state(&pool, waiting_saga).await.as_deref(),
        Some("completed")
    );
    assert_eq!(
        order_status(&pool, waiting).await,
        Some(OrderStatus::Confirmed)
    );
    assert_eq!(
        saga_state(&pool, cancelled_saga).await.as_deref(),
        Some("compensated")
    );
    assert_eq!(
        order_status(&pool, cancelled).await,
        Some(OrderStatus::Cancelled)
    );
    // Confirmed: 2 + 1 lamps, $30 charged; the cancelled order's hold voided, its lamp released.
    assert_eq!(stock(&pool, "LAMP").await, (5, 3));
    assert_eq!(account(&pool, customer).await, (100_00 - 30_00, 0));
    payment.stop().await;
    after.stop().await;
}

macro_rules! on_both_transports {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;

            #[sqlx::test(migrator = "common::MIGRATOR")]
            async fn postgres_transport(pool: PgPool) {
                let transport = postgres(&pool);
                super::$name(pool, transport).await;
            }

            #[sqlx::test(migrator = "common::MIGRATOR")]
            async fn kafka_transport(pool: PgPool) {
                super::$name(pool, kafka()).await;
            }
        }
    )*};
}

on_both_transports!(
    every_path_ends_without_a_participant,
    contention_with_the_command_routes,
    a_saga_started_without_them_keeps_the_topics,
);
