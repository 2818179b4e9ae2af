//! Types the documentation's examples compile against: a wallet aggregate and a payout saga.
//! Not part of the API.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregate, DomainCommand, DomainError, DomainEvent};
use crate::saga::{Invoke, Saga, SagaDefinition};

/// Money held in cents, some of it held for payouts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Wallet {
    /// Cents in the wallet.
    pub balance: u64,
    /// Cents held, by hold.
    pub held: std::collections::BTreeMap<String, u64>,
}

/// The wallet's commands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "command", content = "payload", rename_all = "snake_case")]
pub enum WalletCommand {
    /// Adds cents.
    Deposit { cents: u64 },
    /// Asks for a payout to another wallet: starts the payout saga.
    RequestPayout { to: String, cents: u64 },
    /// Holds cents for a payout.
    Hold { hold: String, cents: u64 },
    /// Lets a hold go.
    Release { hold: String },
}

impl DomainCommand for WalletCommand {
    fn name(&self) -> &'static str {
        match self {
            WalletCommand::Deposit { .. } => "deposit",
            WalletCommand::RequestPayout { .. } => "request_payout",
            WalletCommand::Hold { .. } => "hold",
            WalletCommand::Release { .. } => "release",
        }
    }
}

/// The wallet's events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "payload", rename_all = "snake_case")]
pub enum WalletEvent {
    /// Cents were added.
    Deposited { cents: u64 },
    /// A payout was asked for.
    PayoutRequested { to: String, cents: u64 },
    /// Cents were held.
    Held { hold: String, cents: u64 },
    /// A hold was let go.
    Released { hold: String },
}

impl DomainEvent for WalletEvent {}

/// The wallet's one rejection.
#[derive(Debug, thiserror::Error)]
#[error("not enough money in the wallet")]
pub struct NotEnough;

impl DomainError for NotEnough {
    fn code(&self) -> &'static str {
        "not_enough"
    }
}

impl Aggregate for Wallet {
    const TYPE: &'static str = "wallet";
    const CONTEXT: &'static str = "wallets";
    type Command = WalletCommand;
    type Event = WalletEvent;
    type Error = NotEnough;

    fn handle(&self, command: &WalletCommand) -> Result<Vec<WalletEvent>, NotEnough> {
        let free = self.balance - self.held.values().sum::<u64>();
        Ok(match command {
            WalletCommand::Deposit { cents } => vec![WalletEvent::Deposited { cents: *cents }],
            WalletCommand::RequestPayout { to, cents } => vec![WalletEvent::PayoutRequested {
                to: to.clone(),
                cents: *cents,
            }],
            WalletCommand::Hold { hold, .. } if self.held.contains_key(hold) => vec![],
            WalletCommand::Hold { cents, .. } if *cents > free => return Err(NotEnough),
            WalletCommand::Hold { hold, cents } => vec![WalletEvent::Held {
                hold: hold.clone(),
                cents: *cents,
            }],
            WalletCommand::Release { hold } if !self.held.contains_key(hold) => vec![],
            WalletCommand::Release { hold } => vec![WalletEvent::Released { hold: hold.clone() }],
        })
    }

    fn apply(&mut self, event: &WalletEvent) {
        match event {
            WalletEvent::Deposited { cents } => self.balance += cents,
            WalletEvent::PayoutRequested { .. } => {}
            WalletEvent::Held { hold, cents } => {
                self.held.insert(hold.clone(), *cents);
            }
            WalletEvent::Released { hold } => {
                self.held.remove(hold);
            }
        }
    }
}

/// What a payout remembers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payout {
    /// The paying wallet.
    pub from: String,
    /// The paid wallet.
    pub to: String,
    /// How much.
    pub cents: u64,
}

/// Holds the money on the paying wallet, then credits the paid one; a refused hold ends it.
pub fn payout() -> Arc<Saga> {
    SagaDefinition::<Payout>::new("payout")
        .started_by::<Wallet>(|event, envelope| match event {
            WalletEvent::PayoutRequested { to, cents } => Some(Payout {
                from: envelope.stream_id.strip_prefix("wallet-")?.to_owned(),
                to: to.clone(),
                cents: *cents,
            }),
            _ => None,
        })
        .step("hold")
        .invoke::<Wallet>(|p| {
            Invoke::new(
                &p.from,
                WalletCommand::Hold {
                    hold: format!("payout-to-{}", p.to),
                    cents: p.cents,
                },
            )
        })
        .compensate::<Wallet>(|p| {
            Invoke::new(
                &p.from,
                WalletCommand::Release {
                    hold: format!("payout-to-{}", p.to),
                },
            )
        })
        .step("credit")
        .invoke::<Wallet>(|p| Invoke::new(&p.to, WalletCommand::Deposit { cents: p.cents }))
        .build()
}

/// The charges made at a payment provider for one payout: the record of an outside-world
/// participant.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Payment {
    /// Cents charged.
    pub charged: u64,
}

/// What a saga asks of the payment provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "command", content = "payload", rename_all = "snake_case")]
pub enum PaymentCommand {
    /// Charge the card.
    Charge { amount_cents: u64 },
}

impl DomainCommand for PaymentCommand {
    fn name(&self) -> &'static str {
        "charge"
    }
}

/// What the payment provider did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "payload", rename_all = "snake_case")]
pub enum PaymentEvent {
    /// The card was charged.
    Charged {
        charge_id: String,
        amount_cents: u64,
    },
}

impl DomainEvent for PaymentEvent {}

/// Payments are made by calling the provider, never decided here.
#[derive(Debug, thiserror::Error)]
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
            PaymentEvent::Charged { amount_cents, .. } => self.charged += amount_cents,
        }
    }
}
