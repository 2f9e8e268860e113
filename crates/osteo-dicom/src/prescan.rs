//! A linear pre-scan of element lengths before the real parser runs.
//!
//! dicom-parser allocates each value at its declared length before reading it, so a file of a few
//! kilobytes whose header claims a 4 GB element makes it allocate 4 GB. This walk visits every
//! element header (descending into sequences and items, skipping encapsulated fragments) and
//! rejects a declared length that exceeds the bytes that remain. It never rejects what it does not
//! understand: on anything unexpected it stops and leaves the verdict to the parser.

use crate::element::attr_name;
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
    /// The walk needs bytes beyond the head it was given.
    Short,
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

/// Walks elements from `start`; with `meta_only` it stops at the first non-0002 group. `data`
/// is the file's first bytes and `total` its length: when `data` is only a head, the walk stops
/// at a top-level Pixel Data element (nothing after it is parsed) and answers [`Walk::Short`]
/// when it needs bytes beyond the head.
fn walk(
    data: &[u8],
    total: usize,
    start: usize,
    mut enc: Encoding,
    file: &str,
    meta_only: bool,
) -> Result<Walk, DicomError> {
    let head = data.len() < total;
    let ran_out = if head { Walk::Short } else { Walk::Fine(None) };
    let mut pos = start;
    let mut open: Vec<Open> = Vec::new();
    let mut ts: Option<String> = None;
    let mut pixels: Option<Range<usize>> = None;
    while pos + 8 <= data.len() {
        let (Some(group), Some(elem)) = (
            u16_at(data, pos, enc.little),
            u16_at(data, pos + 2, enc.little),
        ) else {
            return Ok(ran_out);
        };
        let tag = Tag(group, elem);
        if meta_only && group != 0x0002 {
            return Ok(Walk::MetaEnd(pos, ts));
        }
        if group == 0xFFFE {
            let Some(len) = u32_at(data, pos + 4, enc.little) else {
                return Ok(ran_out);
            };
            pos += 8;
            let in_fragments = matches!(open.last(), Some(Open::Fragments));
            match elem {
                0xE000 if len != UNDEFINED => {
                    if len as usize > total - pos {
                        return Err(too_long(file, tag, len, total - pos));
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
                    return Ok(ran_out);
                };
                (Some(vr), u32::from(len), 8)
            } else {
                let Some(len) = u32_at(data, pos + 8, enc.little) else {
                    return Ok(ran_out);
                };
                (Some(vr), len, 12)
            }
        } else {
            let Some(len) = u32_at(data, pos + 4, enc.little) else {
                return Ok(ran_out);
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
        if len as usize > total - pos {
            return Err(too_long(file, tag, len, total - pos));
        }
        if is_sq {
            continue; // descend: its items follow
        }
        if !meta_only && open.is_empty() && tag == Tag(0x7FE0, 0x0010) {
            pixels = Some(pos..pos + len as usize);
            if head {
                return Ok(Walk::Fine(pixels));
            }
        }
        if head && len as usize > data.len() - pos {
            return Ok(Walk::Short);
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
    Ok(if head {
        Walk::Short
    } else if meta_only {
        Walk::MetaEnd(pos, ts)
    } else {
        Walk::Fine(pixels)
    })
}

/// What the pre-scan found.
pub(crate) enum Lengths {
    /// Every length fits; for native little-endian pixels, where the Pixel Data value lies.
    Checked(Option<Range<usize>>),
    /// The head given is not enough: scan the whole file.
    Short,
}

/// Checks every declared element length against the bytes that remain. For the two native
/// little-endian transfer syntaxes, also returns where the top-level Pixel Data value lies in
/// `bytes` (defined length), so it can be read in place instead of copied by the parser.
/// `bytes` may be only the head of a file of `total` bytes: then the scan stops at Pixel Data
/// and answers [`Lengths::Short`] for anything but native little-endian pixels.
pub(crate) fn check_lengths(
    bytes: &[u8],
    total: usize,
    start: usize,
    file: &str,
    max_inflated: u64,
) -> Result<Lengths, DicomError> {
    let meta = Encoding {
        explicit: true,
        little: true,
    };
    let (body, ts) = match walk(bytes, total, start, meta, file, true)? {
        Walk::MetaEnd(body, ts) => (body, ts.unwrap_or_default()),
        Walk::Short => return Ok(Lengths::Short),
        Walk::Fine(_) => return Ok(Lengths::Checked(None)),
    };
    let head = bytes.len() < total;
    if head && ts != IMPLICIT_LE && ts != EXPLICIT_LE {
        return Ok(Lengths::Short);
    }
    let pixels = |walked: Walk| match walked {
        Walk::Fine(pixels) => Lengths::Checked(pixels),
        Walk::MetaEnd(..) => Lengths::Checked(None),
        Walk::Short => Lengths::Short,
    };
    let checked = |_: Walk| Lengths::Checked(None);
    match ts.as_str() {
        IMPLICIT_LE => walk(
            bytes,
            total,
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
            total,
            body,
            Encoding {
                explicit: true,
                little: false,
            },
            file,
            false,
        )
        .map(checked),
        DEFLATED => {
            let mut inflated = Vec::new();
            let reader = flate2::read::DeflateDecoder::new(&bytes[body..]);
            if reader
                .take(max_inflated + 1)
                .read_to_end(&mut inflated)
                .is_err()
            {
                return Ok(Lengths::Checked(None)); // corrupt stream: the parser reports it
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
                inflated.len(),
                0,
                Encoding {
                    explicit: true,
                    little: true,
                },
                file,
                false,
            )
            .map(checked)
        }
        other => walk(
            bytes,
            total,
            body,
            Encoding {
                explicit: true,
                little: true,
            },
            file,
            false,
        )
        // Encapsulated syntaxes share this encoding; only explicit VR LE pixels are native.
        .map(|w| match pixels(w) {
            Lengths::Checked(p) => Lengths::Checked(p.filter(|_| other == EXPLICIT_LE)),
            Lengths::Short => Lengths::Short,
        }),
    }
}
