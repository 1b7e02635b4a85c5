//! `mpsync status` without NAME: one line (or JSON object) per Lease in the namespace, filtered by label.
//! (`status NAME` is tested with `elect` in elect.rs.) Every lease a test makes carries a label unique
//! to the test, so that against a real cluster, whose namespace holds other leases, it can select its own.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use serde_json::Value;

use crate::support::*;

both_backends!(
    listing_shows_every_lease_held_or_free_as_a_table_and_as_json,
    listing_filters_by_label_selector,
    listing_reads_every_page,
    empty_listing_says_so_on_stderr_and_exits_0,
    unparsable_selector_is_refused_on_one_line_with_exit_125,
    listing_shows_a_semaphore_as_its_slots_held_of_its_count,
);

/// The rows of the table under its header, as columns.
#[track_caller]
fn rows(done: &Finished) -> Vec<Vec<String>> {
    done.assert_code(0);
    let mut lines = done.stdout.lines();
    let header: Vec<&str> = lines.next().expect("a header").split_whitespace().collect();
    assert_eq!(header, ["NAME", "HOLDER", "STATE", "RENEWED", "TRANSITIONS"], "{}", done.stdout);
    lines.map(|line| line.split_whitespace().map(String::from).collect()).collect()
}

#[track_caller]
fn json_array(done: &Finished) -> Vec<Value> {
    done.assert_code(0);
    match serde_json::from_str(&done.stdout) {
        Ok(Value::Array(items)) => items,
        other => panic!("not a JSON array: {other:?}\n{}", done.stdout),
    }
}

fn names_in(items: &[Value]) -> Vec<&str> {
    items.iter().map(|item| item["name"].as_str().unwrap()).collect()
}

/// A name longer than the file backend keeps on disk (it stores it hashed).
fn long_name(env: &TestEnv) -> String {
    format!("{}.{}.{}.{}", "x".repeat(63), "y".repeat(63), "z".repeat(63), env.lease_name("long"))
}

fn listing_shows_every_lease_held_or_free_as_a_table_and_as_json(env: &TestEnv) {
    let run = env.lease_name("run");
    let label = [("mpsync-test", run.as_str())];
    let (held, free, expired, long) =
        (env.lease_name("held"), env.lease_name("free"), env.lease_name("expired"), long_name(env));
    env.put_labeled(&held, &label, TestEnv::foreign_record("holder-a", 60));
    let mut released = TestEnv::foreign_record("", 60);
    released.lease_transitions = Some(3);
    env.put_labeled(&free, &label, released);
    let mut gone = TestEnv::foreign_record("holder-gone", 15);
    let an_hour_ago = k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_hours(1);
    gone.renew_time = Some(MicroTime(an_hour_ago));
    env.put_labeled(&expired, &label, gone);
    env.put_labeled(&long, &label, TestEnv::foreign_record("holder-long", 60));
    let selector = format!("mpsync-test={run}");

    let table = rows(&env.run(["status", "-l", &selector]));
    let mut expected = [
        vec![held.as_str(), "holder-a", "held", "0s", "0"],
        vec![free.as_str(), "-", "free", "0s", "3"],
        vec![expired.as_str(), "holder-gone", "free", "3600s", "0"],
        vec![long.as_str(), "holder-long", "held", "0s", "0"],
    ];
    expected.sort();
    assert_eq!(table.len(), 4, "{table:?}");
    for (row, expected) in table.iter().zip(&expected) {
        assert_eq!(row[..3], expected[..3], "{table:?}");
        assert_eq!(row[4], expected[4], "{table:?}");
        if expected[3] == "3600s" {
            assert!(row[3].ends_with('m') && row[3].starts_with("6"), "an hour ago, as kubectl says it: {row:?}");
        } else {
            assert!(row[3].ends_with('s'), "renewed seconds ago: {row:?}");
        }
    }

    // JSON: the objects `status NAME -o json` prints, one per lease, in the same order.
    let items = json_array(&env.run(["status", "-l", &selector, "-o", "json"]));
    assert_eq!(names_in(&items), expected.iter().map(|row| row[0]).collect::<Vec<_>>());
    for item in &items {
        let name = item["name"].as_str().unwrap();
        let single: Value = serde_json::from_str(&env.run(["status", name, "-o", "json"]).stdout).unwrap();
        assert_eq!(item, &single, "the listing and `status {name}` say the same");
    }

    // Without a selector: these and whatever else the namespace holds.
    let everything = rows(&env.run(["status"]));
    for name in [&held, &free, &expired, &long] {
        assert!(everything.iter().any(|row| &row[0] == name), "{name} missing from {everything:?}");
    }
}

fn listing_filters_by_label_selector(env: &TestEnv) {
    let run = env.lease_name("run");
    let (infra, web, plain) = (env.lease_name("infra"), env.lease_name("web"), env.lease_name("plain"));
    let record = || TestEnv::foreign_record("someone", 60);
    env.put_labeled(&infra, &[("mpsync-test", &run), ("team", "infra")], record());
    env.put_labeled(&web, &[("mpsync-test", &run), ("team", "web")], record());
    env.put_labeled(&plain, &[("mpsync-test", &run)], record());
    let cases: [(&str, Vec<&String>); 6] = [
        ("team=infra", vec![&infra]),
        ("team==web", vec![&web]),
        ("team!=infra", vec![&web, &plain]),
        ("team", vec![&infra, &web]),
        ("!team", vec![&plain]),
        ("", vec![&infra, &web, &plain]),
    ];
    for (selector, expected) in cases {
        let selector = [format!("mpsync-test={run}"), selector.to_string()].join(",");
        let selector = selector.trim_end_matches(',');
        let mut expected: Vec<&str> = expected.iter().map(|name| name.as_str()).collect();
        expected.sort();
        let listed: Vec<String> =
            rows(&env.run(["status", "--selector", selector])).into_iter().map(|row| row[0].clone()).collect();
        assert_eq!(listed, expected, "-l {selector}");
        let items = json_array(&env.run(["status", "-l", selector, "-o", "json"]));
        assert_eq!(names_in(&items), expected, "-l {selector} -o json");
    }
}

/// More Leases than one page of a list holds (100: the API server is asked a page at a time, as kubectl
/// asks): every one is listed, once, in order.
fn listing_reads_every_page(env: &TestEnv) {
    let run = env.lease_name("pages");
    let mut expected: Vec<String> = (0..250).map(|i| format!("{run}-x{i}")).collect();
    for name in &expected {
        env.put_labeled(name, &[("mpsync-test", &run)], TestEnv::foreign_record("", 1));
    }
    expected.sort();
    let listed: Vec<String> =
        rows(&env.run(["status", "-l", &format!("mpsync-test={run}")])).into_iter().map(|row| row[0].clone()).collect();
    assert_eq!(listed, expected);
}

/// A list's `continue` token that expired before the next page was asked for (410 Expired: etcd compacted
/// the version the list began at): the list begins again, as kubectl's does, and every Lease is listed.
#[test]
fn a_list_whose_continue_token_expired_begins_again() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let run = env.lease_name("expired-pages");
    let mut expected: Vec<String> = (0..150).map(|i| format!("{run}-x{i}")).collect();
    for name in &expected {
        env.put_labeled(name, &[("mpsync-test", &run)], TestEnv::foreign_record("", 1));
    }
    expected.sort();
    // Every answer 500 ms late: the second page is asked for well after the first list is seen.
    server.set_latency(std::time::Duration::from_millis(500));
    let status = env.spawn(["status", "-l", &format!("mpsync-test={run}")]);
    wait_until("the first page's request", || server.requests().iter().any(|r| r.verb == "list"));
    server.fail_next(1, 410);
    let done = status.finish();
    server.set_latency(std::time::Duration::ZERO);
    let lists: Vec<u16> = server.requests().iter().filter(|r| r.verb == "list").map(|r| r.status).collect();
    assert_eq!(lists.get(1), Some(&410), "the 410 did not land on the second page: {lists:?}");
    let listed: Vec<String> = rows(&done).into_iter().map(|row| row[0].clone()).collect();
    assert_eq!(listed, expected, "{}", done.stderr);
}

/// Found by review (rv280): a list whose pages never end (a proxy that hands back the `continue` token it was
/// asked with) was read for ever, tens of thousands of requests, memory growing. A page that goes back to
/// Leases listed already (rv282: a proxy that drops `continue`), or the same token twice, is an error: exit 125.
#[test]
fn a_list_whose_pages_never_end_is_an_error() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let run = env.lease_name("endless");
    for i in 0..150 {
        env.put_labeled(&format!("{run}-x{i}"), &[("mpsync-test", &run)], TestEnv::foreign_record("", 1));
    }
    server.set_endless_lists(true);
    let done = env.run(["status", "-l", &format!("mpsync-test={run}")]);
    done.assert_code(125);
    assert!(done.stderr.contains("list leases in namespace"), "{}", done.stderr);
}

fn empty_listing_says_so_on_stderr_and_exits_0(env: &TestEnv) {
    let selector = format!("mpsync-test={}", env.lease_name("nothing"));
    let text = env.run(["status", "-l", &selector]);
    text.assert_code(0);
    assert_eq!(text.stdout, "", "stdout is for leases only");
    let expected = format!("No leases matching {selector:?} in namespace {}.", env.namespace);
    assert_eq!(text.stderr.trim(), expected);
    let json = json_array(&env.run(["status", "-l", &selector, "-o", "json"]));
    assert!(json.is_empty(), "{json:?}");
    if env.backend == Backend::File {
        // A lock directory nobody has made yet holds no leases either.
        let fresh = env.path("fresh-locks");
        let done = env.run(["status", "--lock-dir", fresh.to_str().unwrap()]);
        done.assert_code(0);
        assert_eq!(done.stderr.trim(), "No leases in namespace default.");
    }
}

fn unparsable_selector_is_refused_on_one_line_with_exit_125(env: &TestEnv) {
    let done = env.run(["status", "-l", "a b c"]);
    done.assert_code(125);
    assert_eq!(done.stderr.trim().lines().count(), 1, "{}", done.stderr);
    assert!(done.stderr.contains("a b c"), "{}", done.stderr);
    assert_eq!(done.stdout, "");
    if env.backend == Backend::File {
        // Set-based selectors are the API server's; the file backend says what it understands.
        let fresh = env.path("fresh-locks");
        let done = env.run(["status", "-l", "team in (infra,web)", "--lock-dir", fresh.to_str().unwrap()]);
        done.assert_code(125);
        assert_eq!(done.stderr.trim().lines().count(), 1, "{}", done.stderr);
        assert!(done.stderr.contains("key=value, key!=value, key and !key"), "{}", done.stderr);
        assert!(!fresh.exists(), "refused before the lock directory was made");
    }
}

#[test]
fn listing_forbidden_names_the_list_verb_on_one_line_and_needs_no_other() {
    if TestEnv::real_cluster() {
        return;
    }
    let env = TestEnv::kube();
    let name = env.lease_name("listed");
    env.put(&name, TestEnv::foreign_record("someone", 60));
    let server = env.server().unwrap();
    for verb in ["get", "watch", "create", "update"] {
        server.forbid(verb);
    }
    let listed = rows(&env.run(["status"]));
    assert_eq!(listed.iter().map(|row| row[0].as_str()).collect::<Vec<_>>(), [name.as_str()]);

    server.forbid("list");
    let done = env.run(["status"]);
    done.assert_code(125);
    let error = done.stderr.trim();
    assert_eq!(error.lines().count(), 1, "{error}");
    for needle in ["list leases in namespace default", "forbidden", "only the list verb", "leases.coordination.k8s.io"]
    {
        assert!(error.contains(needle), "expected {needle:?} in {error}");
    }
}

/// A semaphore in the listing: its marker's row says how many of its slots are held; each slot names its
/// semaphore (JSON: `slots` and `heldSlots` on the marker, `semaphore` and `slot` on each slot).
fn listing_shows_a_semaphore_as_its_slots_held_of_its_count(env: &TestEnv) {
    let run = env.lease_name("run");
    let pool = env.lease_name("pool");
    let meta = || {
        let labels = [("mpsync-test".to_string(), run.clone())].into();
        let annotations = [(mpsync::lease::SLOTS_ANNOTATION.to_string(), "3".to_string())].into();
        k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        }
    };
    env.create_with(&pool, meta(), Default::default());
    env.create_with(&format!("{pool}-0"), meta(), TestEnv::foreign_record("holder-a", 60));
    env.create_with(&format!("{pool}-1"), meta(), TestEnv::foreign_record("", 60));
    let selector = format!("mpsync-test={run}");
    let done = env.run(["status", "-l", &selector]);
    done.assert_code(0);
    let marker = done.stdout.lines().find(|line| line.starts_with(&format!("{pool} "))).expect("the marker's row");
    assert!(marker.contains("semaphore: 1 of 3 held"), "{}", done.stdout);
    let items = json_array(&env.run(["status", "-l", &selector, "-o", "json"]));
    let item =
        |name: &str| items.iter().find(|item| item["name"] == name).unwrap_or_else(|| panic!("{name}: {items:?}"));
    assert_eq!((item(&pool)["slots"].as_u64(), item(&pool)["heldSlots"].as_u64()), (Some(3), Some(1)));
    let slot = item(&format!("{pool}-0"));
    assert_eq!(
        (slot["semaphore"].as_str(), slot["slot"].as_u64(), slot["held"].as_bool()),
        (Some(pool.as_str()), Some(0), Some(true))
    );
    assert_eq!(item(&format!("{pool}-1"))["slot"].as_u64(), Some(1));
}

/// Found by review (helper-80): `status` printed with `println!`, which panics when stdout fails (exit
/// 101; in a release build an abort). A reader that has gone ends it as SIGPIPE ends `cat`: 141,
/// quietly; a full disk is a one-line error with 125.
#[test]
fn status_into_a_closed_pipe_or_a_full_disk_is_no_panic() {
    let env = TestEnv::file();
    let name = env.lease_name("pipe");
    env.run(fast(&["lock", &name], &["true"])).assert_code(0);
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let mut command = env.mpsync(["status", &name]);
    command.stdout(std::process::Stdio::from(write)).stderr(std::process::Stdio::piped());
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(141), "{:?}: {stderr}", output.status);
    assert!(stderr.is_empty(), "{stderr}");
    for args in [&["status", &name][..], &["completions", "bash"]] {
        let mut command = env.mpsync(args);
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        command.stdout(full).stderr(std::process::Stdio::piped());
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(125), "{args:?}: {stderr}");
        assert!(stderr.contains("No space left on device") && stderr.lines().count() == 1, "{args:?}: {stderr}");
    }
}

/// Found by review (helper-83): the listing of an empty namespace says so on stderr; a stderr whose
/// reader has gone made `eprintln!` panic (101). The listing itself went out: 0.
#[test]
fn an_empty_listing_into_a_closed_stderr_is_no_panic() {
    let env = TestEnv::file();
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let mut command = env.mpsync(["status"]);
    command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::from(write));
    let output = command.output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{:?}", output.status);
}

both_backends!(
    observe_ends_on_sigterm_while_its_stdout_is_full,
    status_ends_on_sigterm_while_its_stdout_is_full,
    status_and_observe_end_on_every_stop_signal_while_their_stdout_is_full,
);

/// Found by review (rv258): `status` and `observe` blocked writing to a stdout nobody reads (a stuck consumer;
/// here a pipe of one page, full) did not end on SIGTERM: only SIGKILL ended them. `ARGS` write more than the
/// pipe holds; once it is full (mpsync is blocked writing), signal `signal` (a number: a real-time one has no
/// name) ends it with `expected`.
fn stopped_while_stdout_is_full(env: &TestEnv, args: &[&str], signal: i32, expected: i32) {
    use std::os::fd::AsRawFd;
    let (read, write) = nix::unistd::pipe().unwrap();
    // SAFETY: fcntl on a pipe we own.
    let size = unsafe { nix::libc::fcntl(write.as_raw_fd(), nix::libc::F_SETPIPE_SZ, 4096) };
    assert!(size >= 4096, "F_SETPIPE_SZ: {}", std::io::Error::last_os_error());
    // Full: a one-page pipe takes a small write only into the room its page has left.
    let full = || {
        let mut queued: nix::libc::c_int = 0;
        // SAFETY: FIONREAD into a c_int we own; F_GETPIPE_SZ on a pipe we own.
        let capacity = unsafe {
            nix::libc::ioctl(read.as_raw_fd(), nix::libc::FIONREAD, &mut queued);
            nix::libc::fcntl(read.as_raw_fd(), nix::libc::F_GETPIPE_SZ)
        };
        queued + 256 >= capacity
    };
    let stderr = env.path("full.stderr");
    let mut command = env.mpsync(args);
    command.stdout(std::process::Stdio::from(write)).stderr(std::fs::File::create(&stderr).unwrap());
    let mut child = command.spawn().unwrap();
    let ended = |child: &mut std::process::Child| child.try_wait().unwrap().is_some();
    assert!(within_patience(|| full() || ended(&mut child)), "{args:?}: its stdout never filled");
    assert!(!ended(&mut child), "{args:?} ended before its stdout filled: {}", fs_read(&stderr));
    // SAFETY: kill(2) of our own child, with a signal number (real-time ones included).
    unsafe { nix::libc::kill(child.id() as i32, signal) };
    let mut status = None;
    within_patience(|| {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    drop(read);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(expected),
        "{args:?}, signal {signal}: {status:?}\n{}",
        fs_read(&stderr)
    );
}

fn fs_read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// `observe P --slots 100` prints a line per slot at once (about 7 KB): SIGTERM ends it with 0.
fn observe_ends_on_sigterm_while_its_stdout_is_full(env: &TestEnv) {
    let pool = env.lease_name("pool");
    stopped_while_stdout_is_full(env, &["observe", &pool, "--slots", "100"], nix::libc::SIGTERM, 0);
}

/// `status P --slots 100 -o json` prints a JSON object per slot (tens of KB): SIGTERM ends it with 143.
fn status_ends_on_sigterm_while_its_stdout_is_full(env: &TestEnv) {
    let pool = env.lease_name("pool");
    stopped_while_stdout_is_full(env, &["status", &pool, "--slots", "100", "-o", "json"], nix::libc::SIGTERM, 143);
}

/// Found by review (rv260): so do the other stop signals `status` and `observe` serve (`timeout -s ALRM`, a
/// container's STOPSIGNAL: PWR, or systemd images' SIGRTMIN+3, which counts as SIGTERM). Before, the thread
/// that ends them while blocked served TERM, INT and HUP only: the others were caught, and never acted on.
fn status_and_observe_end_on_every_stop_signal_while_their_stdout_is_full(env: &TestEnv) {
    let pool = env.lease_name("pool");
    let status = ["status", &pool, "--slots", "100", "-o", "json"];
    let observe = ["observe", &pool, "--slots", "100"];
    stopped_while_stdout_is_full(env, &status, nix::libc::SIGALRM, 128 + nix::libc::SIGALRM);
    stopped_while_stdout_is_full(env, &status, nix::libc::SIGRTMIN() + 3, 143);
    stopped_while_stdout_is_full(env, &observe, nix::libc::SIGPWR, 128 + nix::libc::SIGPWR);
    stopped_while_stdout_is_full(env, &observe, nix::libc::SIGRTMIN() + 3, 0);
}
