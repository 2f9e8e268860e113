//! Certificates made at test time with rcgen: a CA, a server certificate for localhost and
//! 127.0.0.1, and client certificates whose subject CN names a principal; written as PEM files
//! for the server, the CLI, grpcurl and Python.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// A certificate authority that issues server and client certificates into a directory.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    dir: PathBuf,
    name: String,
    /// The CA certificate (PEM file).
    pub cert: PathBuf,
}

/// A certificate and its key as PEM files.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

impl Ca {
    /// A new CA called `name`, its files in `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let path = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&path, cert.pem()).expect("write CA");
        Self {
            issuer: Issuer::new(params, key),
            dir: dir.to_path_buf(),
            name: name.to_string(),
            cert: path,
        }
    }

    /// The CA certificate's PEM text.
    pub fn pem(&self) -> String {
        std::fs::read_to_string(&self.cert).expect("CA file")
    }

    fn issue(&self, file: &str, cn: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> Issued {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let issued = Issued {
            cert: self.dir.join(format!("{}-{file}.pem", self.name)),
            key: self.dir.join(format!("{}-{file}-key.pem", self.name)),
        };
        std::fs::write(&issued.cert, cert.pem()).expect("write cert");
        std::fs::write(&issued.key, key.serialize_pem()).expect("write key");
        issued
    }

    /// A server certificate for localhost and 127.0.0.1.
    pub fn server(&self) -> Issued {
        self.issue(
            "server",
            "osteo-server",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate whose subject CN is `cn`.
    pub fn client(&self, cn: &str) -> Issued {
        self.issue(cn, cn, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// `[server.tls]` serving `server`, with client certificates from `client_ca` under
/// `client_auth`.
pub fn tls_toml(server: &Issued, client_ca: Option<&Ca>, client_auth: &str) -> String {
    format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\nclient_auth = \"{client_auth}\"\n",
        server.cert.display(),
        server.key.display(),
        client_ca
            .map(|c| c.cert.display().to_string())
            .unwrap_or_default()
    )
}

/// Client TLS trusting `ca`, presenting `identity` when given.
pub fn client_tls(ca: &Ca, identity: Option<&Issued>) -> tonic::transport::ClientTlsConfig {
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca.pem()));
    if let Some(id) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            std::fs::read(&id.cert).expect("cert"),
            std::fs::read(&id.key).expect("key"),
        ));
    }
    tls
}

/// A server on TLS with optional client certificates and `auth.mode = "token_or_mtls"`: one
/// token for `ris-gateway`, client certificates from `clients`, an audit log.
pub struct EitherServer {
    /// The running server.
    pub server: super::inproc::InProc,
    /// The CA of the server certificate.
    pub ca: Ca,
    /// The CA of client certificates.
    pub clients: Ca,
    /// The token of principal `ris-gateway`.
    pub token: String,
    /// The audit log.
    pub audit: PathBuf,
}

impl EitherServer {
    /// Starts it with the shipped `models`, its files in `dir`.
    pub async fn start(dir: &Path, models: &[(&str, &str)]) -> Self {
        let ca = Ca::new(dir, "hospital");
        let clients = Ca::new(dir, "clients");
        let tokens = dir.join("tokens.toml");
        let token = super::auth::new_token(&tokens, "ris-gateway", "client");
        let audit = dir.join("audit.jsonl");
        let config = format!(
            "{}[auth]\nmode = \"token_or_mtls\"\ntokens_file = \"{}\"\n[audit]\npath = \"{}\"\n",
            tls_toml(&ca.server(), Some(&clients), "optional"),
            tokens.display(),
            audit.display()
        );
        let server = super::inproc::InProc::start(&config, models, super::inproc::registry()).await;
        Self {
            server,
            ca,
            clients,
            token,
            audit,
        }
    }
}
