//! `mpsync sidecar`: the metaparticle elector HTTP protocol, backed by Leases.
//!
//! Metaparticle/Sync clients (JavaScript, Python, Java, .NET, Go) hold a lock through a side-car on
//! localhost: `GET /locks/NAME` (does it exist?), then `PUT /locks/NAME` (acquire or heartbeat: 200 if
//! this side-car holds it, 409 if another does), again every 10 seconds while they hold it. Each NAME is
//! one Lease (`--lease-prefix` + NAME), driven by the same `lease::Elector` as `lock` (see `locks`), under
//! the pod's identity, which stays the same when the side-car restarts.
//!
//! - `routes`: who may ask (no web pages), and what is served: `/locks/NAME`, `/healthz`, `/metrics`.
//! - `locks`: the answers, one elector per lock, bounded state.
//! - Shutdown drains: on SIGTERM (or SIGINT) new acquisitions are refused, heartbeats are still answered,
//!   and each lock is released once its client goes quiet. At `--drain` (or a second signal) the side-car
//!   exits; a lock whose client still heartbeats is then left to expire after its TTL rather than
//!   released, so that no other pod can take it while its client may still believe it holds it.

mod locks;
mod metrics;
mod routes;

use std::io::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::backend::{block_on, open_store};
use crate::cli::SidecarConfig;
use crate::error::{Error, Result};
use crate::exit::Exit;
use crate::health;
use crate::http::{self, Limits};
use crate::supervise::signals::Stops;

/// One API call's timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The default port, the original elector's, on both loopback addresses.
pub const DEFAULT_PORT: u16 = 13131;
/// What one client may cost (see `http`): the side-car serves its own pod's processes, a few.
const LIMITS: Limits =
    Limits { max_connections: 256, head_timeout: Duration::from_secs(10), answer_timeout: Duration::from_secs(20) };
/// On the way out: how long requests in flight may take to finish.
const CLOSE_BUDGET: Duration = Duration::from_secs(2);

/// Serve the protocol until SIGTERM, SIGINT or SIGHUP, drain, and exit 0.
pub fn sidecar(config: SidecarConfig) -> Result<Exit> {
    block_on(async move {
        let mut stops = Stops::new()?;
        // A stop signal while the client is set up (an exec credential plugin may take long) ends it, and
        // the plugin. (Others end mpsync by their default action; the plugin dies with it: see `exec`.)
        let store = tokio::select! {
            store = open_store(&config.backend, CALL_TIMEOUT) => store?,
            signal = stops.next() => return Ok(Exit::Signaled(signal as i32)),
        };
        let listeners = bind(&config.listen).await?;

        let metrics = metrics::Metrics::default();
        let locks =
            Arc::new(locks::Locks::new(store, config.identity, config.lease_prefix, config.ttl, metrics.clone()));
        // The protocol's connections, open now: reported on /metrics by both servers.
        let open = Arc::new(AtomicUsize::new(0));
        let connections = {
            let open = Arc::clone(&open);
            move || open.load(Ordering::Relaxed)
        };
        let handler = routes::protocol(Arc::clone(&locks), metrics.clone(), connections.clone());
        let server = http::Server::counting(handler, LIMITS, open);
        let probes = match config.health_addr {
            Some(addr) => Some(
                health::serve_probes(addr, routes::probes(Arc::clone(&locks), metrics.clone(), connections)).await?,
            ),
            None => None,
        };
        let addresses: Vec<SocketAddr> = listeners.iter().map(|(_, address)| *address).collect();
        for (listener, _) in listeners {
            server.serve(listener);
        }
        tokio::spawn(forget_idle(Arc::clone(&locks), config.ttl));

        // The only lines on stdout: where clients connect (the port, with `--listen ...:0`).
        {
            let mut stdout = std::io::stdout().lock();
            for address in &addresses {
                let _ = writeln!(stdout, "listening on {address}");
            }
            let _ = stdout.flush();
        }
        tracing::info!(
            addresses = ?addresses,
            identity = %locks.identity(),
            namespace = %locks.namespace(),
            ttl = ?config.ttl,
            "serving the metaparticle protocol"
        );

        let signal = stops.next().await.as_str();
        locks.start_draining();
        // A --drain beyond the clock's reach drains for as long as the clients take (found by review,
        // helper-165: `--drain 18446744073709551615s` panicked at SIGTERM, its locks left held).
        let deadline = Instant::now()
            .checked_add(config.drain)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600));
        tracing::info!(
            signal,
            drain = ?config.drain,
            "draining: refusing new acquisitions, answering heartbeats, releasing each lock once its client stops"
        );
        let another = async {
            stops.next().await;
        };
        tokio::pin!(another);
        loop {
            let drained = tokio::select! {
                drained = locks.drain_step(deadline) => drained,
                () = &mut another => {
                    tracing::warn!(
                        "a second signal came while releasing locks: exiting; every lock not yet released expires \
                         after its TTL"
                    );
                    for name in locks.unreleased_names() {
                        tracing::warn!(lease = %locks.lease_name(&name), "exiting with the lock not released");
                    }
                    left_busy(&locks, &locks.busy_names(), "a second signal came");
                    break;
                }
            };
            if drained.done() {
                if drained.cut_off == 0 {
                    tracing::info!("drained: no lock is held any more");
                }
                break;
            }
            if Instant::now() >= deadline {
                give_up(&locks, &drained.held, "the drain deadline (--drain) passed");
                // A lock whose request is under way at the deadline (a heartbeat waiting for a slow API
                // server) is left as it is, and said so (found by a CI run: the side-car exited without a
                // word about a lock it held).
                left_busy(&locks, &drained.busy, "the drain deadline (--drain) passed");
                break;
            }
            // Look again when a client may have gone quiet, and at least every second (heartbeats in
            // flight, releases by DELETE).
            let next =
                drained.next_check.unwrap_or(deadline).min(deadline).min(Instant::now() + Duration::from_secs(1));
            tokio::select! {
                () = tokio::time::sleep_until(next.into()) => {}
                () = &mut another => {
                    tracing::warn!("a second signal came while draining: exiting");
                    // What is held now, not at the last step: a request under way then may have ended since.
                    give_up(&locks, &locks.unreleased_names(), "a second signal came");
                    // As at the deadline (found by review, helper-154: a second signal during a heartbeat
                    // under way exited without a word about its lock).
                    left_busy(&locks, &locks.busy_names(), "a second signal came");
                    break;
                }
            }
        }
        server.shutdown(CLOSE_BUDGET).await;
        if let Some(probes) = probes {
            probes.shutdown(Duration::ZERO).await;
        }
        Ok(Exit::Success)
    })
}

/// Leave the locks whose clients still heartbeat: not released, they expire after their TTL, counted from
/// their last renewal. Their clients' next heartbeat fails, which tells them the lock is gone, before
/// another pod can take it.
fn give_up(locks: &locks::Locks, held: &[String], why: &str) {
    for name in held {
        tracing::warn!(
            lease = %locks.lease_name(name),
            "{why}: exiting with the lock still held for a client that heartbeats; it is not released, so it \
             expires after its TTL and no other pod takes it while the client may still believe it holds it"
        );
    }
}

/// Name the locks busy with a request (a heartbeat waiting for a slow API server) on the way out: not
/// released either.
fn left_busy(locks: &locks::Locks, busy: &[String], why: &str) {
    for name in busy {
        tracing::warn!(
            lease = %locks.lease_name(name),
            "{why} while a request for the lock was under way: exiting; the lock is not released, so if this \
             side-car holds it, it expires after its TTL"
        );
    }
}

/// Forget, every half TTL, the state of locks nobody asked about for twice the TTL, and give freed memory
/// back (a flood of connections frees its buffers when it ends, too).
async fn forget_idle(locks: Arc<locks::Locks>, ttl: Duration) {
    let every = (ttl / 2).clamp(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        tokio::time::sleep(every).await;
        let forgotten = locks.forget_idle(Instant::now());
        if forgotten > 0 {
            tracing::debug!(forgotten, "forgot the state of idle locks");
        }
        release_freed_memory();
    }
}

/// Hand memory freed by forgotten state back to the system. glibc keeps freed memory in its arenas, where
/// a flood of names or connections would otherwise stay as resident memory after it is over.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory at the top of glibc's heaps to the system; it touches
    // no memory in use and is thread-safe.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// Bind the protocol's listeners: the `--listen` addresses, each of which must bind, or by default
/// 127.0.0.1 and ::1 on port 13131 (::1 only where the host has IPv6).
async fn bind(listen: &[SocketAddr]) -> Result<Vec<(TcpListener, SocketAddr)>> {
    let cannot = |address: SocketAddr, err: std::io::Error| {
        Error::Usage(format!("cannot listen on {address}: {err}\npass --listen with a free address (port 0 picks one)"))
    };
    let mut bound = Vec::new();
    if listen.is_empty() {
        let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_PORT));
        let listener = TcpListener::bind(v4).await.map_err(|err| cannot(v4, err))?;
        bound.push(listener);
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, DEFAULT_PORT));
        match TcpListener::bind(v6).await {
            Ok(listener) => bound.push(listener),
            // No IPv6 on this host (or in this pod): localhost is 127.0.0.1 only, then.
            Err(err) if matches!(err.raw_os_error(), Some(nix::libc::EADDRNOTAVAIL | nix::libc::EAFNOSUPPORT)) => {
                tracing::info!(error = %err, "no IPv6 loopback here; listening on 127.0.0.1 only");
            }
            Err(err) => return Err(cannot(v6, err)),
        }
    } else {
        for address in listen {
            bound.push(TcpListener::bind(address).await.map_err(|err| cannot(*address, err))?);
        }
    }
    bound
        .into_iter()
        .map(|listener| {
            let address = listener
                .local_addr()
                .map_err(|err| Error::Internal(format!("cannot read the listening address: {err}")))?;
            Ok((listener, address))
        })
        .collect()
}
