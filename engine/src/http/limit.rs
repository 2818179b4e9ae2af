//! The overload guard of the command routes: a concurrency limit that refuses at once, and a
//! timeout.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::sync::Semaphore;

use super::metrics::metrics;
use super::ApiError;

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
