//! The starter trigger file `config/triggers.toml`: it compiles, it has the journeys the docs
//! promise, and its CEL reads only fields the catalog payloads really have. (What the journeys
//! do on the trigger machine is in `starter_journeys.rs`.)

use serde_json::{Value, json};
use storeline_engine::testkit::triggers::{Action, Expr, Match, Scope, Step};
use storeline_engine::triggers::TriggerSet;

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
