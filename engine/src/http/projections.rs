//! `GET /admin/projections` and `POST /admin/projections/{name}/rebuild` (the caller puts them
//! behind the admin token).
//!
//! - `GET /admin/projections` → `{"projections": [ProjectionInfo, ...]}`: for each projection
//!   its consumer group, its rebuild state and progress, and its consumer position, end offsets
//!   and lag (summed and per partition). If the transport cannot be reached, the offsets are
//!   `null` and `lag_error` says why; the rest is still answered.
//! - `POST /admin/projections/{name}/rebuild` → `202` with the projection's [`ProjectionInfo`]
//!   once the rebuild has started (its tables are emptied and its snapshot taken); it runs in
//!   the background and its progress shows in `GET /admin/projections`. `404
//!   projection_not_found` for an unknown name, `409 rebuild_in_progress` while one runs.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::admin::{audited, AdminAction};
use super::{ApiError, ErrorBody, PathParams};
use crate::consumer::{group_lag, PartitionLag};
use crate::projection::rebuild::{self, RebuildError, RebuildOptions, RebuildStatus};
use crate::projection::{group_of, Projection};
use crate::transport::Transport;

#[derive(Clone)]
struct AdminState {
    pool: PgPool,
    transport: Arc<dyn Transport>,
    projections: Arc<[Arc<dyn Projection>]>,
}

/// The projection admin routes over the registered `projections` (unprotected: the caller
/// puts them behind the admin token).
pub fn admin_router(
    pool: PgPool,
    transport: Arc<dyn Transport>,
    projections: Arc<[Arc<dyn Projection>]>,
) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(start_rebuild))
        .with_state(AdminState {
            pool,
            transport,
            projections,
        })
}

/// One projection in `GET /admin/projections`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectionInfo {
    /// The projection's name, as `POST /admin/projections/{name}/rebuild` takes it.
    pub name: &'static str,
    /// The consumer group of its live projector.
    pub group: String,
    /// The logical topic it consumes.
    pub topic: &'static str,
    /// `idle`, `rebuilding` or `failed`: see [`RebuildStatus::state`].
    pub state: &'static str,
    /// Its last (or running) rebuild.
    pub rebuild: RebuildStatus,
    /// Messages consumed: the sum of the group's committed offsets.
    pub position: Option<i64>,
    /// Messages in the topic: the sum of the partitions' end offsets.
    pub end: Option<i64>,
    /// `end - position`, summed over partitions.
    pub lag: Option<i64>,
    /// Each partition's position, end and lag; empty when `lag_error` is set.
    pub partitions: Vec<PartitionLag>,
    /// Why the offsets are missing, if the transport could not be asked.
    pub lag_error: Option<String>,
}

async fn info(state: &AdminState, p: &dyn Projection) -> Result<ProjectionInfo, ApiError> {
    let rebuild = rebuild::status(&state.pool, p.name()).await?;
    let group = group_of(p.name());
    let lag = group_lag(&state.pool, &*state.transport, &group, &[p.topic()]).await;
    let (partitions, lag_error) = match lag {
        Ok(partitions) => (Some(partitions), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let sum = |f: fn(&PartitionLag) -> i64| partitions.as_ref().map(|ps| ps.iter().map(f).sum());
    Ok(ProjectionInfo {
        name: p.name(),
        topic: p.topic(),
        state: rebuild.state,
        rebuild,
        position: sum(|p| p.position),
        end: sum(|p| p.end),
        lag: sum(|p| p.lag),
        partitions: partitions.unwrap_or_default(),
        lag_error,
        group,
    })
}

/// Every projection of the application.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectionList {
    /// Every registered projection, by registration order.
    pub projections: Vec<ProjectionInfo>,
}

/// Each read model's position, lag and rebuild state.
#[utoipa::path(
    get,
    path = "/admin/projections",
    tag = "admin",
    responses((status = 200, description = "every projection", body = ProjectionList))
)]
async fn list(State(state): State<AdminState>) -> Result<Json<ProjectionList>, ApiError> {
    let mut projections = Vec::with_capacity(state.projections.len());
    for p in state.projections.iter() {
        projections.push(info(&state, &**p).await?);
    }
    Ok(Json(ProjectionList { projections }))
}

/// Starts rebuilding a read model from the event store; it runs in the background.
#[utoipa::path(
    post,
    path = "/admin/projections/{name}/rebuild",
    tag = "admin",
    params(("name" = String, Path, description = "The projection's name")),
    responses(
        (status = 202, description = "the rebuild started", body = ProjectionInfo),
        (status = 404, description = "`projection_not_found`", body = ErrorBody),
        (status = 409, description = "`rebuild_in_progress`", body = ErrorBody),
    )
)]
async fn start_rebuild(
    State(state): State<AdminState>,
    PathParams(name): PathParams<String>,
) -> Response {
    let result = rebuild_now(&state, &name).await;
    audited(AdminAction::ProjectionRebuild, &name, result)
}

async fn rebuild_now(state: &AdminState, name: &str) -> Result<Response, ApiError> {
    let Some(p) = state.projections.iter().find(|p| p.name() == name).cloned() else {
        let known: Vec<&str> = state.projections.iter().map(|p| p.name()).collect();
        return Err(ApiError::not_found(
            "projection_not_found",
            format!("no projection named {name:?}; known: {}", known.join(", ")),
        ));
    };
    let job = match p
        .begin_rebuild(
            state.pool.clone(),
            RebuildOptions::default(),
            Arc::new(|_: &_| {}),
        )
        .await
    {
        Ok(job) => job,
        Err(e @ RebuildError::AlreadyRunning(_)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "rebuild_in_progress",
                e.to_string(),
            ))
        }
        Err(RebuildError::Projection(crate::projection::ProjectionError::Database(e))) => {
            return Err(e.into())
        }
        Err(e) => {
            tracing::error!(projection = %name, error = %e, "cannot start a rebuild");
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "rebuild_failed",
                e.to_string(),
            ));
        }
    };
    tracing::info!(projection = %name, events = ?job.status.events_total, "rebuild started");
    // Read before the job runs, so the answer shows the rebuild that was just started.
    let info = info(state, &*p).await;
    tokio::spawn(async move {
        // The outcome is recorded in projection_status and logged by the job itself.
        let _ = job.run.await;
    });
    Ok((StatusCode::ACCEPTED, Json(info?)).into_response())
}
