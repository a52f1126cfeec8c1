//! A real SMTP server: aiosmtpd (`tests/smtp/receiver.py`) as a child process on a free port. It
//! prints every message it accepts, parsed by Python's email library, as a JSON line (and, with
//! `--log-rcpt`, every RCPT it answers); recipients starting with `reject` get 550, `tempfail`
//! 451, and `slow` no answer for an hour.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// A running receiver; killed when dropped.
pub struct Receiver {
    child: Child,
    pub port: u16,
    lines: mpsc::Receiver<String>,
}

impl Receiver {
    pub fn start(args: &[&str]) -> Receiver {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp/receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(args)
            // The receiver also exits when its stdin closes, should this process die first.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the receiver (pip install -r tests/requirements.txt)");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut r = Receiver {
            child,
            port: 0,
            lines,
        };
        let ready = r
            .line(Duration::from_secs(10))
            .expect("the receiver starts");
        r.port = ready
            .strip_prefix("READY ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {ready:?}"));
        r
    }

    pub fn line(&self, wait: Duration) -> Option<String> {
        self.lines.recv_timeout(wait).ok()
    }

    /// The next message the receiver accepted.
    pub fn message(&self) -> Value {
        let line = self
            .line(Duration::from_secs(5))
            .expect("the receiver got a message");
        serde_json::from_str(&line).expect("a JSON line")
    }

    pub fn assert_nothing_received(&self) {
        if let Some(l) = self.line(Duration::from_millis(300)) {
            panic!("the receiver should have got nothing, got {l}");
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
