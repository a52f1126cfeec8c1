//! The starter trigger file `config/triggers.toml`: it compiles, it has the journeys the docs
//! promise, its CEL reads only fields the catalog payloads really have, and the journeys do what
//! the comments say when events go through the real trigger machine (two partitions, commerce
//! and customers, on a virtual clock).

use std::collections::VecDeque;

use serde_json::{Value, json};
use storeline_engine::Ev;
use storeline_engine::ProjectionConfig;
use storeline_engine::testkit::Views;
use storeline_engine::testkit::project;
use storeline_engine::testkit::triggers::{Action, Expr, Match, Scope, Step};
use storeline_engine::testkit::{FORWARDED, Outcome, Registry, Stage, TICK};
use storeline_engine::triggers::TriggerSet;
use storeline_event::outbox::OutboxKey;

const SOURCE: &str = include_str!("../../../config/triggers.toml");

const JOURNEYS: &[&str] = &[
    "welcome-series",
    "abandoned-cart",
    "order-confirmation",
    "shipping-notification",
    "payment-failed-recovery",
    "back-in-stock-alert",
    "low-stock-to-erp",
    "card-velocity",
    "win-back",
    "review-request",
];

/// Event types of the file that are not in the catalog (typos would land here).
const CUSTOM: &[&str] = &[
    "product.stock_alert_requested",
    "product.back_in_stock_notify",
    "fraud.suspected",
];

fn parse() -> TriggerSet {
    match TriggerSet::parse(SOURCE) {
        Ok(set) => set,
        Err(problems) => panic!("config/triggers.toml does not compile:\n{problems:#?}"),
    }
}

#[test]
fn the_starter_set_compiles_and_has_every_journey() {
    let set = parse();
    assert!(set.triggers.len() >= 10, "{} triggers", set.triggers.len());
    for name in JOURNEYS {
        let t = set
            .trigger(name)
            .unwrap_or_else(|| panic!("no trigger named {name}"));
        assert!(t.def.description.is_some(), "{name} has no description");
    }
    for c in ["email", "sms", "erp", "fraud"] {
        assert!(set.channels.contains_key(c), "no connector {c}");
    }
    assert!(
        set.warnings.is_empty(),
        "the starter set checks without warnings: {:#?}",
        set.warnings
    );
    assert_eq!(set.channels["email"], "email");
    assert_eq!(set.channels["sms"], "sms");
    assert_eq!(set.arbitration.quiet, Some((21 * 60, 8 * 60)));
    assert_eq!(set.arbitration.caps.len(), 2);
}

// ------------------------------------------------------------------------------------------
// CEL reads real fields

/// Every field of each payload the file reads (all optional fields present).
fn full(ty: &str) -> Option<Value> {
    let money = |a: i64| json!({ "amount": a, "currency": "EUR" });
    let line = json!({ "sku": "SKU-1", "quantity": 1, "unit_price": money(2500), "product_id": "P-1",
                       "name": "Mug", "category": "kitchen", "brand": "Acme", "variant": "blue" });
    let payment = json!({ "payment_id": "pay-1", "order_id": "ord-1", "amount": money(2500),
                          "method": "card", "provider": "stripe", "card_fingerprint": "fp-1",
                          "reason": "insufficient_funds", "error_code": "51" });
    let order_ref = json!({ "order_id": "ord-1", "reason": "r", "location": "main" });
    let level = json!({ "sku": "SKU-1", "location": "main", "available": 3, "threshold": 5 });
    let product = json!({ "sku": "SKU-1", "product_id": "P-1", "name": "Mug" });
    Some(match ty {
        "customer.signed_up" => {
            json!({ "customer_id": "cus-1", "email": "a@example.com", "phone": "+4912345",
            "name": "Ann Lee", "first_name": "Ann", "last_name": "Lee", "locale": "de-DE",
            "timezone": "Europe/Berlin", "traits": {}, "anonymous_id": "anon-1" })
        }
        "customer.consent_changed" => {
            json!({ "channel": "email", "granted": true, "source": "form" })
        }
        "cart.item_added" | "cart.item_removed" => json!({ "cart_id": "cart-1", "sku": "SKU-1",
            "product_id": "P-1", "quantity": 1, "unit_price": money(2500), "cart_value": money(2500),
            "name": "Mug", "brand": "Acme", "category": "kitchen", "variant": "blue" }),
        "order.placed" => json!({ "order_id": "ord-1", "lines": [line], "total": money(2500),
            "subtotal": money(2100), "tax": money(400), "shipping": money(0), "discount": money(0),
            "coupon": "C", "location": "main", "channel": "web", "customer_id": "cus-1",
            "email": "a@example.com" }),
        "order.shipped" => json!({ "order_id": "ord-1", "carrier": "DHL", "tracking_number": "123",
            "tracking_url": "https://t.example.com/123", "location": "main" }),
        "order.delivered" | "order.cancelled" => order_ref,
        "order.paid" => {
            json!({ "order_id": "ord-1", "amount": money(2500), "payment_id": "pay-1" })
        }
        "order.refunded" => json!({ "order_id": "ord-1", "amount": money(2500), "reason": "r",
            "lines": [{ "sku": "SKU-1", "quantity": 1 }] }),
        "return.requested" => json!({ "order_id": "ord-1", "return_id": "ret-1",
            "lines": [{ "sku": "SKU-1", "quantity": 1 }], "reason": "r", "location": "main" }),
        "payment.attempted" | "payment.succeeded" | "payment.failed" => payment,
        "inventory.low" | "inventory.back_in_stock" => level,
        "product.stock_alert_requested" | "product.back_in_stock_notify" => product,
        _ => return None,
    })
}

/// Only the required fields.
fn minimal(ty: &str) -> Value {
    let money = json!({ "amount": 2500, "currency": "EUR" });
    let lines = json!([{ "sku": "SKU-1", "quantity": 1 }]);
    match ty {
        "customer.consent_changed" => json!({ "channel": "email", "granted": true }),
        "cart.item_added" | "cart.item_removed" => json!({ "sku": "SKU-1", "quantity": 1 }),
        "order.placed" => json!({ "order_id": "ord-1", "lines": lines, "total": money }),
        "order.refunded" => json!({ "order_id": "ord-1", "amount": money }),
        "return.requested" => json!({ "order_id": "ord-1", "lines": lines }),
        t if t.starts_with("order.") => json!({ "order_id": "ord-1" }),
        t if t.starts_with("payment.") => json!({ "amount": money }),
        t if t.starts_with("inventory.") => json!({ "sku": "SKU-1", "available": 3 }),
        _ => json!({}),
    }
}

fn doc(ty: &str, data: Value) -> Value {
    json!({ "id": "evt-1", "type": ty, "time": "2026-03-02T10:00:00.000Z", "subject": "cus-1",
            "customer": "cus-1", "data": data })
}

/// The Customer 360 document's shape (what `customer` holds), with and without consent.
fn customer(consented: bool) -> Value {
    let consent = if consented {
        json!({ "email": true, "sms": true })
    } else {
        json!({})
    };
    json!({ "id": "cus-1", "identities": {}, "merges": [], "traits": { "timezone": "Europe/Berlin" },
            "consent": consent, "consent_details": {}, "stats": {}, "cart": if consented {
                json!({ "items": [], "value": { "amount": 2500, "currency": "EUR" }, "updated_at": "2026-03-02T10:00:00.000Z" })
            } else { Value::Null } })
}

/// One expression and the event types its `event` and `trigger` can be.
struct Use {
    at: String,
    expr: Expr,
    event: Vec<String>,
    trigger: Vec<String>,
    /// A condition (must give a bool, on minimal payloads too) rather than a value.
    condition: bool,
}

/// A step's actions, each with the event types its `event` can be.
fn actions<'a>(s: &'a Step, on: &'a [String]) -> Vec<(&'a Action, &'a [String])> {
    match s {
        Step::Then(acts) => acts.iter().map(|a| (a, on)).collect(),
        Step::Wait {
            wait,
            on_event,
            on_timeout,
            ..
        } => on_event
            .iter()
            .map(|a| (a, wait.types.as_slice()))
            .chain(on_timeout.iter().map(|a| (a, on)))
            .collect(),
        Step::Delay(_) | Step::DelayUntil(..) => Vec::new(),
    }
}

/// Every CEL expression of the file.
fn uses(set: &TriggerSet) -> Vec<Use> {
    let mut out = Vec::new();
    let mut add = |at: String, expr: &Expr, event: &[String], trigger: &[String], cond: bool| {
        out.push(Use {
            at,
            expr: Expr::compile(&expr.source).expect("compiled once already"),
            event: event.to_vec(),
            trigger: trigger.to_vec(),
            condition: cond,
        });
    };
    for a in &set.aggregates {
        let at = format!("aggregate {}", a.name);
        add(format!("{at}.key"), &a.key, &a.on, &a.on, false);
        if let Some(v) = &a.value {
            add(format!("{at}.value"), v, &a.on, &a.on, false);
        }
        if let Some(w) = &a.when {
            add(format!("{at}.when"), w, &a.on, &a.on, true);
        }
    }
    for t in &set.triggers {
        let n = &t.name;
        if let Some(w) = &t.when {
            add(format!("{n}.when"), w, &t.on, &t.on, true);
        }
        if let Some(k) = &t.key {
            add(format!("{n}.key"), k, &t.on, &t.on, false);
        }
        for c in &t.cancel_on {
            if let Match::Cel(e) = &c.matching {
                let ty = std::slice::from_ref(&c.ty);
                add(format!("{n}.cancel_on {}", c.ty), e, ty, &t.on, true);
            }
        }
        for (i, s) in t.steps.iter().enumerate() {
            if let Step::Wait { wait, .. } = s
                && let Match::Cel(e) = &wait.matching
            {
                add(
                    format!("{n}.steps[{i}].wait.match"),
                    e,
                    &wait.types,
                    &t.on,
                    true,
                );
            }
            for (a, event) in actions(s, &t.on) {
                match a {
                    Action::Deliver { data, .. } | Action::Emit { data, .. } => {
                        for (k, e) in data {
                            add(format!("{n}.steps[{i}].data.{k}"), e, event, &t.on, false);
                        }
                    }
                    Action::SetTrait { value, .. } => {
                        add(format!("{n}.steps[{i}].value"), value, event, &t.on, false);
                    }
                }
            }
        }
    }
    out
}

/// `event.data.a.b` / `trigger.data.a.b` paths in a CEL source, up to a method call or index.
fn data_paths(src: &str, var: &str) -> Vec<Vec<String>> {
    let pat = format!("{var}.data");
    let mut out = Vec::new();
    let bytes = src.as_bytes();
    let mut from = 0;
    while let Some(i) = src[from..].find(&pat) {
        let start = from + i;
        from = start + pat.len();
        if start > 0
            && (bytes[start - 1].is_ascii_alphanumeric()
                || bytes[start - 1] == b'_'
                || bytes[start - 1] == b'.')
        {
            continue;
        }
        let mut path = Vec::new();
        let mut j = from;
        while j < bytes.len() && bytes[j] == b'.' {
            let k = j
                + 1
                + src[j + 1..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(src.len() - j - 1);
            if bytes.get(k) == Some(&b'(') {
                break; // a method such as .exists(
            }
            path.push(src[j + 1..k].to_owned());
            j = k;
        }
        out.push(path);
    }
    out
}

#[test]
fn cel_reads_only_fields_the_payloads_have() {
    let set = parse();
    let mut problems = Vec::new();
    let mut types = std::collections::BTreeSet::new();
    for u in uses(&set) {
        types.extend(u.event.iter().chain(&u.trigger).cloned());
    }
    for t in &set.triggers {
        for s in &t.steps {
            for (a, _) in actions(s, &t.on) {
                if let Action::Emit { ty, .. } = a {
                    types.insert(ty.clone());
                }
            }
        }
    }
    // Every type is a catalog type or a known custom one, and its samples are valid payloads.
    for ty in &types {
        if !storeline_event::is_catalog_type(ty) && !CUSTOM.contains(&ty.as_str()) {
            problems.push(format!(
                "'{ty}' is neither a catalog type nor a known custom type (a typo?)"
            ));
            continue;
        }
        if ty == "fraud.suspected" {
            continue; // only emitted
        }
        let Some(sample) = full(ty) else {
            problems.push(format!("no sample payload for {ty}"));
            continue;
        };
        for data in [sample, minimal(ty)] {
            let raw = serde_json::value::to_raw_value(&data).unwrap();
            if let Err(e) = storeline_event::validate_data(ty, Some(&raw)) {
                problems.push(format!("sample {ty} {data} is not valid: {e:?}"));
            }
        }
    }
    for u in uses(&set) {
        // Paths are checked against the full payloads: a typo is caught even inside has().
        for (var, types) in [("event", &u.event), ("trigger", &u.trigger)] {
            for path in data_paths(&u.expr.source, var) {
                for ty in types.iter() {
                    let mut v = full(ty).unwrap_or(json!({}));
                    for seg in &path {
                        match v.get(seg) {
                            Some(next) => v = next.clone(),
                            None if v.is_array() => break,
                            None => {
                                problems.push(format!(
                                    "{}: {var}.data.{} is not a field of {ty}",
                                    u.at,
                                    path.join(".")
                                ));
                                break;
                            }
                        }
                    }
                }
            }
        }
        // Evaluation: with every field present nothing fails; with only the required ones a
        // condition still decides (true or false) instead of erring.
        let agg: serde_json::Map<String, Value> = set
            .aggregates
            .iter()
            .map(|a| (a.name.clone(), json!(0)))
            .collect();
        for ev_ty in &u.event {
            for tr_ty in &u.trigger {
                for (payloads, consented) in [("full", true), ("minimal", false)] {
                    let event = if payloads == "full" {
                        full(ev_ty).unwrap_or(json!({}))
                    } else {
                        minimal(ev_ty)
                    };
                    // The run's event passed the trigger's `when` (whose own check is the
                    // `event` case): it is taken with every field.
                    let trigger = full(tr_ty).unwrap_or(json!({}));
                    let scope = Scope::default()
                        .with("event", &doc(ev_ty, event))
                        .with("trigger", &doc(tr_ty, trigger))
                        .with("customer", &customer(consented))
                        .with("agg", &Value::Object(agg.clone()));
                    let result = if u.condition {
                        u.expr.test(&scope).map(|_| ())
                    } else {
                        u.expr.value(&scope).map(|_| ())
                    };
                    if let Err(e) = result
                        && (payloads == "full" || u.condition)
                    {
                        problems.push(format!("{} on {ev_ty} ({payloads}): {e}", u.at));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ------------------------------------------------------------------------------------------
// The journeys on the real machine

const COMMERCE: u32 = 0;
const CUSTOMERS: u32 = 1;
const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;

/// 2026-03-02 (a Monday) 00:00 UTC.
fn day0() -> i64 {
    chrono::DateTime::parse_from_rfc3339("2026-03-02T00:00:00Z")
        .expect("a time")
        .timestamp_millis()
}

/// A stored event (partition and offset are set when it is applied).
fn stored(id: String, ty: &str, received: i64, subject: Option<String>, data: Value) -> Ev {
    Ev {
        id,
        ty: ty.into(),
        time: received,
        received,
        subject,
        data,
        anonymous_id: None,
        command: None,
        // The storeline.* records of these tests stand for the engine's own.
        internal: ty.starts_with("storeline."),
        reserved_source: false,
        partition: 0,
        offset: 0,
    }
}

struct Part {
    views: Views,
    stage: Stage,
    offset: u64,
}

/// Two partitions, applied as the partition writer does (timers due at or before a record fire
/// first): commerce events in one, customers' in the other, the commerce partition's copies of
/// order events forwarded to the customers'. Rows stay in memory, so the loading of rows by key
/// (`Stage::keys`/`follow`) is not exercised here.
struct World {
    parts: Vec<Part>,
    queue: VecDeque<(u32, Ev)>,
    cfg: ProjectionConfig,
    /// Outbox entries, in the order they were written.
    sent: Vec<Value>,
    outcomes: Vec<Outcome>,
    emitted: Vec<Ev>,
    now: i64,
    n: u64,
}

impl World {
    fn new() -> World {
        World::with(SOURCE)
    }

    fn with(source: &str) -> World {
        let part = || Part {
            views: Views::new(0),
            stage: Stage::new(
                Registry::new(TriggerSet::parse(source).expect("compiles")),
                Some(COMMERCE),
            ),
            offset: 0,
        };
        let mut parts = vec![part(), part()];
        parts[1].views = Views::new(CUSTOMERS);
        World {
            parts,
            queue: VecDeque::new(),
            cfg: ProjectionConfig::default(),
            sent: Vec::new(),
            outcomes: Vec::new(),
            emitted: Vec::new(),
            now: day0(),
            n: 0,
        }
    }

    fn route(ty: &str) -> u32 {
        if ty != FORWARDED && storeline_event::is_commerce_type(ty) {
            COMMERCE
        } else {
            CUSTOMERS
        }
    }

    /// Sends an event at `at` (ms) and applies everything it causes.
    fn send(&mut self, at: i64, ty: &str, subject: &str, data: Value) {
        self.tick(at);
        self.n += 1;
        let ev = stored(
            format!("evt-{}", self.n),
            ty,
            at,
            Some(subject.into()),
            data,
        );
        self.queue.push_back((Self::route(ty), ev));
        self.drain();
    }

    /// Moves both partitions' clocks to `at`, firing due timers.
    fn tick(&mut self, at: i64) {
        assert!(at >= self.now, "time goes forward");
        self.now = at;
        for p in [COMMERCE, CUSTOMERS] {
            self.queue
                .push_back((p, stored(format!("tick-{at}"), TICK, at, None, Value::Null)));
        }
        self.drain();
    }

    fn drain(&mut self) {
        while let Some((p, mut ev)) = self.queue.pop_front() {
            let part = &mut self.parts[p as usize];
            ev.partition = p;
            ev.offset = part.offset;
            part.offset += 1;
            let clock = part.stage.clock().max(ev.received);
            let mut emits = Vec::new();
            part.stage.fire_due(&mut part.views, p, clock, &mut emits);
            part.stage.set_clock(clock);
            project::apply(&mut part.views, &ev, &self.cfg, &mut emits).expect("no sum overflows");
            part.stage.apply(&mut part.views, &ev, p, &mut emits);
            part.stage.fire_due(&mut part.views, p, clock, &mut emits);
            for (key, entry) in std::mem::take(&mut part.views.outbox) {
                // The key's clock: the time it was handed to delivery.
                let at = OutboxKey::decode(&key).expect("outbox key").clock;
                let mut entry = serde_json::to_value(entry).expect("an entry is JSON");
                entry["sent_at"] = json!(at);
                self.sent.push(entry);
            }
            self.outcomes.extend(part.stage.take_outcomes());
            for e in emits {
                let mut ev = stored(e.id, &e.ty, clock, e.subject, e.data);
                ev.time = e.time;
                if ev.ty != FORWARDED {
                    self.emitted.push(ev.clone());
                }
                self.queue.push_back((Self::route(&ev.ty), ev));
            }
        }
    }

    /// Deliveries of `trigger`, as `(minutes after day0 when handed to delivery, template or
    /// connector)`.
    fn sent_by(&self, trigger: &str) -> Vec<(i64, String)> {
        let mut out: Vec<(i64, String)> = self
            .sent
            .iter()
            .filter(|d| d["trigger"] == trigger)
            .map(|d| {
                let what = d["template"]
                    .as_str()
                    .or(d["connector"].as_str())
                    .unwrap_or("")
                    .to_owned();
                (
                    (d["sent_at"].as_i64().expect("sent_at") - day0()) / MIN,
                    what,
                )
            })
            .collect();
        // Entries written at the same time are ordered by their delivery id.
        out.sort();
        out
    }

    fn count(&self, trigger: &str, what: &str) -> usize {
        self.outcomes
            .iter()
            .filter(|o| o.trigger == trigger && o.what == what)
            .count()
    }
}

fn money(a: i64) -> Value {
    json!({ "amount": a, "currency": "EUR" })
}

fn consent(w: &mut World, at: i64, customer: &str) {
    w.send(
        at,
        "customer.consent_changed",
        customer,
        json!({ "channel": "email", "granted": true }),
    );
}

fn order(w: &mut World, at: i64, customer: &str, id: &str) {
    w.send(at, "order.placed", customer, json!({ "order_id": id, "customer_id": customer,
        "lines": [{ "sku": "SKU-1", "quantity": 1, "unit_price": money(2500) }], "total": money(2500) }));
}

fn add_to_cart(w: &mut World, at: i64, customer: &str, value: i64) {
    w.send(
        at,
        "cart.item_added",
        customer,
        json!({ "sku": "SKU-1", "quantity": 1, "cart_value": money(value) }),
    );
}

#[test]
fn welcome_series_waits_for_the_consent_then_sends_two_emails() {
    let mut w = World::new();
    let t0 = day0() + 10 * HOUR;
    w.send(
        t0,
        "customer.signed_up",
        "cus-1",
        json!({ "email": "a@example.com", "first_name": "Ann" }),
    );
    consent(&mut w, t0 + 2 * MIN, "cus-1");
    w.send(t0 + 3 * MIN, "customer.signed_up", "cus-1", json!({}));
    w.tick(t0 + 3 * DAY);
    assert_eq!(
        w.sent_by("welcome-series"),
        [
            (602, "welcome".into()),
            (602 + 2 * 24 * 60, "welcome_2".into())
        ]
    );
    assert_eq!(w.sent[0]["data"]["first_name"], "Ann");
    assert_eq!(w.count("welcome-series", "already_running"), 1);
    // Once: after the series, another sign-up starts nothing.
    w.send(t0 + 4 * DAY, "customer.signed_up", "cus-1", json!({}));
    assert_eq!(w.count("welcome-series", "once"), 1);

    // Without consent the emails are suppressed, after the 10 minutes.
    w.send(t0 + 5 * DAY, "customer.signed_up", "cus-2", json!({}));
    w.tick(t0 + 8 * DAY);
    assert_eq!(w.count("welcome-series", "suppressed_consent"), 2);
}

#[test]
fn abandoned_cart_reminds_after_the_last_add_and_stops_at_an_order() {
    let mut w = World::new();
    let t0 = day0() + 9 * HOUR;
    consent(&mut w, t0, "cus-1");
    add_to_cart(&mut w, t0 + MIN, "cus-1", 1500); // below 20.00: no run
    add_to_cart(&mut w, t0 + 2 * MIN, "cus-1", 2500);
    add_to_cart(&mut w, t0 + 10 * MIN, "cus-1", 4000); // restarts the 15 minutes
    w.tick(t0 + 10 * MIN + 15 * MIN + 59 * MIN);
    assert_eq!(w.sent_by("abandoned-cart"), []);
    w.tick(t0 + 10 * MIN + 15 * MIN + 60 * MIN);
    assert_eq!(
        w.sent_by("abandoned-cart"),
        [(9 * 60 + 85, "abandoned_cart".into())]
    );
    w.tick(t0 + 2 * DAY);
    let sent = w.sent_by("abandoned-cart");
    assert_eq!(
        sent[1],
        (9 * 60 + 85 + 23 * 60, "abandoned_cart_discount".into())
    );
    assert_eq!(
        w.sent.last().unwrap()["data"]["discount_code"],
        "COMEBACK10"
    );
    assert_eq!(w.count("abandoned-cart", "condition_false"), 1);
    assert_eq!(w.count("abandoned-cart", "debounced"), 1);

    // An order after the first reminder: no discount.
    let t1 = day0() + 3 * DAY + 9 * HOUR;
    consent(&mut w, t1, "cus-2");
    add_to_cart(&mut w, t1, "cus-2", 3000);
    w.tick(t1 + 2 * HOUR);
    order(&mut w, t1 + 3 * HOUR, "cus-2", "ord-2");
    w.tick(t1 + 2 * DAY);
    let cus2: Vec<&Value> = w
        .sent
        .iter()
        .filter(|d| d["customer"] == "cus-2" && d["trigger"] == "abandoned-cart")
        .collect();
    assert_eq!(cus2.len(), 1, "{cus2:#?}");
    assert_eq!(w.count("abandoned-cart", "cancelled"), 1);
}

#[test]
fn transactional_messages_ignore_consent_and_quiet_hours() {
    let mut w = World::new();
    let night = day0() + 23 * HOUR;
    order(&mut w, night, "cus-1", "ord-1");
    w.send(
        night + MIN,
        "order.shipped",
        "cus-1",
        json!({ "order_id": "ord-1", "tracking_url": "https://t.example.com/1" }),
    );
    assert_eq!(
        w.sent_by("order-confirmation"),
        [(23 * 60, "order_confirmation".into())]
    );
    assert_eq!(
        w.sent_by("shipping-notification"),
        [
            (23 * 60 + 1, "order_shipped".into()),
            (23 * 60 + 1, "order_shipped_sms".into())
        ]
    );
    let sms = w
        .sent
        .iter()
        .find(|d| d["template"] == "order_shipped_sms")
        .unwrap();
    assert_eq!(sms["channel"], "sms");
    assert_eq!(sms["data"]["tracking_url"], "https://t.example.com/1");
    // The shipping email reads optional fields the shop did not send: they are null.
    let email = w
        .sent
        .iter()
        .find(|d| d["template"] == "order_shipped")
        .unwrap();
    assert_eq!(email["data"]["carrier"], Value::Null);
}

/// The file's comment and docs/triggers.md say what the machine does: transactional messages
/// skip the caps and do not use them up (three order confirmations leave the 3-email cap free
/// for the welcome email).
#[test]
fn transactional_messages_do_not_count_toward_the_caps_as_the_file_says() {
    let prose = |text: &str| {
        text.lines()
            .map(|l| l.trim().trim_start_matches('#').trim())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let file = prose(SOURCE);
    assert!(
        file.contains("their messages do not count toward the caps"),
        "config/triggers.toml says what transactional messages do to the caps"
    );
    assert!(!file.contains("but their messages count toward the caps"));
    let docs = prose(include_str!("../../../docs/triggers.md"));
    assert!(docs.contains("Transactional messages skip all three and do not use up the caps"));

    let mut w = World::new();
    let t0 = day0() + 10 * HOUR;
    for (i, order_id) in ["ord-1", "ord-2", "ord-3"].into_iter().enumerate() {
        order(&mut w, t0 + i as i64 * MIN, "cus-1", order_id);
    }
    assert_eq!(w.sent_by("order-confirmation").len(), 3);
    w.send(t0 + HOUR, "customer.signed_up", "cus-1", json!({}));
    consent(&mut w, t0 + HOUR + 2 * MIN, "cus-1");
    assert_eq!(w.sent_by("welcome-series"), [(662, "welcome".into())]);
    assert_eq!(w.count("welcome-series", "deferred_cap"), 0);
}

#[test]
fn payment_recovery_waits_for_a_payment_of_the_same_order() {
    let mut w = World::new();
    let t0 = day0() + 10 * HOUR;
    let fail = |order: &str| json!({ "order_id": order, "amount": money(2500), "card_fingerprint": "fp-9" });
    w.send(t0, "payment.failed", "cus-1", fail("ord-1"));
    w.send(t0, "payment.failed", "cus-1", fail("ord-2"));
    w.send(t0 + 5 * MIN, "payment.failed", "cus-1", fail("ord-2"));
    w.send(
        t0 + 10 * MIN,
        "payment.succeeded",
        "cus-1",
        json!({ "order_id": "ord-1", "amount": money(2500) }),
    );
    w.tick(t0 + 2 * HOUR);
    let sent: Vec<&Value> = w
        .sent
        .iter()
        .filter(|d| d["trigger"] == "payment-failed-recovery")
        .collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["data"]["order_id"], "ord-2");
    assert_eq!(w.count("payment-failed-recovery", "already_running"), 1);
    // No order id: nothing to wait for.
    w.send(
        t0 + 3 * HOUR,
        "payment.failed",
        "cus-1",
        json!({ "amount": money(1) }),
    );
    assert_eq!(w.count("payment-failed-recovery", "condition_false"), 1);
}

#[test]
fn card_velocity_flags_the_sixth_failure_once() {
    let mut w = World::new();
    let t0 = day0() + 10 * HOUR;
    for i in 0..8 {
        w.send(
            t0 + i * MIN,
            "payment.failed",
            "cus-1",
            json!({ "amount": money(100), "card_fingerprint": "fp-1" }),
        );
    }
    assert_eq!(w.count("card-velocity", "condition_false"), 5);
    assert_eq!(w.sent_by("card-velocity"), [(10 * 60 + 5, "fraud".into())]);
    let flags: Vec<&Ev> = w
        .emitted
        .iter()
        .filter(|e| e.ty == "fraud.suspected")
        .collect();
    assert_eq!(flags.len(), 1);
    assert_eq!(flags[0].data["card_fingerprint"], "fp-1");
    assert_eq!(flags[0].subject.as_deref(), Some("cus-1"));
    assert_eq!(w.count("card-velocity", "already_running"), 2);
    assert!(
        w.emitted.iter().any(
            |e| e.ty == "customer.updated" && e.data["traits"]["fraud_flag"] == "card_velocity"
        )
    );
}

#[test]
fn win_back_counts_sixty_days_from_the_latest_order() {
    let mut w = World::new();
    let t0 = day0() + 10 * HOUR;
    consent(&mut w, t0, "cus-1");
    order(&mut w, t0, "cus-1", "ord-1");
    order(&mut w, t0 + 30 * DAY, "cus-1", "ord-2");
    w.tick(t0 + 89 * DAY);
    assert_eq!(w.sent_by("win-back"), []);
    w.tick(t0 + 91 * DAY);
    assert_eq!(
        w.sent_by("win-back"),
        [(90 * 24 * 60 + 10 * 60, "win_back".into())]
    );
    assert_eq!(w.sent.last().unwrap()["data"]["last_order_id"], "ord-2");
}

#[test]
fn review_request_goes_at_ten_after_seven_days_unless_returned() {
    let mut w = World::new();
    let t0 = day0() + 14 * HOUR;
    consent(&mut w, t0, "cus-1");
    order(&mut w, t0, "cus-1", "ord-1");
    order(&mut w, t0, "cus-1", "ord-2");
    w.send(
        t0 + DAY,
        "order.delivered",
        "cus-1",
        json!({ "order_id": "ord-1" }),
    );
    w.send(
        t0 + DAY,
        "order.delivered",
        "cus-1",
        json!({ "order_id": "ord-2" }),
    );
    w.send(
        t0 + 3 * DAY,
        "return.requested",
        "cus-1",
        json!({ "order_id": "ord-2", "lines": [{ "sku": "SKU-1", "quantity": 1 }] }),
    );
    w.tick(t0 + 10 * DAY);
    // Delivered on day 1 at 14:00: seven days on is day 8, 14:00; the next 10:00 is day 9.
    assert_eq!(
        w.sent_by("review-request"),
        [(9 * 24 * 60 + 10 * 60, "review_request".into())]
    );
    assert_eq!(
        w.sent
            .iter()
            .find(|d| d["trigger"] == "review-request")
            .unwrap()["data"]["order_id"],
        "ord-1"
    );
}

#[test]
fn stock_journeys_go_to_the_erp_and_to_customers_who_asked() {
    let mut w = World::new();
    let t0 = day0() + 10 * HOUR;
    consent(&mut w, t0, "cus-1");
    consent(&mut w, t0, "cus-2");
    w.send(
        t0,
        "inventory.adjusted",
        "SKU-1",
        json!({ "sku": "SKU-1", "set": 10 }),
    );
    w.send(
        t0 + MIN,
        "inventory.adjusted",
        "SKU-1",
        json!({ "sku": "SKU-1", "set": 3 }),
    );
    assert_eq!(w.sent_by("low-stock-to-erp"), [(10 * 60 + 1, "erp".into())]);
    assert_eq!(w.sent.last().unwrap()["data"]["available"], 3);

    w.send(
        t0 + 2 * MIN,
        "inventory.adjusted",
        "SKU-1",
        json!({ "sku": "SKU-1", "set": 0 }),
    );
    w.send(
        t0 + 3 * MIN,
        "product.stock_alert_requested",
        "cus-1",
        json!({ "sku": "SKU-1" }),
    );
    w.send(
        t0 + 3 * MIN,
        "product.stock_alert_requested",
        "cus-2",
        json!({ "sku": "SKU-1" }),
    );
    // cus-2 buys the SKU elsewhere meanwhile: its alert is cancelled.
    order(&mut w, t0 + HOUR, "cus-2", "ord-9");
    w.send(
        t0 + DAY,
        "inventory.adjusted",
        "SKU-1",
        json!({ "sku": "SKU-1", "set": 20 }),
    );
    // Stock went from 0 to 10 at the start, and from 0 to 20 now.
    assert_eq!(
        w.sent_by("back-in-stock-to-erp"),
        [(10 * 60, "erp".into()), (24 * 60 + 10 * 60, "erp".into())]
    );
    // The shop notifies everyone on its list (also someone who never asked, and twice).
    for c in ["cus-1", "cus-2", "cus-3", "cus-1"] {
        w.send(
            t0 + DAY + MIN,
            "product.back_in_stock_notify",
            c,
            json!({ "sku": "SKU-1", "name": "Mug" }),
        );
    }
    let alerts: Vec<&Value> = w
        .sent
        .iter()
        .filter(|d| d["trigger"] == "back-in-stock-alert")
        .collect();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0]["customer"], "cus-1");
    assert_eq!(alerts[0]["data"]["sku"], "SKU-1");
    assert_eq!(w.count("back-in-stock-alert", "cancelled"), 1);
}

#[test]
fn caps_and_quiet_hours_hold_messages() {
    let mut w = World::new();
    let t0 = day0() + 20 * HOUR + 30 * MIN;
    consent(&mut w, t0 - HOUR, "cus-1");
    // 20:30: a cart add; the reminder is due at 21:45, inside quiet hours: held until 08:00.
    add_to_cart(&mut w, t0, "cus-1", 3000);
    w.tick(t0 + 12 * HOUR);
    assert_eq!(
        w.sent_by("abandoned-cart"),
        [(24 * 60 + 8 * 60, "abandoned_cart".into())]
    );
    assert_eq!(w.count("abandoned-cart", "deferred_quiet_hours"), 1);
}

/// A held message of a run that is cancelled before the hold ends should not go out.
#[test]
fn a_cancelled_run_does_not_send_its_held_message() {
    let mut w = World::new();
    let t0 = day0() + 20 * HOUR + 30 * MIN;
    consent(&mut w, t0 - HOUR, "cus-1");
    add_to_cart(&mut w, t0, "cus-1", 3000); // reminder held at 21:45 until 08:00
    order(&mut w, t0 + 10 * HOUR, "cus-1", "ord-1"); // 06:30: the order cancels the run
    w.tick(t0 + 12 * HOUR);
    assert_eq!(w.count("abandoned-cart", "cancelled"), 1);
    assert_eq!(w.sent_by("abandoned-cart"), []);
}
