//! Order fulfillment end to end over HTTP, on both transports: every path, contention on one
//! SKU, a stopped participant, and a saga defined only here.

// Amounts are written as dollars_cents (`17_00` is $17.00).
#![allow(clippy::inconsistent_digit_grouping)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::engine::{
    account, everything, everything_but, order_status, saga_state, start_engine, stock,
    wait_terminal, Component, PAYMENT,
};
use common::transport::{eventually, kafka, postgres};
use sagaflow_engine::envelope::Envelope;
use sagaflow_engine::outbox::{self, OutboxMessage};
use sagaflow_engine::saga::{load_saga, Backoff, Invoke, Orchestrator, Saga, SagaDefinition};
use sagaflow_engine::transport::Transport;
use sagaflow_sagas::inventory::{Inventory, InventoryCommand};
use sagaflow_sagas::order::OrderStatus;
use sagaflow_sagas::payment::{Account, AccountCommand, AccountEvent};
use sagaflow_sagas::types::{AmountCents, Quantity};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(120);

async fn every_path_ends_with_the_right_state(pool: PgPool, transport: Arc<dyn Transport>) {
    let engine = start_engine(&pool, &transport, &everything()).await;
    engine.restock("APPLE", 10).await;
    engine.restock("PEAR", 1).await;
    let rich = Uuid::now_v7();
    let poor = Uuid::now_v7();
    engine.deposit(rich, 100_00).await;
    engine.deposit(poor, 1_00).await;

    // Confirmed: stock reserved, payment captured.
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

    // Out of stock (PEAR is gone): rejected, the APPLE reservation released, nothing charged.
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

    // Payment declined: stock released, order rejected.
    let (declined, declined_saga) = engine.order(poor, &[("APPLE", 1, 5_00)]).await;
    wait_terminal(&pool, &[declined_saga], WAIT).await;
    assert_eq!(
        saga_state(&pool, declined_saga).await.as_deref(),
        Some("compensated")
    );
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
    let steps: Vec<(String, String)> = view["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("reserve_stock".to_owned(), "compensated".to_owned()),
            ("authorize_payment".to_owned(), "failed".to_owned()),
            ("confirm_order".to_owned(), "pending".to_owned()),
            ("capture_payment".to_owned(), "pending".to_owned()),
        ]
    );
    engine.stop().await;

    // Cancelled while running: the payment participant is down, so the saga waits at
    // authorize_payment; the cancel compensates what was done.
    let without_payment = start_engine(&pool, &transport, &everything_but(&[PAYMENT])).await;
    let (cancelled, cancelled_saga) = without_payment.order(rich, &[("APPLE", 2, 5_00)]).await;
    common::transport::eventually(WAIT, "the saga waiting for the payment", || async {
        stock(&pool, "APPLE").await == (10, 5)
    })
    .await;
    let (s, body) = without_payment
        .post(
            &format!("/orders/{cancelled}/cancel"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(s, reqwest::StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        order_status(&pool, cancelled).await,
        Some(OrderStatus::Cancelled)
    );
    // Compensation runs in reverse: first void the (unanswered) authorization, which waits
    // for the payment participant, then release the stock.
    common::transport::eventually(WAIT, "the saga compensating", || async {
        saga_state(&pool, cancelled_saga).await.as_deref() == Some("compensating")
    })
    .await;
    assert_eq!(stock(&pool, "APPLE").await, (10, 5));
    // The payment participant comes back: it authorizes, then voids, in that order.
    let payment = start_engine(&pool, &transport, &[PAYMENT]).await;
    wait_terminal(&pool, &[cancelled_saga], WAIT).await;
    assert_eq!(
        saga_state(&pool, cancelled_saga).await.as_deref(),
        Some("compensated")
    );
    assert_eq!(
        order_status(&pool, cancelled).await,
        Some(OrderStatus::Cancelled)
    );
    assert_eq!(account(&pool, rich).await, (83_00, 0));
    assert_eq!(stock(&pool, "APPLE").await, (10, 3));
    payment.stop().await;
    without_payment.stop().await;
}

/// 200 concurrent orders for one SKU with stock 50 and funds for all: exactly 50 confirmed.
async fn two_hundred_orders_for_fifty_items(pool: PgPool, transport: Arc<dyn Transport>) {
    let engine = start_engine(&pool, &transport, &everything()).await;
    engine.restock("HOT", 50).await;
    let customers: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
    for c in &customers {
        engine.deposit(*c, 1_000_00).await;
    }
    let engine = Arc::new(engine);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (engine, customer) = (engine.clone(), customers[i % customers.len()]);
        tasks.push(tokio::spawn(async move {
            engine.order(customer, &[("HOT", 1, 7_00)]).await
        }));
    }
    let mut orders = Vec::new();
    for t in tasks {
        orders.push(t.await.unwrap());
    }
    let sagas: Vec<Uuid> = orders.iter().map(|o| o.1).collect();
    wait_terminal(&pool, &sagas, WAIT).await;
    let mut confirmed = 0;
    let mut rejected = 0;
    for (order, _) in &orders {
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
        charged += 1_000_00 - balance;
    }
    assert_eq!(charged, 50 * 7_00);
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM sagas WHERE state = 'failed'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(failed, 0);
    Arc::into_inner(engine).unwrap().stop().await;
}

/// The data of a saga that exists only in this test.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Transfer {
    customer: Uuid,
    deposit_cents: i64,
    hold_id: Uuid,
    /// Set by `hold_funds` from its reply.
    #[serde(default)]
    held_cents: i64,
}

/// Each deposit starts a transfer saga.
/// An orchestrator that knows only one saga (its consumer and its deadline poller), beside an
/// engine started without its own.
struct OnlyOrchestrator {
    stop: tokio_util::sync::CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl OnlyOrchestrator {
    fn start(
        pool: &PgPool,
        transport: &Arc<dyn Transport>,
        engine: &common::engine::Running,
        saga: &Arc<Saga>,
    ) -> Self {
        // Publishing as the engine's writers do (straight to the log on the embedded transport).
        let orchestrator = Arc::new(
            Orchestrator::new(pool.clone(), vec![saga.clone()])
                .with_publishing(engine.service.bus.store().publishing().clone()),
        );
        let stop = tokio_util::sync::CancellationToken::new();
        let bell = engine.service.bus.outbox_bell().clone();
        let consumer = orchestrator.consumer(transport.clone(), bell.clone());
        let tasks = vec![
            tokio::spawn({
                let stop = stop.clone();
                async move { consumer.run(stop).await.unwrap() }
            }),
            tokio::spawn(orchestrator.run_deadlines(bell, stop.clone())),
        ];
        OnlyOrchestrator { stop, tasks }
    }

    async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            t.await.unwrap();
        }
    }
}

fn transfer_of_deposit(event: &AccountEvent, envelope: &Envelope) -> Option<Transfer> {
    match event {
        AccountEvent::FundsDeposited { amount_cents } => Some(Transfer {
            customer: envelope.stream_id.strip_prefix("account-")?.parse().ok()?,
            deposit_cents: *amount_cents,
            hold_id: Uuid::now_v7(),
            held_cents: 0,
        }),
        _ => None,
    }
}

fn reserve_gift(t: &Transfer) -> Invoke<Inventory> {
    Invoke::new(
        "GIFT",
        InventoryCommand::Reserve {
            order_id: t.hold_id,
            quantity: Quantity::new(1).unwrap(),
        },
    )
}

fn release_gift(t: &Transfer) -> Invoke<Inventory> {
    Invoke::new(
        "GIFT",
        InventoryCommand::Release {
            order_id: t.hold_id,
        },
    )
}

fn hold_funds(t: &Transfer, amount_cents: i64) -> Invoke<Account> {
    Invoke::new(
        t.customer,
        AccountCommand::Authorize {
            order_id: t.hold_id,
            amount_cents: AmountCents::new(amount_cents).unwrap(),
        },
    )
}

/// Three steps, the third always fails: step 2 then step 1 are compensated.
async fn a_saga_defined_in_a_test_compensates_in_reverse(
    pool: PgPool,
    transport: Arc<dyn Transport>,
) {
    let saga = SagaDefinition::<Transfer>::new("test_three_steps")
        .started_by::<Account>(transfer_of_deposit)
        .step("reserve_gift")
        .invoke::<Inventory>(reserve_gift)
        .compensate::<Inventory>(release_gift)
        .step("hold_funds")
        .invoke::<Account>(|t| hold_funds(t, t.deposit_cents / 2))
        .on_success(|t, events| match events {
            [AccountEvent::PaymentAuthorized { amount_cents, .. }] => t.held_cents = *amount_cents,
            other => panic!("{t:?} got {other:?}"),
        })
        .compensate::<Account>(|t| {
            Invoke::new(
                t.customer,
                AccountCommand::Void {
                    order_id: t.hold_id,
                },
            )
        })
        .step("reserve_impossible")
        .invoke::<Inventory>(|_| {
            Invoke::new(
                "GIFT",
                InventoryCommand::Reserve {
                    order_id: Uuid::now_v7(),
                    quantity: Quantity::new(1_000_000).unwrap(),
                },
            )
        })
        .timeout(Duration::from_secs(10))
        .retry(Backoff::none())
        .build();
    // The engine without our orchestrator, and an orchestrator that knows only this saga.
    let engine = start_engine(
        &pool,
        &transport,
        &everything_but(&[Component::Orchestrator]),
    )
    .await;
    let orchestrator = OnlyOrchestrator::start(&pool, &transport, &engine, &saga);
    engine.restock("GIFT", 5).await;
    let customer = Uuid::now_v7();
    engine.deposit(customer, 40_00).await;
    let saga_id = saga.id_for(&format!("account-{customer}"));
    wait_terminal(&pool, &[saga_id], WAIT).await;
    assert_eq!(
        saga_state(&pool, saga_id).await.as_deref(),
        Some("compensated")
    );
    let compensated: Vec<String> = sqlx::query_scalar(
        "SELECT payload->>'name' FROM saga_events WHERE stream_id = $1 AND event_type = 'compensation_invoked'
         ORDER BY stream_version, part",
    )
    .bind(format!("saga-{saga_id}"))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(compensated, ["hold_funds", "reserve_gift"]);
    // A step's success records the saga data only when its replies changed it, and the
    // saga read back from its stream has the changed data.
    let recorded: Vec<(String, Option<Value>)> = sqlx::query_as(
        "SELECT payload->>'name', payload->'data' FROM saga_events
         WHERE stream_id = $1 AND event_type = 'step_succeeded' ORDER BY stream_version, part",
    )
    .bind(format!("saga-{saga_id}"))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    assert_eq!(recorded[0], ("reserve_gift".to_owned(), None));
    assert_eq!(recorded[1].0, "hold_funds");
    assert_eq!(recorded[1].1.as_ref().unwrap()["held_cents"], 20_00);
    let folded = load_saga(&pool, saga_id).await.unwrap().unwrap();
    assert_eq!(folded.data["held_cents"], 20_00);
    assert_eq!(stock(&pool, "GIFT").await, (5, 0));
    assert_eq!(account(&pool, customer).await, (40_00, 0));
    orchestrator.stop().await;
    engine.stop().await;
}

/// A deadline row is an alarm that may ring early, never late: a step with a later deadline
/// than the one before leaves the row alone, the early alarm is set to the real deadline when
/// it rings, and the step times out at its own deadline, once.
#[sqlx::test(migrator = "common::MIGRATOR")]
async fn an_early_deadline_row_is_rearmed_and_the_step_times_out_at_its_own(pool: PgPool) {
    let transport = postgres(&pool);
    let saga = SagaDefinition::<Transfer>::new("test_alarm")
        .started_by::<Account>(transfer_of_deposit)
        .step("reserve_gift")
        .invoke::<Inventory>(reserve_gift)
        .compensate::<Inventory>(release_gift)
        .timeout(Duration::from_secs(5))
        .step("hold_funds")
        .invoke::<Account>(|t| hold_funds(t, t.deposit_cents))
        .timeout(Duration::from_secs(8))
        .retry(Backoff::none())
        .build();
    // Nobody answers hold_funds: the payment participant is not running.
    let engine = start_engine(
        &pool,
        &transport,
        &everything_but(&[Component::Orchestrator, PAYMENT]),
    )
    .await;
    let orchestrator = OnlyOrchestrator::start(&pool, &transport, &engine, &saga);
    engine.restock("GIFT", 5).await;
    let customer = Uuid::now_v7();
    engine.deposit(customer, 40_00).await;
    let saga_id = saga.id_for(&format!("account-{customer}"));
    let stream = format!("saga-{saga_id}");
    // Each invocation's deadline, once hold_funds waits.
    let invoked = || async {
        sqlx::query_as::<_, (String, chrono::DateTime<chrono::Utc>)>(
            "SELECT payload->>'name', (payload->>'deadline_at')::timestamptz FROM saga_events
             WHERE stream_id = $1 AND event_type = 'step_invoked' ORDER BY stream_version, part",
        )
        .bind(&stream)
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let started = std::time::Instant::now();
    let steps = loop {
        let steps = invoked().await;
        if steps.len() == 2 {
            break steps;
        }
        assert!(
            started.elapsed() < WAIT,
            "hold_funds never invoked: {steps:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (first_deadline, second_deadline) = (steps[0].1, steps[1].1);
    assert!(second_deadline > first_deadline, "{steps:?}");
    let alarm: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT due_at FROM saga_deadlines WHERE saga_id = $1")
            .bind(saga_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        (alarm - first_deadline).num_milliseconds().abs() <= 1,
        "the row was rewritten for the later deadline: {alarm} vs {steps:?}"
    );

    wait_terminal(&pool, &[saga_id], WAIT).await;
    assert_eq!(
        saga_state(&pool, saga_id).await.as_deref(),
        Some("compensated")
    );
    let timeouts: Vec<(String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT payload->>'name', recorded_at FROM saga_events
         WHERE stream_id = $1 AND event_type = 'step_timed_out'",
    )
    .bind(&stream)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(timeouts.len(), 1, "{timeouts:?}");
    assert_eq!(timeouts[0].0, "hold_funds");
    assert!(
        timeouts[0].1 >= second_deadline,
        "{timeouts:?} before {second_deadline}"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM saga_deadlines")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    assert_eq!(stock(&pool, "GIFT").await, (5, 0));
    orchestrator.stop().await;
    engine.stop().await;
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
    every_path_ends_with_the_right_state,
    two_hundred_orders_for_fifty_items,
    a_saga_defined_in_a_test_compensates_in_reverse,
);

/// The payment participant is down for 60 s while orders arrive: they are accepted, and
/// afterwards every saga finishes (confirmed, or compensated after its timeout); none is stuck.
async fn a_participant_stopped_for_a_minute(pool: PgPool, transport: Arc<dyn Transport>) {
    let engine = start_engine(&pool, &transport, &everything_but(&[PAYMENT])).await;
    engine.restock("BOOK", 100).await;
    let customer = Uuid::now_v7();
    engine.deposit(customer, 1_000_00).await;
    let stopped_at = std::time::Instant::now();
    let mut orders = Vec::new();
    for i in 0..20 {
        orders.push(engine.order(customer, &[("BOOK", 1 + i % 3, 10_00)]).await);
    }
    tokio::time::sleep(Duration::from_secs(60).saturating_sub(stopped_at.elapsed())).await;
    let payment = start_engine(&pool, &transport, &[PAYMENT]).await;
    let sagas: Vec<Uuid> = orders.iter().map(|o| o.1).collect();
    wait_terminal(&pool, &sagas, Duration::from_secs(180)).await;
    let mut confirmed_qty = 0;
    let mut confirmed_cents = 0;
    for (i, (order, saga)) in orders.iter().enumerate() {
        let qty = 1 + i as i64 % 3;
        match (
            saga_state(&pool, *saga).await.as_deref(),
            order_status(&pool, *order).await,
        ) {
            (Some("completed"), Some(OrderStatus::Confirmed)) => {
                confirmed_qty += qty;
                confirmed_cents += qty * 10_00;
            }
            (Some("compensated"), Some(OrderStatus::Rejected)) => {}
            other => panic!("order {order} ended as {other:?}"),
        }
    }
    assert_eq!(stock(&pool, "BOOK").await, (100, confirmed_qty));
    assert_eq!(
        account(&pool, customer).await,
        (1_000_00 - confirmed_cents, 0)
    );
    payment.stop().await;
    engine.stop().await;
}

on_both_transports!(a_participant_stopped_for_a_minute);

/// What the orchestrator's decisions have written so far: saga events, and commands sent.
async fn saga_writes(pool: &PgPool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM events WHERE stream_id LIKE 'saga-%'),
                (SELECT count(*) FROM message_log WHERE topic LIKE '%.commands')",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Publishes every start event and reply the orchestrator has consumed again, under the same
/// message ids, and waits until it has consumed them too. Returns how many there were.
async fn redeliver_orchestrator_inputs(pool: &PgPool) -> usize {
    let inputs = "topic LIKE '%.order.events' OR topic LIKE '%.saga.replies'";
    let rows: Vec<(String, String, String)> = sqlx::query_as(&format!(
        "SELECT topic, partition_key, envelope FROM message_log WHERE {inputs}"
    ))
    .fetch_all(pool)
    .await
    .unwrap();
    let again: Vec<OutboxMessage> = rows
        .iter()
        .map(|(topic, key, envelope)| OutboxMessage {
            // The physical topic is the test's prefix, a dot, and the logical topic.
            topic: topic.split_once('.').unwrap().1.to_owned(),
            partition_key: key.clone(),
            envelope: serde_json::from_str::<Envelope>(envelope).unwrap(),
        })
        .collect();
    let mut tx = pool.begin().await.unwrap();
    outbox::enqueue(&mut tx, &again).await.unwrap();
    tx.commit().await.unwrap();
    let published = 2 * rows.len() as i64;
    eventually(
        WAIT,
        "the orchestrator consuming the redelivered messages",
        || async {
            let (logged, consumed): (i64, Option<i64>) = sqlx::query_as(&format!(
                "SELECT (SELECT count(*) FROM message_log WHERE {inputs}),
                    (SELECT sum(next_offset)::int8 FROM consumer_offsets
                      WHERE consumer_group = 'orchestrator')"
            ))
            .fetch_one(pool)
            .await
            .unwrap();
            logged == published && consumed == Some(published)
        },
    )
    .await;
    rows.len()
}

/// Every start event and reply the orchestrator consumed is delivered again under its own
/// message id, once while a saga waits on a stopped participant and once after it completed.
/// The orchestrator records no message ids, so only its decisions can tell a repeat: no saga
/// event is written and no command is sent again.
#[sqlx::test(migrator = "common::MIGRATOR")]
async fn a_redelivered_start_or_reply_changes_no_saga(pool: PgPool) {
    let transport = postgres(&pool);
    let engine = start_engine(&pool, &transport, &everything_but(&[PAYMENT])).await;
    let mut ended = engine.service.orchestrator.ended();
    engine.restock("LAMP", 5).await;
    let customer = Uuid::now_v7();
    engine.deposit(customer, 100_00).await;
    let (order, saga) = engine.order(customer, &[("LAMP", 2, 10_00)]).await;
    eventually(WAIT, "the saga waiting for its payment", || async {
        let step: Option<String> =
            sqlx::query_scalar("SELECT current_step FROM sagas WHERE saga_id = $1")
                .bind(saga)
                .fetch_optional(&pool)
                .await
                .unwrap()
                .flatten();
        step.as_deref() == Some("authorize_payment")
    })
    .await;
    let before = saga_writes(&pool).await;
    // The order placed event and the stock reservation's reply.
    assert_eq!(redeliver_orchestrator_inputs(&pool).await, 2);
    assert_eq!(saga_writes(&pool).await, before);
    assert_eq!(saga_state(&pool, saga).await.as_deref(), Some("running"));

    let payment = start_engine(&pool, &transport, &[PAYMENT]).await;
    wait_terminal(&pool, &[saga], WAIT).await;
    assert_eq!(saga_state(&pool, saga).await.as_deref(), Some("completed"));
    // The saga's end is told once, after its commit, and not again for the repeats.
    let told = tokio::time::timeout(Duration::from_secs(5), ended.recv()).await;
    assert_eq!(told.unwrap().unwrap(), saga);
    let after = saga_writes(&pool).await;
    assert!(redeliver_orchestrator_inputs(&pool).await > 2);
    assert_eq!(saga_writes(&pool).await, after);
    assert!(ended.try_recv().is_err(), "told twice");

    assert_eq!(
        order_status(&pool, order).await,
        Some(OrderStatus::Confirmed)
    );
    assert_eq!(stock(&pool, "LAMP").await, (5, 2));
    assert_eq!(account(&pool, customer).await, (100_00 - 20_00, 0));
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM processed_messages WHERE consumer_group = 'orchestrator'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(recorded, 0);
    payment.stop().await;
    engine.stop().await;
}
