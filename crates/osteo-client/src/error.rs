//! What can go wrong on the client side, each displayed as one `CODE: message` line when it
//! has a gRPC status code.

use osteo_dicomweb::DicomWebError;

/// A client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The caller asked for something that cannot work (a bad URL, TLS material on http://).
    #[error("INVALID_ARGUMENT: {0}")]
    InvalidArgument(String),
    /// The server could not be reached.
    #[error("UNAVAILABLE: {0}")]
    Unavailable(String),
    /// The server answered with an error.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(Box<tonic::Status>),
    /// The study's files could not be read.
    #[error(transparent)]
    Dicom(#[from] osteo_dicom::DicomError),
    /// The PACS failed.
    #[error(transparent)]
    DicomWeb(#[from] DicomWebError),
    /// A local file (worklist, results) could not be read or written.
    #[error("{what}: {message}")]
    File {
        /// The file and what it is for.
        what: String,
        /// What went wrong.
        message: String,
    },
    /// The server's answer lacks what the operation needs.
    #[error("{0}")]
    Answer(String),
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        ClientError::Status(Box::new(s))
    }
}

impl ClientError {
    /// The server's status, when the server answered with an error.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            ClientError::Status(s) => Some(s),
            _ => None,
        }
    }

    /// An error about the local file `what`.
    pub(crate) fn file(what: impl Into<String>, e: impl std::fmt::Display) -> Self {
        ClientError::File {
            what: what.into(),
            message: e.to_string(),
        }
    }
}

/// The canonical name of a gRPC status code (as in the gRPC specification).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
