//! Adversarial reproductions through the real binary (see the adversary report on the branch
//! `adversary1`). Each test asserts what the README and CONTRACT promise; the ones marked `#[ignore]`
//! fail on the code as it stands, and are the reproductions:
//!
//! ```sh
//! cargo test --test e2e adversary -- --ignored --test-threads 2 --nocapture
//! ```

use std::fs::{self, OpenOptions};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::Signal;

use crate::support::*;

fn server_env() -> Option<TestEnv> {
    if TestEnv::real_cluster() {
        eprintln!("SKIPPED: needs the test server's fault injection");
        return None;
    }
    Some(TestEnv::kube())
}

/// Hold the file backend's per-lease write lock (`NAME.lock`, `flock`ed by every write), as another
/// writer whose write is slow (a slow fsync, a loaded disk) holds it.
fn hold_write_lock(env: &TestEnv, _name: &str) -> Flock<fs::File> {
    // Every write flocks the lock directory itself.
    let file = fs::File::open(env.lock_dir()).unwrap();
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| errno).expect("flock")
}

/// Finding 1 (Kubernetes backend). One 500 answer to the acquiring write (not committed: the server
/// did nothing) leaves the write "unresolved" in the elector for good: a read that shows the record
/// unchanged does not clear it. The campaign then lets no slot send an acquisition while one is
/// unresolved (`may_acquire`), the slot that has it included, so it never writes again. It waits for a
/// watch event that never comes: the lease is free, and nobody acquires it.
///
/// Here the lease was held by `someone` (so the process waits, and watches); it expires; the acquiring
/// PUT gets one 500. The child never runs; `--timeout` ends it with 124 ("not acquired in time").
/// Without `--timeout`, `lock` and `elect` wait forever; with `--no-wait`, 124 after a lease duration.
///
/// It happens without injected faults too: in a full suite run on the loaded 2-core machine,
/// `backends::file_backend_stress_8_processes_200_acquisitions_each` failed ("stress loop finishes")
/// because five of its processes logged "outcome unknown: write lease ...: no answer from the file system
/// within 5s" for their acquisition and then sat in epoll_wait for 15 minutes beside a free lease.
#[test]
fn one_5xx_to_the_acquisition_never_wedges_the_campaign() {
    let Some(env) = server_env() else { return };
    let server = env.server().unwrap();
    let name = env.lease_name("wedge");
    env.put(&name, TestEnv::foreign_record("someone", 3));
    let ran = env.path("ran");
    let lock = env.spawn(fast(&["lock", &name, "-v", "--timeout", "15s"], &["touch", ran.to_str().unwrap()]));
    wait_until("the waiter to wait", || lock.stderr().contains("waiting"));
    assert!(server.wait_for_watch_count(1, PATIENCE), "the waiter watches");
    // The next request is the acquiring PUT, when `someone`'s record expires (3s after it was seen).
    let puts = server.count("update");
    server.fail_next(1, 500);
    wait_until("the acquiring PUT to be answered 500", || server.count("update") > puts);
    let started = Instant::now();
    let done = lock.finish();
    eprintln!("exit {:?} after {:?} more\n{}", done.code, started.elapsed(), done.stderr);
    eprintln!("requests after the 500: {:?}", server.counts());
    assert!(ran.exists(), "the lease was free, yet the child never ran (exit {:?})\n{}", done.code, done.stderr);
    done.assert_code(0);
}

/// Finding 1 (file backend, no watch at all). The create is blocked on the lease's write lock (another
/// writer's slow write) past the call timeout (1s with these timings): outcome unknown. The read that
/// follows shows no record: the write stays unresolved, the campaign never writes again and has no watch
/// to wake it. The blocked create then lands when the lock frees: the record is held under this
/// process's identity, never renewed, and no child runs.
#[test]
fn file_acquisition_with_unknown_outcome_never_wedges_the_campaign() {
    let env = TestEnv::file();
    let name = env.lease_name("fwedge");
    let write_lock = hold_write_lock(&env, &name);
    let ran = env.path("ran");
    let lock = env.spawn(fast(&["lock", &name, "-v", "--timeout", "15s"], &["touch", ran.to_str().unwrap()]));
    // Every write waits for the lock directory beyond its call timeout: none can land meanwhile.
    std::thread::sleep(Duration::from_secs(3));
    assert!(env.get(&name).is_none());
    drop(write_lock);
    let done = lock.finish();
    assert!(ran.exists(), "the lease was free, yet the child never ran\n{}", done.stderr);
    done.assert_code(0);
}

/// A pipe already full: the first log line mpsync writes to it blocks until someone reads.
fn full_pipe() -> (OwnedFd, OwnedFd) {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let (read, write) = nix::unistd::pipe().unwrap();
    let flags = OFlag::from_bits_truncate(fcntl(write.as_fd(), FcntlArg::F_GETFL).unwrap());
    fcntl(write.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).unwrap();
    let chunk = [b'x'; 4096];
    let mut filled = 0;
    while let Ok(n) = nix::unistd::write(&write, &chunk) {
        filled += n;
    }
    fcntl(write.as_fd(), FcntlArg::F_SETFL(flags)).unwrap();
    eprintln!("stderr pipe filled with {filled} bytes");
    (read, write)
}

fn drain(read: &OwnedFd) {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(read.as_fd(), FcntlArg::F_GETFL).unwrap());
    fcntl(read.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).unwrap();
    let mut buffer = [0u8; 65536];
    while let Ok(n) = nix::unistd::read(read, &mut buffer) {
        if n == 0 {
            break;
        }
    }
}

/// Finding 2. mpsync writes its logs synchronously to stderr from its only runtime thread. When stderr
/// blocks (a full pipe: a log shipper or `| tee` that stalls, a terminal paused with Ctrl-S, a stalled ssh
/// session), the first log line blocks the whole runtime: no renew-deadline timer, no loss, no signal to
/// the child. The first line written at the default level is the warning about a failed renewal, so the
/// freeze comes exactly when the lease is in danger.
///
/// Here: the holder's stderr is a full pipe; its connection to the API server is cut (a partition); its
/// renewal times out and it logs the warning: frozen. The waiter takes the lease over after the observed
/// expiry and runs its child to the end, while the old child still runs, unsupervised.
#[test]
fn a_blocked_stderr_never_lets_the_child_outlive_the_lease() {
    let Some(env) = server_env() else { return };
    let name = env.lease_name("stderr");
    let log = env.path("log");
    let pid_file = env.path("pid");
    let (proxy, proxied) = env.proxied_kubeconfig();

    let (stderr_read, stderr_write) = full_pipe();
    let script = format!("echo $$ > {}; {}", pid_file.display(), draining_script(&log, "0"));
    let mut command = env.mpsync(fast(&["lock", &name, "--identity", "frozen"], &["sh", "-c", &script]));
    command.env("MPSYNC_KUBECONFIG", &proxied).stdout(Stdio::null()).stderr(Stdio::from(stderr_write));
    let mut holder = command.spawn().unwrap();
    let old_child = read_pid(&pid_file);

    proxy.partition();
    let waiter_log = env.path("waiter-log");
    let waiter = env.spawn(fast(&["lock", &name, "-v"], &["sh", "-c", &stamp_script(&waiter_log, "sleep 1")]));
    let waiter = waiter.finish();
    waiter.assert_code(0);
    let waiter_stamps = read_stamps(&waiter_log);
    let old_alive = alive(old_child);
    let holder_alive = holder.try_wait().unwrap().is_none();
    let wchan = fs::read_to_string(format!("/proc/{}/wchan", holder.id())).unwrap_or_default();
    eprintln!(
        "waiter's child ran {waiter_stamps:?}; the old child (pid {old_child}) alive after it: {old_alive}; holder \
         alive: {holder_alive}, blocked in {wchan:?}; old child's stamps: {:?}",
        read_stamps(&log)
    );

    // Unblock the holder: it finds the lease lost and stops its child.
    drain(&stderr_read);
    drop(stderr_read);
    proxy.heal();
    proxy.drop_connections();
    let status = {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = holder.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = holder.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    eprintln!("holder exit after unblocking: {status:?}");
    assert!(!old_alive, "the old child (pid {old_child}) still ran after the waiter's child had run to its end");
    drop(proxy);
}

/// Finding 4 (file backend), end to end, against the store as it now is (see
/// `src/lease_adversary.rs`): `h` (elect, no watch) holds the lease, its record file is removed right
/// after one of h's renewals, and a fresh `x` comes along. Before, x created the record at resourceVersion
/// 1 and h, ignoring it as older, eventually ran a second child beside x's. Now x's create brings h's
/// record back and x waits; h keeps its lease and its one child.
#[test]
fn deleting_the_file_record_under_a_holder_lets_no_fresh_process_in() {
    let env = TestEnv::file();
    let name = env.lease_name("rvreset");
    let log = env.path("log");
    let h = env.spawn(fast(&["elect", &name, "-v", "--identity", "h"], &["sh", "-c", &draining_script(&log, "0")]));
    wait_for_file(&log, "start");
    let version = |env: &TestEnv| env.get(&name).map_or(0, |(rv, _)| rv.parse::<u64>().unwrap());
    let seen = version(&env);
    wait_until("h to renew once more", || version(&env) > seen);
    env.delete(&name);
    let ran = env.path("x-ran");
    let x = env.run(fast(&["lock", &name, "--identity", "x", "--timeout", "3s"], &["touch", ran.to_str().unwrap()]));
    x.assert_code(124);
    assert!(!ran.exists(), "x ran beside h");
    assert_eq!(env.holder(&name).as_deref(), Some("h"), "h's record is back");
    assert!(!h.stderr().contains("lost the lease"), "h kept its lease\n{}", h.stderr());
    assert_eq!(read_stamps(&log).iter().filter(|s| s.0 == "start").count(), 1, "h's one child");
    h.signal(Signal::SIGTERM);
    h.finish();
}

/// Finding 6: `--retry-period` large enough that `retry_period * 1.2` does not fit a `Duration`
/// panics in `Timing::validate` (exit 101 and a backtrace) instead of a usage error (125); so does a
/// `--timeout` too large to add to the clock (`Instant + Duration` overflows in `run.rs`).
#[test]
fn a_huge_retry_period_is_a_usage_error_not_a_panic() {
    let env = TestEnv::file();
    let done = env.run(["lock", "x", "--retry-period", "500000000000y", "--", "true"]);
    assert!(!done.stderr.contains("panicked"), "{}", done.stderr);
    done.assert_code(125);
    // The same with --timeout: `Instant::now() + timeout` overflows.
    let done = env.run(["lock", "x", "--timeout", "500000000000y", "--", "true"]);
    assert!(!done.stderr.contains("panicked"), "{}", done.stderr);
    assert_ne!(done.code, Some(101), "{}", done.stderr);
}

/// Finding 7 (CONTRACT §10: "with N recorded on the slots, so that processes that disagree on N are
/// refused"). Before main's 3044cfb nothing recorded N: two holders of `--slots 2` and a third process
/// given `--slots 3` ran three children at once on a "2-slot" semaphore. Fixed on main; kept as a check.
#[test]
fn processes_that_disagree_on_slots_are_refused() {
    let env = TestEnv::file();
    let name = env.lease_name("sem");
    let log = env.path("log");
    let gate = env.path("gate");
    let body = until_exists(&gate);
    let script = stamp_script(&log, &body);
    let a = env.spawn(fast(&["lock", &name, "--slots", "2"], &["sh", "-c", &script]));
    let b = env.spawn(fast(&["lock", &name, "--slots", "2"], &["sh", "-c", &script]));
    wait_until("both slots of the 2-slot semaphore to run", || {
        read_stamps(&log).iter().filter(|s| s.0 == "start").count() == 2
    });
    let c = env.spawn(fast(&["lock", &name, "--slots", "3", "--timeout", "3s"], &["sh", "-c", &script]));
    let mut c_done = c;
    let starts = |log: &Path| read_stamps(log).iter().filter(|s| s.0 == "start").count();
    wait_until("the third process to be refused or to run a third child", || {
        c_done.wait_for(Duration::ZERO).is_some() || starts(&log) == 3
    });
    let running = starts(&log);
    fs::write(&gate, "").unwrap();
    a.finish().assert_code(0);
    b.finish().assert_code(0);
    let c = c_done.finish();
    eprintln!("children started while both slots were held: {running}; third process exit {:?}", c.code);
    assert_eq!(running, 2, "a third child ran on the 2-slot semaphore (--slots 3 was not refused)\n{}", c.stderr);
    c.assert_code(125);
}

/// Finding 5 (README "What mpsync cannot guarantee": "A machine (or VM, or process) frozen for longer
/// than the lease duration ... can run its child for a moment after another holder started"). The bound
/// is much tighter than that: a freeze of mpsync alone (not even its child) of a little more than the
/// safety margin `lease_duration - renew_deadline - grace` (1s with the defaults and here), at the moment
/// it must SIGKILL its child, lets the child outlive the lease. Here: lease 4s, renew deadline 2s, grace
/// 1s; mpsync is stopped for 2.5s (less than the lease duration) right after it sent SIGTERM to a child
/// that drains through its grace; the waiter takes over while the old child still runs.
#[test]
fn a_freeze_shorter_than_the_lease_duration_never_lets_the_child_outlive_the_lease() {
    let Some(env) = server_env() else { return };
    let name = env.lease_name("freeze");
    let log = env.path("log");
    let pid_file = env.path("pid");
    let (proxy, proxied) = env.proxied_kubeconfig();

    // The old child notes SIGTERM and goes on draining: only the SIGKILL at the end of the grace stops it.
    let script = format!(
        "echo $$ > {pid}; echo start $(date +%s%N) $MPSYNC_FENCING_TOKEN >> {log}; \
         trap 'echo term $(date +%s%N) >> {log}' TERM; while :; do sleep 0.05; done",
        pid = pid_file.display(),
        log = log.display()
    );
    let mut command = env.mpsync(fast(&["lock", &name, "--identity", "frozen"], &["sh", "-c", &script]));
    command.env("MPSYNC_KUBECONFIG", &proxied);
    let holder = Proc::spawn(command, &env.dir);
    let old_child = read_pid(&pid_file);
    let waiter_log = env.path("waiter-log");
    let waiter = env.spawn(fast(&["lock", &name, "-v"], &["sh", "-c", &stamp_script(&waiter_log, "sleep 0.5")]));
    wait_until("the waiter to wait", || waiter.stderr().contains("waiting"));

    // Renewals stop reaching the server; at the renew deadline mpsync sends SIGTERM; right then it is
    // stopped (SIGSTOP to mpsync alone) for 2.5s.
    proxy.partition();
    wait_for_file(&log, "term");
    let frozen_at = Instant::now();
    holder.signal(Signal::SIGSTOP);
    wait_for_file(&waiter_log, "start");
    let old_alive_when_waiter_started = alive(old_child);
    let remaining = Duration::from_millis(2500).saturating_sub(frozen_at.elapsed());
    std::thread::sleep(remaining);
    holder.signal(Signal::SIGCONT);
    let holder = holder.finish();
    let waiter = waiter.finish();
    eprintln!(
        "old child alive when the waiter's child started ({:?} into a 2.5s freeze): {old_alive_when_waiter_started}\n\
         old: {:?}\nnew: {:?}\nholder exit {:?}, waiter exit {:?}",
        frozen_at.elapsed(),
        read_stamps(&log),
        read_stamps(&waiter_log),
        holder.code,
        waiter.code
    );
    proxy.heal();
    assert!(!old_alive_when_waiter_started, "the old child ran when the waiter's child started");
}

/// Finding 8a (file backend). Reads run on tokio's blocking pool with a timeout, but a read that never
/// returns (here `NAME.json` is a FIFO, so `open` waits for a writer; a hung NFS or FUSE lock directory
/// does the same) keeps its thread, and the runtime waits for every blocking thread when mpsync exits.
/// SIGTERM while waiting is promised to exit 143 (CONTRACT §4); mpsync never exits at all.
#[test]
fn a_stuck_read_of_the_lock_directory_never_blocks_the_exit() {
    let env = TestEnv::file();
    let name = env.lease_name("fifo");
    let record = env.lock_dir().join(format!("{name}.json"));
    nix::unistd::mkfifo(&record, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut lock = env.spawn(fast(&["lock", &name, "-v"], &["true"]));
    // The record is not a regular file: read without blocking, and refused (the lease counts as held).
    wait_until("the record to be refused", || lock.stderr().contains("counts as held"));
    lock.signal(Signal::SIGTERM);
    let status = lock.wait_for(PATIENCE);
    eprintln!("exit status within {PATIENCE:?} of SIGTERM: {status:?}\n{}", lock.stderr());
    // Unblock the stuck open (a writer appears), so the process can go.
    let _ = OpenOptions::new().write(true).custom_flags(nix::libc::O_NONBLOCK).open(&record);
    assert_eq!(status.and_then(|s| s.code()), Some(143), "mpsync did not exit after SIGTERM");
}

/// Finding 8b (CONTRACT §9: "Records are never followed through symlinks"). Reads follow them: with
/// `x.json -> y.json`, `lock x` reads lease y's record as its own (here it continues y's fencing token),
/// then replaces the symlink by its own record.
#[test]
fn file_records_are_never_followed_through_symlinks() {
    let env = TestEnv::file();
    let (x, y) = (env.lease_name("x"), env.lease_name("y"));
    let mut record = TestEnv::foreign_record("", 1);
    record.lease_transitions = Some(41);
    env.put(&y, record);
    let y_before = fs::read(env.lock_dir().join(format!("{y}.json"))).unwrap();
    std::os::unix::fs::symlink(format!("{y}.json"), env.lock_dir().join(format!("{x}.json"))).unwrap();
    let ran = env.path("ran");
    // A record that is a symbolic link is not read through: the lease counts as held, and nothing is written.
    let done = env.run(fast(&["lock", &x, "--no-wait"], &["touch", ran.to_str().unwrap()]));
    done.assert_code(124);
    assert!(!ran.exists());
    assert!(done.stderr.contains("symbolic link"), "{}", done.stderr);
    assert_eq!(fs::read(env.lock_dir().join(format!("{y}.json"))).unwrap(), y_before, "y untouched");
}
