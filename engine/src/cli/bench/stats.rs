//! Latency percentiles and progress lines for benchmarks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Collected latencies of one phase.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    samples: Vec<Duration>,
}

impl Latencies {
    /// Records one operation's latency.
    pub fn record(&mut self, d: Duration) {
        self.samples.push(d);
    }

    /// Adds the samples of `other` (another worker's) to these.
    pub fn merge(&mut self, other: Latencies) {
        self.samples.extend(other.samples);
    }

    /// How many latencies were recorded.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// The `p`-th percentile (0–100) in milliseconds, nearest-rank.
    pub fn percentile_ms(&mut self, p: f64) -> f64 {
        if self.samples.is_empty() {
            return 0.0;
        }
        self.samples.sort_unstable();
        let rank = ((p / 100.0) * self.samples.len() as f64).ceil() as usize;
        let idx = rank.clamp(1, self.samples.len()) - 1;
        self.samples[idx].as_secs_f64() * 1000.0
    }
}

/// A counter shared by a phase's workers, printed once a second to stderr while it runs.
#[derive(Clone)]
pub struct Progress {
    count: Arc<AtomicU64>,
}

impl Progress {
    /// Starts printing `label`'s progress every second until the returned guard is dropped.
    pub fn start(label: &str, total: Option<u64>) -> (Progress, ProgressGuard) {
        let count = Arc::new(AtomicU64::new(0));
        let printer_count = count.clone();
        let label = label.to_owned();
        let handle = tokio::spawn(async move {
            let start = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut last = 0;
            loop {
                tick.tick().await;
                let now = printer_count.load(Ordering::Relaxed);
                let of = total.map(|t| format!("/{t}")).unwrap_or_default();
                eprintln!(
                    "  [{label}] {:>4.0}s {now}{of} done, {} in the last second",
                    start.elapsed().as_secs_f64(),
                    now - last
                );
                last = now;
            }
        });
        (Progress { count }, ProgressGuard { handle })
    }

    /// Counts `n` more operations done.
    pub fn add(&self, n: u64) {
        self.count.fetch_add(n, Ordering::Relaxed);
    }

    /// The operations counted so far.
    pub fn get(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Stops the progress printer when dropped.
pub struct ProgressGuard {
    handle: tokio::task::JoinHandle<()>,
}

impl Drop for ProgressGuard {
    fn drop(&mut self) {
        self.handle.abort();
    }
}
