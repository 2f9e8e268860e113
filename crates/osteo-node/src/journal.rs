//! The spool's journal: how an instance is made durable before its C-STORE success without
//! syncing a new file. Two segment files are written full of zeros once; each received instance
//! is written into the active segment as a checksummed record and `fdatasync`ed. Overwriting
//! blocks that are already allocated needs no file-system journal commit, so this costs about
//! half of syncing a new file (measured on ext4: 0.31 against 0.71 ms for 520 KB). The
//! instance's own file in `studies/` is written without a sync.
//!
//! A checkpoint (`syncfs`, then the position recorded in `checkpoint`) makes the study files
//! durable up to a position. Records after the last checkpoint are replayed into their files
//! when the spool opens. A segment is reused only once every record in it is checkpointed:
//! a background checkpoint starts when the active segment is half full, and a study is
//! checkpointed before it is graded, so a study graded and deleted is never replayed.
//!
//! ```text
//! journal/0.wal, 1.wal   segments: a 4 KiB header (magic, generation), then 4 KiB-aligned records
//! journal/checkpoint     the generation and offset up to which study files are durable
//! ```

use crate::error::NodeError;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

const SEGMENT_MAGIC: &[u8; 8] = b"OSTEOJNL";
const RECORD_MAGIC: &[u8; 4] = b"OREC";
/// Bytes before a segment's first record.
const HEADER: u64 = 4096;
/// Bytes of a record's header: magic, reserved, generation, length, study key, instance key,
/// checksum, padding.
const RECORD_HEADER: u64 = 96;
/// Records start on this boundary.
const ALIGN: u64 = 4096;
/// Length of a study or instance key (hex).
const KEY: usize = 32;

/// A place in the journal: records before it (in generation order) are covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    generation: u64,
    offset: u64,
}

/// The journal of one spool.
pub struct Journal {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    segment_bytes: u64,
    active: Mutex<Active>,
    checkpoint: Mutex<Position>,
}

struct Active {
    files: [File; 2],
    generations: [u64; 2],
    index: usize,
    offset: u64,
    half_checkpointed: bool,
}

impl Active {
    fn position(&self) -> Position {
        Position {
            generation: self.generations[self.index],
            offset: self.offset,
        }
    }
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> NodeError {
    let what = format!("{what} {}", path.display());
    move |e| NodeError::io(what, e)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn aligned(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

fn segment_header(generation: u64) -> [u8; 24] {
    let mut h = [0u8; 24];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&1u32.to_le_bytes());
    h[12..20].copy_from_slice(&generation.to_le_bytes());
    let crc = crc32fast::hash(&h[..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A segment's generation, when its header is intact.
fn read_generation(file: &File) -> Option<u64> {
    let mut h = [0u8; 24];
    file.read_exact_at(&mut h, 0).ok()?;
    (h[..8] == SEGMENT_MAGIC[..]
        && h[8..12] == 1u32.to_le_bytes()
        && crc32fast::hash(&h[..20]).to_le_bytes() == h[20..24])
        .then(|| u64::from_le_bytes(h[12..20].try_into().unwrap_or_default()))
}

fn is_key(k: &[u8]) -> bool {
    k.len() == KEY && k.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

fn record_header(generation: u64, study: &str, sop: &str, payload: &[u8]) -> [u8; 96] {
    let mut h = [0u8; RECORD_HEADER as usize];
    h[..4].copy_from_slice(RECORD_MAGIC);
    h[8..16].copy_from_slice(&generation.to_le_bytes());
    h[16..24].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    h[24..56].copy_from_slice(study.as_bytes());
    h[56..88].copy_from_slice(sop.as_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h[..88]);
    crc.update(payload);
    h[88..92].copy_from_slice(&crc.finalize().to_le_bytes());
    h
}

/// Calls `each` with every intact record of `generation` in `file` from `from` on, in order,
/// stopping at the first that is not (a record torn by a crash was never acknowledged).
fn scan(
    file: &File,
    generation: u64,
    from: u64,
    mut each: impl FnMut(&str, &str, &[u8]) -> Result<(), NodeError>,
) -> Result<usize, NodeError> {
    let end = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut at = from.max(HEADER);
    let mut count = 0;
    let mut payload = Vec::new();
    while at + RECORD_HEADER <= end {
        let mut h = [0u8; RECORD_HEADER as usize];
        if file.read_exact_at(&mut h, at).is_err() || h[..4] != RECORD_MAGIC[..] {
            break;
        }
        let field =
            |r: std::ops::Range<usize>| u64::from_le_bytes(h[r].try_into().unwrap_or_default());
        let len = field(16..24);
        if field(8..16) != generation
            || len > end - at - RECORD_HEADER
            || !is_key(&h[24..56])
            || !is_key(&h[56..88])
        {
            break;
        }
        payload.resize(len as usize, 0);
        if file
            .read_exact_at(&mut payload, at + RECORD_HEADER)
            .is_err()
        {
            break;
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&h[..88]);
        crc.update(&payload);
        if crc.finalize().to_le_bytes() != h[88..92] {
            break;
        }
        let study = std::str::from_utf8(&h[24..56]).unwrap_or_default();
        let sop = std::str::from_utf8(&h[56..88]).unwrap_or_default();
        each(study, sop, &payload)?;
        count += 1;
        at = aligned(at + RECORD_HEADER + len);
    }
    Ok(count)
}

fn read_checkpoint(path: &Path) -> Position {
    let Ok(b) = fs::read(path) else {
        return Position::default();
    };
    if b.len() != 20 || crc32fast::hash(&b[..16]).to_le_bytes() != b[16..20] {
        return Position::default();
    }
    let field = |r: std::ops::Range<usize>| u64::from_le_bytes(b[r].try_into().unwrap_or_default());
    Position {
        generation: field(0..8),
        offset: field(8..16),
    }
}

/// Writes every byte of a segment (zeros) and its header, so later writes overwrite in place.
fn initialise(path: &Path, bytes: u64) -> Result<File, NodeError> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io("cannot create", path))?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n]).map_err(io("cannot write", path))?;
        left -= n as u64;
    }
    f.write_all_at(&segment_header(0), 0)
        .and_then(|()| f.sync_all())
        .map_err(io("cannot write", path))?;
    Ok(f)
}

impl Shared {
    fn segment_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{i}.wal"))
    }

    /// Syncs the file system the spool is on, then records `upto` as the checkpoint.
    fn checkpoint(&self, upto: Position) -> Result<(), NodeError> {
        let dir = File::open(&self.dir).map_err(io("cannot open", &self.dir))?;
        rustix::fs::syncfs(&dir)
            .map_err(|e| NodeError::io("cannot sync the spool's file system", e.into()))?;
        let mut current = lock(&self.checkpoint);
        if upto <= *current {
            return Ok(());
        }
        let mut b = [0u8; 20];
        b[..8].copy_from_slice(&upto.generation.to_le_bytes());
        b[8..16].copy_from_slice(&upto.offset.to_le_bytes());
        let crc = crc32fast::hash(&b[..16]);
        b[16..20].copy_from_slice(&crc.to_le_bytes());
        let tmp = self.dir.join("checkpoint.tmp");
        let path = self.dir.join("checkpoint");
        let mut f = File::create(&tmp).map_err(io("cannot create", &tmp))?;
        f.write_all(&b)
            .and_then(|()| f.sync_all())
            .map_err(io("cannot write", &tmp))?;
        fs::rename(&tmp, &path).map_err(io("cannot move", &tmp))?;
        dir.sync_all().map_err(io("cannot sync", &self.dir))?;
        *current = upto;
        Ok(())
    }

    /// Makes the other segment the active one, under a new generation: first every record in it
    /// must be checkpointed (done here when the background checkpoint has not got that far).
    fn rotate(&self, active: &mut Active) -> Result<(), NodeError> {
        let generation = active.generations[active.index];
        if lock(&self.checkpoint).generation < generation {
            self.checkpoint(active.position())?;
        }
        let next = 1 - active.index;
        let path = self.segment_path(next);
        active.files[next]
            .write_all_at(&segment_header(generation + 1), 0)
            .and_then(|()| active.files[next].sync_data())
            .map_err(io("cannot write", &path))?;
        active.generations[next] = generation + 1;
        active.index = next;
        active.offset = HEADER;
        active.half_checkpointed = false;
        Ok(())
    }
}

impl Journal {
    /// Opens (creating) the journal in `dir` with two segments of `segment_bytes` each, and
    /// hands every record written after the last checkpoint to `replay` (study key, instance
    /// key, bytes), in the order written; then checkpoints and starts a new generation.
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
        mut replay: impl FnMut(&str, &str, &[u8]) -> Result<(), NodeError>,
    ) -> Result<(Self, usize), NodeError> {
        fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
        let checkpoint = read_checkpoint(&dir.join("checkpoint"));
        let mut found = Vec::new();
        for i in 0..2 {
            let path = dir.join(format!("{i}.wal"));
            let file = OpenOptions::new().read(true).write(true).open(&path).ok();
            let generation = file.as_ref().and_then(read_generation);
            found.push((i, file, generation));
        }
        // Replay, oldest generation first; a segment of another size (the journal was
        // resized) is replayed before it is made anew.
        let mut order: Vec<&(usize, Option<File>, Option<u64>)> =
            found.iter().filter(|(_, _, g)| g.is_some()).collect();
        order.sort_by_key(|(_, _, g)| *g);
        let mut replayed = 0;
        for (_, file, generation) in order {
            let (Some(file), Some(generation)) = (file, *generation) else {
                continue;
            };
            if generation < checkpoint.generation {
                continue;
            }
            let from = if generation == checkpoint.generation {
                checkpoint.offset
            } else {
                HEADER
            };
            replayed += scan(file, generation, from, &mut replay)?;
        }
        let newest = found
            .iter()
            .filter_map(|(_, _, g)| *g)
            .chain([checkpoint.generation])
            .max()
            .unwrap_or(0);
        let mut files = Vec::new();
        let mut generations = [0u64; 2];
        for (i, file, generation) in found {
            let path = dir.join(format!("{i}.wal"));
            let sized = file
                .as_ref()
                .and_then(|f| f.metadata().ok())
                .is_some_and(|m| m.len() == segment_bytes);
            let file = match (file, generation) {
                (Some(f), Some(g)) if sized => {
                    generations[i] = g;
                    f
                }
                _ => initialise(&path, segment_bytes)?,
            };
            files.push(file);
        }
        let [a, b]: [File; 2] = files
            .try_into()
            .map_err(|_| NodeError::Config("the journal has two segments".into()))?;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            segment_bytes,
            active: Mutex::new(Active {
                files: [a, b],
                // The older segment becomes the active one, under a generation after all.
                index: usize::from(generations[1] < generations[0]),
                generations,
                offset: HEADER,
                half_checkpointed: false,
            }),
            checkpoint: Mutex::new(checkpoint),
        });
        {
            let mut active = lock(&shared.active);
            let index = active.index;
            let path = shared.segment_path(index);
            active.files[index]
                .write_all_at(&segment_header(newest + 1), 0)
                .and_then(|()| active.files[index].sync_data())
                .map_err(io("cannot write", &path))?;
            active.generations[index] = newest + 1;
            // Everything replayed (and older) is in files once the file system is synced.
            shared.checkpoint(active.position())?;
        }
        Ok((Self { shared }, replayed))
    }

    /// Whether a record of `len` bytes fits in a segment.
    pub fn fits(&self, len: usize) -> bool {
        HEADER + RECORD_HEADER + len as u64 <= self.shared.segment_bytes
    }

    /// Writes `bytes` as instance `sop` of study `study` (keys) and syncs it while `prepare`
    /// runs on this thread (writing the instance's file beside its final name), then runs
    /// `commit` with what `prepare` made (moving the file into place) before another record
    /// can be written, so a position taken later covers that file.
    pub fn append<P, R>(
        &self,
        study: &str,
        sop: &str,
        bytes: &[u8],
        prepare: impl FnOnce() -> Result<P, NodeError>,
        commit: impl FnOnce(P) -> Result<R, NodeError>,
    ) -> Result<R, NodeError> {
        if !is_key(study.as_bytes()) || !is_key(sop.as_bytes()) || !self.fits(bytes.len()) {
            return Err(NodeError::Config(
                "a journal record needs two keys and must fit in a segment".into(),
            ));
        }
        let shared = &self.shared;
        let mut active = lock(&shared.active);
        let len = RECORD_HEADER + bytes.len() as u64;
        if active.offset + len > shared.segment_bytes {
            shared.rotate(&mut active)?;
        }
        let index = active.index;
        let at = active.offset;
        let header = record_header(active.generations[index], study, sop, bytes);
        let file = &active.files[index];
        // The sync waits on the disk; the file is written meanwhile.
        let (written, prepared) = std::thread::scope(|s| {
            let writer = s.spawn(|| {
                file.write_all_at(&header, at)
                    .and_then(|()| file.write_all_at(bytes, at + RECORD_HEADER))
                    .and_then(|()| file.sync_data())
            });
            let prepared = prepare();
            let written = writer
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the journal writer panicked")));
            (written, prepared)
        });
        written.map_err(io("cannot write", &shared.segment_path(index)))?;
        active.offset = aligned(at + len);
        let out = commit(prepared?)?;
        if !active.half_checkpointed && active.offset > shared.segment_bytes / 2 {
            active.half_checkpointed = true;
            let upto = active.position();
            let shared = shared.clone();
            std::thread::spawn(move || {
                if let Err(e) = shared.checkpoint(upto) {
                    tracing::error!(error = %e, "journal checkpoint failed");
                }
            });
        }
        Ok(out)
    }

    /// Runs `f` with no record being written, and the position after the last record.
    pub fn quiet<R>(&self, f: impl FnOnce() -> R) -> (R, Position) {
        let active = lock(&self.shared.active);
        (f(), active.position())
    }

    /// Makes every study file written before `upto` durable (one file-system sync).
    pub fn checkpoint(&self, upto: Position) -> Result<(), NodeError> {
        self.shared.checkpoint(upto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: u8) -> String {
        format!("{:032x}", n)
    }

    type Seen = Vec<(String, String, Vec<u8>)>;

    fn open(dir: &Path, segment: u64) -> (Journal, Seen) {
        let mut seen = Vec::new();
        let (j, n) = Journal::open(dir, segment, |s, i, b| {
            seen.push((s.to_string(), i.to_string(), b.to_vec()));
            Ok(())
        })
        .expect("open");
        assert_eq!(n, seen.len());
        (j, seen)
    }

    #[test]
    fn records_after_the_checkpoint_are_replayed_in_order_and_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (j, seen) = open(dir.path(), 1 << 20);
        assert!(seen.is_empty());
        j.append(&k(1), &k(2), b"first", || Ok(()), Ok)
            .expect("append");
        let ((), mark) = j.quiet(|| ());
        j.checkpoint(mark).expect("checkpoint");
        j.append(&k(1), &k(3), b"second", || Ok(()), Ok)
            .expect("append");
        j.append(&k(4), &k(5), &[7u8; 5000], || Ok(()), Ok)
            .expect("append");
        drop(j);
        let (j, seen) = open(dir.path(), 1 << 20);
        let got: Vec<(&str, &str, usize)> = seen
            .iter()
            .map(|(s, i, b)| (&s[..], &i[..], b.len()))
            .collect();
        assert_eq!(
            got,
            [(&k(1)[..], &k(3)[..], 6), (&k(4)[..], &k(5)[..], 5000)]
        );
        assert_eq!(seen[0].2, b"second");
        drop(j);
        // Replayed records were checkpointed when the journal opened.
        let (_, seen) = open(dir.path(), 1 << 20);
        assert!(seen.is_empty(), "{seen:?}");
    }

    #[test]
    fn a_torn_record_ends_the_replay_and_a_full_segment_rotates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let segment = 64 * 1024;
        let (j, _) = open(dir.path(), segment);
        // Each record takes two 4 KiB blocks: a segment of 16 blocks holds 7 after its header.
        for n in 0..10u8 {
            j.append(&k(1), &k(n), &[n; 5000], || Ok(()), Ok)
                .expect("append");
        }
        drop(j);
        let (j, seen) = open(dir.path(), segment);
        let sops: Vec<String> = seen.iter().map(|(_, i, _)| i.clone()).collect();
        // Replayed: what follows the last checkpoint, which is the half-full one (after four
        // records) or the rotation's (after seven), whichever came later.
        let first = 10 - sops.len();
        assert!((4..=7).contains(&first), "{sops:?}");
        assert_eq!(sops, (first as u8..10).map(k).collect::<Vec<_>>());
        for n in 20..23u8 {
            j.append(&k(1), &k(n), &[n; 5000], || Ok(()), Ok)
                .expect("append");
        }
        drop(j);
        // Tear the second of the three records.
        let which = (0..2)
            .find(|i| {
                let f = File::open(dir.path().join(format!("{i}.wal"))).expect("segment");
                read_generation(&f) == Some(3)
            })
            .expect("the active segment");
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join(format!("{which}.wal")))
            .expect("segment");
        f.write_all_at(b"torn", HEADER + 2 * ALIGN + RECORD_HEADER + 100)
            .expect("tear");
        let (_, seen) = open(dir.path(), segment);
        let sops: Vec<String> = seen.iter().map(|(_, i, _)| i.clone()).collect();
        assert_eq!(sops, [k(20)], "the replay stops at the torn record");
    }

    #[test]
    fn a_resized_journal_replays_before_it_is_made_anew() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (j, _) = open(dir.path(), 1 << 20);
        j.append(&k(1), &k(2), b"kept", || Ok(()), Ok)
            .expect("append");
        drop(j);
        let (j, seen) = open(dir.path(), 2 << 20);
        assert_eq!(seen.len(), 1);
        assert!(j.fits(2 << 19));
        let len = fs::metadata(dir.path().join("0.wal"))
            .expect("segment")
            .len();
        assert_eq!(len, 2 << 20);
    }

    #[test]
    fn a_record_that_fails_the_file_write_is_not_lost_from_the_journal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (j, _) = open(dir.path(), 1 << 20);
        let failed = j.append(
            &k(1),
            &k(2),
            b"x",
            || Err::<(), _>(NodeError::Config("disk full".into())),
            Ok,
        );
        assert!(failed.is_err());
        assert!(
            j.append("../etc", &k(2), b"x", || Ok(()), Ok).is_err(),
            "keys only"
        );
        drop(j);
        let (_, seen) = open(dir.path(), 1 << 20);
        assert_eq!(seen.len(), 1, "replayed: its file may be missing");
    }
}
