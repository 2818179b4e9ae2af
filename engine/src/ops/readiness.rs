//! Readiness (`GET /readyz`): whether this process should receive traffic.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use sqlx::{ConnectOptions, Connection, PgPool};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::external::Breaker;
use crate::transport::Transport;

/// Whether this process should receive traffic: the database and the transport answer, and
/// it is not draining. Clones share the draining flag.
#[derive(Clone)]
pub struct Readiness {
    pool: PgPool,
    transport: Arc<dyn Transport>,
    draining: Arc<AtomicBool>,
    breakers: Arc<[Arc<Breaker>]>,
    /// Longest wait for each check.
    pub check_timeout: Duration,
}

impl Readiness {
    /// Readiness of a process on `pool` and `transport`: not draining, each check given 1 s.
    pub fn new(pool: PgPool, transport: Arc<dyn Transport>) -> Self {
        Readiness {
            pool,
            transport,
            draining: Arc::new(AtomicBool::new(false)),
            breakers: Arc::new([]),
            check_timeout: Duration::from_secs(1),
        }
    }

    /// Also reports the state of these circuit breakers (those of the outside-world
    /// participants). An open breaker does not make the process unready: everything else it
    /// serves still works, and the commands for that participant wait.
    pub fn with_breakers(mut self, breakers: Vec<Arc<Breaker>>) -> Self {
        self.breakers = breakers.into();
        self
    }

    /// From now on `/readyz` answers 503 `draining`; set when shutdown starts, never cleared.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether shutdown has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Runs both checks concurrently, each within `check_timeout`: `"ok"` or the error.
    async fn check(&self) -> (Result<(), String>, Result<(), String>) {
        let timeout = self.check_timeout;
        let database = async {
            let failed = match tokio::time::timeout(
                timeout,
                sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&self.pool),
            )
            .await
            {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {} ms", timeout.as_millis()),
            };
            // The pool only says that it timed out; a connection of its own says why.
            match tokio::time::timeout(timeout, self.pool.connect_options().connect()).await {
                Ok(Err(e)) => Err(format!("{failed}; connecting: {e}")),
                Ok(Ok(conn)) => {
                    let _ = conn.close().await;
                    Err(failed)
                }
                Err(_) => Err(format!("{failed}; connecting: no answer")),
            }
        };
        let transport = async {
            match tokio::time::timeout(timeout, self.transport.check()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
            }
        };
        tokio::join!(database, transport)
    }
}

/// `GET /readyz`: 200 `{"status": "ready", "checks": {"database": "ok", "transport": "ok"}}`
/// when `SELECT 1` and the transport's check succeed within the timeout; otherwise 503 with
/// `"status": "not_ready"` and the failing check's error, or `"status": "draining"` once
/// shutdown started. The HTTP server starts only after migrations, so a migrating process
/// does not answer at all.
pub fn readiness_router(readiness: Readiness) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(readyz))
        .with_state(readiness)
}

/// The body of `GET /readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadinessBody {
    /// `ready`, `not_ready` or `draining`.
    pub status: &'static str,
    /// What was checked, and how it went.
    pub checks: ReadinessChecks,
}

/// What `GET /readyz` checked.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadinessChecks {
    /// `ok`, or why the database did not answer.
    pub database: String,
    /// `ok`, or why the transport did not answer.
    pub transport: String,
    /// `postgres` or `kafka`.
    pub transport_kind: &'static str,
    /// The circuit breaker of each outside-world participant: `closed`, `half_open` or
    /// `open` (calls to its outside system wait). Absent when there is none.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub circuit_breakers: BTreeMap<&'static str, &'static str>,
}

/// Whether this process should receive traffic: 200 when the database and the transport
/// answer, 503 when one does not or the process is draining.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "ready", body = ReadinessBody),
        (status = 503, description = "`not_ready` or `draining`", body = ReadinessBody),
    )
)]
async fn readyz(State(readiness): State<Readiness>) -> Response {
    let (database, transport) = readiness.check().await;
    let show = |r: Result<(), String>| r.err().unwrap_or_else(|| "ok".to_owned());
    let (status, word) = if readiness.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if database.is_ok() && transport.is_ok() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    };
    let body = ReadinessBody {
        status: word,
        checks: ReadinessChecks {
            database: show(database),
            transport: show(transport),
            transport_kind: readiness.transport.kind(),
            circuit_breakers: readiness
                .breakers
                .iter()
                .map(|b| (b.participant(), b.state().as_str()))
                .collect(),
        },
    };
    (status, Json(body)).into_response()
}
