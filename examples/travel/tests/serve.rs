//! The travel service as its own binary: `travel serve` over a fresh database books a small
//! party's trip and rejects a large party's, through its saga, over HTTP; its console finds the
//! rejected trip's saga by the trip's id and shows why it ended, as it does for any service.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::PgPool;

const TOKEN: &str = "travel-console-token";

struct Service {
    child: Child,
    base: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn database_url(pool: &PgPool) -> String {
    let o = pool.connect_options();
    format!(
        "postgres://{}@{}:{}/{}",
        o.get_username(),
        o.get_host(),
        o.get_port(),
        o.get_database().expect("a test database")
    )
}

async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn serve(pool: &PgPool) -> Service {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_travel"))
        .args(["serve", "--http-addr", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", database_url(pool))
        .env("SAGAFLOW_DB_POOL_SIZE", "6")
        .env("SAGAFLOW_PARTITIONS", "2")
        .env("RUST_LOG", "warn")
        .env("SAGAFLOW_ADMIN_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .spawn()
        .expect("start the travel binary");
    let service = Service {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let ready = format!("{}/readyz", service.base);
    eventually("the service to be ready", || async {
        matches!(reqwest::get(&ready).await, Ok(r) if r.status() == 200)
    })
    .await;
    service
}

async fn get(url: String) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

#[sqlx::test(migrations = false)]
async fn trips_are_booked_or_rejected_by_their_saga(pool: PgPool) {
    let service = serve(&pool).await;
    let client = reqwest::Client::new();
    for (trip, travellers, saga_state, trip_status) in [
        ("t-small", 2, "completed", "confirmed"),
        ("t-large", 9, "compensated", "rejected"),
    ] {
        let r = client
            .post(format!("{}/commands/trip/{trip}", service.base))
            .json(&json!({"command": "request", "payload": {"destination": "Lisbon", "travellers": travellers}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
        let saga = format!(
            "{}/sagas/{}",
            service.base,
            travel::booking::saga_id_of(trip)
        );
        eventually(&format!("the saga of {trip}"), || async {
            get(saga.clone()).await["state"] == saga_state
        })
        .await;
        let state = get(format!("{}/streams/trip-{trip}/state", service.base)).await;
        assert_eq!(state["state"]["status"], trip_status, "{state}");
    }
    // The document is the travel service's own.
    let doc = get(format!("{}/openapi.json", service.base)).await;
    assert_eq!(doc["info"]["title"], "travel");
    assert!(doc["paths"]["/commands/trip/{aggregate_id}"].is_object());
    assert!(doc["paths"].get("/orders").is_none());

    // The console is the travel service's too: the rejected trip's id leads to its saga, whose
    // path shows where it broke and how it was undone.
    let console = reqwest::get(format!("{}/console", service.base))
        .await
        .unwrap();
    assert_eq!(console.status(), 200);
    assert!(console.text().await.unwrap().contains("travel"));
    let admin = |path: String| {
        let client = client.clone();
        async move {
            let r = client.get(path).bearer_auth(TOKEN).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let found = admin(format!("{}/admin/console/search?q=t-large", service.base)).await;
    let saga = travel::booking::saga_id_of("t-large").to_string();
    assert_eq!(found["matches"][0]["kind"], "saga", "{found}");
    assert_eq!(found["matches"][0]["id"], saga.as_str());
    assert_eq!(found["matches"][1]["id"], "trip-t-large");
    let detail = admin(format!("{}/admin/console/sagas/{saga}", service.base)).await;
    let path: Vec<String> = detail["path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            format!(
                "{}:{}:{}",
                n["kind"].as_str().unwrap(),
                n["name"].as_str().unwrap(),
                n["status"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(path[0], "step:approve:failed", "{path:?}");
    assert_eq!(path[1], "step:confirm:pending", "{path:?}");
    assert!(path[2].starts_with("failure:approve:"), "{path:?}");
    assert_eq!(path[3], "final:on_compensated:succeeded", "{path:?}");
    assert_eq!(path[4], "end:compensated:compensated", "{path:?}");
    let app = admin(format!("{}/admin/console/app", service.base)).await;
    assert_eq!(app["name"], "travel");
    assert_eq!(app["sagas"][0]["started_by"], "trip");
}
