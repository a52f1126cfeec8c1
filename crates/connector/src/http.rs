//! What the HTTP connectors (webhook, sms) share: a client that refuses private addresses unless
//! allowed and follows no redirects, extra headers from the config, and the classification of
//! one request's result into a [`Verdict`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::{Error, Result, Verdict, clip, guard};

/// A client for one connector: the attempt's timeout, no redirects, the private-address guard.
pub fn client(name: &str, timeout: Duration, allow_private: bool) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .user_agent(concat!("storeline/", env!("CARGO_PKG_VERSION")));
    if !allow_private {
        b = b.dns_resolver(Arc::new(guard::PublicOnly));
    }
    b.build().map_err(|e| Error::build(name, e.to_string()))
}

/// The configured extra headers, checked.
pub fn headers(name: &str, h: &BTreeMap<String, String>) -> Result<HeaderMap> {
    let mut out = HeaderMap::new();
    for (k, v) in h {
        let k = HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| Error::build(name, format!("header {k:?}: {e}")))?;
        let v =
            HeaderValue::from_str(v).map_err(|e| Error::build(name, format!("header {k}: {e}")))?;
        out.insert(k, v);
    }
    Ok(out)
}

/// A reject when `url` names a private or loopback IP literally and that is not allowed (names
/// are checked by the client's resolver).
pub fn refuse(url: &reqwest::Url, allow_private: bool) -> Option<Verdict> {
    let host = url.host_str()?;
    guard::refuse_literal(host, allow_private).map(|detail| Verdict::Reject { detail })
}

/// Sends one request and classifies what happened: 2xx delivered; 408, 409, 425, 429 and 5xx
/// retried (with the receiver's `Retry-After`); redirects and other statuses rejected; a refused
/// address rejected; timeouts and connection errors retried.
pub async fn send(req: reqwest::RequestBuilder) -> Verdict {
    // A URL may carry a token (in its path or query), and the detail of an attempt is shown to
    // read keys: the connector's name says where it went.
    match req.send().await.map_err(reqwest::Error::without_url) {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let now = chrono::Utc::now().timestamp_millis();
            let after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| crate::parse_retry_after(v, now));
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
        Err(e) if guard::is_refusal(&e) => {
            // The innermost cause is the guard's own sentence.
            let mut why = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                why = s.to_string();
                src = s.source();
            }
            Verdict::Reject { detail: why }
        }
        Err(e) if e.is_timeout() => Verdict::retry("timed out"),
        Err(e) => {
            // The whole chain: the outer errors say what failed ("client error (Connect)"), the
            // innermost why ("Connection refused").
            let mut why = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                let s_text = s.to_string();
                if !why.contains(&s_text) {
                    why = format!("{why}: {s_text}");
                }
                src = s.source();
            }
            Verdict::retry(clip(&why, 300))
        }
    }
}
