//! The Open Inference Protocol (KServe v2) on the server's gRPC port: health and metadata of every
//! model, ModelInfer with raw and typed contents through the same scheduler as osteo.v1 (results
//! equal to ONNX Runtime called directly and to Classify), and bad requests refused naming the
//! input.

use crate::common::auth::new_token;
use crate::common::inproc::{InProc, registry};
use crate::common::*;
use osteo_backend_ort::OrtBackend;
use osteo_core::{Backend, Batch, LoadBackend, ModelArtifacts, Sample};
use osteo_proto::inference as v2;
use osteo_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use std::path::Path;
use tonic::Code;
use tonic::transport::Channel;

const MODELS: &[(&str, &str)] = &[
    ("osteo-fused-v1", "backends = [\"candle\", \"ort\"]"),
    ("osteo-image-v1", "backends = [\"ort\"]"),
    ("osteo-tabular-v1", "backends = [\"candle\", \"ort\"]"),
];

async fn client(server: &InProc) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::connect(server.url.clone())
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

fn artifacts(name: &str) -> ModelArtifacts {
    ModelArtifacts::open(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join(name),
    )
    .expect("shipped model")
}

/// Deterministic model inputs for `n` rows of model `name`: view values in [0, 1) and the
/// encoded features of [`clinical`] with the age varied per row.
fn rows(name: &str, n: usize) -> Vec<Sample> {
    let m = artifacts(name).manifest;
    (0..n)
        .map(|r| Sample {
            image: m.arch.image.as_ref().map(|i| {
                (0..i.in_channels * i.height * i.width)
                    .map(|k| ((k * 7919 + r * 104_729) % 1000) as f32 / 1000.0)
                    .collect()
            }),
            tabular: m.tabular.as_ref().map(|spec| {
                let mut c = clinical();
                c.age_years = 55.0 + (r % 8) as f64 * 7.0;
                let v = osteo_server::convert::clinical(&c).expect("valid");
                spec.encode(&v, &osteo_core::features::Measured::NONE)
                    .expect("encode")
            }),
        })
        .collect()
}

/// A ModelInfer request for `samples`, raw or typed.
fn request(name: &str, samples: &[Sample], raw: bool) -> v2::ModelInferRequest {
    let m = artifacts(name).manifest;
    let n = samples.len() as i64;
    let mut req = v2::ModelInferRequest {
        model_name: name.into(),
        id: "req-42".into(),
        ..Default::default()
    };
    let mut add = |input: &str, dims: Vec<i64>, values: Vec<f32>| {
        let mut tensor = v2::model_infer_request::InferInputTensor {
            name: input.into(),
            datatype: "FP32".into(),
            shape: std::iter::once(n).chain(dims).collect(),
            ..Default::default()
        };
        if raw {
            req.raw_input_contents
                .push(values.iter().flat_map(|v| v.to_le_bytes()).collect());
        } else {
            tensor.contents = Some(v2::InferTensorContents {
                fp32_contents: values,
                ..Default::default()
            });
        }
        req.inputs.push(tensor);
    };
    if let Some(i) = &m.arch.image {
        add(
            "images",
            vec![i.in_channels as i64, i.height as i64, i.width as i64],
            samples
                .iter()
                .flat_map(|s| s.image.clone().unwrap_or_default())
                .collect(),
        );
    }
    if let Some(t) = &m.arch.tabular {
        add(
            "tabular",
            vec![t.in_features as i64],
            samples
                .iter()
                .flat_map(|s| s.tabular.clone().unwrap_or_default())
                .collect(),
        );
    }
    req
}

fn with_backend(mut req: v2::ModelInferRequest, backend: &str) -> v2::ModelInferRequest {
    req.parameters.insert(
        "backend".into(),
        v2::InferParameter {
            parameter_choice: Some(v2::infer_parameter::ParameterChoice::StringParam(
                backend.into(),
            )),
        },
    );
    req
}

/// The values of output `name` of a response (raw or typed).
fn output(r: &v2::ModelInferResponse, name: &str) -> (Vec<i64>, Vec<f32>) {
    let k = r
        .outputs
        .iter()
        .position(|o| o.name == name)
        .unwrap_or_else(|| panic!("no output {name}"));
    let o = &r.outputs[k];
    assert_eq!(o.datatype, "FP32");
    let values = match r.raw_output_contents.get(k) {
        Some(raw) => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        None => o
            .contents
            .as_ref()
            .map(|c| c.fp32_contents.clone())
            .unwrap_or_default(),
    };
    (o.shape.clone(), values)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metadata_describe_every_model() {
    let server = InProc::start("", MODELS, registry()).await;
    let mut c = client(&server).await;
    assert!(
        c.server_live(v2::ServerLiveRequest {})
            .await
            .expect("live")
            .into_inner()
            .live
    );
    assert!(
        c.server_ready(v2::ServerReadyRequest {})
            .await
            .expect("ready")
            .into_inner()
            .ready
    );
    let meta = c
        .server_metadata(v2::ServerMetadataRequest {})
        .await
        .expect("server metadata")
        .into_inner();
    assert_eq!(meta.name, "osteoserve");
    let shapes = |m: &v2::ModelMetadataResponse, outputs: bool| -> Vec<(String, Vec<i64>)> {
        let t = if outputs { &m.outputs } else { &m.inputs };
        t.iter()
            .inspect(|t| assert_eq!(t.datatype, "FP32"))
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect()
    };
    let image = ("images".to_string(), vec![-1, 2, 128, 128]);
    let tabular = ("tabular".to_string(), vec![-1, 13]);
    for (name, inputs) in [
        ("osteo-fused-v1", vec![image.clone(), tabular.clone()]),
        ("osteo-image-v1", vec![image.clone()]),
        ("osteo-tabular-v1", vec![tabular.clone()]),
    ] {
        let m = c
            .model_metadata(v2::ModelMetadataRequest {
                name: name.into(),
                version: String::new(),
            })
            .await
            .expect("model metadata")
            .into_inner();
        assert_eq!(m.name, name);
        assert_eq!(m.versions, [artifacts(name).manifest.version]);
        assert_eq!(shapes(&m, false), inputs, "{name}");
        assert_eq!(
            shapes(&m, true),
            [
                ("logits".to_string(), vec![-1, 3]),
                ("probabilities".to_string(), vec![-1, 3])
            ]
        );
        let ready = c
            .model_ready(v2::ModelReadyRequest {
                name: name.into(),
                version: m.versions[0].clone(),
            })
            .await
            .expect("model ready")
            .into_inner();
        assert!(ready.ready, "{name}");
    }
    for (name, version) in [("no-such-model", ""), ("osteo-fused-v1", "999")] {
        let e = c
            .model_ready(v2::ModelReadyRequest {
                name: name.into(),
                version: version.into(),
            })
            .await
            .expect_err("unknown");
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_equals_onnx_runtime_on_every_model_raw_and_typed() {
    let server = InProc::start("", MODELS, registry()).await;
    let mut c = client(&server).await;
    for name in ["osteo-fused-v1", "osteo-image-v1", "osteo-tabular-v1"] {
        let samples = rows(name, 3);
        let mut direct = OrtBackend::load(&artifacts(name), osteo_core::Device::Cpu).expect("ort");
        let want = direct
            .predict(&Batch::stack(&artifacts(name).manifest.arch, &samples).expect("batch"))
            .expect("predict");
        for raw in [true, false] {
            let r = c
                .model_infer(with_backend(request(name, &samples, raw), "ort"))
                .await
                .unwrap_or_else(|e| panic!("{name} raw={raw}: {e:?}"))
                .into_inner();
            assert_eq!(r.model_name, name);
            assert_eq!(r.id, "req-42");
            // Provenance: what traces the answer to the exact weights.
            let parameter =
                |k: &str| match r.parameters.get(k).and_then(|p| p.parameter_choice.clone()) {
                    Some(v2::infer_parameter::ParameterChoice::StringParam(s)) => s,
                    other => panic!("{name}: parameter {k}: {other:?}"),
                };
            assert_eq!(parameter("backend"), "ort");
            assert_eq!(parameter("device"), "cpu");
            assert_eq!(parameter("weights_blake3"), weights_digest(name));
            assert_eq!(parameter("osteoserve_version"), env!("CARGO_PKG_VERSION"));
            assert_eq!(r.raw_output_contents.is_empty(), !raw, "raw in, raw out");
            let (shape, logits) = output(&r, "logits");
            assert_eq!(shape, [3, 3]);
            let (_, probabilities) = output(&r, "probabilities");
            for row in 0..3 {
                let p = osteo_core::backend::softmax(&want.data()[row * 3..row * 3 + 3]);
                for k in 0..3 {
                    let (got, exp) = (probabilities[row * 3 + k], p[k]);
                    assert!(
                        (got - exp).abs() <= 1e-5,
                        "{name} row {row}: {got} vs {exp}"
                    );
                    let (gl, el) = (logits[row * 3 + k], want.data()[row * 3 + k]);
                    assert!((gl - el).abs() <= 1e-5, "{name} logits row {row}");
                }
            }
        }
    }
    // Only the outputs asked for, in the order asked.
    let mut req = request("osteo-tabular-v1", &rows("osteo-tabular-v1", 1), false);
    req.outputs
        .push(v2::model_infer_request::InferRequestedOutputTensor {
            name: "probabilities".into(),
            ..Default::default()
        });
    let r = c.model_infer(req).await.expect("infer").into_inner();
    assert_eq!(r.outputs.len(), 1);
    assert_eq!(r.outputs[0].name, "probabilities");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_agrees_with_classify_and_is_audited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit.jsonl");
    let server = InProc::start(
        &format!("[audit]\npath = \"{}\"\n", audit.display()),
        MODELS,
        registry(),
    )
    .await;
    let mut c = client(&server).await;
    let samples = rows("osteo-tabular-v1", 1);
    let r = c
        .model_infer(request("osteo-tabular-v1", &samples, false))
        .await
        .expect("infer")
        .into_inner();
    let (_, logits) = output(&r, "logits");
    let mut osteo = server.client().await;
    let mut clinical = clinical();
    clinical.age_years = 55.0;
    let classified = osteo
        .classify(osteo_proto::v1::ClassifyRequest {
            clinical: Some(clinical),
            model: "osteo-tabular-v1".into(),
            ..Default::default()
        })
        .await
        .expect("classify")
        .into_inner();
    for (a, b) in logits.iter().zip(&classified.logits) {
        assert!(
            (a - b).abs() <= 1e-6,
            "{logits:?} vs {:?}",
            classified.logits
        );
    }
    let text = std::fs::read_to_string(&audit).expect("audit");
    let record: serde_json::Value =
        serde_json::from_str(text.lines().next().expect("a record")).expect("JSON");
    assert_eq!(record["rpc"], "ModelInfer");
    assert_eq!(record["model"], "osteo-tabular-v1");
    assert_eq!(record["backend"], "candle");
    assert_eq!(record["code"], "Ok");
    assert!(record["grade"].as_str().is_some_and(|g| !g.is_empty()));
    let scraped = server.scrape().await;
    assert!(metric(&scraped, "osteo_requests_total", &["rpc=\"ModelInfer\""]) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_naming_the_input() {
    let server = InProc::start("", MODELS, registry()).await;
    let mut c = client(&server).await;
    let good = || request("osteo-fused-v1", &rows("osteo-fused-v1", 2), true);
    let refuse = |mut req: v2::ModelInferRequest, edit: &dyn Fn(&mut v2::ModelInferRequest)| {
        edit(&mut req);
        req
    };
    let cases: Vec<(&str, v2::ModelInferRequest, Code, &str)> = vec![
        (
            "unknown input",
            refuse(good(), &|r| r.inputs[0].name = "pixels".into()),
            Code::InvalidArgument,
            "\"pixels\" is not an input",
        ),
        (
            "wrong datatype",
            refuse(good(), &|r| r.inputs[1].datatype = "FP64".into()),
            Code::InvalidArgument,
            "\"tabular\" must be FP32",
        ),
        (
            "wrong shape",
            refuse(good(), &|r| r.inputs[0].shape = vec![2, 3, 128, 128]),
            Code::InvalidArgument,
            "\"images\" must have shape [N, 2, 128, 128]",
        ),
        (
            "rows differ",
            refuse(good(), &|r| r.inputs[1].shape[0] = 1),
            Code::InvalidArgument,
            "\"tabular\" has 1 rows",
        ),
        (
            "byte size",
            refuse(good(), &|r| {
                r.raw_input_contents[1].pop();
            }),
            Code::InvalidArgument,
            "\"tabular\": raw_input_contents holds 103 bytes",
        ),
        (
            "missing input",
            refuse(good(), &|r| {
                r.inputs.pop();
                r.raw_input_contents.pop();
            }),
            Code::InvalidArgument,
            "\"tabular\" is missing",
        ),
        (
            "raw count",
            refuse(good(), &|r| {
                r.raw_input_contents.pop();
            }),
            Code::InvalidArgument,
            "raw_input_contents has 1 entries for 2 inputs",
        ),
        (
            "too many inputs",
            refuse(good(), &|r| {
                let extra = r.inputs[0].clone();
                r.inputs.push(extra);
            }),
            Code::InvalidArgument,
            "3 inputs sent",
        ),
        (
            "unknown output",
            refuse(good(), &|r| {
                r.outputs
                    .push(v2::model_infer_request::InferRequestedOutputTensor {
                        name: "gradcam".into(),
                        ..Default::default()
                    })
            }),
            Code::InvalidArgument,
            "output \"gradcam\" is not an output",
        ),
        (
            "unknown model",
            refuse(good(), &|r| r.model_name = "osteo-knee-v9".into()),
            Code::NotFound,
            "osteo-knee-v9",
        ),
        (
            "unknown version",
            refuse(good(), &|r| r.model_version = "7".into()),
            Code::NotFound,
            "no version \"7\"",
        ),
        (
            "unknown backend",
            with_backend(good(), "tensorrt"),
            Code::NotFound,
            "backend \"tensorrt\"",
        ),
        (
            "too many rows",
            request("osteo-tabular-v1", &rows("osteo-tabular-v1", 33), false),
            Code::InvalidArgument,
            "at most 32 per request",
        ),
    ];
    for (what, req, code, text) in cases {
        let e = c.model_infer(req).await.expect_err(what);
        assert_eq!(e.code(), code, "{what}: {e:?}");
        assert!(e.message().contains(text), "{what}: {}", e.message());
    }
    // The server still answers the good request after all of that.
    c.model_infer(good()).await.expect("good request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inference_service_needs_credentials_like_osteo_v1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens.toml");
    let token = new_token(&tokens, "kserve", "client");
    let server = InProc::start(
        &format!(
            "[auth]\nmode = \"token\"\ntokens_file = \"{}\"\n",
            tokens.display()
        ),
        &MODELS[2..],
        registry(),
    )
    .await;
    let mut c = client(&server).await;
    let e = c
        .server_live(v2::ServerLiveRequest {})
        .await
        .expect_err("no token");
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut live = tonic::Request::new(v2::ServerLiveRequest {});
    live.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    assert!(c.server_live(live).await.expect("live").into_inner().live);
}

/// Writes the inputs of 2 rows of every model into `dir` (as tests/python/triton_client.py
/// reads them) and returns the probabilities ONNX Runtime gives on them, called directly.
fn write_inputs(dir: &Path) -> std::collections::BTreeMap<&'static str, Vec<f32>> {
    let mut expected = std::collections::BTreeMap::new();
    for name in ["osteo-fused-v1", "osteo-image-v1", "osteo-tabular-v1"] {
        let samples = rows(name, 2);
        let write = |input: &str, part: &dyn Fn(&Sample) -> Option<&Vec<f32>>| {
            let bytes: Vec<u8> = samples
                .iter()
                .filter_map(part)
                .flatten()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            if !bytes.is_empty() {
                std::fs::write(dir.join(format!("{name}.{input}.f32")), bytes).expect("write");
            }
        };
        write("images", &|s| s.image.as_ref());
        write("tabular", &|s| s.tabular.as_ref());
        std::fs::write(dir.join(format!("{name}.rows")), "2").expect("write");
        let mut direct = OrtBackend::load(&artifacts(name), osteo_core::Device::Cpu).expect("ort");
        let logits = direct
            .predict(&Batch::stack(&artifacts(name).manifest.arch, &samples).expect("batch"))
            .expect("predict");
        let probabilities: Vec<f32> = logits
            .data()
            .chunks(3)
            .flat_map(osteo_core::backend::softmax)
            .collect();
        expected.insert(name, probabilities);
    }
    expected
}

/// Runs `script` (in tests/python) with the Triton client environment's Python and `args`,
/// and returns the one JSON object it prints.
async fn triton_python(script: &str, args: Vec<std::ffi::OsString>) -> serde_json::Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".cache/triton-venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: run scripts/setup.sh",
        python.display()
    );
    let mut cmd = std::process::Command::new(python);
    cmd.arg(root.join("tests/python").join(script))
        .args(args)
        .env("OSTEO_MODELS_DIR", root.join("models"));
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("python"))
        .await
        .expect("join");
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object from the client")
}

/// Asserts that `got` (JSON numbers) equals `want` within 1e-5.
fn assert_close(got: &serde_json::Value, want: &[f32], what: &str) {
    let got: Vec<f64> = got
        .as_array()
        .unwrap_or_else(|| panic!("{what}: {got}"))
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .collect();
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - f64::from(*w)).abs() <= 1e-5,
            "{what}: {got:?} vs {want:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritons_python_client_works_unmodified() {
    let server = InProc::start("", MODELS, registry()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let fds = dir.path().join("descriptors.bin");
    std::fs::write(&fds, osteo_proto::FILE_DESCRIPTOR_SET).expect("write");
    let expected = write_inputs(dir.path());
    let v = triton_python(
        "triton_client.py",
        vec![
            server.addr.to_string().into(),
            fds.into(),
            dir.path().into(),
        ],
    )
    .await;
    assert_eq!(v["live"], true);
    assert_eq!(v["ready"], true);
    assert_eq!(v["server"], "osteoserve");
    assert_eq!(
        v["repository"],
        serde_json::json!([
            ["osteo-fused-v1", "READY"],
            ["osteo-image-v1", "READY"],
            ["osteo-tabular-v1", "READY"]
        ])
    );
    assert_eq!(
        v["descriptor_mismatches"],
        serde_json::json!([]),
        "field numbers must match the published protocol"
    );
    for (name, want) in &expected {
        let m = &v["models"][name];
        assert_eq!(m["ready"], true, "{name}");
        assert_eq!(m["outputs"], serde_json::json!(["logits", "probabilities"]));
        // The same as ONNX Runtime in Python on model.onnx, and in this process.
        let python: Vec<f32> = m["onnxruntime"]
            .as_array()
            .expect("onnxruntime")
            .iter()
            .filter_map(serde_json::Value::as_f64)
            .map(|v| v as f32)
            .collect();
        assert_close(
            &m["onnxruntime"],
            want,
            &format!("{name}: Python vs Rust ONNX Runtime"),
        );
        for form in ["raw", "typed"] {
            assert_close(&m[form], &python, &format!("{name} {form}"));
        }
        assert_eq!(m["max_batch_size"], 32, "{name}");
        assert_eq!(m["dynamic_batching"], true);
        let dims: Vec<serde_json::Value> = m["config_inputs"]
            .as_array()
            .expect("inputs")
            .iter()
            .map(|i| i[2].clone())
            .collect();
        let want_dims = match *name {
            "osteo-fused-v1" => serde_json::json!([[2, 128, 128], [13]]),
            "osteo-image-v1" => serde_json::json!([[2, 128, 128]]),
            _ => serde_json::json!([[13]]),
        };
        assert_eq!(serde_json::Value::Array(dims), want_dims, "{name}");
        assert!(
            m["config_inputs"]
                .as_array()
                .expect("inputs")
                .iter()
                .all(|i| i[1] == "TYPE_FP32")
        );
        assert_eq!(m["stream_errors"], serde_json::json!([]), "{name}");
        let streamed = m["streamed"].as_array().expect("streamed");
        assert_eq!(streamed.len(), 2, "{name}: {m}");
        for answer in streamed {
            assert_eq!(
                answer, &m["raw"],
                "{name}: a stream answers like ModelInfer"
            );
        }
        // 1 raw + 1 typed + 2 streamed requests of 2 rows each succeeded before the stats call.
        assert!(m["success_count"].as_u64().unwrap_or(0) >= 4, "{name}: {m}");
        assert!(
            m["inference_count"].as_u64().unwrap_or(0) >= 8,
            "{name}: {m}"
        );
        assert!(
            m["execution_count"].as_u64().unwrap_or(0) >= 1,
            "{name}: {m}"
        );
        let refused = m["wrong_shape"].as_str().unwrap_or_default();
        assert!(
            refused.contains("INVALID_ARGUMENT") && refused.contains("must have shape"),
            "{name}: {refused}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritons_http_client_works_unmodified_with_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens.toml");
    let audit = dir.path().join("audit.jsonl");
    let token = new_token(&tokens, "kserve", "client");
    let server = InProc::start(
        &format!(
            "[auth]\nmode = \"token\"\ntokens_file = \"{}\"\n[audit]\npath = \"{}\"\n",
            tokens.display(),
            audit.display()
        ),
        MODELS,
        registry(),
    )
    .await;
    let expected = write_inputs(dir.path());
    let v = triton_python(
        "triton_http_client.py",
        vec![
            server.http.to_string().into(),
            dir.path().into(),
            token.into(),
        ],
    )
    .await;
    assert_eq!(v["live"], true);
    assert_eq!(v["ready"], true);
    assert_eq!(v["server"]["name"], "osteoserve");
    assert!(
        v["server"]["extensions"]
            .as_array()
            .is_some_and(|e| e.contains(&serde_json::json!("binary_tensor_data")))
    );
    assert_eq!(
        v["repository"],
        serde_json::json!([
            ["osteo-fused-v1", "READY"],
            ["osteo-image-v1", "READY"],
            ["osteo-tabular-v1", "READY"]
        ])
    );
    let refused = v["without_token"].as_str().unwrap_or_default();
    assert!(refused.starts_with("401"), "{refused}");
    for (name, want) in &expected {
        let m = &v["models"][name];
        assert_eq!(m["ready"], true, "{name}");
        assert_eq!(m["versioned_ready"], true, "{name}");
        assert_eq!(m["versions"], serde_json::json!(["1"]));
        let python: Vec<f32> = m["onnxruntime"]
            .as_array()
            .expect("onnxruntime")
            .iter()
            .filter_map(serde_json::Value::as_f64)
            .map(|v| v as f32)
            .collect();
        assert_close(
            &m["onnxruntime"],
            want,
            &format!("{name}: Python vs Rust ONNX Runtime"),
        );
        for form in ["binary", "json"] {
            assert_close(&m[form], &python, &format!("{name} {form}"));
            assert_eq!(m[format!("{form}_logits_shape")], serde_json::json!([2, 3]));
            assert_eq!(m[format!("{form}_id")], "r-1");
        }
        assert_eq!(m["max_batch_size"], 32);
        assert!(
            m["config_inputs"]
                .as_array()
                .expect("inputs")
                .iter()
                .all(|i| i[1] == "TYPE_FP32")
        );
        assert!(m["success_count"].as_u64().unwrap_or(0) >= 2, "{name}: {m}");
        let wrong = m["wrong_shape"].as_str().unwrap_or_default();
        assert!(
            wrong.starts_with("400") && wrong.contains("must have shape"),
            "{name}: {wrong}"
        );
        let unknown = m["unknown_input"].as_str().unwrap_or_default();
        assert!(
            unknown.starts_with("400") && unknown.contains("\"height\" is not an input"),
            "{name}: {unknown}"
        );
    }
    let unknown = v["unknown_model"].as_str().unwrap_or_default();
    assert!(
        unknown.starts_with("404") && unknown.contains("nope"),
        "{unknown}"
    );
    let version = v["unknown_version"].as_str().unwrap_or_default();
    assert!(version.starts_with("404"), "{version}");
    // REST calls are audited as the gRPC method they run, under the token's principal; the
    // refused one too.
    let text = std::fs::read_to_string(&audit).expect("audit");
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert!(records.iter().any(|r| r["rpc"] == "ModelInfer"
        && r["principal"] == "kserve"
        && r["model"] == "osteo-fused-v1"
        && r["code"] == "Ok"));
    assert!(
        records
            .iter()
            .any(|r| r["rpc"] == "ServerMetadata" && r["code"] == "Unauthenticated")
    );
}

/// Sends `head` (an HTTP/1.1 request head and part of its body) on a new connection to `addr`
/// and returns what the server answers before closing.
async fn raw_http(addr: std::net::SocketAddr, head: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    // A guard against a server that never answers, not a measurement.
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tcp.read_to_end(&mut answer),
    );
    read.await.expect("the server answers").expect("read");
    String::from_utf8_lossy(&answer).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_bodies_are_reserved_as_they_arrive_bounded_in_time_and_every_refusal_audited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit.jsonl");
    let server = InProc::start(
        &format!(
            "[server]\nrequest_timeout_s = 2\n[store]\nmax_inflight_upload_bytes = 65536\n\
             max_upload_bytes = 65536\n[audit]\npath = \"{}\"\n",
            audit.display()
        ),
        &MODELS[2..],
        registry(),
    )
    .await;
    let path = "/v2/models/osteo-tabular-v1/infer";
    let post = |path: &str, body: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let samples = rows("osteo-tabular-v1", 1);
    let data: Vec<&Vec<f32>> = samples.iter().filter_map(|s| s.tabular.as_ref()).collect();
    let good = serde_json::json!({
        "inputs": [{"name": "tabular", "shape": [1, 13], "datatype": "FP32", "data": data}],
    })
    .to_string();
    // Eight bodies that each declare nearly the whole in-flight budget and send one byte (the
    // denial of service of issue Hardening, second round): only what arrived is reserved, so
    // another request is served while they trickle, and they end 408 after the timeout.
    let slow: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(raw_http(
                server.http,
                format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 60000\r\n\r\n{{"),
            ))
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let answer = raw_http(server.http, post(path, &good)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for s in slow {
        let answer = s.await.expect("join");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("server.request_timeout_s"), "{answer}");
    }
    // Every REST route reads its body under the same timeout.
    let answer = raw_http(
        server.http,
        "POST /v2/repository/index HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{".into(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // A chunked body with no declared length is counted as it arrives.
    let chunk = "x".repeat(40_000);
    let answer = raw_http(
        server.http,
        format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
             {len:x}\r\n{chunk}\r\n{len:x}\r\n{chunk}\r\n0\r\n\r\n",
            len = chunk.len()
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.contains("store.max_inflight_upload_bytes"),
        "{answer}"
    );
    // More values than any model takes in one request are refused while the JSON is read,
    // before they are decoded any further (32 rows of 13 features at most).
    let zeros = vec![0.0f32; 33 * 13];
    let many = serde_json::json!({
        "inputs": [{"name": "tabular", "shape": [33, 13], "datatype": "FP32", "data": zeros}],
    })
    .to_string();
    let answer = raw_http(server.http, post(path, &many)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("more than 416 values"), "{answer}");
    // A number beyond FP32's range is infinite: refused naming the input, never graded.
    let mut big: Vec<f64> = data[0].iter().map(|v| f64::from(*v)).collect();
    big[0] = 1e39;
    let huge = serde_json::json!({
        "inputs": [{"name": "tabular", "shape": [1, 13], "datatype": "FP32", "data": [big]}],
    })
    .to_string();
    let answer = raw_http(server.http, post(path, &huge)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("\\\"tabular\\\"") && answer.contains("finite"),
        "{answer}"
    );
    // Content-Encoding is refused before the body.
    let answer = raw_http(
        server.http,
        format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-encoding: gzip\r\ncontent-length: 4\r\n\r\nabcd"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // Nothing stays reserved: the normal request still fits.
    let answer = raw_http(server.http, post(path, &good)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Every refusal is audited and counted like a gRPC one, as the method it would have run.
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .expect("audit")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    let count = |rpc: &str, code: &str| {
        records
            .iter()
            .filter(|r| r["rpc"] == rpc && r["code"] == code)
            .count()
    };
    assert_eq!(count("ModelInfer", "DeadlineExceeded"), 8, "{records:?}");
    assert_eq!(count("RepositoryIndex", "DeadlineExceeded"), 1);
    assert_eq!(count("ModelInfer", "ResourceExhausted"), 1);
    assert_eq!(count("ModelInfer", "InvalidArgument"), 3);
    assert_eq!(count("ModelInfer", "Ok"), 2);
    let text = server.scrape().await;
    let requests = |code: &str| {
        metric(
            &text,
            "osteo_requests_total",
            &["rpc=\"ModelInfer\"", &format!("code=\"{code}\"")],
        )
    };
    // The metrics are the process's: other tests of this binary add to them.
    assert!(requests("DeadlineExceeded") >= 8.0, "{text}");
    assert!(requests("InvalidArgument") >= 3.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_finite_inputs_are_refused_naming_the_input_and_never_graded() {
    let server = InProc::start("", MODELS, registry()).await;
    let mut c = client(&server).await;
    let cases = [
        ("osteo-tabular-v1", false, f32::NAN, "tabular"),
        ("osteo-tabular-v1", true, f32::INFINITY, "tabular"),
        ("osteo-fused-v1", true, f32::NAN, "images"),
        ("osteo-fused-v1", false, f32::NEG_INFINITY, "tabular"),
    ];
    for (model, raw, value, input) in cases {
        let mut req = request(model, &rows(model, 2), raw);
        let k = req
            .inputs
            .iter()
            .position(|t| t.name == input)
            .expect("input");
        if raw {
            req.raw_input_contents[k][4..8].copy_from_slice(&value.to_le_bytes());
        } else if let Some(c) = req.inputs[k].contents.as_mut() {
            c.fp32_contents[1] = value;
        }
        let status = c.model_infer(req).await.expect_err("refused");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{model} {input}: {status:?}"
        );
        assert!(
            status.message().contains(&format!("\"{input}\""))
                && status.message().contains("finite"),
            "{status:?}"
        );
    }
}

/// Runs curl with `args`; returns the HTTP status and the body.
async fn curl(args: Vec<String>) -> (u16, String) {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}"])
            .args(args)
            .output()
            .expect("curl (scripts/setup.sh installs it)")
    })
    .await
    .expect("join");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reaches_the_rest_endpoints_and_bad_requests_get_json_errors() {
    let server = InProc::start("", &MODELS[2..], registry()).await;
    let base = format!("http://{}", server.http);
    let get = |path: &str| vec![format!("{base}{path}")];
    let post = |path: &str, body: &str| {
        vec![
            "-X".into(),
            "POST".into(),
            "-H".into(),
            "content-type: application/json".into(),
            "--data-binary".into(),
            body.to_string(),
            format!("{base}{path}"),
        ]
    };
    let (code, body) = curl(get("/v2/health/live")).await;
    assert_eq!((code, body.as_str()), (200, "{\"live\":true}"));
    assert_eq!(curl(get("/v2/health/ready")).await.0, 200);
    assert_eq!(curl(get("/v2/models/osteo-tabular-v1/ready")).await.0, 200);
    let (code, body) = curl(get("/v2/models/osteo-tabular-v1")).await;
    assert_eq!(code, 200, "{body}");
    let meta: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(meta["inputs"][0]["shape"], serde_json::json!([-1, 13]));
    // The encoding of the clinical features, as model.toml states it.
    let features = &meta["inputs"][0]["parameters"]["features"];
    assert_eq!(features.as_array().map(Vec::len), Some(13), "{meta}");
    assert_eq!(features[0]["name"], "age_years");
    assert!(features[0]["std"].as_f64().is_some_and(|s| s > 0.0));

    // JSON tensors, nested rows, equal to ONNX Runtime called directly.
    let samples = rows("osteo-tabular-v1", 2);
    let data: Vec<&Vec<f32>> = samples.iter().filter_map(|s| s.tabular.as_ref()).collect();
    let request = serde_json::json!({
        "id": "curl-1",
        "inputs": [{"name": "tabular", "shape": [2, 13], "datatype": "FP32", "data": data}],
        "outputs": [{"name": "probabilities"}],
    });
    let (code, body) = curl(post(
        "/v2/models/osteo-tabular-v1/versions/1/infer",
        &request.to_string(),
    ))
    .await;
    assert_eq!(code, 200, "{body}");
    let r: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(r["id"], "curl-1");
    assert_eq!(
        r["parameters"]["weights_blake3"],
        weights_digest("osteo-tabular-v1").as_str(),
        "{body}"
    );
    assert_eq!(r["outputs"].as_array().map(Vec::len), Some(1));
    assert_eq!(r["outputs"][0]["shape"], serde_json::json!([2, 3]));
    let mut direct =
        OrtBackend::load(&artifacts("osteo-tabular-v1"), osteo_core::Device::Cpu).expect("ort");
    let want: Vec<f32> = direct
        .predict(
            &Batch::stack(&artifacts("osteo-tabular-v1").manifest.arch, &samples).expect("batch"),
        )
        .expect("predict")
        .data()
        .chunks(3)
        .flat_map(osteo_core::backend::softmax)
        .collect();
    assert_close(&r["outputs"][0]["data"], &want, "curl JSON infer");

    // Bad requests: the protocol's {"error": ...} body with a status that says whose fault.
    let refusals = [
        (
            "/v2/models/osteo-tabular-v1/infer",
            "{\"inputs\": [",
            400,
            "ends early",
        ),
        (
            "/v2/models/osteo-tabular-v1/infer",
            r#"{"inputs":[{"name":"tabular","shape":[1,13],"datatype":"FP32","data":[1,2]}]}"#,
            400,
            "holds 2 values",
        ),
        (
            "/v2/models/osteo-tabular-v1/infer",
            r#"{"inputs":[{"name":"tabular","shape":[1,13],"datatype":"INT8","data":[1]}]}"#,
            400,
            "must be FP32",
        ),
        (
            "/v2/models/nope/infer",
            r#"{"inputs":[{"name":"tabular","shape":[1,13],"datatype":"FP32","data":[0,0,0,0,0,0,0,0,0,0,0,0,0]}]}"#,
            404,
            "not served",
        ),
    ];
    for (path, body, want_code, want_text) in refusals {
        let (code, text) = curl(post(path, body)).await;
        assert_eq!(code, want_code, "{path}: {text}");
        let e: serde_json::Value = serde_json::from_str(&text).expect("JSON error body");
        assert!(
            e["error"].as_str().is_some_and(|m| m.contains(want_text)),
            "{text}"
        );
    }
    let (code, text) = curl(get("/v3/anything")).await;
    assert_eq!(code, 404, "{text}");
    // A body over server.max_message_bytes is refused before it is read.
    let big = vec![b'1'; 70 << 20];
    let file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(file.path(), &big).expect("write");
    let (code, text) = curl(vec![
        "-X".into(),
        "POST".into(),
        "--data-binary".into(),
        format!("@{}", file.path().display()),
        format!("{base}/v2/models/osteo-tabular-v1/infer"),
    ])
    .await;
    assert_eq!(code, 429, "{text}");
    assert!(text.contains("server.max_message_bytes"), "{text}");
    // The server still answers.
    assert_eq!(curl(get("/v2/health/ready")).await.0, 200);
}

/// Runs Triton's perf_analyzer (scripts/setup.sh extracts it) with `args`; returns its CSV
/// report's rows (header -> value) and its output.
async fn perf_analyzer(
    args: Vec<String>,
) -> (Vec<std::collections::HashMap<String, String>>, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/perf-analyzer");
    let bin = root.join("perf_analyzer");
    assert!(
        bin.exists(),
        "{} missing: run scripts/setup.sh",
        bin.display()
    );
    let report = tempfile::NamedTempFile::new().expect("tmp");
    let mut cmd = std::process::Command::new(bin);
    cmd.env("LD_LIBRARY_PATH", root.join("lib"))
        .args(args)
        .arg("-f")
        .arg(report.path());
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("perf_analyzer"))
        .await
        .expect("join");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "perf_analyzer failed:\n{text}");
    let csv = std::fs::read_to_string(report.path()).expect("report");
    let mut lines = csv.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap_or_default()
        .split(',')
        .map(str::to_string)
        .collect();
    let rows = lines
        .map(|l| {
            header
                .iter()
                .cloned()
                .zip(l.split(',').map(str::to_string))
                .collect()
        })
        .collect();
    (rows, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perf_analyzer_measures_the_tabular_and_fused_models_without_errors() {
    let server = InProc::start("", MODELS, registry()).await;
    for (model, protocol, url) in [
        ("osteo-tabular-v1", "grpc", server.addr.to_string()),
        ("osteo-fused-v1", "grpc", server.addr.to_string()),
        ("osteo-tabular-v1", "http", server.http.to_string()),
    ] {
        // A bounded measurement: 2 concurrent clients sending batches of 4, three windows of
        // 500 ms (stability is not what is tested: any spread is accepted). Over gRPC the
        // requests name ONNX Runtime in the `backend` parameter (perf_analyzer sends request
        // parameters over gRPC only).
        let mut args: Vec<String> = [
            "-m",
            model,
            "-u",
            &url,
            "-i",
            protocol,
            "-b",
            "4",
            "--concurrency-range",
            "2",
            "-p",
            "500",
            "-r",
            "10",
            "-s",
            "1000",
            // perf_analyzer's default random FP32 data is random bits, NaN among them, which
            // the server refuses (INVALID_ARGUMENT naming the input).
            "--input-data",
            "zero",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        if protocol == "grpc" {
            args.extend(["--request-parameter".into(), "backend:ort:string".into()]);
        }
        let (rows, text) = perf_analyzer(args).await;
        let what = format!("{model} over {protocol}");
        assert!(!text.to_lowercase().contains("error"), "{what}:\n{text}");
        let row = rows
            .first()
            .unwrap_or_else(|| panic!("{what}: no report\n{text}"));
        let throughput: f64 = row
            .get("Inferences/Second")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        assert!(throughput > 0.0, "{what}: {row:?}");
        assert_eq!(
            row.get("Concurrency").map(String::as_str),
            Some("2"),
            "{what}"
        );
    }
    // Every request perf_analyzer sent succeeded, as the server counts them.
    let mut c = client(&server).await;
    let stats = c
        .model_statistics(v2::ModelStatisticsRequest::default())
        .await
        .expect("stats")
        .into_inner();
    for s in &stats.model_stats {
        let i = s.inference_stats.unwrap_or_default();
        assert_eq!(i.fail.unwrap_or_default().count, 0, "{}", s.name);
        if s.name != "osteo-image-v1" {
            assert!(i.success.unwrap_or_default().count > 0, "{}", s.name);
        }
    }
}

/// The ModelStatistics of osteo-tabular-v1.
async fn tabular_statistics(c: &mut GrpcInferenceServiceClient<Channel>) -> v2::ModelStatistics {
    c.model_statistics(v2::ModelStatisticsRequest {
        name: "osteo-tabular-v1".into(),
        version: String::new(),
    })
    .await
    .expect("statistics")
    .into_inner()
    .model_stats
    .remove(0)
}

/// Batches of exactly two samples of osteo-tabular-v1 in `osteo_batch_size`.
fn batches_of_two(scraped: &str) -> f64 {
    let bucket = |le: &str| {
        metric(
            scraped,
            "osteo_batch_size_bucket",
            &["model=\"osteo-tabular-v1\"", &format!("le=\"{le}\"")],
        )
    };
    bucket("2") - bucket("1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_and_osteo_v1_requests_run_in_one_batch() {
    // A long window and a batch of two: the batch runs as soon as both requests are queued.
    let server = InProc::start(
        "[scheduler]\nmax_batch = 2\nmax_delay_ms = 5000\n",
        &MODELS[2..],
        registry(),
    )
    .await;
    let mut v2c = client(&server).await;
    let mut osteo = server.client().await;
    let samples = rows("osteo-tabular-v1", 1);
    // Batches of exactly two rows recorded so far (the recorder is shared by this binary's
    // servers).
    let before = batches_of_two(&server.scrape().await);
    let infer = v2c.model_infer(request("osteo-tabular-v1", &samples, true));
    let classify = osteo.classify(osteo_proto::v1::ClassifyRequest {
        clinical: Some(clinical()),
        model: "osteo-tabular-v1".into(),
        ..Default::default()
    });
    let (a, b) = tokio::join!(infer, classify);
    a.expect("infer");
    b.expect("classify");
    let s = tabular_statistics(&mut v2c).await;
    assert_eq!(
        (s.inference_count, s.execution_count),
        (2, 1),
        "one backend execution ran both requests' rows"
    );
    assert!(
        batches_of_two(&server.scrape().await) - before >= 1.0,
        "osteo_batch_size records the batch of two"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_answers_every_request_in_order_and_goes_on_after_a_bad_one() {
    let server = InProc::start("", &MODELS[2..], registry()).await;
    let mut c = client(&server).await;
    let good = request("osteo-tabular-v1", &rows("osteo-tabular-v1", 1), false);
    let mut bad = good.clone();
    bad.inputs[0].datatype = "INT64".into();
    let mut answers = c
        .model_stream_infer(tokio_stream::iter(vec![good.clone(), bad, good]))
        .await
        .expect("stream")
        .into_inner();
    let mut got = Vec::new();
    while let Some(answer) = answers.message().await.expect("answer") {
        got.push(answer);
    }
    assert_eq!(got.len(), 3);
    assert!(got[0].error_message.is_empty() && got[0].infer_response.is_some());
    assert!(
        got[1].error_message.contains("\"tabular\" must be FP32")
            && got[1].infer_response.is_none(),
        "{:?}",
        got[1]
    );
    assert_eq!(got[2].infer_response, got[0].infer_response);
    let index = c
        .repository_index(v2::RepositoryIndexRequest::default())
        .await
        .expect("index")
        .into_inner();
    assert_eq!(index.models.len(), 1);
    assert_eq!(index.models[0].state, "READY");
    let s = tabular_statistics(&mut c).await;
    let infer = s.inference_stats.as_ref().expect("stats");
    assert_eq!(infer.success.as_ref().map(|d| d.count), Some(2));
    assert_eq!(infer.fail.as_ref().map(|d| d.count), Some(1));
    assert_eq!(s.inference_count, 2);
}
