//! The ingest pipeline: read, parse, group, select, order, decode, assemble.

use crate::attrs::{self, Parsed};
use crate::demographics::Demographics;
use crate::error::DicomError;
use crate::frames::{self, FileHeader};
use crate::limits::IngestLimits;
use crate::series::{self, SeriesInfo};
use crate::source::DicomSource;
use crate::source_study::SourceStudy;
use crate::volume::{Volume, VolumeGeometry, Voxels};
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
    /// The patient's demographic attributes in the selected series' header (patient data:
    /// never logged).
    pub demographics: Demographics,
    /// The study and series the volume comes from, for results written as DICOM (patient
    /// data: never logged).
    pub source: SourceStudy,
    /// Every series in the input (UIDs included: for selection, not for logs).
    pub series: Vec<SeriesInfo>,
}

/// Collects results in input order, returning the first error by input order.
fn in_order<T: Send>(results: Vec<Result<T, DicomError>>) -> Result<Vec<T>, DicomError> {
    results.into_iter().collect()
}

/// A series read, parsed, selected and ordered from its headers, with no pixel decoded yet:
/// [`Planned::decoded_bytes`] says what decoding will allocate, so a caller can reserve it (or
/// refuse) before [`Planned::decode`] spends the memory and the CPU.
pub struct Planned {
    parsed: Vec<Parsed>,
    headers: Vec<FileHeader>,
    series: Vec<SeriesInfo>,
    files: Vec<usize>,
    ordered: series::Ordered,
    /// Every file's rescale is integral: decode into `i16` (falling back to `f32` if a value
    /// does not fit).
    try_i16: bool,
    /// The headers prove every value fits `i16`.
    proven_i16: bool,
}

/// Reads and parses a DICOM source, selects and orders the CT series and checks its size
/// limits, without decoding any pixel.
pub fn plan(source: DicomSource, options: &IngestOptions) -> Result<Planned, DicomError> {
    let limits = &options.limits;
    let files = source.inputs(limits)?;
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
    let mut groups = series::group(&headers);
    let series = series::describe(&headers, &groups);
    let uid = series::select(&series, options.series_uid.as_deref())?;
    let files = groups
        .remove(&uid)
        .filter(|f| !f.is_empty())
        .ok_or_else(|| DicomError::NoCtImages {
            details: "the selected series has no files".into(),
        })?;
    let ordered = series::order(&headers, &files)?;
    let n = ordered.slices.len() as u64;
    if n > limits.max_slices {
        return Err(DicomError::TooLarge {
            file: "study".into(),
            what: "slices in the series".into(),
            value: n,
            limit: limits.max_slices,
        });
    }
    let voxels = n * u64::from(ordered.rows) * u64::from(ordered.columns);
    if voxels > limits.max_voxels {
        return Err(DicomError::TooLarge {
            file: "study".into(),
            what: "voxels in the series".into(),
            value: voxels,
            limit: limits.max_voxels,
        });
    }
    let try_i16 = files.iter().all(|&f| headers[f].integral);
    let proven_i16 = files.iter().all(|&f| headers[f].fits_i16);
    Ok(Planned {
        parsed,
        headers,
        series,
        files,
        ordered,
        try_i16,
        proven_i16,
    })
}

impl Planned {
    /// The most bytes one decoded voxel can take: 2 (`i16`) when the headers prove integral HU
    /// within its range, else 4 (`f32`). Integral HU the headers cannot prove in range (16-bit
    /// signed data with an intercept) are still stored as `i16` when they fit, so the volume
    /// may end up smaller: [`Voxels::byte_len`] says what it takes.
    pub fn bytes_per_voxel(&self) -> u64 {
        if self.proven_i16 { 2 } else { 4 }
    }

    /// The most bytes the decoded volume can occupy (reserve this before [`Planned::decode`]).
    pub fn decoded_bytes(&self) -> u64 {
        self.ordered.slices.len() as u64
            * u64::from(self.ordered.rows)
            * u64::from(self.ordered.columns)
            * self.bytes_per_voxel()
    }

    /// Decodes every slice straight into its place in the volume, in parallel.
    pub fn decode(self) -> Result<Ingested, DicomError> {
        let slice_len = self.ordered.rows as usize * self.ordered.columns as usize;
        let n = self.ordered.slices.len();
        let decode = |dst: &mut [f32], s: &series::SliceRef| {
            let p = &self.parsed[s.file];
            match &p.native {
                Some(native) if s.frame == 0 && native.to_f32(dst)? => Ok(()),
                _ => decode_frame_into(p, &self.headers[s.file], s.frame, dst),
            }
        };
        let as_f32 = || -> Result<Voxels, DicomError> {
            let mut hu = vec![0f32; n * slice_len];
            in_order(
                hu.par_chunks_mut(slice_len)
                    .zip(self.ordered.slices.par_iter())
                    .map(|(dst, s)| decode(dst, s))
                    .collect(),
            )?;
            Ok(Voxels::F32(hu))
        };
        let hu = if self.try_i16 {
            let mut hu = vec![0i16; n * slice_len];
            let narrowed = in_order(
                hu.par_chunks_mut(slice_len)
                    .zip(self.ordered.slices.par_iter())
                    .map_init(
                        || vec![0f32; slice_len],
                        |frame, (dst, s)| match &self.parsed[s.file].native {
                            // Native samples go straight to i16.
                            Some(native) if s.frame == 0 => native.to_i16(dst),
                            _ => {
                                decode(frame, s)?;
                                Ok(narrow(frame, dst))
                            }
                        },
                    )
                    .collect(),
            )?;
            if narrowed.iter().all(|&ok| ok) {
                Voxels::I16(hu)
            } else {
                // The decoder disagreed with the rescale attributes: keep every value exact.
                drop(hu);
                as_f32()?
            }
        } else {
            as_f32()?
        };
        // What results need from the header, read from the series' first file.
        let (demographics, source) = match self.files.first() {
            Some(&f) => (
                Demographics::read(&self.parsed[f].obj),
                SourceStudy::read(
                    &self.parsed[f].obj,
                    self.files.iter().map(|&i| &*self.parsed[i].obj),
                    &self.headers[f].series_uid,
                ),
            ),
            None => Default::default(),
        };
        let Planned {
            headers,
            series,
            files,
            ordered,
            ..
        } = self;
        let (rows, columns) = (ordered.rows as usize, ordered.columns as usize);
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
        let modality = files
            .first()
            .map(|&f| headers[f].modality.clone())
            .unwrap_or_default();
        let mut volume = Volume::from_parts(hu, geometry, &modality, transfer_syntaxes)
            .ok_or_else(|| DicomError::Decode {
                file: "study".into(),
                transfer_syntax: String::new(),
                message: "decoded voxel count does not match the series dimensions".into(),
            })?;
        volume.summary.series_count = series.len();
        Ok(Ingested {
            volume,
            demographics,
            source,
            series,
        })
    }
}

/// Ingests a DICOM source into a HU volume of one CT series ([`plan`], then decode).
pub fn ingest(source: DicomSource, options: &IngestOptions) -> Result<Ingested, DicomError> {
    plan(source, options)?.decode()
}

/// Stores a decoded frame as `i16`; false when a value is not an integer in range (the headers
/// promised it would be), and the volume is then decoded as `f32` instead.
fn narrow(frame: &[f32], dst: &mut [i16]) -> bool {
    let range = f32::from(i16::MIN)..=f32::from(i16::MAX);
    for (d, &v) in dst.iter_mut().zip(frame) {
        if v.fract() != 0.0 || !range.contains(&v) {
            return false;
        }
        *d = v as i16;
    }
    true
}

/// Decodes one frame of a file into HU with the library's modality-LUT path, writing `dst`.
fn decode_frame_into(
    p: &Parsed,
    h: &FileHeader,
    frame: usize,
    dst: &mut [f32],
) -> Result<(), DicomError> {
    let uid = h.transfer_syntax.as_str();
    let Some(ts) = TransferSyntaxRegistry.get(uid) else {
        return Err(DicomError::UnsupportedTransferSyntax {
            file: h.label.clone(),
            uid: uid.to_string(),
            name: "unknown transfer syntax".into(),
        });
    };
    let unsupported = || DicomError::UnsupportedTransferSyntax {
        file: h.label.clone(),
        uid: uid.to_string(),
        name: ts.name().to_string(),
    };
    if !ts.can_decode_all() {
        return Err(unsupported());
    }
    let decode_err = |e: &dyn std::error::Error| {
        let message = osteo_core::error::chain(e);
        if message.to_ascii_lowercase().contains("unsupported") {
            unsupported()
        } else {
            DicomError::Decode {
                file: h.label.clone(),
                transfer_syntax: ts.name().to_string(),
                message,
            }
        }
    };
    let frame_index = u32::try_from(frame).map_err(|_| DicomError::Decode {
        file: h.label.clone(),
        transfer_syntax: ts.name().to_string(),
        message: format!("frame index {frame} out of range"),
    })?;
    let pixels = p
        .obj
        .decode_pixel_data_frame(frame_index)
        .map_err(|e| decode_err(&e))?;
    let options = ConvertOptions::new()
        .with_modality_lut(ModalityLutOption::Default)
        .with_voi_lut(VoiLutOption::Identity);
    let hu: Vec<f32> = pixels
        .to_vec_frame_with_options(0, &options)
        .map_err(|e| decode_err(&e))?;
    if hu.len() != dst.len() {
        return Err(DicomError::Decode {
            file: h.label.clone(),
            transfer_syntax: ts.name().to_string(),
            message: format!(
                "frame {frame} decoded to {} pixels, Rows x Columns is {}",
                hu.len(),
                dst.len()
            ),
        });
    }
    dst.copy_from_slice(&hu);
    Ok(())
}
