//! The console's pages and assets: one HTML shell (the same for every page; the script reads
//! the path and draws the page from the data routes), the script and the style sheet, all
//! embedded in the binary. Nothing is loaded from another host, and the Content-Security-Policy
//! says so to the browser.

use std::sync::LazyLock;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::http::PathParams;

const SHELL: &str = include_str!("assets/console.html");
const CLOSED: &str = include_str!("assets/closed.html");
const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");

/// What the browser may load and run: this origin's script, style sheet and data, and nothing
/// from anywhere else.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The settings of the pages: which application they belong to, and whether an admin token
/// opens the console at all.
#[derive(Clone)]
struct Shell {
    app: &'static str,
    version: &'static str,
    open: bool,
}

/// The console's pages and assets (they hold no business data: the pages fetch it from the
/// protected data routes). With `open` false (no admin token configured) every page answers
/// 403 with a page that says how to open the console.
pub fn pages(app: &'static str, version: &'static str, open: bool) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(console_overview_page))
        .routes(routes!(console_sagas_page))
        .routes(routes!(console_saga_page))
        .routes(routes!(console_stream_page))
        .routes(routes!(console_dead_letters_page))
        .routes(routes!(console_projections_page))
        .routes(routes!(console_script))
        .routes(routes!(console_style))
        .with_state(Shell { app, version, open })
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

/// `template` with the application, the page and its title filled in.
fn fill(shell: &Shell, template: &str, page: &str, title: &str) -> String {
    template
        .replace("{{app}}", &escape(shell.app))
        .replace("{{version}}", &escape(shell.version))
        .replace("{{page}}", page)
        .replace("{{title}}", title)
}

/// The shell of page `page` titled `title`, or the closed page.
fn page(shell: &Shell, page: &str, title: &str) -> Response {
    if shell.open {
        html(StatusCode::OK, fill(shell, SHELL, page, title))
    } else {
        html(StatusCode::FORBIDDEN, fill(shell, CLOSED, page, title))
    }
}

/// The console's overview: sagas by state, throughput, latency, lag, outbox, dead letters.
#[utoipa::path(
    get,
    path = "/console",
    tag = "console",
    responses(
        (status = 200, description = "the page (it asks for the admin token and reads the data routes)", content_type = "text/html", body = String),
        (status = 403, description = "no SAGAFLOW_ADMIN_TOKEN is configured: a page that says how to open the console", content_type = "text/html", body = String),
    )
)]
async fn console_overview_page(State(shell): State<Shell>) -> Response {
    page(&shell, "overview", "Overview")
}

/// The console's list of sagas, stuck ones first, with filters.
#[utoipa::path(
    get,
    path = "/console/sagas",
    tag = "console",
    responses(
        (status = 200, description = "the page", content_type = "text/html", body = String),
        (status = 403, description = "no SAGAFLOW_ADMIN_TOKEN is configured: a page that says how to open the console", content_type = "text/html", body = String),
    )
)]
async fn console_sagas_page(State(shell): State<Shell>) -> Response {
    page(&shell, "sagas", "Sagas")
}

/// The console's page of one saga: its path, timeline, data and streams.
#[utoipa::path(
    get,
    path = "/console/sagas/{saga_id}",
    tag = "console",
    params(("saga_id" = Uuid, Path, description = "The saga's id")),
    responses(
        (status = 200, description = "the page", content_type = "text/html", body = String),
        (status = 403, description = "no SAGAFLOW_ADMIN_TOKEN is configured: a page that says how to open the console", content_type = "text/html", body = String),
    )
)]
async fn console_saga_page(
    State(shell): State<Shell>,
    PathParams(_saga_id): PathParams<Uuid>,
) -> Response {
    page(&shell, "saga", "Saga")
}

/// The console's page of one stream: its events, and its state at any version.
#[utoipa::path(
    get,
    path = "/console/streams/{stream_id}",
    tag = "console",
    params(("stream_id" = String, Path, description = "`<aggregate type>-<id>` or `saga-<id>`")),
    responses(
        (status = 200, description = "the page", content_type = "text/html", body = String),
        (status = 403, description = "no SAGAFLOW_ADMIN_TOKEN is configured: a page that says how to open the console", content_type = "text/html", body = String),
    )
)]
async fn console_stream_page(
    State(shell): State<Shell>,
    PathParams(_stream_id): PathParams<String>,
) -> Response {
    page(&shell, "stream", "Stream")
}

/// The console's dead letters: payload, error, attempts; retry and discard.
#[utoipa::path(
    get,
    path = "/console/dead-letters",
    tag = "console",
    responses(
        (status = 200, description = "the page", content_type = "text/html", body = String),
        (status = 403, description = "no SAGAFLOW_ADMIN_TOKEN is configured: a page that says how to open the console", content_type = "text/html", body = String),
    )
)]
async fn console_dead_letters_page(State(shell): State<Shell>) -> Response {
    page(&shell, "dead-letters", "Dead letters")
}

/// The console's read models: position, lag, rebuild and its progress.
#[utoipa::path(
    get,
    path = "/console/projections",
    tag = "console",
    responses(
        (status = 200, description = "the page", content_type = "text/html", body = String),
        (status = 403, description = "no SAGAFLOW_ADMIN_TOKEN is configured: a page that says how to open the console", content_type = "text/html", body = String),
    )
)]
async fn console_projections_page(State(shell): State<Shell>) -> Response {
    page(&shell, "projections", "Projections")
}

/// The entity tag of an asset: a digest of its bytes.
fn tag_of(asset: &str) -> String {
    let digest = Sha256::digest(asset.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

static SCRIPT_TAG: LazyLock<String> = LazyLock::new(|| tag_of(SCRIPT));
static STYLE_TAG: LazyLock<String> = LazyLock::new(|| tag_of(STYLE));

/// An embedded asset with its entity tag: 304 when `If-None-Match` names it.
fn asset(
    headers: &HeaderMap,
    content_type: &'static str,
    body: &'static str,
    tag: &str,
) -> Response {
    let tag = HeaderValue::from_str(tag).expect("a hex tag");
    if headers.get(header::IF_NONE_MATCH) == Some(&tag) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, tag)]).into_response();
    }
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::ETAG, tag),
        ],
        body,
    )
        .into_response()
}

/// The console's script.
#[utoipa::path(
    get,
    path = "/console/assets/console.js",
    tag = "console",
    params(("if-none-match" = Option<String>, Header, description = "The tag of an earlier answer: 304 if the script is the same")),
    responses(
        (status = 200, description = "the script", content_type = "text/javascript", body = String),
        (status = 304, description = "the script has not changed since the tag"),
    )
)]
async fn console_script(headers: HeaderMap) -> Response {
    asset(
        &headers,
        "text/javascript; charset=utf-8",
        SCRIPT,
        &SCRIPT_TAG,
    )
}

/// The console's style sheet.
#[utoipa::path(
    get,
    path = "/console/assets/console.css",
    tag = "console",
    params(("if-none-match" = Option<String>, Header, description = "The tag of an earlier answer: 304 if the style sheet is the same")),
    responses(
        (status = 200, description = "the style sheet", content_type = "text/css", body = String),
        (status = 304, description = "the style sheet has not changed since the tag"),
    )
)]
async fn console_style(headers: HeaderMap) -> Response {
    asset(&headers, "text/css; charset=utf-8", STYLE, &STYLE_TAG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shell_names_its_page_and_loads_nothing_from_elsewhere() {
        let shell = Shell {
            app: "trips <&>",
            version: "1.0",
            open: true,
        };
        let response = page(&shell, "sagas", "Sagas");
        assert_eq!(response.status(), StatusCode::OK);
        let body = fill(&shell, SHELL, "sagas", "Sagas");
        assert!(body.contains("data-page=\"sagas\""));
        assert!(body.contains("trips &lt;&amp;&gt;"));
        assert!(!body.contains("{{"));
        for asset in [SHELL, CLOSED, SCRIPT, STYLE] {
            // The SVG namespace is a name, not a place the browser goes.
            let asset = asset.replace("http://www.w3.org/2000/svg", "");
            assert!(!asset.contains("http://") && !asset.contains("https://"));
            assert!(!asset.contains("//cdn") && !asset.contains("@import"));
        }
        let closed = page(
            &Shell {
                open: false,
                ..shell
            },
            "overview",
            "Overview",
        );
        assert_eq!(closed.status(), StatusCode::FORBIDDEN);
        assert!(CLOSED.contains("SAGAFLOW_ADMIN_TOKEN"));
    }
}
