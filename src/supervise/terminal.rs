//! The controlling terminal, as a shell's job control uses it: when the child may have the foreground,
//! handing it over, and taking it back with the terminal's modes.
//!
//! The terminal is found through /dev/tty (the controlling terminal, whatever stdin is): `mpsync ... </dev/null`
//! in a terminal still has one, and its child must still be stopped by Ctrl-Z and reached by Ctrl-C.
//!
//! The child gets the foreground only when mpsync's own group has it, checked each time (before the spawn,
//! when the child stops for terminal access, and on SIGCONT): a backgrounded mpsync never takes the
//! terminal from the shell. And not when that group is a pipeline's (`mpsync ... -- seq 1000 | less`): a
//! shell gives the foreground to the whole pipeline, and taking it for one member's child would stop the
//! others (less) on their next read.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use nix::fcntl::{OFlag, open};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use nix::sys::stat::{Mode, SFlag, fstat};
use nix::sys::termios::{SetArg, Termios, tcgetattr, tcsetattr};
use nix::unistd::{Pid, getpgrp, getpid, tcgetpgrp, tcsetpgrp};
use tracing::debug;

use super::procfs::Snapshot;

pub(crate) struct Terminal {
    /// /dev/tty, close-on-exec.
    tty: OwnedFd,
    /// mpsync's modes, saved when the terminal went to the child, put back when it comes back.
    saved: Option<Termios>,
    /// The child's modes when its job was stopped, put back when it gets the terminal again (as a shell does
    /// for a stopped job: a full-screen program stopped by SIGSTOP leaves the terminal raw).
    child_modes: Option<Termios>,
}

/// Whether nothing alive is left in group `pgid`: no process at all, or only zombies that /proc shows.
/// A group with a process mpsync may not signal (another user's, which `/proc` may hide) is alive, and
/// so is one that /proc does not show whole (no /proc, another PID namespace's) (found by review: under
/// `hidepid`, the root shell of `sudo -i` looked dead).
fn is_dead(pgid: Pid) -> bool {
    match nix::sys::signal::killpg(pgid, None) {
        Err(nix::errno::Errno::ESRCH) => true,
        Ok(()) => {
            let snapshot = Snapshot::take();
            snapshot.complete() && snapshot.shows_group(pgid.as_raw()) && !snapshot.group_has_living(pgid.as_raw())
        }
        Err(_) => false,
    }
}

impl Terminal {
    /// mpsync's controlling terminal, if it has one.
    pub fn open() -> Option<Terminal> {
        let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
        let tty = open("/dev/tty", flags, Mode::empty()).ok()?;
        Some(Terminal { tty, saved: None, child_modes: None })
    }

    /// The descriptor, for the child to take the foreground before it execs.
    pub fn raw_fd(&self) -> RawFd {
        self.tty.as_raw_fd()
    }

    pub fn foreground(&self) -> Option<Pid> {
        tcgetpgrp(&self.tty).ok()
    }

    /// Whether the child may have the foreground now: mpsync's group has it, mpsync was not started as a
    /// background job of a shell without job control (`background_job`: SIGINT came ignored), and mpsync
    /// is not part of a pipeline whose other members would lose it.
    pub fn may_hand_over(&self, background_job: bool) -> bool {
        let ours = getpgrp();
        if background_job || self.foreground() != Some(ours) {
            return false;
        }
        // A pipeline: stdin or stdout is a pipe, and the group has members that are neither mpsync's
        // ancestors (a shell waiting for it) nor its children. Only then: a script's background job
        // (`sleep 100 & mpsync ... -- vi`) leaves the terminal to the foreground command.
        let piped = [std::io::stdin().as_fd(), std::io::stdout().as_fd()]
            .into_iter()
            .any(|fd| fstat(fd).is_ok_and(|stat| SFlag::from_bits_truncate(stat.st_mode).contains(SFlag::S_IFIFO)));
        if piped {
            let strangers = Snapshot::take().strangers_in_group(ours.as_raw(), getpid().as_raw());
            if !strangers.is_empty() {
                debug!(?strangers, "mpsync's group is a pipeline's; the terminal stays with it");
                return false;
            }
        }
        true
    }

    /// Before the terminal goes to the child: remember the modes to come back to.
    pub fn save_modes(&mut self) {
        self.saved = tcgetattr(&self.tty).ok();
        self.child_modes = None;
    }

    /// Give the foreground to `pgid`, with the modes its job had when it was stopped, if it was.
    pub fn hand_to(&mut self, pgid: Pid) -> bool {
        if self.saved.is_none() {
            self.saved = tcgetattr(&self.tty).ok();
        }
        if let Some(modes) = self.child_modes.take() {
            self.set_modes(&modes);
        }
        self.set_foreground(pgid)
    }

    /// If `pgid` (the child's group) has the foreground, or `pgid` is None and anything but mpsync's group
    /// has it (the group of a child that failed to exec): take it back for mpsync's group, with mpsync's
    /// modes. With `child_stopped`, keep the child's modes to give them back with the terminal.
    pub fn take_back(&mut self, pgid: Option<Pid>, child_stopped: bool) {
        let ours = getpgrp();
        let Some(foreground) = self.foreground() else { return };
        let theirs = match pgid {
            // Or a group of the job's own (an interactive shell's job, `bash -i` run as the child) left the
            // foreground when it was killed: a group with nothing alive in it, which mpsync handed the
            // terminal away from (found by review, helper-90: a lost lease left it to the dead group, with the
            // killed job's modes, which the calling shell then took for its own).
            Some(pgid) => foreground == pgid || (self.saved.is_some() && foreground != ours && is_dead(foreground)),
            None => foreground != ours,
        };
        if !theirs {
            return;
        }
        if child_stopped {
            self.child_modes = tcgetattr(&self.tty).ok();
        }
        self.set_foreground(ours);
        if let Some(saved) = self.saved.take() {
            self.set_modes(&saved);
        }
    }

    /// tcsetpgrp(3) with SIGTTOU blocked in this thread: from a background group it would stop us otherwise.
    fn set_foreground(&self, pgid: Pid) -> bool {
        let result = without_sigttou(|| tcsetpgrp(&self.tty, pgid));
        if let Err(error) = result {
            debug!(pgid = pgid.as_raw(), %error, "cannot set the terminal's foreground group");
        }
        result.is_ok()
    }

    fn set_modes(&self, modes: &Termios) {
        if let Err(error) = without_sigttou(|| tcsetattr(&self.tty, SetArg::TCSADRAIN, modes)) {
            debug!(%error, "cannot set the terminal's modes");
        }
    }
}

/// Run `f` with SIGTTOU blocked in this thread: a terminal call from a background group then proceeds.
fn without_sigttou<T>(f: impl FnOnce() -> T) -> T {
    let mut blocked = SigSet::empty();
    blocked.add(Signal::SIGTTOU);
    let mut previous = SigSet::empty();
    let masked = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&blocked), Some(&mut previous)).is_ok();
    let result = f();
    if masked {
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&previous), None);
    }
    result
}
