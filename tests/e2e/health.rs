//! `--health-addr`: /healthz, /leader and /metrics from a running lock.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::*;

both_backends!(leader_endpoint_follows_the_lease_and_metrics_count_events);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET `path`; `None` while nothing listens yet.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

#[track_caller]
fn wait_for_status(port: u16, path: &str, status: u16) -> String {
    let mut body = String::new();
    wait_until(&format!("{path} to answer {status}"), || match get(port, path) {
        Some((got, text)) if got == status => {
            body = text;
            true
        }
        _ => false,
    });
    body
}

fn leader_endpoint_follows_the_lease_and_metrics_count_events(env: &TestEnv) {
    let name = env.lease_name("health");
    let (holder_port, waiter_port) = (free_port(), free_port());
    let ready = env.path("ready");
    let script = format!("echo ready > {}; exec sleep 1000", ready.display());
    let holder_addr = format!("127.0.0.1:{holder_port}");
    let holder = env.spawn(["lock", &name, "--health-addr", &holder_addr, "--", "sh", "-c", &script]);
    wait_for_file(&ready, "ready");
    wait_for_status(holder_port, "/leader", 200);
    wait_for_status(holder_port, "/healthz", 200);
    let metrics = wait_for_status(holder_port, "/metrics", 200);
    for line in ["mpsync_lease_held 1", "mpsync_acquisitions_total 1", "mpsync_child_starts_total 1"] {
        assert!(metrics.lines().any(|l| l == line), "missing {line:?}:\n{metrics}");
    }
    assert_eq!(get(holder_port, "/nope").map(|r| r.0), Some(404));

    let waiter_addr = format!("127.0.0.1:{waiter_port}");
    let waiter = env.spawn(["lock", &name, "--health-addr", &waiter_addr, "--", "true"]);
    wait_for_status(waiter_port, "/leader", 503);
    wait_for_status(waiter_port, "/healthz", 200);

    holder.signal(Signal::SIGTERM);
    holder.finish().assert_code(143);
    waiter.finish().assert_code(0);
}

#[test]
fn health_addr_that_cannot_be_bound_is_exit_125() {
    let env = TestEnv::file();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let done = env.run(["lock", "job", "--health-addr", &addr, "--", "true"]);
    done.assert_code(125);
    assert!(done.stderr.contains("--health-addr"), "{}", done.stderr);
}
