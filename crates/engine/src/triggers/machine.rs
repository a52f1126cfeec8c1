//! The trigger state machine: a pure function of the rows it is given, the event (or timer) and
//! the partition's clock. It changes runs, waits, timers, aggregates, arbitration and journals in
//! the [`Views`], and returns the events it wants appended as data. No I/O, no wall clock.
//!
//! ```text
//!  event ─► aggregates ─► runs waiting for it / cancelled by it ─► triggers it starts
//!  timer ─► debounce over │ delay over │ wait timed out │ held message's window opened
//!  run:  start ─► [debounce] ─► step 0 ─► step 1 … ─► finished      (cancel_on: cancelled)
//!  message: consent ─► quiet hours ─► caps ─► outbox                (held: an `arb` timer)
//! ```

use serde_json::{Map, Value, json};

use super::arbitrate::next_local_time;
use super::cel::{EventScope, Scope};
use super::def::{AggFn, Continue, Match, Step, Trigger};
use super::rows::{self, Decision, Phase, Run, Status, Target, Window};
use super::window::{add_to_window, combine};
use super::{Outcome, Registry};
use crate::project::Emit;
use crate::read::Profile;
use crate::views::Views;

pub use super::doc::{Doc, doc_of, is_forwarded_type};

/// One evaluation step's context.
pub struct Machine<'a> {
    pub partition: u32,
    pub reg: &'a Registry,
    pub views: &'a mut Views,
    pub clock: i64,
    /// The partition's clock: outbox rows are never written before it (the delivery worker
    /// takes them in by time), even when a timer fires at its earlier due time.
    pub floor: i64,
    /// Events to append (emit / set_trait actions).
    pub emits: &'a mut Vec<Emit>,
    /// Every decision, for metrics and backtest reports.
    pub outcomes: &'a mut Vec<Outcome>,
}

impl Machine<'_> {
    // ------------------------------------------------------------------------------ events

    /// Updates aggregates with `doc`: the stored original into `agg`, a forwarded copy into
    /// `aggf` (`copy`).
    pub fn aggregate(&mut self, doc: &Doc, copy: bool) {
        let mut scope = EventScope::new(&doc.value);
        for a in &self.reg.current.aggregates {
            if !a.on.contains(&doc.ty) {
                continue;
            }
            if let Some(w) = &a.when
                && w.test(scope.scope()) != Ok(true)
            {
                continue;
            }
            let Ok(Some(key)) = scope.key(&a.key) else {
                continue;
            };
            let value = match (&a.value, a.func) {
                (_, AggFn::Count) => None,
                (Some(v), _) => match v.value(scope.scope()) {
                    Ok(v) => Some(v),
                    Err(_) => continue,
                },
                (None, _) => continue,
            };
            let k = format!("{}{}{key}", a.name, rows::SEP);
            let w = if copy {
                self.views.aggf.upsert(&k)
            } else {
                self.views.agg.upsert(&k)
            };
            add_to_window(w, a.window_ms, a.func, self.clock, value.as_ref());
        }
    }

    /// `agg` for a condition: every aggregate's value for this event's key.
    pub(super) fn agg_scope(&self, doc: &Doc) -> Value {
        let mut scope = EventScope::new(&doc.value);
        let mut out = Map::new();
        for a in &self.reg.current.aggregates {
            let v = match scope.key(&a.key) {
                Ok(Some(key)) => {
                    let k = format!("{}{}{key}", a.name, rows::SEP);
                    let windows: Vec<Window> = [self.views.agg.get(&k), self.views.aggf.get(&k)]
                        .into_iter()
                        .flatten()
                        .cloned()
                        .collect();
                    combine(&windows, a.window_ms, a.func, self.clock)
                }
                _ => json!(0),
            };
            out.insert(a.name.clone(), v);
        }
        Value::Object(out)
    }

    /// The customer as this partition knows them (`customer` in CEL).
    pub(super) fn customer_doc(&self, customer: Option<&str>) -> Value {
        let Some(c) = customer else {
            return Value::Null;
        };
        let mut frag = self.views.frag.get(c).cloned();
        let person = self.views.person.get(c);
        // Order facts from the forwarded copies of the person's orders.
        if let Some(o) = person.and_then(|p| p.orders.as_ref()) {
            let f = frag.get_or_insert_with(Default::default);
            crate::project::combine_orders(&mut f.orders, o);
        }
        let mut frags: Vec<_> = frag.map(|f| (c.to_owned(), f)).into_iter().collect();
        // The identities merged into the person, as they stood when they merged.
        frags.extend(person.into_iter().flat_map(|p| p.frags.iter().cloned()));
        let mut identities = vec![c.to_owned()];
        identities.extend(frags.iter().map(|(id, _)| id.clone()).filter(|id| id != c));
        let mut doc = Profile {
            identities,
            edges: Vec::new(),
            frags,
        }
        .to_json(self.clock);
        // A channel never consented to reads as false, not as a missing key (an error in CEL).
        if let Some(consent) = doc.get_mut("consent").and_then(Value::as_object_mut) {
            for ch in ["email", "sms", "push", "whatsapp"] {
                consent.entry(ch).or_insert(Value::Bool(false));
            }
        }
        doc
    }

    /// Runs waiting for `doc` or cancelled by it, then the triggers it starts.
    pub fn on_event(&mut self, doc: &Doc, origin: &str) {
        // A run whose timer fell due at or before this event was received moves on first,
        // even when the partition has not fired that timer yet (it waits for the watermark).
        let touched: Vec<String> = self
            .listings(doc, None)
            .into_iter()
            .map(|l| l.run)
            .collect();
        for rk in touched {
            self.fire_overdue(&rk, doc.received);
        }
        self.deliver_listed(doc, None);
        let reg = self.reg;
        for t in &reg.current.triggers {
            if t.on.contains(&doc.ty) {
                self.start(t, doc, origin);
            }
        }
    }

    /// The runs listed under `doc`'s customer and order for its type (only `run` if given).
    fn listings(&self, doc: &Doc, run: Option<&str>) -> Vec<rows::Listing> {
        let corrs = [
            doc.customer.as_ref().map(|c| format!("c:{c}")),
            doc.order.as_ref().map(|o| format!("o:{o}")),
        ];
        corrs
            .iter()
            .flatten()
            .filter_map(|c| self.views.wait.get(c))
            .flat_map(|l| l.runs.iter())
            .filter(|l| l.ty == doc.ty && run.is_none_or(|r| l.run == r))
            .cloned()
            .collect()
    }

    /// Each run listed for `doc` (only `run` if given) is cancelled by it or gets it.
    pub(super) fn deliver_listed(&mut self, doc: &Doc, run: Option<&str>) {
        for l in self.listings(doc, run) {
            if l.cancel {
                self.cancel(&l.run, doc);
            } else {
                self.arrive(&l.run, doc);
            }
        }
    }

    fn start(&mut self, t: &Trigger, doc: &Doc, origin: &str) {
        let customer = doc.customer.clone();
        if let Some(w) = &t.when {
            let mut scope = Scope::default().with("event", &doc.value);
            if w.uses_customer {
                scope = scope.with("customer", &self.customer_doc(customer.as_deref()));
            }
            if w.uses_agg {
                scope = scope.with("agg", &self.agg_scope(doc));
            }
            match w.test(&scope) {
                Ok(true) => {}
                Ok(false) => {
                    return self.decide(t, customer.as_deref(), "condition_false", None, doc);
                }
                Err(e) => {
                    return self.decide(t, customer.as_deref(), "condition_error", Some(e), doc);
                }
            }
        }
        let key = match &t.key {
            None => String::new(),
            Some(k) => match k.key(&Scope::default().with("event", &doc.value)) {
                Ok(Some(k)) => k,
                Ok(None) => String::new(),
                Err(e) => return self.decide(t, customer.as_deref(), "key_error", Some(e), doc),
            },
        };
        let rk = rows::run_key(customer.as_deref().unwrap_or(""), &t.name, &key);
        self.fire_overdue(&rk, doc.received);
        if let Some(r) = self.views.run.get(&rk) {
            if r.status == Status::Active {
                // A run debouncing on an older version restarts on that version's debounce.
                let own = self.reg.version(&r.trigger, &r.version);
                if r.phase == Phase::Debounce
                    && let Some(own) = own.filter(|o| o.debounce_ms.is_some())
                {
                    return self.debounce(&rk, &own, doc);
                }
                return self.decide(t, customer.as_deref(), "already_running", None, doc);
            }
            if t.once {
                return self.decide(t, customer.as_deref(), "once", None, doc);
            }
        }
        let mut run = Run {
            trigger: t.name.clone(),
            version: t.version.clone(),
            origin: origin.to_owned(),
            started_at: self.clock,
            updated_at: self.clock,
            event: doc.value.clone(),
            ..Run::default()
        };
        run.log(
            self.clock,
            "started",
            None,
            Some(format!("by {} {}", doc.ty, doc.id)),
        );
        self.views.run.put(&rk, run);
        if let Some(c) = &customer {
            self.mark_runs(c);
        }
        self.count(t, customer.as_deref(), "started", &rk);
        for c in &t.cancel_on {
            self.list(&rk, &c.ty, &c.matching, true, doc);
        }
        if let Some(ms) = t.debounce_ms {
            self.set_timer(&rk, self.clock + ms);
            if let Some(r) = self.views.run.get_mut(&rk) {
                r.phase = Phase::Debounce;
                r.log(
                    self.clock,
                    "waiting",
                    None,
                    Some(format!("debounce until {}", fmt(self.clock + ms))),
                );
            }
            return;
        }
        self.advance(&rk, t);
    }

    fn debounce(&mut self, rk: &str, t: &Trigger, doc: &Doc) {
        let Some(ms) = t.debounce_ms else { return };
        let due = self.clock + ms;
        self.set_timer(rk, due);
        if let Some(r) = self.views.run.get_mut(rk) {
            r.event = doc.value.clone();
            r.restarts += 1;
            r.updated_at = self.clock;
            // One entry for the latest restart (`restarts` counts them): a busy cart must not
            // grow the row it rewrites on every add.
            if r.history.last().is_some_and(|e| e.what == "debounced") {
                r.history.pop();
            }
            r.log(
                self.clock,
                "debounced",
                None,
                Some(format!(
                    "restart {} by {}; waits until {}",
                    r.restarts,
                    doc.id,
                    fmt(due)
                )),
            );
        }
        self.count(t, doc.customer.as_deref(), "debounced", rk);
    }

    /// A listed run gets the event it waits for.
    pub(super) fn arrive(&mut self, rk: &str, doc: &Doc) {
        let Some(run) = self.views.run.get(rk).cloned() else {
            return;
        };
        let Some(t) = self.reg.version(&run.trigger, &run.version) else {
            return;
        };
        if run.status != Status::Active || run.phase != Phase::Wait {
            return;
        }
        let Some(Step::Wait {
            wait,
            on_event,
            go_on,
            ..
        }) = t.steps.get(run.step)
        else {
            return;
        };
        if !wait.types.contains(&doc.ty) {
            return;
        }
        if !self.matches(&wait.matching, &run, doc) {
            return;
        }
        self.clear_timer(rk);
        self.unlist(rk, false);
        if let Some(r) = self.views.run.get_mut(rk) {
            r.updated_at = self.clock;
            r.log(
                self.clock,
                "arrived",
                Some(run.step),
                Some(event_detail("", &run, doc)),
            );
        }
        self.count(&t, cust(rk), "arrived", rk);
        self.act(rk, &t, on_event, run.step, Some(doc), "e");
        if matches!(go_on, Continue::Event | Continue::Both) {
            self.next_step(rk, &t);
        } else {
            self.finish(rk, &t, "finished");
        }
    }

    /// Whether an arriving event belongs to the run (`same_customer` is given by where the run
    /// is listed).
    fn matches(&self, m: &Match, run: &Run, doc: &Doc) -> bool {
        match m {
            Match::SameCustomer => true,
            Match::SameOrder => {
                run.event.pointer("/data/order_id").and_then(Value::as_str) == doc.order.as_deref()
            }
            Match::Cel(expr) => {
                let scope = Scope::default()
                    .with("event", &doc.value)
                    .with("trigger", &run.event);
                expr.test(&scope) == Ok(true)
            }
        }
    }

    pub(super) fn cancel(&mut self, rk: &str, doc: &Doc) {
        let Some(run) = self.views.run.get(rk).cloned() else {
            return;
        };
        if run.status != Status::Active {
            return;
        }
        let Some(t) = self.reg.version(&run.trigger, &run.version) else {
            return;
        };
        let matched = t
            .cancel_on
            .iter()
            .any(|c| c.ty == doc.ty && self.matches(&c.matching, &run, doc));
        if matched {
            self.end_run(rk, "cancelled", event_detail("by ", &run, doc));
        }
    }

    // ------------------------------------------------------------------------------ timers

    /// Fires the run's timer if it is due at or before `at`, at its due time (and any timer
    /// that sets which is due by `at` too).
    pub(super) fn fire_overdue(&mut self, rk: &str, at: i64) {
        for _ in 0..16 {
            let Some(key) = self
                .views
                .run
                .get(rk)
                .filter(|r| r.status == Status::Active)
                .and_then(|r| r.timer.clone())
            else {
                return;
            };
            let Some((due, target)) = rows::parse_timer_key(&key) else {
                return;
            };
            if due > at {
                return;
            }
            self.views.due.remove(&key);
            let clock = std::mem::replace(&mut self.clock, due);
            self.fire(&key, &target);
            self.clock = clock;
        }
    }

    /// A due timer fires.
    pub fn fire(&mut self, key: &str, target: &Target) {
        match target {
            Target::Run(rk) => self.fire_run(key, rk),
            Target::Arb(c) => self.fire_arb(key, c),
        }
    }

    fn fire_run(&mut self, key: &str, rk: &str) {
        self.views.timers.insert(key.to_owned(), false);
        let Some(run) = self.views.run.get(rk).cloned() else {
            return;
        };
        if run.timer.as_deref() != Some(key) || run.status != Status::Active {
            return; // stale: the run moved on in the same commit that should have removed it
        }
        let Some(t) = self.reg.version(&run.trigger, &run.version) else {
            tracing::warn!(
                run = rk,
                trigger = run.trigger,
                version = run.version,
                "a timer fired for a trigger version that is not known; the run stops"
            );
            return;
        };
        if let Some(r) = self.views.run.get_mut(rk) {
            r.timer = None;
            r.updated_at = self.clock;
        }
        match run.phase {
            Phase::Debounce => self.advance(rk, &t),
            Phase::Delay => self.next_step(rk, &t),
            Phase::Wait => {
                let Some(Step::Wait {
                    on_timeout, go_on, ..
                }) = t.steps.get(run.step)
                else {
                    return;
                };
                self.unlist(rk, false);
                if let Some(r) = self.views.run.get_mut(rk) {
                    r.log(self.clock, "timeout", Some(run.step), None);
                }
                self.count(&t, cust(rk), "timeout", rk);
                self.act(rk, &t, on_timeout, run.step, None, "t");
                if matches!(go_on, Continue::Timeout | Continue::Both) {
                    self.next_step(rk, &t);
                } else {
                    self.finish(rk, &t, "finished");
                }
            }
            Phase::Start | Phase::Done => {}
        }
    }

    fn next_step(&mut self, rk: &str, t: &Trigger) {
        if let Some(r) = self.views.run.get_mut(rk) {
            r.step += 1;
        }
        self.advance(rk, t);
    }

    /// Runs steps from the run's current one until one waits or the steps end.
    fn advance(&mut self, rk: &str, t: &Trigger) {
        loop {
            let Some(step) = self.views.run.get(rk).map(|r| r.step) else {
                return;
            };
            let Some(s) = t.steps.get(step) else {
                return self.finish(rk, t, "finished");
            };
            match s {
                Step::Then(actions) => {
                    self.act(rk, t, actions, step, None, "a");
                    if let Some(r) = self.views.run.get_mut(rk) {
                        r.step += 1;
                    }
                }
                Step::Delay(ms) => {
                    let due = self.clock + ms;
                    return self.pause(
                        rk,
                        Phase::Delay,
                        due,
                        step,
                        format!("delayed until {}", fmt(due)),
                    );
                }
                Step::DelayUntil(h, m) => {
                    let tz = self.timezone(customer_of(rk));
                    let due = next_local_time(self.clock, tz, *h, *m);
                    return self.pause(
                        rk,
                        Phase::Delay,
                        due,
                        step,
                        format!("delayed until {h:02}:{m:02} {tz} ({})", fmt(due)),
                    );
                }
                Step::Wait { wait, .. } => {
                    let due = self.clock + wait.within_ms;
                    let run = self.views.run.get(rk).cloned().unwrap_or_default();
                    let doc = Doc {
                        value: run.event.clone(),
                        ty: String::new(),
                        id: String::new(),
                        customer: Some(customer_of(rk).to_owned()).filter(|c| !c.is_empty()),
                        order: run
                            .event
                            .pointer("/data/order_id")
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                        received: self.clock,
                    };
                    for ty in &wait.types {
                        self.list(rk, ty, &wait.matching, false, &doc);
                    }
                    self.count(t, cust(rk), "waiting", rk);
                    return self.pause(
                        rk,
                        Phase::Wait,
                        due,
                        step,
                        format!("waiting for {} until {}", wait.types.join("|"), fmt(due)),
                    );
                }
            }
        }
    }

    fn pause(&mut self, rk: &str, phase: Phase, due: i64, step: usize, detail: String) {
        self.set_timer(rk, due);
        if let Some(r) = self.views.run.get_mut(rk) {
            r.phase = phase;
            r.log(self.clock, "waiting", Some(step), Some(detail));
        }
    }

    /// Ends an active run without its trigger's steps: `cancel_on` matched, or a merge found the
    /// person already had it.
    pub(super) fn end_run(&mut self, rk: &str, what: &str, detail: String) {
        let Some(run) = self.views.run.get(rk).cloned() else {
            return;
        };
        if run.status != Status::Active {
            return;
        }
        self.clear_timer(rk);
        self.unlist(rk, true);
        if let Some(r) = self.views.run.get_mut(rk) {
            r.status = Status::Cancelled;
            r.phase = Phase::Done;
            r.updated_at = self.clock;
            r.log(self.clock, what, Some(run.step), Some(detail));
        }
        if let Some(t) = self.reg.version(&run.trigger, &run.version) {
            self.count(&t, cust(rk), what, rk);
            self.count(&t, cust(rk), "-active", rk);
        }
    }

    fn finish(&mut self, rk: &str, t: &Trigger, what: &str) {
        self.clear_timer(rk);
        self.unlist(rk, true);
        if let Some(r) = self.views.run.get_mut(rk) {
            r.status = Status::Finished;
            r.phase = Phase::Done;
            r.updated_at = self.clock;
            r.log(self.clock, what, None, None);
        }
        self.count(t, cust(rk), "finished", rk);
    }

    fn set_timer(&mut self, rk: &str, due: i64) {
        self.clear_timer(rk);
        let key = rows::timer_key(self.partition, due, &Target::Run(rk.to_owned()));
        self.views.timers.insert(key.clone(), true);
        self.views.due.insert(key.clone());
        if let Some(r) = self.views.run.get_mut(rk) {
            r.timer = Some(key);
        }
    }

    pub(super) fn clear_timer(&mut self, rk: &str) {
        let old = self.views.run.get_mut(rk).and_then(|r| r.timer.take());
        if let Some(k) = old {
            self.views.due.remove(&k);
            self.views.timers.insert(k, false);
        }
    }

    /// Lists the run under the event's correlation for `ty`.
    fn list(&mut self, rk: &str, ty: &str, m: &Match, cancel: bool, doc: &Doc) {
        let corr = match m {
            Match::SameOrder => doc.order.as_ref().map(|o| format!("o:{o}")),
            _ => doc.customer.as_ref().map(|c| format!("c:{c}")),
        };
        let Some(corr) = corr else { return };
        let l = self.views.wait.upsert(&corr);
        let entry = rows::Listing {
            ty: ty.to_owned(),
            run: rk.to_owned(),
            cancel,
        };
        if !l.runs.contains(&entry) {
            l.runs.push(entry);
        }
        if let Some(r) = self.views.run.get_mut(rk)
            && !r.listed.contains(&corr)
        {
            r.listed.push(corr);
        }
    }

    /// Removes the run's wait listings (and its cancel listings too if `all`).
    fn unlist(&mut self, rk: &str, all: bool) {
        let listed = self
            .views
            .run
            .get(rk)
            .map(|r| r.listed.clone())
            .unwrap_or_default();
        let mut still = Vec::new();
        for corr in listed {
            let mut keep = false;
            if let Some(l) = self.views.wait.get_mut(&corr) {
                l.runs.retain(|x| x.run != rk || (!all && x.cancel));
                keep = l.runs.iter().any(|x| x.run == rk);
                if l.runs.is_empty() {
                    self.views.wait.remove(&corr);
                }
            }
            if keep {
                still.push(corr);
            }
        }
        if let Some(r) = self.views.run.get_mut(rk) {
            r.listed = still;
        }
    }

    pub(super) fn log_run(
        &mut self,
        rk: &str,
        what: &str,
        step: Option<usize>,
        detail: Option<String>,
    ) {
        let clock = self.clock;
        if let Some(r) = self.views.run.get_mut(rk) {
            r.log(clock, what, step, detail);
        }
    }

    // ------------------------------------------------------------------------------ records

    /// A decision that started no run, kept in the customer's journal.
    fn decide(
        &mut self,
        t: &Trigger,
        customer: Option<&str>,
        what: &str,
        detail: Option<String>,
        doc: &Doc,
    ) {
        self.count(t, customer, what, "");
        let Some(c) = customer else { return };
        let entry = Decision {
            at: self.clock,
            trigger: t.name.clone(),
            version: t.version.clone(),
            what: what.to_owned(),
            detail,
            event_id: Some(doc.id.clone()),
        };
        self.journal(c, entry);
    }

    /// Adds a decision to the customer's journal, which keeps the latest [`rows::JOURNAL`].
    pub(super) fn journal(&mut self, customer: &str, entry: Decision) {
        let j = self.views.jrnl.upsert(customer);
        if j.entries.len() >= rows::JOURNAL {
            j.entries.remove(0);
        }
        j.entries.push(entry);
    }

    pub(super) fn count(&mut self, t: &Trigger, customer: Option<&str>, what: &str, run: &str) {
        self.count_message(t, customer, what, run, None);
    }

    /// [`count`](Self::count) for a message, naming its connector.
    pub(super) fn count_message(
        &mut self,
        t: &Trigger,
        customer: Option<&str>,
        what: &str,
        run: &str,
        connector: Option<&str>,
    ) {
        let s = self.views.tstat.upsert(&t.id());
        if let Some(w) = what.strip_prefix('-') {
            s.add(w, -1);
            return;
        }
        s.add(what, 1);
        match what {
            "started" => s.add("active", 1),
            "finished" => s.add("active", -1),
            _ => {}
        }
        self.outcomes.push(Outcome {
            trigger: t.name.clone(),
            what: what.to_owned(),
            customer: customer.map(str::to_owned),
            run: run.to_owned(),
            at: self.clock,
            connector: connector.map(str::to_owned),
        });
    }

    pub(super) fn timezone(&self, customer: &str) -> chrono_tz::Tz {
        let default = self.reg.current.arbitration.timezone;
        self.views
            .frag
            .get(customer)
            .and_then(|f| f.traits.get("timezone"))
            .and_then(|s| s.value.as_str())
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    }
}

/// What a run's history says of an event that moved it: the event, the identity it came
/// through, and the merge that brought the run to the person.
fn event_detail(prefix: &str, run: &Run, doc: &Doc) -> String {
    let mut s = format!("{prefix}{} {}", doc.ty, doc.id);
    let via = doc.value.get("via").and_then(Value::as_str);
    if let Some(c) = via.or(doc.customer.as_deref()) {
        s.push_str(&format!(" by {c}"));
    }
    if let Some((from, at)) = &run.merged_from {
        s.push_str(&format!(", merged with {from} at {}", fmt(*at)));
    }
    s
}

pub(super) fn customer_of(rk: &str) -> &str {
    rows::split_run_key(rk).0
}

pub(super) fn cust(rk: &str) -> Option<&str> {
    Some(customer_of(rk)).filter(|c| !c.is_empty())
}

pub(super) fn fmt(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| storeline_event::format_time(&t))
        .unwrap_or_default()
}
