//! A doorbell wakes the waiters of one PostgreSQL notification channel: in this process
//! directly, in other processes through `LISTEN/NOTIFY`.
//!
//! Ringing is cheap and coalesced: however often it rings, at most one `pg_notify` is in
//! flight and at most one is sent per 5 ms, outside the writer's transaction (a `NOTIFY`
//! inside a transaction serializes every notifying commit). Each bell keeps one listening connection of its own
//! (outside the pool) and fans notifications out to all its waiters in the process. A ring is
//! never lost for a waiter that was busy: each waiter remembers the last ring it saw.
//!
//! A notification carries the ringing bell's origin, so the bell's own listener skips it:
//! its waiters were woken directly already. Without that, a ring woke this process's waiters a
//! second time, to find nothing new: in `bench saga` that was a fifth of the relay's polls and
//! of the consumers' fetches.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::Notify;

/// At most one `pg_notify` per bell per this interval.
const REMOTE_RING_INTERVAL: Duration = Duration::from_millis(5);

struct Inner {
    channel: &'static str,
    /// Sent with each notification; this bell's listener ignores its own.
    origin: String,
    pool: PgPool,
    rings: AtomicU64,
    wake: Notify,
    remote: Notify,
    listening: AtomicBool,
    /// Set once the task forwarding rings to `pg_notify` runs.
    forwarding: AtomicBool,
}

/// Rings a channel. Cloning shares the bell.
#[derive(Clone)]
pub struct Doorbell {
    inner: Arc<Inner>,
}

impl Doorbell {
    /// A bell on `channel`. Building it starts nothing: the task that forwards rings to
    /// `pg_notify` starts with the first ring, the listening connection with the first waiter.
    pub fn new(pool: PgPool, channel: &'static str) -> Self {
        let inner = Arc::new(Inner {
            channel,
            origin: uuid::Uuid::new_v4().simple().to_string(),
            pool,
            rings: AtomicU64::new(0),
            wake: Notify::new(),
            remote: Notify::new(),
            listening: AtomicBool::new(false),
            forwarding: AtomicBool::new(false),
        });
        Doorbell { inner }
    }

    /// Wakes every waiter, here and in other processes. Call it after the commit that made
    /// something new visible.
    pub fn ring(&self) {
        self.inner.rings.fetch_add(1, Ordering::SeqCst);
        self.inner.wake.notify_waiters();
        if !self.inner.forwarding.swap(true, Ordering::SeqCst) {
            tokio::spawn(forward(Arc::downgrade(&self.inner)));
        }
        self.inner.remote.notify_one();
    }

    /// A waiter on this bell. The first waiter starts the bell's listening connection.
    pub fn waiter(&self) -> Waiter {
        if !self.inner.listening.swap(true, Ordering::SeqCst) {
            tokio::spawn(listen(Arc::downgrade(&self.inner)));
        }
        Waiter {
            inner: self.inner.clone(),
            seen: self.inner.rings.load(Ordering::SeqCst),
        }
    }
}

/// Forwards this bell's rings to other processes with `pg_notify`, coalesced, until the bell
/// is dropped.
async fn forward(weak: std::sync::Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let pool = inner.pool.clone();
        let channel = inner.channel;
        let origin = inner.origin.clone();
        // Wait for a ring without keeping the bell alive.
        let notified = async { inner.remote.notified().await };
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
        }
        drop(inner);
        if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(&origin)
            .execute(&pool)
            .await
        {
            if pool.is_closed() {
                return;
            }
            tracing::debug!(channel, error = %e, "pg_notify failed; waiters fall back to polling");
        }
        // Every NOTIFY is a transaction that takes the notification queue's lock at commit;
        // under load one per few milliseconds wakes other processes as well as one per
        // commit, at a fraction of the cost.
        tokio::time::sleep(REMOTE_RING_INTERVAL).await;
    }
}

/// Forwards notifications from other processes to this process's waiters.
async fn listen(weak: std::sync::Weak<Inner>) {
    let (channel, origin, options) = match weak.upgrade() {
        Some(inner) => (
            inner.channel,
            inner.origin.clone(),
            inner.pool.connect_options().as_ref().clone(),
        ),
        None => return,
    };
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(options);
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(mut l) => match l.listen(channel).await {
                Ok(()) => l,
                Err(e) => {
                    tracing::debug!(channel, error = %e, "LISTEN failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            Err(e) => {
                tracing::debug!(channel, error = %e, "no listener connection; retrying");
                if weak.strong_count() == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let got = tokio::time::timeout(Duration::from_secs(5), listener.try_recv()).await;
            let Some(inner) = weak.upgrade() else { return };
            match got {
                // This bell's own ring: its waiters were woken when it rang.
                Ok(Ok(Some(n))) if n.payload() == origin => {}
                Ok(Ok(Some(_))) => {
                    inner.rings.fetch_add(1, Ordering::SeqCst);
                    inner.wake.notify_waiters();
                }
                Ok(Ok(None)) | Ok(Err(_)) => {
                    // The connection dropped; wake everyone in case something was missed.
                    inner.rings.fetch_add(1, Ordering::SeqCst);
                    inner.wake.notify_waiters();
                    break;
                }
                Err(_) => {} // quiet channel; check that the bell still exists
            }
        }
    }
}

/// Waits for the rings of one [`Doorbell`].
pub struct Waiter {
    inner: Arc<Inner>,
    seen: u64,
}

impl Waiter {
    /// Returns at once if the bell rang since the last call, else at the next ring or after
    /// `timeout` (the polling fallback).
    pub async fn wait(&mut self, timeout: Duration) {
        let notified = self.inner.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.inner.rings.load(Ordering::SeqCst) == self.seen {
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(timeout) => {}
            }
        }
        self.seen = self.inner.rings.load(Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// Waits until `waiter` wakes or `timeout` passes; whether it woke before the timeout.
    async fn woken(waiter: &mut Waiter, timeout: Duration) -> bool {
        let started = Instant::now();
        waiter.wait(timeout).await;
        started.elapsed() < timeout
    }

    #[sqlx::test(migrations = false)]
    async fn a_ring_wakes_this_process_once_and_other_processes_through_postgres(pool: PgPool) {
        // Two bells on one channel stand for two processes.
        let here = Doorbell::new(pool.clone(), "sagaflow_test_bell");
        let there = Doorbell::new(pool.clone(), "sagaflow_test_bell");
        let mut waiter_here = here.waiter();
        let mut waiter_there = there.waiter();
        // Each listener is up once a ring of the other bell wakes its waiter.
        let until = Instant::now() + Duration::from_secs(10);
        for (ringing, waiter) in [(&there, &mut waiter_here), (&here, &mut waiter_there)] {
            loop {
                ringing.ring();
                if woken(waiter, Duration::from_millis(300)).await {
                    break;
                }
                assert!(Instant::now() < until, "the listeners never came up");
            }
        }
        // Let the rings of the warm-up arrive, then count from here.
        tokio::time::sleep(Duration::from_millis(300)).await;
        waiter_here.wait(Duration::ZERO).await;
        waiter_there.wait(Duration::ZERO).await;

        here.ring();
        assert!(woken(&mut waiter_here, Duration::from_secs(1)).await);
        assert!(
            woken(&mut waiter_there, Duration::from_secs(5)).await,
            "the other process was not woken"
        );
        // Its own notification comes back to this bell's listener and wakes nobody again.
        assert!(
            !woken(&mut waiter_here, Duration::from_millis(500)).await,
            "this process was woken twice by one ring"
        );
    }
}
