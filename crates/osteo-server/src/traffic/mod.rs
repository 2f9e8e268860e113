//! Experiments on live traffic: canary splits that route a model's requests between versions or
//! backends by weight (sticky per study), and shadow pairs that grade a fraction of a model's
//! requests again on another target after the primary answered, keeping agreement figures. The
//! policy in force is checked against the served models and replaced whole when its file
//! changes.

mod canary;
mod report;
mod shadow;

pub use canary::{Route, StickyKey};
pub use report::{Interval, PairReport, PairStats};
pub use shadow::Mirror;

use crate::config::{Settings, TrafficPolicy};
use crate::error::ServerError;
use crate::models::ModelSet;
use crate::state::State;
use canary::Canary;
use shadow::Job;
pub(crate) use shadow::Pair;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

/// The policy in force: compiled canaries by model and shadow pairs.
#[derive(Default)]
pub struct Compiled {
    canaries: BTreeMap<String, Canary>,
    pairs: Vec<Arc<Pair>>,
}

/// What the server holds for live-traffic experiments.
pub struct Traffic {
    /// The policy last put in force, checked again when the served models change.
    policy: RwLock<TrafficPolicy>,
    compiled: RwLock<Arc<Compiled>>,
    /// Statistics by (primary, shadow) label, kept across policy reloads.
    stats: Mutex<BTreeMap<(String, String), Arc<PairStats>>>,
    queue: tokio::sync::mpsc::Sender<Job>,
    waiting: Mutex<Option<tokio::sync::mpsc::Receiver<Job>>>,
    report_window: usize,
    /// Held while a shadow report is computed: one at a time, so repeated report requests cost
    /// at most one core.
    pub(crate) reporting: Arc<tokio::sync::Semaphore>,
}

impl Traffic {
    /// No policy yet; a shadow queue of `settings.traffic.shadow_queue` jobs.
    pub fn new(settings: &Settings) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(settings.traffic.shadow_queue.max(1));
        Self {
            policy: RwLock::new(TrafficPolicy::default()),
            compiled: RwLock::new(Arc::new(Compiled::default())),
            stats: Mutex::new(BTreeMap::new()),
            queue: tx,
            waiting: Mutex::new(Some(rx)),
            report_window: settings.traffic.report_window.max(1),
            reporting: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// The policy in force.
    pub(crate) fn compiled(&self) -> Arc<Compiled> {
        self.compiled
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Checks `policy` against the served `models` and puts it in force; on error the policy
    /// in force stays.
    pub fn install(&self, policy: &TrafficPolicy, models: &ModelSet) -> Result<(), ServerError> {
        let mut canaries = BTreeMap::new();
        for c in &policy.canary {
            canaries.insert(c.model.clone(), Canary::compile(c, models)?);
        }
        let mut pairs = Vec::new();
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        for s in &policy.shadow {
            shadow::check(s, models)?;
            let key = (s.primary_label(), s.target_label());
            let st = stats
                .entry(key)
                .or_insert_with(|| Arc::new(PairStats::new(self.report_window)))
                .clone();
            pairs.push(Arc::new(Pair::new(s.clone(), st)));
        }
        *self.compiled.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(Compiled { canaries, pairs });
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = policy.clone();
        Ok(())
    }

    /// Checks the policy in force against a new model set (after a version swap) and compiles
    /// it anew; one that names what is no longer served stays as it was and is logged once
    /// (requests it routes to a missing target are answered by the version they name).
    pub fn revalidate(&self, models: &ModelSet) {
        let policy = self
            .policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Err(e) = self.install(&policy, models) {
            tracing::error!(error = %e, "the traffic policy names what the new model set does not serve; fix the policy (traffic.file) or load the version back");
        }
    }

    /// Every shadow pair in force with its statistics.
    pub(crate) fn pairs(&self) -> Vec<Arc<Pair>> {
        self.compiled().pairs.clone()
    }
}

/// The policy the configuration names: the traffic file's, when `traffic.file` is set, else the
/// configuration's own tables.
pub fn configured_policy(settings: &Settings) -> Result<TrafficPolicy, ServerError> {
    let file = &settings.traffic.file;
    if file.is_empty() {
        return Ok(settings.traffic_policy());
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| ServerError::Config(format!("traffic.file: cannot read {file}: {e}")))?;
    TrafficPolicy::parse(&text, &format!("traffic.file {file}"))
}

/// Puts the configured policy in force over the models about to be served (start-up: an error
/// stops the server), then starts the shadow runner and, when `traffic.file` is set, its
/// watcher.
pub fn start(state: &Arc<State>, models: &ModelSet) -> Result<(), ServerError> {
    let policy = configured_policy(&state.settings)?;
    state.traffic.install(&policy, models)?;
    if !policy.shadow.is_empty() || !policy.canary.is_empty() {
        tracing::info!(
            shadows = policy.shadow.len(),
            canaries = policy.canary.len(),
            "traffic policy in force"
        );
    }
    let waiting = state
        .traffic
        .waiting
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(rx) = waiting {
        tokio::spawn(shadow::run(state.clone(), rx));
    }
    if !state.settings.traffic.file.is_empty() {
        tokio::spawn(watch_file(state.clone()));
    }
    Ok(())
}

/// Reads the traffic file again whenever its modification time or size changes and puts the
/// new policy in force; a file that does not parse or does not fit the served models leaves the
/// policy in force and is logged.
async fn watch_file(state: Arc<State>) {
    let path = std::path::PathBuf::from(&state.settings.traffic.file);
    let stamp = |p: &std::path::Path| -> Option<(SystemTime, u64)> {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    let mut seen = stamp(&path);
    let mut tick = tokio::time::interval(Duration::from_secs(state.settings.traffic.poll_s.max(1)));
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = stamp(&path);
        if now == seen {
            continue;
        }
        seen = now;
        let installed = configured_policy(&state.settings).and_then(|p| {
            state
                .models()
                .and_then(|m| state.traffic.install(&p, &m).map(|_| p))
        });
        match installed {
            Ok(p) => tracing::info!(
                shadows = p.shadow.len(),
                canaries = p.canary.len(),
                "traffic file changed; new policy in force"
            ),
            Err(e) => {
                tracing::error!(error = %e, "traffic file changed but is refused; the policy in force stays")
            }
        }
    }
}
