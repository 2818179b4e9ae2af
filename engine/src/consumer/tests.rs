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

#[sqlx::test(migrations = "../migrations")]
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
#[sqlx::test(migrations = "../migrations")]
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
