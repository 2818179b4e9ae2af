//! OTLP export of traces, against a real receiver written here: OTLP/HTTP (protobuf) and
//! OTLP/gRPC servers that decode what the engine sends. The engine runs as its own process
//! (the `sagaflow` binary), since the export pipeline is configured once per process from
//! the environment.

// Amounts are written as dollars_cents (`17_00` is $17.00).
#![allow(clippy::inconsistent_digit_grouping)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use common::binary::{free_port, Binary};
use common::transport::{eventually, kafka_brokers};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

/// One span as the receiver decoded it; ids in lowercase hex, as in `traceparent`.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: BTreeMap<String, String>,
}

impl Received {
    fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map(String::as_str).unwrap_or("")
    }
}

#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<Received>>>);

impl Spans {
    fn record(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.0.lock().unwrap();
        for rs in request.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(kv.value.as_ref()))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push(Received {
                        service: service.clone(),
                        name: s.name,
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        attributes: s
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                            .collect(),
                    });
                }
            }
        }
    }

    fn of_trace(&self, trace_id: &str) -> Vec<Received> {
        let spans = self.0.lock().unwrap();
        spans
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }

    fn all(&self) -> Vec<Received> {
        self.0.lock().unwrap().clone()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// An OTLP/HTTP receiver: `POST /v1/traces` with a protobuf `ExportTraceServiceRequest`.
async fn http_receiver(spans: Spans) -> String {
    let router = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let spans = spans.clone();
            async move {
                match ExportTraceServiceRequest::decode(body) {
                    Ok(request) => {
                        spans.record(request);
                        (
                            StatusCode::OK,
                            [("content-type", "application/x-protobuf")],
                            ExportTraceServiceResponse::default().encode_to_vec(),
                        )
                    }
                    Err(_) => (
                        StatusCode::BAD_REQUEST,
                        [("content-type", "text/plain")],
                        b"not an ExportTraceServiceRequest".to_vec(),
                    ),
                }
            }
        }),
    );
    let addr = common::spawn_server(router).await;
    format!("http://{addr}")
}

struct Grpc(Spans);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.record(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver: the `TraceService` of the collector protocol.
async fn grpc_receiver(spans: Spans) -> String {
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Grpc(spans)))
            .serve(addr),
    );
    eventually(
        Duration::from_secs(10),
        "the gRPC receiver listening",
        || async { tokio::net::TcpStream::connect(addr).await.is_ok() },
    )
    .await;
    format!("http://{addr}")
}

/// The engine's environment for `transport` ("postgres" or "kafka"), exporting to `endpoint`
/// over `protocol`.
fn engine_env(transport: &str, endpoint: &str, protocol: &str) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            endpoint.to_owned(),
        ),
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL".to_owned(),
            protocol.to_owned(),
        ),
        ("OTEL_SERVICE_NAME".to_owned(), "shop-under-test".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT".to_owned(), "2000".to_owned()),
        ("SAGAFLOW_TRANSPORT".to_owned(), transport.to_owned()),
        // Every command through its topic: the trace crosses the transport at each step.
        ("SAGAFLOW_LOCAL_STEPS".to_owned(), "false".to_owned()),
        (
            "SAGAFLOW_TOPIC_PREFIX".to_owned(),
            format!("t{}", Uuid::new_v4().simple()),
        ),
    ];
    if transport == "kafka" {
        env.push(("KAFKA_BROKERS".to_owned(), kafka_brokers()));
    }
    env
}

async fn start(pool: &PgPool, env: &[(String, String)]) -> Binary {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Binary::start(pool, &env).await
}

async fn post(client: &reqwest::Client, url: String, body: Value) {
    let r = client.post(url).json(&body).send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::ACCEPTED,
        "{}",
        r.text().await.unwrap()
    );
}

/// Stock for one APPLE and $1.00 for a customer: an order of one APPLE at $5.00 reserves
/// the stock, is declined by the payment, and is compensated. Returns the saga's id.
async fn declined_order(
    engine: &Binary,
    traceparent: &str,
    correlation_id: Uuid,
) -> (Uuid, reqwest::header::HeaderMap) {
    let client = reqwest::Client::new();
    let customer = Uuid::now_v7();
    post(
        &client,
        format!("{}/inventory/APPLE/restock", engine.base),
        json!({"quantity": 10}),
    )
    .await;
    post(
        &client,
        format!("{}/accounts/{customer}/deposits", engine.base),
        json!({"amount_cents": 1_00}),
    )
    .await;
    let r = client
        .post(format!("{}/orders", engine.base))
        .header("traceparent", traceparent)
        .header("x-correlation-id", correlation_id.to_string())
        .json(&json!({
            "customer_id": customer,
            "lines": [{"sku": "APPLE", "quantity": 1, "unit_price_cents": 5_00}],
        }))
        .send()
        .await
        .unwrap();
    let headers = r.headers().clone();
    let (status, body) = common::read(r).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    (body["saga_id"].as_str().unwrap().parse().unwrap(), headers)
}

async fn saga_state(pool: &PgPool, saga: Uuid) -> Option<String> {
    sqlx::query_scalar("SELECT state FROM sagas WHERE saga_id = $1")
        .bind(saga)
        .fetch_optional(pool)
        .await
        .unwrap()
}

async fn wait_compensated(pool: &PgPool, saga: Uuid, engine: &Binary) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match saga_state(pool, saga).await.as_deref() {
            Some("compensated") => return,
            Some(s @ ("completed" | "failed")) => {
                panic!("saga ended {s}; log:\n{}", engine.log_text())
            }
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "saga not compensated after {WAIT:?}; log:\n{}",
            engine.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the trace of the declined order must hold; `Err` says what is missing.
fn check_tree(
    spans: &[Received],
    client_span: &str,
    correlation_id: Uuid,
    everything: &[Received],
) -> Result<(), String> {
    check_trace(spans, client_span, correlation_id, everything, false)
}

/// [`check_tree`] of a trace whose saga ran its steps locally (`local`) or through the
/// topics.
fn check_trace(
    spans: &[Received],
    client_span: &str,
    correlation_id: Uuid,
    everything: &[Received],
    local: bool,
) -> Result<(), String> {
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    // Every span's parent is in the trace, or is the client's span.
    for s in spans {
        if s.parent_span_id.is_empty() {
            return Err(format!("{} {} is a root", s.name, s.span_id));
        }
        if s.parent_span_id != client_span && !ids.contains(s.parent_span_id.as_str()) {
            return Err(format!(
                "{} {} has parent {} outside the trace",
                s.name, s.span_id, s.parent_span_id
            ));
        }
    }
    // Nothing of this order was exported under another trace.
    let trace = &spans.first().ok_or("no span of the trace yet")?.trace_id;
    if let Some(stray) = everything
        .iter()
        .find(|s| s.attr("correlation_id") == correlation_id.to_string() && &s.trace_id != trace)
    {
        return Err(format!("{stray:?} is of another trace"));
    }
    fn named<'a>(spans: &'a [Received], name: &'a str) -> impl Iterator<Item = &'a Received> {
        spans.iter().filter(move |s| s.name == name)
    }
    let named = |name: &'static str| named(spans, name);
    let command: Vec<_> = named("command").collect();
    if command.len() != 1 || command[0].parent_span_id != client_span {
        return Err(format!(
            "one command span under the client's span: {command:?}"
        ));
    }
    if command[0].attr("aggregate_type") != "order" {
        return Err(format!("the command span is not the order's: {command:?}"));
    }
    let command_id = &command[0].span_id;
    if !named("append").any(|s| &s.parent_span_id == command_id) {
        return Err("no append under the command".into());
    }
    if !named("publish").any(|s| &s.parent_span_id == command_id) {
        return Err("no publish of the command's events".into());
    }
    if local {
        return check_local_steps(spans);
    }
    let publish_ids: BTreeSet<&str> = named("publish").map(|s| s.span_id.as_str()).collect();
    let consumers = spans
        .iter()
        .filter(|s| s.name == "saga_step" || s.name == "consume_message");
    for s in consumers {
        if !publish_ids.contains(s.parent_span_id.as_str()) {
            return Err(format!("{} not under a publish: {s:?}", s.name));
        }
    }
    let groups: BTreeSet<&str> = named("saga_step")
        .chain(named("consume_message"))
        .map(|s| s.attr("consumer_group"))
        .collect();
    // The participants' handling of their steps, and the orchestrator's of the replies.
    for step in ["reserve_stock", "authorize_payment"] {
        if !named("saga_step")
            .any(|s| s.attr("saga_step") == step && s.attr("consumer_group") != "orchestrator")
        {
            return Err(format!(
                "no participant's saga_step {step}; groups {groups:?}"
            ));
        }
    }
    if !named("saga_step").any(|s| s.attr("consumer_group") == "orchestrator") {
        return Err(format!("no orchestrator saga_step; groups {groups:?}"));
    }
    // The compensation: the orchestrator writes it, the inventory runs it.
    if !named("append").any(|s| s.attr("event_types").contains("compensation_invoked")) {
        let types: BTreeSet<&str> = named("append").map(|s| s.attr("event_types")).collect();
        return Err(format!("no append of a compensation: {types:?}"));
    }
    let reserve_steps = named("saga_step")
        .filter(|s| {
            s.attr("saga_step") == "reserve_stock" && s.attr("consumer_group") != "orchestrator"
        })
        .count();
    if reserve_steps < 2 {
        return Err(format!(
            "reserve_stock ran {reserve_steps} time(s) at its participant: no compensation"
        ));
    }
    if !spans
        .iter()
        .any(|s| s.attr("event_types").contains("saga_compensated"))
    {
        return Err("the saga's end was not appended in the trace".into());
    }
    // A read model updated from the order's events.
    if !named("consume_message").any(|s| s.attr("consumer_group").starts_with("projection")) {
        return Err(format!("no read model's update; groups {groups:?}"));
    }
    if spans.iter().any(|s| s.service != "shop-under-test") {
        return Err("a span without OTEL_SERVICE_NAME as its service".into());
    }
    Ok(())
}

/// With local steps: every step is a `saga_step` span of the orchestrator, under its span
/// applying the input that sent the command (the order's event, then each step's outcome),
/// and what the step recorded is under it.
fn check_local_steps(spans: &[Received]) -> Result<(), String> {
    let local = |step: &str| {
        spans
            .iter()
            .filter(|s| s.name == "saga_step" && s.attr("local") == "true")
            .filter(|s| s.attr("saga_step") == step)
            .collect::<Vec<_>>()
    };
    let reserve = local("reserve_stock");
    // Reserved, then released by the compensation.
    if reserve.len() < 2 || local("authorize_payment").is_empty() {
        let names: BTreeSet<String> = spans
            .iter()
            .map(|s| format!("{} {}", s.name, s.attr("saga_step")))
            .collect();
        return Err(format!(
            "the local steps are not all in the trace: {names:?}"
        ));
    }
    for s in &reserve {
        if s.attr("consumer_group") != "orchestrator" {
            return Err(format!("a local step outside the orchestrator: {s:?}"));
        }
        if !spans
            .iter()
            .any(|a| a.name == "append" && a.parent_span_id == s.span_id)
        {
            return Err(format!("nothing appended under the local step {s:?}"));
        }
    }
    if spans
        .iter()
        .any(|s| s.attr("consumer_group").starts_with("participant"))
    {
        return Err("a participant consumed a command of a local step".into());
    }
    if !spans
        .iter()
        .any(|s| s.attr("event_types").contains("saga_compensated"))
    {
        return Err("the saga's end was not appended in the trace".into());
    }
    if spans.iter().any(|s| s.service != "shop-under-test") {
        return Err("a span without OTEL_SERVICE_NAME as its service".into());
    }
    Ok(())
}

async fn one_trace_per_order(pool: PgPool, transport: &str, protocol: &str) {
    one_trace_of_an_order(pool, transport, protocol, false).await
}

async fn one_trace_of_an_order(pool: PgPool, transport: &str, protocol: &str, local: bool) {
    let spans = Spans::default();
    let endpoint = match protocol {
        "grpc" => grpc_receiver(spans.clone()).await,
        _ => http_receiver(spans.clone()).await,
    };
    let mut env = engine_env(transport, &endpoint, protocol);
    if local {
        env.retain(|(k, _)| k != "SAGAFLOW_LOCAL_STEPS");
    }
    let engine = start(&pool, &env).await;
    let trace_id = format!("{:032x}", rand::random::<u128>() | 1);
    let client_span = format!("{:016x}", rand::random::<u64>() | 1);
    let correlation_id = Uuid::now_v7();
    let (saga, headers) = declined_order(
        &engine,
        &format!("00-{trace_id}-{client_span}-01"),
        correlation_id,
    )
    .await;
    let traceresponse = headers["traceresponse"].to_str().unwrap();
    assert!(
        traceresponse.starts_with(&format!("00-{trace_id}-")),
        "{traceresponse}"
    );
    wait_compensated(&pool, saga, &engine).await;
    let mut last;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let trace = spans.of_trace(&trace_id);
        match check_trace(&trace, &client_span, correlation_id, &spans.all(), local) {
            Ok(()) => break,
            Err(e) => last = e,
        }
        if tokio::time::Instant::now() > deadline {
            let lines: Vec<String> = trace
                .iter()
                .map(|s| {
                    format!(
                        "{} {} <- {} {:?}",
                        s.name, s.span_id, s.parent_span_id, s.attributes
                    )
                })
                .collect();
            let commands: Vec<String> = spans
                .all()
                .iter()
                .filter(|s| s.name == "command")
                .map(|s| format!("{s:?}"))
                .collect();
            panic!(
                "the trace of the order is not whole: {last}\n{}\ncommands: {}\nlog:\n{}",
                lines.join("\n"),
                commands.join("\n"),
                engine.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `OTEL_TRACES_SAMPLER=parentbased_always_off`: a trace the engine starts is not sampled, and
/// none of its hops is exported; a client's sampled trace is exported whole.
#[sqlx::test(migrator = "common::MIGRATOR")]
async fn the_sampler_keeps_or_drops_a_trace_whole(pool: PgPool) {
    let spans = Spans::default();
    let endpoint = http_receiver(spans.clone()).await;
    let mut env = engine_env("postgres", &endpoint, "http/protobuf");
    env.push((
        "OTEL_TRACES_SAMPLER".to_owned(),
        "parentbased_always_off".to_owned(),
    ));
    let engine = start(&pool, &env).await;
    let client = reqwest::Client::new();
    let customer = Uuid::now_v7();
    let r = client
        .post(format!("{}/accounts/{customer}/deposits", engine.base))
        .json(&json!({"amount_cents": 1_00}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let unsampled = r.headers()["traceresponse"].to_str().unwrap().to_owned();
    assert!(unsampled.ends_with("-00"), "{unsampled}");
    let unsampled_trace = unsampled[3..35].to_owned();
    let trace_id = format!("{:032x}", rand::random::<u128>() | 1);
    let client_span = format!("{:016x}", rand::random::<u64>() | 1);
    let correlation_id = Uuid::now_v7();
    let (saga, _) = declined_order(
        &engine,
        &format!("00-{trace_id}-{client_span}-01"),
        correlation_id,
    )
    .await;
    wait_compensated(&pool, saga, &engine).await;
    let mut last;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match check_tree(
            &spans.of_trace(&trace_id),
            &client_span,
            correlation_id,
            &spans.all(),
        ) {
            Ok(()) => break,
            Err(e) => last = e,
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sampled trace is not whole: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let everything = spans.all();
    assert!(
        everything.iter().all(|s| s.trace_id == trace_id),
        "spans of unsampled traces were exported (the deposit's trace {unsampled_trace}): {:?}",
        everything
            .iter()
            .filter(|s| s.trace_id != trace_id)
            .collect::<Vec<_>>()
    );
}

/// A metric's value in the engine's `/metrics` (0 when absent).
async fn metric(engine: &Binary, name: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", engine.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

mod embedded {
    use super::*;

    #[sqlx::test(migrator = "common::MIGRATOR")]
    async fn one_order_is_one_trace_over_otlp_http(pool: PgPool) {
        one_trace_per_order(pool, "postgres", "http/protobuf").await;
    }

    #[sqlx::test(migrator = "common::MIGRATOR")]
    async fn one_order_is_one_trace_over_otlp_grpc(pool: PgPool) {
        one_trace_per_order(pool, "postgres", "grpc").await;
    }

    #[sqlx::test(migrator = "common::MIGRATOR")]
    async fn one_order_with_local_steps_is_one_trace(pool: PgPool) {
        one_trace_of_an_order(pool, "postgres", "http/protobuf", true).await;
    }
}

mod kafka {
    use super::*;

    #[sqlx::test(migrator = "common::MIGRATOR")]
    async fn one_order_is_one_trace_over_otlp_http(pool: PgPool) {
        one_trace_per_order(pool, "kafka", "http/protobuf").await;
    }

    #[sqlx::test(migrator = "common::MIGRATOR")]
    async fn one_order_is_one_trace_over_otlp_grpc(pool: PgPool) {
        one_trace_per_order(pool, "kafka", "grpc").await;
    }

    #[sqlx::test(migrator = "common::MIGRATOR")]
    async fn one_order_with_local_steps_is_one_trace(pool: PgPool) {
        one_trace_of_an_order(pool, "kafka", "http/protobuf", true).await;
    }
}

/// A collector that is away (nothing listens on its port): commands are served, sagas end,
/// and the spans that could not be sent are counted.
#[sqlx::test(migrator = "common::MIGRATOR")]
async fn without_a_collector_commands_are_served_and_failed_exports_counted(pool: PgPool) {
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let engine = start(&pool, &engine_env("postgres", &endpoint, "http/protobuf")).await;
    let (saga, _) = declined_order(
        &engine,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        Uuid::now_v7(),
    )
    .await;
    wait_compensated(&pool, saga, &engine).await;
    eventually(
        Duration::from_secs(20),
        "failed exports counted",
        || async { metric(&engine, "sagaflow_trace_spans_export_failed_total").await > 0.0 },
    )
    .await;
    assert_eq!(
        metric(&engine, "sagaflow_trace_spans_exported_total").await,
        0.0
    );
}

/// A collector that takes connections and never answers: its export waits out its timeout
/// while the queue (8 spans here) fills; what does not fit is dropped and counted, and the
/// engine goes on at its own pace.
#[sqlx::test(migrator = "common::MIGRATOR")]
async fn a_stalled_collector_drops_spans_without_slowing_the_engine(pool: PgPool) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            keep.lock().unwrap().push(socket);
        }
    });
    let mut env = engine_env("postgres", &format!("http://{addr}"), "http/protobuf");
    env.push(("OTEL_BSP_MAX_QUEUE_SIZE".to_owned(), "8".to_owned()));
    env.push(("OTEL_EXPORTER_OTLP_TIMEOUT".to_owned(), "30000".to_owned()));
    let engine = start(&pool, &env).await;
    let started = std::time::Instant::now();
    let (saga, _) = declined_order(
        &engine,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        Uuid::now_v7(),
    )
    .await;
    wait_compensated(&pool, saga, &engine).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the saga took {:?} with the collector stalled",
        started.elapsed()
    );
    assert!(metric(&engine, "sagaflow_trace_spans_dropped_total").await > 0.0);
    assert_eq!(
        metric(&engine, "sagaflow_trace_spans_exported_total").await,
        0.0
    );
    drop(held);
}

/// Spans still queued when the engine is asked to stop are sent before it exits.
#[sqlx::test(migrator = "common::MIGRATOR")]
async fn a_graceful_shutdown_flushes_the_queued_spans(pool: PgPool) {
    let spans = Spans::default();
    let endpoint = http_receiver(spans.clone()).await;
    let mut env = engine_env("postgres", &endpoint, "http/protobuf");
    // Nothing is sent on the schedule within the test.
    env.push(("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "600000".to_owned()));
    let mut engine = start(&pool, &env).await;
    let trace_id = format!("{:032x}", rand::random::<u128>() | 1);
    let (saga, _) = declined_order(
        &engine,
        &format!("00-{trace_id}-00f067aa0ba902b7-01"),
        Uuid::now_v7(),
    )
    .await;
    wait_compensated(&pool, saga, &engine).await;
    assert!(spans.of_trace(&trace_id).is_empty(), "sent before the stop");
    engine.signal("TERM");
    let (status, _) = engine.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status, Some(0), "log:\n{}", engine.log_text());
    let sent = spans.of_trace(&trace_id);
    assert!(
        sent.iter().any(|s| s.name == "command") && sent.iter().any(|s| s.name == "saga_step"),
        "{sent:?}"
    );
}
