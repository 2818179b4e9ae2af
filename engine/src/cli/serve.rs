//! `serve`: runs the components of one process and its HTTP API until SIGTERM or SIGINT, then
//! shuts down gracefully.

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::config::{
    mask_secret, mask_url, DatabaseArgs, OperationsArgs, RetentionArgs, TransportArgs,
};
use super::prepare_database;
use crate::app::{App, Component, Options};
use crate::doorbell::Doorbell;
use crate::http::admin::AdminToken;
use crate::outbox::{Publishing, OUTBOX_CHANNEL};
use crate::relay::{Relay, RelayConfig};

/// The flags of `serve`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ServeArgs {
    /// Address the HTTP API listens on.
    #[arg(long, env = "SAGAFLOW_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    http_addr: SocketAddr,
    /// Bearer token for the `/admin/*` routes; without it they answer 403.
    #[arg(long, env = "SAGAFLOW_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Components this process runs (comma-separated); all by default.
    #[arg(long, env = "SAGAFLOW_COMPONENTS", value_delimiter = ',')]
    components: Vec<String>,
    #[command(flatten)]
    operations: OperationsArgs,
    #[command(flatten)]
    retention: RetentionArgs,
}

/// Serves until SIGTERM or SIGINT, then shuts down gracefully within
/// `operations.shutdown_timeout`: `/readyz` answers 503 `draining` (for `drain_delay` the
/// server goes on serving), the listener closes and in-flight requests finish, then the
/// background components finish their batch (consumers
/// commit their offsets with it; the relay's batch is acknowledged before it commits). Returns
/// `Ok` (exit status 0) when all of that finished in time; past the bound the process exits
/// with status 1, as it does at once on a second signal. Whatever was cut short is redone
/// after a restart: uncommitted work rolls back, the outbox keeps unpublished rows.
pub(crate) async fn serve(
    app: &App,
    args: &DatabaseArgs,
    transport_args: &TransportArgs,
    serve: ServeArgs,
) -> anyhow::Result<()> {
    // Installed first, so that a signal during start-up is not lost.
    let mut signals = Signals::install().context("installing the signal handlers")?;
    let components = app
        .components()
        .select(&serve.components)
        .map_err(anyhow::Error::msg)?;
    let ServeArgs {
        http_addr,
        admin_token,
        operations,
        retention,
        ..
    } = serve;
    let operations = &operations;
    tracing::info!(
        app = app.name(),
        version = app.version(),
        database = %mask_url(&args.database_url),
        db_pool_size = args.db_pool_size,
        transport = ?transport_args.transport,
        kafka_brokers = transport_args.kafka_brokers.as_deref().unwrap_or("-"),
        topic_prefix = %transport_args.topic_prefix,
        partitions = transport_args.partitions,
        %http_addr,
        components = %components.names().join(","),
        admin_token = mask_secret(admin_token.as_deref()),
        shutdown_timeout = ?operations.shutdown_timeout,
        drain_delay = ?operations.drain_delay,
        max_inflight_commands = operations.max_inflight_commands,
        command_timeout = ?operations.command_timeout,
        retention = ?retention.retention(),
        "starting"
    );
    let started = async {
        let pool = prepare_database(app, args).await?;
        let transport = transport_args
            .connect_waiting(&pool, &app.topics(), args.db_wait)
            .await?;
        anyhow::Ok((pool, transport))
    };
    let (pool, transport) = tokio::select! {
        started = started => started?,
        signal = signals.recv() => {
            tracing::info!(signal, "shutdown requested during start-up; exiting");
            return Ok(());
        }
    };
    let options = Options {
        admin_token: AdminToken::new(admin_token.as_deref()),
        command_limits: operations.command_limits(),
        retention: retention.retention(),
        local_steps: operations.local_steps,
    };
    if !options.admin_token.is_configured() {
        tracing::warn!("SAGAFLOW_ADMIN_TOKEN is not set: admin routes answer 403");
    }
    let service = app.build(pool.clone(), transport.clone(), &options)?;
    if matches!(service.bus.store().publishing(), Publishing::Log(_)) {
        // Writers append to the log themselves: what an earlier release left in the outbox
        // goes first, or a stream's new events could overtake its older ones.
        let relay = Relay::new(
            pool.clone(),
            transport.clone(),
            Doorbell::new(pool.clone(), OUTBOX_CHANNEL),
            RelayConfig::default(),
        );
        // Within the start-up wait, like the database and the broker.
        let deadline = Instant::now() + args.db_wait;
        let drained = async {
            loop {
                match relay.drain().await {
                    Ok(moved) => return anyhow::Ok(moved),
                    Err(e) if Instant::now() < deadline => {
                        tracing::warn!(error = %e, "cannot move the outbox's rows yet; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                    Err(e) => return Err(e).context("moving the outbox's rows to the log"),
                }
            }
        };
        tokio::select! {
            moved = drained => {
                let moved = moved?;
                if moved > 0 {
                    tracing::info!(moved, "moved the outbox's rows to the log");
                }
            }
            signal = signals.recv() => {
                tracing::info!(signal, "shutdown requested during start-up; exiting");
                return Ok(());
            }
        }
    }
    let running = service.start(&components, RelayConfig::default());
    let readiness = service.readiness.clone();
    let stop_serving = CancellationToken::new();
    let server = if components.contains(&Component::Http) {
        let listener = TcpListener::bind(http_addr)
            .await
            .with_context(|| format!("cannot listen on {http_addr}"))?;
        tracing::info!(%http_addr, "listening");
        let stop = stop_serving.clone().cancelled_owned();
        let router = service.router.clone();
        Some(tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(stop)
                .await
        }))
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
        running.stop().await;
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
