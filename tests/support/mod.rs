//! Test support: the test API server (HTTPS), the fault proxy, an HTTP CONNECT proxy, the command
//! builder, and helpers to read and write leases.
//!
//! Every end-to-end test gets a `TestEnv`. With `MPSYNC_TEST_KUBECONFIG` set, it talks to that real
//! cluster (namespace `MPSYNC_TEST_NAMESPACE`, default "default"); otherwise it starts its own test API
//! server and writes its kubeconfig (with the server's CA as `certificate-authority-data`). `TestEnv::file()`
//! uses the file backend instead. Clients are always built from an explicit config, and every child runs
//! with KUBECONFIG, the in-cluster variables and the proxy variables scrubbed.
#![allow(dead_code)]

pub mod apiserver;
pub mod connect_proxy;
pub mod proxy;
pub mod pty;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};

use apiserver::TestApiServer;

/// Generous: tests must pass on a loaded 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Short timings for tests: grace is lease - deadline - 1s = 1s.
pub const FAST: &[&str] = &["--lease-duration", "4s", "--renew-deadline", "2s", "--retry-period", "500ms"];

/// `head` (the command and its options), the `FAST` timings, then `--` and the child's `command`.
pub fn fast<'a>(head: &[&'a str], command: &[&'a str]) -> Vec<&'a str> {
    [head, FAST, &["--"], command].concat()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Kube,
    File,
}

pub struct TestEnv {
    pub backend: Backend,
    /// The test API server; `None` against a real cluster or with the file backend.
    pub server: Option<TestApiServer>,
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub namespace: String,
    runtime: tokio::runtime::Runtime,
    api: Option<Api<Lease>>,
    file_store: Option<mpsync::store::file::FileStore>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    // Never all digits after the last `-`: such a name is read as a semaphore's slot name (`P-N`), which
    // costs a read of `P` at the start and after each acquisition, and a test counting requests would count it.
    format!("{prefix}-{:x}{:x}n{}", std::process::id(), nanos % 0xffff, COUNTER.fetch_add(1, Ordering::Relaxed))
}

impl TestEnv {
    pub fn new(backend: Backend) -> TestEnv {
        match backend {
            Backend::Kube => TestEnv::kube(),
            Backend::File => TestEnv::file(),
        }
    }

    /// The Kubernetes backend: a real cluster if `MPSYNC_TEST_KUBECONFIG` names one, else a test server.
    pub fn kube() -> TestEnv {
        let dir = temp_dir("kube");
        let runtime = runtime();
        let (server, kubeconfig, namespace) = match std::env::var_os("MPSYNC_TEST_KUBECONFIG") {
            Some(path) => {
                let namespace = std::env::var("MPSYNC_TEST_NAMESPACE").unwrap_or_else(|_| "default".into());
                (None, PathBuf::from(path), namespace)
            }
            None => {
                let server = TestApiServer::start();
                let path = dir.join("kubeconfig");
                fs::write(&path, server.kubeconfig_yaml("default")).unwrap();
                (Some(server), path, "default".to_string())
            }
        };
        let api = runtime.block_on(async {
            let yaml = fs::read_to_string(&kubeconfig).unwrap();
            let config = kube::Config::from_custom_kubeconfig(
                kube::config::Kubeconfig::from_yaml(&yaml).unwrap(),
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .unwrap();
            Api::<Lease>::namespaced(Client::try_from(config).unwrap(), &namespace)
        });
        TestEnv {
            backend: Backend::Kube,
            server,
            dir,
            kubeconfig,
            namespace,
            runtime,
            api: Some(api),
            file_store: None,
        }
    }

    pub fn file() -> TestEnv {
        let dir = temp_dir("file");
        let lock_dir = dir.join("locks");
        let file_store = mpsync::store::file::FileStore::open(lock_dir, "default".into()).unwrap();
        TestEnv {
            backend: Backend::File,
            server: None,
            kubeconfig: dir.join("no-kubeconfig"),
            dir,
            namespace: "default".into(),
            runtime: runtime(),
            api: None,
            file_store: Some(file_store),
        }
    }

    /// Whether this run talks to a real cluster (fault-injection tests skip then).
    pub fn real_cluster() -> bool {
        std::env::var_os("MPSYNC_TEST_KUBECONFIG").is_some()
    }

    pub fn server(&self) -> Option<&TestApiServer> {
        self.server.as_ref()
    }

    pub fn lock_dir(&self) -> PathBuf {
        self.dir.join("locks")
    }

    /// A lease name no other test (or earlier run on a real cluster) uses.
    pub fn lease_name(&self, prefix: &str) -> String {
        unique(prefix)
    }

    /// A path in this test's temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A fault proxy in front of this environment's API server, and a kubeconfig (in this test's temp dir)
    /// that reaches the server through it.
    pub fn proxied_kubeconfig(&self) -> (proxy::FaultProxy, PathBuf) {
        let yaml = fs::read_to_string(&self.kubeconfig).unwrap();
        let proxy = proxy::FaultProxy::start(&proxy::kubeconfig_upstream(&yaml).unwrap());
        let path = self.path(&format!("kubeconfig-proxied-{}", proxy.addr().port()));
        fs::write(&path, proxy.kubeconfig_through(&yaml)).unwrap();
        (proxy, path)
    }

    /// `mpsync ARGS...` with this environment's backend, and nothing inherited that could point it
    /// anywhere else.
    pub fn mpsync<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mpsync"));
        command.args(args);
        scrub(&mut command);
        command.env("MPSYNC_NAMESPACE", &self.namespace);
        match self.backend {
            Backend::Kube => {
                command.env("MPSYNC_KUBECONFIG", &self.kubeconfig);
            }
            Backend::File => {
                command.env("MPSYNC_BACKEND", "file").env("MPSYNC_LOCK_DIR", self.lock_dir());
            }
        }
        command.stdin(Stdio::null());
        command
    }

    /// Start mpsync with stdout and stderr captured in files (no pipe can fill up and block it).
    pub fn spawn<I, S>(&self, args: I) -> Proc
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Proc::spawn(self.mpsync(args), &self.dir)
    }

    /// Run mpsync to completion (within PATIENCE) and return what it did.
    pub fn run<I, S>(&self, args: I) -> Finished
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.spawn(args).finish()
    }

    /// The lease as stored now: (resourceVersion, spec).
    pub fn get(&self, name: &str) -> Option<(String, LeaseSpec)> {
        match self.backend {
            Backend::Kube => self.runtime.block_on(async {
                let lease = self.api.as_ref().unwrap().get_opt(name).await.expect("get lease")?;
                Some((lease.metadata.resource_version.unwrap_or_default(), lease.spec.unwrap_or_default()))
            }),
            Backend::File => self.runtime.block_on(async {
                let store = self.file_store.as_ref().unwrap();
                let versioned = store.get(name).await.expect("get lease")?;
                Some((versioned.resource_version, versioned.record))
            }),
        }
    }

    pub fn holder(&self, name: &str) -> Option<String> {
        self.get(name).and_then(|(_, spec)| spec.holder_identity)
    }

    /// Write `spec` as another writer would: create, or replace the current version, read again and
    /// retried when a holder's renewal (or a busy lock directory) came in between, as a real writer would.
    pub fn put(&self, name: &str, spec: LeaseSpec) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let attempt = match self.backend {
                Backend::Kube => self.runtime.block_on(async {
                    let api = self.api.as_ref().unwrap();
                    match api.get_opt(name).await.map_err(|err| err.to_string())? {
                        None => {
                            let lease = Lease {
                                metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
                                spec: Some(spec.clone()),
                            };
                            api.create(&PostParams::default(), &lease).await.map(drop).map_err(|err| err.to_string())
                        }
                        Some(mut lease) => {
                            lease.spec = Some(spec.clone());
                            api.replace(name, &PostParams::default(), &lease)
                                .await
                                .map(drop)
                                .map_err(|err| err.to_string())
                        }
                    }
                }),
                Backend::File => self.runtime.block_on(async {
                    let store = self.file_store.as_ref().unwrap();
                    match store.get(name).await.map_err(|err| err.to_string())? {
                        None => store.create(name, &spec).await.map(drop).map_err(|err| err.to_string()),
                        Some(current) => store
                            .replace(name, &current.resource_version, &spec)
                            .await
                            .map(drop)
                            .map_err(|err| err.to_string()),
                    }
                }),
            };
            match attempt {
                Ok(()) => return,
                Err(err) if Instant::now() < deadline => {
                    eprintln!("put {name}: {err}; again");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(err) => panic!("put {name}: {err}"),
            }
        }
    }

    /// Create `spec` as slot of a semaphore of `slots` (annotated as mpsync annotates its slots and marker).
    pub fn put_slot(&self, name: &str, slots: u32, spec: LeaseSpec) {
        let annotations = [(mpsync::lease::SLOTS_ANNOTATION.to_string(), slots.to_string())].into();
        self.create_with(name, ObjectMeta { annotations: Some(annotations), ..Default::default() }, spec);
    }

    /// Create `spec` with these labels, on either backend.
    pub fn put_labeled(&self, name: &str, labels: &[(&str, &str)], spec: LeaseSpec) {
        let labels = labels.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect();
        self.create_with(name, ObjectMeta { labels: Some(labels), ..Default::default() }, spec);
    }

    /// Create `spec` with `metadata` (labels, annotations), on either backend.
    pub fn create_with(&self, name: &str, metadata: ObjectMeta, spec: LeaseSpec) {
        let metadata = ObjectMeta { name: Some(name.into()), ..metadata };
        match self.backend {
            Backend::Kube => self.create_object(Lease { metadata, spec: Some(spec) }),
            Backend::File => self.runtime.block_on(async {
                let write = mpsync::lease::Write { metadata, record: spec };
                self.file_store.as_ref().unwrap().write(name, &write).await.map(drop).expect("create lease")
            }),
        }
    }

    /// Release the lease as client-go does (`41-client-go-after-release.txt`): holder cleared, duration
    /// 1 s, acquireTime and renewTime now. (A holder cleared alone is an edit by hand, which a waiter that
    /// saw the hold waits out.)
    pub fn release_as_client_go(&self, name: &str) {
        self.edit(name, |spec| {
            let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(k8s_openapi::jiff::Timestamp::now());
            spec.holder_identity = Some(String::new());
            spec.lease_duration_seconds = Some(1);
            spec.acquire_time = Some(now.clone());
            spec.renew_time = Some(now);
        });
    }

    /// Change the lease with `edit` (read-modify-write, retried on conflict).
    pub fn edit(&self, name: &str, edit: impl Fn(&mut LeaseSpec)) {
        for _ in 0..20 {
            let (version, mut spec) = self.get(name).expect("lease exists");
            edit(&mut spec);
            let ok = match self.backend {
                Backend::Kube => self.runtime.block_on(async {
                    let api = self.api.as_ref().unwrap();
                    let mut lease = api.get(name).await.unwrap();
                    if lease.metadata.resource_version.as_deref() != Some(version.as_str()) {
                        return false;
                    }
                    lease.spec = Some(spec);
                    api.replace(name, &PostParams::default(), &lease).await.is_ok()
                }),
                Backend::File => self
                    .runtime
                    .block_on(async { self.file_store.as_ref().unwrap().replace(name, &version, &spec).await.is_ok() }),
            };
            if ok {
                return;
            }
        }
        panic!("could not edit lease {name}");
    }

    /// The lease's metadata as stored now (labels, annotations), on either backend.
    pub fn metadata(&self, name: &str) -> Option<ObjectMeta> {
        match self.backend {
            Backend::Kube => self.get_object(name).map(|lease| lease.metadata),
            Backend::File => self.runtime.block_on(async {
                let versioned = self.file_store.as_ref().unwrap().get(name).await.expect("get lease")?;
                Some(versioned.metadata)
            }),
        }
    }

    /// After `TestApiServer::restore`: versions handed out again up to `known` (other Leases, as any cluster's
    /// other writers hand them out: etcd's revision is global), then `kubectl annotate` of Lease `name`, so that
    /// the restored record comes back at a version past `known`, and no read tells of the restore by its
    /// version (test server only).
    pub fn versions_past(&self, name: &str, known: u64) {
        let server = self.server().expect("the test server");
        let leases = format!("/apis/coordination.k8s.io/v1/namespaces/{}/leases", self.namespace);
        for made in 0..known.saturating_sub(server.resource_version()) {
            let body = format!(r#"{{"metadata":{{"name":"other-{made}"}},"spec":{{}}}}"#);
            let (status, answer) = server.call("POST", &leases, Some(&body));
            assert_eq!(status, 201, "{answer}");
        }
        self.annotate(name, "example.com/touched", Some("by hand"));
        let restored: u64 = self.get(name).expect("the lease").0.parse().unwrap();
        assert!(restored > known, "the restored record at {restored}, not past {known}");
    }

    /// Set (or with `None` remove) an annotation of the Lease, as `kubectl annotate` does
    /// (Kubernetes only).
    pub fn annotate(&self, name: &str, key: &str, value: Option<&str>) {
        self.runtime.block_on(async {
            let api = self.api.as_ref().unwrap();
            for _ in 0..20 {
                let mut lease = api.get(name).await.unwrap();
                let annotations = lease.metadata.annotations.get_or_insert_with(Default::default);
                match value {
                    Some(value) => drop(annotations.insert(key.to_string(), value.to_string())),
                    None => drop(annotations.remove(key)),
                }
                if api.replace(name, &PostParams::default(), &lease).await.is_ok() {
                    return;
                }
            }
            panic!("could not annotate {name}");
        })
    }

    /// The full Lease object (Kubernetes only): for labels, annotations and exact fields.
    pub fn get_object(&self, name: &str) -> Option<Lease> {
        self.runtime.block_on(async { self.api.as_ref().unwrap().get_opt(name).await.unwrap() })
    }

    pub fn create_object(&self, lease: Lease) {
        self.runtime.block_on(async {
            self.api.as_ref().unwrap().create(&PostParams::default(), &lease).await.expect("create lease");
        })
    }

    /// Delete the lease as an operator would: `kubectl delete lease`, or `rm NAME.json`.
    pub fn delete(&self, name: &str) {
        match self.backend {
            Backend::Kube => self.runtime.block_on(async {
                let _ = self.api.as_ref().unwrap().delete(name, &DeleteParams::default()).await;
            }),
            Backend::File => {
                let _ = fs::remove_file(self.lock_dir().join(format!("{name}.json")));
            }
        }
    }

    /// A record another process holds, as client-go writes it.
    pub fn foreign_record(holder: &str, duration_seconds: i32) -> LeaseSpec {
        let now = k8s_openapi::jiff::Timestamp::now();
        let now = k8s_openapi::jiff::Timestamp::from_microsecond(now.as_microsecond()).unwrap();
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(duration_seconds),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// The proxy variables HTTP clients honour, in both cases: tests about proxies set them explicitly.
pub const PROXY_VARIABLES: &[&str] =
    &["HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "no_proxy", "all_proxy"];

/// Remove everything from the environment that could point mpsync at a cluster, send it through a proxy,
/// or change its behaviour.
pub fn scrub(command: &mut Command) {
    // Nor dispositions: a test run started with `&` by a shell without job control ignores SIGINT and
    // SIGQUIT, one under nohup SIGHUP, and mpsync keeps what it inherits ignored. Tests about that set it
    // again themselves (their pre_exec runs after this one).
    // SAFETY: signal(SIG_DFL) is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(command, || {
            for signal in [nix::libc::SIGINT, nix::libc::SIGQUIT, nix::libc::SIGHUP] {
                nix::libc::signal(signal, nix::libc::SIG_DFL);
            }
            Ok(())
        });
    }
    for name in ["KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "POD_NAMESPACE", "POD_NAME"] {
        command.env_remove(name);
    }
    for name in PROXY_VARIABLES {
        command.env_remove(name);
    }
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("MPSYNC_") {
            command.env_remove(name);
        }
    }
}

/// Build the LD_PRELOAD shim `tests/support/NAME.c` into the test's directory; its path.
#[track_caller]
pub fn build_shim(env: &TestEnv, name: &str) -> PathBuf {
    let shim = env.path(&format!("lib{name}.so"));
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/support/{name}.c"));
    let built = Command::new("cc").args(["-shared", "-fPIC", "-o"]).arg(&shim).arg(source).arg("-ldl").status();
    assert!(built.expect("run cc").success(), "cc could not build the shim {name}");
    shim
}

/// tests/support/NAME.c built as a program in the test's directory.
pub fn build_program(env: &TestEnv, name: &str) -> PathBuf {
    let program = env.path(name);
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/support/{name}.c"));
    let built = Command::new("cc").args(["-O2", "-o"]).arg(&program).arg(source).status();
    assert!(built.expect("run cc").success(), "cc could not build the program {name}");
    program
}

/// The wall clock now, to the microsecond (as a Lease holds it).
pub fn now_micros() -> MicroTime {
    let now = k8s_openapi::jiff::Timestamp::now();
    MicroTime(k8s_openapi::jiff::Timestamp::from_microsecond(now.as_microsecond()).unwrap())
}

pub fn temp_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(&format!("mpsync-test-{prefix}")));
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running process with captured output. Dropping it kills it (and its group, if it made one).
pub struct Proc {
    pub child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    started: Instant,
    status: Option<ExitStatus>,
}

pub struct Finished {
    pub status: ExitStatus,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Finished {
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Finished {
        assert_eq!(
            self.code,
            Some(code),
            "exit status {:?}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

impl Proc {
    pub fn spawn(mut command: Command, dir: &Path) -> Proc {
        let id = unique("out");
        let stdout = dir.join(format!("{id}.stdout"));
        let stderr = dir.join(format!("{id}.stderr"));
        command.stdout(fs::File::create(&stdout).unwrap()).stderr(fs::File::create(&stderr).unwrap());
        let child = command.spawn().expect("spawn mpsync");
        Proc { child, stdout, stderr, started: Instant::now(), status: None }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal);
    }

    /// Wait up to `limit` for the process to exit.
    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        if self.status.is_some() {
            return self.status;
        }
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.status = Some(status);
                return self.status;
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait (within PATIENCE) for the exit and collect the output.
    #[track_caller]
    pub fn finish(mut self) -> Finished {
        let Some(status) = self.wait_for(PATIENCE) else {
            let stderr = fs::read_to_string(&self.stderr).unwrap_or_default();
            panic!("mpsync did not exit within {PATIENCE:?}; stderr so far:\n{stderr}");
        };
        Finished {
            status,
            code: status.code().or_else(|| {
                use std::os::unix::process::ExitStatusExt;
                status.signal().map(|s| 128 + s)
            }),
            stdout: fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: fs::read_to_string(&self.stderr).unwrap_or_default(),
            elapsed: self.started.elapsed(),
        }
    }

    /// `wait_for_file`, saying what this process printed (and whether it exited) if the file never comes.
    #[track_caller]
    pub fn wait_for_file(&mut self, path: &Path, needle: &str) -> String {
        let mut contents = String::new();
        if !within_patience(|| {
            contents = fs::read_to_string(path).unwrap_or_default();
            contents.contains(needle)
        }) {
            let status = self.child.try_wait().ok().flatten();
            panic!(
                "timed out after {PATIENCE:?} waiting for {} to contain {needle:?}; the process: {}; its stderr:\n{}",
                path.display(),
                status.map_or("running".to_string(), |status| status.to_string()),
                self.stderr()
            );
        }
        contents
    }

    /// Wait (within PATIENCE) until this process has logged `needle`. Its log lines reach stderr through a
    /// thread of their own (see `src/logging.rs`), so a line logged before an answer may be written after it:
    /// never assert on a running process's stderr at once.
    #[track_caller]
    pub fn wait_for_log(&self, needle: &str) {
        if !within_patience(|| self.stderr().contains(needle)) {
            panic!("timed out after {PATIENCE:?} waiting for the log to say {needle:?}; stderr:\n{}", self.stderr());
        }
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() && self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Wait (within PATIENCE) until `condition` holds, polling every 10 ms: waiting for an event, with a
/// generous limit, never a fixed sleep.
#[track_caller]
pub fn wait_until(what: &str, condition: impl FnMut() -> bool) {
    assert!(within_patience(condition), "timed out after {PATIENCE:?} waiting for {what}");
}

/// Whether `condition` comes true within PATIENCE, polled every 10 ms.
pub fn within_patience(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Wait until `path` exists and contains `needle`; return its contents.
#[track_caller]
pub fn wait_for_file(path: &Path, needle: &str) -> String {
    let mut contents = String::new();
    wait_until(&format!("{} to contain {needle:?}", path.display()), || {
        contents = fs::read_to_string(path).unwrap_or_default();
        contents.contains(needle)
    });
    contents
}

/// Whether process `pid` holds an exclusive flock on `path` (as the file backend's writers hold their
/// lock directory for the few milliseconds of a write), by /proc/locks. Only `path`'s (by its inode): a
/// lock shows the pid of the process that took it, and on a busy machine PIDs come round again (32768
/// here), so another file's lock, taken by a process long gone whose descriptor lives on in a child,
/// can carry the same pid.
pub fn holds_flock(pid: i32, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(metadata) = fs::metadata(path) else { return false };
    let (pid, inode) = (pid.to_string(), format!(":{}", metadata.ino()));
    fs::read_to_string("/proc/locks").unwrap_or_default().lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&"FLOCK")
            && fields.get(3) == Some(&"WRITE")
            && fields.get(4) == Some(&pid.as_str())
            && fields.get(5).is_some_and(|file| file.ends_with(&inode))
    })
}

/// Whether a process with this pid is alive (zombies count as dead).
pub fn alive(pid: i32) -> bool {
    // Bytes, not a string: a command name need not be UTF-8.
    match fs::read(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let after_name = stat.rsplit(|&b| b == b')').next().unwrap_or(&[]);
            after_name.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|&state| state != b'Z')
        }
        Err(_) => false,
    }
}

/// Read a pid written by a child script.
#[track_caller]
pub fn read_pid(path: &Path) -> i32 {
    let text = wait_for_file(path, "\n");
    text.trim().lines().last().unwrap().trim().parse().unwrap()
}

/// Nanoseconds since the epoch: children stamp their start and end with `date +%s%N` (same host,
/// one clock).
pub fn epoch_nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

/// Parse a log of lines `WORD NANOS [TOKEN]` as written by `stamp_script`.
pub fn read_stamps(path: &Path) -> Vec<(String, u128, Option<i64>)> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let word = parts.next()?.to_string();
            let nanos = parts.next()?.parse().ok()?;
            let token = parts.next().and_then(|t| t.parse().ok());
            Some((word, nanos, token))
        })
        .collect()
}

/// A shell loop that waits until `gate` exists (the test creates it to let a child finish).
pub fn until_exists(gate: &Path) -> String {
    format!("while [ ! -e {} ]; do sleep 0.05; done", gate.display())
}

/// A child script that appends `start NANOS TOKEN` to `log`, runs `body`, then appends `end NANOS TOKEN`.
pub fn stamp_script(log: &Path, body: &str) -> String {
    let log = log.display();
    format!(
        "echo start $(date +%s%N) $MPSYNC_FENCING_TOKEN >> {log}; {body}; echo end $(date +%s%N) $MPSYNC_FENCING_TOKEN >> {log}"
    )
}

/// The most children that ran at once, from a log of `start`/`end` stamps.
pub fn max_concurrency(log: &Path) -> usize {
    let mut events: Vec<(u128, i32)> =
        read_stamps(log).into_iter().map(|(word, nanos, _)| (nanos, if word == "start" { 1 } else { -1 })).collect();
    // At equal times count ends first: touching intervals do not overlap.
    events.sort_by_key(|&(nanos, delta)| (nanos, delta));
    let (mut running, mut most) = (0i32, 0i32);
    for (_, delta) in events {
        running += delta;
        most = most.max(running);
    }
    most as usize
}

/// A child script that stamps its start, runs until SIGTERM, then uses `drain` seconds of its grace (as a
/// draining worker would) before it stamps its end and exits.
pub fn draining_script(log: &Path, drain: &str) -> String {
    let log = log.display();
    format!(
        "echo start $(date +%s%N) $MPSYNC_FENCING_TOKEN >> {log}; \
         trap 'sleep {drain}; echo end $(date +%s%N) $MPSYNC_FENCING_TOKEN >> {log}; exit 0' TERM; \
         while :; do sleep 0.05; done"
    )
}

/// A TCP port on 127.0.0.1 free now, for a process to listen on. Drawn below the ephemeral range
/// (/proc/sys/net/ipv4/ip_local_port_range, 32768 up), which the outgoing connections of every test share:
/// a port the kernel handed out for `bind(":0")`, then closed, could be taken by one of those before the
/// process listened on it (a run failed so: "Address already in use").
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    loop {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(COUNTER.fetch_add(1, Ordering::SeqCst));
        let port = 20_000 + (hasher.finish() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
