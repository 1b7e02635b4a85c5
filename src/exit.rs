//! The exit-code table. This is the only place the numbers live; the README's table mirrors it.

/// How mpsync ends. `code()` is what the process exits with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The child ran and exited with this code (128+N if it died of signal N).
    Child(i32),
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
