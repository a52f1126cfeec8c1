//! The server in this process (`storeline_server::run`), without spawning the binary: on the
//! memory log for speed, on the file log where what matters is that a start failing half-way
//! stops everything it started (the log's lock is free again), and on the Kafka log (tansu).

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use storeline_server::auth::{self, Scope};
use storeline_server::{Config, LogBackend, ServerError, Started};
use tokio::sync::oneshot;

struct Running {
    url: String,
    key: String,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<Result<(), ServerError>>,
}

fn config(data: &Path, backend: LogBackend, listen: &str) -> Config {
    let mut c = Config {
        data_dir: data.to_owned(),
        ..Config::default()
    };
    c.server.listen = listen.to_owned();
    c.log.backend = backend;
    c.log.partitions = 4;
    c
}

/// Runs the server until `stop`; `Err` when it fails to start.
async fn start(config: Config) -> Result<Running, ServerError> {
    let keys = config.keys_file();
    let (started_tx, started_rx) = oneshot::channel::<Started>();
    let (stop, stop_rx) = oneshot::channel::<()>();
    let done = tokio::spawn(storeline_server::run(
        config,
        async move {
            let _ = stop_rx.await;
        },
        move |s| {
            let _ = started_tx.send(s.clone());
        },
    ));
    match started_rx.await {
        Ok(s) => Ok(Running {
            url: format!("http://{}", s.addr),
            // An admin key is shown on the first start only; later ones make their own.
            key: s.admin_key.unwrap_or_else(|| {
                auth::create_key(&keys, "in-process-test", &[Scope::Admin])
                    .expect("a key")
                    .1
            }),
            stop,
            done,
        }),
        Err(_) => Err(done
            .await
            .expect("run does not panic")
            .expect_err("run ended before listening")),
    }
}

impl Running {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .expect("the server answers");
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.key)
            .send()
            .await
            .expect("the server answers");
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// Signs up cus-1 and cus-2 (events e1 and e2); returns the acknowledged positions as a
    /// `min_offset` cursor.
    async fn sign_up_two(&self) -> String {
        let (status, ack) = self
            .post(
                "/v1/events",
                json!([signup("e1", "cus-1"), signup("e2", "cus-2")]),
            )
            .await;
        assert_eq!(status, 200, "{ack}");
        ack["events"]
            .as_array()
            .expect("one ack per event")
            .iter()
            .map(|a| format!("{}:{}", a["partition"], a["offset"]))
            .collect::<Vec<_>>()
            .join(",")
    }

    async fn shutdown(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.done)
            .await
            .expect("the server stops")
            .expect("run does not panic")
            .expect("a clean shutdown");
    }
}

fn signup(id: &str, customer: &str) -> Value {
    json!({
        "specversion": "1.0", "id": id, "source": "in-process-test",
        "type": "customer.signed_up", "subject": customer,
        "data": { "email": format!("{customer}@example.com") },
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_on_the_memory_log_ingests_and_serves_the_customer_view() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(config(dir.path(), LogBackend::Memory, "127.0.0.1:0"))
        .await
        .expect("the server starts");
    let cursor = s.sign_up_two().await;
    let (status, customer) = s
        .get(&format!("/v1/customers/cus-1?min_offset={cursor}"))
        .await;
    assert_eq!(status, 200, "{customer}");
    assert_eq!(
        customer["traits"]["email"], "cus-1@example.com",
        "{customer}"
    );
    // The same event again is a duplicate, not a second signup.
    let (status, again) = s.post("/v1/events", json!([signup("e1", "cus-1")])).await;
    assert_eq!(
        (status, &again["events"][0]["duplicate"]),
        (200, &json!(true)),
        "{again}"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_start_that_fails_after_the_engine_started_stops_everything_it_started() {
    let dir = tempfile::tempdir().unwrap();
    // The port is taken: the log, the stores, the engine and the worker are up when the bind
    // fails.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = match start(config(dir.path(), LogBackend::File, &addr)).await {
        Ok(_) => panic!("the server started on a taken port"),
        Err(e) => e,
    };
    assert!(matches!(err, ServerError::Bind { .. }), "{err}");
    // Everything was stopped and the log closed: its lock is free for the next start.
    let s = start(config(dir.path(), LogBackend::File, "127.0.0.1:0"))
        .await
        .expect("the data directory is free again");
    let (status, _) = s.get("/v1/engine").await;
    assert_eq!(status, 200);
    s.shutdown().await;
}

/// A server whose log is a topic on a Kafka-protocol broker (tansu): it creates the topic,
/// ingests, applies and serves; after a restart the events are there and the deduplication
/// index, rebuilt from Kafka, still knows them; a server with a new data directory on the same
/// topic rebuilds the views from Kafka alone.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_on_the_kafka_log_keeps_its_events_across_restarts() {
    let broker = storeline_log::tansu::Broker::start();
    let on_kafka = |data: &Path| {
        let mut c = config(data, LogBackend::Kafka, "127.0.0.1:0");
        c.log.kafka.brokers = broker.brokers();
        c.log.kafka.topic = "in-process".into();
        c.log.kafka.replication_factor = 1;
        c
    };
    let dir = tempfile::tempdir().unwrap();
    let s = start(on_kafka(dir.path()))
        .await
        .expect("the server starts and creates the topic");
    let cursor = s.sign_up_two().await;
    let (status, customer) = s
        .get(&format!("/v1/customers/cus-1?min_offset={cursor}"))
        .await;
    assert_eq!(status, 200, "{customer}");
    assert_eq!(customer["traits"]["email"], "cus-1@example.com");
    s.shutdown().await;

    let s = start(on_kafka(dir.path()))
        .await
        .expect("the server restarts");
    let (status, again) = s.post("/v1/events", json!([signup("e1", "cus-1")])).await;
    assert_eq!(
        (status, &again["events"][0]["duplicate"]),
        (200, &json!(true)),
        "the dedup index was rebuilt from Kafka: {again}"
    );
    let (status, ack) = s.post("/v1/events", json!([signup("e3", "cus-3")])).await;
    assert_eq!(status, 200, "{ack}");
    s.shutdown().await;

    let fresh = tempfile::tempdir().unwrap();
    let s = start(on_kafka(fresh.path()))
        .await
        .expect("a server with an empty data directory starts on the same topic");
    let (status, customer) = s
        .get(&format!("/v1/customers/cus-1?min_offset={cursor}"))
        .await;
    assert_eq!(
        (status, &customer["traits"]["email"]),
        (200, &json!("cus-1@example.com")),
        "the views are rebuilt from the Kafka log: {customer}"
    );
    let (status, events) = s.get("/v1/events?type=customer.signed_up&limit=10").await;
    assert_eq!(status, 200, "{events}");
    let mut ids: Vec<&str> = events["events"]
        .as_array()
        .expect("a page of events")
        .iter()
        .filter_map(|e| e["id"].as_str())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["e1", "e2", "e3"], "each event once: {events}");
    s.shutdown().await;
}
