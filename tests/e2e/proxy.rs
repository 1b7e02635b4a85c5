//! Tests of the fault-injection proxy and of the CONNECT proxy themselves, against tiny servers on std
//! listeners and the test API server (TLS passes through both).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use rustls::pki_types::ServerName;

use crate::support::apiserver::TestApiServer;
use crate::support::connect_proxy::ConnectProxy;
use crate::support::proxy::{FaultProxy, kubeconfig_upstream};

/// Generous: the machine may be loaded.
const WAIT: Duration = Duration::from_secs(20);
/// How long a client waits for an answer that must not come.
const SILENCE: Duration = Duration::from_secs(1);

/// An echo server: every connection gets back what it sends; on EOF it closes its side.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let mut buf = [0; 16 * 1024];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A one-shot HTTP server: answers every request with `200` and a fixed body, then closes.
fn http_server(body: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let mut request = Vec::new();
                let mut buf = [0; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let response =
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                let _ = stream.write_all(response.as_bytes());
            });
        }
    });
    addr
}

fn connect(proxy: &FaultProxy) -> TcpStream {
    let stream = TcpStream::connect(proxy.addr()).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Send `message` and read back as many bytes.
fn round_trip(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(message)?;
    let mut answer = vec![0; message.len()];
    stream.read_exact(&mut answer)?;
    Ok(answer)
}

/// A round trip that must get no answer within [`SILENCE`].
fn assert_silent(stream: &mut TcpStream, message: &[u8]) {
    stream.set_read_timeout(Some(SILENCE)).unwrap();
    stream.write_all(message).unwrap();
    let mut buf = [0; 64];
    match stream.read(&mut buf) {
        Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("expected no answer through a blackholed connection, got {other:?}"),
    }
    stream.set_read_timeout(Some(WAIT)).unwrap();
}

/// The connection must be closed: a read returns EOF or an error, and does not time out.
fn assert_closed(stream: &mut TcpStream) {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0; 64];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Err(err) if !matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("expected the connection to be closed, got {other:?}"),
    }
}

/// Deterministic, non-repeating-looking bytes.
fn payload(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn forwards_bytes_both_ways_unchanged() {
    let proxy = FaultProxy::start(&echo_server().to_string());
    let mut stream = connect(&proxy);
    assert_eq!(round_trip(&mut stream, b"hello").unwrap(), b"hello");
    assert_eq!(round_trip(&mut stream, &[0, 255, 10, 13, 0]).unwrap(), [0, 255, 10, 13, 0]);
}

#[test]
fn forwards_a_mebibyte_and_the_half_close_unchanged() {
    let proxy = FaultProxy::start(&echo_server().to_string());
    let mut stream = connect(&proxy);
    let sent = payload(1 << 20);
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        let sent = sent.clone();
        thread::spawn(move || {
            stream.write_all(&sent).unwrap();
            stream.shutdown(Shutdown::Write).unwrap();
        })
    };
    let mut received = Vec::new();
    // read_to_end ends only if the client's EOF reached the server and the server's came back.
    stream.read_to_end(&mut received).unwrap();
    writer.join().unwrap();
    assert_eq!(received.len(), sent.len());
    assert!(received == sent, "the payload came back changed");
}

#[test]
fn http_request_through_the_proxy_url_gets_the_response() {
    let proxy = FaultProxy::start(&http_server("pong").to_string());
    let url = proxy.url("http");
    assert_eq!(url, format!("http://{}", proxy.addr()));
    let authority = url.strip_prefix("http://").unwrap();
    let mut stream = TcpStream::connect(authority).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(format!("GET /ping HTTP/1.1\r\nhost: {authority}\r\n\r\n").as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.ends_with("\r\n\r\npong"), "{response}");
}

#[test]
fn latency_delays_a_round_trip_by_at_least_twice_the_setting() {
    let proxy = FaultProxy::start(&echo_server().to_string());
    let mut stream = connect(&proxy);
    assert_eq!(round_trip(&mut stream, b"warm").unwrap(), b"warm");

    let latency = Duration::from_millis(300);
    proxy.set_latency(latency);
    let started = Instant::now();
    assert_eq!(round_trip(&mut stream, b"slow").unwrap(), b"slow");
    let elapsed = started.elapsed();
    assert!(elapsed >= 2 * latency, "round trip took {elapsed:?}, expected at least {:?}", 2 * latency);

    // Order is kept when several chunks wait at once.
    for i in 0..5u8 {
        stream.write_all(&[i]).unwrap();
    }
    let mut answer = [0; 5];
    stream.read_exact(&mut answer).unwrap();
    assert_eq!(answer, [0, 1, 2, 3, 4]);

    proxy.set_latency(Duration::ZERO);
    assert_eq!(round_trip(&mut stream, b"fast").unwrap(), b"fast");
}

#[test]
fn partitioned_proxy_forwards_nothing_until_healed() {
    let proxy = FaultProxy::start(&echo_server().to_string());
    let mut before = connect(&proxy);
    assert_eq!(round_trip(&mut before, b"ping").unwrap(), b"ping");

    proxy.partition();
    assert_silent(&mut before, b"lost");
    // New connections are accepted, and stay open, but reach nothing.
    let mut during = connect(&proxy);
    assert!(proxy.wait_for_accepted(2, WAIT));
    assert_silent(&mut during, b"lost too");
    assert_eq!(proxy.connection_count(), 2, "a partition closes nothing");

    proxy.heal();
    let mut after = connect(&proxy);
    assert_eq!(round_trip(&mut after, b"back").unwrap(), b"back");
    // Connections that lived through the partition stay stuck, as half-open connections do.
    assert_silent(&mut before, b"still lost");
    assert_silent(&mut during, b"still lost");

    // Dropping them gives their clients a prompt error instead.
    proxy.drop_connections();
    assert_closed(&mut before);
    assert_closed(&mut during);
}

#[test]
fn partition_drops_bytes_held_back_by_latency() {
    let proxy = FaultProxy::start(&echo_server().to_string());
    let mut stream = connect(&proxy);
    assert_eq!(round_trip(&mut stream, b"ping").unwrap(), b"ping");
    proxy.set_latency(Duration::from_secs(2));
    stream.write_all(b"held").unwrap();
    proxy.partition();
    proxy.set_latency(Duration::ZERO);
    assert_silent(&mut stream, b"");
}

#[test]
fn drop_connections_closes_open_connections_and_keeps_accepting() {
    let proxy = FaultProxy::start(&echo_server().to_string());
    let mut first = connect(&proxy);
    let mut second = connect(&proxy);
    assert_eq!(round_trip(&mut first, b"one").unwrap(), b"one");
    assert_eq!(round_trip(&mut second, b"two").unwrap(), b"two");

    proxy.drop_connections();
    assert_closed(&mut first);
    assert_closed(&mut second);
    assert_eq!(proxy.connection_count(), 0);

    let mut third = connect(&proxy);
    assert_eq!(round_trip(&mut third, b"three").unwrap(), b"three");
}

#[test]
fn connection_count_tracks_opens_and_closes() {
    let proxy = FaultProxy::start(&echo_server().to_string());
    assert_eq!(proxy.connection_count(), 0);
    assert_eq!(proxy.accepted(), 0);

    let mut first = connect(&proxy);
    let mut second = connect(&proxy);
    assert_eq!(round_trip(&mut first, b"1").unwrap(), b"1");
    assert_eq!(round_trip(&mut second, b"2").unwrap(), b"2");
    assert!(proxy.wait_for_connection_count(2, WAIT), "count is {}", proxy.connection_count());
    assert_eq!(proxy.accepted(), 2);

    // The client closes; the echo server closes in turn; the proxy forgets the connection.
    drop(first);
    assert!(proxy.wait_for_connection_count(1, WAIT), "count is {}", proxy.connection_count());
    drop(second);
    assert!(proxy.wait_for_connection_count(0, WAIT), "count is {}", proxy.connection_count());
    assert_eq!(proxy.accepted(), 2);
}

#[test]
fn unreachable_upstream_closes_the_client_connection() {
    let closed_port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let proxy = FaultProxy::start(&closed_port.to_string());
    let mut stream = connect(&proxy);
    assert_closed(&mut stream);
    assert!(proxy.wait_for_connection_count(0, WAIT));
    assert_eq!(proxy.accepted(), 1);
}

#[test]
fn dropping_the_proxy_closes_connections_and_releases_the_port() {
    let proxy = FaultProxy::start(&echo_server().to_string());
    let addr = proxy.addr();
    let mut stream = connect(&proxy);
    assert_eq!(round_trip(&mut stream, b"ping").unwrap(), b"ping");

    drop(proxy);
    assert_closed(&mut stream);
    let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(5));
    assert!(refused.is_err(), "the proxy still accepts after being dropped");
    TcpListener::bind(addr).expect("the proxy's port is free again");
}

#[test]
fn kubeconfig_through_points_every_server_at_the_proxy() {
    let proxy = FaultProxy::start("127.0.0.1:1");
    let proxy_addr = proxy.addr();
    let kubeconfig = "\
apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: Zm9v
    server: https://kube.example.com:6443/prefix
  name: remote
- cluster:
    server: \"http://127.0.0.1:8080\"
  name: local
- cluster:
    tls-server-name: pinned.example.com
    server: https://[::1]:6443
  name: pinned
current-context: remote
";
    let rewritten = proxy.kubeconfig_through(kubeconfig);
    let expected = format!(
        "\
apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: Zm9v
    server: https://{proxy_addr}/prefix
    tls-server-name: kube.example.com
  name: remote
- cluster:
    server: \"http://{proxy_addr}\"
  name: local
- cluster:
    tls-server-name: pinned.example.com
    server: https://{proxy_addr}
  name: pinned
current-context: remote
"
    );
    assert_eq!(rewritten, expected);

    assert_eq!(kubeconfig_upstream(kubeconfig).as_deref(), Some("kube.example.com:6443"));
    assert_eq!(
        kubeconfig_upstream("clusters:\n- cluster:\n    server: https://10.0.0.1\n").as_deref(),
        Some("10.0.0.1:443")
    );
    assert_eq!(kubeconfig_upstream("clusters: []\n"), None);
}

// ---------------------------------------------------------------------------------------------
// One direction only
// ---------------------------------------------------------------------------------------------

/// An echo server that reports every chunk it receives (and when) on a channel. With `greeting`, it
/// first sends that on every connection, unasked.
fn recording_echo_server(greeting: Option<&'static [u8]>) -> (SocketAddr, mpsc::Receiver<(Instant, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let sender = sender.clone();
            thread::spawn(move || {
                if let Some(greeting) = greeting
                    && stream.write_all(greeting).is_err()
                {
                    return;
                }
                let mut buf = [0; 16 * 1024];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let _ = sender.send((Instant::now(), buf[..n].to_vec()));
                            if stream.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, receiver)
}

/// Nothing arrives on `stream` for now (a short look: used only where the bytes are held for a minute).
fn assert_nothing_yet(stream: &mut TcpStream) {
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut buf = [0; 64];
    match stream.read(&mut buf) {
        Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("expected nothing yet, got {other:?}"),
    }
    stream.set_read_timeout(Some(WAIT)).unwrap();
}

#[test]
fn delay_responses_holds_answers_while_requests_reach_the_server_at_once() {
    let (upstream, received) = recording_echo_server(None);
    let proxy = FaultProxy::start(&upstream.to_string());
    let mut stream = connect(&proxy);
    assert_eq!(round_trip(&mut stream, b"warm").unwrap(), b"warm");
    received.recv_timeout(WAIT).unwrap();

    // Held for a minute: the request arrives, the answer does not.
    proxy.delay_responses(Duration::from_secs(60));
    stream.write_all(b"held").unwrap();
    let (_, bytes) = received.recv_timeout(WAIT).expect("the request passes at once");
    assert_eq!(bytes, b"held");
    assert_nothing_yet(&mut stream);
    // Lifting the delay releases what was held, at once and in order.
    proxy.delay_responses(Duration::ZERO);
    let mut answer = [0; 4];
    stream.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"held");

    // Measured: the answer comes at least the delay after the server got the request.
    let delay = Duration::from_millis(300);
    proxy.delay_responses(delay);
    let started = Instant::now();
    assert_eq!(round_trip(&mut stream, b"late").unwrap(), b"late");
    let answered = Instant::now();
    let (arrived, _) = received.recv_timeout(WAIT).unwrap();
    assert!(answered - arrived >= delay, "answer held for only {:?}", answered - arrived);
    assert!(answered - started >= delay);
}

#[test]
fn delay_requests_holds_requests_while_answers_pass_at_once() {
    let (upstream, received) = recording_echo_server(Some(b"hello"));
    let proxy = FaultProxy::start(&upstream.to_string());
    proxy.delay_requests(Duration::from_secs(60));
    let mut stream = connect(&proxy);
    stream.write_all(b"held").unwrap();
    // The server's bytes come through at once...
    let mut greeting = [0; 5];
    stream.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"hello");
    // ...while the request is held.
    assert!(matches!(received.try_recv(), Err(mpsc::TryRecvError::Empty)), "the request passed");
    proxy.delay_requests(Duration::ZERO);
    let (_, bytes) = received.recv_timeout(WAIT).expect("released");
    assert_eq!(bytes, b"held");
    let mut echo = [0; 4];
    stream.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"held");

    // Measured: the request arrives at least the delay after it was sent.
    let delay = Duration::from_millis(300);
    proxy.delay_requests(delay);
    let sent = Instant::now();
    stream.write_all(b"late").unwrap();
    let (arrived, _) = received.recv_timeout(WAIT).unwrap();
    assert!(arrived - sent >= delay, "request held for only {:?}", arrived - sent);
}

#[test]
fn tls_passes_through_a_proxy_that_delays_responses() {
    let server = TestApiServer::start();
    let proxy = FaultProxy::start(&server.addr().to_string());
    let delay = Duration::from_millis(200);
    proxy.delay_responses(delay);
    let socket = connect(&proxy);
    let name = ServerName::IpAddress(server.addr().ip().into());
    let conn = rustls::ClientConnection::new(server.client_tls_config(), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, socket);
    let started = Instant::now();
    tls.write_all(b"GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = tls.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    // The handshake's flight and the answer were each held.
    assert!(started.elapsed() >= 2 * delay, "{:?}", started.elapsed());
}

#[tokio::test(flavor = "current_thread")]
async fn kube_client_reaches_the_tls_server_through_kubeconfig_through() {
    let server = TestApiServer::start();
    let proxy = FaultProxy::start(&server.addr().to_string());
    let yaml = proxy.kubeconfig_through(&server.kubeconfig_yaml("default"));
    assert!(yaml.contains("tls-server-name: 127.0.0.1"), "{yaml}");
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::from_yaml(&yaml).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let api: kube::Api<Lease> = kube::Api::namespaced(kube::Client::try_from(config).unwrap(), "default");
    match api.get("missing").await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 404),
        other => panic!("expected a 404 through the proxy, got {other:?}"),
    }
    assert!(proxy.accepted() >= 1);
}

// ---------------------------------------------------------------------------------------------
// The CONNECT proxy
// ---------------------------------------------------------------------------------------------

/// Sends a request head to the CONNECT proxy and reads its answer head (byte by byte, so that nothing
/// after it is consumed).
fn proxy_request(proxy: &ConnectProxy, head: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(proxy.addr()).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut byte = [0; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => answer.push(byte[0]),
            other => panic!("the proxy's answer ended early ({other:?}): {:?}", String::from_utf8_lossy(&answer)),
        }
    }
    (stream, String::from_utf8(answer).unwrap())
}

#[test]
fn connect_proxy_tunnels_bytes_and_records_tunnels_and_targets() {
    let upstream = echo_server();
    let proxy = ConnectProxy::start();
    assert_eq!(proxy.url(), format!("http://{}", proxy.addr()));
    let (mut stream, answer) = proxy_request(
        &proxy,
        &format!("CONNECT {upstream} HTTP/1.1\r\nHost: {upstream}\r\nProxy-Authorization: Basic dTpw\r\n\r\n"),
    );
    assert_eq!(answer, "HTTP/1.1 200 Connection established\r\n\r\n");
    assert_eq!(round_trip(&mut stream, b"through the tunnel").unwrap(), b"through the tunnel");
    assert_eq!(round_trip(&mut stream, &payload(100_000)).unwrap(), payload(100_000));
    assert_eq!((proxy.tunnels(), proxy.open_tunnels()), (1, 1));
    assert_eq!(proxy.targets(), [upstream.to_string()]);
    let request = &proxy.requests()[0];
    assert_eq!((request.method.as_str(), request.status), ("CONNECT", 200));
    assert_eq!(request.proxy_authorization.as_deref(), Some("Basic dTpw"));

    drop(stream);
    assert!(proxy.wait_for_open_tunnels(0, WAIT), "open tunnels: {}", proxy.open_tunnels());
    let (mut second, _) = proxy_request(&proxy, &format!("CONNECT {upstream} HTTP/1.1\r\n\r\n"));
    assert_eq!(round_trip(&mut second, b"again").unwrap(), b"again");
    assert_eq!(proxy.tunnels(), 2);
    assert_eq!(proxy.requests()[1].proxy_authorization, None);
}

#[test]
fn connect_proxy_refuses_with_403_or_407_and_tunnels_nothing() {
    let upstream = echo_server();
    let proxy = ConnectProxy::start();
    proxy.refuse(Some(407));
    let (mut stream, answer) = proxy_request(&proxy, &format!("CONNECT {upstream} HTTP/1.1\r\n\r\n"));
    assert!(answer.starts_with("HTTP/1.1 407 Proxy Authentication Required\r\n"), "{answer}");
    assert!(answer.contains("\r\nProxy-Authenticate: Basic realm=\"mpsync-test\"\r\n"), "{answer}");
    assert_closed_after_body(&mut stream);
    proxy.refuse(Some(403));
    let (mut stream, answer) = proxy_request(&proxy, &format!("GET http://{upstream}/ HTTP/1.1\r\n\r\n"));
    assert!(answer.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{answer}");
    assert_closed_after_body(&mut stream);
    assert_eq!((proxy.tunnels(), proxy.forwarded()), (0, 0));
    let statuses: Vec<u16> = proxy.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [407, 403]);

    proxy.refuse(None);
    let (mut stream, answer) = proxy_request(&proxy, &format!("CONNECT {upstream} HTTP/1.1\r\n\r\n"));
    assert_eq!(answer, "HTTP/1.1 200 Connection established\r\n\r\n");
    assert_eq!(round_trip(&mut stream, b"ok").unwrap(), b"ok");
    assert_eq!(proxy.targets(), [upstream.to_string(), format!("http://{upstream}/"), upstream.to_string()]);
}

/// The rest of a refusal is its short body, then the proxy closes.
fn assert_closed_after_body(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(rest.len() < 100, "{rest:?}");
}

#[test]
fn connect_proxy_answers_502_for_an_unreachable_target() {
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let proxy = ConnectProxy::start();
    let (_stream, answer) = proxy_request(&proxy, &format!("CONNECT {closed} HTTP/1.1\r\n\r\n"));
    assert!(answer.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{answer}");
    assert_eq!(proxy.tunnels(), 0);
    assert_eq!(proxy.requests()[0].status, 502);
}

#[test]
fn connect_proxy_forwards_absolute_form_requests_in_origin_form() {
    // A server that reports the request head it got, then answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = listener.local_addr().unwrap();
    let (sender, heads) = mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = Vec::new();
            let mut buf = [0; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = sender.send(String::from_utf8_lossy(&head).into_owned());
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\npong");
        }
    });
    let proxy = ConnectProxy::start();
    let (mut stream, answer) = proxy_request(
        &proxy,
        &format!(
            "GET http://{upstream}/ping?x=1 HTTP/1.1\r\nHost: {upstream}\r\nProxy-Authorization: Basic dTpw\r\n\
             Proxy-Connection: keep-alive\r\n\r\n"
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    assert_eq!(body, "pong");
    let head = heads.recv_timeout(WAIT).unwrap();
    assert!(head.starts_with("GET /ping?x=1 HTTP/1.1\r\n"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("proxy-"), "{head}");
    assert!(head.contains("connection: close\r\n"), "{head}");
    assert_eq!(proxy.forwarded(), 1);
    assert_eq!(proxy.targets(), [format!("http://{upstream}/ping?x=1")]);
    assert_eq!(proxy.requests()[0].proxy_authorization.as_deref(), Some("Basic dTpw"));
}

#[test]
fn tls_to_the_test_api_server_passes_through_a_connect_tunnel() {
    let server = TestApiServer::start();
    let proxy = ConnectProxy::start();
    let target = format!("127.0.0.1:{}", server.addr().port());
    let (socket, answer) = proxy_request(&proxy, &format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"));
    assert_eq!(answer, "HTTP/1.1 200 Connection established\r\n\r\n");
    let name = ServerName::IpAddress(server.addr().ip().into());
    let conn = rustls::ClientConnection::new(server.client_tls_config(), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, socket);
    tls.write_all(b"GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = tls.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("\"gitVersion\": \"v1.28.7\""), "{answer}");
    assert_eq!(server.count("version"), 1);
    assert_eq!(proxy.targets(), [target]);
}
