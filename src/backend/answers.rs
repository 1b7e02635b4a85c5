//! Error answers that are no Kubernetes `Status` (JSON of a gateway's own, an HTML page, text), marked as
//! such before kube reads them.
//!
//! kube reads any JSON object in a 4xx or 5xx body as a `Status` (every field is optional) and drops the
//! HTTP status. An API gateway or proxy in front of the server answers its own failures that way: Kong's
//! 502 `{"message": "An invalid response was received from the upstream server"}`, AWS API Gateway's 504
//! `{"message": "Endpoint request timed out"}`, or its lasting refusals, a 401 or 403 `{"message":
//! "Forbidden"}`. kube then reports code 0, and nothing tells a passing failure (a write that may have
//! been applied) from a lasting one (found by review, both ways); a page that is no UTF-8 fails kube's
//! read altogether. This layer makes every error answer but the API server's own `Status` (one whose
//! code is the HTTP status) a `Status` with the HTTP status as its `code` and `NOT_A_STATUS` as its
//! `reason`, which `store::kube::classify` reads.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Request, Response};
use http_body_util::{BodyExt, Either, Full, Limited};
use kube::client::Body;
use tower::{BoxError, Service};

use crate::store::kube::NOT_A_STATUS;

/// The most of an error body read (a `Status` is a few hundred bytes).
const MAX_ERROR_BODY: usize = 64 * 1024;
/// The most of a success body read, but a watch's: a Lease is at most etcd's 1.5 MiB, a namespace's list
/// of them a few MiB. kube collects a body whole, with no bound.
const MAX_BODY: usize = 64 * 1024 * 1024;
/// The most of a watch's stream read without a newline: one event. kube's `LinesCodec` has no bound.
const MAX_WATCH_LINE: usize = 8 * 1024 * 1024;

/// A success body, bounded: whole (`MAX_BODY`), or for a watch per line (`MAX_WATCH_LINE`).
pub struct Bounded<B> {
    inner: B,
    watch: bool,
    /// Bytes so far: in all, or since the last newline for a watch.
    seen: usize,
}

impl<B> http_body::Body for Bounded<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(err))) => return Poll::Ready(Some(Err(err.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            match (this.watch, data.iter().rposition(|&b| b == b'\n')) {
                (true, Some(last)) => this.seen = data.len() - last - 1,
                _ => this.seen = this.seen.saturating_add(data.len()),
            }
            let limit = if this.watch { MAX_WATCH_LINE } else { MAX_BODY };
            if this.seen > limit {
                let what = if this.watch { "a watch event" } else { "an answer" };
                return Poll::Ready(Some(Err(format!("{what} of more than {limit} bytes: not read").into())));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct MarkForeignErrors<S>(pub S);

impl<S, B> Service<Request<Body>> for MarkForeignErrors<S>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Either<Bounded<B>, Full<Bytes>>>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let watch = super::pools::is_watch(&request);
        let answer = self.0.call(request);
        Box::pin(async move {
            let response = answer.await.map_err(Into::into)?;
            let status = response.status();
            if !status.is_client_error() && !status.is_server_error() {
                return Ok(response.map(|inner| Either::Left(Bounded { inner, watch, seen: 0 })));
            }
            let (parts, body) = response.into_parts();
            let body = match Limited::new(body, MAX_ERROR_BODY).collect().await {
                Ok(body) => marked(body.to_bytes(), status.as_u16()),
                // No Status is that long: judged by its HTTP status alone.
                Err(err) if err.is::<http_body_util::LengthLimitError>() => {
                    let message = format!("an error answer of more than {MAX_ERROR_BODY} bytes");
                    status_body(&message, status.as_u16())
                }
                Err(err) => return Err(err),
            };
            Ok(Response::from_parts(parts, Either::Right(Full::new(body))))
        })
    }
}

/// `body` as kube should read it: anything but a `Status` with the HTTP status as its code becomes one, with
/// reason `NOT_A_STATUS` and as its `message` the body's (or the start of its text).
fn marked(body: Bytes, code: u16) -> Bytes {
    let Ok(serde_json::Value::Object(object)) = serde_json::from_slice::<serde_json::Value>(&body) else {
        // No JSON object (an HTML page, text, bytes that are no UTF-8, which kube would take for a failed
        // call: found by review): no Status either.
        let text = String::from_utf8_lossy(&body).split_whitespace().collect::<Vec<_>>().join(" ");
        return status_body(&text.chars().take(200).collect::<String>(), code);
    };
    // The API server's own: a Status whose code is the HTTP status (a gateway's JSON may carry a `code`
    // of its own, such as gRPC's 14: found by review).
    let is_status = object.get("kind").and_then(serde_json::Value::as_str) == Some("Status");
    if is_status && object.get("code").and_then(serde_json::Value::as_u64) == Some(u64::from(code)) {
        return body;
    }
    let message = match object.get("message") {
        Some(serde_json::Value::String(message)) => message.clone(),
        _ => String::from_utf8_lossy(&body).chars().take(200).collect(),
    };
    status_body(&message, code)
}

/// A `Status` with `message`, `code` and the reason `NOT_A_STATUS`.
fn status_body(message: &str, code: u16) -> Bytes {
    let status = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": NOT_A_STATUS,
        "code": code,
    });
    Bytes::from(status.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_api_servers_statuses_pass_unmarked() {
        let status = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","code":409,"reason":"Conflict"}"#;
        assert_eq!(marked(Bytes::from(status), 409), status);
        let page: serde_json::Value =
            serde_json::from_slice(&marked(Bytes::from(&b"<html>Acc\xe8s refus\xe9</html>"[..]), 403)).unwrap();
        assert_eq!((page["code"].as_u64(), page["reason"].as_str()), (Some(403), Some(NOT_A_STATUS)));
        let marked: serde_json::Value =
            serde_json::from_slice(&marked(Bytes::from(r#"{"message":"Endpoint request timed out"}"#), 504)).unwrap();
        assert_eq!(marked["code"], 504);
        assert_eq!(marked["reason"], NOT_A_STATUS);
        assert_eq!(marked["message"], "Endpoint request timed out");
        let grpc: serde_json::Value = serde_json::from_slice(&super::marked(
            Bytes::from(r#"{"code":14,"message":"upstream connect error"}"#),
            503,
        ))
        .unwrap();
        assert_eq!((grpc["code"].as_u64(), grpc["reason"].as_str()), (Some(503), Some(NOT_A_STATUS)));
    }

    /// Through the layer: a success passes as it is; an error body too long for a Status is judged by its
    /// HTTP status.
    #[test]
    fn the_layer_marks_error_answers_only() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let answer = |status: u16, body: Vec<u8>| {
            let inner = tower::service_fn(move |_: Request<Body>| {
                let response = Response::builder().status(status).body(Full::new(Bytes::from(body.clone())));
                async move { Ok::<_, std::convert::Infallible>(response.unwrap()) }
            });
            runtime.block_on(async {
                let response = MarkForeignErrors(inner).call(Request::new(Body::empty())).await.unwrap();
                response.into_body().collect().await.unwrap().to_bytes()
            })
        };
        assert_eq!(answer(200, b"{}".to_vec()), "{}");
        let long: serde_json::Value = serde_json::from_slice(&answer(401, vec![b' '; 100_000])).unwrap();
        assert_eq!((long["code"].as_u64(), long["reason"].as_str()), (Some(401), Some(NOT_A_STATUS)));
    }

    /// An endless success body (a broken gateway, a watch line that never ends) is cut off, not collected
    /// whole: kube would collect it until the call timeout (45 s for a watch) and mpsync grow without bound.
    #[test]
    fn endless_success_bodies_are_cut_off() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        for uri in [
            "/apis/coordination.k8s.io/v1/namespaces/d/leases/x",
            "/apis/coordination.k8s.io/v1/namespaces/d/leases?watch=true",
        ] {
            let inner = tower::service_fn(|_: Request<Body>| async {
                let chunks = futures::stream::StreamExt::take(
                    futures::stream::repeat_with(|| {
                        Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(vec![b' '; 65536])))
                    }),
                    1100,
                ); // 72 MB
                Ok::<_, std::convert::Infallible>(Response::new(http_body_util::StreamBody::new(chunks)))
            });
            let request = Request::get(uri).body(Body::empty()).unwrap();
            let collected = runtime.block_on(async {
                let response = MarkForeignErrors(inner).call(request).await.unwrap();
                response.into_body().collect().await.map(|_| ())
            });
            let err = collected.expect_err("a 72 MB body must fail").to_string();
            assert!(err.contains("more than"), "{err}");
        }
    }
}
