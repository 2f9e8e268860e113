//! TLS to an `https://` PACS: which roots to trust and, for a PACS that authenticates clients
//! by certificate, the client's identity. rustls with ring, as the server uses.

use crate::error::DicomWebError;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

/// How to reach an `https://` DICOMweb service.
#[derive(Clone, Default)]
pub struct TlsOptions {
    /// PEM CA certificates that sign the PACS's certificate; `None` trusts the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// A PEM client certificate chain and its PEM private key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key stays out of debug output.
        f.debug_struct("TlsOptions")
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "PEM"))
            .field("identity", &self.identity.as_ref().map(|_| "PEM"))
            .finish()
    }
}

impl TlsOptions {
    /// Whether anything differs from the defaults (system roots, no client certificate).
    pub fn is_set(&self) -> bool {
        self.ca_pem.is_some() || self.identity.is_some()
    }
}

fn config_error(message: impl Into<String>) -> DicomWebError {
    DicomWebError::TlsConfig(message.into())
}

/// Every certificate of a PEM text; an error when it holds none or one is malformed.
fn certificates(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, DicomWebError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_error(format!("the {what} is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(config_error(format!(
            "the {what} holds no PEM certificate (BEGIN CERTIFICATE)"
        )));
    }
    Ok(certs)
}

fn builder()
-> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, DicomWebError> {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(e.to_string()))
}

/// A configuration that trusts nothing, for a client that only speaks plain http.
pub(crate) fn unused_config() -> Result<rustls::ClientConfig, DicomWebError> {
    Ok(builder()?
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth())
}

/// The rustls client configuration of `options`.
pub(crate) fn client_config(options: &TlsOptions) -> Result<rustls::ClientConfig, DicomWebError> {
    let mut roots = RootCertStore::empty();
    match &options.ca_pem {
        Some(pem) => {
            for cert in certificates("CA file", pem)? {
                roots.add(cert).map_err(|e| {
                    config_error(format!("a CA certificate cannot be used as a root: {e}"))
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(config_error(
                    "the system has no trusted root certificates: give the CA that signs the \
                     PACS's certificate",
                ));
            }
        }
    }
    let builder = builder()?.with_root_certificates(roots);
    match &options.identity {
        Some((cert_pem, key_pem)) => {
            let chain = certificates("client certificate", cert_pem)?;
            let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| {
                config_error("the client key holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                config_error(format!(
                    "the client certificate and key do not go together: {e}"
                ))
            })
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// The TLS failure somewhere in an error's chain of sources, if any. An I/O error wrapping
/// another error hides it from `source()`, so its payload is followed instead.
pub(crate) fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(explain(tls));
        }
        next = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// A rustls error in words, with what to do for the certificate problems sites meet most.
fn explain(e: &rustls::Error) -> String {
    use rustls::{CertificateError as C, OtherError};
    let hint = match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => {
                Some("the certificate is not signed by a trusted CA: give the CA that signs it")
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                Some("the certificate does not name the host of the URL")
            }
            C::Expired | C::ExpiredContext { .. } => Some("the certificate has expired"),
            C::NotValidYet | C::NotValidYetContext { .. } => {
                Some("the certificate is not valid yet (check the clocks)")
            }
            C::Revoked => Some("the certificate is revoked"),
            C::Other(OtherError(other)) => {
                let text = other.to_string();
                if text.contains("CaUsedAsEndEntity") {
                    Some(
                        "the certificate is a CA certificate (a self-signed certificate with \
                         CA:TRUE): give the server a leaf certificate signed by that CA",
                    )
                } else if text.contains("UnsupportedCertVersion") {
                    Some("the certificate is X.509 version 1 or 2; version 3 is needed")
                } else {
                    None
                }
            }
            _ => None,
        },
        _ => None,
    };
    match hint {
        Some(hint) => format!("{hint} ({e})"),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_pem_is_refused_with_what_is_wrong() {
        let no_ca = TlsOptions {
            ca_pem: Some(b"not a certificate".to_vec()),
            identity: None,
        };
        let e = client_config(&no_ca).expect_err("refused").to_string();
        assert!(e.contains("CA file holds no PEM certificate"), "{e}");

        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["pacs".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let ca = Some(cert.pem().into_bytes());
        let no_key = TlsOptions {
            ca_pem: ca.clone(),
            identity: Some((cert.pem().into_bytes(), b"nothing".to_vec())),
        };
        let e = client_config(&no_key).expect_err("refused").to_string();
        assert!(e.contains("no PEM private key"), "{e}");
        let other = rcgen::KeyPair::generate().expect("key");
        let mismatched = TlsOptions {
            ca_pem: ca.clone(),
            identity: Some((cert.pem().into_bytes(), other.serialize_pem().into_bytes())),
        };
        assert!(client_config(&mismatched).is_err());
        let good = TlsOptions {
            ca_pem: ca,
            identity: Some((cert.pem().into_bytes(), key.serialize_pem().into_bytes())),
        };
        assert!(client_config(&good).is_ok());
        assert!(!format!("{good:?}").contains("PRIVATE KEY"));
    }
}
