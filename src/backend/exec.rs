//! The exec credential plugin a kubeconfig's user names (`exec`: `aws eks get-token`,
//! `gke-gcloud-auth-plugin`, `kubelogin`, ...), run by mpsync rather than by kube, because kube runs it
//! synchronously, on the thread that builds the client, twice (once for the TLS set-up, once for the
//! token). A plugin that hangs (a login that waits for a browser, a cloud CLI without network) then hangs
//! mpsync past `--timeout` and SIGTERM, and a slow one is paid for twice.
//!
//! mpsync runs it once when it builds the client, as client-go does: the token it returns goes in every
//! request's `Authorization` header, a certificate is the client's for TLS (see `identity`). The plugin
//! is run again when its token expires, or after the API server answers 401 to it, as client-go does;
//! one run at a time, in a task of its own, so that a request that gives up (its call timeout) does not
//! stop it for the next. What gives up on a run (a signal, `--timeout`, a library caller that drops the
//! future) kills the plugin, with all of its process group when it is not interactive.
//!
//! The plugin is a child of a thread of the runtime's blocking pool, never of the thread that runs the
//! supervised child: the supervisor, as PID 1 or subreaper, leaves those children to their waiter (see
//! `Supervisor::runs_itself`).

use std::io::{IsTerminal, Read};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response, StatusCode};
use kube::client::Body;
use kube::config::{ExecConfig, ExecInteractiveMode};
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;
use serde::Deserialize;
use tower::{BoxError, Layer, Service};

use crate::error::{Error, Result};
use crate::store::kube::NotSent;

/// A plugin, and the words that name it in errors.
pub struct Plugin {
    exec: ExecConfig,
    /// "the exec plugin of user \"x\" in ORIGIN"
    who: String,
}

/// What a run returned.
pub enum Credential {
    Token(Token),
    /// PEM, as `identity::from_pem` takes them; with when the certificate expires.
    Certificate {
        cert: Vec<u8>,
        key: Vec<u8>,
        expires: Option<jiff::Timestamp>,
    },
}

/// A bearer token, as sent, when to run the plugin again for a new one, and when it expires.
#[derive(Clone)]
pub struct Token {
    header: HeaderValue,
    refresh_at: Option<SystemTime>,
    expires: Option<SystemTime>,
}

/// How long before its expiry a token is no longer sent: a request's way to the server.
const IN_FLIGHT: Duration = Duration::from_secs(1);

impl Token {
    fn new(header: HeaderValue, expires: Option<jiff::Timestamp>) -> Token {
        let expires = expires.map(SystemTime::from);
        Token { header, refresh_at: expires.map(refresh_at), expires }
    }

    /// Time to ask the plugin for a new one.
    fn due(&self) -> bool {
        self.refresh_at.is_some_and(|at| SystemTime::now() >= at)
    }

    /// Still good to send (while a new one is asked for).
    fn usable(&self) -> bool {
        self.expires.is_none_or(|at| SystemTime::now() + IN_FLIGHT < at)
    }
}

/// The plugin's answer (`client.authentication.k8s.io` `ExecCredential`), what mpsync reads of it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExecCredential {
    api_version: Option<String>,
    status: Option<CredentialStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CredentialStatus {
    expiration_timestamp: Option<String>,
    token: Option<String>,
    client_certificate_data: Option<String>,
    client_key_data: Option<String>,
}

impl Plugin {
    /// The plugin of `config`'s user, taken out of `config` (kube then runs none); None when the user has
    /// none, or has other credentials that come first (an auth provider, a password, a token or a token
    /// file: as for kube and kubectl, the plugin is then not run).
    pub fn take(config: &mut kube::Config, user: Option<&str>) -> Option<Plugin> {
        let auth = &mut config.auth_info;
        let exec = auth.exec.take()?;
        let first = auth.auth_provider.is_some()
            || (auth.username.is_some() && auth.password.is_some())
            || auth.token.is_some()
            || auth.token_file.is_some();
        if first {
            return None;
        }
        let who = format!("the exec plugin of {}", user.unwrap_or("the configuration's user"));
        Some(Plugin { exec, who })
    }

    /// The words that name the plugin.
    pub fn who(&self) -> &str {
        &self.who
    }

    /// Run the plugin once, to its end; killed if the future is dropped before. `first`: the run as the
    /// client is built, the only one that may ask on the terminal (later, mpsync's child may have it).
    pub async fn run(&self, first: bool) -> Result<Credential> {
        let fail = |why: String| Error::Config(format!("cannot use {}: {why}", self.who));
        let Some(program) = self.exec.command.clone().filter(|command| !command.is_empty()) else {
            return Err(fail("it names no command".into()));
        };
        let terminal = first && std::io::stdin().is_terminal();
        let interactive = match self.exec.interactive_mode {
            Some(ExecInteractiveMode::Never) => false,
            Some(ExecInteractiveMode::Always) if !terminal => {
                let why = if first { "standard input is not a terminal" } else { "the terminal is not mpsync's now" };
                return Err(fail(format!("its interactiveMode is Always, and {why}")));
            }
            _ => terminal,
        };
        let mut command = Command::new(&program);
        command.args(self.exec.args.iter().flatten());
        for pair in self.exec.env.iter().flatten() {
            if let (Some(name), Some(value)) = (pair.get("name"), pair.get("value")) {
                command.env(name, value);
            }
        }
        let mut spec = serde_json::json!({ "interactive": interactive });
        if self.exec.provide_cluster_info
            && let Some(cluster) = &self.exec.cluster
        {
            spec["cluster"] = serde_json::to_value(cluster).map_err(|err| fail(err.to_string()))?;
        }
        let info = serde_json::json!({
            "apiVersion": self.exec.api_version, "kind": "ExecCredential", "spec": spec,
        });
        command.env("KUBERNETES_EXEC_INFO", info.to_string());
        for name in self.exec.drop_env.iter().flatten() {
            command.env_remove(name);
        }
        // Its messages go to mpsync's standard error, as client-go passes them on; standard input only
        // when it may ask for something. Not interactive, it gets a process group of its own, so that
        // giving up on it ends what it started too (an interactive one stays in the terminal's group).
        command.stdout(Stdio::piped()).stderr(Stdio::inherit());
        if interactive {
            command.stdin(Stdio::inherit());
        } else {
            command.stdin(Stdio::null()).process_group(0);
        }
        tracing::debug!(plugin = %self.who, command = %program, "running the exec credential plugin");
        let running = Running::default();
        let _kill_on_drop = KillOnDrop(running.clone());
        let done = tokio::task::spawn_blocking(move || running.run(command, !interactive))
            .await
            .map_err(|err| fail(format!("cannot run it: {err}")))?;
        let (status, stdout) = done.map_err(|err| {
            let hint = match (err.kind(), &self.exec.install_hint) {
                (std::io::ErrorKind::NotFound, Some(hint)) => format!("\n{}", hint.trim()),
                _ => String::new(),
            };
            fail(format!("cannot run {program:?}: {err}{hint}"))
        })?;
        if !status.success() {
            return Err(fail(format!("{program:?} failed ({status})")));
        }
        self.parse(&stdout).map_err(fail)
    }

    /// The credential in the plugin's output: JSON, or YAML as client-go's decoder takes too.
    fn parse(&self, stdout: &[u8]) -> std::result::Result<Credential, String> {
        let answer: ExecCredential = serde_saphyr::from_slice(stdout).map_err(|err| {
            // The parser's message shows the input under it: its first line says what is wrong.
            let err = err.to_string();
            format!("its output is not an ExecCredential: {}", err.lines().next().unwrap_or_default())
        })?;
        if let (Some(asked), Some(answered)) = (&self.exec.api_version, &answer.api_version)
            && asked != answered
        {
            return Err(format!("it is configured for apiVersion {asked}, and answered in {answered}"));
        }
        let Some(status) = answer.status else {
            return Err("its ExecCredential has no status".into());
        };
        let expires = match status.expiration_timestamp.filter(|at| !at.is_empty()) {
            Some(at) => Some(
                at.parse::<jiff::Timestamp>()
                    .map_err(|err| format!("its expirationTimestamp {at:?} is not an RFC 3339 time: {err}"))?,
            ),
            None => None,
        };
        let some = |data: Option<String>| data.filter(|data| !data.is_empty());
        match (some(status.token), some(status.client_certificate_data), some(status.client_key_data)) {
            (_, Some(cert), Some(key)) => Ok(Credential::Certificate { cert: cert.into(), key: key.into(), expires }),
            (_, Some(_), None) => Err("it returned clientCertificateData without clientKeyData".into()),
            (_, None, Some(_)) => Err("it returned clientKeyData without clientCertificateData".into()),
            (Some(token), None, None) => {
                let mut header = HeaderValue::try_from(format!("Bearer {token}"))
                    .map_err(|_| "it returned a token that cannot be sent in an HTTP header".to_string())?;
                header.set_sensitive(true);
                Ok(Credential::Token(Token::new(header, expires)))
            }
            (None, None, None) => Err("it returned neither a token nor clientCertificateData and clientKeyData".into()),
        }
    }
}

/// When to ask for a new token that expires at `expires`: a minute before, as kube has it, or half-way
/// through a shorter life, so that a token that lives less than a minute is not asked for again on every
/// request; not sooner than `MIN_REFRESH` on.
fn refresh_at(expires: SystemTime) -> SystemTime {
    let now = SystemTime::now();
    let left = expires.duration_since(now).unwrap_or_default();
    // Not sooner than a second on: a plugin that answers with a token expired already (a clock off, a
    // stale cache) is not run for every request. The server decides whether it is good meanwhile.
    (expires - left.min(Duration::from_secs(120)) / 2).max(now + MIN_REFRESH)
}

/// The shortest time between two runs of a plugin for a new token (one due, or after a failed run), but
/// after a 401.
const MIN_REFRESH: Duration = Duration::from_secs(1);

/// The plugins running now, by pid, from their start until they are reaped. The supervisor, as PID 1 or
/// subreaper, leaves them to their waiter and never counts them as the job's, whatever it can tell of
/// whose children they are (a plugin has a process group of its own). No lock is held while a plugin is
/// started (a start can hang: a binary on a dead mount); `STARTING` counts those under way.
static PLUGINS: Mutex<Vec<i32>> = Mutex::new(Vec::new());
static STARTING: AtomicUsize = AtomicUsize::new(0);

/// The plugins mpsync runs now (see `PLUGINS`); None while one is being started (a zombie child may then
/// be a plugin's not yet listed).
#[cfg(feature = "cli")]
pub fn plugins() -> Option<Vec<i32>> {
    if STARTING.load(Ordering::SeqCst) > 0 {
        return None;
    }
    let plugins = PLUGINS.lock().unwrap_or_else(PoisonError::into_inner).clone();
    // A start that began meanwhile may have a child not listed yet.
    (STARTING.load(Ordering::SeqCst) == 0).then_some(plugins)
}

/// A start under way, counted in `STARTING` until its plugin is listed (or it failed).
struct Starting;

impl Starting {
    fn new() -> Starting {
        STARTING.fetch_add(1, Ordering::SeqCst);
        Starting
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        STARTING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Where a run of the plugin is, for `KillOnDrop`.
#[derive(Default)]
enum Phase {
    #[default]
    NotStarted,
    /// Being started (no lock is held meanwhile).
    Starting,
    /// Its pid, and whether it leads a process group of its own.
    Started(Pid, bool),
    /// It has exited, and is not reaped yet (so no other process can have its pid), or the run was
    /// given up on before it was under way: nothing to kill (a plugin being started is killed as soon as
    /// it is).
    Over,
}

#[derive(Clone, Default)]
struct Running(Arc<Mutex<Phase>>);

impl Running {
    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// On a thread of the blocking pool: start `command` (unless the run was given up on already), read
    /// its output to the end, and reap it.
    fn run(&self, mut command: Command, group: bool) -> std::io::Result<(std::process::ExitStatus, Vec<u8>)> {
        {
            let mut phase = self.phase();
            if matches!(*phase, Phase::Over) {
                return Err(std::io::Error::other("given up on before it started"));
            }
            *phase = Phase::Starting;
        }
        // Killed if the thread that waits for it dies (mpsync killed, say): never left running alone.
        let parent = nix::unistd::getpid().as_raw();
        // SAFETY: system calls on integers, async-signal-safe; nothing allocates or locks.
        unsafe {
            command.pre_exec(move || {
                if nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGKILL) != 0
                    || nix::libc::getppid() != parent
                {
                    return Err(std::io::Error::other("mpsync is exiting"));
                }
                // A stop sent to mpsync's group since the fork, blocked until now, is mpsync's: it would stop
                // the plugin before its exec, for good, in a group nobody continues (found by review,
                // helper-204).
                discard_pending_stops();
                // As client-go's plugin starts: no signal blocked, none ignored but what mpsync's parent
                // meant for everything it runs (SIGHUP under nohup; a handler is reset by exec anyway).
                default_signals(&[nix::libc::SIGHUP]);
                Ok(())
            });
        }
        let starting = Starting::new();
        let spawned = command.spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(err) => {
                *self.phase() = Phase::Over;
                return Err(err);
            }
        };
        let pid = Pid::from_raw(child.id() as i32);
        PLUGINS.lock().unwrap_or_else(PoisonError::into_inner).push(pid.as_raw());
        drop(starting);
        {
            let mut phase = self.phase();
            if matches!(*phase, Phase::Over) {
                // Given up on while it was being started.
                kill_plugin(pid, group);
            } else {
                *phase = Phase::Started(pid, group);
            }
        }
        let mut stdout = Vec::new();
        let read = child.stdout.take().map_or(Ok(0), |mut out| out.read_to_end(&mut stdout));
        while let Err(nix::errno::Errno::EINTR) = waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {}
        *self.phase() = Phase::Over;
        // Reaped and taken off the list at once (its zombie makes the wait immediate): its pid, free again,
        // is never on the list.
        let status = {
            let mut plugins = PLUGINS.lock().unwrap_or_else(PoisonError::into_inner);
            plugins.retain(|&plugin| plugin != pid.as_raw());
            child.wait()
        }?;
        read?;
        Ok((status, stdout))
    }
}

/// SIGKILL to the plugin, and to its process group if it leads one.
fn kill_plugin(pid: Pid, group: bool) {
    let _ = if group { killpg(pid, Signal::SIGKILL) } else { kill(pid, Signal::SIGKILL) };
}

/// Kills the plugin (or keeps it from starting, or has it killed as soon as it is) when the run is given
/// up on. Never waits for a start.
struct KillOnDrop(Running);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let mut phase = self.0.phase();
        if let Phase::Started(pid, group) = *phase {
            tracing::debug!(pid = pid.as_raw(), "killing the exec credential plugin");
            kill_plugin(pid, group);
        }
        *phase = Phase::Over;
    }
}

/// The token of a plugin, run again when it is due or was refused. While a run is under way, requests go
/// on with the token it replaces as long as that one is good: a holder's renewals do not wait for the
/// plugin unless its token has expired.
#[derive(Clone)]
pub struct TokenSource {
    plugin: Arc<Plugin>,
    state: Arc<Mutex<State>>,
}

type Refresh = Shared<BoxFuture<'static, std::result::Result<HeaderValue, String>>>;

enum State {
    Ready(Token),
    /// Refused by the server: run again at the next request.
    Stale,
    /// The last run failed, with no good token left: requests fail with its error until `MIN_REFRESH`
    /// has passed since, then the plugin is run again (not once per request: a retrying lock would run
    /// a cloud CLI ten times a second).
    Failed(String, Instant),
    /// A run under way, and the token it replaces while that is still good.
    Running(Refresh, Option<Token>),
}

/// After a failed run, while the old token is still good: how long until the plugin is run again (at
/// most; sooner if the old token stops being good first).
const AFTER_FAILURE: Duration = Duration::from_secs(5);

impl TokenSource {
    pub fn new(plugin: Plugin, token: Token) -> TokenSource {
        TokenSource { plugin: Arc::new(plugin), state: Arc::new(Mutex::new(State::Ready(token))) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The header to send: the token; a new one if it is due, or, while that is asked for, the old one if
    /// it is still good.
    async fn header(&self) -> std::result::Result<HeaderValue, String> {
        let refresh = {
            let mut state = self.lock();
            let (refresh, old) = match std::mem::replace(&mut *state, State::Stale) {
                State::Ready(token) if !token.due() => {
                    let header = token.header.clone();
                    *state = State::Ready(token);
                    return Ok(header);
                }
                State::Running(refresh, old) => (refresh, old),
                State::Failed(why, at) if at.elapsed() < MIN_REFRESH => {
                    *state = State::Failed(why.clone(), at);
                    return Err(why);
                }
                State::Ready(token) => (self.refresh(), Some(token)),
                State::Stale | State::Failed(..) => (self.refresh(), None),
            };
            let old = old.filter(Token::usable);
            let header = old.as_ref().map(|token| token.header.clone());
            *state = State::Running(refresh.clone(), old);
            match header {
                Some(header) => return Ok(header),
                None => refresh,
            }
        };
        refresh.await
    }

    /// A run of the plugin in a task of its own, which settles the state when it ends.
    fn refresh(&self) -> Refresh {
        let source = self.clone();
        let task = tokio::spawn(async move {
            let result = match source.plugin.run(false).await {
                Ok(Credential::Token(token)) => Ok(token),
                Ok(Credential::Certificate { .. }) => Err(format!(
                    "{} returned a client certificate, where it returned a token before",
                    source.plugin.who()
                )),
                Err(err) => Err(err.to_string()),
            };
            let mut state = source.lock();
            // The old token, unless it was refused meanwhile.
            let old = match &*state {
                State::Running(_, old) => old.clone(),
                _ => None,
            };
            match result {
                Ok(token) => {
                    let header = token.header.clone();
                    *state = State::Ready(token);
                    Ok(header)
                }
                Err(why) => {
                    tracing::warn!(error = %why, "could not renew the exec credential plugin's token");
                    *state = match old.filter(Token::usable) {
                        // Again in 5 s, or as the old token stops being good, if that is sooner.
                        Some(old) => {
                            let again = SystemTime::now() + AFTER_FAILURE;
                            let last = old.expires.and_then(|at| at.checked_sub(IN_FLIGHT));
                            State::Ready(Token { refresh_at: Some(last.map_or(again, |last| last.min(again))), ..old })
                        }
                        None => State::Failed(why.clone(), Instant::now()),
                    };
                    Err(why)
                }
            }
        });
        // A task that panicked or was cancelled (its runtime shut down) settled nothing: the state still
        // shows this run (only its end moves it on), and the next request runs the plugin again.
        let state = Arc::downgrade(&self.state);
        async move {
            task.await.unwrap_or_else(|err| {
                if let Some(state) = state.upgrade() {
                    let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
                    if matches!(&*state, State::Running(..)) {
                        *state = State::Stale;
                    }
                }
                Err(format!("the exec credential plugin's run failed: {err}"))
            })
        }
        .boxed()
        .shared()
    }

    /// The server answered 401 to `header`: if it is still the token, it is not sent again, and the plugin
    /// is run again at the next request (if it is not running already).
    fn refused(&self, header: &HeaderValue) {
        let mut state = self.lock();
        match &mut *state {
            State::Ready(token) if token.header == *header => {
                tracing::debug!(plugin = %self.plugin.who(), "the API server refused the exec plugin's token");
                *state = State::Stale;
            }
            State::Running(_, old) if old.as_ref().is_some_and(|token| token.header == *header) => *old = None,
            _ => {}
        }
    }
}

impl<S> Layer<S> for TokenSource {
    type Service = WithToken<S>;

    fn layer(&self, inner: S) -> WithToken<S> {
        WithToken { inner, source: self.clone() }
    }
}

/// Every request with the plugin's token.
#[derive(Clone)]
pub struct WithToken<S> {
    inner: S,
    source: TokenSource,
}

impl<S, R> Service<Request<Body>> for WithToken<S>
where
    S: Service<Request<Body>, Response = Response<R>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    R: Send + 'static,
{
    type Response = Response<R>;
    type Error = BoxError;
    type Future = BoxFuture<'static, std::result::Result<Response<R>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        // The ready one is the one to call; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let source = self.source.clone();
        async move {
            let header = source.header().await.map_err(NotSent)?;
            request.headers_mut().insert(AUTHORIZATION, header.clone());
            // A 401 means the server did nothing with the request (authentication comes first): sent again
            // once with a new token, if the plugin gives one, as a token revoked or expired early (a clock
            // off) must not end a run.
            let again = copy(&request);
            let mut spare = inner.clone();
            let response = inner.call(request).await.map_err(Into::into)?;
            if response.status() != StatusCode::UNAUTHORIZED {
                return Ok(response);
            }
            source.refused(&header);
            let Some(mut again) = again else { return Ok(response) };
            // The 401 stands (final for a lock) unless the plugin gives another token.
            let new = match source.header().await {
                Ok(new) if new != header => new,
                Ok(_) => return Ok(response),
                Err(why) => {
                    tracing::warn!(error = %why, "no new token after the API server refused the exec plugin's");
                    return Ok(response);
                }
            };
            tracing::debug!(plugin = %source.plugin.who(), "sending the request again with the plugin's new token");
            again.headers_mut().insert(AUTHORIZATION, new.clone());
            let ready = tower::ServiceExt::ready(&mut spare).await.map_err(Into::into)?;
            let response = ready.call(again).await.map_err(Into::into)?;
            if response.status() == StatusCode::UNAUTHORIZED {
                source.refused(&new);
            }
            Ok(response)
        }
        .boxed()
    }
}

/// The request again, if its body can be had again (kube's are whole bytes, or empty).
fn copy(request: &Request<Body>) -> Option<Request<Body>> {
    let mut again = Request::new(request.body().try_clone()?);
    *again.method_mut() = request.method().clone();
    *again.uri_mut() = request.uri().clone();
    *again.version_mut() = request.version();
    *again.headers_mut() = request.headers().clone();
    *again.extensions_mut() = request.extensions().clone();
    Some(again)
}

/// In a process between fork and exec, once it has left mpsync's process group: a job-control stop pending
/// since the fork (blocked, as mpsync's threads block them) was sent to mpsync's group, which mpsync acts on
/// itself; it is discarded (ignoring a signal discards it), and the default action put back for the stops
/// that come from now on.
pub(crate) fn discard_pending_stops() {
    for stop in [nix::libc::SIGTSTP, nix::libc::SIGTTIN, nix::libc::SIGTTOU] {
        // SAFETY: signal(2) with SIG_IGN, then SIG_DFL: no handler code runs.
        unsafe {
            nix::libc::signal(stop, nix::libc::SIG_IGN);
            nix::libc::signal(stop, nix::libc::SIG_DFL);
        }
    }
}

/// In a process between fork and exec (async-signal-safe: raw system calls on integers, no allocation):
/// every signal's action back to its default but those in `keep` (0 stands for none), and none blocked. For
/// what mpsync runs: its child, and an exec credential plugin (which kept SIGXFSZ ignored, found by review of
/// stop 40). The raw system calls, because glibc refuses to touch the two real-time signals it keeps for
/// itself (32, 33), and those can be inherited ignored too. An all-zero kernel `struct sigaction` is SIG_DFL, no flags,
/// empty mask, whatever the architecture's field order.
pub(crate) fn default_signals(keep: &[nix::libc::c_int]) {
    let default_action = [0u64; 4];
    let empty_set = 0u64;
    // SAFETY: two system calls with pointers to stack values of the kernel's sizes; nothing allocates.
    unsafe {
        for signal in 1..=64 {
            if signal != nix::libc::SIGKILL && signal != nix::libc::SIGSTOP && !keep.contains(&signal) {
                nix::libc::syscall(nix::libc::SYS_rt_sigaction, signal, &default_action, std::ptr::null::<u64>(), 8);
            }
        }
        nix::libc::syscall(
            nix::libc::SYS_rt_sigprocmask,
            nix::libc::SIG_SETMASK,
            &empty_set,
            std::ptr::null::<u64>(),
            8,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(api_version: Option<&str>) -> Plugin {
        let exec: ExecConfig =
            serde_json::from_value(serde_json::json!({ "apiVersion": api_version, "command": "plugin" })).unwrap();
        Plugin { exec, who: "the exec plugin of user \"u\"".into() }
    }

    fn token(credential: Credential) -> Token {
        match credential {
            Credential::Token(token) => token,
            Credential::Certificate { .. } => panic!("a certificate"),
        }
    }

    #[test]
    fn the_answer_is_read_as_json_or_yaml() {
        let v1 = plugin(Some("client.authentication.k8s.io/v1"));
        let json =
            br#"{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"t"}}"#;
        let yaml = b"apiVersion: client.authentication.k8s.io/v1\nkind: ExecCredential\nstatus:\n  token: t\n";
        for answer in [&json[..], &yaml[..]] {
            let token = token(v1.parse(answer).unwrap_or_else(|err| panic!("{err}")));
            assert_eq!(token.header, "Bearer t");
            assert!(token.header.is_sensitive());
            assert!(token.refresh_at.is_none() && !token.due() && token.usable());
        }
    }

    #[test]
    fn a_wrong_answer_says_what_is_wrong() {
        let v1 = plugin(Some("client.authentication.k8s.io/v1"));
        let cases: [(&[u8], &str); 7] = [
            (b"not: [json", "not an ExecCredential"),
            (br#"{"apiVersion":"client.authentication.k8s.io/v1beta1","status":{"token":"t"}}"#, "apiVersion"),
            (br#"{"apiVersion":"client.authentication.k8s.io/v1"}"#, "no status"),
            (br#"{"status":{}}"#, "neither a token"),
            (br#"{"status":{"clientCertificateData":"c"}}"#, "without clientKeyData"),
            (br#"{"status":{"token":"t","expirationTimestamp":"tomorrow"}}"#, "RFC 3339"),
            (br#"{"status":{"token":"t\n"}}"#, "HTTP header"),
        ];
        for (answer, expected) in cases {
            let err = v1.parse(answer).err().unwrap_or_else(|| panic!("{expected}: accepted"));
            assert!(err.contains(expected), "{expected}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn a_token_is_asked_for_again_a_minute_before_it_expires_or_half_way_through_a_shorter_life() {
        let now = SystemTime::now();
        let long = refresh_at(now + Duration::from_secs(3600));
        assert!(long > now + Duration::from_secs(3530) && long <= now + Duration::from_secs(3540));
        let short = refresh_at(now + Duration::from_secs(20));
        assert!(short > now + Duration::from_secs(9) && short < now + Duration::from_secs(11));
        // Expired already: a second on, not at once.
        let expired = refresh_at(now - Duration::from_secs(5));
        assert!(expired > now && expired <= SystemTime::now() + MIN_REFRESH);
        let v1 = plugin(None);
        let answer = br#"{"status":{"token":"t","expirationTimestamp":"2001-01-01T00:00:00Z"}}"#;
        let expired = token(v1.parse(answer).unwrap());
        assert!(!expired.due() && !expired.usable());
    }
}
