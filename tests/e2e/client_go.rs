//! A client-go elector beside mpsync on one Lease (CONTRACT: client-go electors respect mpsync's holds).
//! Each test plays the other writer (a client-go `LeaderElector` over a `LeaseLock`) by its own rules,
//! against the real binary (found by review, rv238, rv239, rv240).
//!
//! client-go's rule (k8s.io/client-go/tools/leaderelection, `tryAcquireOrRenew`): the lease is read, turned
//! into a `LeaderElectionRecord` and marshalled to JSON (`LeaseLock.Get`); when those bytes differ from the
//! bytes observed before, `observedTime` becomes the elector's own `now`; a held record is taken once
//! `observedTime + leaseDurationSeconds` has passed. The record's times are `metav1.Time`, which marshals
//! as RFC 3339 with whole seconds: a renewal whose `renewTime` stays within the same second as the one before
//! (and changes nothing else) is no change to a client-go elector, however many microseconds it moved.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use nix::sys::signal::Signal;

use crate::support::apiserver::AfterCommit;
use crate::support::*;

/// What client-go's `LeaseLock.Get` marshals (`LeaderElectionRecord`): times at whole seconds.
fn client_go_raw(spec: &LeaseSpec) -> String {
    let seconds = |t: &Option<MicroTime>| t.as_ref().map(|t| t.0.as_second()).unwrap_or(i64::MIN);
    format!(
        "{}|{}|{}|{}|{}|{}|{}",
        spec.holder_identity.clone().unwrap_or_default(),
        spec.lease_duration_seconds.unwrap_or(0),
        seconds(&spec.acquire_time),
        seconds(&spec.renew_time),
        spec.lease_transitions.unwrap_or(0),
        spec.strategy.clone().unwrap_or_default(),
        spec.preferred_holder.clone().unwrap_or_default(),
    )
}

/// A client-go elector polling `name` every 5 ms (a client-go `RetryPeriod` may be that short, and any
/// elector's poll may land right after a change). `on_record(prev, new, since_visible)` is called for every
/// record read that differs at full precision from the one before, with how long ago client-go last saw a
/// change: the test arms faults there. Returns the epoch nanos at which the elector's acquisition was
/// written, or `None` within `patience`.
fn client_go_elector_takes(
    env: &TestEnv,
    name: &str,
    patience: Duration,
    mut on_record: impl FnMut(&LeaseSpec, &LeaseSpec, Duration),
    mut before_taking: impl FnMut(),
) -> Option<u128> {
    let mut observed: Option<String> = None;
    let mut observed_at = Instant::now();
    let mut last: Option<LeaseSpec> = None;
    let started = Instant::now();
    while started.elapsed() < patience {
        if let Some((_, spec)) = env.get(name) {
            if let Some(prev) = &last
                && prev != &spec
            {
                on_record(prev, &spec, observed_at.elapsed());
            }
            last = Some(spec.clone());
            let raw = client_go_raw(&spec);
            if observed.as_ref() != Some(&raw) {
                observed = Some(raw);
                observed_at = Instant::now();
            }
            let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64);
            let held = !spec.holder_identity.as_deref().unwrap_or("").is_empty();
            if held && observed_at.elapsed() >= duration {
                before_taking();
                let taken = observed.clone().unwrap();
                env.edit(name, |spec| {
                    if client_go_raw(spec) != taken {
                        return;
                    }
                    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
                    spec.holder_identity = Some("client-go-elector".into());
                    spec.lease_duration_seconds = Some(4);
                    spec.acquire_time = Some(now.clone());
                    spec.renew_time = Some(now);
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                });
                if env.holder(name).as_deref() == Some("client-go-elector") {
                    return Some(epoch_nanos());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// The holder's child: stamps `alive NANOS` every 50 ms until stopped.
fn alive_script(alive: &Path, ignore_term: bool) -> String {
    let trap = if ignore_term { "trap '' TERM; " } else { "" };
    format!("{trap}while :; do echo alive $(date +%s%N) >> {}; sleep 0.05; done", alive.display())
}

fn assert_child_gone_before(alive: &Path, taken_at: u128, done: &Finished) {
    let last_alive = read_stamps(alive).iter().map(|s| s.1).max().unwrap();
    assert!(
        last_alive < taken_at,
        "a client-go elector took the lease (the record unchanged at whole seconds for leaseDurationSeconds) \
         while mpsync's child still ran, {:?} after the takeover; mpsync exited {:?}\n{}",
        Duration::from_nanos((last_alive - taken_at) as u64),
        done.code,
        done.stderr
    );
}

/// Run `lock` under `shim` (with `vars`), let a client-go elector watch it, and fail if the elector takes
/// the lease while mpsync's child still runs.
fn client_go_never_takes_the_lease_beside_the_child(env: &TestEnv, prefix: &str, shim: &Path, vars: &[(&str, &str)]) {
    client_go_never_takes_a_lease_beside_the_child(env, prefix, Some(shim), vars, |_| {});
}

/// As `client_go_never_takes_the_lease_beside_the_child`, with `shim` if any, and `then` done once the
/// child runs, before the client-go elector starts.
fn client_go_never_takes_a_lease_beside_the_child(
    env: &TestEnv,
    prefix: &str,
    shim: Option<&Path>,
    vars: &[(&str, &str)],
    then: impl FnOnce(&str),
) {
    let name = env.lease_name(prefix);
    let alive = env.path("alive");
    let mut command = env.mpsync(fast(&["lock", &name, "-v"], &["sh", "-c", &alive_script(&alive, false)]));
    if let Some(shim) = shim {
        command.env("LD_PRELOAD", shim);
    }
    for (key, value) in vars {
        command.env(key, value);
    }
    let mut holder = Proc::spawn(command, &env.dir);
    holder.wait_for_file(&alive, "alive");
    then(&name);
    // Three lease durations (4 s each) and more: a renewing holder is never expired by client-go's rule.
    let taken = client_go_elector_takes(env, &name, Duration::from_secs(14), |_, _, _| {}, || {});
    if let Some(taken_at) = taken {
        // The client-go elector leads from `taken_at`. mpsync's child must not run past it.
        let done = holder.finish();
        assert_child_gone_before(&alive, taken_at, &done);
        return;
    }
    holder.signal(Signal::SIGTERM);
    let done = holder.finish();
    assert!(!done.stderr.contains("lost"), "the holder lost the lease:\n{}", done.stderr);
}

/// Found by review (rv238): the holder's wall clock stands still (libfaketime, a container under a frozen clock: the
/// case `safety::a_holder_whose_wall_clock_stands_still_still_renews` covers for an mpsync waiter). Every
/// renewal moved `renewTime` 1 to 1000 µs past the stored one: a change to mpsync, none to client-go,
/// which compares whole seconds. A client-go elector saw the record unchanged for leaseDurationSeconds and
/// took it after 4 s while mpsync renewed on and its child ran. Now a renewal moves it to a later whole
/// second at least every quarter duration.
#[test]
fn a_client_go_elector_sees_the_renewals_of_a_holder_whose_wall_clock_stands_still() {
    let env = TestEnv::kube();
    let shim = build_shim(&env, "freezewall");
    client_go_never_takes_the_lease_beside_the_child(&env, "cg-frozen", &shim, &[]);
}

/// Found by review (rv238): no frozen clock, only one step back. The holder's clock ran an hour ahead when it acquired
/// (a node booted with a bad RTC), then NTP stepped it back to the true time while the child ran. mpsync's
/// renewals are floored on the stored `renewTime` (an hour ahead): each moved it 1 to 1000 µs, so the
/// whole second client-go compares stayed the same for about an hour of renewals. A client-go elector
/// took the lease a lease duration after the step while mpsync's child ran.
#[test]
fn a_client_go_elector_sees_the_renewals_of_a_holder_whose_wall_clock_was_stepped_back() {
    let env = TestEnv::kube();
    let shim = build_shim(&env, "stepwall");
    client_go_never_takes_the_lease_beside_the_child(
        &env,
        "cg-stepback",
        &shim,
        &[("MPSYNC_TEST_AHEAD_S", "3600"), ("MPSYNC_TEST_STEP_AFTER_MS", "1500")],
    );
}

/// Control: the same client-go elector beside a holder whose clock is right never takes the
/// lease, so the two tests above fail for the clock, not for the emulation.
#[test]
fn a_client_go_elector_never_takes_the_lease_of_a_holder_whose_clock_is_right() {
    let env = TestEnv::kube();
    let shim = build_shim(&env, "stepwall");
    client_go_never_takes_the_lease_beside_the_child(&env, "cg-control", &shim, &[("MPSYNC_TEST_AHEAD_S", "0")]);
}

/// Found by review (rv239): a record edited to a time in the last second below the year 9000 (where mpsync's
/// own stamps stop: `STAMP_CEILING`), which the API server accepts and mpsync takes for a hand edit of its
/// hold. The renewals' move to the next whole second stopped at that ceiling, and they moved `renewTime` by
/// microseconds again: a client-go elector took the lease a lease duration later, beside the child.
#[test]
fn a_client_go_elector_sees_the_renewals_after_a_record_edited_just_below_the_stamp_ceiling() {
    let env = TestEnv::kube();
    client_go_never_takes_a_lease_beside_the_child(&env, "cg-ceiling", None, &[], |name| {
        let edited: k8s_openapi::jiff::Timestamp = "8999-12-31T23:59:59.5Z".parse().unwrap();
        env.edit(name, |spec| spec.renew_time = Some(MicroTime(edited)));
        // mpsync renews on top of the edit (it keeps the hold: one foreign renewal is a hand edit).
        wait_until("a renewal past the edited renewTime", || {
            env.get(name).is_some_and(|(_, spec)| spec.renew_time.is_some_and(|t| t.0 > edited))
        });
    });
}

/// Found by review (rv240): `--lease-duration 1s --renew-deadline 500ms --retry-period 400ms` was accepted.
/// Renewals 400 ms apart move `renewTime`'s whole second once a second, so client-go sees changes up to
/// 1.4 s apart, longer than the lease: a client-go elector took the lease of a healthy holder. A renew
/// deadline that leaves no room for a renewal client-go sees is refused (125), and one that does is never
/// taken from a healthy holder.
#[test]
fn a_renew_deadline_shorter_than_a_second_of_renewals_is_refused() {
    let env = TestEnv::kube();
    let name = env.lease_name("cg-short");
    let timing = ["--lease-duration", "1s", "--renew-deadline", "500ms", "--retry-period", "400ms"];
    let done = env.run([&["lock", &name][..], &timing, &["--", "true"]].concat());
    done.assert_code(125);
    assert!(done.stderr.contains("client-go sees renewals at whole seconds"), "{}", done.stderr);
    assert!(env.holder(&name).is_none(), "refused, yet the lease was taken");
}

/// Renewals under a second apart (every 250 ms; a 4 s lease, a renew deadline of 2 s): only one a second
/// counts, and a client-go elector never takes the lease from a healthy holder.
#[test]
fn a_client_go_elector_never_takes_a_lease_renewed_under_a_second_apart() {
    let env = TestEnv::kube();
    let name = env.lease_name("cg-short-ok");
    let alive = env.path("alive");
    let script = alive_script(&alive, false);
    let timing = ["--lease-duration", "4s", "--renew-deadline", "2s", "--retry-period", "250ms"];
    let command = [&["lock", &name, "-v"][..], &timing, &["--", "sh", "-c", &script]].concat();
    let mut holder = Proc::spawn(env.mpsync(command), &env.dir);
    holder.wait_for_file(&alive, "alive");
    if let Some(taken_at) = client_go_elector_takes(&env, &name, Duration::from_secs(8), |_, _, _| {}, || {}) {
        let done = holder.finish();
        assert_child_gone_before(&alive, taken_at, &done);
        panic!("a client-go elector took the lease of a healthy holder:\n{}", done.stderr);
    }
    holder.signal(Signal::SIGTERM);
    let done = holder.finish();
    assert!(!done.stderr.contains("lost"), "the holder lost the lease:\n{}", done.stderr);
}

/// Found by review (rv240): the margin `lease_duration - renew_deadline - grace` may be as small as 100 ms
/// (`--lease-duration 4s --renew-deadline 2s --grace 1900ms`; 300 ms here, room for a loaded machine, and
/// still under the half second the old count gave away), but a client-go elector sees a renewal only
/// when `renewTime` enters a new whole second. Renewal A enters second S (client-go sees it at once);
/// renewal B, ~0.5 s later, stays in second S (client-go sees nothing; mpsync's renew deadline counted from
/// B's send); then the API server fails every renewal. mpsync lost at B + 2 s and SIGKILLed at B + 3.9 s;
/// client-go took the lease at A + 4 s, before that. Now the deadline counts from A.
#[test]
fn the_renew_deadline_counts_from_a_renewal_client_go_could_see() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let name = env.lease_name("cg-margin");
    let alive = env.path("alive");
    let script = alive_script(&alive, true);
    let mut holder = Proc::spawn(
        env.mpsync([
            "lock",
            &name,
            "-v",
            "--lease-duration",
            "4s",
            "--renew-deadline",
            "2s",
            "--retry-period",
            "500ms",
            "--grace",
            "1700ms",
            "--",
            "sh",
            "-c",
            &script,
        ]),
        &env.dir,
    );
    holder.wait_for_file(&alive, "alive");
    let update = format!("update:{name}");
    let mut armed = false;
    let taken = client_go_elector_takes(
        &env,
        &name,
        Duration::from_secs(20),
        |prev, new, since_visible| {
            let second = |s: &LeaseSpec| s.renew_time.as_ref().map(|t| t.0.as_second());
            // A renewal client-go cannot see (same holder, same whole second), well after the one it saw:
            // from now on, every renewal fails (503), as an API server that went away.
            if !armed
                && prev.holder_identity == new.holder_identity
                && prev.renew_time != new.renew_time
                && second(prev) == second(new)
                && client_go_raw(prev) == client_go_raw(new)
                && since_visible >= Duration::from_millis(300)
            {
                server.fail_next_on(&update, 1_000_000, 503);
                armed = true;
            }
        },
        || server.fail_next_on(&update, 0, 503),
    );
    server.fail_next_on(&update, 0, 503);
    match taken {
        Some(taken_at) => {
            let done = holder.finish();
            assert_child_gone_before(&alive, taken_at, &done);
        }
        None => panic!("the client-go elector never took the lease (armed: {armed}): the scenario did not happen"),
    }
}

/// Found by review (rv240), as above for the library, with `Timing { 4s, 3950ms, 500ms }` (3700 ms here: see
/// above) (no grace: the
/// library's work stops when told). A `HeldLock`'s token was cancelled at the renew deadline counted from
/// a renewal client-go could not see (same whole second): a client-go elector that saw the renewal before
/// it took the lease first, and work that stopped the moment it was told still ran beside the new leader.
#[test]
fn a_held_locks_token_is_cancelled_before_a_client_go_elector_takes_over() {
    use mpsync::{KubeClientBuilder, Lock, Timing};
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let name = env.lease_name("cg-lib");
    let timing = Timing {
        lease_duration: Duration::from_secs(4),
        renew_deadline: Duration::from_millis(3700),
        retry_period: Duration::from_millis(500),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let held = runtime.block_on(async {
        let client = KubeClientBuilder::new().kubeconfig(&env.kubeconfig).build().await.unwrap();
        let lock = Lock::kube(client, &env.namespace, &name).timing(timing).build().expect("accepted by the library");
        lock.acquire().await.unwrap()
    });
    let token = held.cancellation_token();
    let update = format!("update:{name}");
    let taken = std::thread::scope(|scope| {
        let elector = scope.spawn(|| {
            let mut armed = false;
            client_go_elector_takes(
                &env,
                &name,
                Duration::from_secs(20),
                |prev, new, since_visible| {
                    let second = |s: &LeaseSpec| s.renew_time.as_ref().map(|t| t.0.as_second());
                    if !armed
                        && prev.holder_identity == new.holder_identity
                        && prev.renew_time != new.renew_time
                        && second(prev) == second(new)
                        && client_go_raw(prev) == client_go_raw(new)
                        && since_visible >= Duration::from_millis(300)
                    {
                        server.fail_next_on(&update, 1_000_000, 503);
                        armed = true;
                    }
                },
                || server.fail_next_on(&update, 0, 503),
            )
        });
        // The holder's side: the moment its work is told to stop.
        let cancelled_at = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), token.cancelled()).await.expect("the token is cancelled");
            epoch_nanos()
        });
        (elector.join().unwrap(), cancelled_at)
    });
    server.fail_next_on(&update, 0, 503);
    let (taken_at, cancelled_at) = taken;
    let taken_at = taken_at.expect("the client-go elector took the lease");
    assert!(
        cancelled_at < taken_at,
        "a client-go elector took the lease {:?} before the HeldLock's token was cancelled (Timing {timing:?})",
        Duration::from_nanos((cancelled_at - taken_at) as u64)
    );
    drop(held);
}

fn second(spec: &LeaseSpec) -> Option<i64> {
    spec.renew_time.as_ref().map(|t| t.0.as_second())
}

/// The record as the server stores it, read from its state (no HTTP: the read faults armed for the holder
/// never reach this elector's polls).
fn stored(env: &TestEnv, name: &str) -> Option<LeaseSpec> {
    let lease = env.server()?.lease(&env.namespace, name)?;
    serde_json::from_value(lease.get("spec")?.clone()).ok()
}

/// Found by review (rv241): a renewal W1 enters a new whole second S+1 and is committed, but its answer is
/// 409 (a proxy's retry of the committed write: the case `write_result` names). The pending write is given
/// up, so W1 is never counted (`applied` is not called for it; the read only sets `applied_stamp`). The
/// hold is still ours, so a renewal W2 follows on the version read (`renew_now`); it stays in second S+1
/// (no move: `stamp_second` has S+1 since W1's send, under a second ago). `applied` compared W2's second
/// with the last one COUNTED (S, `held.renew_second`), not with the record it replaced, and counted W2
/// from its own send. A client-go elector saw S+1 since W1 landed; W2 is no change to it. Here the holder's
/// read after the 409 is answered 429 for a few hundred ms, so W2 is sent ~0.3 s after W1; then every
/// renewal fails. mpsync's renew deadline ran from W2, its SIGKILL came at W2 + 2 s + the grace (1.9 s; 1.7 s
/// here, room for a loaded machine), while the client-go elector took the lease at W1 + 4 s, beside the child.
/// Now W1, seen landed, counts from its send, and W2, in its second, counts for nothing.
#[test]
fn a_renewal_whose_second_a_committed_but_refused_renewal_entered_is_not_counted() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let name = env.lease_name("cg-refused");
    let alive = env.path("alive");
    // The holder learns of its writes from their answers, not from the watch (an event of W1 before its
    // 409 would count it): its watch events come late.
    server.set_watch_lag(Duration::from_secs(30));
    let script = format!("trap '' TERM; while :; do echo alive $(date +%s%N) >> {}; sleep 0.05; done", alive.display());
    let mut holder = Proc::spawn(
        env.mpsync([
            "lock",
            &name,
            "-v",
            "--lease-duration",
            "4s",
            "--renew-deadline",
            "2s",
            "--retry-period",
            "500ms",
            "--grace",
            "1700ms",
            "--",
            "sh",
            "-c",
            &script,
        ]),
        &env.dir,
    );
    holder.wait_for_file(&alive, "alive");
    let update = format!("update:{name}");

    // The client-go elector, polling every 2 ms.
    let mut observed: Option<String> = None;
    let mut observed_at = Instant::now();
    let mut last: Option<LeaseSpec> = None;
    // 0: waiting for a renewal that stays in its second; 1: armed, waiting for W1; 2: waiting for W2;
    // 3: every renewal fails.
    let mut phase = 0;
    let mut w1: Option<(LeaseSpec, Instant)> = None;
    let mut tries = 0;
    let started = Instant::now();
    let mut taken_at = None;
    while started.elapsed() < Duration::from_secs(60) && taken_at.is_none() {
        let Some(spec) = stored(&env, &name) else {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        };
        if let Some(prev) = last.clone()
            && prev != spec
            && prev.holder_identity == spec.holder_identity
            && prev.renew_time != spec.renew_time
        {
            match phase {
                0 if second(&prev) == second(&spec) && tries < 20 => {
                    // The next renewal, 500 ms on, enters the next second early in it: it commits, and is
                    // answered 409; the holder's read after it is refused for a while.
                    server.after_commit(1, AfterCommit::Fail(409));
                    server.reads_429_for(Duration::from_millis(850), false);
                    tries += 1;
                    phase = 1;
                }
                1 => {
                    if second(&spec) != second(&prev) {
                        w1 = Some((spec.clone(), Instant::now()));
                        phase = 2;
                    } else {
                        phase = 0;
                    }
                }
                2 => {
                    let (first, at) = w1.clone().unwrap();
                    // W2 in W1's second (the scenario), or moved past the wall clock's second (a fix that
                    // makes W2 a change client-go sees): either way, every renewal fails from now on. W2
                    // in the next second by the wall clock only: the scenario missed, try again.
                    let ahead = second(&spec) > Some(k8s_openapi::jiff::Timestamp::now().as_second());
                    if (second(&spec) == second(&first) && at.elapsed() >= Duration::from_millis(200)) || ahead {
                        // W2: no change to client-go. From now on the API server refuses every renewal.
                        server.fail_next_on(&update, 1_000_000, 503);
                        phase = 3;
                    } else {
                        phase = 0;
                    }
                }
                _ => {}
            }
        }
        last = Some(spec.clone());
        let raw = client_go_raw(&spec);
        if observed.as_ref() != Some(&raw) {
            observed = Some(raw);
            observed_at = Instant::now();
        }
        let held = !spec.holder_identity.as_deref().unwrap_or("").is_empty();
        if held && observed_at.elapsed() >= Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0) as u64) {
            server.fail_next_on(&update, 0, 503);
            let taken = observed.clone().unwrap();
            env.edit(&name, |spec| {
                if client_go_raw(spec) != taken {
                    return;
                }
                let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
                spec.holder_identity = Some("client-go-elector".into());
                spec.lease_duration_seconds = Some(4);
                spec.acquire_time = Some(now.clone());
                spec.renew_time = Some(now);
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            });
            if env.holder(&name).as_deref() == Some("client-go-elector") {
                taken_at = Some(epoch_nanos());
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    server.fail_next_on(&update, 0, 503);
    let taken_at =
        taken_at.unwrap_or_else(|| panic!("no takeover (phase {phase}, tries {tries}): scenario not reached"));
    assert_eq!(phase, 3, "taken without the scenario: phase {phase}");
    let done = holder.finish();
    let last_alive = read_stamps(&alive).iter().map(|s| s.1).max().unwrap();
    assert!(
        last_alive < taken_at,
        "a client-go elector took the lease (unchanged at whole seconds for 4 s since W1) while mpsync's child \
         still ran, {:?} after the takeover; mpsync exited {:?}\n{}",
        Duration::from_nanos((last_alive - taken_at) as u64),
        done.code,
        done.stderr
    );
}

/// `mpsync sidecar --ttl TTL` under identity `pod`, through `kubeconfig` if given; its address.
fn side_car(env: &TestEnv, pod: &str, ttl: &str, kubeconfig: Option<&Path>) -> (Proc, SocketAddr) {
    let mut command = env.mpsync(["sidecar", "-v", "--listen", "127.0.0.1:0", "--identity", pod, "--ttl", ttl]);
    if let Some(kubeconfig) = kubeconfig {
        command.env("MPSYNC_KUBECONFIG", kubeconfig);
    }
    let mut process = Proc::spawn(command, &env.dir);
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(address) =
            process.stdout().lines().find_map(|line| line.strip_prefix("listening on ")?.parse().ok())
        {
            return (process, address);
        }
        assert!(process.wait_for(Duration::ZERO).is_none(), "the side-car exited:\n{}", process.stderr());
        assert!(Instant::now() < deadline, "the side-car did not listen:\n{}", process.stderr());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `METHOD /locks/NAME` as the metaparticle clients send it: the status.
fn request_status(address: SocketAddr, method: &str, name: &str) -> u16 {
    let mut stream = TcpStream::connect_timeout(&address, PATIENCE).expect("connect to the side-car");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let request = format!(
        "{method} /locks/{name} HTTP/1.1\r\nHost: localhost\r\naccept: application/json\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    text.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or_else(|| panic!("no answer: {text:?}"))
}

/// Sleep until the wall clock's fraction of a second is `fraction` (in the next second if past it).
fn until_fraction(fraction: f64) {
    let now = k8s_openapi::jiff::Timestamp::now();
    let into = now.subsec_nanosecond() as f64 / 1e9;
    let wait = if into < fraction { fraction - into } else { 1.0 - into + fraction };
    std::thread::sleep(Duration::from_secs_f64(wait));
}

/// Found by review (rv243): a restarted side-car's adoption (`Elector::renewal` with nothing held, no stamp sent
/// by this process) stayed on the wall clock, and so in the whole second of the record it adopted when it came
/// within that second: no change at all to a client-go elector, which had seen that record since the old
/// side-car wrote it. Yet `applied` made a new `Held` counted from the adoption's own send, so every answer
/// about the hold ran up to a second later than the client-go elector's clock. Now the adoption moves to a
/// later whole second: a change client-go sees.
///
/// Here (`--ttl 3s`: renew deadline 1.5 s, answers within 0.5 s) the old side-car writes the lock at S.05 and is
/// killed; the new one adopts it at S.85 (same second: nothing client-go sees). Its calls to the API server then
/// hang. The client heartbeats every TTL/3 (1 s), the model the side-car's timing is built on: the heartbeat at
/// S+1.85 is answered 200 from the hold (its deadline counted from S.85), the one at S+2.85 is answered 503 only
/// at S+3.35, while a client-go elector took the lease at S+3.05 (3 s after it saw the record change). The
/// client believed it held the lock for ~0.3 s beside the new leader.
#[test]
fn a_side_car_adoption_sent_in_the_adopted_records_second_is_a_change_client_go_sees() {
    adoption_then_hung_api_server(true);
}

/// The same with the adoption sent in the next whole second (a change client-go sees at once): the client
/// learns of the loss before the client-go elector takes the lease.
#[test]
fn a_side_car_adoption_in_a_new_second_is_followed_by_the_clients_loss_in_time() {
    adoption_then_hung_api_server(false);
}

fn adoption_then_hung_api_server(same_second: bool) {
    let env = TestEnv::kube();
    let Some(_server) = env.server() else { return };
    let (proxy, proxied) = env.proxied_kubeconfig();
    let mut attempts = 0;
    let (name, adopted_at, seen, second_car) = loop {
        attempts += 1;
        assert!(attempts <= 5, "the adoption was never sent in the second wanted");
        let name = env.lease_name("adopt-second");
        let (mut first_car, first) = side_car(&env, "pod-a", "3s", None);
        let (second_car, second_address) = side_car(&env, "pod-a", "3s", Some(&proxied));
        // The old side-car's write, early in second S; client-go sees it as soon as it is answered.
        until_fraction(0.03);
        assert_eq!(request_status(first, "PUT", &name), 200);
        let first_seen = Instant::now();
        let written = stored(&env, &name).expect("written");
        first_car.child.kill().unwrap();
        first_car.wait_for(PATIENCE).expect("killed");
        // The restarted side-car's adoption, late in the same second.
        if same_second {
            until_fraction(0.85);
        } else {
            until_fraction(0.5);
            until_fraction(0.05);
        }
        let sent = Instant::now();
        let sent_second = k8s_openapi::jiff::Timestamp::now().as_second();
        assert_eq!(request_status(second_address, "PUT", &name), 200, "{}", second_car.stderr());
        let answered = Instant::now();
        let adopted = stored(&env, &name).expect("adopted");
        assert_eq!(adopted.lease_transitions, written.lease_transitions, "adopted, not taken anew");
        // Sent in the second of the record it adopts (or, for the other case, in a later one).
        if same_second == (Some(sent_second) == second(&written)) {
            // What client-go saw last, and since when (the adoption, if it changed anything client-go compares,
            // from its answer: the latest it can have been seen).
            let seen = match client_go_raw(&adopted) == client_go_raw(&written) {
                true => (client_go_raw(&written), first_seen),
                false => (client_go_raw(&adopted), answered),
            };
            break (name, sent, seen, second_car);
        }
        drop(second_car);
    };
    // From now on the new side-car's calls to the API server hang.
    proxy.delay_responses(Duration::from_secs(20));

    std::thread::scope(|scope| {
        // The client: a heartbeat every TTL/3, until the first answer that is not 200.
        let address = {
            let line = second_car.stdout();
            line.lines().find_map(|l| l.strip_prefix("listening on ")?.parse::<SocketAddr>().ok()).unwrap()
        };
        let client = scope.spawn({
            let name = name.clone();
            move || {
                for k in 1..=5u32 {
                    let at = adopted_at + Duration::from_secs(k as u64);
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                    let status = request_status(address, "PUT", &name);
                    let answered = epoch_nanos();
                    if status != 200 {
                        return (k, status, answered);
                    }
                }
                panic!("every heartbeat was answered 200 while the API server hung");
            }
        });

        // The client-go elector: it saw the record change when the old side-car's write was answered.
        let (mut observed, mut observed_at) = seen;
        let mut taken_at = None;
        let started = Instant::now();
        while taken_at.is_none() && started.elapsed() < Duration::from_secs(20) {
            let spec = stored(&env, &name).unwrap();
            let raw = client_go_raw(&spec);
            if raw != observed {
                observed = raw;
                observed_at = Instant::now();
            }
            let held = !spec.holder_identity.as_deref().unwrap_or("").is_empty();
            if held && observed_at.elapsed() >= Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0) as u64) {
                let taken = observed.clone();
                env.edit(&name, |spec| {
                    if client_go_raw(spec) != taken {
                        return;
                    }
                    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
                    spec.holder_identity = Some("client-go-elector".into());
                    spec.lease_duration_seconds = Some(4);
                    spec.acquire_time = Some(now.clone());
                    spec.renew_time = Some(now);
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                });
                if env.holder(&name).as_deref() == Some("client-go-elector") {
                    taken_at = Some(epoch_nanos());
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let taken_at = taken_at.expect("the client-go elector took the lease");
        let (k, status, told_at) = client.join().unwrap();
        proxy.delay_responses(Duration::ZERO);
        assert!(
            told_at <= taken_at,
            "a client-go elector took the lease {:?} before the side-car's client learned it had lost it (heartbeat \
             {k} after the adoption, answered {status}); the adoption, in the adopted record's second, was counted \
             from its own send\n{}",
            Duration::from_nanos((told_at - taken_at) as u64),
            second_car.stderr()
        );
    });
}

/// Found by review (rv246; a spurious loss; `lock --lease-duration 3s --renew-deadline 1600ms --retry-period 300ms`,
/// the shortest renew deadline `Timing::validate` accepts for that retry period; 1800 ms here, room for a
/// loaded machine, still under the 2 s the old count needed). Renewals 300 ms apart; the
/// first one in each whole second is counted. The renewal W1 that enters second X+1 is committed and then
/// answered 409 (a proxy's retry of the committed write). The read after it shows W1 landed (our stamp, our
/// acquisition), yet W1 was never counted: `observe` only moved `held.renew_second` to X+1, so every later
/// renewal in X+1 counted for nothing either, and the next counted one was the first in X+2, about 2 s after
/// the last counted one: past the 1.6 s renew deadline. The child was stopped (123), though every renewal
/// landed on time. Now W1, seen landed, counts from its send (CONTRACT §3).
#[test]
fn a_committed_renewal_answered_409_and_then_read_back_counts_from_its_send() {
    renewal_entering_a_new_second_fails(true);
}

/// Control: the same renewal refused outright (503, nothing committed) costs one retry period only, and the
/// hold is kept: the test above fails for the commit, not for the timings.
#[test]
fn a_renewal_entering_a_new_second_refused_outright_costs_one_retry_only() {
    renewal_entering_a_new_second_fails(false);
}

fn renewal_entering_a_new_second_fails(committed: bool) {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let name = env.lease_name("cg-landed");
    // The holder learns of W1 from its answer and the read after it, not from an early watch event.
    server.set_watch_lag(Duration::from_secs(30));
    let mut holder = Proc::spawn(
        env.mpsync([
            "lock",
            &name,
            "-v",
            "--lease-duration",
            "3s",
            "--renew-deadline",
            "1800ms",
            "--retry-period",
            "300ms",
            "--",
            "sleep",
            "60",
        ]),
        &env.dir,
    );
    // Held, and renewing.
    let started = Instant::now();
    while env.holder(&name).is_none() {
        assert!(started.elapsed() < PATIENCE, "never acquired:\n{}", holder.stderr());
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut last = stored(&env, &name).unwrap();
    let mut armed_at: Option<Instant> = None;
    let mut landed = None;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if let Some(status) = holder.wait_for(Duration::ZERO) {
            panic!(
                "mpsync lost a lease whose every renewal landed ({status}); W1 landed (committed, answered 409, read \
                 back) {:?} before; armed {:?} before\n{}",
                landed.map(|at: Instant| at.elapsed()),
                armed_at.map(|at| at.elapsed()),
                holder.stderr()
            );
        }
        let spec = stored(&env, &name).unwrap();
        if spec.renew_time != last.renew_time {
            let now = k8s_openapi::jiff::Timestamp::now();
            let fraction = now.subsec_nanosecond() as f64 / 1e9;
            match armed_at {
                // A renewal late in the wall clock's second, in that second: the next one, 300 ms on, enters
                // the next second. It commits and is answered 409.
                None if second(&spec) == Some(now.as_second()) && (0.72..0.9).contains(&fraction) => {
                    if committed {
                        server.after_commit(1, AfterCommit::Fail(409));
                    } else {
                        server.fail_next_on(&format!("update:{name}"), 1, 503);
                    }
                    armed_at = Some(Instant::now());
                }
                Some(_) if landed.is_none() => {
                    assert!(!committed || second(&spec) != second(&last), "W1 did not enter a new second");
                    landed = Some(Instant::now());
                }
                _ => {}
            }
            last = spec;
        }
        // Five seconds after W1 the hold is surely kept: the scenario passed.
        if landed.is_some_and(|at| at.elapsed() >= Duration::from_secs(5)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(landed.is_some(), "the scenario was never reached");
    assert_eq!(server.after_commit_pending(), 0, "the 409 after the commit was never given");
    server.fail_next_on(&format!("update:{name}"), 0, 503);
    holder.signal(nix::sys::signal::Signal::SIGTERM);
    let done = holder.finish();
    assert_ne!(done.code, Some(123), "lost:\n{}", done.stderr);
}

/// Found by review (rv248). Each restart of a side-car adopts the record under its identity, and an adoption with nothing
/// held jumps to the stored whole second + 1 whenever the stored second is not behind its wall clock
/// (`Elector::renewal`, `uncounted` = nothing held, no once-a-second limit). A few quick restarts (a crash loop)
/// within one second so push `renewTime` several seconds ahead of the writer's clock, and it stays that far
/// ahead afterwards. `Locks::adoption_answer_by` reads the record's age off `renewTime` on the wall clock and
/// allows for one second ahead only: the next restarted side-car answers its client's heartbeat up to
/// (seconds ahead - 1) later than the TTL counted from when the record was written, which is when a client-go
/// elector saw it change. Here (`--ttl 12s`: answers within 2 s, margin 0.4 s) five side-car processes under
/// one identity take/adopt the lock within one second (the last write stamped ~4 s ahead); the client is
/// told 200 by the last one's GET 9.8 s later (8.8 s here: see below), the pod restarts, and the client's PUT
/// reaches the new side-car (which had read the record) at +11 s while its API calls hang. It should be
/// answered by +11.6 s (the TTL from the write, less the margin); it is answered 503 at +13 s, a second after
/// a client-go elector took the lease at +12 s. Now an adoption with nothing held moves past the wall clock's
/// second by one at most, and one left in the stored second counts from a second before its send (so its
/// GET at 9.8 s is 503 now).
#[test]
fn a_crash_looping_side_car_never_runs_renew_time_ahead_nor_answers_after_client_go_took() {
    crash_loop_then_late_heartbeat(5);
}

/// The control: one side-car process (no adoption, `renewTime` on its clock): the heartbeat is answered in time.
#[test]
fn a_restarted_side_car_answers_a_late_heartbeat_before_client_go_takes_the_lease() {
    crash_loop_then_late_heartbeat(1);
}

fn crash_loop_then_late_heartbeat(processes: usize) {
    let env = TestEnv::kube();
    let Some(_server) = env.server() else { return };
    let (proxy, proxied) = env.proxied_kubeconfig();
    let name = env.lease_name("cg-ahead");
    let mut cars: Vec<(Proc, SocketAddr)> = (0..processes).map(|_| side_car(&env, "pod-a", "12s", None)).collect();
    let (new_car, new_address) = side_car(&env, "pod-a", "12s", Some(&proxied));
    // A crash loop: each process takes (or adopts) the lock at a heartbeat, then dies.
    until_fraction(0.02);
    let mut last = None;
    let n = cars.len();
    for (i, (car, address)) in cars.iter_mut().enumerate() {
        assert_eq!(request_status(*address, "PUT", &name), 200, "{}", car.stderr());
        if i + 1 < n {
            car.child.kill().unwrap();
            car.wait_for(PATIENCE).expect("killed");
        } else {
            last = Some(Instant::now());
        }
    }
    let written_at = last.unwrap();
    let written = stored(&env, &name).expect("written");
    let wall = k8s_openapi::jiff::Timestamp::now().as_second();
    let ahead = written.renew_time.as_ref().unwrap().0.as_second() - wall;
    eprintln!("renewTime is {ahead} whole seconds ahead of the wall clock after the crash loop");
    assert!(ahead <= 1, "renewTime ran {ahead} whole seconds ahead of the wall clock in a crash loop");
    // The new side-car reads the record (a GET of the client's), then its API calls hang.
    assert_eq!(request_status(new_address, "GET", &name), 200, "{}", new_car.stderr());
    proxy.delay_responses(Duration::from_secs(30));

    std::thread::scope(|scope| {
        let last_address = cars[n - 1].1;
        let client = scope.spawn({
            let name = name.clone();
            move || {
                // Told 200 by the old side-car (its GET answers from a record still its own until TTL - 2 s).
                std::thread::sleep(
                    (written_at + Duration::from_millis(8800)).saturating_duration_since(Instant::now()),
                );
                let got = request_status(last_address, "GET", &name);
                let got_at = epoch_nanos();
                // The pod restarts; the client's PUT reaches the new side-car.
                std::thread::sleep((written_at + Duration::from_secs(11)).saturating_duration_since(Instant::now()));
                let status = request_status(new_address, "PUT", &name);
                (got, got_at, status, epoch_nanos())
            }
        });
        // The client-go elector: it saw the record change (at the latest) when the last write was answered.
        let (mut observed, mut observed_at) = (client_go_raw(&written), written_at);
        let mut taken_at = None;
        let started = Instant::now();
        while taken_at.is_none() && started.elapsed() < Duration::from_secs(30) {
            let spec = stored(&env, &name).unwrap();
            if client_go_raw(&spec) != observed {
                observed = client_go_raw(&spec);
                observed_at = Instant::now();
            }
            let held = !spec.holder_identity.as_deref().unwrap_or("").is_empty();
            if held && observed_at.elapsed() >= Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0) as u64) {
                let taken = observed.clone();
                env.edit(&name, |spec| {
                    if client_go_raw(spec) != taken {
                        return;
                    }
                    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
                    spec.holder_identity = Some("client-go-elector".into());
                    spec.lease_duration_seconds = Some(12);
                    spec.acquire_time = Some(now.clone());
                    spec.renew_time = Some(now);
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                });
                if env.holder(&name).as_deref() == Some("client-go-elector") {
                    taken_at = Some(epoch_nanos());
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let taken_at = taken_at.expect("the client-go elector took the lease");
        let (got, got_at, status, told_at) = client.join().unwrap();
        proxy.delay_responses(Duration::ZERO);
        assert_eq!(got, 200, "the old side-car's GET");
        assert!(got_at < taken_at);
        assert!(
            told_at <= taken_at,
            "a client-go elector took the lease {:?} before the restarted side-car answered the client's heartbeat \
             ({status}); renewTime was {ahead} s ahead of the wall clock after the crash loop's adoptions\n{}",
            Duration::from_nanos((told_at - taken_at) as u64),
            new_car.stderr()
        );
    });
}
