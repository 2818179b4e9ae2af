//! A database created by the release before the library layout (one migration folder for every
//! table, the shop's and the engine's) upgrades in place: the new binary applies the engine's
//! and the shop's migrations as one history, reads the same events, sagas and read models, and
//! finishes the work that was left in the outbox.

mod common;

use std::time::Duration;

use common::binary::Binary;
use common::transport::eventually;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::{Connection, PgPool};
use uuid::Uuid;

const CUSTOMER: &str = "0193a0c4-0000-7000-8000-000000000001";
/// (order id, saga id, the order's status, the saga's state) as the dump holds them.
const ORDERS: [(&str, &str, &str, &str); 3] = [
    (
        "01a24bb1-3bf5-707c-8947-ff25d936604b",
        "70cf96d5-4a5c-5cb3-b519-7305bafa6823",
        "confirmed",
        "completed",
    ),
    (
        "01a24bb1-3c10-743f-b497-757f2f91bc0b",
        "f3fa0781-3593-53fb-8c21-6fb445f06e5e",
        "rejected",
        "compensated",
    ),
    (
        "01a24bb1-3c21-738f-8c20-c5e9844e8ac2",
        "f2c1569c-5148-573d-8931-b1f3ac1b8329",
        "rejected",
        "compensated",
    ),
];
/// The order placed while only the HTTP component ran: its `order_placed` is in the outbox.
const WAITING_ORDER: (&str, &str) = (
    "01a24bb1-6da5-732a-8083-c03f204e7bc5",
    "1f54d1fa-709e-578d-8b84-1cb8683d0eb0",
);

async fn get(base: &str, path: &str) -> (StatusCode, Value) {
    common::read(reqwest::get(format!("{base}{path}")).await.unwrap()).await
}

/// Every event of the store: (position, stream, version, message id, type, payload).
async fn events(pool: &PgPool) -> Vec<(i64, String, i64, Uuid, String, Value)> {
    sqlx::query_as(
        "SELECT global_position, stream_id, stream_version, message_id, event_type, payload
         FROM events ORDER BY global_position",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn a_database_of_the_previous_layout_upgrades_in_place(pool: PgPool) {
    // The dump sets its session's search_path: it runs on a connection of its own.
    let mut conn = sqlx::PgConnection::connect(&common::database_url(&pool))
        .await
        .unwrap();
    sqlx::raw_sql(include_str!("fixtures/layout_0_1.sql"))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let before = events(&pool).await;
    assert_eq!(before.len(), 43);

    let binary = Binary::start(&pool, &[]).await;
    let base = binary.base.clone();

    // One history: the engine's migrations and the shop's, the rewritten one accepted.
    let applied: Vec<(i64, bool)> =
        sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        applied,
        (1..=14).map(|v| (v, true)).collect::<Vec<_>>(),
        "migrations 1-8 kept, 9 to 14 applied"
    );

    // The same events, each where it was.
    let after = events(&pool).await;
    assert_eq!(&after[..before.len()], &before[..]);

    // The same sagas and read models.
    for (order_id, saga_id, status, state) in ORDERS {
        let (s, order) = get(&base, &format!("/orders/{order_id}")).await;
        assert_eq!(s, StatusCode::OK, "{order}");
        assert_eq!(order["status"], status, "{order}");
        let (s, saga) = get(&base, &format!("/sagas/{saga_id}")).await;
        assert_eq!(s, StatusCode::OK, "{saga}");
        assert_eq!(saga["state"], state, "{saga}");
        let (s, state) = get(&base, &format!("/streams/order-{order_id}/state")).await;
        assert_eq!(s, StatusCode::OK, "{state}");
        assert_eq!(state["state"]["status"], status, "{state}");
    }

    // The order that waited in the outbox is carried to the end by the new release.
    let (order_id, saga_id) = WAITING_ORDER;
    eventually(
        Duration::from_secs(30),
        "the waiting order's saga to complete",
        || async {
            let (s, saga) = get(&base, &format!("/sagas/{saga_id}")).await;
            s == StatusCode::OK && saga["state"] == "completed"
        },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "the read models to catch up",
        || async {
            let (_, order) = get(&base, &format!("/orders/{order_id}")).await;
            let (_, stock) = get(&base, "/inventory/SKU-1").await;
            let (_, account) = get(&base, &format!("/accounts/{CUSTOMER}")).await;
            order["status"] == "confirmed"
                && stock["reserved"] == 5
                && stock["on_hand"] == 10
                && account["balance_cents"] == 46_000
                && account["held_cents"] == 0
        },
    )
    .await;
    drop(binary);
}
