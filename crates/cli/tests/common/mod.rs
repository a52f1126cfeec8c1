//! Test harness: runs the real `storeline` binary on a temporary data directory and port 0.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_storeline");

/// Creates a key in `data` with the real CLI and returns it.
pub fn create_key(data: &Path, scopes: &str) -> String {
    let out = Command::new(BIN)
        .args([
            "keys", "create", "--scope", scopes, "--name", "test", "--data",
        ])
        .arg(data)
        .output()
        .expect("run storeline keys create");
    assert!(
        out.status.success(),
        "keys create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

pub struct Server {
    pub child: Child,
    pub url: String,
    pub data: PathBuf,
    pub stdout_head: Vec<String>,
}

impl Server {
    /// Starts `storeline serve` on `data` with extra env vars; waits until it listens.
    pub fn start(data: &Path, env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start storeline serve");
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut head = Vec::new();
        let url = loop {
            let line = lines
                .next()
                .expect("server exited before listening")
                .unwrap();
            if let Some(addr) = line.strip_prefix("storeline listening on ") {
                break addr.trim().to_owned();
            }
            head.push(line);
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            url,
            data: data.to_owned(),
            stdout_head: head,
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Every stored event, per partition, read through `GET /v1/events?partition=P`.
pub async fn read_partition(url: &str, key: &str, partition: u32) -> Vec<serde_json::Value> {
    let client = http();
    let mut out = Vec::new();
    let mut offset = 0u64;
    loop {
        let page: serde_json::Value = client
            .get(format!("{url}/v1/events"))
            .bearer_auth(key)
            .query(&[
                ("partition", partition.to_string()),
                ("offset", offset.to_string()),
                ("limit", "1000".into()),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let events = page["events"].as_array().unwrap().clone();
        if events.is_empty() {
            return out;
        }
        offset = events.last().unwrap()["offset"].as_u64().unwrap() + 1;
        out.extend(events);
    }
}

/// The first page (up to 1000) of `GET /v1/events`, across partitions in arrival order.
pub async fn all_events(url: &str, key: &str) -> Vec<serde_json::Value> {
    let page: serde_json::Value = http()
        .get(format!("{url}/v1/events?limit=1000"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page["events"].as_array().unwrap().clone()
}

/// A PostgreSQL schema of its own for one test (dropped at the end), as server env vars.
pub struct Postgres {
    url: String,
    schema: String,
}

impl Postgres {
    pub fn schema(name: &str) -> Postgres {
        let url = std::env::var("STORELINE_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let schema = format!("v_{}_{}", name.replace('-', "_"), std::process::id());
        Postgres { url, schema }
    }

    pub fn env(&self) -> Vec<(&str, &str)> {
        vec![
            ("STORELINE_STATE__BACKEND", "postgres"),
            ("STORELINE_STATE__POSTGRES__URL", self.url.as_str()),
            ("STORELINE_STATE__POSTGRES__SCHEMA", self.schema.as_str()),
        ]
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args([self.url.as_str(), "-q", "-c"])
            .arg(format!(
                "DROP SCHEMA IF EXISTS {0} CASCADE; DROP SCHEMA IF EXISTS {0}_delivery CASCADE",
                self.schema
            ))
            .output();
    }
}

/// `GET path` with the key; asserts 200 and returns the JSON body.
pub async fn get_json(url: &str, key: &str, path: &str) -> serde_json::Value {
    let r = http()
        .get(format!("{url}{path}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET {path}");
    r.json().await.unwrap()
}

/// Posts `events` as one NDJSON request; asserts 200.
pub async fn send_ndjson(url: &str, key: &str, events: &[serde_json::Value]) {
    let body: Vec<String> = events.iter().map(|e| e.to_string()).collect();
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

/// Counters per trigger (`GET /v1/triggers` stats) without the bookkeeping ones a backtest
/// does not report: what a backtest's `counts` must equal.
pub fn comparable(
    counts: &serde_json::Value,
) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>> {
    let mut out: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>> =
        std::collections::BTreeMap::new();
    for (id, c) in counts.as_object().unwrap() {
        let name = id.split('@').next().unwrap().to_owned();
        for (k, v) in c.as_object().unwrap() {
            if k == "active" || k == "waiting" || v.as_i64() == Some(0) {
                continue;
            }
            *out.entry(name.clone())
                .or_default()
                .entry(k.clone())
                .or_default() += v.as_u64().unwrap();
        }
    }
    out
}

/// `storeline triggers backtest FILE --data DATA --json` (the server stopped); its report.
pub fn backtest(data: &Path, file: &Path) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(["triggers", "backtest"])
        .arg(file)
        .arg("--data")
        .arg(data)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
