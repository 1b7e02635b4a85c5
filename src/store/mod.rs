//! Where lease records live. Two backends with one contract:
//!
//! - `get` returns the record and its `resource_version` (the compare-and-swap token), or `None`.
//! - `create` succeeds only if no record exists (`Conflict` otherwise, like 409 AlreadyExists).
//! - `replace` succeeds only if the stored `resource_version` still equals the one given (`Conflict`
//!   otherwise). Unknown fields of the stored object (spec fields such as `strategy` and `preferredHolder`,
//!   labels, annotations) are preserved.
//! - `watch` delivers the current record at once and then every change, driving waiting; while the
//!   underlying watch is down it polls at `retry_period` instead.
//!
//! Every call has a timeout; a write whose outcome is unknown returns `Unknown`, never a guess.

pub mod file;
pub mod kube;

use std::time::Duration;

use k8s_openapi::api::coordination::v1::LeaseSpec;
use tokio::sync::mpsc;

use crate::error::Error;
use crate::lease::{Versioned, Write};

/// What can go wrong with one store call, in the terms the run loop acts on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A compare-and-swap lost: 409 Conflict, or 409 AlreadyExists on create.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A write whose outcome is unknown (timeout, dropped connection): read again to find out.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// A failure worth retrying with backoff: connection refused, timeouts on reads, 429, 5xx.
    #[error("{0}")]
    Transient(String),
    /// A failure retrying will not fix: forbidden, unauthorized, namespace missing, invalid, corrupt.
    #[error(transparent)]
    Fatal(#[from] Error),
}

impl StoreError {
    /// A short, stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Conflict(_) => "conflict",
            StoreError::Unknown(_) => "unknown",
            StoreError::Transient(_) => "transient",
            StoreError::Fatal(_) => "fatal",
        }
    }
}

/// One update from a watch: the record as it is now (`None`: no such lease).
pub type WatchUpdate = Option<Versioned>;

/// A running watch on one lease. Dropping it stops the background task.
pub struct Watch {
    pub updates: mpsc::Receiver<WatchUpdate>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    pub fn new(updates: mpsc::Receiver<WatchUpdate>, task: tokio::task::JoinHandle<()>) -> Watch {
        Watch { updates, task }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The backend chosen by `--backend`. One per process, so the size difference does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Store {
    Kube(kube::KubeStore),
    File(file::FileStore),
}

impl Store {
    /// The namespace leases live in (for the file backend: a label only, shown to the child).
    pub fn namespace(&self) -> &str {
        match self {
            Store::Kube(store) => store.namespace(),
            Store::File(store) => store.namespace(),
        }
    }

    pub async fn get(&self, name: &str) -> Result<Option<Versioned>, StoreError> {
        match self {
            Store::Kube(store) => store.get(name).await,
            Store::File(store) => store.get(name).await,
        }
    }

    pub async fn create(&self, name: &str, record: &LeaseSpec) -> Result<Versioned, StoreError> {
        match self {
            Store::Kube(store) => store.create(name, record).await,
            Store::File(store) => store.create(name, record).await,
        }
    }

    pub async fn replace(
        &self,
        name: &str,
        resource_version: &str,
        record: &LeaseSpec,
    ) -> Result<Versioned, StoreError> {
        match self {
            Store::Kube(store) => store.replace(name, resource_version, record).await,
            Store::File(store) => store.replace(name, resource_version, record).await,
        }
    }

    /// Send one write of the elector's: a create or a compare-and-swap replace.
    pub async fn write(&self, name: &str, write: &Write) -> Result<Versioned, StoreError> {
        match write {
            Write::Create(record) => self.create(name, record).await,
            Write::Replace { resource_version, record } => self.replace(name, resource_version, record).await,
        }
    }

    /// Start watching `name`. Must be called inside the tokio runtime.
    pub fn watch(&self, name: &str, retry_period: Duration) -> Watch {
        match self {
            Store::Kube(store) => store.watch(name, retry_period),
            Store::File(store) => store.watch(name, retry_period),
        }
    }
}

/// `base` scaled by a random factor in [0.5, 1.0]: spreads the retries of many processes apart.
pub fn jittered(base: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() ^ std::process::id().wrapping_mul(2_654_435_761));
    let factor = 0.5 + (nanos % 1000) as f64 / 2000.0;
    base.mul_f64(factor)
}

/// Exponential backoff for retries after `failures` consecutive failures: from `base / 4` up to
/// `base`, jittered.
pub fn backoff(base: Duration, failures: u32) -> Duration {
    let step = (base / 4).max(Duration::from_millis(50));
    let grown = step.saturating_mul(1u32 << failures.min(6).saturating_sub(1)).min(base.max(step));
    jittered(grown)
}
