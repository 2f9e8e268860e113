//! Native 16-bit little-endian pixels converted in place from the file's bytes. Most CT series
//! are stored so; for them the parser stops before Pixel Data (no copy of the value) and each
//! slice goes from its bytes straight into the volume, with the same arithmetic as
//! dicom-pixeldata's modality LUT: the sample masked to BitsStored, read as two's complement
//! when PixelRepresentation is 1, times RescaleSlope plus RescaleIntercept. Anything else
//! (other widths, multi-frame, functional groups, a Modality LUT Sequence) takes the library's
//! decoder.

use crate::attrs::{text, uint};
use crate::frames::{integral, rescale};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use std::ops::Range;

/// A single frame of native 16-bit samples inside a file's bytes, with its modality rescale.
pub(crate) struct NativePixels {
    bytes: Vec<u8>,
    range: Range<usize>,
    bits_stored: u32,
    signed: bool,
    slope: f64,
    intercept: f64,
}

impl NativePixels {
    /// The pixels of a file parsed up to Pixel Data, whose value lies at `range` in `bytes`;
    /// the bytes back when the file needs the library's decoder.
    pub(crate) fn qualify(
        obj: &InMemDicomObject,
        label: &str,
        bytes: Vec<u8>,
        range: Range<usize>,
    ) -> Result<Self, Vec<u8>> {
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
        let Ok(rescale) = rescale(obj, label) else {
            return Err(bytes);
        };
        if !plain || !(1..=16).contains(&bits_stored) || representation > 1 {
            return Err(bytes);
        }
        let (slope, intercept) = rescale.unwrap_or((1.0, 0.0));
        Ok(Self {
            bytes,
            range,
            bits_stored,
            signed: representation == 1,
            slope,
            intercept,
        })
    }

    /// Bytes of the Pixel Data value.
    pub(crate) fn len(&self) -> usize {
        self.range.len()
    }

    /// The stored values of the first `n` samples, as the modality LUT reads them; `None`
    /// when the value holds fewer.
    fn samples(&self, n: usize) -> Option<impl Iterator<Item = i32> + '_> {
        let raw = self
            .bytes
            .get(self.range.clone())?
            .get(..n.checked_mul(2)?)?;
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

    /// HU of every pixel into `dst`; false when the value holds too few samples.
    pub(crate) fn to_f32(&self, dst: &mut [f32]) -> bool {
        let Some(samples) = self.samples(dst.len()) else {
            return false;
        };
        for (d, v) in dst.iter_mut().zip(samples) {
            *d = (f64::from(v) * self.slope + self.intercept) as f32;
        }
        true
    }

    /// HU of every pixel into `dst` as integers; false when the rescale is not integral, a
    /// value falls outside `i16` or the value holds too few samples.
    pub(crate) fn to_i16(&self, dst: &mut [i16]) -> bool {
        // The rescale was bounded when the header was read (|slope| <= 1000, |intercept| <=
        // 65536), so the products below stay far inside i64.
        if !integral((self.slope, self.intercept)) {
            return false;
        }
        let (slope, intercept) = (self.slope as i64, self.intercept as i64);
        let Some(samples) = self.samples(dst.len()) else {
            return false;
        };
        let mut fits = true;
        for (d, v) in dst.iter_mut().zip(samples) {
            let hu = i64::from(v) * slope + intercept;
            fits &= i16::try_from(hu).is_ok();
            *d = hu as i16;
        }
        fits
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
        NativePixels {
            range: 6..bytes.len(),
            bytes,
            bits_stored,
            signed,
            slope: rescale.0,
            intercept: rescale.1,
        }
    }

    #[test]
    fn samples_are_masked_sign_extended_and_rescaled() {
        // BitsStored 12, signed: 0x0FFF is -1; the high (unused) bits are ignored.
        let p = pixels(&[0x0FFF, 0xF7FF, 0x0800, 0x0005], 12, true, (1.0, -1024.0));
        let mut i = [0i16; 4];
        assert!(p.to_i16(&mut i));
        assert_eq!(i, [-1025, 2047 - 1024, -2048 - 1024, 5 - 1024]);
        let mut f = [0f32; 4];
        assert!(p.to_f32(&mut f));
        assert_eq!(f, [-1025.0, 1023.0, -3072.0, -1019.0]);
        // Unsigned 16-bit with a fractional slope: only the f32 form.
        let p = pixels(&[0, 1, 65535], 16, false, (0.5, -1000.0));
        assert!(!p.to_i16(&mut [0i16; 3]));
        let mut f = [0f32; 3];
        assert!(p.to_f32(&mut f));
        assert_eq!(f, [-1000.0, -999.5, 31767.5]);
        // Out of i16 range, and too few samples.
        let p = pixels(&[65535], 16, false, (1.0, 0.0));
        assert!(!p.to_i16(&mut [0i16; 1]));
        assert!(!p.to_f32(&mut [0f32; 2]));
    }
}
