//! Operating sagaflow: metrics that agree with the database, one trace per order across every
//! hop, readiness, overload shedding, graceful shutdown of the real binary, and an OpenAPI
//! document that lists every route.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::binary::Binary;
use common::engine::{everything, start_engine, wait_terminal, Running};
use common::transport::{eventually, postgres};
use reqwest::StatusCode;
use sagaflow::app::Options;
use sagaflow_engine::http::CommandLimits;
use sagaflow_engine::transport::Transport;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Metrics

/// One sample of the Prometheus text format.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').expect("closing brace");
                let labels = rest
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once("=\"").expect("label=\"value\"");
                        (k.to_owned(), v.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels)
            }
        };
        out.push(Sample {
            name,
            labels,
            value: value.parse().expect("a number"),
        });
    }
    out
}

/// The sum of the samples of `name` whose labels include `labels`.
fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

fn has(samples: &[Sample], name: &str) -> bool {
    samples.iter().any(|s| s.name == name)
}

async fn scrape(base: &str) -> Vec<Sample> {
    let r = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    parse_metrics(&r.text().await.unwrap())
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Places `n` orders of two lines each for one customer; returns their saga ids.
async fn place_orders(engine: &Running, customer: Uuid, n: usize, skus: &[&str]) -> Vec<Uuid> {
    let mut sagas = Vec::new();
    for i in 0..n {
        let (_, saga) = engine
            .order(
                customer,
                &[
                    (skus[i % skus.len()], 1, 500),
                    (skus[(i + 1) % skus.len()], 2, 250),
                ],
            )
            .await;
        sagas.push(saga);
    }
    sagas
}

/// After a workload in which some orders complete and some are compensated (out of stock),
/// every series is there, and the scrape-time ones equal what the database says.
#[sqlx::test(migrator = "common::MIGRATOR")]
async fn metrics_agree_with_the_database_after_a_workload(pool: PgPool) {
    let transport = postgres(&pool);
    let engine = start_engine(&pool, &transport, &everything()).await;
    let customer = Uuid::new_v4();
    engine.deposit(customer, 1_000_000).await;
    engine.restock("MET-A", 10).await;
    engine.restock("MET-B", 6).await;
    // Each order takes 1 of one SKU and 2 of the other: the stock runs out part way.
    let sagas = place_orders(&engine, customer, 12, &["MET-A", "MET-B"]).await;
    wait_terminal(&pool, &sagas, Duration::from_secs(60)).await;
    // A poison message, as the consumer would have parked it.
    sqlx::query(
        "INSERT INTO dead_letters (consumer_group, topic, partition, \"offset\", message_id, partition_key,
                                   envelope, error, attempts, first_failed_at, last_failed_at)
         VALUES ('metrics-test', 't', 0, 0, gen_random_uuid(), 'k', '{}', 'boom', 5, now(), now())",
    )
    .execute(&pool)
    .await
    .unwrap();
    // Let the projectors and the relay drain, so the outbox and the lag settle at zero.
    eventually(Duration::from_secs(30), "an empty outbox", || async {
        count(&pool, "SELECT count(*) FROM outbox").await == 0
    })
    .await;

    let m = scrape(&engine.base).await;
    // Sagas by state: exactly the database's counts.
    let by_state: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM sagas GROUP BY state ORDER BY state")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(
        by_state.len() >= 2,
        "the workload ends sagas in two states: {by_state:?}"
    );
    for (state, n) in &by_state {
        assert_eq!(
            sum(&m, "sagaflow_sagas", &[("state", state)]),
            *n as f64,
            "sagas {state}"
        );
    }
    assert_eq!(sum(&m, "sagaflow_sagas", &[]), sagas.len() as f64);
    assert_eq!(sum(&m, "sagaflow_outbox_depth", &[]), 0.0);
    assert_eq!(
        sum(
            &m,
            "sagaflow_dead_letters",
            &[("consumer_group", "metrics-test"), ("status", "parked")]
        ),
        1.0
    );
    for group in [
        "orchestrator",
        "participant:inventory",
        "participant:account",
        "participant:order",
        "projection:orders",
    ] {
        assert!(
            m.iter()
                .any(|s| s.name == "sagaflow_consumer_lag" && s.labels["consumer_group"] == group),
            "no lag series for {group}"
        );
    }
    for collector in ["outbox_depth", "sagas", "dead_letters", "consumer_lag"] {
        assert_eq!(
            sum(
                &m,
                "sagaflow_scrape_collector_success",
                &[("collector", collector)]
            ),
            1.0,
            "{collector}"
        );
    }
    // Counters are process-wide (other tests in this binary add to them): at least ours.
    let placed = sum(
        &m,
        "sagaflow_commands_total",
        &[
            ("aggregate_type", "order"),
            ("command", "place"),
            ("outcome", "accepted"),
        ],
    );
    assert!(placed >= 12.0, "{placed}");
    assert!(
        sum(
            &m,
            "sagaflow_append_seconds_count",
            &[("aggregate_type", "order")]
        ) >= 12.0
    );
    assert!(sum(&m, "sagaflow_command_seconds_count", &[]) >= 15.0);
    // On the embedded transport every writer appends to the log itself: the relay, which
    // moves what is left in the outbox, had nothing to move.
    assert_eq!(sum(&m, "sagaflow_relay_published_total", &[]), 0.0);
    assert!(
        sum(
            &m,
            "sagaflow_consumer_messages_total",
            &[("consumer_group", "orchestrator"), ("outcome", "applied")]
        ) > 0.0
    );
    for step in ["reserve_stock", "authorize_payment", "confirm_order"] {
        assert!(
            sum(
                &m,
                "sagaflow_saga_step_seconds_count",
                &[("step", step), ("outcome", "succeeded")]
            ) > 0.0,
            "no latency of step {step}"
        );
    }
    assert!(
        sum(
            &m,
            "sagaflow_saga_step_seconds_count",
            &[("step", "reserve_stock"), ("outcome", "rejected")]
        ) > 0.0,
        "the rejected reservations are timed too"
    );
    assert_eq!(sum(&m, "sagaflow_build_info", &[]), 1.0);
    assert_eq!(
        sum(&m, "sagaflow_component", &[("component", "orchestrator")]),
        1.0
    );
    for name in [
        "sagaflow_commands_in_flight",
        "sagaflow_relay_failures_total",
        "sagaflow_start_time_seconds",
    ] {
        assert!(has(&m, name), "{name}");
    }
    engine.stop().await;
}

/// A collector that cannot answer (the database gone) is reported as failed, and the scrape
/// still answers quickly with the recorded series.
#[sqlx::test(migrator = "common::MIGRATOR")]
async fn a_scrape_without_a_database_answers_with_what_it_has(pool: PgPool) {
    let app = common::start(pool.clone()).await;
    pool.close().await;
    let started = Instant::now();
    let m = scrape(&app.base).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        sum(
            &m,
            "sagaflow_scrape_collector_success",
            &[("collector", "sagas")]
        ),
        0.0
    );
    assert!(!has(&m, "sagaflow_sagas"));
    assert!(has(&m, "sagaflow_build_info"));
    // Readiness says why.
    let r = reqwest::get(app.url("/readyz")).await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "not_ready");
    assert_ne!(body["checks"]["database"], "ok");
}

// ---------------------------------------------------------------------------------------------
// Tracing

/// A span as created, with its fields.
#[derive(Debug, Clone)]
struct CapturedSpan {
    name: &'static str,
    fields: HashMap<String, String>,
}

impl CapturedSpan {
    fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }
}

struct Capture(Arc<Mutex<Vec<CapturedSpan>>>);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _id: &tracing::span::Id,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        if fields.contains_key("trace_id") {
            self.0.lock().unwrap().push(CapturedSpan {
                name: attrs.metadata().name(),
                fields,
            });
        }
    }
}

/// Every span with a `trace_id` created in this process from now on (installed once, for
/// the whole test binary: the engine's tasks run on every thread).
fn captured_spans() -> Arc<Mutex<Vec<CapturedSpan>>> {
    static SPANS: OnceLock<Arc<Mutex<Vec<CapturedSpan>>>> = OnceLock::new();
    SPANS
        .get_or_init(|| {
            use tracing_subscriber::layer::SubscriberExt;
            use tracing_subscriber::Layer;
            let spans = Arc::new(Mutex::new(Vec::new()));
            // The per-message spans are at DEBUG under their own target.
            let filter = tracing_subscriber::filter::Targets::new()
                .with_default(tracing::Level::INFO)
                .with_target(sagaflow_engine::trace::TRACE_TARGET, tracing::Level::DEBUG);
            let subscriber =
                tracing_subscriber::registry().with(Capture(spans.clone()).with_filter(filter));
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other global subscriber in this test binary");
            spans
        })
        .clone()
}

fn spans_of(spans: &Mutex<Vec<CapturedSpan>>, trace_id: &str) -> Vec<CapturedSpan> {
    spans
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.get("trace_id") == Some(trace_id))
        .cloned()
        .collect()
}

fn trace_id_of(traceparent: &str) -> &str {
    traceparent.split('-').nth(1).expect("a traceparent")
}

/// One order's spans share one trace id from its HTTP request through the relay, the
/// participants and the orchestrator to the saga's completion, and form one tree.
async fn one_trace_follows_an_order_from_the_request_to_the_end_of_its_saga(
    pool: PgPool,
    transport: Arc<dyn Transport>,
) {
    let spans = captured_spans();
    let engine = start_engine(&pool, &transport, &everything()).await;
    let customer = Uuid::new_v4();
    engine.deposit(customer, 100_000).await;
    engine.restock("TRACE-A", 5).await;
    engine.restock("TRACE-B", 5).await;

    let trace_id = format!("{:032x}", rand_u128());
    let client_span = "00f067aa0ba902b7";
    let r = engine
        .client
        .post(format!("{}/orders", engine.base))
        .header("traceparent", format!("00-{trace_id}-{client_span}-01"))
        .json(&json!({"customer_id": customer, "lines": [
            {"sku": "TRACE-A", "quantity": 1, "unit_price_cents": 300},
            {"sku": "TRACE-B", "quantity": 2, "unit_price_cents": 200},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let response_trace = r.headers()["traceresponse"].to_str().unwrap().to_owned();
    assert_eq!(trace_id_of(&response_trace), trace_id);
    let body: Value = r.json().await.unwrap();
    let saga_id: Uuid = body["saga_id"].as_str().unwrap().parse().unwrap();
    wait_terminal(&pool, &[saga_id], Duration::from_secs(30)).await;
    assert_eq!(
        common::engine::saga_state(&pool, saga_id).await.as_deref(),
        Some("completed")
    );

    // The event that completed the saga names, as its cause, the reply the orchestrator
    // applied: that hop is in the trace.
    let (completed_cause, completed_trace): (Uuid, String) = sqlx::query_as(
        "SELECT (metadata->>'causation_id')::uuid, metadata->>'traceparent' FROM saga_events
         WHERE stream_id = $1 AND event_type = 'saga_completed'",
    )
    .bind(format!("saga-{saga_id}"))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(trace_id_of(&completed_trace), trace_id);
    let completion = completed_cause.to_string();
    eventually(
        Duration::from_secs(10),
        "the orchestrator's span of the last reply",
        || {
            let found = spans_of(&spans, &trace_id).iter().any(|s| {
                s.get("message_id") == Some(completion.as_str())
                    && s.get("consumer_group") == Some("orchestrator")
            });
            async move { found }
        },
    )
    .await;
    // Every event the order caused, in every stream, carries the trace.
    let traces: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT stream_id, metadata->>'traceparent' FROM events
         WHERE metadata->>'correlation_id' = (SELECT correlation_id::text FROM sagas WHERE saga_id = $1)",
    )
    .bind(saga_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    let streams: BTreeSet<&str> = traces
        .iter()
        .map(|(s, _)| s.split('-').next().unwrap())
        .collect();
    assert_eq!(
        streams,
        BTreeSet::from(["account", "inventory", "order", "saga"]),
        "{traces:?}"
    );
    for (stream, tp) in &traces {
        let tp = tp
            .as_deref()
            .unwrap_or_else(|| panic!("{stream} without traceparent"));
        assert_eq!(trace_id_of(tp), trace_id, "{stream}");
    }

    let trace = spans_of(&spans, &trace_id);
    let names: BTreeSet<&str> = trace.iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "append",
            "command",
            "consume_message",
            "publish",
            "saga_step"
        ]),
    );
    // The request's span: a child of the caller's, and what the response reported.
    let command: Vec<&CapturedSpan> = trace.iter().filter(|s| s.name == "command").collect();
    assert_eq!(command.len(), 1);
    assert_eq!(command[0].get("parent_span_id"), Some(client_span));
    assert_eq!(command[0].get("aggregate_type"), Some("order"));
    assert_eq!(command[0].get("span_id"), response_trace.split('-').nth(2));
    // Every hop of the saga: each participant ran its step, and the orchestrator applied
    // each step's reply.
    let step_spans = |group: &str| -> BTreeSet<String> {
        trace
            .iter()
            .filter(|s| s.name == "saga_step" && s.get("consumer_group") == Some(group))
            .filter_map(|s| s.get("saga_step").map(str::to_owned))
            .collect()
    };
    assert_eq!(
        step_spans("participant:inventory"),
        BTreeSet::from(["reserve_stock".to_owned()])
    );
    assert!(step_spans("participant:account").contains("authorize_payment"));
    assert!(step_spans("participant:account").contains("capture_payment"));
    assert_eq!(
        step_spans("participant:order"),
        BTreeSet::from(["confirm_order".to_owned()])
    );
    assert_eq!(
        step_spans("orchestrator"),
        [
            "reserve_stock",
            "authorize_payment",
            "confirm_order",
            "capture_payment"
        ]
        .into_iter()
        .map(str::to_owned)
        .collect()
    );
    assert!(trace.iter().any(|s| s.name == "consume_message"
        && s.get("consumer_group") == Some("orchestrator")
        && s.get("event_type") == Some("order_placed")));
    // Every span carries the correlation id, and they form one tree under the request.
    let correlation = command[0].get("correlation_id").unwrap();
    let ids: BTreeSet<&str> = trace.iter().filter_map(|s| s.get("span_id")).collect();
    for s in &trace {
        assert_eq!(s.get("correlation_id"), Some(correlation), "{s:?}");
        if s.name != "command" {
            let parent = s.get("parent_span_id").expect("a parent");
            assert!(
                ids.contains(parent),
                "the parent of {s:?} is not in the trace"
            );
        }
    }

    // Without a traceparent, the request starts a trace of its own, carried the same way.
    let r = engine
        .client
        .post(format!("{}/inventory/TRACE-A/restock", engine.base))
        .json(&json!({"quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let minted = r.headers()["traceresponse"].to_str().unwrap().to_owned();
    let body: Value = r.json().await.unwrap();
    let stored: String = sqlx::query_scalar(
        "SELECT metadata->>'traceparent' FROM events WHERE message_id = $1::uuid",
    )
    .bind(body["events"][0]["message_id"].as_str().unwrap())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(stored, minted);
    assert_ne!(trace_id_of(&minted), trace_id);
    engine.stop().await;
}

mod one_trace_follows_an_order_from_the_request_to_the_end_of_its_saga {
    use super::*;

    #[sqlx::test(migrator = "common::MIGRATOR")]
    async fn postgres_transport(pool: PgPool) {
        let transport = postgres(&pool);
        super::one_trace_follows_an_order_from_the_request_to_the_end_of_its_saga(pool, transport)
            .await;
    }

    #[sqlx::test(migrator = "common::MIGRATOR")]
    async fn kafka_transport(pool: PgPool) {
        super::one_trace_follows_an_order_from_the_request_to_the_end_of_its_saga(
            pool,
            common::transport::kafka(),
        )
        .await;
    }
}

fn rand_u128() -> u128 {
    Uuid::new_v4().as_u128()
}

// ---------------------------------------------------------------------------------------------
// Overload

async fn timed_post(client: &reqwest::Client, url: String) -> (StatusCode, Duration, Value, bool) {
    let started = Instant::now();
    let r = client
        .post(url)
        .json(&json!({"quantity": 1}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap()) == Some("1");
    let body = r.json().await.unwrap_or(Value::Null);
    (status, started.elapsed(), body, retry_after)
}

/// An EXCLUSIVE lock on the outbox and the embedded log's heads, held on a connection of its
/// own (not one of the pool's) until released: every command blocks where it publishes its
/// events, a stand-in for a slow database.
struct OutboxLock(sqlx::PgConnection);

async fn block_commands(pool: &PgPool) -> OutboxLock {
    use sqlx::ConnectOptions;
    let mut conn = pool.connect_options().connect().await.unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE outbox, message_log_heads IN EXCLUSIVE MODE")
        .execute(&mut conn)
        .await
        .unwrap();
    OutboxLock(conn)
}

impl OutboxLock {
    async fn release(mut self) {
        sqlx::raw_sql("ROLLBACK")
            .execute(&mut self.0)
            .await
            .unwrap();
    }
}

/// At ten times the concurrency limit, the excess is refused at once with 503 and
/// Retry-After, health and queries answer meanwhile, and every accepted command completes.
#[sqlx::test(migrator = "common::MIGRATOR")]
async fn overload_is_shed_at_once_while_health_and_queries_stay_responsive(pool: PgPool) {
    const LIMIT: usize = 4;
    let app = common::start_with(
        pool.clone(),
        Options {
            command_limits: CommandLimits {
                max_in_flight: LIMIT,
                timeout: Duration::from_secs(30),
            },
            ..Default::default()
        },
    )
    .await;
    let lock = block_commands(&pool).await;
    let client = reqwest::Client::new();
    let tasks: Vec<_> = (0..10 * LIMIT)
        .map(|i| {
            let (client, url) = (
                client.clone(),
                app.url(&format!("/inventory/OVL-{i}/restock")),
            );
            tokio::spawn(async move { (i, timed_post(&client, url).await) })
        })
        .collect();
    // Meanwhile: liveness and a query answer, although every command permit is taken.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let health = client.get(app.url("/healthz")).send().await.unwrap();
    let health_took = started.elapsed();
    assert_eq!(health.status(), StatusCode::OK);
    let started = Instant::now();
    let (query, _) = app.get("/streams/inventory-OVL-0/events").await;
    let query_took = started.elapsed();
    assert_eq!(
        query,
        StatusCode::NOT_FOUND,
        "a query answers (nothing is committed yet)"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    lock.release().await; // the blocked commands go on
    let mut accepted = Vec::new();
    let mut shed = Vec::new();
    for t in tasks {
        let (i, (status, took, body, retry_after)) = t.await.unwrap();
        match status {
            StatusCode::ACCEPTED => accepted.push((i, took)),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(body["error"]["code"], "overloaded", "{body}");
                assert!(retry_after, "Retry-After: 1");
                shed.push(took);
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let slowest_shed = shed.iter().max().copied().unwrap_or_default();
    let fastest_accepted = accepted.iter().map(|a| a.1).min().unwrap_or_default();
    eprintln!(
        "{} accepted (fastest {fastest_accepted:?}), {} shed (slowest {slowest_shed:?}); healthz {health_took:?}, query {query_took:?} under overload",
        accepted.len(),
        shed.len()
    );
    assert_eq!(accepted.len(), LIMIT, "exactly the permits' holders ran");
    assert_eq!(shed.len(), 9 * LIMIT);
    assert!(slowest_shed < Duration::from_secs(1), "{slowest_shed:?}");
    assert!(
        fastest_accepted >= Duration::from_secs(1),
        "they waited for the lock"
    );
    assert!(health_took < Duration::from_secs(1), "{health_took:?}");
    assert!(query_took < Duration::from_secs(1), "{query_took:?}");
    // Every accepted command is stored; nothing of a refused one is.
    for (i, _) in &accepted {
        assert_eq!(
            count(
                &pool,
                &format!("SELECT count(*) FROM events WHERE stream_id = 'inventory-OVL-{i}'")
            )
            .await,
            1
        );
    }
    assert_eq!(
        count(&pool, "SELECT count(*) FROM events").await,
        LIMIT as i64
    );
    let m = scrape(&app.base).await;
    assert!(
        sum(
            &m,
            "sagaflow_commands_shed_total",
            &[("reason", "overloaded")]
        ) >= (9 * LIMIT) as f64
    );
}

/// A command still running at the timeout is answered 503 `command_timeout` with
/// Retry-After; it may or may not have been applied, and its retry with the same
/// `Idempotency-Key` is applied exactly once either way.
#[sqlx::test(migrator = "common::MIGRATOR")]
async fn a_command_past_its_timeout_is_answered_503(pool: PgPool) {
    let app = common::start_with(
        pool.clone(),
        Options {
            command_limits: CommandLimits {
                max_in_flight: 8,
                timeout: Duration::from_millis(500),
            },
            ..Default::default()
        },
    )
    .await;
    let client = reqwest::Client::new();
    let send = || {
        client
            .post(app.url("/inventory/SLOW-1/restock"))
            .header("Idempotency-Key", "slow-1")
            .json(&json!({"quantity": 1}))
            .send()
    };
    let lock = block_commands(&pool).await;
    let started = Instant::now();
    let r = send().await.unwrap();
    let took = started.elapsed();
    lock.release().await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "command_timeout", "{body}");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let r = send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED, "the retry goes through");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM events WHERE stream_id = 'inventory-SLOW-1'"
        )
        .await,
        1,
        "applied once"
    );
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown of the binary

/// SIGTERM while orders stream in: the process drains (readyz 503 while it does), exits 0
/// within the bound, and after a restart every accepted order's saga completes; nothing
/// accepted is lost.
#[sqlx::test(migrator = "common::MIGRATOR")]
async fn sigterm_during_load_exits_0_in_time_and_loses_nothing(pool: PgPool) {
    const BOUND: Duration = Duration::from_secs(20);
    let mut first = Binary::start(
        &pool,
        &[
            ("SAGAFLOW_SHUTDOWN_TIMEOUT", "20s"),
            ("SAGAFLOW_DRAIN_DELAY", "1s"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let base = first.base.clone();
    let customer = Uuid::new_v4();
    for (path, body) in [
        (
            format!("/accounts/{customer}/deposits"),
            json!({"amount_cents": 100_000_000}),
        ),
        (
            "/inventory/SIG-A/restock".to_owned(),
            json!({"quantity": 100_000}),
        ),
        (
            "/inventory/SIG-B/restock".to_owned(),
            json!({"quantity": 100_000}),
        ),
    ] {
        let r = client
            .post(format!("{base}{path}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    // Eight clients place orders as fast as they are answered, until the server goes away.
    let accepted = Arc::new(Mutex::new(Vec::<Uuid>::new()));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (client, base, accepted) = (client.clone(), base.clone(), accepted.clone());
            tokio::spawn(async move {
                loop {
                    let r = client
                        .post(format!("{base}/orders"))
                        .json(&json!({"customer_id": customer, "lines": [
                            {"sku": "SIG-A", "quantity": 1, "unit_price_cents": 100},
                            {"sku": "SIG-B", "quantity": 1, "unit_price_cents": 100},
                        ]}))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == StatusCode::ACCEPTED => {
                            let body: Value = r.json().await.unwrap();
                            let saga = body["saga_id"].as_str().unwrap().parse().unwrap();
                            accepted.lock().unwrap().push(saga);
                        }
                        Ok(r) => panic!("unexpected {}", r.status()),
                        Err(_) => return, // the server stopped listening
                    }
                }
            })
        })
        .collect();
    eventually(Duration::from_secs(30), "100 accepted orders", || {
        let n = accepted.lock().unwrap().len();
        async move { n >= 100 }
    })
    .await;
    first.signal("TERM");
    // During the drain delay it serves on, but is no longer ready.
    let signalled = Instant::now();
    loop {
        let readyz = client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("still serving during the drain delay");
        if readyz.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(readyz.json::<Value>().await.unwrap()["status"], "draining");
            break;
        }
        assert!(
            signalled.elapsed() < Duration::from_millis(900),
            "never draining"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (code, took) = first.wait_exit(BOUND + Duration::from_secs(10)).await;
    for c in clients {
        c.await.unwrap();
    }
    let log = first.log_text();
    eprintln!(
        "SIGTERM under load: exit {code:?} after {took:?}, {} orders accepted",
        accepted.lock().unwrap().len()
    );
    assert_eq!(code, Some(0), "log:\n{log}");
    assert!(took < BOUND, "{took:?}");
    assert!(log.contains("shutdown requested"), "{log}");
    assert!(log.contains("stopped"), "{log}");

    // A restart finishes whatever the first process left: every accepted saga completes.
    let second = Binary::start(&pool, &[]).await;
    let sagas = accepted.lock().unwrap().clone();
    wait_terminal(&pool, &sagas, Duration::from_secs(120)).await;
    let completed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sagas WHERE saga_id = ANY($1) AND state = 'completed'",
    )
    .bind(&sagas)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        completed,
        sagas.len() as i64,
        "every accepted order completes"
    );
    eventually(Duration::from_secs(30), "an empty outbox", || async {
        count(&pool, "SELECT count(*) FROM outbox").await == 0
    })
    .await;
    // Each order is stored once, and nothing was parked.
    assert!(
        count(
            &pool,
            "SELECT count(*) FROM events WHERE event_type = 'order_placed'"
        )
        .await
            >= sagas.len() as i64
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM dead_letters").await, 0);
    drop(second);
}

/// A drain that cannot finish within the bound (a command stuck on the database) ends the
/// process with status 1 at the bound.
#[sqlx::test(migrator = "common::MIGRATOR")]
async fn a_shutdown_past_its_bound_exits_1(pool: PgPool) {
    let mut binary = Binary::start(
        &pool,
        &[
            ("SAGAFLOW_SHUTDOWN_TIMEOUT", "1500ms"),
            ("SAGAFLOW_COMMAND_TIMEOUT", "60s"),
        ],
    )
    .await;
    let lock = block_commands(&pool).await;
    let client = reqwest::Client::new();
    let stuck = tokio::spawn({
        let url = format!("{}/inventory/STUCK-1/restock", binary.base);
        let client = client.clone();
        async move { client.post(url).json(&json!({"quantity": 1})).send().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    binary.signal("TERM");
    // The open connection of the stuck request still reaches the draining server.
    let (code, took) = binary.wait_exit(Duration::from_secs(15)).await;
    lock.release().await;
    let _ = stuck.await;
    eprintln!("stuck drain: exit {code:?} after {took:?}");
    assert_eq!(code, Some(1), "log:\n{}", binary.log_text());
    assert!(took >= Duration::from_millis(1400), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(binary.log_text().contains("did not finish within"));
}

/// `/readyz` is 200 with both checks, and 503 `draining` from the moment shutdown starts.
#[sqlx::test(migrator = "common::MIGRATOR")]
async fn readiness_reports_its_checks_and_draining(pool: PgPool) {
    let service = common::shop()
        .build(pool.clone(), postgres(&pool), &Options::default())
        .unwrap();
    let readiness = service.readiness.clone();
    let addr = common::spawn_server(service.router).await;
    let get = |path: &'static str| {
        let url = format!("http://{addr}{path}");
        async move {
            let r = reqwest::get(url).await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    let (s, b) = get("/readyz").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        b,
        json!({"status": "ready", "checks": {"database": "ok", "transport": "ok", "transport_kind": "postgres"}})
    );
    readiness.start_draining();
    let (s, b) = get("/readyz").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(b["status"], "draining");
    // Liveness is not readiness.
    let (s, b) = get("/healthz").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b, json!({"status": "ok"}));
}
