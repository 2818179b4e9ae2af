//! Debugging and replay end to end, on the embedded transport: a saga's timeline, the state of
//! any stream at any version (over HTTP and with `sagaflow replay`), upcasting of old events,
//! dead letters retried exactly once, stuck sagas re-driven or aborted by an operator, and the
//! admin token on every admin route.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use common::engine::{
    account, everything, everything_but, order_status, saga_state, start_engine_with, stock,
    wait_terminal, Component, Running, PAYMENT,
};
use common::transport::{eventually, postgres};
use reqwest::StatusCode;
use sagaflow::app::Options;
use sagaflow::cli::{replay_stream, ReplayFormat};
use sagaflow_engine::consumer::{Consumer, ConsumerConfig, Handler, HandlerError};
use sagaflow_engine::envelope::{Envelope, Metadata};
use sagaflow_engine::http::admin::{self, AdminToken};
use sagaflow_engine::outbox::{self, OutboxMessage};
use sagaflow_engine::saga::state::SagaEvent;
use sagaflow_engine::saga::{Backoff, Invoke, Orchestrator, SagaDefinition, SagaState};
use sagaflow_engine::store::decode_envelope;
use sagaflow_engine::transport::{Delivery, Transport};
use sagaflow_engine::{Aggregate, RecordedEvent};
use sagaflow_sagas::inventory::{Inventory, InventoryCommand};
use sagaflow_sagas::order::{Order, OrderStatus};
use sagaflow_sagas::payment::{Account, AccountCommand, AccountEvent};
use sagaflow_sagas::types::{AmountCents, Quantity};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "s3cret-admin-token";

/// The whole engine (`components`) with the admin token configured.
async fn start(pool: &PgPool, transport: &Arc<dyn Transport>, components: &[Component]) -> Running {
    start_engine_with(
        pool,
        transport,
        components,
        Options {
            admin_token: AdminToken::new(Some(TOKEN)),
            ..Default::default()
        },
    )
    .await
}

async fn get(base: &str, path: &str) -> (StatusCode, Value) {
    let r = reqwest::get(format!("{base}{path}")).await.unwrap();
    common::read(r).await
}

/// `POST` to an admin route with `token` (none: no `Authorization` header).
async fn admin_post(
    base: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut r = reqwest::Client::new().post(format!("{base}{path}"));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    common::read(r.send().await.unwrap()).await
}

async fn admin_get(base: &str, path: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut r = reqwest::Client::new().get(format!("{base}{path}"));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    common::read(r.send().await.unwrap()).await
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .unwrap_or_else(|| panic!("not a time: {v}"))
        .parse()
        .unwrap()
}

/// The events of a stream, read through `GET /streams/{id}/events`.
async fn events_of(base: &str, stream: &str) -> Vec<RecordedEvent> {
    let (s, page) = get(base, &format!("/streams/{stream}/events?limit=1000")).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    serde_json::from_value(page["events"].clone()).unwrap()
}

/// The state an aggregate has after `events`, as JSON.
fn fold<A: Aggregate>(events: &[RecordedEvent]) -> Value {
    let mut state = A::default();
    for e in events {
        state.apply(&decode_envelope::<A::Event>(&e.envelope).unwrap());
    }
    serde_json::to_value(state).unwrap()
}

fn fold_saga(events: &[RecordedEvent]) -> Value {
    let mut state = SagaState::default();
    for e in events {
        state.apply(
            &decode_envelope::<SagaEvent>(&e.envelope).unwrap(),
            e.recorded_at,
        );
        state.version = e.envelope.stream_version;
    }
    serde_json::to_value(state).unwrap()
}

/// Asserts that `GET /streams/{stream}/state?at_version=n` is the fold of the first `n` events
/// for every version of the stream, and that without `at_version` it is the head's.
async fn assert_time_travel(base: &str, stream: &str) {
    let events = events_of(base, stream).await;
    assert!(!events.is_empty());
    for n in 1..=events.len() {
        let first_n = &events[..n];
        let expected = match stream.split_once('-').unwrap().0 {
            "order" => fold::<Order>(first_n),
            "inventory" => fold::<Inventory>(first_n),
            "account" => fold::<Account>(first_n),
            "saga" => fold_saga(first_n),
            other => panic!("unexpected stream type {other}"),
        };
        let (s, body) = get(base, &format!("/streams/{stream}/state?at_version={n}")).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(body["version"], n as i64, "{stream}@{n}");
        assert_eq!(body["head_version"], events.len() as i64);
        assert_eq!(body["stream_id"], stream);
        assert_eq!(body["state"], expected, "{stream} at version {n}");
        assert_eq!(time(&body["recorded_at"]), events[n - 1].recorded_at);
    }
    let (s, head) = get(base, &format!("/streams/{stream}/state")).await;
    assert_eq!(s, StatusCode::OK, "{head}");
    assert_eq!(head["version"], events.len() as i64);
    let (s, beyond) = get(
        base,
        &format!("/streams/{stream}/state?at_version={}", events.len() + 1),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{beyond}");
    assert_eq!(common::error_code(&beyond), "version_not_found");
}

/// How the test reads a timeline entry: `invoke <step>`, `compensate <step>`, a reply's
/// outcome, or the event type.
fn label(e: &Value) -> String {
    let step = e["step"].as_str().unwrap_or("-");
    match e["event_type"].as_str().unwrap() {
        "step_invoked" => format!("invoke {step} #{}", e["attempt"]),
        "compensation_invoked" => format!("compensate {step}"),
        "reply_received" => match e["outcome"].as_str().unwrap() {
            "rejected" => format!("{step} rejected: {}", e["code"].as_str().unwrap()),
            outcome => format!("{step} {outcome}"),
        },
        other => other.to_owned(),
    }
}

/// The database URL of the test's own database, for the `sagaflow` binary.
fn database_url(pool: &PgPool) -> String {
    let mut url = url::Url::parse(&std::env::var("DATABASE_URL").unwrap()).unwrap();
    url.set_path(pool.connect_options().get_database().unwrap());
    url.to_string()
}

fn sagaflow_replay(pool: &PgPool, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sagaflow"))
        .arg("replay")
        .args(args)
        .env("DATABASE_URL", database_url(pool))
        .env("RUST_LOG", "error")
        .output()
        .unwrap()
}

/// Acceptance: a payment-declined order's timeline tells what happened, in order, with times;
/// the state at every version of every stream it touched is the fold of its first n events;
/// `sagaflow replay` prints the same states.
#[sqlx::test(migrator = "common::MIGRATOR")]
async fn a_declined_order_explains_itself(pool: PgPool) {
    let transport = postgres(&pool);
    let engine = start(&pool, &transport, &everything()).await;
    engine.restock("APPLE", 10).await;
    let poor = Uuid::now_v7();
    engine.deposit(poor, 1_00).await;
    let (order_id, saga_id) = engine.order(poor, &[("APPLE", 1, 5_00)]).await;
    wait_terminal(&pool, &[saga_id], WAIT).await;
    assert_eq!(
        order_status(&pool, order_id).await,
        Some(OrderStatus::Rejected)
    );

    // From the order id to its saga.
    let (s, link) = get(&engine.base, &format!("/orders/{order_id}/saga")).await;
    assert_eq!(s, StatusCode::OK, "{link}");
    assert_eq!(link["saga_id"], saga_id.to_string());
    assert_eq!(link["state"], "compensated");
    let timeline_path = link["links"]["timeline"].as_str().unwrap().to_owned();
    assert_eq!(timeline_path, format!("/sagas/{saga_id}/timeline"));
    let (s, missing) = get(&engine.base, &format!("/orders/{}/saga", Uuid::now_v7())).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{missing}");
    assert_eq!(common::error_code(&missing), "order_not_found");

    let (s, timeline) = get(&engine.base, &timeline_path).await;
    assert_eq!(s, StatusCode::OK, "{timeline}");
    assert_eq!(timeline["state"], "compensated");
    assert_eq!(timeline["truncated"], false);
    let entries = timeline["entries"].as_array().unwrap();
    let labels: Vec<String> = entries.iter().map(label).collect();
    assert_eq!(
        labels,
        [
            "order_placed",
            "saga_started",
            "invoke reserve_stock #1",
            "stock_reserved",
            "step_succeeded",
            "invoke authorize_payment #1",
            "authorize_payment rejected: insufficient_funds",
            "step_failed",
            "compensation_started",
            "compensate reserve_stock",
            "stock_released",
            "reserve_stock succeeded",
            "compensation_done",
            "final_command_invoked",
            "order_rejected",
            "saga_compensated",
        ]
    );
    // The story, read off the same entries: the commands the saga sent, the decline,
    // and the participants' events.
    let story: Vec<String> = entries
        .iter()
        .filter_map(|e| {
            let commands: Vec<&str> = e["commands"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["command"].as_str().unwrap())
                .collect();
            match (
                e["event_type"].as_str().unwrap(),
                e["source"].as_str().unwrap(),
            ) {
                ("step_invoked" | "compensation_invoked" | "final_command_invoked", _) => {
                    Some(commands.join(","))
                }
                ("reply_received", _) if e["outcome"] == "rejected" => {
                    Some(format!("declined: {}", e["code"].as_str().unwrap()))
                }
                (event_type, "participant") if event_type != "order_placed" => {
                    Some(event_type.to_owned())
                }
                _ => None,
            }
        })
        .collect();
    assert_eq!(
        story,
        [
            "reserve",
            "stock_reserved",
            "authorize",
            "declined: insufficient_funds",
            "release",
            "stock_released",
            "reject",
            "order_rejected",
        ]
    );
    // Who was asked: the stock of APPLE, the poor customer's account, the order.
    let targets: Vec<&str> = entries
        .iter()
        .flat_map(|e| e["commands"].as_array().unwrap())
        .filter_map(|c| c["target"].as_str())
        .collect();
    let account_stream = format!("account-{poor}");
    let order_stream = format!("order-{order_id}");
    assert_eq!(
        targets,
        [
            "inventory-APPLE",
            "inventory-APPLE", // the reply names the command it answers
            account_stream.as_str(),
            account_stream.as_str(),
            "inventory-APPLE",
            "inventory-APPLE",
            order_stream.as_str(),
        ]
    );
    // Every entry has a time; they never go backwards; each names its step where it has one.
    let times: Vec<DateTime<Utc>> = entries.iter().map(|e| time(&e["at"])).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    for e in entries {
        assert!(!e["summary"].as_str().unwrap().is_empty(), "{e}");
        if e["event_type"] != "order_placed" && e["source"] == "participant" {
            assert!(
                e["step"].is_string(),
                "participant event without its step: {e}"
            );
        }
    }
    let declined = entries.iter().find(|e| e["outcome"] == "rejected").unwrap();
    assert_eq!(declined["step"], "authorize_payment");
    assert!(declined["message"].as_str().unwrap().contains("available"));
    let (s, unknown) = get(&engine.base, &format!("/sagas/{}/timeline", Uuid::now_v7())).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{unknown}");
    assert_eq!(common::error_code(&unknown), "saga_not_found");

    // Time travel on every stream the timeline names.
    let streams: Vec<String> = {
        let mut seen = Vec::new();
        for e in entries {
            let s = e["stream_id"].as_str().unwrap().to_owned();
            if !seen.contains(&s) {
                seen.push(s);
            }
        }
        seen
    };
    let saga_stream = format!("saga-{saga_id}");
    assert_eq!(
        streams,
        [
            order_stream.as_str(),
            saga_stream.as_str(),
            "inventory-APPLE"
        ]
    );
    // The declined authorization recorded nothing on the account: it has its deposit only.
    for stream in streams.iter().chain([&account_stream]) {
        assert_time_travel(&engine.base, stream).await;
    }
    let (s, at1) = get(
        &engine.base,
        &format!("/streams/{order_stream}/state?at_version=1"),
    )
    .await;
    assert_eq!(
        (s, at1["state"]["status"].clone()),
        (StatusCode::OK, json!("pending"))
    );
    assert_eq!(at1["aggregate_type"], "order");
    for (path, status, code) in [
        (
            "/streams/nope-1/state",
            StatusCode::NOT_FOUND,
            "unknown_aggregate_type",
        ),
        (
            &*format!("/streams/order-{}/state", Uuid::now_v7()),
            StatusCode::NOT_FOUND,
            "stream_not_found",
        ),
        (
            &*format!("/streams/{order_stream}/state?at_version=0"),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            &*format!("/streams/{order_stream}/state?at_version=x"),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
    ] {
        let (s, body) = get(&engine.base, path).await;
        assert_eq!(
            (s, common::error_code(&body)),
            (status, code),
            "{path}: {body}"
        );
    }

    // `sagaflow replay`: one line per event with the state after it, as time travel has it.
    for stream in [&order_stream, &saga_stream] {
        let out = sagaflow_replay(&pool, &[stream, "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let events = events_of(&engine.base, stream).await;
        assert_eq!(lines.len(), events.len());
        for (i, line) in lines.iter().enumerate() {
            let n = i as i64 + 1;
            assert_eq!(line["stream_version"], n);
            assert_eq!(line["event_type"], events[i].envelope.event_type);
            assert_eq!(
                line["message_id"],
                events[i].envelope.message_id.to_string()
            );
            assert_eq!(
                line["metadata"]["correlation_id"],
                events[i].envelope.metadata.correlation_id.to_string()
            );
            let (_, at) = get(
                &engine.base,
                &format!("/streams/{stream}/state?at_version={n}"),
            )
            .await;
            assert_eq!(line["state"], at["state"], "{stream}@{n}");
        }
    }
    let out = sagaflow_replay(&pool, &[&order_stream, "--at-version", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("events 1..=1 of 2"), "{text}");
    assert!(
        text.contains("── v1") && text.contains("order_placed"),
        "{text}"
    );
    assert!(!text.contains("order_rejected"), "{text}");
    assert!(text.contains("\"status\": \"pending\""), "{text}");
    let out = sagaflow_replay(&pool, &[&order_stream, "--at-version", "3"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no version 3"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    engine.stop().await;
}

/// Upcasting: a `funds_deposited` written at schema v1 (`{"amount": n}`) straight into the
/// store is read in its v2 shape by time travel, the command bus and replay.
#[sqlx::test(migrator = "common::MIGRATOR")]
async fn a_v1_event_is_read_in_its_current_shape_everywhere(pool: PgPool) {
    let transport = postgres(&pool);
    let engine = start(&pool, &transport, &[Component::Http]).await;
    let customer = Uuid::now_v7();
    let stream = format!("account-{customer}");
    sqlx::query(
        "INSERT INTO events (stream_id, stream_version, message_id, event_type, schema_version, payload, metadata)
         VALUES ($1, 1, $2, 'funds_deposited', 1, '{\"amount\": 1000}', $3)",
    )
    .bind(&stream)
    .bind(Uuid::now_v7())
    .bind(json!({"correlation_id": Uuid::now_v7()}))
    .execute(&pool)
    .await
    .unwrap();

    // Time travel.
    let (s, at1) = get(&engine.base, &format!("/streams/{stream}/state")).await;
    assert_eq!(s, StatusCode::OK, "{at1}");
    assert_eq!(at1["state"]["balance_cents"], 1000);

    // The command bus: a deposit, then an authorization and a capture that need the old money.
    engine.deposit(customer, 250).await;
    let order = Uuid::now_v7();
    for command in [
        json!({"command": "authorize", "payload": {"order_id": order, "amount_cents": 1200}}),
        json!({"command": "capture", "payload": {"order_id": order}}),
    ] {
        let (s, body) = engine
            .post(&format!("/commands/account/{customer}"), command)
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    }
    assert_eq!(account(&pool, customer).await, (50, 0));
    let (_, head) = get(&engine.base, &format!("/streams/{stream}/state")).await;
    assert_eq!(
        (
            head["version"].clone(),
            head["state"]["balance_cents"].clone()
        ),
        (json!(4), json!(50))
    );
    // New deposits are written in the current shape, at v2; the v1 row is untouched.
    let stored: Vec<(i32, Value)> = sqlx::query_as(
        "SELECT schema_version, payload FROM events
         WHERE stream_id = $1 AND event_type = 'funds_deposited' ORDER BY stream_version",
    )
    .bind(&stream)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        stored,
        [
            (1, json!({"amount": 1000})),
            (2, json!({"amount_cents": 250}))
        ]
    );

    // Replay shows the stored version and the state it makes.
    let mut out = Vec::new();
    let at = replay_stream(
        &common::shop(),
        &pool,
        &stream,
        None,
        ReplayFormat::JsonLines,
        &mut out,
    )
    .await
    .unwrap();
    assert_eq!(at.state["balance_cents"], 50);
    let lines: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(
        (
            lines[0]["schema_version"].clone(),
            lines[0]["current_schema_version"].clone(),
            lines[0]["state"]["balance_cents"].clone()
        ),
        (json!(1), json!(2), json!(1000))
    );
    let mut text = Vec::new();
    replay_stream(
        &common::shop(),
        &pool,
        &stream,
        Some(1),
        ReplayFormat::Text,
        &mut text,
    )
    .await
    .unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("schema v1, read as v2"), "{text}");
    assert!(text.contains("\"balance_cents\": 1000"), "{text}");
    engine.stop().await;
}

/// A handler that fails while its switch says so, and records what it applied.
struct Flaky {
    group: &'static str,
}

#[async_trait]
impl Handler for Flaky {
    async fn handle(&self, tx: &mut PgConnection, m: &Delivery) -> Result<(), HandlerError> {
        let broken: bool =
            sqlx::query_scalar("SELECT broken FROM debug_switch WHERE consumer = $1")
                .bind(self.group)
                .fetch_one(&mut *tx)
                .await?;
        if broken {
            return Err("the downstream ledger is unreachable".into());
        }
        sqlx::query("INSERT INTO debug_applied (consumer, message_id) VALUES ($1, $2)")
            .bind(self.group)
            .bind(m.message_id())
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

async fn applied(pool: &PgPool, group: &str, message_id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM debug_applied WHERE consumer = $1 AND message_id = $2")
        .bind(group)
        .bind(message_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Acceptance: a dead letter retried after its cause is fixed is applied exactly once, by the
/// consumer that parked it only; a second retry is refused; a discarded one is never applied.
#[sqlx::test(migrator = "common::MIGRATOR")]
async fn a_dead_letter_retried_after_the_fix_is_applied_exactly_once(pool: PgPool) {
    sqlx::raw_sql(
        "CREATE TABLE debug_switch (consumer text PRIMARY KEY, broken bool NOT NULL);
         CREATE TABLE debug_applied (consumer text NOT NULL, message_id uuid NOT NULL);
         INSERT INTO debug_switch VALUES ('debug-flaky', true), ('debug-steady', false);",
    )
    .execute(&pool)
    .await
    .unwrap();
    let transport = postgres(&pool);
    transport.ensure_topics(&["debug.events"]).await.unwrap();
    let engine = start(&pool, &transport, &[Component::Relay]).await;
    let stop = CancellationToken::new();
    let mut stats = Vec::new();
    for group in ["debug-flaky", "debug-steady"] {
        let config = ConsumerConfig {
            max_attempts: 3,
            retry_backoff: Duration::from_millis(20),
            poll_wait: Duration::from_millis(50),
            rebalance_interval: Duration::from_millis(200),
            ..ConsumerConfig::new(group, &["debug.events"])
        };
        let consumer = Consumer::new(
            pool.clone(),
            transport.clone(),
            Arc::new(Flaky { group }),
            config,
        );
        stats.push(consumer.stats());
        let stop = stop.clone();
        tokio::spawn(async move { consumer.run(stop).await.unwrap() });
    }
    let (retried, discarded) = (Uuid::now_v7(), Uuid::now_v7());
    let mut tx = pool.begin().await.unwrap();
    let messages: Vec<OutboxMessage> = [retried, discarded]
        .into_iter()
        .map(|message_id| OutboxMessage {
            topic: "debug.events".into(),
            partition_key: "ledger-1".into(),
            envelope: Envelope {
                message_id,
                stream_id: "ledger-1".into(),
                stream_version: 0,
                event_type: "entry_posted".into(),
                schema_version: 1,
                payload: json!({"cents": 100}),
                metadata: Metadata::new_root(),
            },
        })
        .collect();
    outbox::enqueue(&mut tx, &messages).await.unwrap();
    tx.commit().await.unwrap();
    engine.service.bus.outbox_bell().ring();

    eventually(WAIT, "both messages parked by debug-flaky", || async {
        let parked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM dead_letters WHERE consumer_group = 'debug-flaky' AND status = 'parked'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        parked == 2
    })
    .await;
    assert_eq!(applied(&pool, "debug-steady", retried).await, 1);
    assert_eq!(applied(&pool, "debug-steady", discarded).await, 1);

    // Without the token there is nothing to see.
    let (s, body) = admin_get(&engine.base, "/admin/dead-letters", None).await;
    assert_eq!(
        (s, common::error_code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (s, body) = admin_get(&engine.base, "/admin/dead-letters", Some("wrong")).await;
    assert_eq!(
        (s, common::error_code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (s, page) = admin_get(
        &engine.base,
        "/admin/dead-letters?status=parked",
        Some(TOKEN),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let letters = page["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 2, "{page}");
    let id_of = |message_id: Uuid| {
        letters
            .iter()
            .find(|l| l["message_id"] == message_id.to_string())
            .unwrap()["id"]
            .as_i64()
            .unwrap()
    };
    for l in letters {
        assert_eq!(l["consumer"], "debug-flaky");
        assert_eq!(l["attempts"], 3);
        assert_eq!(l["status"], "parked");
        assert_eq!(l["event_type"], "entry_posted");
        assert!(l["error"].as_str().unwrap().contains("unreachable"), "{l}");
        assert!(
            time(&l["first_failed_at"]) <= time(&l["last_failed_at"]),
            "{l}"
        );
    }
    let (s, none) = admin_get(
        &engine.base,
        "/admin/dead-letters?status=retried",
        Some(TOKEN),
    )
    .await;
    assert_eq!(
        (s, none["dead_letters"].as_array().unwrap().len()),
        (StatusCode::OK, 0)
    );

    // The cause is fixed; the first message is retried, the second discarded.
    sqlx::query("UPDATE debug_switch SET broken = false")
        .execute(&pool)
        .await
        .unwrap();
    let retry_path = format!("/admin/dead-letters/{}/retry", id_of(retried));
    let (s, body) = admin_post(&engine.base, &retry_path, None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    let (s, body) = admin_post(&engine.base, &retry_path, Some(TOKEN), None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "retried");
    assert!(body["resolved_at"].is_string(), "{body}");
    let (s, again) = admin_post(&engine.base, &retry_path, Some(TOKEN), None).await;
    assert_eq!(
        (s, common::error_code(&again)),
        (StatusCode::CONFLICT, "dead_letter_not_parked")
    );
    let discard_path = format!("/admin/dead-letters/{}/discard", id_of(discarded));
    let (s, body) = admin_post(&engine.base, &discard_path, Some(TOKEN), None).await;
    assert_eq!(
        (s, body["status"].clone()),
        (StatusCode::OK, json!("discarded"))
    );
    for path in [
        discard_path.clone(),
        format!("/admin/dead-letters/{}/retry", id_of(discarded)),
    ] {
        let (s, body) = admin_post(&engine.base, &path, Some(TOKEN), None).await;
        assert_eq!(
            (s, common::error_code(&body)),
            (StatusCode::CONFLICT, "dead_letter_not_parked")
        );
    }
    let (s, body) = admin_post(
        &engine.base,
        "/admin/dead-letters/987654/retry",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(
        (s, common::error_code(&body)),
        (StatusCode::NOT_FOUND, "dead_letter_not_found")
    );

    eventually(
        WAIT,
        "the retried message applied by debug-flaky",
        || async { applied(&pool, "debug-flaky", retried).await == 1 },
    )
    .await;
    // The steady group saw the copy too, and skipped it.
    eventually(WAIT, "debug-steady skipping the copy", || async {
        stats[1].duplicates.load(Ordering::Relaxed) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(applied(&pool, "debug-flaky", retried).await, 1);
    assert_eq!(applied(&pool, "debug-flaky", discarded).await, 0);
    assert_eq!(applied(&pool, "debug-steady", retried).await, 1);
    assert_eq!(applied(&pool, "debug-steady", discarded).await, 1);
    let still_parked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE status = 'parked'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(still_parked, 0);
    stop.cancel();
    engine.stop().await;
}

/// The data of the sagas this file defines.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Gift {
    customer: Uuid,
    hold_id: Uuid,
}

fn gift(amount: i64) -> impl Fn(&AccountEvent, &Envelope) -> Option<Gift> + Send + Sync {
    move |event, envelope| match event {
        AccountEvent::FundsDeposited { amount_cents } if *amount_cents == amount => Some(Gift {
            customer: envelope.stream_id.strip_prefix("account-")?.parse().ok()?,
            hold_id: Uuid::now_v7(),
        }),
        _ => None,
    }
}

fn reserve(sku: &'static str) -> impl Fn(&Gift) -> Invoke<Inventory> + Send + Sync {
    move |g| {
        Invoke::new(
            sku,
            InventoryCommand::Reserve {
                order_id: g.hold_id,
                quantity: Quantity::new(1).unwrap(),
            },
        )
    }
}

fn release(sku: &'static str) -> impl Fn(&Gift) -> Invoke<Inventory> + Send + Sync {
    move |g| {
        Invoke::new(
            sku,
            InventoryCommand::Release {
                order_id: g.hold_id,
            },
        )
    }
}

fn hold(cents: i64) -> impl Fn(&Gift) -> Invoke<Account> + Send + Sync {
    move |g| {
        Invoke::new(
            g.customer,
            AccountCommand::Authorize {
                order_id: g.hold_id,
                amount_cents: AmountCents::new(cents).unwrap(),
            },
        )
    }
}

/// Makes appends of `event_type` to `stream` fail in the database, as a broken disk would.
async fn break_appends(pool: &PgPool, stream: &str, event_type: &str) {
    sqlx::query("INSERT INTO debug_broken VALUES ($1, $2)")
        .bind(stream)
        .bind(event_type)
        .execute(pool)
        .await
        .unwrap();
}

async fn dead_letter_for(pool: &PgPool, stream: &str, command: &str) -> Option<i64> {
    sqlx::query_scalar(
        "SELECT id FROM dead_letters WHERE status = 'parked' AND consumer_group = 'participant:inventory'
           AND envelope->>'stream_id' = $1 AND envelope->'payload'->'command'->>'command' = $2",
    )
    .bind(stream)
    .bind(command)
    .fetch_optional(pool)
    .await
    .unwrap()
}

/// Acceptance: a saga whose step failed is re-driven to completion by retry-step.
///
/// Saga `gift_reserved`: its reservation is parked by the inventory participant (appends
/// fail), the step times out and waits an hour for its next attempt; after the fix, retry-step
/// sends it at once and the saga completes. Saga `gift_released`: its compensation is parked,
/// the saga ends `failed`; after the fix, retry-step re-sends the compensation and the saga
/// ends compensated. Both are found through `GET /sagas?state=&older_than=`.
#[sqlx::test(migrator = "common::MIGRATOR")]
async fn stuck_sagas_are_found_and_re_driven_by_retry_step(pool: PgPool) {
    sqlx::raw_sql(
        "CREATE TABLE debug_broken (stream_id text NOT NULL, event_type text NOT NULL);
         CREATE FUNCTION debug_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF EXISTS (SELECT 1 FROM debug_broken WHERE stream_id = NEW.stream_id AND event_type = NEW.event_type) THEN
                 RAISE EXCEPTION 'disk full while appending % to %', NEW.event_type, NEW.stream_id;
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER debug_refuse BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION debug_refuse();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let reserved = SagaDefinition::<Gift>::new("gift_reserved")
        .started_by::<Account>(gift(10_000))
        .step("reserve_gift")
        .invoke::<Inventory>(reserve("GIFT-A"))
        .compensate::<Inventory>(release("GIFT-A"))
        .timeout(Duration::from_secs(2))
        .retry(Backoff::exponential(Duration::from_secs(3600), 3))
        .step("hold_funds")
        .invoke::<Account>(hold(10_00))
        .build();
    let released = SagaDefinition::<Gift>::new("gift_released")
        .started_by::<Account>(gift(20_000))
        .step("reserve_gift")
        .invoke::<Inventory>(reserve("GIFT-B"))
        .compensate::<Inventory>(release("GIFT-B"))
        .compensation_retry(Duration::from_secs(1), Backoff::none())
        .step("hold_too_much")
        .invoke::<Account>(hold(100_000_000))
        .build();
    // The engine without its orchestrator; ours knows these two sagas, and serves their
    // admin routes behind the token.
    let transport = postgres(&pool);
    let engine = start(
        &pool,
        &transport,
        &everything_but(&[Component::Orchestrator]),
    )
    .await;
    // Publishing as the engine's writers do (straight to the log on the embedded transport).
    let orchestrator = Arc::new(
        Orchestrator::new(pool.clone(), vec![reserved.clone(), released.clone()])
            .with_publishing(engine.service.bus.store().publishing().clone()),
    );
    let bell = engine.service.bus.outbox_bell().clone();
    let stop = CancellationToken::new();
    let consumer = orchestrator.consumer(transport.clone(), bell.clone());
    tokio::spawn({
        let stop = stop.clone();
        async move { consumer.run(stop).await.unwrap() }
    });
    tokio::spawn(
        orchestrator
            .clone()
            .run_deadlines(bell.clone(), stop.clone()),
    );
    let sagas_api = common::spawn_server(
        sagaflow_engine::http::sagas::router(pool.clone())
            .merge(admin::protect(
                sagaflow_engine::http::sagas::admin_router(orchestrator.clone(), bell),
                AdminToken::new(Some(TOKEN)),
            ))
            .into(),
    )
    .await;
    let api = format!("http://{sagas_api}");

    engine.restock("GIFT-A", 3).await;
    engine.restock("GIFT-B", 3).await;
    break_appends(&pool, "inventory-GIFT-A", "stock_reserved").await;
    break_appends(&pool, "inventory-GIFT-B", "stock_released").await;
    let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
    engine.deposit(alice, 10_000).await;
    engine.deposit(bob, 20_000).await;
    let saga_a = reserved.id_for(&format!("account-{alice}"));
    let saga_b = released.id_for(&format!("account-{bob}"));

    // Why is it stuck? The step timed out; its command sits in the dead letters.
    eventually(
        WAIT,
        "gift_reserved timed out with its command parked",
        || async {
            let (_, view) = get(&api, &format!("/sagas/{saga_a}")).await;
            view["steps"][0]["timeouts"] == 1
                && dead_letter_for(&pool, "inventory-GIFT-A", "reserve")
                    .await
                    .is_some()
        },
    )
    .await;
    wait_terminal(&pool, &[saga_b], WAIT).await;
    assert_eq!(saga_state(&pool, saga_b).await.as_deref(), Some("failed"));
    eventually(WAIT, "gift_released's compensation parked", || async {
        dead_letter_for(&pool, "inventory-GIFT-B", "release")
            .await
            .is_some()
    })
    .await;

    // Both have not moved for a second: the stuck list shows them, the running one alone
    // when asked for running sagas.
    eventually(WAIT, "both sagas idle for a second", || async {
        let (_, page) = get(&api, "/sagas?state=running,failed&older_than=1").await;
        page["sagas"].as_array().unwrap().len() == 2
    })
    .await;
    let (s, running) = get(&api, "/sagas?state=running&older_than=1").await;
    assert_eq!(s, StatusCode::OK, "{running}");
    let ids: Vec<&str> = running["sagas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["saga_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [saga_a.to_string()]);
    assert_eq!(running["sagas"][0]["current_step"], "reserve_gift");
    assert!(running["sagas"][0]["idle_seconds"].as_i64().unwrap() >= 1);
    let (_, stuck) = get(&api, "/sagas?state=running,failed&older_than=1&limit=1").await;
    assert_eq!(stuck["sagas"].as_array().unwrap().len(), 1);
    let next = stuck["next_after"].as_str().unwrap().to_owned();
    let (_, rest) = get(
        &api,
        &format!("/sagas?state=running,failed&older_than=1&limit=1&after={next}"),
    )
    .await;
    let mut both: Vec<String> = [&stuck, &rest]
        .iter()
        .map(|p| p["sagas"][0]["saga_id"].as_str().unwrap().to_owned())
        .collect();
    both.sort();
    let mut expected = vec![saga_a.to_string(), saga_b.to_string()];
    expected.sort();
    assert_eq!(both, expected);
    let an_hour_ago = (Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let (_, old) = get(
        &api,
        &format!("/sagas?older_than={}", urlencode(&an_hour_ago)),
    )
    .await;
    assert_eq!(old["sagas"].as_array().unwrap().len(), 0, "{old}");
    let (s, bad) = get(&api, "/sagas?state=stuck").await;
    assert_eq!(
        (s, common::error_code(&bad)),
        (StatusCode::BAD_REQUEST, "invalid_query")
    );
    let (s, bad) = get(&api, "/sagas?older_than=yesterday").await;
    assert_eq!(
        (s, common::error_code(&bad)),
        (StatusCode::BAD_REQUEST, "invalid_query")
    );

    // The token is required; an unknown saga is a 404.
    let retry_a = format!("/admin/sagas/{saga_a}/retry-step");
    let (s, body) = admin_post(&api, &retry_a, None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    let (s, body) = admin_post(
        &api,
        &format!("/admin/sagas/{}/retry-step", Uuid::now_v7()),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(
        (s, common::error_code(&body)),
        (StatusCode::NOT_FOUND, "saga_not_found")
    );

    // The fix, then the operator re-drives both sagas.
    sqlx::query("DELETE FROM debug_broken")
        .execute(&pool)
        .await
        .unwrap();
    let (s, body) = admin_post(&api, &retry_a, Some(TOKEN), None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["decided"], json!(["retry_requested", "step_invoked"]));
    let (s, body) = admin_post(
        &api,
        &format!("/admin/sagas/{saga_b}/retry-step"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        body["decided"],
        json!(["retry_requested", "compensation_invoked"])
    );
    assert_eq!(body["saga"]["state"], "compensating");
    wait_terminal(&pool, &[saga_a], WAIT).await;
    eventually(WAIT, "gift_released compensated", || async {
        saga_state(&pool, saga_b).await.as_deref() == Some("compensated")
    })
    .await;
    assert_eq!(
        saga_state(&pool, saga_a).await.as_deref(),
        Some("completed")
    );
    assert_eq!(stock(&pool, "GIFT-A").await, (3, 1));
    assert_eq!(account(&pool, alice).await, (10_000, 10_00));
    assert_eq!(stock(&pool, "GIFT-B").await, (3, 0));
    assert_eq!(account(&pool, bob).await, (20_000, 0));
    let (s, body) = admin_post(&api, &retry_a, Some(TOKEN), None).await;
    assert_eq!(
        (s, common::error_code(&body)),
        (StatusCode::CONFLICT, "saga_not_applicable")
    );
    assert_eq!(body["saga"]["state"], "completed");

    // The timeline says what happened to gift_reserved, operator included.
    let (_, timeline) = get(&api, &format!("/sagas/{saga_a}/timeline")).await;
    let labels: Vec<String> = timeline["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(label)
        .collect();
    assert_eq!(
        labels,
        [
            "funds_deposited",
            "saga_started",
            "invoke reserve_gift #1",
            "step_timed_out",
            "retry_requested",
            "invoke reserve_gift #2",
            "stock_reserved",
            "step_succeeded",
            "invoke hold_funds #1",
            "payment_authorized",
            "step_succeeded",
            "saga_completed",
        ]
    );
    let (_, timeline) = get(&api, &format!("/sagas/{saga_b}/timeline")).await;
    let labels: Vec<String> = timeline["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(label)
        .collect();
    assert!(
        labels.ends_with(&[
            "compensate reserve_gift".to_owned(),
            "compensation_timed_out".to_owned(),
            "saga_failed".to_owned(),
            "retry_requested".to_owned(),
            "compensate reserve_gift".to_owned(),
            "stock_released".to_owned(),
            "reserve_gift succeeded".to_owned(),
            "compensation_done".to_owned(),
            "saga_compensated".to_owned(),
        ]),
        "{labels:?}"
    );
    stop.cancel();
    engine.stop().await;
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

/// An operator aborts a running order saga: the completed steps are compensated and the
/// order is rejected (a customer's cancel, by contrast, leaves the order cancelled).
#[sqlx::test(migrator = "common::MIGRATOR")]
async fn an_operator_abort_compensates_and_rejects_the_order(pool: PgPool) {
    let transport = postgres(&pool);
    // No payment participant, and every command through its topic: the saga waits at
    // authorize_payment.
    let engine = start_engine_with(
        &pool,
        &transport,
        &everything_but(&[PAYMENT]),
        Options {
            admin_token: AdminToken::new(Some(TOKEN)),
            local_steps: false,
            ..Default::default()
        },
    )
    .await;
    engine.restock("PLUM", 5).await;
    let customer = Uuid::now_v7();
    engine.deposit(customer, 10_00).await;
    let (order_id, saga_id) = engine.order(customer, &[("PLUM", 2, 1_00)]).await;
    eventually(WAIT, "the saga waiting for the payment", || async {
        stock(&pool, "PLUM").await == (5, 2)
            && get(&engine.base, &format!("/sagas/{saga_id}")).await.1["current_step"]
                == "authorize_payment"
    })
    .await;
    let abort = format!("/admin/sagas/{saga_id}/abort");
    let (s, body) = admin_post(&engine.base, &abort, None, Some(json!({}))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    let (s, body) = admin_post(
        &engine.base,
        &abort,
        Some(TOKEN),
        Some(json!({"reason": "payment provider down"})),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        body["decided"],
        json!(["compensation_started", "compensation_invoked"])
    );
    assert_eq!(body["saga"]["failure"]["code"], "aborted_by_operator");
    let (s, body) = admin_post(&engine.base, &abort, Some(TOKEN), None).await;
    assert_eq!(
        (s, common::error_code(&body)),
        (StatusCode::CONFLICT, "saga_not_applicable")
    );
    assert_eq!(body["saga"]["state"], "compensating");
    // The void waits for the payment participant; once it is back, the saga ends.
    let payment = start(&pool, &transport, &[PAYMENT]).await;
    wait_terminal(&pool, &[saga_id], WAIT).await;
    assert_eq!(
        saga_state(&pool, saga_id).await.as_deref(),
        Some("compensated")
    );
    assert_eq!(
        order_status(&pool, order_id).await,
        Some(OrderStatus::Rejected)
    );
    assert_eq!(stock(&pool, "PLUM").await, (5, 0));
    assert_eq!(account(&pool, customer).await, (10_00, 0));
    let (s, body) = admin_post(
        &engine.base,
        &format!("/admin/sagas/{}/abort", Uuid::now_v7()),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(
        (s, common::error_code(&body)),
        (StatusCode::NOT_FOUND, "saga_not_found")
    );
    payment.stop().await;
    engine.stop().await;
}

/// Acceptance: every admin route answers 403 without a configured token, 401 without the
/// right one, and never runs its action.
#[sqlx::test(migrator = "common::MIGRATOR")]
async fn admin_routes_need_the_token(pool: PgPool) {
    let routes: [(&'static str, String); 7] = [
        ("GET", "/admin/dead-letters".to_owned()),
        ("GET", "/admin/dead-letters/1".to_owned()),
        ("POST", "/admin/dead-letters/1/retry".to_owned()),
        ("POST", "/admin/dead-letters/1/discard".to_owned()),
        (
            "POST",
            format!("/admin/sagas/{}/retry-step", Uuid::now_v7()),
        ),
        ("POST", format!("/admin/sagas/{}/abort", Uuid::now_v7())),
        ("GET", "/admin/projections".to_owned()),
    ];
    let call = |base: String, method: &'static str, path: String, token: Option<&'static str>| async move {
        if method == "GET" {
            admin_get(&base, &path, token).await
        } else {
            admin_post(&base, &path, token, None).await
        }
    };
    let open = common::start(pool.clone()).await;
    for (method, path) in &routes {
        for token in [None, Some(TOKEN)] {
            let (s, body) = call(open.base.clone(), method, path.clone(), token).await;
            assert_eq!(
                (s, common::error_code(&body)),
                (StatusCode::FORBIDDEN, "admin_disabled"),
                "{method} {path}"
            );
        }
    }
    let guarded = common::start_with(
        pool.clone(),
        Options {
            admin_token: AdminToken::new(Some(TOKEN)),
            ..Default::default()
        },
    )
    .await;
    for (method, path) in &routes {
        for token in [None, Some("wrong"), Some("s3cret-admin-token-2")] {
            let (s, body) = call(guarded.base.clone(), method, path.clone(), token).await;
            assert_eq!(
                (s, common::error_code(&body)),
                (StatusCode::UNAUTHORIZED, "unauthorized"),
                "{method} {path}"
            );
        }
        let (s, body) = call(guarded.base.clone(), method, path.clone(), Some(TOKEN)).await;
        assert!(
            s == StatusCode::OK || s == StatusCode::NOT_FOUND,
            "{method} {path} with the token: {s} {body}"
        );
    }
}
