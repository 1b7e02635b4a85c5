//! What every section needs: the run's context (binaries, scale, temporary directory, randomness, the
//! cluster), processes started with a scrubbed environment, waiting on them, statistics and times.

use std::cell::{Cell, RefCell};
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::kube::{KubeEnv, Target};

/// Every process the bench starts carries this variable (mpsync passes its environment on to the
/// child, and the guard is a fork of mpsync), so that the final sweep can find anything left behind.
pub const MARKER: &str = "LEASE_BENCH_RUN";

/// Generous limit for anything that should take well under a second.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The e2e tests' short timings: a crashed holder's lease is taken over after 4s.
pub const FAST: &[&str] = &["--lease-duration", "4s", "--renew-deadline", "2s", "--retry-period", "500ms"];
/// A retry period of 30s: a handoff within milliseconds can only be the watch's doing.
pub const SLOW: &[&str] = &["--lease-duration", "60s", "--renew-deadline", "40s", "--retry-period", "30s"];

/// Proxy variables: a child that inherits one may send its API requests through a proxy.
const PROXY_VARIABLES: &[&str] =
    &["HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "no_proxy", "all_proxy"];

/// One mpsync binary under test.
pub struct Bin {
    /// How the report names it: `current`, or the baseline's short commit.
    pub label: String,
    pub path: PathBuf,
    /// The `Cargo.toml` it was built from, when the bench built it: the library's examples are built from
    /// there too (see [`Ctx::example`]).
    pub manifest: Option<PathBuf>,
}

/// One row of the summary of issue 14's figures: this build, the baseline build, the target.
pub struct SummaryRow {
    pub figure: String,
    pub current: String,
    pub baseline: Option<String>,
    pub target: &'static str,
}

pub struct Ctx {
    pub dir: PathBuf,
    /// A directory on tmpfs (/dev/shm), where fsync costs nothing, as on the default
    /// `$XDG_RUNTIME_DIR`; None if there is none.
    pub shm: Option<PathBuf>,
    pub bin: Bin,
    /// An older build measured in the same run (`MPSYNC_BENCH_BASELINE` or `MPSYNC_BENCH_BASELINE_BIN`).
    pub baseline: Option<Bin>,
    pub marker: String,
    pub scale: f64,
    only: Option<Vec<String>>,
    rng: Cell<u64>,
    pub target: Target,
    pub summary: RefCell<Vec<SummaryRow>>,
    /// Processes that did not exit in time (see [`Ctx::run_timed`]).
    pub hangs: RefCell<Vec<String>>,
}

#[derive(Clone, Copy)]
pub enum Backend<'a> {
    Kube(&'a KubeEnv<'a>),
    File(&'a Path),
}

impl Ctx {
    pub fn new() -> Ctx {
        let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
        // Short and lowercase: it also goes into lease names on a real cluster.
        let marker = format!("{}-{:06x}", std::process::id(), seed & 0xff_ffff);
        let dir = std::env::temp_dir().join(format!("mpsync-bench-{marker}"));
        fs::create_dir_all(&dir).unwrap();
        let shm = Path::new("/dev/shm").join(format!("mpsync-bench-{marker}"));
        let shm = fs::create_dir(&shm).is_ok().then_some(shm);
        let given = std::env::var_os("MPSYNC_BENCH_BIN").filter(|p| !p.is_empty());
        let bin = Bin {
            label: "current".into(),
            manifest: given.is_none().then(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")),
            path: given.map_or_else(as_users_build_it, PathBuf::from),
        };
        let scale =
            std::env::var("MPSYNC_BENCH_N").ok().and_then(|s| s.parse().ok()).filter(|s: &f64| *s > 0.0).unwrap_or(1.0);
        let only =
            std::env::var("MPSYNC_BENCH_ONLY").ok().map(|s| s.split(',').map(|p| p.trim().to_string()).collect());
        let bash_ok =
            Command::new("bash").args(["-c", "[ -n \"$EPOCHREALTIME\" ]"]).status().is_ok_and(|s| s.success());
        assert!(bash_ok, "the bench needs bash 5 (for $EPOCHREALTIME)");
        let baseline = crate::baseline::find();
        let target = Target::from_env();
        Ctx {
            dir,
            shm,
            bin,
            baseline,
            marker,
            scale,
            only,
            rng: Cell::new(seed),
            target,
            summary: RefCell::new(Vec::new()),
            hangs: RefCell::new(Vec::new()),
        }
    }

    pub fn wants(&self, section: &str) -> bool {
        self.only.as_ref().is_none_or(|only| only.iter().any(|s| s == section))
    }

    pub fn count(&self, default: usize, min: usize) -> usize {
        ((default as f64 * self.scale).round() as usize).max(min)
    }

    /// The library's example `name` of the same tree as `bin`, built once (release profile, in a target dir
    /// of its own, so that the dev-dependencies' features do not reach the mpsync binary measured); None
    /// for a binary the bench did not build (`MPSYNC_BENCH_BIN`, `MPSYNC_BENCH_BASELINE_BIN`).
    pub fn example(&self, bin: &Bin, name: &str) -> Option<PathBuf> {
        let manifest = bin.manifest.as_ref()?;
        // target/release/mpsync → target
        let target = Path::new(env!("CARGO_BIN_EXE_mpsync")).parent().and_then(Path::parent).expect("the target dir");
        let target = target.join("bench-examples").join(&bin.label);
        eprintln!("example {name} [{}]: cargo build --release into {}", bin.label, target.display());
        let status = crate::baseline::build_release(manifest, &target, &["--example", name]);
        assert!(status.success(), "building the example {name} [{}]: {status}", bin.label);
        Some(target.join("release/examples").join(name))
    }

    /// The binaries to compare: this build, then the baseline if there is one.
    pub fn bins(&self) -> Vec<&Bin> {
        std::iter::once(&self.bin).chain(&self.baseline).collect()
    }

    pub fn summarize(
        &self,
        figure: impl Into<String>,
        current: String,
        baseline: Option<String>,
        target: &'static str,
    ) {
        self.summary.borrow_mut().push(SummaryRow { figure: figure.into(), current, baseline, target });
    }

    /// xorshift64*: enough to shuffle the order of variants.
    pub fn random(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn shuffle<T>(&self, order: &mut [T]) {
        for i in (1..order.len()).rev() {
            order.swap(i, (self.random() % (i as u64 + 1)) as usize);
        }
    }

    /// A command with nothing inherited that could point mpsync at a cluster, send it through a proxy
    /// or change its behaviour.
    pub fn command<S: AsRef<OsStr>>(&self, program: impl AsRef<OsStr>, args: &[S]) -> Command {
        let mut command = Command::new(program);
        command.args(args);
        scrub(&mut command);
        command
            .env("LC_ALL", "C")
            .env(MARKER, &self.marker)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    }

    /// This build of mpsync with `args`, pointed at `backend` by explicit variables.
    pub fn mpsync(&self, backend: Backend<'_>, args: &[&str]) -> Command {
        self.mpsync_bin(&self.bin, backend, args)
    }

    pub fn mpsync_bin(&self, bin: &Bin, backend: Backend<'_>, args: &[&str]) -> Command {
        let mut command = self.command(&bin.path, args);
        match backend {
            Backend::Kube(kube) => {
                command.env("MPSYNC_KUBECONFIG", &kube.kubeconfig).env("MPSYNC_NAMESPACE", &kube.namespace)
            }
            Backend::File(dir) => {
                command.env("MPSYNC_NAMESPACE", "default").env("MPSYNC_BACKEND", "file").env("MPSYNC_LOCK_DIR", dir)
            }
        };
        command
    }

    /// Find (and SIGKILL, by pid) any process this run started that is still there.
    pub fn sweep(&self) -> Vec<(i32, String)> {
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

/// Remove from a child's environment everything that could point it at a cluster (KUBECONFIG, the
/// in-cluster variables), send it through a proxy, or change mpsync's or kube-rs's behaviour.
pub fn scrub(command: &mut Command) {
    for name in ["KUBECONFIG", "POD_NAMESPACE", "POD_NAME"].iter().chain(PROXY_VARIABLES) {
        command.env_remove(name);
    }
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("MPSYNC_") || name.starts_with("KUBERNETES_SERVICE_") || name.starts_with("KUBE_RS_") {
            command.env_remove(&*name);
        }
    }
}

/// A running process with its stderr in a file. Dropping it SIGKILLs it (its guard then kills its
/// child's group) and reaps it.
pub struct Proc {
    pub child: Child,
    pub stderr: PathBuf,
    pub status: Option<ExitStatus>,
}

impl Proc {
    pub fn spawn(ctx: &Ctx, mut command: Command, tag: &str) -> Proc {
        let stderr = ctx.dir.join(format!("{tag}.stderr"));
        command.stderr(fs::File::create(&stderr).unwrap());
        let child = command.spawn().unwrap_or_else(|err| panic!("spawn {command:?}: {err}"));
        Proc { child, stderr, status: None }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: Signal) {
        if self.status.is_none() {
            let _ = kill(Pid::from_raw(self.pid()), signal);
        }
    }

    pub fn exited(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap();
        }
        self.status.is_some()
    }

    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while !self.exited() {
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.status
    }

    /// The exit code, or 128 + N for death by signal N.
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code().or_else(|| s.signal().map(|n| 128 + n)))
    }

    #[track_caller]
    pub fn expect_exit(&mut self, code: i32) {
        let status = self.wait_for(PATIENCE);
        assert_eq!(self.code(), Some(code), "exit status {status:?}; stderr:\n{}", self.stderr());
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Whether mpsync said it waits (`-v` logs "held by another; waiting"). Panics if a file-backend
    /// waiter could not watch its lock dir: it then polls every retry period, and the measurement would
    /// be of that (on a shared machine, other processes can use up `fs.inotify.max_user_instances`).
    pub fn says_waiting(&self) -> bool {
        let stderr = self.stderr();
        assert!(
            !stderr.contains("cannot watch the lock directory"),
            "a file-backend waiter cannot use inotify (fs.inotify.max_user_instances used up by other processes?):\n{stderr}"
        );
        stderr.contains("waiting")
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
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool, procs: &mut [&mut Proc]) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        for proc in procs.iter_mut() {
            assert!(!proc.exited(), "a process exited while waiting for {what}: {:?}\n{}", proc.status, proc.stderr());
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Let a child blocked in `read x < FIFO` go: open without blocking, retrying until the reader is there.
pub fn release_fifo(fifo: &Path) {
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

pub fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR).expect("mkfifo");
}

/// `WORD SECONDS.MICROS` lines (bash's `echo WORD $EPOCHREALTIME`), as microseconds since the epoch.
pub fn read_stamps(path: &Path) -> Vec<(String, i64)> {
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

pub fn read_pid(path: &Path) -> Option<i32> {
    let text = fs::read_to_string(path).ok()?;
    if !text.ends_with('\n') {
        return None;
    }
    text.trim().parse().ok()
}

pub struct ProcStat {
    pub comm: String,
    pub state: char,
    pub ppid: i32,
}

pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_string();
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    Some(ProcStat { comm, state: fields.first()?.chars().next()?, ppid: fields.get(1)?.parse().ok()? })
}

pub fn alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|s| s.state != 'Z')
}

pub fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|dir| dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// Wait for `child` to exit, at most `limit`: a pidfd that becomes readable when it exits, so that the
/// wait itself adds no polling delay to what is measured.
pub fn wait_with_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; nothing is borrowed.
    let raw = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, child.id() as nix::libc::pid_t, 0) };
    if raw < 0 {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        return None;
    }
    // SAFETY: `raw` is a descriptor pidfd_open just opened for us, owned by nothing else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)) {
            Ok(0) => return None,
            Ok(_) => return Some(child.wait().expect("wait")),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(err) => panic!("poll on a pidfd: {err}"),
        }
    }
}

impl Ctx {
    /// Run `command` to completion and return its wall time in ms, spawn to exit. A process that has
    /// not exited after PATIENCE is a hang: what it was doing is recorded for the report, it is killed,
    /// and the result is NaN (callers keep only finite samples). Its stderr goes to a file, kept for a
    /// hang.
    pub fn run_timed(&self, command: &mut Command) -> f64 {
        let stderr = self.shm.as_ref().unwrap_or(&self.dir).join("run.stderr");
        command.stderr(fs::File::create(&stderr).unwrap());
        let started = Instant::now();
        let mut child = command.spawn().unwrap_or_else(|err| panic!("spawn {command:?}: {err}"));
        let Some(status) = wait_with_timeout(&mut child, PATIENCE) else {
            let pid = child.id() as i32;
            let threads: Vec<String> = fs::read_dir(format!("/proc/{pid}/task"))
                .map(|tasks| {
                    tasks
                        .filter_map(|t| {
                            let path = t.ok()?.path();
                            let comm = fs::read_to_string(path.join("comm")).ok()?;
                            let wchan = fs::read_to_string(path.join("wchan")).ok()?;
                            Some(format!("{} in {wchan}", comm.trim()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let children: Vec<String> = all_pids()
                .into_iter()
                .filter_map(|p| proc_stat(p).filter(|s| s.ppid == pid).map(|s| format!("{p} {} {}", s.comm, s.state)))
                .collect();
            let kept = self.dir.join(format!("hang-{pid}.stderr"));
            let _ = fs::copy(&stderr, &kept);
            let what = format!(
                "`{}` did not exit within {PATIENCE:?} (threads: {}; children: {}; stderr: {})",
                command_line(command),
                threads.join(", "),
                if children.is_empty() { "none".into() } else { children.join(", ") },
                fs::read_to_string(&stderr).unwrap_or_default().trim()
            );
            eprintln!("HANG: {what}");
            self.hangs.borrow_mut().push(what);
            let _ = child.kill();
            let _ = child.wait();
            return f64::NAN;
        };
        let elapsed = started.elapsed();
        assert!(status.success(), "{command:?} failed: {status}\n{}", fs::read_to_string(&stderr).unwrap_or_default());
        elapsed.as_secs_f64() * 1e3
    }
}

/// The program and its arguments, for a report.
pub fn command_line(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------------
// Numbers and times
// ---------------------------------------------------------------------------------------------

pub struct Stats {
    pub n: usize,
    pub median: f64,
    pub p90: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    /// Median (mean of the middle two for an even count) and nearest-rank p90 and p99.
    pub fn of(samples: &[f64]) -> Stats {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        assert!(n > 0, "no samples");
        let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
        let rank = |q: f64| sorted[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
        Stats { n, median, p90: rank(0.9), p99: rank(0.99), min: sorted[0], max: sorted[n - 1] }
    }
}

pub fn epoch_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as i64
}

/// `2026-11-26T04:23:07.584740Z` (a MicroTime in UTC, as stored) to microseconds since the epoch.
pub fn parse_micro_time(s: &str) -> Option<i64> {
    s.parse::<k8s_openapi::jiff::Timestamp>().ok().map(|t| t.as_microsecond())
}

pub fn format_micro_time(micros: i64) -> String {
    let at = k8s_openapi::jiff::Timestamp::from_microsecond(micros).expect("a time in range");
    k8s_openapi::jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%S%.6fZ", at).expect("formattable")
}

/// A count per unit: whole numbers without decimals, others with one (two below 0.1).
pub fn fmt_per(x: f64) -> String {
    if (x - x.round()).abs() < 0.05 {
        format!("{x:.0}")
    } else if x.abs() < 0.1 {
        format!("{x:.2}")
    } else {
        format!("{x:.1}")
    }
}

pub fn mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

/// `MPSYNC_BENCH_PROCESSES=N`: N idle processes on the machine for the whole run, as a node host has a few
/// hundred (mpsync looks at /proc after every child, and a look may cost per process). Default none.
pub fn idle_processes() -> usize {
    let Some(value) = std::env::var("MPSYNC_BENCH_PROCESSES").ok().filter(|v| !v.trim().is_empty()) else {
        return 0;
    };
    match value.trim().parse::<usize>() {
        Ok(n) if n <= 10_000 => n,
        _ => panic!("MPSYNC_BENCH_PROCESSES={value:?}: a number of processes from 0 to 10000, such as 200"),
    }
}

/// The idle processes of [`idle_processes`], killed and reaped when dropped.
pub struct Idle(Vec<Child>);

impl Idle {
    pub fn start(n: usize) -> Idle {
        let spawn = || {
            Command::new("sleep")
                .arg("86400")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start an idle process (sleep)")
        };
        Idle((0..n).map(|_| spawn()).collect())
    }
}

impl Drop for Idle {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// This tree's mpsync as users build it (`cargo build --release`, as `cargo install` and the Dockerfile do),
/// into `target/bench-current/`. Not the binary cargo builds for the bench: that one has the
/// dev-dependencies' features too (cargo unifies them: a multi-threaded runtime, TLS 1.2), 0.06 MiB more
/// binary and 0.2-0.3 MiB more RSS, where a baseline (`MPSYNC_BENCH_BASELINE`) is built as users build it.
fn as_users_build_it() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    // target/release/mpsync → target
    let target = Path::new(env!("CARGO_BIN_EXE_mpsync")).parent().and_then(Path::parent).expect("the target dir");
    let target = target.join("bench-current");
    eprintln!("this build: cargo build --release into {} (a cold build takes 5-10 minutes here)", target.display());
    let status = crate::baseline::build_release(&repo.join("Cargo.toml"), &target, &["--bin", "mpsync"]);
    assert!(status.success(), "building this tree's mpsync: {status}");
    target.join("release/mpsync")
}
