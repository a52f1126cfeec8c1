//! `storeline bench engine`: runs the engine in-process over an embedded log (fsync on) and
//! prints events/s through all views (sustained, committed), the replay rate, `order.place`
//! latency at a fixed rate, and throughput and oversells with 64 clients on 10 hot SKUs, for
//! SQLite and PostgreSQL side by side.
//!
//! Why in-process: the figures are the engine's and the store's, without HTTP in front
//! (`bench ingest` measures that path). Traffic comes from the `storeline gen` generator,
//! converted and routed exactly as ingest does, and is built before any timing starts. The
//! phases are in [`views`] (views, replay) and [`commands`] (latency, hot SKUs), what they
//! share in [`phases`], and [`support`] has the in-process appender and the timing wrappers
//! that also report where each phase's time went.

mod commands;
pub(crate) mod phases;
pub(crate) mod support;
pub(crate) mod views;

use std::path::PathBuf;

use anyhow::{Result, bail};
use phases::{Backend, Breakdown, Ctx, Figures};
use support::median;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendArg {
    Sqlite,
    Postgres,
    Both,
}

#[derive(clap::Args, Debug)]
pub struct EngineArgs {
    /// State store(s) to measure.
    #[arg(long, value_enum, default_value = "both")]
    backend: BackendArg,
    /// PostgreSQL to use (a schema `bench_<pid>_…` is created per phase and dropped after).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pg_url: String,
    /// Generated events for the views and replay phases.
    #[arg(long, default_value_t = 500_000)]
    events: u64,
    /// Seconds for each command phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// `order.place` commands per second in the latency phase (open loop).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Concurrent clients in the hot-SKU phase.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Hot SKUs in the hot-SKU phase.
    #[arg(long, default_value_t = 10)]
    hot_skus: usize,
    /// Units stocked per hot SKU.
    #[arg(long, default_value_t = 500)]
    hot_stock: i64,
    /// Repeat everything this many times (backends alternate); the table shows medians.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Where logs and SQLite files go [default: a temporary directory].
    #[arg(long)]
    dir: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) traffic: TrafficArgs,
}

/// The generated traffic the engine benches run on.
#[derive(clap::Args, Debug)]
pub(crate) struct TrafficArgs {
    /// Generator: customers (as `storeline gen --customers`).
    #[arg(long, default_value_t = 5_000)]
    pub(crate) customers: u32,
    /// Generator: products (as `storeline gen --products`).
    #[arg(long, default_value_t = 500)]
    pub(crate) products: u32,
    /// Generator seed.
    #[arg(long, default_value_t = 42)]
    pub(crate) seed: u64,
    /// Generator: share of browsing visits under an anonymous id that log in to order (as
    /// `storeline gen --anonymous-share`).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) anonymous_share: f64,
}

const VIEWS_AIM: f64 = 200_000.0;
const REPLAY_AIM: f64 = 500_000.0;
const P99_AIM_MS: f64 = 5.0;

pub async fn run(args: EngineArgs) -> Result<()> {
    let backends: Vec<Backend> = match args.backend {
        BackendArg::Sqlite => vec![Backend::Sqlite],
        BackendArg::Postgres => vec![Backend::Postgres],
        BackendArg::Both => vec![Backend::Sqlite, Backend::Postgres],
    };
    let (_tmp, root) = match &args.dir {
        Some(d) => (None, d.clone()),
        None => {
            let t = tempfile::Builder::new()
                .prefix("storeline-bench-engine")
                .tempdir()?;
            let p = t.path().to_owned();
            (Some(t), p)
        }
    };
    std::fs::create_dir_all(&root)?;
    eprintln!(
        "bench engine: {} events, {} partitions, fsync on, {} s per command phase, {} cores, data in {}",
        args.events,
        phases::PARTITIONS,
        args.seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        root.display()
    );
    let start = "2026-01-01T00:00:00Z".parse()?;
    let prep = views::prepare(
        args.events,
        crate::traffic::GenConfig {
            seed: args.traffic.seed,
            customers: args.traffic.customers,
            products: args.traffic.products,
            start,
            currency: "EUR".into(),
            anonymous_share: args.traffic.anonymous_share,
        },
    )?;
    let mut results: Vec<(Backend, Vec<Figures>)> =
        backends.iter().map(|b| (*b, Vec::new())).collect();
    let mut failures = Vec::new();
    for run in 0..args.runs {
        for (backend, figures) in results.iter_mut() {
            let dir = root.join(format!("{}-{run}", backend.name().to_lowercase()));
            std::fs::create_dir_all(&dir)?;
            let ctx = Ctx {
                backend: *backend,
                pg_url: args.pg_url.clone(),
                dir: dir.clone(),
                run,
                seconds: args.seconds,
                rate: args.rate,
                clients: args.clients,
                hot_skus: args.hot_skus,
                hot_stock: args.hot_stock,
                seed: args.traffic.seed,
                schemas: Default::default(),
            };
            let mut f = Figures::default();
            let r = run_phases(&ctx, &prep, &mut f).await;
            drop_leftover_schemas(&ctx).await;
            let _ = std::fs::remove_dir_all(&dir);
            match r {
                Ok(()) => {
                    eprintln!(
                        "{} run {}: views {:.0}/s, replay {:.0}/s, place p99 {:.2} ms, hot {:.0} commands/s, oversold {}",
                        backend.name(),
                        run + 1,
                        f.views_rate,
                        f.replay_rate,
                        f.cmd_p99,
                        f.hot_rate,
                        f.hot_oversold
                    );
                    figures.push(f);
                }
                Err(e) => {
                    eprintln!("{} run {} FAILED: {e:#}", backend.name(), run + 1);
                    failures.push(format!("{} run {}: {e:#}", backend.name(), run + 1));
                }
            }
        }
    }
    print_table(
        &args,
        prep.bytes as f64 / prep.total.max(1) as f64,
        &results,
    );
    print_breakdowns(&results);
    let mut problems = failures;
    for (b, runs) in &results {
        for (i, f) in runs.iter().enumerate() {
            if !f.digest_equal {
                problems.push(format!(
                    "{} run {}: REPLAY DIGEST DIFFERS: live {} vs replayed {}",
                    b.name(),
                    i + 1,
                    f.digest_live,
                    f.digest_replay
                ));
            }
            if f.hot_oversold != 0 {
                problems.push(format!(
                    "{} run {}: OVERSOLD {} units",
                    b.name(),
                    i + 1,
                    f.hot_oversold
                ));
            }
            problems.extend(
                f.hot_problems
                    .iter()
                    .map(|p| format!("{} run {}: {p}", b.name(), i + 1)),
            );
        }
    }
    println!();
    for (b, runs) in &results {
        if let Some(f) = runs.last() {
            println!("{:<10} live digest {}", b.name(), f.digest_live);
            println!("{:<10} replayed    {}", "", f.digest_replay);
        }
    }
    if !problems.is_empty() {
        println!();
        for p in &problems {
            println!("!!! {p}");
        }
        bail!("{} problem(s), listed above", problems.len());
    }
    Ok(())
}

async fn run_phases(ctx: &Ctx, prep: &phases::Prepared, f: &mut Figures) -> Result<()> {
    views::views_and_replay(ctx, prep, f).await?;
    commands::command_latency(ctx, f).await?;
    commands::hot_skus(ctx, f).await?;
    Ok(())
}

/// Drops the PostgreSQL schemas a failed phase left behind.
async fn drop_leftover_schemas(ctx: &Ctx) {
    let left: Vec<String> = ctx
        .schemas
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|s| !s.1)
        .map(|s| s.0.clone())
        .collect();
    for schema in left {
        let cfg = storeline_state::PostgresConfig {
            url: ctx.pg_url.clone(),
            schema: schema.clone(),
        };
        match storeline_state::PostgresStore::connect(&cfg).await {
            Ok(pg) => {
                if let Err(e) = pg.drop_schema().await {
                    eprintln!("warning: could not drop schema {schema}: {e}");
                }
                storeline_state::StateStore::close(&pg).await;
            }
            Err(e) => eprintln!("warning: could not drop schema {schema}: {e}"),
        }
    }
}

/// One line of the table: label, aim, the figure, and whether a value misses the aim.
struct Line {
    label: String,
    aim: &'static str,
    value: fn(&Figures) -> f64,
    decimals: usize,
    missed: fn(f64) -> bool,
}

fn line(
    label: &str,
    aim: &'static str,
    decimals: usize,
    value: fn(&Figures) -> f64,
    missed: fn(f64) -> bool,
) -> Line {
    Line {
        label: label.to_owned(),
        aim,
        value,
        decimals,
        missed,
    }
}

fn never(_: f64) -> bool {
    false
}

fn print_table(args: &EngineArgs, bytes_each: f64, results: &[(Backend, Vec<Figures>)]) {
    let runs: Vec<usize> = results.iter().map(|(_, r)| r.len()).collect();
    println!(
        "\nstoreline bench engine: {} generated events ({} customers, {} products, {:.0} bytes each), \
         {} partitions, fsync on; commands in-process (no HTTP); {}",
        args.events,
        args.traffic.customers,
        args.traffic.products,
        bytes_each,
        phases::PARTITIONS,
        if runs.iter().all(|&r| r == 1) {
            "one run".to_owned()
        } else {
            format!("median of {runs:?} runs")
        }
    );
    let hot = format!(
        "{} clients, {} hot SKUs x {}",
        args.clients, args.hot_skus, args.hot_stock
    );
    let place = format!("order.place at {}/s", args.rate);
    let lines = vec![
        line(
            "views: events/s committed (sustained)",
            ">= 200000",
            0,
            |f| f.views_rate,
            |v| v < VIEWS_AIM,
        ),
        line(
            "views: events/s appended (ingest side)",
            "",
            0,
            |f| f.ingest_rate,
            never,
        ),
        line(
            "views: drain after the last append, s",
            "",
            2,
            |f| f.drain_secs,
            never,
        ),
        line(
            "views: peak backlog, events",
            "",
            0,
            |f| f.peak_backlog,
            never,
        ),
        line("views: rows in the store", "", 0, |f| f.rows as f64, never),
        line(
            "replay: events/s",
            ">= 500000",
            0,
            |f| f.replay_rate,
            |v| v < REPLAY_AIM,
        ),
        line(
            "replay: digest equals the live store's (1 = yes)",
            "1",
            0,
            |f| f64::from(u8::from(f.digest_equal)),
            |v| v < 1.0,
        ),
        line(
            "store: one missing row read every 10 ms, idle, p50 ms",
            "",
            3,
            |f| f.read_p50,
            never,
        ),
        line(
            "store: one missing row read every 10 ms, idle, p99 ms",
            "",
            3,
            |f| f.read_p99,
            never,
        ),
        line(
            "store: the same read during the order.place phase, p50 ms",
            "",
            3,
            |f| f.read_load_p50,
            never,
        ),
        line(&format!("{place}: p50 ms"), "", 2, |f| f.cmd_p50, never),
        line(
            &format!("{place}: p99 ms"),
            "< 5",
            2,
            |f| f.cmd_p99,
            |v| v >= P99_AIM_MS,
        ),
        line(&format!("{place}: max ms"), "", 2, |f| f.cmd_max, never),
        line(
            &format!("{place}: achieved /s"),
            "",
            0,
            |f| f.cmd_rate,
            never,
        ),
        line(
            &format!("{place}: errors"),
            "0",
            0,
            |f| f.cmd_errors as f64,
            |v| v > 0.0,
        ),
        line(
            &format!("{place}: until the view has it, p99 ms"),
            "",
            2,
            |f| f.visible_p99,
            never,
        ),
        line(
            &format!("{place}: bench's start lag (inside the above), p50 ms"),
            "",
            2,
            |f| f.timer_lag_p50,
            never,
        ),
        line(
            &format!("{place}: bench's start lag (inside the above), p99 ms"),
            "",
            2,
            |f| f.timer_lag_p99,
            never,
        ),
        line(&format!("{hot}: commands/s"), "", 0, |f| f.hot_rate, never),
        line(
            &format!("{hot}: of which carried out /s"),
            "",
            0,
            |f| f.hot_accepted_rate,
            never,
        ),
        line(
            &format!("{hot}: orders placed"),
            "",
            0,
            |f| f.hot_placed as f64,
            never,
        ),
        line(
            &format!("{hot}: rejected insufficient_stock"),
            "",
            0,
            |f| f.hot_insufficient as f64,
            never,
        ),
        line(
            &format!("{hot}: order.place p99 ms"),
            "",
            2,
            |f| f.hot_place_p99,
            never,
        ),
        line(
            &format!("{hot}: unpaid 1 s holds lapsed"),
            "",
            0,
            |f| f.hot_expired as f64,
            never,
        ),
        line(
            &format!("{hot}: oversold units"),
            "0",
            0,
            |f| f.hot_oversold as f64,
            |v| v > 0.0,
        ),
    ];
    let width = lines.iter().map(|l| l.label.len()).max().unwrap_or(40);
    print!("{:<width$} {:>10}", "figure", "aim");
    for (b, _) in results {
        print!(" {:>13}", b.name());
    }
    println!();
    let mut missed_any = false;
    for l in &lines {
        print!("{:<width$} {:>10}", l.label, l.aim);
        for (_, runs) in results {
            if runs.is_empty() {
                print!(" {:>13}", "failed");
                continue;
            }
            let v = median(runs.iter().map(l.value).collect());
            let missed = (l.missed)(v);
            missed_any |= missed;
            let cell = format!("{:.*}{}", l.decimals, v, if missed { " !" } else { "  " });
            print!(" {cell:>13}");
        }
        println!();
    }
    if missed_any {
        println!("(! = misses the aim)");
    }
}

fn print_breakdowns(results: &[(Backend, Vec<Figures>)]) {
    for (b, runs) in results {
        let Some(f) = runs.last() else { continue };
        println!(
            "\nwhere the time went, {} (last run). n x mean (per call) | busy = wall time with at least one call \
             in flight; near the wall time means the phase waited on it",
            b.name()
        );
        for (name, d) in [
            ("views", &f.views),
            ("replay", &f.replay),
            ("place", &f.cmd),
            ("hot", &f.hot),
        ] {
            print_breakdown(name, d);
        }
    }
}

fn op(label: &str, o: &support::OpSnapshot, item: &str) {
    support::print_op(9, label, o, item);
}

fn print_breakdown(name: &str, d: &Breakdown) {
    println!(
        "{name:<8} wall {:.2} s; CPU: this process {:.0}% of one core, machine {:.0}% busy, {:.0}% iowait",
        d.wall, d.cpu.process, d.cpu.machine, d.cpu.iowait
    );
    op("log appends", &d.log_append, "records");
    op("log reads", &d.log_read, "records");
    op("store loads", &d.store_load, "keys");
    op("store commits", &d.store_commit, "rows");
}
