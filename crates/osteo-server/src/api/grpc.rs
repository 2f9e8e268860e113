//! What the gRPC front doors share: a call made from a tonic request (the principal the
//! authentication layer attached, the peer, the client's deadline within the server's), run
//! by the engine and answered as a tonic response or status.

use crate::engine::{Call, Engine, Op, Rpc};
use crate::principal::Principal;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// The time a request may take: the client's deadline (`grpc-timeout`) less a margin of 10% (at
/// least 2 ms), so the server answers DEADLINE_EXCEEDED itself before tonic's own timer cancels
/// the call; capped by the server's request timeout.
fn budget<T>(req: &Request<T>, server_default: Duration) -> Duration {
    let client = req
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
            let n: u64 = digits.parse().ok()?;
            Some(match unit {
                "H" => Duration::from_secs(n * 3600),
                "M" => Duration::from_secs(n * 60),
                "S" => Duration::from_secs(n),
                "m" => Duration::from_millis(n),
                "u" => Duration::from_micros(n),
                "n" => Duration::from_nanos(n),
                _ => return None,
            })
        });
    client.map_or(server_default, |c| {
        c.saturating_sub((c / 10).max(Duration::from_millis(2)))
            .min(server_default)
    })
}

/// The call of a gRPC request to `rpc`.
pub(crate) fn call_of<R>(engine: &Engine, rpc: Rpc, request: &Request<R>) -> Call {
    Call::new(
        rpc,
        request.extensions().get::<Principal>().cloned(),
        request.remote_addr(),
        budget(request, engine.request_timeout()),
    )
    .with_affinity(
        request
            .metadata()
            .get(crate::engine::AFFINITY_KEY)
            .and_then(|v| v.to_str().ok()),
    )
}

/// Runs a gRPC request to `rpc` through the engine: `op` gets the request's message.
pub(crate) async fn serve<R, T, F>(
    engine: &Engine,
    rpc: Rpc,
    request: Request<R>,
    op: F,
) -> Result<Response<T>, Status>
where
    R: Send + 'static,
    F: for<'c> FnOnce(&'c Engine, &'c mut Call, R) -> Op<'c, T>,
{
    let call = call_of(engine, rpc, &request);
    let message = request.into_inner();
    engine
        .run(call, move |e, c| op(e, c, message))
        .await
        .map(Response::new)
        .map_err(Status::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_timeout(v: &str) -> Request<()> {
        let mut r = Request::new(());
        r.metadata_mut()
            .insert("grpc-timeout", v.parse().expect("ascii"));
        r
    }

    #[test]
    fn the_client_deadline_less_a_margin_is_the_budget_within_the_servers() {
        let server = Duration::from_secs(30);
        assert_eq!(budget(&Request::new(()), server), server);
        assert_eq!(budget(&with_timeout("10S"), server), Duration::from_secs(9));
        assert_eq!(budget(&with_timeout("1H"), server), server);
        assert_eq!(
            budget(&with_timeout("10m"), server),
            Duration::from_millis(8)
        );
        assert_eq!(budget(&with_timeout("bogus"), server), server);
    }
}
