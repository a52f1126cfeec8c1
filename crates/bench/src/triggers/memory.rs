//! Figure 3 of `storeline bench triggers`: resident memory with 1M pending timers.
//!
//! Measured in a child process (this binary, `bench triggers --memory-child`), so nothing the
//! other phases allocated (the prepared traffic, freed memory the allocator keeps) is counted.
//! The child starts the engine over a fresh log and SQLite store, installs a one-trigger file
//! whose runs each wait 30 days, notes its memory, appends one event per run (spread over many
//! customers and keys), waits until the engine has committed them all, and notes its memory
//! again. A second child then starts the engine over the same data, as after a restart, to show
//! what the pending timers cost when the writers' row caches are cold.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::json;
use storeline_engine::triggers::rows;

use super::setup::{self, Mem};
use super::support::{spinner, wait_caught_up};

/// Customers the runs are spread over (each gets `timers / CUSTOMERS` runs, one per key).
const CUSTOMERS: u64 = 100_000;
/// Events per append round (spread over the partitions).
const CHUNK: u64 = 8192;

/// What a child reports (one JSON line on stdout).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// Engine started, trigger file installed, no run yet.
    pub before: Mem,
    /// Every run and timer committed.
    pub after: Mem,
    /// Timer rows in the store.
    pub timers: u64,
    /// The trigger's `active` counter (runs in flight).
    pub active: i64,
    /// Seconds from the first append until everything was committed (fresh run only).
    pub apply_secs: f64,
    pub events: u64,
}

/// Runs a child and returns its report; `reopen` starts over the data a fresh child left.
pub async fn child_report(dir: &Path, timers: u64, reopen: bool) -> Result<Report> {
    let exe = std::env::current_exe().context("finding this binary to run the memory phase")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["bench", "triggers", "--memory-child"])
        .arg("--timers")
        .arg(timers.to_string())
        .arg("--dir")
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        // The engine logs each install per partition at info; the child's stderr is progress.
        .env("RUST_LOG", "warn");
    if reopen {
        cmd.arg("--memory-reopen");
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await?
        .context("running the memory phase's child process")?;
    if !out.status.success() {
        bail!("the memory phase's child process failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("the memory phase's child printed no report")?;
    Ok(serde_json::from_str(line)?)
}

/// The child's side: see the module docs. Prints its [`Report`] on stdout.
pub async fn child(dir: &Path, timers: u64, reopen: bool) -> Result<()> {
    let ctx = setup::ctx(dir.to_owned(), 0);
    let rig = ctx.start("memory").await?;
    let mut report = Report {
        events: timers,
        ..Report::default()
    };
    if reopen {
        if !wait_caught_up(&*rig.log, &rig.engine, Duration::from_secs(600)).await {
            bail!("the restarted engine did not catch up within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        report.before = setup::mem();
        report.after = report.before;
    } else {
        let set = setup::timer_set("bench.hold", "30d")?;
        setup::install(&rig.log, &rig.engine, &set).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        report.before = setup::mem();
        let bar = spinner("memory: appending");
        let t0 = Instant::now();
        let mut sent = 0u64;
        while sent < timers {
            let n = CHUNK.min(timers - sent);
            let events = (sent..sent + n).map(|i| {
                (
                    "bench.hold".to_owned(),
                    format!("cus-m{:06}", i % CUSTOMERS),
                    json!({ "k": format!("k{}", i / CUSTOMERS) }),
                )
            });
            let (_, parts) = setup::records(events, "bhold_", sent);
            setup::append_all(&*rig.log, parts).await?;
            sent += n;
            if sent.is_multiple_of(CHUNK * 16) || sent == timers {
                let applied: u64 = rig.engine.applied().iter().sum();
                bar.set_message(format!(
                    "memory: {sent} of {timers} appended, {applied} applied"
                ));
            }
        }
        let mut last = Instant::now();
        loop {
            if wait_caught_up(&*rig.log, &rig.engine, Duration::from_millis(200)).await {
                break;
            }
            let applied: u64 = rig.engine.applied().iter().sum();
            bar.set_message(format!("memory: {sent} appended, {applied} applied"));
            if last.elapsed() > Duration::from_secs(30) {
                eprintln!(
                    "memory: {sent} appended, {applied} applied, {:.0} s",
                    t0.elapsed().as_secs_f64()
                );
                last = Instant::now();
            }
            if t0.elapsed() > Duration::from_secs(1200) {
                bail!("the engine did not apply {timers} events within 20 minutes");
            }
        }
        report.apply_secs = t0.elapsed().as_secs_f64();
        bar.finish_and_clear();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        report.after = setup::mem();
    }
    // Counted after the memory figures: the scan's pages are not the engine's.
    report.timers = setup::count_rows(&*rig.store, rows::ns::TIMER).await?;
    report.active = setup::counter(&*rig.store, "active").await?;
    rig.stop().await;
    ctx.release(&rig.store.inner, "memory").await;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
