//! The library's lease lock: a [`Lock`] is built once (backend, name, identity, timings, slots), then
//! acquired as many times as needed. Each acquisition runs in a background task on the caller's tokio
//! runtime: it campaigns, hands out a [`HeldLock`], renews it until the holder releases or drops it or
//! the lease is lost, and gives back whatever it holds, or may hold, on every way out.
//!
//! `mpsync lock` and `mpsync elect` are built on this same type (see `run.rs`).

use std::future::Future;
#[cfg(feature = "file")]
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, OwnedMutexGuard, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::engine::{self, Campaigned, Ignore, Observer, Slot, Wait};
use crate::error::{Error, Result};
use crate::lease::{Elector, LossReason, Timing};
use crate::store::{Store, StoreError};
use crate::validate;

/// Builds a [`Lock`]: start with [`Lock::kube`] or [`Lock::file`], set options, then [`build`](Self::build).
///
/// Every option is checked once, by `build`, as the CLI checks its flags.
#[must_use = "a LockBuilder does nothing until `build` is called"]
pub struct LockBuilder {
    backend: Backend,
    name: String,
    identity: Option<String>,
    timing: Timing,
    slots: Option<u32>,
    observer: Arc<dyn Observer>,
}

/// Where the lease lives, as the builder was given it; the store is made by `build`, with the call
/// timeout of the final timings.
enum Backend {
    #[cfg(feature = "kube")]
    Kube { client: kube::Client, namespace: String },
    #[cfg(feature = "file")]
    File { dir: PathBuf },
    /// A store the CLI opened from its flags (its call timeout already set).
    #[cfg(feature = "cli")]
    Store(Store),
}

/// A lease lock (or an N-slot semaphore) that this process can acquire and hold.
///
/// A `Lock` is one holder, with one identity: at most one [`HeldLock`] from it (and its clones) exists
/// at a time. While one is alive, [`acquire`](Lock::acquire) waits for it to be released or dropped,
/// and [`try_acquire`](Lock::try_acquire) returns `None`, as for a `tokio::sync::Mutex`. For two
/// holders in one process, build two `Lock`s: each gets an identity of its own.
///
/// Cloning is cheap and shares the lock. Needs a tokio runtime with timers (`enable_time`, and
/// `enable_io` for the Kubernetes client): the renewal runs in a task spawned on the runtime that
/// acquired the lock.
///
/// ```no_run
/// # async fn example(client: kube::Client) -> mpsync::Result<()> {
/// use std::time::Duration;
/// use mpsync::{Lock, Timing};
///
/// let lock = Lock::kube(client, "default", "nightly-report")
///     .timing(Timing { lease_duration: Duration::from_secs(30), ..Timing::DEFAULT })
///     .build()?;
/// match lock.try_acquire().await? {
///     Some(held) => {
///         println!("running with fencing token {}", held.fencing_token());
///         // ... the job, passing held.cancellation_token() down ...
///         held.release().await?;
///     }
///     None => println!("another run holds the lease; skipping"),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Lock {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    identity: String,
    timing: Timing,
    namespace: String,
    /// `slots(n)`, as given (one slot is the plain lease, but its holder still learns its slot number).
    slot_count: Option<u32>,
    slot_names: Vec<String>,
    store: Store,
    observer: Arc<dyn Observer>,
    /// The slots and what they observed, kept across acquisitions (expiry clocks, earlier holds); one
    /// acquisition at a time uses them.
    slots: Arc<Mutex<Vec<Slot>>>,
    /// Acquisitions that are campaigning, waiting to, or holding; not those giving back what they got
    /// (see `take_slots`).
    active: AtomicUsize,
    /// Built by a library caller (not the CLI): errors name its options, not the CLI's flags.
    library: bool,
}

impl Inner {
    /// An error in the caller's words (see `library_wording`).
    fn worded(&self, err: Error) -> Error {
        if self.library { library_wording(err) } else { err }
    }

    /// Slots that have observed nothing yet, as a new process's would.
    fn fresh_slots(&self) -> Vec<Slot> {
        let semaphore = self.slot_count.filter(|n| *n > 1);
        let read_limit = Arc::new(tokio::sync::Semaphore::new(engine::SLOT_READS_AT_ONCE));
        self.slot_names
            .iter()
            .enumerate()
            .map(|(index, name)| {
                let elector = Elector::new(self.identity.clone(), self.timing).with_seed(crate::retry::random_u64());
                let elector = match semaphore {
                    Some(n) => elector.with_slots(n),
                    None => elector,
                };
                let slot = Slot::new(name.clone(), self.store.clone(), elector, Arc::clone(&self.observer))
                    .with_read_limit(Arc::clone(&read_limit));
                let slot = if semaphore.is_some() { slot.as_slot(index) } else { slot };
                if self.library { slot.for_library() } else { slot }
            })
            .collect()
    }
}

impl LockBuilder {
    fn new(backend: Backend, name: &str) -> LockBuilder {
        LockBuilder {
            backend,
            name: name.to_string(),
            identity: None,
            timing: Timing::DEFAULT,
            slots: None,
            observer: Arc::new(Ignore),
        }
    }

    /// The identity written as `holderIdentity`.
    ///
    /// Default: `<POD_NAME or hostname>_<random>`, made afresh for each `Lock`, so two processes (or two
    /// `Lock`s in one process) never share one by accident. Give one only to name holders in a way of
    /// your own; two holders must never be given the same. (A record under this identity that this
    /// `Lock` did not write is treated as another holder's: waited out, never shared.)
    pub fn identity(mut self, identity: impl Into<String>) -> LockBuilder {
        self.identity = Some(identity.into());
        self
    }

    /// The lease timings [default: [`Timing::DEFAULT`]: 15s, 10s, 2s], checked by `build` (see
    /// [`Timing::validate`]).
    pub fn timing(mut self, timing: Timing) -> LockBuilder {
        self.timing = timing;
        self
    }

    /// A semaphore: up to `n` holders at once, one Lease per slot, `NAME-0` .. `NAME-(n-1)`, with the
    /// Lease `NAME` as its marker recording `n` (as `mpsync lock --slots n`). Every user of the
    /// semaphore must give the same `n`. `slots(1)` is the plain lease `NAME`; `n` must be between 1
    /// and 1000.
    pub fn slots(mut self, n: u32) -> LockBuilder {
        self.slots = Some(n);
        self
    }

    /// The CLI's health endpoints and metrics watch every renewal; that is not part of the library's
    /// API (a program that wants it can watch `HeldLock::lost` and its own clock).
    #[cfg(feature = "cli")]
    pub(crate) fn observer(mut self, observer: Arc<dyn Observer>) -> LockBuilder {
        self.observer = observer;
        self
    }

    /// Check the options and build the lock. Nothing is sent to the API server yet (the file backend
    /// creates its lock directory, mode 0700, and checks it can write there).
    ///
    /// # Errors
    ///
    /// [`Error::Usage`] for an invalid name, namespace, identity, timings or slot count; [`Error::File`]
    /// if the lock directory cannot be created or written.
    pub fn build(self) -> Result<Lock> {
        #[cfg(feature = "cli")]
        let library = !matches!(self.backend, Backend::Store(_));
        #[cfg(not(feature = "cli"))]
        let library = true;
        // The checks are the CLI's; a library caller gets them in its own words.
        let reword = |err: Error| if library { library_wording(err) } else { err };
        validate::name(&self.name).map_err(reword)?;
        self.timing.validate().map_err(reword)?;
        let identity = match self.identity {
            Some(identity) => validate::identity(identity).map_err(reword)?,
            None => validate::default_identity(),
        };
        let slot_names = validate::slot_names(&self.name, self.slots).map_err(reword)?;
        let call_timeout = self.timing.call_timeout();
        let store = match self.backend {
            #[cfg(feature = "kube")]
            Backend::Kube { client, namespace } => {
                validate::namespace(&namespace).map_err(reword)?;
                Store::Kube(crate::store::kube::KubeStore::new(client, namespace, call_timeout))
            }
            #[cfg(feature = "file")]
            Backend::File { dir } => Store::File(
                crate::store::file::FileStore::open(dir, "default".into())
                    .map_err(reword)?
                    .with_call_timeout(call_timeout),
            ),
            #[cfg(feature = "cli")]
            Backend::Store(store) => store,
        };
        let mut inner = Inner {
            name: self.name,
            identity,
            timing: self.timing,
            namespace: store.namespace().to_string(),
            slot_count: self.slots,
            slot_names,
            store,
            observer: self.observer,
            slots: Arc::new(Mutex::new(Vec::new())),
            active: AtomicUsize::new(0),
            library,
        };
        inner.slots = Arc::new(Mutex::new(inner.fresh_slots()));
        Ok(Lock { inner: Arc::new(inner) })
    }
}

/// The CLI's messages name its flags; a library caller set a builder option, a `Timing` field or the
/// directory of `Lock::file` instead.
fn library_wording(err: Error) -> Error {
    const WORDS: [(&str, &str); 7] = [
        ("--lease-duration", "Timing::lease_duration"),
        ("--renew-deadline", "Timing::renew_deadline"),
        ("--retry-period", "Timing::retry_period"),
        ("--slots", "LockBuilder::slots"),
        ("--identity", "LockBuilder::identity"),
        ("pass --lock-dir with", "give Lock::file"),
        ("(--lock-dir)", "(Lock::file)"),
    ];
    let reword = |message: String| WORDS.iter().fold(message, |message, (flag, option)| message.replace(flag, option));
    match err {
        Error::Usage(message) => Error::Usage(reword(message)),
        Error::File(message) => Error::File(reword(message)),
        Error::Api(message) => Error::Api(reword(message)),
        other => other,
    }
}

impl Lock {
    /// A lock on the Lease `name` in `namespace`, through `client`.
    ///
    /// `client` must come from the same `kube` version as mpsync's (kube 5). mpsync bounds every call
    /// by its own timeout and retries by its own rules; a client built with kube's retry layer
    /// (`kube::Config::default_retry`, on by default) still works, its retries only hide failed
    /// attempts (the CLI turns it off). The identity needs `get`, `list`, `watch`, `create` and
    /// `update` on `leases` in `namespace` (see `deploy/rbac.yaml`).
    ///
    /// With the `client` feature, `mpsync::kube_client()` or `mpsync::KubeClientBuilder` builds the
    /// client the CLI uses (with `TCP_NODELAY`: kube's own, below, waits 40 ms on every new connection).
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = kube::Config::from_custom_kubeconfig(
    ///     kube::config::Kubeconfig::read_from("/etc/my-app/kubeconfig")?,
    ///     &kube::config::KubeConfigOptions::default(),
    /// )
    /// .await?;
    /// let client = kube::Client::try_from(config)?;
    /// let lock = mpsync::Lock::kube(client, "default", "my-lease").build()?;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "kube")]
    pub fn kube(client: kube::Client, namespace: &str, name: &str) -> LockBuilder {
        LockBuilder::new(Backend::Kube { client, namespace: namespace.to_string() }, name)
    }

    /// A lock on the lease `name` kept in files under `dir`, for processes on one machine (as
    /// `mpsync --backend file --lock-dir DIR`, which shares these leases).
    ///
    /// The records are Lease objects as JSON (`NAME.json`), written by compare-and-swap under an
    /// `flock` on the directory itself; waiting is driven by inotify. `dir` is created (mode 0700) by `build`;
    /// a relative `dir` is taken from the current directory when the lock is built, and a later change of
    /// directory does not move it. A directory on a network file system (NFS, SMB) is refused.
    ///
    /// ```no_run
    /// # async fn example() -> mpsync::Result<()> {
    /// let lock = mpsync::Lock::file("/run/my-app/locks", "backup").build()?;
    /// let held = lock.acquire().await?;
    /// // ... the backup ...
    /// held.release().await?;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "file")]
    pub fn file(dir: impl Into<PathBuf>, name: &str) -> LockBuilder {
        LockBuilder::new(Backend::File { dir: dir.into() }, name)
    }

    /// The CLI opens its store from its flags (`--backend`, `--kubeconfig`, `--lock-dir`), with its own
    /// client settings; a library caller brings a `kube::Client` or a directory instead.
    #[cfg(feature = "cli")]
    pub(crate) fn with_store(store: Store, name: &str) -> LockBuilder {
        LockBuilder::new(Backend::Store(store), name)
    }

    /// The lease name (for a semaphore, its marker's: the slots are `NAME-i`).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The identity this lock holds the lease under (`holderIdentity`).
    pub fn identity(&self) -> &str {
        &self.inner.identity
    }

    /// The namespace of the Lease (`"default"` for the file backend, where it is a label only).
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// The timings the lease is held with.
    pub fn timing(&self) -> Timing {
        self.inner.timing
    }

    /// Wait until the lease (or one slot of a semaphore) is acquired, however long that takes.
    ///
    /// Waiting is driven by a watch on the Lease: a released lease is taken at once; a held one after
    /// its holder's `leaseDurationSeconds` has passed without a change, as observed by this process.
    /// Transient API failures are retried (and logged through `tracing`) for as long as it takes.
    ///
    /// Cancel-safe: dropping the future stops the campaign and gives back, in the background, anything
    /// it may have acquired.
    ///
    /// One acquisition at a time per `Lock`: this waits for an earlier [`HeldLock`] of it to be released
    /// or dropped, also one that was lost (its work is to stop first); a retry loop after a loss drops the
    /// lost one before it acquires again.
    ///
    /// # Errors
    ///
    /// [`Error::Api`] or [`Error::File`] when retrying cannot help: the API server refused (RBAC,
    /// missing namespace), or the lease can never be acquired as it stands (its fencing token is at its
    /// maximum; it belongs to a semaphore of another size).
    pub async fn acquire(&self) -> Result<HeldLock> {
        match self.start(Wait::Forever).attempt().await? {
            Attempt::Held(held) => Ok(held),
            Attempt::NotAcquired { .. } => Err(Error::Internal("the campaign ended without the lease".into())),
        }
    }

    /// One attempt: `Ok(None)` if the lease (every slot) is held by another holder, or by this `Lock`.
    ///
    /// A lease seen held is not waited for. A failing API server is retried for up to a lease duration;
    /// if it is still failing then, the answer is [`Error::Unavailable`].
    ///
    /// # Errors
    ///
    /// As [`acquire`](Lock::acquire), and [`Error::Unavailable`].
    pub async fn try_acquire(&self) -> Result<Option<HeldLock>> {
        self.start(Wait::NoWait).attempt().await?.into_option(self.name())
    }

    /// Wait at most `timeout`: `Ok(None)` if the lease was not acquired by then. `Duration::ZERO` is
    /// one attempt, as [`try_acquire`](Lock::try_acquire) (and `mpsync lock --timeout 0`, `flock -w 0`);
    /// any other timeout is a hard bound, also on the first look (a timeout shorter than the API
    /// server's round trip may end before the lease was read), but for the time it takes to give back
    /// a hold taken as it ran out (one release, within a call timeout).
    ///
    /// # Errors
    ///
    /// As [`acquire`](Lock::acquire), and [`Error::Unavailable`] if the API server was failing when the
    /// time ran out.
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<Option<HeldLock>> {
        // Zero: one look, not none (found by review, helper-130: a free lease was never acquired).
        if timeout.is_zero() {
            return self.try_acquire().await;
        }
        // A timeout too long for the clock is as good as none.
        let wait = Instant::now().checked_add(timeout).map_or(Wait::Forever, Wait::Until);
        self.start(wait).attempt().await?.into_option(self.name())
    }

    /// Start a campaign in the background. Dropping the returned future gives back anything it may
    /// have acquired, in the background; [`Acquiring::cancel`] does so and waits for it. (The CLI needs
    /// that wait: on SIGTERM it exits right after, and must leave nothing held. A library caller that
    /// needs it uses `Election::shutdown`.)
    pub(crate) fn start(&self, wait: Wait) -> Acquiring {
        let (result_tx, result_rx) = oneshot::channel();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(acquisition(Arc::clone(&self.inner), wait, result_tx, cancel.clone()));
        Acquiring { result: result_rx, cancel, task: Some(task) }
    }
}

impl std::fmt::Debug for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lock")
            .field("name", &self.inner.name)
            .field("namespace", &self.inner.namespace)
            .field("identity", &self.inner.identity)
            .field("timing", &self.inner.timing)
            .field("slots", &self.inner.slot_count)
            .finish()
    }
}

impl std::fmt::Debug for LockBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match &self.backend {
            #[cfg(feature = "kube")]
            Backend::Kube { namespace, .. } => format!("kube (namespace {namespace})"),
            #[cfg(feature = "file")]
            Backend::File { dir } => format!("file ({})", dir.display()),
            #[cfg(feature = "cli")]
            Backend::Store(store) => format!("store (namespace {})", store.namespace()),
        };
        f.debug_struct("LockBuilder")
            .field("backend", &backend)
            .field("name", &self.name)
            .field("identity", &self.identity)
            .field("timing", &self.timing)
            .field("slots", &self.slots)
            .finish()
    }
}

/// A Lease as it stands, for people and programs: who holds it, and since when.
///
/// `held` is judged from the record's own timestamps on this machine's clock, for display: mpsync
/// never decides anything that way (it judges expiry by when it *observed* a change).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct LeaseStatus {
    /// The Lease (for a semaphore, the slot's Lease).
    pub name: String,
    /// For a semaphore: the slot.
    pub slot: Option<usize>,
    /// Whether the Lease exists.
    pub exists: bool,
    /// `holderIdentity`, if someone holds it (`None` when free).
    pub holder: Option<String>,
    /// A holder is named and its record has not expired by its own timestamps (`renewTime +
    /// leaseDurationSeconds`), judged on this machine's clock now.
    pub held: bool,
    /// `acquireTime`.
    pub acquire_time: Option<k8s_openapi::jiff::Timestamp>,
    /// `renewTime`.
    pub renew_time: Option<k8s_openapi::jiff::Timestamp>,
    /// `leaseDurationSeconds`.
    pub lease_duration_seconds: Option<i32>,
    /// `leaseTransitions`: the fencing token of the last acquisition.
    pub transitions: i32,
}

impl LeaseStatus {
    fn new(name: &str, slot: Option<usize>, current: Option<&crate::lease::Versioned>) -> LeaseStatus {
        let record = current.map(|v| v.record.clone()).unwrap_or_default();
        let holder = record.holder_identity.clone().filter(|h| !h.is_empty());
        let renew_time = record.renew_time.as_ref().map(|t| t.0);
        let expires = match (renew_time, record.lease_duration_seconds) {
            (Some(renewed), Some(seconds)) if seconds > 0 => {
                renewed.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(i64::from(seconds))).ok()
            }
            _ => None,
        };
        let now = k8s_openapi::jiff::Timestamp::now();
        LeaseStatus {
            name: name.to_string(),
            slot,
            exists: current.is_some(),
            held: holder.is_some() && expires.is_none_or(|expires| expires > now),
            holder,
            acquire_time: record.acquire_time.as_ref().map(|t| t.0),
            renew_time,
            lease_duration_seconds: record.lease_duration_seconds,
            transitions: record.lease_transitions.unwrap_or(0),
        }
    }
}

impl Lock {
    /// The Lease as it stands now: one read (for a semaphore, one per slot, in slot order).
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] if the read failed (it is not retried), [`Error::Api`] or [`Error::File`] if
    /// it was refused.
    pub async fn status(&self) -> Result<Vec<LeaseStatus>> {
        let mut statuses = Vec::new();
        for (index, name) in self.inner.slot_names.iter().enumerate() {
            let current =
                self.inner.store.get(name).await.map_err(|err| self.inner.worded(store_error(name, "read", err)))?;
            statuses.push(LeaseStatus::new(name, self.inner.slot_count.map(|_| index), current.as_ref()));
        }
        Ok(statuses)
    }

    /// Every change of holder (of every slot, for a semaphore), from now on: the current state first,
    /// then one item each time the holder, the fencing token, the Lease's existence or `held` changes
    /// (renewals are not reported; a record that expires by its own timestamps, its holder gone without
    /// releasing, is).
    ///
    /// Driven by a watch (inotify for the file backend) that reconnects on its own; while it is down
    /// the Lease is polled every `retry_period`. The stream ends only when its reads are refused in a way
    /// retrying will not fix (credentials refused, reading the Lease, or one slot's, forbidden):
    /// [`Lock::status`] then says why. Otherwise it never ends; drop it to stop. While a lease's record
    /// cannot be used (with the file backend: not a Lease, or a directory in the way of its writes),
    /// nothing more is reported of that lease; [`Lock::status`] says why.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime: the watches are tasks on the runtime it is called on.
    ///
    /// ```no_run
    /// # async fn example(lock: mpsync::Lock) {
    /// use futures::StreamExt;
    ///
    /// let mut changes = std::pin::pin!(lock.observe());
    /// while let Some(status) = changes.next().await {
    ///     println!("{}: held by {:?}", status.name, status.holder);
    /// }
    /// # }
    /// ```
    pub fn observe(&self) -> impl futures::Stream<Item = LeaseStatus> + Send + 'static {
        use futures::StreamExt;
        let retry_period = self.inner.timing.retry_period;
        let streams = self.inner.slot_names.iter().enumerate().map(|(index, name)| {
            let watch = self.inner.store.watch(name, retry_period);
            let store = self.inner.store.clone();
            let slot = self.inner.slot_count.map(|_| index);
            let name = name.clone();
            type Key = (Option<String>, i32, bool, bool);
            // The last record seen, and whether it came from a read at its expiry (below), not the watch.
            let start = (watch, None::<Key>, None::<crate::lease::Versioned>, false);
            futures::stream::unfold(start, move |(mut watch, mut last, mut seen, mut read_last)| {
                let name = name.clone();
                let store = store.clone();
                async move {
                    // A read at the expiry below that failed: made again a retry period later, and the
                    // expiry not reported meanwhile (found by review, helper-161: one 503 to that read,
                    // with the watch stuck, reported a renewed lease free until the watch moved again).
                    let mut read_again = false;
                    loop {
                        // A held record turns free when its own expiry passes, with no event to say so (its
                        // holder died): that is a change too (found by review: `held` stayed true for ever).
                        let now = k8s_openapi::jiff::Timestamp::now();
                        let expiry = seen
                            .as_ref()
                            .filter(|current| read_again || crate::lease::held_at(&current.record, now))
                            .and_then(|current| crate::lease::expiry(&current.record));
                        let expired = async {
                            match expiry {
                                Some(_) if read_again => tokio::time::sleep(retry_period).await,
                                Some(at) => {
                                    let wait: Duration = at.duration_since(now).try_into().unwrap_or(Duration::ZERO);
                                    tokio::time::sleep(wait + Duration::from_millis(1)).await;
                                }
                                None => std::future::pending().await,
                            }
                        };
                        let mut from_read = false;
                        let current = tokio::select! {
                            update = watch.updates.recv() => {
                                let update = match update {
                                    Some(update) => update,
                                    // The watch ends on its own only when its reads were refused: a
                                    // refusal that has passed by now (a token refreshed) ends nothing, and
                                    // the watch starts again; one that stands ends the stream (found by
                                    // review, helper-148: one passing 401 ended it, and ended one slot of
                                    // a semaphore in silence while the others went on).
                                    None => match store.get(&name).await {
                                        // Only a refusal that stands ends the stream; anything else is
                                        // watched again, paced (a refusal that comes and goes must not
                                        // make a list, a get and a get in a loop without pause).
                                        Err(StoreError::Fatal(_)) => return None,
                                        _ => {
                                            tokio::time::sleep(retry_period).await;
                                            watch = store.watch(&name, retry_period);
                                            continue;
                                        }
                                    },
                                };
                                match update {
                                    // Older than a read of the lease's since (below): a read tells whether
                                    // it changes anything (see `read_behind_an_older_event`).
                                    // A deletion too (found by review, rv232: a stale deletion was
                                    // reported after the newer record read).
                                    // After a read that found no lease, any record (found by review,
                                    // rv234: a lagging watch's stale holder was reported after the read
                                    // had found the lease deleted). A deletion or an absence then changes
                                    // nothing, and is passed over with the check kept (found by review,
                                    // rv236: a stale deletion ended the check, and the stale holder after
                                    // it was reported).
                                    crate::lease::WatchUpdate::Absent { .. } | crate::lease::WatchUpdate::Deleted { .. }
                                        if read_last && seen.is_none() => continue,
                                    event
                                        if read_last && match seen.as_ref() {
                                            Some(known) => crate::lease::is_older(event.resource_version(), &known.resource_version),
                                            None => matches!(event, crate::lease::WatchUpdate::Present(_)),
                                        } =>
                                    {
                                        let known = seen.as_ref().map(|known| known.resource_version.clone()).unwrap_or_default();
                                        match read_behind_an_older_event(&store, &name, &known, retry_period).await {
                                            Ok(None) => continue,
                                            Ok(Some(read)) => {
                                                from_read = true;
                                                read
                                            }
                                            Err(_) => return None,
                                        }
                                    }
                                    crate::lease::WatchUpdate::Present(current) => Some(current),
                                    _ => None,
                                }
                            }
                            // Expired as the watch showed it last; the watch may be stuck (open and silent
                            // while the holder renews): read before reporting it free (found by review,
                            // helper-133).
                            () = expired => match store.get(&name).await {
                                Ok(read) => {
                                    // Older than the record known: versions went back, and the read is the
                                    // record now (found by review, rv231: the stale record was reported).
                                    if read.as_ref().zip(seen.as_ref()).is_some_and(|(read, known)| {
                                        crate::lease::is_older(&read.resource_version, &known.resource_version)
                                    }) {
                                        crate::lease::warn_versions_went_back(&name);
                                    }
                                    from_read = true;
                                    read
                                }
                                Err(StoreError::Fatal(_)) => return None,
                                Err(err) => {
                                    tracing::debug!(lease = %name, error = %err, "reading the lease at its expiry failed; reading again");
                                    read_again = true;
                                    continue;
                                }
                            },
                        };
                        read_again = false;
                        let status = LeaseStatus::new(&name, slot, current.as_ref());
                        seen = current;
                        read_last = from_read;
                        let key = (status.holder.clone(), status.transitions, status.exists, status.held);
                        if last.as_ref() != Some(&key) {
                            last = Some(key);
                            return Some((status, (watch, last, seen, read_last)));
                        }
                    }
                }
            })
            // One slot's end ends them all: its reads are refused ([`Lock::status`] says why).
            .map(Some)
            .chain(futures::stream::once(async { None }))
            .boxed()
        });
        futures::stream::select_all(streams)
            .take_while(|status| std::future::ready(status.is_some()))
            .filter_map(std::future::ready)
    }
}

/// A store failure, for the library's caller: one that retrying will not fix as it is; any other means
/// the store could not be reached in time.
fn store_error(lease: &str, what: &str, err: StoreError) -> Error {
    match err {
        StoreError::Fatal(err) => err,
        other => Error::Unavailable(format!("cannot {what} lease {lease}: {other}")),
    }
}

/// How a campaign ended, in full (the CLI needs only whether it holds the lease).
pub(crate) enum Attempt {
    Held(HeldLock),
    /// Not acquired; the store's error, if it was failing at the end.
    NotAcquired {
        last_error: Option<String>,
    },
}

impl Attempt {
    /// For the library: a store that was failing at the end is an error, not a "held by another".
    fn into_option(self, lease: &str) -> Result<Option<HeldLock>> {
        match self {
            Attempt::Held(held) => Ok(Some(held)),
            Attempt::NotAcquired { last_error: None } => Ok(None),
            Attempt::NotAcquired { last_error: Some(err) } => {
                Err(Error::Unavailable(format!("lease {lease} not acquired: the store kept failing: {err}")))
            }
        }
    }
}

/// A campaign on its way (see [`Lock::start`]). As a future it answers what the CLI needs: the held
/// lock, or `None` when not acquired.
pub(crate) struct Acquiring {
    result: oneshot::Receiver<Result<Attempt>>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Acquiring {
    /// Stop the campaign and wait until it has given back whatever it held or may hold.
    pub async fn cancel(mut self) {
        self.cancel.cancel();
        self.result.close();
        // A lock acquired just now and not yet taken: dropping it releases it.
        drop(self.result.try_recv());
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// The whole answer (see [`Attempt`]).
    async fn attempt(mut self) -> Result<Attempt> {
        (&mut self.result).await.unwrap_or_else(|_| Err(ended_unexpectedly()))
    }
}

/// The lease task ended without an answer: its runtime was shut down, or it panicked (found by review: a
/// runtime built without timers, whose panic message says so, was reported as shut down only).
fn ended_unexpectedly() -> Error {
    Error::Internal(
        "the lease task ended unexpectedly: its runtime was shut down, or it panicked (a tokio runtime needs \
         timers and I/O: enable_all())"
            .into(),
    )
}

impl Future for Acquiring {
    type Output = Result<Option<HeldLock>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.result).poll(cx).map(|received| match received {
            Ok(Ok(Attempt::Held(held))) => Ok(Some(held)),
            Ok(Ok(Attempt::NotAcquired { .. })) => Ok(None),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(ended_unexpectedly()),
        })
    }
}

/// The state a held lock shares with its background task.
#[derive(Clone, Debug)]
pub(crate) struct HoldState {
    /// The lease counts as lost at this moment unless a renewal sent before it succeeds.
    deadline: Instant,
    lost: Option<LossReason>,
    /// The task that renewed the lease was dropped unfinished (its runtime shut down): nothing gives the lease
    /// back any more.
    dropped: bool,
}

/// The renew deadline of a held lock as it moves (see `HeldLock::deadlines`).
#[cfg(feature = "cli")]
pub(crate) struct Deadlines(watch::Receiver<HoldState>);

#[cfg(feature = "cli")]
impl Deadlines {
    /// The deadline now.
    pub(crate) fn current(&mut self) -> Instant {
        self.0.borrow_and_update().deadline
    }

    /// Wait until it moves (or the lock is gone: then never).
    pub(crate) async fn changed(&mut self) -> Instant {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        self.current()
    }
}

/// The answer to a release: whether a release was written (`false`: the record was not ours to give back).
type ReleaseReply = oneshot::Sender<Result<bool>>;

/// A held lease, renewed in the background until it is released, dropped or lost.
///
/// Pass [`fencing_token`](Self::fencing_token) with every write to what the lease protects, and
/// [`cancellation_token`](Self::cancellation_token) (or [`lost`](Self::lost)) to the work, so that it
/// stops when the lease is lost. End with [`release`](Self::release), so that the next holder takes
/// over at once.
///
/// # Dropping
///
/// Dropping a `HeldLock` without releasing it is safe: its cancellation token is cancelled at once,
/// and the lease is given back in the background, as `release` would (only if the record is still
/// this holder's own write), on the runtime it was acquired on. Nothing waits for that: a program that
/// exits right after the drop, or whose runtime shuts down first, leaves the lease to expire after
/// `lease_duration`. Await `release` to be sure it was given back.
#[must_use = "dropping a HeldLock releases the lease at once"]
pub struct HeldLock {
    name: String,
    slot: Option<usize>,
    fencing_token: i32,
    timing: Timing,
    state: watch::Receiver<HoldState>,
    token: CancellationToken,
    release: mpsc::Sender<ReleaseReply>,
    /// Counts the acquisition as active while the lock is in the caller's hands: dropping or releasing
    /// it ends that at once, so that one attempt made right after waits for the giving back instead of
    /// answering "held by this very lock".
    _active: Active,
}

impl HeldLock {
    /// The Lease held (for a semaphore, the slot's Lease `NAME-i`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The slot held, for a semaphore (`Some(0)` for `slots(1)`); `None` for a plain lock.
    pub fn slot(&self) -> Option<usize> {
        self.slot
    }

    /// `leaseTransitions` of this acquisition: larger than that of every earlier holder of this Lease
    /// (of this slot). Pass it with every write to what the lease protects, and have that reject tokens
    /// lower than the highest it has seen: that keeps a holder that was frozen past its lease out.
    pub fn fencing_token(&self) -> i32 {
        self.fencing_token
    }

    /// Whether the lease is lost: renewal has failed for the renew deadline (judged on this
    /// machine's monotonic clock now), or another holder or a deletion was seen.
    pub fn is_lost(&self) -> bool {
        self.token.is_cancelled() || lost_now(&self.state)
    }

    /// Why the lease is lost, if it is now, as [`is_lost`](Self::is_lost) judges it.
    pub(crate) fn loss_now(&self) -> Option<LossReason> {
        self.is_lost().then(|| self.state.borrow().lost.clone().unwrap_or(LossReason::RenewDeadline))
    }

    /// The renew deadline as it stands: the lease counts as lost at this moment unless a renewal sent
    /// before it succeeds.
    pub(crate) fn deadline(&self) -> Instant {
        self.state.borrow().deadline
    }

    /// What `is_lost` looks at, for those who must judge it like the lock does (`Leadership`).
    pub(crate) fn hold_state(&self) -> watch::Receiver<HoldState> {
        self.state.clone()
    }

    /// Resolves when the lease is lost, with the reason: at the latest when renewal has failed for
    /// `renew_deadline`, counted from when the last successful renewal was *sent*, which is before
    /// anyone else can take the lease over (they wait `lease_duration` from when they *observed* that
    /// renewal); earlier if another holder or a deletion of the Lease is seen.
    ///
    /// Does not resolve on [`release`](Self::release) (which consumes the lock). Cancel-safe.
    pub async fn lost(&self) -> LossReason {
        let reason = self.loss().await;
        // The token too, as documented, whatever the watchdog does: a renewal answered in the instant between
        // the deadline passing here and the watchdog waking moved the deadline on, and the watchdog then
        // cancelled nothing, so `is_lost` read false again after this had resolved (review, rv217).
        self.token.cancel();
        reason
    }

    async fn loss(&self) -> LossReason {
        let mut state = self.state.clone();
        loop {
            let HoldState { deadline, lost, .. } = state.borrow_and_update().clone();
            if let Some(reason) = lost {
                return reason;
            }
            // Past the deadline already (a runtime that did not run then): lost now, without a timer.
            if Instant::now() >= deadline {
                return LossReason::RenewDeadline;
            }
            tokio::select! {
                // Cancelled at the deadline (by the watchdog) or on a loss: the reason follows, if any.
                () = self.token.cancelled() => {
                    return state.borrow().lost.clone().unwrap_or(LossReason::RenewDeadline);
                }
                changed = state.changed() => if changed.is_err() {
                    // The background task is gone: only the deadline is left to go by.
                    engine::sleep_until_instant(deadline).await;
                    return LossReason::RenewDeadline;
                },
                () = engine::sleep_until_instant(deadline) => {
                    if state.borrow().deadline <= Instant::now() {
                        return state.borrow().lost.clone().unwrap_or(LossReason::RenewDeadline);
                    }
                }
            }
        }
    }

    /// The moment the lease counts as lost unless a renewal sent before then succeeds, and a way to wait
    /// for it to move (for a supervisor that enforces it on its own: the CLI's guard).
    #[cfg(feature = "cli")]
    pub(crate) fn deadlines(&self) -> Deadlines {
        Deadlines(self.state.clone())
    }

    /// A token cancelled when the lease is lost (at the same moment [`lost`](Self::lost) resolves), or
    /// when this `HeldLock` is released or dropped. Pass it (or child tokens) to the work done under the
    /// lease: `token.cancelled()` in a `select!`, `token.is_cancelled()` between steps. At the renew
    /// deadline it is cancelled by a thread of mpsync's own, so also while the runtime that renews the
    /// lease does not run (work done outside `block_on`, or blocking the runtime's only thread).
    /// Cancelling it yourself (to stop your own workers, say) stops only them: the lease stays held
    /// and renewed until it is released or dropped.
    pub fn cancellation_token(&self) -> CancellationToken {
        // A child: cancelling it stops the caller's work, never the hold.
        self.token.child_token()
    }

    /// The timings the lease is held with.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Give the lease back now, so that the next holder takes over at once: `holderIdentity` cleared
    /// and `leaseDurationSeconds: 1`, as client-go writes it, by a compare-and-swap, and only if the
    /// record is still this holder's own write. The cancellation token is cancelled before the release
    /// is written. Returns once the release is written (or found unnecessary), within a few API call
    /// timeouts. The release is written by the task that renews the lease, on the runtime that acquired
    /// it: if that runtime does not run (an idle current-thread runtime, the lock released from another
    /// runtime's thread), this ends with [`Error::Unavailable`] after four call timeouts, and the release
    /// is written when that runtime runs again.
    ///
    /// Releasing a lease that was lost writes nothing if another holder may have it, and is then not an
    /// error. Lost at the renew deadline (cut off from the API server), the record may still be this
    /// holder's own write: it is given back as above, and if that cannot be checked the answer is an
    /// error as below (the lease then expires after its duration).
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] (or [`Error::Api`], [`Error::File`]) if the release could not be written:
    /// the lease then expires after its duration; nobody else can take it before that. Also
    /// [`Error::Unavailable`] if the runtime that acquired the lock was shut down while the record may still
    /// have been this holder's (before a loss, which then is [`LossReason::Abandoned`], or after one at the
    /// renew deadline): nothing can write the release, and the lease expires after its duration.
    pub async fn release(self) -> Result<()> {
        self.give_back().await.map(drop)
    }

    /// As [`release`](Self::release), and says whether a release was written: `false` when the record was
    /// not ours to give back (lost, or renewed under our identity by another writer lately: it expires
    /// after its duration).
    pub(crate) async fn give_back(self) -> Result<bool> {
        let (reply_tx, reply_rx) = oneshot::channel();
        // The release is written by the task that renews the lease, on the runtime that acquired it: one
        // that does not run (an idle current-thread runtime, released from another runtime's thread) would
        // keep this waiting for ever. Past the time a release can take (two settle budgets, and a margin),
        // the caller hears so; the request stays queued, and is written if that runtime runs again.
        let bound = self.timing.call_timeout() * 4;
        // The task may have ended (before the request, or with it queued or under way): the hold was lost, and
        // given back if it could be. Not when its runtime was shut down while the record may still have been
        // its own (before a loss, or after one at the renew deadline): nothing was written, and the caller
        // hears so (found by review, rv261, rv262, rv264: `Ok` read as "handed over"). Said once the task is
        // wholly gone, its state's sender with it: the parts of a task dropped go one by one.
        let name = self.name.clone();
        let ended = |mut state: watch::Receiver<HoldState>| async move {
            let _ = tokio::time::timeout(bound, async { while state.changed().await.is_ok() {} }).await;
            let state = state.borrow();
            let unwritten =
                state.dropped && matches!(state.lost, Some(LossReason::Abandoned | LossReason::RenewDeadline));
            match unwritten {
                true => Err(Error::Unavailable(format!(
                    "lease {name}: the runtime that acquired the lock was shut down, so the release cannot be \
                     written; the lease expires after its duration"
                ))),
                false => Ok(false),
            }
        };
        if self.release.send(reply_tx).await.is_err() {
            return ended(self.state.clone()).await;
        }
        match tokio::time::timeout(bound, reply_rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => ended(self.state.clone()).await,
            Err(_) => Err(Error::Unavailable(format!(
                "lease {}: the release was not written within {bound:?}: the runtime that acquired the lock is \
                 not running its task; the lease is written then, or expires after its duration",
                self.name
            ))),
        }
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        // The way to ask for the release closes first, so that the task (on another thread, maybe) never
        // takes the token's cancellation for a loss; then the work stops with the lock, at once, whenever
        // the background task gets to run.
        drop(std::mem::replace(&mut self.release, mpsc::channel(1).0));
        self.token.cancel();
    }
}

impl std::fmt::Debug for HeldLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldLock")
            .field("name", &self.name)
            .field("slot", &self.slot)
            .field("fencing_token", &self.fencing_token)
            .field("lost", &self.is_lost())
            .finish()
    }
}

/// After a read at an expiry showed the record at version `known` (see `Lock::observe`), the watch delivered
/// an older record: a watch behind that read (stuck, catching up), or versions that went back (an etcd
/// restored, a lock directory put back). A read tells which, made again every `pause` until one answers:
/// `None` when nothing changed (the read is at `known`; `known` is empty after a read that found no lease,
/// and then any read is reported, an absent one changing nothing); else the record read, which is the record now
/// (found by review, rv231: every later event was skipped, and a new holder never reported, until the
/// versions passed the read's). `Err` for a refusal that stands.
pub(crate) async fn read_behind_an_older_event(
    store: &Store,
    name: &str,
    known: &str,
    pause: Duration,
) -> std::result::Result<Option<Option<crate::lease::Versioned>>, StoreError> {
    let read = loop {
        match store.get(name).await {
            Ok(read) => break read,
            Err(err @ StoreError::Fatal(_)) => return Err(err),
            Err(err) => {
                tracing::debug!(lease = %name, error = %err, "reading the lease failed; reading again");
                tokio::time::sleep(pause).await;
            }
        }
    };
    Ok(behind_an_older_event(name, read, known))
}

/// What `read`, made after an older event than the read at version `known` (see
/// `read_behind_an_older_event`), shows: `None` when nothing changed, else the record now.
pub(crate) fn behind_an_older_event(
    name: &str,
    read: Option<crate::lease::Versioned>,
    known: &str,
) -> Option<Option<crate::lease::Versioned>> {
    match read.as_ref().map(|read| read.resource_version.as_str()) {
        Some(version) if crate::lease::is_older(version, known) => crate::lease::warn_versions_went_back(name),
        Some(version) if version == known => return None,
        _ => {}
    }
    Some(read)
}

/// Whether a lease is lost by what its task said and by the clock now: a process frozen past the renew
/// deadline knows at once when it runs again, before the task has run.
pub(crate) fn lost_now(state: &watch::Receiver<HoldState>) -> bool {
    let state = state.borrow();
    state.lost.is_some() || Instant::now() >= state.deadline
}

/// Counts an acquisition as active (see `Inner::active`) until dropped.
struct Active(Arc<Inner>);

impl Active {
    fn new(inner: &Arc<Inner>) -> (Active, usize) {
        let others = inner.active.fetch_add(1, Ordering::SeqCst);
        (Active(Arc::clone(inner)), others)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Take the slots for one acquisition: one at a time per `Lock`, so a second acquisition waits for the
/// first to end, as long as the wait allows (`None`: not within it, or the campaign was dropped).
///
/// One attempt (`NoWait`) does not wait for another acquisition of this lock that campaigns or holds:
/// the lease is not to be had. It does wait for one that is only giving back what it got (a lock
/// released or dropped just now), for as long as a give-back takes (its call on the wire, then one
/// settle budget: each a call timeout). A give-back whose write got no answer in that time (an API server
/// slower than the call timeout) leaves the lease held by this `Lock` as far as it knows, and the attempt
/// answers so, `None`, as documented (review, rv217).
async fn take_slots(
    inner: &Inner,
    wait: Wait,
    others: usize,
    result_tx: &mut oneshot::Sender<Result<Attempt>>,
    cancel: &CancellationToken,
) -> Option<OwnedMutexGuard<Vec<Slot>>> {
    let slots = Arc::clone(&inner.slots);
    let deadline = match wait {
        Wait::NoWait => match Arc::clone(&slots).try_lock_owned() {
            Ok(slots) => return Some(slots),
            Err(_) if others > 0 => return None,
            Err(_) => Some(Instant::now() + inner.timing.call_timeout() * 2),
        },
        Wait::Forever => None,
        Wait::Until(at) => Some(at),
    };
    tokio::select! {
        slots = slots.lock_owned() => Some(slots),
        () = async {
            match deadline {
                Some(at) => engine::sleep_until_instant(at).await,
                None => std::future::pending().await,
            }
        } => None,
        () = cancel.cancelled() => None,
        () = result_tx.closed() => None,
    }
}

/// One acquisition, start to end: campaign, hand out the held lock, renew, give back.
async fn acquisition(
    inner: Arc<Inner>,
    wait: Wait,
    mut result_tx: oneshot::Sender<Result<Attempt>>,
    cancel: CancellationToken,
) {
    let (active, others) = Active::new(&inner);
    let Some(mut slots) = take_slots(&inner, wait, others, &mut result_tx, &cancel).await else {
        // Held by this very Lock (or the campaign is gone): not acquired, and nothing to give back.
        drop(result_tx.send(Ok(Attempt::NotAcquired { last_error: None })));
        return;
    };
    let budget = inner.timing.call_timeout();
    // An acquisition whose task was dropped unfinished (its runtime shut down while it held the lease)
    // left its hold in the slots: give it back first, so that this acquisition writes anew, with a larger
    // fencing token, and never hands out that hold a second time.
    // A read left in flight counts too: a task that panicked (a runtime without timers) left it mid-poll,
    // and polling it again panics again, for every later acquisition (found by review, helper-112).
    if slots.iter().any(|slot| slot.holds_anything() || slot.call_left()) {
        slots.iter_mut().for_each(Slot::abandon_call);
        settle_all(&mut slots, budget).await;
    }
    let started = Instant::now();
    let marker_deadline = match wait {
        Wait::Forever => None,
        Wait::Until(at) => Some(at),
        Wait::NoWait => Some(started + inner.timing.lease_duration),
    };
    let plain_on_slot_name =
        inner.slot_count.is_none_or(|n| n <= 1) && crate::lease::slot_parent(&inner.name).is_some();
    let campaigned = loop {
        let campaign = async {
            // A semaphore settles its marker; a plain lease is refused on a semaphore's slot, which a plain
            // hold would lock the semaphore's users out of.
            let settled = match inner.slot_count.filter(|n| *n > 1) {
                Some(n) => {
                    let no_wait = wait == Wait::NoWait;
                    engine::settle_marker(&inner.store, &inner.name, n, inner.timing, no_wait, marker_deadline).await?
                }
                None => engine::refuse_a_slot_name(&inner.store, &inner.name, marker_deadline).await?,
            };
            if let Err(last_error) = settled {
                if let Some(last_error) = &last_error {
                    tracing::error!(lease = %inner.name, last_error = %last_error, "lease not acquired in time");
                }
                return Ok(Campaigned::NotAcquired { last_error });
            }
            engine::campaign_from(&mut slots, wait, &inner.name, started).await
        };
        let campaigned = tokio::select! {
            campaigned = campaign => Some(campaigned),
            () = cancel.cancelled() => None,
            () = result_tx.closed() => None,
        };
        // A plain lease on a slot's name, checked at the start: a semaphore may have been first used since (its
        // marker written while this process waited behind another plain holder of the name). Read again, now
        // that the name is ours: a marker written after our hold landed sees that hold, and waits it out; one
        // written before refuses us here, before any child runs (found by review, helper-175: the plain waiter
        // took the name at its holder's release and ran beside the semaphore's child). Never cut short to keep
        // the hold (found by review, helper-192: a waiter whose acquisition was answered late skipped it and ran
        // on the slot's name beside the semaphore's child): the hold is renewed while it runs, so that a slow
        // API server takes it past no renew deadline (found by review, helper-195: on an API server answering in
        // 1.5 s the hold was lost before the child started, exit 123, and `elect` on such a name never ran its
        // child); one lost all the same is campaigned for again. A read that keeps failing (or is too slow) for a
        // call timeout cannot tell: the hold goes on, as when the marker came later; past `--timeout`, it is given
        // back, not acquired (found by review, helper-195: the child started after the timeout).
        let index = match &campaigned {
            Some(Ok(Campaigned::Acquired(index))) if plain_on_slot_name => *index,
            _ => break campaigned,
        };
        let check_until = match wait {
            Wait::Until(at) => at.min(Instant::now() + budget),
            _ => Instant::now() + budget,
        };
        let check = tokio::time::timeout_at(
            check_until.into(),
            engine::refuse_a_slot_name(&inner.store, &inner.name, Some(check_until)),
        );
        let renewed = engine::hold(&mut slots[index], std::future::pending(), |_| {});
        let checked = tokio::select! {
            checked = check => checked,
            lost = renewed => {
                tracing::warn!(lease = %inner.name, reason = ?lost, "lost the lease while checking it is no semaphore's slot");
                // Lost at its renew deadline, or not seen given back: what became of the lease meanwhile is
                // unknown, as for a hold (see `Elector::lapsed`). An etcd restored since may show our own record
                // at the very version we knew while another process holds the lease (found by review,
                // helper-199: taken again at once, its child ran beside the other's, the token repeated).
                if matches!(lost, Some(LossReason::RenewDeadline)) {
                    slots[index].lapsed();
                }
                if let Err(err) = slots[index].settle(budget).await {
                    tracing::warn!(lease = %inner.name, error = %err, "could not give the lease back; it expires after its duration");
                    slots[index].lapsed();
                }
                if wait == Wait::NoWait {
                    break Some(Ok(Campaigned::NotAcquired { last_error: None }));
                }
                continue;
            }
            () = cancel.cancelled() => break None,
            () = result_tx.closed() => break None,
        };
        match checked {
            Ok(Ok(Ok(()))) => break campaigned,
            Ok(Err(err)) => break Some(Err(err)),
            // Not told (reads that kept failing, or too slow): past `--timeout`, not acquired (the hold is
            // given back below); else the hold goes on, as when the marker came later.
            unknown => {
                let why = match unknown {
                    Ok(Ok(Err(Some(why)))) => why,
                    _ => format!(
                        "lease {}: cannot tell in time whether it is a semaphore's slot (the API server is slow)",
                        inner.name
                    ),
                };
                if matches!(wait, Wait::Until(at) if Instant::now() >= at) {
                    tracing::error!(lease = %inner.name, last_error = %why, "lease not acquired in time");
                    break Some(Ok(Campaigned::NotAcquired { last_error: Some(why) }));
                }
                tracing::warn!(lease = %inner.name, error = %why, "holding the lease all the same");
                break campaigned;
            }
        }
    };
    // Not acquired, refused, or given up: whatever may be held is given back.
    let index = match campaigned {
        Some(Ok(Campaigned::Acquired(index))) => index,
        other => {
            drop(active);
            settle_all(&mut slots, budget).await;
            drop(slots);
            match other {
                Some(Ok(Campaigned::NotAcquired { last_error })) => {
                    drop(result_tx.send(Ok(Attempt::NotAcquired { last_error })))
                }
                Some(Err(err)) => drop(result_tx.send(Err(inner.worded(err)))),
                _ => {}
            }
            return;
        }
    };
    // A process holds one slot: any other it holds, or may hold through an acquisition whose outcome was
    // unknown, is given back now, all together (one after the other, each could take two budgets while
    // nothing renews the slot acquired).
    let others = slots.iter_mut().enumerate().filter(|(other, slot)| *other != index && slot.holds_anything());
    settle_each(others.map(|(_, slot)| slot), budget).await;
    // The other slots' reads still in flight, or waiting for a read permit, are never polled while this
    // one is held: kept, they would keep the semaphore's read permits for the whole hold, and this slot's
    // own read (after a renewal refused 409, or an unknown outcome) would wait for one until the renew
    // deadline (found by review, helper-118). Dropped, with their watches; a next campaign reads afresh.
    slots.iter_mut().enumerate().filter(|(other, _)| *other != index).for_each(|(_, slot)| slot.abandon_call());
    let slot = &mut slots[index];
    let Some(held) = slot.elector().held().cloned() else {
        return;
    };
    // The hold's own token: the caller gets children of it, so that cancelling one stops the caller's
    // work, not the hold.
    let token = CancellationToken::new();
    // Cancelled however this task ends: also when it is dropped unfinished (its runtime shut down), so
    // that work watching the token never outlives what renews the lease. (Declared before the state's
    // sender, so that a task dropped unfinished says why before the token fires.)
    let _cancel_on_drop = token.clone().drop_guard();
    let (state_tx, state_rx) =
        watch::channel(HoldState { deadline: held.deadline(inner.timing), lost: None, dropped: false });
    // Lost however this task ends unfinished (dropped with its runtime): then nothing renews the lease,
    // and the holder must know at once.
    let mut state_tx = LostOnDrop(state_tx, true);
    let (release_tx, mut release_rx) = mpsc::channel::<ReleaseReply>(1);
    // And at the renew deadline by a thread of its own, for a library caller whose runtime does not run
    // this task in time (work done outside it, or blocking it).
    if inner.library {
        watchdog::watch(state_rx.clone(), token.clone());
    }
    let lock = HeldLock {
        name: slot.name().to_string(),
        slot: inner.slot_count.map(|_| index),
        fencing_token: held.fencing_token,
        timing: inner.timing,
        state: state_rx,
        token: token.clone(),
        release: release_tx,
        _active: active,
    };
    if result_tx.send(Ok(Attempt::Held(lock))).is_err() {
        // Nobody took it (the campaign was dropped just now): give it back.
        settle_all(&mut slots, budget).await;
        return;
    }
    let mut request: Option<Option<ReleaseReply>> = None;
    let loss = engine::hold(
        slot,
        async {
            tokio::select! {
                // A release asked for (or the HeldLock dropped, which cancels the token too) comes first.
                biased;
                asked = release_rx.recv() => request = Some(asked),
                // Cancelled with no release asked for: by the watchdog at the deadline, which the holder's
                // work has been told, although a renewal may have been answered just then.
                () = token.cancelled() => {}
            }
        },
        |slot| {
            if let Some(held) = slot.elector().held() {
                let deadline = held.deadline(slot.timing());
                state_tx.0.send_if_modified(|state| std::mem::replace(&mut state.deadline, deadline) != deadline);
            }
        },
    )
    .await;
    // Ended by the watchdog, or past the renew deadline when a library caller's release was asked for
    // (the watchdog had cancelled the work already; the runtime ran late): lost. The CLI's guard keeps
    // the deadline on its own; a release it asks for is a release.
    let lapsed = Instant::now() >= state_tx.0.borrow().deadline;
    let past_deadline = inner.library && lapsed;
    let loss = match loss {
        None if request.is_none() || past_deadline => Some(LossReason::RenewDeadline),
        loss => loss,
    };
    // The reason first, so that whoever sees the token cancelled finds it.
    if let Some(reason) = &loss {
        state_tx.0.send_modify(|state| state.lost = Some(reason.clone()));
    }
    token.cancel();
    if lapsed {
        // Past the renew deadline (the CLI's guard, or a library caller's work, stopped at it already):
        // what became of the lease meanwhile is unknown (see `Elector::lapsed`). An etcd restored since may
        // show our own record at the very version we knew, while another process holds the lease. Before
        // the release, whose read is the first after the lapse (found by review, helpers 108 and 110).
        slot.lapsed();
    }
    let (released, reply) = match loss {
        Some(reason) => {
            tracing::debug!(lease = %slot.name(), reason = %reason, "lease lost");
            // Whoever holds the lock stops its work first. Then a record that is still our own write (the
            // renew deadline passed while the server was out of reach, say) is given back, so the next
            // holder need not wait out its duration; then the slot may campaign again. The observer hears
            // of the loss first: giving the slot back would tell it of a release (found by review).
            slot.tell_lost();
            let reply = match request {
                Some(asked) => asked,
                None => release_rx.recv().await,
            };
            let released = slot.settle(budget).await;
            slot.forget_loss();
            if let (Err(err), None) = (&released, &reply) {
                tracing::warn!(lease = %slot.name(), error = %err, "could not give the lease back; it expires after its duration");
            }
            (released, reply)
        }
        None => {
            let released = slot.settle(budget).await;
            if let Err(err) = &released {
                tracing::warn!(lease = %slot.name(), error = %err, "could not release the lease; it expires after its duration");
            }
            (released, request.flatten())
        }
    };
    if released.is_err() {
        // A release that was not seen to land (cut off from the API server): what became of the lease is
        // unknown, as after a lapse (found by review, helper-109), also after a lapse whose first read the
        // release's settle took before its writes failed (helper-111).
        slot.lapsed();
    }
    state_tx.disarm();
    let lease = slot.name().to_string();
    // The slots are free for the next acquisition before the releaser hears back, so that an acquisition
    // made right after `release().await` never finds them still taken.
    drop(slots);
    if let Some(reply) = reply {
        let _ = reply.send(released.map_err(|err| inner.worded(store_error(&lease, "release", err))));
    }
}

/// The sender of a held lock's state, which says the lease is lost if it is dropped while armed: its
/// task dropped unfinished (a task that ends disarms it).
struct LostOnDrop(watch::Sender<HoldState>, bool);

impl LostOnDrop {
    fn disarm(&mut self) {
        self.1 = false;
    }
}

impl Drop for LostOnDrop {
    fn drop(&mut self) {
        if !self.1 {
            return;
        }
        self.0.send_modify(|state| {
            state.dropped = true;
            state.lost.get_or_insert(LossReason::Abandoned);
        });
    }
}

/// A thread that cancels the tokens of held locks at their renew deadlines, whether or not the runtimes
/// that renew them run their tasks: a library caller's work may check `is_cancelled()` outside its
/// runtime, or between blocking steps on it. Started with the first lock handed to a library caller;
/// one for the process.
mod watchdog {
    use std::sync::{Condvar, Mutex, OnceLock};
    use std::time::Instant;

    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;

    use super::HoldState;

    struct Watched {
        state: watch::Receiver<HoldState>,
        token: CancellationToken,
    }

    struct Watchdog {
        watched: Mutex<Vec<Watched>>,
        added: Condvar,
    }

    static WATCHDOG: OnceLock<Option<&'static Watchdog>> = OnceLock::new();

    /// Cancel `token` when `state` says the lease is lost, or its deadline passes (checked at the
    /// deadline as it stands then, and again whenever it moved).
    pub(super) fn watch(state: watch::Receiver<HoldState>, token: CancellationToken) {
        let Some(watchdog) = WATCHDOG.get_or_init(start) else { return };
        watchdog.watched.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(Watched { state, token });
        watchdog.added.notify_one();
    }

    fn start() -> Option<&'static Watchdog> {
        let watchdog: &'static Watchdog =
            Box::leak(Box::new(Watchdog { watched: Mutex::new(Vec::new()), added: Condvar::new() }));
        match std::thread::Builder::new().name("mpsync-watchdog".into()).stack_size(256 * 1024).spawn(|| run(watchdog))
        {
            Ok(_) => Some(watchdog),
            Err(err) => {
                tracing::warn!(error = %err, "cannot start the thread that cancels lost locks' tokens on time; \
                    they are cancelled by their runtimes only");
                None
            }
        }
    }

    fn run(watchdog: &Watchdog) {
        let mut watched = watchdog.watched.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        loop {
            let mut next: Option<Instant> = None;
            let mut due = Vec::new();
            watched.retain(|entry| {
                if entry.token.is_cancelled() {
                    return false;
                }
                // Lost as `HeldLock::is_lost` judges it.
                if super::lost_now(&entry.state) {
                    due.push(entry.token.clone());
                    return false;
                }
                let deadline = entry.state.borrow().deadline;
                next = Some(next.map_or(deadline, |at| at.min(deadline)));
                true
            });
            if !due.is_empty() {
                // Cancelling wakes the tasks that wait on the tokens: not under the lock, and a waker that
                // panics must not end this thread.
                drop(watched);
                for token in due {
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| token.cancel()));
                }
                watched = watchdog.watched.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                continue;
            }
            watched = match next {
                Some(at) => {
                    let wait = at.saturating_duration_since(Instant::now());
                    watchdog.added.wait_timeout(watched, wait).unwrap_or_else(|poisoned| poisoned.into_inner()).0
                }
                None => watchdog.added.wait(watched).unwrap_or_else(|poisoned| poisoned.into_inner()),
            };
        }
    }
}

async fn settle_all(slots: &mut [Slot], budget: Duration) {
    settle_each(slots.iter_mut(), budget).await;
}

/// Give back what each of `slots` holds, all at once (see `Slot::settle`).
async fn settle_each<'a>(slots: impl Iterator<Item = &'a mut Slot>, budget: Duration) {
    let settles = slots.map(|slot| async move {
        if let Err(err) = slot.settle(budget).await {
            tracing::warn!(lease = %slot.name(), error = %err, "could not give the lease back; it expires after its duration");
        }
    });
    futures::future::join_all(settles).await;
}

#[cfg(all(test, feature = "cli"))]
mod tests {
    use super::*;

    /// Found by review (helper-63): a hold ended by the watchdog (the runtime blocked past the renew
    /// deadline) was told to the observer as a release when the slot was given back, not as a loss.
    #[tokio::test(flavor = "current_thread")]
    async fn a_hold_ended_by_the_watchdog_is_a_loss_for_the_observer() {
        let dir = std::env::temp_dir().join(format!("mpsync-lock-watchdog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let timing = Timing {
            lease_duration: Duration::from_secs(3),
            renew_deadline: Duration::from_millis(1500),
            retry_period: Duration::from_millis(200),
        };
        let health = crate::health::Health::new(timing);
        let lock = Lock::file(&dir, "watched").timing(timing).observer(Arc::new(health.clone())).build().unwrap();
        let held = lock.acquire().await.unwrap();
        // The runtime blocked past the renew deadline: only the watchdog's thread acts.
        std::thread::sleep(timing.renew_deadline + Duration::from_millis(500));
        assert_eq!(held.lost().await, LossReason::RenewDeadline);
        let _ = held.release().await;
        let metrics = health.answer("/metrics", Instant::now(), None).unwrap().body;
        let _ = std::fs::remove_dir_all(&dir);
        assert!(metrics.contains("mpsync_losses_total 1"), "{metrics}");
    }

    /// Review (rv217): `lost()` resolved on the deadline it saw passed, and a renewal answered in that
    /// instant moved the deadline on before the watchdog woke, which then cancelled nothing: `is_lost()` read
    /// false again, and the token, documented to be cancelled when `lost()` resolves, never was. The state
    /// the renewing task would publish is stood in for here.
    #[tokio::test(flavor = "current_thread")]
    async fn once_lost_resolves_the_token_is_cancelled_whatever_the_deadline_does_next() {
        let dir = std::env::temp_dir().join(format!("mpsync-lock-lost-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let lock = Lock::file(&dir, "lost").build().unwrap();
        let mut held = lock.acquire().await.unwrap();
        let passed = HoldState { deadline: Instant::now(), lost: None, dropped: false };
        let (published, state) = watch::channel(passed);
        held.state = state;
        assert_eq!(held.lost().await, LossReason::RenewDeadline);
        // The renewal sent before that deadline is answered now: the deadline moves on.
        published
            .send(HoldState { deadline: Instant::now() + Duration::from_secs(60), lost: None, dropped: false })
            .unwrap();
        let (lost, cancelled) = (held.is_lost(), held.cancellation_token().is_cancelled());
        drop(held);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(lost && cancelled, "after lost() resolved: is_lost {lost}, token cancelled {cancelled}");
    }

    /// Found by review: under tokio's paused test clock (which a program's own tests may use), a held
    /// lock spun a core: its timers, set on the monotonic clock, fired at once on the paused one, which
    /// auto-advanced to them, and were set again. It now waits out the rest in real time.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_held_lock_does_not_spin_under_a_paused_clock() {
        let dir = std::env::temp_dir().join(format!("mpsync-lock-paused-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let timing = Timing {
            lease_duration: Duration::from_secs(3),
            renew_deadline: Duration::from_secs(2),
            retry_period: Duration::from_millis(200),
        };
        let lock = Lock::file(&dir, "paused").timing(timing).build().unwrap();
        let held = lock.acquire().await.unwrap();
        let (real, cpu) = (Instant::now(), thread_cpu());
        tokio::select! {
            reason = held.lost() => panic!("lost: {reason}"),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let (real, cpu) = (real.elapsed(), thread_cpu() - cpu);
        held.release().await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        // Spinning, the runtime's thread is busy the whole time.
        assert!(cpu < real / 3, "{cpu:?} of CPU in {real:?}");
    }

    /// The CPU time of the calling thread.
    fn thread_cpu() -> Duration {
        let mut time = nix::libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes the timespec it is given, which lives across the call.
        let done = unsafe { nix::libc::clock_gettime(nix::libc::CLOCK_THREAD_CPUTIME_ID, &mut time) };
        assert_eq!(done, 0);
        Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
    }
}
