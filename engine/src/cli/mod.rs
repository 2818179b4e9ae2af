//! The command line every application gets, from [`App::run_cli`]:
//! `serve | migrate | replay | projections rebuild | bench`, with the same flags and
//! environment variables for every application, graceful shutdown on SIGTERM and SIGINT, and
//! text or JSON logs.

pub mod bench;
pub mod config;
mod replay;
mod serve;

pub use replay::{replay_stream, ReplayFormat};

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use sqlx::PgPool;
use tracing_subscriber::{EnvFilter, Layer};

use crate::telemetry::Telemetry;

use crate::app::App;
use crate::db;
use crate::projection::{RebuildOptions, RebuildProgress};
use config::{mask_url, DatabaseArgs, LogFormat, TransportArgs};

#[derive(Debug, Parser)]
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
    Serve(serve::ServeArgs),
    /// Create the database if missing and apply pending migrations.
    Migrate,
    /// Measure throughput and latency beside a raw baseline in the same run.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
    /// Operate the read models.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// Print a stream's events, each with its metadata and the state right after it
    /// (`<aggregate type>-<id>`, or `saga-<id>`).
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
        name: String,
    },
}

impl App {
    /// Runs the command line of this application: parses the process's arguments and
    /// environment, and runs `serve`, `migrate`, `replay`, `projections rebuild` or `bench`.
    /// Returns the process's exit status: success, or failure after printing why (a failed
    /// check of the application, a database that cannot be reached, a bad flag).
    pub fn run_cli(self) -> ExitCode {
        let matches = match cli_command(&self).try_get_matches() {
            Ok(m) => m,
            Err(e) => {
                let _ = e.print();
                return if e.use_stderr() {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
            }
        };
        let cli = match Cli::from_arg_matches(&matches) {
            Ok(cli) => cli,
            Err(e) => {
                let _ = e.print();
                return ExitCode::from(2);
            }
        };
        let runtime = match tokio::runtime::Runtime::new() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: cannot start the async runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        // The gRPC exporter is built inside the runtime it sends with.
        let telemetry = match runtime.block_on(async { init_logging(cli.log_format, self.name()) })
        {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: cannot set up trace export: {e:#}");
                return ExitCode::from(2);
            }
        };
        let status = match runtime.block_on(run(self, cli)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "{} stopped", "sagaflow");
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
        // Flushes the spans still queued, while the runtime still runs.
        telemetry.shutdown();
        status
    }
}

/// The command line of `app`, named after it; the components and projections it accepts are
/// the ones it registered.
fn cli_command(app: &App) -> clap::Command {
    let components = app.components().names();
    let projections = app.projection_names();
    Cli::command()
        .name(app.name())
        .version(app.version())
        .about(format!(
            "{}: a service built on sagaflow, the event-sourced CQRS and saga engine",
            app.name()
        ))
        .mut_subcommand("serve", |serve| {
            serve.mut_arg("components", |arg| {
                arg.value_parser(clap::builder::PossibleValuesParser::new(components))
            })
        })
        .mut_subcommand("projections", |p| {
            p.mut_subcommand("rebuild", |r| {
                r.mut_arg("name", |arg| {
                    arg.value_parser(clap::builder::PossibleValuesParser::new(projections))
                })
            })
        })
}

async fn run(app: App, cli: Cli) -> anyhow::Result<()> {
    app.check()
        .context("the application's parts do not fit together")?;
    match cli.command {
        Command::Serve(args) => serve::serve(&app, &cli.database, &cli.transport, args).await,
        Command::Migrate => {
            let pool = prepare_database(&app, &cli.database).await?;
            pool.close().await;
            Ok(())
        }
        Command::Bench { command } => {
            bench::run(&app, command, &cli.database, &cli.transport).await
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
                ReplayFormat::JsonLines
            } else {
                ReplayFormat::Text
            };
            let mut out = std::io::stdout().lock();
            replay_stream(&app, &pool, &stream_id, at_version, format, &mut out).await?;
            pool.close().await;
            Ok(())
        }
        Command::Projections {
            command: ProjectionsCommand::Rebuild { name },
        } => {
            let pool = prepare_database(&app, &cli.database).await?;
            rebuild_projection(&app, &pool, &name).await?;
            pool.close().await;
            Ok(())
        }
    }
}

/// Rebuilds projection `name`, printing its progress to stderr once a second.
async fn rebuild_projection(app: &App, pool: &PgPool, name: &str) -> anyhow::Result<()> {
    let projection = app.projection_named(name).with_context(|| {
        format!(
            "no projection named {name:?}; known: {}",
            app.projection_names().join(", ")
        )
    })?;
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
    let job = projection
        .begin_rebuild(pool.clone(), RebuildOptions::default(), on_progress)
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

/// The log (filtered by `RUST_LOG`) and, when an OTLP endpoint is configured, the export
/// of the engine's trace spans (see [`crate::telemetry`]).
fn init_logging(format: LogFormat, service_name: &str) -> anyhow::Result<Telemetry> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let log = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().boxed(),
    };
    crate::telemetry::install(log, filter, service_name)
}

/// Creates the database if it is missing and applies `app`'s migrations (the engine's and
/// every registered part's); the pool on it.
///
/// A database that cannot be reached (down, restarting, out of connections) is waited for,
/// with backoff, up to `--db-wait`: a process started with (or just before) its database
/// does not exit at once, and a supervisor restarting it does not spin.
pub async fn prepare_database(app: &App, args: &DatabaseArgs) -> anyhow::Result<PgPool> {
    let url = &args.database_url;
    let until = std::time::Instant::now() + args.db_wait;
    let backoff = crate::backoff::Backoff::unlimited(
        std::time::Duration::from_millis(250),
        std::time::Duration::from_secs(5),
    );
    let mut attempt = 0;
    let pool = loop {
        attempt += 1;
        let pause = backoff.random_delay(attempt);
        let connected = async {
            db::ensure_database(url).await?;
            db::connect(url, args.db_pool_size).await
        }
        .await;
        match connected {
            Ok(pool) => break pool,
            Err(e) if db::is_unavailable(&e) && std::time::Instant::now() + pause < until => {
                tracing::warn!(database = %mask_url(url), error = %e, retry_in_ms = pause.as_millis() as u64, "database unreachable at start-up; waiting");
                tokio::time::sleep(pause).await;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot reach or create the database at {}", mask_url(url))
                })
            }
        }
    };
    // Sessions cut while migrating (the database restarting, or an operator terminating them)
    // are waited out the same way: each migration is its own transaction, and the migrator
    // takes a lock, so running it again is safe.
    let migrator = app.migrator()?;
    loop {
        attempt += 1;
        let pause = backoff.random_delay(attempt);
        match db::migrate(&pool, &migrator).await {
            Ok(()) => break,
            Err(
                sqlx::migrate::MigrateError::Execute(e)
                | sqlx::migrate::MigrateError::ExecuteMigration(e, _),
            ) if db::is_unavailable(&e) && std::time::Instant::now() + pause < until => {
                tracing::warn!(database = %mask_url(url), error = %e, retry_in_ms = pause.as_millis() as u64, "database went away while migrating; waiting");
                tokio::time::sleep(pause).await;
            }
            Err(e) => return Err(e).context("applying migrations"),
        }
    }
    tracing::info!(database = %mask_url(url), "database ready, migrations applied");
    Ok(pool)
}
