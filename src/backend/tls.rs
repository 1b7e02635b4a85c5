//! Which certificates mpsync trusts for the API server: exactly what the configuration asks for.
//!
//! - `insecure-skip-tls-verify: true`: nothing is verified, so nothing is loaded (no CA, no system store);
//! - `certificate-authority-data` or `certificate-authority` (in a pod: the service account's `ca.crt`):
//!   those certificates only;
//! - neither: the system's CA certificates (`SSL_CERT_FILE`/`SSL_CERT_DIR`, else the distribution's
//!   bundle), loaded only then. A static mpsync in an empty image has none: the error says how to fix it.
//!
//! A CA that cannot be read or holds no usable certificate is an error naming it, before any connection.

use base64::Engine;
use kube::config::Cluster;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::error::{Error, Result};
use crate::store::kube::one_line;

/// Where the service account's CA is mounted in a pod (what kube's in-cluster configuration reads).
pub const IN_CLUSTER_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// What the API server's certificate is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Plain HTTP, or `insecure-skip-tls-verify`: nothing to load.
    Nothing,
    /// The configuration's own CA certificates; the words name where they come from.
    Ca(String),
    /// The configuration names no CA: the system's CA certificates.
    System,
}

/// Check a kubeconfig cluster's CA before kube loads it, so that a bad one is an error that names it.
/// With `insecure-skip-tls-verify` the CA is dropped unread: there is nothing to verify with it.
pub fn check_kubeconfig_ca(cluster: &mut Cluster, cluster_name: &str, origin: &str) -> Result<()> {
    check_kubeconfig_ca_read(cluster, cluster_name, origin, None)
}

/// [`check_kubeconfig_ca`], with the `certificate-authority` file read already (`read`), if it was.
pub fn check_kubeconfig_ca_read(
    cluster: &mut Cluster,
    cluster_name: &str,
    origin: &str,
    read: Option<&std::io::Result<Vec<u8>>>,
) -> Result<()> {
    if cluster.insecure_skip_tls_verify == Some(true) {
        cluster.certificate_authority = None;
        cluster.certificate_authority_data = None;
        return Ok(());
    }
    if let Some(data) = &cluster.certificate_authority_data {
        let what = format!("the certificate-authority-data of cluster {cluster_name:?} in {origin}");
        let pem = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|err| Error::Config(format!("{what} is not base64: {err}")))?;
        check_pem(&pem, &what)?;
    } else if let Some(file) = &cluster.certificate_authority {
        let what = format!("certificate-authority {file} (cluster {cluster_name:?} in {origin})");
        let cannot = |err: &std::io::Error| Error::Config(format!("cannot read {what}: {err}"));
        match read {
            Some(Ok(pem)) => check_pem(pem, &what)?,
            Some(Err(err)) => return Err(cannot(err)),
            None => {
                check_pem(&super::read_config_file(std::path::Path::new(file)).map_err(|err| cannot(&err))?, &what)?
            }
        }
    }
    Ok(())
}

/// Settle what `config` trusts, as the module's rules say; `ca` names the CA it carries, if any.
pub fn settle(config: &mut kube::Config, ca: Option<String>) -> Result<Trust> {
    if config.cluster_url.scheme_str() == Some("http") || config.accept_invalid_certs {
        // An empty list, not None: None would make kube load the system store, and fail without one.
        config.root_cert = Some(Vec::new());
        config.root_cert_file = None;
        return Ok(Trust::Nothing);
    }
    match &config.root_cert {
        None => Ok(Trust::System),
        Some(ders) => {
            let what = ca.unwrap_or_else(|| "the configuration's certificate authority".to_string());
            let mut store = RootCertStore::empty();
            if ders.is_empty() {
                return Err(Error::Config(no_certificate(&what)));
            }
            for (n, der) in ders.iter().enumerate() {
                store.add(CertificateDer::from(der.as_slice())).map_err(|err| bad_certificate(&what, n, &err))?;
            }
            Ok(Trust::Ca(what))
        }
    }
}

/// The message for a TLS set-up that failed, in the terms of what was trusted (the client's own
/// certificate, a kubeconfig's or an exec plugin's, is loaded and checked by `identity`).
pub fn setup_error(trust: &Trust, server: &http::Uri, err: &kube::Error) -> Error {
    let server = super::shown_server(server);
    match trust {
        Trust::System => Error::Config(format!(
            "cannot trust the API server {server}: the kubeconfig names no certificate authority, and the \
             system's CA certificates cannot be loaded ({})\nadd certificate-authority-data to the kubeconfig's \
             cluster, or provide a CA bundle: mount one at /etc/ssl/certs/ca-certificates.crt or set SSL_CERT_FILE",
            one_line(err)
        )),
        Trust::Ca(what) => Error::Config(format!("cannot use {what}: {}", one_line(err))),
        Trust::Nothing => Error::Config(format!("cannot set up TLS for {server}: {}", one_line(err))),
    }
}

/// The certificates (DER) in PEM `pem`, read from `what`; Err says why not, on one line.
pub fn pem_certificates(pem: &[u8], what: &str) -> std::result::Result<Vec<Vec<u8>>, String> {
    let ders = CertificateDer::pem_slice_iter(pem)
        .map(|der| der.map(|der| der.to_vec()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|err| format!("{what} is not valid PEM: {err}"))?;
    if ders.is_empty() {
        return Err(no_certificate(what));
    }
    Ok(ders)
}

fn check_pem(pem: &[u8], what: &str) -> Result<()> {
    let ders = pem_certificates(pem, what).map_err(Error::Config)?;
    let mut store = RootCertStore::empty();
    for (n, der) in ders.into_iter().enumerate() {
        store.add(CertificateDer::from(der)).map_err(|err| bad_certificate(what, n, &err))?;
    }
    Ok(())
}

fn no_certificate(what: &str) -> String {
    format!("{what} holds no certificate (no -----BEGIN CERTIFICATE----- block)")
}

fn bad_certificate(what: &str, index: usize, err: &rustls::Error) -> Error {
    Error::Config(format!("{what}: certificate {} is not a usable CA certificate: {err}", index + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed CA (EC P-256), as kubeadm makes one.
    const CA: &str = "-----BEGIN CERTIFICATE-----
MIIBgDCCASWgAwIBAgIUVrQf5d//S01a0fbXxYRIx9wc0VQwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJdGVzdC1jYS0xMCAXDTI2MDMwNDEzMDk1MFoYDzIxMjYwMjA4
MTMwOTUwWjAUMRIwEAYDVQQDDAl0ZXN0LWNhLTEwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAARg57mWJPDsAIEQAgXqMOOfjMQP+PE9HqcZobycO8z94r/uRuV0wKx/
0SvMsKFtnreut0bjgFtmZaWY+6d87Is9o1MwUTAdBgNVHQ4EFgQUjtGuhkM7LtHB
gMPCJIxMwbY69OQwHwYDVR0jBBgwFoAUjtGuhkM7LtHBgMPCJIxMwbY69OQwDwYD
VR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNJADBGAiEAj/WzNVJDg/cBtLqQVM77
tkB+QyIXLG3Vi9Xj1YfW9QECIQDDFW8yFtgLeCg2Zhr4xQNq3/24r/01kI2rjFPO
xBkDMw==
-----END CERTIFICATE-----
";

    fn cluster(data: Option<&str>, file: Option<&str>, insecure: bool) -> Cluster {
        Cluster {
            server: Some("https://10.0.0.1:6443".into()),
            certificate_authority_data: data.map(str::to_string),
            certificate_authority: file.map(str::to_string),
            insecure_skip_tls_verify: insecure.then_some(true),
            ..Cluster::default()
        }
    }

    fn config(root_cert: Option<Vec<Vec<u8>>>, insecure: bool) -> kube::Config {
        let mut config = kube::Config::new("https://10.0.0.1:6443".parse().unwrap());
        config.root_cert = root_cert;
        config.accept_invalid_certs = insecure;
        config
    }

    #[test]
    fn ca_data_and_files_are_checked_and_named() {
        let good = base64::engine::general_purpose::STANDARD.encode(CA);
        check_kubeconfig_ca(&mut cluster(Some(&good), None, false), "c", "kubeconfig /k").unwrap();
        let key_only = base64::engine::general_purpose::STANDARD
            .encode("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
        let garbage = base64::engine::general_purpose::STANDARD.encode(CA.replace("MIIB", "AAAB"));
        for (data, expected) in [
            ("%%%", "is not base64"),
            (key_only.as_str(), "holds no certificate"),
            (garbage.as_str(), "certificate 1 is not a usable CA certificate"),
        ] {
            let err = check_kubeconfig_ca(&mut cluster(Some(data), None, false), "c", "kubeconfig /k").unwrap_err();
            let message = err.to_string();
            assert!(message.contains("certificate-authority-data of cluster \"c\" in kubeconfig /k"), "{message}");
            assert!(message.contains(expected), "{message}");
        }
        let err = check_kubeconfig_ca(&mut cluster(None, Some("/no/such/ca.crt"), false), "c", "kubeconfig /k")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read certificate-authority /no/such/ca.crt"), "{err}");
    }

    #[test]
    fn insecure_skip_tls_verify_drops_the_ca_unread() {
        let mut insecure = cluster(Some("%%%"), Some("/no/such/ca.crt"), true);
        check_kubeconfig_ca(&mut insecure, "c", "kubeconfig /k").unwrap();
        assert_eq!((insecure.certificate_authority, insecure.certificate_authority_data), (None, None));
    }

    #[test]
    fn trust_is_what_the_configuration_asks_for() {
        let ca = CertificateDer::from_pem_slice(CA.as_bytes()).unwrap().to_vec();
        let mut with_ca = config(Some(vec![ca]), false);
        assert_eq!(settle(&mut with_ca, Some("the CA".into())).unwrap(), Trust::Ca("the CA".into()));

        let mut insecure = config(None, true);
        assert_eq!(settle(&mut insecure, None).unwrap(), Trust::Nothing);
        assert_eq!(insecure.root_cert, Some(Vec::new()));

        let mut plain = config(None, false);
        plain.cluster_url = "http://10.0.0.1:8080".parse().unwrap();
        assert_eq!(settle(&mut plain, None).unwrap(), Trust::Nothing);

        assert_eq!(settle(&mut config(None, false), None).unwrap(), Trust::System);

        let err = settle(&mut config(Some(vec![b"junk".to_vec()]), false), Some(IN_CLUSTER_CA.into())).unwrap_err();
        assert!(err.to_string().contains(IN_CLUSTER_CA), "{err}");
    }
}
