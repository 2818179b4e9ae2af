//! The `sagaflow` command line: serve, migrate, bench, projections.

use std::net::SocketAddr;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sagaflow::bench::BenchCommand;
use std::collections::HashSet;

use sagaflow::config::{mask_url, Component, DatabaseArgs, LogFormat, TransportArgs};
use sagaflow_engine::db;
use sagaflow_engine::http::admin::AdminToken;
use sagaflow_engine::outbox::RelayConfig;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

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
                "  [{}] {:>4.0}s {}/{} events ({percent:.0}%), {:.0} events/s",
                p.name,
                p.elapsed.as_secs_f64(),
                p.events_processed,
                p.events_total,
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

async fn serve(
    args: &DatabaseArgs,
    transport_args: &TransportArgs,
    http_addr: SocketAddr,
    components: HashSet<Component>,
    admin_token: Option<String>,
) -> anyhow::Result<()> {
    let mut names: Vec<String> = components
        .iter()
        .map(|c| format!("{c:?}").to_lowercase())
        .collect();
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
        "starting sagaflow"
    );
    let pool = prepare_database(args).await?;
    let transport = sagaflow::build_transport(&pool, transport_args).await?;
    let options = sagaflow::AppOptions {
        admin_token: AdminToken::new(admin_token.as_deref()),
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
    if components.contains(&Component::Http) {
        let listener = TcpListener::bind(http_addr)
            .await
            .with_context(|| format!("cannot listen on {http_addr}"))?;
        tracing::info!(%http_addr, "listening");
        sagaflow::serve(listener, engine.app.router.clone(), shutdown_signal()).await?;
    } else {
        shutdown_signal().await;
    }
    engine.stop().await;
    pool.close().await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested, finishing in-flight requests");
}
