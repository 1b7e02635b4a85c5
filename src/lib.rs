//! Kubernetes Lease locks, leader election and semaphores for Rust programs, on the engine of the
//! `mpsync` command-line tool.
//!
//! A lock is a `coordination.k8s.io/v1` Lease, written exactly as client-go writes it, so Rust programs,
//! `mpsync` commands and Go programs using client-go's `leaderelection` respect one another. Without a
//! cluster, the `file` backend keeps the same records in files on one machine.
//!
//! # Leader election in ten lines
//!
//! ```no_run
//! use mpsync::{Election, Lock};
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let client = mpsync::kube_client().await?; // or kube::Client::try_default()
//!     let lock = Lock::kube(client, "default", "my-controller").build()?;
//!     Election::new(lock)
//!         .run(|leadership| async move {
//!             while !leadership.is_lost() {
//!                 // One step of work, passing leadership.fencing_token() with every write;
//!                 // or select! on leadership.lost() around a longer one.
//!                 tokio::time::sleep(std::time::Duration::from_secs(1)).await;
//!             }
//!         })
//!         .await?;
//!     Ok(())
//! }
//! ```
//!
//! The process campaigns for the Lease `my-controller`; while it leads, the closure runs; when
//! leadership is lost (the API server out of reach for the renew deadline, say), the closure's token is
//! cancelled, it gets a grace period to return, and the process campaigns again. A lock held around a
//! job, with its fencing token:
//!
//! ```no_run
//! # async fn example(client: kube::Client) -> mpsync::Result<()> {
//! let lock = mpsync::Lock::kube(client, "default", "db-migration").build()?;
//! let held = lock.acquire().await?;
//! let token = held.fencing_token(); // pass with every write; have the target reject lower ones
//! let stop = held.cancellation_token(); // cancelled if the lease is lost
//! // ... the job, stopping when `stop` is cancelled ...
//! held.release().await?;
//! # Ok(())
//! # }
//! ```
//!
//! `examples/` has complete programs: `leader_controller.rs` (a controller loop that works only while
//! leading), `guarded_job.rs` (a job that fences every write) and `file_lock.rs` (the file backend).
//!
//! **The client.** [`kube_client`] (and [`KubeClientBuilder`], for a kubeconfig or context of your
//! choice) builds the `kube::Client` that the `mpsync` CLI uses: `TCP_NODELAY` on every connection,
//! kubectl's proxy rules, trust in exactly the CA the configuration names, and watches on connections of
//! their own. kube 5's own client (`Client::try_default`, `Client::try_from(config)`) works too, but
//! leaves Nagle's algorithm on (kube-rs/kube#2056), so the first request on every new connection waits
//! for the server's delayed ACK, 40 ms on Linux: `guarded_job` with no steps takes 48.6 ms with it
//! against the TLS test API server, 5.8 ms with no-delay (the bench).
//!
//! # The API
//!
//! - [`Lock`]: a lease, built once with [`Lock::kube`] (a `kube::Client`, a namespace, a name) or
//!   [`Lock::file`] (a directory, a name), and the [`LockBuilder`] options: [`identity`](LockBuilder::identity)
//!   (unique by default), [`timing`](LockBuilder::timing) ([`Timing`], checked as the CLI checks it),
//!   [`slots`](LockBuilder::slots) (a semaphore of N holders). Then:
//!   - [`acquire`](Lock::acquire) (wait), [`try_acquire`](Lock::try_acquire) (one attempt),
//!     [`acquire_timeout`](Lock::acquire_timeout) (wait at most this long): a [`HeldLock`];
//!   - [`status`](Lock::status): the Lease as it stands ([`LeaseStatus`]);
//!   - [`observe`](Lock::observe): a `Stream` of changes of holder.
//! - [`HeldLock`]: renewed in the background; [`fencing_token`](HeldLock::fencing_token);
//!   [`lost`](HeldLock::lost) (a future, with the [`LossReason`]), [`is_lost`](HeldLock::is_lost) and
//!   [`cancellation_token`](HeldLock::cancellation_token) (a `tokio_util` `CancellationToken`);
//!   [`release`](HeldLock::release). Dropping it releases in the background.
//! - [`Election`]: campaign, run an async closure while leading with a [`Leadership`] (fencing token,
//!   cancellation token), stop it on loss; then campaign again or return ([`AfterLoss`]); the
//!   [`Outcome`] says how it ended. [`shutdown`](Election::shutdown) stops it gracefully.
//! - [`Error`] (one enum; [`Result`]), [`Timing`] ([`Timing::DEFAULT`], [`Timing::validate`]),
//!   [`LossReason`].
//!
//! Everything needs a tokio runtime (the current-thread one is enough) with timers enabled, and the
//! Kubernetes backend I/O as well (`enable_all()` gives both); the `async` methods panic when polled
//! outside a tokio runtime, as tokio's own timers do. A
//! held lock is renewed by a task on the runtime that acquired it: if that runtime shuts down, the
//! lock counts as lost at once ([`LossReason::Abandoned`]), and the same [`Lock`] acquired again
//! writes a new hold with a larger fencing token. (A `kube::Client` cannot outlive the runtime it was
//! built on either: build the client and the `Lock` on the runtime that uses them.) The library logs
//! through `tracing` (warnings when the API server fails, one line per failure episode), and never
//! installs a subscriber. It starts one thread of its own, with the first lock it hands out: the one
//! that cancels tokens at renew deadlines.
//!
//! # Guarantees
//!
//! The README's guarantees, as they hold for library users. They rest on the same assumptions: the
//! clocks of the machines involved *run at the same rate* (they need not agree on the time), and the
//! timings satisfy `retry_period × 1.2 < renew_deadline < lease_duration` (checked by
//! [`LockBuilder::build`]).
//!
//! - **At most one holder per lease (per slot), if the work stops when told.** A holder that cannot
//!   renew counts the lease lost `renew_deadline` after it *sent* its last successful renewal: then
//!   [`HeldLock::lost`] resolves and the cancellation token fires. Any other process waits
//!   `lease_duration` from when it *observed* that renewal, which came after it was sent. The
//!   `lease_duration - renew_deadline` in between is the work's time to stop:
//!   `send + renew_deadline + grace < send + lease_duration ≤ observed + lease_duration`.
//!   [`Election`] enforces it: it cancels the work's token at the renew deadline and drops the work
//!   after [`grace`](Election::grace), with
//!   `renew_deadline + grace < lease_duration` checked. With a [`HeldLock`], stopping is the caller's:
//!   watch the token. Either way, code that blocks (a blocking call, a busy loop, a thread of its own)
//!   is the caller's to stop: dropping a future stops it only at an `.await`. Such code checks the
//!   token (`is_cancelled()`) or `is_lost()` between steps: the token is cancelled at the renew
//!   deadline by a thread of mpsync's own, even while the runtime that renews the lease does not run
//!   (work done outside `block_on`, or blocking the runtime's only thread). (The CLI can promise more
//!   because it kills a process group.) It is the CLI's engine, so the property tests that check this
//!   arithmetic for every interleaving of writes, late answers, watches and deletions cover it too.
//! - **Every write is a compare-and-swap** (create, or replace with the `resourceVersion` read); a
//!   write whose outcome is unknown is settled by reading, never assumed. **Expiry is judged on the
//!   local monotonic clock**, never by comparing another machine's timestamps with ours.
//! - **Identity**: each [`Lock`] gets an identity of its own (`<POD_NAME or hostname>_<random>`) unless
//!   given one; a record under its identity that it did not write is never taken over or shared.
//! - **The work never outlives the process**: it runs inside it. If the process dies (even by SIGKILL),
//!   the work dies with it, and the lease expires after its duration. Processes the work starts are
//!   not part of it: stop them when the token is cancelled (`tokio::process::Command::kill_on_drop`,
//!   or a process group of their own that you kill), have them die with the process
//!   (`PR_SET_PDEATHSIG`), or run them with the `mpsync` CLI, which does all of that.
//! - **Release only after the work is done**: [`Election`] releases only after the work has returned
//!   or been dropped; a [`HeldLock`]'s token is cancelled before its release is written, and releasing
//!   is the caller's call, after its work. A lease that is no longer this holder's is never written.
//! - **Nothing is held by a holder that is gone**: every way out gives back what it holds, or may hold
//!   through a write whose outcome is unknown: [`HeldLock::release`], dropping a [`HeldLock`] (in the
//!   background), dropping an [`acquire`](Lock::acquire) future (in the background),
//!   [`Election::shutdown`]. A process that exits before the background has run, or crashes, leaves the
//!   lease to expire after its duration.
//!
//! What it cannot guarantee, as for the CLI:
//!
//! - A process (or machine, or VM) **frozen** for longer than the margin (`lease_duration −
//!   renew_deadline`: work that found the lock not lost just before its renew deadline, then froze),
//!   then resumed, can run its work for a moment after another holder started: nothing frozen runs to
//!   stop it. That is what
//!   **fencing tokens** are for: [`HeldLock::fencing_token`] and [`Leadership::fencing_token`] strictly
//!   increase across the holders of a Lease (of a slot); pass the token with every write to what the
//!   lease protects and have it reject tokens lower than the highest it has seen (`examples/guarded_job.rs`).
//! - Deleting a Lease resets its fencing tokens (for processes that never saw the old record): do not
//!   delete Leases that fence anything. A token at `i32::MAX` cannot grow: such a lease is refused
//!   ([`Error::Api`]) rather than a token handed out twice.
//!
//! # Features
//!
//! - `kube`: the Kubernetes backend ([`Lock::kube`]). Bring a `kube::Client` of kube 5, with the TLS
//!   stack of your choice enabled on your own kube dependency.
//! - `client`: `kube`, and the CLI's own client for it ([`kube_client`], [`KubeClientBuilder`]); it
//!   enables kube's `rustls-tls` and `ring`, as kube's default features do.
//! - `file`: the file backend ([`Lock::file`]).
//! - `cli` (default): the `mpsync` binary, with `client` and `file`, argument parsing (clap), the
//!   process supervisor (signal-hook), the side-car and health endpoints, logging (tracing-subscriber).
//!   It also picks the Kubernetes API version of k8s-openapi (1.33), as a binary must.
//!
//! A program using the library turns the default off:
//!
//! ```toml
//! [dependencies]
//! # mpsync is not on crates.io: depend on a checkout of its repository (or a git URL).
//! mpsync = { path = "../mpsync", default-features = false, features = ["client"] }
//! kube = "5"  # for its types, if the program uses kube itself
//! k8s-openapi = { version = "0.29", features = ["v1_33"] }  # your cluster's version
//! ```
//!
//! `k8s-openapi` is always a dependency, whatever the features: lease records (and
//! [`LeaseStatus`]'s timestamps) are its types. As a library, mpsync picks no Kubernetes version of it
//! (k8s-openapi refuses two): the program does, as above.
#![cfg_attr(docsrs, feature(doc_cfg))]
// The docs link to both backends; built without one (`--no-default-features --features client`), its
// links are plain text rather than errors. docs.rs builds with every feature.
#![cfg_attr(not(all(feature = "kube", feature = "file")), allow(rustdoc::broken_intra_doc_links))]
#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(not(any(feature = "kube", feature = "file")))]
compile_error!("mpsync needs a backend: enable the `kube` feature, the `file` feature, or both (`cli` enables both)");

mod election;
mod error;
mod lock;

// The layers under the public API (the pure lease state machine, the engine that drives it, the
// stores) and the CLI (`cli`, `run`, `supervise`, `sidecar`, `health`, ...). They are `pub` only so
// that the `mpsync` binary (src/main.rs), the end-to-end tests and the benchmarks can reach them:
// hidden from the documentation, not part of the API, and free to change in any release.
#[doc(hidden)]
pub mod engine;
#[doc(hidden)]
pub mod lease;
#[doc(hidden)]
pub mod retry;
// The store's module docs link to its private parts, which only `--document-private-items` shows.
#[doc(hidden)]
#[allow(rustdoc::private_intra_doc_links)]
pub mod store;
#[doc(hidden)]
pub mod validate;

#[cfg(feature = "client")]
#[doc(hidden)]
pub mod backend;
#[cfg(feature = "client")]
mod client;
// cli.rs's doc comments are clap's `--help` text (`[default: <POD_NAME or hostname>_<random>]`), not rustdoc.
#[cfg(feature = "cli")]
#[doc(hidden)]
#[allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]
pub mod cli;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod exit;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod health;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod http;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod logging;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod run;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod sidecar;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod status;
// Its module docs link to `Supervisor::next_event`, which is gone (for supervise.rs to fix); the module
// is not part of the published docs.
#[cfg(feature = "cli")]
#[doc(hidden)]
#[allow(rustdoc::broken_intra_doc_links)]
pub mod supervise;

#[cfg(feature = "client")]
pub use client::{KubeClientBuilder, kube_client};
pub use election::{AfterLoss, Election, Leadership, Outcome};
pub use error::{Error, Result};
#[cfg(feature = "cli")]
#[doc(hidden)]
pub use exit::Exit;
pub use lease::LossReason;
/// The timings of a lease, as `mpsync lock --lease-duration D --renew-deadline D --retry-period D`;
/// [`LockBuilder::timing`] takes them, [`LockBuilder::build`] checks them.
///
/// ```
/// use std::time::Duration;
/// use mpsync::Timing;
///
/// // Faster failover than the default (15s, 10s, 2s): a crashed holder is replaced after 6s.
/// let timing = Timing {
///     lease_duration: Duration::from_secs(6),
///     renew_deadline: Duration::from_secs(4),
///     retry_period: Duration::from_secs(1),
/// };
/// assert!(timing.validate().is_ok());
/// assert!(Timing { renew_deadline: Duration::from_secs(6), ..timing }.validate().is_err());
/// ```
pub use lease::Timing;
pub use lock::{HeldLock, LeaseStatus, Lock, LockBuilder};

// The handles can be moved to and shared between tasks and threads (C-SEND-SYNC).
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Lock>();
    send_sync::<HeldLock>();
    send_sync::<Election>();
    send_sync::<Leadership>();
    send_sync::<Error>();
};
