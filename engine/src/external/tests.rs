//! An outside-world participant against a real HTTP server on 127.0.0.1 that charges cards by
//! idempotency key, declines large amounts, and can be taken down.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::aggregate::{DomainCommand, DomainError, DomainEvent};
use crate::command::{CommandBus, CommandBusConfig};
use crate::envelope::Envelope;
use crate::outbox::OUTBOX_CHANNEL;
use crate::saga::messages::{SagaCommand, REPLIES_TOPIC};
use crate::transport::postgres::PostgresTransport;
use crate::transport::{OutgoingMessage, TopicLayout};

/// What was charged for one payment.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct Payment {
    charged: u64,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(tag = "command", content = "payload", rename_all = "snake_case")]
enum PaymentCommand {
    Charge { amount_cents: u64 },
}

impl DomainCommand for PaymentCommand {
    fn name(&self) -> &'static str {
        "charge"
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "event_type", content = "payload", rename_all = "snake_case")]
enum PaymentEvent {
    Charged {
        charge_id: String,
        amount_cents: u64,
    },
}

impl DomainEvent for PaymentEvent {}

#[derive(Debug, thiserror::Error)]
#[error("payments are made through the provider")]
struct ThroughTheProvider;

impl DomainError for ThroughTheProvider {
    fn code(&self) -> &'static str {
        "through_the_provider"
    }
}

impl Aggregate for Payment {
    const TYPE: &'static str = "payment";
    const CONTEXT: &'static str = "payments";
    type Command = PaymentCommand;
    type Event = PaymentEvent;
    type Error = ThroughTheProvider;

    fn handle(&self, _: &PaymentCommand) -> Result<Vec<PaymentEvent>, ThroughTheProvider> {
        Err(ThroughTheProvider)
    }

    fn apply(&mut self, event: &PaymentEvent) {
        let PaymentEvent::Charged { amount_cents, .. } = event;
        self.charged += amount_cents;
    }
}

/// The provider: charges by idempotency key, 402 above 1,000.00, 503 while down.
#[derive(Default)]
struct Provider {
    down: AtomicBool,
    requests: AtomicUsize,
    charges: std::sync::Mutex<BTreeMap<String, u64>>,
}

async fn charge(
    State(p): State<Arc<Provider>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    p.requests.fetch_add(1, Ordering::SeqCst);
    if p.down.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({})));
    }
    let key = headers["idempotency-key"].to_str().unwrap().to_owned();
    let amount = body["amount_cents"].as_u64().unwrap();
    if amount > 100_000 {
        return (
            StatusCode::PAYMENT_REQUIRED,
            Json(json!({"code": "card_declined"})),
        );
    }
    p.charges
        .lock()
        .unwrap()
        .entry(key.clone())
        .or_insert(amount);
    (
        StatusCode::CREATED,
        Json(json!({"charge_id": format!("ch_{key}")})),
    )
}

async fn start_provider() -> (Arc<Provider>, String) {
    let provider = Arc::new(Provider::default());
    let app = Router::new()
        .route("/charges", post(charge))
        .with_state(provider.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (provider, base)
}

struct Client {
    http: reqwest::Client,
    base: String,
}

#[async_trait]
impl ExternalParticipant for Client {
    type Record = Payment;

    async fn call(&self, call: Call<'_, Payment>) -> Result<Vec<PaymentEvent>, CallError> {
        let PaymentCommand::Charge { amount_cents } = call.command;
        let answer = self
            .http
            .post(format!("{}/charges", self.base))
            .header("Idempotency-Key", call.idempotency_key.to_string())
            .json(&json!({"amount_cents": amount_cents}))
            .send()
            .await
            .map_err(CallError::failed)?;
        match answer.status().as_u16() {
            201 => {
                let body: Value = answer.json().await.map_err(CallError::failed)?;
                Ok(vec![PaymentEvent::Charged {
                    charge_id: body["charge_id"].as_str().unwrap_or_default().to_owned(),
                    amount_cents: *amount_cents,
                }])
            }
            402 => Err(CallError::rejected(
                "card_declined",
                "the card was declined",
            )),
            status => Err(CallError::failed(format!("provider answered {status}"))),
        }
    }

    fn settings(&self) -> ExternalSettings {
        ExternalSettings {
            call_timeout: Duration::from_secs(2),
            retry: Backoff::unlimited(Duration::from_millis(50), Duration::from_millis(200)),
            breaker: BreakerSettings {
                window: Duration::from_secs(10),
                min_calls: 3,
                failure_ratio: 0.5,
                open_for: Duration::from_millis(400),
            },
            ..ExternalSettings::default()
        }
    }
}

/// Publishes a saga command for payment `target` with message id `id`.
async fn send(
    pool: &PgPool,
    transport: &PostgresTransport,
    id: Uuid,
    target: &str,
    amount_cents: u64,
    deadline_at: Option<DateTime<Utc>>,
) {
    let envelope = Envelope {
        message_id: id,
        stream_id: format!("payment-{target}"),
        stream_version: 0,
        event_type: COMMAND_EVENT_TYPE.into(),
        schema_version: 1,
        payload: serde_json::to_value(SagaCommand {
            aggregate_type: "payment".into(),
            aggregate_id: target.into(),
            command: serde_json::to_value(PaymentCommand::Charge { amount_cents }).unwrap(),
            deadline_at,
        })
        .unwrap(),
        metadata: Metadata {
            saga_id: Some(Uuid::new_v4().to_string()),
            saga_step: Some("charge".into()),
            attempt: Some(1),
            ..Metadata::new_root()
        },
    };
    let layout = transport.layout().clone();
    let key = envelope.stream_id.clone();
    let message = OutgoingMessage {
        outbox_id: 0,
        topic: layout.topic("payments.commands"),
        partition: layout.partition_of(&key),
        key,
        payload: serde_json::to_string(&envelope).unwrap(),
        envelope,
    };
    let mut tx = pool.begin().await.unwrap();
    transport.publish(&mut tx, &[message]).await.unwrap();
    tx.commit().await.unwrap();
}

/// The replies in the outbox, by the command they answer: `succeeded` or the rejection code.
async fn replies(pool: &PgPool) -> BTreeMap<Uuid, String> {
    let rows: Vec<String> = sqlx::query_scalar("SELECT envelope FROM outbox WHERE topic = $1")
        .bind(REPLIES_TOPIC)
        .fetch_all(pool)
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            let e: Envelope = serde_json::from_str(r).unwrap();
            let id = e.payload["command_id"].as_str().unwrap().parse().unwrap();
            let outcome = match e.payload["outcome"].as_str().unwrap() {
                "succeeded" => "succeeded".to_owned(),
                _ => e.payload["code"].as_str().unwrap().to_owned(),
            };
            (id, outcome)
        })
        .collect()
}

async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let until = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn calls_once_per_key_records_replies_and_waits_out_an_outage(pool: PgPool) {
    let (provider, base) = start_provider().await;
    let layout = TopicLayout {
        prefix: "t".into(),
        partitions: 2,
    };
    let transport = Arc::new(PostgresTransport::new(pool.clone(), layout));
    let bus = CommandBus::new(pool.clone(), CommandBusConfig::default());
    let repo = Arc::new(Repository::<Payment>::new(bus));
    let client = Arc::new(Client {
        http: reqwest::Client::new(),
        base,
    });
    let breaker = Arc::new(Breaker::new("payment", client.settings().breaker));
    let consumer = ExternalHandler::new(client, repo.clone(), breaker.clone()).consumer(
        pool.clone(),
        transport.clone(),
        Doorbell::new(pool.clone(), OUTBOX_CHANNEL),
    );
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer.run(shutdown.clone()));

    // Two charges on one payment, one on another, one declined.
    let (a1, a2, b1, big) = (
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
    );
    send(&pool, &transport, a1, "a", 1_000, None).await;
    send(&pool, &transport, a2, "a", 2_000, None).await;
    send(&pool, &transport, b1, "b", 500, None).await;
    send(&pool, &transport, big, "b", 500_000, None).await;
    eventually("four replies", || async { replies(&pool).await.len() == 4 }).await;
    let r = replies(&pool).await;
    assert_eq!(r[&a1], "succeeded");
    assert_eq!(r[&b1], "succeeded");
    assert_eq!(r[&big], "card_declined");
    assert_eq!(repo.load("a").await.unwrap().state.charged, 3_000);
    assert_eq!(repo.load("b").await.unwrap().state.charged, 500);
    let keys: Vec<String> = provider.charges.lock().unwrap().keys().cloned().collect();
    assert_eq!(keys.len(), 3, "one charge per key: {keys:?}");
    assert!(keys.contains(&a1.to_string()));

    // A command delivered again is not called again.
    let before = provider.requests.load(Ordering::SeqCst);
    send(&pool, &transport, a1, "a", 1_000, None).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(provider.requests.load(Ordering::SeqCst), before);
    assert_eq!(replies(&pool).await.len(), 4);

    // The provider goes down: the breaker opens, the commands wait, nothing is parked.
    provider.down.store(true, Ordering::SeqCst);
    let (c1, c2) = (Uuid::now_v7(), Uuid::now_v7());
    send(&pool, &transport, c1, "c", 700, None).await;
    send(&pool, &transport, c2, "d", 800, None).await;
    eventually("the breaker open", || async {
        breaker.state() != BreakerState::Closed
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        replies(&pool).await.len(),
        4,
        "no reply while the provider is down"
    );
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(parked, 0);
    let calls_while_down = provider.requests.load(Ordering::SeqCst) - before;
    assert!(
        calls_while_down < 20,
        "the breaker spared the provider: {calls_while_down} calls in 2 s"
    );
    let short_circuited = metrics()
        .calls
        .with_label_values(&["payment", "short_circuited"])
        .get();
    assert!(short_circuited > 0);

    // Back: every waiting command is charged once, and the breaker closes.
    provider.down.store(false, Ordering::SeqCst);
    eventually("six replies", || async { replies(&pool).await.len() == 6 }).await;
    assert_eq!(breaker.state(), BreakerState::Closed);
    assert_eq!(provider.charges.lock().unwrap().len(), 5);

    // Failing past its deadline, a command is left unanswered and not recorded as applied;
    // the saga's next attempt, with the same id, is.
    provider.down.store(true, Ordering::SeqCst);
    let late = Uuid::now_v7();
    send(
        &pool,
        &transport,
        late,
        "e",
        900,
        Some(Utc::now() + chrono::Duration::milliseconds(300)),
    )
    .await;
    eventually("the late command passed over", || async {
        let processed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM message_log l WHERE l.message_id = $1
               AND l.offset < (SELECT next_offset FROM consumer_offsets o
                               WHERE o.consumer_group = 'participant:payment'
                                 AND o.topic = l.topic AND o.partition = l.partition)",
        )
        .bind(late)
        .fetch_one(&pool)
        .await
        .unwrap();
        processed == 1
    })
    .await;
    assert!(!replies(&pool).await.contains_key(&late));
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM processed_messages WHERE message_id = $1")
            .bind(late)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(recorded, 0);
    provider.down.store(false, Ordering::SeqCst);
    send(&pool, &transport, late, "e", 900, None).await;
    eventually("the retried command answered", || async {
        replies(&pool)
            .await
            .get(&late)
            .is_some_and(|o| o == "succeeded")
    })
    .await;

    shutdown.cancel();
    running.await.unwrap().unwrap();
}
