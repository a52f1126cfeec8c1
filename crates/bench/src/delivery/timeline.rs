//! A per-interval timeline of one scenario (`--timeline`): events acked by ingest, applied by
//! the engine, waiting in the engine (lag) and in the delivery worker (pending), attempts and
//! arrivals. Where the backlog sits says which stage is the bottleneck.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use storeline_state::StateStore;
use tokio::sync::oneshot;

use super::figures::Scrape;
use super::receiver::Track;

struct Row {
    at: Instant,
    acked: u64,
    received: u64,
    applied: f64,
    lag: f64,
    pending: f64,
    in_flight: f64,
    attempts: f64,
    commits: Option<u64>,
    /// CPU seconds of the server and of this process.
    cpu: Option<(f64, f64)>,
}

/// Samples until [`Sampler::finish`].
pub(crate) struct Sampler {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Vec<Row>>,
}

async fn sample(
    addr: &str,
    pid: &str,
    track: &Track,
    store: Option<&storeline_state::SqliteStore>,
) -> Row {
    let s = Scrape::take(addr).await;
    let commits = match store {
        Some(st) => st
            .offsets()
            .await
            .ok()
            .map(|o| o.get(&0).copied().unwrap_or(0)),
        None => None,
    };
    Row {
        at: Instant::now(),
        acked: track.acked_count.load(Ordering::Acquire),
        received: track.received.load(Ordering::Acquire),
        applied: s.sum("storeline_engine_events_total"),
        lag: s.sum("storeline_engine_lag_events"),
        pending: s.sum("storeline_delivery_queue_depth"),
        in_flight: s.sum("storeline_delivery_in_flight"),
        attempts: s.sum("storeline_delivery_attempts_total"),
        commits,
        cpu: super::counters::cpu_seconds(pid).zip(super::counters::cpu_seconds("self")),
    }
}

impl Sampler {
    pub(crate) fn start(
        addr: String,
        pid: String,
        track: Arc<Track>,
        store: Option<storeline_state::SqliteStore>,
        every: Duration,
    ) -> Sampler {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut rows = vec![sample(&addr, &pid, &track, store.as_ref()).await];
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => rows.push(sample(&addr, &pid, &track, store.as_ref()).await),
                }
            }
            rows.push(sample(&addr, &pid, &track, store.as_ref()).await);
            rows
        });
        Sampler { stop, task }
    }

    /// Stops sampling and prints the timeline.
    pub(crate) async fn finish(self) {
        let _ = self.stop.send(());
        let Ok(rows) = self.task.await else { return };
        println!(
            "    {:>6} {:>9} {:>10} {:>9} {:>9} {:>9} {:>10} {:>11} {:>10} {:>8} {:>8}",
            "t s",
            "acked",
            "applied/s",
            "eng lag",
            "pending",
            "in flight",
            "attempts/s",
            "received/s",
            "commits/s",
            "srv cpu%",
            "bench%"
        );
        let Some(first) = rows.first() else { return };
        for w in rows.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            let dt = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
            let commits = match (a.commits, b.commits) {
                (Some(x), Some(y)) => format!("{:.0}", y.saturating_sub(x) as f64 / dt),
                _ => "?".into(),
            };
            let (srv, bench) = match (a.cpu, b.cpu) {
                (Some((s0, b0)), Some((s1, b1))) => (
                    format!("{:.0}", (s1 - s0) / dt * 100.0),
                    format!("{:.0}", (b1 - b0) / dt * 100.0),
                ),
                _ => ("?".into(), "?".into()),
            };
            println!(
                "    {:>6.1} {:>9} {:>10.0} {:>9.0} {:>9.0} {:>9.0} {:>10.0} {:>11.0} {:>10} {:>8} {:>8}",
                b.at.duration_since(first.at).as_secs_f64(),
                b.acked,
                (b.applied - a.applied) / dt,
                b.lag,
                b.pending,
                b.in_flight,
                (b.attempts - a.attempts) / dt,
                (b.received - a.received) as f64 / dt,
                commits,
                srv,
                bench
            );
        }
    }
}
