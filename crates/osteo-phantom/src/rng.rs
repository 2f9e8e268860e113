//! Deterministic per-patient random streams and UIDs derived from the cohort seed.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// SplitMix64 finaliser: a well-mixed 64-bit hash of a 64-bit value.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The random stream of one purpose (`stream`) of one patient of a cohort.
pub fn stream(seed: u64, patient: u64, stream: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix(mix(seed)
        ^ mix(patient.wrapping_add(0x5151))
        ^ mix(stream.wrapping_mul(0x1234_5677))))
}

/// A DICOM UID under the `2.25` (UUID-derived) root, deterministic in its inputs.
pub fn uid(parts: &[u64]) -> String {
    let (mut hi, mut lo) = (0x243F_6A88_85A3_08D3u64, 0x1319_8A2E_0370_7344u64);
    for &p in parts {
        hi = mix(hi ^ p);
        lo = mix(lo ^ hi ^ p.rotate_left(17));
    }
    let v = (u128::from(hi) << 64 | u128::from(lo)) >> 2; // at most 38 digits
    format!("2.25.{v}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_valid_and_distinct() {
        let a = uid(&[1, 2, 3]);
        let b = uid(&[1, 2, 4]);
        assert_ne!(a, b);
        for u in [&a, &b] {
            assert!(u.len() <= 64 && u.starts_with("2.25."));
            assert!(u.chars().all(|c| c.is_ascii_digit() || c == '.'));
            assert!(!u["2.25.".len()..].starts_with('0'));
        }
        assert_eq!(uid(&[1, 2, 3]), a, "deterministic");
    }
}
