//! The study store: ingested CT volumes by unguessable handle, bounded in bytes, expiring after a
//! TTL, deletable at once. Views a model reads are computed once per study and view spec.

use crate::error::ServerError;
use osteo_core::ViewSpec;
use osteo_dicom::{View, Volume, coronal_slab};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// An ingested study.
#[derive(Debug)]
pub struct Study {
    /// The de-identified handle (`st_` + 32 hex digits).
    pub handle: String,
    /// The selected series as a HU volume (summary included; no identifiers).
    pub volume: Volume,
    /// Bytes the study holds in the store.
    pub stored_bytes: u64,
    views: Mutex<Vec<(ViewSpec, Arc<View>)>>,
}

impl Study {
    /// A study with a fresh handle.
    pub fn new(volume: Volume) -> Self {
        let stored_bytes = (volume.hu.len() * std::mem::size_of::<f32>()) as u64;
        Self {
            handle: new_handle(),
            volume,
            stored_bytes,
            views: Mutex::new(Vec::new()),
        }
    }

    /// The model view of this study, computed on first use.
    pub fn view(&self, spec: &ViewSpec) -> Result<Arc<View>, ServerError> {
        if let Some((_, v)) = lock(&self.views).iter().find(|(s, _)| s == spec) {
            return Ok(v.clone());
        }
        let view = Arc::new(coronal_slab(&self.volume, spec)?);
        lock(&self.views).push((*spec, view.clone()));
        Ok(view)
    }
}

/// A new unguessable handle: 128 bits from the thread's cryptographic generator.
fn new_handle() -> String {
    format!("st_{:032x}", rand::random::<u128>())
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
    max_bytes: u64,
    ttl: Duration,
}

impl StudyStore {
    /// An empty store holding at most `max_bytes`, each study for `ttl`.
    pub fn new(max_bytes: u64, ttl: Duration) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            max_bytes,
            ttl,
        }
    }

    fn sweep_locked(entries: &mut HashMap<String, Entry>, now: Instant) {
        entries.retain(|_, e| e.expires > now);
    }

    fn used(entries: &HashMap<String, Entry>) -> u64 {
        entries.values().map(|e| e.study.stored_bytes).sum()
    }

    /// Reports the store's size to the metrics.
    fn publish(entries: &HashMap<String, Entry>) {
        metrics::gauge!("osteo_store_bytes").set(Self::used(entries) as f64);
        metrics::gauge!("osteo_store_studies").set(entries.len() as f64);
    }

    /// Stores a study; RESOURCE_EXHAUSTED when it does not fit beside the others.
    pub fn insert(&self, study: Study) -> Result<(Arc<Study>, Duration), ServerError> {
        let mut entries = lock(&self.entries);
        Self::sweep_locked(&mut entries, Instant::now());
        let used = Self::used(&entries);
        if used + study.stored_bytes > self.max_bytes {
            return Err(ServerError::ResourceExhausted(format!(
                "the study store is full: the study needs {} bytes, {} of {} are in use; delete \
                 studies you no longer need or retry after they expire",
                study.stored_bytes, used, self.max_bytes
            )));
        }
        let study = Arc::new(study);
        entries.insert(
            study.handle.clone(),
            Entry {
                study: study.clone(),
                expires: Instant::now() + self.ttl,
            },
        );
        Self::publish(&entries);
        Ok((study, self.ttl))
    }

    fn not_found(handle: &str) -> ServerError {
        ServerError::NotFound(format!(
            "study {handle} is not stored (never uploaded, deleted, or expired); upload it again"
        ))
    }

    /// A stored study and the time it has left.
    pub fn get(&self, handle: &str) -> Result<(Arc<Study>, Duration), ServerError> {
        let now = Instant::now();
        let mut entries = lock(&self.entries);
        Self::sweep_locked(&mut entries, now);
        entries
            .get(handle)
            .map(|e| (e.study.clone(), e.expires.saturating_duration_since(now)))
            .ok_or_else(|| Self::not_found(handle))
    }

    /// Deletes a study; returns the bytes freed.
    pub fn delete(&self, handle: &str) -> Result<u64, ServerError> {
        let mut entries = lock(&self.entries);
        let e = entries
            .remove(handle)
            .ok_or_else(|| Self::not_found(handle))?;
        Self::publish(&entries);
        Ok(e.study.stored_bytes)
    }

    /// Drops expired studies.
    pub fn sweep(&self) {
        let mut entries = lock(&self.entries);
        Self::sweep_locked(&mut entries, Instant::now());
        Self::publish(&entries);
    }

    /// Bytes in use.
    pub fn used_bytes(&self) -> u64 {
        Self::used(&lock(&self.entries))
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

    #[test]
    fn budget_ttl_and_delete() {
        let store = StudyStore::new(1000, Duration::from_millis(200));
        let (a, _) = store.insert(Study::new(volume(10))).expect("640 bytes fit");
        assert_eq!(a.stored_bytes, 640);
        assert!(a.handle.starts_with("st_") && a.handle.len() == 35);
        let full = store
            .insert(Study::new(volume(10)))
            .expect_err("1280 > 1000");
        assert!(matches!(full, ServerError::ResourceExhausted(_)));
        assert_eq!(
            store.used_bytes(),
            640,
            "a refused study leaves nothing behind"
        );
        assert_eq!(store.delete(&a.handle), Ok(640));
        assert!(matches!(
            store.get(&a.handle),
            Err(ServerError::NotFound(_))
        ));
        let (b, _) = store
            .insert(Study::new(volume(10)))
            .expect("fits after delete");
        std::thread::sleep(Duration::from_millis(250));
        assert!(store.get(&b.handle).is_err(), "expired");
        assert_eq!(store.used_bytes(), 0);
    }
}
