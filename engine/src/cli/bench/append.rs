//! `bench append`: the workload's command over HTTP at a fixed
//! concurrency for a fixed time, beside the raw baseline of the same INSERTs (one event row
//! and one outbox row per transaction) issued directly with sqlx at the same concurrency.

use std::time::{Duration, Instant};

use std::sync::Arc;

use clap::Args;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use super::{bench_database, reset, spawn_server, workload, Latencies, Progress};
use crate::app::{App, Options, Request, Workload};
use crate::cli::config::{mask_url, DatabaseArgs};
use crate::ops::housekeeping;
use crate::transport::postgres::PostgresTransport;
use crate::transport::TopicLayout;

/// The flags of `bench append`.
#[derive(Debug, Clone, Args)]
pub struct AppendArgs {
    /// Concurrent clients (HTTP clients, and sqlx connections for the baseline).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Seconds each phase runs.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// How many times to run the pair of phases (baseline, then sagaflow).
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,
    /// Also, in each round, the workload's per-stream command sent by every client to a
    /// stream of its own, then by every client to one stream (a hot aggregate), and the ratio
    /// of the two.
    #[arg(long)]
    pub hot: bool,
}

pub(crate) struct PhaseResult {
    ok: u64,
    failed: u64,
    elapsed: Duration,
    latencies: Latencies,
}

impl PhaseResult {
    pub(crate) fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

pub(crate) async fn run(
    app: &App,
    args: AppendArgs,
    database: &DatabaseArgs,
) -> anyhow::Result<()> {
    let workload = workload(app)?;
    let pool_size = args.concurrency as u32 + 2;
    let (url, pool) = bench_database(app, database, pool_size).await?;
    println!(
        "bench append: {} clients, {} s per phase, {} round(s), database {}",
        args.concurrency,
        args.seconds,
        args.rounds,
        mask_url(&url)
    );
    // What a deployment's relay component does for the command side: tables that grew are
    // analyzed, so cached plans made on the emptied tables of each phase are replaced. Both
    // phases run with it. (Its vacuum of queue tables is left out: nothing drains the outbox
    // here, so there is nothing for it to reclaim.)
    let analyzer = tokio_util::sync::CancellationToken::new();
    tokio::spawn(housekeeping::run(pool.clone(), None, analyzer.clone()));
    let _stop_analyzer = analyzer.drop_guard();
    let transport = Arc::new(PostgresTransport::new(pool.clone(), TopicLayout::default()));
    let service = app.build(pool.clone(), transport, &Options::default())?;
    let addr = spawn_server(service.router).await?;
    let base = format!("http://{addr}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let duration = Duration::from_secs(args.seconds);

    let mut raw_total = (0u64, Duration::ZERO);
    let mut http_total = (0u64, Duration::ZERO);
    // Summed rates of the distinct-streams and the one-stream phases.
    let mut hot_total = (0f64, 0f64);
    println!(
        "{:<34} {:>9} {:>7} {:>10} {:>8} {:>8}",
        "phase", "ok", "failed", "per second", "p50 ms", "p99 ms"
    );
    for round in 1..=args.rounds {
        reset(&pool).await?;
        let mut raw = raw_phase(&pool, &workload, args.concurrency, duration).await?;
        print_row(&format!("raw sqlx INSERTs (round {round})"), &mut raw);
        raw_total.0 += raw.ok;
        raw_total.1 += raw.elapsed;

        reset(&pool).await?;
        let orders: Requests = {
            let (workload, concurrency) = (workload.clone(), args.concurrency);
            Arc::new(move |w, k| workload.command(w + k * concurrency))
        };
        let mut http = http_phase(
            &client,
            &base,
            "sagaflow",
            args.concurrency,
            duration,
            orders,
        )
        .await?;
        let path = workload.command(0).path;
        print_row(&format!("sagaflow POST {path} (round {round})"), &mut http);
        http_total.0 += http.ok;
        http_total.1 += http.elapsed;

        if args.hot {
            let Some(one) = workload.stream_command(0) else {
                anyhow::bail!("the workload has no per-stream command (Workload::stream_command)");
            };
            reset(&pool).await?;
            // Streams no earlier phase used: the engine's cache outlives the tables' reset.
            let first = round as usize * 100_000;
            let mut distinct = http_phase(
                &client,
                &base,
                "a stream each",
                args.concurrency,
                duration,
                stream_requests(&workload, first, false),
            )
            .await?;
            print_row(
                &format!("a stream per client (round {round})"),
                &mut distinct,
            );
            hot_total.0 += distinct.rate();
            reset(&pool).await?;
            let mut hot = http_phase(
                &client,
                &base,
                "one stream",
                args.concurrency,
                duration,
                stream_requests(&workload, first + 50_000, true),
            )
            .await?;
            print_row(
                &format!("one stream, all clients (round {round})"),
                &mut hot,
            );
            hot_total.1 += hot.rate();
            println!("  (the per-stream command: {} {})", one.path, one.body);
        }
    }
    if args.hot {
        println!(
            "hot/distinct: {:.2} (target >= 0.80)",
            if hot_total.0 > 0.0 {
                hot_total.1 / hot_total.0
            } else {
                0.0
            }
        );
    }
    let raw_rate = raw_total.0 as f64 / raw_total.1.as_secs_f64();
    let http_rate = http_total.0 as f64 / http_total.1.as_secs_f64();
    println!("raw baseline:      {raw_rate:>9.0} tx/s");
    println!("sagaflow commands: {http_rate:>9.0} commands/s");
    let ratio = |rate: f64| if raw_rate > 0.0 { rate / raw_rate } else { 0.0 };
    // The main command may do more than one event and its message: a placed order starts its
    // saga in its transaction. The per-stream command (a deposit) starts nothing, so it is
    // the one held to the baseline.
    println!(
        "ratio sagaflow/raw: {:.2} (the workload's command, with whatever its transaction starts)",
        ratio(http_rate)
    );
    if args.hot {
        println!(
            "ratio a stream per client/raw: {:.2} (target >= 0.80)",
            ratio(hot_total.0 / f64::from(args.rounds.max(1)))
        );
    }
    Ok(())
}

fn print_row(label: &str, r: &mut PhaseResult) {
    println!(
        "{:<34} {:>9} {:>7} {:>10.0} {:>8.2} {:>8.2}",
        label,
        r.ok,
        r.failed,
        r.rate(),
        r.latencies.percentile_ms(50.0),
        r.latencies.percentile_ms(99.0)
    );
}

/// Which request a client sends: `(client, k)` for its `k`-th request, counting from 1.
type Requests = Arc<dyn Fn(usize, usize) -> Request + Send + Sync>;

/// `concurrency` HTTP clients sending `requests` for `duration`; a request counts when it is
/// answered `202 Accepted`.
async fn http_phase(
    client: &reqwest::Client,
    base: &str,
    label: &'static str,
    concurrency: usize,
    duration: Duration,
    requests: Requests,
) -> anyhow::Result<PhaseResult> {
    let (progress, _guard) = Progress::start(label, None);
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let client = client.clone();
        let (base, requests) = (base.to_owned(), requests.clone());
        let progress = progress.clone();
        workers.push(tokio::spawn(async move {
            let mut lat = Latencies::default();
            let mut failed = 0u64;
            let mut k = 0;
            while Instant::now() < deadline {
                k += 1;
                let request = requests(w, k);
                let t = Instant::now();
                let url = format!("{base}{}", request.path);
                let ok = match client.post(&url).json(&request.body).send().await {
                    Ok(r) => r.status() == reqwest::StatusCode::ACCEPTED && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    lat.record(t.elapsed());
                    progress.add(1);
                } else {
                    failed += 1;
                }
            }
            (lat, failed)
        }));
    }
    collect(workers, start).await
}

/// The workload's per-stream command from every client: to stream `first` with `hot`,
/// otherwise to a stream per client from `first`.
fn stream_requests(workload: &Arc<dyn Workload>, first: usize, hot: bool) -> Requests {
    let workload = workload.clone();
    Arc::new(move |w, _| {
        let stream = if hot { first } else { first + w };
        workload.stream_command(stream).expect("checked before")
    })
}

pub(crate) async fn raw_phase(
    pool: &PgPool,
    workload: &Arc<dyn Workload>,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<PhaseResult> {
    let (progress, _guard) = Progress::start("raw", None);
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let pool = pool.clone();
        let progress = progress.clone();
        let workload = workload.clone();
        workers.push(tokio::spawn(async move {
            let mut lat = Latencies::default();
            let mut failed = 0u64;
            let mut n = w;
            while Instant::now() < deadline {
                n += concurrency;
                let payload = workload.command(n).body;
                let t = Instant::now();
                if raw_insert(&pool, &payload).await.is_ok() {
                    lat.record(t.elapsed());
                    progress.add(1);
                } else {
                    failed += 1;
                }
            }
            (lat, failed)
        }));
    }
    collect(workers, start).await
}

/// One event row and one outbox row in one transaction, as hand-written code would do it;
/// the event's payload is the size of a command's body.
async fn raw_insert(pool: &PgPool, payload: &Value) -> Result<(), sqlx::Error> {
    let message_id = Uuid::now_v7();
    let stream_id = format!("bench-{}", Uuid::now_v7());
    let metadata = json!({"correlation_id": Uuid::now_v7()});
    let envelope = json!({
        "message_id": message_id, "stream_id": stream_id, "stream_version": 1,
        "event_type": "bench_event", "schema_version": 1, "payload": payload, "metadata": metadata,
    });
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO events (stream_id, stream_version, message_id, event_type, schema_version, payload, metadata)
         VALUES ($1, 1, $2, 'bench_event', 1, $3, $4)",
    )
    .bind(&stream_id)
    .bind(message_id)
    .bind(payload)
    .bind(&metadata)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO outbox (shard, topic, partition_key, message_id, envelope) VALUES (0, 'bench.events', $1, $2, $3)",
    )
    .bind(&stream_id)
    .bind(message_id)
    .bind(envelope.to_string())
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

async fn collect(
    workers: Vec<tokio::task::JoinHandle<(Latencies, u64)>>,
    start: Instant,
) -> anyhow::Result<PhaseResult> {
    let mut latencies = Latencies::default();
    let mut failed = 0;
    for w in workers {
        let (l, f) = w.await?;
        latencies.merge(l);
        failed += f;
    }
    Ok(PhaseResult {
        ok: latencies.len() as u64,
        failed,
        elapsed: start.elapsed(),
        latencies,
    })
}
