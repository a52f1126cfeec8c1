//! A real Kafka-protocol broker: tansu (in-memory storage) as a child process on a free port, and
//! a different client, librdkafka 2.x through Python's confluent_kafka
//! (`tests/kafka/consume.py`), to read back what was produced. Optionally with tansu's schema
//! registry, whose JSON schemas make the broker itself refuse records (`INVALID_RECORD`).
//!
//! tansu is found as `storeline_log::tansu::executable` finds it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;

use super::free_port;

/// A running broker, stopped when dropped. It runs under `sh`, which stops it when its stdin
/// closes, so a test run that is killed outright leaves no broker behind either.
pub struct Broker {
    child: Child,
    pub port: u16,
    paused: AtomicBool,
}

pub fn tansu() -> String {
    storeline_log::tansu::executable()
}

impl Broker {
    pub fn start() -> Broker {
        Broker::spawn(None)
    }

    /// A broker whose schema registry is `dir`: a record produced to topic `T` must match the
    /// JSON schema `dir/T.json` (its `key` and `value` properties) or the broker refuses it.
    pub fn with_schemas(dir: &Path) -> Broker {
        Broker::spawn(Some(dir))
    }

    fn spawn(schemas: Option<&Path>) -> Broker {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let guard = "\"$0\" \"$@\" & pid=$!; read _; kill $pid; wait $pid";
        let mut cmd = Command::new("sh");
        cmd.args(["-c", guard, &tansu(), "broker"])
            .args(["--storage-engine", "memory://tansu/"])
            .args(["--listener-url", &url, "--advertised-listener-url", &url]);
        if let Some(dir) = schemas {
            // tansu resolves a `file://` registry against its working directory.
            cmd.current_dir(dir)
                .args(["--schema-registry", "file://./"]);
        }
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu runs (cargo install tansu)");
        let b = Broker {
            child,
            port,
            paused: AtomicBool::new(false),
        };
        storeline_log::tansu::wait_listening(port);
        b
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        let status = Command::new(tansu())
            .args([
                "topic",
                "create",
                name,
                "--partitions",
                &partitions.to_string(),
            ])
            .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .stdout(Stdio::null())
            .status()
            .expect("tansu topic create runs");
        assert!(status.success(), "creating topic {name}: {status}");
    }

    /// Every record in `topic`, read by librdkafka; waits for `expected` of them, then for a
    /// quiet second (so duplicates would show). A topic that does not exist reads as empty.
    pub fn consume(&self, topic: &str, expected: usize) -> Vec<Value> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kafka/consume.py");
        let out = Command::new("python3")
            .args([script, &self.brokers(), topic, &expected.to_string()])
            .output()
            .expect("python3 runs the consumer (pip install -r tests/requirements.txt)");
        assert!(
            out.status.success(),
            "consumer: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        assert!(lines.iter().all(|l| l.get("error").is_none()), "{lines:?}");
        lines
    }

    /// Freezes the broker process (SIGSTOP): the kernel still accepts connections and takes
    /// requests in, but nothing is answered until [`Broker::resume`].
    pub fn pause(&self) {
        self.signal("STOP");
        self.paused.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        if self.paused.swap(false, Ordering::SeqCst) {
            self.signal("CONT");
        }
    }

    /// Signals tansu itself (the child of the `sh` guard, which would only pass a STOP on).
    fn signal(&self, sig: &str) {
        let sh = self.child.id();
        let children = std::fs::read_to_string(format!("/proc/{sh}/task/{sh}/children"))
            .expect("/proc lists the guard's children");
        let pid = children
            .split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("the sh guard {sh} has no tansu child"));
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), pid])
            .status()
            .expect("kill runs");
        assert!(ok.success(), "kill -{sig} {pid}");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // A stopped process would hold its TERM until continued, and `wait` in the guard with it.
        self.resume();
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}
