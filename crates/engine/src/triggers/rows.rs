//! The rows the trigger engine keeps in the state store, committed with the views and the
//! partition offset (so a crash never loses or doubles a run's step, a timer or an outbox entry).
//!
//! Keys (`\u{1f}` separates parts, so a prefix scan lists one customer's runs):
//!
//! ```text
//!  run    {customer}␟{trigger}␟{key}          one run per customer, trigger and key (the latest)
//!  wait   c:{customer} | o:{order}             runs waiting for, or cancelled by, an event
//!  timer  {partition:04}␟{due ms:013}␟{r|a}␟{run key | customer}   sorted by due time
//!  arb    {customer}                            messages sent (for caps) and held back
//!  jrnl   {customer}                            the latest decisions that did not start a run
//!  outbox {partition:04}␟{clock:013}␟{seq}␟{id}     what to deliver (storeline_event::outbox)
//!  agg    {aggregate}␟{key}                     a sliding window's buckets (events where stored)
//!  aggf   {aggregate}␟{key}                     the same over forwarded copies (conditions only)
//!  tstat  {trigger}@{version}                   counters per outcome
//!  trigdef current | {trigger}@{version}        the partition's trigger file and every version in use
//!  person {identity}                            the person an identity belongs to, its runs, merges
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use storeline_event::outbox::{self, OutboxEntry};

pub mod ns {
    pub const RUN: &str = "run";
    pub const WAIT: &str = "wait";
    pub const TIMER: &str = "timer";
    pub const ARB: &str = "arb";
    pub const JRNL: &str = "jrnl";
    pub const OUTBOX: &str = super::outbox::NS;
    pub const AGG: &str = "agg";
    pub const AGGF: &str = "aggf";
    pub const TSTAT: &str = "tstat";
    pub const TRIGDEF: &str = "trigdef";
    pub const PERSON: &str = "person";
}

pub const SEP: char = '\u{1f}';

/// The `trigdef` row holding the partition's trigger clock (ms, as text).
pub const CLOCK_KEY: &str = "clock";
/// The `trigdef` row holding the partition's watermark (ms, as text), once it has one.
pub const WATERMARK_KEY: &str = "watermark";
/// The `trigdef` row saying every run of the partition was started while [`PersonRow::runs`]
/// was kept (a partition applied from its first record): a merge looks for an identity's runs
/// only when its row says it has some. Without it (a store written before), it always looks.
pub const RUNS_MARKED_KEY: &str = "runs_marked";

/// The most history entries a run keeps (the first ones and the latest).
pub const HISTORY: usize = 24;
/// The most decisions a customer's journal keeps.
pub const JOURNAL: usize = 12;

pub fn run_key(customer: &str, trigger: &str, key: &str) -> String {
    format!("{customer}{SEP}{trigger}{SEP}{key}")
}

/// `(customer, trigger, key)` of a run key.
pub fn split_run_key(k: &str) -> (&str, &str, &str) {
    let mut it = k.splitn(3, SEP);
    (
        it.next().unwrap_or(""),
        it.next().unwrap_or(""),
        it.next().unwrap_or(""),
    )
}

pub fn timer_prefix(partition: u32) -> String {
    format!("{partition:04}{SEP}")
}

/// What a timer wakes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    Run(String),
    Arb(String),
}

pub fn timer_key(partition: u32, due: i64, target: &Target) -> String {
    let (kind, t) = match target {
        Target::Run(r) => ('r', r),
        Target::Arb(c) => ('a', c),
    };
    format!("{partition:04}{SEP}{:013}{SEP}{kind}{SEP}{t}", due.max(0))
}

/// `(due, target)` of a timer key.
pub fn parse_timer_key(k: &str) -> Option<(i64, Target)> {
    let mut it = k.splitn(4, SEP);
    let _p = it.next()?;
    let due = it.next()?.parse().ok()?;
    let kind = it.next()?;
    let target = it.next()?.to_owned();
    Some((
        due,
        match kind {
            "r" => Target::Run(target),
            "a" => Target::Arb(target),
            _ => return None,
        },
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    Active,
    Finished,
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    #[default]
    Start,
    Debounce,
    Delay,
    Wait,
    Done,
}

/// One journey of one customer through one trigger.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub trigger: String,
    pub version: String,
    /// Where it started (`partition:offset` of the trigger event): unique, and the seed of the
    /// ids of everything the run causes.
    pub origin: String,
    pub status: Status,
    pub phase: Phase,
    pub step: usize,
    pub started_at: i64,
    pub updated_at: i64,
    /// The event that started (or, debounced, last restarted) the run.
    pub event: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer: Option<String>,
    /// `wait` rows this run is listed in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listed: Vec<String>,
    /// The identity that started it and when it was merged into this person (a run handed
    /// over by a merge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_from: Option<(String, i64)>,
    /// How many times a debounce restarted it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restarts: u32,
    pub history: Vec<Entry>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One thing that happened to a run, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub at: i64,
    pub what: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Run {
    pub fn log(&mut self, at: i64, what: &str, step: Option<usize>, detail: Option<String>) {
        if self.history.len() >= HISTORY {
            // Keep the start and the latest: drop the oldest after the first few.
            self.history.remove(4);
        }
        self.history.push(Entry {
            at,
            what: what.to_owned(),
            step,
            detail,
        });
    }
}

/// Why a run is listed under a correlation: it waits for `ty`, or `ty` cancels it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Listing {
    pub ty: String,
    pub run: String,
    pub cancel: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WaitList {
    pub runs: Vec<Listing>,
}

/// A message waiting for arbitration (a cap's window or the end of quiet hours).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldMessage {
    pub not_before: i64,
    pub priority: i32,
    pub channel: String,
    pub reason: String,
    pub run: String,
    /// The run's origin when it was held (a later run may have the same key).
    #[serde(default)]
    pub origin: String,
    pub entry: OutboxEntry,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Arb {
    /// `(time, channel)` of messages sent within the longest cap window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sent: Vec<(i64, String)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<HeldMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub at: i64,
    pub trigger: String,
    pub version: String,
    pub what: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Journal {
    pub entries: Vec<Decision>,
}

/// Counters per outcome for one trigger version (summed over partitions when read).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    #[serde(flatten)]
    pub counts: BTreeMap<String, i64>,
}

impl Stats {
    pub fn add(&mut self, what: &str, n: i64) {
        *self.counts.entry(what.to_owned()).or_default() += n;
    }
}

/// A sliding window: buckets of `(start, count, sum)` and, for `distinct`, each value's last time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<(i64, i64, f64)>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub seen: BTreeMap<String, i64>,
    pub last: i64,
}

/// A trigger file as a partition knows it (the `current` row), or one trigger version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    pub version: String,
    pub source: String,
}

/// What triggers know of one identity in the partition that owns it: the person (home identity)
/// it was merged into, the runs it holds, the identities merged into it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PersonRow {
    /// Whether a run was ever started for this identity in this partition (see
    /// [`RUNS_MARKED_KEY`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub runs: bool,
    /// Set when this identity was merged into another: its trigger state went there, and its
    /// events are forwarded there for triggers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<Merge>,
    /// Identities merged into this one (their runs were handed over here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged: Vec<Merge>,
    /// Merges announced whose hand-over has not arrived yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub awaiting: Vec<Awaiting>,
    /// The person's events applied while a hand-over was awaited, `(clock, event document)` in
    /// order (at most [`AWAITING_EVENTS`]): a hand-over applies those after its merge to the
    /// runs it brings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub meanwhile: Vec<(i64, Value)>,
    /// Order facts from the forwarded copies of the person's orders (the originals are folded in
    /// the commerce partition): what `customer.stats` shows to conditions here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orders: Option<crate::model::OrderStats>,
    /// The customer fragments of identities merged into this one, as they stood at the merge
    /// (at most [`PERSON_FRAGS`], the latest kept): with this partition's own fragment they
    /// are the one `customer` that conditions, templates and consent read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frags: Vec<(String, crate::model::Frag)>,
}

/// One merge: the other identity, when, and the event that said so.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Merge {
    pub id: String,
    pub at: i64,
    pub via: String,
}

/// A hand-over on its way from `from`, announced at `since`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Awaiting {
    pub from: String,
    pub since: i64,
}

/// The most events kept for hand-overs on their way (a hand-over takes milliseconds).
pub const AWAITING_EVENTS: usize = 64;
/// How long a person awaits a hand-over (ms of the partition clock): an identity that holds
/// nothing sends none.
pub const AWAIT_MS: i64 = 10 * 60_000;
/// The most hand-overs awaited and merges remembered per person (the oldest go first).
pub const PERSON_MERGES: usize = 256;
/// The most merged identities' fragments a person keeps for its merged `customer`.
pub const PERSON_FRAGS: usize = 16;
