//! Tests of the parent module.
use std::collections::{HashMap, HashSet};

use storeline_event::{Defaults, Event, Incoming, Mode};

use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Every event type the generator produces, in funnel order.
#[rustfmt::skip]
const EVENT_TYPES: &[&str] = &[
    "customer.signed_up", "customer.consent_changed", "customer.identified", "page.viewed",
    "product.searched", "product.viewed", "cart.item_added", "cart.item_removed",
    "cart.viewed", "checkout.started", "order.placed", "payment.attempted",
    "payment.succeeded", "payment.failed", "order.paid", "order.fulfilled", "order.shipped",
    "order.delivered", "order.cancelled", "return.requested", "return.received",
    "order.refunded",
];

/// A small shop, so a short run spans weeks: every kind of event, returns included, shows up.
fn config(seed: u64) -> GenConfig {
    GenConfig {
        seed,
        customers: 300,
        ..GenConfig::default()
    }
}

fn ty(e: &Value) -> &str {
    e["type"].as_str().unwrap_or_default()
}

#[test]
fn every_event_passes_ingest_validation_and_every_kind_occurs() -> TestResult {
    let cfg = config(7);
    let defaults = Defaults {
        source: "test".into(),
        now: cfg.start,
    };
    let mut seen = HashSet::new();
    for event in Generator::new(cfg).take(20_000) {
        let line = serde_json::to_string(&event)?;
        let incoming = serde_json::from_str::<Incoming>(&line)?;
        let ev = Event::from_incoming(incoming, Mode::Plain, &defaults)
            .map_err(|e| format!("{line}\n{e:?}"))?;
        assert_eq!(
            (ev.source.as_str(), Some(ev.id.as_str())),
            (SOURCE, event["id"].as_str())
        );
        assert!(ev.subject.is_some_and(|s| s.starts_with("cus-")), "{line}");
        assert!(EVENT_TYPES.contains(&ev.ty.as_str()), "{line}");
        if ev.ty == "order.placed" {
            // The order adds up: lines make the subtotal, and the total follows from it.
            let (d, amount) = (&event["data"], |m: &Value| {
                m["amount"].as_i64().unwrap_or(0)
            });
            let lines = d["lines"].as_array().into_iter().flatten();
            let subtotal: i64 = lines
                .map(|l| l["quantity"].as_i64().unwrap_or(0) * amount(&l["unit_price"]))
                .sum();
            assert_eq!(subtotal, amount(&d["subtotal"]), "{line}");
            let total = subtotal - amount(&d["discount"]) + amount(&d["shipping"]);
            assert_eq!(total, amount(&d["total"]), "{line}");
        }
        seen.insert(ev.ty);
    }
    let missing: Vec<_> = EVENT_TYPES.iter().filter(|t| !seen.contains(**t)).collect();
    assert!(
        missing.is_empty(),
        "never produced in 20000 events: {missing:?}"
    );
    Ok(())
}

#[test]
fn the_seed_decides_the_stream() -> TestResult {
    let run = |seed| -> Result<Vec<String>, serde_json::Error> {
        let events = Generator::new(config(seed)).take(2000);
        events.map(|e| serde_json::to_string(&e)).collect()
    };
    assert!(run(1)? == run(1)?, "the same seed gave different events");
    // Ids contain the seed, so compare what happens rather than what it is called.
    let shape = |seed| -> Vec<String> {
        let events = Generator::new(config(seed)).take(2000);
        events
            .map(|e| format!("{} {} {}", ty(&e), e["subject"], e["time"]))
            .collect()
    };
    assert!(
        shape(1) != shape(2),
        "different seeds gave the same traffic"
    );
    Ok(())
}

#[test]
fn time_never_goes_back_and_orders_are_placed_before_anything_happens_to_them() -> TestResult {
    let cfg = config(3);
    let mut last = cfg.start;
    let mut placed = HashSet::new();
    for e in Generator::new(cfg).take(50_000) {
        let time = DateTime::parse_from_rfc3339(e["time"].as_str().unwrap_or_default())?;
        assert!(time >= last, "{e} is earlier than {last}");
        last = time.with_timezone(&Utc);
        match (ty(&e), e["data"]["order_id"].as_str()) {
            ("order.placed", Some(id)) => assert!(placed.insert(id.to_owned()), "{e} twice"),
            (_, Some(id)) => assert!(placed.contains(id), "{e} before its order.placed"),
            _ => {}
        }
    }
    Ok(())
}

#[test]
fn the_funnel_narrows_and_popularity_is_skewed() {
    let cfg = config(11);
    let products = cfg.products as usize;
    let mut count: HashMap<String, usize> = HashMap::new();
    let mut views: HashMap<String, usize> = HashMap::new();
    for e in Generator::new(cfg).take(50_000) {
        *count.entry(ty(&e).to_owned()).or_default() += 1;
        if ty(&e) == "product.viewed" {
            let sku = e["data"]["sku"].as_str().unwrap_or_default().to_owned();
            *views.entry(sku).or_default() += 1;
        }
    }
    let n = |t: &str| count.get(t).copied().unwrap_or(0);
    assert!(n("product.viewed") > n("cart.item_added"), "{count:?}");
    assert!(n("cart.item_added") > n("checkout.started"), "{count:?}");
    assert!(n("checkout.started") > n("order.placed"), "{count:?}");
    assert!(n("order.placed") > 0, "{count:?}");
    assert!(
        n("payment.failed") > 0 && n("order.delivered") > 0,
        "{count:?}"
    );
    let mut per_sku: Vec<usize> = views.values().copied().collect();
    per_sku.resize(products, 0); // skus never viewed count as zero
    per_sku.sort_unstable();
    let (top, median) = (per_sku[products - 1], per_sku[products / 2]);
    assert!(
        top >= 5 * median.max(1),
        "top sku {top} views, median {median}"
    );
}

#[test]
fn anonymous_visits_fill_the_cart_under_an_anonymous_id_and_log_in_to_order() {
    let cfg = GenConfig {
        anonymous_share: 0.3,
        ..config(7)
    };
    let events: Vec<Value> = Generator::new(cfg).take(30_000).collect();
    let anon_carts = events
        .iter()
        .filter(|e| ty(e) == "cart.item_added")
        .filter(|e| e["subject"].as_str().unwrap_or("").starts_with("anon-"))
        .count();
    assert!(anon_carts > 0, "some carts are anonymous");
    // Every anonymous id that placed an order logged in first, naming it.
    let logins: Vec<&Value> = events
        .iter()
        .filter(|e| ty(e) == "customer.identified" && e["data"]["anonymous_id"].is_string())
        .collect();
    assert!(!logins.is_empty());
    for l in &logins {
        assert_eq!(l["subject"], l["data"]["user_id"], "{l}");
    }
    // Without the share the stream is the one it always was.
    let plain: Vec<Value> = Generator::new(config(7)).take(2000).collect();
    let zero: Vec<Value> = Generator::new(GenConfig {
        anonymous_share: 0.0,
        ..config(7)
    })
    .take(2000)
    .collect();
    assert_eq!(plain, zero);
    assert!(
        plain
            .iter()
            .all(|e| !e["subject"].as_str().unwrap_or("").starts_with("anon-"))
    );
}
