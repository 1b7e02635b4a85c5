//! The library under the API server's faults (from review, rv303, which found these to hold): contenders on
//! threads of their own, each with its own current-thread runtime and its own client (as processes of their own
//! would be), take a plain lease or a semaphore's slots again and again while writes are committed and then
//! failed, dropped or answered late, the watch lags, commits are slow, or a holder's runtime is blocked by its own
//! work while it is cut off. Every hold is recorded from the moment `acquire` returned to the moment its token was
//! cancelled (or its work was done and it released): no two holds of one Lease (one slot) overlap, and fencing
//! tokens of successive holds of it increase. The test server's faults have no real-cluster counterpart: these
//! tests skip there.

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mpsync::{KubeClientBuilder, Lock, Timing};

use crate::support::apiserver::{AfterCommit, TestApiServer};
use crate::support::proxy::{FaultProxy, kubeconfig_upstream};
use crate::support::*;

/// As the CLI tests' `FAST`: a holder's token is cancelled at its renew deadline, 2 s before another may take over.
const FAST: Timing = Timing {
    lease_duration: Duration::from_secs(4),
    renew_deadline: Duration::from_secs(2),
    retry_period: Duration::from_millis(500),
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A hold: of which Lease (a semaphore's slot, for slots), by whom, with which token, from its acquisition
/// to its token's cancellation (lost) or its release.
#[derive(Clone, Debug)]
struct Hold {
    who: usize,
    lease: String,
    token: i32,
    from: Instant,
    until: Instant,
    lost: bool,
}

type Holds = Arc<Mutex<Vec<Hold>>>;

/// A contender on a thread of its own: `rounds` acquisitions of `name` (a semaphore of `slots`), each held for
/// `hold` or until lost, then released.
fn contender(
    env: &TestEnv,
    kubeconfig: &std::path::Path,
    name: &str,
    slots: Option<u32>,
    who: usize,
    rounds: usize,
    holds: &Holds,
) -> std::thread::JoinHandle<()> {
    let (kubeconfig, namespace, name, holds) =
        (kubeconfig.to_path_buf(), env.namespace.clone(), name.to_string(), Arc::clone(holds));
    std::thread::spawn(move || {
        runtime().block_on(async {
            let client = KubeClientBuilder::new().kubeconfig(&kubeconfig).build().await.unwrap();
            let mut builder = Lock::kube(client, &namespace, &name).timing(FAST);
            if let Some(n) = slots {
                builder = builder.slots(n);
            }
            let lock = builder.build().unwrap();
            for _ in 0..rounds {
                let held = match tokio::time::timeout(PATIENCE, lock.acquire()).await {
                    Ok(Ok(held)) => held,
                    Ok(Err(err)) => {
                        eprintln!("contender {who}: acquire failed: {err}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    Err(_) => panic!("contender {who}: no acquisition within {PATIENCE:?}"),
                };
                let from = Instant::now();
                let token = held.cancellation_token();
                let lost = tokio::select! {
                    () = token.cancelled() => true,
                    () = tokio::time::sleep(Duration::from_millis(400)) => false,
                };
                let until = Instant::now();
                let hold = Hold { who, lease: held.name().to_string(), token: held.fencing_token(), from, until, lost };
                holds.lock().unwrap().push(hold);
                let _ = held.release().await;
            }
        })
    })
}

/// No two holds of one Lease overlap, and tokens of successive holds of it increase.
#[track_caller]
fn assert_one_at_a_time(holds: &Holds, started: Instant) {
    let mut holds = holds.lock().unwrap().clone();
    holds.sort_by_key(|h| h.from);
    let shown: Vec<String> = holds
        .iter()
        .map(|h| {
            let lost = if h.lost { " lost" } else { "" };
            format!(
                "{} by {} (token {}) {:?}..{:?}{lost}",
                h.lease,
                h.who,
                h.token,
                h.from - started,
                h.until - started
            )
        })
        .collect();
    for (i, a) in holds.iter().enumerate() {
        for b in holds[i + 1..].iter().filter(|b| b.lease == a.lease) {
            assert!(b.from >= a.until, "two holds of {} at once: {a:?} and {b:?}\n{}", a.lease, shown.join("\n"));
            assert!(b.token > a.token, "tokens of {} went {} then {}\n{}", a.lease, a.token, b.token, shown.join("\n"));
        }
    }
}

/// `contenders` contenders of `rounds` holds each on a Lease named from `prefix` (a semaphore of `slots`), while
/// `faults` runs; then the check.
fn contend(prefix: &str, slots: Option<u32>, contenders: usize, rounds: usize, faults: impl FnOnce(&TestApiServer)) {
    if TestEnv::real_cluster() {
        return;
    }
    let env = TestEnv::kube();
    let name = env.lease_name(prefix);
    let holds = Holds::default();
    let started = Instant::now();
    let threads: Vec<_> =
        (0..contenders).map(|who| contender(&env, &env.kubeconfig, &name, slots, who, rounds, &holds)).collect();
    faults(env.server().unwrap());
    for thread in threads {
        thread.join().unwrap();
    }
    assert_one_at_a_time(&holds, started);
}

/// Each of `faults` on the next write to commit, one after another (each once the last has struck), `apart`
/// between them.
fn after_commits(server: &TestApiServer, faults: &[AfterCommit], apart: Duration) {
    for fault in faults {
        server.after_commit(1, *fault);
        let until = Instant::now() + PATIENCE;
        while server.after_commit_pending() > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(apart);
    }
}

/// A semaphore's acquisitions, renewals and releases committed, then answered 500 or 504, cut off, or answered
/// late (past the renew deadline, too).
#[test]
fn semaphore_slots_hold_one_holder_each_under_writes_that_fail_after_their_commit() {
    contend("libf-sem", Some(2), 4, 25, |server| {
        let faults = [
            AfterCommit::Fail(500),
            AfterCommit::Drop,
            AfterCommit::Delay(Duration::from_millis(1500)),
            AfterCommit::Fail(504),
            AfterCommit::Delay(Duration::from_millis(2600)),
            AfterCommit::Drop,
        ];
        after_commits(server, &faults.repeat(3), Duration::from_millis(300));
    });
}

/// A plain lease, its waiters' watch 2.5 s behind the commits (they learn of releases and takeovers late),
/// writes failing after their commit meanwhile.
#[test]
fn a_lease_holds_one_holder_at_a_time_under_a_lagging_watch_and_writes_that_fail_after_their_commit() {
    contend("libf-lag", None, 3, 6, |server| {
        server.set_watch_lag(Duration::from_millis(2500));
        let faults = [AfterCommit::Drop, AfterCommit::Fail(500), AfterCommit::Delay(Duration::from_millis(1200))];
        after_commits(server, &faults.repeat(3), Duration::from_millis(500));
    });
}

/// A semaphore, its watch 1.8 s behind, commits slow (700 ms) and fast by turns.
#[test]
fn semaphore_slots_hold_one_holder_each_under_a_lagging_watch_and_slow_commits() {
    contend("libf-semlag", Some(2), 4, 5, |server| {
        server.set_watch_lag(Duration::from_millis(1800));
        for slow in [true, false, true, false, true, false] {
            server.set_commit_delay(Duration::from_millis(if slow { 700 } else { 0 }));
            std::thread::sleep(Duration::from_millis(1500));
        }
    });
}

/// A holder reaches the API server through a proxy; it is cut off, and its work blocks the runtime's only thread
/// for `block`, past the renew deadline; the cut heals `heal_after` after it came. Another process waits directly.
/// The holder's token is cancelled (by the library's own thread) before the other acquires, and once its runtime
/// runs again the holder is not told it still holds, whatever renewal lands after the heal.
fn a_blocked_holder_cut_off_then_healed(heal_after: Duration, block: Duration) {
    if TestEnv::real_cluster() {
        return;
    }
    let env = TestEnv::kube();
    let name = env.lease_name("libf-block");
    let yaml = fs::read_to_string(&env.kubeconfig).unwrap();
    let proxy = Arc::new(FaultProxy::start(&kubeconfig_upstream(&yaml).unwrap()));
    let proxied = env.path("kubeconfig-proxied");
    fs::write(&proxied, proxy.kubeconfig_through(&yaml)).unwrap();
    let holds = Holds::default();
    let started = Instant::now();
    let acquired = Arc::new(AtomicBool::new(false));
    let holder = {
        let (namespace, name, holds, proxy, acquired) =
            (env.namespace.clone(), name.clone(), Arc::clone(&holds), Arc::clone(&proxy), Arc::clone(&acquired));
        let proxied = proxied.clone();
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let client = KubeClientBuilder::new().kubeconfig(&proxied).build().await.unwrap();
                let lock = Lock::kube(client, &namespace, &name).timing(FAST).build().unwrap();
                let held = lock.acquire().await.unwrap();
                acquired.store(true, Ordering::SeqCst);
                let from = Instant::now();
                let token = held.cancellation_token();
                // A thread of its own notes when the token is cancelled: this runtime will be blocked then.
                let cancelled_at = {
                    let token = token.clone();
                    std::thread::spawn(move || {
                        runtime().block_on(token.cancelled());
                        Instant::now()
                    })
                };
                // A renewal or two land first.
                tokio::time::sleep(Duration::from_millis(700)).await;
                proxy.partition();
                let healer = {
                    let proxy = Arc::clone(&proxy);
                    std::thread::spawn(move || {
                        std::thread::sleep(heal_after);
                        proxy.heal();
                    })
                };
                // The work blocks the runtime's only thread, then goes on step by step while the lock says it holds.
                std::thread::sleep(block);
                let steps_until = Instant::now() + PATIENCE;
                while !held.is_lost() && !token.is_cancelled() && Instant::now() < steps_until {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                assert!(held.is_lost(), "the holder's runtime ran again and was not told it lost the lease");
                let until = cancelled_at.join().unwrap();
                let hold = Hold { who: 0, lease: name.clone(), token: held.fencing_token(), from, until, lost: true };
                holds.lock().unwrap().push(hold);
                healer.join().unwrap();
            })
        })
    };
    wait_until("the holder to acquire", || acquired.load(Ordering::SeqCst));
    let other = contender(&env, &env.kubeconfig, &name, None, 1, 1, &holds);
    holder.join().unwrap();
    other.join().unwrap();
    assert_one_at_a_time(&holds, started);
}

#[test]
fn a_blocked_holder_cut_off_until_just_past_its_renew_deadline_is_lost_before_another_holds() {
    a_blocked_holder_cut_off_then_healed(Duration::from_millis(1900), Duration::from_millis(2600));
}

#[test]
fn a_blocked_holder_cut_off_past_its_block_is_lost_before_another_holds() {
    a_blocked_holder_cut_off_then_healed(Duration::from_millis(3500), Duration::from_millis(3200));
}
