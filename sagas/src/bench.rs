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

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use sagaflow_engine::app::{Request, Workload};
use serde_json::{json, Value};
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

    fn stream_command(&self, stream: usize) -> Option<Request> {
        // A deposit to account `stream`: accounts of their own, apart from the funded ones.
        let account = Uuid::from_u128(0x0193_a0c4_0000_7000_9000_0000_0000_0000 + stream as u128);
        Some(Request::post(
            format!("/accounts/{account}/deposits"),
            json!({"amount_cents": 100}),
        ))
    }

    async fn seed_events(&self, pool: &PgPool, events: i64) -> Result<(), sqlx::Error> {
        fill(pool, events).await
    }

    /// Orders (more than half), cancellations of earlier orders, restocks and deposits, on
    /// SKUs and accounts that start empty, so that stock and money run short now and then and
    /// sagas compensate.
    fn chaos_request(&self, choice: u64, earlier: &[Value]) -> Request {
        let pick = |shift: u32, n: u64| ((choice >> shift) % n) as usize;
        match choice % 100 {
            55..70 if !earlier.is_empty() => {
                let order = &earlier[pick(8, earlier.len() as u64)]["order_id"];
                Request::post(
                    format!("/orders/{}/cancel", order.as_str().unwrap_or_default()),
                    json!({"reason": "changed my mind"}),
                )
            }
            70..85 => Request::post(
                format!("/inventory/{}/restock", chaos_sku(pick(8, 8))),
                json!({"quantity": 1 + pick(16, 10)}),
            ),
            85..100 => Request::post(
                format!("/accounts/{}/deposits", chaos_customer(pick(8, 16))),
                json!({"amount_cents": 100 + 100 * pick(16, 50)}),
            ),
            _ => {
                let first = pick(8, 8);
                let mut lines = vec![
                    json!({"sku": chaos_sku(first), "quantity": 1 + pick(12, 3), "unit_price_cents": 100 + 100 * pick(16, 9)}),
                ];
                if pick(20, 3) == 0 {
                    lines.push(json!({"sku": chaos_sku((first + 1) % 8), "quantity": 1, "unit_price_cents": 250}));
                }
                Request::post(
                    "/orders",
                    json!({"customer_id": chaos_customer(pick(24, 16)), "lines": lines}),
                )
            }
        }
    }

    async fn check(&self, pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
        check(pool).await
    }
}

fn chaos_sku(n: usize) -> String {
    format!("CHAOS-{n}")
}

fn chaos_customer(n: usize) -> Uuid {
    Uuid::from_u128(0x0193_a0c4_0000_7000_8000_0000_0000_c000 + n as u128)
}

/// What a run of the shop must leave, read from the event store and the sagas: every order's
/// saga ended, with its effects whole (completed) or wholly undone (compensated); no
/// reservation, hold, capture, release or void applied twice; stock and money never negative
/// and adding up.
pub async fn check(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(String, String, Value)> = sqlx::query_as(
        "SELECT stream_id, event_type, payload FROM events
         WHERE stream_id LIKE 'order-%' OR stream_id LIKE 'inventory-%' OR stream_id LIKE 'account-%'
         ORDER BY global_position",
    )
    .fetch_all(pool)
    .await?;
    let sagas: HashMap<Uuid, String> =
        sqlx::query_as::<_, (Uuid, String)>("SELECT saga_id, state FROM sagas")
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
    let mut findings = Vec::new();
    // (stream, event type, order) → how many times.
    let mut effects: BTreeMap<(String, String, String), i64> = BTreeMap::new();
    // stream → (in, out, reserved-or-held) totals.
    let mut balances: BTreeMap<String, [i64; 3]> = BTreeMap::new();
    let mut orders: BTreeMap<String, (Value, Option<String>)> = BTreeMap::new();
    for (stream, event_type, payload) in &rows {
        let order = payload["order_id"].as_str().unwrap_or_default().to_owned();
        let amount = payload["quantity"]
            .as_i64()
            .or_else(|| payload["amount_cents"].as_i64())
            .unwrap_or(0);
        let b = balances.entry(stream.clone()).or_default();
        match event_type.as_str() {
            "order_placed" => {
                let id = stream.trim_start_matches("order-").to_owned();
                orders.insert(id, (payload.clone(), None));
            }
            "order_confirmed" | "order_rejected" | "order_cancelled" => {
                let id = stream.trim_start_matches("order-");
                if let Some(o) = orders.get_mut(id) {
                    o.1 = Some(event_type.clone());
                }
            }
            "stock_restocked" | "funds_deposited" => b[0] += amount,
            "stock_reserved" | "payment_authorized" => b[2] += amount,
            "stock_released" | "payment_voided" => b[2] -= amount,
            "stock_committed" | "payment_captured" => {
                b[1] += amount;
                b[2] -= amount;
            }
            _ => {}
        }
        if !order.is_empty() {
            *effects
                .entry((stream.clone(), event_type.clone(), order))
                .or_default() += 1;
        }
    }
    for ((stream, event_type, order), n) in &effects {
        if *n > 1 {
            findings.push(format!(
                "{event_type} of order {order} applied {n} times on {stream}"
            ));
        }
    }
    for (stream, [into, out, held]) in &balances {
        let left = into - out;
        if left < 0 || *held < 0 || *held > left {
            findings.push(format!(
                "{stream}: {into} in, {out} out, {held} reserved or held: it does not add up"
            ));
        }
    }
    let count = |stream: &str, event_type: &str, order: &str| {
        effects
            .get(&(stream.to_owned(), event_type.to_owned(), order.to_owned()))
            .copied()
            .unwrap_or(0)
    };
    for (id, (placed, outcome)) in &orders {
        let Ok(order_id) = id.parse::<Uuid>() else {
            continue;
        };
        let saga = crate::order_fulfillment::saga_id_of(order_id);
        let state = sagas.get(&saga).map(String::as_str);
        let account = format!(
            "account-{}",
            placed["customer_id"].as_str().unwrap_or_default()
        );
        let charged = placed["total_cents"].as_i64().unwrap_or(0) > 0;
        let lines: Vec<String> = placed["lines"]
            .as_array()
            .map(|l| {
                l.iter()
                    .map(|l| format!("inventory-{}", l["sku"].as_str().unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        match state {
            Some("completed") => {
                let whole = outcome.as_deref() == Some("order_confirmed")
                    && lines.iter().all(|s| {
                        count(s, "stock_reserved", id) == 1 && count(s, "stock_released", id) == 0
                    })
                    && (!charged
                        || (count(&account, "payment_captured", id) == 1
                            && count(&account, "payment_voided", id) == 0));
                if !whole {
                    findings.push(format!(
                        "order {id}: its saga completed, but its effects are not whole"
                    ));
                }
            }
            Some("compensated") => {
                let undone = outcome.as_deref() != Some("order_confirmed")
                    && outcome.is_some()
                    && lines
                        .iter()
                        .all(|s| count(s, "stock_reserved", id) == count(s, "stock_released", id))
                    && count(&account, "payment_authorized", id)
                        == count(&account, "payment_voided", id)
                    && count(&account, "payment_captured", id) == 0;
                if !undone {
                    findings.push(format!(
                        "order {id}: its saga compensated, but not everything was undone"
                    ));
                }
            }
            Some(other) => findings.push(format!("order {id}: its saga is {other}")),
            None => findings.push(format!("order {id} has no saga")),
        }
    }
    Ok(findings)
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
