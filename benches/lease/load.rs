//! Sections 5 and 6: Memory of a holder (this build and the baseline, both backends, against flock(1)), binary
//! size, and the API load of one holder and one waiter over a window.
//!
//! On the test API server every process has a server of its own, so that all of it runs in one
//! window. On a cluster the counts are global: memory, the holder and the waiter each get a window of
//! their own, one after the other.

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::ctx::{Backend, Bin, Ctx, Proc, all_pids, fmt_per, mib, proc_stat, read_pid, wait_until};
use crate::kube::{Counted, KubeEnv, Window, by_verb_code, total};

pub fn api_and_memory(ctx: &Ctx) -> String {
    let window = Duration::from_secs_f64(
        std::env::var("MPSYNC_BENCH_API_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| (30.0 * ctx.scale).clamp(8.0, 60.0)),
    );
    let together = ctx.target.cluster().is_none();
    eprintln!("api load and memory: {window:?} windows{}", if together { "" } else { ", one after the other" });
    let memory_envs: Vec<KubeEnv> =
        ctx.bins().iter().map(|b| KubeEnv::start(ctx, &format!("memory-{}", b.label))).collect();
    let holding = KubeEnv::start(ctx, "api-holder");
    let waiting = KubeEnv::start(ctx, "api-waiter");

    let memory;
    let (holder, waiter);
    if together {
        let holders = MemoryHolders::start(ctx, &memory_envs);
        let mut observed = [Observed::holder(ctx, &holding), Observed::waiter(ctx, &waiting)];
        std::thread::sleep(Duration::from_secs(1));
        observed.iter_mut().for_each(Observed::open);
        memory = holders.sample(window);
        let [h, w] = observed;
        (holder, waiter) = (h.close(), w.close());
    } else {
        memory = MemoryHolders::start(ctx, &memory_envs).sample(window);
        let mut h = Observed::holder(ctx, &holding);
        std::thread::sleep(Duration::from_secs(1));
        h.open();
        std::thread::sleep(window);
        holder = h.close();
        let mut w = Observed::waiter(ctx, &waiting);
        std::thread::sleep(Duration::from_secs(1));
        w.open();
        std::thread::sleep(window);
        waiter = w.close();
    }

    let mut out = String::new();
    if ctx.wants("memory") {
        out.push_str(&memory.report(ctx));
    }
    if ctx.wants("api") {
        writeln!(
            out,
            "\n## 6. API load ({}, this build)\n\n\
             Default timings (`--lease-duration 15s --renew-deadline 10s --retry-period 2s`). Windows of {:.1} s, \
             opened 1 s after the process settled{}. A watch is one request that stays open (mpsync asks for \
             `timeoutSeconds=30`, then watches again from the last resourceVersion). CPU is the time on a CPU of all \
             its threads over the window (/proc/PID/task/*/schedstat).{}\n\n\
             | process | requests in window | per minute | by verb and code (per minute) | CPU ms per minute |\n|---|---:|---:|---|---:|",
            ctx.target.name(),
            holder.counted.secs,
            if together { "; each process has its own server, so every request counted is its own" } else { "; one process at a time" },
            ctx.target.cluster().map(|c| format!(" {}", c.describe_counts())).unwrap_or_default(),
        )
        .unwrap();
        for (label, o) in
            [("holding (renewing every 2 s)", &holder), ("waiting (lease held by another for 1 h)", &waiter)]
        {
            let per_minute = 60.0 / o.counted.secs;
            let (count, rate, by) = match &o.counted.counts {
                Ok(counts) => (
                    format!("{}{}", o.counted.approx(), fmt_per(total(counts))),
                    fmt_per(total(counts) * per_minute),
                    format!("{}{}", o.counted.approx(), by_verb_code(counts, per_minute)),
                ),
                Err(_) => ("skipped".into(), "–".into(), "skipped (see above)".into()),
            };
            writeln!(out, "| {label} | {count} | {rate} | {by} | {:.0} |", o.cpu_ms * per_minute).unwrap();
        }
        let startup = match &holder.startup.counts {
            Ok(counts) => format!("{}{}", holder.startup.approx(), by_verb_code(counts, 1.0)),
            Err(_) => "skipped".into(),
        };
        writeln!(out, "\nStart-up of the holder (spawn → its child running, {:.0} ms): {startup}.", holder.startup_ms)
            .unwrap();
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------------

/// A renewal every 500 ms, so that a window sees many; a renew deadline long enough that a slow disk
/// (fsync stalls of a second and more on a loaded VM) does not cost the file backend its lease.
const MEMORY_TIMINGS: &[&str] = &["--lease-duration", "12s", "--renew-deadline", "8s", "--retry-period", "500ms"];

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

/// The guard: the child of mpsync that is mpsync itself (forked, not exec'd; named `mpsync-guard` since 13).
fn guard_of(pid: i32) -> Option<i32> {
    all_pids().into_iter().find(|&p| {
        proc_stat(p)
            .is_some_and(|s| s.ppid == pid && (s.comm == "mpsync" || s.comm == "mpsync-guard") && s.state != 'Z')
    })
}

/// Holders with a `sleep` child and short timings (renewals every 500 ms): mpsync on the API, one per
/// binary, mpsync on the file backend, and flock(1).
struct MemoryHolders<'c> {
    ctx: &'c Ctx,
    /// (binary, process, its child's pid file), kube holders first.
    kube: Vec<(&'c Bin, Proc, PathBuf)>,
    file: (Proc, PathBuf),
    flock: (Proc, PathBuf),
}

struct MemoryReport {
    secs: f64,
    /// Per kube holder: binary label, early, late, guard.
    kube: Vec<(String, Memory, Memory, Memory)>,
    file: (Memory, Memory, Memory),
    flock: Memory,
    sleep: Memory,
}

fn sleeper(ctx: &Ctx, tag: &str) -> (String, PathBuf) {
    let ready = ctx.dir.join(format!("ready-{tag}"));
    (format!("echo $$ > {}; exec sleep 1000", ready.display()), ready)
}

impl<'c> MemoryHolders<'c> {
    fn start(ctx: &'c Ctx, envs: &'c [KubeEnv<'c>]) -> MemoryHolders<'c> {
        let mut kube = Vec::new();
        for (bin, env) in ctx.bins().into_iter().zip(envs) {
            let (script, ready) = sleeper(ctx, &format!("memory-kube-{}", bin.label));
            let name = env.lease("bench-memory");
            let command = ctx.mpsync_bin(
                bin,
                Backend::Kube(env),
                &[&["lock", name.as_str()], MEMORY_TIMINGS, &["--", "bash", "-c", &script]].concat(),
            );
            kube.push((bin, Proc::spawn(ctx, command, &format!("memory-kube-{}", bin.label)), ready));
        }
        let lock_dir = ctx.dir.join("locks-memory");
        let (script, ready) = sleeper(ctx, "memory-file");
        let command = ctx.mpsync(
            Backend::File(&lock_dir),
            &[&["lock", "bench-memory"], MEMORY_TIMINGS, &["--", "bash", "-c", &script]].concat(),
        );
        let file = (Proc::spawn(ctx, command, "memory-file"), ready);
        let flock_file = ctx.dir.join("flock-memory");
        let (script, ready) = sleeper(ctx, "memory-flock");
        let command = ctx.command("flock", &[flock_file.as_os_str(), "bash".as_ref(), "-c".as_ref(), script.as_ref()]);
        let flock = (Proc::spawn(ctx, command, "memory-flock"), ready);
        let mut holders = MemoryHolders { ctx, kube, file, flock };
        let ready: Vec<PathBuf> = holders
            .kube
            .iter()
            .map(|(_, _, r)| r.clone())
            .chain([holders.file.1.clone(), holders.flock.1.clone()])
            .collect();
        let mut procs: Vec<&mut Proc> = holders.kube.iter_mut().map(|(_, p, _)| p).collect();
        procs.push(&mut holders.file.0);
        procs.push(&mut holders.flock.0);
        wait_until("the memory holders' children", || ready.iter().all(|r| read_pid(r).is_some()), &mut procs);
        holders
    }

    /// Settle 1 s, sample 3 s into the window and again at its end, then stop the holders.
    fn sample(mut self, window: Duration) -> MemoryReport {
        std::thread::sleep(Duration::from_secs(1));
        let start = Instant::now();
        std::thread::sleep(Duration::from_secs(3));
        let early_kube: Vec<Memory> = self.kube.iter().map(|(_, p, _)| memory_of(p.pid())).collect();
        let early_file = memory_of(self.file.0.pid());
        let guard = |pid: i32| memory_of(guard_of(pid).expect("a guard process"));
        let guards_kube: Vec<Memory> = self.kube.iter().map(|(_, p, _)| guard(p.pid())).collect();
        let guard_file = guard(self.file.0.pid());
        let flock = memory_of(self.flock.0.pid());
        let sleep = memory_of(read_pid(&self.file.1).unwrap());
        std::thread::sleep(window.saturating_sub(start.elapsed()));
        let secs = start.elapsed().as_secs_f64();
        let late_kube: Vec<Memory> = self.kube.iter().map(|(_, p, _)| memory_of(p.pid())).collect();
        let late_file = memory_of(self.file.0.pid());

        // SIGTERM reaches the children through mpsync (exit 143).
        for (_, proc, _) in &mut self.kube {
            proc.signal(Signal::SIGTERM);
            proc.expect_exit(143);
        }
        self.file.0.signal(Signal::SIGTERM);
        self.file.0.expect_exit(143);
        // flock(1) does not forward signals: stop its child, then flock exits with the child's status.
        let _ = kill(Pid::from_raw(read_pid(&self.flock.1).unwrap()), Signal::SIGTERM);
        self.flock.0.expect_exit(143);

        let kube = self
            .kube
            .iter()
            .zip(early_kube.into_iter().zip(late_kube).zip(guards_kube))
            .map(|((bin, _, _), ((early, late), guard))| (bin.label.clone(), early, late, guard))
            .collect();
        let _ = self.ctx;
        MemoryReport { secs, kube, file: (early_file, late_file, guard_file), flock, sleep }
    }
}

impl MemoryReport {
    fn report(&self, ctx: &Ctx) -> String {
        let target = ctx.target.name();
        let mut out = format!(
            "\n## 5. Memory (kB, from /proc/PID/status and smaps_rollup) and binary size\n\n\
             Holders with `--lease-duration 12s --renew-deadline 8s --retry-period 500ms` and a `sleep` child; sampled \
             3 s into the window (4 s after they started) and again at its end ({:.0} s, a renewal every 500 ms). The \
             guard is a fork of mpsync (no exec), so most of its RSS is pages shared with mpsync: Pss is its fair share.\n\n\
             | process | VmHWM | VmRSS | RssAnon | Pss |\n|---|---:|---:|---:|---:|\n",
            self.secs
        );
        let mut row = |label: String, m: &Memory| {
            writeln!(out, "| {label} | {} | {} | {} | {} |", m.hwm, m.rss, m.anon, m.pss).unwrap();
        };
        for (label, early, late, _) in &self.kube {
            row(format!("mpsync holding, {target} [{label}] (early)"), early);
            row(format!("mpsync holding, {target} [{label}] (after {:.0} s)", self.secs), late);
        }
        row("mpsync holding, file backend [current] (early)".into(), &self.file.0);
        row(format!("mpsync holding, file backend [current] (after {:.0} s)", self.secs), &self.file.1);
        for (label, _, _, guard) in &self.kube {
            row(format!("mpsync's guard process, {target} [{label}]"), guard);
        }
        row("mpsync's guard process, file backend [current]".into(), &self.file.2);
        row("flock(1) holding a lock (same child)".into(), &self.flock);
        row("the `sleep` child itself".into(), &self.sleep);

        writeln!(out, "\n| binary | bytes | MiB |\n|---|---:|---:|").unwrap();
        let size = |bin: &Bin| fs::metadata(&bin.path).map(|m| m.len()).unwrap_or(0);
        for bin in ctx.bins() {
            let bytes = size(bin);
            writeln!(out, "| [{}] `{}` | {bytes} | {:.2} |", bin.label, bin.path.display(), bytes as f64 / 1048576.0)
                .unwrap();
        }

        let peak = |label: &str| self.kube.iter().find(|(l, ..)| l == label).map(|(_, _, late, _)| mib(late.hwm));
        ctx.summarize(
            format!("holder peak RSS (VmHWM), kube backend ({target})"),
            peak(&ctx.bin.label).unwrap(),
            ctx.baseline.as_ref().and_then(|b| peak(&b.label)),
            "≤ 8 MiB",
        );
        let mib_of = |bin: &Bin| format!("{:.2} MiB", size(bin) as f64 / 1048576.0);
        ctx.summarize("binary size (release, stripped)", mib_of(&ctx.bin), ctx.baseline.as_ref().map(mib_of), "report");
        out
    }
}

// ---------------------------------------------------------------------------------------------
// API load
// ---------------------------------------------------------------------------------------------

/// One process whose requests and CPU are measured over a window.
struct Observed<'e> {
    proc: Proc,
    env: &'e KubeEnv<'e>,
    open: Option<(Window<'e>, f64)>,
    /// Requests from spawn until it was settled (the holder: its child runs; the waiter: it waits).
    startup: Counted,
    startup_ms: f64,
}

struct ObservedResult {
    counted: Counted,
    cpu_ms: f64,
    startup: Counted,
    startup_ms: f64,
}

impl<'e> Observed<'e> {
    /// A holder with default timings (renews every 2 s).
    fn holder(ctx: &Ctx, env: &'e KubeEnv<'e>) -> Observed<'e> {
        let name = env.lease("bench-api");
        let (script, ready) = sleeper(ctx, "api-holder");
        let window = env.open_window();
        let spawned = Instant::now();
        let mut proc = Proc::spawn(
            ctx,
            ctx.mpsync(Backend::Kube(env), &["lock", &name, "--", "bash", "-c", &script]),
            "api-holder",
        );
        wait_until("the holder's child", || read_pid(&ready).is_some(), &mut [&mut proc]);
        let startup_ms = spawned.elapsed().as_secs_f64() * 1e3;
        Observed { proc, env, open: None, startup: window.close(), startup_ms }
    }

    /// A waiter on a lease another holder keeps for an hour.
    fn waiter(ctx: &Ctx, env: &'e KubeEnv<'e>) -> Observed<'e> {
        let name = env.lease("bench-api-held");
        env.create_foreign_lease(&name, "someone-else", 3600);
        let window = env.open_window();
        let spawned = Instant::now();
        let mut proc =
            Proc::spawn(ctx, ctx.mpsync(Backend::Kube(env), &["lock", &name, "-v", "--", "true"]), "api-waiter");
        let stderr = proc.stderr.clone();
        wait_until(
            "the waiter to wait",
            || fs::read_to_string(&stderr).unwrap_or_default().contains("waiting") && env.watching(1),
            &mut [&mut proc],
        );
        env.settle_watches();
        let startup_ms = spawned.elapsed().as_secs_f64() * 1e3;
        Observed { proc, env, open: None, startup: window.close(), startup_ms }
    }

    fn open(&mut self) {
        self.open = Some((self.env.open_window(), cpu_ms(self.proc.pid())));
    }

    /// Close the window and stop the process: SIGTERM reaches the child through mpsync (exit 143); a
    /// waiter stops waiting (143).
    fn close(mut self) -> ObservedResult {
        let (window, cpu_before) = self.open.take().expect("an open window");
        let cpu = cpu_ms(self.proc.pid()) - cpu_before;
        let counted = window.close();
        self.proc.signal(Signal::SIGTERM);
        self.proc.expect_exit(143);
        ObservedResult { counted, cpu_ms: cpu, startup: self.startup, startup_ms: self.startup_ms }
    }
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
