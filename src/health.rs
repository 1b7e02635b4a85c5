//! `--health-addr`: `/healthz` (liveness), `/leader` (readiness gate for leader-only Services) and
//! `/metrics` (Prometheus exposition, through `prometheus-client`). The run loop records events into
//! `Health`; the HTTP side only reads it. The side-car serves its own answers through [`serve`] too.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::Method;
use nix::errno::Errno;
use nix::sys::socket::{setsockopt, sockopt};
use prometheus_client::encoding::{prometheus_text, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::{TcpListener, TcpSocket};

use crate::error::{Error, Result};
use crate::http::{self, Request, Response};

/// Renew latency buckets, in seconds.
const BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The probes' server: few connections, short timeouts (they are local and small).
pub const LIMITS: http::Limits = http::Limits {
    max_connections: 32,
    head_timeout: Duration::from_secs(10),
    answer_timeout: Duration::from_secs(10),
};

/// A counter family with one label, `kind` (API errors).
pub type KindCounter = Family<[(&'static str, &'static str); 1], Counter>;

#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    /// While held: when the last successful renewal (or the acquisition) was sent.
    held_since_renewal: Mutex<Option<Instant>>,
    /// A renewal is overdue when none succeeded for this long.
    overdue_after: Duration,
    registry: Registry,
    lease_held: Gauge,
    acquisitions: Counter,
    losses: Counter,
    renew_duration: Histogram,
    api_errors: KindCounter,
    child_starts: Counter,
    child_exits: Counter,
}

/// What a probe answers: status code and body.
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Answer {
    fn text(status: u16, body: &str) -> Answer {
        Answer { status, content_type: "text/plain; charset=utf-8", body: body.to_string() }
    }
}

impl Health {
    /// A held lease is overdue when no renewal has succeeded for the renew deadline (counted from the
    /// send of the last one that did): exactly when mpsync itself counts it lost. API slowness that
    /// mpsync tolerates never fails the liveness probe.
    pub fn new(timing: crate::lease::Timing) -> Health {
        let mut registry = Registry::default();
        let lease_held = Gauge::default();
        let acquisitions = Counter::default();
        let losses = Counter::default();
        let renew_duration = Histogram::new(BUCKETS);
        let api_errors = KindCounter::default();
        let child_starts = Counter::default();
        let child_exits = Counter::default();
        registry.register("mpsync_lease_held", "1 while this process holds the lease", lease_held.clone());
        registry.register("mpsync_acquisitions", "Leases acquired", acquisitions.clone());
        registry.register("mpsync_losses", "Leases lost while held", losses.clone());
        registry.register_with_unit(
            "mpsync_renew_duration",
            "Latency of successful renewals",
            Unit::Seconds,
            renew_duration.clone(),
        );
        registry.register("mpsync_api_errors", "Failed API calls by kind", api_errors.clone());
        registry.register("mpsync_child_starts", "Children started", child_starts.clone());
        registry.register("mpsync_child_exits", "Children exited (on their own or stopped)", child_exits.clone());
        Health {
            inner: Arc::new(Inner {
                held_since_renewal: Mutex::new(None),
                overdue_after: timing.renew_deadline,
                registry,
                lease_held,
                acquisitions,
                losses,
                renew_duration,
                api_errors,
                child_starts,
                child_exits,
            }),
        }
    }

    fn held<T>(&self, f: impl FnOnce(&mut Option<Instant>) -> T) -> T {
        let mut held = self.inner.held_since_renewal.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let result = f(&mut held);
        self.inner.lease_held.set(i64::from(held.is_some()));
        result
    }

    pub fn acquired(&self, sent_at: Instant) {
        self.inner.acquisitions.inc();
        self.held(|held| *held = Some(sent_at));
    }

    /// A renewal sent at `sent_at` turned out applied (a read or a watch event showed it): the lease
    /// counts as renewed from then, with no latency sample (its answer never came).
    pub fn confirmed(&self, sent_at: Instant) {
        self.held(|held| {
            if held.is_some() {
                *held = Some(held.map_or(sent_at, |known| known.max(sent_at)));
            }
        });
    }

    pub fn renewed(&self, sent_at: Instant, answered_at: Instant) {
        self.held(|held| {
            if held.is_some() {
                *held = Some(held.map_or(sent_at, |known| known.max(sent_at)));
            }
        });
        self.inner.renew_duration.observe(answered_at.saturating_duration_since(sent_at).as_secs_f64());
    }

    pub fn lost(&self) {
        self.inner.losses.inc();
        self.held(|held| *held = None);
    }

    pub fn released(&self) {
        self.held(|held| *held = None);
    }

    pub fn child_started(&self) {
        self.inner.child_starts.inc();
    }

    pub fn child_exited(&self) {
        self.inner.child_exits.inc();
    }

    pub fn api_error(&self, kind: &'static str) {
        self.inner.api_errors.get_or_create(&[("kind", kind)]).inc();
    }

    /// The answer for `path` (GET only; the HTTP side handles methods). `accept`: the scraper's
    /// `Accept` header, which chooses the exposition format of `/metrics`.
    pub fn answer(&self, path: &str, now: Instant, accept: Option<&str>) -> Option<Answer> {
        let held = self.held(|held| *held);
        // Past the renew deadline the lease counts as lost, whether or not the engine said so yet (a probe
        // answered in the same tick as its deadline: found by review).
        let overdue = held.is_some_and(|sent| now.saturating_duration_since(sent) > self.inner.overdue_after);
        // The gauge says what `/leader` says (found by review, rv229: held, while `/leader` said overdue).
        self.inner.lease_held.set(i64::from(held.is_some() && !overdue));
        match path {
            "/healthz" => Some(match overdue {
                true => Answer::text(503, "renewal overdue\n"),
                false => Answer::text(200, "ok\n"),
            }),
            "/leader" => Some(match (held, overdue) {
                (Some(_), false) => Answer::text(200, "leader\n"),
                (Some(_), true) => Answer::text(503, "not leader: renewal overdue\n"),
                (None, _) => Answer::text(503, "not leader\n"),
            }),
            "/metrics" => Some(exposition(&self.inner.registry, accept)),
            _ => None,
        }
    }
}

impl crate::engine::Observer for Health {
    fn acquired(&self, sent_at: Instant) {
        Health::acquired(self, sent_at);
    }

    fn renewed(&self, sent_at: Instant, answered_at: Instant) {
        Health::renewed(self, sent_at, answered_at);
    }

    fn confirmed(&self, sent_at: Instant) {
        Health::confirmed(self, sent_at);
    }

    fn lost(&self) {
        Health::lost(self);
    }

    fn released(&self) {
        Health::released(self);
    }

    fn api_error(&self, kind: &'static str) {
        Health::api_error(self, kind);
    }
}

/// `registry` as the scraper asked for it: OpenMetrics when its `Accept` names it (as Prometheus does),
/// else the Prometheus text format 0.0.4, which every scraper reads.
pub fn exposition(registry: &Registry, accept: Option<&str>) -> Answer {
    let mut body = String::new();
    let openmetrics = accept.is_some_and(|accept| accept.contains("application/openmetrics-text"));
    let (encoded, content_type) = if openmetrics {
        (text::encode(&mut body, registry), "application/openmetrics-text; version=1.0.0; charset=utf-8")
    } else {
        (prometheus_text::encode(&mut body, registry), prometheus_text::CONTENT_TYPE)
    };
    match encoded {
        Ok(()) => Answer { status: 200, content_type, body },
        Err(_) => Answer::text(500, "cannot encode the metrics\n"),
    }
}

/// Where the probes listen (`--health-addr`): one address (`0.0.0.0:8080`, `[::1]:8080`), or every
/// address of both families on a port (`:8080`, as Go's servers write it), for pods of any IP family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeAddr {
    /// This address only.
    Socket(SocketAddr),
    /// Every address on this port: IPv6 and IPv4 on one socket, or IPv4 alone where IPv6 is off.
    AnyAddress(u16),
}

impl FromStr for ProbeAddr {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<ProbeAddr, String> {
        let parsed = match text.strip_prefix(':') {
            Some(port) => port.parse().ok().map(ProbeAddr::AnyAddress),
            None => text.parse().ok().map(ProbeAddr::Socket),
        };
        parsed.ok_or_else(|| "expected IP:PORT, [IPv6]:PORT, or :PORT for every address".to_string())
    }
}

impl fmt::Display for ProbeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeAddr::Socket(addr) => write!(f, "{addr}"),
            ProbeAddr::AnyAddress(port) => write!(f, ":{port}"),
        }
    }
}

impl From<SocketAddr> for ProbeAddr {
    fn from(addr: SocketAddr) -> ProbeAddr {
        ProbeAddr::Socket(addr)
    }
}

/// Listen on `addr` and answer probes from `health` in the background. Binding happens before this
/// returns, so a bad address is an error at start-up (exit 125), not a silent absence of probes.
pub async fn serve(addr: ProbeAddr, health: Health) -> Result<()> {
    let handler: http::Handler = Arc::new(move |request: Request| {
        let health = health.clone();
        Box::pin(async move { probe(&request, |path| health.answer(path, Instant::now(), request.header("accept"))) })
    });
    serve_probes(addr, handler).await.map(drop)
}

/// Listen on `addr` and answer with `handler` (the probes of `lock`, `elect` or the side-car).
pub async fn serve_probes(addr: ProbeAddr, handler: http::Handler) -> Result<http::Server> {
    let listener = listen(addr).map_err(|err| Error::Usage(format!("--health-addr {addr}: cannot listen: {err}")))?;
    // The address bound: a port 0 is chosen by the system (found by review: it was logged as 0).
    let bound = listener.local_addr().map_or_else(|_| addr.to_string(), |bound| bound.to_string());
    let server = http::Server::new(handler, LIMITS);
    server.serve(listener);
    tracing::info!(addr = %bound, "serving probes and metrics");
    Ok(server)
}

/// Bind and listen. Every address: `[::]` with `IPV6_V6ONLY` off (IPv4 arrives as mapped addresses,
/// whatever the node's `net.ipv6.bindv6only`), or `0.0.0.0` where the kernel has no IPv6.
fn listen(addr: ProbeAddr) -> std::io::Result<TcpListener> {
    let port = match addr {
        ProbeAddr::Socket(addr) if addr.is_ipv4() => return bound(TcpSocket::new_v4()?, addr),
        ProbeAddr::Socket(addr) => return bound(TcpSocket::new_v6()?, addr),
        ProbeAddr::AnyAddress(port) => port,
    };
    let dual = TcpSocket::new_v6().and_then(|socket| {
        setsockopt(&socket, sockopt::Ipv6V6Only, &false)?;
        bound(socket, SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
    });
    match dual {
        Err(err) if matches!(err.raw_os_error(), Some(code) if NO_IPV6.contains(&code)) => {
            bound(TcpSocket::new_v4()?, SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
        }
        dual => dual,
    }
}

/// What a kernel without IPv6 answers (booted with `ipv6.disable=1`, or no address to bind).
const NO_IPV6: [i32; 2] = [Errno::EAFNOSUPPORT as i32, Errno::EADDRNOTAVAIL as i32];

/// Listen on `addr` as `std`'s `TcpListener::bind` does (`SO_REUSEADDR`, a backlog of 1024).
fn bound(socket: TcpSocket, addr: SocketAddr) -> std::io::Result<TcpListener> {
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Answer a probe request: GET and HEAD on the paths `answer` knows, 405 for other methods there, 404
/// elsewhere.
pub fn probe(request: &Request, answer: impl FnOnce(&str) -> Option<Answer>) -> Response {
    match answer(&request.path) {
        Some(answer) if request.method == Method::GET || request.method == Method::HEAD => {
            Response::text(answer.status, answer.content_type, answer.body)
        }
        Some(_) => Response::text(405, "text/plain; charset=utf-8", "method not allowed\n".into())
            .with_header("Allow", "GET, HEAD"),
        None => Response::text(404, "text/plain; charset=utf-8", "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_and_healthz_follow_the_lease() {
        let health = Health::new(crate::lease::Timing::DEFAULT);
        let t0 = Instant::now();
        let status = |path, at| health.answer(path, at, None).unwrap().status;
        assert_eq!(status("/leader", t0), 503);
        assert_eq!(status("/healthz", t0), 200);
        health.acquired(t0);
        assert_eq!(status("/leader", t0), 200);
        // Slow renewals that mpsync tolerates (up to the renew deadline, 10s) do not fail the probe.
        assert_eq!(status("/healthz", t0 + Duration::from_secs(9)), 200);
        assert_eq!(status("/healthz", t0 + Duration::from_secs(11)), 503, "overdue");
        assert_eq!(status("/leader", t0 + Duration::from_secs(11)), 503, "overdue: lost by the renew deadline");
        // The gauge agrees (found by review, rv229: it said held).
        let metrics = health.answer("/metrics", t0 + Duration::from_secs(11), None).unwrap().body;
        assert!(metrics.lines().any(|line| line == "mpsync_lease_held 0"), "{metrics}");
        health.renewed(t0 + Duration::from_secs(4), t0 + Duration::from_secs(8));
        assert_eq!(status("/healthz", t0 + Duration::from_secs(11)), 200);
        // A late answer about an older renewal does not move the renewal time back.
        health.renewed(t0 + Duration::from_secs(2), t0 + Duration::from_secs(12));
        assert_eq!(status("/healthz", t0 + Duration::from_secs(13)), 200);
        health.lost();
        assert_eq!(status("/leader", t0), 503);
        assert_eq!(status("/healthz", t0 + Duration::from_secs(60)), 200);
        assert!(health.answer("/other", t0, None).is_none());
    }

    #[test]
    fn metrics_are_prometheus_text_or_openmetrics() {
        let health = Health::new(crate::lease::Timing::DEFAULT);
        let t0 = Instant::now();
        health.acquired(t0);
        health.child_started();
        health.renewed(t0, t0 + Duration::from_millis(30));
        health.api_error("transient");
        let answer = health.answer("/metrics", t0, None).unwrap();
        assert_eq!(answer.content_type, "text/plain; version=0.0.4; charset=utf-8");
        let body = answer.body;
        for line in [
            "# TYPE mpsync_lease_held gauge",
            "mpsync_lease_held 1",
            "# TYPE mpsync_acquisitions_total counter",
            "mpsync_acquisitions_total 1",
            "mpsync_losses_total 0",
            "# TYPE mpsync_renew_duration_seconds histogram",
            "mpsync_renew_duration_seconds_bucket{le=\"0.025\"} 0",
            "mpsync_renew_duration_seconds_bucket{le=\"0.05\"} 1",
            "mpsync_renew_duration_seconds_bucket{le=\"+Inf\"} 1",
            "mpsync_renew_duration_seconds_count 1",
            "mpsync_api_errors_total{kind=\"transient\"} 1",
            "mpsync_child_starts_total 1",
            "mpsync_child_exits_total 0",
        ] {
            assert!(body.lines().any(|l| l == line), "missing {line:?} in\n{body}");
        }
        let open = health.answer("/metrics", t0, Some("application/openmetrics-text;version=1.0.0")).unwrap();
        assert!(open.content_type.starts_with("application/openmetrics-text"));
        assert!(open.body.ends_with("# EOF\n"), "{}", open.body);
        assert!(open.body.lines().any(|l| l == "# UNIT mpsync_renew_duration_seconds seconds"), "{}", open.body);
    }
}
