//! How mpsync connects to the API server: TLS trust exactly as the kubeconfig asks, proxies as kubectl
//! honours them, TCP_NODELAY on every connection, and an outage logged without flooding stderr.
//!
//! These tests write their own kubeconfigs for the test API server, so they skip against a real
//! cluster.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;

use crate::support::apiserver::{ClientKey, KubeconfigOptions, RequestLog, Trust};
use crate::support::connect_proxy::ConnectProxy;
use crate::support::proxy::FaultProxy;
use crate::support::*;

/// A test environment on the test API server; None (the test skips) against a real cluster.
fn test_server() -> Option<TestEnv> {
    if TestEnv::real_cluster() {
        eprintln!("skipped: this test writes kubeconfigs for the test API server");
        return None;
    }
    Some(TestEnv::kube())
}

/// Write `yaml` as a kubeconfig in the test's directory.
fn write_kubeconfig(env: &TestEnv, yaml: &str) -> PathBuf {
    let path = env.path(&env.lease_name("kubeconfig"));
    fs::write(&path, yaml).unwrap();
    path
}

/// `mpsync ARGS` with `kubeconfig` and nothing else inherited (no proxy variables either).
fn mpsync_with(env: &TestEnv, kubeconfig: &PathBuf, args: &[&str]) -> Command {
    let mut command = env.mpsync(args);
    command.env("MPSYNC_KUBECONFIG", kubeconfig);
    command
}

fn run(env: &TestEnv, command: Command) -> Finished {
    Proc::spawn(command, &env.dir).finish()
}

#[track_caller]
fn assert_failure(done: &Finished, code: i32, expected: &[&str]) {
    done.assert_code(code);
    for needle in expected {
        assert!(done.stderr.contains(needle), "expected {needle:?} in stderr:\n{}", done.stderr);
    }
    assert!(!done.stderr.contains("panicked"), "{}", done.stderr);
    // The final error is one or two lines (log lines start with their timestamp).
    let error_lines = done.stderr.lines().filter(|line| !line.starts_with("20")).count();
    assert!(error_lines <= 2, "error longer than two lines:\n{}", done.stderr);
}

/// The test server's kubeconfig with the server named `0.0.0.0` (which reaches this host), the
/// certificate checked against `127.0.0.1`: a server address that is not loopback, so that kubectl's
/// rules send it through `HTTPS_PROXY` (they never proxy loopback or localhost).
fn not_loopback_kubeconfig(env: &TestEnv) -> String {
    let yaml = env.server().unwrap().kubeconfig_yaml("default");
    let replaced = yaml
        .replace("    server: \"https://127.0.0.1:", "    tls-server-name: 127.0.0.1\n    server: \"https://0.0.0.0:");
    assert_ne!(replaced, yaml, "the kubeconfig's server line changed:\n{yaml}");
    replaced
}

fn port(env: &TestEnv) -> u16 {
    env.server().unwrap().addr().port()
}

// ---------------------------------------------------------------------------------------------
// TLS trust
// ---------------------------------------------------------------------------------------------

/// `SSL_CERT_FILE` and `SSL_CERT_DIR` pointing at nothing: any load of the system's CA certificates
/// finds none and fails.
fn without_system_certificates(command: &mut Command, env: &TestEnv) {
    command.env("SSL_CERT_FILE", env.path("no-such-bundle.pem")).env("SSL_CERT_DIR", env.path("no-such-dir"));
}

#[test]
fn ca_data_ca_file_and_insecure_work_without_any_system_certificates() {
    let Some(env) = test_server() else { return };
    let server = env.server().unwrap();
    let ca_file = env.path("ca.crt");
    fs::write(&ca_file, server.ca_pem()).unwrap();
    for trust in [Trust::CaData, Trust::CaFile(ca_file.clone()), Trust::InsecureSkipTlsVerify] {
        let kubeconfig = write_kubeconfig(
            &env,
            &server.kubeconfig_yaml_with(&KubeconfigOptions::new("default").trust(trust.clone())),
        );
        let name = env.lease_name("trust");
        let mut command = mpsync_with(&env, &kubeconfig, &["lock", &name, "--", "true"]);
        without_system_certificates(&mut command, &env);
        let done = run(&env, command);
        assert_eq!(done.code, Some(0), "{trust:?}: {}", done.stderr);
    }
}

#[test]
fn without_a_ca_the_system_certificates_are_trusted_and_their_absence_says_how_to_fix_it() {
    let Some(env) = test_server() else { return };
    let server = env.server().unwrap();
    let kubeconfig = write_kubeconfig(
        &env,
        &server.kubeconfig_yaml_with(&KubeconfigOptions::new("default").trust(Trust::SystemRoots)),
    );
    let name = env.lease_name("system");

    let mut command = mpsync_with(&env, &kubeconfig, &["lock", &name, "--", "true"]);
    without_system_certificates(&mut command, &env);
    let done = run(&env, command);
    assert_failure(&done, 125, &["names no certificate authority", "certificate-authority-data", "SSL_CERT_FILE"]);
    assert_eq!(server.count("get") + server.count("list"), 0, "no request without trust");

    // The system's bundle, as SSL_CERT_FILE names it, is what is trusted then.
    let bundle = env.path("bundle.pem");
    fs::write(&bundle, server.ca_pem()).unwrap();
    let mut command = mpsync_with(&env, &kubeconfig, &["lock", &name, "--", "true"]);
    command.env("SSL_CERT_FILE", &bundle);
    run(&env, command).assert_code(0);
}

/// A configuration file that never ends (`/dev/zero` given as the kubeconfig, the CA, a client key, a token
/// file: a typo, a template gone wrong) is a clear error, exit 125, not a read for ever that fills memory.
#[test]
fn a_configuration_file_that_never_ends_is_an_error() {
    let Some(env) = test_server() else { return };
    let server = env.server().unwrap();
    let done = run(&env, mpsync_with(&env, &PathBuf::from("/dev/zero"), &["status", "x"]));
    assert_failure(&done, 125, &["/dev/zero", "more than 16 MiB"]);
    // A regular file past the cap (sparse here), as kube would read whole (found by review, rv282).
    let huge = env.path("huge-kubeconfig");
    fs::File::create(&huge).unwrap().set_len(17 << 20).unwrap();
    let done = run(&env, mpsync_with(&env, &huge, &["status", "x"]));
    assert_failure(&done, 125, &["huge-kubeconfig", "more than 16 MiB"]);
    let options = KubeconfigOptions::new("default").trust(Trust::CaFile(PathBuf::from("/dev/zero")));
    let kubeconfig = write_kubeconfig(&env, &server.kubeconfig_yaml_with(&options));
    assert_failure(
        &run(&env, mpsync_with(&env, &kubeconfig, &["status", "x"])),
        125,
        &["/dev/zero", "more than 16 MiB"],
    );
    let yaml = server.kubeconfig_yaml("default");
    for user in ["tokenFile: /dev/zero", "client-certificate: /dev/zero\n    client-key: /dev/zero"] {
        let kubeconfig = write_kubeconfig(&env, &yaml.replace("  user: {}", &format!("  user:\n    {user}")));
        let done = run(&env, mpsync_with(&env, &kubeconfig, &["status", "x"]));
        assert_failure(&done, 125, &["/dev/zero", "more than 16 MiB"]);
    }
}

/// Found by review (helper-165): a kubeconfig that starts with a UTF-16 byte-order mark and has an odd
/// number of bytes (cut short) made kube panic (exit 101), for every command and the library.
#[test]
fn a_utf16_kubeconfig_cut_short_is_an_error_not_a_panic() {
    let Some(env) = test_server() else { return };
    let kubeconfig = env.path("utf16-cut");
    for bytes in [&[0xFF, 0xFE, 0x00][..], &[0xFE, 0xFF, 0x00, 0x61, 0x00]] {
        std::fs::write(&kubeconfig, bytes).unwrap();
        for args in [&["lock", "x", "--", "true"][..], &["status", "x"]] {
            let done = run(&env, mpsync_with(&env, &kubeconfig, args));
            assert_failure(&done, 125, &["UTF-16", "odd number of bytes"]);
        }
    }
    // Through a pipe (`--kubeconfig <(vault ...)`), read once (found by review, helper-173: it panicked so).
    let mut command = std::process::Command::new("bash");
    let mpsync = env!("CARGO_BIN_EXE_mpsync");
    command.args(["-c", &format!("{mpsync} status x --kubeconfig <(printf '\\xff\\xfeabc')")]);
    scrub(&mut command);
    assert_failure(&run(&env, command), 125, &["UTF-16", "odd number of bytes"]);
    // And one that is fine is used as a file would be: the test server answers.
    let yaml = env.server().unwrap().kubeconfig_yaml("default");
    std::fs::write(env.path("ok.yaml"), &yaml).unwrap();
    let mut command = std::process::Command::new("bash");
    command.args(["-c", &format!("{mpsync} status x --kubeconfig <(cat {})", env.path("ok.yaml").display())]);
    scrub(&mut command);
    let done = run(&env, command);
    assert!(done.stderr.contains("not found") || done.code == Some(0), "{:?}\n{}", done.code, done.stderr);
}

#[test]
fn a_bad_ca_file_is_an_error_naming_it() {
    let Some(env) = test_server() else { return };
    let server = env.server().unwrap();
    let key_only = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
    let broken = server.ca_pem().replacen("MII", "AAA", 1);
    for (file_name, contents, expected) in [
        ("missing.crt", None, "cannot read certificate-authority"),
        ("key-only.crt", Some(key_only.to_string()), "holds no certificate"),
        ("broken.crt", Some(broken), "not a usable CA certificate"),
        ("garbage.crt", Some("-----BEGIN CERTIFICATE-----\n%%%\n-----END CERTIFICATE-----\n".to_string()), "PEM"),
    ] {
        let path = env.path(file_name);
        if let Some(contents) = contents {
            fs::write(&path, contents).unwrap();
        }
        let options = KubeconfigOptions::new("default").trust(Trust::CaFile(path.clone()));
        let kubeconfig = write_kubeconfig(&env, &server.kubeconfig_yaml_with(&options));
        let done = run(&env, mpsync_with(&env, &kubeconfig, &["lock", "job", "--", "true"]));
        assert_failure(&done, 125, &[&path.display().to_string(), expected]);
    }
    assert!(server.requests().is_empty(), "a bad CA is found before any request");
}

#[test]
fn bad_ca_data_is_an_error_naming_it() {
    let Some(env) = test_server() else { return };
    let server = env.server().unwrap();
    let good = base64::engine::general_purpose::STANDARD.encode(server.ca_pem());
    let not_pem = base64::engine::general_purpose::STANDARD.encode("hello\n");
    for (data, expected) in [("c29tZS=bad", "is not base64"), (not_pem.as_str(), "holds no certificate")] {
        let yaml = server.kubeconfig_yaml("default").replace(&good, data);
        let kubeconfig = write_kubeconfig(&env, &yaml);
        let done = run(&env, mpsync_with(&env, &kubeconfig, &["status", "job"]));
        assert_failure(&done, 125, &["certificate-authority-data of cluster \"test-apiserver\"", expected]);
    }
}

#[test]
fn a_server_signed_by_another_ca_is_refused() {
    let Some(env) = test_server() else { return };
    let other = crate::support::apiserver::TestApiServer::start();
    let yaml =
        other.kubeconfig_yaml("default").replace(&other.addr().to_string(), &env.server().unwrap().addr().to_string());
    let kubeconfig = write_kubeconfig(&env, &yaml);
    let done = run(&env, mpsync_with(&env, &kubeconfig, &["status", "job"]));
    assert_failure(&done, 125, &["certificate"]);
    assert!(env.server().unwrap().requests().is_empty());
}

#[test]
fn a_client_certificate_in_the_kubeconfig_authenticates_every_request() {
    let Some(env) = test_server() else { return };
    let server = env.server().unwrap();
    server.require_client_certificate(true);
    for key in ClientKey::ALL {
        let options = KubeconfigOptions::new("default").client_certificate(key);
        let kubeconfig = write_kubeconfig(&env, &server.kubeconfig_yaml_with(&options));
        let name = env.lease_name("cert");
        let from = server.requests().len();
        for args in [&["lock", &name, "--", "true"][..], &["status", &name]] {
            let done = run(&env, mpsync_with(&env, &kubeconfig, args));
            assert_eq!(done.code, Some(0), "{key:?} {args:?}: {}", done.stderr);
        }
        let requests = &server.requests()[from..];
        assert!(requests.len() >= 4, "{requests:?}");
        assert!(requests.iter().all(|r| r.client_certificate == Some(key) && r.status != 401), "{key:?}: {requests:?}");
    }
    // The same server without the certificate: 401, as a cluster that allows no anonymous request says.
    let kubeconfig = write_kubeconfig(&env, &server.kubeconfig_yaml("default"));
    let done = run(&env, mpsync_with(&env, &kubeconfig, &["lock", "job", "--", "true"]));
    assert_failure(&done, 125, &["401"]);
    // A certificate another CA signed: 401 too, from the request, not a failed handshake to retry (as
    // kube-apiserver takes any certificate in the handshake and refuses it per request).
    let other = crate::support::apiserver::TestApiServer::start();
    let foreign = other.kubeconfig_yaml_with(&KubeconfigOptions::new("default").client_certificate(ClientKey::Ec));
    let ours = server.kubeconfig_yaml("default");
    let cluster_of = |yaml: &str| yaml.split("users:").next().unwrap().to_string();
    let kubeconfig = write_kubeconfig(&env, &foreign.replace(&cluster_of(&foreign), &cluster_of(&ours)));
    for require in [true, false] {
        server.require_client_certificate(require);
        let done = run(&env, mpsync_with(&env, &kubeconfig, &["lock", "job", "--timeout", "60s", "--", "true"]));
        assert_failure(&done, 125, &["401"]);
    }
}

#[test]
fn a_bad_client_certificate_or_key_is_an_error_naming_them() {
    let Some(env) = test_server() else { return };
    let server = env.server().unwrap();
    let yaml = server.kubeconfig_yaml_with(&KubeconfigOptions::new("default").client_certificate(ClientKey::Rsa));
    let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let key_line = format!("    client-key-data: {}", encode(ClientKey::Rsa.key_pem()));
    assert!(yaml.contains(&key_line), "{yaml}");
    let missing = env.path("no-such-key.pem");
    for (line, expected) in [
        // Another certificate's key, valid on its own.
        (format!("    client-key-data: {}", encode(ClientKey::Ec.key_pem())), "not the client certificate's own"),
        (format!("    client-key-data: {}", encode("hello\n")), "no unencrypted private key"),
        ("    client-key-data: c29tZS=bad".to_string(), "client-key-data is not base64"),
        (format!("    client-key: {}", missing.display()), "no-such-key.pem"),
        // The key where the certificate should be: no certificate.
        (format!("{key_line}\n    client-certificate-data: {}", encode(ClientKey::Rsa.key_pem())), "no certificate"),
        // The certificate with two bytes after its DER, which kubectl refuses too.
        (format!("{key_line}\n    client-certificate-data: {}", encode(&trailing_bytes(&yaml))), "cannot be used"),
    ] {
        let mut broken = yaml.replace(&key_line, &line);
        if line.contains("client-certificate-data") {
            // Only the new certificate line: the issued one goes.
            let issued = yaml.lines().find(|l| l.trim_start().starts_with("client-certificate-data")).unwrap();
            broken = broken.replace(&format!("{issued}\n"), "");
        }
        let kubeconfig = write_kubeconfig(&env, &broken);
        let done = run(&env, mpsync_with(&env, &kubeconfig, &["status", "job"]));
        assert_failure(&done, 125, &["the client certificate and key of user \"test-user\" in", expected]);
        assert!(!done.stderr.contains("certificate-authority"), "the CA is not to blame:\n{}", done.stderr);
    }
    assert!(server.requests().is_empty(), "a bad key is found before any request");
}

/// The kubeconfig's client certificate with two bytes more after its DER, as PEM.
fn trailing_bytes(yaml: &str) -> String {
    let line = yaml.lines().find(|l| l.trim_start().starts_with("client-certificate-data")).unwrap();
    let base64 = base64::engine::general_purpose::STANDARD;
    let pem = String::from_utf8(base64.decode(line.split(": ").nth(1).unwrap()).unwrap()).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let mut der = base64.decode(body).unwrap();
    der.extend([0x05, 0x00]);
    format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", base64.encode(der))
}

#[test]
fn a_client_certificate_from_an_exec_plugin_authenticates_and_a_bad_one_names_the_plugin() {
    let Some(env) = test_server() else { return };
    let server = env.server().unwrap();
    server.require_client_certificate(true);
    let with_cert = server.kubeconfig_yaml_with(&KubeconfigOptions::new("default").client_certificate(ClientKey::Ec));
    let data = |field: &str| {
        let line = with_cert.lines().find(|l| l.trim_start().starts_with(field)).unwrap();
        let decoded = base64::engine::general_purpose::STANDARD.decode(line.split(": ").nth(1).unwrap()).unwrap();
        String::from_utf8(decoded).unwrap()
    };
    let cert = data("client-certificate-data");
    for (key, works) in [(ClientKey::Ec.key_pem(), true), (ClientKey::Rsa.key_pem(), false)] {
        let credential = env.path(&env.lease_name("credential"));
        let status = serde_json::json!({ "clientCertificateData": cert, "clientKeyData": key });
        let json = serde_json::json!({
            "apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential", "status": status
        });
        fs::write(&credential, json.to_string()).unwrap();
        let plugin = env.path(&env.lease_name("plugin.sh"));
        fs::write(&plugin, format!("#!/bin/sh\ncat {}\n", credential.display())).unwrap();
        fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let exec = format!(
            "  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: {}\n      \
             interactiveMode: Never\n",
            plugin.display()
        );
        let yaml = server.kubeconfig_yaml("default").replace("  user: {}\n", &exec);
        let kubeconfig = write_kubeconfig(&env, &yaml);
        let done = run(&env, mpsync_with(&env, &kubeconfig, &["status", "job"]));
        if works {
            done.assert_code(0);
        } else {
            assert_failure(&done, 125, &["the exec plugin of user \"test-user\"", "clientKeyData"]);
        }
    }
    // A user with a client certificate of its own and an exec plugin: the plugin is not run (client-go
    // does not run it), so one that fails does not matter.
    let plugin = env.path("failing-plugin.sh");
    let ran = env.path("failing-plugin-ran");
    fs::write(&plugin, format!("#!/bin/sh\ntouch {}\nexit 3\n", ran.display())).unwrap();
    fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let exec = format!(
        "\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: {}\n      \
         interactiveMode: Never",
        plugin.display()
    );
    let key_line = with_cert.lines().find(|l| l.trim_start().starts_with("client-key-data")).unwrap();
    let kubeconfig = write_kubeconfig(&env, &with_cert.replace(key_line, &format!("{key_line}{exec}")));
    run(&env, mpsync_with(&env, &kubeconfig, &["status", "job"])).assert_code(0);
    assert!(!ran.exists(), "the exec plugin ran");
}

/// An executable shell script in the test's directory.
fn write_plugin(env: &TestEnv, body: &str) -> PathBuf {
    let plugin = env.path(&env.lease_name("plugin.sh"));
    fs::write(&plugin, format!("#!/bin/sh\n{body}")).unwrap();
    fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    plugin
}

/// A kubeconfig for the test server whose user's only credential is the exec plugin `plugin`.
fn exec_kubeconfig(env: &TestEnv, plugin: &std::path::Path) -> PathBuf {
    let exec = format!(
        "  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: {}\n      \
         interactiveMode: Never\n",
        plugin.display()
    );
    write_kubeconfig(env, &env.server().unwrap().kubeconfig_yaml("default").replace("  user: {}\n", &exec))
}

/// The shell line that prints a plugin's answer (inside single quotes: `'"$x"'` puts a variable in): the
/// token, and its expiration timestamp, if any.
fn token_answer(token: &str, expires: Option<&str>) -> String {
    let expiry = expires.map_or(String::new(), |at| format!(",\"expirationTimestamp\":\"{at}\""));
    format!(
        "echo '{{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\
         \"status\":{{\"token\":\"{token}\"{expiry}}}}}'\n"
    )
}

/// A plugin whose every run is counted in `runs` and answers the token `tok-N` (N: the run's number),
/// after the shell lines `before`; with `life`, the token expires that many seconds (a shell word) on.
fn numbered_plugin(env: &TestEnv, runs: &std::path::Path, before: &str, life: Option<&str>) -> PathBuf {
    let expiry =
        life.map_or(String::new(), |life| format!("at=$(date -u -d \"+{life} seconds\" +%Y-%m-%dT%H:%M:%SZ)\n"));
    let answer = token_answer("tok-'\"$n\"'", life.map(|_| "'\"$at\"'"));
    write_plugin(
        env,
        &format!("echo run >> {runs}\nn=$(wc -l < {runs})\n{before}{expiry}{answer}", runs = runs.display()),
    )
}

/// kube ran a token plugin twice before the first request (once for TLS, once for the token): mpsync runs
/// it once, and its token goes with every request.
#[test]
fn an_exec_plugin_runs_once_and_its_token_authenticates_every_request() {
    let Some(env) = test_server() else { return };
    let server = env.server().unwrap();
    server.accept_token(Some("tok-a"));
    let runs = env.path("plugin-runs");
    let plugin = write_plugin(&env, &format!("echo run >> {}\n{}", runs.display(), token_answer("tok-a", None)));
    let kubeconfig = exec_kubeconfig(&env, &plugin);
    let name = env.lease_name("exec-token");
    let start = server.requests().len();
    run(&env, mpsync_with(&env, &kubeconfig, &["lock", &name, "--", "true"])).assert_code(0);
    assert_eq!(fs::read_to_string(&runs).unwrap().lines().count(), 1, "the plugin ran more than once");
    let requests = &server.requests()[start..];
    assert!(requests.iter().any(|r| r.verb == "update" || r.verb == "create"), "{requests:?}");
    assert!(requests.iter().all(|r| r.bearer.as_deref() == Some("tok-a") && r.status != 401), "{requests:?}");

    // A token the server refuses is a 401 naming the credentials, at once (no retries).
    server.accept_token(Some("another"));
    let done = run(&env, mpsync_with(&env, &kubeconfig, &["lock", &name, "--", "true"]));
    assert_failure(&done, 125, &["401 Unauthorized"]);
}

/// A plugin that fails once its token has expired (a login it cannot renew): the holder's renewals are
/// not sent, and its log says so, not "outcome unknown" (it was known: nothing reached the server); the
/// lease is lost at the renew deadline and the child stopped (exit 123), as with the server unreachable.
/// The failing plugin is not run for every retried request.
#[test]
fn a_holder_whose_plugin_gives_no_token_says_its_renewals_were_not_sent() {
    let Some(env) = test_server() else { return };
    let runs = env.path("plugin-runs");
    // The first run's token lives 3 s (2 to 3, to the second); every later run fails.
    let plugin = numbered_plugin(&env, &runs, "[ \"$n\" -gt 1 ] && { echo 'no login' >&2; exit 1; }\n", Some("3"));
    let kubeconfig = exec_kubeconfig(&env, &plugin);
    let name = env.lease_name("exec-gone");
    let done = run(&env, mpsync_with(&env, &kubeconfig, &fast(&["lock", &name], &["sleep", "60"])));
    done.assert_code(123);
    assert!(done.stderr.contains("not sent"), "{}", done.stderr);
    assert!(!done.stderr.contains("outcome unknown"), "{}", done.stderr);
    // Run again at most once a second, not for every retried request (about ten a second).
    let runs = fs::read_to_string(&runs).unwrap().lines().count();
    assert!(runs <= 8, "the plugin ran {runs} times in {:?}", done.elapsed);
}

/// A token the server refuses (revoked, or expired early by the server's clock) is asked for again at
/// once, and the request sent again with the new one: neither a first read nor a holder's renewal fails
/// for it (a 401 is final otherwise, exit 125).
#[test]
fn a_refused_exec_token_is_asked_for_again_and_the_request_sent_again() {
    let Some(env) = test_server() else { return };
    let server = env.server().unwrap();
    let runs = env.path("plugin-runs");
    // Each run's token is numbered.
    let plugin = numbered_plugin(&env, &runs, "", None);
    let kubeconfig = exec_kubeconfig(&env, &plugin);
    let count = || fs::read_to_string(&runs).map_or(0, |text| text.lines().count());
    // `status`: its one read is refused with the first token, then answered with the second.
    server.accept_token(Some("tok-2"));
    let name = env.lease_name("exec-refused");
    let start = server.requests().len();
    run(&env, mpsync_with(&env, &kubeconfig, &["status", &name])).assert_code(0);
    assert_eq!(count(), 2);
    let statuses: Vec<(Option<String>, u16)> =
        server.requests()[start..].iter().map(|r| (r.bearer.clone(), r.status)).collect();
    assert_eq!(statuses, [(Some("tok-1".to_string()), 401), (Some("tok-2".to_string()), 404)], "{statuses:?}");

    // A holder whose token the server stops taking while the child runs: its renewals go on with the next.
    let _ = fs::remove_file(&runs);
    server.accept_token(Some("tok-1"));
    let done_file = env.path("child-done");
    let child = format!("while [ ! -e {} ]; do sleep 0.1; done", done_file.display());
    let held = server.requests().len();
    let proc = Proc::spawn(mpsync_with(&env, &kubeconfig, &fast(&["lock", &name], &["sh", "-c", &child])), &env.dir);
    // (The test's own client has no token the server takes now: the server's log says.)
    wait_until("the lease to be held", || {
        server.requests()[held..].iter().any(|r| matches!(r.verb, "create" | "update") && matches!(r.status, 200 | 201))
    });
    server.accept_token(Some("tok-2"));
    let rotated = server.requests().len();
    wait_until("a renewal with the new token", || {
        server.requests()[rotated..]
            .iter()
            .any(|r| r.verb == "update" && r.status == 200 && r.bearer.as_deref() == Some("tok-2"))
    });
    fs::write(&done_file, "").unwrap();
    let done = proc.finish();
    done.assert_code(0);
    assert!(!done.stderr.contains("lost"), "{}", done.stderr);
    assert_eq!(count(), 2);

    // Found by review (helper-70): a plugin that fails when run again after the 401 (a login it cannot ask
    // for) left the 401 unseen, and a waiter retried for ever. The 401 stands: exit 125.
    let failing = write_plugin(
        &env,
        &format!(
            "echo run >> {runs}
[ $(wc -l < {runs}) -ge 2 ] && exit 3
{}",
            token_answer("tok-1", None),
            runs = runs.display()
        ),
    );
    let _ = fs::remove_file(&runs);
    server.accept_token(Some("tok-2"));
    let kubeconfig = exec_kubeconfig(&env, &failing);
    let done = run(&env, mpsync_with(&env, &kubeconfig, &["lock", &env.lease_name("exec-refused"), "--", "true"]));
    done.assert_code(125);
    assert!(done.stderr.contains("401 Unauthorized"), "{}", done.stderr);
    assert_eq!(count(), 2);
}

/// A token that expires is asked for again before it does, while the lease is held; the renewals go on
/// with the new one.
#[test]
fn an_exec_token_is_asked_for_again_before_it_expires() {
    let Some(env) = test_server() else { return };
    let server = env.server().unwrap();
    let runs = env.path("plugin-runs");
    // Each run's token is numbered, and expires two seconds on.
    let plugin = numbered_plugin(&env, &runs, "", Some("2"));
    let kubeconfig = exec_kubeconfig(&env, &plugin);
    let name = env.lease_name("exec-expiry");
    let start = server.requests().len();
    let child = format!("while [ $(wc -l < {}) -lt 3 ]; do sleep 0.1; done", runs.display());
    let done = run(&env, mpsync_with(&env, &kubeconfig, &fast(&["lock", &name], &["sh", "-c", &child])));
    done.assert_code(0);
    let requests = &server.requests()[start..];
    let tokens: Vec<&str> = requests.iter().filter_map(|r| r.bearer.as_deref()).collect();
    assert_eq!(tokens.len(), requests.len(), "a request without the token: {requests:?}");
    assert!(tokens.contains(&"tok-1") && tokens.contains(&"tok-2"), "{tokens:?}");
    // In order: no request goes back to an older token.
    let numbers: Vec<u32> = tokens.iter().map(|t| t.trim_start_matches("tok-").parse().unwrap()).collect();
    assert!(numbers.windows(2).all(|pair| pair[0] <= pair[1]), "{numbers:?}");
}

/// While the plugin runs again for a new token, the renewals go on with the old one, which is still
/// good: a slow plugin does not cost the lease.
#[test]
fn while_the_plugin_runs_again_the_renewals_go_on_with_the_old_token() {
    let Some(env) = test_server() else { return };
    let server = env.server().unwrap();
    let runs = env.path("plugin-runs");
    let release = env.path("plugin-release");
    // The first token lives 20 s (asked for again 10 s before it expires); the second run waits to be
    // released, and its token lives an hour.
    let wait = format!(
        "life=20\nif [ \"$n\" -ge 2 ]; then life=3600; while [ ! -e {} ]; do sleep 0.05; done; fi\n",
        release.display()
    );
    let plugin = numbered_plugin(&env, &runs, &wait, Some("$life"));
    let kubeconfig = exec_kubeconfig(&env, &plugin);
    let name = env.lease_name("exec-slow");
    let done_file = env.path("child-done");
    let start = server.requests().len();
    let child = format!("while [ ! -e {} ]; do sleep 0.1; done", done_file.display());
    let proc = Proc::spawn(mpsync_with(&env, &kubeconfig, &fast(&["lock", &name], &["sh", "-c", &child])), &env.dir);
    wait_until("the plugin's second run", || fs::read_to_string(&runs).is_ok_and(|text| text.lines().count() >= 2));
    let second = server.requests().len();
    let renewed_with = |token: &str, from: usize| {
        server.requests()[from..]
            .iter()
            .any(|r| r.verb == "update" && r.status == 200 && r.bearer.as_deref() == Some(token))
    };
    wait_until("a renewal with the old token while the plugin runs", || renewed_with("tok-1", second));
    fs::write(&release, "").unwrap();
    let third = server.requests().len();
    wait_until("a renewal with the new token", || renewed_with("tok-2", third));
    fs::write(&done_file, "").unwrap();
    proc.finish().assert_code(0);
    let requests = &server.requests()[start..];
    assert!(requests.iter().all(|r| r.bearer.is_some() && r.status != 401), "{requests:?}");
    assert_eq!(fs::read_to_string(&runs).unwrap().lines().count(), 2);
}

/// Found by review (helper-69): a plugin whose start hangs (its exec on a dead mount; an LD_PRELOAD shim
/// makes it hang) hung mpsync past `--timeout` and SIGTERM: giving up on it waited for a lock held across
/// the start. Nothing waits for a start now.
#[test]
fn a_plugin_whose_start_hangs_ends_with_the_timeout_or_a_stop_signal() {
    let Some(env) = test_server() else { return };
    let shim = build_shim(&env, "hangexec");
    let plugin = env.path("hangexec-plugin.sh");
    fs::write(&plugin, format!("#!/bin/sh\n{}", token_answer("tok", None))).unwrap();
    fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let kubeconfig = exec_kubeconfig(&env, &plugin);
    for how in ["--timeout", "SIGTERM"] {
        let name = env.lease_name("exec-start-hangs");
        let mut args = vec!["lock", &name];
        if how == "--timeout" {
            args.extend(["--timeout", "1s"]);
        }
        args.extend(["-vv", "--", "true"]);
        let mut command = mpsync_with(&env, &kubeconfig, &args);
        command.env("LD_PRELOAD", &shim);
        let mut proc = Proc::spawn(command, &env.dir);
        if how == "SIGTERM" {
            wait_until("mpsync to start the plugin", || proc.stderr().contains("running the exec credential plugin"));
            proc.signal(nix::sys::signal::Signal::SIGTERM);
        }
        let status = proc.wait_for(PATIENCE);
        assert!(status.is_some(), "{how}: mpsync hangs");
        let expected = if how == "SIGTERM" { 143 } else { 124 };
        assert_eq!(status.unwrap().code(), Some(expected), "{how}: {}", proc.stderr());
    }
}

/// Found by review: as subreaper, on a kernel that cannot say whose thread's child a process is (no
/// `/proc/*/task/*/children`; an LD_PRELOAD shim hides them), the supervisor took a plugin that had
/// exited, in a process group of its own, for an orphan of the job and reaped it: the plugin's run
/// failed ("No child processes"), exit 125. A plugin is now left to its waiter whatever the kernel says.
#[test]
fn as_subreaper_without_the_children_files_an_exec_plugin_is_left_to_its_waiter() {
    let Some(env) = test_server() else { return };
    let shim = build_shim(&env, "nochildren");
    let runs = env.path("plugin-runs");
    // It answers, and exits while what it started keeps its output open a moment: its zombie waits to be
    // reaped while its output is read.
    let plugin =
        write_plugin(&env, &format!("echo run >> {}\n{}sleep 0.5 &\n", runs.display(), token_answer("tok", None)));
    let kubeconfig = exec_kubeconfig(&env, &plugin);
    for round in 0..3 {
        let name = env.lease_name("exec-subreaper");
        let mut command = mpsync_with(&env, &kubeconfig, &["lock", "--subreaper", &name, "--", "true"]);
        command.env("LD_PRELOAD", &shim);
        let done = run(&env, command);
        assert_eq!(done.code, Some(0), "round {round}: {}", done.stderr);
    }
    assert_eq!(fs::read_to_string(&runs).unwrap().lines().count(), 3);
}

/// A plugin that hangs (a login waiting for a browser, a cloud CLI without network) no longer hangs
/// mpsync: a stop signal or `--timeout` ends the wait, and the plugin, with what it started, is killed.
/// Killed itself (SIGKILL), mpsync takes the plugin with it. The side-car stops on SIGHUP too, as `lock`;
/// `status` and `observe` stop on a signal while the plugin runs, and kill it with what it started.
#[test]
fn a_hanging_exec_plugin_ends_with_a_stop_signal_or_the_timeout_and_is_killed() {
    let Some(env) = test_server() else { return };
    for how in ["SIGTERM", "--timeout", "SIGKILL", "side-car SIGHUP", "status SIGTERM", "observe SIGINT"] {
        let plugin_pid = env.path(&env.lease_name("plugin-pid"));
        let started = env.path(&env.lease_name("sleeper-pid"));
        let plugin = write_plugin(
            &env,
            &format!("echo $$ > {}\nsleep 1000 &\necho $! > {}\nwait\n", plugin_pid.display(), started.display()),
        );
        let kubeconfig = exec_kubeconfig(&env, &plugin);
        let name = env.lease_name("exec-hangs");
        let marker = env.path(&env.lease_name("child-ran"));
        let child = format!("touch {}", marker.display());
        let mut args = vec!["lock", &name];
        if how == "--timeout" {
            args.extend(["--timeout", "1s"]);
        }
        args.extend(["--", "sh", "-c", &child]);
        match how {
            "side-car SIGHUP" => args = vec!["sidecar", "--listen", "127.0.0.1:0"],
            "status SIGTERM" => args = vec!["status", &name],
            "observe SIGINT" => args = vec!["observe", &name],
            _ => {}
        }
        let mut proc = Proc::spawn(mpsync_with(&env, &kubeconfig, &args), &env.dir);
        // With `--timeout`, mpsync may give up before the plugin (slow to start on a loaded machine) has
        // written its pids: they are looked at after the exit, if there are any.
        let pids = || (read_pid(&started), read_pid(&plugin_pid));
        let running = (how != "--timeout").then(pids);
        match how {
            "SIGTERM" | "status SIGTERM" => proc.signal(nix::sys::signal::Signal::SIGTERM),
            "observe SIGINT" => proc.signal(nix::sys::signal::Signal::SIGINT),
            "SIGKILL" => proc.signal(nix::sys::signal::Signal::SIGKILL),
            "side-car SIGHUP" => proc.signal(nix::sys::signal::Signal::SIGHUP),
            _ => {}
        }
        let status = proc.wait_for(PATIENCE);
        assert!(status.is_some(), "{how}: mpsync still waits for the plugin");
        let status = status.unwrap();
        match how {
            "SIGTERM" | "status SIGTERM" => assert_eq!(status.code(), Some(143), "{how}: {}", proc.stderr()),
            "observe SIGINT" => assert_eq!(status.code(), Some(0), "{how}: {}", proc.stderr()),
            "--timeout" => assert_eq!(status.code(), Some(124), "{how}: {}", proc.stderr()),
            "side-car SIGHUP" => assert_eq!(status.code(), Some(129), "{how}: {}", proc.stderr()),
            _ => assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9)),
        }
        assert!(!marker.exists(), "{how}: the child ran");
        assert!(!proc.stderr().contains("panicked"), "{}", proc.stderr());
        let Some((sleeper, plugin)) = running.or_else(|| started.exists().then(pids)) else { continue };
        wait_until("the plugin to be killed", || !alive(plugin));
        if how == "SIGKILL" {
            // What it started is left, as a process mpsync's death cannot reach: the test's to end.
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(plugin), nix::sys::signal::Signal::SIGKILL);
        }
        wait_until("what the plugin started to be killed", || !alive(sleeper));
    }
}

// ---------------------------------------------------------------------------------------------
// TCP_NODELAY
// ---------------------------------------------------------------------------------------------

/// The sockets a process connected to `port`, from an strace log, each with whether TCP_NODELAY was
/// switched on for it before it was closed.
fn sockets_to(trace: &str, port: u16) -> Vec<bool> {
    let mut open: HashMap<String, (bool, bool)> = HashMap::new(); // fd -> (connected to port, nodelay)
    let mut done = Vec::new();
    let target = format!("sin_port=htons({port})");
    let fd_of = |line: &str, call: &str| -> Option<String> {
        let rest = &line[line.find(call)? + call.len()..];
        Some(rest.split([',', ')']).next()?.trim().to_string())
    };
    for line in trace.lines() {
        let call = ["setsockopt(", "socket(", "connect(", "close("].into_iter().find(|call| line.contains(call));
        match call {
            Some("socket(") => {
                let fd = line.rsplit("= ").next().map(str::trim).unwrap_or_default();
                if fd.parse::<i32>().is_ok()
                    && let Some((true, nodelay)) = open.insert(fd.to_string(), (false, false))
                {
                    done.push(nodelay);
                }
            }
            Some(call @ "setsockopt(") if line.contains("TCP_NODELAY, [1]") => {
                if let Some(fd) = fd_of(line, call) {
                    open.entry(fd).or_default().1 = true;
                }
            }
            Some(call @ "connect(") if line.contains(&target) => {
                if let Some(fd) = fd_of(line, call) {
                    open.entry(fd).or_default().0 = true;
                }
            }
            Some(call @ "close(") => {
                if let Some((true, nodelay)) = fd_of(line, call).and_then(|fd| open.remove(&fd)) {
                    done.push(nodelay);
                }
            }
            _ => {}
        }
    }
    done.extend(open.into_values().filter(|(connected, _)| *connected).map(|(_, nodelay)| nodelay));
    done
}

fn strace_available() -> bool {
    let available = Command::new("strace").arg("-V").output().is_ok_and(|out| out.status.success());
    if !available {
        eprintln!("skipped: strace is not installed (apt-get install strace)");
    }
    available
}

/// `command` under `strace -f`, tracing the socket calls into a file; returns the trace.
fn straced(env: &TestEnv, command: Command) -> (Finished, String) {
    let log = env.path(&env.lease_name("strace"));
    let mut traced = Command::new("strace");
    traced.args(["-f", "-e", "trace=socket,connect,setsockopt,close", "-o"]).arg(&log);
    traced.arg(command.get_program()).args(command.get_args());
    traced.env_clear();
    for (key, value) in command.get_envs() {
        if let Some(value) = value {
            traced.env(key, value);
        }
    }
    for key in ["PATH", "HOME"] {
        if let Some(value) = std::env::var_os(key)
            && !command.get_envs().any(|(name, _)| name == key)
        {
            traced.env(key, value);
        }
    }
    traced.stdin(std::process::Stdio::null());
    let done = run(env, traced);
    (done, fs::read_to_string(&log).unwrap_or_default())
}

#[test]
fn every_connection_to_the_api_server_or_a_proxy_has_tcp_nodelay() {
    let Some(env) = test_server() else { return };
    if !strace_available() {
        return;
    }
    let name = env.lease_name("nodelay");
    // A waiter that takes over a lease that expires: several connections (the watch holds one).
    env.put(&name, TestEnv::foreign_record("someone-else", 1));
    let (done, trace) = straced(&env, env.mpsync(["lock", &name, "--", "true"]));
    done.assert_code(0);
    let sockets = sockets_to(&trace, port(&env));
    assert!(!sockets.is_empty(), "no connection to the server in the trace:\n{trace}");
    assert!(sockets.iter().all(|&nodelay| nodelay), "a connection without TCP_NODELAY: {sockets:?}\n{trace}");

    let proxy = ConnectProxy::start();
    let options = KubeconfigOptions::new("default").proxy_url(&proxy.url());
    let kubeconfig = write_kubeconfig(&env, &env.server().unwrap().kubeconfig_yaml_with(&options));
    let (done, trace) = straced(&env, mpsync_with(&env, &kubeconfig, &["status", &name]));
    done.assert_code(0);
    let sockets = sockets_to(&trace, proxy.addr().port());
    assert!(!sockets.is_empty() && sockets.iter().all(|&nodelay| nodelay), "{sockets:?}\n{trace}");
}

/// The library's own client (`mpsync::KubeClientBuilder`, as the `guarded_job` example builds it) sets
/// TCP_NODELAY on every connection too: a waiter's read, its watch, and its acquisition.
#[test]
fn every_connection_of_the_librarys_client_has_tcp_nodelay() {
    let Some(env) = test_server() else { return };
    if !strace_available() {
        return;
    }
    let name = env.lease_name("lib-nodelay");
    env.put(&name, TestEnv::foreign_record("someone-else", 1));
    let ledger = env.path("ledger");
    let mut job = Command::new(crate::library::example("guarded_job"));
    job.arg(&env.kubeconfig).arg(&name).arg(&ledger).arg("1");
    scrub(&mut job);
    let (done, trace) = straced(&env, job);
    done.assert_code(0);
    assert!(fs::read_to_string(&ledger).unwrap().contains("step 1"));
    let sockets = sockets_to(&trace, port(&env));
    assert!(sockets.len() >= 2, "a waiter opens a connection for its watch too: {sockets:?}\n{trace}");
    assert!(sockets.iter().all(|&nodelay| nodelay), "a connection without TCP_NODELAY: {sockets:?}\n{trace}");
}

// ---------------------------------------------------------------------------------------------
// Proxies
// ---------------------------------------------------------------------------------------------

#[test]
fn lock_elect_and_status_work_through_the_kubeconfigs_proxy_url() {
    let Some(env) = test_server() else { return };
    let proxy = ConnectProxy::start();
    let options = KubeconfigOptions::new("default").proxy_url(&proxy.url());
    let kubeconfig = write_kubeconfig(&env, &env.server().unwrap().kubeconfig_yaml_with(&options));
    let name = env.lease_name("via-proxy");
    run(&env, mpsync_with(&env, &kubeconfig, &["lock", &name, "--", "true"])).assert_code(0);
    run(&env, mpsync_with(&env, &kubeconfig, &["elect", &name, "--", "true"])).assert_code(0);
    let status = run(&env, mpsync_with(&env, &kubeconfig, &["status", &name]));
    status.assert_code(0);
    assert!(status.stdout.contains("held:"), "{}", status.stdout);

    let server_target = format!("127.0.0.1:{}", port(&env));
    let requests = proxy.requests();
    assert!(proxy.tunnels() >= 3, "{requests:?}");
    assert!(
        requests.iter().all(|r| r.method == "CONNECT" && r.target == server_target && r.status == 200),
        "{requests:?}"
    );
    // And everything mpsync asked the server came through them.
    assert!(env.holder(&name).is_some());
}

#[test]
fn https_proxy_in_either_case_is_used_for_a_server_that_is_not_loopback() {
    let Some(env) = test_server() else { return };
    let kubeconfig = write_kubeconfig(&env, &not_loopback_kubeconfig(&env));
    for variable in ["HTTPS_PROXY", "https_proxy"] {
        let proxy = ConnectProxy::start();
        let name = env.lease_name("env-proxy");
        let mut command = mpsync_with(&env, &kubeconfig, &["lock", &name, "--", "true"]);
        command.env(variable, proxy.url());
        run(&env, command).assert_code(0);
        let targets = proxy.targets();
        assert!(!targets.is_empty(), "{variable}: nothing went through the proxy");
        assert!(targets.iter().all(|t| *t == format!("0.0.0.0:{}", port(&env))), "{variable}: {targets:?}");
    }
}

#[test]
fn no_proxy_bypasses_the_proxy_by_address_range_port_or_star() {
    let Some(env) = test_server() else { return };
    let kubeconfig = write_kubeconfig(&env, &not_loopback_kubeconfig(&env));
    let proxy = ConnectProxy::start();
    let server_port = port(&env);
    for no_proxy in
        ["0.0.0.0".to_string(), "example.com, 0.0.0.0/8".to_string(), format!("0.0.0.0:{server_port}"), "*".to_string()]
    {
        for variable in ["NO_PROXY", "no_proxy"] {
            let mut command = mpsync_with(&env, &kubeconfig, &["status", "job"]);
            command.env("HTTPS_PROXY", proxy.url()).env(variable, &no_proxy);
            let done = run(&env, command);
            assert_eq!(done.code, Some(0), "{variable}={no_proxy}: {}", done.stderr);
        }
    }
    assert_eq!(proxy.requests(), vec![], "NO_PROXY was not honoured");

    // An entry for another port, or other hosts, does not bypass it.
    let mut command = mpsync_with(&env, &kubeconfig, &["status", "job"]);
    command.env("HTTPS_PROXY", proxy.url()).env("NO_PROXY", "0.0.0.0:1,10.0.0.0/8,.example.com");
    run(&env, command).assert_code(0);
    assert_eq!(proxy.tunnels(), 1);
}

#[test]
fn loopback_servers_do_not_use_the_environments_proxy() {
    let Some(env) = test_server() else { return };
    let proxy = ConnectProxy::start();
    let mut command = env.mpsync(["status", "job"]);
    command.env("HTTPS_PROXY", proxy.url());
    run(&env, command).assert_code(0);
    assert_eq!(proxy.requests(), vec![], "kubectl never proxies 127.0.0.1 or localhost through HTTPS_PROXY");
    // Not even one it could not parse, or blank: it is never looked at (kube's own parse used to refuse it).
    for value in ["%%%", " "] {
        let mut command = env.mpsync(["status", "job"]);
        command.env("HTTPS_PROXY", value);
        run(&env, command).assert_code(0);
    }
}

/// kube's debugging override of the server (`KUBE_RS_DEBUG_OVERRIDE_URL`) on this machine (a local
/// `kubectl proxy`) is reached directly, not through the kubeconfig cluster's proxy-url; any other
/// server still goes through it. The same whether the kubeconfig comes from $KUBECONFIG, `--context`
/// or `--kubeconfig`.
#[test]
fn the_debug_override_url_is_not_reached_through_the_clusters_proxy_when_local() {
    let Some(env) = test_server() else { return };
    let proxy = ConnectProxy::start();
    let options = KubeconfigOptions::new("default").proxy_url(&proxy.url());
    let yaml = env.server().unwrap().kubeconfig_yaml_with(&options);
    // The certificate's name, whatever address the override gives.
    let yaml = yaml.replace("    server: ", "    tls-server-name: 127.0.0.1\n    server: ");
    let kubeconfig = write_kubeconfig(&env, &yaml);
    let kubeconfig = kubeconfig.to_str().unwrap();
    for flags in [&[][..], &["--context", "test"], &["--kubeconfig", kubeconfig]] {
        let status = |override_url: Option<String>| {
            let mut command = env.mpsync(["status", "job"].iter().chain(flags));
            command.env_remove("MPSYNC_KUBECONFIG").env("KUBECONFIG", kubeconfig).env("HOME", env.path("no-home"));
            if let Some(url) = override_url {
                command.env("KUBE_RS_DEBUG_OVERRIDE_URL", url);
            }
            run(&env, command).assert_code(0);
        };
        let tunnels = proxy.tunnels();
        status(None);
        assert!(proxy.tunnels() > tunnels, "{flags:?}: the kubeconfig's proxy-url is used");
        // The same server by another name: a local server, reached directly.
        let tunnels = proxy.tunnels();
        status(Some(format!("https://localhost:{}", port(&env))));
        assert_eq!(proxy.tunnels(), tunnels, "{flags:?}: the override went through the cluster's proxy");
        // An address that is not loopback: through the cluster's proxy, as the server would be.
        let targets = proxy.targets().len();
        status(Some(format!("https://0.0.0.0:{}", port(&env))));
        assert!(proxy.tunnels() > tunnels, "{flags:?}: an override elsewhere bypassed the cluster's proxy");
        let targets = &proxy.targets()[targets..];
        assert!(targets.contains(&format!("0.0.0.0:{}", port(&env))), "{flags:?}: {targets:?}");
    }
}

/// An exec credential plugin that asks for the cluster's details (`provideClusterInfo`) is told the
/// kubeconfig's own proxy-url, or none, whatever proxy the environment names.
#[test]
fn an_exec_plugin_is_told_the_kubeconfigs_own_proxy_url() {
    let Some(env) = test_server() else { return };
    let info = env.path("exec-info");
    let plugin = env.path("plugin.sh");
    fs::write(
        &plugin,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$KUBERNETES_EXEC_INFO\" >> {}\n\
             echo '{{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":{{\"token\":\"t\"}}}}'\n",
            info.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let exec = format!(
        "  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: {}\n      \
         provideClusterInfo: true\n      interactiveMode: Never\n",
        plugin.display()
    );
    let proxy = ConnectProxy::start();
    for proxy_url in [None, Some(proxy.url())] {
        let mut options = KubeconfigOptions::new("default");
        if let Some(url) = &proxy_url {
            options = options.proxy_url(url);
        }
        let yaml = env.server().unwrap().kubeconfig_yaml_with(&options).replace("  user: {}\n", &exec);
        let kubeconfig = write_kubeconfig(&env, &yaml);
        let _ = fs::remove_file(&info);
        let mut command = mpsync_with(&env, &kubeconfig, &["status", "job"]);
        // An environment's proxy (unused: the server is on loopback) is not what the plugin is told.
        command.env("HTTPS_PROXY", "http://203.0.113.1:3128");
        run(&env, command).assert_code(0);
        let told = fs::read_to_string(&info).unwrap();
        assert!(!told.contains("mpsync.invalid") && !told.contains("203.0.113.1"), "{told}");
        match &proxy_url {
            Some(url) => assert!(told.contains(&format!("\"proxy-url\":\"{url}\"")), "{told}"),
            None => assert!(!told.contains("proxy-url\":\""), "{told}"),
        }
    }
}

#[test]
fn proxy_credentials_from_the_url_are_sent_as_basic_authentication() {
    let Some(env) = test_server() else { return };
    let proxy = ConnectProxy::start();
    let url = format!("http://deploy%40ci:s3cr%3At@{}", proxy.addr());
    let options = KubeconfigOptions::new("default").proxy_url(&url);
    let kubeconfig = write_kubeconfig(&env, &env.server().unwrap().kubeconfig_yaml_with(&options));
    run(&env, mpsync_with(&env, &kubeconfig, &["status", "job"])).assert_code(0);
    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("deploy@ci:s3cr:t"));
    let requests = proxy.requests();
    assert!(!requests.is_empty());
    assert!(requests.iter().all(|r| r.proxy_authorization.as_deref() == Some(expected.as_str())), "{requests:?}");
}

/// Found by review (rv267): `status` through a proxy that accepts connections and never answers (a black hole
/// behind a load balancer) said only "timed out after 10s", one run in three: the bound on opening a connection
/// equalled the call's, and the call's came first. The proxy is named, every time (three runs at once).
#[test]
fn a_black_hole_proxy_is_named() {
    let Some(env) = test_server() else { return };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let kept = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&kept);
    thread::spawn(move || listener.incoming().flatten().for_each(|stream| keep.lock().unwrap().push(stream)));
    let options = KubeconfigOptions::new("default").proxy_url(&format!("http://{addr}"));
    let kubeconfig = write_kubeconfig(&env, &env.server().unwrap().kubeconfig_yaml_with(&options));
    let runs: Vec<Proc> =
        (0..3).map(|_| Proc::spawn(mpsync_with(&env, &kubeconfig, &["status", "black-hole"]), &env.dir)).collect();
    for done in runs.into_iter().map(Proc::finish) {
        assert_failure(&done, 125, &[&format!("proxy http://{addr}")]);
    }
}

#[test]
fn a_refusing_proxy_is_named_with_its_answer() {
    let Some(env) = test_server() else { return };
    let proxy = ConnectProxy::start();
    let options = KubeconfigOptions::new("default").proxy_url(&proxy.url());
    let kubeconfig = write_kubeconfig(&env, &env.server().unwrap().kubeconfig_yaml_with(&options));
    let proxy_name = format!("proxy http://{}", proxy.addr());

    proxy.refuse(Some(403));
    // A one-shot read fails at once...
    let done = run(&env, mpsync_with(&env, &kubeconfig, &["status", "job"]));
    assert_failure(&done, 125, &[&proxy_name, "403 Forbidden", "refused to tunnel"]);
    // ...while waiting, it is an outage like any other: logged, retried until --timeout.
    let done = run(&env, mpsync_with(&env, &kubeconfig, &["lock", "job", "--timeout", "2s", "--", "true"]));
    assert_failure(&done, 124, &[&proxy_name, "403 Forbidden", "retrying"]);

    proxy.refuse(Some(407));
    let done = run(&env, mpsync_with(&env, &kubeconfig, &["status", "job"]));
    assert_failure(&done, 125, &[&proxy_name, "requires authentication", "USER:PASSWORD"]);

    proxy.refuse(None);
    run(&env, mpsync_with(&env, &kubeconfig, &["status", "job"])).assert_code(0);
    assert!(!env.server().unwrap().requests().is_empty());
}

#[test]
fn an_unreachable_or_unusable_proxy_is_named() {
    let Some(env) = test_server() else { return };
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let options = KubeconfigOptions::new("default").proxy_url(&format!("http://{closed}"));
    let kubeconfig = write_kubeconfig(&env, &env.server().unwrap().kubeconfig_yaml_with(&options));
    let done = run(&env, mpsync_with(&env, &kubeconfig, &["status", "job"]));
    assert_failure(&done, 125, &[&format!("cannot connect to proxy http://{closed}")]);
    // One it cannot parse is named as the kubeconfig's (kube's own parse did not name it), and one
    // without a scheme, or without a host after it, is refused, as kubectl refuses it (the
    // environment's may leave the scheme out).
    for (value, expected) in [
        ("http://%%%", "not a URL"),
        ("%%%", "no scheme"),
        ("proxy.corp:3128", "no scheme"),
        ("http:/127.0.0.4:4", "no host after its scheme"),
    ] {
        let options = KubeconfigOptions::new("default").proxy_url(value);
        let kubeconfig = write_kubeconfig(&env, &env.server().unwrap().kubeconfig_yaml_with(&options));
        let done = run(&env, mpsync_with(&env, &kubeconfig, &["status", "job"]));
        assert_failure(&done, 125, &[&format!("{value:?}"), "the kubeconfig's proxy-url", expected]);
    }

    let kubeconfig = write_kubeconfig(&env, &not_loopback_kubeconfig(&env));
    for (value, expected) in [
        ("https://127.0.0.1:3128", "does not speak TLS to proxies"),
        ("ftp://x", "unsupported scheme"),
        ("%%%", "not a URL"),
    ] {
        let mut command = mpsync_with(&env, &kubeconfig, &["lock", "job", "--", "true"]);
        command.env("HTTPS_PROXY", value);
        let done = run(&env, command);
        assert_failure(&done, 125, &[value, "HTTPS_PROXY", expected]);
    }
}

/// A SOCKS5 proxy (RFC 1928, no authentication, CONNECT only) that records the targets it was asked
/// for as (address type, host, port) and tunnels blindly. Good enough to show mpsync's handshake.
struct Socks5Proxy {
    addr: SocketAddr,
    targets: Arc<Mutex<Vec<(u8, String, u16)>>>,
}

impl Socks5Proxy {
    fn start() -> Socks5Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let targets = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&targets);
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let recorded = Arc::clone(&recorded);
                thread::spawn(move || {
                    let _ = Socks5Proxy::serve(client, &recorded);
                });
            }
        });
        Socks5Proxy { addr, targets }
    }

    fn serve(mut client: TcpStream, recorded: &Mutex<Vec<(u8, String, u16)>>) -> io::Result<()> {
        let mut head = [0u8; 2];
        client.read_exact(&mut head)?;
        let mut methods = vec![0u8; usize::from(head[1])];
        client.read_exact(&mut methods)?;
        if head[0] != 5 || !methods.contains(&0) {
            return client.write_all(&[5, 0xff]);
        }
        client.write_all(&[5, 0])?;
        let mut request = [0u8; 4];
        client.read_exact(&mut request)?;
        let host = match request[3] {
            1 => {
                let mut ip = [0u8; 4];
                client.read_exact(&mut ip)?;
                Ipv4Addr::from(ip).to_string()
            }
            4 => {
                let mut ip = [0u8; 16];
                client.read_exact(&mut ip)?;
                Ipv6Addr::from(ip).to_string()
            }
            _ => {
                let mut length = [0u8; 1];
                client.read_exact(&mut length)?;
                let mut name = vec![0u8; usize::from(length[0])];
                client.read_exact(&mut name)?;
                String::from_utf8_lossy(&name).into_owned()
            }
        };
        let mut port = [0u8; 2];
        client.read_exact(&mut port)?;
        let port = u16::from_be_bytes(port);
        recorded.lock().unwrap().push((request[3], host.clone(), port));
        let upstream = (host.as_str(), port).to_socket_addrs()?.find_map(|addr| TcpStream::connect(addr).ok());
        let Some(upstream) = upstream else { return client.write_all(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0]) };
        let bound = match upstream.local_addr()?.ip() {
            IpAddr::V4(ip) => ip.octets().to_vec(),
            IpAddr::V6(_) => vec![0; 4],
        };
        client.write_all(&[&[5, 0, 0, 1][..], &bound, &[0, 0]].concat())?;
        let (mut from_client, mut to_upstream) = (client.try_clone()?, upstream.try_clone()?);
        let up = thread::spawn(move || {
            let _ = io::copy(&mut from_client, &mut to_upstream);
            let _ = to_upstream.shutdown(Shutdown::Write);
        });
        let (mut from_upstream, mut to_client) = (upstream, client);
        let _ = io::copy(&mut from_upstream, &mut to_client);
        let _ = to_client.shutdown(Shutdown::Write);
        let _ = up.join();
        Ok(())
    }

    fn targets(&self) -> Vec<(u8, String, u16)> {
        self.targets.lock().unwrap().clone()
    }
}

#[test]
fn socks5_proxies_work_and_resolve_host_names_themselves() {
    let Some(env) = test_server() else { return };
    let socks = Socks5Proxy::start();
    let name = env.lease_name("socks");
    for (localhost, scheme) in [(false, "socks5"), (true, "socks5h")] {
        let mut options = KubeconfigOptions::new("default").proxy_url(&format!("{scheme}://{}", socks.addr));
        if localhost {
            options = options.localhost();
        }
        let kubeconfig = write_kubeconfig(&env, &env.server().unwrap().kubeconfig_yaml_with(&options));
        run(&env, mpsync_with(&env, &kubeconfig, &["lock", &name, "--", "true"])).assert_code(0);
    }
    let targets = socks.targets();
    let server_port = port(&env);
    // By IP: an IPv4 address (type 1). By name: the name itself (type 3), for the proxy to resolve.
    assert!(targets.contains(&(1, "127.0.0.1".to_string(), server_port)), "{targets:?}");
    assert!(targets.contains(&(3, "localhost".to_string(), server_port)), "{targets:?}");
    assert!(targets.iter().all(|(_, _, port)| *port == server_port), "{targets:?}");
}

// ---------------------------------------------------------------------------------------------
// A long outage
// ---------------------------------------------------------------------------------------------

/// The lines of `stderr` containing `needle`.
fn count(stderr: &str, needle: &str) -> usize {
    stderr.lines().filter(|line| line.contains(needle)).count()
}

#[test]
fn a_long_outage_logs_the_first_failure_then_at_most_one_line_per_30_seconds_and_the_recovery() {
    let Some(env) = test_server() else { return };
    let proxy = FaultProxy::start(&env.server().unwrap().addr().to_string());
    let kubeconfig =
        write_kubeconfig(&env, &proxy.kubeconfig_through(&env.server().unwrap().kubeconfig_yaml("default")));
    let name = env.lease_name("outage");
    proxy.partition();

    // -vv: the repeated failures show as debug lines, so the test can see that they keep happening.
    let head: Vec<&str> = vec!["-vv", "lock", &name, "--timeout", "120s"];
    let mut waiter = Proc::spawn(mpsync_with(&env, &kubeconfig, &fast(&head, &["true"])), &env.dir);
    wait_until("the first failure to be logged", || waiter.stderr().contains("failed; retrying"));
    let first_failure = Instant::now();
    // An outage of 12 s or more, with many failed attempts in it: a waiter retries about every
    // second with these timings.
    wait_until("a dozen seconds of failed attempts", || {
        first_failure.elapsed() >= Duration::from_secs(12) && count(&waiter.stderr(), "failed again") >= 5
    });
    let during = waiter.stderr();
    proxy.heal();
    proxy.drop_connections();
    let status = waiter.wait_for(PATIENCE);
    let stderr = waiter.stderr();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{stderr}");

    // The first failure of each kind of call at WARN, then nothing more at WARN within 30 s.
    let warnings: Vec<&str> = during.lines().filter(|line| line.contains(" WARN ")).collect();
    for what in ["calling the API server", "watching the lease"] {
        let lines = warnings.iter().filter(|line| line.contains(what)).count();
        assert!(lines <= 1, "{what}: {lines} WARN lines in {:?}:\n{during}", first_failure.elapsed());
    }
    assert!(!warnings.is_empty() && warnings.len() <= 2, "{during}");
    assert_eq!(count(&during, "still retrying"), 0, "a repeat line before 30 s:\n{during}");
    assert!(count(&during, "failed again") >= 5, "{during}");
    // And a line when it works again.
    assert!(count(&stderr, "works again after") >= 1, "{stderr}");
}

/// Found by review (helper-80): a `server` without a scheme (`127.0.0.1:6443`, which kubectl and
/// client-go accept) made kube panic at the first request (in a release build, an abort). As client-go
/// does, it gets `https://` when the kubeconfig has a CA (and `http://` when it has nothing of TLS).
#[test]
fn a_server_without_a_scheme_gets_https_as_client_go_gives_it() {
    let Some(env) = test_server() else { return };
    let server = env.server().unwrap();
    let yaml = server.kubeconfig_yaml("default").replace(&server.url(), &server.addr().to_string());
    assert!(!yaml.contains("https://"), "{yaml}");
    let kubeconfig = write_kubeconfig(&env, &yaml);
    let name = env.lease_name("noscheme");
    run(&env, mpsync_with(&env, &kubeconfig, &["lock", &name, "--", "true"])).assert_code(0);
    let done = run(&env, mpsync_with(&env, &kubeconfig, &["status", &name, "-o", "json"]));
    done.assert_code(0);
    assert!(done.stdout.contains("\"exists\":true"), "{}", done.stdout);
}

/// Found by review (helper-80): a server URL that can never work (another scheme, no host) was a
/// configuration error for `status` but a failure `lock` retried for ever. It is one for every command,
/// at once, and the message leaves out the password the URL carries (helper-81).
#[test]
fn a_server_url_that_can_never_work_is_a_configuration_error() {
    let Some(env) = test_server() else { return };
    for server in ["ftp://user:s3cret@127.0.0.1:1", "/api"] {
        let kubeconfig = write_kubeconfig(
            &env,
            &format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: k\n  cluster: {{server: \"{server}\"}}\n\
                 contexts:\n- name: c\n  context: {{cluster: k, user: u}}\nusers:\n- name: u\n  user: {{}}\n"
            ),
        );
        for args in [&["lock", "x", "--", "true"][..], &["status", "x"]] {
            let done = run(&env, mpsync_with(&env, &kubeconfig, args));
            assert_failure(&done, 125, &["cannot use the API server URL"]);
            assert!(done.stderr.lines().count() <= 2, "{}", done.stderr);
            // Never the password a URL carries.
            assert!(!done.stderr.contains("s3cret"), "{}", done.stderr);
        }
    }
}

/// Found by review (helper-164): a server URL, or a proxy URL, whose port is beyond 65535 was read as having
/// none: mpsync connected to the scheme's default port (443, 80) while its messages named the one written,
/// and `lock` waited for ever. kubectl refuses such a URL; so does mpsync, at once.
#[test]
fn a_port_beyond_65535_is_a_configuration_error() {
    let Some(env) = test_server() else { return };
    let yaml = env.server().unwrap().kubeconfig_yaml("default");
    let port = env.server().unwrap().addr().port();
    // Port 0 too, which no connection reaches: it was retried as an outage (found by review, helper-179).
    for bad in ["99999", "0"] {
        let bad_server = yaml.replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{bad}"));
        assert_ne!(bad_server, yaml);
        let bad_proxy = not_loopback_kubeconfig(&env)
            .replace("server:", &format!("proxy-url: http://127.0.0.1:{bad}\n    server:"));
        for (yaml, expected) in [(bad_server, "cannot use the API server URL"), (bad_proxy, "unusable proxy")] {
            let kubeconfig = write_kubeconfig(&env, &yaml);
            for args in [&["lock", "x", "--", "true"][..], &["status", "x"]] {
                let done = run(&env, mpsync_with(&env, &kubeconfig, args));
                assert_failure(&done, 125, &[expected, "its port is not a port"]);
            }
        }
    }
}

/// Found by review (helper-179): an empty `certificate-authority-data`, `certificate-authority` or
/// `tokenFile` is none for client-go (`len(...) > 0`), as an empty `token` or `client-key` already was for
/// mpsync; templated kubeconfigs write them so (`certificate-authority-data: "${CA}"`). mpsync exited 125
/// ("cannot read certificate-authority /dir/: Is a directory", kube having made "" the kubeconfig's
/// directory).
#[test]
fn an_empty_ca_or_token_file_counts_as_unset_as_for_kubectl() {
    let Some(env) = test_server() else { return };
    let server = env.server().unwrap();
    let ca_file = env.path("ca.crt");
    fs::write(&ca_file, server.ca_pem()).unwrap();
    let base = server.kubeconfig_yaml("default");
    let data_line = base.lines().find(|line| line.contains("certificate-authority-data:")).unwrap().to_string();
    let indent = &data_line[..data_line.len() - data_line.trim_start().len()];
    let ca_file_line = format!("{indent}certificate-authority: {}", ca_file.display());
    let cases = [
        base.replace(&data_line, &format!("{indent}certificate-authority-data: \"\"\n{ca_file_line}")),
        base.replace(&data_line, &format!("{data_line}\n{indent}certificate-authority: \"\"")),
        base.replace("user: {}", "user: {tokenFile: \"\"}"),
        // Alone: the system's roots, which SSL_CERT_FILE makes the test CA.
        base.replace(&data_line, &format!("{indent}certificate-authority: \"\"")),
        base.replace(&data_line, &format!("{indent}certificate-authority-data: \"  \"")),
    ];
    for yaml in cases {
        assert_ne!(yaml, base);
        let kubeconfig = write_kubeconfig(&env, &yaml);
        let mut command = mpsync_with(&env, &kubeconfig, &["status", "x"]);
        command.env("SSL_CERT_FILE", &ca_file);
        let done = run(&env, command);
        assert_eq!(done.code, Some(0), "{yaml}\n{}", done.stderr);
    }
}

/// Found by review (helper-164): a bearer token an HTTP header cannot carry (`token: |` above the token
/// keeps its line break; a control character) made kube's auth layer panic: exit 101, for `lock`,
/// `status` and `observe` alike, and in the library. It is a configuration error, as for kubectl.
#[test]
fn a_token_with_a_line_break_is_a_configuration_error_not_a_panic() {
    let Some(env) = test_server() else { return };
    let yaml = env.server().unwrap().kubeconfig_yaml("default");
    assert!(yaml.contains("  user: {}\n"), "{yaml}");
    for token in ["    token: |\n      tok-static\n", "    token: \"tok\\u0007bell\"\n"] {
        let kubeconfig = write_kubeconfig(&env, &yaml.replace("  user: {}\n", &format!("  user:\n{token}")));
        for args in [&["lock", "x", "--", "true"][..], &["status", "x"], &["observe", "x"]] {
            let done = run(&env, mpsync_with(&env, &kubeconfig, args));
            assert_failure(&done, 125, &["cannot use the token of", "line break"]);
        }
    }
}

/// Found by review (helper-85): `--timeout 0` (one attempt, as `--no-wait`) waited for a hanging exec
/// plugin until a signal came, where `--timeout 1ms` ended with 124. With one attempt, setting up the
/// client is bounded by four lease durations (16 s here), then it is a failure (125), not a conflict: a
/// CronJob's `--conflict-exit-code 0` must not hide it (helper-86).
#[test]
fn one_attempt_bounds_a_hanging_plugin_too() {
    let Some(env) = test_server() else { return };
    let plugin = write_plugin(&env, "exec sleep 1000\n");
    let kubeconfig = exec_kubeconfig(&env, &plugin);
    for one_attempt in [&["--timeout", "0"][..], &["--no-wait"]] {
        let name = env.lease_name("exec-hangs-once");
        let head = [&["lock", name.as_str(), "--conflict-exit-code", "0"][..], one_attempt].concat();
        let done = run(&env, mpsync_with(&env, &kubeconfig, &fast(&head, &["true"])));
        assert_failure(&done, 125, &["the client could not be set up within 16s"]);
    }
}

/// Found by review (helper-86): with one attempt, a slow but working exec plugin (5 s, longer than the
/// 4 s lease duration) was cut short and reported as "not acquired" (with `--conflict-exit-code 0`,
/// exit 0 without the child). It is waited for.
#[test]
fn one_attempt_waits_for_a_slow_but_working_plugin() {
    let Some(env) = test_server() else { return };
    let plugin = write_plugin(&env, &format!("sleep 5\n{}", token_answer("t", None)));
    let kubeconfig = exec_kubeconfig(&env, &plugin);
    let name = env.lease_name("exec-slow-once");
    let ran = env.path("ran-slow-once");
    let args =
        fast(&["lock", name.as_str(), "--no-wait", "--conflict-exit-code", "0"], &["touch", ran.to_str().unwrap()]);
    let done = run(&env, mpsync_with(&env, &kubeconfig, &args));
    assert!(done.code == Some(0) && ran.exists(), "exit {:?}, child ran: {}\n{}", done.code, ran.exists(), done.stderr);
}

/// An exec plugin, at the first run and at a later one while a child runs, starts with no signal blocked
/// or ignored: mpsync ignored SIGXFSZ (its own writes past a `ulimit -f`), and a plugin inherited that
/// (a plugin that writes its cache past the limit went on with EFBIG instead of the default end).
#[test]
fn an_exec_plugin_starts_with_no_signal_blocked_or_ignored() {
    let Some(env) = test_server() else { return };
    let runs = env.path("plugin-runs");
    let masks = env.path("plugin-masks");
    // Read by the shell itself, with builtins: a child (grep) reading its parent's status could catch it
    // in the moment dash blocks every signal around a vfork.
    let before = format!(
        "while read -r field value; do case $field in SigBlk:|SigIgn:) echo \"$field $value\" >> {};; esac; done < /proc/$$/status\n",
        masks.display()
    );
    // A token that lives 1 to 2 s: the plugin runs again for a renewal while the child runs.
    let plugin = numbered_plugin(&env, &runs, &before, Some("2"));
    let kubeconfig = exec_kubeconfig(&env, &plugin);
    let name = env.lease_name("exec-signals");
    let script = format!("while [ \"$(wc -l < {})\" -lt 2 ]; do sleep 0.1; done", runs.display());
    run(&env, mpsync_with(&env, &kubeconfig, &fast(&["lock", &name], &["sh", "-c", &script]))).assert_code(0);
    let masks = fs::read_to_string(&masks).unwrap();
    assert!(masks.lines().count() >= 4, "{masks}");
    for line in masks.lines() {
        let value = u64::from_str_radix(line.split(':').nth(1).unwrap().trim(), 16).unwrap();
        // SIGHUP (bit 0) stays ignored under nohup, as the tests may be run.
        assert_eq!(value & !1, 0, "the plugin has {line}");
    }
}

/// Found by review (helper-122): a kubeconfig user's `tokenFile` ending in a newline (`echo $TOKEN > file`, a Secret made
/// `--from-file`) works with kubectl (client-go trims the file's token); mpsync sent "Bearer TOKEN\n",
/// which is no header value: `status` failed with "invalid bearer token", and `lock` retried for ever.
#[test]
fn a_token_file_ending_in_a_newline_authenticates_as_with_kubectl() {
    let Some(env) = test_server() else { return };
    let server = env.server().unwrap();
    server.accept_token(Some("tok-file"));
    let token = env.path("token");
    fs::write(&token, "tok-file\n").unwrap();
    let yaml = server.kubeconfig_yaml("default");
    let with_file = yaml.replace("  user: {}", &format!("  user:\n    tokenFile: {:?}", token.to_str().unwrap()));
    assert_ne!(with_file, yaml);
    let kubeconfig = env.path("kubeconfig-token-file");
    fs::write(&kubeconfig, with_file).unwrap();
    let name = env.lease_name("token-file");
    let mut status = env.mpsync(["status", &name]);
    status.env("MPSYNC_KUBECONFIG", &kubeconfig);
    let done = Proc::spawn(status, &env.dir).finish();
    assert_eq!(done.code, Some(0), "status: {}", done.stderr);
    let mut lock = env.mpsync(["lock", "--timeout", "30s", &name, "--", "true"]);
    lock.env("MPSYNC_KUBECONFIG", &kubeconfig);
    let done = Proc::spawn(lock, &env.dir).finish();
    assert_eq!(done.code, Some(0), "lock: {}", done.stderr);
    let requests = server.requests();
    assert!(requests.iter().all(|r| r.bearer.as_deref() == Some("tok-file") && r.status != 401), "{requests:?}");
}

/// Found by review (helper-122): a holder whose token file is rotated, the old token refused at once (a revoked token, a
/// rotated Secret): as client-go, the file is read again after the 401, and the renewals go on with the
/// new token; kube kept the old one for up to a minute, and the lease was lost (exit 123).
#[test]
fn a_rotated_token_file_is_read_again_after_a_401_and_the_holder_keeps_the_lease() {
    let Some(env) = test_server() else { return };
    let server = env.server().unwrap();
    server.accept_token(Some("tok-one"));
    let token = env.path("token");
    fs::write(&token, "tok-one").unwrap();
    let yaml = server.kubeconfig_yaml("default");
    let with_file = yaml.replace("  user: {}", &format!("  user:\n    tokenFile: {:?}", token.to_str().unwrap()));
    let kubeconfig = env.path("kubeconfig-token-file");
    fs::write(&kubeconfig, with_file).unwrap();
    let name = env.lease_name("rotated");
    let (started, stop) = (env.path("started"), env.path("stop"));
    let script = format!("echo up > {}; while [ ! -e {} ]; do sleep 0.05; done", started.display(), stop.display());
    let mut lock = env.mpsync([
        "lock",
        "--lease-duration",
        "6s",
        "--renew-deadline",
        "4s",
        "--retry-period",
        "500ms",
        &name,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    lock.env("MPSYNC_KUBECONFIG", &kubeconfig);
    let mut holder = Proc::spawn(lock, &env.dir);
    holder.wait_for_file(&started, "up");
    // Rotated: the old token is refused from now on.
    let tmp = env.path("token.new");
    fs::write(&tmp, "tok-two").unwrap();
    fs::rename(&tmp, &token).unwrap();
    server.accept_token(Some("tok-two"));
    let renewed = server.wait_for_requests(
        |log| log.iter().any(|r| r.verb == "update" && r.status == 200 && r.bearer.as_deref() == Some("tok-two")),
        Duration::from_secs(20),
    );
    fs::write(&stop, "").unwrap();
    let done = holder.finish();
    assert!(renewed, "no renewal with the rotated token: {}", done.stderr);
    assert_eq!(done.code, Some(0), "{}", done.stderr);
}

/// Found by review (helper-164, helper-165): a holder's token file replaced by one whose read blocks (a FIFO
/// with no writer; a hung NFS or FUSE mount), read again after a 401: the read ran on the runtime's thread,
/// so nothing was renewed, no timer or signal acted, the guard killed the child at the deadline (no
/// SIGTERM first), and mpsync never exited. The read runs apart now: the lease is lost for the refusals,
/// as any, the child gets SIGTERM, and mpsync exits 123.
#[test]
fn a_token_file_whose_read_blocks_holds_up_nothing() {
    let Some(env) = test_server() else { return };
    let server = env.server().unwrap();
    server.accept_token(Some("tok-one"));
    let token = env.path("token");
    fs::write(&token, "tok-one").unwrap();
    let kubeconfig = token_file_kubeconfig(&env, &token);
    let name = env.lease_name("fifo-token");
    let (pid_file, trapped) = (env.path("child.pid"), env.path("trapped"));
    let script = format!(
        "trap 'echo term > {}; exit 0' TERM; echo $$ > {}; while :; do sleep 0.05; done",
        trapped.display(),
        pid_file.display()
    );
    let mut holder =
        Proc::spawn(mpsync_with(&env, &kubeconfig, &fast(&["lock", &name], &["sh", "-c", &script])), &env.dir);
    let child = read_pid(&pid_file);
    fs::remove_file(&token).unwrap();
    nix::unistd::mkfifo(&token, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // The old token is refused from now on: the next renewal gets 401, and the file is read again.
    server.accept_token(Some("tok-two"));
    let exited = holder.wait_for(PATIENCE);
    if exited.is_none() {
        // Unblock the read, so that the test ends.
        let _ = fs::write(&token, "tok-two");
        holder.signal(nix::sys::signal::Signal::SIGKILL);
    }
    let done = holder.finish();
    assert!(exited.is_some(), "mpsync never exited: its runtime waits on the token file's read\n{}", done.stderr);
    assert!(!alive(child), "{}", done.stderr);
    assert!(trapped.exists(), "the child was killed without SIGTERM first (by the guard)\n{}", done.stderr);
    done.assert_code(123);
}

/// Found by review (helper-146): a waiter whose credentials are revoked while it waits (its token
/// refused from now on; the holder, authenticated by its client certificate, renews on). The watch's
/// list and its fallback get were answered 401, and the fallback swallowed it: the waiter logged "still
/// retrying" and waited until its last-seen record expired (up to the holder's lease duration). A refusal the waiter's own read
/// would take as fatal now ends the wait: 125, one or two lines.
#[test]
fn a_waiter_whose_credentials_are_revoked_exits_125() {
    let Some(env) = test_server() else { return };
    let server = env.server().unwrap();
    server.accept_token(Some("tok-w"));
    let name = env.lease_name("revoked-waiter");
    // The holder: a client certificate, and a long lease it renews.
    let holder_config = write_kubeconfig(
        &env,
        &server.kubeconfig_yaml_with(&KubeconfigOptions::new("default").client_certificate(ClientKey::Rsa)),
    );
    let gate = env.path("gate");
    let mut holder = Proc::spawn(
        mpsync_with(
            &env,
            &holder_config,
            &[
                "lock",
                &name,
                "--lease-duration",
                "60s",
                "--renew-deadline",
                "40s",
                "--retry-period",
                "2s",
                "--",
                "sh",
                "-c",
                &format!("echo up > {g}; while [ ! -e {g}.stop ]; do sleep 0.05; done", g = gate.display()),
            ],
        ),
        &env.dir,
    );
    holder.wait_for_file(&gate, "up");
    let token = env.path("token");
    fs::write(&token, "tok-w").unwrap();
    let waiter_config = token_file_kubeconfig(&env, &token);
    let ran = env.path("ran");
    let mut waiter = Proc::spawn(
        mpsync_with(&env, &waiter_config, &["lock", &name, "--", "touch", ran.to_str().unwrap()]),
        &env.dir,
    );
    assert!(server.wait_for_watch_count(1, PATIENCE));
    server.accept_token(Some("tok-revoked"));
    server.drop_watches();
    let status = waiter.wait_for(PATIENCE);
    fs::write(format!("{}.stop", gate.display()), "").unwrap();
    holder.finish().assert_code(0);
    if status.is_none() {
        waiter.signal(nix::sys::signal::Signal::SIGKILL);
    }
    let done = waiter.finish();
    assert!(status.is_some(), "the waiter with refused credentials waits on:\n{}", done.stderr);
    assert_failure(&done, 125, &["401"]);
    assert!(!ran.exists());
}

/// Found by review (helper-146): `observe` whose credentials are revoked while it watches: 125 with the 401, not a wait for ever (nor 0).
#[test]
fn observe_whose_credentials_are_revoked_exits_125() {
    let Some(env) = test_server() else { return };
    let server = env.server().unwrap();
    let name = env.lease_name("revoked-observe");
    env.put(&name, TestEnv::foreign_record("other", 3600));
    server.accept_token(Some("tok-o"));
    let token = env.path("token");
    fs::write(&token, "tok-o").unwrap();
    let config = token_file_kubeconfig(&env, &token);
    let mut observer = Proc::spawn(mpsync_with(&env, &config, &["observe", &name]), &env.dir);
    assert!(server.wait_for_watch_count(1, PATIENCE));
    server.accept_token(Some("tok-revoked"));
    server.drop_watches();
    let status = observer.wait_for(PATIENCE);
    if status.is_none() {
        observer.signal(nix::sys::signal::Signal::SIGKILL);
    }
    let done = observer.finish();
    assert!(status.is_some(), "observe with refused credentials waits on:\n{}", done.stderr);
    assert_failure(&done, 125, &["401"]);
}

/// A kubeconfig for the test server whose user reads its token from `token`.
/// Found by review (rv230): after a 401, every request made while the token file's read is under way waits
/// for it, once (a shared end, and at most a quarter of the call timeout); a read that never ends (a hung
/// mount: a FIFO with no writer) held up every later request by half a second, for ever, and with a call
/// timeout of half a second (`--renew-deadline 1s`) every renewal timed out before it was sent: the holder
/// lost a lease whose token the API server accepted again (the 401 was a passing refusal, a webhook that
/// failed once). The renewals go on with the last token read.
#[test]
fn a_hung_token_read_after_one_401_holds_up_no_renewal_for_long() {
    let Some(env) = test_server() else { return };
    let server = env.server().unwrap();
    server.accept_token(Some("tok-one"));
    let token = env.path("token");
    fs::write(&token, "tok-one").unwrap();
    let kubeconfig = token_file_kubeconfig(&env, &token);
    let name = env.lease_name("hung-token");
    let (started, stop) = (env.path("started"), env.path("stop"));
    let script = format!("echo up > {}; while [ ! -e {} ]; do sleep 0.05; done", started.display(), stop.display());
    // The shortest call timeout the CLI allows (600 ms: a 1s renew deadline, as the review used, is refused
    // now with renewals under a second apart, which client-go cannot follow at 1s).
    let timings = ["--lease-duration", "3s", "--renew-deadline", "1200ms", "--retry-period", "100ms"];
    let args = [&["lock", name.as_str()][..], &timings, &["--", "sh", "-c", script.as_str()]].concat();
    let mut holder = Proc::spawn(mpsync_with(&env, &kubeconfig, &args), &env.dir);
    holder.wait_for_file(&started, "up");
    // The file's next read blocks for ever; no read is due before a refusal (or a minute).
    fs::remove_file(&token).unwrap();
    nix::unistd::mkfifo(&token, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // One passing refusal: a renewal answered 401, then the same token is accepted again.
    server.unauthorized(true);
    let refused = server.wait_for_requests(|log| log.iter().any(|r| r.status == 401), PATIENCE);
    server.unauthorized(false);
    assert!(refused, "no request was refused");
    let after = server.requests().len();
    let renewed =
        |log: &[RequestLog]| log[after..].iter().filter(|r| r.verb == "update" && r.status == 200).count() >= 10;
    let renewed = server.wait_for_requests(renewed, PATIENCE);
    let exited = holder.wait_for(Duration::ZERO);
    fs::write(&stop, "").unwrap();
    let done = holder.finish();
    assert!(renewed && exited.is_none(), "the renewals stopped after the 401 (exited: {exited:?}):\n{}", done.stderr);
    done.assert_code(0);
}

fn token_file_kubeconfig(env: &TestEnv, token: &std::path::Path) -> PathBuf {
    let yaml = env.server().unwrap().kubeconfig_yaml("default");
    let with_file = yaml.replace("  user: {}", &format!("  user:\n    tokenFile: {:?}", token.to_str().unwrap()));
    write_kubeconfig(env, &with_file)
}

/// The processes below `root` (pid, state, comm) as /proc shows them now.
fn descendants(root: i32) -> Vec<(i32, char, String)> {
    let mut all = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some(close) = stat.rfind(')') else { continue };
        let comm = stat[stat.find('(').unwrap() + 1..close].to_string();
        let mut rest = stat[close + 2..].split(' ');
        let state = rest.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid: i32 = rest.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        all.push((pid, ppid, state, comm));
    }
    let mut found = Vec::new();
    let mut parents = vec![root];
    while let Some(parent) = parents.pop() {
        for (pid, ppid, state, comm) in &all {
            if *ppid == parent {
                found.push((*pid, *state, comm.clone()));
                parents.push(*pid);
            }
        }
    }
    found
}

/// Found by review (helper-204). An exec credential plugin is forked with the job-control stops blocked (a
/// thread of the blocking pool inherits the main thread's mask), and `default_signals` unblocks them with
/// their default action: a SIGTTOU sent to mpsync's group between the fork and std's setpgid (a tostop write
/// by a member of mpsync's group, a `kill -TTOU`) stopped the plugin before its exec, in a process group of
/// its own that nothing ever continues. `Command::spawn` waited for the exec for ever: the client's set-up
/// hung, and mpsync with it (a token refresh would hang the same way, and the lease be lost). The plugin
/// discards such a stop now, as the supervised child does.
///
/// mpsync runs in a session of its own (its group orphaned), so that the SIGTTOU does not stop mpsync
/// itself (a stop it cannot carry out); a shim (ttouwindow.c) sends it in the window. The supervised child
/// gets the same SIGTTOU in the same window, and runs.
#[test]
fn a_stop_sent_to_mpsyncs_group_as_an_exec_plugin_is_forked_does_not_stop_the_plugin_for_good() {
    if TestEnv::real_cluster() {
        return;
    }
    let env = TestEnv::kube();
    let shim = build_shim(&env, "ttouwindow");
    let runs = env.path("plugin-runs");
    let plugin = write_plugin(
        &env,
        &format!(
            "echo run >> {}\necho '{{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\
             \"status\":{{\"token\":\"tok\"}}}}'\n",
            runs.display()
        ),
    );
    env.server().unwrap().accept_token(Some("tok"));
    let kubeconfig = exec_kubeconfig(&env, &plugin);
    let name = env.lease_name("ttou-plugin");
    let ran = env.path("child-ran");
    let mut command = env.mpsync(["lock", "-v", &name, "--", "touch", ran.to_str().unwrap()]);
    command.env("MPSYNC_KUBECONFIG", &kubeconfig).env("LD_PRELOAD", &shim);
    // SAFETY: setsid(2) is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from)
        });
    }
    let mut proc = Proc::spawn(command, &env.dir);
    let status = proc.wait_for(PATIENCE);
    let mpsync = proc.pid();
    let below = descendants(mpsync);
    if status.is_none() {
        // Clean up what this test started: mpsync by its pid (the stopped plugin dies with it: its
        // parent-death signal).
        proc.signal(nix::sys::signal::Signal::SIGKILL);
    }
    assert!(
        status.is_some_and(|status| status.success()) && ran.exists(),
        "mpsync did not run its command (exit {status:?}); the plugin ran {} times; below mpsync: {below:?} \
         (a process in state T is the plugin, stopped before its exec);\nstderr:\n{}",
        fs::read_to_string(&runs).map_or(0, |text| text.lines().count()),
        proc.stderr()
    );
}

/// Wait (within PATIENCE) until mpsync opens `fifo` for reading, then open it for writing and return the
/// writer: mpsync's read then waits for data that does not come while the writer is held (a non-blocking
/// open for writing succeeds exactly when there is a reader).
fn writer_once_read(fifo: &std::path::Path) -> std::os::fd::OwnedFd {
    use nix::fcntl::{OFlag, open};
    let mut writer = None;
    let read =
        within_patience(|| match open(fifo, OFlag::O_WRONLY | OFlag::O_NONBLOCK, nix::sys::stat::Mode::empty()) {
            Ok(fd) => {
                writer = Some(fd);
                true
            }
            Err(_) => false,
        });
    assert!(read, "mpsync never opened the kubeconfig FIFO {}", fifo.display());
    writer.unwrap()
}

/// `mpsync ARGS --kubeconfig FIFO [-- COMMAND]` whose FIFO's writer says nothing yet (`--kubeconfig <(vault
/// ...)` waiting for a login), then `signal` (or none: `--timeout`): mpsync ends with `expected`, and writes
/// nothing. Found by review (rv258): the kubeconfig was read on the runtime's own thread, and the stop signal
/// and `--timeout` were never served.
fn ends_while_its_kubeconfig_fifo_is_silent(args: &[&str], signal: Option<nix::sys::signal::Signal>, expected: i32) {
    let env = TestEnv::kube();
    let fifo = env.path("kubeconfig.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let split = args.iter().position(|arg| *arg == "--").unwrap_or(args.len());
    let mut command = env.mpsync(&args[..split]);
    command.arg("--kubeconfig").arg(&fifo).args(&args[split..]);
    ends_while_the_fifo_is_silent(&env, command, &fifo, signal, expected, &format!("{args:?}"));
}

/// Start `command`, wait until it reads `fifo` (whose writer then says nothing), send `signal` (if any): it
/// ends with `expected`, and writes nothing.
fn ends_while_the_fifo_is_silent(
    env: &TestEnv,
    command: Command,
    fifo: &std::path::Path,
    signal: Option<nix::sys::signal::Signal>,
    expected: i32,
    what: &str,
) {
    let mut mpsync = Proc::spawn(command, &env.dir);
    let writer = writer_once_read(fifo);
    if let Some(signal) = signal {
        mpsync.signal(signal);
    }
    let status = mpsync.wait_for(PATIENCE);
    drop(writer);
    assert_eq!(status.and_then(|s| s.code()), Some(expected), "{what} {signal:?}: {status:?}\n{}", mpsync.stderr());
    if let Some(server) = env.server() {
        assert_eq!(server.count("create") + server.count("update"), 0, "nothing written");
    }
}

#[test]
fn every_subcommand_ends_on_a_stop_signal_while_its_kubeconfig_fifo_is_silent() {
    use nix::sys::signal::Signal;
    ends_while_its_kubeconfig_fifo_is_silent(&["status", "fifo-a"], Some(Signal::SIGTERM), 143);
    ends_while_its_kubeconfig_fifo_is_silent(&["observe", "fifo-a"], Some(Signal::SIGTERM), 0);
    ends_while_its_kubeconfig_fifo_is_silent(&["lock", "fifo-a", "--", "true"], Some(Signal::SIGTERM), 143);
    ends_while_its_kubeconfig_fifo_is_silent(&["elect", "fifo-a", "--", "true"], Some(Signal::SIGHUP), 129);
    ends_while_its_kubeconfig_fifo_is_silent(&["sidecar", "--listen", "127.0.0.1:0"], Some(Signal::SIGTERM), 143);
}

#[test]
fn lock_timeout_ends_the_wait_while_its_kubeconfig_fifo_is_silent() {
    ends_while_its_kubeconfig_fifo_is_silent(&["lock", "fifo-t", "--timeout", "2s", "--", "true"], None, 124);
}

/// `mpsync ARGS` with a kubeconfig made of the test server's by `edit(yaml, fifo)`, whose FIFO's writer says
/// nothing yet; then `signal` (or none: `--timeout`). mpsync ends with `expected`, and writes nothing. Found by
/// review (rv259): the files a kubeconfig names (its CA, its token file) were still read on the runtime's own
/// thread.
fn ends_while_a_named_file_is_silent(
    what: &str,
    edit: impl Fn(&str, &str) -> String,
    args: &[&str],
    signal: Option<nix::sys::signal::Signal>,
    expected: i32,
) {
    if TestEnv::real_cluster() {
        eprintln!("skipped: this test writes kubeconfigs for the test API server");
        return;
    }
    let env = TestEnv::kube();
    let server = env.server().unwrap();
    let fifo = env.path(&format!("{what}.fifo"));
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let yaml = server.kubeconfig_yaml("default");
    let edited = edit(&yaml, fifo.to_str().unwrap());
    assert_ne!(edited, yaml, "{what}: the kubeconfig was not edited");
    let kubeconfig = env.path(&format!("kubeconfig-{what}"));
    fs::write(&kubeconfig, edited).unwrap();
    let mut command = env.mpsync(args);
    command.env("MPSYNC_KUBECONFIG", &kubeconfig);
    ends_while_the_fifo_is_silent(&env, command, &fifo, signal, expected, &format!("{what} {args:?}"));
}

/// `certificate-authority: FIFO` instead of the inline data.
fn ca_file(yaml: &str, fifo: &str) -> String {
    let data_line = yaml.lines().find(|line| line.contains("certificate-authority-data:")).unwrap().to_string();
    let indent = &data_line[..data_line.len() - data_line.trim_start().len()];
    yaml.replace(&data_line, &format!("{indent}certificate-authority: {fifo}"))
}

/// `tokenFile: FIFO` for the user.
fn token_file(yaml: &str, fifo: &str) -> String {
    yaml.replace("  user: {}", &format!("  user:\n    tokenFile: {fifo:?}"))
}

#[test]
fn lock_ends_on_a_stop_signal_or_its_timeout_while_the_kubeconfigs_ca_file_is_silent() {
    use nix::sys::signal::Signal;
    ends_while_a_named_file_is_silent("ca", ca_file, &["lock", "ca-t", "--timeout", "2s", "--", "true"], None, 124);
    ends_while_a_named_file_is_silent("ca", ca_file, &["lock", "ca-s", "--", "true"], Some(Signal::SIGTERM), 143);
}

#[test]
fn lock_ends_on_a_stop_signal_or_its_timeout_while_the_kubeconfigs_token_file_is_silent() {
    use nix::sys::signal::Signal;
    ends_while_a_named_file_is_silent(
        "token",
        token_file,
        &["lock", "tok-t", "--timeout", "2s", "--", "true"],
        None,
        124,
    );
    ends_while_a_named_file_is_silent(
        "token",
        token_file,
        &["lock", "tok-s", "--", "true"],
        Some(Signal::SIGTERM),
        143,
    );
}

/// `client-certificate` and `client-key: FIFO` for the user.
fn client_certificate_file(yaml: &str, fifo: &str) -> String {
    yaml.replace("  user: {}", &format!("  user:\n    client-certificate: {fifo:?}\n    client-key: {fifo:?}"))
}

/// The library: `KubeClientBuilder::build` given up on (a `tokio::time::timeout` around it) while a file of its
/// kubeconfig is a FIFO whose writer says nothing: the kubeconfig itself, its CA, a client certificate, a token
/// file. The program's runtime is dropped at once after (a `#[tokio::main]` returning). Found by review (rv260):
/// the reads were left on the runtime's blocking pool, whose drop waited for them until the FIFO was written:
/// the program hung at its exit.
#[test]
fn a_client_build_given_up_on_holds_up_no_runtimes_drop_while_a_file_is_silent() {
    if TestEnv::real_cluster() {
        eprintln!("skipped: this test writes kubeconfigs for the test API server");
        return;
    }
    let env = TestEnv::kube();
    let server = env.server().unwrap();
    let yaml = server.kubeconfig_yaml("default");
    let itself = |_: &str, fifo: &str| fifo.to_string();
    type Edit<'a> = &'a dyn Fn(&str, &str) -> String;
    let cases: [(&str, Edit); 4] = [
        ("kubeconfig", &itself),
        ("ca", &ca_file),
        ("client-certificate", &client_certificate_file),
        ("token", &token_file),
    ];
    for (what, edit) in cases {
        let fifo = env.path(&format!("lib-{what}.fifo"));
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let kubeconfig = match what {
            "kubeconfig" => fifo.clone(),
            _ => {
                let path = env.path(&format!("kubeconfig-lib-{what}"));
                fs::write(&path, edit(&yaml, fifo.to_str().unwrap())).unwrap();
                path
            }
        };
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let program = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            let gave_up = runtime.block_on(async {
                let build = mpsync::KubeClientBuilder::new().kubeconfig(&kubeconfig).build();
                tokio::time::timeout(Duration::from_secs(1), build).await.is_err()
            });
            drop(runtime);
            let _ = done_tx.send(gave_up);
        });
        let ended = done_rx.recv_timeout(PATIENCE);
        // The read still under way (if any) ends, so that nothing of this test is left behind.
        drop(writer_once_read(&fifo));
        let _ = program.join();
        assert_eq!(ended, Ok(true), "{what}: the runtime's drop waited for a read given up on {PATIENCE:?} before");
    }
}
