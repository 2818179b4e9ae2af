//! `bench chaos`: the application as separate processes (HTTP, relay, orchestrator, each
//! participant, projections) under mixed traffic, with faults injected on a seeded random
//! schedule, then checked: every saga ended, the workload's invariants hold (what it counts
//! adds up, no effect applied twice), every read model equals a fold of the event store, the
//! outbox is empty, the consumers are at the log's end, and no message was parked.
//!
//! The faults: kill -9 of a process and its restart; every PostgreSQL session terminated;
//! PostgreSQL itself restarted (with `--postgres-restart`, or `pg_ctlcluster` when it finds
//! one); a participant stopped for up to a minute; and, on the Kafka transport, the broker
//! paused and the network to it cut. For Kafka the harness runs its own broker (Tansu, from
//! `--tansu` or `SAGAFLOW_TANSU`) behind a TCP proxy it controls, which the broker advertises,
//! so that every connection to the broker goes through the proxy. The same seed gives the same
//! schedule; the schedule is printed first.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use sqlx::PgPool;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use uuid::Uuid;

use super::{bench_database, workload};
use crate::app::{App, Workload};
use crate::cli::config::{mask_url, DatabaseArgs, TransportArgs, TransportKind};
use crate::projection::RebuildOptions;
use crate::transport::kafka::{KafkaConfig, KafkaTransport};
use crate::transport::postgres::PostgresTransport;
use crate::transport::{Position, TopicLayout, Transport};

/// The flags of `bench chaos`.
#[derive(Debug, Clone, Args)]
pub struct ChaosArgs {
    /// Seconds of traffic with faults; the run then restores everything and checks.
    #[arg(long, default_value_t = 120)]
    pub seconds: u64,
    /// The seed of the fault schedule and of the traffic; random when absent (printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Concurrent clients sending traffic.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// The Tansu binary the Kafka run starts its own broker with.
    #[arg(long, env = "SAGAFLOW_TANSU")]
    pub tansu: Option<PathBuf>,
    /// A command that restarts PostgreSQL (run with `sh -c`); found with `pg_ctlcluster` when
    /// absent, and that fault is left out when neither works.
    #[arg(long)]
    pub postgres_restart: Option<String>,
    /// The longest wait for everything to settle after the last fault.
    #[arg(long, default_value_t = 300)]
    pub converge_seconds: u64,
    /// Every process runs with `--local-steps` set to this: by default the orchestrator runs
    /// the sagas' commands in its transactions (the participants' processes serve only what
    /// goes through the topics); `false` sends every command through its topic.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub local_steps: bool,
}

const TOKEN: &str = "chaos-admin-token";
/// Partitions per topic of the run.
const PARTITIONS: i32 = 4;

/// One fault of the schedule.
#[derive(Debug, Clone)]
enum Fault {
    /// kill -9 of a process, restarted after the pause.
    Kill { process: usize, down: Duration },
    /// Every session of the database terminated.
    TerminateSessions,
    /// PostgreSQL restarted.
    RestartPostgres,
    /// A participant stopped (SIGTERM), started again after the pause.
    StopParticipant { process: usize, down: Duration },
    /// The broker frozen (SIGSTOP) for a while.
    PauseBroker { down: Duration },
    /// Every connection to the broker cut, and new ones refused, for a while.
    CutBroker { down: Duration },
}

impl Fault {
    fn name(&self) -> &'static str {
        match self {
            Fault::Kill { .. } => "kill -9 of a process",
            Fault::TerminateSessions => "every PostgreSQL session terminated",
            Fault::RestartPostgres => "PostgreSQL restarted",
            Fault::StopParticipant { .. } => "a participant stopped",
            Fault::PauseBroker { .. } => "broker paused",
            Fault::CutBroker { .. } => "network to the broker cut",
        }
    }
}

/// The schedule of a run: when each fault starts, from the seed alone.
fn schedule(
    seed: u64,
    seconds: u64,
    processes: &[String],
    kafka: bool,
    can_restart_postgres: bool,
) -> Vec<(Duration, Fault)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let participants: Vec<usize> = processes
        .iter()
        .enumerate()
        .filter(|(_, p)| p.starts_with("participant:"))
        .map(|(i, _)| i)
        .collect();
    let mut kinds = vec![0, 1, 3];
    if can_restart_postgres {
        kinds.push(2);
    }
    if kafka {
        kinds.extend([4, 5]);
    }
    let longest_stop = Duration::from_secs((seconds / 3).clamp(5, 60));
    let mut at = Duration::from_secs(5);
    let mut out = Vec::new();
    while at < Duration::from_secs(seconds.saturating_sub(3)) {
        let down = Duration::from_millis(rng.random_range(1_000..6_000));
        let fault = match kinds[rng.random_range(0..kinds.len())] {
            0 => Fault::Kill {
                process: rng.random_range(0..processes.len()),
                down,
            },
            1 => Fault::TerminateSessions,
            2 => Fault::RestartPostgres,
            3 if !participants.is_empty() => Fault::StopParticipant {
                process: participants[rng.random_range(0..participants.len())],
                down: longest_stop.min(Duration::from_secs(rng.random_range(10..=60))),
            },
            4 => Fault::PauseBroker { down },
            5 => Fault::CutBroker { down },
            _ => Fault::TerminateSessions,
        };
        out.push((at, fault));
        at += Duration::from_millis(rng.random_range(4_000..12_000));
    }
    out
}

/// The command that restarts PostgreSQL: the flag's, or `pg_ctlcluster`'s when it manages a
/// cluster here.
fn postgres_restart(args: &ChaosArgs) -> Option<String> {
    if let Some(c) = &args.postgres_restart {
        return Some(c.clone());
    }
    let version = std::fs::read_dir("/etc/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .max()?;
    let ok = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "status"])
        .stdout(Stdio::null())
        .status()
        .ok()?
        .success();
    ok.then(|| format!("pg_ctlcluster --skip-systemctl-redirect {version} main restart -m fast"))
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A TCP proxy the harness can cut: every connection through it dropped, and new ones
/// refused, until it is restored.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    epoch: Arc<AtomicU64>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let epoch = Arc::new(AtomicU64::new(0));
        let (c, e) = (cut.clone(), epoch.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if c.load(Ordering::SeqCst) {
                    continue;
                }
                let (cut, epoch) = (c.clone(), e.clone());
                tokio::spawn(async move {
                    let started = epoch.load(Ordering::SeqCst);
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    let watch = async {
                        while !cut.load(Ordering::SeqCst) && epoch.load(Ordering::SeqCst) == started
                        {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    };
                    tokio::select! {
                        _ = copy => {}
                        _ = watch => {}
                    }
                });
            }
        });
        Ok(Proxy { addr, cut, epoch })
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }
}

/// One process of the application, running one component.
struct Process {
    component: String,
    child: Option<Child>,
    log: PathBuf,
    /// When a process that ended on its own is started again (a second later, as a
    /// supervisor would).
    restart_at: Option<Instant>,
}

struct Cluster {
    exe: PathBuf,
    env: Vec<(String, String)>,
    http_port: u16,
    processes: Vec<Process>,
}

impl Cluster {
    /// Starts process `i` unless it runs already (two faults may have stopped it, and both
    /// restart it).
    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let p = &mut self.processes[i];
        if p.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)?;
        let mut command = Command::new(&self.exe);
        command
            .args([
                "serve",
                "--components",
                &p.component,
                "--http-addr",
                &format!("127.0.0.1:{}", self.http_port),
            ])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        p.child = Some(
            command
                .spawn()
                .context("starting a process of the application")?,
        );
        Ok(())
    }

    fn signal(&mut self, i: usize, signal: &str) {
        if let Some(child) = &mut self.processes[i].child {
            let _ = Command::new("kill")
                .args([format!("-{signal}"), child.id().to_string()])
                .status();
            let _ = child.wait();
        }
        self.processes[i].child = None;
    }

    /// Processes that ended without the harness stopping them, started again a second later
    /// as a supervisor would; each one is a finding.
    fn reap(&mut self) -> Vec<String> {
        let mut ended = Vec::new();
        for i in 0..self.processes.len() {
            let p = &mut self.processes[i];
            if let Some(child) = &mut p.child {
                if let Ok(Some(status)) = child.try_wait() {
                    ended.push(format!(
                        "process {} ended on its own ({status}); restarted",
                        p.component
                    ));
                    p.child = None;
                    p.restart_at = Some(Instant::now() + Duration::from_secs(1));
                }
            }
            if p.restart_at.is_some_and(|at| Instant::now() >= at) {
                p.restart_at = None;
                let _ = self.spawn(i);
            }
        }
        ended
    }

    fn stop_all(&mut self) {
        for i in 0..self.processes.len() {
            self.signal(i, "KILL");
        }
    }
}

/// What the traffic did.
#[derive(Default)]
struct Traffic {
    sent: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    retries: AtomicU64,
    sagas: Mutex<Vec<Uuid>>,
    started: Mutex<Vec<Value>>,
}

/// Sends one request until it is answered with something other than a retryable failure (a
/// connection error, a 503), with its own idempotency key, so that a retry never applies it
/// twice. Gives up when `until` passes.
async fn send_until_answered(
    client: &reqwest::Client,
    base: &str,
    request: &crate::app::Request,
    key: &str,
    traffic: &Traffic,
    until: Instant,
) -> Option<(u16, Value)> {
    loop {
        let answer = client
            .post(format!("{base}{}", request.path))
            .header("Idempotency-Key", key)
            .timeout(Duration::from_secs(20))
            .json(&request.body)
            .send()
            .await;
        match answer {
            Ok(r) if r.status().as_u16() != 503 && r.status().as_u16() != 429 => {
                let status = r.status().as_u16();
                let body = r.json::<Value>().await.unwrap_or(Value::Null);
                return Some((status, body));
            }
            _ => {
                traffic.retries.fetch_add(1, Ordering::Relaxed);
                if Instant::now() > until {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

async fn drive(
    workload: Arc<dyn Workload>,
    base: String,
    seed: u64,
    clients: usize,
    stop: Arc<AtomicBool>,
    traffic: Arc<Traffic>,
    give_up: Instant,
) {
    let client = reqwest::Client::new();
    let mut tasks = JoinSet::new();
    for c in 0..clients {
        let (workload, base, stop, traffic, client) = (
            workload.clone(),
            base.clone(),
            stop.clone(),
            traffic.clone(),
            client.clone(),
        );
        tasks.spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(c as u64 + 1));
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let choice: u64 = rng.random();
                let earlier = traffic.started.lock().expect("not poisoned").clone();
                let request = workload.chaos_request(choice, &earlier);
                let key = format!("chaos-{seed}-{c}-{n}");
                traffic.sent.fetch_add(1, Ordering::Relaxed);
                match send_until_answered(&client, &base, &request, &key, &traffic, give_up).await {
                    Some((202, body)) => {
                        traffic.accepted.fetch_add(1, Ordering::Relaxed);
                        if let Some(id) = body["saga_id"].as_str().and_then(|s| s.parse().ok()) {
                            traffic.sagas.lock().expect("not poisoned").push(id);
                            traffic.started.lock().expect("not poisoned").push(body);
                        }
                    }
                    Some(_) => {
                        traffic.refused.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {}
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(5..40))).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// What lies past `group`'s committed offsets on its `topics`, read for a few seconds: one
/// entry per partition with unread messages.
async fn unread(
    transport: &dyn Transport,
    pool: &PgPool,
    group: &str,
    topics: &[String],
) -> anyhow::Result<Vec<String>> {
    let layout = transport.layout().clone();
    let committed: HashMap<(String, i32), i64> = sqlx::query_as::<_, (String, i32, i64)>(
        "SELECT topic, partition, next_offset FROM consumer_offsets WHERE consumer_group = $1",
    )
    .bind(group)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|(t, p, o)| ((t, p), o))
    .collect();
    let positions: Vec<Position> = topics
        .iter()
        .flat_map(|t| {
            let topic = layout.topic(t);
            (0..layout.partitions).map(move |partition| (topic.clone(), partition))
        })
        .map(|(topic, partition)| Position {
            offset: committed
                .get(&(topic.clone(), partition))
                .copied()
                .unwrap_or(0),
            topic,
            partition,
        })
        .collect();
    let mut reader = transport.reader().await?;
    reader.assign(&positions).await?;
    let mut found: BTreeMap<(String, i32), (i64, usize)> = BTreeMap::new();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for d in reader.poll(500, Duration::from_millis(500)).await? {
            let entry = found.entry((d.topic, d.partition)).or_insert((d.offset, 0));
            entry.1 += 1;
        }
    }
    Ok(found
        .into_iter()
        .map(|((topic, partition), (from, n))| {
            format!("{group} {topic}#{partition}: {n} unread from offset {from}")
        })
        .collect())
}

/// Runs a step of the harness's own checks until it succeeds, at most ten times: a moment
/// without a connection (the server's limit is shared with every process of the run) is not
/// a finding.
async fn again<T, F, Fut>(what: &str, mut step: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match step().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < 10 => {
                eprintln!("{what}: {e:#}; again in 2 s");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => return Err(e.context(what.to_owned())),
        }
    }
}

/// A fingerprint of a table's rows.
async fn table_hash(pool: &PgPool, table: &str) -> Result<String, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT md5(COALESCE(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM {table} t"
    ))
    .fetch_one(pool)
    .await
}

/// Runs `bench chaos`.
pub(crate) async fn run(
    app: &App,
    args: ChaosArgs,
    database: &DatabaseArgs,
    transport: &TransportArgs,
) -> anyhow::Result<()> {
    let workload = workload(app)?;
    let seed = args.seed.unwrap_or_else(rand::random);
    let kafka = transport.transport == TransportKind::Kafka;
    let (url, pool) = bench_database(app, database, 8).await?;
    super::reset(&pool).await?;
    sqlx::query(
        "TRUNCATE sagas, saga_deadlines, consumer_offsets, processed_messages, dead_letters, projection_status",
    )
    .execute(&pool)
    .await?;
    for p in &app.projections {
        sqlx::query(&format!("TRUNCATE {}", p.tables().join(", ")))
            .execute(&pool)
            .await?;
    }
    let restart = postgres_restart(&args);
    let processes: Vec<String> = app.components().names();
    let faults = schedule(seed, args.seconds, &processes, kafka, restart.is_some());
    println!(
        "bench chaos: seed {seed} (--seed {seed} replays it), {} s, {} transport{}, {} processes ({}), database {}",
        args.seconds,
        if kafka { "kafka" } else { "postgres" },
        if args.local_steps {
            " with local steps"
        } else {
            " with every command through its topic"
        },
        processes.len(),
        processes.join(", "),
        mask_url(&url)
    );
    if restart.is_none() {
        println!(
            "(PostgreSQL restarts left out: no --postgres-restart, and no pg_ctlcluster here)"
        );
    }
    for (at, fault) in &faults {
        let what = match fault {
            Fault::Kill { process, down } | Fault::StopParticipant { process, down } => {
                format!(
                    "{} ({}, {:.1} s)",
                    fault.name(),
                    processes[*process],
                    down.as_secs_f64()
                )
            }
            Fault::PauseBroker { down } | Fault::CutBroker { down } => {
                format!("{} ({:.1} s)", fault.name(), down.as_secs_f64())
            }
            _ => fault.name().to_owned(),
        };
        println!("  at {:>5.1} s: {what}", at.as_secs_f64());
    }

    // The broker, behind a proxy the harness can cut.
    let mut broker: Option<Child> = None;
    let mut env: Vec<(String, String)> = vec![
        ("DATABASE_URL".into(), url.clone()),
        ("SAGAFLOW_DB_POOL_SIZE".into(), "6".into()),
        ("SAGAFLOW_PARTITIONS".into(), PARTITIONS.to_string()),
        (
            "SAGAFLOW_TOPIC_PREFIX".into(),
            format!("chaos{}", Uuid::new_v4().simple()),
        ),
        ("SAGAFLOW_ADMIN_TOKEN".into(), TOKEN.into()),
        ("SAGAFLOW_SHUTDOWN_TIMEOUT".into(), "10s".into()),
        ("SAGAFLOW_LOG_FORMAT".into(), "text".into()),
        ("RUST_LOG".into(), "warn".into()),
    ];
    env.push(("SAGAFLOW_LOCAL_STEPS".into(), args.local_steps.to_string()));
    let mut proxy = None;
    if kafka {
        let tansu = args
            .tansu
            .clone()
            .context("the Kafka run starts its own broker: give --tansu or SAGAFLOW_TANSU")?;
        let broker_port = free_port()?;
        let upstream: SocketAddr = format!("127.0.0.1:{broker_port}").parse()?;
        let p = Proxy::start(upstream).await?;
        let child = Command::new(&tansu)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{broker_port}"),
                "--advertised-listener-url",
                &format!("tcp://{}", p.addr),
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the broker")?;
        broker = Some(child);
        env.push(("SAGAFLOW_TRANSPORT".into(), "kafka".into()));
        env.push(("KAFKA_BROKERS".into(), p.addr.to_string()));
        proxy = Some(p);
        tokio::time::sleep(Duration::from_millis(500)).await;
    } else {
        env.push(("SAGAFLOW_TRANSPORT".into(), "postgres".into()));
    }
    let logs = std::env::temp_dir().join(format!("sagaflow-chaos-{seed}"));
    std::fs::create_dir_all(&logs)?;
    let mut cluster = Cluster {
        exe: std::env::current_exe()?,
        env,
        http_port: free_port()?,
        processes: processes
            .iter()
            .map(|c| Process {
                component: c.clone(),
                child: None,
                log: logs.join(format!("{}.log", c.replace(':', "-"))),
                restart_at: None,
            })
            .collect(),
    };
    let outcome = chaos(
        app,
        &args,
        &workload,
        &pool,
        &mut cluster,
        &faults,
        seed,
        restart.as_deref(),
        broker.as_ref().map(Child::id),
        proxy.as_ref(),
    )
    .await;
    cluster.stop_all();
    if let Some(mut b) = broker {
        let _ = b.kill();
        let _ = b.wait();
    }
    match outcome {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&logs);
            Ok(())
        }
        Err(e) => Err(e.context(format!("the processes' logs are in {}", logs.display()))),
    }
}

#[allow(clippy::too_many_arguments)]
async fn chaos(
    app: &App,
    args: &ChaosArgs,
    workload: &Arc<dyn Workload>,
    pool: &PgPool,
    cluster: &mut Cluster,
    faults: &[(Duration, Fault)],
    seed: u64,
    restart: Option<&str>,
    broker_pid: Option<u32>,
    proxy: Option<&Proxy>,
) -> anyhow::Result<()> {
    for i in 0..cluster.processes.len() {
        cluster.spawn(i)?;
    }
    let base = format!("http://127.0.0.1:{}", cluster.http_port);
    let client = reqwest::Client::new();
    let ready = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        anyhow::ensure!(
            Instant::now() < ready,
            "the application did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for request in workload.setup() {
        let traffic = Traffic::default();
        let key = format!("chaos-setup-{}", Uuid::new_v4());
        let answer = send_until_answered(
            &client,
            &base,
            &request,
            &key,
            &traffic,
            Instant::now() + Duration::from_secs(60),
        )
        .await;
        anyhow::ensure!(
            matches!(answer, Some((s, _)) if (200..300).contains(&s)),
            "setup request {} was not accepted: {answer:?}",
            request.path
        );
    }

    let traffic = Arc::new(Traffic::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let driver = tokio::spawn(drive(
        workload.clone(),
        base.clone(),
        seed,
        args.clients,
        stop.clone(),
        traffic.clone(),
        started + Duration::from_secs(args.seconds + 120),
    ));
    let mut injected: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut restarts: Vec<(Instant, usize)> = Vec::new();
    let mut next = 0;
    let mut crashes: Vec<String> = Vec::new();
    while started.elapsed() < Duration::from_secs(args.seconds) {
        crashes.extend(cluster.reap());
        restarts.retain(|(at, i)| {
            if Instant::now() >= *at {
                let _ = cluster.spawn(*i);
                false
            } else {
                true
            }
        });
        if next < faults.len() && started.elapsed() >= faults[next].0 {
            let fault = faults[next].1.clone();
            next += 1;
            *injected.entry(fault.name()).or_default() += 1;
            match &fault {
                Fault::Kill { process, down } => {
                    cluster.signal(*process, "KILL");
                    restarts.push((Instant::now() + *down, *process));
                }
                Fault::StopParticipant { process, down } => {
                    cluster.signal(*process, "TERM");
                    restarts.push((Instant::now() + *down, *process));
                }
                Fault::TerminateSessions => {
                    let _ = sqlx::query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                         WHERE datname = current_database() AND pid <> pg_backend_pid()",
                    )
                    .execute(pool)
                    .await;
                }
                Fault::RestartPostgres => {
                    if let Some(command) = restart {
                        let status = Command::new("sh").args(["-c", command]).status();
                        if !matches!(status, Ok(s) if s.success()) {
                            anyhow::bail!("restarting PostgreSQL failed: {status:?}");
                        }
                    }
                }
                Fault::PauseBroker { down } => {
                    if let Some(pid) = broker_pid {
                        let _ = Command::new("kill")
                            .args(["-STOP", &pid.to_string()])
                            .status();
                        tokio::time::sleep(*down).await;
                        let _ = Command::new("kill")
                            .args(["-CONT", &pid.to_string()])
                            .status();
                    }
                }
                Fault::CutBroker { down } => {
                    if let Some(proxy) = proxy {
                        proxy.set_cut(true);
                        tokio::time::sleep(*down).await;
                        proxy.set_cut(false);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        eprint!(
            "\r  {:>5.1} s: {} requests, {} accepted, {} sagas, {} retried, {} faults   ",
            started.elapsed().as_secs_f64(),
            traffic.sent.load(Ordering::Relaxed),
            traffic.accepted.load(Ordering::Relaxed),
            traffic.sagas.lock().expect("not poisoned").len(),
            traffic.retries.load(Ordering::Relaxed),
            next
        );
    }
    eprintln!();
    stop.store(true, Ordering::Relaxed);
    driver.await?;
    // Everything back.
    for (_, i) in restarts.drain(..) {
        cluster.spawn(i)?;
    }
    if let Some(proxy) = proxy {
        proxy.set_cut(false);
    }
    if let Some(pid) = broker_pid {
        let _ = Command::new("kill")
            .args(["-CONT", &pid.to_string()])
            .status();
    }
    let restored = Instant::now();
    let sagas = traffic.sagas.lock().expect("not poisoned").clone();

    // Converged: every saga ended, the outbox empty.
    let deadline = restored + Duration::from_secs(args.converge_seconds);
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sagas WHERE state NOT IN ('completed', 'compensated', 'failed')",
        )
        .fetch_one(pool)
        .await
        .unwrap_or(i64::MAX);
        let known: i64 = sqlx::query_scalar("SELECT count(*) FROM sagas WHERE saga_id = ANY($1)")
            .bind(&sagas)
            .fetch_one(pool)
            .await
            .unwrap_or(0);
        let outbox = crate::outbox::depth(pool).await.unwrap_or(i64::MAX);
        crashes.extend(cluster.reap());
        if open == 0 && known == sagas.len() as i64 && outbox == 0 {
            break;
        }
        if Instant::now() >= deadline {
            for c in &crashes {
                println!("FAILED: {c}");
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "did not converge within {} s: {open} sagas open, {} of {} accepted sagas started, {outbox} outbox rows",
            args.converge_seconds,
            known,
            sagas.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let converged = Instant::now();
    // Let the projectors reach the end of the log too.
    tokio::time::sleep(Duration::from_secs(3)).await;

    crashes.extend(cluster.reap());
    let mut findings: Vec<String> = crashes;
    let states: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM sagas GROUP BY state ORDER BY state")
            .fetch_all(pool)
            .await
            .context("counting sagas by state")?;
    let failed = states
        .iter()
        .find(|(s, _)| s == "failed")
        .map_or(0, |(_, n)| *n);
    if failed > 0 {
        findings.push(format!(
            "{failed} sagas failed (a compensation kept failing)"
        ));
    }
    findings.extend(
        workload
            .check(pool)
            .await
            .context("checking the workload's invariants")?,
    );
    // Consumers at the end of the log: reading from every group's committed offsets finds
    // nothing. (Read rather than compared with end offsets, which Tansu reports inexactly.)
    let layout = TopicLayout {
        prefix: cluster
            .env
            .iter()
            .find(|(k, _)| k == "SAGAFLOW_TOPIC_PREFIX")
            .map(|(_, v)| v.clone())
            .unwrap_or_default(),
        partitions: PARTITIONS,
    };
    let log: Arc<dyn Transport> = match proxy {
        Some(p) => Arc::new(KafkaTransport::new(KafkaConfig::new(
            p.addr.to_string(),
            layout,
        ))?),
        None => Arc::new(PostgresTransport::new(pool.clone(), layout)),
    };
    let eventually = Instant::now() + Duration::from_secs(60);
    loop {
        let mut behind = Vec::new();
        for group in app.consumer_groups() {
            behind.extend(
                again("reading past the consumers' offsets", || {
                    unread(&*log, pool, &group.group, &group.topics)
                })
                .await?,
            );
        }
        if behind.is_empty() {
            break;
        }
        if Instant::now() > eventually {
            findings.push(format!("consumers behind the log: {}", behind.join(", ")));
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(pool)
        .await
        .context("counting dead letters")?;
    if parked > 0 {
        findings.push(format!("{parked} messages were parked in dead_letters"));
    }
    // Every read model equals a fold of the event store: rebuilt, its rows are the same.
    for p in &app.projections {
        let table = p.tables()[0];
        let context = || format!("rebuilding read model {}", p.name());
        let before = table_hash(pool, table).await.with_context(context)?;
        again(&context(), || async {
            let job = p
                .begin_rebuild(
                    pool.clone(),
                    RebuildOptions::default(),
                    Arc::new(|_: &_| {}),
                )
                .await?;
            job.run.await?;
            Ok(())
        })
        .await?;
        let after = table_hash(pool, table).await.with_context(context)?;
        if before != after {
            findings.push(format!(
                "read model {} differs from a fold of the event store",
                p.name()
            ));
        }
    }

    println!(
        "requests: {} sent, {} accepted, {} refused by the domain, {} retries after a failure",
        traffic.sent.load(Ordering::Relaxed),
        traffic.accepted.load(Ordering::Relaxed),
        traffic.refused.load(Ordering::Relaxed),
        traffic.retries.load(Ordering::Relaxed)
    );
    println!(
        "sagas: {} started by the traffic; {}",
        sagas.len(),
        states
            .iter()
            .map(|(s, n)| format!("{n} {s}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "faults: {}",
        injected
            .iter()
            .map(|(k, n)| format!("{n} × {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "converged {:.1} s after the traffic stopped and every process was back",
        converged.saturating_duration_since(restored).as_secs_f64()
    );
    if findings.is_empty() {
        println!("checks: every saga ended; the workload's invariants hold; consumers at the log's end; no message parked; every read model equals a fold of the event store; no process ended on its own");
        Ok(())
    } else {
        for f in findings.iter().take(30) {
            println!("FAILED: {f}");
        }
        if findings.len() > 30 {
            println!("FAILED: … and {} more", findings.len() - 30);
        }
        anyhow::bail!("{} checks failed (seed {seed})", findings.len())
    }
}
