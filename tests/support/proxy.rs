//! A TCP fault-injection proxy placed between an `mpsync` process and the API server.
//!
//! It forwards bytes and never looks at them, so it works in front of the test API server and a
//! real cluster alike, TLS included. Faults it can inject:
//!
//! - [`FaultProxy::set_latency`]: every chunk is held for the given time before it is forwarded, in
//!   both directions; order is preserved and chunks are pipelined (latency, not a bandwidth cap).
//! - [`FaultProxy::delay_responses`] and [`FaultProxy::delay_requests`]: the same, one direction only.
//!   Delaying responses lets requests reach the server at once while their answers come late: a write
//!   is committed (and seen by everyone else's watches) long before its writer learns of it.
//! - [`FaultProxy::partition`]: a blackhole. Nothing is forwarded in either direction; bytes that
//!   arrive are read and dropped; no connection is closed (no FIN, no RST); new connections are
//!   accepted but never reach the upstream.
//! - [`FaultProxy::heal`]: new connections are forwarded again. A connection that was open at any
//!   moment during a partition stays blackholed for good (it lost bytes, so it cannot be resumed),
//!   exactly like a half-open connection after a real outage: the client has to time out and
//!   reconnect. Call [`FaultProxy::drop_connections`] before or after `heal` to close those stuck
//!   connections instead.
//! - [`FaultProxy::drop_connections`]: close every open connection now.
//!
//! Only std: one acceptor thread, and per connection two pump threads that wake at least every
//! [`TICK`] to notice partitions, drops and shutdown (no busy loops).

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How often a pump wakes to look at the flags when nothing happens.
const TICK: Duration = Duration::from_millis(50);
/// The largest chunk read at once.
const CHUNK: usize = 64 * 1024;
/// A pump stops reading while this many bytes wait for their latency to pass.
const MAX_QUEUED: usize = 4 * 1024 * 1024;
/// Upper bound for connecting to the upstream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `Drop` waits for connection threads to finish before leaving them behind.
const DROP_JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A TCP proxy that can add latency, blackhole traffic and cut connections. Dropping it stops
/// accepting, releases the port and closes every connection.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
    acceptor: Option<JoinHandle<()>>,
}

struct State {
    upstream: String,
    /// How long client-to-upstream bytes are held.
    request_delay_nanos: AtomicU64,
    /// How long upstream-to-client bytes are held.
    response_delay_nanos: AtomicU64,
    partitioned: AtomicBool,
    shutdown: AtomicBool,
    accepted: AtomicUsize,
    registry: Mutex<Registry>,
    /// Notified whenever a connection is opened or closed.
    changed: Condvar,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    open: HashMap<u64, Arc<Conn>>,
    threads: Vec<JoinHandle<()>>,
}

/// One proxied connection: the client socket and, once connected, the upstream socket.
struct Conn {
    id: u64,
    /// Closed by `drop_connections`, by `Drop`, or after an error on either side.
    closed: AtomicBool,
    /// Saw a partition: never forwards again.
    blackholed: AtomicBool,
    sockets: Mutex<Vec<TcpStream>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Conn {
    /// Shut down both sockets (idempotent). The pumps then see EOF or errors and exit.
    fn close(&self) {
        let sockets = lock(&self.sockets);
        self.closed.store(true, Ordering::SeqCst);
        for socket in sockets.iter() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// Register the upstream socket, unless the connection was closed meanwhile.
    fn add_socket(&self, socket: &TcpStream) -> bool {
        let mut sockets = lock(&self.sockets);
        if self.closed.load(Ordering::SeqCst) {
            return false;
        }
        match socket.try_clone() {
            Ok(clone) => {
                sockets.push(clone);
                true
            }
            Err(_) => false,
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// Which way bytes go through a pump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// Client to upstream: requests.
    Up,
    /// Upstream to client: responses.
    Down,
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl State {
    fn delay(&self, direction: Direction) -> Duration {
        let nanos = match direction {
            Direction::Up => &self.request_delay_nanos,
            Direction::Down => &self.response_delay_nanos,
        };
        Duration::from_nanos(nanos.load(Ordering::SeqCst))
    }

    fn is_partitioned(&self) -> bool {
        self.partitioned.load(Ordering::SeqCst)
    }

    fn is_shut_down(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    fn unregister(&self, id: u64) {
        let mut registry = lock(&self.registry);
        if registry.open.remove(&id).is_some() {
            self.changed.notify_all();
        }
    }

    fn close_all(&self) {
        let mut registry = lock(&self.registry);
        for (_, conn) in registry.open.drain() {
            conn.close();
        }
        self.changed.notify_all();
    }
}

impl FaultProxy {
    /// Listen on 127.0.0.1:0 and forward each accepted connection to `upstream`
    /// ("127.0.0.1:PORT" or "host:port", resolved for each connection).
    pub fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy on 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address of the fault proxy");
        let state = Arc::new(State {
            upstream: upstream.to_owned(),
            request_delay_nanos: AtomicU64::new(0),
            response_delay_nanos: AtomicU64::new(0),
            partitioned: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            registry: Mutex::new(Registry::default()),
            changed: Condvar::new(),
        });
        let acceptor = {
            let state = Arc::clone(&state);
            thread::Builder::new()
                .name(format!("proxy-accept-{}", addr.port()))
                .spawn(move || accept_loop(&listener, &state))
                .expect("spawn the fault proxy acceptor")
        };
        FaultProxy { addr, state, acceptor: Some(acceptor) }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy as a URL with the given scheme, e.g. `url("https")` is `"https://127.0.0.1:PORT"`.
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }

    /// Rewrite a kubeconfig so every cluster `server:` goes through this proxy: the host:port of
    /// each `server:` line becomes the proxy's, scheme and path are kept. For `https` servers a
    /// `tls-server-name:` naming the original host is added (unless the cluster has one), so the
    /// client still verifies the server certificate against the name it was issued for.
    pub fn kubeconfig_through(&self, kubeconfig_yaml: &str) -> String {
        rewrite_kubeconfig(kubeconfig_yaml, &self.addr.to_string())
    }

    /// Hold every chunk for `latency` before forwarding it, in both directions (a round trip gets
    /// at least twice this). Applies to chunks already waiting, too. `Duration::ZERO` turns it off.
    /// Sets both [`delay_requests`](Self::delay_requests) and [`delay_responses`](Self::delay_responses).
    pub fn set_latency(&self, latency: Duration) {
        self.delay_requests(latency);
        self.delay_responses(latency);
    }

    /// Hold every upstream-to-client chunk (the answers) for `delay`; requests pass at once. Applies to
    /// chunks already waiting, too: `Duration::ZERO` releases what is held at once, in order.
    pub fn delay_responses(&self, delay: Duration) {
        self.state.response_delay_nanos.store(nanos(delay), Ordering::SeqCst);
    }

    /// Hold every client-to-upstream chunk (the requests) for `delay`; answers pass at once. Applies to
    /// chunks already waiting, too.
    pub fn delay_requests(&self, delay: Duration) {
        self.state.request_delay_nanos.store(nanos(delay), Ordering::SeqCst);
    }

    /// Blackhole: from now on nothing is forwarded in either direction and arriving bytes are
    /// dropped (so are bytes still held back by latency). Connections stay open: no FIN, no RST.
    /// New connections are accepted but never reach the upstream. Every connection open during
    /// the partition stays blackholed after [`heal`](Self::heal).
    pub fn partition(&self) {
        self.state.partitioned.store(true, Ordering::SeqCst);
        let registry = lock(&self.state.registry);
        for conn in registry.open.values() {
            conn.blackholed.store(true, Ordering::SeqCst);
        }
    }

    /// End the partition: connections accepted from now on are forwarded. Connections that were
    /// blackholed stay stuck (open, forwarding nothing) until a side closes them or
    /// [`drop_connections`](Self::drop_connections) is called.
    pub fn heal(&self) {
        self.state.partitioned.store(false, Ordering::SeqCst);
    }

    /// Close every open connection now (both sockets are shut down). The proxy keeps accepting.
    pub fn drop_connections(&self) {
        self.state.close_all();
    }

    /// Connections currently open (accepted and not yet closed by either side or the proxy).
    pub fn connection_count(&self) -> usize {
        lock(&self.state.registry).open.len()
    }

    /// Connections accepted since the start.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Wait until [`connection_count`](Self::connection_count) is `count`; false on timeout.
    pub fn wait_for_connection_count(&self, count: usize, timeout: Duration) -> bool {
        let registry = lock(&self.state.registry);
        let (registry, _) = self
            .state
            .changed
            .wait_timeout_while(registry, timeout, |registry| registry.open.len() != count)
            .unwrap_or_else(PoisonError::into_inner);
        registry.open.len() == count
    }

    /// Wait until at least `count` connections were accepted in total; false on timeout.
    pub fn wait_for_accepted(&self, count: usize, timeout: Duration) -> bool {
        let registry = lock(&self.state.registry);
        let (_registry, _) = self
            .state
            .changed
            .wait_timeout_while(registry, timeout, |_| self.accepted() < count)
            .unwrap_or_else(PoisonError::into_inner);
        self.accepted() >= count
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.shutdown.store(true, Ordering::SeqCst);
        // Wake the blocking accept with a connection of our own; the acceptor then sees the flag,
        // exits and drops the listener, which releases the port.
        let woke = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)).is_ok();
        if let Some(acceptor) = self.acceptor.take()
            && woke
        {
            let _ = acceptor.join();
        }
        self.state.close_all();
        let threads = std::mem::take(&mut lock(&self.state.registry).threads);
        let deadline = Instant::now() + DROP_JOIN_TIMEOUT;
        for thread in threads {
            // A thread stuck connecting to an unreachable upstream is left behind rather than
            // holding up the test.
            while !thread.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

fn accept_loop(listener: &TcpListener, state: &Arc<State>) {
    loop {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(_) if state.is_shut_down() => return,
            Err(_) => {
                // Out of file descriptors or similar: back off instead of spinning.
                thread::sleep(TICK);
                continue;
            }
        };
        if state.is_shut_down() {
            return;
        }
        let _ = client.set_nodelay(true);
        let Ok(client_clone) = client.try_clone() else { continue };
        let mut registry = lock(&state.registry);
        let id = registry.next_id;
        registry.next_id += 1;
        let conn = Arc::new(Conn {
            id,
            closed: AtomicBool::new(false),
            blackholed: AtomicBool::new(state.is_partitioned()),
            sockets: Mutex::new(vec![client_clone]),
        });
        registry.open.insert(id, Arc::clone(&conn));
        state.accepted.fetch_add(1, Ordering::SeqCst);
        state.changed.notify_all();
        registry.threads.retain(|thread| !thread.is_finished());
        let spawned = {
            let state = Arc::clone(state);
            let conn = Arc::clone(&conn);
            thread::Builder::new().name(format!("proxy-conn-{id}")).spawn(move || serve(&state, &conn, client))
        };
        if let Ok(thread) = spawned {
            registry.threads.push(thread);
        } else {
            registry.open.remove(&id);
            conn.close();
        }
    }
}

/// Run one connection: connect upstream, pump both ways, unregister when both pumps are done.
/// Takes the client socket so that it is closed when the connection ends.
#[allow(clippy::needless_pass_by_value)]
fn serve(state: &Arc<State>, conn: &Arc<Conn>, client: TcpStream) {
    if conn.blackholed.load(Ordering::SeqCst) {
        // Accepted during a partition: the upstream is unreachable, and stays so for this
        // connection.
        discard(state, conn, &client);
    } else if let Some(upstream) = connect_upstream(state, conn) {
        let backward = match (upstream.try_clone(), client.try_clone()) {
            (Ok(from), Ok(to)) => {
                let (state, conn) = (Arc::clone(state), Arc::clone(conn));
                thread::Builder::new()
                    .name(format!("proxy-conn-{}-down", conn.id))
                    .spawn(move || pump(&state, &conn, Direction::Down, &from, &to))
                    .ok()
            }
            _ => None,
        };
        if backward.is_none() {
            conn.close();
        }
        pump(state, conn, Direction::Up, &client, &upstream);
        if let Some(backward) = backward {
            let _ = backward.join();
        }
    } else {
        // Could not reach the upstream: the client sees its connection closed.
        conn.close();
    }
    state.unregister(conn.id);
}

fn connect_upstream(state: &State, conn: &Conn) -> Option<TcpStream> {
    let addrs = state.upstream.to_socket_addrs().ok()?;
    for addr in addrs {
        if conn.is_closed() || state.is_shut_down() {
            return None;
        }
        if let Ok(upstream) = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            let _ = upstream.set_nodelay(true);
            return conn.add_socket(&upstream).then_some(upstream);
        }
    }
    None
}

/// Whether the pump must stop: the proxy is dropped or the connection was closed.
fn stopped(state: &State, conn: &Conn) -> bool {
    state.is_shut_down() || conn.is_closed()
}

/// Blackhole mode: read and drop until the sender closes. Nothing is propagated, not even EOF.
fn discard(state: &State, conn: &Conn, from: &TcpStream) {
    let _ = from.set_read_timeout(Some(TICK));
    let mut buf = vec![0; CHUNK];
    let mut from = from;
    while !stopped(state, conn) {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(err) if is_transient(err.kind()) => {}
            Err(_) => return,
        }
    }
}

fn is_transient(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted)
}

struct Chunk {
    read_at: Instant,
    data: Vec<u8>,
    written: usize,
}

/// Forward `from` to `to`, holding each chunk for the current delay of its `direction`. On EOF the
/// half-close is passed on once everything before it is written; on an error the whole connection is
/// closed. Switches to [`discard`] as soon as the connection is blackholed.
fn pump(state: &State, conn: &Conn, direction: Direction, from: &TcpStream, to: &TcpStream) {
    let _ = to.set_write_timeout(Some(TICK));
    let (mut from_r, mut to_w) = (from, to);
    let mut buf = vec![0; CHUNK];
    let mut queue: VecDeque<Chunk> = VecDeque::new();
    let mut queued = 0usize;
    let mut eof = false;
    loop {
        if stopped(state, conn) {
            return;
        }
        if state.is_partitioned() {
            conn.blackholed.store(true, Ordering::SeqCst);
        }
        if conn.blackholed.load(Ordering::SeqCst) {
            if !eof {
                discard(state, conn, from);
            }
            return;
        }

        let now = Instant::now();
        let due = queue.front().map(|chunk| chunk.read_at + state.delay(direction));
        if let Some(due) = due
            && due <= now
        {
            let chunk = queue.front_mut().expect("a queued chunk");
            match to_w.write(&chunk.data[chunk.written..]) {
                Ok(0) => return conn.close(),
                Ok(n) => {
                    chunk.written += n;
                    queued -= n;
                    if chunk.written == chunk.data.len() {
                        queue.pop_front();
                    }
                }
                Err(err) if is_transient(err.kind()) => {}
                Err(_) => return conn.close(),
            }
            continue;
        }
        let wait = due.map_or(TICK, |due| due.saturating_duration_since(now).min(TICK));
        if eof && queue.is_empty() {
            let _ = to.shutdown(Shutdown::Write);
            return;
        }
        if eof || queued >= MAX_QUEUED {
            thread::sleep(wait.max(Duration::from_millis(1)));
            continue;
        }
        let _ = from.set_read_timeout(Some(wait.max(Duration::from_millis(1))));
        match from_r.read(&mut buf) {
            Ok(0) => eof = true,
            Ok(n) => {
                queue.push_back(Chunk { read_at: Instant::now(), data: buf[..n].to_vec(), written: 0 });
                queued += n;
            }
            Err(err) if is_transient(err.kind()) => {}
            Err(_) => return conn.close(),
        }
    }
}

/// The upstream ("host:port") of the first `server:` in a kubeconfig, with the scheme's default
/// port when the URL has none: what to pass to [`FaultProxy::start`] for a real cluster.
pub fn kubeconfig_upstream(kubeconfig_yaml: &str) -> Option<String> {
    kubeconfig_yaml.lines().find_map(|line| {
        let server = ServerLine::parse(line)?;
        let (host, port) = split_authority(server.authority);
        let port = match port {
            Some(port) => port.to_owned(),
            None if server.scheme.eq_ignore_ascii_case("http") => "80".to_owned(),
            None => "443".to_owned(),
        };
        Some(format!("{host}:{port}"))
    })
}

/// A `server: scheme://authority/path` line, cut into pieces.
struct ServerLine<'a> {
    indent: &'a str,
    /// `server:` and what follows up to the URL (spaces, an opening quote).
    key: &'a str,
    scheme: &'a str,
    authority: &'a str,
    /// The path and whatever follows the URL on the line (closing quote, comment).
    rest: &'a str,
}

impl<'a> ServerLine<'a> {
    fn parse(line: &'a str) -> Option<ServerLine<'a>> {
        let body = line.trim_start();
        let indent = &line[..line.len() - body.len()];
        let after_key = body.strip_prefix("server:")?;
        let url = after_key.trim_start().trim_start_matches(['"', '\'']);
        let key = &body[..body.len() - url.len()];
        let (scheme, after_scheme) = url.split_once("://")?;
        let end = after_scheme.find(['/', '?', '#', '"', '\'', ' ', '\t']).unwrap_or(after_scheme.len());
        let (authority, rest) = after_scheme.split_at(end);
        (!authority.is_empty()).then_some(ServerLine { indent, key, scheme, authority, rest })
    }
}

/// Host (without IPv6 brackets or user info) and port of a URL authority.
fn split_authority(authority: &str) -> (&str, Option<&str>) {
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, host_port)| host_port);
    if let Some(bracketed) = host_port.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').unwrap_or((bracketed, ""));
        return (host, after.strip_prefix(':'));
    }
    match host_port.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (host_port, None),
    }
}

/// Whether the mapping holding line `at` (lines at the same indentation around it) has a
/// `tls-server-name:` key.
fn has_tls_server_name(lines: &[&str], at: usize, indent: usize) -> bool {
    fn indent_of(line: &str) -> usize {
        line.len() - line.trim_start().len()
    }
    fn same_mapping(line: &str, indent: usize) -> bool {
        let body = line.trim_start();
        body.is_empty() || body.starts_with('#') || indent_of(line) >= indent
    }
    let before = lines[..at].iter().rev().take_while(|line| same_mapping(line, indent));
    let after = lines[at + 1..].iter().take_while(|line| same_mapping(line, indent));
    before.chain(after).any(|line| indent_of(line) == indent && line.trim_start().starts_with("tls-server-name:"))
}

fn rewrite_kubeconfig(yaml: &str, proxy_authority: &str) -> String {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = String::with_capacity(yaml.len() + 128);
    for (i, line) in lines.iter().enumerate() {
        let Some(server) = ServerLine::parse(line) else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let ServerLine { indent, key, scheme, authority, rest } = server;
        let _ = writeln!(out, "{indent}{key}{scheme}://{proxy_authority}{rest}");
        if scheme.eq_ignore_ascii_case("https") && !has_tls_server_name(&lines, i, indent.len()) {
            let (host, _) = split_authority(authority);
            let _ = writeln!(out, "{indent}tls-server-name: {host}");
        }
    }
    if !yaml.ends_with('\n') {
        out.pop();
    }
    out
}
