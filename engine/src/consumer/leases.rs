//! Partition ownership within a consumer group, coordinated by PostgreSQL.
//!
//! Each member holds session advisory locks on a dedicated connection: one that says "I am a
//! member of this group" and one per partition it consumes. Every member aims for a fair
//! share (`ceil(partitions / members)`): it releases partitions above its share and takes free
//! ones below it. When a member dies its connection closes, its locks vanish, and the others
//! take its partitions at their next rebalance. Offsets are fenced separately (the consumer
//! commits them with a compare-and-set), so even two members that briefly both believe they
//! own a partition cannot apply a message twice.

use std::collections::BTreeSet;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

use crate::hash::fnv1a;

fn lock_key(s: &str) -> i32 {
    (fnv1a(s.as_bytes()) & 0x7fff_ffff) as i32
}

fn class_of(all: &[(String, i32, i32)], topic: &str) -> i32 {
    all.iter()
        .find(|(t, _, _)| t == topic)
        .map(|(_, _, c)| *c)
        .expect("known topic")
}

pub(crate) struct Leases {
    options: PgConnectOptions,
    conn: Option<PgConnection>,
    member_class: i32,
    member_id: i32,
    /// Every (topic, partition) of the group's topics, with its lock class.
    all: Vec<(String, i32, i32)>,
    pub(crate) owned: BTreeSet<(String, i32)>,
}

impl Leases {
    pub(crate) fn new(
        options: PgConnectOptions,
        group: &str,
        topics: &[String],
        partitions: i32,
    ) -> Self {
        let all = topics
            .iter()
            .flat_map(|t| {
                let class = lock_key(&format!("sagaflow-partition:{group}:{t}"));
                (0..partitions).map(move |p| (t.clone(), p, class))
            })
            .collect();
        Leases {
            options,
            conn: None,
            // Members of the group on these topics: a deployment under another topic prefix
            // in the same database is another group, and does not shrink this one's share.
            member_class: lock_key(&format!("sagaflow-member:{group}:{}", topics.join(","))),
            member_id: (rand::random::<u32>() & 0x7fff_ffff) as i32,
            all,
            owned: BTreeSet::new(),
        }
    }

    /// Adjusts ownership to the fair share; returns whether the owned set changed. On a lost
    /// connection every partition is given up (and taken again after reconnecting).
    pub(crate) async fn rebalance(&mut self) -> bool {
        match self.try_rebalance().await {
            Ok(changed) => changed,
            Err(e) => {
                tracing::warn!(error = %e, "consumer lease connection failed; releasing partitions");
                self.conn = None;
                let changed = !self.owned.is_empty();
                self.owned.clear();
                changed
            }
        }
    }

    async fn try_rebalance(&mut self) -> Result<bool, sqlx::Error> {
        if self.conn.is_none() {
            let mut conn = self.options.connect().await?;
            // A random member id; draw again in the unlikely case it is taken.
            loop {
                let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                    .bind(self.member_class)
                    .bind(self.member_id)
                    .fetch_one(&mut conn)
                    .await?;
                if got {
                    break;
                }
                self.member_id = (rand::random::<u32>() & 0x7fff_ffff) as i32;
            }
            self.conn = Some(conn);
            self.owned.clear();
        }
        let conn = self.conn.as_mut().expect("connected above");
        let members: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT objid) FROM pg_locks
             WHERE locktype = 'advisory' AND objsubid = 2 AND granted AND classid = ($1::int8)::oid
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .bind(i64::from(self.member_class))
        .fetch_one(&mut *conn)
        .await?;
        let members = members.max(1) as usize;
        let share = self.all.len().div_ceil(members);
        let mut changed = false;
        // Give up the surplus first, so that a newcomer finds free partitions.
        while self.owned.len() > share {
            let (topic, partition) = self.owned.iter().next_back().cloned().expect("non-empty");
            let class = class_of(&self.all, &topic);
            sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                .bind(class)
                .bind(partition)
                .execute(&mut *conn)
                .await?;
            self.owned.remove(&(topic, partition));
            changed = true;
        }
        for (topic, partition, class) in &self.all {
            if self.owned.len() >= share {
                break;
            }
            if self.owned.contains(&(topic.clone(), *partition)) {
                continue;
            }
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                .bind(*class)
                .bind(*partition)
                .fetch_one(&mut *conn)
                .await?;
            if got {
                self.owned.insert((topic.clone(), *partition));
                changed = true;
            }
        }
        Ok(changed)
    }

    pub(crate) async fn release_all(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.close().await;
        }
        self.owned.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::PgPool;

    fn leases(pool: &PgPool, topic: &str) -> Leases {
        Leases::new(
            pool.connect_options().as_ref().clone(),
            "group",
            &[topic.to_owned()],
            4,
        )
    }

    #[sqlx::test(migrations = "./migrations")]
    async fn members_share_the_partitions_of_their_own_topics_only(pool: PgPool) {
        let (mut a, mut b) = (leases(&pool, "one.t"), leases(&pool, "one.t"));
        // a takes all four, b joins, a gives two up, b takes them.
        for _ in 0..2 {
            a.rebalance().await;
            b.rebalance().await;
        }
        assert_eq!((a.owned.len(), b.owned.len()), (2, 2));
        // The same group name under another topic prefix is a group of its own.
        let mut other = leases(&pool, "two.t");
        other.rebalance().await;
        assert_eq!(other.owned.len(), 4);
        a.rebalance().await;
        assert_eq!(a.owned.len(), 2);
        for l in [&mut a, &mut b, &mut other] {
            l.release_all().await;
        }
    }
}
