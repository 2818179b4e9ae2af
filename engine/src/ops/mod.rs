//! Operating a running engine: health and readiness, `GET /metrics`, and the housekeeping of
//! the engine's tables.

pub mod housekeeping;
pub(crate) mod metrics;
pub mod readiness;
pub mod retention;
pub mod scrape;

use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use readiness::{readiness_router, Readiness};
pub use retention::Retention;
pub use scrape::{ConsumerGroup, Scraper};

/// `GET /healthz`: 200 `{"status": "ok"}` as long as the process serves HTTP.
pub fn health_router() -> OpenApiRouter {
    OpenApiRouter::new().routes(routes!(healthz))
}

/// The body of `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: &'static str,
}

/// Liveness: answers as long as the process serves HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "alive", body = Health))
)]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Registers every subsystem's series in the process registry, so that a scrape lists them
/// all from the start, before the subsystem first records anything.
pub fn register_metrics() {
    let _ = crate::command::metrics::metrics();
    let _ = crate::consumer::metrics::metrics();
    let _ = crate::relay::metrics::metrics();
    let _ = crate::saga::metrics::metrics();
    let _ = crate::external::metrics::metrics();
    let _ = crate::http::metrics::metrics();
    let _ = metrics::metrics();
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_recorded_series_is_named_sagaflow_and_documented_by_its_subsystem() {
        super::register_metrics();
        // Touch one child of each vector so it appears in the output.
        let http = crate::http::metrics::metrics();
        http.commands
            .with_label_values(&["t", "c", "accepted"])
            .inc_by(0);
        http.command_seconds.with_label_values(&["t"]);
        http.commands_shed.with_label_values(&["overloaded"]);
        http.admin_actions.with_label_values(&["saga_abort"]);
        crate::command::metrics::metrics()
            .append_seconds
            .with_label_values(&["t"]);
        let consumer = crate::consumer::metrics::metrics();
        consumer.messages.with_label_values(&["g", "applied"]);
        consumer.batch_seconds.with_label_values(&["g"]);
        consumer.failures.with_label_values(&["g"]);
        consumer.dead_lettered.with_label_values(&["g"]);
        crate::saga::metrics::metrics()
            .step_seconds
            .with_label_values(&["s", "succeeded"]);
        let external = crate::external::metrics::metrics();
        external.calls.with_label_values(&["p", "succeeded"]);
        external.call_seconds.with_label_values(&["p"]);
        external.breaker_state.with_label_values(&["p"]);
        external.breaker_opened.with_label_values(&["p"]);
        let docs = [
            include_str!("../command/metrics.rs"),
            include_str!("../consumer/metrics.rs"),
            include_str!("../relay/metrics.rs"),
            include_str!("../saga/metrics.rs"),
            include_str!("../external/metrics.rs"),
            include_str!("../http/metrics.rs"),
            include_str!("metrics.rs"),
        ]
        .concat();
        super::metrics::metrics()
            .retention_deleted
            .with_label_values(&["t"]);
        let families = crate::metrics::registry().gather();
        // Every series a table documents is registered (scrape-time ones aside: they are
        // collected by the scrape, not kept in the registry).
        let documented: std::collections::BTreeSet<&str> = docs
            .lines()
            .filter_map(|l| l.strip_prefix("//! | `")?.split('`').next())
            .collect();
        let registered: std::collections::BTreeSet<String> =
            families.iter().map(|f| f.name().to_owned()).collect();
        let scraped = include_str!("scrape.rs");
        for name in documented {
            assert!(
                registered.contains(name) || scraped.contains(name),
                "{name} is documented but never registered"
            );
        }
        for f in families {
            assert!(f.name().starts_with("sagaflow_"), "{}", f.name());
            assert!(!f.help().is_empty());
            assert!(
                docs.contains(&format!("| `{}` |", f.name())),
                "{} is missing from its subsystem's table",
                f.name()
            );
        }
    }
}
