//! The guard's kill of a job with a member stuck in uninterruptible sleep (a read from a hung NFS or FUSE mount),
//! which SIGKILL ends only when it wakes (src/supervise/guard.rs `kill_tree`, `anchor_groups`, `EXITING`). The
//! tests mount a FUSE file system whose daemon never answers a lookup (tests/support/hangfs.c; root only: they are
//! skipped elsewhere). From review, rv299.

use std::fs;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::*;

/// (state, parent, process group) of `pid` from /proc/PID/stat.
fn stat(pid: i32) -> Option<(char, i32, i32)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    let group = fields.next()?.parse().ok()?;
    Some((state, parent, group))
}

fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string()
}

fn children_of(parent: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>()
            && stat(pid).is_some_and(|(state, p, _)| p == parent && state != 'Z')
        {
            found.push(pid);
        }
    }
    found
}

/// Whether `pid` dies within 3 s (a hangup sent is acted on at once; a bound, not a wait for an event that should not come).
fn dies_soon(pid: i32) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

fn signal(pid: i32, signal: Signal) {
    let _ = kill(Pid::from_raw(pid), signal);
}

/// What a test started outside mpsync, undone however it ends.
struct Cleanup {
    pids: Vec<i32>,
    daemon: Option<std::process::Child>,
    mount: std::path::PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            // Its end aborts the connection: whatever sleeps in the file system wakes and dies.
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        for &pid in &self.pids {
            signal(pid, Signal::SIGKILL);
            signal(pid, Signal::SIGCONT);
        }
    }
}

/// The FUSE daemon at DIR/mnt; None where it cannot mount (not root).
fn mount_hanging_fuse(env: &TestEnv) -> Option<Cleanup> {
    let mount = env.path("mnt");
    fs::create_dir_all(&mount).unwrap();
    let daemon_program = build_program(env, "hangfs");
    let mut daemon = Command::new(daemon_program)
        .arg(&mount)
        .arg(&env.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = within_patience(|| env.path("fuse.ready").exists() || daemon.try_wait().ok().flatten().is_some());
    if !ready || !env.path("fuse.ready").exists() {
        eprintln!("cannot mount a FUSE file system here (not root?): skipped");
        let _ = daemon.kill();
        let _ = daemon.wait();
        return None;
    }
    Some(Cleanup { pids: Vec::new(), daemon: Some(daemon), mount })
}

/// `setsid sh -c 'sleep 1000 & exec mpsync lock NAME ... -- stuckgroup DIR MNT WHO'`: mpsync in a session of its
/// own with a helper it inherited across the exec in its group (not the job's: the README says the guard leaves
/// it alone). Returns mpsync and the helper's pid, once the job is ready.
fn holder_with_inherited_helper(env: &TestEnv, who: &str, cleanup: &mut Cleanup) -> (Proc, i32) {
    let program = build_program(env, "stuckgroup").display().to_string();
    let dir = env.dir.display().to_string();
    let mount = env.path("mnt").display().to_string();
    let name = env.lease_name("stuck");
    let mpsync = env.mpsync(fast(&["lock", &name], &[&program, &dir, &mount, who]));
    let script = format!("sleep 1000 & echo $! > {dir}/helper.pid; exec \"$0\" \"$@\"");
    let mut command = Command::new("sh");
    command.arg("-c").arg(script).arg(mpsync.get_program()).args(mpsync.get_args());
    for (key, value) in mpsync.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    command.stdin(Stdio::null());
    // SAFETY: setsid(2) is async-signal-safe.
    unsafe {
        command.pre_exec(|| nix::unistd::setsid().map(drop).map_err(std::io::Error::from));
    }
    let mut holder = Proc::spawn(command, &env.dir);
    let helper = read_pid(&env.path("helper.pid"));
    cleanup.pids.push(helper);
    holder.wait_for_file(&env.path("ready"), "1");
    (holder, helper)
}

fn guard_of(mpsync: i32) -> i32 {
    let mut guard = 0;
    wait_until("mpsync's guard", || {
        guard = children_of(mpsync).into_iter().find(|&pid| comm(pid) == "mpsync-guard").unwrap_or(0);
        guard > 0
    });
    guard
}

/// Found by review (rv299, rv300): the guard SIGKILLed while its kill waits (up to `EXITING`, 500 ms) for a job member
/// in uninterruptible sleep (a lookup on a FUSE mount that does not answer) to die, its anchors still in the job's
/// groups. The anchor in mpsync's own group (which the job shares: a member joined it, as in sharedgroup.c) was its
/// last tie to the session once that member died; the guard's death reparented the anchor out of the session, and
/// the kernel orphaned the group there and then (SIGHUP, SIGCONT), before the anchor could leave: mpsync, frozen,
/// was continued, and the helper it inherited (no part of the job), held stopped with it, was hung up and died. An
/// anchor is its keeper's child now, and a keeper, in the guard's own group, orphans nothing as it is reparented.
/// Nor does a keeper killed (its anchor comes back to the guard, a subreaper), and an anchor stopped by someone is
/// still taken out and ended (rv301: it held up its keeper, and the guard, for ever).
#[test]
fn a_guard_or_anchor_disturbed_while_it_waits_for_a_member_in_d_state_continues_nothing() {
    for disturb in ["kill the guard", "kill the keeper", "stop the anchor"] {
        let env = TestEnv::file();
        let Some(mut cleanup) = mount_hanging_fuse(&env) else { return };
        let (holder, helper) = holder_with_inherited_helper(&env, "h", &mut cleanup);
        let mpsync = holder.pid();
        let x = read_pid(&env.path("x.pid"));
        let guard = guard_of(mpsync);
        assert!(alive(helper));
        // mpsync and its helper are held stopped (`kill -STOP -<group>`, or a debugger's freeze of both).
        signal(helper, Signal::SIGSTOP);
        holder.signal(Signal::SIGSTOP);
        wait_until("the helper to stop", || crate::support::pty::state(helper) == Some('T'));
        // The guard acts at the lease's deadline: an anchor (its keeper's child) shows up in mpsync's group, and
        // stays while the member in uninterruptible sleep does not die (500 ms).
        let (mut keeper, mut anchor) = (0, 0);
        wait_until("the guard's anchor in mpsync's group", || {
            for k in children_of(guard) {
                if let Some(a) = children_of(k).into_iter().find(|&pid| stat(pid).is_some_and(|s| s.2 == mpsync)) {
                    (keeper, anchor) = (k, a);
                    return true;
                }
            }
            false
        });
        // X, the job's member in mpsync's group, dies at once of the guard's SIGKILL: the anchor is its last tie.
        wait_until("X to die", || !alive(x));
        match disturb {
            "kill the guard" => signal(guard, Signal::SIGKILL),
            "kill the keeper" => signal(keeper, Signal::SIGKILL),
            _ => signal(anchor, Signal::SIGSTOP),
        }
        wait_until("the anchor to end", || !alive(anchor));
        let frozen = crate::support::pty::state(mpsync);
        let helper_ran_on = dies_soon(helper);
        holder.signal(Signal::SIGCONT);
        assert_eq!(
            frozen,
            Some('T'),
            "{disturb}: mpsync, frozen, was continued (the inherited helper died: {helper_ran_on})"
        );
        assert!(!helper_ran_on, "{disturb}: mpsync's inherited helper (not the job's) was hung up and died");
    }
}
