//! `mpsync sidecar`: the metaparticle elector HTTP protocol, backed by Leases.
//!
//! Metaparticle/Sync clients (JavaScript, Python, Java, .NET, Go) hold a lock through a side-car on
//! localhost: `GET /locks/NAME` (does it exist?), then `PUT /locks/NAME` (acquire or heartbeat: 200 if
//! this side-car holds it, 409 if another does), again every 10 seconds while they hold it. Here each
//! NAME is one Lease, driven by the same `lease::Elector` as `lock`, under the side-car's one identity:
//!
//! - Every request reads the Lease first and feeds the elector, then asks it what to do. Its retry
//!   period is zero, so a heartbeat renews at once; "wait" means another identity holds the lock
//!   unexpired (409). Every write is a compare-and-swap; a lost race is settled by reading again.
//! - Expiry is the lease's: once a client's heartbeats stop, another side-car takes the lock when the
//!   TTL has passed since *it* observed the last heartbeat, on its monotonic clock.
//! - A heartbeat later than 90% of the TTL after the last renewal is sent no longer renews: the lock
//!   is taken afresh (if nobody else took it meanwhile) with a new `leaseTransitions`.
//!
//! HTTP/1.1 is parsed by hand: requests are one line and a few headers, and every response closes the
//! connection. Parsing, routing and rendering are pure functions, tested without sockets.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::time::timeout;

use crate::cli::{SidecarConfig, is_dns1123_subdomain};
use crate::error::{Error, Result};
use crate::exit::Exit;
use crate::lease::{Action, Elector, Timing, Versioned, Write, WriteResult};
use crate::run::{now, open_store, runtime};
use crate::store::{Store, StoreError};

/// One API call's timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client gets to send its whole request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Every request is answered within this, whatever the API server does.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a client gets to take its response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long, on SIGTERM, releasing the locks held may take before the rest are left to expire.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests larger than these are refused; the protocol's requests have no body at all.
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 1024 * 1024;
/// The methods served on /locks/NAME.
const ALLOW: &str = "GET, HEAD, PUT, POST, DELETE";

/// Serve the protocol until SIGTERM or SIGINT; then release every lock held and exit 0.
pub fn sidecar(config: SidecarConfig) -> Result<Exit> {
    use tokio::signal::unix::{SignalKind, signal};
    runtime()?.block_on(async move {
        let store = open_store(&config.backend, CALL_TIMEOUT).await?;
        let listener = TcpListener::bind(config.listen).await.map_err(|err| {
            Error::Usage(format!(
                "cannot listen on {}: {err}\npass --listen with a free address (port 0 picks one)",
                config.listen
            ))
        })?;
        let address = listener.local_addr().map_err(|err| Error::Internal(format!("cannot read the address: {err}")))?;
        let signals = |err: std::io::Error| Error::Internal(format!("cannot handle signals: {err}"));
        let mut interrupt = signal(SignalKind::interrupt()).map_err(signals)?;
        let mut terminate = signal(SignalKind::terminate()).map_err(signals)?;

        let locks = Arc::new(Locks::new(store, config.identity, config.ttl));
        // One line on stdout, the only one: where clients connect (the port, with `--listen ...:0`).
        let _ = writeln!(std::io::stdout(), "listening on {address}");
        tracing::info!(address = %address, identity = %locks.identity, ttl = ?config.ttl, "serving the metaparticle protocol");
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(serve(stream, Arc::clone(&locks)));
                    }
                    Err(err) => {
                        // Out of file descriptors, say: the listener still works once some close.
                        tracing::warn!(error = %err, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
            }
        }
        drop(listener);
        locks.release_all().await;
        Ok(Exit::Success)
    })
}

/// The lease timing of one lock: held for `ttl` without a heartbeat; a heartbeat renews at once (retry
/// period zero); one that comes later than 90% of the TTL takes the lock afresh instead. There is no
/// child to stop here, so `lock`'s start-up invariant has nothing to protect and is not applied.
fn timing(ttl: Duration) -> Timing {
    Timing { lease_duration: ttl, renew_deadline: ttl.saturating_sub(ttl / 10), retry_period: Duration::ZERO }
}

/// Every lock this side-car has been asked about: one elector each, each behind its own mutex, so
/// requests for one lock are served one at a time and requests for different locks concurrently.
struct Locks {
    store: Store,
    identity: String,
    timing: Timing,
    electors: std::sync::Mutex<HashMap<String, Arc<Mutex<Elector>>>>,
    closing: AtomicBool,
}

impl Locks {
    fn new(store: Store, identity: String, ttl: Duration) -> Locks {
        Locks {
            store,
            identity,
            timing: timing(ttl),
            electors: std::sync::Mutex::new(HashMap::new()),
            closing: AtomicBool::new(false),
        }
    }

    fn elector(&self, name: &str) -> Arc<Mutex<Elector>> {
        let mut electors = self.electors.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = electors
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(Elector::new(self.identity.clone(), self.timing))));
        Arc::clone(entry)
    }

    async fn answer(&self, request: &Request) -> Response {
        let Some(name) = lock_name(&request.path) else {
            return Response::error(404, format!("unknown path {:?}: locks are served at /locks/NAME", request.path));
        };
        if !is_dns1123_subdomain(name) {
            return Response::error(
                400,
                format!("invalid lock name {name:?}: must be a lowercase RFC 1123 subdomain (a Lease name)"),
            );
        }
        let Some(method) = Method::parse(&request.method) else {
            return Response::error(405, format!("method {} is not served on /locks/NAME", request.method))
                .with_header("Allow", ALLOW);
        };
        let entry = self.elector(name);
        let mut elector = entry.lock().await;
        // Checked after the wait: shutting down, the locks are being released, not taken.
        if self.closing.load(Ordering::SeqCst) {
            return Response::error(503, "the side-car is shutting down");
        }
        match method {
            Method::Get | Method::Head => self.get(name, &mut elector).await,
            Method::Put => self.acquire(name, &mut elector, false).await,
            Method::Post => self.acquire(name, &mut elector, true).await,
            Method::Delete => self.delete(name, &mut elector).await,
        }
    }

    /// GET: the lock as JSON, or 404.
    async fn get(&self, name: &str, elector: &mut Elector) -> Response {
        match self.store.get(name).await {
            Ok(current) => {
                elector.observe(current, Instant::now());
                self.lock_response(200, name, elector)
            }
            Err(err) => failure(name, err),
        }
    }

    /// PUT (acquire or heartbeat) and POST (`create_only`: create it, or 409 if it exists): 200 when this
    /// identity holds the lock, 409 with the lock when another identity holds it unexpired.
    async fn acquire(&self, name: &str, elector: &mut Elector, create_only: bool) -> Response {
        let mut last_race = String::new();
        // A lost compare-and-swap or an unknown outcome: read again and decide again, a few times.
        for _attempt in 0..3 {
            let current = match self.store.get(name).await {
                Ok(current) => current,
                Err(err) => return failure(name, err),
            };
            if create_only && current.is_some() {
                elector.observe(current, Instant::now());
                return self.lock_response(409, name, elector);
            }
            let action = self.decide(name, elector, current);
            let renewal = elector.held().is_some();
            match action {
                Action::Write(write) => match self.send(name, elector, write).await {
                    Ok(_) => match elector.held() {
                        Some(held) => {
                            if renewal {
                                tracing::debug!(lease = %name, token = held.fencing_token, "renewed the lock");
                            } else {
                                tracing::info!(lease = %name, identity = %self.identity, token = held.fencing_token, "acquired the lock");
                            }
                            return self.lock_response(200, name, elector);
                        }
                        None => last_race = "the write did not leave the lock ours".into(),
                    },
                    Err(StoreError::Conflict(err) | StoreError::Unknown(err)) => last_race = err,
                    Err(err) => return failure(name, err),
                },
                // Another identity holds it, unexpired as this side-car has observed it.
                Action::WaitUntil(_) => return self.lock_response(409, name, elector),
                Action::Read | Action::Lost(_) => last_race = "the lease changed while it was read".into(),
            }
        }
        tracing::warn!(lease = %name, error = %last_race, "the lease kept changing; asking the client to retry");
        Response::error(503, format!("lock {name} kept changing under every attempt ({last_race}); retry"))
            .with_header("Retry-After", "1")
    }

    /// DELETE: give the lock up if this identity holds it (200), 409 if another does, 404 if no such lock.
    async fn delete(&self, name: &str, elector: &mut Elector) -> Response {
        match self.store.get(name).await {
            Ok(current) => elector.observe(current, Instant::now()),
            Err(err) => return failure(name, err),
        }
        if let Err(err) = self.release(name, elector).await {
            return failure(name, err);
        }
        let holder = elector.current().map(|current| current.record.holder_identity.clone().unwrap_or_default());
        match holder {
            None => Response::error(404, format!("no lock {name}")),
            // Free now (released, or it already was).
            Some(holder) if holder.is_empty() => self.lock_response(200, name, elector),
            Some(_) => self.lock_response(409, name, elector),
        }
    }

    /// Feed the elector what was read and ask it what to do. A loss (taken, deleted, or no heartbeat
    /// in time) has nothing left to stop here: it is noted and the lock is judged afresh.
    fn decide(&self, name: &str, elector: &mut Elector, current: Option<Versioned>) -> Action {
        elector.observe(current, Instant::now());
        if let Action::Lost(reason) = elector.next(now()) {
            tracing::info!(lease = %name, identity = %self.identity, reason = %reason, "no longer holding the lock");
            let current = elector.current().cloned();
            elector.forget_loss();
            // The same record again: when it was first seen still counts for its expiry.
            elector.observe(current, Instant::now());
        }
        elector.next(now())
    }

    /// Send one write and tell the elector what became of it.
    async fn send(&self, name: &str, elector: &mut Elector, write: Write) -> std::result::Result<Versioned, StoreError> {
        elector.write_sent(&write, Instant::now());
        let result = match &write {
            Write::Create(record) => self.store.create(name, record).await,
            Write::Replace { resource_version, record } => self.store.replace(name, resource_version, record).await,
        };
        let outcome = match &result {
            Ok(stored) => WriteResult::Applied(stored.clone()),
            Err(StoreError::Conflict(_)) => WriteResult::Conflict,
            Err(StoreError::Unknown(_)) => WriteResult::Unknown,
            Err(_) => WriteResult::NotApplied,
        };
        elector.write_result(outcome, Instant::now());
        result
    }

    /// Release the lock if the record last read is ours: holder cleared, duration 1s, with a
    /// compare-and-swap, so another side-car takes it at once. A record that is not ours is never
    /// written; a lost race or an unknown outcome is settled by reading again.
    async fn release(&self, name: &str, elector: &mut Elector) -> std::result::Result<(), StoreError> {
        for _attempt in 0..3 {
            let Some(write) = elector.release(now()) else { return Ok(()) };
            // Given up from here, whatever becomes of the write: a later PUT takes the lock afresh.
            elector.released();
            match self.send(name, elector, write).await {
                Ok(_) => {
                    tracing::info!(lease = %name, identity = %self.identity, "released the lock");
                    return Ok(());
                }
                Err(StoreError::Conflict(_) | StoreError::Unknown(_)) => {
                    elector.observe(self.store.get(name).await?, Instant::now());
                }
                Err(err) => return Err(err),
            }
        }
        Err(StoreError::Transient(format!("lock {name} kept changing while it was released")))
    }

    /// On the way out: release every lock this side-car holds, so waiters need not wait out the TTL.
    async fn release_all(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let entries: Vec<(String, Arc<Mutex<Elector>>)> = {
            let electors = self.electors.lock().unwrap_or_else(PoisonError::into_inner);
            electors.iter().map(|(name, entry)| (name.clone(), Arc::clone(entry))).collect()
        };
        let releases = async {
            for (name, entry) in entries {
                // Waits for a request in flight on this lock to finish.
                let mut elector = entry.lock().await;
                if let Err(err) = self.release(&name, &mut elector).await {
                    tracing::warn!(lease = %name, error = %err, "cannot release the lock; it expires after its TTL");
                }
            }
        };
        if timeout(RELEASE_TIMEOUT, releases).await.is_err() {
            tracing::warn!("stopped releasing locks after {RELEASE_TIMEOUT:?}; the others expire after their TTL");
        }
    }

    fn lock_response(&self, status: u16, name: &str, elector: &Elector) -> Response {
        match elector.current() {
            Some(current) => Response::json(
                status,
                &lock_json(name, self.store.namespace(), current, elector.observed_expiry(), Instant::now()),
            ),
            None => Response::error(404, format!("no lock {name}")),
        }
    }
}

/// A failed API call: 503 if retrying may help, 403 or 500 (and an error log) if it will not.
fn failure(name: &str, err: StoreError) -> Response {
    match err {
        StoreError::Fatal(err) => {
            let message = err.to_string();
            tracing::error!(lease = %name, error = %message, "API call failed");
            let status = if message.contains("forbidden") { 403 } else { 500 };
            Response::error(status, message)
        }
        err => {
            tracing::warn!(lease = %name, error = %err, "API call failed; asking the client to retry");
            Response::error(503, format!("{err}; retry")).with_header("Retry-After", "1")
        }
    }
}

/// The lock as the protocol's JSON. `held` is judged as mpsync judges it: a holder is named and its
/// duration has not passed since this side-car saw the record change (remote clocks are not trusted).
fn lock_json(name: &str, namespace: &str, current: &Versioned, expiry: Option<Instant>, now: Instant) -> Value {
    let record = &current.record;
    let holder = record.holder_identity.clone().unwrap_or_default();
    json!({
        "name": name,
        "namespace": namespace,
        "holder": holder,
        "held": !holder.is_empty() && expiry.is_none_or(|expiry| now < expiry),
        "acquireTime": record.acquire_time,
        "renewTime": record.renew_time,
        "leaseDurationSeconds": record.lease_duration_seconds,
        "leaseTransitions": record.lease_transitions.unwrap_or(0),
    })
}

/// One connection: read one request, answer it, close.
async fn serve(mut stream: TcpStream, locks: Arc<Locks>) {
    let response = match timeout(READ_TIMEOUT, read_request(&mut stream)).await {
        Err(_) => Some(Response::error(408, "the request did not arrive in time")),
        Ok(Received::Gone) => None,
        Ok(Received::Bad(response)) => Some(response),
        Ok(Received::Request(request)) => {
            let response = timeout(ANSWER_TIMEOUT, locks.answer(&request)).await.unwrap_or_else(|_| {
                Response::error(503, "the API server did not answer in time; retry").with_header("Retry-After", "1")
            });
            tracing::debug!(method = %request.method, path = %request.path, status = response.status, "answered");
            Some(if request.method == "HEAD" { response.head_only() } else { response })
        }
    };
    if let Some(response) = response {
        let _ = timeout(WRITE_TIMEOUT, stream.write_all(&response.render())).await;
    }
    // Close gracefully: read what the client still sends (a body not read, say) until it closes,
    // because closing with unread input resets the connection, and a reset can destroy the response.
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = timeout(Duration::from_secs(1), async {
        while let Ok(n) = stream.read(&mut sink).await
            && n > 0
        {}
    })
    .await;
}

enum Received {
    Request(Request),
    /// Malformed or too large: answer this and close.
    Bad(Response),
    /// Closed (or reset) before a request arrived: nothing to answer.
    Gone,
}

async fn read_request(stream: &mut TcpStream) -> Received {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_length = loop {
        if let Some(length) = head_length(&buffer) {
            break length;
        }
        if buffer.len() > MAX_HEAD {
            return Received::Bad(Response::error(431, "request head too large"));
        }
        // Refuse garbage (a TLS handshake, say) as soon as it shows, not after the read timeout.
        if let Err(response) = check_request_line(&buffer) {
            return Received::Bad(response);
        }
        match stream.read(&mut chunk).await {
            Ok(0) if buffer.is_empty() => return Received::Gone,
            Ok(0) => return Received::Bad(Response::error(400, "incomplete request")),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(_) => return Received::Gone,
        }
    };
    let request = match parse_head(&buffer[..head_length]) {
        Ok(request) => request,
        Err(response) => return Received::Bad(response),
    };
    // The protocol's requests have no body: one that comes is read and ignored.
    let mut remaining = request.body_to_read.saturating_sub(buffer.len() - head_length);
    while remaining > 0 {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Received::Gone,
            Ok(n) => remaining = remaining.saturating_sub(n),
        }
    }
    Received::Request(request)
}

/// A request, as far as the protocol cares.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    /// The target's path, without query or fragment.
    path: String,
    /// Body bytes to read (and ignore) before answering.
    body_to_read: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Get,
    Head,
    Put,
    Post,
    Delete,
}

impl Method {
    fn parse(method: &str) -> Option<Method> {
        match method {
            "GET" => Some(Method::Get),
            "HEAD" => Some(Method::Head),
            "PUT" => Some(Method::Put),
            "POST" => Some(Method::Post),
            "DELETE" => Some(Method::Delete),
            _ => None,
        }
    }
}

/// The length of the request head (through the blank line), if it is all in `buffer`. Bare LF line
/// ends are accepted too, as most servers do.
fn head_length(buffer: &[u8]) -> Option<usize> {
    let crlf = buffer.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4);
    let lf = buffer.windows(2).position(|w| w == b"\n\n").map(|at| at + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Check what has arrived of the request line: complete, it must parse; incomplete, it must be text.
fn check_request_line(received: &[u8]) -> std::result::Result<(), Response> {
    match received.iter().position(|&byte| byte == b'\n') {
        Some(end) => parse_request_line(&received[..end]).map(drop),
        None if received.iter().all(|&byte| byte == b'\r' || (byte.is_ascii() && !byte.is_ascii_control())) => Ok(()),
        None => Err(Response::error(400, "the request is not HTTP")),
    }
}

/// METHOD TARGET HTTP/1.x → (method, path).
fn parse_request_line(line: &[u8]) -> std::result::Result<(&str, &str), Response> {
    let bad = |message: &str| Response::error(400, message);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = std::str::from_utf8(line).map_err(|_| bad("the request line is not text"))?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line: expected METHOD TARGET HTTP/1.1"));
    };
    if method.is_empty() || !method.bytes().all(is_token_char) {
        return Err(bad("malformed method"));
    }
    match version {
        "HTTP/1.1" | "HTTP/1.0" => {}
        other if other.starts_with("HTTP/") => return Err(Response::error(505, "only HTTP/1.1 is served")),
        _ => return Err(bad("malformed request line: expected METHOD TARGET HTTP/1.1")),
    }
    match target_path(target) {
        Some(path) => Ok((method, path)),
        None => Err(bad("malformed request target")),
    }
}

/// Parse a request head: the request line and the headers, strictly enough to refuse garbage.
fn parse_head(head: &[u8]) -> std::result::Result<Request, Response> {
    let bad = |message: &str| Response::error(400, message);
    let line_end = head.iter().position(|&byte| byte == b'\n').unwrap_or(head.len());
    let (method, path) = parse_request_line(&head[..line_end])?;
    let headers = std::str::from_utf8(&head[line_end..]).map_err(|_| bad("the request head is not text"))?;
    let lines = headers.split('\n').map(|line| line.strip_suffix('\r').unwrap_or(line));

    let mut content_length: Option<usize> = None;
    let mut transfer_encoding = false;
    let mut expect_continue = false;
    for line in lines.filter(|line| !line.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad("malformed header line"));
        };
        // A name with spaces, or a line starting with one (obsolete line folding), is refused.
        if name.is_empty() || !name.bytes().all(is_token_char) {
            return Err(bad("malformed header name"));
        }
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("content-length") {
            let length = value
                .parse::<usize>()
                .ok()
                .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| bad("invalid Content-Length"))?;
            if content_length.is_some_and(|known| known != length) {
                return Err(bad("conflicting Content-Length headers"));
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue = value.eq_ignore_ascii_case("100-continue");
        }
    }
    if transfer_encoding && content_length.is_some() {
        return Err(bad("both Content-Length and Transfer-Encoding"));
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > MAX_BODY {
        return Err(Response::error(413, "request body too large (the protocol's requests have none)"));
    }
    // A client that expects "100 Continue" sends its body only after one: the answer comes instead,
    // and whatever body follows is discarded when the connection closes.
    let body_to_read = if expect_continue { 0 } else { content_length };
    Ok(Request { method: method.to_string(), path: path.to_string(), body_to_read })
}

/// The path of a request target: origin form (`/locks/a?x`), or absolute form (`http://host/locks/a`).
fn target_path(target: &str) -> Option<&str> {
    let rest = if target.starts_with('/') {
        target
    } else {
        let scheme_end = target.find("://")?;
        if !target[..scheme_end].eq_ignore_ascii_case("http") && !target[..scheme_end].eq_ignore_ascii_case("https") {
            return None;
        }
        let after = &target[scheme_end + 3..];
        after.find('/').map_or("/", |at| &after[at..])
    };
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// `/locks/NAME` → NAME (not yet validated); anything else is no path of the protocol.
fn lock_name(path: &str) -> Option<&str> {
    path.strip_prefix("/locks/").filter(|name| !name.is_empty() && !name.contains('/'))
}

fn is_token_char(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// A response: always JSON, always closing the connection.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    head_only: bool,
}

impl Response {
    fn json(status: u16, value: &Value) -> Response {
        Response { status, headers: Vec::new(), body: format!("{value}\n"), head_only: false }
    }

    /// An error, as the original side-car sent them: `{"message": ...}`.
    fn error(status: u16, message: impl Into<String>) -> Response {
        Response::json(status, &json!({ "message": message.into() }))
    }

    fn with_header(mut self, name: &'static str, value: &str) -> Response {
        self.headers.push((name, value.to_string()));
        self
    }

    /// For HEAD: the same status and headers, no body.
    fn head_only(mut self) -> Response {
        self.head_only = true;
        self
    }

    fn render(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.body.len()
        );
        for (name, value) in &self.headers {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        out.push_str("\r\n");
        if !self.head_only {
            out.push_str(&self.body);
        }
        out.into_bytes()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;

    fn parse(head: &str) -> std::result::Result<Request, u16> {
        parse_head(head.as_bytes()).map_err(|response| response.status)
    }

    #[test]
    fn the_python_clients_requests_parse() {
        let put = "PUT /locks/test HTTP/1.1\r\nAccept-Encoding: identity\r\nContent-Length: 0\r\nHost: \
                   localhost:13131\r\nUser-Agent: Python-urllib/3.11\r\naccept: application/json\r\nConnection: close\r\n\r\n";
        assert_eq!(parse(put), Ok(Request { method: "PUT".into(), path: "/locks/test".into(), body_to_read: 0 }));
        let get = "GET /locks/test?x=1 HTTP/1.0\n\n";
        assert_eq!(parse(get).map(|r| r.path), Ok("/locks/test".into()));
        let absolute = "GET http://localhost:13131/locks/a HTTP/1.1\r\n\r\n";
        assert_eq!(parse(absolute).map(|r| r.path), Ok("/locks/a".into()));
        let body = "POST /locks/a HTTP/1.1\r\ncontent-length:  12 \r\n\r\n";
        assert_eq!(parse(body).map(|r| r.body_to_read), Ok(12));
        let expecting = "PUT /locks/a HTTP/1.1\r\nContent-Length: 12\r\nExpect: 100-continue\r\n\r\n";
        assert_eq!(parse(expecting).map(|r| r.body_to_read), Ok(0), "answered before the body is sent");
    }

    #[test]
    fn malformed_requests_are_refused() {
        for head in [
            "garbage\r\n\r\n",
            "GET /locks/a\r\n\r\n",
            "GET /locks/a HTTP/1.1 extra\r\n\r\n",
            "GET  /locks/a HTTP/1.1\r\n\r\n",
            "GET locks/a HTTP/1.1\r\n\r\n",
            "G(T /locks/a HTTP/1.1\r\n\r\n",
            "GET /locks/a HTTP/1.1\r\nno colon\r\n\r\n",
            "GET /locks/a HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "GET /locks/a HTTP/1.1\r\n folded: x\r\n\r\n",
            "PUT /locks/a HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "PUT /locks/a HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            "PUT /locks/a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "PUT /locks/a HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "\u{16}\u{3}\u{1}\u{2}\u{0}\r\n\r\n",
        ] {
            assert_eq!(parse(head), Err(400), "{head:?}");
        }
        assert_eq!(parse("PRI * HTTP/2.0\r\n\r\n"), Err(505));
        assert_eq!(parse("PUT /locks/a HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"), Err(413));
        assert_eq!(parse_head(b"GET /\xff HTTP/1.1\r\n\r\n").map_err(|r| r.status).err(), Some(400));
    }

    #[test]
    fn garbage_is_refused_before_the_request_line_is_complete() {
        assert!(check_request_line(b"PUT /locks/a HT").is_ok());
        assert!(check_request_line(b"PUT /locks/a HTTP/1.1\r\nHost: x").is_ok());
        assert_eq!(check_request_line(b"\x16\x03\x01\x02\x00").map_err(|r| r.status), Err(400));
        assert_eq!(check_request_line(b"hello\r\n").map_err(|r| r.status), Err(400));
    }

    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        assert_eq!(head_length(b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody"), Some(24));
        assert_eq!(head_length(b"GET / HTTP/1.1\nA: b\n\nbody"), Some(21));
        assert_eq!(head_length(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
    }

    #[test]
    fn only_locks_slash_name_is_a_path_of_the_protocol() {
        assert_eq!(lock_name("/locks/a.b-1"), Some("a.b-1"));
        assert_eq!(lock_name("/locks/Bad_Name"), Some("Bad_Name"), "validated later: 400, not 404");
        for path in ["/", "/locks", "/locks/", "/locks/a/b", "/lock/a", "/healthz"] {
            assert_eq!(lock_name(path), None, "{path}");
        }
    }

    #[test]
    fn responses_close_the_connection_and_carry_their_length() {
        let response = Response::error(405, "no").with_header("Allow", ALLOW);
        let text = String::from_utf8(response.render()).unwrap();
        let body = "{\"message\":\"no\"}\n";
        assert_eq!(
            text,
            format!(
                "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\nAllow: {ALLOW}\r\n\r\n{body}",
                body.len()
            )
        );
        let head = String::from_utf8(Response::error(404, "no").head_only().render()).unwrap();
        assert!(head.ends_with("\r\n\r\n") && head.contains(&format!("Content-Length: {}", body.len())), "{head}");
    }

    #[test]
    fn lock_json_judges_held_by_what_this_side_car_observed() {
        let t0 = Instant::now();
        let current = Versioned {
            resource_version: "3".into(),
            record: LeaseSpec {
                holder_identity: Some("pod-a_1f2e".into()),
                lease_duration_seconds: Some(30),
                lease_transitions: Some(4),
                ..LeaseSpec::default()
            },
        };
        let expiry = Some(t0 + Duration::from_secs(30));
        let value = lock_json("job", "default", &current, expiry, t0);
        assert_eq!(value["holder"], "pod-a_1f2e");
        assert_eq!(value["held"], true);
        assert_eq!(value["leaseTransitions"], 4);
        assert_eq!(value["leaseDurationSeconds"], 30);
        assert_eq!(lock_json("job", "default", &current, expiry, t0 + Duration::from_secs(30))["held"], false);
        let mut free = current.clone();
        free.record.holder_identity = Some(String::new());
        assert_eq!(lock_json("job", "default", &free, None, t0)["held"], false);
    }

    #[test]
    fn a_heartbeat_renews_at_once_and_counts_against_most_of_the_ttl() {
        let timing = timing(Duration::from_secs(30));
        assert_eq!(timing.retry_period, Duration::ZERO);
        assert_eq!(timing.renew_deadline, Duration::from_secs(27));
        assert_eq!(super::timing(Duration::from_secs(1)).renew_deadline, Duration::from_millis(900));
    }
}
