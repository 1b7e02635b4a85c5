//! The Kubernetes backend: `Api<Lease>` get, create, replace-with-resourceVersion, and a watch on the
//! single object (field selector `metadata.name`). The verbs used are exactly get, list, watch, create
//! and update on leases; `deploy/rbac.yaml` grants those and nothing more.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::{StoreError, Watch, WatchUpdate, jittered};
use crate::error::Error;
use crate::lease::Versioned;

/// How long a watch request asks the server to keep the stream open. The stream is restarted from the
/// last resourceVersion after that; a stream silent for longer than this plus a margin is presumed dead
/// (a partition can leave a TCP stream open and silent forever).
const WATCH_SECONDS: u32 = 30;
const WATCH_IDLE_MARGIN: Duration = Duration::from_secs(15);

pub struct KubeStore {
    api: Api<Lease>,
    namespace: String,
    /// Timeout for one API call. kube has no read timeout by default, so every call is wrapped.
    call_timeout: Duration,
    /// The last full object seen per lease, so a replace can carry its metadata (labels, annotations,
    /// uid) unchanged: mpsync writes the spec and nothing else.
    objects: Mutex<HashMap<String, Lease>>,
}

impl KubeStore {
    /// Build a client from `--kubeconfig`/`--context`, or the standard resolution ($KUBECONFIG,
    /// ~/.kube/config, in-cluster). Never falls back to the file backend.
    pub async fn connect(
        kubeconfig: Option<PathBuf>,
        context: Option<String>,
        namespace: Option<String>,
        call_timeout: Duration,
    ) -> Result<KubeStore, Error> {
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
                kube::Config::from_custom_kubeconfig(file, &options).await.map_err(|err| {
                    Error::Config(format!("cannot use kubeconfig {}: {}", path.display(), one_line(&err)))
                })?
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
        Ok(KubeStore {
            api: Api::namespaced(client, &namespace),
            namespace,
            call_timeout,
            objects: Mutex::new(HashMap::new()),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub async fn get(&self, name: &str) -> Result<Option<Versioned>, StoreError> {
        let result = timeout(self.call_timeout, self.api.get_opt(name)).await;
        match result {
            Err(_) => Err(StoreError::Transient(format!("get lease {name}: timed out after {:?}", self.call_timeout))),
            Ok(Err(err)) => Err(self.classify(err, Verb::Get, name)),
            Ok(Ok(None)) => Ok(None),
            Ok(Ok(Some(lease))) => Ok(Some(self.remember(name, lease))),
        }
    }

    pub async fn create(&self, name: &str, record: &LeaseSpec) -> Result<Versioned, StoreError> {
        let lease = Lease {
            metadata: ObjectMeta { name: Some(name.to_string()), ..ObjectMeta::default() },
            spec: Some(record.clone()),
        };
        self.write(name, Verb::Create, self.api.create(&PostParams::default(), &lease)).await
    }

    pub async fn replace(
        &self,
        name: &str,
        resource_version: &str,
        record: &LeaseSpec,
    ) -> Result<Versioned, StoreError> {
        let base = self.objects.lock().map(|objects| objects.get(name).cloned()).unwrap_or(None);
        let metadata = match base {
            Some(base) if base.metadata.resource_version.as_deref() == Some(resource_version) => base.metadata,
            // We have not seen this version's full object: do not write a guess (it could drop labels
            // or annotations). A conflict makes the caller read again.
            _ => return Err(StoreError::Conflict(format!("lease {name}: version {resource_version} not read yet"))),
        };
        let lease = Lease { metadata: ObjectMeta { managed_fields: None, ..metadata }, spec: Some(record.clone()) };
        self.write(name, Verb::Update, self.api.replace(name, &PostParams::default(), &lease)).await
    }

    async fn write(
        &self,
        name: &str,
        verb: Verb,
        call: impl std::future::Future<Output = kube::Result<Lease>>,
    ) -> Result<Versioned, StoreError> {
        match timeout(self.call_timeout, call).await {
            Err(_) => Err(StoreError::Unknown(format!(
                "{} lease {name}: timed out after {:?}",
                verb.as_str(),
                self.call_timeout
            ))),
            Ok(Err(err)) => Err(self.classify(err, verb, name)),
            Ok(Ok(lease)) => Ok(self.remember(name, lease)),
        }
    }

    fn remember(&self, name: &str, lease: Lease) -> Versioned {
        let versioned = versioned(&lease);
        if let Ok(mut objects) = self.objects.lock() {
            objects.insert(name.to_string(), lease);
        }
        versioned
    }

    /// Turn a kube error into what the run loop acts on, with messages that say what to do.
    fn classify(&self, err: kube::Error, verb: Verb, name: &str) -> StoreError {
        classify(err, verb, name, &self.namespace)
    }

    /// Watch one lease: list (to learn the current record and resourceVersion), then watch from there
    /// with bookmarks; on 410 Gone list again; while the watch cannot be (re)established, the list is
    /// retried every `retry_period`, which is the poll fallback.
    pub fn watch(&self, name: &str, retry_period: Duration) -> Watch {
        let (sender, receiver) = mpsc::channel(16);
        let task = tokio::spawn(watch_loop(
            self.api.clone(),
            name.to_string(),
            self.namespace.clone(),
            retry_period,
            self.call_timeout,
            sender,
        ));
        Watch::new(receiver, task)
    }
}

#[derive(Clone, Copy, Debug)]
enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
        }
    }

    fn is_write(self) -> bool {
        matches!(self, Verb::Create | Verb::Update)
    }
}

fn classify(err: kube::Error, verb: Verb, name: &str, namespace: &str) -> StoreError {
    let what = format!("{} lease {namespace}/{name}", verb.as_str());
    match err {
        kube::Error::Api(status) => {
            let code = status.code;
            let message = status.message.clone();
            match code {
                409 => StoreError::Conflict(message),
                401 => StoreError::Fatal(Error::Api(format!(
                    "{what}: 401 Unauthorized: the API server rejected the credentials\n\
                     check the kubeconfig's user (or the pod's service-account token)"
                ))),
                403 => StoreError::Fatal(Error::Api(format!(
                    "{what}: forbidden: {message}\nmpsync needs get, list, watch, create and update on \
                     leases.coordination.k8s.io in namespace {namespace}: see deploy/rbac.yaml"
                ))),
                404 if status.details.as_ref().is_some_and(|d| d.kind == "namespaces") => StoreError::Fatal(
                    Error::Api(format!("namespace {namespace:?} does not exist\ncreate it, or pass --namespace")),
                ),
                // The object vanished under a write: read again.
                404 if verb.is_write() => StoreError::Conflict(message),
                429 => StoreError::Transient(format!("{what}: 429 Too Many Requests: {message}")),
                500..=599 if verb.is_write() => StoreError::Unknown(format!("{what}: {code}: {message}")),
                500..=599 => StoreError::Transient(format!("{what}: {code}: {message}")),
                _ => StoreError::Fatal(Error::Api(format!("{what}: {code} {}: {message}", status.reason))),
            }
        }
        kube::Error::SerdeError(err) => {
            // A record the API server accepted but we cannot read: never guess, keep trying.
            StoreError::Transient(format!("{what}: unreadable Lease record: {err}"))
        }
        other if verb.is_write() => StoreError::Unknown(format!("{what}: {}", one_line(&other))),
        other => StoreError::Transient(format!("{what}: {}", one_line(&other))),
    }
}

fn versioned(lease: &Lease) -> Versioned {
    Versioned {
        resource_version: lease.metadata.resource_version.clone().unwrap_or_default(),
        record: lease.spec.clone().unwrap_or_default(),
    }
}

/// An error and its causes on one line.
fn one_line(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match text.char_indices().nth(240) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

async fn watch_loop(
    api: Api<Lease>,
    name: String,
    namespace: String,
    retry_period: Duration,
    call_timeout: Duration,
    sender: mpsc::Sender<WatchUpdate>,
) {
    let selector = format!("metadata.name={name}");
    let mut failures: u32 = 0;
    loop {
        if failures > 0 {
            tokio::time::sleep(jittered(retry_period)).await;
        }
        let listed = timeout(call_timeout, api.list(&ListParams::default().fields(&selector))).await;
        let mut resource_version = match listed {
            Ok(Ok(list)) => {
                let current = list.items.first().map(versioned);
                if sender.send(current).await.is_err() {
                    return;
                }
                list.metadata.resource_version.unwrap_or_default()
            }
            Ok(Err(err)) => {
                failures += 1;
                let err = classify(err, Verb::List, &name, &namespace);
                tracing::warn!(lease = %name, error = %err, "cannot list the lease; polling it with get meanwhile");
                if !poll_once(&api, &name, &namespace, call_timeout, &sender).await {
                    return;
                }
                continue;
            }
            Err(_) => {
                failures += 1;
                tracing::warn!(lease = %name, "listing the lease timed out; polling it with get meanwhile");
                if !poll_once(&api, &name, &namespace, call_timeout, &sender).await {
                    return;
                }
                continue;
            }
        };

        // Watch from the listed version; when a stream ends normally, watch again from the last
        // version seen, without listing.
        loop {
            let params = WatchParams::default().fields(&selector).timeout(WATCH_SECONDS);
            let stream = match timeout(call_timeout, api.watch(&params, &resource_version)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    failures += 1;
                    let err = classify(err, Verb::Watch, &name, &namespace);
                    tracing::warn!(lease = %name, error = %err, "cannot watch the lease; polling meanwhile");
                    if !poll_once(&api, &name, &namespace, call_timeout, &sender).await {
                        return;
                    }
                    break;
                }
                Err(_) => {
                    failures += 1;
                    tracing::warn!(lease = %name, "starting a watch timed out; polling meanwhile");
                    break;
                }
            };
            futures::pin_mut!(stream);
            let idle_limit = Duration::from_secs(WATCH_SECONDS as u64) + WATCH_IDLE_MARGIN;
            let ended_cleanly = loop {
                match timeout(idle_limit, stream.try_next()).await {
                    Ok(Ok(Some(event))) => {
                        failures = 0;
                        let update = match event {
                            WatchEvent::Added(lease) | WatchEvent::Modified(lease) => {
                                resource_version = lease.metadata.resource_version.clone().unwrap_or_default();
                                Some(Some(versioned(&lease)))
                            }
                            WatchEvent::Deleted(lease) => {
                                resource_version = lease.metadata.resource_version.clone().unwrap_or_default();
                                Some(None)
                            }
                            WatchEvent::Bookmark(bookmark) => {
                                resource_version = bookmark.metadata.resource_version;
                                None
                            }
                            WatchEvent::Error(status) => {
                                // 410 Gone: our version is too old; anything else: start over too.
                                tracing::debug!(lease = %name, code = status.code, reason = %status.reason, "watch error event; listing again");
                                break false;
                            }
                        };
                        if let Some(update) = update
                            && sender.send(update).await.is_err()
                        {
                            return;
                        }
                    }
                    Ok(Ok(None)) => break true,
                    Ok(Err(err)) => {
                        tracing::debug!(lease = %name, error = %one_line(&err), "watch stream broke; listing again");
                        failures += 1;
                        break false;
                    }
                    Err(_) => {
                        tracing::debug!(lease = %name, "watch stream silent too long; listing again");
                        failures += 1;
                        break false;
                    }
                }
            };
            if !ended_cleanly {
                break;
            }
        }
    }
}

/// One poll while the watch is down: a plain get, delivered like a watch event. Returns false when
/// nobody listens any more.
async fn poll_once(
    api: &Api<Lease>,
    name: &str,
    namespace: &str,
    call_timeout: Duration,
    sender: &mpsc::Sender<WatchUpdate>,
) -> bool {
    match timeout(call_timeout, api.get_opt(name)).await {
        Ok(Ok(current)) => sender.send(current.as_ref().map(versioned)).await.is_ok(),
        Ok(Err(err)) => {
            let err = classify(err, Verb::Get, name, namespace);
            tracing::debug!(lease = %name, error = %err, "polling the lease failed");
            !sender.is_closed()
        }
        Err(_) => !sender.is_closed(),
    }
}
