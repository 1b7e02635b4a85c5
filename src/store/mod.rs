//! Where lease records live. Two backends with one contract:
//!
//! - `get` returns the record and its `resource_version` (the compare-and-swap token), or `None`.
//! - `write` of a create succeeds only if no record exists (`Conflict` otherwise, like 409 AlreadyExists);
//!   of a replace, only if the stored `resource_version` still equals the one the write carries
//!   (`Conflict` otherwise). A replace writes the whole object it was given: the spec, and the metadata
//!   (labels, annotations, uid) it read, so unknown fields survive.
//! - `list` returns every record in the namespace (for the file backend: in the lock directory) whose
//!   labels match a label selector, ordered by name; each names its lease in `metadata.name`.
//! - `watch` delivers the current record at once and then every change, driving waiting; while the
//!   underlying watch is down it polls at `retry_period` instead. An absence carries the resource version
//!   it was seen at, so that a stale list cannot pass for a deletion.
//!
//! Every call has a timeout; a write whose outcome is unknown returns `Unknown`, never a guess. No store
//! keeps state between calls.

#[cfg(feature = "file")]
pub mod file;
#[cfg(feature = "kube")]
pub mod kube;
pub mod selector;

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::error::Error;
pub use crate::lease::WatchUpdate;
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
    /// A record exists that cannot be read (corrupt, not a Lease, not a regular file): the lease counts as
    /// held by someone, and the read is retried with backoff.
    #[error("{0}")]
    Unreadable(String),
    /// A failure retrying will not fix: forbidden, unauthorized, namespace missing, invalid, corrupt.
    #[error(transparent)]
    Fatal(#[from] Error),
}

impl StoreError {
    /// Whether this is the API server's own refusal by RBAC (a 403 with a Kubernetes Status, which the kube
    /// store words "VERB lease(s) ...: forbidden: ...", with no colon before it), not a gateway's 403 or any
    /// other lasting failure (whose words, its body's included, come after a colon).
    pub fn is_forbidden(&self) -> bool {
        matches!(self, StoreError::Fatal(Error::Api(message))
            if message.split_once(": forbidden: ").is_some_and(|(what, _)| !what.contains(':')))
    }

    /// A short, stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Conflict(_) => "conflict",
            StoreError::Unknown(_) => "unknown",
            StoreError::Transient(_) => "transient",
            StoreError::Unreadable(_) => "unreadable",
            StoreError::Fatal(_) => "fatal",
        }
    }
}

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

/// The backend chosen by `--backend` (or by the library's caller). Stateless: everything a write needs
/// travels in the `Write` (the object's metadata included), so clones share nothing but the client.
#[derive(Clone)]
pub enum Store {
    #[cfg(feature = "kube")]
    Kube(kube::KubeStore),
    #[cfg(feature = "file")]
    File(file::FileStore),
}

impl Store {
    /// The namespace leases live in (for the file backend: a label only, shown to the child).
    pub fn namespace(&self) -> &str {
        match self {
            #[cfg(feature = "kube")]
            Store::Kube(store) => store.namespace(),
            #[cfg(feature = "file")]
            Store::File(store) => store.namespace(),
        }
    }

    pub async fn get(&self, name: &str) -> Result<Option<Versioned>, StoreError> {
        match self {
            #[cfg(feature = "kube")]
            Store::Kube(store) => store.get(name).await,
            #[cfg(feature = "file")]
            Store::File(store) => store.get(name).await,
        }
    }

    /// Every lease whose labels match `label_selector` (all leases with `None`), ordered by name. The
    /// Kubernetes backend passes the selector to the API server; the file backend understands its
    /// equality-based part (see [`selector`]).
    pub async fn list(&self, label_selector: Option<&str>) -> Result<Vec<Versioned>, StoreError> {
        match self {
            #[cfg(feature = "kube")]
            Store::Kube(store) => store.list(label_selector).await,
            #[cfg(feature = "file")]
            Store::File(store) => store.list(label_selector).await,
        }
    }

    /// Send one write of the elector's: a create, or a compare-and-swap replace carrying the metadata of
    /// the object it replaces.
    pub async fn write(&self, name: &str, write: &Write) -> Result<Versioned, StoreError> {
        match self {
            #[cfg(feature = "kube")]
            Store::Kube(store) => store.write(name, write).await,
            #[cfg(feature = "file")]
            Store::File(store) => store.write(name, write).await,
        }
    }

    /// Writes sent from now on give up at `at`, if any, where they can do so unapplied: the file
    /// backend's wait for its directory's lock. A request to the API server is bounded by its call
    /// timeout alone.
    pub fn give_up_at(&mut self, at: Option<Instant>) {
        #[cfg(not(feature = "file"))]
        let _ = at;
        match self {
            #[cfg(feature = "kube")]
            Store::Kube(_) => {}
            #[cfg(feature = "file")]
            Store::File(store) => store.give_up_at(at),
        }
    }

    /// Start watching `name`. Must be called inside the tokio runtime.
    pub fn watch(&self, name: &str, retry_period: Duration) -> Watch {
        self.watch_from(name, retry_period, None)
    }

    /// Start watching `name`, known as `known` (just read or written): the Kubernetes backend watches from
    /// its resourceVersion at once instead of listing first. Must be called inside the tokio runtime.
    pub fn watch_from(&self, name: &str, retry_period: Duration, known: Option<&Versioned>) -> Watch {
        match self {
            #[cfg(feature = "kube")]
            Store::Kube(store) => {
                store.watch_from(name, retry_period, known.map(|known| known.resource_version.clone()))
            }
            #[cfg(feature = "file")]
            Store::File(store) => {
                let _ = known;
                store.watch(name, retry_period)
            }
        }
    }
}

pub use crate::retry::{FailureLog, backoff, jittered};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_api_servers_own_refusal_is_forbidden() {
        let api = |message: &str| StoreError::Fatal(Error::Api(message.to_string()));
        let rbac = "list leases in namespace default: forbidden: User \"x\" cannot list resource \"leases\"; listing \
                    needs only the list verb";
        assert!(api(rbac).is_forbidden());
        let gateway = "list leases in namespace default: 403 with no Kubernetes Status (from a proxy or gateway, or \
                       the API server's own filters): <h1>Error: forbidden: denied</h1>";
        assert!(!api(gateway).is_forbidden());
        assert!(
            !api("list leases in namespace default: 401 Unauthorized: the API server rejected the credentials")
                .is_forbidden()
        );
        assert!(!StoreError::Transient("list leases: forbidden: no".into()).is_forbidden());
    }
}
