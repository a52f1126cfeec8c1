//! One partition's fold: parse a run of records, load what they touch, apply the projections,
//! and commit the changed rows with the new offset. Shared by the live runner and by replay, so
//! both compute exactly the same state.

use std::collections::BTreeMap;
use std::sync::Arc;

use storeline_log::StoredRecord;
use storeline_state::{Commit, StateStore};

use crate::error::{Error, Result};
use crate::event::Ev;
use crate::project::{self, Emit, ProjectionConfig};
use crate::quarantine::{self, Entry, Reason};
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
    pub(crate) partition: u32,
    pub(crate) store: Arc<S>,
    pub(crate) cfg: ProjectionConfig,
    pub(crate) views: Views,
    /// The next offset to apply (everything below is in `views`).
    pub(crate) next: u64,
    /// The offset the store holds (everything below is committed).
    pub(crate) committed: u64,
    pub(crate) triggers: Stage,
    /// Records a failed batch showed cannot be applied, by offset: they are quarantined when
    /// their batch is applied again.
    poison: BTreeMap<u64, (Reason, String)>,
    /// While `next` is below this, batches hold one record: a batch failed for a reason a
    /// retry cannot heal without naming the record at fault, which one-record batches find.
    careful_until: u64,
    /// The offsets `[first, end)` of the batch being applied.
    batch: (u64, u64),
    /// Quarantine entries filed since the last commit (for metrics and logs).
    pub(crate) quarantined: Vec<Entry>,
    /// The number of entries the quarantine keeps, when a batch since the last commit changed it.
    pub(crate) quarantine_size: Option<usize>,
}

/// What a batch does to its partition's quarantine.
enum Filing {
    File(Entry),
    /// `storeline.quarantine_cleared` at this offset: entries before it go.
    Clear(u64),
}

impl Filing {
    fn offset(&self) -> u64 {
        match self {
            Filing::File(e) => e.offset,
            Filing::Clear(o) => *o,
        }
    }
}

impl<S: StateStore> Applier<S> {
    /// The partition's clock: the latest `received_at` applied, or a fired timer's due time.
    pub(crate) fn clock(&self) -> i64 {
        self.triggers.clock
    }

    /// The watermark this partition has applied, once one came.
    pub(crate) fn watermark(&self) -> Option<i64> {
        self.triggers.watermark
    }

    /// Whether a trigger file was ever installed on this partition.
    pub(crate) fn has_triggers(&self) -> bool {
        !self.triggers.reg.is_empty()
    }

    /// The earliest pending timer's due time as last known, without reading the store.
    pub(crate) fn known_next_due(&self) -> Option<i64> {
        self.triggers.next_due.flatten()
    }

    /// The earliest pending timer's due time (`None`: no timer), read from the store when it
    /// is not known.
    pub(crate) async fn next_due(&mut self) -> Result<Option<i64>> {
        if let Some(known) = self.triggers.next_due {
            return Ok(known);
        }
        let due = self.first_timer().await?;
        self.triggers.next_due = Some(due);
        Ok(due)
    }

    /// What the commits since the last call decided: the trigger outcomes (for counters and
    /// logs) and the due times of the timers that fired (for their lateness).
    pub(crate) fn take_decided(&mut self) -> (Vec<crate::triggers::Outcome>, Vec<i64>) {
        (
            std::mem::take(&mut self.triggers.outcomes),
            std::mem::take(&mut self.triggers.fired),
        )
    }

    pub fn new(partition: u32, store: Arc<S>, cfg: ProjectionConfig, committed: u64) -> Self {
        let mut views = Views::new(partition);
        // Applied from its first record: every run it starts carries the person mark.
        views.runs_marked = committed == 0;
        Applier {
            partition,
            store,
            cfg,
            views,
            next: committed,
            committed,
            triggers: Stage::new(crate::triggers::Registry::default(), None),
            poison: BTreeMap::new(),
            careful_until: 0,
            batch: (committed, committed),
            quarantined: Vec::new(),
            quarantine_size: None,
        }
    }

    /// The most records the next batch may hold: `max`, or one while the record at fault of a
    /// failed batch is being found.
    pub fn batch_limit(&self, max: usize) -> usize {
        if self.next < self.careful_until {
            1
        } else {
            max
        }
    }

    /// After a failed batch: forgets what it applied (see [`reset`](Self::reset)) and says
    /// whether to apply again at once. A failure that can heal (the store unreachable, the disk
    /// full) returns false: the caller backs off and retries. One that cannot must not stall the
    /// partition: the record at fault is quarantined when the batch is applied again — directly
    /// when the failure names it (an overflow), else batches of one record follow until the
    /// failed batch is passed, and the record that fails alone is the one.
    pub fn recover(&mut self, e: &Error) -> bool {
        self.reset();
        if !e.is_permanent() {
            return false;
        }
        let (first, end) = self.batch;
        let reason = match e {
            Error::Overflow { .. } => Reason::Overflow,
            Error::State(_) => Reason::StoreRefused,
            _ => Reason::ApplyFailed,
        };
        let at_fault = match e {
            Error::Overflow { offset, .. } => Some(*offset),
            _ if end == first + 1 => Some(first),
            _ => None,
        };
        match at_fault {
            Some(offset) => {
                tracing::warn!(partition = self.partition, offset, error = %e,
                    "a record cannot be applied; it will be quarantined");
                self.poison.insert(offset, (reason, e.to_string()));
            }
            None => {
                tracing::warn!(partition = self.partition, from = first, to = end, error = %e,
                    "a batch cannot be applied; applying its records one by one to find the one at fault");
                self.careful_until = self.careful_until.max(end);
            }
        }
        true
    }

    /// Sorts a batch's records into events to apply and quarantine filings.
    fn sort_records(&self, records: &[StoredRecord]) -> (Vec<Ev>, Vec<Filing>) {
        let p = self.partition;
        let mut evs = Vec::with_capacity(records.len());
        let mut filings = Vec::new();
        for r in records {
            let parsed = Ev::parse(&r.value, p, r.offset);
            if let Some((reason, error)) = self.poison.get(&r.offset) {
                let ev = parsed.ok();
                filings.push(Filing::File(Entry::engine(
                    p,
                    r,
                    ev.as_ref(),
                    *reason,
                    error.clone(),
                )));
                continue;
            }
            match parsed {
                Ok(ev) if ev.is_forged() => {
                    tracing::warn!(
                        partition = p,
                        offset = r.offset,
                        ty = ev.ty,
                        "quarantining a record of a reserved type or source that Storeline did not write"
                    );
                    let error = format!(
                        "'{}' (or its source) is only written by Storeline, and this record lacks \
                         Storeline's mark: it was ignored (a client sent it, before ingest refused \
                         such records)",
                        ev.ty
                    );
                    filings.push(Filing::File(Entry::engine(
                        p,
                        r,
                        Some(&ev),
                        Reason::ReservedType,
                        error,
                    )));
                }
                Ok(ev) if ev.internal && ev.ty == quarantine::QUARANTINED => {
                    filings.push(Filing::File(Entry::ingest(p, &ev)));
                }
                Ok(ev) if ev.internal && ev.ty == quarantine::CLEARED => {
                    filings.push(Filing::Clear(r.offset));
                }
                Ok(ev) => evs.push(ev),
                Err(e) => {
                    tracing::warn!(partition = p, offset = r.offset, error = %e,
                        "quarantining a record that is not a stored event");
                    filings.push(Filing::File(Entry::engine(
                        p,
                        r,
                        None,
                        Reason::Unreadable,
                        format!("not a stored event: {e}"),
                    )));
                }
            }
        }
        (evs, filings)
    }

    /// Files quarantine entries and clears, keeping the newest [`quarantine::KEEP`].
    fn file(&mut self, filings: Vec<Filing>) {
        if filings.is_empty() {
            return;
        }
        let Views { quarix, quar, .. } = &mut self.views;
        let ix = quarix.upsert(quarantine::INDEX_KEY);
        for f in filings {
            match f {
                Filing::File(entry) => {
                    ix.total += 1;
                    ix.offsets.push_back(entry.offset);
                    while ix.offsets.len() > quarantine::KEEP {
                        if let Some(old) = ix.offsets.pop_front() {
                            quar.insert(quarantine::entry_key(old), None);
                        }
                    }
                    quar.insert(quarantine::entry_key(entry.offset), Some(entry.clone()));
                    self.quarantined.push(entry);
                }
                Filing::Clear(at) => {
                    ix.offsets.retain(|o| {
                        let keep = *o >= at;
                        if !keep {
                            quar.insert(quarantine::entry_key(*o), None);
                        }
                        keep
                    });
                }
            }
        }
        self.quarantine_size = Some(ix.offsets.len());
    }

    /// Loads the partition's trigger files and clock from the store (at start, not on replay
    /// into an empty store).
    pub async fn load_triggers(&mut self, commerce: Option<u32>) -> Result<()> {
        let mut defs = Vec::new();
        let mut clock = None;
        let mut watermark = None;
        let mut runs_marked = self.next == 0;
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
                } else if r.key == rows::RUNS_MARKED_KEY {
                    runs_marked = true;
                } else if r.key == rows::WATERMARK_KEY {
                    watermark = std::str::from_utf8(&r.value)
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
        self.triggers.watermark = watermark;
        self.triggers.runs_marked = runs_marked;
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

    /// The keys of this partition's runs of identity `id`.
    async fn runs_of(&self, id: String) -> Result<Vec<String>> {
        let prefix = format!("{id}{}", rows::SEP);
        let rows =
            crate::triggers::read::scan_all(&*self.store, rows::ns::RUN, &prefix, usize::MAX)
                .await?;
        Ok(rows
            .into_iter()
            .filter(|(_, owner, _)| *owner == self.partition)
            .map(|(key, _, _)| key)
            .collect())
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
    ///
    /// On an error the views are half-changed: call [`recover`](Self::recover).
    pub async fn apply(&mut self, records: &[StoredRecord]) -> Result<(Vec<Emit>, Vec<Ev>)> {
        if let (Some(first), Some(last)) = (records.first(), records.last()) {
            self.batch = (first.offset, last.offset + 1);
        }
        let (mut evs, filings) = self.sort_records(records);
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
        if !filings.is_empty() {
            keys.quarix.insert(quarantine::INDEX_KEY.to_owned());
        }
        for k in &due {
            match rows::parse_timer_key(k) {
                Some((_, rows::Target::Run(r))) => keys.run.insert(r),
                Some((_, rows::Target::Arb(c))) => keys.arb.insert(c),
                None => false,
            };
        }
        self.views.load(&*self.store, &keys).await?;
        // A merge hands over every run of an identity: list them by key prefix (only for an
        // identity marked as having runs, when the partition keeps the mark).
        let marked = self.triggers.runs_marked;
        let scans = keys
            .person_runs
            .iter()
            .filter(|id| !marked || self.views.person.get(id).is_some_and(|r| r.runs))
            .map(|id| self.runs_of(id.clone()));
        let mut runs = Keys::default();
        for found in futures::future::try_join_all(scans).await? {
            runs.run.extend(found);
        }
        if !runs.run.is_empty() {
            self.views.load(&*self.store, &runs).await?;
            keys.extend(runs);
        }
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
            project::apply(&mut self.views, ev, &self.cfg, &mut emits).map_err(|o| {
                Error::Overflow {
                    partition: p,
                    offset: ev.offset,
                    what: o.0,
                }
            })?;
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
        // Filings of records the batch stopped before wait for the batch that applies them.
        let next = self.next;
        self.file(filings.into_iter().filter(|f| f.offset() < next).collect());
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
        self.quarantined.clear();
        self.quarantine_size = None;
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
        let committed = self.committed;
        self.poison.retain(|o, _| *o >= committed);
        if self.views.cached() > CACHE_LIMIT || self.views.cached_bytes() > CACHE_BYTES {
            self.views.evict();
        }
        Ok(n)
    }
}
