//! The public write key takes no control and one bad record stalls nothing, against the real
//! binary: every reserved record type is refused for every key scope; records that slipped into
//! the log before (forged control records, a NUL key, a 100,000-deep payload, a sum that would
//! wrap) are quarantined while every partition keeps applying and commands keep answering,
//! and a replay quarantines the same records; Segment batches keep their good messages.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{
    Postgres, Resp, Server, all_events, create_key, error_fields, get, http, metrics, post_json,
    replay, send, serve,
};
use serde_json::{Value, json};
use storeline_log::{EventLog, FileLog, FileLogConfig, Record, partition_for};

struct Api {
    url: String,
    client: reqwest::Client,
}

impl Api {
    fn new(server: &Server) -> Api {
        Api {
            url: server.url.clone(),
            client: http(),
        }
    }

    async fn post(&self, path: &str, key: &str, body: &Value) -> Resp {
        post_json(&self.url, key, path, body).await
    }

    async fn get(&self, path: &str, key: &str) -> Resp {
        get(&self.url, key, path).await
    }

    /// Polls `GET path` until `done` holds for its body (up to 20 s).
    async fn until(&self, path: &str, key: &str, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let r = self.get(path, key).await;
            if done(&r.body) {
                return r.body;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{path} never got there: {} {}",
                r.status,
                r.body
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

const RESERVED: &[&str] = &[
    "storeline.triggers",
    "storeline.forwarded",
    "storeline.tick",
    "storeline.quarantined",
    "storeline.quarantine_cleared",
    "storeline.merged",
    "storeline.handoff",
    "storeline.anything_else",
    "connector.disabled",
    "connector.enabled",
    "customer.unmerged",
];

const FORGED_TRIGGERS: &str = r#"
[[connector]]
name = "exfil"
type = "webhook"
url = "http://127.0.0.1:9/steal"
allow_private_network = true

[[trigger]]
name = "leak"
on = "cart.item_added"
then = [ { deliver = "exfil" } ]
"#;

#[tokio::test]
async fn every_reserved_type_is_refused_for_every_key_scope() {
    let (_dir, server, [ingest, read, admin]) = serve(["ingest", "read", "admin"], &[]);
    let api = Api::new(&server);
    for ty in RESERVED {
        let ev = json!({ "type": ty, "source": "storeline/engine", "subject": "cus-1",
                         "data": { "source": FORGED_TRIGGERS, "version": "x", "identity": "cus-1",
                                   "connector": "erp" } });
        for key in [&ingest, &admin] {
            let r = api.post("/v1/events", key, &ev).await;
            let body = r.is(400, Some("reserved_type"));
            let fields = error_fields(body);
            assert!(
                fields.contains(&"type") && fields.contains(&"source"),
                "{ty}: {body}"
            );
        }
        api.post("/v1/events", &read, &ev)
            .await
            .is(403, Some("forbidden"));
        // The other framings: NDJSON, a CloudEvents batch, CloudEvents binary mode.
        for (ct, body) in [
            ("application/x-ndjson", format!("{ev}\n")),
            (
                "application/cloudevents-batch+json",
                json!([{ "specversion": "1.0", "id": "x1", "source": "web", "type": ty }])
                    .to_string(),
            ),
        ] {
            let r = send(
                api.client
                    .post(format!("{}/v1/events", api.url))
                    .bearer_auth(&ingest)
                    .header("content-type", ct)
                    .body(body),
            )
            .await;
            r.is(400, Some("reserved_type"));
        }
        let r = send(
            api.client
                .post(format!("{}/v1/events", api.url))
                .bearer_auth(&ingest)
                .header("ce-specversion", "1.0")
                .header("ce-id", "b1")
                .header("ce-source", "web")
                .header("ce-type", *ty)
                .header("content-type", "application/json")
                .body("{}"),
        )
        .await;
        r.is(400, Some("reserved_type"));
    }
    // A reserved source alone, the attributes commands stamp, and Storeline's own mark.
    let r = api
        .post(
            "/v1/events",
            &ingest,
            &json!({ "type": "page.viewed", "source": "storeline/api", "data": { "url": "/" } }),
        )
        .await;
    assert_eq!(
        r.is(400, Some("reserved_type"))["error"]["details"]["errors"][0]["field"],
        "source"
    );
    for attr in ["command", "idempotencykey", "commandhash"] {
        let mut ev = json!({ "type": "page.viewed", "source": "web", "data": { "url": "/" } });
        ev[attr] = json!("x");
        let r = api.post("/v1/events", &ingest, &ev).await;
        assert_eq!(
            r.is(400, Some("reserved_type"))["error"]["details"]["errors"][0]["field"],
            attr
        );
    }
    let r = api
        .post(
            "/v1/events",
            &ingest,
            &json!({ "type": "page.viewed", "storeline_internal": true, "data": { "url": "/" } }),
        )
        .await;
    assert_eq!(
        r.is(400, Some("invalid_events"))["error"]["details"]["errors"][0]["field"],
        "storeline_internal"
    );
    // Nothing was stored and no trigger file is in force.
    let events = api.get("/v1/events", &read).await;
    assert_eq!(events.is(200, None)["count"], 0, "{}", events.body);
    let t = api.get("/v1/triggers", &admin).await;
    assert_eq!(t.is(200, None)["version"], Value::Null);
}

#[tokio::test]
async fn the_public_ingest_key_cannot_run_commands() {
    let (_dir, server, [ingest, backend]) = serve(["ingest", "commands"], &[]);
    let api = Api::new(&server);
    let adjust = json!({ "sku": "S-1", "set": 0 });
    let r = api
        .post("/v1/commands/inventory.adjust", &ingest, &adjust)
        .await;
    assert_eq!(
        r.is(403, Some("forbidden"))["error"]["details"]["required_scope"],
        "commands"
    );
    api.post("/v1/commands/inventory.adjust", &backend, &adjust)
        .await
        .is(200, None);
    // A commands key is for commands only.
    api.post("/v1/events", &backend, &json!({ "type": "x.y" }))
        .await
        .is(403, Some("forbidden"));
}

/// The stored form of an event as a client might have slipped it into the log before ingest
/// refused such records (no `storeline_internal` mark).
fn stored(id: &str, ty: &str, source: &str, subject: Option<&str>, data: &str) -> String {
    let subject = subject.map_or(String::new(), |s| {
        format!(",\"subject\":{}", serde_json::to_string(s).unwrap())
    });
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"{source}","type":"{ty}","time":"2026-12-01T10:00:00Z"{subject},"received_at":"2026-12-01T10:00:00Z","data":{data}}}"#
    )
}

/// Writes the records a client slipped in before this version, straight into the log.
async fn poison_the_log(data: &std::path::Path) -> u32 {
    let config = FileLogConfig::default();
    let n = config.partitions;
    let log = FileLog::open(data.join("log"), config).unwrap();
    let append = |p: u32, key: &str, value: String| {
        let rec = Record {
            timestamp: 1_764_583_200_000,
            key: bytes::Bytes::from(key.to_owned()),
            value: bytes::Bytes::from(value),
        };
        (p, rec)
    };
    let mut recs = Vec::new();
    // A forged trigger file in every partition (the control takeover of issue 11).
    let forged = json!({ "source": FORGED_TRIGGERS, "version": "x" }).to_string();
    for p in 0..n {
        recs.push(append(
            p,
            "x",
            stored(
                &format!("forged-{p}"),
                "storeline.triggers",
                "storeline/engine",
                None,
                &forged,
            ),
        ));
    }
    // A NUL in a subject: PostgreSQL cannot store the key, SQLite is refused the same.
    let nul = "cus\u{0}evil";
    let p_nul = partition_for(nul.as_bytes(), n);
    recs.push(append(
        p_nul,
        nul,
        stored(
            "nul-1",
            "cart.item_added",
            "web",
            Some(nul),
            r#"{"sku":"S","quantity":1}"#,
        ),
    ));
    // A payload 100,000 arrays deep.
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    recs.push(append(
        3,
        "deep",
        stored("deep-1", "my.custom", "web", Some("deep"), &deep),
    ));
    // Two orders of one customer whose lifetime value would wrap an i64.
    let commerce = partition_for(b"commerce", n);
    for i in 1..=2 {
        let order = format!(
            r#"{{"order_id":"whale-{i}","total":{{"amount":9000000000000000000,"currency":"EUR"}},"lines":[{{"sku":"S","quantity":1}}]}}"#
        );
        recs.push(append(
            commerce,
            "commerce",
            stored(
                &format!("whale-{i}"),
                "order.placed",
                "web",
                Some("whale"),
                &order,
            ),
        ));
    }
    for (p, rec) in recs {
        log.append(p, vec![rec]).await.unwrap();
    }
    log.close().await.unwrap();
    n
}

/// A subject that routes to partition `p`.
fn subject_in(p: u32, n: u32, tag: &str) -> String {
    (0..)
        .map(|i| format!("{tag}-{i}"))
        .find(|s| partition_for(s.as_bytes(), n) == p)
        .unwrap()
}

#[tokio::test]
async fn poisoned_and_forged_records_are_quarantined_and_nothing_stalls() {
    poison_and_recover(&[]).await;
}

#[tokio::test]
async fn poisoned_and_forged_records_are_quarantined_and_nothing_stalls_on_postgres() {
    let pg = Postgres::schema("hostile_poison");
    poison_and_recover(&pg.env()).await;
}

async fn poison_and_recover(backend: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let admin = create_key(dir.path(), "admin");
    let read = create_key(dir.path(), "read");
    let n = poison_the_log(dir.path()).await;
    let mut server = Server::start(dir.path(), backend);
    let api = Api::new(&server);
    // Every bad record is in the quarantine, with its reason.
    let q = api
        .until("/v1/quarantine?limit=1000", &admin, |b| {
            b["entries"]
                .as_array()
                .is_some_and(|e| e.len() >= n as usize + 3)
        })
        .await;
    let entries = q["entries"].as_array().unwrap();
    let count = |reason: &str| entries.iter().filter(|e| e["reason"] == reason).count();
    assert_eq!(count("reserved_type"), n as usize, "{q}");
    assert_eq!(count("store_refused"), 1, "{q}");
    assert_eq!(count("unreadable"), 1, "{q}");
    assert_eq!(count("overflow"), 1, "{q}");
    let overflow = entries.iter().find(|e| e["reason"] == "overflow").unwrap();
    assert_eq!(overflow["id"], "whale-2", "{overflow}");
    assert!(
        overflow["error"]
            .as_str()
            .unwrap()
            .contains("lifetime value"),
        "{overflow}"
    );
    // A read key may not see the quarantine (it holds what clients sent).
    api.get("/v1/quarantine", &read)
        .await
        .is(403, Some("forbidden"));
    // The forged trigger file was never installed.
    let t = api.get("/v1/triggers", &admin).await;
    assert_eq!(t.is(200, None)["version"], Value::Null, "{}", t.body);
    // The first whale order counts, the second did not wrap the sum.
    let c = api.get("/v1/customers/whale", &read).await;
    assert_eq!(
        c.is(200, None)["stats"]["lifetime_value"]["amount"],
        9_000_000_000_000_000_000i64,
        "{}",
        c.body
    );
    // /readyz says degraded (200), and why.
    let r = api.get("/readyz", &read).await;
    assert_eq!(r.is(200, None)["status"], "degraded", "{}", r.body);
    assert!(r.body["quarantined"].as_u64().unwrap() >= u64::from(n) + 3);
    let metrics = metrics(&api.url).await;
    assert!(
        metrics.contains(
            "storeline_quarantine_records_total{origin=\"engine\",reason=\"overflow\"} 1"
        ),
        "{metrics}"
    );
    // Every partition still applies new events, and commands still answer.
    for p in 0..n {
        let who = subject_in(p, n, "alive");
        let r = api
            .post(
                "/v1/events",
                &admin,
                &json!({ "type": "page.viewed", "subject": who, "data": { "url": "/" } }),
            )
            .await;
        let e = &r.is(200, None)["events"][0];
        let cursor = format!("{}:{}", e["partition"], e["offset"]);
        api.get(&format!("/v1/customers/{who}?min_offset={cursor}"), &read)
            .await
            .is(200, None);
    }
    api.post(
        "/v1/commands/inventory.adjust",
        &admin,
        &json!({ "sku": "S", "delta": 5 }),
    )
    .await
    .is(200, None);
    // A replay quarantines the same records: the digests are equal.
    assert_eq!(server.terminate(), Some(0));
    let out = replay(dir.path(), backend);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("equal the live views"),
        "replay differs: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // After a restart the quarantine is still there; clearing it makes the server ready.
    let server = Server::start(dir.path(), backend);
    let api = Api::new(&server);
    let r = api.get("/readyz", &read).await;
    assert_eq!(r.is(200, None)["status"], "degraded", "{}", r.body);
    api.client
        .delete(format!("{}/v1/quarantine", api.url))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
        .eq(&403)
        .then_some(())
        .expect("a read key cannot clear the quarantine");
    let r = send(
        api.client
            .delete(format!("{}/v1/quarantine", api.url))
            .bearer_auth(&admin),
    )
    .await;
    r.is(200, None);
    api.until("/readyz", &read, |b| b["status"] == "ready")
        .await;
    let q = api.get("/v1/quarantine", &admin).await;
    assert_eq!(q.is(200, None)["entries"], json!([]), "{}", q.body);
}

#[tokio::test]
async fn a_segment_batch_keeps_its_good_messages_and_quarantines_the_bad_one() {
    let (_dir, server, [ingest, admin]) = serve(["ingest", "admin"], &[]);
    let api = Api::new(&server);
    // As RudderStack's and Segment's SDKs send it: 10 messages, one with a fractional quantity.
    let batch: Vec<Value> = (0..10)
        .map(|i| {
            let qty = if i == 4 { json!(0.5) } else { json!(1) };
            json!({ "type": "track", "messageId": format!("m-{i}"), "userId": format!("u-{i}"),
                    "event": "Product Added",
                    "properties": { "sku": "S-1", "quantity": qty, "price": 9.99 } })
        })
        .collect();
    let post_batch = async || {
        send(
            api.client
                .post(format!("{}/v1/batch", api.url))
                .basic_auth(&ingest, Some(""))
                .json(&json!({ "batch": batch })),
        )
        .await
    };
    let r = post_batch().await;
    let body = r.is(200, None);
    assert_eq!(body["accepted"], 9, "{body}");
    assert_eq!(body["rejected"][0]["index"], 4, "{body}");
    assert_eq!(
        body["rejected"][0]["errors"][0]["field"], "properties.quantity",
        "{body}"
    );
    let events = all_events(&api.url, &admin).await;
    let carts = events
        .iter()
        .filter(|e| e["type"] == "cart.item_added")
        .count();
    assert_eq!(carts, 9);
    let q = api
        .until("/v1/quarantine", &admin, |b| {
            b["entries"].as_array().is_some_and(|e| !e.is_empty())
        })
        .await;
    let e = &q["entries"][0];
    assert_eq!(
        (&e["origin"], &e["reason"], &e["id"]),
        (&json!("ingest"), &json!("invalid_message"), &json!("m-4")),
        "{e}"
    );
    assert_eq!(e["details"]["index"], 4, "{e}");
    assert!(e["raw"].as_str().unwrap().contains("0.5"), "{e}");
    // A retry of the same batch stores nothing twice.
    let r = post_batch().await;
    assert_eq!(r.is(200, None)["duplicates"], 9, "{}", r.body);
}

#[tokio::test]
async fn rudderstack_identify_traits_and_sessions_belong_to_the_person() {
    let (_dir, server, [ingest, read]) = serve(["ingest", "read"], &[]);
    let api = Api::new(&server);
    // RudderStack's identify: the traits are in context.traits.
    let r = send(
        api.client
            .post(format!("{}/v1/identify", api.url))
            .basic_auth(&ingest, Some(""))
            .json(&json!({ "type": "identify", "userId": "cus-77", "anonymousId": "anon-77",
                           "messageId": "id-1",
                           "context": { "traits": { "email": "Ann@Example.com", "plan": "gold" } } })),
    )
    .await;
    r.is(200, None);
    // Activity a few ms apart in three partitions: the anonymous cookie, the user, the order.
    let mut cursors = Vec::new();
    for ev in [
        json!({ "type": "page.viewed", "subject": "anon-77", "data": { "url": "/" } }),
        json!({ "type": "cart.item_added", "subject": "cus-77", "data": { "sku": "S", "quantity": 1 } }),
        json!({ "type": "order.placed", "subject": "cus-77", "data": { "order_id": "o-77",
                "total": { "amount": 100, "currency": "EUR" }, "lines": [ { "sku": "S", "quantity": 1 } ] } }),
    ] {
        let r = api.post("/v1/events", &ingest, &ev).await;
        let e = &r.is(200, None)["events"][0];
        cursors.push(format!("{}:{}", e["partition"], e["offset"]));
    }
    let c = api
        .get(
            &format!("/v1/customers/anon-77?min_offset={}", cursors.join(",")),
            &read,
        )
        .await;
    let c = c.is(200, None);
    assert_eq!(c["id"], "cus-77", "{c}");
    assert_eq!(c["traits"]["plan"], "gold", "{c}");
    assert_eq!(c["stats"]["sessions"], 1, "one visit, one session: {c}");
    let found = api.get("/v1/customers?email=ann@example.com", &read).await;
    assert_eq!(
        found.is(200, None)["customers"][0]["id"],
        "cus-77",
        "{}",
        found.body
    );
}

#[tokio::test]
async fn a_store_that_keeps_failing_is_retried_and_shown_not_ready_until_it_heals() {
    let pg = Postgres::schema("hostile_heal");
    let (_dir, server, [admin]) = serve(["admin"], &pg.env());
    let api = Api::new(&server);
    let schema = pg.name();
    // Every commit fails, as when the database refuses writes for a while.
    pg.psql(&format!(
        "CREATE FUNCTION {schema}.refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'the disk is on fire'; END $$ LANGUAGE plpgsql; \
         CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON {schema}.offsets FOR EACH ROW EXECUTE FUNCTION {schema}.refuse();"
    ));
    let r = api
        .post(
            "/v1/events",
            &admin,
            &json!({ "type": "page.viewed", "subject": "cus-heal", "data": { "url": "/" } }),
        )
        .await;
    r.is(200, None);
    let not_ready = api
        .until("/readyz", &admin, |b| b["status"] == "not_ready")
        .await;
    assert!(
        not_ready["problems"][0]
            .as_str()
            .unwrap()
            .contains("the disk is on fire"),
        "{not_ready}"
    );
    // Nothing was quarantined: the failure can heal, so it is retried.
    assert_eq!(not_ready["quarantined"], 0, "{not_ready}");
    pg.psql(&format!("DROP TRIGGER refuse ON {schema}.offsets;"));
    api.until("/readyz", &admin, |b| b["status"] == "ready")
        .await;
    api.until("/v1/customers/cus-heal", &admin, |b| b["id"] == "cus-heal")
        .await;
    let metrics = metrics(&api.url).await;
    assert!(
        metrics.contains("storeline_engine_retries_total"),
        "the retries are counted"
    );
}
