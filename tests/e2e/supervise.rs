//! Supervision that a PID 1 can trust: process groups, every signal, clean signal state, parent death,
//! reaping as PID 1 and as a subreaper, the terminal, grace and kill signal, standard streams, and
//! release strictly after reaping.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::*;

both_backends!(
    whole_group_is_stopped_when_the_lease_is_lost,
    whole_group_is_stopped_after_sigterm_to_mpsync,
    every_forwarded_signal_reaches_the_child,
    sigint_and_sighup_while_waiting_exit_128_plus_n,
    child_inherits_no_signal_mask_and_no_ignored_signals,
    sigkill_of_mpsync_kills_the_childs_whole_group,
    sigkill_of_mpsync_also_kills_what_a_member_of_the_group_started_in_another_session,
    child_ignoring_sigterm_is_sigkilled_after_grace,
    kill_signal_option_chooses_the_signal,
    stdin_and_stdout_pass_through_untouched,
    lease_is_released_only_after_the_child_is_reaped,
    subreaper_reaps_orphans_and_keeps_the_childs_status,
    as_subreaper_what_mpsync_adopted_dies_with_a_sigkill_of_mpsync,
    what_the_child_started_in_a_session_of_its_own_dies_with_a_sigkill_of_mpsync,
    what_the_child_starts_in_a_session_of_its_own_during_the_grace_dies_with_a_sigkill_of_mpsync,
    what_left_the_group_told_to_a_guard_that_died_is_told_to_the_next_one,
    as_subreaper_what_the_child_left_dies_with_a_sigkill_of_mpsync_during_the_grace,
    leftover_background_processes_are_stopped_when_the_child_exits,
    a_leftover_whose_name_is_not_utf8_is_stopped_too,
    what_a_leftover_started_in_another_session_is_stopped_with_it,
    a_process_the_child_made_mpsyncs_own_in_a_session_of_its_own_is_stopped_too,
    a_process_of_the_job_that_moves_into_mpsyncs_group_is_stopped_too,
    what_a_member_forks_while_the_job_is_stopped_is_stopped_too,
    a_worker_under_timeout_gets_sigterm_and_is_waited_for_after_its_parent_died_of_it,
    a_job_control_shell_sees_its_job_end_not_stop,
    a_proc_mpsync_cannot_read_for_want_of_descriptors_holds_the_release,
    a_helper_inherited_across_exec_is_no_part_of_the_job,
    a_stop_signal_during_the_leftovers_grace_still_releases,
    a_child_that_left_its_group_and_its_parent_death_signal_dies_with_a_sigkill_of_mpsync,
    a_child_that_left_its_group_dies_with_a_sigkill_of_mpsync_after_its_guard_was_replaced,
);

/// `helper & exec mpsync lock ...` (a container entrypoint's log shipper): the helper is mpsync's child
/// from the start, but no part of the child's job. The job's end neither waits for it nor signals it,
/// also when the child is stopped by a signal to mpsync; it runs on after mpsync exits.
fn a_helper_inherited_across_exec_is_no_part_of_the_job(env: &TestEnv) {
    for stop in [false, true] {
        let name = env.lease_name("inherited");
        let helper = env.path(&env.lease_name("helper.pid"));
        let started = env.path(&env.lease_name("started"));
        let body = match stop {
            false => "exit 3".to_string(),
            true => format!("echo up > {}; sleep 1000", started.display()),
        };
        let lock = env.mpsync(fast(&["lock", &name], &["sh", "-c", &body]));
        let mut command = std::process::Command::new("sh");
        command
            .arg("-c")
            .arg(format!("sleep 1000 & echo $! > {}; exec \"$0\" \"$@\"", helper.display()))
            .arg(lock.get_program())
            .args(lock.get_args())
            .stdin(Stdio::null());
        for (key, value) in lock.get_envs() {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        let mut proc = Proc::spawn(command, &env.dir);
        let pid = read_pid(&helper);
        if stop {
            wait_for_file(&started, "up");
            proc.signal(Signal::SIGTERM);
        }
        let status = proc.wait_for(PATIENCE).expect("mpsync exits");
        let alive_after = alive(pid);
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        assert_eq!(status.code(), Some(if stop { 143 } else { 3 }), "{}", proc.stderr());
        assert!(alive_after, "stop={stop}: the inherited helper was ended with the job:\n{}", proc.stderr());
    }
}

/// A script that starts a background `sleep 1000`, records its pid, and waits for it.
fn worker_script(pid_file: &std::path::Path) -> String {
    format!("sleep 1000 & echo $! > {}; wait", pid_file.display())
}

fn whole_group_is_stopped_when_the_lease_is_lost(env: &TestEnv) {
    let name = env.lease_name("grouploss");
    let worker = env.path("worker");
    let mut lock = env.spawn(fast(&["lock", &name], &["sh", "-c", &worker_script(&worker)]));
    let worker_pid = read_pid(&worker);
    env.edit(&name, |spec| spec.holder_identity = Some("thief".into()));
    assert_eq!(lock.wait_for(PATIENCE).and_then(|s| s.code()), Some(123), "{}", lock.stderr());
    assert!(!alive(worker_pid), "the background worker must not survive the loss");
}

fn whole_group_is_stopped_after_sigterm_to_mpsync(env: &TestEnv) {
    let name = env.lease_name("groupterm");
    let worker = env.path("worker");
    let mut lock = env.spawn(["lock", &name, "--", "sh", "-c", &worker_script(&worker)]);
    let worker_pid = read_pid(&worker);
    lock.signal(Signal::SIGTERM);
    assert_eq!(lock.wait_for(PATIENCE).and_then(|s| s.code()), Some(143), "{}", lock.stderr());
    assert!(!alive(worker_pid), "the background worker must not survive SIGTERM");
    assert_eq!(env.holder(&name).as_deref(), Some(""));
}

fn every_forwarded_signal_reaches_the_child(env: &TestEnv) {
    let signals = [
        (Signal::SIGTERM, "TERM"),
        (Signal::SIGINT, "INT"),
        (Signal::SIGHUP, "HUP"),
        (Signal::SIGQUIT, "QUIT"),
        (Signal::SIGUSR1, "USR1"),
        (Signal::SIGUSR2, "USR2"),
        (Signal::SIGWINCH, "WINCH"),
    ];
    for (signal, trap_name) in signals {
        let name = env.lease_name(&format!("fwd-{}", trap_name.to_lowercase()));
        let ready = env.path(&format!("ready-{trap_name}"));
        let got = env.path(&format!("got-{trap_name}"));
        // `ulimit -c 0`: SIGQUIT must not leave core files behind.
        let script = format!(
            "ulimit -c 0; trap 'echo {trap_name} > {got}; exit 3' {trap_name}; echo ready > {ready}; while :; do sleep 0.05; done",
            got = got.display(),
            ready = ready.display()
        );
        let mut lock = env.spawn(["lock", &name, "--", "sh", "-c", &script]);
        wait_for_file(&ready, "ready");
        lock.signal(signal);
        assert_eq!(lock.wait_for(PATIENCE).and_then(|s| s.code()), Some(3), "{trap_name}: {}", lock.stderr());
        assert_eq!(fs::read_to_string(&got).unwrap().trim(), trap_name);
        assert_eq!(env.holder(&name).as_deref(), Some(""), "{trap_name}: released");
    }
}

/// 128+N as a shell sees it. For SIGINT mpsync dies of SIGINT (bash's "wait and cooperative exit": a loop
/// stops at Ctrl-C only if the command died of it), which a shell reads as 130 all the same.
fn sigint_and_sighup_while_waiting_exit_128_plus_n(env: &TestEnv) {
    use std::os::unix::process::ExitStatusExt;
    for signal in [Signal::SIGINT, Signal::SIGHUP, Signal::SIGTERM, Signal::SIGQUIT] {
        let name = env.lease_name("waitsig");
        env.put(&name, TestEnv::foreign_record("someone-else", 60));
        let mut lock = env.spawn(["lock", &name, "-v", "--", "true"]);
        wait_until("mpsync to start waiting", || lock.stderr().contains("waiting"));
        lock.signal(signal);
        let status = lock.wait_for(PATIENCE).expect("mpsync exits");
        if signal == Signal::SIGINT || signal == Signal::SIGQUIT {
            assert_eq!(status.signal(), Some(signal as i32), "{signal}: {status}");
        } else {
            assert_eq!(status.code(), Some(128 + signal as i32), "{signal}: {status}");
        }
        assert_eq!(env.holder(&name).as_deref(), Some("someone-else"), "{signal}: nothing held");
    }
}

/// The child starts with an empty mask and default actions, whatever mpsync inherited; except SIGHUP under
/// nohup, which stays ignored for the child too (nohup's promise is for the command mpsync runs).
fn child_inherits_no_signal_mask_and_no_ignored_signals(env: &TestEnv) {
    for nohup in [false, true] {
        let name = env.lease_name("sigstate");
        let mut command = env.mpsync(["lock", &name, "--", "grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"]);
        // Start mpsync as a shell without job control starts `cmd &` (SIGINT and SIGQUIT ignored), with
        // SIGUSR1 blocked, and, the second time, as nohup does (SIGHUP ignored).
        // SAFETY: only async-signal-safe calls (sigaction, sigprocmask) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, signal, sigprocmask};
                let ignored = [Signal::SIGINT, Signal::SIGQUIT].into_iter().chain(nohup.then_some(Signal::SIGHUP));
                for ignored in ignored {
                    signal(ignored, SigHandler::SigIgn).map_err(std::io::Error::from)?;
                }
                let mut set = SigSet::empty();
                set.add(Signal::SIGUSR1);
                sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None).map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        let done = Proc::spawn(command, &env.dir).finish();
        done.assert_code(0);
        let field = |name: &str| {
            let line = done.stdout.lines().find(|line| line.starts_with(name)).expect("a Sig line");
            u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
        };
        assert_eq!(field("SigBlk:"), 0, "child's mask not clean: {}", done.stdout);
        let sighup = 1 << (Signal::SIGHUP as u64 - 1);
        assert_eq!(field("SigIgn:"), if nohup { sighup } else { 0 }, "nohup {nohup}: {}", done.stdout);
    }
}

fn sigkill_of_mpsync_kills_the_childs_whole_group(env: &TestEnv) {
    let name = env.lease_name("pdeath");
    let worker = env.path("worker");
    let mut lock = env.spawn(["lock", &name, "--", "sh", "-c", &worker_script(&worker)]);
    let worker_pid = read_pid(&worker);
    lock.signal(Signal::SIGKILL);
    lock.wait_for(PATIENCE).expect("mpsync dies");
    wait_until("the background worker to die with mpsync", || !alive(worker_pid));
}

/// A shell of the child's group waits for a worker it started in a session of its own. mpsync is
/// SIGKILLed: the guard kills the group, and first what its members started elsewhere, found through them.
fn sigkill_of_mpsync_also_kills_what_a_member_of_the_group_started_in_another_session(env: &TestEnv) {
    let name = env.lease_name("pdeath-session");
    let worker = env.path("worker");
    let script = format!("(setsid sleep 1000 & echo $! > {}; wait) & wait", worker.display());
    let mut lock = env.spawn(["lock", &name, "--", "sh", "-c", &script]);
    let worker_pid = read_pid(&worker);
    // Killed before it had its session, it would have been killed as a member of the group.
    wait_until("the worker to have a session of its own", || {
        fs::read_to_string(format!("/proc/{worker_pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(3)) == Some(&*worker_pid.to_string())
        })
    });
    lock.signal(Signal::SIGKILL);
    lock.wait_for(PATIENCE).expect("mpsync dies");
    wait_until("the worker in its own session to die with mpsync", || !alive(worker_pid));
}

/// Found by review (rv263): the child itself clears its parent-death signal (`setpriv --pdeathsig clear`, or
/// the kernel, at the exec of a set-group-ID binary or one with file capabilities) and moves into mpsync's own
/// group (`setpgid`, allowed within a session), after starting a worker. mpsync is SIGKILLed: the guard kills
/// the child wherever it went, and what it started. Before, it killed the child's group (empty by then) and what
/// left it, found through the group's members, but not the child, which ran on, init's child, beside the next
/// holder's child.
fn a_child_that_left_its_group_and_its_parent_death_signal_dies_with_a_sigkill_of_mpsync(env: &TestEnv) {
    let (mut lock, child, worker) = a_child_that_leaves_its_group(env, "pdeath-moved");
    lock.signal(Signal::SIGKILL);
    lock.wait_for(PATIENCE).expect("mpsync dies");
    wait_until("the child in mpsync's group to die with mpsync", || !alive(child));
    wait_until("what it started to die with it", || !alive(worker));
}

/// `lock` whose child clears its parent-death signal, starts a worker, and moves into mpsync's group: mpsync,
/// the child's pid, the worker's.
fn a_child_that_leaves_its_group(env: &TestEnv, name: &str) -> (Proc, i32, i32) {
    let name = env.lease_name(name);
    let (child_file, worker_file) = (env.path("child"), env.path("worker"));
    let script = format!(
        "import ctypes, os, subprocess, time\n\
         ctypes.CDLL(None).prctl(1, 0, 0, 0, 0)\n\
         worker = subprocess.Popen(['sleep', '1000'])\n\
         os.setpgid(0, os.getpgid(os.getppid()))\n\
         open({worker:?}, 'w').write(f'{{worker.pid}}\\n')\n\
         open({child:?}, 'w').write(f'{{os.getpid()}}\\n')\n\
         time.sleep(1000)\n",
        worker = worker_file.display().to_string(),
        child = child_file.display().to_string(),
    );
    let lock = env.spawn(["lock", &name, "--", "python3", "-c", &script]);
    let (child, worker) = (read_pid(&child_file), read_pid(&worker_file));
    (lock, child, worker)
}

/// Found by review (rv264): the same after the guard died (the OOM killer, a `kill`) once the child had moved:
/// the guard mpsync started again, armed with the child's group, did not know the child, in another group by
/// then, for the child, and it ran on after the SIGKILL of mpsync. mpsync tells the new guard of the child.
fn a_child_that_left_its_group_dies_with_a_sigkill_of_mpsync_after_its_guard_was_replaced(env: &TestEnv) {
    let (mut lock, child, worker) = a_child_that_leaves_its_group(env, "pdeath-moved-reguarded");
    let guards = || {
        fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| crate::support::pty::stat_field(*pid, 4) == Some(lock.pid()))
            .filter(|pid| fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "mpsync-guard"))
            .filter(|pid| alive(*pid))
            .collect::<Vec<i32>>()
    };
    let mut first = vec![];
    wait_until("a guard", || {
        first = guards();
        first.len() == 1
    });
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first[0]), Signal::SIGKILL).unwrap();
    wait_until("a new guard", || guards().iter().any(|pid| *pid != first[0]));
    lock.signal(Signal::SIGKILL);
    lock.wait_for(PATIENCE).expect("mpsync dies");
    let gone = within_patience(|| !alive(child) && !alive(worker));
    for pid in [child, worker] {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    assert!(gone, "the child ({child}) or its worker ({worker}) outlived mpsync's SIGKILL");
}

fn child_ignoring_sigterm_is_sigkilled_after_grace(env: &TestEnv) {
    let name = env.lease_name("grace");
    let pid_file = env.path("pid");
    let script = format!("trap '' TERM; echo $$ > {}; while :; do sleep 0.1; done", pid_file.display());
    let mut lock = env.spawn(fast(&["lock", &name, "--grace", "1s"], &["sh", "-c", &script]));
    let child = read_pid(&pid_file);
    let stolen_at = Instant::now();
    env.edit(&name, |spec| spec.holder_identity = Some("thief".into()));
    assert_eq!(lock.wait_for(PATIENCE).and_then(|s| s.code()), Some(123), "{}", lock.stderr());
    assert!(stolen_at.elapsed() >= Duration::from_secs(1), "SIGKILL came before the grace period");
    assert!(!alive(child));
}

fn kill_signal_option_chooses_the_signal(env: &TestEnv) {
    let name = env.lease_name("killsig");
    let ready = env.path("ready");
    let got = env.path("got");
    let script = format!(
        "trap 'echo USR1 > {got}; exit 0' USR1; echo ready > {ready}; while :; do sleep 0.05; done",
        got = got.display(),
        ready = ready.display()
    );
    let mut lock = env.spawn(fast(&["lock", &name, "--kill-signal", "USR1"], &["sh", "-c", &script]));
    wait_for_file(&ready, "ready");
    env.edit(&name, |spec| spec.holder_identity = Some("thief".into()));
    assert_eq!(lock.wait_for(PATIENCE).and_then(|s| s.code()), Some(123), "{}", lock.stderr());
    assert_eq!(fs::read_to_string(&got).unwrap().trim(), "USR1");
}

fn stdin_and_stdout_pass_through_untouched(env: &TestEnv) {
    let name = env.lease_name("streams");
    let mut command = env.mpsync(["lock", &name, "-v", "--", "sh", "-c", "cat; echo err >&2"]);
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let input: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let mut stdin = child.stdin.take().unwrap();
    let writer = {
        let input = input.clone();
        std::thread::spawn(move || {
            stdin.write_all(&input).unwrap();
        })
    };
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert!(output.stdout == input, "stdout differs from stdin ({} vs {} bytes)", output.stdout.len(), input.len());
    assert!(String::from_utf8_lossy(&output.stderr).contains("err"));
}

fn lease_is_released_only_after_the_child_is_reaped(env: &TestEnv) {
    let name = env.lease_name("order");
    let ready = env.path("ready");
    let at_end = env.path("at-end");
    // On SIGTERM the child takes its time, then looks at the lease itself as its last act: it must
    // still be held (by this mpsync), because release comes only after the child is reaped.
    let script = format!(
        "trap 'sleep 1; \"$MPSYNC_BIN\" status \"$MPSYNC_LEASE\" -o json > {at_end}; exit 0' TERM; echo ready > {ready}; while :; do sleep 0.05; done",
        at_end = at_end.display(),
        ready = ready.display()
    );
    let mut command = env.mpsync(["lock", &name, "--identity", "the-holder", "--", "sh", "-c", &script]);
    command.env("MPSYNC_BIN", env!("CARGO_BIN_EXE_mpsync"));
    let mut lock = Proc::spawn(command, &env.dir);
    wait_for_file(&ready, "ready");
    lock.signal(Signal::SIGTERM);
    assert_eq!(lock.wait_for(PATIENCE).and_then(|s| s.code()), Some(0), "{}", lock.stderr());
    let status: serde_json::Value = serde_json::from_str(&fs::read_to_string(&at_end).unwrap()).unwrap();
    assert_eq!(status["holderIdentity"], "the-holder", "released before the child ended: {status}");
    assert_eq!(env.holder(&name).as_deref(), Some(""), "released after");
}

fn subreaper_reaps_orphans_and_keeps_the_childs_status(env: &TestEnv) {
    let name = env.lease_name("subreaper");
    // The inner sh exits at once, orphaning its `sleep 0.3`: it must be re-parented to mpsync (the
    // subreaper), and reaped by it when it exits. The main child then exits 7.
    let script = r#"sh -c 'sleep 0.3 & echo $! > orphan'; o=$(cat orphan)
        parent=$(awk '/^PPid:/ {print $2}' /proc/$o/status 2>/dev/null)
        [ "$parent" = "$PPID" ] || { echo "orphan parent $parent, mpsync $PPID"; exit 90; }
        i=0; while [ -e /proc/$o ]; do i=$((i+1)); [ $i -gt 600 ] && { echo "orphan not reaped"; exit 91; }; sleep 0.05; done
        exit 7"#;
    let mut command = env.mpsync(["lock", &name, "--subreaper", "--", "sh", "-c", script]);
    command.current_dir(&env.dir);
    let done = Proc::spawn(command, &env.dir).finish();
    done.assert_code(7);
}

/// Found by review: with `--subreaper`, a daemon the child leaves (`setsid -f`: its parent exits at once)
/// is adopted by mpsync. When mpsync is SIGKILLed, the guard kills it too: it was handed to init with
/// mpsync's death, out of the child's group, and ran on beside the next holder.
fn as_subreaper_what_mpsync_adopted_dies_with_a_sigkill_of_mpsync(env: &TestEnv) {
    let name = env.lease_name("adopted-kill9");
    let daemon = env.path("daemon");
    let script = format!("setsid -f sh -c 'echo $$ > {}; exec sleep 300'; exec sleep 300", daemon.display());
    let mut lock = env.spawn(["lock", &name, "--subreaper", "-vv", "--", "sh", "-c", &script]);
    let daemon = read_pid(&daemon);
    let told = format!("the guard knows of an adopted process pid={daemon}");
    wait_until("mpsync to tell its guard of the daemon it adopted", || lock.stderr().contains(&told));
    lock.signal(Signal::SIGKILL);
    lock.wait_for(PATIENCE).expect("killed");
    wait_until("the adopted daemon to die with mpsync", || !alive(daemon));
}

/// Found by review (helper-132): SIGKILLed, mpsync's main child dies at once of its parent-death signal, and
/// what it had started in a session of its own (`setsid worker & wait`) was handed to init, where the guard
/// did not find it through the child's group: it ran on, with no lease, beside the next holder.
fn what_the_child_started_in_a_session_of_its_own_dies_with_a_sigkill_of_mpsync(env: &TestEnv) {
    let name = env.lease_name("left-group-kill9");
    let worker = env.path("worker");
    let script = format!("setsid sh -c 'echo $$ > {}; exec sleep 300' & wait", worker.display());
    let mut lock = env.spawn(["lock", &name, "-vv", "--", "sh", "-c", &script]);
    let worker = read_pid(&worker);
    let told = format!("the guard knows of a process that left the child's group pid={worker}");
    wait_until("mpsync to tell its guard of the worker in a session of its own", || lock.stderr().contains(&told));
    lock.signal(Signal::SIGKILL);
    lock.wait_for(PATIENCE).expect("killed");
    wait_until("the worker to die with mpsync", || !alive(worker));
}

/// Found by review: the main child exits, leaving a process in a session of its own that ignores SIGTERM;
/// mpsync adopts it then (as a subreaper), and waits `--grace` for it. SIGKILLed meanwhile, mpsync leaves
/// it to its guard, which kills it: mpsync had looked for what it adopted only while the child ran.
fn as_subreaper_what_the_child_left_dies_with_a_sigkill_of_mpsync_during_the_grace(env: &TestEnv) {
    let name = env.lease_name("adopted-grace-kill9");
    let left = env.path("left");
    let script =
        format!("setsid sh -c 'trap \"\" TERM; echo $$ > {}; exec sleep 300' & sleep 0.2; exit 0", left.display());
    let timings = ["--lease-duration", "60s", "--renew-deadline", "40s", "--grace", "15s"];
    let head = [&["lock", &name, "--subreaper", "-vv"][..], &timings[..]].concat();
    let mut lock = env.spawn([&head[..], &["--", "sh", "-c", &script]].concat());
    let left = read_pid(&left);
    let told = format!("the guard knows of an adopted process pid={left}");
    wait_until("mpsync to tell its guard of what the child left", || lock.stderr().contains(&told));
    lock.signal(Signal::SIGKILL);
    lock.wait_for(PATIENCE).expect("killed");
    wait_until("what the child left to die with mpsync", || !alive(left));
}

fn leftover_background_processes_are_stopped_when_the_child_exits(env: &TestEnv) {
    let name = env.lease_name("leftover");
    let worker = env.path("worker");
    // The child exits at once, leaving a background worker in its group: it must not run unguarded.
    let script = format!("sleep 1000 & echo $! > {}; exit 5", worker.display());
    let done = env.run(fast(&["lock", &name], &["sh", "-c", &script]));
    done.assert_code(5);
    let worker_pid = read_pid(&worker);
    assert!(!alive(worker_pid), "the leftover worker must be stopped before the lease is released");
}

/// A command name is any bytes: /proc shows them as they are, and a process whose stat line is not UTF-8
/// is still a process of the job (it was once taken for gone, and ran on after the release).
fn a_leftover_whose_name_is_not_utf8_is_stopped_too(env: &TestEnv) {
    use std::os::unix::ffi::OsStrExt;
    let name = env.lease_name("leftover-bytes");
    let worker = env.path("worker");
    let program = env.dir.join(std::ffi::OsStr::from_bytes(b"sleep-\xff\xfe"));
    fs::copy("/bin/sleep", &program).expect("copy sleep");
    // The child exits only once the worker runs the program (until its exec it is a `sh`).
    let script = format!(
        "\"$MPSYNC_TEST_PROGRAM\" 1000 & w=$!; echo $w > {}; while [ \"$(cat /proc/$w/comm)\" = sh ]; do sleep 0.01; done; exit 5",
        worker.display()
    );
    let mut command = env.mpsync(fast(&["lock", &name], &["sh", "-c", &script]));
    command.env("MPSYNC_TEST_PROGRAM", &program);
    let done = Proc::spawn(command, &env.dir).finish();
    done.assert_code(5);
    let worker_pid = read_pid(&worker);
    assert!(!alive(worker_pid), "the leftover worker must be stopped before the lease is released");
}

/// The child leaves a background shell in its group, which waits for a worker it started in a session of
/// its own: the shell has left mpsync's tree with the child's exit, and the worker is found through it.
fn what_a_leftover_started_in_another_session_is_stopped_with_it(env: &TestEnv) {
    let name = env.lease_name("leftover-session");
    let worker = env.path("worker");
    let inner = format!("setsid sleep 1000 & echo $! > {}; wait", worker.display());
    // The child exits once the worker has its own session.
    let script = format!(
        "sh -c '{inner}' & while [ ! -s {w} ] || [ \"$(cut -d' ' -f6 /proc/$(cat {w})/stat)\" != \"$(cat {w})\" ]; do sleep 0.01; done; exit 5",
        w = worker.display()
    );
    let done = Proc::spawn(env.mpsync(fast(&["lock", &name], &["sh", "-c", &script])), &env.dir).finish();
    done.assert_code(5);
    let worker_pid = read_pid(&worker);
    assert!(!alive(worker_pid), "the worker must be stopped before the lease is released");
}

/// The child makes its sibling (clone with CLONE_PARENT: mpsync's own child), which leaves for a session of
/// its own, then exits: nothing is left in the child's group, yet the sibling is the job's, found from
/// mpsync. (mpsync's cheap look at the end of a job once missed it: review of cf59092.)
fn a_process_the_child_made_mpsyncs_own_in_a_session_of_its_own_is_stopped_too(env: &TestEnv) {
    let name = env.lease_name("clone-parent");
    let worker = env.path("worker");
    // x86_64's clone(2) number; CLONE_PARENT | SIGCHLD. The child exits once the worker has its own session.
    let script = r#"
import ctypes, os, shutil, sys, time
pid = ctypes.CDLL(None, use_errno=True).syscall(56, 0x8000 | 17, 0, 0, 0, 0)
if pid == 0:
    os.setsid()
    os.execv(shutil.which("sleep"), ["sleep", "1000"])
if pid < 0:
    sys.exit("clone failed: errno %d" % ctypes.get_errno())
with open(sys.argv[1], "w") as f:
    f.write("%d\n" % pid)
while open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()[3] != str(pid):
    time.sleep(0.01)
sys.exit(5)
"#;
    let worker_arg = worker.display().to_string();
    let done =
        Proc::spawn(env.mpsync(fast(&["lock", &name], &["python3", "-c", script, &worker_arg])), &env.dir).finish();
    done.assert_code(5);
    let worker_pid = read_pid(&worker);
    assert!(!alive(worker_pid), "mpsync's child in a session of its own must be stopped before the lease is released");
}

/// A process of the job moves itself into mpsync's own process group (setpgid(2) to it: allowed, the job is
/// in mpsync's session). mpsync does not take it for what it runs itself (a kubeconfig exec plugin): as
/// mpsync's child (made so with clone(CLONE_PARENT)), below a member that lives on, and with `--subreaper`
/// as an orphan mpsync adopts, it is stopped before the release. (Without `--subreaper` an orphan is
/// handed to init: README, "What escapes".)
fn a_process_of_the_job_that_moves_into_mpsyncs_group_is_stopped_too(env: &TestEnv) {
    // x86_64's clone(2) number; CLONE_PARENT | SIGCHLD. The child exits 5 once the stray is in the group
    // (and, as an orphan, adopted by mpsync).
    let script = r#"
import ctypes, os, shutil, sys, time
how, pid_file = sys.argv[1], sys.argv[2]
mpsync = os.getppid()
group = os.getpgid(mpsync)
def sleep(join):
    if join:
        os.setpgid(0, group)
    os.execv(shutil.which("sleep"), ["sleep", "1000"])
if how == "sibling":
    pid = ctypes.CDLL(None, use_errno=True).syscall(56, 0x8000 | 17, 0, 0, 0, 0)
    if pid == 0:
        sleep(True)
    if pid < 0:
        sys.exit("clone failed: errno %d" % ctypes.get_errno())
else:
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:
        pid = os.fork()
        if pid == 0:
            sleep(True)
        os.write(w, b"%d\n" % pid)
        if how == "orphan":
            os._exit(0)
        sleep(False)
    pid = int(os.read(r, 32))
    if how == "orphan":
        os.waitpid(middle, 0)
with open(pid_file, "w") as f:
    f.write("%d\n" % pid)
def there():
    fields = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return fields[2] == str(group) and (how != "orphan" or fields[1] == str(mpsync))
while not there():
    time.sleep(0.01)
sys.exit(5)
"#;
    for how in ["sibling", "below", "orphan"] {
        let name = env.lease_name(&format!("join-{how}"));
        let stray = env.path(&format!("stray-{how}"));
        let stray_arg = stray.display().to_string();
        let head: &[&str] = if how == "orphan" { &["lock", &name, "--subreaper"] } else { &["lock", &name] };
        let done = Proc::spawn(env.mpsync(fast(head, &["python3", "-c", script, how, &stray_arg])), &env.dir).finish();
        let stray_pid = read_pid(&stray);
        let left = alive(stray_pid);
        if left {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(stray_pid), Signal::SIGKILL);
        }
        done.assert_code(5);
        assert!(!left, "{how}: the stray in mpsync's group outlived the release:\n{}", done.stderr);
    }
}

/// Members of the job outside the child's group (each in a session of its own, below a shell of the group)
/// fork without pause while mpsync stops the job. mpsync stops the job (SIGSTOP, in rounds) before it
/// signals it, so a child forked in the instant between its look at /proc and the signal that kills the
/// parent is not handed to init unseen. Without `--subreaper`. The instant is narrow: three rounds of
/// eight forkers (without the stop, about every other round let one through here).
///
/// A second window is narrower still: a look lists /proc before it reads each process's state, so a forker
/// can show stopped after a fork whose child the listing missed; mpsync looks once more after a look that
/// found all stopped (that window needs a loaded machine with over a thousand processes to show, so it
/// was measured with a script, not here). Timings are not `FAST`: eight forkers on a loaded machine must
/// not cost the lease (that is another test's).
fn what_a_member_forks_while_the_job_is_stopped_is_stopped_too(env: &TestEnv) {
    // Every process of the job carries it on its command line: the forkers' `sleep`s and the shells.
    let marker = format!("1{}.{}", std::process::id() % 100_000, epoch_nanos() % 1_000_000);
    let timings = ["--lease-duration", "30s", "--renew-deadline", "20s", "--retry-period", "2s"];
    for round in 0..3 {
        let name = env.lease_name("forking");
        let ready = env.path(&format!("ready-{round}"));
        fs::create_dir_all(&ready).unwrap();
        let forker = format!(
            "touch {r}/$$; while :; do sleep {marker} & kill $!; wait $! 2>/dev/null; done",
            r = ready.display()
        );
        let script = format!(
            "for i in 1 2 3 4 5 6 7 8; do (setsid sh -c '{forker}' & wait) & done; \
             while [ $(ls {r} | wc -l) -lt 8 ]; do sleep 0.01; done; exit 0",
            r = ready.display()
        );
        let args = [&["lock", name.as_str()], &timings[..], &["--", "sh", "-c", &script]].concat();
        let done = Proc::spawn(env.mpsync(args), &env.dir).finish();
        let left = running_with_marker(&marker);
        for pid in &left {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), Signal::SIGKILL);
        }
        done.assert_code(0);
        assert!(left.is_empty(), "round {round}: {left:?} of the job outlived the release:\n{}", done.stderr);
    }
}

/// A worker that shuts down gracefully on TERM or HUP (0.3 s), saying which it got, in `log`; it says
/// `ready` in `ready` first.
fn graceful_worker(env: &TestEnv, log: &std::path::Path, ready: &std::path::Path) -> std::path::PathBuf {
    let worker = env.path("worker.sh");
    let script = format!(
        "#!/bin/sh\nfor s in HUP TERM; do trap \"echo SIG$s >> {log}; sleep 0.3; echo done >> {log}; exit 0\" $s; done\n\
         echo ready > {ready}\nsleep 1000 & wait\n",
        log = log.display(),
        ready = ready.display()
    );
    fs::write(&worker, script).unwrap();
    fs::set_permissions(&worker, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    worker
}

/// `sh -c 'timeout 77 worker'` and SIGTERM to mpsync: sh dies of it at once, and `timeout` (a group of its
/// own), now init's, waits for the worker's shutdown. The worker gets SIGTERM, not the SIGHUP the kernel
/// sends a stopped group that is orphaned (the job is continued children first), and the lease is released
/// only after it is done: what mpsync saw of the job when it signalled it stays the job.
fn a_worker_under_timeout_gets_sigterm_and_is_waited_for_after_its_parent_died_of_it(env: &TestEnv) {
    let name = env.lease_name("timeout-worker");
    let (log, ready) = (env.path("log"), env.path("ready"));
    let worker = graceful_worker(env, &log, &ready);
    let script = format!("timeout 77 {}", worker.display());
    let mut lock = env.spawn(["lock", &name, "--", "sh", "-c", &script]);
    wait_for_file(&ready, "ready");
    lock.signal(Signal::SIGTERM);
    lock.wait_for(PATIENCE).expect("mpsync exits");
    let said = fs::read_to_string(&log).unwrap_or_default();
    assert!(said.starts_with("SIGTERM") && !said.contains("SIGHUP"), "the worker must get SIGTERM only: {said:?}");
    assert!(said.contains("done"), "the lease was released before the worker was done: {said:?}\n{}", lock.stderr());
}

/// A `set -m` script waits for its job with WUNTRACED: the stop mpsync puts the job in before it signals
/// it must not show. The script's job ends on SIGTERM with 0, and so do the script and mpsync.
fn a_job_control_shell_sees_its_job_end_not_stop(env: &TestEnv) {
    let name = env.lease_name("set-m");
    let (log, ready) = (env.path("log"), env.path("ready"));
    let worker = graceful_worker(env, &log, &ready);
    let script = format!("set -m; trap 'true' TERM; {}; exit $?", worker.display());
    let mut lock = env.spawn(["lock", &name, "--", "bash", "-c", &script]);
    wait_for_file(&ready, "ready");
    lock.signal(Signal::SIGTERM);
    let status = lock.wait_for(PATIENCE).expect("mpsync exits");
    assert_eq!(status.code(), Some(0), "{}", lock.stderr());
    assert_eq!(fs::read_to_string(&log).unwrap_or_default(), "SIGTERM\ndone\n");
}

/// Live processes (zombies count as dead) whose command line contains `marker`.
fn running_with_marker(marker: &str) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != std::process::id() as i32)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.windows(marker.len()).any(|window| window == marker.as_bytes()))
        })
        .filter(|pid| alive(*pid))
        .collect()
}

/// A child that leaves mpsync no file descriptor to spare (prlimit(1) on its parent) makes /proc unreadable
/// to it for a while: not knowing is not "gone". mpsync waits, finds the leftover once it can read /proc
/// again, and stops it before the release. Only the soft limit moves (raising it back needs no privilege);
/// changing another process's limits needs root here.
fn a_proc_mpsync_cannot_read_for_want_of_descriptors_holds_the_release(env: &TestEnv) {
    let prlimit = std::process::Command::new("prlimit").arg("--version").stdout(Stdio::null()).status();
    if !nix::unistd::geteuid().is_root() || !prlimit.is_ok_and(|status| status.success()) {
        eprintln!("SKIPPED: needs root and prlimit(1)");
        return;
    }
    let name = env.lease_name("emfile");
    let worker = env.path("worker");
    // The worker and the one that gives the descriptors back are in sessions of their own: mpsync, a
    // subreaper, can find them only through /proc. With a limit of 3 mpsync opens no new descriptor; those
    // it has stay open.
    // Both must have their sessions before the child exits, or the stop of its group would take them.
    let script = format!(
        "setsid sleep 1000 & w=$!; echo $w > {w}; \
         setsid sh -c \"sleep 1; prlimit --pid $PPID --nofile=1024:\" & r=$!; \
         for p in $w $r; do while [ \"$(cut -d' ' -f6 /proc/$p/stat)\" != $p ]; do sleep 0.01; done; done; \
         prlimit --pid $PPID --nofile=3:; exit 0",
        w = worker.display(),
    );
    let args = ["lock", &name, "--subreaper", "--grace", "5s", "--lease-duration", "60s", "--renew-deadline", "40s"];
    let done = Proc::spawn(env.mpsync(args.into_iter().chain(["--", "sh", "-c", &script])), &env.dir).finish();
    done.assert_code(0);
    let worker_pid = read_pid(&worker);
    assert!(!alive(worker_pid), "the worker must be stopped before the lease is released:\n{}", done.stderr);
}

/// Under `unshare --pid --fork --mount-proc`, mpsync is PID 1: it reaps orphaned zombies and still
/// returns the main child's exact status.
/// Found by review (helper-73): as PID 1, where no job-control stop can be carried out, a child that
/// stopped itself with SIGTSTP stayed stopped for good, with the lease held for it. It goes on.
#[test]
fn as_pid_1_a_child_that_stops_itself_goes_on() {
    let probe = std::process::Command::new("unshare").args(["--pid", "--fork", "--mount-proc", "true"]).status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: `unshare --pid --fork --mount-proc` is not permitted here (needs root or user namespaces)");
        return;
    }
    let env = TestEnv::file();
    let name = env.lease_name("pid1-tstp");
    let mut command = std::process::Command::new("unshare");
    command.args(["--pid", "--fork", "--mount-proc", env!("CARGO_BIN_EXE_mpsync"), "lock", &name, "--"]);
    command.args(["sh", "-c", "kill -TSTP $$; echo went on; exit 4"]);
    scrub(&mut command);
    command.env("MPSYNC_BACKEND", "file").env("MPSYNC_LOCK_DIR", env.lock_dir()).stdin(Stdio::null());
    let done = Proc::spawn(command, &env.dir).finish();
    done.assert_code(4);
    assert!(done.stdout.contains("went on"), "{}", done.stdout);
}

/// As PID 1, the kernel discards a signal that has no handler: a SIGTERM that came before mpsync had set up
/// its signal thread (a pod deleted as it starts) was lost, and mpsync went on to take the lease and run the
/// child. The stop is kept now, and ends mpsync before anything is acquired (143). mpsync is held in that
/// window on purpose by a shim (`pauseearly.c`), while the test sends the signal.
#[test]
fn as_pid_1_a_stop_signal_before_the_handlers_is_kept() {
    a_stop_signal_before_the_handlers_is_kept_as_pid_1(nix::libc::SIGTERM, 143);
}

/// The same for systemd images' STOPSIGNAL, SIGRTMIN+3, which mpsync takes as SIGTERM: it was still lost in
/// that window (found by review, helper-197).
#[test]
fn as_pid_1_a_real_time_stop_signal_before_the_handlers_is_kept() {
    a_stop_signal_before_the_handlers_is_kept_as_pid_1(nix::libc::SIGRTMIN() + 3, 143);
}

fn a_stop_signal_before_the_handlers_is_kept_as_pid_1(signal: i32, code: i32) {
    let probe = std::process::Command::new("unshare").args(["--pid", "--fork", "--mount-proc", "true"]).status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: `unshare --pid --fork --mount-proc` is not permitted here (needs root or user namespaces)");
        return;
    }
    let env = TestEnv::file();
    let shim = build_shim(&env, "pauseearly");
    let pause = env.path("pause");
    fs::create_dir_all(&pause).unwrap();
    let ran = env.path("ran");
    let name = env.lease_name("pid1-early");
    let mut command = std::process::Command::new("unshare");
    command.args(["--pid", "--fork", "--mount-proc", env!("CARGO_BIN_EXE_mpsync"), "lock", &name, "--"]);
    command.args(["sh", "-c", &format!("touch {}", ran.display())]);
    scrub(&mut command);
    command.env("MPSYNC_BACKEND", "file").env("MPSYNC_LOCK_DIR", env.lock_dir()).stdin(Stdio::null());
    command.env("LD_PRELOAD", &shim).env("MPSYNC_TEST_PAUSE_DIR", &pause);
    let unshare = Proc::spawn(command, &env.dir);
    wait_until("mpsync to pause before its handlers", || pause.join("paused").exists());
    // mpsync, PID 1 inside, is unshare's only child.
    let children = format!("/proc/{0}/task/{0}/children", unshare.pid());
    let mpsync: i32 = fs::read_to_string(&children).unwrap().trim().parse().expect("unshare's one child");
    // SAFETY: kill(2) with a pid and a signal number (nix's `Signal` has no real-time signals).
    assert_eq!(unsafe { nix::libc::kill(mpsync, signal) }, 0);
    fs::write(pause.join("go"), "").unwrap();
    let done = unshare.finish();
    assert!(!ran.exists(), "the child ran after the stop signal {signal}:\n{}", done.stderr);
    done.assert_code(code);
    // Nothing was left held.
    env.run(["lock", "--no-wait", &name, "--", "true"]).assert_code(0);
}

#[test]
fn as_pid_1_mpsync_reaps_orphans_and_returns_the_childs_status() {
    let probe = std::process::Command::new("unshare").args(["--pid", "--fork", "--mount-proc", "true"]).status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: `unshare --pid --fork --mount-proc` is not permitted here (needs root or user namespaces)");
        return;
    }
    let env = TestEnv::file();
    let name = env.lease_name("pid1");
    let script = r#"[ "$PPID" = 1 ] || { echo "mpsync is not PID 1 (PPID $PPID)"; exit 90; }
        sh -c 'sleep 0.2 &'
        i=0
        while :; do
          zombies=$(cat /proc/[0-9]*/stat 2>/dev/null | awk '$3 == "Z"' | wc -l)
          sleepers=$(grep -lx sleep /proc/[0-9]*/comm 2>/dev/null | wc -l)
          [ "$zombies" -eq 0 ] && [ "$sleepers" -eq 0 ] && break
          i=$((i+1)); [ $i -gt 600 ] && { echo "zombies left: $zombies"; exit 91; }
          sleep 0.05
        done
        echo reaped
        exit 7"#;
    let mut command = std::process::Command::new("unshare");
    command.args([
        "--pid",
        "--fork",
        "--mount-proc",
        env!("CARGO_BIN_EXE_mpsync"),
        "lock",
        &name,
        "--",
        "sh",
        "-c",
        script,
    ]);
    scrub(&mut command);
    command.env("MPSYNC_BACKEND", "file").env("MPSYNC_LOCK_DIR", env.lock_dir()).stdin(Stdio::null());
    let done = Proc::spawn(command, &env.dir).finish();
    done.assert_code(7);
    assert!(done.stdout.contains("reaped"), "{}", done.stdout);
}

/// Under `unshare --pid --fork` without `--mount-proc`, /proc is the parent namespace's: mpsync cannot find
/// the child's job in it, and says so.
#[test]
fn a_proc_of_another_pid_namespace_is_warned_about() {
    let probe = std::process::Command::new("unshare").args(["--pid", "--fork", "true"]).status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: `unshare --pid --fork` is not permitted here (needs root or user namespaces)");
        return;
    }
    let env = TestEnv::file();
    let name = env.lease_name("otherns");
    let mut command = std::process::Command::new("unshare");
    command.args(["--pid", "--fork", env!("CARGO_BIN_EXE_mpsync"), "lock", &name, "--", "true"]);
    scrub(&mut command);
    command.env("MPSYNC_BACKEND", "file").env("MPSYNC_LOCK_DIR", env.lock_dir()).stdin(Stdio::null());
    let done = Proc::spawn(command, &env.dir).finish();
    done.assert_code(0);
    assert!(done.stderr.contains("another PID namespace"), "{}", done.stderr);
    // With its own /proc, no such word.
    let done = env.run(["lock", &name, "--", "true"]);
    done.assert_code(0);
    assert!(!done.stderr.contains("another PID namespace"), "{}", done.stderr);
}

/// In a pseudo-terminal, the child owns the terminal: it reads the keyboard, one Ctrl-C stops it (and
/// mpsync exits 130), and the terminal is left as it was.
#[test]
fn in_a_terminal_the_child_reads_it_and_ctrl_c_stops_it() {
    use nix::pty::openpty;
    use nix::sys::termios::tcgetattr;
    let env = TestEnv::file();
    let name = env.lease_name("tty");
    let pty = openpty(None, None).expect("openpty");
    let before = tcgetattr(&pty.slave).expect("tcgetattr");
    let slave = pty.slave.as_raw_fd();
    let script = "read line; echo \"got:$line\"; exec sleep 1000";
    let mut command = env.mpsync(["lock", &name, "--", "sh", "-c", script]);
    let stdio = || Stdio::from(pty.slave.try_clone().unwrap());
    command.stdin(stdio()).stdout(stdio()).stderr(stdio());
    // SAFETY: setsid and ioctl(TIOCSCTTY) are async-signal-safe; they make the pty mpsync's
    // controlling terminal, with mpsync's group in the foreground, as a shell would.
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if nix::libc::ioctl(0, nix::libc::TIOCSCTTY as _, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let _ = slave;
    let mut child = command.spawn().unwrap();
    let mut master = fs::File::from(pty.master);
    master.write_all(b"hello\n").unwrap();
    let output = read_until(&mut master, "got:hello");
    assert!(output.contains("got:hello"), "child did not read the terminal: {output:?}");
    // Ctrl-C, as typed: the terminal driver sends SIGINT to the foreground group, the child's.
    master.write_all(&[3]).unwrap();
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "mpsync did not exit after Ctrl-C");
        std::thread::sleep(Duration::from_millis(10));
    };
    // 130 as a shell sees it: mpsync dies of SIGINT as its child did (or, before the run loop reports the
    // child's death as such, exits 130).
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.code().or(status.signal().map(|signal| 128 + signal)), Some(130), "{status}");
    let after = tcgetattr(&pty.slave).expect("tcgetattr");
    assert_eq!(format!("{before:?}"), format!("{after:?}"), "terminal settings changed");
}

fn read_until(master: &mut fs::File, needle: &str) -> String {
    let (sender, receiver) = std::sync::mpsc::channel();
    let mut reader = master.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 1024];
        while let Ok(n) = reader.read(&mut buffer) {
            if n == 0 || sender.send(buffer[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let deadline = Instant::now() + PATIENCE;
    while !seen.contains(needle) && Instant::now() < deadline {
        if let Ok(bytes) = receiver.recv_timeout(Duration::from_millis(100)) {
            seen.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    seen
}

/// The child's parent-death signal fires when the *thread* that forked it exits. mpsync forks from its
/// main thread, so a helper thread that ends (tokio's blocking pool lets idle threads go after 10 s;
/// resolving a host name uses one) must not kill the child. The kubeconfig names `localhost`, so the
/// client resolves it on such a thread, and the child outlives the pool's 10 s keep-alive.
#[test]
fn child_outlives_mpsyncs_helper_threads() {
    if TestEnv::real_cluster() {
        return;
    }
    let env = TestEnv::kube();
    let yaml = env.server().unwrap().kubeconfig_yaml("default").replace("127.0.0.1", "localhost");
    let kubeconfig = env.path("localhost-kubeconfig");
    fs::write(&kubeconfig, yaml).unwrap();
    let name = env.lease_name("threads");
    let mut command = env.mpsync(["lock", &name, "--", "sh", "-c", "sleep 11.5; exit 3"]);
    command.env("MPSYNC_KUBECONFIG", &kubeconfig);
    Proc::spawn(command, &env.dir).finish().assert_code(3);
}

/// Issue 13: the tests below are about job control, inherited signal state, the guard, and what escapes.
mod issue13 {
    use std::fs;
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::time::Duration;

    use nix::sys::signal::Signal;

    use crate::support::pty::state;
    use crate::support::*;

    /// Long timings for tests that stop and continue mpsync: a slow machine must not turn a short stop into
    /// a lost lease.
    const SLOW: &[&str] = &["--lease-duration", "30s", "--renew-deadline", "20s", "--retry-period", "2s"];

    /// mpsync in a process group of its own, as a shell starts a job, so that job control can stop it.
    /// (The children that job control stops are bash loops: dash runs commands with vfork(2), and a vforked
    /// child stopped before its exec leaves its parent in uninterruptible sleep, not stopped.)
    fn job(env: &TestEnv, args: &[&str]) -> Proc {
        let mut command = env.mpsync(args);
        command.process_group(0);
        Proc::spawn(command, &env.dir)
    }

    /// A holder stopped by `kill -TSTP` (issue 13, item 1): its child stops first, and when its lease expires
    /// and another holder starts, the stopped holder's child has not run since.
    #[test]
    fn sigtstp_stops_the_child_and_no_other_holder_starts_while_it_could_run() {
        let env = TestEnv::file();
        let name = env.lease_name("overrun");
        let (log, pid) = (env.path("log"), env.path("a.pid"));
        let a_script =
            format!("echo $$ > {}; while :; do echo A-alive >> {}; sleep 0.2; done", pid.display(), log.display());
        let a = job(&env, &fast(&["lock", &name], &["bash", "-c", &a_script]));
        let child = read_pid(&pid);
        wait_for_file(&log, "A-alive");
        a.signal(Signal::SIGTSTP);
        let states = || (state(a.pid()), state(child));
        wait_until("A and its child to stop", || states() == (Some('T'), Some('T')));
        let b = env.run(fast(&["lock", &name], &["sh", "-c", &format!("echo B-start >> {}", log.display())]));
        b.assert_code(0);
        // Still stopped, or killed by A's guard at the lease's deadline: never running.
        assert!(matches!(state(child), Some('T') | Some('Z') | None), "A's child ran while B held the lease");
        let lines: Vec<String> = fs::read_to_string(&log).unwrap().lines().map(str::to_owned).collect();
        let b_at = lines.iter().position(|line| line == "B-start").unwrap();
        assert!(lines[b_at + 1..].iter().all(|line| line != "A-alive"), "A's child ran after B started: {lines:?}");
        // Dropping `a` SIGKILLs it; its guard kills the stopped group.
    }

    /// Ctrl-Z never stops mpsync with its lock directory locked (which would keep every other lease of the
    /// directory from being written while it stays stopped): it finishes a write in progress first.
    #[test]
    fn a_holder_stopped_by_job_control_never_keeps_the_lock_directory_locked() {
        let env = TestEnv::file();
        let name = env.lease_name("tstp-dir");
        // Renewing all the time: a write is in progress at any moment with a good chance. A long renew
        // deadline: stops back to back leave the renewals little time on a loaded machine (one run went 4 s
        // without one, and lost the lease).
        let timings = ["--lease-duration", "20s", "--renew-deadline", "15s", "--retry-period", "10ms", "--grace", "2s"];
        let args: Vec<&str> = ["lock", &name]
            .into_iter()
            .chain(timings)
            .chain(["--", "bash", "-c", "while :; do sleep 0.2; done"])
            .collect();
        let a = job(&env, &args);
        wait_until("A to hold the lease", || env.holder(&name).is_some_and(|holder| !holder.is_empty()));
        for round in 0..300 {
            a.signal(Signal::SIGTSTP);
            wait_until("A to stop", || state(a.pid()) == Some('T'));
            assert!(!holds_flock(a.pid(), &env.lock_dir()), "round {round}: stopped with the lock directory locked");
            a.signal(Signal::SIGCONT);
            wait_until("A to run again", || state(a.pid()) != Some('T'));
            if round % 50 == 49 {
                let renewed = || env.get(&name).and_then(|(_, spec)| spec.renew_time);
                let before = renewed();
                wait_until("a renewal between the stops", || renewed() != before);
            }
        }
    }

    /// The run loop's half of item 1: continued after its lease expired, a holder kills its stopped child
    /// without letting it run again, and exits 123.
    #[test]
    fn a_holder_continued_after_its_lease_expired_kills_its_child_without_continuing_it() {
        let env = TestEnv::file();
        let name = env.lease_name("expired");
        let (log, pid) = (env.path("log"), env.path("a.pid"));
        let a_script =
            format!("echo $$ > {}; while :; do echo A-alive >> {}; sleep 0.2; done", pid.display(), log.display());
        let mut a = job(&env, &fast(&["lock", &name], &["bash", "-c", &a_script]));
        let child = read_pid(&pid);
        wait_for_file(&log, "A-alive");
        a.signal(Signal::SIGTSTP);
        wait_until("A and its child to stop", || state(a.pid()) == Some('T') && state(child) == Some('T'));
        let b_script = format!("echo B-start >> {}; sleep 3; echo B-end >> {}", log.display(), log.display());
        let b = env.spawn(fast(&["lock", &name], &["sh", "-c", &b_script]));
        wait_for_file(&log, "B-start");
        a.signal(Signal::SIGCONT);
        assert_eq!(a.wait_for(PATIENCE).and_then(|status| status.code()), Some(123), "{}", a.stderr());
        assert!(!alive(child));
        b.finish().assert_code(0);
        let lines: Vec<String> = fs::read_to_string(&log).unwrap().lines().map(str::to_owned).collect();
        let b_at = lines.iter().position(|line| line == "B-start").unwrap();
        assert!(lines[b_at + 1..].iter().all(|line| line != "A-alive"), "A's child ran after B started: {lines:?}");
    }

    /// Stopped and continued well within the renew deadline, a holder keeps its lease and its child runs on.
    #[test]
    fn a_holder_continued_in_time_keeps_its_lease_and_its_child() {
        let env = TestEnv::file();
        let name = env.lease_name("intime");
        let beat = env.path("beat");
        let script = format!("while :; do date +%s%N > {}; sleep 0.1; done", beat.display());
        let mut a =
            job(&env, &[&["lock", &name, "--identity", "the-holder"], SLOW, &["--", "bash", "-c", &script]].concat());
        wait_for_file(&beat, "\n");
        let child = stat_child(a.pid());
        a.signal(Signal::SIGTSTP);
        wait_until("A and its child to stop", || state(a.pid()) == Some('T') && state(child) == Some('T'));
        a.signal(Signal::SIGCONT);
        let stopped_beat = fs::read_to_string(&beat).unwrap();
        wait_until("the child to beat again", || fs::read_to_string(&beat).unwrap() != stopped_beat);
        assert_eq!(env.holder(&name).as_deref(), Some("the-holder"));
        a.signal(Signal::SIGTERM);
        assert_eq!(a.wait_for(PATIENCE).and_then(|status| status.code()), Some(143), "{}", a.stderr());
    }

    /// The child of mpsync (a process whose parent is `parent`).
    fn stat_child(parent: i32) -> i32 {
        let mut found = None;
        wait_until("mpsync's child", || {
            found = fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
                .find(|pid| {
                    crate::support::pty::stat_field(*pid, 4) == Some(parent)
                        && fs::read_to_string(format!("/proc/{pid}/comm"))
                            .is_ok_and(|comm| comm.trim() != "mpsync-guard")
                });
            found.is_some()
        });
        found.unwrap()
    }

    /// Issue 13, item 2: a stopped job does not hold the lease against a stop request. `kill -TERM` then
    /// `kill -CONT` (what bash's `kill %1` does to a stopped job): the child is continued and acts on SIGTERM.
    #[test]
    fn sigterm_to_a_stopped_holder_ends_its_child() {
        let env = TestEnv::file();
        let name = env.lease_name("stopterm");
        let (got, pid) = (env.path("got"), env.path("pid"));
        let script = format!(
            "trap 'echo term > {}; exit 5' TERM; echo $$ > {}; while :; do sleep 0.1; done",
            got.display(),
            pid.display()
        );
        let mut a = job(&env, &[&["lock", &name], SLOW, &["--", "bash", "-c", &script]].concat());
        let child = read_pid(&pid);
        a.signal(Signal::SIGTSTP);
        wait_until("A and its child to stop", || state(a.pid()) == Some('T') && state(child) == Some('T'));
        a.signal(Signal::SIGTERM);
        a.signal(Signal::SIGCONT);
        assert_eq!(a.wait_for(PATIENCE).and_then(|status| status.code()), Some(5), "{}", a.stderr());
        assert_eq!(fs::read_to_string(&got).unwrap().trim(), "term");
        assert_eq!(env.holder(&name).as_deref(), Some(""));
    }

    /// Issue 13, item 3: the guard is called mpsync-guard (so `killall mpsync` spares it), and when it is
    /// killed another takes its place at once, which kills the group when mpsync is SIGKILLed.
    #[test]
    fn the_guard_is_named_and_replaced_when_killed() {
        let env = TestEnv::file();
        let name = env.lease_name("guard");
        let worker = env.path("worker");
        let script = format!("sleep 1000 & echo $! > {}; wait", worker.display());
        let mpsync = env.spawn(["lock", &name, "--", "sh", "-c", &script]);
        let worker_pid = read_pid(&worker);
        let guards = || guards_of(mpsync.pid());
        let mut first = vec![];
        wait_until("a guard named mpsync-guard", || {
            first = guards();
            first.len() == 1
        });
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(first[0]), Signal::SIGKILL).unwrap();
        wait_until("a new guard", || guards().iter().any(|pid| *pid != first[0]));
        mpsync.signal(Signal::SIGKILL);
        wait_until("the worker to die with mpsync", || !alive(worker_pid));
    }

    /// Found by review (rv242): the guard dies while mpsync cannot start another (the OOM killer takes the
    /// guard while the pod is at its memory or pids limit; here no file descriptor to spare, for a moment).
    /// mpsync said "trying again at the next spawn", and a `lock` has no next spawn: the job ran unguarded
    /// for the rest of its life, and a SIGKILL of mpsync left its worker running beside the next holder.
    /// Now mpsync starts a guard again as soon as it can, while the child runs.
    #[test]
    fn a_guard_that_could_not_be_restarted_is_started_again_while_the_child_runs() {
        let prlimit =
            std::process::Command::new("prlimit").arg("--version").stdout(std::process::Stdio::null()).status();
        if !nix::unistd::geteuid().is_root() || !prlimit.is_ok_and(|status| status.success()) {
            eprintln!("SKIPPED: needs root and prlimit(1)");
            return;
        }
        let env = TestEnv::kube();
        let name = env.lease_name("guardless");
        let worker = env.path("worker");
        let script = format!("sleep 1000 & echo $! > {}; wait", worker.display());
        let mpsync = env.spawn(fast(&["lock", &name], &["sh", "-c", &script]));
        let worker_pid = read_pid(&worker);
        let guards = || guards_of(mpsync.pid());
        let mut first = vec![];
        wait_until("a guard", || {
            first = guards();
            first.len() == 1
        });
        let nofile = |soft: &str| {
            let pid = mpsync.pid().to_string();
            let limit = format!("--nofile={soft}:");
            let status = std::process::Command::new("prlimit").args(["--pid", &pid, &limit]).status().unwrap();
            assert!(status.success(), "prlimit --pid {pid} {limit}");
        };
        // No descriptor to spare for a moment: the guard's pipe cannot be made. The guard dies meanwhile.
        nofile("3");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(first[0]), Signal::SIGKILL).unwrap();
        wait_until("mpsync to fail to start a new guard", || mpsync.stderr().contains("cannot start a guard process"));
        nofile("1024");
        wait_until("a new guard, while the child runs", || guards().iter().any(|pid| *pid != first[0]));
        mpsync.wait_for_log("guard process started again");
        mpsync.signal(Signal::SIGKILL);
        wait_until("the worker to die with mpsync", || !alive(worker_pid));
    }

    /// The guards (`mpsync-guard`, alive) whose parent is `mpsync`.
    fn guards_of(mpsync: i32) -> Vec<i32> {
        fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| crate::support::pty::stat_field(*pid, 4) == Some(mpsync))
            .filter(|pid| fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "mpsync-guard"))
            .filter(|pid| alive(*pid))
            .collect()
    }

    /// A subreaper that reaps every child it is handed, as tini does as a container's PID 1, in the test's
    /// session and process group; it runs its arguments and writes their pid to `$PID_FILE`.
    const SUBREAPER: &str = r#"
        syscall(157, 36, 1, 0, 0, 0) == 0 or die "prctl: $!";   # PR_SET_CHILD_SUBREAPER (x86_64)
        my $pid = fork() // die "fork: $!";
        if ($pid == 0) { exec(@ARGV) or die "exec: $!"; }
        open(my $f, ">", $ENV{PID_FILE}) or die; print $f "$pid\n"; close($f);
        while (waitpid(-1, 0) > 0) {}
    "#;

    /// Found by review (rv223): a guard stopped by someone (`kill -STOP` of it, or `pkill -STOP mpsync`, which
    /// matches both, then `pkill -CONT -x mpsync`) was never noticed, and stayed stopped for the rest of the
    /// job: a SIGKILL of mpsync then left the job running. mpsync continues it at once.
    #[test]
    fn a_guard_stopped_by_someone_is_continued_at_once() {
        let env = TestEnv::file();
        let name = env.lease_name("guard-stopped");
        let mpsync = env.spawn(["lock", &name, "--", "sleep", "1000"]);
        let mut guards = vec![];
        wait_until("mpsync's guard", || {
            guards = guards_of(mpsync.pid());
            guards.len() == 1
        });
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(guards[0]), Signal::SIGSTOP).unwrap();
        wait_until("mpsync to see its guard stopped", || {
            mpsync.stderr().contains("the guard process was stopped; continuing it")
        });
        wait_until("the guard to run again", || {
            crate::support::pty::state(guards[0]).is_some_and(|state| state != 'T')
        });
        mpsync.signal(Signal::SIGTERM);
    }

    /// Found by review (rv223): mpsync frozen, its guard stopped, then mpsync SIGKILLed (the OOM killer), under a
    /// subreaper of its session (tini as a container's PID 1): the guard's group was not orphaned, so nothing
    /// continued it, and the job ran on beside the next holder's child. mpsync's death continues it now (its
    /// parent-death signal is SIGCONT), and it ends the job.
    #[test]
    fn a_guard_stopped_when_mpsync_is_killed_still_ends_the_job() {
        let env = TestEnv::file();
        let name = env.lease_name("guard-stopped-kill");
        let worker = env.path("worker");
        let script = format!("sleep 1000 & echo $! > {}; wait", worker.display());
        let inner = env.mpsync(["lock", &name, "--", "sh", "-c", &script]);
        let pid_file = env.path("mpsync-pid");
        let mut command = std::process::Command::new("perl");
        command.arg("-e").arg(SUBREAPER).arg(inner.get_program()).args(inner.get_args());
        for (key, value) in inner.get_envs() {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        command.env("PID_FILE", &pid_file).stdin(std::process::Stdio::null());
        let mut reaper = Proc::spawn(command, &env.dir);
        let mpsync = read_pid(&pid_file);
        let worker_pid = read_pid(&worker);
        let mut guards = vec![];
        wait_until("mpsync's guard", || {
            guards = guards_of(mpsync);
            guards.len() == 1
        });
        let (mpsync_pid, guard) = (nix::unistd::Pid::from_raw(mpsync), nix::unistd::Pid::from_raw(guards[0]));
        nix::sys::signal::kill(mpsync_pid, Signal::SIGSTOP).unwrap();
        wait_until("mpsync to show stopped", || crate::support::pty::state(mpsync) == Some('T'));
        nix::sys::signal::kill(guard, Signal::SIGSTOP).unwrap();
        wait_until("the guard to show stopped", || crate::support::pty::state(guards[0]) == Some('T'));
        nix::sys::signal::kill(mpsync_pid, Signal::SIGKILL).unwrap();
        let ended = within_patience(|| !alive(worker_pid));
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker_pid), Signal::SIGKILL);
        let _ = nix::sys::signal::kill(guard, Signal::SIGKILL);
        reaper.signal(Signal::SIGKILL);
        let _ = reaper.wait_for(PATIENCE);
        assert!(ended, "the job's worker ran on after a SIGKILL of mpsync whose guard was stopped");
    }

    /// Issue 13, item 4: started by a parent that blocks TERM, INT, HUP and CHLD, mpsync still hears a stop
    /// request, and notices its child's exit at once (not at the next renewal).
    #[test]
    fn an_inherited_blocked_mask_does_not_make_mpsync_deaf() {
        let env = TestEnv::file();
        let block = |command: &mut std::process::Command| {
            // SAFETY: sigprocmask only, between fork and exec.
            unsafe {
                command.pre_exec(|| {
                    use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};
                    let mut set = SigSet::empty();
                    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGCHLD] {
                        set.add(signal);
                    }
                    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None).map_err(std::io::Error::from)
                });
            }
        };
        let ready = env.path("ready");
        let script = format!("trap 'exit 3' TERM; echo ready > {}; while :; do sleep 0.05; done", ready.display());
        let mut command = env.mpsync(["lock", &env.lease_name("blocked"), "--", "sh", "-c", &script]);
        block(&mut command);
        let mut lock = Proc::spawn(command, &env.dir);
        wait_for_file(&ready, "ready");
        lock.signal(Signal::SIGTERM);
        assert_eq!(lock.wait_for(PATIENCE).and_then(|status| status.code()), Some(3), "{}", lock.stderr());

        let slow = ["--lease-duration", "60s", "--renew-deadline", "40s", "--retry-period", "20s"];
        let mut command =
            env.mpsync([&["lock", &env.lease_name("blocked-chld")], &slow[..], &["--", "sh", "-c", "exit 4"]].concat());
        block(&mut command);
        let done = Proc::spawn(command, &env.dir).finish();
        done.assert_code(4);
        assert!(done.elapsed < Duration::from_secs(10), "the child's exit was noticed late: {:?}", done.elapsed);
    }

    /// Issue 13, item 8: under nohup (SIGHUP ignored), a SIGHUP is neither handled nor forwarded: mpsync and
    /// its child run on, as `nohup sleep` would.
    #[test]
    fn sighup_ignored_by_nohup_is_neither_handled_nor_forwarded() {
        let env = TestEnv::file();
        let name = env.lease_name("nohup");
        let (usr1, pid) = (env.path("usr1"), env.path("pid"));
        let script = format!(
            "trap 'echo usr1 > {}' USR1; echo $$ > {}; while :; do sleep 0.1; done",
            usr1.display(),
            pid.display()
        );
        let mut command = env.mpsync(["lock", &name, "--", "sh", "-c", &script]);
        // SAFETY: sigaction only, between fork and exec.
        unsafe {
            command.pre_exec(|| {
                use nix::sys::signal::{SigHandler, signal};
                signal(Signal::SIGHUP, SigHandler::SigIgn).map(drop).map_err(std::io::Error::from)
            });
        }
        let mut lock = Proc::spawn(command, &env.dir);
        let child = read_pid(&pid);
        lock.signal(Signal::SIGHUP);
        // A forwarded signal after it: once it arrived, the SIGHUP has long been discarded.
        lock.signal(Signal::SIGUSR1);
        wait_for_file(&usr1, "usr1");
        assert!(alive(lock.pid()) && alive(child), "SIGHUP ended the job: {}", lock.stderr());
        lock.signal(Signal::SIGTERM);
        assert_eq!(lock.wait_for(PATIENCE).and_then(|status| status.code()), Some(143), "{}", lock.stderr());
    }

    /// Issue 13, item 6: after a failed exec the guard is disarmed, so that mpsync's exit does not make it
    /// SIGKILL the dead child's process group (a number the system may have given to another group by then).
    #[test]
    fn a_failed_spawn_disarms_the_guard() {
        if std::process::Command::new("strace").arg("-V").output().is_err() {
            eprintln!("SKIPPED: strace is not installed");
            return;
        }
        let env = TestEnv::file();
        let trace = env.path("trace");
        let mpsync = env!("CARGO_BIN_EXE_mpsync");
        let name = env.lease_name("nospawn");
        // A script whose interpreter is missing: found before the lease is taken, its exec fails after.
        let script = env.path("script");
        fs::write(&script, format!("#!{}\n", env.path("no-such-interpreter").display())).unwrap();
        fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let mut command = std::process::Command::new("strace");
        command.args(["-f", "-qq", "-e", "trace=kill", "-e", "signal=none", "-o"]).arg(&trace);
        command.args([mpsync, "lock", &name, "--"]).arg(&script);
        scrub(&mut command);
        command.env("MPSYNC_BACKEND", "file").env("MPSYNC_LOCK_DIR", env.lock_dir()).stdin(std::process::Stdio::null());
        let done = Proc::spawn(command, &env.dir).finish();
        done.assert_code(126);
        let trace = fs::read_to_string(&trace).unwrap();
        let group_kills: Vec<&str> = trace.lines().filter(|line| line.contains("kill(-")).collect();
        assert!(group_kills.is_empty(), "the guard killed a group after a failed spawn: {group_kills:?}");
    }

    /// Issue 13, item 7, as PID 1: no dying of a signal there, the code 128+N is all there is.
    #[test]
    fn as_pid_1_a_child_dying_of_sigint_gives_exit_code_130() {
        let probe = std::process::Command::new("unshare").args(["--pid", "--fork", "--mount-proc", "true"]).status();
        if !probe.is_ok_and(|s| s.success()) {
            eprintln!("SKIPPED: `unshare --pid --fork --mount-proc` is not permitted here");
            return;
        }
        let env = TestEnv::file();
        let mpsync = env!("CARGO_BIN_EXE_mpsync");
        let mut command = std::process::Command::new("unshare");
        command.args(["--pid", "--fork", "--mount-proc", mpsync, "lock", &env.lease_name("pid1int")]);
        command.args(["--", "sh", "-c", "kill -INT $$"]);
        scrub(&mut command);
        command.env("MPSYNC_BACKEND", "file").env("MPSYNC_LOCK_DIR", env.lock_dir()).stdin(std::process::Stdio::null());
        let done = Proc::spawn(command, &env.dir).finish();
        assert_eq!(done.status.code(), Some(130), "{:?}\n{}", done.status, done.stderr);
    }

    /// Issue 13, item 7: a child that died of SIGINT or SIGQUIT: mpsync dies of the same signal (no core file).
    #[test]
    fn a_child_dying_of_sigint_or_sigquit_makes_mpsync_die_of_it() {
        let env = TestEnv::file();
        for (signal, name) in [(Signal::SIGINT, "INT"), (Signal::SIGQUIT, "QUIT")] {
            let script = format!("ulimit -c 0; kill -{name} $$");
            let lease = env.lease_name("reraise");
            let done = Proc::spawn(env.mpsync(["lock", &lease, "--", "sh", "-c", &script]), &env.dir).finish();
            assert_eq!(done.status.signal(), Some(signal as i32), "{name}: {:?}\n{}", done.status, done.stderr);
            assert!(!done.status.core_dumped(), "{name}: core dumped");
            assert_eq!(env.holder(&lease).as_deref(), Some(""), "{name}: released");
        }
        // A child that *exits* 130 is a code, not a death.
        let done = env.run(["lock", &env.lease_name("code130"), "--", "sh", "-c", "exit 130"]);
        assert_eq!(done.status.code(), Some(130));
    }

    /// "#!/missing/interpreter": say which file is missing, as bash does, and exit 126 (the command was
    /// found). The interpreter's path is the test's own: `/nonexistent` (nobody's home) comes into being
    /// when a tool run with that HOME writes its cache there.
    #[test]
    fn a_script_with_a_missing_interpreter_names_it() {
        let env = TestEnv::file();
        let script = env.path("script");
        let interpreter = env.path("no-such-interpreter");
        fs::write(&script, format!("#!{}\necho hi\n", interpreter.display())).unwrap();
        fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let done = env.run(["lock".as_ref(), env.lease_name("badint").as_ref(), "--".as_ref(), script.as_os_str()]);
        done.assert_code(126);
        let expected = format!("bad interpreter: {}: No such file or directory", interpreter.display());
        assert!(done.stderr.contains(&expected), "{}", done.stderr);
        assert!(done.stderr.contains(&script.display().to_string()), "{}", done.stderr);
    }

    /// `timeout` makes a process group of its own: stopping the job reaches it too, while its parent lives.
    #[test]
    fn processes_that_left_the_group_are_stopped_with_the_child() {
        let env = TestEnv::file();
        let sleep = env.path("sleep.pid");
        let script = format!("timeout 77 sh -c 'echo $$ > {}; exec sleep 77'", sleep.display());
        let mut lock = env.spawn(["lock", &env.lease_name("timeout"), "--", "sh", "-c", &script]);
        let sleep_pid = read_pid(&sleep);
        lock.signal(Signal::SIGTERM);
        lock.wait_for(PATIENCE).expect("mpsync exits");
        wait_until("the sleep under timeout to die", || !alive(sleep_pid));
    }

    /// With --subreaper, what the child left behind in other groups is adopted, and stopped before the lease
    /// is released.
    #[test]
    fn as_subreaper_adopted_processes_are_stopped_before_release() {
        let env = TestEnv::file();
        let name = env.lease_name("adopted");
        let sleep = env.path("sleep.pid");
        let script = format!(
            "timeout 77 sh -c 'echo $$ > {0}; exec sleep 77' & while [ ! -s {0} ]; do sleep 0.05; done; exit 0",
            sleep.display()
        );
        let done = env.run(["lock", &name, "--subreaper", "--", "sh", "-c", &script]);
        done.assert_code(0);
        let sleep_pid = read_pid(&sleep);
        assert!(!alive(sleep_pid), "the adopted sleep outlived mpsync");
        assert_eq!(env.holder(&name).as_deref(), Some(""));
    }
}

/// Found by review (helper-101): a stop signal that comes while mpsync waits for what the child left
/// behind (`--grace`, after the child's exit; `kubectl delete pod` then) skipped the release, and the
/// lease was left held by a process that had gone. The child is gone, and the release is one bounded call.
fn a_stop_signal_during_the_leftovers_grace_still_releases(env: &TestEnv) {
    let name = env.lease_name("termfinish");
    // The child exits at once; its leftover ignores TERM and lives 2 s more (within the 4 s grace).
    let script = "trap '' TERM; (sleep 2; :) & exit 5";
    let mut lock = env.spawn(["lock", &name, "-v", "--identity", "h", "--", "sh", "-c", script]);
    wait_until("the child to exit", || lock.stderr().contains("child exited"));
    lock.signal(Signal::SIGTERM);
    assert_eq!(lock.wait_for(PATIENCE).and_then(|s| s.code()), Some(5), "{}", lock.stderr());
    assert_eq!(env.holder(&name).as_deref(), Some(""), "released: {}", lock.stderr());
}

/// Found by review (helper-104): a second stop signal that comes while the release is retried (a throttled API server: the
/// release is retried for its whole budget so that "a second of throttling does not leave the lease
/// held") makes mpsync give up the release and exit: the lease is left held by a process that has gone,
/// until it expires. The same signal 1 ms earlier (during the leftovers' grace) is drained and the
/// release goes ahead (c139e30).
#[test]
fn a_second_stop_signal_during_a_throttled_release_still_releases() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let name = env.lease_name("second-stop");
    let ready = env.path("ready");
    let script = format!("trap 'exit 0' TERM; echo up > {}; while :; do sleep 0.05; done", ready.display());
    let mut lock = env.spawn(["lock", &name, "-v", "--identity", "h", "--", "sh", "-c", &script]);
    lock.wait_for_file(&ready, "up");
    // The release (an update) is refused as throttled for a while: mpsync retries it.
    server.fail_next_on(&format!("update:{name}"), 1_000_000, 429);
    let before = server.requests().len();
    lock.signal(Signal::SIGTERM);
    let retried = server.wait_for_requests(
        |log| log[before..].iter().filter(|r| r.verb == "update" && r.status == 429).count() >= 2,
        PATIENCE,
    );
    assert!(retried, "the release is retried: {}", lock.stderr());
    // A second TERM (the user, or a supervisor, insisting) while the release is retried.
    lock.signal(Signal::SIGTERM);
    server.fail_next_on(&format!("update:{name}"), 0, 429);
    let status = lock.wait_for(PATIENCE).expect("mpsync exits");
    assert_eq!(status.code(), Some(0), "{}", lock.stderr());
    assert_eq!(env.holder(&name).as_deref(), Some(""), "released: {}", lock.stderr());
}

both_backends!(a_fatal_signal_beyond_the_four_still_ends_the_job_and_releases);

/// Found by review (helper-113): a catchable signal whose default action ends a process, other than the
/// TERM, INT, HUP and QUIT mpsync handled (SIGALRM from `timeout -s ALRM`, SIGXFSZ or SIGXCPU from a
/// ulimit, SIGPWR as a container's STOPSIGNAL), killed mpsync at once: the guard SIGKILLed the child with
/// no `--kill-signal` and no grace, and the lease stayed held by a dead process until it expired. It now
/// ends the job and releases, as SIGTERM does, and mpsync exits 128+N. (Not SIGXFSZ: the kernel raises it
/// on mpsync's own writes, and mpsync ignores it; helper-116.)
fn a_fatal_signal_beyond_the_four_still_ends_the_job_and_releases(env: &TestEnv) {
    for signal in [Signal::SIGALRM, Signal::SIGXCPU, Signal::SIGPWR, Signal::SIGABRT] {
        let name = env.lease_name("fatal-signal");
        let worker = env.path(&format!("worker-{}", signal as i32));
        let mut lock = env.spawn(["lock", &name, "--", "sh", "-c", &worker_script(&worker)]);
        let worker_pid = read_pid(&worker);
        lock.signal(signal);
        let status = lock.wait_for(PATIENCE).expect("mpsync ends");
        wait_until("the background worker to die", || !alive(worker_pid));
        assert_eq!(
            env.holder(&name).as_deref(),
            Some(""),
            "{signal}: mpsync ended ({status:?}) but left the lease held by a dead process: {}",
            lock.stderr()
        );
        assert_eq!(status.code(), Some(128 + signal as i32), "{signal}: {}", lock.stderr());
    }
}

/// A CronJob pod deleted while its first acquisition (a create) is held in etcd: SIGTERM
/// comes with the write in flight. The write lands after mpsync was told to stop: the child must never
/// run, mpsync exits 143, and the lease must not be left held by a process that is gone.
#[test]
fn sigterm_with_the_acquiring_write_in_flight_leaves_no_holder() {
    let env = TestEnv::kube();
    let Some(server) = env.server() else { return };
    let name = env.lease_name("review-inflight");
    let ran = env.path("ran");
    server.set_commit_delay(Duration::from_secs(2));
    let mut lock = env.spawn(["lock", &name, "--", "sh", "-c", &format!("touch {}", ran.display())]);
    assert!(
        server.wait_for_requests(|log| log.iter().any(|r| r.verb == "create" || r.verb == "update"), PATIENCE),
        "the acquiring write was never sent"
    );
    lock.signal(Signal::SIGTERM);
    let status = lock.wait_for(PATIENCE).expect("mpsync ends");
    server.set_commit_delay(Duration::ZERO);
    assert_eq!(status.code(), Some(143), "{}", lock.stderr());
    assert!(!ran.exists(), "the child ran after SIGTERM");
    assert!(
        matches!(env.holder(&name).as_deref(), None | Some("")),
        "left held by a dead process: {:?}; {}",
        env.holder(&name),
        lock.stderr()
    );
}

/// As above, with the write committed at once but its answer late (or never), on a Lease that
/// already exists (the acquisition is an update).
#[test]
fn sigterm_with_the_acquiring_update_answer_late_or_lost_leaves_no_holder() {
    use crate::support::apiserver::AfterCommit;
    for how in [AfterCommit::Delay(Duration::from_secs(3)), AfterCommit::Drop] {
        let env = TestEnv::kube();
        let Some(server) = env.server() else { return };
        let name = env.lease_name("review-late");
        let mut first = env.spawn(["lock", &name, "--", "true"]);
        assert_eq!(first.wait_for(PATIENCE).and_then(|s| s.code()), Some(0), "{}", first.stderr());
        let ran = env.path("ran");
        let before = server.requests().len();
        server.after_commit(1, how);
        let mut lock = env.spawn(["lock", &name, "--", "sh", "-c", &format!("touch {}", ran.display())]);
        assert!(
            server.wait_for_requests(|log| log[before..].iter().any(|r| r.verb == "update"), PATIENCE),
            "the acquiring write was never sent"
        );
        lock.signal(Signal::SIGTERM);
        let status = lock.wait_for(PATIENCE).expect("mpsync ends");
        assert_eq!(status.code(), Some(143), "{}", lock.stderr());
        assert!(!ran.exists(), "the child ran after SIGTERM");
        assert!(
            matches!(env.holder(&name).as_deref(), None | Some("")),
            "left held by a dead process: {:?}; {}",
            env.holder(&name),
            lock.stderr()
        );
    }
}

both_backends!(a_real_time_signal_ends_the_job_and_releases);

/// Found by review (helper-114): the fix above stopped at the named signals. A real-time signal's default
/// action ends a process too, and SIGRTMIN+3 is a container's STOPSIGNAL for systemd images (`docker
/// stop`): mpsync died of it at once, the guard SIGKILLed the child with no grace, and the lease stayed
/// held by a dead process for its whole duration. It is now taken as SIGTERM (exit 143).
fn a_real_time_signal_ends_the_job_and_releases(env: &TestEnv) {
    let name = env.lease_name("rt-signal");
    let worker = env.path("worker");
    let mut lock = env.spawn(["lock", &name, "--", "sh", "-c", &worker_script(&worker)]);
    let worker_pid = read_pid(&worker);
    let rt = nix::libc::SIGRTMIN() + 3;
    // SAFETY: kill(2) on the pid of a child process this test spawned.
    assert_eq!(unsafe { nix::libc::kill(lock.pid(), rt) }, 0);
    let status = lock.wait_for(PATIENCE).expect("mpsync ends");
    wait_until("the background worker to die", || !alive(worker_pid));
    assert_eq!(
        env.holder(&name).as_deref(),
        Some(""),
        "SIGRTMIN+3: mpsync ended ({status:?}) but left the lease held by a dead process: {}",
        lock.stderr()
    );
    assert_eq!(status.code(), Some(143), "{}", lock.stderr());
}

/// Found by review (helper-116): SIGXFSZ is raised by the kernel on mpsync itself when its own write
/// goes past RLIMIT_FSIZE (its log on stderr, a file at the `ulimit -f`). Taken as a stop request, it
/// ended the job before (or while) the child ran: exit 153, no message, a child killed for nothing
/// (and the side-car's drain cut short by its own log line). The write fails instead; the job runs.
#[test]
fn own_log_past_the_file_size_limit_is_no_stop_request() {
    let env = TestEnv::file();
    let name = env.lease_name("review-xfsz");
    let started = env.path("started");
    let go = env.path("go");
    let log = env.path("full.log");
    fs::write(&log, vec![b'x'; 1024]).unwrap();
    let script = format!(
        "exec 2>/dev/null; echo started > {}; while [ ! -e {} ]; do sleep 0.05; done; exit 5",
        started.display(),
        go.display()
    );
    let mut command = env.mpsync(["lock", "-v", &name, "--", "sh", "-c", &script]);
    command.stdout(Stdio::null()).stderr(fs::OpenOptions::new().append(true).open(&log).unwrap());
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            let limit = nix::libc::rlimit { rlim_cur: 1024, rlim_max: nix::libc::RLIM_INFINITY };
            nix::libc::setrlimit(nix::libc::RLIMIT_FSIZE, &limit);
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    let ended_early = |child: &mut std::process::Child| child.try_wait().unwrap();
    wait_until("the child to start, or mpsync to end", || started.exists() || ended_early(&mut child).is_some());
    assert!(started.exists(), "mpsync ended before its child started: {:?}", child.try_wait());
    fs::write(&go, "").unwrap();
    let mut status = None;
    wait_until("mpsync to end", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.unwrap().code(), Some(5), "the child's own exit code");
    assert_eq!(env.holder(&name).as_deref(), Some(""), "released");
}

both_backends!(a_lock_frozen_past_its_deadline_gives_its_own_record_back);

/// Found by review (helper-121): `mpsync lock` frozen (SIGSTOP to mpsync alone) past its renew deadline, with
/// nobody else wanting the lease meanwhile. The guard kills the child; continued, mpsync exits 123. The
/// record is still its own write (nobody wrote the lease since), and the lock task would give it back
/// ("so the next holder need not wait out its duration"), but mpsync exits before that task runs: the
/// record keeps naming a dead process, and the next `lock` waits a whole lease duration for it.
fn a_lock_frozen_past_its_deadline_gives_its_own_record_back(env: &TestEnv) {
    let name = env.lease_name("frozen-own");
    let pid_file = env.path("pid");
    let script = format!("echo $$ > {}; exec sleep 1000", pid_file.display());
    // The guard acts at the renew deadline + the grace + half the margin left (11.5 s here), well before
    // the lease duration: a lapsed hold is given back only before its last renewal's send + the lease
    // duration (after that an etcd restore could show the same record; found by review, helper-124), and
    // SIGCONT may come late on a loaded machine.
    let timing = ["--lease-duration", "20s", "--renew-deadline", "2s", "--retry-period", "500ms", "--grace", "1s"];
    let args = [&["lock", name.as_str(), "--identity", "frozen"][..], &timing, &["--", "sh", "-c", &script]].concat();
    let mut lock = env.spawn(args);
    let child = read_pid(&pid_file);
    lock.signal(Signal::SIGSTOP);
    wait_until("the guard to kill the child", || !alive(child));
    lock.signal(Signal::SIGCONT);
    assert_eq!(lock.wait_for(PATIENCE).and_then(|s| s.code()), Some(123), "{}", lock.stderr());
    let holder = env.holder(&name);
    assert!(
        holder.as_deref().is_none_or(str::is_empty),
        "mpsync exited with its own record left held (holder {holder:?}):\n{}",
        lock.stderr()
    );
}

both_backends!(a_loss_while_the_childs_leftovers_are_stopped_is_said_not_called_a_release);

/// Found by review (helper-121): the child exits 0 and leaves a worker that ignores SIGTERM; while mpsync
/// waits out the grace for it, the lease is lost (deleted). mpsync logged "released the lease", which
/// was not true. It says the lease was lost; the child's own exit code stands (it ran its course under the
/// lease), and the worker is gone when mpsync ends.
fn a_loss_while_the_childs_leftovers_are_stopped_is_said_not_called_a_release(env: &TestEnv) {
    let name = env.lease_name("lost-leftovers");
    let worker = env.path("worker");
    // The worker writes its pid once it ignores TERM, and the child exits only then (on a loaded machine
    // the TERM at the child's exit came before the worker's trap, and ended it at once).
    let script = format!(
        "sh -c 'trap \"\" TERM; echo $$ > {w}; while :; do sleep 0.1; done' & while [ ! -s {w} ]; do sleep 0.01; done; exit 0",
        w = worker.display()
    );
    let timing = ["--lease-duration", "40s", "--renew-deadline", "10s", "--retry-period", "1s", "--grace", "25s"];
    let args = [&["lock", "-v", name.as_str()][..], &timing, &["--", "sh", "-c", &script]].concat();
    let mut lock = env.spawn(args);
    let worker_pid = read_pid(&worker);
    wait_until("the child's exit to be seen", || lock.stderr().contains("child exited"));
    env.delete(&name);
    let status = lock.wait_for(PATIENCE).expect("mpsync ends");
    assert_eq!(status.code(), Some(0), "{}", lock.stderr());
    assert!(!alive(worker_pid), "the worker outlived mpsync");
    assert!(lock.stderr().contains("lost the lease after the child exited"), "{}", lock.stderr());
    assert!(!lock.stderr().contains("released the lease"), "{}", lock.stderr());
}

/// Found by review (helper-135): the lease lost, mpsync stops the child (SIGTERM) and waits `--grace` for its job.
/// The child's TERM trap starts its clean-up in a session of its own (`setsid cleanup &`) and waits for
/// it. mpsync is SIGKILLed during the grace: the main child dies of its parent-death signal, and the
/// clean-up, a child of the main child outside its group started after mpsync's look at the job, must go
/// with the job (the guard was to be told of it, as while the child runs).
fn what_the_child_starts_in_a_session_of_its_own_during_the_grace_dies_with_a_sigkill_of_mpsync(env: &TestEnv) {
    for lost in [true, false] {
        let name = env.lease_name("grace-left");
        let worker = env.path(&env.lease_name("worker"));
        let up = env.path(&env.lease_name("up"));
        let script = format!(
            "trap 'setsid sh -c \"trap \\\"\\\" TERM; echo \\$\\$ > {}; exec sleep 300\" & wait' TERM; echo up > {}; \
             while :; do sleep 0.05; done",
            worker.display(),
            up.display()
        );
        let timings = ["--lease-duration", "60s", "--renew-deadline", "40s", "--grace", "15s"];
        let head = [&["lock", &name, "-vv"][..], &timings[..]].concat();
        let mut lock = env.spawn([&head[..], &["--", "sh", "-c", &script]].concat());
        wait_for_file(&up, "up");
        if lost {
            env.edit(&name, |spec| {
                spec.holder_identity = Some("thief".into());
                spec.lease_duration_seconds = Some(60);
            });
        } else {
            lock.signal(Signal::SIGTERM);
        }
        let worker = read_pid(&worker);
        wait_until("the clean-up to run in a session of its own", || {
            alive(worker) && fs::read_to_string(format!("/proc/{worker}/stat")).is_ok_and(|s| s.contains("(sleep)"))
        });
        let told = format!("the guard knows of a process that left the child's group pid={worker}");
        // Told within 100 ms (20 ms during the grace); it was never told while mpsync stopped the job after a
        // loss: the clean-up was handed to init with the main child's death, out of the guard's sight.
        let was_told = within_patience(|| lock.stderr().contains(&told));
        lock.signal(Signal::SIGKILL);
        lock.wait_for(PATIENCE).expect("killed");
        let died = within_patience(|| !alive(worker));
        if !died {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker), Signal::SIGKILL);
        }
        assert!(died, "lost={lost} told={was_told}: the clean-up started during the grace ran on with no lease");
    }
}

/// Found by review (helper-137): the guard dies (killed on its own, the OOM killer) while the child runs,
/// and mpsync starts a new one, telling it of the group, the deadline, what it adopted and what it kept,
/// but not of what it had told the old guard had left the child's group (`setsid worker`), nor told it
/// again later (it counted as told): a SIGKILL of mpsync then left the worker running with no lease (3 of
/// 3 runs).
fn what_left_the_group_told_to_a_guard_that_died_is_told_to_the_next_one(env: &TestEnv) {
    // Several rounds: the guard also finds the worker through the main child when it lists the processes
    // before the main child's parent-death signal ends it (about half of the runs).
    for round in 0..4 {
        let name = env.lease_name("left-new-guard");
        let worker = env.path(&env.lease_name("worker"));
        let script = format!("setsid sh -c 'echo $$ > {}; exec sleep 300' & wait", worker.display());
        let mut lock = env.spawn(["lock", &name, "-vv", "--", "sh", "-c", &script]);
        let worker = read_pid(&worker);
        let told = format!("the guard knows of a process that left the child's group pid={worker}");
        wait_until("mpsync to tell its guard of the worker", || lock.stderr().contains(&told));
        let stderr = lock.stderr();
        let at = stderr.find("guard=").expect("the guard's pid is logged") + "guard=".len();
        let guard: i32 = stderr[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap();
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(guard), Signal::SIGKILL);
        wait_until("a new guard", || lock.stderr().contains("guard process started"));
        lock.signal(Signal::SIGKILL);
        lock.wait_for(PATIENCE).expect("killed");
        let died = within_patience(|| !alive(worker));
        if !died {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker), Signal::SIGKILL);
        }
        assert!(died, "round {round}: the worker told to the old guard ran on after a SIGKILL of mpsync");
    }
}

both_backends!(a_loss_while_waiting_for_a_child_after_sigterm_ends_it_within_the_grace);

/// From review (helper-143): SIGTERM to mpsync; the child ignores it, and mpsync waits as long as it takes, still
/// renewing. The lease is lost meanwhile: the child must die within the grace (not run on until it pleases).
fn a_loss_while_waiting_for_a_child_after_sigterm_ends_it_within_the_grace(env: &TestEnv) {
    let name = env.lease_name("term-loss");
    let pid = env.path("pid");
    let script = format!("trap '' TERM; echo $$ > {}; while :; do sleep 0.1; done", pid.display());
    let timing = ["--lease-duration", "6s", "--renew-deadline", "3s", "--retry-period", "500ms", "--grace", "1s"];
    let args = [&["lock", "-v", name.as_str()][..], &timing, &["--", "bash", "-c", &script]].concat();
    let mut lock = env.spawn(args);
    let child = read_pid(&pid);
    lock.signal(Signal::SIGTERM);
    wait_until("the TERM to be forwarded", || lock.stderr().contains("forwarding signal"));
    env.edit(&name, |spec| {
        spec.holder_identity = Some("thief".into());
        spec.lease_transitions = spec.lease_transitions.map(|t| t + 1);
    });
    let status = lock.wait_for(PATIENCE);
    assert!(!alive(child), "the child outlived the lease: {}", lock.stderr());
    assert_eq!(status.and_then(|s| s.code()), Some(123), "{}", lock.stderr());
}

both_backends!(ctrl_c_during_the_loss_grace_still_says_lost);

/// From review (helper-143): the lease is lost and the child, ignoring TERM, is in its grace; then Ctrl-C
/// (SIGINT to the child's group) ends it. mpsync still exits 123 (README: the lease was lost while the child
/// ran), not dying of SIGINT as it does when a child ends of a Ctrl-C with the lease held.
fn ctrl_c_during_the_loss_grace_still_says_lost(env: &TestEnv) {
    let name = env.lease_name("int-grace");
    let pid = env.path("pid");
    let script = format!("trap '' TERM; echo $$ > {}; exec sleep 1000", pid.display());
    let timing = ["--lease-duration", "8s", "--renew-deadline", "2s", "--retry-period", "500ms", "--grace", "4s"];
    let args = [&["lock", "-v", name.as_str()][..], &timing, &["--", "sh", "-c", &script]].concat();
    let mut lock = env.spawn(args);
    let child = read_pid(&pid);
    env.edit(&name, |spec| {
        spec.holder_identity = Some("thief".into());
        spec.lease_transitions = spec.lease_transitions.map(|t| t + 1);
    });
    wait_until("the loss", || lock.stderr().contains("lost"));
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(child), Signal::SIGINT).unwrap();
    let status = lock.wait_for(PATIENCE).expect("mpsync exits");
    assert!(!alive(child));
    assert_eq!(status.code(), Some(123), "{}", lock.stderr());
}

/// Found by review (helper-157): with `--subreaper`, a chain the child leaves behind (each link appends a
/// tick, starts the next with `setsid -f` and exits, a supervisor's restart loop in miniature) lives in
/// mpsync's tree the whole time (each link is adopted at once), so README promises it gets `--kill-signal`,
/// `--grace`, then SIGKILL before the release. It ignores TERM; yet a single look at /proc that misses the
/// one live link (forked after /proc was listed, its parent gone before its stat was read) ended the wait
/// for the job as if it were gone: the lease was released and mpsync exited while the chain ran on. The
/// same wait ends the job after the child's exit, after a lost lease, and after SIGTERM to mpsync.
#[test]
fn as_subreaper_a_chain_left_by_the_child_is_gone_before_the_release() {
    #[derive(Debug, Clone, Copy)]
    enum End {
        ChildExits,
        LeaseLost,
        Sigterm,
    }
    let env = TestEnv::file();
    let stop = env.path("stop");
    let link = env.path("link.sh");
    fs::write(
        &link,
        format!(
            "#!/bin/sh\ntrap '' TERM\n[ -e {stop} ] && exit 0\necho x >> \"$1\"\nsleep 0.02\nsetsid -f \"$0\" \"$1\"\nexit 0\n",
            stop = stop.display(),
        ),
    )
    .expect("write the link");
    fs::set_permissions(&link, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let mut escaped = Vec::new();
    for (round, end) in [End::ChildExits, End::LeaseLost, End::Sigterm].into_iter().cycle().take(6).enumerate() {
        let name = env.lease_name(&format!("chain-{round}"));
        let ticks = env.path(&format!("ticks-{round}"));
        let count = || fs::read_to_string(&ticks).map(|t| t.lines().count()).unwrap_or(0);
        let _ = fs::remove_file(&stop);
        // The child starts the chain and waits for its first tick; then it exits 5, or waits to be ended.
        let then = match end {
            End::ChildExits => "exit 5",
            End::LeaseLost | End::Sigterm => "exec sleep 1000",
        };
        let script = format!(
            "setsid -f {link} {ticks}; while [ ! -s {ticks} ]; do sleep 0.01; done; {then}",
            link = link.display(),
            ticks = ticks.display()
        );
        let mut lock = env.spawn(fast(&["lock", &name, "--subreaper"], &["sh", "-c", &script]));
        wait_until("the chain's first tick", || count() > 0);
        let expected = match end {
            End::ChildExits => 5,
            End::LeaseLost => {
                env.edit(&name, |spec| spec.holder_identity = Some("thief".into()));
                123
            }
            End::Sigterm => {
                lock.signal(Signal::SIGTERM);
                143
            }
        };
        let code = lock.wait_for(PATIENCE).and_then(|s| s.code());
        let at_exit = count();
        // A link lasts about 30 ms: a chain that still runs ticks many times in a second.
        std::thread::sleep(Duration::from_millis(1000));
        let after = count();
        fs::write(&stop, "").expect("stop the chain");
        assert_eq!(code, Some(expected), "{end:?}: {}", lock.stderr());
        if after > at_exit {
            escaped.push((end, at_exit, after));
        }
        wait_until("the escaped chain to end", || {
            let before = count();
            std::thread::sleep(Duration::from_millis(200));
            count() == before
        });
    }
    assert!(escaped.is_empty(), "the chain ran on after mpsync released the lease and exited: {escaped:?}");
}

/// Found by review (helper-157): a child stopped by a plain `kill -STOP` (a debugger) is whoever stopped
/// it's to continue (README, "Differences from sudo"), yet a stray SIGCONT to a running mpsync (a shell's
/// `bg` of a job that was not stopped) continued the child's whole job. mpsync continues only a job it
/// stopped itself.
#[test]
fn a_stray_sigcont_to_mpsync_leaves_a_child_stopped_by_another_stopped() {
    let env = TestEnv::file();
    let name = env.lease_name("stray-cont");
    let pid_file = env.path("pid");
    let script = format!("echo $$ > {}; exec sleep 1000", pid_file.display());
    let mut lock = env.spawn(["-vv", "lock", &name, "--", "sh", "-c", &script]);
    let child = read_pid(&pid_file);
    let state = || {
        fs::read_to_string(format!("/proc/{child}/stat")).ok().and_then(|stat| {
            stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next().map(str::to_string))
        })
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), Signal::SIGSTOP).unwrap();
    wait_until("the child to be stopped", || state().as_deref() == Some("T"));
    lock.signal(Signal::SIGCONT);
    wait_until("mpsync to take the SIGCONT", || lock.stderr().contains("not stopped by mpsync"));
    assert_eq!(state().as_deref(), Some("T"), "the child was continued by a SIGCONT to mpsync");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), Signal::SIGKILL).unwrap();
    lock.wait_for(PATIENCE).expect("mpsync ends with its child");
}

/// Found by review (helper-166): mpsync, a background job of a shell (`set -m`), is sent SIGTSTP; while it
/// stops the child's job (which ignores TSTP: up to half a second before SIGSTOP), the shell dies (an ssh
/// session dropped). mpsync's group is orphaned now, and the kernel discards its own stop: it ran on at
/// once, renewing the lease for a job held stopped for good, and a SIGTERM was passed on without the
/// SIGCONT that would let the job act on it: mpsync never ended. It now goes on as if continued at once.
#[test]
fn a_job_control_stop_the_kernel_discards_leaves_nothing_stopped() {
    let env = TestEnv::file();
    let name = env.lease_name("orphaned-stop");
    let (child_pid, mpsync_pid, shell_pid, ticks, log) =
        (env.path("child.pid"), env.path("mpsync.pid"), env.path("shell.pid"), env.path("ticks"), env.path("log"));
    let child = env.path("child.sh");
    let body = format!(
        "trap '' TSTP\necho $$ > {}\nwhile :; do echo tick >> {}; sleep 0.1; done\n",
        child_pid.display(),
        ticks.display()
    );
    fs::write(&child, body).unwrap();
    let script = format!(
        "set -m; {bin} -v lock {name} --backend file --lock-dir {dir} {fast} -- sh {child} 2> {log} & \
         echo $! > {mpsync_pid}; echo $$ > {shell_pid}; wait",
        bin = env!("CARGO_BIN_EXE_mpsync"),
        dir = env.lock_dir().display(),
        fast = FAST.join(" "),
        child = child.display(),
        log = log.display(),
        mpsync_pid = mpsync_pid.display(),
        shell_pid = shell_pid.display(),
    );
    let mut shell = std::process::Command::new("setsid");
    shell.args(["bash", "-c", &script]).stdin(Stdio::null());
    scrub(&mut shell);
    let mut shell = shell.spawn().unwrap();
    let lines = |path: &std::path::Path| fs::read_to_string(path).map(|text| text.lines().count()).unwrap_or(0);
    wait_until("the child's first tick", || lines(&ticks) > 0);
    let (child, mpsync, sh) = (read_pid(&child_pid), read_pid(&mpsync_pid), read_pid(&shell_pid));
    // Killed whatever the outcome: a failure must not leave them running (with the test's output).
    struct KillOnDrop([i32; 2]);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            for pid in self.0 {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
    let _kill = KillOnDrop([mpsync, child]);
    let pid = nix::unistd::Pid::from_raw;
    nix::sys::signal::kill(pid(mpsync), Signal::SIGTSTP).unwrap();
    // While mpsync waits for the child's job to stop (it ignores TSTP), its parent shell dies.
    wait_until("mpsync to stop the child's job", || {
        fs::read_to_string(&log).unwrap_or_default().contains("job control")
    });
    nix::sys::signal::kill(pid(sh), Signal::SIGKILL).unwrap();
    let _ = shell.wait();
    wait_until("mpsync to go on", || fs::read_to_string(&log).unwrap_or_default().contains("orphaned now"));
    let before = lines(&ticks);
    wait_until("the child to tick again", || lines(&ticks) > before);
    nix::sys::signal::kill(pid(mpsync), Signal::SIGTERM).unwrap();
    let ended = within_patience(|| !alive(mpsync));
    let stderr = fs::read_to_string(&log).unwrap_or_default();
    assert!(ended, "mpsync never ended after SIGTERM:\n{stderr}");
    assert!(!alive(child), "the child outlived mpsync:\n{stderr}");
    assert_eq!(env.holder(&name).as_deref(), Some(""), "the lease was given back:\n{stderr}");
}

/// Found by review (helper-167): a child that takes every process its user may have (a leak that retries,
/// in a pod with a pids limit), mpsync as PID 1 on the file backend with a retry period above tokio's 10 s
/// keep-alive of an idle blocking thread. The next renewal needed a new thread, could not have one, and
/// tokio panicked ("OS can't spawn worker thread"): the lease taken for lost, the child stopped (123), the
/// record left held. The runtime now keeps its blocking thread: no panic, the child's own exit.
#[test]
fn a_child_that_takes_every_process_slot_makes_mpsync_neither_panic_nor_lose_the_lease() {
    use std::os::unix::fs::PermissionsExt;
    let tools = ["setpriv", "prlimit", "python3"].iter().all(|tool| {
        std::process::Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
    });
    let namespaces = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status()
        .is_ok_and(|status| status.success());
    if !nix::unistd::geteuid().is_root() || !tools || !namespaces {
        eprintln!("SKIPPED: needs root, PID namespaces, setpriv, prlimit and python3");
        return;
    }
    let env = TestEnv::file();
    // A uid of its own, so that the limit counts this test's processes alone.
    let uid = "4244";
    let locks = env.path("nproc-locks");
    fs::create_dir(&locks).unwrap();
    let id = 4244;
    nix::unistd::chown(&locks, Some(nix::unistd::Uid::from_raw(id)), Some(nix::unistd::Gid::from_raw(id))).unwrap();
    fs::set_permissions(&locks, fs::Permissions::from_mode(0o700)).unwrap();
    // Forks until it cannot, then keeps taking any slot freed for 16 s (past the 12 s retry period), exit 4.
    let hog = env.path("hog.py");
    let program = "import os, sys, time\n\
                   end = None\n\
                   while True:\n\
                   \x20   try:\n\
                   \x20       pid = os.fork()\n\
                   \x20   except OSError:\n\
                   \x20       end = end or time.time() + 16\n\
                   \x20       if time.time() > end: break\n\
                   \x20       time.sleep(0.001); continue\n\
                   \x20   if pid == 0:\n\
                   \x20       time.sleep(1000); os._exit(0)\n\
                   sys.exit(4)\n";
    fs::write(&hog, program).unwrap();
    let name = env.lease_name("nproc");
    // Where uid 4244 can run it: a checkout may sit in a directory only root may enter (`mktemp -d`).
    let mpsync = crate::file_backend::mpsync_for_others(&env);
    let mut command = std::process::Command::new("unshare");
    command.args(["--pid", "--fork", "--mount-proc", "setpriv", "--reuid", uid, "--regid", uid, "--clear-groups"]);
    command.args(["prlimit", "--nproc=40:40"]).arg(&mpsync).args(["lock", &name, "-v", "--backend", "file"]);
    command.args(["--lease-duration", "60s", "--renew-deadline", "30s", "--retry-period", "12s"]);
    command.arg("--lock-dir").arg(&locks);
    command.args(["--", "python3"]).arg(&hog);
    scrub(&mut command);
    command.env("RUST_BACKTRACE", "0").stdin(Stdio::null());
    let done = Proc::spawn(command, &env.dir).finish();
    assert!(!done.stderr.contains("panicked"), "mpsync panicked:\n{}", done.stderr);
    done.assert_code(4);
}

/// Found by review (helper-167): after `unshare --pid` without `--fork`, mpsync's children would be in a PID
/// namespace it is not in, and it could start no thread: "cannot start supervision: Invalid argument".
/// It says what is wrong and what to do.
#[test]
fn unshare_pid_without_fork_says_what_is_wrong() {
    let namespaces = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status()
        .is_ok_and(|status| status.success());
    if !namespaces {
        eprintln!("SKIPPED: `unshare --pid` is not permitted here");
        return;
    }
    let env = TestEnv::file();
    let name = env.lease_name("no-fork");
    let mut command = std::process::Command::new("unshare");
    command.args(["--pid", env!("CARGO_BIN_EXE_mpsync"), "lock", &name, "--backend", "file"]);
    command.arg("--lock-dir").arg(env.lock_dir()).args(["--", "true"]);
    scrub(&mut command);
    let done = Proc::spawn(command, &env.dir).finish();
    done.assert_code(125);
    assert!(done.stderr.contains("unshare --pid --fork"), "{}", done.stderr);
    assert!(done.stderr.trim().lines().count() <= 2, "{}", done.stderr);
}

/// Found by review (helper-177): mpsync frozen by a plain `kill -STOP` (a debugger, `systemctl kill -s
/// STOP`) past its renew deadline, well before the guard's, then continued. mpsync never stopped the
/// child: it ran all along, and is stopped as after any loss, with `--kill-signal` and `--grace`. It was
/// SIGKILLed at once ("killing the stopped child"): the SIGCONT was taken for the end of a job-control stop.
#[test]
fn a_running_child_gets_the_kill_signal_when_mpsync_is_continued_past_its_deadline() {
    let env = TestEnv::file();
    let name = env.lease_name("freeze-cont");
    let (log, up) = (env.path("log"), env.path("up"));
    let script = format!(
        "trap 'echo got-TERM >> {log}; sleep 0.3; echo clean >> {log}; exit 0' TERM; echo up > {up}; \
         while :; do sleep 0.05; done",
        log = log.display(),
        up = up.display()
    );
    // The guard's deadline is 3 s + 2 s + 2.5 s after the last renewal's send: far from the freeze's end.
    let timing = ["--lease-duration", "10s", "--renew-deadline", "3s", "--retry-period", "200ms", "--grace", "2s"];
    let args = [&["lock", name.as_str(), "-v"][..], &timing, &["--", "sh", "-c", &script]].concat();
    let mut lock = env.spawn(args);
    lock.wait_for_file(&up, "up");
    lock.signal(Signal::SIGSTOP);
    // Past the renew deadline (3 s after the last renewal's send, at most 200 ms before the stop).
    std::thread::sleep(Duration::from_millis(4000));
    lock.signal(Signal::SIGCONT);
    let done = lock.finish();
    done.assert_code(123);
    let log = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        log.contains("got-TERM") && log.contains("clean"),
        "the running child got no --kill-signal, or no --grace ({log:?}):\n{}",
        done.stderr
    );
}

/// Found by review (helper-177): `helper & exec mpsync lock ...`, mpsync frozen (`kill -STOP`) past its
/// lease: the guard kills the child's job at its deadline, and killed the helper mpsync inherited across
/// the exec too (everything below mpsync), which is no part of the job.
#[test]
fn the_guard_at_the_deadline_leaves_a_helper_inherited_across_exec_alone() {
    let env = TestEnv::file();
    let name = env.lease_name("guard-inherited");
    let (helper, child) = (env.path("helper.pid"), env.path("child.pid"));
    let body = format!("echo $$ > {}; sleep 1000", child.display());
    let timing = ["--lease-duration", "3s", "--renew-deadline", "2s", "--retry-period", "200ms", "--grace", "500ms"];
    let lock = env.mpsync([&["lock", name.as_str()][..], &timing, &["--", "sh", "-c", &body]].concat());
    let mut command = std::process::Command::new("sh");
    command
        .arg("-c")
        .arg(format!("sleep 1000 & echo $! > {}; exec \"$0\" \"$@\"", helper.display()))
        .arg(lock.get_program())
        .args(lock.get_args())
        .stdin(Stdio::null());
    for (key, value) in lock.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    let mut proc = Proc::spawn(command, &env.dir);
    let (helper_pid, child_pid) = (read_pid(&helper), read_pid(&child));
    proc.signal(Signal::SIGSTOP);
    let child_killed = within_patience(|| !alive(child_pid));
    let helper_alive = alive(helper_pid);
    proc.signal(Signal::SIGCONT);
    let status = proc.wait_for(PATIENCE);
    let helper_alive_at_end = alive(helper_pid);
    for pid in [helper_pid, child_pid] {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    assert!(child_killed, "the guard did not kill the child of a frozen mpsync:\n{}", proc.stderr());
    assert_eq!(status.and_then(|s| s.code()), Some(123), "{}", proc.stderr());
    assert!(
        helper_alive && helper_alive_at_end,
        "the guard killed the helper mpsync inherited across exec (alive when the child died: {helper_alive}):\n{}",
        proc.stderr()
    );
}

/// Found by review (helper-177): the child starts a worker in a session of its own (`setsid worker &`),
/// mpsync tells its guard of it (a SIGKILL of mpsync would kill it), and the child exits: the worker ran
/// on past the release, beside the next holder's child. It is ended with the job (`--kill-signal`) first.
#[test]
fn a_worker_mpsync_told_its_guard_of_is_ended_before_the_release() {
    let env = TestEnv::file();
    let name = env.lease_name("told-left");
    let (worker, go) = (env.path("worker"), env.path("go"));
    let script = format!(
        "setsid sleep 1001 & echo $! > {}; while [ ! -e {} ]; do sleep 0.02; done; exit 0",
        worker.display(),
        go.display()
    );
    let lock = env.spawn(["lock", &name, "-vv", "--", "sh", "-c", &script]);
    let pid = read_pid(&worker);
    let told = format!("the guard knows of a process that left the child's group pid={pid}");
    wait_until("mpsync to tell its guard of the worker", || lock.stderr().contains(&told));
    fs::write(&go, "").unwrap();
    let done = lock.finish();
    let alive_after = alive(pid);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    done.assert_code(0);
    assert!(!alive_after, "the worker runs on after the release:\n{}", done.stderr);
    assert_eq!(env.holder(&name).as_deref(), Some(""), "released: {}", done.stderr);
}

/// Found by review (helper-183): the same worker, when the main child dies while job control holds the job
/// stopped (Ctrl-Z, then a `kill -9` of the child or the OOM killer): the job was killed without being
/// continued, but the worker, init's child by then, was left behind, stopped; the kernel continues an
/// orphaned stopped group, and it ran on beside the next holder's child. It is killed with the job.
#[test]
fn a_worker_mpsync_told_its_guard_of_is_killed_when_the_child_dies_while_held_stopped() {
    use crate::support::pty::state;
    let env = TestEnv::file();
    let name = env.lease_name("told-held");
    let (worker, main) = (env.path("worker.pid"), env.path("main.pid"));
    let script = format!("setsid sleep 1002 & echo $! > {}; echo $$ > {}; wait", worker.display(), main.display());
    let mut command = env.mpsync(["lock", &name, "-vv", "--grace", "1s", "--", "sh", "-c", &script]);
    command.process_group(0);
    let mut lock = Proc::spawn(command, &env.dir);
    let (worker, main) = (read_pid(&worker), read_pid(&main));
    let told = format!("the guard knows of a process that left the child's group pid={worker}");
    wait_until("mpsync to tell its guard of the worker", || lock.stderr().contains(&told));
    lock.signal(Signal::SIGTSTP);
    wait_until("mpsync to stop itself", || state(lock.pid()) == Some('T'));
    wait_until("the worker to be stopped with the job", || state(worker) == Some('T'));
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(main), Signal::SIGKILL);
    wait_until("the child to die", || !alive(main));
    lock.signal(Signal::SIGCONT);
    let status = lock.wait_for(PATIENCE);
    let left = alive(worker);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker), Signal::SIGKILL);
    assert!(status.is_some(), "mpsync did not exit:\n{}", lock.stderr());
    assert!(!left, "the worker was left behind after the release:\n{}", lock.stderr());
    assert_eq!(env.holder(&name).as_deref(), Some(""), "released: {}", lock.stderr());
}

/// Found by review (helper-177): Ctrl-Z (SIGTSTP) while mpsync waits out `--grace` for what its exited
/// child left (a leftover that ignores TERM), mpsync in a group a shell could continue. mpsync carried
/// out the stop in its release and sat stopped with the lease held, for a child that no longer existed.
/// Nothing of the job is left to stop: the stop request is dropped, and the lease given back.
#[test]
fn ctrl_z_while_waiting_for_the_leftovers_does_not_stop_mpsync_holding_the_lease() {
    let env = TestEnv::file();
    let name = env.lease_name("tstp-release");
    let left = env.path("left.pid");
    let script = format!(
        "sh -c 'trap \"\" TERM; echo $$ > {}; while :; do sleep 0.1; done' & sleep 0.3; exit 0",
        left.display()
    );
    let mut command = env.mpsync(["lock", &name, "-vv", "--grace", "2s", "--", "sh", "-c", &script]);
    command.process_group(0);
    let mut lock = Proc::spawn(command, &env.dir);
    let leftover = read_pid(&left);
    wait_until("the leftovers to be stopped", || lock.stderr().contains("the child left processes behind"));
    lock.signal(Signal::SIGTSTP);
    // The grace (2 s) and the SIGKILL round are over well before this.
    let released = within_patience(|| env.holder(&name).as_deref() == Some(""));
    let holder = env.holder(&name);
    lock.signal(Signal::SIGCONT);
    let status = lock.wait_for(PATIENCE);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(leftover), Signal::SIGKILL);
    assert!(released, "mpsync stopped itself with the lease held (holder {holder:?}):\n{}", lock.stderr());
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", lock.stderr());
}

/// Found by review (helper-177): mpsync frozen (`kill -STOP`) past its renew deadline while its child
/// exits on its own, then continued before the guard's deadline. The child ran its course (its code
/// stands); the log said "lost the lease after the child exited, while what it left was stopped", of a
/// child that left nothing. It says the lease was lost by the time the exit was seen.
#[test]
fn a_child_exit_seen_after_a_freeze_past_the_deadline_is_said_as_such() {
    child_end_seen_after_a_freeze_past_the_deadline("exit 4", 4);
}

/// Found by review (rv302): the same, with a child that dies of SIGKILL on its own (the OOM killer, `kill -9 $$`):
/// taken for the guard's kill at the deadline, a loss (exit 123), though the guard's deadline had not come.
#[test]
fn a_child_that_killed_itself_while_mpsync_was_frozen_is_not_a_loss() {
    child_end_seen_after_a_freeze_past_the_deadline("kill -9 $$", 137);
}

/// mpsync frozen past the guard's deadline (from review, rv307): the guard kills the child. A loss: `lock` exits 123
/// and gives the lease back; `elect` campaigns again and runs its child again.
#[test]
fn a_child_the_guard_killed_while_mpsync_was_frozen_is_a_loss() {
    for mode in ["lock", "elect"] {
        let env = TestEnv::file();
        let name = env.lease_name("guard-killed");
        let pids = env.path("pids");
        let read_pids = || -> Vec<i32> {
            fs::read_to_string(&pids).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
        };
        let script = format!("echo $$ >> {}; exec sleep 1000", pids.display());
        let timing = ["--lease-duration", "10s", "--renew-deadline", "2s", "--retry-period", "200ms", "--grace", "2s"];
        let args = [&[mode, name.as_str(), "-v"][..], &timing, &["--", "sh", "-c", &script]].concat();
        let mpsync = env.spawn(args);
        wait_until("the child", || !read_pids().is_empty());
        let child = read_pids()[0];
        mpsync.signal(Signal::SIGSTOP);
        let gone = |pid: i32| crate::support::pty::state(pid).is_none_or(|state| matches!(state, 'Z' | 'X'));
        wait_until("the guard to kill the child", || gone(child));
        mpsync.signal(Signal::SIGCONT);
        if mode == "lock" {
            let done = mpsync.finish();
            done.assert_code(123);
            assert!(done.stderr.contains("killed at the lease's deadline"), "{}", done.stderr);
            assert!(env.holder(&name).is_none_or(|h| h.is_empty()), "left held: {:?}", env.holder(&name));
        } else {
            wait_until("elect to run its child again", || read_pids().len() >= 2);
            mpsync.signal(Signal::SIGTERM);
            let done = mpsync.finish();
            assert!(done.stderr.contains("killed at the lease's deadline"), "{}", done.stderr);
        }
    }
}

/// The child ends with `end` while mpsync is frozen; mpsync is continued past its renew deadline, before the guard's:
/// it exits `code`, saying the lease was lost by the time the child's end was seen.
fn child_end_seen_after_a_freeze_past_the_deadline(end: &str, code: i32) {
    let env = TestEnv::file();
    let name = env.lease_name("exit-frozen");
    let (pid, go) = (env.path("pid"), env.path("go"));
    let script = format!("echo $$ > {}; while [ ! -e {} ]; do sleep 0.02; done; {end}", pid.display(), go.display());
    // The guard's deadline is 2 s + 2 s + 3 s after the last renewal's send: far from the freeze's end.
    let timing = ["--lease-duration", "10s", "--renew-deadline", "2s", "--retry-period", "200ms", "--grace", "2s"];
    let args = [&["lock", name.as_str(), "-v"][..], &timing, &["--", "sh", "-c", &script]].concat();
    let lock = env.spawn(args);
    let child = read_pid(&pid);
    lock.signal(Signal::SIGSTOP);
    let frozen = Instant::now();
    fs::write(&go, "").unwrap();
    wait_until("the child to end", || {
        fs::read_to_string(format!("/proc/{child}/stat")).ok().is_none_or(|stat| stat.contains(") Z "))
    });
    // Past the renew deadline (2 s after the last renewal's send, at most 200 ms before the freeze).
    std::thread::sleep(Duration::from_millis(3000).saturating_sub(frozen.elapsed()));
    let continued = frozen.elapsed();
    lock.signal(Signal::SIGCONT);
    let done = lock.finish();
    // The guard's deadline comes 6.8 s after the freeze at the earliest; a machine that slow is not this case.
    if continued < Duration::from_millis(6500) {
        done.assert_code(code);
        assert!(done.stderr.contains("the lease was lost by the time the child's exit was seen"), "{}", done.stderr);
    }
    assert!(!done.stderr.contains("while what it left was stopped"), "{}", done.stderr);
}

both_backends!(a_worker_started_in_the_loss_grace_is_ended_before_the_release);

/// The child's TERM trap for the grace tests: it starts a clean-up in a session of its own that ignores
/// TERM (`setsid cleanup &`, writing its pid to `worker` and running `sleep {marker}`), lingers `linger`
/// seconds, and exits 0 well within the grace.
fn cleanup_in_the_grace_script(worker: &std::path::Path, up: &std::path::Path, marker: &str, linger: &str) -> String {
    format!(
        "trap 'setsid sh -c \"trap \\\"\\\" TERM; echo \\$\\$ > {w}; exec sleep {marker}\" & sleep {linger}; exit 0' TERM; \
         echo up > {u}; while :; do sleep 0.05; done",
        w = worker.display(),
        u = up.display(),
    )
}

/// Found by review (helper-187): the lease is lost, mpsync sends TERM and waits `--grace` (15 s). The
/// child's TERM trap starts a clean-up in a session of its own and exits 0.6 s (or 0.15 s) later. mpsync
/// told its guard of the clean-up, but never counted it as part of the job: once the main child exited,
/// the clean-up was init's child, the job looked gone, and mpsync exited 123 with it running and the guard
/// disarmed (the next holder's child ran beside it). It is ended before the release.
fn a_worker_started_in_the_loss_grace_is_ended_before_the_release(env: &TestEnv) {
    for linger in ["0.6", "0.15"] {
        let name = env.lease_name("grace-setsid");
        let (worker, up) = (env.path(&env.lease_name("worker")), env.path(&env.lease_name("up")));
        let script = cleanup_in_the_grace_script(&worker, &up, "1891", linger);
        let timing =
            ["--lease-duration", "30s", "--renew-deadline", "10s", "--retry-period", "500ms", "--grace", "15s"];
        let args = [&["lock", "-vv", name.as_str()][..], &timing, &["--", "sh", "-c", &script]].concat();
        let mut lock = env.spawn(args);
        wait_for_file(&up, "up");
        env.edit(&name, |spec| {
            spec.holder_identity = Some("thief".into());
            spec.lease_duration_seconds = Some(60);
        });
        let cleanup = read_pid(&worker);
        let status = lock.wait_for(PATIENCE);
        let left = alive(cleanup);
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(cleanup), Signal::SIGKILL);
        assert!(!left, "linger {linger}: the clean-up ran on after mpsync exited ({status:?}):\n{}", lock.stderr());
        assert_eq!(status.and_then(|s| s.code()), Some(123), "{}", lock.stderr());
    }
}

/// Found by review (helper-187): the same clean-up, with `--subreaper` and as PID 1 (where mpsync adopted it
/// already): ended before mpsync exits, as before.
#[test]
fn with_subreaper_or_as_pid_1_a_worker_started_in_the_loss_grace_is_ended_too() {
    let env = TestEnv::file();
    let pid1 = std::process::Command::new("unshare").args(["--pid", "--fork", "--mount-proc", "true"]).status();
    let modes: &[&str] = match pid1.is_ok_and(|s| s.success()) {
        true => &["--subreaper", "pid1"],
        false => {
            eprintln!("SKIPPED as PID 1: `unshare --pid --fork --mount-proc` is not permitted here");
            &["--subreaper"]
        }
    };
    for (round, mode) in modes.iter().enumerate() {
        let name = env.lease_name("grace-setsid-reaper");
        let (worker, up) = (env.path(&env.lease_name("worker")), env.path(&env.lease_name("up")));
        let marker = format!("189{round}2");
        let script = cleanup_in_the_grace_script(&worker, &up, &marker, "0.6");
        let timing =
            ["--lease-duration", "30s", "--renew-deadline", "10s", "--retry-period", "500ms", "--grace", "15s"];
        let args = [&["lock", "-vv", name.as_str()][..], &timing, &["--", "sh", "-c", &script]].concat();
        let mut lock = match *mode {
            "pid1" => {
                let mut command = std::process::Command::new("unshare");
                command.args(["--pid", "--fork", "--mount-proc", env!("CARGO_BIN_EXE_mpsync")]).args(&args);
                scrub(&mut command);
                command.env("MPSYNC_BACKEND", "file").env("MPSYNC_LOCK_DIR", env.lock_dir()).stdin(Stdio::null());
                Proc::spawn(command, &env.dir)
            }
            subreaper => {
                let mut args = args.clone();
                args.insert(1, subreaper);
                env.spawn(args)
            }
        };
        wait_for_file(&up, "up");
        env.edit(&name, |spec| {
            spec.holder_identity = Some("thief".into());
            spec.lease_duration_seconds = Some(60);
        });
        read_pid(&worker);
        let cleanup = running_with_marker(&format!("sleep\0{marker}"));
        let status = lock.wait_for(PATIENCE);
        let left = running_with_marker(&format!("sleep\0{marker}"));
        for pid in cleanup.iter().chain(&left) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), Signal::SIGKILL);
        }
        assert!(
            left.is_empty(),
            "{mode}: the clean-up {left:?} ran on after mpsync exited ({status:?}):\n{}",
            lock.stderr()
        );
        assert_eq!(status.and_then(|s| s.code()), Some(123), "{mode}: {}", lock.stderr());
    }
}

/// Found by review (helper-187): the consequence of the clean-up that outlived the loss: the next holder
/// (a second `mpsync lock`, once the thief's short record expired) ran its child beside it.
#[test]
fn the_next_holders_child_never_runs_beside_a_worker_started_in_the_loss_grace() {
    let env = TestEnv::file();
    let name = env.lease_name("beside");
    let (worker, up) = (env.path("worker"), env.path("up"));
    let script = cleanup_in_the_grace_script(&worker, &up, "1893", "0.6");
    let timing = ["--lease-duration", "30s", "--renew-deadline", "10s", "--retry-period", "500ms", "--grace", "15s"];
    let args = [&["lock", "-v", name.as_str()][..], &timing, &["--", "sh", "-c", &script]].concat();
    let mut first = env.spawn(args);
    wait_for_file(&up, "up");
    env.edit(&name, |spec| {
        spec.holder_identity = Some("thief".into());
        spec.lease_duration_seconds = Some(1);
    });
    let status = first.wait_for(PATIENCE);
    let cleanup = read_pid(&worker);
    let probe = format!("if kill -0 {cleanup} 2>/dev/null; then echo BESIDE; else echo alone; fi");
    let second = env.run(["lock", name.as_str(), "--", "sh", "-c", &probe]);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(cleanup), Signal::SIGKILL);
    assert_eq!(status.and_then(|s| s.code()), Some(123), "{}", first.stderr());
    second.assert_code(0);
    assert!(
        second.stdout.contains("alone"),
        "the next holder's child ran beside the first holder's clean-up (pid {cleanup}):\nfirst:\n{}\nsecond:\n{}",
        first.stderr(),
        second.stderr
    );
}

/// Found by review (helper-187): `elect`'s next term. The lease is lost (a thief's record of 1 s); the
/// child's TERM trap starts its clean-up in a session of its own and exits within the grace; elect
/// campaigned again, took the lease once the thief's record expired, and started its command again while
/// the previous term's clean-up ran: two children of one election at once. The clean-up is ended before
/// the term ends; and mpsync, a subreaper only to end that term's job, is none in the next.
#[test]
fn elects_next_term_never_starts_beside_the_previous_terms_cleanup() {
    let env = TestEnv::file();
    let name = env.lease_name("elect-beside");
    let (worker, beside, terms) = (env.path("worker"), env.path("beside"), env.path("terms"));
    let script = format!(
        "echo term >> {t}; if [ -s {w} ] && kill -0 $(cat {w}) 2>/dev/null; then echo BESIDE > {b}; fi; \
         trap 'setsid sh -c \"trap \\\"\\\" TERM; echo \\$\\$ > {w}; exec sleep 1894\" & sleep 0.6; exit 0' TERM; \
         while :; do sleep 0.05; done",
        w = worker.display(),
        b = beside.display(),
        t = terms.display()
    );
    let timing = ["--lease-duration", "30s", "--renew-deadline", "10s", "--retry-period", "500ms", "--grace", "15s"];
    let args = [&["elect", "-vv", name.as_str()][..], &timing, &["--", "sh", "-c", &script]].concat();
    let mut elect = env.spawn(args);
    wait_for_file(&terms, "term");
    env.edit(&name, |spec| {
        spec.holder_identity = Some("thief".into());
        spec.lease_duration_seconds = Some(1);
    });
    let cleanup = read_pid(&worker);
    let second_term = within_patience(|| fs::read_to_string(&terms).is_ok_and(|t| t.lines().count() >= 2));
    let was_beside = fs::read_to_string(&beside).is_ok_and(|b| b.contains("BESIDE"));
    elect.signal(Signal::SIGTERM);
    let status = elect.wait_for(PATIENCE);
    for pid in running_with_marker(&format!("sleep\0{}", 1894)).into_iter().chain([cleanup]) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    assert!(second_term, "elect did not start a second term:\n{}", elect.stderr());
    assert!(!was_beside, "the second term started while the first term's clean-up ran:\n{}", elect.stderr());
    assert!(status.is_some(), "elect did not exit:\n{}", elect.stderr());
    let stderr = elect.stderr();
    let first_release = stderr.find("child stopped after losing the lease").expect("the first term lost");
    assert!(
        stderr[first_release..].contains("no longer a child subreaper"),
        "mpsync stays a subreaper after the term it became one for:\n{stderr}"
    );
}

/// Found by review (helper-187): the lease is lost and mpsync waits out the grace (TERM sent); mpsync is then
/// frozen (`kill -STOP`), and meanwhile the child's TERM trap starts its clean-up in a session of its own
/// and exits. Nobody told the guard of the clean-up (mpsync was frozen), its parent was gone, and at the
/// lease's deadline the guard found it through nothing: it ran on. mpsync, a subreaper from the moment it
/// starts ending the job, adopts it, and the guard kills everything below mpsync.
#[test]
fn a_worker_started_in_the_grace_while_mpsync_is_frozen_is_killed_at_the_deadline() {
    let env = TestEnv::file();
    let name = env.lease_name("grace-frozen");
    let (worker, up, go) = (env.path("worker"), env.path("up"), env.path("go"));
    let script = format!(
        "trap 'while [ ! -e {g} ]; do sleep 0.02; done; setsid sh -c \"trap \\\"\\\" TERM; echo \\$\\$ > {w}; exec sleep 1895\" & sleep 0.2; exit 0' TERM; \
         echo up > {u}; while :; do sleep 0.05; done",
        w = worker.display(),
        u = up.display(),
        g = go.display()
    );
    let timing = ["--lease-duration", "8s", "--renew-deadline", "2s", "--retry-period", "300ms", "--grace", "4s"];
    let args = [&["lock", "-vv", name.as_str()][..], &timing, &["--", "sh", "-c", &script]].concat();
    let mut lock = env.spawn(args);
    wait_for_file(&up, "up");
    env.edit(&name, |spec| {
        spec.holder_identity = Some("thief".into());
        spec.lease_duration_seconds = Some(60);
    });
    wait_until("mpsync to stop the child", || lock.stderr().contains("stopping the child's job"));
    lock.signal(Signal::SIGSTOP);
    let frozen = Instant::now();
    fs::write(&go, "").unwrap();
    // On a loaded machine the guard's deadline may come before the trap started its clean-up: the guard
    // then killed the trap, and nothing ran past the deadline.
    let started = within_patience(|| fs::read_to_string(&worker).is_ok_and(|pid| pid.ends_with('\n')));
    if !started {
        lock.signal(Signal::SIGCONT);
        let status = lock.wait_for(PATIENCE);
        assert_eq!(status.and_then(|s| s.code()), Some(123), "{}", lock.stderr());
        return;
    }
    let cleanup = read_pid(&worker);
    // The guard's deadline: 2 s + 4 s + 1 s after the last renewal's send, which came before the loss.
    while frozen.elapsed() < Duration::from_secs(9) && alive(cleanup) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (left, at) = (alive(cleanup), frozen.elapsed());
    lock.signal(Signal::SIGCONT);
    let status = lock.wait_for(PATIENCE);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(cleanup), Signal::SIGKILL);
    assert!(!left, "the clean-up ran on {at:?} after mpsync froze, past the guard's deadline:\n{}", lock.stderr());
    assert_eq!(status.and_then(|s| s.code()), Some(123), "{}", lock.stderr());
}

/// Found by review (helper-187): SIGTERM to mpsync (a rolling update) is forwarded to the job; the child's
/// TERM trap starts its clean-up in a session of its own and exits 60 ms later, before the run loop's next
/// look (every 100 ms) told the guard of it: the clean-up, init's child, ran on past the release (most
/// rounds). mpsync adopts it, as a subreaper from the forward on, and ends it with the job.
#[test]
fn a_worker_started_by_a_forwarded_term_trap_is_ended_before_the_release() {
    let env = TestEnv::file();
    let mut escaped = Vec::new();
    for round in 0..6 {
        let name = env.lease_name("term-setsid");
        let (worker, up) = (env.path(&env.lease_name("worker")), env.path(&env.lease_name("up")));
        let script = cleanup_in_the_grace_script(&worker, &up, "1896", "0.06");
        let mut lock = env.spawn(["lock", "-vv", name.as_str(), "--grace", "3s", "--", "sh", "-c", &script]);
        wait_for_file(&up, "up");
        lock.signal(Signal::SIGTERM);
        let status = lock.wait_for(PATIENCE);
        let cleanup = read_pid(&worker);
        let left = alive(cleanup);
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(cleanup), Signal::SIGKILL);
        assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", lock.stderr());
        if left {
            escaped.push(round);
        }
    }
    assert!(escaped.is_empty(), "the clean-up ran on after the release in rounds {escaped:?}");
}

/// Found by review (helper-187): Ctrl-Z (SIGTSTP to mpsync, in a group of its own): mpsync passes TSTP to
/// the job first. The child's TSTP handler starts a worker in a session of its own and exits. The job
/// showed nothing left to stop (the worker was init's), mpsync stopped itself with the lease held, and the
/// worker ran on, never stopped, while nothing renewed the lease. mpsync adopts the worker (a subreaper from
/// the stop on) and stops it with the job; and since the child has exited, mpsync does not stop itself: it
/// ends what the child left and releases, with the child's code.
#[test]
fn a_worker_started_by_a_tstp_handler_is_stopped_and_ended_with_the_job() {
    let env = TestEnv::file();
    let name = env.lease_name("tstp-trap");
    let (worker, up) = (env.path("worker"), env.path("up"));
    let script = format!(
        concat!(
            "import os, signal, subprocess, time\n",
            "def on_tstp(signum, frame):\n",
            "    subprocess.Popen(['sh', '-c', 'echo $$ > {w}; exec sleep 1897'], start_new_session=True)\n",
            "    os._exit(0)\n",
            "signal.signal(signal.SIGTSTP, on_tstp)\n",
            "open('{u}', 'w').write('up')\n",
            "while True:\n",
            "    time.sleep(0.05)\n"
        ),
        w = worker.display(),
        u = up.display()
    );
    let mut command = env.mpsync(["lock", "-vv", name.as_str(), "--grace", "2s", "--", "python3", "-c", &script]);
    command.process_group(0);
    let mut lock = Proc::spawn(command, &env.dir);
    wait_for_file(&up, "up");
    lock.signal(Signal::SIGTSTP);
    let cleanup = read_pid(&worker);
    let status = lock.wait_for(PATIENCE);
    let stopped = crate::support::pty::state(lock.pid()) == Some('T');
    if status.is_none() {
        lock.signal(Signal::SIGCONT);
        lock.wait_for(PATIENCE);
    }
    let left = alive(cleanup);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(cleanup), Signal::SIGKILL);
    assert!(status.is_some(), "mpsync did not exit (stopped: {stopped}):\n{}", lock.stderr());
    assert!(!left, "the worker ran on after mpsync exited ({status:?}):\n{}", lock.stderr());
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", lock.stderr());
    assert_eq!(env.holder(&name).as_deref(), Some(""), "released: {}", lock.stderr());
}

/// Found by review (helper-190): a SIGHUP passed on (the child's reload) made mpsync a child subreaper until
/// the job's end, as an ending signal does: a daemon that a helper mpsync inherited across `exec` started
/// after that (`setsid -f`) was adopted, taken for the job's and killed at the child's end. A HUP adopts
/// nothing: that daemon is no more the job's than it would be without the HUP (README: what mpsync
/// inherited is not the job's). The same after Ctrl-Z (SIGTSTP to mpsync) and SIGCONT: mpsync is no
/// subreaper once the job runs again.
#[test]
fn a_sighup_passed_on_leaves_an_inherited_helpers_daemon_alone() {
    inherited_helpers_daemon_after(Signal::SIGHUP);
}

#[test]
fn a_job_stopped_and_continued_leaves_an_inherited_helpers_daemon_alone() {
    inherited_helpers_daemon_after(Signal::SIGTSTP);
}

fn inherited_helpers_daemon_after(signal: Signal) {
    let env = TestEnv::file();
    let name = env.lease_name("hup-helper");
    let d = env.dir.display().to_string();
    let child = format!(
        "trap 'echo hup >> {d}/hups' HUP; echo up > {d}/up; while [ ! -e {d}/end ]; do sleep 0.05; done; exit 0"
    );
    let lock = env.mpsync(["lock", "-v", name.as_str(), "--grace", "2s", "--", "sh", "-c", &child]);
    // `helper & exec mpsync ...`: the helper is mpsync's child, inherited across the exec.
    let mut mpsync = spawn_after_a_helper(&env, &helper_starting_a_daemon(&d, "1903"), lock);
    wait_for_file(&env.path("up"), "up");
    match signal {
        Signal::SIGHUP => {
            mpsync.signal(Signal::SIGHUP);
            wait_for_file(&env.path("hups"), "hup");
        }
        _ => {
            mpsync.signal(signal);
            wait_until("mpsync to stop", || pty::state(mpsync.pid()) == Some('T'));
            mpsync.signal(Signal::SIGCONT);
            wait_until("mpsync to run again", || pty::state(mpsync.pid()) != Some('T'));
            wait_until("the job to run again", || mpsync.stderr().contains("continuing the child's job"));
        }
    }
    fs::write(env.path("go"), "").unwrap();
    wait_until("the daemon", || {
        env.path("daemon").exists() && fs::read_to_string(env.path("daemon")).unwrap().ends_with('\n')
    });
    let (daemon, helper) = (read_pid(&env.path("daemon")), read_pid(&env.path("helper")));
    fs::write(env.path("end"), "").unwrap();
    let status = mpsync.wait_for(PATIENCE);
    let ran_on = alive(daemon);
    for pid in [daemon, helper] {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", mpsync.stderr());
    assert!(ran_on, "the inherited helper's daemon was taken for the job's and killed:\n{}", mpsync.stderr());
}

/// Found by review (helper-192): `kill %1` of a job stopped by Ctrl-Z sends mpsync TERM, then CONT (or CONT
/// first, as it comes): the job ends on the TERM, but the CONT turned off the subreaper mpsync had become to
/// stop it, and the TERM trap's `setsid -f` clean-up, init's, ran on past the release. While a job ends on
/// a signal passed on, mpsync stays a subreaper until it is gone.
#[test]
fn a_stopped_job_sent_term_and_cont_ends_the_trap_cleanup_before_the_release() {
    for term_first in [true, false] {
        let env = TestEnv::file();
        let name = env.lease_name("tstp-term");
        let d = env.dir.display().to_string();
        let child = format!(
            "trap 'setsid -f sh -c \"echo \\$\\$ > {d}/cleanup; exec sleep 1905\" </dev/null >/dev/null 2>&1; exit 0' TERM; \
             echo up > {d}/up; while :; do sleep 0.05; done"
        );
        // A group of its own, whose parent (this test) is in another group of the session: a stop signal to
        // a process of an orphaned group (the test run under setsid) is discarded by the kernel.
        let mut command = env.mpsync(["lock", "-v", name.as_str(), "--grace", "3s", "--", "sh", "-c", &child]);
        command.process_group(0);
        let mut mpsync = Proc::spawn(command, &env.dir);
        wait_for_file(&env.path("up"), "up");
        mpsync.signal(Signal::SIGTSTP);
        wait_until("mpsync to stop", || pty::state(mpsync.pid()) == Some('T'));
        let (first, then) =
            if term_first { (Signal::SIGTERM, Signal::SIGCONT) } else { (Signal::SIGCONT, Signal::SIGTERM) };
        mpsync.signal(first);
        mpsync.signal(then);
        let status = mpsync.wait_for(PATIENCE);
        let cleanup = env.path("cleanup");
        let ran_on = cleanup.exists() && {
            let pid = read_pid(&cleanup);
            let alive = alive(pid);
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            alive
        };
        assert!(status.is_some(), "mpsync did not exit:\n{}", mpsync.stderr());
        assert!(
            !ran_on,
            "term first {term_first}: the TERM trap's clean-up ran on after the release:\n{}",
            mpsync.stderr()
        );
    }
}

/// `sh -c 'helper & exec mpsync ...'`, with `lock` as the mpsync command, in a group of its own (see
/// `a_stopped_job_sent_term_and_cont_ends_the_trap_cleanup_before_the_release`): the helper (`sh -c
/// helper`, its pid in `DIR/helper`) is mpsync's child, inherited across the exec.
fn spawn_after_a_helper(env: &TestEnv, helper: &str, lock: std::process::Command) -> Proc {
    let d = env.dir.display();
    let mut command = std::process::Command::new("sh");
    command
        .arg("-c")
        .arg(format!("sh -c \"$0\" & echo $! > {d}/helper; exec \"$@\""))
        .arg(helper)
        .arg(lock.get_program())
        .args(lock.get_args())
        .stdin(Stdio::null())
        .process_group(0);
    for (key, value) in lock.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    Proc::spawn(command, &env.dir)
}

/// An inherited helper that waits for `DIR/go`, then starts a daemon (`setsid -f`, its pid in `DIR/daemon`,
/// `sleep MARKER`) and sleeps on.
fn helper_starting_a_daemon(d: &str, marker: &str) -> String {
    format!(
        "while [ ! -e {d}/go ]; do sleep 0.05; done; \
         setsid -f sh -c 'echo $$ > {d}/daemon; exec sleep {marker}' </dev/null >/dev/null 2>&1; exec sleep 1000"
    )
}

fn sigkill(pid: i32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
}

/// A python child whose TSTP handler starts a worker in a session of its own (`setsid -f`: its parent exits
/// at once, so mpsync, a subreaper to stop the job, adopts it; its pid in `DIR/worker`, `sleep MARKER`), and
/// runs on (mpsync then stops the job with SIGSTOP), until `DIR/end` exists: then it exits 7.
fn tstp_worker_script(d: &str, marker: &str) -> String {
    format!(
        concat!(
            "import os, signal, subprocess, time\n",
            "def on_tstp(signum, frame):\n",
            "    subprocess.call(['setsid', '-f', 'sh', '-c', 'echo $$ > {d}/worker; exec sleep {m}'])\n",
            "signal.signal(signal.SIGTSTP, on_tstp)\n",
            "open('{d}/up', 'w').write('up')\n",
            "while not os.path.exists('{d}/end'):\n",
            "    time.sleep(0.05)\n",
            "os._exit(7)\n"
        ),
        d = d,
        m = marker
    )
}

/// mpsync in a group of its own running `tstp_worker_script`, sent SIGTSTP: returns it stopped, and the
/// worker's pid.
fn stopped_with_an_adopted_worker(env: &TestEnv, args: &[&str]) -> (Proc, i32) {
    let mut command = env.mpsync(args);
    command.process_group(0);
    let lock = Proc::spawn(command, &env.dir);
    wait_for_file(&env.path("up"), "up");
    lock.signal(Signal::SIGTSTP);
    let worker = read_pid(&env.path("worker"));
    wait_until("mpsync to stop", || pty::state(lock.pid()) == Some('T'));
    (lock, worker)
}

/// Found by review (helper-192): Ctrl-Z (TSTP to mpsync); the child's TSTP handler starts a worker with
/// `setsid -f`, which mpsync adopts as it stops the job. It never told its guard of the worker: `bg` made it
/// no subreaper again (nor did `adopts()` hold any more), so a SIGKILL of mpsync, stopped or after `bg`,
/// left the worker running beside the next holder. The job, seen stopped, is kept and told to the guard
/// before mpsync stops.
#[test]
fn a_worker_adopted_as_the_job_stops_dies_with_a_sigkill_of_mpsync_after_bg() {
    let env = TestEnv::file();
    let name = env.lease_name("tstp-bg-kill");
    let script = tstp_worker_script(&env.dir.display().to_string(), "19601");
    let args = ["lock", "-vv", name.as_str(), "--grace", "2s", "--", "python3", "-c", &script];
    let (mut lock, worker) = stopped_with_an_adopted_worker(&env, &args);
    lock.signal(Signal::SIGCONT);
    wait_until("the job to run again", || lock.stderr().contains("continuing the child's job"));
    lock.signal(Signal::SIGKILL);
    lock.wait_for(PATIENCE).expect("killed");
    let died = within_patience(|| !alive(worker));
    sigkill(worker);
    assert!(died, "the worker adopted as the job stopped ran on after a SIGKILL of mpsync:\n{}", lock.stderr());
}

#[test]
fn a_worker_adopted_as_the_job_stops_dies_with_a_sigkill_of_mpsync_while_stopped() {
    let env = TestEnv::file();
    let name = env.lease_name("tstp-stopped-kill");
    let script = tstp_worker_script(&env.dir.display().to_string(), "19602");
    let args = ["lock", "-vv", name.as_str(), "--grace", "2s", "--", "python3", "-c", &script];
    let (mut lock, worker) = stopped_with_an_adopted_worker(&env, &args);
    lock.signal(Signal::SIGKILL);
    lock.wait_for(PATIENCE).expect("killed");
    let died = within_patience(|| !alive(worker));
    sigkill(worker);
    assert!(died, "the worker adopted as the job stopped ran on after a SIGKILL of mpsync:\n{}", lock.stderr());
}

/// The promise behind the two tests above: once the SIGKILLed holder's lease expired, the next holder's
/// child runs alone.
#[test]
fn the_next_holder_never_runs_beside_a_worker_adopted_as_the_job_stopped() {
    let env = TestEnv::file();
    let name = env.lease_name("tstp-beside");
    let script = tstp_worker_script(&env.dir.display().to_string(), "19603");
    let args = fast(&["lock", "-v", name.as_str()], &["python3", "-c", &script]);
    let (mut lock, worker) = stopped_with_an_adopted_worker(&env, &args);
    lock.signal(Signal::SIGCONT);
    wait_until("the job to run again", || lock.stderr().contains("continuing the child's job"));
    lock.signal(Signal::SIGKILL);
    lock.wait_for(PATIENCE).expect("killed");
    let probe =
        format!("if grep -q '^State:.*[RST]' /proc/{worker}/status 2>/dev/null; then echo BESIDE; else echo alone; fi");
    let second = env.run(["lock", name.as_str(), "--", "sh", "-c", &probe]);
    sigkill(worker);
    second.assert_code(0);
    assert!(
        second.stdout.contains("alone"),
        "the next holder's child ran beside the first holder's worker (pid {worker}): {}\nfirst:\n{}",
        second.stdout,
        lock.stderr()
    );
}

/// How the job of `stopped_with_an_adopted_worker` goes on, and ends.
#[derive(Clone, Copy, Debug)]
enum AfterTheStop {
    /// `bg`, then the lease is lost (a thief's record): exit 123.
    BgThenLoss,
    /// The lease is lost while mpsync is stopped, then CONT: exit 123.
    LossWhileStoppedThenCont,
    /// `bg`, then the child exits 7 on its own.
    BgThenExit,
}

/// The worker adopted as the job stopped (and kept: see
/// `a_worker_adopted_as_the_job_stops_dies_with_a_sigkill_of_mpsync_after_bg`) is the job's however it
/// ends: gone when mpsync exits.
fn a_worker_adopted_as_the_job_stops_is_ended_with_it(then: AfterTheStop, marker: &str) {
    let env = TestEnv::file();
    let name = env.lease_name("tstp-then");
    let d = env.dir.display().to_string();
    let script = tstp_worker_script(&d, marker);
    let timing = ["--lease-duration", "8s", "--renew-deadline", "2s", "--retry-period", "300ms", "--grace", "3s"];
    let args = [&["lock", "-vv", name.as_str()][..], &timing, &["--", "python3", "-c", &script]].concat();
    let (mut lock, worker) = stopped_with_an_adopted_worker(&env, &args);
    match then {
        AfterTheStop::BgThenLoss => {
            lock.signal(Signal::SIGCONT);
            wait_until("the job to run again", || lock.stderr().contains("continuing the child's job"));
            env.edit(&name, |spec| {
                spec.holder_identity = Some("thief".into());
                spec.lease_duration_seconds = Some(60);
            });
        }
        AfterTheStop::LossWhileStoppedThenCont => {
            // Past the renew deadline (2 s), before the guard's deadline (2 + 3 + 1.5 s): nothing to wait for
            // but time, mpsync being stopped.
            std::thread::sleep(Duration::from_secs(3));
            lock.signal(Signal::SIGCONT);
        }
        AfterTheStop::BgThenExit => {
            lock.signal(Signal::SIGCONT);
            wait_until("the job to run again", || lock.stderr().contains("continuing the child's job"));
            fs::write(env.path("end"), "").unwrap();
        }
    }
    let status = lock.wait_for(PATIENCE);
    let left = alive(worker);
    sigkill(worker);
    assert!(status.is_some(), "{then:?}: mpsync did not exit:\n{}", lock.stderr());
    assert!(!left, "{then:?}: the adopted worker ran on after mpsync exited ({status:?}):\n{}", lock.stderr());
    let want = if matches!(then, AfterTheStop::BgThenExit) { 7 } else { 123 };
    assert_eq!(status.and_then(|s| s.code()), Some(want), "{then:?}: {}", lock.stderr());
}

#[test]
fn a_worker_adopted_as_the_job_stops_is_ended_with_it_after_bg_and_a_loss() {
    a_worker_adopted_as_the_job_stops_is_ended_with_it(AfterTheStop::BgThenLoss, "19604");
}

#[test]
fn a_worker_adopted_as_the_job_stops_is_ended_with_it_after_a_loss_while_stopped() {
    a_worker_adopted_as_the_job_stops_is_ended_with_it(AfterTheStop::LossWhileStoppedThenCont, "19605");
}

#[test]
fn a_worker_adopted_as_the_job_stops_is_ended_with_it_after_bg_and_the_childs_exit() {
    a_worker_adopted_as_the_job_stops_is_ended_with_it(AfterTheStop::BgThenExit, "19606");
}

/// Found by review (helper-192): `helper & exec mpsync lock ...`, and the helper starts a daemon (`setsid
/// -f`) while Ctrl-Z holds the job and mpsync stopped. mpsync was still the subreaper it became to stop
/// the job: it adopted the daemon, and after `bg` took it for the job's and killed it at the child's end.
/// A stopped job starts nothing: mpsync is no subreaper once it has stopped the job.
#[test]
fn an_inherited_helpers_daemon_started_while_the_job_is_stopped_is_left_alone() {
    let env = TestEnv::file();
    let name = env.lease_name("helper-while-stopped");
    let d = env.dir.display().to_string();
    let child = format!("echo up > {d}/up; while [ ! -e {d}/end ]; do sleep 0.05; done; exit 0");
    let lock = env.mpsync(["lock", "-vv", name.as_str(), "--grace", "2s", "--", "sh", "-c", &child]);
    let mut mpsync = spawn_after_a_helper(&env, &helper_starting_a_daemon(&d, "19607"), lock);
    wait_for_file(&env.path("up"), "up");
    mpsync.signal(Signal::SIGTSTP);
    wait_until("mpsync to stop", || pty::state(mpsync.pid()) == Some('T'));
    fs::write(env.path("go"), "").unwrap();
    let (daemon, helper) = (read_pid(&env.path("daemon")), read_pid(&env.path("helper")));
    // Its parent (`setsid -f`) exits at once: the daemon is init's (or mpsync's, were it a subreaper still).
    wait_until("the daemon's parent to exit", || pty::stat_field(daemon, 4) != Some(helper));
    let parent = pty::stat_field(daemon, 4);
    mpsync.signal(Signal::SIGCONT);
    wait_until("the job to run again", || mpsync.stderr().contains("continuing the child's job"));
    fs::write(env.path("end"), "").unwrap();
    let status = mpsync.wait_for(PATIENCE);
    let ran_on = alive(daemon);
    sigkill(daemon);
    sigkill(helper);
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", mpsync.stderr());
    assert_ne!(parent, Some(mpsync.pid()), "mpsync, stopped, adopted the helper's daemon:\n{}", mpsync.stderr());
    assert!(ran_on, "the inherited helper's daemon was taken for the job's and killed:\n{}", mpsync.stderr());
}

/// The same daemon, started while mpsync is stopped past the guard's deadline, then CONT (the lease is lost:
/// exit 123): neither the guard at the deadline nor the end of the job kills it (README: what mpsync
/// inherited is not the job's, "also at the lease's deadline, mpsync frozen").
#[test]
fn an_inherited_helpers_daemon_started_during_a_stop_past_the_deadline_is_left_alone() {
    let env = TestEnv::file();
    let name = env.lease_name("helper-long-stop");
    let d = env.dir.display().to_string();
    let child = format!("echo up > {d}/up; while :; do sleep 0.05; done");
    let lock = env.mpsync(fast(&["lock", "-vv", name.as_str()], &["sh", "-c", &child]));
    let mut mpsync = spawn_after_a_helper(&env, &helper_starting_a_daemon(&d, "19608"), lock);
    wait_for_file(&env.path("up"), "up");
    mpsync.signal(Signal::SIGTSTP);
    wait_until("mpsync to stop", || pty::state(mpsync.pid()) == Some('T'));
    fs::write(env.path("go"), "").unwrap();
    let (daemon, helper) = (read_pid(&env.path("daemon")), read_pid(&env.path("helper")));
    // The guard's deadline (2 s + 1 s + 0.5 s after the last renewal) kills the stopped child.
    let child_pid = mpsync.stderr().lines().find_map(|line| {
        let after = line.split("child started").nth(1)?;
        after.split("pid=").nth(1)?.split_whitespace().next()?.parse::<i32>().ok()
    });
    wait_until("the guard's deadline to kill the child", || child_pid.is_some_and(|pid| !alive(pid)));
    let after_deadline = alive(daemon);
    mpsync.signal(Signal::SIGCONT);
    let status = mpsync.wait_for(PATIENCE);
    let after_exit = alive(daemon);
    sigkill(daemon);
    sigkill(helper);
    assert!(status.is_some(), "mpsync did not exit:\n{}", mpsync.stderr());
    assert!(after_deadline, "the guard killed the inherited helper's daemon at the deadline:\n{}", mpsync.stderr());
    assert!(after_exit, "the inherited helper's daemon was killed at the job's end:\n{}", mpsync.stderr());
}

/// Found by review (helper-192): `kill -TSTP <mpsync>; kill -CONT <mpsync>` while the child handles TSTP
/// (mpsync waits up to 0.5 s for the job to stop before SIGSTOP): the CONT came before mpsync stopped
/// itself, and it then stayed stopped for good, the lease unrenewed. A CONT queued by then means no stop.
#[test]
fn a_sigcont_that_comes_while_mpsync_stops_the_job_is_not_lost() {
    let env = TestEnv::file();
    let name = env.lease_name("early-cont");
    let script = tstp_ignoring_child(&env);
    let mut command = env.mpsync(fast(&["lock", "-vv", name.as_str()], &["python3", "-c", &script]));
    command.process_group(0);
    let mut lock = Proc::spawn(command, &env.dir);
    wait_for_file(&env.path("up"), "up");
    lock.signal(Signal::SIGTSTP);
    wait_until("mpsync to begin stopping the job", || lock.stderr().contains("job control: stopping the child's job"));
    lock.signal(Signal::SIGCONT);
    let continued = within_patience(|| lock.stderr().contains("continuing the child's job"));
    let state = pty::state(lock.pid());
    fs::write(env.path("end"), "").unwrap();
    if state == Some('T') {
        lock.signal(Signal::SIGCONT);
    }
    let status = lock.wait_for(PATIENCE);
    assert!(
        continued,
        "mpsync stayed stopped (state {state:?}) after a CONT that came as it stopped:\n{}",
        lock.stderr()
    );
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", lock.stderr());
    assert_eq!(env.holder(&name).as_deref(), Some(""), "released: {}", lock.stderr());
}

/// What README says: a TERM, INT or QUIT passed on that the child traps and carries on after leaves mpsync
/// a child subreaper until the job's end, and it cannot tell whose orphan a process is: a daemon an
/// inherited helper starts (`setsid -f`) after that is adopted, taken for the job's, and ended with it.
#[test]
fn after_a_trapped_quit_an_inherited_helpers_later_daemon_is_ended_with_the_job() {
    let env = TestEnv::file();
    let name = env.lease_name("quit-helper");
    let d = env.dir.display().to_string();
    let child = format!(
        "trap 'echo got >> {d}/got' QUIT; echo up > {d}/up; while [ ! -e {d}/end ]; do sleep 0.05; done; exit 0"
    );
    let lock = env.mpsync(["lock", "-v", name.as_str(), "--grace", "2s", "--", "sh", "-c", &child]);
    let mut mpsync = spawn_after_a_helper(&env, &helper_starting_a_daemon(&d, "19609"), lock);
    wait_for_file(&env.path("up"), "up");
    mpsync.signal(Signal::SIGQUIT);
    wait_for_file(&env.path("got"), "got");
    fs::write(env.path("go"), "").unwrap();
    let (daemon, helper) = (read_pid(&env.path("daemon")), read_pid(&env.path("helper")));
    wait_until("mpsync to adopt the daemon", || pty::stat_field(daemon, 4) == Some(mpsync.pid()));
    fs::write(env.path("end"), "").unwrap();
    let status = mpsync.wait_for(PATIENCE);
    let ran_on = alive(daemon);
    sigkill(daemon);
    sigkill(helper);
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", mpsync.stderr());
    assert!(!ran_on, "the daemon mpsync adopted after the trapped QUIT ran on:\n{}", mpsync.stderr());
}

/// Found by review (helper-197): a SIGCONT that comes while mpsync stops the job was looked for only in the
/// signal channel just before mpsync stopped itself. One the kernel had delivered but the signal thread had
/// not yet passed on (a busy machine's scheduler) was not seen: mpsync stopped itself after the only CONT it
/// would get, and stayed stopped for good (the job with it, the lease unrenewed, until the guard killed the
/// job at the lease's deadline). The shim (`holdsignals.c`) holds the signal thread after its wake-up. Now
/// mpsync goes on and continues the child's job (the lease is still held).
#[test]
fn a_sigcont_delivered_but_not_yet_passed_on_while_the_job_stops_is_not_lost() {
    let env = TestEnv::file();
    let script = tstp_ignoring_child(&env);
    let (mut lock, hold, _) = held_lock(&env, "cont-race", &["holdsignals"], &["python3", "-c", &script]);
    lock.signal(Signal::SIGTSTP);
    // mpsync is in `stop_job` now: the child handles TSTP, so mpsync waits up to 0.5 s before SIGSTOP.
    wait_until("mpsync to begin stopping the job", || lock.stderr().contains("job control: stopping the child's job"));
    fs::write(hold.join("hold"), "").unwrap();
    lock.signal(Signal::SIGCONT);
    wait_until("the signal thread to wake up for the CONT", || hold.join("held").exists());
    // Either mpsync stops itself (the CONT unseen) or it goes on (the CONT seen).
    wait_until("mpsync to stop itself, or to continue the job", || {
        pty::state(lock.pid()) == Some('T') || lock.stderr().contains("continuing the child's job")
    });
    let stopped_after_the_cont = pty::state(lock.pid()) == Some('T');
    fs::write(hold.join("release"), "").unwrap();
    let continued = within_patience(|| lock.stderr().contains("continuing the child's job"));
    let state = pty::state(lock.pid());
    fs::write(env.path("end"), "").unwrap();
    if state == Some('T') {
        lock.signal(Signal::SIGCONT);
    }
    let status = lock.wait_for(PATIENCE);
    assert!(
        continued && !stopped_after_the_cont,
        "mpsync stopped itself after the only CONT it got (state {state:?}), and stayed stopped:\n{}",
        lock.stderr()
    );
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", lock.stderr());
}

/// A Python child that handles SIGTSTP (so mpsync waits for its job to stop before SIGSTOP), writes `up`
/// in the test's directory, and exits 0 once `end` exists there.
fn tstp_ignoring_child(env: &TestEnv) -> String {
    format!(
        concat!(
            "import os, signal, time\n",
            "signal.signal(signal.SIGTSTP, lambda s, f: None)\n",
            "open('{d}/up', 'w').write('up')\n",
            "while not os.path.exists('{d}/end'):\n",
            "    time.sleep(0.05)\n",
            "os._exit(0)\n"
        ),
        d = env.dir.display()
    )
}

// Job-control signals handed on in one batch by a late signal thread (found by review, helper-200).

/// `mpsync lock` (fast timings, `-vv`, a process group of its own) of `child`, which writes `up` in the test's
/// directory, with `shims` preloaded (holdsignals.c, holdmain.c): returned once the child is up, with the
/// shims' hold directory and the lease's name.
fn held_lock(env: &TestEnv, prefix: &str, shims: &[&str], child: &[&str]) -> (Proc, std::path::PathBuf, String) {
    let preload: Vec<String> = shims.iter().map(|shim| build_shim(env, shim).display().to_string()).collect();
    let hold = env.path("hold-dir");
    fs::create_dir_all(&hold).unwrap();
    let name = env.lease_name(prefix);
    let mut command = env.mpsync(fast(&["lock", "-vv", name.as_str()], child));
    command.process_group(0);
    command.env("LD_PRELOAD", preload.join(":")).env("MPSYNC_TEST_HOLD_DIR", &hold);
    let mut lock = Proc::spawn(command, &env.dir);
    lock.wait_for_file(&env.path("up"), "up");
    (lock, hold, name)
}

/// The thread id of mpsync's signal thread ("mpsync-signals").
fn signal_thread(pid: i32) -> i32 {
    let mut found = None;
    wait_until("mpsync's signal thread to show in /proc", || {
        found = fs::read_dir(format!("/proc/{pid}/task")).ok().and_then(|tasks| {
            tasks.flatten().find_map(|task| {
                let comm = fs::read_to_string(task.path().join("comm")).ok()?;
                (comm.trim() == "mpsync-signals").then(|| task.file_name().to_string_lossy().parse().ok())?
            })
        });
        found.is_some()
    });
    found.unwrap()
}

/// Whether the thread is blocked in its (blocking) recv of signal-hook's self-pipe: every signal it woke
/// for has been handed to the channel. /proc says "running" for a thread that runs, so a non-blocking
/// recv (signal-hook's flush) is never seen here.
fn blocked_in_recv(pid: i32, tid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall"))
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse::<i64>().ok()))
        == Some(nix::libc::SYS_recvfrom)
}

/// Whether `signal` is still pending for the process (not yet taken by a handler).
fn shared_pending(pid: i32, signal: Signal) -> bool {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mask = status
        .lines()
        .find_map(|line| line.strip_prefix("ShdPnd:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    mask & (1 << (signal as i32 - 1)) != 0
}

/// Send `signal` and wait until a handler of mpsync's took it (the signal-hook slot is set then, and the
/// order of delivery noted).
fn send_and_see_taken(lock: &Proc, signal: Signal) {
    lock.signal(signal);
    wait_until(&format!("mpsync's handler to take {signal}"), || !shared_pending(lock.pid(), signal));
}

fn touch(path: &Path) {
    fs::write(path, "").unwrap();
}

/// Found by review (helper-200). `kill -TSTP <mpsync>; kill -CONT <mpsync>` back to back, both delivered
/// before the signal thread runs (a busy machine): the thread hands them on as CONT, then TSTP (signal-number
/// order). mpsync takes the CONT first (nothing to continue), then the TSTP, and stops the job and itself
/// after the only CONT it will get: stopped for good, the lease unrenewed, the child killed by the guard at
/// the deadline. The last word was CONT: mpsync runs on and passes signals on (a USR1 reaches the child).
#[test]
fn a_tstp_then_a_cont_handed_on_in_one_batch_leave_mpsync_running() {
    let env = TestEnv::file();
    let d = env.dir.display().to_string();
    let script = format!(
        "trap 'echo got > {d}/usr1' USR1; echo up > {d}/up; while [ ! -e {d}/end ]; do sleep 0.05; done; exit 0"
    );
    let (mut lock, hold, _) = held_lock(&env, "tstp-cont-batch", &["holdsignals"], &["sh", "-c", &script]);
    let thread = signal_thread(lock.pid());
    touch(&hold.join("hold"));
    // The TSTP wakes the thread, which is held before it looks at what is pending.
    send_and_see_taken(&lock, Signal::SIGTSTP);
    wait_until("the signal thread to wake up for the TSTP", || hold.join("held").exists());
    // The CONT comes after it, while the thread is held.
    send_and_see_taken(&lock, Signal::SIGCONT);
    touch(&hold.join("release"));
    wait_until("the signal thread to hand both on", || blocked_in_recv(lock.pid(), thread));
    // Anything mpsync passes on now shows whether it runs.
    lock.signal(Signal::SIGUSR1);
    let passed_on = within_patience(|| env.path("usr1").exists());
    let state = pty::state(lock.pid());
    let log = lock.stderr();
    touch(&env.path("end"));
    if state == Some('T') {
        lock.signal(Signal::SIGCONT);
    }
    let status = lock.wait_for(PATIENCE);
    assert!(
        passed_on && state != Some('T'),
        "after TSTP then CONT (CONT last), mpsync is stopped for good (state {state:?}), the USR1 not passed on:\n{log}"
    );
    assert!(status.is_some(), "mpsync did not exit:\n{}", lock.stderr());
}

/// Found by review (helper-200): a gap in 2040166. While mpsync stops the job (the child handles TSTP: up to
/// 0.5 s), the user sends TSTP again, then CONT (nothing showed for half a second). The second TSTP is in
/// the channel already; the CONT was delivered but the thread has not handed it on yet. mpsync saw the
/// queued TSTP and took it for the last word: it stopped itself after the last (and only) CONT, and stayed
/// stopped for good, the lease unrenewed. Once a CONT is delivered after the last stop request, mpsync goes
/// on.
#[test]
fn a_cont_after_a_second_tstp_while_the_job_stops_is_not_lost() {
    let env = TestEnv::file();
    let script = tstp_ignoring_child(&env);
    let (mut lock, hold, _) =
        held_lock(&env, "tstp-tstp-cont", &["holdsignals", "holdmain"], &["python3", "-c", &script]);
    let thread = signal_thread(lock.pid());
    touch(&hold.join("holdmain"));
    lock.signal(Signal::SIGTSTP);
    // mpsync is in `stop_job`, about to SIGSTOP the job that handled the TSTP: held there.
    wait_until("mpsync's main thread to be held in stop_job", || hold.join("mainheld").exists());
    // A second TSTP, handed on to the channel (the thread held at its wake-up, then let go and back in recv).
    touch(&hold.join("hold"));
    send_and_see_taken(&lock, Signal::SIGTSTP);
    wait_until("the signal thread to wake up for the second TSTP", || hold.join("held").exists());
    fs::remove_file(hold.join("held")).unwrap();
    touch(&hold.join("release"));
    wait_until("the signal thread to hand the second TSTP on", || blocked_in_recv(lock.pid(), thread));
    fs::remove_file(hold.join("release")).unwrap();
    // Then CONT, delivered (the flag set), the thread held before it hands it on.
    send_and_see_taken(&lock, Signal::SIGCONT);
    wait_until("the signal thread to wake up for the CONT", || hold.join("held").exists());
    touch(&hold.join("mainrelease"));
    wait_until("mpsync to stop itself, or to go on", || {
        pty::state(lock.pid()) == Some('T') || lock.stderr().contains("continued before mpsync stopped")
    });
    let stopped = pty::state(lock.pid()) == Some('T');
    touch(&hold.join("release"));
    let went_on = !stopped && within_patience(|| lock.stderr().contains("continuing the child's job"));
    let state = pty::state(lock.pid());
    let log = lock.stderr();
    touch(&env.path("end"));
    if state == Some('T') {
        lock.signal(Signal::SIGCONT);
    }
    let status = lock.wait_for(PATIENCE);
    assert!(
        went_on,
        "after TSTP, TSTP, CONT (CONT last) mpsync stopped itself (state {state:?}) and stayed stopped:\n{log}"
    );
    assert!(status.is_some(), "mpsync did not exit:\n{}", lock.stderr());
}

/// Found by review (helper-200), minor: a SIGTERM that comes while mpsync stops the job (a `systemctl stop`,
/// a pod's deletion, `kill <mpsync>` from another terminal, in the half second a child that handles TSTP
/// gets) is taken by `continued_meanwhile` as a notice, and mpsync then stops itself anyway: the stop request
/// waits, unanswered, until someone continues mpsync; the lease is left to lapse instead of being released.
/// Asked to end, mpsync does not stop itself: it ends the job and releases (143).
#[test]
fn a_sigterm_while_mpsync_stops_the_job_is_answered_not_left_stopped() {
    let env = TestEnv::file();
    let script = tstp_ignoring_child(&env);
    let (mut lock, hold, name) =
        held_lock(&env, "tstp-term", &["holdsignals", "holdmain"], &["python3", "-c", &script]);
    touch(&hold.join("holdmain"));
    lock.signal(Signal::SIGTSTP);
    wait_until("mpsync's main thread to be held in stop_job", || hold.join("mainheld").exists());
    let thread = signal_thread(lock.pid());
    // The TERM handed on to the channel for sure: the thread held at its wake-up, let go, back in recv.
    touch(&hold.join("hold"));
    send_and_see_taken(&lock, Signal::SIGTERM);
    wait_until("the signal thread to wake up for the TERM", || hold.join("held").exists());
    touch(&hold.join("release"));
    wait_until("the signal thread to hand the TERM on", || blocked_in_recv(lock.pid(), thread));
    touch(&hold.join("mainrelease"));
    let mut status = None;
    wait_until("mpsync to stop itself, or to exit", || {
        status = lock.child.try_wait().unwrap();
        status.is_some() || pty::state(lock.pid()) == Some('T')
    });
    let log = lock.stderr();
    touch(&env.path("end"));
    if status.is_none() {
        lock.signal(Signal::SIGCONT);
    }
    let _ = lock.wait_for(PATIENCE);
    assert!(status.is_some(), "asked to end (SIGTERM) as it stopped the job, mpsync stopped itself instead:\n{log}");
    assert_eq!(status.and_then(|s| s.code()), Some(143), "{log}");
    assert_eq!(env.holder(&name).as_deref(), Some(""), "released: {log}");
}

/// mpsync in a session of its own (so that `kill(0, ...)` from the shim reaches only mpsync's group), with
/// `ignored` left ignored by its parent, as `nohup` (SIGHUP) or a shell without job control (`cmd &`: SIGINT)
/// start it. The shim (childwindow.c) sends `ignored` to mpsync's group just before the child's
/// setpgid(0, 0). Found by review (helper-206): the child, which blocks every signal until its handlers are
/// the defaults, kept it pending (a blocked signal is not discarded as ignored) and died of it at the
/// unblocking, before its exec. It is discarded now, as an ignored signal is.
fn a_signal_ignored_at_start_sent_as_the_child_forks(ignored: nix::sys::signal::Signal) {
    let env = TestEnv::file();
    let shim = build_shim(&env, "childwindow");
    let name = env.lease_name("ignored-window");
    let ran = env.path("child-ran");
    let script = format!("grep SigIgn /proc/self/status > {}", ran.display());
    let mut command = env.mpsync(["lock", &name, "--", "sh", "-c", &script]);
    command.env("LD_PRELOAD", &shim).env("CHILDWINDOW_SETPGID_SIGNAL", (ignored as i32).to_string());
    let number = ignored as i32;
    // SAFETY: setsid(2) and signal(2) are async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            nix::libc::signal(number, nix::libc::SIG_IGN);
            Ok(())
        });
    }
    let finished = Proc::spawn(command, &env.dir).finish();
    assert!(
        finished.status.success() && ran.exists(),
        "{ignored} that mpsync's parent left ignored, sent to mpsync's group as the child was forked, kept the \
         command from running (mpsync exit {:?}, command ran: {}):\n{}",
        finished.code,
        ran.exists(),
        finished.stderr
    );
    if ignored == nix::sys::signal::Signal::SIGHUP {
        let sig_ign = fs::read_to_string(&ran).unwrap_or_default();
        let mask = u64::from_str_radix(sig_ign.split_whitespace().nth(1).unwrap_or("0"), 16).unwrap_or(0);
        assert!(mask & 1 != 0, "under nohup the command has SIGHUP ignored: {sig_ign}");
    }
}

#[test]
fn under_nohup_a_sighup_as_the_child_forks_does_not_kill_it() {
    a_signal_ignored_at_start_sent_as_the_child_forks(nix::sys::signal::Signal::SIGHUP);
}

#[test]
fn a_sigint_ignored_at_start_as_the_child_forks_does_not_kill_it() {
    a_signal_ignored_at_start_sent_as_the_child_forks(nix::sys::signal::Signal::SIGINT);
}

/// `program DIR args...` (tests/support/PROGRAM.c) as the child of `lock`, with mpsync frozen once DIR/ready is
/// written: the guard kills the job at the lease's deadline (DIR/child.pid and DIR/`first`.pid gone), and the next
/// holder runs its child. Every process of the job starts a helper on SIGCONT (in a session of its own, never
/// listed by the guard), which appends its pid to DIR/late.pid: those pids, each killed.
fn helpers_after_the_guards_kill(env: &TestEnv, program: &str, args: &[&str], first: &str) -> Vec<i32> {
    helpers_after_the_guards_kill_in(env, program, args, first, false).0
}

/// `helpers_after_the_guards_kill`, with mpsync in a session of its own if `own_session` (as under ssh, systemd or
/// a container's entrypoint); and the state of mpsync, frozen, once the next holder's child is done.
fn helpers_after_the_guards_kill_in(
    env: &TestEnv,
    program: &str,
    args: &[&str],
    first: &str,
    own_session: bool,
) -> (Vec<i32>, Option<char>) {
    use std::os::unix::process::CommandExt;
    let program = build_program(env, program).display().to_string();
    let name = env.lease_name("guard-groups");
    let dir = env.dir.display().to_string();
    let command = [&[program.as_str(), dir.as_str()][..], args].concat();
    let mut command = env.mpsync(fast(&["lock", &name], &command));
    if own_session {
        // SAFETY: setsid(2) is async-signal-safe.
        unsafe {
            command.pre_exec(|| nix::unistd::setsid().map(drop).map_err(std::io::Error::from));
        }
    }
    let mut holder = Proc::spawn(command, &env.dir);
    holder.wait_for_file(&env.path("ready"), "1");
    let child = read_pid(&env.path("child.pid"));
    let first = read_pid(&env.path(&format!("{first}.pid")));
    let gone = |pid: i32| crate::support::pty::state(pid).is_none_or(|state| matches!(state, 'Z' | 'X'));
    holder.signal(Signal::SIGSTOP);
    wait_until("the guard to kill the job", || gone(child) && gone(first));
    let script = format!("sleep 2; touch {dir}/end2");
    let next = env.spawn(fast(&["lock", &name], &["sh", "-c", &script]));
    wait_until("the next holder's child to finish", || env.path("end2").exists());
    next.finish().assert_code(0);
    let frozen = crate::support::pty::state(holder.pid());
    let helpers: Vec<i32> =
        fs::read_to_string(env.path("late.pid")).unwrap_or_default().lines().filter_map(|l| l.parse().ok()).collect();
    for &pid in &helpers {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    holder.signal(Signal::SIGCONT);
    let _ = holder.wait_for(PATIENCE);
    (helpers, frozen)
}

/// Found by review (rv290): the child's group was tied to the session by the child alone (a member's parent in
/// another group of it: mpsync). A chain of 200 members of that group hung below a head reparented to init (its
/// parent exited). The guard killed each process before its parent, in rounds, the chain leaf first and the
/// child, a leaf, in the first round: the child's death orphaned the group while the guard held it stopped, the
/// kernel continued it (SIGHUP, SIGCONT), and every member not yet killed ran its SIGCONT handler; the helpers it
/// started (in sessions of their own, never listed) ran on past the lease, beside the next holder's child. A
/// group made only of the job's processes is now killed whole, at once.
#[test]
fn the_guards_kill_never_orphans_a_stopped_group_before_all_of_it_is_killed() {
    let helpers = helpers_after_the_guards_kill(&TestEnv::file(), "chain", &["200"], "head");
    assert!(helpers.is_empty(), "{} helpers started by the job's SIGCONT handlers", helpers.len());
}

/// Found by review (rv292): two groups of the job that tie each other to the session (a member of each the parent of
/// a member of the other, made by a `setpgid` into the group of another branch), 200 more members in each: no order
/// of kills orphans neither, and the group orphaned first was continued before its own kill came. Each group is
/// anchored to the session by a process of the guard's while its members die.
#[test]
fn the_guards_kill_of_groups_that_tie_each_other_to_the_session_orphans_neither() {
    let helpers = helpers_after_the_guards_kill(&TestEnv::file(), "groupcycle", &["200"], "a");
    assert!(helpers.is_empty(), "{} helpers started by the job's SIGCONT handlers", helpers.len());
}

/// Found by review (rv295): mpsync in a session of its own (ssh, systemd, a container's entrypoint); a job member X
/// joined mpsync's group, X's parent in the child's group, so X alone tied that group to the session; the main child
/// joined it too, with a chain of 200 below it. The guard killed the members of that group (shared with mpsync: not
/// killed whole) each once its children were gone, X first: the group was orphaned and continued with the rest of
/// it held stopped, and every one of them ran its SIGCONT handler past the lease. Nor does the guard's anchor, as it
/// goes, orphan that group (nothing else ties it to the session) and so continue mpsync, frozen in it (found by a
/// test run: a frozen mpsync in the test harness's group, which a job member of another test had joined, was
/// continued and sent SIGHUP).
#[test]
fn the_guards_kill_never_orphans_a_group_the_job_shares_with_mpsync() {
    let (helpers, frozen) = helpers_after_the_guards_kill_in(&TestEnv::file(), "sharedgroup", &["200"], "x", true);
    assert!(helpers.is_empty(), "{} helpers started by the job's SIGCONT handlers", helpers.len());
    assert_eq!(frozen, Some('T'), "mpsync, frozen, was continued by the guard's kill");
}

/// Found by review (rv302): job members joined the guard's own group: X, whose parent is in the child's group, and
/// 200 more, W, children of the main child. mpsync is SIGKILLed: the main child dies of its parent-death signal (the W
/// are init's now; mpsync had told its guard of them), and the guard's own tie to the session, mpsync, is gone: X
/// alone tied the guard's group. The guard anchored every group of the job but its own, whose members it killed one
/// by one (the guard is in it: not killed whole), X first: the group was orphaned with the W held stopped, and the
/// kernel continued them; their SIGCONT handlers' helpers ran on past the lease. The guard's group is anchored too.
#[test]
fn the_guards_kill_never_orphans_its_own_group_that_the_job_joined() {
    let env = TestEnv::file();
    let continued = continued_by_the_guards_kill_of_its_own_group(&env, &["200"], |command, _| command);
    assert!(continued.is_empty(), "{} of the job's processes continued after the guard's kill", continued.len());
}

/// Found by review (rv304): the same at a process limit (`ulimit -u`, as a pod's pids limit) that the job reached,
/// with 30 groups of one process before X, 400 W: the guard could anchor a few groups only, with what mpsync's death
/// gave back, the first in pid order, not its own, whose members it killed one by one, X first. Groups shared with
/// processes that are not the job's are anchored first, and a member that ties its group to the session is killed
/// only after the rest of its group.
#[test]
fn the_guards_kill_at_a_process_limit_never_orphans_its_own_group_that_the_job_joined() {
    let env = TestEnv::file();
    let Some((uid, _cleanup)) = a_user_of_its_own(&env, 40_000) else { return };
    // The limit for the holder only: what the job left must not keep the next holder from running its child.
    let continued = continued_by_the_guards_kill_of_its_own_group(&env, &["400", "30", "fill"], |command, holder| {
        as_a_user_with_a_process_limit(&command, uid, holder.then_some(700))
    });
    let left: Vec<i32> = processes_of(uid).into_iter().filter(|&pid| !is_zombie(pid)).collect();
    assert!(continued.is_empty(), "{} of the job's processes continued after the guard's kill", continued.len());
    assert!(left.is_empty(), "processes of the job's user left: {left:?}");
}

/// `guardgroup DIR ARGS` (tests/support/guardgroup.c) as the child of `lock -vv`, each mpsync's command made by `run`
/// (true for the holder's);
/// mpsync SIGKILLed once it told its guard of every W; the next holder runs its child once the lease expired. The
/// pids of the job's processes that were continued (DIR/cont), and helpers they started, each killed.
fn continued_by_the_guards_kill_of_its_own_group(
    env: &TestEnv,
    args: &[&str],
    run: impl Fn(std::process::Command, bool) -> std::process::Command,
) -> Vec<i32> {
    let program = build_program(env, "guardgroup").display().to_string();
    let name = env.lease_name("guard-own-group");
    let dir = env.dir.display().to_string();
    let command = [&[program.as_str(), dir.as_str()][..], args].concat();
    let mut holder = Proc::spawn(run(env.mpsync(fast(&["lock", "-vv", &name], &command)), true), &env.dir);
    holder.wait_for_file(&env.path("ready"), "1");
    let child = read_pid(&env.path("child.pid"));
    let x = read_pid(&env.path("x.pid"));
    let pids = |file: &str| -> Vec<i32> {
        fs::read_to_string(env.path(file)).unwrap_or_default().lines().filter_map(|l| l.parse().ok()).collect()
    };
    let ws = pids("w.pid");
    // mpsync tells its guard of each child of the main child in another group (within 100 ms): every W. (Each by its
    // pid: a W the guard never heard of is init's once mpsync is dead, out of its sight, as the README says, and is
    // never killed; the one-process groups are told of too.)
    wait_until("mpsync to tell its guard of every W", || {
        let stderr = holder.stderr();
        ws.iter()
            .all(|w| stderr.contains(&format!("the guard knows of a process that left the child's group pid={w}\n")))
    });
    holder.signal(Signal::SIGKILL);
    let _ = holder.wait_for(PATIENCE);
    let gone = |pid: i32| crate::support::pty::state(pid).is_none_or(|state| matches!(state, 'Z' | 'X'));
    if !within_patience(|| gone(child) && gone(x) && ws.iter().all(|&w| gone(w))) {
        let alive: Vec<String> =
            [child, x].iter().chain(&ws).filter(|&&pid| !gone(pid)).map(|pid| pid.to_string()).collect();
        let ps = std::process::Command::new("ps")
            .args(["-o", "pid,ppid,pgid,sid,stat,wchan:24,comm", "-p"])
            .arg(alive.join(","))
            .output();
        let guards = std::process::Command::new("ps")
            .args(["-o", "pid,ppid,pgid,sid,stat,wchan:24,comm", "-C", "mpsync-guard"])
            .output();
        panic!(
            "the guard did not kill the job: {} left\n{}\nguards:\n{}",
            alive.len(),
            ps.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default(),
            guards.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
        );
    }
    let script = format!("sleep 2; touch {dir}/end2");
    let next = Proc::spawn(run(env.mpsync(fast(&["lock", &name], &["sh", "-c", &script])), false), &env.dir);
    wait_until("the next holder's child to finish", || env.path("end2").exists());
    next.finish().assert_code(0);
    for pid in pids("late.pid") {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    pids("cont")
}

/// `command` run as `uid` (no passwd entry needed: a process count of its own), with a process limit (`ulimit -u`)
/// if given.
fn as_a_user_with_a_process_limit(
    command: &std::process::Command,
    uid: u32,
    limit: Option<u64>,
) -> std::process::Command {
    as_a_user(command, uid, limit, false)
}

/// `command` run as `uid`, with a process limit if given, in a session of its own if `own_session` (ssh, systemd, a
/// container's entrypoint).
fn as_a_user(
    command: &std::process::Command,
    uid: u32,
    limit: Option<u64>,
    own_session: bool,
) -> std::process::Command {
    let id = uid.to_string();
    let mut wrapped = std::process::Command::new("setpriv");
    wrapped.args(["--reuid", &id, "--regid", &id, "--clear-groups", "--"]).arg(command.get_program());
    wrapped.args(command.get_args()).stdin(Stdio::null());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    // SAFETY: setsid(2) and setrlimit(2) are async-signal-safe.
    unsafe {
        wrapped.pre_exec(move || {
            if own_session {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
            }
            let Some(limit) = limit else { return Ok(()) };
            let limit = nix::libc::rlimit { rlim_cur: limit, rlim_max: limit };
            match nix::libc::setrlimit(nix::libc::RLIMIT_NPROC, &limit) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        });
    }
    wrapped
}

/// Whatever the outcome, no process of the test's user is left (killed three times over, 100 ms apart: what a
/// process being killed forks meanwhile is killed too).
struct KillAllOf(u32);

impl Drop for KillAllOf {
    fn drop(&mut self) {
        for _ in 0..3 {
            for pid in processes_of(self.0) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Found by review (rv306): at a process limit (no anchors), two members tie mpsync's group S to the session (mpsync
/// in a session of its own): A, whose parent is the main child, and T, whose parent M is in a group H that members of
/// S tie to the session in turn (tests/support/sharedties.c). A rule of cd4b9f6's, every member that ties its group
/// killed only after the rest of it, made a cycle (T waited for the rest of S, which waited for its children in H, and
/// H for T); the rounds ended, the rest was killed in pid order, both ties before the rest of S, and the kernel
/// continued 402 of the job's processes held stopped there. Only a group's last tie waits.
#[test]
fn the_guards_kill_at_a_process_limit_of_a_group_with_two_ties_orphans_none() {
    let env = TestEnv::file();
    let Some((uid, _cleanup)) = a_user_of_its_own(&env, 50_000) else { return };
    let program = build_program(&env, "sharedties").display().to_string();
    let name = env.lease_name("shared-ties");
    let dir = env.dir.display().to_string();
    let command = env.mpsync(fast(&["lock", &name], &[program.as_str(), dir.as_str(), "400", "cycle"]));
    let mut holder = Proc::spawn(as_a_user(&command, uid, Some(1400), true), &env.dir);
    holder.wait_for_file(&env.path("ready"), "1");
    let pids = |file: &str| -> Vec<i32> {
        fs::read_to_string(env.path(file)).unwrap_or_default().lines().filter_map(|l| l.parse().ok()).collect()
    };
    let (child, a, ws) = (read_pid(&env.path("child.pid")), read_pid(&env.path("a.pid")), pids("w.pid"));
    holder.signal(Signal::SIGSTOP);
    wait_until("the guard to kill the job", || is_zombie(child) && is_zombie(a) && ws.iter().all(|&w| is_zombie(w)));
    for pid in pids("late.pid") {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    holder.signal(Signal::SIGKILL);
    let _ = holder.wait_for(PATIENCE);
    let continued = pids("cont");
    assert!(continued.is_empty(), "{} of the job's processes continued after the guard's kill began", continued.len());
}

/// From review (rv309, which found it with groups that tie each other, a cycle the README admits): a process group of
/// the job in a session the job made (`setsid`), shared with a process that escaped (its parent exited: init's, not
/// the job's), tied to that session by one member X, whose parent is in another group of the session, one nothing
/// ties (tests/support/adoptedtie.c). The guard counted ties only in its own session: it killed X in its first
/// round, with the rest of X's group (the session's leader above a chain of 300, and 3,000 more) still to be killed,
/// and X's death orphaned the group with them held stopped: the kernel continued them (140 to 282 helpers started,
/// three runs of three, with that chain in X's group; a chain of groups now, which the fixes of rv311 below need). A
/// group's last tie waits for the rest of it in every session.
#[test]
fn the_guards_kill_of_a_shared_group_in_a_session_the_job_made_waits_for_its_last_tie() {
    let (continued, helpers) = continued_by_the_guards_kill_of_a_group_tied_from_below(&[], "x");
    assert!(
        continued == 0 && helpers == 0,
        "{continued} of the job's processes continued after the guard's kill began; {helpers} helpers started"
    );
}

/// The same with X a zombie its parent P has not reaped (tests/support/adoptedtie.c, "zombie"): nothing ties X's
/// group, but the kernel looks at the groups of all the children of a process that dies, zombies too, and P's death
/// orphans X's group all the same. The guard killed P (its group, whole) once X was (a zombie: nothing to do), long
/// before the rest of X's group, and the kernel continued that. A zombie's parent waits for the rest of its group.
#[test]
fn the_guards_kill_of_the_parent_of_a_zombie_waits_for_the_rest_of_the_zombies_group() {
    let (continued, helpers) = continued_by_the_guards_kill_of_a_group_tied_from_below(&["zombie"], "e");
    assert!(
        continued == 0 && helpers == 0,
        "{continued} of the job's processes continued after the guard's kill began; {helpers} helpers started"
    );
}

/// The same with a process that is not the job's (Y: its parent escaped) tying X's group too, and dying with X (it
/// reads a pipe only X writes to; tests/support/adoptedtie.c, "stranger"). The guard let a group's last tie of the
/// job go first where a process outside the job tied it too: X died in the first round, Y with it, and the kernel
/// continued the rest of X's group (found by review, rv311). The last tie of the job waits whatever else ties it.
#[test]
fn the_guards_kill_waits_for_a_groups_last_tie_of_the_job_where_a_process_outside_the_job_ties_it_too() {
    let (continued, helpers) = continued_by_the_guards_kill_of_a_group_tied_from_below(&["stranger"], "x");
    assert!(
        continued == 0 && helpers == 0,
        "{continued} of the job's processes continued after the guard's kill began; {helpers} helpers started"
    );
}

/// From review (rv313): in a session the job made, groups H and K each with a member the parent of a member of the
/// other, but H tied to the session by X, a process outside the job that lives on (so no order of kills orphans
/// either); and group E (shared with B, outside the job), whose only tie is Q1, child of Wp, alone in a group W
/// nothing ties, with 300 members R of the job each the parent of a member of K (tests/support/stalledties.c). A safe
/// order exists (K whole, U, T, the Rs, E, Q1, W); the guard's rounds stall on H and K (K waits for T, T for U, U for
/// D in K). After a stall it killed every group made only of the job's processes whole, W among them, before Q1:
/// Wp's death orphaned group E, held stopped, and the kernel continued E, Q1 and the Rs (up to 302, 3 runs of 4). One
/// kill breaks a stall now, and the rounds go on in order.
#[test]
fn the_guards_kill_breaks_a_stall_with_one_kill_and_goes_on_in_order() {
    stalled_ties(&["300", "300"], &["b.pid", "x.pid"]);
}

/// From review (rv317): the test above with X of the job (E's child, whose group E is another than H): the kernel has
/// no cycle (K killed whole leaves H tied by X, whose parent E waits for it), but the kill that breaks a stall counted
/// only a tie outside the job as keeping a group tied; with none, every group made only of the job's processes was
/// killed whole at once, W's before group E's members, and the kernel continued E, Q1 and the Rs (157 to 297, 3 runs
/// of 3, with 3,000 groups Y). A tie of the job whose parent is still to kill, in a group other than the one killed,
/// keeps a group made only of the job's processes tied too.
#[test]
fn the_guards_kill_breaks_a_stall_where_a_tie_of_the_job_keeps_the_cycles_group_tied() {
    stalled_ties(&["300", "3000", "job"], &["b.pid"]);
}

/// From review (rv318): the test above with groups H and K whose leaders have exited (the groups live on, without a
/// leader): the kill that breaks a stall found a group's ties by its leader's place in the listing, counted none for
/// them, and fell back to killing every group at once, as before (134 to 302 continued, 3 runs of 3). A group whose
/// leader is not listed is found by a member.
#[test]
fn the_guards_kill_breaks_a_stall_where_a_tie_of_the_job_keeps_a_leaderless_group_tied() {
    stalled_ties(&["300", "3000", "leaderless"], &["b.pid"]);
}

/// Run tests/support/stalledties.c with `args` (see `none_continued_by_the_guards_kill_of`).
fn stalled_ties(args: &[&str], outside: &[&str]) {
    none_continued_by_the_guards_kill_of("stalledties", args, "q1", outside);
}

/// Run tests/support/PROGRAM.c with `args` under `lock` until the guard's kill (see `helpers_after_the_guards_kill`),
/// kill the processes outside the job whose pids the files `outside` name (those there), and fail if any process of
/// the job ran after the kill began.
fn none_continued_by_the_guards_kill_of(program: &str, args: &[&str], first: &str, outside: &[&str]) {
    let env = TestEnv::file();
    let helpers = helpers_after_the_guards_kill(&env, program, args, first);
    for outside in outside.iter().map(|file| env.path(file)).filter(|path| path.exists()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(read_pid(&outside)), Signal::SIGKILL);
    }
    let continued = fs::read_to_string(env.path("cont")).unwrap_or_default().lines().count();
    assert!(
        continued == 0 && helpers.is_empty(),
        "{continued} of the job's processes continued after the guard's kill began; {} helpers started",
        helpers.len()
    );
}

/// From review (rv314): in a session the job made, a group W whose only tie's parent is alone in a group G, and a
/// member of W that made a session of its own with another member of W its child (tests/support/crosssession.c). The
/// kernel looks at no group in another session when a process dies, but the guard made W and H wait on each other
/// across sessions; the kill that broke that stall was the first process in pid order whose parent was still to be
/// killed, G, and its death orphaned W, held stopped. The guard no longer waits across sessions, and breaks a stall
/// only with a kill that orphans no group with members of the job left (or, where none does, as before).
#[test]
fn the_guards_kill_never_waits_across_sessions_nor_breaks_a_stall_by_orphaning_a_group() {
    let helpers = helpers_after_the_guards_kill(&TestEnv::file(), "crosssession", &["3000"], "w");
    assert!(helpers.is_empty(), "{} helpers started by the job's SIGCONT handlers", helpers.len());
}

/// From review (rv315, by reading): the test above's rule made a child in another session than its parent hold up
/// nothing; but where the parent left (it made a session of its own) and the child stayed, in a group of its own, a
/// subreaper of the child's session adopts the child at the parent's death, and the child ties its group again: the
/// subreaper's death then orphans it (tests/support/leftsession.c). Only a child that made a session of its own
/// holds nothing up.
#[test]
fn the_guards_kill_waits_for_a_child_its_parents_new_session_left_behind() {
    let helpers = helpers_after_the_guards_kill(&TestEnv::file(), "leftsession", &["20", "300"], "d");
    assert!(helpers.is_empty(), "{} helpers started by the job's SIGCONT handlers", helpers.len());
}

/// From review (rv316, by reading): the same for a zombie. X, which left its session, has a zombie child P in a group
/// of the session it left, whose one live member Q heads a chain of 300 groups (tests/support/zombieleft.c). The
/// zombie rule looked only at parents in the zombie's session: X went first, P was adopted by the session's leader
/// M, a subreaper, and M's death orphaned P's group with Q held stopped. Fails 3 of 3 without the fix.
#[test]
fn the_guards_kill_waits_for_the_group_of_a_zombie_whose_parent_left_its_session() {
    let helpers = helpers_after_the_guards_kill(&TestEnv::file(), "zombieleft", &["300"], "q");
    assert!(helpers.is_empty(), "{} helpers started by the job's SIGCONT handlers", helpers.len());
}

/// How many of the job's processes tests/support/adoptedtie.c ran past the guard's kill, with `mode`, and how many
/// helpers they started; the guard's kill is over once `first` has died (and the main child).
fn continued_by_the_guards_kill_of_a_group_tied_from_below(mode: &[&str], first: &str) -> (usize, usize) {
    let env = TestEnv::file();
    let helpers = helpers_after_the_guards_kill(&env, "adoptedtie", &[&["300", "3000"], mode].concat(), first);
    for outside in ["b.pid", "y.pid"].map(|file| env.path(file)).iter().filter(|path| path.exists()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(read_pid(outside)), Signal::SIGKILL);
    }
    (fs::read_to_string(env.path("cont")).unwrap_or_default().lines().count(), helpers.len())
}

/// Whether `pid` is a zombie (or gone).
fn is_zombie(pid: i32) -> bool {
    crate::support::pty::state(pid).is_none_or(|state| matches!(state, 'Z' | 'X'))
}

/// A uid of the test's own (`base` plus this process's pid modulo 10,000) that owns `env`'s directories, and a guard
/// that kills every process of it when dropped; none unless root (the test is skipped).
fn a_user_of_its_own(env: &TestEnv, base: u32) -> Option<(u32, KillAllOf)> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: needs root, to act as a user of its own");
        return None;
    }
    let uid = base + std::process::id() % 10_000;
    for dir in [env.dir.clone(), env.lock_dir()] {
        fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).unwrap();
    }
    Some((uid, KillAllOf(uid)))
}

/// Every process of `uid` now.
fn processes_of(uid: u32) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<i32>().ok()?, e.metadata().ok()?.uid())))
        .filter(|&(_, owner)| owner == uid)
        .map(|(pid, _)| pid)
        .collect()
}

/// Found by review (rv292): a chain of 300 groups, each the parent of the next, the first with 200 more members:
/// after 256 rounds the rest was killed in pid order, the main child first, which orphaned the first group with its
/// members not yet killed. The rounds go on as long as it takes.
#[test]
fn the_guards_kill_of_a_chain_of_300_groups_orphans_none() {
    let helpers = helpers_after_the_guards_kill(&TestEnv::file(), "groupchain", &["300", "200"], "a");
    assert!(helpers.is_empty(), "{} helpers started by the job's SIGCONT handlers", helpers.len());
}

/// Run tests/support/breakerleft.c with `mode` (see `none_continued_by_the_guards_kill_of`).
fn breaker_left(mode: &str) {
    none_continued_by_the_guards_kill_of(
        "breakerleft",
        &[mode, "5", "500", "2000"],
        "y",
        &["b.pid", "b2.pid", "x.pid"],
    );
}

/// From review (rv315, by reading): in a session S the job made, whose leader Z is a child subreaper, the guard's
/// rounds stall on groups a process outside the job ties (as in tests/support/stalledties.c); P, in a group shared
/// with B (outside the job), so killed alone, and tying nothing (its parent Y left S for a session of its own), has a
/// child C in its group, with a chain of 500 groups below C that waits for the stall's end; Z's chain of 5 does too
/// (tests/support/breakerleft.c, alone). 5b3ee5b's stall breaker killed P first, as a process with no child in
/// another group of its session: C became Z's child and tied P's group, and Z's death, after Z's chain, orphaned the
/// group with C held stopped until the end of C's chain. A process killed alone to break a stall waits for all its
/// children. Fails 4 of 4 with 5b3ee5b's guard, 3 of 3 with this one but for that rule; passes with f23b743's.
#[test]
fn the_guards_kill_breaks_a_stall_with_no_process_whose_child_is_left_to_kill() {
    breaker_left("alone");
}

/// From review (rv316, by reading): the same stall, and Y, alone in its group, whose only child P stayed in S when Y
/// left it for a session of its own, P in a group shared with B, with a chain of 500 groups below P that waits for
/// the stall's end (tests/support/breakerleft.c, whole). f23b743's stall breaker killed Y's group whole, judged by
/// its children in Y's own session only: P became Z's child and tied its group, and Z's death, after Z's chain,
/// orphaned the group with P held stopped until the end of P's chain. A group killed whole to break a stall waits for
/// a child in another session too, unless the child made that session. Fails 3 of 3 with f23b743's guard, 2 of 2 with
/// this one but for that rule; passes with this one but for rv315's.
#[test]
fn the_guards_kill_breaks_a_stall_with_no_group_whose_child_its_session_left_behind() {
    breaker_left("whole");
}
