//! The one driver of the lease state machine, shared by `lock`, `elect`, the side-car and the library.
//!
//! A [`Slot`] drives one Lease: it asks its `Elector` what to do and keeps at most one call to the store
//! in flight. The call lives in the slot, not in the future that polls it, so [`Slot::step`] is
//! cancel-safe: a `select!` that drops it (a signal, the child's exit) never loses a write whose outcome
//! matters. Every write carries a `Ticket` with its send time, so however its success is learned, it
//! counts from that send.
//!
//! On top of slots: [`campaign`] waits for and acquires one of several slots (at most one acquisition
//! in flight across them, so a process never takes two), [`hold`] renews the one held until it is
//! lost or to be released, and [`Slot::settle`] gives back whatever the process holds, or may hold
//! through a write whose outcome is unknown, within a time budget.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;

use crate::error::Error;
use crate::lease::{Action, Elector, LossReason, Marker, Now, Refusal, Ticket, Timing, Versioned, Write, WriteResult};
use crate::retry::{FailureLog, backoff};
use crate::store::{Store, StoreError, Watch, WatchUpdate};
use k8s_openapi::api::coordination::v1::LeaseSpec;
use tokio::sync::mpsc;

/// The time now, both clocks; wall time truncated to microseconds, as MicroTime stores it, so that a
/// record read back compares equal to the one written.
pub fn now() -> Now {
    let wall = Timestamp::now();
    let wall = Timestamp::from_microsecond(wall.as_microsecond()).unwrap_or(wall);
    Now::at(Instant::now(), MicroTime(wall))
}

/// What became of a store write, in the elector's terms.
pub fn write_result(result: &Result<Versioned, StoreError>) -> WriteResult {
    match result {
        Ok(stored) => WriteResult::Applied(stored.clone()),
        Err(StoreError::Conflict(_)) => WriteResult::Conflict,
        Err(StoreError::Unknown(_)) => WriteResult::Unknown,
        // Transient (429 and the like) and fatal failures changed nothing on the server.
        Err(_) => WriteResult::NotApplied,
    }
}

/// Send one write and tell the elector what became of it, counting from the send.
pub async fn send(store: &Store, name: &str, elector: &mut Elector, write: &Write) -> Result<Versioned, StoreError> {
    let ticket = elector.write_sent(write, Instant::now());
    let result = store.write(name, write).await;
    elector.write_result(ticket, write_result(&result), Instant::now());
    result
}

/// Give a lease up at once, for a caller that drives its elector by hand (the side-car): holder cleared and
/// duration 1s, as client-go writes it, with a compare-and-swap. A record that is not our own write is
/// never written; a lost race or an unknown outcome is settled by reading again. Returns whether a
/// release was written.
pub async fn release(store: &Store, name: &str, elector: &mut Elector) -> Result<bool, StoreError> {
    let mut last_error = None;
    for _attempt in 0..4 {
        let Some(write) = elector.release(now()) else {
            // Read after a refused release: given back if it landed, or if the lease went on from our hold
            // meanwhile (a waiter took it on the release's event: found by review, helper-182).
            let landed = last_error.is_some() && (elector.release_landed() || elector.release_went_on());
            elector.released();
            return Ok(landed);
        };
        match send(store, name, elector, &write).await {
            Ok(_) => {
                elector.released();
                return Ok(true);
            }
            Err(StoreError::Fatal(err)) => return Err(StoreError::Fatal(err)),
            Err(err) => {
                tracing::debug!(lease = %name, error = %err, "release did not go through; reading the lease again");
                last_error = Some(err);
                // An answer older than the version known is a restore (found by review, helper-166: read as
                // any other, the release was sent again on the version known, which the restored etcd had
                // handed out to another's acquisition, and cleared it).
                let floor = elector.known_version();
                match store.get(name).await {
                    Ok(current) => {
                        elector.read_answered(name, floor.as_deref(), current.as_ref());
                        elector.observe(current, Instant::now());
                    }
                    Err(err) => {
                        last_error = Some(err);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
    }
    Err(last_error
        .unwrap_or_else(|| StoreError::Transient(format!("lease {name} kept changing while it was released"))))
}

/// What a slot tells whoever drives it: the events that matter beyond the slot itself.
pub trait Observer: Send + Sync {
    /// The lease was acquired by a write sent at `sent_at`.
    fn acquired(&self, _sent_at: Instant) {}
    /// A renewal sent at `sent_at` was applied; its answer came at `answered_at`.
    fn renewed(&self, _sent_at: Instant, _answered_at: Instant) {}
    /// A renewal sent at `sent_at`, whose answer was lost, turned out applied (a read or an event showed
    /// it): the lease counts as renewed from its send.
    fn confirmed(&self, _sent_at: Instant) {}
    /// The held lease was lost.
    fn lost(&self) {}
    /// The lease is given back: told as the give-back begins, before its write is sent.
    fn released(&self) {}
    /// A call to the store failed (`kind`: conflict, unknown, transient, fatal).
    fn api_error(&self, _kind: &'static str) {}
}

/// An observer that ignores everything.
pub struct Ignore;

impl Observer for Ignore {}

/// What a step of a slot reports.
#[derive(Debug)]
pub enum Progress {
    /// The slot is now held.
    Acquired,
    /// The held lease is lost (the caller stops the child, then calls `forget_loss`).
    Lost(LossReason),
    /// The lease can never be acquired as it stands.
    Refused(Refusal),
    /// A failure retrying will not fix (forbidden, namespace missing, ...), while not holding.
    Fatal(Error),
    /// Something else changed (a record, a failure); the caller may look again.
    Changed,
}

enum Outcome {
    Read(Result<Option<Versioned>, StoreError>),
    Write(Ticket, Result<Versioned, StoreError>),
}

type Call = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// One Lease, driven: its elector, its watch, and its one call in flight.
pub struct Slot {
    name: String,
    store: Store,
    elector: Elector,
    watch: Option<Watch>,
    /// A watch that ended (its fallback read refused) starts again no sooner than this: a refusal that
    /// comes and goes must not make a watch, a get and a read in a loop without pause (found by review, helper-151).
    watch_not_before: Option<Instant>,
    call: Option<Call>,
    /// Consecutive failed calls, and when to try again.
    failures: u32,
    retry_at: Option<Instant>,
    log: FailureLog,
    observer: Arc<dyn Observer>,
    /// Whether an identity collision was reported for the record seen last.
    collision_reported: bool,
    /// Where the caller sets the identity, for the collision's message.
    identity_option: &'static str,
    /// Whether a read of this slot has finished once (with a record, an absence, or a failure).
    looked_at: bool,
    /// The last read found a record that cannot be read: it counts as held by someone.
    unreadable: bool,
    /// Whether the observer was told of the hold now held (and not yet of its end).
    told_acquired: bool,
    /// The version the write on the wire was based on (`None`: a create).
    sent_base: Option<String>,
    /// A conflict answered to a write based on this version, and its message: if the read after it
    /// finds the lease at that very version, it was no lost race, and counts as a failure (found by
    /// review: a create answered 404 was sent again at once, a thousand times a second, in silence).
    refused_at: Option<(Option<String>, String)>,
    /// The version known when the read on the wire was sent: it answers that version or a later one,
    /// unless versions went back.
    read_floor: Option<String>,
    /// Whether the call on the wire is a read (it changes nothing, so it need not be waited for).
    reading: bool,
    /// When a renewal beaten by another writer's change was last sent again at once (see `finish`).
    raced_renewal_at: Option<Instant>,
    /// Shared by the slots of a large semaphore: how many of their reads may be on the wire at once.
    read_limit: Option<Arc<tokio::sync::Semaphore>>,
    /// For a slot of a semaphore: its index.
    slot_index: Option<usize>,
    /// The first live record of a plain lease seen on this slot's name (see `plain_hold_renewed`), and the
    /// uid of the Lease that carried it.
    plain_seen: Option<LeaseSpec>,
    plain_seen_uid: Option<String>,
    /// Until when that hold counts as not waited out, whatever this slot's record shows meanwhile; `None`
    /// once it is over (see `plain_hold_pending`).
    plain_until: Option<Instant>,
    /// Whether that hold was seen gone (deleted, made free by hand, or taken by another) and its wait
    /// extended for it.
    plain_gone: bool,
    /// An acquisition of this slot lost a race to a record not seen yet (a read or an event shows it).
    race_unseen: bool,
}

impl Slot {
    pub fn new(name: String, store: Store, elector: Elector, observer: Arc<dyn Observer>) -> Slot {
        Slot {
            log: FailureLog::new(&name, "reading or writing the lease"),
            name,
            store,
            elector,
            watch: None,
            watch_not_before: None,
            call: None,
            failures: 0,
            retry_at: None,
            observer,
            collision_reported: false,
            identity_option: "--identity",
            looked_at: false,
            unreadable: false,
            told_acquired: false,
            sent_base: None,
            refused_at: None,
            read_floor: None,
            reading: false,
            raced_renewal_at: None,
            read_limit: None,
            slot_index: None,
            plain_seen: None,
            plain_seen_uid: None,
            plain_until: None,
            plain_gone: false,
            race_unseen: false,
        }
    }

    /// This is slot `index` of a semaphore: an identity collision on it is said of that slot alone.
    pub fn as_slot(mut self, index: usize) -> Slot {
        self.slot_index = Some(index);
        self
    }

    /// Share `limit` with the other slots of a semaphore: at most that many reads of theirs on the wire
    /// at once, each bounded by the call timeout only once it is sent (found by review, helper-117: the
    /// first look at a free 1000-slot semaphore sent 1000 reads together, which timed out behind one
    /// another, and `--no-wait` answered "not acquired").
    pub fn with_read_limit(mut self, limit: Arc<tokio::sync::Semaphore>) -> Slot {
        self.read_limit = Some(limit);
        self
    }

    /// A slot of a library caller's lock: its messages name the library's options, not the CLI's flags.
    pub fn for_library(mut self) -> Slot {
        self.identity_option = "LockBuilder::identity";
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn elector(&self) -> &Elector {
        &self.elector
    }

    pub fn timing(&self) -> Timing {
        self.elector.timing()
    }

    /// After the child of a lost lease is gone: campaign afresh.
    pub fn forget_loss(&mut self) {
        self.tell_lost();
        self.elector.forget_loss();
    }

    /// The hold ended at its renew deadline, unseen: see `Elector::lapsed`.
    pub fn lapsed(&mut self) {
        self.elector.lapsed();
    }

    /// Tell the observer of the hold, once: when the campaign takes it, usable (a child may start), however
    /// the acquisition became known (its answer, a read, or the watch). Found by review: an acquisition
    /// known only from a read never reached the health server, and one that was not usable yet was
    /// reported at once. Only the slot taken is told: told too, another slot of a semaphore (acquired
    /// meanwhile, given back as one the process does not use) ended the shared observer's hold as it was
    /// given back, and `/leader` answered 503 while the child ran (found by review, rv230); so did an
    /// acquisition seen after `--timeout`, reported as leading until it was given back.
    fn tell_acquired(&mut self) {
        if !self.told_acquired
            && let Some(held) = self.elector.held()
        {
            self.observer.acquired(held.last_renew_sent);
            self.told_acquired = true;
        }
    }

    /// Tell the observer that the hold it was told of is lost (a loss while still campaigning too).
    pub(crate) fn tell_lost(&mut self) {
        if self.told_acquired {
            self.told_acquired = false;
            self.observer.lost();
        }
    }

    /// Whether an acquisition of this slot is on the wire, or its outcome unknown and not yet checked by
    /// a read.
    pub fn acquisition_pending(&self) -> bool {
        self.elector.acquisition_in_doubt()
    }

    /// Let go of the call in flight and the watch, left by a task that was dropped with its runtime
    /// (they may need that runtime to finish): what the call did is learned by reading first.
    pub fn abandon_call(&mut self) {
        if self.call.take().is_some() {
            self.elector.want_read();
        }
        self.watch = None;
    }

    /// Whether a call is left in the slot: only a task that ended unfinished (dropped with its runtime, or
    /// panicked) leaves one, since every campaign and hold that ends settles its calls.
    pub fn call_left(&self) -> bool {
        self.call.is_some()
    }

    /// Whether this slot holds, or may hold through an unresolved write, anything to give back.
    pub fn holds_anything(&self) -> bool {
        self.elector.held().is_some() || self.elector.unresolved_write()
    }

    /// Whether the slot waits for another holder: not ours, nothing in flight, nothing to retry.
    pub fn held_by_another(&mut self) -> bool {
        if self.unreadable && self.elector.held().is_none() {
            return true;
        }
        self.call.is_none()
            && self.retry_at.is_none()
            && self.elector.held().is_none()
            && self.elector.current().is_some_and(|c| !c.record.holder_identity.as_deref().unwrap_or("").is_empty())
            && matches!(self.elector.next(now()), Action::WaitUntil(_))
    }

    /// For a slot of a semaphore: the record seen last is a plain lease's (no slot count) that names a
    /// holder. It is waited out as any holder's, on this process's clock, before any slot is acquired; if it
    /// changes while live meanwhile (its holder renews, or another plain lock takes it), the semaphore is
    /// refused: the refusal, the first time it shows. Found by review, helper-162: refused at sight, a dead
    /// holder's record refused the semaphore for ever.
    ///
    /// The wait ends at its holder's duration from when this process first saw the record, or at once when
    /// the record shows the hold released (client-go's release shape) or this process holds the slot. Seen
    /// gone any other way (deleted, made free by hand, or taken by another process of the semaphore, which
    /// may never have seen the hold), renewals may have come unseen before: it lasts a full duration from
    /// then, as a plain waiter counts the same edits. Found by review, helper-175: ended once the record
    /// named any holder, another process's hold of that slot let this one take another slot at once, beside
    /// the plain holder's child.
    fn plain_hold_renewed(&mut self) -> Option<Refusal> {
        let now = Instant::now();
        let timing = self.timing();
        if self.plain_until.is_some_and(|until| now >= until) {
            self.plain_until = None;
        }
        let current = self.elector.current();
        match (current.filter(|current| is_plain_hold(current)), &self.plain_seen) {
            (Some(current), None) => {
                let holder = crate::lease::shown(current.record.holder_identity.as_deref().unwrap_or_default());
                tracing::info!(lease = %self.name, holder = %holder, "a plain lease of that name is held: waiting it out");
                self.plain_until = Some(now + crate::lease::holder_duration(&current.record, timing));
                self.plain_seen = Some(current.record.clone());
                self.plain_seen_uid = current.metadata.uid.clone();
                None
            }
            (Some(current), Some(seen)) if *seen != current.record => {
                Some(Refusal::NotASlot { holder: current.record.holder_identity.clone().unwrap_or_default() })
            }
            // The hold seen is no longer on the record, and its wait is not over.
            (None, Some(seen)) if self.plain_until.is_some() => {
                // Only the plain holder's own release, seen before anything else came of the hold: once it
                // was seen gone, a release is of whoever took the name since, and says nothing of the plain
                // holder's child (found by review, helper-184: another process's release of the slot, or a
                // later plain lock's, let this one take a slot beside the plain holder's child).
                let released = !self.plain_gone
                    && current.is_some_and(|current| released_by(seen, self.plain_seen_uid.as_deref(), current));
                if self.elector.held().is_some() || released {
                    self.plain_until = None;
                } else if !std::mem::replace(&mut self.plain_gone, true) {
                    let full = crate::lease::holder_duration(seen, timing).max(timing.lease_duration);
                    self.plain_until = self.plain_until.max(Some(now + full));
                    let how = match current {
                        Some(current) if !current.record.holder_identity.as_deref().unwrap_or("").is_empty() => {
                            "taken by another process, which may not have seen the hold"
                        }
                        _ => "deleted or made free by hand",
                    };
                    tracing::info!(lease = %self.name, "the plain lease of that name was {how}: waiting out the hold it had");
                }
                None
            }
            _ => None,
        }
    }

    /// Whether a plain lease's hold on this slot's name is not waited out yet (see `plain_hold_renewed`): the
    /// record seen last is one, or, once one was seen, its wait is not over, whatever the record shows now
    /// (found by review, helper-172: a force unlock or a deletion let the semaphore take another slot at
    /// once, beside the plain holder's child).
    fn plain_hold_pending(&self, now: Instant) -> bool {
        let live = self.elector.current().is_some_and(is_plain_hold)
            && self.elector.observed_expiry().is_none_or(|expiry| now < expiry);
        live || self.plain_until.is_some_and(|until| now < until)
    }

    /// Whether the record seen last is the plain lease's hold first seen on this slot's name, waited out
    /// unchanged (see `plain_hold_renewed`): free to take.
    fn plain_hold_waited_out(&self, now: Instant) -> bool {
        self.plain_until.is_none()
            && !self.plain_hold_pending(now)
            && self
                .elector
                .current()
                .is_some_and(|current| is_plain_hold(current) && self.plain_seen.as_ref() == Some(&current.record))
    }

    /// The holder of the record seen last, if any.
    pub fn holder(&self) -> Option<String> {
        self.elector.current()?.record.holder_identity.clone().filter(|h| !h.is_empty())
    }

    /// Drive the slot until something happens that the caller must know. Cancel-safe.
    ///
    /// `may_acquire` is shared by the slots of one campaign: a slot that starts an acquisition clears it,
    /// so that at most one is in flight. `watch_when_waiting`: start a watch when the slot has to wait
    /// (an uncontended run never needs one).
    pub async fn step(&mut self, may_acquire: &AtomicBool, watch_when_waiting: bool) -> Progress {
        let was_usable = self.elector.usable(Instant::now());
        let renewed_before = self.elector.held().map(|held| held.last_renew_sent);
        self.elector.set_watching(self.watch.is_some());
        let action = self.elector.next(now());
        let mut wake: Option<Instant> = None;
        let retry_pending = self.retry_at.is_some_and(|at| Instant::now() < at);
        match action {
            Action::Lost(reason) => return Progress::Lost(reason),
            Action::Refuse(refusal) => return Progress::Refused(refusal),
            Action::WaitUntil(at) => {
                wake = Some(at);
                if let Some(not_before) = self.watch_not_before.filter(|at| Instant::now() < *at) {
                    if watch_when_waiting && self.elector.held().is_none() && self.watch.is_none() {
                        wake = Some(at.min(not_before));
                    }
                } else if watch_when_waiting && self.elector.held().is_none() && self.watch.is_none() {
                    // From the record the elector knows: no list, and no change after it missed.
                    let (retry_period, known) = (self.timing().retry_period, self.elector.current());
                    self.watch = Some(self.store.watch_from(&self.name, retry_period, known));
                }
            }
            _ if self.call.is_some() => {}
            _ if retry_pending => wake = self.retry_at,
            Action::Read => {
                self.retry_at = None;
                self.read_floor = self.elector.known_version();
                let (store, name) = (self.store.clone(), self.name.clone());
                self.reading = true;
                let limit = self.read_limit.clone();
                self.call = Some(Box::pin(async move {
                    let _permit = match &limit {
                        Some(limit) => limit.acquire().await.ok(),
                        None => None,
                    };
                    Outcome::Read(store.get(&name).await)
                }));
            }
            Action::Write(write) => {
                let acquiring = self.elector.held().is_none();
                if acquiring && !may_acquire.load(Ordering::Relaxed) {
                    // Another slot's acquisition is on the wire: its result, or an event, wakes us.
                } else if acquiring && self.watch.is_some() && self.last_look().await {
                    // The watch had news: look again from the start.
                    return Progress::Changed;
                } else if acquiring && !may_acquire.swap(false, Ordering::Relaxed) {
                    // Another slot sent its acquisition while this one looked: its result, or an event,
                    // wakes us.
                } else {
                    self.retry_at = None;
                    self.sent_base = write.resource_version().map(str::to_string);
                    let ticket = self.elector.write_sent(&write, Instant::now());
                    let (store, name) = (self.store.clone(), self.name.clone());
                    self.reading = false;
                    self.call = Some(Box::pin(async move { Outcome::Write(ticket, store.write(&name, &write).await) }));
                }
            }
        }
        if let Some(held) = self.elector.held() {
            // Whatever is in flight, wake at the renew deadline.
            let deadline = held.deadline(self.timing());
            wake = Some(wake.map_or(deadline, |at| at.min(deadline)));
        }

        let (has_call, has_watch) = (self.call.is_some(), self.watch.is_some());
        let call = self.call.as_mut();
        let watch = self.watch.as_mut();
        tokio::select! {
            outcome = async { call.expect("guarded").await }, if has_call => {
                self.call = None;
                if let Some(fatal) = self.finish(outcome) {
                    return Progress::Fatal(fatal);
                }
            }
            update = async { watch.expect("guarded").updates.recv().await }, if has_watch => self.watch_update(update),
            () = sleep_until(wake) => {}
        }
        self.report_collision();
        if let (Some(before), Some(held)) = (renewed_before, self.elector.held())
            && held.last_renew_sent > before
            && self.told_acquired
        {
            self.observer.confirmed(held.last_renew_sent);
        }
        // Not told to the observer here: the campaign tells it of the one slot it takes (see `tell_acquired`).
        match (was_usable, self.elector.usable(Instant::now())) {
            (false, true) => Progress::Acquired,
            _ => Progress::Changed,
        }
    }

    /// A last look at the watch before an acquisition is sent: the write that took the lease may have
    /// reached us already (received, not yet read), and seeing it saves a race lost with a 409; it counts
    /// as a race lost all the same. Whether there was news. Cancel-safe: events taken are applied at once.
    async fn last_look(&mut self) -> bool {
        tokio::task::yield_now().await;
        if !self.take_ready_events() {
            return false;
        }
        if !matches!(self.elector.next(now()), Action::Write(_)) {
            self.elector.beaten_before_sending();
        }
        true
    }

    /// Feed the watch's events that are ready to the elector, without waiting; whether there were any.
    fn take_ready_events(&mut self) -> bool {
        let mut any = false;
        while let Some(watch) = self.watch.as_mut() {
            match watch.updates.try_recv() {
                Ok(update) => {
                    self.watch_update(Some(update));
                    any = true;
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => self.watch_update(None),
            }
        }
        any
    }

    /// One update from the watch: an event for the elector, or `None` when the watch task ended (it does
    /// on its own only when its reads were refused in a way retrying will not fix: credentials refused,
    /// get forbidden): read now, so that this process's own read meets the refusal (found by review,
    /// helper-146: a waiter whose credentials were revoked waited, blind, for the last record seen to
    /// expire).
    fn watch_update(&mut self, update: Option<WatchUpdate>) {
        match update {
            Some(update) => {
                self.race_unseen = false;
                self.elector.observe_event(update, Instant::now());
            }
            None => {
                self.watch = None;
                self.watch_not_before = Some(Instant::now() + self.timing().retry_period);
                self.elector.want_read();
            }
        }
    }

    /// Feed a finished call to the elector; a failure retrying will not fix, while not holding, is
    /// returned.
    fn finish(&mut self, outcome: Outcome) -> Option<Error> {
        let holding = self.elector.held().is_some();
        self.looked_at |= matches!(outcome, Outcome::Read(_));
        if let Outcome::Read(result) = &outcome {
            self.unreadable = matches!(result, Err(StoreError::Unreadable(_)));
        }
        let refused_at = self.refused_at.take();
        let raced = refused_at.is_some();
        let failure = match outcome {
            Outcome::Read(Ok(current)) => {
                // At the version the write was based on, or below it (versions gone back, an etcd
                // restore: found by review, a write, a 409 and a read went round without pause).
                let unchanged = refused_at.and_then(|(base, refusal)| match (current.as_ref(), &base) {
                    (Some(current), Some(base)) if current.resource_version == *base => Some((refusal, "unchanged")),
                    (Some(current), Some(base)) if crate::lease::is_older(&current.resource_version, base) => {
                        Some((refusal, "at an older version"))
                    }
                    (None, None) => Some((refusal, "unchanged")),
                    _ => None,
                });
                let floor = self.read_floor.take();
                self.race_unseen = false;
                self.elector.read_answered(&self.name, floor.as_deref(), current.as_ref());
                self.elector.observe(current, Instant::now());
                // A renewal beaten by another writer's change that left the hold ours (a label, an
                // annotation, another field set by a tool): renew on the version just read now, as
                // client-go's read-then-write does, not a retry period later (found by review: a tool
                // touching the Lease once a retry period made every renewal a 409 until the renew
                // deadline, and the child was stopped). At most once per quarter retry period, so a
                // writer that never stops cannot drive a tight loop.
                let now = Instant::now();
                if holding
                    && raced
                    && unchanged.is_none()
                    && self.raced_renewal_at.is_none_or(|at| now >= at + self.timing().retry_period / 4)
                    && self.elector.renew_now(now)
                {
                    self.raced_renewal_at = Some(now);
                }
                unchanged.map(|(refusal, how)| {
                    StoreError::Transient(format!("{refusal} (refused as a conflict, yet the lease is {how})"))
                })
            }
            Outcome::Read(Err(err)) => {
                self.elector.want_read();
                Some(err)
            }
            Outcome::Write(ticket, result) => {
                let sent_at = ticket.sent_at;
                self.elector.write_result(ticket, write_result(&result), Instant::now());
                if holding && self.told_acquired && self.elector.held().is_some() && result.is_ok() {
                    self.observer.renewed(sent_at, Instant::now());
                }
                match result {
                    // A lost race is settled by reading again (or by the next event), not retried.
                    Err(StoreError::Conflict(refusal)) => {
                        // Unless the winner's record is known already (the watch showed it).
                        self.race_unseen = !holding
                            && self.elector.current().is_none_or(|current| {
                                let holder = current.record.holder_identity.as_deref().unwrap_or("");
                                holder.is_empty() || holder == self.elector.identity()
                            });
                        self.refused_at = Some((self.sent_base.take(), refusal));
                        None
                    }
                    Ok(_) => None,
                    Err(err) => Some(err),
                }
            }
        };
        let Some(err) = failure else {
            // A conflict is no recovery until the read after it shows the race it lost.
            if self.refused_at.is_none() {
                self.failures = 0;
                self.log.recovered();
            }
            return None;
        };
        self.observer.api_error(err.kind());
        let err = match err {
            // While holding, nothing is fatal: failures count against the renew deadline.
            StoreError::Fatal(fatal) if !holding => return Some(fatal),
            err => err,
        };
        self.failures += 1;
        self.log.failed(&err.to_string());
        if !holding || self.elector.held().is_none() {
            self.retry_at = Some(Instant::now() + backoff(self.timing().retry_period, self.failures));
        } else if matches!(err, StoreError::Unknown(_) | StoreError::Transient(_)) {
            // A holder keeps its renewal cadence; only the read that settles an unknown outcome waits a
            // little, so a dead server is not asked in a tight loop.
            self.retry_at = Some(Instant::now() + backoff(self.timing().retry_period / 4, self.failures));
        }
        None
    }

    fn report_collision(&mut self) {
        if self.elector.take_collision() {
            if !self.collision_reported
                && let Some(index) = self.slot_index
            {
                // A semaphore's slot: exclusion is per slot, and another slot may be used (found by review,
                // helper-162: "never running beside it" was said, and then the process ran on slot 1).
                self.collision_reported = true;
                tracing::warn!(
                    lease = %self.name,
                    identity = %self.elector.identity(),
                    "slot {index} is held under this identity by another process: not using it; give every \
                     process its own {}",
                    self.identity_option
                );
            } else if !self.collision_reported {
                self.collision_reported = true;
                tracing::error!(
                    lease = %self.name,
                    identity = %self.elector.identity(),
                    "the lease is held under this process's identity by another process (identity collision): \
                     never running beside it; give every process its own {}",
                    self.identity_option
                );
            }
        } else if self
            .elector
            .current()
            .is_none_or(|c| c.record.holder_identity.as_deref() != Some(self.elector.identity()))
        {
            self.collision_reported = false;
        }
    }

    /// Give back whatever this slot holds, or may hold through a write whose outcome is unknown: the call
    /// in flight is finished first (its outcome may change what we hold), within `budget`; then, within
    /// `budget` again, the record is read if needed, and released only if it is our own write. Returns
    /// whether a release was written.
    ///
    /// The second budget counts from the end of the call in flight (found by review): counted from the
    /// start, a write whose answer took a whole call timeout used it up, and a lease whose acquisition
    /// had landed was left held for its duration.
    pub async fn settle(&mut self, budget: Duration) -> Result<bool, StoreError> {
        // A hold being given back is over for the observer from now, not once the release is answered: the
        // next holder may take the lease as soon as the release is committed (found by review, rv229: the
        // old holder's `/leader` answered 200 beside the new holder's until the release's answer came).
        // Only a hold the observer was told of ends for it: the slots of a semaphore share one observer,
        // and another slot given back (an acquisition that landed late) must not end the one in use (found
        // by review).
        if std::mem::take(&mut self.told_acquired) {
            self.observer.released();
        }
        // The give-back's writes are bounded by `budget` alone, also after a campaign cut short.
        self.store.give_up_at(None);
        let finished = match self.call.take() {
            // A read changes nothing: when nothing is held or in doubt there is nothing it could tell the
            // give-back, so it is not waited for (found by review: `--timeout 2s` ended after 3.8 s, its
            // last read waiting for a lock directory that another process held). Unless an acquisition
            // given up unresolved may have landed: the read may show it, to give back (helper-114).
            Some(_) if self.reading && !self.holds_anything() && !self.elector.has_strays() => {
                self.elector.want_read();
                true
            }
            Some(call) => match tokio::time::timeout(budget, call).await {
                Ok(outcome) => {
                    self.finish(outcome);
                    true
                }
                Err(_) => false,
            },
            None => true,
        };
        let result = match finished {
            true => {
                let until = Instant::now() + budget;
                tokio::time::timeout(budget, self.settle_until(until)).await.ok()
            }
            false => None,
        };
        // An acquisition whose answer never came, and that no read showed, may land after the give-back:
        // the lease then names this process as holder until it expires, and its next waiter waits that out.
        // Said, not silent (a `--timeout` ended with 124 and the lease held in its name for its duration).
        if self.elector.acquisition_unresolved() {
            tracing::warn!(
                lease = %self.name,
                "an acquisition this process sent got no answer; if it still lands, the lease names this process \
                 as holder until it expires (at most {}) or this process takes it again",
                humantime::format_duration(self.timing().lease_duration)
            );
        } else if self.elector.stray_in_doubt() {
            // Answered 409 or 429, and no read since: a proxy's retry of a committed write is answered so
            // (found by review, helper-176: said of nothing, the lease was left held in the name of a process
            // that had exited).
            tracing::warn!(
                lease = %self.name,
                "an acquisition this process sent was refused, but may have been committed all the same (409 or \
                 429 to a retry); if it was, the lease names this process as holder until it expires (at most {})",
                humantime::format_duration(self.timing().lease_duration)
            );
        }
        self.elector.released();
        self.call = None;
        match result {
            Some(Ok(released)) => Ok(released),
            Some(Err(err)) => Err(err),
            None => Err(StoreError::Transient(format!("releasing lease {} took longer than {budget:?}", self.name))),
        }
    }

    /// Give the record back if it is our own write, trying until `until` (found by review: four reads
    /// 100 ms apart were over long before the API server's throttling, `Retry-After: 1`, was, and the
    /// lease was left held by a process that had gone).
    async fn settle_until(&mut self, until: Instant) -> Result<bool, StoreError> {
        let mut last_error = None;
        let mut pause = Duration::from_millis(100);
        for attempt in 0.. {
            if attempt > 0 {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                tokio::time::sleep(pause.min(left)).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            // Read first when the record we know may be out of date: a write's outcome is unknown, or an
            // acquisition of ours given up unresolved (answered 409 or 429, say) may have landed unseen while
            // nothing is held (found by review, helper-176: a `lock --timeout` that ended between the 409 and
            // its read left the lease held in its name), or an earlier attempt failed.
            if attempt > 0
                || self.elector.unresolved_write()
                || (self.elector.held().is_none() && self.elector.has_strays())
            {
                let floor = self.elector.known_version();
                match self.store.get(&self.name).await {
                    Ok(current) => {
                        // Versions gone back (an etcd restore) are seen here too, as by the campaign's reads:
                        // else the give-back is sent again on the version known before, which the restored
                        // etcd may hand out again to another's acquisition, and lands over it (found by the
                        // property model, helper-149).
                        self.elector.read_answered(&self.name, floor.as_deref(), current.as_ref());
                        self.elector.observe(current, Instant::now())
                    }
                    Err(StoreError::Fatal(err)) => return Err(StoreError::Fatal(err)),
                    Err(err) => {
                        last_error = Some(err);
                        continue;
                    }
                }
            }
            // Only a record that is our own write is ever released. Read after a refused release: said given
            // back if it landed, or if the lease went on from our hold meanwhile (found by review, helper-176:
            // a waiter that took it on the release's event made it "not given back").
            let Some(write) = self.elector.release(now()) else {
                return Ok(attempt > 0 && (self.elector.release_landed() || self.elector.release_went_on()));
            };
            match send(&self.store, &self.name, &mut self.elector, &write).await {
                Ok(_) => return Ok(true),
                Err(StoreError::Fatal(err)) => return Err(StoreError::Fatal(err)),
                Err(err) => {
                    tracing::debug!(lease = %self.name, error = %err, "release did not go through; reading the lease again");
                    last_error = Some(err);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| StoreError::Transient(format!("lease {} kept changing", self.name))))
    }
}

/// How long a campaign waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Until acquired.
    Forever,
    /// One attempt: give up as soon as every slot is seen held by another (API failures are retried for
    /// up to a lease duration).
    NoWait,
    /// Until acquired, or this moment.
    Until(Instant),
}

/// How a campaign ended.
#[derive(Debug)]
pub enum Campaigned {
    /// This slot is held.
    Acquired(usize),
    /// Not acquired (`--no-wait` found it held, or the deadline passed); the last API error, if any.
    NotAcquired { last_error: Option<String> },
}

/// A live record of a plain lease (it names a holder, and no slot count).
fn is_plain_hold(current: &Versioned) -> bool {
    !current.record.holder_identity.as_deref().unwrap_or("").is_empty()
        && current.metadata.annotations.as_ref().is_none_or(|a| !a.contains_key(crate::lease::SLOTS_ANNOTATION))
}

/// How many reads a semaphore's slots may have on the wire at once (see `Slot::with_read_limit`): enough
/// for the first look at a hundred slots to take a few round trips, few enough that a thousand reuse
/// their connections instead of opening one each.
pub const SLOT_READS_AT_ONCE: usize = 32;

/// Wait for and acquire one of `slots`. Waiting is driven by the watches; timers only wake us when an
/// observed lease expires, when a retry is due, or at the deadline. Cancel-safe (calls in flight stay in
/// the slots; `settle` them afterwards).
pub async fn campaign(slots: &mut [Slot], wait: Wait, lease: &str) -> Result<Campaigned, Error> {
    campaign_from(slots, wait, lease, Instant::now()).await
}

/// As [`campaign`], for one attempt (`Wait::NoWait`) that began at `started`: a semaphore's attempt
/// settles its marker first, and both share one bound, a lease duration from `started` (found by review:
/// each had a bound of its own, two lease durations in all on a failing server).
pub async fn campaign_from(slots: &mut [Slot], wait: Wait, lease: &str, started: Instant) -> Result<Campaigned, Error> {
    // A write still waiting for the file backend's lock at a `--timeout`'s end gives up then, unapplied
    // (found by review: `--timeout 2s` ended after 3.8 s while another process held the lock directory).
    // Until the campaign ends: a cancelled one is settled, which lifts it too.
    let give_up_at = match wait {
        Wait::Until(at) => Some(at),
        Wait::Forever | Wait::NoWait => None,
    };
    slots.iter_mut().for_each(|slot| slot.store.give_up_at(give_up_at));
    let campaigned = campaign_slots(slots, wait, lease, started).await;
    slots.iter_mut().for_each(|slot| slot.store.give_up_at(None));
    campaigned
}

async fn campaign_slots(slots: &mut [Slot], wait: Wait, lease: &str, started: Instant) -> Result<Campaigned, Error> {
    let deadline = match wait {
        Wait::Forever => None,
        Wait::Until(at) => Some(at),
        // One attempt: a lease duration from its start, but two call timeouts for the slots at least, so
        // that every slot is looked at once however long the marker took (found by review: a marker
        // settled at the bound left the slots unread, and a free semaphore was "not acquired").
        Wait::NoWait => {
            let timing = slots.first().map(Slot::timing);
            let bound = timing.map_or(Duration::from_secs(15), |t| t.lease_duration);
            let floor = timing.map_or(Duration::from_secs(10), |t| t.call_timeout() * 2);
            Some((started + bound).max(Instant::now() + floor))
        }
    };
    if wait == Wait::NoWait {
        // One attempt answers from a fresh look, as a new `mpsync lock --no-wait` process would: what the
        // slots observed before (an earlier campaign of the same slots) may be long out of date. What they
        // learnt stays: tokens continue, a holder seen earlier is still waited out from when it was seen.
        for slot in slots.iter_mut().filter(|slot| slot.elector.has_observed() && slot.call.is_none()) {
            slot.elector.want_read();
        }
    }
    let mut announced = false;
    let call_timeout = slots.first().map_or(Duration::from_secs(5), |slot| slot.timing().call_timeout());
    let floor = call_timeout * 2;
    let batches = u32::try_from(slots.len().div_ceil(SLOT_READS_AT_ONCE)).unwrap_or(u32::MAX);
    let first_look = call_timeout.saturating_mul(batches);
    let mut first_look_done_at = None;
    // One slot is a plain lease (`--slots 1` too).
    let semaphore = slots.len() > 1;
    loop {
        // Held, and not waiting out another holder (see `Held::usable_from`); never past `--timeout`, not even
        // a hold whose answer came with the deadline, seen late (mpsync frozen or starved across it): it is
        // given back, not acquired (found by review, rv227: the child started after the timeout).
        let past_timeout = matches!(wait, Wait::Until(at) if Instant::now() >= at);
        if !past_timeout && let Some(index) = slots.iter().position(|slot| slot.elector.usable(Instant::now())) {
            slots[index].tell_acquired();
            return Ok(Campaigned::Acquired(index));
        }
        let all_held_by_others = slots.iter_mut().all(Slot::held_by_another);
        if all_held_by_others && !announced {
            announced = true;
            let holders: Vec<String> = slots.iter().filter_map(Slot::holder).map(|h| crate::lease::shown(&h)).collect();
            tracing::info!(lease = %lease, holder = %holders.join(","), "held by another; waiting");
        }
        if all_held_by_others && wait == Wait::NoWait {
            tracing::info!(lease = %lease, "held by another process; not waiting (--no-wait)");
            return Ok(Campaigned::NotAcquired { last_error: None });
        }
        // One attempt's bound waits for the first look at every slot (a read answered, or failed), and
        // then leaves two call timeouts for an acquisition (found by review, helper-117: 1000 free slots
        // were "not acquired" with short timings, their first look not done by the bound).
        if first_look_done_at.is_none() && slots.iter().all(|slot| slot.looked_at || slot.elector.has_observed()) {
            first_look_done_at = Some(Instant::now());
        }
        let deadline = match wait {
            Wait::NoWait => match first_look_done_at {
                Some(looked) => deadline.map(|deadline| deadline.max(looked + floor)),
                // Never unbounded: the first look takes a call timeout per batch of reads at most, unless
                // failed reads retried take their turns too (found by review, helper-118).
                None => deadline.map(|deadline| deadline + first_look),
            },
            Wait::Forever | Wait::Until(_) => deadline,
        };
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            let last_error = slots.iter().find_map(|slot| slot.log.last_error().map(str::to_string));
            match &last_error {
                Some(err) => tracing::error!(lease = %lease, last_error = %err, "lease not acquired in time"),
                // Nothing answered yet (a proxy that is a black hole, a server that takes longer than the
                // time given): said, as it is no "held by another" (found by review, helper-122).
                None if !slots.iter().any(|slot| slot.looked_at || slot.elector.has_observed()) => {
                    tracing::warn!(lease = %lease, "lease not acquired in time: no answer came from the store yet")
                }
                None => tracing::info!(lease = %lease, "lease not acquired in time"),
            }
            return Ok(Campaigned::NotAcquired { last_error });
        }
        // A semaphore whose count (or a slot's name) disagrees with ours is refused on whichever slot
        // shows it, before any slot is acquired; so is one whose slot name a plain lease's holder renews.
        if let Some((slot, refusal)) = slots.iter().find_map(|slot| Some((slot, slot.elector.refusal()?))) {
            return Err(Error::Api(format!("lease {}: cannot be acquired: {refusal}", slot.name)));
        }
        let now = Instant::now();
        if semaphore
            && let Some((slot, refusal)) =
                slots.iter_mut().find_map(|slot| Some((slot.name.clone(), slot.plain_hold_renewed()?)))
        {
            return Err(Error::Api(format!("lease {slot}: cannot be acquired: {refusal}")));
        }
        // One attempt waits for no holder, a plain lease's neither.
        if wait == Wait::NoWait && semaphore && slots.iter().any(|slot| slot.plain_hold_pending(now)) {
            tracing::info!(lease = %lease, "a plain lease of a slot's name is held by another process; not waiting (--no-wait)");
            return Ok(Campaigned::NotAcquired { last_error: None });
        }
        // No acquisition before every slot was looked at once (a semaphore's count is checked on all of
        // them before anyone acquires), nor while a plain lease's hold on a slot's name is not waited out,
        // and never two at once. A slot that cannot be read (a corrupt record, say) counts as held: it is
        // retried, with a warning, while the others are used. A slot whose acquisition lost a race to a
        // record not seen yet is looked at before another is acquired: that record may be a plain lease's
        // (found by review, helper-175: with the file backend, slot 0's create put back a plain holder's
        // record deleted by hand, and slot 1 was taken before slot 0's read showed that hold).
        let held_back = semaphore && slots.iter().any(|slot| slot.plain_hold_pending(now) || slot.race_unseen);
        let may_acquire = AtomicBool::new(
            slots.iter().all(|slot| slot.looked_at || slot.elector.has_observed())
                && !slots.iter().any(Slot::acquisition_pending)
                && !held_back,
        );
        // Woken when a plain hold's wait ends, as no slot's step may be.
        let plain_hold_over = slots.iter().filter_map(|slot| slot.plain_until).min().filter(|_| held_back);
        let wake = deadline.into_iter().chain(plain_hold_over).min();
        // A plain lease's record on a slot's name, waited out, is the slot taken: made a slot, it costs no
        // later user that wait again (found by review, helper-175: another slot was taken each time, every
        // user waited a dead holder's record out, and `--no-wait` never acquired, with that slot free).
        let first = slots.iter().position(|slot| semaphore && slot.plain_hold_waited_out(now));
        let no_acquisition = AtomicBool::new(false);
        let steps = slots.iter_mut().enumerate().map(|(index, slot)| {
            let may_acquire = if first.is_none_or(|first| first == index) { &may_acquire } else { &no_acquisition };
            Box::pin(slot.step(may_acquire, true))
        });
        let (progress, index) = tokio::select! {
            (progress, index, _) = futures::future::select_all(steps) => (progress, index),
            () = sleep_until(wake) => continue,
        };
        match progress {
            Progress::Acquired | Progress::Changed => {}
            // A loss while campaigning (a late answer about an earlier hold): nothing runs; start afresh.
            Progress::Lost(_) => slots[index].forget_loss(),
            Progress::Refused(refusal) => {
                return Err(Error::Api(format!("lease {}: cannot be acquired: {refusal}", slots[index].name)));
            }
            Progress::Fatal(err) => return Err(err),
        }
    }
}

/// Settle a semaphore's marker (see `lease::semaphore_marker`) before any of its slots is acquired:
/// create it, or check that it records `slots` (and is no other semaphore's slot). Transient failures are
/// retried (with backoff) until `deadline`, if any: then `Ok(Err(Some(the last error)))`, which is "not
/// acquired", as for a campaign that met the same. A plain lease's live record of that name is waited out
/// (`timing` for a record that gives no duration), looked at again every retry period: marked if it
/// stays unchanged for its holder's duration, refused if it changes while live (found by review,
/// helper-162: a dead holder's record refused the semaphore for ever). One attempt (`no_wait`) waits for
/// no holder: `Ok(Err(None))`, held by another.
pub async fn settle_marker(
    store: &Store,
    name: &str,
    slots: u32,
    timing: Timing,
    no_wait: bool,
    deadline: Option<Instant>,
) -> Result<Result<(), Option<String>>, Error> {
    // A write waiting for the file backend's lock gives up at the deadline too, unapplied, as the
    // campaign's writes do (found by review, helper-114: `--slots 2 --timeout 1s` on a fresh semaphore
    // waited 30 s for a busy lock directory, three quarters into a 40 s call timeout).
    let mut store = store.clone();
    store.give_up_at(deadline);
    let store = &store;
    let mut failures = 0;
    let mut log = FailureLog::new(name, "reading the semaphore's marker");
    let refuse = |refusal: crate::lease::Refusal| {
        Err(Error::Api(format!("semaphore {name}: cannot be used with {slots} slots: {refusal}")))
    };
    let mut last_error = None;
    let mut looked = false;
    let mut conflicts = 0;
    // A plain lease's live record of that name, and when it is waited out (its duration from first seen);
    // the uid of the Lease that carried it.
    let mut plain_seen: Option<(LeaseSpec, Instant)> = None;
    let mut plain_seen_uid: Option<String> = None;
    // Whether that record was seen deleted or made free by hand since.
    let mut plain_gone = false;
    loop {
        // Never past the deadline after a first look, whatever kept it from settling (found by review:
        // writes whose outcome stayed unknown were looked at again at once, for ever).
        if std::mem::replace(&mut looked, true)
            && let Some(deadline) = deadline
            && Instant::now() >= deadline
        {
            let why = last_error.unwrap_or_else(|| "no answer in time".to_string());
            return Ok(Err(Some(format!("semaphore {name}: cannot settle its marker: {why}"))));
        }
        let waited_out = plain_seen.as_ref().filter(|(_, until)| Instant::now() >= *until).map(|(seen, _)| seen);
        // Once a plain hold was seen, nothing is written before it is waited out, whatever the record shows
        // meanwhile, unless it is the release of a holder (found by review, helper-172: deleted, or made
        // free by hand, it was marked at once, and the semaphore's child ran beside the plain holder's).
        let pending = plain_seen.as_ref().filter(|_| waited_out.is_none()).map(|(seen, _)| seen);
        // Once it was seen gone, no release ends its wait (see `plain_hold_renewed`).
        let pending = pending.map(|seen| (seen, (!plain_gone).then_some(plain_seen_uid.as_deref())));
        let look = look_at_marker(store, name, slots, waited_out, pending);
        // A look ends by the deadline, or a call's time from now if that is later (a first look is always
        // given one): a list of many pages is not read on past it (found by review, rv280: `--timeout 2s`
        // answered after 8.5 s, ten pages of a semaphore's first use at 700 ms each).
        let look = match deadline {
            Some(deadline) => {
                let by = deadline.max(Instant::now() + timing.call_timeout());
                tokio::time::timeout_at(by.into(), look).await.unwrap_or_else(|_| {
                    Err(StoreError::Transient(format!(
                        "semaphore {name}: no answer from the API server by the deadline"
                    )))
                })
            }
            None => look.await,
        };
        conflicts = if matches!(look, Err(StoreError::Conflict(_))) { conflicts + 1 } else { 0 };
        let failure = match look {
            Ok(MarkerLook::Settled) => return Ok(Ok(())),
            Ok(MarkerLook::Refused(refusal)) => return refuse(refusal),
            Ok(MarkerLook::PlainHold(record, uid)) => {
                let holder = crate::lease::shown(record.holder_identity.as_deref().unwrap_or_default());
                if no_wait {
                    tracing::info!(lease = %name, holder = %holder, "a plain lease of that name is held by another process; not waiting (--no-wait)");
                    return Ok(Err(None));
                }
                let until = match &plain_seen {
                    None => {
                        let until = Instant::now() + crate::lease::holder_duration(&record, timing);
                        tracing::info!(lease = %name, holder = %holder, "a plain lease of that name is held: waiting it out");
                        plain_seen = Some((record, until));
                        plain_seen_uid = uid;
                        until
                    }
                    Some((seen, _)) if *seen != record => {
                        return refuse(Refusal::NotASlot { holder: record.holder_identity.unwrap_or_default() });
                    }
                    Some((_, until)) => *until,
                };
                last_error = Some(format!("a plain lease of that name, held by {holder}, has not expired yet"));
                let next = (Instant::now() + timing.retry_period.max(Duration::from_millis(500))).min(until);
                sleep_until(Some(deadline.map_or(next, |deadline| next.min(deadline)))).await;
                continue;
            }
            Ok(MarkerLook::Unseen) => {
                // Deleted or made free by hand while waited out: renewals may have come unseen between two
                // looks, so it counts as held a full duration from when that was first seen, as a plain
                // waiter counts it.
                if !std::mem::replace(&mut plain_gone, true)
                    && let Some((seen, until)) = plain_seen.as_mut()
                {
                    let full = crate::lease::holder_duration(seen, timing).max(timing.lease_duration);
                    *until = (*until).max(Instant::now() + full);
                    tracing::info!(lease = %name, "the plain lease of that name was deleted or made free by hand: waiting out the hold it had");
                }
                let until = plain_seen.as_ref().map_or_else(Instant::now, |(_, until)| *until);
                let next = (Instant::now() + timing.retry_period.max(Duration::from_millis(500))).min(until);
                sleep_until(Some(deadline.map_or(next, |deadline| next.min(deadline)))).await;
                continue;
            }
            Ok(MarkerLook::Released) => {
                plain_seen = None;
                plain_gone = false;
                None
            }
            // Written, or someone else wrote first: look again at once.
            Ok(MarkerLook::Again) => None,
            Err(StoreError::Conflict(_)) if conflicts == 1 => None,
            // Conflicts one after another are no race (every write refused): wait, as for a failure.
            Err(StoreError::Conflict(err)) => Some(StoreError::Transient(err)),
            Err(StoreError::Fatal(err)) => return Err(err),
            // A write whose outcome is unknown, or a failure: look again after a backoff.
            Err(err) => Some(err),
        };
        let Some(err) = failure else { continue };
        failures += 1;
        log.failed(&err.to_string());
        // Not settled in time because the store kept failing: not acquired (as a lease whose campaign met
        // the same), with the error.
        let pause = backoff(Duration::from_secs(2), failures);
        let pause = deadline.map_or(pause, |deadline| pause.min(deadline.saturating_duration_since(Instant::now())));
        last_error = Some(err.to_string());
        tokio::time::sleep(pause).await;
    }
}

/// Whether `current` is the release of the plain hold `seen` (of the Lease with uid `seen_uid`) by its own
/// holder: a release (client-go's shape) of the same Lease (not one deleted and made again by another
/// process) that kept the hold's token (another process's acquisition since would have raised it).
fn released_by(seen: &LeaseSpec, seen_uid: Option<&str>, current: &crate::lease::Versioned) -> bool {
    crate::lease::is_release(&current.record)
        && current.record.lease_transitions.unwrap_or(0) == seen.lease_transitions.unwrap_or(0)
        && seen_uid.is_none_or(|uid| current.metadata.uid.as_deref().is_none_or(|current| current == uid))
}

/// What one look at a semaphore's marker found.
enum MarkerLook {
    /// It records our count.
    Settled,
    Refused(crate::lease::Refusal),
    /// A plain lease's live record of that name, not waited out: wait.
    PlainHold(LeaseSpec, Option<String>),
    /// It was written just now: look again.
    Again,
    /// A plain hold seen before and not waited out is gone (deleted, or made free by hand, not released):
    /// wait.
    Unseen,
    /// A plain hold seen before and not waited out was released: its wait is over; look again.
    Released,
}

async fn look_at_marker(
    store: &Store,
    name: &str,
    slots: u32,
    waited_out: Option<&LeaseSpec>,
    pending: Option<(&LeaseSpec, Option<Option<&str>>)>,
) -> Result<MarkerLook, StoreError> {
    let current = store.get(name).await?;
    // The hold seen released ends the wait at once: marked now, the marker read back next was taken for
    // another's written over a hold seen gone, and waited out a full duration more (found by review,
    // helper-175). Only its own holder's release, and only while it was not seen gone (`None` then).
    if let Some((seen, Some(uid))) = pending
        && current.as_ref().is_some_and(|current| released_by(seen, uid, current))
    {
        return Ok(MarkerLook::Released);
    }
    let pending = pending.map(|(seen, _)| seen);
    let write = match (crate::lease::semaphore_marker(current.as_ref(), slots, waited_out), current) {
        (Marker::Refuse(Refusal::NotASlot { .. }), Some(current)) => {
            // A live record that carries a count may be another semaphore's slot: said so, as for a free one.
            if current.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(crate::lease::SLOTS_ANNOTATION))
                && let Some((semaphore, index, slots)) = semaphore_of(store, name).await?
            {
                return Ok(MarkerLook::Refused(crate::lease::Refusal::SlotOfAnother { semaphore, index, slots }));
            }
            return Ok(MarkerLook::PlainHold(current.record, current.metadata.uid));
        }
        (Marker::Refuse(refusal), _) => return Ok(MarkerLook::Refused(refusal)),
        // A marker another process wrote over the hold this one saw (it never saw it) does not end the wait
        // (found by review, helper-174).
        (Marker::Ready, _) if pending.is_some() => return Ok(MarkerLook::Unseen),
        (Marker::Ready, _) => None,
        (Marker::Write(_), _) if pending.is_some() => return Ok(MarkerLook::Unseen),
        (Marker::Write(write), _) => Some(write),
    };
    // Another semaphore's slot carries its count too: it is no marker of ours, whatever the count.
    if let Some((semaphore, index, slots)) = semaphore_of(store, name).await? {
        return Ok(MarkerLook::Refused(crate::lease::Refusal::SlotOfAnother { semaphore, index, slots }));
    }
    let Some(write) = write else { return Ok(MarkerLook::Settled) };
    // No marker (or a free plain lease to mark), but slots that say another count (the marker alone was
    // deleted): the count is theirs; writing ours would lock their users out.
    if let Some(recorded) = slot_count_of(store, name, slots).await?
        && recorded != slots.to_string()
    {
        return Ok(MarkerLook::Refused(crate::lease::Refusal::SlotCountMismatch { recorded, ours: slots }));
    }
    store.write(name, &write).await.map(|_| MarkerLook::Again)
}

/// Whether `name` is a slot of another semaphore: `P-i`, where `P` is a marker that records a count
/// above `i`. A slot carries the count too, so `P` is a marker only when it is no slot itself, and so on
/// up (found by review: `lock X-0-1 --slots 2` was refused as a slot of the slot `X-0`, and then `X-0-1-1`
/// was not seen as a slot of the semaphore `X-0-1`). One read per level, while each name ends in `-i` and
/// its record carries a count, up to `MAX_NESTING` levels (deeper, a parent with a count is taken for a
/// marker). What this process may not read (RBAC by resource name, as `deploy/rbac.yaml` suggests) is no
/// semaphore's.
pub async fn semaphore_of(store: &Store, name: &str) -> Result<Option<(String, usize, u32)>, StoreError> {
    // `name`'s would-be parents, nearest first: each with the index of the one below it, and its count.
    let mut chain: Vec<(&str, usize, Option<u32>)> = Vec::new();
    let mut below = name;
    while chain.len() <= MAX_NESTING
        && let Some((parent, index)) = crate::lease::slot_parent(below)
    {
        let count = readable(store, parent).await?.as_ref().and_then(crate::lease::slot_count);
        chain.push((parent, index, count));
        if count.is_none() {
            break;
        }
        below = parent;
    }
    // Deeper than that, every level with a count: cannot tell; a parent with a count above our index is
    // taken for a marker (refused rather than guessed: found by review).
    if chain.len() > MAX_NESTING
        && chain.last().is_some_and(|(_, _, count)| count.is_some())
        && let Some(&(semaphore, index, Some(slots))) = chain.first()
    {
        return Ok((index < slots as usize).then(|| (semaphore.to_string(), index, slots)));
    }
    // From the top down: a name with a count is a marker unless it is a slot of the marker above it.
    let mut above: Option<(Option<u32>, usize)> = None;
    for &(_, index, count) in chain.iter().rev() {
        let is_slot = matches!(above, Some((Some(slots), at)) if at < slots as usize);
        above = Some((if is_slot { None } else { count }, index));
    }
    Ok(match (chain.first(), above) {
        (Some(&(semaphore, _, _)), Some((Some(slots), index))) if index < slots as usize => {
            Some((semaphore.to_string(), index, slots))
        }
        _ => None,
    })
}

/// Before a plain lock of `name` (or `--slots 1`): refuse it if `name` is a slot of a semaphore, which may
/// have left that slot untaken so far (found by review, helper-162: a plain `lock pool-1` ran on the live
/// semaphore `pool`'s slot 1, and every user of `pool` was refused while it did). Transient failures are
/// retried until `deadline`, as `settle_marker` does: then `Ok(Err(Some(the last error)))`, not acquired.
pub async fn refuse_a_slot_name(
    store: &Store,
    name: &str,
    deadline: Option<Instant>,
) -> Result<Result<(), Option<String>>, Error> {
    if crate::lease::slot_parent(name).is_none() {
        return Ok(Ok(()));
    }
    let mut log = FailureLog::new(name, "finding whether it is a semaphore's slot");
    let mut failures = 0;
    loop {
        failures += 1;
        let err = match semaphore_of(store, name).await {
            Ok(None) => return Ok(Ok(())),
            Ok(Some((semaphore, index, slots))) => {
                return Err(Error::Api(format!(
                    "lease {name}: cannot be acquired: it is slot {index} of the semaphore {semaphore} ({slots} \
                     slots), not a plain lease: use --slots {slots} with {semaphore}, or another name"
                )));
            }
            Err(StoreError::Fatal(err)) => return Err(err),
            Err(err) => err.to_string(),
        };
        log.failed(&err);
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return Ok(Err(Some(format!("lease {name}: cannot tell whether it is a semaphore's slot: {err}"))));
        }
        let pause = backoff(Duration::from_secs(2), failures);
        let pause = deadline.map_or(pause, |deadline| pause.min(deadline.saturating_duration_since(Instant::now())));
        tokio::time::sleep(pause).await;
    }
}

/// How many levels up `semaphore_of` looks.
const MAX_NESTING: usize = 8;

/// `name`'s record, or none where it cannot be read for good (forbidden, unreadable).
async fn readable(store: &Store, name: &str) -> Result<Option<crate::lease::Versioned>, StoreError> {
    match store.get(name).await {
        Err(StoreError::Fatal(_) | StoreError::Unreadable(_)) => Ok(None),
        other => other,
    }
}

/// How many of a semaphore's first slots are read for a recorded count before its marker is written, where
/// the API server forbids listing the namespace's Leases.
const MARKER_PROBES: u32 = 8;

/// A count other than `ours` that a slot of semaphore `name` records, else `ours` if one records it, else
/// none: read when the marker is missing, before it is written (a first use, or a marker deleted while
/// slots remain: found by review, helper-175, rv250, rv273, `--slots 2` wrote the deleted marker of a
/// semaphore whose slots past the first it read were held, and ran its children beside theirs). One list
/// of the namespace's Leases, and every `NAME-i` in it that can be a slot (see [`slot_count_as_slot`]); where
/// the API server forbids listing, the first `MARKER_PROBES` slots are read. Any other failure of the list
/// is no answer: the marker is not written on it (found by review, rv275: a 401 was taken for a refusal).
async fn slot_count_of(store: &Store, name: &str, ours: u32) -> Result<Option<String>, StoreError> {
    let listed = match store.list(None).await {
        Ok(listed) => listed,
        Err(err) if err.is_forbidden() => {
            tracing::warn!(semaphore = %name, error = %err, "cannot list Leases: only the first slots are read for a count");
            return probed_slot_count(store, name, ours).await;
        }
        Err(err) => return Err(err),
    };
    let mut found = None;
    for lease in &listed {
        let Some((semaphore, index)) = lease.metadata.name.as_deref().and_then(crate::lease::slot_parent) else {
            continue;
        };
        if semaphore != name {
            continue;
        }
        if let Some(count) = slot_count_as_slot(lease, index, &listed) {
            if count != ours.to_string() {
                return Ok(Some(count));
            }
            found = Some(count);
        }
    }
    Ok(found)
}

/// [`slot_count_of`] from semaphore `name`'s first `MARKER_PROBES` slots, all read (found by review, rv278:
/// the first that recorded a count was taken, another semaphore's free marker whose own slots a probe cannot
/// see, and a held slot of 10 after it was never read). A record with no count (a plain lease's, on a slot's
/// name) tells none (found by review, helper-175).
async fn probed_slot_count(store: &Store, name: &str, ours: u32) -> Result<Option<String>, StoreError> {
    let mut found = None;
    for index in 0..MARKER_PROBES {
        match store.get(&format!("{name}-{index}")).await {
            Ok(Some(slot)) => {
                if let Some(count) = slot_count_as_slot(&slot, index as usize, &[]) {
                    if count != ours.to_string() {
                        return Ok(Some(count));
                    }
                    found = Some(count);
                }
            }
            Ok(None) => {}
            // A record that cannot be read tells no count: the campaign checks every slot again before it
            // acquires one.
            Err(StoreError::Unreadable(_)) => {}
            // A failed read is no absent slot: the marker is not written on a guess, the look is tried
            // again (found by review, helper-127: one 503 on slot 0's probe let `--slots 2` write the
            // deleted marker of a 3-slot semaphore in use, and every user of 3 was refused from then on).
            Err(err) => return Err(err),
        }
    }
    Ok(found)
}

/// The count `lease` (named `NAME-index`) records, if it can be a slot of the semaphore `NAME`, whose marker
/// is missing. A held one is (a marker never is: found by review, rv276, a held slot whose name was also
/// another semaphore's was passed over). A free one that is another semaphore's marker is not (found by
/// review, rv275: the marker of `NAME-12` of 3, or of `NAME-2026` of 4, gave `NAME` its count): its index is
/// not below the count it records, or it was never held (no `renewTime`), or it has slots of its own, with its
/// count, among the Leases `listed`. A count that is no number is told as it is, to be refused.
pub(crate) fn slot_count_as_slot(
    lease: &crate::lease::Versioned,
    index: usize,
    listed: &[crate::lease::Versioned],
) -> Option<String> {
    let count = lease.metadata.annotations.as_ref()?.get(crate::lease::SLOTS_ANNOTATION)?;
    if lease.record.holder_identity.as_deref().is_some_and(|holder| !holder.is_empty()) {
        return Some(count.clone());
    }
    let Ok(n) = count.parse::<usize>() else { return Some(count.clone()) };
    let own_slots = |slot: &crate::lease::Versioned| {
        slot.metadata.name.as_deref().and_then(crate::lease::slot_parent).is_some_and(|(parent, at)| {
            Some(parent) == lease.metadata.name.as_deref()
                && at < n
                && slot.metadata.annotations.as_ref().and_then(|a| a.get(crate::lease::SLOTS_ANNOTATION)) == Some(count)
        })
    };
    let marker = index >= n || lease.record.renew_time.is_none() || listed.iter().any(own_slots);
    (!marker).then(|| count.clone())
}

/// Renew `slot` until it is lost (returned) or `stop` completes (then `None`: the caller releases).
pub async fn hold(slot: &mut Slot, stop: impl Future<Output = ()>, on_change: impl Fn(&Slot)) -> Option<LossReason> {
    let no_acquisition = AtomicBool::new(false);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            biased;
            () = &mut stop => return None,
            progress = slot.step(&no_acquisition, false) => match progress {
                Progress::Lost(reason) => {
                    slot.tell_lost();
                    return Some(reason);
                }
                _ => on_change(slot),
            },
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until_instant(at).await,
        None => std::future::pending().await,
    }
}

/// Sleep until `at`, on the monotonic clock every deadline here is kept on. tokio's timers fire at or
/// after it, except under tokio's paused test clock (`time::pause`, `start_paused`), which runs ahead
/// of it: woken early, the rest is waited in real time on a blocking thread (the paused clock does not
/// advance meanwhile), instead of waking again at once until the real time comes (found by review: a
/// held lock spun a core under a paused clock). A lease is kept in real time, whatever the runtime's
/// clock says.
pub(crate) async fn sleep_until_instant(at: Instant) {
    tokio::time::sleep_until(at.into()).await;
    let left = at.saturating_duration_since(Instant::now());
    if left > Duration::from_millis(1) {
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(left)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::file::FileStore;

    const T: Timing = Timing {
        lease_duration: Duration::from_secs(15),
        renew_deadline: Duration::from_secs(10),
        retry_period: Duration::from_secs(2),
    };

    async fn take(store: &Store, name: &str, who: &str) -> Elector {
        let mut e = Elector::new(who, T).with_slots(2);
        e.observe(store.get(name).await.unwrap(), Instant::now());
        let Action::Write(w) = e.next(now()) else { panic!("free") };
        send(store, name, &mut e, &w).await.unwrap();
        assert!(e.held().is_some());
        e
    }

    /// Found by review: two slots freed at the same moment, while every slot takes its last look before
    /// writing: the campaign still sends at most one acquisition (7 of 20 campaigns sent two when the
    /// right to send was checked before the look and taken after it).
    #[tokio::test(flavor = "current_thread")]
    async fn two_slots_freed_together_are_never_both_acquired() {
        let mut doubles = 0;
        for attempt in 0..20 {
            let dir = std::env::temp_dir().join(format!("mpsync-engine-slots-{}-{attempt}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let store = Store::File(FileStore::open(dir.clone(), "default".into()).unwrap());
            let mut a = take(&store, "sem-0", "a").await;
            let mut b = take(&store, "sem-1", "b").await;
            let mut slots: Vec<Slot> = ["sem-0", "sem-1"]
                .iter()
                .map(|n| Slot::new(n.to_string(), store.clone(), Elector::new("me", T).with_slots(2), Arc::new(Ignore)))
                .collect();
            let (result, ()) = tokio::join!(
                campaign(&mut slots, Wait::Until(Instant::now() + Duration::from_secs(10)), "sem"),
                async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    // Both released while this runtime's thread is blocked: the campaign sees both at once.
                    let store2 = store.clone();
                    let (a2, b2) = (&mut a, &mut b);
                    std::thread::scope(|s| {
                        s.spawn(|| {
                            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                            rt.block_on(async {
                                release(&store2, "sem-0", a2).await.unwrap();
                                release(&store2, "sem-1", b2).await.unwrap();
                            });
                        });
                    });
                    std::thread::sleep(Duration::from_millis(50));
                }
            );
            assert!(matches!(result, Ok(Campaigned::Acquired(_))), "{result:?}");
            let sent: Vec<bool> = slots.iter().map(|s| s.holds_anything()).collect();
            if sent.iter().all(|x| *x) {
                doubles += 1;
            }
            for s in slots.iter_mut() {
                let _ = s.settle(Duration::from_secs(2)).await;
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        assert_eq!(doubles, 0, "two acquisitions sent at once in {doubles} of 20 campaigns");
    }

    /// Found by review: a semaphore's other slot, whose acquisition had an unknown outcome and landed
    /// late, is given back after the campaign took slot 0. Its settle told the process-wide health
    /// observer `released()`, and /leader answered 503 while slot 0 was held and its child ran.
    #[cfg(feature = "cli")]
    #[tokio::test(flavor = "current_thread")]
    async fn giving_back_another_slot_keeps_the_one_in_use_leading() {
        let dir = std::env::temp_dir().join(format!("mpsync-other-slot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::File(FileStore::open(dir.clone(), "default".into()).unwrap());
        let mut x = take(&store, "sem-1", "x").await;
        release(&store, "sem-1", &mut x).await.unwrap();
        // Slot 1: an acquisition sent whose answer was lost, and a read that did not show it yet.
        let mut late = Elector::new("me", T).with_slots(2);
        late.observe(store.get("sem-1").await.unwrap(), Instant::now());
        let Action::Write(write) = late.next(now()) else { panic!("free") };
        let ticket = late.write_sent(&write, Instant::now());
        late.write_result(ticket, WriteResult::Unknown, Instant::now());
        late.observe(store.get("sem-1").await.unwrap(), Instant::now());
        let health = crate::health::Health::new(T);
        let observer: Arc<dyn Observer> = Arc::new(health.clone());
        let mut slots = vec![
            Slot::new("sem-0".into(), store.clone(), Elector::new("me", T).with_slots(2), observer.clone()),
            Slot::new("sem-1".into(), store.clone(), late, observer),
        ];
        let campaigned = campaign(&mut slots, Wait::Until(Instant::now() + Duration::from_secs(10)), "sem").await;
        let Ok(Campaigned::Acquired(index)) = campaigned else { panic!("{campaigned:?}") };
        assert_eq!(health.answer("/leader", Instant::now(), None).unwrap().status, 200);
        // Slot 1's lost acquisition lands now; the other slot is given back, as `lock.rs` does.
        store.write("sem-1", &write).await.unwrap();
        let other = 1 - index;
        assert!(slots[other].holds_anything());
        slots[other].settle(Duration::from_secs(2)).await.unwrap();
        let leader = health.answer("/leader", Instant::now(), None).unwrap().status;
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(leader, 200, "/leader answers 503 while slot {index} is held");
    }

    /// An identity collision's message names where the caller sets the identity: the CLI's flag, or the
    /// library's builder option.
    #[cfg(feature = "cli")]
    #[tokio::test(flavor = "current_thread")]
    async fn an_identity_collision_names_the_callers_option() {
        use tracing_subscriber::fmt::MakeWriter;

        #[derive(Clone, Default)]
        struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl<'a> MakeWriter<'a> for Captured {
            type Writer = Captured;
            fn make_writer(&'a self) -> Captured {
                self.clone()
            }
        }

        let dir = std::env::temp_dir().join(format!("mpsync-engine-twin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::File(FileStore::open(dir.clone(), "default".into()).unwrap());
        let mut twin = Elector::new("twin", T);
        twin.observe(store.get("job").await.unwrap(), Instant::now());
        let Action::Write(w) = twin.next(now()) else { panic!("free") };
        send(&store, "job", &mut twin, &w).await.unwrap();
        for (library, option) in [(false, "its own --identity"), (true, "its own LockBuilder::identity")] {
            let captured = Captured::default();
            let subscriber = tracing_subscriber::fmt().with_writer(captured.clone()).with_ansi(false).finish();
            let _guard = tracing::subscriber::set_default(subscriber);
            let slot = Slot::new("job".into(), store.clone(), Elector::new("twin", T), Arc::new(Ignore));
            let mut slot = if library { slot.for_library() } else { slot };
            slot.step(&AtomicBool::new(false), false).await;
            let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
            assert!(log.contains("identity collision") && log.contains(option), "{log}");
            assert_eq!(log.contains("--identity"), !library, "{log}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
