//! A client-go elector beside mpsync on one Lease (CONTRACT: client-go electors respect mpsync's holds).
//! Each test plays the other writer (a client-go `LeaderElector` over a `LeaseLock`) by its own rules,
//! against the real binary (found by review, rv238).
//!
//! client-go's rule (k8s.io/client-go/tools/leaderelection, `tryAcquireOrRenew`): the lease is read, turned
//! into a `LeaderElectionRecord` and marshalled to JSON (`LeaseLock.Get`); when those bytes differ from the
//! bytes observed before, `observedTime` becomes the elector's own `now`; a held record is taken once
//! `observedTime + leaseDurationSeconds` has passed. The record's times are `metav1.Time`, which marshals
//! as RFC 3339 with whole seconds: a renewal whose `renewTime` stays within the same second as the one before
//! (and changes nothing else) is no change to a client-go elector, however many microseconds it moved.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use nix::sys::signal::Signal;

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

/// A client-go elector watching `name` (it polls every 50 ms: more often than client-go's retry period,
/// so it sees every change client-go could, and later than client-go would). Returns the epoch nanos at
/// which it took the lease by client-go's rule (its compare-and-swap answered), or `None` if it never
/// could within `patience`.
fn client_go_elector_takes(env: &TestEnv, name: &str, patience: Duration) -> Option<u128> {
    let mut observed: Option<String> = None;
    let mut observed_at = Instant::now();
    let started = Instant::now();
    while started.elapsed() < patience {
        if let Some((_, spec)) = env.get(name) {
            let raw = client_go_raw(&spec);
            if observed.as_ref() != Some(&raw) {
                observed = Some(raw);
                observed_at = Instant::now();
            }
            let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64);
            let held = !spec.holder_identity.as_deref().unwrap_or("").is_empty();
            if held && observed_at.elapsed() >= duration {
                // Expired by client-go's rule: it writes its acquisition (a compare-and-swap on what it read).
                let taken = observed.clone().unwrap();
                let mut took = false;
                env.edit(name, |spec| {
                    // Only the record it judged (a renewal in between that client-go sees is a change).
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
                    took = true;
                }
                if took {
                    return Some(epoch_nanos());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// The holder's child: stamps `alive NANOS` every 50 ms until stopped.
fn alive_script(alive: &Path) -> String {
    format!("while :; do echo alive $(date +%s%N) >> {}; sleep 0.05; done", alive.display())
}

/// Run `lock` under `shim` (with `vars`), let a client-go elector watch it, and fail if the elector takes
/// the lease while mpsync's child still runs.
fn client_go_never_takes_the_lease_beside_the_child(env: &TestEnv, prefix: &str, shim: &Path, vars: &[(&str, &str)]) {
    let name = env.lease_name(prefix);
    let alive = env.path("alive");
    let mut command = env.mpsync(fast(&["lock", &name, "-v"], &["sh", "-c", &alive_script(&alive)]));
    command.env("LD_PRELOAD", shim);
    for (key, value) in vars {
        command.env(key, value);
    }
    let mut holder = Proc::spawn(command, &env.dir);
    holder.wait_for_file(&alive, "alive");
    // Three lease durations (4 s each) and more: a renewing holder is never expired by client-go's rule.
    let taken = client_go_elector_takes(env, &name, Duration::from_secs(14));
    if let Some(taken_at) = taken {
        // The client-go elector leads from `taken_at`. mpsync's child must not run past it.
        let done = holder.finish();
        let last_alive = read_stamps(&alive).iter().map(|s| s.1).max().unwrap();
        assert!(
            last_alive < taken_at,
            "a client-go elector took the lease (by its own rule: the record unchanged, at whole seconds, for \
             leaseDurationSeconds) while mpsync's child still ran, {:?} after the takeover; mpsync exited \
             {:?}\n{}",
            Duration::from_nanos((last_alive - taken_at) as u64),
            done.code,
            done.stderr
        );
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
