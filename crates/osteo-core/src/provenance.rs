//! What produced a result, down to the weights: the model's name, version and weights digest,
//! the backend and device that ran it, and the OsteoServe version. Every result carries it, so a
//! filed result can be traced to the exact weights.

use crate::manifest::ModelManifest;

/// The OsteoServe version that produced a result.
pub const OSTEOSERVE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The origin of one result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// Hex BLAKE3 digest of the model's weights (model.toml's `weights_blake3`, checked at load).
    pub weights_blake3: String,
    /// Backend that ran the model.
    pub backend: String,
    /// Device it ran on, for example `cpu` or `cuda:0`.
    pub device: String,
}

impl Provenance {
    /// The provenance of a result of `manifest`'s model run by `backend` on `device`.
    pub fn new(manifest: &ModelManifest, backend: &str, device: &str) -> Self {
        Self {
            model: manifest.name.clone(),
            version: manifest.version.clone(),
            weights_blake3: manifest.weights_blake3.clone(),
            backend: backend.to_string(),
            device: device.to_string(),
        }
    }

    /// Everything but the model's name and version as `key=value` parameters, in a fixed order.
    pub fn parameters(&self) -> [String; 4] {
        [
            format!("backend={}", self.backend),
            format!("device={}", self.device),
            format!("weights_blake3={}", self.weights_blake3),
            format!("osteoserve={OSTEOSERVE_VERSION}"),
        ]
    }

    /// One line: model, version, backend and device, weights digest, OsteoServe version.
    pub fn line(&self) -> String {
        format!(
            "{} v{} on {} ({}), weights BLAKE3 {}, OsteoServe {}",
            self.model,
            self.version,
            self.backend,
            self.device,
            self.weights_blake3,
            OSTEOSERVE_VERSION
        )
    }
}
