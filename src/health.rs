//! `--health-addr`: `/healthz` (liveness), `/leader` (readiness gate for leader-only Services) and
//! `/metrics` (Prometheus text format). The run loop records events into `Health`; the HTTP side only
//! reads it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

use crate::error::{Error, Result};
use crate::http::{self, Response};

/// Renew latency buckets, in seconds.
const BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Clone, Default)]
pub struct Health {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// While held: when the last successful renewal (or the acquisition) was sent.
    held_since_renewal: Option<Instant>,
    /// A renewal is overdue when none succeeded for this long.
    overdue_after: Duration,
    acquisitions: u64,
    losses: u64,
    child_starts: u64,
    child_exits: u64,
    api_errors: BTreeMap<&'static str, u64>,
    renew_buckets: [u64; BUCKETS.len()],
    renew_count: u64,
    renew_sum: f64,
}

/// What a probe answers: status code and body.
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Health {
    /// A held lease is overdue when no renewal has succeeded for the renew deadline (counted from the
    /// send of the last one that did): exactly when mpsync itself counts it lost. API slowness that
    /// mpsync tolerates never fails the liveness probe.
    pub fn new(timing: crate::lease::Timing) -> Health {
        let health = Health::default();
        health.with(|state| state.overdue_after = timing.renew_deadline);
        health
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut state)
    }

    pub fn acquired(&self, sent_at: Instant) {
        self.with(|state| {
            state.acquisitions += 1;
            state.held_since_renewal = Some(sent_at);
        });
    }

    pub fn renewed(&self, sent_at: Instant, answered_at: Instant) {
        self.with(|state| {
            if state.held_since_renewal.is_some() {
                state.held_since_renewal = Some(sent_at);
            }
            let seconds = answered_at.saturating_duration_since(sent_at).as_secs_f64();
            state.renew_count += 1;
            state.renew_sum += seconds;
            for (bucket, bound) in state.renew_buckets.iter_mut().zip(BUCKETS) {
                if seconds <= bound {
                    *bucket += 1;
                }
            }
        });
    }

    pub fn lost(&self) {
        self.with(|state| {
            state.losses += 1;
            state.held_since_renewal = None;
        });
    }

    pub fn released(&self) {
        self.with(|state| state.held_since_renewal = None);
    }

    pub fn child_started(&self) {
        self.with(|state| state.child_starts += 1);
    }

    pub fn child_exited(&self) {
        self.with(|state| state.child_exits += 1);
    }

    pub fn api_error(&self, kind: &'static str) {
        self.with(|state| *state.api_errors.entry(kind).or_default() += 1);
    }

    /// The answer for `path` (GET only; the HTTP side handles methods).
    pub fn answer(&self, path: &str, now: Instant) -> Option<Answer> {
        let text =
            |status, body: &str| Answer { status, content_type: "text/plain; charset=utf-8", body: body.to_string() };
        self.with(|state| match path {
            "/healthz" => Some(match state.held_since_renewal {
                Some(sent) if now.saturating_duration_since(sent) > state.overdue_after => {
                    text(503, "renewal overdue\n")
                }
                _ => text(200, "ok\n"),
            }),
            "/leader" => Some(match state.held_since_renewal {
                Some(_) => text(200, "leader\n"),
                None => text(503, "not leader\n"),
            }),
            "/metrics" => Some(Answer {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: state.metrics(),
            }),
            _ => None,
        })
    }
}

impl crate::engine::Observer for Health {
    fn acquired(&self, sent_at: Instant) {
        Health::acquired(self, sent_at);
    }

    fn renewed(&self, sent_at: Instant, answered_at: Instant) {
        Health::renewed(self, sent_at, answered_at);
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

/// Listen on `addr` and answer probes in the background. Binding happens before this returns, so a
/// bad address is an error at start-up (exit 125), not a silent absence of probes.
pub async fn serve(addr: SocketAddr, health: Health) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|err| Error::Usage(format!("--health-addr {addr}: cannot listen: {err}")))?;
    tracing::info!(addr = %addr, "serving /healthz, /leader and /metrics");
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(answer_connection(stream, health.clone()));
                }
                Err(err) => {
                    tracing::debug!(error = %err, "health: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(())
}

/// One request per connection, answered from `health`.
async fn answer_connection(stream: TcpStream, health: Health) {
    http::serve_connection(stream, |request| async move {
        match (request.method.as_str(), health.answer(&request.path, Instant::now())) {
            ("GET" | "HEAD", Some(answer)) => Response::text(answer.status, answer.content_type, answer.body),
            (_, Some(_)) => {
                Response::text(405, "text/plain", "method not allowed\n".into()).with_header("Allow", "GET, HEAD")
            }
            (_, None) => Response::text(404, "text/plain", "not found\n".into()),
        }
    })
    .await;
}

impl State {
    fn metrics(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[String]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for line in lines {
                let _ = writeln!(out, "{line}");
            }
        };
        let held = u8::from(self.held_since_renewal.is_some());
        metric(
            "mpsync_lease_held",
            "gauge",
            "1 while this process holds the lease.",
            &[format!("mpsync_lease_held {held}")],
        );
        metric(
            "mpsync_acquisitions_total",
            "counter",
            "Leases acquired.",
            &[format!("mpsync_acquisitions_total {}", self.acquisitions)],
        );
        metric(
            "mpsync_losses_total",
            "counter",
            "Leases lost while held.",
            &[format!("mpsync_losses_total {}", self.losses)],
        );
        let mut histogram: Vec<String> = BUCKETS
            .iter()
            .zip(self.renew_buckets)
            .map(|(bound, count)| format!("mpsync_renew_duration_seconds_bucket{{le=\"{bound}\"}} {count}"))
            .collect();
        histogram.push(format!("mpsync_renew_duration_seconds_bucket{{le=\"+Inf\"}} {}", self.renew_count));
        histogram.push(format!("mpsync_renew_duration_seconds_sum {}", self.renew_sum));
        histogram.push(format!("mpsync_renew_duration_seconds_count {}", self.renew_count));
        metric("mpsync_renew_duration_seconds", "histogram", "Latency of successful renewals.", &histogram);
        let errors: Vec<String> = self
            .api_errors
            .iter()
            .map(|(kind, count)| format!("mpsync_api_errors_total{{kind=\"{kind}\"}} {count}"))
            .collect();
        metric("mpsync_api_errors_total", "counter", "Failed API calls by kind.", &errors);
        metric(
            "mpsync_child_starts_total",
            "counter",
            "Children started.",
            &[format!("mpsync_child_starts_total {}", self.child_starts)],
        );
        metric(
            "mpsync_child_exits_total",
            "counter",
            "Children exited (on their own or stopped).",
            &[format!("mpsync_child_exits_total {}", self.child_exits)],
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_and_healthz_follow_the_lease() {
        let health = Health::new(crate::lease::Timing::DEFAULT);
        let t0 = Instant::now();
        assert_eq!(health.answer("/leader", t0).unwrap().status, 503);
        assert_eq!(health.answer("/healthz", t0).unwrap().status, 200);
        health.acquired(t0);
        assert_eq!(health.answer("/leader", t0).unwrap().status, 200);
        // Slow renewals that mpsync tolerates (up to the renew deadline, 10s) do not fail the probe.
        assert_eq!(health.answer("/healthz", t0 + Duration::from_secs(9)).unwrap().status, 200);
        assert_eq!(health.answer("/healthz", t0 + Duration::from_secs(11)).unwrap().status, 503, "overdue");
        health.renewed(t0 + Duration::from_secs(4), t0 + Duration::from_secs(8));
        assert_eq!(health.answer("/healthz", t0 + Duration::from_secs(11)).unwrap().status, 200);
        health.lost();
        assert_eq!(health.answer("/leader", t0).unwrap().status, 503);
        assert_eq!(health.answer("/healthz", t0 + Duration::from_secs(60)).unwrap().status, 200);
        assert!(health.answer("/other", t0).is_none());
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let health = Health::new(crate::lease::Timing::DEFAULT);
        let t0 = Instant::now();
        health.acquired(t0);
        health.child_started();
        health.renewed(t0, t0 + Duration::from_millis(30));
        health.api_error("transient");
        let body = health.answer("/metrics", t0).unwrap().body;
        for line in [
            "# TYPE mpsync_lease_held gauge",
            "mpsync_lease_held 1",
            "mpsync_acquisitions_total 1",
            "mpsync_losses_total 0",
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
    }
}
