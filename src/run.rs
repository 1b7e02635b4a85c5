//! `lock` and `elect`: the CLI as a client of the library's [`Lock`].
//!
//! One loop over three sources: the lock (acquired, then possibly lost), the supervisor's events (the
//! child's exit, signals) and nothing else. The lease is acquired before the child starts, renewed in the
//! background while it runs, and given back only after the child has been reaped; when the lease is
//! lost, the child is stopped. `elect` campaigns again after a loss; `lock` exits 123.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use nix::sys::signal::Signal;

use crate::backend::{block_on, open_store, with_process_limit};
use crate::cli::{Config, Mode, RunConfig, Wait as WaitFlag};
use crate::engine::{Observer, Wait};
use crate::error::{Error, Result};
use crate::exit::Exit;
use crate::health::Health;
use crate::lock::{HeldLock, Lock};
use crate::supervise::{ChildCommand, ChildExit, Notice, SpawnError, SuperviseOptions, Supervisor};

/// Run a validated configuration to its exit.
pub fn run(config: Config) -> Result<Exit> {
    match config {
        Config::Run(run) => run_lease_command(run),
        Config::Status(query) => crate::status::status(query),
        Config::List(list) => crate::status::list(list),
        Config::Observe(query) => crate::status::observe(query),
        Config::Completions(target) => {
            // Generated whole first: clap_complete's writer panics on a failed write.
            let mut completions = Vec::new();
            crate::cli::write_completions(target, &mut completions)
                .map_err(|err| Error::Internal(format!("cannot write the completions: {err}")))?;
            crate::status::out_bytes(&completions)?;
            Ok(Exit::Success)
        }
        Config::Sidecar(sidecar) => crate::sidecar::sidecar(sidecar),
    }
}

fn run_lease_command(config: RunConfig) -> Result<Exit> {
    crate::supervise::check_program(&config.program).map_err(spawn_failure)?;
    // The supervisor forks its guard process: before the runtime starts any thread.
    let supervisor = Supervisor::start(SuperviseOptions { subreaper: config.subreaper }).map_err(|err| {
        // After `unshare --pid` without `--fork`, mpsync's children would be in a PID namespace it is not
        // in, and it can start no thread (EINVAL): say so (found by review, helper-167).
        let namespace = |file: &str| std::fs::read_link(format!("/proc/self/ns/{file}")).ok();
        match err.raw_os_error() == Some(nix::errno::Errno::EINVAL as i32)
            && namespace("pid") != namespace("pid_for_children")
        {
            true => Error::Usage(format!(
                "cannot start supervision: {err}: mpsync is in another PID namespace than the one its children \
                 would be in (`unshare --pid` without `--fork`?)\nstart it with `unshare --pid --fork`"
            )),
            false => Error::Internal(format!("cannot start supervision: {}", with_process_limit(&err))),
        }
    })?;
    block_on(async move {
        // `--timeout` counts from here: setting up the client (an exec credential plugin, which may take
        // long) is part of the wait. A stop signal, or the timeout, ends it (the plugin is killed).
        let started = Instant::now();
        let mut supervisor = supervisor;
        // With one attempt (`--no-wait`, `--timeout 0`), setting up is bounded too (found by review: a
        // hanging plugin was waited for until a signal came), generously: a slow plugin is no conflict.
        let deadline = match config.mode {
            Mode::Lock { wait: WaitFlag::Timeout(timeout), conflict_exit_code } => {
                started.checked_add(timeout).map(|at| (at, SetUpBound::Timeout(conflict_exit_code)))
            }
            Mode::Lock { wait: WaitFlag::NoWait, .. } => {
                let bound = config.timing.lease_duration.saturating_mul(ONE_ATTEMPT_SET_UP);
                started.checked_add(bound).map(|at| (at, SetUpBound::OneAttempt(bound)))
            }
            _ => None,
        };
        let store = tokio::select! {
            store = open_store(&config.backend, config.timing.call_timeout()) => store?,
            exit = stopped_while_connecting(&mut supervisor, deadline) => return Ok(exit),
        };
        let health = Health::new(config.timing);
        if let Some(addr) = config.health_addr {
            crate::health::serve(addr, health.clone()).await?;
        }
        let mut builder = Lock::with_store(store, &config.name)
            .identity(config.identity.clone())
            .timing(config.timing)
            .observer(Arc::new(health.clone()) as Arc<dyn Observer>);
        if let Some(slots) = config.slots {
            builder = builder.slots(slots);
        }
        let lock = builder.build()?;
        Runner { config, lock, supervisor, health, started }.run().await
    })
}

/// With one attempt, setting up the client may take this many lease durations (a minute by default).
const ONE_ATTEMPT_SET_UP: u32 = 4;

/// What bounds setting up the client.
#[derive(Clone, Copy)]
enum SetUpBound {
    /// `--timeout`, which ends with this exit code ("not acquired").
    Timeout(i32),
    /// One attempt (`--no-wait`, `--timeout 0`): this long, then a failure (125), not a conflict.
    OneAttempt(Duration),
}

/// The exit when a stop signal comes, or the deadline passes, while the client is set up; never otherwise.
async fn stopped_while_connecting(supervisor: &mut Supervisor, deadline: Option<(Instant, SetUpBound)>) -> Exit {
    let timeout = async {
        match deadline {
            Some((at, bound)) => {
                tokio::time::sleep_until(at.into()).await;
                match bound {
                    SetUpBound::Timeout(code) => {
                        tracing::error!(
                            "lease not acquired in time: the client was still being set up (an exec credential plugin still ran?)"
                        );
                        Exit::NotAcquired(code)
                    }
                    SetUpBound::OneAttempt(bound) => {
                        crate::logging::print_error(&format!(
                            "the client could not be set up within {} (an exec credential plugin still ran?)",
                            humantime::format_duration(bound)
                        ));
                        Exit::Failure
                    }
                }
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(timeout);
    loop {
        tokio::select! {
            exit = &mut timeout => return exit,
            notice = supervisor.next_notice() => match notice {
                Notice::Signal(signal) if is_stop(signal) => {
                    tracing::info!(signal = %signal, "stopped while setting up the client");
                    return Exit::Signaled(signal as i32);
                }
                Notice::Signal(signal) => tracing::debug!(signal = %signal, "ignored while setting up the client"),
                Notice::ChildExited(_) | Notice::Resumed(_) => {}
            },
        }
    }
}

struct Runner {
    config: RunConfig,
    lock: Lock,
    supervisor: Supervisor,
    health: Health,
    /// When mpsync started to set up: `--timeout` counts from here.
    started: Instant,
}

/// How holding ended.
enum Held {
    /// Done, with this exit: the child exited (on its own or after a forwarded signal), or a stop signal
    /// came before it started. The lease was given back.
    Done(Exit),
    /// The lease was lost; the child was stopped and reaped.
    Lost,
    /// The lease was lost while the child was already stopping on a forwarded stop signal: mpsync was
    /// asked to end, so it must not campaign again.
    LostWhileStopping,
}

impl Runner {
    async fn run(mut self) -> Result<Exit> {
        let (wait, conflict_exit_code) = match self.config.mode {
            Mode::Lock { wait: WaitFlag::Timeout(timeout), conflict_exit_code } => {
                // A timeout too long for the clock is as good as none.
                let wait = self.started.checked_add(timeout).map_or(Wait::Forever, Wait::Until);
                (wait, conflict_exit_code)
            }
            Mode::Lock { wait: WaitFlag::NoWait, conflict_exit_code } => (Wait::NoWait, conflict_exit_code),
            Mode::Lock { wait: WaitFlag::Forever, conflict_exit_code } => (Wait::Forever, conflict_exit_code),
            Mode::Elect { .. } => (Wait::Forever, crate::exit::NOT_ACQUIRED),
        };
        loop {
            let held = match self.acquire(wait).await? {
                Ok(Some(held)) => held,
                Ok(None) => return Ok(Exit::NotAcquired(conflict_exit_code)),
                Err(exit) => return Ok(exit),
            };
            match self.hold(held).await? {
                Held::Done(exit) => return Ok(exit),
                Held::LostWhileStopping => return Ok(Exit::LeaseLost),
                Held::Lost => match self.config.mode {
                    Mode::Lock { .. } | Mode::Elect { exit_on_loss: true } => return Ok(Exit::LeaseLost),
                    Mode::Elect { exit_on_loss: false } => {
                        tracing::info!(lease = %self.config.name, "campaigning again");
                    }
                },
            }
        }
    }

    /// Campaign until acquired (`Ok(Some)`), not acquired (`Ok(None)`), or stopped by a signal
    /// (`Err(exit)`: whatever the campaign held or might hold was given back first).
    async fn acquire(&mut self, wait: Wait) -> Result<std::result::Result<Option<HeldLock>, Exit>> {
        let mut acquiring = self.lock.start(wait);
        loop {
            tokio::select! {
                result = &mut acquiring => return result.map(Ok),
                notice = self.supervisor.next_notice() => match notice {
                    Notice::Signal(signal) if is_stop(signal) => {
                        tracing::info!(lease = %self.config.name, signal = %signal, "stopped while waiting for the lease");
                        acquiring.cancel().await;
                        return Ok(Err(Exit::Signaled(signal as i32)));
                    }
                    Notice::Signal(signal) => tracing::debug!(signal = %signal, "ignored while waiting"),
                    Notice::ChildExited(_) | Notice::Resumed(_) => {}
                },
            }
        }
    }

    /// Run the child while holding `held`: forward signals, stop the child if the lease is lost, give
    /// the lease back after the child has been reaped.
    async fn hold(&mut self, held: HeldLock) -> Result<Held> {
        let Runner { config, supervisor, health, lock, started } = self;
        let started = *started;
        let token = held.fencing_token();
        let span = tracing::info_span!("held", lease = %held.name(), identity = %config.identity, token);
        let _entered = span.enter();
        tracing::info!("acquired the lease");

        // A stop signal that arrived while the acquisition was on the wire still ends the wait: give the
        // lease back rather than start a child only to stop it. Every queued event is looked at, so a
        // USR1 ahead of a TERM cannot hide it. One that came and is not queued yet (pending, or not yet
        // passed on by the signal thread, which may run late: found by review, rv227, with mpsync continued
        // after a freeze during which a SIGTERM came and its acquisition was answered) is waited for.
        let on_the_way = supervisor.stop_on_the_way();
        let until = tokio::time::Instant::now() + STOP_ON_THE_WAY;
        loop {
            // Unconstrained: a notice queued is taken whatever tokio's cooperative budget says.
            let notice = match tokio::task::unconstrained(supervisor.next_notice()).now_or_never() {
                Some(notice) => notice,
                None if on_the_way => match tokio::time::timeout_at(until, supervisor.next_notice()).await {
                    Ok(notice) => notice,
                    Err(_) => break,
                },
                None => break,
            };
            if let Notice::Signal(signal) = notice
                && is_stop(signal)
            {
                tracing::info!(signal = %signal, "stopped before the child started");
                release(held, supervisor).await;
                return Ok(Held::Done(Exit::Signaled(signal as i32)));
            }
        }

        let mut env = vec![
            ("MPSYNC_LEASE".into(), held.name().to_string().into()),
            ("MPSYNC_NAMESPACE".into(), lock.namespace().to_string().into()),
            ("MPSYNC_IDENTITY".into(), config.identity.clone().into()),
            ("MPSYNC_FENCING_TOKEN".into(), token.to_string().into()),
        ];
        if let Some(slot) = held.slot() {
            env.push(("MPSYNC_SLOT".into(), slot.to_string().into()));
        }
        let command = ChildCommand { program: config.program.clone(), args: config.args.clone(), env };
        // The guard enforces the lease on its own too: it kills the child's group when the renew deadline
        // plus the grace plus half of the remaining margin has passed, should mpsync be unable to (frozen by
        // `kill -STOP`, stuck). mpsync itself stops the child long before. The guard knows the deadline
        // before the child exists: mpsync may freeze between the look below and the fork.
        let margin = config.timing.lease_duration.saturating_sub(config.timing.renew_deadline + config.grace);
        let guard_delay = config.grace + margin / 2;
        let mut deadlines = held.deadlines();
        // `--timeout` is when mpsync stops waiting: an acquisition it sees only after that (frozen or starved
        // as its answer came) is given back, and no child starts (found by review, rv227). Exit 124 (or
        // `--conflict-exit-code`) also if the hold was lost meanwhile: no child ran (found by review, rv228:
        // exit 123, which says a child was stopped).
        if let Mode::Lock { wait: WaitFlag::Timeout(timeout), conflict_exit_code } = config.mode
            && started.checked_add(timeout).is_some_and(|at| Instant::now() >= at)
        {
            tracing::error!(lease = %held.name(), "acquired only after --timeout passed; giving the lease back");
            match held.is_lost() {
                true => give_back_lost(held).await,
                false => release(held, supervisor).await,
            }
            return Ok(Held::Done(Exit::NotAcquired(conflict_exit_code)));
        }
        if held.is_lost() {
            // Lost already (mpsync was frozen or starved since it acquired): no child starts.
            tracing::error!("lost the lease before the child started");
            give_back_lost(held).await;
            return Ok(Held::Lost);
        }
        let guard_deadline = deadlines.current().checked_add(guard_delay).map(Into::into);
        if let Err(err) = supervisor.spawn(&command, guard_deadline) {
            release(held, supervisor).await;
            return Err(spawn_failure(err));
        }
        health.child_started();
        // What the guard would not find through the child's group is told to it (see
        // `Supervisor::note_escapes`).
        // A stop signal forwarded to the child: mpsync is to end with it, whatever happens to the lease.
        let mut stopping = false;
        // The first look a tick after the start, not at once: a child as short as `true` costs no reads of
        // /proc (what leaves the group within a tick of the start escapes a SIGKILL of mpsync either way).
        let mut adoptions = tokio::time::interval_at(tokio::time::Instant::now() + ADOPTION_LOOK, ADOPTION_LOOK);
        adoptions.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            tokio::select! {
                // The child's exit first: a child that finished before the lease was found lost ran its
                // course under the lease, and is reported as such.
                biased;
                notice = supervisor.next_notice() => match notice {
                    Notice::Signal(signal) => {
                        tracing::info!(signal = %signal, "forwarding signal to the child");
                        // A SIGHUP passed on is the child's (a reload, found by review); TERM, INT and QUIT
                        // (a container's STOPSIGNAL) end mpsync with it.
                        stopping |= signal != Signal::SIGHUP && crate::supervise::ENDING.contains(&signal);
                        supervisor.forward(signal);
                    }
                    // mpsync was continued; nothing renewed the lease while it was stopped. The child's job
                    // runs again only if the lease is still held (its renew deadline has not passed).
                    Notice::Resumed(resume) => {
                        if held.is_lost() {
                            // A job job control holds stopped is killed without running again (`stop` does
                            // that); one mpsync never stopped (mpsync alone was frozen, by `kill -STOP`) ran
                            // all along, and is stopped as after any loss, with the kill signal and the grace
                            // (found by review, helper-177: it was SIGKILLed at once).
                            tracing::error!(?resume, "continued after the renew deadline; stopping the child");
                            let exit = supervisor.stop(config.kill_signal, config.grace).await;
                            health.child_exited();
                            tracing::warn!(child_exit = exit.code(), "child stopped after losing the lease");
                            give_back_lost(held).await;
                            return Ok(if stopping { Held::LostWhileStopping } else { Held::Lost });
                        }
                        supervisor.continue_child();
                    }
                    Notice::ChildExited(exit) => {
                        health.child_exited();
                        // The guard kills only once the deadline it was told has come: a SIGKILL seen before then
                        // is the child's own end (the OOM killer, `kill -9 $$`), also when mpsync, frozen, sees it
                        // only past the renew deadline (found by review, rv302: said as a loss, exit 123).
                        let guard_due = supervisor.guard_deadline().is_some_and(|at| Instant::now() >= at);
                        if exit == ChildExit::Signaled(Signal::SIGKILL as i32) && held.is_lost() && guard_due {
                            // Killed past the lease's deadline (by the guard, while mpsync could not act):
                            // a loss, not the child's own end.
                            tracing::error!("the child was killed at the lease's deadline");
                            supervisor.finish(config.kill_signal, config.grace).await;
                            give_back_lost(held).await;
                            return Ok(if stopping { Held::LostWhileStopping } else { Held::Lost });
                        }
                        tracing::info!(exit = exit.code(), "child exited");
                        let lost_before = held.is_lost();
                        supervisor.finish(config.kill_signal, config.grace).await;
                        if held.is_lost() {
                            // Lost while what the child left was stopped (those processes were stopped by
                            // the deadline at the latest): said, not reported as a release (found by review,
                            // helper-121). The child ran its course under the lease: its exit code stands.
                            // Or lost already when its exit was seen (mpsync frozen past the renew deadline
                            // as the child exited): said as such (found by review, helper-177).
                            match lost_before {
                                true => tracing::warn!(
                                    "the lease was lost by the time the child's exit was seen (mpsync could not \
                                     act: frozen or starved)"
                                ),
                                false => tracing::warn!(
                                    "lost the lease after the child exited, while what it left was stopped"
                                ),
                            }
                            give_back_lost(held).await;
                            return Ok(Held::Done(Exit::from(exit)));
                        }
                        // Given back only now, after the child and its group are gone.
                        release(held, supervisor).await;
                        return Ok(Held::Done(Exit::from(exit)));
                    }
                },
                deadline = deadlines.changed() => {
                    supervisor.set_deadline(deadline.checked_add(guard_delay).map(Into::into));
                }
                _ = adoptions.tick(), if supervisor.tends() => supervisor.tend(),
                reason = held.lost() => {
                    tracing::error!(reason = %reason, "lost the lease; stopping the child");
                    let exit = supervisor.stop(config.kill_signal, config.grace).await;
                    health.child_exited();
                    tracing::warn!(child_exit = exit.code(), "child stopped after losing the lease");
                    // A lease that is not ours is never written; one that is still our own record (cut off,
                    // frozen) is given back, so that the next holder need not wait out its duration.
                    give_back_lost(held).await;
                    return Ok(if stopping { Held::LostWhileStopping } else { Held::Lost });
                }
            }
        }
    }
}

/// How long a stop signal that has come is waited for, before the child starts, to be queued (see
/// `Supervisor::stop_on_the_way`): the signal thread passes it on in microseconds, or, on a loaded machine,
/// a few milliseconds.
const STOP_ON_THE_WAY: Duration = Duration::from_secs(1);

/// How often mpsync, as a subreaper, looks for processes it adopted, to tell its guard.
const ADOPTION_LOOK: Duration = Duration::from_millis(100);

fn is_stop(signal: Signal) -> bool {
    crate::supervise::ENDING.contains(&signal)
}

/// After a loss, the job gone: give back the record if it is still our own write (nobody wrote the lease
/// since: a freeze or a cut-off past the renew deadline), as the lock's task does once asked, before mpsync
/// exits and ends that task (found by review, helper-121: `lock` exited 123 with its record left naming it,
/// and the next holder waited a whole lease duration). A lease another process wrote is never written.
/// Bounded (the release's budget); signals meanwhile wait for the caller (`elect` campaigning again must
/// still see a SIGTERM).
async fn give_back_lost(held: HeldLock) {
    if let Err(err) = held.release().await {
        tracing::debug!(error = %err, "could not give back the lost lease's record; it expires after its duration");
    }
}

/// Give the lease back (see `HeldLock::release`, bounded by the call timeout); a failure only means the
/// lease expires after its duration instead. Signals meanwhile are taken and logged, not acted on.
async fn release(held: HeldLock, supervisor: &mut Supervisor) {
    // A job-control stop (Ctrl-Z), one asked for while `finish` waited included, is not carried out from
    // now on: stopped, mpsync would hold the lease for a job that is gone (found by review, helper-177).
    supervisor.drop_stop_requests();
    // A stop signal that came before the release began (while `finish` waited for what the child left) is
    // no reason to skip it: the job is gone, and a release is one bounded call.
    while let Some(notice) = supervisor.next_notice().now_or_never() {
        tracing::debug!(?notice, "before the release");
    }
    let release = held.give_back();
    tokio::pin!(release);
    loop {
        tokio::select! {
            result = &mut release => {
                match result {
                    Ok(true) => tracing::info!("released the lease"),
                    // Not ours to give back (found by review, helper-147: "released" was said of a record
                    // left to expire after another writer renewed it under our identity).
                    Ok(false) => tracing::info!(
                        "the lease was not given back: it is no longer this process's own record, or another \
                         writer renewed it under this identity lately; it expires after its duration"
                    ),
                    Err(err) => tracing::warn!(error = %err, "could not release the lease; it will expire after its duration"),
                }
                return;
            }
            // A stop signal meanwhile does not cut the release short: it is bounded (its budget), the job is
            // gone, and a lease left held would keep every waiter out for a lease duration.
            notice = supervisor.next_notice() => tracing::debug!(?notice, "while releasing"),
        }
    }
}

/// A command that did not start, as mpsync's error (127, 126, or 125). Its name as text shows it: a line
/// break or an escape sequence in it would forge a line or move the terminal (found by review, helper-165).
fn spawn_failure(err: SpawnError) -> Error {
    let shown = |program: String| crate::lease::shown(&program);
    match err {
        SpawnError::NotFound(program) => Error::CommandNotFound(shown(program)),
        SpawnError::NotExecutable(program, err) => Error::CommandNotExecutable(shown(program), err.to_string()),
        SpawnError::Other(program, err) => {
            Error::Internal(format!("{}: cannot start: {}", shown(program), with_process_limit(&err)))
        }
    }
}
