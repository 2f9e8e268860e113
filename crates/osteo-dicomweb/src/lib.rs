//! A DICOMweb client (PS3.18) for OsteoServe's screening: QIDO-RS to find studies, WADO-RS to
//! retrieve their instances, STOW-RS to store results. HTTP/1.1 over hyper, plain or TLS (rustls); every response body
//! is read within a byte limit before it is parsed, and every error names the request and the
//! problem, never a DICOM value.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, missing_docs)]

pub mod client;
pub mod error;
pub mod multipart;
pub mod tls;

pub use client::{DicomWeb, Limits, attribute, valid_uid};
pub use error::DicomWebError;
pub use tls::TlsOptions;
