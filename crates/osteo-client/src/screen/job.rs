//! Screening one study: its series searched (an SR of this model version means already
//! screened), its CT series retrieved within the size limit, graded in one GradeStudy call
//! (upload, quality gate, explanation with DICOM outputs; nothing stays on the server), the SR
//! and secondary capture stored back.

use super::Row;
use super::grader::Grader;
use crate::error::ClientError;
use crate::retry::retry;
use osteo_core::error::chain;
use osteo_dicomweb::{DicomWeb, DicomWebError, attribute};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Modality (0008,0060) in DICOM JSON.
const MODALITY: &str = "00080060";
/// SeriesDescription (0008,103E) in DICOM JSON.
const SERIES_DESCRIPTION: &str = "0008103E";
/// SeriesInstanceUID (0020,000E) in DICOM JSON.
const SERIES_UID: &str = "0020000E";

/// The most CT series one study may list; more is a misconfigured PACS or no CT exam, and
/// retrieving them one by one would flood the PACS.
pub const MAX_CT_SERIES: usize = 64;

/// The CT series among a study's series (not earlier results or other modalities), at most
/// [`MAX_CT_SERIES`].
fn ct_series(series: &[serde_json::Value]) -> Result<Vec<&serde_json::Value>, ClientError> {
    let ct: Vec<&serde_json::Value> = series
        .iter()
        .filter(|s| attribute(s, MODALITY) == Some("CT"))
        .collect();
    if ct.len() > MAX_CT_SERIES {
        return Err(ClientError::Answer(format!(
            "the study lists {} CT series, more than the {MAX_CT_SERIES} one study may have",
            ct.len()
        )));
    }
    Ok(ct)
}

/// Where screening time goes: the stages, summed over studies.
pub const STAGES: [&str; 4] = [
    "PACS search",
    "PACS retrieval",
    "GradeStudy (upload, gate, grading, DICOM outputs)",
    "PACS store",
];

/// What every study's screening needs.
pub(super) struct Job {
    pub(super) pacs: DicomWeb,
    /// The model version that answers, on the server.
    pub(super) grader: Grader,
    /// Most bytes retrieved for one study.
    pub(super) max_study_bytes: u64,
    /// Where each graded study's FHIR Bundle goes.
    pub(super) fhir_dir: Option<std::path::PathBuf>,
    /// Nanoseconds spent in each of [`STAGES`], over all studies.
    pub(super) spent: [AtomicU64; 4],
}

impl Job {
    /// Runs `f`, adding its time to stage `i`.
    async fn timed<T>(&self, i: usize, f: impl std::future::Future<Output = T>) -> T {
        let start = Instant::now();
        let out = f.await;
        self.spent[i].fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        out
    }

    /// Screens one study; its row says how it ended.
    pub(super) async fn screen(&self, uid: &str) -> Row {
        let mut row = match self.run(uid).await {
            Ok(row) => row,
            Err(e) => Row::ended(uid, "error", chain(&e).replace('\n', " ")),
        };
        // Rows the server did not answer name the model version asked for.
        if row.provenance == Default::default() {
            row.provenance = self.grader.provenance();
        }
        row
    }

    async fn run(&self, uid: &str) -> Result<Row, ClientError> {
        let web = DicomWebError::is_transient;
        // One series search: an SR series of this model version (by its description, compared
        // here, not in the query: PACS differ in how they match text) means already screened;
        // otherwise only the CT series go to the server (not earlier results or other
        // modalities).
        let series = self
            .timed(
                0,
                retry(web, || {
                    self.pacs
                        .search_series(uid, &[], &[MODALITY, SERIES_DESCRIPTION])
                }),
            )
            .await?;
        let modality = |s: &serde_json::Value, m: &str| attribute(s, MODALITY) == Some(m);
        if series.iter().any(|s| {
            modality(s, "SR") && attribute(s, SERIES_DESCRIPTION) == Some(self.grader.description())
        }) {
            return Ok(Row::ended(
                uid,
                "skipped",
                "the PACS already holds an SR of this model version",
            ));
        }
        let series = ct_series(&series)?;
        // The study's CT series together stay within the study size limit.
        let mut files: Vec<bytes::Bytes> = Vec::new();
        let mut left = self.max_study_bytes;
        for s in &series {
            let series_uid = attribute(s, SERIES_UID).ok_or_else(|| {
                ClientError::Answer("a CT series of the study has no SeriesInstanceUID".into())
            })?;
            let got = self
                .timed(
                    1,
                    retry(web, || self.pacs.retrieve_series(uid, series_uid, left)),
                )
                .await
                .map_err(|e| match e {
                    DicomWebError::TooLarge { .. } => ClientError::Answer(format!(
                        "the study's CT series exceed --max-study-mib ({} MiB)",
                        self.max_study_bytes >> 20
                    )),
                    e => e.into(),
                })?;
            left = left.saturating_sub(got.iter().map(|f| f.len() as u64).sum());
            files.extend(got);
        }
        if files.is_empty() {
            return Ok(Row::ended(
                uid,
                "refused",
                "the PACS holds no CT series of the study",
            ));
        }
        // One GradeStudy call: the retrieved files (held once, views of the WADO-RS answers,
        // streamed again on a retry) uploaded, gated, explained with DICOM outputs; nothing
        // stays on the server, so any replica can answer and a retry is safe.
        let graded = self
            .timed(2, self.grader.grade(uid, std::sync::Arc::new(files)))
            .await?;
        if !graded.results.is_empty() {
            self.timed(
                3,
                retry(DicomWebError::is_transient, || {
                    self.pacs.store(&graded.results)
                }),
            )
            .await?;
        }
        if let (Some(dir), Some(bundle)) = (&self.fhir_dir, &graded.fhir) {
            super::write_fhir(dir, uid, bundle)?;
        }
        Ok(graded.row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(modality: &str) -> serde_json::Value {
        serde_json::json!({ MODALITY: { "vr": "CS", "Value": [modality] } })
    }

    #[test]
    fn only_ct_series_are_taken_and_a_flood_of_them_is_refused() {
        let mut listed = vec![series("SR"), series("CT"), series("MR")];
        assert_eq!(ct_series(&listed).expect("one CT").len(), 1);
        listed.extend((0..MAX_CT_SERIES).map(|_| series("CT")));
        let e = ct_series(&listed).expect_err("65 CT series");
        assert!(e.to_string().contains("65 CT series"), "{e}");
    }
}
