//! `bench retention`: what the tables that grow with traffic hold after many sagas. The whole
//! application runs in this process on the embedded transport, with the default retention;
//! `--sagas` sagas are started over HTTP, each request with an `Idempotency-Key`, and run to
//! their end. Then each table's rows and size are printed twice: as they are (no retention
//! window has passed yet, so nothing was pruned), and after one retention pass as if every
//! window had passed (windows of zero: the rules look only at a row's age against its window)
//! and a `VACUUM`, which is the size the tables settle at in a service that runs for longer
//! than its windows. A table's file does not shrink on disk after a delete; its pages are
//! reused by the rows that come next, which is what keeps it bounded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use sqlx::PgPool;

use super::{bench_database, reset, spawn_server, workload, Progress};
use crate::app::{App, Options};
use crate::cli::config::{mask_url, DatabaseArgs, TransportArgs, TransportKind};
use crate::ops::Retention;

/// The flags of `bench retention`.
#[derive(Debug, Clone, Args)]
pub struct RetentionArgs {
    /// Sagas to run.
    #[arg(long, default_value_t = 100_000)]
    pub sagas: u64,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

/// The tables whose size is reported: those that grow with traffic, and the event store and
/// the sagas beside them for scale.
const TABLES: &[&str] = &[
    "events",
    "sagas",
    "outbox",
    "message_log",
    "processed_messages",
    "idempotency_keys",
    "saga_deadlines",
    "dead_letters",
];

async fn sizes(pool: &PgPool) -> anyhow::Result<Vec<(&'static str, i64, i64)>> {
    let mut out = Vec::new();
    for table in TABLES {
        let (rows, bytes): (i64, i64) = sqlx::query_as(&format!(
            "SELECT (SELECT count(*) FROM {table}), pg_total_relation_size('{table}')"
        ))
        .fetch_one(pool)
        .await?;
        out.push((*table, rows, bytes));
    }
    Ok(out)
}

fn print_sizes(title: &str, sizes: &[(&str, i64, i64)]) {
    println!("{title}");
    println!("{:<20} {:>12} {:>12}", "table", "rows", "MiB");
    for (table, rows, bytes) in sizes {
        println!(
            "{:<20} {:>12} {:>12.1}",
            table,
            rows,
            *bytes as f64 / (1024.0 * 1024.0)
        );
    }
}

pub(crate) async fn run(
    app: &App,
    args: RetentionArgs,
    database: &DatabaseArgs,
    transport: &TransportArgs,
) -> anyhow::Result<()> {
    let workload = workload(app)?;
    let (url, pool) = bench_database(app, database, 16).await?;
    println!(
        "bench retention: {} sagas, {} requests in flight, embedded transport, default retention, database {}",
        args.sagas,
        args.concurrency,
        mask_url(&url)
    );
    reset(&pool).await?;
    sqlx::query(
        "TRUNCATE sagas, saga_deadlines, consumer_offsets, processed_messages, dead_letters, projection_status",
    )
    .execute(&pool)
    .await?;
    for p in &app.projections {
        sqlx::query(&format!("TRUNCATE {}", p.tables().join(", ")))
            .execute(&pool)
            .await?;
    }
    let transport_args = TransportArgs {
        transport: TransportKind::Postgres,
        ..transport.clone()
    };
    let transport = transport_args.connect(&pool, &app.topics()).await?;
    let service = app.build(pool.clone(), transport, &Options::default())?;
    let running = service.start(&app.components(), Default::default());
    let addr = spawn_server(service.router.clone()).await?;
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    for request in workload.setup() {
        client
            .post(format!("{base}{}", request.path))
            .json(&request.body)
            .send()
            .await?
            .error_for_status()?;
    }

    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let (progress, guard) = Progress::start("sagas accepted", Some(args.sagas));
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (client, base, next, progress, workload) = (
            client.clone(),
            base.clone(),
            next.clone(),
            progress.clone(),
            workload.clone(),
        );
        let total = args.sagas;
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return;
                }
                let request = workload.start_saga(n as usize);
                // Sent until accepted: an overloaded engine answers 503.
                loop {
                    let answer = client
                        .post(format!("{base}{}", request.path))
                        .header("Idempotency-Key", format!("retention-{n}"))
                        .json(&request.body)
                        .send()
                        .await;
                    match answer {
                        Ok(r) if r.status().is_success() => break,
                        Ok(r) if r.status().is_client_error() => break,
                        _ => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
                progress.add(1);
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    drop(guard);
    let (progress, guard) = Progress::start("sagas ended", Some(args.sagas));
    loop {
        let (ended, open): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state IN ('completed', 'compensated', 'failed')),
                    count(*) FILTER (WHERE state NOT IN ('completed', 'compensated', 'failed'))
             FROM sagas",
        )
        .fetch_one(&pool)
        .await?;
        progress.add((ended as u64).saturating_sub(progress.get()));
        let outbox = crate::outbox::depth(&pool).await?;
        if open == 0 && outbox == 0 && ended as u64 >= args.sagas {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(guard);
    // The projectors reach the end of the log.
    tokio::time::sleep(Duration::from_secs(3)).await;
    running.stop().await;
    println!(
        "{} sagas ended in {:.0} s",
        args.sagas,
        started.elapsed().as_secs_f64()
    );
    sqlx::query(&format!("VACUUM ANALYZE {}", TABLES.join(", ")))
        .execute(&pool)
        .await?;
    print_sizes(
        "\nafter the sagas, default retention (no window has passed yet):",
        &sizes(&pool).await?,
    );

    let passed = Retention {
        log: Duration::ZERO,
        processed: Duration::ZERO,
        idempotency_keys: Duration::ZERO,
        dead_letters: Duration::ZERO,
        ..Retention::default()
    };
    let pruned = Instant::now();
    let deleted = crate::ops::retention::prune(
        &pool,
        &app.consumer_groups(),
        &transport_args.layout(),
        &passed,
    )
    .await?;
    sqlx::query(&format!("VACUUM ANALYZE {}", TABLES.join(", ")))
        .execute(&pool)
        .await?;
    let mut deleted: Vec<_> = deleted.into_iter().collect();
    deleted.sort();
    println!(
        "\nretention pass as if every window had passed: {:.1} s, deleted {}",
        pruned.elapsed().as_secs_f64(),
        deleted
            .iter()
            .map(|(t, n)| format!("{n} from {t}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    print_sizes(
        "after the retention windows (files keep their size; their pages are reused):",
        &sizes(&pool).await?,
    );
    Ok(())
}
