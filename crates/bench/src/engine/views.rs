//! Phases 1 and 2 of `storeline bench engine`: generated traffic appended as fast as the log
//! takes it while the engine folds it into every view (events/s until everything is
//! committed), then a replay of that same log into a fresh store, whose digest must equal the
//! live store's.
//!
//! Why the traffic is prepared first: the generator and the ingest-side conversion are not what
//! is measured, so they run before the clock starts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use bytes::Bytes;
use storeline_engine::EngineConfig;
use storeline_log::{EventLog, Record};
use storeline_state::StateStore;

use super::phases::{Breakdown, Ctx, Figures, PARTITIONS, Prepared, Rig};
use super::support::{CpuMark, Timed, is_caught_up, spinner, wait_caught_up};

/// Records per append in the views phase, per partition.
const APPEND_BATCH: usize = 1000;

/// Appends `parts` (per partition, in chunks of [`APPEND_BATCH`]) as fast as the log takes
/// them, all partitions at once; the task returns the time since `t0` when all were stored.
fn spawn_producer<L: EventLog>(
    log: Arc<L>,
    parts: Vec<Vec<(Bytes, Bytes)>>,
    t0: Instant,
) -> tokio::task::JoinHandle<Result<Duration, storeline_log::Error>> {
    tokio::spawn(async move {
        let appends = parts.into_iter().enumerate().map(|(p, recs)| {
            let log = log.clone();
            async move {
                for chunk in recs.chunks(APPEND_BATCH) {
                    let ts = chrono::Utc::now().timestamp_millis();
                    let records = chunk
                        .iter()
                        .map(|(k, v)| Record {
                            timestamp: ts,
                            key: k.clone(),
                            value: v.clone(),
                        })
                        .collect();
                    log.append(p as u32, records).await?;
                }
                Ok::<_, storeline_log::Error>(())
            }
        });
        for r in futures::future::join_all(appends).await {
            r?;
        }
        Ok(t0.elapsed())
    })
}

/// Appends the prepared traffic while the engine applies it, until everything (and what it
/// caused) is applied. Returns the seconds from `t0` until all was appended, if it was, and the
/// largest backlog seen.
pub(crate) async fn feed(
    rig: &Rig,
    prep: &Prepared,
    bar: &indicatif::ProgressBar,
    label: &str,
    t0: Instant,
) -> Result<(Option<f64>, u64)> {
    let mut producer = Some(spawn_producer(rig.log.clone(), prep.parts.clone(), t0));
    let mut ingest_secs = None;
    let mut peak = 0u64;
    let mut last_progress = (0u64, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if let Some(h) = producer.as_ref()
            && h.is_finished()
            && let Some(h) = producer.take()
        {
            ingest_secs = Some(
                h.await?
                    .map_err(|e| anyhow!("appending the traffic: {e}"))?
                    .as_secs_f64(),
            );
        }
        let applied: u64 = rig.engine.applied().iter().sum();
        let end: u64 = (0..PARTITIONS)
            .filter_map(|p| rig.log.bounds(p).ok())
            .map(|b| b.end)
            .sum();
        peak = peak.max(end.saturating_sub(applied));
        bar.set_message(format!("{label}: appended {end}, applied {applied}"));
        // Applying may append caused events elsewhere: confirm once more.
        if ingest_secs.is_some()
            && is_caught_up(&*rig.log, &rig.engine)
            && wait_caught_up(&*rig.log, &rig.engine, Duration::from_millis(20)).await
        {
            return Ok((ingest_secs, peak));
        }
        if applied > last_progress.0 {
            last_progress = (applied, Instant::now());
        } else if last_progress.1.elapsed() > Duration::from_secs(120) {
            bail!("the engine applied nothing for 2 minutes ({applied} of {end} applied)");
        }
    }
}

/// Phases 1 and 2: generated traffic through every view, then a replay of that log.
pub async fn views_and_replay(ctx: &Ctx, prep: &Prepared, f: &mut Figures) -> Result<()> {
    let mut rig = ctx.start("views").await?;
    let label = format!("{}: views", ctx.backend.name());
    let bar = spinner(&label);
    rig.mark();
    let t0 = Instant::now();
    let (ingest_secs, peak) = feed(&rig, prep, &bar, &label, t0).await?;
    let committed_secs = t0.elapsed().as_secs_f64();
    bar.finish_and_clear();
    f.views = rig.breakdown();
    let ingest_secs = ingest_secs.unwrap_or(committed_secs);
    f.ingest_rate = prep.total as f64 / ingest_secs;
    f.views_rate = prep.total as f64 / committed_secs;
    f.drain_secs = committed_secs - ingest_secs;
    f.peak_backlog = peak as f64;
    rig.stop_engine().await;

    // Phase 2: replay the same log into a fresh store, up to what the live store holds.
    let live = rig.store.clone();
    let until = live.offsets().await?;
    let total: u64 = until.values().sum();
    let fresh = Arc::new(Timed::new(ctx.open_store("replay").await?));
    let cpu = CpuMark::now();
    rig.log.stats.read.reset();
    rig.log.stats.append.reset();
    let bar = indicatif::ProgressBar::new(total).with_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} {bar:30} {pos}/{len} events")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{}: replay", ctx.backend.name()));
    let t = Instant::now();
    let cfg = EngineConfig::default();
    let done = storeline_engine::replay(
        rig.log.clone(),
        fresh.clone(),
        &cfg.projection,
        &until,
        32768,
        &|n| bar.set_position(n),
    )
    .await
    .map_err(|e| anyhow!("replay: {e}"))?;
    let secs = t.elapsed().as_secs_f64();
    bar.finish_and_clear();
    f.replay = Breakdown::capture(&rig.log, &fresh, &cpu);
    f.replay_rate = done as f64 / secs;
    let bar = spinner(&format!("{}: digests", ctx.backend.name()));
    let d_live = storeline_state::digest(&*live).await?;
    let d_replay = storeline_state::digest(&*fresh).await?;
    bar.finish_and_clear();
    f.digest_equal = d_live == d_replay;
    f.digest_live = format!("{d_live} ({} rows)", d_live.rows);
    f.digest_replay = format!("{d_replay} ({} rows)", d_replay.rows);
    f.rows = d_live.rows;
    if let Err(e) = rig.log.close().await {
        eprintln!("warning: closing a bench log: {e}");
    }
    ctx.release(&live.inner, "views").await;
    ctx.release(&fresh.inner, "replay").await;
    Ok(())
}

/// Generates `n` events with the `storeline gen` generator and turns them into stored records
/// the way ingest does (plain envelope, defaults, validation, routing, `received_at`).
pub fn prepare(n: u64, cfg: crate::traffic::GenConfig) -> Result<Prepared> {
    use storeline_event::{Defaults, Event, Incoming, Mode};
    let bar = spinner("generating traffic");
    let defaults = Defaults {
        source: crate::traffic::SOURCE.to_owned(),
        now: chrono::Utc::now(),
    };
    let received = storeline_event::format_time(&defaults.now);
    let mut parts: Vec<Vec<(Bytes, Bytes)>> = vec![Vec::new(); PARTITIONS as usize];
    let mut bytes = 0u64;
    let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
    for (i, v) in crate::traffic::Generator::new(cfg)
        .take(n as usize)
        .enumerate()
    {
        let text = serde_json::to_string(&v)?;
        let inc: Incoming = serde_json::from_str(&text)?;
        let ev = Event::from_incoming(inc, Mode::Plain, &defaults).map_err(|e| {
            anyhow!(
                "generated event {i} is invalid: {}",
                e.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })?;
        *by_type.entry(ev.ty.clone()).or_default() += 1;
        let key = ev.route_key().to_owned();
        let p = storeline_log::partition_for(key.as_bytes(), PARTITIONS);
        let value = ev.to_stored_json_at(&received);
        bytes += value.len() as u64;
        parts[p as usize].push((Bytes::from(key), Bytes::from(value)));
        if i.is_multiple_of(50_000) {
            bar.set_message(format!("generating traffic: {i} events"));
        }
    }
    bar.finish_and_clear();
    let commerce =
        parts[storeline_log::partition_for(storeline_event::COMMERCE_KEY.as_bytes(), PARTITIONS)
            as usize]
            .len();
    eprintln!(
        "traffic: {n} events, {:.0} bytes each on average; per partition {:?} (the commerce partition takes {:.1}%)",
        bytes as f64 / n.max(1) as f64,
        parts.iter().map(Vec::len).collect::<Vec<_>>(),
        commerce as f64 * 100.0 / n.max(1) as f64
    );
    let mut top: Vec<(String, u64)> = by_type.into_iter().collect();
    top.sort_by_key(|t| std::cmp::Reverse(t.1));
    eprintln!(
        "types: {}",
        top.iter()
            .take(8)
            .map(|(t, c)| format!("{t} {:.1}%", *c as f64 * 100.0 / n.max(1) as f64))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Prepared {
        parts,
        total: n,
        bytes,
    })
}
