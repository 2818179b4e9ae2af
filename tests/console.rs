//! The web console, in a real browser: headless Chromium driven over WebDriver (chromedriver)
//! against the whole engine over PostgreSQL. From an order's id to why its saga ended, a stream
//! stepped back in time, a parked dead letter retried and applied once, a read model rebuilt.
//! Also, without a browser: the console's access rules, its search, and its answers to bad
//! input.
//!
//! The browser test is skipped, with a message, only when Chromium or chromedriver cannot be
//! found (`scripts/test.sh` installs them). With `SAGAFLOW_SCREENSHOTS=<dir>` it saves a
//! screenshot of each page there (a relative dir is taken from the repository's root):
//! `SAGAFLOW_SCREENSHOTS=docs/screenshots cargo test --test console` makes the README's.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::engine::{everything, start_engine_with, wait_terminal, Running};
use common::transport::{eventually, postgres};
use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::StatusCode;
use sagaflow::app::Options;
use sagaflow_engine::http::admin::AdminToken;
use sagaflow_sagas::order_fulfillment::saga_id_of;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

const TOKEN: &str = "console-test-token";
const WAIT: Duration = Duration::from_secs(60);

/// The flags of a headless Chromium on a machine without a network beyond loopback.
const CHROMIUM_FLAGS: [&str; 10] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1440,1000",
];

async fn start(pool: &PgPool, token: Option<&str>) -> Running {
    let transport = postgres(pool);
    start_engine_with(
        pool,
        &transport,
        &everything(),
        Options {
            admin_token: AdminToken::new(token),
            ..Default::default()
        },
    )
    .await
}

/// The first of `names` found on `PATH`.
fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// Chromium under chromedriver, each on a fresh profile; stopped and removed when dropped.
struct Browser {
    client: Option<Client>,
    driver: Child,
    profile: PathBuf,
}

impl Browser {
    /// A browser session, or `None` (with a message) if Chromium or chromedriver is missing.
    async fn start() -> Option<Browser> {
        let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"]);
        let chromedriver = find_program(&["chromedriver"]);
        let (Some(chromium), Some(chromedriver)) = (chromium, chromedriver) else {
            eprintln!(
                "SKIPPED: the console's browser test needs chromium and chromedriver on PATH \
                 (Debian: apt-get install chromium chromium-driver; scripts/test.sh installs them)"
            );
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        // In a process group of its own, which the Chromium it starts joins: dropping the
        // browser ends both, even when a test fails before the session is closed.
        let driver = Command::new(&chromedriver)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = std::env::temp_dir().join(format!(
            "sagaflow-console-{}-{}",
            std::process::id(),
            Uuid::now_v7()
        ));
        std::fs::create_dir_all(&profile).expect("a fresh profile directory");
        let mut browser = Browser {
            client: None,
            driver,
            profile,
        };
        let webdriver = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !matches!(reqwest::get(format!("{webdriver}/status")).await, Ok(r) if r.status().is_success())
        {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| f.to_string()).collect();
        args.push(format!("--user-data-dir={}", browser.profile.display()));
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({"binary": chromium, "args": args}),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&webdriver)
            .await
            .expect("a Chromium session");
        browser.client = Some(client);
        Some(browser)
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("a session")
    }

    async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Runs `script` (a function body that returns a value) until it returns something truthy.
async fn until(client: &Client, what: &str, script: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = client
            .execute(script, vec![])
            .await
            .expect("the script runs");
        let truthy = match &v {
            Value::Null | Value::Bool(false) => false,
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Number(n) => n.as_f64() != Some(0.0),
            _ => true,
        };
        if truthy {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; the page says: {}",
            client
                .execute("return document.body.innerText", vec![])
                .await
                .unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The screenshots' folder, if asked for.
fn screenshots() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("SAGAFLOW_SCREENSHOTS")?);
    let dir = if dir.is_relative() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)
    } else {
        dir
    };
    std::fs::create_dir_all(&dir).expect("the screenshots' folder");
    Some(dir)
}

/// Saves a screenshot of the whole page as `<name>.png`, when screenshots are asked for.
async fn screenshot(client: &Client, name: &str) {
    let Some(dir) = screenshots() else { return };
    // The window as tall as the page: its content, and what the window has besides.
    let height = client
        .execute(
            "return document.body.scrollHeight + 16 + window.outerHeight - window.innerHeight",
            vec![],
        )
        .await
        .ok()
        .and_then(|v| v.as_f64())
        .unwrap_or(1000.0)
        .clamp(400.0, 4000.0) as u32;
    client.set_window_size(1440, height).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let png = client.screenshot().await.expect("a screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("write the screenshot");
    client.set_window_size(1440, 1000).await.unwrap();
}

async fn get(engine: &Running, path: &str) -> (StatusCode, Value) {
    common::read(
        reqwest::get(format!("{}{path}", engine.base))
            .await
            .unwrap(),
    )
    .await
}

async fn admin_get(engine: &Running, path: &str) -> (StatusCode, Value) {
    let r = engine
        .client
        .get(format!("{}{path}", engine.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    common::read(r).await
}

async fn click(client: &Client, css: &str) {
    client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
}

/// Accepts the confirmation an action asks for.
async fn confirm(client: &Client) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.get_alert_text().await.is_err() {
        assert!(Instant::now() < deadline, "no confirmation was asked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.accept_alert().await.unwrap();
}

/// The acceptance test of the console: an operator's minute, in a browser.
#[sqlx::test(migrator = "common::MIGRATOR")]
async fn an_operator_finds_why_a_saga_ended_and_acts_in_a_browser(pool: PgPool) {
    let Some(browser) = Browser::start().await else {
        return;
    };
    // The inventory read model cannot store SKU-PARKED while `console_broken` has a row: its
    // restock is parked in the dead letters until that is fixed. The orders of the customers
    // in `console_unconfirmable` cannot be confirmed: their saga keeps trying.
    sqlx::raw_sql(
        "CREATE TABLE console_broken (sku text NOT NULL);
         INSERT INTO console_broken VALUES ('SKU-PARKED');
         CREATE FUNCTION console_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF EXISTS (SELECT 1 FROM console_broken WHERE sku = NEW.sku) THEN
                 RAISE EXCEPTION 'disk full while writing %', NEW.sku;
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER console_refuse BEFORE INSERT OR UPDATE ON read_inventory
             FOR EACH ROW EXECUTE FUNCTION console_refuse();
         CREATE TABLE console_unconfirmable (customer_id text NOT NULL);
         CREATE FUNCTION console_refuse_confirmation() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.event_type = 'order_confirmed' AND EXISTS (
                 SELECT 1 FROM events e JOIN console_unconfirmable u
                   ON e.payload->>'customer_id' = u.customer_id
                 WHERE e.stream_id = NEW.stream_id AND e.event_type = 'order_placed') THEN
                 RAISE EXCEPTION 'disk full while confirming %', NEW.stream_id;
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER console_refuse_confirmation BEFORE INSERT ON events
             FOR EACH ROW EXECUTE FUNCTION console_refuse_confirmation();",
    )
    .execute(&pool)
    .await
    .unwrap();
    // Through the topics: the confirmation that cannot be written is parked at the order
    // participant while its saga keeps running. (With local steps it fails the orchestrator's
    // transaction, and the order's event is parked in the orchestrator's dead letters.)
    let transport = postgres(&pool);
    let engine = start_engine_with(
        &pool,
        &transport,
        &everything(),
        Options {
            admin_token: AdminToken::new(Some(TOKEN)),
            local_steps: false,
            ..Default::default()
        },
    )
    .await;
    let (customer, unlucky) = (Uuid::now_v7(), Uuid::now_v7());
    sqlx::query("INSERT INTO console_unconfirmable VALUES ($1)")
        .bind(unlucky.to_string())
        .execute(&pool)
        .await
        .unwrap();
    engine.restock("SKU-A", 10).await;
    engine.restock("SKU-B", 1).await;
    engine.deposit(customer, 100_000).await;
    engine.deposit(unlucky, 100_000).await;
    let (_, good) = engine.order(customer, &[("SKU-A", 2, 1_000)]).await;
    // One line in stock, one not: the reservation that succeeded is undone.
    let (declined, bad) = engine
        .order(customer, &[("SKU-A", 1, 1_000), ("SKU-B", 5, 500)])
        .await;
    assert_eq!(bad, saga_id_of(declined));
    let (unconfirmable, stuck) = engine.order(unlucky, &[("SKU-A", 1, 3_000)]).await;
    engine.restock("SKU-PARKED", 7).await;
    wait_terminal(&pool, &[good, bad], WAIT).await;
    eventually(WAIT, "the restock and a confirmation parked", || async {
        let parked: Vec<String> = sqlx::query_scalar(
            "SELECT envelope->>'stream_id' FROM dead_letters WHERE status = 'parked'",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        parked.contains(&"inventory-SKU-PARKED".to_owned())
            && parked.contains(&format!("order-{unconfirmable}"))
    })
    .await;

    let c = browser.client();
    let base = &engine.base;

    // The console asks for the token once, then shows the overview.
    c.goto(&format!("{base}/console")).await.unwrap();
    until(
        c,
        "the token form",
        "return !document.getElementById('login').hidden",
    )
    .await;
    c.find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    click(c, "#token-form button").await;
    until(
        c,
        "the overview's counts",
        "const n = s => { const c = document.querySelector('.card-' + s + ' b'); return c && c.textContent; };
         return n('completed') === '1' && n('compensated') === '1' && n('running') === '1'",
    )
    .await;
    until(
        c,
        "the charts",
        "return document.querySelector('#throughput rect.s-completed') && document.querySelector('#latency polyline, #latency circle')",
    )
    .await;
    let parked = until(
        c,
        "the parked dead letters",
        "const p = document.querySelector('#parked b'); return p && p.textContent",
    )
    .await;
    assert!(
        parked.as_str().unwrap().parse::<i64>().unwrap() >= 2,
        "{parked}"
    );
    let listed = until(
        c,
        "the stuck saga",
        "return [...document.querySelectorAll('#stuck a')].map(a => a.getAttribute('href'))",
    )
    .await;
    assert_eq!(listed, json!([format!("/console/sagas/{stuck}")]));
    screenshot(c, "overview").await;

    // The declined order, found by its id in the search box: the saga's path reads forward,
    // breaks at the reservation, undoes it, rejects the order, ends compensated.
    c.find(Locator::Css("#q"))
        .await
        .unwrap()
        .send_keys(&declined.to_string())
        .await
        .unwrap();
    click(c, "#search button").await;
    until(
        c,
        "the declined order's saga",
        &format!("return location.pathname === '/console/sagas/{bad}' && document.querySelector('#path-table')"),
    )
    .await;
    let path = until(c, "the path", PATH_ROWS).await;
    assert_eq!(
        path,
        json!([
            "step:reserve_stock:failed",
            "step:authorize_payment:pending",
            "step:confirm_order:pending",
            "step:capture_payment:pending",
            "failure:reserve_stock:insufficient_stock",
            "compensation:reserve_stock:compensated",
            "final:on_compensated:succeeded",
            "end:compensated:compensated",
        ])
    );
    let drawn = until(
        c,
        "the drawn path",
        "return [...document.querySelectorAll('#path .node')].map(n => n.dataset.kind + ':' + n.dataset.name)",
    )
    .await;
    assert_eq!(
        drawn,
        json!([
            "step:reserve_stock",
            "step:authorize_payment",
            "step:confirm_order",
            "step:capture_payment",
            "compensation:reserve_stock",
            "final:on_compensated",
            "end:compensated",
        ])
    );
    let why = until(
        c,
        "why it ended",
        "const w = document.getElementById('why'); return w && w.textContent",
    )
    .await;
    assert!(
        why.as_str().unwrap().contains("insufficient_stock"),
        "{why}"
    );
    let streams = until(
        c,
        "the streams it touched",
        "return [...document.querySelectorAll('#streams a')].map(a => a.textContent)",
    )
    .await;
    for s in [
        format!("saga-{bad}"),
        format!("order-{declined}"),
        "inventory-SKU-A".into(),
        "inventory-SKU-B".into(),
    ] {
        assert!(
            streams.as_array().unwrap().contains(&json!(s)),
            "{s} in {streams}"
        );
    }
    until(
        c,
        "the timeline",
        "return document.querySelectorAll('#timeline tbody tr.src-participant').length > 0
            && document.querySelectorAll('#timeline tbody tr.bad').length > 0",
    )
    .await;
    let buttons = c
        .execute(
            "return [document.getElementById('retry-step').disabled, document.getElementById('abort').disabled]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        buttons,
        json!([true, true]),
        "an ended saga offers no action"
    );
    screenshot(c, "saga-declined").await;

    // The unconfirmable order's saga, aborted from its page: the steps it did are undone from
    // the last to the first, and the order is rejected.
    c.goto(&format!("{base}/console/sagas/{stuck}"))
        .await
        .unwrap();
    until(
        c,
        "the abort button",
        "const a = document.getElementById('abort'); return a && !a.disabled",
    )
    .await;
    let parked = until(
        c,
        "the saga's parked command",
        "return [...document.querySelectorAll('#saga-dead-letters tbody tr[data-status=parked]')].map(r => r.children[3].textContent)",
    )
    .await;
    assert!(
        parked.as_array().unwrap().iter().all(|m| m == "confirm"),
        "{parked}"
    );
    click(c, "#abort").await;
    confirm(c).await;
    let path = until(
        c,
        "the aborted saga compensated",
        &format!("const rows = (() => {{ {PATH_ROWS} }})(); return rows.includes('end:compensated:compensated') && rows"),
    )
    .await;
    assert_eq!(
        path,
        json!([
            "step:reserve_stock:succeeded",
            "step:authorize_payment:succeeded",
            "step:confirm_order:aborted",
            "step:capture_payment:pending",
            "failure:confirm_order:aborted_by_operator",
            "compensation:authorize_payment:compensated",
            "compensation:reserve_stock:compensated",
            "final:on_compensated:succeeded",
            "end:compensated:compensated",
        ])
    );
    screenshot(c, "saga-compensated").await;

    // A stream stepped back in time: the state one version before the head, and what the
    // event at that version changed.
    c.goto(&format!("{base}/console/streams/inventory-SKU-A"))
        .await
        .unwrap();
    let head = until(
        c,
        "the stream at its head",
        "const l = document.getElementById('version-label'); const s = document.getElementById('state');
         return l && s && s.dataset.version && l.textContent",
    )
    .await;
    let head: i64 = head
        .as_str()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(head >= 3, "{head}");
    click(c, "#back").await;
    let state = until(
        c,
        "the state one version back",
        &format!(
            "const s = document.getElementById('state');
             return s.dataset.version === '{}' && document.getElementById('event-type') && s.textContent",
            head - 1
        ),
    )
    .await;
    let shown: Value = serde_json::from_str(state.as_str().unwrap()).unwrap();
    let (_, expected) = get(
        &engine,
        &format!("/streams/inventory-SKU-A/state?at_version={}", head - 1),
    )
    .await;
    assert_eq!(shown, expected["state"]);
    let label = c
        .find(Locator::Css("#version-label"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(label, format!("version {} of {head}", head - 1));
    until(
        c,
        "the diff of that event",
        "return document.querySelectorAll('#diff tbody tr').length > 0",
    )
    .await;
    screenshot(c, "stream").await;

    // The parked restock, retried after the fix: applied once. The unconfirmable order's
    // command, discarded.
    sqlx::query("DELETE FROM console_broken")
        .execute(&pool)
        .await
        .unwrap();
    c.goto(&format!("{base}/console/dead-letters"))
        .await
        .unwrap();
    let id = until(
        c,
        "the parked restock",
        "const r = document.querySelector('#dead-letters tr[data-stream=\"inventory-SKU-PARKED\"]'); return r && r.dataset.id",
    )
    .await;
    let id = id.as_str().unwrap().to_owned();
    screenshot(c, "dead-letters").await;
    click(c, &format!("#dead-letters tr[data-id='{id}'] button.retry")).await;
    confirm(c).await;
    until(
        c,
        "the list without the restock",
        &format!("return document.querySelector('#action-result .ok') && !document.querySelector('#dead-letters tr[data-id=\"{id}\"]')"),
    )
    .await;
    eventually(WAIT, "SKU-PARKED in the inventory read model", || async {
        let (s, b) = get(&engine, "/inventory/SKU-PARKED").await;
        s == StatusCode::OK && b["on_hand"] == 7
    })
    .await;
    let (_, row) = admin_get(&engine, &format!("/admin/dead-letters/{id}")).await;
    assert_eq!(row["status"], "retried");
    let again = engine
        .client
        .post(format!("{base}/admin/dead-letters/{id}/retry"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        again.status(),
        StatusCode::CONFLICT,
        "a retried letter is not retried twice"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, stock) = get(&engine, "/inventory/SKU-PARKED").await;
    assert_eq!(stock["on_hand"], 7, "applied once");
    let confirmation = until(
        c,
        "a parked confirmation",
        &format!("const r = document.querySelector('#dead-letters tr[data-stream=\"order-{unconfirmable}\"]'); return r && r.dataset.id"),
    )
    .await;
    let confirmation = confirmation.as_str().unwrap().to_owned();
    click(
        c,
        &format!("#dead-letters tr[data-id='{confirmation}'] button.discard"),
    )
    .await;
    confirm(c).await;
    until(
        c,
        "the list without the confirmation",
        &format!("return !document.querySelector('#dead-letters tr[data-id=\"{confirmation}\"]')"),
    )
    .await;
    let (_, row) = admin_get(&engine, &format!("/admin/dead-letters/{confirmation}")).await;
    assert_eq!(row["status"], "discarded");

    // A read model rebuilt from the console, with its progress.
    c.goto(&format!("{base}/console/projections"))
        .await
        .unwrap();
    click(c, "#projections tr[data-name='inventory'] button.rebuild").await;
    confirm(c).await;
    until(
        c,
        "the rebuild to finish",
        "const r = document.querySelector('#projections tr[data-name=inventory]');
         return r && r.querySelector('.state-idle') && r.querySelector('progress') && !r.querySelector('button.rebuild').disabled",
    )
    .await;
    let (_, stock) = get(&engine, "/inventory/SKU-PARKED").await;
    assert_eq!(stock["on_hand"], 7, "the rebuilt read model");
    screenshot(c, "projections").await;

    // The sagas list; every action was audited.
    c.goto(&format!("{base}/console/sagas")).await.unwrap();
    let listed = until(
        c,
        "the list",
        "return [...document.querySelectorAll('#sagas tbody tr')].map(r => r.dataset.sagaId)",
    )
    .await;
    assert_eq!(listed.as_array().unwrap().len(), 3);
    screenshot(c, "sagas").await;
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "sagaflow_admin_actions_total{action=\"saga_abort\"} 1",
        "sagaflow_admin_actions_total{action=\"dead_letter_retry\"} 2",
        "sagaflow_admin_actions_total{action=\"dead_letter_discard\"} 1",
        "sagaflow_admin_actions_total{action=\"projection_rebuild\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in the metrics");
    }
    browser.close().await;
    engine.stop().await;
}

/// The rows of a saga's path table, as `kind:name:status`.
const PATH_ROWS: &str = "return [...document.querySelectorAll('#path-table tbody tr')]
    .map(r => r.dataset.kind + ':' + r.dataset.name + ':' + r.children[3].textContent)";

/// Without an admin token the console is closed, and says how to open it; with one, its data
/// needs the token, and the pages hold no business data.
#[sqlx::test(migrator = "common::MIGRATOR")]
async fn the_console_is_closed_without_a_token_and_its_data_needs_one(pool: PgPool) {
    let closed = start(&pool, None).await;
    for path in ["/console", "/console/sagas", "/console/dead-letters"] {
        let r = reqwest::get(format!("{}{path}", closed.base))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let page = r.text().await.unwrap();
        assert!(page.contains("SAGAFLOW_ADMIN_TOKEN"), "{page}");
    }
    let (s, b) = get(&closed, "/admin/console/overview").await;
    assert_eq!(
        (s, common::error_code(&b)),
        (StatusCode::FORBIDDEN, "admin_disabled")
    );
    closed.stop().await;

    let open = start(&pool, Some(TOKEN)).await;
    let r = reqwest::get(format!("{}/console", open.base))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    let shell = r.text().await.unwrap();
    assert!(
        shell.contains("data-page=\"overview\"") && shell.contains("/console/assets/console.js")
    );
    for (path, kind) in [
        ("/console/assets/console.js", "text/javascript"),
        ("/console/assets/console.css", "text/css"),
    ] {
        let r = reqwest::get(format!("{}{path}", open.base)).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(kind));
        let tag = r.headers()["etag"].clone();
        let again = open
            .client
            .get(format!("{}{path}", open.base))
            .header("if-none-match", tag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    }
    for path in [
        "/admin/console/app",
        "/admin/console/overview",
        "/admin/console/sagas",
    ] {
        let (s, b) = get(&open, path).await;
        assert_eq!(
            (s, common::error_code(&b)),
            (StatusCode::UNAUTHORIZED, "unauthorized"),
            "{path}"
        );
    }
    let (s, app) = admin_get(&open, "/admin/console/app").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(app["sagas"][0]["name"], "order_fulfillment");
    assert_eq!(app["sagas"][0]["started_by"], "order");
    open.stop().await;
}

/// Every way an id leads somewhere, and bad input answered 400 with a code, never a 500.
#[sqlx::test(migrator = "common::MIGRATOR")]
async fn the_search_resolves_any_id_and_bad_input_is_a_4xx(pool: PgPool) {
    let engine = start(&pool, Some(TOKEN)).await;
    let customer = Uuid::now_v7();
    engine.restock("SKU-S", 5).await;
    engine.deposit(customer, 10_000).await;
    let (order, saga) = engine.order(customer, &[("SKU-S", 1, 100)]).await;
    wait_terminal(&pool, &[saga], WAIT).await;
    let correlation: String =
        sqlx::query_scalar("SELECT correlation_id::text FROM sagas WHERE saga_id = $1")
            .bind(saga)
            .fetch_one(&pool)
            .await
            .unwrap();
    let search = |q: String| {
        let engine = &engine;
        async move {
            let (s, b) = admin_get(engine, &format!("/admin/console/search?q={q}")).await;
            assert_eq!(s, StatusCode::OK, "{b}");
            b["matches"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    format!(
                        "{}:{}:{}",
                        m["kind"].as_str().unwrap(),
                        m["how"].as_str().unwrap(),
                        m["id"].as_str().unwrap()
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        search(saga.to_string()).await[0],
        format!("saga:saga_id:{saga}")
    );
    assert_eq!(
        search(correlation.clone()).await[0],
        format!("saga:correlation_id:{saga}")
    );
    assert_eq!(
        search(order.to_string()).await,
        [
            format!("saga:started_by:{saga}"),
            format!("stream:aggregate_id:order-{order}")
        ]
    );
    assert_eq!(
        search(format!("order-{order}")).await,
        [format!("stream:stream_id:order-{order}")]
    );
    assert_eq!(
        search("SKU-S".into()).await,
        ["stream:aggregate_id:inventory-SKU-S"]
    );
    assert_eq!(
        search(format!("%20{customer}%20")).await,
        [format!("stream:aggregate_id:account-{customer}")]
    );
    assert!(search("no-such-thing".into()).await.is_empty());
    assert!(search(String::new()).await.is_empty());

    // The list filtered by the order's id finds its saga.
    let (_, page) = admin_get(&engine, &format!("/admin/console/sagas?q={order}")).await;
    assert_eq!(page["sagas"][0]["saga_id"], saga.to_string());
    let (_, detail) = admin_get(&engine, &format!("/admin/console/sagas/{saga}")).await;
    assert_eq!(detail["saga"]["state"], "completed");
    assert_eq!(detail["path"].as_array().unwrap().len(), 5);
    assert_eq!(detail["data"][0]["after"], "start");

    for (path, code) in [
        ("/admin/console/sagas?limit=0", "invalid_query"),
        ("/admin/console/sagas?limit=x", "invalid_query"),
        ("/admin/console/sagas?state=stuck", "invalid_query"),
        ("/admin/console/sagas?older_than=yesterday", "invalid_query"),
        ("/admin/console/sagas?after=garbage", "invalid_query"),
        ("/admin/console/sagas?colour=red", "invalid_query"),
        ("/admin/console/sagas/not-a-uuid", "invalid_path"),
        ("/admin/console/overview?window=0", "invalid_query"),
        ("/admin/console/overview?window=1441", "invalid_query"),
        ("/console/sagas/not-a-uuid", "invalid_path"),
    ] {
        let (s, b) = admin_get(&engine, path).await;
        assert_eq!(
            (s, common::error_code(&b)),
            (StatusCode::BAD_REQUEST, code),
            "{path}: {b}"
        );
    }
    let long = "x".repeat(600);
    let (s, b) = admin_get(&engine, &format!("/admin/console/search?q={long}")).await;
    assert_eq!(
        (s, common::error_code(&b)),
        (StatusCode::BAD_REQUEST, "invalid_query")
    );
    let (s, b) = admin_get(&engine, &format!("/admin/console/sagas/{}", Uuid::now_v7())).await;
    assert_eq!(
        (s, common::error_code(&b)),
        (StatusCode::NOT_FOUND, "saga_not_found")
    );
    engine.stop().await;
}
