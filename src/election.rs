//! Leader election for Rust programs: campaign for a [`Lock`], run the caller's work while this process
//! leads, cancel it when leadership is lost, then campaign again or return.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::lease::LossReason;
use crate::lock::Lock;

/// What an [`Election`] does when leadership is lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterLoss {
    /// Campaign again, and run the work again when re-elected (the default, as `mpsync elect`).
    CampaignAgain,
    /// Return [`Outcome::Lost`] (as `mpsync elect --exit-on-loss`).
    Return,
}

/// How an election's [`run`](Election::run) ended.
#[derive(Debug)]
pub enum Outcome<T> {
    /// The work returned on its own while leading; the lease was released.
    Finished(T),
    /// Leadership was lost (only with [`AfterLoss::Return`]); the work was cancelled and is gone.
    Lost(LossReason),
}

/// What the work gets while this process leads.
#[derive(Clone, Debug)]
pub struct Leadership {
    token: CancellationToken,
    fencing_token: i32,
    lease: String,
}

impl Leadership {
    /// `leaseTransitions` of this term: larger than that of every earlier leader. Pass it with every
    /// write to what the leader protects, and have that reject lower tokens.
    pub fn fencing_token(&self) -> i32 {
        self.fencing_token
    }

    /// Cancelled when leadership is lost (at the renew deadline at the latest, before anyone else can
    /// take over). Pass it down to everything the leader does.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Resolves when leadership is lost: `select!` on it, or await it after starting the work.
    pub async fn lost(&self) {
        self.token.cancelled().await;
    }

    /// Whether leadership is lost already.
    pub fn is_lost(&self) -> bool {
        self.token.is_cancelled()
    }

    /// The Lease this term holds.
    pub fn lease(&self) -> &str {
        &self.lease
    }
}

/// Leader election over a [`Lock`].
///
/// ```no_run
/// # async fn example(client: kube::Client) -> mpsync::Result<()> {
/// use mpsync::{Election, Lock};
///
/// let lock = Lock::kube(client, "default", "my-controller").build()?;
/// Election::new(lock)
///     .run(|leadership| async move {
///         // Work only while leading; stop when the token is cancelled.
///         while !leadership.is_lost() {
///             tokio::select! {
///                 _ = leadership.lost() => break,
///                 _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => { /* reconcile */ }
///             }
///         }
///     })
///     .await?;
/// # Ok(())
/// # }
/// ```
pub struct Election {
    lock: Lock,
    after_loss: AfterLoss,
    grace: Duration,
}

impl Election {
    /// An election over `lock`. The work gets `grace` (by default the lock's
    /// `lease_duration - renew_deadline - 1s`) to return after its token is cancelled; then it is dropped.
    pub fn new(lock: Lock) -> Election {
        let timing = lock.timing();
        let grace = timing.lease_duration.saturating_sub(timing.renew_deadline).saturating_sub(Duration::from_secs(1));
        Election { lock, after_loss: AfterLoss::CampaignAgain, grace }
    }

    /// What to do when leadership is lost [default: campaign again].
    pub fn after_loss(mut self, after_loss: AfterLoss) -> Election {
        self.after_loss = after_loss;
        self
    }

    /// How long the work has, after its token is cancelled, to return before it is dropped. Keep
    /// `renew_deadline + grace` below `lease_duration`, so the work is gone before anyone else can lead.
    pub fn grace(mut self, grace: Duration) -> Election {
        self.grace = grace;
        self
    }

    /// Campaign; run `work` while leading; on loss cancel its token, give it `grace` to return, drop it
    /// if it has not, then campaign again or return, as chosen. When the work returns on its own while
    /// leading, the lease is released and its value returned.
    pub async fn run<F, Fut, T>(&self, mut work: F) -> Result<Outcome<T>>
    where
        F: FnMut(Leadership) -> Fut,
        Fut: Future<Output = T>,
    {
        loop {
            let held = self.lock.acquire().await?;
            let leadership = Leadership {
                token: held.cancellation_token(),
                fencing_token: held.fencing_token(),
                lease: held.name().to_string(),
            };
            tracing::info!(lease = %held.name(), token = held.fencing_token(), "leading");
            let running = work(leadership);
            tokio::pin!(running);
            let reason = tokio::select! {
                output = &mut running => {
                    held.release().await?;
                    return Ok(Outcome::Finished(output));
                }
                reason = held.lost() => reason,
            };
            // The token is cancelled: the work stops, or is dropped after the grace.
            tracing::warn!(lease = %held.name(), reason = %reason, "leadership lost; stopping the work");
            let _ = tokio::time::timeout(self.grace, &mut running).await;
            drop(running);
            drop(held);
            if self.after_loss == AfterLoss::Return {
                return Ok(Outcome::Lost(reason));
            }
        }
    }
}
