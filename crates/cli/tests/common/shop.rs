//! A server with an admin key, driven by commands and read through the views (stock, orders,
//! customers), as the view tests drive it: what a command answered (its events, the commerce
//! offset, the cursor) and the stock sums every inventory read must keep.

use serde_json::Value;

use super::{Resp, Server, create_key, get, post_json, send};

impl Resp {
    /// The commerce partition's offset of a command's answer.
    #[track_caller]
    pub fn offset(&self) -> u64 {
        self.ok()["offset"]
            .as_u64()
            .unwrap_or_else(|| panic!("no offset in {}", self.body))
    }

    /// The `p:o,…` cursor of a command's answer, for `?min_offset=`.
    #[track_caller]
    pub fn cursor(&self) -> String {
        self.ok()["cursor"].as_str().unwrap().to_owned()
    }

    /// The `type`s of a command's events, in order.
    pub fn types(&self) -> Vec<String> {
        self.body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect()
    }
}

pub struct Shop {
    _dir: tempfile::TempDir,
    pub server: Server,
    pub key: String,
}

impl Shop {
    pub fn start(env: &[(&str, &str)]) -> Shop {
        let dir = tempfile::tempdir().unwrap();
        let key = create_key(dir.path(), "admin");
        let server = Server::start(dir.path(), env);
        Shop {
            _dir: dir,
            server,
            key,
        }
    }

    /// Stops the server gracefully and starts it again on the same data directory.
    pub fn restart(&mut self, env: &[(&str, &str)]) {
        assert_eq!(
            self.server.terminate(),
            Some(0),
            "graceful shutdown exits 0"
        );
        self.server = Server::start(&self.server.data.clone(), env);
    }

    /// The command `name` with an `Idempotency-Key` if `key` is given.
    pub async fn cmd_with(&self, name: &str, key: Option<&str>, body: &Value) -> Resp {
        let mut req = super::http()
            .post(format!("{}/v1/commands/{name}", self.server.url))
            .bearer_auth(&self.key)
            .json(body);
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        send(req).await
    }

    pub async fn cmd(&self, name: &str, body: Value) -> Resp {
        self.cmd_with(name, None, &body).await
    }

    /// A command that must succeed.
    pub async fn run(&self, name: &str, body: Value) -> Resp {
        let r = self.cmd(name, body).await;
        r.ok();
        r
    }

    pub async fn get(&self, path: &str) -> Resp {
        get(&self.server.url, &self.key, path).await
    }

    /// A read that must succeed.
    pub async fn read(&self, path: &str) -> Value {
        let r = self.get(path).await;
        r.ok();
        r.body
    }

    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        post_json(&self.server.url, &self.key, path, body).await
    }

    /// Ingests events; returns the acks as a `p:o,…` cursor for `?min_offset=`.
    pub async fn ingest(&self, events: Value) -> String {
        let r = self.post("/v1/events", &events).await;
        let acks = r.ok()["events"].as_array().unwrap();
        assert!(!acks.is_empty());
        acks.iter()
            .map(|a| format!("{}:{}", a["partition"], a["offset"]))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// An SKU's stock once the views reached `min_offset`; checks its sums.
    pub async fn inventory(&self, sku: &str, min_offset: impl std::fmt::Display) -> Value {
        let inv = self
            .read(&format!("/v1/inventory/{sku}?min_offset={min_offset}"))
            .await;
        check_stock_sums(&inv);
        inv
    }

    pub async fn order(&self, id: &str, min_offset: impl std::fmt::Display) -> Value {
        self.read(&format!("/v1/orders/{id}?min_offset={min_offset}"))
            .await
    }

    /// `GET /v1/engine`'s entry for the commerce partition.
    pub async fn commerce_status(&self) -> Value {
        let e = self.read("/v1/engine").await;
        let p = e["commerce_partition"].as_u64().unwrap() as usize;
        e["partitions"][p].clone()
    }

    /// Events of `types` (comma-separated) about `subject`, up to 1000.
    pub async fn events(&self, types: &str, subject: &str) -> Vec<Value> {
        let page = self
            .read(&format!(
                "/v1/events?type={types}&subject={subject}&limit=1000"
            ))
            .await;
        page["events"].as_array().unwrap().clone()
    }
}

/// `(on_hand, reserved, available)` of the whole SKU.
pub fn totals(inv: &Value) -> (i64, i64, i64) {
    (
        inv["on_hand"].as_i64().unwrap(),
        inv["reserved"].as_i64().unwrap(),
        inv["available"].as_i64().unwrap(),
    )
}

/// Per location and in total: reserved + available = on hand; totals are the locations' sums.
#[track_caller]
pub fn check_stock_sums(inv: &Value) {
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
