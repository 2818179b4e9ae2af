//! OpenTelemetry export of the engine's trace spans over OTLP, configured by the standard
//! environment variables, and off (no exporter, no span kept for it) when no endpoint is set.
//!
//! - `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`): the collector;
//!   export is on when either is set;
//! - `OTEL_EXPORTER_OTLP_PROTOCOL` (or `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`): `http/protobuf`
//!   (the default) or `grpc`;
//! - `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`: the resource; the service name defaults
//!   to the application's name;
//! - `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`: the sampler (default
//!   `parentbased_always_on`: a client's sampled flag is followed);
//! - `OTEL_BSP_MAX_QUEUE_SIZE` (2048), `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_EXPORT_TIMEOUT`,
//!   `OTEL_EXPORTER_OTLP_TIMEOUT`: the batch span processor and the exporter.
//!
//! The spans exported are the hops of [`crate::trace`] (`command`, `append`,
//! `publish`, `consume_message`, `saga_step`), with the ids the engine gives them:
//! each is started at once with [`adopt`], whose parent is the trace context the engine
//! carries, and whose span id is the one the engine derived (so that the next hop, in this
//! process or another, names it as its parent without anything being rewritten).
//!
//! Spans end in a bounded queue drained by the SDK's batch span processor on a thread of
//! its own: a span that finds the queue full is dropped and counted in
//! `sagaflow_trace_spans_dropped_total`, and the spans of a batch the collector did not
//! accept (away, slow past its timeout, refusing) in
//! `sagaflow_trace_spans_export_failed_total`. Ending a span never waits for the collector.
//! [`Telemetry::shutdown`] flushes what is queued.
//!
//! | series | type | meaning |
//! |---|---|---|
//! | `sagaflow_trace_spans_dropped_total` | counter | spans dropped because the export queue was full |
//! | `sagaflow_trace_spans_export_failed_total` | counter | spans of batches the collector did not accept |
//! | `sagaflow_trace_spans_exported_total` | counter | spans of batches the collector accepted |

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::Context;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, SdkTracerProvider, Span, SpanData,
    SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use prometheus::IntCounter;
use tracing::subscriber::Interest;
use tracing::{span, Metadata};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{Filtered, LevelFilter, Targets};
use tracing_subscriber::layer::{self, Filter, Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::trace::{TraceContext, TRACE_TARGET};

/// Whether spans are exported (set once, when the exporter is installed).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether this process exports spans.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

struct Metrics {
    dropped: IntCounter,
    failed: IntCounter,
    exported: IntCounter,
}

fn metrics() -> &'static Metrics {
    static M: LazyLock<Metrics> = LazyLock::new(|| Metrics {
        dropped: crate::metrics::counter(
            "sagaflow_trace_spans_dropped_total",
            "Trace spans dropped because the export queue was full (collector away or slow).",
        ),
        failed: crate::metrics::counter(
            "sagaflow_trace_spans_export_failed_total",
            "Trace spans of export batches the collector did not accept.",
        ),
        exported: crate::metrics::counter(
            "sagaflow_trace_spans_exported_total",
            "Trace spans of export batches the collector accepted.",
        ),
    });
    &M
}

/// Registers the series of span export, so that a scrape lists them from the start.
pub fn register_metrics() {
    metrics();
}

thread_local! {
    /// The trace and span ids the next span started on this thread takes (0: random).
    static NEXT_IDS: Cell<(u128, u64)> = const { Cell::new((0, 0)) };
}

/// Ids from [`adopt`] when it asked for them, random ones otherwise.
#[derive(Debug)]
struct EngineIds;

impl IdGenerator for EngineIds {
    fn new_trace_id(&self) -> TraceId {
        let id = NEXT_IDS.with(|c| c.get().0);
        TraceId::from(if id == 0 { random_nonzero128() } else { id })
    }

    fn new_span_id(&self) -> SpanId {
        let id = NEXT_IDS.with(|c| c.get().1);
        SpanId::from(if id == 0 {
            crate::trace::random_span_id()
        } else {
            id
        })
    }
}

fn random_nonzero128() -> u128 {
    rand::random::<u128>().max(1)
}

/// The OpenTelemetry context of a remote parent span.
fn remote(parent: TraceContext) -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from(parent.trace_id),
        SpanId::from(parent.span_id),
        TraceFlags::new(parent.flags) & TraceFlags::SAMPLED,
        true,
        TraceState::NONE,
    ))
}

/// Makes `span`'s exported span the one the engine means: span `own.span_id` of trace
/// `own.trace_id`, child of the span `parent` points at (a root without one), whatever
/// `tracing` span is current. Starts it now, on this thread, and returns whether the sampler
/// kept it; `None` when spans are not exported or `span` is disabled (nothing is done).
pub fn adopt(
    span: &tracing::Span,
    parent: Option<TraceContext>,
    own: TraceContext,
) -> Option<bool> {
    if !enabled() || span.is_disabled() {
        return None;
    }
    let parent = parent.map(remote).unwrap_or_default();
    span.set_parent(parent).ok()?;
    NEXT_IDS.with(|c| c.set((own.trace_id, own.span_id)));
    let cx = span.context();
    NEXT_IDS.with(|c| c.set((0, 0)));
    let started = cx.span().span_context().clone();
    (started.span_id() == SpanId::from(own.span_id)).then(|| started.is_sampled())
}

/// Counts what leaves the queue, and what the collector did not take.
#[derive(Debug)]
struct CountingExporter<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        self.queued.fetch_sub(n, Ordering::Relaxed);
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => metrics().exported.inc_by(n as u64),
            Err(_) => metrics().failed.inc_by(n as u64),
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The batch span processor behind a bound of its own: a span ended while `capacity` spans
/// wait (queued, or in the batch being exported) is dropped here and counted, so the SDK's
/// queue never overflows unseen. Never blocks.
#[derive(Debug)]
struct BoundedProcessor {
    inner: BatchSpanProcessor,
    queued: Arc<AtomicUsize>,
    capacity: usize,
}

impl SpanProcessor for BoundedProcessor {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        let taken = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.capacity).then_some(n + 1)
            });
        if taken.is_ok() {
            self.inner.on_end(span);
        } else {
            metrics().dropped.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The export pipeline of this process, when there is one; [`Telemetry::shutdown`] flushes it.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The log layer of a process, before its filter.
pub type LogLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// The subscriber below the span export: the registry and the filtered log.
type Logged = Layered<Filtered<LogLayer, Reevaluated<EnvFilter>, Registry>, Registry>;

/// Installs the process's subscriber: `log` filtered by `filter` and, when the environment
/// names an OTLP endpoint, the export of the engine's spans (see the module's documentation),
/// with `service_name` as the service's name unless `OTEL_SERVICE_NAME` (or `service.name`
/// in `OTEL_RESOURCE_ATTRIBUTES`) says otherwise. For `grpc`, call it inside the Tokio
/// runtime the process runs on. A subscriber already installed is left as it is.
pub fn install(log: LogLayer, filter: EnvFilter, service_name: &str) -> anyhow::Result<Telemetry> {
    let (export, telemetry) = match exporter_from_env(service_name)? {
        Some(provider) => (
            Some(provider.tracer("sagaflow")),
            Telemetry {
                provider: Some(provider),
            },
        ),
        None => (None, Telemetry::default()),
    };
    let _ = compose(log, filter, export).try_init();
    if telemetry.provider.is_some() {
        register_metrics();
        ENABLED.store(true, Ordering::Relaxed);
    }
    Ok(telemetry)
}

/// The log, each with a filter of its own, and the span export of `tracer` (the spans of
/// [`TRACE_TARGET`] alone).
fn compose(
    log: LogLayer,
    filter: EnvFilter,
    tracer: Option<opentelemetry_sdk::trace::SdkTracer>,
) -> impl tracing::Subscriber + Send + Sync {
    let logged: Logged = tracing_subscriber::registry().with(log.with_filter(Reevaluated(filter)));
    let export = tracer.map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_level(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(Reevaluated(
                Targets::new().with_target(TRACE_TARGET, tracing::Level::DEBUG),
            ))
    });
    logged.with(export)
}

/// A per-layer filter that is asked again at every span and event rather than once per
/// callsite. With several per-layer filters, one that answers "always" for a callsite lets
/// the subscriber skip its `enabled` pass, and each layer then acts on what the previous pass
/// left on the thread (an `enabled!` check, by the engine or a library, with no span or event
/// after it): a log line or an exported span would be lost now and then.
struct Reevaluated<F>(F);

impl<S, F: Filter<S>> Filter<S> for Reevaluated<F> {
    fn enabled(&self, meta: &Metadata<'_>, cx: &layer::Context<'_, S>) -> bool {
        self.0.enabled(meta, cx)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if self.0.callsite_enabled(meta).is_never() {
            Interest::never()
        } else {
            Interest::sometimes()
        }
    }

    fn event_enabled(&self, event: &tracing::Event<'_>, cx: &layer::Context<'_, S>) -> bool {
        self.0.event_enabled(event, cx)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.0.max_level_hint()
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, cx: layer::Context<'_, S>) {
        self.0.on_new_span(attrs, id, cx)
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, cx: layer::Context<'_, S>) {
        self.0.on_record(id, values, cx)
    }

    fn on_enter(&self, id: &span::Id, cx: layer::Context<'_, S>) {
        self.0.on_enter(id, cx)
    }

    fn on_exit(&self, id: &span::Id, cx: layer::Context<'_, S>) {
        self.0.on_exit(id, cx)
    }

    fn on_close(&self, id: span::Id, cx: layer::Context<'_, S>) {
        self.0.on_close(id, cx)
    }
}

/// The tracer provider of the OTLP export the environment configures; `None` when it names
/// no endpoint.
fn exporter_from_env(service_name: &str) -> anyhow::Result<Option<SdkTracerProvider>> {
    if env("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
        && env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
    {
        return Ok(None);
    }
    let protocol = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "http/protobuf".to_owned());
    let exporter = match protocol.trim().to_ascii_lowercase().as_str() {
        "grpc" => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_protocol(opentelemetry_otlp::Protocol::Grpc)
            .build()?,
        "http/protobuf" => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build()?,
        other => anyhow::bail!(
            "OTEL_EXPORTER_OTLP_PROTOCOL {other:?} is not supported: use http/protobuf or grpc"
        ),
    };
    let capacity = env("OTEL_BSP_MAX_QUEUE_SIZE")
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(2048);
    let queued = Arc::new(AtomicUsize::new(0));
    let batch = BatchSpanProcessor::builder(CountingExporter {
        inner: exporter,
        queued: queued.clone(),
    })
    .with_batch_config(
        BatchConfigBuilder::default()
            .with_max_queue_size(capacity)
            .build(),
    )
    .build();
    let mut resource = Resource::builder();
    let named = env("OTEL_SERVICE_NAME").is_some()
        || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| {
            a.split(',')
                .any(|kv| kv.trim_start().starts_with("service.name="))
        });
    if !named {
        resource = resource.with_service_name(service_name.to_owned());
    }
    let provider = SdkTracerProvider::builder()
        .with_id_generator(EngineIds)
        .with_resource(resource.build())
        .with_span_processor(BoundedProcessor {
            inner: batch,
            queued,
            capacity,
        })
        .build();
    Ok(Some(provider))
}

impl Telemetry {
    /// Exports the spans still queued (waiting at most the exporter's timeout) and stops the
    /// pipeline. Blocks: call it from a thread that may block.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            ENABLED.store(false, Ordering::Relaxed);
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "trace export: spans still queued at exit may be lost");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_generator_takes_the_ids_it_is_given_once() {
        NEXT_IDS.with(|c| c.set((7, 9)));
        assert_eq!(EngineIds.new_trace_id(), TraceId::from(7u128));
        assert_eq!(EngineIds.new_span_id(), SpanId::from(9u64));
        NEXT_IDS.with(|c| c.set((0, 0)));
        assert_ne!(EngineIds.new_span_id(), SpanId::INVALID);
        assert_ne!(EngineIds.new_span_id(), SpanId::from(9u64));
    }

    #[test]
    fn a_remote_parent_keeps_the_trace_and_the_sampled_flag() {
        let parent =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03").unwrap();
        let cx = remote(parent);
        let sc = cx.span().span_context().clone();
        assert_eq!(sc.trace_id(), TraceId::from(parent.trace_id));
        assert_eq!(sc.span_id(), SpanId::from(parent.span_id));
        assert!(sc.is_sampled() && sc.is_remote());
        assert_eq!(sc.trace_flags(), TraceFlags::SAMPLED);
    }
}

#[cfg(test)]
mod export_tests {
    use std::io::Write;
    use std::sync::Mutex;

    use opentelemetry_sdk::trace::SimpleSpanProcessor;

    use super::*;

    #[derive(Debug, Clone, Default)]
    struct Collected(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Collected {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// With the log and the export each filtered, every span the export wants is exported
    /// with the engine's ids, and every line the log wants is written, whatever `enabled!`
    /// checks ran before them.
    #[test]
    fn adopted_spans_are_exported_with_the_engine_s_ids_and_no_log_line_is_lost() {
        let collected = Collected::default();
        let provider = SdkTracerProvider::builder()
            .with_id_generator(EngineIds)
            .with_span_processor(SimpleSpanProcessor::new(collected.clone()))
            .build();
        let lines = Lines::default();
        let writer = lines.clone();
        let log = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .boxed();
        let subscriber = compose(
            log,
            EnvFilter::new("info,sqlx=warn"),
            Some(provider.tracer("test")),
        );
        ENABLED.store(true, Ordering::Relaxed);
        let client =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        tracing::subscriber::with_default(subscriber, || {
            // What the log wants and the export does not, then the other way round, each
            // checked and not followed by a span or an event.
            assert!(tracing::enabled!(target: "sqlx::query", tracing::Level::WARN));
            let command = tracing::info_span!(target: TRACE_TARGET, "command");
            adopt(&command, Some(client), client.with_span(0x1111));
            let _entered = command.enter();
            assert!(crate::trace::hop_spans_enabled());
            tracing::info!("a line of the log");
            let hop = tracing::debug_span!(target: TRACE_TARGET, "hop");
            adopt(
                &hop,
                Some(client.with_span(0x1111)),
                client.with_span(0x2222),
            );
        });
        let spans = collected.0.lock().unwrap().clone();
        let ids: Vec<(String, u64, u64)> = spans
            .iter()
            .map(|s| {
                (
                    s.name.to_string(),
                    u64::from_be_bytes(s.span_context.span_id().to_bytes()),
                    u64::from_be_bytes(s.parent_span_id.to_bytes()),
                )
            })
            .collect();
        assert!(ids.contains(&("hop".into(), 0x2222, 0x1111)), "{ids:?}");
        assert!(
            ids.contains(&("command".into(), 0x1111, client.span_id)),
            "{ids:?}"
        );
        assert!(spans
            .iter()
            .all(|s| s.span_context.trace_id() == TraceId::from(client.trace_id)));
        let log = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert!(log.contains("a line of the log"), "{log}");
    }
}
