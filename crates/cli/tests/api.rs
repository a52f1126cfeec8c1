//! The HTTP API against the real binary: every ingestion framing, all-or-nothing validation,
//! limits, dedup (also across restarts), auth scopes, history paging, SSE resume, operations.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{
    Server, error_fields, get, http, json_at, metrics, post_events, read_partition, serve,
    status_of,
};
use futures::StreamExt;
use serde_json::{Value, json};

struct Env {
    _dir: tempfile::TempDir,
    server: Server,
    ingest: String,
    read: String,
    admin: String,
}

fn start(env: &[(&str, &str)]) -> Env {
    let (dir, server, [ingest, read, admin]) = serve(["ingest", "read", "admin"], env);
    Env {
        _dir: dir,
        server,
        ingest,
        read,
        admin,
    }
}

async fn post(env: &Env, ct: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    post_events(&env.server.url, &env.ingest, ct, body).await
}

async fn all_events(env: &Env) -> Vec<Value> {
    common::all_events(&env.server.url, &env.read).await
}

/// Reads SSE frames until `got` holds `n` event ids; remembers the last `id:` seen.
async fn read_sse(
    body: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    n: usize,
    got: &mut Vec<String>,
    last_id: &mut Option<String>,
) {
    let mut buf = String::new();
    while got.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("the stream delivers")
            .unwrap()
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            for line in frame.lines() {
                if let Some(d) = line.strip_prefix("data:") {
                    let event: Value = serde_json::from_str(d.trim()).unwrap();
                    got.push(event["id"].as_str().unwrap().to_owned());
                } else if let Some(i) = line.strip_prefix("id:") {
                    *last_id = Some(i.trim().to_owned());
                }
            }
        }
    }
}

fn order(id: &str, customer: &str) -> Value {
    json!({"id": id, "source": "shop", "type": "order.placed", "subject": customer,
           "data": {"order_id": format!("o-{id}"), "total": {"amount": 1999, "currency": "EUR"},
                    "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price": {"amount": 1999, "currency": "EUR"}}]}})
}

#[tokio::test(flavor = "multi_thread")]
async fn every_framing_is_stored_and_read_back_with_positions() {
    let env = start(&[]);
    let (s, one) = post(&env, "application/json", order("e1", "cus-1").to_string()).await;
    assert_eq!(s, 200, "{one}");
    assert_eq!(one["accepted"], 1);
    let ack = &one["events"][0];
    assert_eq!(ack["id"], "e1");
    assert!(ack["partition"].is_u64() && ack["offset"].is_u64());

    let arr = json!([order("e2", "cus-2"), order("e3", "cus-3")]);
    assert_eq!(post(&env, "application/json", arr.to_string()).await.0, 200);
    let nd = format!("{}\n\n{}\n", order("e4", "cus-1"), order("e5", "cus-1"));
    let (s, b) = post(&env, "application/x-ndjson", nd).await;
    assert_eq!((s, b["accepted"].as_u64()), (200, Some(2)));
    let ce = json!({"specversion": "1.0", "id": "e6", "source": "/pos", "type": "store.visit", "data": {"x": 1}});
    assert_eq!(
        post(&env, "application/cloudevents+json", ce.to_string())
            .await
            .0,
        200
    );
    let batch =
        json!([{"specversion": "1.0", "id": "e7", "source": "/pos", "type": "store.visit"}]);
    assert_eq!(
        post(
            &env,
            "application/cloudevents-batch+json",
            batch.to_string()
        )
        .await
        .0,
        200
    );
    let r = http()
        .post(format!("{}/v1/events", env.server.url))
        .bearer_auth(&env.ingest)
        .header("ce-specversion", "1.0")
        .header("ce-id", "e8")
        .header("ce-source", "/erp")
        .header("ce-type", "erp.sync")
        .header("ce-subject", "cus-9")
        .header("ce-tenant", "eu")
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let events = all_events(&env).await;
    assert_eq!(events.len(), 8);
    let e8 = events.iter().find(|e| e["id"] == "e8").unwrap();
    assert_eq!(e8["data_base64"], "aGVsbG8=");
    assert_eq!(e8["tenant"], "eu", "binary-mode extensions are kept");
    let e1 = events.iter().find(|e| e["id"] == "e1").unwrap();
    assert_eq!(e1["data"]["total"]["amount"], 1999);
    assert_eq!(e1["partition"], ack["partition"]);
    assert_eq!(e1["offset"], ack["offset"]);
    assert!(e1["received_at"].is_string());
    // Per-customer order: cus-1's three events are in one partition, in send order.
    let cus1: Vec<&Value> = events.iter().filter(|e| e["subject"] == "cus-1").collect();
    assert!(
        cus1.windows(2)
            .all(|w| w[0]["partition"] == w[1]["partition"]
                && w[0]["offset"].as_u64() < w[1]["offset"].as_u64())
    );
    assert_eq!(
        cus1.iter()
            .map(|e| e["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["e1", "e4", "e5"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_event_rejects_the_whole_request_with_index_field_and_reason() {
    let env = start(&[]);
    let mut bad = order("b2", "cus-1");
    bad["data"]["lines"][0]["quantity"] = json!(0);
    let body = json!([order("b1", "cus-1"), bad, {"id": "b3", "type": "Order Placed"}, {"type": "x.y", "shipping_note": "red"}]);
    let (s, b) = post(&env, "application/json", body.to_string()).await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"]["code"], "invalid_events");
    let errors = b["error"]["details"]["errors"].as_array().unwrap();
    let find = |i: u64| {
        errors
            .iter()
            .find(|e| e["index"] == i)
            .unwrap_or_else(|| panic!("no error for {i}: {b}"))
    };
    assert_eq!(find(1)["field"], "data.lines[0].quantity");
    assert_eq!(find(2)["field"], "type");
    assert_eq!(find(3)["field"], "shipping_note");
    assert!(errors.iter().all(|e| e["index"] != 0));
    assert!(
        all_events(&env).await.is_empty(),
        "nothing is stored when one event is bad"
    );

    let (s, b) = post(&env, "application/json", "{\"type\": \"x.y\",").await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_json"))
    );
    let (s, b) = post(
        &env,
        "application/x-ndjson",
        "{\"type\":\"a.b\"}\nnot json\n",
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(b["error"]["details"]["errors"][0]["line"], 2);
    let (s, b) = post(&env, "text/csv", "a,b").await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let (s, b) = post(
        &env,
        "application/cloudevents+json",
        json!({"type": "a.b"}).to_string(),
    )
    .await;
    assert_eq!(s, 400);
    let fields = error_fields(&b);
    assert!(
        fields.contains(&"specversion") && fields.contains(&"id") && fields.contains(&"source"),
        "{b}"
    );
    // The server keeps serving after all that.
    assert_eq!(
        post(&env, "application/json", order("ok", "c").to_string())
            .await
            .0,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_answer_413_with_the_limit() {
    let env = start(&[
        ("STORELINE_INGEST__MAX_BODY_BYTES", "100000"),
        ("STORELINE_INGEST__MAX_EVENT_BYTES", "2000"),
    ]);
    let big = json!({"type": "x.y", "data": {"blob": "x".repeat(3000)}});
    let (s, b) = post(&env, "application/json", big.to_string()).await;
    assert_eq!(s, 413, "{b}");
    assert_eq!(b["error"]["details"]["limit_bytes"], 2000);
    let many: String = (0..2000)
        .map(|i| {
            format!(
                "{{\"type\":\"x.y\",\"id\":\"{i}\",\"data\":{{\"p\":\"{}\"}}}}\n",
                "y".repeat(40)
            )
        })
        .collect();
    let (s, b) = post(&env, "application/x-ndjson", many).await;
    assert_eq!(s, 413, "{b}");
    assert_eq!(b["error"]["details"]["limit_bytes"], 100000);
    assert!(all_events(&env).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_are_acknowledged_with_the_original_offset_also_after_a_restart() {
    let mut env = start(&[]);
    let (_, first) = post(
        &env,
        "application/json",
        json!([order("d1", "c1"), order("d2", "c2")]).to_string(),
    )
    .await;
    let (_, again) = post(
        &env,
        "application/json",
        json!([order("d2", "c2"), order("d3", "c3"), order("d3", "c3")]).to_string(),
    )
    .await;
    assert_eq!(again["accepted"], 1);
    assert_eq!(again["duplicates"], 2);
    assert_eq!(again["events"][0]["duplicate"], true);
    assert_eq!(again["events"][0]["offset"], first["events"][1]["offset"]);
    assert_eq!(
        again["events"][2]["offset"], again["events"][1]["offset"],
        "a repeat inside one request points at the first"
    );
    // Same id from another source is another event.
    let mut other = order("d1", "c1");
    other["source"] = json!("pos");
    assert_eq!(
        post(&env, "application/json", other.to_string()).await.1["accepted"],
        1
    );

    assert_eq!(env.server.terminate(), Some(0), "graceful shutdown exits 0");
    env.server = Server::start(&env.server.data.clone(), &[]);
    let (_, after) = post(&env, "application/json", order("d1", "c1").to_string()).await;
    assert_eq!(
        after["duplicates"], 1,
        "the dedup index is rebuilt from the log: {after}"
    );
    assert_eq!(after["events"][0]["offset"], first["events"][0]["offset"]);
    assert_eq!(all_events(&env).await.len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_and_scopes_are_enforced_with_clear_errors() {
    let env = start(&[]);
    let url = &env.server.url;
    let r = http()
        .post(format!("{url}/v1/events"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "unauthorized"
    );
    let r = get(url, &env.ingest, "/v1/events").await;
    assert_eq!(r.status, 403);
    let b = r.body;
    assert_eq!(b["error"]["details"]["required_scope"], "read");
    assert!(b["error"]["message"].as_str().unwrap().contains("'read'"));
    let r = http()
        .post(format!("{url}/v1/events"))
        .bearer_auth(&env.read)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = get(url, &env.admin, "/v1/events").await;
    assert_eq!(r.status, 200, "admin grants every scope");

    // Revoking with the CLI while the server runs takes effect.
    common::succeeds(
        common::storeline(&["keys", "revoke", &env.ingest[..8], "--data"]).arg(&env.server.data),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = http()
        .post(format!("{url}/v1/events"))
        .bearer_auth(&env.ingest)
        .body("{\"type\":\"a.b\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_data_directory_prints_an_admin_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let printed = server.stdout_head.join("\n");
    let key = printed
        .split_whitespace()
        .find(|w| w.starts_with("sl_"))
        .expect("admin key printed")
        .to_owned();
    let r = get(&server.url, &key, "/v1/events").await;
    assert_eq!(r.status, 200);
    assert_eq!(server.terminate(), Some(0));
    let server = Server::start(dir.path(), &[]);
    assert!(
        !server.stdout_head.join("\n").contains("sl_"),
        "the key is shown only on the first start"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn history_pages_filter_and_the_stream_resumes_with_last_event_id() {
    let env = start(&[]);
    let mut nd = String::new();
    for i in 0..250 {
        let ty = if i % 5 == 0 {
            "order.placed"
        } else {
            "page.viewed"
        };
        let data = if ty == "order.placed" {
            order(&i.to_string(), "c")["data"].clone()
        } else {
            json!({"url": format!("/p/{i}")})
        };
        nd.push_str(&json!({"id": format!("h{i}"), "type": ty, "subject": format!("cus-{}", i % 7), "data": data}).to_string());
        nd.push('\n');
    }
    assert_eq!(post(&env, "application/x-ndjson", nd).await.0, 200);
    let url = &env.server.url;
    // Paging with the cursor visits every event once.
    let mut seen = std::collections::HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut req = http()
            .get(format!("{url}/v1/events"))
            .bearer_auth(&env.read)
            .query(&[("limit", "40")]);
        if let Some(c) = &cursor {
            req = req.query(&[("cursor", c)]);
        }
        let page: Value = req.send().await.unwrap().json().await.unwrap();
        for e in page["events"].as_array().unwrap() {
            assert!(
                seen.insert(e["id"].as_str().unwrap().to_owned()),
                "seen twice: {}",
                e["id"]
            );
        }
        cursor = Some(page["next_cursor"].as_str().unwrap().to_owned());
        if page["has_more"] == false {
            break;
        }
    }
    assert_eq!(seen.len(), 250);
    let page = common::get_body(
        url,
        &env.read,
        "/v1/events?type=order.*&subject=cus-0&limit=1000",
    )
    .await;
    let ids: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..250)
        .filter(|i| i % 5 == 0 && i % 7 == 0)
        .map(|i| format!("h{i}"))
        .collect();
    assert_eq!(ids.len(), expected.len());
    let r = get(url, &env.read, "/v1/events?limit=5000").await;
    assert_eq!(r.status, 400);

    // SSE: read 3 live events, reconnect with the last id, get the rest without repeats.
    let stream = |last: Option<String>| {
        let mut req = http()
            .get(format!("{url}/v1/stream?type=live.*"))
            .bearer_auth(&env.read);
        if let Some(l) = last {
            req = req.header("last-event-id", l);
        }
        req.send()
    };
    let r = stream(None).await.unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let sender = {
        let url = url.clone();
        let key = env.ingest.clone();
        tokio::spawn(async move {
            for i in 0..6 {
                let ev =
                    json!({"id": format!("l{i}"), "type": "live.tick", "subject": format!("s{i}")});
                post_events(&url, &key, "application/json", ev.to_string()).await;
                if i == 2 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        })
    };
    let mut got = Vec::new();
    let mut last_id = None;
    read_sse(&mut body, 3, &mut got, &mut last_id).await;
    drop(body);
    sender.await.unwrap();
    let r = stream(last_id.clone()).await.unwrap();
    let mut body = r.bytes_stream();
    read_sse(&mut body, 6, &mut got, &mut last_id).await;
    got.sort();
    assert_eq!(
        got,
        ["l0", "l1", "l2", "l3", "l4", "l5"],
        "resuming loses and repeats nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn operations_endpoints_report_health_and_metrics() {
    let env = start(&[]);
    let url = &env.server.url;
    assert_eq!(
        post(&env, "application/json", order("m1", "c").to_string())
            .await
            .0,
        200
    );
    let _ = post(&env, "application/json", "{").await;
    assert_eq!(status_of(url, "/healthz").await, 200);
    assert_eq!(status_of(url, "/readyz").await, 200);
    let text = metrics(url).await;
    for name in [
        "storeline_ingest_requests_total",
        "storeline_ingest_events_total",
        "storeline_log_append_seconds_bucket",
        "storeline_log_fsync_seconds_bucket",
        "storeline_log_batch_records_bucket",
        "storeline_log_bytes{partition=\"0\"}",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}");
    }
    assert!(text.contains("outcome=\"invalid_json\""));
    let spec = json_at(&format!("{url}/v1/openapi.json")).await;
    assert!(spec["paths"]["/v1/events"]["post"].is_object());
    let r = http().get(format!("{url}/v1/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "not_found"
    );
    // Reading by partition finds the event in the partition its acknowledgement named.
    let (_, ack) = post(&env, "application/json", order("m2", "cus-m").to_string()).await;
    let p = ack["events"][0]["partition"].as_u64().unwrap() as u32;
    let found = read_partition(url, &env.read, p).await;
    assert!(
        found
            .iter()
            .any(|e| e["id"] == "m2" && e["offset"] == ack["events"][0]["offset"])
    );
}
