//! Per-connector flow control, kept by the worker's writer: a circuit breaker (stop attempting an
//! endpoint that keeps failing, then let one trial through after a cool-down), a rate limiter
//! (attempts spaced to `rate_limit` per second), and the retry delay with jitter.
//!
//! ```text
//!   closed ──(N consecutive retryable failures)──► open ──(cool-down over)──► half-open
//!     ▲                                             ▲                            │ one trial
//!     └───────────────(trial delivered)─────────────┴──────(trial failed)────────┘
//! ```

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    Closed,
    /// No attempts until the instant (ms since the epoch).
    Open {
        until: i64,
    },
    /// One trial attempt is allowed (and `trial` says whether it is in flight).
    HalfOpen {
        trial: bool,
    },
}

impl Circuit {
    pub fn name(&self) -> &'static str {
        match self {
            Circuit::Closed => "closed",
            Circuit::Open { .. } => "open",
            Circuit::HalfOpen { .. } => "half_open",
        }
    }
    /// The gauge value: 0 closed, 1 open, 2 half-open.
    pub fn gauge(&self) -> f64 {
        match self {
            Circuit::Closed => 0.0,
            Circuit::Open { .. } => 1.0,
            Circuit::HalfOpen { .. } => 2.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Breaker {
    pub circuit: Circuit,
    failures: u32,
    threshold: u32,
    cooldown_ms: i64,
}

impl Breaker {
    /// `threshold` 0 never opens.
    pub fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            circuit: Circuit::Closed,
            failures: 0,
            threshold,
            cooldown_ms: cooldown.as_millis() as i64,
        }
    }

    /// How many attempts may start now (`usize::MAX` when closed), moving open → half-open
    /// once the cool-down is over.
    pub fn allowance(&mut self, now: i64) -> usize {
        if let Circuit::Open { until } = self.circuit
            && now >= until
        {
            self.circuit = Circuit::HalfOpen { trial: false };
        }
        match self.circuit {
            Circuit::Closed => usize::MAX,
            Circuit::Open { .. } | Circuit::HalfOpen { trial: true } => 0,
            Circuit::HalfOpen { trial: false } => 1,
        }
    }

    /// How many attempts may start, without moving the state (an open circuit counts as
    /// open even when its cool-down is over; [`Breaker::allowance`] moves it).
    pub fn peek(&self) -> usize {
        match self.circuit {
            Circuit::Closed => usize::MAX,
            Circuit::HalfOpen { trial: false } => 1,
            _ => 0,
        }
    }

    /// An attempt started (the trial, when half-open).
    pub fn started(&mut self) {
        if let Circuit::HalfOpen { .. } = self.circuit {
            self.circuit = Circuit::HalfOpen { trial: true };
        }
    }

    /// When the circuit may let an attempt through again, if it is open.
    pub fn reopens_at(&self) -> Option<i64> {
        match self.circuit {
            Circuit::Open { until } => Some(until),
            _ => None,
        }
    }

    /// An attempt reached the receiver and was answered (delivered, or rejected for reasons of
    /// its own): the endpoint works.
    pub fn success(&mut self) {
        self.failures = 0;
        self.circuit = Circuit::Closed;
    }

    /// A retryable failure. Returns true when this opened the circuit.
    pub fn failure(&mut self, now: i64) -> bool {
        self.failures = self.failures.saturating_add(1);
        let open = match self.circuit {
            Circuit::HalfOpen { .. } => true,
            Circuit::Closed => self.threshold > 0 && self.failures >= self.threshold,
            Circuit::Open { .. } => false,
        };
        if open {
            self.circuit = Circuit::Open {
                until: now + self.cooldown_ms,
            };
        }
        open
    }
}

/// Spaces attempts to at most `rate` per second: each attempt gets the next free slot.
#[derive(Debug, Clone)]
pub struct Limiter {
    interval: Option<Duration>,
    next: Instant,
}

impl Limiter {
    pub fn new(rate: Option<f64>) -> Limiter {
        Limiter {
            interval: rate.map(|r| Duration::from_secs_f64(1.0 / r)),
            next: Instant::now(),
        }
    }
    /// When the next attempt may start (now when unlimited).
    pub fn slot(&mut self) -> Instant {
        let now = Instant::now();
        let Some(iv) = self.interval else { return now };
        // A limiter idle for a while does not bank a burst beyond one second's worth.
        let floor = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
        let at = self.next.max(floor);
        self.next = at + iv;
        at
    }
}

/// The delay before the next attempt: the schedule's entry spread by ± `jitter`, or the
/// receiver's `Retry-After` when that is longer (capped at a day).
pub fn retry_delay(
    schedule: &[Duration],
    index: usize,
    jitter: f64,
    retry_after: Option<Duration>,
) -> Duration {
    retry_delay_drawn(schedule, index, jitter, retry_after, rand::random())
}

/// [`retry_delay`] with the random draw (in `[0, 1)`) given, so a caller can decide purely.
pub fn retry_delay_drawn(
    schedule: &[Duration],
    index: usize,
    jitter: f64,
    retry_after: Option<Duration>,
    draw: f64,
) -> Duration {
    let base = schedule.get(index).copied().unwrap_or_default();
    let spread = if jitter > 0.0 && !base.is_zero() {
        let f = 1.0 + jitter * (draw * 2.0 - 1.0);
        base.mul_f64(f.max(0.0))
    } else {
        base
    };
    match retry_after {
        Some(a) if a > spread => a.min(Duration::from_secs(24 * 3600)),
        _ => spread,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_lets_one_trial_through() {
        let mut b = Breaker::new(3, Duration::from_secs(10));
        assert!(!b.failure(0));
        assert!(!b.failure(0));
        assert_eq!(b.allowance(0), usize::MAX);
        assert!(b.failure(1_000));
        assert_eq!(b.allowance(5_000), 0);
        assert_eq!(b.reopens_at(), Some(11_000));
        assert_eq!(b.allowance(11_000), 1);
        b.started();
        assert_eq!(b.allowance(11_001), 0);
        assert!(b.failure(12_000), "a failed trial opens again");
        assert_eq!(b.allowance(22_000), 1);
        b.started();
        b.success();
        assert_eq!(b.circuit, Circuit::Closed);
        assert_eq!(b.allowance(22_001), usize::MAX);
    }

    #[test]
    fn zero_threshold_never_opens() {
        let mut b = Breaker::new(0, Duration::from_secs(1));
        for _ in 0..100 {
            assert!(!b.failure(0));
        }
        assert_eq!(b.allowance(0), usize::MAX);
    }

    #[test]
    fn jitter_stays_in_its_band_and_retry_after_wins_when_longer() {
        let s = [Duration::ZERO, Duration::from_secs(10)];
        for _ in 0..200 {
            let d = retry_delay(&s, 1, 0.2, None);
            assert!(
                d >= Duration::from_secs(8) && d <= Duration::from_secs(12),
                "{d:?}"
            );
        }
        assert_eq!(retry_delay(&s, 0, 0.2, None), Duration::ZERO);
        assert_eq!(
            retry_delay(&s, 1, 0.0, Some(Duration::from_secs(60))),
            Duration::from_secs(60)
        );
        assert_eq!(
            retry_delay(&s, 1, 0.0, Some(Duration::from_secs(1))),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn limiter_spaces_slots() {
        let mut l = Limiter::new(Some(100.0));
        let a = l.slot();
        let b = l.slot();
        let c = l.slot();
        assert!(b - a >= Duration::from_millis(9));
        assert!(c - b >= Duration::from_millis(9));
        let mut u = Limiter::new(None);
        let x = u.slot();
        assert!(u.slot() - x < Duration::from_millis(5));
    }
}
