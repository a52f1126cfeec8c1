//! Data-driven trigger tests on a virtual clock. Each `trigger_cases/*.toml` holds `[[case]]`s:
//! a trigger file, inputs at times relative to a base, and the effects expected (outbox entries,
//! emitted events, runs, counters, journals). Every case runs record by record, then in one
//! batch, in random splits and across restarts (a fresh writer per batch, the trigger file
//! coming through the log): all runs must leave the same effects, and the invariants between
//! runs, timers and wait lists must hold. `known_bug = "…"` marks a case the engine fails today:
//! it still runs, and prints whether it still fails. `CASE=text` runs only matching cases.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::{Value, json};
use storeline_engine::ProjectionConfig;
use storeline_engine::apply::Applier;
use storeline_engine::triggers::{Registry, Stage, TriggerSet};
use storeline_log::StoredRecord;
use storeline_state::{SqliteStore, StateStore};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    case: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    known_bug: Option<String>,
    /// Also run with these batch sizes, restarting the writer before each batch.
    batches: Option<Vec<usize>>,
    /// Inputs and expectations are relative to this instant (default Monday 2026-01-05 00:00 UTC).
    base: Option<String>,
    triggers: String,
    input: Vec<Input>,
    #[serde(default)]
    expect: Expect,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    /// `"HH:MM:SS[.mmm]"` after the base (hours may pass 24), or `"+15m"` after the previous input.
    at: String,
    /// The event type; none: a `storeline.tick` (or a trigger file with `install`).
    #[serde(rename = "type")]
    ty: Option<String>,
    subject: Option<String>,
    #[serde(default)]
    data: Value,
    /// Fed as the `storeline.forwarded` copy the commerce partition would send.
    #[serde(default)]
    forwarded: bool,
    /// A new trigger file (`storeline.triggers`).
    install: Option<String>,
    id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// The whole outbox, in send order (`[]` for none).
    outbox: Option<Vec<OutboxExp>>,
    /// Every emitted event, in order (`[]` for none).
    emits: Option<Vec<EmitExp>>,
    #[serde(default)]
    runs: Vec<RunExp>,
    /// `"trigger"` (all versions) or `"trigger@N"` (the version in file N: 0 the first, then
    /// each `install` in order) → outcome → count (0: absent).
    #[serde(default)]
    tstat: BTreeMap<String, BTreeMap<String, i64>>,
    /// customer → every journal entry's `what`, in order.
    #[serde(default)]
    journal: BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutboxExp {
    trigger: String,
    template: Option<String>,
    customer: Option<String>,
    connector: Option<String>,
    channel: Option<String>,
    /// When it was sent (the outbox key's time).
    at: String,
    /// When the message was made (differs from `at` when it was held).
    created: Option<String>,
    version: Option<usize>,
    /// Fields that must be in the entry's `data`.
    data: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmitExp {
    #[serde(rename = "type")]
    ty: String,
    at: Option<String>,
    subject: Option<String>,
    data: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunExp {
    customer: String,
    trigger: String,
    #[serde(default)]
    key: String,
    status: String,
    phase: Option<String>,
    step: Option<usize>,
    version: Option<usize>,
    /// Every history entry's `what`, in order.
    history: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
enum Mode {
    OneByOne,
    OneBatch,
    Random(u64),
    /// Random splits, a fresh writer loading its triggers from the store before each batch.
    Restart(u64),
    /// The case's `batches`, restarting like `Restart`.
    Given(Vec<usize>),
}

/// What a run left behind, with the ids that depend on offsets scrubbed (restart mode has one
/// more record in front).
#[derive(Debug, PartialEq)]
struct Effects {
    outbox: Vec<(i64, Value)>,
    emits: Vec<Value>,
    ns: BTreeMap<&'static str, BTreeMap<String, Value>>,
    timers: Vec<String>,
}

const SEP: char = '\u{1f}';
const NS: [&str; 5] = ["run", "tstat", "jrnl", "wait", "arb"];

fn ms_of(s: &str) -> i64 {
    let (hms, frac) = s.split_once('.').unwrap_or((s, "0"));
    let p: Vec<i64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    assert_eq!(p.len(), 3, "'{s}' is not HH:MM:SS[.mmm]");
    ((p[0] * 60 + p[1]) * 60 + p[2]) * 1000 + format!("{frac:0<3}")[..3].parse::<i64>().unwrap()
}

fn time_str(ms: i64) -> String {
    storeline_event::format_time(&chrono::DateTime::from_timestamp_millis(ms).unwrap())
}

/// `ms` as the cases write it, relative to `base`.
fn rel(ms: i64, base: i64) -> String {
    let d = ms - base;
    let (h, m, s, f) = (d / 3_600_000, d / 60_000 % 60, d / 1000 % 60, d % 1000);
    format!("{h:02}:{m:02}:{s:02}.{f:03}")
}

fn record(offset: u64, id: &str, ty: &str, subject: Option<&str>, at: i64, data: Value) -> StoredRecord {
    let t = time_str(at);
    let mut v = json!({ "specversion": "1.0", "id": id, "source": "test", "type": ty, "time": t,
        "data": data, "received_at": t });
    if let Some(s) = subject {
        v["subject"] = json!(s);
    }
    StoredRecord {
        offset,
        timestamp: at,
        key: Bytes::from(subject.unwrap_or("").to_owned()),
        value: Bytes::from(serde_json::to_vec(&v).unwrap()),
    }
}

/// The case's records (with the first trigger file in front if `lead`) and every trigger file.
fn records(case: &Case, base: i64, lead: bool) -> (Vec<StoredRecord>, Vec<String>) {
    let mut out = Vec::new();
    let mut files = vec![case.triggers.clone()];
    let data = |src: &str| json!({ "version": TriggerSet::parse(src).unwrap().version, "source": src });
    if lead {
        out.push(record(0, "trg-file-0", "storeline.triggers", None, base, data(&case.triggers)));
    }
    let mut prev = base;
    for (n, i) in case.input.iter().enumerate() {
        let at = match i.at.strip_prefix('+') {
            Some(d) => prev + humantime::parse_duration(d).unwrap().as_millis() as i64,
            None => base + ms_of(&i.at),
        };
        prev = at;
        let off = out.len() as u64;
        let id = i.id.clone().unwrap_or_else(|| format!("e{n}"));
        let r = if let Some(src) = &i.install {
            files.push(src.clone());
            record(off, &id, "storeline.triggers", None, at, data(src))
        } else {
            let ty = i.ty.as_deref().unwrap_or("storeline.tick");
            let subject = i.subject.as_deref();
            if i.forwarded {
                let customer = i.data["customer_id"].as_str().or(subject).unwrap().to_owned();
                let inner = json!({ "id": id, "type": ty, "time": time_str(at), "subject": subject,
                    "customer": customer, "data": i.data });
                record(off, &format!("fwd-{id}"), "storeline.forwarded", Some(&customer), at, inner)
            } else {
                let data = if i.data.is_null() { json!({}) } else { i.data.clone() };
                record(off, &id, ty, subject, at, data)
            }
        };
        out.push(r);
    }
    (out, files)
}

fn splits(n: usize, mode: &Mode) -> Vec<usize> {
    match mode {
        Mode::Given(b) => [1].iter().chain(b).copied().collect(),
        Mode::OneByOne => vec![1; n],
        Mode::OneBatch => vec![n],
        Mode::Random(seed) | Mode::Restart(seed) => {
            let mut rng = rand::rngs::StdRng::seed_from_u64(*seed);
            let mut out = Vec::new();
            let mut left = n;
            while left > 0 {
                let k = rng.random_range(1..=left.min(4));
                out.push(k);
                left -= k;
            }
            out
        }
    }
}

/// Drops offset-dependent ids (`id`, `origin`, `dlv_…`/`trg_…` in texts).
fn scrub(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("id");
            m.remove("origin");
            m.values_mut().for_each(scrub);
        }
        Value::Array(a) => a.iter_mut().for_each(scrub),
        Value::String(s) => {
            for p in ["dlv_", "trg_"] {
                while let Some(i) = s.find(p).filter(|i| s[i + 4..].starts_with(|c: char| c.is_ascii_hexdigit())) {
                    s.replace_range(i..(i + 28).min(s.len()), "<id>");
                }
            }
        }
        _ => {}
    }
}

/// Scrubs ids; the outbox of one millisecond is ordered by id, so sort it by content.
fn normalize(e: &mut Effects) {
    e.outbox.iter_mut().for_each(|(_, v)| scrub(v));
    e.outbox.sort_by_key(|(t, v)| (*t, v.to_string()));
    e.emits.iter_mut().for_each(scrub);
    e.ns.values_mut().flat_map(|m| m.values_mut()).for_each(scrub);
}

async fn scan(store: &SqliteStore, ns: &str) -> Vec<(String, Vec<u8>)> {
    let rows = store.scan(ns, "", None, 100_000).await.unwrap();
    rows.into_iter().map(|r| (r.key, r.value.to_vec())).collect()
}

async fn run(case: &Case, base: i64, mode: &Mode) -> Effects {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("state.db")).await.unwrap());
    let restart = matches!(mode, Mode::Restart(_) | Mode::Given(_));
    let (recs, _) = records(case, base, restart);
    let new_applier = |committed| Applier::new(0, store.clone(), ProjectionConfig::default(), committed);
    let mut a = new_applier(0);
    if !restart {
        let set = TriggerSet::parse(&case.triggers).unwrap();
        a.triggers = Stage::new(Registry::new(set), None);
    }
    let mut emits = Vec::new();
    let mut end = 0;
    for k in splits(recs.len(), mode) {
        end += k;
        if restart {
            a = new_applier(a.committed);
            a.load_triggers(None).await.unwrap();
        }
        while (a.next as usize) < end {
            let from = a.next as usize;
            let (e, _) = a.apply(&recs[from..end]).await.unwrap();
            a.commit().await.unwrap();
            assert!(a.next as usize > from, "{mode:?}: apply made no progress at {from}");
            emits.extend(e);
        }
    }
    let mut outbox = Vec::new();
    for (k, v) in scan(&store, "outbox").await {
        let at: i64 = k.split(SEP).nth(1).unwrap().parse().unwrap();
        outbox.push((at, serde_json::from_slice(&v).unwrap()));
    }
    let emits = emits
        .into_iter()
        .map(|e| json!({ "type": e.ty, "subject": e.subject, "time": e.time, "data": e.data }))
        .collect();
    let mut ns = BTreeMap::new();
    for n in NS {
        let rows = scan(&store, n).await;
        ns.insert(n, rows.into_iter().map(|(k, v)| (k, serde_json::from_slice(&v).unwrap())).collect());
    }
    let timers = scan(&store, "timer").await.into_iter().map(|(k, _)| k).collect();
    Effects { outbox, emits, ns, timers }
}

/// Invariants between runs, timers, wait lists and counters.
fn invariants(e: &Effects, errs: &mut Vec<String>) {
    let runs = &e.ns["run"];
    for t in &e.timers {
        let mut p = t.splitn(4, SEP);
        let (_, _, kind, target) = (p.next(), p.next(), p.next().unwrap(), p.next().unwrap());
        let (row, what) = if kind == "r" { (runs.get(target), "run") } else { (e.ns["arb"].get(target), "arb") };
        if row.is_none_or(|r| r["timer"] != json!(t)) {
            errs.push(format!("timer {t:?} points to a {what} that does not hold it: {row:?}"));
        }
    }
    let mut active: BTreeMap<String, i64> = BTreeMap::new();
    for (k, r) in runs {
        if r["status"] == "active" {
            *active.entry(format!("{}@{}", r["trigger"].as_str().unwrap(), r["version"].as_str().unwrap())).or_default() += 1;
            if let Some(t) = r["timer"].as_str().filter(|t| !e.timers.iter().any(|x| x == t)) {
                errs.push(format!("active run {k:?} holds timer {t:?} that is not stored"));
            }
            if r["timer"].is_null() {
                errs.push(format!("active run {k:?} has no timer: nothing will move it on"));
            }
        }
    }
    for (corr, l) in &e.ns["wait"] {
        for x in l["runs"].as_array().unwrap() {
            if runs.get(x["run"].as_str().unwrap()).is_none_or(|r| r["status"] != "active") {
                errs.push(format!("wait list {corr:?} still lists {x} whose run is not active"));
            }
        }
    }
    for (id, s) in &e.ns["tstat"] {
        let n = active.get(id).copied().unwrap_or(0);
        if s.get("active").and_then(Value::as_i64).unwrap_or(0) != n {
            errs.push(format!("tstat {id}: active = {} but {n} runs are active", s["active"]));
        }
    }
}

fn subset(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => w.iter().all(|(k, v)| g.get(k).is_some_and(|x| subset(v, x))),
        _ => want == got,
    }
}

fn check(case: &Case, base: i64, files: &[String], e: &Effects, errs: &mut Vec<String>) {
    let version = |file: usize, name: &str| {
        let set = TriggerSet::parse(&files[file]).unwrap();
        set.trigger(name).unwrap_or_else(|| panic!("no trigger {name} in file {file}")).version.clone()
    };
    let at = |s: &String| json!(base + ms_of(s));
    let x = &case.expect;
    if let Some(want) = &x.outbox {
        // Entries of one millisecond are in id order: compare by (time, customer, trigger, template).
        let sort_key = |t: i64, v: &Value| (t, v["customer"].to_string(), v["trigger"].to_string(), v["template"].to_string());
        let mut want: Vec<&OutboxExp> = want.iter().collect();
        want.sort_by_key(|w| sort_key(base + ms_of(&w.at), &json!({ "customer": w.customer, "trigger": w.trigger, "template": w.template })));
        let mut outbox = e.outbox.clone();
        outbox.sort_by_key(|(t, v)| sort_key(*t, v));
        let got: Vec<String> = outbox.iter().map(|(t, v)| format!("{} {} {} {}", rel(*t, base), v["trigger"], v["template"], v["customer"])).collect();
        if want.len() != e.outbox.len() {
            errs.push(format!("outbox: want {} entries, got {}: {got:#?}", want.len(), outbox.len()));
        }
        for (i, (w, (t, g))) in want.iter().zip(&outbox).enumerate() {
            let mut bad = Vec::new();
            let mut field = |name: &str, want: Option<Value>, got: &Value| {
                if let Some(w) = want.filter(|w| w != got) {
                    bad.push(format!("{name}: want {w}, got {got}"));
                }
            };
            field("at", Some(at(&w.at)), &json!(t));
            field("trigger", Some(json!(w.trigger)), &g["trigger"]);
            field("template", w.template.as_ref().map(|v| json!(v)), &g["template"]);
            field("customer", w.customer.as_ref().map(|v| json!(v)), &g["customer"]);
            field("connector", w.connector.as_ref().map(|v| json!(v)), &g["connector"]);
            field("channel", w.channel.as_ref().map(|v| json!(v)), &g["channel"]);
            field("created", w.created.as_ref().map(at), &g["created_at"]);
            field("version", w.version.map(|f| json!(version(f, &w.trigger))), &g["version"]);
            if let Some(d) = w.data.as_ref().filter(|d| !subset(d, &g["data"])) {
                bad.push(format!("data: want ⊇ {d}, got {}", g["data"]));
            }
            if !bad.is_empty() {
                errs.push(format!("outbox[{i}] ({}): {}", got[i], bad.join("; ")));
            }
        }
    }
    if let Some(want) = &x.emits {
        let got: Vec<String> = e.emits.iter().map(|v| format!("{} {}", rel(v["time"].as_i64().unwrap(), base), v["type"])).collect();
        let ok = want.len() == e.emits.len()
            && want.iter().zip(&e.emits).all(|(w, g)| {
                g["type"] == json!(w.ty)
                    && w.at.as_ref().is_none_or(|a| g["time"] == at(a))
                    && w.subject.as_ref().is_none_or(|s| g["subject"] == json!(s))
                    && w.data.as_ref().is_none_or(|d| subset(d, &g["data"]))
            });
        if !ok {
            errs.push(format!("emits: want {:?}, got {got:?} ({:?})", want.iter().map(|w| (&w.ty, &w.at)).collect::<Vec<_>>(), e.emits));
        }
    }
    for w in &x.runs {
        let key = format!("{}{SEP}{}{SEP}{}", w.customer, w.trigger, w.key);
        let Some(r) = e.ns["run"].get(&key) else {
            errs.push(format!("run {}/{}/{}: none", w.customer, w.trigger, w.key));
            continue;
        };
        let history: Vec<&str> = r["history"].as_array().unwrap().iter().map(|h| h["what"].as_str().unwrap()).collect();
        let ok = r["status"] == json!(w.status)
            && w.phase.as_ref().is_none_or(|p| r["phase"] == json!(p))
            && w.step.is_none_or(|s| r["step"] == json!(s))
            && w.version.is_none_or(|f| r["version"] == json!(version(f, &w.trigger)))
            && w.history.as_ref().is_none_or(|h| *h == history);
        if !ok {
            errs.push(format!("run {}/{}/{}: want {} {:?} step {:?} history {:?}; got {} {} step {} history {:?}",
                w.customer, w.trigger, w.key, w.status, w.phase, w.step, w.history, r["status"], r["phase"], r["step"], r["history"]));
        }
    }
    for (name, want) in &x.tstat {
        let got = tstat(e, name, |n, f| version(f, n));
        for (k, v) in want {
            if got.get(k).copied().unwrap_or(0) != *v {
                errs.push(format!("tstat {name}.{k}: want {v}, got {} (all: {got:?})", got.get(k).copied().unwrap_or(0)));
            }
        }
    }
    for (c, want) in &x.journal {
        let got: Vec<String> = e.ns["jrnl"].get(c).map_or(vec![], |j| {
            j["entries"].as_array().unwrap().iter().map(|d| d["what"].as_str().unwrap().to_owned()).collect()
        });
        if got != *want {
            errs.push(format!("journal {c}: want {want:?}, got {got:?}"));
        }
    }
}

/// Counters of `name` (`trigger` summed over versions, or `trigger@N`).
fn tstat(e: &Effects, name: &str, version: impl Fn(&str, usize) -> String) -> BTreeMap<String, i64> {
    let id = name.split_once('@').map(|(n, f)| format!("{n}@{}", version(n, f.parse().unwrap())));
    let mut out = BTreeMap::new();
    for (k, s) in &e.ns["tstat"] {
        if id.as_ref().map_or(k.split('@').next() == Some(name), |id| k == id) {
            for (o, n) in s.as_object().unwrap() {
                *out.entry(o.clone()).or_default() += n.as_i64().unwrap();
            }
        }
    }
    out
}

fn dump(e: &Effects, base: i64) -> String {
    let mut s = String::new();
    for (t, v) in &e.outbox {
        s += &format!("  outbox {} {} {} {} data={}\n", rel(*t, base), v["trigger"], v["template"], v["customer"], v["data"]);
    }
    for v in &e.emits {
        s += &format!("  emit {} {} {}\n", rel(v["time"].as_i64().unwrap(), base), v["type"], v["data"]);
    }
    for (k, r) in &e.ns["run"] {
        let h: Vec<String> = r["history"].as_array().unwrap().iter()
            .map(|h| format!("{} {} {}", rel(h["at"].as_i64().unwrap(), base), h["what"].as_str().unwrap(), h["detail"].as_str().unwrap_or(""))).collect();
        s += &format!("  run {:?} {} {}\n    {}\n", k, r["status"], r["phase"], h.join("\n    "));
    }
    for (k, v) in &e.ns["tstat"] {
        s += &format!("  tstat {k} {v}\n");
    }
    s
}

/// Runs one case in every mode; `Err` lists what went wrong.
async fn run_case(case: &Case) -> Result<(), String> {
    let base = chrono::DateTime::parse_from_rfc3339(case.base.as_deref().unwrap_or("2026-01-05T00:00:00Z")).unwrap().timestamp_millis();
    let (_, files) = records(case, base, false);
    let first = run(case, base, &Mode::OneByOne).await;
    let mut errs = Vec::new();
    check(case, base, &files, &first, &mut errs);
    invariants(&first, &mut errs);
    if !errs.is_empty() {
        return Err(format!("{}\n effects:\n{}", errs.join("\n"), dump(&first, base)));
    }
    let mut want = first;
    normalize(&mut want);
    let mut modes = vec![Mode::OneBatch, Mode::Random(1), Mode::Random(2), Mode::Random(3), Mode::Restart(4), Mode::Restart(5)];
    if let Some(b) = &case.batches {
        assert_eq!(b.iter().sum::<usize>(), case.input.len(), "{}: batches must add up to the inputs", case.name);
        modes.push(Mode::Given(b.clone()));
    }
    for mode in modes {
        let mut got = run(case, base, &mode).await;
        normalize(&mut got);
        if got != want {
            let mut diff = Vec::new();
            check(case, base, &files, &got, &mut diff);
            invariants(&got, &mut diff);
            return Err(format!("{mode:?} (splits {:?}) differs from record by record:\n{}\n record by record:\n{} {mode:?}:\n{}",
                splits(case.input.len() + usize::from(matches!(mode, Mode::Restart(_))), &mode), diff.join("\n"), dump(&want, base), dump(&got, base)));
        }
    }
    Ok(())
}

#[tokio::test]
async fn trigger_cases() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/trigger_cases");
    let mut paths: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    let only = std::env::var("CASE").ok();
    let (mut passed, mut failed, mut known) = (0, Vec::new(), 0);
    for p in paths.iter().filter(|p| p.extension().is_some_and(|e| e == "toml")) {
        let file: CaseFile = toml::from_str(&std::fs::read_to_string(p).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let fname = p.file_name().unwrap().to_string_lossy();
        for case in file.case.iter().filter(|c| only.as_ref().is_none_or(|o| c.name.contains(o.as_str()))) {
            let result = run_case(case).await;
            match (&case.known_bug, result) {
                (None, Ok(())) => passed += 1,
                (None, Err(e)) => failed.push(format!("✗ {fname}: {}\n{e}", case.name)),
                (Some(bug), Ok(())) => println!("! {fname}: {}: marked known_bug ({bug}) but PASSES now: remove the mark", case.name),
                (Some(bug), Err(e)) => {
                    known += 1;
                    println!("~ {fname}: {}: known bug, skipped: {bug}", case.name);
                    if std::env::var("VERBOSE").is_ok() {
                        println!("{e}");
                    }
                }
            }
        }
    }
    println!("{passed} passed, {} failed, {known} known bugs", failed.len());
    assert!(failed.is_empty(), "\n{}", failed.join("\n\n"));
}
