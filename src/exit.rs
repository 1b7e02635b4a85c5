//! The exit-code table. This is the only place the numbers live; the README's table mirrors it.

use nix::libc;

/// How mpsync ends. `code()` is what the process exits with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The child ran and exited with this code.
    Child(i32),
    /// The child died of signal N: 128+N, or, for SIGINT and SIGQUIT, mpsync dies of it too (see
    /// [`Exit::reraise_signal`]).
    ChildSignaled(i32),
    /// The lease was lost while the child ran; the child was stopped.
    LeaseLost,
    /// The lease was not acquired: `--no-wait` found it held, or `--timeout` passed.
    /// Carries the code to use (`--conflict-exit-code` changes it; 124 by default).
    NotAcquired(i32),
    /// mpsync itself failed: usage, invalid options, kubeconfig, permission, namespace missing, ...
    Failure,
    /// COMMAND was found but is not executable.
    NotExecutable,
    /// COMMAND was not found.
    NotFound,
    /// mpsync was stopped by signal N before the child started (or, for `observe`, a clean stop: 0).
    Signaled(i32),
    /// Plain success for commands that run no child (`status`, `observe`, `completions`).
    Success,
}

pub const LEASE_LOST: i32 = 123;
pub const NOT_ACQUIRED: i32 = 124;
pub const FAILURE: i32 = 125;
pub const NOT_EXECUTABLE: i32 = 126;
pub const NOT_FOUND: i32 = 127;

impl Exit {
    pub fn code(self) -> i32 {
        match self {
            Exit::Child(code) => code,
            Exit::ChildSignaled(signal) => 128 + signal,
            Exit::LeaseLost => LEASE_LOST,
            Exit::NotAcquired(code) => code,
            Exit::Failure => FAILURE,
            Exit::NotExecutable => NOT_EXECUTABLE,
            Exit::NotFound => NOT_FOUND,
            Exit::Signaled(signal) => 128 + signal,
            Exit::Success => 0,
        }
    }
}

impl Exit {
    /// The signal mpsync should die of rather than exit with `code()`: SIGINT or SIGQUIT, when the child died
    /// of it, or when mpsync got it before the child started.
    ///
    /// This is the "wait and cooperative exit" convention shells rely on: bash, waiting for a foreground
    /// command after Ctrl-C, ends a loop or a script only if the command *died* of SIGINT; an exit code of
    /// 130 says the command handled it and carries on. A shell reads both as `$?` = 128+N, so the table's
    /// codes hold as a shell sees them. Not for SIGTERM and SIGHUP (shells do not look), and not as PID 1,
    /// which cannot die of its own signals: there the code is all there is.
    pub fn reraise_signal(self) -> Option<i32> {
        match self {
            Exit::ChildSignaled(signal) | Exit::Signaled(signal)
                if signal == libc::SIGINT || signal == libc::SIGQUIT =>
            {
                Some(signal)
            }
            _ => None,
        }
    }
}

/// End the process as `exit` says: die of [`Exit::reraise_signal`] where there is one (not as PID 1), else
/// exit with `code()`. Call it last, from the main thread, once everything else is done.
pub fn exit_process(exit: Exit) -> ! {
    use std::io::Write;
    // Not stderr: mpsync writes it unbuffered, through its log thread (see `logging`).
    let _ = std::io::stdout().flush();
    if let Some(signal) = exit.reraise_signal()
        && std::process::id() != 1
    {
        die_of(signal);
    }
    std::process::exit(exit.code())
}

/// [`exit_process`] without the flush of stdout, for a thread other than the one that may be blocked
/// writing to it (std's own exit leaves a stdout that another thread holds as it is).
pub fn exit_process_unflushed(exit: Exit) -> ! {
    if let Some(signal) = exit.reraise_signal()
        && std::process::id() != 1
    {
        die_of(signal);
    }
    std::process::exit(exit.code())
}

/// Die of `signal`, with its default action: no handler, unblocked, and (SIGQUIT) no core file.
fn die_of(signal: i32) {
    // SAFETY: plain system calls on integers and a stack-allocated sigset: reset the action, unblock,
    // raise. No handler code is installed.
    unsafe {
        if signal == libc::SIGQUIT {
            // The child's core dump, if any, is the child's business; mpsync's would be noise.
            let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
        }
        libc::signal(signal, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sigint_and_sigquit_are_reraised() {
        assert_eq!(Exit::ChildSignaled(libc::SIGINT).reraise_signal(), Some(libc::SIGINT));
        assert_eq!(Exit::ChildSignaled(libc::SIGQUIT).reraise_signal(), Some(libc::SIGQUIT));
        assert_eq!(Exit::Signaled(libc::SIGINT).reraise_signal(), Some(libc::SIGINT));
        assert_eq!(Exit::ChildSignaled(libc::SIGTERM).reraise_signal(), None);
        assert_eq!(Exit::Signaled(libc::SIGHUP).reraise_signal(), None);
        assert_eq!(Exit::Child(130).reraise_signal(), None, "an exit code of 130 is a code, not a death");
        assert_eq!(Exit::ChildSignaled(libc::SIGINT).code(), 130);
    }
}
