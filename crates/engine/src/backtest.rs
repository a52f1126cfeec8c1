//! Backtest: the stored log through a given trigger file on a virtual clock (each record's
//! `received_at`), into a scratch store, with no side effects: nothing is appended, nothing is
//! delivered. The same code folds the live engine's batches, so a backtest of the file in force
//! over the same records counts what the live engine counted.
//!
//! Besides the counts, the report says where each message ended, per connector: handed to
//! delivery (`sent`) or still held by quiet hours or a cap when the log ended (`held`); and the
//! runs still going then (waiting out a debounce, a delay or a wait). Both are read from the
//! scratch store at the end (its outbox, `arb` and `run` rows), which holds only what this
//! backtest decided.
//!
//! Merges move runs as live: the partitions apply the log in rounds, and the merge notices,
//! hand-overs and forwarded events one makes are routed to their partitions between rounds
//! (see [`backtest`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use storeline_event::outbox::OutboxEntry;
use storeline_log::{EventLog, StoredRecord};
use storeline_state::StateStore;

use serde_json::Value;

use crate::apply::Applier;
use crate::error::{Error, Result};
use crate::event::Ev;
use crate::project::Emit;
use crate::project::ProjectionConfig;
use crate::project::identity_key;
use crate::triggers::read::scan_all;
use crate::triggers::rows::{Arb, Run, Status, ns};
use crate::triggers::{BACKTEST, Outcome, Registry, Stage, TriggerSet, moves_the_person, person};

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
    /// `trigger → connector → state → messages`: `sent` (handed to delivery), `held` (held
    /// by quiet hours or a cap when the log ended), `suppressed` (no consent) and `dropped`
    /// (capped or quiet with `drop`, or cancelled while held; `counts` has the reasons).
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
            if let Some(c) = &o.connector {
                let state = o.what.split('_').next().unwrap_or_default().to_owned();
                *self
                    .deliveries
                    .entry(o.trigger.clone())
                    .or_default()
                    .entry(c.clone())
                    .or_default()
                    .entry(state)
                    .or_default() += 1;
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

/// The most records one partition applies in one round.
const ROUND_RECORDS: usize = 16_384;
/// A round that holds a record which sends something to another partition (a link, an event of
/// a merged identity) ends at most this much of the clock after it: the merge notices,
/// hand-overs and forwarded events a round makes are applied by their partition before the
/// next round, so they arrive at most this late (live, a few milliseconds).
const MERGE_ROUND_MS: i64 = 1_000;
/// A round of fewer records is applied partition after partition on one task.
const SMALL_ROUND: usize = 2_048;
/// The most rounds that pass on what other rounds sent, before the log goes on (chains are
/// bounded by `person::HOPS`, so this is never reached).
const DRAIN_ROUNDS: usize = 64;

/// One partition of the backtest: its writer, what it read ahead from the log, and the
/// person's records other partitions routed to it.
struct Lane<S> {
    a: Applier<S>,
    /// Log records read but not yet taken into a round (their log offsets).
    ahead: VecDeque<StoredRecord>,
    /// The next log offset to read, and the log's end.
    read: u64,
    end: u64,
    /// Records routed here by the last round, in the order they were made.
    inbox: Vec<StoredRecord>,
    /// Log records taken (what the report counts as events).
    taken: u64,
    /// How many partitions the log has (where routed records go).
    partitions: u32,
    report: Report,
    first_clock: Option<i64>,
}

impl<S: StateStore> Lane<S> {
    /// Applies the inbox, then the read-ahead records received at or before `until`. The
    /// applier numbers what it applies itself (routed records have no log offset), so the
    /// records are renumbered from its next offset. Returns the records to route.
    async fn round(
        &mut self,
        until: i64,
        samples: usize,
        window: (i64, i64),
        done: &AtomicU64,
    ) -> Result<Vec<(u32, StoredRecord)>> {
        let mut queue: VecDeque<StoredRecord> = std::mem::take(&mut self.inbox).into();
        let mut from_log = 0;
        while self.ahead.front().is_some_and(|r| r.timestamp <= until) {
            if let Some(r) = self.ahead.pop_front() {
                queue.push_back(r);
                from_log += 1;
            }
        }
        self.taken += from_log;
        done.fetch_add(from_log, Ordering::Relaxed);
        for (i, r) in queue.iter_mut().enumerate() {
            r.offset = self.a.next + i as u64;
        }
        let mut out = Vec::new();
        while !queue.is_empty() {
            let n = self.a.batch_limit(32_768).min(queue.len());
            let batch: Vec<StoredRecord> = queue.iter().take(n).cloned().collect();
            let applied = async {
                let (emits, _) = self.a.apply(&batch).await?;
                self.a.commit().await?;
                Ok::<_, Error>(emits)
            };
            let emits = match applied.await {
                Ok(emits) => emits,
                // A record that can never be applied is quarantined, as live.
                Err(e) if self.a.recover(&e) => continue,
                Err(e) => return Err(e),
            };
            self.a.quarantined.clear();
            while queue.front().is_some_and(|r| r.offset < self.a.next) {
                queue.pop_front();
            }
            out.extend(routed(emits, self.a.triggers.clock, self.partitions));
            self.report
                .add(std::mem::take(&mut self.a.triggers.outcomes), samples);
            if self.a.triggers.clock >= window.0 && self.first_clock.is_none() {
                self.first_clock = Some(self.a.triggers.clock);
            }
        }
        Ok(out)
    }
}

/// The person's records a round made, as the log records the live engine would have appended
/// (marked [`BACKTEST`], received at the partition's clock), with the partition each goes to.
/// Everything else a backtest makes (emitted events, forwarded commerce copies, which the log
/// holds already) goes nowhere.
fn routed(emits: Vec<Emit>, clock: i64, partitions: u32) -> Vec<(u32, StoredRecord)> {
    let received = chrono::DateTime::from_timestamp_millis(clock).unwrap_or_default();
    emits
        .into_iter()
        .filter(|e| moves_the_person(&e.ty, &e.data))
        .map(|mut e| {
            e.data[BACKTEST] = Value::Bool(true);
            let ev = e.into_event();
            let p = storeline_log::partition_for(ev.route_key().as_bytes(), partitions);
            let record = StoredRecord {
                offset: 0,
                timestamp: clock,
                key: Bytes::from(ev.route_key().to_owned()),
                value: Bytes::from(ev.to_stored_json(received)),
            };
            (p, record)
        })
        .collect()
}

/// The identities merged into another so far, as the log says in the clock's order: their
/// events are forwarded to the person, so a round that holds one is kept short. It may hold
/// more than the engine has merged (a link of a type no trigger cares for): a round is then
/// shorter than it needs to be, never longer.
#[derive(Default)]
struct Merges {
    members: std::collections::HashSet<String>,
}

impl Merges {
    /// Whether applying `record` can send something to another partition; learns the merges
    /// and splits it makes.
    fn routes(&mut self, record: &StoredRecord) -> bool {
        // Until the first merge, only a link can route: read its type alone.
        if self.members.is_empty() {
            #[derive(serde::Deserialize)]
            struct Type<'a> {
                #[serde(rename = "type", borrow)]
                ty: std::borrow::Cow<'a, str>,
            }
            let link = serde_json::from_slice::<Type<'_>>(&record.value)
                .is_ok_and(|t| person::is_link_type(&t.ty) || t.ty == "customer.unmerged");
            if !link {
                return false;
            }
        }
        let Ok(ev) = Ev::parse(&record.value, 0, record.offset) else {
            return false;
        };
        if let Some((_, others)) = person::merge_of(&ev) {
            self.members.extend(others);
            return true;
        }
        if ev.ty == "customer.unmerged" {
            if let Some(x) = ev.str("identity") {
                self.members.remove(&identity_key(x));
            }
            return true;
        }
        let named = [
            ev.subject.as_deref(),
            ev.str("customer_id"),
            ev.str("customer"),
        ];
        named
            .into_iter()
            .flatten()
            .any(|c| self.members.contains(&identity_key(c)))
    }
}

/// Where this round ends: at `cap` (as far as every partition has read ahead), or
/// [`MERGE_ROUND_MS`] after the first record that sends something to another partition, so
/// what it sends is at most that late. Walks the round's records in the clock's order,
/// learning merges as it goes.
fn round_end<S>(lanes: &[Lane<S>], mut cap: i64, merges: &mut Merges) -> i64 {
    let mut at = vec![0usize; lanes.len()];
    let mut routed = false;
    loop {
        let next = lanes
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.ahead.get(at[i]).map(|r| (r.timestamp, i)))
            .min();
        let Some((ts, i)) = next.filter(|(ts, _)| *ts <= cap) else {
            return cap;
        };
        at[i] += 1;
        if merges.routes(&lanes[i].ahead[at[i] - 1]) && !routed {
            routed = true;
            cap = cap.min(ts.saturating_add(MERGE_ROUND_MS));
        }
    }
}

/// What every round of one backtest shares.
struct Ctx<'a> {
    samples: usize,
    window: (i64, i64),
    done: &'a AtomicU64,
    progress: &'a (dyn Fn(u64) + Sync),
}

/// One round: every partition with something to apply applies its inbox and its read-ahead
/// records up to `until`; what they send to other partitions lands in those inboxes, in
/// partition order and, per partition, in the order it was made (the same on every run).
async fn run_round<S: StateStore>(
    lanes: &mut Vec<Lane<S>>,
    until: i64,
    ctx: &Ctx<'_>,
    tick: &mut tokio::time::Interval,
) -> Result<()> {
    let work =
        |l: &Lane<S>| l.inbox.len() + l.ahead.iter().take_while(|r| r.timestamp <= until).count();
    let records: usize = lanes.iter().map(work).sum();
    let (samples, window) = (ctx.samples, ctx.window);
    let mut out = Vec::new();
    if records < SMALL_ROUND {
        // A task per partition costs more than it saves here.
        for lane in lanes.iter_mut() {
            if work(lane) > 0 {
                let routed = lane.round(until, samples, window, ctx.done).await?;
                out.push((lane.a.partition, routed));
            }
        }
    } else {
        let mut tasks = tokio::task::JoinSet::new();
        for mut lane in lanes.drain(..) {
            let done = AtomicU64::new(0);
            tasks.spawn(async move {
                let routed = lane.round(until, samples, window, &done).await?;
                Ok::<_, Error>((lane, routed, done.load(Ordering::Relaxed)))
            });
        }
        loop {
            tokio::select! {
                joined = tasks.join_next() => match joined {
                    None => break,
                    Some(Ok(r)) => {
                        let (lane, routed, n) = r?;
                        ctx.done.fetch_add(n, Ordering::Relaxed);
                        out.push((lane.a.partition, routed));
                        lanes.push(lane);
                    }
                    Some(Err(e)) => return Err(Error::Emit(format!("a backtest task failed: {e}"))),
                },
                _ = tick.tick() => (ctx.progress)(ctx.done.load(Ordering::Relaxed)),
            }
        }
        lanes.sort_by_key(|l| l.a.partition);
    }
    out.sort_by_key(|(p, _)| *p);
    for (_, routed) in out {
        for (to, record) in routed {
            if let Some(lane) = lanes.get_mut(to as usize) {
                lane.inbox.push(record);
            }
        }
    }
    Ok(())
}

/// Runs `set` over every partition of `log` up to its current end, evaluating triggers for
/// records whose clock is in `[from, to]` (projections and aggregates see everything before, so
/// customers and windows are warm). `store` must be empty.
///
/// Partitions apply in rounds, in parallel, each up to the same point of the clock. Merges
/// move runs between partitions as live: the merge notices, hand-overs and forwarded events a
/// round makes are applied by their partition first thing in the next round. Until the log's
/// first merge a round is up to [`ROUND_RECORDS`] per partition; from then on it also covers at
/// most [`MERGE_ROUND_MS`] of the clock after the first record that sends something to another
/// partition, or after its start when such records wait.
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
    let partitions = log.partitions();
    let commerce =
        storeline_log::partition_for(storeline_event::COMMERCE_KEY.as_bytes(), partitions);
    let mut lanes = Vec::new();
    for p in 0..partitions {
        let set = TriggerSet::parse(source).map_err(|e| Error::Emit(format!("{e:?}")))?;
        let mut a = Applier::new(p, store.clone(), cfg.clone(), 0);
        a.triggers = Stage::new(Registry::new(set), Some(commerce));
        a.triggers.window = Some(window);
        let bounds = log.bounds(p)?;
        lanes.push(Lane {
            a,
            ahead: VecDeque::new(),
            read: bounds.start,
            end: bounds.end,
            inbox: Vec::new(),
            taken: 0,
            partitions,
            report: Report::default(),
            first_clock: None,
        });
    }
    let mut merges = Merges::default();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    let ctx = Ctx {
        samples,
        window,
        done: &done,
        progress,
    };
    loop {
        // What the last round sent to other partitions is applied there first, and what that
        // sends on, before the log goes on.
        let mut hops = 0;
        while lanes.iter().any(|l| !l.inbox.is_empty()) && hops < DRAIN_ROUNDS {
            hops += 1;
            run_round(&mut lanes, i64::MIN, &ctx, &mut tick).await?;
        }
        // Read ahead, and find how far this round goes.
        for lane in &mut lanes {
            while lane.ahead.len() < ROUND_RECORDS && lane.read < lane.end {
                let want = (ROUND_RECORDS - lane.ahead.len()).min((lane.end - lane.read) as usize);
                let records = log.read(lane.a.partition, lane.read, want).await?;
                let Some(last) = records.last() else { break };
                lane.read = last.offset + 1;
                lane.ahead.extend(records);
            }
        }
        if lanes.iter().all(|l| l.ahead.is_empty()) {
            break;
        }
        let cap = lanes
            .iter()
            .filter(|l| l.read < l.end)
            .filter_map(|l| l.ahead.back().map(|r| r.timestamp))
            .min()
            .unwrap_or(i64::MAX);
        let until = round_end(&lanes, cap, &mut merges);
        run_round(&mut lanes, until, &ctx, &mut tick).await?;
    }
    progress(done.load(Ordering::Relaxed));
    let mut total = Report::default();
    for lane in lanes {
        let mut r = lane.report;
        total.events += lane.taken;
        for (t, m) in r.counts {
            let e = total.counts.entry(t).or_default();
            for (k, v) in m {
                *e.entry(k).or_default() += v;
            }
        }
        for (t, m) in r.deliveries {
            let e = total.deliveries.entry(t).or_default();
            for (c, states) in m {
                let e = e.entry(c).or_default();
                for (k, v) in states {
                    *e.entry(k).or_default() += v;
                }
            }
        }
        for (k, v) in std::mem::take(&mut r.samples) {
            let e = total.samples.entry(k).or_default();
            e.extend(v);
            e.truncate(samples);
        }
        let clock = lane
            .first_clock
            .map(|f| (f.max(window.0), lane.a.triggers.clock.min(window.1)));
        total.clock = match (total.clock, clock) {
            (Some(a), Some(b)) => Some((a.0.min(b.0), a.1.max(b.1))),
            (a, b) => a.or(b),
        };
    }
    at_the_end(&*store, &mut total).await?;
    Ok(total)
}

/// Where messages and runs are when the log ended, from the scratch store's rows.
async fn at_the_end<S: StateStore>(store: &S, report: &mut Report) -> Result<()> {
    const ALL: usize = usize::MAX;
    let deliveries = &mut report.deliveries;
    let mut add = |entry: &OutboxEntry, state: &str| {
        *deliveries
            .entry(entry.trigger.clone())
            .or_default()
            .entry(entry.connector.clone())
            .or_default()
            .entry(state.to_owned())
            .or_default() += 1;
    };
    for (_, _, b) in scan_all(store, ns::OUTBOX, "", ALL).await? {
        if let Ok(entry) = OutboxEntry::parse(&b) {
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
    report.waiting = waiting;
    Ok(())
}
