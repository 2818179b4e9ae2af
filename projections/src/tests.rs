//! The projector runtime against the domain's aggregates and a real PostgreSQL: every read
//! model must equal a fold of the event store through the aggregates' own `apply`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use sagaflow_engine::aggregate::{encode_event, Aggregate};
use sagaflow_engine::command::{
    CommandBus, CommandBusConfig, CommandContext, Repository, StoredResponse,
};
use sagaflow_engine::store::{decode_envelope, EventStore};
use sagaflow_engine::transport::Delivery;
use sagaflow_engine::RecordedEvent;
use sagaflow_sagas::inventory::{Inventory, InventoryCommand};
use sagaflow_sagas::order::{Order, OrderCommand, OrderLine};
use sagaflow_sagas::payment::{Account, AccountCommand};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::accounts::{AccountRow, AccountsProjection};
use crate::inventory::{InventoryProjection, StockRow};
use crate::orders::{OrderRow, OrdersProjection};
use sagaflow_engine::projection::projector::{fold, Folded};
use sagaflow_engine::projection::rebuild::{self, RebuildError, RebuildJob, RebuildOptions};
use sagaflow_engine::projection::{
    ProgressFn, Projector, ProjectorHandler, StoredEvent, Versioned,
};
use sagaflow_engine::App;

/// The shop's migrations with the engine's, for every test database.
pub(crate) static MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> =
    std::sync::LazyLock::new(|| {
        shop_app()
            .migrator()
            .expect("the shop's migrations fit together")
    });

/// The whole shop, as the binary installs it.
fn shop_app() -> App {
    App::new("shop-test", "0").install(crate::shop)
}

/// The names of the shop's read models.
fn names() -> Vec<&'static str> {
    shop_app().projection_names()
}

/// Starts rebuilding the shop's read model `name`.
async fn begin_rebuild(
    pool: PgPool,
    name: &str,
    options: RebuildOptions,
    on_progress: ProgressFn,
) -> Result<RebuildJob, RebuildError> {
    let Some(projection) = shop_app().projection_named(name) else {
        return Err(RebuildError::UnknownProjection {
            name: name.to_owned(),
            known: names().join(", "),
        });
    };
    projection.begin_rebuild(pool, options, on_progress).await
}

// ---------------------------------------------------------------------------------------------
// Support

/// A tiny deterministic generator, so histories vary but every run is the same.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn delivery(e: &RecordedEvent, offset: i64) -> Delivery {
    Delivery {
        topic: "test.events".into(),
        partition: 0,
        offset,
        key: e.envelope.stream_id.clone(),
        envelope: e.envelope.clone(),
        decode_error: None,
    }
}

fn deliveries(events: &[RecordedEvent]) -> Vec<Delivery> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| delivery(e, i as i64))
        .collect()
}

fn line(sku: &str, quantity: i64, unit_price_cents: i64) -> OrderLine {
    serde_json::from_value(
        json!({"sku": sku, "quantity": quantity, "unit_price_cents": unit_price_cents}),
    )
    .unwrap()
}

/// The domain's repositories over `pool`, to write valid histories through the aggregates.
struct Domain {
    orders: Repository<Order>,
    inventory: Repository<Inventory>,
    accounts: Repository<Account>,
}

impl Domain {
    fn new(pool: &PgPool) -> Self {
        let bus = CommandBus::new(pool.clone(), CommandBusConfig::default());
        Domain {
            orders: Repository::new(bus.clone()),
            inventory: Repository::new(bus.clone()),
            accounts: Repository::new(bus),
        }
    }
}

/// Runs a command; a domain rejection is fine (it writes nothing).
async fn run<A: Aggregate>(repo: &Repository<A>, id: &str, command: A::Command) {
    let _ = repo
        .execute(id, &command, &CommandContext::default(), |_| {
            StoredResponse {
                status: 202,
                body: Value::Null,
            }
        })
        .await;
}

/// A mixed history over a few SKUs, customers and orders, decided by the aggregates.
async fn mixed_workload(pool: &PgPool, seed: u64, orders: usize) {
    let domain = Domain::new(pool);
    let mut rng = Lcg(seed);
    let skus = ["SKU-A", "SKU-B", "SKU-C"];
    let customers: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    for sku in skus {
        run(
            &domain.inventory,
            sku,
            InventoryCommand::Restock {
                quantity: 20.try_into().unwrap(),
            },
        )
        .await;
    }
    for c in &customers {
        run(
            &domain.accounts,
            &c.to_string(),
            AccountCommand::Deposit {
                amount_cents: 100_000.try_into().unwrap(),
            },
        )
        .await;
    }
    for _ in 0..orders {
        let order_id = Uuid::now_v7();
        let customer = customers[rng.below(3) as usize];
        let sku = skus[rng.below(3) as usize];
        let quantity = 1 + rng.below(4) as i64;
        run(
            &domain.orders,
            &order_id.to_string(),
            OrderCommand::Place {
                customer_id: customer,
                lines: vec![line(sku, quantity, 250)],
            },
        )
        .await;
        run(
            &domain.inventory,
            sku,
            InventoryCommand::Reserve {
                order_id,
                quantity: quantity.try_into().unwrap(),
            },
        )
        .await;
        run(
            &domain.accounts,
            &customer.to_string(),
            AccountCommand::Authorize {
                order_id,
                amount_cents: (quantity * 250).try_into().unwrap(),
            },
        )
        .await;
        match rng.below(4) {
            0 => {
                run(
                    &domain.inventory,
                    sku,
                    InventoryCommand::Release { order_id },
                )
                .await;
                run(
                    &domain.accounts,
                    &customer.to_string(),
                    AccountCommand::Void { order_id },
                )
                .await;
                run(
                    &domain.orders,
                    &order_id.to_string(),
                    OrderCommand::Cancel {
                        reason: Some("changed my mind".into()),
                    },
                )
                .await;
            }
            1 => {
                run(
                    &domain.orders,
                    &order_id.to_string(),
                    OrderCommand::Reject {
                        reason: "out of stock".into(),
                    },
                )
                .await;
            }
            2 => {}
            _ => {
                run(
                    &domain.inventory,
                    sku,
                    InventoryCommand::Commit { order_id },
                )
                .await;
                run(
                    &domain.accounts,
                    &customer.to_string(),
                    AccountCommand::Capture { order_id },
                )
                .await;
                run(&domain.orders, &order_id.to_string(), OrderCommand::Confirm).await;
            }
        }
        if rng.below(5) == 0 {
            run(
                &domain.inventory,
                sku,
                InventoryCommand::Restock {
                    quantity: 5.try_into().unwrap(),
                },
            )
            .await;
        }
    }
}

async fn all_events(pool: &PgPool) -> Vec<RecordedEvent> {
    let store = EventStore::new(pool.clone());
    let mut out = Vec::new();
    loop {
        let after = out.last().map_or(0, |e: &RecordedEvent| e.global_position);
        let page = store.read_all(after, 1000).await.unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// What every read model must hold: the aggregates folded over the whole store, keyed by
/// stream, with the last version and the times of the first and last event.
#[derive(Default)]
struct Fold {
    orders: BTreeMap<String, (Order, i64, chrono::DateTime<Utc>, chrono::DateTime<Utc>)>,
    stock: BTreeMap<String, (Inventory, i64, chrono::DateTime<Utc>)>,
    accounts: BTreeMap<String, (Account, i64, chrono::DateTime<Utc>)>,
}

async fn fold_store(pool: &PgPool) -> Fold {
    let mut f = Fold::default();
    for e in all_events(pool).await {
        let (s, v, at) = (
            e.envelope.stream_id.clone(),
            e.envelope.stream_version,
            e.recorded_at,
        );
        if s.starts_with("order-") {
            let entry = f
                .orders
                .entry(s)
                .or_insert_with(|| (Order::default(), 0, at, at));
            entry.0.apply(&decode_envelope(&e.envelope).unwrap());
            assert_eq!(entry.1 + 1, v, "the store has a gap");
            (entry.1, entry.3) = (v, at);
        } else if s.starts_with("inventory-") {
            let entry = f
                .stock
                .entry(s)
                .or_insert_with(|| (Inventory::default(), 0, at));
            entry.0.apply(&decode_envelope(&e.envelope).unwrap());
            (entry.1, entry.2) = (v, at);
        } else if s.starts_with("account-") {
            let entry = f
                .accounts
                .entry(s)
                .or_insert_with(|| (Account::default(), 0, at));
            entry.0.apply(&decode_envelope(&e.envelope).unwrap());
            (entry.1, entry.2) = (v, at);
        }
    }
    f
}

async fn rows<P: Projector>(pool: &PgPool, p: &P, streams: &[&str]) -> Vec<Versioned<P::Row>> {
    let mut conn = pool.acquire().await.unwrap();
    let mut rows = p.load(&mut conn, streams).await.unwrap();
    rows.sort_by(|a, b| a.stream_id.cmp(&b.stream_id));
    rows
}

fn versioned<R>(stream_id: &str, version: &i64, row: R) -> Versioned<R> {
    Versioned {
        stream_id: stream_id.to_owned(),
        version: *version,
        row,
    }
}

/// Asserts that `p`'s table holds exactly `expected` (in stream-id order).
async fn assert_rows<P: Projector>(pool: &PgPool, p: &P, expected: Vec<Versioned<P::Row>>)
where
    P::Row: PartialEq + std::fmt::Debug,
{
    let streams: Vec<&str> = expected.iter().map(|v| v.stream_id.as_str()).collect();
    assert_eq!(rows(pool, p, &streams).await, expected);
    assert_eq!(count(pool, P::TABLES[0]).await, expected.len() as i64);
}

/// Asserts that the three read models equal the fold of the store, row for row.
async fn assert_read_models_equal_the_fold(pool: &PgPool) {
    let f = fold_store(pool).await;
    assert!(!f.orders.is_empty() && !f.stock.is_empty() && !f.accounts.is_empty());
    let orders = f.orders.iter().map(|(s, (o, v, placed, updated))| {
        let row = OrderRow {
            customer_id: o.customer_id().unwrap(),
            status: o.status().unwrap(),
            reason: o.reason().map(str::to_owned),
            lines: o.lines().to_vec(),
            total_cents: o.total_cents(),
            placed_at: *placed,
            updated_at: *updated,
        };
        versioned(s, v, row)
    });
    assert_rows(pool, &OrdersProjection, orders.collect()).await;
    let stock = f.stock.iter().map(|(s, (i, v, at))| {
        let row = StockRow {
            on_hand: i.on_hand(),
            reserved: i.reserved(),
            updated_at: *at,
        };
        versioned(s, v, row)
    });
    assert_rows(pool, &InventoryProjection, stock.collect()).await;
    let accounts = f.accounts.iter().map(|(s, (a, v, at))| {
        let row = AccountRow {
            balance_cents: a.balance_cents(),
            held_cents: a.held_cents(),
            updated_at: *at,
        };
        versioned(s, v, row)
    });
    assert_rows(pool, &AccountsProjection, accounts.collect()).await;
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Applies `deliveries` with each projector's live handler, in one transaction per projector.
async fn deliver(pool: &PgPool, deliveries: &[Delivery]) -> usize {
    let mut written = 0;
    let mut tx = pool.begin().await.unwrap();
    written += ProjectorHandler::new(Arc::new(OrdersProjection))
        .apply_deliveries(&mut tx, deliveries)
        .await
        .unwrap();
    written += ProjectorHandler::new(Arc::new(InventoryProjection))
        .apply_deliveries(&mut tx, deliveries)
        .await
        .unwrap();
    written += ProjectorHandler::new(Arc::new(AccountsProjection))
        .apply_deliveries(&mut tx, deliveries)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    written
}

async fn snapshot(pool: &PgPool) -> Vec<String> {
    let mut out = Vec::new();
    for table in ["read_orders", "read_inventory", "read_accounts"] {
        let rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT t::text FROM {table} t ORDER BY t::text"))
                .fetch_all(pool)
                .await
                .unwrap();
        out.extend(rows);
    }
    out
}

async fn rebuild_all(pool: &PgPool, options: RebuildOptions) {
    for name in names() {
        let job = begin_rebuild(pool.clone(), name, options.clone(), Arc::new(|_: &_| {}))
            .await
            .unwrap();
        job.run.await.unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Folding, without a database

/// Drives each aggregate through its own `handle` with a varied command sequence and checks,
/// after every step, that the projector's row says what the aggregate says.
#[test]
fn rows_fold_like_the_aggregates() {
    let mut rng = Lcg(7);
    let at = Utc::now();
    let mut position = 0;
    let mut next = |stream: &str, version: i64, (event_type, payload): (String, Value)| {
        position += 1;
        StoredEvent {
            global_position: position,
            stream_id: stream.to_owned(),
            stream_version: version,
            event_type,
            schema_version: 1,
            payload,
            recorded_at: at + chrono::Duration::milliseconds(position),
        }
    };
    let orders: Vec<Uuid> = (0..6).map(|_| Uuid::now_v7()).collect();

    let (mut inventory, mut row, mut version) = (Inventory::default(), None, 0);
    for _ in 0..300 {
        let order_id = orders[rng.below(6) as usize];
        let quantity = (1 + rng.below(5) as i64).try_into().unwrap();
        let command = match rng.below(4) {
            0 => InventoryCommand::Restock { quantity },
            1 => InventoryCommand::Reserve { order_id, quantity },
            2 => InventoryCommand::Release { order_id },
            _ => InventoryCommand::Commit { order_id },
        };
        for e in inventory.handle(&command).unwrap_or_default() {
            inventory.apply(&e);
            version += 1;
            let stored = next("inventory-SKU-1", version, encode_event(&e));
            assert_eq!(
                fold(&InventoryProjection, &mut row, &stored).unwrap(),
                Folded::Applied
            );
            let r: &Versioned<StockRow> = row.as_ref().unwrap();
            assert_eq!(
                (r.row.on_hand, r.row.reserved, r.version),
                (inventory.on_hand(), inventory.reserved(), version)
            );
            assert_eq!(r.row.updated_at, stored.recorded_at);
        }
    }
    assert!(version > 100, "the sequence exercised the aggregate");

    let (mut account, mut row, mut version) = (Account::default(), None, 0);
    for _ in 0..300 {
        let order_id = orders[rng.below(6) as usize];
        let amount_cents = (1 + rng.below(500) as i64).try_into().unwrap();
        let command = match rng.below(4) {
            0 => AccountCommand::Deposit { amount_cents },
            1 => AccountCommand::Authorize {
                order_id,
                amount_cents,
            },
            2 => AccountCommand::Void { order_id },
            _ => AccountCommand::Capture { order_id },
        };
        for e in account.handle(&command).unwrap_or_default() {
            account.apply(&e);
            version += 1;
            let stored = next("account-x", version, encode_event(&e));
            fold(&AccountsProjection, &mut row, &stored).unwrap();
            let r: &Versioned<AccountRow> = row.as_ref().unwrap();
            assert_eq!(
                (r.row.balance_cents, r.row.held_cents, r.version),
                (account.balance_cents(), account.held_cents(), version)
            );
        }
    }

    let customer = Uuid::now_v7();
    for ending in 0..4 {
        let mut order = Order::default();
        let (mut row, mut version) = (None::<Versioned<OrderRow>>, 0);
        let mut commands = vec![OrderCommand::Place {
            customer_id: customer,
            lines: vec![line("A", 2, 150), line("B", 1, 99)],
        }];
        commands.push(match ending {
            0 => OrderCommand::Confirm,
            1 => OrderCommand::Reject {
                reason: "no stock".into(),
            },
            2 => OrderCommand::Cancel { reason: None },
            _ => OrderCommand::Cancel {
                reason: Some("late".into()),
            },
        });
        commands.push(OrderCommand::Confirm); // refused or a no-op
        let mut placed_at = None;
        for command in &commands {
            for e in order.handle(command).unwrap_or_default() {
                order.apply(&e);
                version += 1;
                let stored = next("order-1", version, encode_event(&e));
                placed_at.get_or_insert(stored.recorded_at);
                fold(&OrdersProjection, &mut row, &stored).unwrap();
                let r = row.as_ref().unwrap();
                assert_eq!(
                    r.row,
                    OrderRow {
                        customer_id: customer,
                        status: order.status().unwrap(),
                        reason: order.reason().map(str::to_owned),
                        lines: order.lines().to_vec(),
                        total_cents: 399,
                        placed_at: placed_at.unwrap(),
                        updated_at: stored.recorded_at,
                    }
                );
                assert_eq!(r.version, version);
            }
        }
    }
}

#[test]
fn folding_skips_what_a_row_reflects_and_reports_a_gap() {
    let at = Utc::now();
    let event = |version| StoredEvent {
        global_position: version,
        stream_id: "inventory-S".into(),
        stream_version: version,
        event_type: "stock_restocked".into(),
        schema_version: 1,
        payload: json!({"quantity": 2}),
        recorded_at: at,
    };
    let mut row = None;
    assert_eq!(
        fold(&InventoryProjection, &mut row, &event(2)).unwrap(),
        Folded::Gap { have: 0 }
    );
    assert!(row.is_none());
    for v in 1..=2 {
        assert_eq!(
            fold(&InventoryProjection, &mut row, &event(v)).unwrap(),
            Folded::Applied
        );
    }
    for v in 1..=2 {
        assert_eq!(
            fold(&InventoryProjection, &mut row, &event(v)).unwrap(),
            Folded::Skipped
        );
    }
    assert_eq!(row.as_ref().unwrap().row.on_hand, 4);
    assert_eq!(
        fold(&InventoryProjection, &mut row, &event(4)).unwrap(),
        Folded::Gap { have: 2 }
    );
    // An order event before the order was placed is a history the domain never decides.
    let mut order = None;
    let confirmed = StoredEvent {
        stream_id: "order-1".into(),
        event_type: "order_confirmed".into(),
        payload: Value::Null,
        ..event(1)
    };
    assert!(fold(&OrdersProjection, &mut order, &confirmed).is_err());
}

// ---------------------------------------------------------------------------------------------
// The live handler

#[sqlx::test(migrator = "crate::tests::MIGRATOR")]
async fn live_batches_equal_the_fold_and_redelivery_changes_nothing(pool: PgPool) {
    mixed_workload(&pool, 1, 25).await;
    let events = all_events(&pool).await;
    // In batches of 7, the way a consumer polls.
    for (i, batch) in events.chunks(7).enumerate() {
        let ds: Vec<Delivery> = batch
            .iter()
            .enumerate()
            .map(|(j, e)| delivery(e, (i * 7 + j) as i64))
            .collect();
        deliver(&pool, &ds).await;
    }
    assert_read_models_equal_the_fold(&pool).await;
    let before = snapshot(&pool).await;

    // The whole history again, in one batch, then reversed, then every event twice.
    assert_eq!(deliver(&pool, &deliveries(&events)).await, 0);
    let mut reversed = deliveries(&events);
    reversed.reverse();
    assert_eq!(deliver(&pool, &reversed).await, 0);
    let doubled: Vec<Delivery> = deliveries(&events)
        .into_iter()
        .flat_map(|d| [d.clone(), d])
        .collect();
    assert_eq!(deliver(&pool, &doubled).await, 0);
    assert_eq!(snapshot(&pool).await, before);
}

#[sqlx::test(migrator = "crate::tests::MIGRATOR")]
async fn a_row_behind_or_missing_is_completed_from_the_store(pool: PgPool) {
    mixed_workload(&pool, 2, 20).await;
    let events = all_events(&pool).await;
    // Only the last event of each stream is delivered: every row is folded from the store.
    let mut last: BTreeMap<String, RecordedEvent> = BTreeMap::new();
    for e in &events {
        last.insert(e.envelope.stream_id.clone(), e.clone());
    }
    let lasts: Vec<RecordedEvent> = last.values().cloned().collect();
    deliver(&pool, &deliveries(&lasts)).await;
    assert_read_models_equal_the_fold(&pool).await;

    // Rows lost (as after a rebuild emptied the tables) or behind are repaired by the next
    // event of their stream; delivering only the latest events brings them back.
    sqlx::query("DELETE FROM read_inventory WHERE sku = 'SKU-A'")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE read_accounts SET version = 1, balance_cents = 100000, held_cents = 0")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("TRUNCATE read_orders")
        .execute(&pool)
        .await
        .unwrap();
    deliver(&pool, &deliveries(&lasts)).await;
    assert_read_models_equal_the_fold(&pool).await;
}

/// SKUs are case-sensitive and sort differently under different collations: one batch of
/// such streams is applied stream by stream, whatever the database's collation.
#[sqlx::test(migrator = "crate::tests::MIGRATOR")]
async fn streams_whose_ids_differ_only_in_case_or_punctuation_stay_apart(pool: PgPool) {
    let domain = Domain::new(&pool);
    for (i, sku) in ["SKU-b", "SKU-B", "sku-A", "SKU.a", "SKU_a", "SKU-a"]
        .iter()
        .enumerate()
    {
        for _ in 0..=i {
            let quantity = (i as i64 + 1).try_into().unwrap();
            run(
                &domain.inventory,
                sku,
                InventoryCommand::Restock { quantity },
            )
            .await;
        }
    }
    mixed_workload(&pool, 6, 3).await;
    let events = all_events(&pool).await;
    deliver(&pool, &deliveries(&events)).await;
    assert_read_models_equal_the_fold(&pool).await;
    let (_, on_hand): (String, i64) =
        sqlx::query_as("SELECT sku, on_hand FROM read_inventory WHERE sku = 'SKU-a'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(on_hand, 6 * 6);
}

#[sqlx::test(migrator = "crate::tests::MIGRATOR")]
async fn a_write_never_moves_a_row_backwards(pool: PgPool) {
    let at = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6); // what timestamptz holds
    let row = |version, on_hand| Versioned {
        stream_id: "inventory-S".to_owned(),
        version,
        row: StockRow {
            on_hand,
            reserved: 0,
            updated_at: at,
        },
    };
    let p = InventoryProjection;
    let mut conn = pool.acquire().await.unwrap();
    p.store(&mut conn, &[&row(5, 50)]).await.unwrap();
    p.store(&mut conn, &[&row(3, 30)]).await.unwrap();
    p.store(&mut conn, &[&row(5, 99)]).await.unwrap();
    assert_eq!(rows(&pool, &p, &["inventory-S"]).await, vec![row(5, 50)]);
    p.store(&mut conn, &[&row(6, 60)]).await.unwrap();
    assert_eq!(rows(&pool, &p, &["inventory-S"]).await, vec![row(6, 60)]);
}

#[sqlx::test(migrator = "crate::tests::MIGRATOR")]
async fn a_stream_missing_from_the_store_is_an_error_not_a_skip(pool: PgPool) {
    mixed_workload(&pool, 3, 3).await;
    let mut e = all_events(&pool).await.pop().unwrap();
    e.envelope.stream_version += 5; // a delivery the store cannot back
    let handler = ProjectorHandler::new(Arc::new(InventoryProjection));
    let handler_o = ProjectorHandler::new(Arc::new(OrdersProjection));
    let handler_a = ProjectorHandler::new(Arc::new(AccountsProjection));
    let ds = deliveries(&[e]);
    let mut tx = pool.begin().await.unwrap();
    let results = [
        handler.apply_deliveries(&mut tx, &ds).await.is_err(),
        handler_o.apply_deliveries(&mut tx, &ds).await.is_err(),
        handler_a.apply_deliveries(&mut tx, &ds).await.is_err(),
    ];
    assert_eq!(results.iter().filter(|failed| **failed).count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Rebuild

#[sqlx::test(migrator = "crate::tests::MIGRATOR")]
async fn a_rebuild_replaces_wrong_rows_with_the_fold(pool: PgPool) {
    mixed_workload(&pool, 4, 40).await;
    deliver(&pool, &deliveries(&all_events(&pool).await)).await;
    // Damage every table: wrong values at a high version, extra rows, missing rows.
    sqlx::query("UPDATE read_inventory SET on_hand = 0, version = version + 100")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO read_accounts VALUES (gen_random_uuid(), 1, 1, now(), 1)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM read_orders WHERE status = 'pending'")
        .execute(&pool)
        .await
        .unwrap();

    // Tiny pages, flushes and memory, so paging, flushing and evicting states all happen.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let options = RebuildOptions {
        page_size: 7,
        flush_rows: 3,
        write_chunk: 2,
        writers: 2,
        max_states: 4,
    };
    for name in names() {
        let progress = seen.clone();
        let job = begin_rebuild(
            pool.clone(),
            name,
            options.clone(),
            Arc::new(move |p: &_| progress.lock().unwrap().push(p.clone())),
        )
        .await
        .unwrap();
        assert_eq!(job.status.state, "rebuilding");
        let total = job.status.events_total.unwrap();
        let report = job.run.await.unwrap();
        assert_eq!(report.events as i64, total);
        let status = rebuild::status(&pool, name).await.unwrap();
        assert_eq!(
            (status.state, status.events_processed, status.events_total),
            ("idle", total, Some(total))
        );
        assert!(status.finished_at.is_some() && status.error.is_none());
    }
    assert_read_models_equal_the_fold(&pool).await;

    let rows = count(&pool, "read_orders").await as u64;
    let seen = seen.lock().unwrap().clone();
    let orders: Vec<u64> = seen
        .iter()
        .filter(|p| p.name == "orders")
        .map(|p| p.events_processed)
        .collect();
    let pages: BTreeSet<u64> = orders.iter().copied().collect();
    assert!(pages.len() > 3, "a progress report per page");
    assert!(orders.windows(2).all(|w| w[0] <= w[1]));
    let last = seen.iter().rev().find(|p| p.name == "orders").unwrap();
    assert_eq!(last.events_processed, last.events_total);
    assert!(last.rows_written >= rows, "every row's write was reported");
}

#[sqlx::test(migrator = "crate::tests::MIGRATOR")]
async fn one_rebuild_at_a_time_and_an_abandoned_one_shows_as_failed(pool: PgPool) {
    mixed_workload(&pool, 5, 5).await;
    let noop: ProgressFn = Arc::new(|_: &_| {});
    let job = begin_rebuild(
        pool.clone(),
        "inventory",
        RebuildOptions::default(),
        noop.clone(),
    )
    .await
    .unwrap();
    assert_eq!(
        count(&pool, "read_inventory").await,
        0,
        "emptied at the start"
    );
    let second = begin_rebuild(
        pool.clone(),
        "inventory",
        RebuildOptions::default(),
        noop.clone(),
    )
    .await;
    assert!(matches!(second, Err(RebuildError::AlreadyRunning(_))));
    // Other projections are not blocked.
    let other = begin_rebuild(
        pool.clone(),
        "accounts",
        RebuildOptions::default(),
        noop.clone(),
    )
    .await
    .unwrap();
    other.run.await.unwrap();
    assert!(rebuild::is_rebuilding(&pool, "inventory").await.unwrap());
    job.run.await.unwrap();
    assert_eq!(
        rebuild::status(&pool, "inventory").await.unwrap().state,
        "idle"
    );

    // A rebuild whose process went away (its job dropped, its lock session closed).
    let job = begin_rebuild(
        pool.clone(),
        "inventory",
        RebuildOptions::default(),
        noop.clone(),
    )
    .await
    .unwrap();
    drop(job);
    let mut state = "";
    for _ in 0..50 {
        let status = rebuild::status(&pool, "inventory").await.unwrap();
        state = status.state;
        if state == "failed" {
            assert!(status.error.unwrap().contains("interrupted"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, "failed");
    // It can be rebuilt again.
    begin_rebuild(
        pool.clone(),
        "inventory",
        RebuildOptions::default(),
        noop.clone(),
    )
    .await
    .unwrap()
    .run
    .await
    .unwrap();
    rebuild_all(&pool, RebuildOptions::default()).await;
    assert_read_models_equal_the_fold(&pool).await;

    let unknown = begin_rebuild(pool.clone(), "nope", RebuildOptions::default(), noop).await;
    assert!(matches!(
        unknown,
        Err(RebuildError::UnknownProjection { .. })
    ));
}

/// The live handler keeps applying while a rebuild runs, over many rounds: at the end both
/// writers' rows agree with the fold, whoever wrote each row last.
#[sqlx::test(migrator = "crate::tests::MIGRATOR")]
async fn live_batches_interleaved_with_rebuilds_equal_the_fold(pool: PgPool) {
    let mut delivered: usize = 0;
    for round in 0..6u64 {
        mixed_workload(&pool, 10 + round, 8).await;
        let events = all_events(&pool).await;
        let options = RebuildOptions {
            page_size: 5,
            flush_rows: 4,
            write_chunk: 3,
            writers: 2,
            max_states: 1_000,
        };
        let name = names()[round as usize % 3];
        let job = begin_rebuild(pool.clone(), name, options, Arc::new(|_: &_| {}))
            .await
            .unwrap();
        let rebuild = tokio::spawn(job.run);
        // The live side delivers the new events (and some old ones again) meanwhile.
        let fresh = &events[delivered.saturating_sub(3)..];
        for batch in fresh.chunks(4) {
            deliver(&pool, &deliveries(batch)).await;
        }
        delivered = events.len();
        rebuild.await.unwrap().unwrap();
        assert_read_models_equal_the_fold(&pool).await;
    }
}
