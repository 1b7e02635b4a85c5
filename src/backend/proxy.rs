//! Which proxy carries mpsync's connections to the API server, decided as kubectl decides it, and the
//! two handshakes that open a tunnel through one (HTTP `CONNECT`, SOCKS5).
//!
//! kubectl's rules (client-go, Go's `net/http`):
//! - the kubeconfig cluster's `proxy-url`, when set, is used for every request; `NO_PROXY` does not
//!   apply to it;
//! - otherwise `HTTPS_PROXY` for an `https://` server and `HTTP_PROXY` for an `http://` one (the
//!   upper-case name first, then the lower-case one; an empty value counts as unset), unless the
//!   server is `localhost`, a loopback address, or matched by `NO_PROXY`;
//! - `NO_PROXY` is a comma-separated list of IP addresses (`10.0.0.1`, `[::1]:6443`), CIDR ranges
//!   (`10.0.0.0/8`), domain names (`example.com` matches it and its subdomains, `.example.com` and
//!   `*.example.com` only the subdomains), each optionally with a port, or `*` for everything;
//! - a proxy value in the environment without a scheme is `http://` (a kubeconfig's `proxy-url` needs
//!   one); `http://USER:PASSWORD@HOST:PORT` sends Basic
//!   credentials; `socks5://` (and `socks5h://`) lets the proxy resolve the server's name.
//!
//! Where mpsync differs: it tunnels with `CONNECT` to `http://` servers too (Go forwards those as
//! plain proxied requests), and it does not speak TLS to the proxy itself (`https://` proxy URLs are
//! refused with a clear message).

use std::fmt;
use std::net::IpAddr;

use base64::Engine;
use http::Uri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The proxy settings from the environment, read once.
#[derive(Clone, Debug, Default)]
pub struct ProxyEnv {
    /// `(variable name, value)` of the first non-empty of `HTTPS_PROXY`, `https_proxy`.
    pub https: Option<(&'static str, String)>,
    /// `(variable name, value)` of the first non-empty of `HTTP_PROXY`, `http_proxy`.
    pub http: Option<(&'static str, String)>,
    /// The first non-empty of `NO_PROXY`, `no_proxy`.
    pub no_proxy: String,
    /// `REQUEST_METHOD` is set: a CGI environment, where `HTTP_PROXY` may come from a request header.
    pub cgi: bool,
}

impl ProxyEnv {
    pub fn from_process() -> ProxyEnv {
        let first = |names: [&'static str; 2]| {
            names.into_iter().find_map(|name| {
                let value = std::env::var(name).ok()?;
                (!value.trim().is_empty()).then(|| (name, value.trim().to_string()))
            })
        };
        ProxyEnv {
            https: first(["HTTPS_PROXY", "https_proxy"]),
            http: first(["HTTP_PROXY", "http_proxy"]),
            no_proxy: first(["NO_PROXY", "no_proxy"]).map(|(_, value)| value).unwrap_or_default(),
            cgi: std::env::var_os("REQUEST_METHOD").is_some_and(|value| !value.is_empty()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    /// An HTTP proxy: `CONNECT host:port`.
    Http,
    /// A SOCKS5 proxy (RFC 1928), the server's name resolved by the proxy.
    Socks5,
}

/// A proxy to open tunnels through.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    pub kind: ProxyKind,
    /// Host name or IP address (without brackets).
    pub host: String,
    pub port: u16,
    /// User name and password from the URL, percent-decoded.
    pub credentials: Option<(String, String)>,
    /// The URL without credentials, and where it was set: for messages.
    pub name: String,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the password.
        f.debug_struct("Proxy")
            .field("kind", &self.kind)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.credentials.as_ref().map(|(user, _)| user))
            .field("name", &self.name)
            .finish()
    }
}

impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// The proxy for connections to `server`, if any: the kubeconfig's `proxy-url` when set, else the
/// environment's, as kubectl picks them. An unusable setting is an error that names it.
pub fn select(server: &Uri, proxy_url: Option<&str>, env: &ProxyEnv) -> Result<Option<Proxy>, String> {
    if let Some(url) = proxy_url.map(str::trim).filter(|url| !url.is_empty()) {
        // Unlike the environment's, a kubeconfig's proxy-url needs its scheme and host: kubectl refuses
        // one without.
        if !url.contains("://") {
            return Err(without_scheme_and_host(url));
        }
        return parse(url, "the kubeconfig's proxy-url").map(Some);
    }
    let (variable, value) = match server.scheme_str() {
        Some("https") => match &env.https {
            Some(setting) => setting,
            None => return Ok(None),
        },
        Some("http") => match &env.http {
            Some(_) if env.cgi => {
                return Err("refusing to use HTTP_PROXY in a CGI environment (REQUEST_METHOD is set): \
                            it may come from a request header"
                    .to_string());
            }
            Some(setting) => setting,
            None => return Ok(None),
        },
        _ => return Ok(None),
    };
    let Some(host) = server.host() else { return Ok(None) };
    let port = server.port_u16().unwrap_or(if server.scheme_str() == Some("http") { 80 } else { 443 });
    if !NoProxy::parse(&env.no_proxy).use_proxy(host, port) {
        return Ok(None);
    }
    parse(value, variable).map(Some)
}

/// Why a kubeconfig's proxy-url without `://` is refused: a scheme with no host after it (`http:/h:1`,
/// `http:h:1`), or no scheme at all (`h:1`, `//h:1`), then with the URL to write instead.
fn without_scheme_and_host(url: &str) -> String {
    let url = &redacted(url);
    let bare = url.trim_start_matches('/');
    let after_scheme = bare.split_once(':').and_then(|(scheme, rest)| {
        let mut chars = scheme.chars();
        let is_scheme = chars.next().is_some_and(|first| first.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'));
        is_scheme.then_some(rest)
    });
    let why = match after_scheme {
        // Not HOST:PORT: a scheme, and what follows it is no host.
        Some(rest) if !rest.bytes().all(|b| b.is_ascii_digit()) => {
            "no host after its scheme (kubectl refuses it too); write SCHEME://HOST:PORT".to_string()
        }
        _ => format!("no scheme (kubectl refuses it too); write http://{bare} or socks5://{bare}"),
    };
    format!("unusable proxy {url:?} in the kubeconfig's proxy-url: {why}")
}

/// Whether `host` (as in a URL: `[::1]` for IPv6) is `localhost` or a loopback address, which kubectl
/// never reaches through the environment's proxy.
pub fn is_loopback_host(host: &str) -> bool {
    let host = bare_host(host);
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// A URL's host as rules match it: without IPv6 brackets or a trailing dot, in lower case.
fn bare_host(host: &str) -> String {
    host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_ascii_lowercase()
}

/// A proxy setting as messages show it: a password in it as `xxxxx`, as Go's `URL.Redacted` shows it
/// (found by review, helper-122: an unusable `HTTPS_PROXY` was shown with its password).
fn redacted(value: &str) -> String {
    let start = value.find("://").map_or(0, |scheme| scheme + 3);
    let end = value[start..].find(['/', '?', '#']).map_or(value.len(), |end| start + end);
    match value[start..end].rsplit_once('@') {
        Some((userinfo, _)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{}{user}:xxxxx{}", &value[..start], &value[start + userinfo.len()..]),
            None => value.to_string(),
        },
        None => value.to_string(),
    }
}

/// A proxy URL as Go reads it: no scheme means `http://`; the scheme's default port when none is given.
fn parse(value: &str, origin: &str) -> Result<Proxy, String> {
    let with_scheme = if value.contains("://") { value.to_string() } else { format!("http://{value}") };
    let bad = |why: &str| format!("unusable proxy {:?} in {origin}: {why}", redacted(value));
    let uri: Uri = with_scheme.parse().map_err(|err| bad(&format!("not a URL ({err})")))?;
    let scheme = uri.scheme_str().unwrap_or("http").to_ascii_lowercase();
    let (kind, default_port) = match scheme.as_str() {
        "http" => (ProxyKind::Http, 80),
        "socks5" | "socks5h" => (ProxyKind::Socks5, 1080),
        "https" => {
            return Err(bad("mpsync does not speak TLS to proxies; use an http:// or socks5:// proxy URL"));
        }
        other => return Err(bad(&format!("unsupported scheme {other}:// (use http:// or socks5://)"))),
    };
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if port_out_of_range(authority) {
        return Err(bad("its port is not a port (1 to 65535)"));
    }
    let port = authority.port_u16().unwrap_or(default_port);
    let credentials = authority.as_str().rsplit_once('@').map(|(userinfo, _)| {
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        let decode = |text: &str| percent_encoding::percent_decode_str(text).decode_utf8_lossy().into_owned();
        (decode(user), decode(password))
    });
    let shown_host = if host.contains(':') { format!("[{host}]") } else { host.clone() };
    let name = format!("proxy {scheme}://{shown_host}:{port} (from {origin})");
    Ok(Proxy { kind, host, port, credentials, name })
}

/// `NO_PROXY`, parsed as Go's `golang.org/x/net/http/httpproxy` parses it. Malformed entries are
/// ignored, as there.
#[derive(Debug, Default)]
struct NoProxy {
    everything: bool,
    ips: Vec<IpRule>,
    domains: Vec<DomainRule>,
}

#[derive(Debug)]
enum IpRule {
    Network { network: IpAddr, prefix: u8 },
    Address { ip: IpAddr, port: Option<u16> },
}

#[derive(Debug)]
struct DomainRule {
    /// With a leading dot: `.example.com`.
    suffix: String,
    port: Option<u16>,
    /// `example.com` (no leading dot or `*.`): also matches `example.com` itself.
    also_the_domain: bool,
}

impl NoProxy {
    fn parse(list: &str) -> NoProxy {
        let mut no_proxy = NoProxy::default();
        for entry in list.split(',') {
            let entry = entry.trim().to_ascii_lowercase();
            if entry.is_empty() {
                continue;
            }
            if entry == "*" {
                return NoProxy { everything: true, ..NoProxy::default() };
            }
            if let Some((network, prefix)) = parse_cidr(&entry) {
                no_proxy.ips.push(IpRule::Network { network, prefix });
                continue;
            }
            let (host, port) = match split_host_port(&entry) {
                Some((host, port)) => match port.parse::<u16>() {
                    Ok(port) => (host, Some(port)),
                    Err(_) => continue,
                },
                None => (entry.as_str(), None),
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                continue;
            }
            if let Ok(ip) = host.parse::<IpAddr>() {
                no_proxy.ips.push(IpRule::Address { ip: ip.to_canonical(), port });
                continue;
            }
            let host = host.strip_prefix('*').filter(|rest| rest.starts_with('.')).unwrap_or(host);
            let also_the_domain = !host.starts_with('.');
            let suffix = if also_the_domain { format!(".{host}") } else { host.to_string() };
            no_proxy.domains.push(DomainRule { suffix, port, also_the_domain });
        }
        no_proxy
    }

    /// Whether a connection to `host:port` goes through the proxy.
    fn use_proxy(&self, host: &str, port: u16) -> bool {
        if is_loopback_host(host) || self.everything {
            return false;
        }
        let host = bare_host(host);
        let ip = host.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
        let port_matches = |rule: Option<u16>| rule.is_none_or(|rule| rule == port);
        if let Some(ip) = ip {
            return !self.ips.iter().any(|rule| match *rule {
                IpRule::Network { network, prefix } => in_network(ip, network, prefix),
                IpRule::Address { ip: rule, port } => rule == ip && port_matches(port),
            });
        }
        !self.domains.iter().any(|rule| {
            let name_matches = host.ends_with(&rule.suffix) || (rule.also_the_domain && host == rule.suffix[1..]);
            name_matches && port_matches(rule.port)
        })
    }
}

/// `10.0.0.0/8` or `fd00::/8` into (network, prefix length).
fn parse_cidr(entry: &str) -> Option<(IpAddr, u8)> {
    let (address, prefix) = entry.split_once('/')?;
    let network = address.parse::<IpAddr>().ok()?.to_canonical();
    let prefix: u8 = prefix.parse().ok()?;
    let max = if network.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some((network, prefix))
}

fn in_network(ip: IpAddr, network: IpAddr, prefix: u8) -> bool {
    let bits = |ip: IpAddr| -> (u128, u32) {
        match ip {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        }
    };
    let ((ip, ip_width), (network, width)) = (bits(ip), bits(network));
    if ip_width != width {
        return false;
    }
    let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
    ip & mask == network & mask
}

/// `host:port` or `[v6]:port` into its parts; None when there is no port (or several colons).
fn split_host_port(entry: &str) -> Option<(&str, &str)> {
    if let Some(rest) = entry.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return after.strip_prefix(':').map(|port| (host, port));
    }
    let (host, port) = entry.split_once(':')?;
    (!port.contains(':')).then_some((host, port))
}

/// The most a proxy's answer head to `CONNECT` may take.
const MAX_ANSWER_HEAD: usize = 8 * 1024;

/// Open a tunnel to `host:port` through `proxy` on `stream`, a fresh connection to the proxy. On
/// success the stream carries the tunnel; the error says what the proxy answered.
pub async fn open_tunnel(stream: &mut TcpStream, proxy: &Proxy, host: &str, port: u16) -> Result<(), String> {
    match proxy.kind {
        ProxyKind::Http => http_connect(stream, proxy, host, port).await,
        ProxyKind::Socks5 => socks5_connect(stream, proxy, host, port).await,
    }
}

fn authority(host: &str, port: u16) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

async fn http_connect(stream: &mut TcpStream, proxy: &Proxy, host: &str, port: u16) -> Result<(), String> {
    let target = authority(host, port);
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some((user, password)) = &proxy.credentials {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        request.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    request.push_str("\r\n");
    let io = |err: std::io::Error| format!("{proxy}: CONNECT {target}: {err}");
    stream.write_all(request.as_bytes()).await.map_err(io)?;

    let not_http =
        || format!("{proxy} did not answer CONNECT {target} in HTTP (is it a SOCKS proxy? then write socks5://)");
    // Read the answer's head only: after a 2xx, what follows belongs to the tunnel.
    let mut head = Vec::with_capacity(256);
    let end = loop {
        if let Some(end) = head.windows(4).position(|window| window == b"\r\n\r\n") {
            break end + 4;
        }
        if !b"HTTP/".starts_with(&head[..head.len().min(5)]) {
            return Err(not_http());
        }
        if head.len() >= MAX_ANSWER_HEAD {
            return Err(format!("{proxy}: its answer to CONNECT {target} is larger than 8 KiB"));
        }
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            return Err(format!("{proxy} closed the connection without answering CONNECT {target}"));
        }
        head.extend_from_slice(&chunk[..n]);
    };
    let line_end = head.iter().position(|&b| b == b'\r').unwrap_or(0);
    let status_line = String::from_utf8_lossy(&head[..line_end]).into_owned();
    let mut parts = status_line.splitn(3, ' ');
    let (version, code, reason) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let code = match code.parse::<u16>() {
        Ok(code) if version.starts_with("HTTP/1.") => code,
        _ => return Err(not_http()),
    };
    match code {
        200..=299 if head.len() > end => {
            Err(format!("{proxy} sent data after its {code} answer to CONNECT {target}, before the server spoke"))
        }
        200..=299 => Ok(()),
        407 if proxy.credentials.is_none() => Err(format!(
            "{proxy} requires authentication (407 {reason}): put the credentials in the proxy URL, \
             http://USER:PASSWORD@HOST:PORT"
        )),
        407 => Err(format!("{proxy} rejected the credentials in its URL (407 {reason})")),
        _ => Err(format!("{proxy} refused to tunnel to {target}: {code} {reason}")),
    }
}

async fn socks5_connect(stream: &mut TcpStream, proxy: &Proxy, host: &str, port: u16) -> Result<(), String> {
    const VERSION: u8 = 5;
    const NO_AUTHENTICATION: u8 = 0;
    const USER_PASSWORD: u8 = 2;
    let target = authority(host, port);
    let io = |err: std::io::Error| format!("{proxy}: SOCKS5 handshake for {target}: {err}");

    let greeting: &[u8] = match proxy.credentials {
        Some(_) => &[VERSION, 2, NO_AUTHENTICATION, USER_PASSWORD],
        None => &[VERSION, 1, NO_AUTHENTICATION],
    };
    stream.write_all(greeting).await.map_err(io)?;
    let mut choice = [0u8; 2];
    stream.read_exact(&mut choice).await.map_err(io)?;
    if choice[0] != VERSION {
        return Err(format!("{proxy} did not answer in SOCKS5 (is it an HTTP proxy? then write http://)"));
    }
    match (choice[1], &proxy.credentials) {
        (NO_AUTHENTICATION, _) => {}
        (USER_PASSWORD, Some((user, password))) => {
            if user.len() > 255 || password.len() > 255 {
                return Err(format!("{proxy}: SOCKS5 user names and passwords are at most 255 bytes"));
            }
            let mut request = vec![1, user.len() as u8];
            request.extend_from_slice(user.as_bytes());
            request.push(password.len() as u8);
            request.extend_from_slice(password.as_bytes());
            stream.write_all(&request).await.map_err(io)?;
            let mut answer = [0u8; 2];
            stream.read_exact(&mut answer).await.map_err(io)?;
            if answer[1] != 0 {
                return Err(format!("{proxy} rejected the user name and password in its URL"));
            }
        }
        (USER_PASSWORD, None) => {
            return Err(format!(
                "{proxy} requires a user name and password: put them in the proxy URL, \
                 socks5://USER:PASSWORD@HOST:PORT"
            ));
        }
        _ => return Err(format!("{proxy} accepts none of the authentication methods mpsync offers")),
    }

    let mut request = vec![VERSION, 1, 0];
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => {
            request.push(1);
            request.extend_from_slice(&v4.octets());
        }
        Ok(IpAddr::V6(v6)) => {
            request.push(4);
            request.extend_from_slice(&v6.octets());
        }
        Err(_) if host.len() <= 255 => {
            request.extend_from_slice(&[3, host.len() as u8]);
            request.extend_from_slice(host.as_bytes());
        }
        Err(_) => return Err(format!("{proxy}: the host name {host:?} is longer than SOCKS5 allows")),
    }
    request.extend_from_slice(&port.to_be_bytes());
    stream.write_all(&request).await.map_err(io)?;

    let mut answer = [0u8; 4];
    stream.read_exact(&mut answer).await.map_err(io)?;
    if answer[1] != 0 {
        let why = match answer[1] {
            1 => "general failure",
            2 => "not allowed by its rules",
            3 => "network unreachable",
            4 => "host unreachable",
            5 => "connection refused",
            6 => "TTL expired",
            7 => "command not supported",
            8 => "address type not supported",
            _ => "unknown error",
        };
        return Err(format!("{proxy} refused to connect to {target}: {why} (SOCKS5 reply {})", answer[1]));
    }
    // The address the proxy bound: read and discard.
    let address_length = match answer[3] {
        1 => 4,
        4 => 16,
        3 => {
            let mut length = [0u8; 1];
            stream.read_exact(&mut length).await.map_err(io)?;
            usize::from(length[0])
        }
        other => return Err(format!("{proxy}: unknown address type {other} in its SOCKS5 answer")),
    };
    let mut bound = vec![0u8; address_length + 2];
    stream.read_exact(&mut bound).await.map_err(io)?;
    Ok(())
}

/// Whether `authority` writes a port beyond 65535: `http` reads it as no port, and the scheme's default
/// port was used, while every message named the one written (found by review, helper-164); or port 0,
/// which no connection reaches (it was retried as an outage: helper-179).
pub(crate) fn port_out_of_range(authority: &http::uri::Authority) -> bool {
    let text = authority.as_str();
    let host_and_port = text.rsplit_once('@').map_or(text, |(_, rest)| rest);
    let after_host = host_and_port.rsplit_once(']').map_or(host_and_port, |(_, rest)| rest);
    after_host.rsplit_once(':').is_some_and(|(_, port)| !port.is_empty() && !matches!(port.parse::<u16>(), Ok(1..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(https: Option<&str>, http: Option<&str>, no_proxy: &str) -> ProxyEnv {
        ProxyEnv {
            https: https.map(|value| ("HTTPS_PROXY", value.to_string())),
            http: http.map(|value| ("HTTP_PROXY", value.to_string())),
            no_proxy: no_proxy.to_string(),
            cgi: false,
        }
    }

    fn proxied(server: &str, no_proxy: &str) -> bool {
        select(&server.parse().unwrap(), None, &env(Some("http://proxy:3128"), Some("http://proxy:80"), no_proxy))
            .unwrap()
            .is_some()
    }

    /// Found by review (helper-164): a port beyond 65535 was read as none, and the default port used.
    #[test]
    fn a_port_out_of_range_is_refused() {
        let out = |text: &str| port_out_of_range(&text.parse().unwrap());
        assert!(out("127.0.0.1:99999") && out("[::1]:70000") && out("user:pw@host:65536"));
        assert!(out("127.0.0.1:0") && out("[::1]:00") && out("host:0"));
        assert!(
            !out("127.0.0.1:65535") && !out("[::1]") && !out("[::1]:6443") && !out("user:pw@host") && !out("host:")
        );
        let env = env(Some("http://proxy:99999"), None, "");
        let err = select(&"https://10.1.2.3:6443".parse().unwrap(), None, &env).unwrap_err();
        assert!(err.contains("its port is not a port"), "{err}");
    }

    #[test]
    fn https_servers_use_https_proxy_and_http_servers_http_proxy() {
        let env = env(Some("secure:3128"), Some("http://plain:8080"), "");
        let https = select(&"https://10.1.2.3:6443".parse().unwrap(), None, &env).unwrap().unwrap();
        assert_eq!((https.kind, https.host.as_str(), https.port), (ProxyKind::Http, "secure", 3128));
        assert_eq!(https.name, "proxy http://secure:3128 (from HTTPS_PROXY)");
        let http = select(&"http://10.1.2.3:8080".parse().unwrap(), None, &env).unwrap().unwrap();
        assert_eq!((http.host.as_str(), http.port), ("plain", 8080));
        let only_http = self::env(None, Some("http://plain:8080"), "");
        assert_eq!(select(&"https://10.1.2.3".parse().unwrap(), None, &only_http).unwrap(), None);
    }

    #[test]
    fn kubeconfig_proxy_url_wins_and_ignores_no_proxy_and_loopback() {
        let env = env(Some("http://env:1"), None, "*");
        let proxy = select(&"https://127.0.0.1:6443".parse().unwrap(), Some("socks5://gw:1080"), &env).unwrap();
        let proxy = proxy.unwrap();
        assert_eq!((proxy.kind, proxy.host.as_str(), proxy.port), (ProxyKind::Socks5, "gw", 1080));
        assert!(proxy.name.contains("proxy-url"), "{}", proxy.name);
    }

    #[test]
    fn a_kubeconfig_proxy_url_without_scheme_or_host_is_refused_with_what_to_write() {
        let refused = |url: &str| {
            let env = env(None, None, "");
            select(&"https://10.0.0.1:6443".parse().unwrap(), Some(url), &env).unwrap_err()
        };
        for (url, bare) in [
            ("proxy.corp:3128", "proxy.corp:3128"),
            ("[::1]:3128", "[::1]:3128"),
            ("proxy", "proxy"),
            ("//127.0.0.4:4", "127.0.0.4:4"),
            ("proxy.corp:", "proxy.corp:"),
        ] {
            let err = refused(url);
            assert!(err.contains(&format!("{url:?}")), "{err}");
            assert!(err.contains("no scheme (kubectl refuses it too)"), "{err}");
            assert!(err.contains(&format!("write http://{bare} or socks5://{bare}")), "{err}");
        }
        for url in ["http:/127.0.0.4:4", "http:127.0.0.4:4", "socks5:proxy", "/http:/127.0.0.4:4"] {
            let err = refused(url);
            assert!(err.contains(&format!("{url:?}")), "{err}");
            assert!(err.contains("no host after its scheme (kubectl refuses it too)"), "{err}");
            assert!(!err.contains("no scheme"), "{err}");
        }
        // Trimmed, and any scheme with its host is parsed as before.
        let env = env(None, None, "");
        let server = "https://10.0.0.1:6443".parse().unwrap();
        for url in [" http://gw:3128", "socks5h://gw:1080"] {
            assert!(select(&server, Some(url), &env).unwrap().is_some(), "{url}");
        }
    }

    #[test]
    fn loopback_and_localhost_never_use_the_environments_proxy() {
        for server in ["https://localhost:6443", "https://127.0.0.1", "https://127.9.9.9:1", "https://[::1]:6443"] {
            assert!(!proxied(server, ""), "{server}");
        }
        assert!(proxied("https://10.0.0.1", ""));
        assert!(proxied("https://kube.example.com", ""));
    }

    #[test]
    fn no_proxy_matches_as_go_does() {
        let cases = [
            ("https://10.1.2.3:6443", "10.0.0.0/8", false),
            ("https://10.1.2.3:6443", "10.1.2.3", false),
            ("https://10.1.2.3:6443", "10.1.2.3:6443", false),
            ("https://10.1.2.3:6443", "10.1.2.3:443", true),
            ("https://11.1.2.3:6443", "10.0.0.0/8", true),
            ("https://[fd00::1]:6443", "fd00::/8", false),
            ("https://[fd00::1]:6443", "[fd00::1]:6443", false),
            ("https://[fd00::1]:6443", "fd00::1", false),
            ("https://kube.example.com", "example.com", false),
            ("https://example.com", "example.com", false),
            ("https://notexample.com", "example.com", true),
            ("https://kube.example.com", ".example.com", false),
            ("https://example.com", ".example.com", true),
            ("https://example.com", "*.example.com", true),
            ("https://a.example.com", "*.example.com", false),
            ("https://kube.example.com:6443", "example.com:6443", false),
            ("https://kube.example.com:6443", "example.com:443", true),
            ("https://kube.example.com", "example.com:443", false),
            ("https://KUBE.Example.COM", " other.org , EXAMPLE.com ", false),
            ("https://kube.example.com", "*", false),
            ("https://kube.example.com", "other.org,*", false),
            ("https://10.1.2.3", "example.com", true),
            ("https://kube.example.com", "10.0.0.0/8", true),
            ("https://kube.example.com", ",,garbage:port:x,", true),
        ];
        for (server, no_proxy, expected) in cases {
            assert_eq!(proxied(server, no_proxy), expected, "{server} with NO_PROXY={no_proxy:?}");
        }
    }

    #[test]
    fn proxy_urls_parse_as_go_reads_them() {
        let parsed = parse("http://us%40er:p%3Ass@proxy.corp:3128/ignored", "HTTPS_PROXY").unwrap();
        assert_eq!(parsed.credentials, Some(("us@er".to_string(), "p:ss".to_string())));
        assert_eq!(parsed.name, "proxy http://proxy.corp:3128 (from HTTPS_PROXY)");
        assert!(!format!("{parsed:?}").contains("p:ss"));
        assert_eq!(parse("proxy.corp", "x").unwrap().port, 80);
        assert_eq!(parse("socks5h://[fd00::1]", "x").unwrap().host, "fd00::1");
        assert_eq!(parse("socks5h://[fd00::1]", "x").unwrap().port, 1080);
        for (value, why) in [("https://proxy:443", "TLS"), ("ftp://proxy", "ftp"), ("http://", "")] {
            let err = parse(value, "HTTPS_PROXY").unwrap_err();
            assert!(err.contains(value) && err.contains("HTTPS_PROXY") && err.contains(why), "{err}");
        }
    }

    #[test]
    fn an_unusable_proxy_is_named_without_its_password() {
        for value in
            ["https://user:s3cret@proxy:443", "ftp://us:s3cret@proxy/x", "http://user:s3cret@", "u:s3cret@p:1:2"]
        {
            let err = parse(value, "HTTPS_PROXY").unwrap_err();
            assert!(!err.contains("s3cret") && err.contains("xxxxx"), "{err}");
        }
        let env = env(None, None, "");
        let err = select(&"https://10.0.0.1".parse().unwrap(), Some("user:s3cret@proxy:3128"), &env).unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
        assert_eq!(redacted("http://proxy:3128"), "http://proxy:3128");
        assert_eq!(redacted("http://u@proxy:3128/p@x"), "http://u@proxy:3128/p@x");
    }

    #[test]
    fn http_proxy_is_refused_in_a_cgi_environment() {
        let mut env = env(None, Some("http://injected:1"), "");
        env.cgi = true;
        assert!(select(&"http://10.0.0.1".parse().unwrap(), None, &env).unwrap_err().contains("CGI"));
    }
}
