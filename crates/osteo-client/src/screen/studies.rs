//! Which studies a screening run takes: listed, from a worklist CSV or found by a QIDO-RS
//! query; unique, valid, this worker's shard, and not finished by an earlier run (the rows of
//! the results CSV with a final status).

use super::Row;
use crate::error::ClientError;
use osteo_dicomweb::valid_uid;
use std::path::Path;

/// The most rows a worklist may hold.
const MAX_WORKLIST: usize = 10_000_000;

/// A worker's share of the studies: K of N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This worker's index, from 0.
    pub k: u64,
    /// The number of workers.
    pub n: u64,
}

impl Shard {
    /// `K/N` with 0 <= K < N.
    pub fn parse(text: &str) -> Result<Self, ClientError> {
        let bad = || {
            ClientError::InvalidArgument(format!(
                "--shard {text}: expected K/N with 0 <= K < N, e.g. 0/4"
            ))
        };
        let (k, n) = text.split_once('/').ok_or_else(bad)?;
        let (k, n): (u64, u64) = (
            k.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if n == 0 || k >= n {
            return Err(bad());
        }
        Ok(Self { k, n })
    }

    /// Whether study `uid` is this worker's (independent of list order).
    pub fn holds(&self, uid: &str) -> bool {
        fnv1a(uid) % self.n == self.k
    }
}

/// FNV-1a of a UID: the shard a study belongs to does not depend on list order.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The worklist's study UIDs (its `study_uid` column).
pub fn worklist(path: &Path) -> Result<Vec<String>, ClientError> {
    let what = || format!("--worklist {}", path.display());
    let mut reader = csv::Reader::from_path(path).map_err(|e| ClientError::file(what(), e))?;
    let column = reader
        .headers()
        .map_err(|e| ClientError::file(what(), e))?
        .iter()
        .position(|h| h.trim() == "study_uid")
        .ok_or_else(|| ClientError::file(what(), "no study_uid column"))?;
    let mut uids = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| ClientError::file(what(), e))?;
        uids.push(record.get(column).unwrap_or_default().trim().to_string());
        if uids.len() > MAX_WORKLIST {
            return Err(ClientError::file(what(), "more than 10,000,000 rows"));
        }
    }
    Ok(uids)
}

/// Every complete row of a results file, each with all of [`Row::COLUMNS`] (a file written
/// before the provenance or decision columns has them empty), and whether the file has the current columns.
fn rows(path: &Path) -> Result<(Vec<Vec<String>>, bool), ClientError> {
    if !path.exists() {
        return Ok((Vec::new(), true));
    }
    let what = || format!("--results {}", path.display());
    // Flexible: a run killed mid-write may have left a partial last line; it is screened again.
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .map_err(|e| ClientError::file(what(), e))?;
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| ClientError::file(what(), e))?
        .iter()
        .map(str::to_string)
        .collect();
    let current = headers == Row::COLUMNS;
    if !current
        && !Row::EARLIER_COLUMNS
            .iter()
            .any(|&n| headers == Row::COLUMNS[..n])
    {
        return Err(ClientError::file(
            what(),
            "not a results file of osteo screen (columns differ)",
        ));
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let Ok(record) = record else { continue };
        if record.len() == headers.len() && valid_uid(&record[0]) {
            let mut row: Vec<String> = record.iter().map(str::to_string).collect();
            row.resize(Row::COLUMNS.len(), String::new());
            rows.push(row);
        }
    }
    Ok((rows, current))
}

/// Rows of an earlier run with a final status (classified, refused, skipped).
pub fn earlier(path: &Path) -> Result<Vec<Vec<String>>, ClientError> {
    let (mut rows, _) = rows(path)?;
    rows.retain(|r| matches!(r[1].as_str(), "classified" | "refused" | "skipped"));
    Ok(rows)
}

/// Rewrites a results file written before the provenance or decision columns with the current
/// columns (every row kept, the missing columns empty), through a file beside it renamed over it; a current
/// or missing file is left as it is.
pub fn upgrade(path: &Path) -> Result<(), ClientError> {
    let (rows, current) = rows(path)?;
    if current {
        return Ok(());
    }
    let what = || format!("--results {}", path.display());
    let tmp = path.with_extension("upgrade.tmp");
    let mut out = csv::Writer::from_path(&tmp).map_err(|e| ClientError::file(what(), e))?;
    for r in std::iter::once(Row::COLUMNS.map(String::from).to_vec()).chain(rows) {
        out.write_record(&r)
            .map_err(|e| ClientError::file(what(), e))?;
    }
    let file = out
        .into_inner()
        .map_err(|e| ClientError::file(what(), e.into_error()))?;
    file.sync_all().map_err(|e| ClientError::file(what(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| ClientError::file(what(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_split_disjointly() {
        assert_eq!(Shard::parse("1/4").expect("shard"), Shard { k: 1, n: 4 });
        for bad in ["4/4", "1", "a/2", "0/0", "-1/2"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
        let uids: Vec<String> = (0..200).map(|i| format!("1.2.3.{i}")).collect();
        let mut counts = [0usize; 3];
        for u in &uids {
            counts[(fnv1a(u) % 3) as usize] += 1;
        }
        assert_eq!(counts.iter().sum::<usize>(), 200);
        assert!(counts.iter().all(|&c| c > 40), "{counts:?}");
        let shards: Vec<Shard> = (0..3).map(|k| Shard { k, n: 3 }).collect();
        assert!(
            uids.iter()
                .all(|u| shards.iter().filter(|s| s.holds(u)).count() == 1)
        );
    }

    #[test]
    fn a_results_file_of_another_tool_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("other.csv");
        std::fs::write(&path, "a,b\n1,2\n").expect("write");
        let e = earlier(&path).expect_err("columns differ");
        assert!(e.to_string().contains("columns differ"), "{e}");
    }

    #[test]
    fn a_results_file_without_provenance_columns_is_read_and_upgraded_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("results.csv");
        std::fs::write(
            &path,
            "study_uid,status,grade,p_normal,p_osteopenia,p_osteoporosis,reason\n\
             1.2.3,classified,normal,0.9,0.05,0.05,\n\
             1.2.4,error,,,,,server down\n",
        )
        .expect("write");
        let kept = earlier(&path).expect("legacy file read");
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].len(), Row::COLUMNS.len());
        upgrade(&path).expect("upgrade");
        let text = std::fs::read_to_string(&path).expect("read");
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(Row::COLUMNS.join(",").as_str()));
        assert_eq!(
            lines.next(),
            Some("1.2.3,classified,normal,0.9,0.05,0.05,,,,,,,,,,,,,,,,,,")
        );
        assert_eq!(
            lines.next(),
            Some("1.2.4,error,,,,,server down,,,,,,,,,,,,,,,,,")
        );
        upgrade(&path).expect("a current file is left alone");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), text);
        std::fs::write(&path, "uid,grade\n").expect("write");
        assert!(earlier(&path).is_err(), "another file's columns");
    }

    #[test]
    fn a_results_file_without_decision_or_attenuation_columns_is_upgraded_keeping_its_provenance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("results.csv");
        std::fs::write(
            &path,
            format!(
                "{}\n1.2.3,classified,normal,0.9,0.05,0.05,,m,1,abc,ort,cpu,0.1.0\n",
                Row::COLUMNS[..13].join(",")
            ),
        )
        .expect("write");
        assert_eq!(earlier(&path).expect("read")[0][12], "0.1.0");
        upgrade(&path).expect("upgrade");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(
            text.lines().nth(1),
            Some("1.2.3,classified,normal,0.9,0.05,0.05,,m,1,abc,ort,cpu,0.1.0,,,,,,,,,,,")
        );
    }
}
