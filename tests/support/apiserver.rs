//! The test API server: a small, strict stand-in for kube-apiserver v1.28 that serves only
//! `coordination.k8s.io/v1` Leases over plain HTTP/1.1 on 127.0.0.1, with faults on demand.
//!
//! It answers as the real server does, as recorded in `shared/apiserver-reference/`: the same status
//! codes, the same `Status` bodies (`reason`, `code`, `details`, `causes`, messages) and the same watch
//! lines, with JSON keys in the order the real server writes them.
//!
//! Design: one listener thread, one thread per connection (keep-alive, several requests each), and one
//! state behind a `Mutex` with a `Condvar` that wakes watchers. Objects are `serde_json::Value`s, so what
//! is stored is exactly what is served. Like etcd, one global resourceVersion counter moves on with
//! every write anywhere; the event history is kept so that a watch can start from any resourceVersion
//! that has not been compacted away.
//!
//! Behaviour of the real server that is easy to miss, and reproduced here:
//! - a replace (PUT) without `metadata.resourceVersion` is 422 (Leases have no unconditional update);
//! - a replace of a Lease that does not exist *creates* it (201) unless the body carries a `uid`, in
//!   which case the uid precondition fails with 409 Conflict (`StorageError: invalid object ...`);
//! - a replace that changes nothing answers 200 with the stored object and does not move the
//!   resourceVersion (no watch event), as etcd skips no-op writes;
//! - a create whose body carries `metadata.resourceVersion` is 500 "resourceVersion should not be set
//!   on objects to be created";
//! - a delete answers 200 with the object as it was, carrying the resourceVersion of the deletion;
//! - list items carry no `kind`/`apiVersion`; watch event objects and single objects do.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

const GROUP: &str = "coordination.k8s.io";
const API_VERSION: &str = "coordination.k8s.io/v1";
/// The user every 403 names: the service account the tests pretend to be.
const USER: &str = "system:serviceaccount:default:mpsync";
/// The resourceVersion counter at start (history starts here: a watch from an older one gets 410).
const FIRST_RESOURCE_VERSION: u64 = 100;
/// How far `restart` moves the resourceVersion counter on.
const RESTART_GAP: u64 = 1000;
/// Events kept for watches that start from a resourceVersion; older ones are forgotten.
const MAX_HISTORY: usize = 50_000;
/// The real server's request body limit (3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;
const MAX_HEADER_LINE: usize = 16 * 1024;
const MAX_HEADERS: usize = 200;
/// A watch without `timeoutSeconds` ends after this long (the real server's minRequestTimeout).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
/// A client that stops reading is dropped after this long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

const NAME_REGEX_MESSAGE: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

const VERSION_JSON: &str = r#"{
  "major": "1",
  "minor": "28",
  "gitVersion": "v1.28.7",
  "gitCommit": "snapshot-chengsir22-9258ab62",
  "gitTreeState": "clean",
  "buildDate": "2026-11-26T02:41:37Z",
  "goVersion": "go1.27.3",
  "compiler": "gc",
  "platform": "linux/amd64"
}"#;

/// One request as received: method, raw path (no query) and raw query (no `?`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLog {
    pub method: String,
    pub path: String,
    pub query: String,
}

/// The running server. Dropping it stops the listener and closes every connection.
pub struct TestApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct State {
    /// The global resourceVersion counter: the resourceVersion of the last write.
    rv: u64,
    /// A watch from a resourceVersion below this gets 410 Expired.
    history_start: u64,
    namespaces: BTreeSet<String>,
    /// (namespace, name) -> stored Lease.
    objects: BTreeMap<(String, String), Value>,
    /// Every write since `history_start`, oldest first.
    events: Vec<Event>,
    /// Remaining count and status of injected failures.
    failures: Option<(usize, u16)>,
    latency: Duration,
    bookmark_interval: Duration,
    forbidden: BTreeSet<String>,
    unauthorized: bool,
    log: Vec<RequestLog>,
    open_watches: usize,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    stopping: bool,
}

struct Conn {
    stream: TcpStream,
    watching: bool,
    killed: bool,
}

struct Event {
    rv: u64,
    kind: &'static str,
    namespace: String,
    name: String,
    object: Value,
}

impl State {
    /// Moves the counter on and records a write; `object` already carries the new resourceVersion.
    fn record(&mut self, kind: &'static str, namespace: &str, name: &str, object: Value) {
        self.events.push(Event { rv: self.rv, kind, namespace: namespace.to_string(), name: name.to_string(), object });
        if self.events.len() > MAX_HISTORY {
            let drop = self.events.len() - MAX_HISTORY / 2;
            self.history_start = self.events[drop - 1].rv;
            self.events.drain(..drop);
        }
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn kill_conns(&mut self, only_watches: bool) {
        for conn in self.conns.values_mut() {
            if !only_watches || conn.watching {
                conn.killed = true;
                let _ = conn.stream.shutdown(Shutdown::Both);
            }
        }
    }
}

impl TestApiServer {
    /// Binds 127.0.0.1 on a free port and starts serving. Namespace `default` exists.
    pub fn start() -> TestApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let state = State {
            rv: FIRST_RESOURCE_VERSION,
            history_start: FIRST_RESOURCE_VERSION,
            namespaces: ["default".to_string()].into_iter().collect(),
            objects: BTreeMap::new(),
            events: Vec::new(),
            failures: None,
            latency: Duration::ZERO,
            bookmark_interval: DEFAULT_BOOKMARK_INTERVAL,
            forbidden: BTreeSet::new(),
            unauthorized: false,
            log: Vec::new(),
            open_watches: 0,
            conns: HashMap::new(),
            next_conn: 0,
            stopping: false,
        };
        let shared = Arc::new(Shared { state: Mutex::new(state), changed: Condvar::new() });
        let acceptor = {
            let shared = shared.clone();
            thread::Builder::new()
                .name("test-apiserver".into())
                .spawn(move || accept_loop(shared, listener))
                .expect("spawn the listener thread")
        };
        TestApiServer { shared, addr, acceptor: Some(acceptor) }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A complete kubeconfig for this server: one cluster, a user without credentials, and a current
    /// context with `namespace`.
    pub fn kubeconfig_yaml(&self, namespace: &str) -> String {
        // JSON strings are YAML double-quoted scalars, so this quotes anything safely.
        let quote = |s: &str| Value::String(s.to_string()).to_string();
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: test-apiserver\n  cluster:\n    server: {server}\n\
             users:\n\
             - name: test-user\n  user: {{}}\n\
             contexts:\n\
             - name: test\n  context:\n    cluster: test-apiserver\n    user: test-user\n    namespace: {namespace}\n\
             current-context: test\n\
             preferences: {{}}\n",
            server = quote(&self.url()),
            namespace = quote(namespace),
        )
    }

    pub fn add_namespace(&self, namespace: &str) {
        let mut st = self.shared.lock();
        st.namespaces.insert(namespace.to_string());
    }

    /// The next `n` requests (any verb, watches too) answer `status` with the real server's `Status`
    /// body for it: 500 InternalError, 503 ServiceUnavailable, 429 TooManyRequests (with `Retry-After:
    /// 1`), 504 Timeout, and so on. Replaces any failures still pending.
    pub fn fail_next(&self, n: usize, status: u16) {
        let mut st = self.shared.lock();
        st.failures = if n == 0 { None } else { Some((n, status)) };
    }

    /// Delays every answer (after the request has been carried out) by `latency`; zero for none.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    /// How often a watch that asked for `allowWatchBookmarks=true` gets a BOOKMARK (default 1s).
    pub fn set_bookmark_interval(&self, interval: Duration) {
        self.shared.lock().bookmark_interval = interval.max(Duration::from_millis(1));
        self.shared.changed.notify_all();
    }

    /// Ends every open watch now by closing its connection abruptly (no terminating chunk).
    pub fn drop_watches(&self) {
        let mut st = self.shared.lock();
        st.kill_conns(true);
        self.shared.changed.notify_all();
    }

    /// As if the apiserver restarted: every connection is closed (the listener keeps its port), all
    /// objects are kept, the resourceVersion counter moves on by a gap, and the event history is
    /// forgotten, so that a watch from an older resourceVersion gets 410.
    pub fn restart(&self) {
        let mut st = self.shared.lock();
        st.rv += RESTART_GAP;
        st.history_start = st.rv;
        st.events.clear();
        st.kill_conns(false);
        self.shared.changed.notify_all();
    }

    /// Forgets the event history: a watch from any resourceVersion older than the current one gets
    /// the 410 ERROR line. Open watches go on.
    pub fn compact(&self) {
        let mut st = self.shared.lock();
        st.history_start = st.rv;
        st.events.clear();
    }

    /// Answers 403 Forbidden to every Lease request with this verb: get, list, watch, create, update,
    /// delete or deletecollection.
    pub fn forbid(&self, verb: &str) {
        self.shared.lock().forbidden.insert(verb.to_string());
    }

    /// Undoes `forbid(verb)`.
    pub fn allow(&self, verb: &str) {
        self.shared.lock().forbidden.remove(verb);
    }

    /// While on, every request answers 401 Unauthorized, as for a bad token.
    pub fn unauthorized(&self, on: bool) {
        self.shared.lock().unauthorized = on;
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RequestLog> {
        self.shared.lock().log.clone()
    }

    /// Watches currently open.
    pub fn watch_count(&self) -> usize {
        self.shared.lock().open_watches
    }

    /// The current value of the global resourceVersion counter.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// The stored Lease, as a GET would serve it.
    pub fn lease(&self, namespace: &str, name: &str) -> Option<Value> {
        self.shared.lock().objects.get(&(namespace.to_string(), name.to_string())).cloned()
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        {
            let mut st = self.shared.lock();
            st.stopping = true;
            st.kill_conns(false);
        }
        self.shared.changed.notify_all();
        // Wake the listener thread out of accept().
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else {
            if shared.lock().stopping {
                return;
            }
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let Ok(registered) = stream.try_clone() else {
            continue;
        };
        let id = {
            let mut st = shared.lock();
            if st.stopping {
                return;
            }
            let id = st.next_conn;
            st.next_conn += 1;
            st.conns.insert(id, Conn { stream: registered, watching: false, killed: false });
            id
        };
        let shared = shared.clone();
        let spawned = thread::Builder::new().name(format!("test-apiserver-conn-{id}")).spawn({
            let shared = shared.clone();
            move || serve_connection(&shared, id, stream)
        });
        if spawned.is_err() {
            shared.lock().conns.remove(&id);
        }
    }
}

fn serve_connection(shared: &Arc<Shared>, id: u64, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    if let Ok(read_half) = stream.try_clone() {
        let mut reader = BufReader::new(read_half);
        let mut writer = stream;
        loop {
            let request = match read_request(&mut reader, &mut writer) {
                Ok(Some(request)) => request,
                Ok(None) | Err(ReadError::Closed) => break,
                Err(ReadError::Bad(code, message)) => {
                    let response = status_response(code, reason_for(code), &message, None);
                    let _ = write_response(&mut writer, &response, false);
                    break;
                }
            };
            if !handle(shared, id, &request, &mut writer) || !request.keep_alive {
                break;
            }
        }
        let _ = writer.shutdown(Shutdown::Both);
    }
    shared.lock().conns.remove(&id);
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

struct Request {
    method: String,
    path: String,
    query: String,
    /// Header names in lower case.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    keep_alive: bool,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The first value of query parameter `key`, decoded.
    fn param(&self, key: &str) -> Option<String> {
        self.query.split('&').filter(|p| !p.is_empty()).find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k, true) == key).then(|| percent_decode(v, true))
        })
    }
}

enum ReadError {
    /// The client went away (before or in the middle of a request).
    Closed,
    /// A malformed request: answer this status and close.
    Bad(u16, String),
}

fn read_line(reader: &mut impl BufRead) -> Result<Option<String>, ReadError> {
    let mut buf = Vec::new();
    let n = reader.take(MAX_HEADER_LINE as u64).read_until(b'\n', &mut buf).map_err(|_| ReadError::Closed)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return if n >= MAX_HEADER_LINE {
            Err(ReadError::Bad(431, "request header line too long".into()))
        } else {
            Err(ReadError::Closed)
        };
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    String::from_utf8(buf).map(Some).map_err(|_| ReadError::Bad(400, "request header is not UTF-8".into()))
}

fn read_request(reader: &mut impl BufRead, writer: &mut impl Write) -> Result<Option<Request>, ReadError> {
    let line = loop {
        match read_line(reader)? {
            None => return Ok(None),
            Some(line) if line.is_empty() => continue,
            Some(line) => break line,
        }
    };
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(ReadError::Bad(400, "malformed HTTP request line".into()));
    };
    if method.is_empty() || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Err(ReadError::Bad(400, "malformed HTTP request line".into()));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::new();
    loop {
        let Some(line) = read_line(reader)? else {
            return Err(ReadError::Closed);
        };
        if line.is_empty() {
            break;
        }
        if headers.len() >= MAX_HEADERS {
            return Err(ReadError::Bad(431, "too many request headers".into()));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(ReadError::Bad(400, "malformed HTTP header".into()));
        };
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.to_ascii_lowercase());
    let connection = header("connection").unwrap_or_default();
    let keep_alive =
        if version == "HTTP/1.0" { connection.contains("keep-alive") } else { !connection.contains("close") };
    if header("expect").is_some_and(|e| e == "100-continue") {
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").map_err(|_| ReadError::Closed)?;
    }
    let body = if header("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        read_chunked_body(reader)?
    } else if let Some(length) = header("content-length") {
        let length: usize = length.parse().map_err(|_| ReadError::Bad(400, "invalid Content-Length".into()))?;
        if length > MAX_BODY {
            return Err(ReadError::Bad(413, "request entity too large".into()));
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).map_err(|_| ReadError::Closed)?;
        body
    } else {
        Vec::new()
    };
    Ok(Some(Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
        body,
        keep_alive,
    }))
}

fn read_chunked_body(reader: &mut impl BufRead) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        let Some(line) = read_line(reader)? else {
            return Err(ReadError::Closed);
        };
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| ReadError::Bad(400, "malformed chunked body".into()))?;
        if size == 0 {
            // Trailers, up to the empty line.
            while let Some(line) = read_line(reader)? {
                if line.is_empty() {
                    return Ok(body);
                }
            }
            return Err(ReadError::Closed);
        }
        if body.len() + size > MAX_BODY {
            return Err(ReadError::Bad(413, "request entity too large".into()));
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..]).map_err(|_| ReadError::Closed)?;
        match read_line(reader)? {
            Some(line) if line.is_empty() => {}
            Some(_) => return Err(ReadError::Bad(400, "malformed chunked body".into())),
            None => return Err(ReadError::Closed),
        }
    }
}

fn percent_decode(s: &str, plus_is_space: bool) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push(high * 16 + low);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Response {
    status: u16,
    body: Vec<u8>,
    content_type: &'static str,
    extra_headers: Vec<(&'static str, String)>,
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        413 => "Request Entity Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

fn response_head(
    status: u16,
    content_type: &str,
    length: Option<usize>,
    extra: &[(&str, String)],
    close: bool,
) -> String {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nAudit-Id: {}\r\nCache-Control: no-cache, private\r\nContent-Type: {content_type}\r\nDate: {}\r\n",
        reason_phrase(status),
        new_uid(),
        http_date(SystemTime::now()),
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    match length {
        Some(length) => head.push_str(&format!("Content-Length: {length}\r\n")),
        None => head.push_str("Transfer-Encoding: chunked\r\n"),
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    head
}

fn write_response(w: &mut impl Write, response: &Response, keep_alive: bool) -> io::Result<()> {
    let head = response_head(
        response.status,
        response.content_type,
        Some(response.body.len()),
        &response.extra_headers,
        !keep_alive,
    );
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&response.body);
    w.write_all(&bytes)?;
    w.flush()
}

fn write_chunk(w: &mut impl Write, data: &[u8]) -> io::Result<()> {
    let mut bytes = format!("{:x}\r\n", data.len()).into_bytes();
    bytes.extend_from_slice(data);
    bytes.extend_from_slice(b"\r\n");
    w.write_all(&bytes)?;
    w.flush()
}

// ---------------------------------------------------------------------------------------------
// JSON as the real server writes it
// ---------------------------------------------------------------------------------------------

/// Compact JSON with object keys in the order of the Go structs (maps such as labels are sorted).
fn to_json(value: &Value) -> String {
    let mut out = String::new();
    write_json(&mut out, value, "");
    out
}

fn key_order(context: &str) -> &'static [&'static str] {
    match context {
        "" | "object" | "items" => &[
            "type",
            "object",
            "kind",
            "apiVersion",
            "metadata",
            "spec",
            "items",
            "status",
            "message",
            "reason",
            "details",
            "code",
        ],
        "metadata" => &[
            "name",
            "generateName",
            "namespace",
            "selfLink",
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "deletionTimestamp",
            "labels",
            "annotations",
            "managedFields",
            "continue",
            "remainingItemCount",
        ],
        "spec" => &[
            "holderIdentity",
            "leaseDurationSeconds",
            "acquireTime",
            "renewTime",
            "leaseTransitions",
            "strategy",
            "preferredHolder",
        ],
        "details" => &["name", "group", "kind", "uid", "causes", "retryAfterSeconds"],
        "causes" => &["reason", "message", "field"],
        _ => &[],
    }
}

fn write_json(out: &mut String, value: &Value, context: &str) {
    match value {
        Value::Object(map) => {
            let order = key_order(context);
            let rank = |k: &str| order.iter().position(|o| *o == k).unwrap_or(usize::MAX);
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_json(out, &map[key], key);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(out, item, context);
            }
            out.push(']');
        }
        leaf => out.push_str(&leaf.to_string()),
    }
}

fn json_response(status: u16, value: &Value) -> Response {
    Response { status, body: to_json(value).into_bytes(), content_type: "application/json", extra_headers: Vec::new() }
}

fn status_value(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "code": code,
    });
    if !reason.is_empty() {
        status["reason"] = json!(reason);
    }
    if let Some(details) = details {
        status["details"] = details;
    }
    status
}

fn status_response(code: u16, reason: &str, message: &str, details: Option<Value>) -> Response {
    json_response(code, &status_value(code, reason, message, details))
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 | 431 => "BadRequest",
        413 => "RequestEntityTooLarge",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "",
    }
}

fn lease_details(name: &str) -> Value {
    let mut details = json!({"group": GROUP, "kind": "leases"});
    if !name.is_empty() {
        details["name"] = json!(name);
    }
    details
}

fn not_found(name: &str) -> Response {
    status_response(
        404,
        "NotFound",
        &format!("leases.coordination.k8s.io \"{name}\" not found"),
        Some(lease_details(name)),
    )
}

fn bad_request(message: &str) -> Response {
    status_response(400, "BadRequest", message, None)
}

fn conflict(name: &str, why: &str) -> Response {
    status_response(
        409,
        "Conflict",
        &format!("Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": {why}"),
        Some(lease_details(name)),
    )
}

/// The 409 of a failed storage precondition, as etcd3's store words it.
fn precondition_conflict(namespace: &str, name: &str, what: &str, wanted: &str, actual: &str) -> Response {
    conflict(
        name,
        &format!(
            "StorageError: invalid object, Code: 4, Key: /registry/leases/{namespace}/{name}, ResourceVersion: 0, \
             AdditionalErrorMsg: Precondition failed: {what} in precondition: {wanted}, {what} in object meta: {actual}"
        ),
    )
}

/// An answer injected by `fail_next`, as the real server (or its priority and fairness filter) gives it.
fn failure_response(code: u16) -> Response {
    match code {
        401 => unauthorized_response(),
        429 => {
            let mut response = status_response(
                429,
                "TooManyRequests",
                "Too many requests, please try again later.",
                Some(json!({"retryAfterSeconds": 1})),
            );
            response.extra_headers.push(("Retry-After", "1".into()));
            response
        }
        500 => status_response(
            500,
            "InternalError",
            "Internal error occurred: injected failure",
            Some(json!({"causes": [{"message": "injected failure"}]})),
        ),
        503 => status_response(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
            Some(json!({})),
        ),
        504 => status_response(
            504,
            "Timeout",
            "Timeout: request did not complete within requested timeout - context deadline exceeded",
            Some(json!({})),
        ),
        code => status_response(code, reason_for(code), &format!("injected failure ({code})"), Some(json!({}))),
    }
}

fn unauthorized_response() -> Response {
    status_response(401, "Unauthorized", "Unauthorized", None)
}

fn forbidden_response(verb: &str, namespace: Option<&str>, name: Option<&str>) -> Response {
    let subject = match name {
        Some(name) => format!("leases.coordination.k8s.io \"{name}\""),
        None => "leases.coordination.k8s.io".to_string(),
    };
    let scope = match namespace {
        Some(namespace) => format!("in the namespace \"{namespace}\""),
        None => "at the cluster scope".to_string(),
    };
    status_response(
        403,
        "Forbidden",
        &format!(
            "{subject} is forbidden: User \"{USER}\" cannot {verb} resource \"leases\" in API group \"{GROUP}\" {scope}"
        ),
        Some(lease_details(name.unwrap_or(""))),
    )
}

/// One field error, as k8s.io/apimachinery's field.Error.
struct FieldError {
    reason: &'static str,
    field: String,
    body: String,
}

fn invalid(field: &str, value: &str, detail: &str) -> FieldError {
    FieldError {
        reason: "FieldValueInvalid",
        field: field.to_string(),
        body: format!("Invalid value: {value}: {detail}"),
    }
}

/// 422 Invalid for `kind` (e.g. `Lease`, or `leases` for the storage layer's own checks).
fn invalid_response(kind: &str, name: &str, errors: &[FieldError]) -> Response {
    let mut messages: Vec<String> = Vec::new();
    for error in errors {
        let message = format!("{}: {}", error.field, error.body);
        if !messages.contains(&message) {
            messages.push(message);
        }
    }
    let aggregate = if messages.len() == 1 { messages[0].clone() } else { format!("[{}]", messages.join(", ")) };
    let causes: Vec<Value> =
        errors.iter().map(|e| json!({"reason": e.reason, "message": e.body, "field": e.field})).collect();
    let mut details = json!({"group": GROUP, "kind": kind, "causes": causes});
    if !name.is_empty() {
        details["name"] = json!(name);
    }
    status_response(422, "Invalid", &format!("{kind}.{GROUP} \"{name}\" is invalid: {aggregate}"), Some(details))
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

enum Route {
    Version,
    /// The Lease collection of one namespace, or of all namespaces.
    Collection(Option<String>),
    Item(String, String),
    /// Under /api or /apis but not served here.
    UnknownApi,
    /// Anywhere else.
    Unknown,
}

fn route(path: &str) -> Route {
    if path == "/version" || path == "/version/" {
        return Route::Version;
    }
    let segments: Vec<String> = path.split('/').skip(1).map(|s| percent_decode(s, false)).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match segments[..] {
        ["apis", GROUP, "v1", "leases"] => Route::Collection(None),
        ["apis", GROUP, "v1", "namespaces", ns, "leases"] if !ns.is_empty() => Route::Collection(Some(ns.to_string())),
        ["apis", GROUP, "v1", "namespaces", ns, "leases", name] if !ns.is_empty() && !name.is_empty() => {
            Route::Item(ns.to_string(), name.to_string())
        }
        ["api" | "apis", ..] => Route::UnknownApi,
        _ => Route::Unknown,
    }
}

enum Reply {
    Answer(Response),
    Watch(WatchRequest),
}

/// Handles one request; false when the connection must be closed.
fn handle(shared: &Arc<Shared>, conn: u64, request: &Request, w: &mut TcpStream) -> bool {
    let (failure, latency, unauthorized, forbidden) = {
        let mut st = shared.lock();
        st.log.push(RequestLog {
            method: request.method.clone(),
            path: request.path.clone(),
            query: request.query.clone(),
        });
        let failure = match st.failures.take() {
            Some((n, code)) => {
                if n > 1 {
                    st.failures = Some((n - 1, code));
                }
                Some(code)
            }
            None => None,
        };
        (failure, st.latency, st.unauthorized, st.forbidden.clone())
    };
    let reply = if let Some(code) = failure {
        Reply::Answer(failure_response(code))
    } else if unauthorized {
        Reply::Answer(unauthorized_response())
    } else {
        dispatch(shared, request, &forbidden)
    };
    if !latency.is_zero() {
        thread::sleep(latency);
    }
    match reply {
        Reply::Answer(response) => write_response(w, &response, request.keep_alive).is_ok(),
        Reply::Watch(watch) => serve_watch(shared, conn, w, &watch, request.keep_alive),
    }
}

fn dispatch(shared: &Shared, request: &Request, forbidden: &BTreeSet<String>) -> Reply {
    let method = request.method.as_str();
    let (namespace, name) = match route(&request.path) {
        Route::Version if method == "GET" => {
            return Reply::Answer(Response {
                status: 200,
                body: VERSION_JSON.as_bytes().to_vec(),
                content_type: "application/json",
                extra_headers: Vec::new(),
            });
        }
        Route::Version => return Reply::Answer(method_not_allowed()),
        Route::UnknownApi => {
            return Reply::Answer(status_response(
                404,
                "NotFound",
                "the server could not find the requested resource",
                Some(json!({})),
            ));
        }
        Route::Unknown => {
            return Reply::Answer(Response {
                status: 404,
                body: b"404 page not found\n".to_vec(),
                content_type: "text/plain; charset=utf-8",
                extra_headers: vec![("X-Content-Type-Options", "nosniff".into())],
            });
        }
        Route::Collection(namespace) => (namespace, None),
        Route::Item(namespace, name) => (Some(namespace), Some(name)),
    };
    let watching =
        method == "GET" && name.is_none() && matches!(parse_bool(request.param("watch").as_deref()), Ok(true));
    let verb = match (method, &name) {
        ("GET", None) if watching => "watch",
        ("GET", None) => "list",
        ("GET", Some(_)) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", None) => "deletecollection",
        ("DELETE", Some(_)) => "delete",
        _ => return Reply::Answer(method_not_allowed()),
    };
    if forbidden.contains(verb) {
        return Reply::Answer(forbidden_response(verb, namespace.as_deref(), name.as_deref()));
    }
    let store = Store { shared, forbidden };
    match (verb, namespace, name) {
        ("list" | "watch", namespace, None) => store.list_or_watch(request, namespace),
        ("get", Some(namespace), Some(name)) => Reply::Answer(store.get(&namespace, &name)),
        ("create", Some(namespace), None) => Reply::Answer(store.create(request, &namespace)),
        ("update", Some(namespace), Some(name)) => Reply::Answer(store.replace(request, &namespace, &name)),
        ("delete", Some(namespace), Some(name)) => Reply::Answer(store.delete(request, &namespace, &name)),
        ("deletecollection", Some(namespace), None) => Reply::Answer(store.delete_collection(request, &namespace)),
        _ => Reply::Answer(method_not_allowed()),
    }
}

fn method_not_allowed() -> Response {
    status_response(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
        Some(json!({})),
    )
}

/// Go's strconv.ParseBool, as the real server parses boolean query parameters; None when absent.
fn parse_bool(value: Option<&str>) -> Result<bool, String> {
    match value {
        None | Some("") => Ok(false),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(other) => Err(format!("strconv.ParseBool: parsing \"{other}\": invalid syntax")),
    }
}

// ---------------------------------------------------------------------------------------------
// Field selectors
// ---------------------------------------------------------------------------------------------

struct Filter {
    namespace: Option<String>,
    /// (field is metadata.name, must equal, value)
    terms: Vec<(bool, bool, String)>,
}

impl Filter {
    fn parse(namespace: Option<String>, selector: Option<&str>) -> Result<Filter, Response> {
        let mut terms = Vec::new();
        for term in selector.unwrap_or("").split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                let all = selector.unwrap_or("");
                return Err(bad_request(&format!("invalid selector: '{all}'; can't understand '{term}'")));
            };
            let field = field.trim();
            let is_name = match field {
                "metadata.name" => true,
                "metadata.namespace" => false,
                other => {
                    return Err(bad_request(&format!(
                        "\"{other}\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
                    )));
                }
            };
            terms.push((is_name, equal, value.trim().to_string()));
        }
        Ok(Filter { namespace, terms })
    }

    fn matches(&self, namespace: &str, name: &str) -> bool {
        if self.namespace.as_deref().is_some_and(|ns| ns != namespace) {
            return false;
        }
        self.terms.iter().all(|(is_name, equal, value)| {
            let actual = if *is_name { name } else { namespace };
            (actual == value) == *equal
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Leases
// ---------------------------------------------------------------------------------------------

struct Store<'a> {
    shared: &'a Shared,
    forbidden: &'a BTreeSet<String>,
}

/// A Lease as decoded from a request body.
struct Incoming {
    name: String,
    generate_name: String,
    namespace: String,
    uid: String,
    resource_version: String,
    labels: Option<Map<String, Value>>,
    annotations: Option<Map<String, Value>>,
    spec: Map<String, Value>,
}

fn key(namespace: &str, name: &str) -> (String, String) {
    (namespace.to_string(), name.to_string())
}

impl Store<'_> {
    fn get(&self, namespace: &str, name: &str) -> Response {
        let st = self.shared.lock();
        match st.objects.get(&key(namespace, name)) {
            Some(object) => json_response(200, object),
            None => not_found(name),
        }
    }

    fn list_or_watch(&self, request: &Request, namespace: Option<String>) -> Reply {
        let watch = match parse_bool(request.param("watch").as_deref()) {
            Ok(watch) => watch,
            Err(message) => return Reply::Answer(bad_request(&message)),
        };
        let filter = match Filter::parse(namespace, request.param("fieldSelector").as_deref()) {
            Ok(filter) => filter,
            Err(response) => return Reply::Answer(response),
        };
        if request.param("sendInitialEvents").is_some() {
            let (field, detail) = if watch {
                (
                    "sendInitialEvents",
                    "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
                )
            } else {
                ("sendInitialEvents", "sendInitialEvents is forbidden for list")
            };
            let error =
                FieldError { reason: "FieldValueForbidden", field: field.into(), body: format!("Forbidden: {detail}") };
            let mut response = invalid_response("ListOptions", "", &[error]);
            // ListOptions errors belong to meta.k8s.io.
            let mut status: Value = serde_json::from_slice(&response.body).unwrap_or_default();
            status["message"] = json!(format!("ListOptions.meta.k8s.io \"\" is invalid: {field}: Forbidden: {detail}"));
            status["details"]["group"] = json!("meta.k8s.io");
            response.body = to_json(&status).into_bytes();
            return Reply::Answer(response);
        }
        if !watch {
            let st = self.shared.lock();
            let items: Vec<Value> = st
                .objects
                .iter()
                .filter(|((ns, name), _)| filter.matches(ns, name))
                .map(|(_, object)| list_item(object))
                .collect();
            return Reply::Answer(json_response(
                200,
                &json!({
                    "kind": "LeaseList",
                    "apiVersion": API_VERSION,
                    "metadata": {"resourceVersion": st.rv.to_string()},
                    "items": items,
                }),
            ));
        }
        let since = match request.param("resourceVersion").as_deref() {
            None | Some("" | "0") => None,
            Some(rv) => match rv.parse::<u64>() {
                Ok(rv) => Some(rv),
                Err(_) => {
                    return Reply::Answer(bad_request(&format!(
                        "resourceVersion: Invalid value: \"{rv}\": strconv.ParseUint: parsing \"{rv}\": invalid syntax"
                    )));
                }
            },
        };
        let bookmarks = match parse_bool(request.param("allowWatchBookmarks").as_deref()) {
            Ok(bookmarks) => bookmarks,
            Err(message) => return Reply::Answer(bad_request(&message)),
        };
        let timeout = match request.param("timeoutSeconds").as_deref() {
            None | Some("") => DEFAULT_WATCH_TIMEOUT,
            Some(seconds) => match seconds.parse::<u64>() {
                Ok(0) => DEFAULT_WATCH_TIMEOUT,
                Ok(seconds) => Duration::from_secs(seconds),
                Err(_) => {
                    return Reply::Answer(bad_request(&format!(
                        "timeoutSeconds: Invalid value: \"{seconds}\": must be a non-negative integer"
                    )));
                }
            },
        };
        Reply::Watch(WatchRequest { filter, since, bookmarks, timeout })
    }

    fn create(&self, request: &Request, namespace: &str) -> Response {
        let incoming = match decode_lease(request, namespace) {
            Ok(incoming) => incoming,
            Err(response) => return response,
        };
        let mut st = self.shared.lock();
        if !st.namespaces.contains(namespace) {
            return namespace_not_found(namespace);
        }
        let mut incoming = incoming;
        if incoming.name.is_empty() && !incoming.generate_name.is_empty() {
            incoming.name = generate_name(&incoming.generate_name);
        }
        let errors = validate(&incoming);
        if !errors.is_empty() {
            return invalid_response("Lease", &incoming.name, &errors);
        }
        if !incoming.resource_version.is_empty() && incoming.resource_version != "0" {
            return status_response(500, "", "resourceVersion should not be set on objects to be created", None);
        }
        if st.objects.contains_key(&key(namespace, &incoming.name)) {
            let name = &incoming.name;
            return status_response(
                409,
                "AlreadyExists",
                &format!("leases.coordination.k8s.io \"{name}\" already exists"),
                Some(lease_details(name)),
            );
        }
        let object = insert_new(&mut st, namespace, &incoming);
        self.shared.changed.notify_all();
        json_response(201, &object)
    }

    fn replace(&self, request: &Request, namespace: &str, name: &str) -> Response {
        let incoming = match decode_lease(request, namespace) {
            Ok(incoming) => incoming,
            Err(response) => return response,
        };
        if incoming.name != name {
            return bad_request(&format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                incoming.name
            ));
        }
        let mut st = self.shared.lock();
        let existing = st.objects.get(&key(namespace, name)).cloned();
        let existing_uid = existing.as_ref().map(|o| str_at(o, "/metadata/uid")).unwrap_or_default();
        if !incoming.uid.is_empty() && incoming.uid != existing_uid {
            return precondition_conflict(namespace, name, "UID", &incoming.uid, &existing_uid);
        }
        let Some(existing) = existing else {
            // Leases allow create on update: a PUT without a uid creates the Lease.
            if !st.namespaces.contains(namespace) {
                return namespace_not_found(namespace);
            }
            let errors = validate(&incoming);
            if !errors.is_empty() {
                return invalid_response("Lease", name, &errors);
            }
            if self.forbidden.contains("create") {
                return forbidden_response("create", Some(namespace), Some(name));
            }
            let object = insert_new(&mut st, namespace, &incoming);
            self.shared.changed.notify_all();
            return json_response(201, &object);
        };
        let stored_rv = str_at(&existing, "/metadata/resourceVersion");
        match incoming.resource_version.as_str() {
            "" | "0" => {
                let error = FieldError {
                    reason: "FieldValueInvalid",
                    field: "metadata.resourceVersion".into(),
                    body: "Invalid value: 0x0: must be specified for an update".into(),
                };
                return invalid_response("leases", name, &[error]);
            }
            rv if rv.parse::<u64>().is_err() => {
                let error = invalid(
                    "resourceVersion",
                    &Value::String(rv.to_string()).to_string(),
                    &format!("strconv.ParseUint: parsing {}: invalid syntax", Value::String(rv.to_string())),
                );
                return invalid_response("leases", name, &[error]);
            }
            rv if rv != stored_rv => {
                return conflict(
                    name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                );
            }
            _ => {}
        }
        let errors = validate(&incoming);
        if !errors.is_empty() {
            return invalid_response("Lease", name, &errors);
        }
        let mut object = build_object(
            namespace,
            &incoming,
            &existing_uid,
            &str_at(&existing, "/metadata/creationTimestamp"),
            &stored_rv,
        );
        if object == existing {
            // etcd skips a write that changes nothing: same object, same resourceVersion, no event.
            return json_response(200, &existing);
        }
        let rv = st.next_rv();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.objects.insert(key(namespace, name), object.clone());
        st.record("MODIFIED", namespace, name, object.clone());
        self.shared.changed.notify_all();
        json_response(200, &object)
    }

    fn delete(&self, request: &Request, namespace: &str, name: &str) -> Response {
        let options = match decode_delete_options(request) {
            Ok(options) => options,
            Err(response) => return response,
        };
        let mut st = self.shared.lock();
        let Some(existing) = st.objects.get(&key(namespace, name)) else {
            return not_found(name);
        };
        if let Some(response) = check_delete_preconditions(&options, existing, name) {
            return response;
        }
        let object = remove(&mut st, namespace, name);
        self.shared.changed.notify_all();
        json_response(200, &object)
    }

    fn delete_collection(&self, request: &Request, namespace: &str) -> Response {
        if let Err(response) = decode_delete_options(request) {
            return response;
        }
        let filter = match Filter::parse(Some(namespace.to_string()), request.param("fieldSelector").as_deref()) {
            Ok(filter) => filter,
            Err(response) => return response,
        };
        let mut st = self.shared.lock();
        let names: Vec<String> =
            st.objects.keys().filter(|(ns, name)| filter.matches(ns, name)).map(|(_, name)| name.clone()).collect();
        let items: Vec<Value> = names.iter().map(|name| list_item(&remove(&mut st, namespace, name))).collect();
        self.shared.changed.notify_all();
        json_response(200, &json!({"kind": "LeaseList", "apiVersion": API_VERSION, "metadata": {}, "items": items}))
    }
}

fn namespace_not_found(namespace: &str) -> Response {
    status_response(
        404,
        "NotFound",
        &format!("namespaces \"{namespace}\" not found"),
        Some(json!({"name": namespace, "kind": "namespaces"})),
    )
}

/// Stores a new Lease with a fresh uid, creation time and resourceVersion, and records ADDED.
fn insert_new(st: &mut State, namespace: &str, incoming: &Incoming) -> Value {
    let rv = st.next_rv();
    let object = build_object(namespace, incoming, &new_uid(), &rfc3339_seconds(SystemTime::now()), &rv.to_string());
    st.objects.insert(key(namespace, &incoming.name), object.clone());
    st.record("ADDED", namespace, &incoming.name, object.clone());
    object
}

/// Removes a Lease; the deleted object carries the resourceVersion of the deletion, as the real
/// server answers it and sends it in the DELETED event.
fn remove(st: &mut State, namespace: &str, name: &str) -> Value {
    let rv = st.next_rv();
    let mut object = st.objects.remove(&key(namespace, name)).unwrap_or_default();
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    st.record("DELETED", namespace, name, object.clone());
    object
}

fn build_object(namespace: &str, incoming: &Incoming, uid: &str, created: &str, rv: &str) -> Value {
    let mut metadata = Map::new();
    metadata.insert("name".into(), json!(incoming.name));
    if !incoming.generate_name.is_empty() {
        metadata.insert("generateName".into(), json!(incoming.generate_name));
    }
    metadata.insert("namespace".into(), json!(namespace));
    metadata.insert("uid".into(), json!(uid));
    metadata.insert("resourceVersion".into(), json!(rv));
    metadata.insert("creationTimestamp".into(), json!(created));
    for (field, map) in [("labels", &incoming.labels), ("annotations", &incoming.annotations)] {
        if let Some(map) = map.as_ref().filter(|m| !m.is_empty()) {
            metadata.insert(field.into(), Value::Object(map.clone()));
        }
    }
    json!({
        "kind": "Lease",
        "apiVersion": API_VERSION,
        "metadata": metadata,
        "spec": incoming.spec,
    })
}

/// A list item: the object without kind and apiVersion, as the real server lists them.
fn list_item(object: &Value) -> Value {
    let mut item = object.clone();
    if let Some(map) = item.as_object_mut() {
        map.remove("kind");
        map.remove("apiVersion");
    }
    item
}

fn str_at(value: &Value, pointer: &str) -> String {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or_default().to_string()
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn cannot_decode(detail: &str) -> Response {
    bad_request(&format!("Lease in version \"v1\" cannot be handled as a Lease: {detail}"))
}

fn wrong_type(value: &Value, go_field: &str, go_type: &str) -> Response {
    let shown = match value {
        Value::Number(n) => format!("number {n}"),
        other => json_type(other).to_string(),
    };
    cannot_decode(&format!("json: cannot unmarshal {shown} into Go struct field {go_field} of type {go_type}"))
}

fn body_json(request: &Request) -> Result<Value, Response> {
    let content_type = request.header("content-type").unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if media != "application/json" {
        return Err(status_response(
            415,
            "UnsupportedMediaType",
            &format!(
                "the body of the request was in an unknown format - accepted media types include: \
                 application/json, application/yaml, application/vnd.kubernetes.protobuf (got {content_type:?})"
            ),
            None,
        ));
    }
    serde_json::from_slice(&request.body)
        .map_err(|e| bad_request(&format!("couldn't get version/kind; json parse error: {e}")))
}

/// Decodes a Lease body as the real server does: wrong JSON types are 400, unknown fields are
/// dropped, MicroTimes are parsed and written back in UTC with six fractional digits, and a namespace
/// that differs from the URL's is 400.
fn decode_lease(request: &Request, url_namespace: &str) -> Result<Incoming, Response> {
    let body = body_json(request)?;
    let Value::Object(body) = body else {
        return Err(bad_request(&format!(
            "couldn't get version/kind; json parse error: json: cannot unmarshal {} into Go value of type \
             struct {{ APIVersion string \"json:\\\"apiVersion,omitempty\\\"\"; Kind string \"json:\\\"kind,omitempty\\\"\" }}",
            json_type(&body)
        )));
    };
    let api_version = body.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = body.get("kind").and_then(Value::as_str).unwrap_or("");
    if !api_version.is_empty() && api_version != API_VERSION {
        return Err(bad_request(&format!(
            "the API version in the data ({api_version}) does not match the expected API version ({API_VERSION})"
        )));
    }
    if !kind.is_empty() && kind != "Lease" {
        return Err(bad_request(&format!(
            "no kind \"{kind}\" is registered for version \"{API_VERSION}\" in scheme \"pkg/api/legacyscheme/scheme.go:30\""
        )));
    }
    let empty = Map::new();
    let metadata = match body.get("metadata") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(m)) => m,
        Some(other) => return Err(wrong_type(other, "Lease.metadata", "v1.ObjectMeta")),
    };
    let meta_string = |field: &str| -> Result<String, Response> {
        match metadata.get(field) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(wrong_type(other, &format!("ObjectMeta.metadata.{field}"), "string")),
        }
    };
    let meta_map = |field: &str| -> Result<Option<Map<String, Value>>, Response> {
        match metadata.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => {
                for value in m.values() {
                    if !value.is_string() && !value.is_null() {
                        return Err(wrong_type(value, &format!("ObjectMeta.metadata.{field}"), "string"));
                    }
                }
                let cleaned = m.iter().map(|(k, v)| (k.clone(), json!(v.as_str().unwrap_or("")))).collect();
                Ok(Some(cleaned))
            }
            Some(other) => Err(wrong_type(other, &format!("ObjectMeta.metadata.{field}"), "map[string]string")),
        }
    };
    let incoming_namespace = meta_string("namespace")?;
    let mut incoming = Incoming {
        name: meta_string("name")?,
        generate_name: meta_string("generateName")?,
        namespace: incoming_namespace,
        uid: meta_string("uid")?,
        resource_version: meta_string("resourceVersion")?,
        labels: meta_map("labels")?,
        annotations: meta_map("annotations")?,
        spec: Map::new(),
    };
    let spec = match body.get("spec") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(s)) => s,
        Some(other) => return Err(wrong_type(other, "Lease.spec", "v1.LeaseSpec")),
    };
    for (field, value) in spec {
        if value.is_null() {
            continue;
        }
        let go_field = format!("LeaseSpec.spec.{field}");
        let kept = match field.as_str() {
            "holderIdentity" | "strategy" | "preferredHolder" => match value {
                Value::String(_) => value.clone(),
                other => return Err(wrong_type(other, &go_field, "string")),
            },
            "leaseDurationSeconds" | "leaseTransitions" => match value.as_i64() {
                Some(n) if i32::try_from(n).is_ok() => json!(n),
                _ => return Err(wrong_type(value, &go_field, "int32")),
            },
            "acquireTime" | "renewTime" => match value {
                Value::String(s) => match normalize_micro_time(s) {
                    Some(t) => json!(t),
                    None => {
                        return Err(cannot_decode(&format!(
                            "parsing time {} as \"2006-01-02T15:04:05.000000Z07:00\": cannot parse {} as \"2006-01-02T15:04:05.000000Z07:00\"",
                            value, value
                        )));
                    }
                },
                other => return Err(wrong_type(other, &go_field, "string")),
            },
            _ => continue, // unknown fields are dropped
        };
        incoming.spec.insert(field.clone(), kept);
    }
    if !incoming.namespace.is_empty() && incoming.namespace != url_namespace {
        return Err(bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    incoming.namespace = url_namespace.to_string();
    Ok(incoming)
}

struct DeleteOptions {
    uid: Option<String>,
    resource_version: Option<String>,
}

fn decode_delete_options(request: &Request) -> Result<DeleteOptions, Response> {
    let mut options = DeleteOptions { uid: None, resource_version: None };
    if request.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(options);
    }
    let body: Value = serde_json::from_slice(&request.body)
        .map_err(|e| bad_request(&format!("couldn't get version/kind; json parse error: {e}")))?;
    if let Some(preconditions) = body.get("preconditions").filter(|p| !p.is_null()) {
        let field = |name: &str| -> Result<Option<String>, Response> {
            match preconditions.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(bad_request(&format!(
                    "json: cannot unmarshal {} into Go struct field Preconditions.preconditions.{name} of type string",
                    json_type(other)
                ))),
            }
        };
        options.uid = field("uid")?;
        options.resource_version = field("resourceVersion")?;
    }
    Ok(options)
}

fn check_delete_preconditions(options: &DeleteOptions, existing: &Value, name: &str) -> Option<Response> {
    let conflict = |why: String| {
        status_response(
            409,
            "Conflict",
            &format!("Operation cannot be fulfilled on Lease.{GROUP} \"{name}\": {why}"),
            Some(json!({"name": name, "group": GROUP, "kind": "Lease"})),
        )
    };
    let uid = str_at(existing, "/metadata/uid");
    let rv = str_at(existing, "/metadata/resourceVersion");
    if let Some(wanted) = options.uid.as_ref().filter(|u| **u != uid) {
        return Some(conflict(format!(
            "the UID in the precondition ({wanted}) does not match the UID in record ({uid}). \
             The object might have been deleted and then recreated"
        )));
    }
    if let Some(wanted) = options.resource_version.as_ref().filter(|r| **r != rv) {
        return Some(conflict(format!(
            "the ResourceVersion in the precondition ({wanted}) does not match the ResourceVersion in record ({rv}). \
             The object might have been modified"
        )));
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

fn is_dns1123_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|label| {
            let bytes = label.as_bytes();
            let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
            !bytes.is_empty()
                && bytes.first().is_some_and(alnum)
                && bytes.last().is_some_and(alnum)
                && bytes.iter().all(|b| alnum(b) || *b == b'-')
        })
}

fn name_errors(field: &str, value: &str, checked: &str) -> Vec<FieldError> {
    let quoted = Value::String(value.to_string()).to_string();
    let mut errors = Vec::new();
    if checked.len() > 253 {
        errors.push(invalid(field, &quoted, "must be no more than 253 characters"));
    }
    if !is_dns1123_subdomain(checked) {
        errors.push(invalid(field, &quoted, NAME_REGEX_MESSAGE));
    }
    errors
}

/// ValidateLease of Kubernetes v1.28: object meta (name), then the spec.
fn validate(incoming: &Incoming) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if !incoming.generate_name.is_empty() {
        // A prefix may end with '-'.
        let mut masked = incoming.generate_name.clone();
        if masked.ends_with('-') {
            masked.pop();
            masked.push('a');
        }
        errors.extend(name_errors("metadata.generateName", &incoming.generate_name, &masked));
    }
    if incoming.name.is_empty() {
        errors.push(FieldError {
            reason: "FieldValueRequired",
            field: "metadata.name".into(),
            body: "Required value: name or generateName is required".into(),
        });
    } else {
        errors.extend(name_errors("metadata.name", &incoming.name, &incoming.name));
    }
    let number = |field: &str| incoming.spec.get(field).and_then(Value::as_i64);
    if let Some(duration) = number("leaseDurationSeconds").filter(|d| *d <= 0) {
        errors.push(invalid("spec.leaseDurationSeconds", &duration.to_string(), "must be greater than 0"));
    }
    if let Some(transitions) = number("leaseTransitions").filter(|t| *t < 0) {
        errors.push(invalid("spec.leaseTransitions", &transitions.to_string(), "must be greater than or equal to 0"));
    }
    errors
}

fn generate_name(base: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let base: String = base.chars().take(58).collect();
    let mut seed = random_u64();
    let suffix: String = (0..5)
        .map(|_| {
            let c = ALPHABET[(seed % ALPHABET.len() as u64) as usize] as char;
            seed /= ALPHABET.len() as u64;
            c
        })
        .collect();
    format!("{base}{suffix}")
}

// ---------------------------------------------------------------------------------------------
// Watches
// ---------------------------------------------------------------------------------------------

struct WatchRequest {
    filter: Filter,
    /// None: start with ADDED for what exists now.
    since: Option<u64>,
    bookmarks: bool,
    timeout: Duration,
}

enum WatchStep {
    /// Lines to send now.
    Send(Vec<String>),
    /// timeoutSeconds passed: end the stream cleanly.
    End,
    /// Dropped, restarted, stopped, or the client went away: close the connection abruptly.
    Abort,
}

fn event_line(kind: &str, object: &Value) -> String {
    let mut line = to_json(&json!({"type": kind, "object": object}));
    line.push('\n');
    line
}

fn bookmark_line(rv: u64) -> String {
    let object = json!({
        "kind": "Lease",
        "apiVersion": API_VERSION,
        "metadata": {"resourceVersion": rv.to_string(), "creationTimestamp": null},
        "spec": {},
    });
    event_line("BOOKMARK", &object)
}

/// Counts an open watch for as long as it lives.
struct OpenWatch<'a> {
    shared: &'a Shared,
    conn: u64,
}

impl Drop for OpenWatch<'_> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.open_watches -= 1;
        if let Some(conn) = st.conns.get_mut(&self.conn) {
            conn.watching = false;
        }
    }
}

/// Streams one watch; false when the connection must be closed.
fn serve_watch(shared: &Arc<Shared>, conn: u64, w: &mut TcpStream, watch: &WatchRequest, keep_alive: bool) -> bool {
    // Notice a client that goes away while nothing is being sent: peek (which consumes nothing)
    // blocks until the client sends or closes.
    let gone = Arc::new(AtomicBool::new(false));
    if let Ok(peeker) = w.try_clone() {
        let gone = gone.clone();
        let shared = shared.clone();
        let _ = thread::Builder::new().name("test-apiserver-peek".into()).spawn(move || {
            let mut byte = [0u8; 1];
            if matches!(peeker.peek(&mut byte), Ok(0) | Err(_)) {
                gone.store(true, Ordering::SeqCst);
                // Take the lock so that the watch is either waiting (and is woken) or will see `gone`.
                drop(shared.lock());
                shared.changed.notify_all();
            }
        });
    }

    let (initial, mut last_rv, expired, _open) = {
        let mut st = shared.lock();
        if st.stopping || st.conns.get(&conn).is_none_or(|c| c.killed) {
            return false;
        }
        st.open_watches += 1;
        if let Some(c) = st.conns.get_mut(&conn) {
            c.watching = true;
        }
        let open = OpenWatch { shared, conn };
        let current = st.rv;
        match watch.since {
            None => {
                let lines: Vec<String> = st
                    .objects
                    .iter()
                    .filter(|((ns, name), _)| watch.filter.matches(ns, name))
                    .map(|(_, object)| event_line("ADDED", object))
                    .collect();
                (lines, current, None, open)
            }
            Some(since) if since < st.history_start => {
                let status = json!({
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": format!("too old resource version: {since} ({})", st.history_start),
                    "reason": "Expired",
                    "code": 410,
                });
                (Vec::new(), current, Some(event_line("ERROR", &status)), open)
            }
            Some(since) => (Vec::new(), since, None, open),
        }
    };

    let head = response_head(200, "application/json", None, &[], !keep_alive);
    if w.write_all(head.as_bytes()).and_then(|()| w.flush()).is_err() {
        return false;
    }
    for line in &initial {
        if write_chunk(w, line.as_bytes()).is_err() {
            return false;
        }
    }
    if let Some(line) = expired {
        return write_chunk(w, line.as_bytes()).and_then(|()| write_chunk(w, b"")).is_ok();
    }

    let deadline = Instant::now() + watch.timeout;
    let mut next_bookmark = Instant::now() + shared.lock().bookmark_interval;
    loop {
        let step = {
            let mut st = shared.lock();
            loop {
                if st.stopping || gone.load(Ordering::SeqCst) || st.conns.get(&conn).is_none_or(|c| c.killed) {
                    break WatchStep::Abort;
                }
                let start = st.events.partition_point(|e| e.rv <= last_rv);
                if start < st.events.len() {
                    let lines: Vec<String> = st.events[start..]
                        .iter()
                        .filter(|e| watch.filter.matches(&e.namespace, &e.name))
                        .map(|e| event_line(e.kind, &e.object))
                        .collect();
                    last_rv = st.events[st.events.len() - 1].rv;
                    if !lines.is_empty() {
                        break WatchStep::Send(lines);
                    }
                }
                let now = Instant::now();
                if now >= deadline {
                    break WatchStep::End;
                }
                if watch.bookmarks && now >= next_bookmark {
                    next_bookmark = now + st.bookmark_interval;
                    last_rv = last_rv.max(st.rv);
                    break WatchStep::Send(vec![bookmark_line(st.rv)]);
                }
                let wake = if watch.bookmarks { deadline.min(next_bookmark) } else { deadline };
                st = shared.changed.wait_timeout(st, wake - now).unwrap_or_else(|e| e.into_inner()).0;
            }
        };
        match step {
            WatchStep::Send(lines) => {
                for line in lines {
                    if write_chunk(w, line.as_bytes()).is_err() {
                        return false;
                    }
                }
            }
            WatchStep::End => return write_chunk(w, b"").is_ok(),
            WatchStep::Abort => {
                let _ = w.shutdown(Shutdown::Both);
                return false;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Identifiers and times
// ---------------------------------------------------------------------------------------------

fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos());
    hasher.finish()
}

/// A random version-4 UUID, as the real server gives objects and audit ids.
fn new_uid() -> String {
    let (high, low) = (random_u64(), random_u64());
    let high = (high & !0xf000) | 0x4000;
    let low = (low & !(0xc000 << 48)) | (0x8000 << 48);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0xffff,
        low >> 48,
        low & 0xffff_ffff_ffff
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) to days since 1970-01-01.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default()
}

fn split_seconds(seconds: i64) -> ((i64, u32, u32), (i64, i64, i64)) {
    let days = seconds.div_euclid(86_400);
    let rest = seconds.rem_euclid(86_400);
    (civil_from_days(days), (rest / 3600, rest / 60 % 60, rest % 60))
}

/// `2026-11-26T03:28:52Z`, as creationTimestamp.
fn rfc3339_seconds(time: SystemTime) -> String {
    let ((year, month, day), (hour, minute, second)) = split_seconds(unix_seconds(time));
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
}

/// `Thu, 26 Nov 2026 03:28:58 GMT`, for the Date header.
fn http_date(time: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let seconds = unix_seconds(time);
    let weekday = DAYS[seconds.div_euclid(86_400).rem_euclid(7) as usize];
    let ((year, month, day), (hour, minute, second)) = split_seconds(seconds);
    let month = MONTHS[month as usize - 1];
    format!("{weekday}, {day:02} {month} {year} {hour:02}:{minute:02}:{second:02} GMT")
}

/// Parses a MicroTime as Go's `time.Parse("2006-01-02T15:04:05.000000Z07:00", s)` does (exactly six
/// fractional digits; `Z` or a `±hh:mm` offset) and writes it back as the real server does: in UTC,
/// `2026-11-26T03:00:00.000000Z`. None when Go would refuse it.
fn normalize_micro_time(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if b.len() < 27 || !s.is_ascii() {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = &s[range];
        part.bytes().all(|c| c.is_ascii_digit()).then(|| part.parse().ok())?
    };
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':'), (19, b'.')];
    if separators.iter().any(|&(i, c)| b[i] != c) {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    let micros = &s[20..26];
    digits(20..26)?;
    let offset = match &s[26..] {
        "Z" => 0,
        zone if zone.len() == 6 && (zone.starts_with('+') || zone.starts_with('-')) && &zone[3..4] == ":" => {
            let (h, m) = (digits(27..29)?, digits(30..32)?);
            if h > 23 || m > 59 {
                return None;
            }
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&month) || day < 1 || day > month_days[month as usize - 1] {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    if offset == 0 {
        return Some(s.to_string());
    }
    let seconds =
        days_from_civil(year, month as u32, day as u32) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    let ((year, month, day), (hour, minute, second)) = split_seconds(seconds);
    Some(format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{micros}Z"))
}
