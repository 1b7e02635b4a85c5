//! Section 4: Takeover after a crash: the holder's mpsync is SIGKILLed; how long until the waiter's child runs.

use std::fmt::Write as _;
use std::fs;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::ctx::{
    Backend, Ctx, FAST, PATIENCE, Proc, Stats, alive, epoch_micros, parse_micro_time, read_pid, read_stamps, wait_until,
};
use crate::kube::KubeEnv;

pub fn takeover(ctx: &Ctx) -> String {
    let n = ctx.count(5, 2);
    eprintln!("takeover: {n} crashes per backend (about 5 s each)");
    let target = ctx.target.name();
    let kube = KubeEnv::start(ctx, "takeover");
    let kube_name = kube.lease("bench-takeover");
    let file = ctx.dir.join("locks-takeover");
    let backends =
        [(target, Backend::Kube(&kube), kube_name.as_str()), ("file backend", Backend::File(&file), "bench-takeover")];

    // Per backend: kill → start, last renewal → start, kill → holder's child dead.
    let mut samples = vec![[Vec::new(), Vec::new(), Vec::new()]; backends.len()];
    let mut order: Vec<usize> = (0..backends.len()).collect();
    for round in 0..n {
        ctx.shuffle(&mut order);
        for &b in &order {
            let (label, backend, name) = backends[b];
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
                    waiter.says_waiting()
                        && match backend {
                            Backend::Kube(kube) => kube.watching(1),
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
        "\n## 4. Takeover after a crash (SIGKILL of the holder's mpsync)\n\n\
         This build. `--lease-duration 4s --renew-deadline 2s --retry-period 500ms` on both. The waiter's child \
         stamps `$EPOCHREALTIME`; the kill time is the bench's clock just before kill(2); the last renewal is the \
         `renewTime` of the record as stored right after the holder died (written by the holder from the same \
         clock). The holder's child is `sleep`, which its guard must kill.\n\n\
         | backend | measure | N | median ms | p90 ms | min ms | max ms |\n|---|---|---:|---:|---:|---:|---:|\n",
    );
    let measures =
        ["kill → waiter's child starts", "last renewal → waiter's child starts", "kill → holder's child dead (guard)"];
    for ((label, _, _), per) in backends.iter().zip(&samples) {
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
    let renewal = Stats::of(&samples[0][1]);
    ctx.summarize(
        format!("crash takeover, last renewal → waiter's child, median / max ({target}, 4 s lease)"),
        format!("{:.0} / {:.0} ms", renewal.median, renewal.max),
        None,
        "≤ lease duration + 200 ms",
    );
    out
}

fn last_renew_time(backend: Backend<'_>, name: &str) -> i64 {
    let lease = match backend {
        Backend::Kube(kube) => kube.get_lease(name).expect("the lease exists"),
        Backend::File(dir) => {
            serde_json::from_str(&fs::read_to_string(dir.join(format!("{name}.json"))).expect("record")).expect("json")
        }
    };
    let renew = lease["spec"]["renewTime"].as_str().expect("renewTime");
    parse_micro_time(renew).unwrap_or_else(|| panic!("cannot parse renewTime {renew:?}"))
}
