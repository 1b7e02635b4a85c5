//! An HTTP proxy on 127.0.0.1:0, for tests that mpsync honours `HTTPS_PROXY`, `NO_PROXY` and a
//! kubeconfig's `proxy-url`.
//!
//! - `CONNECT host:port` (what a client sends for an `https://` URL): the proxy connects to the target,
//!   answers `200 Connection established` and then tunnels bytes both ways, blind (TLS passes through
//!   end to end). A target it cannot reach gets `502 Bad Gateway`.
//! - Absolute-form requests such as `GET http://host:port/path HTTP/1.1` (what a client sends for an
//!   `http://` URL): the proxy forwards that one request in origin form (`GET /path`), without the
//!   `Proxy-*` headers and with `Connection: close`, and relays the answer; then it closes.
//! - [`ConnectProxy::refuse`]: every request is answered 403 Forbidden or 407 Proxy Authentication
//!   Required (with `Proxy-Authenticate: Basic realm="mpsync-test"`) and nothing is tunnelled.
//!
//! It records every request (method, target, `Proxy-Authorization`, the status it answered) and counts
//! tunnels. One thread per connection, and two per tunnel; std only.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A request head larger than this is refused (431).
const MAX_HEAD: usize = 64 * 1024;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// One request the proxy got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRequest {
    /// `CONNECT`, `GET`, ...
    pub method: String,
    /// `host:port` for CONNECT; the absolute URL for a forwarded request.
    pub target: String,
    /// The `Proxy-Authorization` header, if the client sent one.
    pub proxy_authorization: Option<String>,
    /// What the proxy answered: 200 for a tunnel established or a request forwarded, 403 or 407 when
    /// refusing, 400 for a request it does not understand, 502 when the target is unreachable.
    pub status: u16,
}

/// The running proxy. Dropping it stops accepting and closes every connection.
pub struct ConnectProxy {
    addr: SocketAddr,
    state: Arc<State>,
    acceptor: Option<JoinHandle<()>>,
}

struct State {
    shutdown: AtomicBool,
    inner: Mutex<Inner>,
    /// Notified when a request is recorded and when a tunnel opens or closes.
    changed: Condvar,
}

#[derive(Default)]
struct Inner {
    refuse: Option<u16>,
    requests: Vec<ProxyRequest>,
    tunnels: usize,
    open_tunnels: usize,
    forwarded: usize,
    next_id: u64,
    /// Every socket of every live connection, to close them on drop.
    sockets: HashMap<u64, Vec<TcpStream>>,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, request: ProxyRequest) {
        self.lock().requests.push(request);
        self.changed.notify_all();
    }

    /// Keep a clone of `socket` for closing on drop; false if the proxy is shutting down.
    fn register(&self, id: u64, socket: &TcpStream) -> bool {
        let Ok(clone) = socket.try_clone() else { return false };
        let mut inner = self.lock();
        if self.shutdown.load(Ordering::SeqCst) {
            return false;
        }
        inner.sockets.entry(id).or_default().push(clone);
        true
    }
}

impl ConnectProxy {
    /// Listen on 127.0.0.1:0 and serve.
    pub fn start() -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the CONNECT proxy on 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address of the CONNECT proxy");
        let state =
            Arc::new(State { shutdown: AtomicBool::new(false), inner: Mutex::default(), changed: Condvar::new() });
        let acceptor = {
            let state = Arc::clone(&state);
            thread::Builder::new()
                .name(format!("connect-proxy-{}", addr.port()))
                .spawn(move || accept_loop(&listener, &state))
                .expect("spawn the CONNECT proxy acceptor")
        };
        ConnectProxy { addr, state, acceptor: Some(acceptor) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: the value for `HTTPS_PROXY` or `proxy-url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// While `Some(status)` (403 or 407), every request is answered with it and nothing is tunnelled or
    /// forwarded; `None` serves again. Tunnels already open go on.
    pub fn refuse(&self, status: Option<u16>) {
        self.state.lock().refuse = status;
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<ProxyRequest> {
        self.state.lock().requests.clone()
    }

    /// The targets asked for so far, in order (`host:port` for CONNECT, the URL for forwarding).
    pub fn targets(&self) -> Vec<String> {
        self.state.lock().requests.iter().map(|r| r.target.clone()).collect()
    }

    /// Tunnels established since the start.
    pub fn tunnels(&self) -> usize {
        self.state.lock().tunnels
    }

    /// Tunnels open now.
    pub fn open_tunnels(&self) -> usize {
        self.state.lock().open_tunnels
    }

    /// Absolute-form requests forwarded since the start.
    pub fn forwarded(&self) -> usize {
        self.state.lock().forwarded
    }

    /// Waits until at least `n` requests were recorded; false on timeout.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        let inner = self.state.lock();
        let (inner, _) = self
            .state
            .changed
            .wait_timeout_while(inner, timeout, |inner| inner.requests.len() < n)
            .unwrap_or_else(PoisonError::into_inner);
        inner.requests.len() >= n
    }

    /// Waits until exactly `n` tunnels are open; false on timeout.
    pub fn wait_for_open_tunnels(&self, n: usize, timeout: Duration) -> bool {
        let inner = self.state.lock();
        let (inner, _) = self
            .state
            .changed
            .wait_timeout_while(inner, timeout, |inner| inner.open_tunnels != n)
            .unwrap_or_else(PoisonError::into_inner);
        inner.open_tunnels == n
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.state.shutdown.store(true, Ordering::SeqCst);
        // Wake the blocking accept; the acceptor then sees the flag and drops the listener.
        let woke = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)).is_ok();
        if let Some(acceptor) = self.acceptor.take()
            && woke
        {
            let _ = acceptor.join();
        }
        let mut inner = self.state.lock();
        for socket in inner.sockets.values().flatten() {
            let _ = socket.shutdown(Shutdown::Both);
        }
        inner.sockets.clear();
    }
}

fn accept_loop(listener: &TcpListener, state: &Arc<State>) {
    loop {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(_) if state.shutdown.load(Ordering::SeqCst) => return,
            Err(_) => {
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if state.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let _ = client.set_nodelay(true);
        let id = {
            let mut inner = state.lock();
            inner.next_id += 1;
            inner.next_id
        };
        if !state.register(id, &client) {
            continue;
        }
        let spawned = thread::Builder::new().name(format!("connect-proxy-conn-{id}")).spawn({
            let state = Arc::clone(state);
            move || {
                serve(&state, id, client);
                state.lock().sockets.remove(&id);
            }
        });
        if spawned.is_err() {
            state.lock().sockets.remove(&id);
        }
    }
}

/// A request head: the request line's three parts and the headers (names in lower case).
struct Head {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Reads a request head; None if the client went away or sent something that is not one.
fn read_head(reader: &mut BufReader<TcpStream>) -> Option<Head> {
    let mut lines = Vec::new();
    let mut total = 0;
    loop {
        let mut line = String::new();
        let n = reader.by_ref().take((MAX_HEAD - total) as u64).read_line(&mut line).ok()?;
        if n == 0 || !line.ends_with('\n') {
            return None;
        }
        total += n;
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            if lines.is_empty() {
                continue;
            }
            break;
        }
        lines.push(line);
    }
    let mut parts = lines.first()?.splitn(3, ' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let headers = lines[1..]
        .iter()
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    Some(Head { method: method.to_string(), target: target.to_string(), version: version.to_string(), headers })
}

fn answer(client: &mut TcpStream, status: u16) {
    let (reason, extra) = match status {
        400 => ("Bad Request", ""),
        403 => ("Forbidden", ""),
        407 => ("Proxy Authentication Required", "Proxy-Authenticate: Basic realm=\"mpsync-test\"\r\n"),
        502 => ("Bad Gateway", ""),
        _ => ("Error", ""),
    };
    let body = format!("{status} {reason}\n");
    let _ = write!(
        client,
        "HTTP/1.1 {status} {reason}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.flush();
}

#[allow(clippy::needless_pass_by_value)]
fn serve(state: &Arc<State>, id: u64, client: TcpStream) {
    let _ = client.set_read_timeout(Some(HEAD_TIMEOUT));
    let Ok(reader_socket) = client.try_clone() else { return };
    let mut reader = BufReader::new(reader_socket);
    let mut writer = client;
    let Some(head) = read_head(&mut reader) else { return };
    let _ = writer.set_read_timeout(None);
    let _ = reader.get_ref().set_read_timeout(None);
    let mut request = ProxyRequest {
        method: head.method.clone(),
        target: head.target.clone(),
        proxy_authorization: head.header("proxy-authorization").map(str::to_string),
        status: 0,
    };
    let refuse = state.lock().refuse;
    let upstream = if let Some(status) = refuse {
        Err(status)
    } else if head.method.eq_ignore_ascii_case("CONNECT") {
        connect(state, id, &head.target).ok_or(502)
    } else if let Some((authority, _)) = split_http_url(&head.target) {
        connect(state, id, &authority).ok_or(502)
    } else {
        Err(400)
    };
    let upstream = match upstream {
        Ok(upstream) => upstream,
        Err(status) => {
            request.status = status;
            state.record(request);
            answer(&mut writer, status);
            return;
        }
    };
    request.status = 200;
    if head.method.eq_ignore_ascii_case("CONNECT") {
        if writer.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").is_err() {
            return;
        }
        {
            let mut inner = state.lock();
            inner.tunnels += 1;
            inner.open_tunnels += 1;
            inner.requests.push(request);
        }
        state.changed.notify_all();
        relay(reader, writer, upstream);
        state.lock().open_tunnels -= 1;
        state.changed.notify_all();
    } else {
        let (_, path) = split_http_url(&head.target).expect("checked above");
        let mut forwarded = format!("{} {path} {}\r\n", head.method, head.version);
        for (name, value) in &head.headers {
            if !name.starts_with("proxy-") && name != "connection" && name != "keep-alive" {
                forwarded.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        forwarded.push_str("connection: close\r\n\r\n");
        let mut upstream_writer = &upstream;
        if upstream_writer.write_all(forwarded.as_bytes()).is_err() {
            return;
        }
        {
            let mut inner = state.lock();
            inner.forwarded += 1;
            inner.requests.push(request);
        }
        state.changed.notify_all();
        relay(reader, writer, upstream);
    }
}

/// Connects to `authority` (`host:port`) and registers the socket; None if unreachable.
fn connect(state: &State, id: u64, authority: &str) -> Option<TcpStream> {
    for addr in authority.to_socket_addrs().ok()? {
        if let Ok(upstream) = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            let _ = upstream.set_nodelay(true);
            return state.register(id, &upstream).then_some(upstream);
        }
    }
    None
}

/// `http://host[:port]/path` into (`host:port`, `/path`); None for anything else.
fn split_http_url(url: &str) -> Option<(String, String)> {
    let rest = url.get(..7).filter(|scheme| scheme.eq_ignore_ascii_case("http://")).map(|_| &url[7..])?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() {
        return None;
    }
    let has_port = authority.rsplit_once(':').is_some_and(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        && !authority.ends_with(']');
    let authority = if has_port { authority.to_string() } else { format!("{authority}:80") };
    let path = if path.is_empty() {
        "/".to_string()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    Some((authority, path))
}

/// Copies client to upstream (what the reader holds first) and upstream to client, until both ends
/// are done; each EOF is passed on as a half-close.
fn relay(mut client_reader: BufReader<TcpStream>, client: TcpStream, upstream: TcpStream) {
    let down = match (upstream.try_clone(), client.try_clone()) {
        (Ok(mut from), Ok(mut to)) => thread::Builder::new()
            .name("connect-proxy-down".into())
            .spawn(move || {
                let _ = io::copy(&mut from, &mut to);
                let _ = to.shutdown(Shutdown::Write);
            })
            .ok(),
        _ => None,
    };
    let mut to = &upstream;
    let _ = io::copy(&mut client_reader, &mut to);
    let _ = upstream.shutdown(Shutdown::Write);
    if let Some(down) = down {
        let _ = down.join();
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = upstream.shutdown(Shutdown::Both);
}
