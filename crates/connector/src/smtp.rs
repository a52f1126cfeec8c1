//! The `smtp` connector: renders an email template for the delivery's customer and hands it to
//! an SMTP relay, falling over to a second relay when the first fails transiently.
//!
//! One attempt is at most one send per server:
//!
//! ```text
//!  render ──► primary ──250──► delivered
//!               │ 5xx ──► reject (the relay refuses this message; another would too)
//!               │ 4xx, refused, timeout, TLS
//!               ▼
//!             failover ──250──► delivered · 5xx ──► reject · transient ──► retry (both details)
//! ```
//!
//! Each message carries `Message-ID: <{delivery id}@storeline>` and `X-Storeline-Delivery`, so a
//! receiver can drop the duplicates that at-least-once delivery brings. Transports are built on
//! the first attempt (lettre's pool spawns a task, which needs the runtime) from settings checked
//! and files read in [`Smtp::new`].

use std::collections::BTreeMap;
use std::time::Duration;

use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::{AsyncSmtpTransportBuilder, Error as SmtpError};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use parking_lot::Mutex;
use serde_json::Value;

use crate::config::{EmailTemplate, SmtpConfig, SmtpServer, SmtpTls};
use crate::{Connector, Delivery, Error, Result, Verdict, clip};

type Transport = AsyncSmtpTransport<Tokio1Executor>;

pub struct Smtp {
    primary: Server,
    failover: Option<Server>,
    from: Mailbox,
    reply_to: Option<Mailbox>,
    templates: BTreeMap<String, EmailTemplate>,
}

/// One relay: its settings, and the pooled transport made from them on first use.
struct Server {
    label: &'static str,
    builder: AsyncSmtpTransportBuilder,
    timeout: Duration,
    transport: Mutex<Option<Transport>>,
}

/// How one send went, before the failover decision.
enum Sent {
    Ok(String),
    Permanent(String),
    Transient(String),
}

impl Smtp {
    pub fn new(name: &str, c: &SmtpConfig, timeout: Duration) -> Result<Smtp> {
        let mailbox = |key: &str, v: &str| {
            v.parse::<Mailbox>()
                .map_err(|e| Error::build(name, format!("{key} {v:?}: {e}")))
        };
        let from = mailbox("from", &c.from)?;
        let reply_to = c
            .reply_to
            .as_deref()
            .map(|r| mailbox("reply_to", r))
            .transpose()?;
        let mut templates = c.templates.clone();
        if let Some(dir) = &c.templates_dir {
            for (tname, t) in read_templates(name, dir)? {
                if templates.contains_key(&tname) {
                    return Err(Error::build(
                        name,
                        format!(
                            "template '{tname}' is defined both inline and in {}",
                            dir.display()
                        ),
                    ));
                }
                templates.insert(tname, t);
            }
        }
        Ok(Smtp {
            primary: Server::new(name, "primary", &c.primary, timeout)?,
            failover: c
                .failover
                .as_ref()
                .map(|f| Server::new(name, "failover", f, timeout))
                .transpose()?,
            from,
            reply_to,
            templates,
        })
    }

    /// The message for a delivery, or why there cannot be one (a permanent failure).
    fn message(&self, d: &Delivery) -> Result<Message, String> {
        let tname = d
            .template
            .as_deref()
            .ok_or("the delivery names no template; smtp needs one")?;
        let t = self.templates.get(tname).ok_or_else(|| {
            let known: Vec<&str> = self.templates.keys().map(String::as_str).collect();
            format!("unknown template '{tname}' (known: {})", known.join(", "))
        })?;
        let to = recipient(d)?;
        let to = to
            .parse::<Mailbox>()
            .map_err(|e| format!("invalid recipient {to:?}: {e}"))?;
        let ctx = crate::template::scope(d);
        let render = |part: &str, src: &str, html: bool| {
            crate::template::render(src, &ctx, html)
                .map_err(|e| format!("template '{tname}' {part}: {e}"))
        };
        // A subject is one line: a newline from the data must not end the header.
        let subject = render("subject", &t.subject, false)?.replace(['\r', '\n'], " ");
        let text = t
            .text
            .as_deref()
            .map(|s| render("text", s, false))
            .transpose()?;
        let html = t
            .html
            .as_deref()
            .map(|s| render("html", s, true))
            .transpose()?;
        let mut b = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject.trim())
            .message_id(Some(format!("<{}@storeline>", id_part(&d.id))))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("X-Storeline-Delivery"),
                d.id.clone(),
            ));
        if let Some(r) = &self.reply_to {
            b = b.reply_to(r.clone());
        }
        let built = match (text, html) {
            (Some(text), Some(html)) => b.multipart(MultiPart::alternative_plain_html(text, html)),
            (Some(text), None) => b.singlepart(SinglePart::plain(text)),
            (None, Some(html)) => b.singlepart(SinglePart::html(html)),
            (None, None) => b.singlepart(SinglePart::plain(String::new())),
        };
        built.map_err(|e| format!("cannot build the message: {e}"))
    }
}

impl Connector for Smtp {
    async fn attempt(&self, d: &Delivery) -> Verdict {
        let msg = match self.message(d) {
            Ok(m) => m,
            Err(detail) => return Verdict::Reject { detail },
        };
        let first = match self.primary.send(&msg).await {
            Sent::Ok(detail) => return Verdict::Delivered { detail },
            Sent::Permanent(detail) => return Verdict::Reject { detail },
            Sent::Transient(detail) => detail,
        };
        let Some(failover) = &self.failover else {
            return Verdict::retry(first);
        };
        tracing::debug!(delivery = %d.id, error = %first, "smtp primary failed; trying the failover");
        match failover.send(&msg).await {
            Sent::Ok(detail) => Verdict::Delivered { detail },
            Sent::Permanent(detail) => Verdict::Reject {
                detail: format!("{detail} (after {first})"),
            },
            Sent::Transient(detail) => Verdict::retry(format!("{first}; {detail}")),
        }
    }
}

impl Server {
    fn new(name: &str, label: &'static str, s: &SmtpServer, timeout: Duration) -> Result<Server> {
        let port = s.port.unwrap_or(match s.tls {
            SmtpTls::None => 25,
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
        });
        let params = || -> Result<TlsParameters> {
            let mut p = TlsParameters::builder(s.host.clone());
            if let Some(ca) = &s.ca_file {
                let pem = std::fs::read(ca).map_err(|e| {
                    Error::build(name, format!("{label} ca_file {}: {e}", ca.display()))
                })?;
                let cert = Certificate::from_pem(&pem).map_err(|e| {
                    Error::build(name, format!("{label} ca_file {}: {e}", ca.display()))
                })?;
                p = p.add_root_certificate(cert);
            }
            p.build()
                .map_err(|e| Error::build(name, format!("{label} tls: {e}")))
        };
        let tls = match s.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::Starttls => Tls::Required(params()?),
            SmtpTls::Tls => Tls::Wrapper(params()?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host)
            .port(port)
            .tls(tls)
            .timeout(Some(timeout));
        if let (Some(u), Some(p)) = (&s.username, &s.password) {
            builder = builder.credentials(Credentials::new(u.clone(), p.clone()));
        }
        Ok(Server {
            label,
            builder,
            timeout,
            transport: Mutex::new(None),
        })
    }

    async fn send(&self, msg: &Message) -> Sent {
        let t = {
            let mut slot = self.transport.lock();
            slot.get_or_insert_with(|| self.builder.clone().build())
                .clone()
        };
        // lettre bounds only the connect with its timeout; a relay that stops answering
        // mid-transaction is cut off here.
        let Ok(sent) = tokio::time::timeout(self.timeout, t.send(msg.clone())).await else {
            // The abandoned connection may be mid-command; the pool must not hand it out again,
            // so the whole pool is shut down (in-flight sends finish) and made anew next time.
            if let Some(old) = self.transport.lock().take() {
                tokio::spawn(async move { old.shutdown().await });
            }
            return Sent::Transient(format!(
                "{}: no answer within {}",
                self.label,
                humantime::format_duration(self.timeout)
            ));
        };
        match sent {
            Ok(r) => {
                let text: Vec<&str> = r.message().collect();
                Sent::Ok(format!(
                    "{} {} via {}",
                    r.code(),
                    clip(&text.join(" "), 200),
                    self.label
                ))
            }
            Err(e) => {
                let detail = format!("{}: {}", self.label, clip(&describe(&e), 300));
                if e.is_permanent() {
                    Sent::Permanent(detail)
                } else {
                    Sent::Transient(detail)
                }
            }
        }
    }
}

/// The error and its sources, so "network error" says which ("connection refused").
fn describe(e: &SmtpError) -> String {
    let mut why = if e.is_timeout() {
        "timed out".to_owned()
    } else {
        e.to_string()
    };
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let s_text = s.to_string();
        if !why.contains(&s_text) {
            why = format!("{why}: {s_text}");
        }
        src = s.source();
    }
    why
}

/// Where the email goes: `data.to`, else the customer's `email` trait, else the first email
/// identity of the customer's view.
fn recipient(d: &Delivery) -> Result<String, String> {
    if let Some(Value::String(to)) = d.data.get("to")
        && !to.trim().is_empty()
    {
        return Ok(to.trim().to_owned());
    }
    let profile = d.profile.as_ref().unwrap_or(&Value::Null);
    let first = |v: &Value| -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Array(a) => a.iter().find_map(|v| v.as_str().map(str::to_owned)),
            Value::Object(m) => m.values().find_map(|v| v.as_str().map(str::to_owned)),
            _ => None,
        }
    };
    [
        &profile["traits"]["email"],
        &profile["identities"]["emails"],
        &profile["identities"]["email"],
    ]
    .into_iter()
    .filter_map(first)
    .map(|s| s.trim().to_owned())
    .find(|s| !s.is_empty())
    .ok_or_else(|| {
        let who = d
            .customer
            .as_deref()
            .or(profile["id"].as_str())
            .unwrap_or("?");
        format!("no email address for customer {who} (no data.to, traits.email or email identity)")
    })
}

/// The delivery id as a Message-ID local part: only characters that need no quoting.
fn id_part(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The `{name}.toml` templates of a folder, each checked as config checking would have.
fn read_templates(name: &str, dir: &std::path::Path) -> Result<Vec<(String, EmailTemplate)>> {
    let fail = |what: String| Error::build(name, what);
    let entries = std::fs::read_dir(dir)
        .map_err(|e| fail(format!("templates_dir {}: {e}", dir.display())))?;
    let mut out = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| fail(format!("templates_dir {}: {e}", dir.display())))?
            .path();
        let Some(tname) = path
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(|f| f.strip_suffix(".toml"))
        else {
            continue;
        };
        let src = std::fs::read_to_string(&path)
            .map_err(|e| fail(format!("template {}: {e}", path.display())))?;
        let t: EmailTemplate = toml::from_str(&src).map_err(|e| {
            fail(format!(
                "template {}: {}",
                path.display(),
                e.message().trim()
            ))
        })?;
        for src in [Some(&t.subject), t.html.as_ref(), t.text.as_ref()]
            .into_iter()
            .flatten()
        {
            crate::template::check(src)
                .map_err(|e| fail(format!("template {}: {e}", path.display())))?;
        }
        if t.html.is_none() && t.text.is_none() {
            return Err(fail(format!(
                "template {}: a template needs `html`, `text` or both",
                path.display()
            )));
        }
        out.push((tname.to_owned(), t));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn delivery(profile: Value, data: Value) -> Delivery {
        serde_json::from_value(json!({
            "id": "dlv_1", "connector": "mail", "channel": "email", "created_at": 0,
            "attempt": 1, "key": "k", "customer": "cus_1", "profile": profile, "data": data,
        }))
        .expect("a delivery")
    }

    #[test]
    fn recipient_prefers_data_then_traits_then_identities() {
        let p = json!({ "traits": { "email": "t@x.io" }, "identities": { "emails": ["i@x.io"] } });
        assert_eq!(
            recipient(&delivery(p.clone(), json!({ "to": "d@x.io" }))),
            Ok("d@x.io".into())
        );
        assert_eq!(recipient(&delivery(p, json!({}))), Ok("t@x.io".into()));
        let p = json!({ "traits": {}, "identities": { "emails": ["i@x.io", "j@x.io"] } });
        assert_eq!(recipient(&delivery(p, json!({}))), Ok("i@x.io".into()));
        let none = recipient(&delivery(
            json!({ "identities": { "emails": [] } }),
            json!({}),
        ));
        assert!(none.is_err_and(|e| e.contains("cus_1")));
        assert_eq!(id_part("dlv_01J<x>@y"), "dlv_01J_x__y");
    }
}
