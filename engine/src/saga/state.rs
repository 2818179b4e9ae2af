//! A saga instance's state is event-sourced in its `saga-<id>` stream. This module holds the
//! events, the fold, and the pure decision function: given a saga's state and one input (its
//! start, a reply, a deadline, an abort), which events follow. Everything the orchestrator
//! sends (commands, the final command) and schedules (deadlines) is read off those events.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::definition::{Backoff, Failure, Invocation, Saga};
use super::messages::{ReplyEvent, ReplyOutcome};
use crate::aggregate::DomainEvent;
use crate::envelope::RecordedEvent;
use crate::fold::StreamFold;
use crate::store::StoreError;

/// A command the saga sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentCommand {
    /// The command's message id; its reply names it as `command_id`. Every attempt of a
    /// command carries the id of its first attempt, so a participant applies it at most once
    /// (an operator's retry of a failed saga starts with new ids).
    pub message_id: Uuid,
    /// Position among the step's commands (a step may fan out).
    pub index: usize,
    /// Where the command went and what it said.
    #[serde(flatten)]
    pub invocation: Invocation,
}

/// A successful reply folded into the [`SagaEvent::StepSucceeded`] it caused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletingReply {
    /// The message id of the command the reply answered.
    pub command_id: Uuid,
    /// The command's position among the step's commands.
    pub index: usize,
    /// The events the participant recorded for it.
    pub events: Vec<ReplyEvent>,
}

/// The events of a saga's own stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "payload", rename_all = "snake_case")]
pub enum SagaEvent {
    /// The saga started: the first event of every saga stream.
    SagaStarted {
        /// The saga type's name ([`Saga::name`]).
        saga_type: String,
        /// The saga data as the definition derived it from the start event.
        data: Value,
        /// The names of the definition's steps when the saga started, in order; step indexes refer
        /// to this list.
        steps: Vec<String>,
        /// The correlation id of the request that started it, carried by every command.
        correlation_id: Uuid,
        /// Whether its commands to aggregate types the orchestrator's process serves run in
        /// the orchestrator's transaction (local steps) for its whole life. Absent (false) in
        /// sagas started before local steps existed, or without them: their commands go
        /// through the participants' topics, so a compensation never overtakes its command.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        local: bool,
    },
    /// An attempt of a step sent its commands.
    StepInvoked {
        /// The step's index, from 0.
        step: usize,
        /// The step's name.
        name: String,
        /// The attempt, from 1.
        attempt: u32,
        /// The commands of this attempt: all of the step's on the first, only the unanswered ones
        /// on later attempts.
        commands: Vec<SentCommand>,
        /// When the replies are due; past it, the attempt times out.
        deadline_at: DateTime<Utc>,
    },
    /// A participant answered a command of the current step (or compensation).
    ReplyReceived {
        /// The step's index, from 0.
        step: usize,
        /// The step's name.
        name: String,
        /// The command answered.
        command_id: Uuid,
        /// The command's position among the step's commands.
        index: usize,
        /// Whether the command was applied or rejected.
        #[serde(flatten)]
        outcome: ReplyOutcome,
    },
    /// Every command of the step succeeded; the next step follows, or the saga completes.
    StepSucceeded {
        /// The step's index, from 0.
        step: usize,
        /// The step's name.
        name: String,
        /// The saga data after the step, when the step's replies changed it; absent, the data
        /// stays as it was (most steps only need a reply to succeed, and a saga's data can
        /// be large, so it is not stored again with every step).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<Value>,
        /// The reply that completed the step, when it arrived as the step's last one: one
        /// event instead of `reply_received` followed by `step_succeeded`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply: Option<CompletingReply>,
    },
    /// The step failed: a command was rejected, its replies never came, or its commands or data
    /// could not be built. Compensation follows.
    StepFailed {
        /// The step's index, from 0.
        step: usize,
        /// The step's name.
        name: String,
        /// The rejection's code, `timeout`, `invalid_reply` or `saga_definition_error`.
        code: String,
        /// Why, for people.
        message: String,
    },
    /// An attempt of a step got no reply in time.
    StepTimedOut {
        /// The step's index, from 0.
        step: usize,
        /// The step's name.
        name: String,
        /// The attempt that timed out.
        attempt: u32,
        /// When the next attempt is sent; absent when this was the last and the step fails.
        retry_at: Option<DateTime<Utc>>,
    },
    /// The saga compensates: the steps that may have had effects and have a compensation are
    /// undone, latest first.
    CompensationStarted {
        /// Why: the failed step, or the abort.
        failure: Failure,
        /// Steps to compensate, in order (reverse order of completion).
        steps: Vec<usize>,
    },
    /// An attempt of a step's compensation sent its commands.
    CompensationInvoked {
        /// The step's index, from 0.
        step: usize,
        /// The step's name.
        name: String,
        /// The attempt, from 1.
        attempt: u32,
        /// The commands of this attempt: all of them on the first, only the unanswered ones on
        /// later attempts.
        commands: Vec<SentCommand>,
        /// When the replies are due; past it, the attempt times out.
        deadline_at: DateTime<Utc>,
    },
    /// Every command of a step's compensation succeeded; the next compensation follows.
    CompensationDone {
        /// The step's index, from 0.
        step: usize,
        /// The step's name.
        name: String,
    },
    /// An attempt of a step's compensation got no reply in time.
    CompensationTimedOut {
        /// The step's index, from 0.
        step: usize,
        /// The step's name.
        name: String,
        /// The attempt that timed out.
        attempt: u32,
        /// When the next attempt is sent; absent when this was the last and the saga fails.
        retry_at: Option<DateTime<Utc>>,
    },
    /// Every step succeeded: the saga ended as `completed`.
    SagaCompleted,
    /// Every step was compensated; the definition's final command (reject the order, say)
    /// is sent, and the saga ends when it is answered.
    FinalCommandInvoked {
        /// The attempt, from 1; the final command is sent at most 10 times.
        attempt: u32,
        /// The command sent.
        command: SentCommand,
        /// When its reply is due; past it, the command is sent again.
        deadline_at: DateTime<Utc>,
    },
    /// The saga ended as `compensated`: every completed step was undone.
    SagaCompensated {
        /// Why it compensated.
        failure: Failure,
        /// How the final command was answered, if there was one (`succeeded`, or the code
        /// it was rejected with).
        final_outcome: Option<String>,
    },
    /// The saga stopped as `failed`: a compensation was rejected or kept timing out, the final
    /// command went unanswered, or the definition could not build a compensation. It waits for
    /// an operator to re-drive it ([`SagaInput::Retry`]).
    SagaFailed {
        /// What failed.
        failure: Failure,
    },
    /// An operator asked to re-drive the saga: a failed saga from where it failed
    /// ([`SagaInput::Retry`]), or a step (or compensation) that timed out and waits for its
    /// next attempt, now ([`SagaInput::RetryStep`]). The invocation that follows says what
    /// was sent.
    RetryRequested,
    /// The events one transaction decided for the saga, stored as one event when there are
    /// several: a step's success with the next step's invocation, a start with the first
    /// invocation, the last success with the saga's end, and, when its steps run in the
    /// orchestrator's transaction ([`super::local`]), every decision of that transaction,
    /// often the saga's whole life. One row and its index entries instead of one per event
    /// (most of what a saga writes is its own stream). The events are applied in order, as
    /// if stored one by one; readers that list a saga's events ([`SagaEvent::flatten`]) show
    /// them one by one, at the version of the stored event. An event whose cause is not the
    /// stored event's (`metadata.causation_id`) names its own as `causation_id` beside its
    /// `event_type` and `payload`. Never nested.
    Decided {
        /// The events, in the order they were decided (two or more).
        events: Vec<SagaEvent>,
    },
}

/// The `event_type` of [`SagaEvent::Decided`].
pub use crate::store::DECIDED_EVENT_TYPE;

impl SagaEvent {
    /// The events this stored event stands for: the events of a [`SagaEvent::Decided`], or
    /// the event itself.
    pub fn flatten(self) -> Vec<SagaEvent> {
        match self {
            SagaEvent::Decided { events } => events,
            e => vec![e],
        }
    }
}

/// The stored event of what one transaction decided for a saga, built decision by decision
/// ([`SagaEvent::Decided`] when there are several events, the event itself when there is
/// one).
pub(crate) struct DecidedPack {
    /// The cause of the stored event (its `metadata.causation_id`).
    cause: Option<Uuid>,
    /// Each event as `{"event_type", "payload"}` and, if its cause is another, `causation_id`.
    entries: Vec<Value>,
    /// Whether an entry names a cause of its own (then it is stored packed, even alone).
    own_causes: bool,
}

impl DecidedPack {
    /// An empty pack whose stored event is caused by `cause`.
    pub(crate) fn new(cause: Option<Uuid>) -> Self {
        DecidedPack {
            cause,
            entries: Vec::new(),
            own_causes: false,
        }
    }

    /// Adds `event`, caused by `cause`.
    pub(crate) fn push(&mut self, event: &SagaEvent, cause: Option<Uuid>) {
        let mut entry = serde_json::to_value(event).expect("saga events serialize");
        if cause != self.cause {
            if let (Value::Object(map), Some(cause)) = (&mut entry, cause) {
                map.insert("causation_id".to_owned(), Value::String(cause.to_string()));
                self.own_causes = true;
            }
        }
        self.entries.push(entry);
    }

    /// The stored event of `events`, each with its cause, for a stored event caused by
    /// `cause`.
    #[cfg(test)]
    pub(crate) fn of(
        cause: Option<Uuid>,
        events: &[(SagaEvent, Option<Uuid>)],
    ) -> Option<(String, Value)> {
        let mut pack = DecidedPack::new(cause);
        for (e, c) in events {
            pack.push(e, *c);
        }
        pack.encode()
    }

    /// The stored event's `(event_type, payload)`; `None` if nothing was decided.
    pub(crate) fn encode(mut self) -> Option<(String, Value)> {
        match self.entries.len() {
            0 => None,
            1 if !self.own_causes => {
                let Value::Object(mut entry) = self.entries.pop().expect("one entry") else {
                    unreachable!("a saga event encodes as an object")
                };
                let event_type = match entry.remove("event_type") {
                    Some(Value::String(t)) => t,
                    _ => unreachable!("a saga event encodes its type"),
                };
                let payload = entry.remove("payload").unwrap_or(Value::Null);
                Some((event_type, payload))
            }
            // Built as is: `json!` would serialize the entries into a copy.
            _ => Some((
                DECIDED_EVENT_TYPE.to_owned(),
                Value::Object(serde_json::Map::from_iter([(
                    "events".to_owned(),
                    Value::Array(self.entries),
                )])),
            )),
        }
    }
}

impl DomainEvent for SagaEvent {}

/// Where a saga is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    /// Steps are running.
    Running,
    /// Completed steps are being undone.
    Compensating,
    /// Every step succeeded. Terminal.
    Completed,
    /// Every completed step was undone (and the final command answered). Terminal.
    Compensated,
    /// Stopped: a compensation or the final command could not finish. Terminal until an
    /// operator re-drives it.
    Failed,
}

impl SagaStatus {
    /// Whether the saga has ended: `completed`, `compensated` or `failed`.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Failed
        )
    }

    /// The status as it is stored and served: `running`, `compensating`, …
    pub fn as_str(self) -> &'static str {
        match self {
            SagaStatus::Running => "running",
            SagaStatus::Compensating => "compensating",
            SagaStatus::Completed => "completed",
            SagaStatus::Compensated => "compensated",
            SagaStatus::Failed => "failed",
        }
    }
}

/// Where one step of a saga is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not sent yet.
    Pending,
    /// Sent; waiting for its replies.
    Running,
    /// Every command succeeded.
    Succeeded,
    /// It failed; its `error` says why.
    Failed,
    /// Its compensation was sent; waiting for its replies.
    Compensating,
    /// Undone.
    Compensated,
    /// Its compensation was rejected or kept timing out: the saga is `failed`.
    CompensationFailed,
}

/// One step as an operator sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepView {
    /// The step's name.
    pub name: String,
    /// Where it is.
    pub status: StepStatus,
    /// The attempt the step is at (0 if it was never sent).
    pub attempts: u32,
    /// The attempt its compensation is at (0 if it was never sent).
    pub compensation_attempts: u32,
    /// How many attempts of the step and of its compensation timed out.
    pub timeouts: u32,
    /// When its first attempt was sent.
    pub started_at: Option<DateTime<Utc>>,
    /// When it succeeded, failed or was compensated.
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed or its compensation failed: `<code>: <message>`.
    pub error: Option<String>,
}

/// What the saga waits for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadlineKind {
    /// Replies to the current attempt are due.
    Reply,
    /// The next attempt is due.
    Retry,
}

/// When the saga waits for something next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deadline {
    /// When it is due.
    pub at: DateTime<Utc>,
    /// What is due then.
    pub kind: DeadlineKind,
}

/// The fold of a saga's events.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SagaState {
    /// The saga type's name; empty before the saga started.
    pub saga_type: String,
    /// Where the saga is; absent until it started.
    pub status: Option<SagaStatus>,
    /// The saga data, updated by the steps' `on_success`.
    pub data: Value,
    /// The step being executed or compensated.
    pub current: Option<usize>,
    /// Whether `current` is being compensated rather than run.
    pub compensating: bool,
    /// The attempt of the current step, compensation or final command, from 1.
    pub attempt: u32,
    /// The next moment the saga waits for (replies, or a retry); absent when nothing is due.
    pub deadline: Option<Deadline>,
    /// Why the saga compensates (the step that failed, or the abort).
    pub failure: Option<Failure>,
    /// Why the saga stopped as `failed` (a compensation that kept failing); cleared by a retry.
    pub error: Option<Failure>,
    /// Every step of the definition, in order.
    pub steps: Vec<StepView>,
    /// The correlation id of the request that started the saga; every message it sends carries it.
    pub correlation_id: Uuid,
    /// When the saga started.
    pub started_at: Option<DateTime<Utc>>,
    /// When its last event was recorded.
    pub updated_at: Option<DateTime<Utc>>,
    /// The saga stream's version this state is the fold of.
    pub version: i64,
    #[serde(skip)]
    completed: Vec<usize>,
    #[serde(skip)]
    queue: Vec<usize>,
    #[serde(skip)]
    pending: BTreeSet<usize>,
    #[serde(skip)]
    commands: HashMap<Uuid, usize>,
    #[serde(skip)]
    replies: Vec<ReplyEvent>,
    #[serde(skip)]
    any_succeeded: bool,
    #[serde(skip)]
    rejection: Option<(String, String)>,
    /// Message ids of the final command's attempts, while it is unanswered.
    #[serde(skip)]
    final_commands: BTreeSet<Uuid>,
    /// Whether it runs local steps (see [`SagaEvent::SagaStarted`]).
    #[serde(skip)]
    pub(crate) local: bool,
}

impl SagaState {
    /// Whether the saga has started (its stream has events).
    pub fn is_started(&self) -> bool {
        self.status.is_some()
    }

    /// The name of the step being run or compensated, if any.
    pub fn current_step_name(&self) -> Option<&str> {
        self.current
            .and_then(|i| self.steps.get(i))
            .map(|s| s.name.as_str())
    }

    fn begin_attempt(&mut self, attempt: u32, commands: &[SentCommand]) {
        if attempt <= 1 {
            self.pending = commands.iter().map(|c| c.index).collect();
            self.commands.clear();
            self.replies.clear();
            self.any_succeeded = false;
            self.rejection = None;
        }
        for c in commands {
            self.commands.insert(c.message_id, c.index);
        }
    }

    /// The message id the command of `index` was first sent with in this round of attempts.
    fn first_id_of(&self, index: usize) -> Option<Uuid> {
        self.commands
            .iter()
            .filter(|(_, i)| **i == index)
            .map(|(id, _)| *id)
            .min()
    }

    /// A command of the current step succeeded, recording `events`.
    fn reply_succeeded(&mut self, events: &[ReplyEvent]) {
        self.any_succeeded = true;
        self.replies.extend(events.iter().cloned());
    }

    /// A step (or its compensation) sent the commands of attempt `attempt` and waits for
    /// their replies until `deadline_at`.
    fn invoke(
        &mut self,
        step: usize,
        compensating: bool,
        attempt: u32,
        commands: &[SentCommand],
        deadline_at: DateTime<Utc>,
    ) {
        self.current = Some(step);
        self.compensating = compensating;
        self.attempt = attempt;
        self.begin_attempt(attempt, commands);
        self.deadline = Some(Deadline {
            at: deadline_at,
            kind: DeadlineKind::Reply,
        });
    }

    /// Evolves the state by one recorded event.
    pub fn apply(&mut self, event: &SagaEvent, at: DateTime<Utc>) {
        self.updated_at = Some(at);
        match event {
            SagaEvent::SagaStarted {
                saga_type,
                data,
                steps,
                correlation_id,
                local,
            } => {
                self.local = *local;
                self.saga_type = saga_type.clone();
                self.correlation_id = *correlation_id;
                self.status = Some(SagaStatus::Running);
                self.data = data.clone();
                self.started_at = Some(at);
                self.steps = steps
                    .iter()
                    .map(|name| StepView {
                        name: name.clone(),
                        status: StepStatus::Pending,
                        attempts: 0,
                        compensation_attempts: 0,
                        timeouts: 0,
                        started_at: None,
                        finished_at: None,
                        error: None,
                    })
                    .collect();
            }
            SagaEvent::StepInvoked {
                step,
                attempt,
                commands,
                deadline_at,
                ..
            } => {
                self.invoke(*step, false, *attempt, commands, *deadline_at);
                if let Some(v) = self.steps.get_mut(*step) {
                    v.status = StepStatus::Running;
                    v.attempts = *attempt;
                    v.started_at.get_or_insert(at);
                }
            }
            SagaEvent::ReplyReceived { index, outcome, .. } => {
                self.pending.remove(index);
                match outcome {
                    ReplyOutcome::Succeeded { events } => self.reply_succeeded(events),
                    ReplyOutcome::Rejected { code, message } => {
                        self.rejection
                            .get_or_insert((code.clone(), message.clone()));
                    }
                }
            }
            SagaEvent::StepSucceeded {
                step, data, reply, ..
            } => {
                // Unless the decision that folded it applied it as a reply already.
                if let Some(reply) = reply {
                    if self.pending.remove(&reply.index) {
                        self.reply_succeeded(&reply.events);
                    }
                }
                if let Some(data) = data {
                    self.data = data.clone();
                }
                self.completed.push(*step);
                self.current = None;
                self.deadline = None;
                if let Some(v) = self.steps.get_mut(*step) {
                    v.status = StepStatus::Succeeded;
                    v.finished_at = Some(at);
                }
            }
            SagaEvent::StepFailed {
                step,
                code,
                message,
                ..
            } => {
                self.current = None;
                self.deadline = None;
                if let Some(v) = self.steps.get_mut(*step) {
                    v.status = StepStatus::Failed;
                    v.finished_at = Some(at);
                    v.error = Some(format!("{code}: {message}"));
                }
            }
            SagaEvent::StepTimedOut { step, retry_at, .. }
            | SagaEvent::CompensationTimedOut { step, retry_at, .. } => {
                self.deadline = retry_at.map(|at| Deadline {
                    at,
                    kind: DeadlineKind::Retry,
                });
                if let Some(v) = self.steps.get_mut(*step) {
                    v.timeouts += 1;
                }
            }
            SagaEvent::CompensationStarted { failure, steps } => {
                self.status = Some(SagaStatus::Compensating);
                self.failure = Some(failure.clone());
                self.queue = steps.clone();
                self.current = None;
                self.deadline = None;
            }
            SagaEvent::CompensationInvoked {
                step,
                attempt,
                commands,
                deadline_at,
                ..
            } => {
                self.invoke(*step, true, *attempt, commands, *deadline_at);
                if let Some(v) = self.steps.get_mut(*step) {
                    v.status = StepStatus::Compensating;
                    v.compensation_attempts = *attempt;
                }
            }
            SagaEvent::CompensationDone { step, .. } => {
                self.queue.retain(|s| s != step);
                self.current = None;
                self.deadline = None;
                if let Some(v) = self.steps.get_mut(*step) {
                    v.status = StepStatus::Compensated;
                    v.finished_at = Some(at);
                }
            }
            SagaEvent::SagaCompleted => {
                self.status = Some(SagaStatus::Completed);
                self.current = None;
                self.deadline = None;
            }
            SagaEvent::FinalCommandInvoked {
                attempt,
                command,
                deadline_at,
            } => {
                self.current = None;
                self.attempt = *attempt;
                self.final_commands.insert(command.message_id);
                self.deadline = Some(Deadline {
                    at: *deadline_at,
                    kind: DeadlineKind::Reply,
                });
            }
            SagaEvent::SagaCompensated { failure, .. } => {
                self.status = Some(SagaStatus::Compensated);
                self.failure = Some(failure.clone());
                self.current = None;
                self.deadline = None;
                self.final_commands.clear();
            }
            SagaEvent::SagaFailed { failure } => {
                if let (true, Some(v)) = (
                    self.compensating,
                    self.current.and_then(|i| self.steps.get_mut(i)),
                ) {
                    v.status = StepStatus::CompensationFailed;
                    v.error = Some(format!("{}: {}", failure.code, failure.message));
                }
                self.status = Some(SagaStatus::Failed);
                self.error = Some(failure.clone());
                self.deadline = None;
            }
            SagaEvent::RetryRequested => {
                self.error = None;
                self.status = Some(if self.compensating {
                    SagaStatus::Compensating
                } else {
                    SagaStatus::Running
                });
            }
            SagaEvent::Decided { events } => {
                for e in events {
                    self.apply(e, at);
                }
            }
        }
    }
}

/// What happens to a saga.
#[derive(Debug, Clone, PartialEq)]
pub enum SagaInput {
    /// The start event arrived, with the data the definition derived from it.
    Start {
        /// The saga data.
        data: Value,
        /// The correlation id of the request that caused the start event.
        correlation_id: Uuid,
    },
    /// A participant answered a command.
    Reply {
        /// The message id of the command answered.
        command_id: Uuid,
        /// Whether it was applied or rejected.
        outcome: ReplyOutcome,
    },
    /// The saga's deadline passed.
    Deadline,
    /// Compensate and end (a cancelled trip, an operator's abort). Applies to a running
    /// saga only. The saga's failure code is [`ABORTED`], or [`ABORTED_BY_OPERATOR`] when
    /// `by_operator`, so a definition's final command can tell them apart.
    Abort {
        /// Why, as the failure's message.
        reason: String,
        /// Whether an operator asked for it (code [`ABORTED_BY_OPERATOR`] rather than [`ABORTED`]).
        by_operator: bool,
    },
    /// Re-drive a failed saga: the compensation (or step) that failed is sent again.
    Retry,
    /// An operator re-drives whatever is stuck: a failed saga as [`SagaInput::Retry`] does;
    /// a running or compensating saga whose step (or compensation) timed out and waits for its
    /// next attempt gets that attempt now instead of after its backoff. Anything else (a step
    /// still waiting for replies, a finished saga) yields no events.
    RetryStep,
}

/// The failure code of a saga aborted by a domain event (a cancelled trip).
pub const ABORTED: &str = "aborted";
/// The failure code of a saga aborted by an operator.
pub const ABORTED_BY_OPERATOR: &str = "aborted_by_operator";

/// Decides the events that follow `input` for a saga in `state`. Pure but for the clock and
/// the jitter source; an input that does not apply (a duplicate reply, a stale deadline, a
/// second start) yields no events.
pub fn decide(
    saga: &Saga,
    state: &SagaState,
    input: &SagaInput,
    now: DateTime<Utc>,
    jitter: &mut dyn FnMut() -> f64,
) -> Result<Vec<SagaEvent>, String> {
    evolve(saga, state.clone(), input, now, jitter).map(|(_, events)| events)
}

/// [`decide`], taking the state and returning it with the events applied (at `now`), which
/// saves the caller a copy of the state and a second fold of the events.
pub fn evolve(
    saga: &Saga,
    state: SagaState,
    input: &SagaInput,
    now: DateTime<Utc>,
    jitter: &mut dyn FnMut() -> f64,
) -> Result<(SagaState, Vec<SagaEvent>), String> {
    let mut d = Decider {
        saga,
        state,
        out: Vec::new(),
        now,
        jitter,
    };
    d.decide(input)?;
    Ok((d.state, d.out))
}

struct Decider<'a> {
    saga: &'a Saga,
    state: SagaState,
    out: Vec<SagaEvent>,
    now: DateTime<Utc>,
    jitter: &'a mut dyn FnMut() -> f64,
}

impl Decider<'_> {
    fn emit(&mut self, e: SagaEvent) {
        self.state.apply(&e, self.now);
        self.out.push(e);
    }

    /// When attempt `attempt + 1` is due under `retry`, or `None` if `attempt` was the last.
    fn retry_at(&mut self, retry: Backoff, attempt: u32) -> Option<DateTime<Utc>> {
        retry
            .allows_after(attempt)
            .then(|| self.now + chrono_duration(retry.delay(attempt, (self.jitter)())))
    }

    fn name(&self, step: usize) -> String {
        self.saga.steps[step].name.to_owned()
    }

    fn decide(&mut self, input: &SagaInput) -> Result<(), String> {
        let status = self.state.status;
        match input {
            SagaInput::Start {
                data,
                correlation_id,
            } => {
                if status.is_some() {
                    return Ok(());
                }
                self.emit(SagaEvent::SagaStarted {
                    saga_type: self.saga.name.to_owned(),
                    data: data.clone(),
                    steps: self.saga.steps.iter().map(|s| s.name.to_owned()).collect(),
                    correlation_id: *correlation_id,
                    local: false,
                });
                if self.saga.steps.is_empty() {
                    self.emit(SagaEvent::SagaCompleted);
                    return Ok(());
                }
                self.invoke_step(0, 1)
            }
            SagaInput::Reply {
                command_id,
                outcome,
            } => {
                let Some(status) = status else { return Ok(()) };
                if status.is_terminal() {
                    return Ok(());
                }
                if self.state.final_commands.contains(command_id) {
                    let failure = self
                        .state
                        .failure
                        .clone()
                        .expect("compensation has a cause");
                    let final_outcome = Some(match outcome {
                        ReplyOutcome::Succeeded { .. } => "succeeded".to_owned(),
                        ReplyOutcome::Rejected { code, .. } => code.clone(),
                    });
                    self.emit(SagaEvent::SagaCompensated {
                        failure,
                        final_outcome,
                    });
                    return Ok(());
                }
                let (Some(step), Some(&index)) =
                    (self.state.current, self.state.commands.get(command_id))
                else {
                    return Ok(()); // a reply to an earlier step, or a repeat
                };
                if !self.state.pending.contains(&index) {
                    return Ok(());
                }
                self.emit(SagaEvent::ReplyReceived {
                    step,
                    name: self.name(step),
                    command_id: *command_id,
                    index,
                    outcome: outcome.clone(),
                });
                if !self.state.pending.is_empty() {
                    return Ok(());
                }
                let rejection = self.state.rejection.clone();
                match (self.state.compensating, rejection) {
                    (false, None) => self.complete_step(step),
                    (false, Some((code, message))) => self.fail_step(step, code, message, false),
                    (true, None) => {
                        self.emit(SagaEvent::CompensationDone {
                            step,
                            name: self.name(step),
                        });
                        self.next_compensation()
                    }
                    (true, Some((code, message))) => {
                        // A compensation must not be refused; only an operator can sort it out.
                        self.emit(SagaEvent::SagaFailed {
                            failure: Failure {
                                step: self.name(step),
                                code,
                                message,
                            },
                        });
                        Ok(())
                    }
                }
            }
            SagaInput::Deadline => {
                if status.is_none_or(SagaStatus::is_terminal) {
                    return Ok(());
                }
                let Some(deadline) = self.state.deadline else {
                    return Ok(());
                };
                if deadline.at > self.now {
                    return Ok(());
                }
                if !self.state.final_commands.is_empty() {
                    return self.send_final_command(self.state.attempt + 1);
                }
                let Some(step) = self.state.current else {
                    return Ok(());
                };
                let attempt = self.state.attempt;
                let def = &self.saga.steps[step];
                match (deadline.kind, self.state.compensating) {
                    (DeadlineKind::Retry, false) => self.invoke_step(step, attempt + 1),
                    (DeadlineKind::Retry, true) => self.invoke_compensation(step, attempt + 1),
                    (DeadlineKind::Reply, false) => {
                        let retry_at = self.retry_at(def.retry, attempt);
                        self.emit(SagaEvent::StepTimedOut {
                            step,
                            name: self.name(step),
                            attempt,
                            retry_at,
                        });
                        if retry_at.is_none() {
                            let message = format!("no reply after {attempt} attempt(s)");
                            // Unanswered is not undone: the commands may have been applied.
                            self.fail_step(step, "timeout".into(), message, true)?;
                        }
                        Ok(())
                    }
                    (DeadlineKind::Reply, true) => {
                        let retry_at = self.retry_at(def.compensation_retry, attempt);
                        self.emit(SagaEvent::CompensationTimedOut {
                            step,
                            name: self.name(step),
                            attempt,
                            retry_at,
                        });
                        if retry_at.is_none() {
                            self.emit(SagaEvent::SagaFailed {
                                failure: Failure {
                                    step: self.name(step),
                                    code: "compensation_timeout".into(),
                                    message: format!(
                                        "compensation unanswered after {attempt} attempt(s)"
                                    ),
                                },
                            });
                        }
                        Ok(())
                    }
                }
            }
            SagaInput::Abort {
                reason,
                by_operator,
            } => {
                if status != Some(SagaStatus::Running) {
                    return Ok(());
                }
                let current = self.state.current;
                let code = if *by_operator {
                    ABORTED_BY_OPERATOR
                } else {
                    ABORTED
                };
                let failure = Failure {
                    step: current.map(|s| self.name(s)).unwrap_or_default(),
                    code: code.into(),
                    message: reason.clone(),
                };
                // Commands of the current step may still succeed: compensate it too
                // (compensations are idempotent).
                self.begin_compensation(failure, current)
            }
            SagaInput::Retry => {
                if status != Some(SagaStatus::Failed) {
                    return Ok(());
                }
                if !self.state.final_commands.is_empty() {
                    self.emit(SagaEvent::RetryRequested);
                    return self.send_final_command(1);
                }
                let Some(step) = self.state.current else {
                    return Ok(());
                };
                self.emit(SagaEvent::RetryRequested);
                if self.state.compensating {
                    self.invoke_compensation(step, 1)
                } else {
                    self.invoke_step(step, 1)
                }
            }
            SagaInput::RetryStep => match status {
                Some(SagaStatus::Failed) => self.decide(&SagaInput::Retry),
                Some(SagaStatus::Running | SagaStatus::Compensating) => {
                    let (Some(step), Some(deadline)) = (self.state.current, self.state.deadline)
                    else {
                        return Ok(());
                    };
                    if deadline.kind != DeadlineKind::Retry {
                        return Ok(()); // still waiting for replies: nothing timed out
                    }
                    // The attempt the deadline would have sent, sent now. It counts against
                    // the retry policy like any other attempt.
                    let attempt = self.state.attempt + 1;
                    self.emit(SagaEvent::RetryRequested);
                    if self.state.compensating {
                        self.invoke_compensation(step, attempt)
                    } else {
                        self.invoke_step(step, attempt)
                    }
                }
                _ => Ok(()),
            },
        }
    }

    /// The invocations of attempt `attempt`: all of them first, then only the unanswered.
    ///
    /// A later attempt sends a command with the message id of its first attempt. The id is
    /// what a participant deduplicates by (and an outside-world participant's idempotency
    /// key), so however many attempts are sent, the command is applied at most once, and a
    /// reply to any attempt is the reply. A fresh id would let an early attempt be rejected
    /// (stock short) while a later one is applied (stock restocked in between), the saga
    /// compensating on the rejection and never undoing what the later attempt did.
    fn fresh_commands(&self, invocations: Vec<Invocation>, attempt: u32) -> Vec<SentCommand> {
        invocations
            .into_iter()
            .enumerate()
            .filter(|(i, _)| attempt <= 1 || self.state.pending.contains(i))
            .map(|(index, invocation)| SentCommand {
                message_id: (attempt > 1)
                    .then(|| self.state.first_id_of(index))
                    .flatten()
                    .unwrap_or_else(Uuid::now_v7),
                index,
                invocation,
            })
            .collect()
    }

    fn invoke_step(&mut self, step: usize, attempt: u32) -> Result<(), String> {
        let def = &self.saga.steps[step];
        let invocations = match (def.invoke)(&self.state.data) {
            Ok(i) => i,
            Err(e) => return self.definition_error(step, e),
        };
        let commands = self.fresh_commands(invocations, attempt);
        let deadline_at = self.now + chrono_duration(def.timeout);
        let empty = commands.is_empty();
        self.emit(SagaEvent::StepInvoked {
            step,
            name: self.name(step),
            attempt,
            commands,
            deadline_at,
        });
        if empty && attempt <= 1 {
            return self.complete_step(step);
        }
        Ok(())
    }

    fn complete_step(&mut self, step: usize) -> Result<(), String> {
        let data = match &self.saga.steps[step].on_success {
            Some(f) => match f(&self.state.data, &self.state.replies) {
                Ok(d) => (d != self.state.data).then_some(d),
                Err(e) => return self.fail_step(step, "invalid_reply".into(), e, false),
            },
            None => None,
        };
        // The reply that completed the step, decided just before, is recorded in this event.
        let reply = match self.out.last() {
            Some(SagaEvent::ReplyReceived {
                step: replied,
                command_id,
                index,
                outcome: ReplyOutcome::Succeeded { events },
                ..
            }) if *replied == step => Some(CompletingReply {
                command_id: *command_id,
                index: *index,
                events: events.clone(),
            }),
            _ => None,
        };
        if reply.is_some() {
            self.out.pop();
        }
        self.emit(SagaEvent::StepSucceeded {
            step,
            name: self.name(step),
            data,
            reply,
        });
        if step + 1 < self.saga.steps.len() {
            self.invoke_step(step + 1, 1)
        } else {
            self.emit(SagaEvent::SagaCompleted);
            Ok(())
        }
    }

    /// Fails `step` and compensates. The step itself is compensated too if it may have had
    /// effects: some of its commands succeeded (a fan-out), or some went unanswered.
    fn fail_step(
        &mut self,
        step: usize,
        code: String,
        message: String,
        unanswered: bool,
    ) -> Result<(), String> {
        let partly_done = (self.state.any_succeeded || unanswered).then_some(step);
        self.emit(SagaEvent::StepFailed {
            step,
            name: self.name(step),
            code: code.clone(),
            message: message.clone(),
        });
        let failure = Failure {
            step: self.name(step),
            code,
            message,
        };
        self.begin_compensation(failure, partly_done)
    }

    fn begin_compensation(&mut self, failure: Failure, also: Option<usize>) -> Result<(), String> {
        let steps: Vec<usize> = also
            .into_iter()
            .chain(self.state.completed.iter().rev().copied())
            .filter(|s| self.saga.steps[*s].has_compensation())
            .collect();
        self.emit(SagaEvent::CompensationStarted { failure, steps });
        self.next_compensation()
    }

    fn next_compensation(&mut self) -> Result<(), String> {
        match self.state.queue.first().copied() {
            Some(step) => self.invoke_compensation(step, 1),
            None => self.send_final_command(1),
        }
    }

    /// Sends the final command (attempt `attempt`), or ends the saga if there is none.
    fn send_final_command(&mut self, attempt: u32) -> Result<(), String> {
        const FINAL_ATTEMPTS: u32 = 10;
        let failure = self
            .state
            .failure
            .clone()
            .expect("compensation has a cause");
        let invocation = match self.saga.final_command(&self.state.data, &failure) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(saga = self.saga.name, error = %e, "final command cannot be built");
                None
            }
        };
        match invocation {
            None => {
                self.emit(SagaEvent::SagaCompensated {
                    failure,
                    final_outcome: None,
                });
            }
            Some(_) if attempt > FINAL_ATTEMPTS => {
                self.emit(SagaEvent::SagaFailed {
                    failure: Failure {
                        step: "on_compensated".into(),
                        code: "final_command_timeout".into(),
                        message: format!(
                            "final command unanswered after {FINAL_ATTEMPTS} attempts"
                        ),
                    },
                });
            }
            Some(invocation) => {
                let wait = std::time::Duration::from_secs(10).saturating_mul(attempt.min(6));
                self.emit(SagaEvent::FinalCommandInvoked {
                    attempt,
                    command: SentCommand {
                        // Every attempt with one id, applied at most once (see `fresh_commands`).
                        message_id: (attempt > 1)
                            .then(|| self.state.final_commands.last().copied())
                            .flatten()
                            .unwrap_or_else(Uuid::now_v7),
                        index: 0,
                        invocation,
                    },
                    deadline_at: self.now + chrono_duration(wait),
                });
            }
        }
        Ok(())
    }

    fn invoke_compensation(&mut self, step: usize, attempt: u32) -> Result<(), String> {
        let def = &self.saga.steps[step];
        let compensate = def
            .compensate
            .as_ref()
            .expect("queued steps have a compensation");
        let invocations = match compensate(&self.state.data) {
            Ok(i) => i,
            Err(e) => {
                self.emit(SagaEvent::SagaFailed {
                    failure: Failure {
                        step: self.name(step),
                        code: "saga_definition_error".into(),
                        message: e,
                    },
                });
                return Ok(());
            }
        };
        let commands = self.fresh_commands(invocations, attempt);
        let deadline_at = self.now + chrono_duration(def.compensation_timeout);
        let empty = commands.is_empty();
        self.emit(SagaEvent::CompensationInvoked {
            step,
            name: self.name(step),
            attempt,
            commands,
            deadline_at,
        });
        if empty && attempt <= 1 {
            self.emit(SagaEvent::CompensationDone {
                step,
                name: self.name(step),
            });
            return self.next_compensation();
        }
        Ok(())
    }

    fn definition_error(&mut self, step: usize, message: String) -> Result<(), String> {
        self.fail_step(step, "saga_definition_error".into(), message, false)
    }
}

fn chrono_duration(d: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// The stream-id prefix of saga streams (`saga-<id>`).
pub const SAGA_STREAM_TYPE: &str = "saga";

/// Folds a saga's own stream (`saga-<id>`).
#[derive(Default)]
pub struct SagaFold(SagaState);

impl StreamFold for SagaFold {
    fn apply(&mut self, event: &RecordedEvent) -> Result<(), StoreError> {
        self.0.apply(
            &crate::store::decode_envelope::<SagaEvent>(&event.envelope)?,
            event.recorded_at,
        );
        self.0.version = event.envelope.stream_version;
        Ok(())
    }

    fn state(&self) -> Value {
        serde_json::to_value(&self.0).expect("saga states serialize")
    }

    fn current_schema_version(&self, event_type: &str) -> i32 {
        SagaEvent::schema_version(event_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::decode_event;

    fn failed() -> SagaEvent {
        SagaEvent::StepFailed {
            step: 1,
            name: "pay".into(),
            code: "insufficient_funds".into(),
            message: "no".into(),
        }
    }

    /// One input's events are one stored event when there are several, decode back to the
    /// same events, and fold to the state they fold to one by one.
    #[test]
    fn the_events_of_one_decision_are_stored_as_one() {
        let alone = DecidedPack::of(None, &[(SagaEvent::SagaCompleted, None)]).unwrap();
        assert_eq!(alone.0, "saga_completed");

        let events = vec![
            SagaEvent::RetryRequested,
            failed(),
            SagaEvent::SagaCompleted,
        ];
        let with_causes: Vec<(SagaEvent, Option<Uuid>)> =
            events.iter().map(|e| (e.clone(), None)).collect();
        let (event_type, payload) = &DecidedPack::of(None, &with_causes).unwrap();
        assert_eq!(event_type, DECIDED_EVENT_TYPE);
        assert_eq!(payload["events"][1]["event_type"], "step_failed");
        let decoded: SagaEvent = decode_event(event_type, payload).unwrap();
        assert_eq!(
            decoded,
            SagaEvent::Decided {
                events: events.clone()
            }
        );

        let at = Utc::now();
        let (mut packed, mut one_by_one) = (SagaState::default(), SagaState::default());
        packed.apply(&decoded, at);
        for e in &events {
            one_by_one.apply(e, at);
        }
        assert_eq!(
            serde_json::to_value(&packed).unwrap(),
            serde_json::to_value(&one_by_one).unwrap()
        );
        assert_eq!(decoded.flatten(), events);
        assert_eq!(failed().flatten(), vec![failed()]);
    }

    /// Events of one transaction with different causes are one stored event; an event
    /// caused by another message than the stored event names it, and still decodes.
    #[test]
    fn a_pack_names_the_causes_that_differ() {
        let (start, reply) = (Uuid::now_v7(), Uuid::now_v7());
        let (event_type, payload) = DecidedPack::of(
            Some(start),
            &[
                (SagaEvent::RetryRequested, Some(start)),
                (SagaEvent::SagaCompleted, Some(reply)),
            ],
        )
        .unwrap();
        assert_eq!(event_type, DECIDED_EVENT_TYPE);
        assert!(payload["events"][0].get("causation_id").is_none());
        assert_eq!(payload["events"][1]["causation_id"], reply.to_string());
        let decoded: SagaEvent = decode_event(&event_type, &payload).unwrap();
        assert_eq!(
            decoded.flatten(),
            vec![SagaEvent::RetryRequested, SagaEvent::SagaCompleted]
        );

        // One event of the stored event's own cause is stored as itself.
        let alone = DecidedPack::of(Some(start), &[(SagaEvent::SagaCompleted, Some(start))]);
        assert_eq!(alone.unwrap().0, "saga_completed");
        assert!(DecidedPack::new(None).encode().is_none());
    }
}
