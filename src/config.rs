//! Settings shared by the CLI's commands. Every setting is an environment variable and a flag;
//! the defaults run on a machine with a local PostgreSQL and nothing else.

use clap::{Args, ValueEnum};

/// The database URL used when `DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/sagaflow";

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
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

/// A part of the engine that a process can run. `serve --components` chooses them, so roles
/// can be split across processes and scaled or stopped on their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum Component {
    /// The HTTP API.
    Http,
    /// The outbox relay (one active per outbox shard across all processes).
    Relay,
    /// The projectors that keep the read models.
    Projections,
    /// The saga orchestrator and its deadline poller.
    Orchestrator,
    /// The inventory participant (runs saga commands on stock).
    #[value(name = "participant:inventory")]
    ParticipantInventory,
    /// The payment participant (runs saga commands on accounts).
    #[value(name = "participant:payment")]
    ParticipantPayment,
    /// The order participant (confirms and rejects orders for sagas).
    #[value(name = "participant:order")]
    ParticipantOrder,
}

impl Component {
    pub const ALL: [Component; 7] = [
        Component::Http,
        Component::Relay,
        Component::Projections,
        Component::Orchestrator,
        Component::ParticipantInventory,
        Component::ParticipantPayment,
        Component::ParticipantOrder,
    ];

    /// The name `--components` takes.
    pub fn name(self) -> &'static str {
        match self {
            Component::Http => "http",
            Component::Relay => "relay",
            Component::Projections => "projections",
            Component::Orchestrator => "orchestrator",
            Component::ParticipantInventory => "participant:inventory",
            Component::ParticipantPayment => "participant:payment",
            Component::ParticipantOrder => "participant:order",
        }
    }
}
