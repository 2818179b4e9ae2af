//! Admin routes are closed unless a token is configured: every `/admin/*` route requires
//! `Authorization: Bearer <SAGAFLOW_ADMIN_TOKEN>`. Without a configured token they answer
//! 403; a missing or wrong token is 401. Tokens are compared in constant time.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use utoipa_axum::router::OpenApiRouter;

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

    /// Whether a token is configured, that is whether the admin routes answer at all.
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
