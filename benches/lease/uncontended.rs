//! Section 1: An uncontended run: `mpsync lock NAME -- true` on a free lease, `mpsync status`, and baselines
//! (`true`, `flock(1)`, `mpsync --version`, the file backend) in the same rounds.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::apiserver::{ClientKey, KubeconfigOptions, Trust};
use crate::ctx::{Backend, Bin, Ctx, PATIENCE, Stats, command_line, epoch_micros, parse_micro_time, wait_with_timeout};
use crate::kube::{KubeEnv, by_verb_code};

type Make<'a> = Box<dyn Fn() -> Command + 'a>;

/// A place, its lease, and a kubeconfig for it whose user has a client certificate.
type Certified<'a> = (&'a KubeEnv<'a>, &'a String, PathBuf);

struct Variant<'a> {
    label: String,
    make: Make<'a>,
}

pub fn uncontended(ctx: &Ctx) -> String {
    let n = ctx.count(100, 20);
    eprintln!("uncontended: {n} runs per variant");
    let target = ctx.target.name();
    // One place per binary and command, so that on the test server each one's requests are its own.
    let envs: Vec<(&Bin, KubeEnv, KubeEnv)> = ctx
        .bins()
        .into_iter()
        .map(|bin| {
            (
                bin,
                KubeEnv::start(ctx, &format!("uncontended-{}", bin.label)),
                KubeEnv::start(ctx, &format!("uncontended-status-{}", bin.label)),
            )
        })
        .collect();
    let names: Vec<(String, String)> = envs
        .iter()
        .map(|(_, lock, status)| (lock.lease("bench-uncontended"), status.lease("bench-uncontended")))
        .collect();
    // `status` with a kubeconfig that says `insecure-skip-tls-verify` (and names no CA): issue 14 found
    // that it loads the whole system trust store anyway. Only on the test server, which can write one.
    let insecure: Vec<(&Bin, &KubeEnv, &String, PathBuf)> = envs
        .iter()
        .zip(&names)
        .filter_map(|((bin, _, status_env), (_, status_name))| {
            let server = status_env.server.as_ref().filter(|s| s.is_tls() && status_env.front.is_none())?;
            let options = KubeconfigOptions::new(&status_env.namespace).trust(Trust::InsecureSkipTlsVerify);
            let path = ctx.dir.join(format!("kubeconfig-insecure-{}", bin.label));
            fs::write(&path, server.kubeconfig_yaml_with(&options)).unwrap();
            Some((*bin, status_env, status_name, path))
        })
        .collect();
    // `lock` and `status` with a kubeconfig whose user is an RSA client certificate, as kubeadm, kind and
    // minikube write theirs: the key is parsed at start and signs every handshake (the test server asks
    // for a certificate, as kube-apiserver does). Only on the test server, which can write one.
    let client_certificate: Vec<(&Bin, [Certified; 2])> = envs
        .iter()
        .zip(&names)
        .filter_map(|((bin, lock_env, status_env), (lock_name, status_name))| {
            let kubeconfig = |env: &KubeEnv, what: &str| {
                let server = env.server.as_ref().filter(|s| s.is_tls() && env.front.is_none())?;
                let options = KubeconfigOptions::new(&env.namespace).client_certificate(ClientKey::Rsa);
                let path = ctx.dir.join(format!("kubeconfig-client-rsa-{what}-{}", bin.label));
                fs::write(&path, server.kubeconfig_yaml_with(&options)).unwrap();
                Some(path)
            };
            let status = (status_env, status_name, kubeconfig(status_env, "status")?);
            Some((*bin, [status, (lock_env, lock_name, kubeconfig(lock_env, "lock")?)]))
        })
        .collect();
    // `lock` with a kubeconfig whose user is an exec credential plugin that answers in 50 ms (a cloud CLI
    // with its token cached; `aws eks get-token` takes several times that): kube ran it twice, mpsync runs
    // it once. Only on the test server, which takes the plugin's made-up token.
    let exec_plugin: Vec<(&Bin, &KubeEnv, &String, PathBuf)> = envs
        .iter()
        .zip(&names)
        .filter_map(|((bin, lock_env, _), (lock_name, _))| {
            let server = lock_env.server.as_ref().filter(|s| s.is_tls() && lock_env.front.is_none())?;
            let plugin = ctx.dir.join(format!("exec-plugin-{}.sh", bin.label));
            fs::write(
                &plugin,
                "#!/bin/sh
sleep 0.05
echo '{\"apiVersion\":\"client.authentication.k8s.io/v1\",\
                 \"kind\":\"ExecCredential\",\"status\":{\"token\":\"bench\"}}'\n",
            )
            .unwrap();
            fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            let exec = format!(
                "  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: {}\n      \
                 interactiveMode: Never\n",
                plugin.display()
            );
            let yaml = server.kubeconfig_yaml(&lock_env.namespace).replace("  user: {}\n", &exec);
            let path = ctx.dir.join(format!("kubeconfig-exec-{}", bin.label));
            fs::write(&path, yaml).unwrap();
            Some((*bin, lock_env, lock_name, path))
        })
        .collect();
    // The library as a program links it: the `guarded_job` example with no steps (start, read, acquire,
    // release, exit), on the test server. Its client is mpsync's own (`mpsync::KubeClientBuilder`, the
    // CLI's stack) since stop 30; in stop 29 the examples' own with TCP_NODELAY; kube's own before: a
    // baseline from before stop 29 shows the difference.
    let library: Vec<(&Bin, PathBuf, &KubeEnv, String)> = if ctx.target.cluster().is_none() {
        envs.iter()
            .filter_map(|(bin, lock_env, _)| {
                let example = ctx.example(bin, "guarded_job")?;
                Some((*bin, example, lock_env, lock_env.lease("bench-library")))
            })
            .collect()
    } else {
        Vec::new()
    };
    let ledger = ctx.dir.join("ledger-uncontended");
    let file = ctx.dir.join("locks-uncontended");
    let shm_file = ctx.shm.as_ref().map(|shm| shm.join("locks-uncontended"));
    let flock_file = ctx.dir.join("flock-uncontended");
    let name = "bench-uncontended";

    let mut variants: Vec<Variant> = vec![
        Variant {
            label: "`true` (process spawn floor)".into(),
            make: Box::new(|| ctx.command("true", &[] as &[&str])),
        },
        Variant {
            label: "`flock FILE true` (util-linux flock(1))".into(),
            make: Box::new(|| ctx.command("flock", &[flock_file.as_os_str(), OsStr::new("true")])),
        },
    ];
    for bin in ctx.bins() {
        let file = &file;
        variants.push(Variant {
            label: format!("`mpsync --version` (start-up floor) [{}]", bin.label),
            make: Box::new(move || ctx.mpsync_bin(bin, Backend::File(file), &["--version"])),
        });
    }
    variants.push(Variant {
        label: "`mpsync lock --backend file -- true`".into(),
        make: Box::new(|| ctx.mpsync(Backend::File(&file), &["lock", name, "--", "true"])),
    });
    if let Some(shm_file) = &shm_file {
        variants.push(Variant {
            label: "`mpsync lock --backend file -- true`, lock dir on tmpfs".into(),
            make: Box::new(move || ctx.mpsync(Backend::File(shm_file), &["lock", name, "--", "true"])),
        });
    }
    // Where the kube rows start: the first of each (status, lock) pair per binary.
    let kube_rows = variants.len();
    for ((bin, lock_env, status_env), (lock_name, status_name)) in envs.iter().zip(&names) {
        variants.push(Variant {
            label: format!("`mpsync status` ({target}) [{}]", bin.label),
            make: Box::new(move || ctx.mpsync_bin(bin, Backend::Kube(status_env), &["status", status_name])),
        });
        variants.push(Variant {
            label: format!("`mpsync lock -- true` ({target}) [{}]", bin.label),
            make: Box::new(move || ctx.mpsync_bin(bin, Backend::Kube(lock_env), &["lock", lock_name, "--", "true"])),
        });
    }
    for (bin, env, name, path) in &insecure {
        variants.push(Variant {
            label: format!("`mpsync status`, kubeconfig with `insecure-skip-tls-verify` [{}]", bin.label),
            make: Box::new(move || {
                let mut command = ctx.mpsync_bin(bin, Backend::Kube(env), &["status", name]);
                command.env("MPSYNC_KUBECONFIG", path);
                command
            }),
        });
    }
    for (bin, runs) in &client_certificate {
        for ((env, name, path), lock) in runs.iter().zip([false, true]) {
            let command = if lock { "lock -- true" } else { "status" };
            variants.push(Variant {
                label: format!("`mpsync {command}`, kubeconfig with an RSA client certificate [{}]", bin.label),
                make: Box::new(move || {
                    let args: &[&str] = if lock { &["lock", name, "--", "true"] } else { &["status", name] };
                    let mut command = ctx.mpsync_bin(bin, Backend::Kube(env), args);
                    command.env("MPSYNC_KUBECONFIG", path);
                    command
                }),
            });
        }
    }
    for (bin, env, name, path) in &exec_plugin {
        variants.push(Variant {
            label: format!("`mpsync lock -- true`, an exec plugin that answers in 50 ms [{}]", bin.label),
            make: Box::new(move || {
                let mut command = ctx.mpsync_bin(bin, Backend::Kube(env), &["lock", name, "--", "true"]);
                command.env("MPSYNC_KUBECONFIG", path);
                command
            }),
        });
    }
    let library_rows = variants.len();
    for (bin, example, env, lease) in &library {
        let ledger = &ledger;
        variants.push(Variant {
            label: format!("library: the `guarded_job` example, no steps ({target}) [{}]", bin.label),
            make: Box::new(move || {
                let mut command = ctx
                    .command(example, &[env.kubeconfig.as_os_str(), lease.as_ref(), ledger.as_os_str(), "0".as_ref()]);
                command.stdout(Stdio::null());
                command
            }),
        });
    }
    // `status` needs the lease to exist: one `lock` on its place first.
    for ((bin, _, status_env), (_, status_name)) in envs.iter().zip(&names) {
        ctx.run_timed(&mut ctx.mpsync_bin(bin, Backend::Kube(status_env), &["lock", status_name, "--", "true"]));
    }
    // Warm up (page cache, TLS code paths, the lease records exist and are free from here on).
    for variant in &variants {
        for _ in 0..3 {
            ctx.run_timed(&mut (variant.make)());
        }
    }
    let mut samples = vec![Vec::new(); variants.len()];
    let mut order: Vec<usize> = (0..variants.len()).collect();
    for round in 0..n {
        ctx.shuffle(&mut order);
        for &v in &order {
            let ms = ctx.run_timed(&mut (variants[v].make)());
            if ms.is_finite() {
                samples[v].push(ms);
            }
        }
        if (round + 1) % 20 == 0 {
            eprintln!("  round {}/{n}", round + 1);
        }
    }
    let base = Stats::of(&samples[0]).median;
    let mut out = format!(
        "\n## 1. Uncontended run (wall time from spawn to exit)\n\n\
         Each variant runs in the same rounds, in a random order per round; the lease exists and is free. \
         `[current]` is this build{}. The file backend's lock dir is on the root file system (/tmp) unless it \
         says tmpfs (/dev/shm).\n\n\
         | command | N | median ms | p90 ms | min ms | median − `true` ms |\n|---|---:|---:|---:|---:|---:|\n",
        ctx.baseline.as_ref().map(|b| format!(", `[{}]` the baseline build", b.label)).unwrap_or_default()
    );
    for (variant, s) in variants.iter().zip(&samples) {
        let s = Stats::of(s);
        writeln!(
            out,
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:+.2} |",
            variant.label,
            s.n,
            s.median,
            s.p90,
            s.min,
            s.median - base
        )
        .unwrap();
    }
    // The figures: this build against the baseline.
    let median = |row: usize| Stats::of(&samples[row]).median;
    let baseline_row =
        |offset: usize| ctx.baseline.as_ref().map(|_| format!("{:.1} ms", median(kube_rows + 2 + offset)));
    ctx.summarize(
        format!("uncontended `lock NAME -- true`, median ({target})"),
        format!("{:.1} ms", median(kube_rows + 1)),
        baseline_row(1),
        "≤ 12 ms",
    );
    ctx.summarize(
        format!("`mpsync status NAME`, median ({target})"),
        format!("{:.1} ms", median(kube_rows)),
        baseline_row(0),
        "≤ 8 ms",
    );

    if !insecure.is_empty() {
        let row = kube_rows + 2 * envs.len();
        ctx.summarize(
            format!("`mpsync status NAME`, kubeconfig with `insecure-skip-tls-verify`, median ({target})"),
            format!("{:.1} ms", median(row)),
            ctx.baseline.as_ref().map(|_| format!("{:.1} ms", median(row + 1))),
            "no system trust store: as with CA data",
        );
    }

    if !library.is_empty() {
        ctx.summarize(
            format!("library: `guarded_job` example, no steps, median ({target})"),
            format!("{:.1} ms", median(library_rows)),
            (library.len() > 1).then(|| format!("{:.1} ms", median(library_rows + 1))),
            "report (a program that links the library)",
        );
    }

    // Requests per run, counted over a few more runs of each alone.
    let k = ctx.count(10, 5);
    writeln!(
        out,
        "\nAPI requests per run ({k} more runs of each, alone).{}\n",
        ctx.target.cluster().map(|c| format!(" {}", c.describe_counts())).unwrap_or_default()
    )
    .unwrap();
    for ((bin, lock_env, status_env), (lock_name, status_name)) in envs.iter().zip(&names) {
        for (command, env, args) in [
            ("lock NAME -- true", lock_env, vec!["lock", lock_name.as_str(), "--", "true"]),
            ("status NAME", status_env, vec!["status", status_name.as_str()]),
        ] {
            let window = env.open_window();
            for _ in 0..k {
                ctx.run_timed(&mut ctx.mpsync_bin(bin, Backend::Kube(env), &args));
            }
            let counted = window.close();
            let text = match counted.per(k as f64) {
                Ok(per) => format!("{}{}", counted.approx(), by_verb_code(&per, 1.0)),
                Err(_) => "skipped".into(),
            };
            writeln!(out, "- `mpsync {command}` [{}]: {text}", bin.label).unwrap();
        }
    }

    // Where the time goes: the same runs again with `-vv`, split at mpsync's own log lines.
    let phase_n = (n / 3).max(10);
    let (_, lock_env, _) = &envs[0];
    let lock_name = &names[0].0;
    let mut phase_rows = vec![(
        "`mpsync lock --backend file -- true`".to_string(),
        phases(ctx, phase_n, || ctx.mpsync(Backend::File(&file), &["lock", name, "-vv", "--", "true"])),
    )];
    if let Some(shm_file) = &shm_file {
        phase_rows.push((
            "`mpsync lock --backend file -- true`, tmpfs".to_string(),
            phases(ctx, phase_n, || ctx.mpsync(Backend::File(shm_file), &["lock", name, "-vv", "--", "true"])),
        ));
    }
    phase_rows.push((
        format!("`mpsync lock -- true` ({target})"),
        phases(ctx, phase_n, || ctx.mpsync(Backend::Kube(lock_env), &["lock", lock_name, "-vv", "--", "true"])),
    ));
    writeln!(
        out,
        "\nWhere the time goes (this build): medians in ms of {phase_n} more runs each with `-vv`, cut at mpsync's \
         log lines (wall-clock timestamps; spawn and exit seen by the bench).\n\n\
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
         backend's watch thread closes one as mpsync exits, when it had to wait.",
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
        .filter_map(|_| {
            let mut command = make();
            command.stderr(fs::File::create(&stderr).unwrap());
            let spawned = epoch_micros();
            let mut child = command.spawn().expect("spawn");
            let Some(status) = wait_with_timeout(&mut child, PATIENCE) else {
                let what = format!("`{}` did not exit within {PATIENCE:?}", command_line(&command));
                eprintln!("HANG: {what}");
                ctx.hangs.borrow_mut().push(format!("{what}; stderr:\n{}", fs::read_to_string(&stderr).unwrap()));
                let _ = child.kill();
                let _ = child.wait();
                return None;
            };
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
            Some([
                ms(spawned, at[0]),
                ms(at[0], at[1]),
                ms(at[1], at[2]),
                ms(at[3], at[4]),
                ms(at[4], exited),
                ms(spawned, exited),
            ])
        })
        .collect()
}
