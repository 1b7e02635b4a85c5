//! mpsync: run a process under a Kubernetes Lease.
//!
//! Data flows one way: `cli` turns flags into a validated `Config`; `run` drives one loop that asks
//! `lease` what to do and tells `store` and `supervise` to do it.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod backend;
pub mod cli;
pub mod election;
pub mod engine;
pub mod error;
pub mod exit;
pub mod health;
pub mod http;
pub mod lease;
pub mod lock;
pub mod logging;
pub mod retry;
pub mod run;
pub mod sidecar;
pub mod status;
pub mod store;
pub mod supervise;
pub mod validate;

pub use election::{AfterLoss, Election, Leadership, Outcome};
pub use error::{Error, Result};
pub use exit::Exit;
pub use lease::{LossReason, Timing};
pub use lock::{HeldLock, LeaseStatus, Lock, LockBuilder};
