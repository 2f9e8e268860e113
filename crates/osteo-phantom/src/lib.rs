//! Synthetic osteoporosis cohort with known ground truth (DESIGN §10).
//!
//! No public CT+DXA cohort can be fetched here, so OsteoServe ships a generator whose truth is
//! known: patients with demographics and risk flags, a DXA T-score drawn from a documented model,
//! the WHO grade, and an abdominal CT phantom whose bone density follows the T-score.
//!
//! # T-score model
//!
//! For patient `i` (all draws from a ChaCha8 stream seeded by `(seed, i)`, so patients are
//! independent of cohort size and order):
//!
//! | variable | distribution |
//! |---|---|
//! | sex | female with probability [`TScoreModel::p_female`] (0.62) |
//! | age (years) | Normal(66, 10), truncated to [40, 95] |
//! | height (cm) | female Normal(159, 6.5), male Normal(172, 7.0), minus 0.15 cm per year over 60 |
//! | BMI (kg/m²) | Normal(25.0, 4.0), truncated to [16, 45]; weight = BMI × height² |
//! | prior fragility fracture | Bernoulli(0.04 + 0.005 × (age − 50)⁺) |
//! | glucocorticoids / smoker / rheumatoid arthritis | Bernoulli(0.07) / (0.12 F, 0.22 M) / Bernoulli(0.05) |
//! | each flag unknown | Bernoulli(0.08): the CSV leaves it empty |
//!
//! The T-score is `T = μ + ε` with the latent term `ε ~ Normal(0, σ_latent)` that no demographic
//! variable reveals, and the mean
//!
//! ```text
//! μ = intercept − slope_sex × (age − 50) + bmi_coef × (BMI − 25)
//!     − fracture × prior_fracture − gluco × glucocorticoids − smoker × smoker − ra × RA
//! ```
//!
//! with the coefficients of [`TScoreModel::default`]: intercept −0.60 (female) / −0.25 (male),
//! age slope 0.055 (female) / 0.035 (male) per year, BMI coefficient 0.085 per kg/m², flag shifts
//! 0.55 / 0.45 / 0.25 / 0.35, σ_latent 0.85. `T` is truncated to [−5.5, 3.5]; the grade follows
//! the WHO cut-offs (T ≥ −1.0 normal, T ≤ −2.5 osteoporosis, osteopenia between). Unknown flags
//! still act on `T` (the patient has them; only the record is missing).
//!
//! # Image model
//!
//! Bone attenuation follows the T-score ([`ImageModel`]), near the published L1 relation
//! (Pickhardt 2013: ≤ 160 HU sensitive, ≤ 110 HU specific for osteoporosis): vertebral trabecular
//! `HU = 190 + 35 × T + δ_patient + δ_vertebra`, femoral trabecular `170 + 38 × T + δ_patient`,
//! cortical `700 + 45 × T + δ_cortex`, with `δ_patient ~ Normal(0, 19)` (individual variation the
//! image shows but the T-score does not), `δ_vertebra ~ Normal(0, 6)` per vertebra and
//! `δ_cortex ~ Normal(0, 70)`. The scanner adds a calibration offset `Normal(0, 11)` HU to all
//! tissue and Gaussian noise with σ drawn from [8, 22] HU per study. See [`anatomy`] for the
//! phantom's structures, including the contrast-enhanced aorta whose HU (120–380) overlaps bone as
//! a deliberate confounder.
//!
//! # Oracle
//!
//! Because the generative model is known, [`Oracle`] computes each patient's Bayes-posterior grade
//! probabilities from what the record and the image carry. The parameters above are calibrated so
//! that on 3,012 held-out patients the oracle reaches the paper's difficulty: record + image macro
//! AUC 0.945 and accuracy 0.820, image alone 0.938 / 0.810, record alone 0.765 / 0.610 (seed 2024;
//! asserted by `crates/osteo-train/tests/oracle.rs`).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, missing_docs)]

pub mod anatomy;
pub mod error;
pub mod oracle;
pub mod patient;
pub mod rng;
pub mod writer;

pub use anatomy::{Anatomy, ImageModel, PhantomSpec, Truth, phantom_volume};
pub use error::PhantomError;
pub use oracle::{ImageEvidence, Oracle};
pub use patient::{Patient, TScoreModel, cohort};
pub use writer::{SeriesIdentity, write_series};
