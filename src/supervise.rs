//! The child: spawn, process group, terminal, signals, reaping, stop-with-grace.
//! This module knows nothing of leases.
//!
//! INTERFACE STUB: the helper implementing supervision replaces the bodies; signatures are the contract
//! with `run.rs`.

use std::ffi::OsString;
use std::time::Duration;

use nix::sys::signal::Signal;

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

pub struct Supervisor {
    _private: (),
}

impl Supervisor {
    /// Call before the tokio runtime starts, while the process is single-threaded: forks the guard
    /// process, starts the signal thread, becomes a subreaper if asked.
    pub fn start(_options: SuperviseOptions) -> std::io::Result<Supervisor> {
        Ok(Supervisor { _private: () })
    }

    /// The next signal mpsync received, or the main child's exit. Reaps orphans on the way.
    pub async fn next_event(&mut self) -> Event {
        unimplemented!()
    }

    /// Start the child in its own process group (and the terminal's foreground, if interactive).
    pub fn spawn(&mut self, _command: &ChildCommand) -> Result<u32, SpawnError> {
        unimplemented!()
    }

    /// Whether a main child is running (spawned and not yet reaped).
    pub fn running(&self) -> bool {
        false
    }

    /// Send `signal` to the child's whole process group.
    pub fn forward(&self, _signal: Signal) {}

    /// Stop the child: `kill_signal` to its group, wait up to `grace`, then SIGKILL the group; reap.
    /// Signals that arrive meanwhile are kept for `next_event`.
    pub async fn stop(&mut self, _kill_signal: Signal, _grace: Duration) -> ChildExit {
        unimplemented!()
    }

    /// After the main child exited: stop what is left of its group (`kill_signal`, `grace`, SIGKILL),
    /// hand the terminal back, disarm the guard.
    pub async fn finish(&mut self, _kill_signal: Signal, _grace: Duration) {}
}
