//! What /proc says about processes: state, parent, process group, session. The supervisor reads it to find
//! the whole job (the child's group and every descendant of mpsync or of a member of that group), to see
//! whether a job has stopped, and to judge whether mpsync may give the terminal away or stop itself.
//!
//! Everything here is a snapshot: processes come and go while it is read. Callers re-read rather than trust
//! an old one. A process that is gone or hidden from us is left out; one that could not be read for want
//! of resources leaves the snapshot incomplete.

use std::collections::{HashMap, HashSet};
use std::io::Read as _;

use nix::libc;

/// The few fields of /proc/PID/stat the supervisor needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProcStat {
    pub pid: i32,
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    /// How many threads it has.
    pub threads: u32,
    /// When it started (clock ticks since boot): with the pid, what tells it from a later process that
    /// was given the same pid.
    pub start: u64,
}

impl ProcStat {
    pub fn read(pid: i32) -> Option<ProcStat> {
        match Self::read_checked(pid) {
            Read::Whole(process) | Read::Partly(process) => Some(process),
            Read::Gone | Read::Failed => None,
        }
    }

    /// As [`ProcStat::read`], telling a process that is gone (or that /proc will not show us: hidepid)
    /// from a read that failed for want of resources (EMFILE, ENFILE, ENOMEM): that process may well be
    /// there.
    fn read_checked(pid: i32) -> Read {
        let stat = match read_small(&format!("/proc/{pid}/stat")) {
            Ok(stat) => stat,
            Err(err) if gone_or_hidden(&err) => return Read::Gone,
            Err(_) => return Read::Failed,
        };
        let Some(mut process) = Self::parse(pid, &stat) else { return Read::Gone };
        // A process whose main thread has exited while other threads run shows `Z`, yet runs: it counts
        // as running (stopped if its threads are), not as a zombie.
        if process.state == 'Z' {
            match live_thread_state(pid) {
                Ok(Some(state)) => process.state = state,
                Ok(None) => {}
                // Its threads unknown: it counts as running, and keeps its place in the tree (what it
                // started is found through it).
                Err(_) => {
                    process.state = 'R';
                    return Read::Partly(process);
                }
            }
        }
        Read::Whole(process)
    }

    fn parse(pid: i32, stat: &str) -> Option<ProcStat> {
        // The command name (2nd field) is in parentheses and may contain spaces and parentheses.
        let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let ppid = fields.next()?.parse().ok()?;
        let pgrp = fields.next()?.parse().ok()?;
        let session = fields.next()?.parse().ok()?;
        // tty_nr .. nice (13 fields), then num_threads, itrealvalue, starttime.
        let mut fields = fields.skip(13);
        let threads = fields.next()?.parse().ok()?;
        let start = fields.nth(1)?.parse().ok()?;
        Some(ProcStat { pid, state, ppid, pgrp, session, threads, start })
    }

    /// Dead, waiting to be reaped (or being reaped).
    pub fn is_zombie(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }

    /// Stopped by a signal ('T'), or stopped under a tracer ('t').
    pub fn is_stopped(&self) -> bool {
        matches!(self.state, 'T' | 't')
    }

    /// Stopped, every thread of it: a stop reaches the threads one by one, and a thread that still runs
    /// while the first shows 'T' may still fork. Read again for a process of several threads.
    pub fn is_wholly_stopped(&self) -> bool {
        if !self.is_stopped() {
            return false;
        }
        if self.threads <= 1 {
            return true;
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else { return false };
        tasks.into_iter().all(|task| {
            let Ok(task) = task else { return false };
            match read_small(&task.path().join("stat").to_string_lossy()) {
                Ok(stat) => ProcStat::parse(self.pid, &stat).is_some_and(|t| t.is_stopped() || t.is_zombie()),
                Err(err) => gone_or_hidden(&err),
            }
        })
    }
}

/// A /proc file, whole: open, one read into a buffer large enough for a stat line, the read that sees
/// the end, close. `std::fs::read_to_string` (and `File::read_to_end`) first size the file (a statx and an
/// lseek per file, in vain: /proc says 0), then read in growing steps from 32 bytes: 9 system calls for
/// one stat line instead of 4. A snapshot reads every process's, after every child's exit.
///
/// Not UTF-8 is not unreadable: a command name is any bytes (a program named `$'\xff'`), and a process
/// whose stat line failed to read would count as gone, free to outlive the lease. The fields read after
/// the name are ASCII.
fn read_small(path: &str) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut bytes = vec![0; 1024];
    let mut len = 0;
    loop {
        if len == bytes.len() {
            bytes.resize(len * 2, 0);
        }
        match file.read(&mut bytes[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(String::from_utf8_lossy(&bytes[..len]).into_owned())
}

/// Whether any process listed in /proc other than `except` is in process group `pgrp`, asked of the kernel
/// (getpgid(2) needs no descriptor and formats nothing). Zombies count: they keep their group until they
/// are reaped. `None` when it cannot tell: /proc cannot be listed, or the kernel would not say of one
/// process (a security module).
pub(crate) fn group_has_others(pgrp: i32, except: &[i32]) -> Option<bool> {
    for entry in std::fs::read_dir("/proc").ok()? {
        let Some(pid) = entry.ok()?.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else {
            continue;
        };
        if except.contains(&pid) {
            continue;
        }
        match nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid))) {
            Ok(group) if group.as_raw() == pgrp => return Some(true),
            Ok(_) | Err(nix::errno::Errno::ESRCH) => {}
            Err(_) => return None,
        }
    }
    Some(false)
}

/// What `children_of_threads` found.
pub(crate) enum ThreadChildren {
    /// The children of the threads asked about, zombies included.
    Listed(Vec<i32>),
    /// The kernel has no children files (built without CONFIG_PROC_CHILDREN).
    NoFile,
    /// They could not be read (out of descriptors): nothing is known.
    Unreadable,
}

/// The children of this process's threads `tasks` (`/proc/self/task/TID/children`: a child is the thread's
/// that made it, or adopted it), zombies included. Read by thread id, not from a listing of the threads
/// (which can skip a live one while others exit); the threads must be alive.
pub(crate) fn children_of_threads(tasks: &[i32]) -> ThreadChildren {
    let mut children = Vec::new();
    for (i, tid) in tasks.iter().enumerate() {
        if tasks[..i].contains(tid) {
            continue;
        }
        match read_small(&format!("/proc/self/task/{tid}/children")).map(|list| parse_pids(&list)) {
            Ok(Some(pids)) => children.extend(pids),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return ThreadChildren::NoFile,
            Ok(None) | Err(_) => return ThreadChildren::Unreadable,
        }
    }
    ThreadChildren::Listed(children)
}

/// The children of process `pid`'s threads (`/proc/PID/task/TID/children`), zombies included, or of its
/// main thread only (`all_threads` false: one read, however many threads it has); `None` when they cannot
/// all be read (the process or a thread gone meanwhile, no CONFIG_PROC_CHILDREN, out of descriptors): the
/// caller looks again later.
pub(crate) fn children_of_process(pid: i32, all_threads: bool) -> Option<Vec<i32>> {
    if !all_threads {
        return parse_pids(&read_small(&format!("/proc/{pid}/task/{pid}/children")).ok()?);
    }
    let mut children = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let tid = task.ok()?.file_name();
        let list = read_small(&format!("/proc/{pid}/task/{}/children", tid.to_str()?)).ok()?;
        children.extend(parse_pids(&list)?);
    }
    Some(children)
}

fn parse_pids(list: &str) -> Option<Vec<i32>> {
    list.split_whitespace().map(|pid| pid.parse().ok()).collect()
}

/// What a read of /proc/PID/stat found.
enum Read {
    Whole(ProcStat),
    /// The process, but not all of it could be read (its threads): the snapshot is not complete.
    Partly(ProcStat),
    /// Gone, or hidden from us.
    Gone,
    /// Not read for want of resources: it may be there.
    Failed,
}

/// Whether a failed read of /proc means the process is gone (ENOENT, ESRCH) or hidden from us (EACCES,
/// EPERM: hidepid), rather than a read that failed for want of resources.
fn gone_or_hidden(err: &std::io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOENT | libc::ESRCH | libc::EACCES | libc::EPERM))
}

/// The state of the first thread of `pid` that is not a zombie, if any (none when the process is gone
/// or hidden); an error when its threads could not be read.
fn live_thread_state(pid: i32) -> std::io::Result<Option<char>> {
    let tasks = match std::fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(tasks) => tasks,
        Err(err) if gone_or_hidden(&err) => return Ok(None),
        Err(err) => return Err(err),
    };
    for task in tasks {
        let stat = match read_small(&task?.path().join("stat").to_string_lossy()) {
            Ok(stat) => stat,
            Err(err) if gone_or_hidden(&err) => continue,
            Err(err) => return Err(err),
        };
        if let Some(task) = ProcStat::parse(pid, &stat).filter(|task| !task.is_zombie()) {
            return Ok(Some(task.state));
        }
    }
    Ok(None)
}

/// Whether /proc belongs to another PID namespace than `me`'s: its /proc/self names another pid (a
/// parent namespace's /proc), or names none although it is there (a child namespace's, where mpsync has
/// no pid). No /proc at all says nothing.
pub(crate) fn of_another_pid_namespace(me: nix::unistd::Pid) -> bool {
    match std::fs::read_link("/proc/self") {
        Ok(link) => link.to_str().and_then(|pid| pid.parse::<i32>().ok()).is_some_and(|pid| pid != me.as_raw()),
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => std::fs::symlink_metadata("/proc/self").is_ok(),
        Err(_) => false,
    }
}

/// Whether the /proc that mpsync reads hides processes from it: mounted with `hidepid` (1, 2 or 4; or
/// `noaccess`, `invisible`, `ptraceable`), which keeps another user's processes, setuid programs and
/// non-dumpable processes (ssh-agent) out of sight of a reader without CAP_SYS_PTRACE. What /proc then
/// shows of a process group says nothing of the members it hides.
pub(crate) fn hides_processes() -> bool {
    if may_ptrace_anything() {
        return false;
    }
    // Read as bytes: a mount point need not be UTF-8, and one that is not must not hide the rest.
    let Ok(mountinfo) = read_small("/proc/self/mountinfo") else { return false };
    // The proc mount that /proc is now: the one with its device (the last line on /proc is not always the
    // one on top: `mount --move` keeps the ids).
    let device = match nix::sys::stat::stat("/proc") {
        Ok(stat) => format!("{}:{}", nix::sys::stat::major(stat.st_dev), nix::sys::stat::minor(stat.st_dev)),
        Err(_) => return false,
    };
    mountinfo.lines().filter_map(proc_mount).any(|(mount_device, options)| {
        mount_device == device
            && options
                .split(',')
                .any(|option| option.strip_prefix("hidepid=").is_some_and(|value| !matches!(value, "0" | "off")))
    })
}

/// Whether mpsync has CAP_SYS_PTRACE in effect (root, usually): hidepid hides nothing from it.
fn may_ptrace_anything() -> bool {
    const CAP_SYS_PTRACE: u32 = 19;
    let Ok(status) = read_small("/proc/self/status") else { return false };
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|caps| u64::from_str_radix(caps.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_PTRACE) != 0)
}

/// The device (`major:minor`) and super options of a mountinfo line for a proc file system mounted on
/// /proc.
fn proc_mount(line: &str) -> Option<(&str, &str)> {
    let (mount, filesystem) = line.split_once(" - ")?;
    let mut fields = mount.split(' ');
    let device = fields.nth(2)?;
    let mount_point = fields.nth(1)?;
    let mut filesystem = filesystem.split(' ');
    let (kind, _source, options) = (filesystem.next()?, filesystem.next()?, filesystem.next()?);
    (mount_point == "/proc" && kind == "proc").then_some((device, options))
}

/// Every process /proc lets us read, once.
pub(crate) struct Snapshot {
    processes: Vec<ProcStat>,
    /// Whether every process /proc listed was read, or is gone (or hidden from us): not so when a read
    /// failed for want of resources (a child can lower mpsync's limit on open files with prlimit(1)). No
    /// /proc at all (a chroot without it) leaves nothing to read and counts as complete.
    complete: bool,
}

impl Snapshot {
    pub fn take() -> Snapshot {
        let mut complete = true;
        let mut processes = Vec::new();
        match std::fs::read_dir("/proc") {
            Ok(entries) => {
                for entry in entries {
                    let Ok(entry) = entry else {
                        complete = false;
                        continue;
                    };
                    let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else {
                        continue;
                    };
                    match ProcStat::read_checked(pid) {
                        Read::Whole(process) => processes.push(process),
                        Read::Partly(process) => {
                            processes.push(process);
                            complete = false;
                        }
                        Read::Gone => {}
                        Read::Failed => complete = false,
                    }
                }
            }
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {}
            Err(_) => complete = false,
        }
        Snapshot { processes, complete }
    }

    /// See [`Snapshot::complete`](Snapshot#structfield.complete).
    pub fn complete(&self) -> bool {
        self.complete
    }

    pub fn get(&self, pid: i32) -> Option<&ProcStat> {
        self.processes.iter().find(|process| process.pid == pid)
    }

    /// Whether /proc shows a live process (not a zombie) of group `pgrp`.
    pub fn group_has_living(&self, pgrp: i32) -> bool {
        self.processes.iter().any(|process| process.pgrp == pgrp && !process.is_zombie())
    }

    /// Whether /proc shows any process of group `pgrp`, zombies included.
    pub fn shows_group(&self, pgrp: i32) -> bool {
        self.processes.iter().any(|process| process.pgrp == pgrp)
    }

    /// The job mpsync answers for: the members of `group` (if any), and every descendant of `root`
    /// (mpsync) or of a member of `group`, however far down and in whatever group or session (mpsync's own
    /// group included), except the processes of `skip` (the guard, and what mpsync runs itself, such as a
    /// kubeconfig exec credential plugin), with their descendants. Zombies are left out: they are dead.
    ///
    /// Descendants are found by parent links, so a process escapes the walk once its parent exits and it is
    /// reparented to an init or subreaper above mpsync; as PID 1 or a subreaper, mpsync *is* that init, and
    /// nothing in its tree escapes. The members of the group are roots of the walk too: after the main
    /// child's exit they have left mpsync's tree, and what they started in another group or session
    /// (`sh -c 'setsid worker & wait'` run in the background) is found through them while they live.
    /// So are the processes of `kept` (pid and start time): members seen once, which stay members, with
    /// what they start, when their parent dies and they are handed to init.
    pub fn job(&self, group: Option<i32>, root: i32, skip: &[i32], kept: &[(i32, u64)]) -> Vec<ProcStat> {
        let mut children: HashMap<i32, Vec<&ProcStat>> = HashMap::new();
        for process in &self.processes {
            children.entry(process.ppid).or_default().push(process);
        }
        let mut seen = HashSet::new();
        let mut job = Vec::new();
        let mut queue = vec![root];
        // Each process once: its children are walked when it is first seen.
        let mut add = |process: &ProcStat, job: &mut Vec<ProcStat>, queue: &mut Vec<i32>| {
            if seen.insert(process.pid) {
                if !process.is_zombie() {
                    job.push(*process);
                }
                queue.push(process.pid);
            }
        };
        if let Some(group) = group {
            for process in self.processes.iter().filter(|process| process.pgrp == group) {
                add(process, &mut job, &mut queue);
            }
        }
        for process in self.processes.iter().filter(|process| kept.contains(&(process.pid, process.start))) {
            add(process, &mut job, &mut queue);
        }
        while let Some(parent) = queue.pop() {
            for child in children.get(&parent).map(Vec::as_slice).unwrap_or_default() {
                if skip.contains(&child.pid) {
                    continue;
                }
                add(child, &mut job, &mut queue);
            }
        }
        job
    }

    /// Whether process group `pgrp` is orphaned, as the kernel judges it: no member has a parent in another
    /// group of the same session, so no shell's job control can continue it. The kernel discards
    /// SIGTSTP, SIGTTIN and SIGTTOU to such a group (with their default action), so it cannot stop.
    /// A parent /proc does not show (another PID namespace, hidepid) counts as one that can.
    pub fn group_is_orphaned(&self, pgrp: i32, session: i32) -> bool {
        !self.processes.iter().filter(|process| process.pgrp == pgrp && !process.is_zombie()).any(|member| {
            match self.get(member.ppid) {
                Some(parent) => parent.pgrp != pgrp && parent.session == session,
                None => member.ppid != 0,
            }
        })
    }

    /// The live members of group `pgrp` other than `me`, that are neither ancestors of `me` (a shell waiting
    /// for mpsync) nor children of `me` (what mpsync itself runs): other members of a pipeline, or background
    /// jobs of a script without job control.
    pub fn strangers_in_group(&self, pgrp: i32, me: i32) -> Vec<i32> {
        let mut ancestors = HashSet::new();
        let mut cursor = self.get(me).map(|process| process.ppid);
        while let Some(pid) = cursor.filter(|pid| *pid > 0 && ancestors.insert(*pid)) {
            cursor = self.get(pid).map(|process| process.ppid);
        }
        self.processes
            .iter()
            .filter(|process| process.pgrp == pgrp && process.pid != me && !process.is_zombie())
            .filter(|process| !ancestors.contains(&process.pid) && process.ppid != me)
            .map(|process| process.pid)
            .collect()
    }

    /// The children of `parent`, zombies included.
    pub fn children_of(&self, parent: i32) -> impl Iterator<Item = &ProcStat> {
        self.processes.iter().filter(move |process| process.ppid == parent)
    }

    /// The children of `parent` that are zombies.
    pub fn zombie_children(&self, parent: i32) -> impl Iterator<Item = &ProcStat> {
        self.processes.iter().filter(move |process| process.ppid == parent && process.is_zombie())
    }
}

#[cfg(test)]
mod tests {
    use super::{ThreadChildren, children_of_threads, proc_mount};

    /// A child is its thread's: this thread's (and the main thread's) children are told from another
    /// thread's, which waits for its own, also while threads come and go (tokio's blocking pool does).
    #[test]
    fn the_children_of_some_threads_are_told_from_anothers_while_threads_come_and_go() {
        let tasks = [nix::unistd::gettid().as_raw(), nix::unistd::getpid().as_raw()];
        let mut mine = std::process::Command::new("sleep").arg("1000").spawn().unwrap();
        let (started, theirs) = std::sync::mpsc::channel();
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let waiter = std::thread::spawn(move || {
            let mut theirs = std::process::Command::new("sleep").arg("1000").spawn().unwrap();
            started.send(theirs.id() as i32).unwrap();
            finished.recv().unwrap();
            theirs.kill().unwrap();
            theirs.wait().unwrap();
        });
        let theirs = theirs.recv().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let churn = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::spawn(|| {}).join().unwrap();
                }
            })
        };
        // Every look first, then the clean-up, then the verdict: a failed assertion leaves nothing running.
        let mine_pid = mine.id() as i32;
        let looks: Vec<Option<Vec<i32>>> = (0..2000)
            .map(|_| match children_of_threads(&tasks) {
                ThreadChildren::Listed(children) => Some(children),
                ThreadChildren::NoFile | ThreadChildren::Unreadable => None,
            })
            .collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        churn.join().unwrap();
        done.send(()).unwrap();
        waiter.join().unwrap();
        mine.kill().unwrap();
        mine.wait().unwrap();
        let wrong: Vec<_> = looks
            .iter()
            .filter(|look| {
                look.as_ref().is_none_or(|children| !children.contains(&mine_pid) || children.contains(&theirs))
            })
            .collect();
        assert!(
            wrong.is_empty(),
            "mine {mine_pid}, theirs {theirs}: {} looks wrong, such as {:?}",
            wrong.len(),
            wrong[0]
        );
    }

    #[test]
    fn the_device_and_options_of_proc_on_slash_proc_are_read_from_mountinfo() {
        let proc_hidden =
            "36 25 0:5 / /proc rw,nosuid,nodev,noexec,relatime shared:13 - proc proc rw,hidepid=invisible";
        assert_eq!(proc_mount(proc_hidden), Some(("0:5", "rw,hidepid=invisible")));
        let plain = "22 1 0:21 / /proc rw,relatime - proc proc rw";
        assert_eq!(proc_mount(plain), Some(("0:21", "rw")));
        // Another file system on /proc, or proc elsewhere: not the one mpsync reads.
        assert_eq!(proc_mount("40 22 0:35 / /proc/sys/fs/binfmt_misc rw - binfmt_misc binfmt_misc rw"), None);
        assert_eq!(proc_mount("41 1 0:5 / /mnt/proc rw - proc proc rw,hidepid=2"), None);
        assert_eq!(proc_mount("not a mountinfo line"), None);
    }
}
