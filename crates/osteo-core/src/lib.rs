//! Domain types shared by every OsteoServe crate: the WHO grade and T-score, validated clinical
//! variables and their feature encoding, the model description (ArchSpec, manifest), the Backend
//! trait every inference engine implements, Grad-CAM assembly, and the errors of all of these.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, missing_docs)]

pub mod arch;
pub mod backend;
pub mod clinical;
pub mod decision;
pub mod error;
pub mod features;
pub mod file_stamp;
pub mod gate_spec;
pub mod gradcam;
pub mod grade;
pub mod manifest;
pub mod names;
pub mod provenance;
pub mod tensor;
pub mod utc;
pub mod view_spec;

pub use arch::{ArchSpec, ModelKind};
pub use backend::{Backend, BackendError, BackendInfo, Batch, Device, LoadBackend, Sample};
pub use clinical::{ClinicalInput, ClinicalVariables, RiskFlags, Sex};
pub use decision::{Decision, DecisionSpec, PredictionSet, ReferOn};
pub use error::CoreError;
pub use features::TabularSpec;
pub use file_stamp::FileStamp;
pub use gate_spec::GateSpec;
pub use gradcam::{Explanation, GradCamMap, GradCamParts};
pub use grade::{Grade, TScore};
pub use manifest::{ModelArtifacts, ModelManifest};
pub use tensor::Tensor;
pub use view_spec::ViewSpec;
