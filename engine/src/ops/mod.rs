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
    crate::telemetry::register_metrics();
    let _ = metrics::metrics();
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    /// Registers every series and touches one child of each vector, so that all appear in
    /// the registry's output.
    fn register_and_touch() {
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
        super::metrics::metrics()
            .retention_deleted
            .with_label_values(&["t"]);
    }

    /// The series of a `| `name` | type | …` table in `doc`, with their types.
    fn table(doc: &str) -> BTreeMap<String, String> {
        doc.lines()
            .filter_map(|l| {
                let row = l.trim_start_matches(['/', '!', ' ']).strip_prefix("| `")?;
                let mut cells = row.split('|');
                let name = cells.next()?.trim().trim_end_matches('`');
                let kind = cells.next()?.trim();
                Some((name.to_owned(), kind.to_owned()))
            })
            .collect()
    }

    /// Every series a process exports, with its type: the registry's, the ones collected
    /// at scrape time and the process's own.
    fn exported() -> BTreeMap<String, String> {
        register_and_touch();
        let mut out: BTreeMap<String, String> = crate::metrics::registry()
            .gather()
            .iter()
            .map(|f| {
                let kind = format!("{:?}", f.get_field_type()).to_lowercase();
                (f.name().to_owned(), kind)
            })
            .collect();
        out.extend(table(include_str!("scrape.rs")));
        out.extend(table(include_str!("../app/service.rs")));
        out
    }

    /// The Grafana dashboard and the Prometheus alert rules query only series the engine
    /// exports (a histogram's through its `_bucket`, `_sum` and `_count`).
    #[test]
    fn the_dashboard_and_alert_rules_query_only_exported_series() {
        let exported = exported();
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../../ops/grafana/sagaflow.json"))
                .expect("the dashboard is JSON");
        let mut queries: Vec<String> = dashboard["panels"]
            .as_array()
            .expect("panels")
            .iter()
            .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
            .map(|t| t["expr"].as_str().expect("an expr").to_owned())
            .collect();
        let rules = include_str!("../../../ops/prometheus/alerts.yml");
        // The rules' expressions: `expr:` lines and the block lines under them.
        let mut in_expr = false;
        for line in rules.lines() {
            let trimmed = line.trim_start();
            if let Some(e) = trimmed.strip_prefix("expr:") {
                queries.push(e.trim().trim_start_matches('|').to_owned());
                in_expr = e.trim() == "|";
            } else if in_expr && line.starts_with("          ") {
                queries.push(trimmed.to_owned());
            } else {
                in_expr = false;
            }
        }
        let mut used = std::collections::BTreeSet::new();
        for q in &queries {
            let mut rest = q.as_str();
            while let Some(at) = rest.find("sagaflow_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                used.insert(name);
            }
        }
        assert!(used.len() >= 15, "too few series found: {used:?}");
        for name in &used {
            let known = exported.contains_key(name)
                || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                    name.strip_suffix(suffix)
                        .and_then(|base| exported.get(base))
                        .is_some_and(|kind| kind == "histogram")
                });
            assert!(known, "{name} is queried but no process exports it");
        }
    }

    #[test]
    fn every_recorded_series_is_named_sagaflow_and_documented_by_its_subsystem() {
        register_and_touch();
        let docs = [
            include_str!("../command/metrics.rs"),
            include_str!("../consumer/metrics.rs"),
            include_str!("../relay/metrics.rs"),
            include_str!("../saga/metrics.rs"),
            include_str!("../external/metrics.rs"),
            include_str!("../http/metrics.rs"),
            include_str!("../telemetry.rs"),
            include_str!("metrics.rs"),
        ]
        .concat();
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
