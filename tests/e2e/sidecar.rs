//! `mpsync sidecar`: the metaparticle elector protocol over raw HTTP, and the real Python client.
//! Each side-car listens on a port of its own choosing (`--listen 127.0.0.1:0`) and prints it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::support::*;

both_backends!(
    put_acquires_a_lock_for_the_side_cars_identity,
    another_side_car_gets_409_naming_the_holder_while_heartbeats_keep_it,
    lock_whose_heartbeats_stop_is_taken_by_another_side_car_after_its_ttl,
    post_creates_only_and_delete_hands_the_lock_over_at_once,
    sigterm_releases_every_lock_held_and_exits_0,
    simultaneous_puts_from_two_side_cars_leave_exactly_one_holder,
);

/// A running side-car and the address it listens on.
struct Sidecar {
    process: Proc,
    address: SocketAddr,
}

impl Sidecar {
    fn start(env: &TestEnv, identity: Option<&str>, extra: &[&str]) -> Sidecar {
        let mut args = vec!["sidecar", "--listen", "127.0.0.1:0", "-v"];
        if let Some(identity) = identity {
            args.extend(["--identity", identity]);
        }
        args.extend(extra);
        let mut process = env.spawn(args);
        let deadline = Instant::now() + PATIENCE;
        loop {
            let address = process.stdout().lines().find_map(|line| line.strip_prefix("listening on ")?.parse().ok());
            if let Some(address) = address {
                return Sidecar { process, address };
            }
            if let Some(status) = process.wait_for(Duration::ZERO) {
                panic!("the side-car exited ({status}) before listening:\n{}", process.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "the side-car did not listen within {PATIENCE:?}:\n{}",
                process.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `METHOD PATH` as the metaparticle clients send it (PUT and POST with an empty body).
    fn request(&self, method: &str, path: &str) -> Reply {
        let length = if matches!(method, "PUT" | "POST") { "Content-Length: 0\r\n" } else { "" };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\naccept: application/json\r\n{length}Connection: close\r\n\r\n"
        );
        send(self.address, request.as_bytes())
    }

    fn put(&self, name: &str) -> Reply {
        self.request("PUT", &format!("/locks/{name}"))
    }
}

struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|err| panic!("not JSON ({err}): {:?}", self.body))
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim().to_string())
        })
    }

    #[track_caller]
    fn assert_status(&self, status: u16) -> &Reply {
        assert_eq!(self.status, status, "{}{}", self.head, self.body);
        self
    }
}

/// Send raw bytes and read the whole response (the side-car closes after each one).
fn send(address: SocketAddr, bytes: &[u8]) -> Reply {
    let mut stream = TcpStream::connect_timeout(&address, PATIENCE).expect("connect to the side-car");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.set_write_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(bytes).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("a complete response before the side-car closes");
    let text = String::from_utf8(response).expect("a text response");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no end of head: {text:?}"));
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or_else(|| panic!("{head:?}"));
    let reply = Reply { status, head: format!("{head}\r\n\r\n"), body: body.to_string() };
    let length = reply.header("content-length").expect("a Content-Length").parse::<usize>().unwrap();
    if !bytes.starts_with(b"HEAD ") {
        assert_eq!(length, reply.body.len(), "Content-Length matches the body");
    }
    assert_eq!(reply.header("connection").as_deref(), Some("close"));
    reply
}

fn put_acquires_a_lock_for_the_side_cars_identity(env: &TestEnv) {
    let name = env.lease_name("sc-put");
    // The default identity: <hostname>_<random>, like lock's.
    let sidecar = Sidecar::start(env, None, &[]);
    sidecar.request("GET", &format!("/locks/{name}")).assert_status(404);
    assert_eq!(env.holder(&name), None, "GET creates nothing");

    let acquired = sidecar.put(&name);
    acquired.assert_status(200);
    let lock = acquired.json();
    let holder = env.holder(&name).expect("the Lease exists");
    assert_eq!(lock["holder"], holder.as_str());
    assert!(holder.contains('_'), "default identity: {holder}");
    assert_eq!(lock["held"], true);
    assert_eq!(lock["name"], name.as_str());
    assert_eq!(lock["leaseDurationSeconds"], 30, "the original's TTL by default");
    let (version, spec) = env.get(&name).unwrap();
    assert_eq!(spec.lease_duration_seconds, Some(30));

    let got = sidecar.request("GET", &format!("/locks/{name}"));
    got.assert_status(200);
    assert_eq!(got.json()["holder"], holder.as_str());
    let head = sidecar.request("HEAD", &format!("/locks/{name}"));
    head.assert_status(200);
    assert!(head.body.is_empty(), "HEAD has no body: {:?}", head.body);

    // A heartbeat renews: a new write, the same holding (same fencing token).
    let renewed = sidecar.put(&name);
    renewed.assert_status(200);
    assert_eq!(renewed.json()["leaseTransitions"], lock["leaseTransitions"]);
    let (renewed_version, renewed_spec) = env.get(&name).unwrap();
    assert_ne!(renewed_version, version, "the heartbeat wrote the Lease");
    assert_eq!(renewed_spec.holder_identity.as_deref(), Some(holder.as_str()));
    assert_eq!(renewed_spec.acquire_time, spec.acquire_time, "a renewal keeps acquireTime");
}

fn another_side_car_gets_409_naming_the_holder_while_heartbeats_keep_it(env: &TestEnv) {
    let name = env.lease_name("sc-busy");
    let a = Sidecar::start(env, Some("sidecar-a"), &["--ttl", "2s"]);
    let b = Sidecar::start(env, Some("sidecar-b"), &["--ttl", "2s"]);
    a.put(&name).assert_status(200);
    let refused = b.put(&name);
    refused.assert_status(409);
    assert_eq!(refused.json()["holder"], "sidecar-a");
    assert_eq!(refused.json()["held"], true);
    b.request("GET", &format!("/locks/{name}")).assert_status(200);

    // Heartbeats keep it well past the TTL: every one changes the record, which restarts the TTL as
    // B observes it, whatever the pauses between them on a loaded machine.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        a.put(&name).assert_status(200);
        let refused = b.put(&name);
        refused.assert_status(409);
        assert_eq!(refused.json()["holder"], "sidecar-a");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(env.holder(&name).as_deref(), Some("sidecar-a"));

    // The same Leases as lock: each respects the other.
    env.run(["lock", &name, "--no-wait", "--", "true"]).assert_code(124);
    let foreign = env.lease_name("sc-foreign");
    env.put(&foreign, TestEnv::foreign_record("someone-else", 60));
    let refused = a.put(&foreign);
    refused.assert_status(409);
    assert_eq!(refused.json()["holder"], "someone-else");
    assert_eq!(env.holder(&foreign).as_deref(), Some("someone-else"));
}

fn lock_whose_heartbeats_stop_is_taken_by_another_side_car_after_its_ttl(env: &TestEnv) {
    let name = env.lease_name("sc-expiry");
    let a = Sidecar::start(env, Some("sidecar-a"), &["--ttl", "2s"]);
    let b = Sidecar::start(env, Some("sidecar-b"), &["--ttl", "2s"]);
    let first = a.put(&name);
    first.assert_status(200);
    let last_heartbeat = Instant::now();
    let first_token = first.json()["leaseTransitions"].as_i64().unwrap();

    // A's client stops heartbeating; B's client keeps asking.
    let taken = loop {
        let reply = b.put(&name);
        match reply.status {
            409 => assert_eq!(reply.json()["holder"], "sidecar-a"),
            200 => break reply,
            _ => panic!("unexpected {}{}", reply.head, reply.body),
        }
        assert!(last_heartbeat.elapsed() < PATIENCE, "B never took the lock");
        std::thread::sleep(Duration::from_millis(100));
    };
    let waited = last_heartbeat.elapsed();
    assert!(waited >= Duration::from_secs(2), "taken {waited:?} after the last heartbeat, before the 2s TTL");
    assert_eq!(taken.json()["holder"], "sidecar-b");
    assert!(taken.json()["leaseTransitions"].as_i64().unwrap() > first_token, "a new holder, a new token");
    assert_eq!(env.holder(&name).as_deref(), Some("sidecar-b"));

    // A's late heartbeat finds it taken.
    let late = a.put(&name);
    late.assert_status(409);
    assert_eq!(late.json()["holder"], "sidecar-b");
}

fn post_creates_only_and_delete_hands_the_lock_over_at_once(env: &TestEnv) {
    let name = env.lease_name("sc-post");
    let path = format!("/locks/{name}");
    let a = Sidecar::start(env, Some("sidecar-a"), &[]);
    let b = Sidecar::start(env, Some("sidecar-b"), &[]);
    a.request("DELETE", &path).assert_status(404);

    let created = a.request("POST", &path);
    created.assert_status(200);
    assert_eq!(created.json()["holder"], "sidecar-a");
    assert_eq!(a.request("POST", &path).assert_status(409).json()["holder"], "sidecar-a");
    b.request("POST", &path).assert_status(409);

    // Only the holder releases.
    assert_eq!(b.request("DELETE", &path).assert_status(409).json()["holder"], "sidecar-a");
    assert_eq!(env.holder(&name).as_deref(), Some("sidecar-a"));
    let released = a.request("DELETE", &path);
    released.assert_status(200);
    assert_eq!(released.json()["holder"], "");
    assert_eq!(released.json()["held"], false);
    let (_, spec) = env.get(&name).unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some(""), "released: holder cleared");
    assert_eq!(spec.lease_duration_seconds, Some(1), "released as client-go does");
    a.request("DELETE", &path).assert_status(200);

    // Free: the other side-car takes it at once, not after the 30s TTL.
    let started = Instant::now();
    b.put(&name).assert_status(200);
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert_eq!(env.holder(&name).as_deref(), Some("sidecar-b"));
}

fn sigterm_releases_every_lock_held_and_exits_0(env: &TestEnv) {
    let (one, two, theirs) = (env.lease_name("sc-term"), env.lease_name("sc-term"), env.lease_name("sc-term"));
    let mut a = Sidecar::start(env, Some("sidecar-a"), &[]);
    let b = Sidecar::start(env, Some("sidecar-b"), &[]);
    a.put(&one).assert_status(200);
    a.put(&two).assert_status(200);
    b.put(&theirs).assert_status(200);
    a.put(&theirs).assert_status(409);

    a.process.signal(Signal::SIGTERM);
    let status = a.process.wait_for(PATIENCE).expect("the side-car exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", a.process.stderr());
    assert_eq!(env.holder(&one).as_deref(), Some(""), "released on the way out");
    assert_eq!(env.holder(&two).as_deref(), Some(""), "released on the way out");
    assert_eq!(env.holder(&theirs).as_deref(), Some("sidecar-b"), "a lock that is not ours is never written");
    b.put(&one).assert_status(200);
}

fn simultaneous_puts_from_two_side_cars_leave_exactly_one_holder(env: &TestEnv) {
    let a = Sidecar::start(env, Some("sidecar-a"), &[]);
    let b = Sidecar::start(env, Some("sidecar-b"), &[]);
    for _round in 0..8 {
        let name = env.lease_name("sc-race");
        let start = std::sync::Barrier::new(2);
        let racer = |sidecar: &Sidecar| {
            start.wait();
            let reply = sidecar.put(&name);
            (reply.status, reply.json()["holder"].as_str().unwrap_or_default().to_string())
        };
        let (from_a, from_b) = std::thread::scope(|scope| {
            let one = scope.spawn(|| racer(&a));
            let two = scope.spawn(|| racer(&b));
            (one.join().unwrap(), two.join().unwrap())
        });
        let winner = env.holder(&name).expect("the Lease exists");
        let mut statuses = [from_a.0, from_b.0];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 409], "exactly one holder: {from_a:?} {from_b:?}");
        assert_eq!(from_a.1, winner, "both answers name the holder");
        assert_eq!(from_b.1, winner, "both answers name the holder");
    }
}

#[test]
fn bad_requests_get_400_404_405_and_never_hang() {
    let env = TestEnv::file();
    let sidecar = Sidecar::start(&env, Some("sidecar-a"), &[]);
    // Garbage, even binary (a TLS handshake), is refused at once rather than at the read timeout.
    let started = Instant::now();
    assert_eq!(send(sidecar.address, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03").status, 400);
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    send(sidecar.address, b"garbage\r\n\r\n").assert_status(400);
    send(sidecar.address, b"GET /locks/a HTTP/1.1\r\nno colon here\r\n\r\n").assert_status(400);
    send(sidecar.address, b"GET /locks/a HTTP/2.0\r\n\r\n").assert_status(505);

    sidecar.request("GET", "/locks/Bad_Name").assert_status(400);
    sidecar.put("Bad_Name").assert_status(400);
    sidecar.put(&"x".repeat(254)).assert_status(400);
    for path in ["/", "/locks", "/locks/", "/locks/a/b", "/healthz"] {
        sidecar.request("GET", path).assert_status(404);
    }
    let patch = sidecar.request("PATCH", "/locks/a");
    patch.assert_status(405);
    let allow = patch.header("allow").expect("an Allow header");
    for method in ["GET", "PUT", "POST", "DELETE"] {
        assert!(allow.contains(method), "Allow: {allow}");
    }
    assert!(patch.json()["message"].is_string());

    // A stalled client holds up no one: a half-sent request, then a whole one on another connection.
    let mut stalled = TcpStream::connect(sidecar.address).unwrap();
    stalled.write_all(b"PUT /locks/stalled HT").unwrap();
    let started = Instant::now();
    sidecar.put("after-the-stall").assert_status(200);
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    drop(stalled);

    // Bodies are read and ignored, whether counted or chunked.
    send(sidecar.address, b"PUT /locks/with-body HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello").assert_status(200);
    send(sidecar.address, b"PUT /locks/chunked HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .assert_status(200);
    // HTTP/1.0, absolute form and a query string are fine.
    send(sidecar.address, b"GET http://localhost/locks/with-body?x=1 HTTP/1.0\r\n\r\n").assert_status(200);
}

#[test]
fn listen_address_in_use_or_bad_ttl_exits_125() {
    let env = TestEnv::file();
    let first = Sidecar::start(&env, None, &[]);
    let address = first.address.to_string();
    let done = env.run(["sidecar", "--listen", &address]);
    done.assert_code(125);
    assert!(done.stderr.contains("cannot listen on"), "{}", done.stderr);
    let done = env.run(["sidecar", "--ttl", "1500ms"]);
    done.assert_code(125);
    assert!(done.stderr.contains("--ttl"), "{}", done.stderr);
}

/// The metaparticle Python client (`metaparticle-sync` 0.2.0 from `PyPI`), unchanged. `tests/run.sh`
/// installs it in `.venv-test` and sets `MPSYNC_TEST_PYTHON`; without it the test says so and skips.
const PYTHON_CLIENT: &str = r"
import importlib.util, os, sys
# The package's __init__ imports election.py, whose `from lock import Lock` is a Python 2 relative
# import: put the package's own directory on the path so that it loads unchanged.
sys.path.insert(0, os.path.dirname(importlib.util.find_spec('metaparticle_sync').origin))
from metaparticle_sync import Lock
lock = Lock(sys.argv[1], base_uri=sys.argv[2])
print(lock.acquire(blocking=False), flush=True)
# A holder heartbeats from a non-daemon thread every 10s: leave without waiting for it.
os._exit(0)
";

fn python_acquire(env: &TestEnv, python: &str, name: &str, sidecar: &Sidecar) -> String {
    let mut command = Command::new(python);
    command.args(["-c", PYTHON_CLIENT, name, &format!("http://{}", sidecar.address)]);
    // urllib honours proxy variables: the side-car is on loopback, never behind a proxy.
    for proxy in ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"] {
        command.env_remove(proxy);
    }
    command.env("no_proxy", "*").env("NO_PROXY", "*");
    let done = Proc::spawn(command, &env.dir).finish();
    done.assert_code(0);
    done.stdout.trim().to_string()
}

#[test]
fn python_client_acquires_and_sees_the_lock_held_by_another_side_car() {
    let Some(python) = std::env::var("MPSYNC_TEST_PYTHON").ok().filter(|p| !p.is_empty()) else {
        eprintln!("SKIPPED: MPSYNC_TEST_PYTHON is not set (tests/run.sh sets it after installing metaparticle-sync)");
        return;
    };
    let env = TestEnv::kube();
    let name = env.lease_name("sc-python");
    let a = Sidecar::start(&env, Some("sidecar-a"), &[]);
    let b = Sidecar::start(&env, Some("sidecar-b"), &[]);
    assert_eq!(python_acquire(&env, &python, &name, &a), "True");
    assert_eq!(env.holder(&name).as_deref(), Some("sidecar-a"));
    assert_eq!(python_acquire(&env, &python, &name, &b), "False", "held through the other side-car");
    assert_eq!(python_acquire(&env, &python, &name, &a), "True", "a second client of the holding side-car");
    assert_eq!(env.holder(&name).as_deref(), Some("sidecar-a"));
    // The DELETE extension frees it for the other side-car's client at once.
    a.request("DELETE", &format!("/locks/{name}")).assert_status(200);
    assert_eq!(python_acquire(&env, &python, &name, &b), "True");
    assert_eq!(env.holder(&name).as_deref(), Some("sidecar-b"));
}

#[test]
fn api_failures_answer_503_or_403_and_the_side_car_carries_on() {
    if TestEnv::real_cluster() {
        return;
    }
    let env = TestEnv::kube();
    let server = env.server().unwrap();
    let name = env.lease_name("sc-faults");
    let sidecar = Sidecar::start(&env, Some("sidecar-a"), &[]);

    server.fail_next(100_000, 503);
    let unavailable = sidecar.put(&name);
    unavailable.assert_status(503);
    assert_eq!(unavailable.header("retry-after").as_deref(), Some("1"));
    assert!(unavailable.json()["message"].is_string());
    server.fail_next(0, 503);
    sidecar.put(&name).assert_status(200);

    let other = env.lease_name("sc-faults");
    server.forbid("create");
    let forbidden = sidecar.put(&other);
    forbidden.assert_status(403);
    let message = forbidden.json()["message"].as_str().unwrap().to_string();
    assert!(message.contains("forbidden") && message.contains("rbac"), "{message}");
    server.allow("create");
    sidecar.put(&other).assert_status(200);
    assert_eq!(env.holder(&name).as_deref(), Some("sidecar-a"));
}
