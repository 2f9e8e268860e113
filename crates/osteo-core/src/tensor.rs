//! A minimal owned f32 tensor used to move data across the backend boundary.

use crate::error::CoreError;
use serde::{Deserialize, Serialize};

/// A dense row-major f32 tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    /// A tensor from its shape and row-major data; the lengths must agree.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self, CoreError> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(CoreError::InvalidSpec {
                what: "tensor",
                reason: format!("shape {shape:?} needs {n} values, got {}", data.len()),
            });
        }
        Ok(Self { shape, data })
    }

    /// A tensor of zeros.
    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Self {
            shape,
            data: vec![0.0; n],
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The row-major values.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The values, consuming the tensor.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// Row `i` of the leading dimension, as a slice.
    pub fn row(&self, i: usize) -> Option<&[f32]> {
        let stride: usize = self.shape.iter().skip(1).product();
        self.data.get(i * stride..(i + 1) * stride)
    }
}
