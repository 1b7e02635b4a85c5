//! mpsync's one error type, for the library and the CLI alike. Every message names what was wrong and
//! what to do, on one or two lines; for the CLI, `Error::exit` maps each variant to its exit code.

/// Everything that can go wrong, by what the caller can do about it.
///
/// Not acquiring a lease is not an error: [`Lock::try_acquire`](crate::Lock::try_acquire) and
/// [`Lock::acquire_timeout`](crate::Lock::acquire_timeout) return `Ok(None)`. Nor is losing one:
/// [`HeldLock::lost`](crate::HeldLock::lost) says why.
///
/// The messages are meant to be shown as they are (`Display`); the variants say what kind of failure it
/// is. New variants may be added.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Invalid options: a lease name, namespace, identity, timings or slot count (for the CLI, also
    /// its flags). Nothing was sent; retrying with the same options fails the same way.
    #[error("{0}")]
    Usage(String),
    /// No usable Kubernetes configuration, or one that cannot be read: from the CLI, and from
    /// [`KubeClientBuilder::build`](crate::KubeClientBuilder::build) (the `client` feature). Nothing was sent.
    #[error("{0}")]
    Config(String),
    /// The lease cannot be used, for a reason retrying will not fix: the API server refused (401,
    /// 403, the namespace does not exist, 422), or the lease as it stands can never be acquired (its
    /// fencing token is at its maximum; it belongs to a semaphore of another size, or is not one).
    #[error("{0}")]
    Api(String),
    /// The file backend cannot do its work: the lock directory cannot be created or written, or a
    /// record is corrupt.
    #[error("{0}")]
    File(String),
    /// The lease's store (the API server, or the file system) could not be reached or kept failing
    /// until the operation gave up (see each method). Retrying later may work; a lease this process
    /// held and could not release expires after its duration.
    #[error("{0}")]
    Unavailable(String),
    /// The CLI only: COMMAND does not exist.
    #[error("{0}: command not found")]
    CommandNotFound(String),
    /// The CLI only: COMMAND exists but cannot be executed (the program, and why).
    #[error("{0}: permission denied or not executable ({1})")]
    CommandNotExecutable(String, String),
    /// Anything else: the runtime could not start, a background task ended unexpectedly (its tokio
    /// runtime was shut down), and the like.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The CLI's exit code for this error (see the README's table; `src/exit.rs`).
    #[cfg(feature = "cli")]
    #[doc(hidden)]
    pub fn exit(&self) -> crate::exit::Exit {
        use crate::exit::Exit;
        match self {
            Error::CommandNotFound(_) => Exit::NotFound,
            Error::CommandNotExecutable(..) => Exit::NotExecutable,
            Error::Usage(_)
            | Error::Config(_)
            | Error::Api(_)
            | Error::File(_)
            | Error::Unavailable(_)
            | Error::Internal(_) => Exit::Failure,
        }
    }
}

/// `Result` with mpsync's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
