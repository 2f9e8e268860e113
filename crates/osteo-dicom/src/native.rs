//! Native 16-bit little-endian pixels converted in place. Most CT series are stored so; for
//! them the parser stops before Pixel Data (no copy of the value) and each slice goes from the
//! file's bytes (in memory, or read straight from disk when it is decoded) into the volume, with
//! the same arithmetic as dicom-pixeldata's modality LUT: the sample masked to BitsStored, read as
//! two's complement when PixelRepresentation is 1, times RescaleSlope plus RescaleIntercept.
//! Anything else (other widths, multi-frame, functional groups, a Modality LUT Sequence) takes
//! the library's decoder.

use crate::disk::DiskRange;
use crate::element::{text, uint};
use crate::error::DicomError;
use crate::rescale::{integral, rescale};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use std::cell::RefCell;
use std::ops::Range;

/// Where the Pixel Data value's bytes are.
pub(crate) enum PixelBytes {
    /// In the file's bytes in memory.
    Memory(Vec<u8>, Range<usize>),
    /// In a file on disk, read when the slice is decoded.
    Disk(DiskRange),
}

impl PixelBytes {
    fn len(&self) -> u64 {
        match self {
            PixelBytes::Memory(_, range) => range.len() as u64,
            PixelBytes::Disk(range) => range.len(),
        }
    }

    /// Runs `f` on the value's bytes; those on disk are read into this thread's buffer, which
    /// is kept for the thread's next slice (fresh pages for every slice would cost more than
    /// reading them).
    fn with<T>(&self, f: impl FnOnce(&[u8]) -> T) -> Result<T, DicomError> {
        thread_local! {
            static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        match self {
            PixelBytes::Memory(bytes, range) => Ok(f(bytes.get(range.clone()).unwrap_or_default())),
            PixelBytes::Disk(range) => SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                range.read_into(&mut scratch)?;
                Ok(f(&scratch))
            }),
        }
    }
}

/// How a file's native samples become HU.
pub(crate) struct Layout {
    bits_stored: u32,
    signed: bool,
    slope: f64,
    intercept: f64,
}

impl Layout {
    /// The layout of a file parsed up to Pixel Data when its pixels can be read in place:
    /// `None` when the file needs the library's decoder.
    pub(crate) fn of(obj: &InMemDicomObject, label: &str) -> Option<Self> {
        let number = |tag| uint(obj, label, tag).ok().flatten();
        let plain = number(tags::BITS_ALLOCATED) == Some(16)
            && number(tags::SAMPLES_PER_PIXEL).unwrap_or(1) == 1
            && number(tags::NUMBER_OF_FRAMES).unwrap_or(1) <= 1
            && matches!(
                text(obj, tags::PHOTOMETRIC_INTERPRETATION).as_deref(),
                Some("MONOCHROME1" | "MONOCHROME2")
            )
            && [
                tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
                tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
                tags::MODALITY_LUT_SEQUENCE,
            ]
            .iter()
            .all(|&t| obj.get(t).is_none());
        let bits_stored = number(tags::BITS_STORED).unwrap_or(16);
        let representation = number(tags::PIXEL_REPRESENTATION).unwrap_or(0);
        // The header's validated rescale; an unreadable or implausible one takes the library
        // path, whose header check reports it.
        let rescale = rescale(obj, label).ok()?;
        if !plain || !(1..=16).contains(&bits_stored) || representation > 1 {
            return None;
        }
        let (slope, intercept) = rescale.unwrap_or((1.0, 0.0));
        Some(Self {
            bits_stored,
            signed: representation == 1,
            slope,
            intercept,
        })
    }

    /// The stored values of the first `n` samples of `raw`, as the modality LUT reads them;
    /// `None` when it holds fewer.
    fn samples(&self, raw: &[u8], n: usize) -> Option<impl Iterator<Item = i32>> {
        let raw = raw.get(..n.checked_mul(2)?)?;
        let size = 1u32 << self.bits_stored;
        let (mask, half, signed) = (size - 1, size / 2, self.signed);
        Some(raw.chunks_exact(2).map(move |b| {
            let v = u32::from(u16::from_le_bytes([b[0], b[1]])) & mask;
            if signed && v >= half {
                v as i32 - size as i32
            } else {
                v as i32
            }
        }))
    }

    /// HU of every pixel into `dst`; false when `raw` holds too few samples.
    fn to_f32(&self, raw: &[u8], dst: &mut [f32]) -> bool {
        let Some(samples) = self.samples(raw, dst.len()) else {
            return false;
        };
        for (d, v) in dst.iter_mut().zip(samples) {
            *d = (f64::from(v) * self.slope + self.intercept) as f32;
        }
        true
    }

    /// HU of every pixel into `dst` as integers; false when the rescale is not integral, a
    /// value falls outside `i16` or `raw` holds too few samples.
    fn to_i16(&self, raw: &[u8], dst: &mut [i16]) -> bool {
        if !integral((self.slope, self.intercept)) {
            return false;
        }
        let Some(raw) = dst.len().checked_mul(2).and_then(|n| raw.get(..n)) else {
            return false;
        };
        // The rescale was bounded when the header was read (|slope| <= 1000, |intercept| <=
        // 65536), so every product stays inside i32 and the loop can run on SIMD lanes.
        let (slope, intercept) = (self.slope as i32, self.intercept as i32);
        let shift = 32 - self.bits_stored;
        if self.signed {
            convert_i16::<true>(raw, dst, shift, slope, intercept)
        } else {
            convert_i16::<false>(raw, dst, shift, slope, intercept)
        }
    }
}

/// The modality LUT on little-endian samples: shifting left by `shift` drops the bits above
/// BitsStored, shifting back sign-extends (`SIGNED`) or zero-extends; false when a value falls
/// outside `i16`.
fn convert_i16<const SIGNED: bool>(
    raw: &[u8],
    dst: &mut [i16],
    shift: u32,
    slope: i32,
    intercept: i32,
) -> bool {
    let mut fits = true;
    for (d, b) in dst.iter_mut().zip(raw.chunks_exact(2)) {
        let high = u32::from(u16::from_le_bytes([b[0], b[1]])) << shift;
        let v = if SIGNED {
            (high as i32) >> shift
        } else {
            (high >> shift) as i32
        };
        let hu = v * slope + intercept;
        fits &= i32::from(hu as i16) == hu;
        *d = hu as i16;
    }
    fits
}

/// A single frame of native 16-bit samples with its modality rescale.
pub(crate) struct NativePixels {
    bytes: PixelBytes,
    layout: Layout,
}

impl NativePixels {
    /// The pixels at `bytes`, converted as `layout` says.
    pub(crate) fn new(bytes: PixelBytes, layout: Layout) -> Self {
        Self { bytes, layout }
    }

    /// Bytes of the Pixel Data value.
    pub(crate) fn len(&self) -> u64 {
        self.bytes.len()
    }

    /// HU of every pixel into `dst`; false when the value holds too few samples.
    pub(crate) fn to_f32(&self, dst: &mut [f32]) -> Result<bool, DicomError> {
        self.bytes.with(|raw| self.layout.to_f32(raw, dst))
    }

    /// HU of every pixel into `dst` as integers; false when the rescale is not integral, a
    /// value falls outside `i16` or the value holds too few samples.
    pub(crate) fn to_i16(&self, dst: &mut [i16]) -> Result<bool, DicomError> {
        self.bytes.with(|raw| self.layout.to_i16(raw, dst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pixels(
        samples: &[u16],
        bits_stored: u32,
        signed: bool,
        rescale: (f64, f64),
    ) -> NativePixels {
        let mut bytes = vec![0xAA; 6]; // bytes before the value
        bytes.extend(samples.iter().flat_map(|s| s.to_le_bytes()));
        let range = 6..bytes.len();
        NativePixels::new(
            PixelBytes::Memory(bytes, range),
            Layout {
                bits_stored,
                signed,
                slope: rescale.0,
                intercept: rescale.1,
            },
        )
    }

    /// Converts to i16 and f32 (None where the conversion refuses).
    fn both<const N: usize>(p: &NativePixels) -> (Option<[i16; N]>, Option<[f32; N]>) {
        let (mut i, mut f) = ([0i16; N], [0f32; N]);
        let i_ok = p.to_i16(&mut i).expect("in memory");
        let f_ok = p.to_f32(&mut f).expect("in memory");
        (i_ok.then_some(i), f_ok.then_some(f))
    }

    #[test]
    fn samples_are_masked_sign_extended_and_rescaled() {
        // BitsStored 12, signed: 0x0FFF is -1; the high (unused) bits are ignored.
        let p = pixels(&[0x0FFF, 0xF7FF, 0x0800, 0x0005], 12, true, (1.0, -1024.0));
        assert_eq!(
            both::<4>(&p),
            (
                Some([-1025, 2047 - 1024, -2048 - 1024, 5 - 1024]),
                Some([-1025.0, 1023.0, -3072.0, -1019.0])
            )
        );
        // Unsigned 16-bit with a fractional slope: only the f32 form.
        let p = pixels(&[0, 1, 65535], 16, false, (0.5, -1000.0));
        assert_eq!(both::<3>(&p), (None, Some([-1000.0, -999.5, 31767.5])));
        // Out of i16 range, and too few samples.
        let p = pixels(&[65535], 16, false, (1.0, 0.0));
        assert_eq!(both::<1>(&p).0, None);
        assert_eq!(both::<2>(&p), (None, None));
    }

    #[test]
    fn the_lane_loop_matches_the_lookup_arithmetic_at_every_depth() {
        // Every stored width and sign against the reference reading of `samples` (the
        // library's LUT arithmetic), over values that set the bits above BitsStored too.
        let raw: Vec<u16> = (0..4096u32)
            .map(|i| (i.wrapping_mul(40_503) >> 3) as u16)
            .collect();
        for bits in 1..=16 {
            for signed in [false, true] {
                for rescale in [(1.0, -1024.0), (2.0, 7.0), (-1.0, 0.0)] {
                    let p = pixels(&raw, bits, signed, rescale);
                    let mut dst = vec![0i16; raw.len()];
                    let fits = p.to_i16(&mut dst).expect("in memory");
                    let bytes: Vec<u8> = raw.iter().flat_map(|s| s.to_le_bytes()).collect();
                    let want: Vec<i64> = p
                        .layout
                        .samples(&bytes, raw.len())
                        .expect("enough samples")
                        .map(|v| i64::from(v) * rescale.0 as i64 + rescale.1 as i64)
                        .collect();
                    let in_range = want.iter().all(|&h| i16::try_from(h).is_ok());
                    assert_eq!(fits, in_range, "bits {bits} signed {signed} {rescale:?}");
                    if in_range {
                        let want: Vec<i16> = want.iter().map(|&h| h as i16).collect();
                        assert_eq!(dst, want, "bits {bits} signed {signed} {rescale:?}");
                    }
                }
            }
        }
    }
}
