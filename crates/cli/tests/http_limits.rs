//! The HTTP limits against the real binary over real sockets: connections that do not finish
//! their headers or sit idle are closed; beyond `max_connections` (configured, or derived from
//! the open-file limit) a new connection is still answered; per-key rate limits answer 429
//! with `Retry-After`; a request on a kept-alive connection during a graceful shutdown gets 503
//! with `Connection: close`; `/metrics` can require a key and names no connector URL or secret.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::receiver::{SECRET, webhook};
use common::{BIN, Server, create_key, http, serve};
use serde_json::{Value, json};

/// Generous: the limits under test are a second or two, and machines are noisy.
const PATIENCE: Duration = Duration::from_secs(20);

fn addr(server: &Server) -> String {
    server.url.trim_start_matches("http://").to_owned()
}

fn connect(server: &Server) -> TcpStream {
    let s = TcpStream::connect(addr(server)).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s
}

/// One HTTP/1.1 response as read off a raw socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response (headers and a `content-length` body) from `s`.
fn read_answer(s: &mut TcpStream) -> std::io::Result<Answer> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Answer {
        status,
        headers,
        body: serde_json::from_slice(&body[..len]).unwrap_or(Value::Null),
    })
}

fn get(s: &mut TcpStream, path: &str) -> std::io::Result<Answer> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: storeline\r\n\r\n").as_bytes())?;
    read_answer(s)
}

/// Whether the server closed `s` (EOF or reset) before [`PATIENCE`] ran out.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(e) => panic!("reading: {e}"),
        }
    }
}

fn start(env: &[(&str, &str)]) -> (tempfile::TempDir, Server) {
    let (dir, server, []) = serve([], env);
    (dir, server)
}

#[test]
fn connections_that_do_not_finish_their_headers_are_closed() {
    let (_dir, server) = start(&[("STORELINE_SERVER__HEADER_READ_TIMEOUT", "1s")]);
    // Nothing at all; part of a request head; a head sent one byte at a time.
    let mut silent = connect(&server);
    let mut partial = connect(&server);
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: storeline\r\n")
        .unwrap();
    let mut drip = connect(&server);
    let dripping = std::thread::spawn(move || {
        let deadline = Instant::now() + PATIENCE;
        let head = b"GET /healthz HTTP/1.1\r\nX-Slow: "
            .iter()
            .chain([b'a'; 1000].iter());
        for b in head {
            if Instant::now() > deadline || drip.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        closed_by_server(&mut drip)
    });
    assert!(
        closed_by_server(&mut silent),
        "a silent connection stays open"
    );
    assert!(
        closed_by_server(&mut partial),
        "a connection with partial headers stays open"
    );
    assert!(
        dripping.join().unwrap(),
        "a connection dripping its headers stays open"
    );
    // A well-behaved client is unaffected.
    assert_eq!(get(&mut connect(&server), "/healthz").unwrap().status, 200);
}

#[test]
fn an_idle_kept_alive_connection_is_closed() {
    let (_dir, server) = start(&[
        ("STORELINE_SERVER__KEEP_ALIVE_TIMEOUT", "1s"),
        ("STORELINE_SERVER__HEADER_READ_TIMEOUT", "30s"),
    ]);
    let mut s = connect(&server);
    for _ in 0..3 {
        let a = get(&mut s, "/healthz").unwrap();
        assert_eq!(a.status, 200);
        assert_ne!(a.header("connection"), Some("close"));
    }
    assert!(closed_by_server(&mut s), "an idle connection stays open");
}

/// Opens up to `n` connections that send part of a request head and then nothing (a server
/// that no longer accepts may leave some unconnected).
fn idle_connections(server: &Server, n: usize) -> Vec<TcpStream> {
    let addr = addr(server).parse().unwrap();
    (0..n)
        .filter_map(|_| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\n");
            Some(s)
        })
        .collect()
}

/// `path` on a new connection, until it is answered at all.
fn answer_on_new_connection(server: &Server, path: &str) -> Answer {
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(Instant::now() < deadline, "{path} was never answered");
        let addr = addr(server).parse().unwrap();
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
            continue;
        };
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // A refused connection may be reset once the server is answering too many of them.
        if let Ok(a) = get(&mut s, path) {
            return a;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Over the cap: the liveness check is answered (and the connection closed), anything else is
/// 503 with `Retry-After` in our error shape. Returns the cap the server states.
fn assert_over_the_cap(server: &Server) -> u64 {
    // While the server answers many refused connections at once it may refuse this one
    // before reading it; soon it is answered.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let a = answer_on_new_connection(server, "/healthz");
        assert_eq!(a.header("connection"), Some("close"), "{a:?}");
        if a.status == 200 {
            break;
        }
        assert_eq!(a.body["error"]["code"], "too_many_connections", "{a:?}");
        assert!(Instant::now() < deadline, "/healthz was never answered 200");
        std::thread::sleep(Duration::from_millis(200));
    }
    let a = answer_on_new_connection(server, "/readyz");
    assert_eq!(a.status, 503, "{a:?}");
    assert_eq!(a.body["error"]["code"], "too_many_connections", "{a:?}");
    assert_eq!(a.header("retry-after"), Some("1"));
    assert_eq!(a.header("connection"), Some("close"));
    a.body["error"]["details"]["max_connections"]
        .as_u64()
        .unwrap()
}

#[test]
fn beyond_max_connections_a_new_connection_is_answered_503() {
    let (_dir, server) = start(&[
        ("STORELINE_SERVER__MAX_CONNECTIONS", "20"),
        ("STORELINE_SERVER__HEADER_READ_TIMEOUT", "60s"),
    ]);
    let held = idle_connections(&server, 40);
    assert_eq!(assert_over_the_cap(&server), 20);
    // Room again once the idle connections go.
    drop(held);
    let deadline = Instant::now() + PATIENCE;
    while answer_on_new_connection(&server, "/readyz").status != 200 {
        assert!(
            Instant::now() < deadline,
            "no room after the connections closed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn at_a_low_open_file_limit_idle_connections_do_not_stop_the_server_answering() {
    // The case scaled down: more idle connections than the process may open files.
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n 200 && exec \"$0\" \"$@\"")
        .arg(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .env("STORELINE_SERVER__HEADER_READ_TIMEOUT", "60s");
    let server = Server::spawn(cmd, dir.path());
    let _held = idle_connections(&server, 300);
    // max_connections (768) was lowered to 200 - 128 = 72, so the server is over its cap
    // but still has descriptors to answer with.
    assert_eq!(assert_over_the_cap(&server), 72);
}

fn event(n: usize) -> Value {
    json!({
        "specversion": "1.0", "id": format!("rl-{n}"), "source": "rate-test",
        "type": "cart.item_added", "subject": "cus-1",
        "data": { "sku": "SKU-1", "quantity": 1 },
    })
}

/// Posts one event per request with `key` until the first 429 (returned) or `max` requests.
async fn until_429(url: &str, key: &str, max: usize) -> Option<reqwest::Response> {
    for n in 0..max {
        let r = http()
            .post(format!("{url}/v1/events"))
            .bearer_auth(key)
            .json(&event(n))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => {}
            429 => return Some(r),
            s => panic!("{s}: {}", r.text().await.unwrap()),
        }
    }
    None
}

async fn assert_rate_limited(r: reqwest::Response) {
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "Retry-After: {retry}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ingest")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn past_its_rate_an_ingest_key_gets_429_and_an_admin_key_does_not() {
    let (_dir, server, [ingest, admin]) = serve(
        ["ingest", "admin"],
        &[
            ("STORELINE_SERVER__RATE_LIMIT__INGEST__PER_SECOND", "1"),
            ("STORELINE_SERVER__RATE_LIMIT__INGEST__BURST", "5"),
        ],
    );
    let url = &server.url;
    // A burst of 5, then one a second: the first 429 comes within 40 requests unless they
    // take over half a minute.
    let r = until_429(url, &ingest, 40)
        .await
        .expect("the ingest key was never limited");
    assert_rate_limited(r).await;
    // The same key through a Segment endpoint, its key in the body.
    let mut limited = None;
    for n in 0..40 {
        let r = http()
            .post(format!("{url}/v1/track"))
            .json(&json!({
                "writeKey": ingest, "userId": "u1", "event": "Viewed", "messageId": format!("m{n}"),
            }))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    assert_rate_limited(limited.expect("a Segment writeKey was never limited")).await;
    // Admin keys are not limited by default; keys nobody knows are refused, not limited.
    assert!(until_429(url, &admin, 40).await.is_none());
    let r = http()
        .post(format!("{url}/v1/events"))
        .bearer_auth("sl_unknown")
        .json(&event(0))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[test]
fn during_shutdown_a_request_on_an_open_connection_gets_503_and_close() {
    let (_dir, mut server) = start(&[
        ("STORELINE_SERVER__SHUTDOWN_DRAIN", "60s"),
        ("STORELINE_SERVER__SHUTDOWN_TIMEOUT", "90s"),
    ]);
    let mut kept = connect(&server);
    assert_eq!(get(&mut kept, "/healthz").unwrap().status, 200);
    Command::new("kill")
        .arg("-TERM")
        .arg(server.child.id().to_string())
        .status()
        .unwrap();
    // The listener closes first: that is how we know the shutdown has begun.
    let deadline = Instant::now() + PATIENCE;
    while TcpStream::connect(addr(&server)).is_ok() {
        assert!(Instant::now() < deadline, "the listener stayed open");
        std::thread::sleep(Duration::from_millis(50));
    }
    let a = get(&mut kept, "/healthz").expect("an answer, not a closed connection");
    assert_eq!(a.status, 503, "{a:?}");
    assert_eq!(a.body["error"]["code"], "shutting_down", "{a:?}");
    assert_eq!(a.header("connection"), Some("close"));
    assert!(closed_by_server(&mut kept));
    // With its last connection closed the drain ends early and the server exits cleanly.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the server did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_can_require_a_read_key_and_never_name_connector_urls_or_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let triggers = dir.path().join("triggers.toml");
    std::fs::write(
        &triggers,
        format!(
            "{}[[trigger]]\nname = \"signup\"\non = \"customer.signed_up\"\n\
             then = [ {{ deliver = \"hooks\" }} ]\n",
            webhook(
                "hooks",
                "http://127.0.0.1:1/private-path-4711",
                "headers = { \"X-Token\" = \"header-token-0815\" }"
            )
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let ingest = create_key(&data, "ingest");
    let read = create_key(&data, "read");
    let server = Server::start(
        &data,
        &[
            ("STORELINE_SERVER__METRICS_AUTH", "true"),
            ("STORELINE_TRIGGERS__FILE", triggers.to_str().unwrap()),
        ],
    );
    let url = &server.url;
    let metrics = |key: Option<&str>| {
        let mut r = http().get(format!("{url}/metrics"));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send()
    };
    let r = metrics(None).await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    assert_eq!(metrics(Some(&ingest)).await.unwrap().status(), 403);
    assert_eq!(metrics(Some(&read)).await.unwrap().status(), 200);

    // A delivery to the connector (it fails: nothing listens on port 1) puts the connector
    // into the metrics, by name only.
    let r = http()
        .post(format!("{url}/v1/events"))
        .bearer_auth(&ingest)
        .json(&json!({
            "specversion": "1.0", "id": "s1", "source": "metrics-test",
            "type": "customer.signed_up", "subject": "cus-1",
            "data": { "email": "a@example.com" },
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let deadline = Instant::now() + PATIENCE;
    let text = loop {
        let text = metrics(Some(&read)).await.unwrap().text().await.unwrap();
        if text.contains("storeline_delivery_attempts_total{connector=\"hooks\"") {
            break text;
        }
        assert!(Instant::now() < deadline, "no delivery attempt in:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for secret in [
        "private-path-4711",
        "127.0.0.1:1",
        SECRET,
        &SECRET[6..],
        "header-token-0815",
    ] {
        assert!(!text.contains(secret), "/metrics shows {secret}");
    }
}
