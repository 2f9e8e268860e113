//! A model that reads the attenuation measured on its CT (`osteo-fused-v3`): the server measures
//! the uploaded study and feeds the measurement to the model, so its answer equals the
//! pipeline's on the same files (what `osteo predict` and the trainer compute), on ONNX Runtime
//! and candle alike; Open Inference Protocol clients see the extra features in the model's
//! metadata and send them as tensors.

use crate::common;
use crate::common::inproc::{InProc, registry};
use osteo_backend_candle::CandleBackend;
use osteo_core::{Backend, Batch, Device, LoadBackend, ModelArtifacts};
use osteo_proto::inference as v2;
use osteo_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use osteo_proto::v1 as pb;
use std::path::Path;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_feeds_the_studys_measured_attenuation_to_a_model_that_reads_it() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/osteo-fused-v3");
    let artifacts = ModelArtifacts::open(&dir).expect("model.toml");
    let m = &artifacts.manifest;
    assert!(m.reads_measured(), "osteo-fused-v3 reads the attenuation");

    // What the pipeline computes on the study's DICOM files.
    let tmp = tempfile::tempdir().expect("tempdir");
    let paths = common::study(&tmp.path().join("study"));
    let ingested = osteo_dicom::ingest(
        osteo_dicom::DicomSource::Path(tmp.path().join("study")),
        &osteo_dicom::IngestOptions::default(),
    )
    .expect("ingest");
    let spec = m.view.expect("view");
    let view = osteo_dicom::coronal_slab(&ingested.volume, &spec).expect("view");
    let attenuation = osteo_pipeline::attenuation(&ingested.volume).expect("measured");
    let measured = osteo_pipeline::measured(Some(&attenuation));
    assert!(measured.lumbar_hu.is_some() && measured.femoral_neck_hu.is_some());
    let clinical = osteo_server::convert::clinical(&common::clinical()).expect("clinical");
    let sample =
        osteo_pipeline::input(m, Some(&view), Some(&clinical), Some(&attenuation)).expect("input");
    let blind = osteo_pipeline::input(m, Some(&view), Some(&clinical), None).expect("input");
    let mut candle = CandleBackend::load(&artifacts, Device::Cpu).expect("candle");
    let logits = |s: osteo_core::Sample, b: &mut CandleBackend| {
        b.predict(&Batch::stack(&m.arch, &[s]).expect("batch"))
            .expect("predict")
            .data()
            .to_vec()
    };
    let expected = logits(sample, &mut candle);
    let without = logits(blind, &mut candle);
    assert!(
        expected
            .iter()
            .zip(&without)
            .any(|(a, b)| (a - b).abs() > 1e-3),
        "the measurement moves the logits: {expected:?} vs {without:?}"
    );

    // The server, on both backends.
    let server = InProc::start(
        "",
        &[("osteo-fused-v3", "backends = [\"ort\", \"candle\"]")],
        registry(),
    )
    .await;
    let mut c = server.client().await;
    let handle = common::upload(&mut c, &common::read_all(&paths), 1 << 20).await;
    for backend in ["ort", "candle"] {
        let r = c
            .classify(pb::ClassifyRequest {
                study: common::by_handle(&handle),
                clinical: Some(common::clinical()),
                model: "osteo-fused-v3".into(),
                backend: backend.into(),
                ..Default::default()
            })
            .await
            .expect("classify")
            .into_inner();
        for (got, want) in r.logits.iter().zip(&expected) {
            assert!(
                (got - want).abs() < 1e-3,
                "{backend}: {:?} vs {expected:?}",
                r.logits
            );
        }
        assert!(r.decision.is_some(), "v3 carries an operating point");
        let a = r.attenuation.expect("attenuation");
        assert_eq!(a.vertebrae.len(), attenuation.vertebrae.len());
    }

    // OIP metadata: the tabular input is as wide as the feature list with the measured ones.
    let mut oip = GrpcInferenceServiceClient::connect(server.url.clone())
        .await
        .expect("connect");
    let meta = oip
        .model_metadata(v2::ModelMetadataRequest {
            name: "osteo-fused-v3".into(),
            version: String::new(),
        })
        .await
        .expect("metadata")
        .into_inner();
    let tabular = meta
        .inputs
        .iter()
        .find(|t| t.name == "tabular")
        .expect("tabular input");
    let features = m.tabular.as_ref().expect("features").features.len();
    assert_eq!(features, 17);
    assert_eq!(tabular.shape, vec![-1, features as i64]);
}
