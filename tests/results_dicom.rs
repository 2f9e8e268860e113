//! Results as DICOM: `osteo predict --sr-out` writes a Comprehensive SR into the source study,
//! checked by dciodvfy (no errors), read back by dcmtk's dsrdump and by pydicom (grade code,
//! probabilities, patient and study copied, new series, the graded series as evidence).

mod common;

use std::path::Path;
use std::process::Command;

/// Runs a command and returns (success, stdout + stderr).
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("run");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn predict_writes_a_valid_structured_report_in_the_source_study() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = common::study(&dir.path().join("study"));
    let study = files[0].parent().expect("dir");
    let sr = dir.path().join("sr.dcm");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (ok, out) = run(Command::new(env!("CARGO_BIN_EXE_osteo"))
        .args(["predict", "--json", "--model"])
        .arg(root.join("models/osteo-fused-v1"))
        .arg("--dicom")
        .arg(study)
        .args(common::CLINICAL_FLAGS)
        .arg("--sr-out")
        .arg(&sr));
    assert!(ok, "{out}");
    let result: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");

    // dciodvfy: the Comprehensive SR IOD with no error (warnings name the private scheme).
    let (_, report) = run(Command::new("dciodvfy").arg(&sr));
    assert!(report.contains("ComprehensiveSR"), "{report}");
    assert!(!report.contains("Error"), "{report}");

    // dsrdump reads the tree.
    let (ok, dump) = run(Command::new("dsrdump").arg("+Pl").arg(&sr));
    assert!(ok, "{dump}");
    assert!(dump.contains("Imaging Measurement Report"), "{dump}");
    assert!(dump.contains("\"Finding\")=("), "{dump}");
    assert!(
        dump.contains("Algorithm Name\")=\"osteo-fused-v1\""),
        "{dump}"
    );
    assert!(dump.contains("not for diagnosis"), "{dump}");

    // pydicom: codes, values, copied modules, references.
    let python = root.join(".cache/venv/bin/python");
    let (ok, read) = run(Command::new(python).arg("-c").arg(
        r#"
import json, sys, pydicom
sr = pydicom.dcmread(sys.argv[1])
src = [pydicom.dcmread(f) for f in sys.argv[2:]]
def walk(items, out):
    for it in items:
        out.append(it)
        walk(getattr(it, "ContentSequence", []), out)
    return out
items = walk(sr.ContentSequence, [])
name = lambda it: it.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in it else ""
finding = next(it for it in items if name(it) == "Finding").ConceptCodeSequence[0]
probs = {name(it): float(it.MeasuredValueSequence[0].NumericValue) for it in items if it.ValueType == "NUM"}
ev = sr.CurrentRequestedProcedureEvidenceSequence[0]
refs = sorted(r.ReferencedSOPInstanceUID for r in ev.ReferencedSeriesSequence[0].ReferencedSOPSequence)
print(json.dumps({
  "sop_class": sr.SOPClassUID,
  "modality": sr.Modality,
  "finding": [finding.CodeValue, finding.CodingSchemeDesignator, finding.CodeMeaning],
  "probabilities": probs,
  "patient_id_copied": sr.PatientID == src[0].PatientID,
  "patient_name_copied": str(sr.PatientName) == str(src[0].PatientName),
  "same_study": sr.StudyInstanceUID == src[0].StudyInstanceUID == ev.StudyInstanceUID,
  "new_series": sr.SeriesInstanceUID != src[0].SeriesInstanceUID,
  "evidence_series": ev.ReferencedSeriesSequence[0].SeriesInstanceUID == src[0].SeriesInstanceUID,
  "evidence_complete": refs == sorted(s.SOPInstanceUID for s in src),
  "template": sr.ContentTemplateSequence[0].TemplateIdentifier,
}))
"#,
    ).arg(&sr).args(&files));
    assert!(ok, "{read}");
    let v: serde_json::Value = serde_json::from_str(read.trim()).expect("JSON");
    assert_eq!(v["sop_class"], "1.2.840.10008.5.1.4.1.1.88.33");
    assert_eq!(v["modality"], "SR");
    let grade = result["grade"].as_str().expect("grade");
    let want = match grade {
        "normal" => serde_json::json!(["BMD-NORMAL", "99OSTEO", "Normal bone density"]),
        "osteopenia" => serde_json::json!(["312894000", "SCT", "Osteopenia"]),
        _ => serde_json::json!(["64859006", "SCT", "Osteoporosis"]),
    };
    assert_eq!(v["finding"], want, "{v}");
    for (k, key) in [
        ("Probability of normal bone density", "normal"),
        ("Probability of osteopenia", "osteopenia"),
        ("Probability of osteoporosis", "osteoporosis"),
    ] {
        let got = v["probabilities"][k].as_f64().expect("probability");
        let expected = result["probabilities"][key].as_f64().expect("probability");
        assert!((got - expected).abs() <= 1e-6, "{k}: {got} vs {expected}");
    }
    for key in [
        "patient_id_copied",
        "patient_name_copied",
        "same_study",
        "new_series",
        "evidence_series",
        "evidence_complete",
    ] {
        assert_eq!(v[key], true, "{key}: {v}");
    }
    assert_eq!(v["template"], "1500");
}
