//! The guard: a tiny process that outlives mpsync to kill the child's whole group when mpsync dies, even by
//! SIGKILL (a parent-death signal reaches only the direct child).
//!
//! It holds the read end of a pipe whose only write ends are mpsync's and, until exec, a just-forked
//! child's: end-of-file means mpsync is gone. Messages are 12 bytes, a native-endian i32 and i64: a
//! positive i32 arms it with that process group (its leader, the child, is part of the job wherever it
//! goes); 0 disarms it (and forgets any deadline, and the adopted processes); -1 sets a deadline, the i64
//! (CLOCK_MONOTONIC nanoseconds; 0 for none); -2 adds a process mpsync adopted as a subreaper to the job,
//! the i64 its pid (the low 22 bits) and its start time (the bits above), so that it is killed with the job
//! should mpsync die: with mpsync's death it is handed to init, where nothing else would find it.
//!
//! The deadline is the lease's, independent of mpsync's own timers: the last moment the child may run
//! (the renew deadline, counted from the send of the last good renewal, plus the grace and half of what is
//! left of the lease). mpsync stops the child itself long before; the guard's SIGKILL matters only when
//! mpsync cannot act: frozen by `kill -STOP`, stuck, or stopped by job control past the lease. Then the
//! child is killed before anyone else can take the lease over.
//!
//! What it survives, and what it cannot:
//! - It ignores every signal but SIGKILL and SIGSTOP, and runs in a process group of its own, so Ctrl-C, a
//!   hangup, or a signal to mpsync's group do not reach it.
//! - It is called `mpsync-guard` (its comm, what `ps`, `top`, `killall` and `pkill` match by default), so
//!   `killall -9 mpsync` and `pkill -x mpsync` leave it, and it does its work. `pkill mpsync` matches it as a
//!   substring, and `pkill -f` matches the command line it shares with mpsync.
//! - When it dies while mpsync lives, mpsync starts a new one at once and arms it (see `Supervisor::reap`).
//! - When both die at once (`kill -9 MPSYNC GUARD`, `pkill -9 mpsync`), nothing is left to kill the group:
//!   the main child still dies (its parent-death signal is SIGKILL), but the rest of its group, and any
//!   process that left the group, run on. That is the limit of a same-user process; a PID namespace or a
//!   cgroup of its own would be the next step.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::libc;
use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
use nix::unistd::{ForkResult, Pid, fork, pipe2};
use tracing::warn;

/// The guard's process name (comm): at most 15 bytes.
pub const GUARD_NAME: &std::ffi::CStr = c"mpsync-guard";

pub(crate) struct Guard {
    pub pid: Pid,
    /// The write end (close-on-exec, so commands never hold it).
    pub pipe: OwnedFd,
}

impl Guard {
    /// Fork a new guard, disarmed. Sound even when other threads exist: the forked process makes only
    /// async-signal-safe calls.
    ///
    /// `inherited` are mpsync's children (pid, start time) from before it started, inherited across an
    /// `exec` (`helper & exec mpsync ...`): no part of any job, they and what they start are never killed
    /// (found by review, helper-177: at the deadline the guard killed them as children of mpsync).
    pub fn spawn(inherited: &[(i32, u64)]) -> io::Result<Guard> {
        let (read, write) = pipe2(OFlag::O_CLOEXEC)?;
        // mpsync never blocks on its guard: a guard stopped by someone (SIGSTOP) must not stop the renewals
        // once the pipe is full. A message that does not fit is dropped; the next deadline is sent anyway.
        nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        // mpsync, as the guard must know it: its own parent later may be whoever adopted it.
        let mpsync = nix::unistd::getpid().as_raw();
        // Made before the fork: the guard allocates nothing (it reads its copy of this memory).
        let inherited: Vec<Stopped> = inherited.iter().map(|&(pid, start)| Stopped { pid, start }).collect();
        // So is the working memory of its kill, mapped here so that a mapping refused (`ulimit -v`) is an error
        // now, not a kill that falls back to the armed group alone when it is needed (found by review, rv293).
        // The guard keeps its copy; only the pages its kill touches ever take memory.
        let working = Working::map()?;
        // Block every signal across fork, so that the guard cannot run an inherited handler (or die of Ctrl-C)
        // before it has ignored everything.
        let mut previous = SigSet::empty();
        pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), Some(&mut previous))?;
        // SAFETY: the child runs only `guard_main`, which makes async-signal-safe calls and never returns,
        // so it is sound even when other threads exist.
        let forked = unsafe { fork() };
        if let Ok(ForkResult::Child) = forked {
            // SAFETY: we are the freshly forked guard; `read` is the pipe's read end.
            unsafe { guard_main(read.as_raw_fd(), mpsync, &inherited, working.bytes) }
        }
        drop(working);
        pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&previous), None)?;
        match forked? {
            ForkResult::Parent { child } => Ok(Guard { pid: child, pipe: write }),
            ForkResult::Child => unreachable!("the guard never returns"),
        }
    }

    /// Arm the guard with process group `pgid`, or disarm it with 0.
    pub fn tell(&self, message: i32) {
        self.send(message, 0);
    }

    /// Kill the armed group at `deadline_nanos` (CLOCK_MONOTONIC), unless told otherwise before; 0 for none.
    pub fn deadline(&self, deadline_nanos: i64) {
        self.send(-1, deadline_nanos);
    }

    /// A process mpsync adopted (as a subreaper), or found in the job as it ended it, is part of the job:
    /// killed with it if mpsync dies or is frozen past the deadline.
    /// Whether the guard was told (a guard stopped long enough for its pipe to fill was not).
    pub fn adopted(&self, pid: i32, start: u64) -> bool {
        match i64::try_from(start) {
            Ok(start) if start < 1 << (63 - PID_BITS) && (0..1 << PID_BITS).contains(&pid) => {
                self.send(ADOPTED, start << PID_BITS | i64::from(pid))
            }
            _ => false,
        }
    }

    fn send(&self, command: i32, argument: i64) -> bool {
        match nix::unistd::write(&self.pipe, &message(command, argument)) {
            Ok(_) => true,
            Err(error) => {
                warn!(%error, "cannot reach the guard process");
                false
            }
        }
    }
}

/// One message to the guard (see the module docs).
pub(crate) fn message(command: i32, argument: i64) -> [u8; MESSAGE] {
    let mut bytes = [0u8; MESSAGE];
    bytes[..4].copy_from_slice(&command.to_ne_bytes());
    bytes[4..].copy_from_slice(&argument.to_ne_bytes());
    bytes
}

/// The working memory of the guard's kill (`kill_tree`): an anonymous private mapping of `WORKING_BYTES`,
/// mapped by mpsync before it forks the guard, which keeps its own copy.
struct Working {
    bytes: *mut u8,
}

impl Working {
    fn map() -> io::Result<Working> {
        // SAFETY: a new anonymous mapping, at an address of the kernel's choosing; nothing else is touched.
        let memory = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                WORKING_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if memory == libc::MAP_FAILED {
            let error = io::Error::last_os_error();
            return Err(io::Error::new(
                error.kind(),
                format!(
                    "cannot map the guard process's {} MiB of working memory (address space; see `ulimit -v`): {error}",
                    WORKING_BYTES >> 20
                ),
            ));
        }
        Ok(Working { bytes: memory.cast() })
    }
}

impl Drop for Working {
    fn drop(&mut self) {
        // SAFETY: the mapping `map` made, which nothing in this process uses (the guard has its own copy).
        unsafe { libc::munmap(self.bytes.cast(), WORKING_BYTES) };
    }
}

/// The size of a message: under PIPE_BUF, so every write of one is atomic.
pub(crate) const MESSAGE: usize = 12;

/// The command that adds an adopted process (see the module docs).
const ADOPTED: i32 = -2;
/// How many bits of an `ADOPTED` argument hold the pid (`pid_max` is at most 2^22 on Linux).
const PID_BITS: u32 = 22;
/// How many adopted processes the guard remembers (the dead are forgotten when it is full).
pub(crate) const MAX_ADOPTED: usize = 4096;

/// CLOCK_MONOTONIC now, in nanoseconds: the clock `std::time::Instant` reads on Linux, shared by every
/// process of the machine.
pub(crate) fn monotonic_nanos() -> i64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec.saturating_mul(1_000_000_000).saturating_add(now.tv_nsec)
}

/// `at` on CLOCK_MONOTONIC, in nanoseconds.
pub(crate) fn monotonic_at(at: std::time::Instant) -> i64 {
    let (now, mono) = (std::time::Instant::now(), monotonic_nanos());
    let ahead = |d: std::time::Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    match at.checked_duration_since(now) {
        Some(later) => mono.saturating_add(ahead(later)),
        None => mono.saturating_sub(ahead(now - at)),
    }
}

/// The guard's whole life.
///
/// # Safety
/// Call only in a freshly forked child: it closes every file descriptor but `read_fd` and never returns.
/// It makes only async-signal-safe calls and does not allocate.
unsafe fn guard_main(read_fd: RawFd, mpsync: libc::pid_t, inherited: &[Stopped], working: *mut u8) -> ! {
    // SAFETY: plain system calls on integers and stack buffers; nothing allocates or takes a lock.
    unsafe {
        // Continued when mpsync dies, if stopped then (SIGCONT continues a stopped process even where it is
        // ignored): it then reads end-of-file and ends the job (found by review, rv223: a guard stopped by
        // someone, under a subreaper of mpsync's session, was never continued, and after a SIGKILL of mpsync the
        // job ran on beside the next holder's child). mpsync forks it from its main thread, whose end is its own.
        // First of all, so that the window before it is as short as can be (review, rv224); a parent gone
        // already is seen too, as the pipe's end-of-file, since this guard runs then.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGCONT as libc::c_ulong, 0, 0, 0);
        // An anchor whose keeper was killed (see `anchor_groups`) comes back to the guard, in a group of the session
        // other than its own, and still ties it (found by review, rv301: reparented to init, it orphaned the group).
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        for signal in 1..=libc::SIGRTMAX() {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::signal(signal, libc::SIG_IGN);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        // Out of mpsync's group: neither Ctrl-C nor a kill of mpsync's group reaches it.
        libc::setpgid(0, 0);
        // A name of its own, so that killing mpsync by name leaves the guard to do its work.
        libc::prctl(libc::PR_SET_NAME, GUARD_NAME.as_ptr() as libc::c_ulong, 0, 0, 0);

        let pipe = libc::fcntl(read_fd, libc::F_DUPFD, 3);
        if pipe < 0 {
            libc::_exit(1);
        }
        // Not mpsync's stdout or stderr: a reader waiting for their end-of-file must not wait for the guard.
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                if fd != null {
                    libc::dup2(null, fd);
                }
            }
        }
        close_fds_except(pipe);

        let me = libc::getpid();
        let mut armed: libc::pid_t = 0;
        let mut leader_start: u64 = 0;
        // Whether the process that armed the guard (pid `armed`, started at `leader_start`) is the child
        // itself: then it is killed, with what it started, even once it left its group (found by review,
        // rv263: a child that cleared its parent-death signal and joined mpsync's group ran on after a SIGKILL
        // of mpsync, beside the next holder's child).
        let mut leader = false;
        let mut deadline: i64 = 0;
        let mut adopted = [Stopped { pid: 0, start: 0 }; MAX_ADOPTED];
        let mut adopted_count = 0;
        // Messages to wait before the next clean-up of a full list.
        let mut cleanup_after: usize = 0;
        let mut message = [0u8; MESSAGE];
        let mut filled = 0;
        loop {
            // Wait for the next message, or the deadline. Past the deadline, messages already queued are
            // read first (a guard stopped for a while must not act on what mpsync has since replaced).
            let due = armed > 0 && deadline > 0 && deadline <= monotonic_nanos();
            let timeout_ms = if due {
                0
            } else if armed > 0 && deadline > 0 {
                let left = deadline.saturating_sub(monotonic_nanos());
                (left / 1_000_000 + 1).min(i64::from(i32::MAX)) as libc::c_int
            } else {
                -1
            };
            let mut fds = libc::pollfd { fd: pipe, events: libc::POLLIN, revents: 0 };
            let ready = libc::poll(&mut fds, 1, timeout_ms);
            if ready == 0 && due {
                // mpsync did not stop the child in time: it cannot act (frozen, stuck, stopped). The whole
                // job goes: the group, and what left it (setsid, `timeout`, a script's `set -m`), found below
                // mpsync; only while mpsync is alive and still the guard's parent, for once it is gone its
                // pid may be anyone's (and its children were handed to another process).
                let group = if still_ours(armed, leader_start) { armed } else { 0 };
                let root = if libc::getppid() == mpsync { mpsync } else { NO_ROOT };
                let child = Stopped { pid: if leader { armed } else { 0 }, start: leader_start };
                if root == mpsync || adopted_count > 0 || leader {
                    kill_tree(working, root, me, group, (&adopted[..adopted_count], child), inherited);
                }
                if group > 0 {
                    libc::kill(-group, libc::SIGKILL);
                }
                // Done: the group is not killed again (its id may be reused once it is empty).
                (armed, deadline) = (0, 0);
                continue;
            }
            if ready == 0 || (ready < 0 && Errno::last() == Errno::EINTR) {
                continue;
            }
            let n = libc::read(pipe, message.as_mut_ptr().add(filled).cast(), message.len() - filled);
            if n > 0 {
                filled += n as usize;
                if filled == message.len() {
                    let command = i32::from_ne_bytes([message[0], message[1], message[2], message[3]]);
                    let mut argument = [0u8; 8];
                    argument.copy_from_slice(&message[4..]);
                    match command {
                        -1 => deadline = i64::from_ne_bytes(argument),
                        0 => (armed, deadline, adopted_count, leader) = (0, 0, 0, false),
                        ADOPTED => {
                            let packed = i64::from_ne_bytes(argument);
                            let process = Stopped {
                                pid: (packed & ((1 << PID_BITS) - 1)) as libc::pid_t,
                                start: (packed >> PID_BITS) as u64,
                            };
                            if adopted_count == MAX_ADOPTED && cleanup_after == 0 {
                                // Full: forget those that are gone (or whose pid another process has). Not
                                // again for a while if none was (found by review: a look at each of them for
                                // every message kept a guard busy for tens of seconds past its deadline).
                                let mut kept = 0;
                                for i in 0..adopted_count {
                                    let entry = adopted[i];
                                    if stat_of(entry.pid).is_some_and(|p| p.start == entry.start) {
                                        adopted[kept] = entry;
                                        kept += 1;
                                    }
                                }
                                if kept == adopted_count {
                                    cleanup_after = 256;
                                }
                                adopted_count = kept;
                            }
                            cleanup_after = cleanup_after.saturating_sub(1);
                            let known = adopted[..adopted_count]
                                .iter()
                                .any(|a| a.pid == process.pid && a.start == process.start);
                            if !known && adopted_count < MAX_ADOPTED {
                                adopted[adopted_count] = process;
                                adopted_count += 1;
                            }
                        }
                        pgid => {
                            armed = pgid.max(0);
                            // The child arms the guard itself, before its exec, in its own new group: it is
                            // alive now. Part of the job wherever it goes (`leader`). A process of that pid in
                            // another group is not the child (a new guard armed for a group whose leader has
                            // gone, its pid reused): its group only may be the child's.
                            (leader_start, leader) = match stat_of(armed) {
                                Some(p) => (p.start, p.group == armed),
                                None => (0, false),
                            };
                        }
                    }
                    filled = 0;
                }
            } else if n < 0 && Errno::last() == Errno::EINTR {
                continue;
            } else {
                break;
            }
        }
        let group = if armed > 0 && still_ours(armed, leader_start) { armed } else { 0 };
        let child = Stopped { pid: if armed > 0 && leader { armed } else { 0 }, start: leader_start };
        if group > 0 || adopted_count > 0 || child.pid > 0 {
            // mpsync is gone while the child's job runs: the group goes, and what its members started in
            // other groups, found through them, and the child itself wherever it went, and the processes
            // mpsync adopted, by pid and start time, with what they started (not below mpsync: its children
            // were handed to init, and its pid may be anyone's now).
            kill_tree(working, NO_ROOT, me, group, (&adopted[..adopted_count], child), inherited);
            if group > 0 {
                libc::kill(-group, libc::SIGKILL);
            }
        }
        libc::_exit(0)
    }
}

/// How long `kill_tree` waits, in nanoseconds, for the processes it stopped to show stopped: a process in
/// uninterruptible sleep never does (a `vfork` parent whose child was stopped before its exec).
const SETTLING: i64 = 50_000_000;

/// A `root` for `kill_tree` that is no process's parent: only the group and its members' descendants.
const NO_ROOT: libc::pid_t = -1;

/// The most processes `kill_tree` looks at (a machine's whole process table, usually far fewer).
const MAX_PROCESSES: usize = 1 << 16;
/// The largest pid the kernel hands out (`pid_max` cannot exceed it on 64-bit Linux).
const PID_LIMIT: usize = 1 << 22;
/// How long, in nanoseconds, `kill_tree` waits for what it killed in anchored groups to die before their anchors go.
const EXITING: i64 = 500_000_000;

/// Whether `k`, sent SIGKILL, has yet to die: its pid is still its own and not a zombie whose threads are all gone.
/// Async-signal-safe.
unsafe fn is_exiting(k: &Stopped) -> bool {
    // SAFETY: reads /proc only.
    match unsafe { stat_of(k.pid) } {
        Some(p) => p.start == k.start && !(p.state == b'Z' && p.threads <= 1),
        None => false,
    }
}

/// The most process groups `kill_tree` anchors (see `anchor_groups`); the rest are killed in order.
const MAX_ANCHORS: usize = 4096;
/// `kill_tree`'s working memory: five tables (the processes listed, those stopped, where each pid is listed, the
/// anchors, the groups of the parents of each group's ties) and nine bitmaps of pids, about 24 MiB.
const WORKING_BYTES: usize = MAX_PROCESSES * std::mem::size_of::<Listed>()
    + MAX_PROCESSES * std::mem::size_of::<Stopped>()
    + PID_LIMIT * std::mem::size_of::<u32>()
    + MAX_ANCHORS * std::mem::size_of::<libc::pid_t>()
    + MAX_PROCESSES * std::mem::size_of::<libc::pid_t>()
    + 9 * (PID_LIMIT / 8);

/// Stop, then SIGKILL, every process below `root` (mpsync, or `NO_ROOT`), or below a member of `group` (the
/// child's, if still the child's; 0 for none), or below one of `adopted` or the `child` itself (same pid and
/// start time; pid 0 for none), but `me`
/// (the guard) and `inherited` (same pid and start time) with what they started, whatever its group or
/// session: the job
/// as mpsync defines it (a member of the group that left mpsync's tree still answers for what it started).
/// Stopping first keeps the tree whole while it is walked: a stopped process neither forks nor exits, so
/// none of its children is handed to init out of sight. A process stopped stays part of the job, with what
/// it started, even once it fell out of the tree (its parent died: a group orphaned while stopped gets
/// SIGHUP from the kernel), recognised by its start time. Rounds go on until one finds nothing new and
/// every thread of every process stopped shows stopped (one in the middle of a fork stops after it: its new
/// child must be seen first), or after 16 rounds that found something new (a tree growing that fast is
/// still killed as far as it was seen), or after 50 ms of waiting for stops, 1 ms apart (a process in
/// uninterruptible sleep).
///
/// # Safety
/// Async-signal-safe: raw system calls on stack buffers and one anonymous mapping; no allocator, no lock.
unsafe fn kill_tree(
    working: *mut u8,
    root: libc::pid_t,
    me: libc::pid_t,
    group: libc::pid_t,
    (adopted, child): (&[Stopped], Stopped),
    inherited: &[Stopped],
) {
    // SAFETY: `working` is the guard's copy of its working memory (`Working`), zero-filled, ours alone, and
    // `WORKING_BYTES` long: big enough for the five tables and the nine bitmaps laid out in it (the tables
    // first: their alignment is the mapping's). Only the pages touched take memory.
    unsafe {
        let listed_bytes = MAX_PROCESSES * std::mem::size_of::<Listed>();
        let stopped_bytes = MAX_PROCESSES * std::mem::size_of::<Stopped>();
        let places_bytes = PID_LIMIT * std::mem::size_of::<u32>();
        let bitmap_bytes = PID_LIMIT / 8;
        let anchors_bytes = MAX_ANCHORS * std::mem::size_of::<libc::pid_t>();
        let bytes = working;
        let listed = std::slice::from_raw_parts_mut(bytes.cast::<Listed>(), MAX_PROCESSES);
        let stopped = std::slice::from_raw_parts_mut(bytes.add(listed_bytes).cast::<Stopped>(), MAX_PROCESSES);
        let place_of = std::slice::from_raw_parts_mut(bytes.add(listed_bytes + stopped_bytes).cast::<u32>(), PID_LIMIT);
        let anchors = std::slice::from_raw_parts_mut(
            bytes.add(listed_bytes + stopped_bytes + places_bytes).cast::<libc::pid_t>(),
            MAX_ANCHORS,
        );
        let tie_parents = std::slice::from_raw_parts_mut(
            bytes.add(listed_bytes + stopped_bytes + places_bytes + anchors_bytes).cast::<libc::pid_t>(),
            MAX_PROCESSES,
        );
        let tie_parents_bytes = MAX_PROCESSES * std::mem::size_of::<libc::pid_t>();
        let maps = bytes.add(listed_bytes + stopped_bytes + places_bytes + anchors_bytes + tie_parents_bytes);
        let below = std::slice::from_raw_parts_mut(maps, bitmap_bytes);
        let stopped_map = std::slice::from_raw_parts_mut(maps.add(bitmap_bytes), bitmap_bytes);
        let blocked_groups = std::slice::from_raw_parts_mut(maps.add(2 * bitmap_bytes), bitmap_bytes);
        let impure = std::slice::from_raw_parts_mut(maps.add(3 * bitmap_bytes), bitmap_bytes);
        let anchored = std::slice::from_raw_parts_mut(maps.add(4 * bitmap_bytes), bitmap_bytes);
        let untying = std::slice::from_raw_parts_mut(maps.add(5 * bitmap_bytes), bitmap_bytes);
        let tied_once = std::slice::from_raw_parts_mut(maps.add(6 * bitmap_bytes), bitmap_bytes);
        let tied_twice = std::slice::from_raw_parts_mut(maps.add(7 * bitmap_bytes), bitmap_bytes);
        let tied_outside = std::slice::from_raw_parts_mut(maps.add(8 * bitmap_bytes), bitmap_bytes);
        let mut stopped_count = 0;
        let (mut growing_rounds, mut settling_since) = (0, None);
        while growing_rounds < 16 {
            let count = list_processes(listed);
            let stopped_so_far = &stopped[..stopped_count];
            mark_below(&listed[..count], below, root, (me, inherited), group, |p| {
                was_stopped(stopped_map, stopped_so_far, p) || is_one_of(adopted, p) || is_one_of(&[child], p)
            });
            let (mut new, mut unsettled) = (false, false);
            for p in &listed[..count] {
                if !bit(below, p.pid) {
                    continue;
                }
                if !bit(stopped_map, p.pid) {
                    // What could not be recorded is not stopped: it would be left stopped if it fell out.
                    if stopped_count < MAX_PROCESSES {
                        libc::kill(p.pid, libc::SIGSTOP);
                        set_bit(stopped_map, p.pid);
                        stopped[stopped_count] = Stopped { pid: p.pid, start: p.start };
                        stopped_count += 1;
                        new = true;
                    }
                } else if !wholly_stopped(p) {
                    // Stopped but not yet: in the middle of a fork (in any thread), or continued by the
                    // kernel's SIGCONT to an orphaned group. Again, and look again.
                    libc::kill(p.pid, libc::SIGSTOP);
                    unsettled = true;
                }
            }
            if new {
                growing_rounds += 1;
            } else if unsettled && monotonic_nanos() - *settling_since.get_or_insert(monotonic_nanos()) < SETTLING {
                let pause = libc::timespec { tv_sec: 0, tv_nsec: 1_000_000 };
                libc::nanosleep(&pause, std::ptr::null_mut());
            } else {
                break;
            }
        }
        // The kill goes to what is part of the job in a listing taken now: a process stopped above that has
        // died since (and whose pid a stranger took) is not killed; one that appeared below since is.
        let count = list_processes(listed);
        let stopped_so_far = &stopped[..stopped_count];
        mark_below(&listed[..count], below, root, (me, inherited), group, |p| {
            was_stopped(stopped_map, stopped_so_far, p) || is_one_of(adopted, p) || is_one_of(&[child], p)
        });
        let listed = &listed[..count];
        for (i, p) in listed.iter().enumerate() {
            place_of[slot(p.pid)] = i as u32 + 1;
        }
        // And at the id of a group whose leader is not listed (it died, and the group lives on: found by review,
        // rv318), the place of a member (see `group_place`). The kernel hands out no pid a group still has as its id.
        for (i, p) in listed.iter().enumerate() {
            let leader_listed = listed_as(p.group, listed, place_of).is_some();
            if p.group > 0 && !leader_listed && group_place(p.group, listed, place_of).is_none() {
                place_of[slot(p.group)] = i as u32 + 1;
            }
        }
        let place_of = &*place_of;
        let ties = |p: &Listed| ties(p, listed, place_of);
        // The anchors' lifeline (see `anchor_groups`): they leave their groups when its write end, the guard's
        // alone, closes. `ready` carries each anchor's word back.
        let (mut lifeline, mut ready) = ([-1; 2], [-1; 2]);
        let anchor_count = match (
            libc::pipe2(lifeline.as_mut_ptr(), libc::O_CLOEXEC),
            libc::pipe2(ready.as_mut_ptr(), libc::O_CLOEXEC),
        ) {
            (0, 0) => anchor_groups(listed, below, (lifeline, ready), anchors, (anchored, impure)),
            _ => 0,
        };
        // Every group anchored stays tied to the session while its members die, whatever the order. The rest first,
        // in order (found by review, rv300: with some groups not anchored, at a process limit, a group whose only
        // tie was a parent in an anchored group was orphaned by that parent's kill, and continued, before its own).
        // (`stopped` is done with: it lists the anchored groups' members, to kill, then to wait for.)
        // Those that tie their group to the session last, should an anchor have gone meanwhile (see
        // `kill_children_first`).
        let mut killed = 0;
        for tying in [false, true] {
            for p in listed {
                if bit(below, p.pid) && bit(anchored, p.group) && ties(p) == tying {
                    clear_bit(below, p.pid);
                    stopped[killed] = Stopped { pid: p.pid, start: p.start };
                    killed += 1;
                }
            }
        }
        let ties = Ties { untying, once: tied_once, twice: tied_twice, outside: tied_outside };
        let scratch = Scratch { place_of, tie_parents, blocked: stopped_map, blocked_groups, impure, ties };
        kill_children_first(listed, below, scratch);
        for k in &stopped[..killed] {
            libc::kill(k.pid, libc::SIGKILL);
        }
        // The anchors go once what they anchored has died (or after `EXITING`: a process in uninterruptible sleep),
        // and leave their groups first, which signals nobody: an anchor that died in a group would be the last tie
        // of one orphaned but for it, and the kernel would continue what is stopped in it, such as a stranger held
        // stopped by job control, or mpsync frozen (found by a test: a frozen mpsync in the test harness's group,
        // which a job member of another test had joined, was continued and sent SIGHUP; rv296).
        let since = monotonic_nanos();
        while stopped[..killed].iter().any(|k| is_exiting(k)) && monotonic_nanos() - since < EXITING {
            let pause = libc::timespec { tv_sec: 0, tv_nsec: 1_000_000 };
            libc::nanosleep(&pause, std::ptr::null_mut());
        }
        for fd in lifeline.into_iter().chain(ready).filter(|fd| *fd >= 0) {
            libc::close(fd);
        }
        // Their end, for a moment at most: a keeper stopped by someone must not hold up the guard (it ignores
        // SIGCHLD: they are reaped as they end).
        let since = monotonic_nanos();
        while anchors[..anchor_count].iter().any(|&keeper| libc::kill(keeper, 0) == 0)
            && monotonic_nanos() - since < EXITING
        {
            let pause = libc::timespec { tv_sec: 0, tv_nsec: 1_000_000 };
            libc::nanosleep(&pause, std::ptr::null_mut());
        }
        // Zero-filled again, and its memory given back, for a kill that may come later.
        libc::madvise(working.cast(), WORKING_BYTES, libc::MADV_DONTNEED);
    }
}

/// Give every process group of the job in the guard's own session (the session of mpsync, and of the job unless it
/// made one of its own) a member that is not the job's: an anchor, moved into it (`setpgid`, which a parent may do to
/// its child within its session) by its keeper, a child of the guard in the guard's own group (in a group of its own
/// where it anchors the guard's group, which the job may join too). The kernel continues a
/// stopped group the moment it is orphaned, when the last of its members whose parent is in another group of the
/// session dies, or that parent dies (see `kill_children_first`); the anchor's parent is its keeper, so a group
/// anchored is orphaned by no death among its members or theirs, and its members are killed in any order. That holds
/// where no order can: groups that tie each other to the session (found by review, rv292: `setpgid` into the group
/// of another branch; rv295: a job member that joined mpsync's own group, that group's only tie, killed before the
/// group's other members, which ran their SIGCONT handlers past the lease). The anchor is the keeper's child, not the
/// guard's: were the guard killed, the kernel's reparenting of its children would orphan the group an anchor of its
/// own held (found by review, rv299, rv300); a keeper reparented is in the guard's group, and orphans nothing. When
/// the guard closes `lifeline`'s write end (or dies), each anchor leaves its group (`setpgid` signals nobody) and
/// ends, and its keeper after it. Each keeper says on `ready` which group its anchor is in (0: none). At most
/// `MAX_ANCHORS`; a group not anchored (in a session the job made, or where a fork fails: a process limit) is killed
/// in order first. `anchored` is set for each group anchored, and must be clear; returns how many keepers
/// `anchors` holds.
///
/// # Safety
/// Async-signal-safe: fork(2) in the guard, which has one thread, and raw system calls.
unsafe fn anchor_groups(
    listed: &[Listed],
    below: &[u8],
    (lifeline, ready): ([libc::c_int; 2], [libc::c_int; 2]),
    anchors: &mut [libc::pid_t],
    (anchored, impure): (&mut [u8], &mut [u8]),
) -> usize {
    // SAFETY: raw system calls; keepers and anchors (the forked children) only wait and leave.
    unsafe {
        let session = libc::getsid(0);
        // Groups with processes that are not the job's first (the guard's, mpsync's, a stranger's): they are killed
        // member by member, where a group of the job alone is killed whole; should forks run out (a process limit),
        // those are anchored (found by review, rv304).
        for p in listed {
            clear_bit(impure, p.group);
        }
        for p in listed.iter().filter(|p| !bit(below, p.pid)) {
            set_bit(impure, p.group);
        }
        let mut count = 0;
        for impure_first in [true, false] {
            for p in listed {
                if count == anchors.len() {
                    return count;
                }
                if !bit(below, p.pid)
                    || p.session != session
                    || p.group <= 0
                    || bit(anchored, p.group)
                    || bit(impure, p.group) != impure_first
                {
                    continue;
                }
                let keeper = libc::fork();
                if keeper == 0 {
                    keep_anchor(p.group, lifeline, ready);
                }
                if keeper < 0 {
                    return count;
                }
                anchors[count] = keeper;
                count += 1;
                // The keeper's word: the group its anchor is in, or 0 where it could not be placed. One that does
                // not come in time (a machine that slow) leaves its group to be killed in order; its anchor, if
                // placed, leaves with the others.
                let mut word = [0u8; 4];
                let mut fds = libc::pollfd { fd: ready[0], events: libc::POLLIN, revents: 0 };
                if libc::poll(&mut fds, 1, 1000) == 1 && libc::read(ready[0], word.as_mut_ptr().cast(), 4) == 4 {
                    let group = libc::pid_t::from_ne_bytes(word);
                    if group > 0 {
                        set_bit(anchored, group);
                    }
                }
            }
        }
        count
    }
}

/// A keeper's life (see `anchor_groups`): fork the anchor, move it into `group`, say so on `ready`, and wait, with
/// the anchor, for `lifeline` to end; the anchor leaves the group and ends, and the keeper once it has.
///
/// # Safety
/// Only in a freshly forked keeper; never returns.
unsafe fn keep_anchor(group: libc::pid_t, lifeline: [libc::c_int; 2], ready: [libc::c_int; 2]) -> ! {
    // SAFETY: raw system calls on descriptors this process inherited or made.
    unsafe {
        libc::close(lifeline[1]);
        libc::close(ready[0]);
        let wait_for_the_end_of = |fd: libc::c_int| {
            let mut byte = 0u8;
            loop {
                let got = libc::read(fd, (&raw mut byte).cast(), 1);
                if got == 0 || (got < 0 && Errno::last() != Errno::EINTR) {
                    return;
                }
            }
        };
        let fail = || -> ! {
            let none = 0 as libc::pid_t;
            libc::write(ready[1], none.to_ne_bytes().as_ptr().cast(), 4);
            libc::_exit(1)
        };
        // Closed once the keeper has placed the anchor (or failed to): only then does the anchor watch the lifeline,
        // so that it never leaves before the keeper moves it in (found by review, rv301).
        let mut placed = [-1; 2];
        if libc::pipe2(placed.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            fail();
        }
        // The guard's own group, which the job joined: the keeper makes a group of its own first, so that the anchor's
        // parent is in another group of the session (found by review, rv302: once mpsync was dead, a job member whose
        // parent was in the child's group alone tied the guard's group, and its kill continued the rest of the job
        // held stopped there).
        if group == libc::getpgrp() && libc::setpgid(0, 0) != 0 {
            fail();
        }
        let anchor = libc::fork();
        if anchor == 0 {
            libc::close(ready[1]);
            libc::close(placed[1]);
            wait_for_the_end_of(placed[0]);
            wait_for_the_end_of(lifeline[0]);
            libc::setpgid(0, 0);
            libc::_exit(0);
        }
        if anchor < 0 {
            fail();
        }
        let in_place = libc::setpgid(anchor, group) == 0;
        libc::close(placed[1]);
        if !in_place {
            // Not in the group: nothing to leave.
            libc::kill(anchor, libc::SIGKILL);
            fail();
        }
        libc::write(ready[1], group.to_ne_bytes().as_ptr().cast(), 4);
        libc::close(ready[1]);
        wait_for_the_end_of(lifeline[0]);
        // Out of the group, which signals nobody, and ended, even if someone stopped it (found by review, rv301: a
        // stopped anchor never read the lifeline's end, and its keeper, then the guard, waited for it for ever).
        libc::setpgid(anchor, libc::getpgrp());
        libc::kill(anchor, libc::SIGKILL);
        // (SIGCHLD is ignored: it is reaped as it ends.)
        libc::waitpid(anchor, std::ptr::null_mut(), 0);
        libc::_exit(0);
    }
}

/// The working memory of `kill_children_first`, indexed by pid (or group id): `place_of` as `kill_tree` filled it
/// for the processes listed (see `parent_of`) and the groups listed (see `group_place`), the rest of any content;
/// `tie_parents`, indexed by `group_place`, as long as the listing.
struct Scratch<'a> {
    place_of: &'a [u32],
    tie_parents: &'a mut [libc::pid_t],
    blocked: &'a mut [u8],
    blocked_groups: &'a mut [u8],
    impure: &'a mut [u8],
    ties: Ties<'a>,
}

/// What `kill_children_first` knows of the ties of each group to its session (see `ties`), by group id: `untying`, a
/// member still to be killed that does not tie it; `once` and `twice`,
/// one or two members still to be killed that tie it (at a round's start: `twice` is cleared by a tie's kill in
/// the round); `outside`, a live process that is not the job's ties it.
struct Ties<'a> {
    untying: &'a mut [u8],
    once: &'a mut [u8],
    twice: &'a mut [u8],
    outside: &'a mut [u8],
}

/// `pid`'s place in the tables indexed by pid.
fn slot(pid: libc::pid_t) -> usize {
    pid as usize % PID_LIMIT
}

/// Whether `p` has died: a zombie whose threads are all gone (one whose main thread has exited, its other threads
/// running on, is alive).
fn is_dead(p: &Listed) -> bool {
    matches!(p.state, b'Z' | b'X') && p.threads <= 1
}

/// `p`'s parent as `listed` shows it, by `place_of`, which `kill_tree` filled with the place in `listed` (from 1) of
/// each pid listed; none if its parent is not listed.
fn parent_of<'a>(p: &Listed, listed: &'a [Listed], place_of: &[u32]) -> Option<&'a Listed> {
    listed_as(p.parent, listed, place_of)
}

/// The process `listed` shows with `pid`, by `place_of`.
fn listed_as<'a>(pid: libc::pid_t, listed: &'a [Listed], place_of: &[u32]) -> Option<&'a Listed> {
    let place = *place_of.get(slot(pid))? as usize;
    listed.get(place.checked_sub(1)?).filter(|q| pid > 0 && q.pid == pid)
}

/// A place in `listed` (from 0) that stands for `group`, by `place_of`: the leader's, or where the leader is not
/// listed, a member's, which `kill_tree` wrote at the group's id; none where the leader is listed in another group.
fn group_place(group: libc::pid_t, listed: &[Listed], place_of: &[u32]) -> Option<usize> {
    let place = (*place_of.get(slot(group))? as usize).checked_sub(1)?;
    listed.get(place).filter(|member| group > 0 && member.group == group).map(|_| place)
}

/// Whether `p` ties its group to its session: its parent is in another group of the same session, so that the
/// group is orphaned (and continued by the kernel, if stopped) when `p` dies, were it the last such member. In
/// every session (found by review, rv309: counted only in the guard's, where whether two processes shared a
/// session was all it knew, a group of the job in a session the job made lost its one tie before the rest of it).
/// Not a zombie, which the kernel does not count (found by review, rv308: a zombie of the job counted as a second
/// tie, and the one live tie of the guard's group was killed before the rest of it).
fn ties(p: &Listed, listed: &[Listed], place_of: &[u32]) -> bool {
    !is_dead(p)
        && parent_of(p, listed, place_of)
            .is_some_and(|parent| parent.group > 0 && parent.group != p.group && parent.session == p.session)
}

/// SIGKILL every process of `listed` marked in `below` so that none of them runs again. The kernel continues a stopped
/// process group (SIGHUP, then SIGCONT) the moment it is orphaned, when the last of its members whose parent is in
/// another group of the session dies, or that parent dies: a member not yet killed then, that ignores SIGHUP, would run
/// and start processes out of sight (found by review: rv286, a job stopped by Ctrl-Z killed in pid order, a script
/// before its workers' groups; rv290, the main child killed before the rest of its group, whose other members were
/// init's). A process with SIGKILL pending never runs again, whatever continues it. So a group made only of the job's
/// processes is killed whole, at once (`kill(-group)`: the kernel queues the signal on every member before any can
/// die), and only once no process still to be killed in another group of its session has its parent in it; a process of
/// a group with others in it (mpsync's, the guard's, a stranger's) alone, once none of its children in its session is
/// still to be killed (in its own group too, which the kernel does not look at when it dies: of two ties of a group,
/// the one with children in it goes after the other; the other first, a test at a process limit with two ties of
/// mpsync's group saw 254 of the job's processes continued), and, if it is the last of the job that ties the group to
/// the session (`ties`), once no member of the group that does not tie it is still to be killed (found by review,
/// rv304: at a process limit, where the guard's own group could not be anchored, the one member whose parent was in
/// another group of the session was killed first, which orphaned the group with 400 members of the job held stopped in
/// it, and the kernel continued them); the parent of a zombie in another group of its session that nothing ties, once
/// that group has no member of the job left to kill. In rounds, as many as it takes (found by review, rv292: after 256,
/// a chain of 300 groups was killed in pid order). A round that kills nothing (groups that tie each other to the
/// session, a member of each the parent of a member of the other; waits that make a cycle where the kernel has none, a
/// group tied by a process outside the job, or by a second tie of the job; or pids taken again between two reads) is
/// followed by one kill that breaks the cycle and orphans no group with members of the job left, and the rounds go on
/// (rv313, rv314, rv317); where no kill fits, every group left made only of the job's processes is killed whole, one
/// right after another, and then the rest.
/// Neither is safe for a cycle the kernel has too (rv292: a group orphaned by the death of the other's members is
/// continued before its own kill comes): in the guard's session the groups are anchored first (`anchor_groups`) and
/// never come here; in a session the job made, the README's "What escapes" says so. `below` is cleared as it goes.
///
/// # Safety
/// Async-signal-safe: raw system calls only.
unsafe fn kill_children_first(listed: &[Listed], below: &mut [u8], scratch: Scratch<'_>) {
    let Scratch { place_of, tie_parents, blocked, blocked_groups, impure, ties: tied } = scratch;
    let Ties { untying, once, twice, outside } = tied;
    let parents_group = |p: &Listed| parent_of(p, listed, place_of).map_or(0, |parent| parent.group);
    // The death of a process looks at no group in another session, and a child that made a session of its own can
    // never tie a group of its parent's session, whoever adopts it: such a child holds nothing up (found by review,
    // rv314: such waits made a stall where the kernel has no cycle). Not one whose parent left (rv315: a subreaper
    // of the child's session that adopts it at its parent's death makes it a tie again).
    let left_for_a_session_of_its_own =
        |p: &Listed| p.session == p.pid && parent_of(p, listed, place_of).is_some_and(|q| q.session != p.session);
    for p in listed {
        clear_bit(impure, p.group);
        clear_bit(outside, p.group);
    }
    for p in listed.iter().filter(|p| !bit(below, p.pid)) {
        set_bit(impure, p.group);
        if ties(p, listed, place_of) {
            set_bit(outside, p.group);
        }
    }
    // A zombie has died already: its kill does nothing. What its parent's death does to its group, below.
    for p in listed.iter().filter(|p| is_dead(p)) {
        clear_bit(below, p.pid);
    }
    let kill = |pid: libc::pid_t| {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    };
    // A group made only of the job's processes, whole: the kernel queues the signal on every member before any can
    // die; then each member `listed` shows from there on, by its pid too.
    let kill_whole = |group: libc::pid_t, members: &[Listed], below: &mut [u8]| {
        kill(-group);
        for q in members.iter().filter(|q| q.group == group) {
            kill(q.pid);
            clear_bit(below, q.pid);
        }
    };
    for _round in 0..listed.len() {
        for p in listed {
            clear_bit(blocked, p.pid);
            clear_bit(blocked, p.parent);
            clear_bit(blocked_groups, p.group);
            clear_bit(blocked_groups, parents_group(p));
            clear_bit(untying, p.group);
            clear_bit(once, p.group);
            clear_bit(twice, p.group);
        }
        let mut left = false;
        for p in listed.iter().filter(|p| bit(below, p.pid)) {
            left = true;
            if !ties(p, listed, place_of) {
                set_bit(untying, p.group);
            } else if bit(once, p.group) {
                set_bit(twice, p.group);
            } else {
                set_bit(once, p.group);
            }
            if left_for_a_session_of_its_own(p) {
                continue;
            }
            set_bit(blocked, p.parent);
            let parents_group = parents_group(p);
            if parents_group > 0 && parents_group != p.group {
                set_bit(blocked_groups, parents_group);
            }
        }
        if !left {
            return;
        }
        // The death of a process looks at the groups of all its children in other groups of its session, the dead
        // ones too: a group nothing ties any more, with a zombie whose parent is that process, is orphaned by its
        // death, and continued if stopped. Such a parent waits until the group has no member of the job left to
        // kill. (A group a live member ties has its last tie killed after the rest of it.) Also a parent in another
        // session, unless the zombie made that session: a subreaper of the zombie's session adopts it at the parent's
        // death, and the subreaper's death orphans the group (found by review, rv316, by reading).
        for z in listed.iter().filter(|z| is_dead(z) && bit(untying, z.group)) {
            if bit(once, z.group) || left_for_a_session_of_its_own(z) {
                continue;
            }
            if let Some(parent) =
                parent_of(z, listed, place_of).filter(|parent| bit(below, parent.pid) && parent.group != z.group)
            {
                set_bit(blocked, parent.pid);
                set_bit(blocked_groups, parent.group);
            }
        }
        let mut killed = false;
        for i in 0..listed.len() {
            let p = listed[i];
            if !bit(below, p.pid) {
                continue;
            }
            if !bit(impure, p.group) && p.group > 0 {
                if bit(blocked_groups, p.group) {
                    continue;
                }
                kill_whole(p.group, &listed[i..], below);
                killed = true;
            } else if !bit(blocked, p.pid) {
                // The last tie of its group waits for the rest of the group's members (found by review, rv304), even
                // where a process that is not the job's ties it too (rv311: such a process may die meanwhile, of the
                // kill itself: it read a pipe the job held); only one tie of a group a round, where there are others
                // (rv306: every tie waiting for the rest, which waited for their children, one of whose groups waited
                // for a tie, made a cycle, and the rounds ended).
                let tie = ties(&p, listed, place_of);
                if tie && bit(untying, p.group) && !bit(twice, p.group) {
                    continue;
                }
                if tie {
                    clear_bit(twice, p.group);
                }
                kill(p.pid);
                clear_bit(below, p.pid);
                killed = true;
            }
        }
        if killed {
            continue;
        }
        // A round that killed nothing: the waits make a cycle. Where a kill breaks it that orphans no group with
        // members of the job left to kill, that one, then the rounds go on in order (found by review, rv313: waits
        // the kernel does not share, on a group a process outside the job ties, stalled the rounds, and every group
        // left killed at once orphaned a group in no cycle, whose one tie's parent was among them; rv314: a breaker
        // chosen by its place alone did the same). A process whose death orphans nothing: no child of it (or of its
        // group, killed whole) in another group of its session that has members of the job left and no tie outside
        // the job, and, killed alone, no last tie of its group. `blocked` and `blocked_groups` mark the rest.
        for p in listed {
            clear_bit(blocked, p.pid);
            clear_bit(blocked_groups, p.group);
        }
        // A group made only of the job's processes (killed whole) that a member of the job still to kill ties, whose
        // parent is still to kill too, stays tied by it while that parent's group lives: each such group's
        // `tie_parents`, the group of the parents of those ties, or -1 where there are two or more (found by review,
        // rv317: a group the job's own tie kept tied held up the kill of the other group of a cycle, which the kernel
        // does not have, and the fallback orphaned a group in no cycle).
        let group_place_of = |group: libc::pid_t| group_place(group, listed, place_of);
        for p in listed {
            if let Some(place) = group_place_of(p.group) {
                tie_parents[place] = 0;
            }
        }
        for m in listed.iter().filter(|m| bit(below, m.pid) && !bit(impure, m.group) && ties(m, listed, place_of)) {
            let (Some(parent), Some(place)) = (parent_of(m, listed, place_of), group_place_of(m.group)) else {
                continue;
            };
            if bit(below, parent.pid) {
                tie_parents[place] = match tie_parents[place] {
                    0 => parent.group,
                    group if group == parent.group => group,
                    _ => -1,
                };
            }
        }
        // Whether `group`, made only of the job's processes, stays tied when the processes of `dying` die.
        let tied_apart_from = |group: libc::pid_t, dying: libc::pid_t| {
            !bit(impure, group)
                && group_place_of(group).is_some_and(|place| {
                    matches!(tie_parents[place], -1) || tie_parents[place] > 0 && tie_parents[place] != dying
                })
        };
        for c in listed.iter().filter(|c| bit(below, c.pid) || is_dead(c)) {
            let Some(parent) = parent_of(c, listed, place_of) else { continue };
            let left_to_kill = bit(untying, c.group) || bit(once, c.group);
            // A child in another session too, unless it made that session (rv316: one whose parent left is adopted by a
            // subreaper of its session at the parent's death, and ties its group again).
            let cut_off = left_for_a_session_of_its_own(c);
            let tied = bit(outside, c.group) || tied_apart_from(c.group, parent.group);
            if parent.group != c.group && !cut_off && left_to_kill && !tied {
                set_bit(blocked, parent.pid);
                set_bit(blocked_groups, parent.group);
            }
            // Killed alone, a process waits for all its children, as in the rounds (rv315: one in its group, adopted
            // by a subreaper of the session, ties that group, and the subreaper's death may orphan it).
            if bit(below, c.pid) && !cut_off {
                set_bit(blocked, parent.pid);
            }
        }
        let breaker = listed.iter().find(|p| {
            let whole = !bit(impure, p.group) && p.group > 0;
            let last_tie = ties(p, listed, place_of) && !bit(twice, p.group) && !bit(outside, p.group);
            bit(below, p.pid) && if whole { !bit(blocked_groups, p.group) } else { !bit(blocked, p.pid) && !last_tie }
        });
        let Some(&p) = breaker else { break };
        if !bit(impure, p.group) && p.group > 0 {
            kill_whole(p.group, listed, below);
        } else {
            kill(p.pid);
            clear_bit(below, p.pid);
        }
    }
    for p in listed {
        if bit(below, p.pid) && !bit(impure, p.group) && p.group > 0 {
            kill(-p.group);
            set_bit(impure, p.group); // Once.
        }
    }
    for p in listed {
        if bit(below, p.pid) {
            kill(p.pid);
            clear_bit(below, p.pid);
        }
    }
}

/// A process as /proc/PID/stat showed it.
#[derive(Clone, Copy)]
struct Listed {
    pid: libc::pid_t,
    parent: libc::pid_t,
    group: libc::pid_t,
    /// The session: its leader's pid.
    session: libc::pid_t,
    /// The state letter of its main thread (`R`, `S`, `T`, ...).
    state: u8,
    /// How many threads it has.
    threads: u32,
    /// The start time, in clock ticks since boot: with the pid, what tells a process from a later one.
    start: u64,
}

/// A process `kill_tree` stopped.
#[derive(Clone, Copy)]
struct Stopped {
    pid: libc::pid_t,
    start: u64,
}

/// Whether every thread of `p` shows stopped (or dead): then none of them is in the middle of a fork, and
/// every child it made is listed. Async-signal-safe.
unsafe fn wholly_stopped(p: &Listed) -> bool {
    let settled = |state: u8| matches!(state, b'T' | b't' | b'Z' | b'X');
    if p.threads <= 1 {
        return settled(p.state);
    }
    // SAFETY: raw system calls into stack buffers we own.
    unsafe {
        let mut path = [0u8; 64];
        let mut at = put(&mut path, 0, b"/proc/");
        at = put_number(&mut path, at, p.pid);
        let task = put(&mut path, at, b"/task/");
        path[task] = 0;
        let dir = libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC);
        if dir < 0 {
            return settled(p.state);
        }
        let mut all = true;
        each_numbered_entry(dir, |thread| {
            let end = put_number(&mut path, task, thread);
            put(&mut path, end, b"/stat\0");
            // A thread gone since counts as stopped.
            all = read_stat(&path, thread).is_none_or(|t| settled(t.state));
            all
        });
        libc::close(dir);
        all
    }
}

/// Copy `bytes` into `buf` at `at`; returns where they end.
fn put(buf: &mut [u8], at: usize, bytes: &[u8]) -> usize {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
    at + bytes.len()
}

/// Write `n` (not negative) in decimal into `buf` at `at`; returns where it ends.
fn put_number(buf: &mut [u8], at: usize, n: libc::pid_t) -> usize {
    let mut digits = [0u8; 10];
    let (mut count, mut rest) = (0, n.max(0));
    loop {
        digits[count] = b'0' + (rest % 10) as u8;
        count += 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for (i, digit) in digits[..count].iter().rev().enumerate() {
        buf[at + i] = *digit;
    }
    at + count
}

/// Whether `p` is one of `processes` (same pid and start time).
fn is_one_of(processes: &[Stopped], p: &Listed) -> bool {
    processes.iter().any(|s| s.pid == p.pid && s.start == p.start)
}

/// Whether `p` is a process `kill_tree` stopped (same pid and start time), wherever it is now.
fn was_stopped(stopped_map: &[u8], stopped: &[Stopped], p: &Listed) -> bool {
    bit(stopped_map, p.pid) && stopped.iter().any(|s| s.pid == p.pid && s.start == p.start)
}

/// Mark in `below` (a bitmap by pid) the descendants of `root`, and the members of `group` (if not 0) and
/// the processes `seed` picks, with their descendants, but `root` and the `spared` (the guard itself, and
/// mpsync's inherited children, by pid and start time, with what they started: as `Supervisor::job`
/// leaves them out), one generation per pass.
fn mark_below(
    listed: &[Listed],
    below: &mut [u8],
    root: libc::pid_t,
    spared: (libc::pid_t, &[Stopped]),
    group: libc::pid_t,
    seed: impl Fn(&Listed) -> bool,
) {
    let (me, inherited) = spared;
    let spared = |p: &Listed| p.pid == me || p.pid == root || is_one_of(inherited, p);
    below.fill(0);
    for p in listed {
        if !spared(p) && ((group > 0 && p.group == group) || seed(p)) {
            set_bit(below, p.pid);
        }
    }
    let mut changed = true;
    while changed {
        changed = false;
        for p in listed {
            if !bit(below, p.pid) && (p.parent == root || bit(below, p.parent)) && !spared(p) {
                set_bit(below, p.pid);
                changed = true;
            }
        }
    }
}

fn bit(map: &[u8], pid: libc::pid_t) -> bool {
    let pid = pid as usize % PID_LIMIT;
    map[pid / 8] & (1 << (pid % 8)) != 0
}

fn set_bit(map: &mut [u8], pid: libc::pid_t) {
    let pid = pid as usize % PID_LIMIT;
    map[pid / 8] |= 1 << (pid % 8);
}

fn clear_bit(map: &mut [u8], pid: libc::pid_t) {
    let pid = pid as usize % PID_LIMIT;
    map[pid / 8] &= !(1 << (pid % 8));
}

/// Fill `listed` from /proc; returns how many. Async-signal-safe.
unsafe fn list_processes(listed: &mut [Listed]) -> usize {
    // SAFETY: raw system calls into stack buffers we own.
    unsafe {
        let dir = libc::open(c"/proc".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC);
        if dir < 0 {
            return 0;
        }
        let mut count = 0;
        each_numbered_entry(dir, |pid| {
            if count < listed.len()
                && let Some(p) = stat_of(pid)
            {
                listed[count] = p;
                count += 1;
            }
            true
        });
        libc::close(dir);
        count
    }
}

/// Call `each` with the number of every entry of the directory `dir` named by a number (a process or a
/// thread id), until it returns false. Async-signal-safe.
unsafe fn each_numbered_entry(dir: libc::c_int, mut each: impl FnMut(libc::pid_t) -> bool) {
    let mut entries = [0u8; 8192];
    loop {
        // SAFETY: getdents64 into a stack buffer we own, of the length given.
        let got = unsafe { libc::syscall(libc::SYS_getdents64, dir, entries.as_mut_ptr(), entries.len()) };
        if got <= 0 {
            return;
        }
        let mut at = 0usize;
        while at < got as usize {
            // struct linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, then the name.
            let reclen = u16::from_ne_bytes([entries[at + 16], entries[at + 17]]) as usize;
            let name = &entries[at + 19..at + reclen];
            at += reclen;
            let mut number: libc::pid_t = 0;
            let mut digits = 0;
            for &b in name.iter().take_while(|b| **b != 0) {
                if !b.is_ascii_digit() || digits >= 9 {
                    digits = 0;
                    break;
                }
                number = number * 10 + libc::pid_t::from(b - b'0');
                digits += 1;
            }
            if digits > 0 && !each(number) {
                return;
            }
        }
    }
}

/// The state, the parent, the process group and the start time (clock ticks since boot) of `pid`, from /proc/PID/stat
/// (`pid (comm) state ppid pgrp ... starttime ...`; comm may hold anything, so the fields after its last ')'
/// are read). Async-signal-safe.
unsafe fn stat_of(pid: libc::pid_t) -> Option<Listed> {
    let mut path = [0u8; 32];
    let mut at = put(&mut path, 0, b"/proc/");
    at = put_number(&mut path, at, pid);
    put(&mut path, at, b"/stat\0");
    // SAFETY: the path is NUL-terminated.
    unsafe { read_stat(&path, pid) }
}

/// What the stat file at `path` (NUL-terminated: /proc/PID/stat, or a thread's /proc/PID/task/TID/stat)
/// shows, as the process or thread `pid`. Async-signal-safe.
unsafe fn read_stat(path: &[u8], pid: libc::pid_t) -> Option<Listed> {
    // SAFETY: raw system calls into stack buffers we own.
    unsafe {
        let fd = libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return None;
        }
        let mut stat = [0u8; 1024];
        let got = libc::read(fd, stat.as_mut_ptr().cast(), stat.len());
        libc::close(fd);
        if got <= 0 {
            return None;
        }
        let stat = &stat[..got as usize];
        let close = stat.iter().rposition(|b| *b == b')')?;
        let number = |field: &[u8]| {
            let mut value: u64 = 0;
            for &b in field {
                if !b.is_ascii_digit() {
                    return None;
                }
                value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
            }
            Some(value)
        };
        // Fields 3 (state), 4 (ppid), 5 (pgrp), 6 (session) ... 20 (num_threads), 22 (starttime). A zombie is kept: one whose main thread has exited
        // while other threads run shows `Z` too, and it and its children must go; a true zombie has no
        // children left, and a signal to it does nothing.
        let mut fields = stat[close + 1..].split(|b| *b == b' ').filter(|field| !field.is_empty());
        let state = *fields.next()?.first()?;
        let parent = libc::pid_t::try_from(number(fields.next()?)?).ok()?;
        let group = libc::pid_t::try_from(number(fields.next()?)?).ok()?;
        let session = libc::pid_t::try_from(number(fields.next()?)?).ok()?;
        let threads = u32::try_from(number(fields.nth(13)?)?).ok()?;
        let start = number(fields.nth(1)?)?;
        Some(Listed { pid, parent, group, session, state, threads, start })
    }
}

/// Whether process group `pgid` may still be the child's: its leader is the process that armed the guard
/// (same start time), or gone (reaped; its members, if any, keep the id from being reused). A process of
/// that pid started at another time means the id was reused: the group is someone else's.
unsafe fn still_ours(pgid: libc::pid_t, leader_start: u64) -> bool {
    // SAFETY: reads /proc only.
    match unsafe { stat_of(pgid) } {
        Some(p) => p.start == leader_start,
        None => true,
    }
}

/// Close every descriptor from 3 up, except `keep` (which is at least 3).
///
/// # Safety
/// Only in a process that owns no descriptor it will use later (the freshly forked guard).
unsafe fn close_fds_except(keep: RawFd) {
    // SAFETY: closing descriptors nobody in this process will use; close_range(2) or close(2) only.
    unsafe {
        let close_range = |first: RawFd, last: libc::c_uint| {
            libc::syscall(libc::SYS_close_range, first as libc::c_uint, last, 0) == 0
        };
        let below = keep == 3 || close_range(3, (keep - 1) as libc::c_uint);
        let above = close_range(keep + 1, libc::c_uint::MAX);
        if !(below && above) {
            // Before Linux 5.9: one close per possible descriptor.
            let mut limit: libc::rlimit = std::mem::zeroed();
            let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
                limit.rlim_cur.min(1 << 20) as RawFd
            } else {
                1 << 16
            };
            for fd in 3..max {
                if fd != keep {
                    libc::close(fd);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process as /proc shows it: its parent, group, session, state and thread count.
    fn process(pid: libc::pid_t, parent: libc::pid_t, (group, session): (libc::pid_t, libc::pid_t)) -> Listed {
        Listed { pid, parent, group, session, state: b'T', threads: 1, start: 0 }
    }

    #[test]
    fn only_a_live_member_whose_parent_is_in_another_group_of_its_session_ties_its_group() {
        // 10 and 11 lead groups of session 1; 12 leads session 12; 13 is in group 10 of session 1.
        let mut listed = vec![process(10, 1, (10, 1)), process(11, 1, (11, 1)), process(12, 1, (12, 12))];
        listed.push(process(13, 10, (10, 1)));
        let mut place_of = vec![0; PID_LIMIT];
        for (i, p) in listed.iter().enumerate() {
            place_of[slot(p.pid)] = i as u32 + 1;
        }
        let ties = |p: Listed| ties(&p, &listed, &place_of);
        let in_group_30 = |pid, parent, session| process(pid, parent, (30, session));
        assert!(ties(in_group_30(20, 10, 1)), "a stopped member whose parent is in another group of its session");
        assert!(ties(Listed { threads: 3, state: b'R', ..in_group_30(21, 11, 1) }), "a running one, of three threads");
        assert!(ties(in_group_30(22, 13, 1)), "its parent not the leader of its group");
        assert!(!ties(Listed { state: b'Z', ..in_group_30(23, 10, 1) }), "a zombie (found by review, rv308)");
        assert!(ties(Listed { state: b'Z', threads: 2, ..in_group_30(23, 10, 1) }), "a zombie leader with threads");
        assert!(ties(in_group_30(24, 12, 12)), "in a session other than the guard's (found by review, rv309)");
        assert!(!ties(in_group_30(25, 12, 1)), "its parent in another session");
        assert!(!ties(in_group_30(26, 10, 12)), "its parent in another session, seen from that parent's");
        assert!(!ties(process(27, 13, (10, 1))), "its parent in its own group");
        assert!(!ties(in_group_30(28, 99, 1)), "its parent not listed");
        assert!(!ties(in_group_30(29, 0, 1)), "no parent");
    }
}
