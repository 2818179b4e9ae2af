//! The sagaflow binary's library half: configuration, wiring of the engine with the domain and
//! read models into one application, and the benchmarks. `src/main.rs` is the CLI over it; the
//! end-to-end tests in `tests/` build the same application.

pub mod bench;
pub mod config;

use std::net::SocketAddr;

use axum::Router;
use sagaflow_engine::command::{CommandBus, CommandBusConfig};
use sagaflow_engine::http::{self as engine_http, CommandRegistry, EngineState};
use sagaflow_sagas::Domain;
use sqlx::PgPool;
use std::sync::Arc;
use tokio::net::TcpListener;

/// One running sagaflow application: its routes and the parts behind them.
pub struct App {
    pub router: Router,
    pub domain: Domain,
    pub bus: CommandBus,
}

/// Wires the engine, the domain and the read models over `pool`.
pub fn build_app(pool: PgPool) -> App {
    let bus = CommandBus::new(pool, CommandBusConfig::default());
    let domain = Domain::new(&bus);
    let mut registry = CommandRegistry::new();
    domain.register(&mut registry);
    let engine = engine_http::router(EngineState {
        registry: Arc::new(registry),
        store: bus.store().clone(),
    });
    let router = engine_http::finish(engine.merge(sagaflow_sagas::router(&domain)));
    App { router, domain, bus }
}

/// Serves `router` on `listener` until `shutdown` resolves, letting in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

/// Starts `router` on an ephemeral loopback port in the background; for tests and benchmarks.
pub async fn spawn_server(router: Router) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "test server stopped");
        }
    });
    Ok(addr)
}
