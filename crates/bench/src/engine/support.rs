//! Plumbing for `storeline bench engine`: an in-process [`Appender`] over the log, timing
//! wrappers around the state store and the log (so the report can say where a phase's time
//! went without touching the engine), CPU accounting from `/proc`, and small statistics.
//!
//! Why wrappers: the engine is generic over [`StateStore`] and [`EventLog`], so wrapping them is
//! the only way to time commits, row loads and log reads from the outside, exactly as the
//! engine issues them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use storeline_engine::{AppendError, Appender};
use storeline_event::Event;
use storeline_log::{AppendAck, Bounds, EventLog, Record, StoredRecord, partition_for};
use storeline_state::{Commit, Row, StateStore};
use tokio::sync::watch;

/// Calls of one operation: how many, how long in total, the longest, items and bytes moved,
/// and how long at least one call was in flight (`busy`: when it nears the wall time, this
/// operation is what the phase waited on).
#[derive(Default)]
pub struct OpStats {
    calls: AtomicU64,
    nanos: AtomicU64,
    max_nanos: AtomicU64,
    items: AtomicU64,
    bytes: AtomicU64,
    /// Calls in flight, and since when at least one was.
    flight: std::sync::Mutex<(u64, Option<Instant>)>,
    busy_nanos: AtomicU64,
    /// Every call's duration in microseconds, for percentiles.
    samples: std::sync::Mutex<Vec<u32>>,
}

impl OpStats {
    fn begin(&self) -> Instant {
        let now = Instant::now();
        let mut f = self.flight.lock().unwrap_or_else(|e| e.into_inner());
        if f.0 == 0 {
            f.1 = Some(now);
        }
        f.0 += 1;
        now
    }

    fn end(&self, started: Instant, items: usize, bytes: usize) {
        let now = Instant::now();
        {
            let mut f = self.flight.lock().unwrap_or_else(|e| e.into_inner());
            f.0 = f.0.saturating_sub(1);
            if f.0 == 0
                && let Some(since) = f.1.take()
            {
                self.busy_nanos
                    .fetch_add((now - since).as_nanos() as u64, Ordering::Relaxed);
            }
        }
        let ns = (now - started).as_nanos() as u64;
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((ns / 1000).min(u64::from(u32::MAX)) as u32);
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.nanos.fetch_add(ns, Ordering::Relaxed);
        self.max_nanos.fetch_max(ns, Ordering::Relaxed);
        self.items.fetch_add(items as u64, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Forgets every call so far (calls in flight still count when they end).
    pub fn reset(&self) {
        for a in [
            &self.calls,
            &self.nanos,
            &self.max_nanos,
            &self.items,
            &self.bytes,
            &self.busy_nanos,
        ] {
            a.store(0, Ordering::Relaxed);
        }
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    pub fn snapshot(&self) -> OpSnapshot {
        OpSnapshot {
            calls: self.calls.load(Ordering::Relaxed),
            secs: self.nanos.load(Ordering::Relaxed) as f64 / 1e9,
            busy: self.busy_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            p99_ms: {
                let mut v = self
                    .samples
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                v.sort_unstable();
                let idx = (v.len() as f64 * 0.99).ceil() as usize;
                v.get(idx.saturating_sub(1))
                    .map_or(0.0, |&us| f64::from(us) / 1e3)
            },
            max_ms: self.max_nanos.load(Ordering::Relaxed) as f64 / 1e6,
            items: self.items.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

/// A copy of [`OpStats`] at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpSnapshot {
    pub calls: u64,
    /// Summed over callers (concurrent calls add up, so this can exceed the wall time).
    pub secs: f64,
    /// Wall seconds with at least one call in flight.
    pub busy: f64,
    /// 99th percentile of one call, over all calls so far.
    pub p99_ms: f64,
    pub max_ms: f64,
    pub items: u64,
    pub bytes: u64,
}

impl OpSnapshot {
    pub fn mean_ms(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.secs * 1e3 / self.calls as f64
        }
    }
    pub fn items_per_call(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.items as f64 / self.calls as f64
        }
    }
}

/// Store calls the engine makes, by kind.
#[derive(Default)]
pub struct StoreStats {
    /// `commit`: items are rows written or deleted.
    pub commit: OpStats,
    /// `get_owned` (the views' batched row loads): items are keys asked for.
    pub load: OpStats,
    /// `get` and `scan` (reads: idempotency lookups, the read side).
    pub read: OpStats,
}

/// A state store that times the calls made on it.
pub struct Timed<S> {
    pub inner: S,
    pub stats: Arc<StoreStats>,
}

impl<S> Timed<S> {
    pub fn new(inner: S) -> Self {
        Timed {
            inner,
            stats: Arc::default(),
        }
    }
}

impl<S: StateStore> StateStore for Timed<S> {
    async fn offsets(&self) -> storeline_state::Result<BTreeMap<u32, u64>> {
        self.inner.offsets().await
    }
    async fn commit(&self, commit: Commit) -> storeline_state::Result<()> {
        let n = commit.writes.len();
        let bytes: usize = commit
            .writes
            .iter()
            .map(|w| match w {
                storeline_state::Write::Put { key, value, .. } => key.len() + value.len(),
                storeline_state::Write::Delete { key, .. } => key.len(),
            })
            .sum();
        let t = self.stats.commit.begin();
        let r = self.inner.commit(commit).await;
        self.stats.commit.end(t, n, bytes);
        r
    }
    async fn get(&self, ns: &str, key: &str) -> storeline_state::Result<Vec<(u32, Bytes)>> {
        let t = self.stats.read.begin();
        let r = self.inner.get(ns, key).await;
        self.stats.read.end(t, 1, 0);
        r
    }
    async fn get_owned(
        &self,
        ns: &str,
        owner: u32,
        keys: &[String],
    ) -> storeline_state::Result<Vec<Option<Bytes>>> {
        let t = self.stats.load.begin();
        let r = self.inner.get_owned(ns, owner, keys).await;
        let bytes = r
            .as_ref()
            .map_or(0, |v| v.iter().flatten().map(Bytes::len).sum());
        self.stats.load.end(t, keys.len(), bytes);
        r
    }
    async fn scan(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<(&str, u32)>,
        limit: usize,
    ) -> storeline_state::Result<Vec<Row>> {
        let t = self.stats.read.begin();
        let r = self.inner.scan(ns, prefix, after, limit).await;
        self.stats.read.end(t, 1, 0);
        r
    }
    async fn dump(
        &self,
        after: Option<(&str, &str, u32)>,
        limit: usize,
    ) -> storeline_state::Result<Vec<Row>> {
        self.inner.dump(after, limit).await
    }
    async fn close(&self) {
        self.inner.close().await
    }
}

/// Log calls, by kind.
#[derive(Default)]
pub struct LogStats {
    /// Durable appends (fsync included): items are records.
    pub append: OpStats,
    /// Reads: items are records returned.
    pub read: OpStats,
}

/// A log that times appends and reads.
pub struct TimedLog<L> {
    pub inner: L,
    pub stats: Arc<LogStats>,
}

impl<L> TimedLog<L> {
    pub fn new(inner: L) -> Self {
        TimedLog {
            inner,
            stats: Arc::default(),
        }
    }
}

impl<L: EventLog> EventLog for TimedLog<L> {
    fn partitions(&self) -> u32 {
        self.inner.partitions()
    }
    async fn append(
        &self,
        partition: u32,
        records: Vec<Record>,
    ) -> storeline_log::Result<AppendAck> {
        let n = records.len();
        let bytes = records.iter().map(|r| r.value.len()).sum();
        let t = self.stats.append.begin();
        let r = self.inner.append(partition, records).await;
        self.stats.append.end(t, n, bytes);
        r
    }
    async fn read(
        &self,
        partition: u32,
        from: u64,
        max: usize,
    ) -> storeline_log::Result<Vec<StoredRecord>> {
        let t = self.stats.read.begin();
        let r = self.inner.read(partition, from, max).await;
        let (n, bytes) = r
            .as_ref()
            .map_or((0, 0), |v| (v.len(), v.iter().map(|x| x.value.len()).sum()));
        self.stats.read.end(t, n, bytes);
        r
    }
    async fn offset_for_time(&self, partition: u32, timestamp: i64) -> storeline_log::Result<u64> {
        self.inner.offset_for_time(partition, timestamp).await
    }
    fn bounds(&self, partition: u32) -> storeline_log::Result<Bounds> {
        self.inner.bounds(partition)
    }
    fn watch(&self, partition: u32) -> storeline_log::Result<watch::Receiver<u64>> {
        self.inner.watch(partition)
    }
    async fn trim(&self, partition: u32, before: u64) -> storeline_log::Result<u64> {
        self.inner.trim(partition, before).await
    }
    fn health(&self, partition: u32) -> Option<String> {
        self.inner.health(partition)
    }
    async fn close(&self) -> storeline_log::Result<()> {
        self.inner.close().await
    }
}

/// The engine's way back into the log, in-process: routes like ingest (by
/// [`Event::route_key`]) and appends durably. No deduplication (the bench never repeats an id).
pub struct LogAppender<L> {
    pub log: Arc<L>,
}

impl<L: EventLog> Appender for LogAppender<L> {
    async fn append(
        &self,
        events: Vec<Event>,
        partition: Option<u32>,
    ) -> Result<Vec<(u32, u64)>, AppendError> {
        let now = chrono::Utc::now();
        let received = storeline_event::format_time(&now);
        let partitions = self.log.partitions();
        let mut groups: BTreeMap<u32, (Vec<usize>, Vec<Record>)> = BTreeMap::new();
        for (i, ev) in events.iter().enumerate() {
            let key = ev.route_key();
            let p = partition.unwrap_or_else(|| partition_for(key.as_bytes(), partitions));
            let g = groups.entry(p).or_default();
            g.0.push(i);
            g.1.push(Record {
                timestamp: now.timestamp_millis(),
                key: Bytes::copy_from_slice(key.as_bytes()),
                value: Bytes::from(ev.to_stored_json_at(&received)),
            });
        }
        let log = &self.log;
        let appends = groups
            .into_iter()
            .map(|(p, (idx, records))| async move { (p, idx, log.append(p, records).await) });
        let mut out = vec![(0, 0); events.len()];
        for (p, idx, r) in futures::future::join_all(appends).await {
            let ack = r.map_err(|e| AppendError::unavailable("log_unavailable", e.to_string()))?;
            for (n, i) in idx.into_iter().enumerate() {
                out[i] = (p, ack.base_offset + n as u64);
            }
        }
        Ok(out)
    }
}

/// CPU time of this process and of the whole machine, to tell CPU-bound from waiting.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    at: Instant,
    /// This process, user + system, in clock ticks.
    proc_ticks: u64,
    /// All CPUs: busy (user, nice, system, irq, softirq, steal), iowait, total, in ticks.
    busy: u64,
    iowait: u64,
    total: u64,
}

/// CPU use over an interval, in percent of one core (process) and of the machine.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    /// This process, percent of one core (200 = two cores busy).
    pub process: f64,
    /// The machine (this process, PostgreSQL, everything), percent of all cores.
    pub machine: f64,
    /// Machine time waiting on I/O, percent of all cores.
    pub iowait: f64,
}

/// Clock ticks per second for `/proc` figures (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

impl CpuMark {
    pub fn now() -> CpuMark {
        let proc_ticks = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| {
                // Fields after "(comm)": state is field 3, utime 14 and stime 15.
                let rest = s.rsplit_once(')')?.1;
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
            })
            .unwrap_or(0);
        let (mut busy, mut iowait, mut total) = (0, 0, 0);
        if let Some(line) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| s.lines().next().map(str::to_owned))
        {
            let v: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal guest guest_nice
            let get = |i: usize| v.get(i).copied().unwrap_or(0);
            busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
            iowait = get(4);
            total = busy + get(3) + iowait;
        }
        CpuMark {
            at: Instant::now(),
            proc_ticks,
            busy,
            iowait,
            total,
        }
    }

    /// Wall seconds since the mark.
    pub fn elapsed(&self) -> f64 {
        self.at.elapsed().as_secs_f64()
    }

    pub fn since(&self) -> CpuUse {
        let now = CpuMark::now();
        let wall = self.at.elapsed().as_secs_f64().max(1e-9);
        let total = (now.total.saturating_sub(self.total)).max(1) as f64;
        CpuUse {
            process: now.proc_ticks.saturating_sub(self.proc_ticks) as f64 / TICKS / wall * 100.0,
            machine: now.busy.saturating_sub(self.busy) as f64 / total * 100.0,
            iowait: now.iowait.saturating_sub(self.iowait) as f64 / total * 100.0,
        }
    }
}

/// Percentile `p` (0..=1) of sorted `v`, nearest rank; 0 when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Median of `v` (the mean of the middle two for an even count); NaN when empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if !n.is_multiple_of(2) {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Waits until every partition has applied everything its log holds (checked twice in a row,
/// since applying may append caused events to another partition); false on `timeout`.
pub async fn wait_caught_up<L: EventLog, S: StateStore>(
    log: &L,
    engine: &storeline_engine::Engine<S>,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    let mut streak = 0;
    while Instant::now() < deadline {
        if is_caught_up(log, engine) {
            streak += 1;
            if streak >= 2 {
                return true;
            }
        } else {
            streak = 0;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    false
}

/// Whether every partition's applied offset has reached the log's end.
pub fn is_caught_up<L: EventLog, S: StateStore>(
    log: &L,
    engine: &storeline_engine::Engine<S>,
) -> bool {
    engine
        .applied()
        .iter()
        .enumerate()
        .all(|(p, a)| log.bounds(p as u32).map(|b| *a >= b.end).unwrap_or(true))
}

/// A spinner on stderr (drawn only when stderr is a terminal).
pub fn spinner(msg: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner().with_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.set_message(msg.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Prints one operation's line of a time breakdown, indented by `indent` spaces.
pub(crate) fn print_op(indent: usize, label: &str, o: &OpSnapshot, item: &str) {
    if o.calls == 0 {
        return;
    }
    println!(
        "{:indent$}{label:<14} {:>8} x {:>8.3} ms (p99 {:>6.2}, max {:>6.1})  {:>6.0} {item}, {:>7.1} KB per call; busy {:>6.2} s",
        "",
        o.calls,
        o.mean_ms(),
        o.p99_ms,
        o.max_ms,
        o.items_per_call(),
        o.bytes as f64 / o.calls as f64 / 1024.0,
        o.busy,
    );
}
