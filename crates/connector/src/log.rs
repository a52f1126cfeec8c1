//! The `log` connector: prints each delivery as one JSON line on stdout, for development.

use std::io::Write;
use std::time::Duration;

use serde_json::json;

use crate::config::LogConfig;
use crate::{Connector, Delivery, Verdict};

pub struct Log {
    name: String,
    with_event: bool,
    timeout: Duration,
}

impl Log {
    pub fn new(name: &str, c: &LogConfig, timeout: Duration) -> Log {
        Log {
            name: name.to_owned(),
            with_event: c.with_event,
            timeout,
        }
    }
}

impl Connector for Log {
    async fn attempt(&self, d: &Delivery) -> Verdict {
        let mut line = json!({
            "connector": self.name, "id": d.id, "channel": d.channel, "template": d.template,
            "customer": d.customer, "trigger": d.trigger, "attempt": d.attempt, "data": d.data,
        });
        if self.with_event {
            line["event"] = d.event.clone();
        }
        // A pipe nobody reads blocks the write: it runs on a blocking thread, so the attempt
        // ends at the timeout and no runtime thread waits with it.
        let write = tokio::task::spawn_blocking(move || {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}")
        });
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(Ok(()))) => Verdict::Delivered {
                detail: "printed".into(),
            },
            Ok(Ok(Err(e))) => Verdict::retry(format!("stdout: {e}")),
            Ok(Err(e)) => Verdict::retry(format!("stdout: the write failed: {e}")),
            Err(_) => Verdict::retry(format!(
                "stdout: not written within {:?} (is anything reading it?)",
                self.timeout
            )),
        }
    }
}
