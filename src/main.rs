//! The `sagaflow` command line: serve, migrate, bench, projections, replay.

use std::net::SocketAddr;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sagaflow::bench::BenchCommand;
use std::collections::HashSet;

use sagaflow::config::{
    mask_secret, mask_url, Component, DatabaseArgs, LogFormat, OperationsArgs, TransportArgs,
};
use sagaflow_engine::db;
use sagaflow_engine::http::admin::AdminToken;
use sagaflow_engine::outbox::RelayConfig;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// mimalloc rather than the system allocator: the engine allocates many short-lived JSON
/// values and buffers across worker threads, where glibc's malloc spent about a seventh of
/// the machine's CPU in `bench saga`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "sagaflow",
    version,
    about = "Event-sourced CQRS and saga orchestration engine"
)]
struct Cli {
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    transport: TransportArgs,
    /// Log format.
    #[arg(
        long,
        env = "SAGAFLOW_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the database if missing, apply migrations, and serve the HTTP API.
    Serve {
        /// Address the HTTP API listens on.
        #[arg(long, env = "SAGAFLOW_HTTP_ADDR", default_value = "127.0.0.1:8080")]
        http_addr: SocketAddr,
        /// Bearer token for the `/admin/*` routes; without it they answer 403.
        #[arg(long, env = "SAGAFLOW_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// Components this process runs (comma-separated); all by default.
        #[arg(long, env = "SAGAFLOW_COMPONENTS", value_enum, value_delimiter = ',')]
        components: Vec<Component>,
        #[command(flatten)]
        operations: OperationsArgs,
    },
    /// Create the database if missing and apply pending migrations.
    Migrate,
    /// Measure throughput and latency beside a raw baseline in the same run.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Operate the read models.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// Print a stream's events, each with its metadata and the state right after it
    /// (`order-<id>`, `inventory-<sku>`, `account-<id>`, `saga-<id>`).
    Replay {
        /// The stream id.
        stream_id: String,
        /// Stop at this version (the state as of version n); the whole stream by default.
        #[arg(long)]
        at_version: Option<i64>,
        /// One JSON object per event and line, for tools.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ProjectionsCommand {
    /// Replay the event store into a read model, with progress on stderr. Running engines keep
    /// serving and projecting meanwhile, and take over without missing or doubling anything.
    Rebuild {
        /// The projection.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(sagaflow_projections::names()))]
        name: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Serve {
            http_addr,
            components,
            admin_token,
            operations,
        } => {
            let components: HashSet<Component> = if components.is_empty() {
                Component::ALL.into_iter().collect()
            } else {
                components.into_iter().collect()
            };
            serve(
                &cli.database,
                &cli.transport,
                http_addr,
                components,
                admin_token,
                &operations,
                cli.log_format,
            )
            .await
        }
        Command::Migrate => {
            prepare_database(&cli.database).await?;
            Ok(())
        }
        Command::Bench { command } => {
            sagaflow::bench::run(command, &cli.database, &cli.transport).await
        }
        Command::Replay {
            stream_id,
            at_version,
            json,
        } => {
            let pool = db::connect(&cli.database.database_url, 2)
                .await
                .with_context(|| {
                    format!(
                        "cannot reach the database at {}",
                        mask_url(&cli.database.database_url)
                    )
                })?;
            let format = if json {
                sagaflow::replay::ReplayFormat::JsonLines
            } else {
                sagaflow::replay::ReplayFormat::Text
            };
            let mut out = std::io::stdout().lock();
            sagaflow::replay::replay_stream(&pool, &stream_id, at_version, format, &mut out)
                .await?;
            pool.close().await;
            Ok(())
        }
        Command::Projections {
            command: ProjectionsCommand::Rebuild { name },
        } => {
            let pool = prepare_database(&cli.database).await?;
            rebuild_projection(&pool, &name).await?;
            pool.close().await;
            Ok(())
        }
    }
}

/// Rebuilds projection `name`, printing its progress to stderr once a second.
async fn rebuild_projection(pool: &sqlx::PgPool, name: &str) -> anyhow::Result<()> {
    use sagaflow_projections::{RebuildOptions, RebuildProgress};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    let last = Mutex::new(Instant::now());
    let on_progress = Arc::new(move |p: &RebuildProgress| {
        let mut last = last.lock().expect("progress lock");
        if last.elapsed() >= Duration::from_secs(1) {
            *last = Instant::now();
            let percent = 100.0 * p.events_processed as f64 / p.events_total.max(1) as f64;
            eprintln!(
                "  [{}] {:>4.0}s {}/{} events ({percent:.0}%), {} rows written, {:.0} events/s",
                p.name,
                p.elapsed.as_secs_f64(),
                p.events_processed,
                p.events_total,
                p.rows_written,
                p.events_per_second()
            );
        }
    });
    let job = sagaflow_projections::begin_rebuild(
        pool.clone(),
        name,
        RebuildOptions::default(),
        on_progress,
    )
    .await
    .with_context(|| format!("cannot start rebuilding {name}"))?;
    eprintln!(
        "rebuilding {name}: {} events to replay",
        job.status.events_total.unwrap_or(0)
    );
    let report = job
        .run
        .await
        .with_context(|| format!("rebuilding {name}"))?;
    println!(
        "rebuilt {name}: {} events, {} row writes in {:.1}s ({:.0} events/s)",
        report.events,
        report.rows_written,
        report.elapsed.as_secs_f64(),
        report.events_per_second()
    );
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn prepare_database(args: &DatabaseArgs) -> anyhow::Result<sqlx::PgPool> {
    let url = &args.database_url;
    db::ensure_database(url)
        .await
        .with_context(|| format!("cannot reach or create the database at {}", mask_url(url)))?;
    let pool = db::connect(url, args.db_pool_size).await?;
    db::migrate(&pool).await.context("applying migrations")?;
    tracing::info!(database = %mask_url(url), "database ready, migrations applied");
    Ok(pool)
}

/// Serves until SIGTERM or SIGINT, then shuts down gracefully within
/// `operations.shutdown_timeout`: `/readyz` answers 503 `draining` (for `drain_delay` the
/// server goes on serving), the listener closes and in-flight requests finish, then the
/// background components finish their batch (consumers
/// commit their offsets with it; the relay's batch is acknowledged before it commits). Returns
/// `Ok` (exit status 0) when all of that finished in time; past the bound the process exits
/// with status 1, as it does at once on a second signal. Whatever was cut short is redone
/// after a restart: uncommitted work rolls back, the outbox keeps unpublished rows.
async fn serve(
    args: &DatabaseArgs,
    transport_args: &TransportArgs,
    http_addr: SocketAddr,
    components: HashSet<Component>,
    admin_token: Option<String>,
    operations: &OperationsArgs,
    log_format: LogFormat,
) -> anyhow::Result<()> {
    // Installed first, so that a signal during start-up is not lost.
    let mut signals = Signals::install().context("installing the signal handlers")?;
    let mut names: Vec<&str> = components.iter().map(|c| c.name()).collect();
    names.sort();
    tracing::info!(
        database = %mask_url(&args.database_url),
        db_pool_size = args.db_pool_size,
        transport = ?transport_args.transport,
        kafka_brokers = transport_args.kafka_brokers.as_deref().unwrap_or("-"),
        topic_prefix = %transport_args.topic_prefix,
        partitions = transport_args.partitions,
        %http_addr,
        components = %names.join(","),
        admin_token = mask_secret(admin_token.as_deref()),
        log_format = ?log_format,
        shutdown_timeout = ?operations.shutdown_timeout,
        drain_delay = ?operations.drain_delay,
        max_inflight_commands = operations.max_inflight_commands,
        command_timeout = ?operations.command_timeout,
        "starting sagaflow"
    );
    let started = async {
        let pool = prepare_database(args).await?;
        let transport = sagaflow::build_transport(&pool, transport_args).await?;
        anyhow::Ok((pool, transport))
    };
    let (pool, transport) = tokio::select! {
        started = started => started?,
        signal = signals.recv() => {
            tracing::info!(signal, "shutdown requested during start-up; exiting");
            return Ok(());
        }
    };
    let options = sagaflow::AppOptions {
        admin_token: AdminToken::new(admin_token.as_deref()),
        command_limits: operations.command_limits(),
    };
    if !options.admin_token.is_configured() {
        tracing::warn!("SAGAFLOW_ADMIN_TOKEN is not set: admin routes answer 403");
    }
    let engine = sagaflow::Engine::start(
        pool.clone(),
        transport,
        &components,
        RelayConfig::default(),
        &options,
    );
    let readiness = engine.app.readiness.clone();
    let stop_serving = CancellationToken::new();
    let server = if components.contains(&Component::Http) {
        let listener = TcpListener::bind(http_addr)
            .await
            .with_context(|| format!("cannot listen on {http_addr}"))?;
        tracing::info!(%http_addr, "listening");
        let stop = stop_serving.clone().cancelled_owned();
        Some(tokio::spawn(sagaflow::serve(
            listener,
            engine.app.router.clone(),
            stop,
        )))
    } else {
        None
    };
    let signal = signals.recv().await;
    let bound = operations.shutdown_timeout;
    let since = Instant::now();
    tracing::info!(
        signal,
        shutdown_timeout = ?bound,
        "shutdown requested: draining, finishing in-flight requests"
    );
    readiness.start_draining();
    tokio::spawn(async move {
        let signal = signals.recv().await;
        tracing::warn!(signal, "second signal during shutdown; exiting at once");
        std::process::exit(1);
    });
    let drain_delay = operations.drain_delay;
    let drained = tokio::time::timeout(bound, async {
        if server.is_some() && !drain_delay.is_zero() {
            tracing::info!(drain_delay = ?drain_delay, "serving on while /readyz answers 503");
            tokio::time::sleep(drain_delay).await;
        }
        stop_serving.cancel();
        if let Some(server) = server {
            match server.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server stopped with an error"),
                Err(e) => tracing::warn!(error = %e, "HTTP server task failed"),
            }
            tracing::info!(
                elapsed_ms = since.elapsed().as_millis() as u64,
                "HTTP requests finished; stopping the background components"
            );
        }
        engine.stop().await;
        pool.close().await;
    })
    .await;
    let elapsed_ms = since.elapsed().as_millis() as u64;
    if drained.is_err() {
        tracing::error!(
            elapsed_ms,
            shutdown_timeout = ?bound,
            "graceful shutdown did not finish within SAGAFLOW_SHUTDOWN_TIMEOUT; exiting with status 1"
        );
        std::process::exit(1);
    }
    tracing::info!(elapsed_ms, "stopped");
    Ok(())
}

/// SIGTERM and SIGINT.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// Waits for the next signal; its name.
    async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "ctrl-c"
        }
    }
}
