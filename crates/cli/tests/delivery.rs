//! Webhook delivery through the real server to real receivers (`delivery/receiver.py`, which
//! checks every request with the `standardwebhooks` library): signatures and secret rotation,
//! the API's view of deliveries and who may redrive, a permanent rejection going straight to
//! the dead-letter queue and out again by `storeline deliveries redrive`, a retry schedule
//! running out and `Retry-After` stretching it, and FIFO order per customer despite failures.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::receiver::{
    FAST, OLD_SECRET, Receiver, accepted, check_fifo, per_id, signup, signup_hook, signup_trigger,
    webhook,
};
use common::{Node, get, http, ms, post_json, wait_for};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_are_signed_and_verify_during_a_secret_rotation() {
    let rx = Receiver::start(&["--old-secret", OLD_SECRET]);
    let triggers = format!(
        "{}{}{}{}",
        webhook(
            "rotating",
            &format!("{}/rotating", rx.url),
            &format!("previous_secret = \"{OLD_SECRET}\"\n{FAST}")
        ),
        webhook("plain", &format!("{}/plain", rx.url), FAST),
        // A rotation that ended: only the current secret signs.
        webhook(
            "expired",
            &format!("{}/expired", rx.url),
            &format!(
                "previous_secret = \"{OLD_SECRET}\"\nprevious_secret_until = \"2020-01-01T00:00:00Z\"\n{FAST}"
            )
        ),
        signup_trigger(&["rotating", "plain", "expired"]),
    );
    let node = Node::start(&triggers);
    const N: usize = 10;
    // Deliveries: one per event per connector.
    const D: usize = 3 * N;
    let events: Vec<Value> = (0..N).map(|i| signup(i, &format!("cus-{i}"))).collect();
    node.send(&events).await;

    let recs = wait_for(
        "every delivery to arrive",
        Duration::from_secs(20),
        || async {
            let r = rx.received().await;
            if r.len() >= D {
                Ok(r)
            } else {
                Err(format!("{} of {} requests", r.len(), D))
            }
        },
    )
    .await;
    for r in &recs {
        // The library's verdict with the current secret, the ids the receiver dedups by.
        assert_eq!(r["verified"], true, "{r}");
        assert_eq!(r["status"], 200, "{r}");
        let id = r["id"].as_str().unwrap();
        assert!(id.starts_with("dlv_"), "{r}");
        assert_eq!(r["idempotency_key"], id, "{r}");
        assert_eq!(r["body"]["id"], id, "{r}");
        let n = r["body"]["data"]["n"].as_u64().unwrap();
        assert_eq!(
            r["body"]["data"]["email"],
            format!("user{n}@example.com"),
            "{r}"
        );
        assert_eq!(r["body"]["customer"], format!("cus-{n}"), "{r}");
        assert_eq!(r["body"]["event"]["id"], format!("e{n}"), "{r}");
        match r["path"].as_str().unwrap() {
            // During the rotation both signatures are sent, so a receiver that still holds
            // the old secret accepts too.
            "/rotating" => {
                assert_eq!(r["signatures"], 2, "{r}");
                assert_eq!(r["verified_old"], true, "{r}");
            }
            // Without a previous secret, the old one does not verify: the check can fail.
            "/plain" | "/expired" => {
                assert_eq!(r["signatures"], 1, "{r}");
                assert_eq!(r["verified_old"], false, "{r}");
            }
            p => panic!("unexpected path {p}"),
        }
    }
    let counts = per_id(&recs);
    assert_eq!(counts.len(), D, "one delivery per event per connector");
    assert!(counts.values().all(|c| *c == 1), "no retries: {counts:?}");
    for path in ["/rotating", "/plain", "/expired"] {
        let ns: BTreeSet<u64> = recs
            .iter()
            .filter(|r| r["path"] == path)
            .map(|r| r["body"]["data"]["n"].as_u64().unwrap())
            .collect();
        assert_eq!(ns, (0..N as u64).collect(), "{path}");
    }

    // The API: every delivery delivered, once; the outcome is recorded after the answer.
    let listed = wait_for(
        "the API to show all delivered",
        Duration::from_secs(10),
        || async {
            let all = node.deliveries("").await;
            let delivered = all.iter().filter(|d| d["status"] == "delivered").count();
            if delivered == D {
                Ok(all)
            } else {
                Err(format!("{delivered} delivered of {}", all.len()))
            }
        },
    )
    .await;
    assert_eq!(listed.len(), D);
    let api_ids: BTreeSet<String> = listed
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        api_ids,
        accepted(&recs),
        "the API names the ids that arrived"
    );
    for d in &listed {
        assert_eq!(d["attempts"], 1, "{d}");
        assert_eq!(d["trigger"], "signup", "{d}");
    }
    let one = node.delivery(listed[0]["id"].as_str().unwrap()).await;
    let log = one["attempt_log"].as_array().unwrap();
    assert_eq!(log.len(), 1, "{one}");
    assert_eq!(log[0]["outcome"], "delivered", "{one}");
    assert!(log[0]["detail"].as_str().unwrap().contains("200"), "{one}");
    let by_connector = node.deliveries("connector=plain&status=delivered").await;
    assert_eq!(by_connector.len(), N);
    assert!(by_connector.iter().all(|d| d["connector"] == "plain"));
    let of_one = node.deliveries("customer=cus-3").await;
    assert_eq!(of_one.len(), 3, "{of_one:?}");
    assert!(of_one.iter().all(|d| d["customer"] == "cus-3"));
    let first = ms(&listed[0]["created_at"]);
    let last = listed.iter().map(|d| ms(&d["created_at"])).max().unwrap();
    assert_eq!(
        node.deliveries(&format!("from={first}&to={last}"))
            .await
            .len(),
        D
    );
    assert!(
        node.deliveries(&format!("from={}", last + 1))
            .await
            .is_empty()
    );
    let plain = node.connector("plain").await;
    assert_eq!(plain["delivered"], N, "{plain}");
    assert_eq!(plain["pending"], 0, "{plain}");

    // A read key reads; only an admin key redrives or enables.
    let r = get(&node.url, &node.read_key, "/v1/deliveries").await;
    assert_eq!(r.status, 200);
    let redrive = json!({ "ids": [listed[0]["id"]] });
    let r = post_json(
        &node.url,
        &node.read_key,
        "/v1/deliveries/redrive",
        &redrive,
    )
    .await;
    assert_eq!(r.status, 403);
    let r = http()
        .post(format!("{}/v1/connectors/plain/enable", node.url))
        .bearer_auth(&node.read_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_permanent_rejection_is_dead_at_once_and_a_redrive_delivers_it() {
    let rx = Receiver::start(&["--status", "400"]);
    let triggers = signup_hook("hooks", &rx, FAST);
    // Installed over the API this time (the worker is reconfigured while running).
    let node = Node::start("");
    node.put_triggers(&triggers).await;
    const N: usize = 3;
    let events: Vec<Value> = (0..N).map(|i| signup(i, &format!("cus-{i}"))).collect();
    node.send(&events).await;

    let dead = node
        .wait_deliveries(
            "the rejections to be dead",
            "status=dead",
            N,
            Duration::from_secs(15),
        )
        .await;
    for d in &dead {
        assert_eq!(d["attempts"], 1, "a 400 is not retried: {d}");
        let full = node.delivery(d["id"].as_str().unwrap()).await;
        let log = full["attempt_log"].as_array().unwrap();
        assert_eq!(log.len(), 1, "{full}");
        assert_eq!(log[0]["outcome"], "reject", "{full}");
        assert!(log[0]["detail"].as_str().unwrap().contains("400"), "{full}");
    }
    let recs = rx.received().await;
    assert_eq!(recs.len(), N, "exactly one request each: {recs:?}");
    let dead_ids: BTreeSet<String> = dead
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        per_id(&recs).keys().cloned().collect::<BTreeSet<_>>(),
        dead_ids
    );

    // The dead-letter queue a page at a time: each `next` is an opaque cursor that goes into a
    // URL as it is (no control characters to escape) and gets the rest.
    let mut paged = BTreeSet::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = "/v1/deliveries?status=dead&limit=1".to_owned();
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let page = node.get(&path).await;
        for d in page["deliveries"].as_array().unwrap() {
            assert!(paged.insert(d["id"].as_str().unwrap().to_owned()), "{page}");
        }
        match page["next"].as_str() {
            Some(n) => {
                assert!(
                    !n.is_empty()
                        && n.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                    "a URL-safe cursor: {n:?}"
                );
                after = Some(n.to_owned());
            }
            None => break,
        }
    }
    assert_eq!(paged, dead_ids);
    let hooks = node.connector("hooks").await;
    assert_eq!(
        (hooks["dead"].as_u64(), hooks["pending"].as_u64()),
        (Some(N as u64), Some(0))
    );

    // The CLI lists the dead-letter queue by id.
    let out = node.cli(&["deliveries", "list", "--status", "dead"]);
    let table = String::from_utf8(out.stdout).unwrap();
    for id in &dead_ids {
        assert!(table.contains(id.as_str()), "{id} missing from\n{table}");
    }

    // The receiver is fixed; the CLI redrives the whole queue.
    rx.mode(json!({ "status": 200 })).await;
    let out = node.cli(&["deliveries", "redrive", "--all"]);
    let said = String::from_utf8(out.stdout).unwrap();
    assert_eq!(said.trim(), format!("redriven: {N}"));
    let done = node
        .wait_deliveries(
            "the redriven deliveries to be delivered",
            "status=delivered",
            N,
            Duration::from_secs(15),
        )
        .await;
    for d in &done {
        assert_eq!(d["attempts"], 2, "{d}");
        assert_eq!(d["redriven"], 1, "{d}");
        let full = node.delivery(d["id"].as_str().unwrap()).await;
        let outcomes: Vec<&str> = full["attempt_log"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["outcome"].as_str().unwrap())
            .collect();
        assert_eq!(outcomes, ["reject", "delivered"], "{full}");
    }
    assert!(node.deliveries("status=dead").await.is_empty());
    let recs = rx.received().await;
    assert_eq!(accepted(&recs), dead_ids, "the same ids arrive again");
    // A second redrive finds nothing dead.
    let out = node.cli(&["deliveries", "redrive", "--all"]);
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), "redriven: 0");
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_run_out_into_the_dead_letter_queue_and_retry_after_is_honoured() {
    let rx = Receiver::start(&["--status", "503"]);
    // The breaker is off so that it does not pause the second phase.
    let conn =
        "retry_schedule = [\"0s\", \"100ms\", \"100ms\"]\njitter = 0.0\ncircuit_failures = 0";
    let triggers = signup_hook("hooks", &rx, conn);
    let node = Node::start(&triggers);

    // 503 every time: dead after exactly len(retry_schedule) attempts.
    node.send(&[signup(0, "cus-0")]).await;
    let dead = wait_for(
        "the delivery to be dead",
        Duration::from_secs(15),
        || async {
            let d = node.deliveries("status=dead").await;
            d.into_iter()
                .next()
                .ok_or_else(|| "none dead yet".to_owned())
        },
    )
    .await;
    let id = dead["id"].as_str().unwrap().to_owned();
    assert_eq!(dead["attempts"], 3, "{dead}");
    assert!(
        dead["last_error"].as_str().unwrap().contains("503"),
        "{dead}"
    );
    let full = node.delivery(&id).await;
    let log = full["attempt_log"].as_array().unwrap();
    let outcomes: Vec<&str> = log.iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["retry", "retry", "retry"], "{full}");
    assert_eq!(per_id(&rx.received().await).get(&id), Some(&3));

    // Retry-After: 2 s beats the schedule's 100 ms.
    rx.mode(json!({ "retry_after": 2 })).await;
    let t0 = std::time::Instant::now();
    node.send(&[signup(1, "cus-1")]).await;
    let dead = wait_for(
        "the second delivery to be dead",
        Duration::from_secs(20),
        || async {
            let d = node.deliveries("status=dead").await;
            d.into_iter()
                .find(|d| d["id"] != id.as_str())
                .ok_or_else(|| "not dead yet".to_owned())
        },
    )
    .await;
    assert!(
        t0.elapsed() >= Duration::from_millis(3800),
        "{:?}",
        t0.elapsed()
    );
    let id2 = dead["id"].as_str().unwrap().to_owned();
    let full = node.delivery(&id2).await;
    let log = full["attempt_log"].as_array().unwrap();
    assert_eq!(log.len(), 3, "{full}");
    for pair in log.windows(2) {
        let gap = ms(&pair[1]["at"]) - ms(&pair[0]["at"]);
        assert!(
            gap >= 1900,
            "attempts {gap} ms apart despite Retry-After: 2: {full}"
        );
    }
    assert_eq!(log[0]["retry_after_ms"], 2000, "{full}");
    // The receiver saw the same spacing.
    let times: Vec<f64> = rx
        .received()
        .await
        .iter()
        .filter(|r| r["id"] == id2.as_str())
        .map(|r| r["at"].as_f64().unwrap())
        .collect();
    assert_eq!(times.len(), 3);
    assert!(
        times[1] - times[0] >= 1.9 && times[2] - times[1] >= 1.9,
        "{times:?}"
    );

    // Redriven by id over the API: a fresh round of the schedule, delivered at once.
    rx.mode(json!({ "status": 200, "retry_after": 0 })).await;
    let redrive = json!({ "ids": [id, id2, "dlv_nonexistent"] });
    let r = post_json(&node.url, &node.key, "/v1/deliveries/redrive", &redrive).await;
    assert_eq!(r.status, 200);
    let said = r.body;
    assert_eq!(said["redriven"], 2, "{said}");
    for id in [&id, &id2] {
        let d = wait_for("the redriven delivery", Duration::from_secs(10), || async {
            let d = node.delivery(id).await;
            if d["status"] == "delivered" {
                Ok(d)
            } else {
                Err(d.to_string())
            }
        })
        .await;
        assert_eq!(d["attempts"], 4, "{d}");
        assert_eq!(d["redriven"], 1, "{d}");
        assert_eq!(d["attempt_log"][3]["outcome"], "delivered", "{d}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fifo_keeps_each_customers_order_despite_failures() {
    let rx = Receiver::start(&["--fail-rate", "0.3"]);
    // Enough attempts that none dies (0.3^12), no breaker pausing everyone.
    let conn = "fifo = true\ncircuit_failures = 0\njitter = 0.0\nretry_schedule = [\"0s\", \"50ms\", \"100ms\", \
                \"100ms\", \"200ms\", \"200ms\", \"200ms\", \"300ms\", \"300ms\", \"500ms\", \"500ms\", \"1s\"]";
    let triggers = signup_hook("ordered", &rx, conn);
    let node = Node::start(&triggers);
    const CUSTOMERS: usize = 8;
    const PER: usize = 15;
    // Interleaved across customers, in order per customer.
    let events: Vec<Value> = (0..CUSTOMERS * PER)
        .map(|i| signup(i, &format!("cus-{}", i % CUSTOMERS)))
        .collect();
    node.send(&events).await;

    let recs = wait_for(
        "every delivery to arrive",
        Duration::from_secs(40),
        || async {
            let r = rx.received().await;
            let ok = accepted(&r).len();
            if ok == CUSTOMERS * PER {
                Ok(r)
            } else {
                Err(format!(
                    "{ok} accepted of {}, {} requests",
                    CUSTOMERS * PER,
                    r.len()
                ))
            }
        },
    )
    .await;
    let failed = recs.iter().filter(|r| r["status"] != 200).count();
    assert!(failed > 0, "the receiver failed some requests");
    eprintln!("{} requests, {failed} failed", recs.len());

    // Per customer: no request for event k before event k-1 was accepted, and first
    // acceptances in event order.
    let done = check_fifo(&recs, CUSTOMERS);
    assert_eq!(done.len(), CUSTOMERS);
    assert!(done.values().all(|n| *n == PER), "{done:?}");
    let api = wait_for(
        "the API to show all delivered",
        Duration::from_secs(10),
        || async {
            let c = node.connector("ordered").await;
            if c["delivered"] == CUSTOMERS * PER && c["pending"] == 0 {
                Ok(c)
            } else {
                Err(c.to_string())
            }
        },
    )
    .await;
    assert_eq!(api["fifo"], true, "{api}");
}
