//! Data-driven trigger tests on a virtual clock. Each `trigger_cases/*.toml` holds `[[case]]`s:
//! a trigger file, inputs at times after a base, and the effects expected. Every case runs
//! record by record, in one batch, in random splits, across restarts (a fresh writer per batch,
//! the trigger file coming through the log) and applied twice with a `reset` in between: all
//! runs must leave the same rows, and the invariants between runs, timers, wait lists and
//! counters must hold.
//!
//! `known_bug = "…"` marks a case the engine fails today: it still runs and says whether it
//! still fails, without failing the suite. `CASE=text` runs only matching cases; `VERBOSE=1`
//! prints why known bugs fail.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use storeline_engine::ProjectionConfig;
use storeline_engine::testkit::Applier;
use storeline_engine::testkit::{Registry, Stage};
use storeline_engine::triggers::TriggerSet;
use storeline_log::StoredRecord;
use storeline_state::{SqliteStore, StateStore};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    known_bug: Option<String>,
    /// Also run with these batch sizes, restarting the writer before each batch.
    batches: Option<Vec<usize>>,
    /// With `batches`: apply each batch twice, `reset` in between.
    #[serde(default)]
    reapply: bool,
    /// Times are after this instant (default Monday 2026-01-05 00:00 UTC).
    base: Option<String>,
    triggers: String,
    input: Vec<Input>,
    #[serde(default)]
    expect: Expect,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    /// `"HH:MM:SS[.mmm]"` after the base (hours may pass 24), or `"+15m"` after the last input.
    at: String,
    /// None: a `storeline.tick` (or, with `install`, a new trigger file).
    #[serde(rename = "type")]
    ty: Option<String>,
    subject: Option<String>,
    #[serde(default = "empty")]
    data: Value,
    /// Fed as the `storeline.forwarded` copy the commerce partition sends the customer's one.
    #[serde(default)]
    forwarded: bool,
    install: Option<String>,
}

/// Items match when the fields written are equal (objects: recursively, as subsets). Times are
/// written like inputs' (`at`, `created`); `version = N` is the trigger's version in file N (0:
/// the first, then each `install`).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// The whole outbox: at, created, trigger, template, customer, connector, channel, version,
    /// data.
    outbox: Option<Vec<Map<String, Value>>>,
    /// Every emitted event in order: type, at, subject, data.
    emits: Option<Vec<Map<String, Value>>>,
    /// customer, trigger, key (default ""), status, phase, step, version, history (`what`s).
    #[serde(default)]
    runs: Vec<Map<String, Value>>,
    /// `"trigger"` (all versions) or `"trigger@N"` → outcome → count (0: absent).
    #[serde(default)]
    tstat: BTreeMap<String, BTreeMap<String, i64>>,
    /// customer → every journal entry's `what`, in order.
    #[serde(default)]
    journal: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone)]
enum Mode {
    OneByOne,
    OneBatch,
    /// Random splits, keeping `next_due` between batches as the runner does.
    Random(u64),
    /// Random splits, a fresh writer loading its triggers from the store before each batch.
    Restart(u64),
    /// The case's `batches`, restarting like `Restart` (and applying twice like `Reapply` if
    /// the case says `reapply`).
    Given(Vec<usize>, bool),
    /// Random splits, each batch applied, forgotten (`reset`, as after a failed append of the
    /// events it caused) and applied again before the commit.
    Reapply(u64),
}

/// What a run left behind: outbox `(sent at, entry)`, emitted events, rows by namespace.
#[derive(Debug, PartialEq)]
struct Effects {
    outbox: Vec<(i64, Value)>,
    emits: Vec<Value>,
    ns: BTreeMap<&'static str, BTreeMap<String, Value>>,
}

const SEP: char = '\u{1f}';

/// While not empty, no case runs in `Mode::Reapply` (every case fails there); the case
/// "a batch applied again …" shows the bug. Empty it when `Applier::reset` is fixed.
const RESET_KNOWN_BUG: &str = "";

fn empty() -> Value {
    json!({})
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap()
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap()
}

fn arr(v: &Value) -> &Vec<Value> {
    v.as_array().unwrap()
}

fn time(ms: i64) -> String {
    storeline_event::format_time(&chrono::DateTime::from_timestamp_millis(ms).unwrap())
}

/// Times and versions of one case.
struct Ctx {
    base: i64,
    files: Vec<String>,
}

impl Ctx {
    fn ms(&self, t: &str) -> i64 {
        let (hms, frac) = t.split_once('.').unwrap_or((t, "0"));
        let p: Vec<i64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
        assert_eq!(p.len(), 3, "'{t}' is not HH:MM:SS[.mmm]");
        let frac: i64 = format!("{frac:0<3}")[..3].parse().unwrap();
        self.base + ((p[0] * 60 + p[1]) * 60 + p[2]) * 1000 + frac
    }

    fn rel(&self, ms: i64) -> String {
        let d = ms - self.base;
        let (h, m, s) = (d / 3_600_000, d / 60_000 % 60, d / 1000 % 60);
        format!("{h:02}:{m:02}:{s:02}.{:03}", d % 1000)
    }

    fn version(&self, file: usize, name: &str) -> String {
        let set = TriggerSet::parse(&self.files[file]).unwrap();
        set.trigger(name)
            .expect("the trigger is in that file")
            .version
            .clone()
    }

    /// An expected item with its times and version as the views show them.
    fn want(&self, want: &Map<String, Value>) -> Value {
        let mut w = Value::Object(want.clone());
        for k in ["at", "created"] {
            if let Some(t) = want.get(k) {
                w[k] = json!(self.rel(self.ms(s(t))));
            }
        }
        if let Some(f) = want.get("version") {
            w["version"] = json!(self.version(int(f) as usize, s(&want["trigger"])));
        }
        w
    }
}

fn record(offset: usize, at: i64, mut v: Value) -> StoredRecord {
    for (k, x) in [("specversion", "1.0"), ("source", "test")] {
        v[k] = json!(x);
    }
    (v["time"], v["received_at"]) = (json!(time(at)), json!(time(at)));
    // The engine's own records carry Storeline's mark (a client's would be quarantined).
    if v["type"]
        .as_str()
        .is_some_and(|t| t.starts_with("storeline."))
    {
        v["storeline_internal"] = json!(true);
    }
    let key = Bytes::from(v["subject"].as_str().unwrap_or("").to_owned());
    let value = Bytes::from(v.to_string());
    StoredRecord {
        offset: offset as u64,
        timestamp: at,
        key,
        value,
    }
}

/// The case's records (after the first trigger file if `lead`) and every trigger file.
fn records(case: &Case, cx: &Ctx, lead: bool) -> (Vec<StoredRecord>, Vec<String>) {
    let file = |id: String, src: &str| {
        let data = json!({ "version": TriggerSet::parse(src).unwrap().version, "source": src });
        json!({ "id": id, "type": "storeline.triggers", "data": data })
    };
    let mut out = Vec::new();
    let mut files = vec![case.triggers.clone()];
    if lead {
        out.push(record(0, cx.base, file("file-0".into(), &case.triggers)));
    }
    let mut at = cx.base;
    for (n, i) in case.input.iter().enumerate() {
        at = match i.at.strip_prefix('+') {
            Some(d) => at + humantime::parse_duration(d).unwrap().as_millis() as i64,
            None => cx.ms(&i.at),
        };
        let (id, ty) = (format!("e{n}"), i.ty.as_deref().unwrap_or("storeline.tick"));
        let mut v = json!({ "id": id, "type": ty, "subject": i.subject, "data": i.data });
        if let Some(src) = &i.install {
            files.push(src.clone());
            v = file(id, src);
        } else if i.forwarded {
            let c = i.data["customer_id"]
                .as_str()
                .or(i.subject.as_deref())
                .unwrap();
            v["time"] = json!(time(at));
            v["customer"] = json!(c);
            let data = v.clone();
            v = json!({ "id": format!("fwd-{id}"), "type": "storeline.forwarded", "subject": c });
            v["data"] = data;
        }
        out.push(record(out.len(), at, v));
    }
    (out, files)
}

fn splits(n: usize, mode: &Mode) -> Vec<usize> {
    let seed = match mode {
        Mode::OneByOne => return vec![1; n],
        Mode::OneBatch => return vec![n],
        Mode::Given(b, _) => return [1].iter().chain(b).copied().collect(),
        Mode::Random(s) | Mode::Restart(s) | Mode::Reapply(s) => *s,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut out, mut left) = (Vec::new(), n);
    while left > 0 {
        out.push(rng.random_range(1..=left.min(4)));
        left -= out.last().unwrap();
    }
    out
}

async fn run(case: &Case, cx: &Ctx, mode: &Mode) -> Effects {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("state.db")).await;
    let store = Arc::new(store.unwrap());
    let restart = matches!(mode, Mode::Restart(_) | Mode::Given(..));
    let (recs, _) = records(case, cx, restart);
    let new = |committed| Applier::new(0, store.clone(), ProjectionConfig::default(), committed);
    let mut a = new(0);
    if !restart {
        let set = TriggerSet::parse(&case.triggers).unwrap();
        *a.stage_mut() = Stage::new(Registry::new(set), None);
    }
    let (mut emits, mut end) = (Vec::new(), 0);
    for k in splits(recs.len(), mode) {
        end += k;
        if restart {
            a = new(a.committed());
            a.load_triggers(None).await.unwrap();
        }
        let mut stuck = 0;
        while (a.next() as usize) < end {
            if matches!(mode, Mode::Random(_)) && !a.stage_mut().knows_next_due() {
                let due = a.first_timer().await.unwrap();
                a.stage_mut().set_next_due(due);
            }
            let from = a.next() as usize;
            if matches!(mode, Mode::Reapply(_) | Mode::Given(_, true)) {
                a.apply(&recs[from..end]).await.unwrap();
                a.reset();
            }
            emits.extend(a.apply(&recs[from..end]).await.unwrap().0);
            a.commit().await.unwrap();
            // A batch may only fire timers (when more are due than one batch loads).
            stuck = if a.next() as usize > from {
                0
            } else {
                stuck + 1
            };
            assert!(stuck < 100, "{mode:?}: apply makes no progress at {from}");
        }
    }
    let mut ns: BTreeMap<_, BTreeMap<String, Value>> = BTreeMap::new();
    for n in ["run", "tstat", "jrnl", "wait", "arb", "outbox", "timer"] {
        let page = store.scan(n, "", None, 100_000).await.unwrap();
        let row = |v: &Bytes| serde_json::from_slice(v).unwrap_or(Value::Null);
        ns.insert(
            n,
            page.iter()
                .map(|r| (r.key.clone(), row(&r.value)))
                .collect(),
        );
    }
    let outbox = ns.remove("outbox").unwrap().into_iter();
    let outbox = outbox.map(|(k, v)| (k.split(SEP).nth(1).unwrap().parse().unwrap(), v));
    let emits = emits.into_iter();
    let emits = emits
        .map(|e| json!({ "type": e.ty, "subject": e.subject, "time": e.time, "data": e.data }));
    Effects {
        outbox: outbox.collect(),
        emits: emits.collect(),
        ns,
    }
}

/// Invariants between runs, timers, wait lists and counters.
fn invariants(e: &Effects, errs: &mut Vec<String>) {
    let runs = &e.ns["run"];
    for t in e.ns["timer"].keys() {
        let p: Vec<&str> = t.splitn(4, SEP).collect();
        let row = if p[2] == "r" {
            runs.get(p[3])
        } else {
            e.ns["arb"].get(p[3])
        };
        if row.is_none_or(|r| r["timer"] != json!(t)) {
            errs.push(format!(
                "timer {t:?} points to a row that does not hold it: {row:?}"
            ));
        }
    }
    let mut active: BTreeMap<String, i64> = BTreeMap::new();
    for (k, r) in runs.iter().filter(|(_, r)| r["status"] == "active") {
        *active
            .entry(format!("{}@{}", s(&r["trigger"]), s(&r["version"])))
            .or_default() += 1;
        if r["timer"]
            .as_str()
            .is_none_or(|t| !e.ns["timer"].contains_key(t))
        {
            errs.push(format!(
                "active run {k:?} has no stored timer: it never moves on"
            ));
        }
    }
    for (corr, l) in &e.ns["wait"] {
        for x in arr(&l["runs"]) {
            if runs
                .get(s(&x["run"]))
                .is_none_or(|r| r["status"] != "active")
            {
                errs.push(format!(
                    "wait list {corr:?} still lists {x}; that run is not active"
                ));
            }
        }
    }
    for (id, st) in &e.ns["tstat"] {
        let n = active.get(id).copied().unwrap_or(0);
        if st["active"].as_i64().unwrap_or(0) != n {
            errs.push(format!(
                "tstat {id}: active = {} but {n} runs are active",
                st["active"]
            ));
        }
    }
}

fn subset(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => w
            .iter()
            .all(|(k, v)| g.get(k).is_some_and(|x| subset(v, x))),
        _ => want == got,
    }
}

/// The outbox, emitted events and runs with the fields (and times) the expectations name.
fn views(cx: &Ctx, e: &Effects) -> (Vec<Value>, Vec<Value>, BTreeMap<String, Value>) {
    let outbox = e.outbox.iter().map(|(t, v)| {
        let mut o = json!({ "at": cx.rel(*t), "created": cx.rel(int(&v["created_at"])) });
        for k in [
            "trigger",
            "template",
            "customer",
            "connector",
            "channel",
            "version",
            "data",
        ] {
            o[k] = v[k].clone();
        }
        o
    });
    let emits = e.emits.iter().map(|v| {
        let mut o = json!({ "type": v["type"], "subject": v["subject"], "data": v["data"] });
        o["at"] = json!(cx.rel(int(&v["time"])));
        o
    });
    let runs = e.ns["run"].iter().map(|(k, r)| {
        let p: Vec<&str> = k.splitn(3, SEP).collect();
        let history: Vec<&Value> = arr(&r["history"]).iter().map(|h| &h["what"]).collect();
        let mut o = json!({ "customer": p[0], "trigger": p[1], "key": p[2], "history": history });
        for f in ["status", "phase", "step", "version"] {
            o[f] = r[f].clone();
        }
        (k.clone(), o)
    });
    (outbox.collect(), emits.collect(), runs.collect())
}

fn check(case: &Case, cx: &Ctx, e: &Effects, errs: &mut Vec<String>) {
    let (outbox, emits, runs) = views(cx, e);
    let x = &case.expect;
    if let Some(want) = &x.outbox {
        // Entries of one millisecond are in id order: each may match any entry not taken yet.
        let mut left: Vec<&Value> = outbox.iter().collect();
        let missing = want.iter().map(|w| cx.want(w)).filter(|w| {
            let i = left.iter().position(|g| subset(w, g));
            i.map(|i| left.remove(i)).is_none()
        });
        let missing: Vec<Value> = missing.collect();
        if !missing.is_empty() || !left.is_empty() {
            errs.push(format!(
                "outbox: missing {missing:#?}\nnot expected {left:#?}"
            ));
        }
    }
    if let Some(want) = &x.emits {
        let want: Vec<Value> = want.iter().map(|w| cx.want(w)).collect();
        if want.len() != emits.len() || want.iter().zip(&emits).any(|(w, g)| !subset(w, g)) {
            errs.push(format!("emits: want {want:#?}\ngot {emits:#?}"));
        }
    }
    for w in &x.runs {
        let mut w = cx.want(w);
        w["key"] = w.get("key").cloned().unwrap_or(json!(""));
        let k = [s(&w["customer"]), s(&w["trigger"]), s(&w["key"])].join("\u{1f}");
        let got = runs.get(&k).unwrap_or(&Value::Null);
        if !subset(&w, got) {
            errs.push(format!("run: want {w}\n got {got}"));
        }
    }
    for (name, want) in &x.tstat {
        let (n, file) = name.split_once('@').unwrap_or((name, ""));
        let id = format!(
            "{n}@{}",
            file.parse().map_or(String::new(), |f| cx.version(f, n))
        );
        let mut got: BTreeMap<String, i64> = BTreeMap::new();
        for (_, st) in e.ns["tstat"].iter().filter(|(k, _)| k.starts_with(&id)) {
            for (o, c) in st.as_object().unwrap() {
                *got.entry(o.clone()).or_default() += int(c);
            }
        }
        if want
            .iter()
            .any(|(k, v)| got.get(k).copied().unwrap_or(0) != *v)
        {
            errs.push(format!("tstat {name}: want {want:?}, got {got:?}"));
        }
    }
    for (c, want) in &x.journal {
        let entries = e.ns["jrnl"].get(c).map(|j| arr(&j["entries"]).clone());
        let got: Vec<&str> = entries.iter().flatten().map(|d| s(&d["what"])).collect();
        if got != *want {
            errs.push(format!("journal {c}: want {want:?}, got {got:?}"));
        }
    }
}

/// Drops what depends on offsets (ids, origins, seqs; restart mode has one more record in front) and
/// sorts the outbox by content (entries of one millisecond are in id order).
fn normalize(e: &mut Effects) {
    fn scrub(v: &mut Value) {
        match v {
            Value::Object(m) => {
                for k in ["id", "origin", "seq"] {
                    m.remove(k);
                }
                m.values_mut().for_each(scrub);
            }
            Value::Array(a) => a.iter_mut().for_each(scrub),
            Value::String(t) => {
                while let Some(i) = t.find("dlv_").or_else(|| t.find("trg_")) {
                    t.replace_range(i..(i + 28).min(t.len()), "<id>");
                }
            }
            _ => {}
        }
    }
    e.outbox.iter_mut().for_each(|(_, v)| scrub(v));
    e.outbox.sort_by_key(|(t, v)| (*t, v.to_string()));
    e.emits.iter_mut().for_each(scrub);
    e.ns.values_mut()
        .flat_map(|m| m.values_mut())
        .for_each(scrub);
}

fn dump(cx: &Ctx, e: &Effects) -> String {
    let (outbox, emits, _) = views(cx, e);
    let mut out: Vec<String> = outbox
        .iter()
        .chain(&emits)
        .map(|v| format!("  {v}"))
        .collect();
    for (k, r) in &e.ns["run"] {
        out.push(format!("  run {k:?} {} {}", r["status"], r["phase"]));
        for h in arr(&r["history"]) {
            let detail = h["detail"].as_str().unwrap_or("");
            out.push(format!(
                "    {} {} {detail}",
                cx.rel(int(&h["at"])),
                s(&h["what"])
            ));
        }
    }
    out.extend(
        e.ns["tstat"]
            .iter()
            .map(|(k, v)| format!("  tstat {k} {v}")),
    );
    out.join("\n")
}

/// Runs one case in every mode; `Err` says what went wrong.
async fn run_case(case: &Case) -> Result<(), String> {
    let base = case.base.as_deref().unwrap_or("2026-01-05T00:00:00Z");
    let base = chrono::DateTime::parse_from_rfc3339(base)
        .unwrap()
        .timestamp_millis();
    let mut cx = Ctx {
        base,
        files: Vec::new(),
    };
    cx.files = records(case, &cx, false).1;
    let mut want = run(case, &cx, &Mode::OneByOne).await;
    let mut errs = Vec::new();
    check(case, &cx, &want, &mut errs);
    invariants(&want, &mut errs);
    if !errs.is_empty() {
        return Err(format!(
            "{}\n effects:\n{}",
            errs.join("\n"),
            dump(&cx, &want)
        ));
    }
    normalize(&mut want);
    let mut modes = vec![
        Mode::OneBatch,
        Mode::Random(1),
        Mode::Random(2),
        Mode::Random(3),
    ];
    modes.extend([Mode::Restart(4), Mode::Restart(5)]);
    if RESET_KNOWN_BUG.is_empty() {
        modes.push(Mode::Reapply(6));
    }
    if let Some(b) = &case.batches {
        assert_eq!(
            b.iter().sum::<usize>(),
            case.input.len(),
            "{}: batches",
            case.name
        );
        modes.push(Mode::Given(b.clone(), case.reapply));
    }
    for mode in modes {
        let mut got = run(case, &cx, &mode).await;
        normalize(&mut got);
        if got != want {
            let mut errs = Vec::new();
            check(case, &cx, &got, &mut errs);
            invariants(&got, &mut errs);
            let n = case.input.len() + usize::from(matches!(mode, Mode::Restart(_)));
            let (a, b) = (dump(&cx, &want), dump(&cx, &got));
            let errs = errs.join("\n");
            let head = format!(
                "{mode:?} (batches {:?}) differs from one by one",
                splits(n, &mode)
            );
            return Err(format!(
                "{head}:\n{errs}\n one by one:\n{a}\n {mode:?}:\n{b}"
            ));
        }
    }
    Ok(())
}

#[tokio::test]
async fn trigger_cases() {
    #[derive(Deserialize)]
    struct File {
        case: Vec<Case>,
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/trigger_cases");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.retain(|p| p.extension().is_some_and(|e| e == "toml"));
    paths.sort();
    let only = std::env::var("CASE").unwrap_or_default();
    let (mut passed, mut failed, mut known) = (0, Vec::new(), 0);
    for p in paths {
        let text = std::fs::read_to_string(&p).unwrap();
        let file: File = toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let f = p.file_name().unwrap().to_string_lossy().into_owned();
        for case in file.case.iter().filter(|c| c.name.contains(&only)) {
            match (&case.known_bug, run_case(case).await) {
                (None, Ok(())) => passed += 1,
                (None, Err(e)) => failed.push(format!("✗ {f}: {}\n{e}", case.name)),
                (Some(_), Ok(())) => println!("! {f}: {}: PASSES, remove known_bug", case.name),
                (Some(bug), Err(e)) => {
                    known += 1;
                    println!("~ {f}: {}: known bug: {bug}", case.name);
                    if std::env::var("VERBOSE").is_ok() {
                        println!("{e}\n");
                    }
                }
            }
        }
    }
    if !RESET_KNOWN_BUG.is_empty() {
        println!("~ no case ran in Mode::Reapply: known bug: {RESET_KNOWN_BUG}");
    }
    println!(
        "{passed} passed, {} failed, {known} known bugs",
        failed.len()
    );
    assert!(failed.is_empty(), "\n{}", failed.join("\n\n"));
}

/// More timers due than one batch loads (32 768): a record at the very millisecond they are due
/// must still come after all of them, as it does with fewer timers.
#[tokio::test]
async fn a_record_at_the_due_time_of_more_timers_than_a_batch_loads_comes_after_them() {
    let src = r#"
        [[trigger]]
        name = "abandoned-cart"
        on = "cart.item_added"
        wait = { for = "order.placed", within = "1h" }
        on_timeout = [ { emit = "cart.abandoned" } ]
    "#;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("state.db"))
            .await
            .unwrap(),
    );
    let mut a = Applier::new(0, store.clone(), ProjectionConfig::default(), 0);
    *a.stage_mut() = Stage::new(Registry::new(TriggerSet::parse(src).unwrap()), None);
    let base = 1_767_571_200_000; // 2026-01-05T00:00:00Z
    // "zzz" sorts after every other customer, so its timer is the one left for the next batch.
    let customers = (0..32_768)
        .map(|n| format!("c{n:05}"))
        .chain(["zzz".to_owned()]);
    let adds: Vec<StoredRecord> = customers
        .enumerate()
        .map(|(n, c)| {
            let v = json!({ "id": format!("a{n}"), "type": "cart.item_added", "subject": c, "data": {} });
            record(n, base, v)
        })
        .collect();
    while (a.next() as usize) < adds.len() {
        a.apply(&adds[a.next() as usize..]).await.unwrap();
        a.commit().await.unwrap();
    }
    let order = json!({ "id": "o", "type": "order.placed", "customer": "zzz", "data": { "order_id": "o1" } });
    let fwd = json!({ "id": "f", "type": "storeline.forwarded", "subject": "zzz", "data": order });
    let recs = [record(adds.len(), base + 3_600_000, fwd)];
    let mut emits = Vec::new();
    while (a.next() as usize) < adds.len() + 1 {
        let from = a.next() as usize - adds.len();
        emits.extend(a.apply(&recs[from..]).await.unwrap().0);
        a.commit().await.unwrap();
    }
    let zzz = emits
        .iter()
        .filter(|e| e.subject.as_deref() == Some("zzz"))
        .count();
    assert_eq!(
        emits.len() - zzz,
        32_768,
        "every other cart times out at 01:00"
    );
    assert_eq!(
        zzz, 1,
        "the last cart's timeout fires before the order at the same instant"
    );
}
