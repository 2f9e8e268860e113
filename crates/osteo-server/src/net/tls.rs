//! TLS termination with rustls: the server certificate, its key and the client CA bundle are
//! read from PEM files, and read again when their contents change (cert-manager and Kubernetes
//! rotate them in place), so a rotated certificate is served to the next connection without a
//! restart. A file that changed but does not load keeps the configuration in force and is
//! logged. With client authentication, the client certificate's subject CN (or its first DNS or
//! e-mail SAN, when `auth.mtls_san_identity` allows) names the principal for `auth.mode = "mtls"`.

use crate::error::ServerError;
use crate::principal::valid_principal;
use rustls::RootCertStore;
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_rustls::TlsAcceptor;

/// Whether and how clients present certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificates asked for.
    None,
    /// Asked for and verified when presented; connections without one are accepted.
    Optional,
    /// A certificate signed by the client CA is required to connect.
    Required,
}

impl ClientAuth {
    /// Parses `server.tls.client_auth`.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "none" => Some(Self::None),
            "optional" => Some(Self::Optional),
            "required" => Some(Self::Required),
            _ => None,
        }
    }
}

/// The files of `[server.tls]`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA bundle that signs client certificates (needed unless `client_auth` is none).
    pub client_ca: Option<PathBuf>,
    /// Client certificate policy.
    pub client_auth: ClientAuth,
}

/// The acceptor in force and what it was built from.
struct Loaded {
    acceptor: TlsAcceptor,
    digest: blake3::Hash,
    checked: Instant,
}

/// TLS configuration that follows its files.
pub struct TlsSource {
    files: TlsFiles,
    alpn: Alpn,
    loaded: Mutex<Loaded>,
}

/// The application protocol a TLS listener offers in ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// HTTP/2 (gRPC).
    H2,
    /// HTTP/1.1 (the REST endpoints).
    Http11,
    /// None (DICOM TLS: the DICOM node's listener).
    None,
}

impl Alpn {
    /// The protocol's ALPN identifier.
    fn id(self) -> Option<&'static [u8]> {
        match self {
            Alpn::H2 => Some(b"h2"),
            Alpn::Http11 => Some(b"http/1.1"),
            Alpn::None => None,
        }
    }
}

impl std::fmt::Debug for TlsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSource")
            .field("files", &self.files)
            .finish()
    }
}

/// How often the files are looked at for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// The contents of the configured files.
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Contents {
    fn read(files: &TlsFiles) -> Result<Self, ServerError> {
        let read = |key: &str, path: &Path| {
            std::fs::read(path)
                .map_err(|e| ServerError::Config(format!("{key} = {}: {e}", path.display())))
        };
        Ok(Self {
            cert: read("server.tls.cert_file", &files.cert)?,
            key: read("server.tls.key_file", &files.key)?,
            client_ca: match &files.client_ca {
                Some(p) => Some(read("server.tls.client_ca_file", p)?),
                None => None,
            },
        })
    }

    fn digest(&self) -> blake3::Hash {
        let mut h = blake3::Hasher::new();
        for part in [
            &self.cert[..],
            &self.key,
            self.client_ca.as_deref().unwrap_or(&[]),
        ] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.finalize()
    }
}

/// Parses every certificate of a PEM file; an error names the key and the problem.
fn certificates(
    key: &str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, ServerError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            ServerError::Config(format!(
                "{key} = {}: not PEM certificates ({e})",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(ServerError::Config(format!(
            "{key} = {}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(certs)
}

/// The ring crypto provider (the only one built in).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the rustls server configuration (TLS 1.2 and 1.3, ALPN h2) from file contents.
fn server_config(files: &TlsFiles, c: &Contents, alpn: Alpn) -> Result<ServerConfig, ServerError> {
    let certs = certificates("server.tls.cert_file", &files.cert, &c.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&c.key).map_err(|e| {
        ServerError::Config(format!(
            "server.tls.key_file = {}: no PEM private key ({e})",
            files.key.display()
        ))
    })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Internal(format!("TLS protocol versions: {e}")))?;
    let builder = match (files.client_auth, &files.client_ca, &c.client_ca) {
        (ClientAuth::None, _, _) => builder.with_no_client_auth(),
        (auth, Some(path), Some(pem)) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates("server.tls.client_ca_file", path, pem)? {
                roots.add(cert).map_err(|e| {
                    ServerError::Config(format!(
                        "server.tls.client_ca_file = {}: not a usable CA certificate ({e})",
                        path.display()
                    ))
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = if auth == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier.build().map_err(|e| {
                ServerError::Config(format!(
                    "server.tls.client_ca_file = {}: {e}",
                    path.display()
                ))
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => {
            return Err(ServerError::Config(
                "server.tls.client_ca_file: needed when server.tls.client_auth is not \"none\""
                    .into(),
            ));
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        ServerError::Config(format!(
            "server.tls.key_file = {}: does not match server.tls.cert_file or is unusable ({e})",
            files.key.display()
        ))
    })?;
    config.alpn_protocols = alpn.id().map(|id| vec![id.to_vec()]).unwrap_or_default();
    Ok(config)
}

impl TlsSource {
    /// Loads the files; errors name the key and the problem.
    pub fn load(files: TlsFiles, alpn: Alpn) -> Result<Self, ServerError> {
        let contents = Contents::read(&files)?;
        let config = server_config(&files, &contents, alpn)?;
        log_validity(&contents.cert);
        Ok(Self {
            loaded: Mutex::new(Loaded {
                acceptor: TlsAcceptor::from(Arc::new(config)),
                digest: contents.digest(),
                checked: Instant::now(),
            }),
            files,
            alpn,
        })
    }

    /// The configuration for a new connection (see [`TlsSource::acceptor`]).
    pub fn config(&self) -> Arc<ServerConfig> {
        self.acceptor().config().clone()
    }

    /// The acceptor for a new connection, after re-reading the files if the last look is more
    /// than a second old and they changed.
    pub fn acceptor(&self) -> TlsAcceptor {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.checked.elapsed() >= RELOAD_CHECK {
            loaded.checked = Instant::now();
            match Contents::read(&self.files).map(|c| (c.digest(), c)) {
                Ok((digest, c)) if digest != loaded.digest => {
                    loaded.digest = digest;
                    match server_config(&self.files, &c, self.alpn) {
                        Ok(config) => {
                            loaded.acceptor = TlsAcceptor::from(Arc::new(config));
                            log_validity(&c.cert);
                            tracing::info!("TLS files changed; new connections use them");
                        }
                        Err(e) => tracing::error!(
                            error = %e,
                            "TLS files changed but do not load; keeping the certificate in force"
                        ),
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::error!(
                    error = %e,
                    "TLS files cannot be read; keeping the certificate in force"
                ),
            }
        }
        loaded.acceptor.clone()
    }
}

/// Logs the validity period of the leaf certificate (the operator's reminder to rotate it).
fn log_validity(pem: &[u8]) {
    let Some(Ok(leaf)) = CertificateDer::pem_slice_iter(pem).next() else {
        return;
    };
    if let Ok((_, cert)) = x509_parser::parse_x509_certificate(&leaf) {
        let v = cert.validity();
        let days = v.time_to_expiration().map(|d| d.whole_days());
        match days {
            Some(d) if d < 14 => tracing::warn!(
                not_after = %v.not_after,
                "the server certificate expires in {d} days"
            ),
            Some(_) => tracing::info!(not_after = %v.not_after, "serving TLS"),
            None => tracing::error!(
                not_after = %v.not_after,
                "the server certificate has expired or is not valid yet"
            ),
        }
    }
}

/// What a connection's client certificate says about who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerCert {
    /// No TLS, or no certificate presented.
    Absent,
    /// A verified certificate: its subject CN and its first DNS or e-mail SAN, each only when
    /// it is a valid principal name. Which of them names the principal is the authenticator's
    /// choice (`auth.mtls_san_identity`).
    Verified {
        /// The subject CN.
        cn: Option<String>,
        /// The first DNS or e-mail subject alternative name.
        san: Option<String>,
    },
}

impl PeerCert {
    /// The names in a verified client certificate chain (leaf first).
    pub fn of(chain: Option<&[CertificateDer<'_>]>) -> Self {
        let Some(leaf) = chain.and_then(|c| c.first()) else {
            return Self::Absent;
        };
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
            return Self::Verified {
                cn: None,
                san: None,
            };
        };
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string)
            .filter(|n| valid_principal(n));
        let san = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|ext| {
                ext.value.general_names.iter().find_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(s)
                    | x509_parser::extensions::GeneralName::RFC822Name(s) => Some(s.to_string()),
                    _ => None,
                })
            })
            .filter(|n| valid_principal(n));
        Self::Verified { cn, san }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(cn: Option<&str>, sans: &[&str]) -> CertificateDer<'static> {
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().clone()
    }

    #[test]
    fn the_certificate_names_are_its_cn_and_first_san_when_valid() {
        let names = |c: CertificateDer<'static>| PeerCert::of(Some(&[c]));
        let v = |cn: Option<&str>, san: Option<&str>| PeerCert::Verified {
            cn: cn.map(str::to_string),
            san: san.map(str::to_string),
        };
        assert_eq!(
            names(cert_with(Some("pacs-gateway"), &["other.example"])),
            v(Some("pacs-gateway"), Some("other.example"))
        );
        assert_eq!(
            names(cert_with(None, &["ris.hospital.example"])),
            v(None, Some("ris.hospital.example"))
        );
        assert_eq!(names(cert_with(Some("has space"), &[])), v(None, None));
        assert_eq!(names(cert_with(None, &[])), v(None, None));
        assert_eq!(PeerCert::of(None), PeerCert::Absent);
    }

    #[test]
    fn bad_files_are_refused_naming_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let k = rcgen::KeyPair::generate().expect("key");
        let c = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .self_signed(&k)
            .expect("cert");
        std::fs::write(&cert, c.pem()).expect("write");
        std::fs::write(&key, "not a key").expect("write");
        let files = |ca: Option<PathBuf>, auth| TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: ca,
            client_auth: auth,
        };
        let e = TlsSource::load(files(None, ClientAuth::None), Alpn::H2).expect_err("bad key");
        assert!(e.to_string().contains("server.tls.key_file"), "{e}");
        std::fs::write(&key, k.serialize_pem()).expect("write");
        TlsSource::load(files(None, ClientAuth::None), Alpn::H2).expect("loads");
        let e = TlsSource::load(files(None, ClientAuth::Required), Alpn::H2).expect_err("no CA");
        assert!(e.to_string().contains("server.tls.client_ca_file"), "{e}");
        let e = TlsSource::load(files(Some(key.clone()), ClientAuth::Required), Alpn::H2)
            .expect_err("a key is no CA");
        assert!(e.to_string().contains("server.tls.client_ca_file"), "{e}");
        std::fs::write(&cert, "").expect("write");
        let e = TlsSource::load(files(None, ClientAuth::None), Alpn::H2).expect_err("empty cert");
        assert!(e.to_string().contains("server.tls.cert_file"), "{e}");
    }
}
