//! The benchmark of mpsync as its users meet it: the real release binary, run as separate processes,
//! against the test API server (plain HTTP on 127.0.0.1) and the file backend.
//!
//! ```sh
//! cargo bench --bench lease                         # about 3-4 minutes
//! MPSYNC_BENCH_N=0.2 cargo bench --bench lease      # a quick look (fewer repetitions)
//! MPSYNC_BENCH_N=3 cargo bench --bench lease        # tighter numbers (three times the repetitions)
//! MPSYNC_BENCH_ONLY=uncontended,handoff cargo bench --bench lease
//! ```
//!
//! Sections (`MPSYNC_BENCH_ONLY` picks some): `uncontended`, `handoff`, `takeover`, `memory` (runs
//! together with `api`, whose window it uses), `api`. `MPSYNC_BENCH_BIN` runs another mpsync binary
//! (for an A/B comparison of two builds); by default it is the one cargo builds for this bench (the
//! release profile). `MPSYNC_BENCH_API_SECS` sets the API-load window (default 30). `MPSYNC_BENCH_KEEP=1`
//! keeps the temporary directory with every process's stderr (it is kept anyway when the bench fails).
//!
//! The machine this runs on may be small and shared, so: every comparison is measured in the same run,
//! variants are interleaved in a fresh random order each round, and results are medians and p90s.
//! The report goes to stdout as Markdown; progress goes to stderr.

use std::cell::Cell;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::sys::stat::Mode;
use nix::unistd::Pid;
use serde_json::json;

#[allow(dead_code)]
#[path = "../tests/support/apiserver.rs"]
mod apiserver;

use apiserver::{RequestLog, TestApiServer};

/// Every process the bench starts carries this variable (mpsync passes its environment on to the
/// child, and the guard is a fork of mpsync), so that the final sweep can find anything left behind.
const MARKER: &str = "LEASE_BENCH_RUN";

/// Generous limit for anything that should take well under a second.
const PATIENCE: Duration = Duration::from_secs(30);

/// The e2e tests' short timings: a crashed holder's lease is taken over after 4s.
const FAST: &[&str] = &["--lease-duration", "4s", "--renew-deadline", "2s", "--retry-period", "500ms"];
/// A retry period of 30s: a handoff within milliseconds can only be the watch's doing.
const SLOW: &[&str] = &["--lease-duration", "60s", "--renew-deadline", "40s", "--retry-period", "30s"];

fn main() {
    // `cargo bench` passes `--bench`; nothing here takes arguments.
    let ctx = Ctx::new();
    let mut report = String::new();
    let started = Instant::now();
    writeln!(report, "{}", machine(&ctx)).unwrap();

    if ctx.wants("uncontended") {
        report.push_str(&uncontended(&ctx));
    }
    if ctx.wants("handoff") {
        report.push_str(&handoff(&ctx));
    }
    if ctx.wants("takeover") {
        report.push_str(&takeover(&ctx));
    }
    if ctx.wants("api") || ctx.wants("memory") {
        report.push_str(&api_and_memory(&ctx));
    }
    let leftovers = ctx.sweep();
    writeln!(
        report,
        "\nTotal bench time {:.0} s. Processes left behind: {}.",
        started.elapsed().as_secs_f64(),
        if leftovers.is_empty() { "none".to_string() } else { format!("{leftovers:?} (killed)") }
    )
    .unwrap();
    println!("{report}");
    assert!(leftovers.is_empty(), "processes were left behind: {leftovers:?}");
}

// ---------------------------------------------------------------------------------------------
// 1. Uncontended run
// ---------------------------------------------------------------------------------------------

fn uncontended(ctx: &Ctx) -> String {
    let n = ctx.count(100, 20);
    eprintln!("uncontended: {n} runs per variant");
    let kube = KubeEnv::start(ctx, "uncontended");
    // `status` gets its own server, so that the lock server's log counts only `lock` requests.
    let status_kube = KubeEnv::start(ctx, "uncontended-status");
    let file = ctx.dir.join("locks-uncontended");
    let shm_file = ctx.shm.as_ref().map(|shm| shm.join("locks-uncontended"));
    let flock_file = ctx.dir.join("flock-uncontended");
    let name = "bench-uncontended";

    type Make<'a> = Box<dyn Fn() -> Command + 'a>;
    let mut variants: Vec<(&str, Make)> = vec![
        ("`true` (process spawn floor)", Box::new(|| ctx.command("true", &[] as &[&str]))),
        (
            "`flock FILE true` (util-linux flock(1))",
            Box::new(|| ctx.command("flock", &[flock_file.as_os_str(), OsStr::new("true")])),
        ),
        ("`mpsync --version` (mpsync start-up floor)", Box::new(|| ctx.mpsync(&Backend::File(&file), &["--version"]))),
        (
            "`mpsync lock --backend file -- true`",
            Box::new(|| ctx.mpsync(&Backend::File(&file), &["lock", name, "--", "true"])),
        ),
        (
            "`mpsync status` (test API server: kubeconfig, client, one GET)",
            Box::new(|| ctx.mpsync(&Backend::Kube(&status_kube), &["status", name])),
        ),
        (
            "`mpsync lock -- true` (test API server)",
            Box::new(|| ctx.mpsync(&Backend::Kube(&kube), &["lock", name, "--", "true"])),
        ),
    ];
    if let Some(shm_file) = &shm_file {
        variants.insert(
            4,
            (
                "`mpsync lock --backend file -- true`, lock dir on tmpfs",
                Box::new(move || ctx.mpsync(&Backend::File(shm_file), &["lock", name, "--", "true"])),
            ),
        );
    }
    // Warm up (page cache, the lease records exist and are free from here on).
    for (_, make) in &variants {
        for _ in 0..3 {
            run_timed(&mut make());
        }
    }
    let mut samples = vec![Vec::new(); variants.len()];
    let mut order: Vec<usize> = (0..variants.len()).collect();
    for _ in 0..n {
        ctx.shuffle(&mut order);
        for &v in &order {
            samples[v].push(run_timed(&mut variants[v].1()));
        }
    }
    let base = Stats::of(&samples[0]).median;
    let mut out = String::from(
        "\n## 1. Uncontended run (wall time from spawn to exit)\n\n\
         Each variant runs in the same rounds, in a random order per round; the lease exists and is free. \
         The file backend's lock dir is on the ext4 root file system (/tmp) unless it says tmpfs (/dev/shm).\n\n\
         | command | N | median ms | p90 ms | min ms | median − `true` ms |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for ((label, _), s) in variants.iter().zip(&samples) {
        let s = Stats::of(s);
        writeln!(
            out,
            "| {label} | {} | {:.2} | {:.2} | {:.2} | {:+.2} |",
            s.n,
            s.median,
            s.p90,
            s.min,
            s.median - base
        )
        .unwrap();
    }
    let requests = kube.server.requests();
    let runs = (3 + n) as f64;
    // Where the time goes: the same runs again with `-vv`, split at mpsync's own log lines.
    let phase_n = (n / 3).max(10);
    let mut phase_rows = vec![(
        "`mpsync lock --backend file -- true`",
        phases(ctx, phase_n, || ctx.mpsync(&Backend::File(&file), &["lock", name, "-vv", "--", "true"])),
    )];
    if let Some(shm_file) = &shm_file {
        phase_rows.push((
            "`mpsync lock --backend file -- true`, tmpfs",
            phases(ctx, phase_n, || ctx.mpsync(&Backend::File(shm_file), &["lock", name, "-vv", "--", "true"])),
        ));
    }
    phase_rows.push((
        "`mpsync lock -- true` (test API server)",
        phases(ctx, phase_n, || ctx.mpsync(&Backend::Kube(&kube), &["lock", name, "-vv", "--", "true"])),
    ));
    writeln!(
        out,
        "\nAPI requests per `mpsync lock -- true` on the test server: {} (by verb: {}).",
        fmt_per(requests.len() as f64 / runs),
        by_verb(&requests, 1.0 / runs)
    )
    .unwrap();
    writeln!(
        out,
        "\nWhere the time goes: medians in ms of {phase_n} more runs each with `-vv`, cut at mpsync's log lines \
         (wall-clock timestamps; spawn and exit seen by the bench).\n\n\
         | command | spawn → supervisor started | → lease acquired | → child started | child exited → released | released → exit (teardown) | total |\n\
         |---|---:|---:|---:|---:|---:|---:|"
    )
    .unwrap();
    let inotify = inotify_close_ms(ctx, phase_n * 3);
    for (label, rows) in &phase_rows {
        let column = |i: usize| Stats::of(&rows.iter().map(|r| r[i]).collect::<Vec<_>>()).median;
        writeln!(
            out,
            "| {label} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            column(0),
            column(1),
            column(2),
            column(3),
            column(4),
            column(5)
        )
        .unwrap();
    }
    let inotify = Stats::of(&inotify);
    writeln!(
        out,
        "\nFor the teardown: on this kernel, `close()` of an inotify instance that watched a directory and saw an \
         event takes median {:.2} ms, p90 {:.2} ms (N = {}; measured here, in the bench process). The file \
         backend's watch thread closes one as mpsync exits.",
        inotify.median, inotify.p90, inotify.n
    )
    .unwrap();
    out
}

/// The time `close(2)` of an inotify descriptor takes after a directory watch saw one event.
fn inotify_close_ms(ctx: &Ctx, n: usize) -> Vec<f64> {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let dir = ctx.dir.join("inotify");
    fs::create_dir_all(&dir).unwrap();
    (0..n)
        .map(|i| {
            let inotify = Inotify::init(InitFlags::IN_CLOEXEC).expect("inotify");
            inotify
                .add_watch(&dir, AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CREATE)
                .expect("inotify watch");
            fs::write(dir.join(format!("f{i}")), "x").unwrap();
            inotify.read_events().expect("an event");
            let started = Instant::now();
            drop(inotify);
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

/// Run `make()` (a `lock -vv -- true`) `n` times; per run: spawn → "supervisor started" → "acquired the
/// lease" → "child started", "child exited" → "released the lease" → exit, and the total.
fn phases(ctx: &Ctx, n: usize, make: impl Fn() -> Command) -> Vec<[f64; 6]> {
    let marks =
        ["supervisor started", "acquired the lease", "child started", "child exited exit", "released the lease"];
    let stderr = ctx.dir.join("phases.stderr");
    (0..n)
        .map(|_| {
            let mut command = make();
            command.stderr(fs::File::create(&stderr).unwrap());
            let spawned = epoch_micros();
            let status = command.status().expect("spawn");
            let exited = epoch_micros();
            assert!(status.success(), "{command:?}: {status}");
            let log = fs::read_to_string(&stderr).unwrap();
            let at: Vec<i64> = marks
                .iter()
                .map(|mark| {
                    let line =
                        log.lines().find(|l| l.contains(mark)).unwrap_or_else(|| panic!("no {mark:?} in:\n{log}"));
                    parse_micro_time(line.split_whitespace().next().unwrap()).expect("a timestamp")
                })
                .collect();
            let ms = |a: i64, b: i64| (b - a) as f64 / 1e3;
            [
                ms(spawned, at[0]),
                ms(at[0], at[1]),
                ms(at[1], at[2]),
                ms(at[3], at[4]),
                ms(at[4], exited),
                ms(spawned, exited),
            ]
        })
        .collect()
}

fn run_timed(command: &mut Command) -> f64 {
    let started = Instant::now();
    let status = command.status().expect("spawn");
    let elapsed = started.elapsed();
    assert!(status.success(), "{command:?} failed: {status}");
    elapsed.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------------------------------
// 2. Handoff latency
// ---------------------------------------------------------------------------------------------

struct HandoffVariant<'a> {
    label: &'static str,
    /// The holder and the waiter, given the child's bash script.
    holder: Box<dyn Fn(&str) -> Command + 'a>,
    waiter: Box<dyn Fn(&str) -> Command + 'a>,
    /// Whether the waiter is now waiting (has read the lease and watches it).
    waiting: Box<dyn Fn(&mut Proc) -> bool + 'a>,
    /// How long the waiter waits before the holder's child exits: uniform in [from, from + spread) ms. A
    /// poller's spread covers its whole period, so that the release falls anywhere in its cycle.
    settle: (u64, u64),
}

fn handoff(ctx: &Ctx) -> String {
    let n = ctx.count(30, 5);
    eprintln!("handoff: {n} handoffs per variant");
    let kube = KubeEnv::start(ctx, "handoff");
    // A second server on which watching is forbidden (403): mpsync falls back to polling.
    let polled = KubeEnv::start(ctx, "handoff-poll");
    polled.server.forbid("watch");
    let file = ctx.dir.join("locks-handoff");
    let shm_file = ctx.shm.as_ref().map(|shm| shm.join("locks-handoff"));
    let flock_file = ctx.dir.join("flock-handoff");
    let name = "bench-handoff";

    let mut variants = vec![
        mpsync_variant(
            ctx,
            "mpsync, test API server, watch (`--retry-period 30s`)",
            Backend::Kube(&kube),
            name,
            SLOW,
            Some(&kube.server),
        ),
        mpsync_variant(
            ctx,
            "mpsync, file backend, inotify (`--retry-period 30s`)",
            Backend::File(&file),
            name,
            SLOW,
            None,
        ),
        HandoffVariant {
            label: "flock(1) on one file (the kernel wakes the waiter)",
            holder: Box::new(|script| {
                ctx.command("flock", &[flock_file.as_os_str(), "bash".as_ref(), "-c".as_ref(), script.as_ref()])
            }),
            waiter: Box::new(|script| {
                ctx.command("flock", &[flock_file.as_os_str(), "bash".as_ref(), "-c".as_ref(), script.as_ref()])
            }),
            // flock(1) sleeps only in flock(2).
            waiting: Box::new(|waiter: &mut Proc| {
                proc_stat(waiter.pid()).is_some_and(|s| s.comm == "flock" && s.state == 'S')
            }),
            settle: WATCH_SETTLE,
        },
        HandoffVariant {
            // Its watch task lists again every jittered retry period (1–2 s).
            settle: (150, 2000),
            ..mpsync_variant(
                ctx,
                "mpsync, test API server, watch forbidden: polling (default `--retry-period 2s`)",
                Backend::Kube(&polled),
                name,
                &[],
                None,
            )
        },
    ];
    if let Some(shm_file) = &shm_file {
        variants.insert(
            2,
            mpsync_variant(
                ctx,
                "mpsync, file backend on tmpfs, inotify (`--retry-period 30s`)",
                Backend::File(shm_file),
                name,
                SLOW,
                None,
            ),
        );
    }

    let mut samples = vec![Vec::new(); variants.len()];
    let mut order: Vec<usize> = (0..variants.len()).collect();
    for round in 0..n {
        ctx.shuffle(&mut order);
        for &v in &order {
            samples[v].push(one_handoff(ctx, &variants[v], &format!("{v}-{round}")));
        }
        eprintln!(
            "  round {}/{n}: {}",
            round + 1,
            order.iter().map(|&v| format!("{:.1}", samples[v].last().unwrap())).collect::<Vec<_>>().join(" ")
        );
    }
    let mut out = String::from(
        "\n## 2. Handoff latency (holder's child exits → waiter's child starts)\n\n\
         Both children stamp bash's `$EPOCHREALTIME` (same host, same clock, no fork): the holder's child as its \
         last act, the waiter's child as its first. The waiter has been waiting for 150–450 ms when the \
         holder's child is told to exit (the poller: 150–2150 ms, so that the release falls anywhere in its cycle). Variants interleaved, random order per round.\n\n\
         | variant | N | median ms | p90 ms | min ms | max ms |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for (variant, s) in variants.iter().zip(&samples) {
        let s = Stats::of(s);
        writeln!(out, "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |", variant.label, s.n, s.median, s.p90, s.min, s.max)
            .unwrap();
    }
    out.push_str(
        "| *reference, not measured:* a poller whose attempt is uniform in 0–2 s after the release | – | 1000 | 1800 | 0 | 2000 |\n\
         | *reference, not measured:* client-go LeaderElector, `RetryPeriod` 2s (`JitterUntil`, factor 1.2, sliding: attempts every 2–4.4 s) | – | 1600 | 3160 | 0 | 4400 |\n",
    );
    out
}

fn mpsync_variant<'a>(
    ctx: &'a Ctx,
    label: &'static str,
    backend: Backend<'a>,
    name: &'a str,
    timings: &'static [&'static str],
    watches: Option<&'a TestApiServer>,
) -> HandoffVariant<'a> {
    let holder_backend = backend.clone();
    let waiter_backend = backend;
    HandoffVariant {
        label,
        holder: Box::new(move |script| {
            ctx.mpsync(&holder_backend, &[&["lock", name], timings, &["--", "bash", "-c", script]].concat())
        }),
        waiter: Box::new(move |script| {
            ctx.mpsync(&waiter_backend, &[&["lock", name, "-v"], timings, &["--", "bash", "-c", script]].concat())
        }),
        // Only the waiter watches: a holder that never waited opens no watch.
        waiting: Box::new(move |waiter: &mut Proc| {
            waiter.stderr().contains("waiting") && watches.is_none_or(|server| server.watch_count() >= 1)
        }),
        settle: WATCH_SETTLE,
    }
}

/// An event-driven waiter is settled after a moment; the spread only varies the timing a little.
const WATCH_SETTLE: (u64, u64) = (150, 300);

fn one_handoff(ctx: &Ctx, variant: &HandoffVariant<'_>, tag: &str) -> f64 {
    let go = ctx.dir.join(format!("go-{tag}"));
    let ready = ctx.dir.join(format!("ready-{tag}"));
    let log = ctx.dir.join(format!("log-{tag}"));
    nix::unistd::mkfifo(&go, Mode::S_IRUSR | Mode::S_IWUSR).expect("mkfifo");
    let holder_script = format!(
        "echo ready > {ready}; read x < {go}; echo end $EPOCHREALTIME >> {log}",
        ready = ready.display(),
        go = go.display(),
        log = log.display()
    );
    let waiter_script = format!("echo start $EPOCHREALTIME >> {}", log.display());
    let mut holder = Proc::spawn(ctx, (variant.holder)(&holder_script), &format!("holder-{tag}"));
    wait_until("the holder's child to start", || ready.exists(), &mut [&mut holder]);
    let mut waiter = Proc::spawn(ctx, (variant.waiter)(&waiter_script), &format!("waiter-{tag}"));
    let waiting = &variant.waiting;
    let deadline = Instant::now() + PATIENCE;
    while !waiting(&mut waiter) {
        if Instant::now() > deadline || waiter.exited() || holder.exited() {
            panic!("the waiter is not waiting:\nholder:\n{}\nwaiter:\n{}", holder.stderr(), waiter.stderr());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (from, spread) = variant.settle;
    std::thread::sleep(Duration::from_millis(from + ctx.random() % spread));
    release_fifo(&go);
    holder.expect_exit(0);
    waiter.expect_exit(0);
    let stamps = read_stamps(&log);
    let words: Vec<&str> = stamps.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(words, ["end", "start"], "unexpected stamps in {}", log.display());
    (stamps[1].1 - stamps[0].1) as f64 / 1e3
}

/// Let the holder's child (blocked in `read x < FIFO`) go: open without blocking, retrying until the
/// reader is there.
fn release_fifo(fifo: &Path) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match fs::OpenOptions::new().write(true).custom_flags(nix::libc::O_NONBLOCK).open(fifo) {
            Ok(mut pipe) => {
                pipe.write_all(b"go\n").expect("write to the fifo");
                return;
            }
            Err(err) if err.raw_os_error() == Some(nix::libc::ENXIO) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(err) => panic!("cannot open {}: {err}", fifo.display()),
        }
    }
}

/// `WORD SECONDS.MICROS` lines, as microseconds since the epoch.
fn read_stamps(path: &Path) -> Vec<(String, i64)> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let word = parts.next()?.to_string();
            let (secs, micros) = parts.next()?.split_once('.')?;
            Some((word, secs.parse::<i64>().ok()? * 1_000_000 + micros.parse::<i64>().ok()?))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 3. Takeover after a crash
// ---------------------------------------------------------------------------------------------

fn takeover(ctx: &Ctx) -> String {
    let n = ctx.count(5, 2);
    eprintln!("takeover: {n} crashes per backend (about 5 s each)");
    let kube = KubeEnv::start(ctx, "takeover");
    let file = ctx.dir.join("locks-takeover");
    let name = "bench-takeover";
    let backends = [("test API server", Backend::Kube(&kube)), ("file backend", Backend::File(&file))];

    // Per backend: kill → start, last renewal → start, kill → holder's child dead.
    let mut samples = vec![[Vec::new(), Vec::new(), Vec::new()]; backends.len()];
    let mut order: Vec<usize> = (0..backends.len()).collect();
    for round in 0..n {
        ctx.shuffle(&mut order);
        for &b in &order {
            let (label, backend) = &backends[b];
            let tag = format!("takeover-{b}-{round}");
            let pid_file = ctx.dir.join(format!("pid-{tag}"));
            let log = ctx.dir.join(format!("log-{tag}"));
            let holder_script = format!("echo $$ > {}; exec sleep 1000", pid_file.display());
            let waiter_script = format!("echo start $EPOCHREALTIME >> {}", log.display());
            let mut holder = Proc::spawn(
                ctx,
                ctx.mpsync(backend, &[&["lock", name], FAST, &["--", "bash", "-c", &holder_script]].concat()),
                &format!("holder-{tag}"),
            );
            wait_until("the holder's child to start", || read_pid(&pid_file).is_some(), &mut [&mut holder]);
            let child = read_pid(&pid_file).unwrap();
            let mut waiter = Proc::spawn(
                ctx,
                ctx.mpsync(backend, &[&["lock", name, "-v"], FAST, &["--", "bash", "-c", &waiter_script]].concat()),
                &format!("waiter-{tag}"),
            );
            wait_until(
                "the waiter to wait",
                || {
                    waiter.stderr().contains("waiting")
                        && match backend {
                            Backend::Kube(kube) => kube.server.watch_count() >= 1,
                            Backend::File(_) => true,
                        }
                },
                &mut [&mut holder],
            );
            // A random phase within the 500 ms renewal cycle.
            std::thread::sleep(Duration::from_millis(300 + ctx.random() % 1000));
            let killed_at = epoch_micros();
            let killed = Instant::now();
            holder.signal(Signal::SIGKILL);
            holder.wait_for(PATIENCE).expect("SIGKILL works");
            while alive(child) {
                assert!(killed.elapsed() < PATIENCE, "the holder's child survived its mpsync");
                std::thread::sleep(Duration::from_micros(200));
            }
            let child_dead_ms = killed.elapsed().as_secs_f64() * 1e3;
            // The last renewal that reached the store (the waiter has not written yet: that takes ~4 s).
            let renewed_at = last_renew_time(backend, name);
            waiter.expect_exit(0);
            let stamps = read_stamps(&log);
            assert_eq!(stamps.len(), 1, "{}", waiter.stderr());
            let started_at = stamps[0].1;
            samples[b][0].push((started_at - killed_at) as f64 / 1e3);
            samples[b][1].push((started_at - renewed_at) as f64 / 1e3);
            samples[b][2].push(child_dead_ms);
            eprintln!(
                "  {label}: kill → start {:.0} ms, last renewal → start {:.0} ms, child dead after {child_dead_ms:.1} ms",
                (started_at - killed_at) as f64 / 1e3,
                (started_at - renewed_at) as f64 / 1e3
            );
        }
    }
    let mut out = String::from(
        "\n## 3. Takeover after a crash (SIGKILL of the holder's mpsync)\n\n\
         `--lease-duration 4s --renew-deadline 2s --retry-period 500ms` on both. The waiter's child stamps \
         `$EPOCHREALTIME`; the kill time is the bench's clock just before kill(2); the last renewal is the \
         `renewTime` of the record as stored right after the holder died (written by the holder from the \
         same clock). The holder's child is `sleep`, which its guard must kill.\n\n\
         | backend | measure | N | median ms | p90 ms | min ms | max ms |\n|---|---|---:|---:|---:|---:|---:|\n",
    );
    let measures =
        ["kill → waiter's child starts", "last renewal → waiter's child starts", "kill → holder's child dead (guard)"];
    for ((label, _), per) in backends.iter().zip(&samples) {
        for (measure, s) in measures.iter().zip(per) {
            let s = Stats::of(s);
            writeln!(
                out,
                "| {label} | {measure} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
                s.n, s.median, s.p90, s.min, s.max
            )
            .unwrap();
        }
    }
    out.push_str(
        "\nExpected: the waiter takes over `lease_duration` (4 s) after it *observed* the last renewal, so \
         4 s after the last renewal plus the observation and acquisition delays, and 3.5–4 s after the kill \
         (the kill falls somewhere in a 500 ms renewal cycle).\n",
    );
    out
}

fn last_renew_time(backend: &Backend<'_>, name: &str) -> i64 {
    let lease = match backend {
        Backend::Kube(kube) => kube.server.lease("default", name).expect("the lease exists"),
        Backend::File(dir) => {
            serde_json::from_str(&fs::read_to_string(dir.join(format!("{name}.json"))).expect("record")).expect("json")
        }
    };
    let renew = lease["spec"]["renewTime"].as_str().expect("renewTime");
    parse_micro_time(renew).unwrap_or_else(|| panic!("cannot parse renewTime {renew:?}"))
}

// ---------------------------------------------------------------------------------------------
// 4 and 5. API load and memory (in the same window)
// ---------------------------------------------------------------------------------------------

fn api_and_memory(ctx: &Ctx) -> String {
    let window = Duration::from_secs_f64(
        std::env::var("MPSYNC_BENCH_API_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30.0),
    );
    eprintln!("api load and memory: a {window:?} window");
    // One server per process observed, so that every request counted is that process's.
    let holding = KubeEnv::start(ctx, "api-holder");
    let waiting = KubeEnv::start(ctx, "api-waiter");
    let memory = KubeEnv::start(ctx, "memory");
    let name = "bench-api";
    create_foreign_lease(&waiting.server, name, "someone-else", 3600);

    let sleeper = |tag: &str| {
        let ready = ctx.dir.join(format!("ready-{tag}"));
        (format!("echo $$ > {}; exec sleep 1000", ready.display()), ready)
    };
    // Holder with default timings (renews every 2 s).
    let (script, holder_ready) = sleeper("api-holder");
    let spawned = Instant::now();
    let mut holder = Proc::spawn(
        ctx,
        ctx.mpsync(&Backend::Kube(&holding), &["lock", name, "--", "bash", "-c", &script]),
        "api-holder",
    );
    wait_until("the holder's child", || read_pid(&holder_ready).is_some(), &mut [&mut holder]);
    let startup_ms = spawned.elapsed().as_secs_f64() * 1e3;
    let startup_requests = holding.server.requests();
    // Waiter on a lease another holder keeps for an hour.
    let mut waiter =
        Proc::spawn(ctx, ctx.mpsync(&Backend::Kube(&waiting), &["lock", name, "-v", "--", "true"]), "api-waiter");
    let waiter_stderr = waiter.stderr.clone();
    wait_until(
        "the waiter to wait",
        || {
            fs::read_to_string(&waiter_stderr).unwrap_or_default().contains("waiting")
                && waiting.server.watch_count() >= 1
        },
        &mut [&mut holder],
    );

    // Memory: holders of both backends with a sleep child, short timings so that renewals are many.
    let file = ctx.dir.join("locks-memory");
    let flock_file = ctx.dir.join("flock-memory");
    let (script, kube_ready) = sleeper("memory-kube");
    let mut kube_holder = Proc::spawn(
        ctx,
        ctx.mpsync(
            &Backend::Kube(&memory),
            &[&["lock", "bench-memory"], FAST, &["--", "bash", "-c", &script]].concat(),
        ),
        "memory-kube",
    );
    let (script, file_ready) = sleeper("memory-file");
    let mut file_holder = Proc::spawn(
        ctx,
        ctx.mpsync(&Backend::File(&file), &[&["lock", "bench-memory"], FAST, &["--", "bash", "-c", &script]].concat()),
        "memory-file",
    );
    let (script, flock_ready) = sleeper("memory-flock");
    let mut flock_holder = Proc::spawn(
        ctx,
        ctx.command("flock", &[flock_file.as_os_str(), "bash".as_ref(), "-c".as_ref(), script.as_ref()]),
        "memory-flock",
    );
    wait_until(
        "the memory holders' children",
        || read_pid(&kube_ready).is_some() && read_pid(&file_ready).is_some() && read_pid(&flock_ready).is_some(),
        &mut [&mut kube_holder, &mut file_holder, &mut flock_holder],
    );

    // Settle, then open the window.
    std::thread::sleep(Duration::from_secs(1));
    let holder_before = holding.server.requests().len();
    let waiter_before = waiting.server.requests().len();
    let cpu_before = [cpu_ms(holder.pid()), cpu_ms(waiter.pid())];
    let window_start = Instant::now();
    // Memory after a few renewals (≥ 6 at 500 ms), and again at the end of the window.
    std::thread::sleep(Duration::from_secs(3));
    let memory_early = [memory_of(kube_holder.pid()), memory_of(file_holder.pid())];
    let sleep_pid = read_pid(&kube_ready).unwrap();
    let sleep_memory = memory_of(sleep_pid);
    let flock_memory = memory_of(flock_holder.pid());
    let guards = [guard_of(kube_holder.pid()), guard_of(file_holder.pid())];
    let guard_memory: Vec<Memory> = guards.iter().map(|g| memory_of(g.expect("a guard process"))).collect();
    std::thread::sleep(window.saturating_sub(window_start.elapsed()));
    let elapsed = window_start.elapsed().as_secs_f64();
    let cpu_after = [cpu_ms(holder.pid()), cpu_ms(waiter.pid())];
    let holder_window: Vec<RequestLog> = holding.server.requests().split_off(holder_before);
    let waiter_window: Vec<RequestLog> = waiting.server.requests().split_off(waiter_before);
    let memory_late = [memory_of(kube_holder.pid()), memory_of(file_holder.pid())];
    let kube_renewals = memory.server.requests().iter().filter(|r| r.method == "PUT").count();

    // Stop everything: SIGTERM reaches the children through mpsync (exit 143); the waiter stops waiting.
    for proc in [&mut holder, &mut kube_holder, &mut file_holder, &mut waiter] {
        proc.signal(Signal::SIGTERM);
        proc.expect_exit(143);
    }
    // flock(1) does not forward signals: stop its child, then flock exits with the child's status.
    let flock_child = read_pid(&flock_ready).unwrap();
    let _ = kill(Pid::from_raw(flock_child), Signal::SIGTERM);
    flock_holder.expect_exit(143);

    let binary_size = fs::metadata(&ctx.bin).map(|m| m.len()).unwrap_or(0);
    let mut out = String::new();
    if ctx.wants("memory") {
        writeln!(
            out,
            "\n## 4. Memory (kB, from /proc/PID/status and smaps_rollup)\n\n\
             Holders with `--lease-duration 4s --renew-deadline 2s --retry-period 500ms` and a `sleep` child; sampled 3 s \
             into the window (4 s after they started) and again at its end ({elapsed:.0} s, {kube_renewals} renewals on the test server). \
             The guard is a fork of mpsync (no exec), so most of its RSS is pages shared with mpsync: Pss is its fair share.\n\n\
             | process | VmHWM | VmRSS | RssAnon | Pss |\n|---|---:|---:|---:|---:|"
        )
        .unwrap();
        let rows: Vec<(String, &Memory)> = vec![
            ("mpsync holding, test API server (early)".into(), &memory_early[0]),
            (format!("mpsync holding, test API server (after {elapsed:.0} s)"), &memory_late[0]),
            ("mpsync holding, file backend (early)".into(), &memory_early[1]),
            (format!("mpsync holding, file backend (after {elapsed:.0} s)"), &memory_late[1]),
            ("mpsync's guard process, test API server".into(), &guard_memory[0]),
            ("mpsync's guard process, file backend".into(), &guard_memory[1]),
            ("flock(1) holding a lock (same child)".into(), &flock_memory),
            ("the `sleep` child itself".into(), &sleep_memory),
        ];
        for (label, m) in rows {
            writeln!(out, "| {label} | {} | {} | {} | {} |", m.hwm, m.rss, m.anon, m.pss).unwrap();
        }
        writeln!(
            out,
            "\nRelease binary: {} bytes ({:.1} MiB), `{}`.",
            binary_size,
            binary_size as f64 / 1048576.0,
            ctx.bin.display()
        )
        .unwrap();
    }
    if ctx.wants("api") {
        writeln!(
            out,
            "\n## 5. API load (requests received by the test API server)\n\n\
             Default timings (`--lease-duration 15s --renew-deadline 10s --retry-period 2s`). Window {elapsed:.1} s, \
             opened 1 s after the process settled; each process has its own server, so every request counted is its own. \
             A watch is one request that stays open (mpsync asks for `timeoutSeconds=30`, then watches again from the last \
             resourceVersion). CPU is the time on a CPU of all its threads over the window (/proc/PID/task/*/schedstat).\n\n\
             | process | requests in window | per minute | by verb (per minute) | CPU ms per minute |\n|---|---:|---:|---|---:|"
        )
        .unwrap();
        let per_minute = 60.0 / elapsed;
        for (label, log, cpu) in [
            ("holding (renewing every 2 s)", &holder_window, cpu_after[0] - cpu_before[0]),
            ("waiting (lease held by another for 1 h)", &waiter_window, cpu_after[1] - cpu_before[1]),
        ] {
            writeln!(
                out,
                "| {label} | {} | {:.1} | {} | {:.0} |",
                log.len(),
                log.len() as f64 * per_minute,
                by_verb(log, per_minute),
                cpu * per_minute
            )
            .unwrap();
        }
        writeln!(
            out,
            "\nStart-up of the holder (spawn → its child running, {startup_ms:.0} ms): {} requests: {}.",
            startup_requests.len(),
            startup_requests.iter().map(verb).collect::<Vec<_>>().join(", ")
        )
        .unwrap();
    }
    out
}

/// A Lease another holder keeps, created with a raw POST (as client-go would write it).
fn create_foreign_lease(server: &TestApiServer, name: &str, holder: &str, seconds: i64) {
    let now = format_micro_time(epoch_micros());
    let body = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": seconds, "acquireTime": now, "renewTime": now, "leaseTransitions": 0},
    })
    .to_string();
    let (status, answer) = server.call("POST", "/apis/coordination.k8s.io/v1/namespaces/default/leases", Some(&body));
    assert_eq!(status, 201, "creating the foreign lease: {answer}");
}

fn verb(r: &RequestLog) -> &'static str {
    let watch = r.query.split('&').any(|p| p == "watch=true" || p == "watch=1");
    match r.method.as_str() {
        "GET" if watch => "watch",
        "GET" if r.path.ends_with("/leases") => "list",
        "GET" => "get",
        "PUT" => "update",
        "POST" => "create",
        _ => "other",
    }
}

fn by_verb(log: &[RequestLog], factor: f64) -> String {
    let mut parts = Vec::new();
    for name in ["get", "create", "update", "list", "watch", "other"] {
        let count = log.iter().filter(|r| verb(r) == name).count();
        if count > 0 {
            parts.push(format!("{name} {}", fmt_per(count as f64 * factor)));
        }
    }
    if parts.is_empty() { "none".into() } else { parts.join(", ") }
}

fn fmt_per(x: f64) -> String {
    if (x - x.round()).abs() < 0.05 { format!("{x:.0}") } else { format!("{x:.1}") }
}

#[derive(Debug, Default)]
struct Memory {
    hwm: u64,
    rss: u64,
    anon: u64,
    pss: u64,
}

fn memory_of(pid: i32) -> Memory {
    let field = |text: &str, key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    Memory {
        hwm: field(&status, "VmHWM:"),
        rss: field(&status, "VmRSS:"),
        anon: field(&status, "RssAnon:"),
        pss: field(&rollup, "Pss:"),
    }
}

/// The guard: the child of mpsync that is mpsync itself (forked, not exec'd).
fn guard_of(pid: i32) -> Option<i32> {
    all_pids()
        .into_iter()
        .find(|&p| proc_stat(p).is_some_and(|s| s.ppid == pid && s.comm == "mpsync" && s.state != 'Z'))
}

/// CPU time of all the process's threads: the first field of each thread's schedstat (nanoseconds on a
/// CPU), which is finer than the 10 ms ticks of /proc/PID/stat.
fn cpu_ms(pid: i32) -> f64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let nanos: u64 = tasks
        .filter_map(|task| fs::read_to_string(task.ok()?.path().join("schedstat")).ok())
        .filter_map(|text| text.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    nanos as f64 / 1e6
}

// ---------------------------------------------------------------------------------------------
// The machine
// ---------------------------------------------------------------------------------------------

fn machine(ctx: &Ctx) -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_else(|| "?".into());
    let output = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "# mpsync benchmark\n\n\
         | | |\n|---|---|\n\
         | date | {} |\n| CPUs (nproc) | {} |\n| CPU | {cpu} |\n| kernel | {} |\n| rustc | {} |\n\
         | load average at start | {} |\n| binary | `{}` |\n| scale (`MPSYNC_BENCH_N`) | {} |",
        output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        output("rustc", &["--version"]),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        ctx.bin.display(),
        ctx.scale,
    )
}

// ---------------------------------------------------------------------------------------------
// Processes and the environment
// ---------------------------------------------------------------------------------------------

struct Ctx {
    dir: PathBuf,
    /// A directory on tmpfs (/dev/shm), where fsync costs nothing, as on the default
    /// `$XDG_RUNTIME_DIR`; None if there is none.
    shm: Option<PathBuf>,
    bin: PathBuf,
    marker: String,
    scale: f64,
    only: Option<Vec<String>>,
    rng: Cell<u64>,
}

#[derive(Clone)]
enum Backend<'a> {
    Kube(&'a KubeEnv),
    File(&'a Path),
}

struct KubeEnv {
    server: TestApiServer,
    kubeconfig: PathBuf,
}

impl KubeEnv {
    fn start(ctx: &Ctx, tag: &str) -> KubeEnv {
        let server = TestApiServer::start();
        let kubeconfig = ctx.dir.join(format!("kubeconfig-{tag}"));
        fs::write(&kubeconfig, server.kubeconfig_yaml("default")).unwrap();
        KubeEnv { server, kubeconfig }
    }
}

impl Ctx {
    fn new() -> Ctx {
        let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
        let marker = format!("{}-{seed:x}", std::process::id());
        let dir = std::env::temp_dir().join(format!("mpsync-bench-{marker}"));
        fs::create_dir_all(&dir).unwrap();
        let shm = Path::new("/dev/shm").join(format!("mpsync-bench-{marker}"));
        let shm = fs::create_dir(&shm).is_ok().then_some(shm);
        let bin = std::env::var_os("MPSYNC_BENCH_BIN")
            .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_mpsync")), PathBuf::from);
        let scale =
            std::env::var("MPSYNC_BENCH_N").ok().and_then(|s| s.parse().ok()).filter(|s: &f64| *s > 0.0).unwrap_or(1.0);
        let only =
            std::env::var("MPSYNC_BENCH_ONLY").ok().map(|s| s.split(',').map(|p| p.trim().to_string()).collect());
        let bash_ok =
            Command::new("bash").args(["-c", "[ -n \"$EPOCHREALTIME\" ]"]).status().is_ok_and(|s| s.success());
        assert!(bash_ok, "the bench needs bash 5 (for $EPOCHREALTIME)");
        Ctx { dir, shm, bin, marker, scale, only, rng: Cell::new(seed) }
    }

    fn wants(&self, section: &str) -> bool {
        self.only.as_ref().is_none_or(|only| only.iter().any(|s| s == section))
    }

    fn count(&self, default: usize, min: usize) -> usize {
        ((default as f64 * self.scale).round() as usize).max(min)
    }

    /// xorshift64*: enough to shuffle the order of variants.
    fn random(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn shuffle(&self, order: &mut [usize]) {
        for i in (1..order.len()).rev() {
            order.swap(i, (self.random() % (i as u64 + 1)) as usize);
        }
    }

    /// A command with nothing inherited that could point mpsync at a cluster or change its behaviour.
    fn command<S: AsRef<OsStr>>(&self, program: impl AsRef<OsStr>, args: &[S]) -> Command {
        let mut command = Command::new(program);
        command.args(args);
        for name in ["KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "POD_NAMESPACE", "POD_NAME"] {
            command.env_remove(name);
        }
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("MPSYNC_") {
                command.env_remove(name);
            }
        }
        command
            .env("LC_ALL", "C")
            .env(MARKER, &self.marker)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    }

    fn mpsync(&self, backend: &Backend<'_>, args: &[&str]) -> Command {
        let mut command = self.command(&self.bin, args);
        command.env("MPSYNC_NAMESPACE", "default");
        match backend {
            Backend::Kube(kube) => command.env("MPSYNC_KUBECONFIG", &kube.kubeconfig),
            Backend::File(dir) => command.env("MPSYNC_BACKEND", "file").env("MPSYNC_LOCK_DIR", dir),
        };
        command
    }

    /// Find (and SIGKILL, by pid) any process this run started that is still there.
    fn sweep(&self) -> Vec<(i32, String)> {
        let needle = format!("{MARKER}={}", self.marker);
        let me = std::process::id() as i32;
        let mut found = Vec::new();
        for pid in all_pids() {
            if pid == me {
                continue;
            }
            let Ok(environ) = fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            if environ.split(|b| *b == 0).any(|var| var == needle.as_bytes())
                && let Some(stat) = proc_stat(pid)
                && stat.state != 'Z'
            {
                found.push((pid, stat.comm));
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        found
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        if let Some(shm) = &self.shm {
            let _ = fs::remove_dir_all(shm);
        }
        if std::thread::panicking() || std::env::var_os("MPSYNC_BENCH_KEEP").is_some() {
            eprintln!("logs kept in {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A running process with its stderr in a file. Dropping it SIGKILLs it (its guard then kills its
/// child's group) and reaps it.
struct Proc {
    child: Child,
    stderr: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    fn spawn(ctx: &Ctx, mut command: Command, tag: &str) -> Proc {
        let stderr = ctx.dir.join(format!("{tag}.stderr"));
        command.stderr(fs::File::create(&stderr).unwrap());
        let child = command.spawn().unwrap_or_else(|err| panic!("spawn {command:?}: {err}"));
        Proc { child, stderr, status: None }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn signal(&self, signal: Signal) {
        if self.status.is_none() {
            let _ = kill(Pid::from_raw(self.pid()), signal);
        }
    }

    fn exited(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap();
        }
        self.status.is_some()
    }

    fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while !self.exited() {
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.status
    }

    #[track_caller]
    fn expect_exit(&mut self, code: i32) {
        let status = self.wait_for(PATIENCE);
        let got = status.and_then(|s| s.code().or_else(|| s.signal().map(|n| 128 + n)));
        assert_eq!(got, Some(code), "exit status {status:?}; stderr:\n{}", self.stderr());
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.exited() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Wait until `condition` holds (polling every 2 ms), failing if it takes longer than PATIENCE or if
/// one of `procs` exits meanwhile.
#[track_caller]
fn wait_until(what: &str, mut condition: impl FnMut() -> bool, procs: &mut [&mut Proc]) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        for proc in procs.iter_mut() {
            assert!(!proc.exited(), "a process exited while waiting for {what}: {:?}\n{}", proc.status, proc.stderr());
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    let text = fs::read_to_string(path).ok()?;
    if !text.ends_with('\n') {
        return None;
    }
    text.trim().parse().ok()
}

struct ProcStat {
    comm: String,
    state: char,
    ppid: i32,
}

fn proc_stat(pid: i32) -> Option<ProcStat> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_string();
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    Some(ProcStat { comm, state: fields.first()?.chars().next()?, ppid: fields.get(1)?.parse().ok()? })
}

fn alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|s| s.state != 'Z')
}

fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|dir| dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Numbers and times
// ---------------------------------------------------------------------------------------------

struct Stats {
    n: usize,
    median: f64,
    p90: f64,
    min: f64,
    max: f64,
}

impl Stats {
    /// Median (mean of the middle two for an even count) and nearest-rank p90.
    fn of(samples: &[f64]) -> Stats {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        assert!(n > 0, "no samples");
        let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
        let rank = ((0.9 * n as f64).ceil() as usize).clamp(1, n);
        Stats { n, median, p90: sorted[rank - 1], min: sorted[0], max: sorted[n - 1] }
    }
}

fn epoch_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as i64
}

/// `2026-11-26T04:23:07.584740Z` (a MicroTime in UTC, as stored) to microseconds since the epoch.
fn parse_micro_time(s: &str) -> Option<i64> {
    s.parse::<k8s_openapi::jiff::Timestamp>().ok().map(|t| t.as_microsecond())
}

fn format_micro_time(micros: i64) -> String {
    let at = k8s_openapi::jiff::Timestamp::from_microsecond(micros).expect("a time in range");
    k8s_openapi::jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%S%.6fZ", at).expect("formattable")
}
