//! The little HTTP/1.1 that mpsync's servers (the side-car, the health probes) need, parsed by hand:
//! requests are one line and a few headers, every response closes the connection. Parsing and
//! rendering are pure functions, tested without sockets.

use std::fmt::Write as _;
use std::future::Future;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// How long a client gets to send its whole request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client gets to take its response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests larger than these are refused; mpsync's requests have no body at all.
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 1024 * 1024;

/// Serve one connection: read one request (within `READ_TIMEOUT`), answer it with `answer`, close.
/// HEAD gets the answer's status and headers without the body.
pub async fn serve_connection<F, Fut>(mut stream: TcpStream, answer: F)
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let response = match timeout(READ_TIMEOUT, read_request(&mut stream)).await {
        Err(_) => Some(Response::error(408, "the request did not arrive in time")),
        Ok(Received::Gone) => None,
        Ok(Received::Bad(response)) => Some(response),
        Ok(Received::Request(request)) => {
            let head = request.method == "HEAD";
            let response = answer(request).await;
            Some(if head { response.head_only() } else { response })
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
    // mpsync's requests have no body: one that comes is read and ignored.
    let mut remaining = request.body_to_read.saturating_sub(buffer.len() - head_length);
    while remaining > 0 {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Received::Gone,
            Ok(n) => remaining = remaining.saturating_sub(n),
        }
    }
    Received::Request(request)
}

/// A request, as far as mpsync's servers care.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The target's path, without query or fragment.
    pub path: String,
    /// Body bytes to read (and ignore) before answering.
    pub body_to_read: usize,
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
        return Err(Response::error(413, "request body too large (mpsync's requests have none)"));
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

fn is_token_char(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// A response, always closing the connection.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: String,
    head_only: bool,
}

impl Response {
    pub fn json(status: u16, value: &Value) -> Response {
        Response::text(status, "application/json", format!("{value}\n"))
    }

    pub fn text(status: u16, content_type: &'static str, body: String) -> Response {
        Response { status, content_type, headers: Vec::new(), body, head_only: false }
    }

    /// An error, as the original side-car sent them: `{"message": ...}`.
    pub fn error(status: u16, message: impl Into<String>) -> Response {
        Response::json(status, &json!({ "message": message.into() }))
    }

    pub fn with_header(mut self, name: &'static str, value: &str) -> Response {
        self.headers.push((name, value.to_string()));
        self
    }

    /// For HEAD: the same status and headers, no body.
    pub fn head_only(mut self) -> Response {
        self.head_only = true;
        self
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
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
    fn responses_close_the_connection_and_carry_their_length() {
        let response = Response::error(405, "no").with_header("Allow", "GET");
        let text = String::from_utf8(response.render()).unwrap();
        let body = "{\"message\":\"no\"}\n";
        assert_eq!(
            text,
            format!(
                "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\nAllow: GET\r\n\r\n{body}",
                body.len()
            )
        );
        let head = String::from_utf8(Response::error(404, "no").head_only().render()).unwrap();
        assert!(head.ends_with("\r\n\r\n") && head.contains(&format!("Content-Length: {}", body.len())), "{head}");
    }
}
