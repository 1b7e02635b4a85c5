//! Property tests of the lease state machine: arbitrary interleavings of records written by others,
//! watch deliveries, write results (applied, conflict, not applied, unknown either way) and clock
//! steps, against a simulated compare-and-swap server. Two safety properties are checked after every
//! step:
//!
//! 1. The machine never reports "held" past the renew deadline without a successful renewal: whenever it
//!    holds and does not answer `Lost`, some write of ours that is known to have been applied was sent
//!    less than `renew_deadline` ago.
//! 2. It never takes a lease whose holder's duration has not passed since this process observed the
//!    record.

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

#[derive(Clone, Debug)]
enum Outcome {
    Normal,
    NotApplied,
    UnknownApplied,
    UnknownNotApplied,
}

#[derive(Clone, Debug)]
enum Step {
    Advance(u64),
    ForeignWrite { holder: &'static str, duration: Option<i32>, deliver: bool },
    Delete { deliver: bool },
    Deliver,
    Act(Outcome),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u64..3000).prop_map(Step::Advance),
        2 => (
            prop::sample::select(vec!["", "other", "third"]),
            prop::option::of(prop::sample::select(vec![-3, 0, 1, 3, 4, 30])),
            any::<bool>(),
        )
            .prop_map(|(holder, duration, deliver)| Step::ForeignWrite { holder, duration, deliver }),
        1 => any::<bool>().prop_map(|deliver| Step::Delete { deliver }),
        2 => Just(Step::Deliver),
        6 => prop_oneof![
            4 => Just(Outcome::Normal),
            1 => Just(Outcome::NotApplied),
            1 => Just(Outcome::UnknownApplied),
            1 => Just(Outcome::UnknownNotApplied),
        ]
        .prop_map(Step::Act),
    ]
}

/// The simulated server and what the test knows that the machine must respect.
struct World {
    t0: Instant,
    now: Instant,
    wall_seconds: i64,
    server: Option<Versioned>,
    next_version: u64,
    /// Writes of ours: (sent at, record), and whether each is known to have been applied.
    writes: Vec<(Instant, LeaseSpec, bool)>,
    /// The content the machine last observed and when that content was first observed.
    observed: Option<(Option<LeaseSpec>, Instant)>,
}

impl World {
    fn wall(&mut self) -> MicroTime {
        self.wall_seconds += 1;
        MicroTime(Timestamp::from_second(1_800_000_000 + self.wall_seconds).unwrap())
    }

    fn clock(&mut self) -> Now {
        let wall = self.wall();
        Now::at(self.now, wall)
    }

    fn bump(&mut self, record: LeaseSpec) -> Versioned {
        self.next_version += 1;
        let stored = Versioned { resource_version: self.next_version.to_string(), record };
        self.server = Some(stored.clone());
        stored
    }

    /// Feed the machine what the server holds now, tracking observation times as the machine should.
    fn deliver(&mut self, elector: &mut Elector) {
        let content = self.server.as_ref().map(|v| v.record.clone());
        let changed = self.observed.as_ref().is_none_or(|(known, _)| *known != content);
        if changed {
            self.observed = Some((content.clone(), self.now));
        }
        // Our own writes become known as applied when their exact record shows up.
        if let Some(record) = &content {
            for write in &mut self.writes {
                if write.1 == *record {
                    write.2 = true;
                }
            }
        }
        elector.observe(self.server.clone(), self.now);
    }
}

fn check_properties(elector: &Elector, world: &mut World) -> Result<(), TestCaseError> {
    let now = world.clock();
    let action = elector.next(now.clone());
    if elector.held().is_some() && !matches!(action, Action::Lost(_)) {
        let last_success = world.writes.iter().filter(|w| w.2).map(|w| w.0).max();
        prop_assert!(
            last_success.is_some_and(|sent| world.now < sent + TIMING.renew_deadline),
            "held at {:?} without a successful renewal sent within the renew deadline (last {:?})",
            world.now - world.t0,
            last_success.map(|s| s - world.t0)
        );
    }
    if elector.held().is_none()
        && let Action::Write(Write::Replace { record: _, resource_version }) = &action
    {
        let base = world.server.as_ref().filter(|v| &v.resource_version == resource_version);
        if let Some(base) = base {
            let holder = base.record.holder_identity.as_deref().unwrap_or("");
            if !holder.is_empty() && holder != "me" {
                let (_, observed_at) = world.observed.clone().expect("a record was observed");
                let duration = holder_duration(&base.record, TIMING);
                prop_assert!(
                    world.now >= observed_at + duration,
                    "takes a lease held by {holder:?} {:?} after observing it (its duration {:?})",
                    world.now - observed_at,
                    duration
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn never_held_past_the_deadline_and_never_takes_an_unexpired_lease(steps in prop::collection::vec(step(), 1..80)) {
        let t0 = Instant::now();
        let mut world = World { t0, now: t0, wall_seconds: 0, server: None, next_version: 0, writes: Vec::new(), observed: None };
        let mut elector = Elector::new("me", TIMING);
        for step in steps {
            match step {
                Step::Advance(ms) => world.now += Duration::from_millis(ms),
                Step::ForeignWrite { holder, duration, deliver } => {
                    let mut record = world.server.as_ref().map(|v| v.record.clone()).unwrap_or_default();
                    record.holder_identity = Some(holder.to_string());
                    record.lease_duration_seconds = duration;
                    record.renew_time = Some(world.wall());
                    world.bump(record);
                    if deliver {
                        world.deliver(&mut elector);
                    }
                }
                Step::Delete { deliver } => {
                    world.server = None;
                    world.next_version += 1;
                    if deliver {
                        world.deliver(&mut elector);
                    }
                }
                Step::Deliver => world.deliver(&mut elector),
                Step::Act(outcome) => {
                    let now = world.clock();
                    match elector.next(now) {
                        Action::Read => world.deliver(&mut elector),
                        Action::Write(write) => {
                            // What the machine is about to do must be safe (property 2 is checked
                            // before the write is sent).
                            check_properties(&elector, &mut world)?;
                            elector.write_sent(&write, world.now);
                            let cas_ok = match (&write, &world.server) {
                                (Write::Create(_), None) => true,
                                (Write::Replace { resource_version, .. }, Some(current)) => {
                                    &current.resource_version == resource_version
                                }
                                _ => false,
                            };
                            let applies = cas_ok && matches!(outcome, Outcome::Normal | Outcome::UnknownApplied);
                            world.writes.push((world.now, write.record().clone(), false));
                            let stored = applies.then(|| world.bump(write.record().clone()));
                            let result = match (outcome, stored) {
                                (Outcome::Normal, Some(stored)) => {
                                    world.writes.last_mut().unwrap().2 = true;
                                    WriteResult::Applied(stored)
                                }
                                (Outcome::Normal, None) => WriteResult::Conflict,
                                (Outcome::NotApplied, _) => WriteResult::NotApplied,
                                (Outcome::UnknownApplied | Outcome::UnknownNotApplied, _) => WriteResult::Unknown,
                            };
                            if let WriteResult::Applied(stored) = &result {
                                // The machine observes its own write through the result.
                                let content = Some(stored.record.clone());
                                if world.observed.as_ref().is_none_or(|(known, _)| *known != content) {
                                    world.observed = Some((content, world.now));
                                }
                            }
                            elector.write_result(result, world.now);
                        }
                        Action::Lost(_) => elector.forget_loss(),
                        Action::WaitUntil(_) => {}
                    }
                }
            }
            check_properties(&elector, &mut world)?;
        }
    }
}
