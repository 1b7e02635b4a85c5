//! The client certificate a kubeconfig's user names (`client-certificate(-data)`, `client-key(-data)`),
//! loaded by mpsync rather than by kube, for two reasons:
//!
//! - kubectl accepts an X.509 v1 certificate (what `openssl x509 -req` makes without extensions);
//!   rustls's check that the key is the certificate's parses the certificate with webpki, which refuses
//!   v1. mpsync compares the two public keys itself;
//! - every fault names the kubeconfig's user and what is wrong, before any connection.
//!
//! As kubectl reads them: `-data` before the file (an empty one is none); the certificates from the
//! certificate's PEM (from the key's only where that holds none: one file for both), the client's own
//! first; the key's PEM's first private key (PKCS#8, PKCS#1 or SEC1; else the certificate's). With
//! them, an exec plugin is not run, as client-go does not run it.

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::{self, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use secrecy::ExposeSecret;

use crate::error::{Error, Result};

/// What the client answers when the server asks for a certificate: always this one.
#[derive(Debug)]
pub struct ClientIdentity(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientIdentity {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Take the user's client certificate and key out of `auth` (kube then loads none), loaded and
/// checked; None when the user has neither. `user` names the user in errors ("user \"x\" in FILE").
pub fn take(auth: &mut kube::config::AuthInfo, user: Option<&str>) -> Result<Option<ClientIdentity>> {
    let cert = (auth.client_certificate_data.take(), auth.client_certificate.take());
    let key = (auth.client_key_data.take().map(|key| key.expose_secret().to_string()), auth.client_key.take());
    let user = user.unwrap_or("the configuration's user");
    let fail = |why: String| {
        Error::Config(format!(
            "cannot use the client certificate and key of {user}: {why}\nclient-certificate(-data) and \
             client-key(-data) must be a PEM certificate and its own unencrypted private key (RSA, EC P-256 or \
             P-384, or Ed25519; PKCS#1, PKCS#8 or SEC1)"
        ))
    };
    let (cert_pem, key_pem) = match (load(cert, "client-certificate"), load(key, "client-key")) {
        (Ok(None), Ok(None)) => return Ok(None),
        (Ok(Some(_)), Ok(None)) => return Err(fail("it names a client certificate but no client key".into())),
        (Ok(None), Ok(Some(_))) => return Err(fail("it names a client key but no client certificate".into())),
        (Err(why), _) | (_, Err(why)) => return Err(fail(why)),
        (Ok(Some(cert)), Ok(Some(key))) => (cert, key),
    };
    let identity = from_pem(&cert_pem, &key_pem, fail)?;
    // client-go does not run an exec plugin for a user with a client certificate of its own.
    auth.exec = None;
    Ok(Some(identity))
}

/// The identity of a certificate (with its chain) and its key, in PEM (an exec plugin's too); `fail` makes
/// the error that names whose they are from what is wrong.
pub fn from_pem(cert_pem: &[u8], key_pem: &[u8], fail: impl Fn(String) -> Error) -> Result<ClientIdentity> {
    let (key_chain, key_keys) = sections(key_pem).map_err(|err| fail(format!("client-key: {err}")))?;
    let (cert_chain, cert_keys) = sections(cert_pem).map_err(|err| fail(format!("client-certificate: {err}")))?;
    let chain = if cert_chain.is_empty() { key_chain } else { cert_chain };
    let Some(key) = key_keys.into_iter().chain(cert_keys).next() else {
        return Err(fail("no unencrypted private key (no -----BEGIN ... PRIVATE KEY----- block)".into()));
    };
    let Some(own) = chain.first() else {
        return Err(fail("no certificate (no -----BEGIN CERTIFICATE----- block)".into()));
    };
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|err| fail(format!("the private key cannot be used: {err}")))?;
    // rustls's check (webpki parses the certificate strictly), and for a v1 certificate, which webpki
    // refuses, the same comparison of public keys on a strict reading of its DER.
    let mismatch = || fail("the private key is not the client certificate's own".into());
    match CertifiedKey::new(vec![own.clone()], key.clone()).keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => return Err(mismatch()),
        Err(err) if format!("{err:?}").contains("UnsupportedCertVersion") => {
            let Some(spki) = subject_public_key_info(own) else {
                return Err(fail("the client certificate is not a valid X.509 certificate".into()));
            };
            if key.public_key().is_some_and(|public| public.as_ref() != spki) {
                return Err(mismatch());
            }
        }
        Err(err) => return Err(fail(format!("the client certificate cannot be used: {err}"))),
    }
    Ok(ClientIdentity(Arc::new(CertifiedKey::new(chain, key))))
}

/// The certificates and private keys in PEM text, in order; other blocks are skipped.
#[allow(clippy::type_complexity)]
fn sections(text: &[u8]) -> std::result::Result<(Vec<CertificateDer<'static>>, Vec<PrivateKeyDer<'static>>), String> {
    let mut chain = Vec::new();
    let mut keys = Vec::new();
    let mut reader = std::io::Cursor::new(text);
    loop {
        match pem::from_buf(&mut reader) {
            Ok(Some((SectionKind::Certificate, der))) => chain.push(CertificateDer::from(der)),
            Ok(Some((SectionKind::PrivateKey, der))) => keys.push(PrivateKeyDer::Pkcs8(der.into())),
            Ok(Some((SectionKind::RsaPrivateKey, der))) => keys.push(PrivateKeyDer::Pkcs1(der.into())),
            Ok(Some((SectionKind::EcPrivateKey, der))) => keys.push(PrivateKeyDer::Sec1(der.into())),
            Ok(Some(_)) => {}
            Ok(None) => return Ok((chain, keys)),
            Err(err) => return Err(format!("not valid PEM (an encrypted key?): {err}")),
        }
    }
}

/// The PEM text of `-data` (base64) or else of the file, as kube loads it.
fn load((data, file): (Option<String>, Option<String>), field: &str) -> std::result::Result<Option<Vec<u8>>, String> {
    // Empty is none, as client-go has it; base64 may be wrapped over lines, as Go's decoder skips them.
    let data = data.filter(|data| !data.trim().is_empty());
    let file = file.filter(|file| !file.is_empty());
    if let Some(data) = data {
        let data: String = data.split_ascii_whitespace().collect();
        return base64::engine::general_purpose::STANDARD
            .decode(data)
            .map(Some)
            .map_err(|err| format!("{field}-data is not base64: {err}"));
    }
    match file {
        Some(file) => super::read_config_file(Path::new(&file))
            .map(Some)
            .map_err(|err| format!("cannot read {field} {file}: {err}")),
        None => Ok(None),
    }
}

/// The certificate's SubjectPublicKeyInfo, as DER (its outer SEQUENCE included), whatever its version;
/// None unless `cert` is one DER Certificate (to-be-signed part, algorithm, signature) and nothing more.
fn subject_public_key_info(cert: &[u8]) -> Option<&[u8]> {
    let (certificate, after) = der(cert, 0x30)?;
    let (tbs, rest) = der(certificate.content, 0x30)?;
    let (_, rest) = der(rest, 0x30)?;
    let (_, rest) = der(rest, 0x03)?;
    if !after.is_empty() || !rest.is_empty() {
        return None;
    }
    let mut rest = tbs.content;
    // version [0] EXPLICIT, absent in a v1 certificate
    if rest.first() == Some(&0xa0) {
        rest = der(rest, 0xa0)?.1;
    }
    // serialNumber, signature, issuer, validity, subject
    for tag in [0x02, 0x30, 0x30, 0x30, 0x30] {
        rest = der(rest, tag)?.1;
    }
    Some(der(rest, 0x30)?.0.whole)
}

struct Tlv<'a> {
    whole: &'a [u8],
    content: &'a [u8],
}

/// One DER element with tag `tag` at the start of `input`, and what follows it.
fn der(input: &[u8], tag: u8) -> Option<(Tlv<'_>, &[u8])> {
    if *input.first()? != tag {
        return None;
    }
    let first = *input.get(1)?;
    let (length, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let bytes = input.get(2..2 + count)?;
        let length = bytes.iter().fold(0usize, |length, byte| (length << 8) | usize::from(*byte));
        // DER: the shortest form only.
        if bytes[0] == 0 || length < 0x80 {
            return None;
        }
        (length, 2 + count)
    };
    let end = header.checked_add(length)?;
    let whole = input.get(..end)?;
    Some((Tlv { whole, content: &whole[header..] }, &input[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_short_long_and_truncated() {
        assert_eq!(
            der(&[0x30, 0x01, 0xff, 0x00], 0x30).map(|(tlv, rest)| (tlv.content, rest)),
            Some((&[0xff][..], &[0x00][..]))
        );
        let long = [&[0x04, 0x81, 0x80][..], &[7; 0x80]].concat();
        assert_eq!(der(&long, 0x04).map(|(tlv, _)| tlv.content.to_vec()), Some(vec![7; 0x80]));
        assert!(der(&[0x30, 0x05, 0x00], 0x30).is_none());
        assert!(der(&[0x31, 0x00], 0x30).is_none());
        assert!(der(&[0x30, 0x85, 0, 0, 0, 0, 1], 0x30).is_none());
        assert!(der(&[], 0x30).is_none());
    }

    #[test]
    fn lengths_not_in_their_shortest_form_are_not_der() {
        assert!(der(&[0x04, 0x81, 0x02, 1, 2], 0x04).is_none());
        assert!(der(&[0x04, 0x82, 0x00, 0x80], 0x04).is_none());
    }

    #[test]
    fn not_a_certificate_has_no_public_key() {
        assert!(subject_public_key_info(b"hello").is_none());
        assert!(subject_public_key_info(&[0x30, 0x00]).is_none());
    }
}
