//! Logs and traces: `tracing` to stderr as pretty text or JSON lines, and, when
//! `telemetry.otlp_endpoint` is set, every span exported over OTLP/gRPC. Spans and log lines carry
//! study handles, model and backend names and status codes only, never patient data.

use crate::config::TelemetrySettings;
use crate::error::ServerError;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::io::IsTerminal;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] flushes it.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops trace export. Blocking: call it off the async threads.
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            eprintln!("warning: trace export did not shut down cleanly: {e}");
        }
    }
}

/// Installs the global subscriber. With an OTLP endpoint it must run inside the Tokio runtime
/// (the exporter's gRPC channel lives there).
pub fn init(settings: &TelemetrySettings) -> Result<Telemetry, ServerError> {
    let filter = EnvFilter::try_new(&settings.log_level).map_err(|e| {
        ServerError::Config(format!("telemetry.log_level = {}: {e}", settings.log_level))
    })?;
    let ansi = std::io::stderr().is_terminal();
    let fmt = if settings.log_format == "json" {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed()
    };
    let provider = if settings.otlp_endpoint.is_empty() {
        None
    } else {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(settings.otlp_endpoint.clone())
            .build()
            .map_err(|e| {
                ServerError::Config(format!(
                    "telemetry.otlp_endpoint = {}: {e}",
                    settings.otlp_endpoint
                ))
            })?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(settings.service_name.clone())
            .build();
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build(),
        )
    };
    // Only the server's own spans: not the transport's, nor the exporter's own gRPC calls.
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("osteoserve"))
            .with_filter(Targets::new().with_target("osteo_server", Level::INFO))
            .boxed()
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init()
        .map_err(|e| ServerError::Internal(format!("cannot install logging: {e}")))?;
    Ok(Telemetry { provider })
}
