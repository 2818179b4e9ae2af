//! Transports for the contract tests: the embedded one, and Kafka on the broker that
//! `scripts/test.sh` starts (KAFKA_BROKERS), each test under its own topic prefix.

use std::sync::Arc;
use std::time::Duration;

use sagaflow_engine::transport::kafka::{KafkaConfig, KafkaTransport};
use sagaflow_engine::transport::postgres::PostgresTransport;
use sagaflow_engine::transport::{TopicLayout, Transport};
use sqlx::PgPool;
use uuid::Uuid;

pub const PARTITIONS: i32 = 4;

pub fn layout() -> TopicLayout {
    TopicLayout {
        prefix: format!("t{}", Uuid::new_v4().simple()),
        partitions: PARTITIONS,
    }
}

pub fn postgres(pool: &PgPool) -> Arc<dyn Transport> {
    Arc::new(PostgresTransport::new(pool.clone(), layout()))
}

pub fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS")
        .expect("KAFKA_BROKERS is not set: start a broker with scripts/broker.sh start (scripts/test.sh does)")
}

pub fn kafka_on(brokers: &str) -> Arc<dyn Transport> {
    let mut config = KafkaConfig::new(brokers, layout());
    config.delivery_timeout = Duration::from_secs(10);
    config.overrides = vec![
        ("reconnect.backoff.max.ms".into(), "1000".into()),
        ("socket.timeout.ms".into(), "5000".into()),
    ];
    Arc::new(KafkaTransport::new(config).expect("kafka transport"))
}

pub fn kafka() -> Arc<dyn Transport> {
    kafka_on(&kafka_brokers())
}

/// Creates `topics` on the transport.
pub async fn with_topics(transport: Arc<dyn Transport>, topics: &[&str]) -> Arc<dyn Transport> {
    transport
        .ensure_topics(topics)
        .await
        .expect("create topics");
    transport
}

/// Polls `check` every 100 ms until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
