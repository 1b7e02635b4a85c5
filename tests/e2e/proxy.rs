//! Tests of the fault-injection proxy itself, against tiny servers on std listeners.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

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
