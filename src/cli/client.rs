//! `osteo classify`, `osteo explain` and `osteo compare`: their arguments mapped onto the
//! client library (osteo-client), and the results printed.

use super::clinical::ClinicalArgs;
use anyhow::Context;
use clap::Args;
use osteo_client::Client;
use osteo_client::grade::{Answer, Choice, Outputs, Subject, Via};
use osteo_client::report::{self, grade_name};
use osteo_dicomweb::TlsOptions;
use osteo_proto::v1 as pb;
use std::path::{Path, PathBuf};

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
    /// The library's credentials: the token and the PEM files the flags name, read now.
    pub fn load(&self) -> anyhow::Result<osteo_client::Credentials> {
        let TlsOptions { ca_pem, identity } = tls_files(
            ("--ca-cert", self.ca_cert.as_deref()),
            ("--client-cert", self.client_cert.as_deref()),
            ("--client-key", self.client_key.as_deref()),
        )?;
        Ok(osteo_client::Credentials {
            token: self.token.clone(),
            ca_pem,
            identity,
        })
    }
}

/// A PEM file a flag may name: the flag and the path.
pub(super) type FlagFile<'a> = (&'a str, Option<&'a Path>);

/// The CA bundle and the client identity (certificate chain, key) the flags name, read now
/// (for the server and for a PACS alike);
/// an unreadable file is an error naming its flag and path.
pub(super) fn tls_files(
    ca: FlagFile<'_>,
    cert: FlagFile<'_>,
    key: FlagFile<'_>,
) -> anyhow::Result<TlsOptions> {
    let read = |(flag, path): FlagFile<'_>| -> anyhow::Result<Option<Vec<u8>>> {
        path.map(|p| {
            std::fs::read(p).with_context(|| format!("INVALID_ARGUMENT: {flag} {}", p.display()))
        })
        .transpose()
    };
    let ca_pem = read(ca)?;
    let identity = match (read(cert)?, read(key)?) {
        (Some(c), Some(k)) => Some((c, k)),
        _ => None,
    };
    Ok(TlsOptions { ca_pem, identity })
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
    /// Model version (default: the version the server answers with by default).
    #[arg(long, value_name = "VERSION")]
    model_version: Option<String>,
}

impl Endpoint {
    /// The model and backend asked for ("" = the server's defaults), in one GradeStudy call.
    pub fn choice(&self) -> Choice {
        Choice {
            model: self.model.clone().unwrap_or_default(),
            backend: self.backend.clone().unwrap_or_default(),
            version: self.model_version.clone().unwrap_or_default(),
            via: Via::OneCall,
        }
    }

    /// Connects to the server with the credentials the flags give.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        Ok(osteo_client::connect(&self.server, &self.credentials.load()?).await?)
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
    /// Upload the study first and ask by its handle (UploadStudy, the call, DeleteStudy, all
    /// with one x-osteo-affinity key for a balancer that hashes on it) instead of one
    /// GradeStudy call.
    #[arg(long)]
    upload_first: bool,
}

impl Input {
    /// How the study travels.
    fn via(&self) -> Via {
        if self.upload_first {
            Via::Handle
        } else {
            Via::OneCall
        }
    }

    /// What to grade.
    fn subject(&self) -> Subject<'_> {
        Subject {
            dicom: self.dicom.as_deref(),
            clinical: self.clinical.message(),
            clinical_from_dicom: self.clinical.reads_header(),
        }
    }
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
    /// Model version (default: the version the server answers with by default).
    #[arg(long, value_name = "VERSION")]
    model_version: Option<String>,
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
    /// Also write the result as a FHIR R4 Bundle (JSON).
    #[arg(long, value_name = "FILE")]
    fhir_out: Option<PathBuf>,
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
    /// Also write the result as a FHIR R4 Bundle (JSON).
    #[arg(long, value_name = "FILE")]
    fhir_out: Option<PathBuf>,
}

/// Writes `bytes` to `path` when a path was given.
fn write_output(path: Option<&PathBuf>, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(p) = path {
        if bytes.is_empty() {
            anyhow::bail!("the server returned no output for {}", p.display());
        }
        std::fs::write(p, bytes).with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}

/// The response of an answer, after printing its warning.
fn response<T>(answer: Answer<T>) -> T {
    if let Some(w) = answer.warning {
        eprintln!("warning: {w}");
    }
    answer.response
}

/// A single-threaded runtime for one client command.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
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
    if let Some(d) = r.decision.as_ref().and_then(report::decision_of) {
        println!("{}", report::decision_line(&d));
    }
    if let Some(a) = &r.attenuation {
        println!(
            "{}",
            report::vertebrae_line(&report::Vertebrae::from_wire(a))
        );
    }
    println!("  server latency {:.1} ms", r.latency_ms);
}

/// The width and height a PNG's header states.
fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    let be = |at: usize| Some(u32::from_be_bytes(png.get(at..at + 4)?.try_into().ok()?));
    (png.get(12..16) == Some(b"IHDR".as_slice())).then_some(())?;
    Some((be(16)?, be(20)?))
}

/// Runs `osteo classify`.
pub fn classify(args: ClassifyArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let t = &args.target;
        let mut client = t.endpoint.connect().await?;
        let choice = Choice {
            via: t.input.via(),
            ..t.endpoint.choice()
        };
        let subject = t.input.subject();
        let outputs = Outputs {
            dicom: args.sr_out.is_some(),
            fhir: args.fhir_out.is_some(),
        };
        let answer = osteo_client::grade::classify(&mut client, &choice, &subject, outputs).await?;
        let r = response(answer);
        write_output(args.sr_out.as_ref(), &r.dicom_sr)?;
        write_output(args.fhir_out.as_ref(), r.fhir_bundle.as_bytes())?;
        if args.json {
            println!("{}", serde_json::to_string(&report::classification(&r))?);
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
        let mut client = t.endpoint.connect().await?;
        let choice = Choice {
            via: t.input.via(),
            ..t.endpoint.choice()
        };
        let subject = t.input.subject();
        let outputs = Outputs {
            dicom: args.sr_out.is_some() || args.dicom_out.is_some(),
            fhir: args.fhir_out.is_some(),
        };
        let answer = osteo_client::grade::explain(&mut client, &choice, &subject, outputs).await?;
        let r = response(answer);
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
        write_output(args.fhir_out.as_ref(), c.fhir_bundle.as_bytes())?;
        if args.json {
            let path = overlay.map(|(_, out)| out.display().to_string());
            let v = report::explanation(&r, path.as_deref());
            println!("{}", serde_json::to_string(&v)?);
        } else {
            print_text(&c);
            if let Some((map, out)) = overlay {
                let png = png_size(&map.overlay_png)
                    .map(|(w, h)| format!(", a {w}x{h} PNG"))
                    .unwrap_or_default();
                println!(
                    "  Grad-CAM of {} ({}x{} map{png}) written to {}",
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

/// Runs `osteo compare`.
pub fn compare(args: CompareArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mut client = osteo_client::connect(&args.server, &args.credentials.load()?).await?;
        let choice = Choice {
            model: args.model.clone().unwrap_or_default(),
            backend: String::new(),
            version: args.model_version.clone().unwrap_or_default(),
            via: args.input.via(),
        };
        let subject = args.input.subject();
        let answer =
            osteo_client::grade::compare(&mut client, &choice, &args.backends, &subject).await?;
        let r = response(answer);
        if args.json {
            println!("{}", serde_json::to_string(&report::comparison(&r))?);
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
