//! What the delivery tests share: a real webhook receiver (`receiver.py`, which verifies every
//! request with the `standardwebhooks` library and records it), a server started on a trigger
//! file, and the HTTP calls the tests make (send events, page through deliveries, poll with a
//! deadline). Included by `delivery.rs` and `delivery_faults.rs` with `#[path]`.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::common::{BIN, Server, create_key, http};

/// The Standard Webhooks specification's example secret.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// A second valid secret (32 bytes), the one being rotated out.
pub const OLD_SECRET: &str = "whsec_b2xkLXNlY3JldC1mb3Itcm90YXRpb24tdGVzdHMtMzI=";

/// One `receiver.py` process on its own port, killed when dropped.
pub struct Receiver {
    child: Child,
    pub url: String,
    /// What `/_received` returned so far (it only grows, so each poll reads what is new).
    seen: tokio::sync::Mutex<Vec<Value>>,
}

impl Receiver {
    /// Starts a receiver holding [`SECRET`], with extra `receiver.py` arguments.
    pub fn start(extra: &[&str]) -> Receiver {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/delivery/receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--port", "0", "--secret", SECRET])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start receiver.py (python3 with standardwebhooks)");
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let line = lines
            .next()
            .expect("receiver.py exited before listening")
            .unwrap();
        let port = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected receiver output {line:?}"))
            .trim()
            .to_owned();
        std::thread::spawn(move || for _ in lines {});
        Receiver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            seen: tokio::sync::Mutex::new(Vec::new()),
        }
    }

    /// Changes how it answers from now on (`fail_rate`, `fail_status`, `status`, `hang`,
    /// `retry_after`).
    pub async fn mode(&self, m: Value) {
        let r = http()
            .post(format!("{}/_mode", self.url))
            .json(&m)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    /// Every request received so far, in arrival order.
    pub async fn received(&self) -> Vec<Value> {
        let mut seen = self.seen.lock().await;
        let new: Vec<Value> = http()
            .get(format!("{}/_received?since={}", self.url, seen.len()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seen.extend(new);
        seen.clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The delivery ids a receiver took: verified requests it answered with 2xx.
pub fn accepted(recs: &[Value]) -> BTreeSet<String> {
    recs.iter()
        .filter(|r| r["verified"] == true && r["status"].as_u64().is_some_and(|s| s < 300))
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

/// How many requests each delivery id got.
pub fn per_id(recs: &[Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in recs {
        *out.entry(r["id"].as_str().unwrap_or("").to_owned())
            .or_default() += 1;
    }
    out
}

/// A webhook connector table pointing at `url`, plus extra `key = value` lines.
pub fn webhook(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[[connector]]\nname = \"{name}\"\ntype = \"webhook\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n\
         allow_private_network = true\n{extra}\n"
    )
}

/// The signup trigger, delivering to each of `connectors`.
pub fn signup_trigger(connectors: &[&str]) -> String {
    let actions: Vec<String> = connectors
        .iter()
        .map(|c| {
            format!(
                "{{ deliver = \"{c}\", data = {{ email = \"event.data.email\", n = \"event.data.traits.n\" }} }}"
            )
        })
        .collect();
    format!(
        "[[trigger]]\nname = \"signup\"\non = \"customer.signed_up\"\nthen = [ {} ]\n",
        actions.join(", ")
    )
}

/// A signup event; `n` travels in the traits and comes back in the delivery's `data.n`.
pub fn signup(n: usize, customer: &str) -> Value {
    json!({
        "specversion": "1.0", "id": format!("e{n}"), "source": "delivery-test",
        "type": "customer.signed_up", "subject": customer,
        "data": { "email": format!("user{n}@example.com"), "traits": { "n": n } },
    })
}

/// A server on a fresh data directory, with its triggers (and connectors) from a file.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    env: Vec<(String, String)>,
    pub server: Server,
    pub url: String,
    /// Admin scope.
    pub key: String,
    /// Read scope only.
    pub read_key: String,
}

impl Node {
    pub fn start(triggers: &str) -> Node {
        Node::start_with(triggers, &[])
    }

    /// With extra server env vars (such as a PostgreSQL state store's).
    pub fn start_with(triggers: &str, extra: &[(&str, &str)]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let file = dir.path().join("triggers.toml");
        std::fs::write(&file, triggers).unwrap();
        let mut env = vec![(
            "STORELINE_TRIGGERS__FILE".to_owned(),
            file.to_str().unwrap().to_owned(),
        )];
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let key = create_key(&data, "admin");
        let read_key = create_key(&data, "read");
        let server = Server::start(&data, &Self::env_refs(&env));
        let url = server.url.clone();
        Node {
            dir,
            data,
            env,
            server,
            url,
            key,
            read_key,
        }
    }

    fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    /// Starts the server again on the same data directory (after `server.kill9()`).
    pub fn restart(&mut self) {
        self.server = Server::start(&self.data, &Self::env_refs(&self.env));
        self.url = self.server.url.clone();
    }

    pub async fn send(&self, events: &[Value]) {
        let body: Vec<String> = events.iter().map(Value::to_string).collect();
        let r = http()
            .post(format!("{}/v1/events", self.url))
            .bearer_auth(&self.key)
            .header("content-type", "application/x-ndjson")
            .body(body.join("\n"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }

    /// Installs a trigger file with `PUT /v1/triggers`.
    pub async fn put_triggers(&self, source: &str) {
        let r = http()
            .put(format!("{}/v1/triggers", self.url))
            .bearer_auth(&self.key)
            .header("content-type", "application/toml")
            .body(source.to_owned())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }

    pub async fn get(&self, path: &str) -> Value {
        let r = http()
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Every delivery matching `query` (`status=dead&connector=x`), following `next`.
    pub async fn deliveries(&self, query: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut path = format!("/v1/deliveries?limit=1000&{query}");
            if let Some(a) = &after {
                path.push_str(&format!("&after={}", urlencode(a)));
            }
            let page = self.get(&path).await;
            out.extend(page["deliveries"].as_array().unwrap().iter().cloned());
            match page["next"].as_str() {
                Some(n) => after = Some(n.to_owned()),
                None => return out,
            }
        }
    }

    pub async fn delivery(&self, id: &str) -> Value {
        self.get(&format!("/v1/deliveries/{id}")).await
    }

    /// One connector as `GET /v1/connectors` shows it.
    pub async fn connector(&self, name: &str) -> Value {
        let all = self.get("/v1/connectors").await;
        all["connectors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no connector {name} in {all}"))
    }

    /// Runs the real CLI against this server with the admin key; returns its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        let out = Command::new(BIN)
            .args(args)
            .args(["--url", &self.url, "--key", &self.key])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "storeline {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

/// Percent-encodes the characters a `next` position may hold (digits, `dlv_…`, U+001F).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Wall-clock seconds since the epoch (the receiver stamps arrivals the same way).
pub fn wall() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// An RFC 3339 time of the API as ms since the epoch.
pub fn ms(t: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(t.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

/// Polls `probe` every 100 ms until it returns `Ok`, or panics after `within` with what `what`
/// was waiting for and the probe's last account of why not.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(why) if Instant::now() >= deadline => {
                panic!("timed out after {within:?} waiting for {what}: {why}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Checks FIFO order per customer: event `n` belongs to customer `n % customers`; no request
/// for a customer's next event may come before its previous one was accepted, so first
/// acceptances are in event order. Returns how many events each customer had accepted.
pub fn check_fifo(recs: &[Value], customers: usize) -> BTreeMap<String, usize> {
    let mut per: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for r in recs {
        per.entry(r["body"]["customer"].as_str().unwrap().to_owned())
            .or_default()
            .push(r);
    }
    let mut out = BTreeMap::new();
    for (customer, rs) in per {
        let mut done: Vec<u64> = Vec::new();
        for r in rs {
            let n = r["body"]["data"]["n"].as_u64().unwrap();
            if done.contains(&n) {
                // A duplicate of one already accepted (at-least-once).
                continue;
            }
            let expected = done.len() * customers + (n as usize % customers);
            assert_eq!(
                n as usize, expected,
                "{customer}: event {n} was attempted while {expected} was not yet delivered \
                 (delivered so far: {done:?})"
            );
            if r["status"].as_u64().is_some_and(|s| s < 300) {
                done.push(n);
            }
        }
        out.insert(customer, done.len());
    }
    out
}
