//! The node's errors.

/// What can go wrong in the node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A file or directory of the spool or the results.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A peer broke the DICOM upper layer or DIMSE protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The DICOM upper layer (association, PDUs).
    #[error("association: {0}")]
    Association(String),
    /// A study that cannot be graded because some of its instances were refused.
    #[error("incomplete study: {0}")]
    Incomplete(String),
    /// A configuration value.
    #[error("{0}")]
    Config(String),
    /// The server or the grading.
    #[error(transparent)]
    Client(#[from] osteo_client::ClientError),
    /// A received instance.
    #[error(transparent)]
    Dicom(#[from] osteo_dicom::DicomError),
}

impl NodeError {
    /// An I/O error while doing `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}
