//! The inference backends a server can load, by name. The server knows only the Backend trait;
//! the binary registers the implementations it was built with.

use osteo_core::{Backend, BackendError, Device, LoadBackend, ModelArtifacts};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Loads a model onto a device as a boxed backend.
pub type Loader =
    Arc<dyn Fn(&ModelArtifacts, Device) -> Result<Box<dyn Backend>, BackendError> + Send + Sync>;

/// Backend loaders by name (`candle`, `ort`, `tch`).
#[derive(Clone, Default)]
pub struct Registry {
    loaders: BTreeMap<String, Loader>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers backend type `B` under `name`.
    pub fn register<B: LoadBackend + 'static>(&mut self, name: &str) -> &mut Self {
        self.register_loader(
            name,
            Arc::new(|artifacts, device| {
                B::load(artifacts, device).map(|b| Box::new(b) as Box<dyn Backend>)
            }),
        )
    }

    /// Registers a loader under `name` (for backends that take engine options).
    pub fn register_loader(&mut self, name: &str, loader: Loader) -> &mut Self {
        self.loaders.insert(name.to_string(), loader);
        self
    }

    /// The loader of a backend.
    pub fn get(&self, name: &str) -> Option<Loader> {
        self.loaders.get(name).cloned()
    }

    /// Registered backend names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.loaders.keys().cloned().collect()
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("backends", &self.names())
            .finish()
    }
}
