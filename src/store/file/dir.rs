//! The lock directory, handled as flock(1), tmux and ssh-agent users expect of files in a shared `/tmp`.
//!
//! - It is opened with `O_DIRECTORY|O_NOFOLLOW` and used only if it is owned by the effective uid and closed
//!   to everyone else (`mode & 077 == 0`): anything else may be another user's trap (a squatted
//!   `/tmp/mpsync-UID` full of symlinks), and is refused.
//! - Every file is reached relative to that handle (`openat`, `renameat`, `linkat`, `unlinkat`), never
//!   through a symlink: new files are created with `O_EXCL|O_NOFOLLOW`, records are opened with
//!   `O_NOFOLLOW|O_NONBLOCK` and must be regular files under [`MAX_RECORD`] bytes, so a FIFO or a device
//!   in place of a record blocks nobody.
//! - The compare-and-swap lock is an exclusive `flock` on the directory itself, checked after it is taken
//!   to be the directory at the path. A directory cannot be deleted while it holds records, so no one can
//!   take the lock away by deleting or replacing a lock file (the flaw of a per-lease `NAME.lock`).
//! - The path is opened again for every call: if the directory is removed and created again, mpsync
//!   works in the new one (after the same checks).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, Flock, FlockArg, OFlag, openat, renameat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat};
use nix::unistd::{UnlinkatFlags, linkat, unlinkat};

use crate::error::Error;
use crate::store::StoreError;

/// The largest record mpsync reads: a Kubernetes object is at most 1.5 MiB, a Lease a few hundred bytes.
pub const MAX_RECORD: u64 = 1 << 20;

/// Records and their copies: read and write for the owner only, and the sticky bit, which
/// systemd-tmpfiles honours by never ageing such a file out (see the XDG Base Directory specification).
const RECORD_MODE: u32 = 0o1600;

/// The lock directory's path. Cheap to clone; every use opens it afresh.
#[derive(Clone, Debug)]
pub struct LockDir {
    path: PathBuf,
}

/// The lock directory, open and checked.
pub struct DirHandle<'a> {
    path: &'a Path,
    fd: OwnedFd,
}

/// The lock directory under its compare-and-swap lock (released on drop).
pub struct LockedDir<'a> {
    path: &'a Path,
    lock: Flock<OwnedFd>,
    /// Dropped after the lock (fields drop in order).
    _writing: std::sync::RwLockReadGuard<'static, ()>,
}

/// Held shared by every write of this process while it holds a directory's lock, and exclusively while
/// the process stops itself for job control (`hold_writes`): a process never stops with a lock directory
/// locked, which would keep every lease of that directory from being written until it continued.
static WRITING: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Wait for this process's writes in progress to finish (each within its call timeout), and start no new
/// one until the guard is dropped. For stopping the process (Ctrl-Z).
pub fn hold_writes() -> std::sync::RwLockWriteGuard<'static, ()> {
    WRITING.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What is wrong with a file that should hold a record.
#[derive(Debug)]
pub enum Unreadable {
    /// A symlink, FIFO, socket, device or directory.
    NotRegular(&'static str),
    TooLarge(u64),
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreadable::NotRegular(kind) => write!(f, "is {kind}, not a regular file"),
            Unreadable::TooLarge(size) => write!(f, "has {size} bytes, more than a lease record ever needs"),
        }
    }
}

/// A file's contents and identity, as read.
pub struct Contents {
    pub bytes: Vec<u8>,
    /// (device, inode): tells whether two names are one file.
    pub identity: (u64, u64),
}

impl LockDir {
    pub fn new(path: PathBuf) -> LockDir {
        // Without a trailing `/` or `/.`: either makes the kernel follow a symbolic link in the last
        // component whatever O_NOFOLLOW says, and hides that component from the parents' check.
        // Absolute, so that a library caller's later change of directory does not move its leases
        // (found by review: a holder saw its record "deleted" and lost the lease).
        let path = std::path::absolute(&path).unwrap_or(path).components().collect();
        LockDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Open the directory, creating it (0700, and its missing parents) if `create`; `None` if it does not
    /// exist and `create` is false. A directory that is not this user's alone is a fatal error.
    pub fn open(&self, create: bool) -> Result<Option<DirHandle<'_>>, StoreError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut created = false;
        for _ in 0..3 {
            match nix::fcntl::open(&self.path, flags, Mode::empty()) {
                Ok(fd) => {
                    if created {
                        // Whatever the umask did: owner only.
                        let _ = fchmod(&fd, Mode::from_bits_truncate(0o700));
                    }
                    let handle = DirHandle { path: &self.path, fd };
                    handle.check()?;
                    return Ok(Some(handle));
                }
                Err(Errno::ENOENT) if !create => return Ok(None),
                Err(Errno::ENOENT) => created = self.create()?,
                // O_NOFOLLOW with O_DIRECTORY: a symlink fails with ELOOP or ENOTDIR.
                Err(Errno::ELOOP | Errno::ENOTDIR) if self.path.symlink_metadata().is_ok_and(|m| m.is_symlink()) => {
                    return Err(self.refuse("is a symbolic link: mpsync never follows links to its lock directory"));
                }
                Err(Errno::ENOTDIR) if self.path.symlink_metadata().is_ok() => {
                    return Err(self.refuse("is not a directory"));
                }
                Err(errno) => return Err(self.failure("open", &self.path, errno)),
            }
        }
        Err(StoreError::Transient(format!("lock directory {} keeps disappearing", self.path.display())))
    }

    /// Create the directory (0700) and any missing parents; whether this call created it.
    fn create(&self) -> Result<bool, StoreError> {
        if let Some(parent) = self.path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|err| self.io_failure("create", parent, &err))?;
        }
        match nix::unistd::mkdir(&self.path, Mode::from_bits_truncate(0o700)) {
            Ok(()) => Ok(true),
            Err(Errno::EEXIST) => Ok(false),
            Err(errno) => Err(self.failure("create", &self.path, errno)),
        }
    }

    /// Take the compare-and-swap lock: an exclusive flock on the directory, retried until it is the
    /// directory at the path (one removed, or renamed away, meanwhile is let go). Given up at `give_up_at`,
    /// transiently: nothing was written. (A writer holds the lock for a read, a small write and an fsync:
    /// milliseconds; the caller gives up early enough to say "not applied" rather than "unknown".)
    ///
    /// While it waits, `lost` is asked now and then whether the caller's compare-and-swap is already lost
    /// (the record changed under the writer that holds the lock); if so, the wait ends with that error.
    pub fn lock(
        &self,
        give_up_at: Instant,
        mut lost: impl FnMut() -> Option<StoreError>,
    ) -> Result<LockedDir<'_>, StoreError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            let writing = WRITING.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            let handle = self.open(true)?.expect("created if missing");
            let mut fd = handle.fd;
            loop {
                match Flock::lock(fd, FlockArg::LockExclusiveNonblock) {
                    Ok(lock) => {
                        let locked = LockedDir { path: &self.path, lock, _writing: writing };
                        if locked.is_at_path()? {
                            return Ok(locked);
                        }
                        break;
                    }
                    Err((returned, Errno::EWOULDBLOCK)) => {
                        if let Some(lost) = lost() {
                            return Err(lost);
                        }
                        if Instant::now() >= give_up_at {
                            return Err(StoreError::Transient(format!(
                                "lock directory {} is still locked by another writer after {:?}",
                                self.path.display(),
                                started.elapsed()
                            )));
                        }
                        fd = returned;
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_millis(10));
                    }
                    Err((returned, Errno::EINTR)) => fd = returned,
                    Err((_, errno)) => return Err(self.failure("lock", &self.path, errno)),
                }
            }
            if Instant::now() >= give_up_at {
                return Err(StoreError::Transient(format!(
                    "lock directory {} kept being replaced while mpsync locked it",
                    self.path.display()
                )));
            }
        }
    }

    /// Check once that the directory is usable at all: writable (a read-only file system, say), and on a
    /// file system whose directories can be flocked (not NFS).
    pub fn check_usable(&self) -> Result<(), Error> {
        let fatal = |err: StoreError| match err {
            StoreError::Fatal(err) => err,
            other => Error::File(other.to_string()),
        };
        let handle = self.open(true).map_err(fatal)?.expect("created if missing");
        // A network file system takes flock(2) on a directory as a lock of this machine alone (NFS,
        // SMB/CIFS and 9p have no lock operation for directories: the kernel keeps the lock locally), so
        // it succeeds, and two machines sharing the directory would both write at once.
        if let Ok(stats) = nix::sys::statfs::fstatfs(&handle.fd)
            && let Some(kind) = network_file_system(stats.filesystem_type().0)
        {
            return Err(Error::File(format!(
                "refusing lock directory {}: it is on {kind}, where a lock on a directory holds on this machine \
                 alone; use a lock directory on a local file system (--lock-dir)",
                self.path.display()
            )));
        }
        self.check_parents()?;
        handle.probe_write().map_err(fatal)?;
        match Flock::lock(handle.fd, FlockArg::LockSharedNonblock) {
            Ok(_) | Err((_, Errno::EWOULDBLOCK | Errno::EINTR)) => Ok(()),
            Err((_, errno)) => Err(Error::File(format!(
                "cannot lock directory {}: {errno}; use a lock directory on a local file system (--lock-dir)",
                self.path.display()
            ))),
        }
    }

    /// The checks of `check_usable` that matter to a reader: a directory there is this user's alone, and so
    /// are its parents. A missing one is fine (no leases); nothing is created or written.
    pub fn check_readable(&self) -> Result<(), Error> {
        let fatal = |err: StoreError| match err {
            StoreError::Fatal(err) => err,
            other => Error::File(other.to_string()),
        };
        if self.open(false).map_err(fatal)?.is_some() {
            self.check_parents()?;
        }
        Ok(())
    }

    /// Every directory above the lock directory is owned by root or this user, and writable by nobody
    /// else unless sticky (as `/tmp`): otherwise another user could rename the lock directory away, and
    /// the next mpsync would make a new, empty one beside the holders of the old. OpenSSH checks the
    /// parents of its files the same way.
    fn check_parents(&self) -> Result<(), Error> {
        let parent = match self.path.parent() {
            None => return Ok(()),
            Some(parent) if parent.as_os_str().is_empty() => Path::new("."),
            Some(parent) => parent,
        };
        let inspect = |err: &dyn std::fmt::Display| {
            Error::File(format!("cannot inspect the parents of lock directory {}: {err}", self.path.display()))
        };
        let euid = nix::unistd::geteuid().as_raw();
        // The path as given, one component at a time: a symbolic link on the way is as good as its owner
        // (whoever owns it can point it elsewhere), whatever directory it leads to.
        let given = std::path::absolute(parent).map_err(|err| inspect(&err))?;
        for prefix in given.ancestors() {
            let Ok(stat) = nix::sys::stat::lstat(prefix) else { continue };
            if stat.st_mode & nix::libc::S_IFMT == nix::libc::S_IFLNK && stat.st_uid != 0 && stat.st_uid != euid {
                return Err(Error::File(format!(
                    "refusing lock directory {}: its path goes through the symbolic link {}, owned by uid {}, \
                     who could point it elsewhere; pass --lock-dir with a path only you or root control",
                    self.path.display(),
                    prefix.display(),
                    stat.st_uid
                )));
            }
        }
        let parent = std::fs::canonicalize(parent).map_err(|err| inspect(&err))?;
        for ancestor in parent.ancestors() {
            let stat = nix::sys::stat::stat(ancestor).map_err(|errno| {
                Error::File(format!(
                    "cannot inspect {} (a parent of lock directory {}): {errno}",
                    ancestor.display(),
                    self.path.display()
                ))
            })?;
            let mode = stat.st_mode & 0o7777;
            let sticky = mode & 0o1000 != 0;
            let problem = if stat.st_uid != 0 && stat.st_uid != euid {
                format!("is owned by uid {}", stat.st_uid)
            } else if mode & 0o022 != 0 && !sticky {
                format!("is writable by other users (mode {mode:04o}, not sticky)")
            } else {
                continue;
            };
            return Err(Error::File(format!(
                "refusing lock directory {}: its parent {} {problem}, so another user could replace it; pass \
                 --lock-dir with a directory whose parents only you or root can write",
                self.path.display(),
                ancestor.display()
            )));
        }
        Ok(())
    }

    fn refuse(&self, why: &str) -> StoreError {
        StoreError::Fatal(Error::File(format!(
            "refusing lock directory {}: it {why}; pass --lock-dir with a directory of your own",
            self.path.display()
        )))
    }

    fn failure(&self, action: &str, path: &Path, errno: Errno) -> StoreError {
        self.io_failure(action, path, &io::Error::from(errno))
    }

    /// A failure to open or create the directory itself (or its parents).
    fn io_failure(&self, action: &str, path: &Path, err: &io::Error) -> StoreError {
        if matches!(err.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) {
            return StoreError::Transient(format!("cannot {action} {}: {err}", path.display()));
        }
        StoreError::Fatal(Error::File(format!(
            "cannot {action} lock directory {}: {err}; pass --lock-dir with a directory you can write",
            path.display()
        )))
    }
}

impl DirHandle<'_> {
    /// Owned by the effective uid and closed to everyone else, as tmux and ssh-agent require of theirs.
    fn check(&self) -> Result<(), StoreError> {
        let stat = fstat(&self.fd).map_err(|errno| io_failure("inspect", self.path, &io::Error::from(errno)))?;
        let euid = nix::unistd::geteuid().as_raw();
        let mode = stat.st_mode & 0o7777;
        let problem = if stat.st_uid != euid {
            format!(
                "is owned by uid {}, not by this user (uid {euid}): another user may have made it to tamper with \
                 leases, so mpsync refuses it; pass --lock-dir with a directory of your own",
                stat.st_uid
            )
        } else if mode & 0o077 != 0 {
            format!(
                "is open to other users (mode {mode:04o}): mpsync refuses it; `chmod 700` it, or pass --lock-dir \
                 with a directory of your own"
            )
        } else {
            return Ok(());
        };
        Err(StoreError::Fatal(Error::File(format!("lock directory {} {problem}", self.path.display()))))
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The identity of `name` without following it; `None` if there is none.
    pub fn identity(&self, name: &str) -> Result<Option<(u64, u64)>, StoreError> {
        identity_at(self.fd(), self.path, name)
    }

    pub fn path(&self) -> &Path {
        self.path
    }

    /// The names of the files in this very directory (read through `/proc/self/fd`, so that a directory
    /// put at the path meanwhile is not the one read; at the path only where `/proc` is not mounted).
    /// Names that are not UTF-8 are left out: no lease has one.
    pub fn file_names(&self) -> Result<Vec<String>, StoreError> {
        let entries = match std::fs::read_dir(proc_path(self.fd())) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => std::fs::read_dir(self.path),
            entries => entries,
        }
        .map_err(|err| io_failure("list", self.path, &err))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|err| io_failure("list", self.path, &err))?;
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// Prove that files can be created here, without leaving one behind even after a crash (an
    /// `O_TMPFILE` has no name), or with a fresh name (`O_EXCL|O_NOFOLLOW`) where that is not supported.
    fn probe_write(&self) -> Result<(), StoreError> {
        let flags = OFlag::O_TMPFILE | OFlag::O_WRONLY | OFlag::O_CLOEXEC;
        match openat(&self.fd, ".", flags, Mode::from_bits_truncate(0o600)) {
            Ok(_) => return Ok(()),
            Err(Errno::EOPNOTSUPP | Errno::EISDIR | Errno::EINVAL) => {}
            Err(errno) => return Err(write_failure(self.path, errno)),
        }
        let name = format!(".probe.{}.{:016x}", std::process::id(), crate::retry::random_u64());
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match openat(&self.fd, name.as_str(), flags, Mode::from_bits_truncate(0o600)) {
            Ok(_) => {
                let _ = unlinkat(&self.fd, name.as_str(), UnlinkatFlags::NoRemoveDir);
                Ok(())
            }
            Err(errno) => Err(write_failure(self.path, errno)),
        }
    }
}

impl<'a> LockedDir<'a> {
    /// Whether the locked directory is still the one at the path (not removed, not renamed away).
    fn is_at_path(&self) -> Result<bool, StoreError> {
        let locked = fstat(&*self.lock).map_err(|errno| io_failure("inspect", self.path, &io::Error::from(errno)))?;
        match nix::sys::stat::lstat(self.path) {
            Ok(at_path) => Ok(identity(&at_path) == identity(&locked)),
            Err(Errno::ENOENT) => Ok(false),
            Err(errno) => Err(io_failure("inspect", self.path, &io::Error::from(errno))),
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.lock.as_fd()
    }

    pub fn path(&self) -> &'a Path {
        self.path
    }

    /// The identity of `name` without following it; `None` if there is none.
    pub fn identity(&self, name: &str) -> Result<Option<(u64, u64)>, StoreError> {
        identity_at(self.fd(), self.path, name)
    }

    /// Put `bytes` in place as `record`, and the same file as `last`: written to `temp` (created afresh,
    /// never through a link), fsynced, linked as `last_temp`, then renamed over `record` and then over
    /// `last`, so a reader never sees half a record and `last` is never ahead of `record` (a crash between
    /// the renames leaves it one write behind): a `last` ahead of `record` is an older record put back over
    /// `record`, never a write of mpsync's (found by review, rv257: with `last` renamed first, a write killed
    /// between its renames looked like a put-back, and a put-back's write-back killed there like a crash). The
    /// directory is fsynced last: a failure there changes nothing about the outcome.
    pub fn install(
        &self,
        bytes: &[u8],
        record: &str,
        last: &str,
        temp: &str,
        last_temp: &str,
    ) -> Result<(), StoreError> {
        let result = self.install_now(bytes, record, last, temp, last_temp);
        if result.is_err() {
            self.remove(temp);
            self.remove(last_temp);
        }
        result?;
        if let Err(errno) = nix::unistd::fsync(self.fd()) {
            tracing::debug!(lock_dir = %self.path.display(), error = %errno, "cannot fsync the lock directory");
        }
        Ok(())
    }

    fn install_now(
        &self,
        bytes: &[u8],
        record: &str,
        last: &str,
        temp: &str,
        last_temp: &str,
    ) -> Result<(), StoreError> {
        // Left behind by a writer that crashed (only writers under this lock create them).
        self.remove(temp);
        self.remove(last_temp);
        self.write_new(temp, bytes)?;
        match linkat(self.fd(), temp, self.fd(), last_temp, AtFlags::empty()) {
            Ok(()) => {}
            // A file system without hard links: a second copy.
            Err(Errno::EPERM | Errno::EOPNOTSUPP | Errno::EMLINK) => self.write_new(last_temp, bytes)?,
            Err(Errno::EEXIST) => return Err(appeared(self.fd(), self.path, last_temp)),
            Err(errno) => return Err(self.failure("write", last_temp, errno)),
        }
        if !publish() {
            self.remove(temp);
            self.remove(last_temp);
            return Err(StoreError::Transient(format!("write of {record} given up by its caller before it was made")));
        }
        let failure = |name: &str, errno: Errno| match errno {
            // A directory made by hand at the name (mpsync only ever makes files): nothing was replaced, and
            // no write of this lease can be until it is removed (found by review, helper-156: `.NAME.last`
            // made a directory ended every later `lock` with exit 125 and no word of what to do).
            Errno::EISDIR | Errno::ENOTEMPTY | Errno::EEXIST => StoreError::Unreadable(format!(
                "{} is a directory, where mpsync keeps a lease record: no write of this lease can be made \
                 (the lease counts as held) until it is removed",
                self.path.join(name).display()
            )),
            errno => self.failure("replace", name, errno),
        };
        renameat(self.fd(), temp, self.fd(), record).map_err(|errno| failure(record, errno))?;
        renameat(self.fd(), last_temp, self.fd(), last).map_err(|errno| failure(last, errno))
    }

    /// Create `name` (it must not exist, and is never followed), write `bytes` and fsync it.
    fn write_new(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(self.fd(), name, flags, Mode::from_bits_truncate(0o600)).map_err(|errno| match errno {
            Errno::EEXIST => appeared(self.fd(), self.path, name),
            errno => self.failure("create", name, errno),
        })?;
        let mut file = std::fs::File::from(fd);
        let written = io::Write::write_all(&mut file, bytes)
            .and_then(|()| fchmod(&file, Mode::from_bits_truncate(RECORD_MODE)).map_err(io::Error::from))
            .and_then(|()| file.sync_all());
        written.map_err(|err| io_failure("write", &self.path.join(name), &err))
    }

    fn remove(&self, name: &str) {
        let _ = unlinkat(self.fd(), name, UnlinkatFlags::NoRemoveDir);
    }

    fn failure(&self, action: &str, name: &str, errno: Errno) -> StoreError {
        io_failure(action, &self.path.join(name), &io::Error::from(errno))
    }
}

/// A temporary file made again since the writer removed it, by something other than mpsync (no other
/// writer holds the lock): nothing was written, and the next attempt removes it again.
/// A directory there (made by hand: mpsync only ever makes files) is not removed by the writer's cleanup
/// and would keep every write of the lease failing: say so, and what to do.
fn appeared(dir: BorrowedFd<'_>, dir_path: &Path, name: &str) -> StoreError {
    directory_in_the_way(dir, dir_path, &[name]).unwrap_or_else(|| {
        StoreError::Transient(format!("{} appeared while mpsync wrote it", dir_path.join(name).display()))
    })
}

/// The first of `names` (a lease's own file names) that is a directory, made by hand (mpsync only ever
/// makes files): no write of the lease can be made until it is removed, so the lease counts as held, and
/// a read says so too, for `status` and `observe` as for `lock` (found by review, helper-160: `status`
/// showed such a lease free while `lock` waited on it).
pub fn directory_in_the_way(dir: BorrowedFd<'_>, dir_path: &Path, names: &[&str]) -> Option<StoreError> {
    let name = names.iter().find(|name| {
        fstatat(dir, **name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .is_ok_and(|stat| SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR)
    })?;
    Some(StoreError::Unreadable(format!(
        "{} is a directory, where mpsync keeps or writes a lease record: no write of this lease can be made \
         (the lease counts as held) until it is removed",
        dir_path.join(name).display()
    )))
}

/// What a look at a file shows without opening it: enough to tell that it was replaced or written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Glance {
    identity: (u64, u64),
    size: i64,
    modified: (i64, i64),
    changed: (i64, i64),
}

/// A look at `name` (never followed); `None` if there is none, or it cannot be seen.
pub fn glance(dir: BorrowedFd<'_>, name: &str) -> Option<Glance> {
    let stat = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).ok()?;
    Some(Glance {
        identity: identity(&stat),
        size: stat.st_size,
        modified: (stat.st_mtime, stat.st_mtime_nsec),
        changed: (stat.st_ctime, stat.st_ctime_nsec),
    })
}

fn identity(stat: &FileStat) -> (u64, u64) {
    (stat.st_dev, stat.st_ino)
}

fn identity_at(dir: BorrowedFd<'_>, dir_path: &Path, name: &str) -> Result<Option<(u64, u64)>, StoreError> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(identity(&stat))),
        Err(Errno::ENOENT) => Ok(None),
        Err(errno) => Err(io_failure("inspect", &dir_path.join(name), &io::Error::from(errno))),
    }
}

/// Open `name` in `dir` without following a link and without blocking (a FIFO opens at once), and read
/// it if it is a regular file of a sensible size.
pub fn read_at(
    dir: BorrowedFd<'_>,
    dir_path: &Path,
    name: &str,
) -> Result<Option<Result<Contents, Unreadable>>, StoreError> {
    let path = || dir_path.join(name);
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let fd = match openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP) => return Ok(Some(Err(Unreadable::NotRegular("a symbolic link")))),
        Err(errno) => return Err(io_failure("read", &path(), &io::Error::from(errno))),
    };
    let stat = fstat(&fd).map_err(|errno| io_failure("read", &path(), &io::Error::from(errno)))?;
    let kind = SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits());
    if kind != SFlag::S_IFREG {
        let kind = match kind {
            SFlag::S_IFIFO => "a FIFO",
            SFlag::S_IFDIR => "a directory",
            SFlag::S_IFSOCK => "a socket",
            SFlag::S_IFCHR | SFlag::S_IFBLK => "a device",
            _ => "not a regular file",
        };
        return Ok(Some(Err(Unreadable::NotRegular(kind))));
    }
    let size = u64::try_from(stat.st_size).unwrap_or(u64::MAX);
    if size > MAX_RECORD {
        return Ok(Some(Err(Unreadable::TooLarge(size))));
    }
    let mut bytes = Vec::with_capacity(size as usize + 1);
    let file = std::fs::File::from(fd);
    io::Read::read_to_end(&mut io::Read::take(&file, MAX_RECORD + 1), &mut bytes)
        .map_err(|err| io_failure("read", &path(), &err))?;
    if bytes.len() as u64 > MAX_RECORD {
        return Ok(Some(Err(Unreadable::TooLarge(bytes.len() as u64))));
    }
    Ok(Some(Ok(Contents { bytes, identity: identity(&stat) })))
}

fn write_failure(path: &Path, errno: Errno) -> StoreError {
    StoreError::Fatal(Error::File(format!(
        "cannot write lock directory {}: {}; pass --lock-dir with a directory you can write",
        path.display(),
        io::Error::from(errno)
    )))
}

/// An I/O failure, classified: interrupted or would-block is worth retrying; anything else (permission,
/// read-only file system, no space) will not fix itself.
pub fn io_failure(action: &str, path: &Path, err: &io::Error) -> StoreError {
    if matches!(err.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) {
        return StoreError::Transient(format!("cannot {action} {}: {err}", path.display()));
    }
    if err.kind() == io::ErrorKind::NotFound {
        // The directory was removed under this call (files in a removed directory cannot be created):
        // the next call works in the directory at the path, created again.
        return StoreError::Transient(format!(
            "cannot {action} {}: {err}: the lock directory was removed meanwhile",
            path.display()
        ));
    }
    let hint = match err.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            "; pass --lock-dir with a directory you can write, or fix its permissions"
        }
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => "; free some space on its file system",
        io::ErrorKind::FileTooLarge => "; a file size limit (`ulimit -f`) is too low for a record",
        _ => "",
    };
    StoreError::Fatal(Error::File(format!("cannot {action} {}: {err}{hint}", path.display())))
}

/// `/proc/self/fd/N` for `fd`: the exact directory this handle holds, for calls that take a path (inotify).
pub fn proc_path(fd: BorrowedFd<'_>) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

// A write given up by its caller (the call timed out) must either never replace the record, or be known to
// be under way: then its outcome is unknown. The blocking task and the caller settle which, once, with a
// compare-and-swap on a shared state: the task claims PUBLISHING right before its renames; the caller, on
// its timeout, claims ABANDONED. (The state travels to `install_now` in a thread-local: the write runs on one
// blocking-pool thread from start to end.)

/// The write has not started to replace anything.
pub(super) const RUNNING: u8 = 0;
/// The write is replacing the record (its outcome, to a caller that gave up, is unknown).
const PUBLISHING: u8 = 1;
/// The caller gave up first: the write must not replace anything.
const ABANDONED: u8 = 2;

thread_local! {
    static PUBLISH_GATE: std::cell::RefCell<Option<std::sync::Arc<std::sync::atomic::AtomicU8>>> =
        const { std::cell::RefCell::new(None) };
}

/// Run `work` with `gate` as the publish gate of the writes it makes.
pub(super) fn with_publish_gate<T>(gate: std::sync::Arc<std::sync::atomic::AtomicU8>, work: impl FnOnce() -> T) -> T {
    PUBLISH_GATE.with(|cell| *cell.borrow_mut() = Some(gate));
    let result = work();
    PUBLISH_GATE.with(|cell| *cell.borrow_mut() = None);
    result
}

/// Claim the right to replace the record; false if the caller gave up already.
fn publish() -> bool {
    use std::sync::atomic::Ordering;
    PUBLISH_GATE.with(|cell| match cell.borrow().as_ref() {
        None => true,
        Some(gate) => gate.compare_exchange(RUNNING, PUBLISHING, Ordering::SeqCst, Ordering::SeqCst).is_ok(),
    })
}

/// The caller gives up: true if the write will now never replace anything, false if it is under way.
pub(super) fn abandon(gate: &std::sync::atomic::AtomicU8) -> bool {
    use std::sync::atomic::Ordering;
    gate.compare_exchange(RUNNING, ABANDONED, Ordering::SeqCst, Ordering::SeqCst).is_ok()
}

#[cfg(test)]
pub(super) fn publish_for_tests() -> bool {
    publish()
}

/// The network file systems (by `statfs` magic) whose directories cannot be locked across machines: the
/// name to give, or `None` for a local one. (FUSE is not among them: a FUSE file system may be local,
/// as fuse-overlayfs under rootless containers, and `statfs` cannot tell sshfs from it.)
pub fn network_file_system(magic: i64) -> Option<&'static str> {
    // Compared as the kernel's unsigned 32-bit values (f_type is signed on some architectures).
    Some(match magic as u32 {
        0x6969 => "NFS",
        0x517B => "SMB",
        0xFF53_4D42 => "CIFS",
        0xFE53_4D42 => "SMB2",
        0x0102_1997 => "9p",
        0x00C3_6400 => "CephFS",
        0x6B41_4653 | 0x5346_414F => "AFS",
        0x0BD0_0BD0 => "Lustre",
        0x4750_4653 => "GPFS",
        0x7375_7245 => "Coda",
        0x564C => "NCP",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::{LockDir, network_file_system};

    #[test]
    fn network_file_systems_are_told_from_local_ones() {
        assert_eq!(network_file_system(0x6969), Some("NFS"));
        assert_eq!(network_file_system(0xFF53_4D42_u32 as i32 as i64), Some("CIFS"));
        assert_eq!(network_file_system(0xFF53_4D42), Some("CIFS"));
        // tmpfs, ext4, xfs, btrfs, overlayfs, FUSE.
        for local in [0x0102_1994_i64, 0xEF53, 0x5846_5342, 0x9123_683E, 0x794C_7630, 0x6573_5546] {
            assert_eq!(network_file_system(local), None, "{local:#x}");
        }
    }

    /// A relative directory is made absolute once: a library caller's later `chdir` does not move it.
    #[test]
    fn a_relative_directory_is_made_absolute_at_once() {
        let dir = LockDir::new("locks/".into());
        assert!(dir.path().is_absolute());
        assert_eq!(dir.path(), std::env::current_dir().unwrap().join("locks"));
    }
}
