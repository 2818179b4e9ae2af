//! Settings shared by the command line's commands. Every setting is an environment variable and
//! a flag; the defaults run on a machine with a local PostgreSQL and nothing else.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use sqlx::PgPool;

use crate::http::CommandLimits;
use crate::transport::kafka::{KafkaConfig, KafkaTransport};
use crate::transport::postgres::PostgresTransport;
use crate::transport::{TopicLayout, Transport, TransportError};

/// The database URL used when `DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/sagaflow";

/// Where the database is.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL; the database is created if it does not exist.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, global = true)]
    pub database_url: String,
    /// Maximum connections in the pool.
    #[arg(
        long,
        env = "SAGAFLOW_DB_POOL_SIZE",
        default_value_t = 16,
        global = true
    )]
    pub db_pool_size: u32,
    /// At start-up, how long to wait for a database that is unreachable (down, restarting,
    /// out of connections), and then for the Kafka broker, before giving up with an error;
    /// retried with backoff meanwhile.
    #[arg(long, env = "SAGAFLOW_DB_WAIT", default_value = "60s", value_parser = parse_duration, global = true)]
    pub db_wait: Duration,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Prints `url` with its password replaced, for logs.
pub fn mask_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("****"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Which transport carries messages between the parts of the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportKind {
    /// The embedded log in PostgreSQL: nothing else to run.
    Postgres,
    /// Apache Kafka or another Kafka-protocol broker.
    Kafka,
}

/// Which transport carries messages, and its topic layout.
#[derive(Debug, Clone, Args)]
pub struct TransportArgs {
    /// Transport between relay and consumers.
    #[arg(
        long,
        env = "SAGAFLOW_TRANSPORT",
        value_enum,
        default_value = "postgres",
        global = true
    )]
    pub transport: TransportKind,
    /// Kafka bootstrap servers (host:port,…), required with `--transport kafka`.
    #[arg(long, env = "KAFKA_BROKERS", global = true)]
    pub kafka_brokers: Option<String>,
    /// Prefix of every topic: `<prefix>.<context>.events`.
    #[arg(
        long,
        env = "SAGAFLOW_TOPIC_PREFIX",
        default_value = "sagaflow",
        global = true
    )]
    pub topic_prefix: String,
    /// Partitions per topic; fixed for the life of a deployment.
    #[arg(long, env = "SAGAFLOW_PARTITIONS", default_value_t = 8, global = true)]
    pub partitions: i32,
}

/// How `serve` bounds its work: shutdown, and the command routes under overload.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Operations")]
pub struct OperationsArgs {
    /// Longest graceful shutdown after SIGTERM or SIGINT: in-flight requests finish, then the
    /// background components finish their batch. Past it the process exits with status 1.
    /// `30s`, `500ms`, `2m`, or a number of seconds.
    #[arg(long, env = "SAGAFLOW_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// After SIGTERM or SIGINT, keep serving this long while `/readyz` answers 503
    /// `draining`, so that load balancers stop sending traffic before the listener closes.
    /// Counts towards the shutdown timeout.
    #[arg(long, env = "SAGAFLOW_DRAIN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub drain_delay: Duration,
    /// Command requests (POST outside /admin/) executed at once; more are answered
    /// 503 `overloaded` with `Retry-After: 1` at once. Queries and health are not limited.
    #[arg(long, env = "SAGAFLOW_MAX_INFLIGHT_COMMANDS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_inflight_commands: u32,
    /// A command request still running after this long is answered 503 `command_timeout`
    /// (it may or may not have been applied; retry with the same Idempotency-Key).
    #[arg(long, env = "SAGAFLOW_COMMAND_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub command_timeout: Duration,
    /// Run sagas' commands to this application's participants in the orchestrator's
    /// transaction, with the saga's next step (local steps), instead of a hop through each
    /// participant's topic; `false` sends every command through its topic. A saga keeps the
    /// way it started with for its whole life.
    #[arg(long, env = "SAGAFLOW_LOCAL_STEPS", default_value_t = true, action = clap::ArgAction::Set)]
    pub local_steps: bool,
}

impl TransportArgs {
    /// The topic layout these settings describe.
    pub fn layout(&self) -> TopicLayout {
        TopicLayout {
            prefix: self.topic_prefix.clone(),
            partitions: self.partitions,
        }
    }

    /// The transport these settings choose, with the logical `topics` created.
    pub async fn connect(
        &self,
        pool: &PgPool,
        topics: &[String],
    ) -> anyhow::Result<Arc<dyn Transport>> {
        self.connect_waiting(pool, topics, Duration::ZERO).await
    }

    /// [`TransportArgs::connect`], waiting up to `wait` (with backoff) for a broker that is
    /// unreachable: a process started while its broker is down or cut off from it does not
    /// exit at once.
    pub async fn connect_waiting(
        &self,
        pool: &PgPool,
        topics: &[String],
        wait: Duration,
    ) -> anyhow::Result<Arc<dyn Transport>> {
        anyhow::ensure!(self.partitions > 0, "partitions must be positive");
        let transport: Arc<dyn Transport> = match self.transport {
            TransportKind::Postgres => {
                Arc::new(PostgresTransport::new(pool.clone(), self.layout()))
            }
            TransportKind::Kafka => {
                let brokers = self
                    .kafka_brokers
                    .clone()
                    .context("SAGAFLOW_TRANSPORT=kafka needs KAFKA_BROKERS (or --kafka-brokers)")?;
                Arc::new(KafkaTransport::new(KafkaConfig::new(
                    brokers,
                    self.layout(),
                ))?)
            }
        };
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        let until = std::time::Instant::now() + wait;
        let backoff =
            crate::backoff::Backoff::unlimited(Duration::from_millis(250), Duration::from_secs(5));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let pause = backoff.random_delay(attempt);
            match transport.ensure_topics(&topics).await {
                Ok(()) => return Ok(transport),
                Err(e @ TransportError::Unavailable(_))
                    if std::time::Instant::now() + pause < until =>
                {
                    tracing::warn!(transport = transport.kind(), error = %e, retry_in_ms = pause.as_millis() as u64, "transport unreachable at start-up; waiting");
                    tokio::time::sleep(pause).await;
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("creating topics on the {} transport", transport.kind())
                    })
                }
            }
        }
    }
}

/// How long the tables that grow with traffic keep what they no longer need (see
/// [`crate::ops::retention`]). Pruned by the process that runs the relay.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Retention")]
pub struct RetentionArgs {
    /// Messages of the embedded log that every registered consumer group committed are kept
    /// this long (the log never loses a message a group has not committed).
    #[arg(long, env = "SAGAFLOW_RETAIN_LOG", default_value = "1h", value_parser = parse_duration)]
    pub retain_log: Duration,
    /// Message ids consumer groups recorded to skip redeliveries are kept this long.
    #[arg(long, env = "SAGAFLOW_RETAIN_PROCESSED", default_value = "7d", value_parser = parse_duration)]
    pub retain_processed: Duration,
    /// An `Idempotency-Key` answers its first response for this long; after it, a repeat runs
    /// as a new request.
    #[arg(long, env = "SAGAFLOW_RETAIN_IDEMPOTENCY_KEYS", default_value = "24h", value_parser = parse_duration)]
    pub retain_idempotency_keys: Duration,
    /// Retried and discarded dead letters are kept this long (parked ones until an operator
    /// acts).
    #[arg(long, env = "SAGAFLOW_RETAIN_DEAD_LETTERS", default_value = "7d", value_parser = parse_duration)]
    pub retain_dead_letters: Duration,
}

impl RetentionArgs {
    /// The retention these settings describe.
    pub fn retention(&self) -> crate::ops::Retention {
        crate::ops::Retention {
            log: self.retain_log,
            processed: self.retain_processed,
            idempotency_keys: self.retain_idempotency_keys,
            dead_letters: self.retain_dead_letters,
            ..Default::default()
        }
    }
}

impl OperationsArgs {
    /// The command routes' limits these settings describe.
    pub fn command_limits(&self) -> CommandLimits {
        CommandLimits {
            max_in_flight: self.max_inflight_commands as usize,
            timeout: self.command_timeout,
        }
    }
}

/// Parses `30s`, `500ms`, `2m`, `1h`, `7d` or a plain number of seconds (`1.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 30s, 500ms or 2m"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?}: use ms, s, m, h or d"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{s:?}: {e}"))
}

/// Prints `Some(secret)` as `****` and `None` as `(unset)`, for logs.
pub fn mask_secret(secret: Option<&str>) -> &'static str {
    match secret {
        Some(s) if !s.is_empty() => "****",
        _ => "(unset)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_or_without_a_unit() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("ten").is_err());
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn secrets_and_passwords_are_masked() {
        assert_eq!(mask_secret(Some("hunter2")), "****");
        assert_eq!(mask_secret(None), "(unset)");
        assert_eq!(
            mask_url("postgres://app:hunter2@db:5432/sagaflow"),
            "postgres://app:****@db:5432/sagaflow"
        );
    }
}
