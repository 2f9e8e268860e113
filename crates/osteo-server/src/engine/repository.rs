//! Triton's repository extension: RepositoryModelLoad and RepositoryModelUnload (admin role),
//! swapping model versions while serving. A load builds the next model set beside the one in
//! force (every version of the model on disk verified and loaded, each backend's worker
//! answering a warm-up batch), then puts it in force in one step; requests already running
//! finish on the set they started with, and the old versions' workers finish their queues and
//! stop once the last of them lets go. A load that fails leaves the served versions in place.

use super::{Call, Engine};
use crate::error::ServerError;
use crate::models::{ModelSet, ServedModel};
use crate::state::blocking;
use osteo_core::Sample;
use std::sync::Arc;

/// A zero input of `model`'s shape (the encoded features' means, a blank view).
fn warm_up_input(model: &ServedModel) -> Sample {
    let arch = &model.artifacts.manifest.arch;
    Sample {
        image: arch
            .image
            .as_ref()
            .map(|i| vec![0.0; i.in_channels * i.height * i.width]),
        tabular: arch.tabular.as_ref().map(|t| vec![0.0; t.in_features]),
    }
}

impl Engine {
    /// RepositoryModelLoad: model `name` (re)loaded from the repository and put in force.
    pub async fn load_model(&self, call: &mut Call, name: &str) -> Result<(), ServerError> {
        let _one_at_a_time = self.state.swapping.lock().await;
        let current = self.state.models()?;
        let (registry, changed) = self.state.loader.get().cloned().ok_or_else(|| {
            ServerError::Unavailable("the models are still loading; retry later".into())
        })?;
        let state = self.state.clone();
        let wanted = name.to_string();
        let next: Arc<ModelSet> = Arc::new(
            blocking(move || current.reload(&wanted, &state.settings, &registry, &changed)).await?,
        );
        // Every new version answers a warm-up batch on every backend before it takes traffic.
        for m in next.all().iter().filter(|m| m.name() == name) {
            for (backend, worker) in &m.workers {
                let logits = worker.predict(warm_up_input(m)).await.map_err(|e| {
                    ServerError::FailedPrecondition(format!(
                        "model {name} version {} failed its warm-up on {backend}: {e}; the \
                         served versions stay in force",
                        m.version()
                    ))
                })?;
                osteo_pipeline::grade(m.artifacts.manifest.decision.as_ref(), &logits).map_err(|e| {
                    ServerError::FailedPrecondition(format!(
                        "model {name} version {} answered its warm-up on {backend} with {e}; the \
                         served versions stay in force",
                        m.version()
                    ))
                })?;
            }
        }
        if let Ok(m) = next.get(name) {
            call.served_by(m, "");
        }
        self.state.put_in_force(next);
        tracing::info!(
            model = name,
            versions = ?self.state.models()?.versions(name),
            "model loaded from the repository; in force"
        );
        Ok(())
    }

    /// RepositoryModelUnload: every version of model `name` taken out of service.
    pub async fn unload_model(&self, call: &mut Call, name: &str) -> Result<(), ServerError> {
        let _one_at_a_time = self.state.swapping.lock().await;
        let current = self.state.models()?;
        let next = current.unload(name, &self.state.settings)?;
        if let Ok(m) = current.get(name) {
            call.served_by(m, "");
        }
        self.state.put_in_force(Arc::new(next));
        tracing::info!(model = name, "model unloaded");
        Ok(())
    }
}

/// Watches the repository every `repository.poll_s` seconds: a model whose version
/// directories differ from the versions served from the repository is reloaded as
/// RepositoryModelLoad would (an audited call of the principal `repository-watch`); a failed
/// reload is logged and leaves the served versions in force.
pub async fn watch_repository(engine: Engine) {
    let every = engine.state().settings.repository.poll_s;
    if every == 0 || engine.state().settings.repository.path.is_empty() {
        return;
    }
    let watcher = crate::principal::Principal {
        name: "repository-watch".into(),
        roles: [crate::principal::Role::Admin].into_iter().collect(),
    };
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(every));
    loop {
        tick.tick().await;
        let Some(current) = engine.state().loaded() else {
            continue;
        };
        let settings = engine.state().settings.repository.clone();
        let on_disk = match blocking(move || crate::models::repository_versions(&settings)).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "the model repository cannot be read");
                continue;
            }
        };
        for (name, versions) in on_disk {
            if versions == current.repository_versions_of(&name) {
                continue;
            }
            let call = Call::new(
                crate::engine::Rpc::RepositoryModelLoad,
                Some(watcher.clone()),
                None,
                engine.request_timeout(),
            );
            let model = name.clone();
            let reloaded = engine
                .run(call, move |e, c| {
                    Box::pin(async move { e.load_model(c, &model).await })
                })
                .await;
            if let Err(e) = reloaded {
                tracing::warn!(model = %name, error = %e, "repository change not loaded");
            }
        }
    }
}
