//! `storeline triggers check FILE` and `storeline triggers backtest FILE`.
//!
//! `check` compiles a trigger file without starting anything and lists every problem with its
//! location. `backtest` replays the stored log through the file on a virtual clock into a
//! scratch store (the server must be stopped: it opens the log) and reports what would have
//! happened, with examples.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde_json::json;
use storeline_engine::triggers::TriggerSet;
use storeline_engine::{Report, backtest};
use storeline_log::EventLog;
use storeline_server::Config;
use storeline_state::{SqliteStore, StateStore};

#[derive(clap::Subcommand, Debug)]
pub enum TriggersCommand {
    /// Check a trigger file: every problem, with where it is; exits 1 if there are any.
    /// Warnings (what installs but is probably not meant) are listed and do not fail it.
    Check {
        file: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// The data directory whose key opens the file's `enc:v1:` values (a file read back
        /// with `GET /v1/triggers`). References (`{ env = … }`, `{ file = … }`) are looked up
        /// in this command's environment.
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Replay the stored log through a trigger file on a virtual clock, with no side effects,
    /// and report how many runs would have started, sent, been held or suppressed, and why.
    Backtest(BacktestArgs),
}

#[derive(clap::Args, Debug)]
pub struct BacktestArgs {
    file: PathBuf,
    /// Configuration file (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory [default: ./storeline-data].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Evaluate triggers from this time (RFC 3339, or a duration ago such as "7d") [default: the
    /// log's start]. Earlier events still build customers and aggregate windows.
    #[arg(long)]
    from: Option<String>,
    /// Evaluate up to this time (RFC 3339, or a duration ago) [default: the log's end].
    #[arg(long)]
    to: Option<String>,
    /// Examples shown per trigger and outcome.
    #[arg(long, default_value_t = 3)]
    samples: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(cmd: TriggersCommand) -> Result<()> {
    match cmd {
        TriggersCommand::Check { file, json, data } => check(file, json, data),
        TriggersCommand::Backtest(args) => run_backtest(args).await,
    }
}

fn load(file: &PathBuf) -> Result<(String, TriggerSet)> {
    let source =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    match TriggerSet::parse(&source) {
        Ok(set) => Ok((source, set)),
        Err(problems) => {
            for p in &problems {
                eprintln!("{}: {p}", file.display());
            }
            bail!("{} problem(s) in {}", problems.len(), file.display())
        }
    }
}

fn check(file: PathBuf, as_json: bool, data: Option<PathBuf>) -> Result<()> {
    let source = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    // The server stores the file with its plain-text secrets sealed, and the version is the
    // stored text's: it is known here only with the data directory's key (or without secrets).
    let stored = storeline_server::secrets::stored_text(&source, data.as_deref());
    let text = stored.as_deref().unwrap_or(&source);
    match storeline_server::trigger_file::parse_file(text, data.as_deref()) {
        Ok((set, connectors)) => {
            let version = stored.as_ref().map(|_| set.version.clone());
            if as_json {
                println!(
                    "{}",
                    json!({ "ok": true, "version": version, "warnings": set.warnings, "triggers": set.triggers.iter().map(|t| json!({ "name": t.name, "version": t.version })).collect::<Vec<_>>(), "aggregates": set.aggregates.len(), "connectors": connectors.iter().map(|c| json!({ "name": c.name, "type": c.kind.name() })).collect::<Vec<_>>() })
                );
            } else {
                for t in &set.triggers {
                    println!(
                        "trigger {:<28} version {}  on {}",
                        t.name,
                        t.version,
                        t.on.join(", ")
                    );
                }
                for a in &set.aggregates {
                    println!(
                        "aggregate {:<26} {:?} over {}",
                        a.name,
                        a.func,
                        humantime::format_duration(std::time::Duration::from_millis(
                            a.window_ms as u64
                        ))
                    );
                }
                for c in &connectors {
                    println!("connector {:<26} {}", c.name, c.kind.name());
                }
                // Warnings do not refuse the file: it installs as it is.
                for w in &set.warnings {
                    eprintln!("{}: warning: {w}", file.display());
                }
                eprintln!(
                    "{}: ok ({} triggers, {} aggregates, {} connectors, {} warning(s); file version {})",
                    file.display(),
                    set.triggers.len(),
                    set.aggregates.len(),
                    connectors.len(),
                    set.warnings.len(),
                    version.as_deref().unwrap_or(
                        "set when stored, once its plain-text secrets are sealed (--data DIR shows it)"
                    )
                );
            }
            Ok(())
        }
        Err(problems) => {
            if as_json {
                println!("{}", json!({ "ok": false, "problems": problems }));
            } else {
                for p in &problems {
                    eprintln!("{}: {p}", file.display());
                }
            }
            bail!("{} problem(s) in {}", problems.len(), file.display())
        }
    }
}

/// RFC 3339, or a duration before now.
fn parse_time(s: &str) -> Result<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(chrono::Utc::now().timestamp_millis() - d.as_millis() as i64);
    }
    bail!("'{s}' is neither an RFC 3339 time (2026-11-01T00:00:00Z) nor a duration ago (7d)")
}

async fn run_backtest(args: BacktestArgs) -> Result<()> {
    let (source, set) = load(&args.file)?;
    let from = args
        .from
        .as_deref()
        .map(parse_time)
        .transpose()?
        .unwrap_or(i64::MIN);
    let to = args
        .to
        .as_deref()
        .map(parse_time)
        .transpose()?
        .unwrap_or(i64::MAX);
    if from > to {
        bail!("--from is after --to");
    }
    let mut cfg = Config::load(args.config.as_deref())?;
    if let Some(d) = args.data {
        cfg.data_dir = d;
    }
    let log = Arc::new(crate::replay::open_file_log(&cfg, "backtest").await?);
    let total: u64 = (0..log.partitions())
        .map(|p| log.bounds(p).map(|b| b.end).unwrap_or(0))
        .sum();
    let scratch = tempfile::tempdir().context("cannot create a scratch directory")?;
    let store = Arc::new(SqliteStore::open(&scratch.path().join("backtest.db")).await?);
    eprintln!(
        "backtest of {} (version {}) over {total} stored events; nothing is sent",
        args.file.display(),
        set.version
    );
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} events  {per_sec}  eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = std::time::Instant::now();
    let projection = storeline_server::engine_config(&cfg).projection;
    let report = backtest(
        Arc::clone(&log),
        Arc::clone(&store),
        &source,
        &projection,
        (from, to),
        args.samples,
        &|n| bar.set_position(n),
    )
    .await?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    store.close().await;
    let _ = log.close().await;
    if args.json {
        println!("{}", report_json(&report, &set));
    } else {
        print_report(&report, &set, secs);
    }
    Ok(())
}

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| storeline_event::format_time(&t))
        .unwrap_or_else(|| "-".into())
}

fn report_json(r: &Report, set: &TriggerSet) -> serde_json::Value {
    let samples: Vec<serde_json::Value> = r
        .samples
        .iter()
        .flat_map(|((t, what), list)| {
            list.iter().map(move |o| json!({ "trigger": t, "outcome": what, "customer": o.customer, "at": time(o.at), "run": o.run.replace('\u{1f}', "/") }))
        })
        .collect();
    json!({
        "version": set.version, "events": r.events,
        "clock": r.clock.map(|(a, b)| json!({ "from": time(a), "to": time(b) })),
        "counts": r.counts, "samples": samples,
        "at_end": at_end_json(r),
    })
}

/// Per trigger, where its messages and runs ended: per connector `sent` and `held`, and the
/// `suppressed`, `dropped` and `waiting` (runs per phase) figures.
fn at_end_json(r: &Report) -> serde_json::Value {
    let mut names: std::collections::BTreeSet<&String> = r.deliveries.keys().collect();
    names.extend(r.waiting.keys());
    names.extend(r.counts.keys());
    let out: serde_json::Map<String, serde_json::Value> = names
        .into_iter()
        .map(|t| {
            let s = states(r, t);
            (
                t.clone(),
                json!({
                    "connectors": r.deliveries.get(t).cloned().unwrap_or_default(),
                    "sent": s.sent, "held": s.held, "suppressed": s.suppressed,
                    "dropped": s.dropped,
                    "waiting": r.waiting.get(t).cloned().unwrap_or_default(),
                }),
            )
        })
        .collect();
    serde_json::Value::Object(out)
}

/// One trigger's messages by state (all connectors).
#[derive(Debug, Default, PartialEq)]
struct States {
    sent: u64,
    held: u64,
    suppressed: u64,
    dropped: u64,
    waiting: u64,
}

fn states(r: &Report, trigger: &str) -> States {
    let mut s = States::default();
    for per_state in r
        .deliveries
        .get(trigger)
        .into_iter()
        .flat_map(|c| c.values())
    {
        s.sent += per_state.get("sent").copied().unwrap_or(0);
        s.held += per_state.get("held").copied().unwrap_or(0);
    }
    for (what, n) in r.counts.get(trigger).into_iter().flatten() {
        if what.starts_with("suppressed") {
            s.suppressed += n;
        } else if what.starts_with("dropped") {
            s.dropped += n;
        }
    }
    s.waiting = r
        .waiting
        .get(trigger)
        .map(|p| p.values().sum())
        .unwrap_or(0);
    s
}

/// The lines under a trigger's counts: its messages per state and connector, and its runs
/// still going when the log ended.
fn end_lines(r: &Report, trigger: &str) -> Vec<String> {
    let s = states(r, trigger);
    let mut out = Vec::new();
    let by = |state: &str| -> String {
        let parts: Vec<String> = r
            .deliveries
            .get(trigger)
            .into_iter()
            .flatten()
            .filter_map(|(c, m)| m.get(state).filter(|n| **n > 0).map(|n| format!("{c} {n}")))
            .collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!(" ({})", parts.join(", "))
        }
    };
    if s != States::default() {
        out.push(format!(
            "  messages: sent {}{}, held at the end {}{}, suppressed {}{}, dropped {}{}",
            s.sent,
            by("sent"),
            s.held,
            by("held"),
            s.suppressed,
            by("suppressed"),
            s.dropped,
            by("dropped")
        ));
    }
    if s.waiting > 0 {
        let phases: Vec<String> = r
            .waiting
            .get(trigger)
            .into_iter()
            .flatten()
            .map(|(p, n)| format!("{p} {n}"))
            .collect();
        out.push(format!(
            "  runs still going at the end: {} ({})",
            s.waiting,
            phases.join(", ")
        ));
    }
    out
}

fn print_report(r: &Report, set: &TriggerSet, secs: f64) {
    println!("{} events replayed in {secs:.1} s", r.events);
    if let Some((a, b)) = r.clock {
        println!("virtual clock {} .. {}", time(a), time(b));
    }
    for t in &set.triggers {
        let Some(c) = r.counts.get(&t.name) else {
            println!("\n{}: never triggered", t.name);
            continue;
        };
        let line: Vec<String> = c.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("\n{}: {}", t.name, line.join(", "));
        for l in end_lines(r, &t.name) {
            println!("{l}");
        }
        for ((name, what), list) in &r.samples {
            if *name != t.name {
                continue;
            }
            for o in list {
                println!(
                    "  e.g. {what:<20} {} customer {} ({})",
                    time(o.at),
                    o.customer.as_deref().unwrap_or("-"),
                    o.run.replace('\u{1f}', "/")
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn the_backtest_report_shows_each_connector_and_state_and_the_runs_still_going() {
        let mut r = Report::default();
        let per = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        r.counts.insert(
            "cart".into(),
            per(&[("sent", 5), ("suppressed_consent", 2), ("dropped_cap", 1)]),
        );
        r.deliveries.insert(
            "cart".into(),
            [
                (
                    "email".to_string(),
                    per(&[("sent", 3), ("held", 2), ("suppressed", 2)]),
                ),
                ("push".to_string(), per(&[("sent", 2), ("dropped", 1)])),
            ]
            .into_iter()
            .collect(),
        );
        r.waiting
            .insert("cart".into(), per(&[("delay", 1), ("wait", 4)]));
        assert_eq!(
            end_lines(&r, "cart"),
            [
                "  messages: sent 5 (email 3, push 2), held at the end 2 (email 2), suppressed 2 (email 2), dropped 1 (push 1)",
                "  runs still going at the end: 5 (delay 1, wait 4)",
            ]
        );
        let j = at_end_json(&r);
        assert_eq!(j["cart"]["connectors"]["email"]["held"], 2);
        assert_eq!(j["cart"]["waiting"]["wait"], 4);
        assert_eq!(j["cart"]["sent"], 5);
        assert!(end_lines(&r, "other").is_empty());
    }
}
