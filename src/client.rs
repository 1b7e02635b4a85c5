//! The `mpsync` CLI's own `kube::Client`, for programs that use the library (the `client` feature).

use std::path::PathBuf;
use std::time::Duration;

use crate::backend::{Caller, connect};
use crate::error::Result;

/// A `kube::Client` found as `kube::Client::try_default()` finds one: from `$KUBECONFIG`, else
/// `~/.kube/config`, else the pod's service account. Two differences, both as kubectl and client-go have
/// it: a kubeconfig that is there (named by `$KUBECONFIG`, or `~/.kube/config`) and cannot be used is an
/// [`Error::Config`](crate::Error::Config), never passed over for the pod's service account (which may be
/// another cluster's); and in a pod, the client's default namespace, where the kubeconfig's context names
/// none, is the pod's (`POD_NAMESPACE`, then the service account's). It is built as the `mpsync` CLI
/// builds its own:
///
/// - **`TCP_NODELAY` on every connection.** kube 5's own client leaves Nagle's algorithm on
///   (kube-rs/kube#2056), so the first request on every new connection waits for the server's delayed
///   ACK, 40 ms on Linux. Go, and so client-go, sets no-delay.
/// - **The proxy kubectl would use**: the kubeconfig's `proxy-url`, else `HTTPS_PROXY` (or `https_proxy`)
///   unless the server is on loopback or `NO_PROXY` covers it; `http://` and `socks5://` proxies.
/// - **Trust in exactly the CA the configuration names** (`certificate-authority` or
///   `certificate-authority-data`); nothing more under `insecure-skip-tls-verify`; the system's roots
///   only when it names none. A CA that cannot be read or parsed is an [`Error::Config`](crate::Error::Config)
///   that names it.
/// - **Watches on connections of their own**, so a waiter's acquisition on the watch event that frees a
///   lease finds an idle connection, with no TLS handshake on the handoff's path. A request connection
///   idle for 30 s is closed.
///
/// Unlike kube's, it does not retry 429 and 5xx answers itself (mpsync's locks retry by their own rules)
/// and has no read timeout of its own (every call of a lock is bounded; bound your own calls). Its
/// default namespace (`client.default_namespace()`) is client-go's: the kubeconfig context's, else in a
/// pod the pod's, else `default`; one that is not a valid name (a bad `POD_NAMESPACE`) is an
/// [`Error::Config`](crate::Error::Config). An exec credential plugin
/// runs once as the client is built, and again when its token expires or is refused (401). A client
/// certificate issued by a plugin is not renewed (nor is it by kube's client): `valid_until()` says when
/// it expires, and a program that runs longer must build a new client.
///
/// TLS is rustls with ring. Building the client installs ring as the process's rustls crypto provider
/// if none is installed, as kube's own client installs aws-lc-rs: rustls cannot pick one by itself when
/// a program's dependencies enable two (aws-lc-rs besides ring, say). A program that installs its own
/// provider must do so before it builds the client.
///
/// ```no_run
/// # async fn example() -> mpsync::Result<()> {
/// let client = mpsync::kube_client().await?;
/// let namespace = client.default_namespace().to_string();
/// let lock = mpsync::Lock::kube(client, &namespace, "db-migration").build()?;
/// # Ok(())
/// # }
/// ```
pub async fn kube_client() -> Result<kube::Client> {
    KubeClientBuilder::new().build().await
}

/// Options for [`kube_client`]: a kubeconfig file of your choice, one of its contexts, a bound on
/// opening a connection.
///
/// ```no_run
/// # async fn example() -> mpsync::Result<()> {
/// let client = mpsync::KubeClientBuilder::new()
///     .kubeconfig("/etc/ci/kubeconfig")
///     .context("staging")
///     .build()
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until .build() is awaited"]
pub struct KubeClientBuilder {
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
    connect_timeout: Duration,
}

impl Default for KubeClientBuilder {
    fn default() -> KubeClientBuilder {
        KubeClientBuilder::new()
    }
}

impl KubeClientBuilder {
    /// The standard resolution, as [`kube_client`]; connections opened within the default call timeout
    /// of a lock ([`Timing::DEFAULT`](crate::Timing::DEFAULT)'s, 5 s).
    pub fn new() -> KubeClientBuilder {
        KubeClientBuilder { kubeconfig: None, context: None, connect_timeout: crate::Timing::DEFAULT.call_timeout() }
    }

    /// Read this kubeconfig file, and only it (`kubectl --kubeconfig`): neither `$KUBECONFIG` nor the
    /// service account is looked at.
    pub fn kubeconfig(mut self, path: impl Into<PathBuf>) -> KubeClientBuilder {
        self.kubeconfig = Some(path.into());
        self
    }

    /// Use this context of the kubeconfig instead of its `current-context` (`kubectl --context`). A
    /// context that does not exist is an error; so is one without a kubeconfig.
    pub fn context(mut self, context: impl Into<String>) -> KubeClientBuilder {
        self.context = Some(context.into());
        self
    }

    /// How long opening one connection may take: the TCP connect, the proxy's handshake if any, and the
    /// TLS handshake (not the request, which the calls' own timeouts bound).
    pub fn connect_timeout(mut self, timeout: Duration) -> KubeClientBuilder {
        self.connect_timeout = timeout;
        self
    }

    /// Read the configuration and build the client. Nothing is sent to the API server yet (the first
    /// request opens the first connection), but an exec credential plugin that the kubeconfig names
    /// runs now, for as long as it takes; dropping the future kills it (with its process group, when it
    /// is not interactive). The files the configuration names (the kubeconfig itself, its CA, a client
    /// certificate and key, a token file) are read on threads of their own: one that does not come (a FIFO
    /// whose writer says nothing yet, a hung mount) holds up neither the runtime nor its drop once the
    /// future is dropped (the thread ends when the read does).
    ///
    /// # Errors
    ///
    /// [`Error::Config`](crate::Error::Config): no configuration found, a kubeconfig that cannot be read
    /// or parsed, a context it does not have, a CA that cannot be read or parsed, a proxy URL that
    /// cannot be used, credentials kube cannot use, or a `connect_timeout` of zero (no connection could
    /// ever open).
    pub async fn build(self) -> Result<kube::Client> {
        if self.connect_timeout.is_zero() {
            return Err(crate::Error::Config("the connect timeout must be more than zero".into()));
        }
        let (client, _namespace) =
            connect(self.kubeconfig, self.context, None, self.connect_timeout, Caller::Library).await?;
        Ok(client)
    }
}
