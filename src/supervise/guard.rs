//! The guard: a tiny process that outlives mpsync to kill the child's whole group when mpsync dies, even by
//! SIGKILL (a parent-death signal reaches only the direct child).
//!
//! It holds the read end of a pipe whose only write ends are mpsync's and, until exec, a just-forked
//! child's: end-of-file means mpsync is gone. Messages are 4-byte native-endian i32: a positive value arms it
//! with that process group, 0 disarms it.
//!
//! What it survives, and what it cannot:
//! - It ignores every signal but SIGKILL and SIGSTOP, and runs in a process group of its own, so Ctrl-C, a
//!   hangup, or a signal to mpsync's group do not reach it.
//! - It is called `mpsync-guard` (its comm, what `ps`, `top`, `killall` and `pkill` match by default), so
//!   `killall -9 mpsync` and `pkill -x mpsync` leave it, and it does its work. `pkill mpsync` matches it as a
//!   substring, and `pkill -f` matches the command line it shares with mpsync.
//! - When it dies while mpsync lives, mpsync starts a new one at once and arms it (see `Supervisor::reap`).
//! - When both die at once (`kill -9 MPSYNC GUARD`, `pkill -9 mpsync`), nothing is left to kill the group:
//!   the main child still dies (its parent-death signal is SIGKILL), but the rest of its group, and any
//!   process that left the group, run on. That is the limit of a same-user process; a PID namespace or a
//!   cgroup of its own would be the next step.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::libc;
use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
use nix::unistd::{ForkResult, Pid, fork, pipe2};
use tracing::warn;

/// The guard's process name (comm): at most 15 bytes.
pub const GUARD_NAME: &std::ffi::CStr = c"mpsync-guard";

pub(crate) struct Guard {
    pub pid: Pid,
    /// The write end (close-on-exec, so commands never hold it).
    pub pipe: OwnedFd,
}

impl Guard {
    /// Fork a new guard, disarmed. Sound even when other threads exist: the forked process makes only
    /// async-signal-safe calls.
    pub fn spawn() -> io::Result<Guard> {
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

    /// Arm the guard with process group `pgid`, or disarm it with 0.
    pub fn tell(&self, message: i32) {
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
        // A name of its own, so that killing mpsync by name leaves the guard to do its work.
        libc::prctl(libc::PR_SET_NAME, GUARD_NAME.as_ptr() as libc::c_ulong, 0, 0, 0);

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
