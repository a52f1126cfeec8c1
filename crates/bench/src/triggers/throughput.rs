//! Figure 1 of `storeline bench triggers`: events/s through the engine (every view, and the
//! triggers when a file is installed), counted until everything, caused events included, is
//! committed. Run once with the starter set and once with no trigger file, on fresh logs and
//! stores, so the difference is what triggers cost.
//!
//! The traffic is `storeline gen`'s, prepared before the clock starts (as `bench engine` does);
//! every record carries the same `received_at`, so no trigger timer falls due inside the phase:
//! it measures starting, waiting and cancelling runs, not firing them (figure 2 does that).

use std::time::Instant;

use anyhow::Result;
use storeline_engine::triggers::TriggerSet;
use storeline_log::EventLog;

use super::phases::{Breakdown, Ctx, PARTITIONS, Prepared};
use super::setup;
use super::support::spinner;
use super::views::feed;

/// What one pass measured.
#[derive(Debug, Clone, Default)]
pub struct Pass {
    /// Generated events / seconds until all of them and what they caused were committed.
    pub rate: f64,
    /// Generated events / seconds until the last append returned.
    pub ingest_rate: f64,
    /// Events the engine appended itself (forwarded copies, emitted events).
    pub caused: u64,
    /// The engine's own records by type (`emitted` for events its triggers emitted).
    pub caused_by_type: std::collections::BTreeMap<String, u64>,
    /// Trigger counters summed over triggers: started, delivered, …
    pub counters: Vec<(String, i64)>,
    /// Pending timer rows at the end.
    pub timers: u64,
    pub breakdown: Breakdown,
}

fn log_end(log: &impl EventLog) -> u64 {
    (0..PARTITIONS)
        .filter_map(|p| log.bounds(p).ok())
        .map(|b| b.end)
        .sum()
}

/// The engine's own records in `log`, by type: what it appended besides the generated traffic
/// (read after the clock stopped).
async fn caused_types(log: &impl EventLog) -> Result<std::collections::BTreeMap<String, u64>> {
    let mut out = std::collections::BTreeMap::new();
    for p in 0..PARTITIONS {
        let end = log.bounds(p)?.end;
        let mut at = log.bounds(p)?.start;
        while at < end {
            let records = log.read(p, at, 10_000).await?;
            let Some(last) = records.last() else { break };
            at = last.offset + 1;
            for r in records {
                let Ok(ev) = storeline_engine::Ev::parse(&r.value, p, r.offset) else {
                    continue;
                };
                let ty = if ev.internal && !ev.ty.starts_with("storeline.") {
                    "emitted".to_owned()
                } else if ev.ty.starts_with("storeline.") {
                    ev.ty
                } else {
                    continue;
                };
                *out.entry(ty).or_default() += 1;
            }
        }
    }
    Ok(out)
}

/// One pass: a fresh log and store, `set` installed (if any), then `prep` appended as fast as
/// the log takes it while the engine applies it.
pub async fn pass(ctx: &Ctx, prep: &Prepared, set: Option<&TriggerSet>) -> Result<Pass> {
    let name = if set.is_some() { "with" } else { "without" };
    let mut rig = ctx.start(name).await?;
    if let Some(set) = set {
        setup::install(&rig.log, &rig.engine, set).await?;
    }
    let base = log_end(&*rig.log);
    let label = format!(
        "events/s {} triggers",
        if set.is_some() { "with" } else { "without" }
    );
    let bar = spinner(&label);
    rig.mark();
    let t0 = Instant::now();
    let (ingest_secs, _) = feed(&rig, prep, &bar, &label, t0).await?;
    let secs = t0.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let breakdown = rig.breakdown();
    let caused = log_end(&*rig.log).saturating_sub(base + prep.total);
    rig.stop_engine().await;
    let caused_by_type = caused_types(&*rig.log).await?;
    let mut counters = Vec::new();
    let mut timers = 0;
    if set.is_some() {
        let stats = storeline_engine::triggers::read::stats(&*rig.store).await?;
        let mut sums: std::collections::BTreeMap<String, i64> = Default::default();
        for c in stats.values() {
            for (k, v) in c {
                *sums.entry(k.clone()).or_default() += v;
            }
        }
        counters = sums.into_iter().collect();
        timers =
            setup::count_rows(&*rig.store, storeline_engine::triggers::rows::ns::TIMER).await?;
    }
    if let Err(e) = rig.log.close().await {
        eprintln!("warning: closing a bench log: {e}");
    }
    ctx.release(&rig.store.inner, name).await;
    Ok(Pass {
        rate: prep.total as f64 / secs,
        ingest_rate: prep.total as f64 / ingest_secs.unwrap_or(secs),
        caused,
        caused_by_type,
        counters,
        timers,
        breakdown,
    })
}
