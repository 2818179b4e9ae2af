//! Whole engine processes (the `sagaflow` binary) and broker outages, on both transports.

// Amounts are written as dollars_cents (`17_00` is $17.00).
#![allow(clippy::inconsistent_digit_grouping)]

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::transport::{eventually, kafka_brokers, kafka_on, postgres};
use reqwest::StatusCode;
use sagaflow::app::{Component, Components, Options};
use sagaflow_engine::consumer::{Consumer, ConsumerConfig, Handler, HandlerError};
use sagaflow_engine::relay::RelayConfig;
use sagaflow_engine::transport::{Delivery, Transport};
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

/// Records each delivered message id (duplicates included) in `delivered`.
struct Recorder;

#[async_trait]
impl Handler for Recorder {
    async fn handle(&self, tx: &mut PgConnection, m: &Delivery) -> Result<(), HandlerError> {
        sqlx::query("INSERT INTO delivered (message_id) VALUES ($1)")
            .bind(m.message_id())
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Consumes every event topic into `delivered` until cancelled.
fn start_verifier(
    pool: &PgPool,
    transport: Arc<dyn Transport>,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let topics = common::shop().event_topics();
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    let mut config = ConsumerConfig::new("verifier", &topics);
    config.rebalance_interval = Duration::from_millis(500);
    config.poll_wait = Duration::from_millis(100);
    let consumer = Consumer::new(pool.clone(), transport, Arc::new(Recorder), config);
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { consumer.run(stop).await.unwrap() }
    });
    (stop, task)
}

/// Waits until every stored event was delivered once, then checks none was delivered twice.
async fn assert_every_event_delivered_once(pool: &PgPool) {
    eventually(Duration::from_secs(120), "every stored event delivered", || async {
        scalar(pool, "SELECT count(*) FROM events e WHERE NOT EXISTS (SELECT 1 FROM delivered d WHERE d.message_id = e.message_id)").await == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        scalar(pool, "SELECT count(*) FROM delivered").await,
        scalar(pool, "SELECT count(*) FROM events").await,
        "every event delivered exactly once"
    );
    assert_eq!(scalar(pool, "SELECT count(*) FROM outbox").await, 0);
}

fn database_url(pool: &PgPool) -> String {
    let o = pool.connect_options();
    format!(
        "postgres://{}@{}:{}/{}",
        o.get_username(),
        o.get_host(),
        o.get_port(),
        o.get_database().expect("test database")
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct EngineProcess {
    child: Child,
    base: String,
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn spawn_engine(pool: &PgPool, transport: &Arc<dyn Transport>) -> EngineProcess {
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sagaflow"));
    command
        .args(["serve", "--http-addr", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", database_url(pool))
        .env("SAGAFLOW_DB_POOL_SIZE", "8")
        .env("SAGAFLOW_TRANSPORT", transport.kind())
        .env("SAGAFLOW_TOPIC_PREFIX", &transport.layout().prefix)
        .env(
            "SAGAFLOW_PARTITIONS",
            transport.layout().partitions.to_string(),
        )
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if transport.kind() == "kafka" {
        command.env("KAFKA_BROKERS", kafka_brokers());
    }
    let child = command.spawn().expect("start the sagaflow binary");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    eventually(
        Duration::from_secs(30),
        "the engine process answering /healthz",
        || async { client.get(format!("{base}/healthz")).send().await.is_ok() },
    )
    .await;
    EngineProcess { child, base }
}

/// Backend pids holding relay shard locks in this test's database.
async fn relay_lock_holders(pool: &PgPool) -> BTreeSet<i32> {
    sqlx::query_scalar(
        "SELECT l.pid FROM pg_locks l
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.classid = 1397117441
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

async fn create_delivered(pool: &PgPool) {
    sqlx::query("CREATE TABLE delivered (message_id uuid NOT NULL)")
        .execute(pool)
        .await
        .unwrap();
}

/// Two engine processes: exactly one relays; after a kill -9 of the leader the other takes
/// over within seconds, and every accepted command's events are delivered exactly once.
async fn kill_9_of_the_leading_engine(pool: PgPool, transport: Arc<dyn Transport>) {
    create_delivered(&pool).await;
    let leader = spawn_engine(&pool, &transport).await;
    eventually(
        Duration::from_secs(10),
        "the first engine leading all 4 shards",
        || async { relay_lock_holders(&pool).await.len() == 4 },
    )
    .await;
    let leader_locks = relay_lock_holders(&pool).await;
    let standby = spawn_engine(&pool, &transport).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        relay_lock_holders(&pool).await,
        leader_locks,
        "the standby must not relay while the leader lives"
    );

    let (stop_verifier, verifier) = start_verifier(&pool, transport.clone());
    let client = reqwest::Client::new();
    let accepted = Arc::new(AtomicUsize::new(0));
    let leader_base = leader.base.clone();
    let mut leader = Some(leader);
    let mut tasks = Vec::new();
    let mut killed_at = Instant::now();
    for i in 0..300usize {
        // After the kill, the leader's requests fail: they are not accepted.
        let base = if i % 2 == 0 {
            leader_base.clone()
        } else {
            standby.base.clone()
        };
        let (client, accepted) = (client.clone(), accepted.clone());
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(format!("{base}/inventory/SKU-{}/restock", i % 7))
                .json(&json!({"quantity": 1}))
                .send()
                .await;
            if matches!(r, Ok(r) if r.status() == StatusCode::ACCEPTED) {
                accepted.fetch_add(1, Ordering::SeqCst);
            }
        }));
        if i == 150 {
            // kill -9 the leader while commands are in flight.
            drop(leader.take());
            killed_at = Instant::now();
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    eventually(
        Duration::from_secs(15),
        "the standby taking over every shard",
        || async {
            let holders = relay_lock_holders(&pool).await;
            holders.len() == 4 && holders.is_disjoint(&leader_locks)
        },
    )
    .await;
    eprintln!(
        "takeover observed {:.1}s after the kill",
        killed_at.elapsed().as_secs_f64()
    );
    let accepted = accepted.load(Ordering::SeqCst) as i64;
    assert!(
        accepted >= 150,
        "the standby accepted its commands ({accepted})"
    );
    // Every accepted command is stored (a command the leader committed just before dying may
    // be stored without its 202 having arrived).
    assert!(scalar(&pool, "SELECT count(*) FROM events").await >= accepted);
    assert_every_event_delivered_once(&pool).await;
    stop_verifier.cancel();
    verifier.await.unwrap();
}

mod kill_9_of_the_leading_engine {
    use super::*;

    #[sqlx::test(migrator = "common::MIGRATOR")]
    async fn postgres_transport(pool: PgPool) {
        let transport = postgres(&pool);
        super::kill_9_of_the_leading_engine(pool, transport).await;
    }

    #[sqlx::test(migrator = "common::MIGRATOR")]
    async fn kafka_transport(pool: PgPool) {
        super::kill_9_of_the_leading_engine(pool, common::transport::kafka()).await;
    }
}

/// A broker of its own for the outage test, so pausing it disturbs no other test.
struct OwnBroker {
    port: u16,
}

impl OwnBroker {
    fn start() -> Self {
        let port = free_port();
        let ok = broker(&["start", &port.to_string()]);
        assert!(ok, "scripts/broker.sh start {port} failed");
        OwnBroker { port }
    }

    fn pause(&self) {
        assert!(broker(&["pause", &self.port.to_string()]));
    }

    fn resume(&self) {
        assert!(broker(&["resume", &self.port.to_string()]));
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        broker(&["resume", &self.port.to_string()]);
        broker(&["stop", &self.port.to_string()]);
    }
}

fn broker(args: &[&str]) -> bool {
    Command::new("bash")
        .arg("scripts/broker.sh")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The broker is paused while 2,000 commands are accepted over HTTP and resumed 10 s later:
/// all 2,000 are relayed, none lost, none applied twice.
#[sqlx::test(migrator = "common::MIGRATOR")]
async fn a_broker_outage_loses_and_doubles_nothing(pool: PgPool) {
    create_delivered(&pool).await;
    let broker = OwnBroker::start();
    let transport = kafka_on(&format!("127.0.0.1:{}", broker.port));
    let app = common::shop();
    let topics = app.event_topics();
    transport
        .ensure_topics(&topics.iter().map(String::as_str).collect::<Vec<_>>())
        .await
        .unwrap();
    let service = app
        .build(pool.clone(), transport.clone(), &Options::default())
        .unwrap();
    let engine = service.start(
        &Components::new([Component::Http, Component::Relay]),
        RelayConfig {
            max_backoff: Duration::from_secs(2),
            ..Default::default()
        },
    );
    let addr = common::spawn_server(service.router.clone()).await;
    let (stop_verifier, verifier) = start_verifier(&pool, transport.clone());

    broker.pause();
    let paused_at = Instant::now();
    let client = reqwest::Client::new();
    let mut accepted = 0;
    for chunk in (0..2000).collect::<Vec<_>>().chunks(50) {
        let mut tasks = Vec::new();
        for i in chunk {
            let (client, url) = (
                client.clone(),
                format!("http://{addr}/inventory/SKU-{}/restock", i % 40),
            );
            tasks.push(tokio::spawn(async move {
                client
                    .post(url)
                    .json(&json!({"quantity": 1}))
                    .send()
                    .await
                    .unwrap()
                    .status()
            }));
        }
        for t in tasks {
            assert_eq!(
                t.await.unwrap(),
                StatusCode::ACCEPTED,
                "commands are accepted while the broker is down"
            );
            accepted += 1;
        }
    }
    assert_eq!(accepted, 2000);
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM delivered").await,
        0,
        "nothing can be delivered yet"
    );
    let held = scalar(&pool, "SELECT count(*) FROM outbox").await;
    eprintln!("outbox holds {held} messages during the outage");
    assert!(held > 0);
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(paused_at.elapsed())).await;
    broker.resume();

    assert_every_event_delivered_once(&pool).await;
    assert_eq!(scalar(&pool, "SELECT count(*) FROM delivered").await, 2000);
    stop_verifier.cancel();
    verifier.await.unwrap();
    engine.stop().await;
}

/// kill -9 of the engine while 500 orders are in flight, then a restart: every saga reaches a
/// terminal state, stock and money add up, and nothing was reserved or charged twice.
async fn kill_9_with_orders_in_flight(pool: PgPool, transport: Arc<dyn Transport>) {
    let engine = spawn_engine(&pool, &transport).await;
    let client = reqwest::Client::new();
    let customers: Vec<uuid::Uuid> = (0..10).map(|_| uuid::Uuid::now_v7()).collect();
    for sku in ["K1", "K2"] {
        let r = client
            .post(format!("{}/inventory/{sku}/restock", engine.base))
            .json(&json!({"quantity": 600}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    for c in &customers {
        let r = client
            .post(format!("{}/accounts/{c}/deposits", engine.base))
            .json(&json!({"amount_cents": 100_000_00}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    // Clients send 500 orders, 20 at a time, each with an Idempotency-Key, retrying until
    // accepted (as a real client would); the engine is killed after 250 acceptances.
    let base = Arc::new(std::sync::RwLock::new(engine.base.clone()));
    let accepted_count = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(20));
    let mut tasks = Vec::new();
    for i in 0..500usize {
        let (client, base, customer) =
            (client.clone(), base.clone(), customers[i % customers.len()]);
        let (gate, accepted_count) = (gate.clone(), accepted_count.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let sku = if i % 2 == 0 { "K1" } else { "K2" };
            let body = json!({"customer_id": customer, "lines": [{"sku": sku, "quantity": 1 + i % 2, "unit_price_cents": 3_00}]});
            let deadline = Instant::now() + Duration::from_secs(90);
            while Instant::now() < deadline {
                let url = format!("{}/orders", base.read().unwrap());
                let sent = client.post(url).header("Idempotency-Key", format!("kill9-{i}")).json(&body).send().await;
                if let Ok(r) = sent {
                    if r.status() == StatusCode::ACCEPTED {
                        if let Ok(v) = r.json::<serde_json::Value>().await {
                            accepted_count.fetch_add(1, Ordering::SeqCst);
                            return v["saga_id"].as_str().and_then(|s| s.parse::<uuid::Uuid>().ok());
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            None
        }));
    }
    eventually(Duration::from_secs(60), "250 orders accepted", || async {
        accepted_count.load(Ordering::SeqCst) >= 250
    })
    .await;
    drop(engine); // kill -9 with orders in flight
    let restarted = spawn_engine(&pool, &transport).await;
    *base.write().unwrap() = restarted.base.clone();
    let mut accepted = Vec::new();
    for t in tasks {
        accepted.push(
            t.await
                .unwrap()
                .expect("every order is accepted in the end"),
        );
    }
    accepted.sort();
    accepted.dedup();
    assert_eq!(accepted.len(), 500);
    // The Idempotency-Key made every retried order count once.
    assert_eq!(
        scalar(
            &pool,
            "SELECT count(*) FROM events WHERE event_type = 'order_placed'"
        )
        .await,
        500
    );
    // Every order in the store, answered or not, must finish.
    eventually(
        Duration::from_secs(180),
        "every saga terminal after the restart",
        || async {
            let placed = scalar(
                &pool,
                "SELECT count(*) FROM events WHERE event_type = 'order_placed'",
            )
            .await;
            let done = scalar(
                &pool,
                "SELECT count(*) FROM sagas WHERE state IN ('completed', 'compensated', 'failed')",
            )
            .await;
            placed > 0 && done == placed
        },
    )
    .await;
    let accepted_done: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sagas WHERE saga_id = ANY($1) AND state = 'completed'",
    )
    .bind(&accepted)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        accepted_done,
        accepted.len() as i64,
        "stock and money suffice: every accepted order completes"
    );
    assert_eq!(
        scalar(
            &pool,
            "SELECT count(*) FROM sagas WHERE state <> 'completed'"
        )
        .await,
        0
    );
    // Nothing twice: one reservation per order line, one capture per order.
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM (SELECT payload->>'order_id', stream_id FROM events WHERE event_type = 'stock_reserved' GROUP BY 1, 2 HAVING count(*) > 1) d").await,
        0
    );
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM (SELECT payload->>'order_id' FROM events WHERE event_type = 'payment_captured' GROUP BY 1 HAVING count(*) > 1) d").await,
        0
    );
    let orders = scalar(
        &pool,
        "SELECT count(*) FROM events WHERE event_type = 'order_placed'",
    )
    .await;
    assert_eq!(
        scalar(
            &pool,
            "SELECT count(*) FROM events WHERE event_type = 'payment_captured'"
        )
        .await,
        orders
    );
    // Stock and money add up with the confirmed orders.
    let reserved_units = scalar(&pool, "SELECT COALESCE(sum((payload->>'quantity')::bigint), 0)::bigint FROM events WHERE event_type = 'stock_reserved'").await;
    let ordered_units = scalar(&pool, "SELECT COALESCE(sum((l->>'quantity')::bigint), 0)::bigint FROM events, jsonb_array_elements(payload->'lines') l WHERE event_type = 'order_placed'").await;
    assert_eq!(reserved_units, ordered_units);
    let captured = scalar(&pool, "SELECT COALESCE(sum((payload->>'amount_cents')::bigint), 0)::bigint FROM events WHERE event_type = 'payment_captured'").await;
    let totals = scalar(&pool, "SELECT COALESCE(sum((payload->>'total_cents')::bigint), 0)::bigint FROM events WHERE event_type = 'order_placed'").await;
    assert_eq!(captured, totals);
}

mod kill_9_with_orders_in_flight {
    use super::*;

    #[sqlx::test(migrator = "common::MIGRATOR")]
    async fn postgres_transport(pool: PgPool) {
        let transport = postgres(&pool);
        super::kill_9_with_orders_in_flight(pool, transport).await;
    }

    #[sqlx::test(migrator = "common::MIGRATOR")]
    async fn kafka_transport(pool: PgPool) {
        super::kill_9_with_orders_in_flight(pool, common::transport::kafka()).await;
    }
}
