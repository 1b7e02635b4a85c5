//! Adversarial reproductions against the state machine (see the adversary report on the branch
//! `adversary1`). Each test drives `Elector`s step by step, as the engine does, against a store that
//! behaves like one of the real backends, and checks the promise: at most one child runs per lease.
//!
//! Tests marked `#[ignore]` fail on the code as it stands: they are the reproductions. Run them with
//! `cargo test --lib lease_adversary -- --ignored`.

use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;

use super::*;

/// The test suite's FAST timings: lease 4s, renew deadline 2s, retry 500ms (grace 1s).
const TIMING: Timing = Timing {
    lease_duration: Duration::from_secs(4),
    renew_deadline: Duration::from_secs(2),
    retry_period: Duration::from_millis(500),
};

/// The file backend's store (`src/store/file/`), reduced to its compare-and-swap as it now is: the
/// resourceVersion grows by one on every write and keeps growing across a deletion of the record file
/// (`rm NAME.json`); the last record is kept (`.NAME.last`), and a create whose token is not above the
/// last one puts the last record back and conflicts, so a deletion resets neither versions nor tokens.
#[derive(Default)]
struct FileLike {
    current: Option<Versioned>,
    last: Option<Versioned>,
    version: u64,
}

impl FileLike {
    fn get(&self) -> Option<Versioned> {
        self.current.clone()
    }

    fn write(&mut self, write: &Write) -> WriteResult {
        match (write.resource_version(), &self.current) {
            (None, None) => {
                let token = write.record.lease_transitions.unwrap_or(0);
                if let Some(last) = &self.last
                    && token <= last.record.lease_transitions.unwrap_or(0)
                {
                    self.current = Some(last.clone());
                    return WriteResult::Conflict;
                }
            }
            (Some(rv), Some(current)) if rv == current.resource_version => {}
            _ => return WriteResult::Conflict,
        }
        self.version += 1;
        let stored = Versioned::new(self.version.to_string(), write.record.clone());
        self.current = Some(stored.clone());
        self.last = Some(stored.clone());
        WriteResult::Applied(stored)
    }

    fn remove(&mut self) {
        self.current = None;
    }

    fn version(&self) -> u64 {
        self.current.as_ref().map_or(0, |v| v.resource_version.parse().unwrap())
    }
}

/// One mpsync process: its elector and whether its child runs.
struct Process {
    elector: Elector,
    child_running: bool,
}

impl Process {
    fn new(identity: &str) -> Process {
        Process { elector: Elector::new(identity, TIMING), child_running: false }
    }
}

struct World {
    t0: Instant,
    now: Instant,
    wall: i64,
    store: FileLike,
}

impl World {
    fn new() -> World {
        let t0 = Instant::now();
        World { t0, now: t0, wall: 0, store: FileLike::default() }
    }

    fn at(&mut self, seconds: f64) {
        let target = self.t0 + Duration::from_secs_f64(seconds);
        assert!(target >= self.now, "time only goes forward");
        self.now = target;
    }

    fn clock(&mut self) -> Now {
        self.wall += 1;
        Now::at(self.now, MicroTime(Timestamp::from_second(1_800_000_000 + self.wall).unwrap()))
    }

    /// What the engine does on one wake-up of a slot: ask, then carry out the read or the write (answered
    /// at once). Returns the action taken.
    fn act(&mut self, process: &mut Process) -> Action {
        let now = self.clock();
        let action = process.elector.next(now);
        match &action {
            Action::Read => process.elector.observe(self.store.get(), self.now),
            Action::Write(write) => {
                let ticket = process.elector.write_sent(write, self.now);
                let result = self.store.write(write);
                process.elector.write_result(ticket, result, self.now);
            }
            Action::Lost(_) => {
                // The driver stops the child (within the grace) and campaigns afresh.
                process.child_running = false;
                process.elector.forget_loss();
            }
            Action::WaitUntil(_) | Action::Refuse(_) => {}
        }
        if process.elector.usable(self.now) {
            process.child_running = true;
        }
        action
    }

    /// Act until the process has nothing to do right now (it waits, or it holds and is not due).
    fn settle(&mut self, process: &mut Process) {
        for _ in 0..20 {
            if let Action::WaitUntil(_) = self.act(process) {
                return;
            }
        }
    }
}

fn assert_at_most_one_child(world: &World, a: &Process, b: &Process) {
    assert!(
        !(a.child_running && b.child_running),
        "two children run at {:?}: {} (holds {:?}) and {} (holds {:?}); the file holds {:?}",
        world.now - world.t0,
        a.elector.identity(),
        a.elector.held().map(|h| h.fencing_token),
        b.elector.identity(),
        b.elector.held().map(|h| h.fencing_token),
        world.store.get().map(|v| (v.resource_version, v.record.holder_identity)),
    );
}

/// Finding 4 (file backend), against the store as it now is. `rm NAME.json` while `h` (an `elect` holder
/// that never had to wait, so it has no watch) holds the lease at resourceVersion 12, and a fresh process
/// `x` (it never saw the record) comes along. Before, x created the record at once with resourceVersion
/// "1", h ignored it as "older", and once x's renewals brought the counter back to 12, h's replace landed
/// on x's live record (ABA) and two children ran. Now the store keeps the last record across the deletion:
/// x's create puts h's record back and conflicts, x reads it and waits, and h renews on as if nothing
/// happened. Nobody runs beside anybody, for as long as the test runs.
#[test]
fn deleting_the_file_record_under_a_holder_lets_no_fresh_process_in() {
    let mut world = World::new();
    let mut h = Process::new("h");
    let mut x = Process::new("x");

    // h acquires at once and renews every 500ms up to resourceVersion 12.
    world.settle(&mut h);
    assert!(h.child_running);
    let mut t = 0.0;
    while world.store.version() < 12 {
        t += 0.5;
        world.at(t);
        world.settle(&mut h);
    }

    // rm NAME.json; x starts after that: its create conflicts and brings h's record back.
    world.at(t + 0.1);
    world.store.remove();
    world.settle(&mut x);
    assert!(!x.child_running, "x took a lease whose record was deleted under a live holder");
    assert_eq!(world.store.get().and_then(|v| v.record.holder_identity).as_deref(), Some("h"));

    // From here on both act on their timers, for 12 s: h keeps its lease, x waits.
    let mut step = t + 0.1;
    while step < t + 12.0 {
        step += 0.05;
        world.at(step);
        world.settle(&mut x);
        world.settle(&mut h);
        assert_at_most_one_child(&world, &h, &x);
    }
    assert!(h.child_running && h.elector.held().is_some(), "h kept its lease");
    assert!(!x.child_running);
}
