//! `bench rebuild`: rebuilds every read model from a store of (by default) 1,000,000 events,
//! written by the application's workload, and reports events per second, beside the rate of
//! a plain sequential read of the same rows with sqlx measured in the same run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use futures::TryStreamExt;
use sqlx::PgPool;

use super::{bench_database, reset, workload, Progress};
use crate::app::{App, Workload};
use crate::cli::config::{mask_url, DatabaseArgs};
use crate::projection::{Projection, RebuildOptions, RebuildProgress, StoredEvent, EVENT_COLUMNS};

/// The flags of `bench rebuild`.
#[derive(Debug, Clone, Args)]
pub struct RebuildArgs {
    /// Events in the store.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: i64,
    /// Keep the store of a previous run if it holds exactly `--events` events.
    #[arg(long)]
    pub reuse: bool,
}

pub(crate) async fn run(
    app: &App,
    args: RebuildArgs,
    database: &DatabaseArgs,
) -> anyhow::Result<()> {
    anyhow::ensure!(args.events >= 10, "--events must be at least 10");
    let workload = workload(app)?;
    let (url, pool) = bench_database(app, database, 16).await?;
    println!(
        "bench rebuild: {} events, database {}",
        args.events,
        mask_url(&url)
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await?;
    if args.reuse && stored == args.events {
        eprintln!("  reusing the {stored} stored events");
    } else {
        fill(&pool, workload.as_ref(), args.events).await?;
    }

    let plain = plain_read(&pool, args.events).await?;
    let mut rows = vec![(
        "plain sequential read, all events".to_owned(),
        args.events as u64,
        plain,
    )];
    let (mut all_events, mut all_seconds) = (0u64, 0f64);
    for p in &app.projections {
        let (events, seconds) = rebuild(&pool, p.as_ref()).await?;
        verify(&pool, p.as_ref(), events).await?;
        rows.push((
            format!("rebuild {}", p.name()),
            events,
            events as f64 / seconds,
        ));
        all_events += events;
        all_seconds += seconds;
    }
    let all = all_events as f64 / all_seconds;
    rows.push(("rebuild, all of them".to_owned(), all_events, all));

    println!(
        "{:<36} {:>10} {:>12} {:>14}",
        "run", "events", "events/s", "vs plain read"
    );
    for (name, events, rate) in &rows {
        println!(
            "{name:<36} {events:>10} {rate:>12.0} {:>14.2}",
            rate / plain
        );
    }
    println!("ratio rebuild (all) / plain read: {:.2}", all / plain);
    println!("target: >= 50000 events/s");
    Ok(())
}

/// Writes `n` events with the application's workload, into an empty store.
async fn fill(pool: &PgPool, workload: &dyn Workload, n: i64) -> anyhow::Result<()> {
    reset(pool).await?;
    eprintln!("  writing {n} events...");
    let started = Instant::now();
    workload.seed_events(pool, n).await?;
    sqlx::query("VACUUM ANALYZE events").execute(pool).await?;
    let written: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?;
    anyhow::ensure!(written == n, "the workload wrote {written} events, not {n}");
    eprintln!(
        "  wrote {n} events in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The baseline: every event row, the columns a rebuild reads, decoded into the same type, in
/// one sequential read.
async fn plain_read(pool: &PgPool, n: i64) -> anyhow::Result<f64> {
    let (progress, guard) = Progress::start("plain read", Some(n as u64));
    let started = Instant::now();
    let sql = format!("SELECT {EVENT_COLUMNS} FROM events ORDER BY global_position");
    let mut rows = sqlx::query(&sql).fetch(pool);
    let mut read = 0u64;
    let mut bytes = 0usize;
    while let Some(row) = rows.try_next().await? {
        let e = StoredEvent::from_row(&row)?;
        bytes += e.stream_id.len();
        read += 1;
        if read % 10_000 == 0 {
            progress.add(10_000);
        }
    }
    let elapsed = started.elapsed();
    drop(guard);
    anyhow::ensure!(read as i64 == n, "read {read} events, expected {n}");
    std::hint::black_box(bytes);
    Ok(read as f64 / elapsed.as_secs_f64())
}

/// Rebuilds `projection`; returns the events folded and the seconds it took.
async fn rebuild(pool: &PgPool, projection: &dyn Projection) -> anyhow::Result<(u64, f64)> {
    let name = projection.name();
    let started = Instant::now();
    // Counts events folded, then rows written (most rows are written once all is folded).
    let (progress, guard) = Progress::start(&format!("rebuild {name}: events + rows"), None);
    let reported = Arc::new(AtomicU64::new(0));
    let on_progress = {
        let reported = reported.clone();
        Arc::new(move |p: &RebuildProgress| {
            let now = p.events_processed + p.rows_written;
            let before = reported.fetch_max(now, Ordering::Relaxed);
            progress.add(now.saturating_sub(before));
        })
    };
    let job = projection
        .begin_rebuild(pool.clone(), RebuildOptions::default(), on_progress)
        .await?;
    let report = job.run.await?;
    let seconds = started.elapsed().as_secs_f64();
    drop(guard);
    eprintln!(
        "  rebuilt {name}: {} events, {} row writes in {seconds:.1}s",
        report.events, report.rows_written
    );
    Ok((report.events, seconds))
}

/// Checks the rebuilt table: one row per stream, each at its stream's last version (versions
/// are gap-free, so the versions sum to the number of events).
async fn verify(pool: &PgPool, p: &dyn Projection, events: u64) -> anyhow::Result<()> {
    let like = format!("{}%", p.stream_prefix());
    let streams: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT stream_id) FROM events WHERE stream_id LIKE $1")
            .bind(&like)
            .fetch_one(pool)
            .await?;
    let (rows, versions): (i64, i64) = sqlx::query_as(&format!(
        "SELECT count(*), COALESCE(sum(version), 0)::int8 FROM {}",
        p.tables()[0]
    ))
    .fetch_one(pool)
    .await?;
    anyhow::ensure!(
        rows == streams && versions as u64 == events,
        "{}: {rows} rows reflecting {versions} events, expected {streams} rows and {events} events",
        p.name()
    );
    Ok(())
}
