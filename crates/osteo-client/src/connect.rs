//! Connecting to an OsteoServe server: plaintext or TLS (a CA bundle or the system's roots, a
//! client certificate), and a bearer token sent with every call.

use crate::error::ClientError;
use osteo_core::error::chain;
use osteo_proto::v1::osteo_service_client::OsteoServiceClient;
use tonic::service::{Interceptor, interceptor::InterceptedService};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// The largest message a client sends or accepts (an explanation with its DICOM outputs).
const MAX_MESSAGE: usize = 256 << 20;

/// What a client presents to the server and whom it trusts.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// Bearer token for a server with `auth.mode = "token"`.
    pub token: Option<String>,
    /// PEM CA bundle that signs the server's certificate (https:// only; `None`: the system's
    /// trusted roots).
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate chain and private key, for a server that authenticates clients
    /// by certificate.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl Credentials {
    /// The TLS configuration of an https:// URL; an error for TLS material on a plaintext URL.
    fn tls(&self, url: &str) -> Result<Option<ClientTlsConfig>, ClientError> {
        if !url.starts_with("https://") {
            if self.ca_pem.is_some() || self.identity.is_some() {
                return Err(ClientError::InvalidArgument(
                    "--ca-cert, --client-cert and --client-key need an https:// --server URL"
                        .into(),
                ));
            }
            return Ok(None);
        }
        let mut tls = ClientTlsConfig::new();
        tls = match &self.ca_pem {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(ca)),
            None => tls.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        Ok(Some(tls))
    }
}

impl Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.token {
            let value = format!("Bearer {token}").parse().map_err(|_| {
                tonic::Status::invalid_argument("--token holds characters a header cannot carry")
            })?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

/// A client of the osteo.v1 service that sends its credentials with every call.
pub type Client = OsteoServiceClient<InterceptedService<Channel, Credentials>>;

/// Connects to the server at `url` (TLS for https:// URLs) with `credentials`.
pub async fn connect(url: &str, credentials: &Credentials) -> Result<Client, ClientError> {
    let mut endpoint = Channel::from_shared(url.to_string()).map_err(|_| {
        ClientError::InvalidArgument(format!(
            "--server {url} is not a URL (e.g. http://127.0.0.1:50051)"
        ))
    })?;
    if let Some(tls) = credentials.tls(url)? {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| ClientError::InvalidArgument(format!("TLS settings: {}", chain(&e))))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| ClientError::Unavailable(format!("cannot connect to {url}: {}", chain(&e))))?;
    Ok(
        OsteoServiceClient::with_interceptor(channel, credentials.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
    )
}
