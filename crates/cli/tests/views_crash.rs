//! Kill -9 during heavy ingestion and commands, several times: after each restart the engine
//! resumes from its committed offsets, and at the end the live views equal a clean replay of the
//! log (`storeline replay` compares digests), so no update was applied twice or lost. Every
//! acknowledged order is in the views, and no SKU is oversold.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Server, create_key, get_body as get, http, post_json, storeline};
use serde_json::json;

const KILLS: usize = 4;

/// What a client was told about an order.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    Placed,
    Cancelled,
    Unknown,
}
const SKUS: usize = 5;

/// Sends generated traffic in batches until told to stop (errors are expected around kills).
async fn traffic(url: String, key: String, seed: u64, stop: Arc<AtomicBool>) {
    let out = storeline(&["gen", "--events", "20000", "--customers", "300", "--seed"])
        .arg(seed.to_string())
        .output()
        .unwrap();
    let lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let client = http();
    for chunk in lines.chunks(200) {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let _ = client
            .post(format!("{url}/v1/events"))
            .bearer_auth(&key)
            .header("content-type", "application/x-ndjson")
            .body(chunk.join("\n"))
            .send()
            .await;
    }
}

/// Places (and sometimes cancels) orders on a few SKUs, with idempotency keys; records the
/// orders acknowledged as placed and the ones acknowledged as cancelled.
async fn orders(
    url: String,
    key: String,
    client_no: u64,
    next: Arc<AtomicU64>,
    placed: Arc<Mutex<Vec<(String, u64, Fate)>>>,
    stop: Arc<AtomicBool>,
) {
    let client = http();
    while !stop.load(Ordering::Relaxed) {
        let n = next.fetch_add(1, Ordering::Relaxed);
        let id = format!("crash-o{n}");
        let qty = 1 + n % 3;
        let body = json!({ "order_id": id, "customer_id": format!("cus-c{client_no}"), "currency": "EUR",
                           "lines": [{ "sku": format!("CRASH-{}", n as usize % SKUS), "quantity": qty, "unit_price": 250 }] });
        // Retried with the same key until answered: a request cut by a kill is safe to repeat.
        for _ in 0..50 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let r = client
                .post(format!("{url}/v1/commands/order.place"))
                .bearer_auth(&key)
                .header("idempotency-key", &id)
                .json(&body)
                .send()
                .await;
            match r {
                Ok(r) if r.status() == 200 => {
                    let cancel = n.is_multiple_of(4);
                    if cancel {
                        let c = client
                            .post(format!("{url}/v1/commands/order.cancel"))
                            .bearer_auth(&key)
                            .header("idempotency-key", format!("{id}-cancel"))
                            .json(&json!({ "order_id": id }))
                            .send()
                            .await;
                        // A cancel whose answer a kill cut may or may not have happened.
                        let fate = match c {
                            Ok(ref c) if c.status() == 200 => Fate::Cancelled,
                            _ => Fate::Unknown,
                        };
                        placed.lock().unwrap().push((id.clone(), qty, fate));
                    } else {
                        placed.lock().unwrap().push((id.clone(), qty, Fate::Placed));
                    }
                    break;
                }
                Ok(r) if r.status() == 409 => break, // out of stock: fine
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

async fn wait_caught_up(url: &str, key: &str) {
    for _ in 0..600 {
        let s = get(url, key, "/v1/engine").await;
        if s["lag"] == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the engine did not catch up within a minute");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn views_survive_kill_9_and_equal_a_replay() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let key = create_key(&data, "admin");
    let env = [
        ("RUST_LOG", "error"),
        ("STORELINE_LOG__SEGMENT_BYTES", "4194304"),
        ("STORELINE_LOG__MAX_BATCH_BYTES", "2097152"),
        ("STORELINE_INGEST__MAX_BODY_BYTES", "1048576"),
    ];
    let mut server = Server::start(&data, &env);
    for s in 0..SKUS {
        let adjust = json!({ "sku": format!("CRASH-{s}"), "delta": 400 });
        let r = post_json(&server.url, &key, "/v1/commands/inventory.adjust", &adjust).await;
        assert_eq!(r.status, 200);
    }
    let next = Arc::new(AtomicU64::new(0));
    let placed = Arc::new(Mutex::new(Vec::new()));
    for round in 0..KILLS {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for t in 0..2u64 {
            tasks.push(tokio::spawn(traffic(
                server.url.clone(),
                key.clone(),
                round as u64 * 10 + t,
                stop.clone(),
            )));
        }
        for c in 0..4u64 {
            tasks.push(tokio::spawn(orders(
                server.url.clone(),
                key.clone(),
                c,
                next.clone(),
                placed.clone(),
                stop.clone(),
            )));
        }
        tokio::time::sleep(Duration::from_millis(1500 + 400 * round as u64)).await;
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        server = Server::start(&data, &env);
    }
    let url = server.url.clone();
    wait_caught_up(&url, &key).await;
    // Every acknowledged order is in the views, with the status its last answer gave.
    let placed = placed.lock().unwrap().clone();
    assert!(
        placed.len() > 20,
        "too few orders got through: {}",
        placed.len()
    );
    let status = get(&url, &key, "/v1/engine").await;
    let events: u64 = status["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["applied"].as_u64().unwrap())
        .sum();
    eprintln!(
        "{} orders acknowledged, {events} events applied over {KILLS} kills",
        placed.len()
    );
    assert!(events > 5000, "too little traffic got through: {events}");
    let mut held = [0i64; SKUS];
    for (id, _, fate) in &placed {
        let o = get(&url, &key, &format!("/v1/orders/{id}")).await;
        let status = o["status"]
            .as_str()
            .unwrap_or_else(|| panic!("order {id} missing: {o}"));
        if *fate == Fate::Unknown {
            assert!(
                status == "placed" || status == "cancelled",
                "{id}: {status}"
            );
        } else if *fate == Fate::Cancelled {
            assert_eq!(status, "cancelled", "{id}");
        } else {
            assert_eq!(status, "placed", "{id}");
            let sku: usize = o["lines"][0]["sku"]
                .as_str()
                .unwrap()
                .trim_start_matches("CRASH-")
                .parse()
                .unwrap();
            held[sku] += o["lines"][0]["quantity"].as_i64().unwrap();
        }
    }
    for (s, h) in held.iter().enumerate() {
        let v = get(&url, &key, &format!("/v1/inventory/CRASH-{s}")).await;
        let (on_hand, reserved, available) = (
            v["on_hand"].as_i64().unwrap(),
            v["reserved"].as_i64().unwrap(),
            v["available"].as_i64().unwrap(),
        );
        assert_eq!(on_hand, 400, "{v}");
        assert!(available >= 0 && reserved + available == on_hand, "{v}");
        // Orders acknowledged to clients are a subset of what is held (a placed order whose answer
        // was lost to a kill also holds stock), never more than stock.
        assert!(
            reserved >= *h,
            "CRASH-{s}: views hold {reserved}, acknowledged orders hold {h}"
        );
    }
    assert_eq!(server.terminate(), Some(0));
    let out = common::replay(&data, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "replay differs: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("equal the live views"), "{stdout}");
}
