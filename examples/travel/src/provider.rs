//! A fake payment provider for tests and local runs: a real HTTP server on `127.0.0.1` that
//! serves the API [`PaymentClient`](crate::payment::PaymentClient) calls.
//!
//! - It records charges by `Idempotency-Key`: the same key again answers `200` with the same
//!   charge, recorded once. A request without the header is `400`.
//! - It declines every card whose token starts with [`DECLINED_PREFIX`] (`402
//!   {"code": "card_declined"}`).
//! - It can be slow ([`FakeProvider::set_delay`]: it does the work, then waits before it
//!   answers, so a caller that gives up has been charged all the same) and down for a while
//!   ([`FakeProvider::down_for`]: every request is answered `503` until then).
//!
//! ```no_run
//! # async fn run() {
//! let provider = travel::provider::FakeProvider::start().await;
//! std::env::set_var(travel::payment::PAYMENT_URL_VAR, provider.url());
//! # }
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

/// Cards whose token starts with this are declined.
pub const DECLINED_PREFIX: &str = "tok_declined";

/// A charge the provider made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedCharge {
    /// The idempotency key it was made with.
    pub key: String,
    /// Its id.
    pub charge_id: String,
    /// How much, in cents.
    pub amount_cents: i64,
    /// The card's token.
    pub card_token: String,
    /// The caller's reference (the travel service sends the trip's id).
    pub reference: String,
    /// How many requests carried its key (1 for a charge asked for once).
    pub requests: usize,
}

/// A refund the provider made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRefund {
    /// The idempotency key it was made with.
    pub key: String,
    /// Its id.
    pub refund_id: String,
    /// The charge it refunds.
    pub charge_id: String,
    /// How much, in cents.
    pub amount_cents: i64,
}

#[derive(Default)]
struct Inner {
    requests: AtomicUsize,
    unavailable: AtomicUsize,
    delay: Mutex<Duration>,
    down_until: Mutex<Option<Instant>>,
    /// By idempotency key, in the order they were made.
    charges: Mutex<Vec<RecordedCharge>>,
    refunds: Mutex<Vec<RecordedRefund>>,
}

/// A running fake provider; it stops when the runtime that started it does.
#[derive(Clone)]
pub struct FakeProvider {
    inner: Arc<Inner>,
    url: String,
}

impl FakeProvider {
    /// Starts it on an ephemeral port of `127.0.0.1`.
    pub async fn start() -> FakeProvider {
        Self::start_on("127.0.0.1:0")
            .await
            .expect("bind a loopback port")
    }

    /// Starts it on `addr` (`127.0.0.1:9090`).
    pub async fn start_on(addr: &str) -> std::io::Result<FakeProvider> {
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route("/charges", post(charge))
            .route("/charges/{charge_id}/refunds", post(refund))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(FakeProvider { inner, url })
    }

    /// Its base URL (`http://127.0.0.1:<port>`), for [`crate::payment::PAYMENT_URL_VAR`].
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every answer waits `delay` after the work is done (`Duration::ZERO`: none).
    pub fn set_delay(&self, delay: Duration) {
        *self.inner.delay.lock().expect("not poisoned") = delay;
    }

    /// Answers `503` to every request for the next `period`.
    pub fn down_for(&self, period: Duration) {
        *self.inner.down_until.lock().expect("not poisoned") = Some(Instant::now() + period);
    }

    /// Every request received, answered or not.
    pub fn requests(&self) -> usize {
        self.inner.requests.load(Ordering::SeqCst)
    }

    /// The requests answered `503` because it was down.
    pub fn unavailable(&self) -> usize {
        self.inner.unavailable.load(Ordering::SeqCst)
    }

    /// The charges made, in order.
    pub fn charges(&self) -> Vec<RecordedCharge> {
        self.inner.charges.lock().expect("not poisoned").clone()
    }

    /// The refunds made, in order.
    pub fn refunds(&self) -> Vec<RecordedRefund> {
        self.inner.refunds.lock().expect("not poisoned").clone()
    }
}

type Answer = (StatusCode, Json<Value>);

/// Waits the delay, then answers.
async fn answer(p: &Inner, answer: Answer) -> Answer {
    let delay = *p.delay.lock().expect("not poisoned");
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    answer
}

/// Counts the request, and answers 503 while down.
fn arrive(p: &Inner) -> Result<(), Answer> {
    p.requests.fetch_add(1, Ordering::SeqCst);
    let down = p
        .down_until
        .lock()
        .expect("not poisoned")
        .is_some_and(|until| Instant::now() < until);
    if down {
        p.unavailable.fetch_add(1, Ordering::SeqCst);
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"code": "unavailable"})),
        ));
    }
    Ok(())
}

fn key_of(headers: &HeaderMap) -> Result<String, Answer> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            (
                StatusCode::BAD_REQUEST,
                Json(json!({"code": "idempotency_key_missing"})),
            )
        })
}

async fn charge(
    State(p): State<Arc<Inner>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Answer {
    let done = charge_now(&p, &headers, &body);
    answer(&p, done).await
}

/// Charges, once per key: what `POST /charges` answers.
fn charge_now(p: &Inner, headers: &HeaderMap, body: &Value) -> Answer {
    if let Err(unavailable) = arrive(p) {
        return unavailable;
    }
    let key = match key_of(headers) {
        Ok(key) => key,
        Err(answer) => return answer,
    };
    let mut charges = p.charges.lock().expect("not poisoned");
    if let Some(c) = charges.iter_mut().find(|c| c.key == key) {
        c.requests += 1;
        return (StatusCode::OK, Json(json!({"charge_id": c.charge_id})));
    }
    let (Some(amount_cents), Some(card_token)) =
        (body["amount_cents"].as_i64(), body["card_token"].as_str())
    else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"code": "invalid_charge"})),
        );
    };
    if card_token.starts_with(DECLINED_PREFIX) {
        return (
            StatusCode::PAYMENT_REQUIRED,
            Json(json!({"code": "card_declined"})),
        );
    }
    let charge_id = format!("ch_{}", charges.len() + 1);
    charges.push(RecordedCharge {
        key,
        charge_id: charge_id.clone(),
        amount_cents,
        card_token: card_token.to_owned(),
        reference: body["reference"].as_str().unwrap_or_default().to_owned(),
        requests: 1,
    });
    (StatusCode::CREATED, Json(json!({"charge_id": charge_id})))
}

async fn refund(
    State(p): State<Arc<Inner>>,
    Path(charge_id): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let done = refund_now(&p, charge_id, &headers);
    answer(&p, done).await
}

/// Refunds, once per key: what `POST /charges/{charge_id}/refunds` answers.
fn refund_now(p: &Inner, charge_id: String, headers: &HeaderMap) -> Answer {
    if let Err(unavailable) = arrive(p) {
        return unavailable;
    }
    let key = match key_of(headers) {
        Ok(key) => key,
        Err(answer) => return answer,
    };
    let charges = p.charges.lock().expect("not poisoned");
    let Some(charge) = charges.iter().find(|c| c.charge_id == charge_id) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"code": "charge_not_found"})),
        );
    };
    let mut refunds = p.refunds.lock().expect("not poisoned");
    if let Some(r) = refunds.iter().find(|r| r.key == key) {
        return (StatusCode::OK, Json(json!({"refund_id": r.refund_id})));
    }
    let refund_id = format!("re_{}", refunds.len() + 1);
    refunds.push(RecordedRefund {
        key,
        refund_id: refund_id.clone(),
        charge_id,
        amount_cents: charge.amount_cents,
    });
    (StatusCode::CREATED, Json(json!({"refund_id": refund_id})))
}
