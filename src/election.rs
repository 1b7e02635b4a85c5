//! Leader election for Rust programs: campaign for a [`Lock`], run the caller's work while this process
//! leads, cancel it when leadership is lost, then campaign again or return.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::engine::Wait;
use crate::error::{Error, Result};
use crate::lease::LossReason;
use crate::lock::{HoldState, Lock, lost_now};

/// What an [`Election`] does when leadership is lost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AfterLoss {
    /// Campaign again, and run the work again when re-elected (the default, as `mpsync elect`).
    #[default]
    CampaignAgain,
    /// Return [`Outcome::Lost`] (as `mpsync elect --exit-on-loss`).
    Return,
}

/// How [`Election::run`] ended.
#[derive(Debug)]
#[must_use]
pub enum Outcome<T> {
    /// The work returned while this process was leading (on its own, or after a
    /// [`shutdown`](Election::shutdown) cancelled its token), with this value; the lease was released.
    Finished(T),
    /// Leadership was lost (with [`AfterLoss::Return`]); the work's token was cancelled and the work
    /// returned or was dropped after the grace. Its value, if any, is dropped. Also whatever
    /// `after_loss` says when the work returned only after the lease was lost (a runtime that did not
    /// run at the renew deadline): it ended, but not while leading, and is not run again.
    Lost(LossReason),
    /// [`shutdown`](Election::shutdown) was cancelled while this process was not leading: nothing is
    /// held.
    Stopped,
}

/// What the work gets while this process leads: its fencing token, and a way to learn that the term is
/// over.
#[derive(Clone, Debug)]
pub struct Leadership {
    token: CancellationToken,
    fencing_token: i32,
    lease: String,
    state: watch::Receiver<HoldState>,
}

impl Leadership {
    /// `leaseTransitions` of this term: larger than that of every earlier leader. Pass it with every
    /// write to what the leader protects, and have that reject lower tokens.
    pub fn fencing_token(&self) -> i32 {
        self.fencing_token
    }

    /// A token cancelled when the term ends: leadership lost (at the renew deadline at the latest,
    /// before anyone else can take over), or the election shut down. Pass it down to everything the
    /// leader does. Cancelling it yourself (to stop your own workers, say) stops only them, as with
    /// [`HeldLock::cancellation_token`](crate::HeldLock::cancellation_token): the term goes on, and
    /// [`lost`](Self::lost) and [`is_lost`](Self::is_lost) still tell only of its end.
    pub fn cancellation_token(&self) -> CancellationToken {
        // A child (found by review, helper-188: the term's own token was handed out, and work that
        // cancelled it to stop its workers made every clone say the term was lost while it led on).
        self.token.child_token()
    }

    /// Resolves when the term ends (see [`cancellation_token`](Self::cancellation_token)): `select!` on
    /// it, or await it after starting the work.
    pub async fn lost(&self) {
        self.token.cancelled().await;
    }

    /// Whether the term has ended: the token is cancelled, or the renew deadline has passed on this
    /// machine's monotonic clock now (a process frozen past it knows at once when it runs again, before
    /// the token is cancelled).
    pub fn is_lost(&self) -> bool {
        self.token.is_cancelled() || lost_now(&self.state)
    }

    /// The Lease this term holds (for a semaphore, the slot's Lease).
    pub fn lease(&self) -> &str {
        &self.lease
    }
}

/// Leader election over a [`Lock`]: campaign, run the work while leading, stop it on loss.
///
/// ```no_run
/// # async fn example(client: kube::Client) -> mpsync::Result<()> {
/// use mpsync::{Election, Lock};
///
/// let lock = Lock::kube(client, "default", "my-controller").build()?;
/// Election::new(lock)
///     .run(|leadership| async move {
///         // Work only while leading; stop when the term ends.
///         loop {
///             tokio::select! {
///                 () = leadership.lost() => break,
///                 () = tokio::time::sleep(std::time::Duration::from_secs(1)) => { /* reconcile */ }
///             }
///         }
///     })
///     .await?;
/// # Ok(())
/// # }
/// ```
///
/// The seed's `Election(name, onLeader, onLost)` is this, with `on_leader` and `on_lost` your own:
///
/// ```no_run
/// # async fn example(lock: mpsync::Lock) -> mpsync::Result<()> {
/// # fn on_leader(_: i32) {}
/// # fn on_lost() {}
/// mpsync::Election::new(lock)
///     .run(|leadership| async move {
///         on_leader(leadership.fencing_token());
///         leadership.lost().await;
///         on_lost();
///     })
///     .await?;
/// # Ok(())
/// # }
/// ```
///
/// # The work
///
/// The work is an async closure, called once per term with a [`Leadership`]. It runs inside
/// [`run`](Self::run)'s future (not spawned), so it needs no `Send` or `'static` bounds, and
/// dropping that future drops the work. When the term ends, the work's token is cancelled; it has
/// [`grace`](Self::grace) to return, and is then dropped. Dropping stops it at its next `.await`: code
/// that blocks (a blocking call, a busy loop, a thread of its own), and any task the work spawns with
/// `tokio::spawn` (dropping the work does not drop it), is the caller's to stop, by checking
/// the token between steps, before `renew_deadline + grace` have passed since the last good renewal.
/// The token is cancelled at the renew deadline even while such code keeps the runtime from running.
/// That is what keeps two leaders from working at once.
#[derive(Debug)]
pub struct Election {
    lock: Lock,
    after_loss: AfterLoss,
    grace: Duration,
    shutdown: Option<CancellationToken>,
}

impl Election {
    /// An election over `lock`, campaigning again after a loss, with a grace of
    /// `lease_duration - renew_deadline - 1s` (4s with the default timings).
    pub fn new(lock: Lock) -> Election {
        let timing = lock.timing();
        let grace = timing.lease_duration.saturating_sub(timing.renew_deadline).saturating_sub(Duration::from_secs(1));
        Election { lock, after_loss: AfterLoss::CampaignAgain, grace, shutdown: None }
    }

    /// What to do when leadership is lost [default: [`AfterLoss::CampaignAgain`]].
    pub fn after_loss(mut self, after_loss: AfterLoss) -> Election {
        self.after_loss = after_loss;
        self
    }

    /// How long the work has, after its token is cancelled on a loss, to return before it is dropped:
    /// never past `renew_deadline + grace` after the last good renewal, so a loss learned late (the
    /// runtime did not run at the deadline) leaves less, or none. `renew_deadline + grace` must stay below `lease_duration` (checked by [`run`](Self::run)), so
    /// that the work is gone before anyone else can lead.
    pub fn grace(mut self, grace: Duration) -> Election {
        self.grace = grace;
        self
    }

    /// Stop gracefully when `token` is cancelled (on SIGTERM, say): while campaigning, stop at once,
    /// holding nothing ([`Outcome::Stopped`]); while leading, cancel the work's token and wait for the
    /// work to return, still renewing, then release the lease so that another process takes over at
    /// once ([`Outcome::Finished`]). A loss meanwhile ends the term as usual.
    pub fn shutdown(mut self, token: CancellationToken) -> Election {
        self.shutdown = Some(token);
        self
    }

    /// The lock this election campaigns for.
    pub fn lock(&self) -> &Lock {
        &self.lock
    }

    /// Campaign; run `work` while leading; when leadership is lost, cancel its token, give it the grace
    /// to return, drop it if it has not, then campaign again or return, as chosen. When the work
    /// returns while leading, the lease is released and its value returned.
    ///
    /// Dropping the future stops everything at once: the campaign, or the work (dropped, not
    /// cancelled); the lease is given back in the background (see [`HeldLock`](crate::HeldLock)).
    ///
    /// # Errors
    ///
    /// [`Error::Usage`] if `renew_deadline + grace` is not below `lease_duration`; otherwise as
    /// [`Lock::acquire`], while campaigning. A failed release after the work returned is logged, not
    /// returned (the lease then expires after its duration).
    pub async fn run<F, Fut, T>(&self, mut work: F) -> Result<Outcome<T>>
    where
        F: FnMut(Leadership) -> Fut,
        Fut: Future<Output = T>,
    {
        let timing = self.lock.timing();
        if timing.renew_deadline.saturating_add(self.grace) >= timing.lease_duration {
            return Err(Error::Usage(format!(
                "Election::grace ({:?}) plus renew_deadline ({:?}) must be less than lease_duration ({:?}), so that \
                 the work is gone before another process can lead",
                self.grace, timing.renew_deadline, timing.lease_duration
            )));
        }
        let shutdown = self.shutdown.clone().unwrap_or_default();
        loop {
            if shutdown.is_cancelled() {
                return Ok(Outcome::Stopped);
            }
            let mut acquiring = self.lock.start(Wait::Forever);
            let held = tokio::select! {
                // A shutdown first: work never starts after it was asked for, even when the lease came
                // in the same poll (found by review, helper-115); what the campaign got is given back.
                biased;
                () = shutdown.cancelled() => {
                    acquiring.cancel().await;
                    return Ok(Outcome::Stopped);
                }
                acquired = &mut acquiring => match acquired? {
                    Some(held) => held,
                    None => return Err(Error::Internal("the campaign ended without the lease".into())),
                },
            };
            // A child of the lease's own token: cancelled on loss by the lease's task, and by us on shutdown.
            let token = held.cancellation_token().child_token();
            let leadership = Leadership {
                token: token.clone(),
                fencing_token: held.fencing_token(),
                lease: held.name().to_string(),
                state: held.hold_state(),
            };
            tracing::info!(lease = %held.name(), identity = %self.lock.identity(), token = held.fencing_token(), "leading");
            // Boxed, so that it can be dropped before the lease is given back.
            let mut running = Box::pin(work(leadership));
            let mut stopping = false;
            let (reason, returned) = loop {
                tokio::select! {
                    // A loss first: work that is ready too (a runtime that did not run at the deadline
                    // runs again) is not polled once more.
                    biased;
                    reason = held.lost() => break (reason, false),
                    output = &mut running => {
                        token.cancel();
                        // Returned after the lease was lost (a runtime that did not run at the deadline):
                        // not while leading. Its value is dropped, as for work dropped after the grace.
                        if let Some(reason) = held.loss_now() {
                            drop(output);
                            break (reason, true);
                        }
                        if let Err(err) = held.release().await {
                            tracing::warn!(lease = %self.lock.name(), error = %err, "could not release the lease; it expires after its duration");
                        }
                        return Ok(Outcome::Finished(output));
                    }
                    () = shutdown.cancelled(), if !stopping => {
                        tracing::info!(lease = %held.name(), "shutting down; waiting for the work to return");
                        stopping = true;
                        token.cancel();
                    }
                }
            };
            token.cancel();
            tracing::warn!(lease = %held.name(), reason = %reason, "leadership lost; stopping the work");
            // The grace counts from the loss, and never past `renew_deadline + grace` after the last good
            // renewal, even when this runtime learns of the loss late (it did not run at the deadline):
            // then the work is dropped at once, before anyone else can lead.
            let now = Instant::now();
            let until = (now + self.grace).min(held.deadline() + self.grace);
            if !returned && (until <= now || tokio::time::timeout_at(until.into(), &mut running).await.is_err()) {
                tracing::warn!(lease = %held.name(), grace = ?self.grace, "the work did not return within the grace; dropped");
            }
            drop(running);
            drop(held);
            // Work that returned is done, even if only after the loss: it is not run again.
            if self.after_loss == AfterLoss::Return || returned {
                return Ok(Outcome::Lost(reason));
            }
        }
    }
}
