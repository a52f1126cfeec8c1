//! The person: identities that identify, sign-up and alias events merge share one trigger state,
//! kept with the person's *home* identity (the user id the merge names).
//!
//! Everything travels through the log, so live, replay and restarts decide alike:
//!
//! ```text
//!  link event (home H, others X…) in its partition
//!    ├─► H's partition: awaits a hand-over from each X (inline when the event is stored there)
//!    └─► storeline.merged {identity: X, home: H} ─► X's partition: X's runs, caps and held
//!          messages leave ─► storeline.handoff ─► H's partition adopts them, then applies the
//!          person's events it saw since the merge to them
//!  later events of X (own or forwarded) ─► X's partition forwards them to H for triggers
//! ```
//!
//! A run adopted under a key the person already has a run for: the active one wins (the
//! earlier started if both are); the other ends as `merged`.

use serde_json::{Value, json};

use super::FORWARDED;
use super::machine::{Doc, Machine};
use super::rows::{self, Awaiting, Merge, Run, Status, Target};
use crate::event::Ev;
use crate::project::Emit;

/// A merge notice for the identity that is the record's subject.
pub const MERGED: &str = "storeline.merged";
/// An identity's trigger state on its way to the person it was merged into.
pub const HANDOFF: &str = "storeline.handoff";
/// How many times one event or hand-over is passed on (merges chain: A into B, B into C).
pub const HOPS: u64 = 4;
/// The most runs one hand-over carries (the rest stay, and end by their own timers).
const RUNS_PER_HANDOFF: usize = 256;

/// The event types whose identities merge into one person for triggers.
pub fn is_link_type(ty: &str) -> bool {
    matches!(
        ty,
        "customer.identified" | "customer.signed_up" | "customer.aliased"
    )
}

/// `(home, others)` of a link event: the home is the first user id it names, else the first
/// identity.
pub fn merge_of(ev: &Ev) -> Option<(String, Vec<String>)> {
    if !is_link_type(&ev.ty) {
        return None;
    }
    let ids = crate::project::linked(ev);
    if ids.len() < 2 {
        return None;
    }
    let home = ids
        .iter()
        .find(|(_, user)| *user)
        .unwrap_or(&ids[0])
        .0
        .clone();
    let others = ids
        .into_iter()
        .map(|(i, _)| i)
        .filter(|i| *i != home)
        .collect();
    Some((home, others))
}

/// `data.hops` of an engine record.
pub fn hops(v: &Value) -> u64 {
    v.get("hops").and_then(Value::as_u64).unwrap_or(0)
}

/// A run as it travels in a hand-over.
fn carried(trigger_key: (&str, &str), run: &Run, lists: Vec<(String, String, bool)>) -> Value {
    json!({ "trigger": trigger_key.0, "key": trigger_key.1, "run": run, "lists": lists })
}

impl Machine<'_> {
    /// A link event was applied here: the home awaits the others' hand-overs (when the home
    /// is this record's subject, so its partition is this one), and each other identity gets
    /// a merge notice.
    pub fn link(&mut self, ev: &Ev, home: &str, others: &[String], inline_home: bool) {
        let p = self.partition;
        // Identities merged into the home before (a repeated login) move nothing again; only the
        // home's partition knows, so only there are they left out.
        let fresh: Vec<(usize, String)> = others
            .iter()
            .enumerate()
            .filter(|(_, x)| !(inline_home && self.is_merged(home, x)))
            .map(|(i, x)| (i, x.clone()))
            .collect();
        if fresh.is_empty() {
            return;
        }
        let members: Vec<String> = fresh.iter().map(|(_, x)| x.clone()).collect();
        if inline_home {
            self.await_handoffs(home, &members, &ev.id);
        } else {
            self.emits.push(Emit {
                id: format!("mrg_{p}_{}_h", ev.offset),
                ty: MERGED.into(),
                subject: Some(home.to_owned()),
                time: ev.time,
                data: json!({ "identity": home, "home": home, "members": members, "via": ev.id, "at": self.clock }),
            });
        }
        for (i, x) in fresh {
            self.emits.push(Emit {
                id: format!("mrg_{p}_{}_{i}", ev.offset),
                ty: MERGED.into(),
                subject: Some(x.clone()),
                time: ev.time,
                data: json!({ "identity": x, "home": home, "via": ev.id, "at": self.clock }),
            });
        }
    }

    fn await_handoffs(&mut self, home: &str, others: &[String], via: &str) {
        let clock = self.clock;
        let row = self.views.person.upsert(home);
        for x in others {
            if !row.awaiting.iter().any(|a| a.from == *x) {
                row.awaiting.push(Awaiting {
                    from: x.clone(),
                    since: clock,
                });
            }
            if !row.merged.iter().any(|m| m.id == *x) {
                row.merged.push(Merge {
                    id: x.clone(),
                    at: clock,
                    via: via.to_owned(),
                });
            }
        }
        if row.awaiting.len() > rows::PERSON_MERGES {
            let extra = row.awaiting.len() - rows::PERSON_MERGES;
            row.awaiting.drain(..extra);
        }
        if row.merged.len() > rows::PERSON_MERGES {
            let extra = row.merged.len() - rows::PERSON_MERGES;
            row.merged.drain(..extra);
        }
    }

    /// Whether `x` is merged into `home` already (a repeated login announces nothing).
    pub fn is_merged(&self, home: &str, x: &str) -> bool {
        self.views
            .person
            .get(home)
            .is_some_and(|r| r.merged.iter().any(|m| m.id == x))
    }

    /// A `storeline.merged` notice: as the home, await the members; as a member, hand this
    /// identity's trigger state to the home (or, without a home, stop forwarding: unmerged).
    pub fn merged(&mut self, data: &Value, ev: &Ev) {
        let Some(x) = data.get("identity").and_then(Value::as_str) else {
            return;
        };
        let via = data.get("via").and_then(Value::as_str).unwrap_or(&ev.id);
        let home = data.get("home").and_then(Value::as_str);
        if home == Some(x) {
            let members: Vec<String> = data
                .get("members")
                .and_then(Value::as_array)
                .map(|m| {
                    m.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            return self.await_handoffs(x, &members, via);
        }
        let Some(home) = home else {
            if let Some(row) = self.views.person.get_mut(x) {
                row.home = None;
            }
            return self.note(x, "unmerged", format!("split off by {via}"), via);
        };
        let clock = self.clock;
        let row = self.views.person.upsert(x);
        if row.home.as_ref().is_some_and(|h| h.id == home) {
            return;
        }
        row.home = Some(Merge {
            id: home.to_owned(),
            at: clock,
            via: via.to_owned(),
        });
        let orders = row.orders.take();
        // Every run of the identity is loaded (the batch listed them by prefix).
        let prefix = format!("{x}{}", rows::SEP);
        let keys: Vec<String> = self
            .views
            .run
            .keys_with_prefix(&prefix)
            .into_iter()
            .take(RUNS_PER_HANDOFF)
            .collect();
        let mut runs = Vec::new();
        for rk in keys {
            // The run as it stands, timer key included (it carries the due time).
            let Some(run) = self.views.run.get(&rk).cloned() else {
                continue;
            };
            self.clear_timer(&rk);
            // The wait rows the run is listed in, with what for.
            let mut lists = Vec::new();
            for corr in &run.listed {
                if let Some(l) = self.views.wait.get_mut(corr) {
                    for e in l.runs.iter().filter(|e| e.run == rk) {
                        lists.push((corr.clone(), e.ty.clone(), e.cancel));
                    }
                    l.runs.retain(|e| e.run != rk);
                    if l.runs.is_empty() {
                        self.views.wait.remove(corr);
                    }
                }
            }
            let (_, trigger, key) = rows::split_run_key(&rk);
            runs.push(carried((trigger, key), &run, lists));
            self.views.run.remove(&rk);
        }
        let arb = self.views.arb.get(x).cloned();
        if let Some(a) = &arb {
            if let Some(k) = &a.timer {
                self.views.due.remove(k);
                self.views.timers.insert(k.clone(), false);
            }
            self.views.arb.remove(x);
        }
        // What the identity's events said about it, for the person's one `customer` (where
        // it was seen lately is left behind).
        let frag = self.views.frag.get(x).cloned().map(|mut f| {
            f.recent.clear();
            f
        });
        let p = self.partition;
        let n = runs.len();
        if runs.is_empty() && arb.is_none() && orders.is_none() && frag.is_none() {
            // Nothing to hand over (most e-mail identities): no record, no journal entry (the
            // profile's merges say it); the home stops awaiting it by time.
            return;
        }
        self.emits.push(Emit {
            id: format!("hnd_{p}_{}", ev.offset),
            ty: HANDOFF.into(),
            subject: Some(home.to_owned()),
            time: ev.time,
            data: json!({
                "from": x, "home": home, "via": via, "at": clock, "hops": hops(data),
                "runs": runs, "arb": arb, "orders": orders, "frag": frag,
            }),
        });
        self.note(
            x,
            "merged",
            format!("into {home} by {via}; {n} runs handed over"),
            via,
        );
    }

    /// A `storeline.handoff`: adopt the runs, caps and held messages of an identity merged into
    /// this person, then apply to them the person's events seen since the merge.
    pub fn adopt(&mut self, data: &Value, ev: &Ev) {
        let (Some(from), Some(home)) = (
            data.get("from").and_then(Value::as_str),
            data.get("home").and_then(Value::as_str),
        ) else {
            return;
        };
        // Merged on: pass it along to where the person lives now.
        let onward = self
            .views
            .person
            .get(home)
            .and_then(|r| r.home.as_ref())
            .map(|h| h.id.clone());
        if let Some(next) = onward.filter(|_| hops(data) < HOPS) {
            let mut d = data.clone();
            d["home"] = json!(next);
            d["hops"] = json!(hops(data) + 1);
            self.emits.push(Emit {
                id: format!("hnd_{}_{}", self.partition, ev.offset),
                ty: HANDOFF.into(),
                subject: Some(next),
                time: ev.time,
                data: d,
            });
            return;
        }
        let via = data.get("via").and_then(Value::as_str).unwrap_or("");
        let mut adopted = Vec::new();
        for c in data
            .get("runs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(rk) = self.adopt_run(c, from, home, via) {
                adopted.push(rk);
            }
        }
        if let Some(a) = data
            .get("arb")
            .and_then(|a| serde_json::from_value::<rows::Arb>(a.clone()).ok())
        {
            let mine = self.views.arb.upsert(home);
            mine.sent.extend(a.sent);
            mine.sent.sort();
            for mut h in a.held {
                let (_, t, k) = rows::split_run_key(&h.run);
                h.run = rows::run_key(home, t, k);
                // The message is the person's now (consent, caps and quiet hours too).
                h.entry.customer = Some(home.to_owned());
                mine.held.push(h);
            }
            self.schedule_arb(home);
        }
        if let Some(o) = data
            .get("orders")
            .and_then(|o| serde_json::from_value::<crate::model::OrderStats>(o.clone()).ok())
        {
            let row = self.views.person.upsert(home);
            let mine = row.orders.get_or_insert_with(Default::default);
            crate::project::combine_orders(mine, &o);
        }
        let clock = self.clock;
        let row = self.views.person.upsert(home);
        if let Some(f) = data
            .get("frag")
            .and_then(|f| serde_json::from_value::<crate::model::Frag>(f.clone()).ok())
        {
            row.frags.retain(|(id, _)| id != from);
            row.frags.push((from.to_owned(), f));
            if row.frags.len() > rows::PERSON_FRAGS {
                row.frags.remove(0);
            }
        }
        let since = row
            .awaiting
            .iter()
            .position(|a| a.from == from)
            .map(|i| row.awaiting.remove(i).since);
        let meanwhile: Vec<(i64, Value)> = match since {
            Some(since) => row
                .meanwhile
                .iter()
                .filter(|(at, _)| *at >= since)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        if row.awaiting.is_empty() {
            row.meanwhile.clear();
        }
        if !row.merged.iter().any(|m| m.id == from) {
            row.merged.push(Merge {
                id: from.to_owned(),
                at: clock,
                via: via.to_owned(),
            });
            if row.merged.len() > rows::PERSON_MERGES {
                row.merged.remove(0);
            }
        }
        // Events of the person applied here while the hand-over was on its way.
        for (at, value) in meanwhile {
            let doc = Doc::of_value(value, Some(home.to_owned()), at);
            for rk in &adopted {
                self.catch_up(rk, &doc, at);
            }
        }
        self.note(
            home,
            "merged",
            format!("{from} merged in by {via}; {} runs adopted", adopted.len()),
            via,
        );
    }

    fn adopt_run(&mut self, c: &Value, from: &str, home: &str, via: &str) -> Option<String> {
        let trigger = c.get("trigger")?.as_str()?;
        let key = c.get("key").and_then(Value::as_str).unwrap_or("");
        let mut run: Run = serde_json::from_value(c.get("run")?.clone()).ok()?;
        let rk = rows::run_key(home, trigger, key);
        let due = run
            .timer
            .take()
            .and_then(|k| rows::parse_timer_key(&k).map(|(d, _)| d));
        let from_corr = format!("c:{from}");
        let home_corr = format!("c:{home}");
        run.listed = run
            .listed
            .iter()
            .map(|l| {
                if *l == from_corr {
                    home_corr.clone()
                } else {
                    l.clone()
                }
            })
            .collect();
        if run.merged_from.is_none() {
            run.merged_from = Some((from.to_owned(), self.clock));
        }
        run.log(
            self.clock,
            "handed_over",
            None,
            Some(format!("from {from}, merged into {home} by {via}")),
        );
        if let Some(mine) = self.views.run.get(&rk).cloned() {
            let keep_mine = mine.status == Status::Active
                && (run.status != Status::Active || mine.started_at <= run.started_at);
            if keep_mine || run.status != Status::Active {
                // The person already has this journey (or the adopted one is over): the
                // adopted run ends here; its history stays in the journal.
                let detail = format!(
                    "{} run of {from} ({}) ended: {home} has this journey",
                    run.trigger, run.origin
                );
                if run.status == Status::Active
                    && let Some(t) = self.reg.version(&run.trigger, &run.version)
                {
                    // It was counted active where it started.
                    self.count(&t, Some(home), "merged", &rk);
                    self.count(&t, Some(home), "-active", &rk);
                }
                self.note(home, "merged_run_ended", detail, via);
                return None;
            }
            // The adopted run is active and the person's is not (or started later): the
            // adopted one takes the key.
            self.end_run(
                &rk,
                "merged",
                format!("replaced by {from}'s run ({})", run.origin),
            );
        }
        self.views.run.put(&rk, run.clone());
        self.mark_runs(home);
        for l in c
            .get("lists")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (Some(corr), Some(ty), Some(cancel)) = (
                l.get(0).and_then(Value::as_str),
                l.get(1).and_then(Value::as_str),
                l.get(2).and_then(Value::as_bool),
            ) else {
                continue;
            };
            let corr = if corr == from_corr { &home_corr } else { corr };
            let w = self.views.wait.upsert(corr);
            let e = rows::Listing {
                ty: ty.to_owned(),
                run: rk.clone(),
                cancel,
            };
            if !w.runs.contains(&e) {
                w.runs.push(e);
            }
        }
        if let Some(due) = due.filter(|_| run.status == Status::Active) {
            let k = rows::timer_key(self.partition, due, &Target::Run(rk.clone()));
            self.views.timers.insert(k.clone(), true);
            self.views.due.insert(k.clone());
            if let Some(r) = self.views.run.get_mut(&rk) {
                r.timer = Some(k);
            }
        }
        Some(rk)
    }

    /// Applies an event of the person, seen here at `at` before the run arrived, to an
    /// adopted run: as if it had been here then, unless the run's deadline had passed by then.
    fn catch_up(&mut self, rk: &str, doc: &Doc, at: i64) {
        let Some(run) = self.views.run.get(rk) else {
            return;
        };
        if run.status != Status::Active {
            return;
        }
        // A timer due by the event's time fires first (the run may have moved on).
        self.fire_overdue(rk, at);
        self.deliver_listed(doc, Some(rk));
    }

    /// Marks `customer` as having runs here, so a merge looks for them (see
    /// `rows::RUNS_MARKED_KEY`).
    pub fn mark_runs(&mut self, customer: &str) {
        if !self.views.person.get(customer).is_some_and(|r| r.runs) {
            self.views.person.upsert(customer).runs = true;
        }
    }

    /// Keeps an event of the person for the hand-overs it awaits.
    pub fn remember_for_handoffs(&mut self, customer: &str, doc: &Doc) {
        let clock = self.clock;
        if self
            .views
            .person
            .get(customer)
            .is_none_or(|r| r.awaiting.is_empty())
        {
            return;
        }
        let Some(row) = self.views.person.get_mut(customer) else {
            return;
        };
        // A hand-over takes milliseconds; one that did not come (the identity held nothing)
        // is not awaited for ever.
        if row
            .awaiting
            .iter()
            .any(|a| a.since < clock - rows::AWAIT_MS)
        {
            row.awaiting.retain(|a| a.since >= clock - rows::AWAIT_MS);
            if row.awaiting.is_empty() {
                row.meanwhile.clear();
                return;
            }
        }
        if row.meanwhile.len() < rows::AWAITING_EVENTS {
            row.meanwhile.push((clock, doc.value.clone()));
        }
    }

    /// The person an identity's events go to for triggers, when it was merged into another.
    pub fn home_of(&self, customer: &str) -> Option<String> {
        self.views
            .person
            .get(customer)
            .and_then(|r| r.home.as_ref())
            .map(|h| h.id.clone())
    }

    /// Sends an event of a merged identity to its person's partition (its triggers run there).
    pub fn forward_to_home(&mut self, doc: &Doc, home: &str, ev: &Ev) {
        let mut v = doc.value.clone();
        if v.get("received_at").is_none() {
            v["received_at"] = json!(super::machine::fmt(doc.received));
        }
        let via = v.get("via").cloned();
        v["via"] = via.unwrap_or_else(|| json!(doc.customer));
        v["customer"] = json!(home);
        v["hops"] = json!(hops(&doc.value) + 1);
        self.emits.push(Emit {
            id: format!("fwd_{}_{}", self.partition, ev.offset),
            ty: FORWARDED.into(),
            subject: Some(home.to_owned()),
            time: ev.time,
            data: v,
        });
    }

    pub(super) fn note(&mut self, customer: &str, what: &str, detail: String, via: &str) {
        let entry = rows::Decision {
            at: self.clock,
            trigger: String::new(),
            version: String::new(),
            what: what.to_owned(),
            detail: Some(detail),
            event_id: Some(via.to_owned()).filter(|v| !v.is_empty()),
        };
        self.journal(customer, entry);
    }
}
