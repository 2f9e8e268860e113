//! Uploading a study: its files as UploadStudy's framing (a header announcing the files and
//! bytes, then each file in chunks, its last chunk marked).

use crate::connect::Client;
use crate::error::ClientError;
use osteo_dicom::{DicomSource, IngestLimits};
use osteo_proto::v1 as pb;
use std::path::Path;

/// Bytes per upload chunk.
pub const CHUNK: usize = 1 << 20;

/// The upload messages of `files` in chunks of at most `chunk` bytes (an empty file is one
/// empty last chunk).
pub fn messages<F: AsRef<[u8]>>(files: &[F], chunk: usize) -> Vec<pb::UploadStudyRequest> {
    let total: u64 = files.iter().map(|f| f.as_ref().len() as u64).sum();
    let mut out = vec![pb::UploadStudyRequest {
        part: Some(pb::upload_study_request::Part::Header(pb::UploadHeader {
            expected_files: files.len() as u32,
            expected_bytes: total,
            series_instance_uid: String::new(),
        })),
    }];
    for (i, f) in files.iter().enumerate() {
        let f = f.as_ref();
        let pieces: Vec<&[u8]> = if f.is_empty() {
            vec![&[]]
        } else {
            f.chunks(chunk.max(1)).collect()
        };
        let last = pieces.len() - 1;
        for (k, piece) in pieces.into_iter().enumerate() {
            out.push(pb::UploadStudyRequest {
                part: Some(pb::upload_study_request::Part::Chunk(pb::FileChunk {
                    file_index: i as u32,
                    data: piece.to_vec(),
                    last: k == last,
                })),
            });
        }
    }
    out
}

/// Uploads DICOM files held in memory; returns the study's summary (handle, quality gate).
pub async fn upload<F: AsRef<[u8]>>(
    client: &mut Client,
    files: &[F],
) -> Result<pb::StudySummary, ClientError> {
    client
        .upload_study(tokio_stream::iter(messages(files, CHUNK)))
        .await?
        .into_inner()
        .summary
        .ok_or_else(|| ClientError::Answer("the server returned no study summary".into()))
}

/// Uploads the DICOM files of a file or directory (searched recursively); returns the study
/// handle.
pub async fn upload_path(client: &mut Client, path: &Path) -> Result<String, ClientError> {
    let files = DicomSource::Path(path.to_path_buf()).read(&IngestLimits::default())?;
    let bytes: Vec<&[u8]> = files.iter().map(|f| f.bytes.as_slice()).collect();
    Ok(upload(client, &bytes).await?.study)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_framed_in_chunks_with_each_last_marked() {
        let files = [vec![1u8; 5], vec![], vec![2u8; 2]];
        let m = messages(&files, 2);
        let Some(pb::upload_study_request::Part::Header(h)) = &m[0].part else {
            panic!("a header first");
        };
        assert_eq!((h.expected_files, h.expected_bytes), (3, 7));
        let chunks: Vec<(u32, usize, bool)> = m[1..]
            .iter()
            .map(|r| match &r.part {
                Some(pb::upload_study_request::Part::Chunk(c)) => {
                    (c.file_index, c.data.len(), c.last)
                }
                _ => panic!("chunks after the header"),
            })
            .collect();
        assert_eq!(
            chunks,
            vec![
                (0, 2, false),
                (0, 2, false),
                (0, 1, true),
                (1, 0, true),
                (2, 2, true)
            ]
        );
    }
}
