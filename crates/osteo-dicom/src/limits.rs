//! Size limits checked before anything large is allocated.

use serde::{Deserialize, Serialize};

/// Upper bounds on what one ingest may read and decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestLimits {
    /// Largest single file in bytes.
    pub max_file_bytes: u64,
    /// Largest total of all files in bytes.
    pub max_total_bytes: u64,
    /// Most files in one study.
    pub max_files: usize,
    /// Most pixels (rows x columns) in one slice or frame.
    pub max_pixels_per_slice: u64,
    /// Most slices (frames) in the selected series.
    pub max_slices: u64,
    /// Most voxels of the decoded volume (each costs 4 bytes as f32).
    pub max_voxels: u64,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            max_file_bytes: 1 << 30,
            max_total_bytes: 4 << 30,
            max_files: 4096,
            max_pixels_per_slice: 2048 * 2048,
            max_slices: 4096,
            max_voxels: 512 * 512 * 2048,
        }
    }
}
