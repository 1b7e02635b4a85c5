//! A TLS front for a plain-HTTP test API server that sends nothing between the end of the TLS handshake
//! and its first answer: no TLS 1.3 session tickets, as kube-apiserver in issue 14's trace (and, since
//! it was told so, the test server itself). With nothing coming back, a client that leaves Nagle's
//! algorithm on holds its request (a second small write) until the server's delayed ACK, about 40 ms on
//! Linux. The front is a second TLS server in front of the same test server: the figures through it
//! check that the test server's own TLS stack flatters nothing.
//!
//! One thread per connection relays bytes between the TLS client and a plain connection to the server.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use base64::Engine as _;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

pub struct TlsFront {
    addr: SocketAddr,
    ca_pem: String,
    stop: Arc<AtomicBool>,
}

impl Drop for TlsFront {
    /// Stop listening (connections in flight end with the server's).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

impl TlsFront {
    /// Listen on 127.0.0.1 and relay every connection to `backend` (plain HTTP), until dropped.
    pub fn start(backend: SocketAddr) -> TlsFront {
        let (ca_pem, config) = tls_config();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        thread::Builder::new()
            .name("tls-front".into())
            .spawn(move || {
                for socket in listener.incoming().flatten() {
                    if stopped.load(Ordering::SeqCst) {
                        return;
                    }
                    let config = config.clone();
                    let _ = thread::Builder::new().name("tls-front-conn".into()).spawn(move || {
                        let _ = relay(socket, backend, config);
                    });
                }
            })
            .expect("spawn the TLS front");
        TlsFront { addr, ca_pem, stop }
    }

    /// A kubeconfig for the front: the server by IP, its CA as data, a user without credentials.
    pub fn kubeconfig_yaml(&self, namespace: &str) -> String {
        let data = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: front\n  cluster:\n    server: \"https://{}\"\n    \
             certificate-authority-data: {data}\nusers:\n- name: user\n  user: {{}}\ncontexts:\n- name: front\n  \
             context:\n    cluster: front\n    user: user\n    namespace: \"{namespace}\"\ncurrent-context: front\n",
            self.addr
        )
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
}

/// A CA and a serving certificate for 127.0.0.1 (rcgen), and a rustls server configuration that sends
/// no session tickets.
fn tls_config() -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params.distinguished_name.push(DnType::CommonName, "tls-front-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key")).expect("CA certificate");
    let params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).expect("parameters");
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca).expect("serving certificate");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .expect("certificate and key");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.send_tls13_tickets = 0;
    (ca.pem(), Arc::new(config))
}

fn relay(client: TcpStream, backend: SocketAddr, config: Arc<rustls::ServerConfig>) -> io::Result<()> {
    // As Go's net package does on accepted sockets.
    client.set_nodelay(true)?;
    let mut client = client;
    let mut tls = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
    let mut server = TcpStream::connect(backend)?;
    server.set_nodelay(true)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while tls.wants_write() {
            tls.write_tls(&mut client)?;
        }
        let (from_client, from_server) = {
            let mut fds =
                [PollFd::new(client.as_fd(), PollFlags::POLLIN), PollFd::new(server.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::NONE).map_err(io::Error::from)?;
            let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]))
        };
        if from_client {
            if tls.read_tls(&mut client)? == 0 {
                return Ok(());
            }
            tls.process_new_packets().map_err(io::Error::other)?;
            loop {
                match tls.reader().read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => server.write_all(&buf[..n])?,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    Err(err) => return Err(err),
                }
            }
        }
        if from_server {
            let n = server.read(&mut buf)?;
            if n == 0 {
                tls.send_close_notify();
                while tls.wants_write() {
                    tls.write_tls(&mut client)?;
                }
                return Ok(());
            }
            tls.writer().write_all(&buf[..n])?;
        }
    }
}
