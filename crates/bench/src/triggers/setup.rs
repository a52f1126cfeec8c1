//! What the phases of `storeline bench triggers` share: the trigger files (the starter set, with
//! an inline stand-in when `config/triggers.toml` is missing or does not compile, and the small
//! files the timer phases use), installing a file the way the server does (one record per
//! partition), stored records built with a live `received_at`, and this process's memory.
//!
//! Why `received_at` is stamped here: it is the triggers' clock. The views phase reuses traffic
//! prepared ahead with one fixed stamp, but the timer phases need the clock to move with the
//! wall clock, as it does behind a live ingest.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use bytes::Bytes;
use serde_json::Value;
use storeline_engine::Appender;
use storeline_engine::triggers::{TriggerSet, install_event, read};
use storeline_log::{EventLog, Record, partition_for};
use storeline_state::StateStore;

use super::phases::{Backend, Ctx, PARTITIONS};
use super::support::{LogAppender, wait_caught_up};

/// Stands in for `config/triggers.toml` when it is missing or does not compile: the journeys the
/// issue names (welcome, abandoned cart with debounce and wait, order confirmation, card
/// velocity over an aggregate).
pub const INLINE_STARTER: &str = r#"
[[connector]]
name = "email"
type = "smtp"
host = "127.0.0.1"
port = 2525
from = "Shop <shop@example.com>"

[[connector]]
name = "fraud"
type = "webhook"
url = "http://127.0.0.1:9000/fraud"
allow_private_network = true

[[aggregate]]
name = "failed_payments_per_card"
on = "payment.failed"
key = "event.data.card_fingerprint"
when = "has(event.data.card_fingerprint)"
window = "10m"
fn = "count"

[[trigger]]
name = "welcome"
on = "customer.signed_up"
once = true
then = [ { deliver = "email", template = "welcome" } ]

[[trigger]]
name = "abandoned-cart"
on = "cart.item_added"
when = "has(customer.consent.email) && customer.consent.email"
debounce = "15m"
cancel_on = [ "order.placed" ]
wait = { for = "order.placed", within = "1h" }
on_timeout = [ { deliver = "email", template = "abandoned_cart" } ]

[[trigger]]
name = "order-confirmation"
on = "order.placed"
key = "event.data.order_id"
transactional = true
then = [ { deliver = "email", template = "order_confirmation" } ]

[[trigger]]
name = "card-velocity"
on = "payment.failed"
when = "has(event.data.card_fingerprint) && agg.failed_payments_per_card > 5"
key = "event.data.card_fingerprint"
then = [ { emit = "fraud.suspected" }, { deliver = "fraud" } ]
"#;

/// The trigger file the views phase runs with, and where it came from.
pub struct Starter {
    pub set: TriggerSet,
    /// `config/triggers.toml (10 triggers)` or why the inline stand-in was used.
    pub origin: String,
    pub inline: bool,
}

/// Where the starter set is looked for when `--triggers` is not given: the working directory,
/// then the source tree this binary was built from.
pub fn starter_paths(given: Option<&Path>) -> Vec<PathBuf> {
    match given {
        Some(p) => vec![p.to_owned()],
        None => vec![
            PathBuf::from("config/triggers.toml"),
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/triggers.toml"),
        ],
    }
}

/// Reads and compiles the first starter file found; `Err` says why none could be used.
pub fn load_starter(paths: &[PathBuf]) -> std::result::Result<(TriggerSet, PathBuf), String> {
    let mut why = Vec::new();
    for p in paths {
        match std::fs::read_to_string(p) {
            Ok(text) => {
                return TriggerSet::parse(&text)
                    .map(|s| (s, p.clone()))
                    .map_err(|problems| {
                        format!(
                            "{} does not compile: {}",
                            p.display(),
                            problems
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join("; ")
                        )
                    });
            }
            Err(e) => why.push(format!("{}: {e}", p.display())),
        }
    }
    Err(why.join("; "))
}

/// The starter set, or the inline stand-in (saying why).
pub fn starter(paths: &[PathBuf]) -> Result<Starter> {
    match load_starter(paths) {
        Ok((set, path)) => Ok(Starter {
            origin: format!(
                "{} ({} triggers, {} aggregates)",
                path.display(),
                set.triggers.len(),
                set.aggregates.len()
            ),
            set,
            inline: false,
        }),
        Err(why) => {
            let set = compile(INLINE_STARTER)?;
            Ok(Starter {
                origin: format!(
                    "an inline stand-in ({} triggers, {} aggregate), because {why}",
                    set.triggers.len(),
                    set.aggregates.len()
                ),
                set,
                inline: true,
            })
        }
    }
}

pub fn compile(source: &str) -> Result<TriggerSet> {
    TriggerSet::parse(source).map_err(|p| {
        anyhow!(
            "a bench trigger file does not compile: {}",
            p.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )
    })
}

/// One trigger on `ty`, one run per event (`key = event.data.k`, a string), a timer `delay` after the
/// event, then an emitted `bench.fired`.
pub fn timer_set(ty: &str, delay: &str) -> Result<TriggerSet> {
    compile(&format!(
        r#"[[trigger]]
name = "bench-timer"
on = "{ty}"
key = "event.data.k"
steps = [ {{ delay = "{delay}" }}, {{ then = [ {{ emit = "bench.fired" }} ] }} ]
"#
    ))
}

/// A context for SQLite phases: only the log and store openers of [`Ctx`] are used.
pub fn ctx(dir: PathBuf, run: usize) -> Ctx {
    Ctx {
        backend: Backend::Sqlite,
        pg_url: String::new(),
        dir,
        run,
        seconds: 0,
        rate: 0,
        clients: 0,
        hot_skus: 0,
        hot_stock: 0,
        seed: 0,
        schemas: Default::default(),
    }
}

/// Installs `set` in every partition (one `storeline.triggers` record each, as the server does)
/// and waits until every partition has applied it.
pub async fn install<L: EventLog, S: StateStore>(
    log: &std::sync::Arc<L>,
    engine: &storeline_engine::Engine<S>,
    set: &TriggerSet,
) -> Result<()> {
    let appender = LogAppender { log: log.clone() };
    for p in 0..log.partitions() {
        appender
            .append(vec![install_event(set)], Some(p))
            .await
            .map_err(|e| anyhow!("installing the trigger file: {}", e.message))?;
    }
    if !wait_caught_up(&**log, engine, Duration::from_secs(60)).await {
        bail!("the engine did not apply the trigger file within 60 s");
    }
    let current = read::current(&*engine.store).await?;
    let on = current
        .iter()
        .filter(|(_, d)| d.version == set.version)
        .count();
    if on != log.partitions() as usize {
        bail!(
            "the trigger file is current in {on} of {} partitions",
            log.partitions()
        );
    }
    Ok(())
}

/// Stored records of events `(type, customer, data)`, stamped `received_at` now, grouped by the
/// partition ingest would route them to. Returns the stamp (ms).
pub fn records(
    events: impl Iterator<Item = (String, String, Value)>,
    id_prefix: &str,
    first: u64,
) -> (i64, Vec<Vec<Record>>) {
    let now = chrono::Utc::now();
    let ms = now.timestamp_millis();
    let received = storeline_event::format_time(&now);
    let mut parts: Vec<Vec<Record>> = vec![Vec::new(); PARTITIONS as usize];
    for (i, (ty, customer, data)) in events.enumerate() {
        let ev = storeline_engine::build_event(
            format!("{id_prefix}{}", first + i as u64),
            "storeline-bench",
            &ty,
            Some(customer),
            ms,
            &data,
            None,
        );
        let key = ev.route_key().to_owned();
        let p = partition_for(key.as_bytes(), PARTITIONS) as usize;
        parts[p].push(Record {
            timestamp: ms,
            key: Bytes::from(key),
            value: Bytes::from(ev.to_stored_json_at(&received)),
        });
    }
    (ms, parts)
}

/// Appends each partition's records (concurrently, durably).
pub async fn append_all<L: EventLog>(log: &L, parts: Vec<Vec<Record>>) -> Result<()> {
    let appends = parts
        .into_iter()
        .enumerate()
        .filter(|(_, r)| !r.is_empty())
        .map(|(p, r)| log.append(p as u32, r));
    for r in futures::future::join_all(appends).await {
        r.map_err(|e| anyhow!("appending bench events: {e}"))?;
    }
    Ok(())
}

/// Counts the rows of `ns` (every owner) without keeping them.
pub async fn count_rows<S: StateStore>(store: &S, ns: &str) -> Result<u64> {
    let mut n = 0u64;
    let mut after: Option<(String, u32)> = None;
    loop {
        let page = store
            .scan(ns, "", after.as_ref().map(|(k, o)| (k.as_str(), *o)), 4096)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some((last.key.clone(), last.owner));
        n += page.len() as u64;
        if page.len() < 4096 {
            break;
        }
    }
    Ok(n)
}

/// A trigger counter (`started`, `active`, …) summed over every trigger and partition.
pub async fn counter<S: StateStore>(store: &S, what: &str) -> Result<i64> {
    Ok(read::stats(store)
        .await?
        .values()
        .filter_map(|c| c.get(what))
        .sum())
}

/// This process's memory, from `/proc/self/status`, in KiB.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Mem {
    /// Resident set (`VmRSS` = anonymous + file-backed + shared).
    pub rss: u64,
    /// `RssAnon`: the heap and stacks, what the engine's own data costs.
    pub anon: u64,
    /// `RssFile`: mapped files (the binary, shared libraries).
    pub file: u64,
    /// `VmHWM`: the peak resident set so far.
    pub peak: u64,
}

pub fn mem() -> Mem {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Mem {
        rss: field("VmRSS:"),
        anon: field("RssAnon:"),
        file: field("RssFile:"),
        peak: field("VmHWM:"),
    }
}
