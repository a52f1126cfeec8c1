//! The real client libraries against the real server: Segment's `segment-analytics-python` on
//! the Segment-compatible endpoints, and the CloudEvents Python SDK on `POST /v1/events`.
//! `.ci/run` installs both (see README); this test fails if they are missing.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::serve;

fn python(script: &str, url: &str, key: &str) {
    let path = format!("{}/tests/sdk/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(&path)
        .arg(url)
        .arg(key)
        .output()
        .expect("python3 must be installed");
    assert!(
        out.status.success(),
        "{script} failed (install the SDKs with `python3 -m pip install -r crates/cli/tests/sdk/requirements.txt`):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_segment_python_library_stores_events_mapped_onto_the_catalog() {
    let (_dir, server, [ingest, read]) = serve(["ingest", "read"], &[]);
    python("segment_send.py", &server.url, &ingest);
    let events = common::all_events(&server.url, &read).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    for t in [
        "customer.identified",
        "page.viewed",
        "product.viewed",
        "cart.item_added",
        "order.placed",
        "track.video_played",
        "customer.aliased",
        "customer.grouped",
        "screen.viewed",
    ] {
        assert!(types.contains(&t), "{t} missing from {types:?}");
    }
    let order = events.iter().find(|e| e["type"] == "order.placed").unwrap();
    assert_eq!(order["subject"], "user-1");
    assert_eq!(order["source"], "segment");
    assert_eq!(order["data"]["order_id"], "ord-1");
    assert_eq!(
        order["data"]["total"],
        serde_json::json!({"amount": 2750, "currency": "EUR"})
    );
    assert_eq!(order["data"]["lines"][0]["unit_price"]["amount"], 1250);
    let identify = events
        .iter()
        .find(|e| e["type"] == "customer.identified")
        .unwrap();
    assert_eq!(identify["data"]["email"], "ada@example.com");
    // The library's messageId is the event id, so its retries are deduplicated.
    assert!(
        events
            .iter()
            .all(|e| e["id"].as_str().is_some_and(|s| !s.is_empty()))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cloudevents_python_sdk_structured_and_binary_modes_are_stored() {
    let (_dir, server, [ingest, read]) = serve(["ingest", "read"], &[]);
    python("cloudevents_send.py", &server.url, &ingest);
    let events = common::all_events(&server.url, &read).await;
    assert_eq!(
        events.len(),
        2,
        "the invalid third event is refused: {events:?}"
    );
    let placed = events.iter().find(|e| e["id"] == "ce-1").unwrap();
    assert_eq!(placed["source"], "https://shop.example/checkout");
    assert_eq!(placed["data"]["order_id"], "ord-ce");
    let synced = events.iter().find(|e| e["id"] == "ce-2").unwrap();
    assert_eq!(synced["type"], "com.example.stock.synced");
    assert_eq!(synced["region"], "eu");
    assert_eq!(synced["data"]["on_hand"], 12);
}
