//! The read models end to end: commands over HTTP, the relay and the live projectors on the
//! embedded transport, queries over HTTP, and rebuilds while traffic flows. Every check
//! compares the read models with a fold of the `events` table through the domain's aggregates.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use reqwest::StatusCode;
use sagaflow::app::Options;
use sagaflow_engine::aggregate::Aggregate;
use sagaflow_engine::http::admin::AdminToken;
use sagaflow_engine::outbox::{self, OutboxMessage};
use sagaflow_engine::projection::RebuildOptions;
use sagaflow_engine::store::decode_envelope;
use sagaflow_engine::store::EventStore;
use sagaflow_engine::RecordedEvent;
use sagaflow_sagas::inventory::Inventory;
use sagaflow_sagas::order::Order;
use sagaflow_sagas::payment::Account;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use common::engine::{start_engine_with, Component, Running};
use common::transport::eventually;
use common::{error_code, TestApp};

const TOKEN: &str = "secret";

/// The whole application with the relay and the projectors running, admin token `secret`.
async fn start_engine(pool: &PgPool) -> (TestApp, Running) {
    let transport = common::transport::postgres(pool);
    let engine = start_engine_with(
        pool,
        &transport,
        &[Component::Relay, Component::Projections],
        Options {
            admin_token: AdminToken::new(Some(TOKEN)),
            ..Default::default()
        },
    )
    .await;
    let app = TestApp {
        base: engine.base.clone(),
        client: reqwest::Client::new(),
        pool: pool.clone(),
    };
    (app, engine)
}

async fn admin_get(app: &TestApp, path: &str) -> (StatusCode, Value) {
    common::read(
        app.client
            .get(app.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn admin_post(app: &TestApp, path: &str) -> (StatusCode, Value) {
    common::read(
        app.client
            .post(app.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// The outbox is empty, no rebuild runs, and every projector has consumed every message.
async fn caught_up(app: &TestApp) -> bool {
    if app.count("outbox").await != 0 {
        return false;
    }
    let (s, body) = admin_get(app, "/admin/projections").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    body["projections"].as_array().unwrap().iter().all(|p| {
        p["lag"] == 0 && p["state"] == "idle" && !p["partitions"].as_array().unwrap().is_empty()
    })
}

async fn wait_caught_up(app: &TestApp) {
    eventually(
        Duration::from_secs(60),
        "the projectors to catch up",
        || caught_up(app),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Traffic

fn place_body(customer: Uuid, sku: &str, quantity: i64) -> Value {
    json!({"customer_id": customer, "lines": [
        {"sku": sku, "quantity": quantity, "unit_price_cents": 250},
        {"sku": "SKU-GIFT", "quantity": 1, "unit_price_cents": 0}
    ]})
}

async fn accepted(app: &TestApp, path: &str, body: Value) -> Value {
    let (s, b) = app.post(path, body).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{path}: {b}");
    b
}

/// `POST /commands/{aggregate}/{id}`; a `null` payload is left out (unit commands).
async fn command(app: &TestApp, aggregate: &str, id: &str, command: &str, payload: Value) {
    let body = if payload.is_null() {
        json!({"command": command})
    } else {
        json!({"command": command, "payload": payload})
    };
    let (s, b) = app.post(&format!("/commands/{aggregate}/{id}"), body).await;
    // Business rejections (out of stock, say) are part of a realistic workload; malformed
    // commands are not.
    let rejected = s == StatusCode::UNPROCESSABLE_ENTITY
        && !["invalid_body", "unknown_command"].contains(&error_code(&b));
    assert!(
        s == StatusCode::ACCEPTED || rejected,
        "{command} on {aggregate}-{id}: {s} {b}"
    );
}

/// Stock for three SKUs and money for `customers.len()` customers.
async fn seed(app: &TestApp, customers: &[Uuid], quantity: i64) {
    for sku in ["SKU-1", "SKU-2", "SKU-3", "SKU-GIFT"] {
        accepted(
            app,
            &format!("/inventory/{sku}/restock"),
            json!({"quantity": quantity}),
        )
        .await;
    }
    for c in customers {
        accepted(
            app,
            &format!("/accounts/{c}/deposits"),
            json!({"amount_cents": 10_000_000}),
        )
        .await;
    }
}

/// One order through its life, the way the saga will drive it: place, reserve, authorize,
/// then (by `i % 4`) confirm + commit + capture, cancel + release + void, reject + release +
/// void, or leave it pending.
async fn order_flow(app: &TestApp, i: usize, customer: Uuid) -> Uuid {
    let sku = ["SKU-1", "SKU-2", "SKU-3"][i % 3];
    let quantity = 1 + (i % 3) as i64;
    let body = accepted(app, "/orders", place_body(customer, sku, quantity)).await;
    let order_id: Uuid = body["order_id"].as_str().unwrap().parse().unwrap();
    let o = json!({"order_id": order_id});
    let customer = customer.to_string();
    command(
        app,
        "inventory",
        sku,
        "reserve",
        json!({"order_id": order_id, "quantity": quantity}),
    )
    .await;
    command(
        app,
        "account",
        &customer,
        "authorize",
        json!({"order_id": order_id, "amount_cents": quantity * 250}),
    )
    .await;
    let id = order_id.to_string();
    match i % 4 {
        0 => {
            command(app, "order", &id, "confirm", Value::Null).await;
            command(app, "inventory", sku, "commit", o.clone()).await;
            command(app, "account", &customer, "capture", o).await;
        }
        1 => {
            accepted(
                app,
                &format!("/orders/{id}/cancel"),
                json!({"reason": "changed my mind"}),
            )
            .await;
            command(app, "inventory", sku, "release", o.clone()).await;
            command(app, "account", &customer, "void", o).await;
        }
        2 => {
            command(app, "order", &id, "reject", json!({"reason": "no stock"})).await;
            command(app, "inventory", sku, "release", o.clone()).await;
            command(app, "account", &customer, "void", o).await;
        }
        _ => {}
    }
    if i % 10 == 0 {
        accepted(
            app,
            &format!("/inventory/{sku}/restock"),
            json!({"quantity": 3}),
        )
        .await;
    }
    order_id
}

/// Runs `n` order flows, `concurrency` at a time, over `customers`.
async fn orders(app: &TestApp, n: usize, customers: &[Uuid], concurrency: usize) -> Vec<Uuid> {
    futures::stream::iter(0..n)
        .map(|i| order_flow(app, i, customers[i % customers.len()]))
        .buffer_unordered(concurrency)
        .collect()
        .await
}

// ---------------------------------------------------------------------------------------------
// The fold

async fn all_events(pool: &PgPool) -> Vec<RecordedEvent> {
    let store = EventStore::new(pool.clone());
    let mut out: Vec<RecordedEvent> = Vec::new();
    loop {
        let after = out.last().map_or(0, |e| e.global_position);
        let page = store.read_all(after, 1000).await.unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

struct Folded<A> {
    state: A,
    version: i64,
    first_at: DateTime<Utc>,
    last_at: DateTime<Utc>,
}

fn fold_into<A: Aggregate>(map: &mut BTreeMap<String, Folded<A>>, e: &RecordedEvent, id: &str) {
    let f = map.entry(id.to_owned()).or_insert_with(|| Folded {
        state: A::default(),
        version: 0,
        first_at: e.recorded_at,
        last_at: e.recorded_at,
    });
    f.state
        .apply(&decode_envelope::<A::Event>(&e.envelope).unwrap());
    assert_eq!(f.version + 1, e.envelope.stream_version);
    f.version = e.envelope.stream_version;
    f.last_at = e.recorded_at;
}

/// The aggregates folded over every stored event, by id.
#[derive(Default)]
struct Fold {
    orders: BTreeMap<String, Folded<Order>>,
    stock: BTreeMap<String, Folded<Inventory>>,
    accounts: BTreeMap<String, Folded<Account>>,
}

async fn fold(pool: &PgPool) -> Fold {
    let mut f = Fold::default();
    for e in all_events(pool).await {
        let s = &e.envelope.stream_id;
        if let Some(id) = s.strip_prefix("order-") {
            fold_into(&mut f.orders, &e, id);
        } else if let Some(id) = s.strip_prefix("inventory-") {
            fold_into(&mut f.stock, &e, id);
        } else if let Some(id) = s.strip_prefix("account-") {
            fold_into(&mut f.accounts, &e, id);
        }
    }
    f
}

/// Asserts that `actual` has each field of `expected` with its value (times compared as
/// instants).
fn assert_has(actual: &Value, expected: &Value, what: &str) {
    for (field, want) in expected.as_object().unwrap() {
        let got = &actual[field];
        if field.ends_with("_at") {
            let time = |v: &Value| v.as_str().unwrap().parse::<DateTime<Utc>>().unwrap();
            assert_eq!(time(got), time(want), "{what}: {field}");
        } else {
            assert_eq!(got, want, "{what}: {field}");
        }
    }
}

/// Every order of `GET /orders` (all pages of `query`), by id.
async fn list_all(app: &TestApp, query: &str, limit: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("/orders?limit={limit}&{query}");
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let (s, page) = app.get(&url).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        out.extend(page["orders"].as_array().unwrap().iter().cloned());
        match page["next_after"].as_str() {
            Some(a) => after = Some(a.to_owned()),
            None => return out,
        }
    }
}

/// Asserts that every read model, read over HTTP, equals the fold of the event store: the
/// same ids, and for each the same state and version.
async fn assert_read_models_equal_the_fold(app: &TestApp) {
    let f = fold(&app.pool).await;
    assert!(!f.orders.is_empty() && !f.stock.is_empty() && !f.accounts.is_empty());

    let listed = list_all(app, "", 500).await;
    let ids: Vec<String> = listed
        .iter()
        .map(|o| o["order_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids,
        f.orders.keys().cloned().collect::<Vec<_>>(),
        "GET /orders lists exactly the stored orders, in id order"
    );
    for (o, (id, expected)) in listed.iter().zip(&f.orders) {
        let order = &expected.state;
        let want = json!({
            "status": order.status().unwrap().to_string(), "reason": order.reason(),
            "customer_id": order.customer_id().unwrap(), "lines": order.lines(),
            "total_cents": order.total_cents(), "version": expected.version,
            "placed_at": expected.first_at, "updated_at": expected.last_at,
        });
        assert_has(o, &want, id);
    }
    for (sku, expected) in &f.stock {
        let i = &expected.state;
        let want = json!({
            "sku": sku, "on_hand": i.on_hand(), "reserved": i.reserved(),
            "available": i.available(), "version": expected.version, "updated_at": expected.last_at,
        });
        let (s, v) = app.get(&format!("/inventory/{sku}")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_has(&v, &want, sku);
    }
    for (customer, expected) in &f.accounts {
        let a = &expected.state;
        let want = json!({
            "balance_cents": a.balance_cents(), "held_cents": a.held_cents(),
            "available_cents": a.available_cents(), "version": expected.version,
            "updated_at": expected.last_at,
        });
        let (s, v) = app.get(&format!("/accounts/{customer}")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_has(&v, &want, customer);
    }
    // No row for anything that is not a stream.
    assert_eq!(app.count("read_inventory").await, f.stock.len() as i64);
    assert_eq!(app.count("read_accounts").await, f.accounts.len() as i64);
    assert_eq!(app.count("read_orders").await, f.orders.len() as i64);
}

async fn read_model_rows(pool: &PgPool) -> Vec<String> {
    let mut out = Vec::new();
    for table in ["read_orders", "read_inventory", "read_accounts"] {
        out.extend(
            sqlx::query_scalar::<_, String>(&format!(
                "SELECT t::text FROM {table} t ORDER BY t::text"
            ))
            .fetch_all(pool)
            .await
            .unwrap(),
        );
    }
    out
}

fn customers(n: usize) -> Vec<Uuid> {
    (0..n).map(|_| Uuid::now_v7()).collect()
}

// ---------------------------------------------------------------------------------------------
// Specifications

#[sqlx::test(migrator = "common::MIGRATOR")]
async fn after_a_mixed_workload_every_read_model_equals_the_fold(pool: PgPool) {
    let (app, engine) = start_engine(&pool).await;
    let customers = customers(4);
    seed(&app, &customers, 50).await;
    orders(&app, 40, &customers, 4).await;
    // Some commands the domain refuses: they write nothing and change no read model.
    command(
        &app,
        "inventory",
        "SKU-1",
        "reserve",
        json!({"order_id": Uuid::now_v7(), "quantity": 1_000_000}),
    )
    .await;
    wait_caught_up(&app).await;
    assert_read_models_equal_the_fold(&app).await;

    // The read model says what happened: statuses and reasons of each kind.
    let statuses: BTreeSet<String> = list_all(&app, "", 100)
        .await
        .iter()
        .map(|o| o["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        statuses,
        BTreeSet::from(["cancelled", "confirmed", "pending", "rejected"].map(String::from))
    );
    let cancelled = list_all(&app, "status=cancelled", 3).await;
    assert_eq!(cancelled.len(), 10);
    assert!(cancelled.iter().all(|o| o["reason"] == "changed my mind"));
    let mine = list_all(&app, &format!("customer_id={}", customers[0]), 4).await;
    assert_eq!(mine.len(), 10);
    assert!(mine
        .iter()
        .all(|o| o["customer_id"] == customers[0].to_string()));
    let both = list_all(
        &app,
        &format!("customer_id={}&status=confirmed", customers[0]),
        2,
    )
    .await;
    assert_eq!(both.len(), 10, "order i of customer 0 has i % 4 == 0");
    engine.stop().await;
}

#[sqlx::test(migrator = "common::MIGRATOR")]
async fn rebuilds_while_500_orders_flow_in_miss_nothing_and_double_nothing(pool: PgPool) {
    let (app, engine) = start_engine(&pool).await;
    let customers = customers(8);
    seed(&app, &customers, 5_000).await;
    orders(&app, 40, &customers, 4).await;
    wait_caught_up(&app).await;

    let traffic = {
        let app = TestApp {
            base: app.base.clone(),
            client: app.client.clone(),
            pool: pool.clone(),
        };
        let customers = customers.clone();
        tokio::spawn(async move { orders(&app, 500, &customers, 8).await })
    };
    // Rebuild each projection in turn, again and again, until the traffic is over.
    let (mut rebuilds, mut during_traffic) = (0, 0);
    for name in ["orders", "inventory", "accounts"].iter().cycle() {
        if !traffic.is_finished() {
            during_traffic += 1;
        }
        let (s, body) = admin_post(&app, &format!("/admin/projections/{name}/rebuild")).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["name"], *name);
        assert_eq!(body["state"], "rebuilding");
        assert!(body["rebuild"]["events_total"].as_i64().unwrap() > 0);
        rebuilds += 1;
        eventually(Duration::from_secs(60), "the rebuild to finish", || async {
            let (_, list) = admin_get(&app, "/admin/projections").await;
            let p = list["projections"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == *name)
                .cloned()
                .unwrap();
            assert_ne!(p["state"], "failed", "{p}");
            p["state"] == "idle"
        })
        .await;
        if traffic.is_finished() && rebuilds >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(
        during_traffic >= 3,
        "{during_traffic} rebuilds overlapped the traffic"
    );
    let placed = traffic.await.unwrap();
    assert_eq!(placed.len(), 500);
    wait_caught_up(&app).await;
    assert_read_models_equal_the_fold(&app).await;
    assert_eq!(app.count("read_orders").await, 540);
    engine.stop().await;
}

#[sqlx::test(migrator = "common::MIGRATOR")]
async fn delivering_the_same_events_twice_changes_nothing(pool: PgPool) {
    let (app, engine) = start_engine(&pool).await;
    let customers = customers(3);
    seed(&app, &customers, 100).await;
    orders(&app, 24, &customers, 4).await;
    wait_caught_up(&app).await;
    let before = read_model_rows(&pool).await;
    let position = |list: &Value| -> i64 {
        list["projections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["position"].as_i64().unwrap())
            .sum()
    };
    let (_, list) = admin_get(&app, "/admin/projections").await;
    let position_before = position(&list);

    // Publish every event again: once under its own message id (the consumer runtime skips
    // it), and once under a fresh id, so only the projectors' version check can tell.
    let events = all_events(&pool).await;
    let mut again = Vec::new();
    for e in &events {
        let topic = match e.envelope.stream_id.split('-').next().unwrap() {
            "order" => "order.events",
            "inventory" => "inventory.events",
            _ => "payment.events",
        };
        for fresh in [false, true] {
            let mut envelope = e.envelope.clone();
            if fresh {
                envelope.message_id = Uuid::now_v7();
            }
            again.push(OutboxMessage {
                topic: topic.to_owned(),
                partition_key: envelope.stream_id.clone(),
                envelope,
            });
        }
    }
    let mut tx = pool.begin().await.unwrap();
    outbox::enqueue(&mut tx, &again).await.unwrap();
    tx.commit().await.unwrap();
    wait_caught_up(&app).await;

    let (_, list) = admin_get(&app, "/admin/projections").await;
    assert_eq!(
        position(&list) - position_before,
        again.len() as i64,
        "every duplicate was delivered to its projector"
    );
    assert_eq!(read_model_rows(&pool).await, before);
    assert_read_models_equal_the_fold(&app).await;
    engine.stop().await;
}

#[sqlx::test(migrator = "common::MIGRATOR")]
async fn paging_returns_every_order_once_while_new_orders_arrive(pool: PgPool) {
    let (app, engine) = start_engine(&pool).await;
    let customers = customers(2);
    let mut existing = BTreeSet::new();
    for i in 0..60 {
        let body = accepted(&app, "/orders", place_body(customers[i % 2], "SKU-1", 1)).await;
        existing.insert(body["order_id"].as_str().unwrap().to_owned());
    }
    wait_caught_up(&app).await;

    let arriving = {
        let app = TestApp {
            base: app.base.clone(),
            client: app.client.clone(),
            pool: pool.clone(),
        };
        let customer = customers[0];
        tokio::spawn(async move {
            for _ in 0..40 {
                accepted(&app, "/orders", place_body(customer, "SKU-2", 1)).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let mut seen: Vec<String> = Vec::new();
    let mut positions = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = "/orders?limit=7".to_owned();
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let r = app.client.get(app.url(&url)).send().await.unwrap();
        let position: i64 = r.headers()["x-projection-position"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        positions.push(position);
        let (s, page) = common::read(r).await;
        assert_eq!(s, StatusCode::OK);
        let orders = page["orders"].as_array().unwrap();
        assert!(orders.len() <= 7);
        seen.extend(
            orders
                .iter()
                .map(|o| o["order_id"].as_str().unwrap().to_owned()),
        );
        match page["next_after"].as_str() {
            Some(a) => after = Some(a.to_owned()),
            None => break,
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    arriving.await.unwrap();
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no order twice");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "pages in id order");
    assert!(existing.is_subset(&unique), "every pre-existing order once");
    assert!(positions.windows(2).all(|w| w[0] <= w[1]));
    assert!(positions[0] >= 60);
    engine.stop().await;
}

#[sqlx::test(migrator = "common::MIGRATOR")]
async fn single_items_carry_an_etag_and_honour_if_none_match(pool: PgPool) {
    let (app, engine) = start_engine(&pool).await;
    let customer = Uuid::now_v7();
    accepted(
        &app,
        &format!("/accounts/{customer}/deposits"),
        json!({"amount_cents": 700}),
    )
    .await;
    accepted(&app, "/inventory/SKU-1/restock", json!({"quantity": 4})).await;
    let body = accepted(&app, "/orders", place_body(customer, "SKU-1", 2)).await;
    let order_id = body["order_id"].as_str().unwrap().to_owned();

    for (path, tag) in [
        (
            format!("/orders/{order_id}"),
            format!("\"order-{order_id}@1\""),
        ),
        (
            "/inventory/SKU-1".to_owned(),
            "\"inventory-SKU-1@1\"".to_owned(),
        ),
        (
            format!("/accounts/{customer}"),
            format!("\"account-{customer}@1\""),
        ),
    ] {
        eventually(Duration::from_secs(30), "the row to appear", || async {
            app.get(&path).await.0 == StatusCode::OK
        })
        .await;
        let r = app.client.get(app.url(&path)).send().await.unwrap();
        assert_eq!(r.headers()["etag"], tag.as_str(), "{path}");
        assert_eq!(r.headers()["cache-control"], "no-cache");
        let r = app
            .client
            .get(app.url(&path))
            .header("if-none-match", &tag)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(r.headers()["etag"], tag.as_str());
        assert!(r.bytes().await.unwrap().is_empty());
    }
    let (_, order) = app.get(&format!("/orders/{order_id}")).await;
    assert_eq!(order["status"], "pending");
    assert_eq!(order["total_cents"], 500);
    assert_eq!(order["customer_id"], customer.to_string());
    assert_eq!(
        order["lines"],
        json!([{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 250},
               {"sku": "SKU-GIFT", "quantity": 1, "unit_price_cents": 0}])
    );
    let (_, stock) = app.get("/inventory/SKU-1").await;
    assert_eq!(
        (
            &stock["sku"],
            &stock["on_hand"],
            &stock["reserved"],
            &stock["available"]
        ),
        (&json!("SKU-1"), &json!(4), &json!(0), &json!(4))
    );
    let (_, account) = app.get(&format!("/accounts/{customer}")).await;
    assert_eq!(
        (
            &account["balance_cents"],
            &account["held_cents"],
            &account["available_cents"]
        ),
        (&json!(700), &json!(0), &json!(700))
    );

    // A change moves the tag: the old one no longer matches.
    accepted(&app, &format!("/orders/{order_id}/cancel"), json!({})).await;
    let path = format!("/orders/{order_id}");
    eventually(Duration::from_secs(30), "the cancellation", || async {
        app.get(&path).await.1["status"] == "cancelled"
    })
    .await;
    let r = app
        .client
        .get(app.url(&path))
        .header("if-none-match", format!("\"order-{order_id}@1\""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["etag"],
        format!("\"order-{order_id}@2\"").as_str()
    );
    let order: Value = r.json().await.unwrap();
    assert_eq!(order["version"], 2);
    assert_eq!(order["reason"], Value::Null);
    engine.stop().await;
}

#[sqlx::test(migrator = "common::MIGRATOR")]
async fn unknown_ids_are_404_and_bad_queries_400(pool: PgPool) {
    let app = common::start(pool).await;
    let cases = [
        (
            format!("/orders/{}", Uuid::now_v7()),
            StatusCode::NOT_FOUND,
            "order_not_found",
        ),
        (
            "/orders/not-a-uuid".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
        (
            "/inventory/NO-SUCH-SKU".to_owned(),
            StatusCode::NOT_FOUND,
            "sku_not_found",
        ),
        (
            "/inventory/bad%20sku".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            format!("/accounts/{}", Uuid::now_v7()),
            StatusCode::NOT_FOUND,
            "account_not_found",
        ),
        (
            "/accounts/12345".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
        (
            "/orders?limit=0".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "/orders?limit=501".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "/orders?limit=ten".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "/orders?status=shipped".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "/orders?customer_id=bob".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "/orders?after=42".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "/orders?state=pending".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
    ];
    for (path, status, code) in cases {
        let (s, body) = app.get(&path).await;
        assert_eq!((s, error_code(&body)), (status, code), "{path}: {body}");
    }
    // Empty parameters count as absent; an empty read model is an empty page.
    let r = app
        .client
        .get(app.url("/orders?status=&customer_id=&limit=&after="))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-projection-position"], "0");
    let (s, body) = common::read(r).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, json!({"orders": [], "next_after": null}));
}

#[sqlx::test(migrator = "common::MIGRATOR")]
async fn admin_routes_need_the_token_and_name_a_projection(pool: PgPool) {
    // No token configured: closed.
    let closed = common::start(pool.clone()).await;
    let (s, body) = closed.get("/admin/projections").await;
    assert_eq!(
        (s, error_code(&body)),
        (StatusCode::FORBIDDEN, "admin_disabled")
    );
    let (s, _) = closed
        .post("/admin/projections/orders/rebuild", json!({}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let (app, engine) = start_engine(&pool).await;
    for auth in [None, Some("wrong")] {
        let mut get = app.client.get(app.url("/admin/projections"));
        let mut post = app
            .client
            .post(app.url("/admin/projections/orders/rebuild"));
        if let Some(token) = auth {
            get = get.bearer_auth(token);
            post = post.bearer_auth(token);
        }
        let (s, body) = common::read(get.send().await.unwrap()).await;
        assert_eq!(
            (s, error_code(&body)),
            (StatusCode::UNAUTHORIZED, "unauthorized")
        );
        let (s, _) = common::read(post.send().await.unwrap()).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM projection_status")
            .fetch_one(&pool)
            .await
            .unwrap(),
        0,
        "nothing was rebuilt without the token"
    );

    let (s, body) = admin_get(&app, "/admin/projections").await;
    assert_eq!(s, StatusCode::OK);
    let names: Vec<&str> = body["projections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["orders", "inventory", "accounts"]);
    let orders = &body["projections"][0];
    assert_eq!(orders["group"], "projection:orders");
    assert_eq!(orders["topic"], "order.events");
    assert_eq!(orders["state"], "idle");
    assert_eq!(orders["partitions"].as_array().unwrap().len(), 4);

    let (s, body) = admin_post(&app, "/admin/projections/nope/rebuild").await;
    assert_eq!(
        (s, error_code(&body)),
        (StatusCode::NOT_FOUND, "projection_not_found")
    );

    // While a rebuild runs (here: started, and held, by another process), a second is 409.
    let job = common::shop()
        .projection_named("orders")
        .unwrap()
        .begin_rebuild(
            pool.clone(),
            RebuildOptions::default(),
            Arc::new(|_: &_| {}),
        )
        .await
        .unwrap();
    let (s, body) = admin_post(&app, "/admin/projections/orders/rebuild").await;
    assert_eq!(
        (s, error_code(&body)),
        (StatusCode::CONFLICT, "rebuild_in_progress")
    );
    let (_, list) = admin_get(&app, "/admin/projections").await;
    assert_eq!(list["projections"][0]["state"], "rebuilding");
    job.run.await.unwrap();
    let (_, list) = admin_get(&app, "/admin/projections").await;
    assert_eq!(list["projections"][0]["state"], "idle");
    assert!(list["projections"][0]["rebuild"]["finished_at"].is_string());
    let (s, _) = admin_post(&app, "/admin/projections/orders/rebuild").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    engine.stop().await;
}

#[sqlx::test(migrator = "common::MIGRATOR")]
async fn the_cli_rebuilds_a_projection_while_the_engine_runs(pool: PgPool) {
    let (app, engine) = start_engine(&pool).await;
    let customers = customers(2);
    seed(&app, &customers, 100).await;
    orders(&app, 12, &customers, 2).await;
    wait_caught_up(&app).await;
    sqlx::query("UPDATE read_inventory SET on_hand = -1")
        .execute(&pool)
        .await
        .unwrap();

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sagaflow"))
        .args(["projections", "rebuild", "inventory"])
        .env("DATABASE_URL", common::database_url(&pool))
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("rebuilt inventory:"), "{stdout}");
    assert_read_models_equal_the_fold(&app).await;

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sagaflow"))
        .args(["projections", "rebuild", "sagas-of-the-norse"])
        .env("DATABASE_URL", common::database_url(&pool))
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("orders, inventory, accounts"));
    engine.stop().await;
}
