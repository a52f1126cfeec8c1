//! Commands against the real binary over HTTP: idempotent commands (also across a restart, on
//! SQLite and PostgreSQL) and read-your-writes through `?min_offset=`.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Postgres, Resp, Shop, totals};
use serde_json::json;

/// `(id, type, partition, offset)` of a command's events.
fn positions(r: &Resp) -> Vec<(String, String, u64, u64)> {
    r.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_owned(),
                e["type"].as_str().unwrap().to_owned(),
                e["partition"].as_u64().unwrap(),
                e["offset"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotency() {
    idempotency_on(&[]).await;
}

/// The same on the PostgreSQL state store (the cluster mode's).
#[tokio::test(flavor = "multi_thread")]
async fn idempotency_on_postgres() {
    let pg = Postgres::schema("idempotency");
    idempotency_on(&pg.env()).await;
}

async fn idempotency_on(backend: &[(&str, &str)]) {
    let mut env = Shop::start(backend);
    env.run("inventory.adjust", json!({"sku": "SKU-I", "set": 10}))
        .await;
    let place = json!({"order_id": "ord-i", "customer_id": "cus-i", "currency": "EUR",
                       "lines": [{"sku": "SKU-I", "quantity": 2, "unit_price": 700}]});
    let first = env.cmd_with("order.place", Some("k-place-1"), &place).await;
    first.ok();
    assert_eq!(first.body["replayed"], false);
    assert_eq!(first.replayed_header, None);
    assert_eq!(positions(&first).len(), 2);
    let inv = env.inventory("SKU-I", first.offset()).await;
    assert_eq!(totals(&inv), (10, 2, 8));
    let end = env.commerce_status().await["log_end"].clone();

    let check_replay = |r: &Resp, what: &str| {
        r.ok();
        assert_eq!(r.body["replayed"], true, "{what}: {}", r.body);
        assert_eq!(r.replayed_header.as_deref(), Some("true"), "{what}");
        assert_eq!(
            positions(r),
            positions(&first),
            "{what}: the same events at the same offsets"
        );
        assert_eq!(r.body["offset"], first.body["offset"], "{what}");
        assert_eq!(r.body["cursor"], first.body["cursor"], "{what}");
        for (a, b) in r.body["events"]
            .as_array()
            .unwrap()
            .iter()
            .zip(first.body["events"].as_array().unwrap())
        {
            assert_eq!(a["data"], b["data"], "{what}");
        }
    };
    let again = env.cmd_with("order.place", Some("k-place-1"), &place).await;
    check_replay(&again, "repeat");
    assert_eq!(
        env.commerce_status().await["log_end"],
        end,
        "nothing appended twice"
    );
    assert_eq!(
        totals(&env.inventory("SKU-I", first.offset()).await),
        (10, 2, 8)
    );

    let mut changed = place.clone();
    changed["lines"][0]["quantity"] = json!(3);
    let e = env
        .cmd_with("order.place", Some("k-place-1"), &changed)
        .await;
    assert_eq!(
        e.err(422, "idempotency_key_reused")["details"]["key"],
        "k-place-1"
    );
    env.cmd_with(
        "order.pay",
        Some("k-place-1"),
        &json!({"order_id": "ord-i"}),
    )
    .await
    .err(422, "idempotency_key_reused");
    // Without the key the same body is a new request: refused, the order exists.
    env.cmd("order.place", place.clone())
        .await
        .err(409, "order_exists");

    let adj = json!({"sku": "SKU-I", "delta": 5, "reason": "restock"});
    let a1 = env
        .cmd_with("inventory.adjust", Some("k-adj-1"), &adj)
        .await;
    let a2 = env
        .cmd_with("inventory.adjust", Some("k-adj-1"), &adj)
        .await;
    assert_eq!(a2.body["replayed"], true, "{}", a2.body);
    assert_eq!(positions(&a2), positions(&a1));
    assert_eq!(
        totals(&env.inventory("SKU-I", a1.offset()).await),
        (15, 2, 13),
        "applied once"
    );
    let end = env.commerce_status().await["log_end"].clone();

    // After a restart the stored result (derived from the log) still answers.
    env.restart(backend);
    let after = env.cmd_with("order.place", Some("k-place-1"), &place).await;
    check_replay(&after, "after a restart");
    let e = env
        .cmd_with("order.place", Some("k-place-1"), &changed)
        .await;
    e.err(422, "idempotency_key_reused");
    let a3 = env
        .cmd_with("inventory.adjust", Some("k-adj-1"), &adj)
        .await;
    assert_eq!(a3.body["replayed"], true, "{}", a3.body);
    assert_eq!(a3.replayed_header.as_deref(), Some("true"));
    assert_eq!(positions(&a3), positions(&a1));
    let inv = env.inventory("SKU-I", a1.offset()).await;
    assert_eq!(
        totals(&inv),
        (15, 2, 13),
        "nothing applied twice across the restart: {inv}"
    );
    assert_eq!(env.commerce_status().await["log_end"], end);
    // A new key is a new command.
    let a4 = env
        .cmd_with("inventory.adjust", Some("k-adj-2"), &adj)
        .await;
    assert_eq!(a4.body["replayed"], false);
    assert!(a4.offset() > a1.offset());
    assert_eq!(
        totals(&env.inventory("SKU-I", a4.offset()).await),
        (20, 2, 18)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn read_your_writes() {
    let env = Shop::start(&[("STORELINE_ENGINE__READ_WAIT", "300ms")]);
    for i in 1..=50u64 {
        let r = env
            .run("inventory.adjust", json!({"sku": "SKU-R", "delta": 1}))
            .await;
        // Alternate the two forms: the commerce offset and a cursor.
        let m = if i.is_multiple_of(2) {
            r.offset().to_string()
        } else {
            r.cursor()
        };
        let inv = env
            .read(&format!("/v1/inventory/SKU-R?min_offset={m}"))
            .await;
        assert_eq!(
            inv["on_hand"], i,
            "read {i} missed its own write (min_offset={m})"
        );
        if i.is_multiple_of(5) {
            // A command whose event lives in the customer's partition, read by its cursor.
            let granted = i.is_multiple_of(10);
            let r = env
                .run(
                    "customer.update_consent",
                    json!({"customer_id": "cus-r", "channel": "sms", "granted": granted}),
                )
                .await;
            let p = env
                .read(&format!("/v1/customers/cus-r?min_offset={}", r.cursor()))
                .await;
            assert_eq!(p["consent"]["sms"], granted, "consent read {i}");
        }
    }
    // Ingested events, read back through their acks.
    for i in 1..=20u64 {
        let c = env
            .ingest(json!([{"id": format!("pv-{i}"), "source": "web", "type": "page.viewed", "subject": "cus-r",
                            "data": {"url": format!("https://shop.example/{i}")}}]))
            .await;
        let p = env
            .read(&format!("/v1/customers/cus-r?min_offset={c}"))
            .await;
        assert_eq!(
            p["stats"]["page_views"], i,
            "page view {i} not seen with min_offset={c}"
        );
    }

    // A position the views will never reach within read_wait: 503, after the wait.
    let started = Instant::now();
    let r = env
        .get("/v1/inventory/SKU-R?min_offset=1000000000000")
        .await;
    r.err(503, "unavailable");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(290) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    let r = env
        .get("/v1/customers/cus-r?min_offset=0:1000000000000")
        .await;
    assert_eq!(r.status, 503, "{}", r.body);
    for bad in ["abc", "0:x", "1:2:3", "-1", "99999:1", ""] {
        let r = env.get(&format!("/v1/orders/o?min_offset={bad}")).await;
        r.err(400, "invalid_query");
    }
}
