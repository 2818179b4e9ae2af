//! Shared by the end-to-end tests: the real application served on a loopback port, over a
//! fresh database per test.
#![allow(dead_code)]

use std::net::SocketAddr;

use reqwest::StatusCode;
use sagaflow::app::Options;
use sagaflow::App;
use serde_json::Value;
use sqlx::PgPool;

pub mod binary;
pub mod engine;
pub mod schema;
pub mod transport;

/// The shop's migrations with the engine's: what every test database gets.
pub static MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> =
    std::sync::LazyLock::new(|| {
        shop()
            .migrator()
            .expect("the shop's migrations fit together")
    });

/// The whole shop, installed as the binary installs it.
pub fn shop() -> App {
    App::new("sagaflow", "test").install(sagaflow_projections::shop)
}

/// Serves `router` on an ephemeral loopback port in the background.
pub async fn spawn_server(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("a local address");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "test server stopped");
        }
    });
    addr
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub pool: PgPool,
}

/// Serves the whole application over `pool` on an ephemeral port, on the embedded transport.
pub async fn start(pool: PgPool) -> TestApp {
    start_with(pool, Options::default()).await
}

pub async fn start_with(pool: PgPool, options: Options) -> TestApp {
    let service = shop()
        .build(pool.clone(), transport::postgres(&pool), &options)
        .expect("the shop fits together");
    let addr = spawn_server(service.router).await;
    TestApp {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        pool,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        read(r).await
    }

    pub async fn post_with_key(
        &self,
        path: &str,
        key: &str,
        body: Value,
    ) -> (StatusCode, Value, bool) {
        let r = self
            .client
            .post(self.url(path))
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let replayed = r.headers().get("idempotent-replayed").is_some();
        let (s, v) = read(r).await;
        (s, v, replayed)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        read(self.client.get(self.url(path)).send().await.unwrap()).await
    }

    /// Events of the aggregates' streams: without the sagas' own, which a command whose
    /// events start a saga writes in its transaction too.
    pub async fn aggregate_events(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_id NOT LIKE 'saga-%'")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Messages in the embedded log on the aggregates' event topics (without the saga
    /// commands a command that starts a saga publishes too).
    pub async fn logged_events(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM message_log WHERE topic LIKE '%.events'")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

pub async fn read(r: reqwest::Response) -> (StatusCode, Value) {
    let status = r.status();
    let bytes = r.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        panic!(
            "status {status}: body is not JSON: {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, body)
}

/// Asserts the error shape `{"error": {"code", "message"}}` and returns the code.
pub fn error_code(body: &Value) -> &str {
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "no message in {body}"
    );
    error["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
}

/// The URL of the test database behind `pool`, for a `sagaflow` process started by a test.
pub fn database_url(pool: &PgPool) -> String {
    let o = pool.connect_options();
    format!(
        "postgres://{}@{}:{}/{}",
        o.get_username(),
        o.get_host(),
        o.get_port(),
        o.get_database().expect("test database")
    )
}
