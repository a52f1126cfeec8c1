//! Backtest: the stored log through a given trigger file on a virtual clock (each record's
//! `received_at`), into a scratch store, with no side effects: nothing is appended, nothing is
//! delivered. The same code folds the live engine's batches, so a backtest of the file in force
//! over the same records counts what the live engine counted.
//!
//! Besides the counts, the report says where each message ended, per connector: handed to
//! delivery (`sent`) or still held by quiet hours or a cap when the log ended (`held`); and the
//! runs still going then (waiting out a debounce, a delay or a wait). Both are read from the
//! scratch store at the end (its outbox, `arb` and `run` rows), which only a backtest keeps: the
//! live outbox is emptied by the delivery worker.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use storeline_log::EventLog;
use storeline_state::StateStore;

use serde_json::Value;

use super::read::scan_all;
use super::rows::{Arb, Run, Status, ns};
use super::{Outcome, Registry, Stage, TriggerSet};
use crate::apply::Applier;
use crate::error::{Error, Result};
use crate::project::ProjectionConfig;

/// What a backtest found.
#[derive(Debug, Default)]
pub struct Report {
    pub events: u64,
    /// `trigger → outcome → count`.
    pub counts: BTreeMap<String, BTreeMap<String, u64>>,
    /// Up to `samples` examples per trigger and outcome.
    pub samples: BTreeMap<(String, String), Vec<Outcome>>,
    /// The virtual clock's first and last value in the window (ms).
    pub clock: Option<(i64, i64)>,
    /// `trigger → connector → state → messages`: `sent` (handed to delivery) and `held` (held
    /// by quiet hours or a cap when the log ended). Suppressed and dropped messages are in
    /// `counts` (`suppressed_consent`, `dropped_*`), per trigger.
    pub deliveries: BTreeMap<String, BTreeMap<String, BTreeMap<String, u64>>>,
    /// `trigger → phase → runs` still active when the log ended: `debounce`, `delay`, `wait`.
    pub waiting: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Report {
    fn add(&mut self, outcomes: Vec<Outcome>, samples: usize) {
        for o in outcomes {
            if o.what == "waiting" {
                continue;
            }
            *self
                .counts
                .entry(o.trigger.clone())
                .or_default()
                .entry(o.what.clone())
                .or_default() += 1;
            let s = self
                .samples
                .entry((o.trigger.clone(), o.what.clone()))
                .or_default();
            if s.len() < samples {
                s.push(o);
            }
        }
    }
}

/// Runs `set` over every partition of `log` up to its current end, evaluating triggers for
/// records whose clock is in `[from, to]` (projections and aggregates see everything before, so
/// customers and windows are warm). `store` must be empty.
pub async fn backtest<L: EventLog, S: StateStore>(
    log: Arc<L>,
    store: Arc<S>,
    source: &str,
    cfg: &ProjectionConfig,
    window: (i64, i64),
    samples: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Report> {
    let done = Arc::new(AtomicU64::new(0));
    let commerce =
        storeline_log::partition_for(storeline_event::COMMERCE_KEY.as_bytes(), log.partitions());
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..log.partitions() {
        let end = log.bounds(p)?.end;
        let (log, store, cfg, done) = (log.clone(), store.clone(), cfg.clone(), done.clone());
        let set = TriggerSet::parse(source).map_err(|e| Error::Emit(format!("{e:?}")))?;
        tasks.spawn(async move {
            let mut a = Applier::new(p, store, cfg, 0);
            a.triggers = Stage::new(Registry::new(set), Some(commerce));
            a.triggers.window = Some(window);
            let mut report = Report::default();
            let mut first_clock = None;
            while a.next < end {
                let records = log
                    .read(
                        p,
                        a.next,
                        a.batch_limit(32_768).min((end - a.next) as usize),
                    )
                    .await?;
                if records.is_empty() {
                    break;
                }
                let before = a.next;
                if let Err(e) = crate::replay::apply_and_commit(&mut a, &records).await {
                    if a.recover(&e) {
                        continue;
                    }
                    return Err(e);
                }
                a.quarantined.clear();
                done.fetch_add(a.next - before, Ordering::Relaxed);
                report.add(std::mem::take(&mut a.triggers.outcomes), samples);
                if a.triggers.clock >= window.0 && first_clock.is_none() {
                    first_clock = Some(a.triggers.clock);
                }
            }
            report.events = a.next;
            report.clock = first_clock.map(|f| (f.max(window.0), a.triggers.clock.min(window.1)));
            Ok::<Report, Error>(report)
        });
    }
    let mut total = Report::default();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Ok(r)) => {
                    let r = r?;
                    total.events += r.events;
                    for (t, m) in r.counts {
                        let e = total.counts.entry(t).or_default();
                        for (k, v) in m {
                            *e.entry(k).or_default() += v;
                        }
                    }
                    for (k, v) in r.samples {
                        let e = total.samples.entry(k).or_default();
                        e.extend(v);
                        e.truncate(samples);
                    }
                    total.clock = match (total.clock, r.clock) {
                        (Some(a), Some(b)) => Some((a.0.min(b.0), a.1.max(b.1))),
                        (a, b) => a.or(b),
                    };
                }
                Some(Err(e)) => return Err(Error::Emit(format!("a backtest task failed: {e}"))),
            },
            _ = tick.tick() => progress(done.load(Ordering::Relaxed)),
        }
    }
    progress(done.load(Ordering::Relaxed));
    at_the_end(&*store, &mut total).await?;
    Ok(total)
}

/// Where messages and runs are when the log ended, from the scratch store's rows.
async fn at_the_end<S: StateStore>(store: &S, report: &mut Report) -> Result<()> {
    const ALL: usize = usize::MAX;
    let mut deliveries: BTreeMap<String, BTreeMap<String, BTreeMap<String, u64>>> = BTreeMap::new();
    let mut add = |entry: &Value, state: &str| {
        let field = |k: &str| entry[k].as_str().unwrap_or("").to_owned();
        *deliveries
            .entry(field("trigger"))
            .or_default()
            .entry(field("connector"))
            .or_default()
            .entry(state.to_owned())
            .or_default() += 1;
    };
    for (_, _, b) in scan_all(store, ns::OUTBOX, "", ALL).await? {
        if let Ok(entry) = serde_json::from_slice::<Value>(&b) {
            add(&entry, "sent");
        }
    }
    for (_, _, b) in scan_all(store, ns::ARB, "", ALL).await? {
        if let Ok(arb) = serde_json::from_slice::<Arb>(&b) {
            for h in &arb.held {
                add(&h.entry, "held");
            }
        }
    }
    let mut waiting: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for (_, _, b) in scan_all(store, ns::RUN, "", ALL).await? {
        let Ok(run) = serde_json::from_slice::<Run>(&b) else {
            continue;
        };
        if run.status != Status::Active {
            continue;
        }
        let phase = serde_json::to_value(run.phase)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        *waiting
            .entry(run.trigger)
            .or_default()
            .entry(phase)
            .or_default() += 1;
    }
    report.deliveries = deliveries;
    report.waiting = waiting;
    Ok(())
}
