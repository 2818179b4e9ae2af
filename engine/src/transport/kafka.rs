//! The Kafka transport: Apache Kafka, or any Kafka-protocol broker, through rdkafka.
//!
//! Guarantees, the same as the embedded transport's:
//! - **Per-partition order.** The relay picks each message's partition itself
//!   ([`TopicLayout::partition_of`]); the producer is idempotent with `acks=all`, so within a
//!   partition the broker keeps the order in which one [`KafkaTransport::publish`] enqueued
//!   the batch, without gaps or reordering across retries.
//! - **At-least-once.** `publish` returns only after every message is acknowledged by all
//!   in-sync replicas. On any error the relay sends the whole batch again, so a message can be
//!   stored twice; consumers de-duplicate by `message_id`.
//! - **Offsets live in PostgreSQL.** Readers take partitions by manual assignment from offsets
//!   the consumer keeps itself; the Kafka group coordinator and committed offsets are unused.
//!
//! A **fatal producer error** (the broker forgot the producer id, the producer was fenced, or
//! librdkafka declared the idempotent producer unusable) would otherwise fail every later
//! publish: the transport then replaces its producer and reports the batch as unavailable, so
//! the relay resends it through the new producer. A batch not acknowledged within
//! [`KafkaConfig::delivery_timeout`] replaces the producer too, because librdkafka retries
//! some of those refusals silently until the batch times out.
//!
//! **Topics** are created only by the transport, with the layout's partition count: clients
//! never let the broker auto-create one (it would pick its own count, Tansu 4 and Kafka
//! `num.partitions`, and keys would then map to partitions that do not exist). A broker that
//! lost its topics (Tansu's memory storage after a restart) gets them back after the next
//! failed publish, so the relay's following attempt succeeds.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Delivery, OutgoingMessage, Position, Reader, TopicLayout, Transport, TransportError};
use crate::envelope::Envelope;

/// How the transport reaches the brokers.
#[derive(Clone)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// Topic names and partition count; every process of a deployment must use the same.
    pub layout: TopicLayout,
    /// librdkafka properties applied last, to every client (producer, readers, admin), so they
    /// override the transport's own settings (tests shorten timeouts with these).
    pub overrides: Vec<(String, String)>,
    /// How long publish waits for all acknowledgements before failing the batch.
    pub delivery_timeout: Duration,
}

/// Override values are left out: they may hold credentials (`sasl.password`).
impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let overridden: Vec<&str> = self.overrides.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("layout", &self.layout)
            .field("overrides", &overridden)
            .field("delivery_timeout", &self.delivery_timeout)
            .finish()
    }
}

impl KafkaConfig {
    /// No overrides; a batch fails when not acknowledged within 30 s.
    pub fn new(brokers: impl Into<String>, layout: TopicLayout) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            layout,
            overrides: Vec::new(),
            delivery_timeout: Duration::from_secs(30),
        }
    }

    /// A client configuration: the brokers, then `settings`, then the overrides.
    fn client_config(&self, settings: &[(&str, String)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        config.set("client.id", "sagaflow");
        config.set("allow.auto.create.topics", "false");
        for (key, value) in settings {
            config.set(*key, value);
        }
        for (key, value) in &self.overrides {
            config.set(key, value);
        }
        config
    }

    fn producer(&self) -> Result<FutureProducer, TransportError> {
        self.client_config(&[
            // Idempotence keeps per-partition order and drops the broker-side duplicates of
            // librdkafka's own retries; acks=all is what "durably accepted" means.
            ("enable.idempotence", "true".into()),
            ("acks", "all".into()),
            ("compression.type", "lz4".into()),
            // A few milliseconds of batching; the relay sends up to a thousand messages at
            // once, so this fills large produce requests without adding visible latency.
            ("linger.ms", "5".into()),
            ("batch.num.messages", "10000".into()),
            // librdkafka gives up on a message after this long; messages of a failed batch do
            // not pile up in the local queue while the relay resends it.
            (
                "message.timeout.ms",
                self.delivery_timeout.as_millis().max(1).to_string(),
            ),
        ])
        .create()
        .map_err(|e| unavailable("cannot create the Kafka producer", e))
    }
}

/// The Kafka transport. Cheap to share: one producer for every relay task of the process.
pub struct KafkaTransport {
    config: KafkaConfig,
    /// Replaced after a fatal error; publishes in flight keep the one they started with.
    producer: RwLock<Arc<FutureProducer>>,
    /// How often the producer was replaced.
    replacements: AtomicU64,
    topics: Arc<Topics>,
}

impl KafkaTransport {
    /// Creates the producer and the admin client. Connections are made lazily: this succeeds
    /// even when no broker can be reached (see [`Transport::check`]).
    pub fn new(config: KafkaConfig) -> Result<Self, TransportError> {
        let producer = config.producer()?;
        let admin = config
            .client_config(&[])
            .create()
            .map_err(|e| unavailable("cannot create the Kafka admin client", e))?;
        Ok(KafkaTransport {
            producer: RwLock::new(Arc::new(producer)),
            replacements: AtomicU64::new(0),
            topics: Arc::new(Topics {
                admin,
                partitions: config.layout.partitions,
                healing: AtomicBool::new(false),
            }),
            config,
        })
    }

    fn current_producer(&self) -> Arc<FutureProducer> {
        self.producer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces `broken` with a new producer, unless a concurrent publish already did.
    fn replace_producer(&self, broken: &Arc<FutureProducer>, reason: &str) {
        let mut current = self
            .producer
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if !Arc::ptr_eq(&current, broken) {
            return;
        }
        match self.config.producer() {
            Ok(fresh) => {
                let old = std::mem::replace(&mut *current, Arc::new(fresh));
                drop(current);
                let n = self.replacements.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(reason, replacements = n, "replaced the Kafka producer");
                release(old);
            }
            Err(e) => tracing::error!(error = %e, "cannot replace the broken Kafka producer"),
        }
    }
}

/// Creates physical topics, for [`Transport::ensure_topics`] and to heal lost ones.
struct Topics {
    admin: AdminClient<DefaultClientContext>,
    partitions: i32,
    /// Set while a background re-creation runs: one at a time is enough.
    healing: AtomicBool,
}

impl Topics {
    /// Creates the missing ones of `names`, then checks that every one has the layout's
    /// partition count.
    async fn create(self: &Arc<Self>, names: Vec<String>) -> Result<(), TransportError> {
        let topics: Vec<NewTopic<'_>> = names
            .iter()
            .map(|n| NewTopic::new(n, self.partitions, TopicReplication::Fixed(1)))
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = self
            .admin
            .create_topics(&topics, &options)
            .await
            .map_err(|e| unavailable("cannot create topics", e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(unavailable(&format!("cannot create topic {topic}"), code))
                }
            }
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.check_partitions(&names))
            .await
            .map_err(|e| TransportError::Unavailable(format!("metadata task failed: {e}")))?
    }

    /// Fails unless every topic has `partitions` partitions: keys would map elsewhere.
    fn check_partitions(&self, names: &[String]) -> Result<(), TransportError> {
        for topic in names {
            // A topic just created may take a moment to appear in every broker's metadata.
            let mut attempts = 0;
            let found = loop {
                let metadata = self
                    .admin
                    .inner()
                    .fetch_metadata(Some(topic), Duration::from_secs(10))
                    .map_err(|e| unavailable("cannot fetch topic metadata", e))?;
                let found = metadata
                    .topics()
                    .first()
                    .map_or(0, |t| t.partitions().len());
                attempts += 1;
                if found > 0 || attempts == 25 {
                    break found;
                }
                std::thread::sleep(Duration::from_millis(200));
            };
            if found != self.partitions as usize {
                return Err(TransportError::Unavailable(format!(
                    "topic {topic} has {found} partitions, the layout wants {}",
                    self.partitions
                )));
            }
        }
        Ok(())
    }

    /// Re-creates the topics of a failed batch in the background, in case the broker lost
    /// them; the publish that failed does not wait for it.
    fn heal(self: &Arc<Self>, batch: &[OutgoingMessage]) {
        if self.healing.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut names: Vec<String> = batch.iter().map(|m| m.topic.clone()).collect();
        names.sort_unstable();
        names.dedup();
        let this = self.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(30), this.create(names)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot re-create the batch's topics"),
                Err(_) => tracing::warn!("re-creating the batch's topics timed out"),
            }
            this.healing.store(false, Ordering::Release);
        });
    }
}

/// Drops a producer handle; the last one is dropped on a blocking thread, because dropping a
/// producer purges its queue and joins its polling thread.
fn release(producer: Arc<FutureProducer>) {
    if let Some(last) = Arc::into_inner(producer) {
        drop_off_runtime(last);
    }
}

/// Drops `value` on a blocking thread when inside a Tokio runtime, else here.
fn drop_off_runtime<T: Send + 'static>(value: T) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn_blocking(move || drop(value));
        }
        Err(_) => drop(value),
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> TransportError {
    TransportError::Unavailable(format!("{what}: {e}"))
}

/// Why `producer` must be replaced after it failed a batch with `error`, if it must.
fn replacement_reason(producer: &FutureProducer, error: &KafkaError) -> Option<String> {
    if let Some((code, reason)) = producer.client().fatal_error() {
        return Some(format!("fatal error {code}: {reason}"));
    }
    match error.rdkafka_error_code()? {
        code @ (RDKafkaErrorCode::Fatal
        | RDKafkaErrorCode::UnknownProducerId
        | RDKafkaErrorCode::InvalidProducerEpoch
        | RDKafkaErrorCode::ProducerFenced
        | RDKafkaErrorCode::OutOfOrderSequenceNumber
        | RDKafkaErrorCode::InvalidProducerIdMapping) => {
            Some(format!("the broker refused the producer: {code}"))
        }
        // librdkafka retries some refusals until the message times out, never reporting
        // them: a restarted Tansu answers UNKNOWN_PRODUCER_ID forever. A new producer costs
        // one reconnection and a new producer id, so every timeout replaces it.
        RDKafkaErrorCode::MessageTimedOut => Some("the batch was not acknowledged in time".into()),
        _ => None,
    }
}

/// The headers of a message: what a consumer or an operator can see without decoding the
/// value.
fn headers_of(m: &OutgoingMessage) -> OwnedHeaders {
    let e = &m.envelope;
    let mut headers = OwnedHeaders::new_with_capacity(6)
        .insert(header("message_id", &e.message_id.to_string()))
        .insert(header("event_type", &e.event_type))
        .insert(header("stream_id", &e.stream_id))
        .insert(header(
            "correlation_id",
            &e.metadata.correlation_id.to_string(),
        ));
    if let Some(causation) = e.metadata.causation_id {
        headers = headers.insert(header("causation_id", &causation.to_string()));
    }
    // The W3C context of the relay's publication, the parent of whoever consumes the message
    // (the envelope keeps the context of the span that wrote it).
    if let Some(traceparent) =
        crate::trace::publish_traceparent(e.message_id, e.metadata.traceparent.as_deref())
    {
        headers = headers.insert(header("traceparent", &traceparent));
    }
    headers
}

fn header<'a>(key: &'a str, value: &'a String) -> Header<'a, &'a String> {
    Header {
        key,
        value: Some(value),
    }
}

/// Enqueues the whole batch, then waits for every acknowledgement. Enqueuing first lets
/// librdkafka pack the batch into few produce requests.
async fn send_all(producer: &FutureProducer, batch: &[OutgoingMessage]) -> Result<(), KafkaError> {
    let mut acks = Vec::with_capacity(batch.len());
    for m in batch {
        let mut record = FutureRecord::to(&m.topic)
            .partition(m.partition)
            .key(&m.key)
            .payload(m.payload.as_bytes())
            .headers(headers_of(m));
        loop {
            match producer.send_result(record) {
                Ok(ack) => {
                    acks.push(ack);
                    break;
                }
                // The local queue is full: it drains as acknowledgements arrive.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }
    for ack in acks {
        match ack.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(e),
            // The producer was replaced and dropped meanwhile.
            Err(_) => return Err(KafkaError::Canceled),
        }
    }
    Ok(())
}

#[async_trait]
impl Transport for KafkaTransport {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn layout(&self) -> &TopicLayout {
        &self.config.layout
    }

    /// Creates missing topics with `layout.partitions` partitions (replication 1), and fails
    /// if an existing one has another partition count: keys would map to other partitions.
    async fn ensure_topics(&self, logical: &[&str]) -> Result<(), TransportError> {
        if logical.is_empty() {
            return Ok(());
        }
        let layout = &self.config.layout;
        self.topics
            .create(logical.iter().map(|l| layout.topic(l)).collect())
            .await
    }

    /// Ignores `tx`. Waits at most `delivery_timeout` for every acknowledgement; on error some
    /// messages may have been stored anyway (the relay's resend then duplicates them).
    async fn publish(
        &self,
        _tx: &mut PgConnection,
        batch: &[OutgoingMessage],
    ) -> Result<(), TransportError> {
        if batch.is_empty() {
            return Ok(());
        }
        let producer = self.current_producer();
        let timeout = self.config.delivery_timeout;
        let outcome = tokio::time::timeout(timeout, send_all(&producer, batch))
            .await
            .unwrap_or(Err(KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageTimedOut,
            )));
        if let Err(e) = &outcome {
            if let Some(reason) = replacement_reason(&producer, e) {
                self.replace_producer(&producer, &reason);
            }
            // Topics unknown to the broker are not always reported as such: librdkafka waits
            // for them to appear until the batch times out.
            self.topics.heal(batch);
        }
        release(producer);
        outcome.map_err(|e| unavailable("Kafka did not acknowledge the batch", e))
    }

    async fn reader(&self) -> Result<Box<dyn Reader>, TransportError> {
        Ok(Box::new(KafkaReader {
            config: self.config.clone(),
            consumer: None,
            assigned: HashMap::new(),
        }))
    }

    /// High watermarks. (Tansu's memory engine reports them wrong, see KAFKA-BROKER.md; real
    /// Kafka reports them right.)
    async fn end_offsets(&self, topic: &str) -> Result<Vec<i64>, TransportError> {
        let producer = self.current_producer();
        let topic = topic.to_owned();
        let partitions = self.config.layout.partitions;
        tokio::task::spawn_blocking(move || {
            (0..partitions)
                .map(|p| {
                    producer
                        .client()
                        .fetch_watermarks(&topic, p, Duration::from_secs(5))
                        .map(|(_, high)| high.max(0))
                        .map_err(|e| unavailable("cannot fetch watermarks", e))
                })
                .collect()
        })
        .await
        .map_err(|e| TransportError::Unavailable(format!("watermark task failed: {e}")))?
    }

    async fn check(&self) -> Result<(), TransportError> {
        let producer = self.current_producer();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(2))
                .map(drop)
                .map_err(|e| unavailable("Kafka is unreachable", e))
        })
        .await
        .map_err(|e| TransportError::Unavailable(format!("metadata task failed: {e}")))?
    }
}

/// A reader on a `StreamConsumer`: waiting is a future (cancellation-safe, no blocked thread
/// per reader as a `BaseConsumer` polled in `spawn_blocking` would need), and librdkafka keeps
/// fetching in the background, so a poll usually finds a whole batch ready.
///
/// Every assignment gets a consumer of its own. librdkafka 2.12 aborts the process
/// (`rd_kafka_assignment_partition_stopped: Assertion rktp->rktp_started failed`) when an
/// assignment replaces one whose partitions are still stopping, which happens when a broker
/// is slow to answer and the consumer rewinds twice in a row (librdkafka issue 5573, fixed
/// after the release the Rust bindings bundle). A fresh consumer has nothing to stop. It costs
/// a connection and a metadata request per assignment, and assignments happen only when
/// leases move or a batch is re-read after a failure.
struct KafkaReader {
    config: KafkaConfig,
    /// The consumer of the current assignment; none before the first.
    consumer: Option<StreamConsumer>,
    /// The current assignment.
    assigned: HashMap<String, HashSet<i32>>,
}

impl KafkaReader {
    fn create(&self) -> Result<StreamConsumer, TransportError> {
        self.config
            .client_config(&[
                // librdkafka requires a group id, but the group is never joined: partitions
                // are assigned manually and offsets are kept in PostgreSQL.
                ("group.id", format!("sagaflow-reader-{}", Uuid::new_v4())),
                ("enable.auto.commit", "false".into()),
                ("enable.auto.offset.store", "false".into()),
                ("auto.offset.reset", "earliest".into()),
                ("enable.partition.eof", "false".into()),
                // How long the broker may hold a fetch that found nothing. Kafka answers as soon
                // as a message arrives; Tansu was measured to hold it longer, so every hop of a
                // saga waited up to librdkafka's default 500 ms: `bench saga` went from 198 to
                // 403 sagas/s with 50 ms. An idle reader fetches 20 times a second.
                ("fetch.wait.max.ms", "50".into()),
            ])
            .create()
            .map_err(|e| unavailable("cannot create a Kafka consumer", e))
    }
}

impl Drop for KafkaReader {
    fn drop(&mut self) {
        // Closing a consumer blocks until librdkafka has torn it down. No TopicPartitionList
        // outlives a call here, so closing cannot hang on one.
        if let Some(consumer) = self.consumer.take() {
            drop_off_runtime(consumer);
        }
    }
}

/// What one received message becomes: a delivery, nothing (not assigned any more), or an error.
fn delivery_of(
    assigned: &HashMap<String, HashSet<i32>>,
    received: Result<BorrowedMessage<'_>, KafkaError>,
) -> Result<Option<Delivery>, KafkaError> {
    let m = received?;
    let (topic, partition, offset) = (m.topic(), m.partition(), m.offset());
    if !assigned
        .get(topic)
        .is_some_and(|ps| ps.contains(&partition))
    {
        return Ok(None);
    }
    let key = m
        .key()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_default();
    let raw = m.payload().unwrap_or_default();
    Ok(Some(match serde_json::from_slice::<Envelope>(raw) {
        Ok(envelope) => Delivery {
            topic: topic.to_owned(),
            partition,
            offset,
            key,
            envelope,
            decode_error: None,
        },
        Err(e) => {
            Delivery::undecodable(topic.to_owned(), partition, offset, key, raw, e.to_string())
        }
    }))
}

#[async_trait]
impl Reader for KafkaReader {
    async fn assign(&mut self, positions: &[Position]) -> Result<(), TransportError> {
        let mut list = TopicPartitionList::with_capacity(positions.len());
        for p in positions {
            let offset = if p.offset >= 0 {
                Offset::Offset(p.offset)
            } else {
                Offset::Beginning
            };
            list.add_partition_offset(&p.topic, p.partition, offset)
                .map_err(|e| unavailable("invalid position", e))?;
        }
        // A new consumer: nothing fetched for the old positions survives, which is what makes a
        // rewind exact.
        let consumer = self.create()?;
        let assigned = consumer.assign(&list);
        drop(list);
        assigned.map_err(|e| unavailable("cannot assign partitions", e))?;
        if let Some(old) = self.consumer.replace(consumer) {
            drop_off_runtime(old);
        }
        self.assigned.clear();
        for p in positions {
            self.assigned
                .entry(p.topic.clone())
                .or_default()
                .insert(p.partition);
        }
        Ok(())
    }

    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, TransportError> {
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        let Some(consumer) = &self.consumer else {
            // Nothing assigned yet.
            tokio::time::sleep(wait).await;
            return Ok(out);
        };
        let assigned = &self.assigned;
        let mut stream = consumer.stream();
        let deadline = tokio::time::Instant::now() + wait;
        // Wait for the first message. The only await of a poll is here, before anything was
        // taken from the consumer, so cancelling a poll loses no message.
        while out.is_empty() {
            let Ok(received) = tokio::time::timeout_at(deadline, stream.next()).await else {
                return Ok(out);
            };
            let received = received.expect("a Kafka message stream never ends");
            match delivery_of(assigned, received) {
                Ok(Some(d)) => out.push(d),
                Ok(None) => {}
                // Partition fetch errors and client-wide ones (all brokers down, …).
                Err(e) => return Err(unavailable("cannot read from Kafka", e)),
            }
        }
        // Then take what is already fetched, without waiting.
        while out.len() < max {
            let Some(Some(received)) = stream.next().now_or_never() else {
                break;
            };
            match delivery_of(assigned, received) {
                Ok(Some(d)) => out.push(d),
                Ok(None) => {}
                Err(e) => {
                    // Returning it would drop what was read; the next one is reported.
                    tracing::warn!(error = %e, "Kafka consumer error");
                    break;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    //! Against a real Kafka-protocol broker: `bash scripts/broker.sh start`, then
    //! `KAFKA_BROKERS=127.0.0.1:19092 cargo test -p sagaflow-engine kafka`. The outage and
    //! restart tests start brokers of their own through the same script.

    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::process::Command;
    use std::time::Instant;

    use serde_json::json;
    use sqlx::Connection;

    use super::*;
    use crate::envelope::Metadata;
    use rdkafka::message::Headers;

    const TOPIC: &str = "test.events";

    fn brokers() -> String {
        std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| {
            panic!("KAFKA_BROKERS is not set: start a broker with scripts/broker.sh start")
        })
    }

    /// A layout of its own per test, so tests never see each other's messages.
    fn fresh_layout() -> TopicLayout {
        TopicLayout {
            prefix: format!("test-{}", Uuid::new_v4().simple()),
            partitions: 4,
        }
    }

    fn test_config(brokers: &str, layout: &TopicLayout) -> KafkaConfig {
        let mut config = KafkaConfig::new(brokers, layout.clone());
        config.overrides = vec![
            ("reconnect.backoff.max.ms".into(), "1000".into()),
            ("socket.connection.setup.timeout.ms".into(), "3000".into()),
        ];
        config
    }

    async fn transport_on(brokers: &str, layout: &TopicLayout) -> KafkaTransport {
        let transport = KafkaTransport::new(test_config(brokers, layout)).expect("transport");
        transport
            .ensure_topics(&[TOPIC])
            .await
            .expect("topics created");
        transport
    }

    /// The relay's connection; the Kafka transport does not use it.
    async fn relay_tx() -> PgConnection {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        PgConnection::connect(&url)
            .await
            .expect("PostgreSQL on 127.0.0.1:5432")
    }

    /// Message `i` of a test: `keys` streams, each with versions 1, 2, 3, … in order.
    fn message(layout: &TopicLayout, i: usize, keys: usize) -> OutgoingMessage {
        let key = format!("stream-{}", i % keys);
        let envelope = Envelope {
            message_id: Uuid::now_v7(),
            stream_id: key.clone(),
            stream_version: (i / keys + 1) as i64,
            event_type: "Counted".into(),
            schema_version: 1,
            payload: json!({ "i": i }),
            metadata: Metadata {
                correlation_id: Uuid::now_v7(),
                causation_id: Some(Uuid::now_v7()),
                traceparent: Some(format!("00-{}-{:016x}-01", Uuid::new_v4().simple(), i)),
                ..Default::default()
            },
        };
        OutgoingMessage {
            outbox_id: i as i64 + 1,
            topic: layout.topic(TOPIC),
            partition: layout.partition_of(&key),
            payload: serde_json::to_string(&envelope).unwrap(),
            key,
            envelope,
        }
    }

    fn messages(
        layout: &TopicLayout,
        range: std::ops::Range<usize>,
        keys: usize,
    ) -> Vec<OutgoingMessage> {
        range.map(|i| message(layout, i, keys)).collect()
    }

    fn positions(layout: &TopicLayout, offsets: impl Fn(i32) -> i64) -> Vec<Position> {
        (0..layout.partitions)
            .map(|partition| Position {
                topic: layout.topic(TOPIC),
                partition,
                offset: offsets(partition),
            })
            .collect()
    }

    /// Polls until `expected` deliveries arrived (failing after 20 s), then checks that
    /// nothing more comes within half a second.
    async fn read_exactly(reader: &mut dyn Reader, expected: usize) -> Vec<Delivery> {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while out.len() < expected {
            assert!(
                Instant::now() < deadline,
                "read {} of {expected} messages",
                out.len()
            );
            out.extend(
                reader
                    .poll(300, Duration::from_secs(1))
                    .await
                    .expect("poll"),
            );
        }
        assert_eq!(out.len(), expected, "more messages than published");
        let more = reader
            .poll(100, Duration::from_millis(500))
            .await
            .expect("poll");
        assert!(
            more.is_empty(),
            "{} unexpected messages after the last one",
            more.len()
        );
        out
    }

    /// Polls until every message of `sent` arrived, maybe more than once (failing after
    /// 20 s); checks that the first copies keep per-key order and returns them.
    async fn read_at_least(reader: &mut dyn Reader, sent: &[OutgoingMessage]) -> Vec<Delivery> {
        let mut first_copies = Vec::new();
        let mut seen = HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen.len() < sent.len() {
            assert!(
                Instant::now() < deadline,
                "read {} of {} messages",
                seen.len(),
                sent.len()
            );
            for d in reader
                .poll(500, Duration::from_secs(1))
                .await
                .expect("poll")
            {
                if seen.insert(d.message_id()) {
                    first_copies.push(d);
                }
            }
        }
        let expected: HashSet<Uuid> = sent.iter().map(|m| m.envelope.message_id).collect();
        assert_eq!(seen, expected);
        assert_key_order(&first_copies);
        first_copies
    }

    /// Each key's versions come in increasing order.
    fn assert_key_order<'a>(deliveries: impl IntoIterator<Item = &'a Delivery>) {
        let mut versions: HashMap<&str, i64> = HashMap::new();
        for d in deliveries {
            let last = versions
                .insert(&d.key, d.envelope.stream_version)
                .unwrap_or(0);
            assert!(d.envelope.stream_version > last, "order of {}", d.key);
        }
    }

    /// Publishes `sent` as one batch and reads the whole topic back with a new reader.
    async fn publish_and_read_all(
        transport: &KafkaTransport,
        sent: &[OutgoingMessage],
    ) -> (Box<dyn Reader>, Vec<Delivery>) {
        transport
            .publish(&mut relay_tx().await, sent)
            .await
            .expect("published");
        read_all(transport, sent.len()).await
    }

    /// A new reader of the whole topic from offset 0, and the `n` messages it reads there.
    async fn read_all(transport: &KafkaTransport, n: usize) -> (Box<dyn Reader>, Vec<Delivery>) {
        let mut reader = transport.reader().await.unwrap();
        reader
            .assign(&positions(transport.layout(), |_| 0))
            .await
            .unwrap();
        let all = read_exactly(reader.as_mut(), n).await;
        (reader, all)
    }

    /// Publishes `sent` in batches of `batch` messages, as the relay does, and prints the rate.
    async fn publish_timed(transport: &KafkaTransport, sent: &[OutgoingMessage], batch: usize) {
        let mut tx = relay_tx().await;
        let started = Instant::now();
        for chunk in sent.chunks(batch) {
            transport.publish(&mut tx, chunk).await.expect("published");
        }
        let elapsed = started.elapsed();
        println!(
            "published {} messages in batches of {batch} in {elapsed:?}: {:.0} messages/s",
            sent.len(),
            sent.len() as f64 / elapsed.as_secs_f64()
        );
    }

    /// (offset, message id) of each delivery, by partition.
    fn offsets_and_ids(deliveries: &[Delivery]) -> BTreeMap<i32, Vec<(i64, Uuid)>> {
        by_partition(deliveries)
            .into_iter()
            .map(|(p, ds)| (p, ds.iter().map(|d| (d.offset, d.message_id())).collect()))
            .collect()
    }

    fn by_partition(deliveries: &[Delivery]) -> BTreeMap<i32, Vec<&Delivery>> {
        let mut out: BTreeMap<i32, Vec<&Delivery>> = BTreeMap::new();
        for d in deliveries {
            out.entry(d.partition).or_default().push(d);
        }
        out
    }

    /// The headers of every message of `topic`, by `message_id` header, read with a plain
    /// consumer.
    async fn headers_by_message(
        brokers: &str,
        layout: &TopicLayout,
        expected: usize,
    ) -> HashMap<String, BTreeMap<String, String>> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("headers-{}", Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut list = TopicPartitionList::new();
        for p in 0..layout.partitions {
            list.add_partition_offset(&layout.topic(TOPIC), p, Offset::Offset(0))
                .unwrap();
        }
        consumer.assign(&list).unwrap();
        drop(list);
        let mut out = HashMap::new();
        while out.len() < expected {
            let m = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
                .await
                .expect("headers read within 20 s")
                .unwrap();
            let headers: BTreeMap<String, String> = m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8(h.value.unwrap().to_vec()).unwrap(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.insert(headers["message_id"].clone(), headers);
        }
        drop_off_runtime(consumer);
        out
    }

    #[tokio::test]
    async fn kafka_publishes_a_thousand_messages_and_reads_each_once_in_key_order() {
        let brokers = brokers();
        let layout = fresh_layout();
        let transport = transport_on(&brokers, &layout).await;
        let sent = messages(&layout, 0..1000, 50);

        publish_timed(&transport, &sent, sent.len()).await;
        let (_, got) = read_all(&transport, sent.len()).await;

        // Every message once, on its key's partition, intact.
        let sent_by_id: HashMap<Uuid, &OutgoingMessage> =
            sent.iter().map(|m| (m.envelope.message_id, m)).collect();
        let mut seen = HashSet::new();
        for d in &got {
            assert!(
                seen.insert(d.message_id()),
                "{} delivered twice",
                d.message_id()
            );
            let m = sent_by_id[&d.message_id()];
            assert_eq!(d.decode_error, None);
            assert_eq!(d.topic, layout.topic(TOPIC));
            assert_eq!(d.partition, layout.partition_of(&m.key));
            assert_eq!(d.key, m.key);
            assert_eq!(d.envelope, m.envelope);
        }
        // Within a partition: offsets 0, 1, 2, … and, per key, versions 1, 2, 3, …
        for (partition, ds) in by_partition(&got) {
            let offsets: Vec<i64> = ds.iter().map(|d| d.offset).collect();
            assert_eq!(
                offsets,
                (0..ds.len() as i64).collect::<Vec<_>>(),
                "partition {partition}"
            );
            assert_key_order(ds);
        }
        assert_eq!(
            got.iter()
                .map(|d| d.key.as_str())
                .collect::<HashSet<_>>()
                .len(),
            50
        );

        let headers = headers_by_message(&brokers, &layout, sent.len()).await;
        for m in &sent {
            let e = &m.envelope;
            let expected: BTreeMap<String, String> = [
                ("message_id", e.message_id.to_string()),
                ("event_type", e.event_type.clone()),
                ("stream_id", e.stream_id.clone()),
                ("correlation_id", e.metadata.correlation_id.to_string()),
                ("causation_id", e.metadata.causation_id.unwrap().to_string()),
                ("traceparent", published_traceparent(e)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            assert_eq!(headers[&e.message_id.to_string()], expected);
        }
    }

    /// The envelope's trace, pointing at the relay's span (a context that is not valid W3C is
    /// passed on as it is).
    fn published_traceparent(e: &Envelope) -> String {
        use crate::trace::{publish_span_id, TraceContext};
        let original = e.metadata.traceparent.clone().unwrap();
        match TraceContext::parse(&original) {
            Some(c) => c.with_span(publish_span_id(e.message_id)).header(),
            None => original,
        }
    }

    #[tokio::test]
    async fn kafka_publishes_twenty_thousand_messages_in_relay_sized_batches() {
        let layout = fresh_layout();
        let transport = transport_on(&brokers(), &layout).await;
        // Connects and obtains a producer id first, as a running relay already has.
        publish_timed(&transport, &messages(&layout, 0..1, 1), 1).await;
        let sent = messages(&layout, 1..20_001, 500);

        publish_timed(&transport, &sent, 1000).await;
        let (_, got) = read_all(&transport, sent.len() + 1).await;
        let ids: HashSet<Uuid> = got.iter().map(Delivery::message_id).collect();
        assert_eq!(ids.len(), got.len(), "a message delivered twice");
        assert!(sent.iter().all(|m| ids.contains(&m.envelope.message_id)));
    }

    #[tokio::test]
    async fn kafka_reader_assigned_from_a_middle_offset_starts_there() {
        let layout = fresh_layout();
        let transport = transport_on(&brokers(), &layout).await;
        let (_, all) = publish_and_read_all(&transport, &messages(&layout, 0..200, 10)).await;
        let all = offsets_and_ids(&all);

        let mut fresh = transport.reader().await.unwrap();
        let middle = |p: i32| (all[&p].len() / 2) as i64;
        fresh.assign(&positions(&layout, middle)).await.unwrap();
        let expected: usize = all.values().map(|ds| ds.len() - ds.len() / 2).sum();
        let tail = offsets_and_ids(&read_exactly(fresh.as_mut(), expected).await);
        for (partition, got) in tail {
            let want = &all[&partition][middle(partition) as usize..];
            assert_eq!(got, want, "partition {partition}");
        }
    }

    #[tokio::test]
    async fn kafka_reader_assigned_at_the_end_reads_only_what_comes_after() {
        let layout = fresh_layout();
        let transport = transport_on(&brokers(), &layout).await;
        let mut tx = relay_tx().await;
        // Several produce requests per partition: the broker's end offset must still be right.
        for start in (0..200).step_by(50) {
            transport
                .publish(&mut tx, &messages(&layout, start..start + 50, 10))
                .await
                .unwrap();
        }
        let mut reader = transport.reader().await.unwrap();
        reader.assign(&positions(&layout, |_| 0)).await.unwrap();
        let all = read_exactly(reader.as_mut(), 200).await;
        let ends: BTreeMap<i32, i64> = by_partition(&all)
            .into_iter()
            .map(|(p, ds)| (p, ds.len() as i64))
            .collect();

        let mut fresh = transport.reader().await.unwrap();
        fresh
            .assign(&positions(&layout, |p| ends[&p]))
            .await
            .unwrap();
        assert!(fresh
            .poll(100, Duration::from_secs(1))
            .await
            .unwrap()
            .is_empty());
        let later = messages(&layout, 200..240, 10);
        transport.publish(&mut tx, &later).await.unwrap();
        let got = read_exactly(fresh.as_mut(), later.len()).await;
        for (partition, ds) in by_partition(&got) {
            let offsets: Vec<i64> = ds.iter().map(|d| d.offset).collect();
            let end = ends[&partition];
            assert_eq!(
                offsets,
                (end..end + ds.len() as i64).collect::<Vec<_>>(),
                "partition {partition}"
            );
        }
        let want: HashSet<Uuid> = later.iter().map(|m| m.envelope.message_id).collect();
        assert_eq!(
            got.iter().map(Delivery::message_id).collect::<HashSet<_>>(),
            want
        );
    }

    #[tokio::test]
    async fn kafka_reassigning_rewinds() {
        let layout = fresh_layout();
        let transport = transport_on(&brokers(), &layout).await;
        let sent = messages(&layout, 0..400, 20);
        let (mut reader, first) = publish_and_read_all(&transport, &sent).await;
        let first = offsets_and_ids(&first);

        // Read part of it again, with more already fetched: the rewind must discard that.
        reader.assign(&positions(&layout, |_| 0)).await.unwrap();
        let some = reader.poll(10, Duration::from_secs(5)).await.unwrap();
        assert!(!some.is_empty() && some.len() <= 10);
        reader.assign(&positions(&layout, |_| 0)).await.unwrap();
        let again = read_exactly(reader.as_mut(), sent.len()).await;
        assert_eq!(offsets_and_ids(&again), first);

        // Rewinding one partition and dropping the others.
        let rewound = Position {
            topic: layout.topic(TOPIC),
            partition: 2,
            offset: 3,
        };
        reader.assign(std::slice::from_ref(&rewound)).await.unwrap();
        let tail = read_exactly(reader.as_mut(), first[&2].len() - 3).await;
        assert_eq!(offsets_and_ids(&tail)[&2], first[&2][3..]);
    }

    #[tokio::test]
    async fn kafka_undecodable_message_is_delivered_as_such_and_the_next_one_follows() {
        let brokers = brokers();
        let layout = fresh_layout();
        let transport = transport_on(&brokers, &layout).await;
        let key = (0..)
            .map(|i| format!("key-{i}"))
            .find(|k| layout.partition_of(k) == 0)
            .unwrap();
        let plain: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        plain
            .send(
                FutureRecord::to(&layout.topic(TOPIC))
                    .partition(0)
                    .key(&key)
                    .payload(b"not json".as_slice()),
                Duration::from_secs(5),
            )
            .await
            .expect("raw bytes produced");
        drop_off_runtime(plain);
        let mut good = message(&layout, 0, 1);
        good.key = key.clone();
        good.partition = 0;
        transport
            .publish(&mut relay_tx().await, std::slice::from_ref(&good))
            .await
            .unwrap();

        let mut reader = transport.reader().await.unwrap();
        reader.assign(&positions(&layout, |_| 0)).await.unwrap();
        let got = read_exactly(reader.as_mut(), 2).await;
        assert_eq!(
            (got[0].partition, got[0].offset, got[0].key.as_str()),
            (0, 0, key.as_str())
        );
        assert!(got[0].decode_error.is_some());
        assert_eq!(got[0].envelope.payload, json!("not json"));
        assert_eq!(got[0].envelope.event_type, "undecodable");
        assert_eq!((got[1].partition, got[1].offset), (0, 1));
        assert_eq!(got[1].decode_error, None);
        assert_eq!(got[1].envelope, good.envelope);
    }

    #[tokio::test]
    async fn kafka_topics_have_the_layout_partition_count_and_lost_ones_come_back() {
        let brokers = brokers();
        let layout = TopicLayout {
            partitions: 6,
            ..fresh_layout()
        };
        let mut config = test_config(&brokers, &layout);
        config.delivery_timeout = Duration::from_secs(3);
        let transport = KafkaTransport::new(config).unwrap();

        // Never created: the broker must not invent it with a partition count of its own; the
        // failed publish re-creates it and the relay's next attempt goes through.
        let batch = messages(&layout, 0..60, 12);
        assert!(batch.iter().any(|m| m.partition >= 4));
        let attempts = publish_until_acknowledged(&transport, &batch, 10).await;
        assert!(attempts > 1, "published to a topic that did not exist");
        transport
            .ensure_topics(&[TOPIC])
            .await
            .expect("6 partitions");
        let mut reader = transport.reader().await.unwrap();
        reader.assign(&positions(&layout, |_| 0)).await.unwrap();
        let got = read_at_least(reader.as_mut(), &batch).await;
        assert!(got
            .iter()
            .all(|d| d.partition == layout.partition_of(&d.key)));

        // The same topic seen through a layout of another partition count is refused.
        let other = TopicLayout {
            partitions: 4,
            ..layout.clone()
        };
        let mismatched = KafkaTransport::new(test_config(&brokers, &other)).unwrap();
        match mismatched.ensure_topics(&[TOPIC]).await {
            Err(TransportError::Unavailable(e)) => {
                assert!(e.contains("has 6 partitions, the layout wants 4"), "{e}")
            }
            other => panic!("a partition count mismatch was accepted: {other:?}"),
        }
    }

    /// A Tansu broker of a test's own, on a free port, stopped when dropped.
    struct OwnBroker {
        port: u16,
    }

    impl OwnBroker {
        fn start() -> Self {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let broker = OwnBroker { port };
            broker.script("start");
            broker
        }

        fn address(&self) -> String {
            format!("127.0.0.1:{}", self.port)
        }

        /// Runs `scripts/broker.sh <command> <port>`; panics if it fails.
        fn script(&self, command: &str) {
            assert!(
                self.run(command),
                "broker.sh {command} {} failed",
                self.port
            );
        }

        fn run(&self, command: &str) -> bool {
            Command::new("bash")
                .arg(repo_root().join("scripts/broker.sh"))
                .arg(command)
                .arg(self.port.to_string())
                .stdout(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        }
    }

    impl Drop for OwnBroker {
        fn drop(&mut self) {
            self.run("stop");
            // A failed test keeps the broker's log to look at.
            if !std::thread::panicking() {
                let log = format!(".tools/tansu/broker-{}.log", self.port);
                let _ = std::fs::remove_file(repo_root().join(log));
            }
        }
    }

    fn repo_root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// Publishes `batch` until it succeeds, as the relay does; returns the attempts it took.
    async fn publish_until_acknowledged(
        transport: &KafkaTransport,
        batch: &[OutgoingMessage],
        attempts: usize,
    ) -> usize {
        let mut tx = relay_tx().await;
        for attempt in 1..=attempts {
            match transport.publish(&mut tx, batch).await {
                Ok(()) => return attempt,
                Err(e) => {
                    println!("attempt {attempt}: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        panic!("not published after {attempts} attempts");
    }

    #[tokio::test]
    async fn kafka_publish_during_an_outage_fails_and_succeeds_once_the_broker_is_back() {
        let (broker, transport) = on_own_broker().await;
        let layout = transport.layout().clone();
        let (mut reader, _) =
            publish_and_read_all(&transport, &messages(&layout, 0..100, 10)).await;
        transport.check().await.expect("reachable");

        broker.script("pause");
        let during = messages(&layout, 100..200, 10);
        let started = Instant::now();
        let outcome = transport.publish(&mut relay_tx().await, &during).await;
        let waited = started.elapsed();
        assert!(
            matches!(outcome, Err(TransportError::Unavailable(_))),
            "{outcome:?}"
        );
        assert!(
            waited < Duration::from_secs(7),
            "publish failed only after {waited:?}"
        );
        assert!(
            transport.check().await.is_err(),
            "a paused broker reported reachable"
        );
        let started = Instant::now();
        let polled = reader.poll(100, Duration::from_secs(1)).await;
        assert!(polled.map_or(true, |m| m.is_empty()));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "poll outwaited its wait"
        );

        broker.script("resume");
        let attempts = publish_until_acknowledged(&transport, &during, 20).await;
        println!("re-published after the outage in {attempts} attempt(s)");

        // The reader goes on where it was, with no further help.
        read_at_least(reader.as_mut(), &during).await;
    }

    #[tokio::test]
    async fn kafka_producer_is_recreated_after_the_broker_forgot_it() {
        let (broker, transport) = on_own_broker().await;
        let layout = transport.layout().clone();
        publish_and_read_all(&transport, &messages(&layout, 0..100, 10)).await;

        // A restarted memory broker has no topics and no producer ids any more.
        broker.script("stop");
        broker.script("start");
        let after = messages(&layout, 100..200, 10);
        let attempts = publish_until_acknowledged(&transport, &after, 20).await;
        println!("published to the restarted broker in {attempts} attempt(s)");

        assert!(transport.replacements.load(Ordering::Relaxed) >= 1);
        transport
            .ensure_topics(&[TOPIC])
            .await
            .expect("4 partitions again");

        let mut reader = transport.reader().await.unwrap();
        reader.assign(&positions(&layout, |_| 0)).await.unwrap();
        read_at_least(reader.as_mut(), &after).await;
    }

    /// A broker of the test's own (it gets paused or restarted), and a transport on it with a
    /// short delivery timeout and the test topic.
    async fn on_own_broker() -> (OwnBroker, KafkaTransport) {
        brokers();
        let broker = OwnBroker::start();
        let mut config = test_config(&broker.address(), &fresh_layout());
        config.delivery_timeout = Duration::from_secs(5);
        let transport = KafkaTransport::new(config).unwrap();
        transport.ensure_topics(&[TOPIC]).await.unwrap();
        (broker, transport)
    }
}
