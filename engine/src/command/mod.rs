//! The command bus: load an aggregate, let it decide, append what it decided together with the
//! messages it publishes (outbox rows, or log entries on the embedded transport) in one
//! transaction, and retry the decision on a concurrency conflict a bounded
//! number of times.
//!
//! Loading is never O(stream length) per command: each [`Repository`] keeps the loaded
//! aggregates of its type in memory, checked against the store's version by the append guard
//! itself, and only the tail of a stream is replayed when another writer moved it. Commands for
//! one stream are decided one after the other in-process, so a hot aggregate is a queue, not a
//! retry storm, and conflicts only arise between processes. The queue commits in batches: the
//! commands that arrive while a stream's batch commits are decided on the state it will leave
//! and appended together once it committed (see [`Repository::execute`]).

mod idempotency;
pub(crate) mod metrics;
#[cfg(test)]
mod tests;

pub use idempotency::{prune_keys, IdempotencyRequest, Previous, StoredResponse};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{watch, Mutex};
use uuid::Uuid;

use crate::aggregate::{encode_event, events_topic, stream_id, Aggregate, DomainEvent};
use crate::doorbell::Doorbell;
use crate::envelope::{Envelope, Metadata, RecordedEvent};
use crate::hash::fnv1a;
use crate::outbox::{OutboxMessage, Publishing, TopicLayout, OUTBOX_CHANNEL};
use crate::store::{
    decode, read_stream_on, read_streams_on, AppendError, EventStore, NewEvent, StoreError,
};
use metrics::metrics;

/// Settings of the command bus.
#[derive(Debug, Clone)]
pub struct CommandBusConfig {
    /// How many times a decision is attempted when appends conflict.
    pub max_attempts: u32,
    /// Number of lock stripes per aggregate type (streams hashing to one stripe serialize).
    pub stripes: usize,
    /// Loaded aggregates kept per stripe.
    pub cache_per_stripe: usize,
}

impl Default for CommandBusConfig {
    fn default() -> Self {
        CommandBusConfig {
            max_attempts: 5,
            stripes: 256,
            cache_per_stripe: 256,
        }
    }
}

/// Work a command's transaction does after appending its events: the engine starts the sagas
/// those events start (see [`CommandBus::set_append_hook`]).
#[async_trait::async_trait]
pub trait AppendHook: Send + Sync + 'static {
    /// Runs inside the transaction that appended `events`, after the append, and returns the
    /// messages the bus is to publish with the events and what to do once the transaction
    /// committed. An error rolls back what the hook wrote (to a savepoint taken before it) and
    /// nothing else: the commands still commit, and whoever consumes their events does the
    /// hook's work instead.
    async fn appended(
        &self,
        tx: &mut PgConnection,
        events: &[&RecordedEvent],
    ) -> Result<Hooked, BoxError>;
}

/// What an [`AppendHook`] did in a command's transaction, for the bus to finish.
#[derive(Default)]
pub struct Hooked {
    /// Messages to publish in the transaction. The bus publishes them together with the
    /// command's events, as the transaction's last write.
    pub publish: Vec<OutboxMessage>,
    /// What to do once the transaction committed.
    pub after: Option<AfterCommit>,
}

/// What an [`AppendHook`] does after the commit.
pub type AfterCommit = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// An [`AppendHook`]'s failure.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs `hook` on `events` in `tx` behind a savepoint: on its failure what it wrote is rolled
/// back and `tx` goes on without it.
async fn run_hook(
    hook: &dyn AppendHook,
    tx: &mut PgConnection,
    events: &[&RecordedEvent],
) -> Result<Hooked, sqlx::Error> {
    if events.is_empty() {
        return Ok(Hooked::default());
    }
    sqlx::query("SAVEPOINT append_hook")
        .execute(&mut *tx)
        .await?;
    match hook.appended(tx, events).await {
        Ok(hooked) => Ok(hooked),
        Err(e) => {
            tracing::warn!(error = %e, "work after an append failed; left to the events' consumers");
            sqlx::query("ROLLBACK TO SAVEPOINT append_hook")
                .execute(&mut *tx)
                .await?;
            Ok(Hooked::default())
        }
    }
}

/// Appends the events of `streams` in `tx`, the first half of a command transaction.
///
/// Without a hook, each event's message (topic `topics[i]` for stream `i`) goes in the same
/// statement. With a hook on the embedded log, the messages wait for
/// [`finish_append`]: publishing there locks the partitions' heads until the commit, and they
/// would be held while the hook works.
async fn append_events(
    store: &EventStore,
    tx: &mut PgConnection,
    streams: &[(&str, i64, &[NewEvent])],
    topics: &[&str],
    hook: Option<&dyn AppendHook>,
) -> Result<Vec<Vec<RecordedEvent>>, AppendError> {
    if publish_after_hook(store, hook) {
        store.append_many(tx, streams).await
    } else {
        store.append_and_publish(tx, streams, topics).await
    }
}

fn publish_after_hook(store: &EventStore, hook: Option<&dyn AppendHook>) -> bool {
    hook.is_some() && matches!(store.publishing(), Publishing::Log(_))
}

/// The second half of a command transaction begun by [`append_events`]: runs the hook, then
/// publishes what is left to publish (the events' messages if they waited, and the hook's) in
/// one append, the transaction's last write.
async fn finish_append(
    store: &EventStore,
    tx: &mut PgConnection,
    recorded: &[Vec<RecordedEvent>],
    topics: &[&str],
    hook: Option<&dyn AppendHook>,
) -> Result<Option<AfterCommit>, sqlx::Error> {
    let Some(hook) = hook else {
        return Ok(None);
    };
    let events: Vec<&RecordedEvent> = recorded.iter().flatten().collect();
    let hooked = run_hook(hook, tx, &events).await?;
    let mut messages = Vec::new();
    if publish_after_hook(store, Some(hook)) {
        for (events, topic) in recorded.iter().zip(topics) {
            messages.extend(
                events
                    .iter()
                    .map(|e| event_message(e.envelope.clone(), topic)),
            );
        }
    }
    messages.extend(hooked.publish);
    store.publish(tx, &messages).await?;
    Ok(hooked.after)
}

/// The message publishing an appended event on `topic`, keyed by its stream.
fn event_message(envelope: Envelope, topic: &str) -> OutboxMessage {
    OutboxMessage {
        topic: topic.to_owned(),
        partition_key: envelope.stream_id.clone(),
        envelope,
    }
}

/// Shared by every [`Repository`]: the store, its settings, and the doorbell that wakes the
/// outbox relay after a commit.
#[derive(Clone)]
pub struct CommandBus {
    store: EventStore,
    config: Arc<CommandBusConfig>,
    outbox_bell: Doorbell,
    /// Set once, after the bus is built (the hook's owner needs the bus's repositories).
    hook: Arc<std::sync::OnceLock<Arc<dyn AppendHook>>>,
    commits: tokio::sync::mpsc::Sender<CommitRequest>,
    /// The committer's end of `commits`, until the first command starts the committer.
    idle_committer: Arc<std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<CommitRequest>>>>,
}

/// One command's events, waiting to be appended by a committer.
struct CommitRequest {
    stream: String,
    expected: i64,
    events: Vec<NewEvent>,
    topic: String,
    reply: tokio::sync::oneshot::Sender<Result<Vec<RecordedEvent>, AppendError>>,
}

/// Group commit is a pipeline: one group at a time runs its append statement, taking every
/// request that is ready (up to `GROUP_COMMIT_MAX`, after yielding `GATHER_YIELDS` times to
/// handlers about to send); as soon as that statement returns, the next group forms from what
/// arrived meanwhile, while the first one commits. Up to
/// `COMMITS_IN_FLIGHT` groups wait for their commit (their WAL flushes overlap). Measured with
/// `sagaflow bench append`: fewer, larger groups beat parallel committers that each take a
/// few requests, because every transaction costs the database a commit.
const COMMITS_IN_FLIGHT: usize = 4;
const GROUP_COMMIT_MAX: usize = 64;
/// How many times a group rolled back for contention ([`crate::db::is_contention`]) runs
/// again before its commands are answered with the error (HTTP 503, to retry).
const CONTENTION_RETRIES: u32 = 3;
/// Most times a forming group yields to let requests that are about to arrive join it.
const GATHER_YIELDS: usize = 8;

/// Appends the requests of one group in one transaction. A request whose stream is not at
/// its expected version gets its conflict, and the others are committed without it. `turn`
/// is released once the first append statement returned, letting the next group form.
async fn commit_group(
    store: &EventStore,
    bell: &Doorbell,
    hook: Option<&dyn AppendHook>,
    mut group: Vec<CommitRequest>,
    turn: tokio::sync::OwnedSemaphorePermit,
) {
    let mut turn = Some(turn);
    // Tries left for a group that PostgreSQL rolled back for contention (a deadlock with
    // another writer of the same streams): nothing of it was written, so it runs again.
    let mut contention_retries = CONTENTION_RETRIES;
    // In stream order, as the orchestrator appends its local steps' events (a statement per
    // aggregate type, each in stream order): two writers that take the same streams' index
    // entries in one order never wait on each other in a cycle.
    group.sort_by(|a, b| a.stream.cmp(&b.stream));
    while !group.is_empty() {
        let result: Result<(Vec<Vec<RecordedEvent>>, Option<AfterCommit>), AppendError> = async {
            let mut tx = crate::db::begin_reusing_plans(store.pool()).await?;
            let streams: Vec<(&str, i64, &[NewEvent])> = group
                .iter()
                .map(|r| (r.stream.as_str(), r.expected, r.events.as_slice()))
                .collect();
            let topics: Vec<&str> = group.iter().map(|r| r.topic.as_str()).collect();
            let recorded = append_events(store, &mut tx, &streams, &topics, hook).await;
            drop(turn.take());
            let recorded = recorded?;
            let after = finish_append(store, &mut tx, &recorded, &topics, hook).await?;
            tx.commit().await?;
            Ok((recorded, after))
        }
        .await;
        match result {
            Ok((recorded, after)) => {
                bell.ring();
                if let Some(after) = after {
                    after.await;
                }
                for (r, rec) in group.drain(..).zip(recorded) {
                    let _ = r.reply.send(Ok(rec));
                }
            }
            Err(AppendError::Conflict {
                stream_id,
                expected,
                actual,
            }) => {
                let i = group
                    .iter()
                    .position(|r| r.stream == stream_id)
                    .expect("the conflict names a stream of the group");
                let r = group.remove(i);
                let _ = r.reply.send(Err(AppendError::Conflict {
                    stream_id,
                    expected,
                    actual,
                }));
            }
            Err(AppendError::Database(e))
                if crate::db::is_contention(&e) && contention_retries > 0 =>
            {
                contention_retries -= 1;
                tracing::debug!(error = %e, "group commit rolled back by contention; trying again");
                let jitter = rand::rng().random_range(0..=5);
                tokio::time::sleep(Duration::from_millis(jitter)).await;
            }
            Err(AppendError::Database(e)) => {
                for r in group.drain(..) {
                    let _ = r
                        .reply
                        .send(Err(AppendError::Database(crate::db::copy_error(&e))));
                }
            }
        }
    }
}

/// Moves the requests already waiting into `group`, up to `GROUP_COMMIT_MAX`.
fn take_ready(
    receiver: &mut tokio::sync::mpsc::Receiver<CommitRequest>,
    group: &mut Vec<CommitRequest>,
) {
    while group.len() < GROUP_COMMIT_MAX {
        match receiver.try_recv() {
            Ok(r) => group.push(r),
            Err(_) => break,
        }
    }
}

impl CommandBus {
    /// A bus over `pool`. Building it starts nothing: the committer task that appends the
    /// commands' events starts with the first command.
    pub fn new(pool: PgPool, config: CommandBusConfig) -> Self {
        let outbox_bell = Doorbell::new(pool.clone(), OUTBOX_CHANNEL);
        let store = EventStore::new(pool);
        let (commits, receiver) = tokio::sync::mpsc::channel::<CommitRequest>(1024);
        CommandBus {
            outbox_bell,
            hook: Arc::new(std::sync::OnceLock::new()),
            store,
            config: Arc::new(config),
            commits,
            idle_committer: Arc::new(std::sync::Mutex::new(Some(receiver))),
        }
    }

    /// Starts the committer if no command started it yet.
    fn start_committer(&self) {
        let Some(mut receiver) = self
            .idle_committer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        else {
            return;
        };
        let (committer_store, bell) = (self.store.clone(), self.outbox_bell.clone());
        let hook = self.hook.clone();
        tokio::spawn(async move {
            let appending = Arc::new(tokio::sync::Semaphore::new(1));
            let in_flight = Arc::new(tokio::sync::Semaphore::new(COMMITS_IN_FLIGHT));
            loop {
                let (Ok(slot), Ok(turn)) = (
                    in_flight.clone().acquire_owned().await,
                    appending.clone().acquire_owned().await,
                ) else {
                    return;
                };
                let Some(first) = receiver.recv().await else {
                    return;
                };
                let mut group = vec![first];
                take_ready(&mut receiver, &mut group);
                // Handlers that are about to send run first: a yield costs microseconds, a
                // transaction much more, and a larger group needs fewer of them.
                for _ in 0..GATHER_YIELDS {
                    if group.len() >= GROUP_COMMIT_MAX {
                        break;
                    }
                    tokio::task::yield_now().await;
                    take_ready(&mut receiver, &mut group);
                }
                let (store, bell, hook) = (committer_store.clone(), bell.clone(), hook.clone());
                tokio::spawn(async move {
                    commit_group(&store, &bell, hook.get().map(|h| h.as_ref()), group, turn).await;
                    drop(slot);
                });
            }
        });
    }

    /// Appends `events` to `stream` at `expected` with their messages (topic `topic`), in a
    /// transaction shared with other commands that are ready at the same moment: one commit
    /// (and one fsync) for many commands. Returns once that transaction committed.
    async fn group_commit(
        &self,
        stream: &str,
        expected: i64,
        events: Vec<NewEvent>,
        topic: String,
    ) -> Result<Vec<RecordedEvent>, AppendError> {
        self.start_committer();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = CommitRequest {
            stream: stream.to_owned(),
            expected,
            events,
            topic,
            reply,
        };
        if self.commits.send(request).await.is_err() {
            return Err(AppendError::Database(sqlx::Error::PoolClosed));
        }
        answer
            .await
            .unwrap_or(Err(AppendError::Database(sqlx::Error::PoolClosed)))
    }

    /// The bus's writers append to the embedded log in their own transactions
    /// ([`Publishing::Log`] with `layout`) and ring `bell`, the log's doorbell, after each
    /// such commit. Call it before the first command.
    pub fn with_log(mut self, layout: TopicLayout, bell: Doorbell) -> Self {
        self.store = self.store.with_publishing(Publishing::Log(layout));
        self.outbox_bell = bell;
        self
    }

    /// Sets the work every command transaction does after appending its events (the engine's:
    /// starting the sagas they start). Set once, before the first command; a second call is
    /// ignored and returns `false`.
    pub fn set_append_hook(&self, hook: Arc<dyn AppendHook>) -> bool {
        self.hook.set(hook).is_ok()
    }

    /// Rung after every commit that published messages: the relay's doorbell, or with
    /// [`CommandBus::with_log`] the log's.
    pub fn outbox_bell(&self) -> &Doorbell {
        &self.outbox_bell
    }

    /// The event store the bus appends to.
    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// The pool of the bus's event store.
    pub fn pool(&self) -> &PgPool {
        self.store.pool()
    }
}

/// How a command is to be executed.
#[derive(Debug, Clone, Default)]
pub struct CommandContext {
    /// Copied onto every event the command produces.
    pub metadata: Metadata,
    /// With a key, a repeat of the same request returns the first response and writes nothing.
    pub idempotency: Option<IdempotencyRequest>,
    /// The caller has just minted the aggregate id, so there is nothing to load. The append
    /// guard still rejects the append if the stream exists after all.
    pub new_stream: bool,
}

/// What an applied command did.
#[derive(Debug, Clone)]
pub struct CommandOutcome {
    /// The stream the command ran on: `<aggregate type>-<id>`.
    pub stream_id: String,
    /// The stream's version after the command (unchanged if it decided nothing).
    pub version: i64,
    /// The events the command recorded, in version order; empty if it decided nothing.
    pub events: Vec<RecordedEvent>,
}

/// The result of [`Repository::execute`].
#[derive(Debug, Clone)]
pub enum Executed {
    /// The command ran now; `response` is what the caller asked to remember for its key.
    Applied {
        /// What the command did.
        outcome: CommandOutcome,
        /// What the caller's `respond` made of the outcome; stored with the key, if there was one.
        response: StoredResponse,
    },
    /// The idempotency key was used before with the same request: its first response.
    Replayed(StoredResponse),
}

/// Why [`Repository::execute`] applied nothing; `E` is the aggregate's
/// [`DomainError`](crate::DomainError).
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error + 'static> {
    /// The domain rejected the command; nothing was written.
    #[error("{0}")]
    Rejected(E),
    /// Every attempt lost the race for the stream; nothing was written.
    #[error("stream {stream_id} kept changing: expected version {expected}, found {actual} after {attempts} attempts")]
    Conflict {
        /// The contended stream.
        stream_id: String,
        /// The version the last attempt decided on.
        expected: i64,
        /// The version the stream was at instead.
        actual: i64,
        /// How many times the command was decided.
        attempts: u32,
    },
    /// The idempotency key was used before with a different request.
    #[error("idempotency key {key} was already used with a different request")]
    IdempotencyMismatch {
        /// The reused key.
        key: String,
    },
    /// The event store failed, or a stored event does not decode; nothing was committed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl<E: std::error::Error + 'static> From<sqlx::Error> for CommandError<E> {
    fn from(e: sqlx::Error) -> Self {
        CommandError::Store(StoreError::Database(e))
    }
}

/// An aggregate at a version.
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    /// The stream version `state` is the fold of, 0 for a stream without events.
    pub version: i64,
    /// The aggregate as of `version`.
    pub state: A,
}

type Stripe<A> = Mutex<HashMap<String, Slot<A>>>;

/// A cached stream, with the commands on it that are being committed.
///
/// Commands on one stream are decided one after the other, each on the state its predecessors
/// left, under the stripe's lock. The first command of a quiet stream is sent to be committed
/// at once; the commands that arrive while it commits are decided on the state it will leave
/// (`Queue::tentative`) and gathered into one batch, sent as one append once it committed.
/// Nothing is ever appended on top of events that did not commit: a batch waits for its
/// predecessor, and is abandoned (its commands decide again) if the predecessor failed.
struct Slot<A: Aggregate> {
    /// The state as of the last commit this process made or read.
    committed: Loaded<A>,
    /// A commit of the stream failed, so the store may be ahead of `committed`: the tail is
    /// replayed before the next decision.
    stale: bool,
    /// Present while a batch of the stream is being committed.
    queue: Option<Queue<A>>,
    /// A keyed command waits for the stream to go quiet: while its sender lives, no new batch
    /// forms, so the wait ends.
    barrier: Option<watch::Receiver<()>>,
}

/// The batches of a stream in flight.
struct Queue<A: Aggregate> {
    /// The end of the batch being committed.
    in_flight: watch::Receiver<Option<BatchEnd>>,
    /// What that batch decided, applied to `committed` once it committed.
    in_flight_decided: Vec<A::Event>,
    /// The state with every decided event applied, committed or not; built when the second
    /// command arrives (a quiet stream's first command clones nothing).
    tentative: Option<Loaded<A>>,
    /// The batch forming behind the one in flight.
    next: Option<Batch<A>>,
}

/// Events of consecutive commands on one stream, appended together.
struct Batch<A: Aggregate> {
    /// The stream's version the batch appends after.
    expected: i64,
    events: Vec<NewEvent>,
    decided: Vec<A::Event>,
    done: watch::Sender<Option<BatchEnd>>,
}

/// How a batch ended; every command of it (and every command decided on top of it without
/// events of its own) waits for this.
#[derive(Clone)]
enum BatchEnd {
    Committed(Arc<Vec<RecordedEvent>>),
    Conflict {
        expected: i64,
        actual: i64,
    },
    Failed(Arc<sqlx::Error>),
    /// Decided on a batch that did not commit: decide again.
    Abandoned,
}

impl<A: Aggregate> Slot<A> {
    fn quiet(committed: Loaded<A>) -> Self {
        Slot {
            committed,
            stale: false,
            queue: None,
            barrier: None,
        }
    }

    /// The barrier of a keyed command still waiting, if any.
    fn barrier(&self) -> Option<watch::Receiver<()>> {
        self.barrier
            .as_ref()
            .filter(|b| b.has_changed().is_ok())
            .cloned()
    }

    /// Nothing of the stream is being committed and no keyed command waits for it.
    fn is_quiet(&self) -> bool {
        self.queue.is_none() && self.barrier().is_none()
    }

    /// The end of the last batch in flight: once it arrives, what was decided so far committed.
    fn last_batch(&self) -> Option<watch::Receiver<Option<BatchEnd>>> {
        let queue = self.queue.as_ref()?;
        Some(match &queue.next {
            Some(next) => next.done.subscribe(),
            None => queue.in_flight.clone(),
        })
    }
}

/// Waits for a batch's end; `None` only if its driver is gone (the runtime shuts down).
async fn batch_end(mut end: watch::Receiver<Option<BatchEnd>>) -> Option<BatchEnd> {
    end.wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|e| e.clone())
}

fn stripe_of<'a, A: Aggregate>(stripes: &'a [Stripe<A>], stream: &str) -> &'a Stripe<A> {
    let i = (fnv1a(stream.as_bytes()) % stripes.len() as u64) as usize;
    &stripes[i]
}

/// Commits a stream's batches one after the other, from its first until none is waiting. A
/// spawned task, so that a caller that goes away (a dropped request) cannot leave its batch
/// half done.
async fn drive<A: Aggregate>(
    stripes: Arc<[Stripe<A>]>,
    bus: CommandBus,
    stream: String,
    mut batch: Batch<A>,
) {
    let topic = events_topic::<A>();
    loop {
        let Batch {
            expected,
            events,
            done,
            ..
        } = batch;
        let n = events.len() as i64;
        let result = bus
            .group_commit(&stream, expected, events, topic.clone())
            .await;
        let mut cache = stripe_of(&stripes, &stream).lock().await;
        // A slot with a queue is neither evicted nor taken out, so it is still there.
        let slot = cache.get_mut(&stream);
        match result {
            Ok(recorded) => {
                let next = slot.and_then(|slot| {
                    let queue = slot.queue.as_mut()?;
                    for e in &queue.in_flight_decided {
                        slot.committed.state.apply(e);
                    }
                    slot.committed.version = expected + n;
                    match queue.next.take() {
                        Some(mut next) => {
                            queue.in_flight = next.done.subscribe();
                            queue.in_flight_decided = std::mem::take(&mut next.decided);
                            Some(next)
                        }
                        None => {
                            slot.queue = None;
                            None
                        }
                    }
                });
                drop(cache);
                let _ = done.send(Some(BatchEnd::Committed(Arc::new(recorded))));
                match next {
                    Some(next) => batch = next,
                    None => return,
                }
            }
            Err(e) => {
                let abandoned = slot.and_then(|slot| {
                    slot.stale = true;
                    slot.queue.take().and_then(|q| q.next)
                });
                drop(cache);
                if let Some(abandoned) = abandoned {
                    let _ = abandoned.done.send(Some(BatchEnd::Abandoned));
                }
                let _ = done.send(Some(match e {
                    AppendError::Conflict {
                        expected, actual, ..
                    } => BatchEnd::Conflict { expected, actual },
                    AppendError::Database(e) => BatchEnd::Failed(Arc::new(e)),
                }));
                return;
            }
        }
    }
}

/// A command of a batch, waiting for the batch's end.
struct Waiting<E> {
    end: watch::Receiver<Option<BatchEnd>>,
    /// The stream's version the command decided on (after the events before it).
    base: i64,
    /// Its events' places in the batch.
    range: std::ops::Range<usize>,
    /// The domain rejected it: the rejection stands once the state it was decided on committed.
    rejection: Option<E>,
    decided_at: std::time::Instant,
}

/// What deciding a command came to.
enum Decision<E: std::error::Error + 'static> {
    /// Its events (or the state it was decided on) are being committed.
    Wait(Waiting<E>),
    /// Decided on committed state with nothing to commit: its outcome or rejection.
    Done(Result<CommandOutcome, CommandError<E>>),
}

/// Executes commands against aggregates of type `A`, caching loaded aggregates.
pub struct Repository<A: Aggregate> {
    bus: CommandBus,
    stripes: Arc<[Stripe<A>]>,
}

impl<A: Aggregate> Repository<A> {
    /// A repository on `bus` with an empty cache. A process keeps one per aggregate type and shares
    /// it: commands for one stream only queue behind each other within one repository.
    pub fn new(bus: CommandBus) -> Self {
        let stripes = (0..bus.config.stripes.max(1))
            .map(|_| Mutex::new(HashMap::new()))
            .collect();
        Repository { bus, stripes }
    }

    /// The command bus this repository appends through.
    pub fn bus(&self) -> &CommandBus {
        &self.bus
    }

    fn stripe(&self, stream: &str) -> &Stripe<A> {
        stripe_of(&self.stripes, stream)
    }

    /// Runs `command` against aggregate `id`.
    ///
    /// Events and their messages (outbox rows or log entries) are appended in one transaction;
    /// on a version conflict the decision is made again on the refreshed state, at most
    /// `max_attempts` times. Commands on one stream are decided in the order they reach the
    /// repository; while one commits, those arriving behind it are decided on the state it
    /// will leave and appended together, in one transaction, once it committed (a hot
    /// aggregate takes one commit per batch, not per command). A command's result, a rejection
    /// included, is returned only once everything it was decided on committed. With an
    /// idempotency key, the key and `respond(outcome)` are stored in the command's own
    /// transaction, so a repeat either finds both or neither.
    pub async fn execute(
        &self,
        id: &str,
        command: &A::Command,
        ctx: &CommandContext,
        respond: impl Fn(&CommandOutcome) -> StoredResponse,
    ) -> Result<Executed, CommandError<A::Error>> {
        let stream = stream_id::<A>(id);
        if ctx.idempotency.is_some() {
            return self.execute_keyed(stream, command, ctx, respond).await;
        }
        let max_attempts = self.bus.config.max_attempts.max(1);
        let mut attempt = 1;
        // Rounds that ended because a predecessor failed do not count as attempts; this bounds
        // them all the same.
        let mut rounds = 0;
        loop {
            rounds += 1;
            let waiting = match self.decide_queued(&stream, command, ctx).await? {
                Decision::Wait(waiting) => waiting,
                Decision::Done(done) => {
                    let outcome = done?;
                    let response = respond(&outcome);
                    return Ok(Executed::Applied { outcome, response });
                }
            };
            let Waiting {
                end,
                base,
                range,
                rejection,
                decided_at,
            } = waiting;
            let (expected, actual) = match batch_end(end).await {
                Some(BatchEnd::Committed(recorded)) => {
                    if let Some(rejection) = rejection {
                        return Err(CommandError::Rejected(rejection));
                    }
                    if !range.is_empty() {
                        metrics()
                            .append_seconds
                            .with_label_values(&[A::TYPE])
                            .observe(decided_at.elapsed().as_secs_f64());
                    }
                    let events = recorded[range].to_vec();
                    let outcome = CommandOutcome {
                        stream_id: stream,
                        version: events.last().map_or(base, |e| e.envelope.stream_version),
                        events,
                    };
                    let response = respond(&outcome);
                    return Ok(Executed::Applied { outcome, response });
                }
                Some(BatchEnd::Failed(e)) => {
                    return Err(CommandError::Store(StoreError::Database(
                        crate::db::copy_error(&e),
                    )))
                }
                // The runtime is shutting down: whether the batch committed is not known.
                None => return Err(sqlx::Error::PoolClosed.into()),
                Some(BatchEnd::Conflict { expected, actual }) => {
                    tracing::debug!(%stream, expected, actual, attempt, "append conflict, deciding again");
                    attempt += 1;
                    (expected, actual)
                }
                Some(BatchEnd::Abandoned) => (base, base),
            };
            if attempt > max_attempts || rounds >= 4 * max_attempts {
                return Err(CommandError::Conflict {
                    stream_id: stream,
                    expected,
                    actual,
                    attempts: max_attempts,
                });
            }
            let jitter = rand::rng().random_range(0..=5 * u64::from(attempt));
            tokio::time::sleep(Duration::from_millis(jitter)).await;
        }
    }

    /// Decides `command` on the stream's latest state and puts its events in the stream's
    /// queue.
    async fn decide_queued(
        &self,
        stream: &str,
        command: &A::Command,
        ctx: &CommandContext,
    ) -> Result<Decision<A::Error>, CommandError<A::Error>> {
        let capacity = self.bus.config.cache_per_stripe;
        let mut cache = loop {
            let mut cache = self.stripe(stream).lock().await;
            let Some(slot) = cache.get_mut(stream) else {
                break cache;
            };
            if let Some(barrier) = slot.barrier() {
                drop(cache);
                let mut barrier = barrier;
                let _ = barrier.changed().await;
                continue;
            }
            let Some(queue) = slot.queue.as_mut() else {
                break cache;
            };
            // The stream is being committed: decide on the state it will be in.
            let tentative = match &mut queue.tentative {
                Some(t) => t,
                None => {
                    let mut t = slot.committed.clone();
                    for e in &queue.in_flight_decided {
                        t.state.apply(e);
                    }
                    t.version += queue.in_flight_decided.len() as i64;
                    queue.tentative.insert(t)
                }
            };
            let base = tentative.version;
            let decided_at = std::time::Instant::now();
            let (decided, rejection) = match tentative.state.handle(command) {
                Ok(decided) => (decided, None),
                Err(rejection) => (Vec::new(), Some(rejection)),
            };
            if decided.is_empty() {
                let end = match &queue.next {
                    Some(next) => next.done.subscribe(),
                    None => queue.in_flight.clone(),
                };
                return Ok(Decision::Wait(Waiting {
                    end,
                    base,
                    range: 0..0,
                    rejection,
                    decided_at,
                }));
            }
            let events = new_events::<A>(&decided, &ctx.metadata);
            for e in &decided {
                tentative.state.apply(e);
            }
            tentative.version += events.len() as i64;
            let next = queue.next.get_or_insert_with(|| Batch {
                expected: base,
                events: Vec::new(),
                decided: Vec::new(),
                done: watch::channel(None).0,
            });
            let start = next.events.len();
            next.events.extend(events);
            next.decided.extend(decided);
            return Ok(Decision::Wait(Waiting {
                end: next.done.subscribe(),
                base,
                range: start..next.events.len(),
                rejection: None,
                decided_at,
            }));
        };
        // A quiet stream: decide on its committed state and send the events at once.
        let (mut loaded, mut fresh) = self.take_quiet(&mut cache, stream, ctx.new_stream).await?;
        let decided = match self
            .decide_on_store(stream, &mut loaded, &mut fresh, command)
            .await?
        {
            Ok(decided) => decided,
            Err(rejection) => {
                evict_one_if_full(&mut cache, capacity);
                cache.insert(stream.to_owned(), Slot::quiet(loaded));
                return Ok(Decision::Done(Err(CommandError::Rejected(rejection))));
            }
        };
        if decided.is_empty() {
            let outcome = CommandOutcome {
                stream_id: stream.to_owned(),
                version: loaded.version,
                events: Vec::new(),
            };
            evict_one_if_full(&mut cache, capacity);
            cache.insert(stream.to_owned(), Slot::quiet(loaded));
            return Ok(Decision::Done(Ok(outcome)));
        }
        let events = new_events::<A>(&decided, &ctx.metadata);
        let base = loaded.version;
        let n = events.len();
        let (done, end) = watch::channel(None);
        evict_one_if_full(&mut cache, capacity);
        cache.insert(
            stream.to_owned(),
            Slot {
                committed: loaded,
                stale: false,
                queue: Some(Queue {
                    in_flight: end.clone(),
                    in_flight_decided: decided,
                    tentative: None,
                    next: None,
                }),
                barrier: None,
            },
        );
        drop(cache);
        tokio::spawn(drive(
            self.stripes.clone(),
            self.bus.clone(),
            stream.to_owned(),
            Batch {
                expected: base,
                events,
                decided: Vec::new(),
                done,
            },
        ));
        Ok(Decision::Wait(Waiting {
            end,
            base,
            range: 0..n,
            rejection: None,
            decided_at: std::time::Instant::now(),
        }))
    }

    /// Takes a quiet stream's state out of `cache`, replaying the tail first if a commit of it
    /// failed, or loads it from the store (a freshly minted stream has nothing to load). The
    /// flag says whether the state is known to be the store's as of now.
    async fn take_quiet(
        &self,
        cache: &mut HashMap<String, Slot<A>>,
        stream: &str,
        new_stream: bool,
    ) -> Result<(Loaded<A>, bool), StoreError> {
        let empty = || Loaded {
            version: 0,
            state: A::default(),
        };
        Ok(match cache.remove(stream) {
            Some(slot) if slot.stale => (self.replay(stream, slot.committed).await?, true),
            Some(slot) => (slot.committed, false),
            None if new_stream => (empty(), true),
            None => (self.replay(stream, empty()).await?, true),
        })
    }

    /// Decides `command` on `loaded`. A rejection on a cached state that is not `fresh` is
    /// decided again on the store's state (the cache may be behind another process's writes)
    /// before it stands; `loaded` and `fresh` are then the store's.
    async fn decide_on_store(
        &self,
        stream: &str,
        loaded: &mut Loaded<A>,
        fresh: &mut bool,
        command: &A::Command,
    ) -> Result<Result<Vec<A::Event>, A::Error>, StoreError> {
        match loaded.state.handle(command) {
            Err(rejection) if !*fresh => {
                let before = loaded.version;
                let cached = std::mem::replace(
                    loaded,
                    Loaded {
                        version: 0,
                        state: A::default(),
                    },
                );
                *loaded = self.replay(stream, cached).await?;
                *fresh = true;
                if loaded.version == before {
                    return Ok(Err(rejection));
                }
                Ok(loaded.state.handle(command))
            }
            decided => Ok(decided),
        }
    }

    /// Locks the stream's stripe once nothing of the stream is in flight. While it waits, a
    /// barrier keeps new batches from forming; the returned sender holds it until dropped.
    async fn quiet_stripe(
        &self,
        stream: &str,
    ) -> (
        tokio::sync::MutexGuard<'_, HashMap<String, Slot<A>>>,
        Option<watch::Sender<()>>,
    ) {
        let mut mine: Option<(watch::Sender<()>, watch::Receiver<()>)> = None;
        loop {
            let mut cache = self.stripe(stream).lock().await;
            let Some(slot) = cache.get_mut(stream) else {
                return (cache, mine.map(|(tx, _)| tx));
            };
            if let Some(mut barrier) = slot.barrier() {
                if !mine
                    .as_ref()
                    .is_some_and(|(_, rx)| rx.same_channel(&barrier))
                {
                    drop(cache);
                    let _ = barrier.changed().await;
                    continue;
                }
            }
            let Some(last) = slot.last_batch() else {
                return (cache, mine.map(|(tx, _)| tx));
            };
            if mine.is_none() {
                let (tx, rx) = watch::channel(());
                slot.barrier = Some(rx.clone());
                mine = Some((tx, rx));
            }
            drop(cache);
            batch_end(last).await;
        }
    }

    /// A command with an idempotency key: decided on the committed state and committed in its
    /// own transaction with its key, holding the stream until then.
    async fn execute_keyed(
        &self,
        stream: String,
        command: &A::Command,
        ctx: &CommandContext,
        respond: impl Fn(&CommandOutcome) -> StoredResponse,
    ) -> Result<Executed, CommandError<A::Error>> {
        let idem = ctx.idempotency.as_ref().expect("only keyed commands");
        if let Some(previous) = idem.lookup(self.bus.pool()).await? {
            return replayed(previous, idem);
        }
        let (mut cache, _barrier) = self.quiet_stripe(&stream).await;
        let capacity = self.bus.config.cache_per_stripe;
        let (mut loaded, mut fresh) = self.take_quiet(&mut cache, &stream, ctx.new_stream).await?;
        let max_attempts = self.bus.config.max_attempts.max(1);
        for attempt in 1..=max_attempts {
            let decided = match self
                .decide_on_store(&stream, &mut loaded, &mut fresh, command)
                .await?
            {
                Ok(decided) => decided,
                Err(rejection) => {
                    cache.insert(stream.clone(), Slot::quiet(loaded));
                    return Err(CommandError::Rejected(rejection));
                }
            };
            match self
                .commit_keyed(&stream, &loaded, &decided, ctx, &respond)
                .await
            {
                Ok(CommitResult::Committed { outcome, response }) => {
                    for e in &decided {
                        loaded.state.apply(e);
                    }
                    loaded.version = outcome.version;
                    evict_one_if_full(&mut cache, capacity);
                    cache.insert(stream.clone(), Slot::quiet(loaded));
                    return Ok(Executed::Applied { outcome, response });
                }
                Ok(CommitResult::Replayed(previous)) => {
                    cache.insert(stream.clone(), Slot::quiet(loaded));
                    return replayed(previous, idem);
                }
                Err(AppendError::Conflict {
                    actual, expected, ..
                }) => {
                    tracing::debug!(%stream, expected, actual, attempt, "append conflict, deciding again");
                    loaded = self.replay(&stream, loaded).await?;
                    fresh = true;
                    if attempt == max_attempts {
                        cache.insert(stream.clone(), Slot::quiet(loaded));
                        return Err(CommandError::Conflict {
                            stream_id: stream,
                            expected,
                            actual,
                            attempts: max_attempts,
                        });
                    }
                    let jitter = rand::rng().random_range(0..=5 * u64::from(attempt));
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
                // Rolled back by PostgreSQL for contention: nothing was written; decide again.
                Err(AppendError::Database(e))
                    if crate::db::is_contention(&e) && attempt < max_attempts =>
                {
                    tracing::debug!(%stream, error = %e, attempt, "keyed command rolled back by contention; deciding again");
                    loaded = self.replay(&stream, loaded).await?;
                    fresh = true;
                    let jitter = rand::rng().random_range(0..=5 * u64::from(attempt));
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
                Err(AppendError::Database(e)) => return Err(e.into()),
            }
        }
        unreachable!("the last attempt returns")
    }

    async fn commit_keyed(
        &self,
        stream: &str,
        loaded: &Loaded<A>,
        decided: &[A::Event],
        ctx: &CommandContext,
        respond: &impl Fn(&CommandOutcome) -> StoredResponse,
    ) -> Result<CommitResult, AppendError> {
        let idem = ctx.idempotency.as_ref().expect("only keyed commands");
        let new_events = new_events::<A>(decided, &ctx.metadata);
        let started = std::time::Instant::now();
        let mut tx = crate::db::begin_reusing_plans(self.bus.pool()).await?;
        if !idem.claim(&mut tx).await? {
            tx.rollback().await?;
            // The key was committed by a concurrent request that we waited for.
            let previous = idem
                .lookup(self.bus.pool())
                .await?
                .expect("a claimed key that lost the race exists");
            return Ok(CommitResult::Replayed(previous));
        }
        let topic = events_topic::<A>();
        let topics = [topic.as_str()];
        let hook = self.bus.hook.get().map(|h| h.as_ref());
        let recorded = append_events(
            &self.bus.store,
            &mut tx,
            &[(stream, loaded.version, &new_events)],
            &topics,
            hook,
        )
        .await?;
        let outcome = CommandOutcome {
            stream_id: stream.to_owned(),
            version: recorded[0]
                .last()
                .map_or(loaded.version, |r| r.envelope.stream_version),
            events: recorded[0].clone(),
        };
        let response = respond(&outcome);
        idem.store_response(&mut tx, &response).await?;
        let after = finish_append(&self.bus.store, &mut tx, &recorded, &topics, hook).await?;
        tx.commit().await?;
        metrics()
            .append_seconds
            .with_label_values(&[A::TYPE])
            .observe(started.elapsed().as_secs_f64());
        if !outcome.events.is_empty() {
            self.bus.outbox_bell.ring();
        }
        if let Some(after) = after {
            after.await;
        }
        Ok(CommitResult::Committed { outcome, response })
    }

    /// Brings `from` up to the stream's committed head by replaying only the missing tail.
    async fn replay(&self, stream: &str, mut from: Loaded<A>) -> Result<Loaded<A>, StoreError> {
        const PAGE: i64 = 1000;
        loop {
            let page = self
                .bus
                .store
                .read_stream(stream, from.version + 1, PAGE)
                .await?;
            for e in &page {
                from.state.apply(&decode::<A>(e)?);
                from.version = e.envelope.stream_version;
            }
            if (page.len() as i64) < PAGE {
                return Ok(from);
            }
        }
    }

    /// The aggregate's committed state, read through the cache (only the tail is replayed).
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, StoreError> {
        let stream = stream_id::<A>(id);
        let mut cache = self.stripe(&stream).lock().await;
        let start = match cache.get(&stream) {
            Some(slot) if !slot.is_quiet() => {
                // Commands are committing: read past them without holding the stream.
                let start = slot.committed.clone();
                drop(cache);
                return self.replay(&stream, start).await;
            }
            Some(_) => cache.remove(&stream).map(|s| s.committed),
            None => None,
        };
        let loaded = self
            .replay(
                &stream,
                start.unwrap_or(Loaded {
                    version: 0,
                    state: A::default(),
                }),
            )
            .await?;
        evict_one_if_full(&mut cache, self.bus.config.cache_per_stripe);
        cache.insert(stream, Slot::quiet(loaded.clone()));
        Ok(loaded)
    }
}

/// Executes commands inside a caller's transaction, as a participant does for a batch of
/// saga commands. Each stream's state is taken out of the repository's cache into the batch;
/// later commands of the batch on the same stream see the earlier ones' events. The events
/// are held until [`CommandBatch::flush`] appends those of every stream, with their outbox
/// rows, in one statement. Call [`CommandBatch::committed`] after the caller's transaction
/// committed to hand the states back to the cache; a batch dropped without it (a rollback)
/// leaves those streams to be reloaded from the store. Per-stream serialization is the
/// caller's (a consumer owns its partition); concurrent writers elsewhere surface as
/// [`AppendError::Conflict`] from the flush.
pub struct CommandBatch<A: Aggregate> {
    repo: Arc<Repository<A>>,
    states: HashMap<String, Loaded<A>>,
    /// Events decided and not appended yet: per stream, the version it was at and the events.
    pending: BTreeMap<String, (i64, Vec<NewEvent>)>,
}

/// What a command of a [`CommandBatch`] decided; its events are appended by the flush.
#[derive(Debug, Clone)]
pub struct Decided {
    /// The stream's version once the batch is flushed, counting this command's events.
    pub version: i64,
    /// The events, in order.
    pub events: Vec<NewEvent>,
}

impl<A: Aggregate> Repository<A> {
    /// A [`CommandBatch`] for commands run inside a caller's transaction, on this repository's
    /// cache.
    pub fn batch(self: &Arc<Self>) -> CommandBatch<A> {
        CommandBatch {
            repo: self.clone(),
            states: HashMap::new(),
            pending: BTreeMap::new(),
        }
    }
}

impl<A: Aggregate> CommandBatch<A> {
    /// Brings the aggregates `ids` into the batch: each from the shared cache, with the tail
    /// its stream gained since, all read in one statement (only a stream with more than a page
    /// of new events takes more). [`CommandBatch::execute`] loads an aggregate it misses
    /// itself; loading a batch's aggregates first saves a round trip per aggregate.
    pub async fn load<'a>(
        &mut self,
        tx: &mut PgConnection,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), BatchError> {
        let mut starts: BTreeMap<String, Loaded<A>> = BTreeMap::new();
        for id in ids {
            let stream = stream_id::<A>(id);
            if self.states.contains_key(&stream) || starts.contains_key(&stream) {
                continue;
            }
            let cached = {
                let mut cache = self.repo.stripe(&stream).lock().await;
                match cache.get(&stream) {
                    // Commands are committing on it: start from its committed state and leave
                    // it there; whichever append comes second conflicts.
                    Some(slot) if !slot.is_quiet() => Some(slot.committed.clone()),
                    Some(_) => cache.remove(&stream).map(|s| s.committed),
                    None => None,
                }
            };
            starts.insert(
                stream,
                cached.unwrap_or(Loaded {
                    version: 0,
                    state: A::default(),
                }),
            );
        }
        const PAGE: i64 = 1000;
        let from: Vec<(&str, i64)> = starts
            .iter()
            .map(|(stream, l)| (stream.as_str(), l.version + 1))
            .collect();
        let tails = read_streams_on(&mut *tx, &from, PAGE).await?;
        let mut read: HashMap<String, i64> = HashMap::new();
        for e in &tails {
            let loaded = starts
                .get_mut(&e.envelope.stream_id)
                .expect("only the streams asked for");
            loaded.state.apply(&decode::<A>(e)?);
            loaded.version = e.envelope.stream_version;
            *read.entry(e.envelope.stream_id.clone()).or_default() += 1;
        }
        for (stream, mut loaded) in starts {
            if read.get(&stream).copied().unwrap_or(0) >= PAGE {
                loaded = replay_on(&mut *tx, &stream, loaded).await?;
            }
            self.states.insert(stream, loaded);
        }
        Ok(())
    }

    /// Decides `command` on aggregate `id` and, unless the domain rejects it, holds its events
    /// for [`CommandBatch::flush`]. The outer `Result` is a technical failure (the caller rolls
    /// back), the inner one the domain's decision.
    pub async fn execute(
        &mut self,
        tx: &mut PgConnection,
        id: &str,
        command: &A::Command,
        metadata: &Metadata,
    ) -> Result<Result<Decided, A::Error>, BatchError> {
        let stream = stream_id::<A>(id);
        if !self.states.contains_key(&stream) {
            self.load(tx, [id]).await?;
        }
        let mut loaded = self.states.remove(&stream).expect("loaded above");
        let decided = match loaded.state.handle(command) {
            Ok(events) => events,
            Err(rejection) => {
                self.states.insert(stream, loaded);
                return Ok(Err(rejection));
            }
        };
        let new_events = new_events::<A>(&decided, metadata);
        for e in &decided {
            loaded.state.apply(e);
        }
        if !new_events.is_empty() {
            self.pending
                .entry(stream.clone())
                .or_insert_with(|| (loaded.version, Vec::new()))
                .1
                .extend(new_events.iter().cloned());
            loaded.version += new_events.len() as i64;
        }
        let outcome = Decided {
            version: loaded.version,
            events: new_events,
        };
        self.states.insert(stream, loaded);
        Ok(Ok(outcome))
    }

    /// Holds `events` for [`CommandBatch::flush`] as if a command of aggregate `id` had decided
    /// them: for a writer whose decision was made elsewhere (an outside-world participant
    /// records what the outside system did). The state's `apply` evolves it as usual.
    pub async fn record(
        &mut self,
        tx: &mut PgConnection,
        id: &str,
        events: &[A::Event],
        metadata: &Metadata,
    ) -> Result<Decided, BatchError> {
        let stream = stream_id::<A>(id);
        if !self.states.contains_key(&stream) {
            self.load(tx, [id]).await?;
        }
        let loaded = self.states.get_mut(&stream).expect("loaded above");
        let new_events = new_events::<A>(events, metadata);
        for e in events {
            loaded.state.apply(e);
        }
        if !new_events.is_empty() {
            self.pending
                .entry(stream.clone())
                .or_insert_with(|| (loaded.version, Vec::new()))
                .1
                .extend(new_events.iter().cloned());
            loaded.version += new_events.len() as i64;
        }
        Ok(Decided {
            version: loaded.version,
            events: new_events,
        })
    }

    /// Appends the events every command decided since the last flush, with their messages,
    /// in `tx` and in one statement. A stream that moved meanwhile is an
    /// [`AppendError::Conflict`]: the caller rolls back.
    pub async fn flush(&mut self, tx: &mut PgConnection) -> Result<(), BatchError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let topic = events_topic::<A>();
        let streams = self.pending_streams();
        let topics = vec![topic.as_str(); streams.len()];
        self.repo
            .bus
            .store
            .append_and_publish(&mut *tx, &streams, &topics)
            .await?;
        self.pending.clear();
        Ok(())
    }

    /// Each stream with pending events: its id, the version it was at, and the events.
    fn pending_streams(&self) -> Vec<(&str, i64, &[NewEvent])> {
        self.pending
            .iter()
            .map(|(stream, (expected, events))| (stream.as_str(), *expected, events.as_slice()))
            .collect()
    }

    /// [`CommandBatch::flush`] that appends the events without publishing them and returns
    /// their messages, for a caller that publishes them with messages of its own in one
    /// append (on the embedded log a transaction appends to the log at most twice).
    pub(crate) async fn flush_unpublished(
        &mut self,
        tx: &mut PgConnection,
    ) -> Result<Vec<OutboxMessage>, BatchError> {
        if self.pending.is_empty() {
            return Ok(Vec::new());
        }
        let topic = events_topic::<A>();
        let streams = self.pending_streams();
        let recorded = self.repo.bus.store.append_many(&mut *tx, &streams).await?;
        self.pending.clear();
        Ok(recorded
            .into_iter()
            .flatten()
            .map(|e| event_message(e.envelope, &topic))
            .collect())
    }

    /// Hands the batch's states to the shared cache; call it after the commit.
    pub async fn committed(self) {
        let capacity = self.repo.bus.config.cache_per_stripe;
        for (stream, loaded) in self.states {
            let mut cache = self.repo.stripe(&stream).lock().await;
            match cache.get(&stream) {
                // Commands are committing on it, or a newer state is cached: keep that.
                Some(slot) if !slot.is_quiet() || slot.committed.version > loaded.version => {}
                Some(_) => {
                    cache.insert(stream, Slot::quiet(loaded));
                }
                None => {
                    evict_one_if_full(&mut cache, capacity);
                    cache.insert(stream, Slot::quiet(loaded));
                }
            }
        }
    }
}

/// A technical failure of a [`CommandBatch`]: the caller rolls its transaction back.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The flush's append failed: a stream moved meanwhile, or the database failed.
    #[error(transparent)]
    Append(#[from] AppendError),
    /// Loading a stream failed: the database, or a stored event that does not decode.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for BatchError {
    fn from(e: sqlx::Error) -> Self {
        BatchError::Store(StoreError::Database(e))
    }
}

/// Replays the tail of `stream` after `from` on `conn` (sees the transaction's own writes).
async fn replay_on<A: Aggregate>(
    conn: &mut PgConnection,
    stream: &str,
    mut from: Loaded<A>,
) -> Result<Loaded<A>, StoreError> {
    const PAGE: i64 = 1000;
    loop {
        let page = read_stream_on(&mut *conn, stream, from.version + 1, PAGE).await?;
        for e in &page {
            from.state.apply(&decode::<A>(e)?);
            from.version = e.envelope.stream_version;
        }
        if (page.len() as i64) < PAGE {
            return Ok(from);
        }
    }
}

fn new_events<A: Aggregate>(decided: &[A::Event], metadata: &Metadata) -> Vec<NewEvent> {
    decided
        .iter()
        .map(|e| {
            let (event_type, payload) = encode_event(e);
            NewEvent {
                message_id: Uuid::now_v7(),
                schema_version: A::Event::schema_version(&event_type),
                event_type,
                payload,
                metadata: metadata.clone(),
            }
        })
        .collect()
}

enum CommitResult {
    Committed {
        outcome: CommandOutcome,
        response: StoredResponse,
    },
    Replayed(Previous),
}

fn replayed<E: std::error::Error + 'static>(
    previous: Previous,
    idem: &IdempotencyRequest,
) -> Result<Executed, CommandError<E>> {
    match previous {
        Previous::Same(response) => Ok(Executed::Replayed(response)),
        Previous::Mismatch => Err(CommandError::IdempotencyMismatch {
            key: idem.key.clone(),
        }),
    }
}

/// Makes room for one more stream by dropping a quiet one (a stream being committed stays).
fn evict_one_if_full<A: Aggregate>(cache: &mut HashMap<String, Slot<A>>, capacity: usize) {
    if cache.len() >= capacity {
        if let Some(k) = cache
            .iter()
            .find(|(_, slot)| slot.is_quiet())
            .map(|(k, _)| k.clone())
        {
            cache.remove(&k);
        }
    }
}
