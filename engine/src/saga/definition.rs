//! The saga DSL: a business process written top to bottom as typed steps.
//!
//! ```
//! # use sagaflow_engine::doc_fixtures::{Wallet, WalletCommand, WalletEvent};
//! use std::time::Duration;
//!
//! use sagaflow_engine::saga::{Backoff, Invoke, SagaDefinition};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Serialize, Deserialize)]
//! struct Payout {
//!     from: String,
//!     to: String,
//!     cents: u64,
//! }
//!
//! let saga = SagaDefinition::<Payout>::new("payout")
//!     .started_by::<Wallet>(|event, envelope| match event {
//!         WalletEvent::PayoutRequested { to, cents } => Some(Payout {
//!             from: envelope.stream_id.strip_prefix("wallet-")?.to_owned(),
//!             to: to.clone(),
//!             cents: *cents,
//!         }),
//!         _ => None,
//!     })
//!     .step("hold")
//!         .invoke::<Wallet>(|p| Invoke::new(&p.from, WalletCommand::Hold { hold: p.to.clone(), cents: p.cents }))
//!         .compensate::<Wallet>(|p| Invoke::new(&p.from, WalletCommand::Release { hold: p.to.clone() }))
//!         .timeout(Duration::from_secs(10))
//!         .retry(Backoff::exponential(Duration::from_millis(200), 3))
//!     .step("credit")
//!         .invoke::<Wallet>(|p| Invoke::new(&p.to, WalletCommand::Deposit { cents: p.cents }))
//!     .build();
//! assert_eq!(saga.commanded_types(), ["wallet"]);
//! ```
//!
//! The types carry the checks: a step's `invoke` fixes the participant's aggregate type, so its
//! `on_success` receives that aggregate's events and nothing else; compensations and the final
//! command are built from the saga data, never from nothing.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::messages::ReplyEvent;
use crate::aggregate::{decode_event, events_topic, Aggregate};
use crate::envelope::Envelope;
use crate::store::decode_envelope;

/// Saga data: whatever the process needs to remember, stored as JSON in the saga's events.
pub trait SagaData: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> SagaData for T {}

/// A command for one participant aggregate.
pub struct Invoke<A: Aggregate> {
    /// The id of the target aggregate (without its type prefix); the command goes to stream
    /// `<type>-<id>`.
    pub aggregate_id: String,
    /// The command the participant decides on.
    pub command: A::Command,
}

impl<A: Aggregate> Invoke<A> {
    /// A command for aggregate `aggregate_id` of type `A`.
    pub fn new(aggregate_id: impl ToString, command: A::Command) -> Self {
        Invoke {
            aggregate_id: aggregate_id.to_string(),
            command,
        }
    }

    fn erase(self) -> Result<Invocation, String> {
        Ok(Invocation {
            aggregate_type: A::TYPE.to_owned(),
            context: A::CONTEXT.to_owned(),
            aggregate_id: self.aggregate_id,
            command: serde_json::to_value(&self.command).map_err(|e| e.to_string())?,
        })
    }
}

/// A command for a participant, with its type erased: what travels in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invocation {
    /// The target aggregate's type: the participant that runs the command.
    pub aggregate_type: String,
    /// The participant's bounded context: the command goes to `<context>.commands`.
    pub context: String,
    /// The id of the target aggregate, without its type prefix.
    pub aggregate_id: String,
    /// The command in its serde form (`{"command": …, "payload": …}`).
    pub command: Value,
}

/// Retries of a step whose participant does not answer: attempt n+1 is sent after attempt n
/// timed out and a further `initial × 2^(n-1)` (capped, with up to 20 % jitter) passed. The
/// engine's one backoff policy ([`crate::backoff`]).
pub use crate::backoff::Backoff;

/// Why a saga compensated or failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// The step that failed, or that was running when the saga was aborted (empty if none was);
    /// `on_compensated` when the final command went unanswered.
    pub step: String,
    /// A stable code: the participant's rejection code, `timeout`, `compensation_timeout`,
    /// `final_command_timeout`, `saga_definition_error`, [`ABORTED`](super::ABORTED) or
    /// [`ABORTED_BY_OPERATOR`](super::ABORTED_BY_OPERATOR).
    pub code: String,
    /// A human-readable explanation.
    pub message: String,
}

type InvokeFn = Box<dyn Fn(&Value) -> Result<Vec<Invocation>, String> + Send + Sync>;
type SuccessFn = Box<dyn Fn(&Value, &[ReplyEvent]) -> Result<Value, String> + Send + Sync>;
type StartFn = Box<dyn Fn(&Envelope) -> Option<Result<Value, String>> + Send + Sync>;
type AbortFn = Box<dyn Fn(&Envelope) -> Option<String> + Send + Sync>;
type FinalFn = Box<dyn Fn(&Value, &Failure) -> Result<Option<Invocation>, String> + Send + Sync>;

/// One step, type-erased.
pub struct StepDef {
    /// The step's name, unique within its saga; it names the step in events, metadata and metrics.
    pub name: &'static str,
    /// The aggregate type its commands go to.
    pub invokes: &'static str,
    /// The aggregate type its compensation's commands go to, if it has one.
    pub compensates: Option<&'static str>,
    pub(crate) invoke: InvokeFn,
    pub(crate) on_success: Option<SuccessFn>,
    pub(crate) compensate: Option<InvokeFn>,
    /// How long an attempt of the step waits for its replies; 10 s by default.
    pub timeout: Duration,
    /// How often the step is sent when its replies time out; 3 attempts from 500 ms by default.
    pub retry: Backoff,
    /// How long an attempt of the compensation waits for its replies; 10 s by default.
    pub compensation_timeout: Duration,
    /// How often the compensation is sent when its replies time out; 10 attempts from 1 s by
    /// default. After the last one the saga is `failed`.
    pub compensation_retry: Backoff,
}

impl StepDef {
    /// Whether the step has a compensation: a step without one is skipped when compensating.
    pub fn has_compensation(&self) -> bool {
        self.compensate.is_some()
    }
}

/// A saga definition, ready for the orchestrator.
pub struct Saga {
    /// The saga type's name, unique within an application: it derives the saga ids
    /// ([`saga_id`]) and names the type in the `sagas` read model and the metrics.
    pub name: &'static str,
    /// The aggregate type whose events start it (`started_by`).
    pub started_by: Option<&'static str>,
    /// The aggregate types whose events abort it (`aborted_by`).
    pub aborted_by: Vec<&'static str>,
    /// The aggregate type the command sent after compensating goes to (`on_compensated`).
    pub final_command_to: Option<&'static str>,
    pub(crate) start_topic: Option<String>,
    pub(crate) start: Option<StartFn>,
    pub(crate) abort_topics: Vec<String>,
    pub(crate) aborts: Vec<AbortFn>,
    /// The steps, in the order they run; compensations run in reverse order.
    pub steps: Vec<StepDef>,
    pub(crate) on_compensated: Option<FinalFn>,
}

impl Saga {
    /// The id of the saga started by an event of `stream_id`: the same event, delivered
    /// twice, names the same saga, which therefore starts once.
    pub fn id_for(&self, stream_id: &str) -> Uuid {
        saga_id(self.name, stream_id)
    }

    /// Logical topics the orchestrator must consume for this saga (start and abort events).
    pub fn event_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self
            .start_topic
            .iter()
            .chain(&self.abort_topics)
            .cloned()
            .collect();
        topics.sort();
        topics.dedup();
        topics
    }

    /// The saga data if `envelope` starts this saga.
    pub fn try_start(&self, envelope: &Envelope) -> Option<Result<Value, String>> {
        self.start.as_ref().and_then(|f| f(envelope))
    }

    /// The reason if `envelope` aborts a running instance of this saga.
    pub fn try_abort(&self, envelope: &Envelope) -> Option<String> {
        self.aborts.iter().find_map(|f| f(envelope))
    }

    /// Every aggregate type this saga sends commands to (steps, compensations, the final
    /// command), sorted: each must be served by a participant.
    pub fn commanded_types(&self) -> Vec<&'static str> {
        let mut types: Vec<&'static str> = self
            .steps
            .iter()
            .flat_map(|s| std::iter::once(s.invokes).chain(s.compensates))
            .chain(self.final_command_to)
            .collect();
        types.sort_unstable();
        types.dedup();
        types
    }

    pub(crate) fn final_command(
        &self,
        data: &Value,
        failure: &Failure,
    ) -> Result<Option<Invocation>, String> {
        match &self.on_compensated {
            Some(f) => f(data, failure),
            None => Ok(None),
        }
    }
}

/// The namespace of saga ids (UUIDv5 over `<saga name>:<stream id>`).
const SAGA_NAMESPACE: Uuid = Uuid::from_u128(0x5a6a_f10e_0000_4000_8000_5a6a_f10e_0001);

/// The id of the saga `name` started by an event of `stream_id`.
pub fn saga_id(name: &str, stream_id: &str) -> Uuid {
    Uuid::new_v5(&SAGA_NAMESPACE, format!("{name}:{stream_id}").as_bytes())
}

/// The stream holding a saga's own events.
pub fn saga_stream(saga_id: Uuid) -> String {
    format!("saga-{saga_id}")
}

/// Builds a [`Saga`] over data of type `D`.
pub struct SagaDefinition<D: SagaData> {
    saga: Saga,
    _data: PhantomData<fn() -> D>,
}

fn from_data<D: SagaData>(v: &Value) -> Result<D, String> {
    D::deserialize(v).map_err(|e| format!("saga data does not decode: {e}"))
}

fn to_data<D: SagaData>(d: &D) -> Result<Value, String> {
    serde_json::to_value(d).map_err(|e| e.to_string())
}

fn is_stream_of<A: Aggregate>(envelope: &Envelope) -> bool {
    envelope
        .stream_id
        .strip_prefix(A::TYPE)
        .is_some_and(|rest| rest.starts_with('-'))
}

impl<D: SagaData> SagaDefinition<D> {
    /// An empty definition named `name`; the name also derives every saga id ([`saga_id`]), so it
    /// must never change once sagas of the type ran.
    pub fn new(name: &'static str) -> Self {
        SagaDefinition {
            saga: Saga {
                name,
                started_by: None,
                aborted_by: Vec::new(),
                final_command_to: None,
                start_topic: None,
                start: None,
                abort_topics: Vec::new(),
                aborts: Vec::new(),
                steps: Vec::new(),
                on_compensated: None,
            },
            _data: PhantomData,
        }
    }

    /// Starts a saga for each event of `A` for which `start` returns data. The saga id is
    /// derived from the event's stream, so a redelivered event never starts a second saga.
    pub fn started_by<A: Aggregate>(
        mut self,
        start: impl Fn(&A::Event, &Envelope) -> Option<D> + Send + Sync + 'static,
    ) -> Self {
        self.saga.started_by = Some(A::TYPE);
        self.saga.start_topic = Some(events_topic::<A>());
        self.saga.start = Some(Box::new(move |envelope| {
            if !is_stream_of::<A>(envelope) {
                return None;
            }
            let event = decode_envelope::<A::Event>(envelope).ok()?;
            start(&event, envelope).map(|d| to_data(&d))
        }));
        self
    }

    /// Aborts the running saga of the same stream (the one `started_by` started) when `abort`
    /// returns a reason: the completed steps, and the current one, are compensated.
    pub fn aborted_by<A: Aggregate>(
        mut self,
        abort: impl Fn(&A::Event) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.saga.aborted_by.push(A::TYPE);
        self.saga.abort_topics.push(events_topic::<A>());
        self.saga.aborts.push(Box::new(move |envelope| {
            if !is_stream_of::<A>(envelope) {
                return None;
            }
            abort(&decode_envelope::<A::Event>(envelope).ok()?)
        }));
        self
    }

    /// Adds the next step.
    pub fn step(self, name: &'static str) -> StepBuilder<D> {
        StepBuilder { def: self, name }
    }

    /// The command sent once every completed step was compensated (for example, reject the
    /// order), built from the saga data and the reason.
    pub fn on_compensated<A: Aggregate>(
        mut self,
        f: impl Fn(&D, &Failure) -> Option<Invoke<A>> + Send + Sync + 'static,
    ) -> Self {
        self.saga.final_command_to = Some(A::TYPE);
        self.saga.on_compensated = Some(Box::new(move |data, failure| {
            let d = from_data::<D>(data)?;
            f(&d, failure).map(Invoke::erase).transpose()
        }));
        self
    }

    /// The definition, for the orchestrator.
    pub fn build(self) -> Arc<Saga> {
        Arc::new(self.saga)
    }
}

/// A step being defined: first say what it invokes.
pub struct StepBuilder<D: SagaData> {
    def: SagaDefinition<D>,
    name: &'static str,
}

impl<D: SagaData> StepBuilder<D> {
    /// The step sends one command to an aggregate of type `A`.
    pub fn invoke<A: Aggregate>(
        self,
        f: impl Fn(&D) -> Invoke<A> + Send + Sync + 'static,
    ) -> StepWith<D, A> {
        self.invoke_each::<A>(move |d| vec![f(d)])
    }

    /// The step sends several commands (one per room of a booking, say) to aggregates of type `A`;
    /// it succeeds when all succeed and fails when any is rejected.
    pub fn invoke_each<A: Aggregate>(
        self,
        f: impl Fn(&D) -> Vec<Invoke<A>> + Send + Sync + 'static,
    ) -> StepWith<D, A> {
        StepWith {
            def: self.def,
            step: StepDef {
                name: self.name,
                invokes: A::TYPE,
                compensates: None,
                invoke: erase_invocations(f),
                on_success: None,
                compensate: None,
                timeout: Duration::from_secs(10),
                retry: Backoff::exponential(Duration::from_millis(500), 3),
                compensation_timeout: Duration::from_secs(10),
                compensation_retry: Backoff::exponential(Duration::from_secs(1), 10),
            },
            _a: PhantomData,
        }
    }
}

fn erase_invocations<D: SagaData, A: Aggregate>(
    f: impl Fn(&D) -> Vec<Invoke<A>> + Send + Sync + 'static,
) -> InvokeFn {
    Box::new(move |data| {
        let d = from_data::<D>(data)?;
        f(&d).into_iter().map(Invoke::erase).collect()
    })
}

/// A step that invokes aggregates of type `A`.
pub struct StepWith<D: SagaData, A: Aggregate> {
    def: SagaDefinition<D>,
    step: StepDef,
    _a: PhantomData<fn() -> A>,
}

impl<D: SagaData, A: Aggregate> StepWith<D, A> {
    /// Updates the saga data from the events the participant recorded.
    pub fn on_success(mut self, f: impl Fn(&mut D, &[A::Event]) + Send + Sync + 'static) -> Self {
        self.step.on_success = Some(Box::new(move |data, replies| {
            let mut d = from_data::<D>(data)?;
            let events = replies
                .iter()
                .map(|r| decode_event::<A::Event>(&r.event_type, &r.payload))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("reply event does not decode: {e}"))?;
            f(&mut d, &events);
            to_data(&d)
        }));
        self
    }

    /// Undoes the step (sent in reverse order when a later step fails).
    pub fn compensate<B: Aggregate>(
        mut self,
        f: impl Fn(&D) -> Invoke<B> + Send + Sync + 'static,
    ) -> Self {
        self.step.compensates = Some(B::TYPE);
        self.step.compensate = Some(erase_invocations::<D, B>(move |d| vec![f(d)]));
        self
    }

    /// Undoes the step with several commands.
    pub fn compensate_each<B: Aggregate>(
        mut self,
        f: impl Fn(&D) -> Vec<Invoke<B>> + Send + Sync + 'static,
    ) -> Self {
        self.step.compensates = Some(B::TYPE);
        self.step.compensate = Some(erase_invocations::<D, B>(f));
        self
    }

    /// How long each attempt waits for its replies.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.step.timeout = timeout;
        self
    }

    /// Retries after a timeout; after the last attempt the step fails into compensation.
    pub fn retry(mut self, retry: Backoff) -> Self {
        self.step.retry = retry;
        self
    }

    /// Timeout and retries of the compensation; after the last attempt the saga is `failed`.
    pub fn compensation_retry(mut self, timeout: Duration, retry: Backoff) -> Self {
        self.step.compensation_timeout = timeout;
        self.step.compensation_retry = retry;
        self
    }

    fn finish(mut self) -> SagaDefinition<D> {
        self.def.saga.steps.push(self.step);
        self.def
    }

    /// Adds the next step.
    pub fn step(self, name: &'static str) -> StepBuilder<D> {
        self.finish().step(name)
    }

    /// See [`SagaDefinition::on_compensated`].
    pub fn on_compensated<B: Aggregate>(
        self,
        f: impl Fn(&D, &Failure) -> Option<Invoke<B>> + Send + Sync + 'static,
    ) -> SagaDefinition<D> {
        self.finish().on_compensated(f)
    }

    /// The definition, for the orchestrator.
    pub fn build(self) -> Arc<Saga> {
        self.finish().build()
    }
}

/// The stream id a command for `invocation` is keyed by.
pub fn target_stream(invocation: &Invocation) -> String {
    format!("{}-{}", invocation.aggregate_type, invocation.aggregate_id)
}
