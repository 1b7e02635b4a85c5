//! Section 3: Many waiters: N processes wait for one lease while another holds it; each child works 100 ms.
//! Every process that had its turn is replaced by a new one at once, so that N processes wait at
//! every handoff; in the "draining" rows nobody is replaced (a crowd that started together and goes
//! round once, with no newcomer to take the lease first). Handoff latency from the children's stamps,
//! and the API requests per handoff of all processes together.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::ctx::{
    Backend, Bin, Ctx, PATIENCE, Proc, Stats, epoch_micros, fmt_per, mkfifo, read_stamps, release_fifo, wait_until,
};
use crate::kube::{Counted, KubeEnv, by_verb_code_watching, by_verb_code_without_watching, total_without_watching};

/// What a child does with the lease: 100 ms of "work".
const WORK: &str = "sleep 0.1";
/// After the last counted handoff, the window stays open this long, so that the losers' answers to
/// it are counted; well within the next child's 100 ms.
const TAIL: Duration = Duration::from_millis(50);

struct Outcome {
    handoffs: Vec<f64>,
    /// Requests in the window (from the first release to the last counted handoff + TAIL).
    window: Counted,
    /// Requests while the N waiters started and began to wait (not in the window).
    startup: Counted,
    startup_secs: f64,
    /// Whether every process that had its turn was replaced (otherwise the crowd drains).
    replaced: bool,
    /// Processes started in the window (replacements).
    replacements: usize,
    /// Two starts or two ends in a row in the children's stamps: two children at once.
    overlaps: usize,
    /// Races lost (writes answered 409) in the first handoff, and in the others together; the test
    /// server's log only (a cluster's metrics cannot tell them apart).
    conflicts: Option<(usize, usize)>,
}

pub fn waiters(ctx: &Ctx) -> String {
    let sizes: Vec<usize> = std::env::var("MPSYNC_BENCH_WAITERS")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 10, 100]);
    // A crowd that drains: N processes, none replaced (`MPSYNC_BENCH_DRAINING`, default 100; 0: none).
    let draining: Vec<usize> = std::env::var("MPSYNC_BENCH_DRAINING")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).filter(|n| *n > 1).collect())
        .unwrap_or_else(|| vec![100]);
    let handoffs = ctx.count(40, 10);
    eprintln!("many waiters: {sizes:?} waiters, {handoffs} handoffs each; draining: {draining:?}");
    let target = ctx.target.name();
    let mut results: Vec<(usize, &Bin, Outcome)> = Vec::new();
    let runs = sizes.iter().map(|&n| (n, true)).chain(draining.iter().map(|&n| (n, false)));
    for (n, replace) in runs {
        let mut bins = ctx.bins();
        ctx.shuffle(&mut bins);
        for bin in bins {
            let count = if replace { handoffs } else { handoffs.min(n - 1) };
            let label = if replace { "" } else { " draining" };
            let tag = format!("waiters-{n}{}-{}", label.replace(' ', "-"), bin.label);
            let outcome = run(ctx, bin, n, count, replace, &tag);
            let s = Stats::of(&outcome.handoffs);
            eprintln!("  {n} waiters{label} [{}]: median {:.1} ms, p90 {:.1} ms", bin.label, s.median, s.p90);
            results.push((n, bin, outcome));
        }
    }
    // Rows in a fixed order: by N, replaced before draining, this build first.
    results.sort_by_key(|(n, bin, o)| (*n, !o.replaced, bin.label != ctx.bin.label));

    let mut out = format!(
        "\n## 3. Many waiters ({target}, default timings)\n\n\
         N processes (`mpsync lock NAME -v -- bash -c '…; {WORK}; …'`) wait while one holds the lease; then the \
         holder's child exits and the lease goes round. Each process that had its turn is replaced by a new one \
         as soon as it exits, so N processes wait at every handoff, and every handoff has one process start-up in \
         it. In the *draining* rows nobody is replaced: N processes that started together go round once, with no \
         newcomer to take the lease first (the first N − 1 handoffs, at most {handoffs}). Handoff = one child's end → the next \
         child's start, both stamped by the children (`$EPOCHREALTIME`, one clock). Requests are those of all \
         processes together, from the first release until {} ms after the last counted handoff, divided by the \
         handoffs; each new process's start-up read counts, its list and watch are shown apart. {}\n\n\
         | waiters | build | handoffs | median ms | p90 ms | p99 ms | max ms | requests per handoff (without list, watch) | by verb and code | list, watch per handoff | overlaps |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---|---|---:|\n",
        TAIL.as_millis(),
        ctx.target
            .cluster()
            .map(|c| c.describe_counts())
            .unwrap_or_else(|| "Counts are the test API server's, exact.".into()),
    );
    for (n, bin, o) in &results {
        let s = Stats::of(&o.handoffs);
        let (total, by_code, watching) = match o.window.per(o.handoffs.len() as f64) {
            Ok(per) => (
                format!("{}{}", o.window.approx(), fmt_per(total_without_watching(&per))),
                by_verb_code_without_watching(&per, 1.0),
                by_verb_code_watching(&per, 1.0),
            ),
            Err(_) => ("skipped".into(), "skipped (see above)".into(), String::new()),
        };
        writeln!(
            out,
            "| {n}{} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {total} | {by_code} | {watching} | {} |",
            if o.replaced { "" } else { ", draining" },
            bin.label,
            s.n,
            s.median,
            s.p90,
            s.p99,
            s.max,
            o.overlaps
        )
        .unwrap();
    }
    writeln!(out, "\nStart-up (not in the table): N processes started together and began to wait.\n").unwrap();
    for (n, bin, o) in &results {
        let startup = match &o.startup.counts {
            Ok(counts) => format!("{}{}", o.startup.approx(), crate::kube::by_verb_code(counts, 1.0)),
            Err(_) => "skipped".into(),
        };
        let conflicts = match o.conflicts {
            Some((first, rest)) => format!(
                " Races lost (409): {first} in the first handoff, {:.2} per handoff in the other {}.",
                rest as f64 / (o.handoffs.len() - 1).max(1) as f64,
                o.handoffs.len() - 1
            ),
            None => String::new(),
        };
        writeln!(
            out,
            "- {n} waiters{} [{}]: all waiting after {:.2} s; requests: {startup}. Replacements started in the window: {}.{conflicts}",
            if o.replaced { "" } else { ", draining" },
            bin.label,
            o.startup_secs, o.replacements
        )
        .unwrap();
    }

    // The figures.
    let find = |n: usize, replaced: bool, bin: &Bin| {
        results.iter().find(|(m, b, o)| *m == n && o.replaced == replaced && b.label == bin.label).map(|(_, _, o)| o)
    };
    for (n, replaced) in sizes.iter().map(|&n| (n, true)).chain(draining.iter().map(|&n| (n, false))) {
        let draining = if replaced { "" } else { ", draining" };
        let find = |n: usize, bin: &Bin| find(n, replaced, bin);
        let latency = |bin: &Bin| {
            find(n, bin).map(|o| {
                let s = Stats::of(&o.handoffs);
                format!("{:.1} / {:.1} / {:.1} ms", s.median, s.p90, s.p99)
            })
        };
        let target_latency = match (n, replaced) {
            (1, _) => "≤ 12 ms median, p99 ≤ 40 ms",
            (100, true) => "≤ 20 ms median",
            _ => "–",
        };
        ctx.summarize(
            format!("handoff, {n} waiter{}{draining}: median / p90 / p99 ({target})", if n == 1 { "" } else { "s" }),
            latency(&ctx.bin).unwrap(),
            ctx.baseline.as_ref().and_then(latency),
            target_latency,
        );
        let requests = |bin: &Bin| {
            find(n, bin).map(|o| match o.window.per(o.handoffs.len() as f64) {
                Ok(per) => format!(
                    "{}{} ({})",
                    o.window.approx(),
                    fmt_per(total_without_watching(&per)),
                    by_verb_code_without_watching(&per, 1.0)
                ),
                Err(_) => "skipped".into(),
            })
        };
        ctx.summarize(
            format!(
                "API requests per handoff, {n} waiter{}{draining}, all together, without list/watch",
                if n == 1 { "" } else { "s" }
            ),
            requests(&ctx.bin).unwrap(),
            ctx.baseline.as_ref().and_then(requests),
            if n == 100 && replaced { "≤ 4; no GET on the event path" } else { "–" },
        );
        let lost = |bin: &Bin| {
            find(n, bin).and_then(|o| {
                let (first, rest) = o.conflicts?;
                Some(format!("{first} / {:.2}", rest as f64 / (o.handoffs.len() - 1).max(1) as f64))
            })
        };
        if n > 1
            && let Some(current) = lost(&ctx.bin)
        {
            ctx.summarize(
                format!("races lost (409), {n} waiters{draining}: in the first handoff / per handoff after it"),
                current,
                ctx.baseline.as_ref().and_then(lost),
                "–",
            );
        }
    }
    out
}

fn run(ctx: &Ctx, bin: &Bin, waiters: usize, handoffs: usize, replace: bool, tag: &str) -> Outcome {
    let env = KubeEnv::start(ctx, tag);
    let name = env.lease("bench-waiters");
    let log = ctx.dir.join(format!("stamps-{tag}"));
    let go = ctx.dir.join(format!("go-{tag}"));
    let ready = ctx.dir.join(format!("ready-{tag}"));
    mkfifo(&go);
    let holder_script = format!(
        "echo ready > {ready}; read x < {go}; echo end $EPOCHREALTIME >> {log}",
        ready = ready.display(),
        go = go.display(),
        log = log.display()
    );
    let script =
        format!("echo start $EPOCHREALTIME >> {log}; {WORK}; echo end $EPOCHREALTIME >> {log}", log = log.display());
    let contender = |i: usize| {
        Proc::spawn(
            ctx,
            ctx.mpsync_bin(bin, Backend::Kube(&env), &["lock", &name, "-v", "--", "bash", "-c", &script]),
            &format!("{tag}-{i}"),
        )
    };

    let mut holder = Proc::spawn(
        ctx,
        ctx.mpsync_bin(bin, Backend::Kube(&env), &["lock", &name, "--", "bash", "-c", &holder_script]),
        &format!("{tag}-holder"),
    );
    wait_until("the holder's child to start", || ready.exists(), &mut [&mut holder]);

    // N waiters start together and begin to wait.
    let startup_window = env.open_window();
    let started = Instant::now();
    let mut procs: Vec<Proc> = (0..waiters).map(contender).collect();
    let deadline = Instant::now() + PATIENCE * 2;
    while !(procs.iter().all(Proc::says_waiting) && env.watching(waiters)) {
        for proc in procs.iter_mut().chain(std::iter::once(&mut holder)) {
            assert!(!proc.exited(), "a process exited before all were waiting: {:?}\n{}", proc.status, proc.stderr());
        }
        assert!(Instant::now() < deadline, "timed out waiting for {waiters} waiters to wait");
        std::thread::sleep(Duration::from_millis(10));
    }
    env.settle_watches();
    let startup_secs = started.elapsed().as_secs_f64();
    let startup = startup_window.close();

    // Go: the holder's child exits, and every process that had its turn is replaced (unless draining).
    procs.push(holder);
    let window = env.open_window();
    let (window_instant, window_epoch) = (Instant::now(), epoch_micros());
    release_fifo(&go);
    let mut next = waiters;
    let mut replacements = 0;
    let mut enough: Option<Instant> = None;
    let deadline = Instant::now() + PATIENCE + Duration::from_secs(2) * handoffs as u32;
    loop {
        for proc in procs.iter_mut() {
            if proc.exited() {
                assert_eq!(proc.code(), Some(0), "a contender failed:\n{}", proc.stderr());
            }
            if replace && proc.exited() {
                *proc = contender(next);
                next += 1;
                replacements += 1;
            }
        }
        if enough.is_none() && read_stamps(&log).iter().filter(|(word, _)| word == "start").count() >= handoffs {
            enough = Some(Instant::now());
        }
        if enough.is_some_and(|at| at.elapsed() >= TAIL) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{handoffs} handoffs among {waiters} waiters took too long (see {})",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let window = window.close();
    let closed_at = Instant::now();

    // Stop everyone: waiters stop waiting, the holder's child is stopped (without its "end" stamp) and
    // the lease released. Stamps from here on are not checked.
    let stopped_at = epoch_micros();
    for proc in &procs {
        proc.signal(Signal::SIGTERM);
    }
    for proc in &mut procs {
        if proc.wait_for(PATIENCE).is_none() {
            panic!("a contender did not stop on SIGTERM:\n{}", proc.stderr());
        }
    }

    let mut stamps = read_stamps(&log);
    stamps.retain(|(_, at)| *at < stopped_at);
    stamps.sort_by_key(|(_, at)| *at);
    let overlaps = stamps.windows(2).filter(|pair| pair[0].0 == pair[1].0).count();
    if overlaps > 0 {
        eprintln!("  OVERLAP: two children at once in {} (kept)", log.display());
        let _ = std::fs::copy(&log, std::env::temp_dir().join(format!("mpsync-bench-overlap-{tag}-{}", ctx.marker)));
    }
    let handoff_ms: Vec<f64> = stamps
        .windows(2)
        .filter(|pair| pair[0].0 == "end" && pair[1].0 == "start")
        .map(|pair| (pair[1].1 - pair[0].1) as f64 / 1e3)
        .take(handoffs)
        .collect();
    assert_eq!(handoff_ms.len(), handoffs, "fewer handoffs than counted in {}", log.display());
    // The first handoff lasts until the first waiter's child ends (the second release).
    let second_end = stamps.iter().filter(|(word, _)| word == "end").nth(1).map(|(_, at)| *at);
    let conflicts = env.server.as_ref().zip(second_end).map(|(server, second_end)| {
        let boundary = window_instant + Duration::from_micros((second_end - window_epoch).max(0) as u64);
        let lost: Vec<Instant> = server
            .requests()
            .into_iter()
            .filter(|r| r.verb == "update" && r.status == 409 && r.at >= window_instant && r.at <= closed_at)
            .map(|r| r.at)
            .collect();
        let first = lost.iter().filter(|at| **at < boundary).count();
        (first, lost.len() - first)
    });
    Outcome {
        handoffs: handoff_ms,
        window,
        startup,
        startup_secs,
        replaced: replace,
        replacements,
        overlaps,
        conflicts,
    }
}
