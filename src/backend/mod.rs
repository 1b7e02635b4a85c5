//! The Kubernetes client mpsync builds from `--kubeconfig`/`--context` or the standard resolution
//! ($KUBECONFIG, ~/.kube/config, in-cluster), and (for the CLI) the store chosen by `--backend`. Library
//! users get the same client from `mpsync::kube_client` (the `client` feature), or bring their own.
//!
//! The client is kube's, over a connection stack of mpsync's own: TCP_NODELAY on every socket
//! (`connector`), the proxy kubectl would use (`proxy`), TLS that trusts exactly what the configuration
//! asks for (`tls`), and watches on connections of their own (`pools`).

mod connector;
mod pools;
pub mod proxy;
pub mod tls;

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::Client;
use kube::client::{Body, ClientBuilder, ConfigExt};
use kube::config::{Cluster, KubeConfigOptions, Kubeconfig, KubeconfigError};
use tower::{BoxError, ServiceBuilder};

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
use pools::WatchesApart;
use proxy::ProxyEnv;

/// A single-threaded runtime. Single-threaded on purpose: the child is forked from the main thread, so
/// its parent-death signal (which fires when the forking *thread* exits) cannot fire early.
#[cfg(feature = "cli")]
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| Error::Internal(format!("cannot start the runtime: {err}")))
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
/// connection (proxy handshake included).
pub async fn connect(
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
    namespace: Option<String>,
    call_timeout: Duration,
    caller: Caller,
) -> Result<(Client, String)> {
    let Loaded { mut config, cluster, ca } = load(kubeconfig, context, caller).await?;
    let namespace = namespace.unwrap_or_else(|| config.default_namespace.clone());
    let trust = tls::settle(&mut config, ca)?;
    let proxy_url = cluster.as_ref().and_then(|cluster| cluster.proxy_url.as_deref());
    let proxy = proxy::select(&config.cluster_url, proxy_url, &ProxyEnv::from_process()).map_err(Error::Config)?;
    if let Some(proxy) = &proxy {
        tracing::debug!(%proxy, server = %config.cluster_url, "connecting through a proxy");
    }

    // rustls picks its crypto provider from its features, and cannot when a program's dependencies
    // enable two (kube's `aws-lc-rs` besides mpsync's `ring`, or rustls's defaults): then it wants one
    // installed for the process, as kube's own client does when none is.
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let https = config
        .rustls_https_connector_with_connector(Connector::new(proxy, call_timeout))
        .map_err(|err| tls::setup_error(&trust, &config.cluster_url, &err))?;
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
        .service(http);
    let client = ClientBuilder::new(service, config.default_namespace.clone()).build();
    Ok((client, namespace))
}

/// A configuration as kube reads it, with what mpsync needs besides.
struct Loaded {
    config: kube::Config,
    /// The kubeconfig's cluster (None in a pod): its `proxy-url`, which kube's `Config` mixes with
    /// `HTTPS_PROXY`.
    cluster: Option<Cluster>,
    /// Where the CA in `config.root_cert` comes from, in words, if it carries one.
    ca: Option<String>,
}

async fn load(kubeconfig: Option<PathBuf>, context: Option<String>, caller: Caller) -> Result<Loaded> {
    // An empty context is the current one, as for kubectl (`MPSYNC_CONTEXT=`).
    let context = context.filter(|context| !context.is_empty());
    let options = KubeConfigOptions { context: context.clone(), cluster: None, user: None };
    if let Some(path) = kubeconfig {
        let file = Kubeconfig::read_from(&path).map_err(|err| {
            Error::Config(format!(
                "cannot use kubeconfig {}: {}\n{}",
                path.display(),
                one_line(&err),
                caller.unreadable_kubeconfig()
            ))
        })?;
        return from_kubeconfig(file, &options, &format!("kubeconfig {}", path.display())).await;
    }
    let origin = match kubeconfig_env() {
        Some(paths) => format!("$KUBECONFIG ({})", PathBuf::from(paths).display()),
        None => "~/.kube/config".to_string(),
    };
    // A kubeconfig that is there but cannot be read or parsed: named with the reason, never taken for
    // a missing one.
    let kubeconfig_exists = kubeconfig_env().is_some() || default_kubeconfig_exists();
    let unreadable = |err: KubeconfigError| {
        Error::Config(format!("cannot use {origin}: {}\n{}", one_line(&err), caller.unreadable_kubeconfig()))
    };
    let read = Kubeconfig::read();
    // $KUBECONFIG names a kubeconfig (a file that exists, with something in it): the user's choice, which
    // must be usable, in a pod too, as for kubectl. Falling back to the pod's service account would lock
    // on another cluster than the one named.
    let chosen = kubeconfig_env_names_a_file()
        && !read
            .as_ref()
            .is_ok_and(|file| file.clusters.is_empty() && file.contexts.is_empty() && file.auth_infos.is_empty());
    let from_file = match read {
        Ok(file) => Ok(from_kubeconfig(file, &options, &origin).await),
        Err(err) => Err(err),
    };
    match (from_file, context) {
        (Ok(loaded), Some(_)) => loaded,
        (Err(err), Some(_)) if kubeconfig_exists => Err(unreadable(err)),
        (Err(err), Some(context)) => {
            Err(Error::Config(format!("cannot use context {context:?}: no kubeconfig: {}", one_line(&err))))
        }
        (Ok(Ok(mut loaded)), None) => {
            let server = loaded.config.cluster_url.clone();
            loaded.config.apply_debug_overrides();
            // kube's debugging override (KUBE_RS_DEBUG_OVERRIDE_URL) pointing at this machine is a local
            // `kubectl proxy`: the cluster's proxy-url is not the way to it. Any other server keeps it.
            if loaded.config.cluster_url != server
                && loaded.config.cluster_url.host().is_some_and(proxy::is_loopback_host)
                && let Some(cluster) = loaded.cluster.as_mut()
            {
                cluster.proxy_url = None;
            }
            Ok(loaded)
        }
        (Ok(Err(err)), None) if chosen => Err(err),
        (Err(err), None) if chosen => Err(unreadable(err)),
        // As kube's `Config::infer`: no usable kubeconfig, so the pod's service account, if any (in a
        // pod, a broken ~/.kube/config is passed over, as controller-runtime passes over it).
        (from_file, None) => {
            match kube::Config::incluster() {
                Ok(mut config) => {
                    config.apply_debug_overrides();
                    let ca = Some(format!("the service account's CA {}", tls::IN_CLUSTER_CA));
                    Ok(Loaded { config, cluster: None, ca })
                }
                Err(err) if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
                    let account = format!("the pod's service account: {}", one_line(&err));
                    Err(Error::Config(match from_file {
                        // Both were tried: both reasons.
                        Ok(Err(Error::Config(why))) => format!("{}, nor {account}", why.lines().next().unwrap_or("")),
                        Err(why) if kubeconfig_exists => {
                            format!("cannot use {origin}: {}, nor {account}", one_line(&why))
                        }
                        _ => format!(
                            "cannot use {account}\nits files are mounted under \
                             /var/run/secrets/kubernetes.io/serviceaccount/ unless automountServiceAccountToken is false"
                        ),
                    }))
                }
                Err(_) => match from_file {
                    // A kubeconfig that exists but is unusable: say why.
                    Ok(Err(err)) => Err(err),
                    Err(err) if kubeconfig_exists => Err(unreadable(err)),
                    _ => {
                        let kubeconfig = match kubeconfig_env() {
                            Some(_) => format!("{origin} is unusable"),
                            None => "no ~/.kube/config".to_string(),
                        };
                        Err(Error::Config(format!(
                            "no Kubernetes configuration found: {kubeconfig}, and not running in a pod\n{}",
                            caller.no_configuration()
                        )))
                    }
                },
            }
        }
    }
}

/// Whether `~/.kube/config` exists (the home directory found as kube finds it).
fn default_kubeconfig_exists() -> bool {
    std::env::home_dir().is_some_and(|home| home.join(".kube").join("config").exists())
}

/// Whether a file that `$KUBECONFIG` names exists (then it is the user's choice, and must be usable).
fn kubeconfig_env_names_a_file() -> bool {
    kubeconfig_env().is_some_and(|paths| std::env::split_paths(&paths).any(|path| path.exists()))
}

/// `$KUBECONFIG`, if it names a file: kube, as kubectl, takes an empty one (or only separators) for unset.
fn kubeconfig_env() -> Option<std::ffi::OsString> {
    std::env::var_os("KUBECONFIG").filter(|paths| std::env::split_paths(paths).any(|path| !path.as_os_str().is_empty()))
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
    let cluster_name = options
        .context
        .as_ref()
        .or(file.current_context.as_ref())
        .and_then(|context| file.contexts.iter().find(|named| &named.name == context))
        .and_then(|named| named.context.as_ref())
        .map(|context| context.cluster.clone());
    let mut cluster = None;
    let mut ca = None;
    if let Some(name) = &cluster_name
        && let Some(entry) = file.clusters.iter_mut().find(|named| &named.name == name)
        && let Some(found) = entry.cluster.as_mut()
    {
        tls::check_kubeconfig_ca(found, name, origin)?;
        ca = match (&found.certificate_authority_data, &found.certificate_authority) {
            (Some(_), _) => Some(format!("the certificate-authority-data of cluster {name:?} in {origin}")),
            (None, Some(path)) => Some(format!("certificate-authority {path} (cluster {name:?} in {origin})")),
            (None, None) => None,
        };
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
    Ok(Loaded { config, cluster, ca })
}
