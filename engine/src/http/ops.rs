//! Operating the HTTP API: readiness (`GET /readyz`) and the overload guard of the command
//! routes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::Semaphore;

use super::ApiError;
use crate::metrics::metrics;
use crate::transport::Transport;

/// Whether this process should receive traffic: the database and the transport answer, and
/// it is not draining. Clones share the draining flag.
#[derive(Clone)]
pub struct Readiness {
    pool: PgPool,
    transport: Arc<dyn Transport>,
    draining: Arc<AtomicBool>,
    /// Longest wait for each check.
    pub check_timeout: Duration,
}

impl Readiness {
    pub fn new(pool: PgPool, transport: Arc<dyn Transport>) -> Self {
        Readiness {
            pool,
            transport,
            draining: Arc::new(AtomicBool::new(false)),
            check_timeout: Duration::from_secs(1),
        }
    }

    /// From now on `/readyz` answers 503 `draining`; set when shutdown starts, never cleared.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Runs both checks concurrently, each within `check_timeout`: `"ok"` or the error.
    async fn check(&self) -> (Result<(), String>, Result<(), String>) {
        let timeout = self.check_timeout;
        let database = async {
            match tokio::time::timeout(
                timeout,
                sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&self.pool),
            )
            .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
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
pub fn readiness_router(readiness: Readiness) -> Router {
    Router::new()
        .route("/readyz", get(readyz))
        .with_state(readiness)
}

async fn readyz(State(readiness): State<Readiness>) -> Response {
    let (database, transport) = readiness.check().await;
    let show = |r: &Result<(), String>| match r {
        Ok(()) => Value::from("ok"),
        Err(e) => Value::from(e.as_str()),
    };
    let checks = json!({
        "database": show(&database),
        "transport": show(&transport),
        "transport_kind": readiness.transport.kind(),
    });
    let (status, word) = if readiness.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if database.is_ok() && transport.is_ok() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    };
    (status, Json(json!({"status": word, "checks": checks}))).into_response()
}

/// Bounds on the command routes, so overload is refused quickly instead of queueing.
#[derive(Debug, Clone)]
pub struct CommandLimits {
    /// Command requests executed at once; one more is answered 503 `overloaded` at once.
    pub max_in_flight: usize,
    /// A command request still running after this long is answered 503 `command_timeout`.
    pub timeout: Duration,
}

impl Default for CommandLimits {
    fn default() -> Self {
        CommandLimits {
            max_in_flight: 256,
            timeout: Duration::from_secs(10),
        }
    }
}

struct Limiter {
    permits: Arc<Semaphore>,
    timeout: Duration,
}

/// Guards the command routes of `router` (every `POST` outside `/admin/`) with `limits`:
///
/// - at most `max_in_flight` command requests run at once; a request beyond that is answered
///   at once with 503 `{"error": {"code": "overloaded"}}` and `Retry-After: 1`, without
///   reading its body, so nothing of it is applied;
/// - a command request still running after `timeout` is answered 503 `command_timeout` with
///   `Retry-After: 1`. The request stops waiting, but what it already handed to the database
///   (a group commit in flight) may still commit, so the client cannot tell whether it was
///   applied; a retry with the same `Idempotency-Key` applies it exactly once.
///
/// Queries, health, metrics and admin routes are never limited, so they stay responsive
/// while the command routes are saturated.
pub fn limit_commands(router: Router, limits: CommandLimits) -> Router {
    let limiter = Arc::new(Limiter {
        permits: Arc::new(Semaphore::new(limits.max_in_flight.max(1))),
        timeout: limits.timeout,
    });
    router.layer(middleware::from_fn_with_state(limiter, limit_command))
}

/// Counts a command request in `sagaflow_commands_in_flight` while alive, however it ends
/// (a client that disconnects drops it mid-way).
struct InFlight;

impl InFlight {
    fn enter() -> Self {
        metrics().commands_in_flight.inc();
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics().commands_in_flight.dec();
    }
}

fn is_command(request: &Request) -> bool {
    request.method() == Method::POST && !request.uri().path().starts_with("/admin/")
}

async fn limit_command(
    State(limiter): State<Arc<Limiter>>,
    request: Request,
    next: Next,
) -> Response {
    if !is_command(&request) {
        return next.run(request).await;
    }
    let m = metrics();
    let Ok(_permit) = limiter.permits.clone().try_acquire_owned() else {
        m.commands_shed.with_label_values(&["overloaded"]).inc();
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many commands in flight; retry later",
        )
        .into_response();
    };
    let _in_flight = InFlight::enter();
    match tokio::time::timeout(limiter.timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            m.commands_shed.with_label_values(&["timeout"]).inc();
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "command_timeout",
                format!(
                    "the command did not finish within {} ms and may or may not have been applied; retry with the same Idempotency-Key",
                    limiter.timeout.as_millis()
                ),
            )
            .into_response()
        }
    }
}
