//! The static executable in an empty root file system, as in a `scratch` image: no C library, no
//! /etc beyond the files a test puts there. Each test chroots into a directory holding `/mpsync`
//! and only what the case needs, and runs `mpsync lock NAME -- /mpsync --version` there.
//!
//! The static executable is built once per test run with `-C target-feature=+crt-static`, in its own
//! target directory (`target/static-test`, debug profile, at low CPU priority so that it does not
//! starve the tests running beside it), unless `MPSYNC_TEST_STATIC_BIN` names one already built (such
//! as `target/x86_64-unknown-linux-gnu/release/mpsync` from `cargo build-static`).
//! Where the machine cannot chroot (not root), the tests say that they skipped, and why.

use std::ffi::CString;
use std::fs;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::apiserver::{KubeconfigOptions, Trust};
use crate::support::*;

const TARGET: &str = "x86_64-unknown-linux-gnu";

/// The static mpsync, built once; Err says why there is none.
fn static_binary() -> Result<PathBuf, String> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("MPSYNC_TEST_STATIC_BIN") {
                return Ok(PathBuf::from(path));
            }
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let target_dir = std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| root.join("target"), PathBuf::from)
                .join("static-test");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut build = if Command::new("nice").arg("true").status().is_ok_and(|s| s.success()) {
                let mut nice = Command::new("nice");
                nice.args(["-n", "19"]).arg(cargo);
                nice
            } else {
                Command::new(cargo)
            };
            build
                .current_dir(root)
                .args(["build", "--locked", "--bin", "mpsync", "--target", TARGET, "--target-dir"])
                .arg(&target_dir)
                // With --target, RUSTFLAGS reach mpsync and its dependencies, not build scripts or
                // proc-macros (which must stay dynamic).
                .env("RUSTFLAGS", "-C target-feature=+crt-static")
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .env_remove("CARGO_BUILD_TARGET")
                // No debug info: a smaller executable, built and linked sooner.
                .env("CARGO_PROFILE_DEV_DEBUG", "0")
                .stdin(Stdio::null());
            let started = Instant::now();
            let output = build.output().map_err(|err| format!("cannot run cargo: {err}"))?;
            if !output.status.success() {
                return Err(format!("building the static mpsync failed:\n{}", String::from_utf8_lossy(&output.stderr)));
            }
            eprintln!("built the static mpsync in {:.0?} into {}", started.elapsed(), target_dir.display());
            Ok(target_dir.join(TARGET).join("debug").join("mpsync"))
        })
        .clone()
}

/// An empty root with `/mpsync` in it; None (the test skips, saying why) where chroot is impossible.
struct Root {
    dir: PathBuf,
}

impl Root {
    fn new(env: &TestEnv) -> Option<Root> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: chroot into an empty root needs root (CAP_SYS_CHROOT); this test runs as a user");
            return None;
        }
        let binary = static_binary().unwrap_or_else(|why| panic!("{why}"));
        let dir = env.path(&env.lease_name("root"));
        fs::create_dir_all(&dir).unwrap();
        fs::copy(&binary, dir.join("mpsync")).unwrap();
        fs::set_permissions(dir.join("mpsync"), fs::Permissions::from_mode(0o755)).unwrap();
        let root = Root { dir };
        let mut probe = root.command(&["--version"]);
        match probe.output() {
            Ok(out) if out.status.success() => Some(root),
            Ok(out) => panic!(
                "the static mpsync does not run in an empty root (is it static?): {:?}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(err) => {
                eprintln!("skipped: cannot chroot into {}: {err}", root.dir.display());
                None
            }
        }
    }

    /// Put a file at `path` (absolute, inside the root).
    fn put(&self, path: &str, contents: &str) {
        let file = self.dir.join(path.trim_start_matches('/'));
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(file, contents).unwrap();
    }

    /// `/mpsync ARGS` inside the root, with an empty environment.
    fn command(&self, args: &[&str]) -> Command {
        let root = CString::new(self.dir.as_os_str().as_bytes()).unwrap();
        let mut command = Command::new("/mpsync");
        command.args(args).env_clear().stdin(Stdio::null());
        // SAFETY: between fork and exec only async-signal-safe system calls run (chroot, chdir), on a
        // C string made before the fork; nothing allocates or takes a lock.
        unsafe {
            command.pre_exec(move || {
                if nix::libc::chroot(root.as_ptr()) != 0 || nix::libc::chdir(c"/".as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
    }

    /// `mpsync lock NAME -- /mpsync --version` in the root with `envs`: what it did.
    fn lock(&self, env: &TestEnv, envs: &[(&str, &str)]) -> Finished {
        let name = env.lease_name("image");
        let mut command = self.command(&["lock", &name, "--", "/mpsync", "--version"]);
        command.envs(envs.iter().copied());
        Proc::spawn(command, &env.dir).finish()
    }
}

#[track_caller]
fn assert_ran_the_child(done: &Finished) {
    done.assert_code(0);
    assert!(done.stdout.starts_with("mpsync "), "the child's output: {:?}\nstderr:\n{}", done.stdout, done.stderr);
}

const KUBECONFIG: &[(&str, &str)] = &[("MPSYNC_KUBECONFIG", "/kubeconfig"), ("MPSYNC_NAMESPACE", "default")];

/// The test server's kubeconfig, with the server named `host` and the certificate checked against
/// `localhost` (which it covers).
fn kubeconfig_naming(env: &TestEnv, host: &str) -> String {
    let server = env.server().unwrap();
    let yaml = server.kubeconfig_yaml("default");
    let by_name = yaml.replace(
        &format!("    server: \"https://{}\"", server.addr()),
        &format!("    tls-server-name: localhost\n    server: \"https://{host}:{}\"", server.addr().port()),
    );
    assert_ne!(by_name, yaml);
    by_name
}

fn test_server() -> Option<TestEnv> {
    if TestEnv::real_cluster() {
        eprintln!("skipped: this test writes kubeconfigs for the test API server");
        return None;
    }
    Some(TestEnv::kube())
}

#[test]
fn static_mpsync_in_an_empty_root_locks_by_ip_and_by_a_host_name_from_etc_hosts() {
    let Some(env) = test_server() else { return };
    let Some(root) = Root::new(&env) else { return };

    root.put("/kubeconfig", &env.server().unwrap().kubeconfig_yaml("default"));
    assert_ran_the_child(&root.lock(&env, KUBECONFIG));

    // By name: without /etc/hosts it does not resolve, with it it does.
    root.put("/kubeconfig", &kubeconfig_naming(&env, "kube-apiserver.mpsync.test"));
    let done = Proc::spawn(
        {
            let mut status = root.command(&["status", "job"]);
            status.envs(KUBECONFIG.iter().copied());
            status
        },
        &env.dir,
    )
    .finish();
    done.assert_code(125);
    assert!(done.stderr.contains("kube-apiserver.mpsync.test"), "{}", done.stderr);
    root.put("/etc/hosts", "127.0.0.1 kube-apiserver.mpsync.test\n");
    assert_ran_the_child(&root.lock(&env, KUBECONFIG));
}

#[test]
fn static_mpsync_in_an_empty_root_needs_no_ca_bundle_when_the_kubeconfig_settles_trust() {
    let Some(env) = test_server() else { return };
    let Some(root) = Root::new(&env) else { return };
    let server = env.server().unwrap();
    root.put("/ca.crt", &server.ca_pem());
    for trust in [Trust::CaData, Trust::CaFile("/ca.crt".into()), Trust::InsecureSkipTlsVerify] {
        root.put("/kubeconfig", &server.kubeconfig_yaml_with(&KubeconfigOptions::new("default").trust(trust)));
        assert_ran_the_child(&root.lock(&env, KUBECONFIG));
    }

    // A kubeconfig that names no CA needs the system's bundle: there is none here, and the error says
    // what to do.
    root.put("/kubeconfig", &server.kubeconfig_yaml_with(&KubeconfigOptions::new("default").trust(Trust::SystemRoots)));
    let done = root.lock(&env, KUBECONFIG);
    done.assert_code(125);
    for needle in ["names no certificate authority", "certificate-authority-data", "/etc/ssl/certs/ca-certificates.crt"]
    {
        assert!(done.stderr.contains(needle), "{needle:?} missing in:\n{}", done.stderr);
    }
    assert!(done.stderr.trim().lines().count() <= 2, "{}", done.stderr);
    // With the bundle mounted where distributions keep it, the same kubeconfig works.
    root.put("/etc/ssl/certs/ca-certificates.crt", &server.ca_pem());
    assert_ran_the_child(&root.lock(&env, KUBECONFIG));
}

#[test]
fn static_mpsync_in_an_empty_root_in_a_pod_needs_only_the_service_account_files() {
    let Some(env) = test_server() else { return };
    let Some(root) = Root::new(&env) else { return };
    let server = env.server().unwrap();
    let account = "/var/run/secrets/kubernetes.io/serviceaccount";
    root.put(&format!("{account}/ca.crt"), &server.ca_pem());
    root.put(&format!("{account}/token"), "not-a-real-token");
    root.put(&format!("{account}/namespace"), "default");
    let port = server.addr().port().to_string();
    let pod = [("KUBERNETES_SERVICE_HOST", "127.0.0.1"), ("KUBERNETES_SERVICE_PORT", port.as_str())];
    assert_ran_the_child(&root.lock(&env, &pod));
    // A namespace file that ends in a newline, trimmed as client-go trims it.
    root.put(&format!("{account}/namespace"), "default\n");
    assert_ran_the_child(&root.lock(&env, &pod));
    // Found by review: without a namespace file (a projected volume of one's own, of the token and the
    // CA), kube's in-cluster configuration fails; client-go needs none. The namespace is then
    // `POD_NAMESPACE`, `--namespace`, or `default`.
    std::fs::remove_file(root.dir.join(format!("{account}/namespace").trim_start_matches('/'))).unwrap();
    assert_ran_the_child(&root.lock(&env, &pod));
    let mut named = pod.to_vec();
    named.push(("POD_NAMESPACE", "default"));
    assert_ran_the_child(&root.lock(&env, &named));
    // A CA that is not one is named.
    root.put(&format!("{account}/ca.crt"), "not a certificate\n");
    let done = root.lock(&env, &pod);
    done.assert_code(125);
    assert!(done.stderr.contains("ca.crt"), "{}", done.stderr);
    assert!(done.stderr.trim().lines().count() <= 2, "{}", done.stderr);
}

/// In a pod, a `$KUBECONFIG` that names a file is the user's choice of cluster: when it is unusable,
/// mpsync says so rather than lock on the pod's own cluster through its service account. A broken
/// `~/.kube/config` is passed over for a working service account; without one, both reasons are given.
#[test]
fn in_a_pod_an_unusable_kubeconfig_named_by_kubeconfig_is_never_passed_over_for_the_service_account() {
    let Some(env) = test_server() else { return };
    let server = env.server().unwrap();
    let port = server.addr().port().to_string();
    let pod = |extra: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
        let mut envs = vec![("KUBERNETES_SERVICE_HOST", "127.0.0.1"), ("KUBERNETES_SERVICE_PORT", port.as_str())];
        envs.extend_from_slice(extra);
        envs
    };
    let failed = |done: &Finished, expected: &[&str]| {
        done.assert_code(125);
        for needle in expected {
            assert!(done.stderr.contains(needle), "{needle:?} missing in:\n{}", done.stderr);
        }
        assert!(done.stderr.trim().lines().count() <= 2, "{}", done.stderr);
    };

    // Without the service account's files: a ~/.kube/config that holds nothing usable (no current
    // context) and the account, both named.
    let Some(bare) = Root::new(&env) else { return };
    bare.put("/home/.kube/config", "");
    let done = bare.lock(&env, &pod(&[("HOME", "/home")]));
    failed(&done, &["cannot use ~/.kube/config", "nor the pod's service account"]);
    // With the account's CA and namespace but no token (which kube reads only when it first asks):
    // the same, the token named.
    let account = "/var/run/secrets/kubernetes.io/serviceaccount";
    bare.put(&format!("{account}/ca.crt"), &server.ca_pem());
    bare.put(&format!("{account}/namespace"), "default");
    let done = bare.lock(&env, &pod(&[("HOME", "/home")]));
    failed(&done, &["cannot use ~/.kube/config", "nor the pod's service account", "token"]);
    let done = bare.lock(&env, &pod(&[]));
    failed(&done, &["cannot use the pod's service account", "token", "automountServiceAccountToken"]);
    // A broken ~/.kube/config is named, never passed over, as for kubectl.
    bare.put("/home/.kube/config", "{ not: [ a kubeconfig");
    let done = bare.lock(&env, &pod(&[("HOME", "/home")]));
    failed(&done, &["cannot use ~/.kube/config"]);
    assert!(!done.stderr.contains("service account"), "{}", done.stderr);

    let Some(root) = Root::new(&env) else { return };
    root.put(&format!("{account}/ca.crt"), &server.ca_pem());
    root.put(&format!("{account}/token"), "not-a-real-token");
    root.put(&format!("{account}/namespace"), "default");
    root.put("/broken", "{ not: [ a kubeconfig");
    root.put("/empty", "");
    // A kubeconfig that parses but cannot be used: a CA that is not one.
    let bad_ca: Vec<String> = server
        .kubeconfig_yaml("default")
        .lines()
        .map(|line| match line.split_once("certificate-authority-data: ") {
            Some((indent, _)) => format!("{indent}certificate-authority-data: bm90IGEgY2VydGlmaWNhdGU="),
            None => line.to_string(),
        })
        .collect();
    root.put("/bad-ca", &bad_ca.join("\n"));
    root.put("/home/.kube/config", "{ not: [ a kubeconfig");
    // Only a current context, which names none: kubectl says the context was not found.
    root.put("/current-only", "current-context: prod\n");
    // Files that are there but cannot be read are not missing: a loop of links, and a path under a file.
    std::os::unix::fs::symlink("loop", root.dir.join("loop")).unwrap();
    std::os::unix::fs::symlink("/nowhere", root.dir.join("dangling")).unwrap();
    for (kubeconfig, expected) in [
        ("/broken", "cannot use $KUBECONFIG (/broken)"),
        ("/bad-ca", "certificate-authority-data"),
        ("/loop", "cannot use $KUBECONFIG (/loop)"),
        ("/broken/config", "cannot use $KUBECONFIG (/broken/config)"),
        ("/current-only", "prod"),
    ] {
        let done = root.lock(&env, &pod(&[("KUBECONFIG", kubeconfig)]));
        failed(&done, &[expected]);
        assert!(!done.stderr.contains("service account"), "{}", done.stderr);
    }
    // A broken ~/.kube/config too, in a pod as anywhere (kube's `Config::infer` would pass it over).
    let done = root.lock(&env, &pod(&[("HOME", "/home")]));
    failed(&done, &["cannot use ~/.kube/config"]);
    assert!(!done.stderr.contains("service account"), "{}", done.stderr);
    // Passed over, as kubectl passes them over: a $KUBECONFIG whose files are missing (a dangling link
    // too) or empty, and an empty ~/.kube/config.
    assert_ran_the_child(&root.lock(&env, &pod(&[("KUBECONFIG", "/missing")])));
    assert_ran_the_child(&root.lock(&env, &pod(&[("KUBECONFIG", "/dangling")])));
    assert_ran_the_child(&root.lock(&env, &pod(&[("KUBECONFIG", "/empty")])));
    root.put("/empty-home/.kube/config", "");
    assert_ran_the_child(&root.lock(&env, &pod(&[("HOME", "/empty-home")])));
    // A $KUBECONFIG of only separators names no file: ~/.kube/config is not read (here one whose server
    // is closed), and the service account is used.
    let closed = server.kubeconfig_yaml("default").replace(&server.addr().to_string(), "127.0.0.1:1");
    root.put("/closed/.kube/config", &closed);
    assert_ran_the_child(&root.lock(&env, &pod(&[("HOME", "/closed"), ("KUBECONFIG", ":")])));
    // Without $KUBECONFIG it is read: the closed server.
    let mut status = root.command(&["status", "job"]);
    status.envs(pod(&[("HOME", "/closed")]));
    let done = Proc::spawn(status, &env.dir).finish();
    done.assert_code(125);
    assert!(done.stderr.contains("127.0.0.1:1"), "{}", done.stderr);
}

/// The namespace, as client-go picks it (found by review: a kubeconfig without a namespace gave
/// `default` in a pod, and `POD_NAMESPACE` beat the context's namespace): the context's; in a pod,
/// `POD_NAMESPACE`, then the service account's, also under a kubeconfig that names none; else `default`.
#[test]
fn the_namespace_is_client_gos_the_contexts_then_in_a_pod_the_pods() {
    let Some(env) = test_server() else { return };
    let server = env.server().unwrap();
    let port = server.addr().port().to_string();
    let Some(root) = Root::new(&env) else { return };
    let account = "/var/run/secrets/kubernetes.io/serviceaccount";
    root.put(&format!("{account}/ca.crt"), &server.ca_pem());
    root.put(&format!("{account}/token"), "not-a-real-token");
    root.put(&format!("{account}/namespace"), "sa-ns\n");
    let with_namespace = server.kubeconfig_yaml("kc-ns");
    let without: String =
        with_namespace.lines().filter(|line| !line.contains("namespace:")).map(|l| format!("{l}\n")).collect();
    assert_ne!(without, with_namespace);
    root.put("/with", &with_namespace);
    root.put("/without", &without);
    let pod = [("KUBERNETES_SERVICE_HOST", "127.0.0.1"), ("KUBERNETES_SERVICE_PORT", port.as_str())];
    let namespace_of = |envs: &[(&str, &str)]| -> String {
        let mut status = root.command(&["status", "job"]);
        status.envs(envs.iter().copied());
        let done = Proc::spawn(status, &env.dir).finish();
        let out = format!("{}{}", done.stdout, done.stderr);
        ["kc-ns", "sa-ns", "pod-ns", "default", "other"]
            .into_iter()
            .find(|ns| out.contains(&format!("{ns}/job")) || out.contains(&format!("namespace \"{ns}\"")))
            .unwrap_or_else(|| panic!("no namespace found in: {out}"))
            .to_string()
    };
    type Case<'a> = (&'a [(&'a str, &'a str)], bool, &'a str);
    let cases: [Case; 7] = [
        (&[("KUBECONFIG", "/without")], true, "sa-ns"),
        (&[("KUBECONFIG", "/without"), ("POD_NAMESPACE", "pod-ns")], true, "pod-ns"),
        (&[("KUBECONFIG", "/with"), ("POD_NAMESPACE", "pod-ns")], true, "kc-ns"),
        (&[("POD_NAMESPACE", "pod-ns")], true, "pod-ns"),
        (&[], true, "sa-ns"),
        (&[("KUBECONFIG", "/without"), ("POD_NAMESPACE", "pod-ns")], false, "default"),
        (&[("KUBECONFIG", "/with"), ("MPSYNC_NAMESPACE", "other")], true, "other"),
    ];
    for (envs, in_pod, expected) in cases {
        let mut all: Vec<(&str, &str)> = envs.to_vec();
        if in_pod {
            all.extend_from_slice(&pod);
        }
        assert_eq!(namespace_of(&all), expected, "with {all:?}");
    }
    // An empty MPSYNC_NAMESPACE is unset, as kubectl's `-n ""`.
    let mut all = vec![("KUBECONFIG", "/with"), ("MPSYNC_NAMESPACE", "")];
    all.extend_from_slice(&pod);
    assert_eq!(namespace_of(&all), "kc-ns");
    // One that is not a name is refused, and where it came from is said.
    let mut status = root.command(&["status", "job"]);
    status.envs([("KUBECONFIG", "/without"), ("POD_NAMESPACE", "Bad_NS")]).envs(pod);
    let done = Proc::spawn(status, &env.dir).finish();
    done.assert_code(125);
    assert!(done.stderr.contains("POD_NAMESPACE") && done.stderr.contains("Bad_NS"), "{}", done.stderr);
    assert_eq!(done.stderr.trim().lines().count(), 1, "{}", done.stderr);
}

#[test]
fn static_mpsync_in_an_empty_root_uses_the_file_backend() {
    let env = TestEnv::file();
    let Some(root) = Root::new(&env) else { return };
    assert_ran_the_child(&root.lock(&env, &[("MPSYNC_BACKEND", "file")]));
    // The default lock directory, created inside the root.
    let lock_dir = root.dir.join("tmp/mpsync-0");
    assert!(lock_dir.is_dir(), "no {}", lock_dir.display());
}

/// A DNS server on `127.0.0.153:53` (UDP) that knows one name: A queries for it get 127.0.0.1, other
/// queries for it an empty answer, other names NXDOMAIN. Records the names asked for.
struct Dns {
    asked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

const DNS_ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 153);

impl Dns {
    fn start(known: &str) -> std::io::Result<Dns> {
        let socket = UdpSocket::bind((DNS_ADDRESS, 53))?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let (asked, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let known = known.to_ascii_lowercase();
        {
            let (asked, stop) = (Arc::clone(&asked), Arc::clone(&stop));
            thread::spawn(move || {
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::SeqCst) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                    if let Some((name, answer)) = Dns::answer(&buf[..n], &known) {
                        asked.lock().unwrap().push(name);
                        let _ = socket.send_to(&answer, from);
                    }
                }
            });
        }
        Ok(Dns { asked, stop })
    }

    /// The answer to one query: (the name asked for, the response).
    fn answer(query: &[u8], known: &str) -> Option<(String, Vec<u8>)> {
        let mut at = 12;
        let mut labels = Vec::new();
        loop {
            let length = usize::from(*query.get(at)?);
            at += 1;
            if length == 0 {
                break;
            }
            labels.push(String::from_utf8_lossy(query.get(at..at + length)?).to_ascii_lowercase());
            at += length;
        }
        let question_end = at + 4;
        let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
        let name = labels.join(".");
        let (rcode, answers) = match (name == known, qtype) {
            (true, 1) => (0u8, 1u8),
            (true, _) => (0, 0),
            (false, _) => (3, 0),
        };
        let mut response = vec![query[0], query[1], 0x81, 0x80 | rcode, 0, 1, 0, answers, 0, 0, 0, 0];
        response.extend_from_slice(query.get(12..question_end)?);
        if answers == 1 {
            // The name (a pointer to the question's), A, IN, TTL 60, 4 bytes: 127.0.0.1.
            response.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]);
        }
        Some((name, response))
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[test]
fn static_mpsync_in_an_empty_root_resolves_host_names_through_dns() {
    let Some(env) = test_server() else { return };
    let Some(root) = Root::new(&env) else { return };
    let name = "kube-apiserver.dns.mpsync.test";
    let dns = match Dns::start(name) {
        Ok(dns) => dns,
        Err(err) => {
            eprintln!("skipped: cannot serve DNS on {DNS_ADDRESS}:53: {err}");
            return;
        }
    };
    root.put("/etc/resolv.conf", &format!("nameserver {DNS_ADDRESS}\noptions timeout:2 attempts:3\n"));
    root.put("/kubeconfig", &kubeconfig_naming(&env, name));
    assert_ran_the_child(&root.lock(&env, KUBECONFIG));
    assert!(dns.asked().iter().any(|asked| asked == name), "{:?}", dns.asked());
}
