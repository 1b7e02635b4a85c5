//! Model-based property tests of the lease state machine: several processes (two of them sharing one
//! identity) contend for one lease on a simulated compare-and-swap server, under arbitrary
//! interleavings of everything the real world does separately:
//!
//! - a call's *send*, the server *processing* it, and its *answer* are three events; answers come late,
//!   are lost (the client times out: outcome unknown), or fail after the server committed (500/504, a
//!   dropped connection); a request the client gave up on may still be processed later;
//! - watch events reach each process late, in order, or are replaced by a relist; some may have arrived
//!   unread when a process takes the driver's last look before it sends an acquisition;
//! - the Lease is deleted under a holder (`kubectl delete lease`);
//! - children exit on their own, and their process releases the lease.
//!
//! Processes act on their timers exactly as the driver does (they wake at every `WaitUntil` and at the
//! renew deadline), and a child runs from the moment its process holds the lease until it exits, or until
//! `grace` after its process found the lease lost.
//!
//! Checked after every step:
//!
//! 1. At most one child runs: a child starts only when every other child is dead.
//! 2. A process that holds the lease has a write that the server *applied* and that was sent less than
//!    `renew_deadline` ago (so its child is dead by `renew_deadline + grace` after that send).
//! 3. Fencing tokens of successive children strictly increase.
//! 4. A hold whose renew deadline has passed is never renewed, even when a renewal's success is
//!    learned later (a `Stall`: the process did not run at its deadline): its child was stopped by the
//!    clock (the CLI's guard, the library's watchdog), so its work has been told it is lost.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;

use super::*;

const TIMING: Timing = Timing {
    lease_duration: Duration::from_secs(4),
    renew_deadline: Duration::from_secs(2),
    retry_period: Duration::from_millis(500),
};
/// lease_duration - renew_deadline - 1s, as the CLI's default.
const GRACE: Duration = Duration::from_secs(1);
const IDENTITIES: [&str; 3] = ["a", "b", "a"];

#[derive(Clone, Copy, Debug)]
enum Reply {
    /// The result as processed.
    Normal,
    /// The connection broke or the server failed after processing: the client learns nothing.
    Fail,
}

#[derive(Clone, Debug)]
enum Step {
    /// Let time pass; processes act on their timers meanwhile.
    Advance(u64),
    /// A process acts now (as on any wake-up).
    Tick(usize),
    /// A process acts now, and before it sends an acquisition takes the driver's last look at its watch:
    /// the first `k` events on their way to it have arrived (received, not yet read).
    LookAndTick(usize, usize),
    /// The server processes the oldest request it has not processed yet, of this process (or any).
    Process(usize),
    /// The answer to a process's current call arrives.
    Answer(usize, Reply),
    /// The process's current call times out; its request may still be processed later.
    Timeout(usize),
    /// The next watch event reaches a process.
    Deliver(usize),
    /// A process's watch restarts: pending events are dropped and a list shows the current state.
    Relist(usize),
    /// A process's child exits on its own.
    ChildExits(usize),
    /// Someone deletes the Lease.
    Delete,
    /// Someone edits the Lease by hand (`kubectl patch`): clears its holder (`true`), or makes its
    /// duration 1 s, leaving acquireTime, renewTime and token as they are.
    Edit(bool),
    /// Someone deletes the Lease and creates it again, free (`kubectl replace --force`, a manifest put
    /// back): a new uid, no acquireTime.
    Recreate,
    /// Time passes while one process does not run (a busy runtime, a stopped process): the others act on
    /// their timers; its child is stopped by the clock at its renew deadline (the CLI's guard and the
    /// library's watchdog run apart from the runtime), and it learns the rest when it next acts.
    Stall(usize, u64),
    /// A process brings its next renewal forward to now, as after a renewal's 409 whose read showed the
    /// hold still ours (`Elector::renew_now`; the model sends it at any moment, which is more).
    RenewNow(usize),
}

fn step() -> impl Strategy<Value = Step> {
    let process = 0..IDENTITIES.len();
    prop_oneof![
        4 => (0u64..1500).prop_map(Step::Advance),
        3 => process.clone().prop_map(Step::Tick),
        3 => (process.clone(), 1usize..4).prop_map(|(p, k)| Step::LookAndTick(p, k)),
        5 => process.clone().prop_map(Step::Process),
        4 => (process.clone(), prop_oneof![3 => Just(Reply::Normal), 1 => Just(Reply::Fail)])
            .prop_map(|(p, a)| Step::Answer(p, a)),
        1 => process.clone().prop_map(Step::Timeout),
        4 => process.clone().prop_map(Step::Deliver),
        1 => process.clone().prop_map(Step::Relist),
        1 => process.clone().prop_map(Step::ChildExits),
        1 => (process.clone(), 0u64..3000).prop_map(|(p, millis)| Step::Stall(p, millis)),
        1 => process.prop_map(Step::RenewNow),
        1 => Just(Step::Delete),
        1 => any::<bool>().prop_map(Step::Edit),
        1 => Just(Step::Recreate),
    ]
}

#[derive(Clone, Debug)]
enum Kind {
    Read,
    Write(Write),
}

#[derive(Clone, Debug)]
enum Processed {
    Read(Option<Versioned>),
    Write(WriteResult),
}

#[derive(Debug)]
struct Request {
    id: u64,
    process: usize,
    kind: Kind,
    sent_at: Instant,
    processed: Option<Processed>,
}

#[derive(Debug)]
struct Child {
    token: i32,
    /// The renew deadline of its process's hold, as the clock that stops it (the CLI's guard, the
    /// library's watchdog) last knew it: it stays when the process notes a loss but has not acted on it.
    deadline: Instant,
    /// When it is dead for sure: set when it exits, or when its process found the lease lost (+ grace).
    dead_by: Option<Instant>,
}

#[derive(Debug)]
struct Proc {
    elector: Elector,
    /// The request this process waits for, with its ticket for a write.
    call: Option<(u64, Option<Ticket>)>,
    events: VecDeque<WatchUpdate>,
    child: Option<Child>,
    /// The child exited: give the lease back, then campaign again.
    releasing: bool,
    /// Sends of this process's writes that the server applied, while this process wanted to hold.
    applied_sends: Vec<Instant>,
    refused: bool,
    /// Acquisitions (acquireTime, token) this process held at or after their renew deadline, with that
    /// deadline.
    expired: Vec<((Option<MicroTime>, i32), Instant)>,
}

struct World {
    t0: Instant,
    now: Instant,
    wall_seconds: i64,
    server: Option<Versioned>,
    version: u64,
    requests: Vec<Request>,
    next_request: u64,
    procs: Vec<Proc>,
    last_token: Option<i32>,
    /// The process that started the last child.
    last_child_of: Option<usize>,
    children_started: usize,
    /// How many times the Lease was deleted so far.
    deletions: u32,
    /// Every acquisition (acquireTime, token) the server committed, with how many deletions had happened
    /// by its first commit: the Lease's incarnation it belongs to.
    incarnations: Vec<((Option<MicroTime>, i32), u32)>,
    /// The incarnation of the last child's acquisition.
    last_child_incarnation: u32,
}

impl World {
    fn new() -> World {
        World::believing_in(1.0)
    }

    /// Every process starts believing in `contenders` (1: it knows nothing yet), with the widest spread
    /// per contender.
    fn believing_in(contenders: f64) -> World {
        World::believing(|_| contenders)
    }

    /// Process 2 is a side-car (it adopts the records a side-car wrote under its identity, as its pod's);
    /// process 0 is a plain process with the same identity (`lock` given the pod's name), whose records
    /// the side-car must never adopt.
    fn with_a_side_car() -> World {
        let mut world = World::new();
        let mut side_car = Elector::adopting("a", TIMING).with_seed(3);
        side_car.set_watching(true);
        world.procs[2].elector = side_car;
        world
    }

    /// Process `p` starts believing in `contenders(p)` contenders.
    fn believing(contenders: impl Fn(usize) -> f64) -> World {
        let t0 = Instant::now();
        World {
            t0,
            now: t0,
            wall_seconds: 0,
            server: None,
            version: 100,
            requests: Vec::new(),
            next_request: 0,
            procs: IDENTITIES
                .iter()
                .enumerate()
                .map(|(p, identity)| Proc {
                    elector: {
                        // Watching, as waiters do: lost races wait for events; freed leases are staggered.
                        let mut elector = Elector::new(*identity, TIMING).with_seed(p as u64 + 1);
                        elector.set_watching(true);
                        if contenders(p) > 1.0 {
                            elector.contenders = contenders(p);
                            elector.write_lag = Some(MAX_STAGGER_PER_CONTENDER);
                        }
                        elector
                    },
                    call: None,
                    events: VecDeque::new(),
                    child: None,
                    releasing: false,
                    applied_sends: Vec::new(),
                    refused: false,
                    expired: Vec::new(),
                })
                .collect(),
            last_token: None,
            last_child_of: None,
            children_started: 0,
            deletions: 0,
            incarnations: Vec::new(),
            last_child_incarnation: 0,
        }
    }

    fn clock(&mut self) -> Now {
        // Whole seconds would repeat; a counter keeps every written time distinct, as real clocks do.
        self.wall_seconds += 1;
        Now::at(self.now, MicroTime(Timestamp::from_second(1_800_000_000 + self.wall_seconds).unwrap()))
    }

    fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    /// An edit by hand of the stored record, if there is one: the holder cleared, or the duration 1 s.
    fn edit(&mut self, clear: bool) {
        let Some(mut edited) = self.server.clone() else { return };
        match clear {
            true => edited.record.holder_identity = Some(String::new()),
            false => edited.record.lease_duration_seconds = Some(1),
        }
        self.commit(Some(edited));
    }

    /// The Lease deleted and made again, free, with the next uid.
    fn recreate(&mut self) {
        let Some(mut again) = self.server.clone() else { return };
        self.commit(None);
        again.record.holder_identity = Some(String::new());
        again.record.lease_duration_seconds = Some(1);
        again.record.acquire_time = None;
        again.metadata.uid = Some(format!("uid-{}", self.deletions));
        self.commit(Some(again));
    }

    fn commit(&mut self, stored: Option<Versioned>) {
        self.version += 1;
        let stored = stored.map(|mut v| {
            v.resource_version = self.version.to_string();
            v.metadata.resource_version = Some(v.resource_version.clone());
            v
        });
        let event = match &stored {
            Some(v) => WatchUpdate::Present(v.clone()),
            None => WatchUpdate::Deleted { resource_version: self.version.to_string() },
        };
        if let Some(v) = &stored {
            let acquisition = (v.record.acquire_time.clone(), v.record.lease_transitions.unwrap_or(0));
            if !self.incarnations.iter().any(|(known, _)| *known == acquisition) {
                self.incarnations.push((acquisition, self.deletions));
            }
        } else {
            self.deletions += 1;
        }
        self.server = stored;
        for proc in &mut self.procs {
            proc.events.push_back(event.clone());
        }
    }

    /// When process `p` next acts on its own: now if it has something to send, else its timer.
    fn wake(&mut self, p: usize) -> Option<Instant> {
        let now = self.clock();
        let proc = &mut self.procs[p];
        if proc.refused {
            return None;
        }
        if let Some(dead_by) = proc.child.as_ref().and_then(|c| c.dead_by) {
            return Some(dead_by);
        }
        if proc.releasing {
            return proc.call.is_none().then_some(now.instant);
        }
        let deadline = proc.elector.held().map(|h| h.deadline(TIMING));
        match proc.elector.next(now.clone()) {
            Action::WaitUntil(at) => Some(at),
            Action::Lost(_) | Action::Refuse(_) => Some(now.instant),
            _ if proc.call.is_none() => Some(now.instant),
            _ => deadline,
        }
    }

    fn send(&mut self, p: usize, kind: Kind, ticket: Option<Ticket>) {
        let id = self.next_request;
        self.next_request += 1;
        self.requests.push(Request { id, process: p, kind, sent_at: self.now, processed: None });
        self.procs[p].call = Some((id, ticket));
    }

    /// Process `p` acts now, as the driver does on a wake-up.
    fn tick(&mut self, p: usize) -> Result<(), TestCaseError> {
        self.look_and_tick(p, 0)
    }

    /// Process `p` acts now; before it sends an acquisition, the first `arrived` events on their way to it
    /// have reached it and it looks at them, as the driver's last look does (`Slot::last_look`): if there
    /// were any, it sends nothing and counts a race lost when they show the lease taken; it acts again on
    /// its next wake-up.
    fn look_and_tick(&mut self, p: usize, arrived: usize) -> Result<(), TestCaseError> {
        let now = self.clock();
        if self.procs[p].refused {
            return Ok(());
        }
        // A child on its way out: once it is dead, the process campaigns again.
        if let Some(child) = &self.procs[p].child
            && let Some(dead_by) = child.dead_by
        {
            if self.now >= dead_by {
                self.procs[p].child = None;
                if self.procs[p].elector.loss().is_some() {
                    self.procs[p].elector.forget_loss();
                }
            }
            return Ok(());
        }
        if self.procs[p].releasing {
            if self.procs[p].call.is_none() {
                match self.procs[p].elector.release(now.clone()) {
                    Some(write) => {
                        let ticket = self.procs[p].elector.write_sent(&write, self.now);
                        self.send(p, Kind::Write(write), Some(ticket));
                    }
                    None => {
                        self.procs[p].elector.released();
                        self.procs[p].releasing = false;
                    }
                }
            }
            return Ok(());
        }
        match self.procs[p].elector.next(now) {
            Action::Lost(_) => match &mut self.procs[p].child {
                // The driver stops the child: the kill signal, then SIGKILL after the grace.
                Some(child) => child.dead_by = Some(self.now + GRACE),
                None => self.procs[p].elector.forget_loss(),
            },
            Action::Refuse(_) => self.procs[p].refused = true,
            Action::Read if self.procs[p].call.is_none() => self.send(p, Kind::Read, None),
            Action::Write(_)
                if self.procs[p].call.is_none()
                    && self.procs[p].elector.held().is_none()
                    && arrived > 0
                    && !self.procs[p].events.is_empty() =>
            {
                for _ in 0..arrived {
                    self.deliver(p)?;
                }
                let now = self.clock();
                if !matches!(self.procs[p].elector.next(now), Action::Write(_)) {
                    self.procs[p].elector.beaten_before_sending();
                }
                return Ok(());
            }
            Action::Write(write) if self.procs[p].call.is_none() => {
                let ticket = self.procs[p].elector.write_sent(&write, self.now);
                self.send(p, Kind::Write(write), Some(ticket));
            }
            _ => {}
        }
        self.start_child_if_held(p)
    }

    /// A process that holds the lease and runs no child starts one: every other must be dead.
    fn start_child_if_held(&mut self, p: usize) -> Result<(), TestCaseError> {
        let Some(held) = self.procs[p].elector.held().cloned() else {
            return Ok(());
        };
        if self.procs[p].child.is_some() || self.procs[p].releasing || !self.procs[p].elector.usable(self.now) {
            return Ok(());
        }
        for (q, other) in self.procs.iter().enumerate() {
            if q == p {
                continue;
            }
            if let Some(child) = &other.child {
                let alive = child.dead_by.is_none_or(|dead_by| dead_by > self.now);
                prop_assert!(
                    !alive,
                    "process {p} ({}) starts a child at {:?} while process {q}'s child (token {}) runs \
                     (dead by {:?})",
                    IDENTITIES[p],
                    self.elapsed(),
                    child.token,
                    child.dead_by.map(|d| d - self.t0)
                );
            }
        }
        let acquisition = (held.acquire_time.clone(), held.fencing_token);
        let incarnation =
            self.incarnations.iter().find(|(known, _)| *known == acquisition).map_or(self.deletions, |(_, at)| *at);
        if let Some(last) = self.last_token {
            // Deleting the Lease resets tokens for a process that never saw the larger ones (the README says
            // so); any process that did see them continues from there. What counts is a deletion between the
            // two acquisitions, not between the two children's starts: a process that learns late that its
            // write was applied starts its child after a deletion that came after that write.
            let saw_larger = self.procs[p].elector.token_floor.is_some_and(|floor| floor > held.fencing_token);
            let reset_allowed = incarnation > self.last_child_incarnation && !saw_larger;
            // The side-car adopts its pod's record with its token: after its own last child, with nobody
            // else's between, the same token again.
            let adopted_again =
                self.procs[p].elector.adopt && self.last_child_of == Some(p) && held.fencing_token == last;
            prop_assert!(
                held.fencing_token > last || reset_allowed || adopted_again,
                "token {} after {last} (process {p}, incarnations {} after {})",
                held.fencing_token,
                incarnation,
                self.last_child_incarnation
            );
        }
        self.last_child_incarnation = incarnation;
        self.last_token = Some(held.fencing_token);
        self.last_child_of = Some(p);
        self.children_started += 1;
        self.procs[p].child = Some(Child { token: held.fencing_token, deadline: held.deadline(TIMING), dead_by: None });
        Ok(())
    }

    fn process(&mut self, p: usize) {
        let Some(index) = self
            .requests
            .iter()
            .position(|r| r.processed.is_none() && r.process == p)
            .or_else(|| self.requests.iter().position(|r| r.processed.is_none()))
        else {
            return;
        };
        let kind = self.requests[index].kind.clone();
        let processed = match kind {
            Kind::Read => Processed::Read(self.server.clone()),
            Kind::Write(write) => {
                let cas = match (write.resource_version(), &self.server) {
                    (None, None) => true,
                    (Some(rv), Some(current)) => rv == current.resource_version,
                    _ => false,
                };
                if cas {
                    let mut stored = Versioned {
                        resource_version: String::new(),
                        record: write.record.clone(),
                        metadata: write.metadata.clone(),
                    };
                    // As an API server: a uid per Lease made, kept by every replace.
                    stored.metadata.uid = match &self.server {
                        Some(current) => current.metadata.uid.clone(),
                        None => Some(format!("uid-{}", self.deletions)),
                    };
                    self.commit(Some(stored));
                    let writer = self.requests[index].process;
                    let sent_at = self.requests[index].sent_at;
                    self.procs[writer].applied_sends.push(sent_at);
                    Processed::Write(WriteResult::Applied(self.server.clone().expect("just committed")))
                } else {
                    Processed::Write(WriteResult::Conflict)
                }
            }
        };
        self.requests[index].processed = Some(processed);
    }

    fn answer(&mut self, p: usize, answer: Reply) -> Result<(), TestCaseError> {
        let Some((id, ticket)) = self.procs[p].call.clone() else {
            return Ok(());
        };
        let Some(request) = self.requests.iter().find(|r| r.id == id) else {
            return Ok(());
        };
        let Some(processed) = request.processed.clone() else {
            return Ok(());
        };
        self.procs[p].call = None;
        let now = self.now;
        let elector = &mut self.procs[p].elector;
        match (processed, answer, ticket) {
            (Processed::Read(current), Reply::Normal, _) => elector.observe(current, now),
            (Processed::Read(_), Reply::Fail, _) => elector.want_read(),
            (Processed::Write(result), Reply::Normal, Some(ticket)) => elector.write_result(ticket, result, now),
            (Processed::Write(_), Reply::Fail, Some(ticket)) => elector.write_result(ticket, WriteResult::Unknown, now),
            (Processed::Write(_), _, None) => unreachable!("writes carry tickets"),
        }
        self.after_release(p);
        self.start_child_if_held(p)
    }

    fn timeout(&mut self, p: usize) {
        let Some((_, ticket)) = self.procs[p].call.take() else {
            return;
        };
        let now = self.now;
        match ticket {
            Some(ticket) => self.procs[p].elector.write_result(ticket, WriteResult::Unknown, now),
            None => self.procs[p].elector.want_read(),
        }
    }

    fn after_release(&mut self, p: usize) {
        let proc = &mut self.procs[p];
        if proc.releasing && proc.elector.held().is_none() && !proc.elector.unresolved_write() && proc.call.is_none() {
            proc.elector.released();
            proc.releasing = false;
        }
    }

    fn deliver(&mut self, p: usize) -> Result<(), TestCaseError> {
        if let Some(event) = self.procs[p].events.pop_front() {
            let now = self.now;
            self.procs[p].elector.observe_event(event, now);
            self.after_release(p);
            self.start_child_if_held(p)?;
        }
        Ok(())
    }

    fn relist(&mut self, p: usize) -> Result<(), TestCaseError> {
        let listed = match &self.server {
            Some(current) => WatchUpdate::Present(current.clone()),
            None => WatchUpdate::Absent { resource_version: self.version.to_string() },
        };
        self.procs[p].events.clear();
        self.procs[p].events.push_back(listed);
        self.deliver(p)
    }

    fn child_exits(&mut self, p: usize) {
        let now = self.now;
        let proc = &mut self.procs[p];
        if let Some(child) = &mut proc.child
            && child.dead_by.is_none()
        {
            child.dead_by = Some(now);
            proc.child = None;
            proc.releasing = true;
        }
    }

    fn everyone_saw_the_holder(&self) -> bool {
        let Some(server) = &self.server else { return false };
        let acquisition = |r: &LeaseSpec| (r.holder_identity.clone(), r.acquire_time.clone(), r.lease_transitions);
        server.record.holder_identity.as_deref().unwrap_or("").is_empty()
            || self.procs.iter().all(|p| {
                p.elector.current().is_some_and(|known| acquisition(&known.record) == acquisition(&server.record))
            })
    }

    /// Let `millis` pass, waking every process at its timers on the way.
    fn advance(&mut self, millis: u64) -> Result<(), TestCaseError> {
        self.advance_without(None, millis)
    }

    /// Let `millis` pass while process `stalled` does not run: the others wake at their timers, and its
    /// child is stopped at its renew deadline by the clock alone.
    fn stall(&mut self, stalled: usize, millis: u64) -> Result<(), TestCaseError> {
        let target = self.now + Duration::from_millis(millis);
        let held = self.procs[stalled].elector.held().map(|held| held.deadline(TIMING));
        if let Some(child) = self.procs[stalled].child.as_mut()
            && let deadline = held.unwrap_or(child.deadline)
            && deadline <= target
            && child.dead_by.is_none()
        {
            child.dead_by = Some(deadline.max(self.now) + GRACE);
        }
        self.advance_without(Some(stalled), millis)
    }

    fn advance_without(&mut self, stalled: Option<usize>, millis: u64) -> Result<(), TestCaseError> {
        let target = self.now + Duration::from_millis(millis);
        for _ in 0..10_000 {
            let next = (0..self.procs.len())
                .filter(|p| Some(*p) != stalled)
                .filter_map(|p| self.wake(p).map(|at| (at, p)))
                .min();
            match next {
                Some((at, p)) if at <= target => {
                    self.now = self.now.max(at);
                    self.tick(p)?;
                    self.check_held()?;
                }
                _ => break,
            }
        }
        self.now = target;
        Ok(())
    }

    /// Property 2: holding means an applied write of ours was sent within the renew deadline. Property 4:
    /// a hold seen at or past its deadline is never renewed. (Looking changes nothing: the elector is
    /// asked through a copy, so that a check never records a loss the process itself has not seen.)
    fn check_held(&mut self) -> Result<(), TestCaseError> {
        for p in 0..self.procs.len() {
            if let Some(deadline) = self.procs[p].elector.held().map(|held| held.deadline(TIMING))
                && let Some(child) = self.procs[p].child.as_mut()
            {
                child.deadline = deadline;
            }
            if let Some(held) = self.procs[p].elector.held() {
                let acquisition = (held.acquire_time.clone(), held.fencing_token);
                let deadline = held.deadline(TIMING);
                let passed = self.procs[p].expired.iter().find(|(known, _)| *known == acquisition).map(|(_, at)| *at);
                // A write sent after the deadline is a new hold (the side-car adopts its record again with
                // its acquireTime and token); one sent before it would be the old hold revived.
                prop_assert!(
                    passed.is_none_or(|passed| deadline <= passed || held.last_renew_sent >= passed),
                    "process {p} renewed, at {:?}, the acquisition {acquisition:?} whose renew deadline had passed \
                     at {:?}",
                    self.elapsed(),
                    passed.map(|at| at - self.t0)
                );
                if self.now >= deadline && passed.is_none() {
                    self.procs[p].expired.push((acquisition, deadline));
                }
            }
            let now = self.clock();
            if self.procs[p].elector.held().is_none()
                || matches!(self.procs[p].elector.clone().next(now), Action::Lost(_))
            {
                continue;
            }
            let last_applied = self.procs[p].applied_sends.iter().max().copied();
            prop_assert!(
                last_applied.is_some_and(|sent| self.now < sent + TIMING.renew_deadline),
                "process {p} holds at {:?} but its last applied write was sent at {:?}",
                self.elapsed(),
                last_applied.map(|sent| sent - self.t0)
            );
        }
        Ok(())
    }
}

/// How many cases a property tries: `usual`, or `PROPTEST_CASES` for a deeper search by hand
/// (`PROPTEST_CASES=50000 cargo test --lib lease::properties`).
fn cases(usual: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(usual)
}

fn run(steps: Vec<Step>) -> Result<World, TestCaseError> {
    run_in(World::new, steps)
}

fn run_in(world: fn() -> World, steps: Vec<Step>) -> Result<World, TestCaseError> {
    let result = run_traced(world(), steps.clone(), false);
    if result.is_err() && std::env::var_os("MPSYNC_MODEL_TRACE").is_some() {
        // Once more, showing every step and the state after it.
        let _ = run_traced(world(), steps, true);
    }
    result
}

fn run_traced(mut world: World, steps: Vec<Step>, trace: bool) -> Result<World, TestCaseError> {
    for step in steps {
        if trace {
            eprintln!("{:>8.3?} {step:?}", world.elapsed());
        }
        match step {
            Step::Advance(millis) => world.advance(millis)?,
            Step::Tick(p) => world.tick(p)?,
            Step::LookAndTick(p, arrived) => world.look_and_tick(p, arrived)?,
            Step::Process(p) => world.process(p),
            Step::Answer(p, answer) => world.answer(p, answer)?,
            Step::Timeout(p) => world.timeout(p),
            Step::Deliver(p) => world.deliver(p)?,
            Step::Relist(p) => world.relist(p)?,
            Step::ChildExits(p) => world.child_exits(p),
            Step::Stall(p, millis) => world.stall(p, millis)?,
            Step::RenewNow(p) => {
                let now = world.now;
                world.procs[p].elector.renew_now(now);
            }
            // Deleting the lease under a process that never saw its holder is the one window the README
            // states (such a process may create it at once): only deletions of a free lease, or of one whose
            // current holder every process has seen (renewals it has not seen yet do not matter).
            Step::Delete if world.everyone_saw_the_holder() => world.commit(None),
            Step::Delete => {}
            // The same window for an edit by hand as for a deletion.
            Step::Edit(clear) if world.everyone_saw_the_holder() => world.edit(clear),
            Step::Edit(_) => {}
            Step::Recreate if world.everyone_saw_the_holder() => world.recreate(),
            Step::Recreate => {}
        }
        world.check_held()?;
        if trace {
            eprintln!(
                "         server: {:?}",
                world.server.as_ref().map(|v| (
                    &v.resource_version,
                    &v.record.holder_identity,
                    v.record.lease_transitions
                ))
            );
            for (p, proc) in world.procs.iter().enumerate() {
                eprintln!(
                    "         p{p}: held={:?} call={:?} child={:?} known={:?} events={}",
                    proc.elector.held().map(|h| (h.fencing_token, h.last_renew_sent - world.t0)),
                    proc.call.as_ref().map(|c| c.0),
                    proc.child.as_ref().map(|c| (c.token, c.dead_by.map(|d| d - world.t0))),
                    proc.elector.current().map(|v| (&v.resource_version, &v.record.holder_identity)),
                    proc.events.len()
                );
            }
        }
    }
    Ok(world)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(1024), ..ProptestConfig::default() })]

    #[test]
    fn at_most_one_child_under_every_interleaving(steps in prop::collection::vec(step(), 1..160)) {
        run(steps)?;
    }

    /// Liveness, the waiting logic included (the stagger, lost races with and without a write, waiting
    /// for the winner's event rather than reading): whatever happened before, once every request is
    /// served and answered and every event delivered, a child runs within a bounded time.
    #[test]
    fn a_child_runs_soon_after_the_world_heals(steps in prop::collection::vec(step(), 1..160)) {
        let mut world = run(steps)?;
        heal_until_a_child_runs(&mut world)?;
    }

    /// The same where every process believes in the largest crowd from the start: the widest stagger
    /// still ends, and exclusion holds under it.
    #[test]
    fn a_crowd_that_believes_in_a_thousand_contenders_still_runs_a_child(steps in prop::collection::vec(step(), 1..160)) {
        let mut world = run_in(|| World::believing_in(MAX_CONTENDERS), steps)?;
        heal_until_a_child_runs(&mut world)?;
    }

    /// A side-car (adopting its pod's record, keeping the token) among two plain processes: exclusion
    /// and fencing hold, and a child still runs.
    #[test]
    fn a_side_car_among_plain_processes(steps in prop::collection::vec(step(), 1..160)) {
        let mut world = run_in(World::with_a_side_car, steps)?;
        heal_until_a_child_runs(&mut world)?;
    }

    /// A newcomer (believing it is alone: it tries at once) among a crowd that believes in many (it
    /// leaves the newcomer the first window): exclusion holds, and a child still runs.
    #[test]
    fn a_newcomer_among_a_crowd_that_leaves_it_the_first_window(steps in prop::collection::vec(step(), 1..160)) {
        let mut world = run_in(|| World::believing(|p| if p == 0 { 1.0 } else { 100.0 }), steps)?;
        heal_until_a_child_runs(&mut world)?;
    }
}

/// The longest a healed world may take to run a child: a full lease duration to wait out a holder seen
/// last (twice, for a deletion seen as a snapshot), the widest stagger, and a renew deadline of slack.
const HEALED_WITHIN: Duration = Duration::from_secs(2 * 4 + 10 + 2);

/// From now on nothing fails, nothing is late by more than a step of 20 ms, and children keep running:
/// some process must hold the lease with its child running within `HEALED_WITHIN`.
fn heal_until_a_child_runs(world: &mut World) -> Result<(), TestCaseError> {
    let healed_at = world.now;
    while world.now < healed_at + HEALED_WITHIN {
        for p in 0..world.procs.len() {
            while world.requests.iter().any(|r| r.processed.is_none()) {
                world.process(p);
            }
            world.answer(p, Reply::Normal)?;
            while !world.procs[p].events.is_empty() {
                world.deliver(p)?;
            }
            world.tick(p)?;
            world.check_held()?;
        }
        let running = world.procs.iter().any(|proc| proc.child.as_ref().is_some_and(|c| c.dead_by.is_none()));
        if running {
            return Ok(());
        }
        world.advance(20)?;
    }
    let now = world.now;
    let states: Vec<String> = world
        .procs
        .iter_mut()
        .map(|p| {
            let known = p.elector.current().map(|v| v.record.holder_identity.clone());
            format!(
                "knows {known:?}, next {:?}",
                p.elector.next(Now::at(now, MicroTime(Timestamp::from_second(1_900_000_000).unwrap())))
            )
        })
        .collect();
    prop_assert!(
        false,
        "no child runs {HEALED_WITHIN:?} after the world healed (at {:?}): {states:?}",
        healed_at - world.t0
    );
    Ok(())
}

/// The late-answer window on purpose: the holder's renewal is applied and seen on its watch, its answer
/// is held back beyond the safety margin, then the holder is cut off. It must count the renewal from the
/// send, so its child is dead before the waiter (which saw the commit) takes over.
#[test]
fn late_renewal_answer_does_not_let_two_children_run() {
    use Step::*;
    let steps = vec![
        Tick(1),
        Process(1),
        Answer(1, Reply::Normal), // b reads: absent
        Tick(1),
        Process(1),
        Answer(1, Reply::Normal), // b creates it and holds: its child runs
        Tick(0),
        Process(0),
        Answer(0, Reply::Normal), // a reads: held by b; it waits
        Advance(500),             // b's renewal is sent at 0.5s
        Process(1),               // ... and committed
        Deliver(1),
        Deliver(1), // b sees it on its watch
        Deliver(0),
        Deliver(0),    // a sees the commit at 0.5s: its expiry clock restarts
        Advance(1400), // the answer is 1.4s late, beyond the 1s margin
        Answer(1, Reply::Normal),
        Advance(2600), // b is cut off from here on; a's expiry passes at 4.5s
        Process(0),
        Answer(0, Reply::Normal), // a reads first: b's hold expired by what it saw, unchanged
        Tick(0),
        Process(0),
        Answer(0, Reply::Normal), // a takes over: b's child must be dead by now
        Advance(1000),
    ];
    let world = run(steps).expect("no overlap");
    assert_eq!(world.children_started, 2, "both children ran, one after the other");
}

/// Two processes with one identity (a copied manifest, a nested mpsync given `--identity "$MPSYNC_IDENTITY"`)
/// never both run a child.
#[test]
fn two_processes_with_one_identity_never_both_run() {
    use Step::*;
    let steps = vec![
        Tick(0),
        Process(0),
        Answer(0, Reply::Normal), // a#0 reads: absent
        Tick(0),
        Process(0),
        Answer(0, Reply::Normal), // a#0 creates and holds
        Tick(2),
        Process(2),
        Answer(2, Reply::Normal), // a#2 reads the record under its own identity
        Tick(2),
        Advance(100),
    ];
    let world = run(steps).expect("no overlap");
    assert_eq!(world.children_started, 1);
    assert!(world.procs[2].elector.held().is_none());
}

/// The semaphore: processes told different slot counts contend for the slots of one semaphore, in any
/// interleaving of their marker reads and writes, slot reads, acquisitions and releases. Whichever count
/// is fixed first, at most that many children run, only processes told that count run any, and no slot
/// runs two.
mod semaphore {
    use std::collections::BTreeMap;

    use super::*;

    const COUNTS: [u32; 3] = [2, 2, 3];
    const NAME: &str = "pool";

    #[derive(Clone, Debug)]
    enum Step {
        /// A process settles the marker (one read, maybe one write).
        Marker(usize),
        /// A process reads one of its slots.
        Read(usize, usize),
        /// A process acts on one of its slots (as its campaign would).
        Act(usize, usize),
        /// A process's child exits and it releases its slot.
        Exit(usize),
        /// Someone deletes the marker (`kubectl delete lease pool`).
        DeleteMarker,
    }

    fn step() -> impl Strategy<Value = Step> {
        let process = 0..COUNTS.len();
        prop_oneof![
            2 => process.clone().prop_map(Step::Marker),
            4 => (process.clone(), 0..3usize).prop_map(|(p, i)| Step::Read(p, i)),
            4 => (process.clone(), 0..3usize).prop_map(|(p, i)| Step::Act(p, i)),
            1 => process.prop_map(Step::Exit),
            1 => Just(Step::DeleteMarker),
        ]
    }

    struct Proc {
        count: u32,
        marker_ready: bool,
        refused: bool,
        slots: Vec<Elector>,
        child: Option<usize>,
    }

    struct World {
        now: Instant,
        wall: i64,
        version: u64,
        server: BTreeMap<String, Versioned>,
        procs: Vec<Proc>,
    }

    impl World {
        fn clock(&mut self) -> Now {
            self.wall += 1;
            Now::at(self.now, MicroTime(Timestamp::from_second(1_800_000_000 + self.wall).unwrap()))
        }

        /// A compare-and-swap write, carried out at once.
        fn write(&mut self, name: &str, write: &Write) -> WriteResult {
            let ok = match (write.resource_version(), self.server.get(name)) {
                (None, None) => true,
                (Some(rv), Some(current)) => rv == current.resource_version,
                _ => false,
            };
            if !ok {
                return WriteResult::Conflict;
            }
            self.version += 1;
            let mut metadata = write.metadata.clone();
            metadata.resource_version = Some(self.version.to_string());
            let stored =
                Versioned { resource_version: self.version.to_string(), record: write.record.clone(), metadata };
            self.server.insert(name.to_string(), stored.clone());
            WriteResult::Applied(stored)
        }

        fn check(&self) -> Result<(), TestCaseError> {
            let running: Vec<(usize, usize)> =
                self.procs.iter().enumerate().filter_map(|(p, proc)| proc.child.map(|slot| (p, slot))).collect();
            let mut slots: Vec<usize> = running.iter().map(|(_, slot)| *slot).collect();
            slots.sort();
            slots.dedup();
            prop_assert_eq!(slots.len(), running.len(), "two children on one slot: {:?}", running);
            let counts: Vec<u32> = running.iter().map(|(p, _)| self.procs[*p].count).collect();
            if let Some(first) = counts.first() {
                prop_assert!(
                    counts.iter().all(|c| c == first),
                    "processes told different counts both run: {:?}",
                    running
                );
                prop_assert!(running.len() as u32 <= *first, "{} children for {first} slots", running.len());
            }
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(2048), ..ProptestConfig::default() })]

        #[test]
        fn processes_that_disagree_on_the_count_never_both_run(steps in prop::collection::vec(step(), 1..120)) {
            let timing = Timing { lease_duration: Duration::from_secs(3600), ..TIMING };
            let mut world = World {
                now: Instant::now(),
                wall: 0,
                version: 0,
                server: BTreeMap::new(),
                procs: COUNTS
                    .iter()
                    .enumerate()
                    .map(|(p, &count)| Proc {
                        count,
                        marker_ready: false,
                        refused: false,
                        slots: (0..count).map(|_| Elector::new(format!("p{p}"), timing).with_slots(count)).collect(),
                        child: None,
                    })
                    .collect(),
            };
            for step in steps {
                world.now += Duration::from_millis(10);
                match step {
                    Step::Marker(p) => {
                        if world.procs[p].refused || world.procs[p].marker_ready {
                            continue;
                        }
                        let count = world.procs[p].count;
                        match semaphore_marker(world.server.get(NAME), count) {
                            Marker::Ready => world.procs[p].marker_ready = true,
                            Marker::Refuse(_) => world.procs[p].refused = true,
                            Marker::Write(write) => {
                                let _ = world.write(NAME, &write);
                            }
                        }
                    }
                    Step::Read(p, i) => {
                        if i < world.procs[p].slots.len() {
                            let current = world.server.get(&format!("{NAME}-{i}")).cloned();
                            let now = world.now;
                            world.procs[p].slots[i].observe(current, now);
                        }
                    }
                    Step::Act(p, i) => {
                        let proc = &world.procs[p];
                        // The campaign's rules: the marker first; every slot looked at once; one at a time.
                        if proc.refused || !proc.marker_ready || proc.child.is_some() || i >= proc.slots.len()
                            || !proc.slots.iter().all(Elector::has_observed)
                        {
                            continue;
                        }
                        if proc.slots.iter().any(|slot| slot.refusal().is_some()) {
                            world.procs[p].refused = true;
                            continue;
                        }
                        let now = world.clock();
                        let action = world.procs[p].slots[i].next(now.clone());
                        match action {
                            Action::Refuse(_) => world.procs[p].refused = true,
                            Action::Write(write) => {
                                let ticket = world.procs[p].slots[i].write_sent(&write, now.instant);
                                let result = world.write(&format!("{NAME}-{i}"), &write);
                                world.procs[p].slots[i].write_result(ticket, result, now.instant);
                                if world.procs[p].slots[i].usable(now.instant) {
                                    world.procs[p].child = Some(i);
                                }
                            }
                            _ => {}
                        }
                    }
                    Step::Exit(p) => {
                        if let Some(i) = world.procs[p].child.take() {
                            let now = world.clock();
                            if let Some(write) = world.procs[p].slots[i].release(now.clone()) {
                                let ticket = world.procs[p].slots[i].write_sent(&write, now.instant);
                                let result = world.write(&format!("{NAME}-{i}"), &write);
                                world.procs[p].slots[i].write_result(ticket, result, now.instant);
                            }
                        }
                    }
                    // Changing the count, as the README says: stop every user, delete the marker, start
                    // again (every process settles the marker anew).
                    Step::DeleteMarker if world.procs.iter().all(|p| p.child.is_none()) => {
                        world.server.remove(NAME);
                        for proc in &mut world.procs {
                            proc.marker_ready = false;
                        }
                    }
                    Step::DeleteMarker => {}
                }
                world.check()?;
            }
        }
    }
}

/// A create sent while the lease was absent lands after another process's hold (token 1) was deleted;
/// its sender saw token 1 on its watch meanwhile. It must not run a child with token 0: it takes its
/// record again with a larger token first.
#[test]
fn a_create_that_lands_after_a_deletion_never_brings_the_token_back() {
    use Reply::Normal;
    use Step::*;
    let steps = vec![
        Tick(0),
        Process(0),
        Advance(0),
        Answer(0, Normal), // a#0 reads: absent; b and a#2 send their reads
        Process(2),
        Advance(531),
        Advance(1469),
        Answer(2, Normal), // a#2 reads: absent
        Process(0),
        Answer(0, Normal), // a#0's create lands too late to hold (token 0)
        Process(0),
        Advance(0), // a#0 takes its record again; a#2 sends a create (token 0)
        Deliver(2),
        Process(0), // a#0 holds with token 1
        Deliver(2), // a#2 sees token 1
        Deliver(0),
        Deliver(0),
        Deliver(1),
        Deliver(1),
        Delete, // a#2's create lands after this
    ];
    let mut world = run(steps).expect("no overlap");
    heal_until_a_child_runs(&mut world).expect("a child runs");
    assert!(world.last_token.is_some_and(|token| token > 1), "tokens went on from 1: {:?}", world.last_token);
}
