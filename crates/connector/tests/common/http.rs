//! A real local HTTP server (axum on 127.0.0.1:0) that records every request and answers by the
//! first path segment: `/ok` = 200, `/slow` = 429 with `Retry-After: 7`, `/bad` = 400,
//! `/hang` = no answer for 10 s, anything else (`/down`) = 503. The sms tests point a provider's
//! base URL at it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use serde_json::Value;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: HeaderMap,
    pub body: String,
}

impl Seen {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }
    /// The body as `application/x-www-form-urlencoded` pairs (decoded as a URL query is).
    pub fn form(&self) -> Vec<(String, String)> {
        let url = reqwest::Url::parse(&format!("http://x/?{}", self.body)).expect("form body");
        url.query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }
}

/// The running server; it stops with the test's runtime.
pub struct Receiver {
    pub port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let app =
            axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: String| {
                let log = log.clone();
                async move {
                    let path = uri.path().to_owned();
                    log.lock().expect("lock").push(Seen {
                        path: path.clone(),
                        headers,
                        body,
                    });
                    match path.split('/').nth(1).unwrap_or("") {
                        "ok" => (StatusCode::OK, r#"{"messages":[{"status":"PENDING"}]}"#)
                            .into_response(),
                        "slow" => (
                            StatusCode::TOO_MANY_REQUESTS,
                            [("retry-after", "7")],
                            "slow down",
                        )
                            .into_response(),
                        "bad" => (
                            StatusCode::BAD_REQUEST,
                            r#"{"error":"invalid destination"}"#,
                        )
                            .into_response(),
                        "hang" => {
                            tokio::time::sleep(Duration::from_secs(10)).await;
                            StatusCode::OK.into_response()
                        }
                        _ => (StatusCode::SERVICE_UNAVAILABLE, "maintenance").into_response(),
                    }
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { port, seen }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every request so far, and forgets them.
    pub fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().expect("lock"))
    }
}
