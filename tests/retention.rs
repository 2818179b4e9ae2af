//! Retention keeps the tables that grow with traffic bounded while nothing is lost or applied
//! twice: thousands of sagas run with windows of a second, and the embedded log, the message
//! ids, the idempotency keys and the resolved dead letters stay small, the log never losing a
//! message a registered group has not committed.

mod common;

use std::time::Duration;

use common::engine::{
    start_engine_with, wait_terminal, Component, Running, INVENTORY, ORDER, PAYMENT,
};
use common::transport::{eventually, postgres};
use reqwest::StatusCode;
use sagaflow::app::Options;
use sagaflow_engine::ops::Retention;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

const ORDERS: usize = 3_000;

fn short() -> Retention {
    Retention {
        log: Duration::from_secs(1),
        processed: Duration::from_secs(1),
        idempotency_keys: Duration::from_secs(1),
        dead_letters: Duration::from_secs(1),
        interval: Duration::from_millis(300),
        batch: 200,
    }
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Rows of the log on the topics of the domain's events (read by the projections).
async fn event_log_rows(pool: &PgPool) -> i64 {
    count(
        pool,
        "SELECT count(*) FROM message_log WHERE topic LIKE '%.events'",
    )
    .await
}

async fn place(engine: &Running, n: usize, customers: &[Uuid], skus: &[&str]) -> Vec<Uuid> {
    let mut sagas = Vec::with_capacity(n);
    let mut pending = futures::stream::FuturesUnordered::new();
    for i in 0..n {
        let client = engine.client.clone();
        let url = format!("{}/orders", engine.base);
        let body = json!({
            "customer_id": customers[i % customers.len()],
            "lines": [{"sku": skus[i % skus.len()], "quantity": 1, "unit_price_cents": 100}],
        });
        pending.push(async move {
            let r = client
                .post(url)
                .header("Idempotency-Key", format!("order-{i}"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::ACCEPTED);
            let v: serde_json::Value = r.json().await.unwrap();
            v["saga_id"].as_str().unwrap().parse::<Uuid>().unwrap()
        });
        if pending.len() >= 32 {
            use futures::StreamExt;
            sagas.push(pending.next().await.unwrap());
        }
    }
    use futures::StreamExt;
    while let Some(s) = pending.next().await {
        sagas.push(s);
    }
    sagas
}

#[sqlx::test(migrator = "common::MIGRATOR")]
async fn short_windows_keep_the_tables_small_and_lose_nothing(pool: PgPool) {
    let transport = postgres(&pool);
    // Everything but the projectors: their groups read the events topics and commit nothing.
    let engine = start_engine_with(
        &pool,
        &transport,
        &[
            Component::Http,
            Component::Relay,
            Component::Orchestrator,
            INVENTORY,
            PAYMENT,
            ORDER,
        ],
        // Through the topics: the commands and replies are most of what the log holds.
        Options {
            retention: short(),
            ..common::engine::through_topics()
        },
    )
    .await;
    let skus = ["R-1", "R-2", "R-3", "R-4", "R-5"];
    let customers: Vec<Uuid> = (0..20).map(|_| Uuid::now_v7()).collect();
    for sku in skus {
        engine.restock(sku, 1_000_000).await;
    }
    for c in &customers {
        engine.deposit(*c, 1_000_000_000).await;
    }
    // A resolved dead letter from long ago, and a parked one.
    sqlx::query(
        "INSERT INTO dead_letters (consumer_group, topic, partition, \"offset\", message_id, partition_key,
                                   envelope, error, attempts, first_failed_at, last_failed_at, status, resolved_at)
         VALUES ('g', 't', 0, 1, gen_random_uuid(), 'k', '{}', 'e', 1, now(), now(), 'discarded', now() - interval '1 hour'),
                ('g', 't', 0, 2, gen_random_uuid(), 'k', '{}', 'e', 1, now(), now(), 'parked', NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();

    let sagas = place(&engine, ORDERS, &customers, &skus).await;
    wait_terminal(&pool, &sagas, Duration::from_secs(120)).await;
    let appended = count(
        &pool,
        "SELECT COALESCE(sum(next_offset), 0)::int8 FROM message_log_heads",
    )
    .await;
    assert!(
        appended > 10 * ORDERS as i64,
        "{appended} messages appended"
    );

    // Pruned: all but the events topics, which the stopped projectors have not committed.
    eventually(
        Duration::from_secs(30),
        "the pruned tables to be small",
        || async {
            let log = count(&pool, "SELECT count(*) FROM message_log").await;
            let events = event_log_rows(&pool).await;
            let ids = count(&pool, "SELECT count(*) FROM processed_messages").await;
            let keys = count(&pool, "SELECT count(*) FROM idempotency_keys").await;
            let letters = count(&pool, "SELECT count(*) FROM dead_letters").await;
            log - events < 100 && ids < 100 && keys == 0 && letters == 1
        },
    )
    .await;
    // The events the projectors have not committed are all still there.
    let events_appended = count(
        &pool,
        "SELECT COALESCE(sum(next_offset), 0)::int8 FROM message_log_heads WHERE topic LIKE '%.events'",
    )
    .await;
    assert_eq!(event_log_rows(&pool).await, events_appended);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM saga_deadlines").await,
        0,
        "an ended saga keeps no deadline row"
    );
    engine.stop().await;

    // The projectors start, read every event from the log, and then it is pruned too.
    let projections = start_engine_with(
        &pool,
        &transport,
        &[Component::Relay, Component::Projections],
        Options {
            retention: short(),
            ..Default::default()
        },
    )
    .await;
    eventually(
        Duration::from_secs(60),
        "the read models to catch up",
        || async {
            count(
                &pool,
                "SELECT count(*) FROM read_orders WHERE status = 'confirmed'",
            )
            .await
                == ORDERS as i64
        },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "the events topics to be pruned",
        || async { event_log_rows(&pool).await < 100 },
    )
    .await;

    // Nothing lost, nothing applied twice: every order confirmed, each reserved and charged
    // once, stock and money add up.
    let reservations = count(
        &pool,
        "SELECT count(*) FROM events WHERE event_type = 'stock_reserved'",
    )
    .await;
    let distinct = count(
        &pool,
        "SELECT count(DISTINCT payload->>'order_id') FROM events WHERE event_type = 'stock_reserved'",
    )
    .await;
    assert_eq!((reservations, distinct), (ORDERS as i64, ORDERS as i64));
    let captures = count(
        &pool,
        "SELECT count(DISTINCT payload->>'order_id') FROM events WHERE event_type = 'payment_captured'",
    )
    .await;
    assert_eq!(captures, ORDERS as i64);
    let reserved: i64 = count(
        &pool,
        "SELECT COALESCE(sum(reserved), 0)::int8 FROM read_inventory",
    )
    .await;
    assert_eq!(reserved, ORDERS as i64);
    let spent: i64 = count(
        &pool,
        "SELECT COALESCE(sum(1000000000 - balance_cents), 0)::int8 FROM read_accounts",
    )
    .await;
    assert_eq!(spent, 100 * ORDERS as i64);
    projections.stop().await;
}
