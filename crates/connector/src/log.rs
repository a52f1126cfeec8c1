//! The `log` connector: prints each delivery as one JSON line on stdout, for development.

use std::io::Write;

use serde_json::json;

use crate::config::LogConfig;
use crate::{Connector, Delivery, Verdict};

pub struct Log {
    name: String,
    with_event: bool,
}

impl Log {
    pub fn new(name: &str, c: &LogConfig) -> Log {
        Log {
            name: name.to_owned(),
            with_event: c.with_event,
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
        let mut out = std::io::stdout().lock();
        match writeln!(out, "{line}") {
            Ok(()) => Verdict::Delivered {
                detail: "printed".into(),
            },
            Err(e) => Verdict::retry(format!("stdout: {e}")),
        }
    }
}
