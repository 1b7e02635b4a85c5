//! Semaphores (`--slots N`) under faults (from review, helper-117): never more than N children, slots
//! not reused before they expire, one slot per process, counts that disagree refused.

use std::fs;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::apiserver::AfterCommit;
use crate::support::*;

both_backends!(
    many_contenders_never_exceed_n,
    sigkilled_holder_slot_not_reused_and_child_dead,
    stopped_holder_child_dead_before_waiter_runs,
    concurrent_first_use_with_different_counts,
);

/// A child that records its start, and whether any pid listed in `pids` is still alive when it starts
/// ("overlap"), then writes its own pid to `pids` and runs until `gate` exists.
fn watched_child(log: &std::path::Path, pids: &std::path::Path, gate: &std::path::Path) -> String {
    format!(
        "for p in $(cat {pids}.victim 2>/dev/null); do if kill -0 $p 2>/dev/null && ! grep -q '^State:.Z' /proc/$p/status; then echo overlap $(date +%s%N) $p >> {log}; fi; done; \
         echo $$ > {pids}.$PPID; echo start $(date +%s%N) $MPSYNC_SLOT >> {log}; \
         while [ ! -e {gate} ]; do sleep 0.05; done; echo end $(date +%s%N) >> {log}",
        pids = pids.display(),
        log = log.display(),
        gate = gate.display()
    )
}

fn many_contenders_never_exceed_n(env: &TestEnv) {
    let name = env.lease_name("rvmany");
    let log = env.path("log");
    let script = stamp_script(&log, "sleep 0.3");
    let procs: Vec<Proc> =
        (0..6).map(|_| env.spawn(fast(&["lock", &name, "--slots", "2"], &["sh", "-c", &script]))).collect();
    for p in procs {
        p.finish().assert_code(0);
    }
    let starts = read_stamps(&log).iter().filter(|s| s.0 == "start").count();
    assert_eq!(starts, 6);
    assert!(max_concurrency(&log) <= 2, "more than 2 children at once: {}", max_concurrency(&log));
}

fn sigkilled_holder_slot_not_reused_and_child_dead(env: &TestEnv) {
    let name = env.lease_name("rvkill");
    let log = env.path("log");
    let pids = env.path("pids");
    let gate = env.path("gate");
    let script = watched_child(&log, &pids, &gate);
    let a = env.spawn(fast(&["lock", &name, "--slots", "2"], &["sh", "-c", &script]));
    let b = env.spawn(fast(&["lock", &name, "--slots", "2"], &["sh", "-c", &script]));
    wait_until("both slots in use", || read_stamps(&log).iter().filter(|s| s.0 == "start").count() == 2);
    let victim = fs::read_to_string(format!("{}.{}", pids.display(), a.pid())).expect("A's child's pid");
    fs::write(format!("{}.victim", pids.display()), &victim).unwrap();
    let c = env.spawn(fast(&["lock", &name, "--slots", "2"], &["sh", "-c", &script]));
    // C is waiting: give it time to watch.
    std::thread::sleep(Duration::from_millis(500));
    let killed_at = epoch_nanos();
    a.signal(Signal::SIGKILL);
    let _ = a.finish();
    wait_until("the third child to start", || read_stamps(&log).iter().filter(|s| s.0 == "start").count() == 3);
    let stamps = read_stamps(&log);
    let third = stamps.iter().filter(|s| s.0 == "start").nth(2).unwrap().1;
    fs::write(&gate, "").unwrap();
    b.finish().assert_code(0);
    c.finish().assert_code(0);
    let text = fs::read_to_string(&log).unwrap();
    assert!(!text.contains("overlap"), "a killed holder's child still ran when the slot was reused:\n{text}");
    // Not before the lease (4s) could have expired, counted from the kill (a renewal at most 500ms before).
    let waited = Duration::from_nanos((third - killed_at) as u64);
    assert!(waited >= Duration::from_millis(3400), "slot reused {waited:?} after its holder was killed\n{text}");
}

fn stopped_holder_child_dead_before_waiter_runs(env: &TestEnv) {
    let name = env.lease_name("rvstop");
    let log = env.path("log");
    let pids = env.path("pids");
    let gate = env.path("gate");
    let script = watched_child(&log, &pids, &gate);
    let a = env.spawn(fast(&["lock", &name, "--slots", "2"], &["sh", "-c", &script]));
    let b = env.spawn(fast(&["lock", &name, "--slots", "2"], &["sh", "-c", &script]));
    wait_until("both slots in use", || read_stamps(&log).iter().filter(|s| s.0 == "start").count() == 2);
    let victim = fs::read_to_string(format!("{}.{}", pids.display(), a.pid())).expect("A's child's pid");
    fs::write(format!("{}.victim", pids.display()), &victim).unwrap();
    let c = env.spawn(fast(&["lock", &name, "--slots", "2"], &["sh", "-c", &script]));
    std::thread::sleep(Duration::from_millis(500));
    a.signal(Signal::SIGSTOP);
    wait_until("the third child to start", || read_stamps(&log).iter().filter(|s| s.0 == "start").count() == 3);
    a.signal(Signal::SIGCONT);
    let a = a.finish();
    fs::write(&gate, "").unwrap();
    b.finish().assert_code(0);
    c.finish().assert_code(0);
    let text = fs::read_to_string(&log).unwrap();
    assert!(!text.contains("overlap"), "a stopped holder's child still ran when the slot was reused:\n{text}");
    a.assert_code(123);
}

fn concurrent_first_use_with_different_counts(env: &TestEnv) {
    for round in 0..3 {
        let name = env.lease_name(&format!("rvrace{round}"));
        let log = env.path(&format!("log{round}"));
        let gate = env.path(&format!("gate{round}"));
        let body = until_exists(&gate);
        let script = stamp_script(&log, &body);
        let mut procs = Vec::new();
        for i in 0..6 {
            let n = if i % 2 == 0 { "2" } else { "3" };
            procs.push((n, env.spawn(fast(&["lock", &name, "--slots", n, "--timeout", "6s"], &["sh", "-c", &script]))));
        }
        // Wait until every process either exited or runs a child (or waits: at most 2 or 3 run).
        std::thread::sleep(Duration::from_secs(4));
        let running = read_stamps(&log).iter().filter(|s| s.0 == "start").count();
        fs::write(&gate, "").unwrap();
        let mut codes = Vec::new();
        for (n, p) in procs {
            let f = p.finish();
            codes.push((n, f.code, f.stderr.lines().last().unwrap_or("").to_string()));
        }
        eprintln!("round {round}: running {running}, codes {codes:?}");
        let refused2 = codes.iter().filter(|c| c.0 == "2" && c.1 == Some(125)).count();
        let refused3 = codes.iter().filter(|c| c.0 == "3" && c.1 == Some(125)).count();
        assert!(refused2 == 0 || refused3 == 0, "both counts refused: {codes:?}");
        assert!(refused2 == 3 || refused3 == 3, "neither count wholly refused: {codes:?}");
        let n = if refused2 == 3 { 3 } else { 2 };
        assert!(running <= n && max_concurrency(&log) <= n, "{running} children on a {n}-slot semaphore");
    }
}

/// An acquisition whose answer is lost, on a semaphore where another slot is free: never two slots.
#[test]
fn lost_answers_never_leave_two_slots_held() {
    if TestEnv::real_cluster() {
        return;
    }
    let env = TestEnv::kube();
    let server = env.server().unwrap();
    let name = env.lease_name("rvdrop");
    let log = env.path("log");
    let gate = env.path("gate");
    let body = until_exists(&gate);
    let script = stamp_script(&log, &body);
    // The marker's create is write 1; the slot's acquisition write 2.
    server.after_commit(2, AfterCommit::Drop);
    let a = env.spawn(fast(&["lock", &name, "--slots", "3"], &["sh", "-c", &script]));
    wait_until("the child to start", || read_stamps(&log).iter().filter(|s| s.0 == "start").count() == 1);
    let held: Vec<String> = (0..3)
        .filter_map(|i| env.holder(&format!("{name}-{i}")).filter(|h| !h.is_empty()).map(|h| format!("{i}:{h}")))
        .collect();
    fs::write(&gate, "").unwrap();
    a.finish().assert_code(0);
    assert_eq!(held.len(), 1, "slots held while one child ran: {held:?}");
}

fn cpu_ticks(pid: i32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields.get(11).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0)
}

/// A held slot's count annotation edited by hand (to another count, or removed).
fn edited_slot_annotation(value: Option<&str>) {
    if TestEnv::real_cluster() {
        return;
    }
    let env = TestEnv::kube();
    let name = env.lease_name("rvedit");
    let log = env.path("log");
    let gate = env.path("gate");
    let body = until_exists(&gate);
    let script = stamp_script(&log, &body);
    let mut a = env.spawn(fast(&["lock", &name, "--slots", "2"], &["sh", "-c", &script]));
    wait_until("the child to start", || read_stamps(&log).iter().filter(|s| s.0 == "start").count() == 1);
    let slot = (0..2).map(|i| format!("{name}-{i}")).find(|s| env.holder(s).is_some_and(|h| !h.is_empty())).unwrap();
    env.annotate(&slot, "mpsync.io/slots", value);
    let before = cpu_ticks(a.pid());
    let exited = a.wait_for(Duration::from_secs(6));
    let after = cpu_ticks(a.pid());
    let still_held = env.holder(&slot);
    fs::write(&gate, "").unwrap();
    let a = a.finish();
    eprintln!(
        "edit {value:?}: exited within 6s: {exited:?}; cpu ticks in 6s: {}; holder {still_held:?}; code {:?}\n{}",
        after.saturating_sub(before),
        a.code,
        a.stderr
    );
    assert!(after.saturating_sub(before) < 200, "mpsync spun a core after the edit");
}

#[test]
fn held_slot_annotation_changed() {
    edited_slot_annotation(Some("3"));
}

#[test]
fn held_slot_annotation_removed() {
    edited_slot_annotation(None);
}

/// A child that registers its pid in `reg`, then counts the other live (not zombie) registered children:
/// more than `n - 1` is an overlap. Runs `secs` seconds.
fn registered_child(reg: &std::path::Path, log: &std::path::Path, n: usize, secs: &str) -> String {
    format!(
        "echo $$ > {reg}/$$; c=0; for f in {reg}/*; do p=$(basename $f); [ $p = $$ ] && continue; \
         if kill -0 $p 2>/dev/null && ! grep -q '^State:.Z' /proc/$p/status 2>/dev/null; then c=$((c+1)); fi; done; \
         if [ $c -ge {n} ]; then echo overlap $(date +%s%N) $c $MPSYNC_LEASE $MPSYNC_FENCING_TOKEN >> {log}; fi; \
         echo start $(date +%s%N) $MPSYNC_LEASE $MPSYNC_FENCING_TOKEN >> {log}; sleep {secs}",
        reg = reg.display(),
        log = log.display()
    )
}

/// Many short `lock --slots 2` runs while the server drops answers, fails writes, delays commits,
/// lags and drops watches and restarts.
#[test]
fn semaphore_chaos_never_runs_more_than_n() {
    if TestEnv::real_cluster() {
        return;
    }
    let env = TestEnv::kube();
    let server = env.server().unwrap();
    let name = env.lease_name("rvchaos");
    let log = env.path("log");
    let reg = env.path("reg");
    fs::create_dir_all(&reg).unwrap();
    let script = registered_child(&reg, &log, 2, "0.7");
    let spawn = || env.spawn(fast(&["lock", &name, "--slots", "2"], &["sh", "-c", &script]));
    let mut running: Vec<Proc> = (0..5).map(|_| spawn()).collect();
    let mut spawned = 5;
    let mut codes = Vec::new();
    let started = std::time::Instant::now();
    let mut step = 0;
    while !running.is_empty() && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(300));
        step += 1;
        match step % 12 {
            1 => server.after_commit(1, AfterCommit::Drop),
            3 => server.fail_next(2, 500),
            5 => server.drop_watches(),
            6 => server.set_watch_lag(Duration::from_millis(800)),
            8 => server.set_watch_lag(Duration::ZERO),
            9 => server.after_commit(1, AfterCommit::Delay(Duration::from_millis(1500))),
            11 => server.restart(),
            _ => {}
        }
        let mut still = Vec::new();
        for mut p in running {
            if p.wait_for(Duration::ZERO).is_some() {
                let f = p.finish();
                codes.push(f.code);
                if spawned < 25 {
                    still.push(spawn());
                    spawned += 1;
                }
            } else {
                still.push(p);
            }
        }
        running = still;
    }
    server.after_commit(0, AfterCommit::Drop);
    let text = fs::read_to_string(&log).unwrap_or_default();
    eprintln!("codes {codes:?}\n{text}");
    assert!(running.is_empty(), "runs did not finish in time");
    assert!(!text.contains("overlap"), "more than 2 children at once:\n{text}");
}

/// The acquisition's answer comes late (past the call timeout) or never, by one process of a 3-slot
/// semaphore whose slot 0 another holds: at most one slot is held by it while its child runs.
fn late_acquisition_answer(how: AfterCommit, shots: usize) {
    if TestEnv::real_cluster() {
        return;
    }
    let env = TestEnv::kube();
    let server = env.server().unwrap();
    let name = env.lease_name("rvlate");
    let log = env.path("log");
    let gate = env.path("gate");
    let body = until_exists(&gate);
    let script = stamp_script(&log, &body);
    let a = env.spawn(fast(&["lock", &name, "--slots", "3", "--identity", "ay"], &["sh", "-c", &script]));
    wait_until("A's child to start", || read_stamps(&log).iter().filter(|s| s.0 == "start").count() == 1);
    server.after_commit_of("bee", shots, how);
    let b = env.spawn(fast(&["lock", &name, "--slots", "3", "--identity", "bee"], &["sh", "-c", &script]));
    let mut most = 0;
    let mut seen_during_child = Vec::new();
    wait_until("B's child to start", || {
        let bee: Vec<usize> = (0..3).filter(|i| env.holder(&format!("{name}-{i}")).as_deref() == Some("bee")).collect();
        let started = read_stamps(&log).iter().filter(|s| s.0 == "start").count() == 2;
        if started {
            seen_during_child = bee.clone();
        }
        most = most.max(bee.len());
        started
    });
    // While B's child runs, for a while.
    for _ in 0..20 {
        let bee: Vec<usize> = (0..3).filter(|i| env.holder(&format!("{name}-{i}")).as_deref() == Some("bee")).collect();
        if bee.len() > 1 {
            seen_during_child = bee;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    fs::write(&gate, "").unwrap();
    server.after_commit(0, AfterCommit::Drop);
    a.finish().assert_code(0);
    let b = b.finish();
    eprintln!("most slots held by bee before its child: {most}; during: {seen_during_child:?}\n{}", b.stderr);
    b.assert_code(0);
    assert!(seen_during_child.len() <= 1, "bee held {seen_during_child:?} while its child ran");
}

#[test]
fn late_acquisition_answer_past_call_timeout() {
    late_acquisition_answer(AfterCommit::Delay(Duration::from_secs(4)), 1);
}

#[test]
fn two_dropped_acquisition_answers() {
    late_acquisition_answer(AfterCommit::Drop, 2);
}

#[test]
fn dropped_then_gateway_504() {
    late_acquisition_answer(AfterCommit::Gateway(504), 3);
}

both_backends!(held_slot_deleted_waiter_never_overlaps, held_slot_force_unlocked_waiter_never_overlaps);

fn tampered_slot(env: &TestEnv, tamper: impl Fn(&TestEnv, &str)) {
    let name = env.lease_name("rvtamper");
    let log = env.path("log");
    let pids = env.path("pids");
    let gate = env.path("gate");
    // A's child drains for 0.8s of its grace on SIGTERM.
    let script = format!("trap 'sleep 0.8; exit 0' TERM; {}", watched_child(&log, &pids, &gate));
    let a = env.spawn(fast(&["lock", &name, "--slots", "2", "--identity", "ay"], &["sh", "-c", &script]));
    let b = env.spawn(fast(&["lock", &name, "--slots", "2"], &["sh", "-c", &script]));
    wait_until("both slots in use", || read_stamps(&log).iter().filter(|s| s.0 == "start").count() == 2);
    let victim = fs::read_to_string(format!("{}.{}", pids.display(), a.pid())).expect("A's child's pid");
    fs::write(format!("{}.victim", pids.display()), &victim).unwrap();
    let c = env.spawn(fast(&["lock", &name, "--slots", "2", "-v"], &["sh", "-c", &script]));
    wait_until("C to wait", || c.stderr().contains("waiting"));
    let slot = (0..2).map(|i| format!("{name}-{i}")).find(|s| env.holder(s).as_deref() == Some("ay")).unwrap();
    tamper(env, &slot);
    wait_until("the third child to start", || read_stamps(&log).iter().filter(|s| s.0 == "start").count() == 3);
    let a = a.finish();
    fs::write(&gate, "").unwrap();
    b.finish().assert_code(0);
    c.finish().assert_code(0);
    let text = fs::read_to_string(&log).unwrap();
    eprintln!("A: {:?}\n{text}", a.code);
    assert!(!text.contains("overlap"), "the tampered slot's old child still ran when it was reused:\n{text}");
    a.assert_code(123);
}

fn held_slot_deleted_waiter_never_overlaps(env: &TestEnv) {
    tampered_slot(env, |env, slot| env.delete(slot));
}

fn held_slot_force_unlocked_waiter_never_overlaps(env: &TestEnv) {
    tampered_slot(env, |env, slot| env.edit(slot, |spec| spec.holder_identity = Some(String::new())));
}

/// Found by review (helper-117): a free, fresh semaphore of 1000 slots (the most `--slots` allows) with
/// `--no-wait` and short timings answered "not acquired" (124): the first look sent 1000 reads at once,
/// which timed out behind one another (1 s call timeouts). A free semaphore must be acquired.
fn a_big_free_semaphore_is_acquired_with_no_wait(env: &TestEnv) {
    let name = env.lease_name("big");
    let started = std::time::Instant::now();
    let done = env.run(fast(&["lock", name.as_str(), "--slots", "1000", "--no-wait"], &["true"]));
    eprintln!("1000 slots: exit {:?} after {:?}", done.code, started.elapsed());
    done.assert_code(0);
}
both_backends!(a_big_free_semaphore_is_acquired_with_no_wait);

/// Found by review (helper-118): the slots of a semaphore share 32 read permits (`Slot::with_read_limit`).
/// Reads of the other slots still in flight (or queued for a permit) when one slot is acquired stayed in
/// those slots' `call`s, never polled again while the slot is held: they kept their permits. The held slot's own read
/// (after a renewal refused 409, or an unknown outcome) then waits for a permit that never comes, and the
/// hold is lost at the renew deadline although the server answers everything.
#[test]
fn a_held_slots_read_is_not_starved_by_the_other_slots_reads() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let name = env.lease_name("sf-starve");
    let n = 100;
    // The marker first: a probe of a slot that fails keeps it from being written (a failed read is no
    // absent slot, helper-127).
    env.run(fast(&["lock", &name, "--slots", &n.to_string()], &["true"])).assert_code(0);
    // Every other slot's read fails (503), so that its reads are retried while slot 0 is acquired.
    for i in 1..n {
        server.fail_next_on(&format!("get:{name}-{i}"), 1_000_000, 503);
    }
    server.set_latency(Duration::from_millis(300));
    let started = env.path("started");
    let script = format!("echo slot $MPSYNC_SLOT > {}; exec sleep 1000", started.display());
    let slots = n.to_string();
    let mut lock = env.spawn(fast(&["lock", &name, "--slots", &slots], &["sh", "-c", &script]));
    lock.wait_for_file(&started, "slot 0");
    let path0 = format!("/{name}-0");
    let updates_ok = |logs: &[crate::support::apiserver::RequestLog]| {
        logs.iter().filter(|r| r.verb == "update" && r.path.ends_with(&path0) && r.status == 200).count()
    };
    let before = updates_ok(&server.requests());
    // One renewal refused as a conflict: the holder must read slot 0, then renew.
    server.fail_next_on(&format!("update:{name}-0"), 1, 409);
    let renewed = server.wait_for_requests(
        |logs| {
            let refused = logs.iter().position(|r| r.verb == "update" && r.path.ends_with(&path0) && r.status == 409);
            refused.is_some_and(|at| {
                logs[at..].iter().any(|r| r.verb == "update" && r.path.ends_with(&path0) && r.status == 200)
            })
        },
        PATIENCE,
    );
    let gets0 = server.requests().iter().filter(|r| r.verb == "get" && r.path.ends_with(&path0)).count();
    let exited = lock.wait_for(Duration::from_millis(10));
    lock.signal(Signal::SIGTERM);
    let finished = lock.finish();
    assert!(
        renewed && exited.is_none(),
        "slot 0 not renewed after one 409 (renewals before: {before}; reads of slot 0: {gets0}; exited: {exited:?})\n{}",
        finished.stderr
    );
}

/// Found by review (helper-127): the marker of a 3-slot semaphore in use is deleted; a process told 2 slots comes while its one read
/// of slot 0 fails (503). It took the failed read for an absent slot and wrote the marker with 2: every
/// user of the real count was refused from then on. It must not fix the count at 2: the users of 3 go on.
#[test]
fn a_failed_read_of_a_slot_never_rewrites_a_deleted_marker_with_another_count() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let name = env.lease_name("marker-probe");
    let log = env.path("log");
    let gate = env.path("gate");
    let body = until_exists(&gate);
    let script = stamp_script(&log, &body);
    let a = env.spawn(fast(&["lock", &name, "--slots", "3"], &["sh", "-c", &script]));
    wait_until("A's child", || read_stamps(&log).iter().filter(|s| s.0 == "start").count() == 1);
    env.delete(&name);
    server.fail_next_on(&format!("get:{name}-0"), 1, 503);
    let refused = env.run(fast(&["lock", &name, "--slots", "2"], &["true"]));
    let marker = env.metadata(&name).and_then(|m| m.annotations).and_then(|mut a| a.remove("mpsync.io/slots"));
    let three = env.run(fast(&["lock", &name, "--slots", "3", "--no-wait"], &["true"]));
    fs::write(&gate, "").unwrap();
    a.finish().assert_code(0);
    eprintln!(
        "2: {:?}\n{}\nmarker now {marker:?}\n3: {:?}\n{}",
        refused.code, refused.stderr, three.code, three.stderr
    );
    refused.assert_code(125);
    assert!(marker.as_deref() != Some("2"), "the marker was rewritten with 2 slots");
    three.assert_code(0);
}

/// From review (helper-141): an etcd restore under a full semaphore, to a snapshot taken before the semaphore existed
/// (`absent`) or while one of its slots was still free: the waiter of the semaphore must not start its
/// child while a holder's child still runs (each holder learns of the restore only at its next renewal).
fn restore_under_a_full_semaphore(absent: bool) {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let name = env.lease_name("sem-restore");
    let log = env.path("log");
    let pids = env.path("pids");
    let gate = env.path("gate");
    let script = watched_child(&log, &pids, &gate);
    let starts = || read_stamps(&log).iter().filter(|s| s.0 == "start").count();
    let snapshot_before = absent.then(|| server.snapshot());
    let a = env.spawn(fast(&["lock", &name, "--slots", "2", "--identity", "ay"], &["sh", "-c", &script]));
    wait_until("A's child", || starts() == 1);
    let snapshot = snapshot_before.unwrap_or_else(|| server.snapshot());
    let b = env.spawn(fast(&["lock", &name, "--slots", "2", "--identity", "bee"], &["sh", "-c", &script]));
    wait_until("both slots in use", || starts() == 2);
    // Restored to before it existed, both holds are gone; restored to A alone, A's hold is its own (it
    // goes on: running beside it is what the second slot is for) and B's is gone.
    let lost = if absent { vec![a.pid(), b.pid()] } else { vec![b.pid()] };
    let victims: Vec<String> = lost
        .iter()
        .map(|pid| fs::read_to_string(format!("{}.{pid}", pids.display())).expect("a child's pid"))
        .collect();
    fs::write(format!("{}.victim", pids.display()), victims.concat()).unwrap();
    let w = env.spawn(fast(&["lock", &name, "--slots", "2", "--identity", "wait", "-v"], &["sh", "-c", &script]));
    wait_until("W to wait", || w.stderr().contains("waiting"));
    let renewed = |slot: &str| env.get(slot).and_then(|(_, spec)| spec.renew_time);
    for slot in [format!("{name}-0"), format!("{name}-1")] {
        for _ in 0..2 {
            let before = renewed(&slot);
            wait_until("a renewal", || renewed(&slot) != before);
        }
    }
    server.restore(&snapshot);
    wait_until("W's child", || starts() == 3);
    fs::write(&gate, "").unwrap();
    let (a, b, w) = (a.finish(), b.finish(), w.finish());
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("overlap"),
        "W's child started beside a holder's after the restore:\n{text}\nA {:?}:\n{}\nB {:?}:\n{}\nW:\n{}",
        a.code,
        a.stderr,
        b.code,
        b.stderr,
        w.stderr
    );
}

#[test]
fn restore_to_before_the_semaphore_existed_never_lets_a_waiter_in_beside_a_holder() {
    restore_under_a_full_semaphore(true);
}

#[test]
fn restore_to_a_free_slot_never_lets_a_waiter_in_beside_a_holder() {
    restore_under_a_full_semaphore(false);
}

both_backends!(
    a_dead_plain_holders_expired_record_on_a_slot_name_becomes_a_slot,
    a_dead_plain_holders_expired_record_on_the_marker_name_becomes_the_marker,
    a_renewing_plain_holder_on_the_marker_name_keeps_the_semaphore_out,
    a_plain_lock_on_a_live_semaphores_untaken_slot_name_is_refused,
    observe_given_fewer_slots_before_first_use_reports_every_recorded_slot,
    observe_follows_a_semaphore_recreated_with_more_slots,
    status_of_a_marker_recording_more_than_1000_slots_names_no_flag_never_given,
    one_identity_on_two_slots_is_a_warning_per_slot_not_a_collision,
);

/// A plain `lock NAME` whose mpsync is SIGKILLed (its guard kills the child; nothing releases the record).
fn dead_plain_holder(env: &TestEnv, name: &str) {
    let log = env.path(&format!("{name}.log"));
    let plain = env.spawn(fast(&["lock", name], &["sh", "-c", &stamp_script(&log, "sleep 100")]));
    wait_for_file(&log, "start");
    plain.signal(Signal::SIGKILL);
    plain.finish();
}

/// From review (helper-162): a dead plain holder's record on a slot name refused the semaphore for ever,
/// long after it expired ("a plain lease of that name is held by ..."). It is waited out, as any holder,
/// and then becomes a slot; a plain lock of that name is refused from then on.
fn a_dead_plain_holders_expired_record_on_a_slot_name_becomes_a_slot(env: &TestEnv) {
    let name = env.lease_name("pool");
    let slot1 = format!("{name}-1");
    dead_plain_holder(env, &slot1);
    // One attempt does not wait it out, as for any holder.
    let ran = env.path("ran");
    let once = env.run(fast(&["lock", &name, "--slots", "2", "--no-wait"], &["touch", ran.to_str().unwrap()]));
    once.assert_code(124);
    assert!(!ran.exists(), "{}", once.stderr);
    let user = env.run(fast(&["lock", &name, "--slots", "2", "--timeout", "20s"], &["true"]));
    user.assert_code(0);
    // Both slots used at once: the plain record's name is a slot now.
    let gate = env.path("gate");
    let mut holders = Vec::new();
    for i in 0..2 {
        let log = env.path(&format!("log{i}"));
        holders.push(env.spawn(fast(
            &["lock", &name, "--slots", "2", "--timeout", "20s"],
            &["sh", "-c", &stamp_script(&log, &until_exists(&gate))],
        )));
        wait_for_file(&log, "start");
    }
    let plain = env.run(fast(&["lock", &slot1, "--no-wait"], &["true"]));
    fs::write(&gate, "").unwrap();
    for holder in holders {
        holder.finish().assert_code(0);
    }
    plain.assert_code(125);
}

/// The same on the marker's name: a dead plain holder's record of NAME is waited out, then marked.
fn a_dead_plain_holders_expired_record_on_the_marker_name_becomes_the_marker(env: &TestEnv) {
    let name = env.lease_name("pool");
    dead_plain_holder(env, &name);
    env.run(fast(&["lock", &name, "--slots", "2", "--no-wait"], &["true"])).assert_code(124);
    let user = env.run(fast(&["lock", &name, "--slots", "2", "--timeout", "20s"], &["true"]));
    user.assert_code(0);
    let plain = env.run(fast(&["lock", &name, "--no-wait"], &["true"]));
    plain.assert_code(125);
    assert!(plain.stderr.contains("belongs to a semaphore of 2 slots"), "{}", plain.stderr);
}

/// A plain holder of NAME that keeps renewing keeps the semaphore NAME out (125), however long it runs.
fn a_renewing_plain_holder_on_the_marker_name_keeps_the_semaphore_out(env: &TestEnv) {
    let name = env.lease_name("pool");
    let (gate, log) = (env.path("gate"), env.path("log"));
    let plain = env.spawn(fast(&["lock", &name], &["sh", "-c", &stamp_script(&log, &until_exists(&gate))]));
    wait_for_file(&log, "start");
    let ran = env.path("ran");
    let user = env.run(fast(&["lock", &name, "--slots", "2"], &["touch", ran.to_str().unwrap()]));
    fs::write(&gate, "").unwrap();
    plain.finish().assert_code(0);
    user.assert_code(125);
    assert!(!ran.exists(), "the semaphore's child ran beside the plain holder");
    assert!(user.stderr.contains("plain lease of that name is held"), "{}", user.stderr);
    assert!(user.stderr.lines().count() <= 2, "{}", user.stderr);
}

/// From review (helper-162): a plain `lock pool-1` on the live semaphore `pool`'s slot 1, never taken yet,
/// was accepted, and then every user of the semaphore exited 125 while it ran. It is refused, as `lock
/// pool-0 --slots 3` is.
fn a_plain_lock_on_a_live_semaphores_untaken_slot_name_is_refused(env: &TestEnv) {
    let name = env.lease_name("pool");
    env.run(fast(&["lock", &name, "--slots", "2"], &["true"])).assert_code(0);
    let slot1 = format!("{name}-1");
    let ran = env.path("ran");
    for head in [&["lock", &slot1, "--no-wait"][..], &["elect", &slot1][..]] {
        let command = head[0];
        let plain = env.run(fast(head, &["touch", ran.to_str().unwrap()]));
        plain.assert_code(125);
        assert!(plain.stderr.contains(&format!("slot 1 of the semaphore {name}")), "{command}: {}", plain.stderr);
        assert!(plain.stderr.lines().count() <= 2, "{}", plain.stderr);
    }
    assert!(!ran.exists(), "a plain lock ran on a semaphore's slot");
    env.run(fast(&["lock", &name, "--slots", "2", "--no-wait"], &["true"])).assert_code(0);
}

/// Three holders of the 3-slot semaphore `name`, each running until `gate` exists.
fn three_holders(env: &TestEnv, name: &str, gate: &std::path::Path) -> Vec<Proc> {
    let mut holders = Vec::new();
    for i in 0..3 {
        let log = env.path(&format!("log{i}"));
        holders.push(
            env.spawn(fast(&["lock", name, "--slots", "3"], &["sh", "-c", &stamp_script(&log, &until_exists(gate))])),
        );
        wait_for_file(&log, "start");
    }
    holders
}

/// Three holders of the 3-slot semaphore `name` start while `observe` (of `name`) runs; it must report
/// slot 2 held.
fn observe_reports_slot_2_of_three_holders(env: &TestEnv, name: &str, observe: Proc) {
    let gate = env.path("gate");
    let holders = three_holders(env, name, &gate);
    let saw_slot_2 =
        within_patience(|| observe.stdout().lines().any(|l| l.contains("\"slot\":2") && l.contains("\"held\":true")));
    fs::write(&gate, "").unwrap();
    for holder in holders {
        holder.finish().assert_code(0);
    }
    observe.signal(Signal::SIGTERM);
    let observed = observe.finish();
    assert!(saw_slot_2, "observe never reported slot 2:\n{}\n{}", observed.stdout, observed.stderr);
}

/// From review (helper-162): `observe pool --slots 2` started before the semaphore's first use, which is
/// then used with 3 slots, never reported slot 2 (the count the marker records wins).
fn observe_given_fewer_slots_before_first_use_reports_every_recorded_slot(env: &TestEnv) {
    let name = env.lease_name("pool");
    let observe = env.spawn(["observe", &name, "--slots", "2", "-o", "json"]);
    wait_until("observe's first lines", || observe.stdout().lines().count() >= 2);
    observe_reports_slot_2_of_three_holders(env, &name, observe);
}

/// From review (helper-162): `observe pool` on a 2-slot semaphore, whose Leases are then deleted and which
/// is used again with 3 slots (README, "Changing N"), never reported slot 2.
fn observe_follows_a_semaphore_recreated_with_more_slots(env: &TestEnv) {
    let name = env.lease_name("pool");
    env.run(fast(&["lock", &name, "--slots", "2"], &["true"])).assert_code(0);
    let observe = env.spawn(["observe", &name, "-o", "json"]);
    wait_until("observe's first lines", || observe.stdout().lines().count() >= 2);
    for lease in [name.clone(), format!("{name}-0"), format!("{name}-1")] {
        env.delete(&lease);
    }
    observe_reports_slot_2_of_three_holders(env, &name, observe);
}

/// From review (helper-162): a marker recording 5000 slots made `status NAME` (no `--slots`) say "--slots
/// must be between 1 and 1000, not 5000", of a flag never given.
fn status_of_a_marker_recording_more_than_1000_slots_names_no_flag_never_given(env: &TestEnv) {
    let name = env.lease_name("huge");
    env.put_slot(&name, 5000, TestEnv::foreign_record("", 1));
    for command in ["status", "observe"] {
        let done = env.run([command, &name]);
        done.assert_code(125);
        assert!(!done.stderr.contains("--slots"), "{command}: {}", done.stderr);
        assert!(
            done.stderr.contains(&format!("semaphore {name} records 5000 slots")) && done.stderr.contains("(1000)"),
            "{command}: {}",
            done.stderr
        );
        assert!(done.stderr.lines().count() <= 2, "{}", done.stderr);
    }
    // Found by review (helper-172): a marker of a 250-character name recording 1000 slots, whose last slot's
    // name would be 254 characters: named by the count it records, not a --slots never given; and an
    // observe that watched the name before the marker appeared ends with it (it retried for ever, silent).
    let base = env.lease_name("long");
    let long = format!("{base}{}", "x".repeat(250 - base.len()));
    let observe = env.spawn(["observe", &long, "-o", "json"]);
    wait_until("observe's first line", || observe.stdout().lines().count() >= 1);
    env.put_slot(&long, 1000, TestEnv::foreign_record("", 1));
    let observed = observe.finish();
    let done = env.run(["status", &long]);
    for done in [done, observed] {
        done.assert_code(125);
        assert!(!done.stderr.contains("--slots"), "{}", done.stderr);
        assert!(done.stderr.contains("for the 1000 slots that semaphore"), "{}", done.stderr);
    }
}

/// From review (helper-162): two processes given one `--identity` on a semaphore: the second logged the
/// ERROR "identity collision ... never running beside it" of slot 0, then ran on slot 1 (safe: exclusion
/// is per slot). Said per slot, as a warning.
fn one_identity_on_two_slots_is_a_warning_per_slot_not_a_collision(env: &TestEnv) {
    let name = env.lease_name("pool");
    let (gate, log) = (env.path("gate"), env.path("log"));
    let first = env.spawn(fast(
        &["lock", &name, "--slots", "2", "--identity", "same"],
        &["sh", "-c", &stamp_script(&log, &until_exists(&gate))],
    ));
    wait_for_file(&log, "start");
    let second = env.run(fast(&["lock", &name, "--slots", "2", "--identity", "same", "--no-wait"], &["true"]));
    fs::write(&gate, "").unwrap();
    first.finish().assert_code(0);
    second.assert_code(0);
    assert!(
        !second.stderr.contains("ERROR") && !second.stderr.contains("never running beside it"),
        "{}",
        second.stderr
    );
    assert!(second.stderr.contains("slot 0 is held under this identity by another process"), "{}", second.stderr);
}

both_backends!(a_plain_hold_deleted_or_made_free_while_waited_out_is_still_waited_out);

/// Found by review (helper-172): a semaphore waits out a plain lease's hold on its marker's name or a slot's
/// name (366b544); the record is then deleted, or made free by hand (a "force unlock"), before its holder's
/// child has ended. The marker was written at once, or another slot taken, and the semaphore's child ran
/// beside the plain holder's. It is waited out now, as a plain waiter waits out the same edits.
fn a_plain_hold_deleted_or_made_free_while_waited_out_is_still_waited_out(env: &TestEnv) {
    for (on_slot, delete) in [(false, true), (false, false), (true, true), (true, false)] {
        let name = env.lease_name("plain-tamper");
        let held = if on_slot { format!("{name}-0") } else { name.clone() };
        let log = env.path(&env.lease_name("log"));
        // The plain holder renews every 3 s: the semaphore sees its record unchanged between two renewals.
        // Its child takes half a second of its grace to end.
        let holder = env.spawn(
            ["lock", held.as_str(), "--lease-duration", "9s", "--renew-deadline", "6s", "--retry-period", "3s"]
                .into_iter()
                .chain(["--", "sh", "-c", &draining_script(&log, "0.5")]),
        );
        wait_for_file(&log, "start");
        let semaphore =
            env.spawn(fast(&["lock", &name, "--slots", "2", "-v"], &["sh", "-c", &stamp_script(&log, "true")]));
        wait_until("the semaphore to wait the plain hold out", || semaphore.stderr().contains("waiting it out"));
        match delete {
            true => env.delete(&held),
            false => env.edit(&held, |spec| spec.holder_identity = None),
        }
        // The plain holder stops its child at its next renewal (123); the semaphore's runs after it.
        let holder = holder.finish();
        holder.assert_code(123);
        let semaphore = semaphore.finish();
        semaphore.assert_code(0);
        assert_eq!(
            max_concurrency(&log),
            1,
            "slot name {on_slot}, deleted {delete}: the semaphore's child ran beside the plain holder's: {:?}\nholder:\n{}\nsemaphore:\n{}",
            read_stamps(&log),
            holder.stderr,
            semaphore.stderr
        );
    }
}

both_backends!(
    a_marker_written_by_another_over_a_hold_seen_gone_does_not_end_the_wait,
    a_plain_hold_on_a_slot_name_that_ended_leaves_the_semaphore_its_slots,
);

/// Found by review (helper-174): S1 waits out a plain lease's hold on the marker's name, sees it deleted or
/// made free by hand, and waits on; S2, which never saw the hold, writes the marker (as the README allows).
/// S1 took that marker for settled and ran its child beside the plain holder's.
fn a_marker_written_by_another_over_a_hold_seen_gone_does_not_end_the_wait(env: &TestEnv) {
    for delete in [true, false] {
        let name = env.lease_name("seen-gone");
        let (plog, log) = (env.path(&env.lease_name("plog")), env.path(&env.lease_name("log")));
        let holder = env.spawn(
            ["lock", name.as_str(), "--lease-duration", "12s", "--renew-deadline", "8s", "--retry-period", "4s"]
                .into_iter()
                .chain(["--", "sh", "-c", &draining_script(&plog, "0.5")]),
        );
        wait_for_file(&plog, "start");
        let s1 = env.spawn(fast(&["lock", &name, "--slots", "2", "-v"], &["sh", "-c", &stamp_script(&log, "true")]));
        wait_until("S1 to wait the plain hold out", || s1.stderr().contains("waiting it out"));
        match delete {
            true => env.delete(&name),
            false => env.edit(&name, |spec| spec.holder_identity = None),
        }
        wait_until("S1 to see it gone", || s1.stderr().contains("deleted or made free by hand"));
        let s2 = env.run(fast(&["lock", &name, "--slots", "2"], &["true"]));
        let s1 = s1.finish();
        // With the file backend, S2's create put the deleted record back (its holder is waited out): the
        // plain holder renews on, and both semaphore processes refuse (125). Ended here, then.
        let mut holder = holder;
        if holder.wait_for(Duration::ZERO).is_none() && s1.code == Some(125) {
            holder.signal(Signal::SIGTERM);
        }
        let holder = holder.finish();
        let ended = read_stamps(&plog).iter().find(|s| s.0 == "end").map(|s| s.1);
        let started = read_stamps(&log).iter().find(|s| s.0 == "start").map(|s| s.1);
        assert!(
            started.is_none_or(|started| ended.is_some_and(|ended| started > ended)),
            "delete {delete}: S1 started at {started:?}, the plain holder's child ended at {ended:?}\nS1:\n{}\nS2:\n{}\nholder:\n{}",
            s1.stderr,
            s2.stderr,
            holder.stderr
        );
    }
}

/// Found by review (helper-174): after a plain lease's hold on slot 0's name ended (released, or a dead
/// holder's record expired), three processes of a 2-slot semaphore: while one of them held slot 0, the
/// third could not take slot 1 when it was freed (the semaphore acted as a mutex until slot 0 was let go).
fn a_plain_hold_on_a_slot_name_that_ended_leaves_the_semaphore_its_slots(env: &TestEnv) {
    for dead in [false, true] {
        let name = env.lease_name("third");
        let slot0 = format!("{name}-0");
        let (plog, pgate) = (env.path(&env.lease_name("plog")), env.path(&env.lease_name("pgate")));
        let (log, gate) = (env.path(&env.lease_name("log")), env.path(&env.lease_name("gate")));
        // A live holder renews no sooner than the release: a renewal seen while waited out refuses the
        // semaphore (125), as a loaded machine's slow start showed (helper-180).
        let timing: &[&str] = match dead {
            true => &["--lease-duration", "4s", "--renew-deadline", "2s", "--retry-period", "500ms"],
            false => &["--lease-duration", "60s", "--renew-deadline", "40s", "--retry-period", "30s"],
        };
        let script = stamp_script(&plog, &until_exists(&pgate));
        let holder = env.spawn(["lock", slot0.as_str()].iter().chain(timing).chain(&["--", "sh", "-c", &script]));
        wait_for_file(&plog, "start");
        if dead {
            holder.signal(Signal::SIGKILL);
        }
        // Each child waits for its own slot's gate.
        let body = format!("while [ ! -e {}-$MPSYNC_SLOT ]; do sleep 0.05; done", gate.display());
        let script = stamp_script(&log, &body);
        let semaphore: Vec<Proc> =
            (0..3).map(|_| env.spawn(fast(&["lock", &name, "--slots", "2", "-v"], &["sh", "-c", &script]))).collect();
        for process in &semaphore {
            wait_until("the semaphore to wait the plain hold out", || process.stderr().contains("waiting it out"));
        }
        fs::write(&pgate, "").unwrap();
        holder.finish();
        let starts = || read_stamps(&log).iter().filter(|s| s.0 == "start").count();
        wait_until("two slots in use", || starts() == 2);
        fs::write(format!("{}-1", gate.display()), "").unwrap();
        // The third takes slot 1 at once; only if it cannot does the wait time out.
        let third = within_patience(|| starts() == 3);
        fs::write(format!("{}-0", gate.display()), "").unwrap();
        let done: Vec<Finished> = semaphore.into_iter().map(Proc::finish).collect();
        assert!(
            third,
            "dead {dead}: the third never took the freed slot 1 while slot 0 was held: {:?}",
            read_stamps(&log)
        );
        for done in done {
            done.assert_code(0);
        }
    }
}

/// Found by review (helper-174): on the file backend, a semaphore's marker created over a plain lease's
/// record deleted by hand (`rm NAME.json`) under its live holder puts that record back, with the semaphore's
/// count: the semaphore took it for its marker and ran its child beside the plain holder's, which renewed
/// on. A live record is never a marker: the semaphore waits that holder out, and refuses (125) as it renews.
#[test]
fn a_marker_put_back_over_a_live_plain_hold_is_no_marker() {
    let env = TestEnv::file();
    let name = env.lease_name("put-back");
    let (plog, log) = (env.path("plog"), env.path("log"));
    let holder = env.spawn(fast(&["lock", &name], &["sh", "-c", &draining_script(&plog, "0.2")]));
    wait_for_file(&plog, "start");
    env.delete(&name);
    let semaphore = env.run(fast(&["lock", &name, "--slots", "2", "-v"], &["sh", "-c", &stamp_script(&log, "true")]));
    holder.signal(Signal::SIGTERM);
    let holder = holder.finish();
    assert!(read_stamps(&log).is_empty(), "the semaphore's child ran beside the plain holder's:\n{}", semaphore.stderr);
    semaphore.assert_code(125);
    assert!(holder.stderr.is_empty() || !holder.stderr.contains("panicked"), "{}", holder.stderr);
}

/// A child that stamps `start NANOS SLOT` and `end NANOS SLOT` around `body`.
fn slot_script(log: &std::path::Path, body: &str) -> String {
    let log = log.display();
    format!("echo start $(date +%s%N) $MPSYNC_SLOT >> {log}; {body}; echo end $(date +%s%N) $MPSYNC_SLOT >> {log}")
}

/// The time of the first stamp `word` in `log`.
fn first_stamp(log: &std::path::Path, word: &str) -> Option<u128> {
    read_stamps(log).iter().find(|s| s.0 == word).map(|s| s.1)
}

both_backends!(
    a_plain_hold_on_a_slot_name_seen_gone_is_waited_out_when_another_process_takes_that_slot,
    a_released_plain_hold_on_the_marker_name_ends_the_semaphores_wait_at_once,
);

/// Found by review (helper-175): S1 waits out a plain lease's hold on slot 0's name and sees it deleted or
/// made free by hand under its live holder; S2, which never saw the hold, then takes slot 0. S1 took that
/// for the end of the wait and ran its child on slot 1 at once, beside the plain holder's (which ran on
/// until its next renewal). The hold is waited out a full duration from when it was seen gone.
fn a_plain_hold_on_a_slot_name_seen_gone_is_waited_out_when_another_process_takes_that_slot(env: &TestEnv) {
    for delete in [true, false] {
        let name = env.lease_name("gone");
        let slot0 = format!("{name}-0");
        let (plog, log1) = (env.path(&env.lease_name("plog")), env.path(&env.lease_name("log1")));
        let (log2, gate2) = (env.path(&env.lease_name("log2")), env.path(&env.lease_name("gate2")));
        // The plain holder renews every 4 s: it runs on for up to that long after the edit.
        let holder = env.spawn(
            ["lock", slot0.as_str(), "--lease-duration", "12s", "--renew-deadline", "8s", "--retry-period", "4s"]
                .into_iter()
                .chain(["--", "sh", "-c", &draining_script(&plog, "0.5")]),
        );
        wait_for_file(&plog, "start");
        let s1 = env.spawn(fast(&["lock", &name, "--slots", "2", "-v"], &["sh", "-c", &slot_script(&log1, "true")]));
        wait_until("S1 to wait the plain hold out", || s1.stderr().contains("waiting it out"));
        match delete {
            true => env.delete(&slot0),
            false => env.edit(&slot0, |spec| spec.holder_identity = None),
        }
        wait_until("S1 to see it gone", || s1.stderr().contains("waiting out the hold it had"));
        let s2 = env
            .spawn(fast(&["lock", &name, "--slots", "2"], &["sh", "-c", &slot_script(&log2, &until_exists(&gate2))]));
        let (mut holder, mut s1) = (holder, s1);
        // With the file backend, S2's create of a slot deleted under its live holder puts the holder's record
        // back: the holder renews on, and S1 and S2 refuse it (125). Ended here, then.
        let limit = std::time::Instant::now() + Duration::from_secs(25);
        while std::time::Instant::now() < limit
            && (holder.wait_for(Duration::ZERO).is_none() || s1.wait_for(Duration::ZERO).is_none())
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        if holder.wait_for(Duration::ZERO).is_none() {
            holder.signal(Signal::SIGTERM);
        }
        let holder = holder.finish();
        fs::write(&gate2, "").unwrap();
        let (s1, s2) = (s1.finish(), s2.finish());
        let (started, ended) = (first_stamp(&log1, "start"), first_stamp(&plog, "end"));
        assert!(
            started.is_none_or(|started| ended.is_some_and(|ended| started > ended)),
            "delete {delete}: S1 started at {started:?} (slot {:?}), the plain holder's child ended at {ended:?}\nS1:\n{}\nS2:\n{}\nholder:\n{}",
            read_stamps(&log1).first().and_then(|s| s.2),
            s1.stderr,
            s2.stderr,
            holder.stderr
        );
    }
}

/// Found by review (helper-175): a plain holder of NAME that ends properly (its release written) while a
/// semaphore waits it out. The semaphore marked the released record, then took its own marker, read back,
/// for another's written over a hold seen gone, and waited a full lease duration more. A release ends the
/// wait: the semaphore runs within a few retry periods.
fn a_released_plain_hold_on_the_marker_name_ends_the_semaphores_wait_at_once(env: &TestEnv) {
    let name = env.lease_name("rel");
    let (plog, log, gate) = (env.path("plog"), env.path("log"), env.path("gate"));
    let holder = env.spawn(fast(&["lock", &name], &["sh", "-c", &stamp_script(&plog, &until_exists(&gate))]));
    wait_for_file(&plog, "start");
    let semaphore = env.spawn(
        ["lock", name.as_str(), "--slots", "2", "-v", "--lease-duration", "20s", "--renew-deadline", "14s"]
            .into_iter()
            .chain(["--retry-period", "1s", "--", "sh", "-c", &stamp_script(&log, "true")]),
    );
    wait_until("the semaphore to wait the plain hold out", || semaphore.stderr().contains("waiting it out"));
    fs::write(&gate, "").unwrap();
    holder.finish().assert_code(0);
    let released_at = std::time::Instant::now();
    wait_for_file(&log, "start");
    let took = released_at.elapsed();
    let semaphore = semaphore.finish();
    semaphore.assert_code(0);
    assert!(took < Duration::from_secs(10), "the semaphore started {took:?} after a release:\n{}", semaphore.stderr);
}

/// Found by review (helper-175): with the file backend, a plain lease's record on slot 0's name deleted by
/// hand (`rm NAME-0.json`) under its live holder, then put back by a semaphore's create of slot 0, which
/// gave it the create's count: the semaphore took the plain holder for another process's hold of slot 0,
/// and ran its child on slot 1 beside the plain holder's, which renewed on. Put back, the record stays a
/// plain lease's: the semaphore waits it out, and refuses (125) as its holder renews it.
#[test]
fn a_plain_hold_put_back_on_a_slot_name_is_no_slot() {
    let env = TestEnv::file();
    let name = env.lease_name("put-back");
    let slot0 = format!("{name}-0");
    let (plog, log) = (env.path("plog"), env.path("log"));
    let holder = env.spawn(fast(&["lock", &slot0], &["sh", "-c", &draining_script(&plog, "0.2")]));
    wait_for_file(&plog, "start");
    env.delete(&slot0);
    let semaphore = env.run(fast(
        &["lock", &name, "--slots", "2", "-v", "--timeout", "20s"],
        &["sh", "-c", &slot_script(&log, "true")],
    ));
    let annotations = env.metadata(&slot0).and_then(|m| m.annotations).unwrap_or_default();
    let mut holder = holder;
    let holder_ran_on = holder.wait_for(Duration::ZERO).is_none();
    holder.signal(Signal::SIGTERM);
    let holder = holder.finish();
    assert!(read_stamps(&log).is_empty(), "the semaphore's child ran beside the plain holder's:\n{}", semaphore.stderr);
    semaphore.assert_code(125);
    assert!(holder_ran_on, "the plain holder lost its lease:\n{}", holder.stderr);
    assert!(!annotations.contains_key("mpsync.io/slots"), "{annotations:?}");
}

both_backends!(a_deleted_marker_is_written_again_only_with_the_count_past_a_plain_record_on_a_slot_name);

/// `lock NAME --slots ours --no-wait` on a semaphore whose marker is missing, beside slots that record
/// `recorded`: refused (125, naming that count), and the marker not written, which would lock their users out.
#[track_caller]
fn refused_for_the_recorded_count(env: &TestEnv, name: &str, ours: u32, recorded: u32) {
    let refused = env.run(fast(&["lock", name, "--slots", &ours.to_string(), "--no-wait"], &["true"]));
    let marker = env.metadata(name).and_then(|m| m.annotations);
    assert!(marker.is_none(), "the marker was written with {ours}, beside slots of {recorded}: {marker:?}");
    refused.assert_code(125);
    assert!(refused.stderr.contains(&format!("{recorded} slots")), "{}", refused.stderr);
}

/// Found by review (helper-175): a 3-slot semaphore whose marker was deleted while slot 1 is held; slot 0's
/// name holds a plain lease's free record (no count). Its count was read from the first record found,
/// slot 0's, which has none: `--slots 2` wrote the marker "2", and every user of 3 was refused from then
/// on. The records past it are read: `--slots 2` is refused (125), the marker is not written, and `--slots
/// 3` runs on slot 0.
fn a_deleted_marker_is_written_again_only_with_the_count_past_a_plain_record_on_a_slot_name(env: &TestEnv) {
    let name = env.lease_name("probe");
    let mut free = TestEnv::foreign_record("", 1);
    free.holder_identity = None;
    env.put(&format!("{name}-0"), free);
    env.put_slot(&format!("{name}-1"), 3, TestEnv::foreign_record("someone", 30));
    refused_for_the_recorded_count(env, &name, 2, 3);
    env.run(fast(&["lock", &name, "--slots", "3", "--no-wait"], &["true"])).assert_code(0);
}

both_backends!(a_deleted_marker_is_written_again_only_with_the_count_of_a_slot_past_the_count_given);

/// Found by review (rv250): a 3-slot semaphore whose marker was deleted (with slots 0 and 1: a clean-up half
/// done) while slot 2 is held. A process told `--slots 2` read only slots 0 and 1 (the first of its own
/// count, not the first eight), found neither, and wrote the marker "2": it ran its child beside slot 2's,
/// and every user of 3 was refused from then on. The first eight slots are read whatever the count given:
/// `--slots 2` is refused (125), the marker is not written, and `--slots 3` runs.
fn a_deleted_marker_is_written_again_only_with_the_count_of_a_slot_past_the_count_given(env: &TestEnv) {
    let name = env.lease_name("probe-past");
    env.put_slot(&format!("{name}-2"), 3, TestEnv::foreign_record("someone", 30));
    refused_for_the_recorded_count(env, &name, 2, 3);
    env.run(fast(&["lock", &name, "--slots", "3", "--no-wait"], &["true"])).assert_code(0);
}

both_backends!(a_deleted_marker_is_written_again_only_with_the_count_of_a_slot_past_the_probes);

/// Found by review (rv273): a 10-slot semaphore whose marker was deleted with its free slots 0 to 7 (`kubectl
/// delete lease`) while slots 8 and 9 are held. The first eight slots were read for a count, none was found,
/// and `--slots 2` wrote the marker "2" and ran two children beside the two of 10; every user of 10 was refused
/// from then on. Past the probes the namespace's Leases are listed: `--slots 2` is refused (125), the marker
/// is not written, and `--slots 10` runs.
fn a_deleted_marker_is_written_again_only_with_the_count_of_a_slot_past_the_probes(env: &TestEnv) {
    let name = env.lease_name("probe-list");
    env.put_slot(&format!("{name}-9"), 10, TestEnv::foreign_record("someone", 30));
    refused_for_the_recorded_count(env, &name, 2, 10);
    env.run(fast(&["lock", &name, "--slots", "10", "--no-wait"], &["true"])).assert_code(0);
}

both_backends!(a_deleted_markers_count_is_not_read_from_another_semaphores_marker);

/// Found by review (rv275): rv273's semaphore of 10 (marker and slots 0 to 7 deleted, slots 8 and 9 held),
/// and an unrelated semaphore `NAME-12` of 3 slots, which mpsync accepts (NAME has no marker). The listed
/// Leases are sorted by name ("NAME-12" first), and the first `NAME-i` with a count was taken: `--slots 3`
/// wrote NAME's marker with 3 and ran its child beside the two of 10. `NAME-12` of 3 is no slot (12 >= 3).
fn a_deleted_markers_count_is_not_read_from_another_semaphores_marker(env: &TestEnv) {
    let name = env.lease_name("list-marker");
    env.put_slot(&format!("{name}-8"), 10, TestEnv::foreign_record("someone", 30));
    env.put_slot(&format!("{name}-9"), 10, TestEnv::foreign_record("someone-else", 30));
    env.run(fast(&["lock", &format!("{name}-12"), "--slots", "3", "--no-wait"], &["true"])).assert_code(0);
    refused_for_the_recorded_count(env, &name, 3, 10);
}

both_backends!(semaphores_named_like_slots_of_a_new_one_do_not_refuse_it);

/// Found by review (rv275), in plain use, nothing deleted: semaphores `NAME-2026` of 4 slots (a dated name),
/// and `NAME-5` of 10, first used before `NAME` of 2. Their markers record a count, and their names parse as
/// slots of NAME: `lock NAME --slots 2` exited 125 ("a semaphore of 4 slots"), for ever. No semaphore of 4
/// has a slot 2026; `NAME-5`'s marker was never held, and has slots of its own.
fn semaphores_named_like_slots_of_a_new_one_do_not_refuse_it(env: &TestEnv) {
    let name = env.lease_name("dated");
    env.run(fast(&["lock", &format!("{name}-2026"), "--slots", "4", "--no-wait"], &["true"])).assert_code(0);
    env.run(fast(&["lock", &format!("{name}-5"), "--slots", "10", "--no-wait"], &["true"])).assert_code(0);
    env.run(fast(&["lock", &name, "--slots", "2", "--no-wait"], &["true"])).assert_code(0);
}

both_backends!(a_deleted_markers_count_is_not_read_from_a_marker_written_over_a_once_used_plain_lease);

/// Found by review (rv276): the same as the last two, with the semaphore `NAME-1` of 3 first used as a plain
/// lease (its marker keeps the released record's `renewTime`, so it looked held once): read by the eight
/// probes, which never looked for slots of its own, as slot 1 of NAME. Beside slots 8 and 9 of 10, `--slots 3`
/// wrote NAME's marker with 3 and ran its child. The namespace's Leases are listed first, and `NAME-1-0`, of
/// 3, shows `NAME-1` a marker.
fn a_deleted_markers_count_is_not_read_from_a_marker_written_over_a_once_used_plain_lease(env: &TestEnv) {
    let name = env.lease_name("plain-marker");
    env.put_slot(&format!("{name}-8"), 10, TestEnv::foreign_record("someone", 30));
    env.put_slot(&format!("{name}-9"), 10, TestEnv::foreign_record("someone-else", 30));
    env.run(fast(&["lock", &format!("{name}-1"), "--no-wait"], &["true"])).assert_code(0);
    env.run(fast(&["lock", &format!("{name}-1"), "--slots", "3", "--no-wait"], &["true"])).assert_code(0);
    refused_for_the_recorded_count(env, &name, 3, 10);
}

both_backends!(a_held_slot_is_read_for_the_count_whatever_else_is_listed);

/// Found by review (rv276): slots 8 and 9 of 10 held, whose names were also used as semaphores of 10 of their
/// own (`NAME-8-0` and `NAME-9-0` remain): the list passed over them as markers "with slots of their own",
/// and `--slots 2` wrote the marker beside them. A held record is a slot: a marker is never held.
fn a_held_slot_is_read_for_the_count_whatever_else_is_listed(env: &TestEnv) {
    let name = env.lease_name("own-slots");
    env.put_slot(&format!("{name}-8-0"), 10, TestEnv::foreign_record("", 1));
    env.put_slot(&format!("{name}-9-0"), 10, TestEnv::foreign_record("", 1));
    env.put_slot(&format!("{name}-8"), 10, TestEnv::foreign_record("someone", 30));
    env.put_slot(&format!("{name}-9"), 10, TestEnv::foreign_record("someone-else", 30));
    let two = env.run(fast(&["lock", &name, "--slots", "2", "--no-wait"], &["true"]));
    let marker = env.metadata(&name).and_then(|m| m.annotations);
    assert!(marker.is_none(), "NAME's marker was written beside held slots of 10: {marker:?}\n{}", two.stderr);
    two.assert_code(125);
}

/// Found by review (rv278): listing forbidden (a Role with `resourceNames`), so the first eight slots are read.
/// Slot 5 of a semaphore of 10 is held; `NAME-1` is the free marker of a semaphore of 3 of its own (once a plain
/// lease: it keeps a `renewTime`, and a probe cannot see its own slots). The first count found, `NAME-1`'s 3,
/// was taken before slot 5 was read: `--slots 3` wrote NAME's marker and ran its child beside slot 5's holder.
/// Every probe is read, and a count other than ours refuses, as with listing allowed.
#[test]
fn a_held_slot_among_the_first_eight_is_read_where_listing_is_forbidden() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let name = env.lease_name("probe-order");
    env.put_slot(&format!("{name}-5"), 10, TestEnv::foreign_record("someone", 30));
    env.run(fast(&["lock", &format!("{name}-1"), "--no-wait"], &["true"])).assert_code(0);
    env.run(fast(&["lock", &format!("{name}-1"), "--slots", "3", "--no-wait"], &["true"])).assert_code(0);
    server.forbid("list");
    refused_for_the_recorded_count(&env, &name, 3, 10);
    server.allow("list");
    refused_for_the_recorded_count(&env, &name, 3, 10);
}

/// Found by review (rv278): a semaphore's first use in a namespace of many large Leases (1500 of 20 KB: 30 MB).
/// The list of the namespace was one call, bounded by the call timeout (600 ms here): it timed out every time,
/// and the free semaphore was never acquired (`--no-wait`: 124), while a plain lock was at once. It is read a
/// page at a time, as kubectl reads.
#[test]
fn a_semaphores_first_use_in_a_namespace_of_many_large_leases() {
    if TestEnv::real_cluster() {
        return;
    }
    let env = TestEnv::kube();
    let padding = "x".repeat(20_000);
    for i in 0..1500 {
        let annotations = [("example.com/state".to_string(), padding.clone())].into();
        let metadata = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            annotations: Some(annotations),
            ..Default::default()
        };
        env.create_with(&format!("other-{i}x"), metadata, TestEnv::foreign_record("", 1));
    }
    let timings = ["--lease-duration", "3s", "--renew-deadline", "1200ms", "--retry-period", "100ms"];
    let name = env.lease_name("big-namespace");
    let first =
        env.run([&["lock", name.as_str(), "--slots", "2", "--no-wait"][..], &timings, &["--", "true"]].concat());
    first.assert_code(0);
}

/// Found by review (rv280): a semaphore's first use lists the namespace's Leases, a page at a time; 2000 of them
/// (20 pages) on an API server answering in 700 ms. `--timeout 2s` answered after every page was read (8.5 s
/// for ten). A look at the marker ends by the deadline (or a call's time from its start): not acquired, 124,
/// within a few seconds of it.
#[test]
fn a_semaphores_first_use_keeps_its_timeout_however_many_pages_the_list_has() {
    if TestEnv::real_cluster() {
        return;
    }
    let env = TestEnv::kube();
    let server = env.server().unwrap();
    let name = env.lease_name("many-pages");
    for i in 0..2000 {
        env.put(&format!("{name}-other-x{i}"), TestEnv::foreign_record("", 1));
    }
    server.set_latency(Duration::from_millis(700));
    let done = env.run(fast(&["lock", &name, "--slots", "2", "--timeout", "2s"], &["true"]));
    server.set_latency(Duration::ZERO);
    done.assert_code(124);
    assert!(
        done.elapsed < Duration::from_secs(9),
        "`--timeout 2s` answered after {:?}:\n{}",
        done.elapsed,
        done.stderr
    );
}

/// Found by review (rv275): the list of Leases answered 401 once (an authentication webhook's hiccup, a token
/// being rotated) was taken for a refusal by RBAC, and `--slots 2` wrote the marker beside slots of 10. Only
/// the API server's 403 lets the first eight slots decide; here the marker is not written.
#[test]
fn a_list_answered_401_does_not_let_the_marker_be_written() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let name = env.lease_name("list-401");
    env.put_slot(&format!("{name}-8"), 10, TestEnv::foreign_record("someone", 30));
    env.put_slot(&format!("{name}-9"), 10, TestEnv::foreign_record("someone-else", 30));
    // Every answer 700 ms late: the list comes well after the marker's read is seen.
    server.set_latency(Duration::from_millis(700));
    let marker_path = format!("/{name}");
    let two = env.spawn(fast(&["lock", &name, "--slots", "2", "--no-wait"], &["true"]));
    wait_until("the marker's read", || {
        server.requests().iter().any(|r| r.verb == "get" && r.path.ends_with(&marker_path))
    });
    server.fail_next(1, 401);
    let two = two.finish();
    server.set_latency(Duration::ZERO);
    let lists: Vec<u16> = server.requests().iter().filter(|r| r.verb == "list").map(|r| r.status).collect();
    assert_eq!(lists.first(), Some(&401), "the 401 did not land on the list: {lists:?}");
    let marker = env.metadata(&name).and_then(|m| m.annotations);
    assert!(marker.is_none(), "a list answered 401 let --slots 2 write the marker: {marker:?}\n{}", two.stderr);
}

/// Where the API server forbids listing Leases (a Role with `resourceNames`), the first eight slots are read
/// for a deleted marker's count, with a warning: slot 2 of 3 held refuses `--slots 2`.
#[test]
fn a_deleted_markers_count_is_read_from_the_first_slots_where_listing_is_forbidden() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let name = env.lease_name("list-forbidden");
    env.put_slot(&format!("{name}-2"), 3, TestEnv::foreign_record("someone", 30));
    server.forbid("list");
    let two = env.run(fast(&["lock", &name, "--slots", "2", "--no-wait"], &["true"]));
    two.assert_code(125);
    assert!(two.stderr.contains("3 slots") && two.stderr.contains("cannot list Leases"), "{}", two.stderr);
    assert!(env.metadata(&name).is_none(), "the marker was written");
}

both_backends!(a_dead_plain_record_on_an_unused_slot_name_is_waited_out_once);

/// Found by review (helper-175): a dead plain holder's record on slot 1's name, a slot no one used. Each
/// user of the semaphore waited it out and then took slot 0, so the record stayed: every user waited a
/// lease duration before it started, and `--no-wait` never acquired (124), with slot 0 free. The record
/// waited out is the slot taken, a slot from then on.
fn a_dead_plain_record_on_an_unused_slot_name_is_waited_out_once(env: &TestEnv) {
    let name = env.lease_name("once");
    let slot1 = format!("{name}-1");
    dead_plain_holder(env, &slot1);
    let log = env.path("log");
    let first =
        env.run(fast(&["lock", &name, "--slots", "2", "--timeout", "20s"], &["sh", "-c", &slot_script(&log, "true")]));
    first.assert_code(0);
    assert_eq!(read_stamps(&log).first().and_then(|s| s.2), Some(1), "{}", first.stderr);
    let annotations = env.metadata(&slot1).and_then(|m| m.annotations).unwrap_or_default();
    assert_eq!(annotations.get("mpsync.io/slots").map(String::as_str), Some("2"));
    env.run(fast(&["lock", &name, "--slots", "2", "--no-wait"], &["true"])).assert_code(0);
}

both_backends!(
    another_processs_release_never_ends_the_wait_for_a_plain_hold_seen_gone,
    a_plain_hold_seen_gone_is_waited_out_without_a_release,
);

/// S1 waits out a plain holder P's hold on NAME-0 (P's child runs). NAME-0 is deleted (kube) or made free
/// by hand (both); S1 sees that and extends its wait to a full duration (README). S2 (never saw the hold)
/// takes slot 0 (slot 1 is held by another semaphore process), runs a short child, and releases slot 0
/// properly. Found by review (helper-184): S1 took that release for the plain holder's and ended its wait
/// at once: its child ran while
/// P's still ran (P learnt of its loss only at its next renewal). Slot 0's own elector still waits the
/// hand edit out, so S1 shows it on slot 1, given back by its holder meanwhile.
fn another_processs_release_never_ends_the_wait_for_a_plain_hold_seen_gone(env: &TestEnv) {
    released_after_seen_gone(env, true);
}

/// Control: the same without S2 (no release on slot 0's name): S1 waits the hold out (passes).
fn a_plain_hold_seen_gone_is_waited_out_without_a_release(env: &TestEnv) {
    released_after_seen_gone(env, false);
}

fn released_after_seen_gone(env: &TestEnv, with_s2: bool) {
    let ways: &[bool] = match env.backend {
        Backend::Kube => &[true, false],
        // A create over a deleted record puts the plain holder's record back with the file backend.
        Backend::File => &[false],
    };
    for &delete in ways {
        let name = env.lease_name("relgone");
        let slot0 = format!("{name}-0");
        let slot1 = format!("{name}-1");
        let (plog, log1, log2) =
            (env.path(&env.lease_name("plog")), env.path(&env.lease_name("log1")), env.path(&env.lease_name("log2")));
        // Slot 1 is held by another semaphore process (alive, as far as anyone can tell).
        env.put_slot(&slot1, 2, TestEnv::foreign_record("other-semaphore-process", 600));
        // The plain holder renews every 8 s.
        let holder = env.spawn(
            ["lock", slot0.as_str(), "--lease-duration", "20s", "--renew-deadline", "15s", "--retry-period", "8s"]
                .into_iter()
                .chain(["--", "sh", "-c", &draining_script(&plog, "0.2")]),
        );
        wait_for_file(&plog, "start");
        let s1 =
            env.spawn(fast(&["lock", &name, "--slots", "2", "-vv"], &["sh", "-c", &slot_script(&log1, "sleep 1")]));
        wait_until("S1 to wait the plain hold out", || s1.stderr().contains("waiting it out"));
        let edited_at = Instant::now();
        match delete {
            true => env.delete(&slot0),
            false => env.edit(&slot0, |spec| spec.holder_identity = None),
        }
        wait_until("S1 to see it gone", || s1.stderr().contains("waiting out the hold it had"));
        // S2 takes slot 0 and gives it back at once.
        let s2 = if with_s2 {
            env.run(fast(&["lock", &name, "--slots", "2", "-v"], &["sh", "-c", &slot_script(&log2, "true")]))
        } else {
            env.run(["status", name.as_str()])
        };
        // The other semaphore process gives slot 1 back properly (as mpsync and client-go release).
        std::thread::sleep(Duration::from_millis(1500));
        env.release_as_client_go(&slot1);
        let (mut holder, mut s1) = (holder, s1);
        let limit = Instant::now() + Duration::from_secs(30);
        while Instant::now() < limit
            && (holder.wait_for(Duration::ZERO).is_none() || s1.wait_for(Duration::ZERO).is_none())
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        if holder.wait_for(Duration::ZERO).is_none() {
            holder.signal(Signal::SIGTERM);
        }
        if s1.wait_for(Duration::ZERO).is_none() {
            s1.signal(Signal::SIGTERM);
        }
        let (holder, s1) = (holder.finish(), s1.finish());
        let (started, ended) = (first_stamp(&log1, "start"), first_stamp(&plog, "end"));
        let s2_ran = first_stamp(&log2, "start");
        eprintln!(
            "delete {delete}: edit at +0; S2 ran at {:?}; S1 started at {:?} ms; P's child ended at {:?} ms (S2 exit {:?})",
            s2_ran.map(|t| t as i128),
            started.zip(ended).map(|(s, e)| (s as i128 - e as i128) / 1_000_000),
            ended.map(|_| edited_at.elapsed()),
            s2.status.code(),
        );
        assert!(
            started.is_none_or(|started| ended.is_some_and(|ended| started > ended)),
            "delete {delete}: S1's child started at {started:?} (slot {:?}), before the plain holder's child ended at {ended:?}\nS1:\n{}\nS2:\n{}\nholder:\n{}",
            read_stamps(&log1).first().and_then(|s| s.2),
            s1.stderr,
            s2.stderr,
            holder.stderr
        );
        let _ = fs::remove_file(&plog);
    }
}

both_backends!(a_later_plain_locks_release_never_ends_the_wait_for_a_hold_seen_gone_on_the_marker_name);

/// The marker's name: S waits out P's plain hold of NAME (P's child runs); NAME is deleted (kube) or made
/// free by hand (both); S sees it and waits a full duration (README). Q, a plain `lock NAME` started after
/// the edit (it never saw P's hold), takes NAME, runs a short child and releases properly. Found by review
/// (helper-184): S took Q's release for the end of P's hold, marked NAME and ran its child on a slot while
/// P's child still ran.
fn a_later_plain_locks_release_never_ends_the_wait_for_a_hold_seen_gone_on_the_marker_name(env: &TestEnv) {
    let ways: &[bool] = match env.backend {
        Backend::Kube => &[true, false],
        Backend::File => &[false],
    };
    for &delete in ways {
        let name = env.lease_name("markgone");
        let (plog, slog, qlog) =
            (env.path(&env.lease_name("plog")), env.path(&env.lease_name("slog")), env.path(&env.lease_name("qlog")));
        let holder = env.spawn(
            ["lock", name.as_str(), "--lease-duration", "20s", "--renew-deadline", "15s", "--retry-period", "8s"]
                .into_iter()
                .chain(["--", "sh", "-c", &draining_script(&plog, "0.2")]),
        );
        wait_for_file(&plog, "start");
        let s = env.spawn(fast(&["lock", &name, "--slots", "2", "-v"], &["sh", "-c", &slot_script(&slog, "sleep 1")]));
        wait_until("S to wait the plain hold out", || s.stderr().contains("waiting it out"));
        match delete {
            true => env.delete(&name),
            false => env.edit(&name, |spec| spec.holder_identity = None),
        }
        wait_until("S to see it gone", || s.stderr().contains("waiting out the hold it had"));
        let q = env.run(fast(&["lock", &name, "-v"], &["sh", "-c", &slot_script(&qlog, "true")]));
        let (mut holder, mut s) = (holder, s);
        let limit = Instant::now() + Duration::from_secs(30);
        while Instant::now() < limit
            && (holder.wait_for(Duration::ZERO).is_none() || s.wait_for(Duration::ZERO).is_none())
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        for p in [&mut holder, &mut s] {
            if p.wait_for(Duration::ZERO).is_none() {
                p.signal(Signal::SIGTERM);
            }
        }
        let (holder, s) = (holder.finish(), s.finish());
        let (started, ended) = (first_stamp(&slog, "start"), first_stamp(&plog, "end"));
        assert!(
            started.is_none_or(|started| ended.is_some_and(|ended| started > ended)),
            "delete {delete}: S's child started {:?} ms after P's child ended (negative: before)\nS:\n{}\nQ (exit {:?}):\n{}\nP:\n{}",
            started.zip(ended).map(|(s, e)| (s as i128 - e as i128) / 1_000_000),
            s.stderr,
            q.code,
            q.stderr,
            holder.stderr
        );
    }
}

/// Found by review (helper-176): `--slots 2 --no-wait` whose marker's create and slot 0's acquisition are
/// committed and then answered 409 or 429 (a proxy's or a gateway's retry of the write): the child ran on
/// slot 1, and slot 0 was left held in the name of the process that had exited, with no word. No other slot
/// is tried while such an acquisition may have landed: the child runs once, and no slot is left held.
#[test]
fn an_acquisition_committed_then_refused_takes_no_second_slot_and_leaves_none_held() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    for code in [409, 429] {
        let name = env.lease_name("refused");
        server.after_commit(2, AfterCommit::Fail(code));
        let ran = env.path(&format!("ran-{code}"));
        let script = format!("echo $MPSYNC_SLOT >> {}", ran.display());
        let done = env.run(fast(&["lock", &name, "--slots", "2", "--no-wait", "-v"], &["sh", "-c", &script]));
        server.after_commit(0, AfterCommit::Fail(code));
        done.assert_code(0);
        let slots = fs::read_to_string(&ran).unwrap_or_default();
        assert_eq!(slots.lines().count(), 1, "{code}: the child must run once: {slots:?}\n{}", done.stderr);
        for slot in 0..2 {
            let holder = env.holder(&format!("{name}-{slot}"));
            assert!(
                holder.as_deref().is_none_or(str::is_empty),
                "{code}: slot {slot} left held by {holder:?}\n{}",
                done.stderr
            );
        }
    }
}

both_backends!(a_plain_waiter_from_before_the_marker_never_runs_on_a_slot_name);

/// Found by review (helper-175, left open until now): a plain `lock pool-1` that checked `pool` before the
/// semaphore's marker existed, and waited behind another plain holder of `pool-1`, took it at that holder's
/// release, when the semaphore, which saw the release too, took a slot: both children ran, the plain one on
/// a slot's name. A plain lock of a slot's name reads the marker again once it holds the name: the marker
/// written, it gives the name back and exits 125 without running its child.
fn a_plain_waiter_from_before_the_marker_never_runs_on_a_slot_name(env: &TestEnv) {
    let name = env.lease_name("pool");
    let slot1 = format!("{name}-1");
    let (plog, pgate) = (env.path("plog"), env.path("pgate"));
    let (log, gate) = (env.path("log"), env.path("gate"));
    let ran = env.path("ran");
    // Nobody renews within the test: a renewal of the plain hold seen while waited out refuses the semaphore.
    let timing = ["--lease-duration", "60s", "--renew-deadline", "40s", "--retry-period", "30s"];
    let script = stamp_script(&plog, &until_exists(&pgate));
    let holder = env.spawn(["lock", slot1.as_str(), "-v"].into_iter().chain(timing).chain(["--", "sh", "-c", &script]));
    wait_for_file(&plog, "start");
    // The waiter's brief hold, if the semaphore waits it out (its release not seen as its own), costs 6 s.
    let short = ["--lease-duration", "6s", "--renew-deadline", "4s", "--retry-period", "2s"];
    let waiter = env.spawn(["lock", slot1.as_str(), "-v"].into_iter().chain(short).chain([
        "--",
        "touch",
        ran.to_str().unwrap(),
    ]));
    wait_until("the plain waiter to wait", || waiter.stderr().contains("waiting"));
    let semaphore = env.spawn(["lock", name.as_str(), "--slots", "2", "-v"].into_iter().chain(timing).chain([
        "--",
        "sh",
        "-c",
        &stamp_script(&log, &until_exists(&gate)),
    ]));
    wait_until("the semaphore to wait the plain hold out", || semaphore.stderr().contains("waiting it out"));
    fs::write(&pgate, "").unwrap();
    holder.finish().assert_code(0);
    let waiter = waiter.finish();
    assert!(!ran.exists(), "the plain waiter ran on the semaphore's slot name:\n{}", waiter.stderr);
    waiter.assert_code(125);
    assert!(waiter.stderr.contains(&format!("slot 1 of the semaphore {name}")), "{}", waiter.stderr);
    // The semaphore runs its child; or, if it saw the waiter's brief hold in place of the one it waited out,
    // it took that for a renewal and refused to share (125), as documented.
    fs::write(&gate, "").unwrap();
    let semaphore = semaphore.finish();
    match semaphore.code {
        Some(0) => assert!(first_stamp(&log, "start").is_some(), "{}", semaphore.stderr),
        _ => {
            semaphore.assert_code(125);
        }
    }
}

/// Found by review (helper-192): the plain waiter of the test above, whose acquisition is committed at once
/// but answered 2.5 s later (past its 2 s call timeout), on a server answering 0.35 s late, its own watch
/// event 3 s late. The check was cut short to keep the hold's renew deadline, given no time at all, and the
/// waiter ran on the slot's name beside the semaphore's child. It reads `P` whatever the time left.
#[test]
fn a_plain_waiter_whose_acquisition_is_answered_late_still_checks_the_slot_name() {
    if TestEnv::real_cluster() {
        return;
    }
    let env = TestEnv::kube();
    let server = env.server().unwrap();
    let name = env.lease_name("pool");
    let slot1 = format!("{name}-1");
    let (plog, pgate) = (env.path("plog"), env.path("pgate"));
    let (log, gate) = (env.path("log"), env.path("gate"));
    let ran = env.path("ran");
    let timing = ["--lease-duration", "60s", "--renew-deadline", "40s", "--retry-period", "30s"];
    let script = stamp_script(&plog, &until_exists(&pgate));
    let args = ["lock", slot1.as_str(), "-v", "--identity", "holder"].into_iter().chain(timing);
    let holder = env.spawn(args.chain(["--", "sh", "-c", &script]));
    wait_for_file(&plog, "start");
    // A call timeout of 2 s.
    let short = ["--lease-duration", "6s", "--renew-deadline", "4s", "--retry-period", "2s"];
    let args = ["lock", slot1.as_str(), "-v", "--identity", "waiter"].into_iter().chain(short);
    let waiter = env.spawn(args.chain(["--", "touch", ran.to_str().unwrap()]));
    wait_until("the plain waiter to wait", || waiter.stderr().contains("waiting"));
    let args = ["lock", name.as_str(), "--slots", "2", "-v"].into_iter().chain(timing);
    let semaphore = env.spawn(args.chain(["--", "sh", "-c", &stamp_script(&log, &until_exists(&gate))]));
    wait_until("the semaphore to wait the plain hold out", || semaphore.stderr().contains("waiting it out"));
    server.after_commit_of("waiter", 1, AfterCommit::Delay(Duration::from_millis(1500)));
    server.set_latency(Duration::from_millis(350));
    server.set_watch_lag(Duration::from_secs(3));
    fs::write(&pgate, "").unwrap();
    holder.finish().assert_code(0);
    let waiter = waiter.finish();
    server.set_latency(Duration::ZERO);
    server.set_watch_lag(Duration::ZERO);
    fs::write(&gate, "").unwrap();
    let semaphore = semaphore.finish();
    assert!(!ran.exists(), "the plain waiter ran on the semaphore's slot name:\n{}", waiter.stderr);
    waiter.assert_code(125);
    assert!(matches!(semaphore.code, Some(0) | Some(125)), "{}", semaphore.stderr);
}
