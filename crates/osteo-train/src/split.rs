//! Patient-level stratified train / validation / test split, reproducible from a seed.

use osteo_core::Grade;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// Indices of the three parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Training patients.
    pub train: Vec<usize>,
    /// Validation patients (early stopping).
    pub validation: Vec<usize>,
    /// Held-out test patients (reported metrics).
    pub test: Vec<usize>,
}

/// Splits patients by grade so every part keeps the class proportions (each patient has one
/// study, so a patient never appears in two parts).
pub fn stratified(grades: &[Grade], validation: f64, test: f64, seed: u64) -> Split {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut split = Split {
        train: Vec::new(),
        validation: Vec::new(),
        test: Vec::new(),
    };
    for g in Grade::ALL {
        let mut idx: Vec<usize> = (0..grades.len()).filter(|&i| grades[i] == g).collect();
        idx.shuffle(&mut rng);
        let n = idx.len();
        let n_test = ((n as f64) * test).round() as usize;
        let n_val = ((n as f64) * validation).round() as usize;
        split.test.extend_from_slice(&idx[..n_test.min(n)]);
        split
            .validation
            .extend_from_slice(&idx[n_test.min(n)..(n_test + n_val).min(n)]);
        split
            .train
            .extend_from_slice(&idx[(n_test + n_val).min(n)..]);
    }
    for part in [&mut split.train, &mut split.validation, &mut split.test] {
        part.sort_unstable();
    }
    split
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_disjoint_complete_stratified_and_seeded() {
        let grades: Vec<Grade> = (0..1000).map(|i| Grade::ALL[(i * 7 + i / 3) % 3]).collect();
        let s = stratified(&grades, 0.15, 0.15, 4);
        let mut all: Vec<usize> = s
            .train
            .iter()
            .chain(&s.validation)
            .chain(&s.test)
            .copied()
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        for g in Grade::ALL {
            let share = |part: &[usize]| {
                part.iter().filter(|&&i| grades[i] == g).count() as f64 / part.len() as f64
            };
            assert!(
                (share(&s.test) - share(&s.train)).abs() < 0.02,
                "{g} proportion kept"
            );
        }
        assert_eq!(stratified(&grades, 0.15, 0.15, 4), s);
        assert_ne!(stratified(&grades, 0.15, 0.15, 5), s);
    }
}
