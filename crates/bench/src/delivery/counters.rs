//! The server's own counters around a scenario: a `/metrics` scrape, the delivery store's commit
//! count (read from its SQLite file), and CPU time of the server and of this process from
//! procfs; [`server_line`] prints the difference as one line.

use std::path::Path;
use std::time::Instant;

use storeline_state::StateStore;

use super::figures::{Scrape, bound, hist_delta};

/// The delivery store's commit count (owner 0's offset), read from its SQLite file beside the
/// server: one commit per writer iteration that changed something.
pub(crate) struct Commits(Option<storeline_state::SqliteStore>);

impl Commits {
    pub(crate) async fn open(data: &Path) -> Commits {
        Commits(
            storeline_state::SqliteStore::open(&data.join("delivery.db"))
                .await
                .ok(),
        )
    }
    pub(crate) fn store(&self) -> Option<storeline_state::SqliteStore> {
        self.0.clone()
    }
    pub(crate) async fn get(&self) -> Option<u64> {
        let s = self.0.as_ref()?;
        Some(s.offsets().await.ok()?.get(&0).copied().unwrap_or(0))
    }
}

/// CPU time (user + system) of process `pid` in seconds, from `/proc/{pid}/stat` (clock ticks,
/// taken as the usual 100 per second); `None` where there is no procfs.
pub(crate) fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// The 1-minute load average, from `/proc/loadavg`: on a shared machine, other work shows here.
pub(crate) fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The server's counters around one scenario.
pub(crate) struct Counters {
    scrape: Scrape,
    commits: Option<u64>,
    at: Instant,
    /// CPU seconds of the server and of this process.
    cpu: Option<(f64, f64)>,
}

impl Counters {
    pub(crate) async fn take(server: &crate::ingest::Server, commits: &Commits) -> Counters {
        let pid = server.child.id().to_string();
        Counters {
            scrape: Scrape::take(&server.addr).await,
            commits: commits.get().await,
            at: Instant::now(),
            cpu: cpu_seconds(&pid).zip(cpu_seconds("self")),
        }
    }
}

/// One line of the server's work between two snapshots.
pub(crate) fn server_line(a: &Counters, b: &Counters) -> String {
    let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    let d = |name: &str| b.scrape.sum(name) - a.scrape.sum(name);
    let fsyncs = d("storeline_log_fsync_seconds_count");
    let (batches, batch_mean, _) =
        hist_delta(&a.scrape, &b.scrape, "storeline_engine_batch_seconds", &[]);
    let events = d("storeline_engine_events_total");
    let attempts = d("storeline_delivery_attempts_total");
    let failed = attempts
        - (b.scrape
            .sum("storeline_delivery_attempts_total{connector=\"sink\",outcome=\"delivered\"}")
            - a.scrape.sum(
                "storeline_delivery_attempts_total{connector=\"sink\",outcome=\"delivered\"}",
            ));
    let commits = match (a.commits, b.commits) {
        (Some(x), Some(y)) if y > x => format!(
            "{:.0}/s ({:.1} attempts/commit)",
            (y - x) as f64 / secs,
            attempts / (y - x) as f64
        ),
        (Some(_), Some(_)) => "0".into(),
        _ => "?".into(),
    };
    let (_, lat_mean, q) = hist_delta(
        &a.scrape,
        &b.scrape,
        "storeline_delivery_latency_seconds",
        &[0.5, 0.99],
    );
    let cpu = match (a.cpu, b.cpu) {
        (Some((s0, b0)), Some((s1, b1))) => format!(
            "cpu: server {:.0}%, bench {:.0}%, load average {} | ",
            (s1 - s0) / secs * 100.0,
            (b1 - b0) / secs * 100.0,
            load_average().map_or("?".into(), |l| format!("{l:.1}"))
        ),
        _ => String::new(),
    };
    format!(
        "    server: {cpu}fsyncs {:.0}/s | engine {:.0} batches/s, {:.1} events/batch, {:.2} ms/batch | \
         delivery-store commits {commits} | attempts {:.0}/s ({failed:.0} not delivered) | \
         created→outcome p50 {} p99 {} mean {:.1} ms",
        fsyncs / secs,
        batches / secs,
        events / batches.max(1.0),
        batch_mean * 1000.0,
        attempts / secs,
        bound(q[0]),
        bound(q[1]),
        lat_mean * 1000.0,
    )
}
