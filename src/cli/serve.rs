//! `osteo serve`: the gRPC server with the backends built into this binary.

use anyhow::Context;
use clap::Args;
use osteo_backend_candle::CandleBackend;
use osteo_backend_ort::{OrtBackend, OrtOptions};
use osteo_core::{Backend, Device, ModelArtifacts};
use osteo_server::Registry;
use osteo_server::config::BackendSettings;
use std::path::PathBuf;
use std::sync::Arc;

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
    /// Only validate the configuration, print the effective settings as JSON and exit.
    #[arg(long)]
    check: bool,
}

/// The backends compiled into this binary, with their configured engine options.
pub fn registry(settings: &BackendSettings) -> Registry {
    let mut r = Registry::new();
    r.register::<CandleBackend>("candle");
    let ort = OrtOptions {
        intra_threads: settings.ort.intra_threads,
        spinning: settings.ort.spinning,
    };
    r.register_loader(
        "ort",
        Arc::new(move |artifacts, device| {
            OrtBackend::load_with(artifacts, device, ort).map(|b| Box::new(b) as Box<dyn Backend>)
        }),
    );
    #[cfg(feature = "tch")]
    {
        let tch = osteo_backend_tch::TchOptions {
            intra_threads: settings.tch.intra_threads,
        };
        r.register_loader(
            "tch",
            Arc::new(move |artifacts, device| {
                osteo_backend_tch::TchBackend::load_with(artifacts, device, tch)
                    .map(|b| Box::new(b) as Box<dyn Backend>)
            }),
        );
    }
    r
}

/// Loads a model in this process on a backend of this binary, by name, with default options.
pub fn load_backend(
    name: &str,
    artifacts: &ModelArtifacts,
    device: Device,
) -> anyhow::Result<Box<dyn Backend>> {
    let backends = registry(&BackendSettings::default());
    let loader = backends.get(name).with_context(|| {
        format!(
            "backend {name:?} is not built into this binary (available: {})",
            backends.names().join(", ")
        )
    })?;
    Ok(loader(artifacts, device)?)
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
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
    let settings = osteo_server::config::load(args.config.as_deref(), &overrides)?;
    if args.check {
        println!("{}", serde_json::to_string_pretty(&settings)?);
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let telemetry = osteo_server::telemetry::init(&settings.telemetry)?;
        let backends = registry(&settings.backends);
        let served = osteo_server::serve(settings, backends, shutdown_signal()).await;
        // Flushing the trace exporter blocks: keep it off the async threads.
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        served
    })?;
    Ok(())
}
