//! A saga test harness: given a saga at some step, when a reply (or a timeout, or an abort)
//! arrives, expect these commands or these compensations. It runs the real decision function
//! and fold, without a database.
//!
//! ```
//! # use sagaflow_engine::doc_fixtures::{payout, Payout, Wallet, WalletCommand};
//! use sagaflow_engine::saga::testing::SagaTest;
//! use sagaflow_engine::saga::SagaStatus;
//!
//! let data = Payout { from: "ann".into(), to: "bob".into(), cents: 5 };
//! let hold = || "payout-to-bob".to_owned();
//! SagaTest::start(payout(), &data)
//!     .expect_command::<Wallet>("ann", WalletCommand::Hold { hold: hold(), cents: 5 })
//!     .all_ok()
//!     .expect_command::<Wallet>("bob", WalletCommand::Deposit { cents: 5 })
//!     .reply_rejected(0, "not_enough")
//!     .expect_compensation::<Wallet>(vec![("ann", WalletCommand::Release { hold: hold() })])
//!     .all_ok()
//!     .expect_status(SagaStatus::Compensated);
//! ```

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::definition::{Saga, SagaData};
use super::messages::{ReplyEvent, ReplyOutcome};
use super::state::{decide, SagaEvent, SagaInput, SagaState, SagaStatus, SentCommand};
use crate::aggregate::{encode_event, Aggregate};

/// One saga instance driven by hand: the real decision function and fold, a clock that only moves
/// when a deadline passes, no database and no jitter.
pub struct SagaTest {
    saga: Arc<Saga>,
    state: SagaState,
    now: DateTime<Utc>,
    /// Events decided by the last input.
    pub last_events: Vec<SagaEvent>,
    /// Commands sent by the last input.
    pub last_commands: Vec<SentCommand>,
    /// Commands waiting for a reply (the replies below answer these).
    pub outstanding: Vec<SentCommand>,
}

impl SagaTest {
    /// A saga just started with `data`.
    pub fn start<D: SagaData>(saga: Arc<Saga>, data: &D) -> Self {
        let mut t = SagaTest {
            saga,
            state: SagaState::default(),
            now: Utc::now(),
            last_events: Vec::new(),
            last_commands: Vec::new(),
            outstanding: Vec::new(),
        };
        let data = serde_json::to_value(data).expect("saga data serializes");
        t.input(SagaInput::Start {
            data,
            correlation_id: Uuid::now_v7(),
        });
        t
    }

    /// A saga whose steps before `step` all succeeded (with replies carrying no events).
    pub fn at_step<D: SagaData>(saga: Arc<Saga>, data: &D, step: &str) -> Self {
        let mut t = Self::start(saga, data);
        while t.state.current_step_name().is_some_and(|s| s != step) {
            t = t.all_ok();
        }
        assert_eq!(
            t.state.current_step_name(),
            Some(step),
            "the saga never reached step {step}"
        );
        t
    }

    fn input(&mut self, input: SagaInput) {
        let events = decide(&self.saga, &self.state, &input, self.now, &mut || 0.5)
            .expect("the saga decides");
        self.last_commands.clear();
        for e in &events {
            self.state.apply(e, self.now);
            match e {
                SagaEvent::StepInvoked { commands, .. }
                | SagaEvent::CompensationInvoked { commands, .. } => {
                    self.last_commands.extend(commands.iter().cloned());
                    self.outstanding = commands.clone();
                }
                SagaEvent::FinalCommandInvoked { command, .. } => {
                    self.last_commands.push(command.clone());
                    self.outstanding = vec![command.clone()];
                }
                _ => {}
            }
        }
        self.last_events = events;
    }

    /// The saga's state, folded from every event decided so far.
    pub fn state(&self) -> &SagaState {
        &self.state
    }

    /// The saga's status; panics before the saga started.
    pub fn status(&self) -> SagaStatus {
        self.state.status.expect("started")
    }

    /// The saga data, decoded as `D`.
    pub fn data<D: SagaData>(&self) -> D {
        serde_json::from_value(self.state.data.clone()).expect("saga data decodes")
    }

    fn reply(mut self, index: usize, outcome: ReplyOutcome) -> Self {
        let position = self
            .outstanding
            .iter()
            .position(|c| c.index == index)
            .unwrap_or_else(|| panic!("no outstanding command #{index}"));
        let command = self.outstanding.remove(position);
        self.input(SagaInput::Reply {
            command_id: command.message_id,
            outcome,
        });
        self
    }

    /// Command `index` of the current step succeeded without recording events.
    pub fn reply_ok(self, index: usize) -> Self {
        self.reply(index, ReplyOutcome::Succeeded { events: Vec::new() })
    }

    /// Command `index` succeeded and recorded `events` on its aggregate.
    pub fn reply_ok_with<A: Aggregate>(self, index: usize, events: Vec<A::Event>) -> Self {
        let events = events
            .iter()
            .map(|e| {
                let (event_type, payload) = encode_event(e);
                ReplyEvent {
                    event_type,
                    payload,
                }
            })
            .collect();
        self.reply(index, ReplyOutcome::Succeeded { events })
    }

    /// Command `index` was rejected by the domain with `code`.
    pub fn reply_rejected(self, index: usize, code: &str) -> Self {
        self.reply(
            index,
            ReplyOutcome::Rejected {
                code: code.to_owned(),
                message: format!("rejected: {code}"),
            },
        )
    }

    /// Every outstanding command succeeded.
    pub fn all_ok(mut self) -> Self {
        let indices: Vec<usize> = self.outstanding.iter().map(|c| c.index).collect();
        assert!(!indices.is_empty(), "no outstanding command");
        for i in indices {
            self = self.reply_ok(i);
        }
        self
    }

    /// The saga's deadline passes.
    pub fn deadline_passes(mut self) -> Self {
        let deadline = self.state.deadline.expect("the saga waits for a deadline");
        self.now = deadline.at;
        self.input(SagaInput::Deadline);
        self
    }

    /// A domain event aborts the saga (`aborted_by`) with `reason`.
    pub fn abort(mut self, reason: &str) -> Self {
        self.input(SagaInput::Abort {
            reason: reason.into(),
            by_operator: false,
        });
        self
    }

    /// An operator aborts the saga (`POST /admin/sagas/{id}/abort`).
    pub fn operator_abort(mut self, reason: &str) -> Self {
        self.input(SagaInput::Abort {
            reason: reason.into(),
            by_operator: true,
        });
        self
    }

    /// The failed saga is re-driven from where it failed ([`SagaInput::Retry`]).
    pub fn retry(mut self) -> Self {
        self.input(SagaInput::Retry);
        self
    }

    /// An operator re-drives the saga (`POST /admin/sagas/{id}/retry-step`).
    pub fn retry_step(mut self) -> Self {
        self.input(SagaInput::RetryStep);
        self
    }

    fn expect_sent<A: Aggregate>(&self, expected: Vec<(String, A::Command)>) {
        let expected: Vec<(String, String, Value)> = expected
            .into_iter()
            .map(|(id, c)| {
                (
                    A::TYPE.to_owned(),
                    id,
                    serde_json::to_value(&c).expect("serializes"),
                )
            })
            .collect();
        let sent: Vec<(String, String, Value)> = self
            .last_commands
            .iter()
            .map(|c| {
                (
                    c.invocation.aggregate_type.clone(),
                    c.invocation.aggregate_id.clone(),
                    c.invocation.command.clone(),
                )
            })
            .collect();
        assert_eq!(
            sent, expected,
            "commands sent (events: {:?})",
            self.last_events
        );
    }

    /// Expects exactly these forward commands from the last input.
    pub fn expect_commands<A: Aggregate>(self, expected: Vec<(impl ToString, A::Command)>) -> Self {
        assert_ne!(
            self.state.status,
            Some(SagaStatus::Compensating),
            "the saga is compensating"
        );
        self.expect_sent::<A>(
            expected
                .into_iter()
                .map(|(i, c)| (i.to_string(), c))
                .collect(),
        );
        self
    }

    /// Expects exactly one forward command from the last input: `command` to aggregate `id` of type
    /// `A`.
    pub fn expect_command<A: Aggregate>(self, id: impl ToString, command: A::Command) -> Self {
        self.expect_commands::<A>(vec![(id.to_string(), command)])
    }

    /// Expects exactly these compensating commands from the last input.
    pub fn expect_compensation<A: Aggregate>(
        self,
        expected: Vec<(impl ToString, A::Command)>,
    ) -> Self {
        assert!(
            self.state.compensating,
            "the saga is not compensating: {:?}",
            self.last_events
        );
        self.expect_sent::<A>(
            expected
                .into_iter()
                .map(|(i, c)| (i.to_string(), c))
                .collect(),
        );
        self
    }

    /// Expects every step compensated and this final command sent; once it is answered the
    /// saga is compensated.
    pub fn expect_compensated_with<A: Aggregate>(
        self,
        id: impl ToString,
        command: A::Command,
    ) -> Self {
        assert_eq!(
            self.state.status,
            Some(SagaStatus::Compensating),
            "{:?}",
            self.last_events
        );
        self.expect_sent::<A>(vec![(id.to_string(), command)]);
        self.reply_ok(0).expect_status(SagaStatus::Compensated)
    }

    /// Expects the saga to be in `status`.
    pub fn expect_status(self, status: SagaStatus) -> Self {
        assert_eq!(self.state.status, Some(status), "{:?}", self.last_events);
        self
    }

    /// Expects the last input to send nothing.
    pub fn expect_nothing_sent(self) -> Self {
        assert!(
            self.last_commands.is_empty(),
            "sent {:?}",
            self.last_commands
        );
        self
    }
}
