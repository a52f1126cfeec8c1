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

use chrono::{TimeZone, Timelike};
use serde_json::{Map, Value, json};

use super::cel::{Expr, Scope, to_cel};
use super::def::{Action, AggFn, Continue, Match, Step, Trigger, is_customer_channel};
use super::rows::{self, Decision, HeldMessage, Phase, Run, Status, Target, Window};
use super::{Outcome, Registry};
use crate::event::Ev;
use crate::project::{Emit, identity_key};
use crate::read::Profile;
use crate::views::Views;

/// An event as triggers see it (`event` in CEL), with who and which order it is about.
#[derive(Debug, Clone)]
pub struct Doc {
    pub value: Value,
    pub ty: String,
    pub id: String,
    pub customer: Option<String>,
    pub order: Option<String>,
}

/// What a stored record is for triggers: `None` for engine records (ticks, trigger files).
/// `for_triggers` is false for commerce events about a customer: their triggers run in the
/// customer's partition, on the forwarded copy.
pub fn doc_of(ev: &Ev) -> Option<(Doc, bool)> {
    if ev.ty == super::FORWARDED {
        let v = ev.data.clone();
        let ty = v.get("type").and_then(Value::as_str)?.to_owned();
        let id = v.get("id").and_then(Value::as_str).unwrap_or("").to_owned();
        let customer = v.get("customer").and_then(Value::as_str).map(identity_key);
        let order = v
            .pointer("/data/order_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        return Some((
            Doc {
                value: v,
                ty,
                id,
                customer,
                order,
            },
            true,
        ));
    }
    if ev.ty.starts_with("storeline.") {
        return None;
    }
    let customer = if ev.ty.starts_with("inventory.") {
        None // about a SKU
    } else {
        ev.customer().map(identity_key)
    };
    let forwarded_elsewhere = customer.is_some() && is_forwarded_type(&ev.ty);
    let time = chrono::DateTime::from_timestamp_millis(ev.time)
        .map(|t| storeline_event::format_time(&t))
        .unwrap_or_default();
    let value = json!({
        "id": ev.id, "type": ev.ty, "time": time, "subject": ev.subject,
        "customer": customer, "data": ev.data,
    });
    Some((
        Doc {
            value,
            ty: ev.ty.clone(),
            id: ev.id.clone(),
            customer,
            order: ev.str("order_id").map(str::to_owned),
        },
        !forwarded_elsewhere,
    ))
}

/// Commerce events that carry a customer and are copied to the customer's partition.
pub fn is_forwarded_type(ty: &str) -> bool {
    ty.starts_with("order.") || ty.starts_with("return.")
}

/// One evaluation step's context.
pub struct Machine<'a> {
    pub partition: u32,
    pub reg: &'a Registry,
    pub views: &'a mut Views,
    pub clock: i64,
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
        let scope = Scope::default().with("event", &doc.value);
        for a in &self.reg.current.aggregates {
            if !a.on.contains(&doc.ty) {
                continue;
            }
            if let Some(w) = &a.when
                && w.test(&scope) != Ok(true)
            {
                continue;
            }
            let Ok(Some(key)) = a.key.key(&scope) else {
                continue;
            };
            let value = match (&a.value, a.func) {
                (_, AggFn::Count) => None,
                (Some(v), _) => match v.value(&scope) {
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
    fn agg_scope(&self, doc: &Doc) -> Value {
        let scope = Scope::default().with("event", &doc.value);
        let mut out = Map::new();
        for a in &self.reg.current.aggregates {
            let v = match a.key.key(&scope) {
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
    fn customer_doc(&self, customer: Option<&str>) -> Value {
        let Some(c) = customer else {
            return Value::Null;
        };
        let frags = self
            .views
            .frag
            .get(c)
            .map(|f| vec![(c.to_owned(), f.clone())])
            .unwrap_or_default();
        let mut doc = Profile {
            identities: vec![c.to_owned()],
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
        let mut corrs = Vec::new();
        if let Some(c) = &doc.customer {
            corrs.push(format!("c:{c}"));
        }
        if let Some(o) = &doc.order {
            corrs.push(format!("o:{o}"));
        }
        for corr in corrs {
            let listed: Vec<rows::Listing> = match self.views.wait.get(&corr) {
                Some(l) => l.runs.iter().filter(|l| l.ty == doc.ty).cloned().collect(),
                None => continue,
            };
            for l in listed {
                if l.cancel {
                    self.cancel(&l.run, doc);
                } else {
                    self.arrive(&l.run, doc);
                }
            }
        }
        let reg = self.reg;
        for t in &reg.current.triggers {
            if t.on.contains(&doc.ty) {
                self.start(t, doc, origin);
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
    fn arrive(&mut self, rk: &str, doc: &Doc) {
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
                Some(format!("{} {}", doc.ty, doc.id)),
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

    fn cancel(&mut self, rk: &str, doc: &Doc) {
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
        if !matched {
            return;
        }
        self.clear_timer(rk);
        self.unlist(rk, true);
        if let Some(r) = self.views.run.get_mut(rk) {
            r.status = Status::Cancelled;
            r.phase = Phase::Done;
            r.updated_at = self.clock;
            r.log(
                self.clock,
                "cancelled",
                Some(run.step),
                Some(format!("by {} {}", doc.ty, doc.id)),
            );
        }
        self.count(&t, cust(rk), "cancelled", rk);
        self.count(&t, cust(rk), "-active", rk);
    }

    // ------------------------------------------------------------------------------ timers

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

    fn clear_timer(&mut self, rk: &str) {
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

    // ------------------------------------------------------------------------------ actions

    fn act(
        &mut self,
        rk: &str,
        t: &Trigger,
        actions: &[Action],
        step: usize,
        arrived: Option<&Doc>,
        branch: &str,
    ) {
        if actions.is_empty() {
            return;
        }
        let Some(run) = self.views.run.get(rk).cloned() else {
            return;
        };
        let customer = Some(customer_of(rk)).filter(|c| !c.is_empty());
        let needs_customer = actions
            .iter()
            .any(|a| action_exprs(a).any(|e| e.uses_customer));
        let mut scope = match arrived {
            Some(d) => Scope::default()
                .with("event", &d.value)
                .with("trigger", &run.event),
            None => Scope::default()
                .with("event", &run.event)
                .with("trigger", &run.event),
        };
        if needs_customer {
            scope.set("customer", to_cel(&self.customer_doc(customer)));
        }
        if actions.iter().any(|a| action_exprs(a).any(|e| e.uses_agg)) {
            let doc = Doc {
                value: run.event.clone(),
                ty: String::new(),
                id: String::new(),
                customer: customer.map(str::to_owned),
                order: None,
            };
            scope.set("agg", to_cel(&self.agg_scope(&doc)));
        }
        for (i, a) in actions.iter().enumerate() {
            let seed = format!("{}/{}/{step}{branch}{i}", run.origin, run.restarts);
            let id_hash = &crate::hash_hex(format!("{rk}\n{seed}").as_bytes())[..24];
            match a {
                Action::Deliver {
                    connector,
                    channel,
                    template,
                    data,
                } => {
                    let data = eval_data(data, &scope);
                    let entry = json!({
                        "id": format!("dlv_{id_hash}"), "connector": connector, "channel": channel,
                        "template": template, "customer": customer, "trigger": t.name,
                        "version": t.version, "run": rk, "event": run.event,
                        "arrived": arrived.map(|d| &d.value), "data": data,
                        "created_at": self.clock, "priority": t.priority, "seq": seq_of(&run.origin, step, branch, i),
                        "transactional": t.transactional,
                    });
                    self.arbitrate(t, rk, entry, channel, step, true);
                }
                Action::Emit { ty, data } => {
                    self.emits.push(Emit {
                        id: format!("trg_{id_hash}"),
                        ty: ty.clone(),
                        subject: customer.map(str::to_owned),
                        time: self.clock,
                        data: Value::Object(eval_data(data, &scope)),
                    });
                    self.log_run(rk, "emitted", Some(step), Some(ty.clone()));
                    self.count(t, customer, "emitted", rk);
                }
                Action::SetTrait { name, value } => {
                    let Some(c) = customer else {
                        self.log_run(
                            rk,
                            "skipped",
                            Some(step),
                            Some(format!("set_trait {name}: no customer")),
                        );
                        continue;
                    };
                    match value.value(&scope) {
                        Ok(v) => {
                            self.emits.push(Emit {
                                id: format!("trg_{id_hash}"),
                                ty: "customer.updated".into(),
                                subject: Some(c.to_owned()),
                                time: self.clock,
                                data: json!({ "traits": { name.clone(): v } }),
                            });
                            self.log_run(rk, "trait_set", Some(step), Some(name.clone()));
                            self.count(t, customer, "trait_set", rk);
                        }
                        Err(e) => {
                            self.log_run(rk, "action_error", Some(step), Some(e));
                            self.count(t, customer, "action_error", rk);
                        }
                    }
                }
            }
        }
    }

    fn log_run(&mut self, rk: &str, what: &str, step: Option<usize>, detail: Option<String>) {
        let clock = self.clock;
        if let Some(r) = self.views.run.get_mut(rk) {
            r.log(clock, what, step, detail);
        }
    }

    // ------------------------------------------------------------------------------ arbitration

    /// Consent, quiet hours and caps, then the outbox; `fresh` is false when a held message is
    /// tried again.
    fn arbitrate(
        &mut self,
        t: &Trigger,
        rk: &str,
        entry: Value,
        channel: &str,
        step: usize,
        fresh: bool,
    ) {
        let customer = customer_of(rk).to_owned();
        let to_customer = !customer.is_empty() && is_customer_channel(channel);
        if !to_customer || t.transactional {
            // Transactional messages bypass the caps and do not use them up.
            return self.send(t, rk, entry, channel, step, false);
        }
        let profile = self.customer_doc(Some(&customer));
        if profile.pointer(&format!("/consent/{channel}")) != Some(&Value::Bool(true)) {
            self.log_run(
                rk,
                "suppressed",
                Some(step),
                Some(format!("no consent for {channel}")),
            );
            self.count(t, Some(&customer), "suppressed_consent", rk);
            return;
        }
        let arb = &self.reg.current.arbitration;
        if let Some((from, to)) = arb.quiet {
            let tz = self.timezone(&customer);
            if let Some(end) = quiet_until(self.clock, tz, from, to) {
                return self.hold(
                    t,
                    rk,
                    entry,
                    channel,
                    step,
                    end,
                    "quiet_hours",
                    t.drop_quiet,
                );
            }
        }
        let sent = self
            .views
            .arb
            .get(&customer)
            .map(|a| a.sent.clone())
            .unwrap_or_default();
        for cap in &arb.caps {
            if cap.channel != "*" && cap.channel != channel {
                continue;
            }
            let since = self.clock - cap.window_ms;
            let inside: Vec<i64> = sent
                .iter()
                .filter(|(at, ch)| *at > since && (cap.channel == "*" || *ch == cap.channel))
                .map(|(at, _)| *at)
                .collect();
            if inside.len() as u32 >= cap.max {
                let oldest = inside.iter().copied().min().unwrap_or(self.clock);
                // The cap counts sends after `clock - window`: the oldest leaves it at
                // `oldest + window`.
                let open = oldest + cap.window_ms;
                return self.hold(t, rk, entry, channel, step, open, "cap", t.drop_capped);
            }
        }
        let _ = fresh;
        self.send(t, rk, entry, channel, step, true);
    }

    #[allow(clippy::too_many_arguments)]
    fn hold(
        &mut self,
        t: &Trigger,
        rk: &str,
        entry: Value,
        channel: &str,
        step: usize,
        until: i64,
        reason: &str,
        drop: bool,
    ) {
        let customer = customer_of(rk).to_owned();
        if drop {
            self.log_run(
                rk,
                "dropped",
                Some(step),
                Some(format!("{reason}; the trigger says drop")),
            );
            self.count(t, Some(&customer), &format!("dropped_{reason}"), rk);
            return;
        }
        self.log_run(
            rk,
            "deferred",
            Some(step),
            Some(format!("{reason}; held until {}", fmt(until))),
        );
        self.count(t, Some(&customer), &format!("deferred_{reason}"), rk);
        let origin = self
            .views
            .run
            .get(rk)
            .map(|r| r.origin.clone())
            .unwrap_or_default();
        let a = self.views.arb.upsert(&customer);
        a.held.push(HeldMessage {
            origin,
            not_before: until,
            priority: t.priority,
            channel: channel.to_owned(),
            reason: reason.to_owned(),
            run: rk.to_owned(),
            entry,
        });
        self.schedule_arb(&customer);
    }

    fn schedule_arb(&mut self, customer: &str) {
        let partition = self.partition;
        let a = self.views.arb.upsert(customer);
        let next = a.held.iter().map(|h| h.not_before).min();
        let want =
            next.map(|due| rows::timer_key(partition, due, &Target::Arb(customer.to_owned())));
        if a.timer == want {
            return;
        }
        let old = std::mem::replace(&mut a.timer, want.clone());
        if let Some(k) = old {
            self.views.due.remove(&k);
            self.views.timers.insert(k, false);
        }
        if let Some(k) = want {
            self.views.due.insert(k.clone());
            self.views.timers.insert(k, true);
        }
    }

    fn fire_arb(&mut self, key: &str, customer: &str) {
        self.views.timers.insert(key.to_owned(), false);
        let Some(a) = self.views.arb.get_mut(customer) else {
            return;
        };
        if a.timer.as_deref() != Some(key) {
            return;
        }
        a.timer = None;
        let clock = self.clock;
        let mut due: Vec<HeldMessage> = Vec::new();
        a.held.retain(|h| {
            if h.not_before <= clock {
                due.push(h.clone());
                false
            } else {
                true
            }
        });
        // The most important first: they take the window's free places.
        due.sort_by(|x, y| {
            y.priority
                .cmp(&x.priority)
                .then(x.not_before.cmp(&y.not_before))
        });
        for h in due {
            let (trigger, version) = (
                h.entry["trigger"].as_str().unwrap_or("").to_owned(),
                h.entry["version"].as_str().unwrap_or("").to_owned(),
            );
            let Some(t) = self.reg.version(&trigger, &version) else {
                tracing::warn!(
                    trigger,
                    version,
                    "a held message's trigger version is not known; it is dropped"
                );
                continue;
            };
            let step = self.views.run.get(&h.run).map(|r| r.step).unwrap_or(0);
            if self
                .views
                .run
                .get(&h.run)
                .is_some_and(|r| r.status == Status::Cancelled && r.origin == h.origin)
            {
                self.log_run(
                    &h.run,
                    "dropped",
                    Some(step),
                    Some(format!(
                        "held message {}: the run was cancelled",
                        h.entry["id"]
                    )),
                );
                self.count(&t, cust(&h.run), "dropped_cancelled", &h.run);
                continue;
            }
            self.log_run(
                &h.run,
                "released",
                Some(step),
                Some(format!("{} over", h.reason)),
            );
            self.arbitrate(&t, &h.run, h.entry, &h.channel, step, false);
        }
        self.schedule_arb(customer);
    }

    fn send(
        &mut self,
        t: &Trigger,
        rk: &str,
        entry: Value,
        channel: &str,
        step: usize,
        counts: bool,
    ) {
        let customer = customer_of(rk).to_owned();
        if counts {
            let longest = self
                .reg
                .current
                .arbitration
                .caps
                .iter()
                .map(|c| c.window_ms)
                .max();
            let clock = self.clock;
            let a = self.views.arb.upsert(&customer);
            if let Some(w) = longest {
                a.sent.retain(|(at, _)| *at > clock - w);
                a.sent.push((clock, channel.to_owned()));
            }
        }
        let id = entry["id"].as_str().unwrap_or("").to_owned();
        // Ordered by time, then by the action's place in its run (not by the id's hash).
        let seq = entry["seq"].as_str().unwrap_or("");
        let key = format!(
            "{:04}{}{:013}{}{seq}{}{id}",
            self.partition,
            rows::SEP,
            self.clock.max(0),
            rows::SEP,
            rows::SEP
        );
        self.views.outbox.insert(key, entry);
        self.log_run(rk, "sent", Some(step), Some(format!("{id} via {channel}")));
        self.count(
            t,
            Some(&customer)
                .filter(|c| !c.is_empty())
                .map(|s| s.as_str()),
            "sent",
            rk,
        );
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
        let j = self.views.jrnl.upsert(c);
        if j.entries.len() >= rows::JOURNAL {
            j.entries.remove(0);
        }
        j.entries.push(Decision {
            at: self.clock,
            trigger: t.name.clone(),
            version: t.version.clone(),
            what: what.to_owned(),
            detail,
            event_id: Some(doc.id.clone()),
        });
    }

    fn count(&mut self, t: &Trigger, customer: Option<&str>, what: &str, run: &str) {
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
        });
    }

    fn timezone(&self, customer: &str) -> chrono_tz::Tz {
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

/// A sortable position of an action: its run's origin offset, step, branch and index.
fn seq_of(origin: &str, step: usize, branch: &str, i: usize) -> String {
    let offset: u64 = origin
        .rsplit(':')
        .next()
        .and_then(|o| o.parse().ok())
        .unwrap_or(0);
    format!("{offset:020}.{step:03}{branch}{i:03}")
}

fn customer_of(rk: &str) -> &str {
    rows::split_run_key(rk).0
}

fn cust(rk: &str) -> Option<&str> {
    Some(customer_of(rk)).filter(|c| !c.is_empty())
}

fn action_exprs(a: &Action) -> Box<dyn Iterator<Item = &Expr> + '_> {
    match a {
        Action::Deliver { data, .. } | Action::Emit { data, .. } => {
            Box::new(data.iter().map(|(_, e)| e))
        }
        Action::SetTrait { value, .. } => Box::new(std::iter::once(value)),
    }
}

fn eval_data(data: &[(String, Expr)], scope: &Scope) -> Map<String, Value> {
    data.iter()
        .map(|(k, e)| (k.clone(), e.value(scope).unwrap_or(Value::Null)))
        .collect()
}

fn fmt(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| storeline_event::format_time(&t))
        .unwrap_or_default()
}

/// The next time after `now` that the local clock in `tz` shows `h:m`.
pub fn next_local_time(now: i64, tz: chrono_tz::Tz, h: u32, m: u32) -> i64 {
    let Some(utc) = chrono::DateTime::from_timestamp_millis(now) else {
        return now;
    };
    let local = utc.with_timezone(&tz);
    for days in 0..3 {
        let date = local.date_naive() + chrono::Days::new(days);
        let Some(naive) = date.and_hms_opt(h, m, 0) else {
            continue;
        };
        // A time skipped by a DST change takes the next valid instant.
        let candidate = tz.from_local_datetime(&naive).earliest().or_else(|| {
            tz.from_local_datetime(&(naive + chrono::Duration::hours(1)))
                .earliest()
        });
        if let Some(c) = candidate
            && c.timestamp_millis() > now
        {
            return c.timestamp_millis();
        }
    }
    now + 86_400_000
}

/// When quiet hours (`from`..`to` minutes after local midnight) end, if `now` is inside them.
pub fn quiet_until(now: i64, tz: chrono_tz::Tz, from: u32, to: u32) -> Option<i64> {
    let local = chrono::DateTime::from_timestamp_millis(now)?.with_timezone(&tz);
    let minute = local.hour() * 60 + local.minute();
    let inside = if from < to {
        minute >= from && minute < to
    } else {
        minute >= from || minute < to
    };
    inside.then(|| next_local_time(now, tz, to / 60, to % 60))
}

/// Bucket width of a window: 1/60 of it, at least a second.
fn bucket_ms(window: i64) -> i64 {
    (window / 60).max(1000)
}

pub fn add_to_window(w: &mut Window, window: i64, func: AggFn, clock: i64, value: Option<&Value>) {
    let width = bucket_ms(window);
    let start = clock - clock.rem_euclid(width);
    w.buckets.retain(|b| b.0 + width > clock - window);
    let amount = value.and_then(Value::as_f64).unwrap_or(0.0);
    match w.buckets.last_mut() {
        Some(b) if b.0 == start => {
            b.1 += 1;
            b.2 += amount;
        }
        _ => w.buckets.push((start, 1, amount)),
    }
    if func == AggFn::Distinct
        && let Some(v) = value
    {
        let k = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        w.seen.insert(k, clock);
        w.seen.retain(|_, at| *at > clock - window);
    }
    w.last = clock;
}

/// The window's value at `clock` (buckets that overlap the window: resolution is 1/60 of it).
pub fn window_value(w: &Window, window: i64, func: AggFn, clock: i64) -> Value {
    let width = bucket_ms(window);
    let live = w
        .buckets
        .iter()
        .filter(|b| b.0 + width > clock - window && b.0 <= clock);
    match func {
        AggFn::Count => json!(live.map(|b| b.1).sum::<i64>()),
        AggFn::Sum => {
            let s: f64 = live.map(|b| b.2).sum();
            if s.fract() == 0.0 && s.abs() < 9e15 {
                json!(s as i64)
            } else {
                json!(s)
            }
        }
        AggFn::Distinct => json!(w.seen.values().filter(|at| **at > clock - window).count()),
    }
}

/// Several windows of one aggregate and key (partitions, or originals and copies) as one value.
pub fn combine(windows: &[Window], window_ms: i64, func: AggFn, now: i64) -> Value {
    match func {
        AggFn::Distinct => {
            let seen: std::collections::BTreeSet<&String> = windows
                .iter()
                .flat_map(|w| {
                    w.seen
                        .iter()
                        .filter(|(_, at)| **at > now - window_ms)
                        .map(|(k, _)| k)
                })
                .collect();
            json!(seen.len())
        }
        _ => {
            let total: f64 = windows
                .iter()
                .filter_map(|w| window_value(w, window_ms, func, now).as_f64())
                .sum();
            if total.fract() == 0.0 {
                json!(total as i64)
            } else {
                json!(total)
            }
        }
    }
}
