//! `osteo receive`: a DICOM node that PACS, routers and scanners push CT studies to (C-ECHO,
//! C-STORE), grading each complete study on a server and sending the results back (osteo-node).

use super::client::{Endpoint, runtime};
use clap::Args;
use osteo_node::{Destination, NodeSettings, ScpSettings};
use std::path::PathBuf;
use std::time::Duration;

/// Arguments of `osteo receive`.
#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  osteo receive --ae-title OSTEO --listen 0.0.0.0:11112 --server http://127.0.0.1:50051 \\\n      --spool /var/lib/osteo/spool --results results.csv --send-to PACS@pacs.hospital:104 --allow-ae PACS"
)]
pub struct ReceiveArgs {
    /// This node's AE title: associations must call it.
    #[arg(long, value_name = "AE")]
    ae_title: String,
    /// Address of the DICOM listener.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:11112")]
    listen: String,
    /// Address of a DICOM TLS listener (the usual port is 2762), with --tls-cert and --tls-key.
    #[arg(long, value_name = "ADDR", requires_all = ["tls_cert", "tls_key"])]
    tls_listen: Option<String>,
    /// PEM certificate chain of the TLS listener (re-read when it changes).
    #[arg(long, value_name = "FILE", requires = "tls_listen")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_listen")]
    tls_key: Option<PathBuf>,
    /// PEM CA bundle that signs the peers' client certificates.
    #[arg(long, value_name = "FILE", requires = "tls_listen")]
    tls_client_ca: Option<PathBuf>,
    /// Client certificates on the TLS listener: none, optional or required (needs
    /// --tls-client-ca unless none).
    #[arg(long, value_name = "POLICY", default_value = "none")]
    tls_client_auth: String,
    #[command(flatten)]
    endpoint: Endpoint,
    /// The spool directory: every acknowledged instance is written and synced here before its
    /// C-STORE success; a restart finishes what it holds.
    #[arg(long, value_name = "DIR")]
    spool: PathBuf,
    /// The spool's budget in MiB: an instance that would exceed it is refused (Out of
    /// Resources, A700).
    #[arg(long, default_value_t = 10240, value_parser = clap::value_parser!(u64).range(1..))]
    spool_mib: u64,
    /// The spool's journal in MiB, beside the budget (two segments written in place): an
    /// instance of up to 4 MiB is acknowledged once its journal record is synced, about half
    /// the cost of syncing a new file. 0: each instance's own file is synced instead (for file
    /// systems that do not overwrite in place, such as btrfs or ZFS); otherwise at least 16.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(0..=65536))]
    journal_mib: u64,
    /// The results CSV (study_uid,status,grade,p_normal,p_osteopenia,p_osteoporosis,reason),
    /// one row per study once its results are acknowledged.
    #[arg(long, value_name = "CSV")]
    results: PathBuf,
    /// Where the SR and the Grad-CAM secondary capture go (C-STORE), AE@HOST:PORT.
    #[arg(long, value_name = "AE@HOST:PORT")]
    send_to: Option<String>,
    /// Send to --send-to over DICOM TLS, trusting the CA certificates in this PEM file.
    #[arg(long, value_name = "PEM", requires = "send_to")]
    send_tls_ca: Option<PathBuf>,
    /// PEM client certificate chain presented to --send-to over TLS (with --send-tls-key).
    #[arg(long, value_name = "PEM", requires_all = ["send_tls_ca", "send_tls_key"])]
    send_tls_cert: Option<PathBuf>,
    /// PEM private key of --send-tls-cert.
    #[arg(long, value_name = "PEM", requires = "send_tls_cert")]
    send_tls_key: Option<PathBuf>,
    /// A DICOMweb service root the SR and secondary capture are stored to (STOW-RS), with or
    /// instead of --send-to.
    #[arg(long, value_name = "URL")]
    stow: Option<String>,
    /// Bearer token for --stow (or the OSTEO_DICOMWEB_TOKEN variable).
    #[arg(
        long,
        env = "OSTEO_DICOMWEB_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    stow_token: Option<String>,
    /// A calling AE title allowed to associate; repeat for several (default: any).
    #[arg(long, value_name = "AE")]
    allow_ae: Vec<String>,
    /// Seconds without a new instance after which a study is complete and graded.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86400))]
    study_idle_s: u64,
    /// Studies graded at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    concurrency: u16,
    /// Associations open at once; more connections are closed.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=4096))]
    max_associations: u16,
    /// Seconds an association may stay silent (and its request take).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    read_timeout_s: u64,
    /// Largest instance in MiB (larger ones are refused with A700).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=65536))]
    max_instance_mib: u64,
    /// Most instances in one study (more are refused with A700).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    max_study_instances: u32,
    /// Most MiB in one study (more are refused with A700). A study is held in memory while it is
    /// graded, and the server refuses uploads over its `store.max_upload_bytes` (512 MiB by
    /// default). A study with refused instances is not graded: its row is an error.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=65536))]
    max_study_mib: u64,
    /// Also write each graded study's result as a FHIR R4 Bundle into this directory once its
    /// results are acknowledged, one file per study named by a hash of its Study Instance UID.
    #[arg(long, value_name = "DIR")]
    fhir_dir: Option<PathBuf>,
    /// Only check the arguments, then exit (no file is read, no server called, nothing listens).
    #[arg(long)]
    check: bool,
}

/// Runs `osteo receive` until Ctrl-C or SIGTERM.
pub fn run(args: ReceiveArgs) -> anyhow::Result<()> {
    let send_to = args
        .send_to
        .as_deref()
        .map(str::parse::<Destination>)
        .transpose()?;
    let stow = args
        .stow
        .as_deref()
        .map(|url| {
            osteo_dicomweb::DicomWeb::new(
                url,
                args.stow_token.clone(),
                &osteo_dicomweb::TlsOptions::default(),
                osteo_dicomweb::Limits::default(),
            )
            .map(osteo_node::Stow)
            .map_err(|e| anyhow::anyhow!("--stow: {e}"))
        })
        .transpose()?;
    let mut settings = NodeSettings {
        scp: ScpSettings {
            ae_title: args.ae_title.clone(),
            allow_ae: args.allow_ae.clone(),
            max_associations: usize::from(args.max_associations),
            max_pdu: 64 << 10,
            read_timeout: Duration::from_secs(args.read_timeout_s),
            max_instance_bytes: args.max_instance_mib << 20,
            tls: None,
        },
        spool: args.spool.clone(),
        spool_bytes: args.spool_mib << 20,
        journal_bytes: args.journal_mib << 20,
        results: args.results.clone(),
        send_to,
        stow,
        study_idle: Duration::from_secs(args.study_idle_s),
        max_study_instances: args.max_study_instances as usize,
        max_study_bytes: args.max_study_mib << 20,
        fhir_dir: args.fhir_dir.clone(),
        concurrency: usize::from(args.concurrency),
    };
    if args.ae_title.is_empty() || args.ae_title.len() > 16 {
        anyhow::bail!("--ae-title must be 1 to 16 characters");
    }
    if (1..16).contains(&args.journal_mib) {
        anyhow::bail!("--journal-mib must be 0 (no journal) or at least 16");
    }
    let client_auth = osteo_server::net::tls::ClientAuth::parse(&args.tls_client_auth)
        .ok_or_else(|| anyhow::anyhow!("--tls-client-auth must be none, optional or required"))?;
    if args.check {
        println!("osteo receive: arguments ok");
        return Ok(());
    }
    if let (Some(to), Some(ca)) = (settings.send_to.as_mut(), &args.send_tls_ca) {
        let identity = args
            .send_tls_cert
            .as_deref()
            .zip(args.send_tls_key.as_deref());
        to.tls = Some(osteo_node::scu::tls_client(ca, identity)?);
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        use osteo_server::net::tls::{Alpn, TlsFiles, TlsSource};
        let source = TlsSource::load(
            TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: args.tls_client_ca.clone(),
                client_auth,
            },
            Alpn::None,
        )?;
        let source = std::sync::Arc::new(source);
        settings.scp.tls = Some(osteo_node::TlsConfig(std::sync::Arc::new(move || {
            source.config()
        })));
    }
    let _log = osteo_server::telemetry::init(&osteo_server::config::TelemetrySettings {
        log_level: "info".into(),
        ..Default::default()
    })?;
    runtime()?.block_on(async {
        let client =
            osteo_client::connect(&args.endpoint.server, &args.endpoint.credentials.load()?)
                .await?;
        let grader = osteo_client::screen::Grader::new(client, &args.endpoint.choice()).await?;
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|e| anyhow::anyhow!("--listen {}: {e}", args.listen))?;
        let tls_listener = match &args.tls_listen {
            Some(a) => Some(
                tokio::net::TcpListener::bind(a)
                    .await
                    .map_err(|e| anyhow::anyhow!("--tls-listen {a}: {e}"))?,
            ),
            None => None,
        };
        osteo_node::run(
            listener,
            tls_listener,
            settings,
            grader,
            super::serve::shutdown_signal(),
        )
        .await?;
        Ok(())
    })
}
