//! Section 7: The first request on a new TLS connection: what every `mpsync` process pays once, and a waiter
//! pays again whenever it needs a second connection. Raw rustls with and without TCP_NODELAY (Nagle's
//! algorithm holds the request back until the server ACKs the client's Finished), curl, and a fresh
//! kube-rs 5 client with its default connector (how mpsync built its client before issue 14).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use k8s_openapi::api::coordination::v1::Lease;
use kube::client::ConfigExt as _;
use rustls::pki_types::ServerName;

use crate::ctx::{Backend, Ctx, Stats};
use crate::kube::{KubeEnv, load_config, rt};

/// Where raw clients connect, and how.
struct TlsTarget {
    addr: SocketAddr,
    /// `host:port` for the Host header and curl's URL.
    authority: String,
    name: ServerName<'static>,
    config: Arc<rustls::ClientConfig>,
    /// The CA curl trusts (PEM), if the kubeconfig names one; `None` with `insecure` for `-k`.
    ca_file: Option<PathBuf>,
    insecure: bool,
}

/// One timed thing: wall ms, and for curl its own `time_total`.
type Measure<'a> = Box<dyn Fn() -> (f64, Option<f64>) + 'a>;

/// Run every variant `n` times (after 2 warm-up rounds), interleaved in a random order per round:
/// per variant, wall ms and any second figure.
fn rounds(ctx: &Ctx, n: usize, variants: &[(String, Measure)]) -> Vec<(Vec<f64>, Vec<f64>)> {
    let mut samples = vec![(Vec::new(), Vec::new()); variants.len()];
    let mut order: Vec<usize> = (0..variants.len()).collect();
    for round in 0..n + 2 {
        ctx.shuffle(&mut order);
        for &v in &order {
            let (ms, own) = (variants[v].1)();
            // A hang (NaN, recorded by `Ctx::run_timed`) is no sample.
            if round >= 2 && ms.is_finite() {
                samples[v].0.push(ms);
                samples[v].1.extend(own);
            }
        }
    }
    samples
}

fn table(out: &mut String, variants: &[(String, Measure)], samples: &[(Vec<f64>, Vec<f64>)]) {
    out.push_str("| client | N | median ms | p90 ms | min ms | max ms |\n|---|---:|---:|---:|---:|---:|\n");
    let mut row = |label: &str, samples: &[f64]| {
        let s = Stats::of(samples);
        writeln!(out, "| {label} | {} | {:.2} | {:.2} | {:.2} | {:.2} |", s.n, s.median, s.p90, s.min, s.max).unwrap();
    };
    for ((label, _), (wall, own)) in variants.iter().zip(samples) {
        row(label, wall);
        if !own.is_empty() {
            row("curl's own `time_total` (without its process start-up)", own);
        }
    }
}

pub fn connection(ctx: &Ctx) -> String {
    let n = ctx.count(30, 10);
    eprintln!("first request on a new TLS connection: {n} of each");
    let env = KubeEnv::start(ctx, "connection");
    let lease = env.lease("bench-connection");
    let target = tls_target(ctx, &env);
    let curl = std::process::Command::new("curl").arg("--version").output().is_ok_and(|o| o.status.success());
    let mut variants: Vec<(String, Measure)> = vec![
        ("raw rustls, TCP_NODELAY on (as Go and curl)".into(), Box::new(|| (raw_get(&target, true), None))),
        (
            "raw rustls, TCP_NODELAY off (Nagle, as kube-rs 5's default connector)".into(),
            Box::new(|| (raw_get(&target, false), None)),
        ),
        (
            "fresh kube-rs 5 client, default connector: kubeconfig → client → GET lease".into(),
            Box::new(|| (kube_get(&env, &lease), None)),
        ),
    ];
    if curl {
        variants.push((
            "curl, spawn → exit".into(),
            Box::new(|| {
                let (wall, own) = curl_get(ctx, &target);
                (wall, Some(own))
            }),
        ));
    }
    let samples = rounds(ctx, n, &variants);
    let mut out = format!(
        "\n## 7. The first request on a new TLS connection\n\n\
         From `connect()` to the whole answer of one `GET /version` (raw clients and curl, `Connection: close`) on a \
         new TCP connection with a full TLS handshake; in the bench process except curl. The kube-rs row builds a \
         client from the kubeconfig file (as mpsync does at start) and GETs a lease. Variants interleaved, random \
         order per round, 2 warm-up rounds.{}\n\n### {}\n\n",
        if curl { "" } else { " curl is not installed here: its rows are left out." },
        ctx.target.name()
    );
    table(&mut out, &variants, &samples);
    let median = |samples: &[(Vec<f64>, Vec<f64>)], i: usize| Stats::of(&samples[i].0).median;
    ctx.summarize(
        format!("first request on a new TLS connection, raw, TCP_NODELAY on / off ({})", ctx.target.name()),
        format!("{:.1} / {:.1} ms", median(&samples, 0), median(&samples, 1)),
        None,
        "report",
    );
    if matches!(ctx.target, crate::kube::Target::TestServer { front: false }) {
        out.push_str(&front(ctx, n));
    }
    out
}

/// The same clients, and mpsync's `status` and uncontended `lock`, through a TLS front that sends no
/// session tickets, as kube-apiserver did in issue 14's trace.
fn front(ctx: &Ctx, n: usize) -> String {
    let env = KubeEnv::start_fronted(ctx, "front");
    let target = tls_target(ctx, &env);
    let names: Vec<String> = ctx.bins().iter().map(|bin| format!("bench-front-{}", bin.label)).collect();
    for (bin, name) in ctx.bins().into_iter().zip(&names) {
        ctx.run_timed(&mut ctx.mpsync_bin(bin, Backend::Kube(&env), &["lock", name, "--", "true"]));
    }
    let mut variants: Vec<(String, Measure)> = vec![
        ("raw rustls, TCP_NODELAY on".into(), Box::new(|| (raw_get(&target, true), None))),
        ("raw rustls, TCP_NODELAY off".into(), Box::new(|| (raw_get(&target, false), None))),
        ("fresh kube-rs 5 client, default connector, GET lease".into(), Box::new(|| (kube_get(&env, &names[0]), None))),
    ];
    // Where the mpsync rows start: per binary, status then lock.
    let first = variants.len();
    for (bin, name) in ctx.bins().into_iter().zip(&names) {
        let env = &env;
        variants.push((
            format!("`mpsync status` [{}]", bin.label),
            Box::new(move || (ctx.run_timed(&mut ctx.mpsync_bin(bin, Backend::Kube(env), &["status", name])), None)),
        ));
        variants.push((
            format!("`mpsync lock -- true` [{}]", bin.label),
            Box::new(move || {
                (ctx.run_timed(&mut ctx.mpsync_bin(bin, Backend::Kube(env), &["lock", name, "--", "true"])), None)
            }),
        ));
    }
    let samples = rounds(ctx, n, &variants);
    let mut out = String::from(
        "\n### A TLS server that sends no session tickets (as kube-apiserver in issue 14's trace)\n\n\
         The test API server sends no TLS 1.3 session tickets either, so a client with Nagle's algorithm on \
         holds its request (its second small write after the handshake) until the server's delayed ACK there \
         too (the table above). Here a plain-HTTP test server sits behind a TLS front of the bench's own (in \
         the bench process, one relay thread per connection) that sends nothing between the handshake and the \
         first answer: the same figures through a second TLS server and one more hop. `mpsync` rows: spawn → \
         exit, as in section 1.\n\n",
    );
    table(&mut out, &variants, &samples);
    let median = |i: usize| Stats::of(&samples[i].0).median;
    let baseline = |offset: usize| ctx.baseline.as_ref().map(|_| format!("{:.1} ms", median(first + 2 + offset)));
    ctx.summarize(
        "uncontended `lock NAME -- true`, median (TLS front without session tickets)",
        format!("{:.1} ms", median(first + 1)),
        baseline(1),
        "≤ 12 ms",
    );
    ctx.summarize(
        "`mpsync status NAME`, median (TLS front without session tickets)",
        format!("{:.1} ms", median(first)),
        baseline(0),
        "≤ 8 ms",
    );
    ctx.summarize(
        "first request on a new TLS connection, raw, TCP_NODELAY on / off (TLS front without session tickets)",
        format!("{:.1} / {:.1} ms", median(0), median(1)),
        None,
        "report",
    );
    out
}

/// The DER certificates in a PEM text.
fn pem_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).map(|c| c.expect("a PEM certificate")).collect()
}

fn tls_target(ctx: &Ctx, env: &KubeEnv) -> TlsTarget {
    if let Some(front) = &env.front {
        let ca_file = ctx.dir.join("front-ca.pem");
        std::fs::write(&ca_file, front.ca_pem()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for cert in pem_certs(front.ca_pem()) {
            roots.add(cert).expect("the front's CA");
        }
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        return TlsTarget {
            addr: front.addr(),
            authority: front.addr().to_string(),
            name: ServerName::IpAddress(front.addr().ip().into()),
            config: Arc::new(config),
            ca_file: Some(ca_file),
            insecure: false,
        };
    }
    if let Some(server) = &env.server {
        let ca_file = ctx.dir.join("connection-ca.pem");
        std::fs::write(&ca_file, server.ca_pem()).unwrap();
        return TlsTarget {
            addr: server.addr(),
            authority: server.addr().to_string(),
            name: ServerName::IpAddress(server.addr().ip().into()),
            config: server.client_tls_config(),
            ca_file: Some(ca_file),
            insecure: false,
        };
    }
    let cluster = env.cluster.expect("a cluster");
    let config = &cluster.config;
    let host = config.cluster_url.host().expect("a host in the server URL").trim_matches(['[', ']']).to_string();
    let port = config.cluster_url.port_u16().unwrap_or(443);
    let addr = (host.as_str(), port).to_socket_addrs().expect("resolve the API server").next().expect("an address");
    let sni = config.tls_server_name.clone().unwrap_or_else(|| host.clone());
    let mut tls = config.rustls_client_config().expect("a TLS configuration from the kubeconfig");
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let ca_file = config.root_cert.as_ref().map(|certs| {
        let pem: String = certs
            .iter()
            .map(|der| {
                let b64 = base64::engine::general_purpose::STANDARD.encode(der);
                let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
                format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"))
            })
            .collect();
        let path = ctx.dir.join("connection-ca.pem");
        std::fs::write(&path, pem).unwrap();
        path
    });
    TlsTarget {
        addr,
        authority: format!("{}:{port}", config.cluster_url.host().unwrap()),
        name: ServerName::try_from(sni).expect("a TLS server name"),
        config: Arc::new(tls),
        ca_file,
        insecure: config.accept_invalid_certs,
    }
}

/// One `GET /version` on a new connection: ms.
fn raw_get(target: &TlsTarget, nodelay: bool) -> f64 {
    let started = Instant::now();
    let socket = TcpStream::connect(target.addr).expect("connect to the API server");
    socket.set_nodelay(nodelay).unwrap();
    let conn = rustls::ClientConnection::new(target.config.clone(), target.name.clone()).expect("a TLS client");
    let mut tls = rustls::StreamOwned::new(conn, socket);
    // rustls finishes the handshake (its Finished in one write), then sends the request in a second
    // write: with Nagle on, that one waits for the ACK of the first.
    let request = format!(
        "GET /version HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
        target.authority
    );
    tls.write_all(request.as_bytes()).expect("send the request");
    let mut answer = Vec::new();
    // A peer that closes without close_notify ends with an error after the data: keep what came.
    let _ = tls.read_to_end(&mut answer);
    let ms = started.elapsed().as_secs_f64() * 1e3;
    assert!(answer.starts_with(b"HTTP/1.1 "), "no HTTP answer: {:?}", String::from_utf8_lossy(&answer));
    ms
}

/// A fresh kube client from the kubeconfig file, and one GET of a lease (absent is fine): ms.
fn kube_get(env: &KubeEnv, lease: &str) -> f64 {
    rt().block_on(async {
        let started = Instant::now();
        let config = load_config(&env.kubeconfig).await.expect("the kubeconfig");
        let client = kube::Client::try_from(config).expect("a client");
        let api: kube::Api<Lease> = kube::Api::namespaced(client, &env.namespace);
        api.get_opt(lease).await.expect("GET the lease");
        started.elapsed().as_secs_f64() * 1e3
    })
}

/// curl `GET /version`: (wall ms spawn → exit, curl's own time_total in ms).
fn curl_get(ctx: &Ctx, target: &TlsTarget) -> (f64, f64) {
    let mut command = ctx.command("curl", &["-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total}"]);
    if let Some(ca) = &target.ca_file {
        command.arg("--cacert").arg(ca);
    }
    if target.insecure {
        command.arg("-k");
    }
    command.arg(format!("https://{}/version", target.authority)).stdout(Stdio::piped());
    let started = Instant::now();
    let output = command.output().expect("curl");
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "curl failed: {}", String::from_utf8_lossy(&output.stderr));
    let own = text.split_whitespace().nth(1).and_then(|s| s.parse::<f64>().ok()).expect("curl's time_total") * 1e3;
    (ms, own)
}
