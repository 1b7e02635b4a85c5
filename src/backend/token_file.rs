//! A user's `tokenFile` (and the pod's service-account token), read as client-go reads it: the file's
//! token with surrounding white space trimmed (kube sent it whole, so a file ending in a newline, as
//! `echo $TOKEN > file` writes it, made every request fail with "invalid bearer token"), read again at
//! least once a minute and after the API server refuses it (401), the last good token kept while the
//! file cannot be read (found by review, helper-122).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response, StatusCode};
use kube::client::Body;
use tower::{BoxError, Layer, Service};

/// How long a token read from the file is used before the file is read again (kube's and client-go's).
const REREAD: Duration = Duration::from_secs(60);

/// The token of a file, read again once a minute or after a refusal.
#[derive(Clone)]
pub struct FileToken {
    path: PathBuf,
    /// The header, and when it was read (None: read again at the next request).
    state: Arc<Mutex<(HeaderValue, Option<Instant>)>>,
}

impl FileToken {
    /// The token file `config`'s user names, taken out of `config` (kube then reads none), where it is the
    /// credential kube would use; its first read now, an error (in words) if it gives no token.
    pub fn take(config: &mut kube::Config) -> Result<Option<FileToken>, String> {
        let auth = &mut config.auth_info;
        let first = auth.auth_provider.is_some()
            || (auth.username.is_some() && auth.password.is_some())
            || auth.token.is_some();
        if first || auth.token_file.is_none() {
            return Ok(None);
        }
        let path = PathBuf::from(auth.token_file.take().unwrap_or_default());
        let header = read(&path)?;
        Ok(Some(FileToken { path, state: Arc::new(Mutex::new((header, Some(Instant::now())))) }))
    }

    fn header(&self) -> HeaderValue {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.1.is_none_or(|at| at.elapsed() >= REREAD) {
            match read(&self.path) {
                Ok(header) => state.0 = header,
                // As client-go: the last token read, until the file gives one again.
                Err(why) => tracing::debug!(error = %why, "keeping the last token read"),
            }
            state.1 = Some(Instant::now());
        }
        state.0.clone()
    }

    fn refused(&self, header: &HeaderValue) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.0 == *header {
            state.1 = None;
        }
    }
}

/// The file's token, trimmed, as a bearer header.
fn read(path: &std::path::Path) -> Result<HeaderValue, String> {
    let text =
        std::fs::read_to_string(path).map_err(|err| format!("cannot read token file {}: {err}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("token file {} holds no token", path.display()));
    }
    let mut header = HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| {
        format!("token file {} holds no usable token (a character not allowed in a header)", path.display())
    })?;
    header.set_sensitive(true);
    Ok(header)
}

impl<S> Layer<S> for FileToken {
    type Service = WithFileToken<S>;

    fn layer(&self, inner: S) -> WithFileToken<S> {
        WithFileToken { inner, source: self.clone() }
    }
}

/// Every request with the file's token.
#[derive(Clone)]
pub struct WithFileToken<S> {
    inner: S,
    source: FileToken,
}

impl<S, R> Service<Request<Body>> for WithFileToken<S>
where
    S: Service<Request<Body>, Response = Response<R>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    R: Send + 'static,
{
    type Response = Response<R>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<R>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let header = self.source.header();
        request.headers_mut().insert(AUTHORIZATION, header.clone());
        let source = self.source.clone();
        let future = self.inner.call(request);
        async move {
            let response = future.await.map_err(Into::into)?;
            if response.status() == StatusCode::UNAUTHORIZED {
                // As client-go: the file is read again for the next request (a rotated token).
                source.refused(&header);
            }
            Ok(response)
        }
        .boxed()
    }
}
