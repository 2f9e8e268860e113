//! Plots of the training report, drawn without system fonts or plotting libraries.

pub mod canvas;
pub mod charts;
