//! `osteo serve`: the gRPC server with the backends built into this binary.

use clap::Args;
use std::path::PathBuf;

/// Arguments of `osteo serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (TOML; see osteo.toml). Environment variables OSTEO__SECTION__KEY
    /// override it, these flags override both.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// gRPC listen address, e.g. 0.0.0.0:50051 (server.listen).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Prometheus /metrics listen address, e.g. 0.0.0.0:9464 (server.metrics_listen).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Open Inference Protocol HTTP/REST listen address, e.g. 0.0.0.0:8000; "" turns it off
    /// (server.http_listen).
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<String>,
    /// A model repository in Triton's layout, DIR/<name>/<version>/ (repository.path).
    #[arg(long, value_name = "DIR")]
    model_repository: Option<String>,
    /// Only validate the configuration (and the traffic file it names), print the effective
    /// settings as JSON and exit.
    #[arg(long)]
    check: bool,
}

/// Completes on Ctrl-C or SIGTERM; from then on, a further Ctrl-C or SIGTERM ends the process
/// at once (the server drains for `server.drain_delay_s` first, which a person at a terminal
/// may not want to wait for).
pub(super) async fn shutdown_signal() {
    signal().await;
    tokio::spawn(async {
        signal().await;
        eprintln!("second signal: stopping without draining");
        std::process::exit(130);
    });
}

/// Completes on the next Ctrl-C or SIGTERM.
async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Runs `osteo serve`.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut overrides = Vec::new();
    if let Some(l) = args.listen {
        overrides.push(("server.listen", l));
    }
    if let Some(m) = args.metrics_listen {
        overrides.push(("server.metrics_listen", m));
    }
    if let Some(h) = args.http_listen {
        overrides.push(("server.http_listen", h));
    }
    if let Some(r) = args.model_repository {
        overrides.push(("repository.path", r));
    }
    let settings = osteo_server::config::load(args.config.as_deref(), &overrides)?;
    if args.check {
        // The traffic file too, when one is named (its names are checked against the models
        // when the server starts).
        osteo_server::traffic::configured_policy(&settings)?;
        println!("{}", serde_json::to_string_pretty(&settings)?);
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let telemetry = osteo_server::telemetry::init(&settings.telemetry)?;
        let backends = osteo_backends::registry(&settings.backends);
        let served = osteo_server::serve(settings, backends, shutdown_signal()).await;
        // Flushing the trace exporter blocks: keep it off the async threads.
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        served
    })?;
    Ok(())
}
