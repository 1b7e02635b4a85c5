//! Section 2: Handoff latency, one holder and one waiter: mpsync on the API (watch, and polling where watching
//! is forbidden) and on the file backend, against flock(1).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::ctx::{Backend, Ctx, PATIENCE, Proc, SLOW, Stats, mkfifo, read_stamps, release_fifo, wait_until};
use crate::kube::KubeEnv;

struct HandoffVariant<'a> {
    label: String,
    /// The holder and the waiter, given the child's bash script.
    holder: Box<dyn Fn(&str) -> std::process::Command + 'a>,
    waiter: Box<dyn Fn(&str) -> std::process::Command + 'a>,
    /// Whether the waiter is now waiting (has read the lease and watches it).
    waiting: Box<dyn Fn(&mut Proc) -> bool + 'a>,
    /// How long the waiter waits before the holder's child exits: uniform in [from, from + spread) ms. A
    /// poller's spread covers its whole period, so that the release falls anywhere in its cycle.
    settle: (u64, u64),
}

/// An event-driven waiter is settled after a moment; the spread only varies the timing a little.
const WATCH_SETTLE: (u64, u64) = (150, 300);

pub fn handoff(ctx: &Ctx) -> String {
    let n = ctx.count(30, 5);
    eprintln!("handoff: {n} handoffs per variant");
    let target = ctx.target.name();
    let kube = KubeEnv::start(ctx, "handoff");
    let kube_name = kube.lease("bench-handoff");
    // A second test server on which watching is forbidden (403): mpsync falls back to polling. A real
    // cluster cannot be told to forbid it.
    let polled = ctx.target.cluster().is_none().then(|| KubeEnv::start(ctx, "handoff-poll"));
    if let Some(server) = polled.as_ref().and_then(|p| p.server.as_ref()) {
        server.forbid("watch");
    }
    let file = ctx.dir.join("locks-handoff");
    let shm_file = ctx.shm.as_ref().map(|shm| shm.join("locks-handoff"));
    let flock_file = ctx.dir.join("flock-handoff");
    let name = "bench-handoff";

    let mut variants = vec![
        mpsync_variant(
            ctx,
            format!("mpsync, {target}, watch (`--retry-period 30s`)"),
            Backend::Kube(&kube),
            &kube_name,
            SLOW,
            true,
        ),
        mpsync_variant(
            ctx,
            "mpsync, file backend, inotify (`--retry-period 30s`)".into(),
            Backend::File(&file),
            name,
            SLOW,
            true,
        ),
    ];
    if let Some(shm_file) = &shm_file {
        variants.push(mpsync_variant(
            ctx,
            "mpsync, file backend on tmpfs, inotify (`--retry-period 30s`)".into(),
            Backend::File(shm_file),
            name,
            SLOW,
            true,
        ));
    }
    let flock =
        |script: &str| ctx.command("flock", &[flock_file.as_os_str(), "bash".as_ref(), "-c".as_ref(), script.as_ref()]);
    variants.push(HandoffVariant {
        label: "flock(1) on one file (the kernel wakes the waiter)".into(),
        holder: Box::new(flock),
        waiter: Box::new(flock),
        // flock(1) sleeps only in flock(2).
        waiting: Box::new(|waiter: &mut Proc| {
            crate::ctx::proc_stat(waiter.pid()).is_some_and(|s| s.comm == "flock" && s.state == 'S')
        }),
        settle: WATCH_SETTLE,
    });
    if let Some(polled) = &polled {
        variants.push(HandoffVariant {
            // Its watch task lists again every jittered retry period (1–2 s).
            settle: (150, 2000),
            ..mpsync_variant(
                ctx,
                "mpsync, test API server, watch forbidden: polling (default `--retry-period 2s`)".into(),
                Backend::Kube(polled),
                name,
                &[],
                false,
            )
        });
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
        "\n## 2. Handoff latency, one waiter (holder's child exits → waiter's child starts)\n\n\
         This build. Both children stamp bash's `$EPOCHREALTIME` (same host, same clock, no fork): the holder's \
         child as its last act, the waiter's child as its first. The waiter has been waiting for 150–450 ms when \
         the holder's child is told to exit (the poller: 150–2150 ms, so that the release falls anywhere in its \
         cycle). Variants interleaved, random order per round.\n\n\
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
    if polled.is_none() {
        out.push_str("\nThe polling variant needs the test API server (it forbids watching): not run on a cluster.\n");
    }
    out
}

fn mpsync_variant<'a>(
    ctx: &'a Ctx,
    label: String,
    backend: Backend<'a>,
    name: &'a str,
    timings: &'static [&'static str],
    watches: bool,
) -> HandoffVariant<'a> {
    HandoffVariant {
        label,
        holder: Box::new(move |script| {
            ctx.mpsync(backend, &[&["lock", name], timings, &["--", "bash", "-c", script]].concat())
        }),
        waiter: Box::new(move |script| {
            ctx.mpsync(backend, &[&["lock", name, "-v"], timings, &["--", "bash", "-c", script]].concat())
        }),
        // Only the waiter watches: a holder that never waited opens no watch.
        waiting: Box::new(move |waiter: &mut Proc| {
            waiter.says_waiting()
                && match backend {
                    Backend::Kube(kube) => !watches || kube.watching(1),
                    Backend::File(_) => true,
                }
        }),
        settle: WATCH_SETTLE,
    }
}

fn one_handoff(ctx: &Ctx, variant: &HandoffVariant<'_>, tag: &str) -> f64 {
    let go = ctx.dir.join(format!("go-{tag}"));
    let ready = ctx.dir.join(format!("ready-{tag}"));
    let log = ctx.dir.join(format!("log-{tag}"));
    mkfifo(&go);
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
    let deadline = Instant::now() + PATIENCE;
    while !(variant.waiting)(&mut waiter) {
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
