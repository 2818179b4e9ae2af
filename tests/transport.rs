//! The relay and consumer contract, run against both transports: the embedded PostgreSQL log
//! and Kafka (a real Kafka-protocol broker, started by scripts/test.sh).

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::transport::{eventually, kafka, postgres, with_topics};
use sagaflow_engine::command::{CommandBus, CommandBusConfig};
use sagaflow_engine::consumer::{Consumer, ConsumerConfig, ConsumerStats, Handler, HandlerError};
use sagaflow_engine::envelope::{Envelope, Metadata};
use sagaflow_engine::outbox::{self, OutboxMessage};
use sagaflow_engine::relay::{Relay, RelayConfig};
use sagaflow_engine::transport::{Delivery, OutgoingMessage, Transport};
use serde_json::json;
use sqlx::{PgConnection, PgPool, Row};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const TOPIC: &str = "test.events";

/// Records every message it applies, in apply order; fails on `{"poison": true}`.
struct Recorder;

#[async_trait]
impl Handler for Recorder {
    async fn handle(&self, tx: &mut PgConnection, m: &Delivery) -> Result<(), HandlerError> {
        if m.envelope.payload["poison"] == json!(true) {
            return Err("poison pill".into());
        }
        sqlx::query("INSERT INTO applied (message_id, key, version, partition, \"offset\") VALUES ($1, $2, $3, $4, $5)")
            .bind(m.message_id())
            .bind(&m.key)
            .bind(m.envelope.stream_version)
            .bind(m.partition)
            .bind(m.offset)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

async fn create_applied(pool: &PgPool) {
    sqlx::query(
        "CREATE TABLE applied (seq bigserial PRIMARY KEY, message_id uuid NOT NULL, key text NOT NULL,
                               version bigint NOT NULL, partition int NOT NULL, \"offset\" bigint NOT NULL)",
    )
    .execute(pool)
    .await
    .unwrap();
}

fn message(key: &str, version: i64, payload: serde_json::Value) -> OutboxMessage {
    OutboxMessage {
        topic: TOPIC.into(),
        partition_key: key.into(),
        envelope: Envelope {
            message_id: Uuid::now_v7(),
            stream_id: key.into(),
            stream_version: version,
            event_type: "tested".into(),
            schema_version: 1,
            payload,
            metadata: Metadata::new_root(),
        },
    }
}

async fn commit(pool: &PgPool, messages: &[OutboxMessage]) {
    let mut tx = pool.begin().await.unwrap();
    outbox::enqueue(&mut tx, messages).await.unwrap();
    tx.commit().await.unwrap();
}

async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

fn fast_relay() -> RelayConfig {
    RelayConfig {
        batch_size: 200,
        idle_poll: Duration::from_millis(100),
        standby_retry: Duration::from_millis(200),
        max_backoff: Duration::from_secs(1),
    }
}

fn fast_consumer(group: &str) -> ConsumerConfig {
    let mut c = ConsumerConfig::new(group, &[TOPIC]);
    c.batch_size = 100;
    c.poll_wait = Duration::from_millis(100);
    c.rebalance_interval = Duration::from_millis(300);
    c.retry_backoff = Duration::from_millis(20);
    c.max_attempts = 3;
    c
}

/// A relay and one consumer of group "g", running until dropped.
struct Running {
    shutdown: CancellationToken,
    consumer: Arc<ConsumerStats>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    fn start(pool: &PgPool, transport: &Arc<dyn Transport>) -> Self {
        let shutdown = CancellationToken::new();
        let bus = CommandBus::new(pool.clone(), CommandBusConfig::default());
        let relay = Relay::new(
            pool.clone(),
            transport.clone(),
            bus.outbox_bell().clone(),
            fast_relay(),
        );
        let consumer = Consumer::new(
            pool.clone(),
            transport.clone(),
            Arc::new(Recorder),
            fast_consumer("g"),
        );
        let stats = consumer.stats();
        let tasks = vec![
            tokio::spawn(relay.run(shutdown.clone())),
            tokio::spawn({
                let s = shutdown.clone();
                async move { consumer.run(s).await.expect("consumer runs") }
            }),
        ];
        Running {
            shutdown,
            consumer: stats,
            tasks,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            t.await.unwrap();
        }
    }
}

async fn wait_applied(pool: &PgPool, n: i64) {
    eventually(
        Duration::from_secs(60),
        &format!("{n} applied messages"),
        || async { scalar(pool, "SELECT count(*) FROM applied").await >= n },
    )
    .await;
    // Give stragglers (duplicates) a chance to show up before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Asserts every key's versions were applied in order, each exactly once.
async fn assert_key_order(pool: &PgPool, keys: usize, versions: i64) {
    let rows = sqlx::query("SELECT key, version FROM applied ORDER BY seq")
        .fetch_all(pool)
        .await
        .unwrap();
    let mut per_key: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for r in rows {
        per_key.entry(r.get(0)).or_default().push(r.get(1));
    }
    assert_eq!(per_key.len(), keys);
    for (key, seen) in per_key {
        assert_eq!(seen, (1..=versions).collect::<Vec<_>>(), "order of {key}");
    }
}

async fn every_committed_row_is_delivered_in_key_order(
    pool: PgPool,
    transport: Arc<dyn Transport>,
) {
    create_applied(&pool).await;
    let transport = with_topics(transport, &[TOPIC]).await;
    let running = Running::start(&pool, &transport);
    let keys: Vec<String> = (0..20).map(|k| format!("key-{k}")).collect();
    for v in 1..=25 {
        let batch: Vec<OutboxMessage> = keys
            .iter()
            .map(|k| message(k, v, json!({"v": v})))
            .collect();
        commit(&pool, &batch).await;
        if v == 10 {
            // A transaction that rolls back never reaches anyone.
            let mut tx = pool.begin().await.unwrap();
            let ghosts: Vec<OutboxMessage> = (0..50)
                .map(|g| message(&format!("ghost-{g}"), 1, json!({})))
                .collect();
            outbox::enqueue(&mut tx, &ghosts).await.unwrap();
            tx.rollback().await.unwrap();
        }
    }
    wait_applied(&pool, 500).await;
    running.stop().await;
    assert_eq!(scalar(&pool, "SELECT count(*) FROM applied").await, 500);
    assert_eq!(
        scalar(&pool, "SELECT count(DISTINCT message_id) FROM applied").await,
        500
    );
    assert_eq!(
        scalar(
            &pool,
            "SELECT count(*) FROM applied WHERE key LIKE 'ghost-%'"
        )
        .await,
        0
    );
    assert_eq!(scalar(&pool, "SELECT count(*) FROM outbox").await, 0);
    assert_key_order(&pool, 20, 25).await;
    // Every key was read from the partition the layout assigns it.
    let rows = sqlx::query("SELECT DISTINCT key, partition FROM applied")
        .fetch_all(&pool)
        .await
        .unwrap();
    for r in rows {
        let key: String = r.get(0);
        assert_eq!(
            r.get::<i32, _>(1),
            transport.layout().partition_of(&key),
            "{key}"
        );
    }
}

/// The relay publishes, then dies before deleting the rows: they are published again, and the
/// consumer still applies each message exactly once.
async fn a_relay_killed_between_publish_and_delete_loses_and_doubles_nothing(
    pool: PgPool,
    transport: Arc<dyn Transport>,
) {
    create_applied(&pool).await;
    let transport = with_topics(transport, &[TOPIC]).await;
    let keys: Vec<String> = (0..10).map(|k| format!("key-{k}")).collect();
    for v in 1..=10 {
        let batch: Vec<OutboxMessage> = keys.iter().map(|k| message(k, v, json!({}))).collect();
        commit(&pool, &batch).await;
    }
    // What a relay does up to the moment it dies: publish, but never commit the deletion.
    let rows = sqlx::query("SELECT id, topic, partition_key, envelope FROM outbox ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    let batch: Vec<OutgoingMessage> = rows
        .iter()
        .map(|r| {
            let key: String = r.get(2);
            let payload: String = r.get(3);
            OutgoingMessage {
                outbox_id: r.get(0),
                topic: transport.layout().topic(&r.get::<String, _>(1)),
                partition: transport.layout().partition_of(&key),
                key,
                envelope: serde_json::from_str(&payload).unwrap(),
                payload,
            }
        })
        .collect();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("DELETE FROM outbox")
        .execute(&mut *tx)
        .await
        .unwrap();
    transport.publish(&mut tx, &batch).await.unwrap();
    drop(tx); // the crash: the transaction rolls back, the rows are back in the outbox
    transport.published();
    assert_eq!(scalar(&pool, "SELECT count(*) FROM outbox").await, 100);

    let running = Running::start(&pool, &transport);
    wait_applied(&pool, 100).await;
    let duplicates = running
        .consumer
        .duplicates
        .load(std::sync::atomic::Ordering::Relaxed);
    running.stop().await;
    assert_eq!(scalar(&pool, "SELECT count(*) FROM applied").await, 100);
    assert_eq!(
        scalar(&pool, "SELECT count(DISTINCT message_id) FROM applied").await,
        100
    );
    assert_key_order(&pool, 10, 10).await;
    match transport.kind() {
        // Published twice on the wire, skipped by message id.
        "kafka" => assert_eq!(duplicates, 100),
        // The embedded transport wrote inside the rolled-back transaction: nothing to skip.
        _ => assert_eq!(duplicates, 0),
    }
}

async fn a_poison_message_is_parked_and_its_partition_moves_on(
    pool: PgPool,
    transport: Arc<dyn Transport>,
) {
    create_applied(&pool).await;
    let transport = with_topics(transport, &[TOPIC]).await;
    let running = Running::start(&pool, &transport);
    let batch: Vec<OutboxMessage> = (1..=30)
        .map(|v| message("one-key", v, json!({"poison": v == 10})))
        .collect();
    let poison_id = batch[9].envelope.message_id;
    commit(&pool, &batch).await;
    wait_applied(&pool, 29).await;
    running.stop().await;
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM applied ORDER BY seq")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(versions, (1..=30).filter(|v| *v != 10).collect::<Vec<_>>());
    let (message_id, error, attempts, status): (Uuid, String, i32, String) = sqlx::query_as(
        "SELECT message_id, error, attempts, status FROM dead_letters WHERE consumer_group = 'g'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(message_id, poison_id);
    assert!(error.contains("poison pill"), "{error}");
    assert_eq!((attempts, status.as_str()), (3, "parked"));
}

/// Two members of one group share the partitions; when one stops, the other takes its
/// partitions over and nothing is lost or applied twice.
async fn group_members_share_partitions_and_take_over(pool: PgPool, transport: Arc<dyn Transport>) {
    create_applied(&pool).await;
    let transport = with_topics(transport, &[TOPIC]).await;
    let first = Running::start(&pool, &transport);
    let second_stop = CancellationToken::new();
    let second = Consumer::new(
        pool.clone(),
        transport.clone(),
        Arc::new(Recorder),
        fast_consumer("g"),
    );
    let second_stats = second.stats();
    let second_task = tokio::spawn({
        let s = second_stop.clone();
        async move { second.run(s).await.unwrap() }
    });
    let keys: Vec<String> = (0..16).map(|k| format!("key-{k}")).collect();
    for v in 1..=10 {
        let batch: Vec<OutboxMessage> = keys.iter().map(|k| message(k, v, json!({}))).collect();
        commit(&pool, &batch).await;
    }
    wait_applied(&pool, 160).await;
    let owned = |s: &ConsumerStats| {
        s.owned_partitions
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    eventually(
        Duration::from_secs(10),
        "partitions split between two members",
        || async { owned(&first.consumer) == 2 && owned(&second_stats) == 2 },
    )
    .await;
    second_stop.cancel();
    second_task.await.unwrap();
    eventually(
        Duration::from_secs(10),
        "the remaining member owning every partition",
        || async { owned(&first.consumer) == 4 },
    )
    .await;
    for v in 11..=20 {
        let batch: Vec<OutboxMessage> = keys.iter().map(|k| message(k, v, json!({}))).collect();
        commit(&pool, &batch).await;
    }
    wait_applied(&pool, 320).await;
    first.stop().await;
    assert_eq!(scalar(&pool, "SELECT count(*) FROM applied").await, 320);
    assert_key_order(&pool, 16, 20).await;
}

/// Exactly one relay leads each shard; when the leader stops, the standby takes over.
async fn one_relay_leads_and_a_standby_takes_over(pool: PgPool, transport: Arc<dyn Transport>) {
    create_applied(&pool).await;
    let transport = with_topics(transport, &[TOPIC]).await;
    let bus = CommandBus::new(pool.clone(), CommandBusConfig::default());
    let stop_a = CancellationToken::new();
    let stop_b = CancellationToken::new();
    let relay_a = Relay::new(
        pool.clone(),
        transport.clone(),
        bus.outbox_bell().clone(),
        fast_relay(),
    );
    let relay_b = Relay::new(
        pool.clone(),
        transport.clone(),
        bus.outbox_bell().clone(),
        fast_relay(),
    );
    let (stats_a, stats_b) = (relay_a.stats(), relay_b.stats());
    let task_a = tokio::spawn(relay_a.run(stop_a.clone()));
    let all_shards = (1u64 << outbox::OUTBOX_SHARDS) - 1;
    let leading = |s: &sagaflow_engine::relay::RelayStats| {
        s.leading.load(std::sync::atomic::Ordering::Relaxed)
    };
    eventually(
        Duration::from_secs(10),
        "relay A leading every shard",
        || async { leading(&stats_a) == all_shards },
    )
    .await;
    let task_b = tokio::spawn(relay_b.run(stop_b.clone()));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        leading(&stats_b),
        0,
        "the standby must not lead while A does"
    );

    let consumer_stop = CancellationToken::new();
    let consumer = Consumer::new(
        pool.clone(),
        transport.clone(),
        Arc::new(Recorder),
        fast_consumer("g"),
    );
    let consumer_task = tokio::spawn({
        let s = consumer_stop.clone();
        async move { consumer.run(s).await.unwrap() }
    });
    let keys: Vec<String> = (0..8).map(|k| format!("key-{k}")).collect();
    for v in 1..=5 {
        commit(
            &pool,
            &keys
                .iter()
                .map(|k| message(k, v, json!({})))
                .collect::<Vec<_>>(),
        )
        .await;
    }
    wait_applied(&pool, 40).await;
    stop_a.cancel();
    task_a.await.unwrap();
    eventually(
        Duration::from_secs(10),
        "relay B taking over every shard",
        || async { leading(&stats_b) == all_shards },
    )
    .await;
    for v in 6..=10 {
        commit(
            &pool,
            &keys
                .iter()
                .map(|k| message(k, v, json!({})))
                .collect::<Vec<_>>(),
        )
        .await;
    }
    wait_applied(&pool, 80).await;
    stop_b.cancel();
    consumer_stop.cancel();
    task_b.await.unwrap();
    consumer_task.await.unwrap();
    assert_eq!(scalar(&pool, "SELECT count(*) FROM applied").await, 80);
    assert_key_order(&pool, 8, 10).await;
    assert!(stats_a.published.load(std::sync::atomic::Ordering::Relaxed) >= 40);
    assert!(stats_b.published.load(std::sync::atomic::Ordering::Relaxed) >= 40);
}

/// A transaction writes an outbox row, as its first write, and stays open while rows with
/// higher ids of the same shard commit and are relayed, batch after batch. The relay reads
/// above the ids it has moved, but not above the open transaction's row: it is relayed once
/// that transaction commits.
async fn a_row_committed_after_later_rows_were_relayed_is_relayed(
    pool: PgPool,
    transport: Arc<dyn Transport>,
) {
    create_applied(&pool).await;
    let transport = with_topics(transport, &[TOPIC]).await;
    let running = Running::start(&pool, &transport);
    let shard = outbox::shard_of("late");
    let keys: Vec<String> = (0..)
        .map(|k| format!("key-{k}"))
        .filter(|k| outbox::shard_of(k) == shard)
        .take(5)
        .collect();
    let mut late = pool.begin().await.unwrap();
    let assigned: Option<String> =
        sqlx::query_scalar("SELECT pg_current_xact_id_if_assigned()::text")
            .fetch_one(&mut *late)
            .await
            .unwrap();
    assert_eq!(
        assigned, None,
        "the outbox row is the transaction's first write"
    );
    outbox::enqueue(&mut late, &[message("late", 1, json!({}))])
        .await
        .unwrap();
    for v in 1..=10 {
        let batch: Vec<OutboxMessage> = keys.iter().map(|k| message(k, v, json!({}))).collect();
        commit(&pool, &batch).await;
        wait_applied(&pool, 5 * v).await;
    }
    // Idle polls too, each a chance for the relay to look above the open row.
    tokio::time::sleep(Duration::from_millis(500)).await;
    late.commit().await.unwrap();
    wait_applied(&pool, 51).await;
    running.stop().await;
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM applied WHERE key = 'late'").await,
        1
    );
    assert_eq!(scalar(&pool, "SELECT count(*) FROM outbox").await, 0);
    sqlx::query("DELETE FROM applied WHERE key = 'late'")
        .execute(&pool)
        .await
        .unwrap();
    assert_key_order(&pool, 5, 10).await;
}

/// The server drops every session of the relay and the consumer (as a restart or an
/// administrator would): they open new ones, and what is committed before and after is
/// delivered in key order, each message once.
async fn sessions_the_server_drops_are_replaced(pool: PgPool, transport: Arc<dyn Transport>) {
    create_applied(&pool).await;
    let transport = with_topics(transport, &[TOPIC]).await;
    let running = Running::start(&pool, &transport);
    let keys: Vec<String> = (0..20).map(|k| format!("key-{k}")).collect();
    let versions = |range: std::ops::RangeInclusive<i64>| -> Vec<OutboxMessage> {
        range
            .flat_map(|v| keys.iter().map(move |k| message(k, v, json!({"v": v}))))
            .collect()
    };
    commit(&pool, &versions(1..=5)).await;
    wait_applied(&pool, 100).await;
    let dropped = scalar(
        &pool,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .await;
    assert!(dropped >= 2, "{dropped} sessions dropped");
    // The test's own pooled sessions were dropped too: the pool checks those idle for a
    // second before it hands them out again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    commit(&pool, &versions(6..=10)).await;
    wait_applied(&pool, 200).await;
    running.stop().await;
    assert_eq!(scalar(&pool, "SELECT count(*) FROM applied").await, 200);
    assert_eq!(scalar(&pool, "SELECT count(*) FROM outbox").await, 0);
    assert_key_order(&pool, 20, 10).await;
}

/// Runs a contract test once per transport.
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
    every_committed_row_is_delivered_in_key_order,
    a_relay_killed_between_publish_and_delete_loses_and_doubles_nothing,
    a_poison_message_is_parked_and_its_partition_moves_on,
    group_members_share_partitions_and_take_over,
    one_relay_leads_and_a_standby_takes_over,
    a_row_committed_after_later_rows_were_relayed_is_relayed,
    sessions_the_server_drops_are_replaced,
);
