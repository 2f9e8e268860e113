//! The candle backend against the network it is built from: saved weights reload exactly,
//! batching does not change results, and Grad-CAM's alpha equals finite differences.

use candle_core::{DType, Tensor};
use candle_nn::{VarBuilder, VarMap};
use osteo_backend_candle::{CandleBackend, Network};
use osteo_core::arch::{Head, ImageBranch, TabularBranch};
use osteo_core::features::FEATURE_NAMES;
use osteo_core::manifest::{MANIFEST_FILE, Provenance, WEIGHTS_FILE};
use osteo_core::{
    ArchSpec, Backend, BackendError, Batch, Device, Grade, LoadBackend, ModelArtifacts, ModelKind,
    ModelManifest, TabularSpec, ViewSpec,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

const H: usize = 32;
const F: usize = FEATURE_NAMES.len();

fn arch(kind: ModelKind) -> ArchSpec {
    ArchSpec {
        kind,
        image: kind.uses_image().then(|| ImageBranch {
            in_channels: 2,
            height: H,
            width: H,
            channels: vec![6, 8],
            batch_norm_eps: 1e-5,
        }),
        tabular: kind.uses_tabular().then(|| TabularBranch {
            in_features: F,
            hidden: vec![10],
        }),
        head: Head {
            hidden: vec![12],
            classes: 3,
        },
    }
}

fn manifest(kind: ModelKind) -> ModelManifest {
    ModelManifest {
        name: format!("test-{kind}"),
        version: "0".into(),
        kind,
        classes: Grade::ALL.iter().map(|g| g.name().to_string()).collect(),
        arch: arch(kind),
        view: kind.uses_image().then(|| ViewSpec {
            height: H,
            width: H,
            ..ViewSpec::default()
        }),
        tabular: kind
            .uses_tabular()
            .then(|| TabularSpec::with_stats(&vec![(0.0, 1.0); F]).expect("spec")),
        provenance: Provenance::default(),
        metrics: Default::default(),
        weights_blake3: String::new(),
        decision: None,
    }
}

fn random(shape: &[usize], rng: &mut ChaCha8Rng) -> osteo_core::Tensor {
    let n = shape.iter().product();
    osteo_core::Tensor::new(
        shape.to_vec(),
        (0..n).map(|_| rng.random::<f32>()).collect(),
    )
    .expect("tensor")
}

fn batch(kind: ModelKind, n: usize, rng: &mut ChaCha8Rng) -> Batch {
    Batch {
        images: kind.uses_image().then(|| random(&[n, 2, H, H], rng)),
        tabular: kind.uses_tabular().then(|| random(&[n, F], rng)),
    }
}

fn to_candle(t: &Option<osteo_core::Tensor>) -> Option<Tensor> {
    t.as_ref().map(|t| {
        Tensor::from_slice(t.data(), t.shape(), &candle_core::Device::Cpu).expect("tensor")
    })
}

/// Trains nothing, but runs train-mode passes so the batch-norm running statistics move away
/// from their initial values, then saves a model directory.
fn saved_model(kind: ModelKind, dir: &Path, rng: &mut ChaCha8Rng) -> Network {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &candle_core::Device::Cpu);
    let network = Network::new(&arch(kind), vb).expect("network");
    seed_weights(&varmap, rng);
    for _ in 0..3 {
        let b = batch(kind, 8, rng);
        network
            .forward(
                to_candle(&b.images).as_ref(),
                to_candle(&b.tabular).as_ref(),
                true,
            )
            .expect("train pass");
    }
    varmap.save(dir.join(WEIGHTS_FILE)).expect("save weights");
    let mut artifacts = ModelArtifacts {
        dir: dir.to_path_buf(),
        manifest: manifest(kind),
    };
    artifacts.record_weights_digest().expect("digest");
    std::fs::write(
        dir.join(MANIFEST_FILE),
        artifacts.manifest.to_toml().expect("toml"),
    )
    .expect("manifest");
    network
}

/// Redraws every learned value from `rng`, because candle's initialisers draw from an unseeded
/// generator and a test must see the same network on every run. Weights are uniform within
/// 1/sqrt(fan-in), biases within 0.1, batch-norm scales near 1; running statistics are left to
/// the train passes.
fn seed_weights(varmap: &VarMap, rng: &mut ChaCha8Rng) {
    let vars = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        if name.contains("running_") {
            continue;
        }
        let var = &vars[name];
        let dims = var.dims().to_vec();
        let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
        let (centre, half_width) = if dims.len() >= 2 {
            (0.0, 1.0 / (fan_in as f32).sqrt())
        } else if name.ends_with("bn.weight") {
            (1.0, 0.1)
        } else {
            (0.0, 0.1)
        };
        let n = dims.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| centre + half_width * (2.0 * rng.random::<f32>() - 1.0))
            .collect();
        let t = Tensor::from_vec(values, dims, &candle_core::Device::Cpu).expect("tensor");
        var.set(&t).expect("set var");
    }
}

fn logits(network: &Network, b: &Batch) -> Vec<f32> {
    let out = network
        .forward(
            to_candle(&b.images).as_ref(),
            to_candle(&b.tabular).as_ref(),
            false,
        )
        .expect("forward");
    out.flatten_all().and_then(|t| t.to_vec1()).expect("vec")
}

#[test]
fn saved_weights_reload_to_the_same_predictions_for_every_kind() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for kind in [ModelKind::Image, ModelKind::Tabular, ModelKind::Fused] {
        let dir = tempfile::tempdir().expect("tempdir");
        let network = saved_model(kind, dir.path(), &mut rng);
        let artifacts = ModelArtifacts::open(dir.path()).expect("artifacts");
        let mut backend = CandleBackend::load(&artifacts, Device::Cpu).expect("load");
        assert_eq!(backend.info().name, "candle");
        let b = batch(kind, 5, &mut rng);
        let got = backend.predict(&b).expect("predict");
        assert_eq!(got.shape(), &[5, 3]);
        let want = logits(&network, &b);
        for (g, w) in got.data().iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "{kind}: {g} vs {w}"
            );
        }
        // Batching does not change a sample's result (eval-mode batch-norm).
        for i in 0..5 {
            let single = Batch {
                images: b.images.as_ref().map(|t| {
                    osteo_core::Tensor::new(vec![1, 2, H, H], t.row(i).expect("row").to_vec())
                        .expect("t")
                }),
                tabular: b.tabular.as_ref().map(|t| {
                    osteo_core::Tensor::new(vec![1, F], t.row(i).expect("row").to_vec()).expect("t")
                }),
            };
            let one = backend.predict(&single).expect("predict one");
            for (a, b) in one.data().iter().zip(got.row(i).expect("row")) {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "{kind}: batch {b} vs single {a}"
                );
            }
        }
    }
}

#[test]
fn gradcam_alpha_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let dir = tempfile::tempdir().expect("tempdir");
    saved_model(ModelKind::Fused, dir.path(), &mut rng);
    let mut backend = CandleBackend::load(
        &ModelArtifacts::open(dir.path()).expect("artifacts"),
        Device::Cpu,
    )
    .expect("load");
    let sample = batch(ModelKind::Fused, 1, &mut rng);
    let network = backend.network().clone();
    let images = to_candle(&sample.images).expect("images");
    let tabular = to_candle(&sample.tabular);
    let a = network
        .image_activation(&images, false)
        .expect("activation");
    let (_, k, h, w) = a.dims4().expect("4d");
    let explanation = backend.explain(&sample).expect("explain");
    let predicted = backend.predict(&sample).expect("predict");
    // Explain runs the autograd graph, predict the folded CPU path: equal within rounding.
    for (e, p) in explanation.logits.iter().zip(predicted.data()) {
        assert!(
            (e - p).abs() <= 1e-5 * (1.0 + p.abs()),
            "one pass gives the prediction too: {e} vs {p}"
        );
    }
    for class in Grade::ALL {
        let parts = explanation.parts(class).expect("parts");
        assert_eq!(parts.activation.shape(), &[k, h, w]);
        assert_eq!(parts.alpha.len(), k);
        assert!(
            parts.alpha.iter().any(|a| a.abs() > 1e-4),
            "{class}: all-zero alpha would make the check vacuous"
        );
        let eps = 1e-3f32;
        let at = |t: &Tensor| -> f32 {
            let l = network.head_from(Some(t), tabular.as_ref()).expect("head");
            l.flatten_all()
                .and_then(|v| v.to_vec1::<f32>())
                .expect("vec")[class.index()]
        };
        let centre = at(&a);
        let mut checked = 0;
        for ch in 0..k {
            let mut bump = vec![0f32; k * h * w];
            bump[ch * h * w..(ch + 1) * h * w].fill(eps);
            let bump =
                Tensor::from_vec(bump, (1, k, h, w), &candle_core::Device::Cpu).expect("bump");
            let plus = at(&(&a + &bump).expect("plus"));
            let minus = at(&(&a - &bump).expect("minus"));
            // The weights are randomly initialised: a step that crosses a ReLU kink of the head
            // has different one-sided slopes and no derivative to compare with; skip it.
            let (right, left) = ((plus - centre) / eps, (centre - minus) / eps);
            if (right - left).abs() > 1e-2 * right.abs().max(left.abs()) + 1e-3 {
                continue;
            }
            checked += 1;
            // Shifting a whole channel by eps moves the logit by eps * sum(dlogit/dA) = eps*h*w*alpha.
            let fd = (plus - minus) / (2.0 * eps) / (h * w) as f32;
            let alpha = parts.alpha[ch];
            assert!(
                (fd - alpha).abs() <= 1e-3 + 1e-2 * alpha.abs(),
                "{class} channel {ch}: alpha {alpha} vs finite difference {fd}"
            );
        }
        assert!(
            checked * 2 >= k,
            "{class}: only {checked} of {k} channels were away from a ReLU kink"
        );
    }
}

#[test]
fn tabular_gradients_match_finite_differences() {
    for kind in [ModelKind::Fused, ModelKind::Tabular] {
        tabular_gradients_of(kind);
    }
}

fn tabular_gradients_of(kind: ModelKind) {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let dir = tempfile::tempdir().expect("tempdir");
    saved_model(kind, dir.path(), &mut rng);
    let mut backend = CandleBackend::load(
        &ModelArtifacts::open(dir.path()).expect("artifacts"),
        Device::Cpu,
    )
    .expect("load");
    let sample = batch(kind, 1, &mut rng);
    let explanation = backend.explain(&sample).expect("explain");
    let tabular = sample.tabular.clone().expect("tabular");
    let features = tabular.data().len();
    assert_eq!(explanation.tabular_gradients.len(), 3);
    let logit = |backend: &mut CandleBackend, x: Vec<f32>, class: usize| -> f32 {
        let mut b = sample.clone();
        b.tabular = Some(osteo_core::Tensor::new(vec![1, features], x).expect("tensor"));
        backend.predict(&b).expect("predict").data()[class]
    };
    let eps = 1e-3f32;
    let mut checked = 0;
    for class in 0..3 {
        let grad = &explanation.tabular_gradients[class];
        assert_eq!(grad.len(), features);
        for i in 0..features {
            let mut plus = tabular.data().to_vec();
            plus[i] += eps;
            let mut minus = tabular.data().to_vec();
            minus[i] -= eps;
            let centre = logit(&mut backend, tabular.data().to_vec(), class);
            let (p, m) = (
                logit(&mut backend, plus, class),
                logit(&mut backend, minus, class),
            );
            // A step across a ReLU kink has no derivative to compare with: skip it.
            let (right, left) = ((p - centre) / eps, (centre - m) / eps);
            if (right - left).abs() > 1e-2 * right.abs().max(left.abs()) + 1e-3 {
                continue;
            }
            checked += 1;
            let fd = (p - m) / (2.0 * eps);
            assert!(
                (fd - grad[i]).abs() <= 1e-3 + 1e-2 * grad[i].abs(),
                "class {class} feature {i}: gradient {} vs finite difference {fd}",
                grad[i]
            );
        }
    }
    assert!(
        checked * 2 >= 3 * features,
        "{kind}: only {checked} features away from a kink"
    );
    assert_eq!(
        explanation.activation.is_some(),
        kind == ModelKind::Fused,
        "{kind}: a Grad-CAM activation only with an image"
    );
}

#[test]
fn bad_weights_and_bad_input_are_clear_errors() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let dir = tempfile::tempdir().expect("tempdir");
    saved_model(ModelKind::Image, dir.path(), &mut rng);
    // The weights of an image model under a fused manifest: the tabular parameters are missing.
    let mut fused = ModelArtifacts {
        dir: dir.path().to_path_buf(),
        manifest: manifest(ModelKind::Fused),
    };
    fused.record_weights_digest().expect("digest");
    std::fs::write(
        dir.path().join(MANIFEST_FILE),
        fused.manifest.to_toml().expect("toml"),
    )
    .expect("write");
    let err = CandleBackend::load(
        &ModelArtifacts::open(dir.path()).expect("artifacts"),
        Device::Cpu,
    )
    .expect_err("missing");
    assert!(
        matches!(&err, BackendError::Load(m) if m.contains("tabular.fc0.weight")),
        "{err}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    saved_model(ModelKind::Tabular, dir.path(), &mut rng);
    let mut backend = CandleBackend::load(
        &ModelArtifacts::open(dir.path()).expect("artifacts"),
        Device::Cpu,
    )
    .expect("load");
    let err = backend
        .explain(&batch(ModelKind::Tabular, 2, &mut rng))
        .expect_err("two samples");
    assert!(
        matches!(&err, BackendError::InvalidInput(m) if m.contains("one sample")),
        "{err}"
    );
    let wrong = Batch {
        images: None,
        tabular: Some(random(&[2, F + 1], &mut rng)),
    };
    assert!(matches!(
        backend.predict(&wrong),
        Err(BackendError::InvalidInput(_))
    ));
    let none = Batch {
        images: None,
        tabular: None,
    };
    assert!(matches!(
        backend.predict(&none),
        Err(BackendError::InvalidInput(_))
    ));
    #[cfg(not(feature = "cuda"))]
    assert!(matches!(
        CandleBackend::load(
            &ModelArtifacts::open(dir.path()).expect("artifacts"),
            Device::Cuda(0)
        ),
        Err(BackendError::Device(_))
    ));
}
