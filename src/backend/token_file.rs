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
    state: Arc<Mutex<Token>>,
}

/// The token last read, and what became of the reads.
struct Token {
    header: HeaderValue,
    /// When it was read (None: read again at the next request, after a refusal).
    read_at: Option<Instant>,
    /// A read under way, on a thread of its own.
    reading: bool,
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
        let token = Token { header, read_at: Some(Instant::now()), reading: false };
        Ok(Some(FileToken { path, state: Arc::new(Mutex::new(token)) }))
    }

    /// The header for the next request. The file is read again on a thread of its own, never on the
    /// runtime's: a read that blocks (a FIFO, a hung mount) held up every timer and signal of mpsync, which
    /// renewed nothing, and, its child killed by the guard at the deadline, never exited (found by review,
    /// helper-164, helper-165). The read a refusal asks for is waited for a little (the next request is
    /// to use a rotated token, as client-go's does); the minute's is not.
    fn header(&self) -> HeaderValue {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let refused = state.read_at.is_none();
        if state.reading || !(refused || state.read_at.is_some_and(|at| at.elapsed() >= REREAD)) {
            return state.header.clone();
        }
        state.reading = true;
        let (path, shared) = (self.path.clone(), Arc::clone(&self.state));
        let (done, read_done) = std::sync::mpsc::channel();
        let reader = move || {
            let read = read(&path);
            let mut state = shared.lock().unwrap_or_else(PoisonError::into_inner);
            match read {
                Ok(header) => state.header = header,
                // As client-go: the last token read, until the file gives one again.
                Err(why) => tracing::debug!(error = %why, "keeping the last token read"),
            }
            (state.read_at, state.reading) = (Some(Instant::now()), false);
            let _ = done.send(());
        };
        if std::thread::Builder::new().name("mpsync-token".into()).spawn(reader).is_err() {
            // No thread to be had (the child took every process): the last token, and a try at the next request.
            state.reading = false;
            return state.header.clone();
        }
        drop(state);
        if refused {
            let _ = read_done.recv_timeout(REFUSED_READ_WAIT);
        }
        self.state.lock().unwrap_or_else(PoisonError::into_inner).header.clone()
    }

    fn refused(&self, header: &HeaderValue) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.header == *header {
            state.read_at = None;
        }
    }
}

/// How long a request waits for the read of the token file that a refusal asked for.
const REFUSED_READ_WAIT: Duration = Duration::from_millis(500);

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
