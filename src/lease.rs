//! The lease algorithm as a pure state machine: no I/O, no clock of its own.
//!
//! The caller feeds it what it read (`observe`, `observe_event`), what became of its writes
//! (`write_sent`, which hands out a [`Ticket`], then `write_result` with that ticket), and the time
//! (`Now`); `next` answers what to do: read, write (acquire or renew), wait until a moment, give up a
//! lease that is lost, or refuse. The rules are client-go's `leaderelection`, with deliberate
//! differences called out where they are made:
//!
//! - Expiry is judged on the local monotonic clock: a lease held by another counts as expired when its
//!   record has not changed for the holder's own `leaseDurationSeconds` since *this process observed*
//!   the change. Remote timestamps are written for humans and client-go, never compared with our clock.
//! - The renew deadline counts from when the last successful renewal was *sent*: the server may have
//!   applied it at any moment after that, so only the send time is a safe lower bound for the holder.
//!   The send time travels with the write as a [`Ticket`]; however the success is learned (the write's
//!   answer, a read, a watch event) and however late, it counts from that send, never from "now".
//! - A record under our identity is ours only if it is our own write: its `acquireTime` and
//!   `leaseTransitions` match our acquisition or the write we have in flight. A live record under our
//!   identity that we did not write belongs to another process (an identity collision: the same
//!   `--identity` given twice, or inherited); it is waited out like any other holder, never shared.
//!   (The side-car is the one deliberate exception: see [`Elector::adopting`].)
//! - A lease that disappears while another holds it counts as held until that holder's observed expiry:
//!   deleting the object does not let a waiter in beside a child that still runs.
//! - Every acquisition increments `leaseTransitions` (the fencing token), even by the same identity,
//!   so that tokens strictly increase across the children that ever held the lease; a token that
//!   cannot increase any more is refused, never repeated.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::SignedDuration;

/// A lease record as stored, with its compare-and-swap token and the object's metadata (labels,
/// annotations, uid), which every write carries back unchanged.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Versioned {
    pub resource_version: String,
    pub record: LeaseSpec,
    pub metadata: ObjectMeta,
}

impl Versioned {
    /// A record with only a resource version (tests, and stores that keep no other metadata).
    pub fn new(resource_version: impl Into<String>, record: LeaseSpec) -> Versioned {
        let resource_version = resource_version.into();
        let metadata = ObjectMeta { resource_version: Some(resource_version.clone()), ..ObjectMeta::default() };
        Versioned { resource_version, record, metadata }
    }
}

/// What a watch (or a poll standing in for one) reports.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchUpdate {
    /// The lease as it is now.
    Present(Versioned),
    /// The watch saw the lease deleted, at `resource_version`, in order after everything it delivered.
    Deleted { resource_version: String },
    /// A list (or a poll) found no such lease, as of `resource_version` (empty when unknown: then only a
    /// read decides). Unlike `Deleted`, it may have skipped changes in between.
    Absent { resource_version: String },
}

impl WatchUpdate {
    /// The version it is as of (empty when unknown).
    pub fn resource_version(&self) -> &str {
        match self {
            WatchUpdate::Present(current) => &current.resource_version,
            WatchUpdate::Deleted { resource_version } | WatchUpdate::Absent { resource_version } => resource_version,
        }
    }
}

/// How an observation was made: in order after the one before (a watch event), or as a snapshot that
/// may have skipped changes (a read, a list).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    InOrder,
    Snapshot,
}

/// The timing options of a lease (`validate` checks them against each other).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a holder's lease stays valid without renewal (whole seconds).
    pub lease_duration: Duration,
    /// The lease counts as lost when no renewal succeeded for this long, counted from the send of the
    /// last one that did and that moved `renewTime` to another whole second (what a client-go elector sees).
    pub renew_deadline: Duration,
    /// How often the holder renews, and how often waiters poll while their watch is down.
    pub retry_period: Duration,
}

/// [`Timing::DEFAULT`].
impl Default for Timing {
    fn default() -> Timing {
        Timing::DEFAULT
    }
}

impl Timing {
    /// client-go's defaults: 15s, 10s, 2s.
    pub const DEFAULT: Timing = Timing {
        lease_duration: Duration::from_secs(15),
        renew_deadline: Duration::from_secs(10),
        retry_period: Duration::from_secs(2),
    };

    /// Check the timings against each other: a whole number of seconds for the duration, the renew
    /// deadline below it, and room for at least one retry within the deadline (as client-go requires);
    /// with renewals under a second apart, room for one a second (`1s` plus twice the retry period).
    pub fn validate(&self) -> Result<(), crate::Error> {
        let show = |d: Duration| humantime::format_duration(d).to_string();
        let usage = |message: String| Err(crate::Error::Usage(message));
        let Timing { lease_duration, renew_deadline, retry_period } = *self;
        if lease_duration.subsec_nanos() != 0 || lease_duration < Duration::from_secs(1) {
            return usage(format!(
                "--lease-duration must be a whole number of seconds, at least 1s (got {}): Leases store it in seconds",
                show(lease_duration)
            ));
        }
        if lease_duration.as_secs() > i32::MAX as u64 {
            return usage(format!("--lease-duration {} is too long", show(lease_duration)));
        }
        // A floor: renewals in a tight loop are no use to anyone (found by review: 1ns renewed ~70 times a
        // second on the file backend).
        if retry_period < MIN_RETRY_PERIOD {
            return usage(format!(
                "--retry-period must be at least {} (got {})",
                show(MIN_RETRY_PERIOD),
                show(retry_period)
            ));
        }
        if renew_deadline >= lease_duration {
            return usage(format!(
                "--renew-deadline ({}) must be less than --lease-duration ({})",
                show(renew_deadline),
                show(lease_duration)
            ));
        }
        // In f64: a huge duration must be refused, not overflow.
        if retry_period.as_secs_f64() * 1.2 >= renew_deadline.as_secs_f64() {
            return usage(format!(
                "--retry-period ({}) times 1.2 must be less than --renew-deadline ({})",
                show(retry_period),
                show(renew_deadline)
            ));
        }
        // Renewals under a second apart are seen by client-go once a second only (see `Held::deadline`),
        // so the deadline counts from one a second: it must leave room for the next (found by review,
        // rv240).
        if retry_period < Duration::from_secs(1)
            && renew_deadline.as_secs_f64() < 1.0 + 2.0 * retry_period.as_secs_f64()
        {
            return usage(format!(
                "--renew-deadline ({}) must be at least 1s plus twice --retry-period ({}) when that is under 1s: \
                 client-go sees renewals at whole seconds",
                show(renew_deadline),
                show(retry_period)
            ));
        }
        Ok(())
    }

    /// Timeout for one API call: long enough for a slow server, short enough to retry within the renew
    /// deadline. (Safety does not depend on it: the renew deadline counts from sends, whatever the
    /// answers do.)
    pub fn call_timeout(&self) -> Duration {
        (self.renew_deadline / 2).max(self.retry_period).max(Duration::from_millis(500))
    }
}

/// The shortest retry period (renew interval) allowed.
pub const MIN_RETRY_PERIOD: Duration = Duration::from_millis(10);

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
pub struct Write {
    /// The object's metadata as it will be written: `resource_version` is the compare-and-swap token of a
    /// replace, `None` for a create (which fails if the object exists).
    pub metadata: ObjectMeta,
    pub record: LeaseSpec,
}

impl Write {
    pub fn record(&self) -> &LeaseSpec {
        &self.record
    }

    /// `None` for a create.
    pub fn resource_version(&self) -> Option<&str> {
        self.metadata.resource_version.as_deref()
    }

    pub fn is_create(&self) -> bool {
        self.metadata.resource_version.is_none()
    }

    fn create(record: LeaseSpec) -> Write {
        Write { metadata: ObjectMeta::default(), record }
    }

    fn replace(base: &Versioned, record: LeaseSpec) -> Write {
        let metadata = ObjectMeta { resource_version: Some(base.resource_version.clone()), ..base.metadata.clone() };
        Write { metadata, record }
    }
}

/// What a write is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Acquire,
    Renew,
    Release,
}

/// Proof that a write was sent, and when: handed out by `write_sent`, handed back to `write_result`
/// with the answer. The send time is what a success counts from, however late the answer comes.
#[derive(Clone, Debug, PartialEq)]
pub struct Ticket {
    pub sent_at: Instant,
    pub purpose: Purpose,
    record: LeaseSpec,
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
#[non_exhaustive]
pub enum LossReason {
    /// Another identity is now the holder (or the holder was cleared by someone else).
    Taken { holder: String },
    /// Another process wrote the record under our own identity (an identity collision).
    Collision { identity: String },
    /// The Lease object was deleted.
    Deleted,
    /// No renewal succeeded for `renew_deadline`, counted from the send of the last good one.
    RenewDeadline,
    /// Nothing renews the lease any more: the task that did was dropped with its tokio runtime.
    Abandoned,
}

impl std::fmt::Display for LossReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LossReason::Taken { holder } if holder.is_empty() => {
                write!(f, "the lease was released by another writer")
            }
            LossReason::Taken { holder } => write!(f, "the lease is now held by {holder:?}"),
            LossReason::Collision { identity } => write!(
                f,
                "another process wrote the lease under this process's identity {identity:?} (identity collision)"
            ),
            LossReason::Deleted => write!(f, "the Lease was deleted"),
            LossReason::RenewDeadline => write!(f, "no renewal succeeded within the renew deadline"),
            LossReason::Abandoned => write!(f, "the runtime that renewed the lease was shut down"),
        }
    }
}

/// Why the machine will not acquire a lease at all: a condition waiting cannot fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `leaseTransitions` is at its maximum: the next fencing token cannot be larger than the last.
    TokenExhausted { transitions: i32 },
    /// The slot's record says its semaphore has `recorded` slots; this process was told `ours`.
    SlotCountMismatch { recorded: String, ours: u32 },
    /// A plain lock on a lease that is a slot of a semaphore.
    IsASlot { recorded: String },
    /// A semaphore's marker or slot whose name is taken by a plain lease whose holder renews it.
    NotASlot { holder: String },
    /// A semaphore whose name is a slot of another semaphore (`P-i` of `P`, which records `slots`).
    SlotOfAnother { semaphore: String, index: usize, slots: u32 },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::TokenExhausted { transitions } => write!(
                f,
                "its fencing token (leaseTransitions) is {transitions}, the largest an int32 holds: a new holder \
                 cannot get a larger one; resetting the lease restarts its tokens at 0, so first make the resource \
                 you fence accept that"
            ),
            Refusal::SlotCountMismatch { recorded, ours } => write!(
                f,
                "its record is of a semaphore of {recorded} slots (annotation {SLOTS_ANNOTATION}), not {ours}: every \
                 process must pass the same --slots; to change it, stop every user and delete the semaphore's \
                 Leases (its name and its slots)"
            ),
            Refusal::IsASlot { recorded } => write!(
                f,
                "it belongs to a semaphore of {recorded} slots (annotation {SLOTS_ANNOTATION}), not a plain lease: \
                 use --slots {recorded} with the semaphore's name, or another name"
            ),
            Refusal::NotASlot { holder } => write!(
                f,
                "a plain lease of that name is held by {holder:?}, who renews it: a semaphore's name and slot names \
                 must not collide with other leases; choose another name"
            ),
            Refusal::SlotOfAnother { semaphore, index, slots } => write!(
                f,
                "it is slot {index} of the semaphore {semaphore} ({slots} slots): a semaphore's name must not be \
                 another's slot; use --slots {slots} with {semaphore}, or another name"
            ),
        }
    }
}

/// How far apart contending processes spread their attempts on a freed lease, per contender beyond the
/// first, until this process has measured how long a write takes to reach it (see [`Elector::stagger`]):
/// about twice that time on a quiet cluster, so that the first to try is usually seen by the others before
/// they try.
pub const STAGGER_PER_CONTENDER: Duration = Duration::from_millis(10);
/// The first window after a lease is freed, left by a process that believes in a crowd to any process
/// that believes it is alone (a newcomer tries at once), until it has seen newcomers' acquisitions (see
/// `Elector::first_window`): about the time a newcomer's write takes to be seen, not the measured
/// stagger, which a herd's lost races inflate.
const FIRST_WINDOW: Duration = Duration::from_millis(10);
/// The first window once newcomers' acquisitions were seen: half as long again as they took to arrive
/// after the release (a slower API server, or a newcomer that starts slowly, widens it), within these.
const MIN_FIRST_WINDOW: Duration = Duration::from_millis(5);
const MAX_FIRST_WINDOW: Duration = Duration::from_millis(30);
/// How much of what it believed about newcomers a process keeps at every handoff it sees (see
/// `Elector::newcomers`): ten handoffs in a row won by processes that left the first window to others
/// bring the window down to a tenth; one such handoff among newcomers' wins takes only a fifth off, so
/// that the newcomers who come a few ms late keep their window.
const NEWCOMER_MEMORY: f64 = 0.8;
/// The widest spread per contender that measurements can make (a slow or overloaded API server).
const MAX_STAGGER_PER_CONTENDER: Duration = Duration::from_millis(100);
/// The widest spread of attempts on a freed lease, whatever the belief in contention (and never more
/// than half the lease duration).
const MAX_SPREAD: Duration = Duration::from_secs(10);
/// The most contenders a process believes in.
const MAX_CONTENDERS: f64 = 1000.0;
/// How many acquisitions given up unresolved are remembered as ours.
const MAX_STRAYS: usize = 8;
/// How much the belief in contention grows with every race lost: steeply, because 100 processes that
/// start together must spread over seconds before their attempts stop colliding, and every round of
/// learning costs the API server a burst of lost writes; a belief too large is brought down by how long
/// freed leases stay free (see `note_contention`).
const CONTENTION_GROWTH: f64 = 16.0;
/// How much the belief in contention fades with every handoff seen without a lost race.
const CONTENTION_DECAY: f64 = 0.99;
/// How much it fades with every acquisition of our own.
const CONTENTION_DECAY_ON_ACQUIRE: f64 = 0.5;

/// The annotation that marks a Lease as a slot of a semaphore, with the number of slots as its value.
pub const SLOTS_ANNOTATION: &str = "mpsync.io/slots";
/// The annotation in which an acquisition says how many contenders its writer believed in, with the
/// token it was written for: `"16.0@7"`. The processes still waiting read it to tell whether the winner
/// tried at once (a newcomer) or left the first window to others (one of a crowd); a value written for
/// another token (a writer that keeps annotations it does not know) says nothing.
pub const CONTENDERS_ANNOTATION: &str = "mpsync.io/contenders";
/// The annotation with which a side-car marks its writes: the record's token and `renewTime` (in
/// microseconds since the epoch), `"7@1796329602510836"`. A side-car adopts only a record under its
/// identity that carries the mark for that very token and renewal: the last write of a side-car of its
/// pod, never one of `lock`, `elect` or another program given the same identity (which it would otherwise
/// take over while their child runs). A client-go elector keeps annotations, and under the same identity
/// the token too, but writes its own `renewTime`.
pub const SIDECAR_ANNOTATION: &str = "mpsync.io/side-car";
/// Beyond this many bytes of other annotations (keys and values), an acquisition leaves
/// `CONTENDERS_ANNOTATION` out: the API server refuses more than 256 KiB of annotations, and the file
/// backend a record over 1 MiB.
const MAX_FOREIGN_ANNOTATIONS: usize = 128 * 1024;

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
    /// The lease can never be acquired as it is (see [`Refusal`]).
    Refuse(Refusal),
}

/// The facts about a lease this process holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// `leaseTransitions` as written by our acquisition.
    pub fencing_token: i32,
    /// `acquireTime` as written by our acquisition: with the token, what makes a record our own write.
    pub acquire_time: Option<MicroTime>,
    /// When the last renewal (or the acquisition) that succeeded, and that moved `renewTime` to another
    /// whole second, was sent (see `Held::deadline`).
    pub last_renew_sent: Instant,
    /// The whole second of `renewTime` that renewal wrote.
    pub renew_second: Option<i64>,
    /// When the next renewal is due.
    pub next_renew_at: Instant,
    /// No child may start before this: an acquisition that landed after the lease was seen held by
    /// another (and then deleted under it) waits out that holder's observed expiry, renewing meanwhile.
    pub usable_from: Instant,
}

impl Held {
    /// When the lease counts as lost unless a renewal sent before then succeeds. Counted from a renewal
    /// that moved `renewTime` to another whole second: a client-go elector compares records with their times
    /// at whole seconds (its `LeaderElectionRecord`), and a renewal within the same second is no change to
    /// it (found by review, rv240: with renewals under a second apart, the deadline counted from one client-go
    /// could not see, and a client-go elector took the lease beside the child).
    pub fn deadline(&self, timing: Timing) -> Instant {
        self.last_renew_sent + timing.renew_deadline
    }
}

#[derive(Clone, Debug)]
struct Observation {
    current: Option<Versioned>,
    /// When this process last saw the record's content change (or first saw it).
    changed_at: Instant,
}

/// The newest record seen of a Lease, for `Elector::is_the_past`.
#[derive(Clone, Debug)]
struct Latest {
    uid: Option<String>,
    token: i32,
    holder: Option<String>,
    acquire_time: Option<MicroTime>,
    renew_time: Option<MicroTime>,
    /// A release (no holder) at this token.
    released: bool,
}

impl Latest {
    fn of(seen: &Versioned) -> Latest {
        Latest {
            uid: seen.metadata.uid.clone(),
            token: seen.record.lease_transitions.unwrap_or(0),
            holder: seen.record.holder_identity.clone(),
            acquire_time: seen.record.acquire_time.clone(),
            renew_time: seen.record.renew_time.clone(),
            released: !is_live(&seen.record),
        }
    }
}

/// Another's hold edited by hand, counted until the expiry it had (see `is_hand_edit`).
#[derive(Clone, Debug)]
struct EditedHold {
    /// The Lease's uid, and the hold's acquireTime and token: its holder's release keeps the first and
    /// the last, and writes a new acquireTime.
    uid: Option<String>,
    acquire_time: Option<MicroTime>,
    token: Option<i32>,
    until: Instant,
    /// Another hold was seen since the edit (another acquisition): every later release is someone else's,
    /// whatever token it carries.
    taken_since: bool,
}

/// A free record seen, and the draw that spreads this process's attempt on it.
#[derive(Clone, Debug)]
struct FreeSeen {
    version: String,
    seen_at: Instant,
    /// The first window, left to processes that believe they are alone (see `note_contention`).
    floor: Duration,
    /// The spread the draw was made within, after the floor.
    spread: Duration,
    try_at: Instant,
    /// Whether this process sent an acquisition of it (then how long it stayed free says nothing of the
    /// others, and a lost race counts the same whether its 409 or the winner's event comes first).
    tried: bool,
}

#[derive(Clone, Debug)]
struct PendingWrite {
    purpose: Purpose,
    record: LeaseSpec,
    sent_at: Instant,
    /// The latest observed expiry of another holder seen while this acquisition was on the wire.
    not_before: Option<Instant>,
    /// A read since the send showed the write not applied (it may still land later, as any request the
    /// client gave up on may).
    checked: bool,
    /// The version the write was based on (`None`: a create).
    base: Option<String>,
}

/// One process's view of one lease.
#[derive(Clone, Debug)]
pub struct Elector {
    identity: String,
    timing: Timing,
    /// Take records under our identity as our own (the side-car's pod identity): see `adopting`.
    adopt: bool,
    observation: Option<Observation>,
    /// The write sent last whose result is not known yet (in flight, or Unknown). A later write replaces
    /// it; an answer or a read that shows it applied counts from its send.
    pending: Option<PendingWrite>,
    /// The version a release of ours was sent against, until a record at another version (or none) is
    /// seen: until then the release may still land, even after a read that does not show it (it may wait
    /// at the API server), and even after a later write replaced it as `pending`. A compare-and-swap on
    /// that version can land only while the record is still at it.
    release_base: Option<String>,
    /// The version the last release of ours was sent against, and the token it carried, kept after
    /// `release_base` is cleared: a read after the release was refused tells from them whether the lease
    /// went on from our hold (see `release_landed`).
    release_sent_on: Option<(String, i32)>,
    held: Option<Held>,
    /// Set by a held lease turning out lost; cleared by `forget_loss` and `released`.
    lost: Option<LossReason>,
    needs_read: bool,
    /// The largest `leaseTransitions` ever observed: a lease created again after a deletion continues
    /// from there, so tokens keep increasing for every process that saw the old one.
    token_floor: Option<i32>,
    /// The newest record seen of the Lease (by its token, and for one acquisition by its renewTime), to
    /// tell a record of the past (`is_the_past`).
    latest: Option<Latest>,
    /// The acquisition (acquireTime, token) of the lease held last, after it was lost or released: a
    /// record that still shows it is ours to release or take again at once, not a collision.
    previous: Option<(Option<MicroTime>, i32)>,
    /// A live record under our identity that we did not write was seen (reported once by the caller).
    collision: bool,
    /// Acquisitions of ours given up with their outcome unknown (superseded by a later write): a record
    /// that shows one of them is ours to release or take again.
    strays: Vec<(Option<MicroTime>, i32)>,
    /// When each of `strays` was sent, in the same order.
    stray_sent: Vec<Instant>,
    /// The last stray was given up (answered 409 or 429: it may have been committed all the same) while the
    /// record known was still the one it was based on (`None`: absent, for a create): until a read, or a
    /// record at another version, shows what became of it, it is in doubt as a write on the wire is (see
    /// `acquisition_in_doubt`).
    stray_base: Option<Option<String>>,
    /// Acquisitions of ours ended before versions went back (see `versions_went_back`): a restored record
    /// that shows one may undo its end while another process holds the lease, so it is waited out as
    /// another's hold, but it is no identity collision.
    undone: Vec<(Option<MicroTime>, i32)>,
    /// The holds lost to a restore (see `lose_to_restore`), with the `renewTime` the restored record showed: while
    /// the lease shows that record, or an older one of the same acquisition (a second restore), a side-car answers
    /// 503 for it, not 409 (see `is_own_undone_by_restore`); once another process renewed it under our identity (a
    /// client-go co-holder, a later `renewTime`), it is that process's hold.
    restore_undone: Vec<(Option<MicroTime>, i32, Option<MicroTime>)>,
    /// When a read (or a write's answer) was last observed: another's hold that expired by what the watch
    /// showed is read once more before it is taken over.
    read_at: Option<Instant>,
    /// A hold of ours lapsed (see `lapsed`) and no read answered since: the lease duration that keeps
    /// this process from acquiring counts from that read, not from the lapse (found by review,
    /// helper-109: cut off for longer than a lease duration, the protection was over before the process
    /// could see anything, and its own restored record was taken again at once).
    lapsed_unread: bool,
    /// A hold of ours that lapsed: from this moment (its last renewal sent + the lease duration) another
    /// process may have taken the lease over, and an etcd restore may show our record again at the very
    /// version we knew, so it is never given back (found by review, helper-124: a frozen `lock`'s give-back landed
    /// on its restored record, and a newcomer ran its child beside the holder etcd forgot).
    no_give_back_from: Option<Instant>,
    /// When the last renewal (or acquisition) of ours that succeeded was sent, kept after the hold ends.
    last_hold_sent: Option<Instant>,
    /// The lease vanished while another process may have held it: no acquisition of ours, and no child,
    /// before this moment (that holder's observed expiry), whatever the record says meanwhile.
    protected_until: Option<Instant>,
    /// A hold edited by hand (see `is_hand_edit`), counted until the expiry it had: its acquireTime and
    /// token, and that expiry. Its holder's release (a new acquireTime, the same token) ends it.
    edited_hold: Option<EditedHold>,
    /// For a slot of a semaphore: the number of slots, written on every write and checked on every record.
    slots: Option<u32>,
    /// How many processes this one believes contend for the lease (at least 1), learned from the races it
    /// lost: when the lease is freed, attempts are spread over `(contenders - 1)` staggers, after a first
    /// window left to newcomers (see `note_contention`), so a freed lease with many waiters draws about one
    /// write, not one per waiter. One waiter (the usual case) tries at once.
    contenders: f64,
    /// How often, lately, a freed lease went to a process that tried it at once (a newcomer), between 0
    /// and 1: the share of the first window a process that believes in a crowd leaves to newcomers. Learned
    /// from the winners' `CONTENDERS_ANNOTATION`; when nobody joins a crowd (a queue that drains), the
    /// crowd stops waiting for newcomers that never come.
    newcomers: f64,
    /// How long after a release newcomers' acquisitions arrive (a moving average of what this process
    /// saw): what the first window must cover. `None` until seen.
    newcomer_lag: Option<Duration>,
    /// The free record seen last, and when this process may try to take it.
    free_try_at: Option<FreeSeen>,
    /// When the acquisition that lost the last race was sent, until the winner's write shows on the watch.
    lost_race_sent_at: Option<Instant>,
    /// How long, after this process sent an acquisition that lost, the winner's write took to show on its
    /// watch (a moving average): the part of the window in which two attempts collide that follows one of
    /// them. `None` until measured.
    write_lag: Option<Duration>,
    /// After a lost race while a watch delivers changes: wait for the event that shows the winner rather
    /// than read at once; read only if none came by then.
    awaiting_event_until: Option<Instant>,
    /// Whether a watch delivers changes to this process (set by its driver).
    watching: bool,
    /// A small pseudo-random generator (xorshift64*), seeded by the caller: the stagger's draws.
    rng: u64,
    /// The latest time written into a record this process sent (`renewTime`): every later write is
    /// stamped past it, so that no two writes of ours are alike (see `stamp`).
    last_stamp: Option<MicroTime>,
    /// The whole second of `last_stamp`, and when a write of ours first carried it (see `renewal`).
    stamp_second: Option<(i64, Instant)>,
    /// Changes to the hold we have that carry our acquisition and a `renewTime` none of our writes carried:
    /// renewals by another process under our identity (a client-go elector given it renews any record
    /// under its identity as its own). One is a hand edit; a second is a co-holder (see `observe`).
    foreign_renewals: u32,
    /// When the last of `foreign_renewals` was seen.
    last_foreign_at: Option<Instant>,
    /// How long the hold counts as co-held after `last_foreign_at`: the co-holder window of the record that
    /// renewal carried (the co-holder's own duration), which our renewals over it do not shorten.
    foreign_window: Duration,
    /// The `renewTime`s of the last writes this process sent (at most `MAX_SENT_STAMPS`).
    sent_stamps: std::collections::VecDeque<MicroTime>,
    /// The `renewTime`s of the last writes this process sent that were answered 409 or 429 (at most
    /// `MAX_SENT_STAMPS`), kept apart from `sent_stamps` so that they push none of those out; still ours if
    /// a record carries one: the answer may be a retry's (a proxy or gateway that resent the PUT after the
    /// first one landed: found by review, helper-148), not the write's own.
    refused_stamps: std::collections::VecDeque<MicroTime>,
    /// The sends of the writes answered 409 of `refused_stamps`: one that landed all the same (a proxy's retry
    /// of a committed write), seen later, counts from its send (see `observe_as`).
    refused_sends: std::collections::VecDeque<(MicroTime, Instant)>,
    /// The counted renewals of the hold held now (the whole second of `renewTime` each moved it to, and its
    /// send), oldest first, at most `MAX_SENT_STAMPS`: a restore that shows an older one of them makes the
    /// hold count from that one's send again (see `observe_as`).
    hold_sends: std::collections::VecDeque<(i64, Instant)>,
    /// The `renewTime` of the last write of ours that was applied (kept apart from `sent_stamps`, which more
    /// than `MAX_SENT_STAMPS` refused renewals push it out of: the record left after a loss at the renew deadline).
    applied_stamp: Option<MicroTime>,
    /// Versions went back and the record read since is not observed yet: it is etcd's past, no renewal by
    /// anyone (found by review, helper-138: a hand edit let be, brought back by a restore, counted as a
    /// second foreign renewal; so would a restored renewal of ours older than `sent_stamps` remembers).
    restored_unseen: bool,
    /// The record being observed is the answer to a write of ours (`write_result`), or shows one in doubt:
    /// a write of ours landing now, not the past, whatever its token (see `observe_as`).
    landing: bool,
    /// The duration of the hold known when versions went back, if it was a hold: the first read after it
    /// protects for that long if it is longer than ours (the restore may have undone that very hold).
    undone_duration: Option<Duration>,
    /// The foreign `renewTime`s counted in `foreign_renewals` (the last few): one seen again (a manifest
    /// applied again, a restore) is no new renewal.
    counted_foreign: std::collections::VecDeque<MicroTime>,
}

const MAX_SENT_STAMPS: usize = 64;
/// How many foreign `renewTime`s an elector remembers having counted.
const MAX_COUNTED_FOREIGN: usize = 16;

/// Keep `time` among the last `most` remembered, forgetting the oldest.
/// Remember a counted renewal of the hold (see `Elector::hold_sends`).
fn remember_send(sends: &mut std::collections::VecDeque<(i64, Instant)>, send: (i64, Instant)) {
    if sends.len() >= MAX_SENT_STAMPS {
        sends.pop_front();
    }
    sends.push_back(send);
}

fn remember(times: &mut std::collections::VecDeque<MicroTime>, time: &MicroTime, most: usize) {
    if times.len() >= most {
        times.pop_front();
    }
    times.push_back(time.clone());
}

impl Elector {
    pub fn new(identity: impl Into<String>, timing: Timing) -> Elector {
        Elector {
            identity: identity.into(),
            timing,
            adopt: false,
            observation: None,
            pending: None,
            release_base: None,
            release_sent_on: None,
            held: None,
            lost: None,
            needs_read: true,
            token_floor: None,
            latest: None,
            previous: None,
            collision: false,
            strays: Vec::new(),
            stray_sent: Vec::new(),
            stray_base: None,
            undone: Vec::new(),
            restore_undone: Vec::new(),
            read_at: None,
            lapsed_unread: false,
            no_give_back_from: None,
            last_hold_sent: None,
            protected_until: None,
            edited_hold: None,
            slots: None,
            contenders: 1.0,
            newcomers: 1.0,
            newcomer_lag: None,
            free_try_at: None,
            lost_race_sent_at: None,
            write_lag: None,
            awaiting_event_until: None,
            watching: false,
            rng: 0x9E37_79B9_7F4A_7C15,
            last_stamp: None,
            stamp_second: None,
            foreign_renewals: 0,
            last_foreign_at: None,
            foreign_window: Duration::ZERO,
            sent_stamps: std::collections::VecDeque::new(),
            refused_stamps: std::collections::VecDeque::new(),
            refused_sends: std::collections::VecDeque::new(),
            hold_sends: std::collections::VecDeque::new(),
            applied_stamp: None,
            restored_unseen: false,
            landing: false,
            undone_duration: None,
            counted_foreign: std::collections::VecDeque::new(),
        }
    }

    /// When the last renewal (or acquisition) of ours that counts was sent, kept after the hold ends: moved back
    /// when a restore shows an older renewal of the hold (see `count_from_restored_renewal`).
    pub fn last_hold_sent(&self) -> Option<Instant> {
        self.last_hold_sent
    }

    /// An elector that adopts records held under its identity, as its own, keeping their token. Only the
    /// side-car does this, on purpose: its identity is the pod's, stable across restarts of the side-car,
    /// and the lock it finds under that identity belongs to the clients in the pod, which still heartbeat.
    pub fn adopting(identity: impl Into<String>, timing: Timing) -> Elector {
        Elector { adopt: true, ..Elector::new(identity, timing) }
    }

    /// This lease is one slot of a semaphore of `slots` slots: its records carry the count, and a record
    /// that says otherwise is refused, never taken (a plain lease's is waited out: see `slot_refusal`).
    pub fn with_slots(mut self, slots: u32) -> Elector {
        self.slots = Some(slots);
        self
    }

    /// Seed the draws that spread attempts on a freed lease apart (give every process its own).
    pub fn with_seed(mut self, seed: u64) -> Elector {
        self.rng = seed | 1;
        self
    }

    /// Tell the elector whether a watch delivers changes: then a lost race waits for the event that shows
    /// the winner instead of reading at once.
    pub fn set_watching(&mut self, watching: bool) {
        self.watching = watching;
    }

    /// The window a process that believes in a crowd leaves to newcomers after a release, before the
    /// share of it that newcomers' recent wins justify: [`FIRST_WINDOW`] until newcomers' acquisitions
    /// were seen, then 1.5 times how long after the release they arrived.
    fn first_window(&self) -> Duration {
        self.newcomer_lag.map_or(FIRST_WINDOW, |lag| lag.mul_f64(1.5).clamp(MIN_FIRST_WINDOW, MAX_FIRST_WINDOW))
    }

    /// How many contenders this process believes in (see `STAGGER_PER_CONTENDER`).
    pub fn contenders(&self) -> f64 {
        self.contenders
    }

    /// How far apart attempts on a freed lease are spread, per contender beyond the first. A lost race
    /// measures the part of the collision window that follows one attempt (from its send to the winner's
    /// event); on average that is half the window, so the spread per contender is four times the average:
    /// about twice the window, whatever the API server's and the watchers' latency.
    /// [`STAGGER_PER_CONTENDER`] until measured, and never less.
    pub fn stagger(&self) -> Duration {
        self.write_lag
            .map_or(STAGGER_PER_CONTENDER, |lag| (lag * 4).clamp(STAGGER_PER_CONTENDER, MAX_STAGGER_PER_CONTENDER))
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// The lease as last observed (`None` if never read or known absent).
    pub fn current(&self) -> Option<&Versioned> {
        self.observation.as_ref().and_then(|o| o.current.as_ref())
    }

    /// Whether this process holds the lease, and the facts if it does.
    pub fn held(&self) -> Option<&Held> {
        self.held.as_ref()
    }

    /// Whether the record seen last forbids this process the lease for good (a semaphore's count that
    /// differs, a plain lock on a semaphore's slot): checked on every slot of a semaphore before any is
    /// acquired.
    pub fn refusal(&self) -> Option<Refusal> {
        if self.held.is_some() {
            return None;
        }
        self.current().and_then(|current| self.slot_refusal(current))
    }

    /// Whether an acquisition of ours was given up unresolved (it may have landed since, unseen).
    pub fn has_strays(&self) -> bool {
        !self.strays.is_empty()
    }

    /// Whether anything (a record, or its absence) was observed yet.
    pub fn has_observed(&self) -> bool {
        self.observation.is_some()
    }

    /// Whether an acquisition is on the wire, or its outcome unknown and not yet checked by a read, or one
    /// answered 409 or 429 may have been committed all the same (a proxy's or a client's retry of a committed
    /// write is answered so) and nothing seen since tells: while it is, no other slot of the same process may
    /// send one (a process never takes two slots; found by review, helper-176: a semaphore whose slot 0's
    /// acquisition was committed and then answered 409 ran its child on slot 1, and left slot 0 held).
    pub fn acquisition_in_doubt(&self) -> bool {
        self.held.is_none() && (self.acquisition_unchecked() || self.stray_base.is_some())
    }

    /// Whether an acquisition is on the wire, or its outcome unknown and not yet checked by a read.
    fn acquisition_unchecked(&self) -> bool {
        self.pending.as_ref().is_some_and(|p| p.purpose == Purpose::Acquire && !p.checked)
    }

    /// Whether an acquisition of ours was answered 409 or 429 and nothing seen since tells whether it was
    /// committed: the give-back reads first.
    pub fn stray_in_doubt(&self) -> bool {
        self.stray_base.is_some()
    }

    /// Whether a write was sent whose outcome is not known: the process may hold the lease through it.
    pub fn unresolved_write(&self) -> bool {
        self.pending.as_ref().is_some_and(|p| p.purpose != Purpose::Release)
    }

    /// Whether an acquisition of ours was sent and its outcome is not known: it may land yet.
    pub fn acquisition_unresolved(&self) -> bool {
        self.pending.as_ref().is_some_and(|p| p.purpose == Purpose::Acquire)
    }

    /// Whether the record known is a release of ours that landed (free, with a renewTime one of our writes
    /// carried), whatever its answer said: a release committed and then answered 409 or 429 (a proxy's
    /// retry of it) was reported as not given back (found by review, helper-163).
    pub fn release_landed(&self) -> bool {
        // The shape of a release too: a hand edit that clears the holder keeps the holder's last renewTime
        // (found by review, helper-172: "released the lease" was said of a lease another made free).
        self.current().is_some_and(|known| {
            is_release(&known.record) && known.record.renew_time.as_ref().is_some_and(|stamp| self.sent_by_us(stamp))
        })
    }

    /// Whether the record known shows that the lease went on from our hold after a release of ours was sent:
    /// at a version past the one the release was sent on (where the lease was ours), another holder, or a
    /// later token (another's acquisition, then maybe its release). Given up either way: on our release, or
    /// (one sent just before our hold's expiry) taken over at it (found by review, helper-176: a waiter took
    /// the lease on the release's event, and ran and released, before the read after the release's 409, and
    /// "not given back" was said). A hand edit that clears our holder keeps our token.
    pub fn release_went_on(&self) -> bool {
        let (Some(known), Some((base, token))) = (self.current(), self.release_sent_on.as_ref()) else {
            return false;
        };
        // Never a record under our own identity: a hand edit of our hold's token (found by review, helper-186:
        // "released" was said of a record that named us until it expired), or a co-holder's hold.
        let holder = known.record.holder_identity.as_deref().unwrap_or("");
        is_older(base, &known.resource_version)
            && holder != self.identity
            && (!holder.is_empty() || known.record.lease_transitions.unwrap_or(0) > *token)
    }

    /// Whether a release of ours was sent and its outcome is not known: the lease may be free already.
    pub fn releasing(&self) -> bool {
        self.pending.as_ref().is_some_and(|p| p.purpose == Purpose::Release) || self.release_base.is_some()
    }

    /// Whether a live record under our identity that is not our own write was seen since the last call.
    pub fn take_collision(&mut self) -> bool {
        std::mem::take(&mut self.collision)
    }

    /// Record what a watch showed. Watch events can lag behind what our own writes already told us, so
    /// an older version is ignored; an absence without a version only asks for a read.
    pub fn observe_event(&mut self, update: WatchUpdate, now: Instant) {
        let known = self.current().map(|v| v.resource_version.clone());
        match update {
            WatchUpdate::Present(new) => {
                if known.as_deref().is_some_and(|known| is_older(&new.resource_version, known)) {
                    return;
                }
                self.observe_as(Some(new), now, Seen::InOrder);
            }
            WatchUpdate::Deleted { resource_version } => match known {
                None if self.observation.is_some() => {}
                Some(known) if is_older(&resource_version, &known) => {}
                _ => self.observe_as(None, now, Seen::InOrder),
            },
            WatchUpdate::Absent { resource_version } => match known {
                None if self.observation.is_some() => {}
                Some(known) if !resource_version.is_empty() && is_older(&resource_version, &known) => {}
                Some(known) if resource_version.is_empty() || resource_version == known => self.needs_read = true,
                _ => self.observe_as(None, now, Seen::Snapshot),
            },
        }
    }

    /// The version of the record known now: a read sent after this that answers an older one shows the
    /// versions went back (see `read_answered`).
    pub(crate) fn known_version(&self) -> Option<String> {
        self.current().map(|known| known.resource_version.clone())
    }

    /// Note that a read of lease `lease` sent when `known_version` was `floor` answered `read`: an older
    /// version than the floor means versions went back (an etcd restored from a snapshot, or the lock
    /// directory reset), which is warned of and taken in (`versions_went_back`) before the read is observed.
    /// One rule for every reader: the campaign's reads, the give-back's reads and the side-car's.
    pub(crate) fn read_answered(&mut self, lease: &str, floor: Option<&str>, read: Option<&Versioned>) {
        if let (Some(read), Some(floor)) = (read, floor)
            && is_older(&read.resource_version, floor)
        {
            warn_versions_went_back(lease);
            self.versions_went_back();
        }
    }

    /// Versions went back (an etcd restored from a snapshot): a read sent after this process knew a
    /// version answered an older one, which no API server does otherwise. What is known stays as a
    /// record but not as a version, so that the read is taken as it is: its record, changed or not,
    /// is compared with what was known, and a change counts from now (found by testing a restore: the
    /// newer version known, never to come again, made every read look stale, and a free lease was
    /// never taken).
    ///
    /// A hold of ours that ended is no longer ours to take again at once: the restore may have undone its
    /// end while another process holds the lease now (found by review of this rule: an `elect` replica
    /// took its restored old record at once, beside the child of the holder after it). The hold held now,
    /// if any, stays ours: no other process wrote the lease since it was acquired, or its renewals would
    /// have failed.
    pub fn versions_went_back(&mut self) {
        if let Some(Observation { current: Some(known), .. }) = self.observation.as_mut() {
            known.resource_version.clear();
            if is_live(&known.record) {
                self.undone_duration = Some(holder_duration(&known.record, self.timing));
            }
        }
        self.restored_unseen = true;
        self.own_past_undone();
    }

    /// Our holds that ended, and acquisitions given up unresolved, are no longer ours to take again, nor to
    /// give back: what shows them now may be etcd's past (see `versions_went_back`).
    fn own_past_undone(&mut self) {
        self.undone.extend(self.previous.take());
        self.undone.append(&mut self.strays);
        self.stray_sent.clear();
        self.stray_base = None;
        if self.undone.len() > MAX_STRAYS {
            self.undone.drain(..self.undone.len() - MAX_STRAYS);
        }
    }

    /// A hold of ours ended at its renew deadline without this process seeing what became of the lease
    /// (frozen, or cut off from the API server): another process may have taken it over meanwhile, and an
    /// etcd restored since may show our own record again, at the very version we knew, with nothing to
    /// tell that versions went back. The lease is read at once; unless that read shows another's hold at
    /// a newer version, nothing of ours is acquired, and no child runs, for a lease duration from it: a
    /// holder cut off by a restore made its last renewal before that read, and its child is gone within a
    /// lease duration of it (found by review, helpers 108, 109 and 110: counted from the lapse, it was
    /// over before a process cut off for long could read; counted from the first attempt, a graceful
    /// handoff long after the lapse waited a whole lease duration).
    pub fn lapsed(&mut self) {
        self.lapsed_unread = true;
        self.needs_read = true;
        if let Some(sent) = self.last_hold_sent {
            self.no_give_back_from = Some(sent.checked_add(self.timing.lease_duration).unwrap_or(sent));
        }
    }

    /// A hold of ours that ended at its renew deadline, found so only by a read just observed (the side-car, which
    /// looks at each request): learned past its last renewal's send + the lease duration, another process may have
    /// taken the lease over since and an etcd restore may show our own record again, at the very version we knew; as
    /// for a write of ours learned that late (see `bound_give_back`), it is neither given back nor taken again
    /// (adopted) for a lease duration from now (found by review, helper-129: a side-car cut off past its TTL adopted
    /// its restored record 20 ms after another pod's client was told 200). Learned sooner, nobody can have taken over:
    /// it is taken again at once, as before.
    pub fn lapse_seen(&mut self, now: Instant) {
        if let Some(sent) = self.last_hold_sent {
            self.bound_give_back(sent, now);
        }
    }

    /// Record what a read (or a write's answer) showed: the current state, authoritative.
    pub fn observe(&mut self, current: Option<Versioned>, now: Instant) {
        self.observe_as(current, now, Seen::Snapshot);
    }

    fn observe_as(&mut self, current: Option<Versioned>, now: Instant, seen: Seen) {
        let restored = std::mem::take(&mut self.restored_unseen);
        let mut landing = std::mem::take(&mut self.landing);
        // A stray in doubt is settled by a read, or by a record at another version than its base: after that
        // one, a write based on it can no longer land, and if it did land, that record is it.
        if seen == Seen::Snapshot
            || self
                .stray_base
                .as_ref()
                .is_some_and(|base| current.as_ref().map(|v| &v.resource_version) != base.as_ref())
        {
            self.stray_base = None;
        }
        self.needs_read = false;
        self.awaiting_event_until = None;
        if seen == Seen::Snapshot {
            self.read_at = Some(now);
            // After a lapse, the first read: a lease duration before we acquire, unless it shows another's
            // hold at a version newer than any we knew. Then what became of the lease is known (a restore
            // after this read would show an older version: see `versions_went_back`), and a graceful
            // handoff from that holder need not wait (found by review, helper-110).
            if std::mem::take(&mut self.lapsed_unread) {
                let taken_over = current.as_ref().is_some_and(|new| {
                    self.is_anothers_hold(&new.record)
                        && self.current().is_some_and(|known| is_older(&known.resource_version, &new.resource_version))
                });
                if !taken_over && let Some(until) = now.checked_add(self.timing.lease_duration) {
                    self.protect_until(until);
                }
            }
            // The first read after versions went back: the restore may have undone another's hold whose
            // holder still runs its child (until its last renewal's send + the lease duration, before now),
            // and shows the lease free, or as it was before. Unless the hold is ours now, nothing of ours is
            // acquired, and no child runs, for a lease duration from now, or the duration of the hold known
            // before, if longer (found by the property model, helper-149's restores: a waiter that saw the
            // versions go back took the restored free record at once, beside the child of the holder the
            // restore undid).
            let undone = self.undone_duration.take();
            if restored
                && self.held().is_none()
                && let Some(until) =
                    now.checked_add(undone.map_or(self.timing.lease_duration, |d| d.max(self.timing.lease_duration)))
            {
                self.protect_until(until);
            }
            // The winner's event did not come first: nothing measured.
            self.lost_race_sent_at = None;
        }
        // An answer older than what we know already (a read overtaken by a watch event) changes nothing,
        // but a read settles a write in doubt all the same: what we know is newer, and does not show it
        // (found by review: with versions that went back, a waiter read again at once, without end).
        if let (Some(new), Some(known)) = (&current, self.current())
            && is_older(&new.resource_version, &known.resource_version)
        {
            if seen == Seen::Snapshot
                && let Some(pending) = self.pending.as_mut()
            {
                pending.checked = true;
            }
            return;
        }

        // A release of ours can land only on the version it was sent against.
        if self.release_base.is_some() && current.as_ref().map(|v| &v.resource_version) != self.release_base.as_ref() {
            self.release_base = None;
        }
        // A write whose outcome we did not learn: if the record now carries exactly what we sent, it was
        // applied, and it counts from when it was sent.
        if let (Some(pending), Some(new)) = (&self.pending, &current)
            && same_write(&pending.record, &new.record)
        {
            let pending = self.pending.take().expect("checked");
            landing = true;
            self.applied(pending.purpose, &new.record, pending.sent_at, pending.not_before, now, true);
        } else if seen == Seen::Snapshot
            && let Some(pending) = self.pending.as_mut()
        {
            // A read that does not show our write: not applied, as far as anyone can tell now.
            pending.checked = true;
        }

        let previous = self.observation.take();
        let changed = previous
            .as_ref()
            .is_none_or(|known| known.current.as_ref().map(|v| &v.record) != current.as_ref().map(|v| &v.record));
        // A record older than one seen of the same Lease is the past (see `is_the_past`): etcd restored, with
        // versions since handed out again past the ones known (other writers in the cluster, then one write
        // to the Lease: no read answers an older version, see `read_answered`), or an older record put back
        // by hand (`kubectl apply` of a saved Lease). Whatever it shows, the hold known before may run on,
        // until its holder's next renewal fails: as after versions that went back, nothing of ours is
        // acquired for a lease duration from now, or that hold's duration if longer, and no hold of ours
        // that ended is ours to take again (found by review, rv249: a waiter counted a restored short hold
        // for its own second, an `elect` replica took its restored old hold again at once, and a side-car
        // adopted its own, each beside the child of the holder seen before; rv251: a restored older renewal
        // of the hold seen, at its token).
        // (Not a create of ours that lands now below a token seen since its send: see `applied`.)
        let past = changed && !landing && current.as_ref().is_some_and(|new| self.is_the_past(new));
        if let Some(new) = current.as_ref().filter(|_| past) {
            tracing::warn!(
                token = new.record.lease_transitions.unwrap_or(0),
                seen = self.token_floor.unwrap_or(0),
                "the lease went back to an older record (etcd restored, or an older record put back?); the hold seen before is waited out"
            );
            let known = previous.as_ref().and_then(|known| known.current.as_ref()).filter(|v| is_live(&v.record));
            let undone = known.map_or(self.timing.lease_duration, |known| {
                holder_duration(&known.record, self.timing).max(self.timing.lease_duration)
            });
            self.own_past_undone();
            if self.held().is_none()
                && let Some(until) = now.checked_add(undone)
            {
                self.protect_until(until);
            }
        }
        if past || restored {
            self.count_from_restored_renewal(current.as_ref(), now);
        }
        if let Some(transitions) = current.as_ref().and_then(|v| v.record.lease_transitions) {
            self.token_floor = Some(self.token_floor.map_or(transitions, |floor| floor.max(transitions)));
        }
        // The past, once seen and waited out from now, is the lease's history from then on: what is written on
        // it is no past again (found by review, rv253: after a restore, every write of the restored record's
        // lineage, below the token seen before, was warned of and waited out again, until tokens passed it).
        if let Some(new) = current.as_ref() {
            self.latest = Some(Latest::of(new));
        }
        let changed_at = match (&previous, changed) {
            (Some(known), false) => known.changed_at,
            _ => now,
        };
        // A stray acquisition of ours (given up unresolved) shows up: its give-back, or taking it again,
        // counts from its own send (found by review, helper-128), as for a write of ours learned late (see `applied`).
        if changed
            && self.held.is_none()
            && let Some(new) = &current
            && new.record.holder_identity.as_deref() == Some(self.identity.as_str())
            && let Some(i) = self.strays.iter().position(|(time, token)| same_acquisition(&new.record, time, *token))
            && let Some(&sent) = self.stray_sent.get(i)
        {
            self.bound_give_back(sent, now);
        }
        // A lease that vanishes while someone else may hold it counts as held until that holder's expiry.
        // Seen in order (a watch's DELETED right after the record it removed), the record we saw last is
        // the holder's last renewal: its expiry counts from when we saw it. Seen as a snapshot (a read or
        // a list that found nothing), renewals or a new holder may have come and gone unseen: held for a
        // full duration from now. Only a lease this process never saw at all is free at once.
        let vanished_held_until = match (&previous, &current, seen) {
            (Some(known), None, _) => match &known.current {
                Some(gone) if self.is_own_write(&gone.record) => None,
                Some(gone) if seen == Seen::Snapshot => {
                    now.checked_add(holder_duration(&gone.record, self.timing).max(self.timing.lease_duration))
                }
                Some(gone) if is_live(&gone.record) => {
                    known.changed_at.checked_add(holder_duration(&gone.record, self.timing))
                }
                Some(_) => None,
                None => None,
            },
            _ => None,
        };
        if let Some(until) = vanished_held_until {
            self.protect_until(until);
        }
        // Another's hold edited by hand (found by review: `kubectl patch` clearing the holder, as a "force
        // unlock", or shortening the duration; see `is_hand_edit`). The hold counts until the expiry it
        // had: from when its last renewal was seen if this record carries that renewal's time, else from
        // now (renewals may have come unseen). Its holder learns of the edit only at its next renewal.
        if let (Some(known), Some(new)) = (&previous, &current)
            && changed
            && let Some(old) = &known.current
            && self.is_anothers_hold(&old.record)
        {
            if is_hand_edit(&old.record, &new.record) {
                let base = match new.record.renew_time == old.record.renew_time {
                    true => known.changed_at,
                    false => now,
                };
                if let Some(until) = base.checked_add(holder_duration(&old.record, self.timing)) {
                    let until = self.edited_hold.as_ref().map_or(until, |hold| until.max(hold.until));
                    self.edited_hold = Some(EditedHold {
                        uid: old.metadata.uid.clone(),
                        acquire_time: old.record.acquire_time.clone(),
                        token: old.record.lease_transitions,
                        until,
                        taken_since: false,
                    });
                }
            } else if new.metadata.uid.is_some() && new.metadata.uid != old.metadata.uid {
                // Another Lease of the name: the one held was deleted and created again in between, unseen
                // (found by review: `kubectl replace --force`, or a manifest put back, while a waiter
                // polled or listed again). As a deletion seen in a read: held a full duration from now.
                let until = now.checked_add(holder_duration(&old.record, self.timing).max(self.timing.lease_duration));
                if let Some(until) = until {
                    self.protect_until(until);
                }
            }
        }
        // A live record of another acquisition since the edit: a newcomer took the lease. Its release may
        // carry the edited hold's token (an edit that put an older record back lowered the token: found by
        // review, helper-185, the newcomer's release was taken for the hold's own, and this waiter ran beside
        // the hold's child), so no release ends the hold's wait from then on.
        if let (Some(hold), Some(new)) = (&mut self.edited_hold, &current)
            && is_live(&new.record)
            && (new.metadata.uid != hold.uid
                || new.record.acquire_time != hold.acquire_time
                || new.record.lease_transitions != hold.token)
        {
            hold.taken_since = true;
        }
        // The edited hold's holder released it, as any holder releases (the same Lease and token, a new
        // acquireTime, the shape of a release). Not a Lease made again (found by the property model).
        if let (Some(hold), Some(new)) = (&self.edited_hold, &current)
            && !hold.taken_since
            && is_release(&new.record)
            && new.metadata.uid == hold.uid
            && new.record.lease_transitions == hold.token
            && new.record.acquire_time.is_some()
            && new.record.acquire_time != hold.acquire_time
        {
            self.edited_hold = None;
        }
        let was_free = previous.as_ref().and_then(|o| o.current.as_ref()).is_some_and(|v| !is_live(&v.record));
        if changed && let Some(sent_at) = self.lost_race_sent_at.take() {
            // The first change seen after a race lost: the write that beat ours, on the watch (a snapshot
            // has cleared this already), unless it is not another process's live record.
            if current.as_ref().is_some_and(|v| self.is_anothers_hold(&v.record)) {
                self.learn_write_lag(now.saturating_duration_since(sent_at));
            }
        }
        self.observation = Some(Observation { current, changed_at });
        // Our own record carrying a renewTime we sent: that write was applied, whatever its answer said (one
        // answered late or not at all, committed after the read made for it, seen now). Remembered apart from
        // `sent_stamps` (found by review, helper-147).
        if let Some(v) = self.current()
            && self.is_own_write(&v.record)
            && let Some(t) = v.record.renew_time.as_ref().filter(|t| self.sent_by_us(t))
        {
            let (t, ours_now) = (t.clone(), self.is_current_acquisition(&v.record));
            // A renewal of our hold that landed uncounted (committed, then answered 409) is a change a
            // client-go elector may have seen: a later one in its second is none, and counts for nothing
            // (see `Held::deadline`). Only a later second: an older write's event changes nothing (found by
            // review, rv243: otherwise each such write made the next jump a second, and the stamps ran ahead
            // of the real time by a second a retry period).
            // One answered 409 counts from its send, as any write of ours learned late, unless it was learned
            // after the renew deadline (found by review, rv246: never counted, it held up every later renewal
            // in its second, and a hold renewed on time was lost).
            let second = t.0.as_second();
            let sent = self.refused_sends.iter().rev().find(|(stamp, _)| *stamp == t).map(|(_, sent)| *sent);
            let timing = self.timing;
            if ours_now
                && let Some(held) = self.held.as_mut()
                && held.renew_second.is_none_or(|counted| counted < second)
            {
                held.renew_second = Some(second);
                if let Some(sent) = sent
                    && now < held.deadline(timing)
                {
                    held.last_renew_sent = held.last_renew_sent.max(sent);
                }
                let counted = (second, held.last_renew_sent);
                remember_send(&mut self.hold_sends, counted);
            }
            self.applied_stamp = Some(t);
        }
        self.note_contention(was_free, now);

        if self.held.is_none()
            && let Some(current) = self.current()
            && self.is_foreign_under_our_identity(current)
        {
            self.collision = true;
        }
        // An acquisition on the wire while another holder shows up (a create sent when the lease was
        // absent, which lands only because that holder's record was deleted again): if it lands, it
        // waits out that holder's expiry before any child starts.
        let foreign_until = match self.observation.as_ref() {
            Some(Observation { current: Some(v), changed_at, .. }) if self.is_anothers_hold(&v.record) => {
                changed_at.checked_add(holder_duration(&v.record, self.timing))
            }
            Some(Observation { current: None, .. }) => self.protected_until(),
            _ => None,
        };
        if let (Some(until), Some(pending)) = (foreign_until, self.pending.as_mut())
            && pending.purpose == Purpose::Acquire
        {
            pending.not_before = Some(pending.not_before.map_or(until, |at| at.max(until)));
        }
        // A record of ours (an earlier hold, a stray) renewed by a write we never sent while we hold nothing: a
        // client-go elector under our identity leads on it as on its own. It is waited out for the co-holder
        // window, neither taken again nor given back meanwhile (found by the property model, review helper-176:
        // lost at its renew deadline, mpsync took again the record a co-holder had renewed twice since, as its
        // earlier hold, and gave it back at its child's exit, and "b" ran while the co-holder still led).
        if changed
            && !restored
            && self.held.is_none()
            && let Some(v) = self.observation.as_ref().and_then(|o| o.current.as_ref())
            && self.is_own_write(&v.record)
            && let Some(time) = v.record.renew_time.as_ref()
            && !self.sent_by_us(time)
            && self.applied_stamp.as_ref() != Some(time)
            && previous.as_ref().and_then(|o| o.current.as_ref()).map(|p| &p.record.renew_time)
                != Some(&v.record.renew_time)
            && !self.counted_foreign.contains(time)
        {
            let (time, window) = (time.clone(), self.co_holder_window(&v.record));
            remember(&mut self.counted_foreign, &time, MAX_COUNTED_FOREIGN);
            self.last_foreign_at = Some(now);
            self.foreign_window = window;
            if let Some(until) = now.checked_add(window) {
                self.protect_until(until);
            }
        }
        // Our hold renewed by a write we never sent (found by review, helper-131: a client-go elector under
        // the same identity keeps acquireTime and leaseTransitions and renews it as its own, and runs its
        // work beside our child). A single one may be a hand edit of renewTime; a second is another holder:
        // lost, never given back (the record is the other's now), and waited out as another's hold.
        if changed
            && !restored
            && let Some(held) = &self.held
            && let Some(v) = self.observation.as_ref().and_then(|o| o.current.as_ref())
            && v.record.holder_identity.as_deref() == Some(self.identity.as_str())
            && same_acquisition(&v.record, &held.acquire_time, held.fencing_token)
            && v.record.renew_time.as_ref().is_some_and(|t| !self.sent_by_us(t))
            // A renewal: a renewTime not seen just before (found by review, helper-134: one hand edit, then
            // another field changed, counted twice).
            && previous.as_ref().and_then(|o| o.current.as_ref()).map(|p| &p.record.renew_time)
                != Some(&v.record.renew_time)
            && v.record.renew_time.as_ref().is_some_and(|t| !self.counted_foreign.contains(t))
        {
            if let Some(time) = &v.record.renew_time {
                remember(&mut self.counted_foreign, time, MAX_COUNTED_FOREIGN);
            }
            // Two within a lease duration (the longer of ours and the record's): a co-holder renews within
            // its renew deadline, or stops leading itself; two hand edits days apart are no co-holder
            // (found by review, helper-134).
            let window = self.co_holder_window(&v.record);
            if self.last_foreign_at.is_none_or(|at| now.saturating_duration_since(at) > window) {
                self.foreign_renewals = 0;
            }
            self.last_foreign_at = Some(now);
            self.foreign_window = window;
            self.foreign_renewals += 1;
            if self.foreign_renewals >= 2
                && let Some(held) = self.held.take()
            {
                self.undone.push((held.acquire_time, held.fencing_token));
                // A renewal of ours on the wire is no claim any more: if it lands, the record is still
                // the other's to wait out, never ours to give back or take again.
                if self.pending.as_ref().is_some_and(|p| p.purpose == Purpose::Renew) {
                    self.pending = None;
                }
                self.collision = true;
                self.lost = Some(LossReason::Collision { identity: self.identity.clone() });
                // The record is the other's from now on, however short its duration reads: waited out for
                // the co-holder window from now at least (found by the property model, helper-144: a relist
                // showed the co-holder's renewal only as shortened by hand to 1 s, and mpsync took the
                // record again 1 s later while the co-holder still led).
                if let Some(until) = now.checked_add(window) {
                    self.protect_until(until);
                }
                return;
            }
        }
        self.check_held();
    }

    /// Spread attempts on a freed lease: the first sight of a free record draws when to try it. A handoff
    /// to another process seen without a lost race makes the belief in contention fade, and a lease that
    /// stayed free long tells how many tried it: the first of `n` draws within a spread comes after about
    /// `spread / n`, so a crowd that drains (`lock` waiters leave after their turn) is followed down.
    fn note_contention(&mut self, was_free: bool, now: Instant) {
        let Some(current) = self.current().cloned() else { return };
        if is_live(&current.record) {
            let free = self.free_try_at.take();
            let seen_free_at = free.as_ref().map(|free| free.seen_at);
            if was_free && self.held.is_none() && !self.is_own_write(&current.record) {
                let mut belief = self.contenders * CONTENTION_DECAY;
                if let Some(free) = free.filter(|free| !free.tried) {
                    // Free for this long, less the first window and the time a write takes to reach us:
                    // the first draw.
                    let first_draw =
                        now.saturating_duration_since(free.seen_at).saturating_sub(free.floor + self.stagger());
                    if !first_draw.is_zero() && !free.spread.is_zero() {
                        belief = belief.min(free.spread.as_secs_f64() / first_draw.as_secs_f64());
                    }
                }
                self.contenders = belief.clamp(1.0, MAX_CONTENDERS);
                let newcomer = 1.0 - first_window_share(recorded_contenders(&current));
                self.newcomers = self.newcomers * NEWCOMER_MEMORY + newcomer * (1.0 - NEWCOMER_MEMORY);
                // A newcomer's acquisition, this long after the release: what the window must cover. One
                // that came later than the widest window raced nobody (a process that started long after
                // the release, while the crowd's attempts were spread): it says nothing of the window.
                if newcomer > 0.5
                    && let Some(sample) = seen_free_at.map(|at| now.saturating_duration_since(at))
                    && sample <= MAX_FIRST_WINDOW
                {
                    self.newcomer_lag = Some(moving_average(self.newcomer_lag, sample));
                }
            }
            return;
        }
        let version = current.resource_version.clone();
        if let Some(free) = self.free_try_at.as_mut()
            && (free.version == version || (was_free && !free.tried))
        {
            // The same free record, or one still free and not tried yet (a change of its metadata): the
            // draw stands. Drawing again on every version would put off, without end, a lease touched more
            // often than the first window.
            free.version = version;
            return;
        }
        // A process that believes it is alone tries at once. One that believes in a crowd leaves it the
        // first window (from two contenders on; less below), so that a newcomer's attempt is seen before
        // the crowd's earliest draws instead of colliding with them, as long as newcomers have been taking
        // freed leases lately; then it draws within the spread.
        let limit = MAX_SPREAD.min(self.timing.lease_duration / 2);
        let floor = self.first_window().mul_f64(first_window_share(Some(self.contenders)) * self.newcomers).min(limit);
        let spread = self.stagger().mul_f64(self.contenders - 1.0).min(limit - floor);
        let delay = floor + spread.mul_f64(self.random_fraction());
        self.free_try_at = Some(FreeSeen { version, seen_at: now, floor, spread, try_at: now + delay, tried: false });
    }

    /// The driver was about to send an acquisition and, looking at its watch once more, found the lease
    /// taken by another process: a race lost without a write. Counted only when what it knows now is
    /// another process's live record.
    pub fn beaten_before_sending(&mut self) {
        if self.held.is_none() && self.current().is_some_and(|current| self.is_anothers_hold(&current.record)) {
            self.lost_a_race();
        }
    }

    /// A race lost, with a write (a 409) or without (see `beaten_before_sending`): more contend than we
    /// thought.
    fn lost_a_race(&mut self) {
        self.contenders = (self.contenders * CONTENTION_GROWTH).clamp(2.0, MAX_CONTENDERS);
    }

    /// One measurement of how long the write that beat ours took to reach us after we sent ours.
    fn learn_write_lag(&mut self, sample: Duration) {
        let sample = sample.min(MAX_STAGGER_PER_CONTENDER);
        self.write_lag = Some(moving_average(self.write_lag, sample));
    }

    fn random_fraction(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Whether a child may run under the lease now: held, and not waiting out another holder.
    pub fn usable(&self, now: Instant) -> bool {
        self.held.as_ref().is_some_and(|held| now >= held.usable_from && now < held.deadline(self.timing))
    }

    /// While we hold the lease, the record we know must be our own write; anything else is a loss.
    fn check_held(&mut self) {
        if self.held.is_none() {
            return;
        }
        let loss = match self.current() {
            None => Some(LossReason::Deleted),
            Some(v) if self.is_current_acquisition(&v.record) => None,
            Some(v)
                if v.record.holder_identity.as_deref() == Some(self.identity.as_str())
                    && !self.undone.iter().any(|(time, token)| same_acquisition(&v.record, time, *token)) =>
            {
                self.collision = true;
                Some(LossReason::Collision { identity: self.identity.clone() })
            }
            Some(v) => Some(LossReason::Taken { holder: v.record.holder_identity.clone().unwrap_or_default() }),
        };
        if let Some(reason) = loss {
            self.lose(reason);
        }
    }

    fn lose(&mut self, reason: LossReason) {
        if let Some(held) = self.held.take() {
            self.previous = Some((held.acquire_time, held.fencing_token));
        }
        self.lost = Some(reason);
    }

    /// Record that `write` is being sent now; the ticket goes back with its answer to `write_result`.
    pub fn write_sent(&mut self, write: &Write, sent_at: Instant) -> Ticket {
        if let Some(stamp) = &write.record.renew_time {
            remember(&mut self.sent_stamps, stamp, MAX_SENT_STAMPS);
        }
        if let Some(stamp) = &write.record.renew_time
            && self.last_stamp.as_ref().is_none_or(|last| stamp.0 > last.0)
        {
            self.last_stamp = Some(stamp.clone());
            let second = stamp.0.as_second();
            if self.stamp_second.is_none_or(|(last, _)| last != second) {
                self.stamp_second = Some((second, sent_at));
            }
        }
        let purpose = if self.is_release(write) {
            self.release_base = write.resource_version().map(str::to_string);
            self.release_sent_on =
                self.release_base.clone().map(|base| (base, write.record.lease_transitions.unwrap_or(0)));
            Purpose::Release
        } else if self.held.is_some() {
            Purpose::Renew
        } else {
            Purpose::Acquire
        };
        if purpose == Purpose::Acquire
            && let Some(free) = self.free_try_at.as_mut()
        {
            free.tried = true;
        }
        self.give_up_pending();
        self.pending = Some(PendingWrite {
            purpose,
            record: write.record.clone(),
            sent_at,
            not_before: None,
            checked: false,
            base: write.resource_version().map(str::to_string),
        });
        if let Some(held) = &mut self.held {
            // Renewals keep their cadence whether or not this one succeeds, as client-go's do.
            held.next_renew_at = sent_at + self.timing.retry_period;
        }
        Ticket { sent_at, purpose, record: write.record.clone() }
    }

    /// Record what became of the write `ticket` stands for. Success counts from the ticket's send time.
    pub fn write_result(&mut self, ticket: Ticket, result: WriteResult, now: Instant) {
        let is_pending =
            self.pending.as_ref().is_some_and(|p| p.sent_at == ticket.sent_at && p.record == ticket.record);
        // A write answered 409 or 429 does not push out of `sent_stamps` the stamps of writes that may have
        // landed (found by review, helper-147: more than `MAX_SENT_STAMPS` refused renewals after one committed
        // late); its stamp is kept apart, still ours (a proxy's retry of a committed write is answered 409).
        if matches!(result, WriteResult::Conflict | WriteResult::NotApplied)
            && let Some(stamp) = &ticket.record.renew_time
            && let Some(at) = self.sent_stamps.iter().rposition(|sent| sent == stamp)
        {
            self.sent_stamps.remove(at);
            remember(&mut self.refused_stamps, stamp, MAX_SENT_STAMPS);
            if matches!(result, WriteResult::Conflict) {
                if self.refused_sends.len() >= MAX_SENT_STAMPS {
                    self.refused_sends.pop_front();
                }
                self.refused_sends.push_back((stamp.clone(), ticket.sent_at));
            }
        }
        match result {
            WriteResult::Applied(stored) => {
                let not_before = if is_pending { self.pending.take().and_then(|p| p.not_before) } else { None };
                if same_write(&ticket.record, &stored.record) {
                    self.applied(ticket.purpose, &stored.record, ticket.sent_at, not_before, now, is_pending);
                }
                // An answer older than what we know already (a watch event overtook it) does not replace
                // what we know; what we hold must still agree with that.
                let stale =
                    self.current().is_some_and(|known| is_older(&stored.resource_version, &known.resource_version));
                if stale {
                    self.check_held();
                } else {
                    self.landing = true;
                    self.observe(Some(stored), now);
                }
            }
            WriteResult::Conflict => {
                // An acquisition refused may have landed all the same (a proxy's retry of a write that was
                // committed is answered 409): kept as a stray, so that a record showing it is our own, to
                // use or give back, never a collision with ourselves (found by review, helper-163).
                if is_pending {
                    self.give_up_pending();
                }
                // The watch may have shown the write that beat ours before this answer came.
                let beaten_seen_at = self.observation.as_ref().and_then(|o| match &o.current {
                    Some(v) if self.is_anothers_hold(&v.record) && o.changed_at >= ticket.sent_at => Some(o.changed_at),
                    _ => None,
                });
                if ticket.purpose == Purpose::Acquire {
                    // Lost a race: more contend than we thought.
                    self.lost_a_race();
                    match beaten_seen_at {
                        Some(seen_at) => self.learn_write_lag(seen_at - ticket.sent_at),
                        None => self.lost_race_sent_at = Some(ticket.sent_at),
                    }
                }
                if beaten_seen_at.is_some() && self.held.is_none() {
                    // What we know is already the winner's write: nothing to wait for.
                } else if self.watching && self.held.is_none() {
                    // The winner's write is on its way to our watch: act on that event, not on a read.
                    self.awaiting_event_until = Some(now + self.timing.retry_period);
                } else {
                    self.needs_read = true;
                }
            }
            WriteResult::NotApplied => {
                // 429 too (see `Conflict`).
                if is_pending {
                    self.give_up_pending();
                }
            }
            WriteResult::Unknown => {
                // Keep `pending`: a read decides whether it was applied.
                self.needs_read = true;
            }
        }
    }

    /// A renewal lost a race to a change that left the hold ours: renew at once on the version known now.
    /// Returns whether a renewal was brought forward.
    pub fn renew_now(&mut self, now: Instant) -> bool {
        match self.held.as_mut() {
            Some(held) if self.lost.is_none() && !self.needs_read && held.next_renew_at > now => {
                held.next_renew_at = now;
                true
            }
            _ => false,
        }
    }

    /// Ask for a read before anything else (for example after a failed read).
    pub fn want_read(&mut self) {
        self.needs_read = true;
    }

    /// Whether a held lease was found lost, and why. Cleared by `forget_loss` and `released`.
    pub fn loss(&self) -> Option<&LossReason> {
        self.lost.as_ref()
    }

    /// After the child was stopped for a loss: campaign afresh. What was observed stays (its expiry
    /// still counts from when it was seen).
    pub fn forget_loss(&mut self) {
        if let Some(held) = self.held.take() {
            self.previous = Some((held.acquire_time, held.fencing_token));
        }
        self.lost = None;
        self.pending = None;
        self.needs_read = true;
    }

    /// What to do now. Passing the renew deadline is recorded as a loss here.
    pub fn next(&mut self, now: Now) -> Action {
        if let Some(held) = &self.held
            && now.instant >= held.deadline(self.timing)
        {
            self.lose(LossReason::RenewDeadline);
        }
        if let Some(reason) = &self.lost {
            return Action::Lost(reason.clone());
        }
        if let Some(held) = &self.held {
            let deadline = held.deadline(self.timing);
            if self.needs_read {
                return Action::Read;
            }
            if now.instant >= held.next_renew_at {
                return match self.current() {
                    Some(current) => Action::Write(self.renewal(current, now)),
                    None => Action::Read,
                };
            }
            let mut wake = held.next_renew_at.min(deadline);
            if now.instant < held.usable_from {
                wake = wake.min(held.usable_from);
            }
            return Action::WaitUntil(wake);
        }

        // An acquisition of ours whose outcome is unknown is settled by a read, whatever events came since
        // (one that does not show our write does not settle it), and the campaign sends nothing else until
        // it is (found by review: an event before that read left a waiter on a free lease for ever).
        if self.needs_read || self.acquisition_unchecked() {
            return Action::Read;
        }
        if let Some(until) = self.awaiting_event_until {
            // What we know is stale (a race was lost): wait for the event, read if none comes.
            return if now.instant < until { Action::WaitUntil(until) } else { Action::Read };
        }
        // An acquisition answered 409 or 429 that may have been committed: read (other slots wait for it).
        if self.stray_base.is_some() {
            return Action::Read;
        }
        let Some(observation) = &self.observation else {
            return Action::Read;
        };
        let Some(current) = &observation.current else {
            return self.acquisition(None, now);
        };
        if let Some(refusal) = self.slot_refusal(current) {
            return Action::Refuse(refusal);
        }
        let holder = current.record.holder_identity.as_deref().unwrap_or("");
        if holder.is_empty() {
            if let Some(FreeSeen { try_at, .. }) = &self.free_try_at
                && now.instant < *try_at
            {
                return Action::WaitUntil(*try_at);
            }
            // A free record known for longer than a retry period (a stagger's draw, or a hold edited by hand
            // or a vanished one waited out) is read once more before it is taken, as an expired hold is: an
            // etcd restored meanwhile without `--bump-revision` may have handed its version out again to
            // another's acquisition, which a compare-and-swap on it would overwrite, and the watch, resumed
            // from that version, never shows (found by the property model, helper-149: a waiter that saw a
            // hold cleared by hand took the lease 2 s later on that version, over the acquisition a restore
            // had let another process make at it, and both children ran). Seen within a retry period (the
            // usual handoff, on the release's event), it is taken at once.
            if self.known_for_long(&now) {
                return Action::Read;
            }
            return self.acquisition(Some(current), now);
        }
        if holder == self.identity && (self.adoptable(current) || self.is_own_write(&current.record)) {
            // An adoption keeps the record's token but is an acquisition all the same: after a lapse, or a
            // write of ours learned past its send + the lease duration, not before the protection is over
            // (found by review, helper-129: a side-car cut off past its TTL adopted its own record, restored
            // at the version it knew, 20 ms after another pod's client was told 200).
            if self.lapsed_unread {
                return Action::Read;
            }
            if let Some(until) = self.protected_until()
                && now.instant < until
            {
                return Action::WaitUntil(until);
            }
            // Known for long, our own record is read once more before it is taken again, as a free one (found
            // by the property model: a waiter whose create a restore undid took its own record again 4 s later,
            // by a compare-and-swap on the version the restored etcd had handed out to another's create).
            if self.known_for_long(&now) {
                return Action::Read;
            }
            // Our own record from an earlier hold (its child is gone), or the side-car's adoption, which
            // keeps the token, unless a larger one was seen (a create of ours that landed after a
            // deletion): then it is taken again with a new token, as any acquisition.
            return match self.adoptable(current) && !self.below_token_floor(&current.record) {
                true => Action::Write(self.adoption(current, now)),
                false => self.acquisition(Some(current), now),
            };
        }
        match self.expiry() {
            Some(expiry) if now.instant < expiry => Action::WaitUntil(expiry),
            // Expired by what was seen, maybe on a watch resumed from a version handed out again (an etcd
            // restored without `--bump-revision`: the holder's renewals bring its restored record back to
            // the version we know, and a watch from there shows none of them): a read first, so that the
            // write is based on the record as it is now, not on a version that now names another record.
            // So too when that read is older than a retry period, as for a free record (found by the property
            // model: read just after the expiry, taken 3 s later once a protection was over, on a version the
            // etcd restored meanwhile had handed out again to a restarted side-car's hold).
            Some(expiry) if self.read_at.is_none_or(|at| at < expiry) || self.known_for_long(&now) => Action::Read,
            Some(_) => self.acquisition(Some(current), now),
            // A duration too long to add to the clock: as good as never.
            None => Action::WaitUntil(now.instant + Duration::from_secs(365 * 24 * 3600)),
        }
    }

    /// The record we know was last read, or seen to change, more than a retry period ago (half a second at
    /// least: the side-car's is zero, and it reads before every decision): a write based on it is preceded
    /// by a read (see where it is called).
    fn known_for_long(&self, now: &Now) -> bool {
        let Some(observation) = &self.observation else { return true };
        let seen_at = self.read_at.map_or(observation.changed_at, |at| at.max(observation.changed_at));
        now.instant.saturating_duration_since(seen_at) > self.timing.retry_period.max(Duration::from_millis(500))
    }

    /// When the record we last observed expires for us (`None`: free now, or too far to tell).
    pub fn observed_expiry(&self) -> Option<Instant> {
        let current = self.current()?;
        if current.record.holder_identity.as_deref().unwrap_or("").is_empty() {
            return None;
        }
        self.expiry()
    }

    /// The write that releases a lease we hold: holder cleared, duration 1s, as client-go writes it.
    /// `None` if the record we know is not our own write: a lease that is not ours is never written.
    pub fn release(&self, now: Now) -> Option<Write> {
        let current = self.current()?;
        if !self.is_own_write(&current.record) {
            return None;
        }
        if self.no_give_back_from.is_some_and(|from| now.instant >= from) {
            return None;
        }
        // Another process may renew this record under our identity (a client-go elector given it): one
        // renewal of it seen lately (a hand edit, or a co-holder's first), or a record whose renewTime none of
        // our writes carried (a co-holder's renewal after our loss, or one first read after an etcd restore,
        // which counts as no renewal: found by review, helper-140), and the record is left to expire. Given
        // back, it would be free to a third process while the co-holder's work runs (found by review,
        // helper-138: lost at its renew deadline with its renewals answered late, having seen one foreign
        // renewal, mpsync cleared the co-holder's record). Lately: within the co-holder's duration, not only
        // the record's, which our own renewals since shortened to ours (found by the property model,
        // helper-144: a client-go co-holder with a 10 s renew deadline, cut off after one renewal, still led
        // when our give-back 4.5 s later let "b" in at once).
        if self.renewed_by_another(&current.record, &now) {
            return None;
        }
        Some(self.release_of(current, now))
    }

    /// Whether `record`, under our identity, may be another process's renewal (see `release`): one renewal
    /// not ours seen within the co-holder's duration, or a renewTime none of our writes carried.
    fn renewed_by_another(&self, record: &LeaseSpec, now: &Now) -> bool {
        let window = self.co_holder_window(record).max(self.foreign_window);
        let co_held = self.last_foreign_at.is_some_and(|at| now.instant.saturating_duration_since(at) <= window);
        let not_ours =
            record.renew_time.as_ref().is_none_or(|t| !self.sent_by_us(t) && self.applied_stamp.as_ref() != Some(t));
        co_held || not_ours
    }

    /// The write that gives back, as it was read, a record we adopt but do not hold (see [`Elector::adoptable`]:
    /// a side-car's, written before a restart), without taking it back first: a take-back is a renewal, and
    /// a semaphore first used meanwhile, waiting out this plain hold of its slot's name, refuses a name whose
    /// plain holder renews it; a release it waits for (found by review, helper-208). `None` for a record let
    /// go to expire ([`Elector::let_expire`]), never given back, one we hold (see [`Elector::release`]), and one
    /// that [`Elector::next`] would not take back now: after a lapse, or while versions that went back are
    /// in doubt (an etcd restore brought it back over another's hold, whose client was told it holds the
    /// lease: found by review, helper-210), or below a token seen. Nor, once this process held the lease, one
    /// that [`Elector::release`] would not give back: renewed by another writer under our identity (a second
    /// side-car given the pod's name, renewing it for its client: found by review, helper-212).
    pub fn give_back_adoptable(&self, now: Now) -> Option<Write> {
        let current = self.current()?;
        if self.held.is_some()
            || !self.adoptable(current)
            || self.no_give_back_from.is_some_and(|from| now.instant >= from)
            || self.in_doubt_for_adoption(&now)
            || self.below_token_floor(&current.record)
            || (self.last_hold_sent.is_some() && self.renewed_by_another(&current.record, &now))
        {
            return None;
        }
        Some(self.release_of(current, now))
    }

    /// After a lapse not read since, or within the protection after versions went back or a late write
    /// (see `protected_until`): a record of ours is not written, neither taken back (as in `next`) nor
    /// given back.
    fn in_doubt_for_adoption(&self, now: &Now) -> bool {
        self.lapsed_unread || self.protected_until().is_some_and(|until| now.instant < until)
    }

    /// `current` released: holder cleared, duration 1s, as client-go writes it, on its version.
    fn release_of(&self, current: &Versioned, now: Now) -> Write {
        let mut record = current.record.clone();
        record.holder_identity = Some(String::new());
        record.lease_duration_seconds = Some(1);
        let stamp = self.stamp(now.wall, None);
        record.acquire_time = Some(stamp.clone());
        record.renew_time = Some(stamp);
        Write::replace(current, record)
    }

    /// After a release was applied, or found unnecessary, or given up: we hold nothing and have nothing
    /// in flight that could make us hold.
    pub fn released(&mut self) {
        if let Some(held) = self.held.take() {
            self.previous = Some((held.acquire_time, held.fencing_token));
        }
        // An acquisition whose outcome the give-back did not learn (its answer did not come within the
        // budget) may land later: a record that shows it is ours to take again, not another's hold to
        // wait out (found by review, helper-112: a library `Lock` whose `acquire` was dropped waited a
        // lease duration for its own late write, and so did everyone else).
        self.give_up_pending();
        self.lost = None;
    }

    /// Let a hold go, its record left to expire: nothing is held from now on, and the record, our own write,
    /// is never given back (until an acquisition of ours again), since its holder's client may still count on
    /// it (the side-car's slot name found a semaphore's: see `Locks::checked_slot_name`). A drain neither waits
    /// on it nor releases it (found by review, helper-203).
    pub fn let_expire(&mut self, now: Instant) {
        self.released();
        self.no_give_back_from = Some(now);
    }

    /// Let go of the write on the wire; an acquisition among them may still land: remember it as ours,
    /// to release or take again, never as someone else's record under our identity.
    fn give_up_pending(&mut self) {
        if let Some(old) = self.pending.take()
            && old.purpose == Purpose::Acquire
        {
            if !old.checked && self.known_version() == old.base {
                self.stray_base = Some(old.base.clone());
            }
            self.strays.push((old.record.acquire_time.clone(), old.record.lease_transitions.unwrap_or(0)));
            self.stray_sent.push(old.sent_at);
            if self.strays.len() > MAX_STRAYS {
                self.strays.remove(0);
                self.stray_sent.remove(0);
            }
        }
    }

    /// How close together two foreign renewals of our hold must come to be a co-holder's (the longer of
    /// our lease duration and the record's): a co-holder renews within its renew deadline, or stops leading.
    fn co_holder_window(&self, record: &LeaseSpec) -> Duration {
        holder_duration(record, self.timing).max(self.timing.lease_duration)
    }

    /// Whether the record's slot marking disagrees with ours (a count that differs, or a plain lock on a
    /// slot).
    fn slot_refusal(&self, current: &Versioned) -> Option<Refusal> {
        let recorded = current.metadata.annotations.as_ref().and_then(|a| a.get(SLOTS_ANNOTATION)).cloned();
        match (self.slots, recorded) {
            (Some(ours), Some(recorded)) if recorded != ours.to_string() => {
                Some(Refusal::SlotCountMismatch { recorded, ours })
            }
            (None, Some(recorded)) => Some(Refusal::IsASlot { recorded }),
            // A plain lease's live record on a slot's name is waited out as any holder's, and then taken as
            // a slot: the campaign acquires no slot meanwhile, and refuses the semaphore if the record
            // changes while live, its holder renewing (see `engine::Slot::plain_hold_renewed`). Refused
            // here at sight, a dead holder's record refused the semaphore for ever (found by review,
            // helper-162).
            _ => None,
        }
    }

    /// Mark a write as ours: for a slot, the semaphore's count.
    fn marked(&self, mut write: Write) -> Write {
        // A side-car's write says so, for its token and renewal; anyone else's carries no such mark over.
        if self.adopt {
            let mark = side_car_mark(&write.record);
            write
                .metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(SIDECAR_ANNOTATION.to_string(), mark);
        } else if let Some(annotations) = write.metadata.annotations.as_mut() {
            annotations.remove(SIDECAR_ANNOTATION);
        }
        if let Some(slots) = self.slots {
            write
                .metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(SLOTS_ANNOTATION.to_string(), slots.to_string());
        } else if let Some(annotations) = write.metadata.annotations.as_mut() {
            // A plain lease's writes carry no count, whatever its record got meanwhile (found by review,
            // helper-175: a count put on a plain holder's record by another's create was renewed on, and
            // a semaphore took the record for a slot's).
            annotations.remove(SLOTS_ANNOTATION);
        }
        write
    }

    /// A write of ours sent at `sent` that made no hold is the record known now: its give-back counts from
    /// its own send, not from an older hold's lapse (a stale bound kept a write sent moments ago from
    /// being given back). Learned only past its send + the lease duration (cut off meanwhile), another may
    /// have taken over since, and an etcd restore may show this very record again: as after a lapse, it is
    /// neither given back nor taken again for a lease duration from now (found by review, helper-128: taken
    /// again at once, its child ran beside the holder etcd forgot, with the same fencing token).
    fn bound_give_back(&mut self, sent: Instant, now: Instant) {
        let bound = sent.checked_add(self.timing.lease_duration).unwrap_or(sent);
        self.no_give_back_from = Some(bound);
        if now >= bound
            && let Some(until) = now.checked_add(self.timing.lease_duration)
        {
            self.protect_until(until);
        }
    }

    /// Nothing of ours runs or is acquired before `until` (another holder's expiry, at the latest).
    fn protect_until(&mut self, until: Instant) {
        self.protected_until = Some(self.protected_until.map_or(until, |at| at.max(until)));
    }

    /// Until when nothing of ours may run or be acquired: another's hold that vanished, or was edited by
    /// hand, counted until its expiry.
    fn protected_until(&self) -> Option<Instant> {
        let edited = self.edited_hold.as_ref().map(|hold| hold.until);
        [self.protected_until, edited].into_iter().flatten().max()
    }

    fn expiry(&self) -> Option<Instant> {
        let observation = self.observation.as_ref()?;
        let current = observation.current.as_ref()?;
        observation.changed_at.checked_add(holder_duration(&current.record, self.timing))
    }

    /// A write of ours was applied. `current`: it is the write in flight (not one given up since).
    fn applied(
        &mut self,
        purpose: Purpose,
        record: &LeaseSpec,
        sent_at: Instant,
        not_before: Option<Instant>,
        now: Instant,
        current: bool,
    ) {
        if let Some(until) = not_before {
            // Our acquisition landed although another holder was seen meanwhile: its record was deleted
            // under it. Whatever we do with this write, nothing of ours runs before that holder's expiry.
            self.protect_until(until);
        }
        if purpose != Purpose::Release && record.renew_time.is_some() {
            self.applied_stamp = record.renew_time.clone();
        }
        let too_late = now >= sent_at + self.timing.renew_deadline;
        // A create sent before the lease was seen with a larger token, that landed after the lease was
        // deleted: its token would go back. It makes no hold; the record is taken again at once, above.
        let token_goes_back = self.below_token_floor(record);
        match purpose {
            Purpose::Release if current => return self.released(),
            Purpose::Release => return,
            // A renewal that succeeded, learned only after the renew deadline of the hold: the hold counted
            // as lost from that moment on (for the holder's work too, which may have stopped), and stays
            // lost; the record it leaves is ours to release.
            Purpose::Renew if self.held.as_ref().is_some_and(|held| now >= held.deadline(self.timing)) => {
                return self.lose(LossReason::RenewDeadline);
            }
            Purpose::Renew if self.held.is_some() => {}
            Purpose::Acquire if self.held.is_none() && current && !too_late && !token_goes_back => {}
            _ => {
                // A write that lands after its hold was given up (or too late to hold anything) never makes
                // a hold, nor a second child with an old token; the record it leaves is ours to release or
                // take again.
                if self.held.is_none()
                    && !self.undone.iter().any(|(time, token)| same_acquisition(record, time, *token))
                {
                    self.previous = Some((record.acquire_time.clone(), record.lease_transitions.unwrap_or(0)));
                    self.bound_give_back(sent_at, now);
                }
                return;
            }
        }
        let next_renew_at = sent_at + self.timing.retry_period;
        let renew_second = record.renew_time.as_ref().map(|time| time.0.as_second());
        if self.held.is_none() {
            self.hold_sends.clear();
            self.foreign_renewals = 0;
            self.last_foreign_at = None;
            self.counted_foreign.clear();
            // Acquired: fewer contend than feared, or a waiter left alone would keep waiting out a
            // contention long gone (the belief otherwise fades only on handoffs to others).
            self.contenders = (self.contenders * CONTENTION_DECAY_ON_ACQUIRE).max(1.0);
            self.lost_race_sent_at = None;
            // A new acquisition: a lapse before it says nothing of it, nor a release before it.
            self.no_give_back_from = None;
            self.release_sent_on = None;
        }
        self.held = Some(match self.held.take() {
            // A renewal keeps the token of the acquisition; an older success never moves the deadline back.
            // One that leaves `renewTime` in the second of the last one counted is no change to client-go,
            // and counts for nothing (see `Held::deadline`).
            Some(held) if renew_second == held.renew_second => {
                Held { next_renew_at: next_renew_at.max(held.next_renew_at), ..held }
            }
            Some(held) => Held {
                last_renew_sent: sent_at.max(held.last_renew_sent),
                renew_second,
                next_renew_at: next_renew_at.max(held.next_renew_at),
                ..held
            },
            None => Held {
                fencing_token: record.lease_transitions.unwrap_or(0),
                acquire_time: record.acquire_time.clone(),
                last_renew_sent: match self.current() {
                    // An adoption left in the second of the record it adopted (see `renewal`): no change to
                    // client-go, which has seen that record since it landed, under a second before this send.
                    Some(base)
                        if same_acquisition(
                            record,
                            &base.record.acquire_time,
                            base.record.lease_transitions.unwrap_or(0),
                        ) && base.record.renew_time.as_ref().map(|t| t.0.as_second()) == renew_second =>
                    {
                        sent_at.checked_sub(Duration::from_secs(1)).unwrap_or(sent_at)
                    }
                    _ => sent_at,
                },
                renew_second,
                next_renew_at,
                usable_from: [Some(sent_at), not_before, self.protected_until()]
                    .into_iter()
                    .flatten()
                    .max()
                    .unwrap_or(sent_at),
            },
        });
        self.last_hold_sent = self.held.as_ref().map(|held| held.last_renew_sent);
        if let Some(held) = &self.held
            && let Some(second) = held.renew_second
            && self.hold_sends.back().is_none_or(|(last, _)| *last != second)
        {
            remember_send(&mut self.hold_sends, (second, held.last_renew_sent));
        }
        self.lost = None;
    }

    /// Our hold shown by `current` at a renewal of ours older than the one it counts from (etcd restored: the
    /// renewals since are undone): another process may have seen that very record and none since (a side-car looks
    /// only when its client asks; a waiter's watch may lag), and counts its expiry from then. The hold counts from
    /// the send of that renewal again, until a renewal lands; past its renew deadline so counted, it is lost (found
    /// by review, rv288: a side-car whose renewal failed after such a restore answered its client 200 up to the
    /// undone renewal's renew deadline, and another pod's side-car, counting from the restored record, took the lock
    /// and told its client 200 before that; rv289: a `lock` holder that read the restore ran its child on beside a
    /// waiter whose watch had lagged). One of ours older than this hold's first write (a side-car's hold adopted
    /// again since) is lost now, and so is a side-car's hold shown at a renewal it never sent (its predecessor's,
    /// the side-car before a restart: rv294, rv297; or a hand edit's). One older than the last writes remembered (`MAX_SENT_STAMPS`) counts as before:
    /// no view of the lease lags that far behind (a side-car forgets a lock it was not asked about for twice the
    /// TTL).
    fn count_from_restored_renewal(&mut self, current: Option<&Versioned>, now: Instant) {
        let Some(record) = current.map(|v| &v.record).filter(|record| self.is_current_acquisition(record)) else {
            return;
        };
        let Some(time) = record.renew_time.as_ref() else { return };
        let second = time.0.as_second();
        if self.held.as_ref().is_none_or(|held| held.renew_second.is_none_or(|counted| second >= counted)) {
            return;
        }
        // Only a renewal this process sent: a `renewTime` it never wrote is a hand edit's (or a co-holder's), which
        // every other process saw as a change when it came, and counts from then (found by review, rv291: an edit
        // that set it an hour back cost a healthy holder its lease). But not for a hold a side-car may have adopted:
        // its predecessor (the side-car before a restart) may have written that renewal, from before the adoption,
        // and a restore brought it back; it cannot be told from a hand edit, and is lost (found by review, rv294:
        // counted as a hand edit's, the hold counted on from the adoption undone, and its client was told 200 beside
        // another pod's; rv297: the same once the Lease's version had passed any the side-car knew).
        if !self.sent_by_us(time) {
            if self.adopt {
                self.lose_to_restore(record.renew_time.clone(), now);
            }
            return;
        }
        let Some(at) = self.hold_sends.iter().rposition(|(counted, _)| *counted <= second) else {
            // Older than any renewal of this hold remembered (or than its acquisition, a side-car's adoption of
            // it): others may have seen it long ago. Lost now.
            self.lose_to_restore(record.renew_time.clone(), now);
            return;
        };
        let from = self.hold_sends[at].1;
        self.hold_sends.truncate(at + 1);
        let Some(held) = self.held.as_mut() else { return };
        if from < held.last_renew_sent {
            tracing::warn!(
                token = held.fencing_token,
                "the lease shows an older renewal of this hold (etcd restored?): the hold counts from that renewal"
            );
            held.last_renew_sent = from;
            held.renew_second = Some(second);
            // Renewed at once: what is left of the hold may be short.
            held.next_renew_at = held.next_renew_at.min(now);
            self.last_hold_sent = Some(from);
        }
    }

    /// Our hold, shown by a restore at a renewal older than any of it remembered, is lost now. When that renewal was
    /// sent is not known, and what is bounded by the hold's last renewal (a side-car's answers, its give-back) counts
    /// from a lease duration ago (found by review, rv294: bounded from the renewal undone, a side-car answered a GET
    /// 200 and another pod's client was told 200 9 ms later).
    fn lose_to_restore(&mut self, restored: Option<MicroTime>, now: Instant) {
        tracing::warn!("the lease shows a renewal of this hold older than any remembered (etcd restored?): lost");
        self.hold_sends.clear();
        let back = now.checked_sub(self.timing.lease_duration).unwrap_or(now);
        self.last_hold_sent = Some(self.last_hold_sent.map_or(back, |sent| sent.min(back)));
        self.lose(LossReason::RenewDeadline);
        self.restore_undone.extend(self.previous.clone().map(|(time, token)| (time, token, restored)));
        if self.restore_undone.len() > MAX_STRAYS {
            self.restore_undone.drain(..self.restore_undone.len() - MAX_STRAYS);
        }
    }

    /// Whether `current` shows a record of ours whose end a restore undid, or that a restore ended: an acquisition of
    /// ours that ended before versions went back, at a renewal this process sent (a release undone: found by review,
    /// rv305, answered 409 naming the side-car's own identity), or one lost to a restore, as the restore showed it
    /// (see `restore_undone`), or an older record of it (a second restore: rv297). Not once another process renewed it
    /// under our identity (a client-go co-holder: rv300, rv305, answered 503 for as long as it renewed): that is the
    /// other's hold.
    pub fn is_own_undone_by_restore(&self, current: &Versioned) -> bool {
        let record = &current.record;
        record.holder_identity.as_deref() == Some(self.identity.as_str())
            && (self.restore_undone.iter().any(|(time, token, restored)| {
                same_acquisition(record, time, *token)
                    && record.renew_time.as_ref().map(|t| t.0) <= restored.as_ref().map(|t| t.0)
            }) || (record.renew_time.as_ref().is_some_and(|stamp| self.sent_by_us(stamp))
                && self.undone.iter().any(|(time, token)| same_acquisition(record, time, *token))))
    }

    /// Whether `record` carries the acquisition (identity, time and token) of the lease we hold, or of
    /// the write in flight.
    fn is_current_acquisition(&self, record: &LeaseSpec) -> bool {
        record.holder_identity.as_deref() == Some(self.identity.as_str())
            && (self.held.as_ref().is_some_and(|h| same_acquisition(record, &h.acquire_time, h.fencing_token))
                || self.pending.as_ref().is_some_and(|p| {
                    same_acquisition(record, &p.record.acquire_time, p.record.lease_transitions.unwrap_or(0))
                }))
    }

    /// A live record that is not a write of ours: another process holds the lease.
    fn is_anothers_hold(&self, record: &LeaseSpec) -> bool {
        is_live(record) && !self.is_own_write(record)
    }

    /// Whether one of this process's writes carried `stamp` (answered or not, refused or not).
    fn sent_by_us(&self, stamp: &MicroTime) -> bool {
        self.sent_stamps.contains(stamp) || self.refused_stamps.contains(stamp)
    }

    /// Whether `record` is our own write: the current acquisition, the one held last, or an acquisition
    /// given up unresolved.
    fn is_own_write(&self, record: &LeaseSpec) -> bool {
        self.is_current_acquisition(record)
            || (record.holder_identity.as_deref() == Some(self.identity.as_str())
                && self.previous.iter().chain(&self.strays).any(|(time, token)| same_acquisition(record, time, *token))
                // Not a hold undone (a collision's: found by review, helper-134, a side-car's hold adopted
                // again after its renew deadline was also `previous`, and given back from under the other).
                && !self.undone.iter().any(|(time, token)| same_acquisition(record, time, *token)))
    }

    /// A live record under our identity that is not our own write (and that we do not adopt).
    fn is_foreign_under_our_identity(&self, current: &Versioned) -> bool {
        !self.adoptable(current)
            && current.record.holder_identity.as_deref() == Some(self.identity.as_str())
            && !self.is_own_write(&current.record)
            && !self.undone.iter().any(|(time, token)| same_acquisition(&current.record, time, *token))
    }

    /// When the last renewal of ours counted for `record` was sent, if `record` is a hold of ours that this
    /// process wrote (its `renewTime` one of our stamps): what a client-go elector saw of it, on our own
    /// clock, with no wall clock in between.
    pub fn own_hold_sent(&self, record: &LeaseSpec) -> Option<Instant> {
        let stamp = record.renew_time.as_ref()?;
        (self.is_own_write(record) && self.sent_by_us(stamp)).then_some(self.last_hold_sent).flatten()
    }

    /// Whether this elector (a side-car's) adopts `current` as its own: held under its identity and
    /// marked by a side-car for its token (see [`SIDECAR_ANNOTATION`]), and not a hold of ours that ended
    /// before versions went back (found by review, helper-120: an etcd restore brought back a side-car's
    /// released hold, and it adopted it at once while another pod's client was told it held the lock).
    pub fn adoptable(&self, current: &Versioned) -> bool {
        self.adopt
            && current.record.holder_identity.as_deref() == Some(self.identity.as_str())
            && !self.undone.iter().any(|(time, token)| same_acquisition(&current.record, time, *token))
            && current
                .metadata
                .annotations
                .as_ref()
                .and_then(|annotations| annotations.get(SIDECAR_ANNOTATION))
                .is_some_and(|mark| *mark == side_car_mark(&current.record))
    }

    /// Whether `new` is older than the newest record seen of the same Lease (its uid): no writer lowers a
    /// token (an acquisition takes the next one, a release and a renewal keep it), nor moves an acquisition's
    /// `renewTime` back (mpsync's renewals never do; a client-go holder's only with its clock stepped back,
    /// when waiting longer is all this costs), nor makes a new hold at the token of a release (an acquisition
    /// after a release takes the next one). A Lease made again (another uid) is no past: its tokens start
    /// again (README: deleting a Lease resets them; found by review, rv251: a Lease deleted and made again by
    /// client-go electors was warned of at every write and refused for a lease duration after each).
    fn is_the_past(&self, new: &Versioned) -> bool {
        let Some(latest) = &self.latest else { return false };
        if new.metadata.uid != latest.uid {
            return false;
        }
        let token = new.record.lease_transitions.unwrap_or(0);
        match token.cmp(&latest.token) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Greater => false,
            std::cmp::Ordering::Equal => {
                (latest.released && is_live(&new.record))
                    || (is_live(&new.record)
                        && new.record.acquire_time == latest.acquire_time
                        && new.record.holder_identity == latest.holder
                        && matches!((&new.record.renew_time, &latest.renew_time), (Some(new), Some(seen)) if new.0 < seen.0))
            }
        }
    }

    /// Whether `record`'s token is below the largest one this process has seen: a create of ours that
    /// landed after the lease was deleted under a later holder.
    fn below_token_floor(&self, record: &LeaseSpec) -> bool {
        self.token_floor.is_some_and(|floor| record.lease_transitions.unwrap_or(0) < floor)
    }

    fn is_release(&self, write: &Write) -> bool {
        write.record.holder_identity.as_deref() == Some("")
    }

    /// The time a new write of ours carries (`renewTime`, and `acquireTime` where it sets one): the wall
    /// clock, or one microsecond past the latest time of any write this process sent, and for a renewal
    /// past the stored one, if the clock is not past them (stopped, or stepped back). Found by review:
    /// - a renewal must change the record: an API server answers a write that changes nothing with the
    ///   stored object and the same resourceVersion, and sends no event, so others' expiry clocks would
    ///   run on while ours restarted (a frozen wall clock let a waiter in beside the holder's child);
    /// - no two writes of ours may be alike, or a record left by one would be taken for the other, and
    ///   counted from the other's send (a write that never landed moved the renew deadline).
    ///
    /// Nothing compares these times with a clock for expiry; a foreign record's times are not used, so a
    /// machine whose clock runs ahead does not carry ours along.
    ///
    /// Never past the year 9000 (found by review): a stored time beyond it (a record edited to the last
    /// microsecond a timestamp holds, which the API server accepts; nothing is past that) is no floor, and
    /// a wall clock beyond it reads as that year. So a renewal of such a record goes back in time, still a
    /// change, and our own stamps stay a thousand years of microseconds short of the end: each write's is
    /// past the last one's, whatever was stored. (Before, each renewal rewrote the end of time, unseen,
    /// and a waiter took the lease beside the holder's child; and once a renewal had written the end, no
    /// later stamp could be past it.)
    fn stamp(&self, wall: MicroTime, stored: Option<&MicroTime>) -> MicroTime {
        let ceiling = STAMP_CEILING;
        let wall = if wall.0 > ceiling { MicroTime(ceiling) } else { wall };
        let floor = stored.filter(|stored| stored.0 < ceiling);
        let stamp = [self.last_stamp.as_ref(), floor]
            .into_iter()
            .flatten()
            .filter_map(just_after)
            .fold(wall.clone(), |stamp, floor| if floor.0 > stamp.0 { floor } else { stamp });
        // A random step of 1 to 1000 microseconds keeps two writers' stamps apart. Past the wall clock (a
        // clock stepped back, stopped, behind a stored time), each process's stamps would be the same
        // sequence, one microsecond apart, and a co-holder's renewal that landed would carry the very stamp
        // of ours it beat, taken for ours (refused stamps count as ours: found by review, helper-151). On
        // the wall clock, two processes given one identity whose clocks read alike (one libfaketime
        // FAKETIME) sent the same acquisition; the one answered 409 kept it as its own, unresolved, and
        // took the other's record for it, beside the other's child (found by review, helper-176). Apart
        // but for one time in a thousand: the README says so.
        let step = SignedDuration::from_micros((1 + crate::retry::random_u64() % 1000) as i64);
        let stamp =
            stamp.0.checked_add(step).ok().filter(|stepped| *stepped <= ceiling).map(MicroTime).unwrap_or(stamp);
        // Past the ceiling (our own stamps there, a clock there), a record edited to be just our next stamp
        // (found by review: this compared with the floor, which can never equal it).
        match stored {
            Some(stored) if *stored == stamp => just_after(&stamp).unwrap_or(stamp),
            _ => stamp,
        }
    }

    fn our_duration_seconds(&self) -> i32 {
        i32::try_from(self.timing.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// A new acquisition: ours, with the next fencing token; after a deletion under another holder, not
    /// before that holder's observed expiry.
    fn acquisition(&self, base: Option<&Versioned>, now: Now) -> Action {
        if self.lapsed_unread {
            return Action::Read;
        }
        if let Some(until) = self.protected_until()
            && now.instant < until
        {
            return Action::WaitUntil(until);
        }
        // Created leases start at 0, as client-go creates them, unless this process saw an earlier one
        // (deleted since): then they continue from its token. Every later acquisition adds one.
        let seen = base.map(|b| b.record.lease_transitions.unwrap_or(0)).max(self.token_floor).map(|t| t.max(0));
        let transitions = match seen {
            None => 0,
            Some(last) => match last.checked_add(1) {
                Some(next) => next,
                None => return Action::Refuse(Refusal::TokenExhausted { transitions: last }),
            },
        };
        let mut record = base.map(|b| b.record.clone()).unwrap_or_default();
        record.holder_identity = Some(self.identity.clone());
        record.lease_duration_seconds = Some(self.our_duration_seconds());
        let stamp = self.stamp(now.wall, None);
        record.acquire_time = Some(stamp.clone());
        record.renew_time = Some(stamp);
        record.lease_transitions = Some(transitions);
        let mut write = match base {
            Some(base) => Write::replace(base, record),
            None => Write::create(record),
        };
        let annotations = write.metadata.annotations.get_or_insert_with(Default::default);
        // Advisory only: never what makes a record too large to write.
        let others: usize =
            annotations.iter().filter(|(k, _)| *k != CONTENDERS_ANNOTATION).map(|(k, v)| k.len() + v.len()).sum();
        if others <= MAX_FOREIGN_ANNOTATIONS {
            annotations.insert(CONTENDERS_ANNOTATION.to_string(), format!("{:.1}@{transitions}", self.contenders));
        } else {
            annotations.remove(CONTENDERS_ANNOTATION);
        }
        Action::Write(self.marked(write))
    }

    /// A renewal of `current`. Its `renewTime` moves to a later whole second once a second (of the monotonic
    /// clock) at least, even when the wall clock is not past the stored time (stopped, stepped back, behind a
    /// time edited into the future), where `stamp` alone moves it by microseconds: client-go's elector
    /// compares records with their times at whole seconds (its `LeaderElectionRecord`, `metav1.Time`), and
    /// takes a lease it has seen unchanged for `leaseDurationSeconds` (found by review, rv238: a holder whose
    /// clock stood still, or was stepped back an hour, renewed unseen by client-go, which took the lease
    /// beside the holder's child); and only a renewal that moves it counts (`Held::deadline`). Never faster
    /// than the real time, so the stamps never run away from it; a clock stepped back catches them up when
    /// renewals are more than a second apart. Past `STAMP_CEILING` too, into the thousand years kept past it
    /// (found by review, rv239: stopped at the ceiling, a record edited to its last second was renewed unseen
    /// by client-go again). The first renewal of a process that has sent no stamp (the side-car adopting a
    /// record at its start) moves too: it is counted from its own send, so it must be a change client-go
    /// sees (found by review, rv243: an adoption in the adopted record's second was counted from its send,
    /// while client-go counted from that record's, and a client was told 200 after client-go took the lock).
    fn renewal(&self, current: &Versioned, now: Now) -> Write {
        let mut record = current.record.clone();
        record.holder_identity = Some(self.identity.clone());
        record.lease_duration_seconds = Some(self.our_duration_seconds());
        let stored = record.renew_time.clone();
        let wall_second = now.wall.0.as_second();
        let mut stamp = self.stamp(now.wall, stored.as_ref());
        let second = stamp.0.as_second();
        let every = Duration::from_secs(1);
        let stored_second = stored.as_ref().map(|stored| stored.0.as_second());
        // A stored second other than the one last counted (a write of ours that landed uncounted: committed,
        // then answered 409 or never; a hand edit) is one client-go has seen: a renewal in it would be no
        // change to client-go, yet counted (found by review, rv241).
        // With nothing held (an adoption, also after a hold lapsed), any stored second is one client-go has seen
        // (found by review, rv246: a side-car's adoption again in its lapsed hold's second was counted from its
        // send).
        let uncounted = self.held.as_ref().is_none_or(|held| held.renew_second != stored_second);
        // With nothing held, not past the wall clock's second (or our own last stamp's) by more than one: else
        // side-cars restarted again and again within a second each took the stamps a second further ahead of
        // the real time (found by review, rv248: four seconds, and a restarted side-car's answers, bounded by
        // the record's age, came after a client-go elector took the lock). Such an adoption, left in the
        // stored second, counts from a second before its send (see `applied`).
        let bounded = self.held.is_some()
            || second <= wall_second.max(self.last_stamp.as_ref().map_or(i64::MIN, |t| t.0.as_second()));
        if bounded
            && stored_second.is_some_and(|stored| stored >= second)
            && (uncounted
                || self.stamp_second.is_none_or(|(last, since)| {
                    last != second || now.instant.checked_duration_since(since).is_some_and(|passed| passed >= every)
                }))
        {
            let step = SignedDuration::from_micros((1 + crate::retry::random_u64() % 1000) as i64);
            if let Some(next) = second
                .checked_add(1)
                .and_then(|next| k8s_openapi::jiff::Timestamp::from_second(next).ok())
                .and_then(|next| next.checked_add(step).ok())
            {
                stamp = MicroTime(next);
            }
        }
        record.renew_time = Some(stamp);
        self.marked(Write::replace(current, record))
    }

    /// Taking over a record under our own identity as it stands (the side-car only): its acquisition and
    /// token are kept, as a renewal keeps them.
    fn adoption(&self, current: &Versioned, now: Now) -> Write {
        self.renewal(current, now)
    }
}

/// What a side-car writes into `SIDECAR_ANNOTATION` for `record`: its token and its `renewTime`.
fn side_car_mark(record: &LeaseSpec) -> String {
    let renewed = record.renew_time.as_ref().map_or(0, |time| time.0.as_microsecond());
    format!("{}@{renewed}", record.lease_transitions.unwrap_or(0))
}

/// The latest time a write of ours is stamped with, but for the microseconds of writes past it: the
/// year 9000, a thousand years of microseconds short of the latest a timestamp holds.
const STAMP_CEILING: k8s_openapi::jiff::Timestamp = k8s_openapi::jiff::Timestamp::constant(221_845_392_000, 0);

/// One microsecond past `time`, on a whole microsecond (none at the end of time): a stored time with
/// nanoseconds (a record of `--backend file` edited by hand) is no floor with nanoseconds, or every later
/// stamp of ours would carry them, and a record written with it is stored without them (MicroTime keeps
/// microseconds), so that no write of ours would ever be seen to land (found by review, helper-134: the
/// renewal on such a record was taken for another process's, an identity collision).
fn just_after(time: &MicroTime) -> Option<MicroTime> {
    let whole = k8s_openapi::jiff::Timestamp::from_microsecond(time.0.as_microsecond()).ok()?;
    whole.checked_add(SignedDuration::from_micros(1)).ok().map(MicroTime)
}

/// Whether a stored record is exactly a write we sent: the fields we set all match.
fn same_write(sent: &LeaseSpec, stored: &LeaseSpec) -> bool {
    sent.holder_identity == stored.holder_identity
        && sent.acquire_time == stored.acquire_time
        && sent.renew_time == stored.renew_time
        && sent.lease_transitions == stored.lease_transitions
}

fn same_acquisition(record: &LeaseSpec, acquire_time: &Option<MicroTime>, token: i32) -> bool {
    record.acquire_time == *acquire_time && record.lease_transitions.unwrap_or(0) == token
}

/// A moving average of delays that weighs a new sample by a quarter; the first sample alone.
fn moving_average(average: Option<Duration>, sample: Duration) -> Duration {
    average.map_or(sample, |average| (average * 3 + sample) / 4)
}

/// How much of the first window a process that believes in `contenders` leaves to others: none alone (or
/// for a writer that does not say), all of it from two on, in between below.
fn first_window_share(contenders: Option<f64>) -> f64 {
    contenders.filter(|c| c.is_finite()).map_or(0.0, |c| (c - 1.0).clamp(0.0, 1.0))
}

/// The belief in contention that the acquisition in this record was written with, if it says so for
/// its own token (see [`CONTENDERS_ANNOTATION`]).
fn recorded_contenders(current: &Versioned) -> Option<f64> {
    let value = current.metadata.annotations.as_ref()?.get(CONTENDERS_ANNOTATION)?;
    let (contenders, token) = value.split_once('@')?;
    (token.parse::<i32>().ok()? == current.record.lease_transitions.unwrap_or(0)).then_some(())?;
    contenders.parse().ok()
}

/// A record that names a holder.
fn is_live(record: &LeaseSpec) -> bool {
    !record.holder_identity.as_deref().unwrap_or("").is_empty()
}

/// Whether `new` is `old`, a live hold, edited by hand: the same acquisition (acquireTime, token), with
/// the holder cleared, or the duration made shorter. No holder writes the first: a release and an
/// acquisition write a new acquireTime. A holder's renewal may write the second (its own duration back
/// after a hand edit that lengthened it; a client-go holder started again with a shorter one), but a
/// waiter that missed renewals cannot tell it from an edit (found by review, helper-76: the first
/// version trusted a new renewTime, and a list after unseen renewals let a waiter in beside the child):
/// it is counted as one, until the longer expiry, or the holder's release.
///
/// A hold made free in any other shape than a release's (see `is_release`) is an edit too, whatever became
/// of its acquireTime and token (found by review, helper-163: `kubectl patch` removing acquireTime with the
/// holder, or `kubectl replace` of a bare manifest, let a waiter in at once beside the holder's child).
///
/// So is a release with a lower token than the hold's: a holder's release keeps its token, so this one is an
/// older record put back, by hand or by an etcd restore whose lower versions a write since hid (found by the
/// property model: a restore to a release before the hold, then a hand edit, showed that release at the very
/// version the hold had been seen at, and a waiter took it at once beside the holder's child).
fn is_hand_edit(old: &LeaseSpec, new: &LeaseSpec) -> bool {
    let shorter = |old: &LeaseSpec, new: &LeaseSpec| match (old.lease_duration_seconds, new.lease_duration_seconds) {
        (Some(old), Some(new)) => new < old,
        (None, Some(_)) | (Some(_), None) => true,
        (None, None) => false,
    };
    let same_acquisition = new.acquire_time == old.acquire_time && new.lease_transitions == old.lease_transitions;
    let token_went_back = new.lease_transitions.unwrap_or(0) < old.lease_transitions.unwrap_or(0);
    (same_acquisition && (!is_live(new) || shorter(old, new)))
        || (!is_live(new) && (!is_release(new) || token_went_back))
}

/// Whether `record` is a release as mpsync and client-go (since 1.20) write it: no holder, a new acquireTime
/// equal to its renewTime, and a duration of 1 s.
pub(crate) fn is_release(record: &LeaseSpec) -> bool {
    !is_live(record)
        && record.acquire_time.is_some()
        && record.acquire_time == record.renew_time
        && record.lease_duration_seconds == Some(1)
}

/// What to do about a semaphore's marker: the Lease NAME itself, never held, annotated with the number of
/// slots. Every process of a semaphore settles it (create, or check) before it acquires any slot, so two
/// processes that disagree on the count can never both acquire: whichever writes the marker first fixes
/// the count, and the compare-and-swap makes the other read it and refuse.
#[derive(Clone, Debug, PartialEq)]
pub enum Marker {
    /// The marker says `slots`: go ahead.
    Ready,
    /// Write this (create the marker, or mark a free plain lease of that name), then look again.
    Write(Write),
    /// The count differs, or the name is a plain lease that is held: `NotASlot` until it is waited out
    /// (see below).
    Refuse(Refusal),
}

/// `waited_out`: a plain lease's live record of that name that this process saw unchanged for its
/// holder's duration, on its own clock (as any holder is waited out): the record is free now, and is
/// marked (found by review, helper-162: a dead holder's record was refused for ever). Any other live
/// record of a plain lease is `NotASlot`: the caller waits it out, and refuses if it changes meanwhile.
pub fn semaphore_marker(current: Option<&Versioned>, slots: u32, waited_out: Option<&LeaseSpec>) -> Marker {
    let mark = |mut write: Write| {
        write
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(SLOTS_ANNOTATION.to_string(), slots.to_string());
        Marker::Write(write)
    };
    let Some(current) = current else {
        return mark(Write::create(LeaseSpec::default()));
    };
    match current.metadata.annotations.as_ref().and_then(|a| a.get(SLOTS_ANNOTATION)) {
        Some(recorded) if *recorded != slots.to_string() => {
            Marker::Refuse(Refusal::SlotCountMismatch { recorded: recorded.clone(), ours: slots })
        }
        // The marker is never held: a live record of that name, even one with our count, is a plain lease's
        // (found by review, helper-174: the file backend puts back a deleted live record when the marker is
        // created over it, with the create's count, and the semaphore took that for its marker, beside the
        // plain holder's child, which renewed on).
        _ if is_live(&current.record) && waited_out != Some(&current.record) => {
            Marker::Refuse(Refusal::NotASlot { holder: current.record.holder_identity.clone().unwrap_or_default() })
        }
        Some(_) if !is_live(&current.record) => Marker::Ready,
        _ => mark(Write::replace(current, LeaseSpec { holder_identity: None, ..current.record.clone() })),
    }
}

/// A holder's identity as text shows it: as it is, or quoted with escapes where it holds control
/// characters, bidi controls or invisible ones (a record written by anyone may: a newline would forge a
/// line, an escape sequence move the terminal, a right-to-left override or a zero-width space show
/// another name; found by review).
pub fn shown(identity: &str) -> String {
    use crate::validate::is_unshowable;
    if !identity.chars().any(is_unshowable) {
        return identity.to_string();
    }
    let mut text = String::from("\"");
    for c in identity.chars() {
        match c {
            // `{:?}` prints some blanks (U+3164, U+2800) as they are.
            c if is_unshowable(c) && !matches!(c, '\n' | '\r' | '\t' | '\0') => {
                text.push_str(&format!("\\u{{{:x}}}", u32::from(c)))
            }
            '\'' => text.push(c),
            c => text.extend(c.escape_debug()),
        }
    }
    text.push('"');
    text
}

/// The slot count a record's `mpsync.io/slots` annotation gives, if it is a semaphore's (more than one).
pub fn slot_count(lease: &Versioned) -> Option<u32> {
    let value = lease.metadata.annotations.as_ref()?.get(SLOTS_ANNOTATION)?;
    value.parse::<u32>().ok().filter(|n| *n > 1)
}

/// The semaphore `name` would be a slot of, and which: `P-i` split at its last `-`, with `i` written as
/// slot names write it (`pool-01` is no slot). Whether it is one depends on the records above it: see
/// `engine::semaphore_of`.
pub fn slot_parent(name: &str) -> Option<(&str, usize)> {
    let (semaphore, index) = name.rsplit_once('-')?;
    let i = index.parse::<usize>().ok().filter(|i| index == i.to_string())?;
    (!semaphore.is_empty()).then_some((semaphore, i))
}

/// When a record's holder expires by the record's own timestamps (`renewTime + leaseDurationSeconds`, on
/// the writer's clock): `None` if it names no holder, no renewal or no positive duration.
pub fn expiry(record: &LeaseSpec) -> Option<k8s_openapi::jiff::Timestamp> {
    let renewed = record.renew_time.as_ref()?.0;
    let seconds = record.lease_duration_seconds.filter(|s| *s > 0)?;
    if !is_live(record) {
        return None;
    }
    renewed.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(i64::from(seconds))).ok()
}

/// Whether a record is held at wall-clock time `now`, by its own timestamps: it names a holder whose
/// expiry has not passed (or cannot be told). The one definition `status`, `observe`, the listing and the
/// file backend share; an elector never decides by it (it uses its own monotonic observations).
pub fn held_at(record: &LeaseSpec, now: k8s_openapi::jiff::Timestamp) -> bool {
    is_live(record) && expiry(record).is_none_or(|expires| expires > now)
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

/// Say that a read answered an older resourceVersion than one known before it was sent (see
/// `Elector::versions_went_back`): an etcd restored from a snapshot, or (the file backend) a lock directory
/// whose files were removed or put back.
pub(crate) fn warn_versions_went_back(lease: &str) {
    tracing::warn!(
        lease = %lease,
        "the lease's resourceVersion went back (etcd restored, or the lock directory reset?); taking the record read as new"
    );
}

/// Whether resource version `a` is older than `b`. Resource versions are opaque to clients, but both
/// kube-apiserver (etcd revisions) and the file backend use increasing integers; anything else is
/// never called older.
pub fn is_older(a: &str, b: &str) -> bool {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(a), Ok(b)) => a < b,
        _ => false,
    }
}
#[cfg(test)]
#[path = "lease_properties.rs"]
mod properties;

#[cfg(test)]
#[path = "lease_adversary.rs"]
mod adversary;

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

    fn at(t0: Instant, seconds: f64) -> Instant {
        t0 + Duration::from_secs_f64(seconds)
    }

    fn now(t0: Instant, seconds: f64) -> Now {
        Now::at(at(t0, seconds), wall(seconds as i64))
    }

    /// A record held by `holder`, or, with an empty holder, a release of it (which writes a new
    /// acquireTime, as mpsync and client-go write it: a holder cleared without one is an edit by hand).
    fn record(holder: Option<&str>, duration: Option<i32>, transitions: Option<i32>) -> LeaseSpec {
        let released = holder == Some("");
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: duration,
            lease_transitions: transitions,
            acquire_time: Some(wall(if released { -40 } else { -100 })),
            renew_time: Some(wall(if released { -40 } else { -50 })),
            ..LeaseSpec::default()
        }
    }

    fn versioned(rv: u64, record: LeaseSpec) -> Versioned {
        Versioned::new(rv.to_string(), record)
    }

    /// Send `write` at `sent` and have it applied as version `rv`, answered at `answered`.
    fn apply(elector: &mut Elector, write: &Write, rv: u64, sent: Instant, answered: Instant) {
        let ticket = elector.write_sent(write, sent);
        elector.write_result(ticket, WriteResult::Applied(versioned(rv, write.record.clone())), answered);
    }

    /// `next` at `now`; if it reads first (another's hold expired by what was seen: see `Elector::next`),
    /// the read shows the record unchanged, and `next` again.
    fn after_a_read(elector: &mut Elector, now: Now) -> Action {
        match elector.next(now.clone()) {
            Action::Read => {
                let current = elector.current().cloned();
                elector.observe(current, now.instant);
                elector.next(now)
            }
            other => other,
        }
    }

    fn expect_write(action: Action) -> Write {
        match action {
            Action::Write(write) => write,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    /// Acquire `me` from a free record at t0 and return the elector holding it (record version 2).
    fn holding(t0: Instant) -> Elector {
        let mut elector = Elector::new("me", TIMING);
        elector.observe(Some(versioned(1, record(Some(""), Some(1), Some(3)))), t0);
        let write = expect_write(elector.next(now(t0, 0.0)));
        apply(&mut elector, &write, 2, t0, t0);
        assert!(elector.held().is_some());
        elector
    }

    /// Found by review (helper-131): another process under our identity (a client-go elector, whose
    /// `IsLeader()` is true for any record under its identity) renews our hold as its own, keeping
    /// acquireTime and leaseTransitions. A second renewTime we never wrote is a collision: the hold is
    /// lost, the record is never given back nor taken again, also when a renewal of ours on the wire at
    /// that moment lands afterwards; it is waited out as another's hold.
    #[test]
    fn renewals_under_our_identity_that_we_never_sent_are_a_collision() {
        let t0 = Instant::now();
        let mut a = holding(t0);
        let mut rv = 2;
        let mut foreign = |a: &mut Elector, second: f64| {
            let mut co = a.current().unwrap().clone();
            co.record.renew_time = Some(wall(second as i64 + 1000));
            co.record.lease_duration_seconds = Some(60);
            rv += 1;
            co.resource_version = rv.to_string();
            a.observe(Some(co.clone()), at(t0, second));
            co
        };
        foreign(&mut a, 0.5);
        assert!(a.held().is_some(), "a single one may be an edit by hand");
        let renewal = expect_write(a.next(now(t0, 2.0)));
        let ticket = a.write_sent(&renewal, at(t0, 2.0));
        let co = foreign(&mut a, 2.1);
        assert_eq!(a.next(now(t0, 2.2)), Action::Lost(LossReason::Collision { identity: "me".into() }));
        // Ours lands after all (on a version between): what is stored afterwards is still the other's.
        a.write_result(ticket, WriteResult::Applied(versioned(99, renewal.record.clone())), at(t0, 2.3));
        a.observe(Some(versioned(100, co.record.clone())), at(t0, 2.4));
        assert!(a.release(now(t0, 2.5)).is_none(), "the other's record is never written");
        assert!(a.held().is_none());
        // `elect` campaigns again once its child is stopped.
        a.forget_loss();
        match after_a_read(&mut a, now(t0, 3.0)) {
            Action::WaitUntil(until) => assert!(until >= at(t0, 2.4) + Duration::from_secs(60)),
            other => panic!("expected to wait out the other's hold, got {other:?}"),
        }
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
        let write = expect_write(elector.next(now(t0, 0.0)));
        assert!(write.is_create());
        let record = write.record;
        assert_eq!(record.holder_identity.as_deref(), Some("me"));
        assert_eq!(record.lease_duration_seconds, Some(15));
        assert_eq!(record.lease_transitions, Some(0));
        // A random step past the wall clock (found by review, helper-176: two processes of one identity
        // whose clocks read alike sent the same acquisition).
        assert_stamped(record.acquire_time.as_ref(), wall(0));
        assert_eq!(record.renew_time, record.acquire_time);
    }

    /// `time` is a stamp of ours made at `wall`: 1 to 1000 microseconds past it.
    #[track_caller]
    fn assert_stamped(time: Option<&MicroTime>, wall: MicroTime) {
        let step = time.expect("a time").0.duration_since(wall.0);
        assert!(
            step >= SignedDuration::from_micros(1) && step <= SignedDuration::from_millis(1),
            "{time:?} at {wall:?}"
        );
    }

    #[test]
    fn empty_holder_is_free_at_once_and_increments_transitions() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        elector.observe(Some(versioned(7, record(Some(""), Some(1), Some(4)))), t0);
        let write = expect_write(elector.next(now(t0, 0.0)));
        assert_eq!(write.resource_version(), Some("7"));
        assert_eq!(write.record.holder_identity.as_deref(), Some("me"));
        assert_eq!(write.record.lease_transitions, Some(5));
    }

    #[test]
    fn missing_holder_is_free_at_once() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        elector.observe(Some(versioned(7, record(None, None, None))), t0);
        assert_eq!(expect_write(elector.next(now(t0, 0.0))).record.lease_transitions, Some(1));
    }

    #[test]
    fn a_write_carries_the_metadata_it_read() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        let mut read = versioned(7, record(Some(""), Some(1), Some(4)));
        read.metadata.labels = Some([("team".to_string(), "batch".to_string())].into());
        read.metadata.uid = Some("u-1".into());
        elector.observe(Some(read), t0);
        let write = expect_write(elector.next(now(t0, 0.0)));
        assert_eq!(write.metadata.uid.as_deref(), Some("u-1"));
        assert_eq!(write.metadata.labels.as_ref().unwrap()["team"], "batch");
        assert_eq!(write.metadata.resource_version.as_deref(), Some("7"));
    }

    #[test]
    fn held_lease_seen_first_time_is_waited_out_for_the_holders_duration() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        // The holder's own duration (5s) counts, not ours (15s).
        elector.observe(Some(versioned(3, record(Some("other"), Some(5), Some(0)))), t0);
        assert_eq!(elector.next(now(t0, 0.0)), Action::WaitUntil(at(t0, 5.0)));
        assert_eq!(elector.next(now(t0, 4.9)), Action::WaitUntil(at(t0, 5.0)));
        assert!(matches!(after_a_read(&mut elector, now(t0, 5.0)), Action::Write(_)));
    }

    #[test]
    fn renewal_by_holder_restarts_the_expiry_clock() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        elector.observe(Some(versioned(3, record(Some("other"), Some(5), Some(0)))), t0);
        let mut renewed = record(Some("other"), Some(5), Some(0));
        renewed.renew_time = Some(wall(3));
        elector.observe(Some(versioned(4, renewed.clone())), at(t0, 3.0));
        assert_eq!(elector.next(now(t0, 5.0)), Action::WaitUntil(at(t0, 8.0)));
        // The same record again (a poll, a re-list) does not restart it.
        elector.observe(Some(versioned(4, renewed)), at(t0, 6.0));
        assert!(matches!(after_a_read(&mut elector, now(t0, 8.0)), Action::Write(_)));
    }

    #[test]
    fn remote_timestamps_are_never_compared_with_the_local_clock() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        // A renewTime far in the past (or future) changes nothing: only what we observed counts.
        let mut old = record(Some("other"), Some(5), Some(0));
        old.renew_time = Some(wall(-1_000_000));
        elector.observe(Some(versioned(3, old)), t0);
        assert_eq!(elector.next(now(t0, 1.0)), Action::WaitUntil(at(t0, 5.0)));
        let mut future = record(Some("other"), Some(5), Some(0));
        future.renew_time = Some(MicroTime(Timestamp::from_second(32_503_680_000).unwrap()));
        elector.observe(Some(versioned(4, future)), at(t0, 1.0));
        assert_eq!(elector.next(now(t0, 2.0)), Action::WaitUntil(at(t0, 6.0)));
        assert!(matches!(after_a_read(&mut elector, now(t0, 6.0)), Action::Write(_)));
    }

    /// A hold edited by hand (holder cleared, or duration shortened, acquireTime kept) counts until the
    /// expiry it had: from its last renewal seen, while the edit carries that renewal's time.
    #[test]
    fn a_hold_edited_by_hand_counts_until_the_expiry_it_had() {
        // Made free, or shortened, by hand: counted until the expiry the hold had. Made free in another
        // shape than a release's (found by review, helper-163): the holder and its acquireTime removed (its
        // renewal time kept: from that renewal), the spec replaced by a bare manifest's, or a release as
        // client-go before 1.20 wrote it (no times, no duration): from when it was seen, as its renewal
        // time is gone.
        type Edit = fn(&mut LeaseSpec);
        let edits: [(Edit, f64); 5] = [
            (|r| r.holder_identity = Some(String::new()), 5.0),
            (|r| r.lease_duration_seconds = Some(1), 5.0),
            (|r| (r.holder_identity, r.acquire_time) = (None, None), 5.0),
            (|r| *r = LeaseSpec { lease_duration_seconds: Some(15), ..LeaseSpec::default() }, 6.0),
            (|r| *r = LeaseSpec { lease_transitions: r.lease_transitions, ..LeaseSpec::default() }, 6.0),
        ];
        for (edit, until) in edits {
            let t0 = Instant::now();
            let mut elector = Elector::new("me", TIMING);
            let held = record(Some("other"), Some(5), Some(0));
            elector.observe(Some(versioned(3, held.clone())), t0);
            let mut edited = held.clone();
            edit(&mut edited);
            elector.observe_event(WatchUpdate::Present(versioned(4, edited)), at(t0, 1.0));
            assert_eq!(after_a_read(&mut elector, now(t0, 2.0)), Action::WaitUntil(at(t0, until)));
            assert!(matches!(after_a_read(&mut elector, now(t0, until)), Action::Write(_)));
            // Its holder's release ends it at once (found by review: the hold was counted past it).
            let mut released = record(Some(""), Some(1), Some(0));
            released.acquire_time = Some(wall(-20));
            released.renew_time = released.acquire_time.clone();
            elector.observe_event(WatchUpdate::Present(versioned(5, released)), at(t0, 1.5));
            assert!(matches!(elector.next(now(t0, 1.5)), Action::Write(_)));
        }
        // Cleared, and seen with a renewal not seen before: from when the edit was seen.
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        let held = record(Some("other"), Some(5), Some(0));
        elector.observe(Some(versioned(3, held.clone())), t0);
        let mut edited = held.clone();
        edited.holder_identity = Some(String::new());
        edited.renew_time = Some(wall(-10));
        elector.observe(Some(versioned(6, edited)), at(t0, 1.0));
        assert_eq!(elector.next(now(t0, 2.0)), Action::WaitUntil(at(t0, 6.0)));
        // A shorter duration with a new renewTime may be a renewal the waiter saw after others it missed,
        // then edited (found by review): the longer duration counts, from when it was seen.
        let mut elector = Elector::new("me", TIMING);
        elector.observe(Some(versioned(3, held.clone())), t0);
        let mut renewed = held;
        renewed.lease_duration_seconds = Some(1);
        renewed.renew_time = Some(wall(-10));
        elector.observe_event(WatchUpdate::Present(versioned(4, renewed)), at(t0, 1.0));
        assert_eq!(after_a_read(&mut elector, now(t0, 2.0)), Action::WaitUntil(at(t0, 6.0)));
    }

    /// Found by review (rv249): a live record whose token is below one seen (etcd restored, the versions since
    /// brought past the ones known by other writers and one write to the Lease; or a saved record put back) is
    /// the past: the hold seen before is waited out for a lease duration from then (15 s here), not the
    /// restored record's own 1 s.
    #[test]
    fn a_live_record_whose_token_went_back_is_waited_out_as_the_past() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        elector.set_watching(true);
        elector.observe(Some(versioned(3, record(Some("holder"), Some(10), Some(2)))), t0);
        elector.observe_event(WatchUpdate::Present(versioned(9, record(Some("short"), Some(1), Some(1)))), at(t0, 1.0));
        assert_eq!(after_a_read(&mut elector, now(t0, 3.0)), Action::WaitUntil(at(t0, 16.0)));
        assert!(matches!(after_a_read(&mut elector, now(t0, 16.0)), Action::Write(_)));
    }

    /// Found by review (rv249): a hold of ours that ended, another's hold (a higher token) seen since, and then
    /// our old record again at a newer version (a restore brought past the versions known): not ours to take
    /// again at once, beside the other holder's child; waited out as the past.
    #[test]
    fn our_old_hold_shown_again_below_a_token_seen_is_not_taken_again_at_once() {
        let t0 = Instant::now();
        let mut elector = holding(t0);
        let ours = elector.current().expect("held").clone();
        elector.lose(LossReason::RenewDeadline);
        elector.forget_loss();
        let token = ours.record.lease_transitions.unwrap_or(0);
        let other = record(Some("other"), Some(15), Some(token + 1));
        elector.observe_event(WatchUpdate::Present(versioned(5, other)), at(t0, 1.0));
        elector.observe_event(WatchUpdate::Present(versioned(9, ours.record.clone())), at(t0, 2.0));
        assert!(!matches!(after_a_read(&mut elector, now(t0, 2.0)), Action::Write(_)), "taken again at once");
        assert!(!matches!(after_a_read(&mut elector, now(t0, 16.9)), Action::Write(_)), "within a lease duration");
    }

    /// Found by review (helper-185): a hold made free by hand with an older record put back (its token
    /// lowered), then taken by a newcomer at the hold's token, and released by it: that release is not the
    /// edited hold's own, and the hold still counts. (Since rv249, a token gone back is waited out as etcd's
    /// past: a lease duration from when it was seen, longer here than the hold's own expiry.)
    #[test]
    fn a_newcomers_release_at_the_edited_holds_token_does_not_end_its_wait() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        let held = record(Some("other"), Some(5), Some(1));
        elector.observe(Some(versioned(3, held.clone())), t0);
        let mut edited = held;
        (edited.holder_identity, edited.lease_transitions) = (Some(String::new()), Some(0));
        elector.observe_event(WatchUpdate::Present(versioned(4, edited)), at(t0, 1.0));
        let mut newcomer = record(Some("q"), Some(5), Some(1));
        newcomer.acquire_time = Some(wall(-5));
        newcomer.renew_time = newcomer.acquire_time.clone();
        elector.observe_event(WatchUpdate::Present(versioned(5, newcomer)), at(t0, 1.2));
        let mut released = record(Some(""), Some(1), Some(1));
        released.acquire_time = Some(wall(-4));
        released.renew_time = released.acquire_time.clone();
        elector.observe_event(WatchUpdate::Present(versioned(6, released)), at(t0, 1.5));
        assert_eq!(elector.next(now(t0, 1.5)), Action::WaitUntil(at(t0, 16.0)), "the hold is waited out");
        assert!(matches!(after_a_read(&mut elector, now(t0, 16.0)), Action::Write(_)));
    }

    /// A Lease deleted and created again (another uid) while another held it, seen only in a read: the
    /// hold counts a full duration from then.
    #[test]
    fn a_lease_made_again_under_a_hold_counts_as_deleted() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        let mut held = versioned(3, record(Some("other"), Some(5), Some(0)));
        held.metadata.uid = Some("first".into());
        elector.observe(Some(held), t0);
        let mut again = versioned(9, record(Some(""), Some(1), Some(0)));
        again.metadata.uid = Some("second".into());
        elector.observe(Some(again), at(t0, 1.0));
        let full = TIMING.lease_duration.max(Duration::from_secs(5));
        assert_eq!(elector.next(now(t0, 2.0)), Action::WaitUntil(at(t0, 1.0) + full));
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
        assert_eq!(elector.next(now(t0, 0.0)), Action::WaitUntil(at(t0, 15.0)));
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
        let acquire = expect_write(elector.next(now(t0, 0.0)));
        assert_eq!(acquire.record.strategy.as_deref(), Some("OldestEmulationVersion"));
        assert_eq!(acquire.record.preferred_holder.as_deref(), Some("someone"));
        apply(&mut elector, &acquire, 6, t0, t0);
        let renew = expect_write(elector.next(now(t0, 2.0)));
        assert_eq!(renew.record.strategy.as_deref(), Some("OldestEmulationVersion"));
        let release = elector.release(now(t0, 3.0)).unwrap();
        assert_eq!(release.record.preferred_holder.as_deref(), Some("someone"));
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
        let mut elector = holding(t0);
        assert_eq!(elector.next(now(t0, 1.0)), Action::WaitUntil(at(t0, 2.0)));
        let write = expect_write(elector.next(now(t0, 2.0)));
        assert_eq!(write.resource_version(), Some("2"));
        assert_stamped(write.record.renew_time.as_ref(), wall(2));
        assert_stamped(write.record.acquire_time.as_ref(), wall(0)); // a renewal keeps acquireTime
        assert_eq!(write.record.lease_transitions, Some(4), "a renewal keeps the token");
    }

    #[test]
    fn renew_deadline_counts_from_the_send_of_the_last_success() {
        let t0 = Instant::now();
        let mut elector = holding(t0);
        let renew = expect_write(elector.next(now(t0, 2.0)));
        // Sent at 2s, answered (slowly) at 6s: the deadline counts from 2s.
        apply(&mut elector, &renew, 3, at(t0, 2.0), at(t0, 6.0));
        assert_eq!(elector.held().unwrap().last_renew_sent, at(t0, 2.0));
        assert!(!matches!(elector.next(now(t0, 11.9)), Action::Lost(_)));
        assert_eq!(elector.next(now(t0, 12.0)), Action::Lost(LossReason::RenewDeadline));
    }

    /// Found by review: with the wall clock stopped (or stepped back), a renewal that copied it would
    /// write the record already stored, which the API server answers without a change, a new version or
    /// an event, while others' expiry clocks run on. Every renewal's `renewTime` is past the stored one.
    #[test]
    fn a_renewal_changes_the_record_even_when_the_wall_clock_stands_still() {
        let t0 = Instant::now();
        let mut elector = holding(t0);
        let mut stored = elector.current().unwrap().record.renew_time.clone().unwrap();
        for (rv, second) in [(3, 2.0), (4, 4.0), (5, 6.0)] {
            // The wall clock still reads what the acquisition wrote.
            let renew = expect_write(elector.next(Now::at(at(t0, second), wall(0))));
            let renewed = renew.record.renew_time.clone().unwrap();
            assert!(renewed.0 > stored.0, "renewTime {renewed:?} is not past the stored {stored:?}");
            apply(&mut elector, &renew, rv, at(t0, second), at(t0, second));
            assert_eq!(elector.held().unwrap().last_renew_sent, at(t0, second));
            stored = renewed;
        }
        // A clock stepped back an hour: still past the stored one.
        let renew = expect_write(elector.next(Now::at(at(t0, 8.0), wall(-3600))));
        assert!(renew.record.renew_time.unwrap().0 > stored.0);
    }

    /// Found by review (rv238): client-go's elector compares records with their times at whole seconds, and
    /// takes a lease it has seen unchanged for its duration. With the wall clock stopped (or stepped back an
    /// hour), renewals moved `renewTime` by microseconds only, and the second it compares never changed. Now
    /// it changes once a second at least, and not faster: renewals 2 s apart each move it by a second, and a
    /// clock stepped back catches the stamps up.
    #[test]
    fn a_renewal_moves_the_whole_second_client_go_compares_even_when_the_wall_clock_stands_still() {
        let t0 = Instant::now();
        let mut elector = holding(t0);
        let first = elector.current().unwrap().record.renew_time.clone().unwrap().0.as_second();
        let mut changed_at = 0.0;
        let mut last = first;
        for (rv, second) in (3..20).zip((1..).map(|n| n as f64 * 2.0)) {
            let renew = expect_write(elector.next(Now::at(at(t0, second), wall(0))));
            let renewed = renew.record.renew_time.clone().unwrap().0.as_second();
            if renewed != last {
                (changed_at, last) = (second, renewed);
            }
            // Renewals 2 s apart: each moves it.
            assert!(second - changed_at <= 0.0, "the whole second unchanged from {changed_at} s to {second} s");
            apply(&mut elector, &renew, rv, at(t0, second), at(t0, second));
        }
        // 34 s of renewals: one second each (never faster than the real time).
        assert_eq!(last - first, 17, "moved {} s in 34 s", last - first);
        // A clock stepped back an hour: the second still moves.
        let renew = expect_write(elector.next(Now::at(at(t0, 40.0), wall(-3600))));
        assert!(renew.record.renew_time.unwrap().0.as_second() > last);
    }

    /// Found by review (rv239): a record edited to the last second below `STAMP_CEILING` (the year 9000).
    /// The whole-second move stopped at the ceiling, and renewals moved `renewTime` by microseconds again,
    /// unseen by client-go. It moves on past the ceiling, in the thousand years kept there.
    #[test]
    fn a_renewal_moves_the_whole_second_past_the_stamp_ceiling() {
        let t0 = Instant::now();
        let mut elector = holding(t0);
        let mut edited = elector.current().unwrap().clone();
        let below = STAMP_CEILING.checked_sub(SignedDuration::from_millis(500)).unwrap();
        edited.record.renew_time = Some(MicroTime(below));
        edited.resource_version = "3".into();
        elector.observe(Some(edited), at(t0, 1.0));
        let mut seconds = std::collections::BTreeSet::new();
        for (rv, second) in (4..16).zip((1..).map(|n| n as f64 * 2.0)) {
            let renew = expect_write(elector.next(now(t0, second)));
            seconds.insert(renew.record.renew_time.clone().unwrap().0.as_second());
            apply(&mut elector, &renew, rv, at(t0, second), at(t0, second));
        }
        // 22 s of renewals, 2 s apart: a new second each.
        assert!(seconds.len() >= 11, "the whole second stayed at {seconds:?}");
    }

    /// Found by review: a record edited to the last microsecond a timestamp holds (the API server accepts
    /// it). Nothing is past it, and every renewal rewrote the same record, which nobody saw change, while a
    /// waiter's expiry clock ran on. Each renewal still changes the record, and the next one again.
    #[test]
    fn a_renewal_changes_the_record_at_the_end_of_time() {
        let t0 = Instant::now();
        let mut elector = holding(t0);
        let mut edited = elector.current().unwrap().clone();
        let end: k8s_openapi::jiff::Timestamp = "9999-12-30T22:00:00.999999Z".parse().unwrap();
        assert!(end.checked_add(SignedDuration::from_micros(1)).is_err(), "the last microsecond");
        edited.record.renew_time = Some(MicroTime(end));
        edited.resource_version = "3".into();
        elector.observe(Some(edited.clone()), at(t0, 1.0));
        let mut stored = edited.record.renew_time.clone().unwrap();
        for (rv, second) in [(4, 2.0), (5, 4.0)] {
            let renew = expect_write(elector.next(now(t0, second)));
            let renewed = renew.record.renew_time.clone().unwrap();
            assert_ne!(renewed, stored, "a renewal that changes nothing");
            apply(&mut elector, &renew, rv, at(t0, second), at(t0, second));
            assert_eq!(elector.held().unwrap().last_renew_sent, at(t0, second));
            stored = renewed;
        }
    }

    /// A holder whose record was edited to one microsecond before the end of time, after its renewal of
    /// that record (sent and answered at 2 s, version 4): stamped short of the end.
    fn renewed_a_record_near_the_end_of_time(t0: Instant) -> Elector {
        let mut a = holding(t0);
        let end: k8s_openapi::jiff::Timestamp = "9999-12-30T22:00:00.999999Z".parse().unwrap();
        let mut edited = a.current().unwrap().clone();
        edited.record.renew_time = Some(MicroTime(end.checked_sub(SignedDuration::from_micros(1)).unwrap()));
        edited.resource_version = "3".into();
        a.observe(Some(edited), at(t0, 1.0));
        let r0 = expect_write(a.next(now(t0, 2.0)));
        assert!(r0.record.renew_time.as_ref().unwrap().0 < STAMP_CEILING, "stamped past the ceiling: {r0:?}");
        apply(&mut a, &r0, 4, at(t0, 2.0), at(t0, 2.0));
        a
    }

    /// Found by review (of the test above's fix): a renewal of a record edited to just before the end of
    /// time wrote the end itself; no later stamp could be past it, and with the wall clock stepped back
    /// two renewals built from one record were alike again. Stamps stay short of the end.
    #[test]
    fn after_a_record_near_the_end_of_time_two_renewals_are_still_never_alike() {
        let t0 = Instant::now();
        let mut a = renewed_a_record_near_the_end_of_time(t0);
        let back = wall(-3600);
        let r1 = expect_write(a.next(Now::at(at(t0, 4.0), back.clone())));
        apply(&mut a, &r1, 5, at(t0, 4.0), at(t0, 4.0));
        let stored = a.current().unwrap().clone();
        let r2 = expect_write(a.next(Now::at(at(t0, 6.0), back.clone())));
        let t2 = a.write_sent(&r2, at(t0, 6.0));
        a.write_result(t2, WriteResult::Unknown, at(t0, 6.5));
        assert_eq!(a.next(Now::at(at(t0, 6.5), back.clone())), Action::Read);
        a.observe(Some(stored), at(t0, 6.6));
        let r3 = expect_write(a.next(Now::at(at(t0, 8.0), back.clone())));
        assert_ne!(r2.record, r3.record, "two renewals of ours alike");
    }

    /// The same for acquisitions: after a renewal of a record near the end of time, two acquisitions
    /// under a stopped clock are not alike (found by review).
    #[test]
    fn after_a_record_near_the_end_of_time_two_acquisitions_are_still_never_alike() {
        let t0 = Instant::now();
        let mut a = renewed_a_record_near_the_end_of_time(t0);
        // Someone else takes it over and releases it (the hold lost); a later free record.
        let free = versioned(9, record(Some(""), Some(15), Some(7)));
        a.observe(Some(free.clone()), at(t0, 3.0));
        let _ = a.next(now(t0, 3.0));
        a.forget_loss();
        a.observe(Some(free.clone()), at(t0, 3.1));
        let first = expect_write(after_a_read(&mut a, now(t0, 40.0)));
        let ticket = a.write_sent(&first, at(t0, 40.0));
        a.write_result(ticket, WriteResult::Unknown, at(t0, 40.1));
        a.observe(Some(free), at(t0, 40.2));
        let second = expect_write(a.next(now(t0, 40.0)));
        assert_ne!(first.record, second.record, "two acquisitions of ours alike");
    }

    /// Found by review: past the ceiling (our last stamp there), a record edited to be just our next stamp
    /// got a renewal that changed nothing (the check compared with the floor, not the stored time).
    #[test]
    fn a_renewal_changes_a_record_edited_to_our_next_stamp_past_the_ceiling() {
        let t0 = Instant::now();
        let mut a = holding(t0);
        let mut edited = a.current().unwrap().clone();
        edited.record.renew_time = Some(MicroTime(STAMP_CEILING.checked_sub(SignedDuration::from_micros(1)).unwrap()));
        edited.resource_version = "3".into();
        a.observe(Some(edited), at(t0, 1.0));
        let r0 = expect_write(a.next(now(t0, 2.0)));
        assert!(r0.record.renew_time.as_ref().unwrap().0 >= STAMP_CEILING);
        apply(&mut a, &r0, 4, at(t0, 2.0), at(t0, 2.0));
        let mut edited = a.current().unwrap().clone();
        edited.record.renew_time = Some(MicroTime(STAMP_CEILING.checked_add(SignedDuration::from_micros(1)).unwrap()));
        edited.resource_version = "5".into();
        // A second renewTime that no write of ours carried is another holder under our identity (see
        // `foreign_renewals`): this test is about the stamp alone.
        a.foreign_renewals = 0;
        a.observe(Some(edited.clone()), at(t0, 3.0));
        let r1 = expect_write(a.next(now(t0, 4.0)));
        assert_ne!(r1.record, edited.record, "a renewal that changes nothing");
    }

    /// A hand edit of our hold's renewTime (to `wall(500 + rv)`) at version `rv`, observed at `second`.
    fn hand_edit(a: &mut Elector, t0: Instant, rv: u32, second: f64) -> Versioned {
        let mut edited = a.current().unwrap().clone();
        edited.record.renew_time = Some(wall(500 + i64::from(rv)));
        edited.resource_version = rv.to_string();
        a.observe(Some(edited.clone()), at(t0, second));
        edited
    }

    /// A renewal of ours, sent at `second` and applied at version `rv` a tenth of a second later.
    fn renewal_applied(a: &mut Elector, t0: Instant, rv: u64, second: f64) {
        let renewal = expect_write(a.next(now(t0, second)));
        let ticket = a.write_sent(&renewal, at(t0, second));
        a.write_result(ticket, WriteResult::Applied(versioned(rv, renewal.record.clone())), at(t0, second + 0.1));
        assert!(a.held().is_some());
    }

    /// Found by review (helper-138): one hand edit of renewTime (let be), then an etcd restore to a snapshot
    /// taken just after it: the restored record shows that same edit again, no renewal by anyone. Nor is the
    /// same edit applied again later (a GitOps tool putting a Lease manifest back).
    #[test]
    fn a_hand_edit_seen_again_is_no_second_renewal() {
        for restored in [true, false] {
            let t0 = Instant::now();
            let mut a = holding(t0);
            let mut edited = hand_edit(&mut a, t0, 3, 0.5);
            renewal_applied(&mut a, t0, 4, 2.0);
            if restored {
                a.versions_went_back();
            } else {
                edited.resource_version = "5".into();
            }
            a.observe(Some(edited), at(t0, 2.5));
            assert!(a.loss().is_none(), "restored {restored}: lost: {:?}", a.loss());
            assert!(a.held().is_some());
        }
    }

    /// Found by review (helper-138): a co-holder under our identity renewed our hold once, then our renewals
    /// went unanswered until the renew deadline: lost, and the record is never given back while the other
    /// may still renew it (free, it would go to a third process beside the co-holder's work). Nor is a
    /// record whose renewTime none of our writes carried, seen only after the loss. A hold edited once,
    /// longer ago than a lease duration, is given back as usual.
    #[test]
    fn a_hold_that_another_renewed_lately_is_never_given_back() {
        let t0 = Instant::now();
        let mut a = holding(t0);
        hand_edit(&mut a, t0, 3, 0.5);
        renewal_applied(&mut a, t0, 4, 2.0);
        assert!(a.release(now(t0, 2.5)).is_none(), "held, renewed by another 2 s ago");
        assert_eq!(a.next(now(t0, 12.5)), Action::Lost(LossReason::RenewDeadline));
        a.forget_loss();
        assert!(a.release(now(t0, 12.6)).is_none(), "lost, renewed by another 12 s ago");

        let mut b = holding(t0);
        assert_eq!(b.next(now(t0, 10.5)), Action::Lost(LossReason::RenewDeadline));
        b.forget_loss();
        assert!(b.release(now(t0, 10.6)).is_some(), "lost, the record still our own write");
        let mut renewed = b.current().unwrap().clone();
        renewed.record.renew_time = Some(wall(600));
        renewed.resource_version = "3".into();
        b.observe(Some(renewed), at(t0, 10.7));
        assert!(b.release(now(t0, 10.8)).is_none(), "lost, renewed since by another");

        let mut c = holding(t0);
        hand_edit(&mut c, t0, 3, 0.5);
        for (rv, second) in (4..).zip([2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0]) {
            renewal_applied(&mut c, t0, rv, second);
        }
        assert!(c.release(now(t0, 16.5)).is_some(), "one edit 16 s ago, our own renewals since");
    }

    /// Holding since t0, with `--retry-period 100ms` (the CLI takes down to 10ms), the default duration and deadline.
    fn holding_with_fast_retries(t0: Instant) -> Elector {
        let timing = Timing { retry_period: Duration::from_millis(100), ..TIMING };
        let mut a = Elector::new("me", timing);
        a.observe(Some(versioned(1, record(Some(""), Some(1), Some(3)))), t0);
        let write = expect_write(a.next(now(t0, 0.0)));
        apply(&mut a, &write, 2, t0, t0);
        a
    }

    /// From `second` until the renew deadline, every renewal refused (`NotApplied`), more than `MAX_SENT_STAMPS`
    /// of them; `before_each` runs at every step first. Then the hold is lost at the deadline.
    fn refuse_every_renewal(
        a: &mut Elector,
        t0: Instant,
        mut second: f64,
        mut before_each: impl FnMut(&mut Elector, f64),
    ) {
        let mut sent = 0;
        while second < 9.9 {
            before_each(a, second);
            if let Action::Write(w) = a.next(now(t0, second)) {
                let ticket = a.write_sent(&w, at(t0, second));
                a.write_result(ticket, WriteResult::NotApplied, at(t0, second + 0.01));
                sent += 1;
            }
            second += 0.101;
        }
        assert!(sent > MAX_SENT_STAMPS, "only {sent} sent");
        assert_eq!(a.next(now(t0, 10.5)), Action::Lost(LossReason::RenewDeadline));
        a.forget_loss();
    }

    /// Found by review (helper-140): renewals refused (a 500 or 429) more than `MAX_SENT_STAMPS` times before the
    /// renew deadline: the record is still our last applied renewal, nobody else wrote it, and it is given back
    /// (README, exit 123).
    #[test]
    fn a_hold_lost_after_many_refused_renewals_is_still_given_back() {
        let t0 = Instant::now();
        let mut a = holding_with_fast_retries(t0);
        refuse_every_renewal(&mut a, t0, 0.15, |_, _| {});
        assert!(a.release(now(t0, 10.6)).is_some(), "our own record, nobody wrote it since: given back");
    }

    /// Found by review (helper-147): a renewal whose answer was lost, not yet committed when the read for it came
    /// (etcd slow), committed later and seen then; every renewal after it refused, more than
    /// `MAX_SENT_STAMPS` of them, until the renew deadline. The record is our own write, nobody else wrote
    /// the lease: given back (README, exit 123).
    #[test]
    fn a_renewal_committed_late_then_many_refused_is_still_given_back() {
        let t0 = Instant::now();
        let mut a = holding_with_fast_retries(t0);
        let r0 = a.current().unwrap().clone();
        // R1: sent, its answer lost; the read for it shows the record before it.
        let r1 = expect_write(a.next(now(t0, 0.15)));
        let ticket = a.write_sent(&r1, at(t0, 0.15));
        a.write_result(ticket, WriteResult::Unknown, at(t0, 0.3));
        assert_eq!(a.next(now(t0, 0.3)), Action::Read);
        a.observe(Some(r0), at(t0, 0.31));
        let mut committed = false;
        refuse_every_renewal(&mut a, t0, 0.35, |a, second| {
            if !committed && second > 0.6 {
                // R1 commits now, and a read (or the watch) shows it.
                a.observe(Some(versioned(3, r1.record.clone())), at(t0, second));
                assert!(a.held().is_some(), "our own renewal taken for another's");
                committed = true;
            }
        });
        assert!(a.release(now(t0, 10.6)).is_some(), "our own record (R1), nobody wrote it since: not given back");
    }

    /// Found by the property model (helper-149's restores): a waiter that knew another's hold read the lease free
    /// at an older version (an etcd restore undid that hold, whose holder may still run its child until its last
    /// renewal's send + the lease duration): it took it at once. Now nothing is acquired for a lease duration (or
    /// the known hold's, if longer).
    #[test]
    fn a_free_record_read_after_versions_went_back_is_not_taken_for_a_lease_duration() {
        let t0 = Instant::now();
        let mut a = Elector::new("me", TIMING);
        a.observe(Some(versioned(9, record(Some("other"), Some(15), Some(3)))), t0);
        a.versions_went_back();
        a.observe(Some(versioned(5, record(Some(""), Some(1), Some(2)))), at(t0, 1.0));
        assert!(!matches!(a.next(now(t0, 1.0)), Action::Write(_)), "taken at once after versions went back");
        assert!(!matches!(a.next(now(t0, 15.9)), Action::Write(_)), "taken within a lease duration");
        assert!(matches!(after_a_read(&mut a, now(t0, 16.1)), Action::Write(_)), "not taken after a lease duration");
        // The hold known before is longer than ours: waited out for its duration.
        let mut b = Elector::new("me", TIMING);
        b.observe(Some(versioned(9, record(Some("other"), Some(40), Some(3)))), t0);
        b.versions_went_back();
        b.observe(Some(versioned(5, record(Some(""), Some(1), Some(2)))), at(t0, 1.0));
        assert!(!matches!(b.next(now(t0, 40.9)), Action::Write(_)), "taken within the undone hold's duration");
        assert!(matches!(after_a_read(&mut b, now(t0, 41.1)), Action::Write(_)), "not taken after it");
    }

    /// Found by review (rv288, rv289): a restore that undoes renewals of the hold held now shows an older one of them;
    /// others who saw that record and none since (a side-car asked only now, a waiter whose watch lagged) count its
    /// expiry from when they saw it, so the hold counts from that renewal's send again (and from the next renewal
    /// that lands), renewed at once; one older than those remembered counts as past its deadline.
    #[test]
    fn a_hold_whose_renewals_a_restore_undid_counts_from_the_renewal_shown() {
        let t0 = Instant::now();
        let mut a = holding(t0);
        renewal_applied(&mut a, t0, 10, 2.0);
        let restored = a.current().unwrap().clone();
        renewal_applied(&mut a, t0, 11, 4.0);
        assert_eq!(a.held().unwrap().deadline(TIMING), at(t0, 14.0));
        a.versions_went_back();
        a.observe(Some(Versioned { resource_version: "10".into(), ..restored }), at(t0, 5.0));
        assert_eq!(a.held().unwrap().deadline(TIMING), at(t0, 12.0), "counted from the renewal restored");
        assert!(matches!(a.next(now(t0, 5.0)), Action::Write(_)), "renewed at once");
        renewal_applied(&mut a, t0, 11, 6.0);
        assert_eq!(a.held().unwrap().deadline(TIMING), at(t0, 16.0), "counted from the next renewal");
        // Restored to the acquisition, older than the writes remembered after many: counted as before.
        let mut b = holding(t0);
        let acquisition = b.current().unwrap().clone();
        for i in 0..(MAX_SENT_STAMPS as u64 + 2) {
            renewal_applied(&mut b, t0, 10 + i, 2.0 * (i + 1) as f64);
        }
        let deadline = b.held().unwrap().deadline(TIMING);
        b.versions_went_back();
        let late = 2.0 * (MAX_SENT_STAMPS + 2) as f64 + 0.5;
        b.observe(Some(acquisition), at(t0, late));
        assert_eq!(b.held().unwrap().deadline(TIMING), deadline);
        // A hand edit that moves renewTime back (a time this process never wrote) counts as before too.
        let mut c = holding(t0);
        renewal_applied(&mut c, t0, 10, 2.0);
        let mut edited = c.current().unwrap().clone();
        edited.record.renew_time = Some(wall(-3600));
        edited.resource_version = "11".into();
        c.observe(Some(edited), at(t0, 3.0));
        assert_eq!(c.held().unwrap().deadline(TIMING), at(t0, 12.0));
    }

    /// Found by review (helper-140): a co-holder's renewal first seen as the record read after versions went back
    /// (an etcd restore to a snapshot taken after the co-holder renewed) counts as no renewal, so the hold stays
    /// ours; when our child exits at once, that record is not ours to give back.
    #[test]
    fn a_co_holders_renewal_read_first_after_a_restore_is_never_given_back() {
        let t0 = Instant::now();
        let mut a = holding(t0);
        renewal_applied(&mut a, t0, 10, 2.0);
        a.versions_went_back();
        let mut co = a.current().unwrap().clone();
        co.record.renew_time = Some(wall(700));
        co.resource_version = "5".into();
        a.observe(Some(co), at(t0, 2.5));
        assert!(a.release(now(t0, 2.6)).is_none(), "a record whose renewTime we never wrote was given back");
    }

    /// Found by review (helper-134): two hand edits of renewTime more than a lease duration apart are no
    /// co-holder (which renews within its renew deadline); two within one are.
    #[test]
    fn foreign_renewals_count_two_only_within_a_lease_duration() {
        let t0 = Instant::now();
        let mut a = holding(t0);
        hand_edit(&mut a, t0, 3, 1.0);
        // 20 s later (our lease duration is 15 s, the record's too): a second edit, alone again.
        hand_edit(&mut a, t0, 4, 21.0);
        assert!(a.loss().is_none(), "lost: {:?}", a.loss());
        assert!(a.held().is_some());
        hand_edit(&mut a, t0, 5, 23.0);
        assert_eq!(a.loss(), Some(&LossReason::Collision { identity: "me".into() }));
    }

    /// Found by review (helper-134): one hand edit of renewTime (let be: see `foreign_renewals`), then
    /// another field of the record changed (`kubectl edit` twice, a tool setting `leaseDurationSeconds`)
    /// before our next renewal: the same renewTime seen again is no second renewal by anyone.
    #[test]
    fn one_hand_edit_seen_in_two_versions_is_no_collision() {
        let t0 = Instant::now();
        let mut a = holding(t0);
        let mut edited = hand_edit(&mut a, t0, 3, 0.5);
        edited.record.lease_duration_seconds = Some(30);
        edited.resource_version = "4".into();
        a.observe(Some(edited), at(t0, 0.6));
        assert!(a.loss().is_none(), "lost: {:?}", a.loss());
        assert!(a.held().is_some());
    }

    /// Found by review (helper-134): a record of `--backend file` edited by hand to a renewTime with
    /// nanoseconds (the file keeps what it is given; a write is stored with microseconds). The renewal
    /// stamped one microsecond past it carried the nanoseconds, was stored without them, and so was taken
    /// for another process's renewal under our identity: with the edit, a collision, and the child stopped.
    #[test]
    fn a_renewal_of_a_record_edited_to_nanoseconds_is_still_our_own() {
        let t0 = Instant::now();
        let mut a = holding(t0);
        let mut edited = a.current().unwrap().clone();
        let future = wall(30).0.checked_add(SignedDuration::from_nanos(123_456_789)).unwrap();
        edited.record.renew_time = Some(MicroTime(future));
        edited.resource_version = "3".into();
        a.observe(Some(edited), at(t0, 1.0));
        let renewal = expect_write(a.next(now(t0, 2.0)));
        // As any store keeps it: through its JSON form.
        let stored: LeaseSpec = serde_json::from_value(serde_json::to_value(&renewal.record).unwrap()).unwrap();
        assert_eq!(stored, renewal.record, "a stamp of ours is what a store keeps");
        let ticket = a.write_sent(&renewal, at(t0, 2.0));
        a.write_result(ticket, WriteResult::Applied(versioned(4, stored)), at(t0, 2.1));
        assert!(a.loss().is_none(), "lost: {:?}", a.loss());
        assert_eq!(a.held().unwrap().last_renew_sent, at(t0, 2.0), "the renewal counts");
    }

    /// A wall clock set past the year 9000 reads as that year, and stamps still move on.
    #[test]
    fn a_wall_clock_past_the_ceiling_still_gives_stamps_that_move_on() {
        let t0 = Instant::now();
        let mut a = holding(t0);
        let far = MicroTime("9999-12-30T22:00:00.999999Z".parse().unwrap());
        let mut last = a.current().unwrap().record.renew_time.clone().unwrap();
        for (rv, second) in [(3, 2.0), (4, 4.0), (5, 6.0)] {
            let renew = expect_write(a.next(Now::at(at(t0, second), far.clone())));
            let stamp = renew.record.renew_time.clone().unwrap();
            // Past the ceiling by whole seconds at most (one a quarter duration: see `renewal`).
            assert!(stamp.0 > last.0 && stamp.0 <= STAMP_CEILING.checked_add(SignedDuration::from_secs(3)).unwrap());
            apply(&mut a, &renew, rv, at(t0, second), at(t0, second));
            last = stamp;
        }
    }

    /// Found by review (of the test above's fix): with the wall clock stepped back, two renewals built
    /// from the same stored record were alike (stored + 1 µs). A first renewal of unknown outcome that
    /// landed after the read that settled it was taken for the second, and the renew deadline counted
    /// from the second's send, after a waiter had seen the first land. Every write of ours is now stamped
    /// past the latest one sent.
    #[test]
    fn two_renewals_from_one_record_are_never_alike() {
        let t0 = Instant::now();
        let mut a = holding(t0);
        let stored = a.current().unwrap().clone();
        let mut b = Elector::new("b", TIMING);
        b.observe(Some(stored.clone()), t0);
        let back = wall(-3600);
        let r1 = expect_write(a.next(Now::at(at(t0, 2.0), back.clone())));
        let t1 = a.write_sent(&r1, at(t0, 2.0));
        a.write_result(t1, WriteResult::Unknown, at(t0, 7.0));
        assert_eq!(a.next(Now::at(at(t0, 7.0), back.clone())), Action::Read);
        // Read before r1 commits (7.1, when the waiter sees it), answered at 8.5.
        a.observe(Some(stored.clone()), at(t0, 8.5));
        let landed = versioned(3, r1.record.clone());
        b.observe_event(WatchUpdate::Present(landed.clone()), at(t0, 7.1));
        let r2 = expect_write(a.next(Now::at(at(t0, 8.5), back.clone())));
        assert!(r2.record.renew_time.as_ref().unwrap().0 > r1.record.renew_time.as_ref().unwrap().0);
        let t2 = a.write_sent(&r2, at(t0, 8.5));
        a.write_result(t2, WriteResult::Unknown, at(t0, 8.6));
        assert_eq!(a.next(Now::at(at(t0, 8.6), back.clone())), Action::Read);
        a.observe(Some(landed), at(t0, 8.7));
        // r1's record counts from r1's send, 2 s: lost at 12 s, long before the waiter may take it (22.1 s).
        assert!(!a.usable(at(t0, 12.0)), "the deadline counts from the send of the write that landed");
        assert!(matches!(after_a_read(&mut b, Now::at(at(t0, 22.1), wall(22))), Action::Write(_)));
        // Acquisitions and releases too: never two alike, whatever the clock.
        let mut c = Elector::new("c", TIMING);
        c.observe(Some(versioned(1, record(Some(""), Some(1), Some(3)))), t0);
        let first = expect_write(c.next(now(t0, 0.0)));
        let ticket = c.write_sent(&first, t0);
        c.write_result(ticket, WriteResult::Unknown, at(t0, 0.1));
        c.observe(Some(versioned(1, record(Some(""), Some(1), Some(3)))), at(t0, 0.2));
        let second = expect_write(c.next(now(t0, 0.0)));
        assert_ne!(first.record, second.record);
    }

    /// The regression of "a late answer to a renewal moves the renew deadline forward": the renewal is
    /// seen applied on the watch first (which settles it), and its own answer comes much later. The
    /// deadline still counts from its send, never from the answer.
    #[test]
    fn late_answer_after_the_watch_showed_the_renewal_never_moves_the_deadline() {
        let t0 = Instant::now();
        let mut elector = holding(t0);
        let renew = expect_write(elector.next(now(t0, 2.0)));
        let ticket = elector.write_sent(&renew, at(t0, 2.0));
        elector.observe_event(WatchUpdate::Present(versioned(3, renew.record.clone())), at(t0, 2.1));
        assert_eq!(elector.held().unwrap().last_renew_sent, at(t0, 2.0));
        // The answer, 3 s late.
        elector.write_result(ticket, WriteResult::Applied(versioned(3, renew.record.clone())), at(t0, 5.0));
        assert_eq!(elector.held().unwrap().last_renew_sent, at(t0, 2.0), "counted from the send");
        assert_eq!(elector.next(now(t0, 12.0)), Action::Lost(LossReason::RenewDeadline));
    }

    /// Found by review: a renewal sent before the renew deadline and answered after it. The hold counted
    /// as lost at the deadline (the holder's work was told, by the clock), and the answer must not bring
    /// it back; the record it leaves is ours to release.
    #[test]
    fn a_renewal_answered_after_the_deadline_leaves_the_hold_lost() {
        let t0 = Instant::now();
        let mut elector = holding(t0);
        for second in [2.0, 4.0, 6.0] {
            let renew = expect_write(elector.next(now(t0, second)));
            let ticket = elector.write_sent(&renew, at(t0, second));
            elector.write_result(ticket, WriteResult::NotApplied, at(t0, second));
        }
        // Sent at 8 s, before the deadline (10 s); answered at 10.2 s, before the elector looked again.
        let renew = expect_write(elector.next(now(t0, 8.0)));
        apply(&mut elector, &renew, 3, at(t0, 8.0), at(t0, 10.2));
        assert!(elector.held().is_none(), "the late answer must not renew a hold past its deadline");
        assert_eq!(elector.next(now(t0, 10.2)), Action::Lost(LossReason::RenewDeadline));
        elector.forget_loss();
        let release = elector.release(now(t0, 10.3)).expect("the record is our own write, to release");
        assert_eq!(release.record.holder_identity.as_deref(), Some(""));
    }

    #[test]
    fn an_old_answer_never_moves_the_deadline_back_or_forward() {
        let t0 = Instant::now();
        let mut elector = holding(t0);
        let first = expect_write(elector.next(now(t0, 2.0)));
        let first_ticket = elector.write_sent(&first, at(t0, 2.0));
        // Its answer is lost in the network for now; a read shows it applied.
        elector.write_result(first_ticket.clone(), WriteResult::Unknown, at(t0, 3.0));
        elector.observe(Some(versioned(3, first.record.clone())), at(t0, 3.0));
        let second = expect_write(elector.next(now(t0, 4.0)));
        apply(&mut elector, &second, 4, at(t0, 4.0), at(t0, 4.0));
        // The first write's answer finally arrives: older than what we know, it changes nothing.
        elector.write_result(first_ticket, WriteResult::Applied(versioned(3, first.record)), at(t0, 5.0));
        assert_eq!(elector.held().unwrap().last_renew_sent, at(t0, 4.0));
        assert_eq!(elector.current().unwrap().resource_version, "4");
    }

    #[test]
    fn failed_renewals_lose_the_lease_at_the_deadline_and_it_is_recorded() {
        let t0 = Instant::now();
        let mut elector = holding(t0);
        for second in [2.0, 4.0, 6.0, 8.0] {
            let renew = expect_write(elector.next(now(t0, second)));
            let ticket = elector.write_sent(&renew, at(t0, second));
            elector.write_result(ticket, WriteResult::NotApplied, at(t0, second));
        }
        assert_eq!(elector.next(now(t0, 10.0)), Action::Lost(LossReason::RenewDeadline));
        assert!(elector.held().is_none(), "the loss is recorded, not only reported");
        assert_eq!(elector.loss(), Some(&LossReason::RenewDeadline));
    }

    #[test]
    fn conflict_while_holding_reads_then_renews_if_still_ours() {
        let t0 = Instant::now();
        let mut elector = holding(t0);
        let renew = expect_write(elector.next(now(t0, 2.0)));
        let ticket = elector.write_sent(&renew, at(t0, 2.0));
        elector.write_result(ticket, WriteResult::Conflict, at(t0, 2.0));
        assert_eq!(elector.next(now(t0, 2.0)), Action::Read);
        // Someone touched the object (say, a label): still ours, renew against the new version.
        let mut touched = elector.current().unwrap().clone();
        touched.resource_version = "9".into();
        elector.observe(Some(touched), at(t0, 2.0));
        // The next attempt keeps the cadence: one retry period after the failed one.
        assert_eq!(elector.next(now(t0, 2.0)), Action::WaitUntil(at(t0, 4.0)));
        assert_eq!(expect_write(elector.next(now(t0, 4.0))).resource_version(), Some("9"));
    }

    /// Found by review (rv241): a renewal W1 that entered a new whole second landed but was answered 409
    /// (a proxy's retry of the committed write): never counted. The renewal after it, on the version read,
    /// stayed in W1's second (no change to client-go, which has seen W1) and was counted from its own send.
    /// Now a landed write of ours, once seen, counts from its send, and a later renewal in its second counts
    /// for nothing (and the stamps move on once a second, not a second a renewal: review rv243).
    #[test]
    fn a_renewal_in_the_second_of_an_uncounted_landed_one_is_not_counted() {
        let t0 = Instant::now();
        let mut elector = holding_with_fast_retries(t0);
        let first = elector.held().unwrap().renew_second;
        let w1 = expect_write(elector.next(now(t0, 1.0)));
        let second = |write: &Write| write.record.renew_time.as_ref().unwrap().0.as_second();
        assert_ne!(Some(second(&w1)), first, "W1 enters a new second");
        let ticket = elector.write_sent(&w1, at(t0, 1.0));
        elector.write_result(ticket, WriteResult::Conflict, at(t0, 1.0));
        assert_eq!(elector.next(now(t0, 1.0)), Action::Read);
        elector.observe(Some(versioned(3, w1.record.clone())), at(t0, 1.05));
        // W1, seen landed, counts from its send (found by review, rv246: never counted, it held up every later
        // renewal in its second until the deadline).
        assert_eq!(elector.held().unwrap().last_renew_sent, at(t0, 1.0), "W1 counts from its send");
        let w2 = loop {
            match elector.next(Now::at(at(t0, 1.1), wall(1))) {
                Action::Write(write) => break write,
                Action::WaitUntil(until) if until <= at(t0, 1.1) => continue,
                Action::WaitUntil(until) => match elector.next(Now::at(until, wall(1))) {
                    Action::Write(write) => break write,
                    other => panic!("expected a renewal, got {other:?}"),
                },
                other => panic!("expected a renewal, got {other:?}"),
            }
        };
        let sent = at(t0, 1.2);
        let ticket = elector.write_sent(&w2, sent);
        elector.write_result(ticket, WriteResult::Applied(versioned(4, w2.record.clone())), sent);
        if second(&w2) == second(&w1) {
            assert_eq!(elector.held().unwrap().last_renew_sent, at(t0, 1.0), "W2, in W1's second, counted");
        } else {
            assert_eq!(elector.held().unwrap().last_renew_sent, sent, "W2, in a later second, not counted");
        }
        // Not a second a renewal: W2 was sent 0.1 s after W1.
        assert!(second(&w2) <= second(&w1) + 1);
    }

    #[test]
    fn another_holder_in_the_record_means_lost() {
        let t0 = Instant::now();
        let mut elector = holding(t0);
        elector.observe(Some(versioned(3, record(Some("thief"), Some(15), Some(5)))), at(t0, 1.0));
        assert_eq!(elector.next(now(t0, 1.0)), Action::Lost(LossReason::Taken { holder: "thief".into() }));
        assert!(elector.held().is_none());
        assert!(elector.release(now(t0, 1.0)).is_none(), "a lease that is not ours is never written");
    }

    #[test]
    fn deleted_lease_means_lost_on_a_read_and_on_a_newer_watch_deletion() {
        let t0 = Instant::now();
        let mut elector = holding(t0);
        elector.observe(None, at(t0, 1.0));
        assert_eq!(elector.next(now(t0, 1.0)), Action::Lost(LossReason::Deleted));

        let mut elector = holding(t0);
        elector.observe_event(WatchUpdate::Deleted { resource_version: "5".into() }, at(t0, 1.0));
        assert_eq!(elector.next(now(t0, 1.0)), Action::Lost(LossReason::Deleted), "a deletion after our write");

        let mut elector = holding(t0);
        elector.observe_event(WatchUpdate::Absent { resource_version: "5".into() }, at(t0, 1.0));
        assert_eq!(elector.next(now(t0, 1.0)), Action::Lost(LossReason::Deleted), "a list after our write");
    }

    #[test]
    fn stale_watch_event_does_not_undo_what_a_write_told_us() {
        let t0 = Instant::now();
        let mut elector = holding(t0);
        // rv 1 (free) arrives from a lagging watch after our acquisition (rv 2): ignored.
        elector.observe_event(WatchUpdate::Present(versioned(1, record(Some(""), Some(1), Some(3)))), t0);
        assert!(elector.held().is_some());
        assert_eq!(elector.current().unwrap().resource_version, "2");
        // So is a list made before our create, which says "absent" as of an older version.
        elector.observe_event(WatchUpdate::Absent { resource_version: "1".into() }, t0);
        assert!(elector.held().is_some());
        assert!(matches!(elector.next(now(t0, 0.1)), Action::WaitUntil(_)));
    }

    #[test]
    fn absent_without_a_version_while_holding_asks_for_a_read() {
        let t0 = Instant::now();
        let mut elector = holding(t0);
        elector.observe_event(WatchUpdate::Absent { resource_version: String::new() }, t0);
        assert!(elector.held().is_some());
        assert_eq!(elector.next(now(t0, 0.1)), Action::Read);
        elector.observe(None, t0);
        assert_eq!(elector.next(now(t0, 0.1)), Action::Lost(LossReason::Deleted));
    }

    #[test]
    fn a_lease_deleted_under_another_holder_counts_as_held_until_its_observed_expiry() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        elector.observe(Some(versioned(3, record(Some("other"), Some(5), Some(7)))), t0);
        // `kubectl delete lease` (or rm NAME.json) while the other child still runs, seen on the watch.
        elector.observe_event(WatchUpdate::Deleted { resource_version: "4".into() }, at(t0, 1.0));
        assert_eq!(elector.next(now(t0, 1.0)), Action::WaitUntil(at(t0, 5.0)));
        // A read confirms it is gone: still held until then.
        elector.observe(None, at(t0, 2.0));
        assert_eq!(elector.next(now(t0, 4.9)), Action::WaitUntil(at(t0, 5.0)));
        let create = expect_write(elector.next(now(t0, 5.0)));
        assert!(create.is_create());
        assert_eq!(create.record.lease_transitions, Some(8), "tokens go on from the deleted lease");
    }

    #[test]
    fn a_lease_found_gone_by_a_read_counts_as_held_for_a_full_duration_from_then() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        // What we saw last was free; a read finds nothing: someone may have taken it, and it was deleted
        // under them, in between.
        elector.observe(Some(versioned(3, record(Some(""), Some(1), Some(7)))), t0);
        elector.observe(None, at(t0, 1.0));
        assert_eq!(elector.next(now(t0, 1.0)), Action::WaitUntil(at(t0, 16.0)));
        // A list that finds nothing is a snapshot too.
        let mut elector = Elector::new("me", TIMING);
        elector.observe(Some(versioned(3, record(Some("other"), Some(5), Some(7)))), t0);
        elector.observe_event(WatchUpdate::Absent { resource_version: "9".into() }, at(t0, 2.0));
        assert_eq!(elector.next(now(t0, 2.0)), Action::WaitUntil(at(t0, 17.0)));
    }

    #[test]
    fn a_create_that_lands_after_the_lease_was_deleted_under_another_waits_out_that_holder() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        elector.observe(None, t0);
        let create = expect_write(elector.next(now(t0, 0.0)));
        let ticket = elector.write_sent(&create, t0);
        // Meanwhile another process created it (our create will fail)... but the lease is deleted under
        // that holder before our create is processed, so ours lands.
        elector.observe_event(WatchUpdate::Present(versioned(3, record(Some("other"), Some(5), Some(0)))), at(t0, 0.5));
        elector.write_result(ticket, WriteResult::Applied(versioned(5, create.record.clone())), at(t0, 1.0));
        let held = elector.held().expect("held");
        assert_eq!(held.usable_from, at(t0, 5.5), "no child before the other holder's observed expiry");
        assert!(!elector.usable(at(t0, 5.4)));
        assert!(elector.usable(at(t0, 5.5)));
    }

    /// A create sent while the lease was absent lands after another holder's record (token 1) was seen
    /// and deleted: no hold with token 0; the record is taken again with token 2 (the side-car too, which
    /// otherwise adopts its pod's record with its token), and that holds.
    #[test]
    fn a_create_that_lands_below_a_token_already_seen_is_taken_again_with_a_larger_one() {
        for mut elector in [Elector::new("me", TIMING), Elector::adopting("me", TIMING)] {
            let t0 = Instant::now();
            elector.set_watching(true);
            elector.observe(None, t0);
            let create = expect_write(elector.next(now(t0, 0.0)));
            let ticket = elector.write_sent(&create, t0);
            elector.observe_event(WatchUpdate::Present(versioned(3, record(Some("other"), Some(1), Some(1)))), t0);
            elector.observe_event(WatchUpdate::Deleted { resource_version: "4".into() }, t0);
            elector.write_result(ticket, WriteResult::Applied(versioned(5, create.record.clone())), at(t0, 0.1));
            assert!(elector.held().is_none(), "no hold with token 0 after token 1 was seen");
            let again = expect_write(elector.next(now(t0, 1.5)));
            assert_eq!(again.record.lease_transitions, Some(2));
            apply(&mut elector, &again, 6, at(t0, 1.5), at(t0, 1.5));
            assert_eq!(elector.held().expect("held").fencing_token, 2);
        }
    }

    #[test]
    fn a_lease_never_seen_is_created_at_once() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        elector.observe(None, t0);
        assert!(expect_write(elector.next(now(t0, 0.0))).is_create());
    }

    #[test]
    fn a_lease_deleted_after_it_was_released_is_free_at_once() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        elector.observe(Some(versioned(3, record(Some(""), Some(1), Some(7)))), t0);
        elector.observe_event(WatchUpdate::Deleted { resource_version: "4".into() }, at(t0, 1.0));
        assert!(expect_write(elector.next(now(t0, 1.0))).is_create());
    }

    #[test]
    fn unknown_outcome_is_resolved_by_reading_applied() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        elector.observe(Some(versioned(1, record(Some(""), Some(1), Some(0)))), t0);
        let write = expect_write(elector.next(now(t0, 0.0)));
        let ticket = elector.write_sent(&write, t0);
        elector.write_result(ticket, WriteResult::Unknown, at(t0, 1.0));
        assert!(elector.unresolved_write());
        assert_eq!(elector.next(now(t0, 1.0)), Action::Read);
        elector.observe(Some(versioned(2, write.record.clone())), at(t0, 1.0));
        let held = elector.held().expect("the read shows our write: held");
        assert_eq!(held.last_renew_sent, t0, "counted from the send");
        assert_eq!(held.fencing_token, 1);
        assert!(!elector.unresolved_write());
    }

    #[test]
    fn unknown_outcome_is_resolved_by_reading_not_applied() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        elector.observe(Some(versioned(1, record(Some(""), Some(1), Some(0)))), t0);
        let write = expect_write(elector.next(now(t0, 0.0)));
        let ticket = elector.write_sent(&write, t0);
        elector.write_result(ticket, WriteResult::Unknown, t0);
        // Someone else got it meanwhile.
        elector.observe(Some(versioned(2, record(Some("other"), Some(15), Some(1)))), at(t0, 1.0));
        assert!(elector.held().is_none());
        assert_eq!(elector.next(now(t0, 1.0)), Action::WaitUntil(at(t0, 16.0)));
    }

    /// Found by review (helper-96): an event that does not show an acquisition in doubt does not settle
    /// it; a read does. And (helper-99) a read older than what the watch showed settles it too: with
    /// versions that went back (an etcd restore), it was read again at once, without end.
    #[test]
    fn an_acquisition_in_doubt_is_settled_by_a_read_even_an_older_one() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        elector.observe(Some(versioned(5, record(Some(""), Some(1), Some(0)))), t0);
        let write = expect_write(elector.next(now(t0, 0.0)));
        let ticket = elector.write_sent(&write, t0);
        elector.write_result(ticket, WriteResult::Unknown, at(t0, 0.1));
        // An event from someone else's edit: still in doubt, so still a read.
        elector.observe_event(WatchUpdate::Present(versioned(6, record(Some(""), Some(2), Some(0)))), at(t0, 0.2));
        assert_eq!(elector.next(now(t0, 0.2)), Action::Read);
        // A read answered from before that event: settled, no read again.
        elector.observe(Some(versioned(3, record(Some(""), Some(1), Some(0)))), at(t0, 0.3));
        assert!(!elector.acquisition_in_doubt());
        assert_ne!(elector.next(now(t0, 0.3)), Action::Read);
    }

    #[test]
    fn conflict_on_acquire_reads_again() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        elector.observe(None, t0);
        let write = expect_write(elector.next(now(t0, 0.0)));
        let ticket = elector.write_sent(&write, t0);
        elector.write_result(ticket, WriteResult::Conflict, t0);
        assert_eq!(elector.next(now(t0, 0.0)), Action::Read);
        assert!(elector.held().is_none());
    }

    #[test]
    fn a_live_record_under_our_identity_that_we_did_not_write_is_waited_out() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        // Another process given the same identity (or a nested mpsync that inherited it) holds it.
        elector.observe(Some(versioned(4, record(Some("me"), Some(15), Some(6)))), t0);
        assert!(elector.take_collision(), "the collision is reported");
        assert_eq!(elector.next(now(t0, 0.0)), Action::WaitUntil(at(t0, 15.0)));
        assert!(elector.release(now(t0, 1.0)).is_none(), "and never released by us");
        let write = expect_write(after_a_read(&mut elector, now(t0, 15.0)));
        assert_eq!(write.record.lease_transitions, Some(7));
    }

    #[test]
    fn a_record_under_our_identity_written_by_another_while_we_hold_is_a_loss() {
        let t0 = Instant::now();
        let mut elector = holding(t0);
        let mut twin = record(Some("me"), Some(15), Some(5));
        twin.acquire_time = Some(wall(1));
        elector.observe(Some(versioned(3, twin)), at(t0, 1.0));
        assert_eq!(elector.next(now(t0, 1.0)), Action::Lost(LossReason::Collision { identity: "me".into() }));
        assert!(elector.release(now(t0, 1.0)).is_none());
    }

    #[test]
    fn our_own_release_applied_is_not_a_loss() {
        let t0 = Instant::now();
        let mut elector = holding(t0);
        let release = elector.release(now(t0, 1.0)).unwrap();
        apply(&mut elector, &release, 3, at(t0, 1.0), at(t0, 1.0));
        assert!(elector.held().is_none());
        assert_eq!(elector.loss(), None);
        assert!(!elector.unresolved_write());
    }

    #[test]
    fn our_own_record_from_an_earlier_hold_is_taken_again_at_once_with_a_new_token() {
        let t0 = Instant::now();
        let mut elector = holding(t0);
        // Renewals fail until the deadline; the child is stopped; campaign again.
        assert_eq!(elector.next(now(t0, 10.0)), Action::Lost(LossReason::RenewDeadline));
        elector.forget_loss();
        assert_eq!(elector.next(now(t0, 11.0)), Action::Read);
        let ours = elector.current().unwrap().clone();
        elector.observe(Some(ours), at(t0, 11.0));
        assert!(!elector.take_collision());
        let write = expect_write(elector.next(now(t0, 11.0)));
        assert_eq!(write.record.lease_transitions, Some(5));
    }

    /// Versions gone back (an etcd restore) show a hold of ours we had released, while another process
    /// holds the lease now: it is waited out as another's hold (no collision), not taken at once.
    #[test]
    fn a_restored_old_hold_of_ours_is_waited_out_not_taken_again() {
        let t0 = Instant::now();
        let mut elector = holding(t0);
        let restored = elector.current().unwrap().clone();
        let release = elector.release(now(t0, 1.0)).unwrap();
        apply(&mut elector, &release, 3, at(t0, 1.0), at(t0, 1.0));
        elector.observe(Some(versioned(4, record(Some("other"), Some(10), Some(4)))), at(t0, 1.5));
        elector.versions_went_back();
        elector.observe(Some(restored), at(t0, 2.0));
        assert!(!elector.take_collision(), "a restored hold of ours is no collision");
        assert!(matches!(elector.next(now(t0, 2.0)), Action::WaitUntil(_)), "waited out, not taken at once");
    }

    /// The hold held now, restored at an older version: still ours, renewed on the version read.
    #[test]
    fn a_hold_restored_under_its_holder_is_renewed_on_the_version_read() {
        let t0 = Instant::now();
        let mut elector = holding(t0);
        let restored = elector.current().unwrap().clone();
        let renew = expect_write(elector.next(now(t0, 2.0)));
        apply(&mut elector, &renew, 7, at(t0, 2.0), at(t0, 2.0));
        elector.versions_went_back();
        elector.observe(Some(restored), at(t0, 3.0));
        assert!(elector.held().is_some());
        let renew = expect_write(elector.next(now(t0, 4.0)));
        assert_eq!(renew.resource_version(), Some("2"));
    }

    #[test]
    fn a_renewal_that_lands_after_the_loss_never_makes_a_hold() {
        let t0 = Instant::now();
        let mut elector = holding(t0);
        let renew = expect_write(elector.next(now(t0, 8.0)));
        let ticket = elector.write_sent(&renew, at(t0, 8.0));
        assert_eq!(elector.next(now(t0, 10.0)), Action::Lost(LossReason::RenewDeadline));
        elector.forget_loss();
        elector.write_result(ticket, WriteResult::Applied(versioned(3, renew.record)), at(t0, 11.0));
        assert!(elector.held().is_none(), "no second child under the old token");
    }

    #[test]
    fn a_token_that_cannot_grow_is_refused() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        elector.observe(Some(versioned(1, record(Some(""), Some(1), Some(i32::MAX)))), t0);
        assert_eq!(elector.next(now(t0, 0.0)), Action::Refuse(Refusal::TokenExhausted { transitions: i32::MAX }));
        let mut elector = Elector::new("me", TIMING);
        elector.observe(Some(versioned(1, record(Some(""), Some(1), Some(i32::MAX - 1)))), t0);
        assert_eq!(expect_write(elector.next(now(t0, 0.0))).record.lease_transitions, Some(i32::MAX));
    }

    #[test]
    fn the_side_car_adopts_its_pods_record_keeping_the_token() {
        let t0 = Instant::now();
        let mut elector = Elector::adopting("pod-a", TIMING);
        let renewed = wall(-50).0.as_microsecond();
        let mark = format!("6@{renewed}");
        elector.observe(Some(marked_by_a_side_car(4, record(Some("pod-a"), Some(30), Some(6)), &mark)), t0);
        let write = expect_write(elector.next(now(t0, 0.0)));
        assert_eq!(write.record.lease_transitions, Some(6));
        assert_eq!(write.record.acquire_time, Some(wall(-100)));
        let renewed = write.record.renew_time.as_ref().unwrap().0.as_microsecond();
        assert_eq!(write.metadata.annotations.as_ref().unwrap()[SIDECAR_ANNOTATION], format!("6@{renewed}"));
        apply(&mut elector, &write, 5, t0, t0);
        assert_eq!(elector.held().unwrap().fencing_token, 6);
    }

    /// Found by review (helper-151): two side-cars given one pod identity (two containers of a pod), on one node
    /// whose clock stepped back: both stamp each renewal one microsecond past the stored renewTime, so the
    /// one refused (409) carried exactly the stamp of the other's that landed. Since 850b3da a refused stamp
    /// still counts as ours: neither ever counts the other's renewals as foreign, both hold, both lead.
    #[test]
    fn a_co_holder_stamping_like_us_is_never_taken_for_us() {
        let t0 = Instant::now();
        let clock_back = |second: f64| Now::at(at(t0, second), wall(-3600));
        let mut a = Elector::adopting("pod-a", TIMING);
        let mut b = Elector::adopting("pod-a", TIMING);
        let renewed = wall(-50).0.as_microsecond();
        let mut store = marked_by_a_side_car(4, record(Some("pod-a"), Some(15), Some(6)), &format!("6@{renewed}"));
        let mut rv = 4u64;
        let mut put = |el: &mut Elector, w: &Write, second: f64, store: &mut Versioned| {
            let ticket = el.write_sent(w, at(t0, second));
            if w.resource_version() == Some(store.resource_version.as_str()) {
                rv += 1;
                let mut stored = versioned(rv, w.record.clone());
                stored.metadata.annotations = w.metadata.annotations.clone();
                *store = stored.clone();
                el.write_result(ticket, WriteResult::Applied(stored), at(t0, second + 0.01));
            } else {
                el.write_result(ticket, WriteResult::Conflict, at(t0, second + 0.01));
                el.observe(Some(store.clone()), at(t0, second + 0.02));
            }
        };
        a.observe(Some(store.clone()), t0);
        b.observe(Some(store.clone()), t0);
        let mut second = 0.0;
        while second < 12.0 {
            // Both act on what they knew before either write (the watch is a little late).
            let wa = match a.next(clock_back(second)) {
                Action::Write(w) => Some(w),
                _ => None,
            };
            let wb = match b.next(clock_back(second)) {
                Action::Write(w) => Some(w),
                _ => None,
            };
            // Whichever is first varies (both on one retry period, drifting).
            if (second as u64 / 2) % 2 == 1 {
                if let Some(w) = wb {
                    put(&mut b, &w, second, &mut store);
                }
                if let Some(w) = wa {
                    put(&mut a, &w, second, &mut store);
                }
            } else {
                if let Some(w) = wa {
                    put(&mut a, &w, second, &mut store);
                }
                if let Some(w) = wb {
                    put(&mut b, &w, second, &mut store);
                }
            }
            a.observe(Some(store.clone()), at(t0, second + 0.05));
            b.observe(Some(store.clone()), at(t0, second + 0.05));
            second += 2.0;
        }
        eprintln!(
            "a held {:?} lost {:?}; b held {:?} lost {:?}",
            a.held().is_some(),
            a.lost,
            b.held().is_some(),
            b.lost
        );
        assert!(
            !(a.held().is_some() && b.held().is_some()),
            "two side-cars of one identity both hold after 6 renewals each (stored {:?})",
            store.record.renew_time
        );
    }

    fn marked_by_a_side_car(rv: u64, record: LeaseSpec, token: &str) -> Versioned {
        let mut versioned = versioned(rv, record);
        versioned.metadata.annotations = Some([(SIDECAR_ANNOTATION.to_string(), token.to_string())].into());
        versioned
    }

    /// Found by review: a side-car adopted the record of an `mpsync lock` given its identity, while that
    /// lock's child ran. It adopts only a record a side-car marked for that record's token and renewal:
    /// not one with no mark, nor one whose mark another writer carried over to its own acquisition, nor
    /// a client-go elector's renewal of a side-car's record (under the same identity it keeps the token
    /// and the annotations). Those are another process's (an identity collision): waited out. A writer
    /// other than a side-car drops the mark.
    #[test]
    fn the_side_car_adopts_only_a_record_a_side_car_wrote() {
        let t0 = Instant::now();
        let renewed = wall(-50).0.as_microsecond();
        for current in [
            versioned(4, record(Some("pod-a"), Some(15), Some(6))),
            marked_by_a_side_car(4, record(Some("pod-a"), Some(15), Some(7)), &format!("6@{renewed}")),
            marked_by_a_side_car(4, record(Some("pod-a"), Some(15), Some(6)), &format!("6@{}", renewed - 1)),
            marked_by_a_side_car(4, record(Some("pod-a"), Some(15), Some(6)), "6"),
        ] {
            let mut elector = Elector::adopting("pod-a", TIMING);
            elector.observe(Some(current), t0);
            assert!(elector.take_collision(), "an identity collision");
            assert_eq!(elector.next(now(t0, 0.0)), Action::WaitUntil(t0 + Duration::from_secs(15)));
        }
        let mut lock = Elector::new("me", TIMING);
        lock.observe(Some(marked_by_a_side_car(4, record(Some(""), Some(1), Some(6)), "6")), t0);
        let write = expect_write(lock.next(now(t0, 0.0)));
        assert!(!write.metadata.annotations.as_ref().unwrap().contains_key(SIDECAR_ANNOTATION));
    }

    fn annotated(rv: u64, record: LeaseSpec, slots: &str) -> Versioned {
        let mut versioned = versioned(rv, record);
        versioned.metadata.annotations = Some([(SLOTS_ANNOTATION.to_string(), slots.to_string())].into());
        versioned
    }

    #[test]
    fn a_slot_writes_its_count_refuses_another_count_and_waits_out_a_plain_hold() {
        let t0 = Instant::now();
        let mut slot = Elector::new("me", TIMING).with_slots(3);
        slot.observe(None, t0);
        let write = expect_write(slot.next(now(t0, 0.0)));
        assert_eq!(write.metadata.annotations.as_ref().unwrap()[SLOTS_ANNOTATION], "3");

        let mut slot = Elector::new("me", TIMING).with_slots(3);
        slot.observe(Some(annotated(4, record(Some(""), Some(1), Some(2)), "2")), t0);
        let refusal = Refusal::SlotCountMismatch { recorded: "2".into(), ours: 3 };
        assert_eq!(slot.next(now(t0, 0.0)), Action::Refuse(refusal.clone()), "even when free");
        assert_eq!(slot.refusal(), Some(refusal));

        // A plain lease's hold is waited out as any other (the campaign refuses it if it is renewed
        // meanwhile), then becomes a slot (found by review, helper-162: refused at sight, for ever).
        let mut slot = Elector::new("me", TIMING).with_slots(3);
        slot.observe(Some(versioned(4, record(Some("plain-holder"), Some(15), Some(2)))), t0);
        assert_eq!(slot.refusal(), None);
        assert_eq!(slot.next(now(t0, 0.0)), Action::WaitUntil(at(t0, 15.0)));
        assert_eq!(slot.next(now(t0, 15.0)), Action::Read);
        slot.observe(Some(versioned(4, record(Some("plain-holder"), Some(15), Some(2)))), at(t0, 15.0));
        let write = expect_write(slot.next(now(t0, 15.0)));
        assert_eq!(write.record.holder_identity.as_deref(), Some("me"));
        assert_eq!(write.metadata.annotations.as_ref().unwrap()[SLOTS_ANNOTATION], "3");
        // A free plain lease of that name becomes a slot.
        let mut slot = Elector::new("me", TIMING).with_slots(3);
        slot.observe(Some(versioned(4, record(Some(""), Some(1), Some(2)))), t0);
        assert!(matches!(slot.next(now(t0, 0.0)), Action::Write(_)));
    }

    /// Found by review (helper-175): a plain lease's writes carry no slot count, also when its held record
    /// got one meanwhile (the file backend put a record deleted under its holder back with a semaphore's
    /// count, and the holder renewed it on, taken for a slot's).
    #[test]
    fn a_plain_holders_renewal_carries_no_slot_count() {
        let t0 = Instant::now();
        let mut plain = holding(t0);
        let held = plain.current().unwrap().record.clone();
        plain.observe(Some(annotated(3, held, "2")), at(t0, 0.5));
        assert!(plain.held().is_some());
        let renewal = expect_write(after_a_read(&mut plain, now(t0, 2.0)));
        assert_eq!(renewal.record.holder_identity.as_deref(), Some("me"));
        assert_eq!(renewal.resource_version(), Some("3"));
        assert!(!renewal.metadata.annotations.unwrap_or_default().contains_key(SLOTS_ANNOTATION));
    }

    #[test]
    fn a_plain_lock_refuses_a_lease_that_belongs_to_a_semaphore() {
        let t0 = Instant::now();
        let mut plain = Elector::new("me", TIMING);
        plain.observe(Some(annotated(4, record(Some(""), Some(1), Some(2)), "2")), t0);
        assert_eq!(plain.next(now(t0, 0.0)), Action::Refuse(Refusal::IsASlot { recorded: "2".into() }));
    }

    #[test]
    fn the_semaphore_marker_fixes_the_count_first_come() {
        let Marker::Write(create) = semaphore_marker(None, 3, None) else { panic!() };
        assert!(create.is_create());
        assert_eq!(create.record.holder_identity, None, "the marker is never held");
        let marker = annotated(5, create.record.clone(), "3");
        assert_eq!(semaphore_marker(Some(&marker), 3, None), Marker::Ready);
        assert_eq!(
            semaphore_marker(Some(&marker), 2, None),
            Marker::Refuse(Refusal::SlotCountMismatch { recorded: "3".into(), ours: 2 })
        );
        let held_plain = versioned(6, record(Some("someone"), Some(15), Some(0)));
        assert!(matches!(semaphore_marker(Some(&held_plain), 2, None), Marker::Refuse(Refusal::NotASlot { .. })));
        let free_plain = versioned(6, record(Some(""), Some(1), Some(0)));
        let Marker::Write(mark) = semaphore_marker(Some(&free_plain), 2, None) else { panic!() };
        assert_eq!(mark.resource_version(), Some("6"));
        // A plain hold waited out unchanged is free: marked, its holder cleared (found by review, helper-162).
        let Marker::Write(mark) = semaphore_marker(Some(&held_plain), 2, Some(&held_plain.record)) else { panic!() };
        assert_eq!((mark.resource_version(), mark.record.holder_identity.as_deref()), (Some("6"), None));
        assert_eq!(mark.metadata.annotations.as_ref().unwrap()[SLOTS_ANNOTATION], "2");
        // Another record than the one waited out (renewed meanwhile) is not.
        let renewed = versioned(7, record(Some("someone"), Some(15), Some(0)));
        let mut waited = held_plain.record.clone();
        waited.renew_time = None;
        assert!(matches!(semaphore_marker(Some(&renewed), 2, Some(&waited)), Marker::Refuse(Refusal::NotASlot { .. })));
    }

    #[test]
    fn a_lone_waiter_takes_a_freed_lease_at_once() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        elector.observe(Some(versioned(3, record(Some("other"), Some(15), Some(0)))), t0);
        elector.observe_event(WatchUpdate::Present(versioned(4, record(Some(""), Some(1), Some(0)))), at(t0, 1.0));
        assert!(matches!(elector.next(now(t0, 1.0)), Action::Write(_)));
    }

    /// A watching waiter that tried a free lease at `t0` and lost the race (409).
    fn lost_one_race(t0: Instant) -> Elector {
        let mut elector = Elector::new("me", TIMING).with_seed(7);
        elector.set_watching(true);
        elector.observe(Some(versioned(3, record(Some(""), Some(1), Some(0)))), t0);
        let write = expect_write(elector.next(now(t0, 0.0)));
        let ticket = elector.write_sent(&write, t0);
        elector.write_result(ticket, WriteResult::Conflict, t0);
        assert_eq!(elector.contenders(), CONTENTION_GROWTH);
        elector
    }

    #[test]
    fn after_lost_races_attempts_on_a_freed_lease_are_spread_out() {
        let t0 = Instant::now();
        let mut elector = lost_one_race(t0);
        // While watching, the lost race waits for the winner's event rather than reading.
        assert_eq!(elector.next(now(t0, 0.0)), Action::WaitUntil(at(t0, 2.0)));
        assert_eq!(elector.next(now(t0, 2.0)), Action::Read, "no event came: read");
        elector
            .observe_event(WatchUpdate::Present(versioned(4, record(Some("winner"), Some(15), Some(1)))), at(t0, 0.01));
        // The winner's write came 10 ms after ours was sent: attempts are spread 4 x 10 ms per contender.
        assert_eq!(elector.stagger(), Duration::from_millis(40));
        // The winner releases: this waiter leaves the first 10 ms to any process that believes it is
        // alone, then tries within 15 contenders x 40 ms (the handoff to the winner faded the belief by 1 %).
        elector.observe_event(WatchUpdate::Present(versioned(5, record(Some(""), Some(1), Some(1)))), at(t0, 1.0));
        let Action::WaitUntil(try_at) = elector.next(now(t0, 1.0)) else { panic!("staggered") };
        assert!(try_at >= at(t0, 1.01) && try_at <= at(t0, 1.61), "{:?}", try_at - at(t0, 1.0));
        assert!(matches!(elector.next(Now::at(try_at, wall(1))), Action::Write(_)));
    }

    #[test]
    fn a_waiter_that_acquires_sheds_its_belief_in_contention() {
        let t0 = Instant::now();
        let mut elector = lost_one_race(t0);
        // Later, alone: the freed lease is taken after the stagger, and the belief halves.
        elector
            .observe_event(WatchUpdate::Present(versioned(4, record(Some("winner"), Some(15), Some(1)))), at(t0, 0.01));
        elector.observe_event(WatchUpdate::Present(versioned(5, record(Some(""), Some(1), Some(1)))), at(t0, 1.0));
        let Action::WaitUntil(try_at) = elector.next(now(t0, 1.0)) else { panic!("staggered") };
        let write = expect_write(elector.next(Now::at(try_at, wall(1))));
        let ticket = elector.write_sent(&write, try_at);
        elector.write_result(ticket, WriteResult::Applied(versioned(6, write.record.clone())), try_at);
        assert!(elector.held().is_some());
        // The handoff to the winner faded it a little; the acquisition halves it.
        assert_eq!(elector.contenders(), CONTENTION_GROWTH * CONTENTION_DECAY * CONTENTION_DECAY_ON_ACQUIRE);
    }

    #[test]
    fn a_freed_lease_found_taken_at_the_last_look_before_writing_counts_as_a_race_lost() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        elector.set_watching(true);
        elector.observe(Some(versioned(3, record(Some("other"), Some(15), Some(0)))), t0);
        elector.observe_event(WatchUpdate::Present(versioned(4, record(Some(""), Some(1), Some(0)))), at(t0, 1.0));
        assert!(matches!(elector.next(now(t0, 1.0)), Action::Write(_)), "alone as far as it knows: at once");
        // The driver's last look before it writes shows another process's acquisition: no write, and no
        // 409, but a race lost all the same.
        elector
            .observe_event(WatchUpdate::Present(versioned(5, record(Some("quick"), Some(15), Some(1)))), at(t0, 1.0));
        elector.beaten_before_sending();
        assert_eq!(elector.contenders(), CONTENTION_GROWTH);
        // A quick handoff to another seen without losing fades the belief by 1 %.
        elector.observe_event(WatchUpdate::Present(versioned(6, record(Some(""), Some(1), Some(1)))), at(t0, 2.0));
        elector
            .observe_event(WatchUpdate::Present(versioned(7, record(Some("quick2"), Some(15), Some(2)))), at(t0, 2.0));
        assert_eq!(elector.contenders(), CONTENTION_GROWTH * CONTENTION_DECAY);
    }

    /// A crowd drains (`lock` waiters leave after their turn): a freed lease stays free longer, which
    /// brings the belief down to what the wait shows, not 1 % at a time.
    #[test]
    fn a_lease_that_stays_free_long_before_another_takes_it_brings_the_belief_down() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING).with_seed(5);
        elector.set_watching(true);
        elector.contenders = 101.0;
        // Released: this waiter draws within 100 x 10 ms = 1 s, after a first window of 10 ms.
        elector.observe_event(WatchUpdate::Present(versioned(4, record(Some(""), Some(1), Some(0)))), at(t0, 1.0));
        // Another takes it 220 ms later: less the first window and the 10 ms a write takes to arrive, the
        // first of the others' draws came after 200 ms, as it does with about 5 contenders, not 100.
        elector.observe_event(WatchUpdate::Present(versioned(5, record(Some("b"), Some(15), Some(1)))), at(t0, 1.22));
        assert!((elector.contenders() - 5.0).abs() < 1e-6, "{}", elector.contenders());
        // A quick taker changes nothing beyond the 1 %.
        elector.observe_event(WatchUpdate::Present(versioned(6, record(Some(""), Some(1), Some(1)))), at(t0, 2.0));
        elector.observe_event(WatchUpdate::Present(versioned(7, record(Some("c"), Some(15), Some(2)))), at(t0, 2.005));
        assert!((elector.contenders() - 5.0 * CONTENTION_DECAY).abs() < 1e-6, "{}", elector.contenders());
    }

    /// A newcomer (alone as far as it knows) tries a freed lease at once; a process that believes in a
    /// crowd never tries it within the first window (10 ms, scaled down below two contenders), so the
    /// newcomer's write is seen before the crowd's earliest draws instead of colliding with them.
    #[test]
    fn a_waiter_that_believes_in_a_crowd_leaves_the_first_window_to_a_newcomer() {
        let t0 = Instant::now();
        let freed = || WatchUpdate::Present(versioned(4, record(Some(""), Some(1), Some(0))));
        let mut newcomer = Elector::new("new", TIMING);
        newcomer.set_watching(true);
        newcomer.observe(Some(versioned(3, record(Some("other"), Some(15), Some(0)))), t0);
        newcomer.observe_event(freed(), at(t0, 1.0));
        assert!(matches!(newcomer.next(now(t0, 1.0)), Action::Write(_)), "alone as far as it knows: at once");
        for (belief, window) in [(100.0, 0.010), (2.0, 0.010), (1.5, 0.005)] {
            for seed in 1..200 {
                let mut old = Elector::new("old", TIMING).with_seed(seed);
                old.set_watching(true);
                old.contenders = belief;
                old.observe(Some(versioned(3, record(Some("other"), Some(15), Some(0)))), t0);
                old.observe_event(freed(), at(t0, 1.0));
                let Action::WaitUntil(try_at) = old.next(now(t0, 1.0)) else { panic!("staggered") };
                let delay = (try_at - at(t0, 1.0)).as_secs_f64();
                let widest = window + STAGGER_PER_CONTENDER.as_secs_f64() * (belief - 1.0);
                assert!(delay >= window && delay <= widest + 1e-9, "belief {belief}, seed {seed}: {delay}");
            }
        }
    }

    #[test]
    fn an_acquisition_says_how_many_contenders_its_writer_believed_in() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        elector.observe(Some(versioned(3, record(Some(""), Some(1), Some(4)))), t0);
        let write = expect_write(elector.next(now(t0, 0.0)));
        let annotations = write.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(annotations.get(CONTENDERS_ANNOTATION).map(String::as_str), Some("1.0@5"));
        let stored = Versioned { resource_version: "4".into(), record: write.record, metadata: write.metadata };
        assert_eq!(recorded_contenders(&stored), Some(1.0));
        // Kept by a writer that does not know it, under another token, it says nothing.
        let mut kept = stored.clone();
        kept.record.lease_transitions = Some(6);
        assert_eq!(recorded_contenders(&kept), None);
        // Found by review: never what makes a record too large (256 KiB of annotations on Kubernetes, a
        // 1 MiB record on the file backend). Left out, and a stale one removed, beside 128 KiB of others.
        let mut large = stored;
        large.record.holder_identity = Some(String::new());
        large.metadata.annotations.get_or_insert_with(Default::default).insert("note".into(), "x".repeat(128 * 1024));
        let mut elector = Elector::new("me", TIMING);
        elector.observe(Some(large), t0);
        let write = expect_write(elector.next(now(t0, 0.0)));
        let annotations = write.metadata.annotations.unwrap_or_default();
        assert!(!annotations.contains_key(CONTENDERS_ANNOTATION) && annotations.contains_key("note"));
    }

    /// A crowd that nobody joins (a queue that drains) stops leaving the first window to newcomers that
    /// never come: the winners' records say they believed in a crowd too. Winners that tried at once
    /// (newcomers; or writers that do not say, or say it for another token) keep the window whole, and
    /// its length follows how late after the release their acquisitions arrived (half as long again,
    /// within 5 and 30 ms).
    #[test]
    fn a_crowd_that_nobody_joins_stops_leaving_the_first_window() {
        let t0 = Instant::now();
        let cases: [(Option<&str>, f64, f64); 7] = [
            (Some("16.0"), 0.005, 0.010 * 0.512),
            (Some("1.0"), 0.005, 0.0075),
            (None, 0.005, 0.0075),
            (Some("other token"), 0.005, 0.0075),
            (Some("1.0"), 0.016, 0.024),
            (Some("1.0"), 0.025, 0.030),
            // Later than the widest window: nothing learned, the window stays 10 ms.
            (Some("1.0"), 0.031, 0.010),
        ];
        for (said, gap, floor) in cases {
            let mut elector = Elector::new("me", TIMING).with_seed(11);
            elector.set_watching(true);
            elector.contenders = 100.0;
            elector.observe(Some(versioned(3, record(Some("first"), Some(15), Some(0)))), t0);
            let mut rv = 4;
            let mut t = 1.0;
            for token in 1..=3 {
                elector.observe_event(
                    WatchUpdate::Present(versioned(rv, record(Some(""), Some(1), Some(token - 1)))),
                    at(t0, t),
                );
                // Taken `gap` later, before the crowd's first window ended: nothing learned about its size.
                let mut won = versioned(rv + 1, record(Some(&format!("w{token}")), Some(15), Some(token)));
                let value = match said {
                    Some("other token") => Some(format!("16.0@{}", token + 1)),
                    Some(belief) => Some(format!("{belief}@{token}")),
                    None => None,
                };
                won.metadata.annotations = value.map(|v| [(CONTENDERS_ANNOTATION.to_string(), v)].into());
                elector.observe_event(WatchUpdate::Present(won), at(t0, t + gap));
                rv += 2;
                t += 1.0;
            }
            elector.observe_event(WatchUpdate::Present(versioned(rv, record(Some(""), Some(1), Some(3)))), at(t0, t));
            let drawn = elector.free_try_at.as_ref().expect("a draw").floor.as_secs_f64();
            assert!((drawn - floor).abs() < 1e-9, "{said:?}: a first window of {drawn} s, not {floor} s");
            let Action::WaitUntil(try_at) = elector.next(now(t0, t)) else { panic!("staggered") };
            assert!(try_at >= at(t0, t + floor - 1e-9), "{said:?}");
        }
    }

    /// Found by review: a free record whose version keeps changing (its metadata touched every 5 ms,
    /// more often than the first window) is still tried by a process that believes in a crowd: the draw
    /// made when it was freed stands.
    #[test]
    fn a_free_lease_touched_more_often_than_the_first_window_is_still_tried() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING).with_seed(3);
        elector.set_watching(true);
        elector.contenders = 100.0;
        elector.observe(Some(versioned(3, record(Some("other"), Some(15), Some(0)))), t0);
        let mut t = 1.0;
        for version in 4..4000 {
            elector
                .observe_event(WatchUpdate::Present(versioned(version, record(Some(""), Some(1), Some(0)))), at(t0, t));
            if matches!(elector.next(now(t0, t + 0.0049)), Action::Write(_)) {
                return;
            }
            t += 0.005;
        }
        panic!("a free lease touched every 5 ms for 20 s was never tried");
    }

    /// Found by review: a race lost counts the same whether its 409 or the winner's event comes first
    /// (how long the lease stayed free says nothing of the others once this process tried it).
    #[test]
    fn a_lost_race_counts_the_same_whichever_comes_first() {
        let t0 = Instant::now();
        let mut beliefs = Vec::new();
        for event_first in [false, true] {
            let mut elector = Elector::new("me", TIMING).with_seed(5);
            elector.set_watching(true);
            elector.contenders = 11.0;
            elector.observe_event(WatchUpdate::Present(versioned(4, record(Some(""), Some(1), Some(0)))), at(t0, 1.0));
            let Action::WaitUntil(try_at) = elector.next(now(t0, 1.0)) else { panic!("staggered") };
            let write = expect_write(elector.next(Now::at(try_at, wall(1))));
            let ticket = elector.write_sent(&write, try_at);
            let winner = WatchUpdate::Present(versioned(5, record(Some("b"), Some(15), Some(1))));
            let ms = Duration::from_millis(1);
            if event_first {
                elector.observe_event(winner, try_at + ms);
                elector.write_result(ticket, WriteResult::Conflict, try_at + 3 * ms);
            } else {
                elector.write_result(ticket, WriteResult::Conflict, try_at + ms);
                elector.observe_event(winner, try_at + 3 * ms);
            }
            beliefs.push(elector.contenders());
        }
        let expected = 11.0 * CONTENTION_DECAY * CONTENTION_GROWTH;
        assert!(beliefs.iter().all(|b| (b - expected).abs() < 1e-6), "{beliefs:?}, expected {expected}");
    }

    /// Found by review: a handoff that follows our own release is no race lost (nobody contended with us),
    /// nor is a lease seen free and then taken by a process that was not campaigning (the side-car's
    /// reads): neither makes it slower to take a free lease later.
    #[test]
    fn handoffs_seen_without_campaigning_are_no_races_lost() {
        let t0 = Instant::now();
        let mut elector = holding(t0);
        elector.set_watching(true);
        let release = elector.release(now(t0, 1.0)).expect("ours");
        apply(&mut elector, &release, 3, at(t0, 1.0), at(t0, 1.0));
        elector.released();
        elector
            .observe_event(WatchUpdate::Present(versioned(4, record(Some("other"), Some(15), Some(5)))), at(t0, 5.0));
        assert_eq!(elector.contenders(), 1.0, "a release of ours, then taken: nothing lost");

        let mut sidecar = Elector::adopting("pod-a", TIMING).with_seed(3);
        sidecar.observe(Some(versioned(3, record(Some(""), Some(1), Some(0)))), t0);
        sidecar.observe(Some(versioned(4, record(Some("pod-b"), Some(15), Some(1)))), at(t0, 1.0));
        sidecar.observe(Some(versioned(5, record(Some(""), Some(1), Some(1)))), at(t0, 2.0));
        sidecar.observe(Some(versioned(6, record(Some("pod-c"), Some(15), Some(2)))), at(t0, 3.0));
        sidecar.observe(Some(versioned(7, record(Some(""), Some(1), Some(2)))), at(t0, 4.0));
        assert!(matches!(sidecar.next(now(t0, 4.0)), Action::Write(_)), "a free lock, and this side-car never raced");
    }

    /// Found by review: after a crowd drains (each `lock` waiter leaves after its turn), a waiter left
    /// alone never waits out more than half a lease duration on a free lease, whatever it learnt.
    #[test]
    fn a_waiter_left_alone_after_a_crowd_waits_at_most_half_a_lease_duration_on_a_free_lease() {
        let timing = Timing {
            lease_duration: Duration::from_secs(4),
            renew_deadline: Duration::from_secs(2),
            retry_period: Duration::from_millis(500),
        };
        let t0 = Instant::now();
        let mut worst = Duration::ZERO;
        for seed in 0..50u64 {
            let mut elector = Elector::new("me", timing).with_seed(seed * 7919 + 1);
            elector.set_watching(true);
            let (mut rv, mut t) = (1, 0.0);
            for _ in 0..5 {
                // Free, tried, lost (409); the winner's write arrives late (the widest stagger).
                elector
                    .observe_event(WatchUpdate::Present(versioned(rv, record(Some(""), Some(1), Some(0)))), at(t0, t));
                let write = expect_write(after_a_read(&mut elector, now(t0, t + 10.0)));
                let ticket = elector.write_sent(&write, at(t0, t + 10.0));
                elector.write_result(ticket, WriteResult::Conflict, at(t0, t + 10.01));
                elector.observe_event(
                    WatchUpdate::Present(versioned(rv + 1, record(Some("x"), Some(4), Some(1)))),
                    at(t0, t + 10.5),
                );
                (rv, t) = (rv + 2, t + 20.0);
            }
            assert_eq!(elector.stagger(), MAX_STAGGER_PER_CONTENDER);
            // Alone now: the lease is released and nobody else wants it.
            elector.observe_event(WatchUpdate::Present(versioned(rv, record(Some(""), Some(1), Some(2)))), at(t0, t));
            if let Action::WaitUntil(until) = elector.next(now(t0, t)) {
                worst = worst.max(until - at(t0, t));
            }
        }
        assert!(worst > Duration::from_secs(1), "it did learn a crowd: {worst:?}");
        assert!(worst <= timing.lease_duration / 2, "waited {worst:?} on a free lease with nobody else contending");
    }

    #[test]
    fn the_spread_follows_how_late_the_winners_write_reaches_a_loser() {
        let t0 = Instant::now();
        let mut slow = lost_one_race(t0);
        assert_eq!(slow.stagger(), STAGGER_PER_CONTENDER, "nothing measured yet");
        slow.observe_event(WatchUpdate::Present(versioned(4, record(Some("winner"), Some(15), Some(1)))), at(t0, 0.02));
        assert_eq!(slow.stagger(), Duration::from_millis(80));
        // A very late event widens it only so far.
        let mut slower = lost_one_race(t0);
        slower
            .observe_event(WatchUpdate::Present(versioned(4, record(Some("winner"), Some(15), Some(1)))), at(t0, 5.0));
        assert_eq!(slower.stagger(), MAX_STAGGER_PER_CONTENDER);
        // A quick one never narrows it below the default.
        let mut quick = lost_one_race(t0);
        quick.observe_event(WatchUpdate::Present(versioned(4, record(Some("winner"), Some(15), Some(1)))), at(t0, 0.0));
        assert_eq!(quick.stagger(), STAGGER_PER_CONTENDER);
        // A read that shows the winner measures nothing (the event did not come first).
        let mut read = lost_one_race(t0);
        read.observe(Some(versioned(4, record(Some("winner"), Some(15), Some(1)))), at(t0, 0.02));
        read.observe_event(WatchUpdate::Present(versioned(5, record(Some("winner"), Some(15), Some(1)))), at(t0, 0.05));
        assert_eq!(read.stagger(), STAGGER_PER_CONTENDER);
    }

    #[test]
    fn a_race_lost_to_a_write_already_seen_waits_for_no_further_event() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING).with_seed(7);
        elector.set_watching(true);
        elector.observe(Some(versioned(3, record(Some(""), Some(1), Some(0)))), t0);
        let write = expect_write(elector.next(now(t0, 0.0)));
        let ticket = elector.write_sent(&write, t0);
        // The winner's event overtakes the answer to our write.
        elector
            .observe_event(WatchUpdate::Present(versioned(4, record(Some("winner"), Some(15), Some(1)))), at(t0, 0.03));
        elector.write_result(ticket, WriteResult::Conflict, at(t0, 0.04));
        assert_eq!(elector.contenders(), CONTENTION_GROWTH);
        assert_eq!(elector.stagger(), Duration::from_millis(100), "measured from the event: 30 ms");
        // What it knows is the winner's record: it waits out that holder, and reads nothing meanwhile.
        assert_eq!(elector.next(now(t0, 2.5)), Action::WaitUntil(at(t0, 15.03)));
    }

    /// Found by review (helper-176): an acquisition answered 409 or 429 may have been committed (a proxy's
    /// retry of it): until a read, or a record at another version than its base, shows what became of it, it
    /// is in doubt (no other slot of the process acquires), and the campaign reads once the awaited event
    /// did not come.
    #[test]
    fn an_acquisition_refused_409_or_429_is_in_doubt_until_a_read_or_a_newer_record() {
        let t0 = Instant::now();
        for result in [WriteResult::Conflict, WriteResult::NotApplied] {
            let mut elector = Elector::new("me", TIMING).with_seed(7);
            elector.set_watching(true);
            elector.observe(Some(versioned(3, record(Some(""), Some(1), Some(0)))), t0);
            let write = expect_write(elector.next(now(t0, 0.0)));
            let ticket = elector.write_sent(&write, t0);
            elector.write_result(ticket, result.clone(), at(t0, 0.1));
            assert!(elector.acquisition_in_doubt(), "{result:?}");
            assert!(matches!(elector.next(now(t0, 3.0)), Action::Read), "{result:?}: no event came: a read");
            // An event at the same version settles nothing; one at the next does, whoever wrote it.
            elector.observe_event(WatchUpdate::Present(versioned(3, record(Some(""), Some(1), Some(0)))), at(t0, 0.2));
            assert!(elector.acquisition_in_doubt(), "{result:?}");
            elector.observe_event(
                WatchUpdate::Present(versioned(4, record(Some("winner"), Some(15), Some(1)))),
                at(t0, 0.3),
            );
            assert!(!elector.acquisition_in_doubt(), "{result:?}");
        }
        // A read settles it, and shows our own write: taken again, not another's.
        let mut elector = Elector::new("me", TIMING);
        elector.observe(Some(versioned(3, record(Some(""), Some(1), Some(0)))), t0);
        let write = expect_write(elector.next(now(t0, 0.0)));
        let ticket = elector.write_sent(&write, t0);
        elector.write_result(ticket, WriteResult::Conflict, at(t0, 0.1));
        elector.observe(Some(versioned(4, write.record.clone())), at(t0, 0.2));
        assert!(!elector.acquisition_in_doubt());
        assert!(!elector.take_collision(), "its own write");
        assert!(matches!(elector.next(now(t0, 0.2)), Action::Write(_)), "its own record is taken again");
    }

    /// Found by review (helper-176): a release refused 409 (a proxy's retry of it after the commit), and a read
    /// that shows another holder at a version past the release's: the release landed and the lease went on.
    #[test]
    fn a_refused_release_read_taken_over_at_a_newer_version_went_on() {
        let t0 = Instant::now();
        let mut elector = holding(t0);
        let release = elector.release(now(t0, 1.0)).expect("ours to give back");
        let base: u64 = release.resource_version().unwrap().parse().unwrap();
        let ticket = elector.write_sent(&release, at(t0, 1.0));
        elector.write_result(ticket, WriteResult::Conflict, at(t0, 1.1));
        assert!(!elector.release_went_on());
        elector.observe(Some(versioned(base + 2, record(Some("waiter"), Some(15), Some(5)))), at(t0, 1.2));
        assert!(elector.release_went_on());
        // Or already released by it: free, with its token.
        elector.observe(Some(versioned(base + 3, record(Some(""), Some(1), Some(5)))), at(t0, 1.3));
        assert!(elector.release_went_on());
        // A record under our own identity that is not ours (a co-holder's), or our hold made free by hand
        // (our token), is no sign of it.
        let mut elector = holding(t0);
        let release = elector.release(now(t0, 1.0)).expect("ours to give back");
        let ticket = elector.write_sent(&release, at(t0, 1.0));
        elector.write_result(ticket, WriteResult::Conflict, at(t0, 1.1));
        elector.observe(Some(versioned(base + 2, record(Some("me"), Some(15), Some(4)))), at(t0, 1.2));
        assert!(!elector.release_went_on());
        elector.observe(Some(versioned(base + 3, record(Some(""), Some(15), Some(4)))), at(t0, 1.3));
        assert!(!elector.release_went_on());
        // Nor our hold with its token raised by hand (found by review, helper-186): it names us until it
        // expires.
        elector.observe(Some(versioned(base + 4, record(Some("me"), Some(15), Some(5)))), at(t0, 1.4));
        assert!(!elector.release_went_on());
    }

    #[test]
    fn a_lost_race_without_a_watch_reads_at_once() {
        let t0 = Instant::now();
        let mut elector = Elector::new("me", TIMING);
        elector.observe(None, t0);
        let write = expect_write(elector.next(now(t0, 0.0)));
        let ticket = elector.write_sent(&write, t0);
        elector.write_result(ticket, WriteResult::Conflict, t0);
        assert_eq!(elector.next(now(t0, 0.0)), Action::Read);
    }

    #[test]
    fn release_clears_holder_and_sets_duration_one() {
        let t0 = Instant::now();
        let elector = holding(t0);
        let write = elector.release(now(t0, 3.0)).unwrap();
        assert_eq!(write.resource_version(), Some("2"));
        assert_eq!(write.record.holder_identity.as_deref(), Some(""));
        assert_eq!(write.record.lease_duration_seconds, Some(1));
        assert_eq!(write.record.lease_transitions, Some(4), "release keeps the token");
        assert_stamped(write.record.renew_time.as_ref(), wall(3));
    }

    #[test]
    fn forget_loss_campaigns_afresh() {
        let t0 = Instant::now();
        let mut elector = holding(t0);
        elector.observe(Some(versioned(3, record(Some("thief"), Some(15), Some(5)))), t0);
        elector.forget_loss();
        assert_eq!(elector.next(now(t0, 0.0)), Action::Read);
        elector.observe(Some(versioned(3, record(Some("thief"), Some(15), Some(5)))), at(t0, 1.0));
        assert!(matches!(elector.next(now(t0, 1.0)), Action::WaitUntil(_)));
    }

    /// Found by review (helper-128): an acquisition of ours whose answer was lost and that a read shows only after its
    /// send + the lease duration (the process cut off meanwhile): by the rule of `no_give_back_from`, another may have
    /// taken over since and an etcd restore may show this very record again, so it must not be given back.
    #[test]
    fn an_acquisition_learned_past_its_send_plus_the_duration_is_not_given_back() {
        let t0 = Instant::now();
        let mut a = Elector::new("me", TIMING);
        a.observe(Some(versioned(1, record(Some(""), Some(1), Some(3)))), t0);
        let w = expect_write(a.next(now(t0, 0.0)));
        let ticket = a.write_sent(&w, t0);
        a.write_result(ticket, WriteResult::Unknown, at(t0, 0.1));
        // Cut off: the first read that gets through, 20 s later, shows the write landed (or a restore shows it).
        a.observe(Some(versioned(2, w.record.clone())), at(t0, 20.0));
        assert!(a.held().is_none(), "learned too late to hold");
        assert!(!matches!(a.next(now(t0, 20.0)), Action::Write(_)), "taken again at once");
        assert!(a.release(now(t0, 20.0)).is_none(), "given back 20 s after it was sent (lease duration 15 s)");
    }

    /// Found by review (helper-128): a lapse of an earlier hold leaves `no_give_back_from` set; a later write of ours
    /// that landed without making a hold (learned past its renew deadline, but well within its lease duration) is then
    /// never given back, although nobody can have taken over yet.
    #[test]
    fn a_stale_no_give_back_from_does_not_block_a_later_records_give_back() {
        let t0 = Instant::now();
        let mut a = holding(t0);
        assert!(matches!(a.next(now(t0, 11.0)), Action::Lost(_)));
        a.lapsed();
        a.released();
        a.forget_loss();
        a.observe(Some(versioned(3, record(Some(""), Some(1), Some(4)))), at(t0, 100.0));
        let w = match after_a_read(&mut a, now(t0, 120.0)) {
            Action::Write(w) => w,
            other => panic!("{other:?}"),
        };
        let ticket = a.write_sent(&w, at(t0, 120.0));
        a.write_result(ticket, WriteResult::Unknown, at(t0, 120.1));
        a.observe(Some(versioned(4, w.record.clone())), at(t0, 131.0));
        assert!(a.held().is_none());
        assert!(a.release(now(t0, 131.0)).is_some(), "its own record, 11 s after it was sent, not given back");
    }

    /// Found by review (helper-128): as above, for an acquisition given up unresolved (a stray: a library `acquire`
    /// whose settle could not read), whose record a later campaign reads past its send + the lease duration.
    #[test]
    fn a_stray_seen_past_its_send_plus_the_duration_is_neither_taken_at_once_nor_given_back() {
        let t0 = Instant::now();
        let mut a = Elector::new("me", TIMING);
        a.observe(Some(versioned(1, record(Some(""), Some(1), Some(3)))), t0);
        let w = expect_write(a.next(now(t0, 0.0)));
        let ticket = a.write_sent(&w, t0);
        a.write_result(ticket, WriteResult::Unknown, at(t0, 0.1));
        a.released();
        a.observe(Some(versioned(2, w.record.clone())), at(t0, 20.0));
        let release = a.release(now(t0, 20.0));
        let next = a.next(now(t0, 20.0));
        assert!(release.is_none() && !matches!(next, Action::Write(_)), "release {release:?}, next {next:?}");
    }

    fn stored(rv: u64, write: &Write) -> Versioned {
        let mut metadata = write.metadata.clone();
        metadata.resource_version = Some(rv.to_string());
        Versioned { resource_version: rv.to_string(), record: write.record.clone(), metadata }
    }

    /// Found by review (helper-129): a renewal sent while holding, answer lost, landing after the hold lapsed, learned
    /// within its own send + the lease duration: given back.
    #[test]
    fn late_renewal_learned_within_its_bound_is_given_back() {
        let t0 = Instant::now();
        let mut a = holding(t0);
        let r1 = expect_write(a.next(now(t0, 2.0)));
        apply(&mut a, &r1, 3, at(t0, 2.0), at(t0, 2.0));
        let r2 = expect_write(a.next(now(t0, 4.0)));
        let ticket = a.write_sent(&r2, at(t0, 4.0));
        a.write_result(ticket, WriteResult::Unknown, at(t0, 4.1));
        assert!(matches!(a.next(now(t0, 12.0)), Action::Lost(_)));
        a.lapsed();
        a.observe(Some(versioned(4, r2.record.clone())), at(t0, 13.0));
        assert!(a.release(now(t0, 13.0)).is_some(), "not given back within 4 + 15");
        // Learned past it instead: neither given back nor taken again at once.
        let mut b = holding(t0);
        let r1 = expect_write(b.next(now(t0, 2.0)));
        apply(&mut b, &r1, 3, at(t0, 2.0), at(t0, 2.0));
        let r2 = expect_write(b.next(now(t0, 4.0)));
        let ticket = b.write_sent(&r2, at(t0, 4.0));
        b.write_result(ticket, WriteResult::Unknown, at(t0, 4.1));
        assert!(matches!(b.next(now(t0, 12.0)), Action::Lost(_)));
        b.lapsed();
        b.forget_loss();
        b.observe(Some(versioned(4, r2.record.clone())), at(t0, 20.0));
        assert!(b.release(now(t0, 20.0)).is_none());
        assert!(!matches!(b.next(now(t0, 20.0)), Action::Write(_)));
        assert!(matches!(after_a_read(&mut b, now(t0, 35.5)), Action::Write(_)), "stalled past 20 + 15");
    }

    /// Found by review (helper-129): a side-car's acquisition, answer lost, learned past its send + the lease duration
    /// (an etcd restore may show it while another holds the lease): adopted at once?
    #[test]
    fn sidecar_stray_learned_late_is_not_adopted_at_once() {
        let t0 = Instant::now();
        let mut a = Elector::adopting("me", TIMING);
        a.observe(Some(versioned(1, record(Some(""), Some(1), Some(3)))), t0);
        let w = expect_write(a.next(now(t0, 0.0)));
        let ticket = a.write_sent(&w, t0);
        a.write_result(ticket, WriteResult::Unknown, at(t0, 0.1));
        a.observe(Some(stored(2, &w)), at(t0, 20.0));
        assert!(a.held().is_none(), "learned too late to hold");
        assert!(a.release(now(t0, 20.0)).is_none(), "given back");
        let next = a.next(now(t0, 20.0));
        assert!(!matches!(next, Action::Write(_)), "taken again at once: {next:?}");
    }

    /// Found by review (helper-129): same, the acquisition given up first (a stray), then seen late.
    #[test]
    fn sidecar_given_up_stray_seen_late_is_not_adopted_at_once() {
        let t0 = Instant::now();
        let mut a = Elector::adopting("me", TIMING);
        a.observe(Some(versioned(1, record(Some(""), Some(1), Some(3)))), t0);
        let w = expect_write(a.next(now(t0, 0.0)));
        let ticket = a.write_sent(&w, t0);
        a.write_result(ticket, WriteResult::Unknown, at(t0, 0.1));
        a.released();
        a.observe(Some(stored(2, &w)), at(t0, 20.0));
        assert!(a.release(now(t0, 20.0)).is_none(), "given back");
        let next = a.next(now(t0, 20.0));
        assert!(!matches!(next, Action::Write(_)), "taken again at once: {next:?}");
    }

    /// Found by review (helper-129): a side-car's hold lapses (cut off), the first read long after shows its own last
    /// renewal (restored): adopted at once?
    #[test]
    fn sidecar_lapsed_hold_seen_late_is_not_adopted_at_once() {
        let t0 = Instant::now();
        let mut a = Elector::adopting("me", TIMING);
        a.observe(Some(versioned(1, record(Some(""), Some(1), Some(3)))), t0);
        let w = expect_write(a.next(now(t0, 0.0)));
        let ticket = a.write_sent(&w, t0);
        a.write_result(ticket, WriteResult::Applied(stored(2, &w)), t0);
        assert!(a.held().is_some());
        assert!(matches!(a.next(now(t0, 11.0)), Action::Lost(_)));
        a.lapsed();
        a.forget_loss();
        assert_eq!(a.next(now(t0, 40.0)), Action::Read);
        a.observe(Some(stored(2, &w)), at(t0, 40.0));
        let next = a.next(now(t0, 40.0));
        assert!(!matches!(next, Action::Write(_)), "taken again at once: {next:?}");
    }

    /// Found by review (helper-129): as the side-car drives it: the read first, then the loss at the renew deadline,
    /// `lapse_seen`.
    #[test]
    fn sidecar_lapse_seen_late_waits_and_seen_early_adopts() {
        for (seen, adopted) in [(40.0, false), (12.0, true)] {
            let t0 = Instant::now();
            let mut a = Elector::adopting("me", TIMING);
            a.observe(Some(versioned(1, record(Some(""), Some(1), Some(3)))), t0);
            let w = expect_write(a.next(now(t0, 0.0)));
            let ticket = a.write_sent(&w, t0);
            a.write_result(ticket, WriteResult::Applied(stored(2, &w)), t0);
            a.observe(Some(stored(2, &w)), at(t0, seen));
            assert!(matches!(a.next(now(t0, seen)), Action::Lost(_)));
            a.lapse_seen(at(t0, seen));
            a.forget_loss();
            a.observe(Some(stored(2, &w)), at(t0, seen));
            let next = a.next(now(t0, seen));
            assert_eq!(matches!(next, Action::Write(_)), adopted, "seen at {seen}: {next:?}");
            assert_eq!(a.release(now(t0, seen)).is_some(), adopted, "seen at {seen}");
        }
    }

    /// Found by review (helper-134): a side-car whose hold ended at its renew deadline, seen early, adopts it
    /// again: the same acquisition, which is also `previous`. A client-go elector under the pod's identity
    /// then renews it twice (a collision): the record, the other's now, must be neither given back nor
    /// taken again; `previous` still named it as our own write.
    #[test]
    fn sidecar_collision_after_adopting_its_own_hold_again_writes_nothing() {
        let t0 = Instant::now();
        let mut a = Elector::adopting("me", TIMING);
        a.observe(Some(versioned(1, record(Some(""), Some(1), Some(3)))), t0);
        let w = expect_write(a.next(now(t0, 0.0)));
        let ticket = a.write_sent(&w, t0);
        a.write_result(ticket, WriteResult::Applied(stored(2, &w)), t0);
        a.observe(Some(stored(2, &w)), at(t0, 12.0));
        assert!(matches!(a.next(now(t0, 12.0)), Action::Lost(_)));
        a.lapse_seen(at(t0, 12.0));
        a.forget_loss();
        a.observe(Some(stored(2, &w)), at(t0, 12.0));
        let adoption = expect_write(a.next(now(t0, 12.0)));
        let ticket = a.write_sent(&adoption, at(t0, 12.0));
        a.write_result(ticket, WriteResult::Applied(stored(3, &adoption)), at(t0, 12.1));
        assert!(a.held().is_some(), "adopted again");
        // client-go under our identity renews it twice, as its own.
        for (rv, second) in [(4, 12.5), (5, 13.0)] {
            let mut co = a.current().unwrap().clone();
            co.record.renew_time = Some(wall(1000 + rv as i64));
            co.resource_version = rv.to_string();
            a.observe(Some(co), at(t0, second));
        }
        assert_eq!(a.next(now(t0, 13.1)), Action::Lost(LossReason::Collision { identity: "me".into() }));
        assert!(a.release(now(t0, 13.2)).is_none(), "the other's record given back");
        a.forget_loss();
        let next = a.next(now(t0, 13.3));
        assert!(!matches!(next, Action::Write(_)), "the other's record taken again: {next:?}");
    }
}
