//! The domain routes over HTTP. The first group is refused before any storage is touched (the
//! pool points at a closed port, so reaching the database would answer 503, not the expected
//! 4xx); the second runs against real PostgreSQL, one fresh database per test.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::http::{header, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tower::ServiceExt;
use uuid::Uuid;

use sagaflow_engine::app::Options;
use sagaflow_engine::command::{CommandBus, CommandBusConfig, Repository};
use sagaflow_engine::transport::postgres::PostgresTransport;
use sagaflow_engine::transport::TopicLayout;
use sagaflow_engine::App;

use super::routes;
use crate::inventory::Inventory;
use crate::order::{Order, OrderStatus};
use crate::payment::Account;
use crate::Domain;

fn domain(pool: PgPool) -> Domain {
    let bus = CommandBus::new(pool, CommandBusConfig::default());
    Domain {
        orders: Arc::new(Repository::new(bus.clone())),
        inventory: Arc::new(Repository::new(bus.clone())),
        accounts: Arc::new(Repository::new(bus)),
    }
}

/// The domain routes over a pool that cannot connect.
fn offline() -> Router {
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy("postgres://sagaflow@127.0.0.1:1/unreachable")
        .expect("a valid url");
    routes(domain(pool)).into()
}

/// The whole domain installed in an application over `pool`, as the binary serves it, and the
/// repositories its routes use.
fn app(pool: &PgPool) -> (Router, Domain) {
    let transport = Arc::new(PostgresTransport::new(pool.clone(), TopicLayout::default()));
    let service = App::new("shop-test", "0")
        .install(crate::install)
        .build(pool.clone(), transport, &Options::default())
        .expect("the domain fits together");
    let domain = Domain {
        orders: service.repository::<Order>().unwrap(),
        inventory: service.repository::<Inventory>().unwrap(),
        accounts: service.repository::<Account>().unwrap(),
    };
    (service.router, domain)
}

struct Answer {
    status: StatusCode,
    body: Value,
    replayed: bool,
}

impl Answer {
    fn error(&self) -> (StatusCode, &str) {
        let code = self.body["error"]["code"].as_str().unwrap_or_default();
        (self.status, code)
    }
}

async fn post(app: &Router, uri: &str, body: &str, idempotency_key: Option<&str>) -> Answer {
    let mut request = Request::post(uri).header(header::CONTENT_TYPE, "application/json");
    if let Some(key) = idempotency_key {
        request = request.header("idempotency-key", key);
    }
    let request = request.body(Body::from(body.to_owned())).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let replayed = response.headers().contains_key("idempotent-replayed");
    let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let body = serde_json::from_slice(&bytes).expect("a JSON answer");
    Answer {
        status,
        body,
        replayed,
    }
}

/// POSTs to the offline routes; returns the status and error code.
async fn refused(uri: &str, body: &str) -> (StatusCode, String) {
    let answer = post(&offline(), uri, body, None).await;
    let (status, code) = answer.error();
    (status, code.to_owned())
}

fn invalid_body() -> (StatusCode, String) {
    (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body".into())
}

// --- refused before storage ---

#[tokio::test]
async fn restock_refuses_an_invalid_sku_in_the_path() {
    assert_eq!(
        refused("/inventory/not%20a%20sku/restock", r#"{"quantity": 1}"#).await,
        (StatusCode::BAD_REQUEST, "invalid_id".into())
    );
    let too_long = "x".repeat(65);
    assert_eq!(
        refused(
            &format!("/inventory/{too_long}/restock"),
            r#"{"quantity": 1}"#
        )
        .await,
        (StatusCode::BAD_REQUEST, "invalid_id".into())
    );
}

#[tokio::test]
async fn restock_refuses_bad_quantities() {
    for body in [
        r#"{"quantity": 0}"#,
        r#"{"quantity": -1}"#,
        r#"{"quantity": "5"}"#,
        r#"{"quantity": 1.5}"#,
        r#"{"quantity": 1000001}"#,
        r#"{}"#,
        r#"{"quantity": 1, "sku": "apple"}"#,
    ] {
        assert_eq!(
            refused("/inventory/apple/restock", body).await,
            invalid_body(),
            "{body}"
        );
    }
    assert_eq!(
        refused("/inventory/apple/restock", r#"{"quantity": "#).await,
        (StatusCode::BAD_REQUEST, "malformed_json".into())
    );
    assert_eq!(
        refused("/inventory/apple/restock", "").await,
        (StatusCode::BAD_REQUEST, "missing_body".into())
    );
}

#[tokio::test]
async fn deposits_need_a_customer_uuid_and_a_positive_amount() {
    assert_eq!(
        refused("/accounts/alice/deposits", r#"{"amount_cents": 100}"#).await,
        (StatusCode::BAD_REQUEST, "invalid_path".into())
    );
    let uri = format!("/accounts/{}/deposits", Uuid::now_v7());
    for body in [
        r#"{"amount_cents": 0}"#,
        r#"{"amount_cents": -100}"#,
        r#"{"amount_cents": 10.5}"#,
        r#"{"amount_cents": 1000000000001}"#,
        r#"{"amount": 100}"#,
    ] {
        assert_eq!(refused(&uri, body).await, invalid_body(), "{body}");
    }
}

#[tokio::test]
async fn placing_refuses_malformed_orders() {
    let customer = Uuid::now_v7();
    let with_line = |line: &str| format!(r#"{{"customer_id": "{customer}", "lines": [{line}]}}"#);
    for body in [
        format!(r#"{{"customer_id": "{customer}"}}"#),
        r#"{"customer_id": "bob", "lines": []}"#.to_owned(),
        with_line(r#"{"sku": "apple", "quantity": 0, "unit_price_cents": 100}"#),
        with_line(r#"{"sku": "apple", "quantity": 1, "unit_price_cents": -1}"#),
        with_line(r#"{"sku": "a/b", "quantity": 1, "unit_price_cents": 1}"#),
        with_line(r#"{"sku": "apple", "quantity": 1}"#),
        with_line(r#"{"sku": "apple", "quantity": 1, "unit_price_cents": 1, "currency": "EUR"}"#),
        format!(r#"{{"customer_id": "{customer}", "lines": [], "total_cents": 5}}"#),
    ] {
        assert_eq!(refused("/orders", &body).await, invalid_body(), "{body}");
    }
}

#[tokio::test]
async fn cancelling_needs_an_order_uuid_and_a_well_formed_body() {
    assert_eq!(
        refused("/orders/42/cancel", "").await,
        (StatusCode::BAD_REQUEST, "invalid_path".into())
    );
    let uri = format!("/orders/{}/cancel", Uuid::now_v7());
    for body in [r#"{"reason": 5}"#, r#"{"why": "because"}"#, r#""now""#] {
        assert_eq!(refused(&uri, body).await, invalid_body(), "{body}");
    }
}

// --- against PostgreSQL ---

fn order_body(customer: Uuid) -> String {
    json!({
        "customer_id": customer,
        "lines": [
            {"sku": "apple", "quantity": 3, "unit_price_cents": 150},
            {"sku": "pear", "quantity": 1, "unit_price_cents": 99},
        ],
    })
    .to_string()
}

/// Events of the aggregates' streams (a placed order also starts its saga, whose own events
/// are in `saga-<id>`).
async fn event_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_id NOT LIKE 'saga-%'")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = "../engine/migrations")]
async fn placing_an_order_mints_its_id_and_a_repeat_names_the_same_order(pool: PgPool) {
    let (app, domain) = app(&pool);
    let body = order_body(Uuid::now_v7());

    let first = post(&app, "/orders", &body, Some("place-1")).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    let order_id: Uuid = serde_json::from_value(first.body["order_id"].clone()).unwrap();
    assert_eq!(
        first.body,
        json!({
            "order_id": order_id,
            "saga_id": crate::order_fulfillment::saga_id_of(order_id),
            "stream_id": format!("order-{order_id}"),
            "version": 1
        })
    );
    assert!(!first.replayed);

    let repeat = post(&app, "/orders", &body, Some("place-1")).await;
    assert_eq!(
        (repeat.status, &repeat.body),
        (StatusCode::ACCEPTED, &first.body)
    );
    assert!(repeat.replayed);
    assert_eq!(event_count(&pool).await, 1, "the repeat placed nothing");

    let order = domain.orders.load(&order_id.to_string()).await.unwrap();
    assert_eq!(order.state.status(), Some(OrderStatus::Pending));
    assert_eq!(order.state.total_cents(), 3 * 150 + 99);

    let other = post(&app, "/orders", &body, None).await;
    assert_eq!(other.status, StatusCode::ACCEPTED);
    assert_ne!(
        other.body["order_id"], first.body["order_id"],
        "no key, a new order"
    );
}

#[sqlx::test(migrations = "../engine/migrations")]
async fn an_order_that_breaks_a_rule_is_a_422_with_its_code(pool: PgPool) {
    let (app, _) = app(&pool);
    let customer = Uuid::now_v7();
    let empty = json!({"customer_id": customer, "lines": []}).to_string();
    assert_eq!(
        post(&app, "/orders", &empty, None).await.error(),
        (StatusCode::UNPROCESSABLE_ENTITY, "empty_order")
    );
    let duplicate = json!({"customer_id": customer, "lines": [
        {"sku": "apple", "quantity": 1, "unit_price_cents": 1},
        {"sku": "apple", "quantity": 2, "unit_price_cents": 1},
    ]})
    .to_string();
    assert_eq!(
        post(&app, "/orders", &duplicate, None).await.error(),
        (StatusCode::UNPROCESSABLE_ENTITY, "duplicate_sku")
    );
    assert_eq!(event_count(&pool).await, 0);
}

#[sqlx::test(migrations = "../engine/migrations")]
async fn cancelling_is_404_for_an_unknown_order_and_idempotent_for_a_placed_one(pool: PgPool) {
    let (app, domain) = app(&pool);
    assert_eq!(
        post(
            &app,
            &format!("/orders/{}/cancel", Uuid::now_v7()),
            "",
            None
        )
        .await
        .error(),
        (StatusCode::NOT_FOUND, "order_not_found")
    );

    let placed = post(&app, "/orders", &order_body(Uuid::now_v7()), None).await;
    let order_id = placed.body["order_id"].as_str().unwrap().to_owned();
    let uri = format!("/orders/{order_id}/cancel");
    let cancelled = post(&app, &uri, r#"{"reason": "changed my mind"}"#, None).await;
    assert_eq!(cancelled.status, StatusCode::ACCEPTED, "{}", cancelled.body);
    assert_eq!(cancelled.body["version"], 2);
    assert_eq!(cancelled.body["events"][0]["event_type"], "order_cancelled");

    // Without a body, and again: nothing more happens.
    let again = post(&app, &uri, "", None).await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(
        (again.body["version"].clone(), again.body["events"].clone()),
        (json!(2), json!([]))
    );

    let order = domain.orders.load(&order_id).await.unwrap().state;
    assert_eq!(order.status(), Some(OrderStatus::Cancelled));
    assert_eq!(order.reason(), Some("changed my mind"));
}

#[sqlx::test(migrations = "../engine/migrations")]
async fn restock_and_deposit_answer_with_the_recorded_events(pool: PgPool) {
    let (app, domain) = app(&pool);

    let restocked = post(&app, "/inventory/apple/restock", r#"{"quantity": 7}"#, None).await;
    assert_eq!(restocked.status, StatusCode::ACCEPTED, "{}", restocked.body);
    assert_eq!(restocked.body["stream_id"], "inventory-apple");
    assert_eq!(restocked.body["events"][0]["event_type"], "stock_restocked");
    assert_eq!(
        domain
            .inventory
            .load("apple")
            .await
            .unwrap()
            .state
            .on_hand(),
        7
    );

    let customer = Uuid::now_v7();
    let uri = format!("/accounts/{customer}/deposits");
    for _ in 0..2 {
        let deposited = post(&app, &uri, r#"{"amount_cents": 2500}"#, Some("deposit-1")).await;
        assert_eq!(deposited.status, StatusCode::ACCEPTED, "{}", deposited.body);
        assert_eq!(deposited.body["stream_id"], format!("account-{customer}"));
    }
    let account = domain
        .accounts
        .load(&customer.to_string())
        .await
        .unwrap()
        .state;
    assert_eq!(account.balance_cents(), 2500, "one key, one deposit");
}

#[sqlx::test(migrations = "../engine/migrations")]
async fn the_generic_route_reaches_every_domain_aggregate(pool: PgPool) {
    let (app, domain) = app(&pool);
    let order_id = Uuid::now_v7();
    let customer = Uuid::now_v7();

    post(&app, "/inventory/apple/restock", r#"{"quantity": 2}"#, None).await;
    let reserve = json!({"command": "reserve", "payload": {"order_id": order_id, "quantity": 2}});
    let reserved = post(
        &app,
        "/commands/inventory/apple",
        &reserve.to_string(),
        None,
    )
    .await;
    assert_eq!(reserved.status, StatusCode::ACCEPTED, "{}", reserved.body);
    let more =
        json!({"command": "reserve", "payload": {"order_id": Uuid::now_v7(), "quantity": 1}});
    assert_eq!(
        post(&app, "/commands/inventory/apple", &more.to_string(), None)
            .await
            .error(),
        (StatusCode::UNPROCESSABLE_ENTITY, "insufficient_stock")
    );

    let authorize =
        json!({"command": "authorize", "payload": {"order_id": order_id, "amount_cents": 100}});
    assert_eq!(
        post(
            &app,
            &format!("/commands/account/{customer}"),
            &authorize.to_string(),
            None
        )
        .await
        .error(),
        (StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds")
    );

    assert_eq!(
        post(
            &app,
            &format!("/commands/order/{order_id}"),
            r#"{"command": "confirm"}"#,
            None
        )
        .await
        .error(),
        (StatusCode::NOT_FOUND, "order_not_found")
    );
    assert_eq!(
        post(
            &app,
            "/commands/order/not-a-uuid",
            r#"{"command": "confirm"}"#,
            None
        )
        .await
        .error(),
        (StatusCode::BAD_REQUEST, "invalid_id")
    );

    let inventory = domain.inventory.load("apple").await.unwrap().state;
    assert_eq!((inventory.on_hand(), inventory.reserved()), (2, 2));
}
