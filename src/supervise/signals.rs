//! The one way mpsync receives signals: a dedicated thread waits for them (signal-hook's self-pipe
//! iterator) and hands them to async code through a channel. Like any signal delivery, two of the same
//! signal that arrive close together may be seen as one.
//!
//! Why this and not `tokio::signal`:
//! - It works before any runtime exists. The supervisor must start while the process is still
//!   single-threaded (it forks its guard), before the runtime is built; `tokio::signal` can only register
//!   inside a runtime, and a signal that came in between would be lost or take its default action.
//! - It does not care which runtime, if any, polls it, nor whether that runtime is busy: the thread reads
//!   the signals as they come, so sidecar and status can use the same receiver in their own runtimes.
//! - It lets the caller decide per signal first: a signal inherited as ignored (nohup) is left ignored
//!   rather than given a handler (see [`ignored`]).
//!
//! Handlers stay installed for the life of the process (signal-hook never uninstalls them); whoever needs
//! a default action back (to stop, or to die of a signal) sets it with `sigaction` itself.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use nix::libc;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use signal_hook::iterator::Signals;
use tokio::sync::mpsc;

/// The stop signals that came, as PID 1, before mpsync had its handlers (see [`catch_early`]): bit `n - 1`
/// is signal `n` (1 to 64, the real-time ones included).
static EARLY: AtomicU64 = AtomicU64::new(0);

/// Set once the early signals are replayed: signal-hook keeps `note_early` as the handler before its own,
/// and calls it for every later signal too, which must not be noted (and replayed again) then.
static REPLAYED: AtomicBool = AtomicBool::new(false);

extern "C" fn note_early(signal: libc::c_int) {
    if (1..=64).contains(&signal) && !REPLAYED.load(Ordering::SeqCst) {
        EARLY.fetch_or(1 << (signal - 1), Ordering::SeqCst);
    }
}

/// First thing in `main`. As PID 1, the kernel discards a signal that has no handler, so a SIGTERM sent in
/// the milliseconds before mpsync set up its signal thread (a pod deleted as it starts) would be lost, and
/// the pod would run on to its SIGKILL. As PID 1, each stop signal left at its default action is noted from
/// here on, and [`replay_early`] sends it again once it is handled. What the parent left ignored stays
/// ignored. The real-time signals count (one is systemd images' STOPSIGNAL, taken as SIGTERM: found by
/// review, helper-197). Not PID 1, a stop signal this early ends mpsync at once, as it should: nothing is
/// held yet.
pub fn catch_early() {
    if std::process::id() != 1 {
        return;
    }
    let ending = crate::supervise::ENDING.iter().map(|signal| *signal as i32);
    for signal in ending.chain(libc::SIGRTMIN()..=libc::SIGRTMAX()) {
        // SAFETY: sigaction(2) with a null new action only reads the current one; the handler installed
        // then only does an atomic or, which is async-signal-safe.
        unsafe {
            let mut current: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut current) != 0 || current.sa_sigaction != libc::SIG_DFL {
                continue;
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = note_early as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// Once the stop signals are handled: send again to this process each one that [`catch_early`] noted.
pub fn replay_early() {
    if REPLAYED.swap(true, Ordering::SeqCst) {
        return;
    }
    let caught = EARLY.swap(0, Ordering::SeqCst);
    for number in (1..=64).filter(|n: &i32| caught & (1 << (n - 1)) != 0) {
        tracing::debug!(signal = number, "a stop signal that came before mpsync handled it, received now");
        // SAFETY: kill(2) of this process with a signal number it handles (nix's `Signal` has no real-time ones).
        unsafe { libc::kill(libc::getpid(), number) };
    }
}

/// The job-control signals: taken by the signal thread alone (the others block them), so that their
/// handlers run one after the other (see `JobControlOrder`).
pub const JOB_CONTROL: [Signal; 4] = [Signal::SIGTSTP, Signal::SIGTTIN, Signal::SIGTTOU, Signal::SIGCONT];

/// The handler of the job-control signal `signal` blocks the others while it runs: the kernel otherwise
/// delivers a SIGTSTP that comes while a SIGCONT's handler is being entered on top of it, and the SIGTSTP's
/// handler runs (and counts) first (found by a test that stops and continues mpsync 300 times: now and then
/// it took a Ctrl-Z for one already continued, and did not stop). The action signal-hook installed, with
/// that mask.
fn one_at_a_time(signal: Signal) -> io::Result<()> {
    // SAFETY: sigaction(2) reads the action into a zeroed struct, then installs it again with more of the
    // signals masked while it runs: the same handler and flags.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(signal as i32, std::ptr::null(), &mut action) != 0 {
            return Err(io::Error::last_os_error());
        }
        for other in JOB_CONTROL {
            libc::sigaddset(&mut action.sa_mask, other as i32);
        }
        if libc::sigaction(signal as i32, &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// When the job-control signals were delivered: each one's handler counts it, and notes its count as the
/// last stop (SIGTSTP, SIGTTIN, SIGTTOU) or the last SIGCONT.
#[derive(Default)]
struct JobControlOrder {
    count: AtomicU64,
    last_stop: AtomicU64,
    last_cont: AtomicU64,
}

impl JobControlOrder {
    fn delivered(&self, is_stop: bool) {
        let at = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        match is_stop {
            true => self.last_stop.fetch_max(at, Ordering::SeqCst),
            false => self.last_cont.fetch_max(at, Ordering::SeqCst),
        };
    }
}

/// The stop signals (`supervise::ENDING`, and the real-time ones) delivered, and those of them the thread
/// has passed on, for [`SignalReceiver::stop_on_the_way`].
#[derive(Default)]
struct StopCount {
    /// Counted by each one's handler, before signal-hook's own action writes to its pipe.
    delivered: AtomicU64,
    /// What `delivered` read when the thread took a stop signal from the pipe, stored once it was queued: every
    /// stop delivered up to then is queued, or one later than it is.
    passed_on: AtomicU64,
}

/// Signals received by a thread of their own, to be awaited with [`SignalReceiver::recv`].
pub struct SignalReceiver {
    receiver: mpsc::UnboundedReceiver<Signal>,
    /// The job-control signals in the order the kernel delivered them (see [`JobControlOrder`]).
    order: std::sync::Arc<JobControlOrder>,
    stops: std::sync::Arc<StopCount>,
    /// The stop signals listened for, for `sigpending`.
    stop_set: libc::sigset_t,
    open: bool,
    thread: Option<(signal_hook::iterator::Handle, JoinHandle<()>)>,
}

impl SignalReceiver {
    /// Handle `signals` from now on: each one received is queued for [`recv`](Self::recv). The thread
    /// unblocks them for itself, so they are received whatever mask the process inherited; other threads
    /// keep their masks.
    ///
    /// Also the real-time signals not ignored at start, each received as SIGTERM (see [`real_time`]).
    pub fn new(signals: &[Signal]) -> io::Result<SignalReceiver> {
        let real_time = real_time();
        let numbers: Vec<i32> = signals.iter().map(|signal| *signal as i32).chain(real_time.iter().copied()).collect();
        let is_stop = |number: i32| {
            real_time.contains(&number) || crate::supervise::ENDING.iter().any(|stop| *stop as i32 == number)
        };
        let stops = std::sync::Arc::new(StopCount::default());
        let mut stop_set = *SigSet::empty().as_ref();
        for number in numbers.iter().copied().filter(|number| is_stop(*number)) {
            let count = std::sync::Arc::clone(&stops);
            // Before the iterator's own action (actions run in the order they were registered): a stop
            // counted as delivered is in the pipe only after it is counted. SAFETY: the action only does an
            // atomic add, which is async-signal-safe.
            unsafe {
                signal_hook::low_level::register(number, move || {
                    count.delivered.fetch_add(1, Ordering::SeqCst);
                })
            }?;
            // SAFETY: sigaddset on a valid sigset_t, with a signal number that was registered just now.
            unsafe { libc::sigaddset(&mut stop_set, number) };
        }
        let mut iterator = Signals::new(numbers)?;
        let order = std::sync::Arc::new(JobControlOrder::default());
        for signal in signals {
            let is_stop = match signal {
                Signal::SIGCONT => false,
                Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU => true,
                _ => continue,
            };
            let order = std::sync::Arc::clone(&order);
            // SAFETY: the action only does atomic operations, which are async-signal-safe.
            unsafe { signal_hook::low_level::register(*signal as i32, move || order.delivered(is_stop)) }?;
            one_at_a_time(*signal)?;
        }
        let handle = iterator.handle();
        let mut raw_wanted = *set_of(signals).as_ref();
        for number in &real_time {
            // SAFETY: sigaddset on a valid sigset_t, with a signal number the C library gave.
            unsafe { libc::sigaddset(&mut raw_wanted, *number) };
        }
        // SAFETY: made from a valid SigSet by sigaddset alone.
        let wanted = unsafe { SigSet::from_sigset_t_unchecked(raw_wanted) };
        let (sender, receiver) = mpsc::unbounded_channel();
        let count = std::sync::Arc::clone(&stops);
        let stop_numbers = stop_set;
        let thread = std::thread::Builder::new().name("mpsync-signals".into()).spawn(move || {
            let _ = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&wanted), None);
            for number in iterator.forever() {
                let signal = Signal::try_from(number).unwrap_or(Signal::SIGTERM);
                let delivered = count.delivered.load(Ordering::SeqCst);
                if sender.send(signal).is_err() {
                    break;
                }
                // SAFETY: sigismember on a valid set, with a signal number the iterator gave.
                if unsafe { libc::sigismember(&stop_numbers, number) } == 1 {
                    count.passed_on.fetch_max(delivered, Ordering::SeqCst);
                }
            }
        })?;
        Ok(SignalReceiver { receiver, order, stops, stop_set, open: true, thread: Some((handle, thread)) })
    }

    /// Whether a stop signal has come that may not be queued yet: pending (delivered to no thread yet), or
    /// delivered and not yet passed on by the thread, which may run late on a busy machine. It is queued
    /// soon after. Once this says no, every stop signal that came before the call is queued (found by
    /// review, rv227: a SIGTERM that came while mpsync was frozen, its acquisition's answer on the way, was
    /// not queued yet when mpsync, continued, looked for one before it started the child, and the child
    /// started).
    pub fn stop_on_the_way(&self) -> bool {
        // First: a pending stop is delivered to this thread (which does not block it) as the call returns,
        // and then counted.
        let mut pending = *SigSet::empty().as_ref();
        // SAFETY: sigpending(2) writes the pending set into a valid sigset_t.
        let pending_stop = unsafe { libc::sigpending(&mut pending) } == 0
            && (1..=64).any(|number| {
                // SAFETY: sigismember on two valid sets, with a signal number in range.
                unsafe { libc::sigismember(&pending, number) == 1 && libc::sigismember(&self.stop_set, number) == 1 }
            });
        pending_stop || self.stops.delivered.load(Ordering::SeqCst) > self.stops.passed_on.load(Ordering::SeqCst)
    }

    /// A mark of the job-control signals delivered so far, for [`continued_since`](Self::continued_since).
    pub fn mark(&self) -> u64 {
        self.order.count.load(Ordering::SeqCst)
    }

    /// Whether the last job-control signal delivered is a SIGCONT, delivered after `mark` (0: any). Told by
    /// the handlers as the kernel delivers them: the thread may not have passed one on yet (it may run late
    /// on a busy machine: found by review, helper-197), and passes on those pending together in the order of
    /// their numbers, a SIGCONT before a SIGTSTP that came first (found by review, helper-200).
    pub fn continued_since(&self, mark: u64) -> bool {
        let cont = self.order.last_cont.load(Ordering::SeqCst);
        cont > mark && cont > self.order.last_stop.load(Ordering::SeqCst)
    }

    /// A signal already received and not yet taken, if there is one: never waits.
    pub fn try_recv(&mut self) -> Option<Signal> {
        self.receiver.try_recv().ok()
    }

    /// The next signal received; pending for ever once the thread is gone (it never stops on its own).
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Signal {
        if self.open {
            match self.receiver.recv().await {
                Some(signal) => return signal,
                None => {
                    tracing::warn!("the signal thread has stopped");
                    self.open = false;
                }
            }
        }
        std::future::pending().await
    }
}

impl Drop for SignalReceiver {
    fn drop(&mut self) {
        if let Some((handle, thread)) = self.thread.take() {
            handle.close();
            let _ = thread.join();
        }
    }
}

/// The stop signals of a command that does not supervise a child, as `Stops` handles them: each with the
/// signal it counts as and its number. Every catchable signal whose default action ends the process (see
/// `supervise::ENDING`; one left to that action would end a side-car that holds leases at once, without
/// giving them back), but those ignored at start other than TERM and INT; and the real-time ones, which
/// count as SIGTERM (see `real_time`).
pub(crate) fn stop_numbers() -> Vec<(Signal, i32)> {
    let left_ignored = ignored(&crate::supervise::ENDING);
    crate::supervise::ENDING
        .iter()
        .filter(|stop| !left_ignored.contains(**stop) || matches!(stop, Signal::SIGTERM | Signal::SIGINT))
        .map(|stop| (*stop, *stop as i32))
        .chain(real_time().into_iter().map(|number| (Signal::SIGTERM, number)))
        .collect()
}

/// The signals that stop a command that does not supervise a child (`sidecar`, `status`, `observe`):
/// SIGTERM, SIGINT, and the other catchable signals that end a process by default (HUP, QUIT, ALRM,
/// XCPU, PWR, ...; not XFSZ, ignored) unless ignored at start (`nohup`), as for `lock`. Made inside a
/// runtime (they are `tokio::signal`s: these commands fork nothing, so nothing comes before the runtime).
pub struct Stops {
    signals: Vec<(Signal, tokio::signal::unix::Signal)>,
}

impl Stops {
    pub fn new() -> crate::error::Result<Stops> {
        use tokio::signal::unix::{SignalKind, signal};
        let failed = |err: io::Error| crate::error::Error::Internal(format!("cannot handle signals: {err}"));
        crate::supervise::ignore_file_size_signal();
        let signals = stop_numbers()
            .into_iter()
            .map(|(stop, number)| Ok((stop, signal(SignalKind::from_raw(number)).map_err(failed)?)))
            .collect::<crate::error::Result<_>>()?;
        replay_early();
        Ok(Stops { signals })
    }

    /// The next stop signal.
    pub async fn next(&mut self) -> Signal {
        let received = self.signals.iter_mut().map(|(stop, receiver)| {
            Box::pin(async move {
                receiver.recv().await;
                *stop
            })
        });
        futures::future::select_all(received).await.0
    }
}

/// The real-time signals (SIGRTMIN..=SIGRTMAX, as the C library numbers them) not ignored now. Their
/// default action ends a process, and one is a container's STOPSIGNAL (systemd's images: SIGRTMIN+3):
/// mpsync takes each as SIGTERM, so that it ends the job and gives the lease back instead of dying of it
/// with the lease held (found by review, helper-114). They have no names of their own in mpsync.
pub fn real_time() -> Vec<i32> {
    (libc::SIGRTMIN()..=libc::SIGRTMAX())
        .filter(|number| {
            // SAFETY: with a null new action, sigaction(2) only reads the current one into `current`.
            let ignored = unsafe {
                let mut current: libc::sigaction = std::mem::zeroed();
                libc::sigaction(*number, std::ptr::null(), &mut current) == 0 && current.sa_sigaction == libc::SIG_IGN
            };
            !ignored
        })
        .collect()
}

/// The signals among `signals` whose action is SIG_IGN now: at start-up, the ones the parent left ignored
/// (`nohup` ignores SIGHUP; a shell without job control starts `cmd &` with SIGINT and SIGQUIT ignored).
pub fn ignored(signals: &[Signal]) -> SigSet {
    let mut set = SigSet::empty();
    for signal in signals {
        // SAFETY: with a null new action, sigaction(2) only reads the current one into `current`.
        let ignored = unsafe {
            let mut current: libc::sigaction = std::mem::zeroed();
            libc::sigaction(*signal as i32, std::ptr::null(), &mut current) == 0
                && current.sa_sigaction == libc::SIG_IGN
        };
        if ignored {
            set.add(*signal);
        }
    }
    set
}

pub fn set_of(signals: &[Signal]) -> SigSet {
    let mut set = SigSet::empty();
    for signal in signals {
        set.add(*signal);
    }
    set
}
