//! "At most one child runs per lease" under the interleavings that broke it: nested runs and shared
//! identities, a deleted Lease, answers that come late or not at all after the server committed, and watches
//! that fail at once. Each window is reached on purpose, through the real binary.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use nix::sys::signal::Signal;

use crate::support::apiserver::{AfterCommit, WatchFault};
use crate::support::*;

both_backends!(
    a_renew_time_at_the_end_of_time_never_lets_two_children_run,
    nested_runs_never_share_an_identity,
    two_processes_given_one_identity_never_both_run,
    lease_deleted_while_held_never_lets_the_waiter_in_beside_the_child,
    a_lease_edited_by_hand_never_lets_the_waiter_in_beside_the_child,
    a_hand_edit_never_holds_up_the_handoff_after_the_holders_release,
    a_blocked_stderr_never_stops_the_holder_from_stopping_its_child,
    a_frozen_mpsync_never_lets_its_child_outlive_the_lease,
    a_frozen_mpsync_never_lets_what_left_the_childs_group_outlive_the_lease,
    a_frozen_mpsync_never_lets_a_process_whose_main_thread_exited_outlive_the_lease,
    a_frozen_mpsync_never_lets_what_a_member_of_the_group_started_outlive_the_lease,
    a_frozen_mpsync_never_lets_what_it_kept_of_the_job_during_the_grace_outlive_the_lease,
    a_frozen_mpsync_never_lets_a_member_that_leaves_the_group_during_the_grace_outlive_the_lease,
    a_holder_whose_wall_clock_stands_still_still_renews,
);

/// A child of `lock` that itself runs `lock` on another lease, three times at once: each nested mpsync
/// has an identity of its own, so the three inner children run one after the other. The outer run serves
/// a health address from `MPSYNC_HEALTH_ADDR` (found by review, helper-163: the nested runs inherited it,
/// could not listen there, and exited 125 without running their children).
fn nested_runs_never_share_an_identity(env: &TestEnv) {
    let outer = env.lease_name("outer");
    let inner = env.lease_name("inner");
    let log = env.path("log");
    let body = env.path("body.sh");
    // Each inner child also records whether the identity-setting variable leaked into it.
    let leaks = env.path("leaks");
    let inner_body =
        format!("echo \"leak=[$MPSYNC_HOLDER_IDENTITY$MPSYNC_HEALTH_ADDR]\" >> {}; sleep 1", leaks.display());
    fs::write(&body, stamp_script(&log, &inner_body)).unwrap();
    let timings = FAST.join(" ");
    let script = format!(
        "for i in 1 2 3; do \"$MPSYNC_BIN\" lock {inner} {timings} -- sh {body} & done; wait",
        body = body.display()
    );
    let mut command = env.mpsync(fast(&["lock", &outer], &["sh", "-c", &script]));
    // An explicit identity for the outer run: it must not reach the nested runs.
    command.env("MPSYNC_BIN", env!("CARGO_BIN_EXE_mpsync")).env("MPSYNC_HOLDER_IDENTITY", "outer-identity");
    let port = free_port();
    command.env("MPSYNC_HEALTH_ADDR", format!("127.0.0.1:{port}"));
    let done = Proc::spawn(command, &env.dir).finish();
    done.assert_code(0);
    let stamps = read_stamps(&log);
    assert_eq!(stamps.len(), 6, "three inner children ran: {stamps:?}\n{}", done.stderr);
    assert_eq!(max_concurrency(&log), 1, "inner children overlapped: {stamps:?}");
    let tokens: Vec<i64> = stamps.iter().filter(|s| s.0 == "start").filter_map(|s| s.2).collect();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "tokens must increase: {tokens:?}");
    let leaks = fs::read_to_string(&leaks).unwrap();
    assert!(
        leaks.lines().all(|line| line == "leak=[]"),
        "MPSYNC_HOLDER_IDENTITY or _HEALTH_ADDR reached the child: {leaks}"
    );
    assert_eq!(env.holder(&outer).as_deref(), Some(""));
}

/// The same `--identity` given to two processes by mistake (a copied manifest, a StatefulSet using the
/// hostname): the second sees a record under its identity that it did not write, says so, and waits.
fn two_processes_given_one_identity_never_both_run(env: &TestEnv) {
    let name = env.lease_name("twin");
    let log = env.path("log");
    let gate = env.path("gate");
    let first_body = until_exists(&gate);
    let identity = ["--identity", "twin-pod"];
    let first =
        env.spawn(fast(&[&["lock", &name][..], &identity].concat(), &["sh", "-c", &stamp_script(&log, &first_body)]));
    wait_for_file(&log, "start");
    let second =
        env.spawn(fast(&[&["lock", &name][..], &identity].concat(), &["sh", "-c", &stamp_script(&log, "true")]));
    wait_until("the second to report the identity collision", || second.stderr().contains("identity collision"));
    assert_eq!(read_stamps(&log).len(), 1, "the second must not run beside the first");
    fs::write(&gate, "").unwrap();
    first.finish().assert_code(0);
    second.finish().assert_code(0);
    assert_eq!(max_concurrency(&log), 1, "{:?}", read_stamps(&log));
    assert_eq!(read_stamps(&log).len(), 4);
}

/// `kubectl delete lease` (or `rm NAME.json`) while the child runs and a waiter watches: the holder
/// counts the lease lost and stops its child; the waiter counts the vanished lease as held until the
/// holder's observed expiry, so its child starts only after the old one is gone.
fn lease_deleted_while_held_never_lets_the_waiter_in_beside_the_child(env: &TestEnv) {
    let name = env.lease_name("deleted");
    let log = env.path("log");
    let holder = env.spawn(fast(&["lock", &name], &["sh", "-c", &draining_script(&log, "0.9")]));
    wait_for_file(&log, "start");
    let waiter = env.spawn(fast(&["lock", &name, "-v"], &["sh", "-c", &stamp_script(&log, "true")]));
    wait_until("the waiter to wait", || waiter.stderr().contains("waiting"));
    env.delete(&name);
    let holder = holder.finish();
    holder.assert_code(123);
    assert!(holder.stderr.contains("lost the lease"), "{}", holder.stderr);
    waiter.finish().assert_code(0);
    let stamps = read_stamps(&log);
    assert_eq!(stamps.len(), 4, "{stamps:?}");
    assert_eq!(max_concurrency(&log), 1, "the waiter's child ran beside the old one: {stamps:?}");
}

/// Found by review (helper-71): `kubectl patch` of a held lease, right after a renewal, that clears its
/// holder (a "force unlock") or shortens its duration to 1 s, keeping its acquireTime, renewTime and
/// token. The waiter took the lease at once (or a second later) while the holder's child ran on until
/// the holder's next renewal. Now the waiter counts the hold until the expiry it had; the holder of a
/// cleared lease stops its child at its next renewal (123); the holder of a shortened one keeps it.
/// Found by review (helper-163): the same for a force unlock that also removes acquireTime (`kubectl patch
/// -p '{"spec":{"holderIdentity":null,"acquireTime":null}}'`) and for a spec replaced by a bare manifest's
/// (`kubectl replace`, `helm upgrade --force`): the waiter took the lease at once.
fn a_lease_edited_by_hand_never_lets_the_waiter_in_beside_the_child(env: &TestEnv) {
    // Renewals 2 s apart leave the edit a window (and a renewal refused for the edit, 409, a second try
    // within the renew deadline); the waiter's wait (9 s) outlasts the renew deadline and grace (6 + 1 s).
    let timings = ["--lease-duration", "9s", "--renew-deadline", "6s", "--retry-period", "2s", "--grace", "1s"];
    for edit in ["cleared", "shortened", "unlocked", "replaced"] {
        let clear = edit != "shortened";
        let name = env.lease_name(edit);
        let log = env.path(&env.lease_name("log"));
        let with = |head: &[&str], tail: Vec<String>| -> Vec<String> {
            let mut args: Vec<String> = head.iter().map(|s| s.to_string()).collect();
            args.extend(timings.iter().map(|s| s.to_string()));
            args.push("--".to_string());
            args.extend(tail);
            args
        };
        let child = |script: String| vec!["sh".to_string(), "-c".to_string(), script];
        let holder =
            env.spawn(with(&["lock", &name, "--identity", "holder", "-v"], child(draining_script(&log, "0.5"))));
        wait_for_file(&log, "start");
        let waiter = env.spawn(with(&["lock", &name, "--identity", "waiter", "-v"], child(stamp_script(&log, "true"))));
        wait_until("the waiter to wait", || waiter.stderr().contains("waiting"));
        let renewed = |spec: &LeaseSpec| spec.renew_time.clone();
        let before = env.get(&name).map(|(_, spec)| renewed(&spec));
        wait_until("a renewal", || env.get(&name).map(|(_, spec)| renewed(&spec)) != before);
        env.edit(&name, |spec| match edit {
            "cleared" => spec.holder_identity = Some(String::new()),
            "shortened" => spec.lease_duration_seconds = Some(1),
            "unlocked" => (spec.holder_identity, spec.acquire_time) = (None, None),
            _ => *spec = LeaseSpec { lease_duration_seconds: Some(15), ..LeaseSpec::default() },
        });
        let holder = match clear {
            true => {
                let holder = holder.finish();
                holder.assert_code(123);
                holder
            }
            false => {
                // Two renewals after the edit (4 s, past the shortened duration): the waiter still waits.
                for _ in 0..2 {
                    let before = env.get(&name).map(|(_, spec)| renewed(&spec));
                    wait_until("a renewal", || env.get(&name).map(|(_, spec)| renewed(&spec)) != before);
                }
                let ran = read_stamps(&log);
                holder.signal(Signal::SIGTERM);
                let holder = holder.finish();
                assert_eq!(ran.len(), 1, "the waiter's child ran: {ran:?}\nholder:\n{}", holder.stderr);
                holder
            }
        };
        let waiter = waiter.finish();
        waiter.assert_code(0);
        let stamps = read_stamps(&log);
        assert_eq!(stamps.len(), 4, "{stamps:?}");
        assert_eq!(
            max_concurrency(&log),
            1,
            "{edit}: the waiter's child ran beside the holder's: {stamps:?}\nholder:\n{}\nwaiter:\n{}",
            holder.stderr,
            waiter.stderr
        );
    }
}

/// `lock NAME -- sh -c SCRIPT` (lease 6 s, renew deadline 2 s, grace 3 s), once SCRIPT wrote its worker's
/// pid to `pid_file`, sent SIGTERM, and seen to reap the shell (which dies of it): mpsync in its grace,
/// and the worker's pid.
fn stopped_in_its_grace(env: &TestEnv, name: &str, script: &str, pid_file: &std::path::Path) -> (Proc, i32) {
    let timings = ["--lease-duration", "6s", "--renew-deadline", "2s", "--grace", "3s", "--retry-period", "500ms"];
    let mut args = vec!["lock", name, "-vv"];
    args.extend(timings);
    args.extend(["--", "sh", "-c", script]);
    let lock = env.spawn(args);
    let worker = read_pid(pid_file);
    lock.signal(Signal::SIGTERM);
    wait_until("the shell to die of the signal", || lock.stderr().contains("child exited"));
    (lock, worker)
}

/// Found by review (helper-73): mpsync frozen during the grace of a stop, once the main child died of the
/// signal. `timeout` (a group of its own, handed to init when the shell died) and its worker, which
/// ignores TERM, were counted as the job and waited for, but the guard knew nothing of them: at its
/// deadline it killed the group and what was below mpsync, and the worker ran on past the lease. Now
/// what mpsync keeps of the job outside its group, the guard kills too; also a guard started again after
/// the first was killed (helper-75: the new one was not told).
fn a_frozen_mpsync_never_lets_what_it_kept_of_the_job_during_the_grace_outlive_the_lease(env: &TestEnv) {
    for restart_guard in [false, true] {
        let name = env.lease_name("frozen-kept");
        let pid_file = env.path(&env.lease_name("worker.pid"));
        let timeout_file = env.path(&env.lease_name("timeout.pid"));
        let script = format!(
            "timeout 300 sh -c 'trap \"\" TERM; echo $PPID > {}; echo $$ > {}; exec sleep 300'; echo after",
            timeout_file.display(),
            pid_file.display()
        );
        // SIGTERM: the shell dies of it at once; `timeout` and the worker are kept, for up to --grace.
        let (lock, worker) = stopped_in_its_grace(env, &name, &script, &pid_file);
        if restart_guard {
            let stderr = lock.stderr();
            let at = stderr.find("guard=").expect("the guard's pid is logged") + "guard=".len();
            let guard: i32 = stderr[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap();
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(guard), Signal::SIGKILL);
            wait_until("a new guard", || lock.stderr().contains("guard process started"));
        }
        lock.signal(Signal::SIGSTOP);
        // The guard acts at the renew deadline and half the margin (4.5 s after the last renewal).
        let killed = within_patience(|| !alive(worker));
        lock.signal(Signal::SIGKILL);
        for pid in [worker, read_pid(&timeout_file)] {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
        assert!(
            killed,
            "the worker (pid {worker}) outlived the lease, mpsync frozen (guard restarted: {restart_guard}):\n{}",
            lock.stderr()
        );
    }
}

/// Found by review (helper-74): a hold whose duration was edited by hand (lengthened to 600 s, or
/// shortened to 1 s), renewed on by its holder with its own duration, then released as usual: the waiter
/// counted the hold until the edited (or the old) expiry after the release. Now the holder's renewal is a
/// renewal, and its release ends the hold. With a 60 s lease, a wait till either expiry would outlast the
/// test's patience.
fn a_hand_edit_never_holds_up_the_handoff_after_the_holders_release(env: &TestEnv) {
    let timings = ["--lease-duration", "60s", "--renew-deadline", "40s", "--retry-period", "1s"];
    for duration in [600, 1] {
        let name = env.lease_name("edited-then-released");
        let log = env.path(&env.lease_name("log"));
        let gate = env.path(&env.lease_name("gate"));
        let body = until_exists(&gate);
        let mut args = vec!["lock", name.as_str(), "--identity", "holder"];
        args.extend(timings);
        args.extend(["--", "sh", "-c"]);
        let script = stamp_script(&log, &body);
        args.push(&script);
        let holder = env.spawn(args);
        wait_for_file(&log, "start");
        let waiter =
            env.spawn(["lock", &name, "--identity", "waiter", "-v", "--", "sh", "-c", &stamp_script(&log, "true")]);
        wait_until("the waiter to wait", || waiter.stderr().contains("waiting"));
        env.edit(&name, |spec| spec.lease_duration_seconds = Some(duration));
        // The holder's next renewal (after a 409, a read) puts its own 60 s back.
        wait_until("the holder's renewal", || {
            env.get(&name).is_some_and(|(_, spec)| spec.lease_duration_seconds == Some(60))
        });
        fs::write(&gate, "").unwrap();
        holder.finish().assert_code(0);
        waiter.finish().assert_code(0);
        assert_eq!(max_concurrency(&log), 1, "{:?}", read_stamps(&log));
    }
}

/// Found by review (helper-76): a background member of the child's group that ignores TERM, kept as the
/// job was ended (the shell died of the signal), leaves the group (setsid) once mpsync is frozen during
/// the grace. The guard, told only of what was outside the group, knew nothing of it. Now it is told of
/// every process kept.
fn a_frozen_mpsync_never_lets_a_member_that_leaves_the_group_during_the_grace_outlive_the_lease(env: &TestEnv) {
    let name = env.lease_name("kept-setsid");
    let pid_file = env.path(&env.lease_name("worker.pid"));
    let go = env.path(&env.lease_name("go"));
    // util-linux setsid does not fork when it is not a group leader: the worker keeps its pid.
    let script = format!(
        "sh -c 'trap \"\" TERM; echo $$ > {pid}; while [ ! -e {go} ]; do sleep 0.05; done; exec setsid sleep 300' & \
         wait; echo after",
        pid = pid_file.display(),
        go = go.display()
    );
    let (lock, worker) = stopped_in_its_grace(env, &name, &script, &pid_file);
    wait_until("the job to be ended", || lock.stderr().contains("stopping them"));
    // Some of mpsync's looks at the job during the grace, before the freeze (not needed for the test to
    // pass: without the fix, they let the guard learn only of what was outside the group then).
    std::thread::sleep(Duration::from_millis(700));
    lock.signal(Signal::SIGSTOP);
    fs::write(&go, "").unwrap();
    let session_of = |pid: i32| {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(3)?.parse::<i32>().ok())
    };
    let left = within_patience(|| session_of(worker) == Some(worker) || !alive(worker));
    let killed = within_patience(|| !alive(worker));
    lock.signal(Signal::SIGKILL);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker), Signal::SIGKILL);
    assert!(left, "the worker never left its group");
    assert!(killed, "the worker (pid {worker}) outlived the lease, mpsync frozen:\n{}", lock.stderr());
}

// The rest needs the test server's fault injection.

fn server_env() -> Option<TestEnv> {
    if TestEnv::real_cluster() {
        eprintln!("SKIPPED: needs the test server's fault injection");
        return None;
    }
    Some(TestEnv::kube())
}

/// A watch answered with an ERROR event every time (after a BOOKMARK too: found by review, helper-161, a
/// bookmark counted as a healthy watch and the next was made at once, in a loop), or closed at once: the
/// waiter's requests stay at a bounded rate (backoff), and it still takes over when the lease frees.
#[test]
fn failing_watches_are_retried_at_a_bounded_rate() {
    let Some(env) = server_env() else { return };
    let server = env.server().unwrap();
    let faults =
        [WatchFault::Error(500), WatchFault::Error(410), WatchFault::EndAtOnce, WatchFault::BookmarkThenError(500)];
    for fault in faults {
        let name = env.lease_name("badwatch");
        env.put(&name, TestEnv::foreign_record("someone", 60));
        server.set_watch_fault(Some(fault));
        let waiter = env.spawn(fast(&["lock", &name, "-v"], &["true"]));
        wait_until("the waiter to wait", || waiter.stderr().contains("waiting"));
        server.reset_counts();
        // A rate is measured over time: four seconds of the fault.
        std::thread::sleep(Duration::from_secs(4));
        let requests: usize = server.counts().values().sum();
        eprintln!("{fault:?}: {requests} requests in 4 s");
        // Backoff doubles from 100 ms to the retry period (500 ms): about a list and a watch every 375 ms.
        // A watch loop without backoff makes thousands.
        assert!(requests <= 80, "{fault:?}: {requests} requests in 4 s: {:?}", server.counts());
        server.set_watch_fault(None);
        env.put(&name, TestEnv::foreign_record("", 1));
        waiter.finish().assert_code(0);
    }
}

/// Every watch closed at once, without an event (a proxy that cuts streams): a waiter still sees the holder's
/// release by reading again, within a few retry periods, not at the hold's expiry (five minutes here).
#[test]
fn a_release_under_watches_that_end_at_once_is_seen_long_before_the_expiry() {
    let Some(env) = server_env() else { return };
    let server = env.server().unwrap();
    let name = env.lease_name("endatonce");
    env.put(&name, TestEnv::foreign_record("someone", 300));
    server.set_watch_fault(Some(WatchFault::EndAtOnce));
    let waiter = env.spawn(fast(&["lock", &name, "-v"], &["true"]));
    wait_until("the waiter to wait", || waiter.stderr().contains("waiting"));
    assert!(server.wait_for_watch_count(0, PATIENCE));
    env.release_as_client_go(&name);
    // `finish` allows PATIENCE (30 s), a tenth of the hold.
    waiter.finish().assert_code(0);
    server.set_watch_fault(None);
}

/// Found by review (helper-163): a release committed, then answered 409 or 429 (a proxy that sent it twice):
/// the lease ended free, but mpsync said it was not given back and would expire after its duration.
#[test]
fn a_release_committed_then_refused_is_said_to_be_a_release() {
    let Some(env) = server_env() else { return };
    let server = env.server().unwrap();
    for code in [409u16, 429] {
        let name = env.lease_name("release-refused");
        let (gate, started) = (env.path(&format!("gate-{code}")), env.path(&format!("started-{code}")));
        let script = format!("touch {}; {}", started.display(), until_exists(&gate));
        // No renewal while the fault is armed: a long retry period.
        let timings = ["--lease-duration", "30s", "--renew-deadline", "20s", "--retry-period", "10s"];
        let holder = env.spawn(["lock", &name, "-v"].into_iter().chain(timings).chain(["--", "sh", "-c", &script]));
        wait_until("the child to start", || started.exists());
        server.after_commit(1, AfterCommit::Fail(code));
        fs::write(&gate, "").unwrap();
        let done = holder.finish();
        done.assert_code(0);
        assert_eq!(env.holder(&name).as_deref(), Some(""), "{code}: the release landed\n{}", done.stderr);
        assert!(done.stderr.contains("released the lease"), "{code}: said not to be given back:\n{}", done.stderr);
        assert!(!done.stderr.contains("not given back"), "{code}:\n{}", done.stderr);
    }
}

/// Found by review (helper-172): a lease made free by hand (a force unlock keeps the holder's last
/// renewTime) while its child ends: the holder's release is refused (409), and a read shows the free record
/// with its own renewTime; it said "released the lease" of a lease it never gave back.
#[test]
fn a_lease_made_free_by_hand_is_not_said_to_be_released() {
    let Some(env) = server_env() else { return };
    let name = env.lease_name("freed-by-hand");
    let (gate, started) = (env.path("gate"), env.path("started"));
    let script = format!("touch {}; {}", started.display(), until_exists(&gate));
    // No renewal before the child ends: a long retry period.
    let timings = ["--lease-duration", "30s", "--renew-deadline", "20s", "--retry-period", "10s"];
    let holder = env.spawn(["lock", &name, "-v"].into_iter().chain(timings).chain(["--", "sh", "-c", &script]));
    wait_until("the child to start", || started.exists());
    env.edit(&name, |spec| spec.holder_identity = None);
    fs::write(&gate, "").unwrap();
    let done = holder.finish();
    assert!(
        !done.stderr.contains("released the lease"),
        "said released of a lease it never gave back:\n{}",
        done.stderr
    );
}

/// The acquiring write is committed, then its answer is lost (the connection cut, or a 500 after the
/// commit): a read settles that it was applied, and the lease is used, then released, never left held by
/// a process that has gone. Found by review (helper-163): the same for a 409 or 429 after the commit (a
/// proxy or gateway that sent the write again), on a new Lease and on a free one: mpsync took its own
/// record for another's under its identity (a collision), exited 124 and left the lease held in its name.
#[test]
fn an_acquisition_answered_after_a_cut_connection_is_used_and_released() {
    let Some(env) = server_env() else { return };
    let server = env.server().unwrap();
    let refused = [AfterCommit::Fail(409), AfterCommit::Fail(429)];
    let cases = [AfterCommit::Drop, AfterCommit::Fail(500), AfterCommit::Fail(504)].map(|how| (how, false));
    for (how, free_record) in
        cases.into_iter().chain(refused.map(|how| (how, false))).chain(refused.map(|how| (how, true)))
    {
        // --no-wait: the record the read shows is ours, so the child runs (not "held by another").
        let name = env.lease_name("cut");
        if free_record {
            // Released by client-go: the acquisition is a replace.
            env.put(&name, TestEnv::foreign_record("", 1));
        }
        server.after_commit(1, how);
        let ran = env.path(&format!("ran-{name}"));
        let done = env.run(fast(&["lock", &name, "--no-wait"], &["touch", ran.to_str().unwrap()]));
        done.assert_code(0);
        assert!(ran.exists(), "{how:?}: the child must run\n{}", done.stderr);
        assert!(
            !done.stderr.contains("identity collision"),
            "{how:?}: its own write taken for another's\n{}",
            done.stderr
        );
        assert_eq!(env.holder(&name).as_deref(), Some(""), "{how:?}: released after the run");
        assert_eq!(server.after_commit_pending(), 0);
    }
    // --slots 2: the slot whose acquisition was cut is used (no other acquisition is sent while its outcome
    // is unknown), and no slot stays held.
    let name = env.lease_name("cutslots");
    server.after_commit(1, AfterCommit::Drop);
    let slot_file = env.path("slot");
    let script = format!("echo $MPSYNC_SLOT > {}", slot_file.display());
    env.run(fast(&["lock", &name, "--slots", "2"], &["sh", "-c", &script])).assert_code(0);
    let used: usize = fs::read_to_string(&slot_file).unwrap().trim().parse().unwrap();
    let other = format!("{name}-{}", 1 - used);
    assert_eq!(env.get(&other), None, "only the cut acquisition was sent: {other} was never written");
    for slot in 0..2 {
        let holder = env.holder(&format!("{name}-{slot}"));
        assert!(holder.as_deref().is_none_or(str::is_empty), "slot {slot} left held by {holder:?}");
    }
}

/// Found by review (helper-176): `lock --timeout` whose acquisition is committed and then answered 409 (a
/// proxy's retry of it), and whose deadline passes before anything shows what became of it (a lost race's 409
/// waits a retry period for the winner's event, and the watch lags): it exited 124 and left the lease held in
/// its name for its duration, as the give-back read nothing. It reads, and gives its own record back. The
/// acquisition comes when another's 3 s record expires; the deadline, at 5 s, within the 4 s retry period.
#[test]
fn a_timeout_before_a_refused_committed_acquisition_is_seen_gives_the_lease_back() {
    let Some(env) = server_env() else { return };
    let server = env.server().unwrap();
    let name = env.lease_name("refused-timeout");
    env.put(&name, TestEnv::foreign_record("h", 3));
    server.set_watch_lag(Duration::from_secs(10));
    server.after_commit(1, AfterCommit::Fail(409));
    let ran = env.path("ran");
    let timings = ["--lease-duration", "20s", "--renew-deadline", "10s", "--retry-period", "4s", "--timeout", "5s"];
    let args = ["lock", &name, "-v"].into_iter().chain(timings).chain(["--", "touch", ran.to_str().unwrap()]);
    let done = env.run(args);
    server.set_watch_lag(Duration::ZERO);
    eprintln!("exit {:?}\n{}", done.code, done.stderr);
    assert_eq!(server.after_commit_pending(), 0, "the acquisition was answered 409\n{}", done.stderr);
    match done.code {
        Some(124) => assert!(!ran.exists(), "the child ran, yet exit 124\n{}", done.stderr),
        _ => {
            done.assert_code(0);
        }
    }
    let holder = env.holder(&name);
    assert!(holder.as_deref().is_none_or(str::is_empty), "left held by {holder:?}\n{}", done.stderr);
}

/// Found by review (helper-176): a release committed and then answered 409 (a proxy's retry of it; answers
/// come 300 ms late, commits and events at once), while a waiter takes the lease on the release's event
/// (and runs `true` and gives it back) before the holder's read after the 409: the holder said "the lease
/// was not given back ... it expires after its duration" of a lease it gave back. It says it released it.
#[test]
fn a_release_answered_409_after_the_waiter_took_over_is_said_released() {
    let Some(env) = server_env() else { return };
    let server = env.server().unwrap();
    let name = env.lease_name("release-conflict");
    let gate = env.path("gate");
    let started = env.path("started");
    let timings = ["--lease-duration", "40s", "--renew-deadline", "30s", "--retry-period", "10s"];
    let body = format!("touch {}; {}", started.display(), until_exists(&gate));
    let holder_args = ["lock", &name, "--identity", "h", "-v"].into_iter().chain(timings);
    let holder = env.spawn(holder_args.chain(["--", "sh", "-c", &body]));
    wait_until("the child to start", || started.exists());
    let waiter = env.spawn(["lock", &name, "--identity", "w", "-v"].into_iter().chain(timings).chain(["--", "true"]));
    wait_until("the waiter to wait", || waiter.stderr().contains("waiting"));
    wait_until("the waiter's watch", || server.watch_count() >= 1);
    server.set_latency(Duration::from_millis(300));
    server.after_commit_of("h", 1, AfterCommit::Fail(409));
    fs::write(&gate, "").unwrap();
    let (held, waited) = (holder.finish(), waiter.finish());
    server.set_latency(Duration::ZERO);
    held.assert_code(0);
    waited.assert_code(0);
    assert!(
        held.stderr.contains("released the lease") && !held.stderr.contains("not given back"),
        "the release landed (the waiter took the lease on it), yet the holder said otherwise:\n{}\nwaiter:\n{}",
        held.stderr,
        waited.stderr
    );
}

/// SIGTERM while the acquiring write's answer is still on its way: mpsync exits 143 without starting the
/// child, and gives back the lease that write took.
#[test]
fn sigterm_while_the_acquisition_is_unanswered_gives_the_lease_back() {
    let Some(env) = server_env() else { return };
    let server = env.server().unwrap();
    let name = env.lease_name("termcut");
    server.after_commit(1, AfterCommit::Delay(Duration::from_secs(2)));
    let ran = env.path("ran");
    let lock = env.spawn(["lock", &name, "--", "touch", ran.to_str().unwrap()]);
    wait_until("the create to be committed", || env.holder(&name).is_some_and(|h| !h.is_empty()));
    lock.signal(Signal::SIGTERM);
    let done = lock.finish();
    done.assert_code(143);
    assert!(!ran.exists(), "the child must not start after SIGTERM");
    assert_eq!(env.holder(&name).as_deref(), Some(""), "the lease taken by the unanswered write is given back");
}

/// The late-answer window on purpose, with timings where an answer can come later than the safety margin
/// (lease 8s, renew deadline 6s, grace 1s: a margin of 1s; a call may take 3s). The holder took over from
/// someone else, so it watches the lease. Its next renewal is committed and seen on its watch at once,
/// but the server holds the answer back 2.5s, and from then on nothing the holder sends reaches the
/// server. The holder must count from the renewal's send, not its answer: its child (which uses its
/// grace to drain) is gone before the waiter, which saw the commit, can take over.
#[test]
fn a_late_renewal_answer_never_lets_the_old_child_outlive_the_lease() {
    let Some(env) = server_env() else { return };
    let server = env.server().unwrap();
    let name = env.lease_name("late");
    let log = env.path("log");
    let timings = ["--lease-duration", "8s", "--renew-deadline", "6s", "--retry-period", "1s", "--grace", "1s"];
    let (proxy, proxied) = env.proxied_kubeconfig();

    // Held by someone else for a second: the holder-to-be waits for it, and so watches the lease.
    env.put(&name, TestEnv::foreign_record("someone", 1));
    let holder_args = ["lock", &name, "--identity", "late-holder"];
    let mut command =
        env.mpsync(holder_args.iter().copied().chain(timings).chain(["--", "sh", "-c", &draining_script(&log, "0.9")]));
    command.env("MPSYNC_KUBECONFIG", &proxied);
    let holder = Proc::spawn(command, &env.dir);
    wait_for_file(&log, "start");
    let waiter = env.spawn(["lock", &name, "-v"].iter().copied().chain(timings).chain([
        "--",
        "sh",
        "-c",
        &stamp_script(&log, "true"),
    ]));
    wait_until("the waiter to wait", || waiter.stderr().contains("waiting"));

    // The next renewal is committed (and seen by both watches), its answer held back 2.5s; after it,
    // nothing the holder sends reaches the server.
    let updates = server.count("update");
    server.after_commit_of("late-holder", 1, AfterCommit::Delay(Duration::from_millis(2500)));
    wait_until("a renewal to be committed", || server.count("update") > updates);
    proxy.delay_requests(Duration::from_secs(3600));

    let holder = holder.finish();
    holder.assert_code(123);
    waiter.finish().assert_code(0);
    let stamps = read_stamps(&log);
    assert_eq!(stamps.len(), 4, "{stamps:?}");
    assert_eq!(max_concurrency(&log), 1, "the old child outlived the lease: {stamps:?}\n{}", holder.stderr);
    drop(proxy);
}

/// A stderr nobody reads (a pipe whose reader hung) fills up; the holder's log lines must not block it:
/// it still stops its child when the lease is taken, and exits.
fn a_blocked_stderr_never_stops_the_holder_from_stopping_its_child(env: &TestEnv) {
    let name = env.lease_name("blocked");
    let pid_file = env.path("child-pid");
    // The child fills the pipe (and then blocks on it, which is its own business).
    let script = format!("echo $$ > {}; head -c 200000 /dev/zero >&2; sleep 600", pid_file.display());
    let mut command = env.mpsync(fast(&["lock", &name, "-vv"], &["sh", "-c", &script]));
    let (reader, writer) = std::io::pipe().unwrap();
    command.stdout(std::process::Stdio::null()).stderr(writer);
    let mut holder = command.spawn().unwrap();
    let child = read_pid(&pid_file);
    wait_until("the lease to be held", || env.holder(&name).is_some_and(|h| !h.is_empty()));
    env.put(&name, TestEnv::foreign_record("thief", 60));
    let deadline = std::time::Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = holder.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "the holder hangs on its stderr");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(123));
    assert!(!alive(child), "the child was stopped");
    drop(reader);
}

/// mpsync itself frozen (`kill -STOP`, which it cannot catch) while its child works: nothing renews, and
/// mpsync cannot stop the child at the renew deadline. Its guard process can: it kills the child's group at
/// the renew deadline plus the grace plus half the remaining margin, before anyone else can take over.
fn a_frozen_mpsync_never_lets_its_child_outlive_the_lease(env: &TestEnv) {
    // The child says it is alive every 20 ms.
    frozen_holder(env, "frozen", |alive| format!("while :; do echo alive $(date +%s%N) >> {alive}; sleep 0.02; done"));
}

/// The same, with the work in processes that left the child's group: `setsid` (a session of its own) and
/// `timeout` (a group of its own). The guard kills the whole tree below mpsync, not only the group.
fn a_frozen_mpsync_never_lets_what_left_the_childs_group_outlive_the_lease(env: &TestEnv) {
    frozen_holder(env, "frozen-tree", |alive| {
        let work = format!("while :; do echo alive $(date +%s%N) >> {alive}; sleep 0.02; done");
        format!("setsid sh -c '{work}' & timeout 300 sh -c '{work}' & wait")
    });
}

/// The same, with the work in a thread of a process (in a session of its own) whose main thread has
/// exited: /proc shows it as a zombie, yet it runs, and it must go with the job.
fn a_frozen_mpsync_never_lets_a_process_whose_main_thread_exited_outlive_the_lease(env: &TestEnv) {
    let worker = env.path("worker.py");
    let code = "import ctypes, sys, threading, time\n\
                def work():\n    \
                    while True:\n        \
                        with open(sys.argv[1], 'a') as f: f.write('alive %d\\n' % time.time_ns())\n        \
                        time.sleep(0.02)\n\
                threading.Thread(target=work).start()\n\
                ctypes.CDLL(None).pthread_exit(None)\n";
    fs::write(&worker, code).unwrap();
    let worker = worker.display().to_string();
    frozen_holder(env, "frozen-thread", |alive| format!("setsid python3 {worker} {alive} & wait"));
}

/// The same, with the work started in a session of its own by a member of the child's group that has left
/// mpsync's tree (its parent, a subshell, exited): the guard walks from the group's members too.
fn a_frozen_mpsync_never_lets_what_a_member_of_the_group_started_outlive_the_lease(env: &TestEnv) {
    frozen_holder(env, "frozen-member", |alive| {
        let work = format!("while :; do echo alive \\$(date +%s%N) >> {alive}; sleep 0.02; done");
        format!("(sh -c \"setsid sh -c '{work}' & wait\" &); exec sleep 1000")
    });
}

/// Found by review: the holder's wall clock stands still (an LD_PRELOAD shim freezes CLOCK_REALTIME; the
/// monotonic clock, which decides, runs on). A renewal that copied the clock into `renewTime` wrote the
/// record already stored: the API server answers such a write 200 without a new version or an event, the
/// holder counted it as a renewal, and the waiter, which saw no change, took the lease after its duration
/// while the holder's child ran. Every renewal now changes the record, so the waiter waits until the
/// holder, stopped, gives the lease back.
fn a_holder_whose_wall_clock_stands_still_still_renews(env: &TestEnv) {
    let shim = build_shim(env, "freezewall");
    let name = env.lease_name("frozenwall");
    let log = env.path("log");
    let mut command = env.mpsync(fast(&["lock", &name, "-v"], &["sh", "-c", &draining_script(&log, "0.5")]));
    command.env("LD_PRELOAD", &shim);
    let mut holder = Proc::spawn(command, &env.dir);
    holder.wait_for_file(&log, "start");
    let waiter = env.spawn(fast(&["lock", &name, "-v"], &["sh", "-c", &stamp_script(&log, "true")]));
    wait_until("the waiter to wait", || waiter.stderr().contains("waiting"));
    // A whole lease duration (4 s) and more: the waiter must not take the lease the holder renews.
    let waiting = Instant::now();
    wait_until("a lease duration and a half", || waiting.elapsed() > Duration::from_secs(6));
    assert_eq!(read_stamps(&log).len(), 1, "the waiter's child started beside the holder's: {:?}", read_stamps(&log));
    holder.signal(Signal::SIGTERM);
    let held = holder.finish();
    assert!(!held.stderr.contains("lost"), "the holder lost the lease:\n{}", held.stderr);
    waiter.finish().assert_code(0);
    assert_eq!(max_concurrency(&log), 1, "two children ran at once: {:?}", read_stamps(&log));
}

/// `kill -STOP` the holder, but not in the few milliseconds of a file-backend write: stopped with its lock
/// directory locked, it would keep every writer of the directory out until continued (README: a signal
/// nobody can catch), which is not what these tests are about. Retried until it stops between writes.
fn freeze_between_writes(env: &TestEnv, holder: &Proc) {
    loop {
        holder.signal(Signal::SIGSTOP);
        wait_until("the holder to stop", || pty::state(holder.pid()) == Some('T'));
        if !holds_flock(holder.pid(), &env.lock_dir()) {
            return;
        }
        holder.signal(Signal::SIGCONT);
        wait_until("the holder to run again", || pty::state(holder.pid()) != Some('T'));
        std::thread::sleep(Duration::from_millis(3));
    }
}

fn frozen_holder(env: &TestEnv, prefix: &str, script: impl Fn(&str) -> String) {
    let name = env.lease_name(prefix);
    let alive = env.path("alive");
    let log = env.path("log");
    let script = script(&alive.display().to_string());
    let mut holder = env.spawn(fast(&["lock", &name], &["sh", "-c", &script]));
    holder.wait_for_file(&alive, "alive");
    let waiter = env.spawn(fast(&["lock", &name, "-v"], &["sh", "-c", &stamp_script(&log, "true")]));
    wait_until("the waiter to wait", || waiter.stderr().contains("waiting"));
    freeze_between_writes(env, &holder);
    let waited = waiter.finish();
    waited.assert_code(0);
    let started = read_stamps(&log).iter().find(|s| s.0 == "start").map(|s| s.1).expect("the waiter's child ran");
    let last_alive = read_stamps(&alive).iter().map(|s| s.1).max().unwrap();
    assert!(
        last_alive < started,
        "the frozen holder's child ran {:?} after the next holder's started",
        Duration::from_nanos((last_alive - started) as u64)
    );
    holder.signal(Signal::SIGCONT);
    let done = holder.finish();
    assert!(matches!(done.code, Some(123) | Some(137)), "{:?}\n{}", done.code, done.stderr);
    let after = read_stamps(&alive).len();
    let quiet = Instant::now();
    wait_until("a second without the child's work", || quiet.elapsed() > Duration::from_secs(1));
    assert_eq!(read_stamps(&alive).len(), after, "the holder's work outlived mpsync");
}

/// Found by review (helper-74): the Lease deleted and created again, free (`kubectl replace --force`, a
/// manifest put back), while the holder's child runs and a waiter polls (no watch permission): the
/// waiter saw the hold and the new, free record, never the absence, and took it at once beside the
/// child. A record with another uid under a hold now counts as a deletion: held a full lease duration.
#[test]
fn a_lease_made_again_free_under_a_hold_never_lets_a_polling_waiter_in_beside_the_child() {
    let Some(env) = server_env() else { return };
    let server = env.server().unwrap();
    server.forbid("watch");
    let name = env.lease_name("made-again");
    let log = env.path("log");
    let timings = ["--lease-duration", "8s", "--renew-deadline", "5s", "--retry-period", "2s", "--grace", "1s"];
    let with = |identity: &str, script: String| -> Vec<String> {
        let mut args: Vec<String> = ["lock", &name, "--identity", identity].map(String::from).to_vec();
        args.extend(timings.map(String::from));
        args.extend(["--".to_string(), "sh".to_string(), "-c".to_string(), script]);
        args
    };
    let holder = env.spawn(with("holder", draining_script(&log, "0.3")));
    wait_for_file(&log, "start");
    let mut waiter_args = with("waiter", stamp_script(&log, "true"));
    waiter_args.insert(4, "-v".to_string());
    let waiter = env.spawn(waiter_args);
    wait_until("the waiter to wait", || waiter.stderr().contains("waiting"));
    env.delete(&name);
    env.put(&name, LeaseSpec { holder_identity: Some(String::new()), ..LeaseSpec::default() });
    let holder = holder.finish();
    holder.assert_code(123);
    waiter.finish().assert_code(0);
    let stamps = read_stamps(&log);
    assert_eq!(max_concurrency(&log), 1, "the waiter's child ran beside the holder's: {stamps:?}");
}

/// Found by review (helper-80): a hand edit set the holder's `renewTime` to the last microsecond a
/// timestamp holds (the API server accepts it). Nothing is past it, so each renewal wrote the record
/// already stored: the API server answers such a write with the same resourceVersion and no event (the
/// file store's version moves, but its spec does not), while the holder counted it as a renewal. A
/// waiter saw no change for a lease duration and ran its child beside the holder's, about a second.
fn a_renew_time_at_the_end_of_time_never_lets_two_children_run(env: &TestEnv) {
    let name = env.lease_name("eot");
    let log = env.path("log");
    // The holder's child drains for 0.5 s after SIGTERM, within its grace.
    let holder =
        env.spawn(fast(&["lock", &name, "-v", "--identity", "holder"], &["sh", "-c", &draining_script(&log, "0.5")]));
    wait_for_file(&log, "start");
    let end: k8s_openapi::jiff::Timestamp = "9999-12-30T22:00:00.999999Z".parse().unwrap();
    env.edit(&name, |spec| spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(end)));
    let waiter =
        env.spawn(fast(&["lock", &name, "-v", "--identity", "waiter"], &["sh", "-c", &stamp_script(&log, "true")]));
    wait_until("the waiter to wait", || waiter.stderr().contains("waiting"));
    // Renewals that others see, at least 500 ms apart (the retry period): nine of them outlast the 4 s
    // lease duration, and the waiter still waits.
    let renewed = || env.get(&name).and_then(|(_, spec)| spec.renew_time);
    for _ in 0..9 {
        let before = renewed();
        wait_until("a renewal that changes the record", || renewed() != before);
    }
    assert_eq!(read_stamps(&log).len(), 1, "the waiter ran beside the holder's child: {:?}", read_stamps(&log));
    holder.signal(Signal::SIGTERM);
    holder.finish().assert_code(0);
    waiter.finish().assert_code(0);
    assert_eq!(max_concurrency(&log), 1, "two children ran at once on one lease: {:?}", read_stamps(&log));
}

/// A holder's child that records its pid and drains 0.3 s on SIGTERM, and a waiter's child that notes the
/// state of that child when it starts (a zombie, the child of a frozen mpsync, is dead).
struct HolderWatched {
    holder_script: String,
    waiter_script: String,
    seen: std::path::PathBuf,
}

impl HolderWatched {
    fn new(env: &TestEnv, log: &std::path::Path) -> HolderWatched {
        let (pid, seen) = (env.path("pid"), env.path("seen"));
        let check = format!(
            "echo \"[$(awk '{{print $3}}' /proc/$(cat {pid})/stat 2>/dev/null)]\" > {seen}",
            pid = pid.display(),
            seen = seen.display()
        );
        HolderWatched {
            holder_script: format!("echo $$ > {}; {}", pid.display(), draining_script(log, "0.3")),
            waiter_script: stamp_script(log, &check),
            seen,
        }
    }

    /// Whether the waiter's child has noted the holder's child's state.
    fn noted(&self) -> bool {
        fs::read_to_string(&self.seen).is_ok_and(|s| s.ends_with('\n'))
    }

    /// The state noted, and whether it is dead.
    fn holder_was_dead(&self) -> (String, bool) {
        let state = fs::read_to_string(&self.seen).unwrap();
        let dead = ["[]", "[Z]", "[X]"].contains(&state.trim());
        (state, dead)
    }
}

/// An etcd restored from a snapshot under a holder and a waiter: the stored record, and the
/// resourceVersion counter, go back to the snapshot's, and versions the two had seen are handed out again
/// for other records. The restore undid the holder's renewals of the last two seconds (the renew deadline): the
/// holder counts its hold from the renewal restored (a waiter whose watch lagged may have seen that record and
/// none since: found by review, rv289), so it loses it unless a renewal lands first; the waiter's child runs
/// once the holder's is done, never beside it, with writes at a bounded rate.
#[test]
fn an_etcd_restore_under_a_holder_and_a_waiter_never_lets_two_children_run() {
    etcd_restore_under_a_holder_and_a_waiter(false);
}

/// The same restore, with the holder's mpsync frozen as it happens (its guard stops the child): the waiter,
/// which knew a version newer than any the restored server holds, takes the lease after the restored
/// record's expiry. Before, every read after its writes' conflicts looked stale to it, and it waited on a
/// free lease for ever.
#[test]
fn an_etcd_restore_never_leaves_a_waiter_stuck_on_a_lease_whose_holder_is_gone() {
    etcd_restore_under_a_holder_and_a_waiter(true);
}

fn etcd_restore_under_a_holder_and_a_waiter(freeze_holder: bool) {
    let Some(env) = server_env() else { return };
    let server = env.server().unwrap();
    let name = env.lease_name("restored");
    let log = env.path("log");
    let watched = HolderWatched::new(&env, &log);
    let mut holder =
        env.spawn(fast(&["lock", &name, "-v", "--identity", "holder"], &["sh", "-c", &watched.holder_script]));
    wait_for_file(&log, "start");
    let snapshot = server.snapshot();
    let waiter = env.spawn(fast(&["lock", &name, "-v", "--identity", "waiter"], &["sh", "-c", &watched.waiter_script]));
    wait_until("the waiter to wait", || waiter.stderr().contains("waiting"));
    // Renewals that both have seen: four versions past the snapshot's.
    let renewed = || env.get(&name).and_then(|(_, spec)| spec.renew_time);
    for _ in 0..4 {
        let before = renewed();
        wait_until("a renewal", || renewed() != before);
    }
    if freeze_holder {
        holder.signal(Signal::SIGSTOP);
    }
    server.reset_counts();
    server.restore(&snapshot);
    if freeze_holder {
        // The guard ends the child; the waiter takes over after the restored record's expiry.
        let waiter = waiter.finish();
        waiter.assert_code(0);
        holder.signal(Signal::SIGKILL);
    } else {
        // The holder holds on (a renewal landed before its hold, counted from the renewal restored, ran out) or
        // loses it (123); four lease durations at most.
        let since = Instant::now();
        wait_until("the holder to lose the lease, or four lease durations", || {
            since.elapsed() > Duration::from_secs(16) || holder.wait_for(Duration::ZERO).is_some()
        });
        holder.signal(Signal::SIGTERM);
        let code = holder.finish().code;
        assert!(matches!(code, Some(0 | 123)), "the holder exited {code:?}");
        waiter.finish().assert_code(0);
    }
    // Backoff: a retry period (500 ms) between writes that conflict, at most.
    let writes = server.count("update") + server.count("create");
    assert!(writes <= 80, "{writes} writes after the restore: {:?}", server.counts());
    let stamps = read_stamps(&log);
    let (state, dead) = watched.holder_was_dead();
    assert!(dead, "the holder's child was alive ({state}) as the waiter's ran");
    if !freeze_holder {
        assert_eq!(max_concurrency(&log), 1, "two children ran at once after the restore: {stamps:?}");
    }
}

/// Found by review (rv289): `lock` after a restore, with a waiter W whose watch lags (a busy API server's watch cache):
/// W reads the holder H's record R at ts, and H's renewals of the next 3.5 s never reach it. etcd is restored to a
/// snapshot taken at ts (R again, at the version W knows) and H's renewals fail (503); H reads the restored record
/// ("the lease's resourceVersion went back") and is then cut off. W, which saw nothing but R, counts R's expiry from
/// ts and starts its child at ts+6. H went on from its hold as it was, counted from the renewal undone (ts+3.5), and
/// stopped its child only at ts+7.5, beside W's. Counted from the renewal restored (R's, at ts), H's hold is past its
/// renew deadline (4 s) when H reads it, and its child is stopped before W's starts.
#[test]
fn a_holder_that_reads_a_restore_counts_from_the_renewal_restored_beside_a_waiter_whose_watch_lags() {
    let Some(env) = server_env() else { return };
    let server = env.server().unwrap();
    let name = env.lease_name("restore-lagged");
    let log = env.path("log");
    let timing = ["--lease-duration", "6s", "--renew-deadline", "4s", "--retry-period", "1s"];
    let child = draining_script(&log, "0");
    let (proxy, proxied) = env.proxied_kubeconfig();
    let mut command = env.mpsync([&["lock", &name, "-v"][..], &timing, &["--", "sh", "-c", &child]].concat());
    command.env("MPSYNC_KUBECONFIG", &proxied);
    let holder = Proc::spawn(command, &env.dir);
    wait_for_file(&log, "start");
    server.set_watch_lag(Duration::from_secs(120));
    let gets = server.count("get");
    let waiter = env.spawn([&["lock", &name][..], &timing, &["--", "sh", "-c", &child]].concat());
    wait_until("the waiter to read the lease", || server.count("get") > gets);
    let snapshot = server.snapshot();
    let ts = Instant::now();
    let (known, _) = env.get(&name).unwrap();
    wait_until("the holder to renew for 3.5 s", || ts.elapsed() >= Duration::from_millis(3_500));
    assert_ne!(env.get(&name).unwrap().0, known, "the holder renewed the lease");
    server.fail_next_on(&format!("update:{name}"), 1_000_000, 503);
    server.restore(&snapshot);
    wait_until("the holder to read the restored record", || holder.stderr().contains("resourceVersion went back"));
    proxy.partition();
    server.fail_next_on(&format!("update:{name}"), 0, 503);
    wait_until("both children to have run", || read_stamps(&log).len() >= 3);
    let stamps = read_stamps(&log);
    server.set_watch_lag(Duration::ZERO);
    proxy.heal();
    for process in [&holder, &waiter] {
        process.signal(Signal::SIGKILL);
    }
    eprintln!("stamps: {stamps:?}\nholder:\n{}\nwaiter:\n{}", holder.stderr(), waiter.stderr());
    assert_eq!(max_concurrency(&log), 1, "the waiter's child ran beside the holder's: {stamps:?}");
}

/// Found by review (rv291): a healthy holder's `renewTime` edited an hour back by hand (a tool, `kubectl edit`) looks
/// like an older record of the same acquisition; counted from "that renewal", the holder lost the lease at once and
/// stopped its child. A time it never wrote is an edit every process saw as a change when it came: the hold goes on.
#[test]
fn a_hand_edit_that_moves_renew_time_back_costs_the_holder_nothing() {
    let env = TestEnv::kube();
    let name = env.lease_name("edit-back");
    let timing = ["--lease-duration", "8s", "--renew-deadline", "5s", "--retry-period", "500ms"];
    let (mut holder, go) = holder_as_me_with(&env, &name, &timing);
    env.edit(&name, |spec| {
        let back = spec.renew_time.as_ref().unwrap().0 - k8s_openapi::jiff::SignedDuration::from_hours(1);
        spec.renew_time = Some(MicroTime(back));
    });
    // Renewals after the edit, past its renew deadline (5 s) counted from the hour before.
    let renewed = || env.get(&name).and_then(|(_, spec)| spec.renew_time);
    for _ in 0..4 {
        let before = renewed();
        wait_until("a renewal after the edit", || renewed() != before || holder.wait_for(Duration::ZERO).is_some());
    }
    assert_child_ran_to_its_end(&mut holder, &go);
}

/// Found by review (helper-107): an etcd restored to a snapshot in which the lease was free (released before the holder took it):
/// the waiter must not start its child while the holder's still runs (the holder learns of the restore
/// only at its next renewal, and then stops its child within its grace).
#[test]
fn a_restore_to_a_free_lease_never_lets_the_waiter_in_beside_the_holders_child() {
    restore_to_a_free_or_absent_lease(false);
}

/// Found by review (helper-107): the same, with a snapshot taken before the Lease existed.
#[test]
fn a_restore_to_before_the_lease_existed_never_lets_the_waiter_in_beside_the_holders_child() {
    restore_to_a_free_or_absent_lease(true);
}

fn restore_to_a_free_or_absent_lease(absent: bool) {
    let Some(env) = server_env() else { return };
    let server = env.server().unwrap();
    let name = env.lease_name("restored-free");
    if !absent {
        env.run(fast(&["lock", &name], &["true"])).assert_code(0);
    }
    let snapshot = server.snapshot();
    let log = env.path("log");
    let watched = HolderWatched::new(&env, &log);
    let holder = env.spawn(fast(&["lock", &name, "-v", "--identity", "holder"], &["sh", "-c", &watched.holder_script]));
    wait_for_file(&log, "start");
    let waiter = env.spawn(fast(&["lock", &name, "-v", "--identity", "waiter"], &["sh", "-c", &watched.waiter_script]));
    wait_until("the waiter to wait", || waiter.stderr().contains("waiting"));
    let renewed = || env.get(&name).and_then(|(_, spec)| spec.renew_time);
    for _ in 0..4 {
        let before = renewed();
        wait_until("a renewal", || renewed() != before);
    }
    server.restore(&snapshot);
    wait_until("the waiter's child", || watched.noted());
    holder.signal(Signal::SIGTERM);
    let holder = holder.finish();
    let waiter = waiter.finish();
    let (state, dead) = watched.holder_was_dead();
    let stamps = read_stamps(&log);
    assert!(
        dead && max_concurrency(&log) == 1,
        "the holder's child was alive ({state}) as the waiter's ran: {stamps:?}\nholder:\n{}\nwaiter:\n{}",
        holder.stderr,
        waiter.stderr
    );
}

/// Found by review (helper-107): a restore without `--bump-revision` hands versions out again. A waiter
/// that knew the holder's record at version K, and whose watch (resumed from K) shows nothing at or below
/// K, saw nothing of the restore; the holder's renewal after it brought its restored record to K again,
/// and the waiter's write based on K (its expiry counted from the record it saw before the restore)
/// landed on the holder's live hold, beside its child. Another's hold that expired by what was seen is
/// now read once more before it is taken. Here the holder's mpsync is frozen after that renewal, so that
/// its guard, not a later renewal the waiter would see, ends its child.
#[test]
fn a_version_handed_out_again_after_a_restore_never_lets_a_waiter_overwrite_a_live_hold() {
    let Some(env) = server_env() else { return };
    let server = env.server().unwrap();
    let name = env.lease_name("reused-version");
    let timings = ["--lease-duration", "10s", "--renew-deadline", "8s", "--retry-period", "3s"];
    let log = env.path("log");
    let watched = HolderWatched::new(&env, &log);
    let with = |identity: &'static str, script: String| -> Vec<String> {
        let mut args: Vec<String> = ["lock", &name, "-v", "--identity", identity].map(String::from).to_vec();
        args.extend(timings.map(String::from));
        args.extend(["--".to_string(), "sh".to_string(), "-c".to_string(), script]);
        args
    };
    let holder = env.spawn(with("holder", watched.holder_script.clone()));
    wait_for_file(&log, "start");
    let snapshot = server.snapshot();
    // Versions handed out after the snapshot, beyond the holder's renewals: other Leases.
    let leases = format!("/apis/coordination.k8s.io/v1/namespaces/{}/leases", env.namespace);
    let mut made = 0;
    let mut make = |n: u64| {
        for _ in 0..n {
            made += 1;
            let body = format!(r#"{{"metadata":{{"name":"other-{made}"}},"spec":{{}}}}"#);
            let (status, answer) = server.call("POST", &leases, Some(&body));
            assert_eq!(status, 201, "{answer}");
        }
    };
    make(10);
    let waiter = env.spawn(with("waiter", watched.waiter_script.clone()));
    wait_until("the waiter to wait", || waiter.stderr().contains("waiting"));
    let version = || env.get(&name).unwrap().0.parse::<u64>().unwrap();
    let before = version();
    wait_until("a renewal", || version() != before);
    let known = version();
    // Right after a renewal the waiter saw (K): the restore, and versions up to K - 1 handed out again,
    // so that the holder's next renewal (its first after the restore: a conflict, a read, a write on
    // the restored record) gets K.
    server.restore(&snapshot);
    make(known - 1 - server.resource_version());
    wait_until("the holder's renewal at K", || version() == known);
    holder.signal(Signal::SIGSTOP);
    wait_until("the waiter's child", || watched.noted());
    holder.signal(Signal::SIGKILL);
    waiter.finish().assert_code(0);
    let (state, dead) = watched.holder_was_dead();
    assert!(dead, "the holder's child was alive ({state}) as the waiter's ran");
}

/// Found by the property model: an etcd restored to a snapshot in which the lease was released (before the
/// holder took it), and then the Lease annotated by hand, so that the restored release comes back at a version
/// past any the waiter knew. The versions show nothing; the release's token, lower than the hold's, does: no
/// holder's release lowers its token, so the waiter waits out the hold it saw, and its child never starts
/// beside the holder's (before, it took the "release" at once).
#[test]
fn a_restored_release_that_a_hand_edit_brings_past_the_known_version_never_lets_the_waiter_in_beside_the_child() {
    restored_past_the_known_version(false);
}

/// Found by review (rv249): the same with a snapshot of a short job's hold (token 1, `leaseDurationSeconds:
/// 1`) before the holder's (token 2, 10 s): the waiter took it for a new holder's, waited its 1 s, and ran
/// beside the holder's child. A record whose token went back is the past, whatever it shows: the hold seen
/// before is waited out (a lease duration from then, or its own if longer).
#[test]
fn a_restored_older_hold_with_a_shorter_duration_never_lets_the_waiter_in_beside_the_child() {
    restored_past_the_known_version(true);
}

/// A snapshot (a release, or a short job's hold), a holder and a waiter; right after a renewal both are frozen,
/// etcd restored and the Lease brought past every version known (`TestEnv::versions_past`); the waiter runs
/// again. The holder stays frozen, so that its guard, not a renewal's conflict, ends its child.
fn restored_past_the_known_version(short_hold: bool) {
    let Some(env) = server_env() else { return };
    let server = env.server().unwrap();
    let name = env.lease_name("restored-past");
    let restored = match short_hold {
        true => {
            let short = LeaseSpec {
                holder_identity: Some("short-job".into()),
                lease_duration_seconds: Some(1),
                acquire_time: Some(now_micros()),
                renew_time: Some(now_micros()),
                lease_transitions: Some(1),
                ..Default::default()
            };
            env.put(&name, short);
            "short-job"
        }
        false => {
            env.run(fast(&["lock", &name], &["true"])).assert_code(0);
            ""
        }
    };
    let snapshot = server.snapshot();
    let log = env.path("log");
    let watched = HolderWatched::new(&env, &log);
    let holder = env.spawn(restore_timings(&["lock", &name, "-v", "--identity", "holder"], &watched.holder_script));
    wait_for_file(&log, "start");
    let waiter = env.spawn(restore_timings(&["lock", &name, "-v", "--identity", "waiter"], &watched.waiter_script));
    wait_until("the waiter to wait", || waiter.stderr().contains("waiting"));
    let version = || env.get(&name).unwrap().0.parse::<u64>().unwrap();
    let before = version();
    wait_until("a renewal", || version() != before);
    // Right after a renewal, both frozen: the holder's next renewal is a retry period away.
    holder.signal(Signal::SIGSTOP);
    waiter.signal(Signal::SIGSTOP);
    let known = version();
    server.restore(&snapshot);
    env.versions_past(&name, known);
    assert_eq!(env.holder(&name).as_deref(), Some(restored), "the record restored");
    waiter.signal(Signal::SIGCONT);
    wait_until("the waiter's child", || watched.noted());
    holder.signal(Signal::SIGKILL);
    let waiter = waiter.finish();
    waiter.assert_code(0);
    let (state, dead) = watched.holder_was_dead();
    assert!(dead, "the holder's child was alive ({state}) as the waiter's ran\nwaiter:\n{}", waiter.stderr);
}

/// Found by review (rv249): an `elect` replica ("first") frozen while it held (its guard ends its child);
/// "second" takes over, and first, running again, campaigns. etcd is restored to first's old hold (token 1)
/// and the Lease annotated, past any version first knew: first took its "own earlier hold" again at once
/// (with a new token), beside second's child. A hold of ours that ended is not ours to take again once a record
/// shows a token below one seen since. Second is frozen, so that its guard ends its child.
#[test]
fn an_elect_replicas_restored_old_hold_brought_past_the_known_version_is_not_taken_beside_the_takeover() {
    let Some(env) = server_env() else { return };
    let server = env.server().unwrap();
    let name = env.lease_name("restored-own-past");
    let stamps = env.path("alive");
    let script = format!(
        "trap 'sleep 0.3; echo $$ $(date +%s%N) >> {a}; exit 0' TERM; while :; do echo $$ $(date +%s%N) >> {a}; sleep 0.05; done",
        a = stamps.display()
    );
    // The pids that stamped, in the order of their first stamp.
    let pids = || {
        let mut order: Vec<String> = Vec::new();
        for (pid, _, _) in read_stamps(&stamps) {
            if !order.contains(&pid) {
                order.push(pid);
            }
        }
        order
    };
    let first = env.spawn(restore_timings(&["elect", &name, "-v", "--identity", "first"], &script));
    wait_until("the first replica's child", || pids().len() == 1);
    let snapshot = server.snapshot();
    let second = env.spawn(restore_timings(&["elect", &name, "-v", "--identity", "second"], &script));
    wait_until("the second replica to wait", || second.stderr().contains("waiting"));
    first.signal(Signal::SIGSTOP);
    wait_until("the second replica to take over", || env.holder(&name).as_deref() == Some("second"));
    wait_until("the second replica's child", || pids().len() == 2);
    first.signal(Signal::SIGCONT);
    wait_until("the first replica to wait on the second's hold", || first.stderr().contains("waiting"));
    let version = || env.get(&name).unwrap().0.parse::<u64>().unwrap();
    let before = version();
    wait_until("a renewal by the second replica", || version() != before);
    second.signal(Signal::SIGSTOP);
    first.signal(Signal::SIGSTOP);
    let known = version();
    server.restore(&snapshot);
    env.versions_past(&name, known);
    assert_eq!(env.holder(&name).as_deref(), Some("first"));
    first.signal(Signal::SIGCONT);
    let second_child = pids()[1].parse::<i32>().unwrap();
    wait_until("the second's guard to end its child", || !alive(second_child));
    second.signal(Signal::SIGKILL);
    first.signal(Signal::SIGTERM);
    let first = first.finish();
    let _ = second.finish();
    // Each child's span, from its first stamp to its last: no two overlap.
    let mut spans: std::collections::BTreeMap<String, (u128, u128)> = Default::default();
    for (pid, nanos, _) in read_stamps(&stamps) {
        let span = spans.entry(pid).or_insert((nanos, nanos));
        (span.0, span.1) = (span.0.min(nanos), span.1.max(nanos));
    }
    let mut spans: Vec<(u128, u128)> = spans.into_values().collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "two children ran at once: {spans:?}\nfirst:\n{}", first.stderr);
    }
}

/// Found by review (rv251): a renewal of the hold seen restored, at the very token seen last.
/// "short-job" (a client-go elector, 2 s) holds at token 1; the snapshot is taken; short-job renews, and the
/// waiter (10 s) starts and reads that renewal. The waiter is cut off (a network partition). short-job
/// releases (client-go: the token kept); "holder" (mpsync, 10 s) takes the lease at token 2 and runs its
/// child; right after a renewal it is frozen too, so that its guard, not a conflict, ends its child. etcd is
/// restored to the snapshot and the Lease brought past every version known (`versions_past`). The waiter
/// reconnects and reads short-job's hold at token 1 — the token it saw last, so `token_floor` says nothing —
/// but with a renewTime OLDER than the one it read for that very acquisition (no renewal lowers it: this is
/// the past, and the waiter knew a version newer than the one restored). It counts the record as a fresh
/// renewal of a 2 s hold, and takes the lease ~2 s later, while the holder's child (guard: 8 s after its last
/// renewal) still runs. After a restore that it can see, a waiter must wait a lease duration (README).
#[test]
fn a_restored_older_renewal_of_the_hold_seen_is_waited_out_as_the_past() {
    let Some(env) = server_env() else { return };
    let server = env.server().unwrap();
    let name = env.lease_name("restored-renewal");
    let acquired = now_micros();
    let hold = |renew: MicroTime| LeaseSpec {
        holder_identity: Some("short-job".into()),
        lease_duration_seconds: Some(2),
        acquire_time: Some(acquired.clone()),
        renew_time: Some(renew),
        lease_transitions: Some(1),
        ..Default::default()
    };
    env.put(&name, hold(acquired.clone()));
    let snapshot = server.snapshot();
    // short-job's next renewal (a later renewTime, same acquisition and token).
    env.put(&name, hold(now_micros()));
    let log = env.path("log");
    let watched = HolderWatched::new(&env, &log);
    // The waiter reaches the server through a fault proxy: cut off (its connections blackholed, nothing
    // buffered for it to read later), it misses the release and the takeover.
    let (proxy, proxied) = env.proxied_kubeconfig();
    let mut command =
        env.mpsync(restore_timings(&["lock", &name, "-v", "--identity", "waiter"], &watched.waiter_script));
    command.env("MPSYNC_KUBECONFIG", &proxied);
    let waiter = Proc::spawn(command, &env.dir);
    wait_until("the waiter to wait", || waiter.stderr().contains("waiting"));
    proxy.partition();
    // short-job releases as client-go does (token kept); the holder takes the lease (token 2).
    env.release_as_client_go(&name);
    let holder = env.spawn(restore_timings(&["lock", &name, "-v", "--identity", "holder"], &watched.holder_script));
    wait_for_file(&log, "start");
    assert_eq!(env.get(&name).unwrap().1.lease_transitions, Some(2), "the holder's token");
    let version = || env.get(&name).unwrap().0.parse::<u64>().unwrap();
    let before = version();
    wait_until("a renewal", || version() != before);
    holder.signal(Signal::SIGSTOP);
    let known = version();
    server.restore(&snapshot);
    env.versions_past(&name, known);
    assert_eq!(env.holder(&name).as_deref(), Some("short-job"), "the record restored");
    proxy.heal();
    proxy.drop_connections();
    wait_until("the waiter's child", || watched.noted());
    holder.signal(Signal::SIGKILL);
    let waiter = waiter.finish();
    waiter.assert_code(0);
    let (state, dead) = watched.holder_was_dead();
    assert!(dead, "the holder's child was alive ({state}) as the waiter's ran\nwaiter:\n{}", waiter.stderr);
}

/// Found by review (rv251): a Lease deleted and made again is no restore. A waiter (lease duration 60 s) sees "old"'s hold at token 5. The Lease is deleted (the waiter sees the
/// deletion on its watch) and made again by a client-go elector that never saw the old one (token 0, as the
/// README allows: "Deleting the Lease resets the fencing tokens for processes that never saw the old
/// record"); it renews a few times and releases. The old hold had expired long before; the lease is free.
/// The waiter takes it at once, and logs no restore (the first rule of the past, by the token alone, took
/// every change of the new Lease for the past: a warning per renewal, and a whole lease duration, 60 s, of
/// wait after each, the release included). The past is told only within one Lease (its uid).
#[test]
fn a_lease_deleted_and_made_again_with_reset_tokens_is_no_restore() {
    let Some(env) = server_env() else { return };
    let name = env.lease_name("made-again");
    let mut old = TestEnv::foreign_record("old", 1);
    old.lease_transitions = Some(5);
    env.put(&name, old);
    let log = env.path("log");
    let waiter = env.spawn([
        "lock",
        &name,
        "-v",
        "--identity",
        "waiter",
        "--lease-duration",
        "60s",
        "--renew-deadline",
        "40s",
        "--retry-period",
        "2s",
        "--",
        "sh",
        "-c",
        &stamp_script(&log, "true"),
    ]);
    wait_until("the waiter to wait", || waiter.stderr().contains("waiting"));
    env.delete(&name);
    wait_until("the deletion", || env.get(&name).is_none());
    // Made again by a client-go elector that never saw the old record: token 0, 1 s.
    env.put(&name, TestEnv::foreign_record("new", 1));
    for _ in 0..3 {
        let before = env.get(&name).unwrap().0;
        env.edit(&name, |spec| spec.renew_time = Some(now_micros()));
        assert_ne!(env.get(&name).unwrap().0, before);
    }
    env.release_as_client_go(&name);
    let released = Instant::now();
    let ran = {
        let deadline = released + Duration::from_secs(20);
        loop {
            if fs::read_to_string(&log).unwrap_or_default().contains("start") {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let stderr = waiter.stderr();
    let warnings = stderr.matches("went back to an older record").count();
    waiter.signal(Signal::SIGKILL);
    assert!(ran, "the free lease was not taken within 20 s of its release (lease duration 60 s)\nwaiter:\n{stderr}");
    assert_eq!(warnings, 0, "a Lease made again was logged as etcd's past {warnings} times\nwaiter:\n{stderr}");
}

/// Found by review (rv253): after a restore that the waiter saw (etcd restored to a release at token 2, brought past every version
/// it knew; it had seen "old"'s hold at token 5), the lease goes on from the restored record: "new", an
/// mpsync started after the restore (as the README asks of a restore: restart the processes), takes it at
/// token 3, renews, and releases well after the waiter's wait for the past (10 s) has ended. Every record of
/// that lineage is below the token the waiter saw, and each one was "the past" again: a WARN "the lease went
/// back to an older record" at every renewal, and a whole lease duration (10 s) of wait after the release,
/// where the release hands the lease over at once. The past is waited out once; after that the restored
/// record's lineage is the lease's (as a Lease made again is: rv251's fix, by uid only). It lasted
/// until tokens passed the one seen before: with a snapshot a day old on a busy lease, a day's handoffs.
#[test]
fn after_a_restore_is_waited_out_the_restored_lineage_is_not_the_past_at_every_write() {
    let Some(env) = server_env() else { return };
    let server = env.server().unwrap();
    let name = env.lease_name("restored-lineage");
    // The snapshot: a release at token 2, as client-go writes it.
    let mut earlier = TestEnv::foreign_record("earlier", 1);
    earlier.lease_transitions = Some(2);
    env.put(&name, earlier);
    env.release_as_client_go(&name);
    let snapshot = server.snapshot();
    // Later: "old" holds at token 5 (10 s), renewed by the test while the waiter waits.
    let acquired = now_micros();
    let old = |renew: MicroTime| LeaseSpec {
        holder_identity: Some("old".into()),
        lease_duration_seconds: Some(10),
        acquire_time: Some(acquired.clone()),
        renew_time: Some(renew),
        lease_transitions: Some(5),
        ..Default::default()
    };
    env.put(&name, old(now_micros()));
    let log = env.path("log");
    let waiter =
        env.spawn(restore_timings(&["lock", &name, "-v", "--identity", "waiter"], &stamp_script(&log, "true")));
    wait_until("the waiter to wait", || waiter.stderr().contains("waiting"));
    env.put(&name, old(now_micros()));
    let version = || env.get(&name).unwrap().0.parse::<u64>().unwrap();
    waiter.signal(Signal::SIGSTOP);
    let known = version();
    server.restore(&snapshot);
    env.versions_past(&name, known);
    assert_eq!(env.holder(&name).as_deref(), Some(""), "the release restored");
    let restored = Instant::now();
    waiter.signal(Signal::SIGCONT);
    // "new" never saw token 5: it takes the restored release at once (token 3), and holds for 16 s.
    let gate = env.path("gate");
    let new = env.spawn(restore_timings(&["lock", &name, "-v", "--identity", "new"], &until_exists(&gate)));
    wait_until("new's hold", || env.holder(&name).as_deref() == Some("new"));
    assert_eq!(env.get(&name).unwrap().1.lease_transitions, Some(3), "new's token");
    // The waiter's wait for the past (max(10 s, old's 10 s) from the restore) ends within this hold.
    while restored.elapsed() < Duration::from_secs(16) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!fs::read_to_string(&log).unwrap_or_default().contains("start"), "the waiter ran beside new");
    fs::write(&gate, "").unwrap();
    new.finish().assert_code(0);
    let took = started_within(&log, Duration::from_secs(20));
    let stderr = waiter.stderr();
    waiter.signal(Signal::SIGKILL);
    let warnings = stderr.matches("went back to an older record").count();
    assert!(
        took.is_some_and(|took| took < Duration::from_secs(5)),
        "the released lease was taken {took:?} after new's release (at once expected; lease duration 10 s, \
         {warnings} warnings of the past)\nwaiter:\n{stderr}"
    );
    assert!(warnings <= 2, "the restored lineage was logged as the past {warnings} times\nwaiter:\n{stderr}");
}

/// Wait until `log` holds "start", at most `limit`; how long that took, or `None`.
fn started_within(log: &std::path::Path, limit: Duration) -> Option<Duration> {
    let from = Instant::now();
    while from.elapsed() < limit {
        if fs::read_to_string(log).unwrap_or_default().contains("start") {
            return Some(from.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// `mpsync HEAD... --lease-duration 10s --renew-deadline 8s --retry-period 3s -- sh -c SCRIPT`.
fn restore_timings(head: &[&str], script: &str) -> Vec<String> {
    let timings = ["--lease-duration", "10s", "--renew-deadline", "8s", "--retry-period", "3s"];
    let mut args: Vec<String> = head.iter().chain(&timings).map(|arg| arg.to_string()).collect();
    args.extend(["--", "sh", "-c", script].map(String::from));
    args
}

/// Found by review (helper-108): an `elect` replica frozen while it held (its guard ends its child), the other replica takes
/// over, and then etcd is restored to a snapshot taken right after the frozen replica's last renewal. When
/// the frozen replica runs again, the record it reads is exactly the one it knew (its own hold, same
/// version): nothing tells it that versions went back, and its own old hold was "ours to take again at
/// once": its child ran beside the other's for half a second, under the same token. A hold that lapsed
/// now keeps this process from acquiring for a lease duration.
#[test]
fn a_restore_to_a_frozen_replicas_own_last_record_never_lets_two_children_run() {
    let Some(env) = server_env() else { return };
    let server = env.server().unwrap();
    let name = env.lease_name("restored-own");
    let alive = env.path("alive");
    // A child that stamps while it runs, and takes half a second to shut down (within its grace, 1 s).
    let script = format!(
        "trap 'sleep 0.5; echo $$ $(date +%s%N) >> {a}; exit 0' TERM; while :; do echo $$ $(date +%s%N) >> {a}; sleep 0.05; done",
        a = alive.display()
    );
    let first = env.spawn(fast(&["elect", &name, "-v", "--identity", "first"], &["sh", "-c", &script]));
    wait_until("the first replica's child", || !read_stamps(&alive).is_empty());
    let second = env.spawn(fast(&["elect", &name, "-v", "--identity", "second"], &["sh", "-c", &script]));
    wait_until("the second replica to wait", || second.stderr().contains("waiting"));
    first.signal(Signal::SIGSTOP);
    wait_until("the first replica to stop", || pty::state(first.pid()) == Some('T'));
    // The store as the frozen replica left it (its last renewal, or a later one it sent).
    let snapshot = server.snapshot();
    let holder = || env.get(&name).and_then(|(_, spec)| spec.holder_identity);
    wait_until("the second replica to take over", || holder().as_deref() == Some("second"));
    let pids = || stamping_pids(&alive);
    wait_until("the second replica's child", || pids().len() == 2);
    server.restore(&snapshot);
    first.signal(Signal::SIGCONT);
    // Three lease durations after the restore: one replica's child runs again (either may hold).
    let restored = Instant::now();
    wait_until("three lease durations", || restored.elapsed() > Duration::from_secs(12));
    assert!(pids().len() >= 2);
    first.signal(Signal::SIGTERM);
    second.signal(Signal::SIGTERM);
    let (first, second) = (first.finish(), second.finish());
    // Each child's span of `alive` stamps; no two may overlap.
    assert_no_two_ran_at_once(&alive, || format!("first:\n{}\nsecond:\n{}", first.stderr, second.stderr));
}

/// Found by review (helper-124): `lock` frozen past its renew deadline, another takes over, etcd is restored to
/// the frozen holder's own last record, and the frozen `lock` runs again: its new give-back
/// (`give_back_lost`) compares-and-swaps a release onto the restored record at the version it knew.
/// A third process waiting must not start its child while the takeover's child (whose holder etcd
/// forgot) still runs.
#[test]
fn a_frozen_locks_give_back_after_a_restore_never_lets_a_third_in_beside_the_takeover() {
    let Some(env) = server_env() else { return };
    let server = env.server().unwrap();
    let name = env.lease_name("giveback-restored");
    let alive = env.path("alive");
    let script = format!(
        "trap 'sleep 0.5; echo $$ $(date +%s%N) >> {a}; exit 0' TERM; while :; do echo $$ $(date +%s%N) >> {a}; sleep 0.05; done",
        a = alive.display()
    );
    let pids = || stamping_pids(&alive);
    let first = env.spawn(fast(&["lock", &name, "-v", "--identity", "first"], &["sh", "-c", &script]));
    wait_until("the first child", || pids().len() == 1);
    let second = env.spawn(fast(&["lock", &name, "-v", "--identity", "second"], &["sh", "-c", &script]));
    let third = env.spawn(fast(&["lock", &name, "-v", "--identity", "third"], &["sh", "-c", &script]));
    wait_until("the others to wait", || second.stderr().contains("waiting") && third.stderr().contains("waiting"));
    first.signal(Signal::SIGSTOP);
    wait_until("the first to stop", || pty::state(first.pid()) == Some('T'));
    let snapshot = server.snapshot();
    let snap_rv: u64 = env.get(&name).unwrap().0.parse().unwrap();
    let holder = || env.get(&name).and_then(|(_, spec)| spec.holder_identity);
    wait_until("a takeover", || matches!(holder().as_deref(), Some("second" | "third")));
    wait_until("the takeover's child", || pids().len() == 2);
    // The takeover renews a few times, so that the version the give-back gets is not the one it holds.
    wait_until("renewals", || env.get(&name).unwrap().0.parse::<u64>().unwrap() > snap_rv + 3);
    server.restore(&snapshot);
    first.signal(Signal::SIGCONT);
    let first = first.finish();
    let restored = Instant::now();
    wait_until("three lease durations", || restored.elapsed() > Duration::from_secs(12));
    second.signal(Signal::SIGTERM);
    third.signal(Signal::SIGTERM);
    let (second, third) = (second.finish(), third.finish());
    assert_no_two_ran_at_once(&alive, || {
        format!("first ({:?}):\n{}\nsecond:\n{}\nthird:\n{}", first.status, first.stderr, second.stderr, third.stderr)
    });
}

/// Found by review (helper-124): as above, but the next process is a fresh one, started when the frozen `lock` has
/// given its restored record back: it knows nothing, finds the lease free and runs its child at once,
/// while the child of the holder etcd forgot still runs (that holder learns of the restore only at its
/// next renewal). Without the give-back it would have found the restored hold and waited it out.
#[test]
fn a_frozen_locks_give_back_after_a_restore_never_lets_a_newcomer_in_beside_the_takeover() {
    let Some(env) = server_env() else { return };
    let server = env.server().unwrap();
    let name = env.lease_name("giveback-newcomer");
    let alive = env.path("alive");
    // A child that stamps while it runs, also for most of a second after SIGTERM (within its 1 s grace).
    let script = format!(
        "trap 'for i in 1 2 3 4 5 6 7; do echo $$ $(date +%s%N) >> {a}; sleep 0.1; done; exit 0' TERM; while :; do echo $$ $(date +%s%N) >> {a}; sleep 0.05; done",
        a = alive.display()
    );
    let pids = || stamping_pids(&alive);
    let first = env.spawn(fast(&["lock", &name, "-v", "--identity", "first"], &["sh", "-c", &script]));
    wait_until("the first child", || pids().len() == 1);
    let second = env.spawn(fast(&["lock", &name, "-v", "--identity", "second"], &["sh", "-c", &script]));
    wait_until("the second to wait", || second.stderr().contains("waiting"));
    first.signal(Signal::SIGSTOP);
    wait_until("the first to stop", || pty::state(first.pid()) == Some('T'));
    let snapshot = server.snapshot();
    let snap_rv: u64 = env.get(&name).unwrap().0.parse().unwrap();
    let holder = || env.get(&name).and_then(|(_, spec)| spec.holder_identity);
    wait_until("the takeover", || holder().as_deref() == Some("second"));
    wait_until("the takeover's child", || pids().len() == 2);
    wait_until("renewals", || env.get(&name).unwrap().0.parse::<u64>().unwrap() > snap_rv + 3);
    server.restore(&snapshot);
    first.signal(Signal::SIGCONT);
    let first = first.finish();
    let fourth = env.spawn(fast(&["lock", &name, "-v", "--identity", "fourth"], &["sh", "-c", &script]));
    let restored = Instant::now();
    wait_until("three lease durations", || restored.elapsed() > Duration::from_secs(12));
    second.signal(Signal::SIGTERM);
    fourth.signal(Signal::SIGTERM);
    let (second, fourth) = (second.finish(), fourth.finish());
    assert_no_two_ran_at_once(&alive, || {
        format!("first ({:?}):\n{}\nsecond:\n{}\nfourth:\n{}", first.code, first.stderr, second.stderr, fourth.stderr)
    });
}

/// Found by review (helper-128): `lock` A's acquisition is committed but its answer never reaches A, which is then cut
/// off from the API server (a partition at its proxy) for longer than a lease duration. B, waiting, takes over after
/// A's record expires and runs its child. etcd is restored to a snapshot holding A's record, and A's link heals: its
/// first read shows its own write, learned long past its send + the lease duration. By the rule of fbc6e9c (after its
/// send + the lease duration a record of ours is never written: another may have taken over, and a restore may show it
/// again), A must not take that record over at once (nor give it back).
#[test]
fn an_acquisition_learned_past_its_lease_duration_after_a_restore_never_lets_two_children_run() {
    let Some(env) = server_env() else { return };
    let server = env.server().unwrap();
    let name = env.lease_name("late-acq-restored");
    let alive = env.path("alive");
    let timings = ["--lease-duration", "6s", "--renew-deadline", "3s", "--retry-period", "1s", "--grace", "2s"];
    // A child that stamps while it runs, also for most of its grace after SIGTERM.
    let script = format!(
        "trap 'for i in $(seq 1 17); do echo $$ $(date +%s%N) >> {a}; sleep 0.1; done; exit 0' TERM; while :; do echo $$ $(date +%s%N) >> {a}; sleep 0.05; done",
        a = alive.display()
    );
    let pids = || stamping_pids(&alive);
    let (proxy, proxied) = env.proxied_kubeconfig();
    // A's acquisition is committed at once, its answer held back; meanwhile A is cut off.
    server.after_commit_of("a", 1, AfterCommit::Delay(Duration::from_secs(5)));
    let mut command = env.mpsync(
        ["lock", &name, "-vv", "--identity", "a"].iter().copied().chain(timings).chain(["--", "sh", "-c", &script]),
    );
    command.env("MPSYNC_KUBECONFIG", &proxied);
    let a = Proc::spawn(command, &env.dir);
    let holder = || env.get(&name).and_then(|(_, spec)| spec.holder_identity);
    wait_until("A's acquisition to be committed", || holder().as_deref() == Some("a"));
    proxy.partition();
    let snapshot = server.snapshot();
    let snap_rv: u64 = env.get(&name).unwrap().0.parse().unwrap();
    let b = env.spawn(
        ["lock", &name, "-v", "--identity", "b"].iter().copied().chain(timings).chain(["--", "sh", "-c", &script]),
    );
    wait_until("B's takeover", || holder().as_deref() == Some("b"));
    wait_until("B's child", || pids().len() == 1);
    wait_until("B's renewals", || env.get(&name).unwrap().0.parse::<u64>().unwrap() > snap_rv + 3);
    server.restore(&snapshot);
    proxy.heal();
    proxy.drop_connections();
    let restored = Instant::now();
    wait_until("two lease durations", || restored.elapsed() > Duration::from_secs(12));
    a.signal(Signal::SIGTERM);
    b.signal(Signal::SIGTERM);
    let (a, b) = (a.finish(), b.finish());
    assert_no_two_ran_at_once(&alive, || format!("A ({:?}):\n{}\nB ({:?}):\n{}", a.code, a.stderr, b.code, b.stderr));
    drop(proxy);
}

/// The pids that stamped `alive` (a child that writes `PID NANOS` lines while it runs), each once.
fn stamping_pids(alive: &Path) -> Vec<String> {
    let mut pids: Vec<String> = read_stamps(alive).into_iter().map(|s| s.0).collect();
    pids.sort();
    pids.dedup();
    pids
}

/// No two children's spans of `alive` stamps (`PID NANOS` lines, from each child's first to its last)
/// overlap; `context` says what the processes logged, for the failure.
#[track_caller]
fn assert_no_two_ran_at_once(alive: &Path, context: impl FnOnce() -> String) {
    let mut spans: std::collections::BTreeMap<String, (u128, u128)> = Default::default();
    for (pid, nanos, _) in read_stamps(alive) {
        let span = spans.entry(pid).or_insert((nanos, nanos));
        span.0 = span.0.min(nanos);
        span.1 = span.1.max(nanos);
    }
    let spans: Vec<(u128, u128)> = spans.into_values().collect();
    for (i, a) in spans.iter().enumerate() {
        for b in &spans[i + 1..] {
            let overlap = a.1.min(b.1) as i128 - a.0.max(b.0) as i128;
            assert!(
                overlap <= 0,
                "two children ran at once for {overlap} ns after the restore: {spans:?}\n{}",
                context()
            );
        }
    }
}

/// Found by review (helper-138): one hand edit of a holder's renewTime (let be, README "Identity"), then an etcd
/// restore to a snapshot taken just after it, within a lease duration. The restored record carries that
/// same edited renewTime again: no new renewal by anyone, nobody else under our identity, yet it must not
/// count as a second foreign renewal ("a second renewal ... carrying a *new* renewTime"). The holder's
/// child must run on to its end (exit 0), with no `identity collision`.
#[test]
fn one_hand_edit_seen_again_after_a_restore_stops_nothing() {
    let Some(env) = server_env() else { return };
    let server = env.server().unwrap();
    let name = env.lease_name("edit-restore");
    // The restore undoes about a second of renewals: the hold counts from the one restored (rv289), so a renew
    // deadline with room for the renewal after it on a loaded machine.
    let timing = ["--lease-duration", "8s", "--renew-deadline", "5s", "--retry-period", "500ms"];
    let (mut holder, go) = holder_as_me_with(&env, &name, &timing);
    let renewed = || env.get(&name).and_then(|(_, spec)| spec.renew_time);
    // A hand edit of renewTime (`kubectl edit`): one foreign renewTime, let be.
    env.edit(&name, |spec| {
        let now = k8s_openapi::jiff::Timestamp::now();
        let now = k8s_openapi::jiff::Timestamp::from_microsecond(now.as_microsecond() - 123).unwrap();
        spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(now));
    });
    let snapshot = server.snapshot();
    // Two renewals of the holder after the edit, then the restore (all within the renew deadline).
    for _ in 0..2 {
        let before = renewed();
        wait_until("a renewal", || renewed() != before);
    }
    server.restore(&snapshot);
    // Four renewals of the holder after the restore.
    for _ in 0..4 {
        let before = renewed();
        wait_until("a renewal after the restore", || renewed() != before || holder.wait_for(Duration::ZERO).is_some());
    }
    assert_child_ran_to_its_end(&mut holder, &go);
}

/// From review (helper-138): renewals that commit but whose answers are lost (the connection cut, a 504 after
/// the commit, an answer 1.5 s late) while the watch lags: every renewTime in the record is one the holder
/// sent, so none is another process's renewal under its identity; the child runs to its end.
#[test]
fn renewals_whose_answers_are_lost_are_no_collision() {
    let Some(env) = server_env() else { return };
    let server = env.server().unwrap();
    let name = env.lease_name("lost-answers");
    // A renew deadline with room for a renewal answered late in the second of the one before (which counts
    // for nothing: see README "Renewal") and one lost after it: what is tested is that none is a collision.
    let timing = ["--lease-duration", "8s", "--renew-deadline", "5s", "--retry-period", "500ms"];
    let (mut holder, go) = holder_as_me_with(&env, &name, &timing);
    server.set_watch_lag(Duration::from_millis(700));
    let renewed = || env.get(&name).and_then(|(_, spec)| spec.renew_time);
    for how in [
        AfterCommit::Drop,
        AfterCommit::Fail(504),
        AfterCommit::Delay(Duration::from_millis(1500)),
        AfterCommit::Drop,
        AfterCommit::Fail(500),
        AfterCommit::Drop,
    ] {
        server.after_commit(1, how);
        wait_until("the fault to fire", || {
            server.after_commit_pending() == 0 || holder.wait_for(Duration::ZERO).is_some()
        });
        let before = renewed();
        wait_until("a renewal", || renewed() != before || holder.wait_for(Duration::ZERO).is_some());
    }
    assert_child_ran_to_its_end(&mut holder, &go);
}

/// Found by review (helper-138): a client-go elector under our identity renews our hold (every 700 ms, with
/// a lease duration of 15 s) while our renewals' answers come late (committed at once, answered 1.5 s or
/// 0.6 s later) and the watch lags. mpsync stops its child (123), by a collision or at its renew deadline
/// having seen one foreign renewal, and never gives the record back: free, it would go to a third process
/// while the co-holder's work runs.
#[test]
fn a_co_holder_with_late_answers_to_our_renewals_never_finds_the_lease_given_back() {
    co_holder_with_late_answers(Duration::from_millis(1500));
    co_holder_with_late_answers(Duration::from_millis(600));
}

fn co_holder_with_late_answers(late: Duration) {
    let Some(env) = server_env() else { return };
    let server = env.server().unwrap();
    let name = env.lease_name("co-late");
    let starts = env.path("starts");
    let script = format!("echo $$ >> {}; exec sleep 1000", starts.display());
    let lock = env.spawn(fast(&["lock", &name, "-v", "--identity", "shared"], &["sh", "-c", &script]));
    let child = read_pid(&starts);
    server.set_watch_lag(Duration::from_millis(400));
    server.after_commit(1000, AfterCommit::Delay(late));
    // The co-holder renews until our child is gone.
    let began = Instant::now();
    while alive(child) {
        assert!(began.elapsed() < PATIENCE, "the child ran on beside the co-holder");
        env.edit(&name, |spec| {
            spec.holder_identity = Some("shared".into());
            spec.lease_duration_seconds = Some(15);
            spec.renew_time = Some(micro_now());
        });
        let slept = Instant::now();
        while slept.elapsed() < Duration::from_millis(700) && alive(child) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let out = lock.finish();
    server.after_commit(0, AfterCommit::Drop);
    out.assert_code(123);
    let (_, now) = env.get(&name).unwrap();
    assert_eq!(now.holder_identity.as_deref(), Some("shared"), "given back under the co-holder:\n{}", out.stderr);
}

/// The wall clock now, to the microsecond, as a Lease stores it.
fn micro_now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime {
    let now = k8s_openapi::jiff::Timestamp::now();
    let now = k8s_openapi::jiff::Timestamp::from_microsecond(now.as_microsecond()).unwrap();
    k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(now)
}

/// `lock NAME --identity me` with `timing`, whose child stamps `start`, runs until the file returned exists, and
/// stamps `end`; returned once the child has started.
fn holder_as_me_with(env: &TestEnv, name: &str, timing: &[&str]) -> (Proc, std::path::PathBuf) {
    let (log, go) = (env.path("log"), env.path("go"));
    let script = format!("echo start >> {}; {}; echo end >> {}", log.display(), until_exists(&go), log.display());
    let command = [&["lock", name, "-v", "--identity", "me"][..], timing, &["--", "sh", "-c", &script]].concat();
    let holder = env.spawn(command);
    wait_for_file(&log, "start");
    (holder, go)
}

/// Open `go`: the holder's child ends, and it must have run to its end (exit 0), no collision said.
#[track_caller]
fn assert_child_ran_to_its_end(holder: &mut Proc, go: &Path) {
    fs::write(go, "").unwrap();
    let code = holder.wait_for(PATIENCE).and_then(|s| s.code());
    let stderr = holder.stderr();
    assert_eq!(code, Some(0), "the holder's child was stopped for nothing:\n{stderr}");
    assert!(!stderr.contains("collision"), "{stderr}");
}

/// Found by review (helper-140): renewals refused (500) from every retry period (`--retry-period 50ms`, a legal setting) until the
/// renew deadline: more than 64 renewals sent, none applied. The child is stopped (123); the record is still
/// mpsync's own last applied renewal, nobody else wrote the lease, so README (exit 123) says it is given back.
#[test]
fn a_hold_lost_after_many_refused_renewals_is_still_given_back() {
    let Some(env) = server_env() else { return };
    let server = env.server().unwrap();
    let name = env.lease_name("many-refused");
    let (pid, term, go) = (env.path("pid"), env.path("term"), env.path("go"));
    let script = format!(
        "trap 'echo term > {term}; while [ ! -e {go} ]; do sleep 0.05; done; exit 0' TERM; echo $$ > {pid}; while :; do sleep 0.05; done",
        term = term.display(),
        go = go.display(),
        pid = pid.display()
    );
    let args = [
        "lock",
        &name,
        "-v",
        "--lease-duration",
        "20s",
        "--renew-deadline",
        "8s",
        "--retry-period",
        "50ms",
        "--",
        "sh",
        "-c",
        &script,
    ];
    let lock = env.spawn(args);
    read_pid(&pid);
    server.reset_counts();
    server.fail_next_on(&format!("update:{name}"), 1_000_000, 500);
    wait_for_file(&term, "term");
    server.fail_next_on(&format!("update:{name}"), 0, 500);
    let puts = server.count("update");
    fs::write(&go, "").unwrap();
    let out = lock.finish();
    out.assert_code(123);
    let (_, now) = env.get(&name).unwrap();
    assert_eq!(
        now.holder_identity.as_deref(),
        Some(""),
        "not given back after {puts} refused renewals (the next holder waits out the 20 s lease):\n{}",
        out.stderr
    );
}

/// Found by review (helper-148): a renewal that was committed, then answered 409 (a proxy or gateway in front of
/// the API server that lost the first answer and retried the PUT on the same resourceVersion: the retry
/// meets the write it repeats) or 429 (the retry refused by priority and fairness). The record is this
/// process's own write; it must be neither taken for another writer's renewal (once: the lease is not
/// given back; twice: a false identity collision that stops a healthy child) nor left to expire.
#[test]
fn a_renewal_committed_then_answered_409_or_429_is_still_ours() {
    let Some(env) = server_env() else { return };
    let server = env.server().unwrap();
    for code in [409u16, 429] {
        let name = env.lease_name("refused-ours");
        let held = env.path(&format!("held-{name}"));
        let gate = env.path(&format!("gate-{name}"));
        let script = format!("touch {}; {}", held.display(), until_exists(&gate));
        let lock = env.spawn(fast(&["lock", &name, "-vv"], &["sh", "-c", &script]));
        wait_until("the child", || held.exists());
        // One renewal committed, then answered `code`.
        server.after_commit(1, AfterCommit::Fail(code));
        wait_until("the faulty renewal", || server.after_commit_pending() == 0);
        // Let a few renewals pass (500 ms each), then the child exits.
        let rv = server.resource_version();
        wait_until("two more renewals", || server.resource_version() >= rv + 2);
        fs::write(&gate, "").unwrap();
        let done = lock.finish();
        assert!(!done.stderr.contains("identity collision"), "{code}: false collision\n{}", done.stderr);
        done.assert_code(0);
        assert_eq!(
            env.holder(&name).as_deref(),
            Some(""),
            "{code}: our own lease, renewed by nobody else, must be given back\n{}",
            done.stderr
        );
    }
}

/// Found by review (helper-148): the same, twice within a lease duration: a false identity collision stops the
/// healthy child (exit 123) though nobody else wrote the lease.
#[test]
fn two_renewals_committed_then_answered_409_are_no_collision() {
    let Some(env) = server_env() else { return };
    let server = env.server().unwrap();
    let name = env.lease_name("refused-twice");
    let held = env.path("held");
    let gate = env.path("gate");
    let script = format!("touch {}; {}", held.display(), until_exists(&gate));
    let lock = env.spawn(fast(&["lock", &name, "-vv"], &["sh", "-c", &script]));
    wait_until("the child", || held.exists());
    server.after_commit(1, AfterCommit::Fail(409));
    wait_until("the first faulty renewal", || server.after_commit_pending() == 0);
    let rv = server.resource_version();
    wait_until("one more renewal", || server.resource_version() > rv);
    server.after_commit(1, AfterCommit::Fail(409));
    wait_until("the second faulty renewal", || server.after_commit_pending() == 0);
    let rv = server.resource_version();
    let mut lock = lock;
    let renewed = within_patience(|| server.resource_version() >= rv + 2 || lock.wait_for(Duration::ZERO).is_some());
    assert!(renewed);
    fs::write(&gate, "").unwrap();
    let done = lock.finish();
    assert!(!done.stderr.contains("identity collision"), "false collision\n{}", done.stderr);
    done.assert_code(0);
}

/// Found by review (helper-148): `observe` whose watch's fallback get is refused once (401: a token refreshed on
/// the next request, an API server replica behind a balancer that does not know the token yet), while its
/// watch is refused (403 on watch only). The watch ends; observe's own get succeeds, and observe must
/// watch on, not end with 0 as if interrupted (README: observe exits 0 on SIGINT or SIGTERM).
#[test]
fn observe_survives_a_refusal_that_passes() {
    observe_survives_a_refusal("observe-refusal", false);
}

/// Found by review (helper-151): a refusal that comes and goes (every other get answered 401: one API server replica
/// of two that does not know the token yet) while list and watch are refused. Each time, the watch's
/// fallback get is refused (the watch ends) and observe's own get succeeds (it watches again). Since 850b3da
/// it watches again at once, with a fresh watch whose backoff starts at zero: a list, a get and a get in a
/// loop without pause. It must be paced (the contract's poll rate: one read per retry period or so).
#[test]
fn observe_paces_a_refusal_that_comes_and_goes() {
    let Some(env) = server_env() else { return };
    let server = env.server().unwrap();
    let name = env.lease_name("observe-flaky");
    env.put(&name, TestEnv::foreign_record("first", 3600));
    server.forbid("list");
    server.forbid("watch");
    let mut observer = env.spawn(["observe", &name]);
    assert!(server.wait_for_requests(|r| r.iter().any(|r| r.verb == "list"), PATIENCE), "no watch");
    let requests = refuse_every_other_get(server, &name, &mut observer);
    observer.signal(Signal::SIGTERM);
    let done = observer.finish();
    eprintln!("{requests} requests in 3 s; exit {:?}", done.code);
    assert!(requests <= 30, "{requests} requests in 3 s (unpaced)\nstderr:\n{}", done.stderr);
}

/// Found by review (helper-151): the same for a waiter (`lock` on a lease another holds): its watch ends on the
/// refused fallback get, its own read succeeds, and it watches again at once.
#[test]
fn a_waiter_paces_a_refusal_that_comes_and_goes() {
    let Some(env) = server_env() else { return };
    let server = env.server().unwrap();
    let name = env.lease_name("waiter-flaky");
    env.put(&name, TestEnv::foreign_record("other", 3600));
    server.forbid("list");
    server.forbid("watch");
    let mut waiter = env.spawn(["lock", &name, "--", "true"]);
    assert!(server.wait_for_requests(|r| r.iter().any(|r| r.verb == "watch"), PATIENCE), "no watch");
    let requests = refuse_every_other_get(server, &name, &mut waiter);
    waiter.signal(Signal::SIGTERM);
    let done = waiter.finish();
    eprintln!("{requests} requests in 3 s; exit {:?}", done.code);
    assert!(requests <= 30, "{requests} requests in 3 s (unpaced)\nstderr:\n{}", done.stderr);
}

/// For 3 s (or until `proc` ends), one refused get (401) is armed after each get of `name` that succeeded:
/// a refusal that comes and goes. Returns how many requests the server saw meanwhile.
fn refuse_every_other_get(server: &crate::support::apiserver::TestApiServer, name: &str, proc: &mut Proc) -> usize {
    let get_ok = |requests: &[crate::support::apiserver::RequestLog]| {
        requests.iter().filter(|r| r.verb == "get" && r.status == 200).count()
    };
    let started = Instant::now();
    let mut armed_after = usize::MAX;
    let before = server.requests().len();
    while started.elapsed() < Duration::from_secs(3) && proc.wait_for(Duration::ZERO).is_none() {
        let ok = get_ok(&server.requests());
        if ok != armed_after {
            server.fail_next_on(&format!("get:{name}"), 1, 401);
            armed_after = ok;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    server.requests().len() - before
}

/// Found by review (helper-152): a holder with a long lease (20 s, renew deadline 12 s) is cut off from the API
/// server (a partition at its proxy: its child runs on to its renew deadline), and etcd is restored to a
/// snapshot in which the lease was free. The waiter, whose own lease duration is short (4 s), knew the holder's
/// record (its 20 s, at versions newer than the snapshot's); its watch, cut by the restore, ends on a refusal,
/// and it reads the restored free record at an older version within the holder's hold. It must not run its
/// child while the holder's still runs: it protected only its own 4 s (fixed in d257489).
#[test]
fn a_restore_read_by_a_short_waiter_within_a_long_hold_never_lets_it_in() {
    restore_read_by_a_waiter_under_a_cut_off_holder(true);
}

/// Found by review (helper-152): the same read within the hold, one lease duration (4 s) for both: before b65cfd4
/// the waiter took the restored free record at once, beside the cut-off holder's child.
#[test]
fn a_restore_read_by_a_waiter_within_the_hold_never_lets_it_in() {
    restore_read_by_a_waiter_under_a_cut_off_holder(false);
}

fn restore_read_by_a_waiter_under_a_cut_off_holder(long_holder: bool) {
    let Some(env) = server_env() else { return };
    let server = env.server().unwrap();
    let name = env.lease_name("restore-cut-off");
    env.run(fast(&["lock", &name], &["true"])).assert_code(0);
    let snapshot = server.snapshot();
    let log = env.path("log");
    let watched = HolderWatched::new(&env, &log);
    let (proxy, proxied) = env.proxied_kubeconfig();
    let long: &[&str] = match long_holder {
        true => &["--lease-duration", "20s", "--renew-deadline", "12s", "--retry-period", "1s"],
        false => FAST,
    };
    let mut command = env.mpsync(["lock", &name, "-v", "--identity", "holder"].iter().chain(long).copied().chain([
        "--",
        "sh",
        "-c",
        &watched.holder_script,
    ]));
    command.env("MPSYNC_KUBECONFIG", &proxied);
    let holder = Proc::spawn(command, &env.dir);
    wait_for_file(&log, "start");
    let waiter = env.spawn(fast(&["lock", &name, "-v", "--identity", "waiter"], &["sh", "-c", &watched.waiter_script]));
    wait_until("the waiter to wait", || waiter.stderr().contains("waiting"));
    let renewed = || env.get(&name).and_then(|(_, spec)| spec.renew_time);
    for _ in 0..2 {
        let before = renewed();
        wait_until("a renewal", || renewed() != before);
    }
    proxy.partition();
    // The waiter's watch, cut by the restore, lists again (503), polls (a 401 that passes at once): the watch
    // ends and the waiter reads by itself, well within the holder's hold.
    server.fail_next(1, 503);
    server.fail_next_on(&format!("get:{name}"), 1, 401);
    server.restore(&snapshot);
    server.reset_counts();
    wait_until("the waiter's child, or the holder's exit", || {
        watched.noted() || !alive(holder.pid()) || holder.stderr().contains("lost")
    });
    // Either the waiter's child started (then the holder's must be dead), or nothing ran beside it.
    let noted = watched.noted();
    holder.signal(Signal::SIGTERM);
    let holder = holder.finish();
    proxy.heal();
    proxy.drop_connections();
    waiter.signal(Signal::SIGTERM);
    let waiter = waiter.finish();
    if noted {
        let (state, dead) = watched.holder_was_dead();
        assert!(
            dead,
            "the holder's child was alive ({state}) as the waiter's ran: {:?}\nholder:\n{}\nwaiter:\n{}",
            read_stamps(&log),
            holder.stderr,
            waiter.stderr
        );
    }
    drop(proxy);
}

/// Found by review (helper-161): the same, but observe's own get after the watch ended is answered 503 (the API
/// server shedding load right then): a failure that retrying fixes must not end observe (it ended with 125,
/// "cannot read the lease").
#[test]
fn observe_survives_a_refusal_then_a_503() {
    observe_survives_a_refusal("observe-401-503", true);
}

/// `observe`'s watch ends on a refused fallback get (401) while watches are refused, and with `then_503` its
/// own get after that is answered 503: once watches are allowed again, it must watch on and report the next
/// holder.
fn observe_survives_a_refusal(lease: &str, then_503: bool) {
    let Some(env) = server_env() else { return };
    let server = env.server().unwrap();
    let name = env.lease_name(lease);
    env.put(&name, TestEnv::foreign_record("first", 3600));
    let mut observer = env.spawn(["observe", &name]);
    assert!(server.wait_for_watch_count(1, PATIENCE));
    let get = format!("get:{name}");
    let last_failure = match then_503 {
        true => {
            server.fail_next_on_then(&get, 1, 401, &get, 1, 503);
            503
        }
        false => {
            server.fail_next_on(&get, 1, 401);
            401
        }
    };
    server.forbid("watch");
    server.drop_watches();
    wait_until("the refused get", || {
        server.requests().iter().any(|r| r.verb == "get" && r.status == last_failure)
            || observer.wait_for(Duration::ZERO).is_some()
    });
    server.allow("watch");
    let exited = within_patience(|| observer.wait_for(Duration::ZERO).is_some() || server.watch_count() >= 1);
    let status = observer.wait_for(Duration::from_millis(500));
    env.put(&name, TestEnv::foreign_record("second", 3600));
    let saw_second =
        within_patience(|| observer.stdout().contains("second") || observer.wait_for(Duration::ZERO).is_some());
    observer.signal(Signal::SIGTERM);
    let done = observer.finish();
    assert!(
        exited && status.is_none() && saw_second && done.stdout.contains("second"),
        "observe stopped watching: {:?}\nstdout:\n{}\nstderr:\n{}",
        done.code,
        done.stdout,
        done.stderr
    );
}

both_backends!(two_containers_under_one_frozen_clock_draw_their_stamps_apart);

/// Found by review (helper-186): the stamps' random step (1 to 1000 microseconds past the wall clock) came
/// from a generator seeded by the wall clock, the pid and a stack address only. Two containers whose mpsync
/// is PID 1, with no address-space randomisation, under one frozen clock (one libfaketime FAKETIME; here the
/// shim, at one given time), drew the same step every time: two such processes given one identity wrote
/// the same create, and the one answered 409 took the other's record for its own, beside the other's child.
/// Three such runs, one after the other, each on a lease of its own: the seed comes from the operating
/// system now, so their acquisitions' stamps differ but one time in a thousand for any two (all three
/// alike: one time in a million).
fn two_containers_under_one_frozen_clock_draw_their_stamps_apart(env: &TestEnv) {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: needs root, for unshare --pid");
        return;
    }
    let shim = build_shim(env, "freezewall");
    let mut stamps = Vec::new();
    for i in 0..3 {
        let name = env.lease_name(&format!("frozen-twin{i}"));
        let inner = env.mpsync(["lock", name.as_str(), "--identity", "twin", "--", "true"]);
        let mut command = std::process::Command::new("unshare");
        // The shim leaves the environment of the process it is loaded in: given by env(1) to mpsync alone.
        command.args(["--pid", "--fork", "--mount-proc", "--kill-child", "setarch", "-R", "env"]);
        command.arg(format!("LD_PRELOAD={}", shim.display())).arg("MPSYNC_TEST_WALL_NS=1700000000123456789");
        command.arg(inner.get_program()).args(inner.get_args());
        for (key, value) in inner.get_envs() {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        let done = Proc::spawn(command, &env.dir).finish();
        done.assert_code(0);
        let (_, record) = env.get(&name).expect("the lease exists");
        stamps.push(record.acquire_time.expect("an acquireTime").0);
    }
    assert!(stamps.iter().any(|stamp| *stamp != stamps[0]), "every run drew the same stamp: {stamps:?}");
}

both_backends!(a_newcomers_release_after_a_hand_edit_that_lowered_the_token_never_ends_the_wait);

/// Found by review (helper-185): P holds NAME (token 1) and W waits. NAME is made free by hand with an
/// older record put back (token 0: `kubectl apply` of a saved manifest); a newcomer Q takes it (token 1
/// again), runs `true` and releases it. W took Q's release for P's own (the same Lease and token) and ran
/// beside P's child, which ran on until P's next renewal. W waits P's hold out, as after any hand edit.
fn a_newcomers_release_after_a_hand_edit_that_lowered_the_token_never_ends_the_wait(env: &TestEnv) {
    let name = env.lease_name("lowered");
    let log = env.path("log");
    let stamp = k8s_openapi::jiff::Timestamp::now();
    let stamp = k8s_openapi::jiff::Timestamp::from_microsecond(stamp.as_microsecond()).unwrap();
    let free = LeaseSpec {
        holder_identity: Some(String::new()),
        lease_duration_seconds: Some(1),
        acquire_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(stamp)),
        renew_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(stamp)),
        lease_transitions: Some(0),
        ..LeaseSpec::default()
    };
    env.put(&name, free);
    let timings = ["--lease-duration", "20s", "--renew-deadline", "15s", "--retry-period", "8s"];
    let args = ["lock", name.as_str(), "--identity", "p"].into_iter().chain(timings);
    let holder = env.spawn(args.chain(["--", "sh", "-c", &draining_script(&log, "0.2")]));
    wait_for_file(&log, "start");
    let waiter = env.spawn(["lock", name.as_str(), "--identity", "w", "-v"].into_iter().chain([
        "--",
        "sh",
        "-c",
        &stamp_script(&log, "true"),
    ]));
    wait_until("the waiter to wait", || waiter.stderr().contains("waiting"));
    env.edit(&name, |spec| (spec.holder_identity, spec.lease_transitions) = (None, Some(0)));
    env.run(fast(&["lock", &name, "--identity", "q"], &["true"])).assert_code(0);
    // P learns of the edit at its next renewal (8 s), stops its child and exits 123; W runs after that.
    holder.finish().assert_code(123);
    waiter.finish().assert_code(0);
    assert_eq!(max_concurrency(&log), 1, "two children ran at once: {:?}", read_stamps(&log));
}
