//! A circuit breaker per outside-world participant: it opens when too many recent calls
//! failed, lets one probe call through once it has been open a while (half-open), and closes
//! again when the probe succeeds. While it is open no call is made: the commands wait.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::metrics::metrics;

/// When a [`Breaker`] opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// The calls that count: those of the last `window`.
    pub window: Duration,
    /// No opening on fewer calls than this in the window.
    pub min_calls: usize,
    /// The breaker opens when at least this share of the window's calls failed (0 to 1).
    pub failure_ratio: f64,
    /// How long it stays open before a probe call is let through.
    pub open_for: Duration,
}

impl Default for BreakerSettings {
    /// Opens when half of at least 5 calls in the last 30 s failed; probes after 5 s.
    fn default() -> Self {
        BreakerSettings {
            window: Duration::from_secs(30),
            min_calls: 5,
            failure_ratio: 0.5,
            open_for: Duration::from_secs(5),
        }
    }
}

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls are made.
    Closed,
    /// One probe call may be made; its outcome closes or reopens the breaker.
    HalfOpen,
    /// No call is made until the open period ends.
    Open,
}

impl BreakerState {
    /// `closed`, `half_open` or `open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }

    fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

struct Inner {
    state: BreakerState,
    /// Recent calls: when, and whether they failed.
    calls: VecDeque<(Instant, bool)>,
    /// While open: when a probe may go.
    open_until: Instant,
    /// While half-open: whether the probe is out.
    probing: bool,
}

/// The circuit breaker of one outside-world participant in this process. Its state is the
/// `sagaflow_circuit_breaker_state` series and shows in `GET /readyz`.
pub struct Breaker {
    participant: &'static str,
    settings: BreakerSettings,
    inner: Mutex<Inner>,
}

impl Breaker {
    /// A closed breaker for `participant`.
    pub fn new(participant: &'static str, settings: BreakerSettings) -> Self {
        metrics()
            .breaker_state
            .with_label_values(&[participant])
            .set(0);
        Breaker {
            participant,
            settings,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                calls: VecDeque::new(),
                open_until: Instant::now(),
                probing: false,
            }),
        }
    }

    /// The participant it guards.
    pub fn participant(&self) -> &'static str {
        self.participant
    }

    /// Its state now (an open breaker whose period ended reads as half-open).
    pub fn state(&self) -> BreakerState {
        let mut inner = self.inner.lock().expect("not poisoned");
        self.advance(&mut inner, Instant::now());
        inner.state
    }

    fn set(&self, inner: &mut Inner, state: BreakerState) {
        if inner.state != state {
            tracing::warn!(
                participant = self.participant,
                from = inner.state.as_str(),
                to = state.as_str(),
                "circuit breaker changed state"
            );
            if state == BreakerState::Open {
                metrics()
                    .breaker_opened
                    .with_label_values(&[self.participant])
                    .inc();
            }
        }
        inner.state = state;
        metrics()
            .breaker_state
            .with_label_values(&[self.participant])
            .set(state.gauge());
    }

    fn advance(&self, inner: &mut Inner, now: Instant) {
        if inner.state == BreakerState::Open && now >= inner.open_until {
            inner.probing = false;
            self.set(inner, BreakerState::HalfOpen);
        }
    }

    /// Whether a call may be made now; if not, when to ask again.
    pub fn permit(&self) -> Result<(), Instant> {
        let now = Instant::now();
        let mut inner = self.inner.lock().expect("not poisoned");
        self.advance(&mut inner, now);
        match inner.state {
            BreakerState::Closed => Ok(()),
            BreakerState::Open => Err(inner.open_until),
            BreakerState::HalfOpen if !inner.probing => {
                inner.probing = true;
                Ok(())
            }
            // The probe is out; its outcome decides.
            BreakerState::HalfOpen => Err(now + Duration::from_millis(250)),
        }
    }

    /// Records the outcome of a permitted call: `failed` for a technical failure (a business
    /// rejection is an answer, not a failure).
    pub fn record(&self, failed: bool) {
        let now = Instant::now();
        let mut inner = self.inner.lock().expect("not poisoned");
        match inner.state {
            BreakerState::HalfOpen => {
                inner.probing = false;
                inner.calls.clear();
                if failed {
                    inner.open_until = now + self.settings.open_for;
                    self.set(&mut inner, BreakerState::Open);
                } else {
                    self.set(&mut inner, BreakerState::Closed);
                }
            }
            BreakerState::Open => {}
            BreakerState::Closed => {
                inner.calls.push_back((now, failed));
                while inner
                    .calls
                    .front()
                    .is_some_and(|(at, _)| now.duration_since(*at) > self.settings.window)
                {
                    inner.calls.pop_front();
                }
                let failures = inner.calls.iter().filter(|(_, f)| *f).count();
                let calls = inner.calls.len();
                if calls >= self.settings.min_calls.max(1)
                    && failures as f64 >= self.settings.failure_ratio * calls as f64
                {
                    inner.calls.clear();
                    inner.open_until = now + self.settings.open_for;
                    self.set(&mut inner, BreakerState::Open);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(open_for: Duration) -> Breaker {
        Breaker::new(
            "test",
            BreakerSettings {
                window: Duration::from_secs(10),
                min_calls: 4,
                failure_ratio: 0.5,
                open_for,
            },
        )
    }

    #[test]
    fn opens_on_the_failure_ratio_probes_once_then_closes_or_reopens() {
        let b = breaker(Duration::from_millis(50));
        // Three failures of three calls: too few to judge.
        for _ in 0..3 {
            assert!(b.permit().is_ok());
            b.record(true);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.record(false);
        // Four calls, three failed: past the ratio, it opens.
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.permit().is_err());
        std::thread::sleep(Duration::from_millis(60));
        // Half-open: one probe, and only one.
        assert!(b.permit().is_ok());
        assert!(b.permit().is_err());
        b.record(true);
        assert_eq!(b.state(), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.permit().is_ok());
        b.record(false);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.permit().is_ok());
    }

    #[test]
    fn rejections_and_successes_keep_it_closed() {
        let b = breaker(Duration::from_secs(5));
        for i in 0..20 {
            b.record(i % 3 == 2);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
