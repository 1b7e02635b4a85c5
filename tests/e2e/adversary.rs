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

use crate::support::proxy::{FaultProxy, kubeconfig_upstream};
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
fn hold_write_lock(env: &TestEnv, name: &str) -> Flock<fs::File> {
    let path = env.lock_dir().join(format!("{name}.lock"));
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path).unwrap();
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
    // The create timed out (unknown), then a read succeeded and showed no record.
    wait_until("the create to time out and a read to succeed", || lock.stderr().contains("works again"));
    drop(write_lock);
    // The create, still waiting for the lock on the blocking pool, now lands.
    wait_until("the blocked create to land", || env.get(&name).is_some());
    let (_, record) = env.get(&name).unwrap();
    eprintln!("record after the lock freed: holder {:?} rv {:?}", record.holder_identity, env.get(&name).unwrap().0);
    let done = lock.finish();
    eprintln!("exit {:?} after {:?}\n{}", done.code, done.elapsed, done.stderr);
    assert!(ran.exists(), "the lease was free (then ours), yet the child never ran\n{}", done.stderr);
    done.assert_code(0);
}

/// Finding 3 (file backend). A write that times out keeps running on tokio's blocking pool. When the
/// campaign gives up (`--timeout`), `settle` reads, finds no record, and releases nothing; the process
/// then waits for its blocking pool at exit, the create lands during that wait, and the process exits
/// 124 ("not acquired") leaving the lease held under its identity for a whole lease duration.
#[test]
#[ignore = "adversary finding 3: a timed-out file write lands after settle, leaving the lease held by a gone process"]
fn a_write_given_up_never_leaves_the_lease_held_after_exit() {
    let env = TestEnv::file();
    let name = env.lease_name("fleak");
    let write_lock = hold_write_lock(&env, &name);
    let ran = env.path("ran");
    let mut lock = env.spawn(
        ["lock", &name, "-v", "--timeout", "2s", "--lease-duration", "15s", "--renew-deadline", "2s"]
            .into_iter()
            .chain(["--retry-period", "500ms", "--grace", "1s", "--", "touch", ran.to_str().unwrap()]),
    );
    wait_until("the campaign to give up", || lock.stderr().contains("not acquired in time"));
    // `settle` reads once (a few milliseconds); then the process waits for its blocking pool.
    std::thread::sleep(Duration::from_millis(1000));
    assert!(lock.wait_for(Duration::ZERO).is_none(), "still alive: waiting for its blocking pool at exit");
    drop(write_lock);
    let done = lock.finish();
    let after_exit = env.get(&name);
    eprintln!("exit {:?}; record after exit: {after_exit:?}\n{}", done.code, done.stderr);
    done.assert_code(124);
    assert!(!ran.exists());
    let holder = after_exit.and_then(|(_, record)| record.holder_identity).unwrap_or_default();
    assert!(holder.is_empty(), "the lease is held by {holder:?}, a process that has exited (124, not acquired)");
}

/// A child script that stamps its start, sleeps `seconds`, and stamps its end, also when it is stopped by
/// SIGTERM (so that the log shows when a child that lost its lease was stopped).
fn until_term_script(log: &Path, seconds: &str) -> String {
    let log = log.display();
    format!(
        "echo start $(date +%s%N) $MPSYNC_FENCING_TOKEN >> {log}; \
         trap 'echo end $(date +%s%N) $MPSYNC_FENCING_TOKEN >> {log}; exit 0' TERM; \
         sleep {seconds} & wait $!; echo end $(date +%s%N) $MPSYNC_FENCING_TOKEN >> {log}"
    )
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
    let yaml = fs::read_to_string(&env.kubeconfig).unwrap();
    let proxy = FaultProxy::start(&kubeconfig_upstream(&yaml).unwrap());
    let proxied = env.path("kubeconfig-proxied");
    fs::write(&proxied, proxy.kubeconfig_through(&yaml)).unwrap();

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

/// Finding 4 (file backend), end to end: see `src/lease_adversary.rs` for the deterministic
/// interleaving. `h` (elect, no watch) holds the lease at resourceVersion >= 12; the record file is
/// removed right after one of h's renewals, and a fresh `x` creates it at once (resourceVersion 1).
///
/// What the README promises h: it counts the lease lost at its next renewal (so its child stops within
/// retry period + grace of x's start), and, having seen the record, it never runs a child beside a live
/// holder. What happens: h's renewal conflicts, its read of x's record is ignored as "older", and h loses
/// only at its renew deadline; then it spins (write, conflict, read, ignored, write, ...) without any
/// backoff until x's renewals bring the counter back to h's number, when its replace lands on x's
/// record (about half the time: it depends on whether h's next call at that moment is the write or the
/// read) and h runs a second child beside x's.
#[test]
#[ignore = "adversary finding 4: resourceVersion reset of the file backend"]
fn file_rv_reset_never_lets_a_holder_that_saw_the_lease_run_beside_the_new_holder() {
    let env = TestEnv::file();
    let name = env.lease_name("rvreset");
    let log = env.path("log");
    let h = env.spawn(fast(&["elect", &name, "-v", "--identity", "h"], &["sh", "-c", &draining_script(&log, "0")]));
    wait_for_file(&log, "start");
    let version = |env: &TestEnv| env.get(&name).map_or(0, |(rv, _)| rv.parse::<u64>().unwrap());
    let deadline = Instant::now() + PATIENCE;
    while version(&env) < 12 {
        assert!(
            Instant::now() < deadline,
            "h's renewals did not reach resourceVersion 12: {:?}\n{}",
            env.get(&name),
            h.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Right after one of h's renewals: x (a process that never saw the record) has a whole retry period
    // to create it before h's next renewal.
    let seen = version(&env);
    wait_until("h to renew once more", || version(&env) > seen);
    let h_version = version(&env);
    env.delete(&name);
    let x_started = Instant::now();
    let x_log = env.path("x-log");
    let x = env.spawn(fast(&["lock", &name, "-v", "--identity", "x"], &["sh", "-c", &until_term_script(&x_log, "9")]));
    wait_for_file(&x_log, "start");
    eprintln!("h renewed to {h_version}; x's child started {:?} after the deletion", x_started.elapsed());

    // h's CPU time while it re-campaigns against x's record.
    wait_until("h to lose the lease", || h.stderr().contains("lost the lease"));
    let cpu = |pid: i32| -> f64 {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0)
            + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
        ticks as f64 / 100.0
    };
    let (cpu_before, wall_before) = (cpu(h.pid()), Instant::now());
    let x = x.finish();
    let (cpu_used, wall) = (cpu(h.pid()) - cpu_before, wall_before.elapsed());
    h.signal(Signal::SIGTERM);
    let h = h.finish();
    let stamps = read_stamps(&log);
    let x_stamps = read_stamps(&x_log);
    let loss = h.stderr.lines().find(|l| l.contains("lost the lease")).unwrap_or("").to_string();
    eprintln!("h's loss: {loss}");
    eprintln!("h's CPU while it re-campaigned: {cpu_used:.2}s in {wall:?}");
    eprintln!("h's children: {stamps:?}\nx's child: {x_stamps:?}\nx's exit: {:?}", x.code);
    let (x_start, x_end) = (x_stamps[0].1, x_stamps.last().unwrap().1);
    let beside: Vec<_> =
        stamps.iter().filter(|(word, at, _)| word == "start" && *at > x_start && *at < x_end).cloned().collect();
    // All three, so the report shows every symptom at once.
    let failures = [
        (!loss.contains("deleted") && !loss.contains("held by"))
            .then(|| format!("h did not count the lease lost at its next renewal: {loss}")),
        (cpu_used > wall.as_secs_f64() / 4.0)
            .then(|| format!("h spun: {cpu_used:.2}s of CPU in {wall:?} while x held the lease")),
        (!beside.is_empty()).then(|| format!("h started a child while x's ran: {beside:?} within {x_stamps:?}")),
    ];
    let failures: Vec<String> = failures.into_iter().flatten().collect();
    assert!(failures.is_empty(), "{failures:#?}");
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
    let body = format!("while [ ! -e {} ]; do sleep 0.05; done", gate.display());
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
    let yaml = fs::read_to_string(&env.kubeconfig).unwrap();
    let proxy = FaultProxy::start(&kubeconfig_upstream(&yaml).unwrap());
    let proxied = env.path("kubeconfig-proxied");
    fs::write(&proxied, proxy.kubeconfig_through(&yaml)).unwrap();

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
    wait_until("the read to time out", || lock.stderr().contains("no answer from the file system"));
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
#[ignore = "adversary finding 8: file records are read through symlinks"]
fn file_records_are_never_followed_through_symlinks() {
    let env = TestEnv::file();
    let (x, y) = (env.lease_name("x"), env.lease_name("y"));
    let mut record = TestEnv::foreign_record("", 1);
    record.lease_transitions = Some(41);
    env.put(&y, record);
    std::os::unix::fs::symlink(format!("{y}.json"), env.lock_dir().join(format!("{x}.json"))).unwrap();
    let token_file = env.path("token");
    let done =
        env.run(fast(&["lock", &x], &["sh", "-c", &format!("echo $MPSYNC_FENCING_TOKEN > {}", token_file.display())]));
    let token = fs::read_to_string(&token_file).unwrap_or_default();
    eprintln!("exit {:?}; token {token:?}\n{}", done.code, done.stderr);
    assert_ne!(token.trim(), "42", "lease x continued lease y's token: its record was read through the symlink");
}
