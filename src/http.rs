//! HTTP/1.1 for the side-car and the probes (`--health-addr`), on hyper's server.
//!
//! hyper parses, frames and keeps connections alive; this module only bounds what a client may cost
//! and turns hyper's endings into the documented answers:
//!
//! - At most `max_connections` connections at once. A connection that comes past that closes the one
//!   that has been idle longest (kept alive after an answer, not sent anything yet, begun a request head
//!   or waiting for a body), so that clients that keep many connections open (found by review: 256 kept
//!   alive by a request every 5 s, or waiting for a body they never send) cannot keep a heartbeat or a
//!   probe out; only when every connection is busy answering a whole request does it wait until one
//!   closes. Request heads are read into hyper's smallest buffer (8 KiB; a larger head gets 431), bodies are drained and dropped without being kept (larger than 1 MiB: 413).
//! - A request head must arrive within `head_timeout`, which is also how long an idle kept-alive
//!   connection stays open: a connection that sent part of a request, or nothing at all on a new
//!   connection, gets 408; an idle kept-alive one is closed quietly. Every request is answered within
//!   `answer_timeout` (503 with `Retry-After` otherwise).
//! - Malformed requests get hyper's 400 (without a body); the HTTP/2 connection preface gets 505.
//!   HEAD gets the headers of GET without the body (hyper leaves it out).
//! - Connections are closed gracefully: the rest of what the client sends is read (a little, briefly)
//!   after the last answer, so that the close does not reset the connection and destroy the answer.
//!   Accepted sockets have `TCP_NODELAY`: an answer is one small write.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// hyper's smallest read buffer: a request head larger than this gets 431.
const MAX_BUFFER: usize = 8 * 1024;
/// At most this many header lines (more: 431).
const MAX_HEADERS: usize = 64;
/// mpsync's requests have no body; one that comes is drained and dropped, up to this size (413 above).
const MAX_BODY: u64 = 1024 * 1024;
/// After the last answer: how long, and how much, the client's remaining input is read before closing.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;
/// A connection closed to make room for a new one, and not answering a request, may take this long to
/// finish writing its last answer before it is dropped.
const EVICT_GRACE: Duration = Duration::from_millis(100);
/// At most this many requests are answered on one connection; the last answer closes it.
const MAX_REQUESTS: usize = 100;

/// A request, as mpsync's servers see it: the body has been drained already.
#[derive(Debug)]
pub struct Request {
    pub method: Method,
    /// The target's path, as sent (not percent-decoded), without query.
    pub path: String,
    /// The authority of an absolute-form target (`GET http://host/path`), which stands for `Host`.
    pub authority: Option<String>,
    pub headers: HeaderMap,
    /// The address this connection was accepted on.
    pub local: SocketAddr,
}

impl Request {
    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

/// An answer: status, one content type, a few headers, a body of text.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: String,
}

impl Response {
    pub fn json(status: u16, value: &Value) -> Response {
        Response::text(status, "application/json", format!("{value}\n"))
    }

    pub fn text(status: u16, content_type: &'static str, body: String) -> Response {
        Response { status, content_type, headers: Vec::new(), body }
    }

    /// An error, as the original side-car sent them: `{"message": ...}`.
    pub fn error(status: u16, message: impl Into<String>) -> Response {
        Response::json(status, &json!({ "message": message.into() }))
    }

    pub fn with_header(mut self, name: &'static str, value: &str) -> Response {
        self.headers.push((name, value.to_string()));
        self
    }

    pub fn body(&self) -> &str {
        &self.body
    }

    fn into_hyper(self) -> hyper::Response<Full<Bytes>> {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = hyper::Response::new(Full::new(Bytes::from(self.body)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.append(name, value);
            }
        }
        response
    }

    /// The response as bytes on the wire, for the two answers given outside hyper (408 and 505), after
    /// which the connection closes.
    fn render_closing(&self) -> Vec<u8> {
        let reason = StatusCode::from_u16(self.status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
        format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
            self.status,
            self.content_type,
            self.body.len(),
            self.body
        )
        .into_bytes()
    }
}

/// What answers requests.
pub type Handler = Arc<dyn Fn(Request) -> BoxFuture<'static, Response> + Send + Sync>;

/// What one client may cost.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// A request head must arrive within this; an idle kept-alive connection is closed after it.
    pub head_timeout: Duration,
    /// Every request is answered within this.
    pub answer_timeout: Duration,
}

/// One server: a handler, the limits, and any number of listeners sharing them.
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

struct Shared {
    handler: Handler,
    limits: Limits,
    permits: Arc<Semaphore>,
    stop: CancellationToken,
    /// Connections open now.
    open: Arc<AtomicUsize>,
    /// Every connection open now, by number: which are idle, and how to close one.
    connections: std::sync::Mutex<HashMap<u64, Arc<Connection>>>,
    /// Told when a connection has answered and waits for its next request: one that waits past the cap
    /// can make room then.
    became_idle: tokio::sync::Notify,
    next_connection: AtomicU64,
}

/// One open connection, as the accept loop sees it.
struct Connection {
    /// Since when it has been waiting for a request (`None` while one is being answered).
    idle_since: std::sync::Mutex<Option<Instant>>,
    /// Cancelled to close it (when idle) for a connection that came past the cap.
    evict: CancellationToken,
}

impl Connection {
    fn set_idle(&self, idle: bool) {
        *self.idle_since.lock().unwrap_or_else(PoisonError::into_inner) = idle.then(Instant::now);
    }

    /// Not answering a request.
    fn idle(&self) -> bool {
        self.idle_since.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }
}

impl Shared {
    /// Close the connection idle the longest, if any is idle, and none closed to make room is still idle,
    /// about to close (found by review: every answer while a newcomer waited closed one more). One that
    /// took a request since finishes it first: then another makes room.
    fn evict_idlest(&self) {
        let connections = self.connections.lock().unwrap_or_else(PoisonError::into_inner);
        if connections.values().any(|connection| connection.evict.is_cancelled() && connection.idle()) {
            return;
        }
        let idlest = connections
            .values()
            .filter(|connection| !connection.evict.is_cancelled())
            .filter_map(|connection| {
                let since = (*connection.idle_since.lock().unwrap_or_else(PoisonError::into_inner))?;
                Some((since, connection))
            })
            .min_by_key(|(since, _)| *since);
        if let Some((_, connection)) = idlest {
            connection.evict.cancel();
        }
    }
}

impl Server {
    pub fn new(handler: Handler, limits: Limits) -> Server {
        Server::counting(handler, limits, Arc::new(AtomicUsize::new(0)))
    }

    /// A server that keeps the number of its open connections in `open` (which its handler may report).
    pub fn counting(handler: Handler, limits: Limits, open: Arc<AtomicUsize>) -> Server {
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        Server {
            shared: Arc::new(Shared {
                handler,
                limits,
                permits,
                stop: CancellationToken::new(),
                open,
                connections: std::sync::Mutex::new(HashMap::new()),
                became_idle: tokio::sync::Notify::new(),
                next_connection: AtomicU64::new(0),
            }),
        }
    }

    /// Accept connections on `listener` in the background, until `shutdown`.
    pub fn serve(&self, listener: TcpListener) {
        tokio::spawn(accept(listener, Arc::clone(&self.shared)));
    }

    /// Stop accepting; let the requests in flight finish and close idle connections, within `budget`.
    pub async fn shutdown(&self, budget: Duration) {
        self.shared.stop.cancel();
        let all = u32::try_from(self.shared.limits.max_connections).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(budget, self.shared.permits.acquire_many(all)).await;
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shared.stop.cancelled() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors, say: the listener works again once some close.
                tracing::warn!(error = %err, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // A free connection slot; past the cap, the connection idle the longest makes room, else (all
        // busy) this one waits, and the next ones wait in the backlog, costing nothing here, until one
        // closes or the first to answer makes room (found by review: connections busy at this moment,
        // then kept open and idle, kept a heartbeat out for as long as their client liked).
        let permit = match Arc::clone(&shared.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => loop {
                shared.evict_idlest();
                tokio::select! {
                    permit = Arc::clone(&shared.permits).acquire_owned() => match permit {
                        Ok(permit) => break permit,
                        Err(_) => return,
                    },
                    () = shared.became_idle.notified() => {}
                    () = shared.stop.cancelled() => return,
                }
            },
        };
        spawn_connection(stream, &shared, permit);
    }
}

/// The service hyper calls for each request of one connection.
#[derive(Clone)]
struct Service {
    shared: Arc<Shared>,
    connection: Arc<Connection>,
    local: SocketAddr,
    /// Requests answered on this connection: a timeout before the first is a 408, after it an idle close.
    answered: Arc<AtomicUsize>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Service {
    type Response = hyper::Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let service = self.clone();
        Box::pin(async move {
            let answer_timeout = service.shared.limits.answer_timeout;
            let response = tokio::time::timeout(answer_timeout, service.answer(request))
                .await
                .unwrap_or_else(|_| Response::error(503, "no answer in time; retry").with_header("Retry-After", "1"));
            // A connection that pipelines many requests (answers it does not read) must not keep its slot,
            // busy, while new connections (a heartbeat) wait in the backlog (found by review, helper-145):
            // it is closed after `MAX_REQUESTS` answers, as nginx's `keepalive_requests` does.
            let answered = service.answered.fetch_add(1, Ordering::Relaxed) + 1;
            let response =
                if answered >= MAX_REQUESTS { response.with_header("Connection", "close") } else { response };
            service.connection.set_idle(true);
            service.shared.became_idle.notify_one();
            Ok(response.into_hyper())
        })
    }
}

impl Service {
    async fn answer(&self, request: hyper::Request<Incoming>) -> Response {
        let (parts, mut body) = request.into_parts();
        let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|length| length > MAX_BODY) {
            return too_large();
        }
        // Drain the body (mpsync's requests have none), so the connection can carry the next request.
        let mut received = 0u64;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    received += frame.data_ref().map_or(0, |data| data.len() as u64);
                    if received > MAX_BODY {
                        return too_large();
                    }
                }
                Err(_) => return Response::error(400, "malformed request body"),
            }
        }
        // Busy (never closed to make room) only from here: a client that keeps connections waiting for a
        // body it does not send (found by review) must not keep new ones out.
        self.connection.set_idle(false);
        let request = Request {
            method: parts.method,
            path: parts.uri.path().to_string(),
            authority: parts.uri.authority().map(|authority| authority.as_str().to_string()),
            headers: parts.headers,
            local: self.local,
        };
        (self.shared.handler)(request).await
    }
}

/// 413, closing the connection: the rest of the body is not read.
fn too_large() -> Response {
    Response::error(413, format!("request body too large (more than {MAX_BODY} bytes; mpsync's requests have none)"))
        .with_header("Connection", "close")
}

/// Serve one connection until the client or hyper closes it, then close it gracefully.
/// Register a connection just accepted (so that it can be closed to make room at once, even before its
/// task first runs: found by review, on a loaded machine the connections not yet running could not be,
/// and a new one waited for the head timeout), and serve it.
fn spawn_connection(stream: TcpStream, shared: &Arc<Shared>, permit: OwnedSemaphorePermit) {
    let number = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    let connection = Arc::new(Connection {
        idle_since: std::sync::Mutex::new(Some(Instant::now())),
        evict: CancellationToken::new(),
    });
    shared.connections.lock().unwrap_or_else(PoisonError::into_inner).insert(number, Arc::clone(&connection));
    tokio::spawn(serve(stream, Arc::clone(shared), permit, number, connection));
}

async fn serve(
    stream: TcpStream,
    shared: Arc<Shared>,
    permit: OwnedSemaphorePermit,
    number: u64,
    connection: Arc<Connection>,
) {
    shared.open.fetch_add(1, Ordering::Relaxed);
    serve_connection(stream, &shared, &connection, permit).await;
    shared.connections.lock().unwrap_or_else(PoisonError::into_inner).remove(&number);
    shared.open.fetch_sub(1, Ordering::Relaxed);
}

async fn serve_connection(
    stream: TcpStream,
    shared: &Arc<Shared>,
    connection_state: &Arc<Connection>,
    permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let answered = Arc::new(AtomicUsize::new(0));
    let service = Service {
        shared: Arc::clone(shared),
        connection: Arc::clone(connection_state),
        local,
        answered: Arc::clone(&answered),
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.limits.head_timeout)
        .max_buf_size(MAX_BUFFER)
        .max_headers(MAX_HEADERS)
        .half_close(true)
        .keep_alive(true);
    let mut connection = builder.serve_connection(TokioIo::new(stream), service);

    // On shutdown, or to make room for a new connection, hyper finishes the request in flight and closes
    // an idle connection.
    let mut stopping = std::pin::pin!(shared.stop.cancelled());
    let mut evicted = std::pin::pin!(connection_state.evict.cancelled());
    let (mut stopped, mut dropped) = (false, false);
    // Closed to make room: a connection that is not answering is given `EVICT_GRACE` to finish writing
    // an answer, then dropped (hyper would read a request head begun, or wait for a body, up to its
    // timeout before it closes: found by review, such connections kept a new one out for 10 or 20 s).
    let mut grace = std::pin::pin!(tokio::time::sleep(Duration::from_secs(365 * 24 * 3600)));
    let mut evicting = false;
    let result = poll_fn(|cx| {
        let evicted_now = !stopped && evicted.as_mut().poll(cx).is_ready();
        if !stopped && (evicted_now || stopping.as_mut().poll(cx).is_ready()) {
            stopped = true;
            Pin::new(&mut connection).graceful_shutdown();
            if evicted_now {
                evicting = true;
                grace.as_mut().reset(tokio::time::Instant::now() + EVICT_GRACE);
            }
        }
        if evicting && grace.as_mut().poll(cx).is_ready() && connection_state.idle() {
            dropped = true;
            return std::task::Poll::Ready(Ok(()));
        }
        connection.poll_without_shutdown(cx)
    })
    .await;
    if dropped {
        drop(connection);
        drop(permit);
        return;
    }

    let parts = connection.into_parts();
    let mut stream = parts.io.into_inner();
    let closing = match result {
        // A request begun and not finished in time, or none at all on a new connection.
        Err(err) if err.is_timeout() && (!parts.read_buf.is_empty() || answered.load(Ordering::Relaxed) == 0) => {
            Some(Response::error(408, "the request did not arrive in time"))
        }
        Err(err) if err.is_parse_version_h2() => Some(Response::error(505, "only HTTP/1.1 is served")),
        Err(err) => {
            tracing::trace!(error = %err, "connection ended");
            None
        }
        Ok(()) => None,
    };
    if connection_state.evict.is_cancelled() && closing.is_none() {
        // Closed idle to make room: nothing of ours is in flight, and the slot is wanted now.
        drop(permit);
        let _ = stream.shutdown().await;
        return;
    }
    if let Some(response) = closing {
        let _ = tokio::time::timeout(LINGER, stream.write_all(&response.render_closing())).await;
    }
    linger(stream).await;
    drop(permit);
}

/// Close gracefully: stop sending, then read what the client still sends until it closes (briefly, a
/// little), because closing with unread input resets the connection, and a reset can destroy the answer.
async fn linger(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 1024];
    let mut left = LINGER_BYTES;
    let _ = tokio::time::timeout(LINGER, async {
        while left > 0
            && let Ok(n) = stream.read(&mut sink).await
            && n > 0
        {
            left = left.saturating_sub(n);
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_carry_their_type_headers_and_body() {
        let response = Response::error(405, "no").with_header("Allow", "GET").into_hyper();
        assert_eq!(response.status(), 405);
        assert_eq!(response.headers()["allow"], "GET");
        assert_eq!(response.headers()["content-type"], "application/json");
        let closing = String::from_utf8(Response::error(408, "late").render_closing()).unwrap();
        let body = "{\"message\":\"late\"}\n";
        assert_eq!(
            closing,
            format!(
                "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            )
        );
    }
}
