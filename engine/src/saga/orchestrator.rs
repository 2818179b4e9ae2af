//! The orchestrator: drives saga instances.
//!
//! It consumes the events that start or abort sagas and the participants' replies; for each
//! it loads the saga (cached, replaying only what it misses), decides, and in the consumer's
//! transaction appends the saga's events, writes the commands it sends to the outbox, sets or
//! clears the saga's deadline and updates the `sagas` read model. A deadline poller, which
//! any number of processes may run, claims due deadlines with `FOR UPDATE SKIP LOCKED`.
//!
//! One saga is only ever decided by one transaction at a time: every path takes the saga's
//! advisory transaction lock first (the poller only tries, and skips a saga that is busy).
//!
//! With local steps (see [`super::local`]) the commands to the application's own
//! participants are not sent: the same transaction runs them and decides on their outcomes,
//! round after round, until no saga of the batch has a local command left.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{broadcast, Mutex};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::definition::{saga_stream, target_stream, Saga};
use super::local::{LocalRun, LocalSteps};
use super::messages::{
    commands_topic, ReplyOutcome, SagaCommand, SagaReply, COMMAND_EVENT_TYPE, REPLIES_TOPIC,
    REPLY_EVENT_TYPE,
};
use super::metrics::metrics;
use super::state::{evolve, DecidedPack, SagaEvent, SagaInput, SagaState, SentCommand};
use crate::command::{AppendHook, BoxError, Hooked};
use crate::consumer::{Consumer, ConsumerConfig, Handler, HandlerError, Hop};
use crate::doorbell::Doorbell;
use crate::envelope::{Envelope, Metadata, RecordedEvent};
use crate::metrics::age_of;
use crate::outbox::{OutboxMessage, Publishing};
use crate::store::{
    decode_envelope, read_stream_on, read_streams_on, AppendError, EventStore, NewEvent,
};
use crate::transport::{Delivery, Transport};

/// The consumer group of the orchestrator.
pub const ORCHESTRATOR_GROUP: &str = "orchestrator";

/// How many ended saga ids an [`Orchestrator::ended`] receiver may fall behind.
pub const ENDED_CAPACITY: usize = 16_384;

#[derive(Clone)]
struct Loaded {
    version: i64,
    state: SagaState,
    /// Decided into a terminal state by the transaction in flight (not yet published).
    ended: bool,
}

/// Drives the registered sagas. Cheap to share (`Arc`).
pub struct Orchestrator {
    sagas: HashMap<&'static str, Arc<Saga>>,
    pool: PgPool,
    store: EventStore,
    cache: Mutex<HashMap<Uuid, Loaded>>,
    /// Sagas decided by the consumer's batch in flight; they reach `cache` after its commit.
    /// Only the consumer's handler uses it: the deadline poller and operators' commands
    /// publish what they decided themselves, after their own commits.
    batch: Mutex<HashMap<Uuid, Loaded>>,
    cache_capacity: usize,
    /// Ids of the sagas this process brought to a terminal state, sent after the commit.
    ended: broadcast::Sender<Uuid>,
    /// The replies applied by the consumer's batch in flight (step, outcome, the command's
    /// id, the trace id), timed once it commits.
    replies: Mutex<Vec<ReplyTiming>>,
    /// The aggregate types whose commands run in the orchestrator's transaction (see
    /// [`super::local`]); `None` sends every command through its topic.
    local: Option<LocalSteps>,
    /// What the consumer's batch in flight ran locally; cached after its commit.
    local_batch: Mutex<Option<LocalRun>>,
}

/// What [`Orchestrator::process`] decided, for the caller to publish after its commit.
struct Processed {
    states: BTreeMap<Uuid, Loaded>,
    decided: HashMap<Uuid, Vec<SagaEvent>>,
    /// What is left to publish (only from [`Orchestrator::process_unpublished`]): the local
    /// steps' events, then the commands sent through the topics.
    outgoing: Vec<OutboxMessage>,
    /// What ran locally, to hand to the caches after the commit.
    local: Option<LocalRun>,
    /// The local steps' replies, timed after the commit.
    local_replies: Vec<ReplyTiming>,
}

impl Processed {
    /// Hands what ran locally to the aggregates' caches; only after the commit.
    async fn committed_local(&mut self) {
        if let Some(local) = self.local.take() {
            local.committed().await;
        }
    }
}

/// What one transaction decided for one saga, stored as one event at its end.
struct Pending {
    /// The saga's version before the transaction.
    version: i64,
    /// The metadata of the first decision, which the stored event carries.
    metadata: Metadata,
    pack: DecidedPack,
}

/// The result of an operator's [`Orchestrator::command`].
#[derive(Debug, Clone)]
pub enum Commanded {
    /// No saga with this id has started; nothing was written.
    Unknown,
    /// The input does not apply to the saga as it is (aborting a finished saga, retrying a
    /// step that is still waiting for replies); nothing was written. The saga's state.
    Unchanged(SagaState),
    /// These events were appended (and their commands put in the outbox) in one transaction;
    /// the saga's state after them.
    Applied {
        /// The events appended, in order.
        events: Vec<SagaEvent>,
        /// The saga's state after them.
        state: SagaState,
    },
}

/// One thing that happens to one saga.
struct Work<'a> {
    saga_id: Uuid,
    saga: Option<Arc<Saga>>,
    input: SagaInput,
    /// The message it comes from: a delivered one, or the command a local step just ran.
    cause: Option<Cow<'a, Envelope>>,
}

impl Orchestrator {
    /// An orchestrator of `sagas` on `pool`'s database, with an empty cache. Building it starts
    /// nothing: see [`Orchestrator::consumer`] and [`Orchestrator::run_deadlines`].
    pub fn new(pool: PgPool, sagas: Vec<Arc<Saga>>) -> Self {
        Orchestrator {
            sagas: sagas.into_iter().map(|s| (s.name, s)).collect(),
            store: EventStore::new(pool.clone()),
            pool,
            cache: Mutex::new(HashMap::new()),
            batch: Mutex::new(HashMap::new()),
            cache_capacity: 100_000,
            ended: broadcast::channel(ENDED_CAPACITY).0,
            replies: Mutex::new(Vec::new()),
            local: None,
            local_batch: Mutex::new(None),
        }
    }

    /// The same orchestrator, running the commands to `local`'s aggregate types in its own
    /// transactions (see [`super::local`]).
    pub(crate) fn with_local_steps(mut self, local: LocalSteps) -> Self {
        self.local = Some(local);
        self
    }

    /// The same orchestrator, publishing its commands where `publishing` says (as every
    /// writer of the deployment does).
    pub fn with_publishing(mut self, publishing: Publishing) -> Self {
        self.store = self.store.with_publishing(publishing);
        self
    }

    /// Logical topics the orchestrator consumes: its sagas' start and abort events, and the
    /// replies.
    pub fn topics(&self) -> Vec<String> {
        topics_of(self.sagas.values())
    }

    /// The orchestrator's consumer (group `orchestrator`).
    ///
    /// The group records no message ids ([`ConsumerConfig::handler_is_idempotent`]): every
    /// input is decided on the saga's committed state, where a repeat is a no-op by itself (a
    /// start of a saga that exists, a reply to a command that is no longer awaited, an abort
    /// of a saga that is no longer running), so a redelivered message writes nothing. That
    /// saves a `processed_messages` row for each start event and each reply.
    pub fn consumer(
        self: &Arc<Self>,
        transport: Arc<dyn Transport>,
        outbox_bell: Doorbell,
    ) -> Consumer {
        let topics = self.topics();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        Consumer::new(
            self.pool.clone(),
            transport,
            self.clone(),
            ConsumerConfig::new(ORCHESTRATOR_GROUP, &topics).handler_is_idempotent(),
        )
        .with_outbox_bell(outbox_bell)
    }

    /// Ids of the sagas that this process's orchestrator brings to a terminal state
    /// (completed, compensated or failed), each sent once the transaction that ended it
    /// committed. A saga ended by another process is not sent; a receiver that falls more
    /// than [`ENDED_CAPACITY`] ids behind misses some (`RecvError::Lagged`) and must read
    /// the `sagas` table to catch up.
    pub fn ended(&self) -> broadcast::Receiver<Uuid> {
        self.ended.subscribe()
    }

    /// Whether `saga`'s first step runs in the orchestrator's transaction.
    fn first_step_is_local(&self, saga: &Saga) -> bool {
        let local = self.local.as_ref();
        saga.steps
            .first()
            .is_some_and(|s| local.is_some_and(|l| l.serves(s.invokes)))
    }

    /// The registered saga named `name`.
    pub fn saga(&self, name: &str) -> Option<&Arc<Saga>> {
        self.sagas.get(name)
    }

    fn classify<'a>(&self, envelope: &'a Envelope) -> Vec<Work<'a>> {
        if envelope.event_type == REPLY_EVENT_TYPE {
            let saga_id = envelope
                .metadata
                .saga_id
                .as_deref()
                .and_then(|s| Uuid::parse_str(s).ok());
            return match (saga_id, SagaReply::deserialize(&envelope.payload)) {
                (Some(saga_id), Ok(reply)) => vec![Work {
                    saga_id,
                    saga: None,
                    input: SagaInput::Reply {
                        command_id: reply.command_id,
                        outcome: reply.outcome,
                    },
                    cause: Some(Cow::Borrowed(envelope)),
                }],
                _ => {
                    tracing::error!(message_id = %envelope.message_id, "reply without a saga id or of an unknown shape; ignored");
                    Vec::new()
                }
            };
        }
        let mut work = Vec::new();
        for saga in self.sagas.values() {
            match saga.try_start(envelope) {
                Some(Ok(data)) => work.push(Work {
                    saga_id: saga.id_for(&envelope.stream_id),
                    saga: Some(saga.clone()),
                    input: SagaInput::Start {
                        data,
                        correlation_id: envelope.metadata.correlation_id,
                    },
                    cause: Some(Cow::Borrowed(envelope)),
                }),
                Some(Err(e)) => {
                    tracing::error!(saga = saga.name, error = %e, "start event yields no saga data")
                }
                None => {}
            }
            if let Some(reason) = saga.try_abort(envelope) {
                work.push(Work {
                    saga_id: saga.id_for(&envelope.stream_id),
                    saga: Some(saga.clone()),
                    input: SagaInput::Abort {
                        reason,
                        by_operator: false,
                    },
                    cause: Some(Cow::Borrowed(envelope)),
                });
            }
        }
        work
    }

    /// Applies `work` in `tx` and returns the sagas' new states (to publish once `tx`
    /// commits) and the events decided for each. With `rearm`, every saga of `work` has its
    /// deadline row set to its deadline, decided or not (see [`write_deadlines`]).
    async fn process(
        &self,
        tx: &mut PgConnection,
        work: Vec<Work<'_>>,
        rearm: bool,
    ) -> Result<Processed, HandlerError> {
        let mut processed = self.process_unpublished(tx, work, rearm).await?;
        // The transaction's last write: on the embedded log it locks partition heads.
        self.store
            .publish(&mut *tx, &std::mem::take(&mut processed.outgoing))
            .await?;
        Ok(processed)
    }

    /// [`Orchestrator::process`] that leaves the commands it decided in
    /// [`Processed::outgoing`], for a caller that publishes them with messages of its own.
    async fn process_unpublished(
        &self,
        tx: &mut PgConnection,
        work: Vec<Work<'_>>,
        rearm: bool,
    ) -> Result<Processed, HandlerError> {
        let mut states: BTreeMap<Uuid, Loaded> = BTreeMap::new();
        // Each saga's deadline as committed, which its deadline row is at or before.
        let mut committed_deadline: HashMap<Uuid, Option<DateTime<Utc>>> = HashMap::new();
        let mut decided: HashMap<Uuid, Vec<SagaEvent>> = HashMap::new();
        let mut touched: Vec<Uuid> = Vec::new();
        let mut outgoing: Vec<OutboxMessage> = Vec::new();
        let mut appends: BTreeMap<Uuid, Pending> = BTreeMap::new();
        let mut local = self.local.as_ref().map(LocalSteps::begin);
        let mut local_replies: Vec<ReplyTiming> = Vec::new();
        let now = Utc::now();
        let mut jitter = || rand::random::<f64>();
        let mut preloaded = self.load_all(tx, work.iter().map(|w| w.saga_id)).await?;
        let mut queue: VecDeque<Work<'_>> = work.into();
        // Rounds: every input of the queue is decided; the local commands that decided are
        // run together (each aggregate type's aggregates loaded in one read), and their
        // replies are the next round's inputs. Each round moves every saga a step at least,
        // so a saga's steps bound the rounds.
        for round in 0.. {
            if round > MAX_LOCAL_ROUNDS {
                return Err(format!(
                    "local steps still deciding after {MAX_LOCAL_ROUNDS} rounds: a saga definition loops"
                )
                .into());
            }
            let mut calls: Vec<(Uuid, Envelope)> = Vec::new();
            while let Some(w) = queue.pop_front() {
                let loaded = match states.remove(&w.saga_id) {
                    Some(l) => l,
                    None => {
                        let l = match preloaded.remove(&w.saga_id) {
                            Some(l) => l,
                            None => self.load(tx, w.saga_id).await?,
                        };
                        committed_deadline.insert(w.saga_id, l.state.deadline.map(|d| d.at));
                        l
                    }
                };
                if rearm {
                    touched.push(w.saga_id);
                }
                let saga = match (&w.saga, loaded.state.is_started()) {
                    (_, true) => self.sagas.get(loaded.state.saga_type.as_str()).cloned(),
                    (Some(s), false) => Some(s.clone()),
                    (None, false) => None,
                };
                let Some(saga) = saga else {
                    tracing::warn!(saga_id = %w.saga_id, "input for an unknown saga; ignored");
                    states.insert(w.saga_id, loaded);
                    continue;
                };
                let version = loaded.version;
                let was_terminal = loaded.state.status.is_some_and(|s| s.is_terminal());
                let (mut state, mut events) =
                    evolve(&saga, loaded.state, &w.input, now, &mut jitter)?;
                // A saga that starts here runs its local steps here for its whole life.
                if let Some(SagaEvent::SagaStarted { local: l, .. }) = events.first_mut() {
                    *l = self.local.is_some();
                    state.local = *l;
                }
                let ended = loaded.ended
                    || (!was_terminal && state.status.is_some_and(|s| s.is_terminal()));
                let mut next = Loaded {
                    version,
                    state,
                    ended,
                };
                if events.is_empty() {
                    states.insert(w.saga_id, next);
                    continue;
                }
                let metadata = Metadata {
                    correlation_id: next.state.correlation_id,
                    causation_id: w.cause.as_ref().map(|c| c.message_id),
                    traceparent: w.cause.as_ref().and_then(|c| {
                        crate::trace::caused_traceparent(
                            c.message_id,
                            c.metadata.traceparent.as_deref(),
                        )
                    }),
                    saga_id: Some(w.saga_id.to_string()),
                    ..Default::default()
                };
                // Everything this transaction decides for the saga is stored as one event
                // (`decided` when there are several), appended together with the batch's
                // other sagas, in one statement, below.
                let pending = appends.entry(w.saga_id).or_insert_with(|| Pending {
                    version,
                    pack: DecidedPack::new(metadata.causation_id),
                    metadata: metadata.clone(),
                });
                for e in &events {
                    pending.pack.push(e, metadata.causation_id);
                }
                next.version = pending.version + 1;
                next.state.version = next.version;
                for message in sent_commands(w.saga_id, &events, &metadata) {
                    let runs_here = next.state.local
                        && self.local.as_ref().is_some_and(|l| {
                            message.envelope.payload["aggregate_type"]
                                .as_str()
                                .is_some_and(|t| l.serves(t))
                        });
                    if runs_here {
                        calls.push((w.saga_id, message.envelope));
                    } else {
                        outgoing.push(message);
                    }
                }
                touched.push(w.saga_id);
                states.insert(w.saga_id, next);
                decided.entry(w.saga_id).or_default().extend(events);
            }
            let Some(run) = local.as_mut().filter(|_| !calls.is_empty()) else {
                break;
            };
            let commands: Vec<&Envelope> = calls.iter().map(|(_, c)| c).collect();
            let outcomes = run.run_all(&mut *tx, &commands).await?;
            for ((saga_id, command), outcome) in calls.into_iter().zip(outcomes) {
                if let Some(step) = command.metadata.saga_step.clone() {
                    local_replies.push((
                        step,
                        outcome_label(&outcome),
                        command.message_id,
                        command
                            .metadata
                            .traceparent
                            .as_deref()
                            .and_then(crate::trace::TraceContext::parse)
                            .map(|c| c.trace_id),
                    ));
                }
                queue.push_back(Work {
                    saga_id,
                    saga: None,
                    input: SagaInput::Reply {
                        command_id: command.message_id,
                        outcome,
                    },
                    cause: Some(Cow::Owned(command)),
                });
            }
        }
        let streams: Vec<(String, i64, Vec<NewEvent>)> = appends
            .into_iter()
            .map(|(id, p)| {
                let events = p.pack.encode().map(|(event_type, payload)| NewEvent {
                    message_id: Uuid::now_v7(),
                    event_type,
                    schema_version: 1,
                    payload,
                    metadata: p.metadata,
                });
                (saga_stream(id), p.version, events.into_iter().collect())
            })
            .collect();
        let batch: Vec<(&str, i64, &[NewEvent])> = streams
            .iter()
            .map(|(s, v, e)| (s.as_str(), *v, e.as_slice()))
            .collect();
        self.store
            .append_batch(&mut *tx, &batch)
            .await
            .map_err(|e| -> HandlerError {
                match e {
                    AppendError::Conflict { .. } => {
                        format!("a saga changed concurrently: {e}").into()
                    }
                    AppendError::Database(e) => e.into(),
                }
            })?;
        touched.sort();
        touched.dedup();
        let alarms: Vec<(Uuid, &Loaded)> = touched
            .iter()
            .filter(|id| {
                // A row at or before the committed deadline is at or before a later one too.
                rearm
                    || !matches!(
                        (committed_deadline.get(*id), states[*id].state.deadline),
                        (Some(Some(before)), Some(now)) if *before <= now.at
                    )
            })
            .map(|id| (*id, &states[id]))
            .collect();
        write_deadlines(&mut *tx, &alarms).await?;
        if rearm {
            // Only the sagas something happened to have a new summary.
            touched.retain(|id| decided.contains_key(id));
        }
        let touched: Vec<(Uuid, &Loaded)> = touched.iter().map(|id| (*id, &states[id])).collect();
        write_summaries(&mut *tx, &touched).await?;
        // The local steps' events; their messages go out with the commands, in the one
        // append that the caller makes last.
        if let Some(run) = local.as_mut() {
            let mut messages = run.flush(&mut *tx).await?;
            messages.append(&mut outgoing);
            outgoing = messages;
        }
        Ok(Processed {
            states,
            decided,
            outgoing,
            local,
            local_replies,
        })
    }

    /// The states of the sagas `ids`: from the cache, the others read from their streams in
    /// one statement (a saga with a page of events or more is read on by [`Orchestrator::load`]
    /// when it comes up).
    async fn load_all(
        &self,
        tx: &mut PgConnection,
        ids: impl Iterator<Item = Uuid>,
    ) -> Result<HashMap<Uuid, Loaded>, sqlx::Error> {
        const PAGE: i64 = 1000;
        let mut loaded: HashMap<Uuid, Loaded> = HashMap::new();
        let mut missing: Vec<Uuid> = Vec::new();
        {
            let mut cache = self.cache.lock().await;
            for id in ids {
                if loaded.contains_key(&id) || missing.contains(&id) {
                    continue;
                }
                match cache.remove(&id) {
                    Some(l) => {
                        loaded.insert(id, l);
                    }
                    None => missing.push(id),
                }
            }
        }
        let streams: Vec<String> = missing.iter().map(|id| saga_stream(*id)).collect();
        let from: Vec<(&str, i64)> = streams.iter().map(|s| (s.as_str(), 1)).collect();
        let mut read: HashMap<Uuid, (Loaded, i64)> = HashMap::new();
        for r in read_streams_on(&mut *tx, &from, PAGE).await? {
            let Some(id) = r
                .envelope
                .stream_id
                .strip_prefix("saga-")
                .and_then(|id| Uuid::parse_str(id).ok())
            else {
                continue;
            };
            let event = decode_envelope::<SagaEvent>(&r.envelope)
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            let (l, n) = read.entry(id).or_insert_with(|| (new_saga(), 0));
            l.state.apply(&event, r.recorded_at);
            l.version = r.envelope.stream_version;
            l.state.version = l.version;
            *n += 1;
        }
        for id in missing {
            match read.remove(&id) {
                // Longer than a page: `load` reads it whole when it comes up.
                Some((_, n)) if n >= PAGE => {}
                Some((l, _)) => {
                    loaded.insert(id, l);
                }
                None => {
                    loaded.insert(id, new_saga());
                }
            }
        }
        Ok(loaded)
    }

    /// A saga's state: from the cache, or its stream (read in `tx`).
    async fn load(&self, tx: &mut PgConnection, saga_id: Uuid) -> Result<Loaded, sqlx::Error> {
        // A cached saga is taken as is: only the committed work of this process put it there,
        // and the append's version check catches any other writer (the batch then fails and
        // the saga is read afresh).
        if let Some(l) = self.cache.lock().await.remove(&saga_id) {
            return Ok(l);
        }
        let mut loaded = new_saga();
        let stream = saga_stream(saga_id);
        loop {
            let page = read_stream_on(&mut *tx, &stream, loaded.version + 1, 1000).await?;
            for r in &page {
                let event = decode_envelope::<SagaEvent>(&r.envelope)
                    .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
                loaded.state.apply(&event, r.recorded_at);
                loaded.version = r.envelope.stream_version;
                loaded.state.version = loaded.version;
            }
            if page.len() < 1000 {
                return Ok(loaded);
            }
        }
    }

    /// Takes the advisory locks of `ids` (sorted, so two transactions never wait on each
    /// other in a cycle).
    async fn lock_all(tx: &mut PgConnection, ids: &mut [Uuid]) -> Result<(), sqlx::Error> {
        ids.sort();
        let keys: Vec<i64> = ids.iter().map(lock_key).collect();
        sqlx::query("SELECT pg_advisory_xact_lock(k) FROM UNNEST($1::int8[]) AS k")
            .bind(&keys)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    /// Fires due deadlines until `shutdown`: one transaction per round, at most 200 sagas.
    pub async fn run_deadlines(
        self: Arc<Self>,
        outbox_bell: Doorbell,
        shutdown: CancellationToken,
    ) {
        while !shutdown.is_cancelled() {
            let fired = match self.fire_due_deadlines(200).await {
                Ok(n) => {
                    if n > 0 {
                        outbox_bell.ring();
                    }
                    n
                }
                Err(e) => {
                    tracing::warn!(error = %e, "deadline round failed; retrying");
                    0
                }
            };
            if fired < 200 {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
        }
    }

    /// Claims and fires up to `limit` due deadlines; returns how many it fired.
    pub async fn fire_due_deadlines(&self, limit: i64) -> Result<usize, HandlerError> {
        let mut tx = self.pool.begin().await?;
        let due: Vec<Uuid> = sqlx::query_scalar(
            "SELECT saga_id FROM saga_deadlines WHERE due_at <= now()
             ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        if due.is_empty() {
            return Ok(0);
        }
        // A saga whose lock is held is being decided right now: its deadline moves anyway.
        let mut work = Vec::new();
        for saga_id in due {
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                .bind(lock_key(&saga_id))
                .fetch_one(&mut *tx)
                .await?;
            if got {
                work.push(Work {
                    saga_id,
                    saga: None,
                    input: SagaInput::Deadline,
                    cause: None,
                });
            }
        }
        let n = work.len();
        let mut processed = self.process(&mut tx, work, true).await?;
        tx.commit().await?;
        processed.committed_local().await;
        self.publish(processed.states).await;
        Ok(n)
    }

    /// Runs an operator's input (abort, retry) on one saga in its own transaction, under the
    /// saga's lock, so it is decided on the saga's committed state and serialized with every
    /// reply and deadline of that saga. The commands it sends are in the outbox when this
    /// returns (ring the outbox bell to publish them at once).
    pub async fn command(
        &self,
        saga_id: Uuid,
        input: SagaInput,
    ) -> Result<Commanded, HandlerError> {
        let mut tx = self.pool.begin().await?;
        Self::lock_all(&mut tx, &mut [saga_id]).await?;
        let mut processed = self
            .process(
                &mut tx,
                vec![Work {
                    saga_id,
                    saga: None,
                    input,
                    cause: None,
                }],
                true,
            )
            .await?;
        tx.commit().await?;
        processed.committed_local().await;
        let state = processed
            .states
            .get(&saga_id)
            .map(|l| l.state.clone())
            .unwrap_or_default();
        let events = processed.decided.remove(&saga_id).unwrap_or_default();
        self.publish(processed.states).await;
        Ok(if !state.is_started() {
            Commanded::Unknown
        } else if events.is_empty() {
            Commanded::Unchanged(state)
        } else {
            Commanded::Applied { events, state }
        })
    }

    async fn publish_batch(&self) {
        let decided: Vec<(Uuid, Loaded)> = self.batch.lock().await.drain().collect();
        self.publish(decided).await;
    }

    /// Puts committed states into the cache (terminal sagas leave it, and are sent to the
    /// [`Orchestrator::ended`] receivers). A state older than the cached one is dropped: the
    /// consumer and the deadline poller each publish after their own commit, so a later
    /// decision on the same saga may have been published first.
    async fn publish(&self, decided: impl IntoIterator<Item = (Uuid, Loaded)>) {
        let mut cache = self.cache.lock().await;
        for (id, loaded) in decided {
            if loaded.state.status.is_some_and(|s| s.is_terminal()) {
                cache.remove(&id);
                if loaded.ended {
                    let _ = self.ended.send(id);
                }
                continue;
            }
            if cache.get(&id).is_some_and(|c| c.version >= loaded.version) {
                continue;
            }
            if cache.len() >= self.cache_capacity {
                if let Some(k) = cache.keys().next().copied() {
                    cache.remove(&k);
                }
            }
            cache.insert(id, loaded);
        }
    }
}

/// Starts sagas in the transaction of the command whose events start them, instead of a hop
/// later in the orchestrator's consumer (see [`AppendHook`]): the saga's first events, its
/// summary, its deadline and its first step's commands commit with the command's events. The
/// consumer still reads the start event, and finds the saga started (a start of a saga that
/// exists decides nothing). If starting fails, the command commits without it and the consumer
/// starts the saga, as it did before. A saga whose first step runs locally (see
/// [`super::local`]) is left to the consumer, which runs its local steps in the transaction
/// that starts it: the command appends its own events only.
pub struct StartSagas(pub Arc<Orchestrator>);

#[async_trait]
impl AppendHook for StartSagas {
    async fn appended(
        &self,
        tx: &mut PgConnection,
        events: &[&RecordedEvent],
    ) -> Result<Hooked, BoxError> {
        let work: Vec<Work<'_>> = events
            .iter()
            .flat_map(|e| self.0.classify(&e.envelope))
            .filter(|w| matches!(w.input, SagaInput::Start { .. }))
            // A saga whose first step runs locally starts in the orchestrator's consumer,
            // which runs its steps in the same transaction: one hop for the whole saga.
            .filter(|w| {
                !w.saga
                    .as_ref()
                    .is_some_and(|s| self.0.first_step_is_local(s))
            })
            .collect();
        if work.is_empty() {
            return Ok(Hooked::default());
        }
        let mut ids: Vec<Uuid> = work.iter().map(|w| w.saga_id).collect();
        ids.dedup();
        Orchestrator::lock_all(tx, &mut ids).await?;
        // The bus publishes the first commands with the command's events, in one append.
        let mut processed = self.0.process_unpublished(tx, work, false).await?;
        let orchestrator = self.0.clone();
        Ok(Hooked {
            publish: std::mem::take(&mut processed.outgoing),
            after: Some(Box::pin(async move {
                processed.committed_local().await;
                orchestrator.publish(processed.states).await;
            })),
        })
    }
}

#[async_trait]
impl Handler for Orchestrator {
    async fn handle(&self, tx: &mut PgConnection, message: &Delivery) -> Result<(), HandlerError> {
        self.handle_batch(tx, std::slice::from_ref(message)).await
    }

    async fn handle_batch(
        &self,
        tx: &mut PgConnection,
        messages: &[Delivery],
    ) -> Result<(), HandlerError> {
        // Whatever a failed batch left behind is not committed state.
        self.batch.lock().await.clear();
        *self.local_batch.lock().await = None;
        *self.replies.lock().await = messages.iter().filter_map(reply_timing).collect();
        let work: Vec<Work<'_>> = messages
            .iter()
            .flat_map(|m| self.classify(&m.envelope))
            .collect();
        if work.is_empty() {
            return Ok(());
        }
        let mut ids: Vec<Uuid> = work.iter().map(|w| w.saga_id).collect();
        ids.dedup();
        Self::lock_all(tx, &mut ids).await?;
        let processed = self.process(tx, work, false).await?;
        self.batch.lock().await.extend(processed.states);
        self.replies.lock().await.extend(processed.local_replies);
        *self.local_batch.lock().await = processed.local;
        Ok(())
    }

    async fn after_commit(&self) {
        if let Some(local) = self.local_batch.lock().await.take() {
            local.committed().await;
        }
        self.publish_batch().await;
        // The command's id is a UUIDv7 minted when the step was invoked.
        for (step, outcome, command_id, trace) in self.replies.lock().await.drain(..) {
            if let Some(age) = age_of(command_id) {
                metrics()
                    .step_seconds
                    .with_label_values(&[step.as_str(), outcome])
                    .observe(age);
                // The histogram has no exemplars (prometheus 0.14): a slow step's trace is
                // found from this line.
                if age >= SLOW_STEP_SECONDS {
                    tracing::info!(
                        target: "sagaflow::slow_step",
                        step = %step,
                        outcome,
                        seconds = age,
                        command_id = %command_id,
                        trace_id = trace.map(|t| tracing::field::display(crate::trace::TraceIdHex(t))),
                        "slow saga step"
                    );
                }
            }
        }
    }

    fn hop(&self, message: &Delivery) -> Hop {
        if message.envelope.event_type == REPLY_EVENT_TYPE {
            Hop::SagaStep
        } else {
            Hop::Message
        }
    }
}

/// A saga step answered this many seconds or more after its command was sent is logged
/// (target `sagaflow::slow_step`) with its trace id.
const SLOW_STEP_SECONDS: f64 = 2.0;

/// A reply's step, its outcome, the id of the command it answers and its trace id.
type ReplyTiming = (String, &'static str, Uuid, Option<u128>);

/// For a reply: its [`ReplyTiming`].
fn reply_timing(m: &Delivery) -> Option<ReplyTiming> {
    let e = &m.envelope;
    if e.event_type != REPLY_EVENT_TYPE {
        return None;
    }
    let outcome = match e.payload.get("outcome").and_then(|o| o.as_str()) {
        Some("succeeded") => "succeeded",
        Some("rejected") => "rejected",
        _ => "other",
    };
    Some((
        e.metadata.saga_step.clone()?,
        outcome,
        e.metadata.causation_id?,
        e.metadata
            .traceparent
            .as_deref()
            .and_then(crate::trace::TraceContext::parse)
            .map(|c| c.trace_id),
    ))
}

/// The logical topics an orchestrator of `sagas` consumes: their start and abort events, and
/// the replies.
pub fn topics_of<'a>(sagas: impl IntoIterator<Item = &'a Arc<Saga>>) -> Vec<String> {
    let mut topics: Vec<String> = sagas.into_iter().flat_map(|s| s.event_topics()).collect();
    topics.push(REPLIES_TOPIC.to_owned());
    topics.sort();
    topics.dedup();
    topics
}

/// How many rounds of local steps one transaction runs at most: far more than any saga's
/// steps and compensations; reaching it means a definition that never stops deciding.
const MAX_LOCAL_ROUNDS: usize = 1_000;

/// The label of a reply's outcome in the step metrics.
fn outcome_label(outcome: &ReplyOutcome) -> &'static str {
    match outcome {
        ReplyOutcome::Succeeded { .. } => "succeeded",
        ReplyOutcome::Rejected { .. } => "rejected",
    }
}

/// The command messages `events` send, in order.
fn sent_commands(saga_id: Uuid, events: &[SagaEvent], metadata: &Metadata) -> Vec<OutboxMessage> {
    let mut messages = Vec::new();
    for e in events {
        match e {
            SagaEvent::StepInvoked {
                name,
                attempt,
                commands,
                deadline_at,
                ..
            }
            | SagaEvent::CompensationInvoked {
                name,
                attempt,
                commands,
                deadline_at,
                ..
            } => messages.extend(
                commands
                    .iter()
                    .map(|c| command_message(saga_id, name, *attempt, c, *deadline_at, metadata)),
            ),
            SagaEvent::FinalCommandInvoked {
                attempt,
                command,
                deadline_at,
            } => messages.push(command_message(
                saga_id,
                "on_compensated",
                *attempt,
                command,
                *deadline_at,
                metadata,
            )),
            _ => {}
        }
    }
    messages
}

/// A saga with no events.
fn new_saga() -> Loaded {
    Loaded {
        version: 0,
        state: SagaState::default(),
        ended: false,
    }
}

fn lock_key(saga_id: &Uuid) -> i64 {
    let b = saga_id.as_bytes();
    i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) ^ 0x5347_4100
}

fn command_message(
    saga_id: Uuid,
    step: &str,
    attempt: u32,
    c: &SentCommand,
    deadline_at: DateTime<Utc>,
    metadata: &Metadata,
) -> OutboxMessage {
    let target = target_stream(&c.invocation);
    OutboxMessage {
        topic: commands_topic(&c.invocation.context),
        partition_key: target.clone(),
        envelope: Envelope {
            message_id: c.message_id,
            stream_id: target,
            stream_version: 0,
            event_type: COMMAND_EVENT_TYPE.into(),
            schema_version: 1,
            payload: serde_json::to_value(SagaCommand {
                aggregate_type: c.invocation.aggregate_type.clone(),
                aggregate_id: c.invocation.aggregate_id.clone(),
                command: c.invocation.command.clone(),
                deadline_at: Some(deadline_at),
            })
            .expect("commands serialize"),
            metadata: Metadata {
                saga_id: Some(saga_id.to_string()),
                saga_step: Some(step.to_owned()),
                attempt: Some(attempt),
                ..metadata.clone()
            },
        },
    }
}

/// Sets the deadline rows of `sagas` to their deadlines, and deletes those of sagas without
/// one.
///
/// A row is an alarm: it may ring before the saga's deadline, never after. The poller claims
/// it, the saga decides that nothing is due yet, and the poller sets the row to the deadline
/// (`rearm`). So a step that starts with a later deadline than the one before leaves the row
/// alone (the orchestrator does not pass those sagas here): in the common run of a saga the
/// row is written when the saga starts and deleted when it ends, and a saga that runs for
/// longer than a step's timeout is woken once more, early, by the first step's alarm.
async fn write_deadlines(
    tx: &mut PgConnection,
    sagas: &[(Uuid, &Loaded)],
) -> Result<(), sqlx::Error> {
    let (mut set_ids, mut set_types, mut set_due, mut clear) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (id, l) in sagas {
        match l.state.deadline {
            Some(d) => {
                set_ids.push(*id);
                set_types.push(l.state.saga_type.as_str());
                set_due.push(d.at);
            }
            None => clear.push(*id),
        }
    }
    if !set_ids.is_empty() {
        sqlx::query(
            "INSERT INTO saga_deadlines (saga_id, saga_type, due_at)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[])
             ON CONFLICT (saga_id) DO UPDATE SET due_at = EXCLUDED.due_at",
        )
        .bind(&set_ids)
        .bind(&set_types)
        .bind(&set_due)
        .execute(&mut *tx)
        .await?;
    }
    if !clear.is_empty() {
        sqlx::query("DELETE FROM saga_deadlines WHERE saga_id = ANY($1)")
            .bind(&clear)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// Upserts the `sagas` read model rows of the touched sagas.
async fn write_summaries(
    tx: &mut PgConnection,
    sagas: &[(Uuid, &Loaded)],
) -> Result<(), sqlx::Error> {
    if sagas.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::new();
    let mut types = Vec::new();
    let mut states = Vec::new();
    let mut current = Vec::new();
    let mut data = Vec::new();
    let mut failures = Vec::new();
    let mut steps = Vec::new();
    let mut correlations = Vec::new();
    let mut started = Vec::new();
    let mut updated = Vec::new();
    let mut versions = Vec::new();
    for (id, l) in sagas {
        let s = &l.state;
        let Some(status) = s.status else { continue };
        ids.push(*id);
        types.push(s.saga_type.clone());
        states.push(status.as_str());
        current.push(s.current_step_name().map(str::to_owned));
        data.push(s.data.clone());
        failures.push(s.error.as_ref().or(s.failure.as_ref()).map(|f| json!(f)));
        steps.push(json!(s.steps));
        correlations.push(s.correlation_id);
        started.push(s.started_at.unwrap_or_else(Utc::now));
        updated.push(s.updated_at.unwrap_or_else(Utc::now));
        versions.push(l.version);
    }
    sqlx::query(
        "INSERT INTO sagas (saga_id, saga_type, state, current_step, data, failure, steps, correlation_id,
                            started_at, updated_at, version)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[],
                              $7::jsonb[], $8::uuid[], $9::timestamptz[], $10::timestamptz[], $11::int8[])
         ON CONFLICT (saga_id) DO UPDATE SET
             state = EXCLUDED.state, current_step = EXCLUDED.current_step, data = EXCLUDED.data,
             failure = EXCLUDED.failure, steps = EXCLUDED.steps, updated_at = EXCLUDED.updated_at,
             version = EXCLUDED.version
         WHERE sagas.version < EXCLUDED.version",
    )
    .bind(&ids)
    .bind(&types)
    .bind(&states)
    .bind(&current)
    .bind(&data)
    .bind(&failures)
    .bind(&steps)
    .bind(&correlations)
    .bind(&started)
    .bind(&updated)
    .bind(&versions)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A saga's state read from its stream (for `GET /sagas/{id}` and the tools).
pub async fn load_saga(pool: &PgPool, saga_id: Uuid) -> Result<Option<SagaState>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let stream = saga_stream(saga_id);
    let mut state = SagaState::default();
    let mut version = 0;
    loop {
        let page = read_stream_on(&mut *conn, &stream, version + 1, 1000).await?;
        for r in &page {
            let event = decode_envelope::<SagaEvent>(&r.envelope)
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            state.apply(&event, r.recorded_at);
            version = r.envelope.stream_version;
        }
        if page.len() < 1000 {
            break;
        }
    }
    state.version = version;
    Ok(state.is_started().then_some(state))
}
