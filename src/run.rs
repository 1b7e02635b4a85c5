//! `lock` and `elect`: one loop over lease events, the child's exit and signals.
//!
//! The loop asks `lease::Elector` what to do and tells `store` and `supervise` to do it. Two phases:
//! *campaign* (wait for and acquire one of the leases) and *hold* (run the child, renew, watch for loss,
//! release after the child is reaped). `elect` returns to the campaign after a loss; `lock` exits 123.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::cli::{Backend, Config, Mode, RunConfig, Wait};
use crate::drive::{self, now};
use crate::error::{Error, Result};
use crate::exit::Exit;
use crate::health::Health;
use crate::lease::{Action, Elector, Versioned, Write};
use crate::store::file::FileStore;
use crate::store::kube::KubeStore;
use crate::store::{Store, StoreError, Watch, WatchUpdate, backoff};
use crate::supervise::{ChildCommand, Event, SpawnError, SuperviseOptions, Supervisor};

/// Run a validated configuration to its exit.
pub fn run(config: Config) -> Result<Exit> {
    match config {
        Config::Run(run) => run_lease_command(run),
        Config::Status(query) => crate::status::status(query),
        Config::Observe(query) => crate::status::observe(query),
        Config::Completions(target) => {
            crate::cli::write_completions(target, &mut std::io::stdout().lock())
                .map_err(|err| Error::Internal(format!("cannot write completions: {err}")))?;
            Ok(Exit::Success)
        }
        Config::Sidecar(sidecar) => crate::sidecar::sidecar(sidecar),
    }
}

/// A single-threaded runtime. Single-threaded on purpose: the child is forked from the main thread, so
/// its parent-death signal (which fires when the forking *thread* exits) cannot fire early.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| Error::Internal(format!("cannot start the runtime: {err}")))
}

/// Timeout for one API call: long enough for a slow server, short enough to retry within the renew
/// deadline.
pub fn call_timeout(renew_deadline: Duration, retry_period: Duration) -> Duration {
    (renew_deadline / 2).max(retry_period).max(Duration::from_millis(500))
}

pub async fn open_store(backend: &Backend, call_timeout: Duration) -> Result<Store> {
    match backend {
        Backend::Kube { kubeconfig, context, namespace } => Ok(Store::Kube(
            KubeStore::connect(kubeconfig.clone(), context.clone(), namespace.clone(), call_timeout).await?,
        )),
        Backend::File { lock_dir, namespace } => Ok(Store::File(FileStore::open(lock_dir.clone(), namespace.clone())?)),
    }
}

fn run_lease_command(config: RunConfig) -> Result<Exit> {
    // The supervisor forks its guard process: before the runtime starts any thread.
    let supervisor = Supervisor::start(SuperviseOptions { subreaper: config.subreaper })
        .map_err(|err| Error::Internal(format!("cannot start supervision: {err}")))?;
    runtime()?.block_on(async move {
        let timeout = call_timeout(config.timing.renew_deadline, config.timing.retry_period);
        let store = open_store(&config.backend, timeout).await?;
        let health = Health::new(config.timing.retry_period);
        if let Some(addr) = config.health_addr {
            crate::health::serve(addr, health.clone()).await?;
        }
        Campaign::new(config, store, supervisor, health).run().await
    })
}

/// One lease this process may hold (one per slot).
struct Slot {
    name: String,
    elector: Elector,
    /// Started the first time this slot has to wait: an uncontended run needs no watch (and saves
    /// the list and the watch requests, or the inotify set-up).
    watch: Option<Watch>,
    /// Consecutive failed calls, and when to try again.
    failures: u32,
    retry_at: Option<Instant>,
}

struct Campaign {
    config: RunConfig,
    store: Store,
    supervisor: Supervisor,
    slots: Vec<Slot>,
    health: Health,
}

enum Acquired {
    Slot(usize),
    Stop(Exit),
}

enum Held {
    /// Done, with this exit: the child exited (on its own or after a forwarded signal), or a stop signal
    /// came before it started. The lease was released.
    Done(Exit),
    /// The lease was lost; the child was stopped and reaped.
    Lost,
}

impl Campaign {
    fn new(config: RunConfig, store: Store, supervisor: Supervisor, health: Health) -> Campaign {
        let slots = config
            .lease_names()
            .into_iter()
            .map(|name| Slot {
                watch: None,
                elector: Elector::new(config.identity.clone(), config.timing),
                name,
                failures: 0,
                retry_at: None,
            })
            .collect();
        Campaign { config, store, supervisor, slots, health }
    }

    async fn run(mut self) -> Result<Exit> {
        let started = Instant::now();
        let (deadline, conflict_exit_code) = match self.config.mode {
            Mode::Lock { wait: Wait::Timeout(timeout), conflict_exit_code } => {
                (Some(started + timeout), conflict_exit_code)
            }
            // One attempt: but an API blip is retried for up to a lease duration before giving up.
            Mode::Lock { wait: Wait::NoWait, conflict_exit_code } => {
                (Some(started + self.config.timing.lease_duration), conflict_exit_code)
            }
            Mode::Lock { wait: Wait::Forever, conflict_exit_code } => (None, conflict_exit_code),
            Mode::Elect { .. } => (None, crate::exit::NOT_ACQUIRED),
        };
        let no_wait = matches!(self.config.mode, Mode::Lock { wait: Wait::NoWait, .. });
        loop {
            let slot = match self.campaign(deadline, no_wait, conflict_exit_code).await? {
                Acquired::Slot(slot) => slot,
                Acquired::Stop(exit) => return Ok(exit),
            };
            match self.hold(slot).await? {
                Held::Done(exit) => return Ok(exit),
                Held::Lost => match self.config.mode {
                    Mode::Lock { .. } | Mode::Elect { exit_on_loss: true } => return Ok(Exit::LeaseLost),
                    Mode::Elect { exit_on_loss: false } => {
                        tracing::info!(lease = %self.config.name, "campaigning again");
                        self.slots[slot].elector.forget_loss();
                    }
                },
            }
        }
    }

    /// Wait for and acquire one of the leases. Waiting is driven by the watch; timers only wake us when
    /// an observed lease expires, when a retry is due, or at the deadline.
    async fn campaign(
        &mut self,
        deadline: Option<Instant>,
        no_wait: bool,
        conflict_exit_code: i32,
    ) -> Result<Acquired> {
        let mut last_error: Option<String> = None;
        let mut announced = false;
        loop {
            let now_instant = Instant::now();
            let mut wake = deadline;
            let mut all_held_by_others = true;
            let mut acted = false;
            for index in 0..self.slots.len() {
                let slot = &mut self.slots[index];
                if let Some(at) = slot.retry_at {
                    if now_instant < at {
                        wake = earliest(wake, at);
                        all_held_by_others = false;
                        continue;
                    }
                    slot.retry_at = None;
                }
                match slot.elector.next(now()) {
                    Action::Read => {
                        all_held_by_others = false;
                        acted = true;
                        if let Err(err) = read(&self.store, slot).await? {
                            self.health.api_error(err.kind());
                            last_error = Some(err.to_string());
                        }
                    }
                    Action::Write(write) => {
                        all_held_by_others = false;
                        acted = true;
                        if let Err(err) = send_write(&self.store, slot, write).await? {
                            self.health.api_error(err.kind());
                            last_error = Some(err.to_string());
                        }
                        if slot.elector.held().is_some() {
                            return Ok(Acquired::Slot(index));
                        }
                    }
                    Action::WaitUntil(at) => {
                        wake = earliest(wake, at);
                        if slot.watch.is_none() {
                            slot.watch = Some(self.store.watch(&slot.name, self.config.timing.retry_period));
                        }
                    }
                    Action::Lost(_) => slot.elector.forget_loss(),
                }
            }
            if acted {
                continue;
            }
            if !announced && all_held_by_others {
                announced = true;
                let holders: Vec<String> = self
                    .slots
                    .iter()
                    .filter_map(|slot| slot.elector.current()?.record.holder_identity.clone())
                    .collect();
                tracing::info!(lease = %self.config.name, holder = %holders.join(","), "held by another; waiting");
            }
            if no_wait && all_held_by_others {
                tracing::info!(lease = %self.config.name, "held by another process; not waiting (--no-wait)");
                return Ok(Acquired::Stop(Exit::NotAcquired(conflict_exit_code)));
            }
            if let Some(deadline) = deadline
                && Instant::now() >= deadline
            {
                match &last_error {
                    Some(err) => {
                        tracing::error!(lease = %self.config.name, last_error = %err, "lease not acquired in time")
                    }
                    None => tracing::info!(lease = %self.config.name, "lease not acquired in time (--timeout)"),
                }
                return Ok(Acquired::Stop(Exit::NotAcquired(conflict_exit_code)));
            }
            tokio::select! {
                _ = sleep_until(wake) => {}
                Some((index, update)) = next_update(&mut self.slots) => {
                    self.slots[index].elector.observe_event(update, Instant::now());
                }
                event = self.supervisor.next_event() => match event {
                    Event::Signal(signal @ (Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP)) => {
                        tracing::info!(lease = %self.config.name, signal = %signal, "stopped while waiting for the lease");
                        return Ok(Acquired::Stop(Exit::Signaled(signal as i32)));
                    }
                    Event::Signal(signal) => tracing::debug!(signal = %signal, "ignored while waiting"),
                    Event::ChildExited(_) => {}
                },
            }
        }
    }

    /// Run the child while holding slot `index`: renew, watch for loss, forward signals; release after
    /// the child has been reaped.
    async fn hold(&mut self, index: usize) -> Result<Held> {
        let Campaign { config, store, supervisor, slots, health } = self;
        let slot = &mut slots[index];
        let Some(held) = slot.elector.held() else {
            return Err(Error::Internal("hold without a lease".into()));
        };
        let token = held.fencing_token;
        let span = tracing::info_span!("held", lease = %slot.name, identity = %config.identity, token);
        let _entered = span.enter();
        tracing::info!("acquired the lease");
        health.acquired(held.last_renew_sent);

        let mut env = vec![
            ("MPSYNC_LEASE".into(), slot.name.clone().into()),
            ("MPSYNC_NAMESPACE".into(), store.namespace().to_string().into()),
            ("MPSYNC_IDENTITY".into(), config.identity.clone().into()),
            ("MPSYNC_FENCING_TOKEN".into(), token.to_string().into()),
        ];
        if config.slots.is_some() {
            env.push(("MPSYNC_SLOT".into(), index.to_string().into()));
        }
        let command = ChildCommand { program: config.program.clone(), args: config.args.clone(), env };
        // A stop signal that arrived while the acquisition was on the wire still ends the wait: give the
        // lease back rather than start a child only to stop it.
        if let Some(Event::Signal(signal @ (Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP))) =
            futures::FutureExt::now_or_never(supervisor.next_event())
        {
            tracing::info!(signal = %signal, "stopped before the child started");
            release(store, slot).await;
            health.released();
            return Ok(Held::Done(Exit::Signaled(signal as i32)));
        }
        if let Err(err) = supervisor.spawn(&command) {
            release(store, slot).await;
            health.released();
            return Err(match err {
                SpawnError::NotFound(program) => Error::CommandNotFound(program),
                SpawnError::NotExecutable(program, err) => Error::CommandNotExecutable(program, err.to_string()),
                SpawnError::Other(program, err) => Error::Internal(format!("{program}: cannot start: {err}")),
            });
        }
        health.child_started();

        type Call<'a> = Pin<Box<dyn Future<Output = Outcome> + 'a>>;
        let store: &Store = store;
        let mut in_flight: Option<Call<'_>> = None;
        loop {
            let mut wake = slot.retry_at;
            let call_allowed = in_flight.is_none() && slot.retry_at.is_none_or(|at| at <= Instant::now());
            match slot.elector.next(now()) {
                Action::Lost(reason) => {
                    drop(in_flight.take());
                    tracing::error!(reason = %reason, "lost the lease; stopping the child");
                    health.lost();
                    let exit = supervisor.stop(config.kill_signal, config.grace).await;
                    health.child_exited();
                    tracing::warn!(child_exit = exit.code(), "child stopped after losing the lease");
                    return Ok(Held::Lost);
                }
                Action::Read if call_allowed => {
                    slot.retry_at = None;
                    let name = slot.name.clone();
                    in_flight = Some(Box::pin(async move { Outcome::Read(store.get(&name).await) }));
                }
                Action::Write(write) if call_allowed => {
                    slot.retry_at = None;
                    slot.elector.write_sent(&write, Instant::now());
                    let name = slot.name.clone();
                    in_flight = Some(Box::pin(async move { Outcome::Write(store.write(&name, &write).await) }));
                }
                Action::WaitUntil(at) => wake = earliest(wake, at),
                _ => {}
            }
            if let Some(held) = slot.elector.held() {
                // Whatever is in flight, wake at the renew deadline.
                wake = earliest(wake, held.last_renew_sent + config.timing.renew_deadline);
            }
            tokio::select! {
                outcome = async { in_flight.as_mut().expect("guarded").await }, if in_flight.is_some() => {
                    in_flight = None;
                    match outcome {
                        Outcome::Read(result) => match result {
                            Ok(current) => slot.elector.observe(current, Instant::now()),
                            Err(err) => {
                                health.api_error(err.kind());
                                tracing::warn!(error = %err, "reading the lease failed");
                                slot.elector.want_read();
                                slot.retry_at = Some(Instant::now() + backoff(config.timing.retry_period, 1));
                            }
                        },
                        Outcome::Write(result) => {
                            if let Err(err) = &result {
                                health.api_error(err.kind());
                            }
                            match &result {
                                Err(err @ StoreError::Unknown(_)) => {
                                    tracing::warn!(error = %err, "renewal outcome unknown; reading the lease");
                                }
                                Err(err @ (StoreError::Transient(_) | StoreError::Fatal(_))) => {
                                    tracing::warn!(error = %err, "renewal failed");
                                }
                                _ => {}
                            }
                            let applied = result.is_ok();
                            slot.elector.write_result(drive::write_result(&result), Instant::now());
                            if let (true, Some(held)) = (applied, slot.elector.held()) {
                                health.renewed(held.last_renew_sent, Instant::now());
                            }
                        }
                    }
                }
                _ = sleep_until(wake) => {}
                Some(update) = next_update(std::slice::from_mut(slot)) => {
                    slot.elector.observe_event(update.1, Instant::now());
                }
                event = supervisor.next_event() => match event {
                    Event::Signal(signal) => {
                        tracing::info!(signal = %signal, "forwarding signal to the child");
                        supervisor.forward(signal);
                    }
                    Event::ChildExited(exit) => {
                        drop(in_flight.take());
                        tracing::info!(exit = exit.code(), "child exited");
                        health.child_exited();
                        supervisor.finish(config.kill_signal, config.grace).await;
                        release(store, slot).await;
                        health.released();
                        return Ok(Held::Done(Exit::Child(exit.code())));
                    }
                },
            }
        }
    }
}

enum Outcome {
    Read(std::result::Result<Option<Versioned>, StoreError>),
    Write(std::result::Result<Versioned, StoreError>),
}

/// Read one slot's lease. A failure that retrying may fix schedules a retry and is returned; one
/// that it will not (forbidden, namespace missing, ...) is an error.
async fn read(store: &Store, slot: &mut Slot) -> Result<std::result::Result<(), StoreError>> {
    match store.get(&slot.name).await {
        Ok(current) => {
            slot.failures = 0;
            slot.elector.observe(current, Instant::now());
            Ok(Ok(()))
        }
        Err(StoreError::Fatal(err)) => Err(err),
        Err(err) => {
            retry_later(slot, &err);
            Ok(Err(err))
        }
    }
}

/// Send one acquisition write for a slot and feed the result to its elector.
async fn send_write(store: &Store, slot: &mut Slot, write: Write) -> Result<std::result::Result<(), StoreError>> {
    match drive::send(store, &slot.name, &mut slot.elector, &write).await {
        Ok(_) | Err(StoreError::Conflict(_)) => {
            slot.failures = 0;
            Ok(Ok(()))
        }
        Err(StoreError::Fatal(err)) => Err(err),
        Err(err) => {
            retry_later(slot, &err);
            Ok(Err(err))
        }
    }
}

fn retry_later(slot: &mut Slot, err: &StoreError) {
    slot.failures += 1;
    let delay = backoff(Duration::from_secs(2), slot.failures);
    tracing::warn!(lease = %slot.name, error = %err, retry_in = ?delay, "API call failed; retrying");
    slot.retry_at = Some(Instant::now() + delay);
}

/// Give the lease up after the child is gone (see `drive::release`); a failure only means the lease
/// expires after its duration instead.
async fn release(store: &Store, slot: &mut Slot) {
    match drive::release(store, &slot.name, &mut slot.elector).await {
        Ok(true) => tracing::info!("released the lease"),
        Ok(false) => tracing::debug!("the lease is no longer ours; nothing to release"),
        Err(err) => tracing::warn!(error = %err, "could not release the lease; it will expire after its duration"),
    }
}

/// The next watch update from any slot that has a watch; never ready while none has.
async fn next_update(slots: &mut [Slot]) -> Option<(usize, WatchUpdate)> {
    let receivers: Vec<_> = slots
        .iter_mut()
        .enumerate()
        .filter_map(|(index, slot)| Some((index, slot.watch.as_mut()?)))
        .map(|(index, watch)| {
            Box::pin(async move {
                match watch.updates.recv().await {
                    Some(update) => (index, update),
                    // A watch task that ended (it never does on its own) must not spin the loop.
                    None => std::future::pending().await,
                }
            })
        })
        .collect();
    if receivers.is_empty() {
        return std::future::pending().await;
    }
    Some(futures::future::select_all(receivers).await.0)
}

fn earliest(a: Option<Instant>, b: Instant) -> Option<Instant> {
    Some(a.map_or(b, |a| a.min(b)))
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
