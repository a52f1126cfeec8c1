//! The `sms` connector: one HTTP request to an SMS provider per attempt, shaped by a preset
//! (Infobip, Twilio, or a `custom` JSON body template). The text is the delivery's template
//! rendered with the customer in scope; the recipient is the `to` template, else `data.to`, else
//! the customer's `traits.phone`. The delivery id goes where each provider drops duplicates by
//! (Infobip's `messageId`, Twilio's `I-Twilio-Idempotency-Token`, `Idempotency-Key` for custom).
//!
//! Classification follows the webhook connector: 2xx is delivered; 408/409/425/429/5xx,
//! timeouts and connection errors are retried (honouring `Retry-After`); other statuses,
//! redirects, refused private addresses and messages that cannot be built (no template, no phone
//! number) are rejected, since retrying cannot fix them.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::config::{SmsConfig, SmsPreset};
use crate::{Connector, Delivery, Error, Result, Verdict, clip, template};

const TWILIO_URL: &str = "https://api.twilio.com";

pub struct Sms {
    shape: Shape,
    /// The full endpoint, built once from the preset and the base URL.
    url: reqwest::Url,
    client: reqwest::Client,
    from: String,
    to: Option<String>,
    templates: BTreeMap<String, String>,
    allow_private: bool,
    headers: HeaderMap,
}

/// What each preset needs to shape a request.
enum Shape {
    Infobip { api_key: String },
    Twilio { sid: String, token: String },
    Custom { body: String },
}

impl Sms {
    pub fn new(name: &str, c: &SmsConfig, timeout: Duration) -> Result<Sms> {
        // Checked in config already; a definition built without checking still fails cleanly.
        let need = |v: &Option<String>, key: &str| {
            v.clone().ok_or_else(|| {
                let preset = format!("{:?}", c.preset).to_lowercase();
                Error::build(name, format!("the {preset} preset needs `{key}`"))
            })
        };
        let (shape, base, path) = match c.preset {
            SmsPreset::Infobip => {
                let shape = Shape::Infobip {
                    api_key: need(&c.api_key, "api_key")?,
                };
                (
                    shape,
                    need(&c.url, "url")?,
                    vec!["sms", "2", "text", "advanced"],
                )
            }
            SmsPreset::Twilio => {
                let sid = need(&c.account_sid, "account_sid")?;
                let token = need(&c.auth_token, "auth_token")?;
                let base = c.url.clone().unwrap_or_else(|| TWILIO_URL.to_owned());
                let path = vec![
                    "2010-04-01",
                    "Accounts",
                    c.account_sid.as_deref().unwrap_or_default(),
                    "Messages.json",
                ];
                (Shape::Twilio { sid, token }, base, path)
            }
            SmsPreset::Custom => {
                let shape = Shape::Custom {
                    body: need(&c.body, "body")?,
                };
                (shape, need(&c.url, "url")?, Vec::new())
            }
        };
        let mut url = reqwest::Url::parse(&base).map_err(|e| {
            Error::build(
                name,
                format!("url {:?}: {e}", crate::secrets::redact_url(&base)),
            )
        })?;
        if !path.is_empty() {
            // Segments are escaped, so an odd account SID cannot change the path.
            url.path_segments_mut()
                .map_err(|()| {
                    Error::build(
                        name,
                        format!(
                            "url {:?} cannot take a path",
                            crate::secrets::redact_url(&base)
                        ),
                    )
                })?
                .pop_if_empty()
                .extend(path);
        }
        let client = crate::http::client(name, timeout, c.allow_private_network)?;
        let headers = crate::http::headers(name, &c.headers)?;
        Ok(Sms {
            shape,
            url,
            client,
            from: c.from.clone(),
            to: c.to.clone(),
            templates: c.templates.clone(),
            allow_private: c.allow_private_network,
            headers,
        })
    }

    /// The message text: the delivery's template, rendered.
    fn text(&self, d: &Delivery, scope: &Value) -> Result<String, String> {
        let Some(name) = d.template.as_deref() else {
            return Err("the delivery names no template; an sms action needs `template`".into());
        };
        let Some(src) = self.templates.get(name) else {
            let known: Vec<&str> = self.templates.keys().map(String::as_str).collect();
            return Err(format!(
                "no sms template named {name:?} (this connector has: {})",
                known.join(", ")
            ));
        };
        template::render(src, scope, false).map_err(|e| format!("template {name:?}: {e}"))
    }

    /// The recipient: the `to` template, else `data.to`, else the customer's `traits.phone`;
    /// the first that is not blank.
    fn recipient(&self, d: &Delivery, scope: &Value) -> Result<String, String> {
        if let Some(src) = &self.to {
            let to = template::render(src, scope, false).map_err(|e| format!("`to`: {e}"))?;
            if !to.trim().is_empty() {
                return Ok(to.trim().to_owned());
            }
        }
        let from_data = d.data.get("to").and_then(Value::as_str);
        let from_profile = d
            .profile
            .as_ref()
            .and_then(|p| p.pointer("/traits/phone"))
            .and_then(Value::as_str);
        from_data
            .into_iter()
            .chain(from_profile)
            .map(str::trim)
            .find(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| {
                format!(
                    "no phone number for customer {}: set `to` on the connector, `data.to` on \
                     the action, or the customer's `phone` trait",
                    d.customer.as_deref().unwrap_or("(none)")
                )
            })
    }

    /// The request for one attempt, or why there can be none.
    fn request(&self, d: &Delivery) -> Result<reqwest::RequestBuilder, String> {
        let mut scope = template::scope(d);
        let text = self.text(d, &scope)?;
        let to = self.recipient(d, &scope)?;
        let req = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone());
        Ok(match &self.shape {
            Shape::Infobip { api_key } => req
                .header("authorization", format!("App {api_key}"))
                .json(&json!({ "messages": [{
                    "destinations": [{ "to": to, "messageId": d.id }],
                    "from": self.from,
                    "text": text,
                }]})),
            Shape::Twilio { sid, token } => req
                .basic_auth(sid, Some(token))
                .header("i-twilio-idempotency-token", &d.id)
                .form(&[("To", &to), ("From", &self.from), ("Body", &text)]),
            Shape::Custom { body: src } => {
                if let Value::Object(m) = &mut scope {
                    m.insert("to".into(), Value::String(to));
                    m.insert("text".into(), Value::String(text));
                }
                let body =
                    template::render(src, &scope, false).map_err(|e| format!("`body`: {e}"))?;
                // Checked here so a template that forgot `| tojson` around a quote is caught
                // before the provider answers with a confusing 400.
                if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&body) {
                    return Err(format!(
                        "`body` did not render as JSON ({e}): {}",
                        clip(&body, 200)
                    ));
                }
                req.header("content-type", "application/json")
                    .header("idempotency-key", &d.id)
                    .body(body)
            }
        })
    }
}

impl Connector for Sms {
    async fn attempt(&self, d: &Delivery) -> Verdict {
        if let Some(refused) = crate::http::refuse(&self.url, self.allow_private) {
            return refused;
        }
        match self.request(d) {
            Ok(req) => crate::http::send(req).await,
            Err(detail) => Verdict::Reject { detail },
        }
    }
}
