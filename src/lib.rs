//! The sagaflow binary's library half: configuration, wiring of the engine with the domain and
//! read models into one application, and the benchmarks. `src/main.rs` is the CLI over it; the
//! end-to-end tests in `tests/` build the same application.

pub mod bench;
pub mod config;
pub mod metrics;
pub mod openapi;
pub mod replay;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use sagaflow_engine::command::{CommandBus, CommandBusConfig};
use sagaflow_engine::consumer::dead_letters;
use sagaflow_engine::http::admin::{self, AdminToken};
use sagaflow_engine::http::{
    self as engine_http, CommandLimits, CommandRegistry, EngineState, Readiness,
};
use sagaflow_engine::metrics::{ConsumerGroup, Scraper};
use sagaflow_engine::outbox::{Relay, RelayConfig, RelayStats};
use sagaflow_engine::saga::http as saga_http;
use sagaflow_engine::saga::messages::{commands_topic, REPLIES_TOPIC};
use sagaflow_engine::saga::{Orchestrator, Participant};
use sagaflow_engine::transport::kafka::{KafkaConfig, KafkaTransport};
use sagaflow_engine::transport::postgres::PostgresTransport;
use sagaflow_engine::transport::{TopicLayout, Transport};
use sagaflow_engine::Aggregate;
use sagaflow_projections::Projections;
use sagaflow_sagas::inventory::Inventory;
use sagaflow_sagas::order::Order;
use sagaflow_sagas::payment::Account;
use sagaflow_sagas::Domain;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use config::{Component, TransportArgs, TransportKind};

/// Settings of the application that are not about where things run.
#[derive(Clone, Default)]
pub struct AppOptions {
    /// Guards every `/admin/*` route; without one they answer 403.
    pub admin_token: AdminToken,
    /// Concurrency limit and timeout of the command routes.
    pub command_limits: CommandLimits,
}

/// One sagaflow application: its routes and the parts behind them.
pub struct App {
    pub router: Router,
    pub domain: Domain,
    pub projections: Projections,
    pub orchestrator: Arc<Orchestrator>,
    pub bus: CommandBus,
    /// Behind `GET /readyz`; the server marks it draining when shutdown starts.
    pub readiness: Readiness,
    /// The binary's own series at `GET /metrics`.
    pub metrics: metrics::AppMetrics,
}

/// Wires the engine, the domain and the read models over `pool` and `transport`.
pub fn build_app(pool: PgPool, transport: Arc<dyn Transport>, options: &AppOptions) -> App {
    let bus = CommandBus::new(pool.clone(), CommandBusConfig::default());
    let domain = Domain::new(&bus);
    let mut registry = CommandRegistry::new();
    domain.register(&mut registry);
    let layout = transport.layout().clone();
    let projections = Projections::new(pool.clone(), transport.clone());
    let orchestrator = Arc::new(Orchestrator::new(pool.clone(), sagaflow_sagas::sagas()));
    let engine = engine_http::router(EngineState {
        registry: Arc::new(registry),
        store: bus.store().clone(),
    });
    let bell = bus.outbox_bell().clone();
    let admin = admin::protect(
        projections
            .admin_router()
            .merge(dead_letters::router(pool.clone(), layout, bell.clone()))
            .merge(saga_http::admin_router(orchestrator.clone(), bell)),
        options.admin_token.clone(),
    );
    let readiness = Readiness::new(pool.clone(), transport.clone());
    let app_metrics = metrics::AppMetrics::new();
    let mut scraper = Scraper::new(
        pool.clone(),
        transport.clone(),
        consumer_groups(&domain, &projections, &orchestrator, &transport),
    );
    scraper.extra.push(app_metrics.registry());
    let engine = engine
        .merge(engine_http::readiness_router(readiness.clone()))
        .merge(sagaflow_engine::metrics::router(scraper))
        .merge(openapi::router());
    let router = engine_http::finish(
        engine
            .merge(sagaflow_sagas::router(&domain))
            .merge(saga_http::router(pool))
            .merge(projections.router())
            .merge(admin),
    );
    let router = engine_http::limit_commands(router, options.command_limits.clone());
    App {
        router,
        domain,
        projections,
        orchestrator,
        bus,
        readiness,
        metrics: app_metrics,
    }
}

/// Every consumer group of the application, whichever process runs it, for
/// `sagaflow_consumer_lag`.
fn consumer_groups(
    domain: &Domain,
    projections: &Projections,
    orchestrator: &Arc<Orchestrator>,
    transport: &Arc<dyn Transport>,
) -> Vec<ConsumerGroup> {
    let bell = domain.orders.bus().outbox_bell().clone();
    let mut consumers = projections.consumers();
    consumers.push(orchestrator.consumer(transport.clone(), bell.clone()));
    consumers
        .push(Participant::new(domain.inventory.clone()).consumer(transport.clone(), bell.clone()));
    consumers
        .push(Participant::new(domain.accounts.clone()).consumer(transport.clone(), bell.clone()));
    consumers.push(Participant::new(domain.orders.clone()).consumer(transport.clone(), bell));
    consumers
        .iter()
        .map(|c| ConsumerGroup {
            group: c.group().to_owned(),
            topics: c.topics().to_vec(),
        })
        .collect()
}

/// Serves `router` on `listener` until `shutdown` resolves, letting in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
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

const CONTEXTS: [&str; 3] = [Order::CONTEXT, Inventory::CONTEXT, Account::CONTEXT];

/// The logical topics of the domain's events.
pub fn event_topics() -> Vec<String> {
    CONTEXTS.iter().map(|c| format!("{c}.events")).collect()
}

/// Every logical topic: events, saga commands per context, saga replies.
pub fn all_topics() -> Vec<String> {
    let mut topics = event_topics();
    topics.extend(CONTEXTS.iter().map(|c| commands_topic(c)));
    topics.push(REPLIES_TOPIC.to_owned());
    topics
}

/// The transport chosen by `args`, with its topics created.
pub async fn build_transport(
    pool: &PgPool,
    args: &TransportArgs,
) -> anyhow::Result<Arc<dyn Transport>> {
    anyhow::ensure!(args.partitions > 0, "partitions must be positive");
    let layout = TopicLayout {
        prefix: args.topic_prefix.clone(),
        partitions: args.partitions,
    };
    let transport: Arc<dyn Transport> = match args.transport {
        TransportKind::Postgres => Arc::new(PostgresTransport::new(pool.clone(), layout)),
        TransportKind::Kafka => {
            let brokers = args
                .kafka_brokers
                .clone()
                .context("SAGAFLOW_TRANSPORT=kafka needs KAFKA_BROKERS (or --kafka-brokers)")?;
            Arc::new(KafkaTransport::new(KafkaConfig::new(brokers, layout))?)
        }
    };
    let topics = all_topics();
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    transport
        .ensure_topics(&topics)
        .await
        .with_context(|| format!("creating topics on the {} transport", transport.kind()))?;
    Ok(transport)
}

/// A running engine: its application and its background components.
pub struct Engine {
    pub app: App,
    pub transport: Arc<dyn Transport>,
    pub relay_stats: Option<Arc<RelayStats>>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl Engine {
    /// Starts the background components among `components` (the HTTP API is served by the
    /// caller from `app.router`).
    pub fn start(
        pool: PgPool,
        transport: Arc<dyn Transport>,
        components: &HashSet<Component>,
        relay: RelayConfig,
        options: &AppOptions,
    ) -> Self {
        let app = build_app(pool.clone(), transport.clone(), options);
        app.metrics.set_components(components);
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        if components.contains(&Component::Projections) {
            for consumer in app.projections.consumers() {
                let shutdown = shutdown.clone();
                tasks.spawn(async move {
                    if let Err(e) = consumer.run(shutdown).await {
                        tracing::error!(error = %e, "projector stopped");
                    }
                });
            }
        }
        let bell = app.bus.outbox_bell().clone();
        let mut consumers = Vec::new();
        if components.contains(&Component::Orchestrator) {
            consumers.push(app.orchestrator.consumer(transport.clone(), bell.clone()));
            tasks.spawn(
                app.orchestrator
                    .clone()
                    .run_deadlines(bell.clone(), shutdown.clone()),
            );
        }
        if components.contains(&Component::ParticipantInventory) {
            consumers.push(
                Participant::new(app.domain.inventory.clone())
                    .consumer(transport.clone(), bell.clone()),
            );
        }
        if components.contains(&Component::ParticipantPayment) {
            consumers.push(
                Participant::new(app.domain.accounts.clone())
                    .consumer(transport.clone(), bell.clone()),
            );
        }
        if components.contains(&Component::ParticipantOrder) {
            consumers.push(
                Participant::new(app.domain.orders.clone())
                    .consumer(transport.clone(), bell.clone()),
            );
        }
        for consumer in consumers {
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                if let Err(e) = consumer.run(shutdown).await {
                    tracing::error!(error = %e, "consumer stopped");
                }
            });
        }
        let mut relay_stats = None;
        if components.contains(&Component::Relay) {
            // The relay drains the outbox; the same component analyzes tables that grew and,
            // where autovacuum is off, keeps the queue tables vacuumed.
            tasks.spawn(sagaflow_engine::housekeeping::run(
                pool.clone(),
                Some(sagaflow_engine::housekeeping::DEFAULT_INTERVAL),
                shutdown.clone(),
            ));
            let relay = Relay::new(
                pool,
                transport.clone(),
                app.bus.outbox_bell().clone(),
                relay,
            );
            relay_stats = Some(relay.stats());
            tasks.spawn(relay.run(shutdown.clone()));
        }
        Engine {
            app,
            transport,
            relay_stats,
            shutdown,
            tasks,
        }
    }

    /// Stops the background components, letting each finish what it is doing.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}
