//! The library's lease lock: a [`Lock`] is built once (backend, name, identity, timings, slots), then
//! acquired as many times as needed. Each acquisition runs in a background task on the caller's tokio
//! runtime: it campaigns, hands out a [`HeldLock`], renews it until the holder releases or drops it or
//! the lease is lost, and gives back whatever it holds, or may hold, on every way out.
//!
//! `lock`, `elect` and the side-car's clients in this crate are built on this same engine.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::engine::{self, Campaigned, Ignore, Observer, Slot, Wait};
use crate::error::{Error, Result};
use crate::lease::{Elector, LossReason, Timing};
use crate::store::Store;
use crate::store::file::FileStore;
use crate::validate;

/// Builds a [`Lock`]: see [`Lock::kube`] and [`Lock::file`].
pub struct LockBuilder {
    store: Result<Store>,
    name: String,
    identity: Option<String>,
    timing: Timing,
    slots: Option<u32>,
    observer: Arc<dyn Observer>,
}

/// A lease lock (or an N-slot semaphore) that this process can acquire and hold.
#[derive(Clone)]
pub struct Lock {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    identity: String,
    timing: Timing,
    namespace: String,
    /// `--slots`, as given (one slot is the plain lease, but its holder still learns its slot number).
    slot_count: Option<u32>,
    slot_names: Vec<String>,
    store: Store,
    /// The slots and what they observed, kept across acquisitions (expiry clocks, earlier holds); one
    /// acquisition at a time uses them.
    slots: Arc<Mutex<Vec<Slot>>>,
}

impl LockBuilder {
    fn new(store: Result<Store>, name: &str) -> LockBuilder {
        LockBuilder {
            store,
            name: name.to_string(),
            identity: None,
            timing: Timing::DEFAULT,
            slots: None,
            observer: Arc::new(Ignore),
        }
    }

    /// The identity written as `holderIdentity` [default: `<POD_NAME or hostname>_<random>`, unique to
    /// this `Lock`]. Two processes must never share one.
    pub fn identity(mut self, identity: impl Into<String>) -> LockBuilder {
        self.identity = Some(identity.into());
        self
    }

    /// The lease timings [default: 15s, 10s, 2s], checked by `build`.
    pub fn timing(mut self, timing: Timing) -> LockBuilder {
        self.timing = timing;
        self
    }

    /// Up to `n` holders at once: one Lease per slot, `NAME-0` .. `NAME-(n-1)`.
    pub fn slots(mut self, n: u32) -> LockBuilder {
        self.slots = Some(n);
        self
    }

    pub(crate) fn observer(mut self, observer: Arc<dyn Observer>) -> LockBuilder {
        self.observer = observer;
        self
    }

    /// Check the options and build the lock.
    pub fn build(self) -> Result<Lock> {
        let store = self.store?;
        validate::name(&self.name)?;
        self.timing.validate()?;
        let identity = match self.identity {
            Some(identity) => validate::identity(identity)?,
            None => validate::default_identity(),
        };
        let slot_names = validate::slot_names(&self.name, self.slots)?;
        let semaphore = self.slots.filter(|n| *n > 1);
        let slots = slot_names
            .iter()
            .map(|name| {
                let elector = Elector::new(identity.clone(), self.timing).with_seed(crate::retry::random_u64());
                let elector = match semaphore {
                    Some(n) => elector.with_slots(n),
                    None => elector,
                };
                Slot::new(name.clone(), store.clone(), elector, Arc::clone(&self.observer))
            })
            .collect();
        Ok(Lock {
            inner: Arc::new(Inner {
                name: self.name,
                identity,
                timing: self.timing,
                namespace: store.namespace().to_string(),
                slot_count: self.slots,
                slot_names: slot_names.clone(),
                store: store.clone(),
                slots: Arc::new(Mutex::new(slots)),
            }),
        })
    }
}

impl Lock {
    /// A lock on the Lease `name` in `namespace`, through `client`.
    pub fn kube(client: kube::Client, namespace: &str, name: &str) -> LockBuilder {
        let store = validate::namespace(namespace).map(|()| {
            let timeout = Timing::DEFAULT.call_timeout();
            Store::Kube(crate::store::kube::KubeStore::new(client, namespace, timeout))
        });
        LockBuilder::new(store, name)
    }

    /// A lock on the lease `name` kept in files under `dir`, for processes on one machine.
    pub fn file(dir: impl Into<PathBuf>, name: &str) -> LockBuilder {
        LockBuilder::new(FileStore::open(dir.into(), "default".into()).map(Store::File), name)
    }

    pub(crate) fn with_store(store: Store, name: &str) -> LockBuilder {
        LockBuilder::new(Ok(store), name)
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn identity(&self) -> &str {
        &self.inner.identity
    }

    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    pub fn timing(&self) -> Timing {
        self.inner.timing
    }

    /// Wait until the lease (or one of its slots) is acquired.
    pub async fn acquire(&self) -> Result<HeldLock> {
        match self.start(Wait::Forever).await? {
            Some(held) => Ok(held),
            None => Err(Error::Internal("the campaign ended without the lease".into())),
        }
    }

    /// One attempt: `None` if the lease is held by another.
    pub async fn try_acquire(&self) -> Result<Option<HeldLock>> {
        self.start(Wait::NoWait).await
    }

    /// Wait at most `timeout`: `None` if the lease was not acquired by then.
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<Option<HeldLock>> {
        self.start(Instant::now().checked_add(timeout).map_or(Wait::Forever, Wait::Until)).await
    }

    /// Start a campaign in the background. Dropping the returned future gives back anything it may
    /// have acquired, in the background; [`Acquiring::cancel`] does so and waits for it.
    pub(crate) fn start(&self, wait: Wait) -> Acquiring {
        let (result_tx, result_rx) = oneshot::channel();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(acquisition(Arc::clone(&self.inner), wait, result_tx, cancel.clone()));
        Acquiring { result: result_rx, cancel, task: Some(task) }
    }
}

/// A Lease as it stands, for people and programs: who holds it, and since when. Nothing in mpsync decides
/// anything from `held` (it judges expiry by when it *observed* a change); it is for display.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaseStatus {
    /// The Lease (for a semaphore, the slot's Lease).
    pub name: String,
    /// For a semaphore: the slot.
    pub slot: Option<usize>,
    /// Whether the Lease exists.
    pub exists: bool,
    /// `holderIdentity`, if someone holds it (empty: free).
    pub holder: Option<String>,
    /// A holder is named and its record has not expired by its own timestamps (`renewTime +
    /// leaseDurationSeconds`), judged on this machine's clock now.
    pub held: bool,
    /// `acquireTime`.
    pub acquire_time: Option<k8s_openapi::jiff::Timestamp>,
    /// `renewTime`.
    pub renew_time: Option<k8s_openapi::jiff::Timestamp>,
    /// `leaseDurationSeconds`.
    pub lease_duration_seconds: Option<i32>,
    /// `leaseTransitions`: the fencing token of the last acquisition.
    pub transitions: i32,
}

impl LeaseStatus {
    fn new(name: &str, slot: Option<usize>, current: Option<&crate::lease::Versioned>) -> LeaseStatus {
        let record = current.map(|v| v.record.clone()).unwrap_or_default();
        let holder = record.holder_identity.clone().filter(|h| !h.is_empty());
        let renew_time = record.renew_time.as_ref().map(|t| t.0);
        let expires = match (renew_time, record.lease_duration_seconds) {
            (Some(renewed), Some(seconds)) if seconds > 0 => {
                renewed.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(i64::from(seconds))).ok()
            }
            _ => None,
        };
        let now = k8s_openapi::jiff::Timestamp::now();
        LeaseStatus {
            name: name.to_string(),
            slot,
            exists: current.is_some(),
            held: holder.is_some() && expires.is_none_or(|expires| expires > now),
            holder,
            acquire_time: record.acquire_time.as_ref().map(|t| t.0),
            renew_time,
            lease_duration_seconds: record.lease_duration_seconds,
            transitions: record.lease_transitions.unwrap_or(0),
        }
    }
}

impl Lock {
    /// The Lease as it stands now (for a semaphore, every slot).
    pub async fn status(&self) -> Result<Vec<LeaseStatus>> {
        let mut statuses = Vec::new();
        for (index, name) in self.inner.slot_names.iter().enumerate() {
            let current = self.inner.store.get(name).await.map_err(store_error)?;
            statuses.push(LeaseStatus::new(name, self.inner.slot_count.map(|_| index), current.as_ref()));
        }
        Ok(statuses)
    }

    /// Every change of holder (of every slot, for a semaphore), from now on: the current state first.
    /// The watches reconnect on their own; the stream ends only when dropped.
    pub fn observe(&self) -> impl futures::Stream<Item = LeaseStatus> + Send + 'static {
        use futures::StreamExt;
        let retry_period = self.inner.timing.retry_period;
        let streams = self.inner.slot_names.iter().enumerate().map(|(index, name)| {
            let watch = self.inner.store.watch(name, retry_period);
            let slot = self.inner.slot_count.map(|_| index);
            let name = name.clone();
            futures::stream::unfold((watch, None::<(Option<String>, i32, bool)>), move |(mut watch, mut last)| {
                let name = name.clone();
                async move {
                    loop {
                        let current = match watch.updates.recv().await? {
                            crate::lease::WatchUpdate::Present(current) => Some(current),
                            _ => None,
                        };
                        let status = LeaseStatus::new(&name, slot, current.as_ref());
                        let key = (status.holder.clone(), status.transitions, status.exists);
                        if last.as_ref() != Some(&key) {
                            last = Some(key);
                            return Some((status, (watch, last)));
                        }
                    }
                }
            })
            .boxed()
        });
        futures::stream::select_all(streams)
    }
}

fn store_error(err: crate::store::StoreError) -> Error {
    match err {
        crate::store::StoreError::Fatal(err) => err,
        other => Error::Api(format!("cannot read the lease: {other}")),
    }
}

/// A campaign on its way (see [`Lock::start`]).
pub(crate) struct Acquiring {
    result: oneshot::Receiver<Result<Option<HeldLock>>>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Acquiring {
    /// Stop the campaign and wait until it has given back whatever it held or may hold.
    pub async fn cancel(mut self) {
        self.cancel.cancel();
        self.result.close();
        // A lock acquired just now and not yet taken: dropping it releases it.
        drop(self.result.try_recv());
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Future for Acquiring {
    type Output = Result<Option<HeldLock>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.result).poll(cx).map(|received| {
            received.unwrap_or_else(|_| Err(Error::Internal("the lease task ended unexpectedly".into())))
        })
    }
}

/// The state a held lock shares with its background task.
#[derive(Clone, Debug)]
struct HoldState {
    /// The lease counts as lost at this moment unless a renewal sent before it succeeds.
    deadline: Instant,
    lost: Option<LossReason>,
}

/// The renew deadline of a held lock as it moves (see [`HeldLock::deadlines`]).
pub(crate) struct Deadlines(watch::Receiver<HoldState>);

impl Deadlines {
    /// The deadline now.
    pub(crate) fn current(&mut self) -> Instant {
        self.0.borrow_and_update().deadline
    }

    /// Wait until it moves (or the lock is gone: then never).
    pub(crate) async fn changed(&mut self) -> Instant {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        self.current()
    }
}

type ReleaseReply = oneshot::Sender<std::result::Result<bool, String>>;

/// A held lease, renewed in the background until it is released, dropped or lost.
///
/// Dropping it without [`release`](HeldLock::release) gives the lease back in the background (on the
/// runtime it was acquired on; if that runtime is gone, the lease expires after its duration).
pub struct HeldLock {
    name: String,
    slot: Option<usize>,
    fencing_token: i32,
    timing: Timing,
    state: watch::Receiver<HoldState>,
    token: CancellationToken,
    release: mpsc::Sender<ReleaseReply>,
}

impl HeldLock {
    /// The Lease held (for a semaphore, the slot's Lease).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The slot held, for a semaphore.
    pub fn slot(&self) -> Option<usize> {
        self.slot
    }

    /// `leaseTransitions` of this acquisition: larger than that of every earlier holder.
    pub fn fencing_token(&self) -> i32 {
        self.fencing_token
    }

    /// Whether the lease is lost (or its renew deadline has passed).
    pub fn is_lost(&self) -> bool {
        let state = self.state.borrow();
        state.lost.is_some() || Instant::now() >= state.deadline
    }

    /// Resolves when the lease is lost: when renewal has failed for the renew deadline, counted from when
    /// the last good renewal was sent, or another holder or a deletion is seen. That is before anyone
    /// else can take the lease over.
    pub async fn lost(&self) -> LossReason {
        let mut state = self.state.clone();
        loop {
            let HoldState { deadline, lost } = state.borrow_and_update().clone();
            if let Some(reason) = lost {
                return reason;
            }
            tokio::select! {
                changed = state.changed() => if changed.is_err() {
                    // The background task is gone: only the deadline is left to go by.
                    tokio::time::sleep_until(deadline.into()).await;
                    return LossReason::RenewDeadline;
                },
                () = tokio::time::sleep_until(deadline.into()) => {
                    if state.borrow().deadline <= Instant::now() {
                        return state.borrow().lost.clone().unwrap_or(LossReason::RenewDeadline);
                    }
                }
            }
        }
    }

    /// The moment the lease counts as lost unless a renewal sent before then succeeds, and a way to wait
    /// for it to move (for a supervisor that enforces it on its own).
    pub(crate) fn deadlines(&self) -> Deadlines {
        Deadlines(self.state.clone())
    }

    /// Cancelled when the lease is lost, released or dropped: pass it to the work done under the lease.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// The timings the lease is held with.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Give the lease back now (only if it is still ours), so the next holder takes over at once.
    pub async fn release(self) -> Result<()> {
        let (reply_tx, reply_rx) = oneshot::channel();
        if self.release.send(reply_tx).await.is_err() {
            return Ok(());
        }
        match reply_rx.await {
            Ok(Ok(_)) | Err(_) => Ok(()),
            Ok(Err(err)) => Err(Error::Api(err)),
        }
    }
}

impl std::fmt::Debug for HeldLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldLock").field("name", &self.name).field("fencing_token", &self.fencing_token).finish()
    }
}

/// One acquisition, start to end: campaign, hand out the held lock, renew, give back.
async fn acquisition(
    inner: Arc<Inner>,
    wait: Wait,
    mut result_tx: oneshot::Sender<Result<Option<HeldLock>>>,
    cancel: CancellationToken,
) {
    let mut slots = Arc::clone(&inner.slots).lock_owned().await;
    let budget = inner.timing.call_timeout();
    let marker_deadline = match wait {
        Wait::Forever => None,
        Wait::Until(at) => Some(at),
        Wait::NoWait => Some(Instant::now() + inner.timing.lease_duration),
    };
    let campaign = async {
        if let Some(n) = inner.slot_count.filter(|n| *n > 1) {
            engine::settle_marker(&inner.store, &inner.name, n, marker_deadline).await?;
        }
        engine::campaign(&mut slots, wait, &inner.name).await
    };
    let campaigned = tokio::select! {
        campaigned = campaign => Some(campaigned),
        () = cancel.cancelled() => None,
        () = result_tx.closed() => None,
    };
    let index = match campaigned {
        Some(Ok(Campaigned::Acquired(index))) => index,
        other => {
            settle_all(&mut slots, budget).await;
            match other {
                Some(Ok(Campaigned::NotAcquired { .. })) => drop(result_tx.send(Ok(None))),
                Some(Err(err)) => drop(result_tx.send(Err(err))),
                _ => {}
            }
            return;
        }
    };
    // A process holds one slot: any other it holds, or may hold through an acquisition whose outcome was
    // unknown, is given back now.
    for (other, slot) in slots.iter_mut().enumerate() {
        if other != index
            && slot.holds_anything()
            && let Err(err) = slot.settle(budget).await
        {
            tracing::warn!(lease = %slot.name(), error = %err, "could not give the lease back; it expires after its duration");
        }
    }
    let slot = &mut slots[index];
    let Some(held) = slot.elector().held().cloned() else {
        return;
    };
    let (state_tx, state_rx) = watch::channel(HoldState { deadline: held.deadline(inner.timing), lost: None });
    let (release_tx, mut release_rx) = mpsc::channel::<ReleaseReply>(1);
    let token = CancellationToken::new();
    let lock = HeldLock {
        name: slot.name().to_string(),
        slot: inner.slot_count.map(|_| index),
        fencing_token: held.fencing_token,
        timing: inner.timing,
        state: state_rx,
        token: token.clone(),
        release: release_tx,
    };
    if result_tx.send(Ok(Some(lock))).is_err() {
        // Nobody took it (the campaign was dropped just now): give it back.
        settle_all(&mut slots, budget).await;
        return;
    }
    let mut request: Option<Option<ReleaseReply>> = None;
    let loss = engine::hold(
        slot,
        async {
            request = Some(release_rx.recv().await);
        },
        |slot| {
            if let Some(held) = slot.elector().held() {
                let deadline = held.deadline(slot.timing());
                state_tx.send_if_modified(|state| std::mem::replace(&mut state.deadline, deadline) != deadline);
            }
        },
    )
    .await;
    token.cancel();
    match loss {
        Some(reason) => {
            tracing::debug!(lease = %slot.name(), reason = %reason, "lease lost");
            state_tx.send_modify(|state| state.lost = Some(reason));
            // Whoever holds the lock stops its work first. Then a record that is still our own write (the
            // renew deadline passed while the server was out of reach, say) is given back, so the next
            // holder need not wait out its duration; then the slot may campaign again.
            let reply = release_rx.recv().await;
            let released = slot.settle(budget).await.map_err(|err| err.to_string());
            slot.forget_loss();
            if let Some(reply) = reply {
                let _ = reply.send(released);
            }
        }
        None => {
            let released = slot.settle(budget).await.map_err(|err| err.to_string());
            if let Err(err) = &released {
                tracing::warn!(lease = %slot.name(), error = %err, "could not release the lease; it expires after its duration");
            }
            if let Some(Some(reply)) = request {
                let _ = reply.send(released);
            }
        }
    }
}

async fn settle_all(slots: &mut [Slot], budget: Duration) {
    for slot in slots.iter_mut() {
        if let Err(err) = slot.settle(budget).await {
            tracing::warn!(lease = %slot.name(), error = %err, "could not give the lease back; it expires after its duration");
        }
    }
}
