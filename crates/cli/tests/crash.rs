//! Kill -9 under load, 20 times: after each restart every acknowledged event is present exactly
//! once at the position it was acknowledged with, each partition's offsets have no gaps, and
//! each key's events are in the order they were sent.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Server, create_key, http, read_partition};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const CLIENTS: usize = 8;
const KEYS_PER_CLIENT: usize = 4;
const ROUNDS: usize = 20;

/// What a client has had acknowledged: id → (partition, offset).
type Acked = Arc<Mutex<HashMap<String, (u64, u64)>>>;

struct ClientState {
    seq: Vec<u64>,
    /// A batch sent but not acknowledged when the server died: resent first on the next round.
    pending: Option<Vec<Value>>,
}

async fn run_client(
    url: String,
    key: String,
    c: usize,
    state: Arc<Mutex<ClientState>>,
    acked: Acked,
    seed: u64,
) {
    let client = http();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    loop {
        let batch = {
            let mut st = state.lock().unwrap();
            match st.pending.take() {
                Some(b) => b,
                None => {
                    let n = rng.random_range(1..=20);
                    (0..n)
                        .map(|_| {
                            let k = rng.random_range(0..KEYS_PER_CLIENT);
                            st.seq[k] += 1;
                            json!({"id": format!("c{c}-k{k}-s{}", st.seq[k]), "source": "crash-test",
                                   "type": "cart.item_added", "subject": format!("cus-{c}-{k}"),
                                   "data": {"sku": "SKU-1", "quantity": 1, "seq": st.seq[k]}})
                        })
                        .map(|mut e| {
                            // `seq` is not a cart.item_added field: keep it where custom fields go.
                            let seq = e["data"]["seq"].take();
                            e["data"].as_object_mut().unwrap().remove("seq");
                            e["data"]["properties"] = json!({"seq": seq});
                            e
                        })
                        .collect()
                }
            }
        };
        state.lock().unwrap().pending = Some(batch.clone());
        let body: String = batch.iter().map(|e| format!("{e}\n")).collect();
        let response = client
            .post(format!("{url}/v1/events"))
            .bearer_auth(&key)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await;
        let Ok(response) = response else { return };
        if !response.status().is_success() {
            return;
        }
        let Ok(reply) = response.json::<Value>().await else {
            return;
        };
        let mut a = acked.lock().unwrap();
        for ack in reply["events"].as_array().unwrap() {
            let pos = (
                ack["partition"].as_u64().unwrap(),
                ack["offset"].as_u64().unwrap(),
            );
            let id = ack["id"].as_str().unwrap().to_owned();
            if let Some(prev) = a.insert(id.clone(), pos) {
                assert_eq!(prev, pos, "{id} was acknowledged at two positions");
            }
        }
        state.lock().unwrap().pending = None;
    }
}

async fn check(server: &Server, read_key: &str, acked: &Acked, round: usize) {
    let mut stored: HashMap<String, (u64, u64)> = HashMap::new();
    let mut last_seq: HashMap<String, u64> = HashMap::new();
    for p in 0..8u32 {
        let events = read_partition(&server.url, read_key, p).await;
        for (i, e) in events.iter().enumerate() {
            let offset = e["offset"].as_u64().unwrap();
            assert_eq!(
                offset, i as u64,
                "round {round}: partition {p} has a gap at offset {i}"
            );
            let id = e["id"].as_str().unwrap().to_owned();
            assert!(
                stored.insert(id.clone(), (u64::from(p), offset)).is_none(),
                "round {round}: {id} stored twice"
            );
            let subject = e["subject"].as_str().unwrap().to_owned();
            let seq = e["data"]["properties"]["seq"].as_u64().unwrap();
            let prev = last_seq.insert(subject.clone(), seq).unwrap_or(0);
            assert!(
                seq > prev,
                "round {round}: {subject} out of order ({prev} then {seq})"
            );
        }
    }
    for (id, pos) in acked.lock().unwrap().iter() {
        assert_eq!(
            stored.get(id),
            Some(pos),
            "round {round}: acknowledged {id} is not at {pos:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_events_survive_kill_9_exactly_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let ingest = create_key(dir.path(), "ingest");
    let read = create_key(dir.path(), "read");
    // Small segments so that kills also land around segment rolls.
    let env = [
        ("STORELINE_LOG__SEGMENT_BYTES", "1048576"),
        ("STORELINE_LOG__MAX_BATCH_BYTES", "262144"),
        ("STORELINE_INGEST__MAX_BODY_BYTES", "262144"),
    ];
    let acked: Acked = Arc::default();
    let states: Vec<_> = (0..CLIENTS)
        .map(|_| {
            Arc::new(Mutex::new(ClientState {
                seq: vec![0; KEYS_PER_CLIENT],
                pending: None,
            }))
        })
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for round in 0..ROUNDS {
        let mut server = Server::start(dir.path(), &env);
        check(&server, &read, &acked, round).await;
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|c| {
                tokio::spawn(run_client(
                    server.url.clone(),
                    ingest.clone(),
                    c,
                    Arc::clone(&states[c]),
                    Arc::clone(&acked),
                    (round * 100 + c) as u64,
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..700))).await;
        server.kill9();
        for t in tasks {
            t.await.unwrap();
        }
    }
    let server = Server::start(dir.path(), &env);
    check(&server, &read, &acked, ROUNDS).await;
    let n = acked.lock().unwrap().len();
    assert!(
        n > 2000,
        "the test should have acknowledged a lot of events, got {n}"
    );
    eprintln!("{n} acknowledged events survived {ROUNDS} kill -9s");
    // After the crashes, the log verifies clean (no corruption, at most a torn tail).
    common::succeeds(common::storeline(&["log", "verify", "--data"]).arg(dir.path()));
}
