//! What the benchmarks send to the shop ([`ShopWorkload`]):
//!
//! - `bench saga` and `bench append` place orders of one line (20 SKUs and 50 customers,
//!   stocked and funded first, so every saga completes);
//! - `bench rebuild` writes histories the domain could have decided (every payload decodes
//!   into the domain's events), interleaved the way live traffic interleaves them: 1,000 SKUs
//!   (~300 events each: restock, then reserve and commit/release pairs), 10,000 accounts (~30
//!   each: deposit, then authorize and capture/void pairs) and 200,000 orders (placed, then
//!   confirmed, rejected or cancelled far later in the log), so every page of a rebuild
//!   touches thousands of streams. Order ids are time-ordered like the UUIDv7 ids
//!   `POST /orders` mints; customer ids are random.

use async_trait::async_trait;
use sagaflow_engine::app::{Request, Workload};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

const SKUS: i64 = 1_000;
const ACCOUNTS: i64 = 10_000;
const BENCH_SKUS: usize = 20;
const BENCH_CUSTOMERS: usize = 50;

/// The shop's benchmark workload.
pub struct ShopWorkload;

fn customer(n: usize) -> Uuid {
    // Fixed ids: every run's customers are the ones its setup funded.
    Uuid::from_u128(0x0193_a0c4_0000_7000_8000_0000_0000_0000 + (n % BENCH_CUSTOMERS) as u128)
}

fn sku(n: usize) -> String {
    format!("BENCH-{}", n % BENCH_SKUS)
}

#[async_trait]
impl Workload for ShopWorkload {
    fn setup(&self) -> Vec<Request> {
        let stock = (0..BENCH_SKUS).map(|i| {
            Request::post(
                format!("/inventory/{}/restock", sku(i)),
                json!({"quantity": 1_000_000}),
            )
        });
        let money = (0..BENCH_CUSTOMERS).map(|i| {
            Request::post(
                format!("/accounts/{}/deposits", customer(i)),
                json!({"amount_cents": 1_000_000_000}),
            )
        });
        stock.chain(money).collect()
    }

    fn start_saga(&self, n: usize) -> Request {
        Request::post(
            "/orders",
            json!({
                "customer_id": customer(n),
                "lines": [{"sku": sku(n), "quantity": 1, "unit_price_cents": 1_00}],
            }),
        )
    }

    fn command(&self, _n: usize) -> Request {
        // A PlaceOrder body like a shop would send: one customer, two lines.
        Request::post(
            "/orders",
            json!({
                "customer_id": Uuid::now_v7(),
                "lines": [
                    {"sku": "SKU-RED-1", "quantity": 2, "unit_price_cents": 1250},
                    {"sku": "SKU-BLUE-7", "quantity": 1, "unit_price_cents": 4999}
                ]
            }),
        )
    }

    async fn seed_events(&self, pool: &PgPool, events: i64) -> Result<(), sqlx::Error> {
        fill(pool, events).await
    }
}

/// Writes `n` events in one statement (see the module's description).
async fn fill(pool: &PgPool, n: i64) -> Result<(), sqlx::Error> {
    // Order events are the g % 10 in 6..=9; each order has two, the second far later.
    let order_events = (0..10)
        .filter(|c| *c >= 6)
        .map(|c| (n - c + 9) / 10)
        .sum::<i64>();
    let orders = (order_events + 1) / 2;
    sqlx::query(
        "INSERT INTO events (stream_id, stream_version, message_id, event_type, schema_version, payload, metadata)
         SELECT s.stream_id, s.v, gen_random_uuid(), s.event_type, 1, s.payload,
                jsonb_build_object('correlation_id', gen_random_uuid())
         FROM (
           SELECT g,
             CASE WHEN c < 3 THEN 'inventory-SKU-' || (i % $2)
                  WHEN c < 6 THEN 'account-' || md5('account-' || (i % $3))::uuid
                  ELSE 'order-' || (lpad(to_hex(1700000000000 + i % $4), 12, '0') || '7'
                                    || substr(md5('order-' || (i % $4)), 1, 3) || '8'
                                    || substr(md5('order-' || (i % $4)), 4, 15))::uuid END AS stream_id,
             v,
             CASE WHEN c < 3 THEN
                    CASE WHEN v = 1 THEN 'stock_restocked' WHEN v % 2 = 0 THEN 'stock_reserved'
                         WHEN v % 4 = 1 THEN 'stock_committed' ELSE 'stock_released' END
                  WHEN c < 6 THEN
                    CASE WHEN v = 1 THEN 'funds_deposited' WHEN v % 2 = 0 THEN 'payment_authorized'
                         WHEN v % 4 = 1 THEN 'payment_captured' ELSE 'payment_voided' END
                  ELSE
                    CASE WHEN v = 1 THEN 'order_placed' WHEN i % 10 < 7 THEN 'order_confirmed'
                         WHEN i % 10 < 9 THEN 'order_rejected' ELSE 'order_cancelled' END
             END AS event_type,
             CASE WHEN c < 3 THEN
                    CASE WHEN v = 1 THEN jsonb_build_object('quantity', 1000000)
                         ELSE jsonb_build_object('quantity', 1, 'order_id',
                                md5('reservation-' || (i % $2) || '-' || (v - v % 2))::uuid) END
                  WHEN c < 6 THEN
                    CASE WHEN v = 1 THEN jsonb_build_object('amount_cents', 1000000000)
                         ELSE jsonb_build_object('amount_cents', 1000, 'order_id',
                                md5('hold-' || (i % $3) || '-' || (v - v % 2))::uuid) END
                  ELSE
                    CASE WHEN v = 1 THEN jsonb_build_object(
                             'customer_id', md5('account-' || (i % $4 % $3))::uuid,
                             'lines', jsonb_build_array(
                                 jsonb_build_object('sku', 'SKU-' || (i % $4 % $2), 'quantity', 2, 'unit_price_cents', 1250),
                                 jsonb_build_object('sku', 'SKU-' || ((i % $4 + 1) % $2), 'quantity', 1, 'unit_price_cents', 4999)),
                             'total_cents', 7499)
                         WHEN i % 10 < 7 THEN 'null'::jsonb
                         WHEN i % 10 < 9 THEN jsonb_build_object('reason', 'insufficient stock')
                         ELSE jsonb_build_object('reason', NULL) END
             END AS payload
           FROM (
             SELECT g, c, i,
                    CASE WHEN c < 3 THEN i / $2 + 1 WHEN c < 6 THEN i / $3 + 1 ELSE i / $4 + 1 END AS v
             FROM (
               SELECT g, g % 10 AS c,
                      CASE WHEN g % 10 < 3 THEN (g / 10) * 3 + g % 10
                           WHEN g % 10 < 6 THEN (g / 10) * 3 + g % 10 - 3
                           ELSE (g / 10) * 4 + g % 10 - 6 END AS i
               FROM generate_series(0, $1 - 1) g
             ) x
           ) y
         ) s
         ORDER BY s.g",
    )
    .bind(n)
    .bind(SKUS)
    .bind(ACCOUNTS)
    .bind(orders)
    .execute(pool)
    .await?;
    Ok(())
}
