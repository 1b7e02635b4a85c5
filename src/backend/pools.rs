//! Two connection pools under one client: one for watches, one for every other request.
//!
//! Over HTTP/1.1 a watch holds its connection for as long as it runs. With one pool, a waiter's watch
//! takes the connection its start-up read left idle, and the acquisition it sends on the watch event
//! that frees the lease must open a new connection first: a TCP and TLS handshake on the handoff's
//! critical path (issue 14's trace: "its GET needs a new connection, because the watch holds the only
//! pooled one"). With watches apart, the connection of the last read or write stays idle in its pool,
//! and the acquisition goes out on it at once. client-go gets the same from HTTP/2, which carries the
//! watch and the writes on one connection.
//!
//! A process that never watches (an uncontended `lock`, a holder) opens one connection, as before; a
//! waiter keeps two open, the idle one for [`REQUEST_IDLE`] at most.
//!
//! A connection kept idle may die without a word (an API server replica that dies hard behind a load
//! balancer, a NAT or firewall that forgets idle flows): the write sent on it is then answered by the
//! call timeout, and its outcome read, as a holder's renewal on such a connection always was. Firewalls
//! and NATs forget idle flows after minutes (AWS's NAT gateway 350 s, Azure's load balancer 4 min), so
//! [`REQUEST_IDLE`] stays well below that, and below the 90 s idle timeout usual in Go's HTTP servers
//! and clients, so that mpsync rather than the server closes an idle connection, and a write does not
//! race the server's close.

use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use tower::Service;

/// How long a connection of the request pool may stay idle before mpsync closes it (hyper looks at this
/// interval, so it is closed within twice this): a waiter that waited longer opens a new one for its
/// acquisition, as it did before watches had a pool of their own.
pub const REQUEST_IDLE: Duration = Duration::from_secs(30);
/// How long a watch's connection may stay idle: a watch that ended normally is followed at once by the
/// next, which takes it again; hyper's default.
pub const WATCH_IDLE: Duration = Duration::from_secs(90);

/// Sends watch requests (`watch=true` in the query, as kube writes them) to `watches`, all others to
/// `requests`: two clients of the same kind, each with a pool of its own.
#[derive(Clone)]
pub struct WatchesApart<S> {
    requests: S,
    watches: S,
}

impl<S> WatchesApart<S> {
    pub fn new(requests: S, watches: S) -> WatchesApart<S> {
        WatchesApart { requests, watches }
    }
}

/// Whether kube sends this request as a watch: its query has `watch=true` (kube-core's `WatchParams`).
pub(super) fn is_watch<B>(request: &Request<B>) -> bool {
    request.uri().query().is_some_and(|query| query.split('&').any(|pair| pair == "watch=true" || pair == "watch=1"))
}

impl<S, B> Service<Request<B>> for WatchesApart<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Either may get the next request, so both must be ready (hyper's clients always are).
        match self.requests.poll_ready(cx) {
            Poll::Ready(Ok(())) => self.watches.poll_ready(cx),
            other => other,
        }
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if is_watch(&request) { self.watches.call(request) } else { self.requests.call(request) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str) -> Request<()> {
        Request::get(uri).body(()).unwrap()
    }

    #[test]
    fn only_watches_are_told_apart() {
        let base = "https://10.0.0.1/apis/coordination.k8s.io/v1/namespaces/default/leases";
        assert!(is_watch(&request(&format!("{base}?&watch=true&timeoutSeconds=290&fieldSelector=metadata.name%3Dl"))));
        assert!(is_watch(&request(&format!("{base}?fieldSelector=x&watch=true"))));
        assert!(!is_watch(&request(&format!("{base}?fieldSelector=metadata.name%3Dl"))));
        assert!(!is_watch(&request(&format!("{base}/l"))));
        // A lease named "watch=true" is a path, not a query.
        assert!(!is_watch(&request(&format!("{base}/watch=true"))));
        assert!(!is_watch(&request(&format!("{base}?watch=false"))));
    }
}
