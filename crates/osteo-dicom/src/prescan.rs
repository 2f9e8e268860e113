//! A linear pre-scan of element lengths before the real parser runs.
//!
//! dicom-parser allocates each value at its declared length before reading it, so a file of a few
//! kilobytes whose header claims a 4 GB element makes it allocate 4 GB. This walk visits every
//! element header (descending into sequences and items, skipping encapsulated fragments) and
//! rejects a declared length that exceeds the bytes that remain. It never rejects what it does not
//! understand: on anything unexpected it stops and leaves the verdict to the parser.

use crate::attrs::attr_name;
use crate::error::DicomError;
use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;
use std::io::Read;
use std::ops::Range;

const UNDEFINED: u32 = 0xFFFF_FFFF;
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const EXPLICIT_BE: &str = "1.2.840.10008.1.2.2";
const DEFLATED: &str = "1.2.840.10008.1.2.1.99";

#[derive(Clone, Copy)]
struct Encoding {
    explicit: bool,
    little: bool,
}

fn u16_at(b: &[u8], i: usize, little: bool) -> Option<u16> {
    let s: [u8; 2] = b.get(i..i + 2)?.try_into().ok()?;
    Some(if little {
        u16::from_le_bytes(s)
    } else {
        u16::from_be_bytes(s)
    })
}

fn u32_at(b: &[u8], i: usize, little: bool) -> Option<u32> {
    let s: [u8; 4] = b.get(i..i + 4)?.try_into().ok()?;
    Some(if little {
        u32::from_le_bytes(s)
    } else {
        u32::from_be_bytes(s)
    })
}

/// Explicit VRs with a 2-byte length field (PS3.5 7.1.2); every other VR, unknown ones included
/// (read as UN, as dicom-parser does), has a 4-byte length after two reserved bytes.
fn short_length_vr(vr: VR) -> bool {
    use VR::*;
    matches!(
        vr,
        AE | AS
            | AT
            | CS
            | DA
            | DS
            | DT
            | FL
            | FD
            | IS
            | LO
            | LT
            | PN
            | SH
            | SL
            | SS
            | ST
            | TM
            | UI
            | UL
            | US
    )
}

fn is_sequence_in_dictionary(tag: Tag) -> bool {
    StandardDataDictionary
        .by_tag(tag)
        .is_some_and(|e| matches!(e.vr(), VirtualVr::Exact(VR::SQ)))
}

/// Outcome of walking one data set.
enum Walk {
    /// Every length fits (or the walk stopped on something it leaves to the parser), with the
    /// value bytes of a top-level, defined-length Pixel Data element when the walk completed.
    Fine(Option<Range<usize>>),
    /// Meta group ended at this offset (only when walking the meta group).
    MetaEnd(usize, Option<String>),
}

/// An open undefined-length container, closed by a sequence delimiter.
enum Open {
    /// A sequence; the encoding to restore when it closes.
    Sequence(Encoding),
    /// Encapsulated pixel data: items are opaque fragments.
    Fragments,
}

fn too_long(file: &str, tag: Tag, declared: u32, remaining: usize) -> DicomError {
    DicomError::invalid(
        file,
        &attr_name(tag),
        format!(
            "declares {declared} bytes but only {remaining} remain in the file (corrupt or truncated)"
        ),
    )
}

/// Walks elements from `start`; with `meta_only` it stops at the first non-0002 group.
fn walk(
    data: &[u8],
    start: usize,
    mut enc: Encoding,
    file: &str,
    meta_only: bool,
) -> Result<Walk, DicomError> {
    let mut pos = start;
    let mut open: Vec<Open> = Vec::new();
    let mut ts: Option<String> = None;
    let mut pixels: Option<Range<usize>> = None;
    while pos + 8 <= data.len() {
        let (Some(group), Some(elem)) = (
            u16_at(data, pos, enc.little),
            u16_at(data, pos + 2, enc.little),
        ) else {
            return Ok(Walk::Fine(None));
        };
        let tag = Tag(group, elem);
        if meta_only && group != 0x0002 {
            return Ok(Walk::MetaEnd(pos, ts));
        }
        if group == 0xFFFE {
            let Some(len) = u32_at(data, pos + 4, enc.little) else {
                return Ok(Walk::Fine(None));
            };
            pos += 8;
            let in_fragments = matches!(open.last(), Some(Open::Fragments));
            match elem {
                0xE000 if len != UNDEFINED => {
                    if len as usize > data.len() - pos {
                        return Err(too_long(file, tag, len, data.len() - pos));
                    }
                    if in_fragments {
                        pos += len as usize;
                    }
                }
                0xE0DD => match open.pop() {
                    Some(Open::Sequence(outer)) => enc = outer,
                    Some(Open::Fragments) | None => {}
                },
                _ => {}
            }
            continue;
        }
        let (vr, len, header) = if enc.explicit {
            let vr = VR::from_binary([data[pos + 4], data[pos + 5]]).unwrap_or(VR::UN);
            if short_length_vr(vr) {
                let Some(len) = u16_at(data, pos + 6, enc.little) else {
                    return Ok(Walk::Fine(None));
                };
                (Some(vr), u32::from(len), 8)
            } else {
                let Some(len) = u32_at(data, pos + 8, enc.little) else {
                    return Ok(Walk::Fine(None));
                };
                (Some(vr), len, 12)
            }
        } else {
            let Some(len) = u32_at(data, pos + 4, enc.little) else {
                return Ok(Walk::Fine(None));
            };
            (None, len, 8)
        };
        pos += header;
        let is_sq = match vr {
            Some(v) => v == VR::SQ,
            None => is_sequence_in_dictionary(tag),
        };
        if len == UNDEFINED {
            if tag == Tag(0x7FE0, 0x0010) {
                open.push(Open::Fragments);
            } else {
                open.push(Open::Sequence(enc));
                if vr == Some(VR::UN) {
                    // PS3.5 6.2.2: an undefined-length UN holds implicit VR little endian.
                    enc = Encoding {
                        explicit: false,
                        little: true,
                    };
                }
            }
            continue;
        }
        if len as usize > data.len() - pos {
            return Err(too_long(file, tag, len, data.len() - pos));
        }
        if is_sq {
            continue; // descend: its items follow
        }
        if !meta_only && open.is_empty() && tag == Tag(0x7FE0, 0x0010) {
            pixels = Some(pos..pos + len as usize);
        }
        if meta_only && tag == Tag(0x0002, 0x0010) {
            let raw = &data[pos..pos + len as usize];
            ts = Some(
                String::from_utf8_lossy(raw)
                    .trim_end_matches(['\0', ' '])
                    .to_string(),
            );
        }
        pos += len as usize;
    }
    Ok(if meta_only {
        Walk::MetaEnd(pos, ts)
    } else {
        Walk::Fine(pixels)
    })
}

/// Checks every declared element length against the bytes that remain. For the two native
/// little-endian transfer syntaxes, also returns where the top-level Pixel Data value lies in
/// `bytes` (defined length), so it can be read in place instead of copied by the parser.
pub(crate) fn check_lengths(
    bytes: &[u8],
    start: usize,
    file: &str,
    max_inflated: u64,
) -> Result<Option<Range<usize>>, DicomError> {
    let meta = Encoding {
        explicit: true,
        little: true,
    };
    let Walk::MetaEnd(body, ts) = walk(bytes, start, meta, file, true)? else {
        return Ok(None);
    };
    let ts = ts.unwrap_or_default();
    let pixels = |walked: Walk| match walked {
        Walk::Fine(pixels) => pixels,
        Walk::MetaEnd(..) => None,
    };
    match ts.as_str() {
        IMPLICIT_LE => walk(
            bytes,
            body,
            Encoding {
                explicit: false,
                little: true,
            },
            file,
            false,
        )
        .map(pixels),
        EXPLICIT_BE => walk(
            bytes,
            body,
            Encoding {
                explicit: true,
                little: false,
            },
            file,
            false,
        )
        .map(|_| None),
        DEFLATED => {
            let mut inflated = Vec::new();
            let reader = flate2::read::DeflateDecoder::new(&bytes[body..]);
            if reader
                .take(max_inflated + 1)
                .read_to_end(&mut inflated)
                .is_err()
            {
                return Ok(None); // corrupt stream: the parser reports it
            }
            if inflated.len() as u64 > max_inflated {
                return Err(DicomError::TooLarge {
                    file: file.to_string(),
                    what: "inflated size of the deflated data set in bytes".into(),
                    value: inflated.len() as u64,
                    limit: max_inflated,
                });
            }
            walk(
                &inflated,
                0,
                Encoding {
                    explicit: true,
                    little: true,
                },
                file,
                false,
            )
            .map(|_| None)
        }
        other => walk(
            bytes,
            body,
            Encoding {
                explicit: true,
                little: true,
            },
            file,
            false,
        )
        // Encapsulated syntaxes share this encoding; only explicit VR LE pixels are native.
        .map(|w| pixels(w).filter(|_| other == EXPLICIT_LE)),
    }
}
