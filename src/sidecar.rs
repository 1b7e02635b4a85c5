//! `mpsync sidecar`: the metaparticle elector HTTP protocol, backed by Leases.
//!
//! Metaparticle/Sync clients (JavaScript, Python, Java, .NET, Go) hold a lock through a side-car on
//! localhost: `GET /locks/NAME` (does it exist?), then `PUT /locks/NAME` (acquire or heartbeat: 200 if
//! this side-car holds it, 409 if another does), again every 10 seconds while they hold it. Here each
//! NAME is one Lease, driven by the same `lease::Elector` as `lock`, under the side-car's one identity:
//!
//! - Every request reads the Lease first and feeds the elector, then asks it what to do. Its retry
//!   period is zero, so a heartbeat renews at once; "wait" means another identity holds the lock
//!   unexpired (409). Every write is a compare-and-swap; a lost race is settled by reading again.
//! - Expiry is the lease's: once a client's heartbeats stop, another side-car takes the lock when the
//!   TTL has passed since *it* observed the last heartbeat, on its monotonic clock.
//! - A heartbeat later than 90% of the TTL after the last renewal is sent no longer renews: the lock
//!   is taken afresh (if nobody else took it meanwhile) with a new `leaseTransitions`.
//!
//! HTTP/1.1 is the little that `http` parses: requests are one line and a few headers, and every
//! response closes the connection.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::time::timeout;

use crate::backend::{block_on, open_store};
use crate::cli::{SidecarConfig, is_dns1123_subdomain};
use crate::engine::{self, now};
use crate::error::{Error, Result};
use crate::exit::Exit;
use crate::http::{self, Request, Response};
use crate::lease::{Action, Elector, Timing, Versioned};
use crate::store::{Store, StoreError};

/// One API call's timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Every request is answered within this, whatever the API server does.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long, on SIGTERM, releasing the locks held may take before the rest are left to expire.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);
/// The methods served on /locks/NAME.
const ALLOW: &str = "GET, HEAD, PUT, POST, DELETE";

/// Serve the protocol until SIGTERM or SIGINT; then release every lock held and exit 0.
pub fn sidecar(config: SidecarConfig) -> Result<Exit> {
    use tokio::signal::unix::{SignalKind, signal};
    block_on(async move {
        let store = open_store(&config.backend, CALL_TIMEOUT).await?;
        let listener = TcpListener::bind(config.listen).await.map_err(|err| {
            Error::Usage(format!(
                "cannot listen on {}: {err}\npass --listen with a free address (port 0 picks one)",
                config.listen
            ))
        })?;
        let address =
            listener.local_addr().map_err(|err| Error::Internal(format!("cannot read the address: {err}")))?;
        let signals = |err: std::io::Error| Error::Internal(format!("cannot handle signals: {err}"));
        let mut interrupt = signal(SignalKind::interrupt()).map_err(signals)?;
        let mut terminate = signal(SignalKind::terminate()).map_err(signals)?;

        let locks = Arc::new(Locks::new(store, config.identity, config.ttl));
        // One line on stdout, the only one: where clients connect (the port, with `--listen ...:0`).
        let _ = writeln!(std::io::stdout(), "listening on {address}");
        tracing::info!(address = %address, identity = %locks.identity, ttl = ?config.ttl, "serving the metaparticle protocol");
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(serve(stream, Arc::clone(&locks)));
                    }
                    Err(err) => {
                        // Out of file descriptors, say: the listener still works once some close.
                        tracing::warn!(error = %err, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
            }
        }
        drop(listener);
        locks.release_all().await;
        Ok(Exit::Success)
    })
}

/// The lease timing of one lock: held for `ttl` without a heartbeat; a heartbeat renews at once (retry
/// period zero); one that comes later than 90% of the TTL takes the lock afresh instead. There is no
/// child to stop here, so `lock`'s start-up invariant has nothing to protect and is not applied.
fn timing(ttl: Duration) -> Timing {
    Timing { lease_duration: ttl, renew_deadline: ttl.saturating_sub(ttl / 10), retry_period: Duration::ZERO }
}

/// Every lock this side-car has been asked about: one elector each, each behind its own mutex, so
/// requests for one lock are served one at a time and requests for different locks concurrently.
struct Locks {
    store: Store,
    identity: String,
    timing: Timing,
    electors: std::sync::Mutex<HashMap<String, Arc<Mutex<Elector>>>>,
    closing: AtomicBool,
}

impl Locks {
    fn new(store: Store, identity: String, ttl: Duration) -> Locks {
        Locks {
            store,
            identity,
            timing: timing(ttl),
            electors: std::sync::Mutex::new(HashMap::new()),
            closing: AtomicBool::new(false),
        }
    }

    fn elector(&self, name: &str) -> Arc<Mutex<Elector>> {
        let mut electors = self.electors.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = electors
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(Elector::new(self.identity.clone(), self.timing))));
        Arc::clone(entry)
    }

    async fn answer(&self, request: &Request) -> Response {
        let Some(name) = lock_name(&request.path) else {
            return Response::error(404, format!("unknown path {:?}: locks are served at /locks/NAME", request.path));
        };
        if !is_dns1123_subdomain(name) {
            return Response::error(
                400,
                format!("invalid lock name {name:?}: must be a lowercase RFC 1123 subdomain (a Lease name)"),
            );
        }
        let Some(method) = Method::parse(&request.method) else {
            return Response::error(405, format!("method {} is not served on /locks/NAME", request.method))
                .with_header("Allow", ALLOW);
        };
        let entry = self.elector(name);
        let mut elector = entry.lock().await;
        // Checked after the wait: shutting down, the locks are being released, not taken.
        if self.closing.load(Ordering::SeqCst) {
            return Response::error(503, "the side-car is shutting down");
        }
        match method {
            Method::Get | Method::Head => self.get(name, &mut elector).await,
            Method::Put => self.acquire(name, &mut elector, false).await,
            Method::Post => self.acquire(name, &mut elector, true).await,
            Method::Delete => self.delete(name, &mut elector).await,
        }
    }

    /// GET: the lock as JSON, or 404.
    async fn get(&self, name: &str, elector: &mut Elector) -> Response {
        match self.store.get(name).await {
            Ok(current) => {
                elector.observe(current, Instant::now());
                self.lock_response(200, name, elector)
            }
            Err(err) => failure(name, err),
        }
    }

    /// PUT (acquire or heartbeat) and POST (`create_only`: create it, or 409 if it exists): 200 when this
    /// identity holds the lock, 409 with the lock when another identity holds it unexpired.
    async fn acquire(&self, name: &str, elector: &mut Elector, create_only: bool) -> Response {
        let mut last_race = String::new();
        // A lost compare-and-swap or an unknown outcome: read again and decide again, a few times.
        for _attempt in 0..3 {
            let current = match self.store.get(name).await {
                Ok(current) => current,
                Err(err) => return failure(name, err),
            };
            if create_only && current.is_some() {
                elector.observe(current, Instant::now());
                return self.lock_response(409, name, elector);
            }
            let action = self.decide(name, elector, current);
            let renewal = elector.held().is_some();
            match action {
                Action::Write(write) => match engine::send(&self.store, name, elector, &write).await {
                    Ok(_) => match elector.held() {
                        Some(held) => {
                            if renewal {
                                tracing::debug!(lease = %name, token = held.fencing_token, "renewed the lock");
                            } else {
                                tracing::info!(lease = %name, identity = %self.identity, token = held.fencing_token, "acquired the lock");
                            }
                            return self.lock_response(200, name, elector);
                        }
                        None => last_race = "the write did not leave the lock ours".into(),
                    },
                    Err(StoreError::Conflict(err) | StoreError::Unknown(err)) => last_race = err,
                    Err(err) => return failure(name, err),
                },
                // Another identity holds it, unexpired as this side-car has observed it.
                Action::WaitUntil(_) => return self.lock_response(409, name, elector),
                Action::Refuse(refusal) => {
                    return Response::error(409, format!("lock {name} cannot be acquired: {refusal}"));
                }
                Action::Read | Action::Lost(_) => last_race = "the lease changed while it was read".into(),
            }
        }
        tracing::warn!(lease = %name, error = %last_race, "the lease kept changing; asking the client to retry");
        Response::error(503, format!("lock {name} kept changing under every attempt ({last_race}); retry"))
            .with_header("Retry-After", "1")
    }

    /// DELETE: give the lock up if this identity holds it (200), 409 if another does, 404 if no such lock.
    async fn delete(&self, name: &str, elector: &mut Elector) -> Response {
        match self.store.get(name).await {
            Ok(current) => elector.observe(current, Instant::now()),
            Err(err) => return failure(name, err),
        }
        if let Err(err) = self.release(name, elector).await {
            return failure(name, err);
        }
        let holder = elector.current().map(|current| current.record.holder_identity.clone().unwrap_or_default());
        match holder {
            None => Response::error(404, format!("no lock {name}")),
            // Free now (released, or it already was).
            Some(holder) if holder.is_empty() => self.lock_response(200, name, elector),
            Some(_) => self.lock_response(409, name, elector),
        }
    }

    /// Feed the elector what was read and ask it what to do. A loss (taken, deleted, or no heartbeat
    /// in time) has nothing left to stop here: it is noted and the lock is judged afresh.
    fn decide(&self, name: &str, elector: &mut Elector, current: Option<Versioned>) -> Action {
        elector.observe(current, Instant::now());
        if let Action::Lost(reason) = elector.next(now()) {
            tracing::info!(lease = %name, identity = %self.identity, reason = %reason, "no longer holding the lock");
            let current = elector.current().cloned();
            elector.forget_loss();
            // The same record again: when it was first seen still counts for its expiry.
            elector.observe(current, Instant::now());
        }
        elector.next(now())
    }

    /// Release the lock if the record last read is ours (see `drive::release`).
    async fn release(&self, name: &str, elector: &mut Elector) -> std::result::Result<(), StoreError> {
        if engine::release(&self.store, name, elector).await? {
            tracing::info!(lease = %name, identity = %self.identity, "released the lock");
        }
        Ok(())
    }

    /// On the way out: release every lock this side-car holds, so waiters need not wait out the TTL.
    async fn release_all(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let entries: Vec<(String, Arc<Mutex<Elector>>)> = {
            let electors = self.electors.lock().unwrap_or_else(PoisonError::into_inner);
            electors.iter().map(|(name, entry)| (name.clone(), Arc::clone(entry))).collect()
        };
        let releases = async {
            for (name, entry) in entries {
                // Waits for a request in flight on this lock to finish.
                let mut elector = entry.lock().await;
                if let Err(err) = self.release(&name, &mut elector).await {
                    tracing::warn!(lease = %name, error = %err, "cannot release the lock; it expires after its TTL");
                }
            }
        };
        if timeout(RELEASE_TIMEOUT, releases).await.is_err() {
            tracing::warn!("stopped releasing locks after {RELEASE_TIMEOUT:?}; the others expire after their TTL");
        }
    }

    fn lock_response(&self, status: u16, name: &str, elector: &Elector) -> Response {
        match elector.current() {
            Some(current) => Response::json(
                status,
                &lock_json(name, self.store.namespace(), current, elector.observed_expiry(), Instant::now()),
            ),
            None => Response::error(404, format!("no lock {name}")),
        }
    }
}

/// A failed API call: 503 if retrying may help, 403 or 500 (and an error log) if it will not.
fn failure(name: &str, err: StoreError) -> Response {
    match err {
        StoreError::Fatal(err) => {
            let message = err.to_string();
            tracing::error!(lease = %name, error = %message, "API call failed");
            let status = if message.contains("forbidden") { 403 } else { 500 };
            Response::error(status, message)
        }
        err => {
            tracing::warn!(lease = %name, error = %err, "API call failed; asking the client to retry");
            Response::error(503, format!("{err}; retry")).with_header("Retry-After", "1")
        }
    }
}

/// The lock as the protocol's JSON. `held` is judged as mpsync judges it: a holder is named and its
/// duration has not passed since this side-car saw the record change (remote clocks are not trusted).
fn lock_json(name: &str, namespace: &str, current: &Versioned, expiry: Option<Instant>, now: Instant) -> Value {
    let record = &current.record;
    let holder = record.holder_identity.clone().unwrap_or_default();
    json!({
        "name": name,
        "namespace": namespace,
        "holder": holder,
        "held": !holder.is_empty() && expiry.is_none_or(|expiry| now < expiry),
        "acquireTime": record.acquire_time,
        "renewTime": record.renew_time,
        "leaseDurationSeconds": record.lease_duration_seconds,
        "leaseTransitions": record.lease_transitions.unwrap_or(0),
    })
}

/// One connection: read one request, answer it within ANSWER_TIMEOUT, close.
async fn serve(stream: TcpStream, locks: Arc<Locks>) {
    http::serve_connection(stream, |request| async move {
        let response = timeout(ANSWER_TIMEOUT, locks.answer(&request)).await.unwrap_or_else(|_| {
            Response::error(503, "the API server did not answer in time; retry").with_header("Retry-After", "1")
        });
        tracing::debug!(method = %request.method, path = %request.path, status = response.status, "answered");
        response
    })
    .await;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Get,
    Head,
    Put,
    Post,
    Delete,
}

impl Method {
    fn parse(method: &str) -> Option<Method> {
        match method {
            "GET" => Some(Method::Get),
            "HEAD" => Some(Method::Head),
            "PUT" => Some(Method::Put),
            "POST" => Some(Method::Post),
            "DELETE" => Some(Method::Delete),
            _ => None,
        }
    }
}

/// `/locks/NAME` → NAME (not yet validated); anything else is no path of the protocol.
fn lock_name(path: &str) -> Option<&str> {
    path.strip_prefix("/locks/").filter(|name| !name.is_empty() && !name.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;

    #[test]
    fn only_locks_slash_name_is_a_path_of_the_protocol() {
        assert_eq!(lock_name("/locks/a.b-1"), Some("a.b-1"));
        assert_eq!(lock_name("/locks/Bad_Name"), Some("Bad_Name"), "validated later: 400, not 404");
        for path in ["/", "/locks", "/locks/", "/locks/a/b", "/lock/a", "/healthz"] {
            assert_eq!(lock_name(path), None, "{path}");
        }
    }

    #[test]
    fn lock_json_judges_held_by_what_this_side_car_observed() {
        let t0 = Instant::now();
        let current = Versioned {
            resource_version: "3".into(),
            metadata: Default::default(),
            record: LeaseSpec {
                holder_identity: Some("pod-a_1f2e".into()),
                lease_duration_seconds: Some(30),
                lease_transitions: Some(4),
                ..LeaseSpec::default()
            },
        };
        let expiry = Some(t0 + Duration::from_secs(30));
        let value = lock_json("job", "default", &current, expiry, t0);
        assert_eq!(value["holder"], "pod-a_1f2e");
        assert_eq!(value["held"], true);
        assert_eq!(value["leaseTransitions"], 4);
        assert_eq!(value["leaseDurationSeconds"], 30);
        assert_eq!(lock_json("job", "default", &current, expiry, t0 + Duration::from_secs(30))["held"], false);
        let mut free = current.clone();
        free.record.holder_identity = Some(String::new());
        assert_eq!(lock_json("job", "default", &free, None, t0)["held"], false);
    }

    #[test]
    fn a_heartbeat_renews_at_once_and_counts_against_most_of_the_ttl() {
        let timing = timing(Duration::from_secs(30));
        assert_eq!(timing.retry_period, Duration::ZERO);
        assert_eq!(timing.renew_deadline, Duration::from_secs(27));
        assert_eq!(super::timing(Duration::from_secs(1)).renew_deadline, Duration::from_millis(900));
    }
}
