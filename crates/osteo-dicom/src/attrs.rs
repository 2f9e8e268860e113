//! Parsing one Part-10 file and reading attributes robustly.
//!
//! dicom-rs does not re-read elements stored with VR UN through the data dictionary, so a file
//! whose RescaleSlope, ImagePositionPatient or Rows arrive as UN would otherwise be read as raw
//! bytes (the "VR-UN quirk"). [`parse`] re-types such elements from the dictionary before any
//! other code, including dicom-pixeldata's modality LUT, looks at them.

use crate::disk::{self, DiskRange};
use crate::error::DicomError;
use crate::limits::IngestLimits;
use crate::native::{Layout, NativePixels, PixelBytes};
use crate::prescan::{self, Lengths};
use crate::source::{Input, SourceFile};
use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::header::Header;
use dicom_core::value::{C, PrimitiveValue};
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::{StandardDataDictionary, tags};
use dicom_encoding::TransferSyntaxIndex;
use dicom_encoding::transfer_syntax::Endianness;
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

/// A parsed file with its label.
pub(crate) struct Parsed {
    pub label: String,
    /// The data set; without Pixel Data when `native` holds it.
    pub obj: DefaultDicomObject,
    /// Native 16-bit pixels read in place from the file's bytes.
    pub native: Option<NativePixels>,
}

impl Parsed {
    /// Whether the file has a Pixel Data element.
    pub fn has_pixel_data(&self) -> bool {
        self.native.is_some() || self.obj.get(tags::PIXEL_DATA).is_some()
    }
}

/// Parses one input file and repairs VR-UN elements. A file on disk is read whole only when its
/// pixels need the library's decoder; native pixels stay on disk until they are decoded.
pub(crate) fn parse(input: Input, limits: &IngestLimits) -> Result<Parsed, DicomError> {
    let path = match input {
        Input::Memory(SourceFile { label, bytes }) => return parse_bytes(label, bytes, limits),
        Input::Disk(path) => path,
    };
    let label = path.display().to_string();
    let (head, stamp) = disk::read_head(&path, limits)?;
    if head.len() as u64 == stamp.len() {
        return parse_bytes(label, head, limits);
    }
    let body_start = body_start(&head, &label)?;
    let total = usize::try_from(stamp.len()).unwrap_or(usize::MAX);
    if let Lengths::Checked(Some(range)) =
        prescan::check_lengths(&head, total, body_start, &label, limits.max_file_bytes)?
    {
        let obj = read_object(&head, &label, body_start, true)?;
        if let Some(layout) = Layout::of(&obj, &label) {
            let range = range.start as u64..range.end as u64;
            let bytes = PixelBytes::Disk(DiskRange::new(path, range, stamp));
            return Ok(Parsed {
                label,
                obj,
                native: Some(NativePixels::new(bytes, layout)),
            });
        }
    }
    drop(head);
    parse_bytes(label, disk::read_whole(&path, limits)?, limits)
}

/// Where the data set starts: after the 128-byte preamble and the magic code (132), or after a
/// magic code at the start (4); a clear error when there is none.
pub(crate) fn body_start(bytes: &[u8], label: &str) -> Result<usize, DicomError> {
    if bytes.is_empty() {
        return Err(DicomError::Parse {
            file: label.to_string(),
            message: "the file is empty (0 bytes)".into(),
        });
    }
    if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
        Ok(132)
    } else if bytes.len() >= 4 && &bytes[..4] == b"DICM" {
        Ok(4)
    } else {
        Err(DicomError::Parse {
            file: label.to_string(),
            message: "no DICM magic code at byte 128 (or 0): not a DICOM Part-10 file".into(),
        })
    }
}

/// Parses a data set from `bytes`, whose data set starts at `body_start` (see [`body_start`]),
/// up to Pixel Data with `until_pixels`, and repairs VR-UN elements.
pub(crate) fn read_object(
    bytes: &[u8],
    label: &str,
    body_start: usize,
    until_pixels: bool,
) -> Result<DefaultDicomObject, DicomError> {
    let preamble = if body_start == 132 {
        ReadPreamble::Always
    } else {
        ReadPreamble::Never
    };
    let mut options = OpenFileOptions::new().read_preamble(preamble);
    if until_pixels {
        options = options.read_until(tags::PIXEL_DATA);
    }
    let mut obj = options.from_reader(bytes).map_err(|e| DicomError::Parse {
        file: label.to_string(),
        message: osteo_core::error::chain(&e),
    })?;
    let endianness = TransferSyntaxRegistry
        .get(obj.meta().transfer_syntax())
        .map(|ts| ts.endianness())
        .unwrap_or(Endianness::Little);
    repair_un_elements(&mut obj, endianness);
    Ok(obj)
}

/// Parses a whole file's bytes (with or without the 128-byte preamble).
fn parse_bytes(label: String, bytes: Vec<u8>, limits: &IngestLimits) -> Result<Parsed, DicomError> {
    let body_start = body_start(&bytes, &label)?;
    let lengths = prescan::check_lengths(
        &bytes,
        bytes.len(),
        body_start,
        &label,
        limits.max_file_bytes,
    )?;
    // Native pixels: parse the header only and read the pixels in place later.
    if let Lengths::Checked(Some(range)) = lengths {
        let obj = read_object(&bytes, &label, body_start, true)?;
        if let Some(layout) = Layout::of(&obj, &label) {
            return Ok(Parsed {
                label,
                obj,
                native: Some(NativePixels::new(PixelBytes::Memory(bytes, range), layout)),
            });
        }
    }
    let obj = read_object(&bytes, &label, body_start, false)?;
    Ok(Parsed {
        label,
        obj,
        native: None,
    })
}

fn is_text_vr(vr: VR) -> bool {
    matches!(
        vr,
        VR::AE
            | VR::AS
            | VR::CS
            | VR::DA
            | VR::DS
            | VR::DT
            | VR::IS
            | VR::LO
            | VR::LT
            | VR::PN
            | VR::SH
            | VR::ST
            | VR::TM
            | VR::UC
            | VR::UI
            | VR::UR
            | VR::UT
    )
}

fn retype(bytes: &[u8], vr: VR, endianness: Endianness) -> Option<PrimitiveValue> {
    if is_text_vr(vr) {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim_end_matches(['\0', ' ']);
        let parts: C<String> = text.split('\\').map(|p| p.trim().to_string()).collect();
        return Some(PrimitiveValue::Strs(parts));
    }
    fn chunks<const N: usize>(bytes: &[u8]) -> Option<impl Iterator<Item = [u8; N]> + '_> {
        bytes
            .len()
            .is_multiple_of(N)
            .then(|| bytes.chunks_exact(N).filter_map(|c| c.try_into().ok()))
    }
    let big = matches!(endianness, Endianness::Big);
    Some(match vr {
        VR::US => PrimitiveValue::U16(
            chunks::<2>(bytes)?
                .map(|b| {
                    if big {
                        u16::from_be_bytes(b)
                    } else {
                        u16::from_le_bytes(b)
                    }
                })
                .collect(),
        ),
        VR::SS => PrimitiveValue::I16(
            chunks::<2>(bytes)?
                .map(|b| {
                    if big {
                        i16::from_be_bytes(b)
                    } else {
                        i16::from_le_bytes(b)
                    }
                })
                .collect(),
        ),
        VR::UL => PrimitiveValue::U32(
            chunks::<4>(bytes)?
                .map(|b| {
                    if big {
                        u32::from_be_bytes(b)
                    } else {
                        u32::from_le_bytes(b)
                    }
                })
                .collect(),
        ),
        VR::SL => PrimitiveValue::I32(
            chunks::<4>(bytes)?
                .map(|b| {
                    if big {
                        i32::from_be_bytes(b)
                    } else {
                        i32::from_le_bytes(b)
                    }
                })
                .collect(),
        ),
        VR::FL => PrimitiveValue::F32(
            chunks::<4>(bytes)?
                .map(|b| {
                    if big {
                        f32::from_be_bytes(b)
                    } else {
                        f32::from_le_bytes(b)
                    }
                })
                .collect(),
        ),
        VR::FD => PrimitiveValue::F64(
            chunks::<8>(bytes)?
                .map(|b| {
                    if big {
                        f64::from_be_bytes(b)
                    } else {
                        f64::from_le_bytes(b)
                    }
                })
                .collect(),
        ),
        _ => return None,
    })
}

/// Re-types top-level VR-UN elements whose standard VR is a text or fixed-size numeric VR.
fn repair_un_elements(obj: &mut DefaultDicomObject, endianness: Endianness) {
    let fixes: Vec<DataElement<InMemDicomObject>> = obj
        .iter()
        .filter(|e| e.vr() == VR::UN)
        .filter_map(|e| {
            let entry = StandardDataDictionary.by_tag(e.tag())?;
            let VirtualVr::Exact(vr) = entry.vr() else {
                return None;
            };
            let bytes = e.value().to_bytes().ok()?;
            let value = if bytes.is_empty() {
                PrimitiveValue::Empty
            } else {
                retype(&bytes, vr, endianness)?
            };
            Some(DataElement::new(e.tag(), vr, value))
        })
        .collect();
    for fix in fixes {
        obj.put(fix);
    }
}
