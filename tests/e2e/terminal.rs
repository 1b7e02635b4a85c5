//! mpsync in a terminal, under an interactive bash on a pseudo-terminal, driven as a user would: Ctrl-Z,
//! `bg`, `fg`, Ctrl-C, closing the window. The assertions are on the terminal's foreground group, on the
//! state of mpsync and its child in /proc, on exit codes, and on the lease.

use std::fs;
use std::path::Path;

use crate::support::pty::{CTRL_C, CTRL_Z, Terminal, stat_field, state};
use crate::support::*;
use nix::sys::signal::Signal;

/// FAST, as typed on a command line.
const FAST_ARGS: &str = "--lease-duration 4s --renew-deadline 2s --retry-period 500ms";

/// For tests that stop mpsync and continue it: nothing renews while mpsync is stopped, and a slow machine
/// must not turn a short stop into a lost lease (the child would be killed, not continued).
const SLOW_ARGS: &str = "--lease-duration 30s --renew-deadline 20s --retry-period 2s";

fn shell(env: &TestEnv) -> Terminal {
    Terminal::bash([("MPSYNC_BACKEND", "file".into()), ("MPSYNC_LOCK_DIR", env.lock_dir().into_os_string())])
}

/// Whether every thread of `pid` is stopped (a job-control stop is complete only then).
fn all_stopped(pid: i32) -> bool {
    fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|tasks| {
        tasks.flatten().all(|task| {
            fs::read_to_string(task.path().join("stat"))
                .ok()
                .and_then(|stat| stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()))
                == Some('T')
        })
    })
}

/// The child's pid (written by the child), and mpsync's (its parent).
fn child_and_mpsync(pid_file: &Path) -> (i32, i32) {
    let child = read_pid(pid_file);
    (child, stat_field(child, 4).expect("the child's parent"))
}

/// A child that writes its pid, then beats until Ctrl-C. A bash loop: dash runs commands with vfork(2), and
/// a vforked child stopped by Ctrl-Z before its exec leaves its parent in uninterruptible sleep, never
/// stopped (bash's job control alone hangs on such a loop now and then, too). It traps SIGINT: a Ctrl-C that
/// comes while bash forks the next command reaches no command, and bash would carry on.
fn beating_child(dir: &Path) -> String {
    let dir = dir.display();
    format!(
        "bash -c 'trap \"exit 130\" INT; echo $$ > {dir}/child.pid; while :; do date +%s%N > {dir}/beat; sleep 0.1; done'"
    )
}

/// Ctrl-Z, then `fg`, then Ctrl-C, with the child in the terminal's foreground; `redirect` is typed after the
/// command (`</dev/null`: stdin need not be the terminal for mpsync to find it).
fn ctrl_z_then_fg_then_ctrl_c(redirect: &str) {
    let env = TestEnv::file();
    let mut terminal = shell(&env);
    let name = env.lease_name("ctrlz");
    terminal.type_line(&format!("mpsync lock {name} {SLOW_ARGS} -- {} {redirect}", beating_child(&env.dir)));
    let (child, mpsync) = child_and_mpsync(&env.path("child.pid"));
    terminal.wait_until("the child to have the terminal", || terminal.foreground() == child);

    terminal.key(CTRL_Z);
    terminal.expect("Stopped");
    terminal.wait_until("the shell to have the terminal", || terminal.foreground() == terminal.shell());
    // The child stopped first: mpsync stops only once its job has.
    assert_eq!((state(child), state(mpsync)), (Some('T'), Some('T')), "{}", terminal.text());

    terminal.type_line("fg");
    terminal.wait_until("the child to have the terminal again", || terminal.foreground() == child);
    terminal.wait_until("both to run again", || state(child) != Some('T') && state(mpsync) != Some('T'));
    let beat = fs::read_to_string(env.path("beat")).unwrap_or_default();
    wait_until("a new heartbeat", || fs::read_to_string(env.path("beat")).unwrap_or_default() != beat);

    terminal.key(CTRL_C);
    terminal.type_line("echo rc=$?");
    terminal.expect("rc=130");
    assert_eq!(terminal.foreground(), terminal.shell());
    assert_eq!(env.holder(&name).as_deref(), Some(""), "released");
}

#[test]
fn ctrl_z_stops_the_child_then_mpsync_and_fg_resumes_both() {
    ctrl_z_then_fg_then_ctrl_c("");
}

#[test]
fn ctrl_z_stops_the_child_when_stdin_is_not_the_terminal() {
    ctrl_z_then_fg_then_ctrl_c("</dev/null");
}

/// The terminal's modes go with the job, as a shell keeps them for a stopped job: the child's (here
/// `-icanon`) while it has the terminal, the shell's while it is stopped, and the shell's again at the end.
#[test]
fn the_terminal_modes_follow_the_job() {
    use nix::sys::termios::LocalFlags;
    let env = TestEnv::file();
    let mut terminal = shell(&env);
    let canonical = |terminal: &Terminal| terminal.modes().local_flags.contains(LocalFlags::ICANON);
    assert!(canonical(&terminal));
    let name = env.lease_name("modes");
    let dir = env.dir.display();
    terminal.type_line(&format!(
        "mpsync lock {name} {SLOW_ARGS} -- bash -c 'trap \"exit 130\" INT; stty -icanon; echo $$ > {dir}/child.pid;          while :; do sleep 0.1; done'"
    ));
    let (child, _) = child_and_mpsync(&env.path("child.pid"));
    terminal.wait_until("the child's modes", || !canonical(&terminal));
    terminal.key(CTRL_Z);
    terminal.expect("Stopped");
    terminal.wait_until("the shell to have the terminal", || terminal.foreground() == terminal.shell());
    assert!(canonical(&terminal), "the stopped child's modes stayed");
    terminal.type_line("fg");
    terminal.wait_until("the child to have the terminal again", || terminal.foreground() == child);
    terminal.wait_until("the child's modes again", || !canonical(&terminal));
    terminal.key(CTRL_C);
    terminal.type_line("echo rc=$?");
    terminal.expect("rc=130");
    assert!(canonical(&terminal), "the child's modes outlived it");
}

/// Issue 13, item 5: a backgrounded mpsync that gets its lease later must not take the terminal from the
/// shell (which would read EIO and exit).
#[test]
fn a_backgrounded_mpsync_leaves_the_terminal_to_the_shell() {
    let env = TestEnv::file();
    let mut terminal = shell(&env);
    let name = env.lease_name("steal");
    env.put(&name, TestEnv::foreign_record("someone-else", 3));
    let dir = env.dir.display();
    terminal.type_line(&format!(
        "mpsync lock {name} -v {FAST_ARGS} -- sh -c 'echo $$ > {dir}/child.pid; sleep 1; echo child-$((40 + 2))'"
    ));
    terminal.expect("waiting");
    terminal.key(CTRL_Z);
    terminal.expect("Stopped");
    terminal.type_line("bg");
    let (child, _) = child_and_mpsync(&env.path("child.pid"));
    assert_eq!(terminal.foreground(), terminal.shell(), "the child took the terminal");
    terminal.expect("child-42");
    assert_ne!(stat_field(child, 5), Some(terminal.foreground()));
    terminal.type_line("echo still-$((1 + 1))");
    terminal.expect("still-2");
    terminal.type_line("wait; echo rc=$?");
    terminal.expect("rc=0");
    assert_eq!(terminal.foreground(), terminal.shell());
}

/// `mpsync ... &` whose child reads the terminal: the child stops for terminal input, mpsync stops too (the
/// shell says so), and after `fg` the child gets the terminal and reads it.
#[test]
fn after_background_then_fg_the_child_gets_the_terminal() {
    let env = TestEnv::file();
    let mut terminal = shell(&env);
    let name = env.lease_name("bgfg");
    let dir = env.dir.display();
    terminal.type_line(&format!(
        "mpsync lock {name} {SLOW_ARGS} -- sh -c 'echo $$ > {dir}/child.pid; read x </dev/tty; echo got:$x' &"
    ));
    let (child, mpsync) = child_and_mpsync(&env.path("child.pid"));
    // Every thread of mpsync stopped: only then is the stop complete and the shell told (a main thread seen
    // stopped while the others are not yet is not enough). The shell must have seen the stop before `fg`:
    // a job it still counts as running gets no SIGCONT, and it then reports the stop it had not seen (on
    // a loaded machine, now and then). It reports it at the next prompt.
    terminal.wait_until("the child and mpsync to stop", || state(child) == Some('T') && all_stopped(mpsync));
    terminal.type_line("");
    terminal.expect("Stopped");
    terminal.type_line("fg");
    terminal.wait_until("the child to have the terminal", || terminal.foreground() == child);
    terminal.type_line("hello");
    terminal.expect("got:hello");
    terminal.type_line("echo rc=$?");
    terminal.expect("rc=0");
    assert_eq!(terminal.foreground(), terminal.shell());
}

/// `fg` of a running job sends no SIGCONT: the child stops for terminal input later, and mpsync, now in the
/// foreground, hands it the terminal without stopping (as sudo does).
#[test]
fn after_fg_of_a_running_job_the_child_gets_the_terminal_when_it_reads() {
    let env = TestEnv::file();
    let mut terminal = shell(&env);
    let name = env.lease_name("fgrun");
    let dir = env.dir.display();
    terminal.type_line(&format!(
        "mpsync lock {name} {FAST_ARGS} -- sh -c 'echo $$ > {dir}/child.pid; \
         while [ ! -e {dir}/go ]; do sleep 0.05; done; read x </dev/tty; echo got:$x' &"
    ));
    let (child, mpsync) = child_and_mpsync(&env.path("child.pid"));
    terminal.type_line("fg");
    terminal.wait_until("mpsync's job to have the terminal", || terminal.foreground() == mpsync);
    fs::write(env.path("go"), "").unwrap();
    terminal.wait_until("the child to have the terminal", || terminal.foreground() == child);
    assert_ne!(state(mpsync), Some('T'));
    terminal.type_line("hello");
    terminal.expect("got:hello");
    terminal.type_line("echo rc=$?");
    terminal.expect("rc=0");
}

/// Issue 13, item 2: `echo x | mpsync ... -- sh -c 'read x </dev/tty'`: the child reads the terminal (it is
/// not left stopped on SIGTTIN, holding the lease).
#[test]
fn in_a_pipeline_that_ends_with_mpsync_the_child_reads_the_terminal() {
    let env = TestEnv::file();
    let mut terminal = shell(&env);
    let name = env.lease_name("piped");
    terminal.type_line(&format!("echo x | mpsync lock {name} {FAST_ARGS} -- sh -c 'read x </dev/tty; echo got:$x'"));
    wait_until("the lease to be taken", || env.holder(&name).is_some_and(|holder| !holder.is_empty()));
    terminal.type_line("hello");
    terminal.expect("got:hello");
    terminal.type_line("echo rc=$?");
    terminal.expect("rc=0");
    assert_eq!(env.holder(&name).as_deref(), Some(""));
}

/// `mpsync ... -- cmd | reader`: the terminal stays with the pipeline's group, so the reader (less, say)
/// still reads the keyboard.
#[test]
fn in_a_pipeline_the_child_does_not_take_the_terminal_from_the_others() {
    let env = TestEnv::file();
    let mut terminal = shell(&env);
    let name = env.lease_name("pipeline");
    let dir = env.dir.display();
    terminal.type_line(&format!(
        "mpsync lock {name} {FAST_ARGS} -- sh -c 'echo $$ > {dir}/child.pid; \
         while [ ! -e {dir}/go ]; do sleep 0.05; done; seq 3' | sh -c 'read a </dev/tty; echo got:$a'"
    ));
    let (child, mpsync) = child_and_mpsync(&env.path("child.pid"));
    assert_eq!(terminal.foreground(), stat_field(mpsync, 5).unwrap(), "not the pipeline's group");
    assert_ne!(terminal.foreground(), child);
    fs::write(env.path("go"), "").unwrap();
    terminal.type_line("hello");
    terminal.expect("got:hello");
    terminal.type_line("echo rc=$?");
    terminal.expect("rc=0");
}

/// Issue 13, item 6: a command that does not exist leaves the terminal to the shell that ran mpsync.
#[test]
fn a_failed_spawn_gives_the_terminal_back() {
    let env = TestEnv::file();
    let mut terminal = shell(&env);
    let name = env.lease_name("nospawn");
    // Its interpreter is missing: found before the lease is taken, the exec fails after.
    let script = env.path("script");
    fs::write(&script, format!("#!{}\n", env.path("no-such-interpreter").display())).unwrap();
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    terminal.type_line(&format!("sh -c 'mpsync lock {name} -- {}; echo rc=$?; read a; echo got:$a'", script.display()));
    terminal.expect("rc=126");
    terminal.type_line("hello");
    terminal.expect("got:hello");
    // `sh -c` may still be exiting when its last words show: bash takes the terminal back after it.
    terminal.wait_until("the shell to have the terminal back", || terminal.foreground() == terminal.shell());
}

/// Issue 13, item 7: one Ctrl-C ends a shell loop of mpsync, as it ends a loop of plain commands. Here
/// mpsync is waiting for the lease when Ctrl-C comes.
#[test]
fn ctrl_c_ends_a_shell_loop_while_mpsync_waits() {
    let env = TestEnv::file();
    let mut terminal = shell(&env);
    let name = env.lease_name("loopwait");
    env.put(&name, TestEnv::foreign_record("someone-else", 60));
    terminal.type_line(&format!(
        "for i in 1 2 3; do mpsync lock {name} -v -- true; echo rc=$?; done; echo loop-$((40 + 2))"
    ));
    terminal.expect("waiting");
    terminal.key(CTRL_C);
    terminal.type_line("echo after-$((1 + 1))");
    let shown = terminal.expect("after-2");
    assert!(!shown.contains("rc=") && !shown.contains("loop-42"), "the loop went on:\n{shown}");
}

/// Issue 13, item 7, with the child running: it dies of SIGINT, and so does mpsync, so the loop ends. The
/// child execs `sleep`: a Ctrl-C that comes while dash vforks a command is lost now and then, with or
/// without mpsync (2 runs in 12 on a loaded machine, none in 32 with `exec`).
#[test]
fn ctrl_c_ends_a_shell_loop_while_the_child_runs() {
    let env = TestEnv::file();
    let mut terminal = shell(&env);
    let name = env.lease_name("looprun");
    let dir = env.dir.display();
    terminal.type_line(&format!(
        "for i in 1 2 3; do mpsync lock {name} -- sh -c 'echo started >> {dir}/starts; exec sleep 30'; echo rc=$?; done; \
         echo loop-$((40 + 2))"
    ));
    wait_for_file(&env.path("starts"), "started");
    terminal.key(CTRL_C);
    terminal.type_line("echo after-$((1 + 1))");
    let shown = terminal.expect("after-2");
    assert!(!shown.contains("rc=") && !shown.contains("loop-42"), "the loop went on:\n{shown}");
    assert_eq!(fs::read_to_string(env.path("starts")).unwrap().lines().count(), 1);
}

/// Issue 13, item 8: closing the terminal of an interactive bash does not end `nohup mpsync ... &`: bash
/// sends its jobs SIGHUP, which nohup made mpsync ignore; its child keeps the lease and runs on.
#[test]
fn closing_the_terminal_does_not_end_nohup_mpsync() {
    let env = TestEnv::file();
    let mut terminal = shell(&env);
    let name = env.lease_name("nohup");
    let dir = env.dir.display();
    terminal.type_line(&format!(
        "nohup mpsync lock {name} {FAST_ARGS} -- sh -c 'trap \"echo usr1 > {dir}/usr1\" USR1; \
         echo $$ > {dir}/child.pid; while :; do sleep 0.1; done' >{dir}/nohup.out 2>&1 &"
    ));
    let (child, mpsync) = child_and_mpsync(&env.path("child.pid"));
    terminal.hang_up();
    terminal.wait_for_shell();
    // Bash sent its SIGHUP before it exited; one forwarded signal later, everything must still be there.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(mpsync), nix::sys::signal::Signal::SIGUSR1);
    wait_for_file(&env.path("usr1"), "usr1");
    let alive_now = (alive(child), alive(mpsync));
    let holder = env.holder(&name);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(mpsync), nix::sys::signal::Signal::SIGTERM);
    wait_until("mpsync to end", || !alive(mpsync));
    assert_eq!(alive_now, (true, true), "(child, mpsync) alive after the hang-up");
    assert!(holder.is_some_and(|holder| !holder.is_empty()), "the lease was let go");
}

/// Found by review (helper-90): the lease is lost while the child (an interactive shell, as in a
/// maintenance session under a lock) has given the terminal to a job of its own that changed the modes.
/// Once the job is killed, the terminal must be the shell's again, with the shell's modes, not left to a
/// dead group with the job's.
#[test]
fn a_lost_lease_leaves_no_dead_foreground_nor_the_killed_jobs_modes() {
    use nix::sys::termios::LocalFlags;
    let env = TestEnv::file();
    let mut terminal = shell(&env);
    let canonical = |terminal: &Terminal| terminal.modes().local_flags.contains(LocalFlags::ICANON);
    assert!(canonical(&terminal));
    let name = env.lease_name("deadfg");
    let dir = env.dir.display();
    terminal.type_line(&format!(
        "mpsync lock {name} {SLOW_ARGS} --grace 500ms -- bash --norc -ic 'stty -icanon; trap \"\" TERM; sh -c \"echo \\$\\$ > {dir}/child.pid; exec sleep 1000\"; true'; echo rc=$?"
    ));
    let sleeper = read_pid(&env.path("child.pid"));
    terminal.wait_until("the inner job to have the terminal", || terminal.foreground() == sleeper);
    env.edit(&name, |spec| {
        spec.holder_identity = Some("thief".into());
        spec.lease_transitions = spec.lease_transitions.map(|t| t + 1);
    });
    terminal.expect("rc=123");
    terminal.wait_until("the shell to have the terminal", || terminal.foreground() == terminal.shell());
    assert!(canonical(&terminal), "the killed job's modes outlived it");
}

/// Found by review (helper-202). README: "mpsync's own log lines never stop it (`stty tostop` is not
/// honoured for them)". The log writer thread ("mpsync-log") started before the supervisor blocked SIGTTOU
/// for the threads after it, and wrote with SIGTTOU unblocked: in the background on a `stty tostop`
/// terminal each log line made the kernel send SIGTTOU to mpsync's group; mpsync stopped the child's job
/// and itself, or the storm stopped the child before its exec while mpsync waited for it (the run lost).
#[test]
fn own_log_lines_never_stop_a_background_mpsync_on_a_tostop_terminal() {
    let env = TestEnv::file();
    let mut terminal = shell(&env);
    let name = env.lease_name("tostop-log");
    let dir = env.dir.display();
    terminal.type_line("stty tostop; echo tostop-$((2 + 3))");
    terminal.expect("tostop-5");
    terminal.type_line(&format!(
        "mpsync lock {name} -v {SLOW_ARGS} -- sh -c 'echo $$ > {dir}/child.pid; echo > {dir}/done' & \
         echo $! > {dir}/mpsync.pid"
    ));
    let mpsync = read_pid(&env.path("mpsync.pid"));
    // The child runs and mpsync ends, its log lines on the terminal; or mpsync stops itself (or jams).
    let mut seen_stopped = false;
    let ended = within_patience(|| {
        seen_stopped |= all_stopped(mpsync);
        state(mpsync).is_none() && env.path("done").exists()
    });
    let child_state = fs::read_to_string(env.path("child.pid")).ok().and_then(|pid| state(pid.trim().parse().ok()?));
    let mpsync_state = state(mpsync);
    let held_by = env.holder(&name);
    terminal.type_line("");
    terminal.type_line("jobs -l; echo jobs-$((4 + 4))");
    terminal.expect("jobs-8");
    let text = terminal.text();
    if !ended {
        // Clean up what this test started: mpsync by its pid (its guard kills the child's group).
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(mpsync), nix::sys::signal::Signal::SIGKILL);
    }
    assert!(
        ended && !seen_stopped,
        "in the background on a `stty tostop` terminal, mpsync -v was stopped by its own log lines or jammed \
         (ended {ended}, seen stopped {seen_stopped}, mpsync state {mpsync_state:?}, child state {child_state:?}, \
         lease holder {held_by:?}):\n{text}"
    );
    assert!(text.contains("acquired the lease"), "{text}");
}

/// Found by review (helper-204). The supervised child took the terminal's foreground in `prepare_child`
/// before it reset mpsync's signal handlers, with SIGINT, SIGQUIT and SIGTSTP unblocked: a Ctrl-C typed in
/// that window ran mpsync's inherited handler in the child, and was lost (the command ran on, rc 0). The
/// child blocks every signal until its handlers are the defaults: the Ctrl-C kills it then, as a shell's
/// job (rc 130). The shim (childwindow.c) sends the SIGINT right after the child's tcsetpgrp.
#[test]
fn a_ctrl_c_as_the_child_takes_the_terminal_is_not_lost() {
    use crate::support::pty::Terminal;
    let env = TestEnv::file();
    let shim = build_shim(&env, "childwindow");
    let mut terminal =
        Terminal::bash([("MPSYNC_BACKEND", "file".into()), ("MPSYNC_LOCK_DIR", env.lock_dir().into_os_string())]);
    let name = env.lease_name("intr-window");
    let ran = env.path("command-ran");
    // (Not `...; echo rc=$?`: bash drops the rest of a list whose command died of SIGINT.)
    terminal.type_line(&format!(
        "LD_PRELOAD={} CHILDWINDOW_TCSETPGRP_SIGNAL={} mpsync lock {name} -- sh -c 'echo > {}'",
        shim.display(),
        nix::libc::SIGINT,
        ran.display()
    ));
    terminal.type_line("echo rc=$?");
    terminal.expect("rc=");
    let text = terminal.text();
    assert!(
        text.contains("rc=130") && !ran.exists(),
        "a Ctrl-C as the child took the terminal was lost: the command ran (ran {}):\n{text}",
        ran.exists()
    );
}

/// Found by review (helper-206). Ctrl-Z typed as the child takes the terminal (right after its tcsetpgrp,
/// before its handlers are the defaults): blocked there, it took its default action at the unblocking, and
/// the child stopped *before its exec*, while mpsync's main thread waited in `Command::spawn` for that exec:
/// nothing ran, the shell never showed "Stopped", and the guard killed the child at the lease's deadline.
/// The child passes such a stop on to mpsync now, which stops the job and then itself; `fg` continues it.
#[test]
fn a_ctrl_z_as_the_child_takes_the_terminal_stops_the_job_and_mpsync() {
    stop_in_the_childs_window("CHILDWINDOW_TCSETPGRP_SIGNAL", Signal::SIGTSTP, false);
}

/// Found by review (helper-207). The same Ctrl-Z typed later in the child's window, once its signals were the
/// defaults and unblocked, before its exec (the shim sends it before the prctl; the exec's PATH search is
/// longer still): it stopped the child before its exec, as above. Until its exec, the child passes every
/// stop on to mpsync from a handler (exec puts the default back).
#[test]
fn a_ctrl_z_after_the_childs_defaults_before_its_exec_stops_the_job_and_mpsync() {
    stop_in_the_childs_window("CHILDWINDOW_PRCTL_SIGNAL", Signal::SIGTSTP, false);
}

/// A SIGTTIN there is passed on as itself (review, helper-209: as a SIGTSTP, mpsync stopped with a SIGTSTP, and
/// one started with SIGTSTP ignored took no stop at all); under nohup, the command still starts with SIGHUP
/// alone ignored.
#[test]
fn a_ttin_before_the_childs_exec_stops_the_job_and_mpsync_for_tty_input() {
    stop_in_the_childs_window("CHILDWINDOW_PRCTL_SIGNAL", Signal::SIGTTIN, true);
}

/// `stop` sent (the shim childwindow.c: to the child's group, which has the terminal) at the point of the
/// child's window that `shim_variable` names, mpsync run under `nohup` if asked: mpsync stops the job and then
/// itself (the shell shows it stopped by `stop`); after `fg` the command runs, rc 0, with nothing blocked or
/// caught, and nothing ignored but SIGHUP under nohup.
fn stop_in_the_childs_window(shim_variable: &str, stop: Signal, nohup: bool) {
    let env = TestEnv::file();
    let shim = build_shim(&env, "childwindow");
    let mut terminal =
        Terminal::bash([("MPSYNC_BACKEND", "file".into()), ("MPSYNC_LOCK_DIR", env.lock_dir().into_os_string())]);
    let name = env.lease_name("stop-window");
    // The command notes its signal state once `gate` exists (written once mpsync has stopped): it must not be
    // over before mpsync carries the stop out.
    let (gate, status) = (env.path("gate"), env.path("status"));
    let (nohup, output) = match nohup {
        true => ("nohup", format!("> {} 2>&1", env.path("nohup.out").display())),
        false => ("", String::new()),
    };
    terminal.type_line(&format!(
        "LD_PRELOAD={} {shim_variable}={} {nohup} mpsync lock -v {name} {SLOW_ARGS} -- sh -c '{}; exec cat /proc/self/status > {}' {output}",
        shim.display(),
        stop as i32,
        until_exists(&gate),
        status.display()
    ));
    // (Whatever the stop signal: bash names it only in its POSIX mode.)
    let shown = "Stopped";
    within_patience(|| terminal.text().contains(shown));
    let foreground = terminal.foreground();
    let foreground_state = state(foreground);
    let foreground_program = fs::read_to_string(format!("/proc/{foreground}/comm")).unwrap_or_default();
    let parent = crate::support::pty::stat_field(foreground, 4).unwrap_or(-1);
    let mpsync_wchan = fs::read_to_string(format!("/proc/{parent}/wchan")).unwrap_or_default();
    let stopped_shown = terminal.text().contains(shown);
    if !stopped_shown && foreground > 0 && foreground != terminal.shell() {
        // Clean up what this test started: the stopped child (its parent then goes on).
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(foreground), Signal::SIGKILL);
    }
    assert!(
        stopped_shown,
        "a {stop} at {shim_variable} did not stop mpsync: the terminal's foreground {foreground} is \
         {foreground_program:?} (not exec'd yet) in state {foreground_state:?}; its parent {parent} waits in \
         {mpsync_wchan:?}; the terminal:\n{}",
        terminal.text()
    );
    fs::write(&gate, "").unwrap();
    terminal.type_line("fg");
    terminal.type_line("echo rc=$?");
    terminal.expect("rc=");
    let text = terminal.text();
    let status = fs::read_to_string(&status).unwrap_or_default();
    assert!(text.contains("rc=0") && !status.is_empty(), "after fg the command did not run:\n{text}");
    // mpsync's log, under nohup: it stops the job and itself with the stop that came.
    let log = fs::read_to_string(env.path("nohup.out")).unwrap_or_default();
    let said = "job control: stopping the child's job, then mpsync pgid=";
    assert!(
        nohup.is_empty() || log.lines().any(|line| line.contains(said) && line.ends_with(&format!("signal={stop}"))),
        "mpsync did not stop with the {stop} that came:\n{log}"
    );
    let ignored = if nohup.is_empty() { "0000000000000000" } else { "0000000000000001" };
    for (field, value) in [("SigBlk", "0000000000000000"), ("SigIgn", ignored), ("SigCgt", "0000000000000000")] {
        assert!(status.contains(&format!("{field}:\t{value}")), "the command's {field} is not {value}:\n{status}");
    }
}

/// The live children of `parent`, from /proc.
fn children_of(parent: i32) -> Vec<i32> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| stat_field(pid, 4) == Some(parent))
        .collect()
}

fn numbers<T: std::str::FromStr>(path: &Path) -> Vec<T> {
    fs::read_to_string(path).unwrap_or_default().lines().filter_map(|line| line.trim().parse().ok()).collect()
}

/// Found by review (rv286): Ctrl-Z while the child's job runs (a script whose workers run in groups of their own:
/// `set -m`), then the lease runs out while job control holds the job stopped, and the guard kills it at the
/// deadline. It killed in pid order, the script (the workers' parent) first: the workers' stopped groups were
/// orphaned, and the kernel sent them SIGHUP and SIGCONT; a worker that ignores SIGHUP ran again before its own
/// SIGKILL came, and the helpers it started in that instant (in no listing the guard took) ran on beside the next
/// holder's child. Children are now killed before their parents: one with SIGKILL pending never runs again.
#[test]
fn the_guards_kill_of_a_stopped_job_lets_none_of_it_run_again() {
    const WORKERS: usize = 32;
    let env = TestEnv::file();
    let contfork = build_program(&env, "contfork");
    let mut terminal = shell(&env);
    let name = env.lease_name("guard-stopped");
    let dir = env.dir.display();
    let workers: String = (0..WORKERS).map(|i| format!("{} {dir}/w{i} & ", contfork.display())).collect();
    terminal.type_line(&format!(
        "mpsync lock {name} {FAST_ARGS} -- bash -c 'echo $$ > {dir}/child.pid; set -m; {workers}wait'"
    ));
    let (child, mpsync) = child_and_mpsync(&env.path("child.pid"));
    terminal.wait_until("the workers to beat", || (0..WORKERS).all(|i| env.path(&format!("w{i}")).exists()));
    terminal.wait_until("the child to have the terminal", || terminal.foreground() == child);
    let workers = children_of(child);
    assert_eq!(workers.len(), WORKERS, "{}", terminal.text());

    terminal.key(CTRL_Z);
    terminal.expect("Stopped");
    terminal.wait_until("the job and mpsync to stop", || {
        workers.iter().chain([&child, &mpsync]).all(|&pid| state(pid) == Some('T'))
    });
    // The next holder gets the lease once it has run out.
    let script = format!("date +%s%N > {dir}/start2; sleep 3; date +%s%N > {dir}/end2");
    let mut args = vec!["lock", &name];
    args.extend(FAST_ARGS.split(' '));
    args.extend(["--", "sh", "-c", &script]);
    let second = env.spawn(args);
    wait_until("the next holder's child to finish", || env.path("end2").exists());
    second.finish().assert_code(0);
    let start2: u128 = numbers(&env.path("start2"))[0];
    let end2: u128 = numbers(&env.path("end2"))[0];

    let mut beside = 0;
    let mut helpers = Vec::new();
    for i in 0..WORKERS {
        let late = numbers::<u128>(&env.path(&format!("w{i}.late")));
        beside += late.into_iter().filter(|stamp| (start2..=end2).contains(stamp)).count();
        helpers.extend(numbers::<i32>(&env.path(&format!("w{i}.late.pid"))));
    }
    let running: Vec<i32> = helpers.iter().copied().filter(|&pid| !matches!(state(pid), None | Some('Z'))).collect();
    for &pid in &helpers {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    terminal.hang_up();
    wait_until("mpsync to end after the hang-up", || matches!(state(mpsync), None | Some('Z')));
    assert!(
        helpers.is_empty(),
        "the stopped job's workers ran again as the guard killed them, and started {} helpers: {beside} beats \
         while the next holder's child ran; still running: {running:?}",
        helpers.len()
    );
}
