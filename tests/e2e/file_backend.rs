//! `--backend file` as safe as flock(1): one lock directory per user whatever the session, no symlink
//! games, no token reuse, nothing that hangs, every valid name, and 200 contenders. Tests that act as
//! other users (the tests run as root) use `setpriv`, and uids of their own, so that their `/tmp/mpsync-UID`
//! and their inotify limits are theirs alone.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// A uid for this test alone (no passwd entry needed): distinct per test and per test process.
fn test_uid(offset: u32) -> u32 {
    60_000 + (std::process::id() % 1000) * 16 + offset
}

/// Whether this run can act as other users.
fn root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("SKIPPED: needs root, to act as other users");
    }
    root
}

/// `program args` run as `uid` (and gid `uid`, no other groups), with nothing in the environment that
/// could point mpsync anywhere.
fn as_user(uid: u32, program: &str, args: &[&str]) -> Command {
    let id = uid.to_string();
    let mut command = Command::new("setpriv");
    command.args(["--reuid", &id, "--regid", &id, "--clear-groups", "--", program]).args(args);
    scrub(&mut command);
    command.env_remove("XDG_RUNTIME_DIR").env("HOME", "/nonexistent").stdin(Stdio::null());
    command
}

/// The mpsync binary where other users can run it: linked (or copied) into the test's directory, for the
/// build may sit in a directory only root may enter (a clone in `mktemp -d`).
pub(crate) fn mpsync_for_others(env: &TestEnv) -> String {
    let bin = env.path("bin");
    let path = bin.join("mpsync");
    if !path.exists() {
        fs::create_dir_all(&bin).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        let built = env!("CARGO_BIN_EXE_mpsync");
        if fs::hard_link(built, &path).is_err() {
            fs::copy(built, &path).unwrap();
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    path.display().to_string()
}

/// `mpsync ARGS` on the file backend as `uid`, in that user's default lock directory.
fn mpsync_as(env: &TestEnv, uid: u32, args: &[&str]) -> Command {
    let mut command = as_user(uid, &mpsync_for_others(env), args);
    command.env("MPSYNC_BACKEND", "file");
    command
}

/// A directory in the test's temp dir that `uid` owns, for its logs and files.
fn owned_dir(env: &TestEnv, name: &str, uid: u32) -> PathBuf {
    let dir = env.path(name);
    fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).unwrap();
    dir
}

/// `/tmp/mpsync-UID`, removed now and when dropped.
struct UserLockDir(PathBuf);

impl UserLockDir {
    fn new(uid: u32) -> UserLockDir {
        let dir = PathBuf::from(format!("/tmp/mpsync-{uid}"));
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_file(&dir);
        UserLockDir(dir)
    }
}

impl Drop for UserLockDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
        let _ = fs::remove_file(&self.0);
    }
}

/// Children's stamps, checked: no two overlap, and fencing tokens strictly increase in start order.
#[track_caller]
fn assert_one_at_a_time(log: &Path, runs: usize) -> Vec<(String, u128, Option<i64>)> {
    let stamps = read_stamps(log);
    assert_eq!(stamps.len(), runs * 2, "{stamps:?}");
    let mut previous_token = -1;
    for (i, pair) in stamps.chunks(2).enumerate() {
        assert_eq!((pair[0].0.as_str(), pair[1].0.as_str()), ("start", "end"), "overlap at run {i}: {stamps:?}");
        assert_eq!(pair[0].2, pair[1].2, "one child's token: {stamps:?}");
        let token = pair[0].2.expect("a token");
        assert!(token > previous_token, "token {token} after {previous_token} at run {i}: {stamps:?}");
        previous_token = token;
    }
    stamps
}

/// Timings for holders that hold for seconds on the file backend: the `FAST` ones give a renewal 1s
/// (the call timeout) and the lease 2s, less than one fsync can take on a busy shared disk.
const STEADY: &[&str] = &["--lease-duration", "6s", "--renew-deadline", "4s", "--retry-period", "1s"];

/// `head`, the `STEADY` timings, then `--` and the child's `command`.
fn steady<'a>(head: &[&'a str], command: &[&'a str]) -> Vec<&'a str> {
    [head, STEADY, &["--"], command].concat()
}

/// A child that stamps its start and its end, also when stopped by SIGTERM (the stop on a loss).
fn stamped_until(log: &Path, go: &Path) -> String {
    let log = log.display();
    format!(
        "trap 'echo end $(date +%s%N) $MPSYNC_FENCING_TOKEN >> {log}; exit 143' TERM; \
         echo start $(date +%s%N) $MPSYNC_FENCING_TOKEN >> {log}; \
         while [ ! -e {} ]; do sleep 0.05; done; \
         echo end $(date +%s%N) $MPSYNC_FENCING_TOKEN >> {log}",
        go.display()
    )
}

#[test]
fn a_cron_job_and_a_shell_of_one_user_meet_in_one_lock_directory() {
    if !root() {
        return;
    }
    let env = TestEnv::file();
    let uid = test_uid(0);
    let lock_dir = UserLockDir::new(uid);
    let home = owned_dir(&env, "home", uid);
    let runtime_dir = owned_dir(&env, "run-user", uid);
    let ready = home.join("ready");
    let go = home.join("go");

    // The shell: an ssh session has XDG_RUNTIME_DIR.
    let script = format!("touch {}; while [ ! -e {} ]; do sleep 0.05; done", ready.display(), go.display());
    let mut shell = mpsync_as(&env, uid, &["lock", "backup", "--", "sh", "-c", &script]);
    shell.env("XDG_RUNTIME_DIR", &runtime_dir);
    let mut shell = Proc::spawn(shell, &env.dir);
    wait_until("the shell's child to start", || ready.exists());

    // The cron job: no XDG_RUNTIME_DIR. It must find the lease held.
    let ran = home.join("cron-ran");
    let cron = mpsync_as(&env, uid, &["lock", "backup", "--no-wait", "--", "touch", ran.to_str().unwrap()]);
    Proc::spawn(cron, &env.dir).finish().assert_code(124);
    assert!(!ran.exists(), "the cron job ran beside the shell's child");

    fs::write(&go, "").unwrap();
    assert_eq!(shell.wait_for(PATIENCE).and_then(|s| s.code()), Some(0), "{}", shell.stderr());
    let cron = mpsync_as(&env, uid, &["lock", "backup", "--no-wait", "--", "touch", ran.to_str().unwrap()]);
    Proc::spawn(cron, &env.dir).finish().assert_code(0);
    assert!(ran.exists());

    let meta = fs::symlink_metadata(&lock_dir.0).expect("the default lock directory");
    assert!(meta.is_dir());
    assert_eq!((meta.uid(), meta.mode() & 0o777), (uid, 0o700));
    assert!(!runtime_dir.join("mpsync").exists(), "nothing under XDG_RUNTIME_DIR");
}

#[test]
fn replacing_or_deleting_lock_files_gives_no_duplicate_token_and_no_overlap() {
    let env = TestEnv::file();
    let name = env.lease_name("vandal");
    let log = env.path("log");
    let dir = env.lock_dir();
    const LOOPS: usize = 6;
    const ROUNDS: usize = 12;
    let child = stamp_script(&log, "true");
    let mpsync = env!("CARGO_BIN_EXE_mpsync");
    let loop_script = format!(
        "i=0; while [ $i -lt {ROUNDS} ]; do \"{mpsync}\" lock {name} -- sh -c '{}' || exit 1; i=$((i+1)); done",
        child.replace('\'', "'\\''")
    );
    // What broke the per-lease lock file: it deleted, replaced and renamed in a loop. And stale or planted
    // temporary files, which writers must remove and never follow.
    let stop = env.path("stop-vandal");
    let lock = dir.join(format!("{name}.lock"));
    let vandal_script = format!(
        "ln -sf /etc/passwd {temp}; touch {temp2}; \
         while [ ! -e {stop} ]; do rm -f {lock}; touch {lock}.new; mv -f {lock}.new {lock}; \
         mv -f {lock} {lock}.old; : > {lock}; done",
        temp = dir.join(format!(".{name}.tmp")).display(),
        temp2 = dir.join(format!(".{name}.last.tmp")).display(),
        stop = stop.display(),
        lock = lock.display(),
    );
    let passwd = fs::read("/etc/passwd").unwrap();
    let mut vandal = Command::new("sh");
    vandal.args(["-c", &vandal_script]);
    let mut vandal = Proc::spawn(vandal, &env.dir);
    let mut loops: Vec<Proc> = (0..LOOPS)
        .map(|_| {
            let mut command = Command::new("sh");
            command.args(["-c", &loop_script]);
            scrub(&mut command);
            command.env("MPSYNC_BACKEND", "file").env("MPSYNC_LOCK_DIR", &dir);
            Proc::spawn(command, &env.dir)
        })
        .collect();
    for process in &mut loops {
        let status = process.wait_for(Duration::from_secs(300)).expect("the loop finishes");
        assert_eq!(status.code(), Some(0), "{}", process.stderr());
    }
    fs::write(&stop, "").unwrap();
    vandal.wait_for(PATIENCE).expect("the vandal stops");
    assert_one_at_a_time(&log, LOOPS * ROUNDS);
    assert_eq!(fs::read("/etc/passwd").unwrap(), passwd, "a planted symlink was followed");
}

#[test]
fn deleting_the_record_under_a_holder_lets_nobody_in_beside_it() {
    let env = TestEnv::file();
    let name = env.lease_name("deleted");
    let log = env.path("log");
    let go = env.path("go");
    let mut holder = env.spawn(steady(&["lock", &name], &["sh", "-c", &stamped_until(&log, &go)]));
    wait_for_file(&log, "start");
    // A waiter that saw the holder, watching.
    let mut waiter = env.spawn(steady(&["lock", &name, "-v"], &["sh", "-c", &stamp_script(&log, "true")]));
    wait_until("the waiter to wait", || waiter.stderr().contains("waiting"));

    fs::remove_file(env.lock_dir().join(format!("{name}.json"))).unwrap();
    let deleted_at = Instant::now();
    // And one that never saw it, started just after the deletion (the issue's repro: it ran 6 ms later).
    let mut fresh = env.spawn(steady(&["lock", &name], &["sh", "-c", &stamp_script(&log, "true")]));
    // Give both a fair chance to run beside the holder's child (the lease duration is 6s).
    std::thread::sleep(Duration::from_millis(2000));
    fs::write(&go, "").unwrap();

    let holder_code = holder.wait_for(PATIENCE).and_then(|s| s.code());
    assert!(matches!(holder_code, Some(0 | 123)), "holder: {holder_code:?}\n{}", holder.stderr());
    for process in [&mut waiter, &mut fresh] {
        assert_eq!(process.wait_for(PATIENCE).and_then(|s| s.code()), Some(0), "{}", process.stderr());
    }
    let stamps = assert_one_at_a_time(&log, 3);
    eprintln!("holder exited {holder_code:?}; the others ran {:?} after the deletion", deleted_at.elapsed());
    // Tokens continue across the deletion.
    assert!(stamps[2].2 > stamps[0].2);
}

/// The squatter (another uid) makes the victim's default lock directory first, open to all, full of
/// symlinks named like everything mpsync ever wrote there, pointing at the victim's files.
#[test]
fn a_lock_directory_squatted_by_another_user_is_refused_and_the_victims_files_are_untouched() {
    if !root() {
        return;
    }
    let env = TestEnv::file();
    let (attacker, victim) = (test_uid(1), test_uid(2));
    let squatted = UserLockDir::new(victim);
    let home = owned_dir(&env, "victim-home", victim);
    let bashrc = home.join(".bashrc");
    let other = home.join("thesis.tex");
    for (file, contents) in [(&bashrc, "alias ll='ls -l'\n"), (&other, "\\chapter{One}\n")] {
        fs::write(file, contents).unwrap();
        std::os::unix::fs::chown(file, Some(victim), Some(victim)).unwrap();
    }
    let targets = [&bashrc, &other];
    let mut planted = vec!["job.json".to_string(), "job.lock".into(), ".job.tmp".into(), ".job.last".into()];
    planted.push(".job.last.tmp".into());
    for pid in 2..400 {
        planted.push(format!(".probe.{pid}"));
        planted.push(format!(".job.json.tmp.{pid}"));
    }
    let links: String = planted
        .iter()
        .enumerate()
        .map(|(i, file)| format!("ln -s {} {}/{file}; ", targets[i % 2].display(), squatted.0.display()))
        .collect();
    let setup = as_user(attacker, "sh", &["-c", &format!("mkdir -m 777 {} && {links}", squatted.0.display())])
        .status()
        .unwrap();
    assert!(setup.success());
    let before: Vec<_> =
        targets.iter().map(|file| (fs::read(file).unwrap(), fs::metadata(file).unwrap().mtime())).collect();

    let run = |args: &[&str]| Proc::spawn(mpsync_as(&env, victim, args), &env.dir).finish();
    for args in [&["lock", "job", "--", "echo", "hi"][..], &["status", "job"], &["elect", "job", "--", "true"]] {
        let done = run(args);
        done.assert_code(125);
        assert!(!done.stdout.contains("hi"), "the command ran");
        assert!(done.stderr.contains(&squatted.0.display().to_string()), "{}", done.stderr);
        assert!(done.stderr.contains(&format!("uid {attacker}")), "{}", done.stderr);
        assert!(done.stderr.trim().lines().count() <= 2, "{}", done.stderr);
    }
    let after: Vec<_> =
        targets.iter().map(|file| (fs::read(file).unwrap(), fs::metadata(file).unwrap().mtime())).collect();
    assert_eq!(before, after, "the victim's files were touched");

    // A symlink in its place, to a directory of the victim's own, is refused too.
    fs::remove_dir_all(&squatted.0).unwrap();
    let decoy = owned_dir(&env, "decoy", victim);
    fs::set_permissions(&decoy, fs::Permissions::from_mode(0o700)).unwrap();
    as_user(attacker, "ln", &["-s", decoy.to_str().unwrap(), squatted.0.to_str().unwrap()]).status().unwrap();
    let done = run(&["lock", "job", "--", "echo", "hi"]);
    done.assert_code(125);
    assert!(done.stderr.contains("symbolic link"), "{}", done.stderr);
    assert_eq!(fs::read_dir(&decoy).unwrap().count(), 0, "nothing written through the link");

    // The victim's own directory, left open to others: refused, with the fix.
    fs::remove_file(&squatted.0).unwrap();
    as_user(victim, "mkdir", &["-m", "755", squatted.0.to_str().unwrap()]).status().unwrap();
    let done = run(&["lock", "job", "--", "echo", "hi"]);
    done.assert_code(125);
    assert!(done.stderr.contains("0755") && done.stderr.contains("chmod 700"), "{}", done.stderr);
}

#[test]
fn a_fifo_in_place_of_the_record_hangs_neither_waiters_nor_the_holder() {
    let env = TestEnv::file();
    let name = env.lease_name("fifo");
    let record = env.lock_dir().join(format!("{name}.json"));
    nix::unistd::mkfifo(&record, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let done = env.run(["lock", &name, "--timeout", "1s", "--", "true"]);
    done.assert_code(124);
    assert!(done.elapsed < Duration::from_secs(10), "took {:?}", done.elapsed);
    assert!(done.stderr.contains("FIFO"), "{}", done.stderr);
    let status = env.run(["status", &name]);
    status.assert_code(125);
    assert!(status.elapsed < Duration::from_secs(10), "took {:?}", status.elapsed);
    fs::remove_file(&record).unwrap();

    // A holder whose record becomes a FIFO cannot renew: it stops its child at its renew deadline (2s)
    // and exits 123, instead of hanging in open(2).
    let pid_file = env.path("pid");
    let mut holder =
        env.spawn(fast(&["lock", &name], &["sh", "-c", &format!("echo $$ > {}; exec sleep 1000", pid_file.display())]));
    let child = read_pid(&pid_file);
    let fifo = env.lock_dir().join("swap");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    fs::rename(&fifo, &record).unwrap();
    let swapped = Instant::now();
    assert_eq!(holder.wait_for(PATIENCE).and_then(|s| s.code()), Some(123), "{}", holder.stderr());
    assert!(!alive(child));
    // Renew deadline 2s, grace 1s, and room for a loaded machine.
    assert!(swapped.elapsed() < Duration::from_secs(8), "took {:?}", swapped.elapsed());
}

/// Found by review (helper-106): `--timeout 2s` ended after 3.8 s while another process held the lock
/// directory's lock (a writer stopped in the middle of its write, or `flock DIR ...`): the last write
/// waited for the lock until three quarters into the call timeout, past the user's timeout.
#[test]
fn timeout_ends_on_time_while_another_process_holds_the_lock_directory() {
    let env = TestEnv::file();
    let name = env.lease_name("busy");
    env.run(["lock", &name, "--", "true"]).assert_code(0);
    let dir = fs::File::open(env.lock_dir()).unwrap();
    let _busy =
        nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, errno)| errno).expect("flock");
    // A call timeout of 40 s: a write would wait 30 s for the lock.
    let ran = env.path("ran");
    let slow = ["--lease-duration", "120s", "--renew-deadline", "80s", "--timeout", "1s"];
    let done = env.run(["lock", &name].into_iter().chain(slow).chain(["--", "touch", ran.to_str().unwrap()]));
    done.assert_code(124);
    assert!(!ran.exists());
    assert!(done.elapsed < Duration::from_secs(20), "took {:?}: {}", done.elapsed, done.stderr);
}

#[test]
fn a_corrupt_record_makes_waiters_wait_with_one_clear_line_until_it_is_repaired() {
    let env = TestEnv::file();
    let name = env.lease_name("broken");
    let record = env.lock_dir().join(format!("{name}.json"));
    fs::write(&record, "{ not json").unwrap();
    let ran = env.path("ran");
    let done = env.run(["lock", &name, "--timeout", "2s", "--", "touch", ran.to_str().unwrap()]);
    done.assert_code(124);
    assert!(!ran.exists());
    assert!(done.stderr.contains(&record.display().to_string()), "{}", done.stderr);
    assert!(done.stderr.contains("counts as held"), "{}", done.stderr);
    for never in ["remove", "delete", "panicked"] {
        assert!(!done.stderr.contains(never), "{}", done.stderr);
    }
    // The one warning, and the one error when --timeout gives up.
    assert!(done.stderr.trim().lines().count() <= 2, "{}", done.stderr);
    assert_eq!(fs::read_to_string(&record).unwrap(), "{ not json", "never overwritten");
    // --no-wait counts it as held: 124 at once, not after a lease duration of retries.
    let no_wait = env.run(["lock", &name, "--no-wait", "--", "touch", ran.to_str().unwrap()]);
    no_wait.assert_code(124);
    assert!(no_wait.elapsed < std::time::Duration::from_secs(10), "took {:?}", no_wait.elapsed);
    let status = env.run(["status", &name]);
    status.assert_code(125);
    assert!(status.stderr.contains(&record.display().to_string()), "{}", status.stderr);

    // A waiter waits, as for a held lease, and runs once the record is valid again.
    let mut waiter = env.spawn(fast(&["lock", &name], &["touch", ran.to_str().unwrap()]));
    wait_until("the waiter to report the record", || waiter.stderr().contains("counts as held"));
    assert!(!ran.exists());
    let free = format!(
        r#"{{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{{"name":"{name}","resourceVersion":"7"}},"spec":{{"holderIdentity":"","leaseTransitions":4}}}}"#
    );
    fs::write(&record, free).unwrap();
    assert_eq!(waiter.wait_for(PATIENCE).and_then(|s| s.code()), Some(0), "{}", waiter.stderr());
    assert!(ran.exists());
    assert_eq!(env.get(&name).unwrap().1.lease_transitions, Some(5));
}

#[test]
fn two_hundred_contenders_all_finish_and_none_falls_back_to_the_retry_period() {
    if !root() {
        return;
    }
    const CONTENDERS: usize = 200;
    let env = TestEnv::file();
    // A uid of its own: the 128 inotify instances a user may have are this test's alone.
    let uid = test_uid(3);
    let _lock_dir = UserLockDir::new(uid);
    let work = owned_dir(&env, "work", uid);
    let log = work.join("log");
    let child = stamp_script(&log, "true");
    let mpsync = mpsync_for_others(&env);
    let script = format!(
        "for i in $(seq {CONTENDERS}); do \"{mpsync}\" lock c200 -v -- sh -c '{}' 2> {}/err.$i & done; wait",
        child.replace('\'', "'\\''"),
        work.display()
    );
    let started = Instant::now();
    let mut contenders = as_user(uid, "sh", &["-c", &script]);
    contenders.env("MPSYNC_BACKEND", "file");
    // On tmpfs where there is one: what is measured is waiting and handoff, not a shared disk's fsyncs
    // (seconds each on a busy machine).
    let shm = Path::new("/dev/shm").is_dir().then(|| PathBuf::from(format!("/dev/shm/mpsync-test-{uid}")));
    let _shm_lock_dir = shm.as_ref().map(|dir| {
        contenders.env("MPSYNC_LOCK_DIR", dir);
        UserLockDir(dir.clone())
    });
    let mut all = Proc::spawn(contenders, &env.dir);
    let status = all.wait_for(Duration::from_secs(600)).expect("the contenders finish");
    let elapsed = started.elapsed();
    assert!(status.success(), "{}", all.stderr());
    let stderr: Vec<String> =
        (1..=CONTENDERS).map(|i| fs::read_to_string(work.join(format!("err.{i}"))).unwrap_or_default()).collect();
    // Every contender's child ran (or say why not: the shell's `wait` hides the contenders' exit codes).
    let ran = read_stamps(&log).len();
    if ran != 2 * CONTENDERS {
        let failed: Vec<&String> = stderr.iter().filter(|err| err.contains("mpsync:")).take(3).collect();
        panic!(
            "{ran} of {} stamps; some contenders' stderr:\n{failed:#?}\nthe last:\n{}",
            2 * CONTENDERS,
            stderr[CONTENDERS - 1]
        );
    }
    let stamps = assert_one_at_a_time(&log, CONTENDERS);

    let fallbacks = stderr.iter().filter(|err| err.contains("cannot watch the lock directory")).count();
    let slow = stderr.iter().filter(|err| err.contains("every 2s")).count();
    let mut gaps: Vec<u128> =
        stamps.chunks(2).zip(stamps.chunks(2).skip(1)).map(|(a, b)| (b[0].1 - a[1].1) / 1_000_000).collect();
    gaps.sort_unstable();
    eprintln!(
        "{CONTENDERS} contenders in {elapsed:?}; {fallbacks} without inotify (polling every 100ms); handoff gaps: \
         median {} ms, p90 {} ms, max {} ms",
        gaps[gaps.len() / 2],
        gaps[gaps.len() * 9 / 10],
        gaps[gaps.len() - 1]
    );
    assert_eq!(slow, 0, "a contender polled at the retry period");
    for err in &stderr {
        assert!(!err.contains("ERROR"), "{err}");
    }
}

#[test]
fn a_semaphore_of_150_slots_uses_one_inotify_instance_and_wakes_at_once() {
    let env = TestEnv::file();
    let name = env.lease_name("slots");
    env.put_slot(&name, 150, Default::default());
    for slot in 0..150 {
        env.put_slot(&format!("{name}-{slot}"), 150, TestEnv::foreign_record("someone-else", 120));
    }
    let ran = env.path("ran");
    let slow = ["--lease-duration", "60s", "--renew-deadline", "40s", "--retry-period", "30s"];
    let child = format!("echo $MPSYNC_SLOT > {}", ran.display());
    let args: Vec<&str> =
        ["lock", &name, "--slots", "150", "-v"].into_iter().chain(slow).chain(["--", "sh", "-c", &child]).collect();
    let mut waiter = env.spawn(args);
    wait_until("the waiter to wait", || waiter.stderr().contains("waiting"));
    let inotify_instances = || {
        fs::read_dir(format!("/proc/{}/fd", waiter.pid()))
            .map(|fds| {
                fds.filter_map(|fd| fs::read_link(fd.ok()?.path()).ok())
                    .filter(|target| target.to_string_lossy().contains("inotify"))
                    .count()
            })
            .unwrap_or(0)
    };
    wait_until("the waiter to watch", || inotify_instances() > 0);
    assert_eq!(inotify_instances(), 1, "one inotify instance for 150 watched leases");

    let freed = Instant::now();
    env.release_as_client_go(&format!("{name}-77"));
    assert_eq!(waiter.wait_for(PATIENCE).and_then(|s| s.code()), Some(0), "{}", waiter.stderr());
    assert_eq!(fs::read_to_string(&ran).unwrap().trim(), "77");
    // Far below the 30s retry period: the watch drove it.
    assert!(freed.elapsed() < Duration::from_secs(10), "took {:?}", freed.elapsed());
}

#[test]
fn a_token_at_the_int32_limit_is_refused_with_a_clear_message() {
    let env = TestEnv::file();
    let name = env.lease_name("limit");
    let free = TestEnv::foreign_record("", 1);
    env.put(&name, k8s_openapi::api::coordination::v1::LeaseSpec { lease_transitions: Some(i32::MAX - 1), ..free });
    let tokens = env.path("tokens");
    let script = format!("echo $MPSYNC_FENCING_TOKEN >> {}", tokens.display());
    env.run(["lock", &name, "--", "sh", "-c", &script]).assert_code(0);
    assert_eq!(fs::read_to_string(&tokens).unwrap().trim(), i32::MAX.to_string());

    let done = env.run(["lock", &name, "--", "sh", "-c", &script]);
    done.assert_code(125);
    eprintln!("at the limit, mpsync says:\n{}", done.stderr);
    assert!(done.stderr.contains("2147483647") && done.stderr.contains("fencing token"), "{}", done.stderr);
    assert!(done.stderr.trim().lines().count() <= 2, "{}", done.stderr);
    assert_eq!(fs::read_to_string(&tokens).unwrap().lines().count(), 1, "the child ran at a repeated token");
}

#[test]
fn a_lease_name_of_253_characters_works() {
    let env = TestEnv::file();
    let mut name = String::new();
    while name.len() < 253 {
        name.push(if name.len() % 64 == 63 { '.' } else { 'x' });
    }
    let tokens = env.path("tokens");
    let script = format!("echo $MPSYNC_FENCING_TOKEN >> {}", tokens.display());
    for _ in 0..2 {
        env.run(["lock", &name, "--", "sh", "-c", &script]).assert_code(0);
    }
    assert_eq!(fs::read_to_string(&tokens).unwrap(), "0\n1\n");
    let status = env.run(["status", &name, "-o", "json"]);
    status.assert_code(0);
    let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!((json["exists"].as_bool(), json["leaseTransitions"].as_i64()), (Some(true), Some(1)));

    // Held, it is a lease like any other.
    let go = env.path("go");
    let log = env.path("log");
    let mut holder = env.spawn(["lock", &name, "--", "sh", "-c", &stamped_until(&log, &go)]);
    wait_for_file(&log, "start");
    env.run(["lock", &name, "--no-wait", "--", "true"]).assert_code(124);
    fs::write(&go, "").unwrap();
    assert_eq!(holder.wait_for(PATIENCE).and_then(|s| s.code()), Some(0), "{}", holder.stderr());
}

#[test]
fn a_tmp_cleaner_leaves_the_records_alone_and_tokens_continue() {
    let Ok(tmpfiles) = which("systemd-tmpfiles") else {
        eprintln!("SKIPPED: no systemd-tmpfiles");
        return;
    };
    let env = TestEnv::file();
    let name = env.lease_name("aged");
    let tokens = env.path("tokens");
    let script = format!("echo $MPSYNC_FENCING_TOKEN >> {}", tokens.display());
    env.run(["lock", &name, "--", "sh", "-c", &script]).assert_code(0);
    // A writer SIGKILLed mid-write left a temporary file: the next write removes it.
    let stale = env.lock_dir().join(format!(".{name}.tmp"));
    fs::write(&stale, "half a rec").unwrap();

    // The most aggressive age rule there is: everything older than now.
    let config = env.path("tmpfiles.conf");
    fs::write(&config, format!("e {} - - - 0\n", env.lock_dir().display())).unwrap();
    let cleaned = Command::new(tmpfiles).arg("--clean").arg(&config).status().unwrap();
    assert!(cleaned.success());
    assert!(env.lock_dir().join(format!("{name}.json")).exists(), "the record was aged out");

    env.run(["lock", &name, "--", "sh", "-c", &script]).assert_code(0);
    assert_eq!(fs::read_to_string(&tokens).unwrap(), "0\n1\n", "tokens restarted");
    assert!(!stale.exists(), "the stale temporary file is still there");
}

fn which(program: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|dir| dir.join(program)).find(|file| file.exists()))
        .ok_or(())
}

#[test]
fn a_waiter_follows_the_lock_directory_when_it_is_removed_and_made_again() {
    let env = TestEnv::file();
    let name = env.lease_name("rearm");
    let log = env.path("log");
    let go = env.path("go");
    let mut first = env.spawn(steady(&["lock", &name], &["sh", "-c", &stamped_until(&log, &go)]));
    wait_for_file(&log, "start");
    // A retry period of 5s: a handoff well within it is the watch's doing.
    let slow = ["--lease-duration", "12s", "--renew-deadline", "7s", "--retry-period", "5s"];
    let mut waiter =
        env.spawn(["lock", &name, "-v"].into_iter().chain(slow).chain(["--", "sh", "-c", &stamp_script(&log, "true")]));
    wait_until("the waiter to wait", || waiter.stderr().contains("waiting"));

    // The whole directory goes (a tmp cleaner, `rm -rf`): the holder loses its record and stops.
    fs::remove_dir_all(env.lock_dir()).unwrap();
    let removed = Instant::now();
    assert_eq!(first.wait_for(PATIENCE).and_then(|s| s.code()), Some(123), "{}", first.stderr());
    // Another holder makes the directory again and holds it until the waiter, which saw the first holder
    // vanish, has waited that out (its own lease duration, 12s, with a margin for a loaded machine).
    let second_go = env.path("second-go");
    let mut second = env.spawn(steady(&["lock", &name], &["sh", "-c", &stamped_until(&log, &second_go)]));
    wait_until("the second holder to run", || read_stamps(&log).len() >= 3);
    std::thread::sleep(Duration::from_secs(16).saturating_sub(removed.elapsed()));
    fs::write(&second_go, "").unwrap();
    assert_eq!(second.wait_for(PATIENCE).and_then(|s| s.code()), Some(0), "{}", second.stderr());
    assert_eq!(waiter.wait_for(PATIENCE).and_then(|s| s.code()), Some(0), "{}", waiter.stderr());
    let stamps = read_stamps(&log);
    let words: Vec<&str> = stamps.iter().map(|(w, _, _)| w.as_str()).collect();
    assert_eq!(words, ["start", "end", "start", "end", "start", "end"], "{stamps:?}");
    let handoff = Duration::from_nanos((stamps[4].1 - stamps[3].1) as u64);
    eprintln!("the waiter took over {handoff:?} after the second holder's child ended");
    assert!(handoff < Duration::from_secs(4), "handoff took {handoff:?}: not driven by the watch");
    assert!(!waiter.stderr().contains("polling every"), "the waiter gave up watching:\n{}", waiter.stderr());
}

/// A lock directory whose parent another user owns, or may write without the sticky bit, is refused:
/// that user could rename the lock directory away (with its holders' records), and the next mpsync would
/// make a new, empty one and run its child beside them. `/tmp`'s sticky bit makes it safe.
#[test]
fn a_lock_directory_whose_parent_another_user_can_change_is_refused() {
    if !root() {
        return;
    }
    let env = TestEnv::file();
    let other = test_uid(5);
    let theirs = owned_dir(&env, "theirs", other);
    let open = env.path("open");
    fs::create_dir_all(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let sticky = env.path("sticky");
    fs::create_dir_all(&sticky).unwrap();
    fs::set_permissions(&sticky, fs::Permissions::from_mode(0o1777)).unwrap();
    for (parent, why) in [(&theirs, format!("owned by uid {other}")), (&open, "writable by other users".to_string())] {
        let locks = parent.join("locks");
        let done =
            env.run(["lock", "job", "--backend", "file", "--lock-dir", locks.to_str().unwrap(), "--", "echo", "ran"]);
        done.assert_code(125);
        assert!(!done.stdout.contains("ran"), "the command ran");
        assert!(done.stderr.contains(&parent.display().to_string()) && done.stderr.contains(&why), "{}", done.stderr);
        assert!(done.stderr.trim().lines().count() <= 2, "{}", done.stderr);
    }
    let locks = sticky.join("locks");
    env.run(["lock", "job", "--backend", "file", "--lock-dir", locks.to_str().unwrap(), "--", "true"]).assert_code(0);
}

/// In a sticky directory open to all (`public`), a link `theirs` to its directory `a`, owned by another
/// user (whose uid is returned).
fn another_users_link(env: &TestEnv) -> (u32, PathBuf, PathBuf) {
    let other = test_uid(6);
    let public = env.path("public");
    fs::create_dir_all(public.join("a")).unwrap();
    fs::set_permissions(&public, fs::Permissions::from_mode(0o1777)).unwrap();
    let link = public.join("theirs");
    std::os::unix::fs::symlink("a", &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(other), Some(other)).unwrap();
    (other, public, link)
}

/// A symbolic link on the way to the lock directory, owned by another user (in a sticky directory they
/// may write), is refused: its owner could point it at another directory between two runs.
#[test]
fn a_lock_directory_reached_through_another_users_symlink_is_refused() {
    if !root() {
        return;
    }
    let env = TestEnv::file();
    let (other, _, link) = another_users_link(&env);
    let locks = link.join("locks");
    let done =
        env.run(["lock", "job", "--backend", "file", "--lock-dir", locks.to_str().unwrap(), "--", "echo", "ran"]);
    done.assert_code(125);
    assert!(!done.stdout.contains("ran"), "the command ran");
    assert!(done.stderr.contains("symbolic link") && done.stderr.contains(&format!("uid {other}")), "{}", done.stderr);
    // One's own link is fine.
    std::os::unix::fs::lchown(&link, Some(0), Some(0)).unwrap();
    env.run(["lock", "job", "--backend", "file", "--lock-dir", locks.to_str().unwrap(), "--", "true"]).assert_code(0);
}

/// The same link named with a trailing `/` or `/.` (found by review: the kernel follows a link there
/// whatever O_NOFOLLOW says, and the parents' check never saw it): refused all the same.
#[test]
fn a_lock_directory_that_is_another_users_symlink_is_refused_with_a_trailing_slash_too() {
    if !root() {
        return;
    }
    let env = TestEnv::file();
    let (_, public, link) = another_users_link(&env);
    fs::set_permissions(public.join("a"), fs::Permissions::from_mode(0o700)).unwrap();
    for suffix in ["/", "/.", "//", "/./"] {
        let locks = format!("{}{suffix}", link.display());
        let done = env.run(["lock", "job", "--backend", "file", "--lock-dir", &locks, "--", "echo", "ran"]);
        done.assert_code(125);
        assert!(!done.stdout.contains("ran"), "{locks}: the command ran");
        assert!(done.stderr.contains("symbolic link"), "{locks}: {}", done.stderr);
    }
    assert_eq!(fs::read_dir(public.join("a")).unwrap().count(), 0, "nothing written through the link");
}

/// `sh -c SCRIPT` as root in a new PID and mount namespace with its own /proc, for a script that mounts
/// /proc again with hidepid (exiting 99 if it cannot) and runs mpsync as a user with `locks` as its lock
/// directory. Its exit status, stdout and stderr; `None` (test skipped) when hidepid cannot be mounted.
fn run_under_hidepid(env: &TestEnv, locks: &Path, script: &str) -> Option<(std::process::ExitStatus, String, String)> {
    let mut command = Command::new("unshare");
    command.args(["--pid", "--fork", "--mount", "--mount-proc", "sh", "-c", script]);
    scrub(&mut command);
    command.env("MPSYNC_BACKEND", "file").env("MPSYNC_LOCK_DIR", locks).env("HOME", "/nonexistent");
    let mut run = Proc::spawn(command, &env.dir);
    let status = run.wait_for(PATIENCE).expect("mpsync finishes");
    let (stdout, stderr) = (run.stdout(), run.stderr());
    if status.code() == Some(99) {
        eprintln!("SKIPPED: cannot mount /proc with hidepid here:\n{stderr}");
        return None;
    }
    Some((status, stdout, stderr))
}

/// mpsync as a user, in a PID namespace whose /proc is mounted with hidepid=2; its child leaves a setuid
/// program running in its process group and exits. /proc hides that program from the user, so the group
/// looks empty but for the child's zombie: mpsync must ask kill(2), and stop the program before it
/// releases the lease.
#[test]
fn under_hidepid_a_member_of_the_childs_group_that_proc_hides_is_stopped_before_the_release() {
    if !root() {
        return;
    }
    let Some(sleep) = ["/usr/bin/sleep", "/bin/sleep"].into_iter().find(|path| Path::new(path).exists()) else {
        eprintln!("SKIPPED: needs sleep(1)");
        return;
    };
    let env = TestEnv::file();
    let uid = test_uid(8);
    let locks = owned_dir(&env, "hidden-member-locks", uid);
    fs::set_permissions(&locks, fs::Permissions::from_mode(0o700)).unwrap();
    let out = owned_dir(&env, "hidden-member-out", uid);
    // A setuid-root copy of sleep: the user runs it, and hidepid hides it from the user.
    let bin = env.path("setuid-bin");
    fs::create_dir_all(&bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    let setuid_sleep = bin.join("setuid-sleep");
    fs::copy(sleep, &setuid_sleep).unwrap();
    fs::set_permissions(&setuid_sleep, fs::Permissions::from_mode(0o4755)).unwrap();
    // hidepid=2 keeps it out of the listing; hidepid=1 lists it but will not show its stat.
    for hidepid in ["2", "1"] {
        let pidfile = out.join(format!("member-{hidepid}.pid"));
        let script = format!(
            "mount -t proc -o hidepid={hidepid} proc /proc || exit 99; \
             setpriv --reuid {uid} --regid {uid} --clear-groups -- {mpsync} lock hidden-member -- \
               sh -c '{setuid_sleep} 60 & echo $! > {pidfile}; exit 0'; \
             code=$?; pid=$(cat {pidfile}); \
             echo \"member state: [$(cut -d' ' -f3 /proc/$pid/stat 2>/dev/null)]\"; exit $code",
            mpsync = mpsync_for_others(&env),
            setuid_sleep = setuid_sleep.display(),
            pidfile = pidfile.display(),
        );
        let Some((status, stdout, stderr)) = run_under_hidepid(&env, &locks, &script) else { return };
        assert!(status.success(), "hidepid={hidepid}: {status}\n{stdout}\n{stderr}");
        // Gone, or a zombie (dead, not reaped yet): never running or stopped once mpsync has released.
        assert!(
            stdout.contains("member state: []") || stdout.contains("member state: [Z]"),
            "hidepid={hidepid}: the hidden member outlived the lease:\n{stdout}\n{stderr}"
        );
    }
}

/// mpsync as a user, in a PID namespace whose /proc is mounted with hidepid=2, its child a setuid program:
/// the child's zombie, which mpsync keeps until the job is gone (its pid is the job's group id), is hidden
/// from the user, yet kill(2) reaches it. It must not be taken for a hidden member of the job that
/// survives SIGKILL (which held the lease for the grace period and 5 s more, with false warnings).
#[test]
fn under_hidepid_a_setuid_childs_exit_is_not_taken_for_a_job_that_survives() {
    if !root() {
        return;
    }
    if !Path::new("/usr/bin/passwd").exists() {
        eprintln!("SKIPPED: needs a setuid /usr/bin/passwd");
        return;
    }
    let env = TestEnv::file();
    let uid = test_uid(7);
    let locks = owned_dir(&env, "hidden-locks", uid);
    fs::set_permissions(&locks, fs::Permissions::from_mode(0o700)).unwrap();
    let script = format!(
        "mount -t proc -o hidepid=2 proc /proc || exit 99; \
         setpriv --reuid {uid} --regid {uid} --clear-groups -- {mpsync} lock hidden -- /usr/bin/passwd --help",
        mpsync = mpsync_for_others(&env)
    );
    let Some((status, _, stderr)) = run_under_hidepid(&env, &locks, &script) else { return };
    assert!(status.success(), "{status}\n{stderr}");
    assert!(
        !stderr.contains("killing the child's job"),
        "the setuid child's zombie was taken for a live job:\n{stderr}"
    );
}

/// Found by review (helper-114): the fix above left out the semaphore's marker. `--slots 2 --timeout 1s`
/// on a fresh semaphore (no marker yet) waited 30 s for the busy lock directory: the marker's create was
/// bounded by three quarters of the call timeout alone.
#[test]
fn timeout_ends_on_time_while_a_semaphores_marker_waits_for_the_lock_directory() {
    let env = TestEnv::file();
    let name = env.lease_name("busysem");
    env.run(["lock", "warm", "--", "true"]).assert_code(0);
    let dir = fs::File::open(env.lock_dir()).unwrap();
    let _busy =
        nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, errno)| errno).expect("flock");
    let ran = env.path("ran");
    let slow = ["--slots", "2", "--lease-duration", "120s", "--renew-deadline", "80s", "--timeout", "1s"];
    let done = env.run(["lock", &name].into_iter().chain(slow).chain(["--", "touch", ran.to_str().unwrap()]));
    done.assert_code(124);
    assert!(!ran.exists());
    assert!(done.elapsed < Duration::from_secs(20), "took {:?}: {}", done.elapsed, done.stderr);
}

/// A bad `POD_NAMESPACE` (the file backend's namespace when `--namespace` names none) is refused naming
/// the variable, as the kube backend names it, so that the user knows where to look (found by review,
/// helper-119); `--namespace` beats it.
#[test]
fn a_bad_pod_namespace_is_refused_naming_the_variable() {
    let env = TestEnv::file();
    let name = env.lease_name("pod-ns");
    let mut command = env.mpsync(["lock", &name, "--", "true"]);
    command.env_remove("MPSYNC_NAMESPACE").env("POD_NAMESPACE", "Bad_NS");
    let done = Proc::spawn(command, &env.dir).finish();
    done.assert_code(125);
    assert!(done.stderr.contains("POD_NAMESPACE") && done.stderr.contains("\"Bad_NS\""), "{}", done.stderr);
    assert_eq!(done.stderr.lines().count(), 1, "{}", done.stderr);
    let mut command = env.mpsync(["lock", &name, "--namespace", "good", "--", "true"]);
    command.env_remove("MPSYNC_NAMESPACE").env("POD_NAMESPACE", "Bad_NS");
    Proc::spawn(command, &env.dir).finish().assert_code(0);
}

/// Found by review (helper-125): an unreadable `.NAME.last` (with no `NAME.json`) makes the lease count as
/// held, as the README says of a record mpsync cannot read: `lock` waits and gives up at `--timeout`. But
/// `status` said "does not exist (no one has taken it yet)" and exited 0, where the README promises that
/// `status NAME` reports such a file, exit 125, until it is repaired.
#[test]
fn status_reports_an_unreadable_last_record_that_keeps_lock_waiting() {
    let env = TestEnv::file();
    let name = env.lease_name("badlast");
    let last = env.lock_dir().join(format!(".{name}.last"));
    fs::write(&last, "{ not json").unwrap();
    let ran = env.path("ran");
    let done = env.run(["lock", &name, "--timeout", "2s", "--", "touch", ran.to_str().unwrap()]);
    done.assert_code(124);
    assert!(!ran.exists());
    assert!(done.stderr.contains("counts as held"), "{}", done.stderr);
    let status = env.run(["status", &name]);
    status.assert_code(125);
    assert!(status.stderr.contains(&last.display().to_string()), "{}", status.stderr);
    assert!(!status.stdout.contains("does not exist"), "{}", status.stdout);
    assert_eq!(fs::read_to_string(&last).unwrap(), "{ not json", "never overwritten");
}

/// Found by review (helper-134): a record edited by hand to a renewTime with nanoseconds (the file keeps
/// what it is given; `date +%FT%T.%NZ`, Go's RFC3339Nano). The holder's next renewal, stamped one
/// microsecond past it, carried the nanoseconds and was stored without them: taken for another process's
/// renewal under its identity, an "identity collision" on the first renewal after the edit, the child
/// stopped (exit 123) and the record left for waiters to wait out. Before the collision rule, no renewal
/// was ever seen to land, and the hold was lost at the renew deadline.
#[test]
fn a_renew_time_edited_to_nanoseconds_stops_nothing() {
    let env = TestEnv::file();
    let name = env.lease_name("nanos");
    let log = env.path("log");
    let go = env.path("go");
    let mut holder = env.spawn(steady(&["lock", &name], &["sh", "-c", &stamped_until(&log, &go)]));
    wait_for_file(&log, "start");
    let path = env.lock_dir().join(format!("{name}.json"));
    let version = |path: &Path| -> u64 {
        let lease: Option<serde_json::Value> =
            fs::read(path).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok());
        lease.and_then(|lease| lease["metadata"]["resourceVersion"].as_str()?.parse().ok()).unwrap_or(0)
    };
    // The hand edit: renewTime 20 s ahead, with nanoseconds, at a new version.
    let mut lease: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let edited = version(&path) + 1;
    let ahead = k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_secs(20);
    let stamp = format!("{}.123456789Z", ahead.strftime("%Y-%m-%dT%H:%M:%S"));
    lease["spec"]["renewTime"] = serde_json::Value::String(stamp);
    lease["metadata"]["resourceVersion"] = serde_json::Value::String(edited.to_string());
    let tmp = env.lock_dir().join(format!(".{name}.edit"));
    fs::write(&tmp, serde_json::to_vec(&lease).unwrap()).unwrap();
    fs::rename(&tmp, &path).unwrap();
    // Three renewals of the holder after the edit (a renew deadline's worth of them).
    wait_until("three renewals after the edit", || {
        version(&path) >= edited + 3 || holder.wait_for(Duration::ZERO).is_some()
    });
    fs::write(&go, "").unwrap();
    let code = holder.wait_for(PATIENCE).and_then(|s| s.code());
    let stderr = holder.stderr();
    assert_eq!(code, Some(0), "the holder's child was stopped for nothing:\n{stderr}");
    assert!(!stderr.contains("collision"), "{stderr}");
    assert_eq!(fs::read_to_string(&log).unwrap().matches("start").count(), 1);
}

/// `status` and `observe` only read: a lock directory they cannot write (a file system remounted
/// read-only, a read-only bind mount into a monitoring container; here, mode 0500) is still shown,
/// exit 0, and a missing one is reported empty without being made. `lock` there still fails, exit 125.
/// (Found by review, helper-142: both refused with "cannot write lock directory", exit 125.)
#[test]
fn status_and_observe_read_a_lock_directory_they_cannot_write() {
    if !root() {
        return;
    }
    let env = TestEnv::file();
    let uid = test_uid(9);
    let home = owned_dir(&env, "home", uid);
    let lock_dir = home.join("locks");
    let dir = lock_dir.to_str().unwrap();
    mpsync_as(&env, uid, &["lock", "ro", "--lock-dir", dir, "--", "true"])
        .status()
        .expect("run mpsync")
        .success()
        .then_some(())
        .expect("the first lock");
    fs::set_permissions(&lock_dir, fs::Permissions::from_mode(0o500)).unwrap();

    let status = Proc::spawn(mpsync_as(&env, uid, &["status", "ro", "--lock-dir", dir]), &env.dir).finish();
    status.assert_code(0);
    assert!(status.stdout.contains("lease:"), "{}", status.stdout);
    let list = Proc::spawn(mpsync_as(&env, uid, &["status", "--lock-dir", dir]), &env.dir).finish();
    list.assert_code(0);
    assert!(list.stdout.lines().any(|line| line.starts_with("ro ")), "{}", list.stdout);

    let observe = Proc::spawn(mpsync_as(&env, uid, &["observe", "ro", "--lock-dir", dir]), &env.dir);
    wait_until("observe to print the record", || observe.stdout().contains("held=false"));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(observe.pid()), nix::sys::signal::Signal::SIGTERM).unwrap();
    observe.finish().assert_code(0);

    let lock = Proc::spawn(mpsync_as(&env, uid, &["lock", "ro", "--lock-dir", dir, "--", "true"]), &env.dir).finish();
    lock.assert_code(125);
    assert!(lock.stderr.contains("cannot write lock directory"), "{}", lock.stderr);

    let missing = home.join("missing");
    let empty = Proc::spawn(mpsync_as(&env, uid, &["status", "--lock-dir", missing.to_str().unwrap()]), &env.dir);
    empty.finish().assert_code(0);
    assert!(!missing.exists(), "status made the lock directory");
}

/// Found by review (helper-156): a directory made by hand at `.NAME.tmp` (or `.NAME.last`) is not removed
/// by a writer's cleanup, so every write of the lease failed: the holder lost it (123), and every later
/// `lock` either said `.NAME.tmp appeared while mpsync wrote it` (it had not: it was there all along) or
/// exited 125 with `cannot replace .NAME.last: Is a directory` and no word of what to do. Now both say
/// that a directory is in the way, the lease counts as held (124 at `--timeout`), `status` reports it (125),
/// and removing it repairs it.
#[test]
fn a_directory_at_a_lease_s_own_file_names_says_so_and_counts_as_held() {
    let env = TestEnv::file();
    for (which, file) in [("tmp", ".{}.tmp"), ("last", ".{}.last"), ("last-tmp", ".{}.last.tmp")] {
        let name = env.lease_name(&format!("dir-{which}"));
        env.run(["lock", &name, "--", "true"]).assert_code(0);
        let path = env.lock_dir().join(file.replace("{}", &name));
        let _ = fs::remove_file(&path);
        fs::create_dir(&path).unwrap();
        let done = env.run(["lock", &name, "--timeout", "1s", "--", "true"]);
        done.assert_code(124);
        assert!(
            done.stderr.contains("is a directory") && done.stderr.contains("until it is removed"),
            "{}",
            done.stderr
        );
        assert!(!done.stderr.contains("appeared while"), "{}", done.stderr);
        // `status` says so too, as `lock` does (review, helper-160: it showed the lease free).
        let status = env.run(["status", &name]);
        status.assert_code(125);
        assert!(status.stderr.contains("is a directory"), "{}", status.stderr);
        fs::remove_dir(&path).unwrap();
        env.run(["lock", &name, "--timeout", "10s", "--", "true"]).assert_code(0);
    }
}

/// A record edited by hand to the largest resourceVersion can never be written after: it is a record mpsync
/// cannot use, so the lease counts as held, the waiter's `--timeout` ends it with 124 and a line that says
/// why (it retried for ever with "cannot grow any more"), and `status` reports it (125; it showed it free).
#[test]
fn a_record_at_the_largest_resource_version_says_what_to_remove() {
    let env = TestEnv::file();
    let name = env.lease_name("largest-version");
    env.run(["lock", &name, "--", "true"]).assert_code(0);
    let path = env.lock_dir().join(format!("{name}.json"));
    let record = fs::read_to_string(&path).unwrap();
    let mut lease: serde_json::Value = serde_json::from_str(&record).unwrap();
    lease["metadata"]["resourceVersion"] = serde_json::json!(u64::MAX.to_string());
    fs::write(&path, lease.to_string()).unwrap();
    let done = env.run(["lock", &name, "--timeout", "1s", "--", "true"]);
    done.assert_code(124);
    assert!(done.stderr.contains("the largest") && done.stderr.contains("counts as held"), "{}", done.stderr);
    // `status` says so too, as for any record mpsync cannot read (it showed the lease free).
    let status = env.run(["status", &name]);
    status.assert_code(125);
    assert!(status.stderr.contains("the largest"), "{}", status.stderr);
    fs::remove_file(&path).unwrap();
    fs::remove_file(env.lock_dir().join(format!(".{name}.last"))).unwrap();
    env.run(["lock", &name, "--timeout", "10s", "--", "true"]).assert_code(0);
}

/// Found by review (helper-166): `observe` of a semaphore reads its slots through their watches only, and
/// the file watch did not look for a directory at a slot's own file names: slot 0 was printed free
/// (`held=false`) behind `.NAME-0.tmp` made a directory, while `status` reported it (125) and `lock` counted
/// it as held. Now the watch takes it as a failed read (one WARN saying which directory), reports nothing
/// of that slot meanwhile, and reports it once the directory is removed.
#[test]
fn observe_of_a_semaphore_reports_no_slot_free_behind_a_directory_in_the_way() {
    let env = TestEnv::file();
    let name = env.lease_name("pool-dir");
    env.run(["lock", &name, "--slots", "2", "--", "true"]).assert_code(0);
    let in_the_way = env.lock_dir().join(format!(".{name}-0.tmp"));
    fs::create_dir(&in_the_way).unwrap();
    let status = env.run(["status", &name]);
    status.assert_code(125);
    assert!(status.stderr.contains("is a directory"), "{}", status.stderr);
    let observe = env.spawn(["observe", &name]);
    let settled =
        within_patience(|| observe.stdout().contains("slot=1") && observe.stderr().contains("is a directory"));
    let (out, err) = (observe.stdout(), observe.stderr());
    let slot_0_free = |out: &str| out.lines().any(|line| line.contains("slot=0") && line.contains("held=false"));
    assert!(settled, "observe did not report slot 1 and the directory in the way of slot 0:\n{out}\n{err}");
    assert!(!slot_0_free(&out), "observe reported slot 0 free while status says it counts as held:\n{out}\n{err}");
    fs::remove_dir(&in_the_way).unwrap();
    let reported = within_patience(|| slot_0_free(&observe.stdout()));
    let (out, err) = (observe.stdout(), observe.stderr());
    observe.signal(nix::sys::signal::Signal::SIGTERM);
    observe.finish().assert_code(0);
    assert!(reported, "observe did not report slot 0 once the directory was removed:\n{out}\n{err}");
}

/// Found by review (helper-166): `status` without NAME listed a lease behind a directory at `.NAME.tmp` as
/// `free`, while `status NAME` reported it (125) and `lock` waited on it (124 at `--timeout`). Now the
/// listing leaves it out with a warning that says which directory is in the way, as it does a record it
/// cannot read.
#[test]
fn the_listing_leaves_out_a_lease_behind_a_directory_in_the_way_and_says_why() {
    let env = TestEnv::file();
    let name = env.lease_name("list-dir");
    let other = env.lease_name("list-ok");
    env.run(["lock", &name, "--", "true"]).assert_code(0);
    env.run(["lock", &other, "--", "true"]).assert_code(0);
    fs::create_dir(env.lock_dir().join(format!(".{name}.tmp"))).unwrap();
    env.run(["lock", &name, "--timeout", "1s", "--", "true"]).assert_code(124);
    env.run(["status", &name]).assert_code(125);
    let list = env.run(["status"]);
    list.assert_code(0);
    assert!(
        !list.stdout.lines().any(|line| line.starts_with(&name)),
        "the listing shows the lease while lock waits on it:\n{}\n{}",
        list.stdout,
        list.stderr
    );
    assert!(list.stdout.lines().any(|line| line.starts_with(&other)), "{}", list.stdout);
    assert!(
        list.stderr.contains(&format!(".{name}.tmp is a directory")) && list.stderr.contains("counts as held"),
        "{}",
        list.stderr
    );
}

/// Found by review (helper-166): the library's `Lock::observe` reads through the same file watches: a
/// slot of a semaphore behind a directory at `.NAME-0.tmp`, and a plain lease behind one at
/// `.NAME.last.tmp`, were reported `held: false`, while `Lock::status` failed on them and `lock` counted them
/// as held. Now nothing is reported of such a lease until the directory is removed; then its state is.
#[test]
fn library_observe_reports_no_lease_free_behind_a_directory_in_the_way() {
    use futures::StreamExt;
    let env = TestEnv::file();
    let pool = env.lease_name("libpool-dir");
    let plain = env.lease_name("libplain-dir");
    env.run(["lock", &pool, "--slots", "2", "--", "true"]).assert_code(0);
    env.run(["lock", &plain, "--", "true"]).assert_code(0);
    let slot_dir = env.lock_dir().join(format!(".{pool}-0.tmp"));
    let plain_dir = env.lock_dir().join(format!(".{plain}.last.tmp"));
    fs::create_dir(&slot_dir).unwrap();
    fs::create_dir(&plain_dir).unwrap();
    env.run(["lock", &plain, "--timeout", "1s", "--", "true"]).assert_code(124);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // A quiet second after the last item: what is reported of a lease the watch cannot read.
        let quiet = Duration::from_secs(1);
        let semaphore = mpsync::Lock::file(env.lock_dir(), &pool).slots(2).build().unwrap();
        assert!(semaphore.status().await.is_err(), "status reads slot 0 behind the directory");
        let mut changes = Box::pin(semaphore.observe());
        let mut seen = Vec::new();
        while let Ok(Some(change)) =
            tokio::time::timeout(if seen.is_empty() { PATIENCE } else { quiet }, changes.next()).await
        {
            seen.push(change);
        }
        assert!(seen.iter().any(|s| s.name.ends_with("-1")), "slot 1 not reported: {seen:?}");
        assert!(!seen.iter().any(|s| s.name.ends_with("-0")), "slot 0 reported behind the directory: {seen:?}");
        fs::remove_dir(&slot_dir).unwrap();
        let after = tokio::time::timeout(PATIENCE, changes.next()).await;
        assert!(
            matches!(&after, Ok(Some(s)) if s.name.ends_with("-0") && !s.held),
            "slot 0 not reported free once the directory was removed: {after:?}"
        );

        let lease = mpsync::Lock::file(env.lock_dir(), &plain).build().unwrap();
        assert!(lease.status().await.is_err(), "status reads the lease behind the directory");
        let mut changes = Box::pin(lease.observe());
        let first = tokio::time::timeout(quiet, changes.next()).await;
        assert!(first.is_err(), "observe reported the lease behind the directory: {first:?}");
        fs::remove_dir(&plain_dir).unwrap();
        let after = tokio::time::timeout(PATIENCE, changes.next()).await;
        assert!(matches!(&after, Ok(Some(s)) if !s.held), "not reported once the directory was removed: {after:?}");
    });
}

/// A `lock` that waits on a lease behind a directory in the way takes it once the directory is removed
/// (its watch reports the record again after failed reads, though it did not change).
#[test]
fn a_waiter_takes_the_lease_once_the_directory_in_the_way_is_removed() {
    let env = TestEnv::file();
    let name = env.lease_name("dir-waiter");
    env.run(["lock", &name, "--", "true"]).assert_code(0);
    let in_the_way = env.lock_dir().join(format!(".{name}.last"));
    fs::remove_file(&in_the_way).unwrap();
    fs::create_dir(&in_the_way).unwrap();
    let waiter = env.spawn(["lock", &name, "--timeout", "60s", "--", "true"]);
    wait_until("the waiter to say a directory is in the way", || waiter.stderr().contains("is a directory"));
    fs::remove_dir(&in_the_way).unwrap();
    let started = Instant::now();
    waiter.finish().assert_code(0);
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
}

/// Found by review (helper-166): a record edited by hand to one below the largest resourceVersion was shown
/// by `status` (exit 0), while `lock` ended at once with an internal error (125: "would be written
/// unreadable"), as the write after it would have been at the largest. No write can follow it either: it is
/// a record mpsync cannot use, as one at the largest is, so the lease counts as held (124 at `--timeout`),
/// `status` reports it (125), and both say what to remove.
#[test]
fn a_record_one_below_the_largest_resource_version_counts_as_held() {
    let env = TestEnv::file();
    let name = env.lease_name("below-largest");
    env.run(["lock", &name, "--", "true"]).assert_code(0);
    let path = env.lock_dir().join(format!("{name}.json"));
    let mut lease: serde_json::Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    lease["metadata"]["resourceVersion"] = serde_json::json!((u64::MAX - 1).to_string());
    fs::remove_file(env.lock_dir().join(format!(".{name}.last"))).unwrap();
    fs::remove_file(&path).unwrap();
    fs::write(&path, lease.to_string()).unwrap();
    let status = env.run(["status", &name]);
    status.assert_code(125);
    assert!(status.stderr.contains("no write can follow") && status.stderr.contains("remove"), "{}", status.stderr);
    let done = env.run(["lock", &name, "--timeout", "1s", "--", "true"]);
    done.assert_code(124);
    assert!(done.stderr.contains("no write can follow") && done.stderr.contains("counts as held"), "{}", done.stderr);
    let list = env.run(["status"]);
    list.assert_code(0);
    assert!(!list.stdout.lines().any(|line| line.starts_with(&name)), "{}", list.stdout);
    fs::remove_file(&path).unwrap();
    env.run(["lock", &name, "--timeout", "10s", "--", "true"]).assert_code(0);
}

/// Found by review (rv252): `rsync backup/NAME.json dir/` (and `mv`, `install`, `cp --remove-destination`,
/// an editor's save) writes the restored file under a temporary name and renames it into place, so
/// `NAME.json` goes back to the backup while `.NAME.last`, the hard link mpsync keeps beside it, still holds
/// the live holder's record. A process that never saw the holder read the restored free record, and its
/// compare-and-swap at the restored version landed: it ran beside the holder's child, with the holder's
/// token. The store writes the last write back (a larger version and token than the record put back) and
/// refuses the write: the newcomer finds the lease held.
#[test]
fn an_older_record_renamed_into_place_never_lets_a_new_process_in_beside_the_holder() {
    let env = TestEnv::file();
    let name = env.lease_name("restored");
    let log = env.path("log");
    let go = env.path("go");
    let record = env.lock_dir().join(format!("{name}.json"));

    // Yesterday's run, and the nightly backup of the lock directory taken after it (the lease free).
    env.run(["lock", &name, "--", "true"]).assert_code(0);
    let backup = fs::read(&record).unwrap();

    // Today's holder.
    let mut holder = env.spawn(steady(&["lock", &name], &["sh", "-c", &stamped_until(&log, &go)]));
    wait_for_file(&log, "start");

    // rsync restores the backup: a temporary file renamed over the record.
    let temp = env.lock_dir().join(format!(".{name}.json.rsync-tmp"));
    fs::write(&temp, &backup).unwrap();
    fs::rename(&temp, &record).unwrap();

    // A cron job that never saw the holder, with --no-wait: it must find the lease held.
    let cron = env.run(["lock", &name, "--no-wait", "--", "sh", "-c", &stamp_script(&log, "true")]);
    fs::write(&go, "").unwrap();
    let holder_code = holder.wait_for(PATIENCE).and_then(|s| s.code());
    let stamps = read_stamps(&log);
    assert_eq!(
        cron.code,
        Some(124),
        "a process that never saw the holder ran beside its child after {} was renamed back to a backup \
         (.{name}.last still showed the holder); holder exited {holder_code:?}; stamps {stamps:?}\n{}",
        record.display(),
        cron.stderr
    );
    assert_eq!(holder_code, Some(0), "{}", holder.stderr());
}

/// Found by review (rv255): the write-back brought back a hold its holder had released. The holder's release
/// is a compare-and-swap on the version of the lease's last write (`.NAME.last`), and the store compared it
/// with the record put back under it: refused. The holder exited (its child done); the next writer then wrote
/// the released hold back, and the lease was held by a dead process for its whole duration (here 120 s: a
/// `--no-wait` job refused). A write based on `.NAME.last`'s version knew the lease's last write: it goes on
/// from it (over both files).
#[test]
fn a_release_on_the_last_write_under_a_put_back_is_not_undone_by_the_write_back() {
    let env = TestEnv::file();
    let name = env.lease_name("released-under");
    let log = env.path("log");
    let go = env.path("go");
    let record = env.lock_dir().join(format!("{name}.json"));

    env.run(["lock", &name, "--", "true"]).assert_code(0);
    let backup = fs::read(&record).unwrap();

    let long = ["--lease-duration", "120s", "--renew-deadline", "100s", "--retry-period", "1s"];
    let command = stamped_until(&log, &go);
    let args: Vec<&str> = [&["lock", name.as_str()][..], &long, &["--", "sh", "-c", command.as_str()]].concat();
    let mut holder = env.spawn(args);
    wait_for_file(&log, "start");

    // rv252's put-back (rsync: a temporary file renamed over the record).
    let temp = env.lock_dir().join(format!(".{name}.json.rsync-tmp"));
    fs::write(&temp, &backup).unwrap();
    fs::rename(&temp, &record).unwrap();

    // The child ends before the holder's next renewal: it releases (its compare-and-swap on its last write).
    fs::write(&go, "").unwrap();
    let holder_code = holder.wait_for(PATIENCE).and_then(|s| s.code());
    let holder_err = holder.stderr();

    let cron = env.run(["lock", &name, "--no-wait", "--", "true"]);
    assert_eq!(
        cron.code,
        Some(0),
        "the lease its holder released (exit {holder_code:?}) was written back as held (holder now {:?}); \
         --no-wait refused\nholder:\n{holder_err}\ncron:\n{}",
        env.holder(&name),
        cron.stderr
    );
}

/// `mpsync ARGS` under the shim `tests/support/killwrite.c`, SIGKILLed in the window `on` of a write.
fn killed_in(env: &TestEnv, on: &str, args: &[&str]) {
    use std::os::unix::process::ExitStatusExt;
    let mut command = env.mpsync(args);
    command.env("LD_PRELOAD", build_shim(env, "killwrite")).env("MPSYNC_TEST_KILL_ON", on);
    let mut proc = Proc::spawn(command, &env.dir);
    let status = proc.wait_for(PATIENCE).expect("the shimmed mpsync ended");
    assert_eq!(status.signal(), Some(9), "set-up: not killed in the window {on} ({status:?})\n{}", proc.stderr());
}

/// Found by review (rv257): the process that catches a put-back (a free record renamed over the holder's) writes
/// the holder's record back with a write's two renames; killed between them (SIGKILL, the OOM killer), it left
/// a state that read as a crashed write, and the next process went on from the free record put back and ran
/// beside the holder's child. `install` puts `NAME.json` in place first now: killed between, the holder's record
/// is the record, and `.NAME.last` is one write behind, never ahead.
#[test]
fn a_put_back_caught_by_a_writer_killed_between_its_renames_lets_nobody_in_beside_the_holder() {
    let env = TestEnv::file();
    let name = env.lease_name("putback-killed");
    let (log, go) = (env.path("log"), env.path("go"));
    let record = env.lock_dir().join(format!("{name}.json"));
    env.run(["lock", &name, "--", "true"]).assert_code(0);
    let backup = fs::read(&record).unwrap();
    let slow = ["--lease-duration", "120s", "--renew-deadline", "100s", "--retry-period", "20s"];
    let command = stamped_until(&log, &go);
    let args: Vec<&str> = [&["lock", name.as_str()][..], &slow, &["--", "sh", "-c", command.as_str()]].concat();
    let mut holder = env.spawn(args);
    wait_for_file(&log, "start");
    let temp = env.lock_dir().join(format!(".{name}.json.rsync-tmp"));
    fs::write(&temp, &backup).unwrap();
    fs::rename(&temp, &record).unwrap();
    // A cron job catches the put-back, and is killed between the renames of its write-back.
    killed_in(&env, "last", &["lock", &name, "--no-wait", "--", "true"]);
    let cron = env.run(["lock", &name, "--no-wait", "--", "sh", "-c", &stamp_script(&log, "true")]);
    fs::write(&go, "").unwrap();
    let holder_code = holder.wait_for(PATIENCE).and_then(|s| s.code());
    assert_eq!(
        cron.code,
        Some(124),
        "a process ran beside the holder's child: {:?}\n{}",
        read_stamps(&log),
        cron.stderr
    );
    assert_eq!(holder_code, Some(0), "{}", holder.stderr());
}

/// Found by review (rv253, rv257): an acquirer killed before its write is in place (its `.NAME.tmp` written,
/// not yet renamed over `NAME.json`), then the next writer killed as it removes that leftover: the lease is
/// free, and the next process takes it. (Killed after its record is in place, an acquirer holds the lease,
/// dead, until its duration runs out, as after any crash once a write is made.)
#[test]
fn writers_killed_before_their_write_is_in_place_leave_the_lease_free() {
    let env = TestEnv::file();
    let name = env.lease_name("killed-before");
    env.run(fast(&["lock", &name], &["true"])).assert_code(0);
    let long = ["--lease-duration", "3600s", "--renew-deadline", "3000s", "--retry-period", "10s"];
    let args: Vec<&str> = [&["lock", name.as_str()][..], &long, &["--", "true"]].concat();
    killed_in(&env, "record", &args);
    assert!(env.lock_dir().join(format!(".{name}.tmp")).exists(), "set-up: no crash leftover");
    killed_in(&env, "unlink", &["lock", &name, "--no-wait", "--", "true"]);
    env.run(fast(&["lock", &name, "--no-wait"], &["true"])).assert_code(0);
    // A lease created by an acquirer killed before its record was in place: free too.
    let new = env.lease_name("killed-create");
    let args: Vec<&str> = [&["lock", new.as_str()][..], &long, &["--", "true"]].concat();
    killed_in(&env, "record", &args);
    env.run(fast(&["lock", &new, "--no-wait"], &["true"])).assert_code(0);
}

/// From review (rv283): a record that cannot be written for a file size limit (`ulimit -f` below a record's
/// size) is refused with a hint that names the limit, as a full disk is, not only "File too large".
#[test]
fn a_file_size_limit_too_low_for_a_record_is_named() {
    let env = TestEnv::file();
    let name = env.lease_name("fsize");
    let mut command = env.mpsync(["lock", &name, "--", "true"]);
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            let limit = nix::libc::rlimit { rlim_cur: 64, rlim_max: nix::libc::RLIM_INFINITY };
            nix::libc::setrlimit(nix::libc::RLIMIT_FSIZE, &limit);
            Ok(())
        });
    }
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("ulimit -f"), "{stderr}");
    assert!(stderr.lines().count() <= 2, "{stderr}");
    assert_eq!(env.holder(&name), None, "nothing written");
}
