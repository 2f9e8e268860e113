//! The network of an `ArchSpec` as an ONNX graph (IR 8, opset 17), with the Grad-CAM head
//! gradient written out analytically so a runtime without autograd can explain predictions.
//!
//! Forward graph: `images [N,C,H,W]` -> per block Conv(3x3, pad 1) -> BatchNormalization (eval)
//! -> Relu -> MaxPool(2x2) = `activation [N,K,h,w]` -> GlobalAveragePool -> Flatten; `tabular
//! [N,F]` -> (Gemm -> Relu)*; Concat -> head (Gemm -> Relu)* -> Gemm = `logits [N,classes]`.
//!
//! Gradient: with image embedding e = mean_hw(A) and head pre-activations z_l, the Jacobian of
//! the logits with respect to the head input is `W_out · D_L · W_L ··· D_1 · W_1` (D_l = diag of
//! z_l > 0), built per sample as `[N, classes, in]` by Mul with the ReLU masks and MatMul with
//! the weights. Its first K columns divided by h·w are `gradcam_alpha [N, classes, K]`: the
//! spatial mean of d logit_c / d A for every class c. In tabular and fused models its tabular columns,
//! carried back through the tabular layers the same way, are `tabular_gradient [N, classes, F]`
//! (d logit_c / d tabular input, for gradient x input attributions of the clinical features).

use crate::graph::{GraphBuilder, float, float_value, int, ints};
use crate::proto::{ModelProto, OperatorSetIdProto, StringStringEntryProto, ValueInfoProto};
use crate::{OnnxError, names};
use osteo_core::ModelManifest;
use safetensors::{Dtype, SafeTensors};

/// ONNX IR version written.
pub const IR_VERSION: i64 = 8;
/// Default-domain opset written.
pub const OPSET: i64 = 17;
/// Metadata key holding the BLAKE3 digest of the weights the file was exported from.
pub const WEIGHTS_DIGEST_KEY: &str = "osteoserve.weights_blake3";

pub use osteo_core::manifest::weights_digest;

/// Takes every parameter of the spec from the safetensors file, checking shape and type.
struct Params<'a> {
    tensors: SafeTensors<'a>,
}

impl Params<'_> {
    /// The bytes of a parameter (names and shapes were checked against the spec).
    fn raw(&self, name: &str) -> Result<Vec<u8>, OnnxError> {
        let t = self
            .tensors
            .tensor(name)
            .map_err(|e| OnnxError::Invalid(format!("parameter {name}: {e}")))?;
        if t.dtype() != Dtype::F32 {
            return Err(OnnxError::Invalid(format!(
                "parameter {name} is {:?}; the exporter writes f32 weights",
                t.dtype()
            )));
        }
        Ok(t.data().to_vec())
    }
}

/// Serialises the model's ONNX graph from its manifest and the bytes of `weights.safetensors`.
pub fn export(manifest: &ModelManifest, weights: &[u8]) -> Result<Vec<u8>, OnnxError> {
    manifest
        .validate()
        .map_err(|e| OnnxError::Invalid(e.to_string()))?;
    let arch = &manifest.arch;
    let tensors = SafeTensors::deserialize(weights)
        .map_err(|e| OnnxError::Invalid(format!("weights.safetensors: {e}")))?;
    let views = tensors.tensors();
    arch.check_parameters(views.iter().map(|(n, v)| (n.as_str(), v.shape())))
        .map_err(|e| OnnxError::Invalid(e.to_string()))?;
    let expected = arch.parameters();
    let params = Params { tensors };
    let mut shapes = std::collections::HashMap::new();
    for (name, shape) in &expected {
        shapes.insert(name.as_str(), shape.as_slice());
    }
    let mut g = GraphBuilder::default();
    let w = |g: &mut GraphBuilder, name: &str| -> Result<String, OnnxError> {
        let shape = shapes
            .get(name)
            .ok_or_else(|| OnnxError::Invalid(format!("no parameter {name} in the spec")))?;
        Ok(g.weight(name, shape, params.raw(name)?))
    };

    let mut inputs = Vec::new();
    let mut outputs = vec![float_value(
        names::LOGITS,
        &[None, Some(arch.head.classes)],
        "class logits in the order normal, osteopenia, osteoporosis",
    )];
    let mut embeddings = Vec::new();
    let mut grid = None;

    if let Some(img) = &arch.image {
        inputs.push(float_value(
            names::IMAGES,
            &[
                None,
                Some(img.in_channels),
                Some(img.height),
                Some(img.width),
            ],
            "CT views, channel 0 slab mean and channel 1 slab max, values in [0, 1]",
        ));
        let mut x = names::IMAGES.to_string();
        let last = img.channels.len() - 1;
        for b in 0..img.channels.len() {
            let p = format!("image.block{b}");
            let cw = w(&mut g, &format!("{p}.conv.weight"))?;
            let cb = w(&mut g, &format!("{p}.conv.bias"))?;
            x = g.node(
                "Conv",
                &[&x, &cw, &cb],
                vec![
                    ints("kernel_shape", &[3, 3]),
                    ints("pads", &[1, 1, 1, 1]),
                    ints("strides", &[1, 1]),
                ],
                &format!("{p}.conv"),
            );
            let bn: Vec<String> = ["weight", "bias", "running_mean", "running_var"]
                .iter()
                .map(|s| w(&mut g, &format!("{p}.bn.{s}")))
                .collect::<Result<_, _>>()?;
            x = g.node(
                "BatchNormalization",
                &[&x, &bn[0], &bn[1], &bn[2], &bn[3]],
                vec![float("epsilon", img.batch_norm_eps as f32)],
                &format!("{p}.bn"),
            );
            x = g.node("Relu", &[&x], vec![], &format!("{p}.relu"));
            let pool = vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])];
            x = if b == last {
                g.node_to("MaxPool", &[&x], pool, names::ACTIVATION)
            } else {
                g.node("MaxPool", &[&x], pool, &format!("{p}.pool"))
            };
        }
        let [h, wd] = img.activation_size();
        outputs.push(float_value(
            names::ACTIVATION,
            &[None, Some(img.embedding()), Some(h), Some(wd)],
            "Grad-CAM activation A: the last conv block's output",
        ));
        let pooled = g.node("GlobalAveragePool", &[&x], vec![], "image.pool");
        embeddings.push(g.node(
            "Flatten",
            &[&pooled],
            vec![int("axis", 1)],
            "image.embedding",
        ));
        grid = Some((img.embedding(), h * wd));
    }

    // (pre-activation, weight) of every tabular layer, for the tabular gradient.
    let mut tabular_layers = Vec::new();
    if let Some(tab) = &arch.tabular {
        inputs.push(float_value(
            names::TABULAR,
            &[None, Some(tab.in_features)],
            "encoded clinical features (the manifest's feature spec)",
        ));
        let mut x = names::TABULAR.to_string();
        for k in 0..tab.hidden.len() {
            let p = format!("tabular.fc{k}");
            let fw = w(&mut g, &format!("{p}.weight"))?;
            let fb = w(&mut g, &format!("{p}.bias"))?;
            let z = g.node("Gemm", &[&x, &fw, &fb], vec![int("transB", 1)], &p);
            x = g.node("Relu", &[&z], vec![], &format!("{p}.relu"));
            tabular_layers.push((z, fw));
        }
        embeddings.push(x);
    }

    let mut x = match embeddings.as_slice() {
        [one] => one.clone(),
        _ => {
            let refs: Vec<&str> = embeddings.iter().map(String::as_str).collect();
            g.node("Concat", &refs, vec![int("axis", 1)], "head.input")
        }
    };
    // (pre-activation, weight) of every hidden head layer, for the gradient.
    let mut hidden = Vec::new();
    for k in 0..arch.head.hidden.len() {
        let p = format!("head.fc{k}");
        let fw = w(&mut g, &format!("{p}.weight"))?;
        let fb = w(&mut g, &format!("{p}.bias"))?;
        let z = g.node("Gemm", &[&x, &fw, &fb], vec![int("transB", 1)], &p);
        x = g.node("Relu", &[&z], vec![], &format!("{p}.relu"));
        hidden.push((z, fw));
    }
    let out_w = w(&mut g, "head.out.weight")?;
    let out_b = w(&mut g, "head.out.bias")?;
    g.node_to(
        "Gemm",
        &[&x, &out_w, &out_b],
        vec![int("transB", 1)],
        names::LOGITS,
    );

    // The head Jacobian, then the image columns (Grad-CAM weights) and the tabular columns
    // (clinical-feature gradients) of it.
    let jac = head_jacobian(
        &mut g,
        &out_w,
        &hidden,
        arch.head.classes,
        arch.head_input(),
    );
    let image_width = grid.map_or(0, |(k, _)| k);
    if let Some((k, cells)) = grid {
        gradcam_alpha(&mut g, &jac, k, cells);
        outputs.push(float_value(
            names::ALPHA,
            &[None, Some(arch.head.classes), Some(k)],
            "Grad-CAM channel weights: spatial mean of d logit_c / d activation, per class c",
        ));
    }
    if let Some(tab) = &arch.tabular {
        tabular_gradient(
            &mut g,
            &jac,
            &tabular_layers,
            image_width,
            arch.head_input(),
        );
        outputs.push(float_value(
            names::TABULAR_GRADIENT,
            &[None, Some(arch.head.classes), Some(tab.in_features)],
            "d logit_c / d tabular input, per class c (gradient x input attributions)",
        ));
    }

    let model = ModelProto {
        ir_version: IR_VERSION,
        producer_name: "osteoserve".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        domain: "org.osteoserve".into(),
        model_version: manifest.version.parse().unwrap_or(1),
        doc_string: format!(
            "{} ({} model) exported from weights.safetensors by osteo export-onnx",
            manifest.name, manifest.kind
        ),
        graph: Some(g.finish(&manifest.name, inputs, outputs)),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        metadata_props: vec![
            entry("osteoserve.model", &manifest.name),
            entry("osteoserve.kind", manifest.kind.name()),
            entry("osteoserve.classes", &manifest.classes.join(",")),
            entry(WEIGHTS_DIGEST_KEY, &weights_digest(weights)),
        ],
    };
    Ok(prost::Message::encode_to_vec(&model))
}

fn entry(key: &str, value: &str) -> StringStringEntryProto {
    StringStringEntryProto {
        key: key.into(),
        value: value.into(),
    }
}

/// Appends the analytic `tabular_gradient`: the head Jacobian's tabular columns (`start..end`)
/// carried back through the tabular layers (ReLU masks, then each layer's weight).
fn tabular_gradient(
    g: &mut GraphBuilder,
    jac: &str,
    layers: &[(String, String)],
    start: usize,
    end: usize,
) {
    let axis1 = g.const_i64("tabgrad.axes1", &[1]);
    let (s, e, axis2) = (
        g.const_i64("tabgrad.start", &[start as i64]),
        g.const_i64("tabgrad.end", &[end as i64]),
        g.const_i64("tabgrad.axes2", &[2]),
    );
    let j = g.node("Slice", &[jac, &s, &e, &axis2], vec![], "tabgrad.embedding");
    let j = back_through(g, j, layers, "tabgrad", &axis1);
    g.node_to("Identity", &[&j], vec![], names::TABULAR_GRADIENT);
}

/// Carries a Jacobian `[N, classes, out]` back through ReLU layers (pre-activation, weight),
/// last layer first: times each layer's ReLU mask, then its weight. Nodes are named `prefix.*`.
fn back_through(
    g: &mut GraphBuilder,
    mut jac: String,
    layers: &[(String, String)],
    prefix: &str,
    axis1: &str,
) -> String {
    for (l, (z, weight)) in layers.iter().enumerate().rev() {
        let zero = g.const_f32(&format!("{prefix}.zero{l}"), &[], &[0.0]);
        let on = g.node(
            "Greater",
            &[z, &zero],
            vec![],
            &format!("{prefix}.active{l}"),
        );
        let mask = g.node(
            "Cast",
            &[&on],
            vec![int("to", 1)],
            &format!("{prefix}.mask{l}"),
        );
        let mask = g.node(
            "Unsqueeze",
            &[&mask, axis1],
            vec![],
            &format!("{prefix}.mask{l}"),
        );
        let masked = g.node(
            "Mul",
            &[&jac, &mask],
            vec![],
            &format!("{prefix}.masked{l}"),
        );
        jac = g.node(
            "MatMul",
            &[&masked, weight],
            vec![],
            &format!("{prefix}.jacobian{l}"),
        );
    }
    jac
}

/// Appends the head Jacobian `[N, classes, head input]` (see the module documentation).
fn head_jacobian(
    g: &mut GraphBuilder,
    out_w: &str,
    hidden: &[(String, String)],
    classes: usize,
    head_input: usize,
) -> String {
    let axis1 = g.const_i64("grad.axes1", &[1]);
    let mut jac = back_through(g, out_w.to_string(), hidden, "grad", &axis1);
    if hidden.is_empty() {
        // No hidden layer: the Jacobian is the output weight itself, repeated per sample.
        let shape = g.node("Shape", &[names::LOGITS], vec![], "grad.logits_shape");
        let (start, end, axis0) = (
            g.const_i64("grad.start0", &[0]),
            g.const_i64("grad.end1", &[1]),
            g.const_i64("grad.axes0", &[0]),
        );
        let n = g.node(
            "Slice",
            &[&shape, &start, &end, &axis0],
            vec![],
            "grad.batch",
        );
        let rest = g.const_i64("grad.rest", &[classes as i64, head_input as i64]);
        let full = g.node("Concat", &[&n, &rest], vec![int("axis", 0)], "grad.shape");
        jac = g.node("Expand", &[&jac, &full], vec![], "grad.jacobian");
    }
    jac
}

/// Appends `gradcam_alpha`: the Jacobian's first `k` columns over the `cells` of the grid.
fn gradcam_alpha(g: &mut GraphBuilder, jac: &str, k: usize, cells: usize) {
    let (start, end, axis2) = (
        g.const_i64("grad.image_start", &[0]),
        g.const_i64("grad.image_end", &[k as i64]),
        g.const_i64("grad.axes2", &[2]),
    );
    let image = g.node("Slice", &[jac, &start, &end, &axis2], vec![], "grad.image");
    let scale = g.const_f32("grad.cells", &[], &[1.0 / cells as f32]);
    g.node_to("Mul", &[&image, &scale], vec![], names::ALPHA);
}

/// The graph inputs and outputs a file declares, by name.
pub fn io_names(model: &ModelProto) -> (Vec<String>, Vec<String>) {
    let names = |v: &[ValueInfoProto]| v.iter().map(|i| i.name.clone()).collect();
    model.graph.as_ref().map_or((Vec::new(), Vec::new()), |g| {
        (names(&g.input), names(&g.output))
    })
}
