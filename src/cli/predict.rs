//! `osteo predict`: local inference without a server.

use super::clinical::ClinicalArgs;
use anyhow::Context;
use clap::Args;
use osteo_core::{Batch, ClinicalVariables, Device, Grade, ModelArtifacts, ModelManifest};
use osteo_dicom::{DicomSource, IngestOptions, View};
use serde_json::json;
use std::path::{Path, PathBuf};

/// Arguments of `osteo predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// A model directory (model.toml + weights.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// The CT study: a DICOM file or directory (required by image and fused models).
    #[arg(long)]
    dicom: Option<PathBuf>,
    #[command(flatten)]
    clinical: ClinicalArgs,
    /// Backend to run the model on: candle or ort.
    #[arg(long, default_value = "ort")]
    backend: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Also write the Grad-CAM overlay of the predicted grade as PNG (image and fused models).
    #[arg(long, value_name = "FILE")]
    explain_png: Option<PathBuf>,
    /// Also write the result as a DICOM Comprehensive SR in the study (needs --dicom).
    #[arg(long, value_name = "FILE")]
    sr_out: Option<PathBuf>,
    /// Also write the result as a FHIR R4 Bundle (JSON): referencing the study with --dicom.
    #[arg(long, value_name = "FILE")]
    fhir_out: Option<PathBuf>,
}

/// A study's model input, read locally.
pub struct LocalInput {
    /// The model's view of the study (image and fused models).
    pub view: Option<View>,
    /// The one-sample batch.
    pub batch: Batch,
    /// The study the input came from, when one was read.
    pub source: Option<osteo_dicom::SourceStudy>,
    /// The vertebral attenuation of the study (models that read CT, when measured).
    pub attenuation: Option<osteo_dicom::attenuation::Attenuation>,
}

/// The one-sample model input of a study (ingested and viewed when the model reads CT) and the
/// clinical flags, as a served model would receive it; the view is returned for Grad-CAM.
pub fn local_input(
    m: &ModelManifest,
    dicom: Option<&Path>,
    clinical: &ClinicalArgs,
    wants_study: bool,
) -> anyhow::Result<LocalInput> {
    // The study is read when the model reads CT, when its header supplies the clinical
    // variables, or when the caller wants it.
    let ingested = if m.view.is_some() || clinical.reads_header() || wants_study {
        let path = dicom.with_context(|| match &m.view {
            Some(_) => format!("model {} reads CT: pass --dicom PATH", m.name),
            None if clinical.reads_header() => {
                "--clinical-from-dicom reads the study's header: pass --dicom PATH".into()
            }
            None => "--sr-out writes the result into the study: pass --dicom PATH".into(),
        })?;
        Some(osteo_dicom::ingest(
            DicomSource::Path(path.to_path_buf()),
            &IngestOptions::default(),
        )?)
    } else {
        None
    };
    let clinical =
        ClinicalVariables::validate(clinical.input(ingested.as_ref().map(|i| &i.demographics))?)?;
    let view = match (&m.view, &ingested) {
        // The model's quality gate first: a study it cannot grade is refused, not graded.
        (Some(spec), Some(ingested)) => Some(osteo_pipeline::gated_view(
            &osteo_dicom::assess(&ingested.volume, spec),
            &ingested.volume,
            spec,
        )?),
        _ => None,
    };
    // As the server does: the vertebrae of a study the gate passed.
    let attenuation = match (&view, &ingested) {
        (Some(_), Some(i)) => osteo_pipeline::attenuation(&i.volume),
        _ => None,
    };
    let sample = osteo_pipeline::input(m, view.as_ref(), Some(&clinical), attenuation.as_ref())?;
    let batch = Batch::stack(&m.arch, &[sample])?;
    Ok(LocalInput {
        view,
        batch,
        source: ingested.map(|i| i.source),
        attenuation,
    })
}

/// Runs `osteo predict`.
pub fn run(args: PredictArgs) -> anyhow::Result<()> {
    let artifacts = ModelArtifacts::open(&args.model)?;
    let m = artifacts.manifest.clone();
    // The backend loads (ONNX Runtime's library and session: tens of milliseconds) while the
    // study is read; a bad study is reported before a backend problem.
    let (input, backend) = std::thread::scope(|scope| {
        let loading = scope.spawn(|| osteo_backends::load(&args.backend, &artifacts, Device::Cpu));
        let input = local_input(
            &m,
            args.dicom.as_deref(),
            &args.clinical,
            args.sr_out.is_some() || args.fhir_out.is_some(),
        );
        let backend = loading.join();
        (input, backend)
    });
    let LocalInput {
        view,
        batch,
        source,
        attenuation,
    } = input?;
    let mut backend = match backend {
        Ok(loaded) => loaded?,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    let explain = match &args.explain_png {
        Some(png) => Some((
            png,
            view.as_ref()
                .with_context(|| format!("model {} has no image branch to explain", m.name))?,
        )),
        None => None,
    };
    // With --explain-png the prediction and the Grad-CAM come from one backend call.
    let start = std::time::Instant::now();
    let (logits, explanation) = match explain {
        Some(_) => {
            let e = backend.explain(&batch)?;
            (e.logits.clone(), Some(e))
        }
        None => (backend.predict(&batch)?.into_data(), None),
    };
    let latency_ms = start.elapsed().as_secs_f64() * 1e3;
    let graded = osteo_pipeline::grade(m.decision.as_ref(), &logits)?;
    let (grade, probs) = (graded.grade, graded.probabilities);
    if let (Some((png, v)), Some(e)) = (explain, &explanation) {
        let map = osteo_pipeline::gradcam(e, grade, v)?;
        let bytes = osteo_dicom::render::overlay_png(v, &map.values, 4)?;
        std::fs::write(png, bytes).with_context(|| format!("cannot write {}", png.display()))?;
    }
    let info = backend.info();
    let device = info.device.to_string();
    let by = osteo_pipeline::Producer {
        manifest: &m,
        backend: &info.name,
        device: &device,
    };
    if let (Some(path), Some(source)) = (&args.sr_out, &source) {
        let bytes = osteo_pipeline::structured_report(source, by, &graded, attenuation.as_ref())?;
        std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.fhir_out {
        let bytes =
            osteo_pipeline::fhir::bundle_json(source.as_ref(), by, &graded, attenuation.as_ref());
        std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.json {
        let mut out = json!({
            "model": m.name,
            "model_version": m.version,
            "weights_blake3": m.weights_blake3,
            "kind": m.kind.name(),
            "backend": args.backend,
            "device": device,
            "grade": grade.name(),
            "probabilities": {"normal": probs[0], "osteopenia": probs[1], "osteoporosis": probs[2]},
            "latency_ms": latency_ms,
        });
        osteo_client::report::merge_decision(&mut out, graded.decision.as_ref());
        osteo_client::report::merge_attenuation(
            &mut out,
            attenuation
                .as_ref()
                .map(osteo_client::report::Vertebrae::of),
        );
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!("{} ({}) on {}: {}", m.name, m.kind, args.backend, grade);
        for g in Grade::ALL {
            println!("  {:<13} {:.3}", g.name(), probs[g.index()]);
        }
        if let Some(d) = &graded.decision {
            println!("{}", osteo_client::report::decision_line(d));
        }
        if let Some(a) = &attenuation {
            println!(
                "{}",
                osteo_client::report::vertebrae_line(&osteo_client::report::Vertebrae::of(a))
            );
        }
    }
    Ok(())
}
