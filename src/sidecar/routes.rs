//! What the side-car serves, and to whom: `/locks/NAME`, `/healthz` and `/metrics` to the processes of
//! its pod; nothing to web pages.
//!
//! A web page can reach a loopback port: by DNS rebinding (a name of the attacker's that resolves to
//! 127.0.0.1, so that the browser sends the attacker's `Host`), or by a plain cross-site "simple
//! request" (a POST the browser sends without asking first). So every request on the protocol's
//! listeners must name a loopback host, or the address it arrived on, in `Host` (or not name one at
//! all, as no browser does), and must not carry `Origin` or a cross-site `Sec-Fetch-Site`, which
//! browsers add and the metaparticle clients never send. Refused requests get 403.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use hyper::Method as HttpMethod;

use super::locks::{Locks, Method};
use super::metrics::Metrics;
use crate::health::{self, Answer};
use crate::http::{Handler, Request, Response};
use crate::validate::is_dns1123_subdomain;

/// The methods served on /locks/NAME.
const ALLOW: &str = "GET, HEAD, PUT, POST, DELETE";

/// The protocol's handler: guard, then route.
pub fn protocol(
    locks: Arc<Locks>,
    metrics: Metrics,
    connections: impl Fn() -> usize + Send + Sync + 'static,
) -> Handler {
    let connections = Arc::new(connections);
    Arc::new(move |request: Request| {
        let (locks, metrics, connections) = (Arc::clone(&locks), metrics.clone(), Arc::clone(&connections));
        Box::pin(async move {
            let started = Instant::now();
            let response = match refusal(&request) {
                Some(refused) => {
                    tracing::warn!(method = %request.method, path = %request.path, reason = %refused, "refused a request");
                    Response::error(403, refused)
                }
                None => route(&request, &locks, &metrics, &*connections).await,
            };
            metrics.answered(&request.method, response.status);
            tracing::debug!(
                method = %request.method,
                path = %request.path,
                status = response.status,
                took = ?started.elapsed(),
                "answered"
            );
            response
        })
    })
}

/// The handler of `--health-addr` on the side-car: `/healthz` and `/metrics` only, for the kubelet and
/// Prometheus (which address the pod by its IP: no `Host` check there, and nothing to change).
pub fn probes(locks: Arc<Locks>, metrics: Metrics, connections: impl Fn() -> usize + Send + Sync + 'static) -> Handler {
    let connections = Arc::new(connections);
    Arc::new(move |request: Request| {
        let answer = health::probe(&request, |path| probe(path, &locks, &metrics, &*connections, &request));
        Box::pin(async move { answer })
    })
}

/// `/healthz`: the side-car is alive and serving (process liveness, and readiness for a startup probe).
/// It does not turn 503 on API failures: restarting the side-car cannot mend the API server, and its
/// clients' locks are answered as held through brief failures anyway.
fn probe(
    path: &str,
    locks: &Locks,
    metrics: &Metrics,
    connections: &(dyn Fn() -> usize + Send + Sync),
    request: &Request,
) -> Option<Answer> {
    match path {
        "/healthz" => Some(Answer { status: 200, content_type: "text/plain; charset=utf-8", body: "ok\n".into() }),
        "/metrics" => {
            metrics.held.set(locks.held_count() as i64);
            metrics.connections.set(connections() as i64);
            Some(metrics.exposition(request.header("accept")))
        }
        _ => None,
    }
}

async fn route(
    request: &Request,
    locks: &Locks,
    metrics: &Metrics,
    connections: &(dyn Fn() -> usize + Send + Sync),
) -> Response {
    if let Some(raw) = request.path.strip_prefix("/locks/").filter(|name| !name.is_empty() && !name.contains('/')) {
        let name = match percent_decode(raw) {
            Some(name) if is_dns1123_subdomain(&name) && is_dns1123_subdomain(&locks.lease_name(&name)) => name,
            Some(name) if is_dns1123_subdomain(&name) => {
                return Response::error(
                    400,
                    format!(
                        "lock name {name:?} is too long: its Lease {:?} would have more than 253 characters",
                        locks.lease_name(&name)
                    ),
                );
            }
            _ => {
                return Response::error(
                    400,
                    format!(
                        "invalid lock name {raw:?}: must be a lowercase RFC 1123 subdomain (a Lease name: lowercase \
                         letters, digits, '-' and '.', at most 253 characters)"
                    ),
                );
            }
        };
        let method = match request.method {
            HttpMethod::GET => Method::Get,
            HttpMethod::HEAD => Method::Head,
            HttpMethod::PUT => Method::Put,
            HttpMethod::POST => Method::Post,
            HttpMethod::DELETE => Method::Delete,
            _ => {
                return Response::error(405, format!("method {} is not served on /locks/NAME", request.method))
                    .with_header("Allow", ALLOW);
            }
        };
        return locks.answer(method, &name).await;
    }
    match probe(&request.path, locks, metrics, connections, request) {
        Some(_) if request.method != HttpMethod::GET && request.method != HttpMethod::HEAD => {
            Response::error(405, format!("method {} is not served on {}", request.method, request.path))
                .with_header("Allow", "GET, HEAD")
        }
        Some(answer) => Response::text(answer.status, answer.content_type, answer.body),
        None => Response::error(
            404,
            format!("unknown path {:?}: locks are served at /locks/NAME, and /healthz, /metrics", request.path),
        ),
    }
}

/// Why a request must not be served, if it must not: it comes from a web page.
fn refusal(request: &Request) -> Option<String> {
    let hosts = request
        .authority
        .iter()
        .map(String::as_str)
        .chain(request.headers.get_all("host").iter().map(|h| h.to_str().unwrap_or("")));
    if let Some(host) = hosts.into_iter().find(|host| !host_allowed(host, request.local)) {
        return Some(format!(
            "Host {host:?} is not this side-car's: only localhost, a loopback address or the address the request \
             came to are served (a web page's request, through DNS rebinding?)"
        ));
    }
    // Present is enough: a value that is not visible ASCII is refused too (found by review: it read as
    // no header at all).
    if let Some(origin) = request.headers.get("origin") {
        let origin = String::from_utf8_lossy(origin.as_bytes());
        return Some(format!("requests with an Origin ({origin:?}) come from web pages and are not served"));
    }
    let site = request.headers.get_all("sec-fetch-site").iter().map(|site| String::from_utf8_lossy(site.as_bytes()));
    for site in site {
        if !site.eq_ignore_ascii_case("same-origin") && !site.eq_ignore_ascii_case("none") {
            return Some(format!("a {site:?} request from a web page (Sec-Fetch-Site) is not served"));
        }
    }
    None
}

/// Whether `host` (a `Host` header: name or address, with or without a port) names this side-car:
/// `localhost`, a loopback address, or the address the connection arrived on.
fn host_allowed(host: &str, local: SocketAddr) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6] or [v6]:port
        match rest.split_once(']') {
            Some((address, port)) if port.is_empty() || is_port(port.strip_prefix(':').unwrap_or("x")) => address,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => host,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match name.parse::<IpAddr>() {
        Ok(address) => {
            address.is_loopback() || address == local.ip() || address.to_canonical() == local.ip().to_canonical()
        }
        Err(_) => false,
    }
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit())
}

/// Decode `%XX` escapes, as the original side-car did (its router saw decoded paths). `None` if an escape
/// is malformed or the result is not text.
fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> SocketAddr {
        "127.0.0.1:13131".parse().unwrap()
    }

    #[test]
    fn loopback_hosts_and_the_local_address_are_allowed() {
        for host in [
            "localhost",
            "localhost:13131",
            "LocalHost.:13131",
            "127.0.0.1:13131",
            "127.1.2.3",
            "[::1]:13131",
            "[::1]",
            "[::ffff:127.0.0.1]:8080",
        ] {
            assert!(host_allowed(host, local()), "{host}");
        }
        let pod: SocketAddr = "10.1.2.3:13131".parse().unwrap();
        assert!(host_allowed("10.1.2.3:13131", pod));
        for host in [
            "evil.example:13131",
            "evil.example",
            "localhost.evil.example",
            "10.1.2.3:13131",
            "[::1]x",
            "localhost:port",
            "",
        ] {
            assert!(!host_allowed(host, local()), "{host}");
        }
    }

    #[test]
    fn percent_escapes_are_decoded() {
        assert_eq!(percent_decode("a%2db").as_deref(), Some("a-b"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("a%2Fb").as_deref(), Some("a/b"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
