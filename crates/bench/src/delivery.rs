//! `storeline bench delivery`: starts a real server (a child process, fsync on, its own data
//! directory) whose trigger file delivers every `bench.ping` event to a webhook connector that
//! points at a receiver in this process, and prints
//!
//! - end-to-end latency at fixed rates (open loop): ingest ack → delivery received, and
//!   scheduled send → received, p50/p90/p99/max, with what did not arrive within a grace period;
//! - the most deliveries/s sustained: many events sent as fast as ingest acks them, delivery
//!   rate measured at the receiver between 10% and 90% of the arrivals;
//! - per scenario, where the time went (sampled deliveries' attempt records) and the server's own
//!   counters (engine batches, delivery-store commits, fsyncs), to find the bottleneck.
//!
//! It is a benchmark that prints figures, not a timed test: the aims are checked and reported,
//! never asserted.

pub(crate) mod counters;
mod figures;
mod load;
mod receiver;
mod timeline;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use storeline_server::auth::Scope;

use counters::{Commits, Counters, server_line};
use figures::{Dist, Scrape, bound, hist_delta};
use load::Target;
use receiver::{Track, Tracks};

/// The aims this benchmark reports against.
const AIM_P99_MS: f64 = 20.0;
const AIM_P99_RATE: f64 = 10_000.0;
const AIM_DELIVERIES_PER_S: f64 = 20_000.0;

#[derive(clap::Args)]
pub struct DeliveryArgs {
    /// Seconds per fixed-rate scenario.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Fixed rates (events/s) to measure latency at, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    rates: Vec<f64>,
    /// Events of the maximum-throughput scenario (0 skips it).
    #[arg(long, default_value_t = 200_000)]
    max_events: usize,
    /// Events per request in the maximum scenario.
    #[arg(long, default_value_t = 1000)]
    max_batch: usize,
    /// Connections of the maximum scenario.
    #[arg(long, default_value_t = 4)]
    max_connections: usize,
    /// Connections of the fixed-rate scenarios.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Events per request at a fixed rate [default: rate / 1000, so ~1000 requests/s].
    #[arg(long)]
    batch: Option<usize>,
    /// Attempts the webhook connector keeps in flight.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Seconds a fixed-rate scenario waits for the last deliveries after sending (and the
    /// maximum scenario waits without any arrival) before counting the rest as missing.
    #[arg(long, default_value_t = 5)]
    grace: u64,
    /// Turn fsync off in the started server (to see its cost; not a durable figure).
    #[arg(long)]
    no_fsync: bool,
    /// Keep the server's data directory here instead of a temporary one.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Print each scenario's timeline (every second): acked, applied by the engine, engine lag,
    /// worker pending, attempts, arrivals, delivery-store commits.
    #[arg(long)]
    timeline: bool,
    /// RUST_LOG of the started server (its log goes to this stderr).
    #[arg(long, default_value = "warn")]
    server_log: String,
}

/// The trigger file: every `bench.ping` to the webhook connector `sink` at `url`.
fn trigger_file(url: &str, concurrency: usize) -> String {
    format!(
        r#"[[connector]]
name = "sink"
type = "webhook"
url = "{url}"
allow_private_network = true
concurrency = {concurrency}
timeout = "5s"
retry_schedule = ["0s", "100ms", "500ms", "1s", "2s"]
circuit_failures = 0

[[trigger]]
name = "bench"
on = "bench.ping"
then = [ {{ deliver = "sink" }} ]
"#
    )
}

/// Waits until `want` events of `track` arrived, the `deadline` passed, or nothing arrived for
/// `stall`.
async fn wait_arrivals(track: &Track, want: usize, deadline: Option<Instant>, stall: Duration) {
    let mut last = (track.received.load(Ordering::Acquire), Instant::now());
    loop {
        let got = track.received.load(Ordering::Acquire);
        if got as usize >= want || deadline.is_some_and(|d| Instant::now() >= d) {
            return;
        }
        if got != last.0 {
            last = (got, Instant::now());
        } else if last.1.elapsed() >= stall {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A fixed-rate scenario's outcome, for the summary.
struct RateResult {
    rate: f64,
    /// p99 of ack → received over every event sent (one that never arrived counts as
    /// infinitely late), in ms.
    p99_all: f64,
    missing: usize,
}

/// The `p` quantile in ms over `total` events of which only those in `d` arrived (the others
/// count as infinitely late).
fn quantile_of_all(d: &Dist, p: f64, total: usize) -> f64 {
    if total == 0 {
        return f64::NAN;
    }
    let i = ((total as f64 - 1.0) * p).round() as usize;
    d.nth_ms(i).unwrap_or(f64::INFINITY)
}

/// What every scenario works with.
struct Bench {
    args: DeliveryArgs,
    tracks: Arc<Tracks>,
    server: crate::ingest::Server,
    commits: Commits,
}

impl Bench {
    fn target<'a>(&'a self, track: &'a Arc<Track>, tag: &'a str) -> Target<'a> {
        Target {
            addr: &self.server.addr,
            key: &self.server.key,
            tracks: &self.tracks,
            track,
            tag,
        }
    }

    fn sampler(&self, track: &Arc<Track>) -> Option<timeline::Sampler> {
        self.args.timeline.then(|| {
            timeline::Sampler::start(
                self.server.addr.clone(),
                self.server.child.id().to_string(),
                Arc::clone(track),
                self.commits.store(),
                Duration::from_secs(1),
            )
        })
    }

    /// Deliveries must arrive before anything is measured: this also warms the connector's
    /// connection pool and the page cache.
    async fn warm_up(&self) -> Result<()> {
        let track = self.tracks.add("warm", 2000, u64::MAX);
        let sent = load::open_loop(&self.target(&track, "warm"), 1000.0, 10, 4, 2.0).await?;
        let wait = Duration::from_secs(15);
        wait_arrivals(&track, sent, Some(Instant::now() + wait), wait).await;
        let got = track.received.load(Ordering::Acquire);
        if got == 0 {
            let status = reqwest::Client::new()
                .get(format!("http://{}/v1/connectors", self.server.addr))
                .bearer_auth(&self.server.key)
                .send()
                .await?
                .text()
                .await?;
            bail!(
                "no delivery of {sent} warm-up events arrived within 15 s (deliveries matching no \
                 event: {}, unreadable: {}); the server's connectors: {status}",
                self.tracks.unmatched.load(Ordering::Relaxed),
                self.tracks.unreadable.load(Ordering::Relaxed)
            );
        }
        eprintln!("warm-up: {got} of {sent} deliveries arrived");
        Ok(())
    }

    /// Open loop at `rate` events/s: one row of latency figures and its detail lines.
    async fn at_rate(&self, i: usize, rate: f64) -> Result<RateResult> {
        let args = &self.args;
        let batch = args
            .batch
            .unwrap_or_else(|| (rate / 1000.0).ceil() as usize)
            .max(1);
        let conns = args.connections.max(1);
        let tag = format!("r{i}");
        let len = (rate * args.seconds as f64).ceil() as usize + conns * batch;
        let track = self.tracks.add(&tag, len, (len as u64 / 500).max(1));
        let sampler = self.sampler(&track);
        let before = Counters::take(&self.server, &self.commits).await;
        let sent = load::open_loop(
            &self.target(&track, &tag),
            rate,
            batch,
            conns,
            args.seconds as f64,
        )
        .await?;
        let grace = Duration::from_secs(args.grace);
        wait_arrivals(&track, sent, Some(Instant::now() + grace), grace).await;
        let after = Counters::take(&self.server, &self.commits).await;
        let lat = figures::latency(&track, sent);
        let missing = sent - lat.received;
        println!(
            "{:<44} {:>8} {:>8} {:>7} | {} | {}",
            format!("{rate:.0} events/s, {batch}/request, {conns} conns"),
            sent,
            lat.received,
            missing,
            lat.e2e.row(),
            lat.from_sched.row()
        );
        println!(
            "    ingest ack (scheduled → acked) p50 {:.2} p99 {:.2} max {:.2} ms | {} duplicate(s), \
             {} arrived before this process had read the ack",
            lat.ack.ms(0.5),
            lat.ack.ms(0.99),
            lat.ack.ms(1.0),
            lat.duplicates,
            lat.before_ack
        );
        let bd = figures::breakdown(
            &self.server.addr,
            &self.server.key,
            &self.tracks,
            &track,
            200,
        )
        .await;
        println!(
            "    {} sampled deliveries (ms resolution): ack → attempt start p50 {:.0} p90 {:.0} \
             p99 {:.0} max {:.0} | attempt start → received p50 {:.0} p99 {:.0} | attempt p99 \
             {:.0} ms | {} retried",
            bd.samples,
            bd.to_attempt.ms(0.5),
            bd.to_attempt.ms(0.9),
            bd.to_attempt.ms(0.99),
            bd.to_attempt.ms(1.0),
            bd.attempt_to_recv.ms(0.5),
            bd.attempt_to_recv.ms(0.99),
            bd.attempt_ms.ms(0.99),
            bd.retried
        );
        println!("{}", server_line(&before, &after));
        if missing > 0 {
            // Let the backlog go before the next scenario, so it does not load that one.
            wait_arrivals(&track, sent, None, Duration::from_secs(30)).await;
            let late = track.received.load(Ordering::Acquire) as usize - lat.received;
            println!("    {late} more arrived after the grace period");
        }
        if let Some(s) = sampler {
            s.finish().await;
        }
        Ok(RateResult {
            rate,
            p99_all: quantile_of_all(&lat.e2e, 0.99, sent),
            missing,
        })
    }

    /// Closed loop with large batches: the steady deliveries/s. Returns it and how many
    /// deliveries never arrived.
    async fn maximum(&self) -> Result<(f64, usize)> {
        let args = &self.args;
        let track = self.tracks.add(
            "max",
            args.max_events,
            (args.max_events as u64 / 500).max(1),
        );
        let sampler = self.sampler(&track);
        let before = Counters::take(&self.server, &self.commits).await;
        let sent = load::as_fast_as_acked(
            &self.target(&track, "max"),
            args.max_batch.max(1),
            args.max_connections.max(1),
        )
        .await?;
        wait_arrivals(&track, sent, None, Duration::from_secs(args.grace)).await;
        let after = Counters::take(&self.server, &self.commits).await;
        let th = figures::throughput(&track, sent);
        println!();
        println!(
            "{:<44} {:>8} {:>8} {:>7} | {:>12} {:>14} {:>9} {:>9} {:>9}",
            "scenario",
            "sent",
            "received",
            "missing",
            "ingest ev/s",
            "deliveries/s",
            "send s",
            "drain s",
            "total s"
        );
        println!(
            "{:<44} {:>8} {:>8} {:>7} | {:>12.0} {:>14.0} {:>9.2} {:>9.2} {:>9.2}",
            format!(
                "max: batches of {}, {} conns",
                args.max_batch, args.max_connections
            ),
            sent,
            th.received,
            sent - th.received,
            th.ingest_per_s,
            th.steady_per_s,
            th.send_span.as_secs_f64(),
            th.drain.as_secs_f64(),
            th.total.as_secs_f64()
        );
        println!(
            "    deliveries/s: at the receiver, between 10% and 90% of the arrivals; drain: last \
             ack → last arrival"
        );
        println!("{}", server_line(&before, &after));
        if let Some(s) = sampler {
            s.finish().await;
        }
        Ok((th.steady_per_s, sent - th.received))
    }

    /// The server's `storeline_delivery_*` samples (buckets summarised) for the whole run.
    async fn print_metrics(&self) {
        let end = Scrape::take(&self.server.addr).await;
        println!();
        println!("server /metrics, storeline_delivery_* (histogram buckets summarised):");
        for line in end.text.lines() {
            if line.starts_with("storeline_delivery_") && !line.contains("_bucket{") {
                println!("  {line}");
            }
        }
        let (count, mean, q) = hist_delta(
            &Scrape::default(),
            &end,
            "storeline_delivery_latency_seconds",
            &[0.5, 0.9, 0.99],
        );
        println!(
            "  storeline_delivery_latency_seconds (created → outcome recorded, whole run): \
             {count:.0} deliveries, mean {:.1} ms, p50 {} p90 {} p99 {}",
            mean * 1000.0,
            bound(q[0]),
            bound(q[1]),
            bound(q[2])
        );
        let unmatched = self.tracks.unmatched.load(Ordering::Relaxed);
        let unreadable = self.tracks.unreadable.load(Ordering::Relaxed);
        if unmatched + unreadable > 0 {
            println!(
                "  receiver: {unmatched} deliveries matched no event, {unreadable} unreadable"
            );
        }
    }
}

fn print_aims(args: &DeliveryArgs, rates: &[RateResult], max: Option<(f64, usize)>) {
    let fsync = !args.no_fsync;
    let verdict = |ok: bool| if ok && fsync { "met" } else { "not met" };
    println!();
    println!(
        "aims (fsync {}):",
        if fsync {
            "on"
        } else {
            "OFF, which is not the aims' condition"
        }
    );
    let aim = format!("p99 ack → received < {AIM_P99_MS} ms at {AIM_P99_RATE:.0} events/s");
    match rates.iter().find(|r| r.rate == AIM_P99_RATE) {
        Some(r) => {
            let missing = if r.missing > 0 {
                format!("{} missing counted as infinitely late, ", r.missing)
            } else {
                String::new()
            };
            let p99 = if r.p99_all.is_infinite() {
                "∞ (over 1% never arrived)".to_owned()
            } else {
                format!("{:.2} ms", r.p99_all)
            };
            println!(
                "  {aim}: {p99} ({missing}over every event sent) — {}",
                verdict(r.p99_all < AIM_P99_MS)
            );
        }
        None => println!("  {aim}: not measured (add {AIM_P99_RATE:.0} to --rates)"),
    }
    let aim = format!("≥ {AIM_DELIVERIES_PER_S:.0} deliveries/s to a fast receiver");
    match max {
        Some((r, missing)) => println!(
            "  {aim}: {r:.0}/s{} — {}",
            if missing > 0 {
                format!(" ({missing} missing)")
            } else {
                String::new()
            },
            verdict(r >= AIM_DELIVERIES_PER_S && missing == 0)
        ),
        None => println!("  {aim}: not measured (--max-events 0)"),
    }
}

pub async fn run(args: DeliveryArgs) -> Result<()> {
    if args.rates.iter().any(|r| *r <= 0.0) {
        bail!("--rates: every rate must be > 0 events/s");
    }
    let tracks = Arc::new(Tracks::new());
    let recv_addr = receiver::start(Arc::clone(&tracks)).await?;

    let (_tmp, data) = match &args.data {
        Some(p) => {
            std::fs::create_dir_all(p).with_context(|| format!("cannot create {}", p.display()))?;
            (None, p.clone())
        }
        None => {
            let d = tempfile::Builder::new()
                .prefix("storeline-bench-delivery")
                .tempdir_in(".")?;
            let p = d.path().to_owned();
            (Some(d), p)
        }
    };
    let data = std::path::absolute(&data)?;
    let triggers = data.join("bench-triggers.toml");
    std::fs::write(
        &triggers,
        trigger_file(&format!("http://{recv_addr}/hook"), args.concurrency),
    )
    .with_context(|| format!("cannot write {}", triggers.display()))?;
    let triggers_env = triggers.display().to_string();
    let server = crate::ingest::spawn_server(
        Some(&data),
        !args.no_fsync,
        &[Scope::Ingest, Scope::Read],
        &[
            ("RUST_LOG", args.server_log.as_str()),
            ("STORELINE_TRIGGERS__FILE", triggers_env.as_str()),
        ],
    )?;
    eprintln!(
        "server at {} (fsync {}), receiver at {recv_addr}, connector concurrency {}, {} cores",
        server.addr,
        if args.no_fsync { "OFF" } else { "on" },
        args.concurrency,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let bench = Bench {
        commits: Commits::open(&data).await,
        args,
        tracks,
        server,
    };
    bench.warm_up().await?;

    println!(
        "{:<44} {:>8} {:>8} {:>7} | {:^33} | {:^33}",
        "", "", "", "", "ack → received (ms)", "scheduled → received (ms)"
    );
    println!(
        "{:<44} {:>8} {:>8} {:>7} | {:>7} {:>7} {:>7} {:>8} | {:>7} {:>7} {:>7} {:>8}",
        "scenario",
        "sent",
        "received",
        "missing",
        "p50",
        "p90",
        "p99",
        "max",
        "p50",
        "p90",
        "p99",
        "max"
    );
    let mut rates = Vec::new();
    for (i, &rate) in bench.args.rates.iter().enumerate() {
        rates.push(bench.at_rate(i, rate).await?);
    }
    let max = if bench.args.max_events > 0 {
        Some(bench.maximum().await?)
    } else {
        None
    };
    bench.print_metrics().await;
    print_aims(&bench.args, &rates, max);
    if let Some(p) = &bench.args.data {
        eprintln!("data kept in {}", p.display());
    }
    Ok(())
}
