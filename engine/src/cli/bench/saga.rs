//! `bench saga`: sagas started over HTTP (the workload's request) at a fixed concurrency for
//! a fixed time against a whole engine in this process (relay, orchestrator, participants), on
//! each transport; reports completed sagas per second and the latency from the request to the
//! saga's terminal state. Beside it, in the same run, the raw baseline of one event+outbox
//! transaction, which is the unit a saga is made of: before the sagas and again after them
//! (on emptied tables, as the first), with the sagas' rate as a ratio to each, since the
//! baseline itself moves from one run to the next on a shared machine.
//!
//! Each client starts a saga and waits until it has ended before it starts the next, so
//! `--concurrency` sagas are in flight and the figures are those of a steady state. With
//! `--open-loop` clients start sagas as fast as they are accepted instead: the sagas fall
//! behind, and the run measures how fast the engine works off that backlog.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::Args;
use sqlx::PgPool;
use uuid::Uuid;

use super::{bench_database, reset, spawn_server, workload, Latencies, Progress};
use crate::app::{App, Component, Options, Workload};
use crate::cli::config::{mask_url, DatabaseArgs, TransportArgs, TransportKind};
use crate::saga::read_model;

/// The flags of `bench saga`.
#[derive(Debug, Clone, Args)]
pub struct SagaArgs {
    /// Concurrent HTTP clients starting sagas [default: 512, or 16 with --open-loop]. Each
    /// waits for its saga, so this is the number of sagas in flight; fewer leave the engine
    /// idle between batches.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Seconds sagas are started for.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Skip the Kafka transport even if brokers are configured.
    #[arg(long)]
    pub postgres_only: bool,
    /// Skip the embedded transport (measure Kafka alone).
    #[arg(long, conflicts_with = "postgres_only")]
    pub kafka_only: bool,
    /// Clients do not wait for their saga to end before starting the next.
    #[arg(long)]
    pub open_loop: bool,
    /// Sagas started at fixed arrival rates (sagas per second, comma-separated: `10,100,300`),
    /// each for `--seconds`, whatever the engine's pace: the latency a user sees at that load,
    /// from the placement of the saga's start event to the saga's end (both stamped by the
    /// server), as p50, p99 and p99.9. Replaces the closed-loop run.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["open_loop", "concurrency"])]
    pub rate: Vec<f64>,
    /// Run the sagas' commands in the orchestrator's transaction (local steps, as `serve
    /// --local-steps`); `false` sends them through the participants' topics.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub local_steps: bool,
}

impl SagaArgs {
    fn options(&self) -> Options {
        Options {
            local_steps: self.local_steps,
            ..Default::default()
        }
    }
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

pub(crate) async fn run(
    app: &App,
    args: SagaArgs,
    database: &DatabaseArgs,
    transport: &TransportArgs,
) -> anyhow::Result<()> {
    let workload = workload(app)?;
    let (url, pool) = bench_database(app, database, POOL_SIZE as u32).await?;
    println!(
        "bench saga: {} clients {}, {} s of sagas per transport, {}, database {}",
        args.clients(),
        if args.open_loop {
            "starting sagas without waiting for them"
        } else {
            "each waiting for its saga to end before the next"
        },
        args.seconds,
        if args.local_steps {
            "local steps (commands run in the orchestrator's transaction)"
        } else {
            "every command through its participant's topic"
        },
        mask_url(&url)
    );
    reset(&pool).await?;
    let raw_clients = args.clients().min(POOL_SIZE);
    let raw =
        super::append::raw_phase(&pool, &workload, raw_clients, Duration::from_secs(5)).await?;
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
    if !args.rate.is_empty() {
        for (name, transport_args) in runs {
            println!(
                "{:<10} {:>8} {:>8} {:>10} {:>9} {:>9} {:>9} {:>9}",
                "transport", "rate/s", "sagas", "ended/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
            );
            for &rate in &args.rate {
                let r = at_rate(app, &workload, &pool, rate, &args, &transport_args).await?;
                let mut l = r.latencies;
                println!(
                    "{:<10} {:>8.0} {:>8} {:>10.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                    name,
                    rate,
                    r.completed,
                    r.rate,
                    l.percentile_ms(50.0),
                    l.percentile_ms(99.0),
                    l.percentile_ms(99.9),
                    l.percentile_ms(100.0)
                );
                if let Some(w) = &r.work {
                    let hops: Vec<String> = w
                        .hops
                        .iter()
                        .map(|(hop, n, p50, p99)| format!("{hop} {p50:.1}/{p99:.1} ms ({n})"))
                        .collect();
                    println!(
                        "           per saga: {:.1} KB of WAL, {:.1} commits; waits p50/p99 at each hop: {}",
                        w.wal_bytes / 1024.0,
                        w.commits,
                        if hops.is_empty() {
                            "(embedded transport only)".to_owned()
                        } else {
                            hops.join(", ")
                        }
                    );
                }
            }
        }
        let after = raw_after(&pool, &workload, raw_clients).await?;
        println!(
            "raw baseline: {:.0} event+outbox transactions/s with {raw_clients} clients before the sagas, {after:.0} after",
            raw.rate()
        );
        return Ok(());
    }
    let mut rows = Vec::new();
    for (name, transport_args) in runs {
        rows.push((
            name,
            one_transport(app, &workload, &pool, &args, &transport_args).await?,
        ));
    }
    let after = raw_after(&pool, &workload, raw_clients).await?;
    println!(
        "{:<12} {:>8} {:>10} {:>12} {:>10} {:>10}",
        "transport", "sagas", "completed", "sagas/s", "p50 ms", "p99 ms"
    );
    let before = raw.rate();
    let mut ratios = Vec::new();
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
        ratios.push(format!(
            "{name} {:.2} / {:.2}",
            r.rate / before,
            r.rate / after
        ));
    }
    println!(
        "raw baseline: {before:.0} event+outbox transactions/s with {raw_clients} clients before the sagas, {after:.0} after"
    );
    // The baseline moves from one run to the next on a shared machine: the ratio to each
    // brackets the noise.
    println!(
        "ratio sagas/raw (to the baseline before / after): {}",
        ratios.join(", ")
    );
    Ok(())
}

/// The raw baseline again, after the sagas, on emptied tables as the first one was: the
/// rate of the same work at the end of the run.
async fn raw_after(
    pool: &PgPool,
    workload: &Arc<dyn Workload>,
    clients: usize,
) -> anyhow::Result<f64> {
    reset(pool).await?;
    let raw = super::append::raw_phase(pool, workload, clients, Duration::from_secs(5)).await?;
    Ok(raw.rate())
}

struct Outcome {
    placed: usize,
    completed: usize,
    rate: f64,
    latencies: Latencies,
    /// What a saga cost the database, and where its latency sat (fixed-rate runs).
    work: Option<Work>,
}

/// What the sagas of a fixed-rate run cost the database, per saga, and how long their
/// messages waited at each kind of hop.
struct Work {
    wal_bytes: f64,
    commits: f64,
    /// (hop, messages, p50 ms, p99 ms), embedded transport only (read from its log).
    hops: Vec<(String, i64, f64, f64)>,
}

/// The database's WAL position (bytes) and committed transactions so far.
async fn database_counters(pool: &PgPool) -> anyhow::Result<(i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint,
                (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database())",
    )
    .fetch_one(pool)
    .await?)
}

/// How long messages waited at each hop, from the embedded log: `log` from a message's
/// creation (its UUIDv7 id) to its append to the log (about zero now that writers append
/// themselves, the append's time being its transaction's start; through the relay it was the
/// writer's commit and the relay's wake-up and batch), `participant` from the append to the
/// participant's transaction,
/// `orchestrator` from the append of a start event or reply to the saga event it caused.
async fn hop_waits(pool: &PgPool) -> anyhow::Result<Vec<(String, i64, f64, f64)>> {
    Ok(sqlx::query_as(
        "WITH m AS (
             SELECT message_id, appended_at,
                    to_timestamp((('x' || substr(replace(message_id::text, '-', ''), 1, 12))::bit(48)::bigint) / 1000.0) AS made
             FROM message_log),
         waits AS (
             SELECT 'log' AS hop, extract(epoch FROM appended_at - made) * 1000 AS ms FROM m
             UNION ALL
             SELECT 'participant', extract(epoch FROM p.processed_at - m.appended_at) * 1000
             FROM processed_messages p JOIN m USING (message_id)
             UNION ALL
             SELECT 'orchestrator', extract(epoch FROM e.recorded_at - m.appended_at) * 1000
             FROM events e JOIN m ON m.message_id = (e.metadata->>'causation_id')::uuid
             WHERE e.stream_id LIKE 'saga-%')
         SELECT hop, count(*),
                (percentile_cont(0.5) WITHIN GROUP (ORDER BY ms))::float8,
                (percentile_cont(0.99) WITHIN GROUP (ORDER BY ms))::float8
         FROM waits GROUP BY hop ORDER BY hop",
    )
    .fetch_all(pool)
    .await?)
}

async fn one_transport(
    app: &App,
    workload: &Arc<dyn Workload>,
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
    let transport = transport_args.connect(pool, &app.topics()).await?;
    let kind = transport.kind();
    let components = app.components().without(Component::Projections);
    let service = app.build(pool.clone(), transport, &args.options())?;
    let running = service.start(&components, Default::default());
    let addr = spawn_server(service.router.clone()).await?;
    let base = format!("http://{addr}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients())
        .build()?;
    for request in workload.setup() {
        client
            .post(format!("{base}{}", request.path))
            .json(&request.body)
            .send()
            .await?
            .error_for_status()?;
    }

    let watcher = Watcher::start(pool.clone(), service.orchestrator.ended());
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
        let workload = workload.clone();
        let (watcher, open_loop) = (watcher.clone(), args.open_loop);
        let clients = args.clients();
        workers.push(tokio::spawn(async move {
            let mut sent: Vec<(Uuid, DateTime<Utc>)> = Vec::new();
            let mut n = w;
            while Instant::now() < deadline {
                n += clients;
                let request = workload.start_saga(n);
                let at = Utc::now();
                let url = format!("{base}{}", request.path);
                let Ok(r) = client.post(url).json(&request.body).send().await else {
                    continue;
                };
                if r.status() != reqwest::StatusCode::ACCEPTED {
                    continue;
                }
                let Ok(v) = r.json::<serde_json::Value>().await else {
                    continue;
                };
                let Some(id) = v["saga_id"].as_str().and_then(|s| s.parse().ok()) else {
                    continue;
                };
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
        let done = read_model::ended(pool).await?.len() as i64;
        progress.add((done as u64).saturating_sub(progress.get()));
        if done as usize >= placed || Instant::now() > drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(guard);
    let finished = read_model::ended(pool).await?;
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
    running.stop().await;
    Ok(Outcome {
        placed,
        completed: latencies.len(),
        rate: latencies.len() as f64 / span.as_secs_f64().max(0.001),
        latencies,
        work: None,
    })
}

/// Sagas started at `rate` per second for `args.seconds`, without waiting for any: each at
/// its arrival time. Latency runs from the placement of the start event (its `recorded_at`) to
/// the saga's end, both from the database's clock.
async fn at_rate(
    app: &App,
    workload: &Arc<dyn Workload>,
    pool: &PgPool,
    rate: f64,
    args: &SagaArgs,
    transport_args: &TransportArgs,
) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        rate > 0.0,
        "a rate is a positive number of sagas per second"
    );
    reset(pool).await?;
    sqlx::query(
        "TRUNCATE sagas, saga_deadlines, consumer_offsets, processed_messages, dead_letters",
    )
    .execute(pool)
    .await?;
    let transport = transport_args.connect(pool, &app.topics()).await?;
    let kind = transport.kind();
    let components = app.components().without(Component::Projections);
    let service = app.build(pool.clone(), transport, &args.options())?;
    let running = service.start(&components, Default::default());
    let addr = spawn_server(service.router.clone()).await?;
    let base = format!("http://{addr}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    for request in workload.setup() {
        client
            .post(format!("{base}{}", request.path))
            .json(&request.body)
            .send()
            .await?
            .error_for_status()?;
    }
    // A moment of warm-up at the rate, not measured.
    let warm = (rate as usize).clamp(1, 200);
    let total = (rate * args.seconds as f64).round() as usize;
    let (progress, guard) =
        Progress::start(&format!("{kind}: {rate}/s placed"), Some(total as u64));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let (wal_before, commits_before) = database_counters(pool).await?;
    let started = tokio::time::Instant::now();
    let mut sends = tokio::task::JoinSet::new();
    for n in 0..warm + total {
        tokio::time::sleep_until(started + interval.mul_f64(n as f64)).await;
        let (client, base, workload, progress) = (
            client.clone(),
            base.clone(),
            workload.clone(),
            progress.clone(),
        );
        sends.spawn(async move {
            let request = workload.start_saga(1_000_000 + n);
            let answer = client
                .post(format!("{base}{}", request.path))
                .json(&request.body)
                .send()
                .await
                .ok()?;
            let body: serde_json::Value = answer.json().await.ok()?;
            let id: Uuid = body["saga_id"].as_str()?.parse().ok()?;
            if n >= warm {
                progress.add(1);
                Some(id)
            } else {
                None
            }
        });
    }
    let mut measured = Vec::with_capacity(total);
    while let Some(id) = sends.join_next().await {
        if let Some(id) = id? {
            measured.push(id);
        }
    }
    drop(guard);
    let drain_deadline = Instant::now() + DRAIN;
    loop {
        let done = read_model::ended_among(pool, &measured).await?.len();
        if done >= measured.len() || Instant::now() > drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // From the start event's placement (the event the saga's first event names as its cause)
    // to the saga's last update.
    let rows: Vec<(DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT placed.recorded_at, s.updated_at
         FROM UNNEST($1::uuid[]) AS w(saga_id)
         JOIN sagas s ON s.saga_id = w.saga_id
         JOIN events started ON started.stream_id = 'saga-' || s.saga_id AND started.stream_version = 1
         JOIN events placed ON placed.message_id = (started.metadata->>'causation_id')::uuid
         WHERE s.state IN ('completed', 'compensated', 'failed')",
    )
    .bind(&measured)
    .fetch_all(pool)
    .await?;
    let (wal_after, commits_after) = database_counters(pool).await?;
    let ended: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sagas WHERE state IN ('completed', 'compensated', 'failed')",
    )
    .fetch_one(pool)
    .await?;
    let per_saga = |d: i64| d as f64 / ended.max(1) as f64;
    let work = Work {
        wal_bytes: per_saga(wal_after - wal_before),
        commits: per_saga(commits_after - commits_before),
        hops: hop_waits(pool).await?,
    };
    running.stop().await;
    let mut latencies = Latencies::default();
    let (mut first, mut last) = (None::<DateTime<Utc>>, None::<DateTime<Utc>>);
    for (placed, ended) in &rows {
        latencies.record((*ended - *placed).to_std().unwrap_or_default());
        first = Some(first.map_or(*placed, |f| f.min(*placed)));
        last = Some(last.map_or(*ended, |l| l.max(*ended)));
    }
    let span = match (first, last) {
        (Some(f), Some(l)) => (l - f).to_std().unwrap_or(Duration::from_secs(1)),
        _ => Duration::from_secs(1),
    };
    Ok(Outcome {
        placed: measured.len(),
        completed: latencies.len(),
        rate: latencies.len() as f64 / span.as_secs_f64().max(0.001),
        latencies,
        work: Some(work),
    })
}

/// The longest wait for sagas to end after the last one started.
const DRAIN: Duration = Duration::from_secs(120);

/// Tells clients when their saga has ended, from the orchestrator's [`Orchestrator::ended`]
/// notices (the engine runs in this process), so that telling costs the database nothing.
/// A query of every awaited saga's state still runs now and then, and at once when the
/// notices were missed (a receiver that fell behind), so no client waits for a notice that
/// came before it started waiting. Latencies are taken from the sagas' own end times, so
/// this only decides when a client starts its next saga.
///
/// [`Orchestrator::ended`]: crate::saga::Orchestrator::ended
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
        match read_model::ended_among(pool, &ids).await {
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
