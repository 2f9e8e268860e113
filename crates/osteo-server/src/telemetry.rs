//! Logging: `tracing` to stderr as pretty text or JSON lines. Log lines carry study handles,
//! model and backend names and status codes only, never patient data.

use crate::config::TelemetrySettings;
use crate::error::ServerError;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber for the configured format and level.
pub fn init(settings: &TelemetrySettings) -> Result<(), ServerError> {
    let filter = EnvFilter::try_new(&settings.log_level).map_err(|e| {
        ServerError::Config(format!("telemetry.log_level = {}: {e}", settings.log_level))
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let installed = if settings.log_format == "json" {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        builder.try_init()
    };
    installed.map_err(|e| ServerError::Internal(format!("cannot install logging: {e}")))
}
