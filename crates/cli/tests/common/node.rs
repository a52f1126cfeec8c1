//! A server on a fresh data directory whose triggers (and connectors) come from a file, with an
//! admin and a read key: restarted on the same directory after a kill, replayed, and read and
//! driven through the API and the CLI.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use super::{
    Server, create_key, get_json, install_triggers, replay, send_ndjson, storeline, succeeds,
    wait_for,
};

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

    /// `storeline replay` of the data directory with the server's env vars (stop the server
    /// first): asserts it succeeds, which it does when a replay of the log equals the live state.
    #[track_caller]
    pub fn assert_replay_equals_live(&self) {
        let out = replay(&self.data, &Self::env_refs(&self.env));
        assert!(
            out.status.success(),
            "replay must equal the live state:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Posts `events` as one NDJSON request with the admin key; asserts 200.
    pub async fn send(&self, events: &[Value]) {
        send_ndjson(&self.url, &self.key, events).await;
    }

    /// Installs a trigger file with `PUT /v1/triggers`; asserts 200.
    pub async fn put_triggers(&self, source: &str) {
        install_triggers(&self.url, &self.key, source).await;
    }

    /// `GET path` with the admin key; asserts 200.
    pub async fn get(&self, path: &str) -> Value {
        get_json(&self.url, &self.key, path).await
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

    /// Waits (up to `within`, for `what`) until exactly `n` deliveries match `query`; returns
    /// them.
    pub async fn wait_deliveries(
        &self,
        what: &str,
        query: &str,
        n: usize,
        within: Duration,
    ) -> Vec<Value> {
        wait_for(what, within, async || {
            let d = self.deliveries(query).await;
            if d.len() == n {
                Ok(d)
            } else {
                Err(format!("{} of {n} match {query:?}", d.len()))
            }
        })
        .await
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

    /// Runs the real CLI against this server with the admin key; asserts it succeeded.
    pub fn cli(&self, args: &[&str]) -> Output {
        succeeds(storeline(args).args(["--url", &self.url, "--key", &self.key]))
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
