//! A backtest reports where each message ended, per connector (sent, or still held when the
//! log ended), and the runs still going at the end, besides the outcome counts.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};
use storeline_engine::ProjectionConfig;
use storeline_engine::triggers::backtest::backtest;
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

fn record(n: usize, ty: &str, subject: &str, time: i64, data: Value) -> Record {
    let t = chrono::DateTime::from_timestamp_millis(time).unwrap();
    let at = storeline_event::format_time(&t);
    let value = json!({
        "specversion": "1.0", "id": format!("e{n}"), "source": "test", "type": ty, "time": at,
        "subject": subject, "data": data, "received_at": at,
    });
    Record {
        timestamp: time,
        key: Bytes::from(subject.to_owned()),
        value: Bytes::from(serde_json::to_vec(&value).unwrap()),
    }
}

#[test]
fn the_report_counts_messages_per_connector_and_state_and_runs_still_going() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
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
