//! `mpsync elect` replicas under faults (from review, helper-115): the children's timestamps and tokens,
//! the health endpoints, and exit codes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::apiserver::AfterCommit;
use crate::support::*;

both_backends!(force_unlock_with_two_replicas, lease_deleted_with_two_replicas, signals_to_a_follower);

/// The status of `GET path` on a replica's health port, if it answered.
pub(crate) fn get(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// start/end stamps with the token; on TERM stamps end, exits 0; writes its mpsync's pid to `leader`.
fn script(log: &std::path::Path, leader: &std::path::Path) -> String {
    format!(
        "echo start $(date +%s%N) $MPSYNC_FENCING_TOKEN >> {log}; trap 'echo end $(date +%s%N) $MPSYNC_FENCING_TOKEN >> {log}; exit 0' TERM; echo $PPID > {leader}; while :; do sleep 0.05; done",
        log = log.display(),
        leader = leader.display()
    )
}

fn check_log(log: &std::path::Path, tokens_increase: bool) {
    let stamps = read_stamps(log);
    eprintln!("stamps: {stamps:?}");
    assert_eq!(max_concurrency(log), 1, "children overlapped: {stamps:?}");
    for pair in stamps.chunks(2) {
        assert_eq!(pair[0].0, "start", "{stamps:?}");
        if pair.len() == 2 {
            assert_eq!(pair[1].0, "end", "{stamps:?}");
            assert_eq!(pair[0].2, pair[1].2, "{stamps:?}");
        }
    }
    if tokens_increase {
        let tokens: Vec<i64> = stamps.iter().step_by(2).map(|s| s.2.unwrap()).collect();
        assert!(tokens.windows(2).all(|w| w[0] < w[1]), "tokens must increase: {tokens:?}");
    }
}

struct Replica {
    proc: Proc,
    port: u16,
}

fn replicas(env: &TestEnv, name: &str, n: usize, extra: &[&str], script: &str) -> Vec<Replica> {
    (0..n)
        .map(|_| {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let mut head = vec!["elect", name, "--health-addr", addr.as_str()];
            head.extend_from_slice(extra);
            let proc = env.spawn(fast(&head, &["sh", "-c", script]));
            Replica { proc, port }
        })
        .collect()
}

fn leaders(reps: &[Replica]) -> Vec<i32> {
    reps.iter().filter(|r| get(r.port, "/leader") == Some(200)).map(|r| r.proc.pid()).collect()
}

fn starts(log: &std::path::Path) -> usize {
    read_stamps(log).iter().filter(|s| s.0 == "start").count()
}
fn ends(log: &std::path::Path) -> usize {
    read_stamps(log).iter().filter(|s| s.0 == "end").count()
}

/// Writes fail (gateway 503) for longer than the renew deadline: the leader loses, stops its child,
/// and campaigns again; after the outage exactly one replica leads, with a larger token.
#[test]
fn write_outage_longer_than_the_renew_deadline() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let name = env.lease_name("ef-outage");
    let log = env.path("log");
    let leader_file = env.path("leader");
    let reps = replicas(&env, &name, 3, &[], &script(&log, &leader_file));
    let leader = read_pid(&leader_file);
    wait_until("one /leader 200", || leaders(&reps) == vec![leader]);
    server.page_on_writes(Some(503));
    let outage = Instant::now();
    wait_until("the leader's child to end", || ends(&log) >= 1);
    eprintln!("child ended {:?} after the outage began", outage.elapsed());
    wait_until("no /leader 200", || leaders(&reps).is_empty());
    for r in &reps {
        assert_eq!(get(r.port, "/healthz"), Some(200), "a standby passes /healthz");
    }
    // Past a lease duration (4s) + retry, then heal.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(starts(&log), 1, "no child during the outage");
    server.page_on_writes(None);
    wait_until("a new child", || starts(&log) >= 2);
    wait_until("one /leader 200", || leaders(&reps).len() == 1);
    let leader2 = read_pid(&leader_file);
    eprintln!("healed; leader {leader} -> {leader2}");
    let mut reps = reps;
    reps.sort_by_key(|r| leaders_pid_is(leader2, r));
    for mut r in reps {
        assert!(r.proc.wait_for(Duration::from_millis(1)).is_none(), "elect must keep running: {}", r.proc.stderr());
        r.proc.signal(Signal::SIGTERM);
        let expected = if leaders_pid_is(leader2, &r) { 0 } else { 143 };
        let f = r.proc.finish();
        assert_eq!(
            f.code,
            Some(expected),
            "{}",
            f.stderr.lines().filter(|l| !l.contains("503")).collect::<Vec<_>>().join("\n")
        );
    }
    check_log(&log, true);
}

fn leaders_pid_is(pid: i32, r: &Replica) -> bool {
    r.proc.pid() == pid
}

/// The same with --exit-on-loss: the leader exits 123, the others keep campaigning.
#[test]
fn write_outage_with_exit_on_loss_exits_123() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let name = env.lease_name("ef-outage-eol");
    let log = env.path("log");
    let leader_file = env.path("leader");
    let mut reps = replicas(&env, &name, 2, &["--exit-on-loss"], &script(&log, &leader_file));
    let leader = read_pid(&leader_file);
    server.page_on_writes(Some(503));
    let index = reps.iter().position(|r| r.proc.pid() == leader).unwrap();
    let mut old = reps.remove(index);
    let status = old.proc.wait_for(PATIENCE);
    assert_eq!(status.and_then(|s| s.code()), Some(123), "{}", old.proc.stderr());
    server.page_on_writes(None);
    wait_until("a new child", || starts(&log) >= 2);
    let mut other = reps.remove(0);
    other.proc.signal(Signal::SIGTERM);
    assert_eq!(other.proc.wait_for(PATIENCE).and_then(|s| s.code()), Some(0), "{}", other.proc.stderr());
    check_log(&log, true);
}

/// A "force unlock" (holderIdentity cleared by hand, acquireTime kept): the leader gets a 409 at its next
/// renewal and stops its child; nobody runs beside it.
fn force_unlock_with_two_replicas(env: &TestEnv) {
    let name = env.lease_name("ef-unlock");
    let log = env.path("log");
    let leader_file = env.path("leader");
    let reps = replicas(env, &name, 2, &["-v"], &script(&log, &leader_file));
    let leader = read_pid(&leader_file);
    // The follower must have seen the hold: one that never did takes a lease it first sees free at once
    // (README, Semantics; a flaky failure under load: the two children overlapped by half a second).
    wait_until("the follower to see the hold", || {
        reps.iter().any(|r| r.proc.pid() != leader && r.proc.stderr().contains("held by another"))
    });
    std::fs::remove_file(&leader_file).unwrap();
    env.edit(&name, |spec| spec.holder_identity = Some(String::new()));
    wait_until("the old child to end", || ends(&log) >= 1);
    wait_until("a new child", || starts(&log) >= 2);
    let leader2 = read_pid(&leader_file);
    eprintln!("leader {leader} -> {leader2}");
    wait_until("one /leader 200", || leaders(&reps) == vec![leader2]);
    for r in reps {
        r.proc.signal(Signal::SIGTERM);
        let f = r.proc.finish();
        eprintln!("exit {:?}", f.code);
    }
    check_log(&log, true);
}

/// The Lease deleted under the leader, with a follower that saw the hold.
fn lease_deleted_with_two_replicas(env: &TestEnv) {
    let name = env.lease_name("ef-deleted");
    let log = env.path("log");
    let leader_file = env.path("leader");
    let reps = replicas(env, &name, 2, &["-v"], &script(&log, &leader_file));
    let leader = read_pid(&leader_file);
    wait_until("one /leader 200", || leaders(&reps) == vec![leader]);
    // The follower must have seen the hold: one that never did may take a deleted lease at once (README,
    // Semantics), and with `--backend file` its create puts the holder's last record back, which the
    // leader then renews on (a flaky failure: no child ended).
    wait_until("the follower to see the hold", || {
        reps.iter().any(|r| r.proc.pid() != leader && r.proc.stderr().contains("held by another"))
    });
    std::fs::remove_file(&leader_file).unwrap();
    env.delete(&name);
    wait_until("the old child to end", || ends(&log) >= 1);
    wait_until("a new child", || starts(&log) >= 2);
    let leader2 = read_pid(&leader_file);
    eprintln!("leader {leader} -> {leader2}");
    for r in reps {
        r.proc.signal(Signal::SIGTERM);
        let f = r.proc.finish();
        eprintln!("exit {:?}", f.code);
    }
    check_log(&log, false);
}

/// Signals to a follower: USR1 ignored, TERM 143 with nothing written.
fn signals_to_a_follower(env: &TestEnv) {
    let name = env.lease_name("ef-follower");
    let log = env.path("log");
    let leader_file = env.path("leader");
    let reps = replicas(env, &name, 1, &[], &script(&log, &leader_file));
    read_pid(&leader_file);
    for (signal, code) in [
        (Signal::SIGTERM, 143),
        (Signal::SIGHUP, 129),
        (Signal::SIGINT, 130),
        (Signal::SIGQUIT, 131),
        (Signal::SIGALRM, 142),
    ] {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut follower =
            env.spawn(fast(&["elect", &name, "--health-addr", &addr], &["sh", "-c", "echo BAD; sleep 1000"]));
        wait_until("the follower's /leader 503", || get(port, "/leader") == Some(503));
        follower.signal(Signal::SIGUSR1);
        assert!(follower.wait_for(Duration::from_millis(300)).is_none());
        let before = env.get(&name).unwrap().0;
        follower.signal(signal);
        let f = follower.finish();
        f.assert_code(code);
        assert!(!f.stdout.contains("BAD"));
        let _ = before;
    }
    for r in reps {
        r.proc.signal(Signal::SIGTERM);
        r.proc.finish().assert_code(0);
    }
    assert_eq!(starts(&log), 1);
}

/// RBAC revoked (update forbidden) while leading.
#[test]
fn update_forbidden_while_leading() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let name = env.lease_name("ef-forbid");
    let log = env.path("log");
    let leader_file = env.path("leader");
    let mut reps = replicas(&env, &name, 1, &[], &script(&log, &leader_file));
    read_pid(&leader_file);
    server.forbid("update");
    let started = Instant::now();
    let status = reps[0].proc.wait_for(PATIENCE);
    eprintln!("after {:?}: {:?}\n{}", started.elapsed(), status, reps[0].proc.stderr());
    server.allow("update");
    assert_eq!(status.and_then(|s| s.code()), Some(125), "{}", reps[0].proc.stderr());
    assert_eq!(ends(&log), 1, "the child was stopped: {:?}", read_stamps(&log));
}

/// A SIGTERM to the leader while its child is stopping for a loss.
fn term_during_loss_stop(extra: &[&str]) -> Option<i32> {
    let env = TestEnv::kube();
    let name = env.lease_name("ef-termloss");
    let log = env.path("log");
    let termed = env.path("termed");
    let body = format!(
        "echo start $(date +%s%N) $MPSYNC_FENCING_TOKEN >> {log}; trap 'echo t > {termed}; sleep 0.8; echo end $(date +%s%N) $MPSYNC_FENCING_TOKEN >> {log}; exit 0' TERM; while :; do sleep 0.05; done",
        log = log.display(),
        termed = termed.display()
    );
    let mut head = vec!["elect", name.as_str()];
    head.extend_from_slice(extra);
    let mut elect = env.spawn(fast(&head, &["sh", "-c", &body]));
    wait_until("start", || starts(&log) >= 1);
    env.edit(&name, |spec| {
        spec.holder_identity = Some("thief".into());
        spec.lease_duration_seconds = Some(2);
    });
    wait_for_file(&termed, "t");
    elect.signal(Signal::SIGTERM);
    let status = elect.wait_for(PATIENCE);
    eprintln!("{extra:?}: {status:?}; stamps {:?}\n{}", read_stamps(&log), elect.stderr());
    status.and_then(|s| s.code())
}

#[test]
fn sigterm_while_stopping_for_a_loss() {
    let a = term_during_loss_stop(&[]);
    let b = term_during_loss_stop(&["--exit-on-loss"]);
    eprintln!("codes: campaign-again {a:?}, exit-on-loss {b:?}");
    // Without --exit-on-loss it would have campaigned again: stopped by the signal (README, 128+N).
    assert_eq!(a, Some(143));
    assert_eq!(b, Some(123));
}

/// Found by review (helper-115): another writer touches the Lease (a field some tool sets) every 150 ms,
/// for longer than the renew deadline: every renewal based on the version read before it meets a 409; the
/// read after it shows the hold still ours. The leader must lead on (client-go, reading right before each
/// write, would), and the follower must never start. Before the fix, the holder waited a whole retry
/// period after each such read, met the next touch, and lost the lease at the renew deadline (4 of 4
/// runs, both backends).
fn another_writer_touching_the_lease_does_not_cost_leadership(env: &TestEnv) {
    let name = env.lease_name("ef-touch");
    let log = env.path("log");
    let leader_file = env.path("leader");
    let reps = replicas(env, &name, 2, &[], &script(&log, &leader_file));
    let leader = read_pid(&leader_file);
    wait_until("one /leader 200", || leaders(&reps) == vec![leader]);
    let until = Instant::now() + Duration::from_secs(4);
    let mut i = 0;
    while Instant::now() < until {
        env.edit(&name, |spec| spec.strategy = Some(format!("Strategy{i}")));
        i += 1;
        std::thread::sleep(Duration::from_millis(150));
    }
    env.edit(&name, |spec| spec.lease_duration_seconds = Some(1));
    let (v0, _) = env.get(&name).unwrap();
    let v0: u64 = v0.parse().unwrap_or(0);
    wait_until("three renewals", || env.get(&name).unwrap().0.parse::<u64>().unwrap_or(0) >= v0 + 3);
    assert_eq!(
        starts(&log),
        1,
        "{:?}\n{}",
        read_stamps(&log),
        reps.iter().map(|r| r.proc.stderr()).collect::<Vec<_>>().join("\n-----\n")
    );
    assert_eq!(leaders(&reps), vec![leader]);
    let mut reps = reps;
    reps.sort_by_key(|r| r.proc.pid() == leader);
    for r in reps {
        let is_leader = r.proc.pid() == leader;
        r.proc.signal(Signal::SIGTERM);
        let f = r.proc.finish();
        assert_eq!(f.code, Some(if is_leader { 0 } else { 143 }), "{}", f.stderr);
    }
    check_log(&log, true);
}
both_backends!(another_writer_touching_the_lease_does_not_cost_leadership);

/// Found sound by review (rv254), kept as a guard: three terms, each ended by an outage of writes (503), whose next writes commit and then fail (or are cut off), for longer
/// than the renew deadline. Each term's job leaves a worker that ignores SIGTERM. Checked: the tokens the
/// children get strictly increase and are the record's own; nothing of term k (its worker's heartbeats
/// included) runs once term k+1's child has started; `/leader` never says 200 while no child runs.
#[test]
fn rewon_terms_never_overlap_across_write_outages() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let name = env.lease_name("rewin");
    let log = env.path("log");
    let beats = env.path("beats");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let script = format!(
        "echo start $(date +%s%N) $MPSYNC_FENCING_TOKEN >> {log}; \
         sh -c 'trap \"\" TERM; while :; do echo alive $(date +%s%N) $MPSYNC_FENCING_TOKEN >> {beats}; sleep 0.02; done' & \
         trap 'echo end $(date +%s%N) $MPSYNC_FENCING_TOKEN >> {log}; exit 0' TERM; while :; do sleep 0.05; done",
        log = log.display(),
        beats = beats.display()
    );
    let mut elect = env.spawn(fast(&["elect", &name, "--health-addr", &addr], &["sh", "-c", &script]));
    let starts = |log: &std::path::Path| read_stamps(log).iter().filter(|s| s.0 == "start").count();
    let ends = |log: &std::path::Path| read_stamps(log).iter().filter(|s| s.0 == "end").count();
    let mut tokens_seen = Vec::new();
    for term in 0..3 {
        wait_until("the term's child", || starts(&log) > term);
        let token = read_stamps(&log).iter().filter(|s| s.0 == "start").nth(term).unwrap().2.unwrap();
        let record = env.get(&name).unwrap().1.lease_transitions.unwrap_or(0) as i64;
        assert_eq!(token, record, "the child's token is not the record's");
        tokens_seen.push(token);
        wait_until("/leader 200", || get(port, "/leader") == Some(200));
        server.page_on_writes(Some(503));
        wait_until("the term's child to end", || ends(&log) > term);
        // The child ended: nothing of this term may lead any more.
        assert_eq!(get(port, "/leader"), Some(503), "/leader 200 after the child was stopped");
        server.page_on_writes(None);
        // The give-back and the next acquisition's answers are lost after they commit.
        server.after_commit(2, if term % 2 == 0 { AfterCommit::Fail(500) } else { AfterCommit::Drop });
    }
    wait_until("a fourth term", || starts(&log) > 3);
    elect.signal(Signal::SIGTERM);
    let status = elect.wait_for(PATIENCE);
    let stamps = read_stamps(&log);
    let alive = read_stamps(&beats);
    eprintln!("stamps {stamps:?}\n{}", elect.stderr());
    assert!(tokens_seen.windows(2).all(|w| w[0] < w[1]), "tokens: {tokens_seen:?}");
    assert_eq!(max_concurrency(&log), 1);
    let started: Vec<_> = stamps.iter().filter(|s| s.0 == "start").collect();
    for pair in started.windows(2) {
        let (previous, next) = (pair[0], pair[1]);
        let late: Vec<_> = alive.iter().filter(|b| b.2 == previous.2 && b.1 >= next.1).collect();
        assert!(
            late.is_empty(),
            "term {:?}'s worker ran after term {:?}'s child started: {late:?}",
            previous.2,
            next.2
        );
    }
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", elect.stderr());
}
