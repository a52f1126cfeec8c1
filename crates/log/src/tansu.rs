//! A real Kafka-protocol broker for tests: tansu as a child process on a free port, storing in
//! SQLite in a temporary directory. Shared by the tests of every crate that runs the
//! [`KafkaLog`](crate::KafkaLog).
//!
//! SQLite, not tansu's in-memory storage: that one (0.6) answers a fetch from an offset inside a
//! record batch with the batches after it only, and a `ListOffsets` for the latest offset with
//! the last batch's first offset plus one, where Kafka answers with the whole batch and the
//! high watermark. tansu is found at `$TANSU`, else `~/.cargo/bin/tansu`, else on the `PATH`
//! (`scripts/test` installs it with the `libsql` feature).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a failure is a failed test

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running broker, stopped when dropped. It runs under `sh`, which stops it when its stdin
/// closes, so a test run that is killed outright leaves no broker behind either.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    _dir: tempfile::TempDir,
}

/// The tansu executable.
pub fn executable() -> String {
    if let Ok(t) = std::env::var("TANSU") {
        return t;
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let installed = format!("{home}/.cargo/bin/tansu");
    if std::path::Path::new(&installed).exists() {
        installed
    } else {
        "tansu".into()
    }
}

/// A port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits (up to 10 s) until a broker just started listens on `port`.
pub fn wait_listening(port: u16) {
    let until = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "tansu did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Broker {
    /// Starts a broker and waits until it listens.
    pub fn start() -> Broker {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let guard = "\"$0\" \"$@\" & pid=$!; read _; kill $pid; wait $pid";
        let child = Command::new("sh")
            .args(["-c", guard, &executable(), "broker"])
            // Relative to its working directory.
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(dir.path())
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu runs (cargo install tansu --locked --features dynostore,libsql)");
        let b = Broker {
            child: Some(child),
            port,
            _dir: dir,
        };
        wait_listening(port);
        b
    }

    /// `host:port` for clients.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the broker now (what it stored is gone: its storage is in memory).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}
