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
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// One shard of the index. Sharding bounds the pause of a hash-map resize: one big map holding
/// millions of keys took about a second to grow, under the lock every request needs.
#[derive(Default)]
struct Shard {
    days: BTreeMap<i64, KeyMap<Position>>,
    in_flight: KeyMap<watch::Receiver<()>>,
}

impl Shard {
    fn lookup(&self, key: u128) -> Option<Position> {
        self.days.values().rev().find_map(|m| m.get(&key).copied())
    }

    /// Returns whether the key is new.
    fn insert(&mut self, key: u128, pos: Position, received_ms: i64) -> bool {
        self.days
            .entry(received_ms.div_euclid(DAY_MS))
            .or_default()
            .insert(key, pos)
            .is_none()
    }
}

const SHARDS: usize = 64;

/// The shard of a key: its high bits (the maps hash with its low bits).
fn shard_of(key: u128) -> usize {
    ((key >> 64) as usize) % SHARDS
}

pub struct Dedup {
    /// Two SipHash-1-3 keys drawn at start: the 128-bit key of `(source, id)` cannot be
    /// predicted, so no producer can craft an id that collides with another's and have that
    /// event answered as a duplicate without being stored. (The index is rebuilt at each start,
    /// so the keys need not persist.)
    hashers: [std::hash::RandomState; 2],
    shards: Vec<Mutex<Shard>>,
    entries: AtomicUsize,
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
        self.dedup.release(&self.keys);
    }
}

impl Dedup {
    pub fn new(window: Duration) -> Self {
        Dedup {
            hashers: [std::hash::RandomState::new(), std::hash::RandomState::new()],
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            entries: AtomicUsize::new(0),
            window_ms: window.as_millis() as i64,
            entries_gauge: metrics::gauge!("storeline_dedup_entries"),
        }
    }

    /// The index key of an event's `(source, id)`.
    pub fn key(&self, source: &str, id: &str) -> u128 {
        use std::hash::BuildHasher;
        let a = self.hashers[0].hash_one((source, id));
        let b = self.hashers[1].hash_one((source, id));
        (u128::from(a) << 64) | u128::from(b)
    }

    /// Records a stored event (used when rebuilding from the log and after appends).
    pub fn insert(&self, key: u128, pos: Position, received_ms: i64) {
        if self.shards[shard_of(key)]
            .lock()
            .insert(key, pos, received_ms)
        {
            self.entries.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn release(&self, keys: &[u128]) {
        for k in keys {
            self.shards[shard_of(*k)].lock().in_flight.remove(k);
        }
    }

    /// Reserves `keys` for one request, or returns what to wait for first.
    ///
    /// Shards are locked one at a time, in ascending order. If a key is in flight for another
    /// request, whatever this call reserved so far is released and it waits for that request:
    /// the request that reached the lowest contested shard first always proceeds.
    pub fn reserve(
        &self,
        keys: &[u128],
    ) -> Result<(Vec<Slot>, Reservation<'_>), Vec<watch::Receiver<()>>> {
        let (tx, rx) = watch::channel(());
        let mut order: Vec<usize> = (0..keys.len()).collect();
        // Stable: within a shard, indices stay ascending, so a key's first occurrence comes first.
        order.sort_by_key(|&i| shard_of(keys[i]));
        let mut slots = vec![Slot::New; keys.len()];
        let mut first_index: KeyMap<usize> = KeyMap::default();
        let mut reserved = Vec::new();
        let mut at = 0;
        while at < order.len() {
            let shard_no = shard_of(keys[order[at]]);
            let mut end = at;
            while end < order.len() && shard_of(keys[order[end]]) == shard_no {
                end += 1;
            }
            let mut shard = self.shards[shard_no].lock();
            let waits: Vec<_> = order[at..end]
                .iter()
                .filter_map(|&i| shard.in_flight.get(&keys[i]).cloned())
                .collect();
            if !waits.is_empty() {
                drop(shard);
                self.release(&reserved);
                return Err(waits);
            }
            for &i in &order[at..end] {
                let k = keys[i];
                if let Some(pos) = shard.lookup(k) {
                    slots[i] = Slot::Stored(pos);
                } else if let Some(&j) = first_index.get(&k) {
                    slots[i] = Slot::SameAs(j);
                } else {
                    first_index.insert(k, i);
                    shard.in_flight.insert(k, rx.clone());
                    reserved.push(k);
                }
            }
            at = end;
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
        for (k, pos) in stored {
            self.insert(*k, *pos, received_ms);
        }
        self.entries_gauge
            .set(self.entries.load(Ordering::Relaxed) as f64);
        drop(reservation);
    }

    /// Drops the days that are entirely older than the window.
    pub fn expire(&self, now_ms: i64) {
        let oldest_kept = (now_ms - self.window_ms).div_euclid(DAY_MS);
        for shard in &self.shards {
            let mut shard = shard.lock();
            let old: Vec<i64> = shard.days.range(..oldest_kept).map(|(d, _)| *d).collect();
            for d in old {
                if let Some(m) = shard.days.remove(&d) {
                    self.entries.fetch_sub(m.len(), Ordering::Relaxed);
                }
            }
        }
        self.entries_gauge
            .set(self.entries.load(Ordering::Relaxed) as f64);
    }

    pub fn window_ms(&self) -> i64 {
        self.window_ms
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
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
    fn repeats_point_at_the_first_occurrence_across_shards() {
        let d = Dedup::new(Duration::from_secs(7 * 86400));
        let keys: Vec<u128> = (0..200u128).map(|i| ((i % 50) << 64) | (i % 50)).collect();
        let (slots, _r) = d.reserve(&keys).unwrap();
        for (i, slot) in slots.iter().enumerate() {
            let expected = if i < 50 {
                Slot::New
            } else {
                Slot::SameAs(i % 50)
            };
            assert_eq!(*slot, expected, "index {i}");
        }
    }

    #[test]
    fn a_request_that_must_wait_keeps_no_reservation() {
        let d = Dedup::new(Duration::from_secs(7 * 86400));
        let a: u128 = 1 << 64; // shard 1
        let b: u128 = 2 << 64; // shard 2
        let (_, held) = d.reserve(&[b]).unwrap();
        assert!(d.reserve(&[a, b]).is_err(), "b is in flight");
        // a must not be left reserved by the request that backed off.
        let (slots, _) = d.reserve(&[a]).unwrap();
        assert_eq!(slots, vec![Slot::New]);
        drop(held);
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
