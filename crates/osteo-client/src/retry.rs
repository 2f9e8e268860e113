//! Retrying calls that fail transiently, with exponential backoff.

use std::time::Duration;

/// Attempts of a call that fails transiently.
pub const ATTEMPTS: u32 = 4;
/// The first retry's wait; each further retry waits twice as long.
pub const BACKOFF: Duration = Duration::from_millis(500);

/// The trailer by which a gRPC server says whether and when to retry (gRPC's retry design,
/// A6); a negative or unparsable value means "do not retry".
pub const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

/// Whether a gRPC failure may pass on retry: a busy or unreachable server, unless the server
/// said not to retry (OsteoServe does for a request over a configured size limit).
pub fn transient_status(s: &tonic::Status) -> bool {
    use tonic::Code;
    let told_not_to = s.metadata().get(RETRY_PUSHBACK).is_some_and(|v| {
        v.to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .is_none_or(|ms| ms < 0)
    });
    !told_not_to
        && matches!(
            s.code(),
            Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded | Code::Aborted
        )
}

/// Runs `call` up to [`ATTEMPTS`] times while it fails transiently, backing off between tries.
pub async fn retry<T, E, F, Fut>(transient: impl Fn(&E) -> bool, mut call: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut wait = BACKOFF;
    for _ in 1..ATTEMPTS {
        match call().await {
            Err(e) if transient(&e) => {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            other => return other,
        }
    }
    call().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_and_others_are_not() {
        let calls = AtomicU32::new(0);
        let r: Result<(), tonic::Status> = retry(transient_status, || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(tonic::Status::unavailable("down")) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), ATTEMPTS);
        let calls = AtomicU32::new(0);
        let r: Result<(), tonic::Status> = retry(transient_status, || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(tonic::Status::invalid_argument("bad")) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_server_that_says_do_not_retry_is_not_retried() {
        let mut over = tonic::Status::resource_exhausted("over store.max_upload_bytes");
        over.metadata_mut().insert(
            RETRY_PUSHBACK,
            tonic::metadata::MetadataValue::from_static("-1"),
        );
        assert!(!transient_status(&over));
        let mut garbled = tonic::Status::unavailable("down");
        garbled.metadata_mut().insert(
            RETRY_PUSHBACK,
            tonic::metadata::MetadataValue::from_static("soon"),
        );
        assert!(!transient_status(&garbled));
        let mut later = tonic::Status::unavailable("draining");
        later.metadata_mut().insert(
            RETRY_PUSHBACK,
            tonic::metadata::MetadataValue::from_static("250"),
        );
        assert!(transient_status(&later));
        assert!(transient_status(&tonic::Status::resource_exhausted("busy")));
    }
}
