//! Idempotent ingestion: `(source, id)` is unique within the dedup window.
//!
//! The index maps the 128-bit hash of `(source, id)` to where the event was stored. It lives in
//! memory, bucketed by day of arrival so old days drop off whole, and is rebuilt from the log at
//! start: the log is the only source of truth, so no crash can leave the index and the log
//! disagreeing.
//!
//! Concurrency: a request first *reserves* all its keys. A key already stored is a duplicate; a
//! key another request is storing right now makes this request wait for that one to finish (then
//! it tries again), so two concurrent retries of one event never both store it.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

/// Where a stored event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub partition: u32,
    pub offset: u64,
}

/// The keys are already hashes: use their low bits as is.
#[derive(Default)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u128(&mut self, i: u128) {
        self.0 = i as u64;
    }
}

type KeyMap<V> = HashMap<u128, V, BuildHasherDefault<IdentityHasher>>;

const DAY_MS: i64 = 24 * 3600 * 1000;

/// What a reservation found for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Not seen: this request stores it.
    New,
    /// Already stored there.
    Stored(Position),
    /// The same key appeared earlier in this request, at that index.
    SameAs(usize),
}

#[derive(Default)]
struct Inner {
    days: BTreeMap<i64, KeyMap<Position>>,
    in_flight: KeyMap<watch::Receiver<()>>,
    entries: usize,
}

pub struct Dedup {
    inner: Mutex<Inner>,
    window_ms: i64,
    entries_gauge: metrics::Gauge,
}

/// The keys a request is storing; dropping it without [`Dedup::complete`] releases them.
pub struct Reservation<'a> {
    dedup: &'a Dedup,
    keys: Vec<u128>,
    _done: watch::Sender<()>,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut inner = self.dedup.inner.lock();
        for k in &self.keys {
            inner.in_flight.remove(k);
        }
    }
}

impl Dedup {
    pub fn new(window: Duration) -> Self {
        Dedup {
            inner: Mutex::default(),
            window_ms: window.as_millis() as i64,
            entries_gauge: metrics::gauge!("storeline_dedup_entries"),
        }
    }

    fn lookup(inner: &Inner, key: u128) -> Option<Position> {
        inner.days.values().rev().find_map(|m| m.get(&key).copied())
    }

    /// Records a stored event (used when rebuilding from the log and after appends).
    pub fn insert(&self, key: u128, pos: Position, received_ms: i64) {
        let mut inner = self.inner.lock();
        Self::insert_locked(&mut inner, key, pos, received_ms);
    }

    fn insert_locked(inner: &mut Inner, key: u128, pos: Position, received_ms: i64) {
        if inner
            .days
            .entry(received_ms.div_euclid(DAY_MS))
            .or_default()
            .insert(key, pos)
            .is_none()
        {
            inner.entries += 1;
        }
    }

    /// Reserves `keys` for one request, or returns what to wait for first.
    pub fn reserve(
        &self,
        keys: &[u128],
    ) -> Result<(Vec<Slot>, Reservation<'_>), Vec<watch::Receiver<()>>> {
        let mut inner = self.inner.lock();
        let waits: Vec<_> = keys
            .iter()
            .filter_map(|k| inner.in_flight.get(k).cloned())
            .collect();
        if !waits.is_empty() {
            return Err(waits);
        }
        let (tx, rx) = watch::channel(());
        let mut slots = Vec::with_capacity(keys.len());
        let mut first_index: KeyMap<usize> = KeyMap::default();
        let mut reserved = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            if let Some(pos) = Self::lookup(&inner, *k) {
                slots.push(Slot::Stored(pos));
            } else if let Some(&j) = first_index.get(k) {
                slots.push(Slot::SameAs(j));
            } else {
                first_index.insert(*k, i);
                inner.in_flight.insert(*k, rx.clone());
                reserved.push(*k);
                slots.push(Slot::New);
            }
        }
        Ok((
            slots,
            Reservation {
                dedup: self,
                keys: reserved,
                _done: tx,
            },
        ))
    }

    /// Records where the reserved events were stored (`stored` holds `(key, position)` for every
    /// event that made it into the log) and releases the reservation.
    pub fn complete(
        &self,
        reservation: Reservation<'_>,
        stored: &[(u128, Position)],
        received_ms: i64,
    ) {
        {
            let mut inner = self.inner.lock();
            for (k, pos) in stored {
                Self::insert_locked(&mut inner, *k, *pos, received_ms);
            }
            self.entries_gauge.set(inner.entries as f64);
        }
        drop(reservation);
    }

    /// Drops the days that are entirely older than the window.
    pub fn expire(&self, now_ms: i64) {
        let mut inner = self.inner.lock();
        let oldest_kept = (now_ms - self.window_ms).div_euclid(DAY_MS);
        let old: Vec<i64> = inner.days.range(..oldest_kept).map(|(d, _)| *d).collect();
        for d in old {
            if let Some(m) = inner.days.remove(&d) {
                inner.entries -= m.len();
            }
        }
        self.entries_gauge.set(inner.entries as f64);
    }

    pub fn window_ms(&self) -> i64 {
        self.window_ms
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner.lock().entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Position = Position {
        partition: 1,
        offset: 7,
    };

    #[test]
    fn stored_keys_are_duplicates_and_repeats_in_one_request_point_back() {
        let d = Dedup::new(Duration::from_secs(7 * 86400));
        let (slots, r) = d.reserve(&[1, 2, 1]).unwrap();
        assert_eq!(slots, vec![Slot::New, Slot::New, Slot::SameAs(0)]);
        d.complete(r, &[(1, P)], 0);
        let (slots, _r) = d.reserve(&[1, 3]).unwrap();
        assert_eq!(slots, vec![Slot::Stored(P), Slot::New]);
    }

    #[test]
    fn a_key_in_flight_makes_others_wait_and_an_abandoned_one_is_released() {
        let d = Dedup::new(Duration::from_secs(7 * 86400));
        let (_, r) = d.reserve(&[5]).unwrap();
        let Err(waits) = d.reserve(&[5, 6]) else {
            panic!("key 5 is in flight")
        };
        assert_eq!(waits.len(), 1);
        drop(r);
        let (slots, _) = d.reserve(&[5, 6]).unwrap();
        assert_eq!(
            slots,
            vec![Slot::New, Slot::New],
            "an abandoned reservation stores nothing"
        );
    }

    #[test]
    fn days_older_than_the_window_expire_and_younger_ones_stay() {
        let d = Dedup::new(Duration::from_secs(7 * 86400));
        d.insert(1, P, 0);
        d.insert(2, P, 6 * DAY_MS);
        d.expire(7 * DAY_MS + 10);
        assert_eq!(
            d.len(),
            2,
            "7 days and 10 ms after day 0 started, day 0 is still in the window"
        );
        d.expire(8 * DAY_MS + 10);
        assert_eq!(d.len(), 1);
        assert_eq!(d.reserve(&[2]).unwrap().0, vec![Slot::Stored(P)]);
    }
}
