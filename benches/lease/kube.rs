//! Where the leases live: the test API server (HTTPS, in this process, a fresh one per measurement so
//! that its exact request counts are one measurement's), or any cluster named by
//! `MPSYNC_BENCH_KUBECONFIG` and `MPSYNC_BENCH_NAMESPACE`, whose request counts come from the API
//! server's `/metrics` when the user may read them.
//!
//! The bench's own kube clients are built from an explicit kubeconfig file, never inferred from the
//! environment: no `KUBECONFIG`, no in-cluster variables, and no proxy the kubeconfig does not name.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};

use crate::apiserver::TestApiServer;
use crate::ctx::{Ctx, epoch_micros, fmt_per, format_micro_time};
use crate::tlsfront::TlsFront;

/// API requests by (verb, HTTP status), verbs named as RBAC names them: get, list, watch, create,
/// update, patch, delete. Fractional after a background rate was subtracted, or when divided.
pub type Counts = BTreeMap<(String, u16), f64>;

/// How long the cluster's background request rate is measured (nothing of the bench running).
const DEFAULT_BACKGROUND: Duration = Duration::from_secs(10);

/// The tokio runtime for the bench's own kube calls (mpsync itself runs as separate processes).
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime"))
}

/// A kube client configuration from this kubeconfig file and nothing else: its current context, its
/// CA, its credentials, and its `proxy-url` only (kube-rs would otherwise take `HTTPS_PROXY` from the
/// environment).
pub async fn load_config(path: &Path) -> Result<kube::Config, String> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(|err| format!("{}: {err}", path.display()))?;
    let proxy_named = kubeconfig
        .current_context
        .as_ref()
        .and_then(|current| kubeconfig.contexts.iter().find(|c| &c.name == current))
        .and_then(|c| c.context.as_ref())
        .and_then(|context| kubeconfig.clusters.iter().find(|c| c.name == context.cluster))
        .and_then(|c| c.cluster.as_ref())
        .is_some_and(|cluster| cluster.proxy_url.is_some());
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|err| format!("{}: {err}", path.display()))?;
    if !proxy_named {
        config.proxy_url = None;
    }
    Ok(config)
}

pub fn client(config: &kube::Config) -> kube::Client {
    let _guard = rt().enter();
    kube::Client::try_from(config.clone()).expect("a kube client from the kubeconfig")
}

/// `MPSYNC_BENCH_COMMIT_MS`: how long the test server holds every write before it commits, standing in
/// for etcd (none by default: the targets of issue 14 are the test server's).
pub fn commit_delay() -> Duration {
    let Some(value) = std::env::var("MPSYNC_BENCH_COMMIT_MS").ok().filter(|v| !v.trim().is_empty()) else {
        return Duration::ZERO;
    };
    match value.trim().parse::<f64>() {
        Ok(ms) if (0.0..=60_000.0).contains(&ms) => Duration::from_secs_f64(ms / 1000.0),
        _ => panic!("MPSYNC_BENCH_COMMIT_MS={value:?}: a number of milliseconds from 0 to 60000, such as 5"),
    }
}

/// A test server as the bench's variables ask for it.
pub fn test_server(server: TestApiServer) -> TestApiServer {
    server.set_commit_delay(commit_delay());
    server
}

pub enum Target {
    /// The test API server of `tests/support/apiserver.rs`: a fresh one per measurement; with `front`,
    /// a plain-HTTP one behind a TLS front that sends no session tickets (`MPSYNC_BENCH_FRONT=1`).
    TestServer {
        front: bool,
    },
    Cluster(Box<Cluster>),
}

impl Target {
    pub fn from_env() -> Target {
        let Some(path) = std::env::var_os("MPSYNC_BENCH_KUBECONFIG").filter(|p| !p.is_empty()) else {
            let front = std::env::var_os("MPSYNC_BENCH_FRONT").is_some_and(|v| !v.is_empty() && v != "0");
            return Target::TestServer { front };
        };
        let kubeconfig = std::path::absolute(&path).expect("an absolute kubeconfig path");
        let config =
            rt().block_on(load_config(&kubeconfig)).unwrap_or_else(|err| panic!("MPSYNC_BENCH_KUBECONFIG {err}"));
        let namespace = std::env::var("MPSYNC_BENCH_NAMESPACE")
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = client(&config);
        let metrics = rt().block_on(scrape(&client)).map(|_| ());
        if let Err(why) = &metrics {
            eprintln!("request counts will be skipped: {why}");
        }
        Target::Cluster(Box::new(Cluster {
            kubeconfig,
            namespace,
            server: config.cluster_url.to_string(),
            config,
            client,
            metrics,
            background: RefCell::new(None),
        }))
    }

    pub fn cluster(&self) -> Option<&Cluster> {
        match self {
            Target::TestServer { .. } => None,
            Target::Cluster(cluster) => Some(cluster),
        }
    }

    pub fn front(&self) -> bool {
        matches!(self, Target::TestServer { front: true })
    }

    /// How a report names where the leases are.
    pub fn name(&self) -> &'static str {
        match self {
            Target::TestServer { front: false } => "test API server",
            Target::TestServer { front: true } => "test API server behind the TLS front",
            Target::Cluster(_) => "cluster",
        }
    }
}

pub struct Cluster {
    pub kubeconfig: PathBuf,
    pub namespace: String,
    /// The API server's URL.
    pub server: String,
    pub config: kube::Config,
    pub client: kube::Client,
    /// Whether `GET /metrics` works for this user, or why not.
    pub metrics: Result<(), String>,
    /// Requests per second by (verb, status) that others make while the bench does nothing.
    background: RefCell<Option<(Counts, f64)>>,
}

impl Cluster {
    /// The background rate, measured on first use: two scrapes `MPSYNC_BENCH_BACKGROUND_SECS` apart
    /// (default 10) with nothing of the bench running. Node leases, controller and scheduler elections
    /// and any other client renew leases all the time; `/metrics` has no namespace label to tell
    /// them apart from ours.
    fn background(&self) -> Result<(Counts, f64), String> {
        self.metrics.clone()?;
        if let Some(known) = self.background.borrow().clone() {
            return Ok(known);
        }
        let secs = std::env::var("MPSYNC_BENCH_BACKGROUND_SECS")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .map_or(DEFAULT_BACKGROUND, Duration::from_secs_f64);
        eprintln!("measuring the cluster's background lease requests for {secs:?}");
        let before = rt().block_on(scrape(&self.client))?;
        let started = Instant::now();
        std::thread::sleep(secs);
        let after = rt().block_on(scrape(&self.client))?;
        let elapsed = started.elapsed().as_secs_f64();
        let rates = difference(&after, &before).into_iter().map(|(k, v)| (k, v / elapsed)).collect();
        *self.background.borrow_mut() = Some((rates, elapsed));
        Ok(self.background.borrow().clone().unwrap())
    }

    /// A paragraph for the report: where counts come from, and the background that was subtracted.
    pub fn describe_counts(&self) -> String {
        match self.background() {
            Err(why) => format!("Request counts are **skipped** on this cluster: {why}."),
            Ok((rates, secs)) => format!(
                "Request counts come from the API server's `/metrics` (`apiserver_request_total{{resource=\"leases\"}}`, \
                 by verb and code), read before and after each window. They include every client's lease \
                 requests, so the background rate measured over {secs:.0} s with nothing of the bench running is \
                 subtracted (per second: {}); counts marked ≈ are estimates. On a control plane with several API \
                 servers, `/metrics` is one instance's. A watch is counted when it ends.",
                if rates.is_empty() { "none".to_string() } else { by_verb_code(&rates, 1.0) }
            ),
        }
    }
}

/// The lease counters from `GET /metrics`.
async fn scrape(client: &kube::Client) -> Result<Counts, String> {
    let request = kube::core::Request::new("").get("metrics", &Default::default()).expect("a request for /metrics");
    match client.request_text(request).await {
        Ok(text) => parse_metrics(&text),
        Err(kube::Error::Api(status)) => Err(format!(
            "GET /metrics answered {} {}: {}{}",
            status.code,
            status.reason,
            status.message,
            if matches!(status.code, 401 | 403) {
                " (reading it needs `get` on the non-resource URL `/metrics`)"
            } else {
                ""
            }
        )),
        Err(err) => Err(format!("GET /metrics failed: {err}")),
    }
}

/// `apiserver_request_total{...,resource="leases",...,verb="PUT",code="409"} 12` lines, summed over the
/// other labels, with the metric's verbs (GET, LIST, WATCH, POST, PUT, PATCH, DELETE) named as RBAC
/// and the test server name them.
pub fn parse_metrics(text: &str) -> Result<Counts, String> {
    let mut counts = Counts::new();
    let mut seen = false;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        seen = true;
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let label = |key: &str| {
            labels.split(',').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
            })
        };
        if label("resource").as_deref() != Some("leases") || label("group").as_deref() != Some("coordination.k8s.io") {
            continue;
        }
        if label("subresource").is_some_and(|s| !s.is_empty()) {
            continue;
        }
        let verb = match label("verb").unwrap_or_default().as_str() {
            "GET" => "get",
            "LIST" => "list",
            "WATCH" | "WATCHLIST" => "watch",
            "POST" => "create",
            "PUT" => "update",
            "PATCH" | "APPLY" => "patch",
            "DELETE" => "delete",
            "DELETECOLLECTION" => "deletecollection",
            other => return Err(format!("unknown verb {other:?} in /metrics")),
        };
        let code = label("code").and_then(|c| c.parse().ok()).unwrap_or(0);
        let value: f64 = value.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        *counts.entry((verb.to_string(), code)).or_default() += value;
    }
    if !seen {
        return Err("GET /metrics has no apiserver_request_total".into());
    }
    Ok(counts)
}

pub fn difference(after: &Counts, before: &Counts) -> Counts {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v != 0.0)
        .collect()
}

/// Where one measurement's leases live: a fresh test API server, or the cluster (with lease names of
/// this run, deleted at the end).
pub struct KubeEnv<'a> {
    pub kubeconfig: PathBuf,
    pub namespace: String,
    pub server: Option<TestApiServer>,
    /// The TLS front the server is behind, if it is.
    pub front: Option<TlsFront>,
    pub cluster: Option<&'a Cluster>,
    /// `TAG-MARKER`: what makes this measurement's lease names on a cluster its own.
    suffix: String,
    /// Leases this run used on the cluster, deleted when it is dropped.
    used: RefCell<Vec<String>>,
}

impl<'a> KubeEnv<'a> {
    pub fn start(ctx: &'a Ctx, tag: &str) -> KubeEnv<'a> {
        if ctx.target.front() {
            return KubeEnv::start_fronted(ctx, tag);
        }
        match ctx.target.cluster() {
            None => {
                let server = test_server(TestApiServer::start());
                let kubeconfig = ctx.dir.join(format!("kubeconfig-{tag}"));
                fs::write(&kubeconfig, server.kubeconfig_yaml("default")).unwrap();
                KubeEnv {
                    kubeconfig,
                    namespace: "default".into(),
                    server: Some(server),
                    front: None,
                    cluster: None,
                    suffix: suffix(ctx, tag),
                    used: RefCell::default(),
                }
            }
            Some(cluster) => KubeEnv {
                kubeconfig: cluster.kubeconfig.clone(),
                namespace: cluster.namespace.clone(),
                server: None,
                front: None,
                cluster: Some(cluster),
                suffix: suffix(ctx, tag),
                used: RefCell::default(),
            },
        }
    }

    /// A plain-HTTP test server behind a TLS front that sends no session tickets (see `tlsfront`).
    pub fn start_fronted(ctx: &'a Ctx, tag: &str) -> KubeEnv<'a> {
        let server = test_server(TestApiServer::start_plain());
        let front = TlsFront::start(server.addr());
        let kubeconfig = ctx.dir.join(format!("kubeconfig-{tag}"));
        fs::write(&kubeconfig, front.kubeconfig_yaml("default")).unwrap();
        KubeEnv {
            kubeconfig,
            namespace: "default".into(),
            server: Some(server),
            front: Some(front),
            cluster: None,
            suffix: suffix(ctx, tag),
            used: RefCell::default(),
        }
    }

    /// The lease name to use for `base`: itself on a test server of its own; on a cluster, one unique
    /// to this run, deleted at the end.
    pub fn lease(&self, base: &str) -> String {
        if self.cluster.is_none() {
            return base.to_string();
        }
        let name = format!("{base}-{}", self.suffix);
        self.used.borrow_mut().push(name.clone());
        name
    }

    fn api(&self) -> Option<Api<Lease>> {
        self.cluster.map(|c| Api::namespaced(c.client.clone(), &self.namespace))
    }

    /// The stored lease, as JSON.
    pub fn get_lease(&self, name: &str) -> Option<Value> {
        match (&self.server, self.api()) {
            (Some(server), _) => server.lease(&self.namespace, name),
            (None, Some(api)) => rt()
                .block_on(api.get_opt(name))
                .unwrap_or_else(|err| panic!("GET lease {name}: {err}"))
                .map(|lease| serde_json::to_value(lease).unwrap()),
            (None, None) => unreachable!(),
        }
    }

    /// A Lease another holder keeps for `seconds`, created as client-go would write it.
    pub fn create_foreign_lease(&self, name: &str, holder: &str, seconds: i64) {
        let now = format_micro_time(epoch_micros());
        let body = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": seconds, "acquireTime": now, "renewTime": now, "leaseTransitions": 0},
        });
        match (&self.server, self.api()) {
            (Some(server), _) => {
                let path = format!("/apis/coordination.k8s.io/v1/namespaces/{}/leases", self.namespace);
                let (status, answer) = server.call("POST", &path, Some(&body.to_string()));
                assert_eq!(status, 201, "creating the foreign lease: {answer}");
            }
            (None, Some(api)) => {
                let lease: Lease = serde_json::from_value(body).unwrap();
                rt().block_on(api.create(&PostParams::default(), &lease))
                    .unwrap_or_else(|err| panic!("creating the foreign lease {name}: {err}"));
            }
            (None, None) => unreachable!(),
        }
    }

    /// Whether at least `n` watches are open (exact on the test server; on a cluster, unknown: true).
    pub fn watching(&self, n: usize) -> bool {
        self.server.as_ref().is_none_or(|server| server.watch_count() >= n)
    }

    /// After the processes said they wait: on a cluster, where open watches cannot be counted, give
    /// them a moment to open theirs.
    pub fn settle_watches(&self) {
        if self.cluster.is_some() {
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Start counting requests.
    pub fn open_window(&self) -> Window<'_> {
        let before = match (&self.server, self.cluster) {
            (Some(server), _) => Ok(exact(server)),
            (None, Some(cluster)) => cluster.background().and_then(|_| rt().block_on(scrape(&cluster.client))),
            (None, None) => unreachable!(),
        };
        Window { env: self, before, started: Instant::now() }
    }
}

impl Drop for KubeEnv<'_> {
    fn drop(&mut self) {
        if let Some(api) = self.api() {
            for name in self.used.borrow().iter() {
                let _ = rt().block_on(api.delete(name, &DeleteParams::default()));
            }
        }
    }
}

/// A lease name suffix from the measurement's tag and the run's marker, in the characters a lease name
/// allows.
fn suffix(ctx: &Ctx, tag: &str) -> String {
    let tag: String =
        tag.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    // Ending in a letter: a plain lock of a name that ends in `-N` reads the would-be semaphore `NAME`
    // first (one request more), which the figures must not count by chance.
    format!("{}-{}x", tag.trim_matches('-'), ctx.marker)
}

fn exact(server: &TestApiServer) -> Counts {
    server.counts().into_iter().map(|(k, v)| (k, v as f64)).collect()
}

/// Requests counted from [`KubeEnv::open_window`] on.
pub struct Window<'e> {
    env: &'e KubeEnv<'e>,
    before: Result<Counts, String>,
    started: Instant,
}

impl Window<'_> {
    /// The requests since the window opened; on a cluster, less the background (an estimate), or why
    /// they could not be counted.
    pub fn close(self) -> Counted {
        let secs = self.started.elapsed().as_secs_f64();
        let counts = match (&self.env.server, self.env.cluster) {
            (Some(server), _) => self.before.map(|before| difference(&exact(server), &before)),
            (None, Some(cluster)) => {
                // A request is counted when it completes: let those in flight finish.
                std::thread::sleep(Duration::from_millis(50));
                self.before.and_then(|before| {
                    let after = rt().block_on(scrape(&cluster.client))?;
                    let (rates, _) = cluster.background()?;
                    let mut delta = difference(&after, &before);
                    for (key, rate) in rates {
                        let value = delta.entry(key).or_default();
                        *value = (*value - rate * secs).max(0.0);
                    }
                    delta.retain(|_, v| *v > 0.0);
                    Ok(delta)
                })
            }
            (None, None) => unreachable!(),
        };
        Counted { counts, secs, exact: self.env.server.is_some() }
    }
}

pub struct Counted {
    /// The counts, or why there are none.
    pub counts: Result<Counts, String>,
    /// How long the window was open.
    pub secs: f64,
    /// Exact (the test server), or an estimate (a cluster's /metrics less its background).
    pub exact: bool,
}

impl Counted {
    /// `≈` for an estimate, nothing for exact counts.
    pub fn approx(&self) -> &'static str {
        if self.exact { "" } else { "≈ " }
    }

    /// All counts divided by `per` (per handoff, per run), or the reason they were skipped.
    pub fn per(&self, per: f64) -> Result<Counts, String> {
        self.counts.clone().map(|c| c.into_iter().map(|(k, v)| (k, v / per)).collect())
    }
}

/// Requests that are not list or watch, summed.
pub fn total_without_watching(counts: &Counts) -> f64 {
    // A fold from +0.0: an empty float sum is -0.0, which prints as "-0".
    counts.iter().filter(|((verb, _), _)| verb != "list" && verb != "watch").fold(0.0, |sum, (_, v)| sum + v)
}

/// All requests, summed.
pub fn total(counts: &Counts) -> f64 {
    counts.values().fold(0.0, |sum, v| sum + v)
}

/// `get 200: 1, update 200: 2, update 409: 0.3`, scaled by `factor`; list and watch last.
pub fn by_verb_code(counts: &Counts, factor: f64) -> String {
    let order = ["get", "create", "update", "patch", "delete", "list", "watch"];
    let rank = |verb: &str| order.iter().position(|v| *v == verb).unwrap_or(order.len());
    let mut entries: Vec<_> = counts.iter().filter(|(_, v)| **v * factor >= 0.005).collect();
    entries.sort_by_key(|((verb, code), _)| (rank(verb), *code));
    if entries.is_empty() {
        return "none".into();
    }
    entries
        .iter()
        .map(|((verb, code), v)| format!("{verb} {code}: {}", fmt_per(**v * factor)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The same, without list and watch.
pub fn by_verb_code_without_watching(counts: &Counts, factor: f64) -> String {
    let rest: Counts =
        counts.iter().filter(|((v, _), _)| v != "list" && v != "watch").map(|(k, v)| (k.clone(), *v)).collect();
    by_verb_code(&rest, factor)
}

/// Only list and watch.
pub fn by_verb_code_watching(counts: &Counts, factor: f64) -> String {
    let rest: Counts =
        counts.iter().filter(|((v, _), _)| v == "list" || v == "watch").map(|(k, v)| (k.clone(), *v)).collect();
    by_verb_code(&rest, factor)
}

/// A check of the /metrics parser on a sample of kube-apiserver 1.28's output.
pub fn self_check() {
    let sample = r#"# HELP apiserver_request_total [STABLE] Counter of apiserver requests broken out for each verb, dry run value, group, version, resource, scope, component, and HTTP response code.
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="GET",version="v1"} 1.234567e+06
apiserver_request_total{code="200",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="PUT",version="v1"} 41
apiserver_request_total{code="409",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="PUT",version="v1"} 2
apiserver_request_total{code="0",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="namespace",subresource="",verb="WATCH",version="v1"} 3
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="pods",scope="namespace",subresource="",verb="LIST",version="v1"} 9
"#;
    let counts = parse_metrics(sample).expect("the sample parses");
    let want: Counts = [
        (("get".to_string(), 200), 1_234_567.0),
        (("update".to_string(), 200), 41.0),
        (("update".to_string(), 409), 2.0),
        (("watch".to_string(), 0), 3.0),
    ]
    .into_iter()
    .collect();
    assert_eq!(counts, want);
}
