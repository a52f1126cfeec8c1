//! What the delivery tests share: a real webhook receiver (`tests/delivery/receiver.py`, which
//! verifies every request with the `standardwebhooks` library and records it), the connector
//! and trigger tables that deliver to it, the signup events they deliver, and what the tests
//! read from its record (accepted ids, requests per id, FIFO order per customer).

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::{http, json_at, wait_for};

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
        let new = json_at(&format!("{}/_received?since={}", self.url, seen.len())).await;
        seen.extend(new.as_array().unwrap().iter().cloned());
        seen.clone()
    }

    /// Waits (up to `within`, for `what`) until at least `n` delivery ids were accepted;
    /// returns every request received by then.
    pub async fn wait_accepted(&self, what: &str, n: usize, within: Duration) -> Vec<Value> {
        wait_for(what, within, async || {
            let r = self.received().await;
            let ok = accepted(&r).len();
            if ok >= n {
                Ok(r)
            } else {
                Err(format!(
                    "{ok} of {n} delivery ids accepted, {} requests",
                    r.len()
                ))
            }
        })
        .await
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

/// Retries a delivery test can wait for: attempts at once, after 200 ms, 500 ms and 1 s.
pub const FAST: &str = "retry_schedule = [\"0s\", \"200ms\", \"500ms\", \"1s\"]\njitter = 0.0";

/// A webhook connector `name` to `rx`'s `/hook` (plus `extra` lines), and the signup trigger
/// delivering to it.
pub fn signup_hook(name: &str, rx: &Receiver, extra: &str) -> String {
    format!(
        "{}{}",
        webhook(name, &format!("{}/hook", rx.url), extra),
        signup_trigger(&[name])
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

/// Wall-clock seconds since the epoch (the receiver stamps arrivals the same way).
pub fn wall() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
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
