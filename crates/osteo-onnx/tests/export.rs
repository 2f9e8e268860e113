//! The exporter on the shipped models: deterministic output, a graph that declares exactly the
//! documented inputs and outputs and carries every weight unchanged, and clear refusals of
//! weights that do not fit the architecture.

use osteo_core::ModelArtifacts;
use osteo_onnx::proto::ModelProto;
use osteo_onnx::{OnnxError, export, names};
use prost::Message;
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};
use std::path::Path;

fn shipped(name: &str) -> (ModelArtifacts, Vec<u8>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models")
        .join(name);
    let artifacts = ModelArtifacts::open(&dir).expect("shipped model");
    let weights = std::fs::read(artifacts.weights_path()).expect("weights");
    (artifacts, weights)
}

#[test]
fn exports_are_deterministic_and_carry_every_weight_unchanged() {
    for (name, inputs, outputs) in [
        (
            "osteo-fused-v1",
            vec![names::IMAGES, names::TABULAR],
            vec![
                names::LOGITS,
                names::ACTIVATION,
                names::ALPHA,
                names::TABULAR_GRADIENT,
            ],
        ),
        (
            "osteo-image-v1",
            vec![names::IMAGES],
            vec![names::LOGITS, names::ACTIVATION, names::ALPHA],
        ),
        (
            "osteo-tabular-v1",
            vec![names::TABULAR],
            vec![names::LOGITS, names::TABULAR_GRADIENT],
        ),
    ] {
        let (artifacts, weights) = shipped(name);
        let a = export(&artifacts.manifest, &weights).expect("export");
        let b = export(&artifacts.manifest, &weights).expect("export");
        assert_eq!(a, b, "{name}: the export is byte-for-byte reproducible");
        let model = ModelProto::decode(a.as_slice()).expect("decodes");
        assert_eq!((model.ir_version, model.opset_import[0].version), (8, 17));
        let (ins, outs) = osteo_onnx::export::io_names(&model);
        assert_eq!(ins, inputs, "{name}");
        assert_eq!(outs, outputs, "{name}");
        assert_eq!(
            osteo_onnx::recorded_digest(&model),
            Some(osteo_onnx::weights_digest(&weights).as_str())
        );
        let graph = model.graph.expect("graph");
        let tensors = SafeTensors::deserialize(&weights).expect("weights");
        for (param, shape) in artifacts.manifest.arch.parameters() {
            let init = graph
                .initializer
                .iter()
                .find(|t| t.name == param)
                .unwrap_or_else(|| panic!("{name}: initializer {param}"));
            let dims: Vec<i64> = shape.iter().map(|d| *d as i64).collect();
            assert_eq!(init.dims, dims, "{param}");
            assert_eq!(
                init.raw_data,
                tensors.tensor(&param).expect("tensor").data(),
                "{name}: {param} is copied bit for bit"
            );
        }
        let ops: std::collections::BTreeSet<&str> =
            graph.node.iter().map(|n| n.op_type.as_str()).collect();
        assert!(ops.contains("Gemm"));
        assert_eq!(
            ops.contains("Conv") && ops.contains("MatMul"),
            name != "osteo-tabular-v1",
            "{name}: {ops:?}"
        );
    }
}

#[test]
fn weights_that_do_not_fit_the_architecture_are_refused_by_name() {
    let (artifacts, weights) = shipped("osteo-tabular-v1");
    let tensors = SafeTensors::deserialize(&weights).expect("weights");
    let views: Vec<(String, TensorView<'_>)> = tensors
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != "head.out.bias")
        .collect();
    let missing = safetensors::serialize(views, None).expect("serialize");
    let e = export(&artifacts.manifest, &missing).expect_err("missing parameter");
    assert!(
        matches!(&e, OnnxError::Invalid(m) if m.contains("head.out.bias")),
        "{e}"
    );

    let halves: Vec<u8> = vec![0; 2 * 3];
    let mut views: Vec<(String, TensorView<'_>)> = tensors
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != "head.out.bias")
        .collect();
    views.push((
        "head.out.bias".into(),
        TensorView::new(Dtype::F16, vec![3], &halves).expect("view"),
    ));
    let f16 = safetensors::serialize(views, None).expect("serialize");
    let e = export(&artifacts.manifest, &f16).expect_err("f16 parameter");
    assert!(e.to_string().contains("f32"), "{e}");

    let e = export(&artifacts.manifest, b"not safetensors").expect_err("garbage");
    assert!(e.to_string().contains("weights.safetensors"), "{e}");
}
