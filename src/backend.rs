//! Where the CLI's leases live: the store chosen by `--backend`, and the Kubernetes client it builds from
//! `--kubeconfig`/`--context` or the standard resolution ($KUBECONFIG, ~/.kube/config, in-cluster).
//! Library users bring their own `kube::Client` or lock directory instead.

use std::path::PathBuf;
use std::time::Duration;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::cli::Backend;
use crate::error::{Error, Result};
use crate::store::Store;
use crate::store::file::FileStore;
use crate::store::kube::{KubeStore, one_line};

/// A single-threaded runtime. Single-threaded on purpose: the child is forked from the main thread, so
/// its parent-death signal (which fires when the forking *thread* exits) cannot fire early.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| Error::Internal(format!("cannot start the runtime: {err}")))
}

/// Run `future` to its end on a fresh `runtime()`, then leave without waiting for blocking work still
/// under way (a file-system call stuck on a dead mount, say): mpsync has given up on it already, and it
/// must never hold up the exit.
pub fn block_on<T>(future: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    let runtime = runtime()?;
    let output = runtime.block_on(future);
    runtime.shutdown_background();
    output
}

/// The store `--backend` names; every call bounded by `call_timeout`.
pub async fn open_store(backend: &Backend, call_timeout: Duration) -> Result<Store> {
    match backend {
        Backend::Kube { kubeconfig, context, namespace } => {
            let (client, namespace) =
                connect(kubeconfig.clone(), context.clone(), namespace.clone(), call_timeout).await?;
            Ok(Store::Kube(KubeStore::new(client, namespace, call_timeout)))
        }
        Backend::File { lock_dir, namespace } => {
            Ok(Store::File(FileStore::open(lock_dir.clone(), namespace.clone())?.with_call_timeout(call_timeout)))
        }
    }
}

/// Build a client (and find the namespace) from `--kubeconfig`/`--context`, or the standard resolution ($KUBECONFIG,
/// ~/.kube/config, in-cluster). Never falls back to the file backend.
pub async fn connect(
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
    namespace: Option<String>,
    call_timeout: Duration,
) -> Result<(Client, String)> {
    let options = KubeConfigOptions { context: context.clone(), cluster: None, user: None };
    let mut config = match &kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).map_err(|err| {
                Error::Config(format!(
                    "cannot use kubeconfig {}: {}\npass --kubeconfig with a readable kubeconfig file",
                    path.display(),
                    one_line(&err)
                ))
            })?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|err| Error::Config(format!("cannot use kubeconfig {}: {}", path.display(), one_line(&err))))?
        }
        None if context.is_some() => kube::Config::from_kubeconfig(&options).await.map_err(|err| {
            Error::Config(format!(
                "cannot use kubeconfig context {:?}: {}",
                context.unwrap_or_default(),
                one_line(&err)
            ))
        })?,
        None => kube::Config::infer().await.map_err(|err| {
            tracing::debug!(error = %one_line(&err), "cannot infer a Kubernetes configuration");
            let kubeconfig = match std::env::var_os("KUBECONFIG") {
                Some(path) => format!("$KUBECONFIG ({}) is unusable", PathBuf::from(path).display()),
                None => "no ~/.kube/config".to_string(),
            };
            Error::Config(format!(
                "no Kubernetes configuration found: {kubeconfig}, and not running in a pod\n\
                 pass --kubeconfig PATH, or use --backend file to lock on this machine only"
            ))
        })?,
    };
    // mpsync retries by its own rules (the renew deadline counts every attempt); kube's own retry
    // layer would hide failed attempts from it.
    config.default_retry = false;
    config.connect_timeout = Some(call_timeout);
    let namespace = namespace.unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config)
        .map_err(|err| Error::Config(format!("cannot build a Kubernetes client: {}", one_line(&err))))?;
    Ok((client, namespace))
}
