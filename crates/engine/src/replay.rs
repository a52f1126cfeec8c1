//! Replay: rebuild every view from the log into a store, with the same [`Applier`] the live
//! engine uses, up to given offsets (the live store's, so the two digests are comparable).
//!
//! Events that projections cause (low-stock alerts) are not appended again: they are already in
//! the log, where the live engine put them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use storeline_log::EventLog;
use storeline_state::StateStore;

use crate::apply::Applier;
use crate::error::Result;
use crate::project::ProjectionConfig;

/// One batch through `a`: apply, then commit.
pub(crate) async fn apply_and_commit<S: StateStore>(
    a: &mut Applier<S>,
    records: &[storeline_log::StoredRecord],
) -> Result<()> {
    a.apply(records).await?;
    a.commit().await?;
    Ok(())
}

/// Applies partition records `[start, until)` for every partition in `until` into `store`,
/// committing every `batch` records; `progress` is called with the records applied so far.
///
/// Partitions are independent (each owns its rows), so they are rebuilt in parallel, one task
/// each: one's commit overlaps another's apply.
pub async fn replay<L: EventLog, S: StateStore>(
    log: Arc<L>,
    store: Arc<S>,
    cfg: &ProjectionConfig,
    until: &BTreeMap<u32, u64>,
    batch: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<u64> {
    let offsets = store.offsets().await?;
    let done = Arc::new(AtomicU64::new(0));
    let commerce =
        storeline_log::partition_for(storeline_event::COMMERCE_KEY.as_bytes(), log.partitions());
    let mut tasks = tokio::task::JoinSet::new();
    for (&p, &end) in until {
        let from = offsets.get(&p).copied().unwrap_or(0);
        let (log, store, cfg, done) = (log.clone(), store.clone(), cfg.clone(), done.clone());
        tasks.spawn(async move {
            let mut a = Applier::new(p, store, cfg, from);
            a.triggers.commerce = Some(commerce);
            while a.next < end {
                let max = a.batch_limit(batch).min((end - a.next) as usize);
                let records = log.read(p, a.next, max).await?;
                if records.is_empty() {
                    break;
                }
                let before = a.next;
                if let Err(e) = apply_and_commit(&mut a, &records).await {
                    // A record that can never be applied is quarantined, as the live writer
                    // does, so the digests agree; anything else stops the replay.
                    if a.recover(&e) {
                        continue;
                    }
                    return Err(e);
                }
                a.quarantined.clear();
                done.fetch_add(a.next - before, Ordering::Relaxed);
            }
            Ok::<(), crate::error::Error>(())
        });
    }
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Ok(result)) => result?,
                Some(Err(e)) => return Err(crate::error::Error::Emit(format!("a replay task failed: {e}"))),
            },
            _ = tick.tick() => progress(done.load(Ordering::Relaxed)),
        }
    }
    let total = done.load(Ordering::Relaxed);
    progress(total);
    Ok(total)
}
