use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::*;
use crate::aggregate::{DomainCommand, DomainError};

/// A counter with a ceiling: enough domain to exercise the bus.
#[derive(Debug, Default, Clone, Serialize)]
struct Counter {
    value: i64,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "command", content = "payload", rename_all = "snake_case")]
enum CounterCommand {
    Add { n: i64 },
    Noop,
}

impl DomainCommand for CounterCommand {
    fn name(&self) -> &'static str {
        match self {
            CounterCommand::Add { .. } => "add",
            CounterCommand::Noop => "noop",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "payload", rename_all = "snake_case")]
enum CounterEvent {
    Added { n: i64 },
}

impl DomainEvent for CounterEvent {}

#[derive(Debug, thiserror::Error)]
enum CounterError {
    #[error("the counter would pass 100")]
    TooHigh,
}

impl DomainError for CounterError {
    fn code(&self) -> &'static str {
        "too_high"
    }
}

impl Aggregate for Counter {
    const TYPE: &'static str = "counter";
    const CONTEXT: &'static str = "test";
    type Command = CounterCommand;
    type Event = CounterEvent;
    type Error = CounterError;

    fn handle(&self, command: &CounterCommand) -> Result<Vec<CounterEvent>, CounterError> {
        match command {
            CounterCommand::Add { n } if self.value + n > 100 => Err(CounterError::TooHigh),
            CounterCommand::Add { n } => Ok(vec![CounterEvent::Added { n: *n }]),
            CounterCommand::Noop => Ok(vec![]),
        }
    }

    fn apply(&mut self, event: &CounterEvent) {
        match event {
            CounterEvent::Added { n } => self.value += n,
        }
    }
}

fn repo(pool: &PgPool) -> Repository<Counter> {
    Repository::new(CommandBus::new(pool.clone(), CommandBusConfig::default()))
}

fn ok(_: &CommandOutcome) -> StoredResponse {
    StoredResponse {
        status: 202,
        body: serde_json::json!({"ok": true}),
    }
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = "./migrations")]
async fn executes_and_writes_events_with_their_outbox_rows(pool: PgPool) {
    let repo = repo(&pool);
    let ctx = CommandContext::default();
    for _ in 0..3 {
        repo.execute("1", &CounterCommand::Add { n: 5 }, &ctx, ok)
            .await
            .unwrap();
    }
    let loaded = repo.load("1").await.unwrap();
    assert_eq!((loaded.version, loaded.state.value), (3, 15));
    assert_eq!(count(&pool, "events").await, 3);
    let outbox: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT topic, partition_key, (envelope::jsonb->>'stream_version')::bigint FROM outbox ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        outbox,
        (1..=3)
            .map(|v| ("test.events".to_owned(), "counter-1".to_owned(), v))
            .collect::<Vec<_>>()
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn a_rejection_writes_nothing(pool: PgPool) {
    let repo = repo(&pool);
    let ctx = CommandContext::default();
    repo.execute("1", &CounterCommand::Add { n: 90 }, &ctx, ok)
        .await
        .unwrap();
    let err = repo
        .execute("1", &CounterCommand::Add { n: 20 }, &ctx, ok)
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::Rejected(CounterError::TooHigh)));
    assert_eq!(count(&pool, "events").await, 1);
    assert_eq!(count(&pool, "outbox").await, 1);
}

#[sqlx::test(migrations = "./migrations")]
async fn a_stale_cache_is_refreshed_by_the_conflict_and_decided_again(pool: PgPool) {
    // Two repositories over one database behave like two engine processes.
    let (a, b) = (repo(&pool), repo(&pool));
    let ctx = CommandContext::default();
    a.execute("1", &CounterCommand::Add { n: 10 }, &ctx, ok)
        .await
        .unwrap();
    b.execute("1", &CounterCommand::Add { n: 80 }, &ctx, ok)
        .await
        .unwrap();
    // `a` caches value 10 at version 1; its append conflicts, it reloads and decides on 90.
    let err = a
        .execute("1", &CounterCommand::Add { n: 20 }, &ctx, ok)
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::Rejected(_)), "{err:?}");
    a.execute("1", &CounterCommand::Add { n: 10 }, &ctx, ok)
        .await
        .unwrap();
    let loaded = b.load("1").await.unwrap();
    assert_eq!((loaded.version, loaded.state.value), (3, 100));
}

#[sqlx::test(migrations = "./migrations")]
async fn concurrent_commands_from_two_processes_lose_no_update(pool: PgPool) {
    let config = CommandBusConfig {
        max_attempts: 3,
        ..Default::default()
    };
    let a = Arc::new(Repository::<Counter>::new(CommandBus::new(
        pool.clone(),
        config.clone(),
    )));
    let b = Arc::new(Repository::<Counter>::new(CommandBus::new(
        pool.clone(),
        config,
    )));
    let mut tasks = Vec::new();
    for i in 0..50 {
        let repo = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let ctx = CommandContext::default();
            repo.execute("hot", &CounterCommand::Add { n: 1 }, &ctx, ok)
                .await
        }));
    }
    let mut applied = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => applied += 1,
            Err(CommandError::Conflict { attempts, .. }) => assert_eq!(attempts, 3),
            Err(e) => panic!("{e}"),
        }
    }
    let versions: Vec<i64> = sqlx::query_scalar(
        "SELECT stream_version FROM events WHERE stream_id = 'counter-hot' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(versions, (1..=applied).collect::<Vec<_>>());
    assert_eq!(a.load("hot").await.unwrap().state.value, applied);
}

#[sqlx::test(migrations = "./migrations")]
async fn an_idempotency_key_replays_the_first_response_and_writes_nothing(pool: PgPool) {
    let repo = repo(&pool);
    let idem = IdempotencyRequest::new("key-1", "POST", "/x", b"{}");
    let ctx = CommandContext {
        idempotency: Some(idem),
        ..Default::default()
    };
    let first = repo
        .execute("1", &CounterCommand::Add { n: 1 }, &ctx, |o| {
            StoredResponse {
                status: 202,
                body: serde_json::json!({ "version": o.version }),
            }
        })
        .await
        .unwrap();
    assert!(matches!(first, Executed::Applied { .. }));
    let second = repo
        .execute("1", &CounterCommand::Add { n: 1 }, &ctx, ok)
        .await
        .unwrap();
    match second {
        Executed::Replayed(r) => assert_eq!(r.body, serde_json::json!({ "version": 1 })),
        other => panic!("{other:?}"),
    }
    assert_eq!(count(&pool, "events").await, 1);

    let other_request = CommandContext {
        idempotency: Some(IdempotencyRequest::new("key-1", "POST", "/x", b"{\"n\":2}")),
        ..Default::default()
    };
    let err = repo
        .execute("1", &CounterCommand::Add { n: 2 }, &other_request, ok)
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::IdempotencyMismatch { .. }));
    assert_eq!(count(&pool, "events").await, 1);
}

#[sqlx::test(migrations = "./migrations")]
async fn concurrent_requests_with_one_key_apply_once(pool: PgPool) {
    let a = Arc::new(repo(&pool));
    let b = Arc::new(repo(&pool));
    let mut tasks = Vec::new();
    for i in 0..10 {
        let repo = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let ctx = CommandContext {
                idempotency: Some(IdempotencyRequest::new("same", "POST", "/x", b"{}")),
                ..Default::default()
            };
            repo.execute("1", &CounterCommand::Add { n: 1 }, &ctx, ok)
                .await
                .unwrap()
        }));
    }
    let mut applied = 0;
    for t in tasks {
        if let Executed::Applied { .. } = t.await.unwrap() {
            applied += 1;
        }
    }
    assert_eq!(applied, 1);
    assert_eq!(count(&pool, "events").await, 1);
}

#[sqlx::test(migrations = "./migrations")]
async fn a_command_that_decides_nothing_writes_nothing(pool: PgPool) {
    let repo = repo(&pool);
    let outcome = repo
        .execute("1", &CounterCommand::Noop, &CommandContext::default(), ok)
        .await
        .unwrap();
    match outcome {
        Executed::Applied { outcome, .. } => {
            assert_eq!((outcome.version, outcome.events.len()), (0, 0))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(count(&pool, "events").await, 0);
}

#[sqlx::test(migrations = "./migrations")]
async fn a_batch_decides_on_its_own_events_and_appends_them_in_one_flush(pool: PgPool) {
    let repo = Arc::new(repo(&pool));
    repo.execute(
        "a",
        &CounterCommand::Add { n: 10 },
        &CommandContext::default(),
        ok,
    )
    .await
    .unwrap();
    let metadata = Metadata::new_root();
    let mut tx = pool.begin().await.unwrap();
    let mut batch = repo.batch();
    let mut versions = Vec::new();
    for (id, n) in [("a", 50), ("b", 1), ("a", 30), ("a", 20), ("b", 2)] {
        match batch
            .execute(&mut tx, id, &CounterCommand::Add { n }, &metadata)
            .await
            .unwrap()
        {
            Ok(decided) => versions.push((id, decided.version)),
            // a: 10 + 50 + 30 = 90, so 20 more is refused: the batch saw its own events.
            Err(CounterError::TooHigh) => versions.push((id, -1)),
        }
    }
    assert_eq!(
        versions,
        [("a", 2), ("b", 1), ("a", 3), ("a", -1), ("b", 2)]
    );
    assert_eq!(
        count(&pool, "events").await,
        1,
        "nothing appended before the flush"
    );
    batch.flush(&mut tx).await.unwrap();
    tx.commit().await.unwrap();
    batch.committed().await;

    let stored: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT stream_id, stream_version, (payload->>'n')::bigint FROM events ORDER BY stream_id, stream_version",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        stored,
        [
            ("counter-a".to_owned(), 1, 10),
            ("counter-a".to_owned(), 2, 50),
            ("counter-a".to_owned(), 3, 30),
            ("counter-b".to_owned(), 1, 1),
            ("counter-b".to_owned(), 2, 2),
        ]
    );
    assert_eq!(count(&pool, "outbox").await, 5);
    let a = repo.load("a").await.unwrap();
    assert_eq!((a.version, a.state.value), (3, 90));
}

#[sqlx::test(migrations = "./migrations")]
async fn a_flush_after_another_writer_moved_a_stream_is_a_conflict_and_writes_nothing(
    pool: PgPool,
) {
    let repo = Arc::new(repo(&pool));
    let metadata = Metadata::new_root();
    let mut tx = pool.begin().await.unwrap();
    let mut batch = repo.batch();
    for id in ["a", "b"] {
        batch
            .execute(&mut tx, id, &CounterCommand::Add { n: 1 }, &metadata)
            .await
            .unwrap()
            .unwrap();
    }
    // Another process appends to "b" before the batch flushes.
    repo.execute(
        "b",
        &CounterCommand::Add { n: 5 },
        &CommandContext::default(),
        ok,
    )
    .await
    .unwrap();
    let err = batch.flush(&mut tx).await.unwrap_err();
    assert!(
        matches!(
            err,
            BatchError::Append(AppendError::Conflict { ref stream_id, .. }) if stream_id == "counter-b"
        ),
        "{err}"
    );
    tx.rollback().await.unwrap();
    assert_eq!(count(&pool, "events").await, 1);
    assert_eq!(count(&pool, "outbox").await, 1);
}

#[sqlx::test(migrations = "./migrations")]
async fn a_batch_loads_its_aggregates_with_the_tails_other_writers_appended(pool: PgPool) {
    let other = Arc::new(repo(&pool));
    let repo = Arc::new(repo(&pool));
    // This process caches "a" at version 1; another process then moves "a" and writes "b".
    repo.execute(
        "a",
        &CounterCommand::Add { n: 1 },
        &CommandContext::default(),
        ok,
    )
    .await
    .unwrap();
    for (id, n) in [("a", 2), ("a", 3), ("b", 4)] {
        other
            .execute(
                id,
                &CounterCommand::Add { n },
                &CommandContext::default(),
                ok,
            )
            .await
            .unwrap();
    }
    // "d" has more new events than one page of the load.
    sqlx::query(
        "INSERT INTO events (stream_id, stream_version, message_id, event_type, payload, metadata)
         SELECT 'counter-d', v, gen_random_uuid(), 'added', '{\"n\": 0}',
                jsonb_build_object('correlation_id', gen_random_uuid())
         FROM generate_series(1, 1005) AS v",
    )
    .execute(&pool)
    .await
    .unwrap();

    let metadata = Metadata::new_root();
    let mut tx = pool.begin().await.unwrap();
    let mut batch = repo.batch();
    batch
        .load(&mut tx, ["a", "b", "c", "d", "a"])
        .await
        .unwrap();
    let mut decided = Vec::new();
    for id in ["a", "b", "c", "d"] {
        let d = batch
            .execute(&mut tx, id, &CounterCommand::Add { n: 10 }, &metadata)
            .await
            .unwrap()
            .unwrap();
        decided.push((id, d.version));
    }
    assert_eq!(decided, [("a", 4), ("b", 2), ("c", 1), ("d", 1006)]);
    batch.flush(&mut tx).await.unwrap();
    tx.commit().await.unwrap();
    batch.committed().await;
    let a = repo.load("a").await.unwrap();
    assert_eq!((a.version, a.state.value), (4, 16));
}

/// Writes a row of its own for each batch of events, then fails when told to.
struct MarkingHook {
    fail: bool,
    after_commit: Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait::async_trait]
impl AppendHook for MarkingHook {
    async fn appended(
        &self,
        tx: &mut PgConnection,
        events: &[&RecordedEvent],
    ) -> Result<Hooked, BoxError> {
        sqlx::query("INSERT INTO hook_marks (events) VALUES ($1)")
            .bind(events.len() as i64)
            .execute(&mut *tx)
            .await?;
        if self.fail {
            return Err("the hook failed".into());
        }
        let after_commit = self.after_commit.clone();
        // A message of its own, published by the bus with the events.
        let mut mark = events[0].envelope.clone();
        mark.message_id = Uuid::now_v7();
        mark.event_type = "marked".into();
        Ok(Hooked {
            publish: vec![OutboxMessage {
                topic: "test.marks".into(),
                partition_key: mark.stream_id.clone(),
                envelope: mark,
            }],
            after: Some(Box::pin(async move {
                after_commit.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })),
        })
    }
}

/// The append hook runs in the command's transaction (its writes commit with the events) and
/// its after-commit work runs once committed; a hook that fails takes back only its own
/// writes, and the command still commits.
#[sqlx::test(migrations = "./migrations")]
async fn the_append_hook_commits_with_the_command_and_its_failure_only_undoes_itself(pool: PgPool) {
    sqlx::query("CREATE TABLE hook_marks (events int8 NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    for (fail, log) in [(false, false), (true, false), (false, true), (true, true)] {
        sqlx::query(
            "TRUNCATE hook_marks, events, outbox, idempotency_keys, message_log, message_log_heads",
        )
        .execute(&pool)
        .await
        .unwrap();
        let mut bus = CommandBus::new(pool.clone(), CommandBusConfig::default());
        if log {
            let bell = bus.outbox_bell().clone();
            bus = bus.with_log(TopicLayout::default(), bell);
        }
        let after_commit = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        assert!(bus.set_append_hook(Arc::new(MarkingHook {
            fail,
            after_commit: after_commit.clone(),
        })));
        let repo: Repository<Counter> = Repository::new(bus);
        // Through the group commit, and through the keyed path.
        repo.execute(
            "1",
            &CounterCommand::Add { n: 5 },
            &CommandContext::default(),
            ok,
        )
        .await
        .unwrap();
        let keyed = CommandContext {
            idempotency: Some(IdempotencyRequest::new("key-1", "POST", "/c/1", b"{}")),
            ..CommandContext::default()
        };
        repo.execute("1", &CounterCommand::Add { n: 5 }, &keyed, ok)
            .await
            .unwrap();
        assert_eq!(count(&pool, "events").await, 2, "fail: {fail}");
        let marks = count(&pool, "hook_marks").await;
        let ran = after_commit.load(std::sync::atomic::Ordering::SeqCst);
        // What was published, in order per partition: on the log, the events' messages wait
        // for the hook's and go in the same append.
        let published: Vec<String> = sqlx::query_scalar(if log {
            "SELECT envelope::jsonb->>'event_type' FROM message_log ORDER BY \"offset\", topic"
        } else {
            "SELECT envelope::jsonb->>'event_type' FROM outbox ORDER BY id"
        })
        .fetch_all(&pool)
        .await
        .unwrap();
        let mut published = published;
        published.sort();
        if fail {
            assert_eq!((marks, ran), (0, 0));
            assert_eq!(published, ["added", "added"], "log: {log}");
        } else {
            assert_eq!((marks, ran), (2, 2));
            assert_eq!(
                published,
                ["added", "added", "marked", "marked"],
                "log: {log}"
            );
        }
        if log {
            let heads: i64 =
                sqlx::query_scalar("SELECT sum(next_offset)::int8 FROM message_log_heads")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            assert_eq!(
                heads,
                published.len() as i64,
                "the heads count every message once"
            );
        }
    }
}

/// Runs `n` commands on stream `id` of `repo` at once; returns their results in order.
async fn at_once(
    repo: &Arc<Repository<Counter>>,
    id: &'static str,
    commands: Vec<CounterCommand>,
) -> Vec<Result<Executed, CommandError<CounterError>>> {
    let tasks: Vec<_> = commands
        .into_iter()
        .map(|c| {
            let repo = repo.clone();
            tokio::spawn(async move { repo.execute(id, &c, &CommandContext::default(), ok).await })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    results
}

async fn versions_and_transactions(pool: &PgPool, stream: &str) -> (Vec<i64>, i64) {
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT stream_version FROM events WHERE stream_id = $1 ORDER BY 1")
            .bind(stream)
            .fetch_all(pool)
            .await
            .unwrap();
    let transactions: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM events WHERE stream_id = $1")
            .bind(stream)
            .fetch_one(pool)
            .await
            .unwrap();
    (versions, transactions)
}

#[sqlx::test(migrations = "./migrations")]
async fn commands_queued_on_one_stream_are_decided_in_order_and_committed_together(pool: PgPool) {
    let repo = Arc::new(repo(&pool));
    let results = at_once(
        &repo,
        "hot",
        (0..40).map(|_| CounterCommand::Add { n: 1 }).collect(),
    )
    .await;
    let mut versions: Vec<i64> = results
        .into_iter()
        .map(|r| match r.unwrap() {
            Executed::Applied { outcome, .. } => {
                assert_eq!(outcome.events.len(), 1);
                assert_eq!(outcome.events[0].envelope.stream_version, outcome.version);
                outcome.version
            }
            other => panic!("{other:?}"),
        })
        .collect();
    versions.sort();
    assert_eq!(
        versions,
        (1..=40).collect::<Vec<_>>(),
        "each command got its own version"
    );
    let (stored, transactions) = versions_and_transactions(&pool, "counter-hot").await;
    assert_eq!(stored, (1..=40).collect::<Vec<_>>());
    assert!(
        transactions < 10,
        "40 commands queued on one stream took {transactions} transactions"
    );
    assert_eq!(repo.load("hot").await.unwrap().state.value, 40);
}

#[sqlx::test(migrations = "./migrations")]
async fn a_rejection_decided_behind_uncommitted_commands_stands_once_they_commit(pool: PgPool) {
    let repo = Arc::new(repo(&pool));
    let results = at_once(
        &repo,
        "hot",
        (0..50).map(|_| CounterCommand::Add { n: 3 }).collect(),
    )
    .await;
    let applied = results
        .iter()
        .filter(|r| matches!(r, Ok(Executed::Applied { .. })))
        .count();
    let rejected = results
        .iter()
        .filter(|r| matches!(r, Err(CommandError::Rejected(CounterError::TooHigh))))
        .count();
    assert_eq!((applied, rejected), (33, 17), "33 × 3 = 99 fits under 100");
    let (stored, _) = versions_and_transactions(&pool, "counter-hot").await;
    assert_eq!(stored, (1..=33).collect::<Vec<_>>());
    assert_eq!(repo.load("hot").await.unwrap().state.value, 99);
}

#[sqlx::test(migrations = "./migrations")]
async fn commands_queued_behind_a_batch_that_conflicted_decide_again_and_all_land(pool: PgPool) {
    let a = Arc::new(repo(&pool));
    let b = repo(&pool);
    let ctx = CommandContext::default();
    a.execute("hot", &CounterCommand::Add { n: 1 }, &ctx, ok)
        .await
        .unwrap();
    // Another process moves the stream: `a`'s cached state is now behind, so its next batch
    // conflicts, and the commands queued behind that batch were decided on a state that never
    // existed.
    b.execute("hot", &CounterCommand::Add { n: 1 }, &ctx, ok)
        .await
        .unwrap();
    let results = at_once(
        &a,
        "hot",
        (0..20).map(|_| CounterCommand::Add { n: 1 }).collect(),
    )
    .await;
    for r in results {
        r.unwrap();
    }
    let (stored, _) = versions_and_transactions(&pool, "counter-hot").await;
    assert_eq!(stored, (1..=22).collect::<Vec<_>>());
    assert_eq!(a.load("hot").await.unwrap().state.value, 22);
    assert_eq!(b.load("hot").await.unwrap().state.value, 22);
}

#[sqlx::test(migrations = "./migrations")]
async fn a_keyed_command_on_a_hot_stream_is_not_starved(pool: PgPool) {
    let repo = Arc::new(repo(&pool));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let (repo, stop) = (repo.clone(), stop.clone());
            tokio::spawn(async move {
                let mut applied = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    repo.execute(
                        "hot",
                        &CounterCommand::Add { n: 0 },
                        &CommandContext::default(),
                        ok,
                    )
                    .await
                    .unwrap();
                    applied += 1;
                }
                applied
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ctx = CommandContext {
        idempotency: Some(IdempotencyRequest::new("key-hot", "POST", "/x", b"{}")),
        ..Default::default()
    };
    let keyed = tokio::time::timeout(
        Duration::from_secs(60),
        repo.execute("hot", &CounterCommand::Add { n: 5 }, &ctx, ok),
    )
    .await
    .expect("the keyed command got its turn while 8 writers kept the stream busy");
    keyed.unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut applied = 1;
    for w in writers {
        applied += w.await.unwrap();
    }
    let (stored, _) = versions_and_transactions(&pool, "counter-hot").await;
    assert_eq!(stored, (1..=applied).collect::<Vec<_>>());
    assert_eq!(repo.load("hot").await.unwrap().state.value, 5);
}

#[sqlx::test(migrations = "./migrations")]
async fn batches_in_transactions_and_queued_commands_on_one_stream_lose_no_update(pool: PgPool) {
    let repo = Arc::new(repo(&pool));
    // A participant's batches, each in a transaction of its own and retried on a conflict,
    // while commands keep the stream's queue busy.
    let batches = {
        let (repo, pool) = (repo.clone(), pool.clone());
        tokio::spawn(async move {
            let metadata = Metadata::new_root();
            let mut conflicts = 0;
            for _ in 0..10 {
                loop {
                    let mut tx = pool.begin().await.unwrap();
                    let mut batch = repo.batch();
                    batch
                        .execute(&mut tx, "hot", &CounterCommand::Add { n: 1 }, &metadata)
                        .await
                        .unwrap()
                        .unwrap();
                    match batch.flush(&mut tx).await {
                        Ok(()) => {
                            tx.commit().await.unwrap();
                            batch.committed().await;
                            break;
                        }
                        Err(BatchError::Append(AppendError::Conflict { .. })) => {
                            tx.rollback().await.unwrap();
                            conflicts += 1;
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            conflicts
        })
    };
    let results = at_once(
        &repo,
        "hot",
        (0..60).map(|_| CounterCommand::Add { n: 1 }).collect(),
    )
    .await;
    let conflicts = batches.await.unwrap();
    let applied = results
        .iter()
        .filter(|r| matches!(r, Ok(Executed::Applied { .. })))
        .count() as i64;
    for r in &results {
        match r {
            Ok(_) | Err(CommandError::Conflict { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    let (stored, _) = versions_and_transactions(&pool, "counter-hot").await;
    assert_eq!(
        stored,
        (1..=applied + 10).collect::<Vec<_>>(),
        "{conflicts} batch conflicts"
    );
    let value: i64 = sqlx::query_scalar(
        "SELECT sum((payload->>'n')::int8)::int8 FROM events WHERE stream_id = 'counter-hot'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(value, applied + 10);
    assert_eq!(repo.load("hot").await.unwrap().state.value, applied + 10);
    // The cache serves the next command from the right state.
    match repo
        .execute(
            "hot",
            &CounterCommand::Add { n: 1 },
            &CommandContext::default(),
            ok,
        )
        .await
        .unwrap()
    {
        Executed::Applied { outcome, .. } => assert_eq!(outcome.version, applied + 11),
        other => panic!("{other:?}"),
    }
}
