//! Admin routes are closed unless a token is configured: every `/admin/*` route requires
//! `Authorization: Bearer <SAGAFLOW_ADMIN_TOKEN>`. Without a configured token they answer
//! 403; a missing or wrong token is 401. Tokens are compared in constant time.
//!
//! Every admin action that changes something (retry-step, abort, a dead letter's retry or
//! discard, a rebuild) is audited with [`audited`]: one log line with target
//! `sagaflow::audit` and one count in `sagaflow_admin_actions_total{action}`.

use std::fmt::Display;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use utoipa_axum::router::OpenApiRouter;

use chrono::{SecondsFormat, Utc};

use super::ApiError;

/// The configured admin token (none: admin routes are disabled).
#[derive(Clone, Default)]
pub struct AdminToken(Option<Arc<[u8; 32]>>);

impl AdminToken {
    /// The token the admin routes require; `None` or an empty token leaves them disabled. Only its
    /// SHA-256 digest is kept.
    pub fn new(token: Option<&str>) -> Self {
        AdminToken(
            token
                .filter(|t| !t.is_empty())
                .map(|t| Arc::new(digest(t.as_bytes()))),
        )
    }

    /// Whether a token is configured, that is whether the admin routes (and the console) are
    /// open to whoever presents it.
    pub fn is_configured(&self) -> bool {
        self.0.is_some()
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Equal digests, compared without an early exit (the digest also hides the length).
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Puts every route of `router` behind the admin token.
pub fn protect(router: OpenApiRouter, token: AdminToken) -> OpenApiRouter {
    router.route_layer(middleware::from_fn_with_state(token, require_admin))
}

async fn require_admin(State(token): State<AdminToken>, request: Request, next: Next) -> Response {
    let Some(expected) = token.0.as_deref() else {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "admin routes are disabled: no SAGAFLOW_ADMIN_TOKEN is configured",
        )
        .into_response();
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| digest(t.trim().as_bytes()));
    match presented {
        Some(p) if constant_time_eq(&p, expected) => next.run(request).await,
        _ => {
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "admin routes need Authorization: Bearer <SAGAFLOW_ADMIN_TOKEN>",
            )
            .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
    }
}

/// An admin action that changes something, as the audit names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAction {
    /// `POST /admin/sagas/{saga_id}/retry-step`
    SagaRetryStep,
    /// `POST /admin/sagas/{saga_id}/abort`
    SagaAbort,
    /// `POST /admin/dead-letters/{id}/retry`
    DeadLetterRetry,
    /// `POST /admin/dead-letters/{id}/discard`
    DeadLetterDiscard,
    /// `POST /admin/projections/{name}/rebuild`
    ProjectionRebuild,
}

impl AdminAction {
    /// The label of `sagaflow_admin_actions_total` and the `action` of the log line.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminAction::SagaRetryStep => "saga_retry_step",
            AdminAction::SagaAbort => "saga_abort",
            AdminAction::DeadLetterRetry => "dead_letter_retry",
            AdminAction::DeadLetterDiscard => "dead_letter_discard",
            AdminAction::ProjectionRebuild => "projection_rebuild",
        }
    }
}

/// Answers `result` and audits it: whatever the outcome, `sagaflow_admin_actions_total{action}`
/// counts one, and one INFO line with target `sagaflow::audit` says which action, on what
/// (`subject`: a saga id, a dead letter's id, a projection's name), when (`at`, RFC 3339), and
/// how it ended (`status`, and `code` for an error).
pub fn audited<T: IntoResponse>(
    action: AdminAction,
    subject: impl Display,
    result: Result<T, ApiError>,
) -> Response {
    let (response, code) = match result {
        Ok(t) => (t.into_response(), None),
        Err(e) => {
            let code = e.code;
            (e.into_response(), Some(code))
        }
    };
    super::metrics::metrics()
        .admin_actions
        .with_label_values(&[action.as_str()])
        .inc();
    tracing::info!(
        target: "sagaflow::audit",
        action = action.as_str(),
        subject = %subject,
        at = %Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        status = response.status().as_u16(),
        code = code.unwrap_or(""),
        "admin action"
    );
    response
}
