//! The test API server: a small, strict stand-in for kube-apiserver v1.28 that serves only
//! `coordination.k8s.io/v1` Leases over HTTPS (HTTP/1.1) on 127.0.0.1, with faults on demand.
//!
//! It answers as the real server does, as recorded in `shared/apiserver-reference/`: the same status
//! codes, the same `Status` bodies (`reason`, `code`, `details`, `causes`, messages) and the same watch
//! lines, with JSON keys in the order the real server writes them.
//!
//! Design: one listener thread, one thread per connection (keep-alive, several requests each), and one
//! state behind a `Mutex` with a `Condvar` that wakes watchers. Objects are `serde_json::Value`s, so what
//! is stored is exactly what is served. Like etcd, one global resourceVersion counter moves on with
//! every write anywhere; the event history is kept so that a watch can start from any resourceVersion
//! that has not been compacted away.
//!
//! TLS, as a kubeadm cluster has it: each server makes its own CA at start and a serving certificate
//! signed by it for `localhost`, `127.0.0.1` and `::1` (rcgen, served with rustls). Kubeconfigs carry the
//! CA in `certificate-authority-data`; [`TestApiServer::kubeconfig_yaml_with`] offers a CA file,
//! `insecure-skip-tls-verify`, the host name `localhost` instead of the IP, a `proxy-url`, and a client
//! certificate signed by the CA, as kubeadm, kind and k3s write them into their kubeconfigs (RSA with a
//! PKCS#1 key, EC with a SEC1 key, or an X.509 v1 one: [`ClientKey`]). Like kube-apiserver
//! (`tls.RequestClientCert`), every handshake asks for a client certificate and takes any; a request
//! whose certificate the CA did not sign is 401 Unauthorized, and a client without one may go on unless
//! [`TestApiServer::require_client_certificate`] makes that a 401 too, as on a cluster that allows no
//! anonymous requests. Accepted
//! sockets get TCP_NODELAY, as Go's net package sets it. It speaks HTTP/1.1 only (ALPN `http/1.1`; the
//! real server also offers h2). Plain HTTP sent to it gets Go's answer, `400 Client sent an HTTP request
//! to an HTTPS server.` [`TestApiServer::start_plain`] serves plain HTTP instead, for debugging only.
//!
//! Behaviour of the real server that is easy to miss, and reproduced here:
//! - a replace (PUT) without `metadata.resourceVersion` is 422 (Leases have no unconditional update);
//! - a replace of a Lease that does not exist *creates* it (201) unless the body carries a `uid`, in
//!   which case the uid precondition fails with 409 Conflict (`StorageError: invalid object ...`);
//! - a replace that changes nothing answers 200 with the stored object and does not move the
//!   resourceVersion (no watch event), as etcd skips no-op writes;
//! - a create whose body carries `metadata.resourceVersion` is 500 "resourceVersion should not be set
//!   on objects to be created";
//! - a delete answers 200 with the object as it was, carrying the resourceVersion of the deletion;
//! - list items carry no `kind`/`apiVersion`; watch event objects and single objects do.
//!
//! Faults on demand, each a method below:
//! - before a request is carried out: [`fail_next`](TestApiServer::fail_next) (any verb, n-shot),
//!   [`forbid`](TestApiServer::forbid), [`unauthorized`](TestApiServer::unauthorized),
//!   [`set_latency`](TestApiServer::set_latency), and [`set_commit_delay`](TestApiServer::set_commit_delay)
//!   for writes (etcd's share of a write's time, which this server otherwise commits in microseconds);
//! - after a write was committed, on its answer only: [`after_commit`](TestApiServer::after_commit)
//!   (a 500 or 504 with the real `Status`, a connection dropped without an answer, or a late answer);
//! - on watches: [`set_watch_fault`](TestApiServer::set_watch_fault) (every watch gets an ERROR event,
//!   or ends at once), [`drop_watches`](TestApiServer::drop_watches), [`compact`](TestApiServer::compact),
//!   [`restart`](TestApiServer::restart), [`set_bookmark_interval`](TestApiServer::set_bookmark_interval).
//!
//! Accounting, exact and cheap to query: [`requests`](TestApiServer::requests) (every request with its
//! verb and answered status), [`counts`](TestApiServer::counts) by (verb, status), and waits that need no
//! sleep: [`wait_for_requests`](TestApiServer::wait_for_requests),
//! [`wait_for_counts`](TestApiServer::wait_for_counts), [`wait_for_watch_count`](TestApiServer::wait_for_watch_count).

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use nix::poll::{PollFd, PollFlags, poll};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::{Map, Value, json};

const GROUP: &str = "coordination.k8s.io";
const API_VERSION: &str = "coordination.k8s.io/v1";
/// The user every 403 names: the service account the tests pretend to be.
const USER: &str = "system:serviceaccount:default:mpsync";
/// The resourceVersion counter at start (history starts here: a watch from an older one gets 410).
const FIRST_RESOURCE_VERSION: u64 = 100;
/// How far `restart` moves the resourceVersion counter on.
const RESTART_GAP: u64 = 1000;
/// Events kept for watches that start from a resourceVersion; older ones are forgotten.
const MAX_HISTORY: usize = 50_000;
/// How many paged lists' snapshots are kept for their continued pages (see `State::list_snapshots`).
const MAX_LIST_SNAPSHOTS: usize = 8;
/// The real server's request body limit (3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;
const MAX_HEADER_LINE: usize = 16 * 1024;
const MAX_HEADERS: usize = 200;
/// A watch without `timeoutSeconds` ends after this long (the real server's minRequestTimeout).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
/// A client that stops reading is dropped after this long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);
/// How often an idle watch looks whether its client hung up.
const HANGUP_CHECK: Duration = Duration::from_millis(100);
/// What Go's HTTPS server answers to plain HTTP.
const PLAIN_HTTP_TO_HTTPS: &[u8] = b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

const NAME_REGEX_MESSAGE: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

const VERSION_JSON: &str = r#"{
  "major": "1",
  "minor": "28",
  "gitVersion": "v1.28.7",
  "gitCommit": "snapshot-chengsir22-9258ab62",
  "gitTreeState": "clean",
  "buildDate": "2026-11-26T02:41:37Z",
  "goVersion": "go1.27.3",
  "compiler": "gc",
  "platform": "linux/amd64"
}"#;

/// Every object and the resourceVersion counter at one moment (`TestApiServer::snapshot`).
pub struct Snapshot {
    rv: u64,
    objects: BTreeMap<(String, String), Value>,
}

/// One request as received, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLog {
    pub method: String,
    /// The raw path, without the query.
    pub path: String,
    /// The raw query, without the `?`.
    pub query: String,
    /// For Leases: `get`, `list`, `watch`, `create`, `update`, `patch`, `delete` or `deletecollection`, as
    /// the real server's RBAC names them; `version` for /version; `other` for anything else.
    pub verb: &'static str,
    /// The HTTP status answered (200 for a watch whose stream began). 0 until the answer goes out (while
    /// the request is carried out, and during any latency or delay), and for good when the connection was
    /// closed without an answer ([`AfterCommit::Drop`], [`TestApiServer::restart`] during a delay).
    pub status: u16,
    /// When the request was received.
    pub at: std::time::Instant,
    /// The connection it came on, numbered from 0 in the order they were accepted.
    pub conn: u64,
    /// The client certificate its connection was authenticated with, if any.
    pub client_certificate: Option<ClientKey>,
    /// The bearer token it carried (`Authorization: Bearer ...`), if any.
    pub bearer: Option<String>,
}

/// A client certificate the server's CA signs at start, with its key as the kubeconfigs of real clusters
/// carry it. The keys are fixed test keys (`tests/support/client-keys/`): ring makes no RSA keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKey {
    /// RSA 2048, the key in PKCS#1 (`BEGIN RSA PRIVATE KEY`): what kubeadm, kind and minikube write.
    Rsa,
    /// EC P-256, the key in SEC1 (`BEGIN EC PRIVATE KEY`): what k3s writes.
    Ec,
    /// The RSA key in an X.509 v1 certificate (no extensions): what `openssl x509 -req` makes without
    /// `-extfile`, which kubectl accepts.
    RsaV1,
}

impl ClientKey {
    pub const ALL: [ClientKey; 3] = [ClientKey::Rsa, ClientKey::Ec, ClientKey::RsaV1];

    /// The key as the kubeconfig carries it.
    pub fn key_pem(self) -> &'static str {
        match self {
            ClientKey::Rsa | ClientKey::RsaV1 => include_str!("client-keys/rsa-pkcs1.pem"),
            ClientKey::Ec => include_str!("client-keys/ec-sec1.pem"),
        }
    }

    /// The same key in PKCS#8, the form rcgen signs a certificate for.
    fn pkcs8_pem(self) -> &'static str {
        match self {
            ClientKey::Rsa | ClientKey::RsaV1 => include_str!("client-keys/rsa-pkcs8.pem"),
            ClientKey::Ec => include_str!("client-keys/ec-pkcs8.pem"),
        }
    }

    /// The user the certificate names (its common name; organization `system:masters`, as kubeadm's
    /// admin).
    pub fn user(self) -> &'static str {
        match self {
            ClientKey::Rsa => "test-admin-rsa",
            ClientKey::Ec => "test-admin-ec",
            ClientKey::RsaV1 => "test-admin-rsa-v1",
        }
    }
}

/// What becomes of the answer to a committed write: see [`TestApiServer::after_commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterCommit {
    /// Answer this status with the real server's `Status` body for it, as [`TestApiServer::fail_next`]
    /// does: 500 InternalError (etcd answered, then something failed), 504 Timeout (the apiserver's
    /// request timeout fired while etcd committed).
    Fail(u16),
    /// Close the connection without answering (a TLS connection ends without close_notify): the client
    /// cannot know whether the write happened.
    Drop,
    /// Answer as usual, but only this long after the commit. The write is visible to GETs and watches
    /// at once.
    Delay(Duration),
    /// Answer this status with the JSON body an API gateway in front of the server gives (Kong's, AWS API
    /// Gateway's: `{"message": ...}`, no `code`, not a `Status`): the gateway forwarded the write, the
    /// server committed it, and the gateway then lost the upstream's answer.
    Gateway(u16),
    /// Answer this status with a gateway's HTML page (nginx's), no JSON at all.
    Page(u16),
}

/// What every watch gets while set: see [`TestApiServer::set_watch_fault`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchFault {
    /// HTTP 200, then one ERROR event whose object is the `Status` for this code, then the clean end of
    /// the stream. 410 gives the Expired form (`too old resource version: X (Y)`, as after a
    /// compaction); 500 gives InternalError; other codes the `Status` that `fail_next` answers.
    Error(u16),
    /// HTTP 200, then at once the clean end of the stream (the terminating chunk): zero events.
    EndAtOnce,
    /// HTTP 200, a BOOKMARK at the current resourceVersion, then as `Error` (a server or proxy that
    /// ends every stream with an error after a bookmark: the bookmark is no sign of a healthy watch).
    BookmarkThenError(u16),
    /// HTTP 200, then 32 MiB of a line that never ends (a broken proxy or server), then silence until
    /// the watch's timeout: a client that reads a line whole, with no bound, holds all of it.
    EndlessLine,
}

/// Where a kubeconfig tells the client to find the CA: see [`KubeconfigOptions::trust`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// `certificate-authority-data`: the CA PEM, base64 (the default).
    CaData,
    /// `certificate-authority: PATH`: the caller writes [`TestApiServer::ca_pem`] there.
    CaFile(PathBuf),
    /// `insecure-skip-tls-verify: true`, and no CA.
    InsecureSkipTlsVerify,
    /// Nothing: the client falls back to the system's roots, which do not know this server's CA.
    SystemRoots,
}

/// Options of [`TestApiServer::kubeconfig_yaml_with`]; `KubeconfigOptions::new(namespace)` is what
/// [`TestApiServer::kubeconfig_yaml`] writes.
#[derive(Debug, Clone)]
pub struct KubeconfigOptions {
    namespace: String,
    localhost: bool,
    trust: Trust,
    proxy_url: Option<String>,
    client_certificate: Option<ClientKey>,
}

impl KubeconfigOptions {
    /// The server by IP (`https://127.0.0.1:PORT`), the CA as `certificate-authority-data`, no proxy.
    pub fn new(namespace: &str) -> KubeconfigOptions {
        KubeconfigOptions {
            namespace: namespace.to_string(),
            localhost: false,
            trust: Trust::CaData,
            proxy_url: None,
            client_certificate: None,
        }
    }

    /// Name the server by host name: `https://localhost:PORT` (the certificate covers it).
    pub fn localhost(mut self) -> KubeconfigOptions {
        self.localhost = true;
        self
    }

    /// How the client is told to trust the server (ignored by a plain-HTTP server).
    pub fn trust(mut self, trust: Trust) -> KubeconfigOptions {
        self.trust = trust;
        self
    }

    /// Add `proxy-url: URL` to the cluster.
    pub fn proxy_url(mut self, url: &str) -> KubeconfigOptions {
        self.proxy_url = Some(url.to_string());
        self
    }

    /// The user authenticates with this client certificate (`client-certificate-data` and
    /// `client-key-data`; ignored by a plain-HTTP server).
    pub fn client_certificate(mut self, key: ClientKey) -> KubeconfigOptions {
        self.client_certificate = Some(key);
        self
    }
}

/// The running server. Dropping it stops the listener and closes every connection.
pub struct TestApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls: Option<TlsMaterial>,
    acceptor: Option<JoinHandle<()>>,
}

/// The CA and the rustls configuration made for one server.
struct TlsMaterial {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    config: Arc<rustls::ServerConfig>,
    /// The client certificates the CA signed: which key, and the certificate's PEM and DER.
    clients: Vec<(ClientKey, String, CertificateDer<'static>)>,
}

fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsMaterial {
    /// A CA, and a serving certificate signed by it for localhost, 127.0.0.1 and ::1: what kubeadm makes,
    /// in miniature. ECDSA P-256 keys: fast to make.
    fn generate() -> TlsMaterial {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose, PublicKeyData as _,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca_params.distinguished_name.push(DnType::CommonName, "test-apiserver-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_key = KeyPair::generate().expect("CA key");
        let ca = CertifiedIssuer::self_signed(ca_params, &ca_key).expect("CA certificate");

        let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
        let mut params = CertificateParams::new(names).expect("serving certificate parameters");
        params.distinguished_name.push(DnType::CommonName, "kube-apiserver");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("serving key");
        let cert = params.signed_by(&key, &ca).expect("serving certificate");

        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));

        let clients = ClientKey::ALL
            .into_iter()
            .map(|client| {
                let mut params = CertificateParams::new(Vec::<String>::new()).expect("client certificate parameters");
                params.distinguished_name.push(DnType::CommonName, client.user());
                params.distinguished_name.push(DnType::OrganizationName, "system:masters");
                params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                let key = KeyPair::from_pem(client.pkcs8_pem()).expect("the fixed client key");
                let cert = params.signed_by(&key, &ca).expect("client certificate");
                let der = match client {
                    ClientKey::RsaV1 => version_1(cert.der(), &ca_key),
                    _ => cert.der().clone(),
                };
                let pem = format!("-----BEGIN CERTIFICATE-----\n{}-----END CERTIFICATE-----\n", pem_lines(&der));
                (client, pem, der, key.subject_public_key_info())
            })
            .collect::<Vec<_>>();
        // As kube-apiserver with a client CA (`tls.RequestClientCert`): every handshake asks for a
        // certificate and takes whatever comes; each request is then authenticated by it (an unknown one
        // is a 401), or, without one, by the other authenticators (here: none, or a 401 under
        // `require_client_certificate`).
        let verifier = Arc::new(AnyClientCertificate {
            hints: vec![rustls::DistinguishedName::from(subject_of(ca.der()))],
            known: clients.iter().map(|(_, _, der, spki)| (der.clone(), spki.clone())).collect(),
            algorithms: crypto_provider().signature_verification_algorithms,
        });
        let clients = clients.into_iter().map(|(client, pem, der, _)| (client, pem, der)).collect();
        let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![cert.der().clone()], key)
            .expect("the serving certificate and key");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // No TLS 1.3 session tickets right after the handshake: rustls's server sends them at once, and
        // that write acknowledges the client's Finished early, which hides the delayed-ACK stall that a
        // client without TCP_NODELAY meets on a real kube-apiserver (its Finished and its first request
        // are two small writes; the second waits for the server's delayed ACK, 40 ms on Linux). Without
        // them, the test server shows that stall as a real one does.
        config.send_tls13_tickets = 0;
        TlsMaterial { ca_pem: ca.pem(), ca_der: ca.der().clone(), config: Arc::new(config), clients }
    }
}

/// The server's side of client certificates, as Go's `tls.RequestClientCert`: asked for, any accepted;
/// the handshake's signature is checked for the certificates this server issued (with their public
/// keys, as Go does, so that a v1 certificate, which webpki refuses, is checked too).
#[derive(Debug)]
struct AnyClientCertificate {
    hints: Vec<rustls::DistinguishedName>,
    /// Each issued certificate (DER) with its SubjectPublicKeyInfo (DER).
    known: Vec<(CertificateDer<'static>, Vec<u8>)>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::server::danger::ClientCertVerifier for AnyClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        match self.known.iter().find(|(der, _)| der == cert) {
            Some((_, spki)) => rustls::crypto::verify_tls13_signature_with_raw_key(
                message,
                &rustls::pki_types::SubjectPublicKeyInfoDer::from(spki.as_slice()),
                dss,
                &self.algorithms,
            ),
            // Not one of ours: its requests are answered 401 whatever it signed.
            None => Ok(rustls::client::danger::HandshakeSignatureValid::assertion()),
        }
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The DER elements (tag, length and content each) that make up `content`.
fn der_elements(mut content: &[u8]) -> Vec<&[u8]> {
    let mut elements = Vec::new();
    while content.len() >= 2 {
        let (length, header) = match content[1] {
            short @ 0..0x80 => (usize::from(short), 2),
            long => {
                let count = usize::from(long & 0x7f);
                (content[2..2 + count].iter().fold(0, |n, byte| (n << 8) | usize::from(*byte)), 2 + count)
            }
        };
        elements.push(&content[..header + length]);
        content = &content[header + length..];
    }
    elements
}

/// The content of DER element `element`.
fn der_content(element: &[u8]) -> &[u8] {
    let header = if element[1] < 0x80 { 2 } else { 2 + usize::from(element[1] & 0x7f) };
    &element[header..]
}

/// DER element `tag` holding `content`.
fn der_element(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut element = vec![tag];
    match content.len() {
        n @ 0..0x80 => element.push(n as u8),
        n if n <= 0xff => element.extend([0x81, n as u8]),
        n => element.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    element.extend_from_slice(content);
    element
}

/// The certificate `cert` as an X.509 v1 certificate (no version, no extensions), signed again by the
/// CA: what `openssl x509 -req` makes without `-extfile`. rcgen makes only v3 ones.
fn version_1(cert: &CertificateDer<'_>, ca_key: &rcgen::KeyPair) -> CertificateDer<'static> {
    use rcgen::SigningKey as _;
    let outer = der_elements(cert);
    let parts = der_elements(der_content(outer[0]));
    let tbs_parts = der_elements(der_content(parts[0]));
    // [0] version, serial, signature, issuer, validity, subject, subjectPublicKeyInfo, [3] extensions
    let tbs = der_element(0x30, &tbs_parts[1..7].concat());
    let signature = ca_key.sign(&tbs).expect("sign the v1 certificate");
    let bits = der_element(0x03, &[&[0u8][..], &signature].concat());
    CertificateDer::from(der_element(0x30, &[&tbs[..], parts[1], &bits].concat()))
}

/// The subject (DER) of certificate `cert` (of the CA: the hint a client certificate request carries).
fn subject_of(cert: &CertificateDer<'_>) -> Vec<u8> {
    let tbs = der_elements(der_content(der_elements(cert)[0]))[0];
    let parts = der_elements(der_content(tbs));
    // [0] version, serial, signature, issuer, validity, subject
    parts[5].to_vec()
}

/// Base64 in lines of 64, as PEM has it.
fn pem_lines(der: &[u8]) -> String {
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    text.as_bytes().chunks(64).map(|line| format!("{}\n", String::from_utf8_lossy(line))).collect()
}

struct Shared {
    state: Mutex<State>,
    /// Wakes watchers: a write, a fault switched, a connection killed, the server stopping.
    changed: Condvar,
    /// Wakes the `wait_for_*` methods: a request logged or answered, a watch opened or closed.
    observed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until `done` holds; false on timeout.
    fn wait_for(&self, timeout: Duration, mut done: impl FnMut(&State) -> bool) -> bool {
        let st = self.lock();
        let (st, _) = self.observed.wait_timeout_while(st, timeout, |st| !done(st)).unwrap_or_else(|e| e.into_inner());
        done(&st)
    }

    /// Sets the status of logged request `index` and counts it.
    fn answered(&self, index: usize, status: u16) {
        let mut st = self.lock();
        if let Some(entry) = st.log.get_mut(index) {
            entry.status = status;
            let verb = entry.verb;
            *st.counts.entry((verb.to_string(), status)).or_default() += 1;
        }
        self.observed.notify_all();
    }
}

/// A pending [`AfterCommit`] fault.
struct AfterCommitFault {
    remaining: usize,
    how: AfterCommit,
    /// Only writes by this holder (the holderIdentity before or after the write).
    holder: Option<String>,
}

/// (namespace, name) -> stored Lease.
type Objects = BTreeMap<(String, String), Value>;

struct State {
    /// The global resourceVersion counter: the resourceVersion of the last write.
    rv: u64,
    /// A watch from a resourceVersion below this gets 410 Expired.
    history_start: u64,
    namespaces: BTreeSet<String>,
    objects: Objects,
    /// Every write since `history_start`, oldest first.
    events: Vec<Event>,
    /// Remaining count and status of injected failures.
    failures: Option<(usize, u16)>,
    /// Injected failures are answered with a gateway's JSON body (`fail_next_gateway`).
    gateway_failures: bool,
    /// 0: failures as set above; 1: an HTML page (UTF-8); 2: an HTML page in ISO-8859-1.
    page_failures: u8,
    /// Every create or update is answered with an HTML page of this status, not carried out.
    page_on_writes: Option<u16>,
    /// The next n creates or updates are answered with the real kube-apiserver's plain-text
    /// `http.Error` body for this status (APF / max-in-flight 429, panic 500), not carried out.
    text_on_writes: Option<(usize, u16)>,
    /// Until this instant, every get and list answers 429: the real server's plain text (true) or a
    /// `Status` (false).
    reads_429_until: Option<(Instant, bool)>,
    /// `VERB:NAME` -> remaining count and status of failures for that verb on that Lease.
    named_failures: BTreeMap<String, (usize, u16)>,
    /// `VERB:NAME` -> failures armed for another `VERB:NAME` once its own last failure is answered.
    chained_failures: BTreeMap<String, (String, usize, u16)>,
    after_commit: Option<AfterCommitFault>,
    watch_fault: Option<WatchFault>,
    /// Continued pages of a list carry the token they were asked with (see `set_endless_lists`).
    endless_lists: bool,
    /// The objects as they were at each resourceVersion a paged list began at, the few newest: its later
    /// pages are read from them, a consistent snapshot, as etcd reads them at the list's revision.
    list_snapshots: BTreeMap<u64, Arc<Objects>>,
    latency: Duration,
    commit_delay: Duration,
    bookmark_interval: Duration,
    /// How far the watch cache lags behind etcd: events reach watches this much after their commit.
    watch_lag: Duration,
    forbidden: BTreeSet<String>,
    unauthorized: bool,
    /// The issued client certificates (DER, and which key); with `client_certificate_required`, a request
    /// without one of them is 401.
    client_certificates: Vec<(CertificateDer<'static>, ClientKey)>,
    client_certificate_required: bool,
    /// With `accept_token`: the only bearer token that authenticates.
    accepted_token: Option<String>,
    log: Vec<RequestLog>,
    counts: BTreeMap<(String, u16), usize>,
    open_watches: usize,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    stopping: bool,
}

struct Conn {
    stream: TcpStream,
    watching: bool,
    killed: bool,
}

struct Event {
    rv: u64,
    kind: &'static str,
    namespace: String,
    name: String,
    /// The event as every watch sends it, serialized once at the write (as the real server's watch
    /// cache does), so that a hundred watches do not each serialize it under the lock.
    line: Arc<str>,
    /// When it was committed (the watch cache delivers it `watch_lag` later).
    at: Instant,
}

impl State {
    /// Moves the counter on and records a write; `object` already carries the new resourceVersion.
    fn record(&mut self, kind: &'static str, namespace: &str, name: &str, object: Value) {
        self.events.push(Event {
            rv: self.rv,
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
            line: event_line(kind, &object).into(),
            at: Instant::now(),
        });
        if self.events.len() > MAX_HISTORY {
            let drop = self.events.len() - MAX_HISTORY / 2;
            self.history_start = self.events[drop - 1].rv;
            self.events.drain(..drop);
            let start = self.history_start;
            self.list_snapshots.retain(|at, _| *at >= start);
        }
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn kill_conns(&mut self, only_watches: bool) {
        for conn in self.conns.values_mut() {
            if !only_watches || conn.watching {
                conn.killed = true;
                let _ = conn.stream.shutdown(Shutdown::Both);
            }
        }
    }

    fn is_killed(&self, conn: u64) -> bool {
        self.stopping || self.conns.get(&conn).is_none_or(|c| c.killed)
    }

    /// The pending after-commit fault, if it applies to a write by `before` or `after` (holderIdentity of
    /// the object before and after the write); takes one shot.
    fn take_after_commit(&mut self, before: &str, after: &str) -> Option<AfterCommit> {
        let fault = self.after_commit.as_mut()?;
        if fault.holder.as_deref().is_some_and(|holder| holder != before && holder != after) {
            return None;
        }
        let how = fault.how;
        fault.remaining -= 1;
        if fault.remaining == 0 {
            self.after_commit = None;
        }
        Some(how)
    }
}

impl TestApiServer {
    /// Binds 127.0.0.1 on a free port and serves HTTPS with a fresh CA. Namespace `default` exists.
    pub fn start() -> TestApiServer {
        TestApiServer::start_with(Some(TlsMaterial::generate()))
    }

    /// As [`start`](Self::start), but plain HTTP: for debugging only (what users run is HTTPS).
    pub fn start_plain() -> TestApiServer {
        TestApiServer::start_with(None)
    }

    fn start_with(tls: Option<TlsMaterial>) -> TestApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let state = State {
            rv: FIRST_RESOURCE_VERSION,
            history_start: FIRST_RESOURCE_VERSION,
            namespaces: ["default".to_string()].into_iter().collect(),
            objects: BTreeMap::new(),
            events: Vec::new(),
            failures: None,
            gateway_failures: false,
            page_failures: 0,
            page_on_writes: None,
            text_on_writes: None,
            reads_429_until: None,
            after_commit: None,
            watch_fault: None,
            endless_lists: false,
            list_snapshots: BTreeMap::new(),
            latency: Duration::ZERO,
            commit_delay: Duration::ZERO,
            bookmark_interval: DEFAULT_BOOKMARK_INTERVAL,
            watch_lag: Duration::ZERO,
            named_failures: BTreeMap::new(),
            chained_failures: BTreeMap::new(),
            forbidden: BTreeSet::new(),
            unauthorized: false,
            client_certificates: tls
                .as_ref()
                .map(|tls| tls.clients.iter().map(|(key, _, der)| (der.clone(), *key)).collect())
                .unwrap_or_default(),
            client_certificate_required: false,
            accepted_token: None,
            log: Vec::new(),
            counts: BTreeMap::new(),
            open_watches: 0,
            conns: HashMap::new(),
            next_conn: 0,
            stopping: false,
        };
        let shared = Arc::new(Shared { state: Mutex::new(state), changed: Condvar::new(), observed: Condvar::new() });
        let acceptor = {
            let shared = shared.clone();
            let config = tls.as_ref().map(|tls| tls.config.clone());
            thread::Builder::new()
                .name("test-apiserver".into())
                .spawn(move || accept_loop(shared, listener, config))
                .expect("spawn the listener thread")
        };
        TestApiServer { shared, addr, tls, acceptor: Some(acceptor) }
    }

    /// `https://127.0.0.1:PORT` (`http://` for [`start_plain`](Self::start_plain)).
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls.is_some() { "https" } else { "http" }, self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether it serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The PEM of this server's CA (what `certificate-authority-data` carries, base64). Panics for a
    /// plain-HTTP server, which has none.
    pub fn ca_pem(&self) -> String {
        self.tls.as_ref().expect("a plain-HTTP test server has no CA").ca_pem.clone()
    }

    /// A complete kubeconfig for this server: one cluster (by IP, with the CA as data), a user without
    /// credentials, and a current context with `namespace`.
    pub fn kubeconfig_yaml(&self, namespace: &str) -> String {
        self.kubeconfig_yaml_with(&KubeconfigOptions::new(namespace))
    }

    /// A kubeconfig as [`kubeconfig_yaml`](Self::kubeconfig_yaml), with the server named by IP or by
    /// `localhost`, the CA given as data, as a file or not at all, and an optional `proxy-url`.
    pub fn kubeconfig_yaml_with(&self, options: &KubeconfigOptions) -> String {
        // JSON strings are YAML double-quoted scalars, so this quotes anything safely.
        let quote = |s: &str| Value::String(s.to_string()).to_string();
        let host = if options.localhost { "localhost".to_string() } else { self.addr.ip().to_string() };
        let server = format!("{}://{host}:{}", if self.tls.is_some() { "https" } else { "http" }, self.addr.port());
        let mut cluster = format!("    server: {}\n", quote(&server));
        if let Some(tls) = &self.tls {
            match &options.trust {
                Trust::CaData => {
                    let data = base64::engine::general_purpose::STANDARD.encode(&tls.ca_pem);
                    cluster.push_str(&format!("    certificate-authority-data: {data}\n"));
                }
                Trust::CaFile(path) => {
                    cluster.push_str(&format!("    certificate-authority: {}\n", quote(&path.to_string_lossy())));
                }
                Trust::InsecureSkipTlsVerify => cluster.push_str("    insecure-skip-tls-verify: true\n"),
                Trust::SystemRoots => {}
            }
        }
        if let Some(proxy) = &options.proxy_url {
            cluster.push_str(&format!("    proxy-url: {}\n", quote(proxy)));
        }
        let user = match (&self.tls, options.client_certificate) {
            (Some(tls), Some(key)) => {
                let (_, cert_pem, _) =
                    tls.clients.iter().find(|(k, _, _)| *k == key).expect("an issued client certificate");
                let data = |pem: &str| base64::engine::general_purpose::STANDARD.encode(pem);
                format!(
                    "\n    client-certificate-data: {}\n    client-key-data: {}",
                    data(cert_pem),
                    data(key.key_pem())
                )
            }
            _ => " {}".to_string(),
        };
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: test-apiserver\n  cluster:\n{cluster}\
             users:\n\
             - name: test-user\n  user:{user}\n\
             contexts:\n\
             - name: test\n  context:\n    cluster: test-apiserver\n    user: test-user\n    namespace: {namespace}\n\
             current-context: test\n\
             preferences: {{}}\n",
            namespace = quote(&options.namespace),
        )
    }

    /// A rustls client configuration that trusts this server's CA (HTTP/1.1), for raw clients.
    pub fn client_tls_config(&self) -> Arc<rustls::ClientConfig> {
        let tls = self.tls.as_ref().expect("a plain-HTTP test server has no CA");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(tls.ca_der.clone()).expect("the CA certificate");
        let mut config = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// A new raw connection to this server, TLS or plain as it serves (the TLS handshake happens on the
    /// first read or write).
    pub fn connect(&self) -> ClientStream {
        let socket = TcpStream::connect(self.addr).expect("connect to the test API server");
        let _ = socket.set_nodelay(true);
        match &self.tls {
            None => ClientStream::Plain(socket),
            Some(_) => {
                let name = ServerName::IpAddress(self.addr.ip().into());
                let conn = rustls::ClientConnection::new(self.client_tls_config(), name).expect("a TLS client");
                ClientStream::Tls(Box::new(rustls::StreamOwned::new(conn, socket)))
            }
        }
    }

    /// One request on a fresh connection (`Connection: close`), as any client would send it; the status
    /// and the body of the answer. For set-up and checks that want no kube client; panics on I/O errors.
    pub fn call(&self, method: &str, target: &str, body: Option<&str>) -> (u16, String) {
        let mut stream = self.connect();
        let _ = stream.socket().set_read_timeout(Some(Duration::from_secs(30)));
        let mut request = format!("{method} {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.addr);
        if let Some(body) = body {
            request.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
        }
        request.push_str("\r\n");
        request.push_str(body.unwrap_or(""));
        stream.write_all(request.as_bytes()).expect("send the request");
        let mut answer = Vec::new();
        // A TLS peer that closes without close_notify ends with an error after the data: keep what came.
        let _ = stream.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        let status =
            head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no answer: {answer:?}"));
        (status, body.to_string())
    }

    pub fn add_namespace(&self, namespace: &str) {
        let mut st = self.shared.lock();
        st.namespaces.insert(namespace.to_string());
    }

    /// The next `n` requests (any verb, watches too) answer `status` with the real server's `Status`
    /// body for it: 500 InternalError, 503 ServiceUnavailable, 429 TooManyRequests (with `Retry-After:
    /// 1`), 504 Timeout, and so on. Nothing is carried out. Replaces any failures still pending.
    pub fn fail_next(&self, n: usize, status: u16) {
        let mut st = self.shared.lock();
        st.failures = if n == 0 { None } else { Some((n, status)) };
        st.gateway_failures = false;
        st.page_failures = 0;
    }

    /// As [`fail_next`](Self::fail_next), but with the JSON body of an API gateway in front of the server
    /// (`{"message": ...}`, no `code`): see [`AfterCommit::Gateway`].
    pub fn fail_next_gateway(&self, n: usize, status: u16) {
        let mut st = self.shared.lock();
        st.failures = if n == 0 { None } else { Some((n, status)) };
        st.gateway_failures = true;
        st.page_failures = 0;
    }

    /// As `fail_next`, with a gateway's HTML page: UTF-8, or ISO-8859-1 when `latin1`.
    pub fn fail_next_page(&self, n: usize, status: u16, latin1: bool) {
        let mut st = self.shared.lock();
        st.failures = if n == 0 { None } else { Some((n, status)) };
        st.gateway_failures = false;
        st.page_failures = if latin1 { 2 } else { 1 };
    }

    /// While `Some`, every create or update (POST, PUT) is answered with a gateway's HTML page
    /// of that status and not carried out; reads go on as usual.
    pub fn page_on_writes(&self, status: Option<u16>) {
        self.shared.lock().page_on_writes = status;
    }

    /// as `fail_next`, but with the real kube-apiserver's own plain-text answers (`http.Error`):
    /// APF's and max-in-flight's 429 "Too many requests, please try again later." with Retry-After, the
    /// panic filter's 500, the mux's "404 page not found".
    pub fn fail_next_text(&self, n: usize, status: u16) {
        let mut st = self.shared.lock();
        st.failures = if n == 0 { None } else { Some((n, status)) };
        st.gateway_failures = false;
        st.page_failures = 3;
    }

    /// for `window`, every get and list answers 429 (APF's plain text when `text`, else a Status).
    pub fn reads_429_for(&self, window: Duration, text: bool) {
        self.shared.lock().reads_429_until = Some((Instant::now() + window, text));
    }

    /// the next `n` creates or updates answer the real apiserver's plain-text `status`, not carried out.
    pub fn text_on_writes(&self, n: usize, status: u16) {
        self.shared.lock().text_on_writes = (n > 0).then_some((n, status));
    }

    /// The next `n` creates or updates (POST or PUT) of any Lease that commit a change are carried out
    /// (stored, resourceVersion moved on, the event sent to watches) and then answered as `how` says:
    /// failed with a 500 or 504 `Status`, dropped without an answer, or answered late. Writes that fail
    /// (409, 422, ...) or change nothing are answered as usual and do not count. Replaces any after-commit
    /// fault still pending; `n == 0` clears it.
    pub fn after_commit(&self, n: usize, how: AfterCommit) {
        self.set_after_commit(n, how, None);
    }

    /// As [`after_commit`](Self::after_commit), but only for writes by `holder`: writes whose Lease has
    /// `holderIdentity` `holder` before or after the write (acquisitions, renewals and releases by it).
    pub fn after_commit_of(&self, holder: &str, n: usize, how: AfterCommit) {
        self.set_after_commit(n, how, Some(holder.to_string()));
    }

    /// Shots left of the pending after-commit fault (0: none pending, or all fired).
    pub fn after_commit_pending(&self) -> usize {
        self.shared.lock().after_commit.as_ref().map_or(0, |fault| fault.remaining)
    }

    fn set_after_commit(&self, n: usize, how: AfterCommit, holder: Option<String>) {
        let mut st = self.shared.lock();
        st.after_commit = (n > 0).then_some(AfterCommitFault { remaining: n, how, holder });
    }

    /// Delays every answer (after the request has been carried out) by `latency`; zero for none.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    /// Holds every write that goes to storage (a create, a delete of an existing Lease, a replace of the
    /// current version) for `delay` before it is carried out, as etcd's Raft round and fsync hold it on
    /// a real cluster (issue 14: a release PUT took 5.5 ms on loopback); zero for none, at most a minute.
    /// Writes sent together wait together, and each one's compare-and-swap is checked after its wait, so
    /// a herd's writes all wait and then all but the first find the version moved; the watch event goes
    /// out at the commit, with the writer's answer. A replace already stale when it comes in, and a
    /// forbidden or malformed write, are answered without the wait, as kube-apiserver answers them
    /// before etcd.
    pub fn set_commit_delay(&self, delay: Duration) {
        self.shared.lock().commit_delay = delay.min(Duration::from_secs(60));
    }

    /// The watch cache's lag behind etcd: every event reaches watches this long after its commit (the
    /// write's own answer is not delayed), as on a real, busy kube-apiserver, whose events come through
    /// its watch cache; its bookmarks then follow the cache's rules (never a version not yet delivered,
    /// none at or below the watcher's own).
    pub fn set_watch_lag(&self, lag: Duration) {
        self.shared.lock().watch_lag = lag;
        self.shared.changed.notify_all();
    }

    /// How often a watch that asked for `allowWatchBookmarks=true` gets a BOOKMARK (default 1s).
    pub fn set_bookmark_interval(&self, interval: Duration) {
        self.shared.lock().bookmark_interval = interval.max(Duration::from_millis(1));
        self.shared.changed.notify_all();
    }

    /// While on, every continued page of a list carries, as its own `continue`, the token it was asked with:
    /// a proxy or aggregated server whose chain of pages never ends.
    pub fn set_endless_lists(&self, on: bool) {
        self.shared.lock().endless_lists = on;
    }

    /// While `Some`, every watch, those open now included, gets the fault: an ERROR event then the end
    /// of the stream, or the end at once. A watch request is still answered 200 (and counted so), as the
    /// real server answers it. `None` turns it off; watches opened afterwards stream as usual.
    pub fn set_watch_fault(&self, fault: Option<WatchFault>) {
        self.shared.lock().watch_fault = fault;
        self.shared.changed.notify_all();
    }

    /// Ends every open watch now by closing its connection abruptly (no terminating chunk).
    pub fn drop_watches(&self) {
        let mut st = self.shared.lock();
        st.kill_conns(true);
        self.shared.changed.notify_all();
    }

    /// As if the apiserver restarted: every connection is closed (the listener keeps its port), all
    /// objects are kept, the resourceVersion counter moves on by a gap, and the event history is
    /// forgotten, so that a watch from an older resourceVersion gets 410.
    pub fn restart(&self) {
        let mut st = self.shared.lock();
        st.rv += RESTART_GAP;
        st.history_start = st.rv;
        st.events.clear();
        st.kill_conns(false);
        self.shared.changed.notify_all();
    }

    /// What etcd holds now (every object and the resourceVersion counter), for `restore`.
    pub fn snapshot(&self) -> Snapshot {
        let st = self.shared.lock();
        Snapshot { rv: st.rv, objects: st.objects.clone() }
    }

    /// As if etcd were restored from `snapshot` (without etcdutl's `--bump-revision`) and the API server
    /// restarted on it: the objects and the resourceVersion counter go back to the snapshot's, so that
    /// versions handed out since are handed out again for other records; the event history is forgotten
    /// and every connection is closed.
    pub fn restore(&self, snapshot: &Snapshot) {
        let mut st = self.shared.lock();
        st.rv = snapshot.rv;
        st.objects = snapshot.objects.clone();
        st.history_start = st.rv;
        st.events.clear();
        st.list_snapshots.clear();
        st.kill_conns(false);
        self.shared.changed.notify_all();
    }

    /// Forgets the event history, as etcd's compaction at the current revision: a watch from any
    /// resourceVersion older than the current one gets the 410 ERROR line, and so does a list's page
    /// continued from an older one. Open watches go on.
    pub fn compact(&self) {
        let mut st = self.shared.lock();
        st.history_start = st.rv;
        st.events.clear();
        let rv = st.rv;
        st.list_snapshots.retain(|at, _| *at >= rv);
    }

    /// Answers 403 Forbidden to every Lease request with this verb: get, list, watch, create, update,
    /// delete or deletecollection; `VERB:NAME` forbids the verb on that Lease only, as a Role's
    /// `resourceNames` does.
    pub fn forbid(&self, verb: &str) {
        self.shared.lock().forbidden.insert(verb.to_string());
    }

    /// The next `n` requests with `verb_name` (`VERB:NAME`, as for `forbid`) answer
    /// `status`, as `fail_next` does; other requests are carried out as usual.
    pub fn fail_next_on(&self, verb_name: &str, n: usize, status: u16) {
        self.shared.lock().named_failures.insert(verb_name.to_string(), (n, status));
    }

    /// `fail_next_on(verb_name, n, status)`, and the moment its last failure is answered,
    /// `fail_next_on(then, m, then_status)`: a window that opens on an event of the server's, not of the
    /// test's polling (say, reads that fail right after a write was answered 503).
    pub fn fail_next_on_then(&self, verb_name: &str, n: usize, status: u16, then: &str, m: usize, then_status: u16) {
        let mut st = self.shared.lock();
        st.named_failures.insert(verb_name.to_string(), (n, status));
        st.chained_failures.insert(verb_name.to_string(), (then.to_string(), m, then_status));
    }

    /// Undoes `forbid(verb)`.
    pub fn allow(&self, verb: &str) {
        self.shared.lock().forbidden.remove(verb);
    }

    /// While on, every request answers 401 Unauthorized, as for a bad token.
    pub fn unauthorized(&self, on: bool) {
        self.shared.lock().unauthorized = on;
    }

    /// While on, a request on a connection that presented none of this server's client certificates
    /// answers 401 Unauthorized, as on a cluster whose only credentials are client certificates.
    pub fn require_client_certificate(&self, on: bool) {
        self.shared.lock().client_certificate_required = on;
    }

    /// With `Some(token)`, a request authenticated by none of this server's client certificates answers 401
    /// Unauthorized unless it carries `Authorization: Bearer TOKEN`, as on a cluster whose token
    /// authenticator knows only that token (an exec plugin's, say). Any other bearer token answers 401
    /// too, as kube-apiserver refuses a token it cannot authenticate.
    pub fn accept_token(&self, token: Option<&str>) {
        self.shared.lock().accepted_token = token.map(str::to_string);
    }

    /// Every request received so far, in order, with its verb and answered status.
    pub fn requests(&self) -> Vec<RequestLog> {
        self.shared.lock().log.clone()
    }

    /// Requests answered since the start (or [`reset_counts`](Self::reset_counts)), by (verb, status): see
    /// [`RequestLog`]. A request is counted when its answer goes out, after any latency or delay (a watch
    /// when its stream begins); one whose connection was closed without an answer counts with status 0.
    /// What never became a request is not counted: a failed TLS handshake, plain HTTP on the TLS port, a
    /// malformed request line or header.
    pub fn counts(&self) -> BTreeMap<(String, u16), usize> {
        self.shared.lock().counts.clone()
    }

    /// Requests answered with this verb, whatever the status.
    pub fn count(&self, verb: &str) -> usize {
        self.shared.lock().counts.iter().filter(|((v, _), _)| v == verb).map(|(_, n)| n).sum()
    }

    /// Starts [`counts`](Self::counts) afresh (the request log is kept).
    pub fn reset_counts(&self) {
        self.shared.lock().counts.clear();
    }

    /// Waits until `done` holds for the request log; false on timeout. Woken by every request logged or
    /// answered: no polling. `done` runs with the server's lock held: it must not call the server.
    pub fn wait_for_requests(&self, mut done: impl FnMut(&[RequestLog]) -> bool, timeout: Duration) -> bool {
        self.shared.wait_for(timeout, |st| done(&st.log))
    }

    /// Waits until `done` holds for [`counts`](Self::counts); false on timeout. `done` must not call the
    /// server.
    pub fn wait_for_counts(
        &self,
        mut done: impl FnMut(&BTreeMap<(String, u16), usize>) -> bool,
        timeout: Duration,
    ) -> bool {
        self.shared.wait_for(timeout, |st| done(&st.counts))
    }

    /// Waits until exactly `n` watches are open; false on timeout.
    pub fn wait_for_watch_count(&self, n: usize, timeout: Duration) -> bool {
        self.shared.wait_for(timeout, |st| st.open_watches == n)
    }

    /// Waits until connection `conn` (see [`RequestLog::conn`]) is closed, by either side; false on
    /// timeout.
    pub fn wait_for_connection_closed(&self, conn: u64, timeout: Duration) -> bool {
        self.shared.wait_for(timeout, |st| conn < st.next_conn && !st.conns.contains_key(&conn))
    }

    /// Watches currently open.
    pub fn watch_count(&self) -> usize {
        self.shared.lock().open_watches
    }

    /// The current value of the global resourceVersion counter.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// The stored Lease, as a GET would serve it.
    pub fn lease(&self, namespace: &str, name: &str) -> Option<Value> {
        self.shared.lock().objects.get(&(namespace.to_string(), name.to_string())).cloned()
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        {
            let mut st = self.shared.lock();
            st.stopping = true;
            st.kill_conns(false);
        }
        self.shared.changed.notify_all();
        // Wake the listener thread out of accept().
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// A raw client connection to the test server: TLS (trusting its CA) or plain, as it serves.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl ClientStream {
    /// The TCP socket under it: for timeouts and shutdown.
    pub fn socket(&self) -> &TcpStream {
        match self {
            ClientStream::Plain(socket) => socket,
            ClientStream::Tls(stream) => stream.get_ref(),
        }
    }
}

impl Read for ClientStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ClientStream::Plain(socket) => socket.read(buf),
            ClientStream::Tls(stream) => stream.read(buf),
        }
    }
}

impl Write for ClientStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ClientStream::Plain(socket) => socket.write(buf),
            ClientStream::Tls(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            ClientStream::Plain(socket) => socket.flush(),
            ClientStream::Tls(stream) => stream.flush(),
        }
    }
}

fn accept_loop(shared: Arc<Shared>, listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else {
            if shared.lock().stopping {
                return;
            }
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let Ok(registered) = stream.try_clone() else {
            continue;
        };
        let id = {
            let mut st = shared.lock();
            if st.stopping {
                return;
            }
            let id = st.next_conn;
            st.next_conn += 1;
            st.conns.insert(id, Conn { stream: registered, watching: false, killed: false });
            id
        };
        let spawned = thread::Builder::new().name(format!("test-apiserver-conn-{id}")).spawn({
            let shared = shared.clone();
            let tls = tls.clone();
            move || serve_connection(&shared, id, stream, tls)
        });
        if spawned.is_err() {
            shared.lock().conns.remove(&id);
        }
    }
}

/// The server's side of one connection.
enum Transport {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(socket) => socket.read(buf),
            Transport::Tls(stream) => stream.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(socket) => socket.write(buf),
            Transport::Tls(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(socket) => socket.flush(),
            Transport::Tls(stream) => stream.flush(),
        }
    }
}

/// One connection as the handlers see it: a buffered reader over the transport (answers are written
/// through it too), and the raw socket, for noticing a client that hung up and for closing abruptly.
struct Io {
    reader: BufReader<Transport>,
    socket: TcpStream,
}

impl Io {
    fn writer(&mut self) -> &mut Transport {
        self.reader.get_mut()
    }

    /// Whether the client closed its side (or reset the connection), without consuming anything: unlike a
    /// peek, this sees the FIN behind bytes nobody reads, such as a TLS close_notify.
    fn client_hung_up(&self) -> bool {
        // POLLRDHUP (Linux), which nix 0.30 does not name.
        let rdhup = PollFlags::from_bits_retain(0x2000);
        let mut fds = [PollFd::new(self.socket.as_fd(), rdhup)];
        // Only POLLRDHUP was asked for; POLLHUP, POLLERR and POLLNVAL come unasked: any event is a hang-up.
        // (`revents()` cannot be used: it hides flags nix does not know.)
        match poll(&mut fds, 0u8) {
            Ok(ready) => ready > 0,
            Err(_) => true,
        }
    }

    /// Closes the connection at once: no TLS close_notify, no terminating chunk.
    fn abort(&self) {
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

fn serve_connection(shared: &Arc<Shared>, id: u64, stream: TcpStream, tls: Option<Arc<rustls::ServerConfig>>) {
    // Go's net package sets TCP_NODELAY on every connection; so does kube-apiserver, then.
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let Ok(socket) = stream.try_clone() else {
        shared.lock().conns.remove(&id);
        return;
    };
    let transport = match tls {
        None => Some(Transport::Plain(stream)),
        Some(config) => {
            // Go answers plain HTTP on a TLS port with a 400 in plain text; a TLS record starts with 0x16.
            let mut first = [0u8; 1];
            match stream.peek(&mut first) {
                Ok(1) if first[0] != 0x16 => {
                    let mut plain = &stream;
                    let _ = plain.write_all(PLAIN_HTTP_TO_HTTPS);
                    None
                }
                Ok(1) => rustls::ServerConnection::new(config)
                    .ok()
                    .map(|conn| Transport::Tls(Box::new(rustls::StreamOwned::new(conn, stream)))),
                _ => None,
            }
        }
    };
    if let Some(transport) = transport
        && let Ok(io_socket) = socket.try_clone()
    {
        let mut io = Io { reader: BufReader::new(transport), socket: io_socket };
        loop {
            let request = match read_request(&mut io.reader) {
                Ok(Some(request)) => request,
                Ok(None) | Err(ReadError::Closed) => break,
                Err(ReadError::Bad(code, message)) => {
                    let response = status_response(code, reason_for(code), &message, None);
                    let _ = write_response(io.writer(), &response, false);
                    break;
                }
            };
            if !handle(shared, id, &request, &mut io) || !request.keep_alive {
                close_gracefully(&mut io);
                break;
            }
        }
    }
    let _ = socket.shutdown(Shutdown::Both);
    shared.lock().conns.remove(&id);
    shared.observed.notify_all();
}

/// Ends a connection as Go does on `Connection: close`: TLS close_notify first.
fn close_gracefully(io: &mut Io) {
    if let Transport::Tls(stream) = io.writer() {
        stream.conn.send_close_notify();
        let _ = stream.flush();
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

struct Request {
    method: String,
    path: String,
    query: String,
    /// Header names in lower case.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    keep_alive: bool,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The first value of query parameter `key`, decoded.
    fn param(&self, key: &str) -> Option<String> {
        self.query.split('&').filter(|p| !p.is_empty()).find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k, true) == key).then(|| percent_decode(v, true))
        })
    }
}

enum ReadError {
    /// The client went away (before or in the middle of a request).
    Closed,
    /// A malformed request: answer this status and close.
    Bad(u16, String),
}

fn read_line(reader: &mut impl BufRead) -> Result<Option<String>, ReadError> {
    let mut buf = Vec::new();
    let n = reader.take(MAX_HEADER_LINE as u64).read_until(b'\n', &mut buf).map_err(|_| ReadError::Closed)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return if n >= MAX_HEADER_LINE {
            Err(ReadError::Bad(431, "request header line too long".into()))
        } else {
            Err(ReadError::Closed)
        };
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    String::from_utf8(buf).map(Some).map_err(|_| ReadError::Bad(400, "request header is not UTF-8".into()))
}

/// Reads one request; a `100 Continue` is written through the same reader's transport.
fn read_request(reader: &mut BufReader<Transport>) -> Result<Option<Request>, ReadError> {
    let line = loop {
        match read_line(reader)? {
            None => return Ok(None),
            Some(line) if line.is_empty() => continue,
            Some(line) => break line,
        }
    };
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(ReadError::Bad(400, "malformed HTTP request line".into()));
    };
    if method.is_empty() || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Err(ReadError::Bad(400, "malformed HTTP request line".into()));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::new();
    loop {
        let Some(line) = read_line(reader)? else {
            return Err(ReadError::Closed);
        };
        if line.is_empty() {
            break;
        }
        if headers.len() >= MAX_HEADERS {
            return Err(ReadError::Bad(431, "too many request headers".into()));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(ReadError::Bad(400, "malformed HTTP header".into()));
        };
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.to_ascii_lowercase());
    let connection = header("connection").unwrap_or_default();
    let keep_alive =
        if version == "HTTP/1.0" { connection.contains("keep-alive") } else { !connection.contains("close") };
    if header("expect").is_some_and(|e| e == "100-continue") {
        let writer = reader.get_mut();
        writer
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .and_then(|()| writer.flush())
            .map_err(|_| ReadError::Closed)?;
    }
    let body = if header("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        read_chunked_body(reader)?
    } else if let Some(length) = header("content-length") {
        let length: usize = length.parse().map_err(|_| ReadError::Bad(400, "invalid Content-Length".into()))?;
        if length > MAX_BODY {
            return Err(ReadError::Bad(413, "request entity too large".into()));
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).map_err(|_| ReadError::Closed)?;
        body
    } else {
        Vec::new()
    };
    Ok(Some(Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
        body,
        keep_alive,
    }))
}

fn read_chunked_body(reader: &mut impl BufRead) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        let Some(line) = read_line(reader)? else {
            return Err(ReadError::Closed);
        };
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| ReadError::Bad(400, "malformed chunked body".into()))?;
        if size == 0 {
            // Trailers, up to the empty line.
            while let Some(line) = read_line(reader)? {
                if line.is_empty() {
                    return Ok(body);
                }
            }
            return Err(ReadError::Closed);
        }
        if body.len() + size > MAX_BODY {
            return Err(ReadError::Bad(413, "request entity too large".into()));
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..]).map_err(|_| ReadError::Closed)?;
        match read_line(reader)? {
            Some(line) if line.is_empty() => {}
            Some(_) => return Err(ReadError::Bad(400, "malformed chunked body".into())),
            None => return Err(ReadError::Closed),
        }
    }
}

fn percent_decode(s: &str, plus_is_space: bool) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push(high * 16 + low);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Response {
    status: u16,
    body: Vec<u8>,
    content_type: &'static str,
    extra_headers: Vec<(&'static str, String)>,
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        413 => "Request Entity Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

fn response_head(
    status: u16,
    content_type: &str,
    length: Option<usize>,
    extra: &[(&str, String)],
    close: bool,
) -> String {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nAudit-Id: {}\r\nCache-Control: no-cache, private\r\nContent-Type: {content_type}\r\nDate: {}\r\n",
        reason_phrase(status),
        new_uid(),
        http_date(SystemTime::now()),
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    match length {
        Some(length) => head.push_str(&format!("Content-Length: {length}\r\n")),
        None => head.push_str("Transfer-Encoding: chunked\r\n"),
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    head
}

fn write_response(w: &mut impl Write, response: &Response, keep_alive: bool) -> io::Result<()> {
    let head = response_head(
        response.status,
        response.content_type,
        Some(response.body.len()),
        &response.extra_headers,
        !keep_alive,
    );
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&response.body);
    w.write_all(&bytes)?;
    w.flush()
}

fn write_chunk(w: &mut impl Write, data: &[u8]) -> io::Result<()> {
    let mut bytes = format!("{:x}\r\n", data.len()).into_bytes();
    bytes.extend_from_slice(data);
    bytes.extend_from_slice(b"\r\n");
    w.write_all(&bytes)?;
    w.flush()
}

// ---------------------------------------------------------------------------------------------
// JSON as the real server writes it
// ---------------------------------------------------------------------------------------------

/// Compact JSON with object keys in the order of the Go structs (maps such as labels are sorted).
fn to_json(value: &Value) -> String {
    let mut out = String::new();
    write_json(&mut out, value, "");
    out
}

fn key_order(context: &str) -> &'static [&'static str] {
    match context {
        "" | "object" | "items" => &[
            "type",
            "object",
            "kind",
            "apiVersion",
            "metadata",
            "spec",
            "items",
            "status",
            "message",
            "reason",
            "details",
            "code",
        ],
        "metadata" => &[
            "name",
            "generateName",
            "namespace",
            "selfLink",
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "deletionTimestamp",
            "labels",
            "annotations",
            "managedFields",
            "continue",
            "remainingItemCount",
        ],
        "spec" => &[
            "holderIdentity",
            "leaseDurationSeconds",
            "acquireTime",
            "renewTime",
            "leaseTransitions",
            "strategy",
            "preferredHolder",
        ],
        "details" => &["name", "group", "kind", "uid", "causes", "retryAfterSeconds"],
        "causes" => &["reason", "message", "field"],
        _ => &[],
    }
}

fn write_json(out: &mut String, value: &Value, context: &str) {
    match value {
        Value::Object(map) => {
            let order = key_order(context);
            let rank = |k: &str| order.iter().position(|o| *o == k).unwrap_or(usize::MAX);
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_json(out, &map[key], key);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(out, item, context);
            }
            out.push(']');
        }
        leaf => out.push_str(&leaf.to_string()),
    }
}

fn json_response(status: u16, value: &Value) -> Response {
    Response { status, body: to_json(value).into_bytes(), content_type: "application/json", extra_headers: Vec::new() }
}

fn status_value(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "code": code,
    });
    if !reason.is_empty() {
        status["reason"] = json!(reason);
    }
    if let Some(details) = details {
        status["details"] = details;
    }
    status
}

fn status_response(code: u16, reason: &str, message: &str, details: Option<Value>) -> Response {
    json_response(code, &status_value(code, reason, message, details))
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 | 431 => "BadRequest",
        413 => "RequestEntityTooLarge",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "",
    }
}

fn lease_details(name: &str) -> Value {
    let mut details = json!({"group": GROUP, "kind": "leases"});
    if !name.is_empty() {
        details["name"] = json!(name);
    }
    details
}

fn not_found(name: &str) -> Response {
    status_response(
        404,
        "NotFound",
        &format!("leases.coordination.k8s.io \"{name}\" not found"),
        Some(lease_details(name)),
    )
}

/// A list's `continue` token, as kube-apiserver makes it: unpadded URL-safe base64 of
/// `{"v":"meta.k8s.io/v1","rv":RV,"start":"KEY\u0000"}`, where KEY is the last key given.
fn continue_token(rv: u64, namespace: &str, name: &str) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{namespace}/{name}\u{0}")});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

/// The list's resourceVersion and the `(namespace, name)` a `continue` token (see `continue_token`) goes on
/// after; or the message of kube-apiserver's 400 for a token it cannot read.
fn continue_key(token: &str) -> Result<(u64, (String, String)), String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|err| format!("continue key is not valid: {err}"))?;
    let key: Value = serde_json::from_slice(&bytes).map_err(|err| format!("continue key is not valid: {err}"))?;
    if key["v"] != "meta.k8s.io/v1" {
        return Err("continue key is not valid: server does not recognize this encoded key".into());
    }
    let rv = key["rv"].as_u64().filter(|rv| *rv > 0);
    let start = key["start"].as_str().and_then(|start| start.strip_suffix('\u{0}'));
    let Some((rv, (ns, name))) = rv.zip(start.and_then(|start| start.split_once('/'))) else {
        return Err(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)".into()
        );
    };
    Ok((rv, (ns.to_string(), name.to_string())))
}

fn bad_request(message: &str) -> Response {
    status_response(400, "BadRequest", message, None)
}

fn conflict(name: &str, why: &str) -> Response {
    status_response(
        409,
        "Conflict",
        &format!("Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": {why}"),
        Some(lease_details(name)),
    )
}

/// The 409 of a failed storage precondition, as etcd3's store words it.
fn precondition_conflict(namespace: &str, name: &str, what: &str, wanted: &str, actual: &str) -> Response {
    conflict(
        name,
        &format!(
            "StorageError: invalid object, Code: 4, Key: /registry/leases/{namespace}/{name}, ResourceVersion: 0, \
             AdditionalErrorMsg: Precondition failed: {what} in precondition: {wanted}, {what} in object meta: {actual}"
        ),
    )
}

/// An answer injected by `fail_next`, as the real server (or its priority and fairness filter) gives it.
fn failure_response(code: u16) -> Response {
    match code {
        401 => unauthorized_response(),
        429 => {
            let mut response = status_response(
                429,
                "TooManyRequests",
                "Too many requests, please try again later.",
                Some(json!({"retryAfterSeconds": 1})),
            );
            response.extra_headers.push(("Retry-After", "1".into()));
            response
        }
        500 => status_response(
            500,
            "InternalError",
            "Internal error occurred: injected failure",
            Some(json!({"causes": [{"message": "injected failure"}]})),
        ),
        503 => status_response(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
            Some(json!({})),
        ),
        // A list's `continue` token past etcd's compaction, as kube-apiserver words it.
        410 => status_response(
            410,
            "Expired",
            "The provided continue parameter is too old to display a consistent list result. You can start a new \
             list without the continue parameter, or use the continue token in this response to retrieve the \
             remainder of the results.",
            Some(json!({})),
        ),
        504 => status_response(
            504,
            "Timeout",
            "Timeout: request did not complete within requested timeout - context deadline exceeded",
            Some(json!({})),
        ),
        code => status_response(code, reason_for(code), &format!("injected failure ({code})"), Some(json!({}))),
    }
}

/// What an API gateway in front of the server answers when it lost the upstream's answer (Kong's 502 body;
/// AWS API Gateway answers 504 `{"message": "Endpoint request timed out"}`): JSON, but not a `Status`.
fn gateway_response(code: u16) -> Response {
    json_response(code, &json!({"message": "An invalid response was received from the upstream server"}))
}

/// the real kube-apiserver's plain-text answers (Go's `http.Error`: text/plain, a newline at the end).
fn apiserver_text_response(code: u16) -> Response {
    let (body, retry) = match code {
        // k8s.io/apiserver/pkg/server/filters/maxinflight.go tooManyRequests (APF and max-in-flight).
        429 => ("Too many requests, please try again later.\n", true),
        // filters.WithPanicRecovery.
        500 => ("This request caused apiserver to panic. Look in the logs for details.\n", false),
        // The mux's http.NotFound.
        404 => ("404 page not found\n", false),
        _ => ("service unavailable\n", false),
    };
    let mut extra_headers = vec![("X-Content-Type-Options", "nosniff".to_string())];
    if retry {
        extra_headers.push(("Retry-After", "1".to_string()));
    }
    Response { status: code, body: body.as_bytes().to_vec(), content_type: "text/plain; charset=utf-8", extra_headers }
}

/// nginx's error page for `code`; with `latin1`, a localised one in ISO-8859-1.
fn page_response(code: u16, latin1: bool) -> Response {
    let body = if latin1 {
        b"<html><body><h1>Acc\xe8s refus\xe9</h1></body></html>".to_vec()
    } else {
        format!("<html><head><title>{code}</title></head><body><center><h1>{code}</h1></center><hr><center>nginx</center></body></html>").into_bytes()
    };
    Response { status: code, body, content_type: "text/html", extra_headers: Vec::new() }
}

fn unauthorized_response() -> Response {
    status_response(401, "Unauthorized", "Unauthorized", None)
}

fn forbidden_response(verb: &str, namespace: Option<&str>, name: Option<&str>) -> Response {
    let subject = match name {
        Some(name) => format!("leases.coordination.k8s.io \"{name}\""),
        None => "leases.coordination.k8s.io".to_string(),
    };
    let scope = match namespace {
        Some(namespace) => format!("in the namespace \"{namespace}\""),
        None => "at the cluster scope".to_string(),
    };
    status_response(
        403,
        "Forbidden",
        &format!(
            "{subject} is forbidden: User \"{USER}\" cannot {verb} resource \"leases\" in API group \"{GROUP}\" {scope}"
        ),
        Some(lease_details(name.unwrap_or(""))),
    )
}

/// One field error, as k8s.io/apimachinery's field.Error.
struct FieldError {
    reason: &'static str,
    field: String,
    body: String,
}

fn invalid(field: &str, value: &str, detail: &str) -> FieldError {
    FieldError {
        reason: "FieldValueInvalid",
        field: field.to_string(),
        body: format!("Invalid value: {value}: {detail}"),
    }
}

/// 422 Invalid for `kind` (e.g. `Lease`, or `leases` for the storage layer's own checks).
fn invalid_response(kind: &str, name: &str, errors: &[FieldError]) -> Response {
    let mut messages: Vec<String> = Vec::new();
    for error in errors {
        let message = format!("{}: {}", error.field, error.body);
        if !messages.contains(&message) {
            messages.push(message);
        }
    }
    let aggregate = if messages.len() == 1 { messages[0].clone() } else { format!("[{}]", messages.join(", ")) };
    let causes: Vec<Value> =
        errors.iter().map(|e| json!({"reason": e.reason, "message": e.body, "field": e.field})).collect();
    let mut details = json!({"group": GROUP, "kind": kind, "causes": causes});
    if !name.is_empty() {
        details["name"] = json!(name);
    }
    status_response(422, "Invalid", &format!("{kind}.{GROUP} \"{name}\" is invalid: {aggregate}"), Some(details))
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

enum Route {
    Version,
    /// The Lease collection of one namespace, or of all namespaces.
    Collection(Option<String>),
    Item(String, String),
    /// Under /api or /apis but not served here.
    UnknownApi,
    /// Anywhere else.
    Unknown,
}

fn route(path: &str) -> Route {
    if path == "/version" || path == "/version/" {
        return Route::Version;
    }
    let segments: Vec<String> = path.split('/').skip(1).map(|s| percent_decode(s, false)).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match segments[..] {
        ["apis", GROUP, "v1", "leases"] => Route::Collection(None),
        ["apis", GROUP, "v1", "namespaces", ns, "leases"] if !ns.is_empty() => Route::Collection(Some(ns.to_string())),
        ["apis", GROUP, "v1", "namespaces", ns, "leases", name] if !ns.is_empty() && !name.is_empty() => {
            Route::Item(ns.to_string(), name.to_string())
        }
        ["api" | "apis", ..] => Route::UnknownApi,
        _ => Route::Unknown,
    }
}

enum Reply {
    Answer(Response),
    /// A write committed whose answer an [`AfterCommit`] fault takes over.
    Committed(Response, AfterCommit),
    Watch(WatchRequest),
}

/// The verb of a request, as RBAC names it (see [`RequestLog::verb`]).
fn verb_of(request: &Request, route: &Route) -> &'static str {
    let item = match route {
        Route::Version => return "version",
        Route::UnknownApi | Route::Unknown => return "other",
        Route::Collection(_) => false,
        Route::Item(..) => true,
    };
    match (request.method.as_str(), item) {
        ("GET", false) if matches!(parse_bool(request.param("watch").as_deref()), Ok(true)) => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", false) => "deletecollection",
        ("DELETE", true) => "delete",
        _ => "other",
    }
}

/// Waits `delay` unless the connection is closed meanwhile (restart, drop, the server dropped); false
/// then.
fn pause(shared: &Shared, conn: u64, delay: Duration) -> bool {
    let deadline = Instant::now() + delay;
    let mut st = shared.lock();
    loop {
        if st.is_killed(conn) {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        st = shared.changed.wait_timeout(st, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
    }
}

/// Handles one request; false when the connection must be closed.
fn handle(shared: &Arc<Shared>, conn: u64, request: &Request, io: &mut Io) -> bool {
    let route = route(&request.path);
    let verb = verb_of(request, &route);
    let presented = match io.reader.get_ref() {
        Transport::Tls(stream) => stream.conn.peer_certificates().and_then(|chain| chain.first()).cloned(),
        Transport::Plain(_) => None,
    };
    let (index, failure, latency, commit_delay, unauthorized, forbidden) = {
        let mut st = shared.lock();
        let client_certificate = presented
            .as_ref()
            .and_then(|cert| st.client_certificates.iter().find(|(der, _)| der == cert).map(|(_, key)| *key));
        // A certificate this server did not issue is refused, as kube-apiserver's x509 authenticator refuses
        // one its client CA did not sign, even where anonymous requests are allowed.
        let bearer =
            request.header("authorization").and_then(|value| value.strip_prefix("Bearer ")).map(str::to_string);
        let token_refused = match (&st.accepted_token, &bearer) {
            (Some(accepted), Some(token)) => accepted != token,
            (Some(_), None) => client_certificate.is_none(),
            (None, _) => false,
        };
        let unauthorized = st.unauthorized
            || (presented.is_some() && client_certificate.is_none())
            || (st.client_certificate_required && client_certificate.is_none())
            || token_refused;
        st.log.push(RequestLog {
            method: request.method.clone(),
            path: request.path.clone(),
            query: request.query.clone(),
            verb,
            status: 0,
            at: std::time::Instant::now(),
            conn,
            client_certificate,
            bearer,
        });
        let failure = match st.failures.take() {
            Some((n, code)) => {
                if n > 1 {
                    st.failures = Some((n - 1, code));
                }
                Some((code, st.gateway_failures, st.page_failures))
            }
            None => match (st.page_on_writes, st.text_on_writes) {
                (Some(code), _) if matches!(request.method.as_str(), "POST" | "PUT") => Some((code, false, 1)),
                (None, Some((n, code))) if matches!(request.method.as_str(), "POST" | "PUT") => {
                    st.text_on_writes = (n > 1).then_some((n - 1, code));
                    Some((code, false, 3))
                }
                _ => None,
            },
        };
        (st.log.len() - 1, failure, st.latency, st.commit_delay, unauthorized, st.forbidden.clone())
    };
    shared.observed.notify_all();
    if failure.is_none()
        && !unauthorized
        && !commit_delay.is_zero()
        && reaches_storage(shared, request, &route, verb, &forbidden)
        && !pause(shared, conn, commit_delay)
    {
        shared.answered(index, 0);
        return false;
    }
    let reply = if let Some(code) = failure {
        Reply::Answer(match code {
            (code, _, 3) => apiserver_text_response(code),
            (code, _, page @ 1..) => page_response(code, page == 2),
            (code, true, _) => gateway_response(code),
            (code, false, _) => failure_response(code),
        })
    } else if unauthorized {
        Reply::Answer(unauthorized_response())
    } else {
        dispatch(shared, request, route, verb, &forbidden)
    };
    let (response, delay) = match reply {
        Reply::Answer(response) => (response, latency),
        Reply::Committed(_, AfterCommit::Fail(code)) => (failure_response(code), latency),
        Reply::Committed(_, AfterCommit::Gateway(code)) => (gateway_response(code), latency),
        Reply::Committed(_, AfterCommit::Page(code)) => (page_response(code, false), latency),
        Reply::Committed(response, AfterCommit::Delay(delay)) => (response, latency + delay),
        Reply::Committed(_, AfterCommit::Drop) => {
            pause(shared, conn, latency);
            shared.answered(index, 0);
            io.abort();
            return false;
        }
        Reply::Watch(watch) => {
            if !pause(shared, conn, latency) {
                shared.answered(index, 0);
                return false;
            }
            shared.answered(index, 200);
            return serve_watch(shared, conn, io, &watch, request.keep_alive);
        }
    };
    if !pause(shared, conn, delay) {
        shared.answered(index, 0);
        return false;
    }
    shared.answered(index, response.status);
    write_response(io.writer(), &response, request.keep_alive).is_ok()
}

/// Whether a write goes to storage, where [`TestApiServer::set_commit_delay`] holds it. kube-apiserver
/// answers a forbidden or malformed write, and a replace whose resourceVersion is stale when it comes
/// in, from its own checks and a read, before any etcd write; a create and a delete of an existing
/// object are etcd transactions.
fn reaches_storage(
    shared: &Shared,
    request: &Request,
    route: &Route,
    verb: &str,
    forbidden: &BTreeSet<String>,
) -> bool {
    if forbidden.contains(verb) {
        return false;
    }
    match (verb, route) {
        ("create", Route::Collection(Some(namespace))) => decode_lease(request, namespace).is_ok(),
        ("update", Route::Item(namespace, name)) => match decode_lease(request, namespace) {
            Ok(incoming) if incoming.name == *name => {
                let st = shared.lock();
                st.objects
                    .get(&key(namespace, name))
                    .is_none_or(|stored| str_at(stored, "/metadata/resourceVersion") == incoming.resource_version)
            }
            _ => false,
        },
        ("delete", Route::Item(namespace, name)) => shared.lock().objects.contains_key(&key(namespace, name)),
        _ => false,
    }
}

fn dispatch(shared: &Shared, request: &Request, route: Route, verb: &str, forbidden: &BTreeSet<String>) -> Reply {
    let (namespace, name) = match route {
        Route::Version if request.method == "GET" => {
            return Reply::Answer(Response {
                status: 200,
                body: VERSION_JSON.as_bytes().to_vec(),
                content_type: "application/json",
                extra_headers: Vec::new(),
            });
        }
        Route::Version => return Reply::Answer(method_not_allowed()),
        Route::UnknownApi => {
            return Reply::Answer(status_response(
                404,
                "NotFound",
                "the server could not find the requested resource",
                Some(json!({})),
            ));
        }
        Route::Unknown => {
            return Reply::Answer(Response {
                status: 404,
                body: b"404 page not found\n".to_vec(),
                content_type: "text/plain; charset=utf-8",
                extra_headers: vec![("X-Content-Type-Options", "nosniff".into())],
            });
        }
        Route::Collection(namespace) => (namespace, None),
        Route::Item(namespace, name) => (Some(namespace), Some(name)),
    };
    if verb == "other" {
        return Reply::Answer(method_not_allowed());
    }
    // `forbid("get:NAME")` forbids one verb on one name, as RBAC `resourceNames` does.
    if forbidden.contains(verb) || name.as_deref().is_some_and(|n| forbidden.contains(&format!("{verb}:{n}"))) {
        return Reply::Answer(forbidden_response(verb, namespace.as_deref(), name.as_deref()));
    }
    if let Some(name) = name.as_deref() {
        let key = format!("{verb}:{name}");
        let mut st = shared.lock();
        if let Some((n, code)) = st.named_failures.get(&key).copied().filter(|(n, _)| *n > 0) {
            st.named_failures.insert(key.clone(), (n - 1, code));
            if n == 1
                && let Some((then, m, then_code)) = st.chained_failures.remove(&key)
            {
                st.named_failures.insert(then, (m, then_code));
            }
            drop(st);
            return Reply::Answer(failure_response(code));
        }
    }
    if matches!(verb, "get" | "list") {
        let until = shared.lock().reads_429_until;
        if let Some((until, text)) = until.filter(|(until, _)| Instant::now() < *until) {
            let _ = until;
            return Reply::Answer(if text { apiserver_text_response(429) } else { failure_response(429) });
        }
    }
    let store = Store { shared, forbidden, after_commit: Cell::new(None) };
    match (verb, namespace, name) {
        ("list" | "watch", namespace, None) => store.list_or_watch(request, namespace),
        ("get", Some(namespace), Some(name)) => Reply::Answer(store.get(&namespace, &name)),
        ("create", Some(namespace), None) => store.write_reply(store.create(request, &namespace)),
        ("update", Some(namespace), Some(name)) => store.write_reply(store.replace(request, &namespace, &name)),
        ("delete", Some(namespace), Some(name)) => Reply::Answer(store.delete(request, &namespace, &name)),
        ("deletecollection", Some(namespace), None) => Reply::Answer(store.delete_collection(request, &namespace)),
        _ => Reply::Answer(method_not_allowed()),
    }
}

fn method_not_allowed() -> Response {
    status_response(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
        Some(json!({})),
    )
}

/// Go's strconv.ParseBool, as the real server parses boolean query parameters; None when absent.
fn parse_bool(value: Option<&str>) -> Result<bool, String> {
    match value {
        None | Some("") => Ok(false),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(other) => Err(format!("strconv.ParseBool: parsing \"{other}\": invalid syntax")),
    }
}

// ---------------------------------------------------------------------------------------------
// Field selectors
// ---------------------------------------------------------------------------------------------

struct Filter {
    namespace: Option<String>,
    /// (field is metadata.name, must equal, value)
    terms: Vec<(bool, bool, String)>,
}

impl Filter {
    fn parse(namespace: Option<String>, selector: Option<&str>) -> Result<Filter, Response> {
        let mut terms = Vec::new();
        for term in selector.unwrap_or("").split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                let all = selector.unwrap_or("");
                return Err(bad_request(&format!("invalid selector: '{all}'; can't understand '{term}'")));
            };
            let field = field.trim();
            let is_name = match field {
                "metadata.name" => true,
                "metadata.namespace" => false,
                other => {
                    return Err(bad_request(&format!(
                        "\"{other}\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
                    )));
                }
            };
            terms.push((is_name, equal, value.trim().to_string()));
        }
        Ok(Filter { namespace, terms })
    }

    fn matches(&self, namespace: &str, name: &str) -> bool {
        if self.namespace.as_deref().is_some_and(|ns| ns != namespace) {
            return false;
        }
        self.terms.iter().all(|(is_name, equal, value)| {
            let actual = if *is_name { name } else { namespace };
            (actual == value) == *equal
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Label selectors (on list): the equality-based ones, and `key`, `!key`; set-based ones are refused
// with the real server's message for a selector it cannot parse.
// ---------------------------------------------------------------------------------------------

struct LabelFilter {
    /// (key, operator: "=", "!=", "exists", "!exists", value)
    terms: Vec<(String, &'static str, String)>,
}

impl LabelFilter {
    fn parse(selector: Option<&str>) -> Result<LabelFilter, Response> {
        let mut terms = Vec::new();
        let text = selector.unwrap_or("");
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let pair = |k: &str, op: &'static str, v: &str| (k.trim().to_string(), op, v.trim().to_string());
            let (key, op, value) = if let Some((k, v)) = term.split_once("!=") {
                pair(k, "!=", v)
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                pair(k, "=", v)
            } else if let Some(k) = term.strip_prefix('!') {
                pair(k, "!exists", "")
            } else {
                pair(term, "exists", "")
            };
            let valid = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
            if key.is_empty() || !valid(&key) || !valid(&value) {
                return Err(bad_request(&format!(
                    "unable to parse requirement: found '{term}', expected: '=', '!=', '==', 'in', notin'"
                )));
            }
            terms.push((key, op, value));
        }
        Ok(LabelFilter { terms })
    }

    fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels").and_then(Value::as_object);
        self.terms.iter().all(|(key, op, value)| {
            let actual = labels.and_then(|labels| labels.get(key)).and_then(Value::as_str);
            match *op {
                "=" => actual == Some(value.as_str()),
                "!=" => actual != Some(value.as_str()),
                "exists" => actual.is_some(),
                _ => actual.is_none(),
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Leases
// ---------------------------------------------------------------------------------------------

struct Store<'a> {
    shared: &'a Shared,
    forbidden: &'a BTreeSet<String>,
    /// Set when a create or update committed and an after-commit fault takes over its answer.
    after_commit: Cell<Option<AfterCommit>>,
}

/// A Lease as decoded from a request body.
struct Incoming {
    name: String,
    generate_name: String,
    namespace: String,
    uid: String,
    resource_version: String,
    labels: Option<Map<String, Value>>,
    annotations: Option<Map<String, Value>>,
    spec: Map<String, Value>,
}

fn key(namespace: &str, name: &str) -> (String, String) {
    (namespace.to_string(), name.to_string())
}

impl Store<'_> {
    /// A create or update committed `object`, whose holder was `before`: an after-commit fault may
    /// take over the answer.
    fn committed(&self, st: &mut State, before: &str, object: &Value) {
        let after = str_at(object, "/spec/holderIdentity");
        self.after_commit.set(st.take_after_commit(before, &after));
    }

    /// The answer to a create or update, and what becomes of it.
    fn write_reply(&self, response: Response) -> Reply {
        match self.after_commit.take() {
            Some(how) => Reply::Committed(response, how),
            None => Reply::Answer(response),
        }
    }

    fn get(&self, namespace: &str, name: &str) -> Response {
        let st = self.shared.lock();
        match st.objects.get(&key(namespace, name)) {
            Some(object) => json_response(200, object),
            None => not_found(name),
        }
    }

    fn list_or_watch(&self, request: &Request, namespace: Option<String>) -> Reply {
        let watch = match parse_bool(request.param("watch").as_deref()) {
            Ok(watch) => watch,
            Err(message) => return Reply::Answer(bad_request(&message)),
        };
        let filter = match Filter::parse(namespace, request.param("fieldSelector").as_deref()) {
            Ok(filter) => filter,
            Err(response) => return Reply::Answer(response),
        };
        if request.param("sendInitialEvents").is_some() {
            let (field, detail) = if watch {
                (
                    "sendInitialEvents",
                    "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
                )
            } else {
                ("sendInitialEvents", "sendInitialEvents is forbidden for list")
            };
            let error =
                FieldError { reason: "FieldValueForbidden", field: field.into(), body: format!("Forbidden: {detail}") };
            let mut response = invalid_response("ListOptions", "", &[error]);
            // ListOptions errors belong to meta.k8s.io.
            let mut status: Value = serde_json::from_slice(&response.body).unwrap_or_default();
            status["message"] = json!(format!("ListOptions.meta.k8s.io \"\" is invalid: {field}: Forbidden: {detail}"));
            status["details"]["group"] = json!("meta.k8s.io");
            response.body = to_json(&status).into_bytes();
            return Reply::Answer(response);
        }
        if !watch {
            let labels = match LabelFilter::parse(request.param("labelSelector").as_deref()) {
                Ok(labels) => labels,
                Err(response) => return Reply::Answer(response),
            };
            // Pages, as kube-apiserver gives them: `limit` items at most, and a `continue` token (opaque to
            // clients) while more remain, which names the list's resourceVersion and the last key given. Later
            // pages are read at that version, a consistent snapshot, as etcd reads them: past a compaction of
            // it, or after a restore, the page is 410 Expired. A token that is not one of ours is refused, 400.
            let limit = request.param("limit").and_then(|limit| limit.parse::<usize>().ok()).filter(|n| *n > 0);
            let after = match request.param("continue").filter(|token| !token.is_empty()) {
                None => None,
                Some(token) => match continue_key(&token) {
                    Ok(key) => Some(key),
                    Err(message) => return Reply::Answer(bad_request(&message)),
                },
            };
            let mut st = self.shared.lock();
            let (rv, objects) = match &after {
                None => (st.rv, None),
                Some((rv, _)) => match st.list_snapshots.get(rv) {
                    Some(objects) => (*rv, Some(Arc::clone(objects))),
                    None => return Reply::Answer(failure_response(410)),
                },
            };
            let objects = objects.as_deref().unwrap_or(&st.objects);
            let mut matching = objects
                .iter()
                .filter(|(key, _)| after.as_ref().is_none_or(|(_, after)| *key > after))
                .filter(|((ns, name), object)| filter.matches(ns, name) && labels.matches(object));
            let mut items: Vec<Value> = Vec::new();
            let mut last = None;
            for (key, object) in matching.by_ref().take(limit.unwrap_or(usize::MAX)) {
                items.push(list_item(object));
                last = Some(key.clone());
            }
            let remaining = matching.count();
            let mut metadata = json!({"resourceVersion": rv.to_string()});
            if remaining > 0
                && let Some((ns, name)) = last
            {
                metadata["continue"] = json!(continue_token(rv, &ns, &name));
                // Only for a list without selectors: with one, the count is not known without reading on.
                if filter.terms.is_empty() && labels.terms.is_empty() {
                    metadata["remainingItemCount"] = json!(remaining);
                }
                if after.is_none() && !st.list_snapshots.contains_key(&rv) {
                    let objects = Arc::new(st.objects.clone());
                    st.list_snapshots.insert(rv, objects);
                    while st.list_snapshots.len() > MAX_LIST_SNAPSHOTS {
                        st.list_snapshots.pop_first();
                    }
                }
            }
            if st.endless_lists
                && let Some(token) = request.param("continue").filter(|token| !token.is_empty())
            {
                metadata["continue"] = json!(token);
            }
            return Reply::Answer(json_response(
                200,
                &json!({
                    "kind": "LeaseList",
                    "apiVersion": API_VERSION,
                    "metadata": metadata,
                    "items": items,
                }),
            ));
        }
        let since = match request.param("resourceVersion").as_deref() {
            None | Some("" | "0") => None,
            Some(rv) => match rv.parse::<u64>() {
                Ok(rv) => Some(rv),
                Err(_) => {
                    return Reply::Answer(bad_request(&format!(
                        "resourceVersion: Invalid value: \"{rv}\": strconv.ParseUint: parsing \"{rv}\": invalid syntax"
                    )));
                }
            },
        };
        let bookmarks = match parse_bool(request.param("allowWatchBookmarks").as_deref()) {
            Ok(bookmarks) => bookmarks,
            Err(message) => return Reply::Answer(bad_request(&message)),
        };
        let timeout = match request.param("timeoutSeconds").as_deref() {
            None | Some("") => DEFAULT_WATCH_TIMEOUT,
            Some(seconds) => match seconds.parse::<u64>() {
                Ok(0) => DEFAULT_WATCH_TIMEOUT,
                Ok(seconds) => Duration::from_secs(seconds),
                Err(_) => {
                    return Reply::Answer(bad_request(&format!(
                        "timeoutSeconds: Invalid value: \"{seconds}\": must be a non-negative integer"
                    )));
                }
            },
        };
        Reply::Watch(WatchRequest { filter, since, bookmarks, timeout })
    }

    fn create(&self, request: &Request, namespace: &str) -> Response {
        let incoming = match decode_lease(request, namespace) {
            Ok(incoming) => incoming,
            Err(response) => return response,
        };
        let mut st = self.shared.lock();
        if !st.namespaces.contains(namespace) {
            return namespace_not_found(namespace);
        }
        let mut incoming = incoming;
        if incoming.name.is_empty() && !incoming.generate_name.is_empty() {
            incoming.name = generate_name(&incoming.generate_name);
        }
        let errors = validate(&incoming);
        if !errors.is_empty() {
            return invalid_response("Lease", &incoming.name, &errors);
        }
        if !incoming.resource_version.is_empty() && incoming.resource_version != "0" {
            return status_response(500, "", "resourceVersion should not be set on objects to be created", None);
        }
        if st.objects.contains_key(&key(namespace, &incoming.name)) {
            let name = &incoming.name;
            return status_response(
                409,
                "AlreadyExists",
                &format!("leases.coordination.k8s.io \"{name}\" already exists"),
                Some(lease_details(name)),
            );
        }
        let object = insert_new(&mut st, namespace, &incoming);
        self.committed(&mut st, "", &object);
        self.shared.changed.notify_all();
        json_response(201, &object)
    }

    fn replace(&self, request: &Request, namespace: &str, name: &str) -> Response {
        let incoming = match decode_lease(request, namespace) {
            Ok(incoming) => incoming,
            Err(response) => return response,
        };
        if incoming.name != name {
            return bad_request(&format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                incoming.name
            ));
        }
        let mut st = self.shared.lock();
        let existing = st.objects.get(&key(namespace, name)).cloned();
        let existing_uid = existing.as_ref().map(|o| str_at(o, "/metadata/uid")).unwrap_or_default();
        if !incoming.uid.is_empty() && incoming.uid != existing_uid {
            return precondition_conflict(namespace, name, "UID", &incoming.uid, &existing_uid);
        }
        let Some(existing) = existing else {
            // Leases allow create on update: a PUT without a uid creates the Lease.
            if !st.namespaces.contains(namespace) {
                return namespace_not_found(namespace);
            }
            let errors = validate(&incoming);
            if !errors.is_empty() {
                return invalid_response("Lease", name, &errors);
            }
            if self.forbidden.contains("create") {
                return forbidden_response("create", Some(namespace), Some(name));
            }
            let object = insert_new(&mut st, namespace, &incoming);
            self.committed(&mut st, "", &object);
            self.shared.changed.notify_all();
            return json_response(201, &object);
        };
        let stored_rv = str_at(&existing, "/metadata/resourceVersion");
        match incoming.resource_version.as_str() {
            "" | "0" => {
                let error = FieldError {
                    reason: "FieldValueInvalid",
                    field: "metadata.resourceVersion".into(),
                    body: "Invalid value: 0x0: must be specified for an update".into(),
                };
                return invalid_response("leases", name, &[error]);
            }
            rv if rv.parse::<u64>().is_err() => {
                let error = invalid(
                    "resourceVersion",
                    &Value::String(rv.to_string()).to_string(),
                    &format!("strconv.ParseUint: parsing {}: invalid syntax", Value::String(rv.to_string())),
                );
                return invalid_response("leases", name, &[error]);
            }
            rv if rv != stored_rv => {
                return conflict(
                    name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                );
            }
            _ => {}
        }
        let errors = validate(&incoming);
        if !errors.is_empty() {
            return invalid_response("Lease", name, &errors);
        }
        let mut object = build_object(
            namespace,
            &incoming,
            &existing_uid,
            &str_at(&existing, "/metadata/creationTimestamp"),
            &stored_rv,
        );
        if object == existing {
            // etcd skips a write that changes nothing: same object, same resourceVersion, no event.
            return json_response(200, &existing);
        }
        let rv = st.next_rv();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.objects.insert(key(namespace, name), object.clone());
        st.record("MODIFIED", namespace, name, object.clone());
        self.committed(&mut st, &str_at(&existing, "/spec/holderIdentity"), &object);
        self.shared.changed.notify_all();
        json_response(200, &object)
    }

    fn delete(&self, request: &Request, namespace: &str, name: &str) -> Response {
        let options = match decode_delete_options(request) {
            Ok(options) => options,
            Err(response) => return response,
        };
        let mut st = self.shared.lock();
        let Some(existing) = st.objects.get(&key(namespace, name)) else {
            return not_found(name);
        };
        if let Some(response) = check_delete_preconditions(&options, existing, name) {
            return response;
        }
        let object = remove(&mut st, namespace, name);
        self.shared.changed.notify_all();
        json_response(200, &object)
    }

    fn delete_collection(&self, request: &Request, namespace: &str) -> Response {
        if let Err(response) = decode_delete_options(request) {
            return response;
        }
        let filter = match Filter::parse(Some(namespace.to_string()), request.param("fieldSelector").as_deref()) {
            Ok(filter) => filter,
            Err(response) => return response,
        };
        let mut st = self.shared.lock();
        let names: Vec<String> =
            st.objects.keys().filter(|(ns, name)| filter.matches(ns, name)).map(|(_, name)| name.clone()).collect();
        let items: Vec<Value> = names.iter().map(|name| list_item(&remove(&mut st, namespace, name))).collect();
        self.shared.changed.notify_all();
        json_response(200, &json!({"kind": "LeaseList", "apiVersion": API_VERSION, "metadata": {}, "items": items}))
    }
}

fn namespace_not_found(namespace: &str) -> Response {
    status_response(
        404,
        "NotFound",
        &format!("namespaces \"{namespace}\" not found"),
        Some(json!({"name": namespace, "kind": "namespaces"})),
    )
}

/// Stores a new Lease with a fresh uid, creation time and resourceVersion, and records ADDED.
fn insert_new(st: &mut State, namespace: &str, incoming: &Incoming) -> Value {
    let rv = st.next_rv();
    let object = build_object(namespace, incoming, &new_uid(), &rfc3339_seconds(SystemTime::now()), &rv.to_string());
    st.objects.insert(key(namespace, &incoming.name), object.clone());
    st.record("ADDED", namespace, &incoming.name, object.clone());
    object
}

/// Removes a Lease; the deleted object carries the resourceVersion of the deletion, as the real
/// server answers it and sends it in the DELETED event.
fn remove(st: &mut State, namespace: &str, name: &str) -> Value {
    let rv = st.next_rv();
    let mut object = st.objects.remove(&key(namespace, name)).unwrap_or_default();
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    st.record("DELETED", namespace, name, object.clone());
    object
}

fn build_object(namespace: &str, incoming: &Incoming, uid: &str, created: &str, rv: &str) -> Value {
    let mut metadata = Map::new();
    metadata.insert("name".into(), json!(incoming.name));
    if !incoming.generate_name.is_empty() {
        metadata.insert("generateName".into(), json!(incoming.generate_name));
    }
    metadata.insert("namespace".into(), json!(namespace));
    metadata.insert("uid".into(), json!(uid));
    metadata.insert("resourceVersion".into(), json!(rv));
    metadata.insert("creationTimestamp".into(), json!(created));
    for (field, map) in [("labels", &incoming.labels), ("annotations", &incoming.annotations)] {
        if let Some(map) = map.as_ref().filter(|m| !m.is_empty()) {
            metadata.insert(field.into(), Value::Object(map.clone()));
        }
    }
    json!({
        "kind": "Lease",
        "apiVersion": API_VERSION,
        "metadata": metadata,
        "spec": incoming.spec,
    })
}

/// A list item: the object without kind and apiVersion, as the real server lists them.
fn list_item(object: &Value) -> Value {
    let mut item = object.clone();
    if let Some(map) = item.as_object_mut() {
        map.remove("kind");
        map.remove("apiVersion");
    }
    item
}

fn str_at(value: &Value, pointer: &str) -> String {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or_default().to_string()
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn cannot_decode(detail: &str) -> Response {
    bad_request(&format!("Lease in version \"v1\" cannot be handled as a Lease: {detail}"))
}

fn wrong_type(value: &Value, go_field: &str, go_type: &str) -> Response {
    let shown = match value {
        Value::Number(n) => format!("number {n}"),
        other => json_type(other).to_string(),
    };
    cannot_decode(&format!("json: cannot unmarshal {shown} into Go struct field {go_field} of type {go_type}"))
}

fn body_json(request: &Request) -> Result<Value, Response> {
    let content_type = request.header("content-type").unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if media != "application/json" {
        return Err(status_response(
            415,
            "UnsupportedMediaType",
            &format!(
                "the body of the request was in an unknown format - accepted media types include: \
                 application/json, application/yaml, application/vnd.kubernetes.protobuf (got {content_type:?})"
            ),
            None,
        ));
    }
    serde_json::from_slice(&request.body)
        .map_err(|e| bad_request(&format!("couldn't get version/kind; json parse error: {e}")))
}

/// Decodes a Lease body as the real server does: wrong JSON types are 400, unknown fields are
/// dropped, MicroTimes are parsed and written back in UTC with six fractional digits, and a namespace
/// that differs from the URL's is 400.
fn decode_lease(request: &Request, url_namespace: &str) -> Result<Incoming, Response> {
    let body = body_json(request)?;
    let Value::Object(body) = body else {
        return Err(bad_request(&format!(
            "couldn't get version/kind; json parse error: json: cannot unmarshal {} into Go value of type \
             struct {{ APIVersion string \"json:\\\"apiVersion,omitempty\\\"\"; Kind string \"json:\\\"kind,omitempty\\\"\" }}",
            json_type(&body)
        )));
    };
    let api_version = body.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = body.get("kind").and_then(Value::as_str).unwrap_or("");
    if !api_version.is_empty() && api_version != API_VERSION {
        return Err(bad_request(&format!(
            "the API version in the data ({api_version}) does not match the expected API version ({API_VERSION})"
        )));
    }
    if !kind.is_empty() && kind != "Lease" {
        return Err(bad_request(&format!(
            "no kind \"{kind}\" is registered for version \"{API_VERSION}\" in scheme \"pkg/api/legacyscheme/scheme.go:30\""
        )));
    }
    let empty = Map::new();
    let metadata = match body.get("metadata") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(m)) => m,
        Some(other) => return Err(wrong_type(other, "Lease.metadata", "v1.ObjectMeta")),
    };
    let meta_string = |field: &str| -> Result<String, Response> {
        match metadata.get(field) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(wrong_type(other, &format!("ObjectMeta.metadata.{field}"), "string")),
        }
    };
    let meta_map = |field: &str| -> Result<Option<Map<String, Value>>, Response> {
        match metadata.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => {
                for value in m.values() {
                    if !value.is_string() && !value.is_null() {
                        return Err(wrong_type(value, &format!("ObjectMeta.metadata.{field}"), "string"));
                    }
                }
                let cleaned = m.iter().map(|(k, v)| (k.clone(), json!(v.as_str().unwrap_or("")))).collect();
                Ok(Some(cleaned))
            }
            Some(other) => Err(wrong_type(other, &format!("ObjectMeta.metadata.{field}"), "map[string]string")),
        }
    };
    let incoming_namespace = meta_string("namespace")?;
    let mut incoming = Incoming {
        name: meta_string("name")?,
        generate_name: meta_string("generateName")?,
        namespace: incoming_namespace,
        uid: meta_string("uid")?,
        resource_version: meta_string("resourceVersion")?,
        labels: meta_map("labels")?,
        annotations: meta_map("annotations")?,
        spec: Map::new(),
    };
    let spec = match body.get("spec") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(s)) => s,
        Some(other) => return Err(wrong_type(other, "Lease.spec", "v1.LeaseSpec")),
    };
    for (field, value) in spec {
        if value.is_null() {
            continue;
        }
        let go_field = format!("LeaseSpec.spec.{field}");
        let kept = match field.as_str() {
            "holderIdentity" | "strategy" | "preferredHolder" => match value {
                Value::String(_) => value.clone(),
                other => return Err(wrong_type(other, &go_field, "string")),
            },
            "leaseDurationSeconds" | "leaseTransitions" => match value.as_i64() {
                Some(n) if i32::try_from(n).is_ok() => json!(n),
                _ => return Err(wrong_type(value, &go_field, "int32")),
            },
            "acquireTime" | "renewTime" => match value {
                Value::String(s) => match normalize_micro_time(s) {
                    Some(t) => json!(t),
                    None => {
                        return Err(cannot_decode(&format!(
                            "parsing time {} as \"2006-01-02T15:04:05.000000Z07:00\": cannot parse {} as \"2006-01-02T15:04:05.000000Z07:00\"",
                            value, value
                        )));
                    }
                },
                other => return Err(wrong_type(other, &go_field, "string")),
            },
            _ => continue, // unknown fields are dropped
        };
        incoming.spec.insert(field.clone(), kept);
    }
    if !incoming.namespace.is_empty() && incoming.namespace != url_namespace {
        return Err(bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    incoming.namespace = url_namespace.to_string();
    Ok(incoming)
}

struct DeleteOptions {
    uid: Option<String>,
    resource_version: Option<String>,
}

fn decode_delete_options(request: &Request) -> Result<DeleteOptions, Response> {
    let mut options = DeleteOptions { uid: None, resource_version: None };
    if request.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(options);
    }
    let body: Value = serde_json::from_slice(&request.body)
        .map_err(|e| bad_request(&format!("couldn't get version/kind; json parse error: {e}")))?;
    if let Some(preconditions) = body.get("preconditions").filter(|p| !p.is_null()) {
        let field = |name: &str| -> Result<Option<String>, Response> {
            match preconditions.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(bad_request(&format!(
                    "json: cannot unmarshal {} into Go struct field Preconditions.preconditions.{name} of type string",
                    json_type(other)
                ))),
            }
        };
        options.uid = field("uid")?;
        options.resource_version = field("resourceVersion")?;
    }
    Ok(options)
}

fn check_delete_preconditions(options: &DeleteOptions, existing: &Value, name: &str) -> Option<Response> {
    let conflict = |why: String| {
        status_response(
            409,
            "Conflict",
            &format!("Operation cannot be fulfilled on Lease.{GROUP} \"{name}\": {why}"),
            Some(json!({"name": name, "group": GROUP, "kind": "Lease"})),
        )
    };
    let uid = str_at(existing, "/metadata/uid");
    let rv = str_at(existing, "/metadata/resourceVersion");
    if let Some(wanted) = options.uid.as_ref().filter(|u| **u != uid) {
        return Some(conflict(format!(
            "the UID in the precondition ({wanted}) does not match the UID in record ({uid}). \
             The object might have been deleted and then recreated"
        )));
    }
    if let Some(wanted) = options.resource_version.as_ref().filter(|r| **r != rv) {
        return Some(conflict(format!(
            "the ResourceVersion in the precondition ({wanted}) does not match the ResourceVersion in record ({rv}). \
             The object might have been modified"
        )));
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

fn is_dns1123_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|label| {
            let bytes = label.as_bytes();
            let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
            !bytes.is_empty()
                && bytes.first().is_some_and(alnum)
                && bytes.last().is_some_and(alnum)
                && bytes.iter().all(|b| alnum(b) || *b == b'-')
        })
}

fn name_errors(field: &str, value: &str, checked: &str) -> Vec<FieldError> {
    let quoted = Value::String(value.to_string()).to_string();
    let mut errors = Vec::new();
    if checked.len() > 253 {
        errors.push(invalid(field, &quoted, "must be no more than 253 characters"));
    }
    if !is_dns1123_subdomain(checked) {
        errors.push(invalid(field, &quoted, NAME_REGEX_MESSAGE));
    }
    errors
}

/// ValidateLease of Kubernetes v1.28: object meta (name), then the spec.
fn validate(incoming: &Incoming) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if !incoming.generate_name.is_empty() {
        // A prefix may end with '-'.
        let mut masked = incoming.generate_name.clone();
        if masked.ends_with('-') {
            masked.pop();
            masked.push('a');
        }
        errors.extend(name_errors("metadata.generateName", &incoming.generate_name, &masked));
    }
    if incoming.name.is_empty() {
        errors.push(FieldError {
            reason: "FieldValueRequired",
            field: "metadata.name".into(),
            body: "Required value: name or generateName is required".into(),
        });
    } else {
        errors.extend(name_errors("metadata.name", &incoming.name, &incoming.name));
    }
    let number = |field: &str| incoming.spec.get(field).and_then(Value::as_i64);
    if let Some(duration) = number("leaseDurationSeconds").filter(|d| *d <= 0) {
        errors.push(invalid("spec.leaseDurationSeconds", &duration.to_string(), "must be greater than 0"));
    }
    if let Some(transitions) = number("leaseTransitions").filter(|t| *t < 0) {
        errors.push(invalid("spec.leaseTransitions", &transitions.to_string(), "must be greater than or equal to 0"));
    }
    errors
}

fn generate_name(base: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let base: String = base.chars().take(58).collect();
    let mut seed = random_u64();
    let suffix: String = (0..5)
        .map(|_| {
            let c = ALPHABET[(seed % ALPHABET.len() as u64) as usize] as char;
            seed /= ALPHABET.len() as u64;
            c
        })
        .collect();
    format!("{base}{suffix}")
}

// ---------------------------------------------------------------------------------------------
// Watches
// ---------------------------------------------------------------------------------------------

struct WatchRequest {
    filter: Filter,
    /// None: start with ADDED for what exists now.
    since: Option<u64>,
    bookmarks: bool,
    timeout: Duration,
}

enum WatchStep {
    /// Lines to send now.
    Send(Vec<Arc<str>>),
    /// timeoutSeconds passed, or a watch fault: send these lines (an ERROR, after a BOOKMARK), each in
    /// a chunk of its own, and end the stream cleanly.
    End(Vec<String>),
    /// Time to look whether the client hung up.
    CheckHangup,
    /// Dropped, restarted, stopped: close the connection abruptly.
    Abort,
}

fn event_line(kind: &str, object: &Value) -> String {
    let mut line = to_json(&json!({"type": kind, "object": object}));
    line.push('\n');
    line
}

fn bookmark_line(rv: u64) -> String {
    let object = json!({
        "kind": "Lease",
        "apiVersion": API_VERSION,
        "metadata": {"resourceVersion": rv.to_string(), "creationTimestamp": null},
        "spec": {},
    });
    event_line("BOOKMARK", &object)
}

/// Counts an open watch for as long as it lives.
struct OpenWatch<'a> {
    shared: &'a Shared,
    conn: u64,
}

impl Drop for OpenWatch<'_> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.open_watches -= 1;
        if let Some(conn) = st.conns.get_mut(&self.conn) {
            conn.watching = false;
        }
        drop(st);
        self.shared.observed.notify_all();
    }
}

/// The `Status` of a watch from a resourceVersion older than the history: `oldest` is the oldest one
/// served.
fn expired_status(since: u64, oldest: u64) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!("too old resource version: {since} ({oldest})"),
        "reason": "Expired",
        "code": 410,
    })
}

/// The ERROR line of a [`WatchFault::Error`], for a watch at resourceVersion `at`.
fn watch_error_line(code: u16, at: u64, current: u64) -> String {
    let status = if code == 410 {
        expired_status(at, current.max(at + 1))
    } else {
        serde_json::from_slice(&failure_response(code).body).unwrap_or_default()
    };
    event_line("ERROR", &status)
}

/// How a watch begins.
enum WatchStart {
    /// Stream these lines (ADDED for what exists), then the events after this resourceVersion.
    Stream(Vec<String>, u64),
    /// Send these lines (an ERROR, after a BOOKMARK), each in a chunk of its own, then end the stream
    /// cleanly.
    End(Vec<String>),
    /// See [`WatchFault::EndlessLine`].
    EndlessLine,
}

/// Streams one watch; false when the connection must be closed.
fn serve_watch(shared: &Arc<Shared>, conn: u64, io: &mut Io, watch: &WatchRequest, keep_alive: bool) -> bool {
    let (start, _open) = {
        let mut st = shared.lock();
        if st.is_killed(conn) {
            return false;
        }
        st.open_watches += 1;
        if let Some(c) = st.conns.get_mut(&conn) {
            c.watching = true;
        }
        let open = OpenWatch { shared, conn };
        let current = st.rv;
        let start = match (st.watch_fault, watch.since) {
            (Some(WatchFault::Error(code)), since) => {
                WatchStart::End(vec![watch_error_line(code, since.unwrap_or(current), current)])
            }
            (Some(WatchFault::BookmarkThenError(code)), since) => {
                WatchStart::End(vec![bookmark_line(current), watch_error_line(code, since.unwrap_or(current), current)])
            }
            (Some(WatchFault::EndAtOnce), _) => WatchStart::End(Vec::new()),
            (Some(WatchFault::EndlessLine), _) => WatchStart::EndlessLine,
            (None, None) => {
                let lines: Vec<String> = st
                    .objects
                    .iter()
                    .filter(|((ns, name), _)| watch.filter.matches(ns, name))
                    .map(|(_, object)| event_line("ADDED", object))
                    .collect();
                WatchStart::Stream(lines, current)
            }
            (None, Some(since)) if since < st.history_start => {
                WatchStart::End(vec![event_line("ERROR", &expired_status(since, st.history_start))])
            }
            (None, Some(since)) => WatchStart::Stream(Vec::new(), since),
        };
        (start, open)
    };
    shared.observed.notify_all();

    let head = response_head(200, "application/json", None, &[], !keep_alive);
    let w = io.writer();
    if w.write_all(head.as_bytes()).and_then(|()| w.flush()).is_err() {
        return false;
    }
    let (initial, mut last_rv) = match start {
        WatchStart::Stream(lines, rv) => (lines, rv),
        WatchStart::End(lines) => return finish_watch(io.writer(), lines),
        WatchStart::EndlessLine => return serve_endless_line(shared, conn, io, watch.timeout),
    };
    for line in &initial {
        if write_chunk(io.writer(), line.as_bytes()).is_err() {
            return false;
        }
    }

    let deadline = Instant::now() + watch.timeout;
    let mut next_bookmark = Instant::now() + shared.lock().bookmark_interval;
    let mut next_hangup_check = Instant::now() + HANGUP_CHECK;
    loop {
        let step = {
            let mut st = shared.lock();
            loop {
                if st.is_killed(conn) {
                    break WatchStep::Abort;
                }
                if let Some(fault) = st.watch_fault {
                    break WatchStep::End(match fault {
                        WatchFault::Error(code) => vec![watch_error_line(code, last_rv, st.rv)],
                        WatchFault::BookmarkThenError(code) => {
                            vec![bookmark_line(st.rv), watch_error_line(code, last_rv, st.rv)]
                        }
                        WatchFault::EndAtOnce | WatchFault::EndlessLine => Vec::new(),
                    });
                }
                let start = st.events.partition_point(|e| e.rv <= last_rv);
                let lag = st.watch_lag;
                let ready_now = Instant::now();
                let end = start + st.events[start..].partition_point(|e| e.at + lag <= ready_now);
                let lagging = st.events.get(end).map(|e| e.at + lag);
                if start < end {
                    let lines: Vec<Arc<str>> = st.events[start..end]
                        .iter()
                        .filter(|e| watch.filter.matches(&e.namespace, &e.name))
                        .map(|e| e.line.clone())
                        .collect();
                    last_rv = st.events[end - 1].rv;
                    if !lines.is_empty() {
                        break WatchStep::Send(lines);
                    }
                }
                let now = Instant::now();
                if now >= deadline {
                    break WatchStep::End(Vec::new());
                }
                if watch.bookmarks && now >= next_bookmark {
                    next_bookmark = now + st.bookmark_interval;
                    // The watch cache's bookmark: its own resourceVersion, never one it has not delivered,
                    // and none at or below the watcher's (cache_watcher.go).
                    let cache_rv = if lagging.is_some() { last_rv } else { st.rv };
                    if cache_rv > last_rv || lag.is_zero() {
                        last_rv = last_rv.max(cache_rv);
                        break WatchStep::Send(vec![bookmark_line(cache_rv).into()]);
                    }
                }
                if now >= next_hangup_check {
                    next_hangup_check = now + HANGUP_CHECK;
                    break WatchStep::CheckHangup;
                }
                let mut wake = deadline.min(next_hangup_check);
                if let Some(ready) = lagging {
                    wake = wake.min(ready.max(now + Duration::from_millis(1)));
                }
                if watch.bookmarks {
                    wake = wake.min(next_bookmark);
                }
                st = shared.changed.wait_timeout(st, wake - now).unwrap_or_else(|e| e.into_inner()).0;
            }
        };
        match step {
            WatchStep::Send(lines) => {
                for line in lines {
                    if write_chunk(io.writer(), line.as_bytes()).is_err() {
                        return false;
                    }
                }
            }
            WatchStep::End(lines) => return finish_watch(io.writer(), lines),
            WatchStep::CheckHangup => {
                if io.client_hung_up() {
                    io.abort();
                    return false;
                }
            }
            WatchStep::Abort => {
                io.abort();
                return false;
            }
        }
    }
}

/// See [`WatchFault::EndlessLine`]; false when the connection must be closed.
fn serve_endless_line(shared: &Arc<Shared>, conn: u64, io: &mut Io, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let piece = vec![b' '; 64 * 1024];
    for _ in 0..512 {
        if write_chunk(io.writer(), &piece).is_err() {
            return false;
        }
    }
    while Instant::now() < deadline {
        if shared.lock().is_killed(conn) || io.client_hung_up() {
            io.abort();
            return false;
        }
        std::thread::sleep(HANGUP_CHECK);
    }
    finish_watch(io.writer(), Vec::new())
}

/// Sends `lines`, a chunk each, then the terminating chunk: the clean end of a watch.
fn finish_watch(w: &mut Transport, lines: Vec<String>) -> bool {
    lines.iter().all(|line| write_chunk(w, line.as_bytes()).is_ok()) && write_chunk(w, b"").is_ok()
}

// ---------------------------------------------------------------------------------------------
// Identifiers and times
// ---------------------------------------------------------------------------------------------

fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos());
    hasher.finish()
}

/// A random version-4 UUID, as the real server gives objects and audit ids.
fn new_uid() -> String {
    let (high, low) = (random_u64(), random_u64());
    let high = (high & !0xf000) | 0x4000;
    let low = (low & !(0xc000 << 48)) | (0x8000 << 48);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0xffff,
        low >> 48,
        low & 0xffff_ffff_ffff
    )
}

fn timestamp(time: SystemTime) -> jiff::Timestamp {
    jiff::Timestamp::try_from(time).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// `2026-11-26T03:28:52Z`, as creationTimestamp.
fn rfc3339_seconds(time: SystemTime) -> String {
    timestamp(time).strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `Thu, 26 Nov 2026 03:28:58 GMT`, for the Date header.
fn http_date(time: SystemTime) -> String {
    timestamp(time).strftime("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// Parses a MicroTime as Go's `time.Parse("2006-01-02T15:04:05.000000Z07:00", s)` does (exactly six
/// fractional digits; `Z` or a `±hh:mm` offset) and writes it back as the real server does: in UTC,
/// `2026-11-26T03:00:00.000000Z`. None when Go would refuse it.
fn normalize_micro_time(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if b.len() < 27 || !s.is_ascii() {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = &s[range];
        part.bytes().all(|c| c.is_ascii_digit()).then(|| part.parse().ok())?
    };
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':'), (19, b'.')];
    if separators.iter().any(|&(i, c)| b[i] != c) {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    let micros = &s[20..26];
    digits(20..26)?;
    let offset = match &s[26..] {
        "Z" => 0,
        zone if zone.len() == 6 && (zone.starts_with('+') || zone.starts_with('-')) && &zone[3..4] == ":" => {
            let (h, m) = (digits(27..29)?, digits(30..32)?);
            if h > 23 || m > 59 {
                return None;
            }
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    // jiff checks the calendar as Go does (month, day of the month, hour, minute, second in range).
    let local =
        jiff::civil::DateTime::new(year as i16, month as i8, day as i8, hour as i8, minute as i8, second as i8, 0)
            .ok()?;
    if &s[26..] == "Z" {
        return Some(s.to_string());
    }
    let utc = jiff::tz::Offset::from_seconds(offset as i32).ok()?.to_timestamp(local).ok()?;
    Some(format!("{}.{micros}Z", utc.strftime("%Y-%m-%dT%H:%M:%S")))
}
