//! Retrying calls that fail transiently, with exponential backoff.

use std::time::Duration;

/// Attempts of a call that fails transiently.
pub const ATTEMPTS: u32 = 4;
/// The first retry's wait; each further retry waits twice as long.
pub const BACKOFF: Duration = Duration::from_millis(500);

/// Whether a gRPC failure may pass on retry.
pub fn transient_status(s: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
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
}
