//! The locks of one side-car: the protocol's answers, one `Elector` per lock, and the state kept about
//! them, bounded.
//!
//! - Every request reads the Lease first and feeds the elector, then asks it what to do. Its retry period
//!   is zero, so a heartbeat renews at once; "wait" means another identity holds the lock unexpired
//!   (409). Every write is a compare-and-swap; a lost race is settled by reading again.
//! - The electors adopt records held under the side-car's identity (the pod's), keeping their token: a
//!   restarted side-car keeps the locks its pod's clients hold and still heartbeat.
//! - A heartbeat on a lock this side-car holds is answered 200 while the lock is surely still ours,
//!   whatever the API server does meanwhile: within the renew deadline (see `timing`) of the last
//!   renewal that succeeded. Only past it does an API failure answer 503. Every request is answered
//!   within `answer_within`, whatever the API server does.
//! - State about a lock is kept while it is held, and for twice the TTL after its last request
//!   otherwise (a waiting side-car's expiry clock must not restart); then forgotten. Reads (GET, HEAD)
//!   of a lock this side-car knows nothing about leave no state behind. At most `MAX_LOCKS` are kept.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::metrics::Metrics;
use crate::engine::{self, now};
use crate::error::Error;
use crate::http::Response;
use crate::lease::{Action, Elector, Timing, Versioned};
use crate::store::{Store, StoreError};

/// At most this many locks are tracked at once (held, or asked about within twice the TTL). A side-car
/// serves one pod: a handful is usual. Past this, new names get 503 until older state is forgotten.
pub const MAX_LOCKS: usize = 4096;
/// A request does not start another read-and-write attempt after this long (each call may take up to
/// the call timeout), so that it is answered well within the server's answer timeout.
const ATTEMPTS_WITHIN: Duration = Duration::from_secs(5);

/// The lease timing of one lock: held for `ttl` without a heartbeat; a heartbeat renews at once
/// (retry period zero). The renew deadline is how long after its last successful renewal a lock is
/// answered as held while the API server fails. A client told "200" may count on the lock until the
/// answer to its next heartbeat, which comes (the stock clients heartbeat every 10 s, a third of the
/// default TTL) a third of the TTL later, and is answered within [`answer_within`]: so a 200 is given only
/// while that answer still comes before anyone else can take the lock, the TTL after the last renewal
/// (found by review: with two thirds of the TTL, a heartbeat stuck on a hung API call was answered after
/// another pod held the lock). Half the TTL up to 30 s; 15 s for the default. There is no child to stop
/// here, so `lock`'s start-up invariant does not apply.
pub fn timing(ttl: Duration) -> Timing {
    Timing { lease_duration: ttl, renew_deadline: ttl - ttl / 3 - answer_within(ttl), retry_period: Duration::ZERO }
}

/// How long a request about a lock may take to be answered, from its arrival: a sixth of the TTL, at most
/// 5 s. A call to the API server that takes longer is given up (its write, if any, is resolved by the next
/// read) and the request is answered from what the side-car knows: 200 if the lock is surely still held.
pub fn answer_within(ttl: Duration) -> Duration {
    (ttl / 6).min(Duration::from_secs(5))
}

/// How long before the TTL, counted from a renewal's send, runs out every answer about that hold is given
/// (a fifth of [`answer_within`]: 1 s for the default TTL): the client told 200 before counts on the lock
/// until the answer to its next heartbeat, and another pod may take the lock the TTL after that renewal
/// (found by review, helper-193: a client that sent its PUT 300 ms after a GET answered 200 near the end
/// was told of the loss 185 ms after another pod's client was told 200).
fn answer_margin(ttl: Duration) -> Duration {
    answer_within(ttl) / 5
}

/// A request on a lock surely held whose API call has not come back this long before the renew deadline
/// is answered from the hold, 200, rather than after it, 503 (found by review, helper-193: a heartbeat
/// stuck on an API server that hung for 4 s was answered 503 just past the renew deadline, and a stock
/// client gave up a lock that was never at risk).
const FROM_THE_HOLD_BEFORE_DEADLINE: Duration = Duration::from_millis(100);

/// The protocol's methods on `/locks/NAME`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Put,
    Post,
    Delete,
}

/// Every lock this side-car knows: one entry each, each behind its own mutex, so requests for one lock
/// are served one at a time and requests for different locks concurrently.
pub struct Locks {
    store: Store,
    identity: String,
    prefix: String,
    ttl: Duration,
    timing: Timing,
    entries: std::sync::Mutex<HashMap<String, Arc<Tracked>>>,
    /// After SIGTERM: no new acquisitions; heartbeats are still answered.
    draining: AtomicBool,
    metrics: Metrics,
}

struct Entry {
    elector: Elector,
    /// When a request last used this lock.
    used: Instant,
    /// While held: when the last heartbeat (a GET, PUT or POST answered 200) came, and the longest gap
    /// between two of them, which tells how often its client heartbeats.
    heartbeat: Option<Instant>,
    longest_gap: Duration,
    /// The fencing token of the holding the heartbeats belong to.
    token: Option<i32>,
    /// A POST was cut off by its budget while its create was on the wire: a POST retried after it may
    /// find the lock its own (found by review: it was answered 409, and the lock held for nobody).
    create_in_doubt: bool,
    /// A new hold of a name `P-N` not yet checked against a semaphore `P` (see `checked_slot_name`): no PUT
    /// is answered 200 until it is.
    slot_name_unchecked: bool,
}

/// A lock's [`Entry`], locked by the request that uses it, and a copy of its hold's renew deadline as the last
/// request left it, for the metrics: an entry busy with a request (a heartbeat waiting for the API server)
/// counts as held if it was when that request began (found by review, rv225: a lock held read 0 while its
/// heartbeat was on the wire).
struct Tracked {
    entry: Mutex<Entry>,
    held_until: std::sync::Mutex<Option<Instant>>,
    timing: Timing,
}

impl Tracked {
    fn new(entry: Entry, timing: Timing) -> Tracked {
        Tracked { entry: Mutex::new(entry), held_until: std::sync::Mutex::new(None), timing }
    }

    async fn lock(&self) -> TrackedGuard<'_> {
        TrackedGuard { entry: self.entry.lock().await, tracked: self }
    }

    fn try_lock(&self) -> Result<TrackedGuard<'_>, tokio::sync::TryLockError> {
        Ok(TrackedGuard { entry: self.entry.try_lock()?, tracked: self })
    }

    /// The renew deadline of the hold as the last request left it, if it was held.
    fn held_until(&self) -> Option<Instant> {
        *self.held_until.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An [`Entry`] locked: unlocking it updates [`Tracked::held_until`].
struct TrackedGuard<'a> {
    entry: tokio::sync::MutexGuard<'a, Entry>,
    tracked: &'a Tracked,
}

impl std::ops::Deref for TrackedGuard<'_> {
    type Target = Entry;

    fn deref(&self) -> &Entry {
        &self.entry
    }
}

impl std::ops::DerefMut for TrackedGuard<'_> {
    fn deref_mut(&mut self) -> &mut Entry {
        &mut self.entry
    }
}

impl Drop for TrackedGuard<'_> {
    fn drop(&mut self) {
        let held_until = self.entry.elector.held().map(|held| held.deadline(self.tracked.timing));
        *self.tracked.held_until.lock().unwrap_or_else(PoisonError::into_inner) = held_until;
    }
}

impl Entry {
    fn new(elector: Elector) -> Entry {
        Entry {
            elector,
            used: Instant::now(),
            heartbeat: None,
            longest_gap: Duration::ZERO,
            token: None,
            create_in_doubt: false,
            slot_name_unchecked: false,
        }
    }
}

/// What draining found: the locks still held for clients that heartbeat, the locks busy with a request
/// (a heartbeat, most likely), the releases cut off by the deadline, and when to look again.
pub struct Drained {
    pub held: Vec<String>,
    /// Locks busy with a request (a heartbeat that waits for the API server, say): looked at again later.
    pub busy: Vec<String>,
    pub cut_off: usize,
    pub next_check: Option<Instant>,
}

impl Drained {
    pub fn done(&self) -> bool {
        self.held.is_empty() && self.busy.is_empty()
    }
}

impl Locks {
    pub fn new(store: Store, identity: String, prefix: String, ttl: Duration, metrics: Metrics) -> Locks {
        Locks {
            store,
            identity,
            prefix,
            ttl,
            timing: timing(ttl),
            entries: std::sync::Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            metrics,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn namespace(&self) -> &str {
        self.store.namespace()
    }

    /// The Lease that backs lock `name`.
    pub fn lease_name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.metrics.draining.set(1);
    }

    fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    fn elector(&self) -> Elector {
        // Seeded apart, as `lock` seeds its own: side-cars of one Deployment would otherwise draw one
        // stagger sequence, and collide on a freed lock again after every lost race.
        Elector::adopting(self.identity.clone(), self.timing).with_seed(crate::retry::random_u64())
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Tracked>>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn known(&self, name: &str) -> Option<Arc<Tracked>> {
        self.map().get(name).cloned()
    }

    /// The entry of `name`, made if needed; `None` when `MAX_LOCKS` are tracked already.
    fn entry(&self, name: &str) -> Option<Arc<Tracked>> {
        self.entry_made(name).map(|(entry, _)| entry)
    }

    /// [`Locks::entry`], and whether it was made now.
    fn entry_made(&self, name: &str) -> Option<(Arc<Tracked>, bool)> {
        let mut map = self.map();
        if let Some(entry) = map.get(name) {
            return Some((Arc::clone(entry), false));
        }
        if map.len() >= MAX_LOCKS {
            drop(map);
            self.forget_idle(Instant::now());
            map = self.map();
            if map.len() >= MAX_LOCKS {
                return None;
            }
        }
        let entry = Arc::new(Tracked::new(Entry::new(self.elector()), self.timing));
        map.insert(name.to_string(), Arc::clone(&entry));
        self.metrics.tracked.set(map.len() as i64);
        Some((entry, true))
    }

    /// Forget the entry a DELETE made for `name` if it left nothing to remember: no such Lease (404), and no
    /// other request using it. DELETEs of names that do not exist (bad input: a clean-up loop's typo) never fill
    /// the table, and new locks are not refused for them (found by review, helper-213). One that read a record
    /// is kept, as any: the version it knows is what shows an etcd restore to a later request (forgotten, a
    /// restarted side-car's give-back was, and its next PUT adopted the record a restore brought back, beside
    /// another pod's hold: found by review, helper-214).
    fn forget_if_blank(&self, name: &str, entry: &Arc<Tracked>) {
        let mut map = self.map();
        // The map's reference and ours: no other request has it, nor can take it while the map is locked.
        if Arc::strong_count(entry) != 2 {
            return;
        }
        let blank = entry.try_lock().is_ok_and(|entry| {
            entry.elector.current().is_none()
                && entry.elector.held().is_none()
                && !entry.elector.releasing()
                && !entry.elector.unresolved_write()
        });
        if blank && map.get(name).is_some_and(|known| Arc::ptr_eq(known, entry)) {
            map.remove(name);
            self.metrics.tracked.set(map.len() as i64);
        }
    }

    /// Answer `method` on the (valid) lock `name`.
    pub async fn answer(&self, method: Method, name: &str) -> Response {
        let deadline = tokio::time::Instant::now() + answer_within(self.ttl);
        match method {
            Method::Get | Method::Head => match self.known(name) {
                Some(entry) => {
                    let Ok(mut entry) = tokio::time::timeout_at(deadline, entry.lock()).await else {
                        return self.too_slow(name, None);
                    };
                    entry.used = Instant::now();
                    // Held until now, and past what it could still answer: 503 once (see `get`).
                    if self.let_go_if_past(name, &mut entry.elector) {
                        return self.no_longer_surely_held(name);
                    }
                    if self.past_the_adoptions_bound(&entry.elector) {
                        return self.no_longer_surely_held(name);
                    }
                    let deadline = self.answer_by(deadline, &entry.elector);
                    let response = match tokio::time::timeout_at(deadline, self.get(name, &mut entry.elector)).await {
                        Ok(response) => response,
                        Err(_) => {
                            let response = self.too_slow(name, Some(&entry.elector));
                            self.let_go_if_lost(name, &mut entry.elector);
                            response
                        }
                    };
                    let response = self.past_its_answers(name, &entry.elector, response);
                    // The stock clients' heartbeat is a GET, then a PUT: a GET answered 200 about a lock held
                    // is one too, for draining (found by review, helper-198: a drain released the lock just
                    // after its GET was answered 200, and another pod's client was told 200 before the PUT
                    // told this one of the loss).
                    if response.status == 200 && entry.elector.held().is_some() {
                        entry.heartbeat_answered(Instant::now());
                    }
                    response
                }
                // Nothing to remember about a lock only read: a temporary elector answers. Unless the lock
                // is this side-car's to adopt (held under its identity before a restart): its clients'
                // heartbeats are answered by when they may count on it (see `answer_by`), also a PUT whose
                // read then hangs (found by review, helper-193).
                None => {
                    let mut elector = self.elector();
                    let response = match tokio::time::timeout_at(deadline, self.get(name, &mut elector)).await {
                        Ok(response) => response,
                        Err(_) => self.too_slow(name, None),
                    };
                    let response = self.past_its_answers(name, &elector, response);
                    if self.adoption_answer_by(&elector).is_some() {
                        self.remember(name, elector);
                    }
                    response
                }
            },
            Method::Delete => {
                let delete = async {
                    // Its entry, made if needed: a PUT of the same name at the same time (a restarted side-car's
                    // adoption) is answered before this DELETE reads, or after it gave the lock back, never
                    // from a hold the DELETE has just given back behind its elector (found by review,
                    // helper-211 and helper-212, not reached end to end).
                    match self.entry_made(name) {
                        Some((entry, made)) => {
                            let response = {
                                let mut entry = entry.lock().await;
                                entry.used = Instant::now();
                                entry.heartbeat = None;
                                entry.create_in_doubt = false;
                                self.delete(name, &mut entry.elector).await
                            };
                            if made {
                                self.forget_if_blank(name, &entry);
                            }
                            response
                        }
                        None => self.delete(name, &mut self.elector()).await,
                    }
                };
                // Found by review: a release stuck on a hung API server held the lock's entry, and its
                // heartbeats were answered 503 meanwhile. Its outcome is settled by the next read.
                tokio::time::timeout_at(deadline, delete).await.unwrap_or_else(|_| {
                    self.metrics.api_error("timeout");
                    Response::error(503, format!("lock {name}: no answer from the API server in time; retry"))
                        .with_header("Retry-After", "1")
                })
            }
            Method::Put | Method::Post => {
                let Some(entry) = self.entry(name) else {
                    tracing::warn!(lease = %self.lease_name(name), "too many locks tracked; refusing a new one");
                    return Response::error(
                        503,
                        format!("this side-car tracks {MAX_LOCKS} locks already; retry once some are released"),
                    )
                    .with_header("Retry-After", "10");
                };
                let Ok(mut entry) = tokio::time::timeout_at(deadline, entry.lock()).await else {
                    return self.too_slow(name, None);
                };
                entry.used = Instant::now();
                self.let_go_if_past(name, &mut entry.elector);
                if self.past_the_adoptions_bound(&entry.elector) {
                    return self.not_surely_adoptable(name);
                }
                let post = method == Method::Post;
                // Only for the next request, and only if it is a POST (found by review: a flag left by
                // PUTs answered a POST long after 200 for a lock held all along).
                let in_doubt = std::mem::take(&mut entry.create_in_doubt) && post;
                let deadline = self.answer_by(deadline, &entry.elector);
                let entry = &mut *entry;
                let acquire = self.acquire(name, &mut entry.elector, &mut entry.slot_name_unchecked, post, in_doubt);
                let response = match tokio::time::timeout_at(deadline, acquire).await {
                    Ok(response) => response,
                    Err(_) => {
                        entry.create_in_doubt = post && (in_doubt || entry.elector.acquisition_in_doubt());
                        // Cut off before a new hold of a slot name was checked: not 200 (found by review,
                        // helper-195); the next PUT checks it.
                        let elector = Some(&entry.elector).filter(|_| !entry.slot_name_unchecked);
                        let response = self.too_slow(name, elector);
                        // Cut off past what it could still answer (see `answer_by`): the hold is let go,
                        // so that the next PUT takes the lock afresh rather than be cut off at once again.
                        self.let_go_if_lost(name, &mut entry.elector);
                        response
                    }
                };
                if response.status == 200 {
                    entry.heartbeat_answered(Instant::now());
                }
                response
            }
        }
    }

    /// GET: the lock as JSON, or 404. While the API server fails, a lock held is answered from what
    /// this side-car knows (its clients read before they heartbeat). The stock clients' heartbeat is a GET,
    /// then a PUT if the GET was 200: a GET on a lock held until now is answered 200 only while that PUT's
    /// answer still comes before anyone else can take the lock (its record still ours, and the TTL less
    /// one answer's time not passed since the last renewal); else 503, and the hold is let go as a PUT learns
    /// a loss; GETs are 503 until the record expires (see `past_its_answers`: at most `answer_within`), then
    /// answered from the record, and a PUT may take it again (found by review, helper-188: a GET answered 200 long past the renew deadline left the client sure of the
    /// lock until after another pod's client was told it held it; helper-191: a GET answered 503 without
    /// letting the hold go was 503 for ever, and a stock client never took its lock again).
    async fn get(&self, name: &str, elector: &mut Elector) -> Response {
        let before = elector.held().map(|held| {
            let answerable_until = held.last_renew_sent + self.ttl.saturating_sub(answer_within(self.ttl));
            (held.fencing_token, held.acquire_time.clone(), answerable_until)
        });
        let read = self.read(&self.lease_name(name), elector).await;
        match (read, before) {
            (Ok(current), Some((token, acquire_time, answerable_until))) => {
                self.decide(name, elector, current);
                // A restore that showed an older renewal of the hold moves its answers' bound back too (found by
                // review, rv289: answered 200 from the renewal undone, just before another pod's client was).
                let answerable_until = elector.last_hold_sent().map_or(answerable_until, |sent| {
                    answerable_until.min(sent + self.ttl.saturating_sub(answer_within(self.ttl)))
                });
                let still_ours = elector.current().is_some_and(|current| {
                    current.record.holder_identity.as_deref() == Some(self.identity.as_str())
                        && current.record.lease_transitions.unwrap_or(0) == token
                        && current.record.acquire_time == acquire_time
                });
                if self.holding(elector) || (still_ours && !elector.releasing() && Instant::now() < answerable_until) {
                    return self.lock_response(200, name, elector);
                }
                self.no_longer_surely_held(name)
            }
            (Ok(current), None) => {
                elector.observe(current, Instant::now());
                self.lock_response(200, name, elector)
            }
            (Err(err), _) if self.holding(elector) && !matches!(err, StoreError::Fatal(_)) => {
                self.note_error(name, &err, "answering from the lock held");
                self.lock_response(200, name, elector)
            }
            (Err(err), _) => {
                self.let_go_if_lost(name, elector);
                self.failure(name, err)
            }
        }
    }

    /// Read the Lease for `elector`. Requests about one lock are served one at a time, so this read is
    /// sent after everything the elector knows: an older version than it knows means versions went back
    /// (an etcd restored from a snapshot), as `lock` detects it (found by review, helper-120: the side-car
    /// compared-and-swapped against the newer version for ever, every PUT answered 503, and the lock was
    /// never taken through it again).
    async fn read(&self, lease: &str, elector: &mut Elector) -> Result<Option<Versioned>, StoreError> {
        let floor = elector.known_version();
        let current = self.store.get(lease).await?;
        elector.read_answered(lease, floor.as_deref(), current.as_ref());
        Ok(current)
    }

    /// Whether this side-car holds the lock and it is surely still its own: held, usable, and within
    /// the renew deadline of the last renewal that succeeded.
    fn holding(&self, elector: &Elector) -> bool {
        let now = Instant::now();
        // A release sent whose outcome is unknown (a DELETE cut off by its budget) may have freed it (found
        // by review: a heartbeat was answered 200 while another pod held the lock).
        elector.held().is_some_and(|held| now < held.deadline(self.timing))
            && elector.usable(now)
            && !elector.releasing()
    }

    /// PUT (acquire or heartbeat) and POST (`create_only`: create it, or 409 if it exists): 200 when this
    /// identity holds the lock, 409 with the lock when another identity holds it unexpired.
    /// `created_before`: an earlier POST's create may have made the lock ours (see `Entry`).
    async fn acquire(
        &self,
        name: &str,
        elector: &mut Elector,
        slot_name_unchecked: &mut bool,
        create_only: bool,
        created_before: bool,
    ) -> Response {
        let lease = self.lease_name(name);
        // A slot's name is unchecked from a request that began without a hold until `P` was read after the
        // hold: a new one, one taken back (a lapse, a restart), or one learned by a read (a create whose answer
        // was lost). Any 200 that holds it checks it first (found by review, helper-198: a hold taken back past
        // the renew deadline, or learned by a retry, was answered 200 unchecked beside a live semaphore).
        if !self.holding(elector) {
            *slot_name_unchecked = crate::lease::slot_parent(&lease).is_some();
        } else if *slot_name_unchecked {
            return self.checked_slot_name(name, elector, slot_name_unchecked, false).await;
        }
        let started = Instant::now();
        let mut last_race = String::new();
        let mut sent_create = created_before;
        let mut create_only = create_only;
        // `P` was read just before this attempt's read of the Lease (see below): not read again before its write.
        let mut marker_just_read = false;
        // A lost compare-and-swap or an unknown outcome: read again and decide again, a few times.
        for _attempt in 0..3 {
            let marker_read = std::mem::take(&mut marker_just_read);
            if started.elapsed() > ATTEMPTS_WITHIN {
                break;
            }
            let current = match self.read(&lease, elector).await {
                Ok(current) => current,
                Err(err) => return self.held_or_failure(name, elector, *slot_name_unchecked, err),
            };
            if create_only && current.is_some() {
                elector.observe(current, Instant::now());
                // Our own create, whose answer was lost (this request's, or an earlier one's cut off by
                // its budget): it made the lock ours (found by review: it was answered 409, and the lock
                // stayed held for nobody until its TTL).
                if sent_create && self.holding(elector) {
                    self.metrics.acquisitions.inc();
                    tracing::info!(lease = %lease, identity = %self.identity, "acquired the lock");
                    return self.held_answer(name, elector, slot_name_unchecked, false).await;
                }
                let under_our_name = elector
                    .current()
                    .is_some_and(|current| current.record.holder_identity.as_deref() == Some(self.identity.as_str()));
                if !(sent_create && under_our_name) {
                    return self.lock_response(409, name, elector);
                }
                // Ours, learnt past its renew deadline: taken again as a PUT would take it.
                create_only = false;
                continue;
            }
            let action = self.decide(name, elector, current);
            let holding = elector.held().is_some();
            match action {
                Action::Write(mut write) => {
                    let adopting = !holding && elector.current().is_some_and(|current| elector.adoptable(current));
                    if self.draining() && !holding && !adopting {
                        return Response::error(
                            503,
                            format!("the side-car is shutting down: lock {name} is not taken now; retry elsewhere"),
                        )
                        .with_header("Retry-After", "1");
                    }
                    // A semaphore's slot, taken yet or not, is never a plain lock (found by review, helper-178:
                    // the side-car took `pool-1`, never taken by the live semaphore `pool`, and every user of
                    // `pool` was refused while its client heartbeat). Read before a new hold, as `lock` does, and
                    // before a record of ours is taken back: one let go for a marker (see `checked_slot_name`)
                    // is left to expire, not renewed by each PUT of its client.
                    if !holding && !marker_read && crate::lease::slot_parent(&lease).is_some() {
                        match engine::semaphore_of(&self.store, &lease).await {
                            // Decided again now: the write is based on the read of the lease, and one older than
                            // a retry period is read again first (`Elector::next`), as when the marker read is slow:
                            // an etcd restored meanwhile may have handed its version out again to another's hold
                            // (review, rv216, not reached end to end: the restore cuts the marker read). Only that
                            // next attempt skips the read of `P`: one after a lost race reads it again (found by
                            // review, rv218: a marker written meanwhile went unseen, and a failed check after the
                            // hold answered 200 for the semaphore's slot).
                            Ok(None) => match elector.next(now()) {
                                Action::Write(again) => write = again,
                                _ => {
                                    marker_just_read = true;
                                    continue;
                                }
                            },
                            Ok(Some((semaphore, index, slots))) => {
                                return Response::error(
                                    409,
                                    format!(
                                        "lock {name} cannot be acquired: it is slot {index} of the semaphore \
                                         {semaphore} ({slots} slots), not a plain lock"
                                    ),
                                );
                            }
                            Err(err) => return self.failure(name, err),
                        }
                    }
                    // An adoption of a record written before a restart of this side-car is answered while
                    // the client told 200 then may still count on it (see `adoption_answer_by`).
                    let answer_by = if adopting { self.adoption_answer_by(elector) } else { None };
                    if answer_by.is_some_and(|by| by <= Instant::now()) {
                        return self.not_surely_adoptable(name);
                    }
                    sent_create |= write.is_create();
                    let send = engine::send(&self.store, &lease, elector, &write);
                    let sent = match answer_by {
                        Some(by) => match tokio::time::timeout_at(by.into(), send).await {
                            Ok(sent) => sent,
                            Err(_) => return self.too_slow(name, None),
                        },
                        None => send.await,
                    };
                    match sent {
                        Ok(_) => match elector.held() {
                            Some(held) if !elector.usable(Instant::now()) => {
                                return Response::error(
                                    503,
                                    format!(
                                        "lock {name} was deleted while another holder had it: it is usable once that \
                                         holder's TTL has passed; retry"
                                    ),
                                )
                                .with_header("Retry-After", &retry_after(held.usable_from));
                            }
                            Some(held) => {
                                if holding {
                                    tracing::debug!(lease = %lease, token = held.fencing_token, "renewed the lock");
                                } else {
                                    self.metrics.acquisitions.inc();
                                    let how = if adopting {
                                        "adopted the lock held under this identity"
                                    } else {
                                        "acquired the lock"
                                    };
                                    tracing::info!(lease = %lease, identity = %self.identity, token = held.fencing_token, "{how}");
                                }
                                let new_hold = !holding && !adopting;
                                return self.held_answer(name, elector, slot_name_unchecked, new_hold).await;
                            }
                            None => last_race = "the write did not leave the lock ours".into(),
                        },
                        Err(StoreError::Conflict(err) | StoreError::Unknown(err)) => {
                            self.metrics.api_error("conflict");
                            last_race = err;
                        }
                        Err(err) => return self.held_or_failure(name, elector, *slot_name_unchecked, err),
                    }
                }
                // Another identity holds it, unexpired as this side-car has observed it.
                // Or ours, or nobody's, waited out after a lapse (see `Elector::lapse_seen`): that is not
                // "another holds it" (found by review, helper-145: 409 named this side-car's own identity as the
                // holder, `held: false`, for a TTL after a client came back from a pause).
                Action::WaitUntil(until) => {
                    // Held by another identity, or under ours by another process (not our own write): 409. Not
                    // for a hold of ours a restore ended (found by review, rv297: 409 named the pod's own identity
                    // for a TTL after two restores in a row), but for a co-holder's under our identity all the same
                    // (rv298: a client-go elector's renewals, after a collision or a lapse, are another's hold).
                    let anothers = elector.current().is_some_and(|current| {
                        current.record.holder_identity.as_deref().is_some_and(|h| !h.is_empty())
                            && !(current.record.holder_identity.as_deref() == Some(self.identity.as_str())
                                && (elector.adoptable(current) || elector.is_own_undone_by_restore(current)))
                    });
                    if anothers {
                        return self.lock_response(409, name, elector);
                    }
                    return Response::error(
                        503,
                        format!(
                            "lock {name} is not surely free yet (a hold lapsed, or etcd was restored): it can be taken \
                             again later; retry"
                        ),
                    )
                    .with_header("Retry-After", &retry_after(until));
                }
                Action::Refuse(refusal) => {
                    return Response::error(409, format!("lock {name} cannot be acquired: {refusal}"));
                }
                Action::Read | Action::Lost(_) => last_race = "the lease changed while it was read".into(),
            }
        }
        if self.holding(elector) && !*slot_name_unchecked {
            tracing::warn!(lease = %lease, error = %last_race, "cannot renew the lock now; it is still held");
            return self.lock_response(200, name, elector);
        }
        tracing::warn!(lease = %lease, error = %last_race, "the lease kept changing; asking the client to retry");
        Response::error(503, format!("lock {name} kept changing under every attempt ({last_race}); retry"))
            .with_header("Retry-After", "1")
    }

    /// When a request on a lock must be answered at the latest: within [`answer_within`] of its arrival
    /// (`arrival_deadline`), and, on a lock this side-car has held until now, while what it answers is
    /// still true. Surely held: just before the renew deadline, when a 200 from the hold is still right
    /// (see `too_slow`). Held past that (not surely any more): [`answer_margin`] before the TTL runs out
    /// from the last renewal's send, when another pod may take it, whatever this request then finds.
    fn answer_by(&self, arrival_deadline: tokio::time::Instant, elector: &Elector) -> tokio::time::Instant {
        let Some(held) = elector.held() else {
            // Not held (a hold let go, or one held before a restart): a record of ours to adopt.
            return self.adoption_answer_by(elector).map_or(arrival_deadline, |by| arrival_deadline.min(by.into()));
        };
        let from_the_hold = held.deadline(self.timing).checked_sub(FROM_THE_HOLD_BEFORE_DEADLINE);
        let by = match from_the_hold {
            Some(at) if self.holding(elector) && Instant::now() < at => at,
            _ => self.hold_answer_by(held),
        };
        arrival_deadline.min(by.into())
    }

    /// When answers about `held` end, surely held or not: [`answer_margin`] before the TTL runs out from
    /// its last renewal's send.
    fn hold_answer_by(&self, held: &crate::lease::Held) -> Instant {
        held.last_renew_sent + self.ttl.saturating_sub(answer_margin(self.ttl))
    }

    /// A request that comes past the end of a hold's answers (`hold_answer_by`): the hold is let go first,
    /// and the request answered from the record, as by a side-car that never held it (a late heartbeat of a
    /// lock taken since is 409, not 503).
    /// Whether it was let go.
    fn let_go_if_past(&self, name: &str, elector: &mut Elector) -> bool {
        let past = elector.held().is_some_and(|held| self.hold_answer_by(held) <= Instant::now());
        if past {
            self.let_go_if_lost(name, elector);
        }
        past
    }

    /// Whether a request about a record of ours to adopt comes past the bound of its answers (see
    /// [`adoption_answer_by`](Self::adoption_answer_by)): it is answered 503 at once, not read (a read would
    /// be cut off at once, and logged as an API server too slow to answer).
    fn past_the_adoptions_bound(&self, elector: &Elector) -> bool {
        elector.held().is_none() && self.adoption_answer_by(elector).is_some_and(|by| by <= Instant::now())
    }

    /// 503 to a PUT about a record of ours to adopt past the bound of its answers.
    fn not_surely_adoptable(&self, name: &str) -> Response {
        tracing::warn!(lease = %self.lease_name(name), "the lock under this identity is not surely this pod's any more; asking the client to retry");
        Response::error(
            503,
            format!("lock {name} is not surely held (its last heartbeat is too long ago): it can be taken again once expired; retry"),
        )
        .with_header("Retry-After", "1")
    }

    /// 503 about a lock this side-car held until now that is no longer surely its own.
    fn no_longer_surely_held(&self, name: &str) -> Response {
        tracing::warn!(lease = %self.lease_name(name), "the lock is no longer surely held (not renewed in time, or taken)");
        Response::error(
            503,
            format!("lock {name}: no longer surely held (not renewed in time, or taken); heartbeat (PUT) again"),
        )
        .with_header("Retry-After", "1")
    }

    /// A GET's `response`, 503 about a record this side-car may adopt that its clients can no longer count on:
    /// a live record under its identity that it does not hold (its predecessor's, before a restart; a hold it
    /// let go) is, to its clients' heartbeats (a GET, then a PUT), a hold, and is answered 200 only while the PUT
    /// after it is still answered before anyone else can take the lock (see `own_record_past_its_answers`;
    /// found by review, rv265: a restarted side-car's GET was answered 200 from the record near the end of the
    /// TTL, and the PUT after it told its client of the loss after another pod's client was told 200). To every
    /// GET until the record expires, not once: the side-car cannot tell its clients apart, and a 503 told to
    /// one (or to a probe's HEAD) left another of the pod told 200 (found by review, rv270).
    fn past_its_answers(&self, name: &str, elector: &Elector, response: Response) -> Response {
        match response.status == 200 && self.own_record_past_its_answers(elector) {
            true => self.no_longer_surely_held(name),
            false => response,
        }
    }

    /// Whether the record `elector` read is this side-car's to adopt (under its identity, not held by it: its
    /// predecessor's before a restart, or a hold it let go), and a client told 200 about it could no longer
    /// count on it: past the GET's bound, until the record expires (a few seconds at most, a TTL at most for
    /// a record the wall clock says has expired; from then the GET answers from the record, and the PUT after
    /// it decides). The GET's bound leaves the PUT after it what a
    /// hold's does (`answer_within`, less [`answer_margin`]: the stock heartbeat is a GET, then a PUT), within
    /// [`adoption_answer_by`](Self::adoption_answer_by) (found by review, rv269: bounded by the PUT's own bound,
    /// a GET was answered 200 with no time left for the PUT, and another pod's client was told 200 first).
    /// Its end is on the clock its bound was: a hold this process wrote expires its duration after its send,
    /// on the monotonic clock (rv269: after the wall clock was stepped back an hour, every GET was 503 for an
    /// hour, and the stock clients never acquired the free lock). Any other record is answered from: a record
    /// under this identity that it may not adopt (written by another tool, one with no `renewTime`) is no hold
    /// of its clients', and a GET answered 503 about it would keep the stock clients, which PUT only after a
    /// GET answered 200 or 404, from ever acquiring it (found by review, rv266).
    fn own_record_past_its_answers(&self, elector: &Elector) -> bool {
        let Some((answer_by, expires)) = self.adoption_window(elector) else { return false };
        let for_the_put = answer_within(self.ttl).saturating_sub(answer_margin(self.ttl));
        let get_by = answer_by.checked_sub(for_the_put).unwrap_or(answer_by);
        let now = Instant::now();
        now >= get_by && now < expires
    }

    /// A record under this identity that this side-car adopts, unexpired (written before a restart of
    /// the side-car, or by a hold it let go): a client told 200 about it may count on it until the TTL runs
    /// out from its `renewTime`, read on this pod's wall clock, the one its writer stamped it with. The
    /// adoption is answered by then, less [`answer_margin`] (found by review, helper-193: a restarted
    /// side-car's adoption, cut off from the API server, was answered 503 after another pod's client was told
    /// 200). A wall clock stepped back since that write makes this later by the step. Once the wall clock
    /// says it ran out, now, until this side-car has seen the record unchanged for its duration (a clock
    /// stepped forward looks the same: rv271); `None` from then, when a compare-and-swap alone decides.
    fn adoption_answer_by(&self, elector: &Elector) -> Option<Instant> {
        self.adoption_window(elector).map(|(answer_by, _)| answer_by)
    }

    /// [`adoption_answer_by`](Self::adoption_answer_by), and when the record expires, on the same clock.
    fn adoption_window(&self, elector: &Elector) -> Option<(Instant, Instant)> {
        let current = elector.current().filter(|current| {
            elector.held().is_none()
                && current.record.holder_identity.as_deref() == Some(self.identity.as_str())
                && elector.adoptable(current)
        })?;
        let record = &current.record;
        let renewed = record.renew_time.as_ref()?.0;
        let duration = record.lease_duration_seconds.map_or(self.ttl, |s| Duration::from_secs(s.max(0) as u64));
        let now = Instant::now();
        // A hold this process wrote (lapsed, and adopted again): bounded by its own last counted renewal's send,
        // no clock read (a second off what is left, below, would refuse it needlessly in its last second).
        if let Some(sent) = elector.own_hold_sent(record) {
            let expires = sent.checked_add(duration).filter(|expires| *expires > now)?;
            return Some((expires.checked_sub(answer_margin(self.ttl)).unwrap_or(expires), expires));
        }
        let age = Duration::try_from(k8s_openapi::jiff::Timestamp::now().duration_since(renewed)).unwrap_or_default();
        let Some(left) = duration.checked_sub(age).filter(|left| !left.is_zero()) else {
            // Expired on the wall clock: or the clock was stepped forward since the write (NTP after a VM
            // resumed), and another pod, which counts the duration from when it saw the record, has not
            // taken it yet. No answer is bounded then: until this side-car has seen the record unchanged for
            // its duration, on its own clock, as another pod does, a client's GET is 503 and its PUT adopts
            // nothing (found by review, rv271: a GET answered 200 from the record 5.3 s after the last
            // renewal, TTL 6 s, with the clock a second ahead, and the PUT after it was answered 409 after
            // another pod's client was told 200). So too for a lock whose state it forgot: a record of its own
            // read again after its TTL ran out may be one an etcd restore brought back, as when its loss is
            // learned late (see `Elector::lapse_seen`; found by review, rv272).
            return elector.observed_expiry().filter(|expiry| now < *expiry).map(|expiry| (now, expiry));
        };
        // A second less: a renewal's `renewTime` may be up to a second past its writer's clock (it moves to the
        // next whole second, for client-go: see `Elector::renewal`); answered at once when that leaves nothing.
        let answer_by = now + left.saturating_sub(Duration::from_secs(1)).saturating_sub(answer_margin(self.ttl));
        Some((answer_by, now + left))
    }

    /// Keep `elector`, which read a lock this side-car was not tracking, as that lock's (if still untracked).
    fn remember(&self, name: &str, elector: Elector) {
        let Some(entry) = self.entry(name) else { return };
        if let Ok(mut entry) = entry.try_lock()
            && entry.elector.current().is_none()
            && entry.elector.held().is_none()
        {
            entry.elector = elector;
        }
    }

    /// A request about a hold no longer surely ours ended without reading the record (its read failed, or
    /// was cut off): the hold is let go all the same, as `decide` lets it go, so that the 503 answered now
    /// comes once (found by review, helper-193: every GET was 503 until one read went through).
    fn let_go_if_lost(&self, name: &str, elector: &mut Elector) {
        if elector.held().is_some() && !self.holding(elector) {
            self.settle_loss(name, elector);
        }
    }

    /// A request not done within [`answer_within`] (an API call that hangs, or a request for the same lock
    /// before it that does): 200 if this side-car surely still holds the lock (the next heartbeat renews
    /// it), else 503.
    fn too_slow(&self, name: &str, elector: Option<&Elector>) -> Response {
        self.metrics.api_error("timeout");
        if let Some(elector) = elector.filter(|elector| self.holding(elector)) {
            tracing::warn!(lease = %self.lease_name(name), "the API server is slow to answer; the lock is still held");
            return self.lock_response(200, name, elector);
        }
        tracing::warn!(lease = %self.lease_name(name), "no answer about the lock in time; asking the client to retry");
        Response::error(503, format!("lock {name}: no answer from the API server in time; retry"))
            .with_header("Retry-After", "1")
    }

    /// A failed call while acquiring or renewing: a lock still surely held is answered 200 (the next
    /// heartbeat renews it); otherwise the failure.
    fn held_or_failure(&self, name: &str, elector: &Elector, slot_name_unchecked: bool, err: StoreError) -> Response {
        if self.holding(elector) && !slot_name_unchecked && !matches!(err, StoreError::Fatal(_)) {
            self.note_error(name, &err, "the lock is still held; the next heartbeat renews it");
            return self.lock_response(200, name, elector);
        }
        self.failure(name, err)
    }

    fn note_error(&self, name: &str, err: &StoreError, what: &str) {
        self.metrics.api_error(err.kind());
        tracing::warn!(lease = %self.lease_name(name), error = %err, "API call failed; {what}");
    }

    /// DELETE: give the lock up if this identity holds it (200), 409 if another does, 404 if no such lock.
    async fn delete(&self, name: &str, elector: &mut Elector) -> Response {
        let lease = self.lease_name(name);
        match self.read(&lease, elector).await {
            Ok(current) => elector.observe(current, Instant::now()),
            Err(err) => return self.failure(name, err),
        }
        // A hold lost meanwhile (taken, or past its renew deadline) is let go first, as by a GET or a PUT: one
        // learned past its last renewal's send + the TTL is then neither given back nor taken again for a TTL
        // (see `Elector::lapse_seen`: found by review, helper-211, a DELETE cleared the record an etcd restore
        // had brought back over another pod's hold, whose client had been told 200).
        self.let_go_if_lost(name, elector);
        // Held under our identity but unknown to this process (written before a restart): given back as it was
        // read, never taken back first (a renewal: a semaphore first used meanwhile, waiting out this plain
        // hold of its slot's name, refused the name whose plain holder renewed it: found by review, helper-205,
        // then helper-208 for a semaphore's first use racing the DELETE). One let go to expire, or in doubt
        // (versions went back: found by review, helper-210), is given up as it is, never given back. So is one
        // past the bound of its answers, as a PUT adopts none then (see `adoption_answer_by`): a record the wall
        // clock says has expired, not yet seen unchanged for its TTL, may be one an etcd restore brought back
        // over another pod's hold (found by review, rv274: the DELETE freed it, and the pod's client was told 200
        // before the other pod's client learned of the loss).
        if elector.held().is_none() && elector.current().is_some_and(|current| elector.adoptable(current)) {
            let give_back = (!self.past_the_adoptions_bound(elector)).then(|| elector.give_back_adoptable(now()));
            let Some(write) = give_back.flatten() else {
                tracing::info!(lease = %lease, identity = %self.identity, "gave the lock up; it was let go, or is in doubt, so it is left to expire");
                return self.lock_response(200, name, elector);
            };
            return match engine::send(&self.store, &lease, elector, &write).await {
                Ok(_) => {
                    elector.released();
                    tracing::info!(lease = %lease, identity = %self.identity, "released the lock");
                    self.lock_response(200, name, elector)
                }
                Err(err) => self.failure(name, err),
            };
        }
        let held = elector.held().is_some();
        let released = match self.release(name, elector).await {
            Ok(released) => released,
            Err(err) => return self.failure(name, err),
        };
        let holder = elector.current().map(|current| current.record.holder_identity.clone().unwrap_or_default());
        match holder {
            None => Response::error(404, format!("no lock {name}")),
            // Free now (released, or it already was).
            Some(holder) if holder.is_empty() => self.lock_response(200, name, elector),
            // Held until now: released, and maybe taken since (a waiter took it on the release: found by
            // review, helper-182, "left to expire" was said); or ours, but not ours to give back (another
            // writer renewed it under this identity lately): the lock is given up all the same, and the
            // record left to expire (found by review, helper-147: 409, as if another pod held it).
            Some(_) if held => {
                if !released {
                    tracing::info!(lease = %lease, identity = %self.identity, "gave the lock up; it was renewed under this identity by another writer lately, so it is left to expire");
                }
                self.lock_response(200, name, elector)
            }
            Some(_) => self.lock_response(409, name, elector),
        }
    }

    /// Feed the elector what was read and ask it what to do. A loss (taken, deleted, or no heartbeat
    /// in time) has nothing left to stop here: it is noted and the lock is judged afresh.
    fn decide(&self, name: &str, elector: &mut Elector, current: Option<Versioned>) -> Action {
        elector.observe(current, Instant::now());
        self.settle_loss(name, elector);
        elector.next(now())
    }

    /// A loss the elector sees now (taken, deleted, or no heartbeat in time) is noted and forgotten: the
    /// lock is judged afresh from the record last read.
    fn settle_loss(&self, name: &str, elector: &mut Elector) {
        if let Action::Lost(reason) = elector.next(now()) {
            self.metrics.losses.inc();
            tracing::info!(lease = %self.lease_name(name), identity = %self.identity, reason = %reason, "no longer holding the lock");
            let current = elector.current().cloned();
            // Past the renew deadline, unseen (cut off, or no heartbeat), and learned from the read just made
            // (found by review, helper-129): see `Elector::lapse_seen`.
            if matches!(reason, crate::lease::LossReason::RenewDeadline) {
                elector.lapse_seen(Instant::now());
            }
            elector.forget_loss();
            // The same record again: when it was first seen still counts for its expiry.
            elector.observe(current, Instant::now());
        }
    }

    /// 200 for a lock held now: once checked, if it is a slot's name not checked yet (see `checked_slot_name`).
    async fn held_answer(
        &self,
        name: &str,
        elector: &mut Elector,
        slot_name_unchecked: &mut bool,
        new_hold: bool,
    ) -> Response {
        match *slot_name_unchecked {
            true => self.checked_slot_name(name, elector, slot_name_unchecked, new_hold).await,
            false => self.lock_response(200, name, elector),
        }
    }

    /// A hold of a name `P-N` that a request began without (new, taken back, or learned by a read), read at
    /// the start as no semaphore's slot: read `P` again now that the name is ours, as `lock` does. A
    /// semaphore first used meanwhile (its marker written before our hold landed) refuses it: 409, the name
    /// given back if this request's write made the hold new (`new_hold`), else let go and left to expire,
    /// since its client may still count on an earlier 200 (found by review, helper-195: the side-car held
    /// `P-1` while the semaphore `P` ran, and every other user of `P` was refused while its client heartbeat).
    /// A marker written after our hold landed sees that hold, and waits it out. A read that fails cannot
    /// tell: the hold goes on, 200, as when the marker came later; one cut off by the request's budget is
    /// answered 503, never 200 (found by review, helper-192, for `lock`: a check cut short was skipped), and
    /// the next PUT reads again.
    async fn checked_slot_name(
        &self,
        name: &str,
        elector: &mut Elector,
        unchecked: &mut bool,
        new_hold: bool,
    ) -> Response {
        let lease = self.lease_name(name);
        match engine::semaphore_of(&self.store, &lease).await {
            Ok(Some((semaphore, index, slots))) => {
                *unchecked = false;
                if !new_hold {
                    // Taken back, found by a read, or held since a request cut off: its client may still count
                    // on an earlier 200 until this answer, and a release would end the semaphore's wait at once
                    // (found by review, helper-201). Let go, and left to expire: the semaphore waits it out.
                    tracing::warn!(lease = %lease, "the semaphore's slot name is let go; it expires after its TTL");
                    elector.let_expire(Instant::now());
                } else if let Err(err) = self.release(name, elector).await {
                    // No client counts on it: left to expire, and no drain waits on it (found by review,
                    // helper-205).
                    tracing::warn!(lease = %lease, error = %err, "cannot give the semaphore's slot name back; it expires after its TTL");
                    elector.let_expire(Instant::now());
                }
                Response::error(
                    409,
                    format!(
                        "lock {name} cannot be acquired: it is slot {index} of the semaphore {semaphore} ({slots} \
                         slots), not a plain lock"
                    ),
                )
            }
            Ok(None) => {
                *unchecked = false;
                self.lock_response(200, name, elector)
            }
            Err(err) => {
                *unchecked = false;
                self.note_error(
                    name,
                    &err,
                    "cannot tell whether it is a semaphore's slot; holding the lock all the same",
                );
                self.lock_response(200, name, elector)
            }
        }
    }

    /// Release the lock if the record last read is our own write (see `engine::release`).
    async fn release(&self, name: &str, elector: &mut Elector) -> Result<bool, StoreError> {
        let lease = self.lease_name(name);
        let released = engine::release(&self.store, &lease, elector).await?;
        if released {
            tracing::info!(lease = %lease, identity = %self.identity, "released the lock");
        }
        Ok(released)
    }

    /// A quiet lock's release while draining: the lock is read first, as a DELETE reads it, and released only if
    /// the record read is still ours to give back. The version known from the last request may have been handed
    /// out again since, to another pod's takeover, by an etcd restore that undid the last renewal: another
    /// side-car that saw the record before that renewal counts its expiry from then, before this hold's send +
    /// the TTL (found by review, rv285: released on the version known, the write landed on that pod's hold while
    /// its client held the lock).
    async fn give_back_quiet(&self, name: &str, elector: &mut Elector) -> Result<bool, StoreError> {
        let lease = self.lease_name(name);
        let current = self.read(&lease, elector).await?;
        elector.observe(current, Instant::now());
        self.let_go_if_lost(name, elector);
        let released = self.release(name, elector).await?;
        if !released {
            tracing::info!(lease = %lease, identity = %self.identity, "the lock is not ours to give back any more (taken since, or in doubt); it is left as it is");
        }
        Ok(released)
    }

    /// While draining: release every lock whose client has gone quiet, that is, sent no heartbeat for
    /// two thirds of the TTL (a client told 200 heartbeats again within a third: twice that) and for one and a
    /// half times the longest gap it ever left between two. Locks whose
    /// clients still heartbeat stay held; with `deadline`, they are given up without a release (see
    /// `give_up`). The quiet locks are released together, each within `deadline` or, later, the budget
    /// of any request ([`answer_within`]) from when it starts: a release that has not gone through by then
    /// (a hung API server) is given up, and its lock, if the write did not land, expires after its TTL.
    pub async fn drain_step(&self, deadline: Instant) -> Drained {
        let entries: Vec<(String, Arc<Tracked>)> =
            self.map().iter().map(|(name, entry)| (name.clone(), Arc::clone(entry))).collect();
        let mut drained = Drained { held: Vec::new(), busy: Vec::new(), cut_off: 0, next_check: None };
        let mut quiet = Vec::new();
        for (name, entry) in &entries {
            let Ok(mut entry) = entry.try_lock() else {
                drained.busy.push(name.clone());
                continue;
            };
            // A hold past its renew deadline, unseen (cut off, no request since), is let go first, as by a
            // request: learned past its last renewal's send + the TTL, it is not given back (found by review,
            // rv282: an etcd restore had handed the version known out again, to another pod's takeover, and the
            // drain's release freed that pod's hold while its client held the lock).
            self.let_go_if_lost(name, &mut entry.elector);
            if entry.elector.release(now()).is_none() {
                continue; // Not ours (any more): nothing to give back.
            }
            let quiet_after = (self.ttl * 2 / 3).max(entry.longest_gap * 3 / 2);
            let last = entry.heartbeat.unwrap_or(entry.used);
            let quiet_at = last + quiet_after;
            if Instant::now() < quiet_at {
                drained.held.push(name.clone());
                drained.next_check = Some(drained.next_check.map_or(quiet_at, |at| at.min(quiet_at)));
                continue;
            }
            tracing::info!(
                lease = %self.lease_name(name),
                quiet = ?last.elapsed(),
                "draining: the lock's client stopped heartbeating; releasing it"
            );
            quiet.push((name, entry));
        }
        let releases = quiet.into_iter().map(|(name, mut entry)| async move {
            let lease = self.lease_name(name);
            // A lock that went quiet just before the deadline (SIGTERM right after its client's last
            // heartbeat) still gets a whole budget (found by review: its release was cut off at once).
            let until = deadline.max(Instant::now() + answer_within(self.ttl));
            let cut_off = match tokio::time::timeout_at(until.into(), self.give_back_quiet(name, &mut entry.elector))
                .await
            {
                Ok(Ok(_)) => false,
                Ok(Err(err)) => {
                    tracing::warn!(lease = %lease, error = %err, "cannot release the lock; it expires after its TTL");
                    false
                }
                Err(_) => {
                    tracing::warn!(
                        lease = %lease,
                        "no answer to the release in time (--drain): its outcome is unknown; if it did not land, \
                         the lock expires after its TTL"
                    );
                    true
                }
            };
            entry.heartbeat = None;
            cut_off
        });
        drained.cut_off = futures::future::join_all(releases).await.into_iter().filter(|&cut_off| cut_off).count();
        drained
    }

    /// Forget the state of locks not held (or held no longer surely) that no request used for twice the
    /// TTL. Never sooner: a lock held by another is waited out on this side-car's clock from when it was
    /// first seen, and forgetting it would restart that clock.
    pub fn forget_idle(&self, now: Instant) -> usize {
        let mut map = self.map();
        let before = map.len();
        let idle_after = self.ttl * 2;
        map.retain(|_, entry| {
            // In use, or waited for, by a request.
            if Arc::strong_count(entry) > 1 {
                return true;
            }
            let Ok(entry) = entry.try_lock() else {
                return true;
            };
            let held = entry.elector.held().is_some_and(|held| now < held.deadline(self.timing));
            held || now.saturating_duration_since(entry.used) <= idle_after
        });
        let forgotten = before - map.len();
        if map.capacity() > 2 * map.len() + 64 {
            map.shrink_to_fit();
        }
        self.metrics.tracked.set(map.len() as i64);
        forgotten
    }

    /// Locks held now (for the metrics): entries busy with a request count as they were.
    pub fn held_count(&self) -> usize {
        let now = Instant::now();
        self.map().values().filter(|entry| self.is_held(entry, now)).count()
    }

    /// The locks left unreleased: those whose last known record is this side-car's own, with itself as
    /// holder (held, or a release cut off before its answer), but those busy with a request.
    pub fn unreleased_names(&self) -> Vec<String> {
        let ours = |entry: &Entry| {
            entry.elector.current().is_some_and(|c| c.record.holder_identity.as_deref().is_some_and(|h| !h.is_empty()))
                && entry.elector.release(now()).is_some()
        };
        let map = self.map();
        map.iter().filter(|(_, entry)| entry.try_lock().is_ok_and(|e| ours(&e))).map(|(name, _)| name.clone()).collect()
    }

    /// The locks busy with a request now (a heartbeat waiting for the API server): whether they are held is
    /// not known until it ends.
    pub fn busy_names(&self) -> Vec<String> {
        self.map().iter().filter(|(_, entry)| entry.try_lock().is_err()).map(|(name, _)| name.clone()).collect()
    }

    fn is_held(&self, entry: &Tracked, now: Instant) -> bool {
        entry.held_until().is_some_and(|deadline| now < deadline)
    }

    fn lock_response(&self, status: u16, name: &str, elector: &Elector) -> Response {
        match elector.current() {
            Some(current) => Response::json(
                status,
                &lock_json(
                    name,
                    &self.lease_name(name),
                    self.store.namespace(),
                    current,
                    elector.observed_expiry(),
                    Instant::now(),
                ),
            ),
            None => Response::error(404, format!("no lock {name}")),
        }
    }

    /// A failed API call: 503 if retrying may help; 400 for a name the store refuses; 403 or 500 (and an
    /// error log) if retrying will not help. Messages carry no file system paths.
    fn failure(&self, name: &str, err: StoreError) -> Response {
        self.metrics.api_error(err.kind());
        let lease = self.lease_name(name);
        match err {
            StoreError::Fatal(err) => {
                let message = err.to_string();
                tracing::error!(lease = %lease, error = %message, "API call failed");
                let (status, message) = match &err {
                    Error::Usage(_) => (400, message),
                    Error::Api(_) if message.contains(": 422 ") => (400, message),
                    Error::File(_) if message.contains("os error 36") || message.contains("name too long") => (
                        400,
                        format!(
                            "lock name {name:?} is too long for the file backend's directory (Lease {lease:?}, {} \
                             characters); use a shorter name",
                            lease.len()
                        ),
                    ),
                    Error::File(_) => (500, redact_paths(&message)),
                    _ if message.contains("forbidden") => (403, message),
                    _ => (500, message),
                };
                Response::error(status, message)
            }
            err => {
                tracing::warn!(lease = %lease, error = %err, "API call failed; asking the client to retry");
                Response::error(503, format!("{}; retry", redact_paths(&err.to_string())))
                    .with_header("Retry-After", "1")
            }
        }
    }
}

impl Entry {
    /// A GET, PUT or POST was answered 200 about the lock held: a heartbeat of the holding it belongs to.
    fn heartbeat_answered(&mut self, at: Instant) {
        let token = self.elector.held().map(|held| held.fencing_token);
        match (self.heartbeat, self.token == token) {
            (Some(last), true) => self.longest_gap = self.longest_gap.max(at.saturating_duration_since(last)),
            _ => self.longest_gap = Duration::ZERO,
        }
        self.heartbeat = Some(at);
        self.token = token;
    }
}

/// `Retry-After` in whole seconds until `at` (at least 1).
fn retry_after(at: Instant) -> String {
    at.saturating_duration_since(Instant::now()).as_secs().saturating_add(1).to_string()
}

/// Replace absolute paths in `message` by their last component: errors answered over HTTP name the
/// file, not where the lock directory is.
pub fn redact_paths(message: &str) -> String {
    let words: Vec<String> = message
        .split(' ')
        .map(|word| {
            let Some(start) = word.find('/') else {
                return word.to_string();
            };
            if !word[..start].chars().all(|c| "\"'(".contains(c)) {
                return word.to_string();
            }
            let rest = &word[start..];
            let end = rest.find(|c: char| "\"'),;:".contains(c)).unwrap_or(rest.len());
            let file = rest[..end].rsplit('/').find(|part| !part.is_empty()).unwrap_or("");
            format!("{}{file}{}", &word[..start], &rest[end..])
        })
        .collect();
    words.join(" ")
}

/// The lock as the protocol's JSON. `held` is judged as mpsync judges it: a holder is named and its
/// duration has not passed since this side-car saw the record change (remote clocks are not trusted).
fn lock_json(
    name: &str,
    lease: &str,
    namespace: &str,
    current: &Versioned,
    expiry: Option<Instant>,
    now: Instant,
) -> Value {
    let record = &current.record;
    let holder = record.holder_identity.clone().unwrap_or_default();
    json!({
        "name": name,
        "lease": lease,
        "namespace": namespace,
        "holder": holder,
        "held": !holder.is_empty() && expiry.is_none_or(|expiry| now < expiry),
        "acquireTime": record.acquire_time,
        "renewTime": record.renew_time,
        "leaseDurationSeconds": record.lease_duration_seconds,
        "leaseTransitions": record.lease_transitions.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;

    #[test]
    fn lock_json_judges_held_by_what_this_side_car_observed() {
        let t0 = Instant::now();
        let current = Versioned {
            resource_version: "3".into(),
            metadata: Default::default(),
            record: LeaseSpec {
                holder_identity: Some("pod-a".into()),
                lease_duration_seconds: Some(30),
                lease_transitions: Some(4),
                ..LeaseSpec::default()
            },
        };
        let expiry = Some(t0 + Duration::from_secs(30));
        let value = lock_json("job", "sync-job", "default", &current, expiry, t0);
        assert_eq!(value["holder"], "pod-a");
        assert_eq!(value["name"], "job");
        assert_eq!(value["lease"], "sync-job");
        assert_eq!(value["held"], true);
        assert_eq!(value["leaseTransitions"], 4);
        assert_eq!(value["leaseDurationSeconds"], 30);
        assert_eq!(lock_json("job", "job", "default", &current, expiry, t0 + Duration::from_secs(30))["held"], false);
        let mut free = current.clone();
        free.record.holder_identity = Some(String::new());
        assert_eq!(lock_json("job", "job", "default", &free, None, t0)["held"], false);
    }

    #[test]
    fn a_heartbeat_renews_at_once_and_is_answered_held_while_its_next_answer_comes_before_the_ttl() {
        let timing = timing(Duration::from_secs(30));
        assert_eq!(timing.retry_period, Duration::ZERO);
        assert_eq!(timing.renew_deadline, Duration::from_secs(15));
        assert_eq!(answer_within(Duration::from_secs(30)), Duration::from_secs(5));
        // Held for the renew deadline, a heartbeat interval (a third) and an answer's time: the TTL.
        for ttl in [1, 3, 6, 30, 60, 600] {
            let ttl = Duration::from_secs(ttl);
            let timing = super::timing(ttl);
            assert!(timing.renew_deadline + ttl / 3 + answer_within(ttl) <= ttl, "{ttl:?}");
            assert!(timing.renew_deadline >= ttl / 2, "{ttl:?}");
        }
        assert_eq!(answer_within(Duration::from_secs(600)), Duration::from_secs(5));
        assert_eq!(super::timing(Duration::from_secs(600)).renew_deadline, Duration::from_secs(395));
    }

    #[test]
    fn paths_are_reduced_to_their_file_name() {
        assert_eq!(
            redact_paths("cannot write /tmp/x/locks/.a.json.tmp.12: File name too long (os error 36)"),
            "cannot write .a.json.tmp.12: File name too long (os error 36)"
        );
        assert_eq!(redact_paths("corrupt lease record \"/var/l/a.json\": bad"), "corrupt lease record \"a.json\": bad");
        assert_eq!(redact_paths("lock a/b and 1/2"), "lock a/b and 1/2");
    }

    #[test]
    fn gaps_between_heartbeats_of_one_holding_are_measured() {
        let mut entry = Entry::new(Elector::adopting("pod-a", timing(Duration::from_secs(30))));
        let t0 = Instant::now();
        entry.heartbeat_answered(t0);
        entry.heartbeat_answered(t0 + Duration::from_secs(10));
        entry.heartbeat_answered(t0 + Duration::from_secs(14));
        assert_eq!(entry.longest_gap, Duration::from_secs(10));
    }
}
