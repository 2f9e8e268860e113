//! Server errors and their gRPC status codes.

use osteo_core::BackendError;
use thiserror::Error;
use tonic::{Code, Status};

/// Why a request or the server failed; each variant is one gRPC status code.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ServerError {
    /// Bad DICOM, bad clinical values, malformed request.
    #[error("{0}")]
    InvalidArgument(String),
    /// Unknown study, model or backend.
    #[error("{0}")]
    NotFound(String),
    /// A size limit, the study store or a queue is full.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The request does not fit the model (e.g. an image model without a study).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Models still loading, shutting down, or a backend failed on its device.
    #[error("{0}")]
    Unavailable(String),
    /// The request's deadline passed before it finished.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// Missing or invalid credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's roles do not allow the RPC.
    #[error("{0}")]
    PermissionDenied(String),
    /// An invalid configuration (start-up only).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A bug or an engine failure the client cannot fix.
    #[error("{0}")]
    Internal(String),
}

impl ServerError {
    /// The gRPC status code of this error.
    pub fn code(&self) -> Code {
        match self {
            ServerError::InvalidArgument(_) => Code::InvalidArgument,
            ServerError::NotFound(_) => Code::NotFound,
            ServerError::ResourceExhausted(_) => Code::ResourceExhausted,
            ServerError::FailedPrecondition(_) => Code::FailedPrecondition,
            ServerError::Unavailable(_) => Code::Unavailable,
            ServerError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            ServerError::Unauthenticated(_) => Code::Unauthenticated,
            ServerError::PermissionDenied(_) => Code::PermissionDenied,
            ServerError::Config(_) | ServerError::Internal(_) => Code::Internal,
        }
    }
}

impl ServerError {
    /// The same error with its message made one bounded line (control characters escaped), fit
    /// for a status and a log.
    pub fn one_line(self) -> Self {
        use crate::text::one_line;
        match self {
            ServerError::InvalidArgument(m) => ServerError::InvalidArgument(one_line(&m)),
            ServerError::NotFound(m) => ServerError::NotFound(one_line(&m)),
            ServerError::ResourceExhausted(m) => ServerError::ResourceExhausted(one_line(&m)),
            ServerError::FailedPrecondition(m) => ServerError::FailedPrecondition(one_line(&m)),
            ServerError::Unavailable(m) => ServerError::Unavailable(one_line(&m)),
            ServerError::DeadlineExceeded(m) => ServerError::DeadlineExceeded(one_line(&m)),
            ServerError::Unauthenticated(m) => ServerError::Unauthenticated(one_line(&m)),
            ServerError::PermissionDenied(m) => ServerError::PermissionDenied(one_line(&m)),
            ServerError::Config(m) => ServerError::Config(one_line(&m)),
            ServerError::Internal(m) => ServerError::Internal(one_line(&m)),
        }
    }
}

impl From<ServerError> for Status {
    fn from(e: ServerError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

impl From<BackendError> for ServerError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::InvalidInput(_) => ServerError::InvalidArgument(e.to_string()),
            BackendError::Unsupported(_) => ServerError::FailedPrecondition(e.to_string()),
            BackendError::Load(_) | BackendError::Device(_) => {
                ServerError::Unavailable(e.to_string())
            }
            BackendError::Runtime(_) => ServerError::Internal(e.to_string()),
        }
    }
}

impl From<osteo_dicom::DicomError> for ServerError {
    fn from(e: osteo_dicom::DicomError) -> Self {
        match e {
            osteo_dicom::DicomError::TooLarge { .. } => {
                ServerError::ResourceExhausted(e.to_string())
            }
            osteo_dicom::DicomError::Demographic { .. }
            | osteo_dicom::DicomError::QualityGate { .. } => {
                ServerError::FailedPrecondition(e.to_string())
            }
            _ => ServerError::InvalidArgument(e.to_string()),
        }
    }
}

impl From<osteo_pipeline::PipelineError> for ServerError {
    fn from(e: osteo_pipeline::PipelineError) -> Self {
        use osteo_pipeline::PipelineError as P;
        match e {
            P::Dicom(d) => d.into(),
            P::Core(_) => ServerError::InvalidArgument(e.to_string()),
            P::NoView { .. } | P::NoClinical { .. } => {
                ServerError::FailedPrecondition(e.to_string())
            }
            P::NotANumber | P::TooLarge(_) => ServerError::Internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_errors_map_to_the_documented_codes() {
        let code = |e: BackendError| Status::from(ServerError::from(e)).code();
        assert_eq!(
            code(BackendError::InvalidInput("x".into())),
            Code::InvalidArgument
        );
        assert_eq!(
            code(BackendError::Unsupported("x".into())),
            Code::FailedPrecondition
        );
        assert_eq!(code(BackendError::Device("x".into())), Code::Unavailable);
        assert_eq!(code(BackendError::Runtime("x".into())), Code::Internal);
    }
}
