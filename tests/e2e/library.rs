//! The library API (`mpsync::Lock`, `HeldLock`, `Election`), end to end: in this process on the test
//! API server (over TLS) and on the file backend, against the CLI and client-go records, and the
//! examples in `examples/` run as processes of their own.
//!
//! Each test runs its own current-thread runtime. Times that are compared are taken on one clock: the
//! monotonic clock of this process, or, against a child process's `date +%s%N` stamps, the system clock
//! (`epoch_nanos`) of the same host.

use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use mpsync::{AfterLoss, Election, Error, HeldLock, KubeClientBuilder, Lock, LockBuilder, LossReason, Outcome, Timing};
use nix::sys::signal::Signal;
use tokio::sync::{Notify, mpsc};

use crate::support::proxy::{FaultProxy, kubeconfig_upstream};
use crate::support::*;

both_backends!(
    two_elections_in_one_process_lead_one_at_a_time,
    fencing_tokens_increase_across_holders,
    try_acquire_on_a_held_lease_returns_none_without_waiting,
    release_hands_over_to_a_waiter_at_once,
    a_release_from_another_runtime_while_the_acquiring_one_sits_idle_ends,
    dropping_a_held_lock_cancels_its_token_and_releases_the_lease,
    a_lock_whose_runtime_is_gone_expires_after_its_duration,
    the_same_lock_after_its_runtime_is_gone_hands_out_a_new_hold_with_a_larger_token,
    a_release_asked_for_before_the_runtime_is_shut_down_says_nothing_was_written,
    a_token_is_cancelled_before_another_takes_over_even_when_the_runtime_does_not_run,
    cancelling_the_token_oneself_stops_only_the_work,
    cancelling_the_leadership_token_oneself_stops_only_the_work,
    election_cancels_the_work_on_loss_and_drops_it_after_the_grace,
    election_drops_at_once_work_whose_grace_ran_out_while_the_runtime_did_not_run,
    election_does_not_run_again_work_that_returned_after_the_loss,
    work_that_blocks_past_the_renew_deadline_sees_the_loss_when_it_runs_again,
    cli_waits_for_a_library_lease_and_the_library_for_a_cli_lease,
    client_go_record_is_respected_then_taken_over_in_its_format,
    status_and_observe_follow_the_holder,
    semaphore_slots_hold_one_holder_each,
    a_panic_in_election_work_gives_the_lease_back,
    two_elections_on_clones_of_one_lock_lead_one_at_a_time,
);

/// Short timings, as the CLI tests' `FAST`: grace is 4 - 2 - 1 = 1s.
const FAST: Timing = Timing {
    lease_duration: Duration::from_secs(4),
    renew_deadline: Duration::from_secs(2),
    retry_period: Duration::from_millis(500),
};

/// Well below `Timing::DEFAULT`'s 15s lease duration: a handover faster than this came from a release,
/// not from an expiry.
const PROMPT: Duration = Duration::from_secs(7);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// kube's own client from a kubeconfig's text, as a program that brings its own client builds one.
async fn client(yaml: &str) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(yaml).unwrap();
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await.unwrap();
    kube::Client::try_from(config).unwrap()
}

/// A lock on `name` in this environment's backend; on Kubernetes, over mpsync's own client for the
/// environment's kubeconfig (the partition tests bring kube's own).
async fn lock(env: &TestEnv, name: &str) -> LockBuilder {
    match env.backend {
        Backend::Kube => {
            let client = KubeClientBuilder::new().kubeconfig(&env.kubeconfig).build().await.unwrap();
            Lock::kube(client, &env.namespace, name)
        }
        Backend::File => Lock::file(env.lock_dir(), name),
    }
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {PATIENCE:?} waiting for {what}"),
    }
}

/// Wait (within PATIENCE) until `condition` holds, polling every 10 ms without blocking the runtime.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// Run `work` off the runtime: `TestEnv`'s helpers run a runtime of their own.
fn off_runtime<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| scope.spawn(work).join().unwrap())
}

/// An example program, as `cargo build --examples` (and tests/run.sh) built it.
pub(crate) fn example(name: &str) -> PathBuf {
    let examples = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("examples");
    let binary = examples.join(name);
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(format!("{name}.rs"));
    let modified = |path: &Path| fs::metadata(path).and_then(|m| m.modified()).ok();
    match (modified(&binary), modified(&source)) {
        (Some(built), Some(written)) if built >= written => binary,
        (None, _) => panic!("examples/{name}.rs is not built: run `cargo build --examples` first (tests/run.sh does)"),
        _ => panic!("examples/{name}.rs changed since it was built: run `cargo build --examples` first"),
    }
}

/// Start an example with `args`, its output captured, nothing inherited that could point it elsewhere.
fn spawn_example(env: &TestEnv, name: &str, args: &[&str]) -> Proc {
    let mut command = Command::new(example(name));
    command.args(args);
    scrub(&mut command);
    command.stdin(Stdio::null());
    Proc::spawn(command, &env.dir)
}

/// What a work sends its test while it leads.
#[derive(Debug, PartialEq)]
enum Term {
    Started { who: usize, token: i32, at: Instant },
    Ended { who: usize, at: Instant },
}

/// An election whose work reports its term and leads until told to step down (or the term ends).
/// Not an `async fn`: the signature states that an election's future is `Send + 'static`.
#[allow(clippy::manual_async_fn)]
fn leader(
    who: usize,
    lock: Lock,
    terms: mpsc::UnboundedSender<Term>,
    step_down: Arc<Notify>,
) -> impl Future<Output = mpsync::Result<Outcome<i32>>> + Send + 'static {
    async move {
        Election::new(lock)
            .run(|leadership| {
                let (terms, step_down) = (terms.clone(), Arc::clone(&step_down));
                async move {
                    let token = leadership.fencing_token();
                    terms.send(Term::Started { who, token, at: Instant::now() }).unwrap();
                    tokio::select! {
                        () = step_down.notified() => {}
                        () = leadership.lost() => {}
                    }
                    terms.send(Term::Ended { who, at: Instant::now() }).unwrap();
                    token
                }
            })
            .await
    }
}

fn two_elections_in_one_process_lead_one_at_a_time(env: &TestEnv) {
    let name = env.lease_name("lib-two-elections");
    runtime().block_on(async {
        let (terms_tx, mut terms) = mpsc::unbounded_channel();
        let step_down = [Arc::new(Notify::new()), Arc::new(Notify::new())];
        let mut runs = Vec::new();
        for (who, step_down) in step_down.iter().enumerate() {
            let lock = lock(env, &name).await.build().unwrap();
            // Spawned: an election's future is Send, so it runs on any runtime's tasks.
            runs.push(tokio::spawn(leader(who, lock, terms_tx.clone(), Arc::clone(step_down))));
        }
        let Term::Started { who: first, token: first_token, .. } = within("a leader", terms.recv()).await.unwrap()
        else {
            panic!("a term must start first");
        };
        step_down[first].notify_one();
        let Term::Ended { who, at: ended } = within("the first term to end", terms.recv()).await.unwrap() else {
            panic!("two leaders at once: the second started before the first ended");
        };
        assert_eq!(who, first);
        let Term::Started { who: second, token: second_token, at: started } =
            within("the second leader", terms.recv()).await.unwrap()
        else {
            panic!("a term must start next");
        };
        assert_ne!(second, first, "the other election leads next");
        assert!(second_token > first_token, "fencing tokens increase: {first_token} then {second_token}");
        assert!(
            started - ended < PROMPT,
            "the release handed over at once, not after an expiry: {:?}",
            started - ended
        );
        step_down[second].notify_one();
        for run in runs {
            let outcome = within("the elections to return", run).await.unwrap().unwrap();
            assert!(matches!(outcome, Outcome::Finished(_)), "{outcome:?}");
        }
    });
}

fn fencing_tokens_increase_across_holders(env: &TestEnv) {
    let name = env.lease_name("lib-tokens");
    let rt = runtime();
    let (a, last) = rt.block_on(async {
        let a = lock(env, &name).await.timing(FAST).build().unwrap();
        let b = lock(env, &name).await.timing(FAST).build().unwrap();
        let mut tokens = Vec::new();
        for holder in [&a, &b, &b, &a, &b] {
            let held = within("the lease", holder.acquire()).await.unwrap();
            tokens.push(held.fencing_token());
            held.release().await.unwrap();
        }
        assert!(tokens.windows(2).all(|w| w[0] < w[1]), "tokens must strictly increase: {tokens:?}");
        (a, *tokens.last().unwrap())
    });
    // Deleted: a Lock that saw the tokens continues them, by one attempt as by a wait. (One attempt may
    // answer "held" while it waits out a holder it might not have seen, for a lease duration.)
    env.delete(&name);
    let last = rt.block_on(async {
        let held = within("the deleted lease", async {
            loop {
                if let Some(held) = a.try_acquire().await.unwrap() {
                    return held;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(held.fencing_token() > last, "try_acquire: token {} after {last}", held.fencing_token());
        let token = held.fencing_token();
        held.release().await.unwrap();
        token
    });
    env.delete(&name);
    rt.block_on(async {
        let held = within("the deleted lease", a.acquire()).await.unwrap();
        assert!(held.fencing_token() > last, "acquire: token {} after {last}", held.fencing_token());
        held.release().await.unwrap();
    });
}

fn try_acquire_on_a_held_lease_returns_none_without_waiting(env: &TestEnv) {
    let name = env.lease_name("lib-try");
    runtime().block_on(async {
        let a = lock(env, &name).await.build().unwrap();
        let b = lock(env, &name).await.build().unwrap();
        let held = a.try_acquire().await.unwrap().expect("a free lease is acquired at once");
        let asked = Instant::now();
        assert!(b.try_acquire().await.unwrap().is_none(), "held by another holder");
        assert!(a.try_acquire().await.unwrap().is_none(), "held by this very lock");
        assert!(
            a.acquire_timeout(Duration::from_millis(300)).await.unwrap().is_none(),
            "a second acquisition of one Lock waits for the first"
        );
        assert!(asked.elapsed() < PROMPT, "one attempt waits for nothing: {:?}", asked.elapsed());
        assert!(!held.is_lost());
        held.release().await.unwrap();
        let held = b.try_acquire().await.unwrap().expect("a released lease is free at once");
        // A timeout of zero is one attempt, as `try_acquire` (found by review, helper-130: it never
        // looked, and a free lease was not acquired).
        assert!(a.acquire_timeout(Duration::ZERO).await.unwrap().is_none(), "held by another holder");
        held.release().await.unwrap();
        let held = a.acquire_timeout(Duration::ZERO).await.unwrap().expect("a free lease is acquired at once");
        held.release().await.unwrap();
    });
}

/// `release()` waits for the task that renews the lease, on the runtime that acquired it: from another
/// runtime's thread while that one sits idle, it ends with `Unavailable` (found by review, helper-130:
/// it waited for ever), and the release is written once that runtime runs again.
fn a_release_from_another_runtime_while_the_acquiring_one_sits_idle_ends(env: &TestEnv) {
    let name = env.lease_name("lib-idle-runtime");
    let first = runtime();
    let (held, other) = first.block_on(async {
        let held = lock(env, &name).await.timing(FAST).build().unwrap().acquire().await.unwrap();
        (held, lock(env, &name).await.timing(FAST).build().unwrap())
    });
    let asked = Instant::now();
    let released = runtime().block_on(within("the release", held.release()));
    assert!(matches!(released, Err(Error::Unavailable(_))), "{released:?}");
    let bound = FAST.call_timeout() * 4;
    assert!(asked.elapsed() >= bound, "ended before its bound: {:?}", asked.elapsed());
    first.block_on(async {
        let taken = within("the next holder", other.acquire()).await.unwrap();
        taken.release().await.unwrap();
    });
}

fn release_hands_over_to_a_waiter_at_once(env: &TestEnv) {
    let name = env.lease_name("lib-release");
    runtime().block_on(async {
        let a = lock(env, &name).await.build().unwrap();
        let b = lock(env, &name).await.build().unwrap();
        let held = a.acquire().await.unwrap();
        let token = held.cancellation_token();
        let waiter = tokio::spawn(async move { (b.acquire().await, Instant::now()) });
        // The waiter has seen the lease held, and waits, when one attempt of its own finds it held.
        let c = lock(env, &name).await.build().unwrap();
        assert!(c.try_acquire().await.unwrap().is_none());
        let released = Instant::now();
        held.release().await.unwrap();
        assert!(token.is_cancelled(), "the token is cancelled by the release");
        let (taken, at) = within("the waiter", waiter).await.unwrap();
        let taken = taken.unwrap();
        assert!(at - released < PROMPT, "handed over at once, not after the 15s duration: {:?}", at - released);
        taken.release().await.unwrap();
    });
}

fn dropping_a_held_lock_cancels_its_token_and_releases_the_lease(env: &TestEnv) {
    let name = env.lease_name("lib-drop");
    runtime().block_on(async {
        let a = lock(env, &name).await.build().unwrap();
        let b = lock(env, &name).await.build().unwrap();
        let held = a.acquire().await.unwrap();
        let token = held.cancellation_token();
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { (b.acquire().await, Instant::now()) })
        };
        let dropped = Instant::now();
        drop(held);
        assert!(token.is_cancelled(), "dropping cancels the token at once");
        let (taken, at) = within("the waiter", waiter).await.unwrap();
        let taken = taken.unwrap();
        assert!(at - dropped < PROMPT, "a dropped lock is given back at once: {:?}", at - dropped);

        // An acquisition dropped while it waits leaves nothing behind: the lock acquires at once later.
        assert!(tokio::time::timeout(Duration::from_millis(300), a.acquire()).await.is_err(), "held by b");
        let taken_token = taken.fencing_token();
        drop(taken);
        eventually("the dropped lock to be released", || {
            off_runtime(|| env.get(&name))
                .is_some_and(|(_, record)| record.holder_identity.unwrap_or_default().is_empty())
        })
        .await;
        let held = a.try_acquire().await.unwrap().expect("free after the drop");
        assert!(held.fencing_token() > taken_token, "{} after {taken_token}", held.fencing_token());
        held.release().await.unwrap();
    });
    // One attempt right after a drop waits for the giving back, on any runtime: never "held by this very
    // lock" because the background task had not run yet.
    let threads = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    threads.block_on(async {
        let a = lock(env, &name).await.build().unwrap();
        for round in 0..20 {
            let held = within("the lease", a.acquire()).await.unwrap();
            drop(held);
            let again = a.try_acquire().await.unwrap();
            assert!(again.is_some(), "round {round}: one attempt after a drop answered held");
        }
    });
}

fn a_lock_whose_runtime_is_gone_expires_after_its_duration(env: &TestEnv) {
    let name = env.lease_name("lib-runtime-gone");
    let first = runtime();
    let (identity, held) = first.block_on(async {
        let a = lock(env, &name).await.timing(FAST).build().unwrap();
        let held = a.acquire().await.unwrap();
        (a.identity().to_string(), held)
    });
    // The runtime goes, with the renewal task: nothing is released, nothing renewed; the work is told.
    let token = held.cancellation_token();
    drop(first);
    assert!(token.is_cancelled(), "work watching the token must stop when nothing renews the lease");
    drop(held);
    assert_eq!(env.holder(&name).as_deref(), Some(identity.as_str()), "nothing was released");
    runtime().block_on(async {
        let b = lock(env, &name).await.timing(FAST).build().unwrap();
        let asked = Instant::now();
        let held = within("the expired lease", b.acquire()).await.unwrap();
        assert!(
            asked.elapsed() >= FAST.lease_duration,
            "a lease nobody renews is taken over only after its duration: {:?}",
            asked.elapsed()
        );
        held.release().await.unwrap();
    });
}

/// Found by review: the runtime that acquired a lock is dropped while the `HeldLock` lives on. The old
/// hold says at once that it is lost, and the same `Lock`, acquired again on another runtime, never hands
/// that hold out a second time: it writes anew, with a larger fencing token.
fn the_same_lock_after_its_runtime_is_gone_hands_out_a_new_hold_with_a_larger_token(env: &TestEnv) {
    let name = env.lease_name("lib-same-lock");
    let first = runtime();
    let (lock, held) = first.block_on(async {
        let lock = lock(env, &name).await.timing(FAST).build().unwrap();
        let held = lock.acquire().await.unwrap();
        (lock, held)
    });
    drop(first);
    assert!(held.is_lost(), "nothing renews the lease: the hold is lost at once");
    assert!(held.cancellation_token().is_cancelled());
    runtime().block_on(async {
        assert_eq!(within("the loss", held.lost()).await, LossReason::Abandoned);
        if env.backend == Backend::Kube {
            // kube's client cannot outlive its runtime either: the lock says so, and a lock over a new
            // client takes the lease (after its duration: the dead runtime released nothing).
            let err = within("the answer", lock.acquire()).await.unwrap_err();
            assert!(matches!(err, Error::Config(_)) && err.to_string().contains("runtime"), "{err}");
            drop(lock);
            let lock = self::lock(env, &name).await.timing(FAST).build().unwrap();
            let again = within("the lease again", lock.acquire()).await.unwrap();
            assert!(again.fencing_token() > held.fencing_token());
            released_in_vain(held).await;
            again.release().await.unwrap();
            return;
        }
        let again = within("the lease again", lock.acquire()).await.unwrap();
        assert!(
            again.fencing_token() > held.fencing_token(),
            "a new hold, with a larger token: {} after {}",
            again.fencing_token(),
            held.fencing_token()
        );
        assert!(!again.is_lost() && held.is_lost());
        released_in_vain(held).await;
        again.release().await.unwrap();
    });
    assert_eq!(env.holder(&name).as_deref(), Some(""), "released");
}

/// Found by review (rv262): a release asked for from another runtime while the acquiring one sits idle (the
/// request queued), and that runtime then shut down: nothing writes the release, and the answer says so. Before,
/// it answered `Ok`, while the record named this holder until it expired.
fn a_release_asked_for_before_the_runtime_is_shut_down_says_nothing_was_written(env: &TestEnv) {
    let name = env.lease_name("lib-queued-release");
    let first = runtime();
    let held = first.block_on(async { lock(env, &name).await.timing(FAST).build().unwrap().acquire().await.unwrap() });
    runtime().block_on(async move {
        let mut release = Box::pin(held.release());
        // The first poll queues the request; the acquiring runtime is idle, so nothing answers it yet.
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(release.as_mut().poll(&mut context).is_pending(), "the release waits for the acquiring runtime");
        std::thread::spawn(move || drop(first)).join().unwrap();
        let err = within("the answer", release).await.unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)) && err.to_string().contains("shut down"), "{err}");
    });
}

/// The release of a hold whose runtime was shut down writes nothing, and says so (found by review, rv261:
/// it answered `Ok`, read as "handed over").
async fn released_in_vain(held: HeldLock) {
    let err = within("the answer", held.release()).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)) && err.to_string().contains("shut down"), "{err}");
}

/// Found by review: a lock acquired with `block_on` on a current-thread runtime, and work done outside
/// it, so that nothing runs the task that renews the lease (or cancels the token). The token is still
/// cancelled at the renew deadline, before another process can take the lease over.
fn a_token_is_cancelled_before_another_takes_over_even_when_the_runtime_does_not_run(env: &TestEnv) {
    let name = env.lease_name("lib-undriven");
    let first = runtime();
    let held = first.block_on(async { lock(env, &name).await.timing(FAST).build().unwrap().acquire().await.unwrap() });
    let token = held.cancellation_token();
    // The work, outside the runtime, while another process (its own thread and runtime) waits.
    let cancelled_when_taken = std::thread::scope(|scope| {
        let token = token.clone();
        let other = scope.spawn(move || {
            runtime().block_on(async {
                let other = lock(env, &name).await.timing(FAST).build().unwrap();
                let taken = within("the lease nobody renews", other.acquire()).await.unwrap();
                let cancelled = token.is_cancelled();
                taken.release().await.unwrap();
                cancelled
            })
        });
        other.join().unwrap()
    });
    assert!(cancelled_when_taken, "the work's token must be cancelled before another holder takes the lease");
    assert!(held.is_lost());
    drop(held);
    drop(first);
}

/// Found by review: the caller cancels the token it was given (to stop its own workers before it
/// cleans up). The lease stays held and renewed past the renew deadline, and is released when asked.
fn cancelling_the_token_oneself_stops_only_the_work(env: &TestEnv) {
    let name = env.lease_name("lib-own-cancel");
    runtime().block_on(async {
        let lock = lock(env, &name).await.timing(FAST).build().unwrap();
        let held = lock.acquire().await.unwrap();
        let token = held.cancellation_token();
        token.cancel();
        tokio::time::sleep(FAST.renew_deadline + Duration::from_millis(500)).await;
        assert!(!held.is_lost(), "cancelling the caller's token must not give up the lease");
        assert!(!held.cancellation_token().is_cancelled(), "a fresh token is not cancelled");
        assert!(lock.try_acquire().await.unwrap().is_none(), "still held");
        held.release().await.unwrap();
    });
    assert_eq!(env.holder(&name).as_deref(), Some(""), "released");
}

/// Found by review (helper-188): the same for a `Leadership`, whose token was the term's own: work that
/// cancelled it to stop its workers was told the term was lost (`is_lost`, `lost`) while it led on.
fn cancelling_the_leadership_token_oneself_stops_only_the_work(env: &TestEnv) {
    let name = env.lease_name("lib-own-cancel-term");
    let outcome = runtime().block_on(async {
        let lock = lock(env, &name).await.timing(FAST).build().unwrap();
        let (watcher, identity) = (lock.clone(), lock.identity().to_string());
        Election::new(lock)
            .run(|leadership| {
                let (watcher, identity) = (watcher.clone(), identity.clone());
                async move {
                    leadership.cancellation_token().cancel();
                    tokio::time::sleep(FAST.renew_deadline + Duration::from_millis(500)).await;
                    let lost = leadership.is_lost();
                    let held = watcher.status().await.unwrap()[0].holder.as_deref() == Some(identity.as_str());
                    (lost, held, leadership.cancellation_token().is_cancelled())
                }
            })
            .await
            .unwrap()
    });
    match outcome {
        Outcome::Finished((lost, held, fresh_cancelled)) => {
            assert!(!lost, "cancelling the work's token must not end the term");
            assert!(held, "still led");
            assert!(!fresh_cancelled, "a fresh token is not cancelled");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(env.holder(&name).as_deref(), Some(""), "released");
}

/// The work blocks its thread (of a current-thread runtime: nothing renews) past the renew deadline, as a
/// process frozen by SIGSTOP would. When it runs again, `is_lost` says so at once, for a `HeldLock` and a
/// `Leadership` alike, before any task has run to cancel a token.
fn work_that_blocks_past_the_renew_deadline_sees_the_loss_when_it_runs_again(env: &TestEnv) {
    let name = env.lease_name("lib-frozen");
    runtime().block_on(async {
        let lock = lock(env, &name).await.timing(FAST).build().unwrap();
        let held = lock.acquire().await.unwrap();
        assert!(!held.is_lost());
        let token = held.cancellation_token();
        std::thread::sleep(FAST.renew_deadline + Duration::from_millis(200));
        assert!(held.is_lost(), "HeldLock::is_lost after the renew deadline");
        assert!(token.is_cancelled(), "the token, cancelled at the deadline while the runtime did not run");
        drop(held);

        let election = Election::new(lock).after_loss(AfterLoss::Return);
        let seen = Arc::new(AtomicBool::new(false));
        let outcome = election
            .run(|leadership| {
                let seen = Arc::clone(&seen);
                async move {
                    assert!(!leadership.is_lost());
                    std::thread::sleep(FAST.renew_deadline + Duration::from_millis(200));
                    seen.store(
                        leadership.is_lost() && leadership.cancellation_token().is_cancelled(),
                        Ordering::SeqCst,
                    );
                }
            })
            .await;
        // It returned after the loss: not while leading.
        assert!(matches!(outcome, Ok(Outcome::Lost(LossReason::RenewDeadline))), "{outcome:?}");
        assert!(seen.load(Ordering::SeqCst), "Leadership::is_lost, and its token, after the renew deadline");
    });
}

fn election_cancels_the_work_on_loss_and_drops_it_after_the_grace(env: &TestEnv) {
    let name = env.lease_name("lib-loss");
    runtime().block_on(async {
        let lock = lock(env, &name).await.timing(FAST).build().unwrap();
        let election = Election::new(lock).after_loss(AfterLoss::Return);
        let (leading_tx, mut leading) = mpsc::unbounded_channel();
        let dropped = Arc::new(AtomicBool::new(false));
        let cancelled = Arc::new(AtomicBool::new(false));
        let run = election.run(|leadership| {
            let (dropped, cancelled, leading_tx) = (Arc::clone(&dropped), Arc::clone(&cancelled), leading_tx.clone());
            async move {
                struct OnDrop(Arc<AtomicBool>);
                impl Drop for OnDrop {
                    fn drop(&mut self) {
                        self.0.store(true, Ordering::SeqCst);
                    }
                }
                let _guard = OnDrop(dropped);
                leading_tx.send(()).unwrap();
                leadership.lost().await;
                cancelled.store(true, Ordering::SeqCst);
                // A work that does not return when told: dropped after the grace.
                std::future::pending::<()>().await;
            }
        });
        tokio::pin!(run);
        tokio::select! {
            outcome = &mut run => panic!("the election ended before leading: {outcome:?}"),
            _ = leading.recv() => {}
        }
        // Another writer takes the lease over (as a client-go elector whose view differs might).
        let taken = Instant::now();
        off_runtime(|| {
            env.edit(&name, |record| {
                record.holder_identity = Some("intruder".into());
                record.lease_transitions = Some(record.lease_transitions.unwrap_or(0) + 1);
            })
        });
        let outcome = within("the election to return", &mut run).await.unwrap();
        let returned = Instant::now();
        match outcome {
            Outcome::Lost(LossReason::Taken { holder }) => assert_eq!(holder, "intruder"),
            other => panic!("expected the lease lost to the intruder: {other:?}"),
        }
        assert!(cancelled.load(Ordering::SeqCst), "the work's token was cancelled");
        assert!(dropped.load(Ordering::SeqCst), "the work was dropped");
        // Grace: 4 - 2 - 1 = 1s after the loss was seen (at the next renewal).
        assert!(returned - taken >= Duration::from_secs(1), "the work had its grace: {:?}", returned - taken);
        assert!(returned - taken < FAST.lease_duration + Duration::from_secs(2), "{:?}", returned - taken);
    });
}

/// Found by review: another task blocks the election's (current-thread) runtime from before the renew
/// deadline until after `renew_deadline + grace`. The work, which awaits but ignores its token, is never
/// polled again when the runtime runs again: the grace ran out while it did not run (it counted from when
/// the loss was seen, so the work ran on for a full grace, past the moment another process could lead).
fn election_drops_at_once_work_whose_grace_ran_out_while_the_runtime_did_not_run(env: &TestEnv) {
    let name = env.lease_name("lib-blocked-grace");
    let last_step: Arc<Mutex<Option<Instant>>> = Arc::default();
    let unblocked: Arc<Mutex<Option<Instant>>> = Arc::default();
    let outcome = runtime().block_on(async {
        let lock = lock(env, &name).await.timing(FAST).build().unwrap();
        // Grace 1s: the work must be gone 3s after the last good renewal.
        let election = Election::new(lock).after_loss(AfterLoss::Return);
        election
            .run(|_leadership| {
                let (last_step, unblocked) = (Arc::clone(&last_step), Arc::clone(&unblocked));
                async move {
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        // Blocks the runtime's only thread past renew_deadline + grace after any renewal.
                        std::thread::sleep(FAST.renew_deadline + Duration::from_millis(1800));
                        *unblocked.lock().unwrap() = Some(Instant::now());
                    });
                    loop {
                        *last_step.lock().unwrap() = Some(Instant::now());
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
            .await
    });
    assert!(matches!(outcome, Ok(Outcome::Lost(LossReason::RenewDeadline))), "{outcome:?}");
    let last_step = last_step.lock().unwrap().expect("the work ran");
    let unblocked = unblocked.lock().unwrap().expect("the runtime was blocked");
    assert!(last_step < unblocked, "the work ran {:?} after the runtime ran again", last_step - unblocked);
}

/// Found by review: work that blocks the runtime past the renew deadline, then returns. It ran once: the
/// election ends with the loss, also when it campaigns again after losses (it ran the work again).
fn election_does_not_run_again_work_that_returned_after_the_loss(env: &TestEnv) {
    let name = env.lease_name("lib-late-return");
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let outcome = runtime().block_on(async {
        let lock = lock(env, &name).await.timing(FAST).build().unwrap();
        Election::new(lock)
            .run(|_leadership| {
                let runs = Arc::clone(&runs);
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(FAST.renew_deadline + Duration::from_millis(200));
                }
            })
            .await
    });
    assert!(matches!(outcome, Ok(Outcome::Lost(LossReason::RenewDeadline))), "{outcome:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the work ran once");
}

fn cli_waits_for_a_library_lease_and_the_library_for_a_cli_lease(env: &TestEnv) {
    let name = env.lease_name("lib-cli");
    let log = env.path("log");
    let go = env.path("go");
    runtime().block_on(async {
        // The CLI waits for the library's lease ...
        let library = lock(env, &name).await.build().unwrap();
        let held = library.acquire().await.unwrap();
        let mut cli = env.spawn(["-v", "lock", &name, "--", "sh", "-c", &stamp_script(&log, "true")]);
        eventually("the CLI to wait", || cli.stderr().contains("waiting")).await;
        let released = epoch_nanos();
        let library_token = held.fencing_token();
        held.release().await.unwrap();
        eventually("the CLI to exit", || cli.wait_for(Duration::ZERO).is_some()).await;
        assert_eq!(cli.wait_for(Duration::ZERO).and_then(|s| s.code()), Some(0), "{}", cli.stderr());
        let stamps = read_stamps(&log);
        let (_, started, token) = stamps.first().cloned().expect("the CLI's child ran");
        assert!(started > released, "the CLI's child started only after the library released");
        assert!(token.unwrap() > i64::from(library_token), "{token:?} after {library_token}");
        assert!(Duration::from_nanos((started - released) as u64) < PROMPT, "handed over at once");

        // ... and the library waits for the CLI's.
        let body = until_exists(&go);
        let mut cli = env.spawn(["lock", &name, "--", "sh", "-c", &stamp_script(&log, &body)]);
        eventually("the CLI's child to start", || read_stamps(&log).len() == 3).await;
        let waiter = {
            let library = library.clone();
            tokio::spawn(async move {
                let held = library.acquire().await;
                (held, epoch_nanos())
            })
        };
        fs::write(&go, "").unwrap();
        let (held, acquired) = within("the library to take over", waiter).await.unwrap();
        let held = held.unwrap();
        let stamps = read_stamps(&log);
        let (word, ended, cli_token) = stamps.last().cloned().unwrap();
        assert_eq!(word, "end");
        assert!(acquired > ended, "the library acquired only after the CLI's child ended");
        assert!(i64::from(held.fencing_token()) > cli_token.unwrap());
        assert!(Duration::from_nanos((acquired - ended) as u64) < PROMPT, "handed over at once");
        held.release().await.unwrap();
        eventually("the CLI to exit", || cli.wait_for(Duration::ZERO).is_some()).await;
    });
}

fn client_go_record_is_respected_then_taken_over_in_its_format(env: &TestEnv) {
    let name = env.lease_name("lib-client-go");
    env.put(&name, TestEnv::foreign_record("client-go-elsewhere", 3));
    let identity = runtime().block_on(async {
        let lock = lock(env, &name).await.timing(FAST).build().unwrap();
        let asked = Instant::now();
        assert!(lock.try_acquire().await.unwrap().is_none(), "a live client-go holder is respected");
        let held = within("the expired record", lock.acquire()).await.unwrap();
        assert!(
            asked.elapsed() >= Duration::from_secs(3),
            "waited out the holder's own duration from when it was seen: {:?}",
            asked.elapsed()
        );
        assert!(held.fencing_token() > 0, "the token continues from the record's leaseTransitions (0)");
        let (_, record) = off_runtime(|| env.get(&name)).unwrap();
        assert_eq!(record.holder_identity.as_deref(), Some(lock.identity()));
        assert_eq!(record.lease_duration_seconds, Some(4));
        assert_eq!(record.lease_transitions, Some(held.fencing_token()));
        assert!(record.acquire_time.is_some() && record.renew_time.is_some());
        held.release().await.unwrap();
        lock.identity().to_string()
    });
    let (_, record) = env.get(&name).unwrap();
    assert_eq!(record.holder_identity.as_deref().unwrap_or(""), "", "released as client-go releases (was {identity})");
    assert_eq!(record.lease_duration_seconds, Some(1));
}

fn status_and_observe_follow_the_holder(env: &TestEnv) {
    let name = env.lease_name("lib-observe");
    runtime().block_on(async {
        let a = lock(env, &name).await.build().unwrap();
        let status = a.status().await.unwrap();
        assert_eq!(status.len(), 1);
        assert!(!status[0].exists && status[0].holder.is_none() && !status[0].held, "{status:?}");
        let mut changes = Box::pin(a.observe());
        let first = within("the current state", changes.next()).await.unwrap();
        assert!(!first.exists, "{first:?}");
        let held = a.acquire().await.unwrap();
        let seen = within("the new holder", changes.next()).await.unwrap();
        assert_eq!(seen.holder.as_deref(), Some(a.identity()));
        assert_eq!(seen.transitions, held.fencing_token());
        let status = a.status().await.unwrap();
        assert!(status[0].held && status[0].holder.as_deref() == Some(a.identity()), "{status:?}");
        held.release().await.unwrap();
        let seen = within("the release", changes.next()).await.unwrap();
        assert!(seen.exists && seen.holder.is_none() && !seen.held, "{seen:?}");
        // Found by review (helper-98): a holder that never releases (it died) is reported free once its
        // record expires, with no event to say so.
        std::thread::scope(|s| {
            s.spawn(|| env.put(&name, TestEnv::foreign_record("gone", 1)));
        });
        let seen = within("the dead holder", changes.next()).await.unwrap();
        assert!(seen.holder.as_deref() == Some("gone") && seen.held, "{seen:?}");
        let seen = within("its expiry", changes.next()).await.unwrap();
        assert!(seen.holder.as_deref() == Some("gone") && !seen.held, "{seen:?}");
    });
}

fn semaphore_slots_hold_one_holder_each(env: &TestEnv) {
    let name = env.lease_name("lib-pool");
    runtime().block_on(async {
        let mut locks = Vec::new();
        for _ in 0..3 {
            locks.push(lock(env, &name).await.slots(2).build().unwrap());
        }
        let first = locks[0].try_acquire().await.unwrap().expect("slot free");
        let second = locks[1].try_acquire().await.unwrap().expect("slot free");
        let mut slots = [first.slot().unwrap(), second.slot().unwrap()];
        slots.sort();
        assert_eq!(slots, [0, 1]);
        assert_eq!(first.name(), format!("{name}-{}", first.slot().unwrap()));
        assert!(locks[2].try_acquire().await.unwrap().is_none(), "two slots, two holders");
        let mismatched = lock(env, &name).await.slots(3).build().unwrap();
        match mismatched.try_acquire().await {
            Err(Error::Api(message)) => {
                assert!(message.contains("2 slots"), "{message}");
                // In the library's words: its option, not the CLI's flag.
                assert!(message.contains("LockBuilder::slots") && !message.contains("--"), "{message}");
            }
            other => panic!("another count is refused: {other:?}"),
        }
        first.release().await.unwrap();
        let third = locks[2].try_acquire().await.unwrap().expect("a released slot is free");
        third.release().await.unwrap();
        second.release().await.unwrap();
    });
}

/// The leader reaches the API server through a fault proxy; the other process directly. A partition
/// must cancel the leader's token before the other can acquire the lease.
#[test]
fn partition_cancels_the_leaders_token_before_another_holder_can_start() {
    let env = TestEnv::kube();
    let name = env.lease_name("lib-partition");
    let yaml = fs::read_to_string(&env.kubeconfig).unwrap();
    let proxy = FaultProxy::start(&kubeconfig_upstream(&yaml).unwrap());
    runtime().block_on(async {
        let leader = Lock::kube(client(&proxy.kubeconfig_through(&yaml)).await, &env.namespace, &name)
            .timing(FAST)
            .build()
            .unwrap();
        let other = Lock::kube(client(&yaml).await, &env.namespace, &name).timing(FAST).build().unwrap();
        let held = leader.acquire().await.unwrap();
        let token = held.cancellation_token();
        let cancelled = tokio::spawn(async move {
            token.cancelled().await;
            Instant::now()
        });
        let started = tokio::spawn(async move {
            let held = other.acquire().await.unwrap();
            (Instant::now(), held)
        });
        // The other waits on its watch of the Lease when the partition comes.
        if let Some(server) = env.server() {
            eventually("the other to watch the Lease", || server.watch_count() >= 1).await;
        }
        proxy.partition();
        let partitioned = Instant::now();
        let cancelled = within("the leader's token", cancelled).await.unwrap();
        let (started, taken) = within("the other to take over", started).await.unwrap();
        assert!(
            cancelled < started,
            "the leader's token must be cancelled before another holder starts: cancelled {:?} after the \
             partition, the other started {:?} after it",
            cancelled - partitioned,
            started - partitioned
        );
        assert_eq!(within("the reason", held.lost()).await, LossReason::RenewDeadline);
        assert!(cancelled - partitioned < FAST.lease_duration, "{:?}", cancelled - partitioned);
        assert!(taken.fencing_token() > held.fencing_token());
        eprintln!(
            "partition: token cancelled after {:?}, other started after {:?} (margin {:?})",
            cancelled - partitioned,
            started - partitioned,
            started - cancelled
        );
        drop(held);
        taken.release().await.unwrap();
    });
}

/// In-process election A and the `leader_controller` example as process B: B waits while A leads, takes
/// over at once when A's work returns, and hands back at once when it is sent SIGTERM.
#[test]
fn two_elections_in_two_processes_hand_over_on_return_and_on_sigterm() {
    let env = TestEnv::kube();
    let name = env.lease_name("lib-two-processes");
    runtime().block_on(async {
        let a = lock(&env, &name).await.build().unwrap();
        let (terms_tx, mut terms) = mpsc::unbounded_channel();
        let step_down = Arc::new(Notify::new());
        let run = tokio::spawn(leader(0, a.clone(), terms_tx.clone(), Arc::clone(&step_down)));
        let Term::Started { token: first, .. } = within("A to lead", terms.recv()).await.unwrap() else { panic!() };

        let kubeconfig = env.kubeconfig.display().to_string();
        let b = spawn_example(&env, "leader_controller", &[&kubeconfig, &name, "4"]);
        eventually("B to campaign", || b.stdout().contains("campaigning as")).await;
        if let Some(server) = env.server() {
            eventually("B to watch the Lease", || server.watch_count() >= 1).await;
        }
        assert!(!b.stdout().contains("leading"), "B must not lead while A does:\n{}", b.stdout());
        step_down.notify_one();
        let Term::Ended { at: ended, .. } = within("A's term to end", terms.recv()).await.unwrap() else { panic!() };
        assert!(matches!(within("A's run", run).await.unwrap().unwrap(), Outcome::Finished(token) if token == first));
        eventually("B to lead", || b.stdout().contains("leading token=")).await;
        assert!(ended.elapsed() < PROMPT, "B took over at once: {:?}", ended.elapsed());
        let b_token: i32 = b.stdout().split("leading token=").nth(1).unwrap().lines().next().unwrap().parse().unwrap();
        assert!(b_token > first);
        eventually("B to reconcile", || b.stdout().contains(&format!("reconciled token={b_token}"))).await;

        // A campaigns again; B is stopped gracefully and releases.
        let run = tokio::spawn(leader(0, a.clone(), terms_tx.clone(), Arc::clone(&step_down)));
        let signalled = Instant::now();
        b.signal(Signal::SIGTERM);
        let Term::Started { token: again, at: started, .. } = within("A to lead again", terms.recv()).await.unwrap()
        else {
            panic!()
        };
        assert!(again > b_token);
        let b_done = b.finish();
        assert_eq!(b_done.code, Some(0), "{}", b_done.stderr);
        assert!(b_done.stdout.contains(&format!("stopped token={b_token}")), "{}", b_done.stdout);
        assert!(b_done.stdout.contains("released the lease; shut down"), "{}", b_done.stdout);
        assert!(started - signalled < PROMPT, "B handed back at once: {:?}", started - signalled);
        step_down.notify_one();
        let outcome = within("A's run", run).await.unwrap().unwrap();
        assert!(matches!(outcome, Outcome::Finished(token) if token == again), "{outcome:?}");
    });
}

/// Three `guarded_job` processes on one lease and one ledger: each writes its steps under its own token,
/// never interleaved, tokens increasing; a ledger that has seen a higher token refuses the next job.
#[test]
fn guarded_job_example_runs_one_at_a_time_and_fences_every_write() {
    let env = TestEnv::kube();
    let name = env.lease_name("lib-guarded");
    let ledger = env.path("ledger");
    let kubeconfig = env.kubeconfig.display().to_string();
    let ledger_arg = ledger.display().to_string();
    let jobs: Vec<Proc> =
        (0..3).map(|_| spawn_example(&env, "guarded_job", &[&kubeconfig, &name, &ledger_arg, "4"])).collect();
    for job in jobs {
        job.finish().assert_code(0);
    }
    let lines: Vec<(i32, String)> = fs::read_to_string(&ledger)
        .unwrap()
        .lines()
        .map(|line| {
            let (token, text) = line.split_once(' ').unwrap();
            (token.parse().unwrap(), text.to_string())
        })
        .collect();
    assert_eq!(lines.len(), 12, "{lines:?}");
    for (run, chunk) in lines.chunks(4).enumerate() {
        assert!(chunk.iter().all(|(token, _)| *token == chunk[0].0), "runs interleaved: {lines:?}");
        let steps: Vec<&str> = chunk.iter().map(|(_, text)| text.as_str()).collect();
        assert_eq!(steps, ["step 1", "step 2", "step 3", "step 4"], "run {run}: {lines:?}");
    }
    assert!(lines.chunks(4).map(|c| c[0].0).collect::<Vec<_>>().windows(2).all(|w| w[0] < w[1]), "{lines:?}");

    // A writer with a higher token was here (a later holder): this job's writes are refused.
    fs::write(&ledger, "999 from a later holder\n").unwrap();
    let stale = spawn_example(&env, "guarded_job", &[&kubeconfig, &name, &ledger_arg, "1"]).finish();
    assert_ne!(stale.code, Some(0));
    assert!(stale.stderr.contains("stale fencing token"), "{}", stale.stderr);
    assert_eq!(fs::read_to_string(&ledger).unwrap(), "999 from a later holder\n");
}

/// The `file_lock` example waits for `mpsync lock --backend file` and takes over when it ends.
#[test]
fn file_lock_example_waits_for_the_cli_and_takes_over_at_once() {
    let env = TestEnv::file();
    let name = env.lease_name("lib-file-example");
    let log = env.path("log");
    let go = env.path("go");
    let body = until_exists(&go);
    let cli = env.spawn(["lock", &name, "--", "sh", "-c", &stamp_script(&log, &body)]);
    wait_until("the CLI's child to start", || read_stamps(&log).len() == 1);
    let lock_dir = env.lock_dir().display().to_string();
    let example = spawn_example(&env, "file_lock", &[&lock_dir, &name, "100"]);
    wait_until("the example to wait", || example.stdout().contains("waiting"));
    fs::write(&go, "").unwrap();
    cli.finish().assert_code(0);
    let done = example.finish();
    done.assert_code(0);
    let token: i64 =
        done.stdout.split("acquired token=").nth(1).expect("acquired").lines().next().unwrap().parse().unwrap();
    let cli_token = read_stamps(&log)[0].2.unwrap();
    assert!(token > cli_token, "the example's token {token} follows the CLI's {cli_token}");
    assert!(done.stdout.contains("released"), "{}", done.stdout);
    assert_eq!(env.holder(&name).unwrap_or_default(), "", "released");
    // A usage error: one line and 125, as mpsync's own (it was `Error: "usage: ..."` and 1).
    for example in ["file_lock", "guarded_job", "leader_controller"] {
        let usage = spawn_example(&env, example, &[]).finish();
        usage.assert_code(125);
        let one_line = usage.stderr.lines().count() == 1;
        assert!(one_line && usage.stderr.starts_with(&format!("{example}: usage: {example} ")), "{}", usage.stderr);
    }
}

/// Every invalid option is refused by `build` (or `run`), before anything is sent, with a message that
/// names the option in the library's terms.
#[test]
fn bad_options_are_refused_with_clear_errors() {
    let parent = temp_dir("lib-options");
    // Made by `Lock::file`, mode 0700: the file backend refuses a directory open to other users.
    let dir = parent.join("locks");
    runtime().block_on(async {
        let client = || kube::Client::try_from(kube::Config::new("https://127.0.0.1:1".parse().unwrap())).unwrap();
        let cases: Vec<(&str, mpsync::Result<Lock>, &[&str])> = vec![
            ("a bad name", Lock::kube(client(), "default", "Bad_Name").build(), &["invalid lease name \"Bad_Name\""]),
            ("a bad namespace", Lock::kube(client(), "not valid", "ok").build(), &["invalid namespace \"not valid\""]),
            (
                "a renew deadline above the duration",
                Lock::file(&dir, "ok")
                    .timing(Timing { renew_deadline: Duration::from_secs(20), ..Timing::DEFAULT })
                    .build(),
                &["Timing::renew_deadline (20s) must be less than Timing::lease_duration (15s)"],
            ),
            (
                "a fractional duration",
                Lock::file(&dir, "ok")
                    .timing(Timing { lease_duration: Duration::from_millis(15500), ..Timing::DEFAULT })
                    .build(),
                &["Timing::lease_duration must be a whole number of seconds"],
            ),
            (
                "no room to retry",
                Lock::file(&dir, "ok")
                    .timing(Timing { retry_period: Duration::from_secs(9), ..Timing::DEFAULT })
                    .build(),
                &["Timing::retry_period (9s) times 1.2 must be less than Timing::renew_deadline (10s)"],
            ),
            (
                "a zero retry period",
                Lock::file(&dir, "ok").timing(Timing { retry_period: Duration::ZERO, ..Timing::DEFAULT }).build(),
                &["Timing::retry_period must be at least 10ms (got 0s)"],
            ),
            (
                "zero slots",
                Lock::file(&dir, "ok").slots(0).build(),
                &["LockBuilder::slots must be between 1 and 1000, not 0"],
            ),
            ("too many slots", Lock::file(&dir, "ok").slots(5000).build(), &["not 5000"]),
            (
                "a blank identity",
                Lock::file(&dir, "ok").identity("  ").build(),
                &["LockBuilder::identity must not be empty"],
            ),
        ];
        for (what, result, expected) in cases {
            match result {
                Err(Error::Usage(message)) => {
                    for part in expected {
                        assert!(message.contains(part), "{what}: {message:?} should say {part:?}");
                    }
                    assert!(!message.contains("--"), "{what}: no CLI flags in a library's message: {message}");
                    assert!(message.lines().count() <= 2, "{what}: {message}");
                }
                other => panic!("{what}: expected a usage error, got {other:?}"),
            }
        }
        match Lock::file("/proc/mpsync-cannot-be-here", "ok").build() {
            Err(Error::File(message)) => assert!(message.contains("/proc/mpsync-cannot-be-here"), "{message}"),
            other => panic!("an unusable lock directory: {other:?}"),
        }
        match Lock::file(&parent, "ok").build() {
            Err(Error::File(message)) => {
                assert!(message.contains("open to other users"), "{message}");
                assert!(!message.contains("--"), "no CLI flags in a library's message: {message}");
            }
            other => panic!("a lock directory open to other users: {other:?}"),
        }
        let lock = Lock::file(&dir, "ok").build().unwrap();
        let long_grace = Election::new(lock).grace(Duration::from_secs(5)).run(|_| async {}).await;
        match long_grace {
            Err(Error::Usage(message)) => assert!(message.contains("Election::grace (5s)"), "{message}"),
            other => panic!("a grace that lets two leaders overlap: {other:?}"),
        }
    });
    let _ = fs::remove_dir_all(&parent);
}

/// `KubeClientBuilder` refuses a kubeconfig it cannot use with an `Error::Config` that names what is
/// wrong in the library's terms; nothing is sent.
#[test]
fn kube_client_builder_refuses_an_unusable_configuration_with_clear_errors() {
    let dir = temp_dir("lib-client");
    let kubeconfig = |name: &str, yaml: &str| {
        let path = dir.join(name);
        fs::write(&path, yaml).unwrap();
        path
    };
    let cluster = |extra: &str| {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters: [{{name: k, cluster: {{server: 'https://127.0.0.1:1'{extra}}}}}]\n\
             contexts: [{{name: c, context: {{cluster: k, user: u, namespace: ns}}}}]\nusers: [{{name: u, user: {{}}}}]\n"
        )
    };
    let good = kubeconfig("good", &cluster(", insecure-skip-tls-verify: true"));
    // A context's name cannot break the message into lines.
    let odd = kubeconfig("odd", &cluster("").replace("{name: c,", "{name: \"c\\nmpsync: a fake line\","));
    let missing = dir.join("missing");
    let bad_ca = kubeconfig("bad-ca", &cluster(", certificate-authority-data: '%%%'"));
    let ca_file = dir.join("no-such-ca.crt");
    let gone_ca = kubeconfig("gone-ca", &cluster(&format!(", certificate-authority: '{}'", ca_file.display())));
    runtime().block_on(async {
        // What works: the context's namespace is the client's default, and nothing was sent.
        let client = KubeClientBuilder::new().kubeconfig(&good).build().await.unwrap();
        assert_eq!(client.default_namespace(), "ns");
        let cases: Vec<(&str, KubeClientBuilder, Vec<String>)> = vec![
            (
                "a kubeconfig that does not exist",
                KubeClientBuilder::new().kubeconfig(&missing),
                vec![missing.display().to_string(), "KubeClientBuilder::kubeconfig".into()],
            ),
            (
                "a context it does not have",
                KubeClientBuilder::new().kubeconfig(&good).context("other"),
                vec!["no context \"other\"".into(), "its contexts: \"c\"".into()],
            ),
            (
                "a context it does not have, among one whose name has a line break",
                KubeClientBuilder::new().kubeconfig(&odd).context("other"),
                vec!["no context \"other\"".into(), "\"c\\nmpsync: a fake line\"".into()],
            ),
            (
                "CA data that is not base64",
                KubeClientBuilder::new().kubeconfig(&bad_ca),
                vec!["certificate-authority-data".into(), "base64".into()],
            ),
            (
                "a CA file that does not exist",
                KubeClientBuilder::new().kubeconfig(&gone_ca),
                vec![ca_file.display().to_string()],
            ),
            // Found by review (rv256): accepted, it made every connection time out at once.
            (
                "a connect timeout of zero",
                KubeClientBuilder::new().kubeconfig(&good).connect_timeout(std::time::Duration::ZERO),
                vec!["connect timeout".into(), "more than zero".into()],
            ),
        ];
        for (what, builder, expected) in cases {
            match builder.build().await {
                Err(Error::Config(message)) => {
                    for part in &expected {
                        assert!(message.contains(part.as_str()), "{what}: {message:?} should say {part:?}");
                    }
                    assert!(!message.contains("--"), "{what}: no CLI flags in a library's message: {message}");
                    assert!(message.lines().count() <= 2, "{what}: {message}");
                }
                Err(other) => panic!("{what}: expected a configuration error, got {other:?}"),
                Ok(_) => panic!("{what}: expected a configuration error, got a client"),
            }
        }
    });
    let _ = fs::remove_dir_all(&dir);
}

/// The engine's one attempt, on slots that observed the lease in an earlier campaign: after the holder
/// released, the lease is free, and one attempt takes it: it reads again before answering "held".
#[test]
fn engine_one_attempt_reads_again_before_answering_held() {
    use mpsync::engine::{Campaigned, Ignore, Slot, Wait, campaign};
    use mpsync::lease::Elector;
    use mpsync::store::Store;
    use mpsync::store::file::FileStore;

    let env = TestEnv::file();
    let name = env.lease_name("lib-engine-stale");
    runtime().block_on(async {
        let store = Store::File(FileStore::open(env.lock_dir(), "default".into()).unwrap());
        let slot = |identity: &str| {
            vec![Slot::new(name.clone(), store.clone(), Elector::new(identity, FAST), Arc::new(Ignore))]
        };
        let (mut holder, mut other) = (slot("holder"), slot("other"));
        assert!(matches!(campaign(&mut holder, Wait::NoWait, &name).await.unwrap(), Campaigned::Acquired(0)));
        assert!(matches!(campaign(&mut other, Wait::NoWait, &name).await.unwrap(), Campaigned::NotAcquired { .. }));
        assert!(holder[0].settle(FAST.call_timeout()).await.unwrap(), "released");
        let again = campaign(&mut other, Wait::NoWait, &name).await.unwrap();
        assert!(matches!(again, Campaigned::Acquired(0)), "the lease is free, but one attempt answered {again:?}");
        other[0].settle(FAST.call_timeout()).await.unwrap();
    });
}

/// An API server out of reach is not "held by another": one attempt retries for a lease duration, then
/// says the store is unavailable; a status read says so at once.
#[test]
fn an_unreachable_api_server_is_unavailable_not_held() {
    let env = TestEnv::kube();
    let name = env.lease_name("lib-unreachable");
    let yaml = fs::read_to_string(&env.kubeconfig).unwrap();
    let proxy = FaultProxy::start(&kubeconfig_upstream(&yaml).unwrap());
    proxy.partition();
    runtime().block_on(async {
        let lock = Lock::kube(client(&proxy.kubeconfig_through(&yaml)).await, &env.namespace, &name)
            .timing(FAST)
            .build()
            .unwrap();
        match within("the status", lock.status()).await {
            Err(Error::Unavailable(message)) => assert!(message.contains(&name), "{message}"),
            other => panic!("a status read through a partition: {other:?}"),
        }
        let asked = Instant::now();
        match within("one attempt", lock.try_acquire()).await {
            Err(Error::Unavailable(message)) => assert!(message.contains(&name), "{message}"),
            other => panic!("one attempt through a partition: {other:?}"),
        }
        assert!(asked.elapsed() >= FAST.lease_duration, "retried for a lease duration: {:?}", asked.elapsed());
    });
}

/// Work that panics inside `Election::run` (the program catches the panic and goes on) leaves no lease held
/// by nobody: it is given back, and another holder takes it well before a lease duration (review, rv217).
fn a_panic_in_election_work_gives_the_lease_back(env: &TestEnv) {
    let name = env.lease_name("lib-panic");
    runtime().block_on(async {
        let a = lock(env, &name).await.build().unwrap();
        let b = lock(env, &name).await.build().unwrap();
        let election = Election::new(a);
        let run = election.run(|_leadership| async move {
            tokio::task::yield_now().await;
            panic!("the work panicked");
        });
        let panicked = std::panic::AssertUnwindSafe(run).catch_unwind().await;
        assert!(panicked.is_err(), "the work's panic reaches the caller");
        let asked = Instant::now();
        let taken = within("b", b.acquire()).await.unwrap();
        assert!(asked.elapsed() < PROMPT, "b waited {:?}", asked.elapsed());
        taken.release().await.unwrap();
    });
}

/// Two elections over clones of one `Lock` (one holder, one identity) never lead at once, and both lead in
/// turn (review, rv217).
fn two_elections_on_clones_of_one_lock_lead_one_at_a_time(env: &TestEnv) {
    let name = env.lease_name("lib-clones");
    runtime().block_on(async {
        let lock = lock(env, &name).await.timing(FAST).build().unwrap();
        let leading = Arc::new(AtomicUsize::new(0));
        let terms = Arc::new(AtomicUsize::new(0));
        let elect = |lock: Lock| {
            let (leading, terms) = (Arc::clone(&leading), Arc::clone(&terms));
            async move {
                Election::new(lock)
                    .run(|leadership| {
                        let (leading, terms) = (Arc::clone(&leading), Arc::clone(&terms));
                        async move {
                            assert_eq!(leading.fetch_add(1, Ordering::SeqCst), 0, "two leaders at once");
                            terms.fetch_add(1, Ordering::SeqCst);
                            tokio::select! {
                                () = tokio::time::sleep(Duration::from_millis(300)) => {}
                                () = leadership.lost() => {}
                            }
                            leading.fetch_sub(1, Ordering::SeqCst);
                        }
                    })
                    .await
            }
        };
        let (x, y) = within("both elections", async { tokio::join!(elect(lock.clone()), elect(lock.clone())) }).await;
        assert!(matches!(x, Ok(Outcome::Finished(()))), "{x:?}");
        assert!(matches!(y, Ok(Outcome::Finished(()))), "{y:?}");
        assert_eq!(terms.load(Ordering::SeqCst), 2, "both led, in turn");
    });
}

/// The `leader_controller` example, cut off from the API server while it leads: its loop has stopped
/// by the time another holder gets the lease.
#[test]
fn leader_controller_example_stops_its_loop_before_another_can_lead() {
    let env = TestEnv::kube();
    let name = env.lease_name("lib-controller-loss");
    let yaml = fs::read_to_string(&env.kubeconfig).unwrap();
    let proxy = FaultProxy::start(&kubeconfig_upstream(&yaml).unwrap());
    let through = env.path("kubeconfig-through-proxy");
    fs::write(&through, proxy.kubeconfig_through(&yaml)).unwrap();
    let controller = spawn_example(&env, "leader_controller", &[&through.display().to_string(), &name, "4"]);
    wait_until("the controller to reconcile", || controller.stdout().contains("reconciled token="));
    runtime().block_on(async {
        let other = Lock::kube(client(&yaml).await, &env.namespace, &name).timing(FAST).build().unwrap();
        proxy.partition();
        let held = within("the other to take over", other.acquire()).await.unwrap();
        // Read the moment the other holds the lease: the controller's loop must have stopped already.
        let stdout = controller.stdout();
        let token = stdout.split("leading token=").nth(1).unwrap().lines().next().unwrap().to_string();
        assert!(stdout.contains(&format!("stopped token={token}")), "still working:\n{stdout}");
        assert!(i64::from(held.fencing_token()) > token.parse::<i64>().unwrap());
        held.release().await.unwrap();
    });
}

/// Found by review (helper-78): an API server that keeps failing (503) is `Error::Unavailable` ("retry
/// later") for `try_acquire` and `acquire_timeout` of a semaphore, as for a plain lease; a semaphore
/// whose marker could not be read answered `Error::Api`, which is "retrying will not fix".
#[test]
fn a_semaphore_on_a_failing_server_is_unavailable_as_a_plain_lease_is() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else {
        eprintln!("SKIPPED: needs the test server's fault injection");
        return;
    };
    let name = env.lease_name("failing");
    runtime().block_on(async {
        let plain = lock(&env, &name).await.timing(FAST).build().unwrap();
        let pool = lock(&env, &format!("{name}-pool")).await.timing(FAST).slots(2).build().unwrap();
        server.fail_next(100_000, 503);
        let tried = plain.try_acquire().await;
        let pool_tried = pool.try_acquire().await;
        let pool_waited = pool.acquire_timeout(Duration::from_secs(3)).await;
        server.fail_next(0, 503);
        assert!(matches!(tried, Err(mpsync::Error::Unavailable(_))), "{tried:?}");
        assert!(matches!(pool_tried, Err(mpsync::Error::Unavailable(_))), "semaphore try_acquire: {pool_tried:?}");
        assert!(
            matches!(pool_waited, Err(mpsync::Error::Unavailable(_))),
            "semaphore acquire_timeout: {pool_waited:?}"
        );
    });
}

/// Found by review (helper-109): a holder cut off from the API server asks for its release before its renew
/// deadline (no lapse), and the release never arrives. Another process takes the lease after its
/// duration; then etcd is restored to a snapshot taken while the first was cut off, which shows the
/// first's hold at the very version it knew. Back in touch, the first must not take that record again at
/// once: the other holder, whom etcd forgot, still runs its work until its next renewal fails.
#[test]
fn a_release_that_never_arrived_then_a_restore_never_lets_the_old_holder_in_beside_the_new() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let name = env.lease_name("release-restore");
    let yaml = fs::read_to_string(&env.kubeconfig).unwrap();
    let proxy = FaultProxy::start(&kubeconfig_upstream(&yaml).unwrap());
    // The other renews every 2 s: it learns of the restore up to 2 s after it.
    let slow = Timing {
        lease_duration: Duration::from_secs(8),
        renew_deadline: Duration::from_secs(6),
        retry_period: Duration::from_secs(2),
    };
    runtime().block_on(async {
        let first = Lock::kube(client(&proxy.kubeconfig_through(&yaml)).await, &env.namespace, &name)
            .timing(FAST)
            .build()
            .unwrap();
        let other = Lock::kube(client(&yaml).await, &env.namespace, &name).timing(slow).build().unwrap();
        let held = first.acquire().await.unwrap();
        proxy.partition();
        // Asked for at once, long before the renew deadline: it cannot arrive.
        let released = held.release().await;
        assert!(released.is_err(), "the release went through a partition");
        let snapshot = server.snapshot();
        let taken = within("the other to take over", other.acquire()).await.unwrap();
        let token = taken.cancellation_token();
        let cancelled = tokio::spawn(async move {
            token.cancelled().await;
            Instant::now()
        });
        restore_then_no_second_holder(server, &proxy, &snapshot, &first, taken, cancelled).await;
    });
}

/// A `tracing` writer into a shared buffer.
struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Found by review (rv264): a hold lost at its renew deadline while cut off from the API server (its record may
/// still be its own), whose runtime is then shut down: nothing can write the release, and `release()` says so.
/// Before, it answered `Ok`, as if given back, while the record named this holder until it expired.
#[test]
fn a_release_after_a_loss_at_the_renew_deadline_whose_runtime_is_gone_says_nothing_was_written() {
    let env = TestEnv::kube();
    if env.server().is_none() {
        return;
    }
    let name = env.lease_name("lapsed-runtime-gone");
    let yaml = fs::read_to_string(&env.kubeconfig).unwrap();
    let proxy = FaultProxy::start(&kubeconfig_upstream(&yaml).unwrap());
    let first = runtime();
    let held = first.block_on(async {
        let lock = Lock::kube(client(&proxy.kubeconfig_through(&yaml)).await, &env.namespace, &name);
        lock.timing(FAST).build().unwrap().acquire().await.unwrap()
    });
    // The task that renews the lease runs on this thread (a current-thread runtime): what it logs says when it
    // has taken the loss in (its state says why: the renew deadline), before its runtime is shut down.
    let log = Arc::new(Mutex::new(Vec::new()));
    let writer = Arc::clone(&log);
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || LogWriter(Arc::clone(&writer)))
        .finish();
    let _logged = tracing::subscriber::set_default(subscriber);
    proxy.partition();
    let reason = first.block_on(within("the loss at the renew deadline", held.lost()));
    assert_eq!(reason, LossReason::RenewDeadline);
    first.block_on(within("the task to take the loss in", async {
        while !String::from_utf8_lossy(&log.lock().unwrap()).contains("lease lost") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }));
    drop(first);
    let released = runtime().block_on(within("the answer", held.release()));
    proxy.heal();
    let err = released.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)) && err.to_string().contains("shut down"), "{err}");
}

/// Found by review (helper-109): the same with a hold that lapsed at its renew deadline while cut off (no release
/// asked for): the lease duration it keeps the process from acquiring was over long before the process
/// could see anything again, and its own restored record was taken again at once.
#[test]
fn a_hold_that_lapsed_while_cut_off_then_a_restore_never_lets_the_old_holder_in_beside_the_new() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let name = env.lease_name("lapse-restore");
    let yaml = fs::read_to_string(&env.kubeconfig).unwrap();
    let proxy = FaultProxy::start(&kubeconfig_upstream(&yaml).unwrap());
    let slow = Timing {
        lease_duration: Duration::from_secs(8),
        renew_deadline: Duration::from_secs(6),
        retry_period: Duration::from_secs(2),
    };
    runtime().block_on(async {
        let first = Lock::kube(client(&proxy.kubeconfig_through(&yaml)).await, &env.namespace, &name)
            .timing(FAST)
            .build()
            .unwrap();
        let other = Lock::kube(client(&yaml).await, &env.namespace, &name).timing(slow).build().unwrap();
        let held = first.acquire().await.unwrap();
        proxy.partition();
        let lapsed_at = {
            let token = held.cancellation_token();
            within("the lapse", token.cancelled()).await;
            Instant::now()
        };
        drop(held);
        let snapshot = server.snapshot();
        let taken = within("the other to take over", other.acquire()).await.unwrap();
        let token = taken.cancellation_token();
        let cancelled = tokio::spawn(async move {
            token.cancelled().await;
            Instant::now()
        });
        // Cut off for longer than a lease duration after the lapse (an outage; a restore takes minutes).
        let until = lapsed_at + FAST.lease_duration + Duration::from_secs(1);
        eventually("a lease duration after the lapse", || Instant::now() >= until).await;
        restore_then_no_second_holder(server, &proxy, &snapshot, &first, taken, cancelled).await;
    });
}

/// Found by review (helper-111): a hold that lapsed (renewals answered 503 until the renew deadline) while the
/// server can still be read: the release's settle reads once (that read takes the lapse's "first read"
/// and protects for a lease duration from it), then every release is refused until the budget is spent.
/// The release did not land, yet it was not marked again as a lapse. Cut off for
/// longer than a lease duration, then an etcd restore to the first's own last record: it must not take
/// that record back at once beside the other holder.
#[test]
fn a_lapse_whose_release_failed_after_a_read_then_a_restore_never_lets_the_old_holder_in() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let name = env.lease_name("lapse-release");
    let yaml = fs::read_to_string(&env.kubeconfig).unwrap();
    let proxy = FaultProxy::start(&kubeconfig_upstream(&yaml).unwrap());
    let slow = Timing {
        lease_duration: Duration::from_secs(8),
        renew_deadline: Duration::from_secs(6),
        retry_period: Duration::from_secs(2),
    };
    runtime().block_on(async {
        let first = Lock::kube(client(&proxy.kubeconfig_through(&yaml)).await, &env.namespace, &name)
            .timing(FAST)
            .build()
            .unwrap();
        let other = Lock::kube(client(&yaml).await, &env.namespace, &name).timing(slow).build().unwrap();
        let held = first.acquire().await.unwrap();
        // Every write on the lease fails from now: renewals, then the releases.
        server.fail_next_on(&format!("update:{name}"), 1_000_000, 503);
        let lapsed_at = {
            let token = held.cancellation_token();
            within("the lapse", token.cancelled()).await;
            Instant::now()
        };
        // Asked for the release (the settle waits for the HeldLock to go).
        drop(held);
        let snapshot = server.snapshot();
        // The settle: a read answered after the lapse, then a release refused after it (so the read's
        // answer was taken in).
        let path_end = format!("/{name}");
        let settled_read = || {
            let log = server.requests();
            let after: Vec<_> = log.iter().filter(|r| r.at >= lapsed_at && r.path.ends_with(&path_end)).collect();
            after.iter().enumerate().any(|(i, r)| {
                r.verb == "get"
                    && r.status == 200
                    && after[i + 1..].iter().any(|w| w.verb == "update" && w.status == 503)
            })
        };
        eventually("the settle's read, then a refused release", settled_read).await;
        proxy.partition();
        server.fail_next_on(&format!("update:{name}"), 0, 503);
        let taken = within("the other to take over", other.acquire()).await.unwrap();
        let token = taken.cancellation_token();
        let cancelled = tokio::spawn(async move {
            token.cancelled().await;
            Instant::now()
        });
        let until = Instant::now().max(lapsed_at + FAST.lease_duration + Duration::from_secs(2));
        eventually("a lease duration after the settle's read", || Instant::now() >= until).await;
        restore_then_no_second_holder(server, &proxy, &snapshot, &first, taken, cancelled).await;
    });
}

/// The restore, then the first process back in touch: it acquires again only once the other's token is
/// cancelled (that holder, whom etcd forgot, learns of the restore at its next renewal).
async fn restore_then_no_second_holder(
    server: &crate::support::apiserver::TestApiServer,
    proxy: &FaultProxy,
    snapshot: &crate::support::apiserver::Snapshot,
    first: &Lock,
    taken: mpsync::HeldLock,
    cancelled: tokio::task::JoinHandle<Instant>,
) {
    server.restore(snapshot);
    proxy.heal();
    let again = within("the first to acquire again", first.acquire()).await.unwrap();
    let acquired = Instant::now();
    let cancelled = within("the other's loss", cancelled).await.unwrap();
    assert!(
        cancelled <= acquired,
        "the first acquired again {:?} before the other's token was cancelled: two holders at once \
         (tokens {} and {})",
        cancelled - acquired,
        again.fencing_token(),
        taken.fencing_token()
    );
    drop(taken);
    again.release().await.unwrap();
}

both_backends!(
    an_acquire_dropped_at_any_point_leaves_nothing_held,
    two_locks_with_one_identity_in_one_process_never_both_hold,
);

/// An `acquire()` dropped (by `tokio::time::timeout`) at every point of its way, from before
/// its first read to after its write landed: each time, another `Lock` gets the lease promptly (given back,
/// not expired), and the dropped lock's own next acquisition writes a larger fencing token.
fn an_acquire_dropped_at_any_point_leaves_nothing_held(env: &TestEnv) {
    let name = env.lease_name("review-drop-any");
    runtime().block_on(async {
        let a = lock(env, &name).await.timing(FAST).build().unwrap();
        let b = lock(env, &name).await.timing(FAST).build().unwrap();
        let mut last_token = -1;
        for round in 0..40u64 {
            // 0 to ~20 ms, in steps of 500 µs: before the read, during it, during the write, after it.
            let cut = Duration::from_micros(round * 500);
            let early = tokio::time::timeout(cut, a.acquire()).await;
            if let Ok(held) = early {
                // Acquired within the cut: give it back as a caller would.
                let held = held.unwrap();
                assert!(held.fencing_token() > last_token);
                last_token = held.fencing_token();
                held.release().await.unwrap();
            }
            let asked = Instant::now();
            let taken = within("b to take the lease", b.acquire()).await.unwrap();
            let waited = asked.elapsed();
            assert!(
                waited < FAST.lease_duration,
                "round {round} (cut at {cut:?}): the lease was left held by the dropped acquisition; b waited {waited:?}"
            );
            assert!(taken.fencing_token() > last_token, "round {round}: {} after {last_token}", taken.fencing_token());
            last_token = taken.fencing_token();
            taken.release().await.unwrap();
        }
    });
}

/// Two `Lock`s given the same identity in one process (a copied configuration): the second
/// never holds beside the first, which renews on; it takes the lease once the first releases.
fn two_locks_with_one_identity_in_one_process_never_both_hold(env: &TestEnv) {
    let name = env.lease_name("review-same-id");
    runtime().block_on(async {
        let a = lock(env, &name).await.identity("same-holder").timing(FAST).build().unwrap();
        let b = lock(env, &name).await.identity("same-holder").timing(FAST).build().unwrap();
        let held = a.acquire().await.unwrap();
        assert!(b.try_acquire().await.unwrap().is_none(), "b took a's hold under the same identity");
        // Past a lease duration while a renews: b still waits.
        let waited = b.acquire_timeout(FAST.lease_duration * 2).await.unwrap();
        assert!(waited.is_none(), "b acquired beside a (same identity) while a renewed");
        assert!(!held.is_lost(), "a lost its hold to b");
        let released = Instant::now();
        held.release().await.unwrap();
        let taken = within("b after a's release", b.acquire()).await.unwrap();
        assert!(released.elapsed() < PROMPT, "b waited {:?} after a released", released.elapsed());
        // a now must not take b's record back (same identity, not a's write).
        assert!(a.try_acquire().await.unwrap().is_none(), "a took b's hold under the same identity");
        taken.release().await.unwrap();
    });
}

/// As above on the test API server with writes held 40 ms before their commit, so that most
/// cuts fall while the acquisition's create or update is on the wire.
#[test]
fn an_acquire_dropped_while_its_write_is_on_the_wire_leaves_nothing_held() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    server.set_commit_delay(Duration::from_millis(40));
    an_acquire_dropped_at_any_point_leaves_nothing_held(&env);
}

/// An acquisition dropped while its create waits for a commit that comes after the call
/// timeout (the settle gives up on it, reads, finds nothing). The create lands later, under the dropped
/// lock's identity. Another lock then waits a full lease duration (nobody's live code holds it); the
/// dropped lock, acquiring again, must never hold beside the other.
#[test]
fn an_acquire_dropped_whose_create_lands_after_its_settle_never_holds_beside_another() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let name = env.lease_name("review-late-create");
    runtime().block_on(async {
        let a = lock(&env, &name).await.timing(FAST).build().unwrap();
        let b = lock(&env, &name).await.timing(FAST).build().unwrap();
        // call timeout is 1 s with FAST: the commit comes after the call and the settle's read.
        server.set_commit_delay(Duration::from_millis(2500));
        assert!(tokio::time::timeout(Duration::from_millis(200), a.acquire()).await.is_err());
        server.set_commit_delay(Duration::ZERO);
        let started = Instant::now();
        // Both race for the lease; they must never hold together.
        let (sa, sb) = (Arc::new(Mutex::new(None::<(Instant, Instant, i32)>)), Arc::new(Mutex::new(None)));
        let run = |l: Lock, slot: Arc<Mutex<Option<(Instant, Instant, i32)>>>| async move {
            let held = within("the lease", l.acquire()).await.unwrap();
            let from = Instant::now();
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(!held.is_lost());
            let token = held.fencing_token();
            let until = Instant::now();
            held.release().await.unwrap();
            *slot.lock().unwrap() = Some((from, until, token));
        };
        let (fa, fb) = (run(a.clone(), Arc::clone(&sa)), run(b.clone(), Arc::clone(&sb)));
        tokio::join!(fa, fb);
        let (a0, a1, ta) = sa.lock().unwrap().unwrap();
        let (b0, b1, tb) = sb.lock().unwrap().unwrap();
        eprintln!(
            "a held {:?}..{:?} token {ta}; b held {:?}..{:?} token {tb}; holder now {:?}",
            a0 - started,
            a1 - started,
            b0 - started,
            b1 - started,
            off_runtime(|| env.holder(&name))
        );
        assert!(a1 <= b0 || b1 <= a0, "both held at once");
        assert_ne!(ta, tb);
    });
}

/// The late write is an update of a free record, and nobody writes before it commits: the record then
/// names the dropped lock's identity, and nothing live holds it. The dropped lock takes it again at once
/// (it remembers the write as its own); the other waits for that hold's release.
#[test]
fn an_acquire_dropped_whose_update_lands_after_its_settle_never_holds_beside_another() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let name = env.lease_name("review-late-update");
    runtime().block_on(async {
        let a = lock(&env, &name).await.timing(FAST).build().unwrap();
        let b = lock(&env, &name).await.timing(FAST).build().unwrap();
        a.acquire().await.unwrap().release().await.unwrap();
        server.set_commit_delay(Duration::from_millis(2500));
        assert!(tokio::time::timeout(Duration::from_millis(200), a.acquire()).await.is_err());
        server.set_commit_delay(Duration::ZERO);
        let started = Instant::now();
        eventually("the late update to land", || {
            off_runtime(|| env.holder(&name)).is_some_and(|holder| holder == a.identity())
        })
        .await;
        let landed = Instant::now();
        eprintln!("late update landed after {:?}", started.elapsed());
        let (sa, sb) = (Arc::new(Mutex::new(None::<(Instant, Instant, i32)>)), Arc::new(Mutex::new(None)));
        let run = |l: Lock, slot: Arc<Mutex<Option<(Instant, Instant, i32)>>>| async move {
            let held = within("the lease", l.acquire()).await.unwrap();
            let from = Instant::now();
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(!held.is_lost());
            let token = held.fencing_token();
            let until = Instant::now();
            held.release().await.unwrap();
            *slot.lock().unwrap() = Some((from, until, token));
        };
        let (fa, fb) = (run(a.clone(), Arc::clone(&sa)), run(b.clone(), Arc::clone(&sb)));
        tokio::join!(fa, fb);
        let (a0, a1, ta) = sa.lock().unwrap().unwrap();
        let (b0, b1, tb) = sb.lock().unwrap().unwrap();
        eprintln!(
            "a held {:?}..{:?} token {ta}; b held {:?}..{:?} token {tb}",
            a0 - started,
            a1 - started,
            b0 - started,
            b1 - started,
        );
        assert!(a1 <= b0 || b1 <= a0, "both held at once");
        // The dropped lock takes its own late record again at once; it waited the record out before
        // (and so did the other), a lease duration after the late write (found by review, helper-112).
        assert!(a0 < b0 && a0 - landed < FAST.lease_duration, "a waited {:?} for its own record", a0 - landed);
        assert_ne!(ta, tb);
    });
}

/// Found by review (helper-112): one acquisition on a runtime built without timers fails (its task panics: an
/// `Error::Internal` that says what the runtime needs). The same `Lock`, acquired next on a proper
/// runtime, must work; it panicked again ("`async fn` resumed after panicking"): the read the first
/// task left in the lock's slot is polled again.
#[test]
fn a_lock_works_after_an_acquisition_on_a_runtime_without_timers() {
    let dir = temp_dir("review-no-timers");
    let lock = Lock::file(dir.join("locks"), "no-timers").build().unwrap();
    let bare = tokio::runtime::Builder::new_current_thread().build().unwrap();
    match bare.block_on(lock.acquire()) {
        Err(Error::Internal(message)) => assert!(message.contains("enable_all"), "{message}"),
        other => panic!("a runtime without timers: {other:?}"),
    }
    drop(bare);
    runtime().block_on(async {
        let held = within("the lease on a proper runtime", lock.acquire()).await.expect("the lock is usable again");
        held.release().await.unwrap();
    });
    let _ = fs::remove_dir_all(&dir);
}

both_backends!(a_lock_whose_waiting_runtime_is_gone_acquires_on_another);

/// A lock waits for a lease another lock holds, on a runtime that is then shut down (its
/// watch and any read in flight belong to that runtime). The same `Lock`, on another runtime, must
/// acquire once the other releases, with a clear error at worst, never a panic or a hang.
fn a_lock_whose_waiting_runtime_is_gone_acquires_on_another(env: &TestEnv) {
    let name = env.lease_name("review-wait-gone");
    let holder_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (other, held) = holder_rt.block_on(async {
        let other = lock(env, &name).await.timing(FAST).build().unwrap();
        let held = other.acquire().await.unwrap();
        (other, held)
    });
    let first = runtime();
    let a = first.block_on(async {
        let a = lock(env, &name).await.timing(FAST).build().unwrap();
        // Waiting (watching) for a while.
        assert!(tokio::time::timeout(Duration::from_millis(700), a.acquire()).await.is_err());
        // And once more, left running in the background when the runtime goes.
        let spawned = tokio::spawn({
            let a = a.clone();
            async move { a.acquire().await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(spawned);
        a
    });
    drop(first);
    holder_rt.block_on(async { held.release().await.unwrap() });
    drop(other);
    runtime().block_on(async {
        let asked = Instant::now();
        match within("the same lock on another runtime", a.acquire()).await {
            Ok(held) => {
                eprintln!("acquired after {:?}", asked.elapsed());
                held.release().await.unwrap();
            }
            Err(err) => eprintln!("error: {err}"),
        }
    });
}

/// Found by review (helper-133): `Lock::observe` while its watch is stuck (open and silent) and a holder
/// renews: the lease was reported free when the record seen last expired.
#[test]
fn observe_with_a_stuck_watch_does_not_report_a_renewed_lease_as_free() {
    observe_with_a_stuck_watch("lib-obsstuck", false);
}

/// Found by review (helper-161): the same, with one 503 to the read `Lock::observe` makes at the expiry of the
/// record seen last.
#[test]
fn observe_with_a_stuck_watch_and_a_failed_read_at_expiry_does_not_report_a_renewed_lease_free() {
    observe_with_a_stuck_watch("lib-obs503", true);
}

/// Found by review (rv231), as for `mpsync observe` (tests/e2e/elect.rs): `Lock::observe` reported a dead
/// holder's expiry after reading the lease at it; then etcd was restored from a snapshot (versions went
/// back), and another holder took the lease at a version older than the one read. Every event from then on
/// was skipped, and the new holder never reported. A read tells now, and the read record is reported.
#[test]
fn observe_reports_a_new_holder_after_an_etcd_restore_that_follows_a_read_at_an_expiry() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let name = env.lease_name("lib-restore-observe");
    env.put(&name, TestEnv::foreign_record("", 1));
    let snapshot = server.snapshot();
    for i in 0..5 {
        env.put(&name, TestEnv::foreign_record(&format!("earlier-{i}"), 3600));
    }
    env.put(&name, TestEnv::foreign_record("dead-holder", 2));
    runtime().block_on(async {
        let a = lock(&env, &name).await.build().unwrap();
        let mut changes = Box::pin(a.observe());
        let first = within("the current state", changes.next()).await.unwrap();
        assert!(first.held && first.holder.as_deref() == Some("dead-holder"), "{first:?}");
        // Its expiry passes (2 s): read then, and reported free.
        let expired = within("the expiry", changes.next()).await.unwrap();
        assert!(!expired.held && expired.holder.as_deref() == Some("dead-holder"), "{expired:?}");
        // Off the runtime: the test's own client blocks on a runtime of its own.
        std::thread::scope(|scope| {
            scope.spawn(|| {
                server.restore(&snapshot);
                env.put(&name, TestEnv::foreign_record("new-holder", 3600));
            });
        });
        let next = within("the new holder", changes.next()).await.unwrap();
        assert!(next.held && next.holder.as_deref() == Some("new-holder"), "{next:?}");
    });
}

/// Found by review (rv232), as for `mpsync observe` (tests/e2e/elect.rs): a stale deletion, delivered by a
/// lagging watch after the newer record read at an expiry, was reported.
#[test]
fn observe_never_reports_a_stale_deletion_after_a_newer_read() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let name = env.lease_name("lib-stale-delete");
    env.put(&name, TestEnv::foreign_record("dead", 2));
    runtime().block_on(async {
        let a = lock(&env, &name).await.build().unwrap();
        let mut changes = Box::pin(a.observe());
        let first = within("the current state", changes.next()).await.unwrap();
        assert!(first.held && first.holder.as_deref() == Some("dead"), "{first:?}");
        server.set_watch_lag(Duration::from_secs(600));
        // Off the runtime: the test's own client blocks on a runtime of its own.
        std::thread::scope(|scope| {
            scope.spawn(|| {
                env.delete(&name);
                env.put(&name, TestEnv::foreign_record("new", 3600));
            });
        });
        let read = within("the new holder, read at the expiry", changes.next()).await.unwrap();
        assert!(read.held && read.holder.as_deref() == Some("new"), "{read:?}");
        server.set_watch_lag(Duration::ZERO);
        std::thread::scope(|scope| {
            scope.spawn(|| env.edit(&name, |spec| spec.holder_identity = Some("third".into())));
        });
        let next = within("the third holder", changes.next()).await.unwrap();
        assert!(next.exists && next.holder.as_deref() == Some("third"), "a stale change reported: {next:?}");
    });
}

/// Found by review (rv234), as for `mpsync observe` (tests/e2e/elect.rs): a stale holder, delivered by a
/// lagging watch after a read at an expiry had found the lease deleted, was reported.
#[test]
fn observe_never_reports_a_stale_holder_after_a_read_found_the_lease_deleted() {
    observe_never_reports_a_stale_holder_after_an_absent_read("lib-stale-holder", |env, name| {
        env.edit(name, |spec| {
            spec.holder_identity = Some("mid".into());
            spec.lease_duration_seconds = Some(3600);
        });
        env.delete(name);
    });
}

/// Found by review (rv236), as for `mpsync observe` (tests/e2e/elect.rs): a stale deletion after a read
/// that found no lease cleared the check, and the stale holder after it was reported.
#[test]
fn observe_never_reports_a_stale_holder_after_a_stale_deletion_following_an_absent_read() {
    observe_never_reports_a_stale_holder_after_an_absent_read("lib-ghost", |env, name| {
        env.delete(name);
        env.put(name, TestEnv::foreign_record("ghost", 3600));
        env.delete(name);
    });
}

/// The lease, held by "old" (2 s), is changed by `changes` (ending deleted) while `Lock::observe`'s watch
/// lags; at old's expiry it reads the lease and finds none. The next change reported is the next holder's.
fn observe_never_reports_a_stale_holder_after_an_absent_read(
    prefix: &str,
    changes: impl FnOnce(&TestEnv, &str) + Send,
) {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let name = env.lease_name(prefix);
    env.put(&name, TestEnv::foreign_record("old", 2));
    runtime().block_on(async {
        let a = lock(&env, &name).await.build().unwrap();
        let mut changes_seen = Box::pin(a.observe());
        let first = within("the current state", changes_seen.next()).await.unwrap();
        assert!(first.held && first.holder.as_deref() == Some("old"), "{first:?}");
        server.set_watch_lag(Duration::from_secs(600));
        // Off the runtime: the test's own client blocks on a runtime of its own.
        std::thread::scope(|scope| {
            scope.spawn(|| changes(&env, &name));
        });
        let read = within("the absence, read at the expiry", changes_seen.next()).await.unwrap();
        assert!(!read.exists, "{read:?}");
        server.set_watch_lag(Duration::ZERO);
        std::thread::scope(|scope| {
            scope.spawn(|| env.put(&name, TestEnv::foreign_record("third", 3600)));
        });
        let next = within("the third holder", changes_seen.next()).await.unwrap();
        assert!(next.exists && next.holder.as_deref() == Some("third"), "a stale change reported: {next:?}");
    });
}

/// `Lock::observe` with its watch stuck while a holder renews every 500 ms (lease duration 4 s), and with
/// `failed_read` one 503 to its read at the expiry of the record seen last: no change may be reported.
fn observe_with_a_stuck_watch(lease: &str, failed_read: bool) {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let name = env.lease_name(lease);
    let (log, go) = (env.path("log"), env.path("go"));
    let body = until_exists(&go);
    let holder = env.spawn(fast(&["lock", &name, "--identity", "holder"], &["sh", "-c", &stamp_script(&log, &body)]));
    wait_for_file(&log, "start");
    server.set_watch_lag(Duration::from_secs(600));
    runtime().block_on(async {
        let a = lock(&env, &name).await.build().unwrap();
        let mut changes = Box::pin(a.observe());
        let first = within("the current state", changes.next()).await.unwrap();
        assert!(first.held && first.holder.as_deref() == Some("holder"), "{first:?}");
        if failed_read {
            server.fail_next_on(&format!("get:{name}"), 1, 503);
        }
        // A lease duration and a half of renewals, none delivered by the watch.
        match tokio::time::timeout(Duration::from_secs(6), changes.next()).await {
            Err(_) => {}
            Ok(seen) => panic!("observe reported a change of a lease renewed all along: {seen:?}"),
        }
        let read_failed =
            server.requests().iter().any(|r| r.status == 503 && r.verb == "get" && r.path.contains(&name));
        assert!(read_failed || !failed_read, "the read at the expiry was not made");
    });
    fs::write(&go, "").unwrap();
    holder.finish().assert_code(0);
}
