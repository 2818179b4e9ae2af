//! The binary's own metrics, served at `GET /metrics` after the engine's
//! ([`sagaflow_engine::metrics`] names those):
//!
//! | series | type | labels | what |
//! |---|---|---|---|
//! | `sagaflow_build_info` | gauge | `version` | always 1: the release this process runs |
//! | `sagaflow_component` | gauge | `component` | 1 for each component this process runs (`serve --components`) |
//! | `sagaflow_start_time_seconds` | gauge | | when the application was built, in Unix seconds |

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{Gauge, IntGaugeVec, Opts, Registry};

use crate::config::Component;

/// The binary's series, in a registry of their own (one per application).
#[derive(Clone)]
pub struct AppMetrics {
    registry: Registry,
    components: IntGaugeVec,
}

impl AppMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new(
                "sagaflow_build_info",
                "Always 1; the version label names the release.",
            ),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let components = IntGaugeVec::new(
            Opts::new(
                "sagaflow_component",
                "1 for each component this process runs.",
            ),
            &["component"],
        )
        .expect("valid metric");
        let start_time = Gauge::with_opts(Opts::new(
            "sagaflow_start_time_seconds",
            "When the application was built, in Unix seconds.",
        ))
        .expect("valid metric");
        start_time.set(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        for c in [
            Box::new(build_info) as Box<dyn prometheus::core::Collector>,
            Box::new(components.clone()),
            Box::new(start_time),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        AppMetrics {
            registry,
            components,
        }
    }

    /// The registry to render with the engine's series.
    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }

    /// Marks the components this process runs.
    pub fn set_components(&self, components: &HashSet<Component>) {
        for c in components {
            self.components.with_label_values(&[c.name()]).set(1);
        }
    }
}

impl Default for AppMetrics {
    fn default() -> Self {
        Self::new()
    }
}
