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
