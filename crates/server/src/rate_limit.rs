//! Request-rate limits per API key: one token bucket per key and kind of limit
//! (`[server.rate_limit]`), checked when a request's key is authorized.
//!
//! A bucket is kept as GCRA (the "generic cell rate algorithm"), which is a token bucket written
//! as one number: the theoretical arrival time (TAT) of the next request if the key sent at
//! exactly its rate. A request is allowed while that time is at most `burst` intervals ahead of
//! now. One `AtomicU64` per bucket and a compare-and-swap per request: no lock, no allocation,
//! no timer, and a bucket left alone is full again without anyone refilling it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::RateLimit;

const NANOS: u64 = 1_000_000_000;

/// What the bucket decides about one request at `now` (nanoseconds on a monotonic clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Allowed; the bucket's new theoretical arrival time.
    Allow { tat: u64 },
    /// Refused; the request would be allowed after this long.
    Deny { wait: Duration },
}

/// The GCRA step: with emission interval `T = 1/per_second` and tolerance `burst * T`, a request
/// at `now` moves the TAT to `max(tat, now) + T` if that is at most `now + burst * T`.
pub(crate) fn decide(tat: u64, now: u64, limit: RateLimit) -> Decision {
    let interval = (NANOS / u64::from(limit.per_second.max(1))).max(1);
    let tolerance = interval.saturating_mul(u64::from(limit.burst));
    let next = tat.max(now).saturating_add(interval);
    let allowed_until = now.saturating_add(tolerance);
    if next <= allowed_until {
        Decision::Allow { tat: next }
    } else {
        Decision::Deny {
            wait: Duration::from_nanos(next - allowed_until),
        }
    }
}

/// Whole seconds for a `Retry-After` header: rounded up, at least 1.
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_nanos().div_ceil(u128::from(NANOS)).max(1) as u64
}

/// Nanoseconds since the first call in this process (a monotonic clock for the buckets).
pub(crate) fn now_nanos() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// One token bucket. Starts full.
#[derive(Debug, Default)]
pub(crate) struct Bucket {
    tat: AtomicU64,
}

impl Bucket {
    /// Takes a token at `now`, or says how long until one is there.
    pub(crate) fn take(&self, now: u64, limit: RateLimit) -> Result<(), Duration> {
        let mut current = self.tat.load(Ordering::Relaxed);
        loop {
            match decide(current, now, limit) {
                Decision::Deny { wait } => return Err(wait),
                Decision::Allow { tat } => {
                    match self.tat.compare_exchange_weak(
                        current,
                        tat,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => return Ok(()),
                        Err(seen) => current = seen,
                    }
                }
            }
        }
    }
}

/// A key's buckets, one per kind of limit (a key uses one or two of them).
#[derive(Debug, Default)]
pub(crate) struct KeyBuckets {
    pub(crate) ingest: Bucket,
    pub(crate) read: Bucket,
    pub(crate) admin: Bucket,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = NANOS;

    fn limit(per_second: u32, burst: u32) -> RateLimit {
        RateLimit { per_second, burst }
    }

    /// Takes as many tokens as the bucket gives at `now`.
    fn drain(b: &Bucket, now: u64, l: RateLimit) -> (u32, Duration) {
        let mut n = 0;
        loop {
            match b.take(now, l) {
                Ok(()) => n += 1,
                Err(wait) => return (n, wait),
            }
        }
    }

    #[test]
    fn a_full_bucket_gives_its_burst_then_refills_at_the_rate() {
        let l = limit(2, 5);
        let b = Bucket::default();
        let t0 = 100 * SEC;
        let (n, wait) = drain(&b, t0, l);
        assert_eq!(n, 5, "a bucket left alone is full");
        assert_eq!(wait, Duration::from_millis(500), "one token every 1/2 s");
        // One second later: two more tokens, no more.
        let (n, _) = drain(&b, t0 + SEC, l);
        assert_eq!(n, 2);
        // Left alone long enough it is full again, never fuller.
        let (n, _) = drain(&b, t0 + 100 * SEC, l);
        assert_eq!(n, 5);
    }

    #[test]
    fn the_wait_is_exactly_until_the_next_token() {
        let l = limit(1, 1);
        let b = Bucket::default();
        assert_eq!(b.take(10 * SEC, l), Ok(()));
        assert_eq!(
            b.take(10 * SEC + SEC / 4, l),
            Err(Duration::from_millis(750))
        );
        assert_eq!(b.take(11 * SEC, l), Ok(()));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
    }

    #[test]
    fn huge_rates_and_bursts_do_not_overflow() {
        let l = limit(u32::MAX, u32::MAX);
        let b = Bucket::default();
        for _ in 0..1000 {
            assert_eq!(b.take(u64::MAX - 10, l), Ok(()));
        }
    }

    #[test]
    fn concurrent_takers_never_get_more_than_the_burst() {
        let l = limit(1, 1000);
        let b = std::sync::Arc::new(Bucket::default());
        let now = 50 * SEC;
        let taken: u32 = (0..4)
            .map(|_| {
                let b = std::sync::Arc::clone(&b);
                std::thread::spawn(move || drain(&b, now, l).0)
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(taken, 1000);
    }
}
