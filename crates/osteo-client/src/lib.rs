//! The OsteoServe client library: everything a program needs to grade studies on an OsteoServe
//! server over the network — connection and credentials ([`connect`]: TLS, bearer tokens,
//! client certificates), study upload in UploadStudy's framing ([`upload`]), Classify, Explain
//! and CompareBackends on a study given as files ([`grade`]: one GradeStudy call by default, or
//! upload and handle with an [`affinity`] key), the documented JSON results
//! ([`report`]), retries of transient failures ([`retry`]), a bounded Classify load ([`load`])
//! and the PACS screening job ([`screen`]: queueing, retries, resume, shards). The `osteo` CLI maps its arguments onto
//! these calls; the tests and benches use them too.
#![deny(missing_docs)]

pub mod affinity;
pub mod connect;
pub mod error;
pub mod grade;
pub mod load;
pub mod report;
pub mod retry;
pub mod screen;
pub mod upload;

pub use connect::{Client, Credentials, connect};
pub use error::{ClientError, code_name};
