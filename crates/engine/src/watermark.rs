//! Watermarks: how far each partition writer of this process has applied its log, so that a
//! partition fires a timer only once every partition that can forward into it (the commerce
//! partition with orders, any partition with a merged identity's events) has applied past the
//! timer's due time. What the writers share here decides only *when* a tick is appended; the
//! tick carries the watermark into the log, so replay decides exactly as live did.
//!
//! ```text
//!  writer B: timer due D ≤ now − slack ─► W = min(clock of every other writer) − slack
//!     W ≥ D ─► append storeline.tick {watermark: W} to B ─► B fires timers ≤ min(clock, W)
//!     W < D ─► ask the writers behind to move: an idle one appends a tick to itself
//! ```
//!
//! A writer publishes its clock after each commit, and its forwarded copies are appended before
//! that commit: a copy of an event received before D is in B's log before a tick that lets D
//! fire. The slack covers an event stamped a little before it reached its log (the stamp is
//! taken before the append's fsync).

use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::Notify;

/// How long an event may take from its `received_at` stamp to its log (ms): timers fire this much
/// after their due time at the earliest.
pub const SLACK_MS: i64 = 25;

/// One partition writer's figures, as operations see them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mark {
    /// The latest `received_at` it applied (ms).
    pub clock: i64,
    /// The watermark its timers fire up to (ms), once a tick carried one.
    pub watermark: Option<i64>,
    /// The due time of a timer that is due but held back for the watermark (ms).
    pub held: Option<i64>,
}

#[derive(Debug)]
pub struct Marks {
    clocks: Vec<AtomicI64>,
    watermarks: Vec<AtomicI64>,
    held: Vec<AtomicI64>,
    needs: Vec<AtomicI64>,
    wake: Vec<Notify>,
}

const NONE: i64 = i64::MIN;

impl Marks {
    pub fn new(partitions: u32) -> Marks {
        let v = |x: i64| (0..partitions).map(|_| AtomicI64::new(x)).collect();
        Marks {
            clocks: v(0),
            watermarks: v(NONE),
            held: v(NONE),
            needs: v(NONE),
            wake: (0..partitions).map(|_| Notify::new()).collect(),
        }
    }

    /// Partition `p` has applied up to `clock` and appended what that forwards; with its
    /// watermark when known (after a commit).
    ///
    /// A writer that holds a timer back for the clocks is woken once they let it fire.
    pub fn publish(&self, p: u32, clock: i64, watermark: Option<i64>) {
        let i = p as usize;
        self.clocks[i].fetch_max(clock, Ordering::AcqRel);
        if let Some(w) = watermark {
            self.watermarks[i].store(w, Ordering::Release);
        }
        for (j, held) in self.held.iter().enumerate() {
            let due = held.load(Ordering::Acquire);
            if j != i && due != NONE && self.available(j as u32) >= due {
                self.wake[j].notify_one();
            }
        }
    }

    /// The watermark partition `p` may fire its timers up to: the least clock of the others,
    /// less the slack.
    pub fn available(&self, p: u32) -> i64 {
        self.clocks
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != p as usize)
            .map(|(_, c)| c.load(Ordering::Acquire))
            .min()
            .unwrap_or(i64::MAX)
            .saturating_sub(SLACK_MS)
    }

    /// Partition `p` has a timer due at `due` that the watermark holds back: the partitions
    /// behind are asked to move their clocks past it (an idle writer ticks).
    pub fn request(&self, p: u32, due: i64) {
        self.held[p as usize].store(due, Ordering::Release);
        let want = due.saturating_add(SLACK_MS);
        for (i, c) in self.clocks.iter().enumerate() {
            if i != p as usize && c.load(Ordering::Acquire) < want {
                self.needs[i].fetch_max(want, Ordering::AcqRel);
                self.wake[i].notify_one();
            }
        }
    }

    /// Partition `p` holds no timer back any more.
    pub fn released(&self, p: u32) {
        self.held[p as usize].store(NONE, Ordering::Release);
    }

    /// The clock another partition waits for `p` to pass, if any.
    pub fn need(&self, p: u32) -> Option<i64> {
        let n = self.needs[p as usize].load(Ordering::Acquire);
        (n != NONE).then_some(n)
    }

    /// Resolves when another partition asks `p` to move its clock, or when the clocks let a
    /// timer `p` holds back fire.
    pub async fn asked(&self, p: u32) {
        self.wake[p as usize].notified().await;
    }

    pub fn mark(&self, p: u32) -> Mark {
        let i = p as usize;
        let opt = |a: &AtomicI64| Some(a.load(Ordering::Acquire)).filter(|x| *x != NONE);
        Mark {
            clock: self.clocks[i].load(Ordering::Acquire),
            watermark: opt(&self.watermarks[i]),
            held: opt(&self.held[i]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_is_the_least_other_clock_less_the_slack_and_a_request_asks_the_ones_behind() {
        let m = Marks::new(3);
        m.publish(0, 1_000, None);
        m.publish(1, 5_000, None);
        m.publish(2, 9_000, Some(4_000));
        assert_eq!(m.available(2), 1_000 - SLACK_MS);
        assert_eq!(m.available(0), 5_000 - SLACK_MS);
        m.request(2, 4_000);
        assert_eq!(m.need(0), Some(4_000 + SLACK_MS));
        assert_eq!(m.need(1), None, "partition 1 is past the due time already");
        assert_eq!(m.mark(2).held, Some(4_000));
        assert_eq!(m.mark(2).watermark, Some(4_000));
        // The holder is woken when the clocks let its timer fire: not while partition 0 is
        // behind, then once it moves past the due time plus the slack.
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        m.publish(1, 6_000, None);
        let mut early = std::pin::pin!(m.asked(2));
        assert!(
            early.as_mut().poll(&mut cx).is_pending(),
            "partition 0 is still behind"
        );
        m.publish(0, 4_000 + SLACK_MS, None);
        assert!(
            early.as_mut().poll(&mut cx).is_ready(),
            "the holder is woken"
        );
        m.released(2);
        assert_eq!(m.mark(2).held, None);
        // Clocks never go back.
        m.publish(1, 3_000, None);
        assert_eq!(m.mark(1).clock, 6_000);
    }
}
