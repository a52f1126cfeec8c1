//! The delivery worker end to end in this process: a `Host` that serves outbox rows as the
//! engine writes them (`OutboxEntry` under an `OutboxKey`), a real delivery store (SQLite in a
//! temporary directory) and a webhook connector pointed at a real local receiver (axum on
//! 127.0.0.1:0). What it checks: a row the worker cannot read (a field renamed, or not JSON) is
//! skipped and logged, and the worker goes on: the deliveries around it are made, and its cursor
//! moves past it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use futures::future::BoxFuture;
use serde_json::{Map, Value, json};
use storeline_connector::store::{DeliveryStore, Status};
use storeline_connector::worker::Host;
use storeline_connector::{Worker, WorkerConfig, config};
use storeline_event::outbox::{OutboxEntry, OutboxKey};
use storeline_state::{SqliteStore, Store};
use tokio::sync::watch;

/// Outbox rows of partition 0, in key order, as the engine's store would return them.
struct Rows(Vec<(String, Bytes)>);

impl Host for Rows {
    fn outbox(
        &self,
        partition: u32,
        from_clock: i64,
        after: Option<String>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<(String, Bytes)>, String>> {
        let start = after.unwrap_or_else(|| OutboxKey::start(partition, from_clock));
        let rows = self
            .0
            .iter()
            .filter(|(k, _)| k.starts_with(&OutboxKey::prefix(partition)) && **k > *start)
            .take(limit)
            .cloned()
            .collect();
        Box::pin(async move { Ok(rows) })
    }
    fn profile(&self, _customer: String) -> BoxFuture<'_, Option<Value>> {
        Box::pin(async { None })
    }
    fn emit(&self, _ty: &'static str, _data: Value) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

fn entry(id: &str, clock: i64) -> OutboxEntry {
    OutboxEntry {
        id: id.to_owned(),
        connector: "hook".into(),
        channel: "webhook".into(),
        template: None,
        customer: Some("cus-1".into()),
        trigger: "t".into(),
        version: "v1".into(),
        run: "t\u{1f}cus-1\u{1f}".into(),
        event: json!({ "id": "ev-1", "type": "x.ping" }),
        arrived: None,
        data: Map::new(),
        created_at: clock,
        priority: 0,
        seq: "00".into(),
        transactional: false,
    }
}

fn key(id: &str, clock: i64) -> String {
    OutboxKey {
        partition: 0,
        clock,
        seq: "00".into(),
        id: id.to_owned(),
    }
    .encode()
}

/// A receiver that records the `webhook-id` of every request and answers 200.
async fn receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap| {
        let log = log.clone();
        async move {
            let id = headers
                .get("webhook-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            log.lock().expect("lock").push(id);
            StatusCode::OK
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_outbox_row_is_skipped_and_the_worker_goes_on() {
    let (url, seen) = receiver().await;
    let mut renamed = serde_json::to_value(entry("dlv_renamed", 1_001)).expect("json");
    let obj = renamed.as_object_mut().expect("an object");
    let connector = obj.remove("connector").expect("a connector field");
    obj.insert("connecter".into(), connector);
    let rows = vec![
        (key("dlv_before", 1_000), entry("dlv_before", 1_000)),
        (key("dlv_after", 1_003), entry("dlv_after", 1_003)),
    ];
    let mut rows: Vec<(String, Bytes)> = rows
        .into_iter()
        .map(|(k, e)| (k, Bytes::from(e.to_bytes().expect("serializes"))))
        .collect();
    rows.push((
        key("dlv_renamed", 1_001),
        Bytes::from(serde_json::to_vec(&renamed).expect("json")),
    ));
    rows.push((
        key("dlv_garbage", 1_002),
        Bytes::from_static(b"\xff not json"),
    ));
    rows.sort();

    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = SqliteStore::open(&dir.path().join("delivery.db"))
        .await
        .expect("store");
    let store = Arc::new(DeliveryStore::new(Arc::new(Store::Sqlite(sqlite))));
    let table: toml::Table = toml::from_str(&format!(
        "name = \"hook\"\ntype = \"webhook\"\nurl = \"{url}\"\nallow_private_network = true\n"
    ))
    .expect("toml");
    let def = config::parse(&table, "connector[0]").unwrap_or_else(|p| panic!("{p:?}"));
    let (_applied_tx, applied_rx) = watch::channel(0u64);
    let (stop_tx, stop_rx) = watch::channel(false);
    let worker = Worker::start(
        Arc::clone(&store),
        Arc::new(Rows(rows)),
        vec![applied_rx],
        vec![def],
        WorkerConfig {
            partitions: 1,
            poll: Duration::from_millis(50),
            ..WorkerConfig::default()
        },
        stop_rx,
    )
    .await
    .expect("the worker starts");

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut got = seen.lock().expect("lock").clone();
        got.sort();
        if got == ["dlv_after", "dlv_before"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the deliveries around the unreadable rows were not made: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Recorded as delivered, and the cursor is past every row, the unreadable ones included.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let before = store.get("dlv_before").await.expect("read");
        let after = store.get("dlv_after").await.expect("read");
        let cursor = store.cursors().await.expect("read").get(&0).copied();
        let delivered = |r: &Option<storeline_connector::store::Record>| {
            r.as_ref().is_some_and(|r| r.status == Status::Delivered)
        };
        if delivered(&before) && delivered(&after) && cursor == Some(1_003) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not recorded: {before:?} {after:?}, cursor {cursor:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in ["dlv_renamed", "dlv_garbage"] {
        assert!(
            store.get(id).await.expect("read").is_none(),
            "{id} became a delivery"
        );
    }
    stop_tx.send(true).expect("the worker listens");
    worker.join().await;
}
