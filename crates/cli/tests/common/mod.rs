//! What the integration tests of the `storeline` package share: the real binary serving a
//! temporary data directory on port 0 (`Server`, `serve`, `create_key`), the CLI run as a command
//! (`storeline`, `succeeds`, `replay`, `backtest`), waiting with a deadline (`wait_for`), and a
//! PostgreSQL schema per test. The HTTP calls are in `http`, a server on a trigger file in
//! `node`, a server driven by commands in `shop`, the webhook receiver in `receiver`.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)]

mod http;
mod node;
pub mod receiver;
mod shop;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

// Each test uses its own part of these (as of the rest, hence `dead_code` above).
#[allow(unused_imports)]
pub use http::*;
#[allow(unused_imports)]
pub use node::Node;
#[allow(unused_imports)]
pub use shop::{Shop, check_stock_sums, totals};

pub const BIN: &str = env!("CARGO_BIN_EXE_storeline");

/// The real CLI: `storeline ARGS…` (more with `.arg`), not run yet.
pub fn storeline(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    cmd
}

/// Runs `cmd`; asserts it exits 0 (showing what it printed) and returns its output.
#[track_caller]
pub fn succeeds(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run storeline");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Creates a key in `data` with the real CLI and returns it.
pub fn create_key(data: &Path, scopes: &str) -> String {
    let out = succeeds(
        storeline(&[
            "keys", "create", "--scope", scopes, "--name", "test", "--data",
        ])
        .arg(data),
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A server on a fresh data directory with a key of each of `scopes` (made first, in order).
/// Keep the directory alive as long as the server: `let (_dir, server, [key]) = …`.
pub fn serve<const N: usize>(
    scopes: [&str; N],
    env: &[(&str, &str)],
) -> (tempfile::TempDir, Server, [String; N]) {
    let dir = tempfile::tempdir().unwrap();
    let keys = scopes.map(|s| create_key(dir.path(), s));
    let server = Server::start(dir.path(), env);
    (dir, server, keys)
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
        let mut cmd = storeline(&["serve", "--listen", "127.0.0.1:0", "--data"]);
        cmd.arg(data).env("RUST_LOG", "warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Server::spawn(cmd, data)
    }

    /// Runs `cmd`, a `storeline serve` on `data` however it is started; waits until it listens
    /// (what it printed before is `stdout_head`).
    pub fn spawn(mut cmd: Command, data: &Path) -> Server {
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
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

/// `storeline replay --data DATA` with the server's env vars (the server stopped): its output,
/// whatever the exit status.
pub fn replay(data: &Path, env: &[(&str, &str)]) -> Output {
    storeline(&["replay", "--data"])
        .arg(data)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// `storeline triggers backtest FILE --data DATA --json` (the server stopped); its report.
pub fn backtest(data: &Path, file: &Path) -> serde_json::Value {
    let out = succeeds(
        storeline(&["triggers", "backtest"])
            .arg(file)
            .arg("--data")
            .arg(data)
            .arg("--json"),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Counters per trigger (`GET /v1/triggers` stats) without the bookkeeping ones a backtest
/// does not report: what a backtest's `counts` must equal.
pub fn comparable(counts: &serde_json::Value) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
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

/// Polls `probe` every 100 ms until it returns `Ok`, or panics after `within` with what `what`
/// was waiting for and the probe's last account of why not.
pub async fn wait_for<T>(
    what: &str,
    within: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
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

/// An RFC 3339 time of the API as ms since the epoch.
pub fn ms(t: &serde_json::Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(t.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
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

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.schema
    }

    /// Runs `sql` with `psql` (stopping at the first error); asserts it succeeded.
    #[track_caller]
    pub fn psql(&self, sql: &str) {
        let out = Command::new("psql")
            .args([self.url.as_str(), "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([self.url.as_str(), "-q", "-c"])
            .arg(format!(
                "DROP SCHEMA IF EXISTS {0} CASCADE; DROP SCHEMA IF EXISTS {0}_delivery CASCADE",
                self.schema
            ))
            .output();
    }
}
