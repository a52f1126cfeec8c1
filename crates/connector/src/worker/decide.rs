//! What an attempt's verdict does to its delivery and its connector, decided without I/O, a
//! clock or randomness of its own (the writer passes `now` and a random draw), so every rule of
//! the retry schedule, the dead-letter queue and auto-disable is unit-tested here. The writer
//! (`intake.rs`: `outcome`) applies the decision: rows, counters, metrics, breaker, FIFO.

use std::time::Duration;

use crate::breaker::retry_delay_drawn;
use crate::{Verdict, clip};

/// The connector's retry rules, as configured (or the defaults for a connector that is gone).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule<'a> {
    /// The delays between attempts of one round; when they are used up the delivery is dead.
    pub retry: &'a [Duration],
    /// The spread of each delay (± this fraction).
    pub jitter: f64,
    /// A connector failing without a success for this long is disabled.
    pub disable_after: Option<Duration>,
}

/// Where the delivery goes next.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Next {
    Delivered,
    /// Attempted again at this time (ms since the epoch).
    Retry {
        at: i64,
    },
    /// Into the dead-letter queue: rejected, or the schedule is used up.
    Dead,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Decision {
    pub next: Next,
    /// The delivery's last error (`None` once delivered).
    pub last_error: Option<String>,
    /// The receiver's `Retry-After`, when it gave one (recorded with the attempt).
    pub retry_after_ms: Option<u64>,
    /// When the connector began failing: cleared by a delivery, unchanged by a rejection, set
    /// to `now` by the first failure.
    pub failing_since: Option<i64>,
    /// The connector has now failed for longer than `disable_after`: disable it.
    pub disable: bool,
}

/// The decision for the `round`-th attempt of the current round (1 for the first) that ended
/// with `verdict` at `now`; `failing_since` and `disabled` are the connector's state before it,
/// `draw` gives a random number in `[0, 1)` for the jitter (asked only for a retry).
pub(crate) fn decide(
    verdict: &Verdict,
    round: usize,
    schedule: Schedule<'_>,
    failing_since: Option<i64>,
    disabled: bool,
    now: i64,
    draw: impl FnOnce() -> f64,
) -> Decision {
    let unchanged = |next, last_error| Decision {
        next,
        last_error,
        retry_after_ms: None,
        failing_since,
        disable: false,
    };
    match verdict {
        Verdict::Delivered { .. } => Decision {
            failing_since: None,
            ..unchanged(Next::Delivered, None)
        },
        Verdict::Reject { detail } => unchanged(Next::Dead, Some(clip(detail, 500))),
        Verdict::Retry { detail, after } => {
            let since = failing_since.unwrap_or(now);
            let (next, last_error) = if round < schedule.retry.len() {
                let delay =
                    retry_delay_drawn(schedule.retry, round, schedule.jitter, *after, draw());
                let at = now + delay.as_millis() as i64;
                (Next::Retry { at }, clip(detail, 500))
            } else {
                let last = format!(
                    "gave up after {round} attempts; last: {}",
                    clip(detail, 400)
                );
                (Next::Dead, last)
            };
            Decision {
                next,
                last_error: Some(last_error),
                retry_after_ms: after.map(|a| a.as_millis() as u64),
                failing_since: Some(since),
                disable: !disabled
                    && schedule
                        .disable_after
                        .is_some_and(|limit| now - since >= limit.as_millis() as i64),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: [Duration; 3] = [
        Duration::from_secs(0),
        Duration::from_secs(10),
        Duration::from_secs(60),
    ];
    const NOW: i64 = 1_000_000;

    fn schedule(disable_after: Option<Duration>) -> Schedule<'static> {
        Schedule {
            retry: &S,
            jitter: 0.0,
            disable_after,
        }
    }

    fn retry(after: Option<Duration>) -> Verdict {
        Verdict::Retry {
            detail: "HTTP 503".into(),
            after,
        }
    }

    #[test]
    fn a_delivery_or_a_rejection_ends_the_delivery_and_only_a_delivery_ends_the_failing() {
        let d = decide(
            &Verdict::Delivered {
                detail: "200".into(),
            },
            1,
            schedule(None),
            Some(5),
            false,
            NOW,
            || 0.5,
        );
        assert_eq!(
            (d.next, d.last_error, d.failing_since),
            (Next::Delivered, None, None)
        );
        let d = decide(
            &Verdict::Reject {
                detail: "HTTP 400".into(),
            },
            1,
            schedule(None),
            Some(5),
            false,
            NOW,
            || 0.5,
        );
        assert_eq!(d.next, Next::Dead);
        assert_eq!(d.last_error.as_deref(), Some("HTTP 400"));
        assert_eq!(d.failing_since, Some(5));
        assert!(!d.disable);
    }

    #[test]
    fn a_failure_is_retried_on_the_schedule_until_it_is_used_up() {
        for (round, delay) in [(1, 10_000), (2, 60_000)] {
            let d = decide(
                &retry(None),
                round,
                schedule(None),
                None,
                false,
                NOW,
                || 0.5,
            );
            assert_eq!(d.next, Next::Retry { at: NOW + delay }, "round {round}");
            assert_eq!(d.failing_since, Some(NOW));
        }
        let d = decide(&retry(None), 3, schedule(None), Some(7), false, NOW, || 0.5);
        assert_eq!(d.next, Next::Dead);
        assert_eq!(
            d.last_error.as_deref(),
            Some("gave up after 3 attempts; last: HTTP 503")
        );
        assert_eq!(d.failing_since, Some(7), "the first failure's time is kept");
    }

    #[test]
    fn a_longer_retry_after_wins_and_is_recorded() {
        let after = Some(Duration::from_secs(120));
        let d = decide(&retry(after), 1, schedule(None), None, false, NOW, || 0.5);
        assert_eq!(d.next, Next::Retry { at: NOW + 120_000 });
        assert_eq!(d.retry_after_ms, Some(120_000));
        let shorter = decide(
            &retry(Some(Duration::from_secs(1))),
            1,
            schedule(None),
            None,
            false,
            NOW,
            || 0.5,
        );
        assert_eq!(shorter.next, Next::Retry { at: NOW + 10_000 });
    }

    #[test]
    fn jitter_spreads_the_delay_by_the_draw() {
        let s = Schedule {
            jitter: 0.2,
            ..schedule(None)
        };
        let at = |draw| match decide(&retry(None), 1, s, None, false, NOW, || draw).next {
            Next::Retry { at } => at - NOW,
            other => panic!("{other:?}"),
        };
        assert_eq!(at(0.0), 8_000);
        assert_eq!(at(0.5), 10_000);
        assert!((11_990..=12_000).contains(&at(0.9999)));
    }

    #[test]
    fn a_connector_failing_for_longer_than_allowed_is_disabled_once() {
        let limit = Some(Duration::from_secs(300));
        let young = decide(
            &retry(None),
            1,
            schedule(limit),
            Some(NOW - 299_999),
            false,
            NOW,
            || 0.5,
        );
        assert!(!young.disable);
        let old = decide(
            &retry(None),
            1,
            schedule(limit),
            Some(NOW - 300_000),
            false,
            NOW,
            || 0.5,
        );
        assert!(old.disable);
        let again = decide(
            &retry(None),
            1,
            schedule(limit),
            Some(NOW - 300_000),
            true,
            NOW,
            || 0.5,
        );
        assert!(!again.disable, "already disabled");
        let never = decide(&retry(None), 1, schedule(None), Some(0), false, NOW, || 0.5);
        assert!(!never.disable);
    }
}
