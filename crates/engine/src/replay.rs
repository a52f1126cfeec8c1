//! Replay: rebuild every view from the log into a store, with the same [`Applier`] the live
//! engine uses, up to given offsets (the live store's, so the two digests are comparable).
//!
//! Events that projections cause (low-stock alerts) are not appended again: they are already in
//! the log, where the live engine put them.

use std::collections::BTreeMap;
use std::sync::Arc;

use storeline_log::EventLog;
use storeline_state::StateStore;

use crate::apply::Applier;
use crate::error::Result;
use crate::project::ProjectionConfig;

/// Applies partition records `[start, until)` for every partition in `until` into `store`,
/// committing every `batch` records; `progress` is called with the records applied so far.
pub async fn replay<L: EventLog, S: StateStore>(
    log: &L,
    store: Arc<S>,
    cfg: &ProjectionConfig,
    until: &BTreeMap<u32, u64>,
    batch: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<u64> {
    let offsets = store.offsets().await?;
    let mut done = 0u64;
    for (&p, &end) in until {
        let from = offsets.get(&p).copied().unwrap_or(0);
        let mut a = Applier::new(p, store.clone(), cfg.clone(), from);
        while a.next < end {
            let max = batch.min((end - a.next) as usize);
            let records = log.read(p, a.next, max).await?;
            if records.is_empty() {
                break;
            }
            let n = records.len() as u64;
            a.apply(&records).await?;
            a.commit().await?;
            done += n;
            progress(done);
        }
    }
    Ok(done)
}
