//! Retrying calls that fail transiently: bounded attempts, exponential back-off with full
//! jitter (so clients that failed together do not retry together), and a total deadline after
//! which the last failure is returned as it was.

use std::time::{Duration, Instant};

/// Most attempts of a call that fails transiently.
pub const ATTEMPTS: u32 = 6;
/// The first retry waits up to this long; each further retry up to twice as long as the one
/// before, at most [`MAX_BACKOFF`].
pub const BACKOFF: Duration = Duration::from_millis(250);
/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// No retry starts later than this after the first attempt.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The trailer by which a gRPC server says whether and when to retry (gRPC's retry design,
/// A6); a negative or unparsable value means "do not retry".
pub const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

/// Whether a gRPC failure may pass on retry: a busy, draining or unreachable server (tonic
/// reports a refused or dropped connection as UNAVAILABLE), or a balancer in front of one that
/// answered HTTP 502, 503 or 504 (which gRPC maps to UNAVAILABLE, while tonic, reading the
/// balancer's HTML page as gRPC, reports INTERNAL), unless the server said not to retry
/// (OsteoServe does for a request over a configured size limit).
pub fn transient_status(s: &tonic::Status) -> bool {
    use tonic::Code;
    let gateway = matches!(s.code(), Code::Internal | Code::Unknown)
        && ["status: 502", "status: 503", "status: 504"]
            .iter()
            .any(|m| s.message().contains(m));
    if gateway {
        return true;
    }
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

/// The wait before retry number `retry` (1 = the first retry): uniform in zero to
/// `BACKOFF * 2^(retry-1)`, at most [`MAX_BACKOFF`].
pub fn backoff(retry: u32) -> Duration {
    let ceiling = BACKOFF
        .saturating_mul(1 << retry.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    ceiling.mul_f64(rand::random::<f64>())
}

/// Runs `call` while it fails transiently, at most [`ATTEMPTS`] times and not starting a retry
/// after [`DEADLINE`], waiting [`backoff`] between attempts; the last failure is returned
/// unchanged.
pub async fn retry<T, E, F, Fut>(transient: impl Fn(&E) -> bool, mut call: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e) if transient(&e) && attempt < ATTEMPTS => {
                let wait = backoff(attempt);
                if start.elapsed() + wait > DEADLINE {
                    return Err(e);
                }
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn a_balancers_bad_gateway_is_transient_and_a_servers_internal_error_is_not() {
        let gateway = tonic::Status::internal(
            "protocol error: received message with invalid compression flag: 60 (valid flags \
             are 0 and 1) while receiving response with status: 502 Bad Gateway",
        );
        assert!(transient_status(&gateway));
        assert!(!transient_status(&tonic::Status::internal(
            "a backend failed on the batch"
        )));
        assert!(transient_status(&tonic::Status::unavailable("draining")));
    }

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
    fn waits_are_jittered_and_bounded() {
        let waits: Vec<Duration> = (0..200).map(|_| backoff(1)).collect();
        assert!(waits.iter().all(|w| *w <= BACKOFF));
        assert!(waits.iter().any(|w| *w != waits[0]), "jittered");
        assert!((0..200).all(|_| backoff(30) <= MAX_BACKOFF));
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
