use super::*;
use crate::transport::postgres::PostgresTransport;
use crate::transport::TopicLayout;

struct Nothing;

#[async_trait]
impl Handler for Nothing {
    async fn handle(&self, _: &mut PgConnection, _: &Delivery) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn member(pool: &PgPool) -> Consumer {
    let transport = Arc::new(PostgresTransport::new(pool.clone(), TopicLayout::default()));
    Consumer::new(
        pool.clone(),
        transport,
        Arc::new(Nothing),
        ConsumerConfig::new("group", &["t"]),
    )
}

fn key(partition: i32) -> PartitionKey {
    ("t".to_string(), partition)
}

#[sqlx::test(migrations = "./migrations")]
async fn offsets_of_a_batch_move_together_and_only_from_the_positions_read(pool: PgPool) {
    let consumer = member(&pool);
    let (a, b) = (key(0), key(1));
    let mut tx = pool.begin().await.unwrap();
    consumer
        .commit_offsets(&mut tx, &[(&a, 0, 5), (&b, 0, 3)])
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // Partition 1 was read from a stale position: nothing moves.
    let mut tx = pool.begin().await.unwrap();
    let err = consumer
        .commit_offsets(&mut tx, &[(&a, 5, 9), (&b, 2, 4)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ConsumeError::OffsetMoved {
                partition: 1,
                expected: 2,
                ..
            }
        ),
        "{err}"
    );
    tx.rollback().await.unwrap();
    assert_eq!(consumer.committed_offset(&a).await.unwrap(), 5);
    assert_eq!(consumer.committed_offset(&b).await.unwrap(), 3);

    let mut tx = pool.begin().await.unwrap();
    consumer
        .commit_offsets(&mut tx, &[(&a, 5, 9), (&b, 3, 4)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(consumer.committed_offset(&a).await.unwrap(), 9);
    assert_eq!(consumer.committed_offset(&b).await.unwrap(), 4);
}

/// Two members that both believe they own a partition (one about to lose its lease) apply
/// the same batch: the second to commit fails, for an existing and for a new partition.
#[sqlx::test(migrations = "./migrations")]
async fn of_two_members_moving_the_same_offset_only_the_first_commits(pool: PgPool) {
    let first = member(&pool);
    let mut tx = pool.begin().await.unwrap();
    first
        .commit_offsets(&mut tx, &[(&key(0), 0, 10)])
        .await
        .unwrap();
    tx.commit().await.unwrap();

    for (partition, from) in [(0, 10), (7, 0)] {
        let mut winner = pool.begin().await.unwrap();
        first
            .commit_offsets(&mut winner, &[(&key(partition), from, from + 5)])
            .await
            .unwrap();
        let second = member(&pool);
        let loser = {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut tx = pool.begin().await.unwrap();
                // Waits for the winner's row lock or index entry.
                second
                    .commit_offsets(&mut tx, &[(&key(partition), from, from + 7)])
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        winner.commit().await.unwrap();
        let err = loser.await.unwrap().unwrap_err();
        assert!(
            matches!(err, ConsumeError::OffsetMoved { .. }),
            "partition {partition}: {err}"
        );
        assert_eq!(
            first.committed_offset(&key(partition)).await.unwrap(),
            from + 5
        );
    }
}

/// Counts the messages handed over, by id.
#[derive(Default)]
struct Counting(std::sync::Mutex<HashMap<Uuid, usize>>);

#[async_trait]
impl Handler for Counting {
    async fn handle(&self, _: &mut PgConnection, m: &Delivery) -> Result<(), HandlerError> {
        *self.0.lock().unwrap().entry(m.message_id()).or_default() += 1;
        Ok(())
    }
}

fn delivery(partition: i32, offset: i64, message_id: Uuid) -> Delivery {
    Delivery {
        topic: "t".into(),
        partition,
        offset,
        key: "k".into(),
        envelope: crate::envelope::Envelope {
            message_id,
            stream_id: "s-1".into(),
            stream_version: 1,
            event_type: "e".into(),
            schema_version: 1,
            payload: serde_json::json!({}),
            metadata: Default::default(),
        },
        decode_error: None,
    }
}

/// A message delivered twice in a batch, or again in a later one, is handed over once; a
/// group whose handler is idempotent by itself records no ids, gets the later copy, and
/// still gets a copy within one batch once.
#[sqlx::test(migrations = "./migrations")]
async fn redeliveries_are_skipped_by_id_unless_the_handler_is_idempotent(pool: PgPool) {
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    for idempotent in [false, true] {
        let group = if idempotent { "idempotent" } else { "by-id" };
        let mut config = ConsumerConfig::new(group, &["t"]);
        if idempotent {
            config = config.handler_is_idempotent();
        }
        let handler = Arc::new(Counting::default());
        let transport = Arc::new(PostgresTransport::new(pool.clone(), TopicLayout::default()));
        let consumer = Consumer::new(pool.clone(), transport, handler.clone(), config);

        let first = BTreeMap::from([
            (key(0), vec![delivery(0, 0, a), delivery(0, 1, a)]),
            (key(1), vec![delivery(1, 0, b)]),
        ]);
        let positions = BTreeMap::from([(key(0), 0), (key(1), 0)]);
        consumer.apply_together(&positions, &first).await.unwrap();
        // The relay published `a` again, later.
        let again = BTreeMap::from([(key(0), vec![delivery(0, 2, a)])]);
        let positions = BTreeMap::from([(key(0), 2)]);
        consumer.apply_together(&positions, &again).await.unwrap();

        let counts = handler.0.lock().unwrap().clone();
        let recorded: i64 =
            sqlx::query_scalar("SELECT count(*) FROM processed_messages WHERE consumer_group = $1")
                .bind(group)
                .fetch_one(&pool)
                .await
                .unwrap();
        if idempotent {
            assert_eq!((counts[&a], counts[&b], recorded), (2, 1, 0));
        } else {
            assert_eq!((counts[&a], counts[&b], recorded), (1, 1, 2));
        }
        assert_eq!(consumer.committed_offset(&key(0)).await.unwrap(), 3);
    }
}
