//! The side-car's `/metrics`: what it holds and tracks, its connections, and its answers.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::health::{self, Answer, KindCounter};

/// Answers by method and status code.
type Requests = Family<[(&'static str, String); 2], Counter>;

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub held: Gauge,
    pub tracked: Gauge,
    pub connections: Gauge,
    pub draining: Gauge,
    pub acquisitions: Counter,
    pub losses: Counter,
    api_errors: KindCounter,
    requests: Requests,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::default();
        let held = Gauge::default();
        let tracked = Gauge::default();
        let connections = Gauge::default();
        let draining = Gauge::default();
        let acquisitions = Counter::default();
        let losses = Counter::default();
        let api_errors = KindCounter::default();
        let requests = Requests::default();
        registry.register("mpsync_sidecar_locks_held", "Locks this side-car holds", held.clone());
        registry.register(
            "mpsync_sidecar_locks_tracked",
            "Locks this side-car keeps state about (held, or asked about within twice the TTL)",
            tracked.clone(),
        );
        registry.register("mpsync_sidecar_connections", "Client connections open", connections.clone());
        registry.register("mpsync_sidecar_draining", "1 after SIGTERM, while draining", draining.clone());
        registry.register("mpsync_acquisitions", "Locks acquired (or adopted after a restart)", acquisitions.clone());
        registry.register("mpsync_losses", "Locks found lost while held", losses.clone());
        registry.register("mpsync_api_errors", "Failed API calls by kind", api_errors.clone());
        registry.register("mpsync_sidecar_requests", "Requests answered, by method and status code", requests.clone());
        Metrics {
            registry: Arc::new(registry),
            held,
            tracked,
            connections,
            draining,
            acquisitions,
            losses,
            api_errors,
            requests,
        }
    }
}

impl Metrics {
    pub fn api_error(&self, kind: &'static str) {
        self.api_errors.get_or_create(&[("kind", kind)]).inc();
    }

    pub fn answered(&self, method: &hyper::Method, status: u16) {
        let method = match *method {
            hyper::Method::GET => "GET",
            hyper::Method::HEAD => "HEAD",
            hyper::Method::PUT => "PUT",
            hyper::Method::POST => "POST",
            hyper::Method::DELETE => "DELETE",
            _ => "other",
        };
        self.requests.get_or_create(&[("method", method.to_string()), ("code", status.to_string())]).inc();
    }

    pub fn exposition(&self, accept: Option<&str>) -> Answer {
        health::exposition(&self.registry, accept)
    }
}
