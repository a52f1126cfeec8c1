//! One client connection: hyper's HTTP/1.1 over the socket, with a watchdog for the
//! header-read and keep-alive timeouts and the answers of the shutdown drain.
//!
//! The watchdog is one timer per connection, reset only when it fires: the socket and the
//! service note where the connection is (accepted, reading a request head, serving, idle)
//! in relaxed atomics, and the timer, when it fires, decides from them whether a deadline
//! has passed. A request costs no timer work.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::time::Instant;

use super::{Limits, Shared, Stage};
use crate::error::ApiError;

/// How much of a request body is read (and dropped) before answering it 503 during shutdown,
/// so that closing the connection does not reset a client that is still sending.
const DISCARD_MAX: usize = 1 << 20;
/// How long reading that part may take.
const DISCARD_WAIT: Duration = Duration::from_secs(1);

/// Serves one connection until it ends, a timeout closes it, or the shutdown does.
pub(super) async fn run(
    tcp: TcpStream,
    _permit: OwnedSemaphorePermit,
    app: Router,
    shared: Arc<Shared>,
    limits: Limits,
    mut stage: watch::Receiver<Stage>,
) {
    let tracker = Arc::new(Tracker::new(Arc::clone(&shared)));
    let io = TokioIo::new(TrackedIo {
        tcp,
        tracker: Arc::clone(&tracker),
    });
    let service = ConnService {
        app,
        tracker: Arc::clone(&tracker),
    };
    let conn = hyper::server::conn::http1::Builder::new()
        // Ours instead (see the module doc).
        .header_read_timeout(None)
        .serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let watchdog = tokio::time::sleep(limits.header_read_timeout.min(limits.keep_alive_timeout));
    let mut watchdog = std::pin::pin!(watchdog);
    let mut closing = false;
    loop {
        tokio::select! {
            biased;
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            _ = watchdog.as_mut() => match tracker.check(Instant::now(), &limits) {
                Check::Until(t) => watchdog.as_mut().reset(t),
                Check::Expired(Expired::Header) => {
                    shared.header_timeouts.increment(1);
                    break;
                }
                Check::Expired(Expired::KeepAlive) => {
                    shared.idle_timeouts.increment(1);
                    break;
                }
            },
            // Stays armed after `Closing`: an `Abort` may follow.
            changed = stage.changed() => {
                let now = *stage.borrow_and_update();
                if changed.is_err() || now == Stage::Abort {
                    break;
                }
                if now == Stage::Closing && !closing {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
    shared.open.decrement(1.0);
}

const FRESH: u8 = 0;
const IDLE: u8 = 1;
const HEAD: u8 = 2;

/// Where a connection is between requests, for its watchdog. Written by the connection's own
/// task only (reads, the service, response bodies), so relaxed atomics suffice.
struct Tracker {
    shared: Arc<Shared>,
    /// Requests whose response has not been sent in full; no timeout runs while one is.
    busy: AtomicU32,
    /// FRESH: accepted, nothing read; IDLE: kept alive after a response, nothing read since;
    /// HEAD: some of a request read, its headers not complete.
    phase: AtomicU8,
    /// When the phase's clock started, in ms since `shared.epoch`: the accept (FRESH, and HEAD
    /// after FRESH), the end of the last response (IDLE), the first byte after it (HEAD).
    since_ms: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    Header,
    KeepAlive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Nothing expired; look again then.
    Until(Instant),
    Expired(Expired),
}

impl Tracker {
    fn new(shared: Arc<Shared>) -> Tracker {
        let since = shared.epoch.elapsed().as_millis() as u64;
        Tracker {
            shared,
            busy: AtomicU32::new(0),
            phase: AtomicU8::new(FRESH),
            since_ms: AtomicU64::new(since),
        }
    }

    fn now_ms(&self) -> u64 {
        self.shared.epoch.elapsed().as_millis() as u64
    }

    /// Bytes arrived: a request has begun, its headers' clock runs.
    fn on_read(&self) {
        match self.phase.load(Ordering::Relaxed) {
            IDLE => {
                self.since_ms.store(self.now_ms(), Ordering::Relaxed);
                self.phase.store(HEAD, Ordering::Relaxed);
            }
            // The first request's headers are timed from the accept.
            FRESH => self.phase.store(HEAD, Ordering::Relaxed),
            _ => {}
        }
    }

    fn request_started(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(Arc::clone(self))
    }

    /// Whether a timeout has expired at `now`, or when to look again. A phase that starts
    /// between two looks (a request ends, or the next one begins) is not announced to the
    /// watchdog, so it looks again at least every `min(header_read_timeout,
    /// keep_alive_timeout)`: no deadline set later can be nearer than that, and none is
    /// noticed later than that after it passed.
    fn check(&self, now: Instant, limits: &Limits) -> Check {
        let next_look = now + limits.header_read_timeout.min(limits.keep_alive_timeout);
        if self.busy.load(Ordering::Relaxed) > 0 {
            return Check::Until(next_look);
        }
        let since =
            self.shared.epoch + Duration::from_millis(self.since_ms.load(Ordering::Relaxed));
        let (deadline, what) = match self.phase.load(Ordering::Relaxed) {
            IDLE => (since + limits.keep_alive_timeout, Expired::KeepAlive),
            _ => (since + limits.header_read_timeout, Expired::Header),
        };
        if now >= deadline {
            Check::Expired(what)
        } else {
            Check::Until(deadline.min(next_look))
        }
    }
}

/// A request under way; dropped with its response body (or its future, if the connection
/// goes first). The last one out starts the keep-alive clock.
struct Busy(Arc<Tracker>);

impl Drop for Busy {
    fn drop(&mut self) {
        let t = &self.0;
        if t.busy.fetch_sub(1, Ordering::Relaxed) == 1 {
            t.since_ms.store(t.now_ms(), Ordering::Relaxed);
            t.phase.store(IDLE, Ordering::Relaxed);
        }
    }
}

/// The socket, telling the tracker when bytes arrive.
struct TrackedIo {
    tcp: TcpStream,
    tracker: Arc<Tracker>,
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.tracker.on_read();
        }
        result
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// The router as one connection's hyper service: marks requests busy until their response is
/// sent, and answers 503 `shutting_down` once the shutdown has begun.
struct ConnService {
    app: Router,
    tracker: Arc<Tracker>,
}

type ServiceFuture =
    Pin<Box<dyn Future<Output = Result<Response<TrackedBody>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = ServiceFuture;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let busy = self.tracker.request_started();
        if self.tracker.shared.draining.load(Ordering::Relaxed) {
            return Box::pin(async move {
                let response = shutting_down(req).await;
                Ok(response.map(|inner| TrackedBody { inner, _busy: busy }))
            });
        }
        let app = self.app.clone();
        Box::pin(async move {
            let Ok(mut response) = tower::ServiceExt::oneshot(app, req).await;
            // An answer finished during the shutdown closes its connection.
            if busy.0.shared.draining.load(Ordering::Relaxed) {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response.map(|inner| TrackedBody { inner, _busy: busy }))
        })
    }
}

/// The answer to a request that arrives during the shutdown: 503 with `Connection: close`,
/// after reading (a bounded part of) its body.
async fn shutting_down(req: Request<Incoming>) -> Response<Body> {
    let body = Body::new(req.into_body());
    let _ = tokio::time::timeout(DISCARD_WAIT, axum::body::to_bytes(body, DISCARD_MAX)).await;
    let mut response =
        ApiError::unavailable("the server is shutting down; retry in a moment or on another node")
            .with_code("shutting_down")
            .with_retry_after(1)
            .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A response body that holds its request's [`Busy`] until hyper has sent it and drops it.
struct TrackedBody {
    inner: Body,
    _busy: Busy,
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(60),
            max_connections: 10,
            shutdown_drain: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(30),
        }
    }

    fn tracker() -> Arc<Tracker> {
        Arc::new(Tracker::new(Arc::new(Shared {
            draining: AtomicBool::new(false),
            epoch: Instant::now(),
            open: metrics::Gauge::noop(),
            header_timeouts: metrics::Counter::noop(),
            idle_timeouts: metrics::Counter::noop(),
        })))
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_times_headers_and_idleness_but_never_a_request() {
        let l = limits();
        let t = tracker();
        let start = Instant::now();
        // Fresh: the headers' clock runs from the accept, and a first byte does not restart it.
        assert_eq!(
            t.check(start, &l),
            Check::Until(start + l.header_read_timeout)
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        t.on_read();
        assert_eq!(
            t.check(Instant::now(), &l),
            Check::Until(start + l.header_read_timeout)
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(t.check(Instant::now(), &l), Check::Expired(Expired::Header));

        // A request under way is never timed, however long it takes.
        let busy = t.request_started();
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(matches!(t.check(Instant::now(), &l), Check::Until(_)));
        // Its response sent: the keep-alive clock starts; the watchdog looks again within the
        // shorter timeout (a request may begin meanwhile).
        drop(busy);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(
            t.check(Instant::now(), &l),
            Check::Until(Instant::now() + l.header_read_timeout)
        );
        // The next request's first byte starts its headers' clock.
        t.on_read();
        let head_from = Instant::now();
        assert_eq!(
            t.check(Instant::now(), &l),
            Check::Until(head_from + l.header_read_timeout)
        );
        // More bytes do not restart it.
        tokio::time::advance(Duration::from_secs(9)).await;
        t.on_read();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(t.check(Instant::now(), &l), Check::Expired(Expired::Header));

        // An idle connection left alone expires on the keep-alive clock.
        let t = tracker();
        drop(t.request_started());
        tokio::time::advance(l.keep_alive_timeout).await;
        assert_eq!(
            t.check(Instant::now(), &l),
            Check::Expired(Expired::KeepAlive)
        );
    }
}
