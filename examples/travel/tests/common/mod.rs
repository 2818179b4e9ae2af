//! The travel binary as a separate process over a test database, on either transport, paying
//! through a fake provider the test starts.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::PgPool;

pub const TOKEN: &str = "travel-console-token";

/// A transport the service runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The embedded log in PostgreSQL.
    Postgres,
    /// Kafka, on the broker named by `KAFKA_BROKERS` (`scripts/test.sh` starts one).
    Kafka,
}

pub struct Service {
    child: Child,
    pub base: String,
    pub client: reqwest::Client,
    log: std::path::PathBuf,
    /// The command that starts this service again, with the same settings.
    launch: Box<dyn Fn() -> Command + Send + Sync>,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            if let Ok(log) = std::fs::read_to_string(&self.log) {
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                eprintln!("--- the service's last log lines ---");
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

pub fn database_url(pool: &PgPool) -> String {
    let o = pool.connect_options();
    format!(
        "postgres://{}@{}:{}/{}",
        o.get_username(),
        o.get_host(),
        o.get_port(),
        o.get_database().expect("a test database")
    )
}

/// Polls `check` every 100 ms until it holds, for at most `limit`.
pub async fn eventually<F: std::future::Future<Output = bool>>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `travel serve` over `pool` on `transport`, paying at `payment_url`, and waits until
/// it is ready.
pub async fn serve(pool: &PgPool, transport: Transport, payment_url: &str) -> Service {
    let port = free_port();
    let log = std::env::temp_dir().join(format!("travel-{}.log", uuid::Uuid::new_v4()));
    let database = database_url(pool);
    let payment_url = payment_url.to_owned();
    let brokers = (transport == Transport::Kafka).then(|| {
        std::env::var("KAFKA_BROKERS").expect(
            "KAFKA_BROKERS is not set: start a broker with scripts/broker.sh start (scripts/test.sh does)",
        )
    });
    let prefix = format!("travel{}", uuid::Uuid::new_v4().simple());
    let log_path = log.clone();
    let launch = move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_travel"));
        command
            .args(["serve", "--http-addr", &format!("127.0.0.1:{port}")])
            .env("DATABASE_URL", &database)
            .env("SAGAFLOW_DB_POOL_SIZE", "6")
            .env("SAGAFLOW_PARTITIONS", "2")
            .env("RUST_LOG", "warn")
            .env("SAGAFLOW_ADMIN_TOKEN", TOKEN)
            .env("TRAVEL_PAYMENT_URL", &payment_url)
            // A provider slower than this is given up on, and asked again with the same key.
            .env("TRAVEL_PAYMENT_TIMEOUT_MS", "1000")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        match &brokers {
            None => {
                command.env("SAGAFLOW_TRANSPORT", "postgres");
            }
            Some(brokers) => {
                command
                    .env("SAGAFLOW_TRANSPORT", "kafka")
                    .env("KAFKA_BROKERS", brokers)
                    .env("SAGAFLOW_TOPIC_PREFIX", &prefix);
            }
        }
        command
    };
    let service = Service {
        child: launch().spawn().expect("start the travel binary"),
        base: format!("http://127.0.0.1:{port}"),
        client: reqwest::Client::new(),
        log,
        launch: Box::new(launch),
    };
    service.ready().await;
    service
}

impl Service {
    /// Waits until `/readyz` answers 200.
    async fn ready(&self) {
        let ready = self.url("/readyz");
        eventually(
            Duration::from_secs(60),
            "the service to be ready",
            || async { matches!(reqwest::get(&ready).await, Ok(r) if r.status() == 200) },
        )
        .await;
    }

    /// kill -9 of the service, then the same service started again, ready.
    pub async fn crash_and_restart(&mut self) {
        self.child.kill().expect("SIGKILL the service");
        self.child.wait().expect("the killed service is reaped");
        self.child = (self.launch)()
            .spawn()
            .expect("start the travel binary again");
        self.ready().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends `command` with `payload` to aggregate `kind`/`id`; the status and the body.
    pub async fn command(
        &self,
        kind: &str,
        id: &str,
        command: &str,
        payload: Value,
    ) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(&format!("/commands/{kind}/{id}")))
            .json(&json!({"command": command, "payload": payload}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Like [`Service::command`], expecting `202`.
    pub async fn accepted(&self, kind: &str, id: &str, command: &str, payload: Value) {
        let (status, body) = self.command(kind, id, command, payload).await;
        assert_eq!(status, 202, "{kind} {id} {command}: {body}");
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn admin(&self, path: &str) -> Value {
        let r = self
            .client
            .get(self.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.json().await.unwrap()
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// A trip's status in the read model, once it holds the trip.
    pub async fn trip_status(&self, trip_id: &str) -> Option<String> {
        let (status, body) = self.get(&format!("/trips/{trip_id}")).await;
        (status == 200).then(|| body["status"].as_str().unwrap().to_owned())
    }

    /// Waits until the read model shows `trip_id` in `status`; its view.
    pub async fn trip_ends(&self, trip_id: &str, status: &str) -> Value {
        eventually(
            Duration::from_secs(40),
            &format!("trip {trip_id} {status}"),
            || async { self.trip_status(trip_id).await.as_deref() == Some(status) },
        )
        .await;
        self.get(&format!("/trips/{trip_id}")).await.1
    }

    /// A stream's state, at `version` or its last.
    pub async fn state(&self, stream_id: &str, version: Option<i64>) -> Value {
        let path = match version {
            Some(v) => format!("/streams/{stream_id}/state?at_version={v}"),
            None => format!("/streams/{stream_id}/state"),
        };
        let (status, body) = self.get(&path).await;
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    /// The event types of a saga's timeline, each with its stream, in order.
    pub async fn timeline(&self, saga_id: uuid::Uuid) -> Vec<(String, String)> {
        let (status, body) = self.get(&format!("/sagas/{saga_id}/timeline")).await;
        assert_eq!(status, 200, "{body}");
        body["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["event_type"].as_str().unwrap().to_owned(),
                    e["stream_id"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }
}

/// A trip's request payload.
pub fn trip(flight: &str, seats: u32, hotel: &str, rooms: u32, card_token: &str) -> Value {
    json!({
        "flight": flight,
        "seats": seats,
        "hotel": hotel,
        "rooms": rooms,
        "amount_cents": 48_000,
        "card_token": card_token,
    })
}
