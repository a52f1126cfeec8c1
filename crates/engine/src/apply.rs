//! One partition's fold: parse a run of records, load what they touch, apply the projections,
//! and commit the changed rows with the new offset. Shared by the live runner and by replay, so
//! both compute exactly the same state.

use std::sync::Arc;

use storeline_log::StoredRecord;
use storeline_state::{Commit, StateStore};

use crate::error::Result;
use crate::event::Ev;
use crate::project::{self, Emit, ProjectionConfig};
use crate::triggers::{Stage, rows};
use crate::views::{Keys, Views};

/// Rows cached per partition before the cache is dropped after a commit.
const CACHE_LIMIT: usize = 400_000;

/// The most records per batch that triggers work on (they bound the batch's memory).
const TRIGGER_EVENTS_PER_BATCH: usize = 4096;

/// Encoded bytes of rows cached per partition before the cache is dropped after a commit. Decoded
/// rows take a few times this: 8 partitions at 2 MiB stay well under the engine's memory aim
/// however many runs, timers or customers there are (the cache only saves re-reading rows that
/// recent batches touched).
const CACHE_BYTES: usize = 2 << 20;

/// The most due timers loaded for one batch; when more are due, the batch stops at the last
/// one loaded and the next batch takes the rest.
const TIMERS_PER_BATCH: usize = 32_768;

/// A partition's state as its writer holds it: the views and the next offset to apply.
pub struct Applier<S> {
    pub partition: u32,
    pub store: Arc<S>,
    pub cfg: ProjectionConfig,
    pub views: Views,
    /// The next offset to apply (everything below is in `views`).
    pub next: u64,
    /// The offset the store holds (everything below is committed).
    pub committed: u64,
    pub triggers: Stage,
}

impl<S: StateStore> Applier<S> {
    pub fn new(partition: u32, store: Arc<S>, cfg: ProjectionConfig, committed: u64) -> Self {
        Applier {
            partition,
            store,
            cfg,
            views: Views::new(partition),
            next: committed,
            committed,
            triggers: Stage::new(crate::triggers::Registry::default(), None),
        }
    }

    /// Loads the partition's trigger files and clock from the store (at start, not on replay
    /// into an empty store).
    pub async fn load_triggers(&mut self, commerce: Option<u32>) -> Result<()> {
        let mut defs = Vec::new();
        let mut clock = None;
        let mut after: Option<(String, u32)> = None;
        loop {
            let page = self
                .store
                .scan(
                    rows::ns::TRIGDEF,
                    "",
                    after.as_ref().map(|(k, o)| (k.as_str(), *o)),
                    256,
                )
                .await?;
            let Some(last) = page.last() else { break };
            after = Some((last.key.clone(), last.owner));
            for r in page.into_iter().filter(|r| r.owner == self.partition) {
                if r.key == rows::CLOCK_KEY {
                    clock = std::str::from_utf8(&r.value)
                        .ok()
                        .and_then(|c| c.parse().ok());
                } else if let Ok(d) = serde_json::from_slice::<rows::Definition>(&r.value) {
                    defs.push((r.key, d));
                }
            }
        }
        self.triggers = Stage::new(crate::triggers::Registry::from_rows(defs), commerce);
        // The clock resumes where it stopped.
        self.triggers.clock = clock.unwrap_or(0);
        self.triggers.committed();
        Ok(())
    }

    /// The earliest pending timer of this partition, from the store.
    pub async fn first_timer(&self) -> Result<Option<i64>> {
        let page = self
            .store
            .scan(
                rows::ns::TIMER,
                &rows::timer_prefix(self.partition),
                None,
                1,
            )
            .await?;
        Ok(page
            .first()
            .and_then(|r| rows::parse_timer_key(&r.key))
            .map(|(due, _)| due))
    }

    /// Timers due at or before `horizon`, in due order (at most [`TIMERS_PER_BATCH`]).
    /// Also returns the earliest due time after the horizon: `Some(None)` if there is none,
    /// `None` if the load stopped at its limit before finding out.
    async fn due_timers(&self, horizon: i64) -> Result<(Vec<String>, Option<Option<i64>>)> {
        let prefix = rows::timer_prefix(self.partition);
        let mut out: Vec<String> = Vec::new();
        // Small first: usually few of the pending timers are due.
        let mut size = 256;
        loop {
            let after = out.last().map(|k| (k.as_str(), self.partition));
            let page = self
                .store
                .scan(rows::ns::TIMER, &prefix, after, size)
                .await?;
            let n = page.len();
            for r in page {
                match rows::parse_timer_key(&r.key) {
                    Some((due, _)) if due <= horizon => out.push(r.key),
                    Some((due, _)) => return Ok((out, Some(Some(due)))),
                    None => return Ok((out, None)),
                }
                if out.len() >= TIMERS_PER_BATCH {
                    return Ok((out, None));
                }
            }
            if n < size {
                return Ok((out, Some(None)));
            }
            size = 4096;
        }
    }

    /// Applies `records` (which must start at `next`), returning the events they cause and the
    /// parsed events (for the caller's own bookkeeping). When more timers fall due within the
    /// records than one batch loads, it stops early (`next` says where).
    pub async fn apply(&mut self, records: &[StoredRecord]) -> Result<(Vec<Emit>, Vec<Ev>)> {
        let mut evs = Vec::with_capacity(records.len());
        for r in records {
            match Ev::parse(&r.value, self.partition, r.offset) {
                Ok(ev) => evs.push(ev),
                Err(e) => {
                    // Not an event (cannot happen through ingest); skip it, but say so.
                    tracing::warn!(partition = self.partition, offset = r.offset, error = %e,
                        "skipping a record that is not a stored event");
                }
            }
        }
        // The partition's clock never goes back, whatever the records' times say.
        let mut clocks = Vec::with_capacity(evs.len());
        let mut clock = self.triggers.clock;
        for ev in &evs {
            clock = clock.max(ev.received);
            clocks.push(clock);
        }
        // A new trigger file changes which rows later records touch: the batch ends with it.
        // Records that triggers work on are bounded per batch: each one holds a run, its wait
        // lists and its customer's rows in memory until the commit.
        let mut relevant = 0;
        let mut keep = evs.len();
        for (i, e) in evs.iter().enumerate() {
            if e.ty == crate::triggers::TRIGGERS {
                keep = i + 1;
                break;
            }
            if self.triggers.reg.relevant(&e.ty) {
                relevant += 1;
                if relevant > TRIGGER_EVENTS_PER_BATCH {
                    keep = i;
                    break;
                }
            }
        }
        let mut horizon = keep
            .checked_sub(1)
            .and_then(|i| clocks.get(i).copied())
            .unwrap_or(clock);
        let mut due = Vec::new();
        // The earliest timer after this batch's loaded ones, as far as is known.
        let mut after = self.triggers.next_due;
        if self
            .triggers
            .next_due
            .is_none_or(|d| d.is_some_and(|d| d <= horizon))
        {
            (due, after) = self.due_timers(horizon).await?;
            if due.len() >= TIMERS_PER_BATCH
                && let Some((last, _)) = due.last().and_then(|k| rows::parse_timer_key(k))
            {
                horizon = last;
                // Records at the horizon itself wait: timers due then that were not loaded come first.
                keep = keep.min(clocks.iter().take_while(|c| **c < horizon).count());
            }
        }
        let evs_total = evs.len();
        evs.truncate(keep);
        let mut keys = Keys::default();
        for ev in &evs {
            project::keys(ev, &self.cfg, &mut keys);
            self.triggers.keys(ev, self.partition, &mut keys);
        }
        for k in &due {
            match rows::parse_timer_key(k) {
                Some((_, rows::Target::Run(r))) => keys.run.insert(r),
                Some((_, rows::Target::Arb(c))) => keys.arb.insert(c),
                None => false,
            };
        }
        self.views.load(&*self.store, &keys).await?;
        // An unmerge changes both ends of each edge: load the other ends too.
        if evs.iter().any(|e| e.ty == "customer.unmerged") {
            let more = Keys {
                link: self.views.link_neighbours(&keys.link),
                ..Keys::default()
            };
            self.views.load(&*self.store, &more).await?;
        }
        // Runs lead to their customers' rows, wait lists to their runs: load until closed.
        for _ in 0..4 {
            if !self.triggers.follow(&self.views, &mut keys) {
                break;
            }
            self.views.load(&*self.store, &keys).await?;
        }
        self.views.due = due.into_iter().collect();
        let mut emits = Vec::new();
        let p = self.partition;
        for (ev, clock) in evs.iter().zip(&clocks) {
            self.triggers
                .fire_due(&mut self.views, p, *clock, &mut emits);
            self.triggers.clock = *clock;
            project::apply(&mut self.views, ev, &self.cfg, &mut emits);
            self.triggers.apply(&mut self.views, ev, p, &mut emits);
            self.triggers
                .fire_due(&mut self.views, p, *clock, &mut emits);
        }
        if keep < evs_total {
            // Stopped early: fire what was loaded up to the horizon, then resume at the first
            // record not applied.
            self.triggers
                .fire_due(&mut self.views, p, horizon, &mut emits);
            self.triggers.clock = self.triggers.clock.max(horizon);
            self.next = evs.last().map_or(self.next, |e| e.offset + 1);
            if evs.is_empty() {
                self.next = records[0].offset;
            }
        } else if let Some(last) = records.last() {
            self.next = last.offset + 1;
        }
        if !evs.is_empty() {
            self.views.clock = Some(self.triggers.clock);
        }
        // The next due time: the earliest of what the store held after this batch's timers, the
        // timers this batch wrote and those it left pending. Deleted timers can only make it
        // later, and an early guess costs one more look, so this never misses a timer.
        let fresh = std::mem::take(&mut self.views.due);
        let written = self
            .views
            .timers
            .iter()
            .filter(|(_, put)| **put)
            .map(|(k, _)| k);
        self.triggers.next_due = after.map(|known| {
            written
                .chain(fresh.iter())
                .filter_map(|k| rows::parse_timer_key(k).map(|(due, _)| due))
                .chain(known)
                .min()
        });
        Ok((emits, evs))
    }

    /// Forgets what was applied but not committed: the next batch is read again from the
    /// committed offset, over the rows the store holds.
    pub fn reset(&mut self) {
        self.views = Views::new(self.partition);
        self.next = self.committed;
        self.triggers.rollback();
    }

    /// Commits everything applied since the last commit.
    pub async fn commit(&mut self) -> Result<usize> {
        if self.next == self.committed && !self.views.is_dirty() {
            return Ok(0);
        }
        let writes = self.views.take_writes()?;
        let n = writes.len();
        let result = self
            .store
            .commit(Commit {
                partition: self.partition,
                from_offset: self.committed,
                to_offset: self.next,
                writes,
            })
            .await;
        if let Err(e) = result {
            // The changes left the cache with the failed commit: start again from the store.
            self.reset();
            return Err(e.into());
        }
        self.committed = self.next;
        self.triggers.committed();
        if self.views.cached() > CACHE_LIMIT || self.views.cached_bytes() > CACHE_BYTES {
            self.views.evict();
        }
        Ok(n)
    }
}
