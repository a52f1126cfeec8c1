//! One partition's fold: parse a run of records, load what they touch, apply the projections,
//! and commit the changed rows with the new offset. Shared by the live runner and by replay, so
//! both compute exactly the same state.

use std::sync::Arc;

use storeline_log::StoredRecord;
use storeline_state::{Commit, StateStore};

use crate::error::Result;
use crate::event::Ev;
use crate::project::{self, Emit, ProjectionConfig};
use crate::views::{Keys, Views};

/// Rows cached per partition before the cache is dropped after a commit.
const CACHE_LIMIT: usize = 400_000;

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
        }
    }

    /// Applies `records` (which must start at `next`), returning the events they cause and the
    /// parsed events (for the caller's own bookkeeping).
    pub async fn apply(&mut self, records: &[StoredRecord]) -> Result<(Vec<Emit>, Vec<Ev>)> {
        let mut evs = Vec::with_capacity(records.len());
        for r in records {
            debug_assert_eq!(r.offset, self.next + evs.len() as u64);
            match Ev::parse(&r.value, self.partition, r.offset) {
                Ok(ev) => evs.push(ev),
                Err(e) => {
                    // Not an event (cannot happen through ingest); skip it, but say so.
                    tracing::warn!(partition = self.partition, offset = r.offset, error = %e,
                        "skipping a record that is not a stored event");
                }
            }
        }
        let mut keys = Keys::default();
        for ev in &evs {
            project::keys(ev, &self.cfg, &mut keys);
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
        let mut emits = Vec::new();
        for ev in &evs {
            project::apply(&mut self.views, ev, &self.cfg, &mut emits);
        }
        if let Some(last) = records.last() {
            self.next = last.offset + 1;
        }
        Ok((emits, evs))
    }

    /// Forgets what was applied but not committed: the next batch is read again from the
    /// committed offset, over the rows the store holds.
    pub fn reset(&mut self) {
        self.views = Views::new(self.partition);
        self.next = self.committed;
    }

    /// Commits everything applied since the last commit.
    pub async fn commit(&mut self) -> Result<usize> {
        if self.next == self.committed {
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
        if self.views.cached() > CACHE_LIMIT {
            self.views.evict();
        }
        Ok(n)
    }
}
