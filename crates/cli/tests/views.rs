//! The live views and the commands, against the real binary over HTTP: stock per location and
//! order life cycle, all-or-nothing reservations, lapsing reservations, low-stock edges, and a
//! refund before shipping. (Idempotent commands and read-your-writes are in `views_commands.rs`,
//! Customer 360 in `views_customers.rs`.)

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Postgres, Resp, Shop, totals, wait_for};
use serde_json::{Value, json};

/// Polls `f` until it returns `Some`, for up to 10 s.
async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    wait_for(what, Duration::from_secs(10), async || {
        f().await.ok_or_else(|| "not yet".to_owned())
    })
    .await
}

/// `(on_hand, reserved, available)` at one location; (0, 0, 0) if the location is not listed.
fn at(inv: &Value, location: &str) -> (i64, i64, i64) {
    inv["locations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["location"] == location)
        .map_or((0, 0, 0), totals)
}

/// `(sku, location, quantity)` of a command's stock events of type `ty`.
fn stock_moves(r: &Resp, ty: &str) -> Vec<(String, String, i64)> {
    let mut v: Vec<_> = r.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == ty)
        .map(|e| {
            (
                e["data"]["sku"].as_str().unwrap().to_owned(),
                e["data"]["location"].as_str().unwrap().to_owned(),
                e["data"]["quantity"].as_i64().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn moves(m: &[(&str, &str, i64)]) -> Vec<(String, String, i64)> {
    let mut v: Vec<_> = m
        .iter()
        .map(|(s, l, q)| ((*s).to_owned(), (*l).to_owned(), *q))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn order_lifecycle_and_stock() {
    order_lifecycle_and_stock_on(&[]).await;
}

/// The same on the PostgreSQL state store (the cluster mode's).
#[tokio::test(flavor = "multi_thread")]
async fn order_lifecycle_and_stock_on_postgres() {
    let pg = Postgres::schema("order_lifecycle_and_");
    order_lifecycle_and_stock_on(&pg.env()).await;
}

async fn order_lifecycle_and_stock_on(backend: &[(&str, &str)]) {
    let env = Shop::start(backend);
    env.run(
        "inventory.adjust",
        json!({"sku": "SKU-A", "location": "north", "delta": 3, "reason": "restock"}),
    )
    .await;
    env.run(
        "inventory.adjust",
        json!({"sku": "SKU-A", "location": "south", "set": 4}),
    )
    .await;
    let r = env
        .run("inventory.adjust", json!({"sku": "SKU-B", "delta": 2}))
        .await;
    let inv = env.inventory("SKU-A", r.offset()).await;
    assert_eq!(totals(&inv), (7, 0, 7));
    assert_eq!(at(&inv, "north"), (3, 0, 3));
    assert_eq!(at(&inv, "south"), (4, 0, 4));
    assert_eq!(
        at(&env.inventory("SKU-B", r.offset()).await, "main"),
        (2, 0, 2),
        "no location means the default one"
    );

    // 6 of SKU-A fit in no single location: south gives its 4, north the other 2.
    let place = json!({"order_id": "ord-1", "customer_id": "cus-1", "currency": "EUR",
        "lines": [{"sku": "SKU-A", "quantity": 6, "unit_price": 1000},
                  {"sku": "SKU-B", "quantity": 1, "unit_price": 500}]});
    let r = env.run("order.place", place.clone()).await;
    assert_eq!(r.types()[0], "order.placed");
    assert_eq!(
        stock_moves(&r, "inventory.reserved"),
        moves(&[
            ("SKU-A", "south", 4),
            ("SKU-A", "north", 2),
            ("SKU-B", "main", 1)
        ])
    );
    assert_eq!(r.types().len(), 4, "{}", r.body);
    let max = r.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["offset"].as_u64())
        .max();
    assert_eq!(Some(r.offset()), max, "offset is the command's last event");
    let inv = env.inventory("SKU-A", r.offset()).await;
    assert_eq!(totals(&inv), (7, 6, 1));
    assert_eq!(at(&inv, "north"), (3, 2, 1));
    assert_eq!(at(&inv, "south"), (4, 4, 0));
    assert_eq!(totals(&env.inventory("SKU-B", r.offset()).await), (2, 1, 1));
    let o = env.order("ord-1", r.offset()).await;
    assert_eq!(o["status"], "placed");
    assert_eq!(o["customer_id"], "cus-1");
    assert_eq!(o["total"], json!({"amount": 6500, "currency": "EUR"}));
    assert_eq!(o["lines"].as_array().unwrap().len(), 2);

    // Wrong moves are refused with the current state, and change nothing.
    let e = env.cmd("order.ship", json!({"order_id": "ord-1"})).await;
    let e = e.err(409, "invalid_transition");
    assert_eq!(e["details"]["current"], "placed");
    assert_eq!(e["details"]["command"], "order.ship");
    env.cmd("order.refund", json!({"order_id": "ord-1"}))
        .await
        .err(409, "invalid_transition");
    env.cmd("order.place", place.clone())
        .await
        .err(409, "order_exists");
    env.cmd("order.pay", json!({"order_id": "ord-nope"}))
        .await
        .err(404, "order_not_found");
    env.cmd("order.explode", json!({"order_id": "ord-1"}))
        .await
        .err(404, "unknown_command");
    let e = env.cmd("inventory.adjust", json!({"sku": "SKU-A"})).await;
    assert_eq!(e.err(400, "invalid_command")["details"]["field"], "delta");
    env.cmd("order.pay", json!({"order_id": "ord-1", "bogus": 1}))
        .await
        .err(400, "invalid_command");

    let r = env
        .run(
            "order.pay",
            json!({"order_id": "ord-1", "payment_id": "pay-1"}),
        )
        .await;
    assert_eq!(r.types(), ["order.paid"]);
    assert_eq!(r.body["events"][0]["data"]["amount"]["amount"], 6500);
    let o = env.order("ord-1", r.offset()).await;
    assert_eq!(
        (o["status"].as_str(), o["paid"]["amount"].as_i64()),
        (Some("paid"), Some(6500))
    );
    assert_eq!(
        totals(&env.inventory("SKU-A", r.offset()).await),
        (7, 6, 1),
        "paying moves no stock"
    );

    env.run("order.fulfill", json!({"order_id": "ord-1"})).await;
    let r = env
        .run(
            "order.ship",
            json!({"order_id": "ord-1", "carrier": "DHL", "tracking_number": "T1"}),
        )
        .await;
    assert_eq!(r.types()[0], "order.shipped");
    assert_eq!(
        stock_moves(&r, "inventory.committed"),
        moves(&[
            ("SKU-A", "south", 4),
            ("SKU-A", "north", 2),
            ("SKU-B", "main", 1)
        ]),
        "shipping commits exactly what was reserved"
    );
    let inv = env.inventory("SKU-A", r.offset()).await;
    assert_eq!(
        totals(&inv),
        (1, 0, 1),
        "shipped stock leaves on hand: {inv}"
    );
    assert_eq!(at(&inv, "north"), (1, 0, 1));
    assert_eq!(at(&inv, "south"), (0, 0, 0));
    assert_eq!(totals(&env.inventory("SKU-B", r.offset()).await), (1, 0, 1));

    env.run("order.deliver", json!({"order_id": "ord-1"})).await;
    let e = env.cmd("order.deliver", json!({"order_id": "ord-1"})).await;
    assert_eq!(
        e.err(409, "invalid_transition")["details"]["current"],
        "delivered"
    );
    // A return cannot bring back more than was ordered.
    let e = env
        .cmd(
            "return.receive",
            json!({"order_id": "ord-1", "lines": [{"sku": "SKU-A", "quantity": 7}]}),
        )
        .await;
    assert_eq!(
        e.err(400, "invalid_command")["details"]["field"],
        "lines[0].quantity"
    );
    let r = env
        .run(
            "return.receive",
            json!({"order_id": "ord-1", "lines": [{"sku": "SKU-A", "quantity": 2}], "location": "north"}),
        )
        .await;
    assert_eq!(r.types(), ["return.received"]);
    let inv = env.inventory("SKU-A", r.offset()).await;
    assert_eq!(
        at(&inv, "north"),
        (3, 0, 3),
        "the return restocks where it was received"
    );
    assert_eq!(totals(&inv), (3, 0, 3));

    let r = env
        .run(
            "order.refund",
            json!({"order_id": "ord-1", "reason": "damaged"}),
        )
        .await;
    assert_eq!(
        r.body["events"][0]["data"]["amount"]["amount"], 6500,
        "default: all that is left"
    );
    let o = env.order("ord-1", r.offset()).await;
    assert_eq!(o["status"], "refunded");
    assert_eq!(o["refunded"]["amount"], 6500);
    let tl = o["timeline"].as_array().unwrap();
    let statuses: Vec<&str> = tl.iter().map(|s| s["status"].as_str().unwrap()).collect();
    assert_eq!(
        statuses,
        [
            "placed",
            "paid",
            "fulfilled",
            "shipped",
            "delivered",
            "returned",
            "refunded"
        ]
    );
    let types: Vec<&str> = tl.iter().map(|s| s["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "order.placed",
            "order.paid",
            "order.fulfilled",
            "order.shipped",
            "order.delivered",
            "return.received",
            "order.refunded"
        ]
    );
    assert!(
        tl.windows(2)
            .all(|w| w[0]["offset"].as_u64() < w[1]["offset"].as_u64()),
        "the timeline is in log order: {o}"
    );

    // Cancelling a placed order gives its stock back; a cancelled order goes nowhere.
    let r = env
        .run(
            "order.place",
            json!({"order_id": "ord-2", "customer_id": "cus-1", "currency": "EUR",
                   "lines": [{"sku": "SKU-A", "quantity": 2, "unit_price": 1000}]}),
        )
        .await;
    assert_eq!(
        stock_moves(&r, "inventory.reserved"),
        moves(&[("SKU-A", "north", 2)])
    );
    assert_eq!(totals(&env.inventory("SKU-A", r.offset()).await), (3, 2, 1));
    let r = env
        .run(
            "order.cancel",
            json!({"order_id": "ord-2", "reason": "changed mind"}),
        )
        .await;
    assert_eq!(r.types()[0], "order.cancelled");
    assert_eq!(
        stock_moves(&r, "inventory.released"),
        moves(&[("SKU-A", "north", 2)])
    );
    let inv = env.inventory("SKU-A", r.offset()).await;
    assert_eq!(totals(&inv), (3, 0, 3));
    assert_eq!(at(&inv, "north"), (3, 0, 3));
    for (cmd, current) in [
        ("order.deliver", "cancelled"),
        ("order.pay", "cancelled"),
        ("order.cancel", "cancelled"),
    ] {
        let e = env.cmd(cmd, json!({"order_id": "ord-2"})).await;
        assert_eq!(
            e.err(409, "invalid_transition")["details"]["current"],
            current,
            "{cmd}"
        );
    }
    let o = env.order("ord-2", r.offset()).await;
    assert_eq!(o["status"], "cancelled");
    assert_eq!(
        o["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["type"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["order.placed", "order.cancelled"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn insufficient_stock_rejects_the_whole_order() {
    let env = Shop::start(&[]);
    env.run("inventory.adjust", json!({"sku": "SKU-B", "delta": 5}))
        .await;
    env.run(
        "inventory.adjust",
        json!({"sku": "SKU-C", "location": "north", "delta": 1}),
    )
    .await;
    let r = env
        .run(
            "inventory.adjust",
            json!({"sku": "SKU-C", "location": "south", "delta": 1}),
        )
        .await;
    let before = env.commerce_status().await;

    let e = env
        .cmd(
            "order.place",
            json!({"order_id": "ord-x", "customer_id": "cus-1", "currency": "EUR",
                   "lines": [{"sku": "SKU-B", "quantity": 2, "unit_price": 100},
                             {"sku": "SKU-C", "quantity": 3, "unit_price": 100}]}),
        )
        .await;
    let e = e.err(409, "insufficient_stock");
    assert_eq!(
        e["details"]["lines"],
        json!([{"sku": "SKU-C", "requested": 3, "available": 2}]),
        "only the short line, with what all locations have together"
    );
    // Nothing was reserved, stored or created.
    assert_eq!(totals(&env.inventory("SKU-B", r.offset()).await), (5, 0, 5));
    assert_eq!(totals(&env.inventory("SKU-C", r.offset()).await), (2, 0, 2));
    env.get("/v1/orders/ord-x")
        .await
        .err(404, "order_not_found");
    assert_eq!(env.commerce_status().await["log_end"], before["log_end"]);

    // Two lines of one SKU count against each other; a named location counts alone.
    let e = env
        .cmd(
            "order.place",
            json!({"order_id": "ord-y", "customer_id": "cus-1", "currency": "EUR",
                   "lines": [{"sku": "SKU-B", "quantity": 3, "unit_price": 100},
                             {"sku": "SKU-B", "quantity": 3, "unit_price": 100},
                             {"sku": "SKU-C", "quantity": 2, "unit_price": 100, "location": "north"},
                             {"sku": "SKU-NONE", "quantity": 1, "unit_price": 100}]}),
        )
        .await;
    let lines = &e.err(409, "insufficient_stock")["details"]["lines"];
    assert_eq!(
        *lines,
        json!([{"sku": "SKU-B", "requested": 3, "available": 2},
               {"sku": "SKU-C", "location": "north", "requested": 2, "available": 1},
               {"sku": "SKU-NONE", "requested": 1, "available": 0}])
    );
    assert_eq!(totals(&env.inventory("SKU-B", r.offset()).await), (5, 0, 5));
    assert_eq!(env.commerce_status().await["log_end"], before["log_end"]);

    // With enough stock the same order goes through, and takes exactly what it asked for.
    let r = env
        .run(
            "order.place",
            json!({"order_id": "ord-x", "customer_id": "cus-1", "currency": "EUR",
                   "lines": [{"sku": "SKU-B", "quantity": 2, "unit_price": 100},
                             {"sku": "SKU-C", "quantity": 2, "unit_price": 100}]}),
        )
        .await;
    assert_eq!(totals(&env.inventory("SKU-B", r.offset()).await), (5, 2, 3));
    assert_eq!(totals(&env.inventory("SKU-C", r.offset()).await), (2, 2, 0));
    let e = env
        .cmd(
            "order.place",
            json!({"order_id": "ord-z", "customer_id": "cus-2", "currency": "EUR",
                   "lines": [{"sku": "SKU-C", "quantity": 1, "unit_price": 100}]}),
        )
        .await;
    assert_eq!(
        e.err(409, "insufficient_stock")["details"]["lines"],
        json!([{"sku": "SKU-C", "requested": 1, "available": 0}]),
        "reserved stock is not available to the next order"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reservations_expire() {
    let ttl = [("STORELINE_ENGINE__RESERVATION_TTL", "1s")];
    let mut env = Shop::start(&ttl);
    env.run("inventory.adjust", json!({"sku": "SKU-T", "set": 10}))
        .await;
    let line = json!([{"sku": "SKU-T", "quantity": 2, "unit_price": 100}]);
    let unpaid = env
        .run("order.place", json!({"order_id": "ord-unpaid", "customer_id": "c1", "currency": "EUR", "lines": line}))
        .await;
    // The paid order holds longer (2 s), so that a slow machine cannot lapse it before the payment.
    let paid = env
        .run(
            "order.place",
            json!({"order_id": "ord-paid", "customer_id": "c2", "currency": "EUR", "lines": line,
                   "reservation_ttl": "2s"}),
        )
        .await;
    let paid_placed = Instant::now();
    let expires: Vec<&str> = [&unpaid, &paid]
        .iter()
        .map(|r| r.body["events"][1]["data"]["expires_at"].as_str().unwrap())
        .collect();
    assert!(expires.iter().all(|e| !e.is_empty()), "{expires:?}");
    let pay = env.run("order.pay", json!({"order_id": "ord-paid"})).await;
    assert_eq!(
        totals(&env.inventory("SKU-T", pay.offset()).await),
        (10, 4, 6)
    );
    let started = Instant::now();

    let inv = eventually("the unpaid hold lapses", async || {
        let inv = env.inventory("SKU-T", 0).await;
        let o = env.order("ord-unpaid", 0).await;
        (inv["reserved"] == 2 && o["status"] == "cancelled").then_some(inv)
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(totals(&inv), (10, 2, 8));
    let o = env.order("ord-unpaid", 0).await;
    assert_eq!(o["status"], "cancelled", "{o}");
    let cancelled = env.events("order.cancelled", "c1").await;
    assert_eq!(cancelled.len(), 1);
    assert_eq!(cancelled[0]["data"]["reason"], "reservation expired");
    // Well past its TTL, the paid order still holds its stock.
    let past = paid_placed + Duration::from_millis(3000);
    tokio::time::sleep(past.saturating_duration_since(Instant::now())).await;
    assert_eq!(totals(&env.inventory("SKU-T", 0).await), (10, 2, 8));
    assert_eq!(env.order("ord-paid", 0).await["status"], "paid");
    assert_eq!(
        env.events("order.cancelled", "c1").await.len(),
        1,
        "lapsed once"
    );
    assert!(env.events("order.cancelled", "c2").await.is_empty());

    // A hold set by the command itself lapses too, even across a restart.
    let r = env
        .run(
            "order.place",
            json!({"order_id": "ord-restart", "customer_id": "c3", "currency": "EUR", "lines": line,
                   "reservation_ttl": "2s"}),
        )
        .await;
    assert_eq!(
        totals(&env.inventory("SKU-T", r.offset()).await),
        (10, 4, 6)
    );
    env.restart(&ttl);
    eventually("the hold lapses after a restart", async || {
        let o = env.order("ord-restart", 0).await;
        (o["status"] == "cancelled").then_some(())
    })
    .await;
    let inv = env.inventory("SKU-T", 0).await;
    assert_eq!(totals(&inv), (10, 2, 8), "{inv}");
    // An expired order cannot be paid any more.
    let e = env
        .cmd("order.pay", json!({"order_id": "ord-unpaid"}))
        .await;
    assert_eq!(
        e.err(409, "invalid_transition")["details"]["current"],
        "cancelled"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn low_stock_events() {
    let env = Shop::start(&[("STORELINE_INVENTORY__LOW_STOCK_THRESHOLD", "3")]);
    // SKU-L has its own threshold of 2.
    let first = env
        .run(
            "inventory.adjust",
            json!({"sku": "SKU-L", "set": 5, "low_stock_threshold": 2}),
        )
        .await;
    let inv = env.inventory("SKU-L", first.offset()).await;
    assert_eq!(inv["low_stock_threshold"], 2);
    // What the first stocking itself caused is stored by now (before its batch committed);
    // count only what the moves below cause.
    let since = env.commerce_status().await["log_end"].as_u64().unwrap() - 1;
    // 5 → 3 available (reserved by an order): above the threshold, nothing.
    env.run(
        "order.place",
        json!({"order_id": "ord-l", "customer_id": "c", "currency": "EUR",
               "lines": [{"sku": "SKU-L", "quantity": 2, "unit_price": 100}]}),
    )
    .await;
    // 3 → 2: the crossing. 2 → 0: no second alert.
    env.run("inventory.adjust", json!({"sku": "SKU-L", "delta": -1}))
        .await;
    env.run("inventory.adjust", json!({"sku": "SKU-L", "delta": -2}))
        .await;
    let r = env
        .run("inventory.adjust", json!({"sku": "SKU-L", "delta": 0}))
        .await;
    assert_eq!(totals(&env.inventory("SKU-L", r.offset()).await), (2, 2, 0));
    // 0 → 4: back in stock (and above the threshold: no alert).
    let r = env
        .run("inventory.adjust", json!({"sku": "SKU-L", "delta": 4}))
        .await;
    assert_eq!(totals(&env.inventory("SKU-L", r.offset()).await), (6, 2, 4));
    let after = |evs: Vec<Value>| -> Vec<Value> {
        evs.into_iter()
            .filter(|e| e["offset"].as_u64().unwrap() > since)
            .collect()
    };
    let edges = eventually("the low-stock edges are stored", async || {
        let evs = after(
            env.events("inventory.low,inventory.back_in_stock", "SKU-L")
                .await,
        );
        (evs.len() >= 2).then_some(evs)
    })
    .await;
    let types: Vec<&str> = edges.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["inventory.low", "inventory.back_in_stock"],
        "{edges:?}"
    );
    assert_eq!(
        edges[0]["data"],
        json!({"sku": "SKU-L", "available": 2, "threshold": 2})
    );
    assert_eq!(
        edges[1]["data"],
        json!({"sku": "SKU-L", "available": 4, "threshold": 2})
    );
    assert_eq!(edges[0]["source"], "storeline/engine");

    // The configured default applies to a SKU without its own threshold.
    let r = env
        .run("inventory.adjust", json!({"sku": "SKU-E", "set": 10}))
        .await;
    let since_e = r.offset();
    env.run("inventory.adjust", json!({"sku": "SKU-E", "delta": -6}))
        .await;
    let r = env
        .run("inventory.adjust", json!({"sku": "SKU-E", "delta": -1}))
        .await;
    let inv = env.inventory("SKU-E", r.offset()).await;
    assert_eq!(
        (
            inv["available"].as_i64(),
            inv["low_stock_threshold"].as_i64()
        ),
        (Some(3), Some(3))
    );
    let low = eventually("SKU-E's low-stock alert", async || {
        let evs: Vec<Value> = env
            .events("inventory.*", "SKU-E")
            .await
            .into_iter()
            .filter(|e| e["type"] == "inventory.low" && e["offset"].as_u64().unwrap() > since_e)
            .collect();
        (!evs.is_empty()).then_some(evs)
    })
    .await;
    assert_eq!(low.len(), 1, "{low:?}");
    assert_eq!(
        low[0]["data"],
        json!({"sku": "SKU-E", "available": 3, "threshold": 3})
    );
    // Nothing more appears later (the edges are emitted once, not on every batch).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        after(
            env.events("inventory.low,inventory.back_in_stock", "SKU-L")
                .await
        )
        .len(),
        2
    );
}

/// A paid order that never shipped can be refunded without its stock staying reserved forever,
/// and goods that never left cannot be "returned" into stock.
#[tokio::test(flavor = "multi_thread")]

async fn refunding_an_unshipped_order_does_not_strand_its_stock() {
    let env = Shop::start(&[]);
    env.run("inventory.adjust", json!({"sku": "SKU-U", "set": 10}))
        .await;
    let line = json!([{"sku": "SKU-U", "quantity": 2, "unit_price": 100}]);
    for id in ["ord-a", "ord-b"] {
        env.run(
            "order.place",
            json!({"order_id": id, "customer_id": "c", "currency": "EUR", "lines": line}),
        )
        .await;
        env.run("order.pay", json!({"order_id": id})).await;
    }
    // A: the customer cancels after paying: the stock is released, and the money must go back.
    env.run("order.cancel", json!({"order_id": "ord-a"})).await;
    let r = env.cmd("order.refund", json!({"order_id": "ord-a"})).await;
    assert_eq!(
        r.status, 200,
        "a cancelled paid order cannot be refunded: {}",
        r.body
    );
    // B: refunded in full before shipping: nothing may stay held for it.
    let r = env.run("order.refund", json!({"order_id": "ord-b"})).await;
    let inv = env.inventory("SKU-U", r.offset()).await;
    if inv["reserved"] != 0 {
        let c = env.cmd("order.cancel", json!({"order_id": "ord-b"})).await;
        assert_eq!(
            c.status, 200,
            "a refunded, unshipped order keeps {} reserved and cannot be cancelled: {}",
            inv["reserved"], c.body
        );
    }
    // Refunded in full: another refund conflicts with the order's state (409), it is not a
    // malformed request.
    let r = env.cmd("order.refund", json!({"order_id": "ord-b"})).await;
    r.err(409, "refund_exceeds_paid");
    // Nothing was shipped, so nothing can come back.
    let r = env
        .cmd("return.receive", json!({"order_id": "ord-b"}))
        .await;
    assert_eq!(
        r.status, 409,
        "a return of goods that never shipped: {}",
        r.body
    );
    let inv = env.inventory("SKU-U", 0).await;
    assert_eq!(totals(&inv), (10, 0, 10), "{inv}");
}
