//! Kill -9 with thousands of pending timers: after the restarts every timer has fired exactly
//! once (the run counters, committed with the state, say so; the log holds one emitted event
//! per timer, none missing), and the live state equals a replay of the log.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Node, Postgres, get_body, read_partition};
use serde_json::{Value, json};

const TIMERS: usize = 3000;

const TRIGGERS: &str = r#"
[[trigger]]
name = "remind"
on = "test.ping"
key = "event.data.k"
delay = "4s"
then = [ { emit = "test.fired", data = { k = "trigger.data.k" } } ]
"#;

async fn stats(url: &str, key: &str) -> Value {
    let r = get_body(url, key, "/v1/triggers").await;
    r["stats"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .cloned()
        .unwrap_or(json!({}))
}

#[tokio::test(flavor = "multi_thread")]
async fn pending_timers_fire_exactly_once_across_kill_9() {
    pending_timers_fire_exactly_once_on(&[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pending_timers_fire_exactly_once_across_kill_9_on_postgres() {
    let pg = Postgres::schema("timers_kill");
    pending_timers_fire_exactly_once_on(&pg.env()).await;
}

async fn pending_timers_fire_exactly_once_on(backend: &[(&str, &str)]) {
    let mut node = Node::start_with(TRIGGERS, backend);

    // Thousands of runs, each with a timer 4 s out, over 200 customers.
    let pings: Vec<Value> = (0..TIMERS)
        .map(|i| {
            json!({ "specversion": "1.0", "id": format!("p{i}"), "source": "test", "type": "test.ping",
                    "subject": format!("cus-{}", i % 200), "data": { "k": format!("k{i}") } })
        })
        .collect();
    for chunk in pings.chunks(500) {
        node.send(chunk).await;
    }
    let sent_at = Instant::now();
    // First kill: while every timer is pending.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.server.kill9();
    node.restart();
    // Second kill: around the due time, while timers are firing.
    let due = Duration::from_millis(4000);
    if let Some(wait) = due.checked_sub(sent_at.elapsed()) {
        tokio::time::sleep(wait + Duration::from_millis(150)).await;
    }
    node.server.kill9();
    node.restart();

    let deadline = Instant::now() + Duration::from_secs(60);
    let s = loop {
        let s = stats(&node.url, &node.key).await;
        if s["finished"].as_u64() == Some(TIMERS as u64) || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(s["started"], TIMERS, "every ping started one run: {s}");
    assert_eq!(s["finished"], TIMERS, "every timer fired: {s}");
    assert_eq!(s["emitted"], TIMERS, "no timer fired twice: {s}");
    assert_eq!(s["active"], 0, "{s}");

    // The log holds exactly one emitted event per timer.
    let mut fired = std::collections::BTreeMap::<String, usize>::new();
    for p in 0..8 {
        for e in read_partition(&node.url, &node.key, p).await {
            if e["type"] == "test.fired" {
                *fired
                    .entry(e["data"]["k"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
        }
    }
    assert_eq!(
        fired.len(),
        TIMERS,
        "one emitted event per timer, none missing"
    );
    assert!(fired.values().all(|n| *n == 1), "no emitted event twice");

    assert_eq!(node.server.terminate(), Some(0));
    node.assert_replay_equals_live();
}
