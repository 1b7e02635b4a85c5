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
    /// How long the requests wait for the read a refusal asked for (see `REFUSED_READ_WAIT`).
    read_wait: Duration,
}

/// The token last read, and what became of the reads.
struct Token {
    header: HeaderValue,
    /// When it was read (None: read again at the next request, after a refusal).
    read_at: Option<Instant>,
    /// A read under way, on a thread of its own.
    reading: bool,
    /// The read under way that a refusal asked for: its end, for the requests made meanwhile to wait for,
    /// and the one time until which they all wait for it.
    refusal_read: Option<(tokio::sync::watch::Receiver<bool>, Instant)>,
    /// The token refused while a read was under way: if that read gives the same token, the refusal stands
    /// and the file is read again at the next request (found by review, rv232: a 401 during the minute's
    /// read was forgotten when it ended, and the refused token used until the next 401).
    refused_while_reading: Option<HeaderValue>,
}

impl FileToken {
    /// The token file `config`'s user names, taken out of `config` (kube then reads none), where it is the
    /// credential kube would use; its first read now, an error (in words) if it gives no token. Each
    /// request has `call_timeout`: a quarter of it at most is spent waiting for a read.
    #[cfg(test)]
    pub fn take(config: &mut kube::Config, call_timeout: Duration) -> Result<Option<FileToken>, String> {
        let Some(path) = FileToken::path(config) else { return Ok(None) };
        let header = read(&path)?;
        Ok(Some(FileToken::first(path, header, call_timeout)))
    }

    /// [`FileToken::take`], its first read on a thread of its own (`off_the_runtime`): a FIFO whose writer says nothing
    /// yet, or a hung mount, holds that thread only, and a stop signal or `--timeout` still ends the set-up
    /// (found by review, rv259).
    pub async fn take_off_the_runtime(
        config: &mut kube::Config,
        call_timeout: Duration,
    ) -> Result<Option<FileToken>, String> {
        let Some(path) = FileToken::path(config) else { return Ok(None) };
        let first = path.clone();
        let header =
            super::off_the_runtime(move || read(&first)).await.unwrap_or_else(|| Err("its read failed".into()))?;
        Ok(Some(FileToken::first(path, header, call_timeout)))
    }

    /// The token file, taken out of `config`, where it is the credential kube would use.
    fn path(config: &mut kube::Config) -> Option<PathBuf> {
        let auth = &mut config.auth_info;
        let first = auth.auth_provider.is_some()
            || (auth.username.is_some() && auth.password.is_some())
            || auth.token.is_some();
        if first || auth.token_file.is_none() {
            return None;
        }
        Some(PathBuf::from(auth.token_file.take().unwrap_or_default()))
    }

    fn first(path: PathBuf, header: HeaderValue, call_timeout: Duration) -> FileToken {
        let token = Token {
            header,
            read_at: Some(Instant::now()),
            reading: false,
            refusal_read: None,
            refused_while_reading: None,
        };
        let read_wait = REFUSED_READ_WAIT.min(call_timeout / 4);
        FileToken { path, state: Arc::new(Mutex::new(token)), read_wait }
    }

    /// The header for the next request, once `read` (if any) is done. The file is read again on a thread
    /// of its own, never on the runtime's: a read that blocks (a FIFO, a hung mount) held up every timer and
    /// signal of mpsync, which renewed nothing, and, its child killed by the guard at the deadline, never
    /// exited (found by review, helper-164, helper-165). The read a refusal asks for is waited for a little
    /// (the next request is to use a rotated token, as client-go's does), asynchronously: waited for on the
    /// runtime's thread, it held up every timer and signal for as long (found by review, rv226); the
    /// minute's read is not waited for.
    async fn header(&self, read: Option<(tokio::sync::watch::Receiver<bool>, Instant)>) -> HeaderValue {
        if let Some((mut read, until)) = read {
            let _ = tokio::time::timeout_at(until.into(), read.wait_for(|done| *done)).await;
        }
        self.state.lock().unwrap_or_else(PoisonError::into_inner).header.clone()
    }

    /// Start a read of the file if one is due: after a refusal, or a minute after the last. The read a
    /// refusal asked for is returned, to wait for, with when to stop waiting: also to requests made while
    /// it is under way (found by review, rv228: they went out with the token refused), until that one time
    /// (a read that never ends, a hung mount, held up every request by as much, each past its call timeout
    /// with short timings: found by review, rv230).
    fn read_if_due(&self) -> Option<(tokio::sync::watch::Receiver<bool>, Instant)> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.reading {
            return state.refusal_read.clone().filter(|(_, until)| Instant::now() < *until);
        }
        let refused = state.read_at.is_none();
        if !(refused || state.read_at.is_some_and(|at| at.elapsed() >= REREAD)) {
            return None;
        }
        state.reading = true;
        let (path, shared) = (self.path.clone(), Arc::clone(&self.state));
        let (done, read_done) = tokio::sync::watch::channel(false);
        let reader = move || {
            let read = read(&path);
            let mut state = shared.lock().unwrap_or_else(PoisonError::into_inner);
            match read {
                Ok(header) => state.header = header,
                // As client-go: the last token read, until the file gives one again.
                Err(why) => tracing::debug!(error = %why, "keeping the last token read"),
            }
            let refused = state.refused_while_reading.take().is_some_and(|refused| refused == state.header);
            (state.read_at, state.reading, state.refusal_read) = ((!refused).then(Instant::now), false, None);
            let _ = done.send(true);
        };
        if std::thread::Builder::new().name("mpsync-token".into()).spawn(reader).is_err() {
            // No thread to be had (the child took every process): the last token, and a try at the next request.
            state.reading = false;
            return None;
        }
        state.refusal_read = refused.then(|| (read_done, Instant::now() + self.read_wait));
        state.refusal_read.clone()
    }

    fn refused(&self, header: &HeaderValue) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.header == *header {
            state.read_at = None;
            if state.reading {
                state.refused_while_reading = Some(header.clone());
            }
        }
    }
}

/// How long the requests wait for the read of the token file that a refusal asked for, at most (a quarter of
/// the call timeout if that is less); in the unit tests, long enough for a loaded machine (the test's read
/// always ends).
const REFUSED_READ_WAIT: Duration = Duration::from_millis(if cfg!(test) { 30_000 } else { 500 });

/// The file's token, trimmed, as a bearer header.
fn read(path: &std::path::Path) -> Result<HeaderValue, String> {
    let cannot = |err: &dyn std::fmt::Display| format!("cannot read token file {}: {err}", path.display());
    let bytes = super::read_config_file(path).map_err(|err| cannot(&err))?;
    let text = String::from_utf8(bytes).map_err(|err| cannot(&err))?;
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
        let source = self.source.clone();
        let read = source.read_if_due();
        // The service made ready by `poll_ready` is the one called, after the wait (tower's way).
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        async move {
            let header = source.header(read).await;
            request.headers_mut().insert(AUTHORIZATION, header.clone());
            let response = inner.call(request).await.map_err(Into::into)?;
            if response.status() == StatusCode::UNAUTHORIZED {
                // As client-go: the file is read again for the next request (a rotated token).
                source.refused(&header);
            }
            Ok(response)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by review (rv226): after a 401, the next request waited for the file's read on the runtime's
    /// thread, holding up every timer and signal for up to half a second. Here the file is a FIFO whose writer is
    /// a task on the same runtime: that task runs while the request waits, and the request takes its token.
    #[tokio::test(flavor = "current_thread")]
    async fn the_read_after_a_refusal_is_waited_for_without_holding_up_the_runtime() {
        let dir = std::env::temp_dir().join(format!("mpsync-token-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "old\n").unwrap();
        let mut config = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
        config.auth_info.token_file = Some(path.display().to_string());
        let call_timeout = Duration::from_secs(600);
        let source = FileToken::take(&mut config, call_timeout).unwrap().expect("the token file is the credential");
        source.refused(&HeaderValue::from_static("Bearer old"));
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();

        let seen = Arc::new(Mutex::new(Vec::new()));
        let inner = {
            let seen = Arc::clone(&seen);
            tower::service_fn(move |request: Request<Body>| {
                seen.lock().unwrap().push(request.headers().get(AUTHORIZATION).cloned().unwrap());
                async { Ok::<_, std::convert::Infallible>(Response::new(())) }
            })
        };
        let mut service = source.layer(inner);
        let writer = {
            let path = path.clone();
            // Opened for writing once the read has it open: the read is under way (on its thread).
            tokio::spawn(async move { std::fs::write(&path, "new\n").unwrap() })
        };
        // The first request starts the read; the second is made while it is under way, and waits for it too
        // (found by review, rv228: it went out with the token refused).
        let first = service.call(Request::new(Body::empty()));
        let second = service.call(Request::new(Body::empty()));
        let (first, second) = tokio::join!(first, second);
        first.unwrap();
        second.unwrap();
        writer.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(*seen.lock().unwrap(), ["Bearer new", "Bearer new"]);
    }

    /// Found by review (rv232): a 401 that came while the minute's read was under way was forgotten when that
    /// read ended (it gave the same token): the token refused was used on until the next 401. Now the next
    /// request reads the file again.
    #[test]
    fn a_refusal_during_the_minutes_read_is_not_forgotten() {
        let dir = std::env::temp_dir().join(format!("mpsync-token-test-minute-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "old\n").unwrap();
        let mut config = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
        config.auth_info.token_file = Some(path.display().to_string());
        let source = FileToken::take(&mut config, Duration::from_secs(600)).unwrap().expect("the token file");
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // The minute has passed: the next request starts a read, which blocks on the FIFO until it is written.
        source.state.lock().unwrap().read_at = Instant::now().checked_sub(REREAD);
        assert!(source.read_if_due().is_none(), "the minute's read is not waited for");
        source.refused(&HeaderValue::from_static("Bearer old"));
        std::fs::write(&path, "old\n").unwrap();
        let started = Instant::now();
        while source.state.lock().unwrap().reading {
            assert!(started.elapsed() < Duration::from_secs(60), "the read never ended");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::fs::remove_dir_all(&dir).unwrap();
        let state = source.state.lock().unwrap();
        assert_eq!(state.header, HeaderValue::from_static("Bearer old"));
        assert!(state.read_at.is_none(), "the refusal during the read was forgotten");
    }
}
