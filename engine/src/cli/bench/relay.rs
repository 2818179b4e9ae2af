//! `bench relay`: drains an outbox backlog through each transport and reports
//! messages per second, beside raw baselines measured in the same run: for Kafka, a plain
//! rdkafka producer sending the same messages to the same broker; for the embedded log, one
//! SQL statement per batch that moves the rows without any relay logic.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Args;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{bench_database, reset, Progress};
use crate::app::App;
use crate::cli::config::{mask_url, DatabaseArgs, TransportArgs, TransportKind};
use crate::doorbell::Doorbell;
use crate::outbox::OUTBOX_CHANNEL;
use crate::relay::{Relay, RelayConfig};
use crate::transport::kafka::{KafkaConfig, KafkaTransport};
use crate::transport::{TopicLayout, Transport};

/// The logical topic of the benchmark's messages.
const TOPIC: &str = "bench.events";

/// The flags of `bench relay`.
#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    /// Messages in the outbox backlog.
    #[arg(long, default_value_t = 100_000)]
    pub messages: i64,
    /// Rows per relay batch.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: i64,
    /// Skip the Kafka transport even if brokers are configured.
    #[arg(long)]
    pub postgres_only: bool,
}

pub(crate) async fn run(
    app: &App,
    args: RelayArgs,
    database: &DatabaseArgs,
    transport: &TransportArgs,
) -> anyhow::Result<()> {
    let (url, pool) = bench_database(app, database, 16).await?;
    println!(
        "bench relay: {} messages per run, batches of {}, database {}",
        args.messages,
        args.batch_size,
        mask_url(&url)
    );
    let mut rows = Vec::new();

    let raw_pg = raw_postgres(&pool, &args).await?;
    rows.push(("raw SQL move, outbox -> message_log", raw_pg));
    let relay_pg = through_relay(
        &pool,
        &args,
        TransportArgs {
            transport: TransportKind::Postgres,
            ..transport.clone()
        },
    )
    .await?;
    rows.push(("sagaflow relay, postgres transport", relay_pg));

    match (&transport.kafka_brokers, args.postgres_only) {
        (Some(brokers), false) => {
            let kafka_args = TransportArgs {
                transport: TransportKind::Kafka,
                topic_prefix: format!("bench{}", uuid::Uuid::new_v4().simple()),
                ..transport.clone()
            };
            let raw = raw_kafka(brokers, &kafka_args, args.messages).await?;
            rows.push(("raw rdkafka producer, same broker", raw));
            let relay = through_relay(&pool, &args, kafka_args).await?;
            rows.push(("sagaflow relay, kafka transport", relay));
        }
        _ => println!("(kafka skipped: set KAFKA_BROKERS or --kafka-brokers to include it)"),
    }

    println!("{:<40} {:>12}", "run", "messages/s");
    for (name, rate) in &rows {
        println!("{name:<40} {rate:>12.0}");
    }
    println!(
        "ratio postgres relay / raw SQL move: {:.2}",
        relay_pg / raw_pg
    );
    if rows.len() == 4 {
        println!(
            "ratio kafka relay / raw producer:    {:.2}",
            rows[3].1 / rows[2].1
        );
    }
    println!("target: >= 20000 messages/s on each transport");
    Ok(())
}

/// Fills the outbox with `n` events over 1,000 keys, each key in one shard; each envelope is
/// about the size of a small business event (an id, an amount, two items).
async fn fill_outbox(pool: &PgPool, n: i64) -> anyhow::Result<()> {
    reset(pool).await?;
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO outbox (shard, topic, partition_key, message_id, envelope)
         SELECT (g % 1000 % 4)::int2, 'bench.events', 'bench-' || (g % 1000), id,
                jsonb_build_object(
                    'message_id', id, 'stream_id', 'bench-' || (g % 1000), 'stream_version', g / 1000 + 1,
                    'event_type', 'bench_event', 'schema_version', 1,
                    'payload', jsonb_build_object(
                        'owner_id', gen_random_uuid(), 'amount', 7499,
                        'items', jsonb_build_array(
                            jsonb_build_object('code', 'ITEM-RED-1', 'count', 2, 'unit_amount', 1250),
                            jsonb_build_object('code', 'ITEM-BLUE-7', 'count', 1, 'unit_amount', 4999))),
                    'metadata', jsonb_build_object('correlation_id', gen_random_uuid()))::text
         FROM (SELECT g, gen_random_uuid() AS id FROM generate_series(0, $1 - 1) g) s",
    )
    .bind(n)
    .execute(pool)
    .await?;
    sqlx::query("VACUUM ANALYZE outbox").execute(pool).await?;
    eprintln!(
        "  outbox filled with {n} rows in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn outbox_left(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(pool)
        .await?)
}

async fn through_relay(
    pool: &PgPool,
    args: &RelayArgs,
    transport_args: TransportArgs,
) -> anyhow::Result<f64> {
    fill_outbox(pool, args.messages).await?;
    let transport = transport_args.connect(pool, &[TOPIC.to_owned()]).await?;
    let kind = transport.kind();
    let relay = Relay::new(
        pool.clone(),
        transport,
        Doorbell::new(pool.clone(), OUTBOX_CHANNEL),
        RelayConfig {
            batch_size: args.batch_size,
            ..Default::default()
        },
    );
    let stats = relay.stats();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    let (progress, guard) = Progress::start(&format!("relay/{kind}"), Some(args.messages as u64));
    let started = Instant::now();
    loop {
        progress.add(stats.published.load(Ordering::Relaxed) - progress.get());
        if outbox_left(pool).await? == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    drop(guard);
    shutdown.cancel();
    running.await?;
    let published = stats.published.load(Ordering::Relaxed);
    anyhow::ensure!(
        published as i64 == args.messages,
        "relay published {published}, expected {}",
        args.messages
    );
    Ok(published as f64 / elapsed.as_secs_f64())
}

/// The floor under the embedded transport: one statement per batch moves rows from the
/// outbox into the log, in the order of the outbox's key, offsets from row numbers, no
/// envelopes decoded.
async fn raw_postgres(pool: &PgPool, args: &RelayArgs) -> anyhow::Result<f64> {
    fill_outbox(pool, args.messages).await?;
    let (progress, guard) = Progress::start("raw/postgres", Some(args.messages as u64));
    let started = Instant::now();
    let mut moved_total = 0i64;
    loop {
        let moved = sqlx::query(
            "WITH moved AS (
                 DELETE FROM outbox WHERE (shard, id) IN (
                     SELECT shard, id FROM outbox ORDER BY shard, id LIMIT $1)
                 RETURNING shard, id, topic, partition_key, message_id, envelope)
             INSERT INTO message_log (topic, partition, \"offset\", partition_key, message_id, envelope)
             SELECT topic, 0, $2 + row_number() OVER (ORDER BY shard, id), partition_key, message_id, envelope
             FROM moved",
        )
        .bind(args.batch_size)
        .bind(moved_total)
        .execute(pool)
        .await?
        .rows_affected() as i64;
        if moved == 0 {
            break;
        }
        moved_total += moved;
        progress.add(moved as u64);
    }
    let elapsed = started.elapsed();
    drop(guard);
    Ok(moved_total as f64 / elapsed.as_secs_f64())
}

/// A plain idempotent rdkafka producer sending the same number of messages, of the same
/// size, to the same broker, awaiting every acknowledgement.
async fn raw_kafka(brokers: &str, args: &TransportArgs, n: i64) -> anyhow::Result<f64> {
    let layout = TopicLayout {
        prefix: args.topic_prefix.clone(),
        partitions: args.partitions,
    };
    KafkaTransport::new(KafkaConfig::new(brokers, layout))?
        .ensure_topics(&[TOPIC])
        .await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .create()?;
    let topic = format!("{}.{TOPIC}", args.topic_prefix);
    let payload = serde_json::json!({
        "message_id": uuid::Uuid::now_v7(), "stream_id": "bench-1", "stream_version": 1,
        "event_type": "bench_event", "schema_version": 1,
        "payload": {"owner_id": uuid::Uuid::now_v7(), "amount": 7499, "items": [
            {"code": "ITEM-RED-1", "count": 2, "unit_amount": 1250},
            {"code": "ITEM-BLUE-7", "count": 1, "unit_amount": 4999}]},
        "metadata": {"correlation_id": uuid::Uuid::now_v7()}
    })
    .to_string();
    let (progress, guard) = Progress::start("raw/kafka", Some(n as u64));
    let started = Instant::now();
    let mut pending = Vec::with_capacity(10_000);
    for i in 0..n {
        let key = format!("bench-{}", i % 1000);
        let record = FutureRecord::to(&topic)
            .key(&key)
            .payload(&payload)
            .partition((i % 1000 % i64::from(args.partitions)) as i32);
        pending.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| anyhow::anyhow!("enqueue: {e}"))?,
        );
        if pending.len() == 10_000 {
            for p in pending.drain(..) {
                p.await?
                    .map_err(|(e, _)| anyhow::anyhow!("delivery: {e}"))?;
            }
            progress.add(10_000);
        }
    }
    let rest = pending.len() as u64;
    for p in pending.drain(..) {
        p.await?
            .map_err(|(e, _)| anyhow::anyhow!("delivery: {e}"))?;
    }
    progress.add(rest);
    producer.flush(Duration::from_secs(30))?;
    let elapsed = started.elapsed();
    drop(guard);
    Ok(n as f64 / elapsed.as_secs_f64())
}
