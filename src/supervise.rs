//! The child: spawn, process group, terminal, signals, reaping, stop-with-grace.
//! This module knows nothing of leases.
//!
//! How the run loop uses it:
//! - [`Supervisor::start`] once, before the tokio runtime is built (the process must still be single-threaded:
//!   it forks the guard process). The runtime must be a `current_thread` one with time enabled, and `spawn`,
//!   `next_event`, `stop` and `finish` must all run on that (main) thread: see [`Supervisor::spawn`].
//! - [`Supervisor::next_event`] is cancel-safe: use it in `select!`. It yields the forwardable signals mpsync
//!   receives and, exactly once per child, the main child's exit.
//! - After `Event::ChildExited`, call [`Supervisor::finish`] (kills what the child left in its group, hands the
//!   terminal back, disarms the guard) before releasing the lease or spawning again.
//! - To stop a running child (lease lost, or a signal that should end it), call [`Supervisor::stop`]: it returns
//!   the child's exit itself, and `next_event` will not report that exit again. Signals that arrive during
//!   `stop` or `finish` are queued, in order, for the following `next_event` calls. Await `stop` and `finish`
//!   to the end (not inside a `select!` that may drop them).
//! - Reaping: as PID 1 or subreaper, `waitpid(-1)` reaps every orphan; otherwise only the main child and the
//!   guard are reaped, by pid, so that other children of mpsync keep their status for whoever waits for them.
//! - If mpsync dies, even by SIGKILL, the guard process kills the child's whole group; dropping the
//!   `Supervisor` (or exiting) without `stop`/`finish` does the same.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::libc;
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, killpg, pthread_sigmask};
use nix::sys::termios::{SetArg, Termios, tcgetattr, tcsetattr};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, getpgrp, getpid, isatty, pipe2, setpgid, tcgetpgrp, tcsetpgrp};
use signal_hook::iterator::Signals;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildExit {
    Exited(i32),
    Signaled(i32),
}

impl ChildExit {
    /// The shell convention: the exit code, or 128+N for death by signal N.
    pub fn code(self) -> i32 {
        match self {
            ChildExit::Exited(code) => code,
            ChildExit::Signaled(signal) => 128 + signal,
        }
    }
}

/// What the run loop hears from the supervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// mpsync received one of TERM, INT, HUP, QUIT, USR1, USR2, WINCH.
    Signal(Signal),
    /// The main child exited and was reaped.
    ChildExited(ChildExit),
}

/// The command to run: argv as given (never through a shell), plus extra environment.
#[derive(Clone, Debug)]
pub struct ChildCommand {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SuperviseOptions {
    /// Become a child subreaper (PR_SET_CHILD_SUBREAPER), as if PID 1.
    pub subreaper: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("{0}: command not found")]
    NotFound(String),
    #[error("{0}: not executable ({1})")]
    NotExecutable(String, std::io::Error),
    #[error("{0}: cannot start ({1})")]
    Other(String, std::io::Error),
}

/// The signals mpsync passes on to the run loop (and, through it, to the child).
const FORWARDED: [i32; 7] =
    [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2, libc::SIGWINCH];

/// How often group membership is checked while waiting for a group to empty.
const POLL: Duration = Duration::from_millis(20);

/// How long to wait for processes to disappear after SIGKILL before saying so (and, for the rest of the
/// group, giving up on them: SIGKILL is all there is).
const AFTER_KILL: Duration = Duration::from_secs(5);

pub struct Supervisor {
    /// Signal numbers from the signal thread, SIGCHLD included.
    signals: mpsc::UnboundedReceiver<i32>,
    signals_open: bool,
    signal_thread: Option<(signal_hook::iterator::Handle, JoinHandle<()>)>,
    /// Events not yet returned by `next_event`: signals that arrived during `stop`/`finish`, and the main
    /// child's exit once reaped.
    events: VecDeque<Event>,
    /// Reap every child with waitpid(-1) (PID 1 or subreaper: orphans are reparented to us). Otherwise only our
    /// own children are reaped, by pid, so that a child some other part of mpsync started (a kubeconfig exec
    /// credential plugin, say) keeps its status for whoever waits for it.
    reap_orphans: bool,
    /// The main child: spawned and not yet reaped.
    main: Option<Pid>,
    /// The main child's process group, from spawn until `stop`/`finish` saw it empty.
    group: Option<Pid>,
    /// The last main child's exit, once reported.
    last_exit: Option<ChildExit>,
    guard: Option<Guard>,
    /// The terminal modes to restore, when mpsync started in the foreground of a terminal.
    terminal: Option<Termios>,
}

impl Supervisor {
    /// Call before the tokio runtime starts, while the process is single-threaded: forks the guard
    /// process, starts the signal thread, becomes a subreaper if asked.
    pub fn start(options: SuperviseOptions) -> std::io::Result<Supervisor> {
        // Giving the terminal back from the background raises SIGTTOU; mpsync never reads the terminal, but a
        // stray SIGTTIN must not stop it either.
        for signal in [Signal::SIGTTOU, Signal::SIGTTIN] {
            // SAFETY: SIG_IGN installs no handler code, so nothing can run in signal context.
            unsafe { nix::sys::signal::signal(signal, SigHandler::SigIgn) }?;
        }

        let stdin = io::stdin();
        let foreground = isatty(&stdin).unwrap_or(false) && tcgetpgrp(&stdin).ok() == Some(getpgrp());
        let terminal = if foreground { tcgetattr(&stdin).ok() } else { None };

        if options.subreaper {
            nix::sys::prctl::set_child_subreaper(true)?;
        }
        let reap_orphans = getpid().as_raw() == 1 || nix::sys::prctl::get_child_subreaper().unwrap_or(false);

        // The guard first, while no signal handler is installed and no other thread exists.
        let guard = Guard::spawn()?;

        let mut signals = Signals::new(FORWARDED.iter().copied().chain([libc::SIGCHLD]))?;
        let handle = signals.handle();
        let (sender, receiver) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new().name("mpsync-signals".into()).spawn(move || {
            for signal in signals.forever() {
                if sender.send(signal).is_err() {
                    break;
                }
            }
        })?;

        debug!(guard = guard.pid.as_raw(), reap_orphans, interactive = terminal.is_some(), "supervisor started");
        Ok(Supervisor {
            signals: receiver,
            signals_open: true,
            signal_thread: Some((handle, thread)),
            events: VecDeque::new(),
            reap_orphans,
            main: None,
            group: None,
            last_exit: None,
            guard: Some(guard),
            terminal,
        })
    }

    /// The next signal mpsync received, or the main child's exit. Reaps orphans on the way.
    pub async fn next_event(&mut self) -> Event {
        loop {
            self.reap();
            if let Some(event) = self.events.pop_front() {
                if let Event::ChildExited(exit) = event {
                    self.last_exit = Some(exit);
                }
                return event;
            }
            if !self.signals_open {
                std::future::pending::<()>().await;
            }
            let received = self.signals.recv().await;
            self.take_signal(received);
        }
    }

    /// Start the child in its own process group (and the terminal's foreground, if interactive).
    ///
    /// Call it on the thread that will outlive the child (the main thread, under a `current_thread` runtime):
    /// the child's parent-death signal fires when the *thread* that forked it exits, not the process.
    pub fn spawn(&mut self, command: &ChildCommand) -> Result<u32, SpawnError> {
        let name = command.program.to_string_lossy().into_owned();
        if self.running() {
            return Err(SpawnError::Other(name, io::Error::other("a child is already running")));
        }
        if let Some(pgid) = self.group.take() {
            warn!(pgid = pgid.as_raw(), "the previous child's group was never finished; killing it");
            signal_group(pgid, Signal::SIGKILL);
        }
        self.reap();
        if self.guard.is_none() {
            // The guard died (someone killed it): start another, so no child runs unguarded.
            let guard = Guard::spawn().map_err(|error| SpawnError::Other(name.clone(), error))?;
            debug!(guard = guard.pid.as_raw(), "guard process restarted");
            self.guard = Some(guard);
        }
        let guard_fd = self.guard.as_ref().map_or(-1, |guard| guard.pipe.as_raw_fd());
        let parent = getpid().as_raw();
        let interactive = self.terminal.is_some();

        let mut child = std::process::Command::new(&command.program);
        child.args(&command.args);
        child.envs(command.env.iter().map(|(key, value)| (key, value)));
        // SAFETY: `prepare_child` makes only async-signal-safe calls on plain integers it captured by value.
        unsafe {
            child.pre_exec(move || prepare_child(parent, interactive, guard_fd));
        }
        // Only the pid is kept: std's `Child` must never wait, this module reaps.
        let pid = match child.spawn() {
            Ok(child) => child.id(),
            // Exec never fails with EPIPE; only the write to a dead guard in `prepare_child` does.
            Err(error) if error.raw_os_error() == Some(libc::EPIPE) => {
                self.reap();
                return Err(SpawnError::Other(name, io::Error::other("the guard process is gone")));
            }
            Err(error) => return Err(spawn_error(name, error)),
        };
        let pid = Pid::from_raw(pid as i32);
        // The child did this itself before exec; doing it here too is the classic belt and braces
        // (it fails with EACCES once the child has exec'd, which is fine).
        let _ = setpgid(pid, pid);
        self.main = Some(pid);
        self.group = Some(pid);
        debug!(pid = pid.as_raw(), program = %command.program.to_string_lossy(), "child started");
        Ok(pid.as_raw() as u32)
    }

    /// Whether a main child is running (spawned and not yet reaped).
    pub fn running(&self) -> bool {
        self.main.is_some()
    }

    /// The guard process's pid, while it lives (for tests and diagnostics).
    pub fn guard_pid(&self) -> Option<i32> {
        self.guard.as_ref().map(|guard| guard.pid.as_raw())
    }

    /// Send `signal` to the child's whole process group.
    pub fn forward(&self, signal: Signal) {
        if let Some(pgid) = self.group {
            debug!(pgid = pgid.as_raw(), ?signal, "forwarding signal to the child's group");
            signal_group(pgid, signal);
        }
    }

    /// Stop the child: `kill_signal` to its group, wait up to `grace`, then SIGKILL the group; reap.
    /// Signals that arrive meanwhile are kept for `next_event`.
    ///
    /// Within `grace` it waits for the whole group, not only the main child, so that `sh -c 'worker & wait'`
    /// lets the worker finish its shutdown too. Returns the main child's exit (which `next_event` then does not
    /// report); if the child had already exited, that exit; if no child was ever spawned, `Exited(0)`.
    /// Afterwards the terminal is mpsync's again, the guard is disarmed and `spawn` may be called again.
    pub async fn stop(&mut self, kill_signal: Signal, grace: Duration) -> ChildExit {
        if let Some(pgid) = self.group {
            debug!(pgid = pgid.as_raw(), ?kill_signal, ?grace, "stopping the child's group");
            signal_group(pgid, kill_signal);
            if !self.wait_for(Until::GroupEmpty(pgid), Instant::now() + grace).await {
                self.kill_group(pgid).await;
            }
            self.release_group();
        }
        let reaped = self.events.iter().position(|event| matches!(event, Event::ChildExited(_)));
        if let Some(Event::ChildExited(exit)) = reaped.and_then(|index| self.events.remove(index)) {
            self.last_exit = Some(exit);
        }
        self.last_exit.unwrap_or(ChildExit::Exited(0))
    }

    /// After the main child exited: stop what is left of its group (`kill_signal`, `grace`, SIGKILL),
    /// hand the terminal back, disarm the guard.
    ///
    /// Cheap when the group is already empty (the usual case). Called while the child still runs, it stops the
    /// child as `stop` would, and `next_event` then reports the child's exit.
    pub async fn finish(&mut self, kill_signal: Signal, grace: Duration) {
        if self.running() {
            warn!("finish called while the child runs; stopping it");
            let exit = self.stop(kill_signal, grace).await;
            self.events.push_back(Event::ChildExited(exit));
            return;
        }
        let Some(pgid) = self.group else { return };
        if group_alive(pgid) {
            debug!(pgid = pgid.as_raw(), ?kill_signal, "the child left processes in its group; stopping them");
            signal_group(pgid, kill_signal);
            if !self.wait_for(Until::GroupEmpty(pgid), Instant::now() + grace).await {
                self.kill_group(pgid).await;
            }
        }
        self.release_group();
    }

    /// SIGKILL the group, reap the main child, wait (bounded) for the rest of the group to disappear.
    async fn kill_group(&mut self, pgid: Pid) {
        warn!(pgid = pgid.as_raw(), "grace period over; killing the child's process group");
        signal_group(pgid, Signal::SIGKILL);
        while !self.wait_for(Until::MainExited, Instant::now() + AFTER_KILL).await {
            warn!(pgid = pgid.as_raw(), "the child is still not dead after SIGKILL; waiting");
        }
        let deadline = Instant::now() + AFTER_KILL;
        loop {
            // Again and again: a member that was forking when the first SIGKILL came may have a new child.
            signal_group(pgid, Signal::SIGKILL);
            let slice = (Instant::now() + Duration::from_millis(200)).min(deadline);
            if self.wait_for(Until::GroupEmpty(pgid), slice).await {
                return;
            }
            if Instant::now() >= deadline {
                warn!(pgid = pgid.as_raw(), "processes of the child's group survive SIGKILL; giving up on them");
                return;
            }
        }
    }

    /// The group is gone: take the terminal back and disarm the guard.
    fn release_group(&mut self) {
        self.group = None;
        self.take_terminal_back();
        if let Some(guard) = &self.guard {
            guard.tell(0);
        }
    }

    fn take_terminal_back(&self) {
        if let Some(saved) = &self.terminal {
            let stdin = io::stdin();
            // SIGTTOU is ignored (see `start`), so this works from the background.
            if let Err(error) = tcsetpgrp(&stdin, getpgrp()) {
                debug!(%error, "cannot take the terminal's foreground back");
            }
            if let Err(error) = tcsetattr(&stdin, SetArg::TCSADRAIN, saved) {
                debug!(%error, "cannot restore the terminal's modes");
            }
        }
    }

    /// Wait until `until` holds or `deadline` passes (false then), reaping and queueing signals meanwhile.
    async fn wait_for(&mut self, until: Until, deadline: Instant) -> bool {
        loop {
            self.reap();
            let done = match until {
                Until::MainExited => self.main.is_none(),
                Until::GroupEmpty(pgid) => self.main.is_none() && !group_alive(pgid),
            };
            if done {
                // A member seen as a zombie may be ours to reap (as PID 1 or subreaper) since the reap above.
                self.reap();
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let nap = tokio::time::sleep(POLL.min(deadline - now));
            tokio::select! {
                received = self.signals.recv(), if self.signals_open => self.take_signal(received),
                () = nap => {}
            }
        }
    }

    fn take_signal(&mut self, received: Option<i32>) {
        match received {
            None => {
                warn!("the signal thread has stopped");
                self.signals_open = false;
            }
            Some(libc::SIGCHLD) => self.reap(),
            Some(number) => match Signal::try_from(number) {
                Ok(signal) => self.events.push_back(Event::Signal(signal)),
                Err(_) => debug!(number, "ignoring an unknown signal number"),
            },
        }
    }

    /// Collect every child that has ended, without blocking.
    fn reap(&mut self) {
        if self.reap_orphans {
            loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                    Ok(status) => self.reaped(status),
                    Err(Errno::EINTR) => {}
                    Err(error) => {
                        warn!(%error, "waitpid failed");
                        break;
                    }
                }
            }
        } else {
            let guard = self.guard.as_ref().map(|guard| guard.pid);
            for pid in [self.main, guard].into_iter().flatten() {
                match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) => {}
                    Ok(status) => self.reaped(status),
                    Err(Errno::ECHILD) if Some(pid) == self.main => {
                        // Someone else in this process reaped our child: its status is lost. Never hang on it.
                        warn!(pid = pid.as_raw(), "the child was reaped elsewhere; its exit status is lost");
                        self.main = None;
                        self.events.push_back(Event::ChildExited(ChildExit::Exited(255)));
                    }
                    Err(Errno::ECHILD) => self.guard = None,
                    Err(error) => debug!(pid = pid.as_raw(), %error, "waitpid failed"),
                }
            }
        }
    }

    fn reaped(&mut self, status: WaitStatus) {
        let (pid, exit) = match status {
            WaitStatus::Exited(pid, code) => (pid, ChildExit::Exited(code)),
            WaitStatus::Signaled(pid, signal, _) => (pid, ChildExit::Signaled(signal as i32)),
            _ => return,
        };
        if Some(pid) == self.main {
            debug!(pid = pid.as_raw(), ?exit, "child exited");
            self.main = None;
            self.events.push_back(Event::ChildExited(exit));
        } else if Some(pid) == self.guard.as_ref().map(|guard| guard.pid) {
            warn!(pid = pid.as_raw(), ?exit, "the guard process died; a new one starts with the next child");
            self.guard = None;
        } else {
            debug!(pid = pid.as_raw(), ?exit, "reaped an orphan");
        }
    }
}

impl Drop for Supervisor {
    /// Nothing outlives the supervisor: whatever is left of the child's group is killed.
    fn drop(&mut self) {
        if let Some(pgid) = self.group.take() {
            signal_group(pgid, Signal::SIGKILL);
            self.take_terminal_back();
        }
        if let Some(pid) = self.main.take() {
            let _ = waitpid(pid, None);
        }
        if let Some((handle, thread)) = self.signal_thread.take() {
            handle.close();
            let _ = thread.join();
        }
        if let Some(guard) = self.guard.take() {
            let pid = guard.pid;
            // Closing the pipe is the guard's cue to exit.
            drop(guard);
            let _ = waitpid(pid, None);
        }
    }
}

#[derive(Clone, Copy)]
enum Until {
    MainExited,
    GroupEmpty(Pid),
}

/// `kill(-pgid, signal)`; a group that is already gone is no error.
fn signal_group(pgid: Pid, signal: Signal) {
    match killpg(pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(error) => {
            warn!(pgid = pgid.as_raw(), ?signal, %error, "cannot signal the child's group")
        }
    }
}

/// Whether process group `pgid` still has a member that can run.
///
/// kill(2) also finds zombies, and members orphaned by the child's death are reparented to init, which in some
/// containers never reaps them: such a group would look alive forever. So when kill(2) finds the group, look in
/// /proc for a member that is not a zombie; if /proc shows no member at all (hidepid), believe kill(2).
fn group_alive(pgid: Pid) -> bool {
    if let Err(Errno::ESRCH) = killpg(pgid, None) {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    let mut zombies = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else {
            continue;
        };
        let Some(stat) = ProcStat::read(pid) else {
            continue;
        };
        if stat.pgrp == pgid.as_raw() {
            if stat.is_zombie() {
                zombies += 1;
            } else {
                return true;
            }
        }
    }
    zombies == 0
}

/// The few fields of /proc/PID/stat this module needs.
struct ProcStat {
    state: char,
    pgrp: i32,
}

impl ProcStat {
    fn read(pid: i32) -> Option<ProcStat> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (2nd field) is in parentheses and may contain spaces and parentheses.
        let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let _ppid = fields.next()?;
        let pgrp = fields.next()?.parse().ok()?;
        Some(ProcStat { state, pgrp })
    }

    fn is_zombie(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

fn spawn_error(name: String, error: io::Error) -> SpawnError {
    match error.raw_os_error() {
        Some(libc::ENOENT) => SpawnError::NotFound(name),
        Some(
            libc::EACCES | libc::EPERM | libc::ENOEXEC | libc::EISDIR | libc::ENOTDIR | libc::ELOOP | libc::ETXTBSY,
        ) => SpawnError::NotExecutable(name, error),
        _ => SpawnError::Other(name, error),
    }
}

/// Runs in the forked child, between fork and exec: only async-signal-safe calls (mpsync has other threads,
/// whose locks are frozen in the child), no allocation.
fn prepare_child(parent: libc::pid_t, interactive: bool, guard_fd: RawFd) -> io::Result<()> {
    // SAFETY: plain system calls on integers and on a stack-allocated sigset; nothing allocates or locks.
    unsafe {
        // Its own process group, so signals (and, on loss, SIGKILL) reach everything it starts.
        if libc::setpgid(0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        let pid = libc::getpid();
        if interactive {
            // The terminal's foreground before the command can read it; SIGTTOU is still ignored here.
            // Best effort: a failure leaves the child in the background, as under a non-interactive mpsync.
            libc::tcsetpgrp(0, pid);
        }
        // Arm the guard with our group before the command starts. std may already have reset SIGPIPE to its
        // default, and a dead guard must give an error, not a death by SIGPIPE.
        if guard_fd >= 0 {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            let message = pid.to_ne_bytes();
            if libc::write(guard_fd, message.as_ptr().cast(), message.len()) != message.len() as isize {
                // EPIPE: the guard is gone (`spawn` says so).
                return Err(io::Error::last_os_error());
            }
        }
        // Neither mpsync's handlers, nor signals ignored when mpsync started (nohup), nor its mask. The raw
        // system calls, because glibc refuses to touch the two real-time signals it keeps for itself (32, 33),
        // and those can be inherited ignored too. An all-zero kernel `struct sigaction` is SIG_DFL, no flags,
        // empty mask, whatever the architecture's field order.
        let default_action = [0u64; 4];
        let empty_set = 0u64;
        for signal in 1..=64 {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::syscall(libc::SYS_rt_sigaction, signal, &default_action, std::ptr::null::<u64>(), 8);
            }
        }
        libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_SETMASK, &empty_set, std::ptr::null::<u64>(), 8);
        // If mpsync dies the child dies with it (the guard takes care of the rest of the group). This fires
        // when the forking *thread* exits, which is why spawn runs on the main thread.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        // mpsync may have died before the line above: then no signal would ever come.
        if libc::getppid() != parent {
            libc::_exit(1);
        }
    }
    Ok(())
}

/// A tiny process that outlives mpsync to kill the child's whole group when mpsync dies, even by SIGKILL
/// (a parent-death signal reaches only the direct child). It holds the read end of a pipe whose only write
/// ends are mpsync's and, until exec, a just-forked child's: end-of-file means mpsync is gone.
///
/// Messages are 4-byte native-endian i32: a positive value arms it with that process group, 0 disarms it.
struct Guard {
    pid: Pid,
    /// The write end (close-on-exec, so commands never hold it).
    pipe: OwnedFd,
}

impl Guard {
    fn spawn() -> io::Result<Guard> {
        let (read, write) = pipe2(OFlag::O_CLOEXEC)?;
        // Block every signal across fork, so that the guard cannot run an inherited handler (or die of Ctrl-C)
        // before it has ignored everything.
        let mut previous = SigSet::empty();
        pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), Some(&mut previous))?;
        // SAFETY: the child runs only `guard_main`, which makes async-signal-safe calls and never returns,
        // so it is sound even when other threads exist.
        let forked = unsafe { fork() };
        if let Ok(ForkResult::Child) = forked {
            // SAFETY: we are the freshly forked guard; `read` is the pipe's read end.
            unsafe { guard_main(read.as_raw_fd()) }
        }
        pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&previous), None)?;
        match forked? {
            ForkResult::Parent { child } => Ok(Guard { pid: child, pipe: write }),
            ForkResult::Child => unreachable!("the guard never returns"),
        }
    }

    fn tell(&self, message: i32) {
        if let Err(error) = nix::unistd::write(&self.pipe, &message.to_ne_bytes()) {
            warn!(%error, "cannot reach the guard process");
        }
    }
}

/// The guard's whole life.
///
/// # Safety
/// Call only in a freshly forked child: it closes every file descriptor but `read_fd` and never returns.
/// It makes only async-signal-safe calls and does not allocate.
unsafe fn guard_main(read_fd: RawFd) -> ! {
    // SAFETY: plain system calls on integers and stack buffers; nothing allocates or takes a lock.
    unsafe {
        for signal in 1..=libc::SIGRTMAX() {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::signal(signal, libc::SIG_IGN);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        // Out of mpsync's group: neither Ctrl-C nor a kill of mpsync's group reaches it.
        libc::setpgid(0, 0);

        let pipe = libc::fcntl(read_fd, libc::F_DUPFD, 3);
        if pipe < 0 {
            libc::_exit(1);
        }
        // Not mpsync's stdout or stderr: a reader waiting for their end-of-file must not wait for the guard.
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                if fd != null {
                    libc::dup2(null, fd);
                }
            }
        }
        close_fds_except(pipe);

        let mut armed: libc::pid_t = 0;
        let mut message = [0u8; 4];
        let mut filled = 0;
        loop {
            let n = libc::read(pipe, message.as_mut_ptr().add(filled).cast(), message.len() - filled);
            if n > 0 {
                filled += n as usize;
                if filled == message.len() {
                    armed = i32::from_ne_bytes(message).max(0);
                    filled = 0;
                }
            } else if n < 0 && Errno::last() == Errno::EINTR {
                continue;
            } else {
                break;
            }
        }
        if armed > 0 {
            libc::kill(-armed, libc::SIGKILL);
        }
        libc::_exit(0)
    }
}

/// Close every descriptor from 3 up, except `keep` (which is at least 3).
///
/// # Safety
/// Only in a process that owns no descriptor it will use later (the freshly forked guard).
unsafe fn close_fds_except(keep: RawFd) {
    // SAFETY: closing descriptors nobody in this process will use; close_range(2) or close(2) only.
    unsafe {
        let close_range = |first: RawFd, last: libc::c_uint| {
            libc::syscall(libc::SYS_close_range, first as libc::c_uint, last, 0) == 0
        };
        let below = keep == 3 || close_range(3, (keep - 1) as libc::c_uint);
        let above = close_range(keep + 1, libc::c_uint::MAX);
        if !(below && above) {
            // Before Linux 5.9: one close per possible descriptor.
            let mut limit: libc::rlimit = std::mem::zeroed();
            let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
                limit.rlim_cur.min(1 << 20) as RawFd
            } else {
                1 << 16
            };
            for fd in 3..max {
                if fd != keep {
                    libc::close(fd);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::sync::{Mutex, MutexGuard};

    use nix::sys::signal::{SaFlags, SigAction, kill, sigaction};

    use super::*;

    /// A supervisor installs process-wide signal handling and reaps: one at a time in this process.
    static SERIAL: Mutex<()> = Mutex::new(());

    /// How long any single wait in these tests may take: generous, for a loaded machine.
    const PATIENCE: Duration = Duration::from_secs(60);

    /// Set in a re-executed test binary to run `helper_process` in a process of its own.
    const HELPER_MODE: &str = "MPSYNC_SUPERVISE_HELPER";
    const HELPER_DIR: &str = "MPSYNC_SUPERVISE_HELPER_DIR";

    fn serial() -> MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap()
    }

    fn start() -> Supervisor {
        Supervisor::start(SuperviseOptions::default()).unwrap()
    }

    /// `sh -c SCRIPT ARGS...`: inside the script the first argument is `$0`.
    fn sh(script: &str, args: &[&Path]) -> ChildCommand {
        let mut argv = vec![OsString::from("-c"), OsString::from(script)];
        argv.extend(args.iter().map(|arg| arg.as_os_str().to_owned()));
        ChildCommand { program: "sh".into(), args: argv, env: vec![] }
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
            let path = std::env::temp_dir().join(format!("mpsync-supervise-{name}-{}-{nanos}", std::process::id()));
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }

        fn join(&self, file: &str) -> PathBuf {
            self.0.join(file)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    async fn event(supervisor: &mut Supervisor) -> Event {
        tokio::time::timeout(PATIENCE, supervisor.next_event()).await.expect("no event within the patience")
    }

    /// Wait for a file holding one whole line (a pid, or "ready") and return that line.
    async fn line_in(path: &Path) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(text) = fs::read_to_string(path)
                && let Some(line) = text.strip_suffix('\n')
            {
                return line.to_owned();
            }
            assert!(Instant::now() < deadline, "{} was never written", path.display());
            tokio::time::sleep(POLL).await;
        }
    }

    async fn pid_in(path: &Path) -> i32 {
        line_in(path).await.trim().parse().unwrap()
    }

    /// Dead: no such process, or a zombie nobody reaps (this machine's init does not).
    fn gone(pid: i32) -> bool {
        ProcStat::read(pid).is_none_or(|stat| stat.is_zombie())
    }

    async fn until_gone(pid: i32) -> bool {
        let deadline = Instant::now() + PATIENCE;
        while !gone(pid) {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
        true
    }

    #[test]
    fn exit_code_passes_through() {
        let _serial = serial();
        let mut supervisor = start();
        runtime().block_on(async {
            supervisor.spawn(&sh("exit 7", &[])).unwrap();
            assert!(supervisor.running());
            assert_eq!(event(&mut supervisor).await, Event::ChildExited(ChildExit::Exited(7)));
            assert!(!supervisor.running());
            supervisor.finish(Signal::SIGTERM, Duration::from_secs(10)).await;
        });
    }

    #[test]
    fn death_by_signal_is_reported_as_128_plus_n() {
        let _serial = serial();
        let mut supervisor = start();
        runtime().block_on(async {
            supervisor.spawn(&sh("kill -9 $$", &[])).unwrap();
            let Event::ChildExited(exit) = event(&mut supervisor).await else { panic!("expected the child's exit") };
            assert_eq!(exit, ChildExit::Signaled(9));
            assert_eq!(exit.code(), 137);
            supervisor.finish(Signal::SIGTERM, Duration::from_secs(10)).await;
        });
    }

    #[test]
    fn missing_command_is_not_found() {
        let _serial = serial();
        let mut supervisor = start();
        for program in ["/nonexistent-mpsync-dir/command", "mpsync-no-such-command-anywhere"] {
            let command = ChildCommand { program: program.into(), args: vec![], env: vec![] };
            let result = supervisor.spawn(&command);
            assert!(matches!(result, Err(SpawnError::NotFound(ref name)) if name == program), "{result:?}");
            assert!(!supervisor.running());
        }
    }

    #[test]
    fn non_executable_file_is_not_executable() {
        let _serial = serial();
        let dir = TempDir::new("noexec");
        let script = dir.join("script");
        fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        let mut supervisor = start();
        for program in [script, dir.0.clone()] {
            let command = ChildCommand { program: program.clone().into(), args: vec![], env: vec![] };
            let result = supervisor.spawn(&command);
            assert!(matches!(result, Err(SpawnError::NotExecutable(..))), "{}: {result:?}", program.display());
            assert!(!supervisor.running());
        }
    }

    #[test]
    fn child_gets_its_argv_and_extra_environment() {
        let _serial = serial();
        let dir = TempDir::new("argv");
        let out = dir.join("out");
        let mut supervisor = start();
        runtime().block_on(async {
            let mut command = sh(r#"printf '%s|%s|%s\n' "$1" "$MPSYNC_TEST_EXTRA" "$HOME" > "$0""#, &[&out]);
            command.args.push("two words; $(no shell)".into());
            command.env.push(("MPSYNC_TEST_EXTRA".into(), "extra".into()));
            supervisor.spawn(&command).unwrap();
            assert_eq!(event(&mut supervisor).await, Event::ChildExited(ChildExit::Exited(0)));
            supervisor.finish(Signal::SIGTERM, Duration::from_secs(10)).await;
        });
        let home = std::env::var("HOME").unwrap_or_default();
        assert_eq!(fs::read_to_string(&out).unwrap(), format!("two words; $(no shell)|extra|{home}\n"));
    }

    #[test]
    fn child_runs_in_its_own_process_group() {
        let _serial = serial();
        let dir = TempDir::new("pgid");
        let out = dir.join("pgid");
        let mut supervisor = start();
        let pid = runtime().block_on(async {
            let pid = supervisor.spawn(&sh(r#"cut -d' ' -f5 /proc/$$/stat > "$0""#, &[&out])).unwrap();
            assert_eq!(event(&mut supervisor).await, Event::ChildExited(ChildExit::Exited(0)));
            supervisor.finish(Signal::SIGTERM, Duration::from_secs(10)).await;
            pid
        });
        let pgid: i32 = fs::read_to_string(&out).unwrap().trim().parse().unwrap();
        assert_eq!(pgid, pid as i32);
        assert_ne!(pgid, getpgrp().as_raw());
    }

    #[test]
    fn child_starts_with_no_blocked_or_ignored_signals() {
        let _serial = serial();
        let dir = TempDir::new("sigmask");
        let status = dir.join("status");
        let mut supervisor = start();
        runtime().block_on(async {
            // As under nohup: SIGHUP ignored; and a signal blocked in the spawning thread.
            let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
            // SAFETY: SIG_IGN installs no handler code.
            let previous = unsafe { sigaction(Signal::SIGHUP, &ignore) }.unwrap();
            let mut blocked = SigSet::empty();
            blocked.add(Signal::SIGUSR2);
            let mut mask = SigSet::empty();
            pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&blocked), Some(&mut mask)).unwrap();
            let spawned = supervisor.spawn(&sh(r#"exec cat /proc/self/status > "$0""#, &[&status]));
            pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&mask), None).unwrap();
            // SAFETY: puts back the action that was there (the supervisor's handler).
            unsafe { sigaction(Signal::SIGHUP, &previous) }.unwrap();
            spawned.unwrap();
            assert_eq!(event(&mut supervisor).await, Event::ChildExited(ChildExit::Exited(0)));
            supervisor.finish(Signal::SIGTERM, Duration::from_secs(10)).await;
        });
        let status = fs::read_to_string(&status).unwrap();
        for field in ["SigBlk:", "SigIgn:"] {
            let line = status.lines().find(|line| line.starts_with(field)).unwrap();
            let value = line[field.len()..].trim();
            assert!(value.chars().all(|digit| digit == '0'), "the child has {line}");
        }
    }

    #[test]
    fn signals_are_reported_and_forwarding_reaches_the_group() {
        let _serial = serial();
        let dir = TempDir::new("forward");
        let ready = dir.join("ready");
        let mut supervisor = start();
        runtime().block_on(async {
            let script = r#"trap 'exit 42' USR1; echo ready > "$0"; while :; do sleep 0.1; done"#;
            supervisor.spawn(&sh(script, &[&ready])).unwrap();
            line_in(&ready).await;
            kill(getpid(), Signal::SIGUSR1).unwrap();
            assert_eq!(event(&mut supervisor).await, Event::Signal(Signal::SIGUSR1));
            supervisor.forward(Signal::SIGUSR1);
            assert_eq!(event(&mut supervisor).await, Event::ChildExited(ChildExit::Exited(42)));
            supervisor.finish(Signal::SIGTERM, Duration::from_secs(10)).await;
        });
    }

    #[test]
    fn stop_kills_the_whole_group() {
        let _serial = serial();
        let dir = TempDir::new("stop");
        let sleep_pid = dir.join("sleep.pid");
        let mut supervisor = start();
        runtime().block_on(async {
            let pid = supervisor.spawn(&sh(r#"sleep 1000 & echo $! > "$0"; wait"#, &[&sleep_pid])).unwrap();
            let sleep = pid_in(&sleep_pid).await;
            assert!(!gone(sleep));
            let stop = supervisor.stop(Signal::SIGTERM, Duration::from_secs(10));
            let exit = tokio::time::timeout(PATIENCE, stop).await.unwrap();
            assert_eq!(exit, ChildExit::Signaled(libc::SIGTERM));
            assert!(!supervisor.running());
            assert!(gone(sleep), "the background sleep survived stop");
            assert!(!group_alive(Pid::from_raw(pid as i32)));
            // A stopped supervisor runs a command again (elect, after re-election).
            supervisor.spawn(&sh("exit 3", &[])).unwrap();
            assert_eq!(event(&mut supervisor).await, Event::ChildExited(ChildExit::Exited(3)));
            supervisor.finish(Signal::SIGTERM, Duration::from_secs(10)).await;
        });
    }

    #[test]
    fn stop_sigkills_a_child_that_ignores_the_kill_signal() {
        let _serial = serial();
        let dir = TempDir::new("stubborn");
        let ready = dir.join("ready");
        let mut supervisor = start();
        runtime().block_on(async {
            let script = r#"trap '' TERM; echo ready > "$0"; exec sleep 1000"#;
            supervisor.spawn(&sh(script, &[&ready])).unwrap();
            line_in(&ready).await;
            let grace = Duration::from_millis(300);
            let started = Instant::now();
            let exit = tokio::time::timeout(PATIENCE, supervisor.stop(Signal::SIGTERM, grace)).await.unwrap();
            assert_eq!(exit, ChildExit::Signaled(libc::SIGKILL));
            assert!(started.elapsed() >= grace, "SIGKILL came before the grace period was over");
            assert!(!supervisor.running());
        });
    }

    #[test]
    fn signals_that_arrive_during_stop_are_kept_for_next_event() {
        let _serial = serial();
        let dir = TempDir::new("queue");
        let ready = dir.join("ready");
        let mut supervisor = start();
        runtime().block_on(async {
            let script = r#"trap '' TERM; echo ready > "$0"; exec sleep 1000"#;
            supervisor.spawn(&sh(script, &[&ready])).unwrap();
            line_in(&ready).await;
            kill(getpid(), Signal::SIGUSR2).unwrap();
            let stop = supervisor.stop(Signal::SIGTERM, Duration::from_millis(300));
            assert_eq!(tokio::time::timeout(PATIENCE, stop).await.unwrap(), ChildExit::Signaled(libc::SIGKILL));
            assert_eq!(event(&mut supervisor).await, Event::Signal(Signal::SIGUSR2));
        });
    }

    #[test]
    fn stop_after_the_child_exited_returns_that_exit_once() {
        let _serial = serial();
        let mut supervisor = start();
        runtime().block_on(async {
            let pid = supervisor.spawn(&sh("exit 3", &[])).unwrap();
            assert!(until_gone(pid as i32).await);
            let stop = supervisor.stop(Signal::SIGTERM, Duration::from_secs(10));
            assert_eq!(tokio::time::timeout(PATIENCE, stop).await.unwrap(), ChildExit::Exited(3));
            let again = tokio::time::timeout(Duration::from_millis(300), supervisor.next_event()).await;
            assert!(again.is_err(), "the exit was reported twice: {again:?}");
        });
    }

    #[test]
    fn finish_kills_what_the_child_left_behind() {
        let _serial = serial();
        let dir = TempDir::new("finish");
        let sleep_pid = dir.join("sleep.pid");
        let mut supervisor = start();
        runtime().block_on(async {
            supervisor.spawn(&sh(r#"sleep 1000 & echo $! > "$0""#, &[&sleep_pid])).unwrap();
            assert_eq!(event(&mut supervisor).await, Event::ChildExited(ChildExit::Exited(0)));
            let sleep = pid_in(&sleep_pid).await;
            assert!(!gone(sleep), "the background sleep should outlive its shell");
            let finish = supervisor.finish(Signal::SIGTERM, Duration::from_secs(10));
            tokio::time::timeout(PATIENCE, finish).await.unwrap();
            assert!(gone(sleep), "the background sleep survived finish");
            assert!(!supervisor.running());
            supervisor.spawn(&sh("exit 4", &[])).unwrap();
            assert_eq!(event(&mut supervisor).await, Event::ChildExited(ChildExit::Exited(4)));
            supervisor.finish(Signal::SIGTERM, Duration::from_secs(10)).await;
        });
    }

    #[test]
    fn guard_runs_in_a_group_of_its_own_and_exits_with_the_supervisor() {
        let _serial = serial();
        let supervisor = start();
        let guard = supervisor.guard_pid().expect("a guard process");
        runtime().block_on(async {
            let deadline = Instant::now() + PATIENCE;
            while ProcStat::read(guard).map(|stat| stat.pgrp) != Some(guard) {
                assert!(Instant::now() < deadline, "the guard never left mpsync's process group");
                tokio::time::sleep(POLL).await;
            }
        });
        drop(supervisor);
        // Drop closed the pipe and reaped the guard.
        assert!(ProcStat::read(guard).is_none(), "the guard outlived its supervisor");
    }

    /// Run `helper_process` in a new process (the test binary again), with its stderr in DIR/helper.log.
    fn helper(mode: &str, dir: &TempDir) -> std::process::Child {
        let log = fs::File::create(dir.join("helper.log")).unwrap();
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "supervise::tests::helper_process", "--test-threads=1", "--nocapture"])
            .env(HELPER_MODE, mode)
            .env(HELPER_DIR, &dir.0)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    #[test]
    #[ignore = "not a test: run by other tests in a process of its own"]
    fn helper_process() {
        let (Ok(mode), Some(dir)) = (std::env::var(HELPER_MODE), std::env::var_os(HELPER_DIR)) else {
            return;
        };
        let dir = PathBuf::from(dir);
        match mode.as_str() {
            "guard" => helper_guarded_until_killed(&dir),
            "subreaper" => helper_subreaper(),
            "terminal" => helper_terminal(&dir),
            _ => panic!("unknown helper mode {mode}"),
        }
    }

    /// Start a child whose background worker only the guard can reach, then wait to be SIGKILLed.
    fn helper_guarded_until_killed(dir: &Path) {
        let mut supervisor = start();
        fs::write(dir.join("guard.pid"), format!("{}\n", supervisor.guard_pid().unwrap())).unwrap();
        runtime().block_on(async {
            let script = r#"echo $$ > "$0/sh.pid"; sleep 1000 & echo $! > "$0/sleep.pid"; wait"#;
            supervisor.spawn(&sh(script, &[dir])).unwrap();
            loop {
                supervisor.next_event().await;
            }
        });
    }

    #[test]
    fn guard_kills_the_group_when_the_supervisor_is_sigkilled() {
        let _serial = serial();
        let dir = TempDir::new("guard");
        let mut helper = helper("guard", &dir);
        let log = dir.join("helper.log");
        runtime().block_on(async {
            let (sleep, sh, guard) = tokio::select! {
                pids = async {
                    (pid_in(&dir.join("sleep.pid")).await, pid_in(&dir.join("sh.pid")).await,
                     pid_in(&dir.join("guard.pid")).await)
                } => pids,
                () = async {
                    while helper.try_wait().unwrap().is_none() {
                        tokio::time::sleep(POLL).await;
                    }
                } => panic!("the helper ended early:\n{}", fs::read_to_string(&log).unwrap_or_default()),
            };
            assert!(!gone(sleep) && !gone(sh) && !gone(guard));
            kill(Pid::from_raw(helper.id() as i32), Signal::SIGKILL).unwrap();
            helper.wait().unwrap();
            let results = [until_gone(sleep).await, until_gone(sh).await, until_gone(guard).await];
            for pid in [sleep, sh, guard] {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            assert_eq!(results, [true; 3], "(sleep, sh, guard) gone after the supervisor's SIGKILL");
        });
    }

    /// As a subreaper: an orphan of the child exits before it, another outlives it; the child's status is its
    /// own, and nothing is left unreaped.
    fn helper_subreaper() {
        let mut supervisor = Supervisor::start(SuperviseOptions { subreaper: true }).unwrap();
        runtime().block_on(async {
            let script = "(sh -c 'exit 5' &); (sleep 1000 &); sleep 0.5; exit 3";
            let pid = supervisor.spawn(&sh(script, &[])).unwrap();
            assert_eq!(event(&mut supervisor).await, Event::ChildExited(ChildExit::Exited(3)));
            let finish = supervisor.finish(Signal::SIGTERM, Duration::from_secs(10));
            tokio::time::timeout(PATIENCE, finish).await.unwrap();
            // Reaped, not merely dead: kill(2) no longer finds even a zombie of the group.
            assert_eq!(killpg(Pid::from_raw(pid as i32), None), Err(Errno::ESRCH));
            assert!(supervisor.guard_pid().is_some(), "the guard was reaped as an orphan");
        });
    }

    #[test]
    fn orphans_are_reaped_without_stealing_the_main_childs_status() {
        let _serial = serial();
        let dir = TempDir::new("subreaper");
        let status = helper("subreaper", &dir).wait().unwrap();
        let log = fs::read_to_string(dir.join("helper.log")).unwrap_or_default();
        assert!(status.success(), "the subreaper helper failed ({status}):\n{log}");
        assert!(log.contains("1 passed"), "the helper did not run:\n{log}");
    }

    /// In the foreground of a terminal: the child gets the terminal, Ctrl-C reaches only the child, and the
    /// terminal comes back afterwards.
    fn helper_terminal(dir: &Path) {
        let mut supervisor = start();
        assert!(supervisor.terminal.is_some(), "not in the foreground of a terminal");
        runtime().block_on(async {
            let foreground = dir.join("foreground");
            let pid = supervisor.spawn(&sh(r#"cut -d' ' -f5,8 /proc/$$/stat > "$0""#, &[&foreground])).unwrap();
            assert_eq!(event(&mut supervisor).await, Event::ChildExited(ChildExit::Exited(0)));
            supervisor.finish(Signal::SIGTERM, Duration::from_secs(10)).await;
            // pgrp and the terminal's foreground group, as the child saw them.
            let seen = fs::read_to_string(&foreground).unwrap();
            assert_eq!(seen.trim(), format!("{pid} {pid}"));
            assert_eq!(tcgetpgrp(io::stdin()), Ok(getpgrp()), "the terminal was not taken back");

            // The test writes Ctrl-C to the terminal once the child is ready.
            let script = r#"echo ready > "$0/ready"; exec sleep 1000"#;
            supervisor.spawn(&sh(script, &[dir])).unwrap();
            let exit = event(&mut supervisor).await;
            assert_eq!(exit, Event::ChildExited(ChildExit::Signaled(libc::SIGINT)));
            let more = tokio::time::timeout(Duration::from_millis(300), supervisor.next_event()).await;
            assert!(more.is_err(), "Ctrl-C reached mpsync too: {more:?}");
            supervisor.finish(Signal::SIGTERM, Duration::from_secs(10)).await;
            assert_eq!(tcgetpgrp(io::stdin()), Ok(getpgrp()), "the terminal was not taken back");
        });
    }

    #[test]
    fn interactive_child_owns_the_terminal_and_ctrl_c_reaches_only_it() {
        let _serial = serial();
        let dir = TempDir::new("terminal");
        let log = dir.join("helper.log");
        let binary = std::env::current_exe().unwrap();
        let command = format!(
            "'{}' --ignored --exact supervise::tests::helper_process --test-threads=1 --nocapture",
            binary.display()
        );
        // script(1) runs the helper on a new pseudo-terminal, in its foreground, and copies our stdin to it.
        let spawned = std::process::Command::new("script")
            .args(["-qefc", &command, "/dev/null"])
            .env(HELPER_MODE, "terminal")
            .env(HELPER_DIR, &dir.0)
            .stdin(std::process::Stdio::piped())
            .stdout(fs::File::create(&log).unwrap())
            .stderr(std::process::Stdio::null())
            .spawn();
        let Ok(mut script) = spawned else {
            eprintln!("script(1) is not installed: skipping the terminal test");
            return;
        };
        let outcome = runtime().block_on(async {
            let wait = async {
                line_in(&dir.join("ready")).await;
                use std::io::Write;
                let stdin = script.stdin.as_mut().unwrap();
                stdin.write_all(b"\x03").unwrap();
                stdin.flush().unwrap();
                loop {
                    if let Some(status) = script.try_wait().unwrap() {
                        return status;
                    }
                    tokio::time::sleep(POLL).await;
                }
            };
            tokio::time::timeout(PATIENCE * 2, wait).await
        });
        let _ = script.kill();
        let _ = script.wait();
        let log = fs::read_to_string(&log).unwrap_or_default();
        let status = outcome.unwrap_or_else(|_| panic!("the terminal helper hung:\n{log}"));
        assert!(status.success(), "the terminal helper failed ({status}):\n{log}");
        assert!(log.contains("1 passed"), "the helper did not run:\n{log}");
    }
}
