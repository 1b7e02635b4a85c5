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
//!   the child's exit itself, and `next_event` will not report that exit again.

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
const FORWARDED: [i32; 7] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
];

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
        let reap_orphans =
            getpid().as_raw() == 1 || nix::sys::prctl::get_child_subreaper().unwrap_or(false);

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
        Err(error) => warn!(pgid = pgid.as_raw(), ?signal, %error, "cannot signal the child's group"),
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
    let Ok(entries) = std::fs::read_dir("/proc") else { return true };
    let mut zombies = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else {
            continue;
        };
        let Some(stat) = ProcStat::read(pid) else { continue };
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
            libc::EACCES
            | libc::EPERM
            | libc::ENOEXEC
            | libc::EISDIR
            | libc::ENOTDIR
            | libc::ELOOP
            | libc::ETXTBSY,
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
        // Neither mpsync's handlers, nor signals ignored when mpsync started (nohup), nor its mask.
        for signal in 1..=libc::SIGRTMAX() {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::signal(signal, libc::SIG_DFL);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
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
