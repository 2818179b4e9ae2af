//! A built application ([`Service`]): its routes and the parts behind them, ready to serve and
//! to start the components of one process ([`Running`]).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use prometheus::{Gauge, IntGaugeVec, Opts, Registry as MetricRegistry};
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use super::{App, AppError, Component, Components, ParticipantSpec};
use crate::aggregate::Aggregate;
use crate::command::{CommandBus, CommandBusConfig, Repository};
use crate::consumer::Consumer;
use crate::doorbell::Doorbell;
use crate::http::admin::{self, AdminToken};
use crate::http::query::QueryState;
use crate::http::{
    self, dead_letters, limit_commands, openapi, projections, sagas, streams, CommandLimits,
};
use crate::ops::{self, ConsumerGroup, Readiness, Retention, Scraper};
use crate::outbox::{Publishing, OUTBOX_CHANNEL};
use crate::projection::Projection;
use crate::registry::Registry;
use crate::relay::{Relay, RelayConfig, RelayStats};
use crate::saga::local::LocalSteps;
use crate::saga::{Orchestrator, StartSagas};
use crate::transport::{TopicLayout, Transport};

/// Settings of a built application that are not about where things run.
#[derive(Clone)]
pub struct Options {
    /// Guards every `/admin/*` route; without one they answer 403.
    pub admin_token: AdminToken,
    /// Concurrency limit and timeout of the command routes.
    pub command_limits: CommandLimits,
    /// How long the tables that grow with traffic keep what they no longer need (pruned by
    /// the process that runs the relay).
    pub retention: Retention,
    /// Run a saga's commands to the participants registered with [`App::participant`] in the
    /// orchestrator's transaction, with the saga's next step, instead of a hop through the
    /// participant's topic and one back (see `sagaflow_engine::saga` and the README's
    /// "Local steps"). Sagas started without it keep their commands on the topics for their
    /// whole life. On by default.
    pub local_steps: bool,
}

impl Default for Options {
    /// No admin token, the default command limits and retention, local steps.
    fn default() -> Self {
        Options {
            admin_token: AdminToken::default(),
            command_limits: CommandLimits::default(),
            retention: Retention::default(),
            local_steps: true,
        }
    }
}

/// What routes are built from: the parts of the application they may use.
#[derive(Clone)]
pub struct Services {
    /// The database.
    pub pool: PgPool,
    /// The deployment's topic names and partitions.
    pub layout: TopicLayout,
    /// The registered aggregate types and their repositories.
    pub registry: Arc<Registry>,
    /// The command bus the repositories share.
    pub bus: CommandBus,
}

impl Services {
    /// The repository of aggregate type `A`, shared with its generic command route and its
    /// participant (so commands for one stream are serialized in one queue).
    ///
    /// # Panics
    ///
    /// If `A` was not registered: the routes are built at start-up, so the process stops
    /// there with this message.
    pub fn repository<A: Aggregate>(&self) -> Arc<Repository<A>> {
        self.registry.get::<A>().unwrap_or_else(|| {
            panic!(
                "a route uses aggregate type {:?} ({}), which is not registered: register it with App::aggregate",
                A::TYPE,
                std::any::type_name::<A>()
            )
        })
    }

    /// The state read-model query routes answer with: freshness headers and rebuild-aware
    /// 404s ([`QueryState`]).
    pub fn query(&self) -> QueryState {
        QueryState {
            pool: self.pool.clone(),
            layout: self.layout.clone(),
        }
    }
}

/// A built application: its router and the parts behind it. Building it starts nothing;
/// [`Service::start`] starts the background components of a process.
pub struct Service {
    /// Every route, with the overload guard of the command routes.
    pub router: Router,
    /// The OpenAPI document of every route, served at `GET /openapi.json`.
    pub openapi: OpenApi,
    /// The registered aggregate types and their repositories.
    pub registry: Arc<Registry>,
    /// Drives the registered sagas.
    pub orchestrator: Arc<Orchestrator>,
    /// The command bus the repositories share.
    pub bus: CommandBus,
    /// Behind `GET /readyz`; the server marks it draining when shutdown starts.
    pub readiness: Readiness,
    /// The transport the relay and the consumers use.
    pub transport: Arc<dyn Transport>,
    pool: PgPool,
    participants: Vec<ParticipantSpec>,
    projections: Arc<[Arc<dyn Projection>]>,
    process: ProcessMetrics,
    /// Every consumer group of the application, with its topics.
    groups: Vec<ConsumerGroup>,
    retention: Retention,
}

impl App {
    /// Checks the application ([`App::check`]) and builds it over `pool` and `transport`:
    /// its routes and the parts behind them. Starts nothing. The database must be migrated
    /// ([`App::migrator`]) and the transport's topics created ([`App::topics`]).
    pub fn build(
        &self,
        pool: PgPool,
        transport: Arc<dyn Transport>,
        options: &Options,
    ) -> Result<Service, AppError> {
        self.check()?;
        ops::register_metrics();
        let layout = transport.layout().clone();
        let mut bus = CommandBus::new(pool.clone(), CommandBusConfig::default());
        // On the embedded transport every writer appends to the log itself: no relay hop.
        if let Some(log_bell) = transport.log_bell() {
            bus = bus.with_log(layout.clone(), log_bell);
        }
        let publishing = bus.store().publishing().clone();
        let registry = Arc::new(self.registry(&bus)?);
        let services = Services {
            pool: pool.clone(),
            layout: layout.clone(),
            registry: registry.clone(),
            bus: bus.clone(),
        };
        let mut orchestrator =
            Orchestrator::new(pool.clone(), self.sagas.clone()).with_publishing(publishing.clone());
        if options.local_steps {
            orchestrator = orchestrator.with_local_steps(LocalSteps::new(
                self.participants
                    .iter()
                    .filter_map(|p| Some((p.name, (p.local?)(&registry)))),
            ));
        }
        let orchestrator = Arc::new(orchestrator);
        // A command whose events start a saga starts it in its own transaction, unless the
        // saga's first step is local (the orchestrator's consumer then runs it with the start).
        if !self.sagas.is_empty() {
            bus.set_append_hook(Arc::new(StartSagas(orchestrator.clone())));
        }
        let projections: Arc<[Arc<dyn Projection>]> = self.projections.clone().into();
        let bell = bus.outbox_bell().clone();
        let readiness = Readiness::new(pool.clone(), transport.clone()).with_breakers(
            self.participants
                .iter()
                .filter_map(|p| p.breaker.clone())
                .collect(),
        );
        let process = ProcessMetrics::new(self.name, self.version);
        let groups = self.consumer_groups();
        let mut scraper = Scraper::new(pool.clone(), transport.clone(), groups.clone());
        scraper.extra.push(process.registry.clone());

        let console = crate::console::Console {
            pool: pool.clone(),
            store: bus.store().clone(),
            transport: transport.clone(),
            app: self.name,
            version: self.version,
            sagas: self.sagas.clone().into(),
            aggregate_types: registry.types(),
            projections: self.projection_names(),
            groups: self.consumer_groups(),
        };
        let document = Arc::new(OnceLock::new());
        let mut routes = OpenApiRouter::with_openapi(openapi::document(self.name, self.version))
            .merge(streams::router(streams::StreamsState {
                registry: registry.clone(),
                store: bus.store().clone(),
            }))
            .merge(sagas::router(pool.clone()))
            .merge(ops::health_router())
            .merge(ops::readiness_router(readiness.clone()))
            .merge(ops::scrape::router(scraper))
            .merge(openapi::router(document.clone()))
            .merge(crate::console::pages(
                self.name,
                self.version,
                options.admin_token.is_configured(),
            ));
        for module in &self.routes {
            routes = routes.merge(module(&services));
        }
        let admin = admin::protect(
            projections::admin_router(pool.clone(), transport.clone(), projections.clone())
                .merge(dead_letters::router(
                    pool.clone(),
                    layout,
                    publishing,
                    bell.clone(),
                ))
                .merge(sagas::admin_router(orchestrator.clone(), bell))
                .merge(crate::console::data_router(console)),
            options.admin_token.clone(),
        );
        let (mut router, mut api) = routes.merge(admin).split_for_parts();
        for a in &self.aggregates {
            if let Some((route, document)) = a.command_route {
                router = router.merge(route(&registry));
                document(&mut api);
            }
        }
        openapi::restrict_path_parameter(
            &mut api,
            "/admin/projections/{name}/rebuild",
            "name",
            &self.projection_names(),
        );
        openapi::finish(&mut api);
        document
            .set(api.to_json().expect("the document serializes"))
            .expect("set once");
        let router = limit_commands(
            http::finish(router, registry.types()),
            options.command_limits.clone(),
        );
        Ok(Service {
            router,
            openapi: api,
            registry,
            orchestrator,
            bus,
            readiness,
            transport,
            pool,
            participants: self.participants.clone(),
            projections,
            process,
            groups,
            retention: options.retention.clone(),
        })
    }

    /// Every consumer group of the application, whichever process runs it, with the logical
    /// topics it reads: what `sagaflow_consumer_lag` reports and what retention keeps.
    pub fn consumer_groups(&self) -> Vec<ConsumerGroup> {
        let mut groups: Vec<ConsumerGroup> = self
            .projections
            .iter()
            .map(|p| ConsumerGroup {
                group: crate::projection::group_of(p.name()),
                topics: vec![p.topic().to_owned()],
            })
            .collect();
        if !self.sagas.is_empty() {
            groups.push(ConsumerGroup {
                group: crate::saga::ORCHESTRATOR_GROUP.to_owned(),
                topics: crate::saga::orchestrator::topics_of(&self.sagas),
            });
        }
        groups.extend(self.participants.iter().map(|p| ConsumerGroup {
            group: crate::saga::participant::group_of(p.name),
            topics: vec![crate::saga::messages::commands_topic(p.context)],
        }));
        groups
    }
}

impl Service {
    /// The repository of aggregate type `A`, if registered.
    pub fn repository<A: Aggregate>(&self) -> Option<Arc<Repository<A>>> {
        self.registry.get::<A>()
    }

    /// The consumers of `components` (projectors, the orchestrator, participants), for the
    /// caller to run; [`Service::start`] runs them.
    pub fn consumers(&self, components: &Components) -> Vec<Consumer> {
        let bell = self.bus.outbox_bell().clone();
        let mut consumers = Vec::new();
        if components.contains(&Component::Projections) {
            consumers.extend(self.projections.iter().map(|p| {
                crate::projection::consumer(p.as_ref(), self.pool.clone(), self.transport.clone())
            }));
        }
        if components.contains(&Component::Orchestrator) {
            consumers.push(
                self.orchestrator
                    .consumer(self.transport.clone(), bell.clone()),
            );
        }
        for p in &self.participants {
            if components.contains(&Component::Participant(p.name)) {
                consumers.push((p.consumer)(
                    &self.registry,
                    self.transport.clone(),
                    bell.clone(),
                ));
            }
        }
        consumers
    }

    /// Starts the background components among `components` (the HTTP API is served by the
    /// caller from [`Service::router`]): the relay and the housekeeping, the projectors, the
    /// orchestrator with its deadline poller, the participants.
    pub fn start(&self, components: &Components, relay: RelayConfig) -> Running {
        self.process.set_components(components);
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        for consumer in self.consumers(components) {
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                let group = consumer.group().to_owned();
                if let Err(e) = consumer.run(shutdown).await {
                    tracing::error!(group, error = %e, "consumer stopped");
                }
            });
        }
        let bell = self.bus.outbox_bell().clone();
        if components.contains(&Component::Orchestrator) {
            tasks.spawn(
                self.orchestrator
                    .clone()
                    .run_deadlines(bell.clone(), shutdown.clone()),
            );
        }
        let mut relay_stats = None;
        if components.contains(&Component::Relay) {
            // The relay drains the outbox; the same component analyzes tables that grew,
            // prunes what the tables that grow with traffic no longer need and, where
            // autovacuum is off, keeps the queue tables vacuumed.
            tasks.spawn(ops::housekeeping::run(
                self.pool.clone(),
                Some(ops::housekeeping::DEFAULT_INTERVAL),
                shutdown.clone(),
            ));
            tasks.spawn(ops::retention::run(
                self.pool.clone(),
                self.groups.clone(),
                self.transport.layout().clone(),
                self.retention.clone(),
                shutdown.clone(),
            ));
            // Writers that append to the log themselves leave the relay only the outbox rows
            // written before they did: it wakes on its own bell, which nothing rings, and polls.
            let relay_bell = match self.bus.store().publishing() {
                Publishing::Outbox => bell,
                Publishing::Log(_) => Doorbell::new(self.pool.clone(), OUTBOX_CHANNEL),
            };
            let relay = Relay::new(self.pool.clone(), self.transport.clone(), relay_bell, relay);
            relay_stats = Some(relay.stats());
            tasks.spawn(relay.run(shutdown.clone()));
        }
        Running {
            relay_stats,
            shutdown,
            tasks,
        }
    }
}

/// The background components of a process, running.
pub struct Running {
    /// What the relay did, if this process runs it.
    pub relay_stats: Option<Arc<RelayStats>>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl Running {
    /// Stops the components, letting each finish what it is doing: a consumer its batch (its
    /// offsets commit with it), the relay its batch (acknowledged before it commits).
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// The series that describe the process itself:
///
/// | series | type | labels | what |
/// |---|---|---|---|
/// | `sagaflow_build_info` | gauge | `app`, `version` | always 1: the application and release this process runs |
/// | `sagaflow_component` | gauge | `component` | 1 for each component this process runs (`serve --components`) |
/// | `sagaflow_start_time_seconds` | gauge | | when the application was built, in Unix seconds |
///
/// They live in a registry of their own per built application, rendered with the others.
#[derive(Clone)]
struct ProcessMetrics {
    registry: MetricRegistry,
    components: IntGaugeVec,
}

impl ProcessMetrics {
    fn new(app: &str, version: &str) -> Self {
        let registry = MetricRegistry::new();
        let build_info = IntGaugeVec::new(
            Opts::new(
                "sagaflow_build_info",
                "Always 1; the app and version labels name the application and its release.",
            ),
            &["app", "version"],
        )
        .expect("valid metric");
        build_info.with_label_values(&[app, version]).set(1);
        let components = IntGaugeVec::new(
            Opts::new(
                "sagaflow_component",
                "1 for each component this process runs.",
            ),
            &["component"],
        )
        .expect("valid metric");
        let start_time = Gauge::with_opts(Opts::new(
            "sagaflow_start_time_seconds",
            "When the application was built, in Unix seconds.",
        ))
        .expect("valid metric");
        start_time.set(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_secs_f64(),
        );
        for c in [
            Box::new(build_info) as Box<dyn prometheus::core::Collector>,
            Box::new(components.clone()),
            Box::new(start_time),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        ProcessMetrics {
            registry,
            components,
        }
    }

    fn set_components(&self, components: &Components) {
        for c in components.iter() {
            self.components.with_label_values(&[&c.to_string()]).set(1);
        }
    }
}
