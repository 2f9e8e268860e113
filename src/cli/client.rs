//! gRPC client commands: `osteo classify`, `osteo explain` and `osteo compare`.

use super::clinical::ClinicalArgs;
use anyhow::{Context, anyhow};
use clap::Args;
use osteo_dicom::{DicomSource, IngestLimits};
use osteo_proto::v1 as pb;
use osteo_proto::v1::osteo_service_client::OsteoServiceClient;
use serde_json::json;
use std::path::PathBuf;
use tonic::service::{Interceptor, interceptor::InterceptedService};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// Bytes per upload chunk.
const CHUNK: usize = 1 << 20;

/// The credentials a client command presents, and the CA it trusts.
#[derive(Debug, Clone, Args)]
pub struct Credentials {
    /// Bearer token for a server with auth.mode = "token" (or the OSTEO_TOKEN variable).
    #[arg(
        long,
        env = "OSTEO_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// PEM CA bundle that signs the server's certificate (https:// only; default: the
    /// system's trusted roots).
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate chain for a server that authenticates clients by certificate
    /// (with --client-key).
    #[arg(long, value_name = "FILE", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

impl Credentials {
    /// The TLS configuration of an https:// URL; an error for TLS flags on a plaintext URL.
    fn tls(&self, url: &str) -> anyhow::Result<Option<ClientTlsConfig>> {
        let https = url.starts_with("https://");
        if !https {
            if self.ca_cert.is_some() || self.client_cert.is_some() {
                anyhow::bail!(
                    "INVALID_ARGUMENT: --ca-cert, --client-cert and --client-key need an https:// \
                     --server URL"
                );
            }
            return Ok(None);
        }
        let mut tls = ClientTlsConfig::new();
        tls = match &self.ca_cert {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read_flag_file("--ca-cert", ca)?)),
            None => tls.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            tls = tls.identity(Identity::from_pem(
                read_flag_file("--client-cert", cert)?,
                read_flag_file("--client-key", key)?,
            ));
        }
        Ok(Some(tls))
    }
}

/// The bytes of the file a command-line flag names; the error names the flag and the path.
pub(super) fn read_flag_file(flag: &str, path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("INVALID_ARGUMENT: {flag} {}", path.display()))
}

/// A client of the osteo.v1 service that sends the credentials with every call.
pub type Client = OsteoServiceClient<InterceptedService<Channel, Credentials>>;

impl Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.token {
            let value = format!("Bearer {token}").parse().map_err(|_| {
                tonic::Status::invalid_argument("--token holds characters a header cannot carry")
            })?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

/// The server and the model and backend to ask for, shared by every client command.
#[derive(Debug, Args)]
pub struct Endpoint {
    /// Server URL, e.g. http://127.0.0.1:50051 or https://osteo.hospital.example:50051.
    #[arg(long, value_name = "URL")]
    pub server: String,
    #[command(flatten)]
    pub credentials: Credentials,
    /// Model name (default: the server's default model).
    #[arg(long)]
    model: Option<String>,
    /// Backend name (default: the backend configured for the model).
    #[arg(long)]
    backend: Option<String>,
}

impl Endpoint {
    /// The requested model name ("" = the server's default).
    pub fn model(&self) -> String {
        self.model.clone().unwrap_or_default()
    }

    /// The requested backend name ("" = the model's configured backend).
    pub fn backend(&self) -> String {
        self.backend.clone().unwrap_or_default()
    }
}

/// The study and clinical variables of a request.
#[derive(Debug, Args)]
pub struct Input {
    /// The CT study: a DICOM file or a directory (searched recursively).
    #[arg(long)]
    dicom: Option<PathBuf>,
    #[command(flatten)]
    clinical: ClinicalArgs,
}

/// Server, study and clinical variables of `classify` and `explain`.
#[derive(Debug, Args)]
pub struct Target {
    #[command(flatten)]
    endpoint: Endpoint,
    #[command(flatten)]
    input: Input,
}

/// Arguments of `osteo compare`.
#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  osteo compare --server http://127.0.0.1:50051 --dicom study/ --age 71 --sex F --height-cm 158 --weight-kg 52 --backends candle,ort --json"
)]
pub struct CompareArgs {
    /// Server URL, e.g. http://127.0.0.1:50051 or https://osteo.hospital.example:50051.
    #[arg(long, value_name = "URL")]
    server: String,
    #[command(flatten)]
    credentials: Credentials,
    /// Model name (default: the server's default model).
    #[arg(long)]
    model: Option<String>,
    /// Backends to run, comma-separated (default: every backend serving the model).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    backends: Vec<String>,
    #[command(flatten)]
    input: Input,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Arguments of `osteo classify`.
#[derive(Debug, Args)]
pub struct ClassifyArgs {
    #[command(flatten)]
    target: Target,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Also write the result as a DICOM Comprehensive SR in the study.
    #[arg(long, value_name = "FILE")]
    sr_out: Option<PathBuf>,
}

/// Arguments of `osteo explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    target: Target,
    /// Where to write the Grad-CAM overlay PNG (models that read CT).
    #[arg(long, value_name = "PNG")]
    out: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Also write the result as a DICOM Comprehensive SR in the study.
    #[arg(long, value_name = "FILE")]
    sr_out: Option<PathBuf>,
    /// Also write the Grad-CAM overlay as a DICOM RGB Secondary Capture in the study.
    #[arg(long, value_name = "FILE")]
    dicom_out: Option<PathBuf>,
}

/// Writes `bytes` to `path` when a path was given.
fn write_output(path: Option<&PathBuf>, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(p) = path {
        if bytes.is_empty() {
            anyhow::bail!("the server returned no DICOM output for {}", p.display());
        }
        std::fs::write(p, bytes).with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}

/// The canonical name of a gRPC status code (as in the gRPC specification).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A gRPC status as an error line: `CODE: message`.
pub fn status(s: tonic::Status) -> anyhow::Error {
    anyhow!("{}: {}", code_name(s.code()), s.message())
}

/// An error and its causes on one line (tonic's transport errors keep the reason in the chain).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Connects to a server (TLS for https:// URLs), mapping failures to an UNAVAILABLE error
/// line.
pub async fn connect(url: &str, credentials: &Credentials) -> anyhow::Result<Client> {
    let mut endpoint = Channel::from_shared(url.to_string()).with_context(|| {
        format!("INVALID_ARGUMENT: --server {url} is not a URL (e.g. http://127.0.0.1:50051)")
    })?;
    if let Some(tls) = credentials.tls(url)? {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| anyhow!("INVALID_ARGUMENT: TLS settings: {}", chain(&e)))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| anyhow!("UNAVAILABLE: cannot connect to {url}: {}", chain(&e)))?;
    Ok(
        OsteoServiceClient::with_interceptor(channel, credentials.clone())
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20),
    )
}

/// Uploads the study's files as a stream of chunks; returns the study handle.
pub async fn upload(client: &mut Client, path: &std::path::Path) -> anyhow::Result<String> {
    let files = DicomSource::Path(path.to_path_buf()).read(&IngestLimits::default())?;
    let bytes: Vec<&[u8]> = files.iter().map(|f| f.bytes.as_slice()).collect();
    Ok(upload_bytes(client, &bytes).await?.study)
}

/// Uploads DICOM files held in memory; returns the study's summary (handle, quality gate).
pub async fn upload_bytes(
    client: &mut Client,
    files: &[&[u8]],
) -> Result<pb::StudySummary, tonic::Status> {
    let total: u64 = files.iter().map(|f| f.len() as u64).sum();
    let mut messages = vec![pb::UploadStudyRequest {
        part: Some(pb::upload_study_request::Part::Header(pb::UploadHeader {
            expected_files: files.len() as u32,
            expected_bytes: total,
            series_instance_uid: String::new(),
        })),
    }];
    for (i, f) in files.iter().enumerate() {
        let chunks: Vec<&[u8]> = if f.is_empty() {
            vec![&[]]
        } else {
            f.chunks(CHUNK).collect()
        };
        let last = chunks.len() - 1;
        for (k, c) in chunks.into_iter().enumerate() {
            messages.push(pb::UploadStudyRequest {
                part: Some(pb::upload_study_request::Part::Chunk(pb::FileChunk {
                    file_index: i as u32,
                    data: c.to_vec(),
                    last: k == last,
                })),
            });
        }
    }
    client
        .upload_study(tokio_stream::iter(messages))
        .await?
        .into_inner()
        .summary
        .ok_or_else(|| tonic::Status::internal("the server returned no study summary"))
}

pub fn grade_name(g: i32) -> &'static str {
    match pb::Grade::try_from(g) {
        Ok(pb::Grade::Normal) => "normal",
        Ok(pb::Grade::Osteopenia) => "osteopenia",
        Ok(pb::Grade::Osteoporosis) => "osteoporosis",
        _ => "unspecified",
    }
}

/// Probabilities as a JSON object keyed by grade.
fn probabilities_json(p: Option<pb::GradeProbabilities>) -> serde_json::Value {
    let p = p.unwrap_or_default();
    json!({"normal": p.normal, "osteopenia": p.osteopenia, "osteoporosis": p.osteoporosis})
}

/// The classification as the documented JSON object.
fn classification_json(r: &pb::ClassifyResponse) -> serde_json::Value {
    json!({
        "study": r.study,
        "model": r.model.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
        "backend": r.backend.as_ref().map(|b| b.name.clone()).unwrap_or_default(),
        "grade": grade_name(r.grade),
        "probabilities": probabilities_json(r.probabilities),
        "latency_ms": r.latency_ms,
    })
}

fn print_text(r: &pb::ClassifyResponse) {
    let p = r.probabilities.unwrap_or_default();
    println!(
        "{} on {}: {}",
        r.model.as_ref().map(|m| m.name.as_str()).unwrap_or(""),
        r.backend.as_ref().map(|b| b.name.as_str()).unwrap_or(""),
        grade_name(r.grade)
    );
    println!("  normal        {:.3}", p.normal);
    println!("  osteopenia    {:.3}", p.osteopenia);
    println!("  osteoporosis  {:.3}", p.osteoporosis);
    println!("  server latency {:.1} ms", r.latency_ms);
}

/// Uploads the study (if any) and returns the reference, plus the handle to delete afterwards.
async fn study_ref(
    client: &mut Client,
    input: &Input,
) -> anyhow::Result<(Option<pb::StudyRef>, Option<String>)> {
    match &input.dicom {
        None => Ok((None, None)),
        Some(p) => {
            let handle = upload(client, p).await?;
            Ok((
                Some(pb::StudyRef {
                    source: Some(pb::study_ref::Source::Study(handle.clone())),
                }),
                Some(handle),
            ))
        }
    }
}

/// Deletes an uploaded study; failures only warn (the study expires anyway).
async fn cleanup(client: &mut Client, handle: Option<String>) {
    if let Some(study) = handle
        && let Err(e) = client
            .delete_study(pb::DeleteStudyRequest {
                study: study.clone(),
            })
            .await
    {
        eprintln!("warning: could not delete study {study}: {}", e.message());
    }
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Runs `osteo classify`.
pub fn classify(args: ClassifyArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let t = &args.target;
        let mut client = connect(&t.endpoint.server, &t.endpoint.credentials).await?;
        let (study, handle) = study_ref(&mut client, &t.input).await?;
        let result = client
            .classify(pb::ClassifyRequest {
                study,
                clinical: Some(t.input.clinical.message()),
                model: t.endpoint.model(),
                backend: t.endpoint.backend(),
                clinical_from_dicom: t.input.clinical.reads_header(),
                dicom_outputs: args.sr_out.is_some(),
            })
            .await;
        cleanup(&mut client, handle).await;
        let r = result.map_err(status)?.into_inner();
        write_output(args.sr_out.as_ref(), &r.dicom_sr)?;
        if args.json {
            println!("{}", serde_json::to_string(&classification_json(&r))?);
        } else {
            print_text(&r);
        }
        Ok(())
    })
}

/// Runs `osteo explain`.
pub fn explain(args: ExplainArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let t = &args.target;
        let mut client = connect(&t.endpoint.server, &t.endpoint.credentials).await?;
        let (study, handle) = study_ref(&mut client, &t.input).await?;
        let result = client
            .explain(pb::ExplainRequest {
                study,
                clinical: Some(t.input.clinical.message()),
                model: t.endpoint.model(),
                backend: t.endpoint.backend(),
                target: pb::Grade::Unspecified as i32,
                clinical_from_dicom: t.input.clinical.reads_header(),
                dicom_outputs: args.sr_out.is_some() || args.dicom_out.is_some(),
            })
            .await;
        cleanup(&mut client, handle).await;
        let r = result.map_err(status)?.into_inner();
        let overlay = match (&r.gradcam, &args.out) {
            (Some(map), Some(out)) => {
                std::fs::write(out, &map.overlay_png)
                    .with_context(|| format!("cannot write {}", out.display()))?;
                Some((map, out))
            }
            (None, Some(out)) => anyhow::bail!(
                "the model reads no CT, so there is no Grad-CAM overlay for {}",
                out.display()
            ),
            _ => None,
        };
        let c = r.classification.clone().unwrap_or_default();
        write_output(args.sr_out.as_ref(), &c.dicom_sr)?;
        write_output(args.dicom_out.as_ref(), &r.dicom_secondary_capture)?;
        if args.json {
            let mut v = classification_json(&c);
            if let Some(o) = v.as_object_mut() {
                o.insert("target".into(), json!(grade_name(r.target)));
                if let Some((_, out)) = overlay {
                    o.insert("overlay_png".into(), json!(out.display().to_string()));
                }
                let features: serde_json::Map<String, serde_json::Value> = r
                    .features
                    .iter()
                    .map(|f| (f.feature.clone(), json!(f.attribution)))
                    .collect();
                o.insert("features".into(), json!(features));
            }
            println!("{}", serde_json::to_string(&v)?);
        } else {
            print_text(&c);
            if let Some((map, out)) = overlay {
                println!(
                    "  Grad-CAM of {} ({}x{}) written to {}",
                    grade_name(r.target),
                    map.height,
                    map.width,
                    out.display()
                );
            }
            if !r.features.is_empty() {
                println!(
                    "  clinical features (gradient x input for {}):",
                    grade_name(r.target)
                );
                for f in &r.features {
                    println!("    {:<34} {:+.4}", f.feature, f.attribution);
                }
            }
        }
        Ok(())
    })
}

/// The comparison as the documented JSON object.
fn comparison_json(r: &pb::CompareBackendsResponse) -> serde_json::Value {
    let backends: serde_json::Map<String, serde_json::Value> = r
        .results
        .iter()
        .map(|b| {
            let name = b
                .backend
                .as_ref()
                .map(|d| d.name.clone())
                .unwrap_or_default();
            let device = b
                .backend
                .as_ref()
                .map(|d| d.device.clone())
                .unwrap_or_default();
            let entry = json!({
                "grade": grade_name(b.grade),
                "probabilities": probabilities_json(b.probabilities),
                "latency_ms": b.latency_ms,
                "device": device,
            });
            (name, entry)
        })
        .collect();
    json!({
        "model": r.model.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
        "backends": backends,
        "max_abs_diff": r.max_abs_diff,
        "grades_agree": r.grades_agree,
    })
}

/// Runs `osteo compare`.
pub fn compare(args: CompareArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mut client = connect(&args.server, &args.credentials).await?;
        let (study, handle) = study_ref(&mut client, &args.input).await?;
        let result = client
            .compare_backends(pb::CompareBackendsRequest {
                study,
                clinical: Some(args.input.clinical.message()),
                model: args.model.clone().unwrap_or_default(),
                backends: args.backends.clone(),
                clinical_from_dicom: args.input.clinical.reads_header(),
            })
            .await;
        cleanup(&mut client, handle).await;
        let r = result.map_err(status)?.into_inner();
        if args.json {
            println!("{}", serde_json::to_string(&comparison_json(&r))?);
            return Ok(());
        }
        println!(
            "{}: {:<8} {:<8} {:<13} {:>7} {:>10} {:>12} {:>11}",
            r.model.as_ref().map(|m| m.name.as_str()).unwrap_or(""),
            "backend",
            "device",
            "grade",
            "normal",
            "osteopenia",
            "osteoporosis",
            "latency ms"
        );
        let indent = r.model.as_ref().map_or(0, |m| m.name.len() + 2);
        for b in &r.results {
            let p = b.probabilities.unwrap_or_default();
            let d = b.backend.clone().unwrap_or_default();
            println!(
                "{:indent$}{:<8} {:<8} {:<13} {:>7.4} {:>10.4} {:>12.4} {:>11.1}",
                "",
                d.name,
                d.device,
                grade_name(b.grade),
                p.normal,
                p.osteopenia,
                p.osteoporosis,
                b.latency_ms
            );
        }
        println!(
            "largest probability difference {:.2e}; grades {}",
            r.max_abs_diff,
            if r.grades_agree { "agree" } else { "DISAGREE" }
        );
        Ok(())
    })
}
