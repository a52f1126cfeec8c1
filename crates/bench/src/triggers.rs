//! `storeline bench triggers`: the trigger engine's three figures, in-process over an embedded
//! log (fsync on, 8 partitions) and a SQLite store, as `bench engine` runs the views:
//!
//! 1. events/s through every view and the starter trigger set, committed, next to the same
//!    traffic with no trigger file (what triggers cost) — [`throughput`];
//! 2. timer lateness (commit time minus due time) at 10k fires/s — [`lateness`];
//! 3. resident memory with 1M pending timers, in a child process — [`memory`].
//!
//! Each phase starts on a fresh log and store; `--runs` repeats them and the table shows
//! medians. [`setup`] has the trigger files and the helpers the phases share.

// `bench engine`'s plumbing: timing wrappers, the in-process appender, the log/store openers
// and the traffic preparation.
use crate::engine::{phases, support, views};

mod lateness;
mod memory;
mod setup;
mod throughput;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use support::{OpSnapshot, median};

#[derive(clap::Args, Debug)]
pub struct TriggersArgs {
    /// Generated events for the events/s figure.
    #[arg(long, default_value_t = 500_000)]
    events: u64,
    /// Repeat every phase this many times; the table shows medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds during which timers fall due at --fire-rate while events keep arriving.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Timers falling due per second in the lateness phase (also the events in per second).
    #[arg(long, default_value_t = 10_000)]
    fire_rate: u64,
    /// How long after its event each timer of the lateness phase is due.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    delay: Duration,
    /// Pending timers in the memory phase.
    #[arg(long, default_value_t = 1_000_000)]
    timers: u64,
    /// Trigger file for the events/s figure [default: config/triggers.toml].
    #[arg(long)]
    triggers: Option<PathBuf>,
    /// Leave out the events/s figure.
    #[arg(long)]
    skip_throughput: bool,
    /// Leave out the lateness figure.
    #[arg(long)]
    skip_lateness: bool,
    /// Leave out the memory figure.
    #[arg(long)]
    skip_memory: bool,
    /// Measure memory in the first run only (it is the longest phase).
    #[arg(long)]
    memory_once: bool,
    /// Where logs and SQLite files go [default: a temporary directory].
    #[arg(long)]
    dir: Option<PathBuf>,
    #[command(flatten)]
    traffic: crate::engine::TrafficArgs,
    /// Internal: run the memory phase in this process (the parent reads its report).
    #[arg(long, hide = true)]
    memory_child: bool,
    /// Internal: the memory child starts over the data an earlier child left.
    #[arg(long, hide = true)]
    memory_reopen: bool,
}

const EVENTS_AIM: f64 = 100_000.0;
const LATENESS_P99_AIM_MS: f64 = 100.0;
const RSS_AIM_MB: f64 = 300.0;

/// Everything one run measured (a phase left out or failed is `None`).
#[derive(Default)]
struct Run {
    with: Option<throughput::Pass>,
    without: Option<throughput::Pass>,
    late: Option<lateness::Lateness>,
    mem: Option<(memory::Report, memory::Report)>,
}

pub async fn run(args: TriggersArgs) -> Result<()> {
    if args.memory_child {
        let Some(dir) = &args.dir else {
            bail!("--memory-child needs --dir");
        };
        return memory::child(dir, args.timers, args.memory_reopen).await;
    }
    let started = Instant::now();
    let (_tmp, root) = match &args.dir {
        Some(d) => (None, d.clone()),
        None => {
            let t = tempfile::Builder::new()
                .prefix("storeline-bench-triggers")
                .tempdir()?;
            let p = t.path().to_owned();
            (Some(t), p)
        }
    };
    std::fs::create_dir_all(&root)?;
    let paths = setup::starter_paths(args.triggers.as_deref());
    let starter = setup::starter(&paths)?;
    eprintln!(
        "bench triggers: {} partitions, fsync on, SQLite, {} cores, data in {}\nstarter set: {}",
        phases::PARTITIONS,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        root.display(),
        starter.origin
    );
    let prep = if args.skip_throughput {
        None
    } else {
        Some(views::prepare(
            args.events,
            crate::traffic::GenConfig {
                seed: args.traffic.seed,
                customers: args.traffic.customers,
                products: args.traffic.products,
                start: "2026-01-01T00:00:00Z".parse()?,
                currency: "EUR".into(),
                anonymous_share: args.traffic.anonymous_share,
            },
        )?)
    };
    let mut runs: Vec<Run> = Vec::new();
    let mut failures = Vec::new();
    let mut phase_secs: Vec<(String, f64)> = Vec::new();
    for run in 0..args.runs {
        let mut r = Run::default();
        if let Some(prep) = &prep {
            let t = Instant::now();
            let dir = root.join(format!("events-{run}"));
            std::fs::create_dir_all(&dir)?;
            let ctx = setup::ctx(dir.clone(), run);
            // Alternate the order so a drift of the machine does not favour one side.
            let order = if run % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for with in order {
                let set = with.then_some(&starter.set);
                match throughput::pass(&ctx, prep, set).await {
                    Ok(p) => {
                        eprintln!(
                            "run {}: {:.0} events/s {} triggers ({} caused events)",
                            run + 1,
                            p.rate,
                            if with { "with" } else { "without" },
                            p.caused
                        );
                        if with {
                            r.with = Some(p);
                        } else {
                            r.without = Some(p);
                        }
                    }
                    Err(e) => {
                        failures.push(format!("run {} events/s (with={with}): {e:#}", run + 1))
                    }
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
            phase_secs.push((
                format!("run {} events/s, both passes", run + 1),
                t.elapsed().as_secs_f64(),
            ));
        }
        if !args.skip_lateness {
            let t = Instant::now();
            let dir = root.join(format!("lateness-{run}"));
            std::fs::create_dir_all(&dir)?;
            let ctx = setup::ctx(dir.clone(), run);
            let params = lateness::Params {
                rate: args.fire_rate,
                seconds: args.seconds,
                delay: args.delay,
            };
            match lateness::measure(&ctx, &params).await {
                Ok(l) => {
                    eprintln!(
                        "run {}: timer lateness p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} of {} fired)",
                        run + 1,
                        l.p50,
                        l.p99,
                        l.max,
                        l.fired,
                        l.sent
                    );
                    r.late = Some(l);
                }
                Err(e) => failures.push(format!("run {} lateness: {e:#}", run + 1)),
            }
            let _ = std::fs::remove_dir_all(&dir);
            phase_secs.push((
                format!("run {} lateness", run + 1),
                t.elapsed().as_secs_f64(),
            ));
        }
        if !args.skip_memory && (run == 0 || !args.memory_once) {
            let t = Instant::now();
            let dir = root.join(format!("memory-{run}"));
            std::fs::create_dir_all(&dir)?;
            let fresh = memory::child_report(&dir, args.timers, false).await;
            let reopened = match &fresh {
                Ok(_) => memory::child_report(&dir, args.timers, true).await,
                Err(_) => Ok(memory::Report::default()),
            };
            match (fresh, reopened) {
                (Ok(f), Ok(o)) => {
                    eprintln!(
                        "run {}: RSS {:.0} MB before, {:.0} MB with {} pending timers ({:.0} MB after a restart)",
                        run + 1,
                        mb(f.before.rss),
                        mb(f.after.rss),
                        f.timers,
                        mb(o.after.rss)
                    );
                    r.mem = Some((f, o));
                }
                (Err(e), _) | (_, Err(e)) => {
                    failures.push(format!("run {} memory: {e:#}", run + 1))
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
            phase_secs.push((
                format!("run {} memory (two child processes)", run + 1),
                t.elapsed().as_secs_f64(),
            ));
        }
        runs.push(r);
    }
    print_table(&args, &starter, &runs);
    print_details(&runs, &phase_secs, started.elapsed().as_secs_f64());
    if starter.inline {
        println!();
        match setup::load_starter(&paths) {
            Ok((set, path)) => println!(
                "note: {} compiles now ({} triggers); run again to measure it instead of the stand-in",
                path.display(),
                set.triggers.len()
            ),
            Err(why) => println!("note: the starter set still cannot be used: {why}"),
        }
    }
    if !failures.is_empty() {
        println!();
        for f in &failures {
            println!("!!! {f}");
        }
        bail!("{} phase(s) failed, listed above", failures.len());
    }
    Ok(())
}

fn mb(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Reads one figure of a run (`None`: not measured).
type Getter = Box<dyn Fn(&Run) -> Option<f64>>;

/// One line of the table: the label, the aim and how a value is checked against it.
struct Line {
    label: String,
    aim: String,
    decimals: usize,
    value: Getter,
    /// `Some(pass)` for lines with an aim.
    check: Option<fn(f64) -> bool>,
}

fn line(label: &str, decimals: usize, value: impl Fn(&Run) -> Option<f64> + 'static) -> Line {
    Line {
        label: label.to_owned(),
        aim: String::new(),
        decimals,
        value: Box::new(value),
        check: None,
    }
}

fn aimed(
    label: &str,
    aim: &str,
    decimals: usize,
    check: fn(f64) -> bool,
    value: impl Fn(&Run) -> Option<f64> + 'static,
) -> Line {
    Line {
        aim: aim.to_owned(),
        check: Some(check),
        ..line(label, decimals, value)
    }
}

fn print_table(args: &TriggersArgs, starter: &setup::Starter, runs: &[Run]) {
    println!(
        "\nstoreline bench triggers: 8 partitions, fsync on, SQLite, engine in-process (no HTTP); \
         median of {} run(s)",
        runs.len()
    );
    println!("starter set: {}", starter.origin);
    let rate = args.fire_rate;
    let ev = args.events;
    let timers = args.timers;
    let lines = vec![
        aimed(
            &format!("events/s, all views + starter triggers, committed ({ev} gen events)"),
            ">= 100000",
            0,
            |v| v >= EVENTS_AIM,
            |r| r.with.as_ref().map(|p| p.rate),
        ),
        line(
            "events/s, all views, no trigger file (same traffic)",
            0,
            |r| r.without.as_ref().map(|p| p.rate),
        ),
        line("  with triggers / without, %", 1, |r| {
            Some(r.with.as_ref()?.rate / r.without.as_ref()?.rate * 100.0)
        }),
        line("  with triggers: events/s appended (ingest side)", 0, |r| {
            r.with.as_ref().map(|p| p.ingest_rate)
        }),
        line(
            "  events the engine appended itself, with triggers",
            0,
            |r| r.with.as_ref().map(|p| p.caused as f64),
        ),
        line("  events the engine appended itself, without", 0, |r| {
            r.without.as_ref().map(|p| p.caused as f64)
        }),
        line("  runs started by the starter set", 0, |r| {
            counter(r.with.as_ref()?, "started")
        }),
        line("  timer rows pending at the end", 0, |r| {
            r.with.as_ref().map(|p| p.timers as f64)
        }),
        aimed(
            &format!("timer lateness p99, ms ({rate} fires/s)"),
            "< 100",
            1,
            |v| v < LATENESS_P99_AIM_MS,
            |r| r.late.as_ref().map(|l| l.p99),
        ),
        line("timer lateness p50, ms", 1, |r| {
            r.late.as_ref().map(|l| l.p50)
        }),
        line("timer lateness max, ms", 1, |r| {
            r.late.as_ref().map(|l| l.max)
        }),
        line("  due while events kept arriving: p50, ms", 1, |r| {
            r.late.as_ref().map(|l| l.steady_p50)
        }),
        line("  due while events kept arriving: p99, ms", 1, |r| {
            r.late.as_ref().map(|l| l.steady_p99)
        }),
        line("  due after the input stopped (ticks): p50, ms", 1, |r| {
            r.late.as_ref().map(|l| l.idle_p50)
        }),
        line("  due after the input stopped (ticks): p99, ms", 1, |r| {
            r.late.as_ref().map(|l| l.idle_p99)
        }),
        line("  timers due after the input stopped", 0, |r| {
            r.late.as_ref().map(|l| l.idle_n as f64)
        }),
        line("  timer rows left unfired at the end", 0, |r| {
            r.late.as_ref().map(|l| l.left as f64)
        }),
        line("  timers fired per second of due time (steady)", 0, |r| {
            r.late.as_ref().map(|l| l.fire_rate)
        }),
        line("  timers fired / events sent, %", 2, |r| {
            r.late
                .as_ref()
                .map(|l| l.fired as f64 * 100.0 / l.sent.max(1) as f64)
        }),
        line("  bench's append lag behind schedule, max ms", 1, |r| {
            r.late.as_ref().map(|l| l.producer_behind_ms)
        }),
        aimed(
            &format!("RSS with {timers} pending timers, MB (VmRSS)"),
            "< 300",
            0,
            |v| v < RSS_AIM_MB,
            |r| r.mem.as_ref().map(|m| mb(m.0.after.rss)),
        ),
        line("  RSS before (engine + trigger file, no run), MB", 0, |r| {
            r.mem.as_ref().map(|m| mb(m.0.before.rss))
        }),
        line("  of the RSS with timers: anonymous (heap), MB", 0, |r| {
            r.mem.as_ref().map(|m| mb(m.0.after.anon))
        }),
        line("  peak RSS while applying (VmHWM), MB", 0, |r| {
            r.mem.as_ref().map(|m| mb(m.0.after.peak))
        }),
        line("  RSS after a restart over the same data, MB", 0, |r| {
            r.mem.as_ref().map(|m| mb(m.1.after.rss))
        }),
        line("  pending timer rows in the store", 0, |r| {
            r.mem.as_ref().map(|m| m.0.timers as f64)
        }),
        line("  active runs (the trigger's counter)", 0, |r| {
            r.mem.as_ref().map(|m| m.0.active as f64)
        }),
        line("  runs applied per second while filling", 0, |r| {
            r.mem
                .as_ref()
                .map(|m| m.0.events as f64 / m.0.apply_secs.max(1e-9))
        }),
    ];
    let width = lines.iter().map(|l| l.label.len()).max().unwrap_or(40);
    println!(
        "{:<width$} {:>10} {:>12}  result",
        "figure", "aim", "median"
    );
    for l in &lines {
        let values: Vec<f64> = runs.iter().filter_map(|r| (l.value)(r)).collect();
        if values.is_empty() {
            if l.check.is_some() {
                println!(
                    "{:<width$} {:>10} {:>12}  not measured",
                    l.label, l.aim, "-"
                );
            }
            continue;
        }
        let v = median(values);
        let verdict = match l.check {
            Some(c) if c(v) => "met",
            Some(_) => "NOT MET",
            None => "",
        };
        println!(
            "{:<width$} {:>10} {:>12.*}  {verdict}",
            l.label, l.aim, l.decimals, v
        );
    }
    println!(
        "\nlateness = wall clock when the store commit that fired a timer returned, minus the \
         timer's due time (the event's received_at + {}), over every timer; the same quantity \
         the engine records as storeline_trigger_timer_lateness_seconds, taken here from the \
         commits (each deleted timer row) because this binary cannot install a metrics \
         recorder. Timers fall due at {rate}/s for {} s while {rate} new events/s keep \
         arriving, then for {} with no input (fired through storeline.tick records).",
        humantime::format_duration(args.delay),
        args.seconds,
        humantime::format_duration(args.delay),
    );
}

fn counter(p: &throughput::Pass, what: &str) -> Option<f64> {
    p.counters
        .iter()
        .find(|(k, _)| k == what)
        .map(|(_, v)| *v as f64)
}

fn print_details(runs: &[Run], phase_secs: &[(String, f64)], total: f64) {
    let Some(last) = runs.last() else { return };
    println!(
        "\nwhere the time went (last run). n x mean per call | busy = wall time with at least \
         one call in flight (near the wall time: the phase waited on it)"
    );
    for (name, b) in [
        (
            "events/s, no trigger file",
            last.without.as_ref().map(|p| &p.breakdown),
        ),
        (
            "events/s, starter set",
            last.with.as_ref().map(|p| &p.breakdown),
        ),
        ("lateness", last.late.as_ref().map(|l| &l.breakdown)),
    ] {
        let Some(d) = b else { continue };
        println!(
            "{name}: wall {:.2} s; CPU: this process {:.0}% of one core, machine {:.0}% busy, {:.0}% iowait",
            d.wall, d.cpu.process, d.cpu.machine, d.cpu.iowait
        );
        op("log appends", &d.log_append, "records");
        op("log reads", &d.log_read, "records");
        op("store loads", &d.store_load, "keys");
        op("store commits", &d.store_commit, "rows");
    }
    if let Some(p) = &last.with
        && !p.counters.is_empty()
    {
        let listed = |pairs: &mut dyn Iterator<Item = (&String, i64)>| {
            pairs
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "\nstarter set decisions (last run, all triggers): {}",
            listed(&mut p.counters.iter().map(|(k, v)| (k, *v)))
        );
        println!(
            "engine records (last run): {}",
            listed(&mut p.caused_by_type.iter().map(|(k, v)| (k, *v as i64)))
        );
    }
    println!(
        "\nphase wall times: {}; total {:.0} s",
        phase_secs
            .iter()
            .map(|(n, s)| format!("{n} {s:.0} s"))
            .collect::<Vec<_>>()
            .join(", "),
        total
    );
}

/// One operation's line, as `bench engine` prints it.
fn op(label: &str, o: &OpSnapshot, item: &str) {
    support::print_op(4, label, o, item);
}
