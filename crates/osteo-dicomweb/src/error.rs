//! Errors of DICOMweb calls.

use thiserror::Error;

/// Why a DICOMweb call failed.
#[derive(Debug, Clone, Error)]
pub enum DicomWebError {
    /// The base URL cannot be used.
    #[error("DICOMweb URL: {0}")]
    Url(String),
    /// The TLS options cannot be used (a CA file, client certificate or key).
    #[error("DICOMweb TLS: {0}")]
    TlsConfig(String),
    /// The TLS handshake with the server failed (an untrusted or wrong certificate, a client
    /// certificate refused); retrying does not help.
    #[error("DICOMweb {request}: the TLS handshake failed: {message}")]
    Handshake {
        /// What was asked.
        request: &'static str,
        /// What TLS reported.
        message: String,
    },
    /// The server could not be reached or the connection broke.
    #[error("DICOMweb {request}: {message}")]
    Transport {
        /// What was asked, e.g. `QIDO-RS search`.
        request: &'static str,
        /// What the connection reported.
        message: String,
    },
    /// The server answered with an HTTP error status.
    #[error("DICOMweb {request}: the server answered HTTP {status}")]
    Status {
        /// What was asked.
        request: &'static str,
        /// The HTTP status code.
        status: u16,
    },
    /// The answer is larger than the limit for it.
    #[error("DICOMweb {request}: the answer exceeds {limit} bytes")]
    TooLarge {
        /// What was asked.
        request: &'static str,
        /// The limit in bytes.
        limit: u64,
    },
    /// A search matched more than the limit for it.
    #[error("DICOMweb {request}: more than {limit} matches")]
    TooMany {
        /// What was asked.
        request: &'static str,
        /// The most matches taken.
        limit: u64,
    },
    /// The answer is not what the standard says it should be.
    #[error("DICOMweb {request}: {message}")]
    Protocol {
        /// What was asked.
        request: &'static str,
        /// What was wrong with it.
        message: String,
    },
}

impl DicomWebError {
    /// Whether retrying the call later may succeed (connection failures, 408, 429 and 5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            DicomWebError::Transport { .. } => true,
            DicomWebError::Status { status, .. } => {
                matches!(status, 408 | 429) || (500..600).contains(status)
            }
            _ => false,
        }
    }
}
