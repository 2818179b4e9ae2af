//! An application: what a team registers (aggregates, participants, sagas, projections, routes,
//! migrations), and everything derived from it, so that nothing is listed twice: the topics and
//! consumer groups, the components a process can run, the lag metrics, replay and time travel,
//! the rebuilds and admin routes of the read models, the web console, the migrations to apply.
//!
//! Mistakes are found when the application is checked ([`App::check`], which every build and
//! every CLI command runs first), with a message that says what to change: two aggregate types
//! with one name, a saga step whose commands no participant serves, two participants on one
//! context, a migration version used twice.

mod component;
mod service;
mod workload;

pub use component::{Component, Components};
pub use service::{Options, Running, Service, Services};
pub use workload::{Request, Workload};

use std::any::TypeId;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Router;
use sqlx::migrate::{Migration, Migrator};
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::aggregate::Aggregate;
use crate::command::{CommandBus, Repository};
use crate::consumer::Consumer;
use crate::doorbell::Doorbell;
use crate::external::{Breaker, ExternalHandler, ExternalParticipant};
use crate::projection::{Projection, Projector};
use crate::registry::{DuplicateName, Registry};
use crate::saga::local::{Local, LocalParticipant};
use crate::saga::messages::{commands_topic, REPLIES_TOPIC};
use crate::saga::{Participant, Saga};
use crate::transport::Transport;

/// A piece of an application that installs itself: aggregates, sagas, read models, routes and
/// migrations that belong together (a domain's aggregates with their saga and read models, say). Any `FnOnce(App) -> App` is one.
pub trait Module {
    /// Registers the module's parts with `app`.
    fn install(self, app: App) -> App;
}

impl<F: FnOnce(App) -> App> Module for F {
    fn install(self, app: App) -> App {
        self(app)
    }
}

/// Builds the routes of a module, with their OpenAPI, given the services of the running
/// application.
pub type RoutesFn = Arc<dyn Fn(&Services) -> OpenApiRouter + Send + Sync>;

#[derive(Clone)]
pub(crate) struct AggregateSpec {
    pub(crate) type_id: TypeId,
    pub(crate) rust_name: &'static str,
    pub(crate) name: &'static str,
    pub(crate) context: &'static str,
    pub(crate) register: fn(&CommandBus, &mut Registry) -> Result<(), DuplicateName>,
    /// Its generic command route and that route's document; none for the record of an
    /// outside-world participant, whose events only its calls record.
    pub(crate) command_route: Option<CommandRoute>,
}

/// An aggregate's generic command route, and what documents it.
pub(crate) type CommandRoute = (fn(&Registry) -> Router, fn(&mut OpenApi));

/// Builds a participant's consumer from the running application's repositories.
pub(crate) type ConsumerFn =
    Arc<dyn Fn(&Registry, Arc<dyn Transport>, Doorbell) -> Consumer + Send + Sync>;

#[derive(Clone)]
pub(crate) struct ParticipantSpec {
    pub(crate) name: &'static str,
    pub(crate) context: &'static str,
    pub(crate) consumer: ConsumerFn,
    /// The circuit breaker of an outside-world participant.
    pub(crate) breaker: Option<Arc<Breaker>>,
    /// Runs its commands in the orchestrator's transaction ([`Options::local_steps`]); none
    /// for an outside-world participant, whose commands call out.
    pub(crate) local: Option<LocalFn>,
}

/// Builds a participant's local steps from the running application's repositories.
pub(crate) type LocalFn = fn(&Registry) -> Arc<dyn LocalParticipant>;

fn local_participant<A: Aggregate>(registry: &Registry) -> Arc<dyn LocalParticipant> {
    let repo = registry
        .get::<A>()
        .expect("a participant's aggregate type is registered with it");
    Arc::new(Local(Arc::downgrade(&repo)))
}

fn register_aggregate<A: Aggregate>(
    bus: &CommandBus,
    registry: &mut Registry,
) -> Result<(), DuplicateName> {
    registry.register(Arc::new(Repository::<A>::new(bus.clone())))
}

/// Aggregate `A`, without a command route.
fn aggregate_spec<A: Aggregate>() -> AggregateSpec {
    AggregateSpec {
        type_id: TypeId::of::<A>(),
        rust_name: std::any::type_name::<A>(),
        name: A::TYPE,
        context: A::CONTEXT,
        register: register_aggregate::<A>,
        command_route: None,
    }
}

fn command_route_of<A: Aggregate>(registry: &Registry) -> Router {
    crate::http::command_route(
        registry
            .get::<A>()
            .expect("every registered aggregate type has a repository"),
    )
}

fn participant_consumer<A: Aggregate>(
    registry: &Registry,
    transport: Arc<dyn Transport>,
    outbox_bell: Doorbell,
) -> Consumer {
    let repo = registry
        .get::<A>()
        .expect("a participant's aggregate type is registered with it");
    Participant::new(repo).consumer(transport, outbox_bell)
}

/// One migration source and who registered it.
#[derive(Clone)]
pub(crate) struct MigrationSource {
    pub(crate) owner: &'static str,
    pub(crate) migrator: &'static Migrator,
}

/// An application built on sagaflow: register its parts, then run it with
/// `run_cli` (the command line every application gets) or [`App::build`] (for tests and
/// embedding).
///
/// Registering returns the application, so a whole service reads top to bottom. Nothing runs
/// and nothing is checked until it is built or run.
#[derive(Clone)]
pub struct App {
    pub(crate) name: &'static str,
    pub(crate) version: &'static str,
    pub(crate) aggregates: Vec<AggregateSpec>,
    pub(crate) participants: Vec<ParticipantSpec>,
    pub(crate) sagas: Vec<Arc<Saga>>,
    pub(crate) projections: Vec<Arc<dyn Projection>>,
    pub(crate) routes: Vec<RoutesFn>,
    pub(crate) migrations: Vec<MigrationSource>,
    pub(crate) workload: Option<Arc<dyn Workload>>,
}

impl App {
    /// An application named `name` (its process logs and metrics say so) at release
    /// `version`, with nothing registered.
    pub fn new(name: &'static str, version: &'static str) -> Self {
        App {
            name,
            version,
            aggregates: Vec::new(),
            participants: Vec::new(),
            sagas: Vec::new(),
            projections: Vec::new(),
            routes: Vec::new(),
            migrations: Vec::new(),
            workload: None,
        }
    }

    /// The application's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The application's release.
    pub fn version(&self) -> &'static str {
        self.version
    }

    /// Registers aggregate type `A`: its generic command route
    /// `POST /commands/{A::TYPE}/{aggregate_id}`, its streams for time travel and replay, and
    /// its events on topic `<A::CONTEXT>.events`. Registering one type again changes nothing.
    pub fn aggregate<A: Aggregate>(mut self) -> Self {
        let route: CommandRoute = (
            command_route_of::<A>,
            crate::http::openapi::document_command_route::<A>,
        );
        match self
            .aggregates
            .iter_mut()
            .find(|a| a.type_id == TypeId::of::<A>())
        {
            Some(a) => a.command_route = Some(route),
            None => self.aggregates.push(AggregateSpec {
                command_route: Some(route),
                ..aggregate_spec::<A>()
            }),
        }
        self
    }

    /// Registers aggregate type `A` (see [`App::aggregate`]) as a saga participant: component
    /// `participant:<A::TYPE>` runs the saga commands sent to `<A::CONTEXT>.commands` against
    /// it, and replies.
    pub fn participant<A: Aggregate>(mut self) -> Self {
        self = self.aggregate::<A>();
        if !self.participants.iter().any(|p| p.name == A::TYPE) {
            self.participants.push(ParticipantSpec {
                name: A::TYPE,
                context: A::CONTEXT,
                consumer: Arc::new(participant_consumer::<A>),
                breaker: None,
                local: Some(local_participant::<A>),
            });
        }
        self
    }

    /// Registers an outside-world participant (see [`crate::external`]): component
    /// `participant:<type>` runs the saga commands sent to its record aggregate's context by
    /// calling the outside system, and records what it did as that aggregate's events. The
    /// record aggregate is registered for its streams (time travel, replay, timelines) but
    /// gets no command route: only the calls write its events. Registering a second
    /// participant of one type changes nothing.
    pub fn external<S: ExternalParticipant>(mut self, participant: S) -> Self {
        let name = <S::Record as Aggregate>::TYPE;
        if !self
            .aggregates
            .iter()
            .any(|a| a.type_id == TypeId::of::<S::Record>())
        {
            self.aggregates.push(aggregate_spec::<S::Record>());
        }
        if self.participants.iter().any(|p| p.name == name) {
            return self;
        }
        let participant = Arc::new(participant);
        let breaker = Arc::new(Breaker::new(name, participant.settings().breaker));
        let for_consumer = breaker.clone();
        self.participants.push(ParticipantSpec {
            name,
            context: <S::Record as Aggregate>::CONTEXT,
            consumer: Arc::new(move |registry, transport, outbox_bell| {
                let repo = registry
                    .get::<S::Record>()
                    .expect("an outside-world participant's record type is registered with it");
                let pool = repo.bus().pool().clone();
                ExternalHandler::new(participant.clone(), repo, for_consumer.clone()).consumer(
                    pool,
                    transport,
                    outbox_bell,
                )
            }),
            breaker: Some(breaker),
            local: None,
        });
        self
    }

    /// Registers a saga (built with [`crate::saga::SagaDefinition`]); the orchestrator drives it.
    pub fn saga(mut self, saga: Arc<Saga>) -> Self {
        self.sagas.push(saga);
        self
    }

    /// Registers a read model: its live consumer (component `projections`), its rebuild
    /// (`projections rebuild <name>` and the admin route) and its line in
    /// `GET /admin/projections`. Its query routes are routes like any other
    /// ([`App::routes`]).
    pub fn projection<P: Projector>(mut self, projector: P) -> Self {
        self.projections.push(crate::projection::erase(projector));
        self
    }

    /// Adds routes with their OpenAPI (handlers annotated with `#[utoipa::path]`, collected
    /// with `utoipa_axum::routes!`), built once the application is, from its [`Services`] (the
    /// repositories of the registered aggregates, the pool, the topic layout).
    pub fn routes(
        mut self,
        routes: impl Fn(&Services) -> OpenApiRouter + Send + Sync + 'static,
    ) -> Self {
        self.routes.push(Arc::new(routes));
        self
    }

    /// Adds migrations (`sqlx::migrate!("./migrations")`), applied with the engine's own in one
    /// history. `owner` names them in errors. Their versions must not collide with any other
    /// part's: number an application's own from 1000, or by date (`sqlx migrate add`).
    pub fn migrations(mut self, owner: &'static str, migrator: &'static Migrator) -> Self {
        self.migrations.push(MigrationSource { owner, migrator });
        self
    }

    /// Sets what `bench saga`, `bench append` and `bench rebuild` send to this application.
    pub fn bench_workload(mut self, workload: impl Workload) -> Self {
        self.workload = Some(Arc::new(workload));
        self
    }

    /// Installs a module.
    pub fn install(self, module: impl Module) -> Self {
        module.install(self)
    }

    /// Checks that the registered parts fit together; see [`AppError`].
    pub fn check(&self) -> Result<(), AppError> {
        let mut names: BTreeMap<&str, &AggregateSpec> = BTreeMap::new();
        for a in &self.aggregates {
            if let Some(other) = names.insert(a.name, a) {
                return Err(AppError::DuplicateAggregate {
                    name: a.name,
                    first: other.rust_name,
                    second: a.rust_name,
                });
            }
        }
        if names.contains_key(crate::saga::SAGA_STREAM_TYPE) {
            return Err(AppError::ReservedName {
                name: crate::saga::SAGA_STREAM_TYPE,
            });
        }
        let mut contexts: BTreeMap<&str, &str> = BTreeMap::new();
        for p in &self.participants {
            if let Some(other) = contexts.insert(p.context, p.name) {
                return Err(AppError::SharedCommandTopic {
                    context: p.context,
                    first: other,
                    second: p.name,
                });
            }
        }
        let served: BTreeSet<&str> = self.participants.iter().map(|p| p.name).collect();
        let mut saga_names = BTreeSet::new();
        for saga in &self.sagas {
            if !saga_names.insert(saga.name) {
                return Err(AppError::DuplicateSaga { name: saga.name });
            }
            for starter in saga.started_by.iter().chain(&saga.aborted_by) {
                if !names.contains_key(starter) {
                    return Err(AppError::UnregisteredStarter {
                        saga: saga.name,
                        aggregate: starter,
                    });
                }
            }
            for step in &saga.steps {
                for target in std::iter::once(step.invokes).chain(step.compensates) {
                    if !served.contains(target) {
                        return Err(AppError::UnservedStep {
                            saga: saga.name,
                            step: step.name,
                            aggregate: target,
                        });
                    }
                }
            }
            if let Some(target) = saga.final_command_to {
                if !served.contains(target) {
                    return Err(AppError::UnservedStep {
                        saga: saga.name,
                        step: "on_compensated",
                        aggregate: target,
                    });
                }
            }
        }
        let event_topics = self.event_topics();
        let mut projection_names = BTreeSet::new();
        for p in &self.projections {
            if !projection_names.insert(p.name()) {
                return Err(AppError::DuplicateProjection { name: p.name() });
            }
            if !event_topics.iter().any(|t| t == p.topic()) {
                return Err(AppError::UnpublishedTopic {
                    projection: p.name(),
                    topic: p.topic(),
                });
            }
        }
        self.migrator()?;
        Ok(())
    }

    /// The logical topics of the registered aggregates' events (`<context>.events`), sorted.
    pub fn event_topics(&self) -> Vec<String> {
        let contexts: BTreeSet<&str> = self.aggregates.iter().map(|a| a.context).collect();
        contexts.iter().map(|c| format!("{c}.events")).collect()
    }

    /// Every logical topic the application uses: its events, the saga commands of each
    /// participant's context, and the saga replies. The transports create them at start-up.
    pub fn topics(&self) -> Vec<String> {
        let mut topics = self.event_topics();
        topics.extend(self.participants.iter().map(|p| commands_topic(p.context)));
        if !self.sagas.is_empty() || !self.participants.is_empty() {
            topics.push(REPLIES_TOPIC.to_owned());
        }
        topics.sort();
        topics.dedup();
        topics
    }

    /// The components a process of this application can run (`serve --components`).
    pub fn components(&self) -> Components {
        let mut all = vec![Component::Http, Component::Relay];
        if !self.projections.is_empty() {
            all.push(Component::Projections);
        }
        if !self.sagas.is_empty() {
            all.push(Component::Orchestrator);
        }
        all.extend(
            self.participants
                .iter()
                .map(|p| Component::Participant(p.name)),
        );
        Components::new(all)
    }

    /// The names of the registered read models.
    pub fn projection_names(&self) -> Vec<&'static str> {
        self.projections.iter().map(|p| p.name()).collect()
    }

    /// The registered read model named `name`.
    pub fn projection_named(&self, name: &str) -> Option<Arc<dyn Projection>> {
        self.projections.iter().find(|p| p.name() == name).cloned()
    }

    /// The registered sagas.
    pub fn sagas(&self) -> &[Arc<Saga>] {
        &self.sagas
    }

    /// The registry of aggregate and stream types over `bus`: what time travel and `replay`
    /// fold streams with.
    pub fn registry(&self, bus: &CommandBus) -> Result<Registry, AppError> {
        let mut registry = Registry::new();
        for a in &self.aggregates {
            (a.register)(bus, &mut registry)?;
        }
        registry.register_stream(crate::saga::SAGA_STREAM_TYPE, || {
            Box::new(crate::saga::SagaFold::default())
        })?;
        Ok(registry)
    }

    /// The engine's migrations and every registered part's, as one history (sorted by
    /// version). Fails when two parts use one version.
    pub fn migrator(&self) -> Result<Migrator, AppError> {
        let mut by_version: BTreeMap<i64, (&'static str, Migration)> = BTreeMap::new();
        let engine = MigrationSource {
            owner: "sagaflow-engine",
            migrator: &crate::db::MIGRATOR,
        };
        for source in std::iter::once(&engine).chain(&self.migrations) {
            for m in source.migrator.iter() {
                if let Some((owner, other)) = by_version.get(&m.version) {
                    if other.checksum != m.checksum {
                        return Err(AppError::MigrationVersionTaken {
                            version: m.version,
                            first: owner,
                            first_description: other.description.to_string(),
                            second: source.owner,
                            second_description: m.description.to_string(),
                        });
                    }
                    continue;
                }
                by_version.insert(m.version, (source.owner, m.clone()));
            }
        }
        Ok(crate::db::migrator_of(
            by_version.into_values().map(|(_, m)| m).collect(),
        ))
    }
}

/// Why the registered parts of an application do not fit together. Each says what to change.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Two aggregate types share one [`Aggregate::TYPE`].
    #[error("two aggregate types are named {name:?}: {first} and {second}; give one of them another Aggregate::TYPE")]
    DuplicateAggregate {
        /// The shared name.
        name: &'static str,
        /// The Rust type registered first.
        first: &'static str,
        /// The Rust type registered second.
        second: &'static str,
    },
    /// An aggregate type takes the name of the engine's saga streams (`saga`).
    #[error("no aggregate type may be named {name:?}: the engine's own streams use it")]
    ReservedName {
        /// The reserved name.
        name: &'static str,
    },
    /// Two participants share a bounded context, so their commands would share one topic.
    #[error("participants {first} and {second} both take their commands from {context}.commands; aggregates served as participants need contexts of their own")]
    SharedCommandTopic {
        /// The shared context.
        context: &'static str,
        /// The participant registered first.
        first: &'static str,
        /// The participant registered second.
        second: &'static str,
    },
    /// Two sagas share a name, which would give them the same saga ids.
    #[error("two sagas are named {name:?}")]
    DuplicateSaga {
        /// The shared name.
        name: &'static str,
    },
    /// A saga is started or aborted by an aggregate type that is not registered.
    #[error("saga {saga} is started or aborted by events of aggregate type {aggregate:?}, which is not registered; register it with App::aggregate")]
    UnregisteredStarter {
        /// The saga.
        saga: &'static str,
        /// The unregistered aggregate type.
        aggregate: &'static str,
    },
    /// A saga sends commands to an aggregate type no participant serves.
    #[error("step {step} of saga {saga} sends commands to aggregate type {aggregate:?}, which no participant serves; register it with App::participant")]
    UnservedStep {
        /// The saga.
        saga: &'static str,
        /// The step (`on_compensated` for the final command).
        step: &'static str,
        /// The unserved aggregate type.
        aggregate: &'static str,
    },
    /// Two read models share a name.
    #[error("two projections are named {name:?}")]
    DuplicateProjection {
        /// The shared name.
        name: &'static str,
    },
    /// A read model reads a topic that no registered aggregate publishes. It would wait forever.
    #[error(
        "projection {projection} reads topic {topic}, which no registered aggregate publishes"
    )]
    UnpublishedTopic {
        /// The read model.
        projection: &'static str,
        /// The logical topic it reads.
        topic: &'static str,
    },
    /// Two parts use one migration version for different migrations.
    #[error("migration version {version} is used twice: {first} ({first_description}) and {second} ({second_description}); number an application's migrations from 1000 or by date")]
    MigrationVersionTaken {
        /// The version.
        version: i64,
        /// The part that registered it first (`sagaflow-engine` for the engine's own).
        first: &'static str,
        /// The first migration's description.
        first_description: String,
        /// The part that registered it second.
        second: &'static str,
        /// The second migration's description.
        second_description: String,
    },
    /// A type name was registered twice in the [`Registry`].
    #[error(transparent)]
    Duplicate(#[from] DuplicateName),
}
