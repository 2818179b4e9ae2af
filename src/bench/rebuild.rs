//! `sagaflow bench rebuild`: rebuilds every read model from a store of (by default) 1,000,000
//! events and reports events per second, beside the rate of a plain sequential read of the
//! same rows with sqlx measured in the same run.
//!
//! The store is written with one `INSERT … SELECT generate_series`: histories the domain could
//! have decided (every payload decodes into the domain's events), interleaved the way live
//! traffic interleaves them: 1,000 SKUs (~300 events each: restock, then reserve and
//! commit/release pairs), 10,000 accounts (~30 each: deposit, then authorize and capture/void
//! pairs) and 200,000 orders (placed, then confirmed, rejected or cancelled far later in the
//! log), so every page of a rebuild touches thousands of streams. Order ids are time-ordered
//! like the UUIDv7 ids `POST /orders` mints; customer ids are random.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use futures::TryStreamExt;
use sagaflow_projections::{RebuildOptions, RebuildProgress, StoredEvent, EVENT_COLUMNS};
use sqlx::PgPool;

use super::{bench_database, reset, Progress};
use crate::config::DatabaseArgs;

#[derive(Debug, Clone, Args)]
pub struct RebuildArgs {
    /// Events in the store.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: i64,
    /// Keep the store of a previous run if it holds exactly `--events` events.
    #[arg(long)]
    pub reuse: bool,
}

const SKUS: i64 = 1_000;
const ACCOUNTS: i64 = 10_000;

pub async fn run(args: RebuildArgs, database: &DatabaseArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.events >= 10, "--events must be at least 10");
    let (url, pool) = bench_database(database, 16).await?;
    println!(
        "bench rebuild: {} events, database {}",
        args.events,
        crate::config::mask_url(&url)
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await?;
    if args.reuse && stored == args.events {
        eprintln!("  reusing the {stored} stored events");
    } else {
        fill(&pool, args.events).await?;
    }

    let plain = plain_read(&pool, args.events).await?;
    let mut rows = vec![(
        "plain sequential read, all events".to_owned(),
        args.events as u64,
        plain,
    )];
    let (mut all_events, mut all_seconds) = (0u64, 0f64);
    for p in sagaflow_projections::registry() {
        let (events, seconds) = rebuild(&pool, p.name()).await?;
        verify(&pool, &*p, events).await?;
        rows.push((
            format!("rebuild {}", p.name()),
            events,
            events as f64 / seconds,
        ));
        all_events += events;
        all_seconds += seconds;
    }
    let all = all_events as f64 / all_seconds;
    rows.push(("rebuild, all three".to_owned(), all_events, all));

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
    println!("ratio rebuild (all three) / plain read: {:.2}", all / plain);
    println!("target: >= 50000 events/s");
    Ok(())
}

/// Writes `n` events in one statement (see the module's description).
async fn fill(pool: &PgPool, n: i64) -> anyhow::Result<()> {
    reset(pool).await?;
    // Order events are the g % 10 in 6..=9; each order has two, the second far later.
    let order_events = (0..10)
        .filter(|c| *c >= 6)
        .map(|c| (n - c + 9) / 10)
        .sum::<i64>();
    let orders = (order_events + 1) / 2;
    eprintln!("  writing {n} events ({orders} orders, {SKUS} SKUs, {ACCOUNTS} accounts)...");
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO events (stream_id, stream_version, message_id, event_type, schema_version, payload, metadata)
         SELECT s.stream_id, s.v, gen_random_uuid(), s.event_type, 1, s.payload,
                jsonb_build_object('correlation_id', gen_random_uuid())
         FROM (
           SELECT g,
             CASE WHEN c < 3 THEN 'inventory-SKU-' || (i % $2)
                  WHEN c < 6 THEN 'account-' || md5('account-' || (i % $3))::uuid
                  ELSE 'order-' || (lpad(to_hex(1700000000000 + i % $4), 12, '0') || '7'
                                    || substr(md5('order-' || (i % $4)), 1, 3) || '8'
                                    || substr(md5('order-' || (i % $4)), 4, 15))::uuid END AS stream_id,
             v,
             CASE WHEN c < 3 THEN
                    CASE WHEN v = 1 THEN 'stock_restocked' WHEN v % 2 = 0 THEN 'stock_reserved'
                         WHEN v % 4 = 1 THEN 'stock_committed' ELSE 'stock_released' END
                  WHEN c < 6 THEN
                    CASE WHEN v = 1 THEN 'funds_deposited' WHEN v % 2 = 0 THEN 'payment_authorized'
                         WHEN v % 4 = 1 THEN 'payment_captured' ELSE 'payment_voided' END
                  ELSE
                    CASE WHEN v = 1 THEN 'order_placed' WHEN i % 10 < 7 THEN 'order_confirmed'
                         WHEN i % 10 < 9 THEN 'order_rejected' ELSE 'order_cancelled' END
             END AS event_type,
             CASE WHEN c < 3 THEN
                    CASE WHEN v = 1 THEN jsonb_build_object('quantity', 1000000)
                         ELSE jsonb_build_object('quantity', 1, 'order_id',
                                md5('reservation-' || (i % $2) || '-' || (v - v % 2))::uuid) END
                  WHEN c < 6 THEN
                    CASE WHEN v = 1 THEN jsonb_build_object('amount_cents', 1000000000)
                         ELSE jsonb_build_object('amount_cents', 1000, 'order_id',
                                md5('hold-' || (i % $3) || '-' || (v - v % 2))::uuid) END
                  ELSE
                    CASE WHEN v = 1 THEN jsonb_build_object(
                             'customer_id', md5('account-' || (i % $4 % $3))::uuid,
                             'lines', jsonb_build_array(
                                 jsonb_build_object('sku', 'SKU-' || (i % $4 % $2), 'quantity', 2, 'unit_price_cents', 1250),
                                 jsonb_build_object('sku', 'SKU-' || ((i % $4 + 1) % $2), 'quantity', 1, 'unit_price_cents', 4999)),
                             'total_cents', 7499)
                         WHEN i % 10 < 7 THEN 'null'::jsonb
                         WHEN i % 10 < 9 THEN jsonb_build_object('reason', 'insufficient stock')
                         ELSE jsonb_build_object('reason', NULL) END
             END AS payload
           FROM (
             SELECT g, c, i,
                    CASE WHEN c < 3 THEN i / $2 + 1 WHEN c < 6 THEN i / $3 + 1 ELSE i / $4 + 1 END AS v
             FROM (
               SELECT g, g % 10 AS c,
                      CASE WHEN g % 10 < 3 THEN (g / 10) * 3 + g % 10
                           WHEN g % 10 < 6 THEN (g / 10) * 3 + g % 10 - 3
                           ELSE (g / 10) * 4 + g % 10 - 6 END AS i
               FROM generate_series(0, $1 - 1) g
             ) x
           ) y
         ) s
         ORDER BY s.g",
    )
    .bind(n)
    .bind(SKUS)
    .bind(ACCOUNTS)
    .bind(orders)
    .execute(pool)
    .await?;
    sqlx::query("VACUUM ANALYZE events").execute(pool).await?;
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

/// Rebuilds `name`; returns the events folded and the seconds it took.
async fn rebuild(pool: &PgPool, name: &str) -> anyhow::Result<(u64, f64)> {
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
    let job = sagaflow_projections::begin_rebuild(
        pool.clone(),
        name,
        RebuildOptions::default(),
        on_progress,
    )
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
async fn verify(
    pool: &PgPool,
    p: &dyn sagaflow_projections::Projection,
    events: u64,
) -> anyhow::Result<()> {
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
