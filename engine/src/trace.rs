//! W3C Trace Context (`traceparent`) as the engine carries it in every envelope (and, on
//! Kafka, in a message header), so one trace follows a request from its HTTP command through
//! the relay, the participants and the orchestrator to the saga's end.
//!
//! Each hop is a `tracing` span that records its place in the trace as fields: `trace_id` (32
//! hex digits), `span_id` and `parent_span_id` (16 hex digits each), next to `correlation_id`
//! and `causation_id`. All are under target [`TRACE_TARGET`]: the command span at INFO level,
//! the per-message spans at DEBUG, off unless asked for (by `RUST_LOG`, or by the OTLP export
//! of [`crate::telemetry`], which exports these spans with these ids). The trace context itself
//! always travels. The hops:
//!
//! | span | where | `span_id` | `parent_span_id` |
//! |---|---|---|---|
//! | `command` | an HTTP command | random | the request's `traceparent`, if any |
//! | `append` | the event store appending events (one span per trace among them) | random | the span that wrote the events (their `traceparent`) |
//! | `publish` | one message published: by the relay, or on the embedded transport by the transaction that wrote it | [`publish_span_id`] | the span that wrote the message |
//! | `consume_message` / `saga_step` | a consumer applying one message | [`consume_span_id`] | [`publish_span_id`] |
//!
//! On Kafka the `traceparent` header names the `publish` span ([`publish_traceparent`]),
//! so that any consumer of the topic continues the trace from the relay's hop.
//!
//! A message's `traceparent` names the span that wrote it: the command span for the events of
//! an HTTP command, and the consuming span for what a handler writes while applying a message
//! ([`crate::Metadata::caused_by`], through [`caused_traceparent`]). Span ids of the relay
//! and consumer hops are derived from the message id (and the consumer group), so a hop's id
//! is known to the next one without rewriting the stored envelope, in any process.
//!
//! The trace id never changes along the way: a command's events, saga commands, replies and
//! saga events all carry the trace id of the request that placed it (one is minted when the
//! request had no `traceparent`). A message retried after a failed batch is one span per
//! attempt, with the same span id.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use uuid::Uuid;

use crate::hash::fnv1a_parts;

/// A W3C trace context: `00-<trace id>-<parent id>-<flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// Never zero.
    pub trace_id: u128,
    /// The span this context points at (the `parent-id` of the header). Never zero.
    pub span_id: u64,
    /// The trace flags of the header; bit 0 is `sampled`.
    pub flags: u8,
}

impl TraceContext {
    /// A new trace, sampled, with a random root span id.
    pub fn new_root() -> Self {
        TraceContext {
            trace_id: nonzero128(rand::random()),
            span_id: random_span_id(),
            flags: 0x01,
        }
    }

    /// Parses a `traceparent` header. Versions other than `00` are read by their first four
    /// fields, as the specification asks; all-zero ids and version `ff` are invalid.
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        let hex = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit());
        if !(hex(version, 2) && hex(trace, 32) && hex(span, 16) && hex(flags, 2))
            || version.eq_ignore_ascii_case("ff")
            || (version == "00" && parts.next().is_some())
        {
            return None;
        }
        let context = TraceContext {
            trace_id: u128::from_str_radix(trace, 16).ok()?,
            span_id: u64::from_str_radix(span, 16).ok()?,
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        (context.trace_id != 0 && context.span_id != 0).then_some(context)
    }

    /// The same trace, pointing at span `span_id`.
    pub fn with_span(self, span_id: u64) -> Self {
        TraceContext { span_id, ..self }
    }

    /// The `traceparent` header value.
    pub fn header(&self) -> String {
        self.to_string()
    }

    /// The trace id as 32 lowercase hex digits, as the spans record it.
    pub fn trace_id_hex(&self) -> TraceIdHex {
        TraceIdHex(self.trace_id)
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }
}

/// A trace id as 32 lowercase hex digits, without allocating.
#[derive(Debug, Clone, Copy)]
pub struct TraceIdHex(pub u128);

impl fmt::Display for TraceIdHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A span id as 16 lowercase hex digits, without allocating.
#[derive(Debug, Clone, Copy)]
pub struct SpanIdHex(pub u64);

impl fmt::Display for SpanIdHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A random, non-zero span id.
pub fn random_span_id() -> u64 {
    nonzero64(rand::random())
}

/// The span id of message `message_id`'s `publish` span.
pub fn publish_span_id(message_id: Uuid) -> u64 {
    derive(message_id, b"relay")
}

/// The span id of consumer group `group` applying message `message_id`.
pub fn consume_span_id(message_id: Uuid, group: &str) -> u64 {
    derive(message_id, group.as_bytes())
}

/// FNV-1a of the message id and a salt: stable across processes and releases.
fn derive(message_id: Uuid, salt: &[u8]) -> u64 {
    nonzero64(fnv1a_parts(&[message_id.as_bytes(), b"/", salt]))
}

fn nonzero64(v: u64) -> u64 {
    if v == 0 {
        1
    } else {
        v
    }
}

fn nonzero128(v: u128) -> u128 {
    if v == 0 {
        1
    } else {
        v
    }
}

tokio::task_local! {
    /// The consumer group whose handler is running on this task.
    static CONSUMER_GROUP: Arc<str>;
}

/// The consumer group whose handler is running on this task, if any.
pub(crate) fn current_group() -> Option<Arc<str>> {
    CONSUMER_GROUP.try_with(|g| g.clone()).ok()
}

/// Runs `handler` as consumer group `group`: what it writes with
/// [`crate::Metadata::caused_by`] names the group's consuming span as its parent.
pub async fn in_consumer<F: Future>(group: Arc<str>, handler: F) -> F::Output {
    CONSUMER_GROUP.scope(group, handler).await
}

/// The `traceparent` of a message caused by message `cause_id`, whose own trace context was
/// `cause_traceparent`: the same trace, whose parent is the span of the consumer applying the
/// cause (inside [`in_consumer`]); elsewhere, or when the cause's `traceparent` is not a valid
/// one, the cause's own `traceparent` unchanged.
pub fn caused_traceparent(cause_id: Uuid, cause_traceparent: Option<&str>) -> Option<String> {
    let original = cause_traceparent?;
    TraceContext::parse(original)
        .and_then(|context| {
            CONSUMER_GROUP
                .try_with(|group| context.with_span(consume_span_id(cause_id, group)).header())
                .ok()
        })
        .or_else(|| Some(original.to_owned()))
}

/// The `traceparent` a transport attaches to message `message_id` (whose own context is
/// `traceparent`) for its consumers, such as the Kafka header: the same trace, pointing at the
/// `publish` span. A context that is not valid W3C is passed on as it is.
pub fn publish_traceparent(message_id: Uuid, traceparent: Option<&str>) -> Option<String> {
    let original = traceparent?;
    Some(match TraceContext::parse(original) {
        Some(context) => context.with_span(publish_span_id(message_id)).header(),
        None => original.to_owned(),
    })
}

/// The target of the trace's spans: `command`, and the per-message ones (`append`,
/// `publish`, `consume_message`, `saga_step`).
/// They are at DEBUG level, so that a process logging at INFO does not pay for them (a few
/// microseconds each with a formatting subscriber); `RUST_LOG=info,sagaflow::trace=debug`
/// turns them on, or a span exporter's own per-layer filter.
pub const TRACE_TARGET: &str = "sagaflow::trace";

/// Whether the per-message spans are wanted by any subscriber.
pub fn hop_spans_enabled() -> bool {
    tracing::enabled!(target: TRACE_TARGET, tracing::Level::DEBUG)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_round_trips() {
        let c = TraceContext::parse(HEADER).unwrap();
        assert_eq!(c.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(c.span_id, 0x00f067aa0ba902b7);
        assert_eq!(c.flags, 1);
        assert_eq!(c.header(), HEADER);
        assert_eq!(c.trace_id_hex().to_string(), &HEADER[3..35]);
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
        // A later version may append fields.
        assert!(TraceContext::parse(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more"
        )
        .is_some());
    }

    /// Ours reads and writes `traceparent` as OpenTelemetry's W3C propagator does, only
    /// stricter on the ids' lengths (the propagator takes a 31-digit trace id).
    #[test]
    fn parse_and_format_agree_with_the_opentelemetry_propagator() {
        use opentelemetry::propagation::TextMapPropagator;
        use opentelemetry::trace::{SpanId, TraceContextExt, TraceId};
        use opentelemetry_sdk::propagation::TraceContextPropagator;
        use std::collections::HashMap;

        let propagator = TraceContextPropagator::new();
        let roots = (0..20).map(|_| TraceContext::new_root().header());
        for header in [HEADER.to_owned(), format!("{}-00", &HEADER[..52])]
            .into_iter()
            .chain(roots)
        {
            let carrier = HashMap::from([("traceparent".to_owned(), header.clone())]);
            let cx = propagator.extract(&carrier);
            let theirs = cx.span().span_context().clone();
            let ours = TraceContext::parse(&header).expect("valid");
            assert_eq!(theirs.trace_id(), TraceId::from(ours.trace_id), "{header}");
            assert_eq!(theirs.span_id(), SpanId::from(ours.span_id), "{header}");
            assert_eq!(theirs.is_sampled(), ours.flags & 1 == 1, "{header}");
            let mut injected = HashMap::new();
            propagator.inject_context(&cx, &mut injected);
            assert_eq!(injected["traceparent"], ours.header());
        }
        let short = "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01";
        assert_eq!(TraceContext::parse(short), None);
    }

    #[test]
    fn roots_are_valid_and_distinct() {
        let a = TraceContext::new_root();
        let b = TraceContext::new_root();
        assert_ne!(a.trace_id, b.trace_id);
        assert_eq!(TraceContext::parse(&a.header()), Some(a));
    }
}
