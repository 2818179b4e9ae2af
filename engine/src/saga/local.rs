//! Local steps: a saga's commands to an aggregate type this process serves, run in the
//! orchestrator's own transaction instead of a hop through the participant's topic.
//!
//! With [`crate::app::Options::local_steps`], the orchestrator runs such a command through
//! the aggregate's shared [`Repository`] (a [`CommandBatch`], as the participant would), and
//! feeds the outcome back to the saga at once, as the reply it would have received. The
//! saga's events (the step's invocation, its reply, the next step), the aggregate's events
//! with their messages, the saga's deadline and its summary commit together or not at all:
//!
//! - **Exactly once.** The command's effects and the saga's record of its reply are one
//!   commit; a redelivered input finds the saga past it, and decides nothing.
//! - **Order.** A saga runs locally only if it started with local steps (its `saga_started`
//!   event says so), so none of its commands to a local aggregate type ever went through the
//!   topic: a compensation can never overtake the command it undoes. A saga started before
//!   local steps were turned on keeps sending its commands through the topic.
//! - **Conflicts.** An aggregate that moved meanwhile (a command route's commit on the same
//!   stream) rolls the transaction back; the consumer tries the input again shortly without
//!   counting it as a failure ([`crate::consumer::Wait`]), so a hot aggregate never parks a
//!   saga's input.
//!
//! Commands to an outside-world participant, or to an aggregate type served by another
//! process, still go through the topic.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use sqlx::PgConnection;
use tracing::Instrument;

use super::messages::ReplyOutcome;
use super::participant::{decode_command, rejected, Participant};
use crate::aggregate::Aggregate;
use crate::command::{BatchError, CommandBatch, Repository};
use crate::consumer::{HandlerError, Wait};
use crate::envelope::Envelope;
use crate::outbox::OutboxMessage;
use crate::store::{AppendError, StoreError};
use crate::trace::{self, SpanIdHex, TraceContext, TraceIdHex, TRACE_TARGET};

/// Runs the saga commands of one aggregate type in a caller's transaction.
pub(crate) trait LocalParticipant: Send + Sync {
    /// A batch for one transaction; none once the application is gone.
    fn begin(&self) -> Option<Box<dyn LocalBatch>>;
}

/// The commands of one aggregate type run in one transaction: decided in order, their
/// events appended by [`LocalBatch::flush`], the states cached after the commit.
#[async_trait]
pub(crate) trait LocalBatch: Send {
    /// Brings the aggregates `commands` address into the batch, in one read.
    async fn load(
        &mut self,
        tx: &mut PgConnection,
        commands: &[&Envelope],
    ) -> Result<(), HandlerError>;

    /// Decides one saga command; its events wait for the flush.
    async fn run(
        &mut self,
        tx: &mut PgConnection,
        command: &Envelope,
    ) -> Result<ReplyOutcome, HandlerError>;

    /// Appends every decided event, in one statement, and returns their messages: the caller
    /// publishes them with its own.
    async fn flush(&mut self, tx: &mut PgConnection) -> Result<Vec<OutboxMessage>, HandlerError>;

    /// Hands the states to the shared cache; only after the commit.
    async fn committed(self: Box<Self>);
}

/// The local participant of aggregate type `A`, on the process's shared repository.
///
/// It holds the repository weakly: the command bus holds the orchestrator (through the
/// append hook that starts sagas), and the repository holds the bus, so a strong reference
/// would keep all of them, and the database pool, alive forever.
pub(crate) struct Local<A: Aggregate>(pub(crate) Weak<Repository<A>>);

impl<A: Aggregate> LocalParticipant for Local<A> {
    fn begin(&self) -> Option<Box<dyn LocalBatch>> {
        Some(Box::new(self.0.upgrade()?.batch()))
    }
}

#[async_trait]
impl<A: Aggregate> LocalBatch for CommandBatch<A> {
    async fn load(
        &mut self,
        tx: &mut PgConnection,
        commands: &[&Envelope],
    ) -> Result<(), HandlerError> {
        let ids: Vec<String> = commands
            .iter()
            .filter_map(|e| decode_command::<A>(e)?.ok().map(|(id, _, _)| id))
            .collect();
        CommandBatch::load(self, tx, ids.iter().map(String::as_str))
            .await
            .map_err(transient)
    }

    async fn run(
        &mut self,
        tx: &mut PgConnection,
        command: &Envelope,
    ) -> Result<ReplyOutcome, HandlerError> {
        Ok(match decode_command::<A>(command) {
            Some(Ok((id, c, _))) => Participant::<A>::run(tx, self, command, &id, &c).await?,
            Some(Err(rejection)) => rejection,
            None => rejected(
                "invalid_command",
                format!("not a saga command for {}", A::TYPE),
            ),
        })
    }

    async fn flush(&mut self, tx: &mut PgConnection) -> Result<Vec<OutboxMessage>, HandlerError> {
        self.flush_unpublished(tx).await.map_err(transient)
    }

    async fn committed(self: Box<Self>) {
        CommandBatch::committed(*self).await
    }
}

/// A batch's failure as the consumer should see it: an aggregate that moved meanwhile is
/// tried again shortly, uncounted; a database error goes to the consumer as it is (it waits
/// out contention, see [`crate::db::is_contention`]); anything else is an ordinary failure.
fn transient(e: BatchError) -> HandlerError {
    match e {
        BatchError::Append(AppendError::Conflict { .. }) => Box::new(Wait::shortly(format!(
            "a local step's aggregate moved meanwhile: {e}"
        ))),
        BatchError::Append(AppendError::Database(e))
        | BatchError::Store(StoreError::Database(e)) => Box::new(e),
        e => Box::new(e),
    }
}

/// The `saga_step` span of a local step: the span that what the command records names as
/// its parent ([`trace::caused_traceparent`] derives it from the command's id and the
/// consumer group running it), under the span of the orchestrator applying the input that sent
/// the command. Through a topic that span is the participant's; here, without it, the trace
/// would point at a span nobody sent. None outside a consumer, where the command's events
/// name the command's own parent.
fn step_span(command: &Envelope) -> tracing::Span {
    if !trace::hop_spans_enabled() {
        return tracing::Span::none();
    }
    let m = &command.metadata;
    let parent = m.traceparent.as_deref().and_then(TraceContext::parse);
    let own = trace::caused_traceparent(command.message_id, m.traceparent.as_deref())
        .as_deref()
        .and_then(TraceContext::parse);
    let (Some(parent), Some(own)) = (parent, own) else {
        return tracing::Span::none();
    };
    if own.span_id == parent.span_id {
        return tracing::Span::none();
    }
    let span = tracing::debug_span!(
        target: TRACE_TARGET,
        "saga_step",
        consumer_group = trace::current_group().as_deref(),
        local = true,
        message_id = %command.message_id,
        event_type = %command.event_type,
        correlation_id = %m.correlation_id,
        causation_id = m.causation_id.map(tracing::field::display),
        trace_id = %TraceIdHex(own.trace_id),
        span_id = %SpanIdHex(own.span_id),
        parent_span_id = %SpanIdHex(parent.span_id),
        saga_id = m.saga_id.as_deref(),
        saga_step = m.saga_step.as_deref(),
        attempt = m.attempt,
    );
    crate::telemetry::adopt(&span, Some(parent), own);
    span
}

/// The aggregate types whose saga commands this process runs locally.
#[derive(Default, Clone)]
pub(crate) struct LocalSteps {
    by_type: BTreeMap<&'static str, Arc<dyn LocalParticipant>>,
}

impl LocalSteps {
    /// Local steps for the given aggregate types.
    pub(crate) fn new(
        participants: impl IntoIterator<Item = (&'static str, Arc<dyn LocalParticipant>)>,
    ) -> Self {
        LocalSteps {
            by_type: participants.into_iter().collect(),
        }
    }

    /// Whether commands to `aggregate_type` run here.
    pub(crate) fn serves(&self, aggregate_type: &str) -> bool {
        self.by_type.contains_key(aggregate_type)
    }

    /// The local batches of one transaction, none begun yet.
    pub(crate) fn begin(&self) -> LocalRun {
        LocalRun {
            steps: self.clone(),
            batches: BTreeMap::new(),
        }
    }
}

/// What one transaction ran locally: a batch per aggregate type, begun when first needed.
pub(crate) struct LocalRun {
    steps: LocalSteps,
    batches: BTreeMap<&'static str, Box<dyn LocalBatch>>,
}

impl LocalRun {
    /// Runs `commands` (saga command envelopes, each to a type [`LocalSteps::serves`]) in
    /// order, each type's aggregates loaded in one read first; their outcomes, in order.
    pub(crate) async fn run_all(
        &mut self,
        tx: &mut PgConnection,
        commands: &[&Envelope],
    ) -> Result<Vec<ReplyOutcome>, HandlerError> {
        let mut by_type: BTreeMap<&'static str, Vec<&Envelope>> = BTreeMap::new();
        let mut types = Vec::with_capacity(commands.len());
        for &c in commands {
            let t = self.type_of(c)?;
            by_type.entry(t).or_default().push(c);
            types.push(t);
        }
        for (t, of_type) in &by_type {
            self.batch(t)?.load(tx, of_type).await?;
        }
        let mut outcomes = Vec::with_capacity(commands.len());
        for (c, t) in commands.iter().zip(types) {
            let batch = self.batch(t)?;
            outcomes.push(batch.run(tx, c).instrument(step_span(c)).await?);
        }
        Ok(outcomes)
    }

    fn type_of(&self, command: &Envelope) -> Result<&'static str, HandlerError> {
        let t = command
            .payload
            .get("aggregate_type")
            .and_then(|t| t.as_str())
            .unwrap_or_default();
        self.steps
            .by_type
            .get_key_value(t)
            .map(|(k, _)| *k)
            .ok_or_else(|| format!("no local participant for aggregate type {t:?}").into())
    }

    fn batch(
        &mut self,
        aggregate_type: &'static str,
    ) -> Result<&mut Box<dyn LocalBatch>, HandlerError> {
        use std::collections::btree_map::Entry;
        Ok(match self.batches.entry(aggregate_type) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(
                self.steps.by_type[aggregate_type]
                    .begin()
                    .ok_or("the application is shutting down: its repositories are gone")?,
            ),
        })
    }

    /// Appends what every batch decided, a statement per aggregate type, and returns the
    /// events' messages: the orchestrator publishes them with its commands in one append, so
    /// that its transaction appends to the embedded log once, as its last write.
    pub(crate) async fn flush(
        &mut self,
        tx: &mut PgConnection,
    ) -> Result<Vec<OutboxMessage>, HandlerError> {
        let mut messages = Vec::new();
        for batch in self.batches.values_mut() {
            messages.extend(batch.flush(tx).await?);
        }
        Ok(messages)
    }

    /// Hands every batch's states to the shared caches; only after the commit.
    pub(crate) async fn committed(self) {
        for (_, batch) in self.batches {
            batch.committed().await;
        }
    }
}
