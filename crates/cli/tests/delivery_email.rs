//! Email through the whole path: events into the real server, a trigger's `deliver` to an smtp
//! connector, and a real SMTP server (aiosmtpd, `crates/connector/tests/smtp/receiver.py`) that
//! parses what arrives. The template reads the customer's view as the engine built it from the
//! events (traits set by a later `customer.identified`), so this checks the server's wiring of
//! customer views into templates, not only the connector.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Node, wait_for};
use serde_json::{Value, json};

struct Smtp {
    child: Child,
    port: u16,
    messages: Arc<Mutex<Vec<Value>>>,
}

impl Smtp {
    fn start() -> Smtp {
        let script = format!(
            "{}/../connector/tests/smtp/receiver.py",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut child = Command::new("python3")
            .arg(script)
            // The receiver runs until its stdin closes (or it is killed).
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the aiosmtpd receiver");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let port = loop {
            let line = lines.next().expect("receiver exited").unwrap();
            if let Some(p) = line.strip_prefix("READY ") {
                break p.trim().parse().unwrap();
            }
        };
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&messages);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        Smtp {
            child,
            port,
            messages,
        }
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_email_renders_the_customers_view_and_arrives_at_a_real_smtp_server() {
    let smtp = Smtp::start();
    let triggers = format!(
        r#"
[[connector]]
name = "email"
type = "smtp"
host = "127.0.0.1"
port = {port}
tls = "none"
from = "Shop <shop@example.com>"
retry_schedule = ["0s", "200ms", "500ms"]

[connector.templates.order_confirmation]
subject = "Order {{{{ data.order_id }}}} confirmed, {{{{ customer.traits.first_name }}}}"
text = "Hello {{{{ customer.traits.first_name }}}} ({{{{ customer.traits.plan }}}}), order {{{{ data.order_id }}}} is confirmed."
html = "<p>Hello <b>{{{{ customer.traits.first_name }}}}</b>, order {{{{ data.order_id }}}} is confirmed.</p>"

[[trigger]]
name = "confirm"
on = "checkout.started"
transactional = true
then = [ {{ deliver = "email", template = "order_confirmation", data = {{ order_id = "event.data.cart_id" }} }} ]
"#,
        port = smtp.port
    );
    let node = Node::start(&triggers);
    node.send(&[
        json!({"id": "e1", "source": "t", "type": "customer.identified", "subject": "cus-7",
               "data": { "user_id": "cus-7", "traits": { "email": "ada@example.com", "first_name": "Ada", "plan": "gold <vip>" } }}),
    ])
    .await;
    // The view must hold the traits before the trigger fires (views are per partition and the
    // same customer's events are applied in order, so one request after the other suffices).
    node.send(&[
        json!({"id": "e2", "source": "t", "type": "checkout.started", "subject": "cus-7",
               "data": { "cart_id": "cart-42", "items": [] }}),
    ])
    .await;
    let messages = Arc::clone(&smtp.messages);
    let m = wait_for("the email", Duration::from_secs(20), || {
        let messages = Arc::clone(&messages);
        async move {
            messages
                .lock()
                .unwrap()
                .first()
                .cloned()
                .ok_or_else(|| "no message yet".to_owned())
        }
    })
    .await;
    assert_eq!(m["rcpt_tos"], json!(["ada@example.com"]), "{m}");
    assert_eq!(m["subject"], "Order cart-42 confirmed, Ada", "{m}");
    let text = m["text"].as_str().unwrap();
    assert!(
        text.contains("Hello Ada (gold <vip>), order cart-42 is confirmed."),
        "{text}"
    );
    let html = m["html"].as_str().unwrap();
    assert!(
        html.contains("<p>Hello <b>Ada</b>, order cart-42 is confirmed.</p>"),
        "{html}"
    );
    assert_eq!(m["content_type"], "multipart/alternative", "{m}");
    let id = m["delivery"].as_str().unwrap();
    assert!(id.starts_with("dlv_"), "{m}");
    assert!(m["message_id"].as_str().unwrap().contains(id), "{m}");
    let d = node.delivery(id).await;
    assert_eq!(d["status"], "delivered", "{d}");
    assert_eq!(d["connector"], "email", "{d}");
    assert_eq!(d["attempts"], 1, "{d}");
    assert_eq!(smtp.messages.lock().unwrap().len(), 1);
}
