//! The WHO osteoporosis grade and the DXA T-score it is defined from.

use crate::error::CoreError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// WHO T-score cut-off at or above which bone density is normal.
pub const NORMAL_MIN_T: f64 = -1.0;
/// WHO T-score cut-off at or below which the grade is osteoporosis.
pub const OSTEOPOROSIS_MAX_T: f64 = -2.5;

/// A DXA T-score: standard deviations from the young-adult mean bone mineral density.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
pub struct TScore(f64);

impl TScore {
    /// Smallest T-score accepted as physiologically plausible.
    pub const MIN: f64 = -8.0;
    /// Largest T-score accepted as physiologically plausible.
    pub const MAX: f64 = 8.0;

    /// Validates a T-score: finite and within [`TScore::MIN`]..=[`TScore::MAX`].
    pub fn new(value: f64) -> Result<Self, CoreError> {
        if !value.is_finite() {
            return Err(CoreError::NotFinite {
                field: "t_score",
                value,
            });
        }
        if !(Self::MIN..=Self::MAX).contains(&value) {
            return Err(CoreError::OutOfRange {
                field: "t_score",
                value,
                unit: "SD",
                min: Self::MIN,
                max: Self::MAX,
            });
        }
        Ok(Self(value))
    }

    /// The value in standard deviations.
    pub fn value(self) -> f64 {
        self.0
    }

    /// The WHO grade of this T-score.
    pub fn grade(self) -> Grade {
        Grade::from_t_score(self)
    }
}

/// Osteoporosis grade by the WHO DXA T-score cut-offs (-1.0 and -2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Grade {
    /// T >= -1.0.
    Normal,
    /// -2.5 < T < -1.0.
    Osteopenia,
    /// T <= -2.5.
    Osteoporosis,
}

impl Grade {
    /// All grades in class-index order (the order of model logits).
    pub const ALL: [Grade; 3] = [Grade::Normal, Grade::Osteopenia, Grade::Osteoporosis];

    /// The grade of a T-score by the WHO cut-offs: -1.0 itself is normal, -2.5 itself is
    /// osteoporosis.
    pub fn from_t_score(t: TScore) -> Grade {
        let v = t.value();
        if v >= NORMAL_MIN_T {
            Grade::Normal
        } else if v > OSTEOPOROSIS_MAX_T {
            Grade::Osteopenia
        } else {
            Grade::Osteoporosis
        }
    }

    /// The class index used by models (0 normal, 1 osteopenia, 2 osteoporosis).
    pub fn index(self) -> usize {
        match self {
            Grade::Normal => 0,
            Grade::Osteopenia => 1,
            Grade::Osteoporosis => 2,
        }
    }

    /// The grade for a class index, if the index is valid.
    pub fn from_index(i: usize) -> Option<Grade> {
        Grade::ALL.get(i).copied()
    }

    /// The grade with the largest of three class scores (probabilities or logits, class order);
    /// the first wins a tie. Scores that are not comparable (NaN) have no grade: None.
    pub fn most_probable<T: PartialOrd + Copy>(scores: &[T; 3]) -> Option<Grade> {
        if scores.iter().any(|s| s.partial_cmp(s).is_none()) {
            return None;
        }
        let best = (1..3).fold(0, |b, k| if scores[k] > scores[b] { k } else { b });
        Some(Grade::ALL[best])
    }

    /// The lowercase name used in APIs, files and reports.
    pub fn name(self) -> &'static str {
        match self {
            Grade::Normal => "normal",
            Grade::Osteopenia => "osteopenia",
            Grade::Osteoporosis => "osteoporosis",
        }
    }
}

impl fmt::Display for Grade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Grade {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Grade::ALL
            .into_iter()
            .find(|g| g.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| CoreError::Parse {
                field: "grade",
                message: format!(
                    "unknown grade {s:?}; expected normal, osteopenia or osteoporosis"
                ),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grade(v: f64) -> Grade {
        TScore::new(v).expect("valid").grade()
    }

    #[test]
    fn who_cut_offs_and_their_boundaries() {
        assert_eq!(grade(0.5), Grade::Normal);
        assert_eq!(grade(-1.0), Grade::Normal, "-1.0 itself is normal");
        assert_eq!(grade(-1.0 - 1e-9), Grade::Osteopenia);
        assert_eq!(grade(-1.7), Grade::Osteopenia);
        assert_eq!(grade(-2.5 + 1e-9), Grade::Osteopenia);
        assert_eq!(
            grade(-2.5),
            Grade::Osteoporosis,
            "-2.5 itself is osteoporosis"
        );
        assert_eq!(grade(-4.0), Grade::Osteoporosis);
    }

    #[test]
    fn t_score_rejects_non_finite_and_absurd_values() {
        assert!(matches!(
            TScore::new(f64::NAN),
            Err(CoreError::NotFinite { .. })
        ));
        assert!(matches!(
            TScore::new(f64::INFINITY),
            Err(CoreError::NotFinite { .. })
        ));
        assert!(matches!(
            TScore::new(-9.0),
            Err(CoreError::OutOfRange { .. })
        ));
        assert!(matches!(
            TScore::new(9.0),
            Err(CoreError::OutOfRange { .. })
        ));
    }

    #[test]
    fn most_probable_picks_the_largest_score_and_the_first_on_ties() {
        assert_eq!(
            Grade::most_probable(&[0.2, 0.5, 0.3]),
            Some(Grade::Osteopenia)
        );
        assert_eq!(
            Grade::most_probable(&[1.0f32, -2.0, 3.0]),
            Some(Grade::Osteoporosis)
        );
        assert_eq!(Grade::most_probable(&[0.4, 0.4, 0.2]), Some(Grade::Normal));
        assert_eq!(Grade::most_probable(&[f32::NAN, 0.1, 0.2]), None);
        assert_eq!(Grade::most_probable(&[0.1, 0.2, f64::NAN]), None);
    }

    #[test]
    fn index_and_name_round_trip() {
        for g in Grade::ALL {
            assert_eq!(Grade::from_index(g.index()), Some(g));
            assert_eq!(g.name().parse::<Grade>().expect("parses"), g);
        }
        assert_eq!(Grade::from_index(3), None);
        assert!("severe".parse::<Grade>().is_err());
    }
}
