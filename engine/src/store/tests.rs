use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::*;
use crate::outbox::{enqueue, OutboxMessage};

fn new_event(n: i64) -> NewEvent {
    NewEvent {
        message_id: Uuid::now_v7(),
        event_type: "counted".into(),
        schema_version: 1,
        payload: json!({ "n": n }),
        metadata: Metadata::new_root(),
    }
}

/// The expected and actual versions of an append that must be a conflict.
fn conflict(result: Result<Vec<RecordedEvent>, AppendError>) -> (i64, i64) {
    match result {
        Err(AppendError::Conflict {
            expected, actual, ..
        }) => (expected, actual),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = "./migrations")]
async fn appends_number_versions_from_the_expected_one(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let mut tx = pool.begin().await.unwrap();
    let first = store
        .append(&mut tx, "c-1", 0, &[new_event(1), new_event(2)])
        .await
        .unwrap();
    let second = store
        .append(&mut tx, "c-1", 2, &[new_event(3)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let versions: Vec<i64> = first
        .iter()
        .chain(&second)
        .map(|e| e.envelope.stream_version)
        .collect();
    assert_eq!(versions, [1, 2, 3]);

    let read = store.read_stream("c-1", 1, 100).await.unwrap();
    assert_eq!(
        read.iter()
            .map(|e| e.envelope.payload["n"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(read, [first, second].concat());
    assert_eq!(
        store.read_stream("c-1", 2, 1).await.unwrap()[0]
            .envelope
            .stream_version,
        2
    );
    assert_eq!(store.stream_version("c-1").await.unwrap(), 3);
    assert_eq!(store.stream_version("c-unknown").await.unwrap(), 0);
}

#[sqlx::test(migrations = "./migrations")]
async fn a_stale_expected_version_is_a_typed_conflict(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let mut tx = pool.begin().await.unwrap();
    store
        .append(&mut tx, "c-1", 0, &[new_event(1), new_event(2)])
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    assert_eq!(
        conflict(store.append(&mut tx, "c-1", 1, &[new_event(3)]).await),
        (1, 2)
    );
    tx.rollback().await.unwrap();
    assert_eq!(store.stream_version("c-1").await.unwrap(), 2);
}

#[sqlx::test(migrations = "./migrations")]
async fn an_expected_version_ahead_of_the_stream_never_leaves_a_gap(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let mut tx = pool.begin().await.unwrap();
    assert_eq!(
        conflict(store.append(&mut tx, "c-1", 5, &[new_event(1)]).await),
        (5, 0)
    );
    tx.rollback().await.unwrap();
    assert_eq!(count(&pool, "events").await, 0);

    // Several events: only the first checks the head, so the others may go in past it; the
    // append is still a conflict, with the stream's real head, and the rollback takes them.
    let mut tx = pool.begin().await.unwrap();
    store
        .append(&mut tx, "c-1", 0, &[new_event(1)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let events = [new_event(2), new_event(3), new_event(4)];
    assert_eq!(
        conflict(store.append(&mut tx, "c-1", 4, &events).await),
        (4, 1)
    );
    tx.rollback().await.unwrap();
    assert_eq!(store.stream_version("c-1").await.unwrap(), 1);
    assert_eq!(count(&pool, "events").await, 1);
}

#[sqlx::test(migrations = "./migrations")]
async fn a_failed_append_leaves_neither_events_nor_outbox_rows(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let mut tx = pool.begin().await.unwrap();
    store
        .append(&mut tx, "c-1", 0, &[new_event(1)])
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // Outbox rows first, then an append that conflicts: the caller rolls back both.
    let mut tx = pool.begin().await.unwrap();
    let recorded = store
        .append(&mut tx, "c-2", 0, &[new_event(1)])
        .await
        .unwrap();
    enqueue(
        &mut tx,
        &[OutboxMessage {
            topic: "test.events".into(),
            partition_key: "c-2".into(),
            envelope: recorded[0].envelope.clone(),
        }],
    )
    .await
    .unwrap();
    assert!(matches!(
        store.append(&mut tx, "c-1", 0, &[new_event(2)]).await,
        Err(AppendError::Conflict { .. })
    ));
    tx.rollback().await.unwrap();

    assert_eq!(count(&pool, "events").await, 1);
    assert_eq!(count(&pool, "outbox").await, 0);
}

#[sqlx::test(migrations = "./migrations")]
async fn concurrent_appends_at_one_version_let_exactly_one_win(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (store, pool) = (store.clone(), pool.clone());
        tasks.push(tokio::spawn(async move {
            let mut tx = pool.begin().await.unwrap();
            let r = store.append(&mut tx, "c-race", 0, &[new_event(i)]).await;
            match r {
                Ok(_) => {
                    tx.commit().await.unwrap();
                    true
                }
                Err(AppendError::Conflict { .. }) => false,
                Err(e) => panic!("{e}"),
            }
        }));
    }
    let mut winners = 0;
    for t in tasks {
        winners += t.await.unwrap() as i32;
    }
    assert_eq!(winners, 1);
    assert_eq!(store.stream_version("c-race").await.unwrap(), 1);
}

#[sqlx::test(migrations = "./migrations")]
async fn read_all_pages_by_global_position(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let mut tx = pool.begin().await.unwrap();
    store
        .append(&mut tx, "a-1", 0, &[new_event(1)])
        .await
        .unwrap();
    store
        .append(&mut tx, "b-1", 0, &[new_event(2), new_event(3)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let page1 = store.read_all(0, 2).await.unwrap();
    let page2 = store.read_all(page1[1].global_position, 2).await.unwrap();
    let streams: Vec<_> = page1
        .iter()
        .chain(&page2)
        .map(|e| e.envelope.stream_id.as_str())
        .collect();
    assert_eq!(streams, ["a-1", "b-1", "b-1"]);
}

#[sqlx::test(migrations = "./migrations")]
async fn append_and_publish_writes_each_event_as_its_envelope_in_version_order(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let mut tx = pool.begin().await.unwrap();
    store
        .append(&mut tx, "b-1", 0, &[new_event(0)])
        .await
        .unwrap();
    let mut event = new_event(1);
    event.metadata.saga_id = Some("a saga".into());
    let recorded = store
        .append_and_publish(
            &mut tx,
            &[
                ("a-1", 0, &[event, new_event(2)]),
                ("b-1", 1, &[new_event(3)]),
            ],
            &["a.events", "b.events"],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let rows: Vec<(i16, String, String, Uuid, serde_json::Value)> = sqlx::query_as(
        "SELECT shard, topic, partition_key, message_id, envelope::jsonb FROM outbox ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let expected: Vec<(i16, String, String, Uuid, serde_json::Value)> = recorded
        .iter()
        .zip(["a.events", "b.events"])
        .flat_map(|(events, topic)| {
            events.iter().map(move |e| {
                let env = &e.envelope;
                (
                    crate::outbox::shard_of(&env.stream_id),
                    topic.to_owned(),
                    env.stream_id.clone(),
                    env.message_id,
                    serde_json::to_value(env).unwrap(),
                )
            })
        })
        .collect();
    assert_eq!(rows, expected);
    let decoded: crate::envelope::Envelope = serde_json::from_value(rows[0].4.clone()).unwrap();
    assert_eq!(decoded, recorded[0][0].envelope);
}

#[sqlx::test(migrations = "./migrations")]
async fn append_and_publish_with_a_stale_stream_is_a_conflict(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let mut tx = pool.begin().await.unwrap();
    store
        .append(&mut tx, "b-1", 0, &[new_event(0)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let result = store
        .append_and_publish(
            &mut tx,
            &[("a-1", 0, &[new_event(1)]), ("b-1", 0, &[new_event(2)])],
            &["a.events", "b.events"],
        )
        .await;
    assert!(
        matches!(&result, Err(AppendError::Conflict { stream_id, expected: 0, actual: 1 }) if stream_id == "b-1"),
        "{result:?}"
    );
    tx.rollback().await.unwrap();
    assert_eq!(count(&pool, "events").await, 1);
    assert_eq!(count(&pool, "outbox").await, 0);
}

fn log_store(pool: &PgPool) -> EventStore {
    EventStore::new(pool.clone()).with_publishing(Publishing::Log(crate::outbox::TopicLayout {
        prefix: "t".into(),
        partitions: 2,
    }))
}

/// `(partition, offset, stream_id, stream_version)` of every logged event, in log order.
async fn logged_events(pool: &PgPool) -> Vec<(i32, i64, String, i64)> {
    sqlx::query_as(
        "SELECT partition, \"offset\", envelope::jsonb->>'stream_id',
                (envelope::jsonb->>'stream_version')::int8
         FROM message_log ORDER BY partition, \"offset\"",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// With [`Publishing::Log`] the events go to the log (not the outbox) in the append's
/// transaction: gap-free offsets from 0 per partition, each stream in version order, the
/// envelope as the outbox would have held it, and a rolled-back append leaves no offset used.
#[sqlx::test(migrations = "./migrations")]
async fn appends_published_to_the_log_take_gap_free_offsets_in_commit_order(pool: PgPool) {
    let store = log_store(&pool);
    // A rolled-back append first: its offsets are not lost to the next one.
    let mut tx = pool.begin().await.unwrap();
    store
        .append_and_publish_one(&mut tx, "s-0", 0, &[new_event(0)], "c.events")
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    // 16 writers, each appending 5 times to its own stream; streams share the 2 partitions.
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..16 {
        let (pool, store) = (pool.clone(), store.clone());
        writers.spawn(async move {
            for v in 0..5 {
                let mut tx = pool.begin().await.unwrap();
                store
                    .append_and_publish_one(
                        &mut tx,
                        &format!("s-{w}"),
                        v,
                        &[new_event(v)],
                        "c.events",
                    )
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            }
        });
    }
    // Meanwhile a reader never sees an offset before every lower one is visible.
    let reader = tokio::spawn({
        let pool = pool.clone();
        async move {
            let mut reads = 0;
            loop {
                let (n, end): (i64, i64) = sqlx::query_as(
                    "SELECT count(*), COALESCE(max(\"offset\") + 1, 0) FROM message_log WHERE partition = 0",
                )
                .fetch_one(&pool)
                .await
                .unwrap();
                assert_eq!(n, end, "a gap was visible");
                reads += 1;
                if n == 0 || reads < 50 {
                    tokio::task::yield_now().await;
                    continue;
                }
                let total: i64 = sqlx::query_scalar("SELECT count(*) FROM message_log")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                if total == 80 {
                    return reads;
                }
            }
        }
    });
    while let Some(r) = writers.join_next().await {
        r.unwrap();
    }
    assert!(reader.await.unwrap() >= 50);
    assert_eq!(count(&pool, "outbox").await, 0);
    let logged = logged_events(&pool).await;
    assert_eq!(logged.len(), 80);
    for partition in 0..2 {
        let offsets: Vec<i64> = logged
            .iter()
            .filter(|l| l.0 == partition)
            .map(|l| l.1)
            .collect();
        assert_eq!(offsets, (0..offsets.len() as i64).collect::<Vec<_>>());
    }
    for w in 0..16 {
        let versions: Vec<i64> = logged
            .iter()
            .filter(|l| l.2 == format!("s-{w}"))
            .map(|l| l.3)
            .collect();
        assert_eq!(versions, vec![1, 2, 3, 4, 5], "s-{w}");
    }
    let topics: Vec<String> = sqlx::query_scalar("SELECT DISTINCT topic FROM message_log")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(topics, vec!["t.c.events".to_owned()]);
}

/// A conflicting append through the log writes nothing once rolled back, and the heads
/// stay where they were.
#[sqlx::test(migrations = "./migrations")]
async fn a_conflicting_append_to_the_log_leaves_no_message(pool: PgPool) {
    let store = log_store(&pool);
    let mut tx = pool.begin().await.unwrap();
    store
        .append_and_publish_one(&mut tx, "s-1", 0, &[new_event(1)], "c.events")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let (expected, actual) = conflict(
        store
            .append_and_publish_one(&mut tx, "s-1", 0, &[new_event(2)], "c.events")
            .await,
    );
    assert_eq!((expected, actual), (0, 1));
    tx.rollback().await.unwrap();
    assert_eq!(count(&pool, "message_log").await, 1);
    let heads: i64 = sqlx::query_scalar("SELECT sum(next_offset)::int8 FROM message_log_heads")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(heads, 1);
}

/// Other messages go to the log through [`EventStore::publish`], after the events of the
/// same transaction in their partition, and in their given order.
#[sqlx::test(migrations = "./migrations")]
async fn messages_published_to_the_log_follow_the_events_of_their_transaction(pool: PgPool) {
    let store = log_store(&pool);
    let mut tx = pool.begin().await.unwrap();
    store
        .append_and_publish_one(&mut tx, "k", 0, &[new_event(1)], "c.events")
        .await
        .unwrap();
    let messages: Vec<OutboxMessage> = (0..3)
        .map(|n| OutboxMessage {
            topic: "c.events".into(),
            partition_key: "k".into(),
            envelope: Envelope {
                message_id: Uuid::now_v7(),
                stream_id: "k".into(),
                stream_version: 10 + n,
                event_type: "other".into(),
                schema_version: 1,
                payload: json!({}),
                metadata: Metadata::new_root(),
            },
        })
        .collect();
    store.publish(&mut tx, &messages).await.unwrap();
    tx.commit().await.unwrap();
    let versions: Vec<(i64, i64)> = logged_events(&pool)
        .await
        .into_iter()
        .map(|l| (l.1, l.3))
        .collect();
    assert_eq!(versions, vec![(0, 1), (1, 10), (2, 11), (3, 12)]);
}
