//! The libtorch backend on the shipped models: it reports itself, refuses bad input with the
//! right error kind, and a CUDA device it cannot use is a device error, not a crash.

use osteo_backend_tch::TchBackend;
use osteo_core::{Backend, BackendError, Batch, Device, LoadBackend, ModelArtifacts, Tensor};
use std::path::Path;

fn shipped(name: &str) -> ModelArtifacts {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models")
        .join(name);
    ModelArtifacts::open(&dir).expect("shipped model")
}

#[test]
fn bad_input_gets_the_right_error_kind() {
    let mut tabular = TchBackend::load(&shipped("osteo-tabular-v1"), Device::Cpu).expect("load");
    let info = tabular.info();
    assert_eq!((info.name.as_str(), info.device), ("tch", Device::Cpu));
    assert_eq!(info.library_version, "libtorch 2.11.0");
    let ok = Batch {
        images: None,
        tabular: Some(Tensor::new(vec![2, 13], vec![0.1; 26]).expect("tensor")),
    };
    let logits = tabular.predict(&ok).expect("predict");
    assert_eq!(logits.shape(), [2, 3]);
    let wrong = Batch {
        images: None,
        tabular: Some(Tensor::new(vec![1, 12], vec![0.0; 12]).expect("tensor")),
    };
    assert!(matches!(
        tabular.predict(&wrong),
        Err(BackendError::InvalidInput(_))
    ));
    assert!(matches!(
        tabular.explain(&ok),
        Err(BackendError::InvalidInput(m)) if m.contains("one sample")
    ));
    // One sample: the clinical features' gradients of every class, no Grad-CAM parts.
    let one = Batch {
        images: None,
        tabular: Some(Tensor::new(vec![1, 13], vec![0.1; 13]).expect("tensor")),
    };
    let e = tabular.explain(&one).expect("explain");
    assert!(e.activation.is_none() && e.alphas.is_empty());
    assert_eq!(e.tabular_gradients.len(), 3);
    assert!(e.tabular_gradients.iter().all(|g| g.len() == 13));

    let mut image = TchBackend::load(&shipped("osteo-image-v1"), Device::Cpu).expect("load");
    let two = Batch {
        images: Some(Tensor::new(vec![2, 2, 128, 128], vec![0.5; 2 * 2 * 128 * 128]).expect("t")),
        tabular: None,
    };
    assert_eq!(image.predict(&two).expect("predict").shape(), [2, 3]);
    assert!(matches!(
        image.explain(&two),
        Err(BackendError::InvalidInput(m)) if m.contains("one sample")
    ));
}

#[test]
fn weights_that_do_not_fit_are_a_load_error_naming_the_parameter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = shipped("osteo-tabular-v1");
    std::fs::copy(src.dir.join("model.toml"), dir.path().join("model.toml")).expect("copy");
    // The image model's weights under the tabular model's manifest.
    std::fs::copy(
        shipped("osteo-image-v1").weights_path(),
        dir.path().join("weights.safetensors"),
    )
    .expect("copy");
    let mut artifacts = ModelArtifacts::open(dir.path()).expect("open");
    match TchBackend::load(&artifacts, Device::Cpu) {
        Err(BackendError::Load(m)) => assert!(m.contains("weights_blake3"), "{m}"),
        other => panic!("expected the digest check to refuse, got {other:?}"),
    }
    // Past the digest (as if the manifest had been re-recorded), the parameter check names it.
    artifacts.record_weights_digest().expect("digest");
    match TchBackend::load(&artifacts, Device::Cpu) {
        Err(BackendError::Load(m)) => assert!(m.contains("tabular.fc0.weight"), "{m}"),
        other => panic!("expected a load error, got {other:?}"),
    }
}

#[test]
fn a_cuda_device_is_used_or_refused_as_a_device_error() {
    match TchBackend::load(&shipped("osteo-image-v1"), Device::Cuda(0)) {
        // A machine with libtorch_cuda.so reachable and a GPU.
        Ok(b) => assert_eq!(b.info().device, Device::Cuda(0)),
        Err(BackendError::Device(m)) => assert!(m.starts_with("cuda:0: "), "{m}"),
        Err(other) => panic!("expected a device error, got {other}"),
    }
}
