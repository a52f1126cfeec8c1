//! Connections beyond `server.max_connections`: each is answered and closed rather than left
//! in the listener's queue, so clients (and health checks) learn at once that the server is
//! full. `GET /healthz` is answered 200 (the process is alive: an orchestrator should not
//! restart a server for being busy); anything else 503 `too_many_connections` with
//! `Retry-After: 1` and `Connection: close`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// Connections beyond the cap being answered 503 at one time; more are dropped unanswered.
const REFUSING_MAX: usize = 64;
/// How long an over-the-cap connection may take to send its request, and then to close.
const REFUSE_WAIT: Duration = Duration::from_secs(1);

/// The whole answer to a connection beyond the cap, written as is.
fn too_many_connections(max: usize) -> Vec<u8> {
    let body = ApiError::unavailable(format!(
        "the server has {max} open connections, its limit (server.max_connections); retry in \
         a moment"
    ))
    .with_code("too_many_connections")
    .with_details(serde_json::json!({ "max_connections": max }));
    let body = serde_json::json!({ "error": {
        "code": body.code, "message": body.message, "details": body.details,
    }})
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The answer to `GET /healthz` beyond the cap, as `ops::healthz` gives it.
const ALIVE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\
content-length: 15\r\n\r\n{\"status\":\"ok\"}";

/// The answer to a connection beyond the cap that sent this request head (or part of one):
/// the liveness check is answered, so an orchestrator does not restart a server that is busy.
fn refusal_for<'a>(head: &[u8], too_many: &'a [u8]) -> &'a [u8] {
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let path = line.strip_prefix(b"GET /healthz").unwrap_or(b"-");
    if path.starts_with(b" ") || path.starts_with(b"?") {
        ALIVE
    } else {
        too_many
    }
}

/// Connections beyond the cap being answered.
pub(super) struct Refusals {
    slots: Arc<Semaphore>,
    too_many: Bytes,
}

impl Refusals {
    /// Answers for a server whose cap is `max` connections.
    pub(super) fn new(max: usize) -> Refusals {
        Refusals {
            slots: Arc::new(Semaphore::new(REFUSING_MAX)),
            too_many: Bytes::from(too_many_connections(max)),
        }
    }

    /// Answers a connection beyond the cap and closes it. While few such answers are under
    /// way, this reads the request first and waits for the client to close, so the client is
    /// not reset before it reads the answer; beyond that it answers what has arrived already
    /// (without waiting) and drops the connection.
    pub(super) fn refuse(&self, tcp: TcpStream) {
        let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
            let mut head = [0u8; 512];
            let n = tcp.try_read(&mut head).unwrap_or(0);
            let _ = tcp.try_write(refusal_for(&head[..n], &self.too_many));
            return;
        };
        tokio::spawn(answer_refused(tcp, self.too_many.clone(), permit));
    }
}

/// Reads the refused connection's request head (for a while), answers, and waits (for a
/// while) for the client to close. `permit` is its slot among the refusals under way.
async fn answer_refused(mut tcp: TcpStream, too_many: Bytes, permit: OwnedSemaphorePermit) {
    let mut buf = [0u8; 2048];
    let mut head = Vec::new();
    let _ = tokio::time::timeout(REFUSE_WAIT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 << 10 {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let answer = refusal_for(&head, &too_many);
    let _ = tokio::time::timeout(REFUSE_WAIT, async {
        tcp.write_all(answer).await?;
        tcp.shutdown().await?;
        // Read what else the client sends (a body) until it closes.
        while tcp.read(&mut buf).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
    drop(permit);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beyond_the_cap_only_the_liveness_check_is_answered_200() {
        let tm: &[u8] = b"too many";
        for head in [
            &b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET /healthz?probe=1 HTTP/1.1\r\n",
        ] {
            assert_eq!(refusal_for(head, tm), ALIVE);
        }
        for head in [
            &b"GET /healthzz HTTP/1.1\r\n"[..],
            b"POST /healthz HTTP/1.1\r\n",
            b"GET /readyz HTTP/1.1\r\n",
            b"GET /heal",
            b"",
        ] {
            assert_eq!(refusal_for(head, tm), tm);
        }
        let alive = String::from_utf8(ALIVE.to_vec()).unwrap();
        let (head, body) = alive.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["status"], "ok");
    }

    #[test]
    fn the_over_the_cap_answer_is_a_complete_http_response_in_our_error_shape() {
        let raw = String::from_utf8(too_many_connections(20)).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains("\r\nretry-after: 1"));
        assert!(head.contains("\r\nconnection: close"));
        assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "too_many_connections");
        assert_eq!(v["error"]["details"]["max_connections"], 20);
    }
}
