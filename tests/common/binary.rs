//! The `sagaflow` binary as a separate process over a test database.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use sqlx::PgPool;
use uuid::Uuid;

use super::transport::eventually;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `sagaflow` binary serving a test database; its log goes to a file shown on failure.
pub struct Binary {
    pub child: Child,
    pub base: String,
    log: std::path::PathBuf,
}

impl Binary {
    pub async fn start(pool: &PgPool, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("sagaflow-binary-{}.log", Uuid::new_v4()));
        let file = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_sagaflow"));
        command
            .args(["serve", "--http-addr", &format!("127.0.0.1:{port}")])
            .env("DATABASE_URL", super::database_url(pool))
            .env("SAGAFLOW_DB_POOL_SIZE", "8")
            .env("SAGAFLOW_TRANSPORT", "postgres")
            .env("SAGAFLOW_PARTITIONS", "4")
            .env("RUST_LOG", "info,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("start the sagaflow binary");
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        eventually(Duration::from_secs(30), "the binary ready", || async {
            matches!(client.get(format!("{base}/readyz")).send().await,
                Ok(r) if r.status() == StatusCode::OK)
        })
        .await;
        Binary { child, base, log }
    }

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([format!("-{signal}"), self.pid()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal}");
    }

    /// Waits at most `limit` for the process to exit; its status and how long it took.
    pub async fn wait_exit(&mut self, limit: Duration) -> (Option<i32>, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), started.elapsed());
            }
            assert!(
                started.elapsed() < limit,
                "still running {limit:?} after the signal; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
