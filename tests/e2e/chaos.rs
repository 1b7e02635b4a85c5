//! Chaos, Jepsen-style: several `mpsync lock` loops contend for one Lease while faults are injected, and a
//! checker reads the history the children wrote.
//!
//! Set-up: `CONTENDERS` contenders, each a thread of this test that runs one `mpsync lock` (a *wrapper*) at a
//! time through its own `FaultProxy`, and starts the next when it exits. Each wrapper has a unique identity
//! `cC-S` (contender C, sequence S), so every child is known by the identity of the wrapper that ran it (a
//! `lock` runs its command at most once). The child appends to one shared log (small lines, `>>`: atomic),
//! stamped with `date +%s%N` (same host, one clock as `epoch_nanos`):
//!
//! ```text
//! start NANOS TOKEN PPID PID IDENTITY      first thing it does
//! hb    NANOS TOKEN PPID PID IDENTITY      every 50 ms while it holds
//! end   NANOS TOKEN PPID PID IDENTITY      when it is done; with "term" from its TERM trap
//! ```
//!
//! A monitor thread tails the log and polls `/proc/PID` of every child it has seen start (checking the
//! command line carries the child's identity, so a reused pid is never mistaken for it). It records the
//! last moment it *saw* the child alive (the time taken just before a read that found it alive: the child
//! existed before that moment and after it, so it was alive at it) and the first moment it saw it dead.
//!
//! Faults, one every 1-3 s, drawn at random from a shuffled deck so that every kind comes up in each
//! deck's worth (`MPSYNC_CHAOS_SEED` replays the draws, not the timing): SIGKILL or SIGTERM of a
//! wrapper, a partition of a proxy for 4-6 s, latency (2.5-4 s, above the renew deadline) on a proxy for
//! 4-6 s, a *late answer* (a proxy holds back only its responses, by 1.2-1.9 s, for 1-1.9 s, then lets them
//! all through), bursts of 5xx from the test server, *commit then fail* (the test server commits the next
//! write of a wrapper, then answers it 500 or 504 or drops the connection without an answer), and restarts
//! of the test server. The server-side kinds are skipped against a real cluster (`MPSYNC_TEST_KUBECONFIG`).
//! Targeted faults hit the current holder three times in four.
//!
//! The two kinds that open the narrow windows: a *late answer* lets the holder's renewals commit at once
//! (everyone else's watch sees them) while the holder learns of them late, by more than the safety margin
//! `lease_duration - renew_deadline - grace` (1 s here), and longer than mpsync's call timeout; it heals
//! before the renew deadline, so that what mpsync hears after the heal is about renewals committed more
//! than the margin earlier. A holder that counted its renew deadline from such an answer, rather than from
//! the send, would keep its child past the moment the others may take over: check 1 proves it. *Commit
//! then fail* makes the outcome of an acquisition, renewal or release unknown to its writer although it
//! happened. At most two proxies are faulted at once; every fault heals; the chaos lasts `MPSYNC_CHAOS_SECS`
//! (default 60), then everything heals. Most children hold the lease for 100-800 ms (many handoffs), one in
//! four for 2.5-5 s (longer than the renew deadline, so that a fault against the holder makes it lose).
//! A run takes about `MPSYNC_CHAOS_SECS` + 10 s, and at most `MPSYNC_CHAOS_SECS` + 60 s whatever happens
//! (the limits: `AFTER_HEAL_LIMIT`, `STOP_LIMIT`, and 5 s for the monitor to see the last children die).
//! `MPSYNC_CHAOS_KEEP=DIR` copies the log and `history.txt` (faults, each wrapper's stderr) there.
//!
//! What the checker verifies (every check is built so that a violation it reports is a proof, never a
//! guess; the price is that some real violations could go unseen):
//!
//! 1. **No overlap.** A child is *proven alive* at its own stamps and whenever the monitor saw it alive.
//!    For children sorted by their start stamp, a child B whose start is earlier than a moment at which an
//!    earlier-started child A was proven alive is a violation: A was alive at its start (before B's
//!    start) and at that later moment, so it was alive when B started. The monitor's *death* times are
//!    only upper bounds (it may notice late), so they never make a violation, they are only printed.
//! 2. **Fencing tokens strictly increase in start order**: for children sorted by start stamp, each token
//!    is greater than the one before (and every child got one).
//! 3. **A holder that lost the lease stopped its child in time.** mpsync declares the lease lost
//!    `renew_deadline` after it *sent* its last successful renewal, then has `grace` to stop the child.
//!    For a fault against a wrapper, taken at moment F (the time read right after the fault was applied):
//!    - *partition* of its proxy (for longer than `renew_deadline + call timeout`): from F until the heal
//!      no byte passes, so no renewal sent after F can succeed before the loss is declared; the last
//!      successful renewal was sent before F. So its child must be dead by `F + renew_deadline + grace +
//!      SLACK`. This is the bound `last renewal + renew_deadline + grace` with F in place of the (earlier,
//!      unseen) last renewal: a slightly stronger check, still sound. Checked for a child that started
//!      before the heal (one that started during the partition can only come from an acquisition sent
//!      before F); the same wrapper may legitimately acquire the lease after the heal.
//!    - *latency* L > renew_deadline on its proxy (for longer than `renew_deadline + call timeout`, so
//!      that the loss is declared before the latency is lifted and what it held back arrives at once): a
//!      renewal sent after F gets no answer within the call timeout, and its effect could only be seen
//!      (through the watch, which crosses the same proxy) at least 2L > renew_deadline after it was sent,
//!      after the loss was declared. Checked for the child that had started before the fault; a child
//!      started afterwards may come from an acquisition that succeeded when the latency was lifted.
//!    - *SIGKILL* of the wrapper: its child must be dead by `F + SLACK` (parent-death signal and guard).
//!
//!    SLACK covers a loaded machine (scheduling delays of mpsync's timers, the child's trap): the
//!    arguments above assume only that mpsync runs within SLACK of when its timers are due; a process
//!    frozen for longer is outside what mpsync promises (see the README's Guarantees). The child's
//!    lateness is proven the same way as in check 1: by a stamp or a monitor sighting after the bound.
//! 4. **Handoffs go on after the faults heal**: once every fault has healed, at least
//!    `HANDOFFS_AFTER_HEAL` more children start within `AFTER_HEAL_LIMIT`.
//! 5. **Every wrapper exits as documented**: 0 (its child exited 0), 123 (lost the lease), 143 after our
//!    SIGTERM (while waiting, or forwarded to the child, whose TERM trap exits 143), death by our SIGKILL,
//!    or death by our SIGTERM before mpsync logged anything (it arrived before mpsync handles signals);
//!    never a panic. Transient API failures must never make it exit 125. And each child's `$PPID` is the pid of
//!    the wrapper whose identity it got in `MPSYNC_IDENTITY` (mpsync execs the command directly).
//!
//! It prints the number of handoffs, the faults by kind and the violations, which must be 0.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::apiserver::{self, AfterCommit};
use crate::support::proxy::{FaultProxy, kubeconfig_upstream};
use crate::support::*;

/// Short timings: renew_deadline + grace (3s) < lease_duration (4s); retry_period * 1.2 < renew_deadline.
const TIMINGS: &[&str] =
    &["--lease-duration", "4s", "--renew-deadline", "2s", "--retry-period", "500ms", "--grace", "1s"];
const LEASE_DURATION: Duration = Duration::from_secs(4);
const RENEW_DEADLINE: Duration = Duration::from_secs(2);
const GRACE: Duration = Duration::from_secs(1);
/// mpsync's timeout for one API call with these timings: `run::call_timeout` = max(renew_deadline / 2,
/// retry_period, 500ms).
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// Added to every time bound of check 3: a loaded 2-core machine delays timers and traps.
const SLACK: Duration = Duration::from_secs(3);

const CONTENDERS: usize = 4;
/// How long a fault waits for a suitable target (a holder; for a partition or latency, one whose child
/// holds for long) before it goes ahead anyway.
const PATIENCE_FOR_TARGET: Duration = Duration::from_secs(3);
/// How long a partition or latency lasts: long enough for the loss to be certain (see check 3).
const PROXY_FAULT_MIN: Duration = Duration::from_secs(4);
const PROXY_FAULT_MAX: Duration = Duration::from_secs(6);
const _: () = assert!(PROXY_FAULT_MIN.as_millis() > RENEW_DEADLINE.as_millis() + CALL_TIMEOUT.as_millis());
/// What a late answer is late by: more than the safety margin `LEASE_DURATION - RENEW_DEADLINE - GRACE`
/// (and the call timeout), less than the renew deadline.
const LATE_ANSWER_MIN: Duration = Duration::from_millis(1200);
const LATE_ANSWER_MAX: Duration = Duration::from_millis(1900);
const _: () = assert!(
    LATE_ANSWER_MIN.as_millis() > LEASE_DURATION.as_millis() - RENEW_DEADLINE.as_millis() - GRACE.as_millis()
        && LATE_ANSWER_MIN.as_millis() > CALL_TIMEOUT.as_millis()
        && LATE_ANSWER_MAX.as_millis() < RENEW_DEADLINE.as_millis()
);
/// How long a late answer lasts: it heals before the renew deadline passes.
const LATE_ANSWER_FOR_MIN: Duration = Duration::from_millis(1000);
const LATE_ANSWER_FOR_MAX: Duration = Duration::from_millis(1900);
const _: () = assert!(LATE_ANSWER_FOR_MAX.as_millis() < RENEW_DEADLINE.as_millis());
/// At most this many proxies faulted at once, so that some contenders can always make progress.
const MAX_FAULTED_PROXIES: usize = 2;
const DEFAULT_CHAOS_SECS: u64 = 60;
const HANDOFFS_AFTER_HEAL: usize = 3;
const AFTER_HEAL_LIMIT: Duration = Duration::from_secs(40);
/// How long a wrapper may take to exit after the final SIGTERM before it counts as hung (and is killed).
const STOP_LIMIT: Duration = Duration::from_secs(15);

type Nanos = u128;

fn nanos(duration: Duration) -> Nanos {
    duration.as_nanos()
}

fn secs_between(from: Nanos, to: Nanos) -> f64 {
    (to as f64 - from as f64) / 1e9
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// xorshift64*: no dependency, and a printed seed replays the same choices (not the same timing).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // splitmix64 once, so that small seeds give well-mixed states; never 0.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high - low + 1))
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Partition,
    Latency,
    Sigkill,
    Sigterm,
    Api5xx,
    Restart,
    LateAnswer,
    CommitThenFail,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Partition => "partition",
            Kind::Latency => "latency",
            Kind::Sigkill => "sigkill",
            Kind::Sigterm => "sigterm",
            Kind::Api5xx => "api_5xx",
            Kind::Restart => "restart",
            Kind::LateAnswer => "late_answer",
            Kind::CommitThenFail => "commit_fail",
        }
    }
}

/// One injected fault.
#[derive(Debug)]
struct Fault {
    kind: Kind,
    contender: Option<usize>,
    /// The wrapper (identity) that ran on the targeted contender when the fault was applied.
    wrapper: Option<String>,
    /// Read just before and just after the fault was applied.
    before: Nanos,
    after: Nanos,
    healed: Option<Nanos>,
    detail: String,
}

/// One `mpsync lock` process run by a contender.
struct Wrapper {
    identity: String,
    pid: i32,
    exit: Option<(Nanos, ExitStatus)>,
    stderr: String,
    /// Killed by the test (a SIGKILL fault, or at the end because it would not stop).
    sigkilled: bool,
    /// Sent SIGTERM by the test (a fault, or the stop at the end).
    sigtermed: bool,
    /// Its child holds for longer than the renew deadline.
    long: bool,
    hung: bool,
}

#[derive(Default)]
struct Contenders {
    wrappers: Vec<Wrapper>,
    /// Per contender: the index in `wrappers` of the one running now. Signals are sent with this lock
    /// held and wrappers are reaped with it held, so a signal never reaches a recycled pid.
    current: [Option<usize>; CONTENDERS],
    stop: bool,
}

/// What the monitor knows of one child.
#[derive(Clone, Debug)]
struct Sighting {
    pid: i32,
    start: Nanos,
    ended: bool,
    last_seen_alive: Option<Nanos>,
    first_seen_dead: Option<Nanos>,
}

#[derive(Default)]
struct Monitor {
    children: Mutex<HashMap<String, Sighting>>,
    stop: AtomicBool,
}

impl Monitor {
    /// Tail the log; poll every child seen to start until it is seen dead.
    fn run(&self, log: &Path) {
        let mut offset = 0u64;
        let mut partial = String::new();
        while !self.stop.load(Ordering::SeqCst) {
            if let Ok(mut file) = fs::File::open(log) {
                let mut text = String::new();
                if file.seek(SeekFrom::Start(offset)).is_ok() && file.read_to_string(&mut text).is_ok() {
                    offset += text.len() as u64;
                    partial.push_str(&text);
                    while let Some(newline) = partial.find('\n') {
                        let line: String = partial.drain(..=newline).collect();
                        if let Some(stamp) = Stamp::parse(&line) {
                            self.note(&stamp);
                        }
                    }
                }
            }
            let watched: Vec<(String, i32)> = lock(&self.children)
                .iter()
                .filter(|(_, s)| s.first_seen_dead.is_none())
                .map(|(identity, s)| (identity.clone(), s.pid))
                .collect();
            for (identity, pid) in watched {
                let before = epoch_nanos();
                let is_alive = child_alive(pid, &identity);
                let mut children = lock(&self.children);
                let sighting = children.get_mut(&identity).expect("watched");
                if is_alive {
                    sighting.last_seen_alive = Some(before);
                } else {
                    sighting.first_seen_dead = Some(epoch_nanos());
                }
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn note(&self, stamp: &Stamp) {
        let mut children = lock(&self.children);
        let sighting = children.entry(stamp.identity.clone()).or_insert(Sighting {
            pid: stamp.pid,
            start: stamp.at,
            ended: false,
            last_seen_alive: None,
            first_seen_dead: None,
        });
        if stamp.word == "end" {
            sighting.ended = true;
        }
    }

    /// The identity of the child that started last and is still running, if any.
    fn running(&self) -> Option<(String, Sighting)> {
        lock(&self.children)
            .iter()
            .filter(|(_, s)| !s.ended && s.first_seen_dead.is_none())
            .max_by_key(|(_, s)| s.start)
            .map(|(identity, s)| (identity.clone(), s.clone()))
    }

    fn started_after(&self, at: Nanos) -> usize {
        lock(&self.children).values().filter(|s| s.start > at).count()
    }

    fn all_dead(&self) -> bool {
        lock(&self.children).values().all(|s| s.first_seen_dead.is_some())
    }
}

/// Alive (not a zombie) and still the child with this identity (its `sh -c` command line names it).
fn child_alive(pid: i32, identity: &str) -> bool {
    if !alive(pid) {
        return false;
    }
    let marker = format!("chaos_child={identity};");
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => cmdline.windows(marker.len()).any(|w| w == marker.as_bytes()) && alive(pid),
        Err(_) => false,
    }
}

/// One line of the children's log.
#[derive(Clone, Debug)]
struct Stamp {
    word: String,
    at: Nanos,
    token: Option<i64>,
    ppid: i32,
    pid: i32,
    identity: String,
    term: bool,
}

impl Stamp {
    fn parse(line: &str) -> Option<Stamp> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 5 {
            return None;
        }
        let word = fields[0].to_string();
        if !matches!(word.as_str(), "start" | "hb" | "end") {
            return None;
        }
        // An empty token (no MPSYNC_FENCING_TOKEN) shifts the fields: then there are only 5.
        let (token, rest) =
            if fields.len() >= 6 { (fields[2].parse().ok(), &fields[3..]) } else { (None, &fields[2..]) };
        let at: Nanos = fields[1].parse().ok()?;
        // A `$(date)` killed mid-way leaves the field empty (the others shift): no stamp, not a time in 1970.
        if at < nanos(Duration::from_secs(1_000_000_000)) {
            return None;
        }
        Some(Stamp {
            word,
            at,
            token,
            ppid: rest[0].parse().ok()?,
            pid: rest[1].parse().ok()?,
            identity: rest[2].to_string(),
            term: rest.get(3) == Some(&"term"),
        })
    }
}

/// A child's history, from the log (and the monitor).
#[derive(Debug)]
struct Child {
    identity: String,
    token: Option<i64>,
    ppid: i32,
    pid: i32,
    start: Option<Nanos>,
    end: Option<Nanos>,
    term: bool,
    /// The latest moment this child is proven alive: its last stamp, or a monitor sighting.
    proven_alive: Nanos,
    /// When the monitor first saw it dead (an upper bound of its death), if it did.
    seen_dead: Option<Nanos>,
}

fn read_children(log: &Path, monitor: &Monitor) -> Vec<Child> {
    let mut children: BTreeMap<String, Child> = BTreeMap::new();
    for line in fs::read_to_string(log).unwrap_or_default().lines() {
        let Some(stamp) = Stamp::parse(line) else { continue };
        let child = children.entry(stamp.identity.clone()).or_insert(Child {
            identity: stamp.identity.clone(),
            token: stamp.token,
            ppid: stamp.ppid,
            pid: stamp.pid,
            start: None,
            end: None,
            term: false,
            proven_alive: stamp.at,
            seen_dead: None,
        });
        child.proven_alive = child.proven_alive.max(stamp.at);
        match stamp.word.as_str() {
            "start" => child.start = Some(stamp.at),
            "end" => {
                child.end = Some(stamp.at);
                child.term = stamp.term;
            }
            _ => {}
        }
    }
    let sightings = lock(&monitor.children);
    for child in children.values_mut() {
        if let Some(sighting) = sightings.get(&child.identity) {
            if let Some(seen) = sighting.last_seen_alive {
                child.proven_alive = child.proven_alive.max(seen);
            }
            child.seen_dead = sighting.first_seen_dead;
        }
    }
    children.into_values().collect()
}

/// The child: stamps its start (token, mpsync's pid, its pid, identity), heartbeats while it holds for
/// `beats` x 50 ms, stamps its end; a TERM trap stamps the end too (and exits 143).
fn child_script(log: &Path, identity: &str, beats: u64) -> String {
    format!(
        "chaos_child={identity}; log='{log}'; me=\"$MPSYNC_FENCING_TOKEN $PPID $$ $MPSYNC_IDENTITY\"; \
         echo \"start $(date +%s%N) $me\" >> \"$log\"; \
         trap 'echo \"end $(date +%s%N) $me term\" >> \"$log\"; exit 143' TERM; \
         i=0; while [ $i -lt {beats} ]; do echo \"hb $(date +%s%N) $me\" >> \"$log\"; sleep 0.05; i=$((i + 1)); done; \
         echo \"end $(date +%s%N) $me\" >> \"$log\"",
        log = log.display(),
    )
}

struct Chaos<'a> {
    env: &'a TestEnv,
    name: String,
    log: PathBuf,
    kubeconfigs: Vec<PathBuf>,
    contenders: Mutex<Contenders>,
    monitor: Monitor,
}

impl Chaos<'_> {
    /// One contender: run `mpsync lock` through this contender's proxy, again and again, until stopped.
    fn contend(&self, index: usize, seed: u64) {
        let mut rng = Rng::new(seed);
        for sequence in 1.. {
            let identity = format!("c{index}-{sequence}");
            // Most children hold for 100-800 ms (many handoffs); one in four for 2.5-5 s, longer than the
            // renew deadline, so that a partition or latency against the holder makes it lose the lease.
            let beats = if rng.percent(75) { 2 + rng.below(15) } else { 50 + rng.below(51) };
            let script = child_script(&self.log, &identity, beats);
            let mut args: Vec<&str> = vec!["lock", &self.name, "-v", "--identity", &identity];
            args.extend_from_slice(TIMINGS);
            args.extend_from_slice(&["--", "sh", "-c", &script]);
            let mut command = self.env.mpsync(&args);
            command.env("MPSYNC_KUBECONFIG", &self.kubeconfigs[index]);
            let mut proc = {
                let mut contenders = lock(&self.contenders);
                if contenders.stop {
                    return;
                }
                let proc = Proc::spawn(command, &self.env.dir);
                contenders.wrappers.push(Wrapper {
                    identity: identity.clone(),
                    pid: proc.pid(),
                    exit: None,
                    stderr: String::new(),
                    sigkilled: false,
                    sigtermed: false,
                    long: beats * 50 > RENEW_DEADLINE.as_millis() as u64,
                    hung: false,
                });
                contenders.current[index] = Some(contenders.wrappers.len() - 1);
                proc
            };
            let mut stop_seen: Option<Instant> = None;
            let status = loop {
                {
                    let mut contenders = lock(&self.contenders);
                    if let Some(status) = proc.child.try_wait().expect("wait for mpsync") {
                        let slot = contenders.current[index].take().expect("registered");
                        contenders.wrappers[slot].exit = Some((epoch_nanos(), status));
                        break status;
                    }
                    if contenders.stop {
                        let since = *stop_seen.get_or_insert_with(Instant::now);
                        if since.elapsed() > STOP_LIMIT {
                            let slot = contenders.current[index].expect("registered");
                            contenders.wrappers[slot].hung = true;
                            contenders.wrappers[slot].sigkilled = true;
                            let _ = proc.child.kill();
                        }
                    }
                }
                thread::sleep(Duration::from_millis(10));
            };
            let stderr = proc.stderr();
            {
                let mut contenders = lock(&self.contenders);
                if let Some(wrapper) = contenders.wrappers.iter_mut().find(|w| w.identity == identity) {
                    wrapper.stderr = stderr;
                }
            }
            // mpsync failing at once must not become a busy loop.
            let pause =
                if matches!(status.code(), Some(0 | 123 | 143)) || status.signal().is_some() { 20 } else { 500 };
            thread::sleep(Duration::from_millis(pause));
        }
    }

    /// Run the monitor and one contender per seed while `body` runs; then stop them all: no new
    /// wrappers, SIGTERM to the running ones (under the lock, so that no new one slips in), and wait
    /// until the monitor has seen every child dead (within a limit).
    fn run<R>(&self, seeds: &[u64], body: impl FnOnce() -> R) -> R {
        thread::scope(|scope| {
            let monitor = scope.spawn(|| self.monitor.run(&self.log));
            let contenders: Vec<_> =
                seeds.iter().enumerate().map(|(index, &seed)| scope.spawn(move || self.contend(index, seed))).collect();
            // Whatever happens in `body`, stop the contenders: the scope would wait for them forever.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
            {
                let mut contenders = lock(&self.contenders);
                contenders.stop = true;
                for slot in contenders.current.into_iter().flatten() {
                    let wrapper = &mut contenders.wrappers[slot];
                    wrapper.sigtermed = true;
                    let _ = kill(Pid::from_raw(wrapper.pid), Signal::SIGTERM);
                }
            }
            for contender in contenders {
                contender.join().expect("contender thread");
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while !self.monitor.all_dead() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            self.monitor.stop.store(true, Ordering::SeqCst);
            monitor.join().expect("monitor thread");
            result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Send `signal` to contender `index`'s current wrapper; its identity if there was one.
    fn signal_wrapper(&self, index: usize, signal: Signal) -> Option<String> {
        let mut contenders = lock(&self.contenders);
        let slot = contenders.current[index]?;
        let wrapper = &mut contenders.wrappers[slot];
        wrapper.sigkilled |= signal == Signal::SIGKILL;
        wrapper.sigtermed |= signal == Signal::SIGTERM;
        let _ = kill(Pid::from_raw(wrapper.pid), signal);
        Some(wrapper.identity.clone())
    }

    fn current_wrapper(&self, index: usize) -> Option<String> {
        let contenders = lock(&self.contenders);
        contenders.current[index].map(|slot| contenders.wrappers[slot].identity.clone())
    }

    /// The contender whose child runs now, if any, and whether that child is a long one that started
    /// less than a second ago (it will still run when the renew deadline passes).
    fn holder(&self) -> Option<(usize, bool)> {
        let (identity, sighting) = self.monitor.running()?;
        let contender = identity.strip_prefix('c')?.split('-').next()?.parse().ok()?;
        let long = lock(&self.contenders).wrappers.iter().any(|w| w.identity == identity && w.long);
        Some((contender, long && epoch_nanos() < sighting.start + nanos(Duration::from_secs(1))))
    }
}

/// A fault on a proxy, until `heal_at`.
struct Active {
    contender: usize,
    fault: usize,
    heal_at: Instant,
}

/// Chooses and applies the faults, heals them when due, and keeps the record.
struct Injector<'a> {
    chaos: &'a Chaos<'a>,
    proxies: &'a [FaultProxy],
    server: Option<&'a apiserver::TestApiServer>,
    rng: Rng,
    kinds: Vec<(Kind, u64)>,
    deck: Vec<Kind>,
    active: Vec<Active>,
    faults: Vec<Fault>,
    next_fault: Instant,
    /// A fault chosen and waiting for a suitable target, until the moment it goes ahead anyway.
    pending: Option<(Kind, Instant)>,
    /// The end of the chaos phase: proxy faults must heal by then.
    end: Instant,
    /// Per contender: no other targeted fault until then. Set by a late answer, until a lease duration
    /// after it heals, so that it and what follows the heal (the window it opens) play out undisturbed.
    quiet_until: [Option<Instant>; CONTENDERS],
    /// The commit-then-fail fault armed on the server (its index in `faults`), until it fires, is
    /// replaced, or everything heals.
    armed_commit_fault: Option<usize>,
}

impl Injector<'_> {
    /// The chaos phase: a fault every 1-3 s after a calm start, for `length`. A proxy fault must not be
    /// cut short (check 3 relies on its length): none starts that would outlast the phase.
    fn run(&mut self, length: Duration) {
        self.end = Instant::now() + length;
        self.next_fault = Instant::now() + Duration::from_secs(2);
        while Instant::now() < self.end || !self.active.is_empty() {
            self.heal_due();
            if Instant::now() >= self.next_fault && Instant::now() < self.end {
                self.inject();
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn heal_due(&mut self) {
        let now = Instant::now();
        let (due, active): (Vec<Active>, Vec<Active>) = self.active.drain(..).partition(|a| a.heal_at <= now);
        self.active = active;
        for a in due {
            let proxy = &self.proxies[a.contender];
            // Read before healing: a lower bound of the moment traffic flows again.
            self.faults[a.fault].healed = Some(epoch_nanos());
            proxy.set_latency(Duration::ZERO);
            proxy.heal();
            // Connections blackholed by a partition never recover: reset them.
            if self.faults[a.fault].kind == Kind::Partition {
                proxy.drop_connections();
            }
        }
    }

    /// Notes in the record of the armed commit-then-fail fault whether it fired; disarms it.
    fn disarm_commit_fault(&mut self) {
        let (Some(index), Some(server)) = (self.armed_commit_fault.take(), self.server) else { return };
        let pending = server.after_commit_pending();
        server.after_commit(0, AfterCommit::Drop);
        self.faults[index].detail.push_str(if pending == 0 { " (fired)" } else { " (never fired)" });
    }

    /// Heal everything that can be: the proxies, and 5xx still pending. Returns the moment, read first.
    fn heal_all(&mut self) -> Nanos {
        let healed = epoch_nanos();
        if let Some(server) = self.server {
            server.fail_next(0, 500);
        }
        self.disarm_commit_fault();
        for proxy in self.proxies {
            proxy.set_latency(Duration::ZERO);
            proxy.heal();
        }
        for fault in self.faults.iter_mut().filter(|f| f.healed.is_none()) {
            fault.healed = Some(healed);
        }
        healed
    }

    /// The next kind from a shuffled deck holding each kind `weight` times: every kind comes up in every
    /// deck's worth of faults (16 with the test server), not just on average.
    fn pick_kind(&mut self) -> Kind {
        if self.deck.is_empty() {
            self.deck = self.kinds.iter().flat_map(|&(kind, weight)| (0..weight).map(move |_| kind)).collect();
            for i in (1..self.deck.len()).rev() {
                let j = self.rng.below(i as u64 + 1) as usize;
                self.deck.swap(i, j);
            }
        }
        self.deck.pop().expect("a full deck")
    }

    fn inject(&mut self) {
        let now = Instant::now();
        let (mut kind, wait_until) = match self.pending.take() {
            Some(pending) => pending,
            None => (self.pick_kind(), now + PATIENCE_FOR_TARGET),
        };
        let faulted: Vec<usize> = self.active.iter().map(|a| a.contender).collect();
        let (low, high) = if kind == Kind::LateAnswer {
            (LATE_ANSWER_FOR_MIN, LATE_ANSWER_FOR_MAX)
        } else {
            (PROXY_FAULT_MIN, PROXY_FAULT_MAX)
        };
        let length = self.rng.millis(low.as_millis() as u64, high.as_millis() as u64);
        if matches!(kind, Kind::Partition | Kind::Latency | Kind::LateAnswer)
            && (faulted.len() >= MAX_FAULTED_PROXIES || now + length > self.end)
        {
            kind = if self.rng.percent(50) { Kind::Sigkill } else { Kind::Sigterm };
        }
        // Target the current holder most of the time, else any contender. Between two children nobody
        // holds: then wait a little for the next holder. A partition or latency waits a little for a
        // holder whose child just started a long hold: that holder will lose the lease; one whose child
        // ends within the renew deadline would not.
        let holder = self.chaos.holder();
        let wanted = match kind {
            Kind::Partition | Kind::Latency | Kind::LateAnswer => holder.is_some_and(|(_, long)| long),
            Kind::Sigkill | Kind::Sigterm | Kind::CommitThenFail => holder.is_some(),
            Kind::Api5xx | Kind::Restart => true,
        };
        if !wanted && now < wait_until {
            self.pending = Some((kind, wait_until));
            self.next_fault = now + Duration::from_millis(50);
            return;
        }
        let holder = holder.map(|(contender, _)| contender);
        self.next_fault = now + self.rng.millis(1000, 3000);
        let mut target = match holder {
            Some(holder) if self.rng.percent(75) => holder,
            _ => self.rng.below(CONTENDERS as u64) as usize,
        };
        // Spare a contender in the aftermath of a late answer; a commit-then-fail spares one whose
        // proxy is faulted (its next write would not reach the server).
        let avoid = |c: usize| {
            self.quiet_until[c].is_some_and(|until| now < until)
                || (kind == Kind::CommitThenFail && faulted.contains(&c))
        };
        if avoid(target) {
            let free: Vec<usize> = (0..CONTENDERS).filter(|&c| !avoid(c)).collect();
            if !free.is_empty() {
                target = free[self.rng.below(free.len() as u64) as usize];
            }
        }
        let about = |target: usize| {
            if holder == Some(target) { "the holder" } else { "not the holder" }
        };
        let fault = match kind {
            Kind::Partition | Kind::Latency | Kind::LateAnswer => {
                if faulted.contains(&target) {
                    let free: Vec<usize> = (0..CONTENDERS).filter(|c| !faulted.contains(c)).collect();
                    target = free[self.rng.below(free.len() as u64) as usize];
                }
                let wrapper = self.chaos.current_wrapper(target);
                let before = epoch_nanos();
                let detail = match kind {
                    Kind::Partition => {
                        self.proxies[target].partition();
                        format!("{}, for {length:?}", about(target))
                    }
                    Kind::Latency => {
                        let latency = self.rng.millis(2500, 4000);
                        self.proxies[target].set_latency(latency);
                        format!("{}, {latency:?} for {length:?}", about(target))
                    }
                    _ => {
                        let late =
                            self.rng.millis(LATE_ANSWER_MIN.as_millis() as u64, LATE_ANSWER_MAX.as_millis() as u64);
                        self.proxies[target].delay_responses(late);
                        format!("{}, answers {late:?} late for {length:?}", about(target))
                    }
                };
                let after = epoch_nanos();
                let heal_at = Instant::now() + length;
                self.active.push(Active { contender: target, fault: self.faults.len(), heal_at });
                if kind == Kind::LateAnswer {
                    self.quiet_until[target] = Some(heal_at + LEASE_DURATION);
                }
                Fault { kind, contender: Some(target), wrapper, before, after, healed: None, detail }
            }
            Kind::Sigkill | Kind::Sigterm => {
                let signal = if kind == Kind::Sigkill { Signal::SIGKILL } else { Signal::SIGTERM };
                let before = epoch_nanos();
                let Some(wrapper) = self.chaos.signal_wrapper(target, signal) else {
                    return;
                };
                let after = epoch_nanos();
                let detail = about(target).to_string();
                Fault {
                    kind,
                    contender: Some(target),
                    wrapper: Some(wrapper),
                    before,
                    after,
                    healed: Some(after),
                    detail,
                }
            }
            Kind::Api5xx => {
                let server = self.server.expect("test server");
                let count = 3 + self.rng.below(10) as usize;
                let status = [500, 503, 504][self.rng.below(3) as usize];
                let before = epoch_nanos();
                server.fail_next(count, status);
                let after = epoch_nanos();
                let detail = format!("the next {count} requests answer {status}");
                Fault { kind, contender: None, wrapper: None, before, after, healed: None, detail }
            }
            Kind::CommitThenFail => {
                let server = self.server.expect("test server");
                let Some(wrapper) = self.chaos.current_wrapper(target) else {
                    return;
                };
                let how = match self.rng.below(3) {
                    0 => AfterCommit::Fail(500),
                    1 => AfterCommit::Fail(504),
                    _ => AfterCommit::Drop,
                };
                self.disarm_commit_fault();
                let before = epoch_nanos();
                server.after_commit_of(&wrapper, 1, how);
                let after = epoch_nanos();
                self.armed_commit_fault = Some(self.faults.len());
                let detail = format!("{}: its next write is committed, then {how:?}", about(target));
                Fault { kind, contender: Some(target), wrapper: Some(wrapper), before, after, healed: None, detail }
            }
            Kind::Restart => {
                let server = self.server.expect("test server");
                let before = epoch_nanos();
                server.restart();
                let after = epoch_nanos();
                Fault {
                    kind,
                    contender: None,
                    wrapper: None,
                    before,
                    after,
                    healed: Some(after),
                    detail: String::new(),
                }
            }
        };
        self.faults.push(fault);
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// What a run produced, for the checks.
struct History {
    children: Vec<Child>,
    wrappers: Vec<Wrapper>,
    faults: Vec<Fault>,
    /// When every fault was healed, and how long the first `HANDOFFS_AFTER_HEAL` children after it took.
    healed: Nanos,
    recovery: Option<Duration>,
}

impl History {
    /// The children that stamped a start, in start order.
    fn started(&self) -> Vec<&Child> {
        let mut started: Vec<&Child> = self.children.iter().filter(|c| c.start.is_some()).collect();
        started.sort_by_key(|c| c.start);
        started
    }
}

fn start_of(child: &Child) -> Nanos {
    child.start.expect("started")
}

/// Check 1: no two children overlap (proofs only; unproven suspicions are printed).
fn check_overlap(history: &History, violations: &mut Vec<String>) -> usize {
    let mut latest: Option<&Child> = None;
    let mut suspects = 0;
    for child in history.started() {
        if let Some(previous) = latest {
            if start_of(child) < previous.proven_alive {
                violations.push(format!(
                    "overlap: {} started at {} while {} (started at {}) was proven alive until {}, {:.3}s later",
                    child.identity,
                    start_of(child),
                    previous.identity,
                    start_of(previous),
                    previous.proven_alive,
                    secs_between(start_of(child), previous.proven_alive),
                ));
            } else if previous.end.is_none()
                && let Some(dead) = previous.seen_dead
                && start_of(child) < dead
            {
                // Not a proof: the monitor may have noticed the death late.
                suspects += 1;
                eprintln!(
                    "chaos: note: {} started {:.3}s before the monitor saw {} dead; its last sign of life was \
                     {:.3}s before that start",
                    child.identity,
                    secs_between(start_of(child), dead),
                    previous.identity,
                    secs_between(previous.proven_alive, start_of(child)),
                );
            }
        }
        if latest.is_none_or(|l| child.proven_alive > l.proven_alive) {
            latest = Some(child);
        }
    }
    suspects
}

/// Check 2: fencing tokens strictly increase in start order.
fn check_fencing(history: &History, violations: &mut Vec<String>) {
    let started = history.started();
    for pair in started.windows(2) {
        match (pair[0].token, pair[1].token) {
            (Some(a), Some(b)) if b > a => {}
            (a, b) => violations.push(format!(
                "fencing: {} (token {a:?}) started before {} (token {b:?})",
                pair[0].identity, pair[1].identity
            )),
        }
    }
    for child in started.iter().filter(|c| c.token.is_none()) {
        violations.push(format!("fencing: {} got no MPSYNC_FENCING_TOKEN", child.identity));
    }
}

/// Check 3: a holder that lost the lease (partition, latency) or was killed stopped its child in time.
/// Returns, per fault kind, how many children the check covered and the latest a child was proven alive
/// after the fault (seconds).
fn check_stop_on_loss(history: &History, violations: &mut Vec<String>) -> BTreeMap<&'static str, (usize, f64)> {
    let by_identity: HashMap<&str, &Child> = history.children.iter().map(|c| (c.identity.as_str(), c)).collect();
    let mut covered: BTreeMap<&'static str, (usize, f64)> = BTreeMap::new();
    for fault in &history.faults {
        let bound = match fault.kind {
            Kind::Partition | Kind::Latency => RENEW_DEADLINE + GRACE + SLACK,
            Kind::Sigkill => SLACK,
            _ => continue,
        };
        let Some(child) = fault.wrapper.as_deref().and_then(|identity| by_identity.get(identity)) else {
            continue;
        };
        // Which children the argument covers (see the module comment): for a partition, those that
        // started before it healed (traffic flows again after that: a later acquisition is legitimate);
        // for latency, those that started before it began; for a SIGKILL, its only child.
        let covered_until = match fault.kind {
            Kind::Partition => fault.healed.expect("every partition healed"),
            Kind::Latency => fault.before,
            _ => Nanos::MAX,
        };
        if child.start.is_none_or(|start| start >= covered_until) {
            continue;
        }
        let entry = covered.entry(fault.kind.name()).or_insert((0, f64::NEG_INFINITY));
        entry.0 += 1;
        entry.1 = entry.1.max(secs_between(fault.after, child.proven_alive));
        if child.proven_alive > fault.after + nanos(bound) {
            violations.push(format!(
                "late stop: {}'s child (pid {}) was alive {:.3}s after the {} fault ({}) against its wrapper, \
                 beyond the {bound:?} bound",
                child.identity,
                child.pid,
                secs_between(fault.after, child.proven_alive),
                fault.kind.name(),
                fault.detail,
            ));
        }
    }
    covered
}

/// Check 4: handoffs went on after every fault healed.
fn check_liveness(history: &History, violations: &mut Vec<String>) -> usize {
    let after = history.started().iter().filter(|c| start_of(c) > history.healed).count();
    if history.recovery.is_none() {
        violations.push(format!(
            "liveness: only {after} children started within {AFTER_HEAL_LIMIT:?} after every fault healed \
             (want {HANDOFFS_AFTER_HEAL})"
        ));
    }
    after
}

/// Check 5: every wrapper exited as documented, and each child's parent is the wrapper it names.
fn check_exits(history: &History, violations: &mut Vec<String>) {
    for wrapper in &history.wrappers {
        let Some((_, status)) = wrapper.exit else {
            violations.push(format!("exit: {} (pid {}) never exited", wrapper.identity, wrapper.pid));
            continue;
        };
        let expected = match (status.code(), status.signal()) {
            (Some(0 | 123), _) => true,
            // Only our SIGTERM makes 143: while waiting, or forwarded to the child (its trap exits 143).
            // A child stopped for a loss exits 143 too, but then mpsync must exit 123.
            (Some(143), _) => wrapper.sigtermed,
            (None, Some(9)) => wrapper.sigkilled,
            // A SIGTERM that arrives while mpsync starts, before it handles signals, kills it (a shell
            // sees 143 all the same). Nothing can be held yet: it has not logged a line.
            (None, Some(15)) => wrapper.sigtermed && wrapper.stderr.is_empty(),
            _ => false,
        };
        if !expected || wrapper.hung || wrapper.stderr.contains("panicked") {
            violations.push(format!(
                "exit: {} (pid {}) {status}{}; stderr:\n{}",
                wrapper.identity,
                wrapper.pid,
                if wrapper.hung { ", hung after SIGTERM" } else { "" },
                wrapper.stderr.trim_end()
            ));
        }
    }
    let pids: HashMap<&str, i32> = history.wrappers.iter().map(|w| (w.identity.as_str(), w.pid)).collect();
    for child in &history.children {
        if pids.get(child.identity.as_str()) != Some(&child.ppid) {
            violations.push(format!(
                "identity: child pid {} with MPSYNC_IDENTITY {} has parent {}, but that wrapper's pid is {:?}",
                child.pid,
                child.identity,
                child.ppid,
                pids.get(child.identity.as_str())
            ));
        }
    }
}

/// The faults, the wrappers and their stderr, as text: written next to the log (kept on failure).
fn describe(history: &History) -> String {
    let origin = history.faults.first().map_or(0, |f| f.before);
    let mut text = String::from("faults (seconds from the first):\n");
    for fault in &history.faults {
        let _ = writeln!(
            text,
            "  {:>8.3}s {:<9} {:<3} {:<7} {} {}",
            secs_between(origin, fault.before),
            fault.kind.name(),
            fault.contender.map(|c| format!("c{c}")).unwrap_or_default(),
            fault.wrapper.as_deref().unwrap_or(""),
            fault.detail,
            fault.healed.map(|h| format!("(healed at {:.3}s)", secs_between(origin, h))).unwrap_or_default(),
        );
    }
    text.push_str("wrappers:\n");
    for wrapper in &history.wrappers {
        let exit = wrapper.exit.map(|(at, status)| format!("{status} at {:.3}s", secs_between(origin, at)));
        let _ = writeln!(text, "== {} pid {} {}", wrapper.identity, wrapper.pid, exit.unwrap_or_default());
        text.push_str(&wrapper.stderr);
    }
    text
}

#[test]
fn chaos_contenders_never_overlap_under_faults() {
    let env = TestEnv::kube();
    let real = env.server().is_none();
    let chaos_secs = env_number("MPSYNC_CHAOS_SECS").unwrap_or(DEFAULT_CHAOS_SECS);
    let seed = env_number("MPSYNC_CHAOS_SEED").unwrap_or_else(|| epoch_nanos() as u64);
    let mut rng = Rng::new(seed);
    let yaml = fs::read_to_string(&env.kubeconfig).expect("read the kubeconfig");
    let upstream = kubeconfig_upstream(&yaml).expect("a server: line in the kubeconfig");
    let proxies: Vec<FaultProxy> = (0..CONTENDERS).map(|_| FaultProxy::start(&upstream)).collect();
    let kubeconfigs = proxies
        .iter()
        .enumerate()
        .map(|(i, proxy)| {
            let path = env.path(&format!("kubeconfig-{i}"));
            fs::write(&path, proxy.kubeconfig_through(&yaml)).unwrap();
            path
        })
        .collect();
    let chaos = Chaos {
        env: &env,
        name: env.lease_name("chaos"),
        log: env.path("chaos.log"),
        kubeconfigs,
        contenders: Mutex::new(Contenders::default()),
        monitor: Monitor::default(),
    };
    eprintln!(
        "chaos: seed {seed} (MPSYNC_CHAOS_SEED), {chaos_secs}s of faults (MPSYNC_CHAOS_SECS), lease {}, log {}{}",
        chaos.name,
        chaos.log.display(),
        if real { ", real cluster: no 5xx bursts, commit-then-fail or restarts" } else { "" }
    );
    let began = Instant::now();
    let mut kinds =
        vec![(Kind::Partition, 3), (Kind::Latency, 2), (Kind::LateAnswer, 2), (Kind::Sigkill, 2), (Kind::Sigterm, 2)];
    if !real {
        kinds.extend([(Kind::Api5xx, 2), (Kind::CommitThenFail, 2), (Kind::Restart, 1)]);
    }
    // Every kind in the summary, those that happened not to be drawn too.
    let mut by_kind: BTreeMap<&str, usize> = kinds.iter().map(|(kind, _)| (kind.name(), 0)).collect();
    let contender_seeds: Vec<u64> = (0..CONTENDERS).map(|_| rng.next()).collect();
    let mut injector = Injector {
        chaos: &chaos,
        proxies: &proxies,
        server: env.server(),
        rng,
        kinds,
        deck: Vec::new(),
        active: Vec::new(),
        faults: Vec::new(),
        next_fault: Instant::now(),
        pending: None,
        end: Instant::now(),
        quiet_until: [None; CONTENDERS],
        armed_commit_fault: None,
    };

    let (healed, recovery) = chaos.run(&contender_seeds, || {
        injector.run(Duration::from_secs(chaos_secs));

        // Heal everything, then handoffs must go on.
        let healed = injector.heal_all();
        let heal_instant = Instant::now();
        let mut recovery = None;
        while heal_instant.elapsed() < AFTER_HEAL_LIMIT {
            if chaos.monitor.started_after(healed) >= HANDOFFS_AFTER_HEAL {
                recovery = Some(heal_instant.elapsed());
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        (healed, recovery)
    });
    let elapsed = began.elapsed();

    let history = History {
        children: read_children(&chaos.log, &chaos.monitor),
        wrappers: std::mem::take(&mut lock(&chaos.contenders).wrappers),
        faults: injector.faults,
        healed,
        recovery,
    };
    let mut violations: Vec<String> = Vec::new();
    let suspects = check_overlap(&history, &mut violations);
    check_fencing(&history, &mut violations);
    let covered = check_stop_on_loss(&history, &mut violations);
    let after_heal = check_liveness(&history, &mut violations);
    check_exits(&history, &mut violations);

    // The report.
    let description = describe(&history);
    fs::write(env.path("history.txt"), &description).unwrap();
    if let Some(keep) = std::env::var_os("MPSYNC_CHAOS_KEEP") {
        let keep = PathBuf::from(keep);
        fs::create_dir_all(&keep).unwrap();
        fs::copy(&chaos.log, keep.join("chaos.log")).unwrap();
        fs::write(keep.join("history.txt"), &description).unwrap();
    }
    for fault in &history.faults {
        *by_kind.entry(fault.kind.name()).or_default() += 1;
    }
    let fault_counts = by_kind.iter().map(|(k, n)| format!("{k}: {n}")).collect::<Vec<_>>().join(", ");
    let mut exits: BTreeMap<String, usize> = BTreeMap::new();
    for wrapper in &history.wrappers {
        let key = match wrapper.exit.map(|(_, status)| status) {
            Some(status) => {
                status.code().map_or_else(|| format!("signal {}", status.signal().unwrap_or(0)), |c| c.to_string())
            }
            None => "running".into(),
        };
        *exits.entry(key).or_default() += 1;
    }
    let started = history.started();
    let mut gaps: Vec<f64> =
        started.windows(2).filter_map(|pair| Some(secs_between(pair[0].end?, start_of(pair[1])))).collect();
    gaps.sort_by(f64::total_cmp);
    eprintln!("chaos: faults:\n{}", description.split("wrappers:\n").next().unwrap_or_default());
    eprintln!(
        "chaos: {} children ({} ended by their TERM trap, {} without an end stamp); wrapper exits {exits:?}; \
         handoff after a clean end: median {:.3}s, max {:.3}s; checked against a stop bound (count, latest \
         sign of life after the fault): {covered:.3?}; {suspects} unproven late deaths; {after_heal} children started after the heal (the first \
         {HANDOFFS_AFTER_HEAL} within {:?}); ran {:.1}s",
        started.len(),
        started.iter().filter(|c| c.term).count(),
        started.iter().filter(|c| c.end.is_none()).count(),
        gaps.get(gaps.len() / 2).copied().unwrap_or(0.0),
        gaps.last().copied().unwrap_or(0.0),
        history.recovery,
        elapsed.as_secs_f64(),
    );
    for violation in &violations {
        eprintln!("chaos: VIOLATION {violation}");
    }
    eprintln!(
        "chaos: {} handoffs, faults {{{fault_counts}}}, violations: {}",
        started.len().saturating_sub(1),
        violations.len()
    );
    if real {
        env.delete(&chaos.name);
    }
    assert!(
        violations.is_empty(),
        "{} violations (seed {seed}); the log and history.txt (faults, each wrapper's stderr) are kept in {}",
        violations.len(),
        env.dir.display()
    );
    assert!(started.len() > HANDOFFS_AFTER_HEAL, "too few children ran: {}", started.len());
}

/// The checker is not vacuous: a holder frozen (SIGSTOP to mpsync and to its child's group) for longer than
/// the lease, which the README lists among what mpsync cannot guarantee, lets another child start while the
/// frozen one still exists, and check 1 proves the overlap.
#[test]
fn chaos_checker_proves_the_overlap_of_a_frozen_holder() {
    let env = TestEnv::kube();
    let chaos = Chaos {
        env: &env,
        name: env.lease_name("frozen"),
        log: env.path("chaos.log"),
        kubeconfigs: vec![env.kubeconfig.clone(); 2],
        contenders: Mutex::new(Contenders::default()),
        monitor: Monitor::default(),
    };
    let mut rng = Rng::new(epoch_nanos() as u64);
    let seeds = [rng.next(), rng.next()];
    let frozen = chaos.run(&seeds, || {
        // A holder whose child just started a long hold: it will still run when the lease expires.
        let deadline = Instant::now() + PATIENCE;
        let (identity, child) = loop {
            if let Some((identity, sighting)) = chaos.monitor.running()
                && lock(&chaos.contenders).wrappers.iter().any(|w| w.identity == identity && w.long)
                && epoch_nanos() < sighting.start + nanos(Duration::from_millis(500))
            {
                break (identity, sighting.pid);
            }
            assert!(Instant::now() < deadline, "no long child started within {PATIENCE:?}");
            thread::sleep(Duration::from_millis(10));
        };
        let wrapper = lock(&chaos.contenders).wrappers.iter().find(|w| w.identity == identity).expect("wrapper").pid;
        let group = Pid::from_raw(-child);
        // Freeze mpsync, its guard (which would otherwise kill the child at the lease's deadline: the
        // documented limit is a freeze of both, or of the whole machine) and the child.
        let guards = guard_pids(wrapper);
        let _ = kill(Pid::from_raw(wrapper), Signal::SIGSTOP);
        for guard in &guards {
            let _ = kill(Pid::from_raw(*guard), Signal::SIGSTOP);
        }
        let _ = kill(group, Signal::SIGSTOP);
        let frozen_at = epoch_nanos();
        let deadline = Instant::now() + PATIENCE;
        while chaos.monitor.started_after(frozen_at) == 0 {
            assert!(Instant::now() < deadline, "nobody took over from a frozen holder within {PATIENCE:?}");
            thread::sleep(Duration::from_millis(10));
        }
        let _ = kill(group, Signal::SIGCONT);
        for guard in &guards {
            let _ = kill(Pid::from_raw(*guard), Signal::SIGCONT);
        }
        let _ = kill(Pid::from_raw(wrapper), Signal::SIGCONT);
        identity
    });
    let history = History {
        children: read_children(&chaos.log, &chaos.monitor),
        wrappers: std::mem::take(&mut lock(&chaos.contenders).wrappers),
        faults: Vec::new(),
        healed: 0,
        recovery: None,
    };
    let mut violations = Vec::new();
    check_overlap(&history, &mut violations);
    eprintln!("chaos: the checker on a frozen holder ({frozen}): {violations:#?}");
    assert!(
        violations.iter().any(|v| v.starts_with("overlap:") && v.contains(&format!("while {frozen} "))),
        "check 1 missed the overlap of the frozen holder {frozen}: {violations:?}"
    );
}

/// The guard processes (`mpsync-guard`) of the mpsync process `parent`.
fn guard_pids(parent: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { return false };
            let comm = &stat[open + 1..close];
            let ppid = stat[close + 1..].split_whitespace().nth(1).and_then(|p| p.parse::<i32>().ok());
            comm == "mpsync-guard" && ppid == Some(parent)
        })
        .collect()
}
