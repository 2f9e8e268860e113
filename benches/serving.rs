//! Criterion benchmarks of the serving path: DICOM ingest, view building, predict at batch 1 and
//! 32 and Grad-CAM on every backend (candle, ONNX Runtime) in the same run, and the Classify
//! round trip per backend through an in-process server over loopback, and one study graded in
//! one GradeStudy call against UploadStudy + Classify + DeleteStudy.
//! Run with `cargo bench --bench serving` (reports in target/criterion).

use criterion::{Criterion, criterion_group, criterion_main};
use osteo_backend_candle::CandleBackend;
use osteo_backend_ort::OrtBackend;
use osteo_core::{Backend, Batch, ClinicalVariables, Device, LoadBackend, ModelArtifacts, Sample};
use osteo_dicom::{DicomSource, IngestOptions};
use osteo_phantom::{PhantomSpec, SeriesIdentity, TScoreModel, phantom_volume, write_series};
use osteo_proto::v1 as pb;
use osteo_proto::v1::osteo_service_client::OsteoServiceClient;
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

/// A phantom patient's CT series (files as bytes) and clinical variables.
fn fixture() -> (Vec<Vec<u8>>, ClinicalVariables) {
    let patient = TScoreModel::default().patient(77, 1);
    let (_, volume) = phantom_volume(&patient, &PhantomSpec::default());
    let dir = std::env::temp_dir().join(format!("osteo-bench-{}", std::process::id()));
    let paths =
        write_series(&volume, &SeriesIdentity::for_patient(&patient), &dir).expect("write series");
    let files = paths
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    let clinical = ClinicalVariables::validate(patient.clinical_input()).expect("clinical");
    (files, clinical)
}

fn fused() -> ModelArtifacts {
    ModelArtifacts::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/osteo-fused-v1"))
        .expect("shipped fused model")
}

fn benches(c: &mut Criterion) {
    let (files, clinical) = fixture();
    let artifacts = fused();
    let m = &artifacts.manifest;
    let spec = m.view.expect("view");

    c.bench_function("ingest phantom series", |b| {
        b.iter(|| {
            osteo_dicom::ingest(
                DicomSource::Buffers(black_box(files.clone())),
                &IngestOptions::default(),
            )
            .expect("ingest")
        })
    });
    let volume = osteo_dicom::ingest(
        DicomSource::Buffers(files.clone()),
        &IngestOptions::default(),
    )
    .expect("ingest")
    .volume;
    c.bench_function("coronal_slab view", |b| {
        b.iter(|| osteo_dicom::coronal_slab(black_box(&volume), &spec).expect("view"))
    });

    let view = osteo_dicom::coronal_slab(&volume, &spec).expect("view");
    let features = m
        .tabular
        .as_ref()
        .expect("tabular")
        .encode(&clinical, &osteo_core::features::Measured::NONE)
        .expect("encode");
    let one = Sample {
        image: Some(view.data.clone()),
        tabular: Some(features),
    };
    let batch = |n: usize| Batch::stack(&m.arch, &vec![&one; n]).expect("batch");
    let engines: Vec<(&str, Box<dyn Backend>)> = vec![
        (
            "candle",
            Box::new(CandleBackend::load(&artifacts, Device::Cpu).expect("candle")),
        ),
        (
            "ort",
            Box::new(OrtBackend::load(&artifacts, Device::Cpu).expect("ort")),
        ),
    ];
    for (name, mut backend) in engines {
        for n in [1, 32] {
            let input = batch(n);
            c.bench_function(&format!("{name} fused predict batch {n}"), |b| {
                b.iter(|| backend.predict(black_box(&input)).expect("predict"))
            });
        }
        let one = batch(1);
        c.bench_function(&format!("{name} fused explain"), |b| {
            b.iter(|| backend.explain(black_box(&one)).expect("explain"))
        });
    }

    // The Classify round trip through a real server in this process.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut settings = osteo_server::Settings::default();
    settings.server.listen = format!("127.0.0.1:{port}");
    settings.server.metrics_listen = String::new();
    settings.server.http_listen = String::new();
    settings
        .models
        .retain(|m| m.path.ends_with("osteo-fused-v1"));
    settings.models[0].path = artifacts.dir.clone();
    let registry = osteo_backends::registry(&settings.backends);
    runtime.spawn(osteo_server::serve(
        settings,
        registry,
        std::future::pending(),
    ));
    let url = format!("http://127.0.0.1:{port}");
    let (client, request) = runtime.block_on(async {
        let mut client = loop {
            if let Ok(c) = OsteoServiceClient::connect(url.clone()).await {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let messages = osteo_client::upload::messages(&files, osteo_client::upload::CHUNK);
        let handle = loop {
            match client
                .upload_study(tokio_stream::iter(messages.clone()))
                .await
            {
                Ok(r) => break r.into_inner().summary.expect("summary").study,
                // UNAVAILABLE while the model loads.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let request = pb::ClassifyRequest {
            study: Some(pb::StudyRef {
                source: Some(pb::study_ref::Source::Study(handle)),
            }),
            clinical: Some(pb::ClinicalVariables {
                age_years: clinical.age_years(),
                sex: pb::Sex::Female as i32,
                height_cm: clinical.height_cm(),
                weight_kg: clinical.weight_kg(),
                ..Default::default()
            }),
            model: String::new(),
            backend: String::new(),
            clinical_from_dicom: false,
            dicom_outputs: false,
            fhir_outputs: false,
            model_version: String::new(),
        };
        (client, request)
    });
    // One study, one client: GradeStudy (one call) against UploadStudy + Classify by handle +
    // DeleteStudy (three calls), both on ort.
    let shared = std::sync::Arc::new(
        files
            .iter()
            .cloned()
            .map(bytes::Bytes::from)
            .collect::<Vec<_>>(),
    );
    let action = pb::GradeAction {
        action: Some(pb::grade_action::Action::Classify(pb::ClassifyRequest {
            study: None,
            backend: "ort".into(),
            ..request.clone()
        })),
    };
    c.bench_function("study graded in one GradeStudy call (ort, loopback)", |b| {
        b.to_async(&runtime).iter(|| {
            let mut client = client.clone();
            let stream = osteo_client::upload::grade_stream(
                action.clone(),
                shared.clone(),
                osteo_client::upload::CHUNK,
            );
            async move { client.grade_study(stream).await.expect("GradeStudy") }
        })
    });
    c.bench_function("study uploaded, classified, deleted (ort, loopback)", |b| {
        b.to_async(&runtime).iter(|| {
            let mut client = client.clone();
            let messages =
                osteo_client::upload::stream(shared.clone(), osteo_client::upload::CHUNK);
            let request = request.clone();
            async move {
                let handle = client
                    .upload_study(messages)
                    .await
                    .expect("upload")
                    .into_inner()
                    .summary
                    .expect("summary")
                    .study;
                client
                    .classify(pb::ClassifyRequest {
                        study: Some(pb::StudyRef {
                            source: Some(pb::study_ref::Source::Study(handle.clone())),
                        }),
                        backend: "ort".into(),
                        ..request
                    })
                    .await
                    .expect("classify");
                client
                    .delete_study(pb::DeleteStudyRequest { study: handle })
                    .await
                    .expect("delete")
            }
        })
    });
    for backend in ["candle", "ort"] {
        let request = pb::ClassifyRequest {
            backend: backend.into(),
            ..request.clone()
        };
        c.bench_function(
            &format!("Classify round trip on {backend} (batch 1, loopback)"),
            |b| {
                b.to_async(&runtime).iter(|| {
                    let mut client = client.clone();
                    let request = request.clone();
                    async move { client.classify(request).await.expect("classify") }
                })
            },
        );
    }
}

criterion_group! {
    name = serving;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(4));
    targets = benches
}
criterion_main!(serving);
