//! The child: spawn, process group, terminal, job control, signals, reaping, stop-with-grace.
//! This module knows nothing of leases; the run loop makes every decision that needs one.
//!
//! # How the run loop uses it
//!
//! - [`Supervisor::start`] once, before the tokio runtime is built (the process must still be single-threaded:
//!   it forks the guard process). The runtime must be a `current_thread` one with time enabled, and `start`,
//!   `spawn`, `next_notice`, `stop` and `finish` must all run on that (main) thread: see [`Supervisor::spawn`].
//! - [`Supervisor::next_notice`] is cancel-safe: use it in `select!`, in every phase (waiting for the lease
//!   too: that is where mpsync's own job-control stop happens). It yields:
//!   - [`Notice::Signal`]: TERM, INT, HUP, QUIT, USR1, USR2 or WINCH came (and was not inherited as
//!     ignored). While a child runs, pass it on with [`Supervisor::forward`].
//!   - [`Notice::ChildExited`], exactly once per child: call [`Supervisor::finish`] (stops what the child
//!     left, hands the terminal back, disarms the guard) before releasing the lease or spawning again, and
//!     end with `Exit::from(exit)`: a child that died of SIGINT or SIGQUIT makes mpsync die of it too
//!     ([`Exit::reraise_signal`]).
//!   - [`Notice::Resumed`]: mpsync got SIGCONT while it has a child. If the child's job was stopped by job
//!     control ([`Resume::held_for`]), it is still stopped. Check that the lease is still held (its renew
//!     deadline has not passed) **before** anything else, then call [`Supervisor::continue_child`] if it
//!     is, or [`Supervisor::stop`] if it is not: a job held stopped is SIGKILLed without ever running again
//!     (as [`Supervisor::kill_stopped_child`] does), one mpsync never stopped (mpsync alone was frozen by
//!     `kill -STOP`: it ran on) gets the kill signal and the grace. The supervisor never continues a job
//!     it stopped on its own.
//! - [`Supervisor::next_event`] is the same without [`Notice::Resumed`] (it continues the child at once, with
//!   no lease check): for the run loop as it was before job control, until it moves to `next_notice`.
//! - To stop a running child (lease lost, or a signal that should end it), call [`Supervisor::stop`]: it returns
//!   the child's exit itself, and `next_notice` will not report that exit again. Signals that arrive during
//!   `stop` or `finish` are queued for the following `next_notice` calls. Await `stop`, `finish` and
//!   `kill_stopped_child` to the end (not inside a `select!` that may drop them).
//!
//! # Job control
//!
//! As sudo and script(1) do it: on SIGTSTP, SIGTTIN or SIGTTOU to mpsync, or when the child stops on its own
//! with one of them (Ctrl-Z while it has the terminal, SIGTTIN from the background), the supervisor stops the
//! child's whole job (its group and every descendant of mpsync), takes the terminal back, then stops mpsync
//! itself with the same signal, all inside `next_notice` and before the run loop runs again: stopping needs
//! no lease decision (a stopped child cannot break the lease), so it happens at once, and nothing else
//! happens in mpsync meanwhile. Resuming does need one, so it is a [`Notice::Resumed`] the run loop answers.
//! When the child stops for terminal access and mpsync's group has the foreground (after `mpsync ... &`
//! then `fg`), the terminal is handed to the child and it is continued, as sudo does: mpsync never stopped.
//! Where mpsync cannot stop (as PID 1, in an orphaned process group, or with the stop signal inherited as
//! ignored), a stop request is not carried out, as the kernel discards it for an orphaned group. A child
//! stopped by a plain SIGSTOP (a debugger, `kill -STOP`) is not job control: mpsync keeps running and
//! renewing, since whoever stopped the child may continue it directly.
//!
//! # Reaping
//!
//! The main child and the guard are reaped by pid. As PID 1 or subreaper (with `--subreaper`, or for as long
//! as mpsync ends or stops a job: see `Supervisor::adopt_from_now`), every other zombie child is reaped too,
//! except what mpsync itself runs with `std::process::Command` (a kubeconfig exec credential plugin, run by
//! kube for a token refresh on a thread of the runtime's blocking pool), whose waiter must
//! get its status: the children of mpsync's threads other than the one that spawns the child and the main
//! thread, which adopts orphans (see `Supervisor::runs_itself`). Not the children in mpsync's own process
//! group: a process of the job can move itself into it (it is in mpsync's session). The other way, a
//! separate PID-1 reaper process as tini splits it, would need a second process to forward signals and
//! mirror the exit (the "die of the same signal" rule included).
//!
//! # When mpsync dies
//!
//! If mpsync dies, even by SIGKILL, the guard process kills the child's whole group; dropping the
//! `Supervisor` (or exiting) without `stop`/`finish` does the same. See `guard.rs` for what it cannot do.

mod guard;
mod procfs;
pub mod signals;
mod terminal;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, kill, killpg, pthread_sigmask};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::{Pid, getpgid, getpgrp, getpid, getsid, gettid, setpgid};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::exit::Exit;
pub use guard::GUARD_NAME;
use guard::Guard;
use procfs::{ProcStat, Snapshot, ThreadChildren};
use signals::SignalReceiver;
use terminal::Terminal;

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

/// How mpsync ends after its child: with the child's code, or (see [`Exit::reraise_signal`]) of the same
/// signal.
impl From<ChildExit> for Exit {
    fn from(exit: ChildExit) -> Exit {
        match exit {
            ChildExit::Exited(code) => Exit::Child(code),
            ChildExit::Signaled(signal) => Exit::ChildSignaled(signal),
        }
    }
}

/// What the run loop hears from the supervisor (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    /// mpsync received one of TERM, INT, HUP, QUIT, USR1, USR2, WINCH.
    Signal(Signal),
    /// The main child exited and was reaped.
    ChildExited(ChildExit),
    /// mpsync was continued (SIGCONT) while it has a child: check the lease, then `continue_child` or
    /// `stop`.
    Resumed(Resume),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    /// How long the child's job has been stopped by job control, if it was: it is still stopped, and waits
    /// for `continue_child`, or `stop` (which kills it as `kill_stopped_child` does). `None`: mpsync was continued without having stopped the
    /// job (after a `kill -STOP` of mpsync, which it cannot see, the child may have run on meanwhile).
    pub held_for: Option<Duration>,
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

/// Why the command did not start. The messages follow bash's.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("{0}: command not found")]
    NotFound(String),
    /// Found, but it cannot run: permission denied, a directory, not a program, or a script whose
    /// interpreter is missing (`#!/nonexistent`: "bad interpreter: /nonexistent: No such file or directory").
    #[error("{0}: {reason}", reason = describe(.1))]
    NotExecutable(String, std::io::Error),
    #[error("{0}: cannot start ({1})")]
    Other(String, std::io::Error),
}

impl SpawnError {
    /// The exit code, as bash and POSIX have it: 127 not found, 126 found but it cannot run (a missing
    /// interpreter included: the command itself was found), 125 anything else.
    pub fn exit(&self) -> Exit {
        match self {
            SpawnError::NotFound(_) => Exit::NotFound,
            SpawnError::NotExecutable(..) => Exit::NotExecutable,
            SpawnError::Other(..) => Exit::Failure,
        }
    }
}

/// An error as bash prints it: "Permission denied", not "Permission denied (os error 13)".
fn describe(error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(code) => Errno::from_raw(code).desc().to_string(),
        None => error.to_string(),
    }
}

/// The signals mpsync passes on to the child's group without ending it (see `forward`); with `ENDING`,
/// the signals mpsync passes on to the run loop (and, through it, to the child).
const PASSED_ON: [Signal; 3] = [Signal::SIGUSR1, Signal::SIGUSR2, Signal::SIGWINCH];

/// Job-control stop requests to mpsync.
const JOB_STOPS: [Signal; 3] = [Signal::SIGTSTP, Signal::SIGTTIN, Signal::SIGTTOU];

/// Signals that ask the child to end: a stopped child must be continued to act on them. All but HUP (a
/// reload, passed on) also end mpsync.
pub(crate) const ENDING: [Signal; 12] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    // The other catchable signals whose default action ends a process (a `timeout -s ALRM`, a ulimit's
    // XCPU, a container's STOPSIGNAL such as PWR): unhandled, they would kill mpsync at once and leave the
    // lease held by a dead process until it expires (found by review, helper-113). ABRT too, as `timeout
    // -s ABRT` and systemd's watchdog send it (helper-119; a real abort() still ends mpsync: it raises
    // ABRT again with the default action). Not the faults a process causes itself (SEGV, BUS, FPE, ILL,
    // SYS, TRAP), nor XFSZ (see `ignore_file_size_signal`).
    Signal::SIGABRT,
    Signal::SIGALRM,
    Signal::SIGVTALRM,
    Signal::SIGPROF,
    Signal::SIGXCPU,
    Signal::SIGPWR,
    Signal::SIGIO,
    Signal::SIGSTKFLT,
];

/// SIGXFSZ is raised by the kernel on the writer itself, for mpsync's own write past RLIMIT_FSIZE (its log
/// on stderr, a record of `--backend file`): no request to stop, and taken as one it ended the job and cut
/// the side-car's drain short (its own drain log line was "a second signal"; found by review, helper-116).
/// Ignored: the write fails with EFBIG instead (a log line lost; the file store's error says why). The
/// child gets the default action back (see `prepare_child`).
pub(crate) fn ignore_file_size_signal() {
    // SAFETY: SIG_IGN installs no handler code.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
}

/// How often the job is looked at while waiting for it to stop or to end.
const POLL: Duration = Duration::from_millis(20);

/// Of the looks for the main child's children outside its group, every this many reads those seen in it
/// again (see `note_left_group`).
const IN_GROUP_RECHECK: u32 = 10;

/// How long the job's processes get to stop on their own (a full-screen program puts the terminal back
/// first) before SIGSTOP stops them.
const STOP_WAIT: Duration = Duration::from_millis(500);

/// How long to wait for processes to disappear after SIGKILL before saying so and giving up on them:
/// SIGKILL is all there is (a process in uninterruptible sleep takes its time).
const AFTER_KILL: Duration = Duration::from_secs(5);

/// How many looks at /proc `freeze_job` takes at most before it signals the job as far as it is stopped,
/// and the pause between them.
const FREEZE_ROUNDS: usize = 16;
const FREEZE_NAP: Duration = Duration::from_millis(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopCause {
    /// mpsync received SIGTSTP, SIGTTIN or SIGTTOU.
    Signal,
    /// The main child stopped (WUNTRACED).
    Child,
}

pub struct Supervisor {
    signals: SignalReceiver,
    /// Notices not yet returned by `next_notice`.
    notices: VecDeque<Notice>,
    /// A job-control stop to carry out, at the next `next_notice`.
    stop_request: Option<(Signal, StopCause)>,
    /// Whether job-control stops are dropped, not carried out (see `drop_stop_requests`).
    stops_dropped: bool,
    /// Reap adopted orphans too (PID 1 or subreaper).
    reap_orphans: bool,
    /// mpsync became a child subreaper only to end (or stop) the job (see `adopt_from_now`), not with
    /// `--subreaper` or as PID 1: it is one no more once the job is let go.
    adopting_to_end: bool,
    /// An ending signal (not a HUP) was passed on to the job: it is ending, and a `continue_child` (`kill %1`
    /// on a stopped job sends TERM, then CONT) leaves mpsync a subreaper until it is gone.
    ending: bool,
    /// /proc is mounted with `hidepid` and mpsync lacks CAP_SYS_PTRACE: it may hide members of the child's
    /// group (see `procfs::hides_processes`), so only kill(2) can tell that the group is empty.
    proc_hides: bool,
    /// /proc is another PID namespace's: its pids are not the ones mpsync's system calls take.
    proc_foreign: bool,
    /// Whether the warning that /proc could not be read whole was given (once per run).
    warned_unreadable_proc: bool,
    /// Whether a job-control stop not carried out was logged (once per run at info).
    said_no_stop: bool,
    /// The members of the job (pid, start time) seen when it was stopped to be ended (`end_job`): they stay
    /// members, found with what they start, when their parent dies of the signal and they leave mpsync's
    /// tree (`sh -c 'timeout 77 worker'`: timeout shuts down on TERM after sh died of it). Until the job
    /// is let go.
    kept: RefCell<Vec<(i32, u64)>>,
    /// Those of `kept` told to the guard: found by review (helper-73), a freeze or death of mpsync during
    /// the grace left a process that had left the group and mpsync's tree to run past the lease.
    told_kept: RefCell<std::collections::HashSet<(i32, u64)>>,
    /// Whether the warning that the guard cannot remember them all was given (once per job).
    warned_kept: std::cell::Cell<bool>,
    /// The main child: spawned and not yet exited.
    main: Option<Pid>,
    /// The main child once it has exited: its zombie, left unreaped until the job is let go (`release_group`),
    /// so that its pid, the job's group id, cannot be handed to another process while mpsync still signals
    /// that group. (Once reaped with nothing else left in the group, the id is free: a stranger that took
    /// it and made a group of its own would get the signals meant for the job.)
    leader: Option<Pid>,
    /// The main child's process group, from spawn until `stop`/`finish` saw the job gone.
    group: Option<Pid>,
    /// Since when the child's job has been stopped by job control, waiting for the run loop's decision.
    held: Option<std::time::Instant>,
    /// The last main child's exit, once reported.
    last_exit: Option<ChildExit>,
    /// Main children given up on after SIGKILL (uninterruptible sleep): reaped quietly when they go.
    abandoned: Vec<Pid>,
    guard: Option<Guard>,
    /// Since when no guard could be started again, and when that was last said (see `tend`).
    unguarded: Option<(std::time::Instant, std::time::Instant)>,
    /// The child's deadline, as the guard knows it (see `set_deadline`).
    deadline: Option<std::time::Instant>,
    /// The controlling terminal, if mpsync has one.
    terminal: Option<Terminal>,
    /// Signals that were ignored when mpsync started: they stay ignored and are not forwarded.
    ignored_at_start: SigSet,
    me: Pid,
    own_pgrp: Pid,
    /// The thread that spawned the main child (see `job_tasks`).
    spawner: i32,
    /// The processes (pid, start time) mpsync adopted as a subreaper that the guard was told of (see
    /// `note_adopted`), until the job is let go.
    told_adopted: HashMap<i32, u64>,
    /// The main child's children outside its group that the guard was told of (see `note_left_group`),
    /// while they are its children.
    told_left: HashMap<i32, u64>,
    /// The main child's children last seen in its group (true once seen there on two looks in a row), and
    /// how many looks `note_left_group` made.
    in_group: HashMap<i32, bool>,
    left_looks: u32,
    /// mpsync's children when it started (pid, start time): inherited across an `exec` (`helper & exec
    /// mpsync ...`), never adopted, never the job's; every guard is given them, and spares them.
    inherited: Vec<(i32, u64)>,
    /// Whether the warning that the guard cannot remember every adopted process was given (once a job).
    warned_adopted: bool,
}

impl Supervisor {
    /// Call before the tokio runtime starts, while the process is single-threaded: forks the guard
    /// process, starts the signal thread, becomes a subreaper if asked.
    pub fn start(options: SuperviseOptions) -> std::io::Result<Supervisor> {
        // First of all, before the guard's fork: a parent may have blocked what mpsync must hear (a Python
        // parent's pthread_sigmask before execv). A blocked SIGTERM would leave mpsync deaf to stop requests,
        // a blocked SIGCHLD would leave the child's exit unnoticed until some other wake-up.
        let handled: Vec<Signal> = ENDING
            .iter()
            .chain(&PASSED_ON)
            .chain(&JOB_STOPS)
            .copied()
            .chain([Signal::SIGCHLD, Signal::SIGCONT])
            .collect();
        pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&signals::set_of(&handled)), None)?;
        ignore_file_size_signal();
        // Ignored SIGCHLD would make the kernel reap the children itself, and their status would be lost.
        if signals::ignored(&[Signal::SIGCHLD]).contains(Signal::SIGCHLD) {
            // SAFETY: SIG_DFL installs no handler code.
            unsafe { nix::sys::signal::signal(Signal::SIGCHLD, SigHandler::SigDfl) }?;
        }
        // What the parent left ignored stays ignored (nohup: SIGHUP; a shell without job control: SIGINT and
        // SIGQUIT for `cmd &`), and is not forwarded: mpsync is as immune as the parent meant its command to be.
        let requests: Vec<Signal> = ENDING.iter().chain(&PASSED_ON).chain(&JOB_STOPS).copied().collect();
        let ignored_at_start = signals::ignored(&requests);

        if options.subreaper {
            nix::sys::prctl::set_child_subreaper(true)?;
        }
        let me = getpid();
        let reap_orphans = me.as_raw() == 1 || nix::sys::prctl::get_child_subreaper().unwrap_or(false);

        // mpsync's children now were inherited across an `exec`: never the job's, nor the guard's to kill.
        let inherited: Vec<(i32, u64)> = match procfs::children_of_threads(&[me.as_raw()]) {
            ThreadChildren::Listed(children) => {
                children.into_iter().filter_map(|pid| ProcStat::read(pid).map(|p| (pid, p.start))).collect()
            }
            _ => Vec::new(),
        };
        // The guard before the signal thread, while no other thread exists (it would be sound later too).
        let guard = Guard::spawn(&inherited)?;

        let mut listened: Vec<Signal> = requests.iter().copied().filter(|s| !ignored_at_start.contains(*s)).collect();
        listened.extend([Signal::SIGCHLD, Signal::SIGCONT]);
        let signals = SignalReceiver::new(&listened)?;
        signals::replay_early();
        // mpsync's own terminal access must never stop it: it never reads the terminal, its log lines must
        // reach a `stty tostop` terminal from the background, and it takes the foreground back from the
        // background. Blocked here (the main thread, and the threads it starts later), not ignored: a
        // SIGTTIN or SIGTTOU *sent* to mpsync still reaches the signal thread as a job-control request. With
        // SIGTSTP and SIGCONT (a SIGCONT continues mpsync all the same): the signal thread alone takes the
        // job-control signals, one after the other, so that their handlers count them in the order they came
        // (see `JobControlOrder`; taken by two threads at once, a SIGCONT's count could come after the next
        // SIGTSTP's: mpsync then took a Ctrl-Z for one already continued, and did not stop).
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&signals::set_of(&signals::JOB_CONTROL)), None)?;

        let terminal = Terminal::open();
        let proc_foreign = procfs::of_another_pid_namespace(me);
        if proc_foreign {
            warn!(
                "/proc shows another PID namespace than mpsync's (unshare --pid without --mount-proc, nsenter --mount?): the \
                 child's job cannot be found in it; mount a /proc of this namespace"
            );
        }
        debug!(
            guard = guard.pid.as_raw(),
            reap_orphans,
            terminal = terminal.is_some(),
            ignored = ?ignored_at_start.iter().collect::<Vec<_>>(),
            "supervisor started"
        );
        Ok(Supervisor {
            signals,
            notices: VecDeque::new(),
            stop_request: None,
            stops_dropped: false,
            reap_orphans,
            adopting_to_end: false,
            ending: false,
            proc_hides: procfs::hides_processes(),
            proc_foreign,
            warned_unreadable_proc: false,
            said_no_stop: false,
            kept: RefCell::new(Vec::new()),
            told_kept: RefCell::new(std::collections::HashSet::new()),
            warned_kept: std::cell::Cell::new(false),
            main: None,
            leader: None,
            group: None,
            held: None,
            last_exit: None,
            abandoned: Vec::new(),
            guard: Some(guard),
            unguarded: None,
            deadline: None,
            terminal,
            ignored_at_start,
            me,
            own_pgrp: getpgrp(),
            spawner: gettid().as_raw(),
            told_adopted: HashMap::new(),
            told_left: HashMap::new(),
            in_group: HashMap::new(),
            left_looks: 0,
            inherited,
            warned_adopted: false,
        })
    }

    /// The next thing the run loop must hear of (see the module docs). Reaps on the way, and carries out
    /// job-control stops. Cancel-safe.
    pub async fn next_notice(&mut self) -> Notice {
        loop {
            self.reap();
            if let Some(notice) = self.notices.pop_front() {
                match notice {
                    Notice::ChildExited(exit) => self.last_exit = Some(exit),
                    // Continued during `stop` or `finish`: there is no child to decide about any more.
                    Notice::Resumed(_) if self.group.is_none() => continue,
                    _ => {}
                }
                return notice;
            }
            if let Some((signal, cause)) = self.stop_request.take() {
                match self.stops_dropped {
                    true => debug!(%signal, "job-control stop dropped: mpsync is ending"),
                    false => self.suspend(signal, cause),
                }
                continue;
            }
            let signal = self.signals.recv().await;
            self.take_signal(signal);
        }
    }

    /// Whether a stop signal has come that `next_notice` may not report yet (see
    /// `SignalReceiver::stop_on_the_way`): it reports it soon.
    pub fn stop_on_the_way(&self) -> bool {
        self.signals.stop_on_the_way()
    }

    /// Start the child in its own process group, and in the terminal's foreground when mpsync's group has
    /// it (see `terminal.rs` for when).
    ///
    /// Call it on the thread that will outlive the child (the main thread, under a `current_thread` runtime):
    /// the child's parent-death signal fires when the *thread* that forked it exits, not the process.
    ///
    /// `deadline` is the last moment the child may run (see `set_deadline`). The guard has it before the
    /// child exists, so a child started late (mpsync frozen between its last look at the lease and the
    /// fork) is killed the moment it arms the guard, as its command starts.
    pub fn spawn(&mut self, command: &ChildCommand, deadline: Option<Instant>) -> Result<u32, SpawnError> {
        let name = command.program.to_string_lossy().into_owned();
        if self.running() {
            return Err(SpawnError::Other(name, io::Error::other("a child is already running")));
        }
        if let Some(pgid) = self.group.take() {
            warn!(pgid = pgid.as_raw(), "the previous child's group was never finished; killing it");
            signal_group(pgid, Signal::SIGKILL);
            self.let_go_of_leader();
        }
        self.held = None;
        self.reap();
        if self.guard.is_none() {
            self.rearm_guard();
        }
        let Some(guard_fd) = self.guard.as_ref().map(|guard| guard.pipe.as_raw_fd()) else {
            return Err(SpawnError::Other(name, io::Error::other("cannot start the guard process")));
        };
        self.deadline = None;
        self.set_deadline(deadline);
        let parent = self.me.as_raw();
        let background_job = self.background_job();
        let tty = match self.terminal.as_mut() {
            Some(terminal) if terminal.may_hand_over(background_job) => {
                terminal.save_modes();
                terminal.raw_fd()
            }
            _ => -1,
        };
        let keep_sighup_ignored = self.ignored_at_start.contains(Signal::SIGHUP);

        let mut child = std::process::Command::new(&command.program);
        child.args(&command.args);
        child.envs(command.env.iter().map(|(key, value)| (key, value)));
        // SAFETY: `prepare_child` makes only async-signal-safe calls on plain integers it captured by value.
        unsafe {
            child.pre_exec(move || prepare_child(parent, tty, guard_fd, keep_sighup_ignored));
        }
        // Only the pid is kept: std's `Child` must never wait, this module reaps.
        let pid = match child.spawn() {
            Ok(child) => child.id(),
            Err(error) => {
                // The child may have taken the terminal and armed the guard before its exec failed: take the
                // terminal back from its dead group, and disarm the guard before its pid can be reused.
                if let Some(terminal) = self.terminal.as_mut().filter(|_| tty >= 0) {
                    terminal.take_back(None, false);
                }
                if let Some(guard) = &self.guard {
                    guard.tell(0);
                }
                self.deadline = None;
                self.reap();
                if let Some((step, error)) = set_up_failure(&error) {
                    let error = match step {
                        // EPIPE: the guard is gone.
                        SetUp::Guard => io::Error::other("the guard process is gone"),
                        step => io::Error::new(error.kind(), format!("{}: {error}", step.what())),
                    };
                    return Err(SpawnError::Other(name, error));
                }
                return Err(spawn_error(name, &command.program, error));
            }
        };
        let pid = Pid::from_raw(pid as i32);
        self.spawner = gettid().as_raw();
        // The child did this itself before exec; doing it here too is the classic belt and braces
        // (it fails with EACCES once the child has exec'd, which is fine).
        let _ = setpgid(pid, pid);
        self.main = Some(pid);
        self.group = Some(pid);
        debug!(pid = pid.as_raw(), program = %name, terminal = tty >= 0, "child started");
        Ok(pid.as_raw() as u32)
    }

    /// mpsync is ending: the job is gone and the lease is being given back. Job-control stops (one asked
    /// for already included) are dropped from now on, not carried out: stopped, mpsync would hold the lease
    /// for a job that no longer exists until someone continues it (found by review, helper-177: Ctrl-Z
    /// during the leftovers' grace stopped mpsync in its release).
    pub fn drop_stop_requests(&mut self) {
        self.stops_dropped = true;
    }

    /// Whether a main child is running (spawned and not yet reaped).
    pub fn running(&self) -> bool {
        self.main.is_some()
    }

    /// Whether the child's job is stopped by job control, waiting for `continue_child` or
    /// `kill_stopped_child`.
    pub fn child_held(&self) -> bool {
        self.held.is_some()
    }

    /// The last moment the child may run: the guard SIGKILLs its group then, whatever mpsync is doing (frozen
    /// by `kill -STOP`, stuck, stopped by job control). Set it after every renewal; `None` for no deadline.
    /// Spawning, finishing or stopping the child clears it.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        let deadline = deadline.map(std::time::Instant::from);
        if self.deadline == deadline {
            return;
        }
        self.deadline = deadline;
        if let Some(guard) = &self.guard {
            guard.deadline(deadline.map_or(0, guard::monotonic_at));
        }
    }

    /// The deadline the guard was last told (see `set_deadline`): it kills the child's job once that has come.
    pub fn guard_deadline(&self) -> Option<std::time::Instant> {
        self.deadline
    }

    /// The guard process's pid, while it lives (for tests and diagnostics).
    pub fn guard_pid(&self) -> Option<i32> {
        self.guard.as_ref().map(|guard| guard.pid.as_raw())
    }

    /// Pass `signal` on to the child.
    ///
    /// USR1, USR2 and WINCH go to the child's process group, as the terminal sends its signals to a job.
    /// TERM, INT, HUP and QUIT ask the job to end: they go to the whole job, the child's group and every
    /// process of mpsync's tree that left it (`timeout`, `setsid`, `set -m` make groups of their own), as
    /// systemd's control-group kill does, since none of it may run on once the lease is released. The job
    /// is stopped before them and SIGCONT follows them (`end_job`), so that a stopped process acts on them;
    /// except while job control holds the job stopped (mpsync was stopped too): then the run loop's answer
    /// to `Notice::Resumed`, which is coming, decides whether it runs again.
    pub fn forward(&mut self, signal: Signal) {
        if let Some(pgid) = self.group {
            debug!(pgid = pgid.as_raw(), ?signal, "forwarding signal to the child");
            if ENDING.contains(&signal) {
                // Not for a HUP, which the run loop passes on as the child's reload (found by review,
                // helper-190: a subreaper from then until the end, mpsync took what an inherited helper left
                // for the job's, and killed it).
                if signal != Signal::SIGHUP {
                    self.ending = true;
                    self.adopt_from_now();
                }
                self.end_job(pgid, signal, self.held.is_none());
            } else {
                self.signal_child(pgid, signal);
            }
        }
    }

    /// After `Notice::Resumed`, with the lease still held: give the terminal back to the child if mpsync's
    /// group has the foreground (and may hand it over), and continue the child's job if mpsync stopped it.
    pub fn continue_child(&mut self) {
        let Some(pgid) = self.group else { return };
        let held = self.held.take();
        let background_job = self.background_job();
        if let Some(terminal) = self.terminal.as_mut()
            && terminal.may_hand_over(background_job)
        {
            terminal.hand_to(pgid);
        }
        // Only a job mpsync stopped is continued: one stopped by someone else (`kill -STOP`, a debugger) is
        // theirs to continue, not a stray SIGCONT's to mpsync (found by review, helper-157).
        match held {
            Some(since) => {
                info!(pgid = pgid.as_raw(), stopped_for = ?since.elapsed(), "continuing the child's job");
                self.signal_job(pgid, Signal::SIGCONT);
            }
            None => {
                debug!(pgid = pgid.as_raw(), "continued, with the child's job not stopped by mpsync: left as it is")
            }
        }
        // The job runs on: mpsync, a subreaper only to stop it, is none again (found by review, helper-190: on
        // after `fg` until the job's end, it took what an inherited helper left for the job's; `suspend` has
        // done so already, before mpsync stopped). What it adopted meanwhile stays its child, and the job's
        // (`keep_stopped_job`). Not while the job is ending on a signal passed
        // on (found by review, helper-192: `kill %1` sends TERM, then CONT, and the TERM trap's clean-up,
        // init's then, ran on past the release).
        if !self.ending {
            self.stop_adopting();
        }
    }

    /// After `Notice::Resumed`, with the lease gone: SIGKILL the child's whole job without letting it run
    /// again, reap, take the terminal back, disarm the guard. Returns the main child's exit (which
    /// `next_notice` then does not report), as `stop` does.
    pub async fn kill_stopped_child(&mut self) -> ChildExit {
        if let Some(pgid) = self.group {
            self.adopt_from_now();
            self.keep_told_left();
            self.held = None;
            warn!(pgid = pgid.as_raw(), "killing the child's job without continuing it");
            self.kill_job(pgid).await;
            self.release_group();
        }
        self.take_reported_exit()
    }

    /// Stop the child: `kill_signal` to its whole job (stopped first, then continued: `end_job`), wait up to
    /// `grace`, then SIGKILL; reap.
    /// Signals that arrive meanwhile are kept for `next_notice`. A job held stopped by job control is killed
    /// at once instead, as `kill_stopped_child` does: it is never continued without a lease.
    ///
    /// The job is the child's group and every descendant of mpsync (including, as PID 1 or subreaper, every
    /// process it adopted): within `grace` it waits for all of them, so that `sh -c 'worker & wait'` lets the
    /// worker finish its shutdown too, and `sh -c 'timeout 77 sleep 77'` (timeout makes a group of its own)
    /// leaves nothing behind. Returns the main child's exit (which `next_notice` then does not report); if
    /// the child had already exited, that exit; if no child was ever spawned, `Exited(0)`. Afterwards the
    /// terminal is mpsync's again, the guard is disarmed and `spawn` may be called again.
    pub async fn stop(&mut self, kill_signal: Signal, grace: Duration) -> ChildExit {
        if self.held.is_some() {
            // Held stopped by job control: mpsync was stopped, nothing was renewed. A loss noticed before the
            // `Resumed` notice must not let the job run during the grace period.
            return self.kill_stopped_child().await;
        }
        if let Some(pgid) = self.group {
            debug!(pgid = pgid.as_raw(), ?kill_signal, ?grace, "stopping the child's job");
            self.adopt_from_now();
            self.keep_told_left();
            self.note_escapes();
            self.end_job(pgid, kill_signal, true);
            if !self.wait_for(Until::JobGone(pgid), Instant::now() + grace).await {
                self.kill_job(pgid).await;
            }
            self.release_group();
        }
        self.take_reported_exit()
    }

    /// After the main child exited: stop what is left of its job (`kill_signal`, `grace`, SIGKILL): its group,
    /// its children the guard was told had left the group (`note_left_group`), and as PID 1 or subreaper the
    /// processes it left to mpsync, each with what it started; then hand the terminal back and disarm the
    /// guard. Call it before releasing the lease.
    ///
    /// Cheap when nothing is left (the usual case). Called while the child still runs, it stops the child as
    /// `stop` would, and `next_notice` then reports the child's exit.
    pub async fn finish(&mut self, kill_signal: Signal, grace: Duration) {
        if self.running() {
            warn!("finish called while the child runs; stopping it");
            let exit = self.stop(kill_signal, grace).await;
            self.notices.push_back(Notice::ChildExited(exit));
            return;
        }
        let Some(pgid) = self.group else { return };
        if self.held.is_some() {
            self.kill_stopped_child().await;
            return;
        }
        self.note_adopted();
        self.keep_told_left();
        if self.job_alive(pgid) {
            debug!(pgid = pgid.as_raw(), ?kill_signal, "the child left processes behind; stopping them");
            // Only now: a subreaper, mpsync would look at all of /proc for the job's end, where the usual
            // end of a job (nothing left) takes a few system calls (see `job_alive`).
            self.adopt_from_now();
            self.end_job(pgid, kill_signal, true);
            if !self.wait_for(Until::JobGone(pgid), Instant::now() + grace).await {
                self.kill_job(pgid).await;
            }
        }
        self.release_group();
    }

    /// What the guard was told had left the child's group (its children in other groups) is the job's, as it
    /// would be to the guard should mpsync die now: ended with the rest, not left running past the release
    /// (found by review, helper-177: `setsid worker &` ran on beside the next holder's child), however the
    /// job ends: also when the child died while job control held the job stopped (helper-183: the worker,
    /// init's child by then, was continued by the kernel and ran beside the next holder's child). Counted
    /// by pid and start time: one gone since is no process of the job.
    fn keep_told_left(&mut self) {
        let told: Vec<_> = self.told_left.iter().map(|(&pid, &start)| (pid, start)).collect();
        for process in told {
            self.keep(process);
        }
    }

    /// From here on, what the job's processes leave when they exit is mpsync's, not init's: mpsync becomes a
    /// child subreaper, as `--subreaper` makes it, the moment it begins to end the job (`stop`, `forward` of
    /// an ending signal, `finish` with something left, `kill_stopped_child`) or to stop it (`suspend`). A
    /// process the job starts meanwhile in a session of its own (a TERM trap's `setsid cleanup &`, a TSTP
    /// handler's worker) is then adopted when its parent exits: the looks at the job find it, it is ended
    /// before the release, the guard is told of it (`note_adopted`), and at the deadline the guard kills
    /// it with everything below mpsync, also when mpsync was frozen before it could look (found by review,
    /// helper-187: such a clean-up, init's child once the main child exited, ran on past the release,
    /// beside the next holder's child). Until the job is let go (`stop_adopting`), or for a stop until the
    /// job is seen stopped (`suspend`). It reaches the processes that exist already on Linux 4.11 or later
    /// only (the kernel marks every descendant then: propagate_has_child_subreaper); before, none of the
    /// job's, all descendants of a child forked before.
    fn adopt_from_now(&mut self) {
        if self.reap_orphans || self.group.is_none() {
            return;
        }
        match nix::sys::prctl::set_child_subreaper(true) {
            Ok(()) => {
                self.reap_orphans = true;
                self.adopting_to_end = true;
                debug!("mpsync is a child subreaper until the child's job is gone");
            }
            Err(error) => warn!(
                %error,
                "cannot become a child subreaper: what the child's job starts in a session of its own as it ends \
                 may run on"
            ),
        }
    }

    /// The job is gone: mpsync, a subreaper only to end it (`adopt_from_now`), is none any more, as before
    /// the job, so that `elect`'s next term runs as its first did. The zombies it adopted are reaped first;
    /// what it adopted that SIGKILL could not end (`kill_job` gave up on it) stays its child, reaped
    /// quietly once it goes (`abandoned`).
    fn stop_adopting(&mut self) {
        if !self.adopting_to_end {
            return;
        }
        if let Err(error) = nix::sys::prctl::set_child_subreaper(false) {
            warn!(%error, "cannot stop being a child subreaper; going on as one");
            return;
        }
        self.reap();
        let known = self.known_children();
        if let ThreadChildren::Listed(children) = procfs::children_of_threads(&self.job_tasks()) {
            self.abandoned.extend(children.into_iter().filter(|pid| !known.contains(pid)).map(Pid::from_raw));
        }
        self.adopting_to_end = false;
        self.reap_orphans = false;
        debug!("mpsync is no longer a child subreaper");
    }

    /// The main child's exit as reported by `stop`-like calls: taken from the queue if it is there, so that
    /// `next_notice` does not report it again.
    fn take_reported_exit(&mut self) -> ChildExit {
        let reaped = self.notices.iter().position(|notice| matches!(notice, Notice::ChildExited(_)));
        if let Some(Notice::ChildExited(exit)) = reaped.and_then(|index| self.notices.remove(index)) {
            self.last_exit = Some(exit);
        }
        self.last_exit.unwrap_or(ChildExit::Exited(0))
    }

    /// SIGKILL the job until it is gone, reaping the main child; bounded, so that a child that left its group,
    /// or a process in uninterruptible sleep, cannot hang mpsync.
    async fn kill_job(&mut self, pgid: Pid) {
        warn!(pgid = pgid.as_raw(), "killing the child's job");
        let deadline = Instant::now() + AFTER_KILL;
        loop {
            // Again and again: a member that was forking when the first SIGKILL came may have a new child.
            self.end_job(pgid, Signal::SIGKILL, false);
            let slice = (Instant::now() + Duration::from_millis(200)).min(deadline);
            if self.wait_for(Until::JobGone(pgid), slice).await {
                return;
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        if let Some(pid) = self.main.take() {
            error!(pid = pid.as_raw(), "the child is still not dead after SIGKILL; giving up on it");
            self.abandoned.push(pid);
            self.last_exit = Some(ChildExit::Signaled(libc::SIGKILL));
        } else {
            warn!(pgid = pgid.as_raw(), "processes of the child's job survive SIGKILL; giving up on them");
        }
    }

    /// The job is gone: take the terminal back and disarm the guard.
    fn release_group(&mut self) {
        let pgid = self.group.take();
        self.held = None;
        self.kept.borrow_mut().clear();
        self.told_kept.borrow_mut().clear();
        self.warned_kept.set(false);
        if let Some(terminal) = self.terminal.as_mut() {
            terminal.take_back(pgid, false);
        }
        if let Some(guard) = &self.guard {
            guard.tell(0);
        }
        self.told_adopted.clear();
        self.told_left.clear();
        self.in_group.clear();
        self.warned_adopted = false;
        self.deadline = None;
        self.let_go_of_leader();
        self.stop_adopting();
        self.ending = false;
    }

    /// Whether mpsync adopts orphans as a subreaper (not as PID 1: its death ends the whole namespace),
    /// so that `note_adopted` has something to do while a child runs.
    pub fn adopts(&self) -> bool {
        self.reap_orphans && self.me.as_raw() != 1 && self.group.is_some()
    }

    /// Whether the guard is to hear, while the child runs, of processes it would not find through the
    /// child's group should mpsync be SIGKILLed (see `note_escapes`). Not as PID 1: its death ends the
    /// whole namespace.
    pub fn watches_escapes(&self) -> bool {
        self.guard.is_some() && self.me.as_raw() != 1 && self.group.is_some()
    }

    /// Whether `tend` has anything to do while the child runs.
    pub fn tends(&self) -> bool {
        self.watches_escapes() || (self.guard.is_none() && self.group.is_some())
    }

    /// While a child runs, every `ADOPTION_LOOK`: a guard started again if there is none (one died, and
    /// another could not be started then: found by review, rv242, a child then ran unguarded for the rest of
    /// its life, and outlived a SIGKILL of mpsync beside the next holder), and what it would not find
    /// through the child's group told to it (`note_escapes`).
    pub fn tend(&mut self) {
        if self.guard.is_none() && self.group.is_some() {
            self.rearm_guard();
        }
        if self.watches_escapes() {
            self.note_escapes();
        }
    }

    /// Tell the guard of what it would not find through the child's group should mpsync be SIGKILLed: what
    /// mpsync adopted (`note_adopted`), and the main child's children outside its group
    /// (`note_left_group`).
    pub fn note_escapes(&mut self) {
        self.note_adopted();
        self.note_left_group();
    }

    /// Tell the guard of the main child's children that left its group (`setsid`, `timeout`, `set -m`):
    /// should mpsync be SIGKILLed, the main child dies at once of its parent-death signal and they are
    /// handed to init, where the guard would not find them through the group (found by review,
    /// helper-132: `sh -c 'setsid worker & wait'` ran on beside the next holder). The guard kills them
    /// with what they started. One that left within `ADOPTION_LOOK` of mpsync's death escapes (a tenth of the
    /// looks read every thread's children: one started by another thread than the main one, within a second).
    fn note_left_group(&mut self) {
        let (Some(guard), Some(main), Some(group)) = (&self.guard, self.main, self.group) else { return };
        if self.me.as_raw() == 1 {
            return;
        }
        self.left_looks = self.left_looks.wrapping_add(1);
        // A child seen in the group is looked at again every tenth look only: a process leaves its group
        // as it starts, as a rule (`setsid worker`), and thousands of children read every 100 ms cost a
        // share of a core (found by review, helper-135). So are the children of threads other than the main
        // one (where shells and most programs fork): a child of a thousand threads cost a thousand reads a
        // look, 8% of a core (found by review, helper-137).
        let recheck = self.left_looks.is_multiple_of(IN_GROUP_RECHECK);
        let Some(children) = procfs::children_of_process(main.as_raw(), recheck) else { return };
        if recheck {
            let listed: std::collections::HashSet<i32> = children.iter().copied().collect();
            self.told_left.retain(|pid, _| listed.contains(pid));
            self.in_group.retain(|pid, _| listed.contains(pid));
        }
        for pid in children {
            // Not on the first look that sees it in the group: that look may fall between its fork and its
            // `setsid` (the first look comes as the child starts, as its `setsid worker &` forks: found by
            // review, helper-137, the worker then went untold for a second).
            if self.told_left.contains_key(&pid) || (!recheck && self.in_group.get(&pid) == Some(&true)) {
                continue;
            }
            // One in the group is found through it; if it leaves the group later, a later look tells.
            let Some(process) = ProcStat::read(pid) else { continue };
            if process.pgrp == group.as_raw() {
                let seen_before = self.in_group.contains_key(&pid);
                self.in_group.insert(pid, seen_before);
            } else if guard.adopted(pid, process.start) {
                self.in_group.remove(&pid);
                self.told_left.insert(pid, process.start);
                debug!(pid, "the guard knows of a process that left the child's group");
            }
        }
        // The guard remembers `MAX_ADOPTED` processes in all (found by review, helper-135: 4200 `setsid sleep &`
        // were all "known", and 104 ran on after a SIGKILL of mpsync, with no word).
        if self.told_left.len() + self.told_adopted.len() > guard::MAX_ADOPTED && !self.warned_adopted {
            self.warned_adopted = true;
            warn!(
                told = self.told_left.len() + self.told_adopted.len(),
                "more processes outside the child's group than the guard can remember ({}): should mpsync be \
                 killed, the others run on",
                guard::MAX_ADOPTED
            );
        }
    }

    /// As a subreaper, while a child runs: tell the guard of every process mpsync adopted since it last
    /// looked (a daemon's double fork, a worker whose parent exited), so that they go with the job if
    /// mpsync is killed (SIGKILL): mpsync's children are handed to init with its death, where the guard
    /// would not find them through the child's group. Called every `ADOPTION_LOOK` by the run loop while
    /// the child runs, and at every look while mpsync waits for the job to end (the main child's exit
    /// hands its orphans to mpsync); a process adopted within that much of mpsync's death escapes.
    pub fn note_adopted(&mut self) {
        if !self.adopts() {
            return;
        }
        let Some(guard) = &self.guard else { return };
        let ThreadChildren::Listed(children) = procfs::children_of_threads(&self.job_tasks()) else { return };
        let not_adopted = [self.main, self.leader].map(|pid| pid.map(Pid::as_raw));
        let children: std::collections::HashSet<i32> = children.into_iter().collect();
        self.told_adopted.retain(|pid, _| children.contains(pid));
        for &pid in &children {
            // Only what is new is read: the look runs every 20 ms while mpsync waits for the job to end.
            if not_adopted.contains(&Some(pid)) || pid == guard.pid.as_raw() || self.told_adopted.contains_key(&pid) {
                continue;
            }
            let Some(process) = ProcStat::read(pid) else { continue };
            if self.inherited.contains(&(pid, process.start)) {
                continue;
            }
            if guard.adopted(pid, process.start) {
                self.told_adopted.insert(pid, process.start);
                debug!(pid, "the guard knows of an adopted process");
            }
        }
        if self.told_adopted.len() > guard::MAX_ADOPTED && !self.warned_adopted {
            self.warned_adopted = true;
            warn!(
                adopted = self.told_adopted.len(),
                "more processes adopted than the guard can remember ({}): should mpsync be killed, the others \
                 run on",
                guard::MAX_ADOPTED
            );
        }
    }

    /// Reap the main child's zombie: the job's group id may go to another process from now on.
    fn let_go_of_leader(&mut self) {
        if let Some(pid) = self.leader.take() {
            let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
        }
    }

    /// A shell without job control started mpsync as `cmd &`: SIGINT came ignored. Such a job is not the
    /// terminal's, even when its group is the foreground one.
    fn background_job(&self) -> bool {
        self.ignored_at_start.contains(Signal::SIGINT)
    }

    /// The processes of the child's job, other than what mpsync runs itself, the guard, and what mpsync
    /// inherited across an `exec` (`helper & exec mpsync ...`: no part of the child's job, and never
    /// signalled at its end), each with what it started (see `Snapshot::job`).
    fn job(&self, snapshot: &Snapshot, pgid: Pid) -> Vec<ProcStat> {
        let mut skip = self.runs_itself(snapshot);
        skip.extend(self.guard.iter().map(|guard| guard.pid.as_raw()));
        let inherited = |process: &&(i32, u64)| snapshot.get(process.0).is_some_and(|p| p.start == process.1);
        skip.extend(self.inherited.iter().filter(inherited).map(|(pid, _)| *pid));
        snapshot.job(Some(pgid.as_raw()), self.me.as_raw(), &skip, &self.kept.borrow())
    }

    /// The threads whose children may be the job's: the one that spawned the main child (a process the
    /// job makes mpsync's child, with clone(CLONE_PARENT), is that thread's too), and the main thread,
    /// which adopts orphans as PID 1 or subreaper (the kernel hands them to the first live thread).
    fn job_tasks(&self) -> [i32; 2] {
        [self.spawner, self.me.as_raw()]
    }

    /// What mpsync runs itself, which is not the job's: its children in `snapshot` that are not the job
    /// threads' (see `job_tasks`), so its other threads' (a kubeconfig exec credential plugin, always run on
    /// a thread of the runtime's blocking pool: see `backend::exec`). A process of the job stays a job
    /// thread's child until mpsync reaps it, so one the snapshot shows as mpsync's child is listed when the
    /// threads' children are read after it. Not the group a process is in: a process of the job can move
    /// itself into mpsync's own group (it is in mpsync's session), and a plugin can leave it. Where the
    /// kernel cannot say whose thread's child a process is (no CONFIG_PROC_CHILDREN), mpsync's children in
    /// its own group: a process the job makes mpsync's child that moves into mpsync's group then escapes.
    /// Where the files cannot be read (out of descriptors), nothing: all is taken for the job's.
    fn runs_itself(&self, snapshot: &Snapshot) -> Vec<i32> {
        self.runs_itself_by(snapshot, &procfs::children_of_threads(&self.job_tasks())).unwrap_or_default()
    }

    /// `runs_itself` from the job threads' children read after `snapshot`; `None` if they were unreadable.
    fn runs_itself_by(&self, snapshot: &Snapshot, threads: &ThreadChildren) -> Option<Vec<i32>> {
        let mine = snapshot.children_of(self.me.as_raw());
        // The exec credential plugins, in groups of their own; none while one is being started (it is then
        // taken for the job's, the safe side).
        let plugins = crate::backend::plugins().unwrap_or_default();
        match threads {
            ThreadChildren::Listed(job) => {
                Some(mine.filter(|child| !job.contains(&child.pid)).map(|c| c.pid).collect())
            }
            ThreadChildren::NoFile => Some(
                mine.filter(|child| child.pgrp == self.own_pgrp.as_raw() || plugins.contains(&child.pid))
                    .map(|c| c.pid)
                    .collect(),
            ),
            ThreadChildren::Unreadable => None,
        }
    }

    /// Whether anything of the job still runs (or is stopped). If /proc shows no member of the group at
    /// all (hidepid) but kill(2) finds it, believe kill(2).
    fn job_alive(&mut self, pgid: Pid) -> bool {
        // Cheaply, when the group is gone altogether (the main child's zombie, kept until the job is let go,
        // usually keeps it): with the main child gone its other descendants have left mpsync's tree (unless
        // mpsync adopts them).
        let ended_untouched = self.main.is_none() && !self.reap_orphans && self.kept.borrow().is_empty();
        if ended_untouched && killpg(pgid, None) == Err(Errno::ESRCH) {
            return false;
        }
        // Cheaply too in the usual end of a job: the main child was the last of its group. No process but
        // its kept zombie (and the guard) has the group's id, asked of the kernel with getpgid(2): one
        // system call a process, where the snapshot reads a file with four (3.6 ms for 266 processes, on
        // the handoff's path). With no member left, nothing is found through one either. The walk's other
        // start is mpsync's own children: the job's threads' may be none but the guard and the zombie (a
        // member can make its sibling mpsync's child, with clone(CLONE_PARENT), then leave the group, or
        // join mpsync's); the other threads' are what mpsync runs itself (see `runs_itself`). And none is
        // kept or abandoned, nor adopted (neither PID 1 nor a subreaper). What the snapshot would
        // conclude, without it.
        if ended_untouched
            && !self.proc_hides
            && !self.proc_foreign
            && self.abandoned.is_empty()
            && self.leader.is_some()
        {
            let except = self.known_children();
            if let ThreadChildren::Listed(children) = procfs::children_of_threads(&self.job_tasks())
                && children.iter().all(|child| except.contains(child))
                && procfs::group_has_others(pgid.as_raw(), &except) == Some(false)
            {
                return false;
            }
        }
        let snapshot = Snapshot::take();
        if !self.job(&snapshot, pgid).is_empty() {
            return true;
        }
        if !snapshot.complete() {
            // Not knowing is not gone: the job is stopped and waited for as if it ran, within `grace` and
            // the SIGKILL rounds, and the release waits for that.
            if !self.warned_unreadable_proc {
                self.warned_unreadable_proc = true;
                warn!(
                    pgid = pgid.as_raw(),
                    "cannot read all of /proc (out of file descriptors?): the child's job may still run"
                );
            }
            return true;
        }
        // As PID 1 or subreaper, every live process of mpsync's tree has an ancestor among the job threads'
        // own children (an orphan is adopted by mpsync). One look at /proc misses the child of a fork made
        // after /proc was listed whose parent exited before it was read (a chain that `setsid -f`s the next
        // link and exits): the release then let it run on (found by review, helper-157). The children
        // files, read after the look, show that child or its parent.
        if self.reap_orphans && self.job_threads_have_children() {
            return true;
        }
        if snapshot.shows_group(pgid.as_raw()) && !self.proc_hides {
            return false;
        }
        // /proc hides the group, or may hide members of it (hidepid: a setuid program, a non-dumpable
        // process, a setuid child's zombie). kill(2) finds the kept zombie too, so it can only tell about
        // the others once that is reaped: the id's protection is lost here.
        self.let_go_of_leader();
        // EPERM is a member mpsync may not signal (a setuid program that took every uid), not an empty group.
        killpg(pgid, None) != Err(Errno::ESRCH)
    }

    /// Whether the job threads have a child (zombies included, which the next reap collects) other than
    /// `known_children`.
    fn job_threads_have_children(&self) -> bool {
        let ThreadChildren::Listed(children) = procfs::children_of_threads(&self.job_tasks()) else { return false };
        let except = self.known_children();
        children.iter().any(|child| !except.contains(child))
    }

    /// The children of mpsync's that are not the job's running members: the main child (or its kept
    /// zombie), the guard, the children given up on, and what mpsync inherited across an exec (while it
    /// is the same process: its id with the start time it had).
    fn known_children(&self) -> Vec<i32> {
        let mut known: Vec<i32> = self.leader.iter().chain(self.main.iter()).map(|pid| pid.as_raw()).collect();
        known.extend(self.guard.iter().map(|guard| guard.pid.as_raw()));
        known.extend(self.abandoned.iter().map(|pid| pid.as_raw()));
        let same = |(pid, start): &&(i32, u64)| ProcStat::read(*pid).is_some_and(|stat| stat.start == *start);
        known.extend(self.inherited.iter().filter(same).map(|(pid, _)| *pid));
        known
    }

    /// `signal` to the child's group, and to the main child if it left the group.
    fn signal_child(&self, pgid: Pid, signal: Signal) {
        signal_group(pgid, signal);
        if let Some(main) = self.main
            && ProcStat::read(main.as_raw()).is_some_and(|stat| stat.pgrp != pgid.as_raw())
        {
            let _ = kill(main, signal);
        }
    }

    /// `signal` to the whole job: the child's group, the main child, and every descendant elsewhere.
    fn signal_job(&self, pgid: Pid, signal: Signal) {
        // The job as it is before the signal: once the main child dies of it, its other descendants are
        // reparented out of mpsync's tree (unless mpsync is their subreaper).
        let job = self.job(&Snapshot::take(), pgid);
        self.signal_listed(pgid, &job, signal);
    }

    /// `signal` to the child's group, the main child, and the members of `job` outside the group.
    fn signal_listed(&self, pgid: Pid, job: &[ProcStat], signal: Signal) {
        self.signal_child(pgid, signal);
        let main = self.main.map(Pid::as_raw);
        for process in job.iter().filter(|process| process.pgrp != pgid.as_raw() && Some(process.pid) != main) {
            let _ = kill(Pid::from_raw(process.pid), signal);
        }
    }

    /// End the job with `signal`, all of it: stop it first (`freeze_job`), send `signal` to the job as the
    /// last look at /proc shows it, then SIGCONT, so that a stopped process acts on the signal (unless
    /// `and_continue` is false: job control holds the job stopped). Without the stop, a member outside the
    /// group that forks between mpsync's look and the signal that kills it leaves a child mpsync never saw,
    /// handed to init with its parent's death (unless mpsync is its subreaper), free to run on. What the
    /// look found stays part of the job (`kept`).
    ///
    /// SIGCONT goes to the deepest processes first, each before its parent: a parent that dies of the
    /// signal must not leave a group of its children stopped and orphaned (the kernel would send that
    /// group SIGHUP before our signal reached it), and a parent that waits with WUNTRACED (a `set -m`
    /// shell) finds its children running again, never stopped.
    fn end_job(&self, pgid: Pid, signal: Signal, and_continue: bool) {
        let (job, stopped) = self.freeze_job(pgid);
        // Those outside the group first: should the guard's list fill up, the group's are killed anyway.
        let (outside, members): (Vec<&ProcStat>, Vec<&ProcStat>) =
            job.iter().partition(|process| process.pgrp != pgid.as_raw());
        for process in outside.into_iter().chain(members) {
            let id = (process.pid, process.start);
            self.keep(id);
            self.tell_kept(id);
        }
        self.signal_listed(pgid, &job, signal);
        if !and_continue && signal != Signal::SIGKILL {
            return;
        }
        if signal != Signal::SIGKILL {
            let parents: HashMap<i32, i32> = job.iter().map(|process| (process.pid, process.ppid)).collect();
            let depth = |pid: i32| {
                let (mut depth, mut at) = (0, pid);
                while let Some(&parent) = parents.get(&at) {
                    if depth > parents.len() {
                        break;
                    }
                    (depth, at) = (depth + 1, parent);
                }
                depth
            };
            let mut order: Vec<(usize, i32)> = job.iter().map(|process| (depth(process.pid), process.pid)).collect();
            order.sort_unstable_by(|a, b| b.cmp(a));
            for (_, pid) in order {
                let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
            }
            self.signal_child(pgid, Signal::SIGCONT);
        }
        // Stopped as a member and no longer seen (/proc failed to show it): not signalled, only not left
        // stopped, if it is still the process stopped (its pid may be anyone's once it died).
        for (pid, start) in stopped.iter().filter(|(pid, _)| !job.iter().any(|process| process.pid == *pid)) {
            if ProcStat::read(*pid).is_none_or(|process| process.start == *start) {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGCONT);
            }
        }
    }

    /// Count the process `id` (pid, start time) as part of the job from now on, wherever it goes.
    fn keep(&self, id: (i32, u64)) {
        let mut kept = self.kept.borrow_mut();
        if !kept.contains(&id) {
            kept.push(id);
        }
    }

    /// Tell the guard of a process kept, once, as it counts a process adopted (see `told_kept`): also a
    /// member of the group, which may leave it (setsid) after mpsync's last look, while mpsync is frozen
    /// (found by review, helper-76).
    fn tell_kept(&self, id: (i32, u64)) {
        if self.told_kept.borrow().contains(&id) {
            return;
        }
        // No more than the guard can remember: a burst beyond would fill its pipe (5461 messages), and a
        // deadline sent then would be lost (found by review, helper-75).
        if self.told_kept.borrow().len() + self.told_adopted.len() + self.told_left.len() < guard::MAX_ADOPTED {
            self.told_kept.borrow_mut().insert(id);
            if let Some(guard) = &self.guard {
                guard.adopted(id.0, id.1);
            }
        } else if !self.warned_kept.get() {
            self.warned_kept.set(true);
            warn!(
                "more processes in the job than the guard can remember ({}): should mpsync be frozen or killed \
                 while it ends the job, those that left the child's group run on",
                guard::MAX_ADOPTED
            );
        }
    }

    /// Stop every process of the job with SIGSTOP, in rounds, until two looks at /proc in a row find every
    /// one of them stopped, every thread (or `FREEZE_ROUNDS` looks, for a member that cannot stop:
    /// uninterruptible sleep, another user's): a stopped process neither forks nor exits, so the job holds
    /// still while it is signalled, as the guard's `kill_tree` keeps it. Top down: the child's group first,
    /// then a process only once its parent is seen stopped, so that no parent waiting with WUNTRACED sees a
    /// child stop.
    ///
    /// - Two looks: a look lists /proc before it reads each process's state, so a parent can show stopped
    ///   after a fork whose child the listing missed; a look taken once all showed stopped lists it.
    /// - A process seen running again is sent SIGSTOP again: one stopped in the middle of a fork stops only
    ///   after it, and the kernel continues a group orphaned while stopped (SIGHUP and SIGCONT) when one
    ///   of its members exits.
    /// - A process stopped stays part of the job (`kept`), with what it starts, once its parent dies.
    ///
    /// Returns the job as the last look showed it, and the processes stopped one by one (pid, start).
    fn freeze_job(&self, pgid: Pid) -> (Vec<ProcStat>, Vec<(i32, u64)>) {
        signal_group(pgid, Signal::SIGSTOP);
        let mut stopped: Vec<(i32, u64)> = Vec::new();
        // Members mpsync may not signal (another user's): waiting for them to stop would be in vain.
        let mut unstoppable: Vec<i32> = Vec::new();
        let mut job = Vec::new();
        let mut settled = false;
        let mut still_running: Vec<i32> = Vec::new();
        for round in 0..FREEZE_ROUNDS {
            job = self.job(&Snapshot::take(), pgid);
            let halted: HashMap<i32, bool> =
                job.iter().map(|process| (process.pid, process.is_wholly_stopped())).collect();
            let running: Vec<&ProcStat> =
                job.iter().filter(|process| !halted[&process.pid] && !unstoppable.contains(&process.pid)).collect();
            still_running = running.iter().map(|process| process.pid).collect();
            if running.is_empty() {
                // Nothing to stop, or a second look in a row that finds all stopped.
                if job.is_empty() || settled {
                    break;
                }
                settled = true;
                continue;
            }
            settled = false;
            for process in running {
                // A parent that does not stop (uninterruptible sleep, another user's) holds up its children
                // for half the rounds only.
                let parent_halted = halted.get(&process.ppid).is_none_or(|halted| *halted)
                    || unstoppable.contains(&process.ppid)
                    || round >= FREEZE_ROUNDS / 2;
                if !parent_halted {
                    continue;
                }
                let id = (process.pid, process.start);
                if !stopped.contains(&id) {
                    stopped.push(id);
                    self.keep(id);
                }
                if kill(Pid::from_raw(process.pid), Signal::SIGSTOP) == Err(Errno::EPERM) {
                    unstoppable.push(process.pid);
                }
            }
            std::thread::sleep(FREEZE_NAP);
        }
        if !still_running.is_empty() {
            warn!(
                pids = ?still_running,
                "processes of the child's job did not stop (uninterruptible sleep, or SIGCONT sent to them \
                 again and again): a child one of them forks as the signal lands may escape; --subreaper \
                 closes that"
            );
        }
        (job, stopped)
    }

    /// Carry out a job-control stop: the child's job, the terminal, then mpsync itself. Returns once mpsync
    /// runs again, or at once if it cannot stop. Synchronous on purpose: nothing else in mpsync may happen
    /// between stopping the child and stopping mpsync (it is at most `STOP_WAIT`).
    fn suspend(&mut self, signal: Signal, cause: StopCause) {
        if cause == StopCause::Child {
            if self.main.is_none() || self.held.is_some() {
                return;
            }
            // The child wants the terminal. If mpsync's group has it to give (mpsync was moved to the
            // foreground by `fg`, which does not signal a running job), give it and go on, as sudo does.
            if matches!(signal, Signal::SIGTTIN | Signal::SIGTTOU)
                && let Some(pgid) = self.group
            {
                let background_job = self.background_job();
                if let Some(terminal) = self.terminal.as_mut()
                    && terminal.may_hand_over(background_job)
                    && terminal.hand_to(pgid)
                {
                    debug!(pgid = pgid.as_raw(), "the child stopped for the terminal; it has it now");
                    self.signal_job(pgid, Signal::SIGCONT);
                    return;
                }
            }
        }
        if let Err(reason) = self.can_stop_self(signal) {
            // Said once: a child that stops itself whenever it is continued would fill the log.
            match std::mem::replace(&mut self.said_no_stop, true) {
                false => info!(%signal, reason, "job-control stop not carried out"),
                true => debug!(%signal, reason, "job-control stop not carried out"),
            }
            // A child that stopped itself (`kill -TSTP $$`) where nobody can continue it would stay
            // stopped for good, the lease held for it (found by review, helper-73): it goes on, as the
            // kernel discards such a stop there. (Not one stopped for the terminal: it would stop again.)
            if cause == StopCause::Child
                && signal == Signal::SIGTSTP
                && let Some(pgid) = self.group
            {
                self.signal_job(pgid, Signal::SIGCONT);
            }
            return;
        }
        // A stop asked for by a signal is carried out unless a SIGCONT was delivered after it (however the
        // signal thread ordered them); one the child made, unless a SIGCONT comes from now on.
        let mark = match cause {
            StopCause::Signal => 0,
            StopCause::Child => self.signals.mark(),
        };
        if cause == StopCause::Signal && self.signals.continued_since(mark) {
            info!(%signal, "job control: continued after the stop was asked for; not stopping");
            return;
        }
        if let Some(pgid) = self.group {
            info!(pgid = pgid.as_raw(), %signal, "job control: stopping the child's job, then mpsync");
            self.adopt_from_now();
            self.stop_job(pgid, signal);
            self.held = Some(std::time::Instant::now());
            self.keep_stopped_job(pgid);
            // The child exited instead of stopping (a TSTP handler that starts a worker and exits: found by
            // review, helper-187): mpsync does not stop with the lease held for a child that is gone. The
            // run loop hears of the exit and ends what the child left (stopped with the job) as after any
            // exit.
            self.reap();
            if self.main.is_none() {
                self.held = None;
                info!(pgid = pgid.as_raw(), "the child exited as its job was being stopped: mpsync does not stop");
                return;
            }
            if let Some(terminal) = self.terminal.as_mut() {
                terminal.take_back(Some(pgid), true);
            }
            // The job holds still: it starts nothing, and an orphan mpsync adopted while stopped could only
            // be another's, such as the daemon of a helper inherited across `exec` (found by review,
            // helper-192: taken for the job's after `bg`, and killed with it). What the job is was kept
            // above. Not while the job is ending on a signal passed on (see `continue_child`).
            if !self.ending {
                self.stop_adopting();
            }
        } else {
            info!(%signal, "job control: stopping mpsync");
        }
        if let Some(why) = self.continued_meanwhile(mark) {
            info!(%signal, why, "job control: not stopping");
            self.take_signal(Signal::SIGCONT);
            return;
        }
        stop_self(signal);
        // The kernel discards the stop of a process group orphaned since the look above (the shell that
        // could continue it died meanwhile: an ssh session dropped, a terminal closed): mpsync runs on at
        // once, and no SIGCONT comes. As if continued at once: the run loop then continues the job or, with
        // the lease gone, kills it (found by review, helper-166: the job stayed stopped for good, the lease
        // renewed for it, and a SIGTERM was passed on without the SIGCONT that would let it act).
        let resumed_queued = self.notices.iter().any(|notice| matches!(notice, Notice::Resumed(_)));
        if self.held.is_some() && !resumed_queued && self.can_stop_self(signal).is_err() {
            // (Or it stopped, and the kernel continued it as its group became orphaned: the same answer.)
            info!(%signal, "mpsync's process group is orphaned now (its stop discarded, or ended by the kernel): going on");
            self.notices.push_back(Notice::Resumed(Resume { held_for: self.held.map(|since| since.elapsed()) }));
            return;
        }
        debug!("continued after a job-control stop");
    }

    /// The job is stopped: what it is now, what mpsync adopted as it stopped included (a TSTP handler's
    /// `setsid -f worker`, its parent gone), is kept as the job's and told to the guard, so that a SIGKILL
    /// of mpsync, stopped or after `bg`, kills it (found by review, helper-192: after `bg` mpsync was no
    /// subreaper, never told its guard of the worker, and a SIGKILL left it running beside the next holder's
    /// child). One that runs (the child of a fork that ended as its parent stopped, after the last look)
    /// is stopped too.
    fn keep_stopped_job(&self, pgid: Pid) {
        for process in self.job(&Snapshot::take(), pgid) {
            if !process.is_stopped() {
                let _ = kill(Pid::from_raw(process.pid), Signal::SIGSTOP);
            }
            let id = (process.pid, process.start);
            self.keep(id);
            self.tell_kept(id);
        }
    }

    /// Why mpsync is not to stop now, after it stopped the job, if so: it was continued meanwhile (`kill -TSTP`,
    /// then `kill -CONT`, within the half second the job gets to stop on its own), the last job-control signal
    /// delivered a SIGCONT after `mark` (see `SignalReceiver::continued_since`). Stopped now, mpsync would
    /// wait for a SIGCONT that came already, and stay stopped for good, the lease unrenewed (found by review,
    /// helpers 192, 197 and 200). Or it is to end (SIGTERM meanwhile: found by review, helper-200; it stayed
    /// stopped with the request to end unanswered). The signals passed on meanwhile are taken as at any time.
    fn continued_meanwhile(&mut self, mark: u64) -> Option<&'static str> {
        let mut ending = false;
        while let Some(signal) = self.signals.try_recv() {
            match signal {
                // Their order is the handlers' (see `continued_since`), not the channel's.
                Signal::SIGCONT | Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU => {}
                signal => {
                    ending |= ENDING.contains(&signal) && signal != Signal::SIGHUP;
                    self.take_signal(signal);
                }
            }
        }
        if self.signals.continued_since(mark) {
            self.stop_request = None;
            return Some("continued before mpsync stopped");
        }
        ending.then_some("asked to end before mpsync stopped")
    }

    /// Why mpsync cannot stop itself with `signal`, if it cannot.
    fn can_stop_self(&self, signal: Signal) -> Result<(), &'static str> {
        if self.me.as_raw() == 1 {
            return Err("mpsync is PID 1, which signals from inside its namespace cannot stop");
        }
        if self.ignored_at_start.contains(signal) {
            return Err("the signal was ignored when mpsync started");
        }
        let session = getsid(None).map(Pid::as_raw).unwrap_or(-1);
        if Snapshot::take().group_is_orphaned(self.own_pgrp.as_raw(), session) {
            return Err("mpsync's process group is orphaned: no shell could continue it");
        }
        Ok(())
    }

    /// Stop every process of the job: `signal` first, so that programs that handle it (a full-screen program
    /// puts the terminal back) stop on their own, then SIGSTOP for those that catch or ignore it.
    fn stop_job(&self, pgid: Pid, signal: Signal) {
        self.signal_job(pgid, signal);
        if !self.until_job_stopped(pgid) {
            self.signal_job(pgid, Signal::SIGSTOP);
            // A signal is sent before it is acted on: wait for the stop itself, or mpsync could stop first.
            if !self.until_job_stopped(pgid) {
                warn!(pgid = pgid.as_raw(), "the child's job does not stop (uninterruptible sleep?)");
            }
        }
    }

    /// Wait (at most `STOP_WAIT`) until every process of the job is stopped.
    fn until_job_stopped(&self, pgid: Pid) -> bool {
        let deadline = std::time::Instant::now() + STOP_WAIT;
        loop {
            if self.job(&Snapshot::take(), pgid).iter().all(ProcStat::is_stopped) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Wait until `until` holds or `deadline` passes (false then), reaping and queueing signals meanwhile.
    async fn wait_for(&mut self, until: Until, deadline: Instant) -> bool {
        loop {
            self.reap();
            // Also what the main child starts in a session of its own during the grace (a TERM trap's
            // `setsid cleanup &`): should mpsync be SIGKILLed now, it is handed to init with the main child's
            // death, out of the guard's sight (found by review, helper-135).
            self.note_escapes();
            // And is the job's, ended with it, once its parent exited too (found by review, helper-187: told
            // to the guard, it was left out of the job, and ran on past the release). What mpsync adopts it
            // finds anyway (`adopt_from_now`); this where it cannot become a subreaper.
            self.keep_told_left();
            let done = match until {
                Until::JobGone(pgid) => self.main.is_none() && !self.job_alive(pgid),
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
                signal = self.signals.recv() => self.take_signal(signal),
                () = nap => {}
            }
        }
    }

    fn take_signal(&mut self, signal: Signal) {
        match signal {
            Signal::SIGCHLD => self.reap(),
            Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU => {
                self.stop_request.get_or_insert((signal, StopCause::Signal));
            }
            Signal::SIGCONT => {
                // A child that ended while mpsync was stopped is reported first, whichever of SIGCHLD and SIGCONT the
                // signal thread passed on first: it ran its course before the loss was seen (found by CI: a child
                // that exited while mpsync was frozen past its renew deadline was stopped as after a loss, exit 123).
                self.reap();
                let resumed = Notice::Resumed(Resume { held_for: self.held.map(|since| since.elapsed()) });
                let queued = self.notices.iter().any(|notice| matches!(notice, Notice::Resumed(_)));
                if self.group.is_some() && !queued {
                    self.notices.push_back(resumed);
                }
            }
            signal => self.notices.push_back(Notice::Signal(signal)),
        }
    }

    /// Collect every child that has ended (and notice the main child stopping), without blocking.
    fn reap(&mut self) {
        if let Some(pid) = self.main {
            loop {
                // Its exit is looked at, not reaped (see `leader`); its stops are collected.
                match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT) {
                    Ok(WaitStatus::StillAlive) => {}
                    Ok(status) => {
                        self.exited(pid, status);
                        break;
                    }
                    Err(Errno::EINTR) => continue,
                    Err(Errno::ECHILD) => {
                        // Someone else in this process reaped our child: its status is lost. Never hang on it.
                        warn!(pid = pid.as_raw(), "the child was reaped elsewhere; its exit status is lost");
                        self.main = None;
                        self.notices.push_back(Notice::ChildExited(ChildExit::Exited(255)));
                        break;
                    }
                    Err(error) => {
                        debug!(pid = pid.as_raw(), %error, "waitid failed");
                        break;
                    }
                }
                match waitid(Id::Pid(pid), WaitPidFlag::WSTOPPED | WaitPidFlag::WNOHANG) {
                    Ok(status @ WaitStatus::Stopped(..)) => self.reaped(status),
                    Err(Errno::EINTR) => {}
                    Ok(_) | Err(_) => break,
                }
            }
        }
        if let Some(pid) = self.guard.as_ref().map(|guard| guard.pid) {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG | WaitPidFlag::WUNTRACED)) {
                Ok(WaitStatus::StillAlive) => {}
                // Stopped by someone (`kill -STOP` of its pid): as useless as a dead guard, and never
                // noticed before (found by review, rv223: a SIGKILL of mpsync later left the job running beside
                // the next holder's child). Continued at once; mpsync never stops it.
                Ok(WaitStatus::Stopped(_, signal)) => {
                    warn!(pid = pid.as_raw(), %signal, "the guard process was stopped; continuing it");
                    let _ = kill(pid, Signal::SIGCONT);
                }
                Ok(status) => self.reaped(status),
                Err(Errno::ECHILD) => self.guard_died(),
                Err(error) => debug!(pid = pid.as_raw(), %error, "waitpid failed"),
            }
        }
        self.abandoned.retain(|pid| matches!(waitpid(*pid, Some(WaitPidFlag::WNOHANG)), Ok(WaitStatus::StillAlive)));
        if self.reap_orphans {
            self.reap_adopted();
        }
    }

    /// As PID 1 or subreaper: reap every zombie child but what mpsync runs itself (see `runs_itself`). A look
    /// first (WNOWAIT) at which child is a zombie; a zombie of what mpsync runs itself is left to its waiter, and
    /// the main child's to `release_group` (see `leader`); the rest are then found in /proc (the slow way,
    /// only while such a zombie waits).
    fn reap_adopted(&mut self) {
        loop {
            let peek = waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT);
            let pid = match peek {
                Ok(status) => match status.pid() {
                    Some(pid) => pid,
                    None => return,
                },
                Err(Errno::EINTR) => continue,
                Err(Errno::ECHILD) => return,
                Err(error) => {
                    warn!(%error, "waitid failed");
                    return;
                }
            };
            if Some(pid) == self.main {
                // The main child exited since `reap` looked at it.
                if let Ok(status) = peek {
                    self.exited(pid, status);
                }
                continue;
            }
            let leader = self.leader.map(Pid::as_raw);
            // Whose thread's child it is (see `runs_itself`). Where the kernel cannot say, its group, asked
            // with getpgid(2): a zombie keeps its group until reaped. Where the children files cannot be
            // read, nothing is reaped now: it could be a plugin's.
            // An exec credential plugin mpsync runs is left to its waiter. While one is being started, the
            // zombie may be its: look again at the next SIGCHLD (the plugin's own end sends one).
            let Some(plugins) = crate::backend::plugins() else { return };
            let own = plugins.contains(&pid.as_raw())
                || match procfs::children_of_threads(&self.job_tasks()) {
                    ThreadChildren::Listed(job) => !job.contains(&pid.as_raw()),
                    ThreadChildren::NoFile => getpgid(Some(pid)).is_ok_and(|pgrp| pgrp == self.own_pgrp),
                    ThreadChildren::Unreadable => return,
                };
            if own || Some(pid.as_raw()) == leader {
                let snapshot = Snapshot::take();
                let Some(mine) = self.runs_itself_by(&snapshot, &procfs::children_of_threads(&self.job_tasks())) else {
                    return;
                };
                // The plugins again, after the snapshot: one started since the look above may be in it.
                let Some(plugins) = crate::backend::plugins() else { return };
                let others: Vec<i32> = snapshot
                    .zombie_children(self.me.as_raw())
                    .filter(|zombie| {
                        !mine.contains(&zombie.pid) && !plugins.contains(&zombie.pid) && Some(zombie.pid) != leader
                    })
                    .map(|zombie| zombie.pid)
                    .collect();
                for other in others {
                    if let Ok(status) = waitpid(Pid::from_raw(other), Some(WaitPidFlag::WNOHANG)) {
                        self.reaped(status);
                    }
                }
                return;
            }
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => {}
                Ok(status) => self.reaped(status),
                Err(Errno::EINTR) => {}
                Err(error) => {
                    warn!(pid = pid.as_raw(), %error, "waitpid failed");
                    return;
                }
            }
        }
    }

    /// The main child's exit, seen with WNOWAIT: reported, and its zombie kept (see `leader`).
    fn exited(&mut self, pid: Pid, status: WaitStatus) {
        self.leader = Some(pid);
        self.reaped(status);
    }

    fn reaped(&mut self, status: WaitStatus) {
        let (pid, exit) = match status {
            WaitStatus::Exited(pid, code) => (pid, ChildExit::Exited(code)),
            WaitStatus::Signaled(pid, signal, _) => (pid, ChildExit::Signaled(signal as i32)),
            WaitStatus::Stopped(pid, signal) if Some(pid) == self.main => {
                // Stopped by job control on its own (Ctrl-Z on its terminal, SIGTTIN from the background): stop
                // mpsync too, so that the shell sees the job stopped. Not when mpsync's job control stopped it
                // (mpsync is stopping already), and not after a plain SIGSTOP: that is a debugger's or a
                // user's deliberate pause, and whoever sent it may continue the child directly, which must
                // not find mpsync stopped and the lease unrenewed. mpsync keeps running, and the lease.
                debug!(pid = pid.as_raw(), %signal, "the child stopped");
                if self.held.is_none() && JOB_STOPS.contains(&signal) {
                    self.stop_request.get_or_insert((signal, StopCause::Child));
                }
                return;
            }
            _ => return,
        };
        if Some(pid) == self.main {
            debug!(pid = pid.as_raw(), ?exit, "child exited");
            self.main = None;
            self.notices.push_back(Notice::ChildExited(exit));
        } else if Some(pid) == self.guard.as_ref().map(|guard| guard.pid) {
            warn!(pid = pid.as_raw(), ?exit, "the guard process died");
            self.guard_died();
        } else {
            debug!(pid = pid.as_raw(), ?exit, "reaped an orphan");
        }
    }

    /// The guard is gone: start another at once, armed with the child's group if there is one, so that no
    /// child runs unguarded.
    fn guard_died(&mut self) {
        self.guard = None;
        self.rearm_guard();
    }

    fn rearm_guard(&mut self) {
        match Guard::spawn(&self.inherited) {
            Ok(guard) => {
                if let Some(pgid) = self.group {
                    guard.tell(pgid.as_raw());
                    if let Some(deadline) = self.deadline {
                        guard.deadline(guard::monotonic_at(deadline));
                    }
                    // The child itself, by pid and start time (its zombie keeps the pid until `release_group`):
                    // armed with a group the child may have left, the new guard would not know it for the child
                    // (found by review, rv264: a child that cleared its parent-death signal and joined mpsync's
                    // group ran on after a SIGKILL of mpsync, once its first guard had been replaced).
                    if let Some(main) = self.main
                        && let Some(process) = ProcStat::read(main.as_raw())
                    {
                        guard.adopted(main.as_raw(), process.start);
                    }
                    // Also what left the child's group (found by review, helper-137: after a new guard, a
                    // `setsid worker` told to the old one was never told again, and ran on after a SIGKILL).
                    for (pid, start) in self
                        .told_adopted
                        .iter()
                        .chain(self.told_left.iter())
                        .chain(self.told_kept.borrow().iter().map(|(p, s)| (p, s)))
                    {
                        guard.adopted(*pid, *start);
                    }
                }
                match self.unguarded.take() {
                    Some((since, _)) => warn!(
                        guard = guard.pid.as_raw(),
                        unguarded_for = ?since.elapsed(),
                        "guard process started again"
                    ),
                    None => debug!(guard = guard.pid.as_raw(), "guard process started"),
                }
                self.guard = Some(guard);
            }
            // Tried again every `ADOPTION_LOOK` while a child runs (`tend`), and at the next spawn; said
            // once, and again every `UNGUARDED_SAY_AGAIN` while it lasts.
            Err(error) => {
                let now = std::time::Instant::now();
                match &mut self.unguarded {
                    Some((_, said)) if said.elapsed() < UNGUARDED_SAY_AGAIN => {}
                    Some((since, said)) => {
                        *said = now;
                        error!(%error, unguarded_for = ?since.elapsed(), "still no guard process: the child runs unguarded (should mpsync be killed or frozen, nothing stops it at the lease's deadline); trying again");
                    }
                    None => {
                        self.unguarded = Some((now, now));
                        error!(%error, "cannot start a guard process; trying again");
                    }
                }
            }
        }
    }
}

/// How often a child that runs unguarded (see `Supervisor::tend`) is said to be.
const UNGUARDED_SAY_AGAIN: Duration = Duration::from_secs(10);

/// How long the supervisor's end waits for its guard to exit.
const GUARD_EXIT: Duration = Duration::from_secs(2);

/// Whether child `pid` exits (and is a zombie to reap) within `limit`: waited for on a pidfd, else (a
/// kernel before 5.3) looked at every few milliseconds.
fn wait_for_exit(pid: Pid, limit: Duration) -> bool {
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    let exited = || {
        matches!(
            waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT),
            Ok(status) if status.pid().is_some()
        )
    };
    let deadline = std::time::Instant::now() + limit;
    // SAFETY: pidfd_open(2) takes two integers; the descriptor it returns is owned here alone.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if pidfd >= 0 {
        // SAFETY: a descriptor just opened, owned by nothing else.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let timeout = nix::poll::PollTimeout::try_from(left).unwrap_or(nix::poll::PollTimeout::MAX);
            let mut fds = [nix::poll::PollFd::new(pidfd.as_fd(), nix::poll::PollFlags::POLLIN)];
            match nix::poll::poll(&mut fds, timeout) {
                Err(Errno::EINTR) => continue,
                Ok(0) | Err(_) => return exited(),
                Ok(_) => return true,
            }
        }
    }
    while !exited() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

impl Drop for Supervisor {
    /// Nothing outlives the supervisor: whatever is left of the child's job is killed.
    fn drop(&mut self) {
        if let Some(pgid) = self.group {
            self.end_job(pgid, Signal::SIGKILL, false);
            if let Some(terminal) = self.terminal.as_mut() {
                terminal.take_back(Some(pgid), false);
            }
            self.group = None;
        }
        self.let_go_of_leader();
        if let Some(pid) = self.main.take() {
            let _ = waitpid(pid, None);
        }
        if let Some(guard) = self.guard.take() {
            let pid = guard.pid;
            // The job is gone (killed above): disarmed first, so that a guard that outlives the wait below
            // has nothing to kill. Closing the pipe is its cue to exit; one stopped by someone is continued
            // to see it.
            guard.tell(0);
            drop(guard);
            let _ = nix::sys::signal::kill(pid, Signal::SIGCONT);
            // Waited for, but not for ever: a process forked by another thread and not yet exec'd holds the
            // pipe too (an exec credential plugin whose exec hangs on a dead mount), until mpsync's exit
            // ends it (its parent-death signal). The guard, disarmed, then exits by itself.
            if wait_for_exit(pid, GUARD_EXIT) {
                let _ = waitpid(pid, None);
            } else {
                debug!(pid = pid.as_raw(), "the guard has not exited yet; leaving it to exit by itself");
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Until {
    /// The main child reaped, and nothing of its job left.
    JobGone(Pid),
}

/// Stop mpsync itself as the shell expects to see it: with `signal`'s default action (so `jobs` says
/// "Stopped (tty input)" after SIGTTIN), unblocked in this thread, which then handles it before `raise`
/// returns; the handler and mask come back once mpsync is continued.
fn stop_self(signal: Signal) {
    // Never stopped with a lock directory locked: that would stop the writes of every lease there.
    let _writes = crate::store::file::hold_writes();
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_DFL installs no handler code; the previous action is put back as it was below.
    let previous = unsafe { nix::sys::signal::sigaction(signal, &default) };
    let mut set = SigSet::empty();
    set.add(signal);
    let mut mask = SigSet::empty();
    let unblocked = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&set), Some(&mut mask)).is_ok();
    let _ = nix::sys::signal::raise(signal);
    if unblocked {
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&mask), None);
    }
    if let Ok(previous) = previous {
        // SAFETY: the action that was installed (signal-hook's handler), exactly as it was.
        let _ = unsafe { nix::sys::signal::sigaction(signal, &previous) };
    }
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

/// Whether process group `pgid` still has a member that can run (zombies count as dead).
///
/// Members orphaned by the child's death are reparented to init, which in some containers never reaps them:
/// such a group would look alive forever to kill(2). If /proc shows no member at all (hidepid), believe
/// kill(2).
#[cfg(test)]
fn group_alive(pgid: Pid) -> bool {
    let snapshot = Snapshot::take();
    if !snapshot.shows_group(pgid.as_raw()) {
        return killpg(pgid, None).is_ok();
    }
    snapshot.job(Some(pgid.as_raw()), -1, &[], &[]).into_iter().next().is_some()
}

/// The error for a failed exec, as bash words it. A missing interpreter (`#!/nonexistent`) also fails with
/// ENOENT, but the command itself was found: say which file is missing.
fn spawn_error(name: String, program: &OsStr, error: io::Error) -> SpawnError {
    let code = error.raw_os_error();
    if matches!(code, Some(libc::ENOENT | libc::EACCES))
        && let Some(path) = find_program(program)
    {
        let missing = code == Some(libc::ENOENT);
        match (interpreter(&path), missing) {
            (Some(interpreter), _) => {
                let why = describe(&error);
                let message = format!("bad interpreter: {interpreter}: {why}");
                return SpawnError::NotExecutable(name, io::Error::new(error.kind(), message));
            }
            (None, true) => {
                let message = "cannot execute: required file not found (its ELF interpreter or a loader)";
                return SpawnError::NotExecutable(name, io::Error::new(error.kind(), message));
            }
            (None, false) => {}
        }
    }
    match code {
        Some(libc::ENOENT) => SpawnError::NotFound(name),
        Some(
            libc::EACCES | libc::EPERM | libc::ENOEXEC | libc::EISDIR | libc::ENOTDIR | libc::ELOOP | libc::ETXTBSY,
        ) => SpawnError::NotExecutable(name, error),
        _ => SpawnError::Other(name, error),
    }
}

/// Whether `program` can be exec'd, looked up as execvp looks it up: checked before the lease is taken, so
/// that a command that is not there, or cannot run, costs no Lease write, no fencing token and no semaphore
/// marker (found by review, helper-165). The spawn checks again (the file may change meanwhile), and
/// finds what this cannot (a script whose interpreter is missing).
pub fn check_program(program: &OsStr) -> Result<(), SpawnError> {
    let name = program.to_string_lossy().into_owned();
    if find_program(program).is_some() {
        return Ok(());
    }
    let not_executable = |path: &std::path::Path| match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Some(io::Error::from_raw_os_error(libc::EISDIR)),
        Ok(_) => Some(io::Error::from_raw_os_error(libc::EACCES)),
        Err(err) => Some(err),
    };
    let found = match program.as_bytes().contains(&b'/') {
        // As bash: only a file that is not there is "not found" (127); a path that cannot be followed
        // (`/usr/bin/true/`, a symlink loop, a directory this user may not search, a name too long) says
        // why (126) (found by review, helper-183: all were 127, "command not found").
        true => not_executable(std::path::Path::new(program)).filter(|err| err.raw_os_error() != Some(libc::ENOENT)),
        // As bash: a file of that name on PATH that cannot run is "Permission denied" (126), not "not found";
        // a directory on PATH that is not there, or not a directory, is passed over, as execvp does.
        false => std::env::split_paths(&search_path())
            .filter_map(|dir| not_executable(&dir.join(program)))
            .find(|err| !matches!(err.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR))),
    };
    match found {
        Some(error) => Err(SpawnError::NotExecutable(name, error)),
        None => Err(SpawnError::NotFound(name)),
    }
}

/// The file exec would have run: `program` itself if it has a slash, else the first regular file of that
/// name on PATH that this process may execute (as execvp looks). Whether it may is the kernel's answer for
/// the effective user (`faccessat` with `AT_EACCESS`), not the mode bits: a file whose only execute bits
/// are for others, one owned by another user, or one on a `noexec` mount cannot run (found by review,
/// helper-179: any execute bit passed, and the lease was written before exec failed).
fn find_program(program: &OsStr) -> Option<std::path::PathBuf> {
    use nix::fcntl::{AT_FDCWD, AtFlags};
    use nix::unistd::{AccessFlags, faccessat};
    let runnable = |path: &std::path::Path| {
        std::fs::metadata(path).is_ok_and(|meta| meta.is_file())
            && faccessat(AT_FDCWD, path, AccessFlags::X_OK, AtFlags::AT_EACCESS).is_ok()
    };
    if program.as_bytes().contains(&b'/') {
        let path = std::path::PathBuf::from(program);
        return runnable(&path).then_some(path);
    }
    std::env::split_paths(&search_path()).map(|dir| dir.join(program)).find(|candidate| runnable(candidate))
}

/// The directories execvp searches: PATH, or glibc's default when PATH is unset (found by review,
/// helper-179: `env -i mpsync lock x -- true` said "command not found", where execvp runs /bin/true).
fn search_path() -> std::ffi::OsString {
    std::env::var_os("PATH").unwrap_or_else(|| "/bin:/usr/bin".into())
}

/// The interpreter a script's `#!` line names.
fn interpreter(path: &std::path::Path) -> Option<String> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let read = std::fs::File::open(path).and_then(|mut file| file.read(&mut head)).ok()?;
    let line = head[..read].strip_prefix(b"#!")?;
    let line = line.split(|byte| *byte == b'\n').next()?;
    let interpreter = line.split(|byte| *byte == b' ' || *byte == b'\t').find(|word| !word.is_empty())?;
    Some(String::from_utf8_lossy(interpreter).into_owned())
}

/// The job-control stops a terminal or a shell sends.
const STOPS: [libc::c_int; 3] = [libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU];

/// In the child between fork and exec: mpsync's pid, to which [`pass_stop_on`] passes a stop.
static PASS_STOPS_TO: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// The child's handler for a stop, from its `prepare_child` until its exec: the same stop to mpsync, which
/// stops the job and then itself with it (async-signal-safe: one system call; errno kept).
extern "C" fn pass_stop_on(stop: libc::c_int) {
    // SAFETY: errno is this thread's; kill(2) is async-signal-safe.
    unsafe {
        let errno = *libc::__errno_location();
        libc::kill(PASS_STOPS_TO.load(std::sync::atomic::Ordering::Relaxed), stop);
        *libc::__errno_location() = errno;
    }
}

/// A step of `prepare_child` of its own, not the exec. std passes back from the forked child only the number
/// of its error, as for the exec's: the step is carried in bits no errno uses, so that a step refused (a
/// seccomp profile refusing prctl) is mpsync's failure, exit 125, not the command's "not executable", 126
/// (found by review, rv247).
#[derive(Clone, Copy, Debug, PartialEq)]
enum SetUp {
    Group = 1,
    Guard = 2,
    DeathSignal = 3,
}

impl SetUp {
    const SHIFT: u32 = 20;

    fn what(self) -> &'static str {
        match self {
            SetUp::Group => "cannot give the command its own process group",
            SetUp::Guard => "cannot tell the guard process of the command",
            SetUp::DeathSignal => "cannot set the command's death signal (prctl PR_SET_PDEATHSIG)",
        }
    }
}

/// This thread's errno, tagged with `step` (async-signal-safe: an `io::Error` of a number allocates nothing).
fn set_up_failed(step: SetUp) -> io::Error {
    let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
    io::Error::from_raw_os_error(((step as i32) << SetUp::SHIFT) | (errno & ((1 << SetUp::SHIFT) - 1)))
}

/// The step and the error of a failure tagged by `set_up_failed`, if `error` is one.
fn set_up_failure(error: &io::Error) -> Option<(SetUp, io::Error)> {
    let code = error.raw_os_error()?;
    let step = match code >> SetUp::SHIFT {
        1 => SetUp::Group,
        2 => SetUp::Guard,
        3 => SetUp::DeathSignal,
        _ => return None,
    };
    Some((step, io::Error::from_raw_os_error(code & ((1 << SetUp::SHIFT) - 1))))
}

/// Runs in the forked child, between fork and exec: only async-signal-safe calls (mpsync has other threads,
/// whose locks are frozen in the child), no allocation.
fn prepare_child(parent: libc::pid_t, tty: RawFd, guard_fd: RawFd, keep_sighup_ignored: bool) -> io::Result<()> {
    // SAFETY: plain system calls on integers and on stack-allocated sigsets; nothing allocates or locks.
    unsafe {
        // Every signal blocked until they are all back to their defaults (`default_signals`): one that comes
        // meanwhile (a Ctrl-C once the child has the terminal) must not run mpsync's handler here, and be lost
        // (found by review, helper-204); it takes its default action at the unblocking, before the exec (but
        // for what mpsync ignores, and a stop: below).
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        // Its own process group, so signals (and, on loss, SIGKILL) reach everything it starts.
        if libc::setpgid(0, 0) != 0 {
            return Err(set_up_failed(SetUp::Group));
        }
        // A stop pending since the fork was sent to mpsync's group, which mpsync acts on itself: discarded,
        // not taken as the child's own, which would stop it before its exec while mpsync waits for that
        // (found by review, helper-202). Before the child takes the terminal: a Ctrl-Z after that is its own.
        crate::backend::discard_pending_stops();
        let pid = libc::getpid();
        if tty >= 0 {
            // The terminal's foreground before the command can read it. From mpsync's group, which is not the
            // foreground once the child has it: SIGTTOU blocked, as mpsync's main thread has it.
            // Best effort: a failure leaves the child in the background, as under a non-interactive mpsync.
            let mut ttou: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut ttou);
            libc::sigaddset(&mut ttou, libc::SIGTTOU);
            libc::sigprocmask(libc::SIG_BLOCK, &ttou, std::ptr::null_mut());
            libc::tcsetpgrp(tty, pid);
        }
        // Arm the guard with our group before the command starts. std may already have reset SIGPIPE to its
        // default, and a dead guard must give an error, not a death by SIGPIPE.
        if guard_fd >= 0 {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            let message = guard::message(pid, 0);
            if libc::write(guard_fd, message.as_ptr().cast(), message.len()) != message.len() as isize {
                return Err(set_up_failed(SetUp::Guard));
            }
        }
        // Blocked since the fork, a signal mpsync ignores was kept pending, not discarded: discarded now, as
        // it would have been (under nohup, a SIGHUP as the child started killed it; so did a Ctrl-C for the
        // shell's foreground job under `cmd &` without job control: found by review, helper-206).
        for signal in 1..=64 {
            let mut action: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut action) == 0 && action.sa_sigaction == libc::SIG_IGN {
                libc::sigaction(signal, &action, std::ptr::null_mut());
            }
        }
        // A stop that comes once the child has the terminal (a Ctrl-Z) is the job's: mpsync carries it out,
        // stopping the job and then itself, once the child runs. Taken here, it would stop the child before
        // its exec, and mpsync, waiting for that exec, with it (found by review, helper-206; and a stop that
        // came after the child's one look at its pending ones, helper-207). So until the exec, which puts the
        // default back, a handler passes every stop on to mpsync: one pending now, at the unblocking below.
        PASS_STOPS_TO.store(parent, std::sync::atomic::Ordering::Relaxed);
        let mut pass_on: libc::sigaction = std::mem::zeroed();
        pass_on.sa_sigaction = pass_stop_on as extern "C" fn(libc::c_int) as libc::sighandler_t;
        pass_on.sa_flags = libc::SA_RESTART;
        for stop in STOPS {
            libc::sigaction(stop, &pass_on, std::ptr::null_mut());
        }
        // Neither mpsync's handlers, nor signals ignored when mpsync started, nor its mask. Except SIGHUP
        // under nohup: nohup's promise (immune to hangups) is for the command mpsync runs too.
        let hup = if keep_sighup_ignored { libc::SIGHUP } else { 0 };
        crate::backend::default_signals(&[STOPS[0], STOPS[1], STOPS[2], hup]);
        // If mpsync dies the child dies with it (the guard takes care of the rest of the group). This fires
        // when the forking *thread* exits, which is why spawn runs on the main thread.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
            return Err(set_up_failed(SetUp::DeathSignal));
        }
        // mpsync may have died before the line above: then no signal would ever come.
        if libc::getppid() != parent {
            libc::_exit(1);
        }
    }
    Ok(())
}
