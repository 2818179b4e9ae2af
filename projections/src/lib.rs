//! sagaflow-projections: read models kept by projectors, and the query routes over them.

use std::sync::Arc;

use axum::Router;
use sagaflow_engine::consumer::Consumer;
use sagaflow_engine::transport::Transport;
use sqlx::PgPool;

/// The read models of sagaflow: their projectors, query routes and admin routes.
#[derive(Clone)]
pub struct Projections {
    #[allow(dead_code)]
    pool: PgPool,
    #[allow(dead_code)]
    transport: Arc<dyn Transport>,
}

impl Projections {
    pub fn new(pool: PgPool, transport: Arc<dyn Transport>) -> Self {
        Projections { pool, transport }
    }

    /// The public query routes.
    pub fn router(&self) -> Router {
        Router::new()
    }

    /// The `/admin/projections…` routes; the caller puts them behind the admin token.
    pub fn admin_router(&self) -> Router {
        Router::new()
    }

    /// The live projectors, one consumer group each, for the caller to run.
    pub fn consumers(&self) -> Vec<Consumer> {
        Vec::new()
    }
}
