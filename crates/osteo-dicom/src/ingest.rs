//! The ingest pipeline: read, parse, group, select, order, decode, assemble.

use crate::attrs::{self, Parsed};
use crate::error::DicomError;
use crate::frames::{self, FileHeader};
use crate::limits::IngestLimits;
use crate::series::{self, SeriesInfo};
use crate::source::DicomSource;
use crate::volume::{Volume, VolumeGeometry};
use dicom_encoding::TransferSyntaxIndex;
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder, VoiLutOption};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use rayon::prelude::*;

/// Options of one ingest.
#[derive(Debug, Clone, Default)]
pub struct IngestOptions {
    /// Series to select; `None` selects the axial CT series with the most slices.
    pub series_uid: Option<String>,
    /// Size limits.
    pub limits: IngestLimits,
}

/// The result of an ingest: the volume and every series that was found.
#[derive(Debug, Clone)]
pub struct Ingested {
    /// The selected series as a HU volume.
    pub volume: Volume,
    /// Every series in the input (UIDs included: for selection, not for logs).
    pub series: Vec<SeriesInfo>,
}

/// Collects results in input order, returning the first error by input order.
fn in_order<T: Send>(results: Vec<Result<T, DicomError>>) -> Result<Vec<T>, DicomError> {
    results.into_iter().collect()
}

/// Ingests a DICOM source into a HU volume of one CT series.
pub fn ingest(source: DicomSource, options: &IngestOptions) -> Result<Ingested, DicomError> {
    let limits = &options.limits;
    let files = source.read(limits)?;
    let parsed: Vec<Parsed> = in_order(
        files
            .into_par_iter()
            .map(|f| attrs::parse(f, limits))
            .collect(),
    )?;
    let headers: Vec<FileHeader> = in_order(
        parsed
            .par_iter()
            .map(|p| frames::read_header(p, limits))
            .collect(),
    )?;
    let groups = series::group(&headers);
    let series = series::describe(&headers, &groups);
    let uid = series::select(&series, options.series_uid.as_deref())?;
    let files = &groups[&uid];
    let ordered = series::order(&headers, files)?;
    let (rows, columns) = (ordered.rows as usize, ordered.columns as usize);
    let n = ordered.slices.len();
    if n as u64 > limits.max_slices {
        return Err(DicomError::TooLarge {
            file: "study".into(),
            what: "slices in the series".into(),
            value: n as u64,
            limit: limits.max_slices,
        });
    }
    let voxels = (n * rows * columns) as u64;
    if voxels > limits.max_voxels {
        return Err(DicomError::TooLarge {
            file: "study".into(),
            what: "voxels in the series".into(),
            value: voxels,
            limit: limits.max_voxels,
        });
    }
    // Decode each selected file once (all its frames), in parallel.
    let decoded: Vec<(usize, Vec<f32>)> = in_order(
        files
            .par_iter()
            .map(|&f| decode_hu(&parsed[f], &headers[f]).map(|v| (f, v)))
            .collect(),
    )?;
    let by_file: std::collections::HashMap<usize, Vec<f32>> = decoded.into_iter().collect();
    let slice_len = rows * columns;
    let mut hu = Vec::with_capacity(n * slice_len);
    for s in &ordered.slices {
        let data = &by_file[&s.file];
        hu.extend_from_slice(&data[s.frame * slice_len..(s.frame + 1) * slice_len]);
    }
    let mut transfer_syntaxes: Vec<String> = files
        .iter()
        .map(|&f| headers[f].transfer_syntax.clone())
        .collect();
    transfer_syntaxes.sort();
    transfer_syntaxes.dedup();
    let geometry = VolumeGeometry {
        dims: [n, rows, columns],
        spacing_mm: ordered.spacing_mm,
        origin_mm: ordered.origin_mm,
        direction: ordered.direction,
    };
    let modality = headers[files[0]].modality.clone();
    let mut volume =
        Volume::from_parts(hu, geometry, &modality, transfer_syntaxes).ok_or_else(|| {
            DicomError::Decode {
                file: "study".into(),
                transfer_syntax: String::new(),
                message: "decoded voxel count does not match the series dimensions".into(),
            }
        })?;
    volume.summary.series_count = series.len();
    Ok(Ingested { volume, series })
}

/// Decodes every frame of a file into HU with the library's modality-LUT path.
fn decode_hu(p: &Parsed, h: &FileHeader) -> Result<Vec<f32>, DicomError> {
    let uid = h.transfer_syntax.as_str();
    let Some(ts) = TransferSyntaxRegistry.get(uid) else {
        return Err(DicomError::UnsupportedTransferSyntax {
            file: h.label.clone(),
            uid: uid.to_string(),
            name: "unknown transfer syntax".into(),
        });
    };
    if !ts.can_decode_all() {
        return Err(DicomError::UnsupportedTransferSyntax {
            file: h.label.clone(),
            uid: uid.to_string(),
            name: ts.name().to_string(),
        });
    }
    let decode_err = |e: &dyn std::error::Error| {
        let message = attrs::error_chain(e);
        if message.to_ascii_lowercase().contains("unsupported") {
            DicomError::UnsupportedTransferSyntax {
                file: h.label.clone(),
                uid: uid.to_string(),
                name: ts.name().to_string(),
            }
        } else {
            DicomError::Decode {
                file: h.label.clone(),
                transfer_syntax: ts.name().to_string(),
                message,
            }
        }
    };
    let pixels = p.obj.decode_pixel_data().map_err(|e| decode_err(&e))?;
    let expected_frames = h.frames.len();
    if pixels.number_of_frames() as usize != expected_frames {
        return Err(DicomError::Decode {
            file: h.label.clone(),
            transfer_syntax: ts.name().to_string(),
            message: format!(
                "decoded {} frames, NumberOfFrames says {expected_frames}",
                pixels.number_of_frames()
            ),
        });
    }
    let options = ConvertOptions::new()
        .with_modality_lut(ModalityLutOption::Default)
        .with_voi_lut(VoiLutOption::Identity);
    let hu: Vec<f32> = pixels
        .to_vec_with_options(&options)
        .map_err(|e| decode_err(&e))?;
    let want = expected_frames * h.rows as usize * h.columns as usize;
    if hu.len() != want {
        return Err(DicomError::Decode {
            file: h.label.clone(),
            transfer_syntax: ts.name().to_string(),
            message: format!(
                "decoded {} pixels, Rows x Columns x frames needs {want}",
                hu.len()
            ),
        });
    }
    Ok(hu)
}
