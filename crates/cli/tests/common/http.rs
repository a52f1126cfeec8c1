//! The HTTP calls the tests make against a running server: one client, an answer as its status
//! and JSON body, reads with a key (checked for 200 or not), events, commands and trigger files
//! sent, and the log read back a page at a time.

use std::time::Duration;

use serde_json::Value;

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// An answer: status, JSON body (Null if there is none) and the `idempotent-replayed` header.
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub replayed_header: Option<String>,
}

impl Resp {
    /// Asserts the status and, if given, the error code; returns the body.
    #[track_caller]
    pub fn is(&self, status: u16, code: Option<&str>) -> &Value {
        assert_eq!(self.status, status, "{}", self.body);
        if let Some(c) = code {
            assert_eq!(self.body["error"]["code"], c, "{}", self.body);
        }
        &self.body
    }

    /// Asserts 200; returns the body.
    #[track_caller]
    pub fn ok(&self) -> &Value {
        assert_eq!(
            self.status, 200,
            "expected 200, got {}: {}",
            self.status, self.body
        );
        &self.body
    }

    /// Asserts the status and error code together; returns the body's `error`.
    #[track_caller]
    pub fn err(&self, status: u16, code: &str) -> &Value {
        assert_eq!(
            (self.status, self.body["error"]["code"].as_str()),
            (status, Some(code)),
            "{}",
            self.body
        );
        &self.body["error"]
    }
}

/// Reads a response into a [`Resp`].
pub async fn into_resp(r: reqwest::Response) -> Resp {
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

/// Sends `rb` and reads the answer (panics only if there is none).
pub async fn send(rb: reqwest::RequestBuilder) -> Resp {
    into_resp(rb.send().await.unwrap()).await
}

/// `GET path` with the key, whatever the answer.
pub async fn get(url: &str, key: &str, path: &str) -> Resp {
    send(http().get(format!("{url}{path}")).bearer_auth(key)).await
}

/// `GET path` with the key; asserts 200 and returns the JSON body.
pub async fn get_json(url: &str, key: &str, path: &str) -> Value {
    let r = http()
        .get(format!("{url}{path}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// `GET path` with the key; the JSON body, whatever the status (it must be JSON).
pub async fn get_body(url: &str, key: &str, path: &str) -> Value {
    http()
        .get(format!("{url}{path}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `POST path` with the key and `body` as JSON (a command, an unmerge, one event), whatever the
/// answer.
pub async fn post_json(url: &str, key: &str, path: &str, body: &Value) -> Resp {
    send(
        http()
            .post(format!("{url}{path}"))
            .bearer_auth(key)
            .json(body),
    )
    .await
}

/// Posts `body` to `/v1/events` as `content_type`: the status and the JSON answer (Null if none).
pub async fn post_events(
    url: &str,
    key: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let r = send(
        http()
            .post(format!("{url}/v1/events"))
            .bearer_auth(key)
            .header("content-type", content_type)
            .body(body),
    )
    .await;
    (r.status, r.body)
}

/// Posts `events` as one NDJSON request; asserts 200.
pub async fn send_ndjson(url: &str, key: &str, events: &[Value]) {
    let body: Vec<String> = events.iter().map(Value::to_string).collect();
    let r = http()
        .post(format!("{url}/v1/events"))
        .bearer_auth(key)
        .header("content-type", "application/x-ndjson")
        .body(body.join("\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// `PUT /v1/triggers` with `source` as TOML, whatever the answer.
pub async fn put_triggers(url: &str, key: &str, source: impl Into<reqwest::Body>) -> Resp {
    send(
        http()
            .put(format!("{url}/v1/triggers"))
            .bearer_auth(key)
            .header("content-type", "application/toml")
            .body(source),
    )
    .await
}

/// Installs a trigger file with `PUT /v1/triggers`; asserts 200.
pub async fn install_triggers(url: &str, key: &str, source: &str) {
    let r = put_triggers(url, key, source.to_owned()).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Every stored event, per partition, read through `GET /v1/events?partition=P`.
pub async fn read_partition(url: &str, key: &str, partition: u32) -> Vec<Value> {
    let mut out = Vec::new();
    let mut offset = 0u64;
    loop {
        let path = format!("/v1/events?partition={partition}&offset={offset}&limit=1000");
        let page = get_body(url, key, &path).await;
        let events = page["events"].as_array().unwrap().clone();
        if events.is_empty() {
            return out;
        }
        offset = events.last().unwrap()["offset"].as_u64().unwrap() + 1;
        out.extend(events);
    }
}

/// The first page (up to 1000) of `GET /v1/events`, across partitions in arrival order.
pub async fn all_events(url: &str, key: &str) -> Vec<Value> {
    let page = get_body(url, key, "/v1/events?limit=1000").await;
    page["events"].as_array().unwrap().clone()
}

/// `GET url` (a whole URL) without a key; the JSON body, whatever the status.
pub async fn json_at(url: &str) -> Value {
    http().get(url).send().await.unwrap().json().await.unwrap()
}

/// The status of `GET path` without a key (`/healthz`, `/readyz`).
pub async fn status_of(url: &str, path: &str) -> u16 {
    let r = http().get(format!("{url}{path}")).send().await.unwrap();
    r.status().as_u16()
}

/// `GET /metrics` without a key, as text, whatever the status.
pub async fn metrics(url: &str) -> String {
    http()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The `field` of each error an invalid request was answered with.
pub fn error_fields(body: &Value) -> Vec<&str> {
    body["error"]["details"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect()
}
