//! Shared harness of the server tests: a real `osteo serve` process on loopback ports, a phantom
//! study with known patient identifiers, upload messages and a /metrics reader.
#![allow(dead_code)] // each test crate uses a different part of the harness

pub mod inproc;

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

/// A free loopback port (bound and released; the server binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running `osteo serve` with its captured output.
pub struct Server {
    child: Child,
    /// gRPC URL.
    pub url: String,
    metrics: String,
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
        let dir = tempfile::tempdir().expect("tempdir");
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let (port, metrics_port) = (free_port(), free_port());
        let mut config = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n\
             default_model = \"osteo-fused-v1\"\n{extra}\n"
        );
        for (name, keys) in models {
            let path = root.join("models").join(name);
            config.push_str(&format!(
                "[[models]]\npath = \"{}\"\n{keys}\n",
                path.display()
            ));
        }
        let file = dir.path().join("osteo.toml");
        std::fs::write(&file, config).expect("config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_osteo"))
            .args(["serve", "--config"])
            .arg(&file)
            .env("OSTEO__TELEMETRY__LOG_LEVEL", "debug")
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
        let server = Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
            metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
            output,
            _dir: dir,
        };
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

    pub fn output(&self) -> String {
        self.output.lock().expect("output").clone()
    }

    pub async fn client(&self) -> OsteoServiceClient<Channel> {
        OsteoServiceClient::connect(self.url.clone())
            .await
            .expect("connect")
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
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
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
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

/// The upload stream of `files` in chunks of `chunk` bytes.
pub fn upload_messages(files: &[Vec<u8>], chunk: usize) -> Vec<pb::UploadStudyRequest> {
    let total: usize = files.iter().map(Vec::len).sum();
    let mut out = vec![pb::UploadStudyRequest {
        part: Some(pb::upload_study_request::Part::Header(pb::UploadHeader {
            expected_files: files.len() as u32,
            expected_bytes: total as u64,
            series_instance_uid: String::new(),
        })),
    }];
    for (i, f) in files.iter().enumerate() {
        let pieces: Vec<&[u8]> = f.chunks(chunk).collect();
        for (k, p) in pieces.iter().enumerate() {
            out.push(pb::UploadStudyRequest {
                part: Some(pb::upload_study_request::Part::Chunk(pb::FileChunk {
                    file_index: i as u32,
                    data: p.to_vec(),
                    last: k + 1 == pieces.len(),
                })),
            });
        }
    }
    out
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
