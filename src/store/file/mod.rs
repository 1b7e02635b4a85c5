//! The file backend (`--backend file`): lease records in files under a lock directory, with the same
//! semantics as Kubernetes Leases, across processes on one host.
//!
//! On disk, for a lease NAME (a name over 200 characters is shortened with a hash: see [`names`]):
//!
//! - `NAME.json`: the Lease exactly as Kubernetes serializes it (`apiVersion`, `kind`, `metadata` with
//!   `resourceVersion`, `spec`), so `strategy`, `preferredHolder`, labels and annotations survive.
//!   It is only ever replaced by `rename(2)` of a fully written, fsynced file, so a reader never sees
//!   half a record and needs no lock.
//! - `.NAME.last`: the same file (a hard link), kept when `NAME.json` is deleted. A deleted record does
//!   not reset the lease: `resourceVersion` keeps growing (a compare-and-swap never succeeds on a version
//!   seen before), and the next create puts the last record back instead, so that its holder is waited
//!   out and fencing tokens never repeat (`NAME.json` is renamed into place first: after a crash between
//!   the two renames `.NAME.last` is one write behind, and a token of that write, whose writer died with
//!   it, may be handed out again once `NAME.json` is deleted).
//! - `.NAME.tmp`, `.NAME.last.tmp`: a write in progress (left behind only by a crash; the next write of
//!   the lease removes them).
//!
//! Every read-compare-write holds an exclusive `flock` on the directory (see [`dir`]), which makes create
//! and replace compare-and-swaps across processes. `resourceVersion` is a per-lease integer that grows on
//! every write. A record that cannot be read (not JSON, not a Lease, a FIFO, a symlink, huge) is never
//! overwritten: the lease counts as held and waiters wait, saying why once.

mod dir;
mod inotify;
mod names;

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

pub use self::dir::hold_writes;
use self::dir::{Glance, LockDir, LockedDir};
use self::names::LeaseFiles;
use super::{StoreError, Watch, WatchUpdate};
use crate::error::Error;
use crate::lease::{Versioned, Write};

/// A call to the file system that takes longer than this has failed (a write: with an unknown outcome).
const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The watch never polls faster than this, whatever `retry_period` says.
const MIN_POLL: Duration = Duration::from_millis(10);

/// How often a watch without inotify (the user's instances used up, say) looks at the record: fast enough
/// that a handoff to such a waiter takes a moment, not a retry period; a look (one fstatat) is cheap, and
/// the record is read only when it changed.
const FALLBACK_POLL: Duration = Duration::from_millis(100);

/// Cheap to clone: every call runs its file I/O on tokio's blocking pool, bounded by `call_timeout`, so a
/// stuck disk never freezes the run loop (its timers, signals and the child's exit).
#[derive(Clone)]
pub struct FileStore {
    dir: LockDir,
    namespace: String,
    call_timeout: Duration,
    /// A write sent before this moment stops waiting for the directory's lock at it (a campaign's end).
    give_up_at: Option<Instant>,
}

impl FileStore {
    /// Open (creating it 0700 if needed) the lock directory. One that is not this user's alone, or that
    /// cannot be written or locked, is an error that names it.
    pub fn open(dir: PathBuf, namespace: String) -> Result<FileStore, Error> {
        let dir = LockDir::new(dir);
        dir.check_usable()?;
        Ok(FileStore { dir, namespace, call_timeout: DEFAULT_CALL_TIMEOUT, give_up_at: None })
    }

    /// Open the lock directory for reading only (`status`, `observe`): the same checks of who owns it and
    /// its parents, but it is neither created nor required to be writable, so a lock directory on a file
    /// system mounted read-only (or not made yet) can still be looked at.
    pub fn open_for_reading(dir: PathBuf, namespace: String) -> Result<FileStore, Error> {
        let dir = LockDir::new(dir);
        dir.check_readable()?;
        Ok(FileStore { dir, namespace, call_timeout: DEFAULT_CALL_TIMEOUT, give_up_at: None })
    }

    /// Bound every call by `call_timeout` (a write that takes longer has an unknown outcome).
    pub fn with_call_timeout(mut self, call_timeout: Duration) -> FileStore {
        self.call_timeout = call_timeout;
        self
    }

    /// Writes sent from now on stop waiting for the directory's lock at `at`, if any (a busy lock is
    /// then a write not applied, as at three quarters into the call timeout).
    pub fn give_up_at(&mut self, at: Option<Instant>) {
        self.give_up_at = at;
    }

    /// Run `work` on the blocking pool, within the call timeout. `write`: whether a timeout leaves the
    /// outcome unknown (a write) or only failed (a read). `work` gets the moment to stop waiting for the
    /// directory's lock: three quarters into the call timeout, so that a busy lock is a plain failure
    /// ("not applied"), and only a write stuck in the file system itself has an unknown outcome.
    async fn blocking<T: Send + 'static>(
        &self,
        what: String,
        write: bool,
        work: impl FnOnce(FileStore, Instant) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        let lock_by = Instant::now() + self.call_timeout * 3 / 4;
        let lock_by = self.give_up_at.map_or(lock_by, |at| at.min(lock_by));
        let publish = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(dir::RUNNING));
        let task_publish = std::sync::Arc::clone(&publish);
        let task = tokio::task::spawn_blocking(move || dir::with_publish_gate(task_publish, || work(store, lock_by)));
        match tokio::time::timeout(self.call_timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(StoreError::Fatal(Error::Internal(format!("{what}: {join}")))),
            // Given up before the write began to replace the record: it never will (see `dir::publish`), so
            // it was not applied. Past that point its outcome is unknown.
            Err(_) if write && !dir::abandon(&publish) => Err(StoreError::Unknown(format!(
                "{what}: no answer from the file system within {:?}",
                self.call_timeout
            ))),
            Err(_) if write => Err(StoreError::Transient(format!(
                "{what}: not done within {:?}; given up before anything was replaced",
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
        let files = LeaseFiles::new(name)?;
        self.blocking(format!("read lease {name}"), false, move |store, _| {
            let Some(dir) = store.dir.open(false)? else {
                return Ok(None);
            };
            if let Some(in_the_way) = dir::directory_in_the_way(dir.fd(), dir.path(), &files.written()) {
                return Err(in_the_way);
            }
            if let Some(stored) = read_record(dir.fd(), dir.path(), &files, Which::Record)? {
                return Ok(Some(stored.versioned));
            }
            // No record, and a last record mpsync cannot read: the lease counts as held (a create would
            // fail the same way), so a read says why rather than "no one has taken it yet".
            read_record(dir.fd(), dir.path(), &files, Which::Last)?;
            Ok(None)
        })
        .await
    }

    /// Every lease record in the lock directory whose labels match `label_selector` (see
    /// [`selector`](crate::store::selector)), ordered by name. Only `NAME.json` files are records: the
    /// hidden `.NAME.last` copies and writes in progress are not leases of their own. A record takes its
    /// name from `metadata.name` (long names are hashed on disk); a `*.json` that is not the record of the
    /// lease it names (not a Lease, unreadable, a copy under another name) is left out with a warning, and
    /// so is one behind a directory in the way of its writes: `get` and every write fail on such a lease,
    /// which counts as held, so it is not listed as what its record says (found by review, helper-166: it
    /// was listed `free` while `lock` waited on it).
    pub async fn list(&self, label_selector: Option<&str>) -> Result<Vec<Versioned>, StoreError> {
        let requirements = match label_selector {
            Some(text) => super::selector::parse(text)?,
            None => Vec::new(),
        };
        self.blocking("list leases".to_string(), false, move |store, _| {
            let Some(dir) = store.dir.open(false)? else {
                return Ok(Vec::new());
            };
            let mut leases = Vec::new();
            for file in dir.file_names()? {
                if file.starts_with('.') || !file.ends_with(".json") {
                    continue;
                }
                match listed_record(dir.fd(), dir.path(), &file)? {
                    Ok(Some(versioned)) => {
                        if super::selector::matches(&requirements, versioned.metadata.labels.as_ref()) {
                            leases.push(versioned);
                        }
                    }
                    // Removed since the directory was read.
                    Ok(None) => {}
                    Err(why) => {
                        warn!(file = %dir.path().join(&file).display(), "{why}: not listed");
                    }
                }
            }
            leases.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
            Ok(leases)
        })
        .await
    }

    /// Create or compare-and-swap replace, as the write says, with the labels and annotations it carries.
    pub async fn write(&self, name: &str, write: &Write) -> Result<Versioned, StoreError> {
        let (name, write) = (name.to_string(), write.clone());
        self.blocking(format!("write lease {name}"), true, move |store, lock_by| match write.resource_version() {
            None => store.create_now(&name, &write.record, &write.metadata, lock_by),
            Some(resource_version) => {
                store.replace_now(&name, resource_version, &write.record, &write.metadata, lock_by)
            }
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
        self.blocking(format!("write lease {name}"), true, move |store, lock_by| {
            store.replace_with(&name, &resource_version, None, &record, lock_by, |_| {})
        })
        .await
    }

    /// Create the record, if there is none. If the record was deleted (its last one is kept), a create
    /// that does not carry a larger fencing token than the last record puts that record back instead,
    /// and conflicts: the writer reads it, waits out its holder if it has one, and continues its tokens.
    fn create_now(
        &self,
        name: &str,
        record: &LeaseSpec,
        metadata: &ObjectMeta,
        lock_by: Instant,
    ) -> Result<Versioned, StoreError> {
        let files = LeaseFiles::new(name)?;
        validate(name, record)?;
        let exists = || StoreError::Conflict(format!("lease {name} already exists"));
        let mut lost = self.lost_while_waiting(&files, None);
        let dir = self.dir.lock(lock_by, || lost().then(exists))?;
        if read_record(dir.fd(), dir.path(), &files, Which::Record)?.is_some() {
            return Err(StoreError::Conflict(format!("lease {name} already exists")));
        }
        let last = read_record(dir.fd(), dir.path(), &files, Which::Last)?;
        let version = match &last {
            Some(last) => last
                .version
                .checked_add(1)
                .filter(|next| *next <= LAST_VERSION)
                .ok_or_else(|| overflow(&dir, &files))?,
            None => 1,
        };
        if let Some(last) = last {
            let token = last.versioned.record.lease_transitions.unwrap_or(0);
            if record.lease_transitions.unwrap_or(0) <= token {
                let mut lease = last.lease;
                lease.metadata.resource_version = Some(version.to_string());
                // Nobody holds it any more: the record is back only for its tokens, and it takes the labels
                // and annotations of this create, so that a semaphore whose every user has stopped can be
                // deleted and made again with another slot count, as on an API server.
                if !crate::lease::held_at(&last.versioned.record, k8s_openapi::jiff::Timestamp::now()) {
                    lease.metadata.labels = metadata.labels.clone();
                    lease.metadata.annotations = metadata.annotations.clone();
                } else {
                    // Held, a slot's record may be a holder's that crashed: its slot count is the create's all
                    // the same (found by review: a semaphore deleted and made again with another count, after
                    // a user crashed, was refused for good). A holder alive renews with its own count, and is
                    // refused then; a dead one is waited out. A plain lease's record (no count) stays one:
                    // given the create's count, a semaphore took its live holder for another process's hold of
                    // that slot, and ran beside it (found by review, helper-175).
                    let key = crate::lease::SLOTS_ANNOTATION;
                    let count = metadata.annotations.as_ref().and_then(|a| a.get(key)).cloned();
                    let annotations = lease.metadata.annotations.get_or_insert_with(Default::default);
                    match count {
                        Some(count) if annotations.contains_key(key) => annotations.insert(key.to_string(), count),
                        _ => annotations.remove(key),
                    };
                }
                self.write_lease(&dir, &files, &lease)?;
                let holder = last.versioned.record.holder_identity.unwrap_or_default();
                warn!(
                    lease = name,
                    holder = ?holder,
                    token,
                    "the lease record was deleted: restored its last record, so that its holder is waited out \
                     and its fencing tokens continue"
                );
                return Err(StoreError::Conflict(format!(
                    "lease {name} was deleted; its last record (token {token}) is back in place"
                )));
            }
        }
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(self.namespace.clone()),
                resource_version: Some(version.to_string()),
                // As an API server gives every object one: a record made again is another, and a write
                // meant for the one before (at the same version by chance) does not land on it.
                uid: Some(new_uid()),
                creation_timestamp: Some(Time(k8s_openapi::jiff::Timestamp::now())),
                labels: metadata.labels.clone(),
                annotations: metadata.annotations.clone(),
                ..ObjectMeta::default()
            },
            spec: Some(record.clone()),
        };
        self.write_lease(&dir, &files, &lease)
    }

    fn replace_now(
        &self,
        name: &str,
        resource_version: &str,
        record: &LeaseSpec,
        metadata: &ObjectMeta,
        lock_by: Instant,
    ) -> Result<Versioned, StoreError> {
        self.replace_with(name, resource_version, metadata.uid.as_deref(), record, lock_by, |stored| {
            stored.labels = metadata.labels.clone();
            stored.annotations = metadata.annotations.clone();
        })
    }

    /// The compare-and-swap under the directory's lock; `edit` sets what the write changes in the metadata.
    /// A write that carries a `uid` is for that record only, as on an API server (its uid precondition).
    fn replace_with(
        &self,
        name: &str,
        resource_version: &str,
        uid: Option<&str>,
        record: &LeaseSpec,
        lock_by: Instant,
        edit: impl FnOnce(&mut ObjectMeta),
    ) -> Result<Versioned, StoreError> {
        let files = LeaseFiles::new(name)?;
        validate(name, record)?;
        let changed =
            || StoreError::Conflict(format!("lease {name} changed: its resourceVersion is not {resource_version}"));
        let mut lost = self.lost_while_waiting(&files, Some(resource_version));
        let dir = self.dir.lock(lock_by, || lost().then(changed))?;
        let Some(stored) = read_record(dir.fd(), dir.path(), &files, Which::Record)? else {
            return Err(StoreError::Conflict(format!("lease {name} does not exist")));
        };
        // `.NAME.last` is normally this very file; after a crash between its two renames it is one write
        // behind (see `install`).
        let last = match dir.identity(&files.last)? {
            Some(identity) if identity == stored.identity => None,
            Some(_) => read_record(dir.fd(), dir.path(), &files, Which::Last).ok().flatten(),
            None => None,
        };
        let last_version = last.as_ref().map_or(stored.version, |last| last.version);
        let next = stored
            .version
            .max(last_version)
            .checked_add(1)
            .filter(|next| *next <= LAST_VERSION)
            .ok_or_else(|| overflow(&dir, &files))?;
        // An older record put back under the last write, at a lower token (a backup renamed into place:
        // `rsync`, `mv`, an editor's save; `.NAME.last`, a hard link of the record as last written, stays):
        // the last write is the lease's, and may be a live hold. A write based on it (its holder's renewal or
        // release) goes on from it; any other is refused, and the last write written back at the next version:
        // its writer reads that, and waits out the hold it shows (found by review, rv252: a process that never
        // saw the holder took the free record put back, beside the holder's child, with the holder's very
        // token; rv255: the holder's release, refused, left its hold to be written back after it had gone).
        // A crash between a write's two renames leaves `.NAME.last` behind, never ahead (`install`: found by
        // review, rv253 and rv257, when it was the other way round, a dead acquirer's write was taken for the
        // last write and written back, and a write-back killed between its renames for a crash).
        let token = |record: &LeaseSpec| record.lease_transitions.unwrap_or(0);
        let put_back = last.filter(|last| {
            last.version > stored.version && token(&last.versioned.record) > token(&stored.versioned.record)
        });
        let base = match put_back {
            Some(last) if last.versioned.resource_version == resource_version => last,
            Some(last) => {
                let mut lease = last.lease;
                lease.metadata.resource_version = Some(next.to_string());
                self.write_lease(&dir, &files, &lease)?;
                return Err(StoreError::Conflict(format!(
                    "lease {name} changed: an older record was put back under its last write, which is restored"
                )));
            }
            None => stored,
        };
        if base.versioned.resource_version != resource_version {
            return Err(StoreError::Conflict(format!(
                "lease {name} changed: its resourceVersion is {}, not {resource_version}",
                base.versioned.resource_version
            )));
        }
        // Another record that happens to be at the same version (found by review: a lock directory swapped
        // for another under a holder, whose versions also began at 1): its holder's, not ours.
        if let (Some(ours), Some(stored_uid)) = (uid, base.lease.metadata.uid.as_deref())
            && ours != stored_uid
        {
            return Err(StoreError::Conflict(format!(
                "lease {name} was made again: its uid is {stored_uid}, not {ours}"
            )));
        }
        // Metadata (labels, annotations, creationTimestamp) is kept; the spec is the caller's, whole,
        // as a Kubernetes replace does.
        let mut lease = base.lease;
        edit(&mut lease.metadata);
        lease.metadata.resource_version = Some(next.to_string());
        lease.spec = Some(record.clone());
        self.write_lease(&dir, &files, &lease)
    }

    /// For a writer waiting for the directory's lock: whether its compare-and-swap is lost already, a
    /// create (`expected` None) by a record that appeared, a replace by another version. Read without the
    /// lock, that is true at the moment of the read, which is all a conflict says. When a released lease
    /// wakes a crowd of waiters, all but the first learn it while the first writes, instead of queueing
    /// for the lock behind each other (and in front of the next release). The record is read once; after
    /// that, a new file at its name (every write makes one) is the change.
    fn lost_while_waiting<'a>(&'a self, files: &'a LeaseFiles, expected: Option<&'a str>) -> impl FnMut() -> bool + 'a {
        let mut dir = None;
        let mut seen: Option<Option<(u64, u64)>> = None;
        move || {
            if dir.is_none() {
                dir = self.dir.open(false).ok().flatten();
            }
            let Some(dir) = &dir else { return false };
            match seen {
                Some(before) => dir.identity(&files.record).is_ok_and(|now| now != before),
                None => match read_record(dir.fd(), dir.path(), files, Which::Record) {
                    // (Unless `.NAME.last`, another file, is at the version expected: a record put back under
                    // the last write, which the locked path settles; see `replace_with`.)
                    Ok(Some(stored))
                        if expected.is_none_or(|expected| {
                            stored.versioned.resource_version != expected && !last_is_at(dir, files, &stored, expected)
                        }) =>
                    {
                        true
                    }
                    // A replace of a record that is not there.
                    Ok(None) if expected.is_some() => true,
                    Ok(stored) => {
                        seen = Some(stored.map(|stored| stored.identity));
                        false
                    }
                    // Unreadable: the locked path decides, and says why.
                    Err(_) => false,
                },
            }
        }
    }

    /// Watch one lease: the current record at once, then every change, driven by inotify on the lock
    /// directory and re-read every `retry_period` as a safety net (every 100 ms while inotify is not
    /// available). Must be called inside the tokio runtime.
    pub fn watch(&self, name: &str, retry_period: Duration) -> Watch {
        let (updates_tx, updates_rx) = mpsc::channel(16);
        let files = match LeaseFiles::new(name) {
            Ok(files) => files,
            Err(err) => {
                // The CLI validates names, and get/create report this as an error; the watch just ends.
                warn!(lease = name, error = %err, "cannot watch this lease");
                return Watch::new(updates_rx, tokio::spawn(async move { drop(updates_tx) }));
            }
        };
        let poll_every = retry_period.max(MIN_POLL);
        let task = tokio::spawn(forward_changes(self.dir.clone(), files, poll_every, true, updates_tx));
        Watch::new(updates_rx, task)
    }

    /// Write `lease` atomically (see `LockedDir::install`) and return it as a later `get` will read it
    /// (times at microsecond precision, as the API server returns them). The caller holds the lock.
    fn write_lease(&self, dir: &LockedDir<'_>, files: &LeaseFiles, lease: &Lease) -> Result<Versioned, StoreError> {
        let mut bytes = serde_json::to_vec(lease)
            .map_err(|err| StoreError::Fatal(Error::File(format!("cannot serialize lease {}: {err}", files.name))))?;
        bytes.push(b'\n');
        if bytes.len() as u64 > dir::MAX_RECORD {
            // Never write what every reader would refuse (and count as held for good).
            return Err(StoreError::Fatal(Error::File(format!(
                "lease {} would be {} bytes, more than a lease record may have ({} bytes)",
                files.name,
                bytes.len(),
                dir::MAX_RECORD
            ))));
        }
        let (_, _, written) = parse_lease(files, &bytes).map_err(|why| {
            StoreError::Fatal(Error::Internal(format!("lease {} would be written unreadable: {why}", files.name)))
        })?;
        dir.install(&bytes, &files.record, &files.last, &files.temp, &files.last_temp)?;
        Ok(written)
    }
}

/// Whether `.NAME.last` is another file than the record `stored` and at version `expected`.
fn last_is_at(dir: &dir::DirHandle<'_>, files: &LeaseFiles, stored: &Stored, expected: &str) -> bool {
    dir.identity(&files.last).ok().flatten().is_some_and(|identity| identity != stored.identity)
        && read_record(dir.fd(), dir.path(), files, Which::Last)
            .ok()
            .flatten()
            .is_some_and(|last| last.versioned.resource_version == expected)
}

/// Which of a lease's record files to read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Record,
    Last,
}

/// A record as read from its file.
struct Stored {
    lease: Lease,
    version: u64,
    versioned: Versioned,
    /// The file's (device, inode).
    identity: (u64, u64),
}

/// Read a record file of the lease; `None` if there is none. One that cannot be read as a Lease of this
/// name is a transient error: the lease counts as held (nobody can write it) until it is repaired.
fn read_record(
    dir: BorrowedFd<'_>,
    dir_path: &Path,
    files: &LeaseFiles,
    which: Which,
) -> Result<Option<Stored>, StoreError> {
    let file = match which {
        Which::Record => &files.record,
        Which::Last => &files.last,
    };
    let unreadable = |why: String| {
        let path = dir_path.join(file);
        StoreError::Unreadable(match which {
            Which::Record => format!(
                "lease record {} {why}: the lease counts as held until it is a valid Lease again \
                 (mpsync never overwrites a record it cannot read)",
                path.display()
            ),
            Which::Last => format!(
                "{} (the last record of lease {}, kept so that deleting {} resets neither its holder nor its \
                 fencing tokens) {why}: the lease counts as held until it is a valid Lease again",
                path.display(),
                files.name,
                files.record
            ),
        })
    };
    let contents = match dir::read_at(dir, dir_path, file)? {
        None => return Ok(None),
        Some(Err(unreadable_file)) => return Err(unreadable(unreadable_file.to_string())),
        Some(Ok(contents)) => contents,
    };
    let (lease, version, versioned) = parse_record(files, &contents.bytes).map_err(unreadable)?;
    Ok(Some(Stored { lease, version, versioned, identity: contents.identity }))
}

/// The file `file` of the lock directory read as the record of the lease it names, for a listing: `None`
/// if it is gone, or why it is not a record.
fn listed_record(
    dir: BorrowedFd<'_>,
    dir_path: &Path,
    file: &str,
) -> Result<Result<Option<Versioned>, String>, StoreError> {
    let contents = match dir::read_at(dir, dir_path, file)? {
        None => return Ok(Ok(None)),
        Some(Err(unreadable)) => return Ok(Err(unreadable.to_string())),
        Some(Ok(contents)) => contents,
    };
    let name = match serde_json::from_slice::<Lease>(&contents.bytes) {
        Ok(lease) => lease.metadata.name.unwrap_or_default(),
        Err(err) => return Ok(Err(format!("is not a valid Lease ({err})"))),
    };
    let files = match LeaseFiles::new(&name) {
        Ok(files) if files.record == file => files,
        _ => return Ok(Err(format!("holds lease {name:?}, which is not kept in this file"))),
    };
    if let Some(in_the_way) = dir::directory_in_the_way(dir, dir_path, &files.written()) {
        return Ok(Err(format!("is the record of lease {name}, but {in_the_way}")));
    }
    Ok(parse_record(&files, &contents.bytes).map(|(_, _, versioned)| Some(versioned)))
}

/// The largest resourceVersion a write makes: the largest, `u64::MAX`, is never written (only a hand edit
/// makes a record at it or at this one).
const LAST_VERSION: u64 = u64::MAX - 1;

/// Parse a record of the lease as it is read: the Lease, its resourceVersion as a number, and what the
/// store returns; or why it is not one mpsync can use.
///
/// A record at `LAST_VERSION` or above is not: no write can follow it, so it is read as what it is, a
/// record mpsync cannot use, by `status` and `observe` as by `lock` (found by review, helper-159, at the
/// largest; helper-166, one below it: `status` showed the lease free while `lock` ended with an internal
/// error, the write after it being at the largest). The write that makes one (after a hand edit to the
/// version below) is the lease's last.
fn parse_record(files: &LeaseFiles, bytes: &[u8]) -> Result<(Lease, u64, Versioned), String> {
    let (lease, version, versioned) = parse_lease(files, bytes)?;
    if version == LAST_VERSION {
        return Err(format!(
            "has metadata.resourceVersion {version}, one below the largest, after which no write can follow \
             (mpsync never writes the largest); remove {} and {} while no process uses the lease",
            files.record, files.last
        ));
    }
    Ok((lease, version, versioned))
}

/// Parse a record of the lease as it is written (see `parse_record` for one that is read): the Lease, its
/// resourceVersion as a number, and what the store returns; or why it is not one.
fn parse_lease(files: &LeaseFiles, bytes: &[u8]) -> Result<(Lease, u64, Versioned), String> {
    let name = files.name.as_str();
    let lease: Lease = serde_json::from_slice(bytes).map_err(|err| format!("is not a valid Lease ({err})"))?;
    if let Some(other) = lease.metadata.name.as_deref().filter(|other| *other != name) {
        return Err(format!("holds lease {other:?}, not {name:?}"));
    }
    let Some(resource_version) = lease.metadata.resource_version.clone() else {
        return Err("has no metadata.resourceVersion".to_string());
    };
    let version: u64 = resource_version
        .parse()
        .map_err(|_| format!("has metadata.resourceVersion {resource_version:?}, not a whole number"))?;
    if version > LAST_VERSION {
        return Err(format!(
            "has metadata.resourceVersion {version}, the largest, after which no write can follow; remove {} and \
             {} while no process uses the lease",
            files.record, files.last
        ));
    }
    let record = lease.spec.clone().unwrap_or_default();
    let versioned = Versioned { resource_version, record, metadata: lease.metadata.clone() };
    Ok((lease, version, versioned))
}

/// A next resourceVersion past `LAST_VERSION`: unreachable, as a record at it or above is not read as a
/// Lease (see `parse_record`); a guard, counting the lease as held as for a record mpsync cannot read.
fn overflow(dir: &LockedDir<'_>, files: &LeaseFiles) -> StoreError {
    StoreError::Unreadable(format!(
        "lease record {}: its resourceVersion cannot grow any more (edited by hand?); remove it and {} while \
         no process uses the lease",
        dir.path().join(&files.record).display(),
        files.last
    ))
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

/// What the watch saw: the record, or its absence as of the last record kept (empty if none is kept). An
/// elector that knows that very version reads again to decide, so an absence seen in the middle of a
/// write that puts the record back is never taken for a deletion of what that write put back.
///
/// With `unless` (a poll without inotify), the record is read only if it no longer looks as it did then:
/// `Ok(None)` says it does. Every write renames a new file into place, so a look is enough, and costs a
/// fraction of a read.
fn observe(
    dir: &LockDir,
    files: &LeaseFiles,
    subscribe: bool,
    unless: Option<Option<Glance>>,
) -> (Result<Option<WatchUpdate>, StoreError>, Option<Glance>, Option<Subscribed>) {
    let handle = match dir.open(false) {
        Ok(Some(handle)) => handle,
        Ok(None) => {
            let subscribed = subscribe.then(|| Subscribed::DirectoryMissing);
            return (Ok(Some(WatchUpdate::Absent { resource_version: String::new() })), None, subscribed);
        }
        Err(err) => return (Err(err), None, None),
    };
    // Subscribed before the read: no change between the two can be missed.
    let subscribed = subscribe.then(|| match inotify::subscribe(handle.fd(), handle.path(), &files.record) {
        Ok(subscription) => Subscribed::Yes(subscription),
        Err(err) => Subscribed::Failed(err),
    });
    let look = dir::glance(handle.fd(), &files.record);
    if unless == Some(look) && !matches!(subscribed, Some(Subscribed::Yes(_))) {
        return (Ok(None), look, subscribed);
    }
    // A failed read, as for `get`: the record is not what the lease is while no write of it can be made
    // (found by review, helper-166: `observe` of a semaphore, and the library's, reported a slot free
    // behind such a directory while `lock` counted it as held).
    if let Some(in_the_way) = dir::directory_in_the_way(handle.fd(), handle.path(), &files.written()) {
        return (Err(in_the_way), look, subscribed);
    }
    let current = read_record(handle.fd(), handle.path(), files, Which::Record).map(|stored| match stored {
        Some(stored) => WatchUpdate::Present(stored.versioned),
        None => {
            let last = read_record(handle.fd(), handle.path(), files, Which::Last).ok().flatten();
            WatchUpdate::Absent {
                resource_version: last.map(|last| last.versioned.resource_version).unwrap_or_default(),
            }
        }
    });
    (current.map(Some), look, subscribed)
}

/// What became of an attempt to subscribe to inotify events.
enum Subscribed {
    Yes(inotify::Subscription),
    DirectoryMissing,
    Failed(std::io::Error),
}

/// The watch's task: reads the record at once, then whenever inotify says it may have changed or
/// `poll_every` passes (`FALLBACK_POLL` without inotify), and sends it when it differs from what was
/// last sent. Without inotify (`use_inotify`, or none to be had), it subscribes again at every read.
async fn forward_changes(
    dir: LockDir,
    files: LeaseFiles,
    poll_every: Duration,
    use_inotify: bool,
    updates: mpsc::Sender<WatchUpdate>,
) {
    let files = Arc::new(files);
    let mut subscription: Option<inotify::Subscription> = None;
    let mut last_sent: Option<WatchUpdate> = None;
    let mut last_error: Option<String> = None;
    let mut fallback_reported = false;
    // Without inotify: how the record looked at the last read, and when the last full read was (one
    // every `poll_every` whatever the looks say).
    let mut looked: Option<Option<Glance>> = None;
    let mut read_fully_at = tokio::time::Instant::now();
    loop {
        let subscribe = use_inotify && subscription.is_none();
        let unless = looked.filter(|_| subscription.is_none() && read_fully_at.elapsed() < poll_every);
        let (reading_dir, reading_files) = (dir.clone(), Arc::clone(&files));
        let (read, look, subscribed) =
            tokio::task::spawn_blocking(move || observe(&reading_dir, &reading_files, subscribe, unless))
                .await
                .unwrap_or_else(|join| (Err(StoreError::Transient(join.to_string())), None, None));
        looked = Some(look);
        match subscribed {
            Some(Subscribed::Yes(new)) => {
                if fallback_reported {
                    info!(lease = %files.name, "watching the lock directory for changes again");
                    fallback_reported = false;
                }
                subscription = Some(new);
            }
            Some(Subscribed::Failed(err)) if !fallback_reported => {
                fallback_reported = true;
                let limit = err.raw_os_error() == Some(nix::errno::Errno::EMFILE as i32)
                    || err.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32);
                let why = if limit { "; the user's inotify instances or watches are used up" } else { "" };
                info!(
                    lease = %files.name,
                    lock_dir = %dir.path().display(),
                    error = %err,
                    "cannot watch the lock directory for changes{why}; reading the record every {:?} instead",
                    poll_every.min(FALLBACK_POLL)
                );
            }
            _ => {}
        }
        match read {
            Ok(None) => {}
            Ok(Some(current)) => {
                read_fully_at = tokio::time::Instant::now();
                last_error = None;
                if last_sent.as_ref() != Some(&current) {
                    if updates.send(current.clone()).await.is_err() {
                        return;
                    }
                    last_sent = Some(current);
                }
            }
            Err(err) => {
                // get/replace report this to the run loop; here it is worth one line per new error.
                let message = err.to_string();
                if last_error.as_deref() != Some(message.as_str()) {
                    warn!(lease = %files.name, error = %message, "cannot read the lease record; retrying");
                    last_error = Some(message);
                }
            }
        }
        let period = if subscription.is_some() { poll_every } else { poll_every.min(FALLBACK_POLL) };
        match subscription.as_mut() {
            Some(watching) => {
                tokio::select! {
                    woke = watching.wakeups.recv() => {
                        if woke.is_none() {
                            // The directory was removed or moved: read, and watch the one at the path.
                            debug!(lease = %files.name, "the watched lock directory went away; watching again");
                            subscription = None;
                        }
                    }
                    () = tokio::time::sleep(period) => {}
                    () = updates.closed() => return,
                }
            }
            None => {
                tokio::select! {
                    () = tokio::time::sleep(period) => {}
                    () = updates.closed() => return,
                }
            }
        }
    }
}

/// A random uid in the API server's form (a version 4 UUID).
fn new_uid() -> String {
    let (a, b) = (crate::retry::random_u64(), crate::retry::random_u64());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests;
