//! The `webhook` connector: one JSON POST per attempt, signed per Standard Webhooks
//! (`webhook-id` = the delivery id, `webhook-timestamp`, `webhook-signature`), with the delivery
//! id also as `Idempotency-Key`. 2xx is delivered; 408/409/425/429/5xx, timeouts and connection
//! errors are retried (honouring `Retry-After`); other statuses, redirects and refused private
//! addresses are rejected.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::config::WebhookConfig;
use crate::signature::{self, Secret};
use crate::{Connector, Delivery, Error, Result, Verdict, clip, guard};

pub struct Webhook {
    url: reqwest::Url,
    client: reqwest::Client,
    secret: Option<Secret>,
    previous: Option<(Secret, Option<i64>)>,
    allow_private: bool,
    headers: reqwest::header::HeaderMap,
}

impl Webhook {
    pub fn new(name: &str, c: &WebhookConfig, timeout: Duration) -> Result<Webhook> {
        let url = reqwest::Url::parse(&c.url)
            .map_err(|e| Error::build(name, format!("url {:?}: {e}", c.url)))?;
        let mut b = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .user_agent(concat!("storeline/", env!("CARGO_PKG_VERSION")));
        if !c.allow_private_network {
            b = b.dns_resolver(Arc::new(guard::PublicOnly));
        }
        let client = b.build().map_err(|e| Error::build(name, e.to_string()))?;
        let secret = c
            .secret
            .as_deref()
            .map(Secret::parse)
            .transpose()
            .map_err(|e| Error::build(name, e))?;
        let until = c
            .previous_secret_until
            .as_deref()
            .and_then(|u| chrono::DateTime::parse_from_rfc3339(u).ok())
            .map(|d| d.timestamp_millis());
        let previous = c
            .previous_secret
            .as_deref()
            .map(Secret::parse)
            .transpose()
            .map_err(|e| Error::build(name, e))?
            .map(|s| (s, until));
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &c.headers {
            let k = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| Error::build(name, format!("header {k:?}: {e}")))?;
            let v = reqwest::header::HeaderValue::from_str(v)
                .map_err(|e| Error::build(name, format!("header {k}: {e}")))?;
            headers.insert(k, v);
        }
        Ok(Webhook {
            url,
            client,
            secret,
            previous,
            allow_private: c.allow_private_network,
            headers,
        })
    }

    /// The request body a receiver gets.
    pub fn body(d: &Delivery) -> serde_json::Value {
        json!({
            "id": d.id,
            "type": d.template.clone().unwrap_or_else(|| d.trigger.clone()),
            "timestamp": chrono::DateTime::from_timestamp_millis(d.created_at)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            "trigger": d.trigger,
            "customer": d.customer,
            "data": d.data,
            "event": d.event,
            "arrived": d.arrived,
        })
    }
}

impl Connector for Webhook {
    async fn attempt(&self, d: &Delivery) -> Verdict {
        if let Some(host) = self.url.host_str()
            && let Some(why) = guard::refuse_literal(host, self.allow_private)
        {
            return Verdict::Reject { detail: why };
        }
        let body = match serde_json::to_vec(&Webhook::body(d)) {
            Ok(b) => b,
            Err(e) => {
                return Verdict::Reject {
                    detail: format!("cannot encode the payload: {e}"),
                };
            }
        };
        let now = chrono::Utc::now();
        let ts = now.timestamp();
        let mut req = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header("content-type", "application/json")
            .header("webhook-id", &d.id)
            .header("webhook-timestamp", ts.to_string())
            .header("idempotency-key", &d.id);
        if let Some(s) = &self.secret {
            let mut keys = vec![s];
            if let Some((p, until)) = &self.previous
                && until.is_none_or(|u| now.timestamp_millis() < u)
            {
                keys.push(p);
            }
            req = req.header(
                "webhook-signature",
                signature::header(&keys, &d.id, ts, &body),
            );
        }
        match req.body(body).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| crate::parse_retry_after(v, now.timestamp_millis()));
                let text = resp.text().await.unwrap_or_default();
                let detail = format!("HTTP {status} {}", clip(text.trim(), 200));
                if (200..300).contains(&status) {
                    Verdict::Delivered { detail }
                } else if (300..400).contains(&status) {
                    Verdict::Reject {
                        detail: format!(
                            "{detail} (redirects are not followed; configure the final URL)"
                        ),
                    }
                } else if crate::http_retryable(status) {
                    Verdict::Retry { detail, after }
                } else {
                    Verdict::Reject { detail }
                }
            }
            Err(e) => {
                if guard::is_refusal(&e) {
                    let mut why = e.to_string();
                    let mut src = std::error::Error::source(&e);
                    while let Some(s) = src {
                        why = s.to_string();
                        src = s.source();
                    }
                    Verdict::Reject { detail: why }
                } else if e.is_timeout() {
                    Verdict::retry("timed out")
                } else {
                    let mut why = e.to_string();
                    if let Some(s) = std::error::Error::source(&e) {
                        why = format!("{why}: {s}");
                    }
                    Verdict::retry(clip(&why, 300))
                }
            }
        }
    }
}
