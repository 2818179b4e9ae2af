//! Outside-world participants: saga steps served by code that calls an external system (a
//! payment provider, an airline), run by the engine like any participant.
//!
//! An [`ExternalParticipant`] receives the saga commands sent to its record aggregate's
//! context (`<context>.commands`) and calls the outside system; what the system did is
//! recorded as events of that aggregate (stream `<type>-<id>`), so time travel, timelines and
//! read models see it like any other events. For each command:
//!
//! 1. **The call is made before any transaction**, with the command's message id as its
//!    [`Call::idempotency_key`]. Every attempt of a saga step sends the same message id, and a
//!    call repeated after a crash carries it too, so the outside system sees one key per
//!    command however often it is called (at-least-once toward it).
//! 2. **The outcome commits with the consumer offset**: the recorded events, their outbox
//!    rows and the reply to the saga, in one transaction. A crash between the call and that
//!    commit repeats the call with the same key; inside the engine the effect is exactly-once.
//! 3. **A technical failure** (unreachable, timed out, an error that is not an answer) is
//!    retried with the engine's one [`Backoff`], and counts toward the participant's
//!    [`Breaker`]. While the breaker is open no call is made and the command waits in its
//!    partition: it is neither lost nor turned into a business rejection, and the saga's
//!    deadline keeps running. Once the attempt's deadline has passed, a failing command is
//!    left without an answer (its offset moves on, nothing is recorded): the saga times the
//!    step out and sends it again with the same id, or compensates, and the compensation
//!    arrives behind it in the same partition.
//! 4. **A business rejection** ([`CallError::Rejected`]) is the reply: the step fails and
//!    the saga compensates.
//!
//! Commands of one target keep their order (they share a partition and are called one after
//! the other); commands of different targets in a batch are called concurrently, up to
//! [`ExternalSettings::concurrency`].

pub(crate) mod breaker;
pub(crate) mod metrics;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

pub use crate::backoff::Backoff;
pub use breaker::{Breaker, BreakerSettings, BreakerState};

use crate::aggregate::Aggregate;
use crate::command::{CommandBatch, Loaded, Repository};
use crate::consumer::{Consumer, ConsumerConfig, Handler, HandlerError, Hop, Wait};
use crate::doorbell::Doorbell;
use crate::envelope::Metadata;
use crate::saga::messages::{commands_topic, ReplyEvent, ReplyOutcome, COMMAND_EVENT_TYPE};
use crate::saga::participant::{decode_command, group_of, rejected, reply_message};
use crate::transport::{Delivery, Transport};
use metrics::metrics;

/// Code that serves a saga step by calling an outside system. What the system did is recorded
/// as events of [`ExternalParticipant::Record`], an aggregate of the participant's own whose
/// `apply` folds them (its `handle` is not used for saga commands).
///
/// ```
/// use async_trait::async_trait;
/// use sagaflow_engine::external::{Call, CallError, ExternalParticipant};
/// # use sagaflow_engine::doc_fixtures::{Payment, PaymentCommand, PaymentEvent};
///
/// struct Provider;
///
/// #[async_trait]
/// impl ExternalParticipant for Provider {
///     type Record = Payment;
///
///     async fn call(&self, call: Call<'_, Payment>) -> Result<Vec<PaymentEvent>, CallError> {
///         match call.command {
///             PaymentCommand::Charge { amount_cents } if *amount_cents > 100_000 => {
///                 Err(CallError::rejected("card_declined", "over the card's limit"))
///             }
///             PaymentCommand::Charge { amount_cents } => Ok(vec![PaymentEvent::Charged {
///                 charge_id: call.idempotency_key.to_string(),
///                 amount_cents: *amount_cents,
///             }]),
///         }
///     }
/// }
/// ```
#[async_trait]
pub trait ExternalParticipant: Send + Sync + 'static {
    /// The aggregate the outcomes are recorded in: its type names the participant
    /// (`participant:<type>`), its context the topic it reads, its commands are what sagas
    /// send, its events what the calls record.
    type Record: Aggregate;

    /// Calls the outside system for `call.command`. `Ok` with the events to record (none when
    /// there was nothing to do), [`CallError::Rejected`] for a business answer, and
    /// [`CallError::Failed`] for anything to retry. Runs outside any transaction, bounded by
    /// [`ExternalSettings::call_timeout`].
    async fn call(
        &self,
        call: Call<'_, Self::Record>,
    ) -> Result<Vec<<Self::Record as Aggregate>::Event>, CallError>;

    /// Timeouts, retries, the breaker and batching; the defaults of [`ExternalSettings`].
    fn settings(&self) -> ExternalSettings {
        ExternalSettings::default()
    }
}

/// One call to make.
#[derive(Debug)]
pub struct Call<'a, A: Aggregate> {
    /// The command's message id, the same on every attempt and every repeat: pass it to the
    /// outside system as its idempotency key.
    pub idempotency_key: Uuid,
    /// The target aggregate's id (its stream is `<A::TYPE>-<id>`).
    pub aggregate_id: &'a str,
    /// The target's state: the fold of what earlier calls recorded.
    pub state: &'a A,
    /// The command.
    pub command: &'a A::Command,
    /// Calls made for this command in this process so far, this one included (from 1).
    pub attempt: u32,
    /// When the saga stops waiting for this attempt's reply, if it said.
    pub deadline_at: Option<DateTime<Utc>>,
}

/// Why a call did not succeed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// The outside system answered no (card declined): a business outcome, replied to the
    /// saga as a rejection, never retried.
    #[error("rejected ({code}): {message}")]
    Rejected {
        /// A stable code for the saga and its final command.
        code: String,
        /// For people.
        message: String,
    },
    /// The call failed (unreachable, timed out, a server error): retried with backoff, and
    /// counted by the circuit breaker.
    #[error("failed: {0}")]
    Failed(String),
}

impl CallError {
    /// A business rejection with `code`.
    pub fn rejected(code: impl Into<String>, message: impl Into<String>) -> Self {
        CallError::Rejected {
            code: code.into(),
            message: message.into(),
        }
    }

    /// A technical failure, to retry.
    pub fn failed(error: impl std::fmt::Display) -> Self {
        CallError::Failed(error.to_string())
    }
}

/// How an outside-world participant calls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExternalSettings {
    /// The longest a call may take; a call still running then is a failure. 10 s.
    pub call_timeout: Duration,
    /// The pauses between calls of a failing command: from 200 ms, doubling up to 10 s, until
    /// the attempt's deadline.
    pub retry: Backoff,
    /// When the breaker opens and for how long.
    pub breaker: BreakerSettings,
    /// Commands read at once (per partition). 32.
    pub batch_size: usize,
    /// Calls made at once for commands of different targets. 8.
    pub concurrency: usize,
}

impl Default for ExternalSettings {
    fn default() -> Self {
        ExternalSettings {
            call_timeout: Duration::from_secs(10),
            retry: Backoff::unlimited(Duration::from_millis(200), Duration::from_secs(10)),
            breaker: BreakerSettings::default(),
            batch_size: 32,
            concurrency: 8,
        }
    }
}

/// What a call came to, kept until the transaction that records it commits.
enum Prepared<E> {
    Record(Vec<E>),
    Reject {
        code: String,
        message: String,
    },
    /// Failing past its deadline: no answer.
    Skip,
}

/// The consumer handler running an [`ExternalParticipant`].
pub(crate) struct ExternalHandler<S: ExternalParticipant> {
    participant: Arc<S>,
    repo: Arc<Repository<S::Record>>,
    breaker: Arc<Breaker>,
    settings: ExternalSettings,
    group: String,
    prepared: Mutex<HashMap<Uuid, Prepared<<S::Record as Aggregate>::Event>>>,
    /// Per command: failed calls so far, and when the next may go.
    failures: Mutex<HashMap<Uuid, (u32, Instant)>>,
    /// The commands of the transaction in flight, forgotten once it commits.
    committing: Mutex<Vec<Uuid>>,
    batch: tokio::sync::Mutex<Option<CommandBatch<S::Record>>>,
}

type Command<S> = <<S as ExternalParticipant>::Record as Aggregate>::Command;

/// A command to call for, read from its delivery.
struct Todo<C> {
    id: Uuid,
    aggregate_id: String,
    command: C,
    deadline_at: Option<DateTime<Utc>>,
}

impl<S: ExternalParticipant> ExternalHandler<S> {
    pub(crate) fn new(
        participant: Arc<S>,
        repo: Arc<Repository<S::Record>>,
        breaker: Arc<Breaker>,
    ) -> Self {
        let settings = participant.settings();
        ExternalHandler {
            participant,
            repo,
            breaker,
            settings,
            group: group_of(<S::Record as Aggregate>::TYPE),
            prepared: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            committing: Mutex::new(Vec::new()),
            batch: tokio::sync::Mutex::new(None),
        }
    }

    /// The participant's consumer, on `<context>.commands`.
    pub(crate) fn consumer(
        self,
        pool: PgPool,
        transport: Arc<dyn Transport>,
        outbox_bell: Doorbell,
    ) -> Consumer {
        let topic = commands_topic(<S::Record as Aggregate>::CONTEXT);
        let mut config = ConsumerConfig::new(self.group.clone(), &[topic.as_str()]);
        config.batch_size = self.settings.batch_size.max(1);
        Consumer::new(pool, transport, Arc::new(self), config).with_outbox_bell(outbox_bell)
    }

    /// Calls for the commands of one target, in order, from `loaded`; stops at the first that
    /// must wait (and says until when).
    async fn call_target(
        &self,
        mut loaded: Loaded<S::Record>,
        todo: Vec<Todo<Command<S>>>,
    ) -> Result<(), HandlerError> {
        let name = <S::Record as Aggregate>::TYPE;
        let m = metrics();
        for t in todo {
            if let Some(Prepared::Record(events)) =
                self.prepared.lock().expect("not poisoned").get(&t.id)
            {
                for e in events {
                    loaded.state.apply(e);
                }
                continue;
            }
            if self
                .prepared
                .lock()
                .expect("not poisoned")
                .contains_key(&t.id)
            {
                continue;
            }
            let (failed_before, retry_at) = self
                .failures
                .lock()
                .expect("not poisoned")
                .get(&t.id)
                .copied()
                .unwrap_or((0, Instant::now()));
            if Instant::now() < retry_at {
                return Err(Box::new(Wait {
                    until: retry_at,
                    reason: format!("{name}: the call of {} is retried later", t.id),
                }));
            }
            if let Err(until) = self.breaker.permit() {
                m.calls.with_label_values(&[name, "short_circuited"]).inc();
                return Err(Box::new(Wait {
                    until,
                    reason: format!("{name}: circuit breaker open"),
                }));
            }
            let call = Call {
                idempotency_key: t.id,
                aggregate_id: &t.aggregate_id,
                state: &loaded.state,
                command: &t.command,
                attempt: failed_before + 1,
                deadline_at: t.deadline_at,
            };
            let started = Instant::now();
            let outcome =
                match tokio::time::timeout(self.settings.call_timeout, self.participant.call(call))
                    .await
                {
                    Ok(outcome) => outcome,
                    Err(_) => Err(CallError::Failed(format!(
                        "no answer within {:?}",
                        self.settings.call_timeout
                    ))),
                };
            m.call_seconds
                .with_label_values(&[name])
                .observe(started.elapsed().as_secs_f64());
            let prepared = match outcome {
                Ok(events) => {
                    self.breaker.record(false);
                    m.calls.with_label_values(&[name, "succeeded"]).inc();
                    for e in &events {
                        loaded.state.apply(e);
                    }
                    Prepared::Record(events)
                }
                Err(CallError::Rejected { code, message }) => {
                    self.breaker.record(false);
                    m.calls.with_label_values(&[name, "rejected"]).inc();
                    Prepared::Reject { code, message }
                }
                Err(CallError::Failed(error)) => {
                    self.breaker.record(true);
                    m.calls.with_label_values(&[name, "failed"]).inc();
                    let failed = failed_before + 1;
                    if t.deadline_at.is_some_and(|d| Utc::now() >= d) {
                        tracing::warn!(participant = name, message_id = %t.id, attempts = failed, %error,
                            "call failing past the attempt's deadline; left unanswered for the saga to decide");
                        Prepared::Skip
                    } else {
                        let until = Instant::now() + self.settings.retry.random_delay(failed);
                        self.failures
                            .lock()
                            .expect("not poisoned")
                            .insert(t.id, (failed, until));
                        tracing::warn!(participant = name, message_id = %t.id, attempt = failed, %error, "call failed; retried");
                        return Err(Box::new(Wait {
                            until,
                            reason: format!("{name}: {error}"),
                        }));
                    }
                }
            };
            self.failures.lock().expect("not poisoned").remove(&t.id);
            self.prepared
                .lock()
                .expect("not poisoned")
                .insert(t.id, prepared);
        }
        Ok(())
    }
}

#[async_trait]
impl<S: ExternalParticipant> Handler for ExternalHandler<S> {
    async fn prepare(&self, messages: &[&Delivery]) -> Result<(), HandlerError> {
        let decoded: Vec<Todo<Command<S>>> = messages
            .iter()
            .filter_map(|m| match decode_command::<S::Record>(&m.envelope)? {
                Ok((aggregate_id, command, deadline_at)) => Some(Todo {
                    id: m.message_id(),
                    aggregate_id,
                    command,
                    deadline_at,
                }),
                Err(_) => None,
            })
            .collect();
        if decoded.is_empty() {
            return Ok(());
        }
        // What the group applied already is skipped by the consumer: no call for it.
        let ids: Vec<Uuid> = decoded.iter().map(|t| t.id).collect();
        let done: HashSet<Uuid> = sqlx::query_scalar(
            "SELECT message_id FROM processed_messages WHERE consumer_group = $1 AND message_id = ANY($2)",
        )
        .bind(&self.group)
        .bind(&ids)
        .fetch_all(self.repo.bus().pool())
        .await?
        .into_iter()
        .collect();
        let mut targets: BTreeMap<String, Vec<Todo<Command<S>>>> = BTreeMap::new();
        for t in decoded {
            if !done.contains(&t.id) {
                targets.entry(t.aggregate_id.clone()).or_default().push(t);
            }
        }
        let mut calls = futures::stream::iter(targets.into_iter().map(|(id, todo)| async move {
            let loaded = self.repo.load(&id).await?;
            self.call_target(loaded, todo).await
        }))
        .buffer_unordered(self.settings.concurrency.max(1));
        // Every target is called for; the earliest wait (or the first error) is the answer.
        let mut first_error: Option<HandlerError> = None;
        let mut wait: Option<Instant> = None;
        while let Some(outcome) = calls.next().await {
            if let Err(e) = outcome {
                match e.downcast_ref::<Wait>() {
                    Some(w) => wait = Some(wait.map_or(w.until, |u| u.min(w.until))),
                    None => first_error = first_error.or(Some(e)),
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        if let Some(until) = wait {
            return Err(Box::new(Wait {
                until,
                reason: format!("{}: calls wait", <S::Record as Aggregate>::TYPE),
            }));
        }
        Ok(())
    }

    async fn handle(&self, tx: &mut PgConnection, message: &Delivery) -> Result<(), HandlerError> {
        self.handle_batch(tx, std::slice::from_ref(message)).await
    }

    async fn handle_batch(
        &self,
        tx: &mut PgConnection,
        messages: &[Delivery],
    ) -> Result<(), HandlerError> {
        let mut batch = self.repo.batch();
        let mut replies = Vec::with_capacity(messages.len());
        let mut committing = Vec::with_capacity(messages.len());
        for m in messages {
            let Some(decoded) = decode_command::<S::Record>(&m.envelope) else {
                continue;
            };
            let outcome = match decoded {
                Err(rejection) => Some(rejection),
                Ok((aggregate_id, _, _)) => {
                    let prepared = self
                        .prepared
                        .lock()
                        .expect("not poisoned")
                        .remove(&m.message_id());
                    committing.push(m.message_id());
                    match prepared {
                        None => {
                            return Err(
                                format!("no call was made for command {}", m.message_id()).into()
                            )
                        }
                        Some(Prepared::Record(events)) => {
                            let metadata = Metadata::caused_by(&m.envelope);
                            let decided = batch.record(tx, &aggregate_id, &events, &metadata).await;
                            // Kept for a retry of the transaction, which makes no call again.
                            self.prepared
                                .lock()
                                .expect("not poisoned")
                                .insert(m.message_id(), Prepared::Record(events));
                            let decided = decided?;
                            Some(ReplyOutcome::Succeeded {
                                events: decided
                                    .events
                                    .into_iter()
                                    .map(|e| ReplyEvent {
                                        event_type: e.event_type,
                                        payload: e.payload,
                                    })
                                    .collect(),
                            })
                        }
                        Some(Prepared::Reject { code, message }) => {
                            let reply = rejected(&code, message.clone());
                            self.prepared
                                .lock()
                                .expect("not poisoned")
                                .insert(m.message_id(), Prepared::Reject { code, message });
                            Some(reply)
                        }
                        Some(Prepared::Skip) => {
                            // Not applied: a later attempt with this id must run.
                            sqlx::query(
                                "DELETE FROM processed_messages WHERE consumer_group = $1 AND message_id = $2",
                            )
                            .bind(&self.group)
                            .bind(m.message_id())
                            .execute(&mut *tx)
                            .await?;
                            self.prepared
                                .lock()
                                .expect("not poisoned")
                                .insert(m.message_id(), Prepared::Skip);
                            None
                        }
                    }
                }
            };
            if let Some(outcome) = outcome {
                match reply_message(&m.envelope, outcome) {
                    Some(reply) => replies.push(reply),
                    None => {
                        tracing::warn!(message_id = %m.message_id(), "saga command without a saga id; no reply")
                    }
                }
            }
        }
        batch.flush(tx).await?;
        self.repo.bus().store().publish(&mut *tx, &replies).await?;
        *self.batch.lock().await = Some(batch);
        *self.committing.lock().expect("not poisoned") = committing;
        Ok(())
    }

    async fn after_commit(&self) {
        if let Some(batch) = self.batch.lock().await.take() {
            batch.committed().await;
        }
        let committed = std::mem::take(&mut *self.committing.lock().expect("not poisoned"));
        let mut prepared = self.prepared.lock().expect("not poisoned");
        for id in committed {
            prepared.remove(&id);
        }
    }

    fn hop(&self, message: &Delivery) -> Hop {
        if message.envelope.event_type == COMMAND_EVENT_TYPE {
            Hop::SagaStep
        } else {
            Hop::Message
        }
    }
}

#[cfg(test)]
mod tests;
