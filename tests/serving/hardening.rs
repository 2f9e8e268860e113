//! Hostile and careless clients against an in-process server (issue: Hardening): budgets before
//! work, bounded requests, connection limits, client text, model integrity and supervised
//! workers. Assertions are on status codes, memory read from /proc and metric contents, never
//! on wall-clock thresholds.

use crate::common;
use crate::common::inproc::{InProc, registry};
use crate::common::*;
use osteo_backend_candle::CandleBackend;
use osteo_core::{
    Backend, BackendError, BackendInfo, Batch, Device, Explanation, LoadBackend, ModelArtifacts,
    Tensor,
};
use osteo_proto::v1 as pb;
use osteo_server::Registry;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

const TABULAR: &[(&str, &str)] = &[("osteo-tabular-v1", "backends = [\"candle\"]")];

const MIB: u64 = 1 << 20;

fn tabular_request(model: &str, backend: &str) -> pb::ClassifyRequest {
    pb::ClassifyRequest {
        clinical: Some(clinical()),
        model: model.into(),
        backend: backend.into(),
        ..Default::default()
    }
}

/// Reads (and drops) what the server sends — its SETTINGS, say — until it closes the connection.
async fn read_until_closed(s: &mut tokio::net::TcpStream) {
    let mut buf = [0u8; 1024];
    while let Ok(1..) = s.read(&mut buf).await {}
}

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    match r {
        Ok(_) => (Code::Ok, String::new()),
        Err(s) => (s.code(), s.message().to_string()),
    }
}

/// The memory tests measure a real `osteo serve` process (`/proc/PID/status`), so the client's
/// own buffers do not count.
fn tabular_server() -> Server {
    Server::start_with(
        "",
        &[
            ("osteo-fused-v1", "backends = [\"candle\"]"),
            ("osteo-tabular-v1", "backends = [\"candle\"]"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decompression_bomb_is_refused_before_decoding() {
    let server = tabular_server();
    let mut client = server.client().await;
    // 2,048 RLE slices of 512 x 512 zeros: 18 MB on the wire, 2 GiB of decoded HU.
    let bomb = rle_zero_series(2048, 512);
    let wire: usize = bomb.iter().map(Vec::len).sum();
    assert!(wire < 20 << 20, "{wire} bytes");
    let messages = upload_messages(&bomb, 1 << 20);
    drop(bomb);
    let before = server.memory("VmRSS");
    let (c, msg) = code(client.upload_study(tokio_stream::iter(messages)).await);
    assert_eq!(c, Code::ResourceExhausted, "{msg}");
    assert!(msg.contains("store.max_study_bytes"), "{msg}");
    let rise = server.memory("VmHWM").saturating_sub(before);
    eprintln!(
        "bomb: {wire} bytes on the wire, server peak RSS {} MiB above its RSS before",
        rise / MIB
    );
    assert!(rise < 256 * MIB, "RSS rose by {} MiB", rise / MIB);
    // The store is untouched: a normal study uploads afterwards.
    let dir = tempfile::tempdir().expect("tempdir");
    let files = read_all(&study(dir.path()));
    let handle = upload(&mut client, &files, 64 << 10).await;
    assert!(handle.starts_with("st_"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_are_bounded_by_the_in_flight_budget() {
    let server = tabular_server();
    const UPLOAD: u64 = 256 * MIB;
    const CHUNK: usize = 4 << 20;
    const STREAMS: u64 = 8;
    // Beyond the budget, each stream holds transport buffers the budget does not see: tonic's
    // buffer for the message being received and its decoded copy (about 8 MiB).
    const PER_STREAM: u64 = 16 * MIB;
    let before = server.memory("VmRSS");
    let mut tasks = Vec::new();
    for _ in 0..STREAMS {
        let mut client = server.client().await;
        tasks.push(tokio::spawn(async move {
            // No declared size: the server learns the size only as chunks arrive.
            let header = pb::UploadStudyRequest {
                part: Some(pb::upload_study_request::Part::Header(
                    pb::UploadHeader::default(),
                )),
            };
            let chunks = (0..UPLOAD as usize / CHUNK).map(|k| pb::UploadStudyRequest {
                part: Some(pb::upload_study_request::Part::Chunk(pb::FileChunk {
                    file_index: 0,
                    data: vec![7u8; CHUNK],
                    last: (k + 1) * CHUNK == UPLOAD as usize,
                })),
            });
            let stream = tokio_stream::iter(std::iter::once(header).chain(chunks));
            code(client.upload_study(stream).await)
        }));
    }
    let mut refused = 0;
    for t in tasks {
        let (c, msg) = t.await.expect("task");
        match c {
            Code::ResourceExhausted => {
                assert!(msg.contains("store.max_inflight_upload_bytes"), "{msg}");
                refused += 1;
            }
            // The uploads that fit are buffered, then refused as not DICOM.
            Code::InvalidArgument => {}
            other => panic!("unexpected {other:?}: {msg}"),
        }
    }
    let rise = server.memory("VmHWM").saturating_sub(before);
    eprintln!(
        "8 x 256 MiB uploads: {refused} refused, server peak RSS {} MiB above its RSS before",
        rise / MIB
    );
    assert!(
        refused >= 6,
        "at most two 256 MiB uploads fit in 512 MiB: {refused} refused"
    );
    assert!(
        rise < 512 * MIB + STREAMS * PER_STREAM,
        "RSS rose by {} MiB, the budget is 512 MiB",
        rise / MIB
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_beyond_the_concurrency_limit_are_refused_at_once() {
    let server = InProc::start("[store]\nmax_concurrent_uploads = 1\n", TABULAR, registry()).await;
    // The first stream sends its header and stays open, holding the only slot; a second upload
    // is then refused. A probe can reach the server before the first stream does and take the
    // slot for a moment, which refuses the first stream instead: it is then opened again.
    type Open =
        tokio::task::JoinHandle<Result<tonic::Response<pb::UploadStudyResponse>, tonic::Status>>;
    let mut first: Option<(tokio::sync::mpsc::Sender<pb::UploadStudyRequest>, Open)> = None;
    let mut second = server.client().await;
    let mut refused = None;
    for _ in 0..3000 {
        if first.as_ref().is_none_or(|(_, open)| open.is_finished()) {
            let (tx, rx) = tokio::sync::mpsc::channel::<pb::UploadStudyRequest>(4);
            tx.send(pb::UploadStudyRequest {
                part: Some(pb::upload_study_request::Part::Header(
                    pb::UploadHeader::default(),
                )),
            })
            .await
            .expect("header");
            let mut client = server.client().await;
            let open = tokio::spawn(async move {
                client
                    .upload_study(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
            });
            first = Some((tx, open));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (c, msg) = code(
            second
                .upload_study(tokio_stream::iter(upload_messages(&[vec![1u8; 10]], 10)))
                .await,
        );
        if c == Code::ResourceExhausted {
            refused = Some(msg);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let msg = refused.expect("the second upload was refused while the first was open");
    assert!(msg.contains("store.max_concurrent_uploads"), "{msg}");
    let (tx, open) = first.expect("first stream");
    drop(tx);
    let (c, _) = code(open.await.expect("task"));
    assert_eq!(
        c,
        Code::InvalidArgument,
        "the first upload ended without files"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_fields_are_checked_before_any_work_and_labels_stay_bounded() {
    // A private copy of the tabular model under its own name, so this test's series can be
    // told apart from other tests' in the process-wide metrics.
    let models = tempfile::tempdir().expect("tempdir");
    let dir = models.path().join("probe");
    copy_model("osteo-tabular-v1", &dir);
    let toml = std::fs::read_to_string(dir.join("model.toml")).expect("toml");
    std::fs::write(
        dir.join("model.toml"),
        toml.replace("name = \"osteo-tabular-v1\"", "name = \"metrics-probe-v1\""),
    )
    .expect("write");
    let config = format!(
        "[server]\ndefault_model = \"metrics-probe-v1\"\n[[models]]\npath = \"{}\"\nbackends = [\"candle\", \"ort\"]\n",
        dir.display()
    );
    let server = InProc::start(&config, &[], registry()).await;
    let mut client = server.client().await;

    let compare = |backends: Vec<String>| pb::CompareBackendsRequest {
        clinical: Some(clinical()),
        backends,
        ..Default::default()
    };
    let (c, msg) = code(
        client
            .compare_backends(compare(vec!["candle".into(); 100_000]))
            .await,
    );
    assert_eq!(c, Code::InvalidArgument, "{msg}");
    assert!(msg.contains("at most once"), "{msg}");
    let (c, msg) = code(
        client
            .compare_backends(compare(vec!["ort".into(), "ort".into()]))
            .await,
    );
    assert_eq!(c, Code::InvalidArgument, "{msg}");
    let (c, msg) = code(
        client
            .compare_backends(compare(vec!["bogus\nline".into()]))
            .await,
    );
    assert_eq!(c, Code::NotFound, "{msg}");
    assert!(!msg.contains('\n'), "escaped: {msg:?}");
    let (c, msg) = code(
        client
            .compare_backends(compare(vec!["ort".into(), "candle".into()]))
            .await,
    );
    assert_eq!(c, Code::Ok, "{msg}");

    // One request naming an unknown model creates the `unknown` series; twenty more with
    // distinct names change no series and add no label value.
    let _ = client.classify(tabular_request("warm-up-bogus", "")).await;
    let _ = client.classify(tabular_request("", "warm-up-bogus")).await;
    let ours = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.contains("metrics-probe-v1") || l.contains("\"unknown\""))
            .map(|l| {
                l.rsplit_once(' ')
                    .map_or(l, |(series, _)| series)
                    .to_string()
            })
            .collect()
    };
    let before = server.scrape().await;
    for i in 0..20 {
        let name = format!("bogus-model-{i}-{}", "x".repeat(i * 50));
        let (c, _) = code(client.classify(tabular_request(&name, "")).await);
        assert_eq!(c, Code::NotFound);
        let (c, _) = code(
            client
                .classify(tabular_request("", &format!("bogus-backend-{i}")))
                .await,
        );
        assert_eq!(c, Code::NotFound);
    }
    let after = server.scrape().await;
    assert!(
        !after.contains("bogus"),
        "a client-chosen name became a label"
    );
    let (mut b, mut a) = (ours(&before), ours(&after));
    b.sort();
    a.sort();
    assert_eq!(b, a, "no new series");
}

/// A codec that sends raw bytes as the request message.
#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_is_invalid_argument() {
    let server = InProc::start("", TABULAR, registry()).await;
    let channel = tonic::transport::Channel::from_shared(server.url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    // Field 1 (study, a string) with a length running past the end of the message.
    for bytes in [vec![0x0a, 0xff, 0x01, b'x'], vec![0xff; 16]] {
        grpc.ready().await.expect("ready");
        let path = http::uri::PathAndQuery::from_static("/osteo.v1.OsteoService/GetStudy");
        let r = grpc.unary(tonic::Request::new(bytes), path, RawCodec).await;
        let status = r.expect_err("malformed");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("GetStudyRequest"), "{status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_and_the_metrics_port_answers_only_metrics() {
    let server = InProc::start("[server]\nhandshake_timeout_s = 2\n", TABULAR, registry()).await;
    let mut silent = Vec::new();
    for i in 0..50 {
        let mut s = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        if i % 2 == 1 {
            // Only the HTTP/2 preface, no SETTINGS.
            s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                .await
                .expect("preface");
        }
        silent.push(s);
    }
    // A well-behaved client is served meanwhile.
    let mut client = server.client().await;
    let (c, msg) = code(client.classify(tabular_request("", "")).await);
    assert_eq!(c, Code::Ok, "{msg}");
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        for mut s in silent {
            read_until_closed(&mut s).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "silent connections still open after 15 s");

    let ok = server.http("GET /metrics HTTP/1.1").await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("osteo_requests_total"));
    for line in [
        "GET / HTTP/1.1",
        "GET /metrics/x HTTP/1.1",
        "POST /metrics HTTP/1.1",
        "GET /admin HTTP/1.1",
    ] {
        let r = server.http(line).await;
        assert!(r.starts_with("HTTP/1.1 404"), "{line}: {r}");
        assert!(!r.contains("osteo_"), "{line}: metrics leaked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_silent_and_idle_connections_returns_at_once() {
    let server = InProc::start("[server]\nshutdown_grace_s = 600\n", TABULAR, registry()).await;
    let _silent = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let mut idle = server.client().await;
    let (c, _) = code(idle.classify(tabular_request("", "")).await);
    assert_eq!(c, Code::Ok);
    let stopped = tokio::time::timeout(Duration::from_secs(60), server.stop()).await;
    let result = stopped.expect("serve_on waited for idle connections instead of closing them");
    result.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_weights_are_refused_at_start_up() {
    let models = tempfile::tempdir().expect("tempdir");
    let dir = models.path().join("tampered");
    copy_model("osteo-tabular-v1", &dir);
    let mut weights = std::fs::read(dir.join("weights.safetensors")).expect("weights");
    let last = weights.len() - 1;
    weights[last] ^= 0x01; // one bit of one float
    std::fs::write(dir.join("weights.safetensors"), weights).expect("write");
    for backend in ["candle", "ort"] {
        let config = format!(
            "[server]\ndefault_model = \"osteo-tabular-v1\"\n[[models]]\npath = \"{}\"\nbackends = [\"{backend}\"]\n",
            dir.display()
        );
        let s = common::inproc::settings(&config, &[]);
        let err = InProc::spawn(s, registry())
            .await
            .exit()
            .await
            .expect_err("tampered weights must not be served");
        let msg = err.to_string();
        assert!(
            msg.contains("weights_blake3") && msg.contains("changed or corrupted"),
            "{backend}: {msg}"
        );
    }
}

/// What the test controls of a [`Faulty`] backend.
#[derive(Default)]
struct Faults {
    /// Batches still to panic on.
    panics: AtomicUsize,
    /// Whether loading fails (for reloads).
    fail_loads: AtomicBool,
    /// While true, predict waits until it turns false; `entered` counts waiting calls.
    hold: Mutex<bool>,
    released: Condvar,
    entered: AtomicUsize,
}

/// The candle backend with faults injected by the test.
struct Faulty {
    inner: CandleBackend,
    faults: Arc<Faults>,
}

impl Backend for Faulty {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: "faulty".into(),
            ..self.inner.info()
        }
    }

    fn predict(&mut self, batch: &Batch) -> Result<Tensor, BackendError> {
        let f = &self.faults;
        if f.panics
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            panic!("injected fault");
        }
        f.entered.fetch_add(1, Ordering::SeqCst);
        let mut held = f.hold.lock().expect("hold");
        while *held {
            held = f.released.wait(held).expect("wait");
        }
        drop(held);
        self.inner.predict(batch)
    }

    fn explain(&mut self, sample: &Batch) -> Result<Explanation, BackendError> {
        self.inner.explain(sample)
    }
}

fn faulty_registry(faults: &Arc<Faults>) -> Registry {
    let mut r = registry();
    let f = faults.clone();
    r.register_loader(
        "faulty",
        Arc::new(move |artifacts: &ModelArtifacts, device: Device| {
            if f.fail_loads.load(Ordering::SeqCst) {
                return Err(BackendError::Load("injected load failure".into()));
            }
            Ok(Box::new(Faulty {
                inner: CandleBackend::load(artifacts, device)?,
                faults: f.clone(),
            }) as Box<dyn Backend>)
        }),
    );
    r
}

/// A server whose tabular model is served by the [`Faulty`] backend alone.
async fn faulty_server(faults: &Arc<Faults>, config: &str) -> InProc {
    let models = &[("osteo-tabular-v1", "backends = [\"faulty\"]")];
    InProc::start(config, models, faulty_registry(faults)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_backend_fails_one_batch_and_health_follows_a_worker_that_stops() {
    let faults = Arc::new(Faults::default());
    let server = faulty_server(&faults, "").await;
    let mut client = server.client().await;
    let classify = || tabular_request("", "");

    faults.panics.store(1, Ordering::SeqCst);
    let (c, msg) = code(client.classify(classify()).await);
    assert_eq!(c, Code::Internal, "{msg}");
    assert!(msg.contains("panicked"), "{msg}");
    let (c, msg) = code(client.classify(classify()).await);
    assert_eq!(c, Code::Ok, "the worker went on: {msg}");
    assert_eq!(
        server.health("osteo-tabular-v1").await,
        Some(ServingStatus::Serving)
    );

    // Three failed batches in a row: the worker reloads; the reload fails, so it is down.
    faults.fail_loads.store(true, Ordering::SeqCst);
    faults.panics.store(3, Ordering::SeqCst);
    for _ in 0..3 {
        let (c, msg) = code(client.classify(classify()).await);
        assert_eq!(c, Code::Internal, "{msg}");
    }
    server
        .wait_for_health("osteo-tabular-v1", ServingStatus::NotServing)
        .await;
    server
        .wait_for_health("osteo.v1.OsteoService", ServingStatus::NotServing)
        .await;
    let (c, msg) = code(client.classify(classify()).await);
    assert_eq!(c, Code::Unavailable, "{msg}");

    // The device comes back: the worker reloads and serves again.
    faults.fail_loads.store(false, Ordering::SeqCst);
    server
        .wait_for_health("osteo-tabular-v1", ServingStatus::Serving)
        .await;
    server.wait_for_health("", ServingStatus::Serving).await;
    let (c, msg) = code(client.classify(classify()).await);
    assert_eq!(c, Code::Ok, "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_admission_limit_are_refused_before_any_work() {
    let faults = Arc::new(Faults::default());
    let server = faulty_server(&faults, "[server]\nmax_concurrent_requests = 1\n").await;
    *faults.hold.lock().expect("hold") = true;
    let mut first = server.client().await;
    let held = tokio::spawn(async move { code(first.classify(tabular_request("", "")).await) });
    while faults.entered.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut second = server.client().await;
    // An inline study would cost ingest work: refused before any of it.
    let req = pb::ClassifyRequest {
        study: inline(&rle_zero_series(4, 64)),
        ..tabular_request("", "")
    };
    let (c, msg) = code(second.classify(req).await);
    assert_eq!(c, Code::ResourceExhausted, "{msg}");
    assert!(msg.contains("server.max_concurrent_requests"), "{msg}");
    *faults.hold.lock().expect("hold") = false;
    faults.released.notify_all();
    let (c, msg) = held.await.expect("task");
    assert_eq!(c, Code::Ok, "{msg}");
    let (c, msg) = code(second.classify(tabular_request("", "")).await);
    assert_eq!(c, Code::Ok, "the permit was returned: {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed_at_once() {
    let server = InProc::start(
        "[server]\nmax_connections = 3\nhandshake_timeout_s = 600\n",
        TABULAR,
        registry(),
    )
    .await;
    // Five connections that never speak: the server accepts as many as it has slots for (it
    // greets those with its SETTINGS) and closes the others at once, without any timeout.
    // (A slot may still be held for a moment by the health checks of the start-up.)
    let mut held = Vec::new();
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..5 {
        let mut s = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => refused += 1,
            Ok(Ok(_)) => accepted += 1,
            Err(_) => panic!("a connection was neither greeted nor closed"),
        }
        held.push(s);
    }
    assert!(
        accepted <= 3,
        "{accepted} connections accepted with 3 slots"
    );
    assert!(refused >= 2, "{refused} connections refused");
    let text = server.scrape().await;
    assert!(
        metric(
            &text,
            "osteo_connections_refused_total",
            &["listener=\"grpc\""]
        ) >= 1.0,
        "refusals are counted"
    );
    // Closing the silent ones frees their slots.
    drop(held);
    let mut client = None;
    for _ in 0..200 {
        if let Ok(mut c) =
            osteo_proto::v1::osteo_service_client::OsteoServiceClient::connect(server.url.clone())
                .await
            && c.classify(tabular_request("", "")).await.is_ok()
        {
            client = Some(());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        client.is_some(),
        "a client is served once the slots are free"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_requests_is_closed_after_the_idle_timeout() {
    let server = InProc::start(
        "[server]\nidle_timeout_s = 1\nhandshake_timeout_s = 600\nkeepalive_interval_s = 0\n",
        TABULAR,
        registry(),
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    // The HTTP/2 preface and an empty SETTINGS frame complete the handshake; then nothing.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("preface");
    let closed = tokio::time::timeout(Duration::from_secs(30), read_until_closed(&mut s)).await;
    assert!(closed.is_ok(), "an idle connection stayed open");
    let text = server.scrape().await;
    assert!(
        metric(
            &text,
            "osteo_connections_closed_total",
            &["listener=\"grpc\"", "reason=\"idle\""]
        ) >= 1.0,
        "closed for being idle"
    );
}

/// An upload header announcing `expected_bytes`, then one chunk of `sent` bytes of file #0,
/// its last when `last`.
fn upload_start(expected_bytes: u64, sent: usize, last: bool) -> Vec<pb::UploadStudyRequest> {
    vec![
        pb::UploadStudyRequest {
            part: Some(pb::upload_study_request::Part::Header(pb::UploadHeader {
                expected_files: 1,
                expected_bytes,
                series_instance_uid: String::new(),
            })),
        },
        pb::UploadStudyRequest {
            part: Some(pb::upload_study_request::Part::Chunk(pb::FileChunk {
                file_index: 0,
                data: vec![0x55; sent],
                last,
            })),
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_hold_only_what_they_sent_and_one_principal_keeps_to_its_share() {
    use crate::common::auth::{code_of, connect_as, new_token};
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens.toml");
    let alice = new_token(&tokens, "alice", "client");
    let bob = new_token(&tokens, "bob", "client");
    let config = format!(
        "[auth]\nmode = \"token\"\ntokens_file = \"{}\"\n[store]\nmax_upload_bytes = {}\n\
         max_inflight_upload_bytes = {}\nmax_inflight_upload_bytes_per_principal = {}\n",
        tokens.display(),
        2 * MIB,
        4 * MIB,
        2 * MIB
    );
    let server = InProc::start(&config, TABULAR, registry()).await;
    // alice opens two uploads that each announce the largest upload (together the whole
    // in-flight budget, which used to be reserved at once) and send 768 KiB, then stall.
    let stall = || {
        let (url, alice) = (server.url.clone(), alice.clone());
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            for m in upload_start(2 * MIB, 768 << 10, false) {
                tx.send(m).await.expect("send");
            }
            let mut c = connect_as(&url, None, Some(&alice)).await;
            let call = tokio::spawn(async move {
                code_of(
                    c.upload_study(tokio_stream::wrappers::ReceiverStream::new(rx))
                        .await,
                )
            });
            (tx, call)
        }
    };
    let mut stalled = vec![stall().await, stall().await];
    // A complete upload of 1 MiB that is not DICOM: refused as such when its bytes fit, or
    // RESOURCE_EXHAUSTED when they do not.
    let probe = |token: String| {
        let url = server.url.clone();
        async move {
            let mut c = connect_as(&url, None, Some(&token)).await;
            code_of(
                c.upload_study(tokio_stream::iter(upload_start(MIB, MIB as usize, true)))
                    .await,
            )
        }
    };
    // Once alice's stalled streams hold their 1.5 MiB, her third upload passes her share...
    let mut refused = None;
    for _ in 0..500 {
        // A probe still in flight when a stalled stream's bytes arrive takes the room they
        // needed, and that stream is refused instead: open it again.
        for s in stalled.iter_mut() {
            if s.1.is_finished() {
                *s = stall().await;
            }
        }
        let (code, msg) = probe(alice.clone()).await;
        if code == Code::ResourceExhausted {
            refused = Some(msg);
            break;
        }
        assert_eq!(code, Code::InvalidArgument, "{msg}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let msg = refused.expect("alice's share is enforced");
    assert!(
        msg.contains("store.max_inflight_upload_bytes_per_principal"),
        "{msg}"
    );
    assert!(
        stalled.iter().all(|s| !s.1.is_finished()),
        "both stalled uploads are held at once: each holds what it sent, not what it announced"
    );
    // ... while bob's upload is read and judged on its content: alice's announced sizes hold
    // nothing, and her share leaves room for others.
    let (code, msg) = probe(bob).await;
    assert_eq!(code, Code::InvalidArgument, "bob is not starved: {msg}");
    for (tx, call) in stalled {
        drop(tx);
        let (code, msg) = call.await.expect("join");
        assert_ne!(code, Code::Ok, "{msg}");
    }
}
