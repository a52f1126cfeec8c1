//! A backtest reports where each message ended, per connector (sent, held when the log ended,
//! suppressed, dropped), and the runs still going at the end, besides the outcome counts.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};
use storeline_engine::ProjectionConfig;
use storeline_engine::backtest;
use storeline_log::{EventLog, MemoryLog, Record};
use storeline_state::SqliteStore;

const FILE: &str = r#"
[arbitration]
cap = [ { channel = "email", max = 1, window = "24h" } ]

[[connector]]
name = "mail"
type = "smtp"

[[connector]]
name = "hook"
type = "webhook"
url = "https://hooks.example.com/x"
channel = "webhook"

[[trigger]]
name = "viewed"
on = "product.viewed"
then = [ { deliver = "mail", template = "viewed" }, { deliver = "hook" } ]

[[trigger]]
name = "carted"
on = "cart.item_added"
then = [ { deliver = "mail", template = "carted" } ]

[[trigger]]
name = "checkout"
on = "checkout.started"
wait = { for = "order.placed", within = "1h" }
on_timeout = [ { deliver = "mail", template = "forgot" } ]
"#;

/// The log's record of a stored event, keyed by its subject.
fn record(n: usize, ty: &str, subject: &str, time: i64, data: Value) -> Record {
    Record {
        timestamp: time,
        key: Bytes::from(subject.to_owned()),
        value: Bytes::from(common::stored(n, ty, subject, time, data)),
    }
}

#[test]
fn the_report_counts_messages_per_connector_and_state_and_runs_still_going() {
    common::runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(MemoryLog::new(1));
        let t0 = 1_772_409_600_000; // 2026-03-02 00:00 UTC
        let s = 1_000;
        let events = vec![
            record(
                0,
                "customer.consent_changed",
                "cus-1",
                t0,
                json!({ "channel": "email", "granted": true }),
            ),
            // cus-1: an email and a webhook; the cap's one email is used up.
            record(
                1,
                "product.viewed",
                "cus-1",
                t0 + s,
                json!({ "product_id": "p1", "sku": "A" }),
            ),
            // cus-2 never consented: no email, the webhook still goes.
            record(
                2,
                "product.viewed",
                "cus-2",
                t0 + 2 * s,
                json!({ "product_id": "p1", "sku": "A" }),
            ),
            // Over the cap: held for 24 hours, still held when the log ends.
            record(
                3,
                "cart.item_added",
                "cus-1",
                t0 + 3 * s,
                json!({ "sku": "A", "quantity": 1 }),
            ),
            // Waits an hour for an order; the log ends first.
            record(4, "checkout.started", "cus-1", t0 + 4 * s, json!({})),
        ];
        log.append(0, events).await.unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("bt.db")).await.unwrap());
        let report = backtest(
            log,
            store,
            FILE,
            &ProjectionConfig::default(),
            (i64::MIN, i64::MAX),
            3,
            &|_| {},
        )
        .await
        .unwrap();
        let get = |t: &str, c: &str, state: &str| {
            report
                .deliveries
                .get(t)
                .and_then(|m| m.get(c))
                .and_then(|m| m.get(state))
                .copied()
                .unwrap_or(0)
        };
        assert_eq!(get("viewed", "mail", "sent"), 1, "{:?}", report.deliveries);
        assert_eq!(get("viewed", "hook", "sent"), 2, "{:?}", report.deliveries);
        assert_eq!(get("carted", "mail", "held"), 1, "{:?}", report.deliveries);
        assert_eq!(get("carted", "mail", "sent"), 0, "{:?}", report.deliveries);
        assert_eq!(report.counts["viewed"]["suppressed_consent"], 1);
        // cus-2's email was suppressed; the webhook (channel "webhook") needs no consent.
        assert_eq!(
            get("viewed", "mail", "suppressed"),
            1,
            "{:?}",
            report.deliveries
        );
        assert_eq!(
            get("viewed", "hook", "suppressed"),
            0,
            "{:?}",
            report.deliveries
        );
        assert_eq!(
            report.counts["viewed"]["sent"], 3,
            "the count is both connectors"
        );
        assert_eq!(
            report.waiting.get("checkout").and_then(|p| p.get("wait")),
            Some(&1),
            "{:?}",
            report.waiting
        );
        assert!(
            !report.waiting.contains_key("viewed"),
            "{:?}",
            report.waiting
        );
    });
}

const PERSON_FILE: &str = r#"
[[connector]]
name = "mail"
type = "smtp"

[[trigger]]
name = "abandoned-cart"
on = "cart.item_added"
wait = { for = "order.placed", within = "1h" }
on_timeout = [ { deliver = "mail", channel = "email", template = "abandoned_cart" } ]
"#;

/// Appends `record` to the partition the engine stores it in.
async fn put(log: &MemoryLog, record: Record, commerce: bool) {
    let p = if commerce {
        storeline_log::partition_for(storeline_event::COMMERCE_KEY.as_bytes(), log.partitions())
    } else {
        storeline_log::partition_for(&record.key, log.partitions())
    };
    log.append(p, vec![record]).await.unwrap();
}

/// The log as the live engine left it: a storeline record (the commerce partition's forwarded
/// copy of an order, a merge notice the live engine wrote for another trigger file).
fn engine_record(id: &str, ty: &str, subject: &str, time: i64, data: Value) -> Record {
    let mut r = record(0, ty, subject, time, data);
    let mut v: Value = serde_json::from_slice(&r.value).unwrap();
    v["id"] = json!(id);
    v["source"] = json!("storeline/engine");
    v["storeline_internal"] = json!(true);
    r.value = Bytes::from(serde_json::to_vec(&v).unwrap());
    r
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backtest_moves_an_anonymous_cart_to_the_person_who_then_orders() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(MemoryLog::new(8));
    let t0 = 1_772_409_600_000; // 2026-03-02 00:00 UTC
    let s = 1_000;
    let mut n = 0;
    for i in 0..6 {
        let (anon, user) = (format!("anon-{i}"), format!("cus-{i}"));
        let at = t0 + i * 60 * s;
        n += 1;
        let c = record(
            n,
            "cart.item_added",
            &anon,
            at,
            json!({ "sku": "A", "quantity": 1 }),
        );
        put(&log, c, false).await;
        // Identified 10 s later: the run is the person's from then on.
        n += 1;
        let link = json!({ "user_id": user, "anonymous_id": anon });
        put(
            &log,
            record(n, "customer.identified", &user, at + 10 * s, link),
            false,
        )
        .await;
        n += 1;
        let consent = json!({ "channel": "email", "granted": true });
        put(
            &log,
            record(n, "customer.consent_changed", &user, at + 11 * s, consent),
            false,
        )
        .await;
        // What live wrote under another file: left out (the backtest makes its own).
        let stale = json!({ "identity": anon, "home": user, "via": "x", "at": at });
        let stale = engine_record(
            &format!("mrg_x_{i}"),
            "storeline.merged",
            &anon,
            at + 12 * s,
            stale,
        );
        put(&log, stale, false).await;
        if i % 2 == 0 {
            // The buyers order 20 s after the cart, stored in the commerce partition; the
            // customer's partition holds the forwarded copy.
            n += 1;
            let at = at + 20 * s;
            let order = json!({ "order_id": format!("o-{i}"), "customer_id": user,
                    "total": { "amount": 1000, "currency": "EUR" } });
            let placed = record(n, "order.placed", &user, at, order.clone());
            let doc: Value = serde_json::from_slice(&placed.value).unwrap();
            put(&log, placed, true).await;
            let copy = json!({
                "id": doc["id"], "type": "order.placed", "time": doc["time"],
                "subject": user, "customer": user, "data": order,
                "received_at": doc["received_at"],
            });
            let copy = engine_record(&format!("fwd_{i}"), "storeline.forwarded", &user, at, copy);
            put(&log, copy, false).await;
        }
    }
    // Two hours later the waits are over.
    n += 1;
    let late = record(n, "product.viewed", "someone", t0 + 3 * 3600 * s, json!({}));
    for p in 0..8 {
        log.append(p, vec![late.clone()]).await.unwrap();
    }
    let store = Arc::new(SqliteStore::open(&dir.path().join("bt.db")).await.unwrap());
    let report = backtest(
        log,
        store,
        PERSON_FILE,
        &ProjectionConfig::default(),
        (i64::MIN, i64::MAX),
        10,
        &|_| {},
    )
    .await
    .unwrap();
    let counts = &report.counts["abandoned-cart"];
    assert_eq!(counts.get("sent"), Some(&3), "{counts:?}");
    assert_eq!(counts.get("arrived"), Some(&3), "{counts:?}");
    let mut reminded: Vec<String> = report.samples
        [&("abandoned-cart".to_owned(), "sent".to_owned())]
        .iter()
        .map(|o| o.customer.clone().unwrap_or_default())
        .collect();
    reminded.sort();
    assert_eq!(
        reminded,
        ["cus-1", "cus-3", "cus-5"],
        "the person gets the reminder"
    );
}
