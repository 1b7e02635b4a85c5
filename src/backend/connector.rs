//! The TCP connections mpsync opens to the API server: with TCP_NODELAY, directly or through a proxy.
//! TLS is layered on top by kube's rustls helper; this is the connector under it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::Service;

use super::proxy::{self, Proxy};
use crate::store::kube::one_line;

/// Opens connections to the API server, directly or through `proxy`.
#[derive(Clone)]
pub struct Connector {
    tcp: HttpConnector,
    proxy: Option<Arc<Proxy>>,
    timeout: Duration,
}

impl Connector {
    /// `timeout` bounds opening one connection: the TCP connect, and the proxy's handshake if any.
    pub fn new(proxy: Option<Proxy>, timeout: Duration) -> Connector {
        let mut tcp = HttpConnector::new();
        // The TLS layer above decides the scheme; this one only opens sockets.
        tcp.enforce_http(false);
        // Without it, Nagle's algorithm holds the first request (written right after the TLS Finished
        // message) until the server's delayed ACK: 40 ms on Linux, on every new connection
        // (kube-rs/kube#2056). Go, and so kubectl, sets it by default.
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(timeout));
        Connector { tcp, proxy: proxy.map(Arc::new), timeout }
    }
}

/// Why a connection could not be opened, in words that name the server or the proxy.
#[derive(Debug)]
pub struct ConnectError(String);

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConnectError {}

impl Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        self.tcp.poll_ready(cx).map_err(|err| ConnectError(one_line(&err)))
    }

    fn call(&mut self, server: Uri) -> Self::Future {
        let mut tcp = self.tcp.clone();
        let Some(proxy) = self.proxy.clone() else {
            return Box::pin(async move {
                // Without a password the URL may carry (`https://user:password@host`): this goes to logs.
                let target = server.authority().map_or_else(
                    || super::shown_server(&server),
                    |a| a.as_str().rsplit_once('@').map_or(a.as_str(), |(_, host)| host).to_string(),
                );
                tcp.call(server)
                    .await
                    .map_err(|err| ConnectError(format!("cannot connect to {target}: {}", one_line(&err))))
            });
        };
        let timeout = self.timeout;
        Box::pin(async move {
            let host = server.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
            let port = server.port_u16().unwrap_or(if server.scheme_str() == Some("http") { 80 } else { 443 });
            let shown_host = if proxy.host.contains(':') { format!("[{}]", proxy.host) } else { proxy.host.clone() };
            let proxy_uri: Uri = format!("http://{shown_host}:{}", proxy.port)
                .parse()
                .map_err(|err| ConnectError(format!("{proxy}: {err}")))?;
            let tunnel = async {
                let mut stream = tcp
                    .call(proxy_uri)
                    .await
                    .map_err(|err| ConnectError(format!("cannot connect to {proxy}: {}", one_line(&err))))?;
                proxy::open_tunnel(stream.inner_mut(), &proxy, &host, port).await.map_err(ConnectError)?;
                Ok(stream)
            };
            tokio::time::timeout(timeout, tunnel).await.unwrap_or_else(|_| {
                Err(ConnectError(format!(
                    "{proxy}: no tunnel to {host}:{port} within {}",
                    humantime::format_duration(timeout)
                )))
            })
        })
    }
}

/// Bounds opening a connection whole, the TLS handshake included (found by review: the TLS layer above
/// `Connector` had no bound, and hyper finishes a connection it no longer needs in a task of its own,
/// so a server that accepted and never answered the handshake kept a task and a socket for ever).
/// Through a proxy, the message names it too: the proxy's own bound (in `Connector`) is the same, and either
/// may end first (found by CI: a black-hole proxy went unnamed when this bound came first).
#[derive(Clone)]
pub struct Bounded<C> {
    inner: C,
    timeout: Duration,
    proxy: Option<Arc<str>>,
}

impl<C> Bounded<C> {
    /// `proxy` is the proxy's name in messages, if connections go through one.
    pub fn new(inner: C, timeout: Duration, proxy: Option<&Proxy>) -> Bounded<C> {
        Bounded { inner, timeout, proxy: proxy.map(|proxy| Arc::from(proxy.to_string())) }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<C> Service<Uri> for Bounded<C>
where
    C: Service<Uri>,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, server: Uri) -> Self::Future {
        let timeout = self.timeout;
        let shown = super::shown_server(&server);
        let through = match &self.proxy {
            Some(proxy) => format!(" through {proxy}: no tunnel or connection (TLS handshake included)"),
            None => ": no connection (TLS handshake included)".to_string(),
        };
        let connecting = self.inner.call(server);
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(ConnectError(format!(
                    "cannot connect to {shown}{through} within {}",
                    humantime::format_duration(timeout)
                ))
                .into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    use super::*;
    use crate::backend::proxy::ProxyKind;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    fn http_proxy(port: u16) -> Proxy {
        Proxy {
            kind: ProxyKind::Http,
            host: "127.0.0.1".into(),
            port,
            credentials: Some(("user".into(), "secret".into())),
            name: format!("proxy http://127.0.0.1:{port} (from test)"),
        }
    }

    /// A server that accepts and never answers the TLS handshake: opening the connection fails within
    /// the timeout, and the socket is closed.
    #[test]
    fn a_tls_handshake_that_never_ends_is_bounded() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let runtime = runtime();
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(Connector::new(None, Duration::from_secs(30)));
        let mut bounded = Bounded::new(https, Duration::from_millis(300), None);
        let uri: Uri = format!("https://127.0.0.1:{port}").parse().unwrap();
        let started = std::time::Instant::now();
        let result = runtime.block_on(async { bounded.call(uri).await.map(|_| ()) });
        let err = result.expect_err("a handshake that never ends").to_string();
        assert!(err.contains("within 300ms") && started.elapsed() < Duration::from_secs(10), "{err}");
        let (mut accepted, _) = listener.accept().unwrap();
        accepted.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut rest = Vec::new();
        let _ = accepted.read_to_end(&mut rest);
        assert!(rest.starts_with(&[0x16]), "a ClientHello, then the end: {rest:?}");
    }

    /// A connection that never opens, through a proxy: whichever bound ends first, the proxy is named.
    #[test]
    fn a_connection_that_never_opens_through_a_proxy_names_it() {
        #[derive(Clone)]
        struct Never;
        impl Service<Uri> for Never {
            type Response = ();
            type Error = ConnectError;
            type Future = std::future::Pending<Result<(), ConnectError>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: Uri) -> Self::Future {
                std::future::pending()
            }
        }
        let uri: Uri = "https://127.0.0.1:6443".parse().unwrap();
        let proxy = http_proxy(3128);
        let mut bounded = Bounded::new(Never, Duration::from_millis(50), Some(&proxy));
        let err = runtime().block_on(bounded.call(uri.clone())).err().unwrap().to_string();
        assert!(err.contains(&proxy.to_string()) && err.contains("https://127.0.0.1:6443/"), "{err}");
        let err = runtime().block_on(Bounded::new(Never, Duration::from_millis(50), None).call(uri)).err().unwrap();
        assert!(!err.to_string().contains("proxy"), "{err}");
    }

    #[test]
    fn direct_connections_have_tcp_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let uri: Uri = format!("https://{}/", listener.local_addr().unwrap()).parse().unwrap();
        let stream = runtime().block_on(Connector::new(None, Duration::from_secs(5)).call(uri)).unwrap();
        assert!(stream.inner().nodelay().unwrap());
    }

    #[test]
    fn connections_through_a_proxy_have_tcp_nodelay_and_send_connect_with_credentials() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = std::thread::spawn(move || {
            let (socket, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(socket.try_clone().unwrap());
            let mut head = Vec::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
                head.push(line.trim_end().to_string());
            }
            (&socket).write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").unwrap();
            let mut rest = [0u8; 5];
            reader.read_exact(&mut rest).unwrap();
            (head, rest)
        });
        let uri: Uri = "https://kube.example.com:6443/".parse().unwrap();
        let runtime = runtime();
        let mut stream =
            runtime.block_on(Connector::new(Some(http_proxy(port)), Duration::from_secs(5)).call(uri)).unwrap();
        assert!(stream.inner().nodelay().unwrap());
        runtime.block_on(tokio::io::AsyncWriteExt::write_all(stream.inner_mut(), b"hello")).unwrap();
        let (head, rest) = proxy.join().unwrap();
        assert_eq!(head[0], "CONNECT kube.example.com:6443 HTTP/1.1");
        assert!(head.contains(&"Host: kube.example.com:6443".to_string()), "{head:?}");
        assert!(head.contains(&"Proxy-Authorization: Basic dXNlcjpzZWNyZXQ=".to_string()), "{head:?}");
        assert_eq!(&rest, b"hello");
    }

    #[test]
    fn a_refusing_proxy_is_named_with_its_answer() {
        for (answer, expected) in [
            (
                "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
                "refused to tunnel to kube.example.com:443: 403 Forbidden",
            ),
            ("HTTP/1.1 407 Proxy Authentication Required\r\n\r\n", "rejected the credentials"),
            ("\x05\x00", "did not answer CONNECT kube.example.com:443 in HTTP"),
        ] {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let server = std::thread::spawn(move || {
                let (mut socket, _) = listener.accept().unwrap();
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf);
                socket.write_all(answer.as_bytes()).unwrap();
            });
            let uri: Uri = "https://kube.example.com/".parse().unwrap();
            let err = runtime()
                .block_on(Connector::new(Some(http_proxy(port)), Duration::from_secs(5)).call(uri))
                .err()
                .unwrap()
                .to_string();
            server.join().unwrap();
            assert!(err.contains(&format!("proxy http://127.0.0.1:{port}")), "{err}");
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn an_unreachable_proxy_is_named() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let uri: Uri = "https://kube.example.com/".parse().unwrap();
        let err =
            runtime().block_on(Connector::new(Some(http_proxy(port)), Duration::from_secs(5)).call(uri)).err().unwrap();
        assert!(err.to_string().starts_with(&format!("cannot connect to proxy http://127.0.0.1:{port}")), "{err}");
    }
}
