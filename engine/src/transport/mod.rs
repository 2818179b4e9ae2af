//! The transport between the relay and the consumers, with Kafka's semantics: named topics,
//! a fixed number of partitions per topic, a message's partition chosen by its key, and
//! offsets that only grow within a partition.
//!
//! Two implementations share one contract (and one test suite):
//! - [`postgres::PostgresTransport`], the embedded default: a `message_log` table;
//! - [`kafka::KafkaTransport`]: Apache Kafka (or any Kafka-protocol broker) through rdkafka.
//!
//! Consumer offsets never live in the transport: consumers keep them in PostgreSQL, in the
//! same transaction as their effects, and ask the transport to read from there.

pub mod kafka;
pub mod postgres;

use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::doorbell::Doorbell;
use crate::envelope::Envelope;
pub use crate::outbox::TopicLayout;

/// A message the relay hands to a transport.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    /// The outbox row it comes from.
    pub outbox_id: i64,
    /// Physical topic.
    pub topic: String,
    /// The partition, chosen by the relay: [`TopicLayout::partition_of`] of `key`.
    pub partition: i32,
    /// The outbox row's partition key: a stream id, a saga id or a command's target stream.
    pub key: String,
    /// The envelope's header, for headers and tracing. From the relay it comes without its
    /// payload (`Null`, see [`Envelope::decode_header`]): `payload` carries the message.
    pub envelope: Envelope,
    /// The envelope encoded once, as stored in the outbox: the bytes the transport sends.
    pub payload: String,
}

/// A message delivered to a consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Physical topic.
    pub topic: String,
    /// The partition it was read from.
    pub partition: i32,
    /// Its offset in the partition; once it is applied, the group's position is `offset + 1`.
    pub offset: i64,
    /// The key it was published with.
    pub key: String,
    /// The message; for bytes that were not an envelope, see `decode_error`.
    pub envelope: Envelope,
    /// Set when the bytes on the wire were not an envelope. `envelope` then carries the raw
    /// bytes as a JSON string in `payload` under a fresh `message_id`; the consumer parks such
    /// a message in `dead_letters` without handing it to the handler.
    pub decode_error: Option<String>,
}

impl Delivery {
    /// The envelope's message id, by which consumers de-duplicate.
    pub fn message_id(&self) -> Uuid {
        self.envelope.message_id
    }

    /// A delivery for bytes that are not an envelope.
    pub fn undecodable(
        topic: String,
        partition: i32,
        offset: i64,
        key: String,
        raw: &[u8],
        error: String,
    ) -> Self {
        Delivery {
            topic,
            partition,
            offset,
            envelope: Envelope {
                message_id: Uuid::new_v4(),
                stream_id: key.clone(),
                stream_version: 0,
                event_type: "undecodable".into(),
                schema_version: 0,
                payload: serde_json::Value::String(String::from_utf8_lossy(raw).into_owned()),
                metadata: Default::default(),
            },
            key,
            decode_error: Some(error),
        }
    }
}

/// Where a reader should read one partition from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    /// Physical topic.
    pub topic: String,
    /// Partition of the topic, from 0.
    pub partition: i32,
    /// The next offset to read.
    pub offset: i64,
}

/// Why a transport could not publish or read; the caller retries.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The sink or source is unreachable or refused; retry later.
    #[error("transport unavailable: {0}")]
    Unavailable(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A transport: publishes the relay's batches, and opens readers for consumers.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// `postgres` or `kafka`.
    fn kind(&self) -> &'static str;

    /// The topic names and partition count the transport was built with.
    fn layout(&self) -> &TopicLayout;

    /// Creates the physical topics of these logical topics if they do not exist.
    async fn ensure_topics(&self, logical: &[&str]) -> Result<(), TransportError>;

    /// Publishes `batch` in order, preserving per-partition order. Returns only once every
    /// message is durably accepted by the transport (for the embedded transport: written in
    /// `tx`, which the relay commits together with the deletion of the outbox rows; the Kafka
    /// transport ignores `tx` and waits for every acknowledgement). On error nothing may be
    /// assumed published: the relay keeps the rows and sends them again.
    async fn publish(
        &self,
        tx: &mut PgConnection,
        batch: &[OutgoingMessage],
    ) -> Result<(), TransportError>;

    /// Called by the relay after the transaction of a successful [`Transport::publish`]
    /// committed, to wake readers.
    fn published(&self) {}

    /// `Some` for a transport whose log is in the engine's database, which writers append to
    /// in their own transactions ([`crate::outbox::Publishing::Log`] with this layout) instead
    /// of the outbox: the doorbell they ring after such a commit, which wakes the readers.
    /// `None` (the default) for a transport only the relay publishes to.
    fn log_bell(&self) -> Option<Doorbell> {
        None
    }

    /// The offset after the last message of each partition of a physical topic (0 for an
    /// empty partition), in partition order; for consumer lag.
    async fn end_offsets(&self, topic: &str) -> Result<Vec<i64>, TransportError>;

    /// Opens a reader that a consumer assigns partitions to.
    async fn reader(&self) -> Result<Box<dyn Reader>, TransportError>;

    /// Whether the transport can be reached (for readiness).
    async fn check(&self) -> Result<(), TransportError>;
}

/// Reads assigned partitions from given offsets.
#[async_trait]
pub trait Reader: Send {
    /// Replaces the assignment: from now on read exactly these partitions, each from its
    /// offset. Also used to rewind a partition after a failed batch.
    async fn assign(&mut self, positions: &[Position]) -> Result<(), TransportError>;

    /// Waits at most `wait` for messages and returns up to `max` of them; within a partition
    /// they come in offset order, and the next call continues after them.
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, TransportError>;
}
