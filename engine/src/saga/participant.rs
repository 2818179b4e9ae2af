//! A participant runs saga commands against one aggregate type and replies.
//!
//! Each command is decided on the aggregate and its events, their messages and the reply
//! are written in the consumer's transaction, with the consumer offset: a command is applied
//! exactly once even when it is delivered twice (the consumer skips a message id it already
//! applied), and a reply exists if and only if the command's effects do.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use sqlx::PgConnection;
use tokio::sync::Mutex;
use uuid::Uuid;

use super::definition::saga_stream;
use super::messages::{
    commands_topic, ReplyEvent, ReplyOutcome, SagaCommand, SagaReply, COMMAND_EVENT_TYPE,
    REPLIES_TOPIC, REPLY_EVENT_TYPE,
};
use crate::aggregate::{Aggregate, DomainError};
use crate::command::{CommandBatch, Repository};
use crate::consumer::{Consumer, ConsumerConfig, Handler, HandlerError, Hop};
use crate::doorbell::Doorbell;
use crate::envelope::{Envelope, Metadata};
use crate::outbox::OutboxMessage;
use crate::transport::{Delivery, Transport};

/// Runs saga commands for aggregates of type `A`.
pub struct Participant<A: Aggregate> {
    repo: Arc<Repository<A>>,
    batch: Mutex<Option<CommandBatch<A>>>,
}

impl<A: Aggregate> Participant<A> {
    /// A participant running its commands through `repo`, the repository the process shares for
    /// `A`, so that its commands and those of the routes queue behind each other per stream.
    pub fn new(repo: Arc<Repository<A>>) -> Self {
        Participant {
            repo,
            batch: Mutex::new(None),
        }
    }

    /// The consumer group of this participant: `participant:<aggregate type>`.
    pub fn group() -> String {
        group_of(A::TYPE)
    }

    /// The participant's consumer, on `<context>.commands`.
    pub fn consumer(self, transport: Arc<dyn Transport>, outbox_bell: Doorbell) -> Consumer {
        let topic = commands_topic(A::CONTEXT);
        let pool = self.repo.bus().pool().clone();
        Consumer::new(
            pool,
            transport,
            Arc::new(self),
            ConsumerConfig::new(Self::group(), &[topic.as_str()]),
        )
        .with_outbox_bell(outbox_bell)
    }

    /// Reads a saga command for this participant: `None` for a message that is not one, a
    /// rejection for one it cannot run.
    fn decode(envelope: &Envelope) -> Option<Result<(String, A::Command), ReplyOutcome>> {
        decode_command::<A>(envelope).map(|r| r.map(|c| (c.0, c.1)))
    }

    /// Decides one decoded command in `batch`.
    pub(crate) async fn run(
        tx: &mut PgConnection,
        batch: &mut CommandBatch<A>,
        envelope: &Envelope,
        aggregate_id: &str,
        command: &A::Command,
    ) -> Result<ReplyOutcome, HandlerError> {
        let metadata = Metadata::caused_by(envelope);
        Ok(
            match batch.execute(tx, aggregate_id, command, &metadata).await? {
                Ok(decided) => ReplyOutcome::Succeeded {
                    events: decided
                        .events
                        .into_iter()
                        .map(|e| ReplyEvent {
                            event_type: e.event_type,
                            payload: e.payload,
                        })
                        .collect(),
                },
                Err(rejection) => rejected(rejection.code(), rejection.to_string()),
            },
        )
    }
}

/// A saga command for `A`: the target id, the command and the attempt's deadline.
pub(crate) type Decoded<A> = (
    String,
    <A as Aggregate>::Command,
    Option<chrono::DateTime<chrono::Utc>>,
);

/// Reads a saga command for aggregate type `A`: `None` for a message that is not one, a
/// rejection for one that cannot run (not decodable, an invalid id); otherwise the target id,
/// the command and the attempt's deadline.
pub(crate) fn decode_command<A: Aggregate>(
    envelope: &Envelope,
) -> Option<Result<Decoded<A>, ReplyOutcome>> {
    if envelope.event_type != COMMAND_EVENT_TYPE {
        return None;
    }
    let command = match SagaCommand::deserialize(&envelope.payload) {
        Ok(c) if c.aggregate_type == A::TYPE => c,
        Ok(c) => {
            tracing::warn!(aggregate_type = %c.aggregate_type, "saga command for another participant; ignored");
            return None;
        }
        Err(e) => return Some(Err(rejected("invalid_command", e.to_string()))),
    };
    if let Err(message) = A::validate_id(&command.aggregate_id) {
        return Some(Err(rejected("invalid_id", message)));
    }
    Some(
        match serde_json::from_value::<A::Command>(command.command) {
            Ok(c) => Ok((command.aggregate_id, c, command.deadline_at)),
            Err(e) => Err(rejected("invalid_command", e.to_string())),
        },
    )
}

/// The consumer group of the participant of aggregate type `aggregate_type`.
pub fn group_of(aggregate_type: &str) -> String {
    format!("participant:{aggregate_type}")
}

pub(crate) fn rejected(code: &str, message: String) -> ReplyOutcome {
    ReplyOutcome::Rejected {
        code: code.to_owned(),
        message,
    }
}

/// The reply to `command`, addressed to its saga.
pub(crate) fn reply_message(command: &Envelope, outcome: ReplyOutcome) -> Option<OutboxMessage> {
    let saga_id = command.metadata.saga_id.clone()?;
    let saga = Uuid::parse_str(&saga_id).ok()?;
    Some(OutboxMessage {
        topic: REPLIES_TOPIC.to_owned(),
        partition_key: saga_id,
        envelope: Envelope {
            message_id: Uuid::now_v7(),
            stream_id: saga_stream(saga),
            stream_version: 0,
            event_type: REPLY_EVENT_TYPE.into(),
            schema_version: 1,
            payload: serde_json::to_value(SagaReply {
                command_id: command.message_id,
                outcome,
            })
            .expect("replies serialize"),
            metadata: Metadata::caused_by(command),
        },
    })
}

#[async_trait]
impl<A: Aggregate> Handler for Participant<A> {
    async fn handle(&self, tx: &mut PgConnection, message: &Delivery) -> Result<(), HandlerError> {
        self.handle_batch(tx, std::slice::from_ref(message)).await
    }

    async fn handle_batch(
        &self,
        tx: &mut PgConnection,
        messages: &[Delivery],
    ) -> Result<(), HandlerError> {
        // Every statement from here to the commit is the engine's own.
        sqlx::query(crate::db::REUSE_PLANS)
            .execute(&mut *tx)
            .await?;
        let decoded: Vec<(&Delivery, Result<(String, A::Command), ReplyOutcome>)> = messages
            .iter()
            .filter_map(|m| Some((m, Self::decode(&m.envelope)?)))
            .collect();
        // The batch's aggregates in one read, then each command in offset order.
        let ids: Vec<&str> = decoded
            .iter()
            .filter_map(|(_, c)| c.as_ref().ok().map(|(id, _)| id.as_str()))
            .collect();
        let mut batch = self.repo.batch();
        batch.load(tx, ids).await?;
        let mut replies = Vec::with_capacity(decoded.len());
        for (m, command) in decoded {
            let outcome = match command {
                Ok((id, command)) => Self::run(tx, &mut batch, &m.envelope, &id, &command).await?,
                Err(rejection) => rejection,
            };
            match reply_message(&m.envelope, outcome) {
                Some(reply) => replies.push(reply),
                None => {
                    tracing::warn!(message_id = %m.message_id(), "saga command without a saga id; no reply")
                }
            }
        }
        // Every stream's events with their messages in one statement, then the replies: the
        // transaction's last writes (on the embedded log they lock partition heads).
        batch.flush(tx).await?;
        self.repo.bus().store().publish(&mut *tx, &replies).await?;
        *self.batch.lock().await = Some(batch);
        Ok(())
    }

    async fn after_commit(&self) {
        if let Some(batch) = self.batch.lock().await.take() {
            batch.committed().await;
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
