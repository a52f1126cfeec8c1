//! The `smtp` connector against a real SMTP server: aiosmtpd (`tests/smtp/receiver.py`) runs as a
//! child process on a free port and prints every message it accepts, parsed by Python's email
//! library, as a JSON line. The tests check what a mail client would read, how failures are
//! classified, failover, and STARTTLS with a private certificate and AUTH.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::smtp::Receiver;
use common::{build, free_port as closed_port};
use serde_json::{Value, json};
use storeline_connector::{Built, Connector, Delivery, Verdict, config};

/// A plain-text connector to `port` (primary) and optionally `failover`, with inline templates.
fn plain(port: u16, failover: Option<u16>) -> Built {
    let failover = failover
        .map(|p| format!("[failover]\nhost = \"127.0.0.1\"\nport = {p}\ntls = \"none\"\n"))
        .unwrap_or_default();
    build(&format!(
        r#"
        name = "mail"
        type = "smtp"
        host = "127.0.0.1"
        port = {port}
        tls = "none"
        timeout = "5s"
        from = "Shop <shop@example.com>"
        [templates.note]
        subject = "Note for {{{{ customer.traits.first_name }}}}"
        text = "Hello {{{{ customer.traits.first_name }}}}"
        {failover}
        "#
    ))
}

fn delivery(id: &str, template: &str, profile: Value, data: Value) -> Delivery {
    Delivery {
        id: id.to_owned(),
        connector: "mail".into(),
        channel: "email".into(),
        template: Some(template.to_owned()),
        customer: Some("cus_ann".into()),
        trigger: "welcome".into(),
        event: json!({ "type": "customer.created" }),
        arrived: None,
        data: data.as_object().cloned().unwrap_or_default(),
        created_at: 1_764_000_000_000,
        attempt: 1,
        key: "cus_ann".into(),
        profile: Some(profile),
    }
}

fn ann() -> Value {
    json!({
        "id": "cus_ann",
        "traits": { "email": "ann@example.com", "first_name": "Ann <&> O'Neil" },
        "identities": { "all": ["email:ann@example.com"], "emails": ["ann@example.com"] },
    })
}

fn detail_of(v: &Verdict, outcome: &str) -> String {
    assert_eq!(v.outcome(), outcome, "{v:?}");
    v.detail().to_owned()
}

#[tokio::test]
async fn renders_a_multipart_email_from_a_templates_dir() {
    let rx = Receiver::start(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("welcome.toml"),
        r#"
subject = "Welcome, {{ customer.traits.first_name }}"
text = "Hi {{ customer.traits.first_name }}, your code is {{ data.code }}."
html = "<p>Hi {{ customer.traits.first_name }}, your code is <b>{{ data.code }}</b>.</p>"
"#,
    )
    .expect("write a template");
    let mail = build(&format!(
        r#"
        name = "mail"
        type = "smtp"
        host = "127.0.0.1"
        port = {}
        tls = "none"
        from = "Shop <shop@example.com>"
        reply_to = "help@example.com"
        templates_dir = {:?}
        "#,
        rx.port,
        dir.path().display().to_string()
    ));

    let d = delivery(
        "dlv_01JWELCOME",
        "welcome",
        ann(),
        json!({ "code": "A&B-42" }),
    );
    let detail = detail_of(&mail.attempt(&d).await, "delivered");
    assert!(detail.starts_with("250 "), "{detail}");
    assert!(detail.ends_with("via primary"), "{detail}");
    assert!(
        detail.contains("dlv_01JWELCOME"),
        "the receiver's reply is kept: {detail}"
    );

    let m = rx.message();
    assert_eq!(m["rcpt_tos"], json!(["ann@example.com"]));
    assert_eq!(m["mail_from"], "shop@example.com");
    assert_eq!(m["from"], "Shop <shop@example.com>");
    assert_eq!(m["reply_to"], "help@example.com");
    assert_eq!(m["subject"], "Welcome, Ann <&> O'Neil");
    assert_eq!(m["content_type"], "multipart/alternative");
    assert_eq!(m["message_id"], "<dlv_01JWELCOME@storeline>");
    assert_eq!(m["delivery"], "dlv_01JWELCOME");
    let text = m["text"].as_str().expect("a text part");
    assert!(
        text.contains("Hi Ann <&> O'Neil, your code is A&B-42."),
        "{text}"
    );
    let html = m["html"].as_str().expect("an html part");
    assert!(
        html.contains("<p>Hi Ann &lt;&amp;&gt; O&#x27;Neil, your code is <b>A&amp;B-42</b>.</p>"),
        "{html}"
    );

    // `data.to` wins over the profile; a text-only template makes a single text/plain part; the
    // first email identity is used when there is no email trait.
    let d = delivery(
        "dlv_2",
        "welcome",
        ann(),
        json!({ "to": "Ops <ops@example.com>", "code": 1 }),
    );
    detail_of(&mail.attempt(&d).await, "delivered");
    assert_eq!(rx.message()["rcpt_tos"], json!(["ops@example.com"]));

    let note = plain(rx.port, None);
    let p = json!({ "traits": { "first_name": "Bo" }, "identities": { "emails": ["bo@example.com", "b2@example.com"] } });
    detail_of(
        &note.attempt(&delivery("dlv_3", "note", p, json!({}))).await,
        "delivered",
    );
    let m = rx.message();
    assert_eq!(m["rcpt_tos"], json!(["bo@example.com"]));
    assert_eq!(m["content_type"], "text/plain");
    assert_eq!(m["html"], Value::Null);
    assert!(
        m["text"].as_str().is_some_and(|t| t.contains("Hello Bo")),
        "{m}"
    );
}

#[tokio::test]
async fn fails_over_when_the_primary_is_down() {
    let rx = Receiver::start(&[]);
    let mail = plain(closed_port(), Some(rx.port));
    let d = delivery("dlv_fo", "note", ann(), json!({}));
    let detail = detail_of(&mail.attempt(&d).await, "delivered");
    assert!(detail.ends_with("via failover"), "{detail}");
    assert_eq!(rx.message()["delivery"], "dlv_fo");

    // A primary that takes the connection but never greets: cut off after the timeout (lettre
    // alone would wait forever), then the failover.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let mail = build(&format!(
        r#"
        name = "mail"
        type = "smtp"
        host = "127.0.0.1"
        port = {port}
        tls = "none"
        timeout = "1s"
        from = "shop@example.com"
        failover = {{ host = "127.0.0.1", port = {}, tls = "none" }}
        templates.note = {{ subject = "s", text = "t" }}
        "#,
        rx.port
    ));
    let started = std::time::Instant::now();
    let d = delivery("dlv_slow", "note", ann(), json!({}));
    let detail = detail_of(&mail.attempt(&d).await, "delivered");
    assert!(detail.ends_with("via failover"), "{detail}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(rx.message()["delivery"], "dlv_slow");
}

#[tokio::test]
async fn classifies_failures() {
    let rx = Receiver::start(&[]);
    let p = ann();

    // Both relays down: transient, and the detail names both.
    let down = plain(closed_port(), Some(closed_port()));
    let detail = detail_of(
        &down
            .attempt(&delivery("dlv_a", "note", p.clone(), json!({})))
            .await,
        "retry",
    );
    assert!(
        detail.contains("primary:") && detail.contains("failover:"),
        "{detail}"
    );
    assert!(detail.to_lowercase().contains("refused"), "{detail}");

    // A 451 from both relays (the same server twice) is transient too.
    let mail = plain(rx.port, Some(rx.port));
    let to = json!({ "to": "tempfail@example.com" });
    let detail = detail_of(
        &mail
            .attempt(&delivery("dlv_b", "note", p.clone(), to))
            .await,
        "retry",
    );
    assert_eq!(detail.matches("451").count(), 2, "{detail}");

    // A 550 for the recipient is permanent: no failover, straight to the DLQ.
    let to = json!({ "to": "reject-me@example.com" });
    let detail = detail_of(
        &mail
            .attempt(&delivery("dlv_c", "note", p.clone(), to))
            .await,
        "reject",
    );
    assert!(
        detail.contains("550") && detail.contains("no such mailbox"),
        "{detail}"
    );
    assert!(detail.starts_with("primary:"), "{detail}");

    let detail = detail_of(
        &mail
            .attempt(&delivery("dlv_d", "nope", p.clone(), json!({})))
            .await,
        "reject",
    );
    assert!(
        detail.contains("unknown template 'nope'") && detail.contains("note"),
        "{detail}"
    );

    let nobody =
        json!({ "id": "cus_x", "traits": { "first_name": "X" }, "identities": { "emails": [] } });
    let detail = detail_of(
        &mail
            .attempt(&delivery("dlv_e", "note", nobody, json!({})))
            .await,
        "reject",
    );
    assert!(
        detail.contains("no email address for customer cus_ann"),
        "{detail}"
    );

    let bad = json!({ "to": "not an address" });
    detail_of(
        &mail.attempt(&delivery("dlv_f", "note", p, bad)).await,
        "reject",
    );

    rx.assert_nothing_received();
}

#[tokio::test]
async fn starttls_with_a_private_certificate_and_auth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ok = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        // rustls refuses a CA certificate as the server's own.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(ok.success());
    let rx = Receiver::start(&[
        "--cert",
        &cert.display().to_string(),
        "--key",
        &key.display().to_string(),
        "--user",
        "shop",
        "--password",
        "s3cret",
    ]);
    let mail = |extra: &str| {
        build(&format!(
            r#"
            name = "mail"
            type = "smtp"
            host = "localhost"
            port = {}
            tls = "starttls"
            timeout = "5s"
            from = "shop@example.com"
            {extra}
            [templates.note]
            subject = "Hi"
            text = "over TLS"
            "#,
            rx.port
        ))
    };
    let ca = format!("ca_file = {:?}", cert.display().to_string());
    let d = delivery("dlv_tls", "note", ann(), json!({}));

    let good = mail(&format!("{ca}\nusername = \"shop\"\npassword = \"s3cret\""));
    detail_of(&good.attempt(&d).await, "delivered");
    let m = rx.message();
    assert_eq!(m["tls"], true);
    assert_eq!(m["auth"], true);
    assert_eq!(m["delivery"], "dlv_tls");

    // Without the private root the certificate is not trusted: nothing is sent in clear.
    let untrusted = mail("username = \"shop\"\npassword = \"s3cret\"");
    let detail = detail_of(&untrusted.attempt(&d).await, "retry");
    assert!(
        detail.contains("tls") || detail.contains("certificate"),
        "{detail}"
    );

    // Wrong credentials: the relay's 535 is permanent.
    let wrong = mail(&format!("{ca}\nusername = \"shop\"\npassword = \"nope\""));
    let detail = detail_of(&wrong.attempt(&d).await, "reject");
    assert!(detail.contains("535"), "{detail}");
    rx.assert_nothing_received();
}

#[test]
fn config_checks_the_servers() {
    let table: toml::Table = toml::from_str(
        r#"
        name = "mail"
        type = "smtp"
        host = "relay"
        tls = "none"
        ca_file = "/etc/ca.pem"
        username = "u"
        from = "shop@example.com"
        [failover]
        host = ""
        "#,
    )
    .expect("toml");
    let problems = config::parse(&table, "connector[0]").expect_err("invalid");
    let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let all = all.join("\n");
    assert!(all.contains("\"mail\".ca_file"), "{all}");
    assert!(
        all.contains("`username` and `password` go together"),
        "{all}"
    );
    assert!(all.contains("\"mail\".failover.host"), "{all}");
}
