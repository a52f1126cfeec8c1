//! The read side of triggers: the current file, counters summed over partitions, a customer's
//! journeys with every reason, and aggregate values.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use storeline_state::StateStore;

use super::def::TriggerSet;
use super::rows::{self, Arb, Definition, Journal, Run, Stats, Window, ns};
use super::window::combine;
use crate::error::Result;

fn time(ms: i64) -> Value {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| Value::String(storeline_event::format_time(&t)))
        .unwrap_or(Value::Null)
}

/// Every row of `ns` under `prefix`, all owners.
pub(crate) async fn scan_all<S: StateStore>(
    store: &S,
    ns: &str,
    prefix: &str,
    cap: usize,
) -> Result<Vec<(String, u32, bytes::Bytes)>> {
    let mut out = Vec::new();
    let mut after: Option<(String, u32)> = None;
    loop {
        let page = store
            .scan(
                ns,
                prefix,
                after.as_ref().map(|(k, o)| (k.as_str(), *o)),
                1024,
            )
            .await?;
        let Some(last) = page.last() else { break };
        after = Some((last.key.clone(), last.owner));
        let n = page.len();
        out.extend(page.into_iter().map(|r| (r.key, r.owner, r.value)));
        if n < 1024 || out.len() >= cap {
            break;
        }
    }
    Ok(out)
}

/// The trigger file each partition runs: `(partition, version, source)`.
pub async fn current<S: StateStore>(store: &S) -> Result<Vec<(u32, Definition)>> {
    let mut out = Vec::new();
    for (owner, b) in store.get(ns::TRIGDEF, "current").await? {
        if let Ok(d) = serde_json::from_slice::<Definition>(&b) {
            out.push((owner, d));
        }
    }
    out.sort_by_key(|(p, _)| *p);
    Ok(out)
}

/// Counters per `trigger@version`, summed over partitions.
pub async fn stats<S: StateStore>(store: &S) -> Result<BTreeMap<String, BTreeMap<String, i64>>> {
    let mut out: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for (key, _, b) in scan_all(store, ns::TSTAT, "", 100_000).await? {
        if let Ok(s) = serde_json::from_slice::<Stats>(&b) {
            let e = out.entry(key).or_default();
            for (k, v) in s.counts {
                *e.entry(k).or_default() += v;
            }
        }
    }
    Ok(out)
}

/// Runs still active on a version (the `active` counter).
pub fn active(stats: &BTreeMap<String, BTreeMap<String, i64>>, id: &str) -> i64 {
    stats
        .get(id)
        .and_then(|s| s.get("active"))
        .copied()
        .unwrap_or(0)
}

/// A customer's runs (each with its steps and reasons), the decisions that started none, and
/// held messages, over all of the customer's identities.
pub async fn journeys<S: StateStore>(store: &S, identities: &[String]) -> Result<Value> {
    let mut runs = Vec::new();
    let mut decisions = Vec::new();
    let mut held = Vec::new();
    let ids: BTreeSet<&String> = identities.iter().collect();
    for id in ids {
        let prefix = format!("{id}{}", rows::SEP);
        for (key, owner, b) in scan_all(store, ns::RUN, &prefix, 10_000).await? {
            let Ok(r) = serde_json::from_slice::<Run>(&b) else {
                continue;
            };
            let (_, _, k) = rows::split_run_key(&key);
            runs.push(json!({
                "trigger": r.trigger, "version": r.version, "key": k, "identity": id,
                "partition": owner, "status": r.status, "phase": r.phase, "step": r.step,
                "started_at": time(r.started_at), "updated_at": time(r.updated_at),
                "restarts": r.restarts, "event": r.event,
                "history": r.history.iter().map(|e| json!({
                    "at": time(e.at), "what": e.what, "step": e.step, "detail": e.detail,
                })).collect::<Vec<_>>(),
                "_at": r.started_at,
            }));
        }
        for (_, b) in store.get(ns::JRNL, id).await? {
            if let Ok(j) = serde_json::from_slice::<Journal>(&b) {
                decisions.extend(j.entries.into_iter().map(|d| {
                    json!({
                        "at": time(d.at), "trigger": d.trigger, "version": d.version,
                        "what": d.what, "detail": d.detail, "event_id": d.event_id, "_at": d.at,
                    })
                }));
            }
        }
        for (_, b) in store.get(ns::ARB, id).await? {
            if let Ok(a) = serde_json::from_slice::<Arb>(&b) {
                held.extend(a.held.into_iter().map(|h| {
                    json!({
                        "until": time(h.not_before), "reason": h.reason, "channel": h.channel,
                        "priority": h.priority, "trigger": h.entry.trigger,
                        "delivery_id": h.entry.id, "_at": h.not_before,
                    })
                }));
            }
        }
    }
    for list in [&mut runs, &mut decisions, &mut held] {
        list.sort_by(|a, b| b["_at"].as_i64().cmp(&a["_at"].as_i64()));
        for v in list.iter_mut() {
            if let Some(o) = v.as_object_mut() {
                o.remove("_at");
            }
        }
    }
    Ok(json!({ "runs": runs, "decisions": decisions, "held": held }))
}

/// An aggregate's value for `key` now (all partitions' windows combined).
pub async fn aggregate<S: StateStore>(
    store: &S,
    set: &TriggerSet,
    name: &str,
    key: &str,
    now: i64,
) -> Result<Option<Value>> {
    let Some(a) = set.aggregates.iter().find(|a| a.name == name) else {
        return Ok(None);
    };
    let rows = store
        .get(ns::AGG, &format!("{name}{}{key}", rows::SEP))
        .await?;
    let windows: Vec<Window> = rows
        .into_iter()
        .filter_map(|(_, b)| serde_json::from_slice(&b).ok())
        .collect();
    Ok(Some(combine(&windows, a.window_ms, a.func, now)))
}

/// The keys of an aggregate that have a window, with their values (at most `limit`).
pub async fn aggregate_keys<S: StateStore>(
    store: &S,
    set: &TriggerSet,
    name: &str,
    now: i64,
    limit: usize,
) -> Result<Option<Vec<(String, Value)>>> {
    let Some(a) = set.aggregates.iter().find(|a| a.name == name) else {
        return Ok(None);
    };
    let prefix = format!("{name}{}", rows::SEP);
    let mut by_key: BTreeMap<String, Vec<Window>> = BTreeMap::new();
    for (key, _, b) in scan_all(store, ns::AGG, &prefix, limit * 8).await? {
        if let Ok(w) = serde_json::from_slice::<Window>(&b) {
            by_key
                .entry(key[prefix.len()..].to_owned())
                .or_default()
                .push(w);
        }
    }
    Ok(Some(
        by_key
            .into_iter()
            .take(limit)
            .map(|(k, ws)| (k, combine(&ws, a.window_ms, a.func, now)))
            .collect(),
    ))
}
