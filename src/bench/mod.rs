//! `sagaflow bench …`: each benchmark measures sagaflow and, in the same run on the same
//! machine, a raw baseline doing the same work without sagaflow, and prints the ratio.
//! Shared machines are noisy: compare ratios, not absolute figures.

mod append;
mod rebuild;
mod relay;
mod saga;
mod stats;

pub use stats::{Latencies, Progress};

use clap::Subcommand;
use sqlx::PgPool;

use crate::config::{DatabaseArgs, TransportArgs};
use sagaflow_engine::db;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// HTTP PlaceOrder commands against raw event+outbox INSERTs at the same concurrency.
    Append(append::AppendArgs),
    /// Drain an outbox backlog through each transport, beside raw baselines.
    Relay(relay::RelayArgs),
    /// Place orders and measure completed sagas per second on each transport.
    Saga(saga::SagaArgs),
    /// Rebuild every read model from 1,000,000 stored events, beside a plain sequential read.
    Rebuild(rebuild::RebuildArgs),
}

pub async fn run(
    command: BenchCommand,
    database: &DatabaseArgs,
    transport: &TransportArgs,
) -> anyhow::Result<()> {
    match command {
        BenchCommand::Append(args) => append::run(args, database).await,
        BenchCommand::Relay(args) => relay::run(args, database, transport).await,
        BenchCommand::Saga(args) => saga::run(args, database, transport).await,
        BenchCommand::Rebuild(args) => rebuild::run(args, database).await,
    }
}

/// The database benchmarks use: `<name>_bench` beside the configured one, so a benchmark
/// never touches real data. It is created, migrated and emptied.
pub async fn bench_database(
    database: &DatabaseArgs,
    pool_size: u32,
) -> anyhow::Result<(String, PgPool)> {
    let mut url = url::Url::parse(&database.database_url)?;
    let name = url.path().trim_start_matches('/').to_owned();
    let name = if name.is_empty() {
        "sagaflow".to_owned()
    } else {
        name
    };
    url.set_path(&format!("/{name}_bench"));
    let url = url.to_string();
    db::ensure_database(&url).await?;
    let pool = db::connect(&url, pool_size).await?;
    db::migrate(&pool).await?;
    Ok((url, pool))
}

/// Empties the tables a benchmark writes, so every phase starts from the same state.
pub async fn reset(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("TRUNCATE events, outbox, idempotency_keys, message_log, message_log_heads")
        .execute(pool)
        .await?;
    sqlx::query("VACUUM ANALYZE events").execute(pool).await?;
    sqlx::query("VACUUM ANALYZE outbox").execute(pool).await?;
    Ok(())
}
