//! DICOM ingest for OsteoServe.
//!
//! Turns DICOM Part-10 files (a directory, a list of paths, or in-memory buffers such as a gRPC
//! upload) into a validated Hounsfield-unit [`Volume`], and turns a volume into the model input
//! [`View`] (DESIGN §3.1–3.2). Every check that can fail on real input reports which file and which
//! attribute was wrong; sizes are checked against [`IngestLimits`] before anything large is
//! allocated.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, missing_docs)]

pub mod attenuation;
mod attrs;
pub mod demographics;
mod disk;
mod element;
pub mod error;
mod frames;
pub mod gate;
pub mod identity;
pub mod ingest;
pub mod limits;
mod native;
mod prescan;
pub mod render;
mod rescale;
pub mod secondary_capture;
pub mod series;
pub mod source;
pub mod source_study;
pub mod sr;
pub mod view;
pub mod volume;
mod write;

pub use demographics::{Completed, Demographics, Explicit, HeaderSex, HeaderValue};
pub use error::DicomError;
pub use gate::{Assessment, GateCheck, assess};
pub use identity::{InstanceIdentity, instance_identity, instance_identity_in};
pub use ingest::{IngestOptions, Planned, ingest, plan};
pub use limits::IngestLimits;
pub use source::{DicomSource, SourceFile};
pub use source_study::SourceStudy;
pub use view::{View, ViewGeometry, ViewSpec, coronal_slab};
pub use volume::{Volume, VolumeGeometry, VolumeSummary, Voxels};
pub use write::IMPLEMENTATION_CLASS_UID;
