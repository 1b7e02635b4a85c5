//! The Kubernetes backend: `Api<Lease>` get, create, replace-with-resourceVersion, a watch on the
//! single object (field selector `metadata.name`), and a list of the namespace's leases (`mpsync status`
//! without NAME). The verbs used are exactly get, list, watch, create and update on leases;
//! `deploy/rbac.yaml` grants those and nothing more.

use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, PostParams, WatchEvent, WatchParams};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::{FailureLog, StoreError, Watch, WatchUpdate};
use crate::error::Error;

/// The `reason` of an error answer whose body was no Kubernetes `Status`, as mpsync's own client marks it
/// (its `code` is then the HTTP status: see `backend::answers`).
pub(crate) const NOT_A_STATUS: &str = "NotFromTheAPIServer";
use crate::lease::{Versioned, Write};
use crate::retry::backoff_between;

/// How long a watch request asks the server to keep the stream open. The stream is restarted from the
/// last resourceVersion after that; a stream silent for longer than this plus a margin is presumed dead
/// (a partition can leave a TCP stream open and silent forever).
const WATCH_SECONDS: u32 = 30;
const WATCH_IDLE_MARGIN: Duration = Duration::from_secs(15);
/// The first wait between consecutive watch failures (it doubles up to the retry period).
const WATCH_MIN_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub struct KubeStore {
    api: Api<Lease>,
    namespace: String,
    /// Timeout for one API call. kube has no read timeout by default, so every call is wrapped.
    call_timeout: Duration,
}

impl KubeStore {
    /// A store over `client`, for leases in `namespace`; every call is bounded by `call_timeout`.
    pub fn new(client: Client, namespace: impl Into<String>, call_timeout: Duration) -> KubeStore {
        let namespace = namespace.into();
        KubeStore { api: Api::namespaced(client, &namespace), namespace, call_timeout }
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
            Ok(Ok(Some(lease))) => answered(lease, name)
                .map(Some)
                .ok_or_else(|| StoreError::Transient(no_lease_in_answer(Verb::Get, name))),
        }
    }

    /// Every lease in the namespace whose labels match `label_selector` (passed to the API server as it
    /// is), ordered by name. Needs only the list verb. Read a page of `LIST_PAGE` at a time, as kubectl
    /// reads, each page within the call timeout: a namespace of many Leases, or of large ones, is read whole
    /// all the same (found by review, rv278: one list of 30 MB of Leases timed out for ever, and one of
    /// 70 MB was past the largest answer read).
    pub async fn list(&self, label_selector: Option<&str>) -> Result<Vec<Versioned>, StoreError> {
        let first = match label_selector {
            Some(selector) => ListParams::default().labels(selector),
            None => ListParams::default(),
        }
        .limit(LIST_PAGE);
        let (mut params, mut leases, mut restarts) = (first.clone(), Vec::new(), 0);
        let mut tokens = std::collections::HashSet::new();
        // The last name the pages so far have reached.
        let mut high: Option<String> = None;
        loop {
            let page = match timeout(self.call_timeout, self.api.list(&params)).await {
                Err(_) => {
                    return Err(StoreError::Transient(format!(
                        "list leases in namespace {}: timed out after {:?}",
                        self.namespace, self.call_timeout
                    )));
                }
                // A continue token expired (410: etcd compacted the version the list began at): the list
                // begins again, as kubectl's does, a few times.
                Ok(Err(kube::Error::Api(status)))
                    if status.code == 410 && params.continue_token.is_some() && restarts < 3 =>
                {
                    restarts += 1;
                    (params, leases, high) = (first.clone(), Vec::new(), None);
                    tokens.clear();
                    continue;
                }
                Ok(Err(err)) => return Err(classify(err, Verb::List, None, &self.namespace)),
                Ok(Ok(page)) => page,
            };
            // Pages come in order of name, each after the last (kube-apiserver's, from etcd's keys): one that
            // goes back is a list begun again (a proxy that drops `continue`), which would page for ever
            // (found by review, rv282).
            let items: Vec<Versioned> = page.items.into_iter().map(versioned).collect();
            if high.is_some() && items.iter().any(|lease| lease.metadata.name <= high) {
                return Err(StoreError::Transient(format!(
                    "list leases in namespace {}: a page of the list went back to Leases it had listed",
                    self.namespace
                )));
            }
            high = high.max(items.iter().filter_map(|lease| lease.metadata.name.clone()).max());
            leases.extend(items);
            match page.metadata.continue_.filter(|token| !token.is_empty()) {
                // A token given twice would page for ever (a proxy that mangles them).
                Some(token) if !tokens.insert(token.clone()) => {
                    return Err(StoreError::Transient(format!(
                        "list leases in namespace {}: the API server gave the same continue token twice",
                        self.namespace
                    )));
                }
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
        leases.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        Ok(leases)
    }

    /// Create or compare-and-swap replace, as the write says. The object is written whole: the metadata
    /// it carries (read with the record, so labels, annotations and uid are kept) and the new spec.
    pub async fn write(&self, name: &str, write: &Write) -> Result<Versioned, StoreError> {
        let metadata = ObjectMeta { name: Some(name.to_string()), managed_fields: None, ..write.metadata.clone() };
        let lease = Lease { metadata, spec: Some(write.record.clone()) };
        if write.is_create() {
            self.send(name, Verb::Create, self.api.create(&PostParams::default(), &lease)).await
        } else {
            self.send(name, Verb::Update, self.api.replace(name, &PostParams::default(), &lease)).await
        }
    }

    async fn send(
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
            // A success that names no Lease is no answer (a gateway's own JSON with a 2xx status): the
            // write may have happened or not.
            Ok(Ok(lease)) => answered(lease, name).ok_or_else(|| StoreError::Unknown(no_lease_in_answer(verb, name))),
        }
    }

    /// Turn a kube error into what the run loop acts on, with messages that say what to do.
    fn classify(&self, err: kube::Error, verb: Verb, name: &str) -> StoreError {
        classify(err, verb, Some(name), &self.namespace)
    }

    /// Watch one lease: list (to learn the current record and resourceVersion), then watch from there
    /// with bookmarks; on 410 Gone list again; while the watch cannot be (re)established, the list is
    /// retried every `retry_period`, which is the poll fallback.
    pub fn watch(&self, name: &str, retry_period: Duration) -> Watch {
        self.watch_from(name, retry_period, None)
    }

    /// As [`KubeStore::watch`], but when the caller knows the lease at `known` (a resourceVersion it has
    /// just read or written), the first watch starts from there without a list: every change after it
    /// is delivered all the same, and a waiter costs the API server one request fewer. A version too old
    /// for the server (410) falls back to the list.
    pub fn watch_from(&self, name: &str, retry_period: Duration, known: Option<String>) -> Watch {
        let (sender, receiver) = mpsc::channel(16);
        let task = tokio::spawn(watch_loop(
            self.api.clone(),
            name.to_string(),
            self.namespace.clone(),
            retry_period,
            self.call_timeout,
            known.filter(|version| !version.is_empty()),
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

/// Why a request was given up before any of it was sent (the exec credential plugin gave no token): the
/// server saw nothing, so a write's outcome is known, not applied.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct NotSent(pub String);

/// The `NotSent` among the error's causes, if there is one.
fn not_sent(err: &kube::Error) -> bool {
    let mut cause = std::error::Error::source(err);
    while let Some(err) = cause {
        if err.is::<NotSent>() {
            return true;
        }
        cause = err.source();
    }
    false
}

/// `name`: the lease the call was about; `None` for a list of the namespace's leases.
/// An error answer's code as messages show it.
fn shown_code(code: u16) -> String {
    match code {
        0 => "an error answer that is no Kubernetes Status (from a proxy or gateway?)".to_string(),
        code => code.to_string(),
    }
}

/// How many Leases one page of a list holds (see [`KubeStore::list`]).
const LIST_PAGE: u32 = 100;

fn classify(err: kube::Error, verb: Verb, name: Option<&str>, namespace: &str) -> StoreError {
    let what = match name {
        Some(name) => format!("{} lease {namespace}/{name}", verb.as_str()),
        None => format!("{} leases in namespace {namespace}", verb.as_str()),
    };
    match err {
        kube::Error::Api(status) => {
            let code = status.code;
            let message = status.message.clone();
            match code {
                // A refusal with no Kubernetes Status (a gateway's 401, 403 or 404 with its own JSON or page,
                // see `backend::answers`; or the API server's own filters, which answer in plain text) lasts;
                // a 429 passes, and was never applied (a rate limiter, the API server's priority and
                // fairness included, refuses before it forwards: found by review, its plain-text 429 to a
                // renewal must not be an unknown outcome), as do 408, 425, 499 and 5xx (below).
                code if status.reason == NOT_A_STATUS && !matches!(code, 408 | 425 | 429 | 499 | 500..=599) => {
                    StoreError::Fatal(Error::Api(format!(
                        "{what}: {code} with no Kubernetes Status (from a proxy or gateway, or the API server's \
                         own filters): {message}"
                    )))
                }
                409 => StoreError::Conflict(message),
                401 => StoreError::Fatal(Error::Api(format!(
                    "{what}: 401 Unauthorized: the API server rejected the credentials\n\
                     check the kubeconfig's user (or the pod's service-account token)"
                ))),
                // A listing needs nothing else, so it says so, on one line.
                403 if name.is_none() => StoreError::Fatal(Error::Api(format!(
                    "{what}: forbidden: {message}; listing needs only the list verb on \
                     leases.coordination.k8s.io in namespace {namespace} (see deploy/rbac.yaml)"
                ))),
                403 => StoreError::Fatal(Error::Api(format!(
                    "{what}: forbidden: {message}\nmpsync needs get, list, watch, create and update on \
                     leases.coordination.k8s.io in namespace {namespace}: see deploy/rbac.yaml"
                ))),
                404 if status.details.as_ref().is_some_and(|d| d.kind == "namespaces") => {
                    StoreError::Fatal(Error::Api(format!(
                        "namespace {namespace:?} does not exist\ncreate it, or choose another namespace"
                    )))
                }
                // A create answered 404 created nothing, and no read changes that: Leases are not served
                // there (found by review: taken for a lost race, it was sent again at once, a thousand
                // times a second, in silence).
                404 if matches!(verb, Verb::Create) => StoreError::Fatal(Error::Api(format!(
                    "{what}: 404 NotFound: {message}\nthis API server does not serve leases.coordination.k8s.io/v1 \
                     (or something in front of it hides them)"
                ))),
                // The object vanished under a write: read again.
                404 if verb.is_write() => StoreError::Conflict(message),
                429 => StoreError::Transient(format!("{what}: 429 Too Many Requests: {message}")),
                500..=599 if verb.is_write() => StoreError::Unknown(format!("{what}: {code}: {message}")),
                500..=599 => StoreError::Transient(format!("{what}: {code}: {message}")),
                // A proxy's timeout, or a JSON body without a code through a client that does not mark it (a
                // library caller's own: kube reads any JSON object as a Status, code 0). No refusal: to a
                // write, it may have been applied; to a read, try again (found by review: taken as fatal, a
                // committed acquisition was left held, and a read ended mpsync).
                0 | 408 | 425 | 499 if verb.is_write() => {
                    StoreError::Unknown(format!("{what}: {}: {message}", shown_code(code)))
                }
                0 | 408 | 425 | 499 => StoreError::Transient(format!("{what}: {}: {message}", shown_code(code))),
                _ => StoreError::Fatal(Error::Api(format!("{what}: {code} {}: {message}", status.reason))),
            }
        }
        // An answer we cannot read: to a write, the server may well have applied it (read to find out);
        // to a read, never guess, keep trying.
        kube::Error::SerdeError(err) if verb.is_write() => {
            StoreError::Unknown(format!("{what}: unreadable answer: {err}"))
        }
        kube::Error::SerdeError(err) => StoreError::Unreadable(format!("{what}: unreadable Lease record: {err}")),
        // kube's client runs a task (tower's buffer worker) on the runtime it was built on: with that
        // runtime shut down, every call fails at once, and always will.
        other if one_line(&other).contains("buffer's worker closed") => StoreError::Fatal(Error::Config(format!(
            "{what}: the kube::Client cannot be used any more: the tokio runtime it was built on was shut down; \
             build the client, and the Lock, on the runtime that uses them"
        ))),
        other if not_sent(&other) => StoreError::Transient(format!("{what}: not sent: {}", one_line(&other))),
        other if verb.is_write() => StoreError::Unknown(format!("{what}: {}", one_line(&other))),
        other => StoreError::Transient(format!("{what}: {}", one_line(&other))),
    }
}

/// The record a successful answer about `name` carries, if it is one: the API server always answers with
/// the object, named and with a resourceVersion. A JSON object that is no Lease (a proxy's or gateway's
/// `{"message": ...}` with a 2xx status) reads as a Lease with nothing in it; taken for one, it was an
/// empty record, and the write that followed was refused (found by review).
fn answered(lease: Lease, name: &str) -> Option<Versioned> {
    let is_lease = lease.metadata.name.as_deref() == Some(name)
        && lease.metadata.resource_version.as_deref().is_some_and(|version| !version.is_empty());
    is_lease.then(|| versioned(lease))
}

fn no_lease_in_answer(verb: Verb, name: &str) -> String {
    format!("{} lease {name}: the answer was a success but carried no Lease (from a proxy or gateway?)", verb.as_str())
}

fn versioned(lease: Lease) -> Versioned {
    Versioned {
        resource_version: lease.metadata.resource_version.clone().unwrap_or_default(),
        record: lease.spec.unwrap_or_default(),
        metadata: ObjectMeta { managed_fields: None, ..lease.metadata },
    }
}

/// An error and its causes on one line.
pub fn one_line(err: &dyn std::error::Error) -> String {
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
    mut known: Option<String>,
    sender: mpsc::Sender<WatchUpdate>,
) {
    let selector = format!("metadata.name={name}");
    // Consecutive failures: every failed list, failed or erroring watch, and watch that ended at once
    // without delivering anything. The first is retried at once (a watch that was healthy broke); from
    // the second on, after a jittered backoff doubling up to `retry_period` (the poll rate of the
    // contract), so a server or proxy that answers every watch with an error, or closes it at once, is
    // asked at a bounded rate.
    let mut failures: u32 = 0;
    let mut log = FailureLog::new(&name, "watching the lease");
    loop {
        tokio::time::sleep(backoff_between(WATCH_MIN_BACKOFF, retry_period, failures)).await;
        let mut resource_version = match known.take() {
            // The caller's version, once: it knows the record there already.
            Some(version) => version,
            None => match timeout(call_timeout, api.list(&ListParams::default().fields(&selector))).await {
                Ok(Ok(list)) => {
                    let resource_version = list.metadata.resource_version.unwrap_or_default();
                    let update = match list.items.into_iter().next() {
                        Some(lease) => WatchUpdate::Present(versioned(lease)),
                        None => WatchUpdate::Absent { resource_version: resource_version.clone() },
                    };
                    if sender.send(update).await.is_err() {
                        return;
                    }
                    resource_version
                }
                failed => {
                    failures += 1;
                    let err = match failed {
                        Ok(Err(err)) => classify(err, Verb::List, Some(&name), &namespace).to_string(),
                        _ => format!("list timed out after {call_timeout:?}"),
                    };
                    log.failed(&format!("{err}; polling with get meanwhile"));
                    if !poll_once(&api, &name, &namespace, call_timeout, &sender).await {
                        return;
                    }
                    continue;
                }
            },
        };

        // Watch from the listed version; when a stream ends normally after a while, watch again from the
        // last version seen, without listing.
        loop {
            let params = WatchParams::default().fields(&selector).timeout(WATCH_SECONDS);
            let stream = match timeout(call_timeout, api.watch(&params, &resource_version)).await {
                Ok(Ok(stream)) => stream,
                failed => {
                    failures += 1;
                    let err = match failed {
                        Ok(Err(err)) => classify(err, Verb::Watch, Some(&name), &namespace).to_string(),
                        _ => format!("starting a watch timed out after {call_timeout:?}"),
                    };
                    log.failed(&format!("{err}; polling with get meanwhile"));
                    if !poll_once(&api, &name, &namespace, call_timeout, &sender).await {
                        return;
                    }
                    break;
                }
            };
            futures::pin_mut!(stream);
            let idle_limit = Duration::from_secs(WATCH_SECONDS as u64) + WATCH_IDLE_MARGIN;
            let started = tokio::time::Instant::now();
            let mut delivered = false;
            let ended = loop {
                match timeout(idle_limit, stream.try_next()).await {
                    Ok(Ok(Some(event))) => {
                        let update = match event {
                            WatchEvent::Added(lease) | WatchEvent::Modified(lease) => {
                                resource_version = lease.metadata.resource_version.clone().unwrap_or_default();
                                WatchUpdate::Present(versioned(lease))
                            }
                            WatchEvent::Deleted(lease) => {
                                resource_version = lease.metadata.resource_version.clone().unwrap_or_default();
                                WatchUpdate::Deleted { resource_version: resource_version.clone() }
                            }
                            WatchEvent::Bookmark(bookmark) => {
                                // Progress, and no sign of a healthy watch: a server or proxy can end every
                                // stream with an error after a bookmark (found by review, helper-161: the
                                // next list and watch were then made at once, in a loop).
                                resource_version = bookmark.metadata.resource_version;
                                continue;
                            }
                            WatchEvent::Error(status) => {
                                // 410 Gone: our version is too old; anything else: start over too. Either
                                // way it counts as a failure, so an erroring server is not hammered.
                                break Ended::Error(format!(
                                    "watch error {} {}: {}",
                                    status.code, status.reason, status.message
                                ));
                            }
                        };
                        if !delivered {
                            delivered = true;
                            failures = 0;
                            log.recovered();
                        }
                        if sender.send(update).await.is_err() {
                            return;
                        }
                    }
                    Ok(Ok(None)) => break Ended::Cleanly,
                    Ok(Err(err)) => break Ended::Error(format!("watch stream broke: {}", one_line(&err))),
                    Err(_) => break Ended::Error("watch stream silent for too long".to_string()),
                }
            };
            match ended {
                // A stream that ran its course (or delivered something): watch again from where it was.
                Ended::Cleanly if delivered || started.elapsed() >= Duration::from_secs(WATCH_SECONDS as u64) / 2 => {}
                // One that ended at once without an event may have skipped any number of changes (a proxy
                // that closes every stream): list again, at the bounded rate of failures, so a waiter still
                // sees a release within a retry period rather than at the hold's expiry (found by review).
                Ended::Cleanly => {
                    failures += 1;
                    log.failed("the watch ended at once without any event; listing again");
                    break;
                }
                Ended::Error(err) => {
                    // A stream that ran for a retry period was a healthy watch that broke: retried at once.
                    if started.elapsed() >= retry_period {
                        failures = 0;
                        log.recovered();
                    }
                    failures += 1;
                    log.failed(&format!("{err}; listing again"));
                    break;
                }
            }
        }
    }
}

enum Ended {
    Cleanly,
    Error(String),
}

/// One poll while the watch is down: a plain get, delivered like a watch event (an absence it shows
/// carries no version: only a read of the run loop's own decides on it). Returns false when nobody
/// listens any more.
async fn poll_once(
    api: &Api<Lease>,
    name: &str,
    namespace: &str,
    call_timeout: Duration,
    sender: &mpsc::Sender<WatchUpdate>,
) -> bool {
    match timeout(call_timeout, api.get_opt(name)).await {
        Ok(Ok(current)) => {
            let update = match current {
                Some(lease) => WatchUpdate::Present(versioned(lease)),
                None => WatchUpdate::Absent { resource_version: String::new() },
            };
            sender.send(update).await.is_ok()
        }
        Ok(Err(err)) => {
            let err = classify(err, Verb::Get, Some(name), namespace);
            tracing::debug!(lease = %name, error = %err, "polling the lease failed");
            // A refusal the caller's own read takes as fatal (credentials refused, get forbidden, the
            // namespace gone): end the watch, so the caller reads by itself and sees it, rather than
            // wait, blind, for the last record seen to expire (found by review, helper-146).
            !matches!(err, StoreError::Fatal(_)) && !sender.is_closed()
        }
        Err(_) => !sender.is_closed(),
    }
}
