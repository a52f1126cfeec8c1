//! The person through the real server (8 partitions, SQLite): carts filled under an anonymous
//! id, then identify, then an order under the user id. The buyers get no reminder, every other
//! shopper exactly one, addressed to the person; the journeys read by the anonymous id show the
//! run handed over.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Node, get_json as get, install_triggers, ms, post_json, send_ndjson as send, serve};
use serde_json::{Value, json};

/// The abandoned-cart trigger: a log message `within` after a cart add without an order.
fn abandoned_cart(within: &str) -> String {
    format!(
        r#"
[[connector]]
name = "mail"
type = "log"

[[trigger]]
name = "abandoned-cart"
on = "cart.item_added"
wait = {{ for = "order.placed", within = "{within}" }}
on_timeout = [ {{ deliver = "mail", channel = "email", template = "abandoned_cart" }} ]
"#
    )
}

fn ev(id: String, ty: &str, subject: &str, data: Value) -> Value {
    json!({ "id": id, "source": "shop", "type": ty, "subject": subject, "data": data })
}

/// Shopper `i`'s anonymous cart add, then the identify of `cus-i`, then its e-mail consent.
fn cart_then_identify(i: usize) -> [Value; 3] {
    let (anon, user) = (format!("anon-{i}"), format!("cus-{i}"));
    [
        ev(
            format!("c-{i}"),
            "cart.item_added",
            &anon,
            json!({ "sku": "A", "quantity": 1 }),
        ),
        ev(
            format!("i-{i}"),
            "customer.identified",
            &user,
            json!({ "user_id": user, "anonymous_id": anon }),
        ),
        ev(
            format!("k-{i}"),
            "customer.consent_changed",
            &user,
            json!({ "channel": "email", "granted": true }),
        ),
    ]
}

/// An `order.placed` event `id` of one 10.00 EUR line for `customer`.
fn order_placed(id: String, customer: &str) -> Value {
    let data = json!({ "order_id": id, "customer_id": customer,
        "total": { "amount": 1000, "currency": "EUR" },
        "lines": [ { "sku": "A", "quantity": 1, "unit_price": { "amount": 1000, "currency": "EUR" } } ] });
    ev(id, "order.placed", customer, data)
}

/// The customers of the abandoned-cart deliveries on the first page (of 100), sorted.
async fn reminded(url: &str, key: &str) -> Vec<String> {
    let d = get(url, key, "/v1/deliveries?limit=100").await;
    let mut got: Vec<String> = d["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["trigger"] == "abandoned-cart")
        .map(|d| d["customer"].as_str().unwrap_or("").to_owned())
        .collect();
    got.sort();
    got
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_carts_follow_the_person_to_their_order() {
    let (dir, server, [key]) = serve(["admin"], &[]);
    let url = server.url.clone();
    let file = abandoned_cart("4s");
    install_triggers(&url, &key, &file).await;

    let shoppers = 20;
    for i in 0..shoppers {
        send(&url, &key, &cart_then_identify(i)).await;
        if i % 2 == 0 {
            // Checkout right after identify: the order races the hand-over of the cart's run.
            let user = format!("cus-{i}");
            send(&url, &key, &[order_placed(format!("o-{i}"), &user)]).await;
        }
    }
    // The waits end 4 s after the cart adds; then the deliveries are recorded.
    let expected: Vec<String> = (0..shoppers)
        .filter(|i| i % 2 == 1)
        .map(|i| format!("cus-{i}"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let got = reminded(&url, &key).await;
        if got.len() >= expected.len() || Instant::now() > deadline {
            break;
        }
    }
    // A little longer: nothing more may come (no buyer, no second reminder).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = reminded(&url, &key).await;
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(again, expected_sorted, "reminders by customer");

    // Read by the anonymous id, the journeys are the person's: the run was handed over.
    let j = get(&url, &key, "/v1/customers/anon-1/journeys").await;
    let text = j.to_string();
    assert!(text.contains("handed_over"), "{j:#}");

    // A backtest of the same file over the log merges as live did: it counts what live counted
    // (no reminder for a buyer).
    let live = common::comparable(&get(&url, &key, "/v1/triggers").await["stats"]);
    let mut server = server;
    assert_eq!(server.terminate(), Some(0));
    let path = dir.path().join("backtest.toml");
    std::fs::write(&path, file).unwrap();
    let report = common::backtest(dir.path(), &path);
    let counts = common::comparable(&report["counts"]);
    eprintln!("live: {live:?}\nbacktest: {counts:?}");
    assert_eq!(counts["abandoned-cart"]["sent"], expected.len() as u64);
    assert_eq!(
        counts, live,
        "the backtest counts what the live engine counted"
    );
}

/// Orders placed around the deadline of each shopper's wait, half through `order.place`, half
/// as plain events: each is decided by the log's `received_at` of the order against the wait's
/// deadline, although the order is stored in the commerce partition and reaches the shopper's
/// partition as a forwarded copy.
#[tokio::test(flavor = "multi_thread")]
async fn orders_around_the_deadline_are_decided_by_when_they_were_received() {
    let (_dir, server, [key]) = serve(["admin"], &[]);
    let url = server.url.clone();
    install_triggers(&url, &key, &abandoned_cart("2s")).await;
    let adjust = json!({ "sku": "A", "location": "main", "delta": 1000, "reason": "test" });
    let r = post_json(&url, &key, "/v1/commands/inventory.adjust", &adjust).await;
    assert_eq!(r.status, 200);
    let shoppers = 40;
    let mut tasks = Vec::new();
    for i in 0..shoppers {
        let (url, key) = (url.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let who = format!("cus-t{i}");
            send(
                &url,
                &key,
                &[
                    ev(
                        format!("k-{i}"),
                        "customer.consent_changed",
                        &who,
                        json!({ "channel": "email", "granted": true }),
                    ),
                    ev(
                        format!("c-{i}"),
                        "cart.item_added",
                        &who,
                        json!({ "sku": "A", "quantity": 1 }),
                    ),
                ],
            )
            .await;
            // From 40 ms before the deadline to 38 ms after it.
            let delta = 2 * i64::from(i) - 40;
            tokio::time::sleep(Duration::from_millis((2000 + delta) as u64)).await;
            let order = format!("o-t{i}");
            if i % 2 == 0 {
                let place = json!({ "order_id": order, "customer_id": who, "currency": "EUR",
                    "lines": [ { "sku": "A", "quantity": 1, "unit_price": 1000 } ] });
                let r = post_json(&url, &key, "/v1/commands/order.place", &place).await;
                assert_eq!(r.status, 200, "{}", r.body);
            } else {
                send(&url, &key, &[order_placed(order.clone(), &who)]).await;
            }
        }));
        tokio::time::sleep(Duration::from_millis(7)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Until every run is decided and every reminder of a timed-out run is recorded.
    let journeys = |who: String| {
        let (url, key) = (url.clone(), key.clone());
        async move { get(&url, &key, &format!("/v1/customers/{who}/journeys")).await }
    };
    let settle = Instant::now() + Duration::from_secs(90);
    loop {
        let mut timed_out = 0;
        let mut open = 0;
        for i in 0..shoppers {
            let j = journeys(format!("cus-t{i}")).await;
            let run = &j["runs"][0];
            if run["status"] == "active" {
                open += 1;
            }
            if run.to_string().contains("\"timeout\"") {
                timed_out += 1;
            }
        }
        let d = get(&url, &key, "/v1/deliveries?limit=100").await;
        let delivered = d["deliveries"].as_array().unwrap().len();
        if open == 0 && delivered >= timed_out {
            break;
        }
        assert!(
            Instant::now() < settle,
            "{open} runs undecided, {delivered} of {timed_out} reminders recorded"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // When each order was received.
    let orders = get(&url, &key, "/v1/events?type=order.placed&limit=1000").await;
    let received: std::collections::BTreeMap<String, i64> = orders["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["data"]["customer_id"].as_str().unwrap().to_owned(),
                ms(&e["received_at"]),
            )
        })
        .collect();
    let d = get(&url, &key, "/v1/deliveries?limit=100").await;
    let reminded: std::collections::BTreeSet<String> = d["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["customer"].as_str().unwrap().to_owned())
        .collect();
    let (mut wrong, mut close) = (Vec::new(), 0);
    for i in 0..shoppers {
        let who = format!("cus-t{i}");
        // The wait's deadline, as the run says ("waiting for order.placed until …").
        let j = get(&url, &key, &format!("/v1/customers/{who}/journeys")).await;
        let run = &j["runs"][0];
        let waiting = run["history"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["what"] == "waiting")
            .unwrap_or_else(|| panic!("{who}: {j:#}"));
        let until = waiting["detail"]
            .as_str()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap();
        let deadline = ms(&json!(until));
        let order_at = received[&who];
        let late = order_at >= deadline;
        if (order_at - deadline).abs() <= 10 {
            close += 1;
        }
        if late != reminded.contains(&who) {
            wrong.push(format!(
                "{who}: order {} ms from the deadline, reminded: {}",
                order_at - deadline,
                reminded.contains(&who)
            ));
        }
    }
    eprintln!("{close} of {shoppers} orders within 10 ms of their deadline");
    // Every partition shows its clock and watermark, and nothing stays held back.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let e = get(&url, &key, "/v1/engine").await;
        let parts = e["partitions"].as_array().unwrap();
        assert!(parts.iter().all(|p| p["watermark"].is_string()), "{e:#}");
        if parts.iter().all(|p| p["watermark_lag_ms"] == 0) {
            break;
        }
        assert!(Instant::now() < until, "a timer stays held back: {e:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(wrong.is_empty(), "decided wrongly:\n{}", wrong.join("\n"));
}

/// Every delivery of the abandoned-cart trigger: `(customer, delivery id)`.
async fn reminders(node: &Node) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = node
        .deliveries("")
        .await
        .iter()
        .filter(|d| d["trigger"] == "abandoned-cart")
        .map(|d| {
            (
                d["customer"].as_str().unwrap().to_owned(),
                d["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Kill -9 twice while merges hand runs over, orders are forwarded and waits end: every shopper
/// who did not buy gets exactly one reminder, no buyer gets one, and a replay of the log equals
/// the live state.
#[tokio::test(flavor = "multi_thread")]
async fn merges_waits_and_forwarded_orders_survive_kill_9() {
    let mut node = Node::start(&abandoned_cart("4s"));
    let shoppers = 300;
    let started = Instant::now();
    for chunk in (0..shoppers).collect::<Vec<_>>().chunks(20) {
        let evs: Vec<Value> = chunk.iter().flat_map(|&i| cart_then_identify(i)).collect();
        node.send(&evs).await;
        let orders: Vec<Value> = chunk
            .iter()
            .filter(|i| *i % 3 == 0)
            .map(|i| order_placed(format!("o-{i}"), &format!("cus-{i}")))
            .collect();
        node.send(&orders).await;
    }
    // First kill: merges, hand-overs and forwarded orders in flight.
    node.server.kill9();
    node.restart();
    // Second kill: around the deadlines, while timers fire.
    if let Some(wait) = Duration::from_millis(4100).checked_sub(started.elapsed()) {
        tokio::time::sleep(wait).await;
    }
    node.server.kill9();
    node.restart();

    let expected: Vec<String> = {
        let mut v: Vec<String> = (0..shoppers)
            .filter(|i| i % 3 != 0)
            .map(|i| format!("cus-{i}"))
            .collect();
        v.sort();
        v
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline && reminders(&node).await.len() < expected.len() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A little longer: nothing more may come.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = reminders(&node).await;
    let customers: Vec<String> = got.iter().map(|(c, _)| c.clone()).collect();
    let ids: std::collections::BTreeSet<&String> = got.iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), got.len(), "no delivery id twice");
    assert_eq!(
        customers, expected,
        "one reminder per shopper who did not buy, none for buyers"
    );

    assert_eq!(node.server.terminate(), Some(0));
    node.assert_replay_equals_live();
}
