//! Carrying out the elector's decisions against a store: the glue that `lock`, `elect` and the
//! side-car share. `lease` decides; these functions do one write, or a release, and tell the elector
//! what became of it.

use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;

use crate::lease::{Elector, Now, Versioned, Write, WriteResult};
use crate::store::{Store, StoreError};

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

/// Send one of the elector's writes and tell it what became of it.
pub async fn send(store: &Store, name: &str, elector: &mut Elector, write: &Write) -> Result<Versioned, StoreError> {
    elector.write_sent(write, Instant::now());
    let result = store.write(name, write).await;
    elector.write_result(write_result(&result), Instant::now());
    result
}

/// Give the lease up: holder cleared and duration 1s, as client-go writes it, with a compare-and-swap,
/// so a waiter takes over at once. A record that is not ours is never written; a lost race or an
/// unknown outcome is settled by reading again. Returns whether a release was written.
pub async fn release(store: &Store, name: &str, elector: &mut Elector) -> Result<bool, StoreError> {
    let mut last_error = None;
    for _attempt in 0..4 {
        let Some(write) = elector.release(now()) else {
            elector.released();
            return Ok(false);
        };
        match send(store, name, elector, &write).await {
            Ok(_) => {
                elector.released();
                return Ok(true);
            }
            Err(StoreError::Fatal(err)) => {
                elector.released();
                return Err(StoreError::Fatal(err));
            }
            Err(err) => {
                tracing::debug!(lease = %name, error = %err, "release did not go through; reading the lease again");
                last_error = Some(err);
                match store.get(name).await {
                    Ok(current) => elector.observe(current, Instant::now()),
                    Err(err) => {
                        last_error = Some(err);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
    }
    elector.released();
    Err(last_error
        .unwrap_or_else(|| StoreError::Transient(format!("lease {name} kept changing while it was released"))))
}
