//! The served models: each model version (a `[[models]]` directory or a repository's
//! `<name>/<version>/`) with one worker per backend serving it, and the version of each model
//! that answers a request naming none (pinned, else the highest).

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
    /// Whether it came from the model repository (RepositoryModelLoad reloads those).
    pub from_repository: bool,
}

impl ServedModel {
    /// Model name.
    pub fn name(&self) -> &str {
        &self.artifacts.manifest.name
    }

    /// Model version (model.toml's `version`).
    pub fn version(&self) -> &str {
        &self.artifacts.manifest.version
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

/// Where a served model version comes from: a `[[models]]` entry or the repository.
struct Entry {
    /// How configuration names it in errors (`models[1]`, `repository osteo-x/2`).
    at: String,
    /// The model directory.
    path: std::path::PathBuf,
    /// Its model and version directory names in the repository layout (the version is checked
    /// against model.toml); `None` for a `[[models]]` entry.
    in_repository: Option<(String, String)>,
    backends: Vec<String>,
    default_backend: String,
    device: String,
}

/// The entries of a repository in Triton's layout: `<name>/<version>/` for every model
/// directory (`only` that one) and every version directory in it (in name, then version
/// order).
fn repository_entries(
    r: &crate::config::RepositorySettings,
    only: Option<&str>,
) -> Result<Vec<Entry>, ServerError> {
    if r.path.is_empty() {
        return Ok(Vec::new());
    }
    let root = std::path::Path::new(&r.path);
    let dirs = |p: &std::path::Path| -> Result<Vec<(String, std::path::PathBuf)>, ServerError> {
        let mut out: Vec<(String, std::path::PathBuf)> = std::fs::read_dir(p)
            .map_err(|e| {
                ServerError::Config(format!("repository.path: cannot read {}: {e}", p.display()))
            })?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
            .filter(|(n, _)| !n.starts_with('.'))
            .collect();
        out.sort();
        Ok(out)
    };
    let mut entries = Vec::new();
    for (name, model_dir) in dirs(root)? {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let mut versions: Vec<(String, std::path::PathBuf)> = dirs(&model_dir)?
            .into_iter()
            .filter(|(v, _)| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .collect();
        versions.sort_by(|a, b| compare_versions(&a.0, &b.0));
        for (version, path) in versions {
            entries.push(Entry {
                at: format!("repository {name}/{version}"),
                path,
                in_repository: Some((name.clone(), version)),
                backends: r.backends.clone(),
                default_backend: r.default_backend.clone(),
                device: r.device.clone(),
            });
        }
    }
    Ok(entries)
}

/// Versions in order: numerically when both are numbers, else as text.
fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

/// Every served model version, the default model and the version of each model that answers a
/// request naming none.
#[derive(Debug)]
pub struct ModelSet {
    models: Vec<Arc<ServedModel>>,
    default: String,
    /// (model name, default version), in the order the names first appear.
    defaults: Vec<(String, String)>,
}

impl ModelSet {
    /// Loads every configured model version (`[[models]]` and the repository) on its backends.
    /// Blocking. `changed` is notified when a worker goes down or comes back.
    pub fn load(
        settings: &Settings,
        registry: &Registry,
        changed: &Arc<Notify>,
    ) -> Result<Self, ServerError> {
        let mut entries: Vec<Entry> = settings
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| Entry {
                at: format!("models[{i}]"),
                path: m.path.clone(),
                in_repository: None,
                backends: m.backends.clone(),
                default_backend: m.default_backend.clone(),
                device: m.device.clone(),
            })
            .collect();
        entries.extend(repository_entries(&settings.repository, None)?);
        let max = settings.repository.max_loaded;
        if entries.len() > max {
            return Err(ServerError::Config(format!(
                "{} model versions are configured ([[models]] entries and the repository's                  versions), more than repository.max_loaded ({max}): raise the limit or serve                  fewer versions",
                entries.len()
            )));
        }
        let mut models: Vec<Arc<ServedModel>> = Vec::new();
        for e in &entries {
            let m = load_entry(e, settings, registry, changed)?;
            if models
                .iter()
                .any(|s| s.name() == m.name() && s.version() == m.version())
            {
                return Err(ServerError::Config(format!(
                    "{}: model {} version {} is configured twice",
                    e.at,
                    m.name(),
                    m.version()
                )));
            }
            models.push(Arc::new(m));
        }
        Self::assemble(models, settings).map_err(|e| match e {
            ServerError::FailedPrecondition(m) => ServerError::Config(m),
            other => other,
        })
    }

    /// The next set with model `name` (re)loaded from the repository: every version its
    /// directory holds, loaded anew (verified, on its backends), in place of the repository's
    /// versions served now; the `[[models]]` versions and the other models stay as they are.
    /// Refused as a whole, before anything loads, when the new versions next to the served ones
    /// would exceed `repository.max_loaded`. Blocking.
    pub fn reload(
        &self,
        name: &str,
        settings: &Settings,
        registry: &Registry,
        changed: &Arc<Notify>,
    ) -> Result<Self, ServerError> {
        if settings.repository.path.is_empty() {
            return Err(ServerError::FailedPrecondition(
                "no model repository is configured (repository.path, osteo serve \
                 --model-repository)"
                    .into(),
            ));
        }
        if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\']) {
            return Err(ServerError::InvalidArgument(format!(
                "model_name \"{}\" is not a model directory name",
                crate::text::client_text(name)
            )));
        }
        let entries = repository_entries(&settings.repository, Some(name))?;
        if entries.is_empty() {
            return Err(ServerError::NotFound(format!(
                "the model repository has no version of model \"{}\" (expected {}/{}/<version>/)",
                crate::text::client_text(name),
                settings.repository.path,
                crate::text::client_text(name)
            )));
        }
        let peak = self.models.len() + entries.len();
        let max = settings.repository.max_loaded;
        if peak > max {
            return Err(ServerError::TooLarge(format!(
                "loading {} version(s) of {name} next to the {} served would hold {peak} model \
                 versions during the swap, the limit is {max} (repository.max_loaded): unload \
                 a model first",
                entries.len(),
                self.models.len()
            )));
        }
        let mut models: Vec<Arc<ServedModel>> = self
            .models
            .iter()
            .filter(|m| !(m.name() == name && m.from_repository))
            .cloned()
            .collect();
        for e in &entries {
            let m = load_entry(e, settings, registry, changed).map_err(|err| {
                let why = match err {
                    ServerError::Config(m) => m,
                    other => other.to_string(),
                };
                ServerError::FailedPrecondition(format!(
                    "the load is refused and the served versions stay in force: {why}"
                ))
            })?;
            if m.name() != name {
                return Err(ServerError::FailedPrecondition(format!(
                    "{}: model.toml names model {}, not {name}",
                    e.at,
                    m.name()
                )));
            }
            if models
                .iter()
                .any(|s| s.name() == m.name() && s.version() == m.version())
            {
                return Err(ServerError::FailedPrecondition(format!(
                    "{}: version {} of {name} is also configured in [[models]]",
                    e.at,
                    m.version()
                )));
            }
            models.push(Arc::new(m));
        }
        Self::assemble(models, settings)
    }

    /// The next set without model `name` (every version); the default model cannot be unloaded.
    pub fn unload(&self, name: &str, settings: &Settings) -> Result<Self, ServerError> {
        if !self.models.iter().any(|m| m.name() == name) {
            return Err(ServerError::NotFound(format!(
                "model \"{}\" is not served (models: {})",
                crate::text::client_text(name),
                self.names().join(", ")
            )));
        }
        if name == self.default {
            return Err(ServerError::FailedPrecondition(format!(
                "model {name} is the server's default model (server.default_model) and cannot \
                 be unloaded"
            )));
        }
        let models = self
            .models
            .iter()
            .filter(|m| m.name() != name)
            .cloned()
            .collect();
        Self::assemble(models, settings)
    }

    /// A set of `models` with each model's default version (pinned, else the highest) and the
    /// default model; FAILED_PRECONDITION when a pin or the default model is not served.
    fn assemble(models: Vec<Arc<ServedModel>>, settings: &Settings) -> Result<Self, ServerError> {
        let mut defaults: Vec<(String, String)> = Vec::new();
        for m in &models {
            if defaults.iter().any(|(n, _)| n == m.name()) {
                continue;
            }
            let versions: Vec<&str> = models
                .iter()
                .filter(|o| o.name() == m.name())
                .map(|o| o.version())
                .collect();
            let version = match settings.repository.pins.get(m.name()) {
                Some(pin) if versions.contains(&pin.as_str()) => pin.clone(),
                Some(pin) => {
                    return Err(ServerError::FailedPrecondition(format!(
                        "repository.pins: model {} has no version {pin} (versions: {})",
                        m.name(),
                        versions.join(", ")
                    )));
                }
                None => versions
                    .iter()
                    .max_by(|a, b| compare_versions(a, b))
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
            };
            defaults.push((m.name().to_string(), version));
        }
        if let Some(pinned) = settings
            .repository
            .pins
            .keys()
            .find(|k| !defaults.iter().any(|(n, _)| n == *k))
        {
            return Err(ServerError::FailedPrecondition(format!(
                "repository.pins: no served model is named {pinned}"
            )));
        }
        let default = if settings.server.default_model.is_empty() {
            defaults.first().map(|(n, _)| n.clone()).unwrap_or_default()
        } else {
            settings.server.default_model.clone()
        };
        if !defaults.iter().any(|(n, _)| *n == default) {
            return Err(ServerError::FailedPrecondition(format!(
                "server.default_model = {default}: no configured model has that name (models: {})",
                defaults
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(Self {
            models,
            default,
            defaults,
        })
    }

    /// A model by name (empty = the default model) in the version that answers requests naming
    /// none.
    pub fn get(&self, name: &str) -> Result<&Arc<ServedModel>, ServerError> {
        self.get_version(name, "")
    }

    /// A model by name (empty = the default model) and version (empty = its default version).
    pub fn get_version(&self, name: &str, version: &str) -> Result<&Arc<ServedModel>, ServerError> {
        let wanted = if name.is_empty() { &self.default } else { name };
        let Some((_, default_version)) = self.defaults.iter().find(|(n, _)| n == wanted) else {
            return Err(ServerError::NotFound(format!(
                "model \"{}\" is not served (models: {})",
                crate::text::client_text(wanted),
                self.names().join(", ")
            )));
        };
        let v = if version.is_empty() {
            default_version.as_str()
        } else {
            version
        };
        self.models
            .iter()
            .find(|m| m.name() == wanted && m.version() == v)
            .ok_or_else(|| {
                ServerError::NotFound(format!(
                    "model {wanted} has no version \"{}\" (serving versions: {})",
                    crate::text::client_text(v),
                    self.versions(wanted).join(", ")
                ))
            })
    }

    /// Every served model version, in configuration order (`[[models]]`, then the repository).
    pub fn all(&self) -> &[Arc<ServedModel>] {
        &self.models
    }

    /// The names of the served models, each once, in configuration order.
    pub fn names(&self) -> Vec<&str> {
        self.defaults.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// The served versions of model `name`, lowest first.
    pub fn versions(&self, name: &str) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .models
            .iter()
            .filter(|m| m.name() == name)
            .map(|m| m.version())
            .collect();
        v.sort_by(|a, b| compare_versions(a, b));
        v
    }

    /// The versions of model `name` served from the repository, in version order.
    pub fn repository_versions_of(&self, name: &str) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .models
            .iter()
            .filter(|m| m.name() == name && m.from_repository)
            .map(|m| m.version())
            .collect();
        v.sort_by(|a, b| compare_versions(a, b));
        v
    }

    /// The default model's name.
    pub fn default_name(&self) -> &str {
        &self.default
    }
}

/// Loads one model version on its backends (blocking): its directory opened and verified, a
/// worker per backend.
fn load_entry(
    e: &Entry,
    settings: &Settings,
    registry: &Registry,
    changed: &Arc<Notify>,
) -> Result<ServedModel, ServerError> {
    let config = BatchConfig::from(&settings.scheduler);
    let at = &e.at;
    let artifacts =
        ModelArtifacts::open(&e.path).map_err(|err| ServerError::Config(format!("{at}: {err}")))?;
    let name = artifacts.manifest.name.clone();
    let version = artifacts.manifest.version.clone();
    if let Some((_, dir)) = &e.in_repository
        && *dir != version
    {
        return Err(ServerError::Config(format!(
            "{at}: model.toml states version {version}, but the directory is version {dir}: \
             rename the directory or fix model.toml"
        )));
    }
    if e.backends.is_empty() {
        return Err(ServerError::Config(format!("{at}: no backends")));
    }
    let device: Device = e
        .device
        .parse()
        .map_err(|err| ServerError::Config(format!("{at}.device: {err}")))?;
    let mut workers = Vec::new();
    let stats = Arc::new(ModelStats::default());
    for backend in &e.backends {
        let loader = registry.get(backend).ok_or_else(|| {
            ServerError::Config(format!(
                "{at}.backends: \"{backend}\" is not built into this server (available: {})",
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
        .map_err(|err| match err {
            ServerError::Config(m) => ServerError::Config(format!("{at}, backend {backend}: {m}")),
            other => other,
        })?;
        let info = worker.info();
        metrics::gauge!(
            "osteo_backend_info",
            "model" => name.clone(),
            "version" => version.clone(),
            "backend" => backend.clone(),
            "device" => info.device.to_string(),
            "library" => info.library_version.clone(),
        )
        .set(1.0);
        workers.push((backend.clone(), Arc::new(worker)));
    }
    let default_backend = if e.default_backend.is_empty() {
        e.backends[0].clone()
    } else {
        e.default_backend.clone()
    };
    Ok(ServedModel {
        artifacts,
        workers,
        default_backend,
        device,
        stats,
        from_repository: e.in_repository.is_some(),
    })
}

/// The version directories of each model in the repository, by model name, in version order
/// (empty without a repository): what a watcher compares with the served repository versions.
pub fn repository_versions(
    r: &crate::config::RepositorySettings,
) -> Result<Vec<(String, Vec<String>)>, ServerError> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for (name, version) in repository_entries(r, None)?
        .into_iter()
        .filter_map(|e| e.in_repository)
    {
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.push(version),
            None => out.push((name, vec![version])),
        }
    }
    Ok(out)
}
