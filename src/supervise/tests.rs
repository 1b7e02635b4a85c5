//! Unit tests of the supervisor. Whatever stops or kills the process running the supervisor runs in a helper
//! process of its own: the test binary again, in `helper_process`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use nix::sys::signal::{SaFlags, SigAction, kill, sigaction};

use super::procfs::ProcStat;
use super::*;
use nix::unistd::tcgetpgrp;

/// A supervisor installs process-wide signal handling and reaps: one at a time in this process.
static SERIAL: Mutex<()> = Mutex::new(());

/// How long any single wait in these tests may take: generous, for a loaded machine.
const PATIENCE: Duration = Duration::from_secs(60);

/// Set in a re-executed test binary to run `helper_process` in a process of its own.
const HELPER_MODE: &str = "MPSYNC_SUPERVISE_HELPER";
const HELPER_DIR: &str = "MPSYNC_SUPERVISE_HELPER_DIR";

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap()
}

fn start() -> Supervisor {
    Supervisor::start(SuperviseOptions::default()).unwrap()
}

/// `sh -c SCRIPT ARGS...`: inside the script the first argument is `$0`.
fn sh(script: &str, args: &[&Path]) -> ChildCommand {
    let mut argv = vec![OsString::from("-c"), OsString::from(script)];
    argv.extend(args.iter().map(|arg| arg.as_os_str().to_owned()));
    ChildCommand { program: "sh".into(), args: argv, env: vec![] }
}

/// `bash -c SCRIPT ARGS...`, for loops that job control stops: dash runs commands with vfork(2), and a
/// vforked child stopped before its exec leaves its parent in uninterruptible sleep ('D', not 'T') until it
/// is continued (bash's job control has the same trouble with such a loop).
fn bash(script: &str, args: &[&Path]) -> ChildCommand {
    ChildCommand { program: "bash".into(), ..sh(script, args) }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let path = std::env::temp_dir().join(format!("mpsync-supervise-{name}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn join(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

async fn event(supervisor: &mut Supervisor) -> Notice {
    tokio::time::timeout(PATIENCE, supervisor.next_notice()).await.expect("no event within the patience")
}

/// Wait for a file holding one whole line (a pid, or "ready") and return that line.
async fn line_in(path: &Path) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(text) = fs::read_to_string(path)
            && let Some(line) = text.strip_suffix('\n')
        {
            return line.to_owned();
        }
        assert!(Instant::now() < deadline, "{} was never written", path.display());
        tokio::time::sleep(POLL).await;
    }
}

async fn pid_in(path: &Path) -> i32 {
    line_in(path).await.trim().parse().unwrap()
}

/// Dead: no such process, or a zombie nobody reaps (this machine's init does not).
fn gone(pid: i32) -> bool {
    ProcStat::read(pid).is_none_or(|stat| stat.is_zombie())
}

async fn until_gone(pid: i32) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while !gone(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
    true
}

#[test]
fn exit_code_passes_through() {
    let _serial = serial();
    let mut supervisor = start();
    runtime().block_on(async {
        supervisor.spawn(&sh("exit 7", &[]), None).unwrap();
        assert!(supervisor.running());
        assert_eq!(event(&mut supervisor).await, Notice::ChildExited(ChildExit::Exited(7)));
        assert!(!supervisor.running());
        supervisor.finish(Signal::SIGTERM, Duration::from_secs(10)).await;
    });
}

/// The job's group id is the main child's pid. Reaped at its exit, with nothing else left in the group, the
/// id would be free while mpsync still signals the group (`finish` looks for leftovers, the guard is armed):
/// a stranger that got the pid and made a group of its own would be killed in the job's place. So the
/// child's zombie is kept until the job is let go, and only then reaped.
#[test]
fn the_main_childs_pid_stays_taken_until_its_job_is_let_go() {
    let _serial = serial();
    let mut supervisor = start();
    runtime().block_on(async {
        let pid = supervisor.spawn(&sh("exit 7", &[]), None).unwrap() as i32;
        assert_eq!(event(&mut supervisor).await, Notice::ChildExited(ChildExit::Exited(7)));
        assert!(ProcStat::read(pid).is_some_and(|stat| stat.is_zombie()), "the exited child is kept as a zombie");
        assert_eq!(killpg(Pid::from_raw(pid), None), Ok(()), "its group id is still taken");
        supervisor.finish(Signal::SIGTERM, Duration::from_secs(10)).await;
        assert_eq!(killpg(Pid::from_raw(pid), None), Err(Errno::ESRCH), "reaped once the job is let go");
    });
}

/// mpsync frozen between its last look at the lease and the fork: the child starts after its deadline.
/// The guard had the deadline before the child existed, so it kills the child as it arms it, with nothing
/// from mpsync's side (which does not call `stop` or `set_deadline` here).
#[test]
fn a_child_started_past_its_deadline_is_killed_by_the_guard_at_once() {
    let _serial = serial();
    let mut supervisor = start();
    runtime().block_on(async {
        let past = tokio::time::Instant::now() - Duration::from_millis(1);
        supervisor.spawn(&sh("sleep 60", &[]), Some(past)).unwrap();
        let Notice::ChildExited(exit) = event(&mut supervisor).await else { panic!("expected the child's exit") };
        assert_eq!(exit, ChildExit::Signaled(9), "killed by the guard");
        supervisor.finish(Signal::SIGTERM, Duration::from_secs(10)).await;
    });
}

#[test]
fn death_by_signal_is_reported_as_128_plus_n() {
    let _serial = serial();
    let mut supervisor = start();
    runtime().block_on(async {
        supervisor.spawn(&sh("kill -9 $$", &[]), None).unwrap();
        let Notice::ChildExited(exit) = event(&mut supervisor).await else { panic!("expected the child's exit") };
        assert_eq!(exit, ChildExit::Signaled(9));
        assert_eq!(exit.code(), 137);
        supervisor.finish(Signal::SIGTERM, Duration::from_secs(10)).await;
    });
}

#[test]
fn missing_command_is_not_found() {
    let _serial = serial();
    let mut supervisor = start();
    for program in ["/nonexistent-mpsync-dir/command", "mpsync-no-such-command-anywhere"] {
        let command = ChildCommand { program: program.into(), args: vec![], env: vec![] };
        let result = supervisor.spawn(&command, None);
        assert!(matches!(result, Err(SpawnError::NotFound(ref name)) if name == program), "{result:?}");
        assert!(!supervisor.running());
    }
}

#[test]
fn non_executable_file_is_not_executable() {
    let _serial = serial();
    let dir = TempDir::new("noexec");
    let script = dir.join("script");
    fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    let mut supervisor = start();
    for program in [script, dir.0.clone()] {
        let command = ChildCommand { program: program.clone().into(), args: vec![], env: vec![] };
        let result = supervisor.spawn(&command, None);
        assert!(matches!(result, Err(SpawnError::NotExecutable(..))), "{}: {result:?}", program.display());
        assert!(!supervisor.running());
    }
}

#[test]
fn child_gets_its_argv_and_extra_environment() {
    let _serial = serial();
    let dir = TempDir::new("argv");
    let out = dir.join("out");
    let mut supervisor = start();
    runtime().block_on(async {
        let mut command = sh(r#"printf '%s|%s|%s\n' "$1" "$MPSYNC_TEST_EXTRA" "$HOME" > "$0""#, &[&out]);
        command.args.push("two words; $(no shell)".into());
        command.env.push(("MPSYNC_TEST_EXTRA".into(), "extra".into()));
        supervisor.spawn(&command, None).unwrap();
        assert_eq!(event(&mut supervisor).await, Notice::ChildExited(ChildExit::Exited(0)));
        supervisor.finish(Signal::SIGTERM, Duration::from_secs(10)).await;
    });
    let home = std::env::var("HOME").unwrap_or_default();
    assert_eq!(fs::read_to_string(&out).unwrap(), format!("two words; $(no shell)|extra|{home}\n"));
}

#[test]
fn child_runs_in_its_own_process_group() {
    let _serial = serial();
    let dir = TempDir::new("pgid");
    let out = dir.join("pgid");
    let mut supervisor = start();
    let pid = runtime().block_on(async {
        let pid = supervisor.spawn(&sh(r#"cut -d' ' -f5 /proc/$$/stat > "$0""#, &[&out]), None).unwrap();
        assert_eq!(event(&mut supervisor).await, Notice::ChildExited(ChildExit::Exited(0)));
        supervisor.finish(Signal::SIGTERM, Duration::from_secs(10)).await;
        pid
    });
    let pgid: i32 = fs::read_to_string(&out).unwrap().trim().parse().unwrap();
    assert_eq!(pgid, pid as i32);
    assert_ne!(pgid, getpgrp().as_raw());
}

#[test]
fn child_starts_with_no_blocked_or_ignored_signals() {
    let _serial = serial();
    let dir = TempDir::new("sigmask");
    let status = dir.join("status");
    // The tests themselves run under nohup, maybe: what is ignored when mpsync starts stays ignored (and
    // is tested elsewhere), so this test starts from the default.
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_DFL installs no handler code; the action found is put back at the end.
    let inherited = unsafe { sigaction(Signal::SIGHUP, &default) }.unwrap();
    let mut supervisor = start();
    runtime().block_on(async {
        // As under nohup: SIGHUP ignored; and a signal blocked in the spawning thread.
        let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
        // SAFETY: SIG_IGN installs no handler code.
        let previous = unsafe { sigaction(Signal::SIGHUP, &ignore) }.unwrap();
        let mut blocked = SigSet::empty();
        blocked.add(Signal::SIGUSR2);
        let mut mask = SigSet::empty();
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&blocked), Some(&mut mask)).unwrap();
        let spawned = supervisor.spawn(&sh(r#"exec cat /proc/self/status > "$0""#, &[&status]), None);
        pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&mask), None).unwrap();
        // SAFETY: puts back the action that was there (the supervisor's handler).
        unsafe { sigaction(Signal::SIGHUP, &previous) }.unwrap();
        spawned.unwrap();
        assert_eq!(event(&mut supervisor).await, Notice::ChildExited(ChildExit::Exited(0)));
        supervisor.finish(Signal::SIGTERM, Duration::from_secs(10)).await;
    });
    let status = fs::read_to_string(&status).unwrap();
    for field in ["SigBlk:", "SigIgn:"] {
        let line = status.lines().find(|line| line.starts_with(field)).unwrap();
        let value = line[field.len()..].trim();
        assert!(value.chars().all(|digit| digit == '0'), "the child has {line}");
    }
    drop(supervisor);
    // SAFETY: puts back the action that was there, exactly as it was.
    unsafe { sigaction(Signal::SIGHUP, &inherited) }.unwrap();
}

#[test]
fn signals_are_reported_and_forwarding_reaches_the_group() {
    let _serial = serial();
    let dir = TempDir::new("forward");
    let ready = dir.join("ready");
    let mut supervisor = start();
    runtime().block_on(async {
        let script = r#"trap 'exit 42' USR1; echo ready > "$0"; while :; do sleep 0.1; done"#;
        supervisor.spawn(&sh(script, &[&ready]), None).unwrap();
        line_in(&ready).await;
        kill(getpid(), Signal::SIGUSR1).unwrap();
        assert_eq!(event(&mut supervisor).await, Notice::Signal(Signal::SIGUSR1));
        supervisor.forward(Signal::SIGUSR1);
        assert_eq!(event(&mut supervisor).await, Notice::ChildExited(ChildExit::Exited(42)));
        supervisor.finish(Signal::SIGTERM, Duration::from_secs(10)).await;
    });
}

#[test]
fn stop_kills_the_whole_group() {
    let _serial = serial();
    let dir = TempDir::new("stop");
    let sleep_pid = dir.join("sleep.pid");
    let mut supervisor = start();
    runtime().block_on(async {
        let pid = supervisor.spawn(&sh(r#"sleep 1000 & echo $! > "$0"; wait"#, &[&sleep_pid]), None).unwrap();
        let sleep = pid_in(&sleep_pid).await;
        assert!(!gone(sleep));
        let stop = supervisor.stop(Signal::SIGTERM, Duration::from_secs(10));
        let exit = tokio::time::timeout(PATIENCE, stop).await.unwrap();
        assert_eq!(exit, ChildExit::Signaled(libc::SIGTERM));
        assert!(!supervisor.running());
        assert!(gone(sleep), "the background sleep survived stop");
        assert!(!group_alive(Pid::from_raw(pid as i32)));
        // A stopped supervisor runs a command again (elect, after re-election).
        supervisor.spawn(&sh("exit 3", &[]), None).unwrap();
        assert_eq!(event(&mut supervisor).await, Notice::ChildExited(ChildExit::Exited(3)));
        supervisor.finish(Signal::SIGTERM, Duration::from_secs(10)).await;
    });
}

#[test]
fn stop_sigkills_a_child_that_ignores_the_kill_signal() {
    let _serial = serial();
    let dir = TempDir::new("stubborn");
    let ready = dir.join("ready");
    let mut supervisor = start();
    runtime().block_on(async {
        let script = r#"trap '' TERM; echo ready > "$0"; exec sleep 1000"#;
        supervisor.spawn(&sh(script, &[&ready]), None).unwrap();
        line_in(&ready).await;
        let grace = Duration::from_millis(300);
        let started = Instant::now();
        let exit = tokio::time::timeout(PATIENCE, supervisor.stop(Signal::SIGTERM, grace)).await.unwrap();
        assert_eq!(exit, ChildExit::Signaled(libc::SIGKILL));
        assert!(started.elapsed() >= grace, "SIGKILL came before the grace period was over");
        assert!(!supervisor.running());
    });
}

#[test]
fn signals_that_arrive_during_stop_are_kept_for_next_event() {
    let _serial = serial();
    let dir = TempDir::new("queue");
    let ready = dir.join("ready");
    let mut supervisor = start();
    runtime().block_on(async {
        let script = r#"trap '' TERM; echo ready > "$0"; exec sleep 1000"#;
        supervisor.spawn(&sh(script, &[&ready]), None).unwrap();
        line_in(&ready).await;
        kill(getpid(), Signal::SIGUSR2).unwrap();
        let stop = supervisor.stop(Signal::SIGTERM, Duration::from_millis(300));
        assert_eq!(tokio::time::timeout(PATIENCE, stop).await.unwrap(), ChildExit::Signaled(libc::SIGKILL));
        assert_eq!(event(&mut supervisor).await, Notice::Signal(Signal::SIGUSR2));
    });
}

#[test]
fn stop_after_the_child_exited_returns_that_exit_once() {
    let _serial = serial();
    let mut supervisor = start();
    runtime().block_on(async {
        let pid = supervisor.spawn(&sh("exit 3", &[]), None).unwrap();
        assert!(until_gone(pid as i32).await);
        let stop = supervisor.stop(Signal::SIGTERM, Duration::from_secs(10));
        assert_eq!(tokio::time::timeout(PATIENCE, stop).await.unwrap(), ChildExit::Exited(3));
        let again = tokio::time::timeout(Duration::from_millis(300), supervisor.next_notice()).await;
        assert!(again.is_err(), "the exit was reported twice: {again:?}");
    });
}

#[test]
fn finish_kills_what_the_child_left_behind() {
    let _serial = serial();
    let dir = TempDir::new("finish");
    let sleep_pid = dir.join("sleep.pid");
    let mut supervisor = start();
    runtime().block_on(async {
        supervisor.spawn(&sh(r#"sleep 1000 & echo $! > "$0""#, &[&sleep_pid]), None).unwrap();
        assert_eq!(event(&mut supervisor).await, Notice::ChildExited(ChildExit::Exited(0)));
        let sleep = pid_in(&sleep_pid).await;
        assert!(!gone(sleep), "the background sleep should outlive its shell");
        let finish = supervisor.finish(Signal::SIGTERM, Duration::from_secs(10));
        tokio::time::timeout(PATIENCE, finish).await.unwrap();
        assert!(gone(sleep), "the background sleep survived finish");
        assert!(!supervisor.running());
        supervisor.spawn(&sh("exit 4", &[]), None).unwrap();
        assert_eq!(event(&mut supervisor).await, Notice::ChildExited(ChildExit::Exited(4)));
        supervisor.finish(Signal::SIGTERM, Duration::from_secs(10)).await;
    });
}

/// The cheap look at the end of a job (`procfs::group_has_others`): a group whose only process is its
/// leader's kept zombie is told empty once the zombie is excepted; a live member is found.
#[test]
fn a_group_left_with_its_leaders_zombie_alone_is_told_empty_and_a_live_member_is_found() {
    use std::os::unix::process::CommandExt as _;
    let _serial = serial();
    let dir = TempDir::new("group-others");
    runtime().block_on(async {
        let mut alone = std::process::Command::new("true").process_group(0).spawn().unwrap();
        let leader = alone.id() as i32;
        let deadline = Instant::now() + PATIENCE;
        while !ProcStat::read(leader).is_some_and(|stat| stat.is_zombie()) {
            assert!(Instant::now() < deadline, "`true` never exited");
            tokio::time::sleep(POLL).await;
        }
        assert_eq!(procfs::group_has_others(leader, &[leader]), Some(false));
        assert_eq!(procfs::group_has_others(leader, &[]), Some(true), "a zombie keeps its group");
        alone.wait().unwrap();

        let member_pid = dir.join("member.pid");
        let mut shell = std::process::Command::new("sh")
            .args(["-c", r#"sleep 1000 & echo $! > "$0"; wait"#])
            .arg(&member_pid)
            .process_group(0)
            .spawn()
            .unwrap();
        let leader = shell.id() as i32;
        let member = pid_in(&member_pid).await;
        assert_eq!(procfs::group_has_others(leader, &[leader]), Some(true), "the sleep {member} was not found");
        assert_eq!(procfs::group_has_others(leader, &[leader, member]), Some(false));
        killpg(Pid::from_raw(leader), Signal::SIGKILL).unwrap();
        shell.wait().unwrap();
    });
}

#[test]
fn guard_runs_in_a_group_of_its_own_and_exits_with_the_supervisor() {
    let _serial = serial();
    let supervisor = start();
    let guard = supervisor.guard_pid().expect("a guard process");
    runtime().block_on(async {
        let deadline = Instant::now() + PATIENCE;
        while ProcStat::read(guard).map(|stat| stat.pgrp) != Some(guard) {
            assert!(Instant::now() < deadline, "the guard never left mpsync's process group");
            tokio::time::sleep(POLL).await;
        }
    });
    drop(supervisor);
    // Drop closed the pipe and reaped the guard.
    assert!(ProcStat::read(guard).is_none(), "the guard outlived its supervisor");
}

/// Run `helper_process` in a new process (the test binary again), with its stderr in DIR/helper.log.
fn helper(mode: &str, dir: &TempDir) -> std::process::Child {
    helper_command(mode, dir).spawn().unwrap()
}

fn helper_command(mode: &str, dir: &TempDir) -> std::process::Command {
    let log = fs::File::create(dir.join("helper.log")).unwrap();
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command
        .args(["--ignored", "--exact", "supervise::tests::helper_process", "--test-threads=1", "--nocapture"])
        .env(HELPER_MODE, mode)
        .env(HELPER_DIR, &dir.0)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    command
}

/// `helper_process` in `mode` as the supervisor's child (the test binary again).
fn helper_child(mode: &str, dir: &Path) -> ChildCommand {
    ChildCommand {
        program: std::env::current_exe().unwrap().into(),
        args: ["--ignored", "--exact", "supervise::tests::helper_process", "--test-threads=1"]
            .map(OsString::from)
            .to_vec(),
        env: vec![(HELPER_MODE.into(), mode.into()), (HELPER_DIR.into(), dir.into())],
    }
}

/// A helper in a process group of its own, as a shell starts a job: job control can stop it (its group is
/// not orphaned: its parent, this test, is in another group of the same session).
fn helper_job(mode: &str, dir: &TempDir) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    helper_command(mode, dir).process_group(0).spawn().unwrap()
}

/// Wait for the helper to succeed, and say why if it did not.
fn helper_succeeded(mut helper: std::process::Child, dir: &TempDir) {
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = helper.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = helper.kill();
            break helper.wait().unwrap();
        }
        std::thread::sleep(POLL);
    };
    let log = fs::read_to_string(dir.join("helper.log")).unwrap_or_default();
    assert!(status.success(), "the helper failed ({status}):\n{log}");
    assert!(log.contains("1 passed"), "the helper did not run:\n{log}");
}

/// Wait until `pid` is in one of `states` ('T': stopped), or fail, naming the helper's log.
fn until_state(pid: i32, states: &str, dir: &TempDir) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let state = ProcStat::read(pid).map(|stat| stat.state);
        if state.is_some_and(|state| states.contains(state)) {
            return;
        }
        let log = fs::read_to_string(dir.join("helper.log")).unwrap_or_default();
        assert!(Instant::now() < deadline, "{pid} is in state {state:?}, never in {states:?}; helper:\n{log}");
        std::thread::sleep(POLL);
    }
}

/// Blocking `line_in`, for the test side of helper tests.
fn wait_line(path: &Path) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(text) = fs::read_to_string(path)
            && let Some(line) = text.strip_suffix('\n')
        {
            return line.to_owned();
        }
        assert!(Instant::now() < deadline, "{} was never written", path.display());
        std::thread::sleep(POLL);
    }
}

fn wait_pid(path: &Path) -> i32 {
    wait_line(path).trim().parse().unwrap()
}

#[test]
#[ignore = "not a test: run by other tests in a process of its own"]
fn helper_process() {
    let (Ok(mode), Some(dir)) = (std::env::var(HELPER_MODE), std::env::var_os(HELPER_DIR)) else {
        return;
    };
    let dir = PathBuf::from(dir);
    match mode.as_str() {
        "guard" => helper_guarded_until_killed(&dir),
        "suspend-continue" => helper_job_control(&dir, true),
        "suspend-kill" => helper_job_control(&dir, false),
        "suspend-stop" => helper_stop_while_held(&dir),
        "child-stops" => helper_child_stops(&dir),
        "cannot-stop" => helper_cannot_stop(&dir),
        "sigstop-child" => helper_sigstop_child(&dir),
        "leave-group" => helper_leave_group(),
        "clone-parent" => helper_stray(&dir, Stray::SiblingInASessionOfItsOwn),
        "join-sibling" => helper_stray(&dir, Stray::SiblingInMpsyncsGroup),
        "join-below" => helper_stray(&dir, Stray::BelowAMemberInMpsyncsGroup),
        "join-orphan" => helper_stray(&dir, Stray::OrphanInMpsyncsGroup),
        "subreaper-join" => helper_subreaper_join(&dir),
        "plugin" => helper_plugin(),
        "reraise-int" => crate::exit::exit_process(Exit::ChildSignaled(libc::SIGINT)),
        "reraise-quit" => crate::exit::exit_process(Exit::ChildSignaled(libc::SIGQUIT)),
        "subreaper" => helper_subreaper(),
        "terminal" => helper_terminal(&dir),
        _ => panic!("unknown helper mode {mode}"),
    }
}

/// Start a child whose background worker only the guard can reach, then wait to be SIGKILLed.
fn helper_guarded_until_killed(dir: &Path) {
    let mut supervisor = start();
    fs::write(dir.join("guard.pid"), format!("{}\n", supervisor.guard_pid().unwrap())).unwrap();
    runtime().block_on(async {
        let script = r#"echo $$ > "$0/sh.pid"; sleep 1000 & echo $! > "$0/sleep.pid"; wait"#;
        supervisor.spawn(&sh(script, &[dir]), None).unwrap();
        loop {
            supervisor.next_notice().await;
        }
    });
}

#[test]
fn guard_kills_the_group_when_the_supervisor_is_sigkilled() {
    let _serial = serial();
    let dir = TempDir::new("guard");
    let mut helper = helper("guard", &dir);
    let log = dir.join("helper.log");
    runtime().block_on(async {
        let (sleep, sh, guard) = tokio::select! {
            pids = async {
                (pid_in(&dir.join("sleep.pid")).await, pid_in(&dir.join("sh.pid")).await,
                 pid_in(&dir.join("guard.pid")).await)
            } => pids,
            () = async {
                while helper.try_wait().unwrap().is_none() {
                    tokio::time::sleep(POLL).await;
                }
            } => panic!("the helper ended early:\n{}", fs::read_to_string(&log).unwrap_or_default()),
        };
        assert!(!gone(sleep) && !gone(sh) && !gone(guard));
        kill(Pid::from_raw(helper.id() as i32), Signal::SIGKILL).unwrap();
        helper.wait().unwrap();
        let results = [until_gone(sleep).await, until_gone(sh).await, until_gone(guard).await];
        for pid in [sleep, sh, guard] {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        assert_eq!(results, [true; 3], "(sleep, sh, guard) gone after the supervisor's SIGKILL");
    });
}

/// As a subreaper: an orphan of the child exits before it, another outlives it; the child's status is its
/// own, and nothing is left unreaped.
fn helper_subreaper() {
    let mut supervisor = Supervisor::start(SuperviseOptions { subreaper: true }).unwrap();
    runtime().block_on(async {
        let script = "(sh -c 'exit 5' &); (sleep 1000 &); sleep 0.5; exit 3";
        let pid = supervisor.spawn(&sh(script, &[]), None).unwrap();
        assert_eq!(event(&mut supervisor).await, Notice::ChildExited(ChildExit::Exited(3)));
        let finish = supervisor.finish(Signal::SIGTERM, Duration::from_secs(10));
        tokio::time::timeout(PATIENCE, finish).await.unwrap();
        // Reaped, not merely dead: kill(2) no longer finds even a zombie of the group.
        assert_eq!(killpg(Pid::from_raw(pid as i32), None), Err(Errno::ESRCH));
        assert!(supervisor.guard_pid().is_some(), "the guard was reaped as an orphan");
        // The main child's zombie is kept (see `the_main_childs_pid_stays_taken_until_its_job_is_let_go`)
        // also when it exits while orphans are being reaped: it is the orphans' reaping that sees it then.
        for trial in 0..15 {
            let script = "for i in $(seq 60); do (sleep 0.2 &); done; sleep 0.2; exit 3";
            let pid = supervisor.spawn(&sh(script, &[]), None).unwrap() as i32;
            assert_eq!(event(&mut supervisor).await, Notice::ChildExited(ChildExit::Exited(3)));
            assert!(
                ProcStat::read(pid).is_some_and(|stat| stat.is_zombie()),
                "trial {trial}: the main child was reaped while its group was still the job's"
            );
            let finish = supervisor.finish(Signal::SIGTERM, Duration::from_secs(10));
            tokio::time::timeout(PATIENCE, finish).await.unwrap();
        }
    });
}

#[test]
fn orphans_are_reaped_without_stealing_the_main_childs_status() {
    let _serial = serial();
    let dir = TempDir::new("subreaper");
    let status = helper("subreaper", &dir).wait().unwrap();
    let log = fs::read_to_string(dir.join("helper.log")).unwrap_or_default();
    assert!(status.success(), "the subreaper helper failed ({status}):\n{log}");
    assert!(log.contains("1 passed"), "the helper did not run:\n{log}");
}

/// In the foreground of a terminal: the child gets the terminal, Ctrl-C reaches only the child, and the
/// terminal comes back afterwards.
fn helper_terminal(dir: &Path) {
    let mut supervisor = start();
    assert!(supervisor.terminal.is_some(), "no controlling terminal");
    runtime().block_on(async {
        let foreground = dir.join("foreground");
        let pid = supervisor.spawn(&sh(r#"cut -d' ' -f5,8 /proc/$$/stat > "$0""#, &[&foreground]), None).unwrap();
        assert_eq!(event(&mut supervisor).await, Notice::ChildExited(ChildExit::Exited(0)));
        supervisor.finish(Signal::SIGTERM, Duration::from_secs(10)).await;
        // pgrp and the terminal's foreground group, as the child saw them.
        let seen = fs::read_to_string(&foreground).unwrap();
        assert_eq!(seen.trim(), format!("{pid} {pid}"));
        assert_eq!(tcgetpgrp(io::stdin()), Ok(getpgrp()), "the terminal was not taken back");

        // The test writes Ctrl-C to the terminal once the child is ready.
        let script = r#"echo ready > "$0/ready"; exec sleep 1000"#;
        supervisor.spawn(&sh(script, &[dir]), None).unwrap();
        let exit = event(&mut supervisor).await;
        assert_eq!(exit, Notice::ChildExited(ChildExit::Signaled(libc::SIGINT)));
        let more = tokio::time::timeout(Duration::from_millis(300), supervisor.next_notice()).await;
        assert!(more.is_err(), "Ctrl-C reached mpsync too: {more:?}");
        supervisor.finish(Signal::SIGTERM, Duration::from_secs(10)).await;
        assert_eq!(tcgetpgrp(io::stdin()), Ok(getpgrp()), "the terminal was not taken back");
    });
}

#[test]
fn interactive_child_owns_the_terminal_and_ctrl_c_reaches_only_it() {
    let _serial = serial();
    let dir = TempDir::new("terminal");
    let log = dir.join("helper.log");
    let binary = std::env::current_exe().unwrap();
    let command = format!(
        "'{}' --ignored --exact supervise::tests::helper_process --test-threads=1 --nocapture",
        binary.display()
    );
    // script(1) runs the helper on a new pseudo-terminal, in its foreground, and copies our stdin to it.
    let mut script = std::process::Command::new("script");
    // SAFETY: signal(SIG_DFL) is async-signal-safe. The terminal starts as a login's would, whatever this
    // test run inherited (`&` from a shell without job control ignores SIGINT and SIGQUIT; nohup SIGHUP).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut script, || {
            for signal in [libc::SIGINT, libc::SIGQUIT, libc::SIGHUP] {
                libc::signal(signal, libc::SIG_DFL);
            }
            Ok(())
        });
    }
    let spawned = script
        .args(["-qefc", &command, "/dev/null"])
        .env(HELPER_MODE, "terminal")
        .env(HELPER_DIR, &dir.0)
        .stdin(std::process::Stdio::piped())
        .stdout(fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut script) = spawned else {
        eprintln!("script(1) is not installed: skipping the terminal test");
        return;
    };
    let outcome = runtime().block_on(async {
        let wait = async {
            // The helper's child is ready, or the helper ended early (a failure, shown below with its log).
            while !dir.join("ready").exists() {
                if let Some(status) = script.try_wait().unwrap() {
                    return status;
                }
                tokio::time::sleep(POLL).await;
            }
            use std::io::Write;
            let stdin = script.stdin.as_mut().unwrap();
            stdin.write_all(b"\x03").unwrap();
            stdin.flush().unwrap();
            loop {
                if let Some(status) = script.try_wait().unwrap() {
                    return status;
                }
                tokio::time::sleep(POLL).await;
            }
        };
        tokio::time::timeout(PATIENCE * 2, wait).await
    });
    let _ = script.kill();
    let _ = script.wait();
    let log = fs::read_to_string(&log).unwrap_or_default();
    let status = outcome.unwrap_or_else(|_| panic!("the terminal helper hung:\n{log}"));
    assert!(status.success(), "the terminal helper failed ({status}):\n{log}");
    assert!(log.contains("1 passed"), "the helper did not run:\n{log}");
}

async fn notice(supervisor: &mut Supervisor) -> Notice {
    tokio::time::timeout(PATIENCE, supervisor.next_notice()).await.expect("no notice within the patience")
}

fn state(pid: i32) -> Option<char> {
    ProcStat::read(pid).map(|stat| stat.state)
}

/// A job of two parts: the main child, and a worker that left for a session of its own (`setsid`), so that
/// only the descendant walk finds it. Both write a heartbeat. Their pids go to DIR/child.pid and
/// DIR/worker.pid.
const TWO_PART_JOB: &str = r#"setsid bash -c 'echo $$ > "$0/worker.pid"; while :; do date +%s%N > "$0/worker.beat"; sleep 0.05; done' "$0" &
    echo $$ > "$0/child.pid"; while :; do date +%s%N > "$0/child.beat"; sleep 0.05; done"#;

/// SIGTSTP to mpsync: the whole job stops, then mpsync; after SIGCONT the run loop hears `Resumed` while
/// the job is still stopped, and decides: continue it, or kill it without its running again.
fn helper_job_control(dir: &Path, continue_it: bool) {
    let mut supervisor = start();
    runtime().block_on(async {
        supervisor.spawn(&bash(TWO_PART_JOB, &[dir]), None).unwrap();
        let (child, worker) = (pid_in(&dir.join("child.pid")).await, pid_in(&dir.join("worker.pid")).await);
        let Notice::Resumed(resume) = notice(&mut supervisor).await else { panic!("expected Resumed") };
        assert!(resume.held_for.is_some(), "the job was not held stopped: {resume:?}");
        assert!(supervisor.child_held());
        assert_eq!((state(child), state(worker)), (Some('T'), Some('T')), "the job runs before the decision");
        if continue_it {
            supervisor.continue_child();
            assert!(!supervisor.child_held());
            let deadline = Instant::now() + PATIENCE;
            while state(child) == Some('T') || state(worker) == Some('T') {
                assert!(Instant::now() < deadline, "the job was never continued");
                tokio::time::sleep(POLL).await;
            }
            let exit = supervisor.stop(Signal::SIGTERM, Duration::from_secs(10)).await;
            assert_eq!(exit, ChildExit::Signaled(libc::SIGTERM));
        } else {
            let beat = fs::read_to_string(dir.join("child.beat")).unwrap();
            let exit = tokio::time::timeout(PATIENCE, supervisor.kill_stopped_child()).await.unwrap();
            assert_eq!(exit, ChildExit::Signaled(libc::SIGKILL));
            assert_eq!(fs::read_to_string(dir.join("child.beat")).unwrap(), beat, "the child ran again");
            assert!(!supervisor.running() && !supervisor.child_held());
            let again = tokio::time::timeout(Duration::from_millis(300), supervisor.next_notice()).await;
            assert!(again.is_err(), "the exit was reported after kill_stopped_child: {again:?}");
        }
        assert!(
            until_gone(child).await && until_gone(worker).await,
            "(child, worker) = ({:?}, {:?})",
            state(child),
            state(worker)
        );
    });
}

fn job_control_test(mode: &str) {
    let _serial = serial();
    let dir = TempDir::new(mode);
    let helper = helper_job(mode, &dir);
    let (child, worker) = (wait_pid(&dir.join("child.pid")), wait_pid(&dir.join("worker.pid")));
    kill(Pid::from_raw(helper.id() as i32), Signal::SIGTSTP).unwrap();
    // mpsync stops only once the job has: a stopped mpsync renews nothing, and the job must not run on.
    until_state(helper.id() as i32, "T", &dir);
    assert_eq!((state(child), state(worker)), (Some('T'), Some('T')), "mpsync stopped before its job");
    kill(Pid::from_raw(helper.id() as i32), Signal::SIGCONT).unwrap();
    helper_succeeded(helper, &dir);
}

#[test]
fn job_control_stop_holds_the_whole_job_until_the_run_loop_continues_it() {
    job_control_test("suspend-continue");
}

#[test]
fn job_control_stop_then_kill_stopped_child_never_lets_the_job_run_again() {
    job_control_test("suspend-kill");
}

/// The child stops on its own (`kill -TSTP $$`): mpsync stops too, and on SIGCONT the run loop continues it.
fn helper_child_stops(dir: &Path) {
    let mut supervisor = start();
    runtime().block_on(async {
        let script = r#"echo $$ > "$0/child.pid"; kill -TSTP $$; echo continued > "$0/continued""#;
        supervisor.spawn(&sh(script, &[dir]), None).unwrap();
        let Notice::Resumed(resume) = notice(&mut supervisor).await else { panic!("expected Resumed") };
        assert!(resume.held_for.is_some());
        assert!(!dir.join("continued").exists(), "the child ran before the run loop decided");
        supervisor.continue_child();
        assert_eq!(notice(&mut supervisor).await, Notice::ChildExited(ChildExit::Exited(0)));
        supervisor.finish(Signal::SIGTERM, Duration::from_secs(10)).await;
        assert_eq!(fs::read_to_string(dir.join("continued")).unwrap(), "continued\n");
    });
}

#[test]
fn a_child_that_stops_on_its_own_stops_mpsync_too() {
    let _serial = serial();
    let dir = TempDir::new("child-stops");
    let helper = helper_job("child-stops", &dir);
    let child = wait_pid(&dir.join("child.pid"));
    until_state(helper.id() as i32, "T", &dir);
    assert_eq!(state(child), Some('T'));
    kill(Pid::from_raw(helper.id() as i32), Signal::SIGCONT).unwrap();
    helper_succeeded(helper, &dir);
}

/// In an orphaned process group (here: a session of its own) no shell could continue mpsync: a stop request
/// is not carried out, and a child that stops on its own stays stopped, not held: a forwarded SIGTERM is
/// followed by SIGCONT, and ends it.
fn helper_cannot_stop(dir: &Path) {
    let mut supervisor = start();
    runtime().block_on(async {
        let script = r#"trap 'exit 7' TERM; echo $$ > "$0/child.pid"; while :; do sleep 0.05; done"#;
        supervisor.spawn(&bash(script, &[dir]), None).unwrap();
        let child = pid_in(&dir.join("child.pid")).await;
        fs::write(dir.join("ready"), "ready\n").unwrap();
        // The test sends SIGTSTP, then SIGUSR1: the stop request comes first, and was not carried out.
        assert_eq!(notice(&mut supervisor).await, Notice::Signal(Signal::SIGUSR1));
        assert_ne!(state(child), Some('T'), "the child was stopped");
        kill(Pid::from_raw(child), Signal::SIGTSTP).unwrap();
        while state(child) != Some('T') {
            tokio::time::sleep(POLL).await;
        }
        // Give the supervisor the stop to see: it must not hold the child (it cannot stop itself).
        let quiet = tokio::time::timeout(Duration::from_millis(500), supervisor.next_notice()).await;
        assert!(quiet.is_err(), "{quiet:?}");
        assert!(!supervisor.child_held());
        supervisor.forward(Signal::SIGTERM);
        assert_eq!(notice(&mut supervisor).await, Notice::ChildExited(ChildExit::Exited(7)));
        supervisor.finish(Signal::SIGTERM, Duration::from_secs(10)).await;
    });
}

#[test]
fn where_mpsync_cannot_stop_a_stop_request_is_not_carried_out() {
    use std::os::unix::process::CommandExt;
    let _serial = serial();
    let dir = TempDir::new("cannot-stop");
    let mut command = helper_command("cannot-stop", &dir);
    // SAFETY: setsid(2) only, between fork and exec.
    unsafe {
        command.pre_exec(|| nix::unistd::setsid().map(drop).map_err(io::Error::from));
    }
    let helper = command.spawn().unwrap();
    wait_line(&dir.join("ready"));
    kill(Pid::from_raw(helper.id() as i32), Signal::SIGTSTP).unwrap();
    kill(Pid::from_raw(helper.id() as i32), Signal::SIGUSR1).unwrap();
    helper_succeeded(helper, &dir);
}

/// As a subreaper, with orphans coming and going: a process mpsync itself runs (an exec credential plugin,
/// run by kube from a thread of the runtime's blocking pool, which waits for it) is left for its
/// `std::process::Command` waiter, even while it is a zombie at the head of the queue; the orphans behind it
/// are reaped all the same.
fn helper_plugin() {
    let mut supervisor = Supervisor::start(SuperviseOptions { subreaper: true }).unwrap();
    runtime().block_on(async {
        supervisor.spawn(&sh("sleep 1000", &[]), None).unwrap();
        let (started, plugin_pid) = std::sync::mpsc::channel();
        let (collect, collected) = std::sync::mpsc::channel::<()>();
        let waiter = std::thread::spawn(move || {
            let mut plugin = std::process::Command::new("sh").args(["-c", "exit 9"]).spawn().unwrap();
            started.send(plugin.id() as i32).unwrap();
            collected.recv().unwrap();
            plugin.wait().unwrap().code()
        });
        let plugin_pid = plugin_pid.recv().unwrap();
        while !gone(plugin_pid) {
            tokio::time::sleep(POLL).await;
        }
        // Orphans: each `sh -c 'exit 5'` is orphaned by its subshell, and adopted by the supervisor.
        for _ in 0..20 {
            std::process::Command::new("sh").args(["-c", "(sh -c 'exit 5' &)"]).process_group(0).status().unwrap();
        }
        let me = getpid().as_raw();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let _ = tokio::time::timeout(Duration::from_millis(100), supervisor.next_notice()).await;
            let snapshot = Snapshot::take();
            let orphans = snapshot.zombie_children(me).filter(|zombie| zombie.pid != plugin_pid).count();
            if orphans == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "{orphans} orphans never reaped");
        }
        assert!(ProcStat::read(plugin_pid).is_some_and(|stat| stat.is_zombie()), "the plugin was reaped");
        collect.send(()).unwrap();
        assert_eq!(waiter.join().unwrap(), Some(9), "the plugin's waiter lost its status");
        supervisor.stop(Signal::SIGTERM, Duration::from_secs(10)).await;
    });
}

#[test]
fn a_subreaper_leaves_what_mpsync_runs_itself_to_its_waiter() {
    let _serial = serial();
    let dir = TempDir::new("plugin");
    helper_succeeded(helper("plugin", &dir), &dir);
}

#[test]
fn a_child_that_died_of_sigint_or_sigquit_makes_mpsync_die_of_it() {
    use std::os::unix::process::ExitStatusExt;
    let _serial = serial();
    for (mode, signal) in [("reraise-int", libc::SIGINT), ("reraise-quit", libc::SIGQUIT)] {
        let dir = TempDir::new(mode);
        let status = helper(mode, &dir).wait().unwrap();
        assert_eq!(status.signal(), Some(signal), "{mode}: {status}");
        assert!(!status.core_dumped(), "{mode}: mpsync dumped core");
    }
}

/// A stopped member of the child's group that handles SIGTERM: only a SIGCONT lets it act on it.
const STOPPED_MEMBER: &str = r#"bash -c 'trap "echo got > \"$0/got\"; exit 0" TERM; echo $$ > "$0/member.pid"; while :; do sleep 0.05; done' "$0" &
    trap '' TERM; wait; wait"#;

#[test]
fn a_forwarded_stop_signal_is_followed_by_sigcont() {
    let _serial = serial();
    let dir = TempDir::new("forward-cont");
    let mut supervisor = start();
    runtime().block_on(async {
        supervisor.spawn(&sh(STOPPED_MEMBER, &[&dir.0]), None).unwrap();
        let member = pid_in(&dir.join("member.pid")).await;
        kill(Pid::from_raw(member), Signal::SIGSTOP).unwrap();
        supervisor.forward(Signal::SIGTERM);
        line_in(&dir.join("got")).await;
        supervisor.stop(Signal::SIGKILL, Duration::ZERO).await;
    });
}

#[test]
fn stop_continues_a_stopped_job_so_that_it_acts_on_the_kill_signal() {
    let _serial = serial();
    let dir = TempDir::new("stop-cont");
    let mut supervisor = start();
    runtime().block_on(async {
        supervisor.spawn(&sh(STOPPED_MEMBER, &[&dir.0]), None).unwrap();
        let member = pid_in(&dir.join("member.pid")).await;
        kill(Pid::from_raw(member), Signal::SIGSTOP).unwrap();
        while state(member) != Some('T') {
            tokio::time::sleep(POLL).await;
        }
        // The grace is long: the stop is over early only if the member acted on SIGTERM.
        let stop = supervisor.stop(Signal::SIGTERM, PATIENCE * 2);
        tokio::time::timeout(PATIENCE, stop).await.expect("the stopped member never acted on SIGTERM");
        assert_eq!(fs::read_to_string(dir.join("got")).unwrap(), "got\n");
    });
}

#[test]
fn a_dead_guard_is_replaced_at_once_and_armed() {
    let _serial = serial();
    let mut supervisor = start();
    let first = supervisor.guard_pid().unwrap();
    until_named_guard(first);
    runtime().block_on(async {
        supervisor.spawn(&sh("exec sleep 1000", &[]), None).unwrap();
        kill(Pid::from_raw(first), Signal::SIGKILL).unwrap();
        let deadline = Instant::now() + PATIENCE;
        while supervisor.guard_pid() == Some(first) {
            assert!(Instant::now() < deadline, "no new guard");
            let _ = tokio::time::timeout(POLL, supervisor.next_notice()).await;
        }
        until_named_guard(supervisor.guard_pid().expect("a new guard"));
        supervisor.stop(Signal::SIGTERM, Duration::from_secs(10)).await;
    });
}

/// The helper's first guard is killed; the new one must do the work when the helper is SIGKILLed.
#[test]
fn the_replacement_guard_kills_the_group_when_the_supervisor_is_sigkilled() {
    let _serial = serial();
    let dir = TempDir::new("guard-again");
    let mut helper = helper("guard", &dir);
    let (sleep, first) = (wait_pid(&dir.join("sleep.pid")), wait_pid(&dir.join("guard.pid")));
    kill(Pid::from_raw(first), Signal::SIGKILL).unwrap();
    let helper_pid = helper.id() as i32;
    let deadline = Instant::now() + PATIENCE;
    let named = |pid: i32| fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "mpsync-guard");
    let replacement = loop {
        let found = fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
            .find(|pid| *pid != first && ProcStat::read(*pid).is_some_and(|s| s.ppid == helper_pid) && named(*pid));
        if let Some(pid) = found {
            break pid;
        }
        assert!(Instant::now() < deadline, "no replacement guard");
        std::thread::sleep(POLL);
    };
    kill(Pid::from_raw(helper_pid), Signal::SIGKILL).unwrap();
    helper.wait().unwrap();
    let deadline = Instant::now() + PATIENCE;
    while !(gone(sleep) && gone(replacement)) {
        if Instant::now() >= deadline {
            let _ = kill(Pid::from_raw(sleep), Signal::SIGKILL);
            panic!("the background sleep survived the supervisor (state {:?})", state(sleep));
        }
        std::thread::sleep(POLL);
    }
}

/// A main child that leaves its group (here: for the supervisor's own) is still stopped, and stop returns.
#[test]
fn stop_is_bounded_when_the_child_left_its_group() {
    let _serial = serial();
    let dir = TempDir::new("leave-group");
    let mut supervisor = start();
    let ours = getpgrp().as_raw();
    // The child: this test binary again, in helper mode "leave-group".
    let mut command = helper_child("leave-group", &dir.0);
    command.env.push((LEAVE_FOR.into(), ours.to_string().into()));
    runtime().block_on(async {
        let pid = supervisor.spawn(&command, None).unwrap() as i32;
        let deadline = Instant::now() + PATIENCE;
        while ProcStat::read(pid).map(|stat| stat.pgrp) != Some(ours) {
            assert!(Instant::now() < deadline, "the child never left its group");
            tokio::time::sleep(POLL).await;
        }
        let stop = supervisor.stop(Signal::SIGTERM, Duration::from_millis(300));
        let exit = tokio::time::timeout(PATIENCE, stop).await.expect("stop hangs on a child that left its group");
        assert_eq!(exit, ChildExit::Signaled(libc::SIGTERM));
        assert!(gone(pid));
    });
}

/// A member of the job can make its sibling: a child of mpsync's, which then leaves the child's group for
/// a session of its own. It is still the job's: the walk from mpsync finds it, and so must the cheap look
/// at the end of a job (`job_alive`).
#[test]
fn finish_kills_a_process_the_child_made_mpsyncs_own_in_a_session_of_its_own() {
    let _serial = serial();
    let (sibling, gone_at_finish) = stray_at_finish("clone-parent", |sibling| {
        let stat = ProcStat::read(sibling);
        assert_eq!(stat.map(|stat| stat.session), Some(sibling), "the sibling never made a session of its own");
        assert_eq!(stat.map(|stat| stat.ppid), Some(getpid().as_raw()));
    });
    assert!(gone_at_finish, "the sibling {sibling} outlived finish");
}

/// A process of the job can move itself into mpsync's own process group (setpgid(2): it is in mpsync's
/// session). It is still the job's, as mpsync's child (made so with CLONE_PARENT) or below a member that
/// lives: the walk does not take mpsync's group for what mpsync runs itself, nor does the cheap look.
#[test]
fn finish_kills_a_process_of_the_job_that_moved_into_mpsyncs_group() {
    let _serial = serial();
    for mode in ["join-sibling", "join-below"] {
        let (stray, gone_at_finish) = stray_at_finish(mode, |stray| {
            assert_eq!(getpgid(Some(Pid::from_raw(stray))), Ok(getpgrp()));
        });
        assert!(gone_at_finish, "{mode}: the stray {stray} in mpsync's group outlived finish");
    }
}

/// Run helper `mode` (a `Stray`) as an in-process supervisor's child, which exits 0 once its stray is
/// where it goes; check that with `placed`, then `finish`. The stray's pid, and whether it was gone when
/// `finish` returned (it is killed, and reaped if it is this process's child, either way).
fn stray_at_finish(mode: &str, placed: impl Fn(i32)) -> (i32, bool) {
    let dir = TempDir::new(mode);
    let mut supervisor = start();
    let command = helper_child(mode, &dir.0);
    runtime().block_on(async {
        supervisor.spawn(&command, None).unwrap();
        assert_eq!(event(&mut supervisor).await, Notice::ChildExited(ChildExit::Exited(0)));
        let stray = pid_in(&dir.join("stray.pid")).await;
        placed(stray);
        let finish = supervisor.finish(Signal::SIGTERM, Duration::from_secs(10));
        tokio::time::timeout(PATIENCE, finish).await.expect("finish hangs");
        let gone_at_finish = gone(stray);
        if !gone_at_finish {
            let _ = kill(Pid::from_raw(stray), Signal::SIGKILL);
        }
        // A sibling is this process's child, dead by now or killed: reaped here (for any other, ECHILD).
        let _ = waitpid(Pid::from_raw(stray), None);
        (stray, gone_at_finish)
    })
}

/// As a subreaper: an orphan of the job that moved into mpsync's group is adopted, and is the job's: it
/// is stopped before `finish` returns, and reaped.
fn helper_subreaper_join(dir: &Path) {
    let mut supervisor = Supervisor::start(SuperviseOptions { subreaper: true }).unwrap();
    let command = helper_child("join-orphan", dir);
    runtime().block_on(async {
        supervisor.spawn(&command, None).unwrap();
        assert_eq!(event(&mut supervisor).await, Notice::ChildExited(ChildExit::Exited(0)));
        let stray = pid_in(&dir.join("stray.pid")).await;
        assert_eq!(getpgid(Some(Pid::from_raw(stray))), Ok(getpgrp()));
        assert_eq!(ProcStat::read(stray).map(|stat| stat.ppid), Some(getpid().as_raw()), "not adopted");
        let finish = supervisor.finish(Signal::SIGTERM, Duration::from_secs(10));
        tokio::time::timeout(PATIENCE, finish).await.expect("finish hangs");
        let left = ProcStat::read(stray);
        if left.is_some() {
            let _ = kill(Pid::from_raw(stray), Signal::SIGKILL);
        }
        assert!(left.is_none(), "the adopted stray in mpsync's group outlived finish, or was not reaped: {left:?}");
    });
}

#[test]
fn as_subreaper_finish_kills_an_adopted_orphan_that_moved_into_mpsyncs_group() {
    let _serial = serial();
    let dir = TempDir::new("subreaper-join");
    helper_succeeded(helper("subreaper-join", &dir), &dir);
}

/// A process of the job that mpsync's walk from the child's group does not find on its own way down.
#[derive(Clone, Copy, PartialEq)]
enum Stray {
    /// Made mpsync's child (clone with CLONE_PARENT), it leaves for a session of its own.
    SiblingInASessionOfItsOwn,
    /// Made mpsync's child, it moves into mpsync's own process group.
    SiblingInMpsyncsGroup,
    /// The child of a member that stays in the child's group (sleeping), it moves into mpsync's group.
    BelowAMemberInMpsyncsGroup,
    /// It moves into mpsync's group, and its parent exits: it is handed to init, or adopted by a subreaper.
    OrphanInMpsyncsGroup,
}

/// As the supervisor's child (whose parent is mpsync): make a `Stray` that sleeps, write its pid to
/// `stray.pid` once it is where it goes, and exit 0.
fn helper_stray(dir: &Path, how: Stray) {
    let mpsyncs_group = getpgid(Some(nix::unistd::getppid())).unwrap().as_raw();
    let (read, write) = nix::unistd::pipe().unwrap();
    let stray = match how {
        Stray::SiblingInASessionOfItsOwn | Stray::SiblingInMpsyncsGroup => {
            // SAFETY: the new process makes only system calls before it execs (see `sleep_in`).
            let pid = unsafe { libc::syscall(libc::SYS_clone, libc::CLONE_PARENT | libc::SIGCHLD, 0, 0, 0, 0) };
            if pid == 0 {
                let to =
                    if how == Stray::SiblingInMpsyncsGroup { To::Group(mpsyncs_group) } else { To::SessionOfItsOwn };
                // SAFETY: in the new process.
                unsafe { sleep_in(to) };
            }
            assert!(pid > 0, "clone failed: {}", io::Error::last_os_error());
            pid as i32
        }
        Stray::BelowAMemberInMpsyncsGroup | Stray::OrphanInMpsyncsGroup => {
            // SAFETY: the new processes make only system calls before they exec or exit: fork, the write of
            // a pid on the stack to a descriptor made before, and those of `sleep_in`.
            unsafe {
                let middle = libc::fork();
                if middle == 0 {
                    let pid = libc::fork();
                    if pid == 0 {
                        sleep_in(To::Group(mpsyncs_group));
                    }
                    libc::write(write.as_raw_fd(), pid.to_ne_bytes().as_ptr().cast(), 4);
                    if how == Stray::OrphanInMpsyncsGroup {
                        libc::_exit(0);
                    }
                    sleep_in(To::Nowhere);
                }
                assert!(middle > 0, "fork failed: {}", io::Error::last_os_error());
                let mut pid = [0u8; 4];
                nix::unistd::read(&read, &mut pid).unwrap();
                if how == Stray::OrphanInMpsyncsGroup {
                    waitpid(Pid::from_raw(middle), None).unwrap();
                }
                i32::from_ne_bytes(pid)
            }
        }
    };
    let arrived = || match how {
        Stray::SiblingInASessionOfItsOwn => ProcStat::read(stray).is_some_and(|stat| stat.session == stray),
        _ => getpgid(Some(Pid::from_raw(stray))).is_ok_and(|group| group.as_raw() == mpsyncs_group),
    };
    let deadline = Instant::now() + PATIENCE;
    while !arrived() {
        assert!(Instant::now() < deadline, "the stray {stray} never got where it goes");
        std::thread::sleep(POLL);
    }
    fs::write(dir.join("stray.pid"), format!("{stray}\n")).unwrap();
}

/// Where `sleep_in` moves its process.
#[derive(Clone, Copy)]
enum To {
    Nowhere,
    Group(i32),
    SessionOfItsOwn,
}

/// In the new process of a fork or clone: move as `to` says, then `exec sleep 1000`.
///
/// # Safety
/// Only in a new process: it makes system calls on plain integers and on static strings.
unsafe fn sleep_in(to: To) -> ! {
    let shell = c"/bin/sh";
    let argv = [c"sh".as_ptr(), c"-c".as_ptr(), c"exec sleep 1000".as_ptr(), std::ptr::null()];
    // SAFETY: system calls on integers, NUL-terminated static strings and an array on the stack.
    unsafe {
        match to {
            To::Group(group) => libc::setpgid(0, group),
            To::SessionOfItsOwn => libc::setsid(),
            To::Nowhere => 0,
        };
        libc::execv(shell.as_ptr(), argv.as_ptr());
        libc::_exit(127)
    }
}

/// The process group `leave-group` moves to.
const LEAVE_FOR: &str = "MPSYNC_SUPERVISE_LEAVE_FOR";

/// Leave the child's group for the one in LEAVE_FOR, then wait to be killed.
fn helper_leave_group() {
    let target: i32 = std::env::var(LEAVE_FOR).unwrap().parse().unwrap();
    setpgid(Pid::from_raw(0), Pid::from_raw(target)).unwrap();
    std::thread::sleep(PATIENCE * 10);
}

#[test]
fn a_script_with_a_missing_interpreter_says_so() {
    let _serial = serial();
    let dir = TempDir::new("interpreter");
    let script = dir.join("script");
    fs::write(&script, "#!/nonexistent-mpsync -x\nexit 0\n").unwrap();
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut supervisor = start();
    let command = ChildCommand { program: script.clone().into(), args: vec![], env: vec![] };
    let error = supervisor.spawn(&command, None).unwrap_err();
    assert!(matches!(error, SpawnError::NotExecutable(..)), "{error:?}");
    assert_eq!(error.exit(), Exit::NotExecutable);
    let expected = format!("{}: bad interpreter: /nonexistent-mpsync: No such file or directory", script.display());
    assert_eq!(error.to_string(), expected);
    assert!(!supervisor.running());
}

/// A child stopped by a plain SIGSTOP (a debugger, `kill -STOP`) is not job control: mpsync does not stop,
/// does not hold the child, and a forwarded SIGTERM (with its SIGCONT) ends it.
fn helper_sigstop_child(dir: &Path) {
    let mut supervisor = start();
    runtime().block_on(async {
        let script = r#"trap 'exit 7' TERM; echo $$ > "$0/child.pid"; kill -STOP $$; while :; do sleep 0.05; done"#;
        supervisor.spawn(&sh(script, &[dir]), None).unwrap();
        let child = pid_in(&dir.join("child.pid")).await;
        while state(child) != Some('T') {
            tokio::time::sleep(POLL).await;
        }
        let quiet = tokio::time::timeout(Duration::from_millis(500), supervisor.next_notice()).await;
        assert!(quiet.is_err(), "{quiet:?}");
        assert!(!supervisor.child_held());
        supervisor.forward(Signal::SIGTERM);
        assert_eq!(notice(&mut supervisor).await, Notice::ChildExited(ChildExit::Exited(7)));
        supervisor.finish(Signal::SIGTERM, Duration::from_secs(10)).await;
    });
}

#[test]
fn a_child_stopped_by_sigstop_does_not_stop_mpsync() {
    let _serial = serial();
    let dir = TempDir::new("sigstop-child");
    helper_succeeded(helper_job("sigstop-child", &dir), &dir);
}

/// Wait until process `pid` has named itself mpsync-guard (it does so first thing after the fork).
fn until_named_guard(pid: i32) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "mpsync-guard" {
            return;
        }
        assert!(Instant::now() < deadline, "process {pid} is called {comm:?}, not mpsync-guard");
        std::thread::sleep(POLL);
    }
}

/// The run loop may notice the loss (the renew deadline passed while mpsync was stopped) before it hears
/// `Resumed`: `stop` then kills the held job without continuing it, as `kill_stopped_child` does.
fn helper_stop_while_held(dir: &Path) {
    let mut supervisor = start();
    runtime().block_on(async {
        let script =
            r#"trap 'echo term > "$0/term"; exit 0' TERM; echo $$ > "$0/child.pid"; while :; do sleep 0.05; done"#;
        supervisor.spawn(&bash(script, &[dir]), None).unwrap();
        let child = pid_in(&dir.join("child.pid")).await;
        // Stopped by the test's SIGTSTP, then continued by its SIGCONT: the job is still held.
        let deadline = Instant::now() + PATIENCE;
        while !supervisor.child_held() {
            assert!(Instant::now() < deadline, "the job was never held");
            let _ = tokio::time::timeout(POLL, supervisor.next_notice()).await;
        }
        let exit = tokio::time::timeout(PATIENCE, supervisor.stop(Signal::SIGTERM, PATIENCE)).await.unwrap();
        assert_eq!(exit, ChildExit::Signaled(libc::SIGKILL), "the held job was continued to act on SIGTERM");
        assert!(!dir.join("term").exists(), "the held job ran its SIGTERM trap");
        assert!(until_gone(child).await);
    });
}

#[test]
fn stop_kills_a_held_job_without_continuing_it() {
    let _serial = serial();
    let dir = TempDir::new("suspend-stop");
    let helper = helper_job("suspend-stop", &dir);
    wait_pid(&dir.join("child.pid"));
    kill(Pid::from_raw(helper.id() as i32), Signal::SIGTSTP).unwrap();
    until_state(helper.id() as i32, "T", &dir);
    kill(Pid::from_raw(helper.id() as i32), Signal::SIGCONT).unwrap();
    helper_succeeded(helper, &dir);
}
