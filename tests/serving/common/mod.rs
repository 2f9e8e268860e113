//! Shared harness of the server tests: a real `osteo serve` process on loopback ports, a phantom
//! study with known patient identifiers, upload messages and a /metrics reader.

pub mod auth;
pub mod inproc;
pub mod pki;

use osteo_proto::v1 as pb;
use osteo_proto::v1::osteo_service_client::OsteoServiceClient;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Identifiers written into the test study; they must never appear in the server's output.
pub const PATIENT_NAME: &str = "DOE^JANE^QUIETLY";
pub const PATIENT_ID: &str = "MRN-7731-XK";

/// The clinical values of [`clinical`] (without the smoker flag) as CLI flags.
pub const CLINICAL_FLAGS: [&str; 8] = [
    "--age",
    "71",
    "--sex",
    "F",
    "--height-cm",
    "158",
    "--weight-kg",
    "52",
];

/// `[[models]]` entries for the shipped `models` (name, extra keys of the entry).
pub fn models_toml(models: &[(&str, &str)]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    models
        .iter()
        .map(|(name, keys)| {
            let path = root.join("models").join(name);
            format!("[[models]]\npath = \"{}\"\n{keys}\n", path.display())
        })
        .collect()
}

/// A copy of the shipped model `name` in `dest` (model.toml, weights, ONNX export).
pub fn copy_model(name: &str, dest: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(name);
    std::fs::create_dir_all(dest).expect("mkdir");
    for f in ["model.toml", "weights.safetensors", "model.onnx"] {
        std::fs::copy(src.join(f), dest.join(f)).expect("copy");
    }
}

/// A client of `url` with 64 MiB message limits.
pub async fn client(url: &str) -> OsteoServiceClient<Channel> {
    OsteoServiceClient::connect(url.to_string())
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// A running `osteo serve` with its captured output.
pub struct Server {
    child: Child,
    /// gRPC URL.
    pub url: String,
    metrics: String,
    /// Base URL of the Open Inference Protocol REST endpoints.
    pub rest: String,
    output: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts the server with the shipped fused and tabular models (default backends) plus
    /// `extra` TOML sections.
    pub fn start(extra: &str) -> Self {
        Self::start_with(extra, &[("osteo-fused-v1", ""), ("osteo-tabular-v1", "")])
    }

    /// Starts the server with `extra` TOML sections and the shipped `models`, each with extra
    /// keys of its `[[models]]` entry (e.g. `backends = ["candle"]`).
    pub fn start_with(extra: &str, models: &[(&str, &str)]) -> Self {
        Self::spawn(extra, models, None)
    }

    /// [`Server::start`] with at most `files` open file descriptors (`ulimit -n`).
    pub fn start_limited(extra: &str, files: u32) -> Self {
        Self::spawn(
            extra,
            &[("osteo-fused-v1", ""), ("osteo-tabular-v1", "")],
            Some(files),
        )
    }

    /// Starts `osteo serve` on ports the kernel picks (port 0, read back from its log: no
    /// port races) and waits until it reports SERVING.
    fn spawn(extra: &str, models: &[(&str, &str)], files: Option<u32>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // Keys of a leading [server] section in `extra` join the harness's own section.
        let (server_keys, rest) = match extra.strip_prefix("[server]\n") {
            Some(tail) => match tail.find("\n[") {
                Some(end) => (&tail[..end + 1], &tail[end + 1..]),
                None => (tail, ""),
            },
            None => ("", extra),
        };
        // Tests stop at once unless they test draining.
        let drain = if server_keys.contains("drain_delay_s") {
            ""
        } else {
            "drain_delay_s = 0\n"
        };
        // The harness's default model, unless the test names its own.
        let default_model = if server_keys.contains("default_model") {
            ""
        } else {
            "default_model = \"osteo-fused-v1\"\n"
        };
        let mut config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
             http_listen = \"127.0.0.1:0\"\n{default_model}{drain}{server_keys}\n{rest}\n"
        );
        config.push_str(&models_toml(models));
        let file = dir.path().join("osteo.toml");
        std::fs::write(&file, config).expect("config");
        let bin = env!("CARGO_BIN_EXE_osteo");
        let mut command = match files {
            None => Command::new(bin),
            Some(n) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), bin]);
                c
            }
        };
        let mut child = command
            .args(["serve", "--config"])
            .arg(&file)
            .env("OSTEO__TELEMETRY__LOG_LEVEL", "debug")
            // Freed memory goes back to the OS at once, so the memory tests measure what the
            // server holds rather than what mimalloc keeps cached for reuse (docs/security.md: Under
            // hostile load).
            .env("MIMALLOC_PURGE_DELAY", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start osteo serve");
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let sink = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut s = sink.lock().expect("output");
                    s.push_str(&line);
                    s.push('\n');
                }
            });
        }
        let mut server = Server {
            child,
            url: String::new(),
            metrics: String::new(),
            rest: String::new(),
            output,
            _dir: dir,
        };
        server.wait_until("listening on http://");
        let out = server.output();
        let after = |marker: &str| -> String {
            let Some(at) = out.find(marker) else {
                return String::new();
            };
            out[at + marker.len()..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect()
        };
        server.url = format!("http://{}", after("listening on http://"));
        server.metrics = format!("http://{}/metrics", after("metrics at http://"));
        server.rest = format!("http://{}", after("REST at http://"));
        server.wait_until("SERVING");
        server
    }

    pub fn wait_until(&self, text: &str) {
        let start = Instant::now();
        while !self.output().contains(text) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "server never logged {text:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A `/proc/PID/status` figure of the server process in bytes (`VmRSS`, `VmHWM`, ...).
    pub fn memory(&self, field: &str) -> u64 {
        proc_status_bytes(&format!("/proc/{}/status", self.child.id()), field)
    }

    pub fn output(&self) -> String {
        self.output.lock().expect("output").clone()
    }

    pub async fn client(&self) -> OsteoServiceClient<Channel> {
        client(&self.url).await
    }

    /// The Prometheus exposition text.
    pub fn scrape(&self) -> String {
        let addr = self
            .metrics
            .trim_start_matches("http://")
            .trim_end_matches("/metrics");
        let mut stream = std::net::TcpStream::connect(addr).expect("metrics port");
        use std::io::{Read, Write};
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .expect("request");
        let mut body = String::new();
        stream.read_to_string(&mut body).expect("response");
        body
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal_term();
        self.wait_exit()
    }

    /// Sends SIGTERM.
    pub fn signal_term(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits (at most 30 s) for the process to exit.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "server did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sum of a metric's samples whose label set contains every `labels` pair.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A phantom CT series with the known identifiers; returns its files.
pub fn study(dir: &Path) -> Vec<PathBuf> {
    use osteo_phantom::{PhantomSpec, SeriesIdentity, TScoreModel, phantom_volume, write_series};
    let patient = TScoreModel::default().patient(41, 3);
    let (_, volume) = phantom_volume(&patient, &PhantomSpec::default());
    let identity = SeriesIdentity {
        patient_name: PATIENT_NAME.into(),
        patient_id: PATIENT_ID.into(),
        ..SeriesIdentity::for_patient(&patient)
    };
    write_series(&volume, &identity, dir).expect("write series")
}

pub fn clinical() -> pb::ClinicalVariables {
    pb::ClinicalVariables {
        age_years: 71.0,
        sex: pb::Sex::Female as i32,
        height_cm: 158.0,
        weight_kg: 52.0,
        smoker: Some(true),
        ..Default::default()
    }
}

/// The upload stream of `files` in chunks of `chunk` bytes (the client library's framing).
pub fn upload_messages(files: &[Vec<u8>], chunk: usize) -> Vec<pb::UploadStudyRequest> {
    osteo_client::upload::messages(files, chunk)
}

/// The GradeStudy stream of `action` on `files` in chunks of `chunk` bytes (the client
/// library's framing).
pub fn grade_messages(
    action: pb::grade_action::Action,
    files: &[Vec<u8>],
    chunk: usize,
) -> Vec<pb::GradeStudyRequest> {
    let action = pb::GradeAction {
        action: Some(action),
    };
    osteo_client::upload::grade_messages(action, files, chunk)
}

pub fn by_handle(h: &str) -> Option<pb::StudyRef> {
    Some(pb::StudyRef {
        source: Some(pb::study_ref::Source::Study(h.to_string())),
    })
}

pub fn read_all(paths: &[PathBuf]) -> Vec<Vec<u8>> {
    paths
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect()
}

/// Uploads `files` in chunks of `chunk` bytes; returns the study handle.
pub async fn upload(
    client: &mut OsteoServiceClient<Channel>,
    files: &[Vec<u8>],
    chunk: usize,
) -> String {
    client
        .upload_study(tokio_stream::iter(upload_messages(files, chunk)))
        .await
        .expect("upload")
        .into_inner()
        .summary
        .expect("summary")
        .study
}

/// The files as an inline study reference.
pub fn inline(files: &[Vec<u8>]) -> Option<pb::StudyRef> {
    Some(pb::StudyRef {
        source: Some(pb::study_ref::Source::Inline(pb::InlineStudy {
            files: files.to_vec(),
            series_instance_uid: String::new(),
        })),
    })
}

/// A CT series of `slices` RLE Lossless slices of `size` x `size` zeros, 16-bit: about 8 KB a
/// slice on the wire that decodes to `size * size * 4` bytes of HU (a decompression bomb).
pub fn rle_zero_series(slices: usize, size: u16) -> Vec<Vec<u8>> {
    use dicom_core::value::{C, PixelFragmentSequence, PrimitiveValue, Value};
    use dicom_core::{DataElement, VR};
    use dicom_dictionary_std::{tags, uids};
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
    let pixels = usize::from(size) * usize::from(size);
    // One PackBits segment of zeros: runs of 128 (control byte -127, value 0), then the rest.
    let mut segment = Vec::new();
    let mut left = pixels;
    while left > 0 {
        let run = left.min(128);
        segment.push((1i16 - run as i16) as i8 as u8);
        segment.push(0);
        left -= run;
    }
    if segment.len() % 2 == 1 {
        segment.push(0);
    }
    let mut frame = vec![0u8; 64];
    frame[0..4].copy_from_slice(&2u32.to_le_bytes());
    frame[4..8].copy_from_slice(&64u32.to_le_bytes());
    frame[8..12].copy_from_slice(&(64 + segment.len() as u32).to_le_bytes());
    frame.extend_from_slice(&segment);
    frame.extend_from_slice(&segment);
    let text = |tag, vr, v: &str| DataElement::new(tag, vr, PrimitiveValue::from(v));
    let us = |tag, v: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(v));
    (0..slices)
        .map(|k| {
            let sop = format!("2.25.99{k}");
            let elements: Vec<DataElement<InMemDicomObject>> = vec![
                text(tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE),
                text(tags::SOP_INSTANCE_UID, VR::UI, &sop),
                text(tags::MODALITY, VR::CS, "CT"),
                text(tags::PATIENT_NAME, VR::PN, PATIENT_NAME),
                text(tags::PATIENT_ID, VR::LO, PATIENT_ID),
                text(tags::SLICE_THICKNESS, VR::DS, "1"),
                text(tags::STUDY_INSTANCE_UID, VR::UI, "2.25.4242"),
                text(tags::SERIES_INSTANCE_UID, VR::UI, "2.25.4243"),
                text(tags::INSTANCE_NUMBER, VR::IS, &(k + 1).to_string()),
                DataElement::new(
                    tags::IMAGE_POSITION_PATIENT,
                    VR::DS,
                    PrimitiveValue::Strs(C::from_vec(vec!["0".into(), "0".into(), k.to_string()])),
                ),
                DataElement::new(
                    tags::IMAGE_ORIENTATION_PATIENT,
                    VR::DS,
                    PrimitiveValue::Strs(
                        ["1", "0", "0", "0", "1", "0"]
                            .iter()
                            .map(|s| s.to_string())
                            .collect(),
                    ),
                ),
                us(tags::SAMPLES_PER_PIXEL, 1),
                text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
                us(tags::ROWS, size),
                us(tags::COLUMNS, size),
                DataElement::new(
                    tags::PIXEL_SPACING,
                    VR::DS,
                    PrimitiveValue::Strs(C::from_vec(vec!["1".into(), "1".into()])),
                ),
                us(tags::BITS_ALLOCATED, 16),
                us(tags::BITS_STORED, 16),
                us(tags::HIGH_BIT, 15),
                us(tags::PIXEL_REPRESENTATION, 0),
                text(tags::RESCALE_INTERCEPT, VR::DS, "-1024"),
                text(tags::RESCALE_SLOPE, VR::DS, "1"),
                DataElement::new(
                    tags::PIXEL_DATA,
                    VR::OB,
                    Value::PixelSequence(PixelFragmentSequence::new(
                        Vec::<u32>::new(),
                        vec![frame.clone()],
                    )),
                ),
            ];
            let meta = FileMetaTableBuilder::new()
                .media_storage_sop_class_uid(uids::CT_IMAGE_STORAGE)
                .media_storage_sop_instance_uid(sop.as_str())
                .transfer_syntax(uids::RLE_LOSSLESS);
            let obj = InMemDicomObject::from_element_iter(elements)
                .with_meta(meta)
                .expect("meta");
            let mut bytes = Vec::new();
            obj.write_all(&mut bytes).expect("write RLE slice");
            bytes
        })
        .collect()
}

/// A memory figure (`VmRSS:`, `VmHWM:`, ...) of a `/proc/*/status` file in bytes.
pub fn proc_status_bytes(path: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(path).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("{field} in {path}"))
}

/// The records of an audit log for `rpc`, as JSON.
/// What tests/python/check_fhir.py read from each Bundle (validated by fhir.resources).
pub fn fhir_checked(bundles: &[&std::path::PathBuf]) -> Vec<serde_json::Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(root.join(".cache/venv/bin/python"))
        .arg(root.join("tests/python/check_fhir.py"))
        .args(bundles)
        .output()
        .expect("python");
    let read = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "fhir.resources refused a Bundle: {read}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    read.lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect()
}

/// Runs Pixelmed's DicomSRValidator (the IHE AI Results validator; its rules compiled once) on
/// every SR in `files` and asserts each is a TID 1500 Comprehensive SR with no error, no warning
/// and nothing outside the template.
pub fn assert_air_valid(files: &[&std::path::PathBuf]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("java")
        .args([
            "-Djdk.xml.xpathExprOpLimit=0",
            "-Djdk.xml.xpathTotalOpLimit=0",
            "-Djdk.xml.xpathExprGrpLimit=0",
            "-cp",
            "/usr/share/java/pixelmed.jar",
        ])
        .arg(root.join("tests/java/ValidateSr.java"))
        .args(files)
        .output()
        .expect("java (scripts/setup.sh installs default-jdk-headless and pixelmed-apps)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "DicomSRValidator: {report}");
    let reports: Vec<&str> = report.split("== ").skip(1).collect();
    assert_eq!(reports.len(), files.len(), "{report}");
    for r in reports {
        assert!(
            r.contains("Found ComprehensiveSR IOD")
                && r.contains("Found Root Template TID_1500 (MeasurementReport)"),
            "{r}"
        );
        assert!(
            !r.contains("Error") && !r.contains("not in template") && !r.contains("Warning"),
            "{r}"
        );
    }
}

/// The weights digest `model.toml` of shipped model `model` records.
pub fn weights_digest(model: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(model);
    osteo_core::ModelArtifacts::open(&dir)
        .expect("model.toml")
        .manifest
        .weights_blake3
}

pub fn audit_records(path: &Path, rpc: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["rpc"] == rpc)
        .collect()
}

/// One row of the tabular model's input, all zeros (the encoded features' means), as an Open
/// Inference Protocol input tensor.
pub fn zero_tabular_input() -> osteo_proto::inference::model_infer_request::InferInputTensor {
    osteo_proto::inference::model_infer_request::InferInputTensor {
        name: "tabular".into(),
        datatype: "FP32".into(),
        shape: vec![1, 13],
        contents: Some(osteo_proto::inference::InferTensorContents {
            fp32_contents: vec![0.0; 13],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Runs `command` to completion off the async threads; its output.
pub async fn output(mut command: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || command.output().expect("run the command"))
        .await
        .expect("join")
}
