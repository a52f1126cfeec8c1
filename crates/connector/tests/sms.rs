//! The `sms` connector against a real local HTTP server (axum on 127.0.0.1:0) that records every
//! request and answers by the first path segment (`/ok`, `/slow` = 429 with `Retry-After`,
//! `/bad` = 400, `/down` = 503, `/hang` = never in time). The tests check the exact request each
//! preset sends (path, auth, body fields, idempotency key), the rendered text, and how answers,
//! refused addresses and unbuildable messages are classified.

mod common;

use std::time::Duration;

use base64::Engine;
use common::http::Receiver;
use serde_json::json;
use storeline_connector::sms::Sms;
use storeline_connector::{Connector, Delivery, Kind, Verdict, config};

/// An `sms` connector from a `[[connector]]` table, checked as the server would.
fn sms(body: &str) -> Sms {
    let src = format!("name = \"texts\"\ntype = \"sms\"\ntimeout = \"1s\"\n{body}");
    let table: toml::Table = toml::from_str(&src).expect("toml");
    let def = config::parse(&table, "connector[0]").unwrap_or_else(|p| panic!("{p:?}"));
    let Kind::Sms(c) = &def.kind else {
        panic!("not sms")
    };
    Sms::new(&def.name, c, def.timeout).expect("built")
}

const TEMPLATES: &str = r#"
[templates]
shipped = "Hi {{ customer.traits.first_name }}, order {{ data.order }} has \"shipped\""
"#;

fn delivery() -> Delivery {
    Delivery {
        id: "dlv_01JSMS".into(),
        connector: "texts".into(),
        channel: "sms".into(),
        template: Some("shipped".into()),
        customer: Some("cus_ann".into()),
        trigger: "order_shipped".into(),
        event: json!({ "type": "order_shipped" }),
        arrived: None,
        data: json!({ "order": "ord_7" })
            .as_object()
            .cloned()
            .unwrap_or_default(),
        created_at: 1_700_000_000_000,
        attempt: 1,
        key: "cus_ann".into(),
        profile: Some(
            json!({ "id": "cus_ann", "traits": { "first_name": "Ann", "phone": "+4915100000001" } }),
        ),
    }
}

const TEXT: &str = "Hi Ann, order ord_7 has \"shipped\"";

fn assert_delivered(v: &Verdict) {
    assert!(
        matches!(v, Verdict::Delivered { detail } if detail.starts_with("HTTP 200")),
        "{v:?}"
    );
}

#[tokio::test]
async fn infobip_sends_json_with_the_delivery_id_as_message_id() {
    let r = Receiver::start().await;
    let c = sms(&format!(
        "preset = \"infobip\"\nurl = \"{}\"\napi_key = \"key123\"\nfrom = \"Shop\"\nallow_private_network = true\n{TEMPLATES}",
        r.url("/ok/")
    ));
    assert_delivered(&c.attempt(&delivery()).await);
    let seen = r.take();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/ok/sms/2/text/advanced");
    assert_eq!(seen[0].header("authorization"), "App key123");
    assert!(
        seen[0]
            .header("content-type")
            .starts_with("application/json")
    );
    assert_eq!(
        seen[0].json(),
        json!({ "messages": [{
            "destinations": [{ "to": "+4915100000001", "messageId": "dlv_01JSMS" }],
            "from": "Shop",
            "text": TEXT,
        }]})
    );
}

#[tokio::test]
async fn twilio_sends_a_form_with_basic_auth_and_an_idempotency_token() {
    let r = Receiver::start().await;
    let c = sms(&format!(
        "preset = \"twilio\"\nurl = \"{}\"\naccount_sid = \"AC123\"\nauth_token = \"tok\"\nfrom = \"+15005550006\"\nallow_private_network = true\n{TEMPLATES}",
        r.url("/ok")
    ));
    // `data.to` wins over the profile's phone.
    let mut d = delivery();
    d.data.insert("to".into(), json!("+441234567890"));
    assert_delivered(&c.attempt(&d).await);
    let seen = r.take();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/ok/2010-04-01/Accounts/AC123/Messages.json");
    let basic = base64::engine::general_purpose::STANDARD.encode("AC123:tok");
    assert_eq!(seen[0].header("authorization"), format!("Basic {basic}"));
    assert_eq!(seen[0].header("i-twilio-idempotency-token"), "dlv_01JSMS");
    assert_eq!(
        seen[0].header("content-type"),
        "application/x-www-form-urlencoded"
    );
    let pairs = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    assert_eq!(
        seen[0].form(),
        vec![
            pairs("To", "+441234567890"),
            pairs("From", "+15005550006"),
            pairs("Body", TEXT)
        ]
    );
}

#[tokio::test]
async fn custom_renders_the_json_body_with_to_and_text() {
    let r = Receiver::start().await;
    let c = sms(&format!(
        r#"preset = "custom"
url = "{}"
from = "Shop"
to = "{{{{ data.phone }}}}"
body = '{{"phone": {{{{ to | tojson }}}}, "message": {{{{ text | tojson }}}}, "ref": {{{{ delivery.id | tojson }}}}}}'
allow_private_network = true
headers = {{ "X-Api-Key" = "k1" }}
{TEMPLATES}"#,
        r.url("/ok/send")
    ));
    let mut d = delivery();
    d.data.insert("phone".into(), json!(" +33600000000 "));
    assert_delivered(&c.attempt(&d).await);
    let seen = r.take();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/ok/send");
    assert_eq!(seen[0].header("idempotency-key"), "dlv_01JSMS");
    assert_eq!(seen[0].header("x-api-key"), "k1");
    assert_eq!(
        seen[0].json(),
        json!({ "phone": "+33600000000", "message": TEXT, "ref": "dlv_01JSMS" })
    );

    // A body template that does not make JSON is caught before anything is sent.
    let broken = sms(&format!(
        "preset = \"custom\"\nurl = \"{}\"\nfrom = \"Shop\"\nbody = '{{\"m\": \"{{{{ text }}}}\"}}'\nallow_private_network = true\n{TEMPLATES}",
        r.url("/ok/send")
    ));
    let v = broken.attempt(&delivery()).await;
    assert!(
        matches!(&v, Verdict::Reject { detail } if detail.contains("did not render as JSON")),
        "{v:?}"
    );
    assert!(r.take().is_empty());
}

#[tokio::test]
async fn answers_are_classified_like_webhooks() {
    let r = Receiver::start().await;
    let at = |path: &str| {
        sms(&format!(
            "preset = \"infobip\"\nurl = \"{}\"\napi_key = \"k\"\nfrom = \"Shop\"\nallow_private_network = true\n{TEMPLATES}",
            r.url(path)
        ))
    };
    let d = delivery();
    assert_eq!(
        at("/slow").attempt(&d).await,
        Verdict::Retry {
            detail: "HTTP 429 slow down".into(),
            after: Some(Duration::from_secs(7))
        }
    );
    assert_eq!(
        at("/down").attempt(&d).await,
        Verdict::Retry {
            detail: "HTTP 503 maintenance".into(),
            after: None
        }
    );
    let v = at("/bad").attempt(&d).await;
    assert!(
        matches!(&v, Verdict::Reject { detail } if detail.contains("400") && detail.contains("invalid destination")),
        "{v:?}"
    );
    let started = std::time::Instant::now();
    let v = at("/hang").attempt(&d).await;
    assert_eq!(v, Verdict::retry("timed out"));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(r.take().len(), 4);

    // Nothing listening: a connection error, worth retrying.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let c = sms(&format!(
        "preset = \"infobip\"\nurl = \"http://{closed}\"\napi_key = \"k\"\nfrom = \"Shop\"\nallow_private_network = true\n{TEMPLATES}"
    ));
    let v = c.attempt(&d).await;
    assert!(matches!(&v, Verdict::Retry { after: None, .. }), "{v:?}");
}

#[tokio::test]
async fn private_addresses_are_refused_unless_allowed() {
    let r = Receiver::start().await;
    for host in ["127.0.0.1", "localhost"] {
        let c = sms(&format!(
            "preset = \"infobip\"\nurl = \"http://{host}:{}/ok\"\napi_key = \"k\"\nfrom = \"Shop\"\n{TEMPLATES}",
            r.port
        ));
        let v = c.attempt(&delivery()).await;
        assert!(
            matches!(&v, Verdict::Reject { detail } if detail.contains("allow_private_network")),
            "{host}: {v:?}"
        );
    }
    assert!(
        r.take().is_empty(),
        "a refused request reached the receiver"
    );
}

#[tokio::test]
async fn messages_that_cannot_be_built_are_rejected_unsent() {
    let r = Receiver::start().await;
    let c = sms(&format!(
        "preset = \"infobip\"\nurl = \"{}\"\napi_key = \"k\"\nfrom = \"Shop\"\nallow_private_network = true\n{TEMPLATES}",
        r.url("/ok")
    ));
    let mut no_phone = delivery();
    no_phone.profile = Some(json!({ "id": "cus_ann", "traits": { "first_name": "Ann" } }));
    let v = c.attempt(&no_phone).await;
    assert!(
        matches!(&v, Verdict::Reject { detail } if detail.contains("no phone number for customer cus_ann")),
        "{v:?}"
    );

    let mut unknown = delivery();
    unknown.template = Some("refunded".into());
    let v = c.attempt(&unknown).await;
    assert!(
        matches!(&v, Verdict::Reject { detail } if detail.contains("\"refunded\"") && detail.contains("shipped")),
        "{v:?}"
    );

    let mut none = delivery();
    none.template = None;
    assert_eq!(c.attempt(&none).await.outcome(), "reject");
    assert!(r.take().is_empty());
}
