//! Figure 2 of `storeline bench triggers`: how late timers fire at a steady 10k fires/s.
//!
//! A one-trigger file starts a run per `bench.timer` event whose only timer is due `delay` after
//! the event's `received_at`. Events go in at `rate`/s (open loop, stamped at append) for
//! `seconds + delay`, so timers fall due at `rate`/s for `seconds` while the same rate of new
//! events keeps arriving (the steady state of a live shop), then for `delay` more seconds with
//! no input, when the runners' `storeline.tick` records move the partitions' clocks.
//!
//! Lateness is measured as the engine's own `storeline_trigger_timer_lateness_seconds` defines
//! it: wall clock when the commit that fired the timer returned, minus the timer's due time. The
//! engine records that histogram with the global `metrics` recorder, which this binary cannot
//! install (no `metrics` dependency here), so [`Fires`] wraps the state store and takes the same
//! figure from the commits themselves: every deleted `timer` row is a fired timer (the bench's
//! runs are never cancelled), and its key holds the due time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use bytes::Bytes;
use serde_json::json;
use storeline_engine::triggers::rows;
use storeline_engine::{Engine, EngineConfig};
use storeline_log::EventLog;
use storeline_state::{Commit, Row, StateStore, Write};
use tokio::sync::watch;

use super::phases::{Breakdown, Ctx, Log, St};
use super::setup;
use super::support::{CpuMark, LogAppender, Timed, percentile, spinner, wait_caught_up};

/// A state store that notes, for every timer row a commit deletes, `(due, lateness)` in ms.
pub struct Fires<S> {
    pub inner: S,
    pub fired: Mutex<Vec<(i64, f64)>>,
}

fn now_ms_f64() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1000.0
}

impl<S: StateStore> StateStore for Fires<S> {
    async fn offsets(&self) -> storeline_state::Result<BTreeMap<u32, u64>> {
        self.inner.offsets().await
    }
    async fn commit(&self, commit: Commit) -> storeline_state::Result<()> {
        let dues: Vec<i64> = commit
            .writes
            .iter()
            .filter_map(|w| match w {
                Write::Delete { ns, key } if ns == rows::ns::TIMER => {
                    rows::parse_timer_key(key).map(|(due, _)| due)
                }
                _ => None,
            })
            .collect();
        self.inner.commit(commit).await?;
        if !dues.is_empty() {
            let now = now_ms_f64();
            let mut f = self.fired.lock().unwrap_or_else(|e| e.into_inner());
            f.extend(dues.into_iter().map(|d| (d, now - d as f64)));
        }
        Ok(())
    }
    async fn get(&self, ns: &str, key: &str) -> storeline_state::Result<Vec<(u32, Bytes)>> {
        self.inner.get(ns, key).await
    }
    async fn get_owned(
        &self,
        ns: &str,
        owner: u32,
        keys: &[String],
    ) -> storeline_state::Result<Vec<Option<Bytes>>> {
        self.inner.get_owned(ns, owner, keys).await
    }
    async fn scan(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<(&str, u32)>,
        limit: usize,
    ) -> storeline_state::Result<Vec<Row>> {
        self.inner.scan(ns, prefix, after, limit).await
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

/// What the phase measured (milliseconds unless named otherwise).
#[derive(Debug, Clone, Default)]
pub struct Lateness {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    /// Timers due while events kept arriving.
    pub steady_p50: f64,
    pub steady_p99: f64,
    /// Timers due after the input stopped (fired through ticks).
    pub idle_p50: f64,
    pub idle_p99: f64,
    pub idle_n: usize,
    pub fired: usize,
    pub sent: u64,
    /// Fired timers per second of due time, while events kept arriving.
    pub fire_rate: f64,
    /// Timer rows left when the phase ended (0 when every timer fired).
    pub left: u64,
    /// Largest gap between when the bench meant to append an event and when it did.
    pub producer_behind_ms: f64,
    pub breakdown: Breakdown,
}

pub struct Params {
    pub rate: u64,
    pub seconds: u64,
    pub delay: Duration,
}

/// Appends events every this often (the open loop's step).
const STEP: Duration = Duration::from_millis(5);

pub async fn measure(ctx: &Ctx, p: &Params) -> Result<Lateness> {
    let delay_ms = p.delay.as_millis() as i64;
    let set = setup::timer_set("bench.timer", &format!("{delay_ms}ms"))?;
    let log: Arc<Log> = Arc::new(ctx.open_log("late")?);
    let timed: Timed<storeline_state::Store> = Timed::new(ctx.open_store("late").await?);
    let stats = timed.stats.clone();
    let store = Arc::new(Fires {
        inner: timed,
        fired: Mutex::new(Vec::new()),
    });
    let (stop, stop_rx) = watch::channel(false);
    let engine = Engine::start(
        log.clone(),
        store.clone(),
        Arc::new(LogAppender { log: log.clone() }),
        EngineConfig::default(),
        stop_rx,
    )
    .await
    .map_err(|e| anyhow!("starting the engine: {e}"))?;
    let result = run(&log, &engine, &store, &stats, &set, p, delay_ms).await;
    stop.send_replace(true);
    engine.join().await;
    if let Err(e) = log.close().await {
        eprintln!("warning: closing a bench log: {e}");
    }
    ctx.release(&store.inner.inner, "late").await;
    result
}

async fn run(
    log: &Arc<Log>,
    engine: &Engine<Fires<St>>,
    store: &Fires<St>,
    stats: &Arc<super::support::StoreStats>,
    set: &storeline_engine::triggers::TriggerSet,
    p: &Params,
    delay_ms: i64,
) -> Result<Lateness> {
    setup::install(log, engine, set).await?;
    for o in [&log.stats.append, &log.stats.read] {
        o.reset();
    }
    for o in [&stats.commit, &stats.load, &stats.read] {
        o.reset();
    }
    let cpu = CpuMark::now();
    let bar = spinner("timer lateness");
    let input_secs = p.seconds as f64 + delay_ms as f64 / 1000.0;
    let t0 = Instant::now();
    let mut sent = 0u64;
    let mut behind: f64 = 0.0;
    let mut last_stamp = 0i64;
    loop {
        let elapsed = t0.elapsed().as_secs_f64();
        if elapsed >= input_secs {
            break;
        }
        let target = (elapsed * p.rate as f64) as u64;
        if target > sent {
            // How far behind the open loop the oldest event of this step is.
            behind = behind.max((elapsed - sent as f64 / p.rate as f64) * 1000.0);
            let events = (sent..target).map(|i| {
                (
                    "bench.timer".to_owned(),
                    format!("cus-t{:05}", i % 50_000),
                    json!({ "k": format!("k{i}") }),
                )
            });
            let (stamp, parts) = setup::records(events, "btim_", sent);
            last_stamp = stamp;
            setup::append_all(&**log, parts).await?;
            sent = target;
            let fired = store.fired.lock().unwrap_or_else(|e| e.into_inner()).len();
            bar.set_message(format!(
                "timer lateness: {sent} events in, {fired} timers fired"
            ));
        }
        let next = t0 + Duration::from_secs_f64((sent + 1) as f64 / p.rate as f64);
        tokio::time::sleep_until(next.max(Instant::now() + STEP).into()).await;
    }
    // Every timer is due by `last_stamp + delay`: wait for them, with room for a slow engine.
    let deadline = Instant::now() + p.delay + Duration::from_secs(60);
    loop {
        let fired = store.fired.lock().unwrap_or_else(|e| e.into_inner()).len() as u64;
        bar.set_message(format!(
            "timer lateness: {sent} events in, {fired} timers fired (input over)"
        ));
        if fired >= sent || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = wait_caught_up(&**log, engine, Duration::from_secs(10)).await;
    bar.finish_and_clear();
    let breakdown = Breakdown::capture(log, &store.inner, &cpu);
    let left = setup::count_rows(store, rows::ns::TIMER).await?;
    let fired = std::mem::take(&mut *store.fired.lock().unwrap_or_else(|e| e.into_inner()));
    if fired.is_empty() {
        bail!("no timer fired ({sent} events in, {left} timer rows left)");
    }
    // Timers due after the last input event was stamped fired with no input behind them.
    let input_end = last_stamp;
    let sorted = |v: Vec<f64>| {
        let mut v = v;
        v.sort_by(f64::total_cmp);
        v
    };
    let all = sorted(fired.iter().map(|f| f.1).collect());
    let steady = sorted(
        fired
            .iter()
            .filter(|f| f.0 <= input_end)
            .map(|f| f.1)
            .collect(),
    );
    let idle = sorted(
        fired
            .iter()
            .filter(|f| f.0 > input_end)
            .map(|f| f.1)
            .collect(),
    );
    let steady_span = fired
        .iter()
        .filter(|f| f.0 <= input_end)
        .map(|f| f.0)
        .fold((i64::MAX, i64::MIN), |(lo, hi), d| (lo.min(d), hi.max(d)));
    let fire_rate = if steady_span.1 > steady_span.0 {
        steady.len() as f64 / ((steady_span.1 - steady_span.0) as f64 / 1000.0)
    } else {
        0.0
    };
    Ok(Lateness {
        p50: percentile(&all, 0.50),
        p99: percentile(&all, 0.99),
        max: all.last().copied().unwrap_or(0.0),
        steady_p50: percentile(&steady, 0.50),
        steady_p99: percentile(&steady, 0.99),
        idle_p50: percentile(&idle, 0.50),
        idle_p99: percentile(&idle, 0.99),
        idle_n: idle.len(),
        fired: all.len(),
        sent,
        fire_rate,
        left,
        producer_behind_ms: behind,
        breakdown,
    })
}
