//! `bench …`: each benchmark measures the application and, in the same run on the same
//! machine, a raw baseline doing the same work without sagaflow, and prints the ratio.
//! Shared machines are noisy: compare ratios, not absolute figures. `bench saga`, `bench
//! append` and `bench rebuild` drive the application as its [`Workload`] says; `bench relay`
//! needs nothing of it.

mod append;
mod chaos;
mod rebuild;
mod relay;
mod retention;
mod saga;
mod stats;

pub(crate) use stats::{Latencies, Progress};

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use clap::Subcommand;
use sqlx::PgPool;

use super::config::{DatabaseArgs, TransportArgs};
use crate::app::{App, Workload};
use crate::db;

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// HTTP commands (the workload's) against raw event+outbox INSERTs at the same concurrency.
    Append(append::AppendArgs),
    /// Drain an outbox backlog through each transport, beside raw baselines.
    Relay(relay::RelayArgs),
    /// Start sagas (the workload's) and measure completed sagas per second on each transport.
    Saga(saga::SagaArgs),
    /// Rebuild every read model from 1,000,000 stored events, beside a plain sequential read.
    Rebuild(rebuild::RebuildArgs),
    /// Run the application as separate processes under traffic and seeded faults, then check
    /// that nothing was lost or applied twice.
    Chaos(chaos::ChaosArgs),
    /// Run many sagas, then show what the tables that grow with traffic hold before and after
    /// their retention windows.
    Retention(retention::RetentionArgs),
}

/// Runs one benchmark of `app`.
pub async fn run(
    app: &App,
    command: BenchCommand,
    database: &DatabaseArgs,
    transport: &TransportArgs,
) -> anyhow::Result<()> {
    match command {
        BenchCommand::Append(args) => append::run(app, args, database).await,
        BenchCommand::Relay(args) => relay::run(app, args, database, transport).await,
        BenchCommand::Saga(args) => saga::run(app, args, database, transport).await,
        BenchCommand::Rebuild(args) => rebuild::run(app, args, database).await,
        BenchCommand::Chaos(args) => chaos::run(app, args, database, transport).await,
        BenchCommand::Retention(args) => retention::run(app, args, database, transport).await,
    }
}

/// The application's workload, or why there is none.
fn workload(app: &App) -> anyhow::Result<Arc<dyn Workload>> {
    app.workload.clone().with_context(|| {
        format!(
            "{} registers no benchmark workload (App::bench_workload): only `bench relay` can run",
            app.name()
        )
    })
}

/// Serves `router` on an ephemeral loopback port in the background.
async fn spawn_server(router: Router) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "benchmark server stopped");
        }
    });
    Ok(addr)
}

/// The database benchmarks use: `<name>_bench` beside the configured one, so a benchmark
/// never touches real data. It is created, migrated and emptied.
pub async fn bench_database(
    app: &App,
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
    db::migrate(&pool, &app.migrator()?).await?;
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
