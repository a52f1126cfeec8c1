//! The `webhook` connector: one JSON POST per attempt, signed per Standard Webhooks
//! (`webhook-id` = the delivery id, `webhook-timestamp`, `webhook-signature`), with the delivery
//! id also as `Idempotency-Key`. 2xx is delivered; 408/409/425/429/5xx, timeouts and connection
//! errors are retried (honouring `Retry-After`); other statuses, redirects and refused private
//! addresses are rejected.

use std::time::Duration;

use serde_json::json;

use crate::config::WebhookConfig;
use crate::signature::{self, Secret};
use crate::{Connector, Delivery, Error, Result, Verdict};

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
        let url = reqwest::Url::parse(&c.url).map_err(|e| {
            Error::build(
                name,
                format!("url {:?}: {e}", crate::secrets::redact_url(&c.url)),
            )
        })?;
        let client = crate::http::client(name, timeout, c.allow_private_network)?;
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
        let headers = crate::http::headers(name, &c.headers)?;
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
        if let Some(refused) = crate::http::refuse(&self.url, self.allow_private) {
            return refused;
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
        crate::http::send(req.body(body)).await
    }
}
