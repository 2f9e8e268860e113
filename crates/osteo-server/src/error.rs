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
    /// The study store, a budget, a queue or a concurrency limit is full now; a later retry
    /// may pass.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The request itself is over a configured size limit (RESOURCE_EXHAUSTED that no retry
    /// passes: the status carries `grpc-retry-pushback-ms: -1`, gRPC's "do not retry").
    #[error("{0}")]
    TooLarge(String),
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
            ServerError::ResourceExhausted(_) | ServerError::TooLarge(_) => Code::ResourceExhausted,
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
            ServerError::TooLarge(m) => ServerError::TooLarge(one_line(&m)),
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

/// The trailer by which a gRPC server tells clients whether and when to retry (gRPC's retry
/// design, A6): a negative value says "do not retry".
pub const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

impl From<ServerError> for Status {
    fn from(e: ServerError) -> Self {
        let code = e.code();
        let permanent = matches!(e, ServerError::TooLarge(_));
        let mut status = Status::new(code, e.to_string());
        if permanent {
            status.metadata_mut().insert(
                RETRY_PUSHBACK,
                tonic::metadata::MetadataValue::from_static("-1"),
            );
        }
        status
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
            osteo_dicom::DicomError::TooLarge { .. } => ServerError::TooLarge(e.to_string()),
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

    #[test]
    fn only_a_request_over_a_limit_tells_clients_not_to_retry() {
        let too_large = Status::from(ServerError::TooLarge("over".into()));
        assert_eq!(too_large.code(), Code::ResourceExhausted);
        let pushback = too_large.metadata().get(RETRY_PUSHBACK);
        assert_eq!(pushback.and_then(|v| v.to_str().ok()), Some("-1"));
        let busy = Status::from(ServerError::ResourceExhausted("busy".into()));
        assert_eq!(busy.code(), Code::ResourceExhausted);
        assert!(busy.metadata().get(RETRY_PUSHBACK).is_none());
    }
}
