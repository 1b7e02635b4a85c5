//! The file backend (`--backend file`): lease records in files under a lock directory, with the same
//! semantics as Kubernetes Leases, across processes on one host.
//!
//! On disk, for a lease NAME:
//!
//! - `NAME.json`: the Lease exactly as Kubernetes serializes it (`apiVersion`, `kind`, `metadata` with
//!   `resourceVersion`, `spec`), so `strategy`, `preferredHolder`, labels and annotations survive.
//!   It is only ever replaced by `rename(2)` of a fully written, fsynced temp file, so a reader never
//!   sees half a record and needs no lock.
//! - `NAME.lock`: an empty file, `flock`ed exclusively around every read-compare-write. That lock is
//!   what makes create and replace compare-and-swaps across processes.
//! - `.NAME.json.tmp.PID`: the temp file of a write in progress (left behind only by a crash).
//!
//! `resourceVersion` is a per-lease integer that grows by one on every write.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{StoreError, Watch, WatchUpdate};
use crate::error::Error;
use crate::lease::{Versioned, Write};

/// How long a write waits for another process to finish its own write before giving up (transiently).
/// A write holds the lock for a read, a small write and an fsync: milliseconds.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// A call to the file system that takes longer than this has failed (a write: with an unknown outcome).
const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The watch never polls faster than this, whatever `retry_period` says.
const MIN_POLL: Duration = Duration::from_millis(10);

/// Cheap to clone: every call runs its file I/O on tokio's blocking pool, bounded by `call_timeout`, so a
/// stuck disk never freezes the run loop (its timers, signals and the child's exit).
#[derive(Clone)]
pub struct FileStore {
    dir: PathBuf,
    namespace: String,
    call_timeout: Duration,
}

/// The files that belong to one lease.
struct LeaseFiles {
    name: String,
    record: PathBuf,
    lock: PathBuf,
    temp: PathBuf,
}

impl FileStore {
    /// Open (creating it 0700 if needed) the lock directory.
    pub fn open(dir: PathBuf, namespace: String) -> Result<FileStore, Error> {
        let hint = "pass --lock-dir with a directory you can write, or fix its permissions";
        if let Err(err) = DirBuilder::new().recursive(true).mode(0o700).create(&dir) {
            return Err(Error::File(format!("cannot create lock directory {}: {err}; {hint}", dir.display())));
        }
        // Prove we can write it (permission bits, read-only mounts), now rather than at the first lease write.
        let probe = dir.join(format!(".probe.{}", std::process::id()));
        match OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&probe) {
            Ok(_) => {
                let _ = fs::remove_file(&probe);
            }
            Err(err) => {
                return Err(Error::File(format!("cannot write lock directory {}: {err}; {hint}", dir.display())));
            }
        }
        // Someone else's directory (a squatted /tmp/mpsync-UID, say) could have its leases tampered with.
        if let Ok(meta) = fs::metadata(&dir) {
            let others_can_write = meta.mode() & 0o022 != 0;
            if meta.uid() != nix::unistd::geteuid().as_raw() || others_can_write {
                warn!(
                    lock_dir = %dir.display(),
                    owner_uid = meta.uid(),
                    mode = format!("{:o}", meta.mode() & 0o7777),
                    "the lock directory is owned by another user or writable by others: they can change these leases"
                );
            }
        }
        Ok(FileStore { dir, namespace, call_timeout: DEFAULT_CALL_TIMEOUT })
    }

    /// Bound every call by `call_timeout` (a write that takes longer has an unknown outcome).
    pub fn with_call_timeout(mut self, call_timeout: Duration) -> FileStore {
        self.call_timeout = call_timeout;
        self
    }

    /// Run `work` on the blocking pool, within the call timeout. `write`: whether a timeout leaves the
    /// outcome unknown (a write) or only failed (a read).
    async fn blocking<T: Send + 'static>(
        &self,
        what: String,
        write: bool,
        work: impl FnOnce(FileStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        match tokio::time::timeout(self.call_timeout, tokio::task::spawn_blocking(move || work(store))).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(StoreError::Fatal(Error::Internal(format!("{what}: {join}")))),
            Err(_) if write => Err(StoreError::Unknown(format!(
                "{what}: no answer from the file system within {:?}",
                self.call_timeout
            ))),
            Err(_) => Err(StoreError::Transient(format!(
                "{what}: no answer from the file system within {:?}",
                self.call_timeout
            ))),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub async fn get(&self, name: &str) -> Result<Option<Versioned>, StoreError> {
        let files = self.files(name)?;
        self.blocking(format!("read lease {name}"), false, move |_| Ok(read_lease(&files.record)?.map(|s| s.versioned)))
            .await
    }

    /// Create or compare-and-swap replace, as the write says, with the labels and annotations it carries.
    pub async fn write(&self, name: &str, write: &Write) -> Result<Versioned, StoreError> {
        let (name, write) = (name.to_string(), write.clone());
        self.blocking(format!("write lease {name}"), true, move |store| match write.resource_version() {
            None => store.create_now(&name, &write.record, &write.metadata),
            Some(resource_version) => store.replace_now(&name, resource_version, &write.record, &write.metadata),
        })
        .await
    }

    /// Create a record with no labels or annotations (tests, and writers other than the elector).
    pub async fn create(&self, name: &str, record: &LeaseSpec) -> Result<Versioned, StoreError> {
        let write = Write { metadata: ObjectMeta::default(), record: record.clone() };
        self.write(name, &write).await
    }

    /// Replace the record at `resource_version`, keeping its labels and annotations.
    pub async fn replace(
        &self,
        name: &str,
        resource_version: &str,
        record: &LeaseSpec,
    ) -> Result<Versioned, StoreError> {
        let (name, resource_version, record) = (name.to_string(), resource_version.to_string(), record.clone());
        self.blocking(format!("write lease {name}"), true, move |store| {
            store.replace_kept(&name, &resource_version, &record)
        })
        .await
    }

    fn create_now(&self, name: &str, record: &LeaseSpec, metadata: &ObjectMeta) -> Result<Versioned, StoreError> {
        let files = self.files(name)?;
        validate(name, record)?;
        let _lock = lock_exclusive(&files.lock)?;
        if read_lease(&files.record)?.is_some() {
            return Err(StoreError::Conflict(format!("lease {name} already exists")));
        }
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(self.namespace.clone()),
                resource_version: Some("1".to_string()),
                creation_timestamp: Some(Time(k8s_openapi::jiff::Timestamp::now())),
                labels: metadata.labels.clone(),
                annotations: metadata.annotations.clone(),
                ..ObjectMeta::default()
            },
            spec: Some(record.clone()),
        };
        self.write_lease(&files, &lease)
    }

    fn replace_now(
        &self,
        name: &str,
        resource_version: &str,
        record: &LeaseSpec,
        metadata: &ObjectMeta,
    ) -> Result<Versioned, StoreError> {
        self.replace_with(name, resource_version, record, |stored| {
            stored.labels = metadata.labels.clone();
            stored.annotations = metadata.annotations.clone();
        })
    }

    fn replace_kept(&self, name: &str, resource_version: &str, record: &LeaseSpec) -> Result<Versioned, StoreError> {
        self.replace_with(name, resource_version, record, |_| {})
    }

    /// The compare-and-swap under the lease's lock; `edit` sets what the write changes in the metadata.
    fn replace_with(
        &self,
        name: &str,
        resource_version: &str,
        record: &LeaseSpec,
        edit: impl FnOnce(&mut ObjectMeta),
    ) -> Result<Versioned, StoreError> {
        let files = self.files(name)?;
        validate(name, record)?;
        let _lock = lock_exclusive(&files.lock)?;
        let Some(stored) = read_lease(&files.record)? else {
            return Err(StoreError::Conflict(format!("lease {name} does not exist")));
        };
        if stored.versioned.resource_version != resource_version {
            return Err(StoreError::Conflict(format!(
                "lease {name} changed: its resourceVersion is {}, not {resource_version}",
                stored.versioned.resource_version
            )));
        }
        let Some(next) = stored.version.checked_add(1) else {
            return Err(corrupt(&files.record, "resourceVersion overflows"));
        };
        // Metadata (labels, annotations, creationTimestamp) is kept; the spec is the caller's, whole,
        // as a Kubernetes replace does.
        let mut lease = stored.lease;
        edit(&mut lease.metadata);
        lease.metadata.resource_version = Some(next.to_string());
        lease.spec = Some(record.clone());
        self.write_lease(&files, &lease)
    }

    /// Watch one lease: the current record at once, then every change, driven by inotify on the lock
    /// directory and re-read every `retry_period` as a fallback. Must be called inside the tokio runtime.
    pub fn watch(&self, name: &str, retry_period: Duration) -> Watch {
        let (updates_tx, updates_rx) = mpsc::channel(16);
        let files = match self.files(name) {
            Ok(files) => files,
            Err(err) => {
                // The CLI validates names, and get/create report this as an error; the watch just ends.
                warn!(lease = name, error = %err, "cannot watch this lease");
                return Watch::new(updates_rx, tokio::spawn(async move { drop(updates_tx) }));
            }
        };
        let poll_every = retry_period.max(MIN_POLL);
        let wakeups = match start_inotify_thread(&self.dir, &files) {
            // The thread is detached: it ends by itself once the task below is gone.
            Ok((wakeups, _thread)) => Some(wakeups),
            Err(err) => {
                warn!(
                    lease = name,
                    lock_dir = %self.dir.display(),
                    error = %err,
                    "cannot watch the lock directory for changes; polling every {poll_every:?} instead"
                );
                None
            }
        };
        let task = tokio::spawn(forward_changes(files, poll_every, wakeups, updates_tx));
        Watch::new(updates_rx, task)
    }

    fn files(&self, name: &str) -> Result<LeaseFiles, StoreError> {
        // The CLI already checked that NAME is a DNS-1123 subdomain; this keeps every path inside the
        // directory and clear of our own dot-files whatever a caller passes.
        if name.is_empty() || name.starts_with('.') || name.contains(['/', '\0']) {
            return Err(StoreError::Fatal(Error::File(format!(
                "invalid lease name {name:?} for the file backend: it must be a DNS-1123 subdomain"
            ))));
        }
        Ok(LeaseFiles {
            name: name.to_string(),
            record: self.dir.join(format!("{name}.json")),
            lock: self.dir.join(format!("{name}.lock")),
            temp: self.dir.join(format!(".{name}.json.tmp.{}", std::process::id())),
        })
    }

    /// Write `lease` atomically (temp file, fsync, rename, fsync the directory) and return it as a
    /// later `get` will read it (times at microsecond precision, as the API server returns them).
    /// The caller holds the lease's lock.
    fn write_lease(&self, files: &LeaseFiles, lease: &Lease) -> Result<Versioned, StoreError> {
        let mut bytes = serde_json::to_vec(lease)
            .map_err(|err| StoreError::Fatal(Error::File(format!("cannot serialize lease {}: {err}", files.name))))?;
        bytes.push(b'\n');
        let written = parse_lease(&files.record, &bytes)?;

        let result =
            write_synced(&files.temp, &bytes).map_err(|err| io_failure("write", &files.temp, &err)).and_then(|()| {
                fs::rename(&files.temp, &files.record).map_err(|err| io_failure("replace", &files.record, &err))
            });
        if let Err(err) = result {
            let _ = fs::remove_file(&files.temp);
            return Err(err);
        }
        // Makes the rename itself durable. The record is already visible to every reader, so a failure
        // here changes nothing about the outcome of this write.
        if let Err(err) = File::open(&self.dir).and_then(|dir| dir.sync_all()) {
            debug!(lock_dir = %self.dir.display(), error = %err, "cannot fsync the lock directory");
        }
        Ok(written.versioned)
    }
}

/// A record as read from its file.
struct Stored {
    lease: Lease,
    version: u64,
    versioned: Versioned,
}

/// Read a lease record; `None` if there is none.
fn read_lease(path: &Path) -> Result<Option<Stored>, StoreError> {
    match fs::read(path) {
        Ok(bytes) => parse_lease(path, &bytes).map(Some),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(io_failure("read", path, &err)),
    }
}

fn parse_lease(path: &Path, bytes: &[u8]) -> Result<Stored, StoreError> {
    let lease: Lease = serde_json::from_slice(bytes).map_err(|err| corrupt(path, err))?;
    let Some(resource_version) = lease.metadata.resource_version.clone() else {
        return Err(corrupt(path, "metadata.resourceVersion is missing"));
    };
    let version: u64 = resource_version
        .parse()
        .map_err(|_| corrupt(path, format!("metadata.resourceVersion {resource_version:?} is not a whole number")))?;
    let record = lease.spec.clone().unwrap_or_default();
    let versioned = Versioned { resource_version, record, metadata: lease.metadata.clone() };
    Ok(Stored { lease, version, versioned })
}

/// The API server's validation of a Lease spec (the state machine never writes these; a guard anyway).
fn validate(name: &str, record: &LeaseSpec) -> Result<(), StoreError> {
    if let Some(seconds) = record.lease_duration_seconds
        && seconds <= 0
    {
        return Err(StoreError::Fatal(Error::File(format!(
            "invalid lease {name}: leaseDurationSeconds must be greater than 0, not {seconds}"
        ))));
    }
    if let Some(transitions) = record.lease_transitions
        && transitions < 0
    {
        return Err(StoreError::Fatal(Error::File(format!(
            "invalid lease {name}: leaseTransitions must not be negative, not {transitions}"
        ))));
    }
    Ok(())
}

/// Take the lease's lock file exclusively (on the blocking pool), giving up transiently after
/// `LOCK_WAIT`: nothing was written.
fn lock_exclusive(path: &Path) -> Result<Flock<File>, StoreError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|err| io_failure("open", path, &err))?;
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((returned, Errno::EWOULDBLOCK)) => {
                if started.elapsed() >= LOCK_WAIT {
                    return Err(StoreError::Transient(format!(
                        "lock file {} is still held by another writer after {LOCK_WAIT:?}",
                        path.display()
                    )));
                }
                file = returned;
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(10));
            }
            Err((returned, Errno::EINTR)) => file = returned,
            Err((_, errno)) => return Err(io_failure("lock", path, &io::Error::from(errno))),
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn corrupt(path: &Path, err: impl std::fmt::Display) -> StoreError {
    StoreError::Fatal(Error::File(format!(
        "corrupt lease record {}: {err}; remove it to reset the lease",
        path.display()
    )))
}

/// An I/O failure, classified: interrupted or would-block is worth retrying; anything else (permission,
/// read-only file system, no space) will not fix itself.
fn io_failure(action: &str, path: &Path, err: &io::Error) -> StoreError {
    if matches!(err.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) {
        return StoreError::Transient(format!("cannot {action} {}: {err}", path.display()));
    }
    let hint = match err.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            "; pass --lock-dir with a directory you can write, or fix its permissions"
        }
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => "; free some space on its file system",
        io::ErrorKind::NotFound => "; the lock directory may have been removed",
        _ => "",
    };
    StoreError::Fatal(Error::File(format!("cannot {action} {}: {err}{hint}", path.display())))
}

/// The watch's async half: reads the record at once, then whenever inotify says it may have changed or
/// `poll_every` passes, and sends it when it differs from what was last sent. Dropping this task (the
/// `Watch` was dropped) closes the wake-up channel and the stop pipe, which ends the inotify thread.
async fn forward_changes(
    files: LeaseFiles,
    poll_every: Duration,
    mut wakeups: Option<InotifyWakeups>,
    updates: mpsc::Sender<WatchUpdate>,
) {
    let mut last_sent: Option<WatchUpdate> = None;
    let mut last_error: Option<String> = None;
    let files = std::sync::Arc::new(files);
    loop {
        let reading = std::sync::Arc::clone(&files);
        let read = tokio::task::spawn_blocking(move || read_lease(&reading.record))
            .await
            .unwrap_or_else(|join| Err(StoreError::Transient(join.to_string())));
        match read {
            Ok(stored) => {
                last_error = None;
                // An absence seen here carries no version: only a read of the run loop decides on it.
                let current = match stored {
                    Some(stored) => WatchUpdate::Present(stored.versioned),
                    None => WatchUpdate::Absent { resource_version: String::new() },
                };
                if last_sent.as_ref() != Some(&current) {
                    if updates.send(current.clone()).await.is_err() {
                        return;
                    }
                    last_sent = Some(current);
                }
            }
            Err(err) => {
                // get/replace report this to the run loop; here it is only worth one line per new error.
                let message = err.to_string();
                if last_error.as_deref() != Some(message.as_str()) {
                    warn!(lease = %files.name, error = %message, "cannot read the lease record; retrying");
                    last_error = Some(message);
                }
            }
        }
        match wakeups.as_mut() {
            Some(inotify) => {
                tokio::select! {
                    woke = inotify.wakeups.recv() => {
                        if woke.is_none() {
                            warn!(
                                lease = %files.name,
                                "stopped watching the lock directory for changes; polling every {poll_every:?} instead"
                            );
                            wakeups = None;
                        }
                    }
                    () = tokio::time::sleep(poll_every) => {}
                    () = updates.closed() => return,
                }
            }
            None => {
                tokio::select! {
                    () = tokio::time::sleep(poll_every) => {}
                    () = updates.closed() => return,
                }
            }
        }
    }
}

/// The async end of the inotify thread. Dropping it stops the thread.
struct InotifyWakeups {
    /// One message per batch of relevant events (coalesced: capacity 1).
    wakeups: mpsc::Receiver<()>,
    /// Closing this makes the thread's end of the pipe readable (hang-up), which wakes and ends it.
    _stop: OwnedFd,
}

/// Watch the lock directory with inotify before the first read, so no change between that read and
/// the watch can be missed; events go to a dedicated thread blocking in poll(2).
fn start_inotify_thread(dir: &Path, files: &LeaseFiles) -> io::Result<(InotifyWakeups, std::thread::JoinHandle<()>)> {
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?;
    inotify.add_watch(
        dir,
        AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF
            | AddWatchFlags::IN_ONLYDIR,
    )?;
    let (stop_read, stop_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (wake_tx, wake_rx) = mpsc::channel(1);
    let file_name = std::ffi::OsString::from(format!("{}.json", files.name));
    let lease = files.name.clone();
    let thread = std::thread::Builder::new().name("mpsync-watch".to_string()).spawn(move || {
        watch_directory(&inotify, &stop_read, &file_name, &wake_tx, &lease);
    })?;
    let wakeups = InotifyWakeups { wakeups: wake_rx, _stop: stop_write };
    Ok((wakeups, thread))
}

/// The inotify thread: wake the async half on every batch of events about `file_name`; return when the
/// async half is gone or the directory watch cannot go on.
fn watch_directory(
    inotify: &Inotify,
    stop: &OwnedFd,
    file_name: &std::ffi::OsStr,
    wake: &mpsc::Sender<()>,
    lease: &str,
) {
    // Only a safety net: the stop pipe wakes this thread as soon as the watch is dropped.
    let idle = PollTimeout::from(5000u16);
    loop {
        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN), PollFd::new(stop.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, idle) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(errno) => {
                debug!(lease, error = %errno, "poll on the inotify descriptor failed");
                return;
            }
        }
        if fds[1].any().unwrap_or(true) || wake.is_closed() {
            return;
        }
        if !fds[0].any().unwrap_or(false) {
            continue;
        }
        let events = match inotify.read_events() {
            Ok(events) => events,
            Err(Errno::EAGAIN | Errno::EINTR) => continue,
            Err(errno) => {
                debug!(lease, error = %errno, "reading inotify events failed");
                return;
            }
        };
        let mut relevant = false;
        for event in &events {
            if event
                .mask
                .intersects(AddWatchFlags::IN_IGNORED | AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF)
            {
                // The directory itself went away: nothing more will come from this watch.
                return;
            }
            // A name-less event is an overflow: anything may have happened.
            relevant |= event.name.as_deref().is_none_or(|name| name == file_name);
        }
        if relevant {
            match wake.try_send(()) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(())) => {}
                Err(mpsc::error::TrySendError::Closed(())) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::mpsc as std_mpsc;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    /// Generous, for a loaded machine: only reached when something is wrong.
    const PATIENCE: Duration = Duration::from_secs(10);

    /// A fresh directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> TempDir {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|since| since.as_nanos())
                .unwrap_or_default();
            TempDir(std::env::temp_dir().join(format!("mpsync-filestore-{test}-{}-{nanos}", std::process::id())))
        }

        fn path(&self) -> PathBuf {
            self.0.clone()
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime")
    }

    fn open(dir: &TempDir) -> FileStore {
        FileStore::open(dir.path(), "default".to_string()).expect("the lock directory opens")
    }

    fn held_by(holder: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.to_string()),
            lease_duration_seconds: Some(15),
            lease_transitions: Some(0),
            acquire_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            ..LeaseSpec::default()
        }
    }

    fn file_error(result: Result<impl std::fmt::Debug, StoreError>) -> String {
        match result {
            Err(StoreError::Fatal(Error::File(message))) => message,
            other => panic!("expected a fatal file error, got {other:?}"),
        }
    }

    fn is_conflict<T: std::fmt::Debug>(result: &Result<T, StoreError>) -> bool {
        matches!(result, Err(StoreError::Conflict(_)))
    }

    /// The next update: the record, or `None` for an absence.
    async fn next_update(watch: &mut Watch) -> Option<Versioned> {
        let update = tokio::time::timeout(PATIENCE, watch.updates.recv())
            .await
            .expect("an update within the patience")
            .expect("the watch is still running");
        match update {
            WatchUpdate::Present(current) => Some(current),
            WatchUpdate::Absent { .. } | WatchUpdate::Deleted { .. } => None,
        }
    }

    #[test]
    fn open_creates_missing_lock_directory_with_mode_0700() {
        let temp = TempDir::new("mode");
        let dir = temp.path().join("nested").join("locks");
        FileStore::open(dir.clone(), "default".to_string()).expect("opens");
        let meta = fs::metadata(&dir).expect("the directory exists");
        assert!(meta.is_dir());
        assert_eq!(meta.mode() & 0o777, 0o700);
        // The write probe leaves nothing behind.
        assert_eq!(fs::read_dir(&dir).expect("readable").count(), 0);
    }

    #[test]
    fn unwritable_lock_directory_is_a_file_error_naming_it() {
        let temp = TempDir::new("unwritable");
        fs::create_dir_all(temp.path()).expect("temp dir");
        let dir = if nix::unistd::geteuid().is_root() {
            // Permission bits do not stop root; a path below a regular file stops everyone (ENOTDIR).
            let file = temp.path().join("a-file");
            fs::write(&file, b"").expect("a regular file");
            file.join("sub")
        } else {
            let dir = temp.path().join("read-only");
            DirBuilder::new().mode(0o500).create(&dir).expect("a read-only dir");
            dir
        };
        let result = FileStore::open(dir.clone(), "default".to_string());
        let _ = fs::set_permissions(temp.path().join("read-only"), std::os::unix::fs::PermissionsExt::from_mode(0o700));
        match result {
            Err(Error::File(message)) => {
                assert!(message.contains(&dir.display().to_string()), "{message}");
                assert!(message.contains("--lock-dir"), "{message}");
                assert_eq!(message.lines().count(), 1, "{message}");
            }
            Err(other) => panic!("expected Error::File, got {other:?}"),
            Ok(_) => panic!("opened an unwritable lock directory"),
        }
    }

    #[test]
    fn get_of_missing_lease_is_none() {
        let temp = TempDir::new("missing");
        let store = open(&temp);
        let got = runtime().block_on(store.get("nobody")).expect("get works");
        assert_eq!(got, None);
    }

    #[test]
    fn create_writes_a_kubernetes_lease_and_get_reads_back_what_create_returned() {
        let temp = TempDir::new("create");
        let store = open(&temp);
        let rt = runtime();
        let created = rt.block_on(store.create("job", &held_by("a"))).expect("created");
        assert_eq!(created.resource_version, "1");
        let got = rt.block_on(store.get("job")).expect("get works");
        // Times come back at microsecond precision from both, as from the API server.
        assert_eq!(got, Some(created));

        let text = fs::read_to_string(temp.path().join("job.json")).expect("the record file");
        let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(json["apiVersion"], "coordination.k8s.io/v1");
        assert_eq!(json["kind"], "Lease");
        assert_eq!(json["metadata"]["name"], "job");
        assert_eq!(json["metadata"]["namespace"], "default");
        assert_eq!(json["metadata"]["resourceVersion"], "1");
        assert!(json["metadata"]["creationTimestamp"].is_string());
        assert_eq!(json["spec"]["holderIdentity"], "a");
        assert_eq!(json["spec"]["leaseDurationSeconds"], 15);
    }

    #[test]
    fn create_of_existing_lease_conflicts() {
        let temp = TempDir::new("create-twice");
        let store = open(&temp);
        let rt = runtime();
        rt.block_on(store.create("job", &held_by("a"))).expect("created");
        let again = rt.block_on(store.create("job", &held_by("b")));
        assert!(is_conflict(&again), "{again:?}");
        let got = rt.block_on(store.get("job")).expect("get works");
        assert_eq!(got.expect("exists").record.holder_identity.as_deref(), Some("a"));
    }

    #[test]
    fn replace_with_current_resource_version_bumps_it() {
        let temp = TempDir::new("replace");
        let store = open(&temp);
        let rt = runtime();
        let created = rt.block_on(store.create("job", &held_by("a"))).expect("created");
        let replaced = rt.block_on(store.replace("job", &created.resource_version, &held_by("b"))).expect("replaced");
        assert_eq!(replaced.resource_version, "2");
        assert_eq!(replaced.record.holder_identity.as_deref(), Some("b"));
        let again = rt.block_on(store.replace("job", "2", &held_by("c"))).expect("replaced again");
        assert_eq!(again.resource_version, "3");
        assert_eq!(rt.block_on(store.get("job")).expect("get works"), Some(again));
    }

    #[test]
    fn replace_with_stale_resource_version_conflicts() {
        let temp = TempDir::new("stale");
        let store = open(&temp);
        let rt = runtime();
        rt.block_on(store.create("job", &held_by("a"))).expect("created");
        rt.block_on(store.replace("job", "1", &held_by("b"))).expect("replaced");
        let stale = rt.block_on(store.replace("job", "1", &held_by("c")));
        assert!(is_conflict(&stale), "{stale:?}");
        let got = rt.block_on(store.get("job")).expect("get works").expect("exists");
        assert_eq!(got.resource_version, "2");
        assert_eq!(got.record.holder_identity.as_deref(), Some("b"));
    }

    #[test]
    fn replace_of_missing_lease_conflicts() {
        let temp = TempDir::new("replace-missing");
        let store = open(&temp);
        let rt = runtime();
        let result = rt.block_on(store.replace("job", "1", &held_by("a")));
        assert!(is_conflict(&result), "{result:?}");
        assert_eq!(rt.block_on(store.get("job")).expect("get works"), None);
    }

    #[test]
    fn strategy_preferred_holder_and_labels_survive_replace() {
        let temp = TempDir::new("unknown-fields");
        let store = open(&temp);
        let rt = runtime();
        let record = LeaseSpec {
            strategy: Some("OldestEmulationVersion".to_string()),
            preferred_holder: Some("the-new-one".to_string()),
            ..held_by("a")
        };
        rt.block_on(store.create("job", &record)).expect("created");
        // Someone (kubectl label, say) adds metadata the state machine knows nothing of.
        let path = temp.path().join("job.json");
        let mut json: serde_json::Value = serde_json::from_slice(&fs::read(&path).expect("record")).expect("JSON");
        json["metadata"]["labels"] = serde_json::json!({"team": "batch"});
        json["metadata"]["annotations"] = serde_json::json!({"note": "keep me"});
        fs::write(&path, serde_json::to_vec(&json).expect("JSON")).expect("written");

        let read = rt.block_on(store.get("job")).expect("get works").expect("exists");
        let mut renewed = read.record.clone();
        renewed.holder_identity = Some("b".to_string());
        let replaced = rt.block_on(store.replace("job", &read.resource_version, &renewed)).expect("replaced");
        assert_eq!(replaced.record.strategy.as_deref(), Some("OldestEmulationVersion"));
        assert_eq!(replaced.record.preferred_holder.as_deref(), Some("the-new-one"));

        let json: serde_json::Value = serde_json::from_slice(&fs::read(&path).expect("record")).expect("JSON");
        assert_eq!(json["spec"]["strategy"], "OldestEmulationVersion");
        assert_eq!(json["spec"]["preferredHolder"], "the-new-one");
        assert_eq!(json["spec"]["holderIdentity"], "b");
        assert_eq!(json["metadata"]["labels"]["team"], "batch");
        assert_eq!(json["metadata"]["annotations"]["note"], "keep me");
        assert_eq!(json["metadata"]["resourceVersion"], "2");
    }

    #[test]
    fn corrupt_record_is_fatal_names_the_file_and_never_panics() {
        let temp = TempDir::new("corrupt");
        let store = open(&temp);
        let rt = runtime();
        let path = temp.path().join("job.json");
        let contents: [&[u8]; 9] = [
            b"",
            b"not json {",
            b"[1, 2]",
            b"null",
            b"\xff\xfe\x00garbage",
            br#"{"apiVersion":"v1","kind":"Pod","metadata":{"resourceVersion":"1"}}"#,
            br#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"job"}}"#,
            br#"{"metadata":{"resourceVersion":"seven"},"spec":{}}"#,
            br#"{"metadata":{"resourceVersion":"1"},"spec":{"leaseDurationSeconds":"soon"}}"#,
        ];
        for content in contents {
            fs::write(&path, content).expect("written");
            let shown = String::from_utf8_lossy(content);
            let message = file_error(rt.block_on(store.get("job")));
            assert!(message.contains("corrupt lease record"), "{shown}: {message}");
            assert!(message.contains(&path.display().to_string()), "{shown}: {message}");
            assert!(message.contains("remove it"), "{shown}: {message}");
            file_error(rt.block_on(store.replace("job", "1", &held_by("a"))));
            file_error(rt.block_on(store.create("job", &held_by("a"))));
            // The bad record is left for the user to see, not overwritten.
            assert_eq!(fs::read(&path).expect("still there"), content);
        }
    }

    #[test]
    fn a_record_without_spec_reads_as_an_empty_spec() {
        let temp = TempDir::new("no-spec");
        let store = open(&temp);
        fs::write(
            temp.path().join("job.json"),
            br#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"job","resourceVersion":"7"}}"#,
        )
        .expect("written");
        let got = runtime().block_on(store.get("job")).expect("get works");
        let got = got.expect("a record");
        assert_eq!((got.resource_version.as_str(), got.record), ("7", LeaseSpec::default()));
    }

    #[test]
    fn invalid_records_and_names_are_rejected_like_the_api_server_does() {
        let temp = TempDir::new("invalid");
        let store = open(&temp);
        let rt = runtime();
        let zero_duration = LeaseSpec { lease_duration_seconds: Some(0), ..held_by("a") };
        let message = file_error(rt.block_on(store.create("job", &zero_duration)));
        assert!(message.contains("leaseDurationSeconds"), "{message}");
        assert_eq!(rt.block_on(store.get("job")).expect("get works"), None);

        rt.block_on(store.create("job", &held_by("a"))).expect("created");
        let negative_transitions = LeaseSpec { lease_transitions: Some(-1), ..held_by("a") };
        let message = file_error(rt.block_on(store.replace("job", "1", &negative_transitions)));
        assert!(message.contains("leaseTransitions"), "{message}");

        for name in ["a/b", "../escape", "", ".hidden"] {
            file_error(rt.block_on(store.get(name)));
            file_error(rt.block_on(store.create(name, &held_by("a"))));
        }
    }

    #[test]
    fn watch_delivers_current_record_then_a_change_from_another_thread_at_once() {
        let temp = TempDir::new("watch");
        let store = open(&temp);
        runtime().block_on(async {
            store.create("job", &held_by("a")).await.expect("created");
            // A retry period far beyond the test's patience: only inotify can deliver the change.
            let mut watch = store.watch("job", Duration::from_secs(600));
            let first = next_update(&mut watch).await.expect("the current record");
            assert_eq!(first.resource_version, "1");

            let dir = temp.path();
            let writer = std::thread::spawn(move || {
                let other = FileStore::open(dir, "default".to_string()).expect("opens");
                let rt = runtime();
                let started = Instant::now();
                rt.block_on(other.replace("job", "1", &held_by("b"))).expect("replaced");
                started
            });
            let changed = next_update(&mut watch).await.expect("the changed record");
            let received = Instant::now();
            let write_started = writer.join().expect("the writer thread");
            assert_eq!(changed.resource_version, "2");
            assert_eq!(changed.record.holder_identity.as_deref(), Some("b"));
            // From the start of the write (fsyncs included) to the watcher having the new record.
            let handoff = received.saturating_duration_since(write_started);
            assert!(handoff < Duration::from_secs(1), "took {handoff:?}");
        });
    }

    #[test]
    fn watch_of_missing_lease_delivers_none_then_its_creation() {
        let temp = TempDir::new("watch-missing");
        let store = open(&temp);
        runtime().block_on(async {
            let mut watch = store.watch("job", Duration::from_secs(600));
            assert_eq!(next_update(&mut watch).await, None);
            // Writes to other leases in the directory are not reported.
            store.create("other", &held_by("x")).await.expect("created");
            store.create("job", &held_by("a")).await.expect("created");
            let created = next_update(&mut watch).await.expect("the new record");
            assert_eq!(created.record.holder_identity.as_deref(), Some("a"));
        });
    }

    #[test]
    fn watch_without_inotify_polls_at_the_retry_period() {
        let temp = TempDir::new("watch-poll");
        let store = open(&temp);
        let files = store.files("job").expect("a valid name");
        runtime().block_on(async {
            let (updates_tx, updates_rx) = mpsc::channel(16);
            // No inotify: the task alone, as when the directory cannot be watched.
            let task = tokio::spawn(forward_changes(files, Duration::from_millis(50), None, updates_tx));
            let mut watch = Watch::new(updates_rx, task);
            assert_eq!(next_update(&mut watch).await, None);
            store.create("job", &held_by("a")).await.expect("created");
            let created = next_update(&mut watch).await.expect("the new record");
            assert_eq!(created.resource_version, "1");
        });
    }

    #[test]
    fn dropping_the_watch_stops_its_inotify_thread() {
        let temp = TempDir::new("watch-stop");
        let store = open(&temp);
        let files = store.files("job").expect("a valid name");
        let (wakeups, thread) = start_inotify_thread(&temp.path(), &files).expect("inotify works");
        let (ended_tx, ended_rx) = std_mpsc::channel();
        std::thread::spawn(move || {
            let _ = thread.join();
            let _ = ended_tx.send(());
        });
        // Still running while the async end lives (no sign of ending in a short while).
        assert!(ended_rx.recv_timeout(Duration::from_millis(100)).is_err());
        drop(wakeups);
        // The stop pipe wakes it at once; its own 5 s safety net would be slower than this bound.
        ended_rx.recv_timeout(Duration::from_secs(4)).expect("the inotify thread ended");
    }

    #[test]
    fn concurrent_compare_and_swap_never_loses_an_update() {
        const WRITERS: u32 = 4;
        const INCREMENTS: u32 = 50;
        let temp = TempDir::new("cas");
        let store = open(&temp);
        let rt = runtime();
        rt.block_on(store.create("counter", &held_by("nobody"))).expect("created");

        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let dir = temp.path();
                std::thread::spawn(move || {
                    let store = FileStore::open(dir, "default".to_string()).expect("opens");
                    let rt = runtime();
                    let mut conflicts = 0u32;
                    for _ in 0..INCREMENTS {
                        loop {
                            let read = rt.block_on(store.get("counter")).expect("get works").expect("exists");
                            let mut record = read.record.clone();
                            record.lease_transitions = Some(record.lease_transitions.unwrap_or(0) + 1);
                            record.holder_identity = Some(format!("writer-{writer}"));
                            match rt.block_on(store.replace("counter", &read.resource_version, &record)) {
                                Ok(_) => break,
                                Err(StoreError::Conflict(_)) => conflicts += 1,
                                // A lock held long on a loaded machine: nothing written, try again.
                                Err(StoreError::Transient(_)) => {}
                                Err(other) => panic!("writer {writer}: {other}"),
                            }
                        }
                    }
                    conflicts
                })
            })
            .collect();
        let conflicts: u32 = writers.into_iter().map(|writer| writer.join().expect("writer thread")).sum();

        let last = rt.block_on(store.get("counter")).expect("get works").expect("exists");
        let total = i32::try_from(WRITERS * INCREMENTS).expect("small");
        assert_eq!(last.record.lease_transitions, Some(total), "after {conflicts} conflicts");
        assert_eq!(last.resource_version, (total + 1).to_string());
    }
}
