//! The trigger stage of one partition writer: the glue that runs the pure machine inside a
//! batch. It keeps the registry of trigger versions the partition may still need, the
//! partition's clock and watermark, and hands the decisions it made to the caller.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Value, json};

use super::def::{self, Trigger, TriggerSet};
use super::machine::{Machine, doc_of, is_forwarded_type};
use super::person::{self, HANDOFF, MERGED};
use super::rows::{self, Definition};
use super::{BACKTEST, FORWARDED, TICK, TRIGGERS, moves_the_person};
use super::{cel, machine};
use crate::event::Ev;
use crate::project::Emit;
use crate::views::{Keys, Views};

/// One decision, for metrics and backtest reports.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub trigger: String,
    pub what: String,
    pub customer: Option<String>,
    pub run: String,
    pub at: i64,
    /// The connector of a message that was suppressed or dropped.
    pub connector: Option<String>,
}

/// Every trigger version a partition may still need, and the current file.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    pub(crate) current: Arc<TriggerSet>,
    versions: HashMap<String, Arc<Trigger>>,
    /// Event types some version waits for or is cancelled by.
    watched: BTreeSet<String>,
    /// Event types any trigger or aggregate works on (see [`Registry::relevant`]).
    relevant: HashSet<String>,
}

impl Registry {
    pub fn new(set: TriggerSet) -> Registry {
        let mut r = Registry::default();
        r.install(set);
        r
    }

    /// Makes `set` current; versions already known stay available to runs in flight.
    pub fn install(&mut self, set: TriggerSet) {
        for t in &set.triggers {
            self.versions.insert(t.id(), t.clone());
            for s in &t.steps {
                if let def::Step::Wait { wait, .. } = s {
                    self.watched.extend(wait.types.iter().cloned());
                }
            }
            self.watched
                .extend(t.cancel_on.iter().map(|c| c.ty.clone()));
        }
        self.current = Arc::new(set);
        self.refresh();
    }

    /// Adds an older file's versions without making it current.
    fn remember(&mut self, set: TriggerSet) {
        let current = self.current.clone();
        self.install(set);
        self.current = current;
        self.refresh();
    }

    fn refresh(&mut self) {
        let starts = self.current.triggers.iter().flat_map(|t| t.on.iter());
        let counted = self.current.aggregates.iter().flat_map(|a| a.on.iter());
        self.relevant = starts
            .chain(counted)
            .chain(self.watched.iter())
            .cloned()
            .chain([FORWARDED.to_owned()])
            .collect();
        if self.current.triggers.is_empty() {
            return;
        }
        // The person: merges hand runs over, and their notices travel as records.
        self.relevant.extend(
            [
                MERGED,
                HANDOFF,
                "customer.identified",
                "customer.signed_up",
                "customer.aliased",
                "customer.unmerged",
            ]
            .map(str::to_owned),
        );
        // Conditions that read the customer see their order facts: the orders are forwarded.
        let reads_customer = self
            .current
            .triggers
            .iter()
            .any(|t| t.when.as_ref().is_some_and(|w| w.uses_customer));
        if reads_customer {
            self.relevant
                .extend(["order.placed", "order.cancelled", "order.refunded"].map(str::to_owned));
        }
    }

    /// Whether records of type `ty` matter to any trigger or aggregate (most do not: they are
    /// skipped before any work).
    pub fn relevant(&self, ty: &str) -> bool {
        self.relevant.contains(ty)
    }

    pub fn version(&self, name: &str, version: &str) -> Option<Arc<Trigger>> {
        self.versions.get(&format!("{name}@{version}")).cloned()
    }

    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    fn starts(&self, ty: &str) -> bool {
        self.current
            .triggers
            .iter()
            .any(|t| t.on.iter().any(|o| o == ty))
    }

    /// Whether commerce events of type `ty` about a customer are copied to the customer's
    /// partition: when a trigger starts on or waits for them, or an aggregate counts them (then
    /// the copy is counted, where the customer's triggers read it, and not the original).
    pub fn forwards(&self, ty: &str) -> bool {
        is_forwarded_type(ty) && self.relevant(ty)
    }

    /// Rebuilds the registry from a partition's `trigdef` rows (`current`, `set:<version>`).
    pub fn from_rows(rows: Vec<(String, Definition)>) -> Registry {
        let mut reg = Registry::default();
        let mut current = None;
        for (key, d) in rows {
            match TriggerSet::parse(&d.source) {
                Ok(set) if key == "current" => current = Some(set),
                Ok(set) => reg.remember(set),
                Err(p) => {
                    tracing::error!(key, problems = ?p, "a stored trigger file no longer compiles; its runs stop")
                }
            }
        }
        if let Some(set) = current {
            reg.install(set);
        }
        reg
    }
}

/// The trigger stage of one partition writer.
#[derive(Debug)]
pub struct Stage {
    pub(crate) reg: Registry,
    /// The partition's clock: the latest `received_at` applied.
    pub(crate) clock: i64,
    /// How far every partition that can forward into this one had applied, as the last
    /// watermark tick said. Once a tick has carried one, timers fire only up to it, so an event
    /// received before a deadline in another partition is here before the timer fires. `None`
    /// (logs written before watermarks, tests of one partition): timers fire on the clock.
    pub(crate) watermark: Option<i64>,
    /// The partition that owns stock and orders: it forwards customer events.
    pub(crate) commerce: Option<u32>,
    /// The earliest pending timer, if known (`None`: look in the store).
    pub(crate) next_due: Option<Option<i64>>,
    /// Backtest: evaluate only records whose clock is in this range; the file never changes.
    pub(crate) window: Option<(i64, i64)>,
    /// Whether every run in the store was started while `person.runs` was kept, so an identity
    /// without the mark has no runs (see [`rows::RUNS_MARKED_KEY`]). True for a partition
    /// applied from its first record.
    pub(crate) runs_marked: bool,
    /// Decisions since the caller last took them.
    pub(crate) outcomes: Vec<Outcome>,
    /// Due times of the timers fired since the caller last took them (for lateness).
    pub(crate) fired: Vec<i64>,
    /// The clock and, if a batch installed a file, the registry as of the last commit: what
    /// [`Stage::rollback`] returns to when a batch is thrown away.
    committed_clock: i64,
    committed_watermark: Option<i64>,
    committed_reg: Option<Registry>,
}

impl Stage {
    pub fn new(reg: Registry, commerce: Option<u32>) -> Stage {
        Stage {
            reg,
            clock: 0,
            watermark: None,
            commerce,
            next_due: None,
            window: None,
            runs_marked: true,
            outcomes: Vec::new(),
            fired: Vec::new(),
            committed_clock: 0,
            committed_watermark: None,
            committed_reg: None,
        }
    }

    /// What was applied is committed: it is the new point to roll back to.
    pub fn committed(&mut self) {
        self.committed_clock = self.clock;
        self.committed_watermark = self.watermark;
        self.committed_reg = None;
    }

    /// A batch was thrown away: back to the clock and file of the last commit.
    pub fn rollback(&mut self) {
        self.clock = self.committed_clock;
        self.watermark = self.committed_watermark;
        if let Some(reg) = self.committed_reg.take() {
            self.reg = reg;
        }
        self.next_due = None;
        self.outcomes.clear();
        self.fired.clear();
    }

    fn live(&self, clock: i64) -> bool {
        self.window
            .is_none_or(|(from, to)| clock >= from && clock <= to)
    }

    /// A backtest makes its own merge notices, hand-overs and forwarded copies (marked
    /// [`BACKTEST`]): the ones the live engine wrote are left out, or they would count twice.
    fn skips(&self, ev: &Ev) -> bool {
        self.window.is_some()
            && moves_the_person(&ev.ty, &ev.data)
            && ev.data.get(BACKTEST) != Some(&Value::Bool(true))
    }

    /// The rows `ev` may touch, known from the event alone.
    pub fn keys(&self, ev: &Ev, partition: u32, keys: &mut Keys) {
        if !self.reg.relevant(&ev.ty) || self.skips(ev) {
            return;
        }
        person_keys(ev, keys);
        let Some((doc, here)) = doc_of(ev) else {
            return;
        };
        let mut scope = cel::EventScope::new(&doc.value);
        if let Some(copy) = self.counts(ev, partition) {
            for a in &self.reg.current.aggregates {
                if a.on.contains(&doc.ty)
                    && let Ok(Some(k)) = scope.key(&a.key)
                {
                    let k = format!("{}{}{k}", a.name, rows::SEP);
                    if copy {
                        keys.aggf.insert(k);
                    } else {
                        keys.agg.insert(k);
                    }
                }
            }
        }
        if !here {
            return;
        }
        if let Some(c) = &doc.customer {
            keys.person.insert(c.clone());
        }
        let starts = self.reg.starts(&doc.ty);
        if !starts && !self.reg.watched.contains(&doc.ty) {
            return;
        }
        let customer = doc.customer.clone().unwrap_or_default();
        if let Some(c) = &doc.customer {
            keys.wait.insert(format!("c:{c}"));
            keys.arb.insert(c.clone());
            keys.jrnl.insert(c.clone());
            keys.frag.insert(c.clone());
        }
        if let Some(o) = &doc.order {
            keys.wait.insert(format!("o:{o}"));
        }
        for t in &self.reg.current.triggers {
            keys.tstat.insert(t.id());
            if !t.on.contains(&doc.ty) {
                continue;
            }
            let k = match &t.key {
                None => String::new(),
                Some(e) => scope.key(e).ok().flatten().unwrap_or_default(),
            };
            keys.run.insert(rows::run_key(&customer, &t.name, &k));
            if t.when.as_ref().is_some_and(|w| w.uses_agg) {
                for a in &self.reg.current.aggregates {
                    if let Ok(Some(k)) = scope.key(&a.key) {
                        let k = format!("{}{}{k}", a.name, rows::SEP);
                        keys.agg.insert(k.clone());
                        keys.aggf.insert(k);
                    }
                }
            }
        }
    }

    /// The rows that rows already loaded lead to (a wait list's runs, a run's customer, …).
    /// Returns whether it added any key that is not cached.
    pub fn follow(&self, views: &Views, keys: &mut Keys) -> bool {
        let mut more = Keys::default();
        for w in &keys.wait {
            if let Some(l) = views.wait.get(w) {
                more.run.extend(l.runs.iter().map(|x| x.run.clone()));
            }
        }
        for a in &keys.arb {
            if let Some(a) = views.arb.get(a) {
                more.run.extend(a.held.iter().map(|h| h.run.clone()));
            }
        }
        for rk in keys.run.iter().chain(more.run.clone().iter()) {
            let (c, _, _) = rows::split_run_key(rk);
            if !c.is_empty() {
                more.arb.insert(c.to_owned());
                more.jrnl.insert(c.to_owned());
                more.frag.insert(c.to_owned());
                more.wait.insert(format!("c:{c}"));
            }
            if let Some(r) = views.run.get(rk) {
                more.wait.extend(r.listed.iter().cloned());
                more.tstat.insert(format!("{}@{}", r.trigger, r.version));
                if let Some(o) = r.event.pointer("/data/order_id").and_then(Value::as_str) {
                    more.wait.insert(format!("o:{o}"));
                }
                for h in views.arb.get(c).map(|a| a.held.as_slice()).unwrap_or(&[]) {
                    more.tstat
                        .insert(format!("{}@{}", h.entry.trigger, h.entry.version));
                }
            }
        }
        let missing = views.missing(&more);
        keys.extend(more);
        missing
    }

    /// Whether aggregates count this record, and into which table: originals always (`agg`, where
    /// they are stored and the API reads them), forwarded copies into `aggf` for the customer's
    /// conditions, except in the commerce partition, which counted the original already.
    fn counts(&self, ev: &Ev, partition: u32) -> Option<bool> {
        if ev.ty != FORWARDED {
            return Some(false);
        }
        (self.commerce != Some(partition)).then_some(true)
    }

    /// Fires every pending timer due at or before `clock`, earliest first.
    pub fn fire_due(
        &mut self,
        views: &mut Views,
        partition: u32,
        clock: i64,
        emits: &mut Vec<Emit>,
    ) {
        let mut until = self.window.map_or(clock, |(_, to)| clock.min(to));
        let gated = self.window.is_none() && self.watermark.is_some();
        if let Some(w) = self.watermark.filter(|_| gated) {
            until = until.min(w);
        }
        loop {
            let Some(first) = views.due.first().cloned() else {
                return;
            };
            let Some((due, target)) = rows::parse_timer_key(&first) else {
                views.due.remove(&first);
                continue;
            };
            if due > until {
                return;
            }
            views.due.remove(&first);
            self.fired.push(due);
            // Held back by the watermark, a timer still fires at its own time.
            let at = if gated { due } else { self.clock.max(due) };
            let mut m = Machine {
                partition,
                reg: &self.reg,
                views,
                clock: at,
                floor: self.clock,
                emits,
                outcomes: &mut self.outcomes,
            };
            m.fire(&first, &target);
        }
    }

    /// Applies one record: a new trigger file, or an event for aggregates, waits and triggers.
    /// Called after the projections have folded it.
    pub fn apply(&mut self, views: &mut Views, ev: &Ev, partition: u32, emits: &mut Vec<Emit>) {
        if ev.ty == TICK {
            if let Some(w) = ev.data.get("watermark").and_then(Value::as_i64) {
                self.watermark = Some(self.watermark.map_or(w, |m| m.max(w)));
                views.watermark = self.watermark;
            }
            return;
        }
        if ev.ty == TRIGGERS {
            if self.window.is_none() {
                self.install(views, ev);
            }
            return;
        }
        if !self.reg.relevant(&ev.ty) || self.skips(ev) {
            return;
        }
        if self.person(views, ev, partition, emits) {
            return;
        }
        let Some((doc, mut here)) = doc_of(ev) else {
            return;
        };
        // Forwarded only when some trigger starts on the type or waits for it, so a log without
        // such triggers carries no copies.
        if Some(partition) == self.commerce
            && ev.ty != FORWARDED
            && self.reg.forwards(&ev.ty)
            && let Some(c) = &doc.customer
        {
            let mut data = doc.value.clone();
            data["received_at"] = json!(machine::fmt(ev.received));
            emits.push(Emit {
                id: format!("fwd_{partition}_{}", ev.offset),
                ty: FORWARDED.into(),
                subject: Some(c.clone()),
                time: ev.time,
                data,
            });
        }
        // A backtest leaves out the events live triggers emitted: it makes its own.
        if self.window.is_some() && ev.id.starts_with("trg_") {
            return;
        }
        let origin = format!("{partition}:{}", ev.offset);
        let live = self.live(self.clock);
        let counts = self.counts(ev, partition);
        let mut m = self.machine(views, partition, emits);
        if let Some(copy) = counts {
            m.aggregate(&doc, copy);
        }
        if here && let Some(c) = &doc.customer {
            // A merged identity's events drive its person's runs, in the person's partition.
            if person::hops(&doc.value) < person::HOPS
                && let Some(home) = m.home_of(c)
            {
                m.forward_to_home(&doc, &home, ev);
                here = false;
            } else if ev.ty == FORWARDED && counts == Some(true) {
                let row = m.views.person.upsert(c);
                let o = row.orders.get_or_insert_with(Default::default);
                crate::project::fold_forwarded_order(o, &doc.ty, &doc.value["data"], ev.time);
            }
        }
        if here && live {
            // Only what an adopted run could wait for or be cancelled by is kept.
            if let Some(c) = &doc.customer
                && m.reg.watched.contains(&doc.ty)
            {
                m.remember_for_handoffs(c, &doc);
            }
            m.on_event(&doc, &origin);
        }
    }

    /// The machine over this partition's rows at its clock.
    fn machine<'a>(
        &'a mut self,
        views: &'a mut Views,
        partition: u32,
        emits: &'a mut Vec<Emit>,
    ) -> Machine<'a> {
        Machine {
            partition,
            reg: &self.reg,
            views,
            clock: self.clock,
            floor: self.clock,
            emits,
            outcomes: &mut self.outcomes,
        }
    }

    /// The person's records: merge notices and hand-overs, and the notices link and unmerge
    /// events send. Returns whether the record was one of the engine's (nothing more to do).
    fn person(
        &mut self,
        views: &mut Views,
        ev: &Ev,
        partition: u32,
        emits: &mut Vec<Emit>,
    ) -> bool {
        let mut m = self.machine(views, partition, emits);
        match ev.ty.as_str() {
            MERGED => {
                m.merged(&ev.data, ev);
                true
            }
            HANDOFF => {
                m.adopt(&ev.data, ev);
                true
            }
            "customer.unmerged" => {
                if let Some(x) = ev.str("identity") {
                    let x = crate::project::identity_key(x);
                    if let Some(c) = ev.customer().map(crate::project::identity_key) {
                        m.note(
                            &c,
                            "unmerged",
                            format!("{x} split off by {}", ev.id),
                            &ev.id,
                        );
                        // A later login merges it again.
                        if let Some(row) = m.views.person.get_mut(&c) {
                            row.merged.retain(|g| g.id != x);
                            row.frags.retain(|(id, _)| *id != x);
                        }
                    }
                    m.emits.push(Emit {
                        id: format!("mrg_{partition}_{}_u", ev.offset),
                        ty: MERGED.into(),
                        subject: Some(x.clone()),
                        time: ev.time,
                        data: json!({ "identity": x, "home": null, "via": ev.id, "at": m.clock }),
                    });
                }
                true
            }
            _ => {
                if let Some((home, others)) = person::merge_of(ev) {
                    let inline = ev.subject.as_deref().map(crate::project::identity_key)
                        == Some(home.clone());
                    m.link(ev, &home, &others, inline);
                }
                false
            }
        }
    }

    fn install(&mut self, views: &mut Views, ev: &Ev) {
        let source = ev.data.get("source").and_then(Value::as_str).unwrap_or("");
        match TriggerSet::parse(source) {
            Ok(set) => {
                let def = Definition {
                    version: set.version.clone(),
                    source: source.to_owned(),
                };
                views
                    .trigdef
                    .insert(format!("set:{}", set.version), def.clone());
                views.trigdef.insert("current".into(), def);
                tracing::info!(
                    version = set.version,
                    triggers = set.triggers.len(),
                    "trigger file installed"
                );
                if self.committed_reg.is_none() {
                    self.committed_reg = Some(self.reg.clone());
                }
                self.reg.install(set);
                if self.watermark.is_none() && ev.data.get("watermarks") == Some(&json!(true)) {
                    self.watermark = Some(0);
                    views.watermark = Some(0);
                }
            }
            Err(p) => {
                tracing::error!(problems = ?p, "a trigger file in the log does not compile; the previous one stays");
            }
        }
    }
}

/// The rows the person's records touch (see [`person`]).
fn person_keys(ev: &Ev, keys: &mut Keys) {
    let s = |k: &str| ev.data.get(k).and_then(Value::as_str);
    match ev.ty.as_str() {
        MERGED => {
            if let Some(x) = s("identity") {
                keys.person.insert(x.to_owned());
                keys.person_runs.insert(x.to_owned());
                keys.arb.insert(x.to_owned());
                keys.frag.insert(x.to_owned());
                keys.jrnl.insert(x.to_owned());
            }
        }
        HANDOFF => {
            let Some(home) = s("home") else { return };
            keys.person.insert(home.to_owned());
            keys.arb.insert(home.to_owned());
            keys.jrnl.insert(home.to_owned());
            keys.frag.insert(home.to_owned());
            keys.wait.insert(format!("c:{home}"));
            for c in ev
                .data
                .get("runs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let t = c.get("trigger").and_then(Value::as_str).unwrap_or("");
                let k = c.get("key").and_then(Value::as_str).unwrap_or("");
                keys.run.insert(rows::run_key(home, t, k));
                if let Some(v) = c.pointer("/run/version").and_then(Value::as_str) {
                    keys.tstat.insert(format!("{t}@{v}"));
                }
                for l in c
                    .get("lists")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(corr) = l.get(0).and_then(Value::as_str) {
                        keys.wait.insert(corr.to_owned());
                    }
                }
            }
        }
        "customer.unmerged" => {
            if let Some(c) = ev.customer() {
                keys.jrnl.insert(crate::project::identity_key(c));
                keys.person.insert(crate::project::identity_key(c));
            }
        }
        _ => {
            if let Some((home, _)) = person::merge_of(ev) {
                keys.person.insert(home.clone());
                keys.jrnl.insert(home);
            }
        }
    }
}
