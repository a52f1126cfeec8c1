//! The live views and the commands, against the real binary over HTTP: stock per location and
//! order life cycle, all-or-nothing reservations, idempotent commands (also across a restart),
//! lapsing reservations, low-stock edges, Customer 360 merge/unmerge, and read-your-writes.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Postgres, Server, create_key, http};
use serde_json::{Value, json};

/// A fresh schema in the machine's PostgreSQL (database `test`), dropped at the end.
struct Env {
    _dir: tempfile::TempDir,
    server: Server,
    key: String,
}

/// A response: status, JSON body (Null if none), and the `idempotent-replayed` header.
struct Resp {
    status: u16,
    body: Value,
    replayed_header: Option<String>,
}

impl Resp {
    #[track_caller]
    fn ok(&self) -> &Value {
        assert_eq!(
            self.status, 200,
            "expected 200, got {}: {}",
            self.status, self.body
        );
        &self.body
    }

    #[track_caller]
    fn err(&self, status: u16, code: &str) -> &Value {
        assert_eq!(
            (self.status, self.body["error"]["code"].as_str()),
            (status, Some(code)),
            "{}",
            self.body
        );
        &self.body["error"]
    }

    /// The commerce partition's offset of a command's response.
    #[track_caller]
    fn offset(&self) -> u64 {
        self.ok()["offset"]
            .as_u64()
            .unwrap_or_else(|| panic!("no offset in {}", self.body))
    }

    #[track_caller]
    fn cursor(&self) -> String {
        self.ok()["cursor"].as_str().unwrap().to_owned()
    }

    /// The `type`s of a command's events, in order.
    fn types(&self) -> Vec<String> {
        self.body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect()
    }
}

async fn into_resp(r: reqwest::Response) -> Resp {
    let status = r.status().as_u16();
    let replayed_header = r
        .headers()
        .get("idempotent-replayed")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = r.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Resp {
        status,
        body,
        replayed_header,
    }
}

impl Env {
    fn start(env: &[(&str, &str)]) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let key = create_key(dir.path(), "admin");
        let server = Server::start(dir.path(), env);
        Env {
            _dir: dir,
            server,
            key,
        }
    }

    /// Stops the server gracefully and starts it again on the same data directory.
    fn restart(&mut self, env: &[(&str, &str)]) {
        assert_eq!(
            self.server.terminate(),
            Some(0),
            "graceful shutdown exits 0"
        );
        self.server = Server::start(&self.server.data.clone(), env);
    }

    async fn cmd_with(&self, name: &str, key: Option<&str>, body: &Value) -> Resp {
        let mut req = http()
            .post(format!("{}/v1/commands/{name}", self.server.url))
            .bearer_auth(&self.key)
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        into_resp(req.send().await.unwrap()).await
    }

    async fn cmd(&self, name: &str, body: Value) -> Resp {
        self.cmd_with(name, None, &body).await
    }

    /// A command that must succeed.
    async fn run(&self, name: &str, body: Value) -> Resp {
        let r = self.cmd(name, body).await;
        r.ok();
        r
    }

    async fn get(&self, path: &str) -> Resp {
        let r = http()
            .get(format!("{}{path}", self.server.url))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap();
        into_resp(r).await
    }

    /// A read that must succeed.
    async fn read(&self, path: &str) -> Value {
        let r = self.get(path).await;
        r.ok();
        r.body
    }

    async fn post(&self, path: &str, body: &Value) -> Resp {
        let r = http()
            .post(format!("{}{path}", self.server.url))
            .bearer_auth(&self.key)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        into_resp(r).await
    }

    /// Ingests events; returns the acks as a `p:o,…` cursor for `?min_offset=`.
    async fn ingest(&self, events: Value) -> String {
        let r = self.post("/v1/events", &events).await;
        let acks = r.ok()["events"].as_array().unwrap();
        assert!(!acks.is_empty());
        acks.iter()
            .map(|a| format!("{}:{}", a["partition"], a["offset"]))
            .collect::<Vec<_>>()
            .join(",")
    }

    async fn inventory(&self, sku: &str, min_offset: impl std::fmt::Display) -> Value {
        let inv = self
            .read(&format!("/v1/inventory/{sku}?min_offset={min_offset}"))
            .await;
        check_stock_sums(&inv);
        inv
    }

    async fn order(&self, id: &str, min_offset: impl std::fmt::Display) -> Value {
        self.read(&format!("/v1/orders/{id}?min_offset={min_offset}"))
            .await
    }

    /// `GET /v1/engine`'s entry for the commerce partition.
    async fn commerce_status(&self) -> Value {
        let e = self.read("/v1/engine").await;
        let p = e["commerce_partition"].as_u64().unwrap() as usize;
        e["partitions"][p].clone()
    }

    /// Events of `types` (comma-separated) about `subject`, up to 1000.
    async fn events(&self, types: &str, subject: &str) -> Vec<Value> {
        let page = self
            .read(&format!(
                "/v1/events?type={types}&subject={subject}&limit=1000"
            ))
            .await;
        page["events"].as_array().unwrap().clone()
    }
}

/// Polls `f` until it returns `Some`, for up to 10 s.
async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `(on_hand, reserved, available)` of the whole SKU.
fn totals(inv: &Value) -> (i64, i64, i64) {
    (
        inv["on_hand"].as_i64().unwrap(),
        inv["reserved"].as_i64().unwrap(),
        inv["available"].as_i64().unwrap(),
    )
}

/// `(on_hand, reserved, available)` at one location; (0, 0, 0) if the location is not listed.
fn at(inv: &Value, location: &str) -> (i64, i64, i64) {
    inv["locations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["location"] == location)
        .map_or((0, 0, 0), totals)
}

/// Per location and in total: reserved + available = on hand; totals are the locations' sums.
#[track_caller]
fn check_stock_sums(inv: &Value) {
    let mut sum = (0, 0, 0);
    for l in inv["locations"].as_array().unwrap() {
        let (h, r, a) = totals(l);
        assert_eq!(
            r + a,
            h,
            "reserved + available != on_hand at a location: {inv}"
        );
        sum = (sum.0 + h, sum.1 + r, sum.2 + a);
    }
    let (h, r, a) = totals(inv);
    assert_eq!(r + a, h, "reserved + available != on_hand: {inv}");
    assert_eq!(
        (h, r, a),
        sum,
        "totals are not the sum of the locations: {inv}"
    );
}

/// `(sku, location, quantity)` of a command's stock events of type `ty`.
fn stock_moves(r: &Resp, ty: &str) -> Vec<(String, String, i64)> {
    let mut v: Vec<_> = r.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == ty)
        .map(|e| {
            (
                e["data"]["sku"].as_str().unwrap().to_owned(),
                e["data"]["location"].as_str().unwrap().to_owned(),
                e["data"]["quantity"].as_i64().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn moves(m: &[(&str, &str, i64)]) -> Vec<(String, String, i64)> {
    let mut v: Vec<_> = m
        .iter()
        .map(|(s, l, q)| ((*s).to_owned(), (*l).to_owned(), *q))
        .collect();
    v.sort();
    v
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn order_lifecycle_and_stock() {
    order_lifecycle_and_stock_on(&[]).await;
}

/// The same on the PostgreSQL state store (the cluster mode's).
#[tokio::test(flavor = "multi_thread")]
async fn order_lifecycle_and_stock_on_postgres() {
    let pg = Postgres::schema("order_lifecycle_and_");
    order_lifecycle_and_stock_on(&pg.env()).await;
}

async fn order_lifecycle_and_stock_on(backend: &[(&str, &str)]) {
    let env = Env::start(backend);
    env.run(
        "inventory.adjust",
        json!({"sku": "SKU-A", "location": "north", "delta": 3, "reason": "restock"}),
    )
    .await;
    env.run(
        "inventory.adjust",
        json!({"sku": "SKU-A", "location": "south", "set": 4}),
    )
    .await;
    let r = env
        .run("inventory.adjust", json!({"sku": "SKU-B", "delta": 2}))
        .await;
    let inv = env.inventory("SKU-A", r.offset()).await;
    assert_eq!(totals(&inv), (7, 0, 7));
    assert_eq!(at(&inv, "north"), (3, 0, 3));
    assert_eq!(at(&inv, "south"), (4, 0, 4));
    assert_eq!(
        at(&env.inventory("SKU-B", r.offset()).await, "main"),
        (2, 0, 2),
        "no location means the default one"
    );

    // 6 of SKU-A fit in no single location: south gives its 4, north the other 2.
    let place = json!({"order_id": "ord-1", "customer_id": "cus-1", "currency": "EUR",
        "lines": [{"sku": "SKU-A", "quantity": 6, "unit_price": 1000},
                  {"sku": "SKU-B", "quantity": 1, "unit_price": 500}]});
    let r = env.run("order.place", place.clone()).await;
    assert_eq!(r.types()[0], "order.placed");
    assert_eq!(
        stock_moves(&r, "inventory.reserved"),
        moves(&[
            ("SKU-A", "south", 4),
            ("SKU-A", "north", 2),
            ("SKU-B", "main", 1)
        ])
    );
    assert_eq!(r.types().len(), 4, "{}", r.body);
    let max = r.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["offset"].as_u64())
        .max();
    assert_eq!(Some(r.offset()), max, "offset is the command's last event");
    let inv = env.inventory("SKU-A", r.offset()).await;
    assert_eq!(totals(&inv), (7, 6, 1));
    assert_eq!(at(&inv, "north"), (3, 2, 1));
    assert_eq!(at(&inv, "south"), (4, 4, 0));
    assert_eq!(totals(&env.inventory("SKU-B", r.offset()).await), (2, 1, 1));
    let o = env.order("ord-1", r.offset()).await;
    assert_eq!(o["status"], "placed");
    assert_eq!(o["customer_id"], "cus-1");
    assert_eq!(o["total"], json!({"amount": 6500, "currency": "EUR"}));
    assert_eq!(o["lines"].as_array().unwrap().len(), 2);

    // Wrong moves are refused with the current state, and change nothing.
    let e = env.cmd("order.ship", json!({"order_id": "ord-1"})).await;
    let e = e.err(409, "invalid_transition");
    assert_eq!(e["details"]["current"], "placed");
    assert_eq!(e["details"]["command"], "order.ship");
    env.cmd("order.refund", json!({"order_id": "ord-1"}))
        .await
        .err(409, "invalid_transition");
    env.cmd("order.place", place.clone())
        .await
        .err(409, "order_exists");
    env.cmd("order.pay", json!({"order_id": "ord-nope"}))
        .await
        .err(404, "order_not_found");
    env.cmd("order.explode", json!({"order_id": "ord-1"}))
        .await
        .err(404, "unknown_command");
    let e = env.cmd("inventory.adjust", json!({"sku": "SKU-A"})).await;
    assert_eq!(e.err(400, "invalid_command")["details"]["field"], "delta");
    env.cmd("order.pay", json!({"order_id": "ord-1", "bogus": 1}))
        .await
        .err(400, "invalid_command");

    let r = env
        .run(
            "order.pay",
            json!({"order_id": "ord-1", "payment_id": "pay-1"}),
        )
        .await;
    assert_eq!(r.types(), ["order.paid"]);
    assert_eq!(r.body["events"][0]["data"]["amount"]["amount"], 6500);
    let o = env.order("ord-1", r.offset()).await;
    assert_eq!(
        (o["status"].as_str(), o["paid"]["amount"].as_i64()),
        (Some("paid"), Some(6500))
    );
    assert_eq!(
        totals(&env.inventory("SKU-A", r.offset()).await),
        (7, 6, 1),
        "paying moves no stock"
    );

    env.run("order.fulfill", json!({"order_id": "ord-1"})).await;
    let r = env
        .run(
            "order.ship",
            json!({"order_id": "ord-1", "carrier": "DHL", "tracking_number": "T1"}),
        )
        .await;
    assert_eq!(r.types()[0], "order.shipped");
    assert_eq!(
        stock_moves(&r, "inventory.committed"),
        moves(&[
            ("SKU-A", "south", 4),
            ("SKU-A", "north", 2),
            ("SKU-B", "main", 1)
        ]),
        "shipping commits exactly what was reserved"
    );
    let inv = env.inventory("SKU-A", r.offset()).await;
    assert_eq!(
        totals(&inv),
        (1, 0, 1),
        "shipped stock leaves on hand: {inv}"
    );
    assert_eq!(at(&inv, "north"), (1, 0, 1));
    assert_eq!(at(&inv, "south"), (0, 0, 0));
    assert_eq!(totals(&env.inventory("SKU-B", r.offset()).await), (1, 0, 1));

    env.run("order.deliver", json!({"order_id": "ord-1"})).await;
    let e = env.cmd("order.deliver", json!({"order_id": "ord-1"})).await;
    assert_eq!(
        e.err(409, "invalid_transition")["details"]["current"],
        "delivered"
    );
    // A return cannot bring back more than was ordered.
    let e = env
        .cmd(
            "return.receive",
            json!({"order_id": "ord-1", "lines": [{"sku": "SKU-A", "quantity": 7}]}),
        )
        .await;
    assert_eq!(
        e.err(400, "invalid_command")["details"]["field"],
        "lines[0].quantity"
    );
    let r = env
        .run(
            "return.receive",
            json!({"order_id": "ord-1", "lines": [{"sku": "SKU-A", "quantity": 2}], "location": "north"}),
        )
        .await;
    assert_eq!(r.types(), ["return.received"]);
    let inv = env.inventory("SKU-A", r.offset()).await;
    assert_eq!(
        at(&inv, "north"),
        (3, 0, 3),
        "the return restocks where it was received"
    );
    assert_eq!(totals(&inv), (3, 0, 3));

    let r = env
        .run(
            "order.refund",
            json!({"order_id": "ord-1", "reason": "damaged"}),
        )
        .await;
    assert_eq!(
        r.body["events"][0]["data"]["amount"]["amount"], 6500,
        "default: all that is left"
    );
    let o = env.order("ord-1", r.offset()).await;
    assert_eq!(o["status"], "refunded");
    assert_eq!(o["refunded"]["amount"], 6500);
    let tl = o["timeline"].as_array().unwrap();
    let statuses: Vec<&str> = tl.iter().map(|s| s["status"].as_str().unwrap()).collect();
    assert_eq!(
        statuses,
        [
            "placed",
            "paid",
            "fulfilled",
            "shipped",
            "delivered",
            "returned",
            "refunded"
        ]
    );
    let types: Vec<&str> = tl.iter().map(|s| s["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "order.placed",
            "order.paid",
            "order.fulfilled",
            "order.shipped",
            "order.delivered",
            "return.received",
            "order.refunded"
        ]
    );
    assert!(
        tl.windows(2)
            .all(|w| w[0]["offset"].as_u64() < w[1]["offset"].as_u64()),
        "the timeline is in log order: {o}"
    );

    // Cancelling a placed order gives its stock back; a cancelled order goes nowhere.
    let r = env
        .run(
            "order.place",
            json!({"order_id": "ord-2", "customer_id": "cus-1", "currency": "EUR",
                   "lines": [{"sku": "SKU-A", "quantity": 2, "unit_price": 1000}]}),
        )
        .await;
    assert_eq!(
        stock_moves(&r, "inventory.reserved"),
        moves(&[("SKU-A", "north", 2)])
    );
    assert_eq!(totals(&env.inventory("SKU-A", r.offset()).await), (3, 2, 1));
    let r = env
        .run(
            "order.cancel",
            json!({"order_id": "ord-2", "reason": "changed mind"}),
        )
        .await;
    assert_eq!(r.types()[0], "order.cancelled");
    assert_eq!(
        stock_moves(&r, "inventory.released"),
        moves(&[("SKU-A", "north", 2)])
    );
    let inv = env.inventory("SKU-A", r.offset()).await;
    assert_eq!(totals(&inv), (3, 0, 3));
    assert_eq!(at(&inv, "north"), (3, 0, 3));
    for (cmd, current) in [
        ("order.deliver", "cancelled"),
        ("order.pay", "cancelled"),
        ("order.cancel", "cancelled"),
    ] {
        let e = env.cmd(cmd, json!({"order_id": "ord-2"})).await;
        assert_eq!(
            e.err(409, "invalid_transition")["details"]["current"],
            current,
            "{cmd}"
        );
    }
    let o = env.order("ord-2", r.offset()).await;
    assert_eq!(o["status"], "cancelled");
    assert_eq!(
        o["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["type"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["order.placed", "order.cancelled"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn insufficient_stock_rejects_the_whole_order() {
    let env = Env::start(&[]);
    env.run("inventory.adjust", json!({"sku": "SKU-B", "delta": 5}))
        .await;
    env.run(
        "inventory.adjust",
        json!({"sku": "SKU-C", "location": "north", "delta": 1}),
    )
    .await;
    let r = env
        .run(
            "inventory.adjust",
            json!({"sku": "SKU-C", "location": "south", "delta": 1}),
        )
        .await;
    let before = env.commerce_status().await;

    let e = env
        .cmd(
            "order.place",
            json!({"order_id": "ord-x", "customer_id": "cus-1", "currency": "EUR",
                   "lines": [{"sku": "SKU-B", "quantity": 2, "unit_price": 100},
                             {"sku": "SKU-C", "quantity": 3, "unit_price": 100}]}),
        )
        .await;
    let e = e.err(409, "insufficient_stock");
    assert_eq!(
        e["details"]["lines"],
        json!([{"sku": "SKU-C", "requested": 3, "available": 2}]),
        "only the short line, with what all locations have together"
    );
    // Nothing was reserved, stored or created.
    assert_eq!(totals(&env.inventory("SKU-B", r.offset()).await), (5, 0, 5));
    assert_eq!(totals(&env.inventory("SKU-C", r.offset()).await), (2, 0, 2));
    env.get("/v1/orders/ord-x")
        .await
        .err(404, "order_not_found");
    assert_eq!(env.commerce_status().await["log_end"], before["log_end"]);

    // Two lines of one SKU count against each other; a named location counts alone.
    let e = env
        .cmd(
            "order.place",
            json!({"order_id": "ord-y", "customer_id": "cus-1", "currency": "EUR",
                   "lines": [{"sku": "SKU-B", "quantity": 3, "unit_price": 100},
                             {"sku": "SKU-B", "quantity": 3, "unit_price": 100},
                             {"sku": "SKU-C", "quantity": 2, "unit_price": 100, "location": "north"},
                             {"sku": "SKU-NONE", "quantity": 1, "unit_price": 100}]}),
        )
        .await;
    let lines = &e.err(409, "insufficient_stock")["details"]["lines"];
    assert_eq!(
        *lines,
        json!([{"sku": "SKU-B", "requested": 3, "available": 2},
               {"sku": "SKU-C", "location": "north", "requested": 2, "available": 1},
               {"sku": "SKU-NONE", "requested": 1, "available": 0}])
    );
    assert_eq!(totals(&env.inventory("SKU-B", r.offset()).await), (5, 0, 5));
    assert_eq!(env.commerce_status().await["log_end"], before["log_end"]);

    // With enough stock the same order goes through, and takes exactly what it asked for.
    let r = env
        .run(
            "order.place",
            json!({"order_id": "ord-x", "customer_id": "cus-1", "currency": "EUR",
                   "lines": [{"sku": "SKU-B", "quantity": 2, "unit_price": 100},
                             {"sku": "SKU-C", "quantity": 2, "unit_price": 100}]}),
        )
        .await;
    assert_eq!(totals(&env.inventory("SKU-B", r.offset()).await), (5, 2, 3));
    assert_eq!(totals(&env.inventory("SKU-C", r.offset()).await), (2, 2, 0));
    let e = env
        .cmd(
            "order.place",
            json!({"order_id": "ord-z", "customer_id": "cus-2", "currency": "EUR",
                   "lines": [{"sku": "SKU-C", "quantity": 1, "unit_price": 100}]}),
        )
        .await;
    assert_eq!(
        e.err(409, "insufficient_stock")["details"]["lines"],
        json!([{"sku": "SKU-C", "requested": 1, "available": 0}]),
        "reserved stock is not available to the next order"
    );
}

/// `(id, type, partition, offset)` of a command's events.
fn positions(r: &Resp) -> Vec<(String, String, u64, u64)> {
    r.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_owned(),
                e["type"].as_str().unwrap().to_owned(),
                e["partition"].as_u64().unwrap(),
                e["offset"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotency() {
    idempotency_on(&[]).await;
}

/// The same on the PostgreSQL state store (the cluster mode's).
#[tokio::test(flavor = "multi_thread")]
async fn idempotency_on_postgres() {
    let pg = Postgres::schema("idempotency");
    idempotency_on(&pg.env()).await;
}

async fn idempotency_on(backend: &[(&str, &str)]) {
    let mut env = Env::start(backend);
    env.run("inventory.adjust", json!({"sku": "SKU-I", "set": 10}))
        .await;
    let place = json!({"order_id": "ord-i", "customer_id": "cus-i", "currency": "EUR",
                       "lines": [{"sku": "SKU-I", "quantity": 2, "unit_price": 700}]});
    let first = env.cmd_with("order.place", Some("k-place-1"), &place).await;
    first.ok();
    assert_eq!(first.body["replayed"], false);
    assert_eq!(first.replayed_header, None);
    assert_eq!(positions(&first).len(), 2);
    let inv = env.inventory("SKU-I", first.offset()).await;
    assert_eq!(totals(&inv), (10, 2, 8));
    let end = env.commerce_status().await["log_end"].clone();

    let check_replay = |r: &Resp, what: &str| {
        r.ok();
        assert_eq!(r.body["replayed"], true, "{what}: {}", r.body);
        assert_eq!(r.replayed_header.as_deref(), Some("true"), "{what}");
        assert_eq!(
            positions(r),
            positions(&first),
            "{what}: the same events at the same offsets"
        );
        assert_eq!(r.body["offset"], first.body["offset"], "{what}");
        assert_eq!(r.body["cursor"], first.body["cursor"], "{what}");
        for (a, b) in r.body["events"]
            .as_array()
            .unwrap()
            .iter()
            .zip(first.body["events"].as_array().unwrap())
        {
            assert_eq!(a["data"], b["data"], "{what}");
        }
    };
    let again = env.cmd_with("order.place", Some("k-place-1"), &place).await;
    check_replay(&again, "repeat");
    assert_eq!(
        env.commerce_status().await["log_end"],
        end,
        "nothing appended twice"
    );
    assert_eq!(
        totals(&env.inventory("SKU-I", first.offset()).await),
        (10, 2, 8)
    );

    let mut changed = place.clone();
    changed["lines"][0]["quantity"] = json!(3);
    let e = env
        .cmd_with("order.place", Some("k-place-1"), &changed)
        .await;
    assert_eq!(
        e.err(422, "idempotency_key_reused")["details"]["key"],
        "k-place-1"
    );
    env.cmd_with(
        "order.pay",
        Some("k-place-1"),
        &json!({"order_id": "ord-i"}),
    )
    .await
    .err(422, "idempotency_key_reused");
    // Without the key the same body is a new request: refused, the order exists.
    env.cmd("order.place", place.clone())
        .await
        .err(409, "order_exists");

    let adj = json!({"sku": "SKU-I", "delta": 5, "reason": "restock"});
    let a1 = env
        .cmd_with("inventory.adjust", Some("k-adj-1"), &adj)
        .await;
    let a2 = env
        .cmd_with("inventory.adjust", Some("k-adj-1"), &adj)
        .await;
    assert_eq!(a2.body["replayed"], true, "{}", a2.body);
    assert_eq!(positions(&a2), positions(&a1));
    assert_eq!(
        totals(&env.inventory("SKU-I", a1.offset()).await),
        (15, 2, 13),
        "applied once"
    );
    let end = env.commerce_status().await["log_end"].clone();

    // After a restart the stored result (derived from the log) still answers.
    env.restart(backend);
    let after = env.cmd_with("order.place", Some("k-place-1"), &place).await;
    check_replay(&after, "after a restart");
    let e = env
        .cmd_with("order.place", Some("k-place-1"), &changed)
        .await;
    e.err(422, "idempotency_key_reused");
    let a3 = env
        .cmd_with("inventory.adjust", Some("k-adj-1"), &adj)
        .await;
    assert_eq!(a3.body["replayed"], true, "{}", a3.body);
    assert_eq!(a3.replayed_header.as_deref(), Some("true"));
    assert_eq!(positions(&a3), positions(&a1));
    let inv = env.inventory("SKU-I", a1.offset()).await;
    assert_eq!(
        totals(&inv),
        (15, 2, 13),
        "nothing applied twice across the restart: {inv}"
    );
    assert_eq!(env.commerce_status().await["log_end"], end);
    // A new key is a new command.
    let a4 = env
        .cmd_with("inventory.adjust", Some("k-adj-2"), &adj)
        .await;
    assert_eq!(a4.body["replayed"], false);
    assert!(a4.offset() > a1.offset());
    assert_eq!(
        totals(&env.inventory("SKU-I", a4.offset()).await),
        (20, 2, 18)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reservations_expire() {
    let ttl = [("STORELINE_ENGINE__RESERVATION_TTL", "1s")];
    let mut env = Env::start(&ttl);
    env.run("inventory.adjust", json!({"sku": "SKU-T", "set": 10}))
        .await;
    let line = json!([{"sku": "SKU-T", "quantity": 2, "unit_price": 100}]);
    let unpaid = env
        .run("order.place", json!({"order_id": "ord-unpaid", "customer_id": "c1", "currency": "EUR", "lines": line}))
        .await;
    // The paid order holds longer (2 s), so that a slow machine cannot lapse it before the payment.
    let paid = env
        .run(
            "order.place",
            json!({"order_id": "ord-paid", "customer_id": "c2", "currency": "EUR", "lines": line,
                   "reservation_ttl": "2s"}),
        )
        .await;
    let paid_placed = Instant::now();
    let expires: Vec<&str> = [&unpaid, &paid]
        .iter()
        .map(|r| r.body["events"][1]["data"]["expires_at"].as_str().unwrap())
        .collect();
    assert!(expires.iter().all(|e| !e.is_empty()), "{expires:?}");
    let pay = env.run("order.pay", json!({"order_id": "ord-paid"})).await;
    assert_eq!(
        totals(&env.inventory("SKU-T", pay.offset()).await),
        (10, 4, 6)
    );
    let started = Instant::now();

    let inv = eventually("the unpaid hold lapses", async || {
        let inv = env.inventory("SKU-T", 0).await;
        let o = env.order("ord-unpaid", 0).await;
        (inv["reserved"] == 2 && o["status"] == "cancelled").then_some(inv)
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(totals(&inv), (10, 2, 8));
    let o = env.order("ord-unpaid", 0).await;
    assert_eq!(o["status"], "cancelled", "{o}");
    let cancelled = env.events("order.cancelled", "c1").await;
    assert_eq!(cancelled.len(), 1);
    assert_eq!(cancelled[0]["data"]["reason"], "reservation expired");
    // Well past its TTL, the paid order still holds its stock.
    let past = paid_placed + Duration::from_millis(3000);
    tokio::time::sleep(past.saturating_duration_since(Instant::now())).await;
    assert_eq!(totals(&env.inventory("SKU-T", 0).await), (10, 2, 8));
    assert_eq!(env.order("ord-paid", 0).await["status"], "paid");
    assert_eq!(
        env.events("order.cancelled", "c1").await.len(),
        1,
        "lapsed once"
    );
    assert!(env.events("order.cancelled", "c2").await.is_empty());

    // A hold set by the command itself lapses too, even across a restart.
    let r = env
        .run(
            "order.place",
            json!({"order_id": "ord-restart", "customer_id": "c3", "currency": "EUR", "lines": line,
                   "reservation_ttl": "2s"}),
        )
        .await;
    assert_eq!(
        totals(&env.inventory("SKU-T", r.offset()).await),
        (10, 4, 6)
    );
    env.restart(&ttl);
    eventually("the hold lapses after a restart", async || {
        let o = env.order("ord-restart", 0).await;
        (o["status"] == "cancelled").then_some(())
    })
    .await;
    let inv = env.inventory("SKU-T", 0).await;
    assert_eq!(totals(&inv), (10, 2, 8), "{inv}");
    // An expired order cannot be paid any more.
    let e = env
        .cmd("order.pay", json!({"order_id": "ord-unpaid"}))
        .await;
    assert_eq!(
        e.err(409, "invalid_transition")["details"]["current"],
        "cancelled"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn low_stock_events() {
    let env = Env::start(&[("STORELINE_INVENTORY__LOW_STOCK_THRESHOLD", "3")]);
    // SKU-L has its own threshold of 2.
    let first = env
        .run(
            "inventory.adjust",
            json!({"sku": "SKU-L", "set": 5, "low_stock_threshold": 2}),
        )
        .await;
    let inv = env.inventory("SKU-L", first.offset()).await;
    assert_eq!(inv["low_stock_threshold"], 2);
    // What the first stocking itself caused is stored by now (before its batch committed);
    // count only what the moves below cause.
    let since = env.commerce_status().await["log_end"].as_u64().unwrap() - 1;
    // 5 → 3 available (reserved by an order): above the threshold, nothing.
    env.run(
        "order.place",
        json!({"order_id": "ord-l", "customer_id": "c", "currency": "EUR",
               "lines": [{"sku": "SKU-L", "quantity": 2, "unit_price": 100}]}),
    )
    .await;
    // 3 → 2: the crossing. 2 → 0: no second alert.
    env.run("inventory.adjust", json!({"sku": "SKU-L", "delta": -1}))
        .await;
    env.run("inventory.adjust", json!({"sku": "SKU-L", "delta": -2}))
        .await;
    let r = env
        .run("inventory.adjust", json!({"sku": "SKU-L", "delta": 0}))
        .await;
    assert_eq!(totals(&env.inventory("SKU-L", r.offset()).await), (2, 2, 0));
    // 0 → 4: back in stock (and above the threshold: no alert).
    let r = env
        .run("inventory.adjust", json!({"sku": "SKU-L", "delta": 4}))
        .await;
    assert_eq!(totals(&env.inventory("SKU-L", r.offset()).await), (6, 2, 4));
    let after = |evs: Vec<Value>| -> Vec<Value> {
        evs.into_iter()
            .filter(|e| e["offset"].as_u64().unwrap() > since)
            .collect()
    };
    let edges = eventually("the low-stock edges are stored", async || {
        let evs = after(
            env.events("inventory.low,inventory.back_in_stock", "SKU-L")
                .await,
        );
        (evs.len() >= 2).then_some(evs)
    })
    .await;
    let types: Vec<&str> = edges.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["inventory.low", "inventory.back_in_stock"],
        "{edges:?}"
    );
    assert_eq!(
        edges[0]["data"],
        json!({"sku": "SKU-L", "available": 2, "threshold": 2})
    );
    assert_eq!(
        edges[1]["data"],
        json!({"sku": "SKU-L", "available": 4, "threshold": 2})
    );
    assert_eq!(edges[0]["source"], "storeline/engine");

    // The configured default applies to a SKU without its own threshold.
    let r = env
        .run("inventory.adjust", json!({"sku": "SKU-E", "set": 10}))
        .await;
    let since_e = r.offset();
    env.run("inventory.adjust", json!({"sku": "SKU-E", "delta": -6}))
        .await;
    let r = env
        .run("inventory.adjust", json!({"sku": "SKU-E", "delta": -1}))
        .await;
    let inv = env.inventory("SKU-E", r.offset()).await;
    assert_eq!(
        (
            inv["available"].as_i64(),
            inv["low_stock_threshold"].as_i64()
        ),
        (Some(3), Some(3))
    );
    let low = eventually("SKU-E's low-stock alert", async || {
        let evs: Vec<Value> = env
            .events("inventory.*", "SKU-E")
            .await
            .into_iter()
            .filter(|e| e["type"] == "inventory.low" && e["offset"].as_u64().unwrap() > since_e)
            .collect();
        (!evs.is_empty()).then_some(evs)
    })
    .await;
    assert_eq!(low.len(), 1, "{low:?}");
    assert_eq!(
        low[0]["data"],
        json!({"sku": "SKU-E", "available": 3, "threshold": 3})
    );
    // Nothing more appears later (the edges are emitted once, not on every batch).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        after(
            env.events("inventory.low,inventory.back_in_stock", "SKU-L")
                .await
        )
        .len(),
        2
    );
}

fn browsing(anon: &str) -> Value {
    json!([
        {"id": "b1", "source": "web", "type": "page.viewed", "subject": anon,
         "data": {"url": "https://shop.example/"}},
        {"id": "b2", "source": "web", "type": "page.viewed", "subject": anon,
         "data": {"url": "https://shop.example/shoes"}},
        {"id": "b3", "source": "web", "type": "product.viewed", "subject": anon,
         "data": {"product_id": "P-1", "sku": "SKU-SHOE", "category": "shoes"}},
        {"id": "b4", "source": "web", "type": "cart.item_added", "subject": anon,
         "data": {"sku": "SKU-SHOE", "quantity": 2, "unit_price": {"amount": 4500, "currency": "EUR"}}},
    ])
}

fn identified(id: &str, user: &str, anon: &str) -> Value {
    json!([{"id": id, "source": "web", "type": "customer.identified", "subject": user,
            "data": {"user_id": user, "anonymous_id": anon, "email": "Ada@Example.com",
                     "traits": {"plan": "Gold", "name": "Ada"}}}])
}

/// A profile with its merge history sorted (its order follows the identity asked for).
fn normalised(mut p: Value) -> Value {
    let mut merges = p["merges"].as_array().unwrap().clone();
    merges.sort_by_key(Value::to_string);
    p["merges"] = Value::Array(merges);
    p
}

fn merge_of<'a>(p: &'a Value, a: &str, b: &str) -> Vec<&'a Value> {
    p["merges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| {
            let ids = strs(&m["identities"]);
            ids.contains(&a) && ids.contains(&b)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn customer_360_merge_and_unmerge_round_trip() {
    customer_360_merge_and_unmerge_round_trip_on(&[]).await;
}

/// The same on the PostgreSQL state store (the cluster mode's).
#[tokio::test(flavor = "multi_thread")]
async fn customer_360_merge_and_unmerge_round_trip_on_postgres() {
    let pg = Postgres::schema("customer_360_merge_a");
    customer_360_merge_and_unmerge_round_trip_on(&pg.env()).await;
}

async fn customer_360_merge_and_unmerge_round_trip_on(backend: &[(&str, &str)]) {
    let env = Env::start(backend);
    let (anon, user, email) = ("anon-7f3", "user-42", "ada@example.com");
    let c = env.ingest(browsing(anon)).await;
    let p = env
        .read(&format!("/v1/customers/{anon}?min_offset={c}"))
        .await;
    assert_eq!(p["id"], anon);
    assert_eq!(
        (
            p["stats"]["page_views"].as_u64(),
            p["stats"]["product_views"].as_u64()
        ),
        (Some(2), Some(1))
    );

    let c1 = env.ingest(identified("i1", user, anon)).await;
    let consent = env
        .run(
            "customer.update_consent",
            json!({"customer_id": user, "channel": "email", "granted": true, "source": "checkout"}),
        )
        .await;
    let c = format!("{c1},{}", consent.cursor());
    let by_anon = env
        .read(&format!("/v1/customers/{anon}?min_offset={c}"))
        .await;
    let by_user = env
        .read(&format!("/v1/customers/{user}?min_offset={c}"))
        .await;
    let by_email = env
        .read(&format!("/v1/customers/{email}?min_offset={c}"))
        .await;
    let by_upper = env.read("/v1/customers/ADA@example.COM").await;
    let by_user = normalised(by_user);
    assert_eq!(
        normalised(by_anon),
        by_user,
        "one profile whatever identity is asked"
    );
    assert_eq!(normalised(by_email), by_user);
    assert_eq!(by_upper["id"], user, "e-mail lookup ignores case");
    let p = &by_user;
    assert_eq!(p["id"], user);
    assert_eq!(
        strs(&p["identities"]["all"]),
        [anon, "email:ada@example.com", user]
    );
    assert_eq!(strs(&p["identities"]["user_ids"]), [user]);
    assert_eq!(strs(&p["identities"]["anonymous_ids"]), [anon]);
    assert_eq!(strs(&p["identities"]["emails"]), [email]);
    assert_eq!(p["stats"]["page_views"], 2);
    assert_eq!(p["stats"]["product_views"], 1);
    assert_eq!(strs(&p["stats"]["favourite_categories"]), ["shoes"]);
    assert_eq!(
        p["cart"]["items"],
        json!([{"sku": "SKU-SHOE", "quantity": 2, "unit_price": {"amount": 4500, "currency": "EUR"}}])
    );
    assert_eq!(
        p["cart"]["value"],
        json!({"amount": 9000, "currency": "EUR"})
    );
    assert_eq!(p["consent"]["email"], true);
    assert_eq!(p["consent_details"]["email"]["source"], "checkout");
    assert_eq!(p["traits"]["plan"], "Gold");
    assert_eq!(p["traits"]["email"], "Ada@Example.com");
    assert_eq!(merge_of(p, anon, user).len(), 1, "{p}");

    // The anonymous visitor buys as the user.
    env.run("inventory.adjust", json!({"sku": "SKU-SHOE", "set": 10}))
        .await;
    env.run(
        "order.place",
        json!({"order_id": "ord-ada", "customer_id": user, "currency": "EUR", "email": email,
               "lines": [{"sku": "SKU-SHOE", "quantity": 2, "unit_price": 4500, "category": "shoes"}]}),
    )
    .await;
    let paid = env.run("order.pay", json!({"order_id": "ord-ada"})).await;
    let p = env
        .read(&format!(
            "/v1/customers/{anon}?min_offset={}",
            paid.offset()
        ))
        .await;
    assert_eq!(p["id"], user);
    assert_eq!(p["stats"]["orders"], 1);
    assert_eq!(
        p["stats"]["lifetime_value"],
        json!({"amount": 9000, "currency": "EUR"})
    );
    assert_eq!(p["stats"]["last_order"]["order_id"], "ord-ada");
    assert!(
        p["cart"].is_null(),
        "the order empties the cart: {}",
        p["cart"]
    );
    let orders = env.read(&format!("/v1/customers/{email}/orders")).await;
    assert_eq!(orders["customer"], user);
    let orders = orders["orders"].as_array().unwrap();
    assert_eq!(orders.len(), 1);
    assert_eq!(
        (orders[0]["order_id"].as_str(), orders[0]["status"].as_str()),
        (Some("ord-ada"), Some("paid"))
    );

    // Lookups.
    let found = env.read("/v1/customers?trait=plan&value=gold").await;
    let found = found["customers"].as_array().unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["id"], user);
    assert!(
        env.read("/v1/customers?trait=plan&value=silver").await["customers"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let found = env.read("/v1/customers?email=ADA@example.com").await;
    assert_eq!(found["customers"][0]["id"], user);
    assert_eq!(found["customers"].as_array().unwrap().len(), 1);
    env.get("/v1/customers?trait=plan")
        .await
        .err(400, "invalid_query");
    env.get("/v1/customers/nobody-at-all")
        .await
        .err(404, "customer_not_found");

    // The timeline holds the anonymous events too.
    let tl = env.read(&format!("/v1/customers/{user}/events")).await;
    let ids: Vec<&str> = tl["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    for id in ["b1", "b2", "b3", "b4", "i1"] {
        assert!(ids.contains(&id), "{id} missing from the timeline {ids:?}");
    }
    assert!(
        tl["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "order.placed"),
        "{ids:?}"
    );

    // Unmerge: the anonymous fragment goes back to being its own customer.
    let un = env
        .post(
            &format!("/v1/customers/{user}/unmerge"),
            &json!({"identity": anon}),
        )
        .await;
    let un = un.ok();
    assert_eq!(
        (un["customer"].as_str(), un["unmerged"].as_str()),
        (Some(user), Some(anon))
    );
    let c = un["cursor"].as_str().unwrap();
    let a = env
        .read(&format!("/v1/customers/{anon}?min_offset={c}"))
        .await;
    assert_eq!(a["id"], anon, "{a}");
    assert_eq!(strs(&a["identities"]["all"]), [anon]);
    assert!(strs(&a["identities"]["emails"]).is_empty());
    assert_eq!(a["stats"]["orders"], 0);
    assert_eq!(a["stats"]["page_views"], 2);
    // The consent was the user's: the anonymous profile has none recorded, and reads false.
    assert_eq!(a["consent"]["email"], false, "{a}");
    assert!(a["consent_details"].get("email").is_none(), "{a}");
    assert!(a["traits"].get("plan").is_none(), "{a}");
    assert_eq!(
        a["cart"]["items"][0]["sku"], "SKU-SHOE",
        "its own cart is its own again"
    );
    let m = merge_of(&a, anon, user);
    assert_eq!(m.len(), 1, "{a}");
    assert!(
        m[0]["unmerged_at"].is_string(),
        "the history keeps the undone merge: {a}"
    );
    assert!(m[0]["merged_at"].is_string());
    let u = env
        .read(&format!("/v1/customers/{user}?min_offset={c}"))
        .await;
    assert_eq!(u["id"], user);
    assert_eq!(
        strs(&u["identities"]["all"]),
        ["email:ada@example.com", user]
    );
    assert_eq!(u["stats"]["page_views"], 0);
    assert_eq!(u["stats"]["orders"], 1);
    assert_eq!(u["consent"]["email"], true);
    let tl = env.read(&format!("/v1/customers/{user}/events")).await;
    assert!(
        tl["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["subject"] != anon),
        "the anonymous events left the user's timeline: {tl}"
    );
    let e = env
        .post(
            &format!("/v1/customers/{user}/unmerge"),
            &json!({"identity": anon}),
        )
        .await;
    // The request is well formed; the customer's state refuses it.
    e.err(409, "not_merged");

    // A new identify merges them again; the old merge stays in the history.
    let c = env.ingest(identified("i2", user, anon)).await;
    let p = env
        .read(&format!("/v1/customers/{anon}?min_offset={c}"))
        .await;
    assert_eq!(p["id"], user);
    assert_eq!(
        strs(&p["identities"]["all"]),
        [anon, "email:ada@example.com", user]
    );
    assert_eq!(
        (
            p["stats"]["page_views"].as_u64(),
            p["stats"]["orders"].as_u64()
        ),
        (Some(2), Some(1))
    );
    let m = merge_of(&p, anon, user);
    assert_eq!(m.len(), 2, "{p}");
    assert_eq!(
        m.iter().filter(|m| m["unmerged_at"].is_null()).count(),
        1,
        "{p}"
    );
    assert_eq!(
        normalised(p),
        normalised(env.read(&format!("/v1/customers/{user}")).await)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn read_your_writes() {
    let env = Env::start(&[("STORELINE_ENGINE__READ_WAIT", "300ms")]);
    for i in 1..=50u64 {
        let r = env
            .run("inventory.adjust", json!({"sku": "SKU-R", "delta": 1}))
            .await;
        // Alternate the two forms: the commerce offset and a cursor.
        let m = if i.is_multiple_of(2) {
            r.offset().to_string()
        } else {
            r.cursor()
        };
        let inv = env
            .read(&format!("/v1/inventory/SKU-R?min_offset={m}"))
            .await;
        assert_eq!(
            inv["on_hand"], i,
            "read {i} missed its own write (min_offset={m})"
        );
        if i.is_multiple_of(5) {
            // A command whose event lives in the customer's partition, read by its cursor.
            let granted = i.is_multiple_of(10);
            let r = env
                .run(
                    "customer.update_consent",
                    json!({"customer_id": "cus-r", "channel": "sms", "granted": granted}),
                )
                .await;
            let p = env
                .read(&format!("/v1/customers/cus-r?min_offset={}", r.cursor()))
                .await;
            assert_eq!(p["consent"]["sms"], granted, "consent read {i}");
        }
    }
    // Ingested events, read back through their acks.
    for i in 1..=20u64 {
        let c = env
            .ingest(json!([{"id": format!("pv-{i}"), "source": "web", "type": "page.viewed", "subject": "cus-r",
                            "data": {"url": format!("https://shop.example/{i}")}}]))
            .await;
        let p = env
            .read(&format!("/v1/customers/cus-r?min_offset={c}"))
            .await;
        assert_eq!(
            p["stats"]["page_views"], i,
            "page view {i} not seen with min_offset={c}"
        );
    }

    // A position the views will never reach within read_wait: 503, after the wait.
    let started = Instant::now();
    let r = env
        .get("/v1/inventory/SKU-R?min_offset=1000000000000")
        .await;
    r.err(503, "unavailable");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(290) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    let r = env
        .get("/v1/customers/cus-r?min_offset=0:1000000000000")
        .await;
    assert_eq!(r.status, 503, "{}", r.body);
    for bad in ["abc", "0:x", "1:2:3", "-1", "99999:1", ""] {
        let r = env.get(&format!("/v1/orders/o?min_offset={bad}")).await;
        r.err(400, "invalid_query");
    }
}

/// After an unmerge, each side of the undone merge still shows it in its history.
#[tokio::test(flavor = "multi_thread")]

async fn unmerged_history_is_visible_from_both_sides() {
    let env = Env::start(&[]);
    let (anon, user) = ("anon-7f3", "user-42");
    env.ingest(browsing(anon)).await;
    let c = env.ingest(identified("i1", user, anon)).await;
    env.read(&format!("/v1/customers/{user}?min_offset={c}"))
        .await;
    let un = env
        .post(
            &format!("/v1/customers/{user}/unmerge"),
            &json!({"identity": anon}),
        )
        .await;
    let c = un.ok()["cursor"].as_str().unwrap().to_owned();
    let a = env
        .read(&format!("/v1/customers/{anon}?min_offset={c}"))
        .await;
    let u = env
        .read(&format!("/v1/customers/{user}?min_offset={c}"))
        .await;
    assert_eq!(
        merge_of(&a, anon, user).len(),
        1,
        "anonymous side: {}",
        a["merges"]
    );
    assert_eq!(
        merge_of(&u, anon, user).len(),
        1,
        "user side: {}",
        u["merges"]
    );
}

/// A paid order that never shipped can be refunded without its stock staying reserved forever,
/// and goods that never left cannot be "returned" into stock.
#[tokio::test(flavor = "multi_thread")]

async fn refunding_an_unshipped_order_does_not_strand_its_stock() {
    let env = Env::start(&[]);
    env.run("inventory.adjust", json!({"sku": "SKU-U", "set": 10}))
        .await;
    let line = json!([{"sku": "SKU-U", "quantity": 2, "unit_price": 100}]);
    for id in ["ord-a", "ord-b"] {
        env.run(
            "order.place",
            json!({"order_id": id, "customer_id": "c", "currency": "EUR", "lines": line}),
        )
        .await;
        env.run("order.pay", json!({"order_id": id})).await;
    }
    // A: the customer cancels after paying: the stock is released, and the money must go back.
    env.run("order.cancel", json!({"order_id": "ord-a"})).await;
    let r = env.cmd("order.refund", json!({"order_id": "ord-a"})).await;
    assert_eq!(
        r.status, 200,
        "a cancelled paid order cannot be refunded: {}",
        r.body
    );
    // B: refunded in full before shipping: nothing may stay held for it.
    let r = env.run("order.refund", json!({"order_id": "ord-b"})).await;
    let inv = env.inventory("SKU-U", r.offset()).await;
    if inv["reserved"] != 0 {
        let c = env.cmd("order.cancel", json!({"order_id": "ord-b"})).await;
        assert_eq!(
            c.status, 200,
            "a refunded, unshipped order keeps {} reserved and cannot be cancelled: {}",
            inv["reserved"], c.body
        );
    }
    // Refunded in full: another refund conflicts with the order's state (409), it is not a
    // malformed request.
    let r = env.cmd("order.refund", json!({"order_id": "ord-b"})).await;
    r.err(409, "refund_exceeds_paid");
    // Nothing was shipped, so nothing can come back.
    let r = env
        .cmd("return.receive", json!({"order_id": "ord-b"}))
        .await;
    assert_eq!(
        r.status, 409,
        "a return of goods that never shipped: {}",
        r.body
    );
    let inv = env.inventory("SKU-U", 0).await;
    assert_eq!(totals(&inv), (10, 0, 10), "{inv}");
}
