//! mpsync's one error type. Every variant maps to an exit code in `Error::exit`, and its message names
//! what was wrong and what to do, on one or two lines.

use crate::exit::Exit;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command line or options (also: invalid names, durations, timing invariants).
    #[error("{0}")]
    Usage(String),
    /// No usable Kubernetes configuration, or one that cannot be read.
    #[error("{0}")]
    Config(String),
    /// The API server said no, for a reason retrying will not fix (403, 401, namespace missing, 422, ...).
    #[error("{0}")]
    Api(String),
    /// The file backend could not do its work (lock dir not writable, corrupt record).
    #[error("{0}")]
    File(String),
    /// COMMAND does not exist.
    #[error("{0}: command not found")]
    CommandNotFound(String),
    /// COMMAND exists but cannot be executed.
    #[error("{0}: permission denied or not executable ({1})")]
    CommandNotExecutable(String, String),
    /// Anything else that stops mpsync itself (spawn failures, runtime start).
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn exit(&self) -> Exit {
        match self {
            Error::CommandNotFound(_) => Exit::NotFound,
            Error::CommandNotExecutable(..) => Exit::NotExecutable,
            Error::Usage(_) | Error::Config(_) | Error::Api(_) | Error::File(_) | Error::Internal(_) => Exit::Failure,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
