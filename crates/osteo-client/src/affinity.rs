//! The affinity key: gRPC metadata that names one study, sent on every call about it, so that a
//! balancer hashing on it (Istio `consistentHash.httpHeaderName`, ingress-nginx
//! `upstream-hash-by`, nginx `hash … consistent`) sends the upload and the calls by handle to the
//! one replica that holds the study. GradeStudy needs none: it holds the study for one call.

use crate::error::ClientError;

/// The metadata key (lowercase, as HTTP/2 carries it).
pub const HEADER: &str = "x-osteo-affinity";

/// A new affinity key: 64 random bits in hex; names nothing about the patient.
pub fn new_key() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// `message` as a request carrying the affinity key `key`, when given.
pub fn request<T>(message: T, key: Option<&str>) -> Result<tonic::Request<T>, ClientError> {
    let mut request = tonic::Request::new(message);
    if let Some(k) = key {
        let value = k.parse().map_err(|_| {
            ClientError::InvalidArgument(
                "the affinity key holds characters a header cannot carry".into(),
            )
        })?;
        request.metadata_mut().insert(HEADER, value);
    }
    Ok(request)
}
