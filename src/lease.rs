//! The lease algorithm as a pure state machine: no I/O, no clock of its own.
//!
//! The caller feeds it what it read (`observe`), what became of its writes (`write_sent`, `write_result`),
//! and the time (`Now`); `next` answers what to do: read, write (acquire or renew), wait until a moment,
//! or give up a lease that is lost. The rules are client-go's `leaderelection`, with two deliberate
//! differences called out where they are made:
//!
//! - Expiry is judged on the local monotonic clock: a lease held by another counts as expired when its
//!   record has not changed for the holder's own `leaseDurationSeconds` since *this process observed*
//!   the change. Remote timestamps are written for humans and client-go, never compared with our clock.
//! - The renew deadline counts from when the last successful renewal was *sent*: the server may have
//!   applied it at any moment after that, so only the send time is a safe lower bound for the holder.
//! - Every acquisition increments `leaseTransitions` (the fencing token), even by the same identity,
//!   so that tokens strictly increase across the children that ever held the lease.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

/// A lease record as stored, with its compare-and-swap token.
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned {
    pub resource_version: String,
    pub record: LeaseSpec,
}

/// The timing options, already checked against each other (see `cli`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// The time, both ways: `instant` decides everything; `wall` is only written into records.
#[derive(Clone, Debug)]
pub struct Now {
    pub instant: Instant,
    pub wall: MicroTime,
}

impl Now {
    pub fn at(instant: Instant, wall: MicroTime) -> Now {
        Now { instant, wall }
    }
}

/// A write to send: every one is a compare-and-swap.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// No lease exists: create it (fails with a conflict if someone else created it first).
    Create(LeaseSpec),
    /// Replace the record we read, only if it still carries `resource_version`.
    Replace { resource_version: String, record: LeaseSpec },
}

impl Write {
    pub fn record(&self) -> &LeaseSpec {
        match self {
            Write::Create(record) => record,
            Write::Replace { record, .. } => record,
        }
    }
}

/// What became of a write.
#[derive(Clone, Debug, PartialEq)]
pub enum WriteResult {
    /// Applied; the stored record is now this.
    Applied(Versioned),
    /// Lost the compare-and-swap (409 Conflict or AlreadyExists).
    Conflict,
    /// Not applied (for example 429): nothing changed on the server.
    NotApplied,
    /// Unknown (timeout, dropped connection, 5xx): it may or may not have been applied.
    Unknown,
}

/// Why a held lease counts as lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LossReason {
    /// Another identity is now the holder (or the holder was cleared by someone else).
    Taken { holder: String },
    /// The Lease object was deleted.
    Deleted,
    /// No renewal succeeded for `renew_deadline`, counted from the send of the last good one.
    RenewDeadline,
}

impl std::fmt::Display for LossReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LossReason::Taken { holder } if holder.is_empty() => {
                write!(f, "the lease was released by another writer")
            }
            LossReason::Taken { holder } => write!(f, "the lease is now held by {holder:?}"),
            LossReason::Deleted => write!(f, "the Lease was deleted"),
            LossReason::RenewDeadline => write!(f, "no renewal succeeded within the renew deadline"),
        }
    }
}

/// The answer to "what now?".
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Read the lease (nothing observed yet, or after a conflict or an unknown outcome).
    Read,
    /// Send this write: acquire (not held) or renew (held).
    Write(Write),
    /// Nothing to do until this moment, unless the record changes first.
    WaitUntil(Instant),
    /// The held lease is lost: stop the child; never write this lease again on this basis.
    Lost(LossReason),
}

/// The facts about a lease this process holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    /// `leaseTransitions` as written by our acquisition.
    pub fencing_token: i32,
    /// When the last renewal (or the acquisition) that succeeded was sent.
    pub last_renew_sent: Instant,
    /// When the next renewal is due.
    pub next_renew_at: Instant,
}

#[derive(Clone, Debug)]
struct Observation {
    current: Option<Versioned>,
    /// When this process last saw the record's content change (or first saw it).
    changed_at: Instant,
}

#[derive(Clone, Debug)]
struct PendingWrite {
    record: LeaseSpec,
    sent_at: Instant,
}

/// One process's view of one lease.
#[derive(Clone, Debug)]
pub struct Elector {
    identity: String,
    timing: Timing,
    observation: Option<Observation>,
    /// A write that was sent and whose result is not known yet (in flight, or Unknown).
    pending: Option<PendingWrite>,
    held: Option<Held>,
    /// Set by a held lease turning out lost; cleared by `forget_loss`.
    lost: Option<LossReason>,
    needs_read: bool,
}

impl Elector {
    pub fn new(identity: impl Into<String>, timing: Timing) -> Elector {
        Elector {
            identity: identity.into(),
            timing,
            observation: None,
            pending: None,
            held: None,
            lost: None,
            needs_read: true,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The lease as last observed (`None` if never read or known absent).
    pub fn current(&self) -> Option<&Versioned> {
        self.observation.as_ref().and_then(|o| o.current.as_ref())
    }

    /// Whether this process holds the lease, and the facts if it does.
    pub fn held(&self) -> Option<Held> {
        self.held
    }

    /// Record what a watch showed. Watch events can lag behind what our own writes already told us,
    /// so an older version is ignored, and "absent" while we hold the lease (which a list made before
    /// our create reports) only asks for a fresh read: a read, not a stale event, decides a deletion.
    pub fn observe_event(&mut self, current: Option<Versioned>, now: Instant) {
        match (&current, self.current()) {
            (Some(new), Some(known)) if is_older(&new.resource_version, &known.resource_version) => {}
            (None, _) if self.held.is_some() => self.needs_read = true,
            _ => self.observe(current, now),
        }
    }

    /// Record what a read (or a write's answer) showed: the current state, authoritative.
    pub fn observe(&mut self, current: Option<Versioned>, now: Instant) {
        self.needs_read = false;

        // A write whose outcome we did not learn: if the record now carries exactly what we sent,
        // it was applied, and it counts from when it was sent.
        if let (Some(pending), Some(new)) = (&self.pending, &current)
            && self.is_ours(&new.record)
            && new.record.renew_time == pending.record.renew_time
            && new.record.acquire_time == pending.record.acquire_time
        {
            let sent_at = pending.sent_at;
            self.pending = None;
            self.record_success(new.record.lease_transitions.unwrap_or(0), sent_at);
        }

        let changed = match &self.observation {
            None => true,
            Some(known) => known.current.as_ref().map(|v| &v.record) != current.as_ref().map(|v| &v.record),
        };
        let changed_at = match (&self.observation, changed) {
            (Some(known), false) => known.changed_at,
            _ => now,
        };
        self.observation = Some(Observation { current, changed_at });

        if self.held.is_some() {
            let loss = match self.current() {
                None => Some(LossReason::Deleted),
                Some(v) if !self.is_ours(&v.record) => {
                    Some(LossReason::Taken { holder: v.record.holder_identity.clone().unwrap_or_default() })
                }
                Some(_) => None,
            };
            if let Some(reason) = loss {
                self.held = None;
                self.lost = Some(reason);
            }
        }
    }

    /// Record that `write` was sent at `sent_at`.
    pub fn write_sent(&mut self, write: &Write, sent_at: Instant) {
        self.pending = Some(PendingWrite { record: write.record().clone(), sent_at });
        if let Some(held) = &mut self.held {
            // Renewals keep their cadence whether or not this one succeeds, as client-go's do.
            held.next_renew_at = sent_at + self.timing.retry_period;
        }
    }

    /// Record what became of the write sent last.
    pub fn write_result(&mut self, result: WriteResult, now: Instant) {
        match result {
            WriteResult::Applied(stored) => {
                let sent_at = self.pending.take().map_or(now, |p| p.sent_at);
                self.observe(Some(stored.clone()), now);
                if self.is_ours(&stored.record) {
                    self.record_success(stored.record.lease_transitions.unwrap_or(0), sent_at);
                }
            }
            WriteResult::Conflict => {
                self.pending = None;
                self.needs_read = true;
            }
            WriteResult::NotApplied => {
                self.pending = None;
            }
            WriteResult::Unknown => {
                // Keep `pending`: the next read decides whether it was applied.
                self.needs_read = true;
            }
        }
    }

    /// Ask for a read before anything else (for example after a failed read).
    pub fn want_read(&mut self) {
        self.needs_read = true;
    }

    /// Whether a held lease was found lost, and why. Cleared by `forget_loss`.
    pub fn loss(&self) -> Option<&LossReason> {
        self.lost.as_ref()
    }

    /// After the child was stopped for a loss: campaign afresh.
    pub fn forget_loss(&mut self) {
        self.lost = None;
        self.held = None;
        self.pending = None;
        self.needs_read = true;
    }

    /// What to do now.
    pub fn next(&self, now: Now) -> Action {
        if let Some(reason) = &self.lost {
            return Action::Lost(reason.clone());
        }
        if let Some(held) = self.held {
            let deadline = held.last_renew_sent + self.timing.renew_deadline;
            if now.instant >= deadline {
                return Action::Lost(LossReason::RenewDeadline);
            }
            if self.needs_read {
                return Action::Read;
            }
            if now.instant >= held.next_renew_at {
                return match self.current() {
                    Some(current) => Action::Write(self.renewal(current, now)),
                    None => Action::Read,
                };
            }
            return Action::WaitUntil(held.next_renew_at.min(deadline));
        }

        if self.needs_read {
            return Action::Read;
        }
        let Some(observation) = &self.observation else {
            return Action::Read;
        };
        let Some(current) = &observation.current else {
            return Action::Write(Write::Create(self.fresh_record(None, now)));
        };
        let holder = current.record.holder_identity.as_deref().unwrap_or("");
        if holder.is_empty() || holder == self.identity {
            // Free, or a record left by this very identity (a restart): take it at once. The
            // compare-and-swap guarantees nobody else moved in meanwhile.
            return Action::Write(self.acquisition(current, now));
        }
        match observation.changed_at.checked_add(holder_duration(&current.record, self.timing)) {
            Some(expiry) if now.instant < expiry => Action::WaitUntil(expiry),
            Some(_) => Action::Write(self.acquisition(current, now)),
            // A duration too long to add to the clock: as good as never.
            None => Action::WaitUntil(now.instant + Duration::from_secs(365 * 24 * 3600)),
        }
    }

    /// When the record we last observed expires for us (for `status`-style reports; `None`: free now).
    pub fn observed_expiry(&self) -> Option<Instant> {
        let observation = self.observation.as_ref()?;
        let current = observation.current.as_ref()?;
        let holder = current.record.holder_identity.as_deref().unwrap_or("");
        if holder.is_empty() {
            return None;
        }
        observation.changed_at.checked_add(holder_duration(&current.record, self.timing))
    }

    /// The write that releases a lease we hold: holder cleared, duration 1s, as client-go writes it.
    /// `None` if the record we know is not ours: a lease that is not ours is never written.
    pub fn release(&self, now: Now) -> Option<Write> {
        let current = self.current()?;
        if !self.is_ours(&current.record) {
            return None;
        }
        let mut record = current.record.clone();
        record.holder_identity = Some(String::new());
        record.lease_duration_seconds = Some(1);
        record.acquire_time = Some(now.wall.clone());
        record.renew_time = Some(now.wall);
        Some(Write::Replace { resource_version: current.resource_version.clone(), record })
    }

    /// After a release was applied (or found unnecessary): we hold nothing.
    pub fn released(&mut self) {
        self.held = None;
        self.pending = None;
    }

    fn record_success(&mut self, fencing_token: i32, sent_at: Instant) {
        let next_renew_at = sent_at + self.timing.retry_period;
        self.held = Some(match self.held {
            // A renewal keeps the token of the acquisition.
            Some(held) => Held { last_renew_sent: sent_at.max(held.last_renew_sent), next_renew_at, ..held },
            None => Held { fencing_token, last_renew_sent: sent_at, next_renew_at },
        });
        self.lost = None;
    }

    fn is_ours(&self, record: &LeaseSpec) -> bool {
        record.holder_identity.as_deref() == Some(self.identity.as_str())
    }

    fn our_duration_seconds(&self) -> i32 {
        i32::try_from(self.timing.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    fn fresh_record(&self, base: Option<&LeaseSpec>, now: Now) -> LeaseSpec {
        let mut record = base.cloned().unwrap_or_default();
        record.holder_identity = Some(self.identity.clone());
        record.lease_duration_seconds = Some(self.our_duration_seconds());
        record.acquire_time = Some(now.wall.clone());
        record.renew_time = Some(now.wall);
        // Created leases start at 0, as client-go creates them; every later acquisition adds one.
        record.lease_transitions = Some(match base {
            None => 0,
            Some(base) => base.lease_transitions.unwrap_or(0).max(0).saturating_add(1),
        });
        record
    }

    fn acquisition(&self, current: &Versioned, now: Now) -> Write {
        Write::Replace {
            resource_version: current.resource_version.clone(),
            record: self.fresh_record(Some(&current.record), now),
        }
    }

    fn renewal(&self, current: &Versioned, now: Now) -> Write {
        let mut record = current.record.clone();
        record.holder_identity = Some(self.identity.clone());
        record.lease_duration_seconds = Some(self.our_duration_seconds());
        record.renew_time = Some(now.wall);
        Write::Replace { resource_version: current.resource_version.clone(), record }
    }
}

/// How long a holder's record stays valid after it was observed: the holder's own duration. A missing
/// or non-positive duration (which the API server rejects, but a file or an old object may carry) is
/// treated conservatively as our own.
pub fn holder_duration(record: &LeaseSpec, timing: Timing) -> Duration {
    match record.lease_duration_seconds {
        Some(seconds) if seconds > 0 => Duration::from_secs(seconds as u64),
        _ => timing.lease_duration,
    }
}

/// Whether resource version `a` is older than `b`. Resource versions are opaque to clients, but both
/// kube-apiserver (etcd revisions) and the file backend use increasing integers; anything else is
/// never called older.
fn is_older(a: &str, b: &str) -> bool {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(a), Ok(b)) => a < b,
        _ => false,
    }
}

#[cfg(test)]
#[path = "lease_properties.rs"]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    const TIMING: Timing = Timing {
        lease_duration: Duration::from_secs(15),
        renew_deadline: Duration::from_secs(10),
        retry_period: Duration::from_secs(2),
    };

    fn wall(second: i64) -> MicroTime {
        MicroTime(Timestamp::from_second(1_800_000_000 + second).unwrap())
    }

    fn now(t0: Instant, seconds: f64) -> Now {
        Now::at(t0 + Duration::from_secs_f64(seconds), wall(seconds as i64))
    }

    fn record(holder: Option<&str>, duration: Option<i32>, transitions: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: duration,
            lease_transitions: transitions,
            acquire_time: Some(wall(-100)),
            renew_time: Some(wall(-50)),
            ..LeaseSpec::default()
        }
    }

    fn versioned(rv: u64, record: LeaseSpec) -> Versioned {
        Versioned { resource_version: rv.to_string(), record }
    }

    /// Acquire `me` from a free record at t0 and return the elector holding it.
    fn holding(t0: Instant) -> Elector {
        let mut elector = Elector::new("me", TIMING);
        elector.observe(Some(versioned(1, record(Some(""), Some(1), Some(3)))), t0);
        let Action::Write(write) = elector.next(now(t0, 0.0)) else { panic!("expected a write") };
        elector.write_sent(&write, t0);
        elector.write_result(WriteResult::Applied(versioned(2, write.record().clone())), t0);
        assert!(elector.held().is_some());
        elector
    }

    #[test]
    fn nothing_observed_means_read_first() {
        let t0 = Instant::now();
        assert_eq!(Elector::new("me", TIMING).next(now(t0, 0.0)), Action::Read);
    }

    #[test]
    fn absent_lease_is_created_with_our_record() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        elector.observe(None, t0);
        let Action::Write(Write::Create(record)) = elector.next(now(t0, 0.0)) else { panic!() };
        assert_eq!(record.holder_identity.as_deref(), Some("me"));
        assert_eq!(record.lease_duration_seconds, Some(15));
        assert_eq!(record.lease_transitions, Some(0));
        assert_eq!(record.acquire_time, Some(wall(0)));
        assert_eq!(record.renew_time, Some(wall(0)));
    }

    #[test]
    fn empty_holder_is_free_at_once_and_increments_transitions() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        elector.observe(Some(versioned(7, record(Some(""), Some(1), Some(4)))), t0);
        let Action::Write(Write::Replace { resource_version, record }) = elector.next(now(t0, 0.0)) else { panic!() };
        assert_eq!(resource_version, "7");
        assert_eq!(record.holder_identity.as_deref(), Some("me"));
        assert_eq!(record.lease_transitions, Some(5));
    }

    #[test]
    fn missing_holder_is_free_at_once() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        elector.observe(Some(versioned(7, record(None, None, None))), t0);
        let Action::Write(Write::Replace { record, .. }) = elector.next(now(t0, 0.0)) else { panic!() };
        assert_eq!(record.lease_transitions, Some(1));
    }

    #[test]
    fn held_lease_seen_first_time_is_waited_out_for_the_holders_duration() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        // The holder's own duration (5s) counts, not ours (15s).
        elector.observe(Some(versioned(3, record(Some("other"), Some(5), Some(0)))), t0);
        assert_eq!(elector.next(now(t0, 0.0)), Action::WaitUntil(t0 + Duration::from_secs(5)));
        assert_eq!(elector.next(now(t0, 4.9)), Action::WaitUntil(t0 + Duration::from_secs(5)));
        assert!(matches!(elector.next(now(t0, 5.0)), Action::Write(Write::Replace { .. })));
    }

    #[test]
    fn renewal_by_holder_restarts_the_expiry_clock() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        elector.observe(Some(versioned(3, record(Some("other"), Some(5), Some(0)))), t0);
        let mut renewed = record(Some("other"), Some(5), Some(0));
        renewed.renew_time = Some(wall(3));
        elector.observe(Some(versioned(4, renewed.clone())), t0 + Duration::from_secs(3));
        assert_eq!(elector.next(now(t0, 5.0)), Action::WaitUntil(t0 + Duration::from_secs(8)));
        // The same record again (a poll, a re-list) does not restart it.
        elector.observe(Some(versioned(4, renewed)), t0 + Duration::from_secs(6));
        assert!(matches!(elector.next(now(t0, 8.0)), Action::Write(_)));
    }

    #[test]
    fn remote_timestamps_are_never_compared_with_the_local_clock() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        // A renewTime far in the past (or future) changes nothing: only what we observed counts.
        let mut old = record(Some("other"), Some(5), Some(0));
        old.renew_time = Some(wall(-1_000_000));
        elector.observe(Some(versioned(3, old)), t0);
        assert_eq!(elector.next(now(t0, 1.0)), Action::WaitUntil(t0 + Duration::from_secs(5)));
        let mut future = record(Some("other"), Some(1), Some(0));
        future.renew_time = Some(MicroTime(Timestamp::from_second(32_503_680_000).unwrap()));
        elector.observe(Some(versioned(4, future)), t0 + Duration::from_secs(1));
        assert!(matches!(elector.next(now(t0, 2.0)), Action::Write(_)));
    }

    #[test]
    fn zero_negative_or_missing_duration_is_treated_as_ours() {
        for duration in [Some(0), Some(-5), None] {
            let t0 = Instant::now();
            let mut elector = Elector::new("me", TIMING);
            elector.observe(Some(versioned(3, record(Some("other"), duration, None))), t0);
            assert_eq!(elector.next(now(t0, 0.0)), Action::WaitUntil(t0 + TIMING.lease_duration), "{duration:?}");
        }
    }

    #[test]
    fn huge_duration_is_respected_without_overflow() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        elector.observe(Some(versioned(3, record(Some("other"), Some(i32::MAX), None))), t0);
        let Action::WaitUntil(until) = elector.next(now(t0, 0.0)) else { panic!() };
        assert!(until > t0 + Duration::from_secs(3600 * 24 * 364));
    }

    #[test]
    fn client_go_holder_is_respected() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        let client_go = LeaseSpec {
            holder_identity: Some("host-a_7c1d".into()),
            lease_duration_seconds: Some(15),
            lease_transitions: Some(0),
            acquire_time: Some(wall(0)),
            renew_time: Some(wall(0)),
            ..LeaseSpec::default()
        };
        elector.observe(Some(versioned(2246, client_go)), t0);
        assert_eq!(elector.next(now(t0, 0.0)), Action::WaitUntil(t0 + Duration::from_secs(15)));
    }

    #[test]
    fn client_go_release_is_free_at_once() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        elector.observe(Some(versioned(2249, record(Some(""), Some(1), Some(0)))), t0);
        assert!(matches!(elector.next(now(t0, 0.0)), Action::Write(_)));
    }

    #[test]
    fn unknown_fields_are_preserved_on_acquire_renew_and_release() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        let mut foreign = record(Some(""), Some(1), Some(2));
        foreign.strategy = Some("OldestEmulationVersion".into());
        foreign.preferred_holder = Some("someone".into());
        elector.observe(Some(versioned(5, foreign)), t0);
        let Action::Write(acquire) = elector.next(now(t0, 0.0)) else { panic!() };
        assert_eq!(acquire.record().strategy.as_deref(), Some("OldestEmulationVersion"));
        assert_eq!(acquire.record().preferred_holder.as_deref(), Some("someone"));
        elector.write_sent(&acquire, t0);
        elector.write_result(WriteResult::Applied(versioned(6, acquire.record().clone())), t0);
        let Action::Write(renew) = elector.next(now(t0, 2.0)) else { panic!() };
        assert_eq!(renew.record().strategy.as_deref(), Some("OldestEmulationVersion"));
        let release = elector.release(now(t0, 3.0)).unwrap();
        assert_eq!(release.record().preferred_holder.as_deref(), Some("someone"));
    }

    #[test]
    fn acquisition_holds_with_the_new_token() {
        let t0 = Instant::now();
        let elector = holding(t0);
        let held = elector.held().unwrap();
        assert_eq!(held.fencing_token, 4);
        assert_eq!(held.last_renew_sent, t0);
    }

    #[test]
    fn holder_renews_every_retry_period() {
        let t0 = Instant::now();
        let elector = holding(t0);
        assert_eq!(elector.next(now(t0, 1.0)), Action::WaitUntil(t0 + Duration::from_secs(2)));
        let Action::Write(Write::Replace { resource_version, record }) = elector.next(now(t0, 2.0)) else { panic!() };
        assert_eq!(resource_version, "2");
        assert_eq!(record.renew_time, Some(wall(2)));
        assert_eq!(record.acquire_time, Some(wall(0)), "a renewal keeps acquireTime");
        assert_eq!(record.lease_transitions, Some(4), "a renewal keeps the token");
    }

    #[test]
    fn renew_deadline_counts_from_the_send_of_the_last_success() {
        let t0 = Instant::now();
        let mut elector = holding(t0);
        let Action::Write(renew) = elector.next(now(t0, 2.0)) else { panic!() };
        // Sent at 2s, answered (slowly) at 6s: the deadline counts from 2s.
        elector.write_sent(&renew, t0 + Duration::from_secs(2));
        elector.write_result(WriteResult::Applied(versioned(3, renew.record().clone())), t0 + Duration::from_secs(6));
        assert_eq!(elector.held().unwrap().last_renew_sent, t0 + Duration::from_secs(2));
        assert!(!matches!(elector.next(now(t0, 11.9)), Action::Lost(_)));
        assert_eq!(elector.next(now(t0, 12.0)), Action::Lost(LossReason::RenewDeadline));
    }

    #[test]
    fn failed_renewals_lose_the_lease_at_the_deadline() {
        let t0 = Instant::now();
        let mut elector = holding(t0);
        for second in [2.0, 4.0, 6.0, 8.0] {
            let Action::Write(renew) = elector.next(now(t0, second)) else { panic!("at {second}") };
            elector.write_sent(&renew, t0 + Duration::from_secs_f64(second));
            elector.write_result(WriteResult::NotApplied, t0 + Duration::from_secs_f64(second));
        }
        assert_eq!(elector.next(now(t0, 10.0)), Action::Lost(LossReason::RenewDeadline));
    }

    #[test]
    fn conflict_while_holding_reads_then_renews_if_still_ours() {
        let t0 = Instant::now();
        let mut elector = holding(t0);
        let Action::Write(renew) = elector.next(now(t0, 2.0)) else { panic!() };
        elector.write_sent(&renew, t0 + Duration::from_secs(2));
        elector.write_result(WriteResult::Conflict, t0 + Duration::from_secs(2));
        assert_eq!(elector.next(now(t0, 2.0)), Action::Read);
        // Someone touched the object (say, a label): still ours, renew against the new version.
        let mut touched = elector.current().unwrap().clone();
        touched.resource_version = "9".into();
        elector.observe(Some(touched), t0 + Duration::from_secs(2));
        // The next attempt keeps the cadence: one retry period after the failed one.
        assert_eq!(elector.next(now(t0, 2.0)), Action::WaitUntil(t0 + Duration::from_secs(4)));
        let Action::Write(Write::Replace { resource_version, .. }) = elector.next(now(t0, 4.0)) else { panic!() };
        assert_eq!(resource_version, "9");
    }

    #[test]
    fn another_holder_in_the_record_means_lost() {
        let t0 = Instant::now();
        let mut elector = holding(t0);
        elector.observe(Some(versioned(3, record(Some("thief"), Some(15), Some(5)))), t0 + Duration::from_secs(1));
        assert_eq!(elector.next(now(t0, 1.0)), Action::Lost(LossReason::Taken { holder: "thief".into() }));
        assert!(elector.held().is_none());
        assert!(elector.release(now(t0, 1.0)).is_none(), "a lease that is not ours is never written");
    }

    #[test]
    fn deleted_lease_means_lost() {
        let t0 = Instant::now();
        let mut elector = holding(t0);
        elector.observe(None, t0 + Duration::from_secs(1));
        assert_eq!(elector.next(now(t0, 1.0)), Action::Lost(LossReason::Deleted));
    }

    #[test]
    fn stale_watch_event_does_not_undo_what_a_write_told_us() {
        let t0 = Instant::now();
        let mut elector = holding(t0);
        // rv 1 (free) arrives from a lagging watch after our acquisition (rv 2): ignored.
        elector.observe_event(Some(versioned(1, record(Some(""), Some(1), Some(3)))), t0);
        assert!(elector.held().is_some());
        assert_eq!(elector.current().unwrap().resource_version, "2");
    }

    #[test]
    fn absent_in_a_watch_while_holding_asks_for_a_read() {
        let t0 = Instant::now();
        let mut elector = holding(t0);
        // A list made before our create reports "absent" after it: read before believing it.
        elector.observe_event(None, t0);
        assert!(elector.held().is_some());
        assert_eq!(elector.next(now(t0, 0.1)), Action::Read);
        elector.observe(None, t0);
        assert_eq!(elector.next(now(t0, 0.1)), Action::Lost(LossReason::Deleted));
    }

    #[test]
    fn unknown_outcome_is_resolved_by_reading_applied() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        elector.observe(Some(versioned(1, record(Some(""), Some(1), Some(0)))), t0);
        let Action::Write(write) = elector.next(now(t0, 0.0)) else { panic!() };
        elector.write_sent(&write, t0);
        elector.write_result(WriteResult::Unknown, t0 + Duration::from_secs(1));
        assert_eq!(elector.next(now(t0, 1.0)), Action::Read);
        elector.observe(Some(versioned(2, write.record().clone())), t0 + Duration::from_secs(1));
        let held = elector.held().expect("the read shows our write: held");
        assert_eq!(held.last_renew_sent, t0, "counted from the send");
        assert_eq!(held.fencing_token, 1);
    }

    #[test]
    fn unknown_outcome_is_resolved_by_reading_not_applied() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        elector.observe(Some(versioned(1, record(Some(""), Some(1), Some(0)))), t0);
        let Action::Write(write) = elector.next(now(t0, 0.0)) else { panic!() };
        elector.write_sent(&write, t0);
        elector.write_result(WriteResult::Unknown, t0);
        // Someone else got it meanwhile.
        elector.observe(Some(versioned(2, record(Some("other"), Some(15), Some(1)))), t0 + Duration::from_secs(1));
        assert!(elector.held().is_none());
        assert_eq!(elector.next(now(t0, 1.0)), Action::WaitUntil(t0 + Duration::from_secs(16)));
    }

    #[test]
    fn conflict_on_acquire_reads_again() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        elector.observe(None, t0);
        let Action::Write(write) = elector.next(now(t0, 0.0)) else { panic!() };
        elector.write_sent(&write, t0);
        elector.write_result(WriteResult::Conflict, t0);
        assert_eq!(elector.next(now(t0, 0.0)), Action::Read);
        assert!(elector.held().is_none());
    }

    #[test]
    fn record_left_by_our_own_identity_is_taken_with_a_new_token() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        elector.observe(Some(versioned(4, record(Some("me"), Some(15), Some(6)))), t0);
        let Action::Write(write) = elector.next(now(t0, 0.0)) else { panic!() };
        assert_eq!(write.record().lease_transitions, Some(7));
    }

    #[test]
    fn release_clears_holder_and_sets_duration_one() {
        let t0 = Instant::now();
        let elector = holding(t0);
        let Some(Write::Replace { resource_version, record }) = elector.release(now(t0, 3.0)) else { panic!() };
        assert_eq!(resource_version, "2");
        assert_eq!(record.holder_identity.as_deref(), Some(""));
        assert_eq!(record.lease_duration_seconds, Some(1));
        assert_eq!(record.lease_transitions, Some(4), "release keeps the token");
        assert_eq!(record.renew_time, Some(wall(3)));
    }

    #[test]
    fn forget_loss_campaigns_afresh() {
        let t0 = Instant::now();
        let mut elector = holding(t0);
        elector.observe(Some(versioned(3, record(Some("thief"), Some(15), Some(5)))), t0);
        elector.forget_loss();
        assert_eq!(elector.next(now(t0, 0.0)), Action::Read);
        elector.observe(Some(versioned(3, record(Some("thief"), Some(15), Some(5)))), t0 + Duration::from_secs(1));
        assert!(matches!(elector.next(now(t0, 1.0)), Action::WaitUntil(_)));
    }
}
