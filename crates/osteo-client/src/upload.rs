//! Uploading a study: its files as UploadStudy's framing (a header announcing the files and
//! bytes, then each file in chunks, its last chunk marked).

use crate::connect::Client;
use crate::error::ClientError;
use bytes::Bytes;
use osteo_dicom::{DicomSource, IngestLimits};
use osteo_proto::v1 as pb;
use std::path::Path;
use std::sync::Arc;

/// Bytes per upload chunk.
pub const CHUNK: usize = 1 << 20;

/// The messages of one upload, made as they are read: the header, then each file's chunks.
/// Only the chunk being sent is copied out of the files, so an upload holds the files once
/// (and the files stay for a retry).
struct Messages {
    files: Arc<Vec<Bytes>>,
    chunk: usize,
    header: bool,
    file: usize,
    offset: usize,
}

impl Iterator for Messages {
    type Item = pb::UploadStudyRequest;

    fn next(&mut self) -> Option<pb::UploadStudyRequest> {
        if !self.header {
            self.header = true;
            return Some(pb::UploadStudyRequest {
                part: Some(pb::upload_study_request::Part::Header(pb::UploadHeader {
                    expected_files: self.files.len() as u32,
                    expected_bytes: self.files.iter().map(|f| f.len() as u64).sum(),
                    series_instance_uid: String::new(),
                })),
            });
        }
        let f = self.files.get(self.file)?;
        // An empty file is one empty last chunk.
        let end = (self.offset + self.chunk).min(f.len());
        let message = pb::UploadStudyRequest {
            part: Some(pb::upload_study_request::Part::Chunk(pb::FileChunk {
                file_index: self.file as u32,
                data: f[self.offset..end].to_vec(),
                last: end == f.len(),
            })),
        };
        if end == f.len() {
            self.file += 1;
            self.offset = 0;
        } else {
            self.offset = end;
        }
        Some(message)
    }
}

impl Messages {
    /// The messages of `files` in chunks of at most `chunk` bytes.
    fn new(files: Arc<Vec<Bytes>>, chunk: usize) -> Self {
        Self {
            files,
            chunk: chunk.max(1),
            header: false,
            file: 0,
            offset: 0,
        }
    }
}

/// Upload messages as a GradeStudy call's: the upload header inside a header with `action`,
/// the chunks as they are.
fn graded(
    messages: impl Iterator<Item = pb::UploadStudyRequest>,
    action: pb::GradeAction,
) -> impl Iterator<Item = pb::GradeStudyRequest> {
    use pb::grade_study_request::Part;
    let mut action = Some(action);
    messages.map(move |m| pb::GradeStudyRequest {
        part: m.part.map(|p| match p {
            pb::upload_study_request::Part::Header(upload) => Part::Header(pb::GradeStudyHeader {
                action: action.take(),
                upload: Some(upload),
            }),
            pb::upload_study_request::Part::Chunk(c) => Part::Chunk(c),
        }),
    })
}

/// The upload messages of `files` in chunks of at most `chunk` bytes, made lazily as the
/// stream is read.
pub fn stream(
    files: Arc<Vec<Bytes>>,
    chunk: usize,
) -> impl tokio_stream::Stream<Item = pb::UploadStudyRequest> + Send + 'static {
    tokio_stream::iter(Messages::new(files, chunk))
}

/// The messages of a GradeStudy call on `files` in chunks of at most `chunk` bytes: the
/// header with `action` and the upload header, then the chunks, made lazily as the stream is
/// read.
pub fn grade_stream(
    action: pb::GradeAction,
    files: Arc<Vec<Bytes>>,
    chunk: usize,
) -> impl tokio_stream::Stream<Item = pb::GradeStudyRequest> + Send + 'static {
    tokio_stream::iter(graded(Messages::new(files, chunk), action))
}

/// Every upload message of `files` in chunks of at most `chunk` bytes, at once (tests that
/// alter the framing use this).
pub fn messages<F: AsRef<[u8]>>(files: &[F], chunk: usize) -> Vec<pb::UploadStudyRequest> {
    let files = files
        .iter()
        .map(|f| Bytes::copy_from_slice(f.as_ref()))
        .collect();
    Messages::new(Arc::new(files), chunk).collect()
}

/// Every message of a GradeStudy call with `action` on `files`, at once (tests that alter the
/// framing use this).
pub fn grade_messages<F: AsRef<[u8]>>(
    action: pb::GradeAction,
    files: &[F],
    chunk: usize,
) -> Vec<pb::GradeStudyRequest> {
    graded(messages(files, chunk).into_iter(), action).collect()
}

/// Uploads DICOM files held in memory, streaming their chunks, with the affinity key
/// `affinity` (see [`crate::affinity`]) when given; returns the study's summary (handle,
/// quality gate).
pub async fn upload(
    client: &mut Client,
    files: Arc<Vec<Bytes>>,
    affinity: Option<&str>,
) -> Result<pb::StudySummary, ClientError> {
    client
        .upload_study(crate::affinity::request(stream(files, CHUNK), affinity)?)
        .await?
        .into_inner()
        .summary
        .ok_or_else(|| ClientError::Answer("the server returned no study summary".into()))
}

/// The DICOM files of a file or directory (searched recursively), read into memory once.
pub fn read_path(path: &Path) -> Result<Arc<Vec<Bytes>>, ClientError> {
    let files = DicomSource::Path(path.to_path_buf()).read(&IngestLimits::default())?;
    Ok(Arc::new(
        files.into_iter().map(|f| Bytes::from(f.bytes)).collect(),
    ))
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
