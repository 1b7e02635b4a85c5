//! One inotify instance per process, shared by every watched lease.
//!
//! The kernel allows a user 128 inotify instances by default: an instance per watched lease made 200
//! contenders (or one `--slots 150` waiter) run out, and took them from every other program of that user.
//! Here a process has one instance and one thread reading it; each watched directory has one inotify
//! watch, and each lease a [`Subscription`] woken when its record's name shows up in an event.
//!
//! When the directory goes away (removed, renamed, unmounted), its subscriptions end: their owners poll
//! and subscribe again, to the directory then at the path. When no instance can be had (EMFILE: the user
//! has 128 already), subscribing fails and the owner polls fast, trying again now and then.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::sync::mpsc;

/// After failing to create the instance, do not try again for this long (each try is a syscall that
/// fails the same way while the user is at the limit).
const RETRY_INSTANCE_AFTER: Duration = Duration::from_secs(1);

const EVENTS: AddWatchFlags = AddWatchFlags::IN_MOVED_TO
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_CLOSE_WRITE)
    .union(AddWatchFlags::IN_CREATE)
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF)
    .union(AddWatchFlags::IN_ONLYDIR);

/// The process's instance: created on first use, kept for the life of the process.
struct Watcher {
    inotify: Inotify,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The watched directories: for each, the subscribers by file name.
    dirs: HashMap<WatchDescriptor, HashMap<OsString, Vec<Subscriber>>>,
    next_id: u64,
}

struct Subscriber {
    id: u64,
    wake: mpsc::Sender<()>,
}

enum Instance {
    None,
    Running(Arc<Watcher>),
    Failed { at: Instant, errno: Errno },
}

static INSTANCE: Mutex<Instance> = Mutex::new(Instance::None);

/// One lease's interest in one file of a watched directory. Dropping it unsubscribes.
pub struct Subscription {
    watcher: Arc<Watcher>,
    wd: WatchDescriptor,
    file: OsString,
    id: u64,
    /// One message per batch of events about the file (coalesced: capacity 1). Closed when the watch of
    /// the directory ended: subscribe again.
    pub wakeups: mpsc::Receiver<()>,
}

/// Wake the caller whenever `file` in the directory `dir` may have changed. `dir` must be the checked
/// directory handle: the watch is set on exactly that directory, through `/proc/self/fd`.
pub fn subscribe(dir: BorrowedFd<'_>, path: &std::path::Path, file: &str) -> io::Result<Subscription> {
    let watcher = instance()?;
    let mut state = lock(&watcher.state);
    let proc_path = super::dir::proc_path(dir);
    let wd = match watcher.inotify.add_watch(&proc_path, EVENTS) {
        Ok(wd) => wd,
        // No /proc: the path itself, never through a final symlink.
        Err(Errno::ENOENT) => watcher.inotify.add_watch(path, EVENTS | AddWatchFlags::IN_DONT_FOLLOW)?,
        Err(errno) => return Err(errno.into()),
    };
    let (wake, wakeups) = mpsc::channel(1);
    let id = state.next_id;
    state.next_id += 1;
    let file = OsString::from(file);
    state.dirs.entry(wd).or_default().entry(file.clone()).or_default().push(Subscriber { id, wake });
    drop(state);
    Ok(Subscription { watcher, wd, file, id, wakeups })
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut state = lock(&self.watcher.state);
        let Some(files) = state.dirs.get_mut(&self.wd) else { return };
        if let Some(subscribers) = files.get_mut(&self.file) {
            subscribers.retain(|subscriber| subscriber.id != self.id);
            if subscribers.is_empty() {
                files.remove(&self.file);
            }
        }
        if files.is_empty() {
            state.dirs.remove(&self.wd);
            // Its IN_IGNORED event finds nothing left to end.
            let _ = self.watcher.inotify.rm_watch(self.wd);
        }
    }
}

#[cfg(test)]
impl Subscription {
    pub fn watch_descriptor(&self) -> WatchDescriptor {
        self.wd
    }
}

/// Whether the process's instance still watches `wd` (tests).
#[cfg(test)]
pub fn is_watched(wd: WatchDescriptor) -> bool {
    match &*lock(&INSTANCE) {
        Instance::Running(watcher) => lock(&watcher.state).dirs.contains_key(&wd),
        _ => false,
    }
}

/// The watches that have a subscriber for `file` (tests).
#[cfg(test)]
pub fn watches_of(file: &str) -> Vec<WatchDescriptor> {
    match &*lock(&INSTANCE) {
        Instance::Running(watcher) => {
            let state = lock(&watcher.state);
            state
                .dirs
                .iter()
                .filter(|(_, files)| files.contains_key(std::ffi::OsStr::new(file)))
                .map(|(wd, _)| *wd)
                .collect()
        }
        _ => Vec::new(),
    }
}

/// The process's instance, created (with its thread) on first use.
fn instance() -> io::Result<Arc<Watcher>> {
    let mut instance = lock(&INSTANCE);
    match &*instance {
        Instance::Running(watcher) => return Ok(Arc::clone(watcher)),
        Instance::Failed { at, errno } if at.elapsed() < RETRY_INSTANCE_AFTER => return Err((*errno).into()),
        _ => {}
    }
    let created = Inotify::init(InitFlags::IN_CLOEXEC).map_err(io::Error::from).and_then(|inotify| {
        let watcher = Arc::new(Watcher { inotify, state: Mutex::new(State::default()) });
        let reader = Arc::clone(&watcher);
        std::thread::Builder::new().name("mpsync-inotify".to_string()).spawn(move || read_events(&reader))?;
        Ok(watcher)
    });
    match created {
        Ok(watcher) => {
            *instance = Instance::Running(Arc::clone(&watcher));
            Ok(watcher)
        }
        Err(err) => {
            let errno = err.raw_os_error().map_or(Errno::EIO, Errno::from_raw);
            *instance = Instance::Failed { at: Instant::now(), errno };
            Err(err)
        }
    }
}

/// The instance's thread: block reading events, wake the subscribers of each file named, and end the
/// subscriptions of a directory that went away.
fn read_events(watcher: &Watcher) {
    loop {
        let events = match watcher.inotify.read_events() {
            Ok(events) => events,
            Err(Errno::EINTR | Errno::EAGAIN) => continue,
            Err(errno) => {
                // Never seen; if it happens, every subscription ends (its owner polls) and the next
                // subscription makes a new instance.
                tracing::debug!(error = %errno, "reading inotify events failed");
                *lock(&INSTANCE) = Instance::None;
                lock(&watcher.state).dirs.clear();
                return;
            }
        };
        let mut state = lock(&watcher.state);
        for event in events {
            if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                // Events were lost: anything may have changed.
                for subscriber in state.dirs.values().flat_map(HashMap::values).flatten() {
                    let _ = subscriber.wake.try_send(());
                }
                continue;
            }
            let gone = AddWatchFlags::IN_IGNORED
                | AddWatchFlags::IN_DELETE_SELF
                | AddWatchFlags::IN_MOVE_SELF
                | AddWatchFlags::IN_UNMOUNT;
            if event.mask.intersects(gone) {
                // The watch no longer follows the directory at the path: dropping the subscribers' wake-up
                // ends their subscriptions, and they subscribe again.
                if state.dirs.remove(&event.wd).is_some() && !event.mask.contains(AddWatchFlags::IN_IGNORED) {
                    let _ = watcher.inotify.rm_watch(event.wd);
                }
                continue;
            }
            let Some(files) = state.dirs.get(&event.wd) else { continue };
            let woken: Box<dyn Iterator<Item = &Subscriber>> = match &event.name {
                Some(name) => Box::new(files.get(name).into_iter().flatten()),
                None => Box::new(files.values().flatten()),
            };
            for subscriber in woken {
                let _ = subscriber.wake.try_send(());
            }
        }
    }
}

/// A poisoned lock only means a panic elsewhere; the maps stay consistent (every change is one call).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
