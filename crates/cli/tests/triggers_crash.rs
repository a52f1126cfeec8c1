//! Kill -9 with thousands of pending timers: after the restarts every timer has fired exactly
//! once (the run counters, committed with the state, say so; the log holds one emitted event
//! per timer, none missing), and the live state equals a replay of the log.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{BIN, Postgres, Server, create_key, http, read_partition};
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
    let r: Value = http()
        .get(format!("{url}/v1/triggers"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let file = dir.path().join("triggers.toml");
    std::fs::write(&file, TRIGGERS).unwrap();
    let mut env = vec![("STORELINE_TRIGGERS__FILE", file.to_str().unwrap())];
    env.extend_from_slice(backend);
    let key = create_key(&data, "admin");
    let mut server = Server::start(&data, &env);
    let client = http();

    // Thousands of runs, each with a timer 4 s out, over 200 customers.
    let lines: Vec<String> = (0..TIMERS)
        .map(|i| {
            json!({ "specversion": "1.0", "id": format!("p{i}"), "source": "test", "type": "test.ping",
                    "subject": format!("cus-{}", i % 200), "data": { "k": format!("k{i}") } })
            .to_string()
        })
        .collect();
    for chunk in lines.chunks(500) {
        let r = client
            .post(format!("{}/v1/events", server.url))
            .bearer_auth(&key)
            .header("content-type", "application/x-ndjson")
            .body(chunk.join("\n"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let sent_at = Instant::now();
    // First kill: while every timer is pending.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill9();
    server = Server::start(&data, &env);
    // Second kill: around the due time, while timers are firing.
    let due = Duration::from_millis(4000);
    if let Some(wait) = due.checked_sub(sent_at.elapsed()) {
        tokio::time::sleep(wait + Duration::from_millis(150)).await;
    }
    server.kill9();
    server = Server::start(&data, &env);

    let deadline = Instant::now() + Duration::from_secs(60);
    let s = loop {
        let s = stats(&server.url, &key).await;
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
        for e in read_partition(&server.url, &key, p).await {
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

    assert_eq!(server.terminate(), Some(0));
    let out = Command::new(BIN)
        .args(["replay", "--data"])
        .arg(&data)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "replay must equal the live state:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
