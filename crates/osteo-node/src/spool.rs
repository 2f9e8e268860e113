//! The spool: every acknowledged instance on disk before its C-STORE success, grouped by study,
//! and the results waiting to be sent, under one byte budget. Names are hashes of the UIDs, so
//! no identifier appears in a path.
//!
//! ```text
//! incoming/<random>.part      an instance being received (deleted at start-up: never acknowledged)
//! studies/<study>/<sop>.dcm   acknowledged instances: journalled (or the file synced) before
//!                             the success response
//! grading/<study>/            a complete study, being graded (a late instance opens a new one)
//! outbox/<study>/             a graded study: row.csv, bundle.json (with --fhir-dir), and
//!                             result-<n>.dcm until acknowledged
//! journal/                    the instances held in memory, until a checkpoint (see journal.rs)
//! ```

use crate::error::NodeError;
use crate::journal::{Journal, Position};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The spool directory and its budget.
pub struct Spool {
    root: PathBuf,
    budget: u64,
    used: Mutex<u64>,
    journal: Option<Journal>,
}

/// Bytes of the budget held by one writer until it is kept (then they stay counted) or dropped.
pub struct Reservation<'a> {
    spool: &'a Spool,
    bytes: u64,
}

impl Reservation<'_> {
    /// Grows the reservation by `more` bytes; false (and unchanged) when the budget is spent.
    pub fn grow(&mut self, more: u64) -> bool {
        if self.spool.take(more) {
            self.bytes += more;
            true
        } else {
            false
        }
    }

    /// Keeps the bytes counted (they now belong to a spooled file).
    pub fn keep(mut self) {
        self.bytes = 0;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.spool.give_back(self.bytes);
    }
}

/// A short hash of a UID: a file or directory name that names nothing.
pub fn key(uid: &str) -> String {
    osteo_client::screen::uid_key(uid)
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> NodeError {
    let what = format!("{what} {}", path.display());
    move |e| NodeError::io(what, e)
}

/// Bytes under `dir`, recursively.
fn size_of(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => size_of(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Syncs a directory, so a rename into it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), NodeError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("cannot sync", dir))
}

/// The outbox file of a study's FHIR Bundle.
pub const FHIR_BUNDLE: &str = "bundle.json";

/// The file that marks a study with refused instances.
pub const INCOMPLETE: &str = "incomplete";

/// Writes `<sop>.part` in `dir` (synced when `sync`): its path.
fn write_part(dir: &Path, sop: &str, bytes: &[u8], sync: bool) -> Result<PathBuf, NodeError> {
    let part = dir.join(format!("{sop}.part"));
    let mut f = fs::File::create(&part).map_err(io("cannot create", &part))?;
    f.write_all(bytes)
        .and_then(|()| if sync { f.sync_all() } else { Ok(()) })
        .map_err(io("cannot write", &part))?;
    Ok(part)
}

/// Writes `<sop>.dcm` in `dir` through `<sop>.part` (synced when `sync`).
fn write_file(dir: &Path, sop: &str, bytes: &[u8], sync: bool) -> Result<(), NodeError> {
    let part = write_part(dir, sop, bytes, sync)?;
    fs::rename(&part, dir.join(format!("{sop}.dcm"))).map_err(io("cannot move into", dir))
}

/// Writes a journalled instance back into its study: into `grading/` when the study was taken
/// up there before the crash (its file may be incomplete), else into `studies/`.
fn restore(root: &Path, study: &str, sop: &str, bytes: &[u8]) -> Result<(), NodeError> {
    let grading = root.join("grading").join(study);
    let dir = if grading.join(format!("{sop}.dcm")).exists() {
        grading
    } else {
        root.join("studies").join(study)
    };
    fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
    write_file(&dir, sop, bytes, false)
}

impl Spool {
    /// Opens (creating) the spool at `root` with a budget of `budget` bytes and a journal of
    /// `journal` bytes (two segments; 0: no journal, each instance's file is synced instead).
    /// Instances half received before a crash are deleted, journalled ones restored, everything
    /// is counted.
    pub fn open(root: &Path, budget: u64, journal: u64) -> Result<Self, NodeError> {
        for d in ["incoming", "studies", "grading", "outbox"] {
            fs::create_dir_all(root.join(d)).map_err(io("cannot create", &root.join(d)))?;
        }
        let incoming = root.join("incoming");
        for e in fs::read_dir(&incoming)
            .map_err(io("cannot list", &incoming))?
            .flatten()
        {
            let _ = fs::remove_file(e.path());
        }
        // Instances half written into a study before a crash were never acknowledged.
        for d in ["studies", "grading"] {
            for study in fs::read_dir(root.join(d)).into_iter().flatten().flatten() {
                for f in fs::read_dir(study.path()).into_iter().flatten().flatten() {
                    if f.path().extension().is_some_and(|e| e == "part") {
                        let _ = fs::remove_file(f.path());
                    }
                }
            }
        }
        let journal = match journal {
            0 => None,
            bytes => {
                let (journal, restored) =
                    Journal::open(&root.join("journal"), bytes / 2, |study, sop, data| {
                        restore(root, study, sop, data)
                    })?;
                if restored > 0 {
                    tracing::info!(instances = restored, "instances restored from the journal");
                }
                Some(journal)
            }
        };
        let used = ["studies", "grading", "outbox"]
            .iter()
            .map(|d| size_of(&root.join(d)))
            .sum();
        Ok(Self {
            root: root.to_path_buf(),
            budget,
            used: Mutex::new(used),
            journal,
        })
    }

    fn take(&self, n: u64) -> bool {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if *used + n > self.budget {
            return false;
        }
        *used += n;
        true
    }

    fn give_back(&self, n: u64) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        *used = used.saturating_sub(n);
    }

    /// Bytes in use (kept files and reservations).
    pub fn used(&self) -> u64 {
        *self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An empty reservation.
    pub fn reserve(&self) -> Reservation<'_> {
        Reservation {
            spool: self,
            bytes: 0,
        }
    }

    /// A new file name for an instance being received.
    pub fn incoming(&self) -> PathBuf {
        self.root
            .join("incoming")
            .join(format!("{:032x}.part", rand::random::<u128>()))
    }

    /// The directory of study `key`'s instances.
    pub fn study_dir(&self, study: &str) -> PathBuf {
        self.root.join("studies").join(study)
    }

    /// The directory of study `key` while it is graded.
    pub fn grading_dir(&self, study: &str) -> PathBuf {
        self.root.join("grading").join(study)
    }

    /// Moves complete study `study` from `studies/` to `grading/` (an earlier grading of the same
    /// study, left by a crash, is replaced) and makes its files durable; blocking.
    /// False, and nothing moved, while an earlier part of the study is still being graded (a
    /// late instance opened it again): it is taken up once that grading has ended.
    pub fn claim(&self, study: &str) -> Result<bool, NodeError> {
        if self.grading_dir(study).exists() {
            return Ok(false);
        }
        let mark = self.move_to_grading(study)?;
        if let (Some(journal), Some(mark)) = (&self.journal, mark) {
            journal.checkpoint(mark)?;
        }
        Ok(true)
    }

    /// The instances of study `study` in `studies/`: how many, and their bytes.
    pub fn held(&self, study: &str) -> (usize, u64) {
        let files: Vec<u64> = fs::read_dir(self.study_dir(study))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "dcm"))
            .map(|e| e.metadata().map_or(0, |m| m.len()))
            .collect();
        (files.len(), files.iter().sum())
    }

    /// The move of `claim`, with no instance being journalled meanwhile; the journal's position
    /// after it (a checkpoint there covers every file of the study).
    fn move_to_grading(&self, study: &str) -> Result<Option<Position>, NodeError> {
        let to = self.grading_dir(study);
        let from = self.study_dir(study);
        let rename = || fs::rename(&from, &to).map_err(io("cannot move", &from));
        let mark = match &self.journal {
            Some(journal) => {
                let (moved, mark) = journal.quiet(rename);
                moved?;
                Some(mark)
            }
            None => {
                rename()?;
                None
            }
        };
        sync_dir(&self.root.join("grading"))?;
        Ok(mark)
    }

    /// The studies being graded when the node stopped.
    pub fn grading(&self) -> Vec<(String, Vec<PathBuf>)> {
        self.listed("grading")
    }

    /// The outbox directory of study `key`.
    pub fn outbox_dir(&self, study: &str) -> PathBuf {
        self.root.join("outbox").join(study)
    }

    /// Moves a received, synced file into study `study` as instance `sop` (both keys), and
    /// syncs the directory; a repeated instance replaces the earlier copy.
    pub fn keep(&self, part: &Path, study: &str, sop: &str) -> Result<(), NodeError> {
        let (dir, created) = self.study_dir_created(study)?;
        let to = dir.join(format!("{sop}.dcm"));
        if let Ok(old) = fs::metadata(&to) {
            self.give_back(old.len());
        }
        fs::rename(part, &to).map_err(io("cannot move into", &dir))?;
        self.synced(&dir, created)
    }

    /// Writes a received instance held in memory into study `study` as instance `sop`, durable
    /// when this returns: a journal record synced and the file written, or (no journal) the
    /// file and its directory synced; a repeated instance replaces the earlier copy.
    pub fn keep_bytes(&self, bytes: &[u8], study: &str, sop: &str) -> Result<(), NodeError> {
        if let Some(journal) = self.journal.as_ref().filter(|j| j.fits(bytes.len())) {
            let kept = journal.append(
                study,
                sop,
                bytes,
                || {
                    let (dir, _) = self.study_dir_created(study)?;
                    write_part(&dir, sop, bytes, false)
                },
                |part| self.move_into_place(&part, sop),
            );
            if kept.is_err() {
                let _ = fs::remove_file(self.study_dir(study).join(format!("{sop}.part")));
            }
            return kept;
        }
        let (dir, created) = self.study_dir_created(study)?;
        self.replace(&dir, sop, bytes, true)?;
        self.synced(&dir, created)
    }

    /// Writes instance `sop` into `dir` beside its final name (synced when `sync`), then moves
    /// it into place.
    fn replace(&self, dir: &Path, sop: &str, bytes: &[u8], sync: bool) -> Result<(), NodeError> {
        let part = write_part(dir, sop, bytes, sync)?;
        self.move_into_place(&part, sop)
    }

    /// Renames instance `sop`'s written file `part` over any earlier copy, whose bytes are given
    /// back.
    fn move_into_place(&self, part: &Path, sop: &str) -> Result<(), NodeError> {
        let dir = part.parent().unwrap_or(Path::new("."));
        let to = dir.join(format!("{sop}.dcm"));
        if let Ok(old) = fs::metadata(&to) {
            self.give_back(old.len());
        }
        fs::rename(part, &to).map_err(io("cannot move into", dir))
    }

    /// Marks study `study` incomplete (an instance of it was refused, so it is not graded); the
    /// mark moves with the study.
    pub fn mark_incomplete(&self, study: &str) -> Result<(), NodeError> {
        let (dir, created) = self.study_dir_created(study)?;
        let mark = dir.join(INCOMPLETE);
        if !mark.exists() {
            fs::File::create(&mark)
                .and_then(|f| f.sync_all())
                .map_err(io("cannot create", &mark))?;
            self.synced(&dir, created)?;
        }
        Ok(())
    }

    /// Study `key`'s directory, and whether it was created now.
    fn study_dir_created(&self, study: &str) -> Result<(PathBuf, bool), NodeError> {
        let dir = self.study_dir(study);
        let created = !dir.exists();
        if created {
            fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
        }
        Ok((dir, created))
    }

    /// Syncs a study directory, and `studies/` too when the study's directory is new.
    fn synced(&self, dir: &Path, created: bool) -> Result<(), NodeError> {
        sync_dir(dir)?;
        if created {
            sync_dir(&self.root.join("studies"))?;
        }
        Ok(())
    }

    /// The studies with spooled instances: key and files.
    pub fn studies(&self) -> Vec<(String, Vec<PathBuf>)> {
        self.listed("studies")
    }

    /// The studies with results waiting: key and directory.
    pub fn outbox(&self) -> Vec<String> {
        self.listed("outbox").into_iter().map(|(k, _)| k).collect()
    }

    fn listed(&self, what: &str) -> Vec<(String, Vec<PathBuf>)> {
        let Ok(entries) = fs::read_dir(self.root.join(what)) else {
            return Vec::new();
        };
        let mut out: Vec<(String, Vec<PathBuf>)> = entries
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| {
                let mut files: Vec<PathBuf> = fs::read_dir(e.path())
                    .map(|d| d.flatten().map(|f| f.path()).collect())
                    .unwrap_or_default();
                files.sort();
                (e.file_name().to_string_lossy().into_owned(), files)
            })
            .collect();
        out.sort();
        out
    }

    /// Writes study `study`'s outbox: its results CSV row and its DICOM results, each synced,
    /// then the directory renamed into place in one step (a crash leaves all or nothing).
    pub fn write_outbox(
        &self,
        study: &str,
        row: &[String],
        results: &[Vec<u8>],
        fhir: Option<&str>,
    ) -> Result<(), NodeError> {
        let tmp = self.root.join("outbox").join(format!(".{study}.tmp"));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(io("cannot create", &tmp))?;
        let mut record = csv::Writer::from_writer(Vec::new());
        record
            .write_record(row)
            .map_err(|e| NodeError::io("cannot write a results row", e.into()))?;
        let record = record
            .into_inner()
            .map_err(|e| NodeError::io("cannot write a results row", e.into_error()))?;
        let mut files = vec![("row.csv".to_string(), record)];
        for (i, r) in results.iter().enumerate() {
            files.push((format!("result-{i}.dcm"), r.clone()));
        }
        if let Some(bundle) = fhir {
            files.push((FHIR_BUNDLE.to_string(), bundle.as_bytes().to_vec()));
        }
        for (name, bytes) in &files {
            let path = tmp.join(name);
            let mut f = fs::File::create(&path).map_err(io("cannot create", &path))?;
            f.write_all(bytes)
                .and_then(|()| f.sync_all())
                .map_err(io("cannot write", &path))?;
            // Results are counted against the budget too (best effort: they are small).
            let _ = self.take(bytes.len() as u64);
        }
        sync_dir(&tmp)?;
        let to = self.outbox_dir(study);
        let _ = fs::remove_dir_all(&to);
        fs::rename(&tmp, &to).map_err(io("cannot move into", &to))?;
        sync_dir(&self.root.join("outbox"))
    }

    /// Deletes a directory of the spool and gives its bytes back.
    pub fn remove(&self, dir: &Path) -> Result<(), NodeError> {
        let bytes = size_of(dir);
        match fs::remove_dir_all(dir) {
            Ok(()) => {
                self.give_back(bytes);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(NodeError::io(format!("cannot delete {}", dir.display()), e)),
        }
    }

    /// Deletes one file of the spool and gives its bytes back.
    pub fn remove_file(&self, path: &Path) {
        if let Ok(m) = fs::metadata(path)
            && fs::remove_file(path).is_ok()
        {
            self.give_back(m.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_holds_reservations_and_kept_files_and_a_restart_recounts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path(), 100, 0).expect("open");
        let mut r = spool.reserve();
        assert!(r.grow(60));
        assert!(!r.grow(50), "over the budget");
        let part = spool.incoming();
        fs::write(&part, [0u8; 60]).expect("write");
        r.keep();
        spool.keep(&part, "s1", "i1").expect("keep");
        assert_eq!(spool.used(), 60);
        {
            let mut dropped = spool.reserve();
            assert!(dropped.grow(30));
            assert_eq!(spool.used(), 90);
        }
        assert_eq!(
            spool.used(),
            60,
            "a dropped reservation gives its bytes back"
        );
        fs::write(dir.path().join("incoming").join("x.part"), [0u8; 10]).expect("half");
        let again = Spool::open(dir.path(), 100, 0).expect("reopen");
        assert_eq!(again.used(), 60);
        assert!(!dir.path().join("incoming").join("x.part").exists());
        assert_eq!(again.studies().len(), 1);
        again.remove(&again.study_dir("s1")).expect("remove");
        assert_eq!(again.used(), 0);
    }

    fn k(n: u8) -> String {
        format!("{n:032x}")
    }

    #[test]
    fn a_journalled_instance_whose_file_was_lost_is_restored_into_its_study() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path(), 1 << 20, 1 << 20).expect("open");
        spool.keep_bytes(b"one", &k(1), &k(2)).expect("keep");
        spool.keep_bytes(b"two", &k(1), &k(3)).expect("keep");
        assert_eq!(spool.used(), 0, "the caller's reservation counts the bytes");
        drop(spool);
        // What a power cut may leave of a file written without a sync.
        let file = dir
            .path()
            .join("studies")
            .join(k(1))
            .join(format!("{}.dcm", k(2)));
        fs::write(&file, b"").expect("truncate");
        fs::remove_file(
            dir.path()
                .join("studies")
                .join(k(1))
                .join(format!("{}.dcm", k(3))),
        )
        .expect("remove");
        let spool = Spool::open(dir.path(), 1 << 20, 1 << 20).expect("reopen");
        assert_eq!(fs::read(&file).expect("restored"), b"one");
        assert_eq!(spool.studies()[0].1.len(), 2);
        assert_eq!(spool.used(), 6);
    }

    #[test]
    fn a_claimed_study_is_restored_where_it_was_claimed_and_never_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path(), 1 << 20, 1 << 20).expect("open");
        spool.keep_bytes(b"one", &k(1), &k(2)).expect("keep");
        // Crash after the move, before its checkpoint: the replay writes into grading/.
        spool.move_to_grading(&k(1)).expect("move");
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 20, 1 << 20).expect("reopen");
        assert!(spool.studies().is_empty(), "{:?}", spool.studies());
        assert_eq!(spool.grading().len(), 1);
        // Claimed with its checkpoint, graded and deleted: nothing comes back.
        spool.keep_bytes(b"two", &k(4), &k(5)).expect("keep");
        assert!(spool.claim(&k(4)).expect("claim"));
        // A late instance while the first part is still graded waits for that grading.
        spool.keep_bytes(b"late", &k(4), &k(6)).expect("keep");
        assert!(!spool.claim(&k(4)).expect("claim"), "busy");
        assert_eq!(spool.held(&k(4)), (1, 4));
        assert_eq!(spool.grading().len(), 2, "the first part is untouched");
        spool.remove(&spool.grading_dir(&k(4))).expect("graded");
        assert!(spool.claim(&k(4)).expect("claim"), "taken up once graded");
        spool.remove(&spool.grading_dir(&k(4))).expect("graded");
        spool.remove(&spool.grading_dir(&k(1))).expect("graded");
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 20, 1 << 20).expect("reopen");
        assert!(spool.studies().is_empty() && spool.grading().is_empty());
    }
}
