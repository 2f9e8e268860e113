//! The inference backends built into this OsteoServe build, by name, constructed from the
//! server's `[backends]` settings: `candle` and `ort` always, `tch` with the `tch` feature.
//! `osteo serve`, `osteo predict`, `osteo bench`, the benches and the tests all take their
//! backends from here, so each runs them with the same options.
#![deny(missing_docs)]

use osteo_backend_candle::CandleBackend;
use osteo_backend_ort::{OrtBackend, OrtOptions};
use osteo_core::{Backend, BackendError, Device, ModelArtifacts};
use osteo_server::Registry;
use osteo_server::config::BackendSettings;
use std::sync::Arc;

/// A backend could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The name is not a backend of this build.
    #[error("backend {name:?} is not built into this binary (available: {available})")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The backends of this build, comma-separated.
        available: String,
    },
    /// The backend failed to load the model.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Every backend of this build, with the engine options of `settings`.
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

/// Loads the model in `artifacts` onto `device` on the backend `name`, with default options.
pub fn load(
    name: &str,
    artifacts: &ModelArtifacts,
    device: Device,
) -> Result<Box<dyn Backend>, LoadError> {
    let backends = registry(&BackendSettings::default());
    let loader = backends.get(name).ok_or_else(|| LoadError::Unknown {
        name: name.to_string(),
        available: backends.names().join(", "),
    })?;
    Ok(loader(artifacts, device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_registers_candle_and_ort_and_tch_with_its_feature() {
        let names = registry(&BackendSettings::default()).names();
        assert!(names.contains(&"candle".to_string()));
        assert!(names.contains(&"ort".to_string()));
        assert_eq!(names.contains(&"tch".to_string()), cfg!(feature = "tch"));
    }

    #[test]
    fn an_unknown_backend_names_the_available_ones() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/osteo-tabular-v1");
        let artifacts = ModelArtifacts::open(&dir).expect("the shipped tabular model");
        let Err(e) = load("tensorrt", &artifacts, Device::Cpu) else {
            panic!("tensorrt is not built in");
        };
        let text = e.to_string();
        assert!(
            text.contains("\"tensorrt\"") && text.contains("candle"),
            "{text}"
        );
    }
}
