//! `mpsync elect`, `mpsync status`, `mpsync observe`, and client-go compatibility.

use std::fs;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use nix::sys::signal::Signal;

use crate::support::*;

both_backends!(
    three_replicas_run_exactly_one_child_at_a_time,
    sigkill_of_the_leader_fails_over_after_the_lease_duration,
    sigterm_to_the_leader_hands_off_through_the_watch,
    stolen_leadership_stops_the_child_and_runs_it_again_when_reelected,
    exit_on_loss_exits_123,
    child_exiting_on_its_own_releases_and_passes_its_status,
    status_prints_the_record_in_plain_words_and_json,
    status_says_clearly_when_the_lease_does_not_exist,
    observe_prints_one_line_per_holder_change_and_exits_0_on_signals,
    client_go_record_is_read_and_respected,
    preferred_holder_and_strategy_are_preserved_on_every_write,
    a_loss_while_the_child_stops_on_sigterm_never_starts_it_again,
    a_loss_after_a_sighup_passed_on_campaigns_again,
    observe_reports_the_expiry_of_a_holder_that_died,
    a_loss_while_the_child_stops_on_a_quit_stopsignal_never_starts_it_again,
);

/// A leader's child: stamps `start`, records its mpsync's pid, and on SIGTERM stamps `end` and exits 0.
fn leader_script(log: &std::path::Path, leader_file: &std::path::Path) -> String {
    format!(
        "echo start $(date +%s%N) $MPSYNC_FENCING_TOKEN >> {log}; trap 'echo end $(date +%s%N) $MPSYNC_FENCING_TOKEN >> {log}; exit 0' TERM; echo $PPID > {leader}; while :; do sleep 0.05; done",
        log = log.display(),
        leader = leader_file.display()
    )
}

/// Three replicas; each child stamps start/end into a shared log and runs until its replica is told
/// to stop. Kill leaders one after another; the log must show one child at a time.
fn three_replicas_run_exactly_one_child_at_a_time(env: &TestEnv) {
    let name = env.lease_name("one-leader");
    let log = env.path("log");
    let leader_file = env.path("leader");
    let script = leader_script(&log, &leader_file);
    let mut replicas: Vec<Proc> = (0..3).map(|_| env.spawn(fast(&["elect", &name], &["sh", "-c", &script]))).collect();
    for round in 0..3 {
        let leader = read_pid(&leader_file);
        let index = replicas.iter().position(|r| r.pid() == leader).expect("leader is a replica");
        let mut stopped = replicas.remove(index);
        fs::remove_file(&leader_file).unwrap();
        stopped.signal(Signal::SIGTERM);
        assert_eq!(stopped.wait_for(PATIENCE).and_then(|s| s.code()), Some(0), "round {round}: {}", stopped.stderr());
        if !replicas.is_empty() {
            wait_for_file(&leader_file, "\n");
        }
    }
    let stamps = read_stamps(&log);
    assert_eq!(stamps.len(), 6, "{stamps:?}");
    for pair in stamps.chunks(2) {
        assert_eq!((pair[0].0.as_str(), pair[1].0.as_str()), ("start", "end"), "children overlapped: {stamps:?}");
    }
    let tokens: Vec<i64> = stamps.iter().step_by(2).map(|s| s.2.unwrap()).collect();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "tokens must increase: {tokens:?}");
}

fn sigkill_of_the_leader_fails_over_after_the_lease_duration(env: &TestEnv) {
    let name = env.lease_name("failover");
    let leader_file = env.path("leader");
    let child_file = env.path("child");
    let script = format!(
        "echo $$ >> {child}; echo $PPID > {leader}; exec sleep 1000",
        child = child_file.display(),
        leader = leader_file.display()
    );
    let replicas: Vec<Proc> = (0..2).map(|_| env.spawn(fast(&["elect", &name], &["sh", "-c", &script]))).collect();
    let leader = read_pid(&leader_file);
    let first_child = read_pid(&child_file);
    fs::remove_file(&leader_file).unwrap();
    let index = replicas.iter().position(|r| r.pid() == leader).unwrap();
    let killed_at = Instant::now();
    replicas[index].signal(Signal::SIGKILL);
    wait_until("the dead leader's child to die too", || !alive(first_child));
    let new_leader = read_pid(&leader_file);
    let took = killed_at.elapsed();
    assert_ne!(new_leader, leader);
    // The survivor saw the last renewal at most a retry period before the kill, and waits the full
    // lease duration (4s) from then.
    assert!(took >= Duration::from_millis(3400), "failover after {took:?}: before the lease expired");
    assert!(took < Duration::from_secs(8), "failover after {took:?}: not within twice the lease duration");
}

fn sigterm_to_the_leader_hands_off_through_the_watch(env: &TestEnv) {
    let name = env.lease_name("handoff");
    let leader_file = env.path("leader");
    let log = env.path("log");
    let script = leader_script(&log, &leader_file);
    // With a 30s retry period only the watch can make the handoff prompt.
    let slow = ["--lease-duration", "60s", "--renew-deadline", "40s", "--retry-period", "30s"];
    let mut replicas: Vec<Proc> = (0..2)
        .map(|_| env.spawn(["elect", &name].iter().copied().chain(slow).chain(["--", "sh", "-c", &script])))
        .collect();
    let leader = read_pid(&leader_file);
    fs::remove_file(&leader_file).unwrap();
    let index = replicas.iter().position(|r| r.pid() == leader).unwrap();
    replicas[index].signal(Signal::SIGTERM);
    assert_eq!(replicas[index].wait_for(PATIENCE).and_then(|s| s.code()), Some(0));
    let new_leader = read_pid(&leader_file);
    assert_ne!(new_leader, leader);
    wait_until("the new leader's start stamp", || read_stamps(&log).len() >= 3);
    let stamps = read_stamps(&log);
    let handoff = Duration::from_nanos((stamps[2].1 - stamps[1].1) as u64);
    eprintln!("graceful handoff took {handoff:?}");
    assert!(handoff < Duration::from_secs(5), "handoff took {handoff:?}: not watch-driven");
}

fn stolen_leadership_stops_the_child_and_runs_it_again_when_reelected(env: &TestEnv) {
    let name = env.lease_name("reelect");
    let starts = env.path("starts");
    let script = format!("echo $$ >> {}; exec sleep 1000", starts.display());
    let mut elect = env.spawn(fast(&["elect", &name], &["sh", "-c", &script]));
    let first = read_pid(&starts);
    let stolen_at = Instant::now();
    // A thief that holds for 2s and never renews.
    env.edit(&name, |spec| {
        spec.holder_identity = Some("thief".into());
        spec.lease_duration_seconds = Some(2);
    });
    wait_until("the first child to be stopped", || !alive(first));
    // renew deadline (2s) + grace (1s), with slack for a loaded machine.
    assert!(stolen_at.elapsed() < Duration::from_secs(10));
    wait_until("the command to run again after re-election", || {
        fs::read_to_string(&starts).unwrap_or_default().lines().count() >= 2
    });
    assert!(elect.wait_for(Duration::from_millis(10)).is_none(), "elect keeps running");
    elect.signal(Signal::SIGTERM);
    elect.wait_for(PATIENCE).expect("elect exits on SIGTERM");
}

fn exit_on_loss_exits_123(env: &TestEnv) {
    let name = env.lease_name("exitonloss");
    let ready = env.path("ready");
    let script = format!("echo ready > {}; exec sleep 1000", ready.display());
    let mut elect = env.spawn(fast(&["elect", &name, "--exit-on-loss"], &["sh", "-c", &script]));
    wait_for_file(&ready, "ready");
    env.edit(&name, |spec| spec.holder_identity = Some("thief".into()));
    assert_eq!(elect.wait_for(PATIENCE).and_then(|s| s.code()), Some(123), "{}", elect.stderr());
    assert_eq!(env.holder(&name).as_deref(), Some("thief"));
}

fn child_exiting_on_its_own_releases_and_passes_its_status(env: &TestEnv) {
    let name = env.lease_name("electexit");
    env.run(["elect", &name, "--", "sh", "-c", "exit 9"]).assert_code(9);
    assert_eq!(env.holder(&name).as_deref(), Some(""));
}

fn status_prints_the_record_in_plain_words_and_json(env: &TestEnv) {
    let name = env.lease_name("status");
    let ready = env.path("ready");
    let script = format!("echo ready > {}; exec sleep 1000", ready.display());
    let _holder = env.spawn(["lock", &name, "--identity", "status-holder", "--", "sh", "-c", &script]);
    wait_for_file(&ready, "ready");

    let text = env.run(["status", &name]);
    text.assert_code(0);
    for word in
        ["holder:", "status-holder", "held:", "yes", "acquired:", "renewed:", "duration:", "15s", "transitions:"]
    {
        assert!(text.stdout.contains(word), "missing {word:?} in:\n{}", text.stdout);
    }
    let json = env.run(["status", &name, "-o", "json"]);
    json.assert_code(0);
    let value: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(value["holderIdentity"], "status-holder");
    assert_eq!(value["held"], true);
    assert_eq!(value["exists"], true);
    assert_eq!(value["leaseDurationSeconds"], 15);
    assert!(value["leaseTransitions"].is_number());
}

fn status_says_clearly_when_the_lease_does_not_exist(env: &TestEnv) {
    let name = env.lease_name("nolease");
    let text = env.run(["status", &name]);
    text.assert_code(0);
    assert!(text.stdout.contains("does not exist"), "{}", text.stdout);
    let json = env.run(["status", &name, "-o", "json"]);
    let value: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(value["exists"], false);
    assert_eq!(value["held"], false);
}

fn observe_prints_one_line_per_holder_change_and_exits_0_on_signals(env: &TestEnv) {
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        let name = env.lease_name("observe");
        env.put(&name, TestEnv::foreign_record("first", 60));
        let observer = env.spawn(["observe", &name, "-o", "json"]);
        wait_until("the first line", || observer.stdout().contains("first"));
        if let Some(server) = env.server() {
            // Survives a dropped watch.
            server.drop_watches();
        }
        env.edit(&name, |spec| spec.holder_identity = Some("second".into()));
        wait_until("the second line", || observer.stdout().contains("second"));
        // A renewal by the same holder is not a change of holder.
        env.edit(&name, |spec| spec.renew_time = TestEnv::foreign_record("x", 1).renew_time);
        env.edit(&name, |spec| spec.holder_identity = Some("third".into()));
        wait_until("the third line", || observer.stdout().contains("third"));
        let lines: Vec<serde_json::Value> =
            observer.stdout().lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        let holders: Vec<&str> = lines.iter().map(|l| l["holderIdentity"].as_str().unwrap()).collect();
        assert_eq!(holders, ["first", "second", "third"]);
        observer.signal(signal);
        let done = observer.finish();
        done.assert_code(0);
    }
    // Text lines name the holder too.
    let name = env.lease_name("observe-text");
    env.put(&name, TestEnv::foreign_record("texty", 60));
    let observer = env.spawn(["observe", &name]);
    wait_until("a text line", || observer.stdout().contains("holder=texty held=true transitions=0"));
    observer.signal(Signal::SIGINT);
    observer.finish().assert_code(0);
}

/// A Lease exactly as client-go's LeaseLock writes it (apiserver-reference/40-client-go-holder.txt).
fn client_go_record() -> LeaseSpec {
    let fresh = TestEnv::foreign_record("host-a_7c1d", 15);
    LeaseSpec { lease_transitions: Some(0), ..fresh }
}

fn client_go_record_is_read_and_respected(env: &TestEnv) {
    let name = env.lease_name("clientgo");
    env.put(&name, client_go_record());
    let json = env.run(["status", &name, "-o", "json"]);
    let value: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(value["holderIdentity"], "host-a_7c1d");
    assert_eq!(value["held"], true);
    assert_eq!(value["leaseDurationSeconds"], 15);
    env.run(["lock", &name, "--no-wait", "--", "true"]).assert_code(124);
    let mut elect = env.spawn(["elect", &name, "-v", "--", "true"]);
    wait_until("elect to wait for the client-go leader", || elect.stderr().contains("waiting"));
    elect.signal(Signal::SIGTERM);
    assert_eq!(elect.wait_for(PATIENCE).and_then(|s| s.code()), Some(143));
    assert_eq!(env.holder(&name).as_deref(), Some("host-a_7c1d"));
    // After client-go's release (41-client-go-after-release.txt) the lease is free at once.
    env.release_as_client_go(&name);
    env.run(["lock", &name, "--no-wait", "--", "true"]).assert_code(0);
}

/// Whatever the store kept of a lease mpsync did not write (labels, annotations, `strategy`,
/// `preferredHolder`) survives its acquire, renewals and release; the acquisition adds its
/// `mpsync.io/contenders` annotation. An API server older than 1.31 drops
/// `strategy` and `preferredHolder` on create (they came with coordinated leader election): then only
/// what it kept is checked, and the test says it skipped the rest.
fn preferred_holder_and_strategy_are_preserved_on_every_write(env: &TestEnv) {
    let name = env.lease_name("preserve");
    let mut record = client_go_record();
    record.holder_identity = Some(String::new());
    record.strategy = Some("OldestEmulationVersion".into());
    record.preferred_holder = Some("someone".into());
    let labels = [("team".to_string(), "infra".to_string())].into();
    let annotations = [("note".to_string(), "keep me".to_string())].into();
    env.create_with(
        &name,
        ObjectMeta { labels: Some(labels), annotations: Some(annotations), ..Default::default() },
        record,
    );
    let (_, stored) = env.get(&name).unwrap();
    let kept = (stored.strategy.clone(), stored.preferred_holder.clone());
    for (field, stored, sent) in
        [("strategy", &kept.0, "OldestEmulationVersion"), ("preferredHolder", &kept.1, "someone")]
    {
        match stored {
            Some(stored) => assert_eq!(stored, sent, "{field} stored as sent"),
            None => {
                assert!(TestEnv::real_cluster(), "the test server and the file backend keep {field}");
                eprintln!("skipped {field}: the API server dropped it on create (Kubernetes before 1.31)");
            }
        }
    }

    let seen = env.path("seen");
    let check = format!("echo held > {}; sleep 1.5", seen.display());
    env.run(fast(&["lock", &name], &["sh", "-c", &check])).assert_code(0);
    let (_, spec) = env.get(&name).unwrap();
    assert_eq!((spec.strategy, spec.preferred_holder), kept, "what the store kept survives every write");
    let metadata = env.metadata(&name).unwrap();
    assert_eq!(metadata.labels.unwrap()["team"], "infra");
    let annotations = metadata.annotations.unwrap();
    assert_eq!(annotations["note"], "keep me");
    // Beside them, mpsync's own: what its acquisition believed about contention (alone: one), with the
    // token it was written for (kept by the release).
    let token = spec.lease_transitions.unwrap_or(0);
    assert_eq!(annotations[mpsync::lease::CONTENDERS_ANNOTATION], format!("1.0@{token}"));
}

/// Found by review (helper-98): SIGTERM reaches the leader (a rolling update); its worker takes a while
/// to shut down, and meanwhile the lease is lost. mpsync killed the worker, forgot the SIGTERM, campaigned
/// again and started the worker anew in a pod being terminated. It exits 123 (the lease was lost while the
/// child ran).
fn a_loss_while_the_child_stops_on_sigterm_never_starts_it_again(env: &TestEnv) {
    a_loss_while_the_child_stops_never_starts_it_again(env, Signal::SIGTERM);
}

/// A worker that traps `signal` (passed on by mpsync, a stop) and shuts down slowly; meanwhile the lease is
/// taken. The worker runs once, and mpsync exits 123.
fn a_loss_while_the_child_stops_never_starts_it_again(env: &TestEnv, signal: Signal) {
    let name = env.lease_name("stoploss");
    let starts = env.path("starts");
    let stops = env.path("stops");
    let trapped = signal.as_str().trim_start_matches("SIG");
    let script = format!(
        "echo $$ >> {starts}; trap 'echo stop >> {stops}' {trapped}; while :; do sleep 0.05; done",
        starts = starts.display(),
        stops = stops.display()
    );
    let mut elect = env.spawn(fast(&["elect", &name], &["sh", "-c", &script]));
    let first = read_pid(&starts);
    elect.signal(signal);
    wait_for_file(&stops, "stop");
    // The lease is taken while the worker shuts down.
    env.edit(&name, |spec| {
        spec.holder_identity = Some("thief".into());
        spec.lease_duration_seconds = Some(1);
    });
    wait_until("the first child to be stopped", || !alive(first));
    let status = elect.wait_for(PATIENCE);
    let runs = fs::read_to_string(&starts).unwrap_or_default().lines().count();
    if status.is_none() {
        elect.signal(Signal::SIGKILL);
    }
    assert_eq!(runs, 1, "the worker was started again after {signal}:\n{}", elect.stderr());
    assert_eq!(status.and_then(|s| s.code()), Some(123), "{}", elect.stderr());
}

/// Found by review (helper-99): a SIGHUP passed on is the worker's (a reload), not a request to end: a
/// loss after it still campaigns again (the first fix of the case above made it exit 123).
fn a_loss_after_a_sighup_passed_on_campaigns_again(env: &TestEnv) {
    let name = env.lease_name("hupre");
    let (starts, hups) = (env.path("starts"), env.path("hups"));
    let script = format!(
        "echo $$ >> {}; trap 'echo hup >> {}' HUP; while :; do sleep 0.05; done",
        starts.display(),
        hups.display()
    );
    let elect = env.spawn(fast(&["elect", &name], &["sh", "-c", &script]));
    let first = read_pid(&starts);
    elect.signal(Signal::SIGHUP);
    wait_for_file(&hups, "hup");
    env.edit(&name, |spec| {
        spec.holder_identity = Some("thief".into());
        spec.lease_duration_seconds = Some(1);
    });
    wait_until("the first child to be stopped", || !alive(first));
    let again = within_patience(|| fs::read_to_string(&starts).unwrap_or_default().lines().count() >= 2);
    elect.signal(Signal::SIGTERM);
    let out = elect.finish();
    assert!(again, "not elected again after the loss:\n{}", out.stderr);
}

/// Found by review (helper-98): a holder dies (SIGKILL: nothing releases the lease). Once its lease has
/// expired, `observe` says so (`held=false`), as `status` does; it kept its last line, `held=true`, for
/// ever, since no event comes.
fn observe_reports_the_expiry_of_a_holder_that_died(env: &TestEnv) {
    let name = env.lease_name("obsexp");
    let ready = env.path("ready");
    let observe = env.spawn(["observe", &name]);
    let script = format!("echo ready > {}; exec sleep 1000", ready.display());
    let mut holder = env.spawn(fast(&["lock", &name], &["sh", "-c", &script]));
    wait_for_file(&ready, "ready");
    wait_until("observe to show the hold", || observe.stdout().contains("held=true"));
    holder.signal(Signal::SIGKILL);
    holder.wait_for(PATIENCE);
    let last_line = || observe.stdout().lines().last().unwrap_or_default().to_string();
    let expired = within_patience(|| last_line().contains("held=false"));
    observe.signal(Signal::SIGINT);
    let out = observe.finish();
    assert!(expired, "observe still says the dead holder holds it:\n{}", out.stdout);
}

/// Found by review (helper-110): a container whose STOPSIGNAL is SIGQUIT (the nginx image: QUIT is its
/// graceful stop) is being terminated; its worker drains, and meanwhile the lease is lost. As with
/// SIGTERM, mpsync must not campaign again and start the worker anew in a pod being terminated (03c0275
/// had made QUIT not count, for a JVM's thread dump: README says to send that to the worker's pid).
fn a_loss_while_the_child_stops_on_a_quit_stopsignal_never_starts_it_again(env: &TestEnv) {
    a_loss_while_the_child_stops_never_starts_it_again(env, Signal::SIGQUIT);
}

/// Found by review (helper-110): two replicas; the leader A is frozen (SIGSTOP to its mpsync) until B
/// takes over, then continued (its child is killed: the lease is B's). A's first read after the lapse
/// shows B's hold at a newer version: it knows what became of the lease. A rolling update then stops B
/// (SIGTERM): the README's graceful handoff promises that the waiting replica starts its worker "within a
/// moment (driven by the watch)", not a lease duration (4 s) later.
#[test]
fn a_replica_that_lapsed_and_saw_the_takeover_takes_a_graceful_handoff_at_once() {
    lapsed_then_handoff(Duration::ZERO);
}

/// Found by review (helper-110): the same, B handing off after A stood by for a lease duration and a half
/// (6 s). The lease duration A waited counted from the handoff: A's first read after the lapse came only
/// with its first attempt (its watch showed it B's hold meanwhile).
#[test]
fn a_replica_that_lapsed_long_ago_takes_a_graceful_handoff_at_once() {
    lapsed_then_handoff(Duration::from_secs(6));
}

fn lapsed_then_handoff(standby: Duration) {
    let env = TestEnv::kube();
    let name = env.lease_name("lapsehand");
    let (a_starts, b_starts) = (env.path("a-starts"), env.path("b-starts"));
    let script = |starts: &std::path::Path| {
        format!("echo $$ >> {}; trap 'exit 0' TERM; while :; do sleep 0.05; done", starts.display())
    };
    let a = env.spawn(fast(&["elect", &name, "-v", "--identity", "a"], &["sh", "-c", &script(&a_starts)]));
    let a_child = read_pid(&a_starts);
    let mut b = env.spawn(fast(&["elect", &name, "-v", "--identity", "b"], &["sh", "-c", &script(&b_starts)]));
    wait_until("b to wait", || b.stderr().contains("waiting"));
    a.signal(Signal::SIGSTOP);
    read_pid(&b_starts);
    a.signal(Signal::SIGCONT);
    wait_until("a's first child to be gone", || !alive(a_child));
    // A has read the lease again (B's hold) and stands by.
    wait_until("a to see b's hold", || a.stderr().contains("held by another; waiting"));
    // (A deliberate wait, not a race: nothing is to happen meanwhile.)
    std::thread::sleep(standby);
    b.signal(Signal::SIGTERM);
    assert_eq!(b.wait_for(PATIENCE).and_then(|s| s.code()), Some(0), "{}", b.stderr());
    let released = Instant::now();
    let again = within_patience(|| fs::read_to_string(&a_starts).unwrap_or_default().lines().count() >= 2);
    let took = released.elapsed();
    a.signal(Signal::SIGTERM);
    let out = a.finish();
    assert!(again, "a never took over:\n{}", out.stderr);
    // Not a timing test: the fault is a wait of a whole lease duration (4 s); a handoff takes milliseconds.
    assert!(took < Duration::from_millis(3000), "the handoff to a took {took:?} (lease duration 4s):\n{}", out.stderr);
}

/// Found by review (helper-133): `mpsync observe` while its watch is stuck (open and silent, no bookmark)
/// and the holder renews all along: when the last record it saw expired by its timestamps, it reported the
/// live lease free, and never corrected it. It now reads the lease before it reports an expiry.
#[test]
fn observe_with_a_stuck_watch_does_not_report_a_renewed_lease_as_free() {
    observe_with_a_stuck_watch("observe-stuck", false);
}

/// Found by review (helper-131): a client-go elector started with the same identity as a running `mpsync lock`
/// (a StatefulSet whose manifests both use the hostname, `--identity $(POD_NAME)`): client-go's
/// `IsLeader()` is true for a record under its identity, so it renews mpsync's hold as its own at once
/// (renewTime now, its own leaseDurationSeconds, acquireTime and leaseTransitions kept) and runs its
/// work. README (Identity): "a record under our identity is ours only if it is our own write" and two
/// processes under one identity "still never run beside each other". The renewals mpsync did not send
/// must count as a collision: its child is stopped (123), not kept beside client-go's work.
#[test]
fn a_client_go_renewal_under_our_identity_stops_our_child() {
    let env = TestEnv::kube();
    let name = env.lease_name("same-identity");
    let starts = env.path("starts");
    let script = format!("echo $$ >> {}; exec sleep 1000", starts.display());
    let lock = env.spawn(fast(&["lock", &name, "-v", "--identity", "shared"], &["sh", "-c", &script]));
    let child = read_pid(&starts);
    let (_, ours) = env.get(&name).unwrap();
    // client-go under the same identity: renew every second, for twice mpsync's lease duration (4s).
    let began = Instant::now();
    let mut renewals = 0;
    while began.elapsed() < Duration::from_secs(8) && alive(child) {
        env.edit(&name, |spec| {
            let now = k8s_openapi::jiff::Timestamp::now();
            let now = k8s_openapi::jiff::Timestamp::from_microsecond(now.as_microsecond()).unwrap();
            spec.holder_identity = Some("shared".into());
            spec.lease_duration_seconds = Some(15);
            spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(now));
        });
        renewals += 1;
        std::thread::sleep(Duration::from_millis(1000));
    }
    let (_, last) = env.get(&name).unwrap();
    assert_eq!((&last.acquire_time, last.lease_transitions), (&ours.acquire_time, ours.lease_transitions));
    let still = alive(child);
    if still {
        lock.signal(Signal::SIGTERM);
    }
    let out = lock.finish();
    assert!(
        !still,
        "after {renewals} renewals by another process under our identity over {:?}, mpsync's child still runs \
         beside it:\n{}",
        began.elapsed(),
        out.stderr
    );
    out.assert_code(123);
    assert!(out.stderr.contains("identity collision"), "{}", out.stderr);
    // The record is the other process's now: never given back (a release would let a third in beside it).
    assert_eq!(env.holder(&name).as_deref(), Some("shared"), "{}", out.stderr);
}

/// From review (helper-138): `elect` (campaigning again after a loss) and a client-go elector under its
/// identity: after the collision stops our child, the other's record (the acquisition we had, renewed by
/// it, duration 5 s) is waited out: the child starts again only past the other's last renewal plus its
/// duration, never while it may still run its work, and with a new fencing token.
#[test]
fn elect_after_a_collision_waits_out_the_co_holder_before_starting_again() {
    let env = TestEnv::kube();
    let name = env.lease_name("elect-co");
    let log = env.path("log");
    let script = format!(
        "trap 'exit 143' TERM; echo start $(date +%s%N) $MPSYNC_FENCING_TOKEN >> {}; sleep 1000 & wait",
        log.display()
    );
    let elect = env.spawn(fast(&["elect", &name, "-v", "--identity", "shared"], &["sh", "-c", &script]));
    wait_for_file(&log, "start");
    let mut last_renewal = 0u128;
    let began = Instant::now();
    // client-go renews every 700 ms for 3 s after our child started, then dies (no release).
    while began.elapsed() < Duration::from_secs(3) {
        let now = k8s_openapi::jiff::Timestamp::now();
        let now = k8s_openapi::jiff::Timestamp::from_microsecond(now.as_microsecond()).unwrap();
        env.edit(&name, |spec| {
            spec.holder_identity = Some("shared".into());
            spec.lease_duration_seconds = Some(5);
            spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(now));
        });
        last_renewal = epoch_nanos();
        std::thread::sleep(Duration::from_millis(700));
    }
    wait_until("the child to start again", || read_stamps(&log).len() >= 2 || elect.stderr().contains("panicked"));
    elect.signal(Signal::SIGTERM);
    let out = elect.finish();
    let stamps = read_stamps(&log);
    assert!(out.stderr.contains("identity collision"), "{}", out.stderr);
    let again = stamps[1].1;
    assert!(
        again >= last_renewal + 5_000_000_000,
        "started again {} ms after the other's last renewal (duration 5 s):\n{}",
        (again as i128 - last_renewal as i128) / 1_000_000,
        out.stderr
    );
    assert!(stamps[1].2 > stamps[0].2, "a new token: {stamps:?}");
}

/// Found by review (helper-161): the same, with one 503 to the read observe makes at the last-seen record's
/// expiry (a busy server: a stuck watch cache and reads shed together).
#[test]
fn a_stuck_watch_and_a_failed_read_at_expiry_never_make_observe_report_a_renewed_lease_free() {
    observe_with_a_stuck_watch("observe-stuck503", true);
}

/// Found by review (rv231): `observe` reported a dead holder's expiry after reading the lease at it; then
/// versions went back (`restore_versions`: an etcd restored from a snapshot without `--bump-revision`, a lock
/// directory put back from a backup), and another holder took the lease at a version older than the one
/// read. Every event from then on was taken for a stuck watch's and skipped: the new holder was never
/// reported, the lease shown free while it was held. A read tells now, and the read record is reported.
fn observe_after_versions_went_back(env: &TestEnv, name: &str, restore_versions: impl FnOnce()) {
    for i in 0..5 {
        env.put(name, TestEnv::foreign_record(&format!("earlier-{i}"), 3600));
    }
    env.put(name, TestEnv::foreign_record("dead-holder", 2));
    let observer = env.spawn(["observe", name]);
    wait_until("observe to report the holder", || observer.stdout().contains("holder=dead-holder held=true"));
    // Its expiry passes (2 s): observe reads the lease then, and reports it free.
    wait_until("observe to report the expiry", || observer.stdout().contains("holder=dead-holder held=false"));
    restore_versions();
    env.put(name, TestEnv::foreign_record("new-holder", 3600));
    let reported = within_patience(|| observer.stdout().contains("holder=new-holder held=true"));
    observer.signal(Signal::SIGTERM);
    let done = observer.finish();
    assert!(reported, "the new holder was never reported:\n{}\n{}", done.stdout, done.stderr);
}

#[test]
fn observe_reports_a_new_holder_after_an_etcd_restore_that_follows_a_read_at_an_expiry() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let name = env.lease_name("restore-observe");
    env.put(&name, TestEnv::foreign_record("", 1));
    let snapshot = server.snapshot();
    observe_after_versions_went_back(&env, &name, || server.restore(&snapshot));
}

#[test]
fn observe_reports_a_new_holder_after_the_lock_directory_is_put_back_after_a_read_at_an_expiry() {
    let env = TestEnv::file();
    let name = env.lease_name("putback-observe");
    env.put(&name, TestEnv::foreign_record("", 1));
    let backup = env.dir.join("backup");
    fs::create_dir_all(&backup).unwrap();
    let files = [format!("{name}.json"), format!(".{name}.last")];
    for file in &files {
        fs::copy(env.lock_dir().join(file), backup.join(file)).unwrap();
    }
    observe_after_versions_went_back(&env, &name, || {
        for file in &files {
            let temp = env.lock_dir().join(format!("{file}.restore"));
            fs::copy(backup.join(file), &temp).unwrap();
            fs::rename(&temp, env.lock_dir().join(file)).unwrap();
        }
    });
}

/// Found by review (rv232): `observe`'s watch lags while an operator deletes a dead holder's lease and
/// another holder creates it anew; at the dead holder's expiry observe reads the lease and reports the new
/// holder. When the watch caught up, its DELETED event, older than that read, was reported ("absent" for a
/// lease that exists and is held), then the new holder a second time. It is checked as any older event.
#[test]
fn observe_never_reports_a_stale_deletion_after_a_newer_read() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let name = env.lease_name("stale-delete");
    env.put(&name, TestEnv::foreign_record("dead", 2));
    let observe = env.spawn(["observe", &name, "-o", "json"]);
    wait_until("observe's first line", || observe.stdout().lines().next().is_some());
    server.set_watch_lag(Duration::from_secs(600));
    env.delete(&name);
    env.put(&name, TestEnv::foreign_record("new", 3600));
    // The dead holder's record expires (2 s): observe reads the lease then, and reports the new holder.
    wait_until("the new holder, read at the expiry", || observe.stdout().contains("\"new\""));
    server.set_watch_lag(Duration::ZERO);
    // A later change, to wait for: everything the watch held back comes before it.
    env.edit(&name, |spec| spec.holder_identity = Some("third".into()));
    wait_until("the third holder", || observe.stdout().contains("\"third\""));
    observe.signal(Signal::SIGTERM);
    let done = observe.finish();
    done.assert_code(0);
    let holders: Vec<(bool, String)> = done
        .stdout
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            (value["exists"].as_bool().unwrap(), value["holderIdentity"].as_str().unwrap_or("").to_string())
        })
        .collect();
    let wanted = [(true, "dead".to_string()), (true, "new".into()), (true, "third".into())];
    assert_eq!(holders, wanted, "a stale change reported after a newer record:\n{}", done.stdout);
}

/// Found by review (rv234): the lease, held by "old" (2 s), is given to "mid" (1 h) and then deleted while
/// `observe`'s watch lags; at old's expiry observe reads the lease and finds none. When the watch caught up,
/// its MODIFIED("mid") event, older than that read, was reported as the lease now (held by mid), then the
/// absence again. After a read that found no lease, a record the watch brings is checked with a read.
#[test]
fn observe_never_reports_a_stale_holder_after_a_read_found_the_lease_deleted() {
    observe_never_reports_a_stale_holder_after_an_absent_read("stale-holder", "mid", |env, name| {
        env.edit(name, |spec| {
            spec.holder_identity = Some("mid".into());
            spec.lease_duration_seconds = Some(3600);
        });
        env.delete(name);
    });
}

/// Found by review (rv236): the lease, held by "old" (2 s), is deleted, created by "ghost" (1 h) and deleted
/// again while observe's watch lags; at old's expiry observe reads the lease and finds none. When the watch
/// caught up, its stale DELETED (of old's record) cleared the check, and the stale ADDED("ghost") after it
/// was reported as the lease now, held, after the newer absence.
#[test]
fn observe_never_reports_a_stale_holder_after_a_stale_deletion_following_an_absent_read() {
    observe_never_reports_a_stale_holder_after_an_absent_read("ghost", "ghost", |env, name| {
        env.delete(name);
        env.put(name, TestEnv::foreign_record("ghost", 3600));
        env.delete(name);
    });
}

/// The lease, held by "old" (2 s), is changed by `changes` (ending deleted) while `observe`'s watch lags; at
/// old's expiry observe reads it and finds none. The `stale` holder the watch brings later is never reported.
fn observe_never_reports_a_stale_holder_after_an_absent_read(
    prefix: &str,
    stale: &str,
    changes: impl FnOnce(&TestEnv, &str),
) {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let name = env.lease_name(prefix);
    env.put(&name, TestEnv::foreign_record("old", 2));
    let observe = env.spawn(["observe", &name, "-o", "json"]);
    wait_until("observe's first line", || observe.stdout().lines().next().is_some());
    server.set_watch_lag(Duration::from_secs(600));
    changes(&env, &name);
    wait_until("the absence, read at the expiry", || observe.stdout().contains("\"exists\":false"));
    server.set_watch_lag(Duration::ZERO);
    // A later change, to wait for: everything the watch held back comes before it.
    env.put(&name, TestEnv::foreign_record("third", 3600));
    wait_until("the third holder", || observe.stdout().contains("\"third\""));
    observe.signal(Signal::SIGTERM);
    let done = observe.finish();
    done.assert_code(0);
    let stale = format!("\"{stale}\"");
    assert!(!done.stdout.contains(&stale), "a stale holder reported after a newer read:\n{}", done.stdout);
}

/// Found by review (rv236): `mpsync observe NAME` of a plain lease: a read at its expiry finds it deleted;
/// then NAME is made the marker of a 2-slot semaphore, and the watch (dropped) lists it again. The listed
/// marker, checked with a read (90728d6), was reported as a plain lease and the check for a marker skipped;
/// the marker does not change again, so observe never watched the slots, and a holder of slot 0 was never
/// reported.
#[test]
fn observe_follows_a_marker_that_appears_after_an_absent_read() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let name = env.lease_name("marker");
    env.put(&name, TestEnv::foreign_record("old", 2));
    let observe = env.spawn(["observe", &name, "-o", "json"]);
    wait_until("observe's first line", || observe.stdout().lines().next().is_some());
    server.set_watch_lag(Duration::from_secs(600));
    env.delete(&name);
    wait_until("the absence, read at the expiry", || observe.stdout().contains("\"exists\":false"));
    env.put_slot(&name, 2, Default::default());
    let watches = server.count("watch");
    server.drop_watches();
    // The watch lists again: the marker comes as a record (checked with a read: the read before found none).
    assert!(
        server.wait_for_counts(
            |counts| counts.iter().filter(|((v, _), _)| v == "watch").map(|(_, n)| n).sum::<usize>() > watches,
            PATIENCE
        ),
        "the watch never started again"
    );
    server.set_watch_lag(Duration::ZERO);
    env.put_slot(&format!("{name}-0"), 2, TestEnv::foreign_record("slotholder", 3600));
    let reported = within_patience(|| observe.stdout().contains("\"slotholder\""));
    observe.signal(Signal::SIGTERM);
    let done = observe.finish();
    done.assert_code(0);
    assert!(reported, "the holder of slot 0 was never reported:\n{}\n{}", done.stdout, done.stderr);
}

both_backends!(observe_of_a_semaphore_follows_its_name_made_a_plain_lease_again);

/// Found by review (rv237): `mpsync observe pool` of a semaphore in use (it watches the marker and the slots). Every user
/// stops, the operator deletes the semaphore's Leases (README, "Changing N"), and a plain `lock pool`
/// takes the name (README: "a plain `lock NAME` after that takes `NAME`"). observe's marker watch saw
/// the plain record (no count) and passed it over: the plain holder was never reported, and the lines
/// showed two free slots of a semaphore that no longer existed while NAME was held.
fn observe_of_a_semaphore_follows_its_name_made_a_plain_lease_again(env: &TestEnv) {
    let name = env.lease_name("pool");
    env.run(fast(&["lock", &name, "--slots", "2"], &["true"])).assert_code(0);
    let observe = env.spawn(["observe", &name, "-o", "json"]);
    wait_until("observe's lines for both slots", || observe.stdout().lines().count() >= 2);
    for lease in [name.clone(), format!("{name}-0"), format!("{name}-1")] {
        env.delete(&lease);
    }
    let (gate, log) = (env.path("gate"), env.path("log"));
    let holder = env.spawn(fast(
        &["lock", &name, "--identity", "plainholder"],
        &["sh", "-c", &stamp_script(&log, &until_exists(&gate))],
    ));
    wait_for_file(&log, "start");
    let reported = within_patience(|| observe.stdout().contains("\"plainholder\""));
    fs::write(&gate, "").unwrap();
    holder.finish().assert_code(0);
    observe.signal(Signal::SIGTERM);
    let done = observe.finish();
    assert!(reported, "the plain holder of {name} was never reported:\n{}\n{}", done.stdout, done.stderr);
}

/// Found by review (rv237): `mpsync observe pool` of a 2-slot semaphore. Slot 1's holder dies while the watches lag; slot 1
/// is given to "ghost", then "mid"; at the dead holder's expiry observe reads slot 1 (mid). When the
/// watches catch up, ghost's event (older than that read) is checked with another read
/// (`read_behind_an_older_event`), which was retried every 2 s inside observe's one loop until a get of
/// slot 1 answered. While slot 1's gets failed (a 503 per name), every other slot's change and the
/// marker's went unreported: slot 0 changing hands was never shown. Now that read is made once, and
/// again with the expiries' reads.
#[test]
fn observe_reports_other_slots_while_one_slots_check_read_keeps_failing() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let name = env.lease_name("pool");
    let (slot0, slot1) = (format!("{name}-0"), format!("{name}-1"));
    env.put_slot(&name, 2, Default::default());
    env.put_slot(&slot0, 2, TestEnv::foreign_record("a", 3600));
    env.put_slot(&slot1, 2, TestEnv::foreign_record("dead", 2));
    let observe = env.spawn(["observe", &name, "-o", "json"]);
    wait_until("observe's lines for both slots", || {
        let out = observe.stdout();
        out.contains("\"a\"") && out.contains("\"dead\"")
    });
    server.set_watch_lag(Duration::from_secs(600));
    env.edit(&slot1, |spec| {
        spec.holder_identity = Some("ghost".into());
        spec.lease_duration_seconds = Some(3600);
    });
    env.edit(&slot1, |spec| spec.holder_identity = Some("mid".into()));
    wait_until("mid, read at dead's expiry", || observe.stdout().contains("\"mid\""));
    server.fail_next_on(&format!("get:{slot1}"), 1_000_000, 503);
    server.set_watch_lag(Duration::ZERO);
    // ghost's event, older than the read, is checked with a get of slot 1: answered 503.
    wait_until("observe's check read of slot 1 to fail", || {
        server.requests().iter().any(|r| r.status == 503 && r.verb == "get" && r.path.ends_with(&slot1))
    });
    env.edit(&slot0, |spec| spec.holder_identity = Some("b".into()));
    let reported = within_patience(|| observe.stdout().contains("\"b\""));
    server.fail_next_on(&format!("get:{slot1}"), 0, 503);
    observe.signal(Signal::SIGTERM);
    let done = observe.finish();
    assert!(
        reported,
        "slot 0's new holder was not reported while slot 1's reads failed:\n{}\n{}",
        done.stdout, done.stderr
    );
}

/// `mpsync observe` with its watch stuck while the holder renews every 500 ms (lease duration 4 s), and with
/// `failed_read` one 503 to its read at the expiry of the record it saw last: no line may say the lease is
/// free.
fn observe_with_a_stuck_watch(lease: &str, failed_read: bool) {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let name = env.lease_name(lease);
    let (log, go) = (env.path("log"), env.path("go"));
    let body = until_exists(&go);
    let holder = env.spawn(fast(&["lock", &name, "--identity", "holder"], &["sh", "-c", &stamp_script(&log, &body)]));
    wait_for_file(&log, "start");
    let observe = env.spawn(["observe", &name, "-o", "json"]);
    wait_until("observe's first line", || observe.stdout().lines().next().is_some());
    server.set_watch_lag(Duration::from_secs(600));
    if failed_read {
        server.fail_next_on(&format!("get:{name}"), 1, 503);
        // The record observe saw last expires within 4 s; its read then is answered 503.
        wait_until("observe's read to fail", || {
            server.requests().iter().any(|r| r.status == 503 && r.verb == "get" && r.path.contains(&name))
        });
        std::thread::sleep(Duration::from_secs(2));
    } else {
        // A lease duration and a half: no change to report. (The absence of a line can only be waited for.)
        std::thread::sleep(Duration::from_secs(6));
    }
    let out = observe.stdout();
    server.set_watch_lag(Duration::ZERO);
    fs::write(&go, "").unwrap();
    holder.finish().assert_code(0);
    observe.signal(Signal::SIGTERM);
    observe.finish().assert_code(0);
    for line in out.lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(value["held"], true, "observe reported the renewed lease as free:\n{out}");
    }
}
