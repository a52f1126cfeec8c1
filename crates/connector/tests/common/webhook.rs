//! A real webhook receiver: `crates/cli/tests/delivery/receiver.py` (shared with the server's
//! delivery tests), which verifies every request with the `standardwebhooks` library, records
//! it, and answers as started (`--status N`, `--hang`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// The Standard Webhooks specification's example secret; the receiver verifies with it.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One `receiver.py` process on its own port, killed when dropped.
pub struct Receiver {
    child: Child,
    pub url: String,
}

impl Receiver {
    /// Starts a receiver holding [`SECRET`], with extra `receiver.py` arguments.
    pub fn start(extra: &[&str]) -> Receiver {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../cli/tests/delivery/receiver.py"
        );
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--port", "0", "--secret", SECRET])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs receiver.py (pip install -r tests/requirements.txt)");
        let out = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(out).lines();
        let line = lines
            .next()
            .and_then(Result::ok)
            .expect("receiver.py exited before listening");
        let port = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected receiver output {line:?}"))
            .trim()
            .to_owned();
        std::thread::spawn(move || for _ in lines {});
        Receiver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Every request received so far, in arrival order (each: `id` = `webhook-id`,
    /// `idempotency_key`, `verified`, `status` (null while hanging), `hung`, `body`, …).
    pub async fn received(&self) -> Vec<Value> {
        reqwest::get(format!("{}/_received", self.url))
            .await
            .expect("receiver.py answers")
            .json()
            .await
            .expect("a JSON list")
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
