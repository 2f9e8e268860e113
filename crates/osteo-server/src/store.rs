//! The study store: ingested CT volumes by unguessable handle, bounded in bytes, expiring after a
//! TTL, deletable at once. Views a model reads are computed once per study and view spec.
//!
//! The bytes are accounted by reservation: an ingest reserves the decoded size from the store's
//! [`Budget`] before it decodes anything, and the [`Study`] carries that reservation, so the
//! memory is counted as long as any request still holds the study (even after it expired or was
//! deleted) and released the moment the last holder lets go.

use crate::budget::{Budget, Reservation};
use crate::error::ServerError;
use crate::text::{client_text, handle_instance};
use osteo_core::ViewSpec;
use osteo_dicom::attenuation::Attenuation;
use osteo_dicom::{Assessment, Demographics, SourceStudy, View, Volume, assess};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// An ingested study.
#[derive(Debug)]
pub struct Study {
    /// The de-identified handle (`st_<instance>_<random>`, see [`StudyStore::new_handle`]).
    pub handle: String,
    /// The selected series as a HU volume (summary included; no identifiers).
    pub volume: Volume,
    /// Bytes the study holds in the store.
    pub stored_bytes: u64,
    /// Age, sex, height and weight as the header states them (patient data: never logged).
    pub demographics: Demographics,
    /// The study and series it came from, for results written as DICOM (patient data).
    pub source: SourceStudy,
    /// The principal that uploaded it; only it (and admins, for reading and deleting) sees it.
    pub owner: String,
    views: Mutex<Vec<(ViewSpec, Arc<View>)>>,
    gates: Mutex<Vec<(ViewSpec, Arc<Assessment>)>>,
    attenuation: std::sync::OnceLock<Option<Arc<Attenuation>>>,
    _held: Held,
}

/// Bytes reserved for one study: from the store and from its owner's quota.
#[derive(Debug)]
pub struct Held {
    store: Reservation,
    owner: Option<Reservation>,
}

impl Held {
    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.store.bytes()
    }

    /// Shrinks (or grows) both reservations to `bytes`.
    pub fn resize(&mut self, bytes: u64) -> Result<(), ServerError> {
        self.store.resize(bytes, "the decoded study")?;
        if let Some(o) = self.owner.as_mut() {
            o.resize(bytes, "the decoded study")?;
        }
        Ok(())
    }
}

impl Study {
    /// A study of `owner` under `handle` (from [`StudyStore::new_handle`]), holding the bytes
    /// reserved for its volume.
    pub fn new(
        handle: String,
        volume: Volume,
        demographics: Demographics,
        source: SourceStudy,
        held: Held,
        owner: &str,
    ) -> Self {
        Self {
            handle,
            volume,
            demographics,
            source,
            stored_bytes: held.bytes(),
            owner: owner.to_string(),
            views: Mutex::new(Vec::new()),
            gates: Mutex::new(Vec::new()),
            attenuation: std::sync::OnceLock::new(),
            _held: held,
        }
    }

    /// The model view of this study for `spec`, if it was built already.
    pub fn cached_view(&self, spec: &ViewSpec) -> Option<Arc<View>> {
        lock(&self.views)
            .iter()
            .find(|(s, _)| s == spec)
            .map(|(_, v)| v.clone())
    }

    /// The quality gate of `spec` on this study, computed on first use.
    pub fn assessment(&self, spec: &ViewSpec) -> Arc<Assessment> {
        let cached = lock(&self.gates)
            .iter()
            .find(|(s, _)| s == spec)
            .map(|(_, a)| a.clone());
        cached.unwrap_or_else(|| {
            let a = Arc::new(assess(&self.volume, spec));
            lock(&self.gates).push((*spec, a.clone()));
            a
        })
    }

    /// The vertebral attenuation of this study, measured on first use (blocking work); None
    /// when no vertebral body could be measured.
    pub fn attenuation(&self) -> Option<Arc<Attenuation>> {
        self.attenuation
            .get_or_init(|| osteo_pipeline::attenuation(&self.volume).map(Arc::new))
            .clone()
    }

    /// The vertebral attenuation if it was measured already.
    pub fn measured_attenuation(&self) -> Option<Option<Arc<Attenuation>>> {
        self.attenuation.get().cloned()
    }

    /// The model view of this study, computed on first use; FAILED_PRECONDITION when the study
    /// fails the spec's quality gate.
    pub fn view(&self, spec: &ViewSpec) -> Result<Arc<View>, ServerError> {
        if let Some(v) = self.cached_view(spec) {
            return Ok(v);
        }
        let view = Arc::new(osteo_pipeline::gated_view(
            &self.assessment(spec),
            &self.volume,
            spec,
        )?);
        lock(&self.views).push((*spec, view.clone()));
        Ok(view)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere cannot leave these maps half-updated; keep serving.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Entry {
    study: Arc<Study>,
    expires: Instant,
}

/// Studies by handle.
pub struct StudyStore {
    entries: Mutex<HashMap<String, Entry>>,
    budget: Arc<Budget>,
    max_study_bytes: u64,
    /// Bytes one principal's studies may take (0 = no limit beyond the store's).
    max_bytes_per_principal: u64,
    quotas: Mutex<HashMap<String, Arc<Budget>>>,
    ttl: Duration,
    /// The tag of this server instance in every handle it issues.
    instance: String,
}

impl StudyStore {
    /// An empty store holding at most `max_bytes`, one study at most `max_study_bytes`, each
    /// study for `ttl`.
    pub fn new(max_bytes: u64, max_study_bytes: u64, ttl: Duration) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            budget: Budget::new("store.max_bytes", max_bytes),
            max_study_bytes,
            max_bytes_per_principal: 0,
            quotas: Mutex::new(HashMap::new()),
            ttl,
            instance: format!("{:08x}", rand::random::<u32>()),
        }
    }

    /// The same store with a quota of `bytes` per principal (0 = none).
    pub fn with_quota_per_principal(mut self, bytes: u64) -> Self {
        self.max_bytes_per_principal = bytes;
        self
    }

    fn sweep_locked(entries: &mut HashMap<String, Entry>, now: Instant) {
        entries.retain(|_, e| e.expires > now);
    }

    /// Reports the store's size to the metrics.
    fn publish(&self, entries: &HashMap<String, Entry>) {
        metrics::gauge!("osteo_store_bytes").set(self.budget.used() as f64);
        metrics::gauge!("osteo_store_studies").set(entries.len() as f64);
    }

    /// Reserves the decoded size of a study before it is decoded: RESOURCE_EXHAUSTED when it is
    /// larger than one study may be or does not fit beside the studies held now.
    pub fn reserve(&self, bytes: u64, owner: &str) -> Result<Held, ServerError> {
        if bytes > self.max_study_bytes {
            return Err(ServerError::TooLarge(format!(
                "the decoded study would take {bytes} bytes, more than one study may take \
                 ({} bytes, store.max_study_bytes); send fewer or smaller slices (the selected \
                 series only)",
                self.max_study_bytes
            )));
        }
        {
            let mut entries = lock(&self.entries);
            Self::sweep_locked(&mut entries, Instant::now());
        }
        let owner = if self.max_bytes_per_principal == 0 {
            None
        } else {
            let quota = lock(&self.quotas)
                .entry(owner.to_string())
                .or_insert_with(|| {
                    Budget::new(
                        "store.max_bytes_per_principal",
                        self.max_bytes_per_principal,
                    )
                })
                .clone();
            Some(quota.reserve(bytes, "the decoded study")?)
        };
        let store = self.budget.reserve(bytes, "the decoded study")?;
        Ok(Held { store, owner })
    }

    /// Stores a study whose bytes were reserved by [`StudyStore::reserve`].
    pub fn insert(&self, study: Study) -> (Arc<Study>, Duration) {
        let mut entries = lock(&self.entries);
        let study = Arc::new(study);
        entries.insert(
            study.handle.clone(),
            Entry {
                study: study.clone(),
                expires: Instant::now() + self.ttl,
            },
        );
        self.publish(&entries);
        (study, self.ttl)
    }

    /// The instance tag in this store's handles (8 hex digits, random per server start).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// A new unguessable handle naming this server instance: `st_`, the instance tag, `_`, and
    /// 128 bits from the thread's cryptographic generator.
    pub fn new_handle(&self) -> String {
        format!("st_{}_{:032x}", self.instance, rand::random::<u128>())
    }

    /// NOT_FOUND for `handle`: a handle another server instance issued says so and names the
    /// remedies; anything else reads the same whether it never existed, expired, was deleted
    /// or belongs to someone else.
    fn not_found(&self, handle: &str) -> ServerError {
        match handle_instance(handle) {
            Some(other) if other != self.instance => ServerError::NotFound(format!(
                "study \"{handle}\" was uploaded to server instance {other}, and this is \
                 instance {}: a study lives only in the memory of the replica that took its \
                 upload (or of an earlier run of it). Send every call about a study to that \
                 replica (the same x-osteo-affinity metadata on each call, through a balancer \
                 that hashes on it), or upload and grade in one call with GradeStudy",
                self.instance
            )),
            _ => ServerError::NotFound(format!(
                "study \"{}\" is not stored (never uploaded, deleted, or expired); upload it \
                 again",
                client_text(handle)
            )),
        }
    }

    /// A stored study and the time it has left. With `owner`, another principal's study is
    /// NOT_FOUND exactly like a handle that never existed; `None` reaches any study (admins).
    pub fn get(
        &self,
        handle: &str,
        owner: Option<&str>,
    ) -> Result<(Arc<Study>, Duration), ServerError> {
        let now = Instant::now();
        let mut entries = lock(&self.entries);
        Self::sweep_locked(&mut entries, now);
        entries
            .get(handle)
            .filter(|e| owner.is_none_or(|o| e.study.owner == o))
            .map(|e| (e.study.clone(), e.expires.saturating_duration_since(now)))
            .ok_or_else(|| self.not_found(handle))
    }

    /// Deletes a study (of `owner`, or any with `None`); returns the bytes freed.
    pub fn delete(&self, handle: &str, owner: Option<&str>) -> Result<u64, ServerError> {
        let mut entries = lock(&self.entries);
        if entries
            .get(handle)
            .is_none_or(|e| owner.is_some_and(|o| e.study.owner != o))
        {
            return Err(self.not_found(handle));
        }
        let e = entries
            .remove(handle)
            .ok_or_else(|| self.not_found(handle))?;
        drop(entries);
        let freed = e.study.stored_bytes;
        drop(e);
        self.publish(&lock(&self.entries));
        Ok(freed)
    }

    /// Drops expired studies.
    pub fn sweep(&self) {
        let mut entries = lock(&self.entries);
        Self::sweep_locked(&mut entries, Instant::now());
        self.publish(&entries);
    }

    /// Bytes reserved now (stored studies and studies being decoded or still in use).
    pub fn used_bytes(&self) -> u64 {
        self.budget.used()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use osteo_dicom::VolumeGeometry;

    fn volume(slices: usize) -> Volume {
        Volume::from_parts(
            vec![0.0; slices * 4 * 4],
            VolumeGeometry {
                dims: [slices, 4, 4],
                spacing_mm: [1.0; 3],
                origin_mm: [0.0; 3],
                direction: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            },
            "CT",
            vec![],
        )
        .expect("volume")
    }

    fn study(store: &StudyStore, slices: usize) -> Result<Study, ServerError> {
        owned(store, slices, "alice")
    }

    fn owned(store: &StudyStore, slices: usize, owner: &str) -> Result<Study, ServerError> {
        let v = volume(slices);
        let bytes = (v.hu.len() * 4) as u64;
        Ok(Study::new(
            store.new_handle(),
            v,
            Demographics::default(),
            SourceStudy::default(),
            store.reserve(bytes, owner)?,
            owner,
        ))
    }

    #[test]
    fn budget_ttl_and_delete() {
        let store = StudyStore::new(1000, 1000, Duration::from_millis(200));
        let (a, _) = store.insert(study(&store, 10).expect("640 bytes fit"));
        assert_eq!(a.stored_bytes, 640);
        assert!(crate::text::is_handle(&a.handle), "{}", a.handle);
        assert_eq!(
            crate::text::handle_instance(&a.handle),
            Some(store.instance())
        );
        let full = study(&store, 10).expect_err("1280 > 1000");
        assert!(matches!(full, ServerError::ResourceExhausted(_)));
        assert_eq!(
            store.used_bytes(),
            640,
            "a refused study leaves nothing behind"
        );
        assert_eq!(store.delete(&a.handle, Some("alice")), Ok(640));
        assert_eq!(store.used_bytes(), 640, "a request still holds the study");
        drop(a);
        assert_eq!(store.used_bytes(), 0, "released with its last holder");
        let err = store.get("st_nope\n", None).expect_err("unknown");
        assert!(matches!(err, ServerError::NotFound(_)));
        assert!(err.to_string().contains("st_nope\\n"), "escaped: {err}");
        let (b, _) = store.insert(study(&store, 10).expect("fits after delete"));
        drop(b);
        std::thread::sleep(Duration::from_millis(250));
        store.sweep();
        assert_eq!(store.used_bytes(), 0, "expired");
    }

    #[test]
    fn a_handle_of_another_instance_names_it_and_the_remedies() {
        let store = StudyStore::new(1000, 1000, Duration::from_secs(60));
        let other = StudyStore::new(1000, 1000, Duration::from_secs(60));
        let (theirs, _) = other.insert(study(&other, 10).expect("fits"));
        let e = store.get(&theirs.handle, None).expect_err("not here");
        assert!(matches!(e, ServerError::NotFound(_)));
        let m = e.to_string();
        assert!(
            m.contains(other.instance()) && m.contains(store.instance()),
            "{m}"
        );
        assert!(
            m.contains("x-osteo-affinity") && m.contains("GradeStudy"),
            "{m}"
        );
        let ours = store
            .get(&store.new_handle(), None)
            .expect_err("never issued");
        assert!(ours.to_string().contains("upload it again"), "{ours}");
    }

    #[test]
    fn studies_are_visible_to_their_owner_and_quotas_are_per_principal() {
        let store =
            StudyStore::new(10_000, 1000, Duration::from_secs(60)).with_quota_per_principal(700);
        let (a, _) = store.insert(owned(&store, 10, "alice").expect("640 bytes"));
        let other = store.get(&a.handle, Some("bob")).expect_err("not bob's");
        let never_issued = store.new_handle();
        let never = store.get(&never_issued, Some("bob"));
        assert_eq!(
            other.to_string().replace(&a.handle, "H"),
            never
                .expect_err("unknown")
                .to_string()
                .replace(&never_issued, "H"),
            "no oracle: someone else's study reads exactly like a missing one"
        );
        assert!(store.delete(&a.handle, Some("bob")).is_err());
        assert!(store.get(&a.handle, None).is_ok(), "admins reach any study");
        let e = owned(&store, 10, "alice").expect_err("alice's quota");
        assert!(
            e.to_string().contains("store.max_bytes_per_principal"),
            "{e}"
        );
        owned(&store, 10, "bob").expect("bob has his own quota");
    }

    #[test]
    fn one_study_is_bounded_by_max_study_bytes() {
        let store = StudyStore::new(10_000, 1000, Duration::from_secs(60));
        let err = store
            .reserve(1001, "alice")
            .expect_err("too large for one study");
        assert!(err.to_string().contains("store.max_study_bytes"), "{err}");
        assert_eq!(store.used_bytes(), 0);
    }
}
