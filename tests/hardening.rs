//! Hostile and careless clients against an in-process server (issue: Hardening): budgets before
//! work, bounded requests, connection limits, client text, model integrity and supervised
//! workers. Assertions are on status codes, memory read from /proc and metric sizes, never on
//! wall-clock thresholds.

mod common;

use common::inproc::{InProc, registry};
use common::*;
use osteo_proto::v1 as pb;
use std::time::Duration;
use tonic::Code;

const TABULAR: &[(&str, &str)] = &[("osteo-tabular-v1", "backends = [\"candle\"]")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_an_in_flight_request_finish() {
    let server = InProc::start(
        "[server]\nshutdown_grace_s = 60\n",
        &[("osteo-fused-v1", "backends = [\"candle\"]")],
        registry(),
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let files = read_all(&study(dir.path()));
    let mut client = server.client().await;
    let req = pb::ExplainRequest {
        study: inline(&files),
        clinical: Some(clinical()),
        ..Default::default()
    };
    let in_flight = tokio::spawn(async move { client.explain(req).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.stop().await.expect("clean stop");
    let answer = in_flight.await.expect("task");
    assert!(answer.is_ok(), "the in-flight request finished: {answer:?}");
    let _ = TABULAR;
    let _ = Code::Ok;
}
