//! The web console every application gets at `/console`: from an aggregate's id (a trip's, a
//! booking's) to why its saga ended, in a browser.
//!
//! It is served by the engine itself, with nothing loaded from another host: the HTML shell,
//! one script and one style sheet are embedded in the binary ([`pages`]); the script draws
//! every page (charts included, as inline SVG) from JSON. The shell holds no business data.
//! The data lives behind the admin token like every admin route ([`data_router`], to be
//! wrapped with [`crate::http::admin::protect`]); the page asks for the token once per
//! browser session and sends it as `Authorization: Bearer` on every call.
//!
//! | route | answers |
//! |---|---|
//! | `GET /console`, `/console/sagas`, `/console/sagas/{saga_id}`, `/console/streams/{stream_id}`, `/console/dead-letters`, `/console/projections` | the shell (`text/html`); 403 with a page that says how to open the console when no admin token is configured |
//! | `GET /console/assets/console.js`, `/console/assets/console.css` | the embedded script and style sheet |
//! | `GET /admin/console/app` | what the application registered: sagas, aggregate types, projections ([`AppInfo`]) |
//! | `GET /admin/console/overview?window=` | sagas by state, throughput and step latency, lag, outbox, dead letters ([`Overview`]) |
//! | `GET /admin/console/sagas?saga_type=&state=&older_than=&q=&limit=&after=` | sagas, stuck ones first ([`SagaList`]) |
//! | `GET /admin/console/sagas/{saga_id}` | a saga's path, timeline, data after each step, streams and dead letters ([`SagaDetail`]) |
//! | `GET /admin/console/search?q=` | where an id leads ([`SearchResult`]) |
//!
//! The pages also read the routes every application has: `GET /streams/{stream_id}/events`
//! and `/state?at_version=` (time travel), `GET /admin/dead-letters` and
//! `GET /admin/projections`, and act through the existing admin routes (retry-step, abort,
//! dead-letter retry and discard, rebuild), which audit every action.

mod overview;
mod pages;
mod path;
mod rows;
mod sagas;
mod search;

pub use overview::{
    ConsumerLag, DeadLetterCount, LatencyBucket, OutboxInfo, Overview, StateCount, StepLatency,
    ThroughputBucket,
};
pub use pages::pages;
pub use path::{saga_path, PathNode};
pub use sagas::{ConsoleSaga, DataAfter, SagaActions, SagaDeadLetter, SagaDetail, SagaList};
pub use search::{SearchMatch, SearchResult};

use std::sync::Arc;

use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::ops::ConsumerGroup;
use crate::saga::Saga;
use crate::store::EventStore;
use crate::transport::Transport;

/// What the console's data routes read: the database, the transport (for lag) and what the
/// application registered.
#[derive(Clone)]
pub struct Console {
    /// The database.
    pub pool: PgPool,
    /// The event store over the same pool.
    pub store: EventStore,
    /// The transport, asked for its end offsets (consumer lag).
    pub transport: Arc<dyn Transport>,
    /// The application's name.
    pub app: &'static str,
    /// The application's release.
    pub version: &'static str,
    /// The registered sagas.
    pub sagas: Arc<[Arc<Saga>]>,
    /// The registered aggregate types.
    pub aggregate_types: Vec<&'static str>,
    /// The registered read models.
    pub projections: Vec<&'static str>,
    /// Every consumer group of the application, with the topics it reads.
    pub groups: Vec<ConsumerGroup>,
}

/// The console's JSON routes under `/admin/console/`, unprotected: the application puts them
/// behind the admin token ([`crate::http::admin::protect`]).
pub fn data_router(console: Console) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(console_app))
        .routes(routes!(overview::console_overview))
        .routes(routes!(sagas::console_sagas))
        .routes(routes!(sagas::console_saga))
        .routes(routes!(search::console_search))
        .with_state(console)
}

/// A registered saga, as the console shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SagaInfo {
    /// Its name: the `saga_type` of its instances.
    pub name: &'static str,
    /// The aggregate type whose events start it: an id of that type finds its saga.
    pub started_by: Option<&'static str>,
    /// Its steps, in order.
    pub steps: Vec<StepInfo>,
    /// The aggregate type of the command sent once it compensated (`on_compensated`).
    pub final_command_to: Option<&'static str>,
}

/// One step of a registered saga.
#[derive(Debug, Serialize, ToSchema)]
pub struct StepInfo {
    /// The step's name.
    pub name: &'static str,
    /// The aggregate type its commands go to.
    pub invokes: &'static str,
    /// The aggregate type its compensation goes to; absent if it has none.
    pub compensates: Option<&'static str>,
}

/// What the application registered, for the console's menus and filters.
#[derive(Debug, Serialize, ToSchema)]
pub struct AppInfo {
    /// The application's name.
    pub name: &'static str,
    /// The application's release.
    pub version: &'static str,
    /// The registered sagas, in the order they were registered.
    pub sagas: Vec<SagaInfo>,
    /// The registered aggregate types, sorted.
    pub aggregate_types: Vec<&'static str>,
    /// The registered read models.
    pub projections: Vec<&'static str>,
    /// Every saga state, in the order of a saga's life.
    pub states: Vec<&'static str>,
}

fn saga_info(saga: &Saga) -> SagaInfo {
    SagaInfo {
        name: saga.name,
        started_by: saga.started_by,
        steps: saga
            .steps
            .iter()
            .map(|s| StepInfo {
                name: s.name,
                invokes: s.invokes,
                compensates: s.compensates,
            })
            .collect(),
        final_command_to: saga.final_command_to,
    }
}

/// The application: its sagas, aggregate types and read models. The console also calls it to
/// check a token.
#[utoipa::path(
    get,
    path = "/admin/console/app",
    tag = "console",
    responses((status = 200, description = "what the application registered", body = AppInfo))
)]
async fn console_app(
    axum::extract::State(console): axum::extract::State<Console>,
) -> axum::Json<AppInfo> {
    axum::Json(AppInfo {
        name: console.app,
        version: console.version,
        sagas: console.sagas.iter().map(|s| saga_info(s)).collect(),
        aggregate_types: console.aggregate_types.clone(),
        projections: console.projections.clone(),
        states: crate::saga::read_model::STATES.to_vec(),
    })
}
