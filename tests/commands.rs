//! The command side over HTTP, end to end against a real PostgreSQL.

mod common;

use common::{error_code, start, start_with};
use reqwest::StatusCode;
use sagaflow::app::Options;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

fn order(customer: Uuid) -> Value {
    json!({"customer_id": customer, "lines": [
        {"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1250},
        {"sku": "SKU-2", "quantity": 1, "unit_price_cents": 499}
    ]})
}

/// With every command through its topic, the order's own transaction starts its saga.
#[sqlx::test(migrator = "common::MIGRATOR")]
async fn an_accepted_order_has_its_event_in_the_log_and_its_saga_started(pool: PgPool) {
    let app = start_with(
        pool,
        Options {
            local_steps: false,
            ..Default::default()
        },
    )
    .await;
    let customer = Uuid::now_v7();
    let (status, body) = app.post("/orders", order(customer)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let order_id: Uuid = body["order_id"].as_str().unwrap().parse().unwrap();

    let (status, page) = app.get(&format!("/streams/order-{order_id}/events")).await;
    assert_eq!(status, StatusCode::OK);
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event_type"], "order_placed");
    assert_eq!(events[0]["stream_version"], 1);
    assert_eq!(events[0]["payload"]["total_cents"], 2 * 1250 + 499);
    assert_eq!(events[0]["payload"]["customer_id"], customer.to_string());

    // On the embedded transport the command's transaction appended it to the log itself.
    assert_eq!(app.count("outbox").await, 0);
    let log: Vec<(String, String, i64, Value)> = sqlx::query_as(
        "SELECT topic, partition_key, \"offset\", envelope::jsonb FROM message_log ORDER BY topic",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    // The order's event, and the first step's commands of the saga it started (a reservation
    // per line): nothing runs here but the HTTP routes, so the command's own transaction
    // started the saga.
    assert_eq!(log.len(), 3, "{log:?}");
    // The test transport's topics have a prefix of their own.
    let event = log.iter().find(|l| l.0.ends_with(".order.events")).unwrap();
    assert_eq!(event.1, format!("order-{order_id}"));
    assert_eq!(event.2, 0);
    assert_eq!(event.3["message_id"], events[0]["message_id"]);
    let commands: Vec<_> = log
        .iter()
        .filter(|l| l.0.ends_with(".inventory.commands"))
        .collect();
    assert_eq!(commands.len(), 2, "{log:?}");
    for command in commands {
        assert_eq!(
            command.3["metadata"]["causation_id"],
            events[0]["message_id"]
        );
    }
    let sagas: Vec<(String, String)> = sqlx::query_as("SELECT saga_type, state FROM sagas")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(sagas, vec![("order_fulfillment".into(), "running".into())]);
}

/// With local steps (the default) the saga's first step runs in the orchestrator's
/// transaction, so the order's transaction appends its event alone and starts nothing: the
/// orchestrator's consumer starts the saga (nothing runs here but the HTTP routes).
#[sqlx::test(migrator = "common::MIGRATOR")]
async fn with_local_steps_an_order_appends_its_event_alone(pool: PgPool) {
    let app = start(pool).await;
    let (status, body) = app.post("/orders", order(Uuid::now_v7())).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let order_id: Uuid = body["order_id"].as_str().unwrap().parse().unwrap();
    let log: Vec<(String, String)> =
        sqlx::query_as("SELECT topic, partition_key FROM message_log ORDER BY topic")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(log[0].0.ends_with(".order.events"), "{log:?}");
    assert_eq!(log[0].1, format!("order-{order_id}"));
    assert_eq!(app.count("sagas").await, 0);
}

#[sqlx::test(migrator = "common::MIGRATOR")]
async fn domain_routes_and_the_generic_route_reach_the_same_aggregates(pool: PgPool) {
    let app = start(pool).await;
    let (s, _) = app
        .post("/inventory/SKU-9/restock", json!({"quantity": 10}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let order_id = Uuid::now_v7();
    let (s, body) = app
        .post(
            "/commands/inventory/SKU-9",
            json!({"command": "reserve", "payload": {"order_id": order_id, "quantity": 4}}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["version"], 2);
    assert_eq!(body["events"][0]["event_type"], "stock_reserved");
    // Only 6 are left: a business rejection is a 422 with the domain's code, and writes nothing.
    let (s, body) = app
        .post(
            "/commands/inventory/SKU-9",
            json!({"command": "reserve", "payload": {"order_id": Uuid::now_v7(), "quantity": 7}}),
        )
        .await;
    assert_eq!(
        (s, error_code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "insufficient_stock")
    );
    // Releasing twice is idempotent.
    for expected_events in [1, 0] {
        let (s, body) = app
            .post(
                "/commands/inventory/SKU-9",
                json!({"command": "release", "payload": {"order_id": order_id}}),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED);
        assert_eq!(body["events"].as_array().unwrap().len(), expected_events);
    }
    let customer = Uuid::now_v7();
    let (s, _) = app
        .post(
            &format!("/accounts/{customer}/deposits"),
            json!({"amount_cents": 5000}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(app.aggregate_events().await, 4);
    assert_eq!(app.logged_events().await, 4);
}

#[sqlx::test(migrator = "common::MIGRATOR")]
async fn cancelling_an_order_and_confirming_it_afterwards(pool: PgPool) {
    let app = start(pool).await;
    let (_, body) = app.post("/orders", order(Uuid::now_v7())).await;
    let id = body["order_id"].as_str().unwrap().to_owned();
    let (s, _) = app
        .post(
            &format!("/orders/{id}/cancel"),
            json!({"reason": "changed my mind"}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, body) = app
        .post(
            &format!("/commands/order/{id}"),
            json!({"command": "confirm"}),
        )
        .await;
    assert_eq!(
        (s, error_code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "order_cancelled")
    );
    // A cancel without a body is accepted too (and is a no-op now).
    let r = app
        .client
        .post(app.url(&format!("/orders/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(app.aggregate_events().await, 2);
}

/// Every kind of bad input: the right 4xx, the JSON error shape, and nothing written.
#[sqlx::test(migrator = "common::MIGRATOR")]
async fn bad_input_gets_a_4xx_and_writes_nothing(pool: PgPool) {
    let app = start(pool).await;
    let (s, body) = app.post("/orders", order(Uuid::now_v7())).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let order_id = body["order_id"].as_str().unwrap().to_owned();
    let customer = Uuid::now_v7();
    let before = (app.aggregate_events().await, app.logged_events().await);

    let big = format!(
        "{{\"quantity\": 1, \"pad\": \"{}\"}}",
        "x".repeat(1024 * 1024 + 10)
    );
    // (name, path, body, content type, expected status, expected code)
    type Case<'a> = (
        &'a str,
        String,
        String,
        Option<&'a str>,
        StatusCode,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        ("malformed JSON", "/orders".into(), "{\"customer_id\": ".into(), None, StatusCode::BAD_REQUEST, "malformed_json"),
        ("not JSON at all", "/inventory/SKU-1/restock".into(), "quantity=5".into(), None, StatusCode::BAD_REQUEST, "malformed_json"),
        ("wrong type", "/inventory/SKU-1/restock".into(), r#"{"quantity": "5"}"#.into(), None, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        ("fractional quantity", "/inventory/SKU-1/restock".into(), r#"{"quantity": 1.5}"#.into(), None, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        ("zero quantity", "/inventory/SKU-1/restock".into(), r#"{"quantity": 0}"#.into(), None, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        ("negative quantity", "/inventory/SKU-1/restock".into(), r#"{"quantity": -3}"#.into(), None, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        ("missing field", "/inventory/SKU-1/restock".into(), "{}".into(), None, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        ("unknown field", "/inventory/SKU-1/restock".into(), r#"{"quantity": 1, "qty": 2}"#.into(), None, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        ("missing body", "/inventory/SKU-1/restock".into(), "".into(), None, StatusCode::BAD_REQUEST, "missing_body"),
        ("invalid sku", "/inventory/bad%20sku/restock".into(), r#"{"quantity": 1}"#.into(), None, StatusCode::BAD_REQUEST, "invalid_id"),
        ("zero deposit", format!("/accounts/{customer}/deposits"), r#"{"amount_cents": 0}"#.into(), None, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        ("negative deposit", format!("/accounts/{customer}/deposits"), r#"{"amount_cents": -100}"#.into(), None, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        ("invalid uuid in path", "/accounts/not-a-uuid/deposits".into(), r#"{"amount_cents": 100}"#.into(), None, StatusCode::BAD_REQUEST, "invalid_path"),
        ("invalid uuid in cancel path", "/orders/12345/cancel".into(), "".into(), None, StatusCode::BAD_REQUEST, "invalid_path"),
        ("invalid uuid in body", "/orders".into(), r#"{"customer_id": "nope", "lines": [{"sku": "A", "quantity": 1, "unit_price_cents": 1}]}"#.into(), None, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        ("empty order lines", "/orders".into(), json!({"customer_id": customer, "lines": []}).to_string(), None, StatusCode::UNPROCESSABLE_ENTITY, "empty_order"),
        ("zero line quantity", "/orders".into(), json!({"customer_id": customer, "lines": [{"sku": "A", "quantity": 0, "unit_price_cents": 1}]}).to_string(), None, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        ("negative price", "/orders".into(), json!({"customer_id": customer, "lines": [{"sku": "A", "quantity": 1, "unit_price_cents": -1}]}).to_string(), None, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        ("body over 1 MiB", "/inventory/SKU-1/restock".into(), big, None, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        ("not JSON content type", "/inventory/SKU-1/restock".into(), r#"{"quantity": 1}"#.into(), Some("text/plain"), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        ("unknown aggregate type", "/commands/spaceship/1".into(), r#"{"command": "launch"}"#.into(), None, StatusCode::NOT_FOUND, "unknown_aggregate_type"),
        ("unknown command", "/commands/inventory/SKU-1".into(), r#"{"command": "teleport"}"#.into(), None, StatusCode::UNPROCESSABLE_ENTITY, "unknown_command"),
        ("generic payload of the wrong shape", "/commands/inventory/SKU-1".into(), r#"{"command": "restock", "payload": {"quantity": -1}}"#.into(), None, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        ("generic body without command", "/commands/inventory/SKU-1".into(), r#"{"payload": {}}"#.into(), None, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        ("generic id that is not a UUID", "/commands/order/xyz".into(), r#"{"command": "confirm"}"#.into(), None, StatusCode::BAD_REQUEST, "invalid_id"),
        ("unknown order", format!("/orders/{}/cancel", Uuid::now_v7()), "".into(), None, StatusCode::NOT_FOUND, "order_not_found"),
        ("order placed twice", format!("/commands/order/{order_id}"), json!({"command": "place", "payload": order(customer)}).to_string(), None, StatusCode::UNPROCESSABLE_ENTITY, "order_already_placed"),
        ("unknown route", "/nowhere".into(), "{}".into(), None, StatusCode::NOT_FOUND, "route_not_found"),
    ];
    for (name, path, body, content_type, expected_status, expected_code) in cases {
        let r = app
            .client
            .post(app.url(&path))
            .header("content-type", content_type.unwrap_or("application/json"))
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, body) = common::read(r).await;
        assert_eq!(status, expected_status, "{name}: {body}");
        assert_eq!(error_code(&body), expected_code, "{name}: {body}");
    }
    let r = app
        .client
        .post(app.url("/inventory/SKU-1/restock"))
        .header("Idempotency-Key", "has spaces")
        .json(&json!({"quantity": 1}))
        .send()
        .await
        .unwrap();
    let (status, body) = common::read(r).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_idempotency_key")
    );
    let r = app
        .client
        .post(app.url("/orders"))
        .header("X-Correlation-Id", "nope")
        .json(&order(customer))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = app.client.delete(app.url("/orders")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);

    assert_eq!(
        (app.aggregate_events().await, app.logged_events().await),
        before
    );
}

#[sqlx::test(migrator = "common::MIGRATOR")]
async fn an_idempotency_key_returns_the_first_response_and_writes_nothing(pool: PgPool) {
    let app = start(pool).await;
    let body = order(Uuid::now_v7());
    let (s1, first, replayed1) = app.post_with_key("/orders", "order-42", body.clone()).await;
    let (s2, second, replayed2) = app.post_with_key("/orders", "order-42", body.clone()).await;
    assert_eq!((s1, s2), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
    assert_eq!(first, second);
    assert!(!replayed1 && replayed2);
    assert_eq!(app.aggregate_events().await, 1);

    let (s, other, _) = app
        .post_with_key("/orders", "order-42", order(Uuid::now_v7()))
        .await;
    assert_eq!(
        (s, error_code(&other)),
        (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
    );
    // The same key on another route is another request, too.
    let (s, _, _) = app
        .post_with_key(
            "/inventory/SKU-1/restock",
            "order-42",
            json!({"quantity": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.aggregate_events().await, 1);

    // A rejection is remembered as well: its repeat answers the same, even once it would pass.
    let key = "reserve-1";
    let reserve =
        json!({"command": "reserve", "payload": {"order_id": Uuid::now_v7(), "quantity": 5}});
    let (s, rejected, _) = app
        .post_with_key("/commands/inventory/SKU-7", key, reserve.clone())
        .await;
    assert_eq!(
        (s, error_code(&rejected)),
        (StatusCode::UNPROCESSABLE_ENTITY, "insufficient_stock")
    );
    app.post("/inventory/SKU-7/restock", json!({"quantity": 10}))
        .await;
    let (s, again, replayed) = app
        .post_with_key("/commands/inventory/SKU-7", key, reserve)
        .await;
    assert_eq!(
        (s, &again, replayed),
        (StatusCode::UNPROCESSABLE_ENTITY, &rejected, true)
    );
    assert_eq!(app.aggregate_events().await, 2);
}

/// 50 concurrent commands on one aggregate through two engine instances sharing the database:
/// each is accepted or gets a 409 after the bounded retries; versions are 1..N, no update lost.
#[sqlx::test(migrator = "common::MIGRATOR")]
async fn concurrent_commands_on_one_aggregate_lose_nothing(pool: PgPool) {
    let a = start(pool.clone()).await;
    let b = start(pool).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (client, url) = if i % 2 == 0 {
            (a.client.clone(), a.url("/inventory/HOT-1/restock"))
        } else {
            (b.client.clone(), b.url("/inventory/HOT-1/restock"))
        };
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&json!({"quantity": 3}))
                .send()
                .await
                .unwrap();
            common::read(r).await
        }));
    }
    let mut accepted = 0i64;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            StatusCode::ACCEPTED => accepted += 1,
            StatusCode::CONFLICT => assert_eq!(error_code(&body), "concurrency_conflict"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(accepted > 0);
    let (s, page) = a.get("/streams/inventory-HOT-1/events?limit=1000").await;
    assert_eq!(s, StatusCode::OK);
    let versions: Vec<i64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["stream_version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, (1..=accepted).collect::<Vec<_>>());
    let restocked: i64 = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["payload"]["quantity"].as_i64().unwrap())
        .sum();
    assert_eq!(restocked, 3 * accepted);
}

#[sqlx::test(migrator = "common::MIGRATOR")]
async fn streams_are_read_in_pages(pool: PgPool) {
    let app = start(pool).await;
    for _ in 0..5 {
        app.post("/inventory/PAGED/restock", json!({"quantity": 1}))
            .await;
    }
    let (s, page) = app
        .get("/streams/inventory-PAGED/events?from_version=2&limit=2")
        .await;
    assert_eq!(s, StatusCode::OK);
    let versions: Vec<i64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["stream_version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [2, 3]);
    assert_eq!(page["next_from_version"], 4);
    let (_, last) = app
        .get("/streams/inventory-PAGED/events?from_version=4&limit=10")
        .await;
    assert_eq!(last["events"].as_array().unwrap().len(), 2);
    assert_eq!(last["next_from_version"], Value::Null);

    let (s, body) = app.get("/streams/inventory-NOPE/events").await;
    assert_eq!(
        (s, error_code(&body)),
        (StatusCode::NOT_FOUND, "stream_not_found")
    );
    for bad in [
        "limit=0",
        "limit=5000",
        "from_version=0",
        "from_version=abc",
    ] {
        let (s, body) = app
            .get(&format!("/streams/inventory-PAGED/events?{bad}"))
            .await;
        assert_eq!(
            (s, error_code(&body)),
            (StatusCode::BAD_REQUEST, "invalid_query"),
            "{bad}"
        );
    }
    let (s, body) = app.get("/healthz").await;
    assert_eq!((s, body), (StatusCode::OK, json!({"status": "ok"})));
}

/// PostgreSQL cannot store U+0000: a NUL in a path, a query or a JSON string is refused with
/// `400 invalid_characters` before anything runs, and nothing is written.
#[sqlx::test(migrator = "common::MIGRATOR")]
async fn strings_postgres_cannot_store_are_refused_and_write_nothing(pool: PgPool) {
    let app = start(pool).await;
    let (s, placed) = app.post("/orders", order(Uuid::now_v7())).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{placed}");
    let order_id = placed["order_id"].as_str().unwrap().to_owned();
    let events = app.aggregate_events().await;
    for path in [
        "/streams/a%00b/events",
        "/streams/a%00b/state",
        "/sagas?saga_type=a%00b",
        "/orders?status=a%00",
        "/admin/dead-letters?consumer=%00",
    ] {
        let (s, body) = app.get(path).await;
        assert_eq!(
            (s, error_code(&body)),
            (StatusCode::BAD_REQUEST, "invalid_characters"),
            "{path}: {body}"
        );
    }
    let raw = |body: &str| body.to_owned();
    for (path, body) in [
        (
            format!("/orders/{order_id}/cancel"),
            raw(r#"{"reason": "changed my mind\u0000"}"#),
        ),
        (
            "/commands/inventory/SKU-1".to_owned(),
            raw(r#"{"command": "restock", "payload": {"quantity": 1}, "x\u0000": 1}"#),
        ),
        (
            "/commands/order/ab%00cd".to_owned(),
            raw(r#"{"command": "confirm"}"#),
        ),
        (
            "/orders".to_owned(),
            raw(
                r#"{"customer_id": "0193a0c4-0000-7000-8000-000000000001", "lines": [{"sku": "A\u0000", "quantity": 1, "unit_price_cents": 1}]}"#,
            ),
        ),
    ] {
        let r = app
            .client
            .post(app.url(&path))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let (s, answer) = common::read(r).await;
        assert_eq!(
            (s, error_code(&answer)),
            (StatusCode::BAD_REQUEST, "invalid_characters"),
            "{path} {body}: {answer}"
        );
    }
    // The text "\u0000" (an escaped backslash) is an ordinary string.
    let (s, body) = app
        .post(
            &format!("/orders/{order_id}/cancel"),
            json!({"reason": "a backslash-u0000: \\u0000"}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    assert_eq!(app.aggregate_events().await, events + 1);
}
