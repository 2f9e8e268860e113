//! Upload framing: turns the chunks of an `UploadStudy` stream into whole DICOM files, checking
//! the order of files, their count and the byte total as each chunk arrives, so a malformed or
//! oversized stream is refused at the first chunk that breaks a rule.
//!
//! The memory the buffers really take is accounted, not just their contents: a file buffer
//! grows by doubling, and while it moves to its larger block both blocks exist, so the framer
//! asks for the peak (old and new block) before it grows and settles on the new capacity after.
//! [`read_upload`] reads a stream through the framer under the upload budgets.

use crate::budget::Reservation;
use crate::error::ServerError;
use crate::state::State;
use osteo_proto::v1 as pb;
use tokio::sync::OwnedSemaphorePermit;
use tokio_stream::{Stream, StreamExt};

/// The limits an upload is framed under.
#[derive(Debug, Clone, Copy)]
pub struct FramingLimits {
    /// Most files (`store.max_files`).
    pub max_files: usize,
    /// Most bytes in all (`store.max_upload_bytes`).
    pub max_total_bytes: u64,
}

/// Files assembled so far.
#[derive(Debug)]
pub struct Framer {
    limits: FramingLimits,
    expected_files: u32,
    expected_bytes: u64,
    files: Vec<Vec<u8>>,
    open: bool,
    total: u64,
    /// Bytes of buffer capacity held by `files`.
    held: u64,
}

impl Framer {
    /// A framer for an upload whose header announced `expected_files` and `expected_bytes`
    /// (0 = not stated); refuses a header that announces more than the limits at once.
    pub fn new(
        limits: FramingLimits,
        expected_files: u32,
        expected_bytes: u64,
    ) -> Result<Self, ServerError> {
        if expected_bytes > limits.max_total_bytes {
            return Err(ServerError::TooLarge(format!(
                "the upload declares {expected_bytes} bytes, the limit is {} \
                 (store.max_upload_bytes)",
                limits.max_total_bytes
            )));
        }
        if expected_files as usize > limits.max_files {
            return Err(ServerError::TooLarge(format!(
                "the upload declares {expected_files} files, the limit is {} (store.max_files)",
                limits.max_files
            )));
        }
        Ok(Self {
            limits,
            expected_files,
            expected_bytes,
            files: Vec::new(),
            open: false,
            total: 0,
            held: 0,
        })
    }

    /// Bytes accepted so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes of buffer capacity held now.
    pub fn held(&self) -> u64 {
        self.held
    }

    /// Adds a chunk of file `index`. Before a buffer grows, `account(bytes)` is asked to hold
    /// the peak the growth needs, and afterwards to hold the new total capacity; a refusal
    /// refuses the chunk and buffers nothing of it.
    pub fn push(
        &mut self,
        index: u32,
        data: &[u8],
        last: bool,
        account: &mut dyn FnMut(u64) -> Result<(), ServerError>,
    ) -> Result<(), ServerError> {
        let index = index as usize;
        let continues = self.open && index + 1 == self.files.len();
        let starts = !self.open && index == self.files.len();
        if !continues && !starts {
            return Err(ServerError::InvalidArgument(format!(
                "chunk of file #{index} arrived while file #{} was expected: send files one \
                 after another from #0, marking each file's last chunk",
                if self.open {
                    self.files.len() - 1
                } else {
                    self.files.len()
                }
            )));
        }
        if starts && self.files.len() >= self.limits.max_files {
            return Err(ServerError::TooLarge(format!(
                "the upload has more than {} files (store.max_files)",
                self.limits.max_files
            )));
        }
        let total = self.total + data.len() as u64;
        if total > self.limits.max_total_bytes {
            return Err(ServerError::TooLarge(format!(
                "the upload exceeds {} bytes (store.max_upload_bytes)",
                self.limits.max_total_bytes
            )));
        }
        if self.expected_bytes != 0 && total > self.expected_bytes {
            return Err(ServerError::InvalidArgument(format!(
                "the upload sends more than the {} bytes its header announced",
                self.expected_bytes
            )));
        }
        let (len, capacity) = if starts {
            (0, 0)
        } else {
            self.files
                .last()
                .map_or((0, 0), |f| (f.len(), f.capacity()))
        };
        let need = len + data.len();
        let grow_to = (need > capacity).then(|| need.max(capacity * 2));
        if let Some(new) = grow_to {
            // While the buffer moves, the old and the new block both exist.
            account(self.held + new as u64)?;
        }
        if starts {
            self.files.push(Vec::new());
            self.open = true;
        }
        if let Some(f) = self.files.last_mut() {
            if let Some(new) = grow_to {
                f.reserve_exact(new - f.len());
                self.held = self.held - capacity as u64 + f.capacity() as u64;
                account(self.held)?;
            }
            f.extend_from_slice(data);
        }
        self.total = total;
        if last {
            self.open = false;
        }
        Ok(())
    }

    /// The complete files, once the stream has ended.
    pub fn finish(self) -> Result<Vec<Vec<u8>>, ServerError> {
        if self.open {
            return Err(ServerError::InvalidArgument(format!(
                "the upload ended inside file #{}: mark each file's last chunk with last = true",
                self.files.len() - 1
            )));
        }
        if self.files.is_empty() {
            return Err(ServerError::InvalidArgument(
                "the upload holds no DICOM file".into(),
            ));
        }
        if self.expected_files != 0 && self.expected_files as usize != self.files.len() {
            return Err(ServerError::InvalidArgument(format!(
                "the header announced {} files, {} arrived",
                self.expected_files,
                self.files.len()
            )));
        }
        if self.expected_bytes != 0 && self.expected_bytes != self.total {
            return Err(ServerError::InvalidArgument(format!(
                "the header announced {} bytes, {} arrived",
                self.expected_bytes, self.total
            )));
        }
        Ok(self.files)
    }
}

/// The files of an upload and what they hold of the upload budgets until they are decoded.
pub(crate) struct Upload {
    /// The whole files, in upload order.
    pub(crate) files: Vec<Vec<u8>>,
    /// The series the header asked for, if any.
    pub(crate) series_uid: Option<String>,
    /// The files' bytes in `store.max_inflight_upload_bytes`.
    pub(crate) held_bytes: Reservation,
    /// The stream's slot among `store.max_concurrent_uploads`.
    pub(crate) slot: OwnedSemaphorePermit,
}

/// One message of a stream in upload framing: a header, then chunks.
pub(crate) enum Part<H> {
    /// The stream's header (first, once).
    Header(H),
    /// A chunk of a file.
    Chunk(pb::FileChunk),
    /// A message with neither.
    Neither,
}

/// A message of a stream in upload framing (UploadStudy's, GradeStudy's).
pub(crate) trait Framed {
    /// The stream's header.
    type Header;
    /// The message's part.
    fn part(self) -> Part<Self::Header>;
}

impl Framed for pb::UploadStudyRequest {
    type Header = pb::UploadHeader;

    fn part(self) -> Part<pb::UploadHeader> {
        match self.part {
            Some(pb::upload_study_request::Part::Header(h)) => Part::Header(h),
            Some(pb::upload_study_request::Part::Chunk(c)) => Part::Chunk(c),
            None => Part::Neither,
        }
    }
}

impl Framed for pb::GradeStudyRequest {
    type Header = pb::GradeStudyHeader;

    fn part(self) -> Part<pb::GradeStudyHeader> {
        match self.part {
            Some(pb::grade_study_request::Part::Header(h)) => Part::Header(h),
            Some(pb::grade_study_request::Part::Chunk(c)) => Part::Chunk(c),
            None => Part::Neither,
        }
    }
}

/// Reads an upload stream into complete files, enforcing the limits as bytes arrive: a slot
/// among `store.max_concurrent_uploads` first, then the header, which `begin` checks (before
/// any chunk is read) and answers with the upload header inside it, then every byte reserved
/// from `store.max_inflight_upload_bytes` (within `holder`'s share) before it is buffered. A
/// declared size is checked against the limits at once but reserved only as its bytes arrive,
/// so a slow stream holds only what it sent. Returns the stream's header and the files.
pub(crate) async fn read_upload<S, M>(
    state: &State,
    holder: &str,
    stream: &mut S,
    begin: impl FnOnce(&M::Header) -> Result<pb::UploadHeader, ServerError>,
) -> Result<(M::Header, Upload), ServerError>
where
    S: Stream<Item = Result<M, ServerError>> + Unpin,
    M: Framed,
{
    let slot = state.uploads.clone().try_acquire_owned().map_err(|_| {
        ServerError::ResourceExhausted(format!(
            "{} uploads are already in progress, the limit (store.max_concurrent_uploads); retry \
             with backoff",
            state.settings.store.max_concurrent_uploads
        ))
    })?;
    let first = stream.next().await.transpose()?.ok_or_else(|| {
        ServerError::InvalidArgument("empty stream: send the header first".into())
    })?;
    let Part::Header(stream_header) = first.part() else {
        return Err(ServerError::InvalidArgument(
            "the first message must be the header".into(),
        ));
    };
    let header = begin(&stream_header)?;
    let limits = state.limits();
    let mut framer = Framer::new(
        FramingLimits {
            max_files: limits.max_files,
            max_total_bytes: limits.max_total_bytes,
        },
        header.expected_files,
        header.expected_bytes,
    )?;
    let mut held = state.upload_bytes.reserve_for(holder, 0, "the upload")?;
    while let Some(msg) = stream.next().await.transpose()? {
        let chunk = match msg.part() {
            Part::Chunk(c) => c,
            Part::Header(_) => {
                return Err(ServerError::InvalidArgument(
                    "the header may appear only once, first".into(),
                ));
            }
            Part::Neither => {
                return Err(ServerError::InvalidArgument(
                    "a message carries neither header nor chunk".into(),
                ));
            }
        };
        let mut account = |bytes: u64| held.resize(bytes, "the upload");
        framer.push(chunk.file_index, &chunk.data, chunk.last, &mut account)?;
    }
    let upload = Upload {
        files: framer.finish()?,
        series_uid: Some(header.series_instance_uid).filter(|s| !s.is_empty()),
        held_bytes: held,
        slot,
    };
    Ok((stream_header, upload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: FramingLimits = FramingLimits {
        max_files: 4,
        max_total_bytes: 64,
    };

    fn ok(_: u64) -> Result<(), ServerError> {
        Ok(())
    }

    /// Chunks that frame `files` correctly, each file split at `cuts`.
    fn framed(files: &[Vec<u8>], cut: usize) -> Vec<(u32, Vec<u8>, bool)> {
        let mut chunks = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let pieces: Vec<&[u8]> = if f.is_empty() {
                vec![&f[..]]
            } else {
                f.chunks(cut.max(1)).collect()
            };
            let n = pieces.len();
            for (k, p) in pieces.into_iter().enumerate() {
                chunks.push((i as u32, p.to_vec(), k + 1 == n));
            }
        }
        chunks
    }

    proptest! {
        /// Any well-framed upload within the limits comes back byte for byte.
        #[test]
        fn well_framed_uploads_round_trip(
            files in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..16), 1..=4),
            cut in 1usize..8,
            declare in any::<bool>(),
        ) {
            let total: u64 = files.iter().map(|f| f.len() as u64).sum();
            let (ef, eb) = if declare { (files.len() as u32, total) } else { (0, 0) };
            let mut framer = Framer::new(LIMITS, ef, eb).expect("header within limits");
            for (i, data, last) in framed(&files, cut) {
                framer.push(i, &data, last, &mut ok).expect("well framed");
            }
            prop_assert_eq!(framer.finish().expect("complete"), files);
        }

        /// Arbitrary chunk sequences never panic, never buffer beyond the byte limit, and every
        /// refusal is INVALID_ARGUMENT or RESOURCE_EXHAUSTED.
        #[test]
        fn arbitrary_chunks_are_refused_cleanly(
            chunks in prop::collection::vec((0u32..6, prop::collection::vec(any::<u8>(), 0..40), any::<bool>()), 0..12),
            ef in 0u32..6,
            eb in 0u64..100,
        ) {
            let code_ok = |e: &ServerError| matches!(
                e,
                ServerError::InvalidArgument(_) | ServerError::TooLarge(_)
            );
            let mut framer = match Framer::new(LIMITS, ef, eb) {
                Ok(f) => f,
                Err(e) => { prop_assert!(code_ok(&e)); return Ok(()); }
            };
            let mut accounted = 0u64;
            for (i, data, last) in chunks {
                let mut account = |t: u64| { accounted = t; Ok(()) };
                if let Err(e) = framer.push(i, &data, last, &mut account) {
                    prop_assert!(code_ok(&e), "{e}");
                    return Ok(());
                }
                prop_assert!(framer.total() <= LIMITS.max_total_bytes);
                prop_assert!(framer.total() <= framer.held(), "contents within capacity");
                prop_assert_eq!(accounted, framer.held(), "the capacity is what is accounted");
            }
            if let Err(e) = framer.finish() {
                prop_assert!(code_ok(&e), "{e}");
            }
        }
    }

    #[test]
    fn a_refused_reservation_buffers_nothing() {
        let mut framer = Framer::new(LIMITS, 0, 0).expect("framer");
        let mut full = |_: u64| -> Result<(), ServerError> {
            Err(ServerError::ResourceExhausted("full".into()))
        };
        let e = framer
            .push(0, b"abc", true, &mut full)
            .expect_err("budget full");
        assert!(matches!(e, ServerError::ResourceExhausted(_)));
        assert_eq!(framer.total(), 0);
        assert!(framer.finish().is_err(), "nothing was buffered");
    }

    #[test]
    fn growth_asks_for_the_old_and_the_new_block_before_it_moves() {
        let limits = FramingLimits {
            max_files: 1,
            max_total_bytes: 1 << 30,
        };
        let mut framer = Framer::new(limits, 0, 0).expect("framer");
        let mut asked = Vec::new();
        let mut account = |b: u64| {
            asked.push(b);
            Ok(())
        };
        framer
            .push(0, &[0; 40_000], false, &mut account)
            .expect("first");
        framer
            .push(0, &[0; 10_000], false, &mut account)
            .expect("second");
        framer
            .push(0, &[0; 10_000], true, &mut account)
            .expect("third");
        // 40,000 bytes for the first block; 40,000 + 80,000 while it moves to 80,000 bytes;
        // the third chunk fits.
        assert_eq!(asked, [40_000, 40_000, 120_000, 80_000]);
    }
}
