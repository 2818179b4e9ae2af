//! PostgreSQL stopped for seconds under traffic, then started again: the engine answers 503
//! with `Retry-After` meanwhile (never a 500), `/readyz` says why, the relay, consumers and
//! orchestrator resume by themselves, and every accepted order's saga completes.
//!
//! This test stops the server every test shares, so it is the only test of its binary (test
//! binaries run one after another). It needs `pg_ctlcluster` and the rights to run it; without
//! them it says so and passes.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::binary::Binary;
use common::engine::wait_terminal;
use common::transport::eventually;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// The cluster `pg_ctlcluster` manages, as `<version> main`, if there is one to manage.
fn cluster() -> Option<String> {
    let versions = std::fs::read_dir("/etc/postgresql").ok()?;
    let version = versions
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .max()?;
    let ok = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "status"])
        .status()
        .ok()?
        .success();
    ok.then_some(version)
}

fn pg_ctl(version: &str, action: &str) {
    let mut args = vec!["--skip-systemctl-redirect", version, "main", action];
    if action == "stop" {
        args.extend(["-m", "fast"]);
    }
    let status = Command::new("pg_ctlcluster").args(&args).status().unwrap();
    assert!(status.success(), "pg_ctlcluster {action}");
}

#[sqlx::test(migrator = "common::MIGRATOR")]
async fn the_engine_waits_out_a_stopped_database_and_loses_nothing(pool: PgPool) {
    let Some(version) = cluster() else {
        eprintln!("skipped: no PostgreSQL cluster that pg_ctlcluster can stop and start here");
        return;
    };
    let binary = Binary::start(&pool, &[("SAGAFLOW_COMMAND_TIMEOUT", "30s")]).await;
    let base = binary.base.clone();
    let client = reqwest::Client::new();
    let customer = Uuid::now_v7();
    for (path, body) in [
        (
            "/inventory/OUT-1/restock".to_owned(),
            json!({"quantity": 100_000}),
        ),
        (
            format!("/accounts/{customer}/deposits"),
            json!({"amount_cents": 1_000_000_000}),
        ),
    ] {
        let r = client
            .post(format!("{base}{path}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }

    // Orders, one at a time, each retried with its key until it is accepted.
    let stop = Arc::new(AtomicBool::new(false));
    let answers: Arc<Mutex<Vec<(u16, bool, String)>>> = Arc::default();
    let placing = {
        let (stop, answers, client, base) =
            (stop.clone(), answers.clone(), client.clone(), base.clone());
        tokio::spawn(async move {
            let mut sagas = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = format!("outage-{n}");
                loop {
                    let r = client
                        .post(format!("{base}/orders"))
                        .header("Idempotency-Key", &key)
                        .timeout(Duration::from_secs(40))
                        .json(&json!({"customer_id": customer, "lines": [
                            {"sku": "OUT-1", "quantity": 1, "unit_price_cents": 100}]}))
                        .send()
                        .await
                        .unwrap();
                    let status = r.status().as_u16();
                    let retry_after = r.headers().contains_key("retry-after");
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    answers.lock().unwrap().push((
                        status,
                        retry_after,
                        body["error"]["code"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    ));
                    if status == 202 {
                        sagas.push(body["saga_id"].as_str().unwrap().parse::<Uuid>().unwrap());
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sagas
        })
    };

    tokio::time::sleep(Duration::from_secs(2)).await;
    pg_ctl(&version, "stop");
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["status"], "not_ready", "{ready}");
    let why = ready["checks"]["database"].as_str().unwrap();
    assert!(why.contains("connecting"), "readiness says why: {why}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    pg_ctl(&version, "start");
    eventually(
        Duration::from_secs(30),
        "the engine ready again",
        || async {
            matches!(client.get(format!("{base}/readyz")).send().await,
            Ok(r) if r.status() == StatusCode::OK)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let sagas = placing.await.unwrap();

    let answers = answers.lock().unwrap().clone();
    let refused: Vec<&(u16, bool, String)> = answers.iter().filter(|a| a.0 != 202).collect();
    assert!(!refused.is_empty(), "the outage was felt");
    for (status, retry_after, code) in &refused {
        assert_eq!(*status, 503, "{code}");
        assert!(retry_after, "a 503 says when to retry");
    }
    // Every accepted order's saga completes: nothing accepted was lost.
    wait_terminal(&pool, &sagas, Duration::from_secs(60)).await;
    let completed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sagas WHERE saga_id = ANY($1) AND state = 'completed'",
    )
    .bind(&sagas)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(completed, sagas.len() as i64);
    let reserved: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE stream_id = 'inventory-OUT-1' AND event_type = 'stock_reserved'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(reserved, sagas.len() as i64, "each order reserved once");
    drop(binary);
}
