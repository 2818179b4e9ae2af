//! Payment, an outside-world participant: the card is charged by a payment provider over
//! HTTP, and what the provider did is recorded as events of the [`Payment`] aggregate (stream
//! `payment-<trip id>`), so time travel, timelines and read models see it like any other
//! events.
//!
//! The provider's API, as [`PaymentClient`] calls it (the fake in [`crate::provider`] serves
//! it):
//!
//! | request | answer |
//! |---|---|
//! | `POST /charges` `{"amount_cents", "card_token", "reference"}` with `Idempotency-Key` | `201 {"charge_id"}` (or `200`, the same charge, for a key it saw), `402 {"code": "card_declined"}` |
//! | `POST /charges/{charge_id}/refunds` `{"amount_cents"}` with `Idempotency-Key` | `201 {"refund_id"}` (or `200` for a key it saw) |
//!
//! Every call carries the saga command's message id as its `Idempotency-Key`: however often
//! the engine repeats a call (a retry, a timed-out step sent again, a crash before the outcome
//! committed) the provider charges once. A decline is a business answer
//! ([`CallError::Rejected`], code `card_declined`): the saga compensates. A `5xx`, another
//! unexpected status, a refused connection or a timeout is technical ([`CallError::Failed`]):
//! the engine retries it with backoff and counts it for the participant's circuit breaker.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use sagaflow::external::{
    Backoff, BreakerSettings, Call, CallError, ExternalParticipant, ExternalSettings,
};
use sagaflow::{Aggregate, DomainCommand, DomainError, DomainEvent};

/// The environment variable that holds the provider's base URL (`http://host:port`).
pub const PAYMENT_URL_VAR: &str = "TRAVEL_PAYMENT_URL";

/// The environment variable that may bound each call to the provider, in milliseconds.
pub const PAYMENT_TIMEOUT_VAR: &str = "TRAVEL_PAYMENT_TIMEOUT_MS";

/// What was charged for one trip, and whether it was refunded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Payment {
    /// The provider's charge, once made.
    pub charge: Option<Charge>,
    /// The provider's refund of it, once made.
    pub refund_id: Option<String>,
}

/// A charge made at the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Charge {
    /// The provider's id of the charge.
    pub charge_id: String,
    /// How much, in cents.
    pub amount_cents: i64,
}

/// What the booking saga asks of the payment participant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(
    tag = "command",
    content = "payload",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum PaymentCommand {
    /// Charges the card.
    Charge {
        /// How much, in cents.
        amount_cents: i64,
        /// The card's token at the provider.
        card_token: String,
    },
    /// Refunds the charge, if one was made (the compensation of `charge`).
    Refund,
}

impl DomainCommand for PaymentCommand {
    fn name(&self) -> &'static str {
        match self {
            PaymentCommand::Charge { .. } => "charge",
            PaymentCommand::Refund => "refund",
        }
    }
}

/// What the provider did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "payload", rename_all = "snake_case")]
pub enum PaymentEvent {
    /// The card was charged.
    CardCharged {
        /// The provider's id of the charge.
        charge_id: String,
        /// How much, in cents.
        amount_cents: i64,
    },
    /// The charge was refunded.
    ChargeRefunded {
        /// The provider's id of the refund.
        refund_id: String,
        /// How much, in cents.
        amount_cents: i64,
    },
}

impl DomainEvent for PaymentEvent {}

/// A payment is not commanded over HTTP: only the provider's answers write its events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("payments are made through the payment provider")]
pub struct ThroughTheProvider;

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
        match event {
            PaymentEvent::CardCharged {
                charge_id,
                amount_cents,
            } => {
                self.charge = Some(Charge {
                    charge_id: charge_id.clone(),
                    amount_cents: *amount_cents,
                })
            }
            PaymentEvent::ChargeRefunded { refund_id, .. } => {
                self.refund_id = Some(refund_id.clone())
            }
        }
    }
}

/// The payment participant: calls the provider at `base_url`.
#[derive(Debug, Clone)]
pub struct PaymentClient {
    http: reqwest::Client,
    base_url: Option<String>,
    settings: ExternalSettings,
}

impl PaymentClient {
    /// A client of the provider at `base_url` (`http://host:port`, no trailing slash needed),
    /// with [`PaymentClient::default_settings`].
    pub fn new(base_url: impl Into<String>) -> Self {
        Self::with(Some(base_url.into()))
    }

    /// A client of the provider named by [`PAYMENT_URL_VAR`]. Without it every call fails
    /// (technically: the commands wait), so `travel serve` refuses to start without it.
    /// [`PAYMENT_TIMEOUT_VAR`], if set, bounds each call instead of the default 5 s.
    pub fn from_env() -> Self {
        let client = Self::with(
            std::env::var(PAYMENT_URL_VAR)
                .ok()
                .filter(|u| !u.is_empty()),
        );
        match std::env::var(PAYMENT_TIMEOUT_VAR).map(|ms| ms.parse::<u64>()) {
            Ok(Ok(ms)) if ms > 0 => {
                let mut settings = client.settings;
                settings.call_timeout = Duration::from_millis(ms);
                client.settings(settings)
            }
            _ => client,
        }
    }

    fn with(base_url: Option<String>) -> Self {
        let settings = Self::default_settings();
        PaymentClient {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .build()
                .expect("a plain HTTP client builds"),
            base_url: base_url.map(|u| u.trim_end_matches('/').to_owned()),
            settings,
        }
    }

    /// Calls wait at most 5 s; failures are retried from 100 ms up to every 2 s; the breaker
    /// opens when half of at least 5 calls in 10 s failed, and lets a probe through after 1 s.
    pub fn default_settings() -> ExternalSettings {
        ExternalSettings {
            call_timeout: Duration::from_secs(5),
            retry: Backoff::unlimited(Duration::from_millis(100), Duration::from_secs(2)),
            breaker: BreakerSettings {
                window: Duration::from_secs(10),
                min_calls: 5,
                failure_ratio: 0.5,
                open_for: Duration::from_secs(1),
            },
            ..ExternalSettings::default()
        }
    }

    /// The same client with other settings.
    pub fn settings(mut self, settings: ExternalSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Posts `body` to `path` with the idempotency key; the status and the JSON answer.
    async fn post(
        &self,
        path: &str,
        key: uuid::Uuid,
        body: Value,
    ) -> Result<(u16, Value), CallError> {
        let base = self
            .base_url
            .as_deref()
            .ok_or_else(|| CallError::failed(format!("{PAYMENT_URL_VAR} is not set")))?;
        let answer = self
            .http
            .post(format!("{base}{path}"))
            .header("Idempotency-Key", key.to_string())
            .json(&body)
            .send()
            .await
            .map_err(CallError::failed)?;
        let status = answer.status().as_u16();
        if answer.status().is_server_error() {
            return Err(CallError::failed(format!("the provider answered {status}")));
        }
        let body = answer.json().await.map_err(CallError::failed)?;
        Ok((status, body))
    }
}

fn id_in(body: &Value, field: &str) -> Result<String, CallError> {
    body[field]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| CallError::failed(format!("the provider's answer has no {field}: {body}")))
}

#[async_trait]
impl ExternalParticipant for PaymentClient {
    type Record = Payment;

    async fn call(&self, call: Call<'_, Payment>) -> Result<Vec<PaymentEvent>, CallError> {
        match call.command {
            // One charge per trip: a charge recorded already is not made again.
            PaymentCommand::Charge { .. } if call.state.charge.is_some() => Ok(vec![]),
            PaymentCommand::Charge {
                amount_cents,
                card_token,
            } => {
                let body = json!({
                    "amount_cents": amount_cents,
                    "card_token": card_token,
                    "reference": call.aggregate_id,
                });
                match self.post("/charges", call.idempotency_key, body).await? {
                    (200 | 201, body) => Ok(vec![PaymentEvent::CardCharged {
                        charge_id: id_in(&body, "charge_id")?,
                        amount_cents: *amount_cents,
                    }]),
                    (402, _) => Err(CallError::rejected(
                        "card_declined",
                        "the payment provider declined the card",
                    )),
                    (status, body) => Err(CallError::failed(format!(
                        "the provider answered {status}: {body}"
                    ))),
                }
            }
            // Nothing charged (the charge was declined or never made), or refunded already.
            PaymentCommand::Refund if call.state.refund_id.is_some() => Ok(vec![]),
            PaymentCommand::Refund => {
                let Some(charge) = &call.state.charge else {
                    return Ok(vec![]);
                };
                let path = format!("/charges/{}/refunds", charge.charge_id);
                let body = json!({"amount_cents": charge.amount_cents});
                match self.post(&path, call.idempotency_key, body).await? {
                    (200 | 201, body) => Ok(vec![PaymentEvent::ChargeRefunded {
                        refund_id: id_in(&body, "refund_id")?,
                        amount_cents: charge.amount_cents,
                    }]),
                    (status, body) => Err(CallError::failed(format!(
                        "the provider answered {status}: {body}"
                    ))),
                }
            }
        }
    }

    fn settings(&self) -> ExternalSettings {
        self.settings
    }
}
