//! The benchmark of mpsync as its users meet it: the real release binary, run as separate processes,
//! against the test API server (HTTPS on 127.0.0.1, a fresh one per measurement) or any cluster, and
//! the file backend.
//!
//! ```sh
//! cargo bench --bench lease                                   # the full run, about 6-8 minutes here
//! MPSYNC_BENCH_N=0.2 cargo bench --bench lease                # a quick look (fewer repetitions, short windows)
//! MPSYNC_BENCH_ONLY=uncontended,waiters cargo bench --bench lease
//! MPSYNC_BENCH_BASELINE=f30009e cargo bench --bench lease     # and an older build, in the same run
//! MPSYNC_BENCH_KUBECONFIG=~/.kube/config MPSYNC_BENCH_NAMESPACE=bench cargo bench --bench lease
//! ```
//!
//! Sections (`MPSYNC_BENCH_ONLY` picks some): `uncontended`, `handoff`, `waiters`, `takeover`, `memory`
//! and `api` (which share a window), `connection`. BENCHMARKS.md describes every variable; the
//! report goes to stdout as Markdown (and into BENCHMARKS.md with `MPSYNC_BENCH_UPDATE=1`), progress
//! to stderr.
//!
//! The machine this runs on may be small and shared, so: every comparison is measured in the same run,
//! variants are interleaved in a fresh random order each round, and results are medians and p90s.
//!
//! The crate root is this file; its modules live in `benches/lease/` (named by `#[path]`, since a crate
//! root looks for modules beside itself, where cargo would take them for benches of their own).

#[path = "lease/baseline.rs"]
mod baseline;
#[path = "lease/connection.rs"]
mod connection;
#[path = "lease/ctx.rs"]
mod ctx;
#[path = "lease/handoff.rs"]
mod handoff;
#[path = "lease/kube.rs"]
mod kube;
#[path = "lease/load.rs"]
mod load;
#[path = "lease/takeover.rs"]
mod takeover;
#[path = "lease/tlsfront.rs"]
mod tlsfront;
#[path = "lease/uncontended.rs"]
mod uncontended;
#[path = "lease/waiters.rs"]
mod waiters;

#[allow(dead_code)]
#[path = "../tests/support/apiserver.rs"]
mod apiserver;

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use ctx::Ctx;

fn main() {
    // `cargo bench` passes `--bench`; nothing here takes arguments.
    kube::self_check();
    if let Some(path) = std::env::var_os("MPSYNC_BENCH_SERVE") {
        serve(Path::new(&path));
        return;
    }
    let ctx = Ctx::new();
    let idle = ctx::Idle::start(ctx::idle_processes());
    let processes = ctx::all_pids().len();
    let started = Instant::now();
    let mut sections = String::new();
    if ctx.wants("uncontended") {
        sections.push_str(&uncontended::uncontended(&ctx));
    }
    if ctx.wants("handoff") {
        sections.push_str(&handoff::handoff(&ctx));
    }
    if ctx.wants("waiters") {
        sections.push_str(&waiters::waiters(&ctx));
    }
    if ctx.wants("takeover") {
        sections.push_str(&takeover::takeover(&ctx));
    }
    if ctx.wants("api") || ctx.wants("memory") {
        sections.push_str(&load::api_and_memory(&ctx));
    }
    if ctx.wants("connection") {
        sections.push_str(&connection::connection(&ctx));
    }
    drop(idle);
    let leftovers = ctx.sweep();
    let mut report = machine(&ctx, processes);
    report.push_str(&summary(&ctx));
    let hangs = ctx.hangs.borrow();
    if !hangs.is_empty() {
        writeln!(
            report,
            "\n**{} mpsync process{} did not exit within 30 s** and {} killed (a liveness bug, or a machine too \
             loaded; each was left out of its figures):\n",
            hangs.len(),
            if hangs.len() == 1 { "" } else { "es" },
            if hangs.len() == 1 { "was" } else { "were" }
        )
        .unwrap();
        for hang in hangs.iter() {
            writeln!(report, "- {hang}").unwrap();
        }
    }
    report.push_str(&sections);
    writeln!(
        report,
        "\nTotal bench time {:.0} s. Processes left behind: {}.",
        started.elapsed().as_secs_f64(),
        if leftovers.is_empty() { "none".to_string() } else { format!("{leftovers:?} (killed)") }
    )
    .unwrap();
    println!("{report}");
    if std::env::var_os("MPSYNC_BENCH_UPDATE").is_some_and(|v| !v.is_empty() && v != "0") {
        if ctx::idle_processes() > 0 {
            eprintln!("BENCHMARKS.md not updated: its blocks are without MPSYNC_BENCH_PROCESSES");
        } else if kube::commit_delay().is_zero() || ctx.target.cluster().is_some() {
            update_benchmarks_md(&ctx, &report);
        } else {
            eprintln!("BENCHMARKS.md not updated: its blocks are without MPSYNC_BENCH_COMMIT_MS");
        }
    }
    assert!(leftovers.is_empty(), "processes were left behind: {leftovers:?}");
}

/// The figures issue 14 asks for, this build against the baseline, with the targets.
fn summary(ctx: &Ctx) -> String {
    let rows = ctx.summary.borrow();
    if rows.is_empty() {
        return String::new();
    }
    let baseline = ctx.baseline.as_ref().map(|b| b.label.as_str());
    let mut out = String::from("\n## Summary: the figures of issue 14\n\n");
    match baseline {
        Some(label) => {
            writeln!(out, "| figure | baseline [{label}] | this build [current] | target |\n|---|---:|---:|---|")
                .unwrap()
        }
        None => writeln!(out, "| figure | this build [current] | target |\n|---|---:|---|").unwrap(),
    }
    for row in rows.iter() {
        match baseline {
            Some(_) => writeln!(
                out,
                "| {} | {} | {} | {} |",
                row.figure,
                row.baseline.as_deref().unwrap_or("–"),
                row.current,
                row.target
            )
            .unwrap(),
            None => writeln!(out, "| {} | {} | {} |", row.figure, row.current, row.target).unwrap(),
        }
    }
    out
}

fn machine(ctx: &Ctx, processes: usize) -> String {
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
    let repo = env!("CARGO_MANIFEST_DIR");
    let commit = output("git", &["-C", repo, "describe", "--always", "--dirty"]);
    let target = match &ctx.target {
        kube::Target::TestServer { front: false } => {
            "the test API server (HTTPS, TLS 1.3, in the bench process; a fresh one per measurement)".to_string()
        }
        kube::Target::TestServer { front: true } => "the test API server over plain HTTP behind the bench's TLS front \
            (TLS 1.3 without session tickets, as kube-apiserver; `MPSYNC_BENCH_FRONT=1`)"
            .to_string(),
        kube::Target::Cluster(c) => {
            format!("cluster `{}`, namespace `{}` (`MPSYNC_BENCH_KUBECONFIG`)", c.server, c.namespace)
        }
    };
    let delay = kube::commit_delay();
    let target = match &ctx.target {
        kube::Target::TestServer { .. } if !delay.is_zero() => format!(
            "{target}; every write held {:.1} ms before it commits, standing in for etcd (`MPSYNC_BENCH_COMMIT_MS`)",
            delay.as_secs_f64() * 1000.0
        ),
        _ => target,
    };
    let mut out = format!(
        "# mpsync benchmark\n\n\
         | | |\n|---|---|\n\
         | date | {} |\n| CPUs (nproc) | {} |\n| CPU | {cpu} |\n| kernel | {} |\n| rustc | {} |\n\
         | load average at start | {} |\n| processes on the machine at start | {}{} |\n| API | {target} |\n\
         | this build [current] | `{}`, commit {commit} |\n",
        output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        output("rustc", &["--version"]),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        processes,
        match ctx::idle_processes() {
            0 => String::new(),
            n => format!(", {n} of them idle ones the bench added (`MPSYNC_BENCH_PROCESSES`)"),
        },
        ctx.bin.path.display(),
    );
    if let Some(baseline) = &ctx.baseline {
        writeln!(out, "| baseline [{}] | `{}` |", baseline.label, baseline.path.display()).unwrap();
    }
    writeln!(out, "| scale (`MPSYNC_BENCH_N`) | {} |", ctx.scale).unwrap();
    out
}

/// Replace the generated part of BENCHMARKS.md (between its markers for the test server or for a
/// cluster) with this report.
fn update_benchmarks_md(ctx: &Ctx, report: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
    let which = match ctx.target {
        kube::Target::Cluster(_) => "cluster",
        kube::Target::TestServer { front: true } => "front",
        kube::Target::TestServer { front: false } => "test-server",
    };
    let begin = format!("<!-- generated:{which} -->");
    let end = format!("<!-- /generated:{which} -->");
    let text = fs::read_to_string(&path).expect("BENCHMARKS.md");
    // The markers are lines of their own (the prose may quote them).
    let line = |marker: &str| text.find(&format!("\n{marker}\n")).map(|at| at + 1);
    let (Some(from), Some(to)) = (line(&begin), line(&end)) else {
        panic!("BENCHMARKS.md has no {begin} … {end} marker lines");
    };
    assert!(from < to, "BENCHMARKS.md: {begin} must come before {end}");
    // One heading level down: the report's `#` becomes `###` inside BENCHMARKS.md's section.
    let body: String = report
        .lines()
        .map(|line| if line.starts_with('#') { format!("##{line}\n") } else { format!("{line}\n") })
        .collect();
    let updated = format!("{}{begin}\n\n{}\n{}", &text[..from], body.trim_end(), &text[to..]);
    fs::write(&path, updated).expect("write BENCHMARKS.md");
    eprintln!("updated {} ({which})", path.display());
}

/// `MPSYNC_BENCH_SERVE=KUBECONFIG`: run a test API server and write its kubeconfig there, until killed
/// (with `MPSYNC_BENCH_FRONT=1`, a plain one behind the TLS front). For trying the bench's cluster mode
/// (`MPSYNC_BENCH_KUBECONFIG`) without a cluster, or mpsync by hand against either.
fn serve(kubeconfig: &Path) {
    let server;
    let _front;
    if std::env::var_os("MPSYNC_BENCH_FRONT").is_some_and(|v| !v.is_empty() && v != "0") {
        server = kube::test_server(apiserver::TestApiServer::start_plain());
        let front = tlsfront::TlsFront::start(server.addr());
        fs::write(kubeconfig, front.kubeconfig_yaml("default")).expect("write the kubeconfig");
        eprintln!("test API server at {} behind the TLS front at {}", server.url(), front.addr());
        _front = Some(front);
    } else {
        server = kube::test_server(apiserver::TestApiServer::start());
        fs::write(kubeconfig, server.kubeconfig_yaml("default")).expect("write the kubeconfig");
        eprintln!("test API server at {}", server.url());
        _front = None;
    }
    eprintln!("kubeconfig {}", kubeconfig.display());
    loop {
        std::thread::park();
    }
}
