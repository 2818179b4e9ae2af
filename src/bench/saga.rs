//! `sagaflow bench saga`: orders placed over HTTP at a fixed concurrency for a fixed time
//! against a whole engine in this process (relay, orchestrator, participants), on each
//! transport; reports completed sagas per second and the latency from `POST /orders` to the
//! saga's terminal state. Beside it, in the same run, the raw baseline of one event+outbox
//! transaction, which is the unit a saga is made of.
//!
//! Each client places an order and waits until its saga has ended before it places the
//! next, so `--concurrency` sagas are in flight and the figures are those of a steady state.
//! With `--open-loop` clients place orders as fast as they are accepted instead: the sagas
//! fall behind, and the run measures how fast the engine works off that backlog.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::Args;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::{bench_database, reset, Latencies, Progress};
use crate::config::{Component, DatabaseArgs, TransportArgs, TransportKind};

#[derive(Debug, Clone, Args)]
pub struct SagaArgs {
    /// Concurrent HTTP clients placing orders [default: 512, or 16 with --open-loop]. Each
    /// waits for its saga, so this is the number of sagas in flight; fewer leave the engine
    /// idle between batches.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Seconds orders are placed for.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Skip the Kafka transport even if brokers are configured.
    #[arg(long)]
    pub postgres_only: bool,
    /// Skip the embedded transport (measure Kafka alone).
    #[arg(long, conflicts_with = "postgres_only")]
    pub kafka_only: bool,
    /// Clients do not wait for their saga to end before placing the next order.
    #[arg(long)]
    pub open_loop: bool,
}

/// Connections of the benchmark's pool; the raw baseline runs at most this many clients.
const POOL_SIZE: usize = 32;

impl SagaArgs {
    fn clients(&self) -> usize {
        self.concurrency
            .unwrap_or(if self.open_loop { 16 } else { 512 })
            .max(1)
    }
}

pub async fn run(
    args: SagaArgs,
    database: &DatabaseArgs,
    transport: &TransportArgs,
) -> anyhow::Result<()> {
    let (url, pool) = bench_database(database, POOL_SIZE as u32).await?;
    println!(
        "bench saga: {} clients {}, {} s of orders per transport, database {}",
        args.clients(),
        if args.open_loop {
            "placing orders without waiting for their sagas"
        } else {
            "each waiting for its saga to end before the next order"
        },
        args.seconds,
        crate::config::mask_url(&url)
    );
    reset(&pool).await?;
    let raw_clients = args.clients().min(POOL_SIZE);
    let raw = super::append::raw_phase(&pool, raw_clients, Duration::from_secs(5)).await?;
    let mut runs = Vec::new();
    if !args.kafka_only {
        runs.push((
            "postgres",
            TransportArgs {
                transport: TransportKind::Postgres,
                ..transport.clone()
            },
        ));
    }
    match (&transport.kafka_brokers, args.postgres_only) {
        (Some(_), false) => runs.push((
            "kafka",
            TransportArgs {
                transport: TransportKind::Kafka,
                topic_prefix: format!("bench{}", Uuid::new_v4().simple()),
                ..transport.clone()
            },
        )),
        _ => println!("(kafka skipped: set KAFKA_BROKERS or --kafka-brokers to include it)"),
    }
    let mut rows = Vec::new();
    for (name, transport_args) in runs {
        rows.push((name, one_transport(&pool, &args, &transport_args).await?));
    }
    println!(
        "{:<12} {:>8} {:>10} {:>12} {:>10} {:>10}",
        "transport", "sagas", "completed", "sagas/s", "p50 ms", "p99 ms"
    );
    for (name, mut r) in rows {
        println!(
            "{:<12} {:>8} {:>10} {:>12.0} {:>10.1} {:>10.1}",
            name,
            r.placed,
            r.completed,
            r.rate,
            r.latencies.percentile_ms(50.0),
            r.latencies.percentile_ms(99.0)
        );
    }
    println!(
        "raw baseline: {:.0} event+outbox transactions/s with {raw_clients} clients (target: 1000 sagas/s on the embedded transport)",
        raw.rate()
    );
    Ok(())
}

struct Outcome {
    placed: usize,
    completed: usize,
    rate: f64,
    latencies: Latencies,
}

async fn one_transport(
    pool: &PgPool,
    args: &SagaArgs,
    transport_args: &TransportArgs,
) -> anyhow::Result<Outcome> {
    reset(pool).await?;
    sqlx::query(
        "TRUNCATE sagas, saga_deadlines, consumer_offsets, processed_messages, dead_letters",
    )
    .execute(pool)
    .await?;
    let transport = crate::build_transport(pool, transport_args).await?;
    let kind = transport.kind();
    let components: HashSet<Component> = Component::ALL
        .into_iter()
        .filter(|c| *c != Component::Projections)
        .collect();
    let engine = crate::Engine::start(
        pool.clone(),
        transport,
        &components,
        Default::default(),
        &crate::AppOptions::default(),
    );
    let addr = crate::spawn_server(engine.app.router.clone()).await?;
    let base = format!("http://{addr}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients())
        .build()?;
    let skus: Vec<String> = (0..20).map(|i| format!("BENCH-{i}")).collect();
    let customers: Vec<Uuid> = (0..50).map(|_| Uuid::now_v7()).collect();
    for sku in &skus {
        client
            .post(format!("{base}/inventory/{sku}/restock"))
            .json(&json!({"quantity": 1_000_000}))
            .send()
            .await?
            .error_for_status()?;
    }
    for c in &customers {
        client
            .post(format!("{base}/accounts/{c}/deposits"))
            .json(&json!({"amount_cents": 1_000_000_000}))
            .send()
            .await?
            .error_for_status()?;
    }

    let watcher = Watcher::start(pool.clone(), engine.app.orchestrator.ended());
    let label = if args.open_loop {
        "placed"
    } else {
        "sagas ended"
    };
    let (progress, guard) = Progress::start(&format!("{kind}: {label}"), None);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let mut workers = Vec::new();
    for w in 0..args.clients() {
        let (client, base, progress) = (client.clone(), base.clone(), progress.clone());
        let (skus, customers) = (skus.clone(), customers.clone());
        let (watcher, open_loop) = (watcher.clone(), args.open_loop);
        workers.push(tokio::spawn(async move {
            let mut sent: Vec<(Uuid, DateTime<Utc>)> = Vec::new();
            let mut n = w;
            while Instant::now() < deadline {
                n += 1;
                let body = json!({
                    "customer_id": customers[n % customers.len()],
                    "lines": [{"sku": skus[n % skus.len()], "quantity": 1, "unit_price_cents": 1_00}],
                });
                let at = Utc::now();
                let Ok(r) = client.post(format!("{base}/orders")).json(&body).send().await else { continue };
                if r.status() != reqwest::StatusCode::ACCEPTED {
                    continue;
                }
                let Ok(v) = r.json::<serde_json::Value>().await else { continue };
                let Some(id) = v["saga_id"].as_str().and_then(|s| s.parse().ok()) else { continue };
                sent.push((id, at));
                if !open_loop {
                    // Ends with the drain deadline at the latest: the run reports it unfinished.
                    let _ = tokio::time::timeout(DRAIN, watcher.ended(id)).await;
                }
                progress.add(1);
            }
            sent
        }));
    }
    let mut sent: HashMap<Uuid, DateTime<Utc>> = HashMap::new();
    for w in workers {
        sent.extend(w.await?);
    }
    drop(guard);
    watcher.stop();
    let placed = sent.len();
    let (progress, guard) =
        Progress::start(&format!("{kind}: sagas finished"), Some(placed as u64));
    let drain_deadline = Instant::now() + DRAIN;
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sagas WHERE state IN ('completed', 'compensated', 'failed')",
        )
        .fetch_one(pool)
        .await?;
        progress.add((done as u64).saturating_sub(progress.get()));
        if done as usize >= placed || Instant::now() > drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(guard);
    let finished: Vec<(Uuid, DateTime<Utc>)> =
        sqlx::query_as("SELECT saga_id, updated_at FROM sagas WHERE state IN ('completed', 'compensated', 'failed')")
            .fetch_all(pool)
            .await?;
    let mut latencies = Latencies::default();
    let first_sent = sent.values().min().copied().unwrap_or_else(Utc::now);
    let mut last_done = first_sent;
    for (id, done_at) in &finished {
        if let Some(at) = sent.get(id) {
            latencies.record((*done_at - *at).to_std().unwrap_or_default());
            last_done = last_done.max(*done_at);
        }
    }
    let span = (last_done - first_sent)
        .to_std()
        .unwrap_or(Duration::from_secs(1));
    engine.stop().await;
    Ok(Outcome {
        placed,
        completed: latencies.len(),
        rate: latencies.len() as f64 / span.as_secs_f64().max(0.001),
        latencies,
    })
}

/// The longest wait for sagas to end after the last order.
const DRAIN: Duration = Duration::from_secs(120);

/// Tells clients when their saga has ended, from the orchestrator's [`Orchestrator::ended`]
/// notices (the engine runs in this process), so that telling costs the database nothing.
/// A query of every awaited saga's state still runs now and then, and at once when the
/// notices were missed (a receiver that fell behind), so no client waits for a notice that
/// came before it started waiting. Latencies are taken from the sagas' own end times, so
/// this only decides when a client places its next order.
///
/// [`Orchestrator::ended`]: sagaflow_engine::saga::Orchestrator::ended
#[derive(Clone)]
struct Watcher {
    waiting: std::sync::Arc<std::sync::Mutex<HashMap<Uuid, tokio::sync::oneshot::Sender<()>>>>,
    stop: tokio_util::sync::CancellationToken,
}

impl Watcher {
    /// How often every awaited saga's state is read from the database.
    const POLL: Duration = Duration::from_millis(500);

    fn start(pool: PgPool, mut ended: tokio::sync::broadcast::Receiver<Uuid>) -> Watcher {
        use tokio::sync::broadcast::error::RecvError;
        let watcher = Watcher {
            waiting: Default::default(),
            stop: tokio_util::sync::CancellationToken::new(),
        };
        let w = watcher.clone();
        tokio::spawn(async move {
            let mut poll = tokio::time::interval(Self::POLL);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = w.stop.cancelled() => break,
                    notice = ended.recv() => match notice {
                        Ok(id) => {
                            w.resolve([id]);
                            continue;
                        }
                        Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => {
                            w.stop.cancelled().await;
                            break;
                        }
                    },
                    _ = poll.tick() => {}
                }
                w.poll(&pool).await;
            }
        });
        watcher
    }

    fn resolve(&self, ended: impl IntoIterator<Item = Uuid>) {
        let mut waiting = self.waiting.lock().expect("not poisoned");
        for id in ended {
            if let Some(tx) = waiting.remove(&id) {
                let _ = tx.send(());
            }
        }
    }

    /// Reads the states of all awaited sagas and resolves those that ended.
    async fn poll(&self, pool: &PgPool) {
        let ids: Vec<Uuid> = self
            .waiting
            .lock()
            .expect("not poisoned")
            .keys()
            .copied()
            .collect();
        if ids.is_empty() {
            return;
        }
        match sqlx::query_scalar(
            // A join, not `saga_id = ANY($1)`: that one may be planned as a scan of the whole
            // table once the statement's generic plan is taken.
            "SELECT s.saga_id FROM UNNEST($1::uuid[]) AS w(saga_id)
             JOIN sagas s ON s.saga_id = w.saga_id
             WHERE s.state IN ('completed', 'compensated', 'failed')",
        )
        .bind(&ids)
        .fetch_all(pool)
        .await
        {
            Ok(ended) => self.resolve(ended),
            Err(e) => tracing::warn!(error = %e, "bench: cannot read saga states"),
        }
    }

    /// Resolves once saga `id` is in a terminal state.
    async fn ended(&self, id: Uuid) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waiting.lock().expect("not poisoned").insert(id, tx);
        let _ = rx.await;
    }

    fn stop(&self) {
        self.stop.cancel();
    }
}
