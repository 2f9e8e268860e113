//! The served models: each model directory with one worker per backend serving it.

use crate::config::Settings;
use crate::error::ServerError;
use crate::registry::Registry;
use crate::scheduler::{BatchConfig, Worker};
use crate::stats::ModelStats;
use osteo_core::{Device, ModelArtifacts};
use std::sync::Arc;
use tokio::sync::Notify;

/// One served model.
#[derive(Debug)]
pub struct ServedModel {
    /// The model directory and manifest.
    pub artifacts: ModelArtifacts,
    /// Workers by backend name, in configuration order.
    pub workers: Vec<(String, Arc<Worker>)>,
    /// Backend used when a request names none.
    pub default_backend: String,
    /// Device the backends run on.
    pub device: Device,
    /// Inference statistics (Triton's ModelStatistics).
    pub stats: Arc<ModelStats>,
}

impl ServedModel {
    /// Model name.
    pub fn name(&self) -> &str {
        &self.artifacts.manifest.name
    }

    /// The worker of `backend` (empty = the default backend).
    pub fn worker(&self, backend: &str) -> Result<(&str, &Arc<Worker>), ServerError> {
        let wanted = if backend.is_empty() {
            self.default_backend.as_str()
        } else {
            backend
        };
        self.workers
            .iter()
            .find(|(name, _)| name == wanted)
            .map(|(name, w)| (name.as_str(), w))
            .ok_or_else(|| {
                ServerError::NotFound(format!(
                    "backend \"{}\" does not serve model {} (serving: {})",
                    crate::text::client_text(wanted),
                    self.name(),
                    self.backend_names().join(", ")
                ))
            })
    }

    /// Names of the backends serving the model.
    pub fn backend_names(&self) -> Vec<String> {
        self.workers.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Whether every backend of the model is up.
    pub fn is_up(&self) -> bool {
        self.workers.iter().all(|(_, w)| w.is_up())
    }
}

/// Every served model and the default.
#[derive(Debug)]
pub struct ModelSet {
    models: Vec<ServedModel>,
    default: String,
}

impl ModelSet {
    /// Loads every configured model on every configured backend. Blocking. `changed` is
    /// notified when a worker goes down or comes back.
    pub fn load(
        settings: &Settings,
        registry: &Registry,
        changed: &Arc<Notify>,
    ) -> Result<Self, ServerError> {
        let config = BatchConfig::from(&settings.scheduler);
        let mut models: Vec<ServedModel> = Vec::new();
        for (i, m) in settings.models.iter().enumerate() {
            let artifacts = ModelArtifacts::open(&m.path)
                .map_err(|e| ServerError::Config(format!("models[{i}].path: {e}")))?;
            let name = artifacts.manifest.name.clone();
            if models.iter().any(|s| s.name() == name) {
                return Err(ServerError::Config(format!(
                    "models[{i}]: model {name} is configured twice"
                )));
            }
            let device: Device = m
                .device
                .parse()
                .map_err(|e| ServerError::Config(format!("models[{i}].device: {e}")))?;
            let mut workers = Vec::new();
            let stats = Arc::new(ModelStats::default());
            for backend in &m.backends {
                let loader = registry.get(backend).ok_or_else(|| {
                    ServerError::Config(format!(
                        "models[{i}].backends: \"{backend}\" is not built into this server \
                         (available: {})",
                        registry.names().join(", ")
                    ))
                })?;
                let worker = Worker::spawn(
                    &artifacts,
                    device,
                    loader,
                    config,
                    changed.clone(),
                    stats.clone(),
                )
                .map_err(|e| match e {
                    ServerError::Config(m) => {
                        ServerError::Config(format!("models[{i}], backend {backend}: {m}"))
                    }
                    other => other,
                })?;
                let info = worker.info();
                metrics::gauge!(
                    "osteo_backend_info",
                    "model" => name.clone(),
                    "backend" => backend.clone(),
                    "device" => info.device.to_string(),
                    "library" => info.library_version.clone(),
                )
                .set(1.0);
                workers.push((backend.clone(), Arc::new(worker)));
            }
            let default_backend = if m.default_backend.is_empty() {
                m.backends[0].clone()
            } else {
                m.default_backend.clone()
            };
            models.push(ServedModel {
                artifacts,
                workers,
                default_backend,
                device,
                stats,
            });
        }
        let default = if settings.server.default_model.is_empty() {
            models
                .first()
                .map(|m| m.name().to_string())
                .unwrap_or_default()
        } else {
            settings.server.default_model.clone()
        };
        if !models.iter().any(|m| m.name() == default) {
            return Err(ServerError::Config(format!(
                "server.default_model = {default}: no configured model has that name (models: {})",
                models
                    .iter()
                    .map(|m| m.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(Self { models, default })
    }

    /// A model by name (empty = the default model).
    pub fn get(&self, name: &str) -> Result<&ServedModel, ServerError> {
        let wanted = if name.is_empty() { &self.default } else { name };
        self.models
            .iter()
            .find(|m| m.name() == wanted)
            .ok_or_else(|| {
                ServerError::NotFound(format!(
                    "model \"{}\" is not served (models: {})",
                    crate::text::client_text(wanted),
                    self.models
                        .iter()
                        .map(|m| m.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }

    /// Every model, in configuration order.
    pub fn all(&self) -> &[ServedModel] {
        &self.models
    }

    /// The default model's name.
    pub fn default_name(&self) -> &str {
        &self.default
    }
}
