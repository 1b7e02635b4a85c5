//! The Kubernetes client mpsync builds from `--kubeconfig`/`--context` or the standard resolution
//! ($KUBECONFIG, ~/.kube/config, in-cluster), and (for the CLI) the store chosen by `--backend`. Library
//! users get the same client from `mpsync::kube_client` (the `client` feature), or bring their own.
//!
//! The client is kube's, over a connection stack of mpsync's own: TCP_NODELAY on every socket
//! (`connector`), the proxy kubectl would use (`proxy`), TLS that trusts exactly what the configuration
//! asks for (`tls`), and watches on connections of their own (`pools`).

pub(crate) mod answers;
mod connector;
mod exec;
mod identity;
mod pools;
pub mod proxy;
pub mod tls;
mod token_file;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::Client;
use kube::client::{Body, ClientBuilder, ConfigExt};
use kube::config::{Cluster, KubeConfigOptions, Kubeconfig, KubeconfigError};
use tower::{BoxError, ServiceBuilder};

#[cfg(feature = "cli")]
pub(crate) use exec::{default_signals, discard_pending_stops};

#[cfg(feature = "cli")]
use crate::cli::Backend;
use crate::error::{Error, Result};
#[cfg(feature = "cli")]
use crate::store::Store;
#[cfg(feature = "cli")]
use crate::store::file::FileStore;
#[cfg(feature = "cli")]
use crate::store::kube::KubeStore;
use crate::store::kube::one_line;
use connector::Connector;
#[cfg(feature = "cli")]
pub(crate) use exec::plugins;
use pools::WatchesApart;
use proxy::ProxyEnv;

/// A single-threaded runtime. Single-threaded on purpose: the child is forked from the main thread, so
/// its parent-death signal (which fires when the forking *thread* exits) cannot fire early.
///
/// Its blocking pool (the file backend's calls, host-name lookups) keeps the thread it starts now, before
/// any child exists, for the whole run: tokio panics ("OS can't spawn worker thread") where it needs a
/// thread, cannot start one and has none left, and the child may take every process its user may have (a
/// leak in a pod with a pids limit; found by review, helper-167: a renewal after the pool's thread had
/// gone idle for 10 s panicked, and the lease was left held). With one kept, the work waits for it.
#[cfg(feature = "cli")]
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    // tokio panics, rather than fail, where the first runtime's signal driver cannot open its socket pair
    // (found by review, rv247: `ulimit -n 9` to 11 ended in a panic, exit 101). So room for the runtime's
    // descriptors (its epoll, its waker, that pair and a copy of it) is made sure of first, all at once.
    let room = (0..4).map(|_| std::os::unix::net::UnixStream::pair()).collect::<std::io::Result<Vec<_>>>();
    if let Err(err) = room {
        return Err(Error::Internal(format!(
            "cannot start the runtime: {err}{}",
            limit_hint(nix::libc::RLIMIT_NOFILE)
        )));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(Duration::MAX)
        .build()
        .map_err(|err| Error::Internal(format!("cannot start the runtime: {err}")))?;
    // So does its blocking pool where it cannot start its thread (found by review, rv262: `ulimit -u 2` ended
    // `status` in a panic, exit 101): a thread is started first, to find out.
    if let Err(err) = std::thread::Builder::new().name("mpsync-probe".into()).spawn(|| {}).map(|probe| probe.join()) {
        let limit = limit_hint(nix::libc::RLIMIT_NPROC);
        return Err(Error::Internal(format!("cannot start the runtime: cannot start a thread: {err}{limit}")));
    }
    drop(runtime.spawn_blocking(|| {}));
    Ok(runtime)
}

/// " (ulimit -n is N)" for `RLIMIT_NOFILE`, " (ulimit -u is N)" for `RLIMIT_NPROC` (with "; ulimit -v is N"
/// where address space is limited): what an error of too few descriptors or processes (EMFILE, EAGAIN) adds, so
/// that the user sees which limit it met.
#[cfg(feature = "cli")]
pub(crate) fn limit_hint(resource: nix::libc::__rlimit_resource_t) -> String {
    let option = if resource == nix::libc::RLIMIT_NPROC { 'u' } else { 'n' };
    let mut limit = nix::libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given.
    let soft = (unsafe { nix::libc::getrlimit(resource, &mut limit) } == 0).then_some(limit.rlim_cur);
    // A thread's stack takes address space too: where that is limited, EAGAIN may be its limit instead.
    let mut space = nix::libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: as above.
    let space = if resource == nix::libc::RLIMIT_NPROC
        && unsafe { nix::libc::getrlimit(nix::libc::RLIMIT_AS, &mut space) } == 0
        && space.rlim_cur != nix::libc::RLIM_INFINITY
    {
        format!("; ulimit -v is {}", space.rlim_cur / 1024)
    } else {
        String::new()
    };
    soft.map(|soft| format!(" (ulimit -{option} is {soft}{space})")).unwrap_or_default()
}

/// What `err` says, with the process limit (`limit_hint`) when it is one of too few processes (EAGAIN from
/// fork or clone).
#[cfg(feature = "cli")]
pub(crate) fn with_process_limit(err: &std::io::Error) -> String {
    match err.raw_os_error() == Some(nix::libc::EAGAIN) {
        true => format!("{err}{}", limit_hint(nix::libc::RLIMIT_NPROC)),
        false => err.to_string(),
    }
}

/// Run `future` to its end on a fresh `runtime()`, then leave without waiting for blocking work still
/// under way (a file-system call stuck on a dead mount, say): mpsync has given up on it already, and it
/// must never hold up the exit.
#[cfg(feature = "cli")]
pub fn block_on<T>(future: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    let runtime = runtime()?;
    let output = runtime.block_on(future);
    runtime.shutdown_background();
    output
}

/// The store `--backend` names; every call bounded by `call_timeout`.
#[cfg(feature = "cli")]
pub async fn open_store(backend: &Backend, call_timeout: Duration) -> Result<Store> {
    match backend {
        Backend::Kube { kubeconfig, context, namespace } => {
            let (client, namespace) =
                connect(kubeconfig.clone(), context.clone(), namespace.clone(), call_timeout, Caller::Cli).await?;
            Ok(Store::Kube(KubeStore::new(client, namespace, call_timeout)))
        }
        Backend::File { lock_dir, namespace } => {
            Ok(Store::File(FileStore::open(lock_dir.clone(), namespace.clone())?.with_call_timeout(call_timeout)))
        }
    }
}

/// The store `--backend` names, for commands that only read (`status`, `observe`): a lock directory is
/// neither created nor required to be writable.
#[cfg(feature = "cli")]
pub async fn open_store_for_reading(backend: &Backend, call_timeout: Duration) -> Result<Store> {
    match backend {
        Backend::File { lock_dir, namespace } => Ok(Store::File(
            FileStore::open_for_reading(lock_dir.clone(), namespace.clone())?.with_call_timeout(call_timeout),
        )),
        kube => open_store(kube, call_timeout).await,
    }
}

/// Who asks for a client: the hints in its errors name that caller's options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The CLI: `--kubeconfig`, `--backend file`.
    Cli,
    /// A program using `mpsync::KubeClientBuilder`.
    Library,
}

impl Caller {
    /// What to do about a kubeconfig that was named and cannot be read.
    fn unreadable_kubeconfig(self) -> &'static str {
        match self {
            Caller::Cli => "pass --kubeconfig with a readable kubeconfig file",
            Caller::Library => "name a readable kubeconfig file (KubeClientBuilder::kubeconfig)",
        }
    }

    /// What to do when no configuration is found at all.
    fn no_configuration(self) -> &'static str {
        match self {
            Caller::Cli => "pass --kubeconfig PATH, or use --backend file to lock on this machine only",
            Caller::Library => {
                "name a kubeconfig (KubeClientBuilder::kubeconfig), or lock on this machine only (Lock::file)"
            }
        }
    }
}

/// Build a client (and find the namespace) from `--kubeconfig`/`--context`, or the standard resolution ($KUBECONFIG,
/// ~/.kube/config, in-cluster). Never falls back to the file backend. `call_timeout` bounds opening a
/// connection (proxy handshake included), with a tenth (at most a second) to spare.
pub async fn connect(
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
    namespace: Option<String>,
    call_timeout: Duration,
    caller: Caller,
) -> Result<(Client, String)> {
    let Loaded { mut config, cluster, ca, user, context_namespace } = load(kubeconfig, context, caller).await?;
    // As client-go has it: the context's namespace; else, where a pod's service account is there to use,
    // the pod's namespace (even under a kubeconfig that names none); else `default`.
    let (default_namespace, origin) = match context_namespace {
        Some(namespace) => (namespace, "the kubeconfig context"),
        None if in_a_pod() => pod_namespace(),
        None => (config.default_namespace.clone(), "the configuration"),
    };
    if namespace.is_none() {
        crate::validate::namespace(&default_namespace)
            .map_err(|err| Error::Config(format!("the namespace from {origin}: {err}")))?;
    }
    config.default_namespace = default_namespace;
    let namespace = namespace.unwrap_or_else(|| config.default_namespace.clone());
    let trust = tls::settle(&mut config, ca)?;
    let proxy_url = cluster.as_ref().and_then(|cluster| cluster.proxy_url.as_deref());
    let proxy = proxy::select(&config.cluster_url, proxy_url, &ProxyEnv::from_process()).map_err(Error::Config)?;
    if let Some(proxy) = &proxy {
        tracing::debug!(%proxy, server = %shown_server(&config.cluster_url), "connecting through a proxy");
    }

    // rustls picks its crypto provider from its features, and cannot when a program's dependencies
    // enable two (kube's `aws-lc-rs` besides mpsync's `ring`, or rustls's defaults): then it wants one
    // installed for the process, as kube's own client does when none is.
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    // kube's TLS configuration, with the user's client certificate loaded by mpsync (`identity`), and
    // the connector kube would build around it (`ConfigExt::rustls_https_connector_with_connector`).
    // On a thread of its own where it reads files (see `off_the_runtime`).
    let names_files = |auth: &kube::config::AuthInfo| {
        [&auth.client_certificate, &auth.client_key].iter().any(|file| file.as_ref().is_some_and(|f| !f.is_empty()))
    };
    let mut identity = if !names_files(&config.auth_info) {
        identity::take(&mut config.auth_info, user.as_deref())?
    } else {
        let (mut auth, user) = (std::mem::take(&mut config.auth_info), user.clone());
        let (auth, identity) = off_the_runtime(move || {
            let identity = identity::take(&mut auth, user.as_deref());
            (auth, identity)
        })
        .await
        .ok_or_else(|| Error::Internal("the read of the client certificate and key failed".into()))?;
        config.auth_info = auth;
        identity?
    };
    // The exec credential plugin, run by mpsync (see `exec`): once now, killed if this is given up on.
    let mut token = None;
    let mut valid_until = None;
    if let Some(plugin) = exec::Plugin::take(&mut config, user.as_deref()) {
        match plugin.run(true).await? {
            exec::Credential::Token(first) => token = Some(exec::TokenSource::new(plugin, first)),
            exec::Credential::Certificate { cert, key, expires } => {
                let fail = |why: String| {
                    Error::Config(format!(
                        "cannot use the client certificate and key that {} returned: {why}
clientCertificateData \
                         and clientKeyData must be a PEM certificate and its own unencrypted private key",
                        plugin.who()
                    ))
                };
                identity = Some(identity::from_pem(&cert, &key, fail)?);
                valid_until = expires;
            }
        }
    }
    // A token file, read as client-go reads it (trimmed; again after a 401): see `token_file`.
    let file_token = token_file::FileToken::take_off_the_runtime(&mut config, call_timeout).await.map_err(|why| {
        Error::Config(format!(
            "cannot use the token file of {}: {why}",
            user.as_deref().unwrap_or("the configuration's user")
        ))
    })?;
    check_static_tokens(&config.auth_info, user.as_deref())?;
    let mut tls_config =
        config.rustls_client_config().map_err(|err| tls::setup_error(&trust, &config.cluster_url, &err))?;
    if let Some(identity) = identity {
        tls_config.client_auth_cert_resolver = Arc::new(identity);
    }
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls_config).https_or_http();
    // Empty is none, as kubectl has it.
    let builder = match config.tls_server_name.as_ref().filter(|name| !name.is_empty()) {
        Some(name) => {
            let name = rustls::pki_types::ServerName::try_from(name.clone()).map_err(|err| {
                Error::Config(format!("cannot use tls-server-name {name:?}: {err} (a DNS name or an IP address)"))
            })?;
            builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    // Opening a connection is bounded a little within the call that waits for it: at equal bounds the call's
    // own "timed out" came first as often as not, and the error no longer said what did not answer (found by
    // review, rv267: `status` through a proxy that never answered did not name the proxy, one run in three).
    let connect_within = call_timeout.saturating_sub((call_timeout / 10).min(Duration::from_secs(1)));
    let https = connector::Bounded::new(
        builder.enable_http1().wrap_connector(Connector::new(proxy.clone(), connect_within)),
        connect_within,
        proxy.as_ref(),
    );
    // Watches get a pool of their own, so that a waiter's acquisition on a watch event finds an idle
    // connection (see `pools`); idle connections are closed as they expire, not kept until the next
    // request looks.
    let pooled = |idle: Duration| -> hyper_util::client::legacy::Client<_, Body> {
        hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(idle)
            .build(https.clone())
    };
    let http = WatchesApart::new(pooled(pools::REQUEST_IDLE), pooled(pools::WATCH_IDLE));
    let unusable = |err: kube::Error| Error::Config(format!("cannot build a Kubernetes client: {}", one_line(&err)));
    // kube's own stack minus its retry layer: mpsync retries by its own rules (the renew deadline
    // counts every attempt), and kube's retries would hide failed attempts from it.
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer().map_err(unusable)?)
        .layer(config.extra_headers_layer().map_err(unusable)?)
        .map_err(BoxError::from)
        .option_layer(token)
        .map_err(BoxError::from)
        .option_layer(file_token)
        .map_err(BoxError::from)
        .layer_fn(answers::MarkForeignErrors)
        .service(http);
    let client = ClientBuilder::new(service, config.default_namespace.clone()).with_valid_until(valid_until).build();
    Ok((client, namespace))
}

/// The bearer tokens the kubeconfig's user writes out (`token`, an auth provider's `id-token` or
/// `access-token`) must fit in an HTTP header: kube's auth layer panics on one that does not (found by
/// review, helper-164: `token: |` above the token keeps its line break, and mpsync exited 101). kubectl
/// refuses them too; here, before kube sees them, as a configuration error.
fn check_static_tokens(auth: &kube::config::AuthInfo, user: Option<&str>) -> Result<()> {
    use secrecy::ExposeSecret;
    let tokens: Vec<(&str, &str)> = match &auth.auth_provider {
        Some(provider) => ["id-token", "access-token"]
            .into_iter()
            .filter_map(|key| provider.config.get(key).map(|token| (key, token.as_str())))
            .collect(),
        // A password comes before a token, and makes no bearer header.
        None if auth.username.is_some() && auth.password.is_some() => Vec::new(),
        None => auth.token.iter().map(|token| ("token", token.expose_secret())).collect(),
    };
    match tokens.into_iter().find(|(_, token)| http::HeaderValue::from_str(&format!("Bearer {token}")).is_err()) {
        Some((key, _)) => Err(Error::Config(format!(
            "cannot use the {key} of {}: it holds a line break or another character an HTTP header cannot \
             carry\n(`{key}: |` keeps the end of the token's line: write the token on the {key} line itself)",
            user.unwrap_or("the configuration's user")
        ))),
        None => Ok(()),
    }
}

/// A configuration as kube reads it, with what mpsync needs besides.
struct Loaded {
    config: kube::Config,
    /// The kubeconfig's cluster (None in a pod): its `proxy-url`, which kube's `Config` mixes with
    /// `HTTPS_PROXY`.
    cluster: Option<Cluster>,
    /// Where the CA in `config.root_cert` comes from, in words, if it carries one.
    ca: Option<String>,
    /// The kubeconfig's user, in words (None in a pod): what a bad client certificate or key is named by.
    user: Option<String>,
    /// The namespace the kubeconfig's context names, if it names one (None in a pod).
    context_namespace: Option<String>,
}

async fn load(kubeconfig: Option<PathBuf>, context: Option<String>, caller: Caller) -> Result<Loaded> {
    let mut loaded = resolve(kubeconfig, context, caller).await?;
    // kube's debugging override of the server (KUBE_RS_DEBUG_OVERRIDE_URL), whatever chose the
    // configuration. Pointing at this machine, it is a local `kubectl proxy`: the cluster's proxy-url
    // is not the way to it. Any other server keeps it.
    let server = loaded.config.cluster_url.clone();
    loaded.config.apply_debug_overrides();
    if loaded.config.cluster_url != server
        && loaded.config.cluster_url.host().is_some_and(proxy::is_loopback_host)
        && let Some(cluster) = loaded.cluster.as_mut()
    {
        cluster.proxy_url = None;
    }
    loaded.config.cluster_url = usable_server(&loaded.config)?;
    Ok(loaded)
}

/// `server` as messages and logs show it: without the password (the user information) its URL may carry
/// (`https://user:password@host`; found by review).
pub(crate) fn shown_server(server: &http::Uri) -> String {
    let text = server.to_string();
    match server.authority().and_then(|authority| authority.as_str().rsplit_once('@')) {
        Some((user, _)) => text.replacen(&format!("{user}@"), "", 1),
        None => text,
    }
}

/// The server URL to use, as client-go settles it (`DefaultServerURL`): a `host:port` without a scheme
/// gets `https://` when the configuration has anything of TLS (a CA, a client certificate,
/// `insecure-skip-tls-verify`), else `http://`. What can never be reached (another scheme, no host)
/// is a configuration error now, not a failure retried for ever (found by review: a server without a
/// scheme made kube panic at the first request).
fn usable_server(config: &kube::Config) -> Result<http::Uri> {
    let url = &config.cluster_url;
    let unusable = |why: &str| {
        Error::Config(format!(
            "cannot use the API server URL {:?}: {why}; it must be https://HOST[:PORT] (or http://)",
            shown_server(url)
        ))
    };
    if url.authority().is_some_and(proxy::port_out_of_range) {
        return Err(unusable("its port is not a port (1 to 65535)"));
    }
    if url.scheme().is_none() && url.authority().is_some() {
        let auth = &config.auth_info;
        let tls = config.root_cert.is_some()
            || config.accept_invalid_certs
            || auth.client_certificate.is_some()
            || auth.client_certificate_data.is_some();
        let scheme = if tls { "https" } else { "http" };
        let with_scheme = format!("{scheme}://{url}");
        return with_scheme.parse().map_err(|_| unusable("not a URL"));
    }
    match url.scheme_str() {
        Some("https" | "http") if url.host().is_some_and(|host| !host.is_empty()) => Ok(url.clone()),
        Some("https" | "http") | None => Err(unusable("it names no host")),
        Some(other) => Err(unusable(&format!("the scheme {other} is not http or https"))),
    }
}

/// The configuration `--kubeconfig`/`--context` or the standard resolution choose, before kube's
/// debugging overrides.
async fn resolve(kubeconfig: Option<PathBuf>, context: Option<String>, caller: Caller) -> Result<Loaded> {
    // An empty context is the current one, as for kubectl (`MPSYNC_CONTEXT=`).
    let context = context.filter(|context| !context.is_empty());
    let options = KubeConfigOptions { context: context.clone(), cluster: None, user: None };
    if let Some(path) = kubeconfig {
        let file = kubeconfig_off_the_runtime({
            let path = path.clone();
            move || read_kubeconfig_file(&path)
        })
        .await
        .map_err(|err| {
            Error::Config(format!(
                "cannot use kubeconfig {}: {}\n{}",
                path.display(),
                one_line(&err),
                caller.unreadable_kubeconfig()
            ))
        })?;
        return from_kubeconfig(file, &options, &format!("kubeconfig {}", path.display())).await;
    }
    // Only an empty $KUBECONFIG is unset (then ~/.kube/config). One of only separators names no file:
    // as for kubectl, no kubeconfig at all, and ~/.kube/config is not read.
    let env = std::env::var_os("KUBECONFIG").filter(|paths| !paths.is_empty());
    let env_paths: Option<Vec<PathBuf>> =
        env.as_ref().map(|paths| std::env::split_paths(paths).filter(|path| !path.as_os_str().is_empty()).collect());
    let origin = match &env {
        Some(paths) => format!("$KUBECONFIG ({})", PathBuf::from(paths).display()),
        None => "~/.kube/config".to_string(),
    };
    // A kubeconfig that is there but cannot be read or parsed: named with the reason, never taken for
    // a missing one.
    let kubeconfig_exists = match &env_paths {
        Some(paths) => !paths.is_empty(),
        None => default_kubeconfig_exists(),
    };
    let unreadable = |err: KubeconfigError| {
        Error::Config(format!("cannot use {origin}: {}\n{}", one_line(&err), caller.unreadable_kubeconfig()))
    };
    let read = match &env_paths {
        Some(paths) if paths.is_empty() => None,
        _ => {
            let paths = env_paths.clone();
            Some(kubeconfig_off_the_runtime(move || read_kubeconfig(paths.as_deref())).await)
        }
    };
    // A kubeconfig is there ($KUBECONFIG names a file that is there, or ~/.kube/config is there), with
    // something in it: it must be usable, in a pod too, as for kubectl. Falling back to the pod's service
    // account would lock on another cluster than the one the file names.
    let there = match &env_paths {
        Some(paths) => paths.iter().any(|path| !is_missing(path)),
        None => default_kubeconfig_exists(),
    };
    let chosen = there
        && !read.as_ref().is_some_and(|read| {
            read.as_ref().is_ok_and(|file| {
                file.clusters.is_empty()
                    && file.contexts.is_empty()
                    && file.auth_infos.is_empty()
                    && file.current_context.is_none()
            })
        });
    let from_file = match read {
        Some(Ok(file)) => Some(Ok(from_kubeconfig(file, &options, &origin).await)),
        Some(Err(err)) => Some(Err(err)),
        None => None,
    };
    match (from_file, context) {
        (Some(Ok(loaded)), Some(_)) => loaded,
        (Some(Err(err)), Some(_)) if kubeconfig_exists => Err(unreadable(err)),
        (Some(Err(err)), Some(context)) => {
            Err(Error::Config(format!("cannot use context {context:?}: no kubeconfig: {}", one_line(&err))))
        }
        (None, Some(context)) => {
            Err(Error::Config(format!("cannot use context {context:?}: no kubeconfig: {origin} names no file")))
        }
        (Some(Ok(Ok(loaded))), None) => Ok(loaded),
        (Some(Ok(Err(err))), None) if chosen => Err(err),
        (Some(Err(err)), None) if chosen => Err(unreadable(err)),
        // No kubeconfig (or an empty one), so the pod's service account, if any.
        (from_file, None) => match in_cluster() {
            Ok(config) => {
                let ca = Some(format!("the service account's CA {}", tls::IN_CLUSTER_CA));
                Ok(Loaded { config, cluster: None, ca, user: None, context_namespace: None })
            }
            Err(err) if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
                let account = format!("the pod's service account: {err}");
                Err(Error::Config(match from_file {
                    // Both were tried: both reasons.
                    Some(Ok(Err(Error::Config(why)))) => {
                        format!("{}, nor {account}", why.lines().next().unwrap_or(""))
                    }
                    Some(Err(why)) if kubeconfig_exists => {
                        format!("cannot use {origin}: {}, nor {account}", one_line(&why))
                    }
                    _ => format!(
                        "cannot use {account}\nits files are mounted under {SERVICE_ACCOUNT}/ unless \
                         automountServiceAccountToken is false"
                    ),
                }))
            }
            Err(_) => match from_file {
                // A kubeconfig that exists but is unusable: say why.
                Some(Ok(Err(err))) => Err(err),
                Some(Err(err)) if kubeconfig_exists => Err(unreadable(err)),
                _ => {
                    let kubeconfig = match &env_paths {
                        Some(paths) if paths.is_empty() => format!("{origin} names no file"),
                        Some(_) => format!("{origin} is unusable"),
                        None => "no ~/.kube/config".to_string(),
                    };
                    Err(Error::Config(format!(
                        "no Kubernetes configuration found: {kubeconfig}, and not running in a pod\n{}",
                        caller.no_configuration()
                    )))
                }
            },
        },
    }
}

/// The files `$KUBECONFIG` names, merged (else `~/.kube/config`), as kube's `Kubeconfig::read` merges
/// them, except that an empty `current-context` counts as unset, as client-go counts it: a file that
/// says `current-context: ""` does not hide the current context of a file after it.
fn read_kubeconfig(env_paths: Option<&[PathBuf]>) -> std::result::Result<Kubeconfig, KubeconfigError> {
    match env_paths {
        Some(paths) => {
            paths.iter().try_fold(Kubeconfig::default(), |merged, path| merged.merge(read_kubeconfig_file(path)?))
        }
        None => read_kubeconfig_file(&std::env::home_dir().ok_or(KubeconfigError::FindPath)?.join(".kube/config")),
    }
}

/// `read` (a kubeconfig, a file it names) on a thread of its own: a FIFO whose writer says nothing yet
/// (`--kubeconfig <(vault ...)` waiting for a login), or a file on a hung mount, blocks that thread only, and a
/// stop signal or `--timeout` still ends the set-up (found by review, rv258: read on the runtime's own thread,
/// it held every subcommand past SIGTERM and `--timeout`). Not on the runtime's blocking pool: a read given up
/// on there held up the drop of a library caller's runtime (a `#[tokio::main]` returning after a
/// `tokio::time::timeout` around `KubeClientBuilder::build`) until the file came (found by review, rv260).
/// Where no thread can be started (`ulimit -u`), read here, as before (found by review, rv262: a readable
/// kubeconfig was said to be unreadable). `None` if the read panicked.
pub(crate) async fn off_the_runtime<T: Send + 'static>(read: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (done, answer) = tokio::sync::oneshot::channel();
    let read = Arc::new(std::sync::Mutex::new(Some(read)));
    let on_the_thread = Arc::clone(&read);
    let started = std::thread::Builder::new().name("mpsync-read".into()).spawn(move || {
        let read = on_the_thread.lock().ok().and_then(|mut read| read.take());
        if let Some(read) = read {
            let _ = done.send(read());
        }
    });
    if started.is_err() {
        return read.lock().ok().and_then(|mut read| read.take()).map(|read| read());
    }
    answer.await.ok()
}

/// The most a configuration file (a kubeconfig, a CA bundle, a client certificate or key, a token file) is
/// read of: a few kilobytes is usual. More is refused, not read for ever (`--kubeconfig /dev/zero`).
const CONFIG_FILE_CAP: u64 = 16 << 20;

/// Read the configuration file `path` whole, up to [`CONFIG_FILE_CAP`].
pub(crate) fn read_config_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(std::fs::File::open(path)?, CONFIG_FILE_CAP + 1), &mut bytes)?;
    if bytes.len() as u64 > CONFIG_FILE_CAP {
        let why = format!("more than {} MiB: not a configuration file", CONFIG_FILE_CAP >> 20);
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
    }
    Ok(bytes)
}

/// A kubeconfig read by [`off_the_runtime`].
async fn kubeconfig_off_the_runtime(
    read: impl FnOnce() -> std::result::Result<Kubeconfig, KubeconfigError> + Send + 'static,
) -> std::result::Result<Kubeconfig, KubeconfigError> {
    off_the_runtime(read)
        .await
        .unwrap_or_else(|| Err(KubeconfigError::ReadConfig(std::io::Error::other("its read failed"), PathBuf::new())))
}

/// One kubeconfig file, as kube reads it, its empty `current-context` counted as unset.
fn read_kubeconfig_file(path: &Path) -> std::result::Result<Kubeconfig, KubeconfigError> {
    // kube decodes a file that starts with a UTF-16 byte-order mark two bytes at a time, and panics at an
    // odd last byte (found by review, helper-165: a truncated UTF-16 kubeconfig made mpsync exit 101).
    // A regular file is looked at first; what can be read once only (a pipe, `--kubeconfig <(vault ...)`,
    // a FIFO: helper-173) is read here, whole, and parsed as kube would.
    let odd_utf16 = |path: &Path| {
        let why = "UTF-16 (it starts with a byte-order mark) of an odd number of bytes: cut short?";
        KubeconfigError::ReadConfig(std::io::Error::new(std::io::ErrorKind::InvalidData, why), path.into())
    };
    let is_utf16 = |head: &[u8]| matches!(head, [0xFF, 0xFE, ..] | [0xFE, 0xFF, ..]);
    let mut file = match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() && !meta.is_dir() => {
            let bytes = read_config_file(path).map_err(|err| KubeconfigError::ReadConfig(err, path.into()))?;
            if is_utf16(&bytes) && bytes.len() % 2 == 1 {
                return Err(odd_utf16(path));
            }
            Kubeconfig::from_yaml(
                &decode_kubeconfig(&bytes).map_err(|err| KubeconfigError::ReadConfig(err, path.into()))?,
            )?
        }
        // A regular file is read whole by kube: one past the cap is refused first (found by review, rv282).
        Ok(meta) if meta.is_file() && meta.len() > CONFIG_FILE_CAP => {
            let why = format!("more than {} MiB: not a configuration file", CONFIG_FILE_CAP >> 20);
            return Err(KubeconfigError::ReadConfig(
                std::io::Error::new(std::io::ErrorKind::InvalidData, why),
                path.into(),
            ));
        }
        _ => {
            if let Ok(mut file) = std::fs::File::open(path)
                && file.metadata().is_ok_and(|meta| meta.is_file() && meta.len() % 2 == 1)
            {
                let mut mark = [0u8; 2];
                if std::io::Read::read_exact(&mut file, &mut mark).is_ok() && is_utf16(&mark) {
                    return Err(odd_utf16(path));
                }
            }
            Kubeconfig::read_from(path)?
        }
    };
    file.current_context = file.current_context.filter(|context| !context.is_empty());
    unset_empty(&mut file, path);
    Ok(file)
}

/// An empty `certificate-authority-data`, `certificate-authority` or `tokenFile` is none, as client-go has
/// them (`len(...) > 0`), as mpsync has an empty `token` or `client-key` (found by review, helper-179: a
/// templated `certificate-authority-data: ""` beside a CA file was an error, exit 125). kube has made an
/// empty path the kubeconfig's directory by then (`dir.join("")`, with its trailing slash).
fn unset_empty(file: &mut Kubeconfig, path: &Path) {
    let emptied = path.parent().and_then(|dir| dir.join("").to_str().map(str::to_owned));
    let empty_path = |value: &Option<String>| {
        value.as_ref().is_some_and(|value| value.is_empty() || Some(value) == emptied.as_ref())
    };
    for cluster in file.clusters.iter_mut().filter_map(|named| named.cluster.as_mut()) {
        if cluster.certificate_authority_data.as_ref().is_some_and(|data| data.trim().is_empty()) {
            cluster.certificate_authority_data = None;
        }
        if empty_path(&cluster.certificate_authority) {
            cluster.certificate_authority = None;
        }
    }
    for auth in file.auth_infos.iter_mut().filter_map(|named| named.auth_info.as_mut()) {
        if empty_path(&auth.token_file) {
            auth.token_file = None;
        }
    }
}

/// A kubeconfig's text, decoded as kube decodes a file: UTF-16 after its byte-order mark (of an even
/// length, checked by the caller), UTF-8 with or without one.
fn decode_kubeconfig(bytes: &[u8]) -> std::io::Result<String> {
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("invalid {what}"));
    let utf16 = |rest: &[u8], from: fn([u8; 2]) -> u16| {
        let units: Vec<u16> = rest.chunks_exact(2).map(|pair| from([pair[0], pair[1]])).collect();
        String::from_utf16(&units).map_err(|_| invalid("UTF-16"))
    };
    match bytes {
        [0xFF, 0xFE, rest @ ..] => utf16(rest, u16::from_le_bytes),
        [0xFE, 0xFF, rest @ ..] => utf16(rest, u16::from_be_bytes),
        [0xEF, 0xBB, 0xBF, rest @ ..] => String::from_utf8(rest.to_vec()).map_err(|_| invalid("UTF-8")),
        _ => String::from_utf8(bytes.to_vec()).map_err(|_| invalid("UTF-8")),
    }
}

/// Where a pod's service-account files are mounted.
const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Whether the pod's service account is there to use, as client-go's in-cluster config judges it:
/// `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT` set, and the token a file.
fn in_a_pod() -> bool {
    let set = |name: &str| std::env::var_os(name).is_some_and(|value| !value.is_empty());
    set("KUBERNETES_SERVICE_HOST")
        && set("KUBERNETES_SERVICE_PORT")
        && std::fs::metadata(format!("{SERVICE_ACCOUNT}/token")).is_ok_and(|token| !token.is_dir())
}

/// The pod's namespace, as client-go reads it: `POD_NAMESPACE`, else the service account's
/// `namespace` file (trimmed), else `default`; with where it came from, in words.
fn pod_namespace() -> (String, &'static str) {
    if let Some(namespace) = std::env::var("POD_NAMESPACE").ok().filter(|namespace| !namespace.is_empty()) {
        return (namespace, "POD_NAMESPACE");
    }
    std::fs::read_to_string(format!("{SERVICE_ACCOUNT}/namespace"))
        .ok()
        .map(|namespace| namespace.trim().to_string())
        .filter(|namespace| !namespace.is_empty())
        .map(|namespace| (namespace, "the service account's namespace file"))
        .unwrap_or_else(|| ("default".to_string(), "the default"))
}

/// The pod's service account, as kube's `Config::incluster`, with its token file checked now (kube
/// reads it only at the first request) and its namespace trimmed (as client-go trims it); Err says
/// why not, on one line.
fn in_cluster() -> std::result::Result<kube::Config, String> {
    let mut config = match kube::Config::incluster() {
        Ok(config) => config,
        // client-go needs no namespace file (the namespace is then POD_NAMESPACE, or `default`): a
        // service account volume of one's own may hold only the token and the CA.
        Err(kube::config::InClusterError::ReadDefaultNamespace(_)) => in_cluster_without_namespace_file()?,
        Err(err) => return Err(one_line(&err)),
    };
    let token = format!("{SERVICE_ACCOUNT}/token");
    std::fs::File::open(&token).map_err(|err| format!("cannot read {token}: {err}"))?;
    config.default_namespace = config.default_namespace.trim().to_string();
    Ok(config)
}

/// What `kube::Config::incluster` builds, for a service account without a namespace file (kube needs
/// one): the API server from `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`, the CA, the token.
fn in_cluster_without_namespace_file() -> std::result::Result<kube::Config, String> {
    let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let (host, port) = (var("KUBERNETES_SERVICE_HOST")?, var("KUBERNETES_SERVICE_PORT")?);
    // As kube builds it: an IP address with its port (an IPv6 one in brackets), else the host as given.
    let authority = match (host.parse::<std::net::IpAddr>(), port.parse::<u16>()) {
        (Ok(ip), Ok(port)) => std::net::SocketAddr::new(ip, port).to_string(),
        _ => format!("{host}:{port}"),
    };
    let server = format!("https://{authority}");
    let mut config = kube::Config::new(
        server.parse().map_err(|err| format!("KUBERNETES_SERVICE_HOST and _PORT make no URL ({server}): {err}"))?,
    );
    let pem = std::fs::read(tls::IN_CLUSTER_CA).map_err(|err| format!("cannot read {}: {err}", tls::IN_CLUSTER_CA))?;
    config.root_cert = Some(tls::pem_certificates(&pem, tls::IN_CLUSTER_CA)?);
    config.root_cert_file = Some(PathBuf::from(tls::IN_CLUSTER_CA));
    config.auth_info.token_file = Some(format!("{SERVICE_ACCOUNT}/token"));
    Ok(config)
}

/// Whether `path` is missing, as client-go counts it when it skips a file `$KUBECONFIG` names: only
/// when it is not found (a dangling symbolic link too). A file there but not readable (permissions,
/// a loop of links, a file where a directory should be) is not missing: it is an error to name.
fn is_missing(path: &Path) -> bool {
    std::fs::metadata(path).is_err_and(|err| err.kind() == std::io::ErrorKind::NotFound)
}

/// Whether `~/.kube/config` is there (the home directory found as kube finds it), even if unreadable.
fn default_kubeconfig_exists() -> bool {
    std::env::home_dir().is_some_and(|home| !is_missing(&home.join(".kube").join("config")))
}

/// Whether kube would parse a proxy for `cluster`: its proxy-url, else HTTPS_PROXY or https_proxy, the
/// first that is not empty (kube's test: untrimmed).
fn kube_would_parse_a_proxy(cluster: &Cluster) -> bool {
    cluster.proxy_url.as_deref().is_some_and(|url| !url.is_empty())
        || ["HTTPS_PROXY", "https_proxy"]
            .into_iter()
            .any(|name| std::env::var(name).is_ok_and(|value| !value.is_empty()))
}

/// What kube is given to parse as the cluster's proxy-url (see `from_kubeconfig`); never used.
const KUBE_PROXY_PLACEHOLDER: &str = "http://proxy.mpsync.invalid";

/// A kube configuration from a kubeconfig file's chosen context, its cluster's CA checked first.
async fn from_kubeconfig(mut file: Kubeconfig, options: &KubeConfigOptions, origin: &str) -> Result<Loaded> {
    if let Some(context) = &options.context
        && !file.contexts.iter().any(|named| &named.name == context)
    {
        // Quoted, so that a name cannot break the message into lines; ten at most.
        let mut names: Vec<String> = file.contexts.iter().take(10).map(|named| format!("{:?}", named.name)).collect();
        if file.contexts.len() > 10 {
            names.push(format!("and {} more", file.contexts.len() - 10));
        }
        return Err(Error::Config(format!(
            "no context {context:?} in {origin} (its contexts: {})",
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        )));
    }
    if options.context.is_none() && file.current_context.is_none() {
        return Err(Error::Config(format!(
            "cannot use {origin}: it sets no current-context, and no context was chosen"
        )));
    }
    let chosen_context = options
        .context
        .as_ref()
        .or(file.current_context.as_ref())
        .and_then(|context| file.contexts.iter().find(|named| &named.name == context))
        .and_then(|named| named.context.as_ref());
    let cluster_name = chosen_context.map(|context| context.cluster.clone());
    let user =
        chosen_context.and_then(|context| context.user.as_ref()).map(|name| format!("user {name:?} in {origin}"));
    let context_namespace = chosen_context.and_then(|context| context.namespace.clone()).filter(|ns| !ns.is_empty());
    let mut cluster = None;
    let mut ca = None;
    if let Some(name) = &cluster_name
        && let Some(entry) = file.clusters.iter_mut().find(|named| &named.name == name)
        && let Some(found) = entry.cluster.as_mut()
    {
        // A CA file is read on a thread of its own (see `off_the_runtime`; found by review, rv259), and
        // carried as data from then on: kube would read it again, on the runtime's own thread.
        let ca_file = match (&found.certificate_authority_data, &found.certificate_authority) {
            (None, Some(path)) if found.insecure_skip_tls_verify != Some(true) => {
                let path = PathBuf::from(path);
                Some(
                    off_the_runtime(move || read_config_file(&path))
                        .await
                        .unwrap_or_else(|| Err(std::io::Error::other("its read failed"))),
                )
            }
            _ => None,
        };
        tls::check_kubeconfig_ca_read(found, name, origin, ca_file.as_ref())?;
        ca = match (&found.certificate_authority_data, &found.certificate_authority) {
            (Some(_), _) => Some(format!("the certificate-authority-data of cluster {name:?} in {origin}")),
            (None, Some(path)) => Some(format!("certificate-authority {path} (cluster {name:?} in {origin})")),
            (None, None) => None,
        };
        if let Some(Ok(pem)) = ca_file {
            found.certificate_authority_data =
                Some(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, pem));
        }
        cluster = Some(found.clone());
        // kube parses this proxy-url, else HTTPS_PROXY, itself, and refuses a value it cannot parse, even
        // where kubectl would use no proxy (a server on loopback, or in NO_PROXY) and with messages that do
        // not name it. mpsync chooses the proxy by kubectl's rules from `cluster` and the environment
        // (`proxy::select`), with its own messages, so kube is given a placeholder to parse instead, which
        // is taken out again below. (Only where kube would parse one: with kube's `http-proxy` feature
        // enabled by a program, kube then parses NO_PROXY too.)
        if kube_would_parse_a_proxy(found) {
            found.proxy_url = Some(KUBE_PROXY_PLACEHOLDER.to_string());
        }
    }
    let mut config = kube::Config::from_custom_kubeconfig(file, options)
        .await
        .map_err(|err| Error::Config(format!("cannot use {origin}: {}", one_line(&err))))?;
    // mpsync's connector picks the proxy; an exec plugin is told the cluster's own proxy-url.
    config.proxy_url = None;
    if let Some(exec_cluster) = config.auth_info.exec.as_mut().and_then(|exec| exec.cluster.as_mut()) {
        exec_cluster.proxy_url = cluster.as_ref().and_then(|cluster| cluster.proxy_url.clone());
    }
    Ok(Loaded { config, cluster, ca, user, context_namespace })
}
