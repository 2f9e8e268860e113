//! Shadow pairs: after a primary answered, a fraction of its requests is queued (never waited
//! for: a full queue drops and counts) and graded again, one at a time, by the pair's target on
//! an instance of its backend of its own that runs at the lowest CPU priority on one thread, so
//! a shadow takes only CPU time the primary leaves idle; then compared.

use super::report::{Comparison, PairStats};
use crate::config::ShadowSettings;
use crate::error::ServerError;
use crate::models::{ModelSet, ServedModel};
use crate::scheduler::{BatchConfig, Worker};
use crate::state::{State, blocking};
use crate::stats::ModelStats;
use osteo_core::{ModelManifest, Sample};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::error::TrySendError;

/// A configured pair in force, with its statistics.
pub struct Pair {
    /// The configuration.
    pub settings: ShadowSettings,
    /// The primary's label (`model[:version][@backend]`).
    pub primary: String,
    /// The target's label.
    pub shadow: String,
    /// The running figures.
    pub stats: Arc<PairStats>,
}

impl Pair {
    pub(super) fn new(settings: ShadowSettings, stats: Arc<PairStats>) -> Self {
        Self {
            primary: settings.primary_label(),
            shadow: settings.target_label(),
            settings,
            stats,
        }
    }

    /// Whether a primary answer by `model` at `version` on `backend` is one this pair mirrors.
    fn matches(&self, model: &str, version: &str, backend: &str) -> bool {
        let s = &self.settings;
        s.model == model
            && (s.version.is_empty() || s.version == version)
            && (s.backend.is_empty() || s.backend == backend)
    }

    fn count(&self, outcome: &'static str) {
        metrics::counter!(
            "osteo_shadow_requests_total",
            "model" => self.primary.clone(),
            "shadow" => self.shadow.clone(),
            "outcome" => outcome
        )
        .increment(1);
    }
}

/// A primary's answer offered to the shadows: the model version and backend that answered, the
/// inputs it graded, their logits, its inference time per sample and the study handle.
pub struct Mirror<'a> {
    /// The model version that answered.
    pub model: &'a Arc<ServedModel>,
    /// The backend that answered.
    pub backend: &'a str,
    /// The inputs, one per graded sample.
    pub inputs: &'a [Sample],
    /// The logits of each input.
    pub logits: &'a [Vec<f32>],
    /// Inference time per sample, ms.
    pub ms: f64,
    /// The de-identified study handle ("" without a study).
    pub study: &'a str,
}

/// One mirrored request waiting for the runner.
pub(crate) struct Job {
    pair: Arc<Pair>,
    primary: Arc<ServedModel>,
    inputs: Vec<Sample>,
    logits: Vec<Vec<f32>>,
    ms: f64,
    study: String,
}

impl super::Traffic {
    /// Whether any pair mirrors answers by `model` on `backend` (so the caller keeps a copy of
    /// its inputs only then).
    pub fn mirrors(&self, model: &ServedModel, backend: &str) -> bool {
        self.compiled()
            .pairs
            .iter()
            .any(|p| p.matches(model.name(), model.version(), backend))
    }

    /// Queues `m` for every pair that mirrors it (each with its fraction's chance); a full queue
    /// drops the job and counts it. Never waits.
    pub fn mirror(&self, m: Mirror<'_>) {
        let compiled = self.compiled();
        for pair in &compiled.pairs {
            if !pair.matches(m.model.name(), m.model.version(), m.backend)
                || rand::random::<f64>() >= pair.settings.fraction
            {
                continue;
            }
            let job = Job {
                pair: pair.clone(),
                primary: m.model.clone(),
                inputs: m.inputs.to_vec(),
                logits: m.logits.to_vec(),
                ms: m.ms,
                study: m.study.to_string(),
            };
            match self.queue.try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Full(job)) | Err(TrySendError::Closed(job)) => {
                    job.pair.stats.dropped();
                    job.pair.count("dropped");
                }
            }
        }
    }
}

/// Checks a pair against the served models: the primary model (and version) and the target
/// (model, version, backend) are served, and the target can read what every primary version
/// it mirrors is given.
pub(super) fn check(s: &ShadowSettings, models: &ModelSet) -> Result<(), ServerError> {
    let bad = |e: String| {
        ServerError::Config(format!(
            "shadow {} -> {}: {e}",
            s.primary_label(),
            s.target_label()
        ))
    };
    let primary = models.get(&s.model).map_err(|e| bad(e.to_string()))?;
    if primary.name() != s.model {
        return Err(bad("name the primary model as it is served".into()));
    }
    if !s.version.is_empty() {
        models
            .get_version(&s.model, &s.version)
            .map_err(|e| bad(e.to_string()))?;
    }
    let target = models
        .get_version(s.target_name(), &s.target_version)
        .map_err(|e| bad(e.to_string()))?;
    target
        .worker(&s.target_backend)
        .map_err(|e| bad(e.to_string()))?;
    for v in models.versions(&s.model) {
        if !s.version.is_empty() && v != s.version {
            continue;
        }
        let p = models
            .get_version(&s.model, v)
            .map_err(|e| bad(e.to_string()))?;
        readable(&p.artifacts.manifest, &target.artifacts.manifest).map_err(bad)?;
    }
    Ok(())
}

/// Whether a model described by `to` can read the inputs prepared for `from`: the same view (if
/// it reads CT) and every clinical feature it reads among `from`'s.
fn readable(from: &ModelManifest, to: &ModelManifest) -> Result<(), String> {
    if let Some(v) = &to.view
        && from.view.as_ref() != Some(v)
    {
        return Err(format!(
            "{} reads a CT view that {} is not given (a different view or none)",
            to.name, from.name
        ));
    }
    if let Some(t) = &to.tabular {
        let Some(f) = &from.tabular else {
            return Err(format!(
                "{} reads clinical variables that {} is not given",
                to.name, from.name
            ));
        };
        for feature in &t.features {
            if !f.features.iter().any(|x| x.name == feature.name) {
                return Err(format!(
                    "{} reads clinical feature {} that {} does not",
                    to.name, feature.name, from.name
                ));
            }
        }
    }
    Ok(())
}

/// `from`'s input as `to` reads it: the view as it is, the clinical features re-standardised
/// from `from`'s statistics to `to`'s (checked readable when the pair was installed).
fn adapt(input: &Sample, from: &ModelManifest, to: &ModelManifest) -> Result<Sample, String> {
    readable(from, to)?;
    let image = match to.view {
        None => None,
        Some(_) => Some(
            input
                .image
                .clone()
                .ok_or("the primary's input has no view")?,
        ),
    };
    let tabular = match (&to.tabular, &from.tabular) {
        (None, _) => None,
        (Some(t), Some(f)) if t == f => Some(
            input
                .tabular
                .clone()
                .ok_or("the primary's input has no clinical features")?,
        ),
        (Some(t), Some(f)) => {
            let x = input
                .tabular
                .as_ref()
                .ok_or("the primary's input has no clinical features")?;
            let mut out = Vec::with_capacity(t.features.len());
            for feature in &t.features {
                let i = f
                    .features
                    .iter()
                    .position(|g| g.name == feature.name)
                    .ok_or("a clinical feature is missing")?;
                let g = &f.features[i];
                let raw = f64::from(*x.get(i).ok_or("too few clinical features")?) * g.std + g.mean;
                out.push(((raw - feature.mean) / feature.std) as f32);
            }
            Some(out)
        }
        (Some(_), None) => return Err("the primary reads no clinical features".into()),
    };
    Ok(Sample { image, tabular })
}

/// The shadows' own backend instances, by target (model, version, backend): each loaded from
/// the served target's artifacts the first time a job needs it, at background priority, and
/// replaced when the served target is (a version swap).
#[derive(Default)]
struct Instances {
    loaded: Vec<(Arc<ServedModel>, String, Arc<Worker>)>,
}

impl Instances {
    /// The background worker of `backend` for `target`, loading one when there is none for this
    /// served version (blocking work, off the async threads); instances no pair uses any more
    /// are dropped.
    async fn get(
        &mut self,
        state: &State,
        target: &Arc<ServedModel>,
        backend: &str,
        pairs: &[Arc<Pair>],
    ) -> Result<Arc<Worker>, ServerError> {
        self.loaded.retain(|(m, b, _)| {
            pairs.iter().any(|p| {
                p.settings.target_name() == m.name()
                    && (p.settings.target_version.is_empty()
                        || p.settings.target_version == m.version())
                    && (p.settings.target_backend.is_empty() || p.settings.target_backend == *b)
            })
        });
        if let Some((_, _, w)) = self
            .loaded
            .iter()
            .find(|(m, b, _)| Arc::ptr_eq(m, target) && b == backend)
        {
            return Ok(w.clone());
        }
        let (registry, _) = state
            .loader
            .get()
            .ok_or_else(|| ServerError::Unavailable("the models are still loading".into()))?;
        let loader = registry.get(backend).ok_or_else(|| {
            ServerError::FailedPrecondition(format!("backend {backend} is not built in"))
        })?;
        let (artifacts, device) = (target.artifacts.clone(), target.device);
        let config = BatchConfig {
            max_batch: state.settings.scheduler.max_batch,
            max_delay: std::time::Duration::ZERO,
            // One job at a time, but a ModelInfer batch is up to max_batch samples.
            queue_capacity: state.settings.scheduler.max_batch.max(1),
            background: true,
        };
        let worker = blocking(move || {
            Worker::spawn(
                &artifacts,
                device,
                loader,
                config,
                Arc::new(tokio::sync::Notify::new()),
                Arc::new(ModelStats::default()),
            )
        })
        .await?;
        let worker = Arc::new(worker);
        self.loaded
            .push((target.clone(), backend.to_string(), worker.clone()));
        Ok(worker)
    }
}

/// Runs queued shadow jobs one at a time until the server stops.
pub(super) async fn run(state: Arc<State>, mut rx: tokio::sync::mpsc::Receiver<Job>) {
    let mut instances = Instances::default();
    while let Some(job) = rx.recv().await {
        shadow_one(&state, &mut instances, job).await;
    }
}

/// Grades one job on its own instance of the target and adds the comparisons (or counts a
/// failure).
async fn shadow_one(state: &State, instances: &mut Instances, job: Job) {
    let pair = job.pair.clone();
    let graded = async {
        let models = state.models()?;
        let s = &pair.settings;
        let target = models
            .get_version(s.target_name(), &s.target_version)?
            .clone();
        let backend = target.worker(&s.target_backend)?.0.to_string();
        let pairs = state.traffic.pairs();
        let worker = instances.get(state, &target, &backend, &pairs).await?;
        let inputs = job
            .inputs
            .iter()
            .map(|i| {
                adapt(
                    i,
                    &job.primary.artifacts.manifest,
                    &target.artifacts.manifest,
                )
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(ServerError::FailedPrecondition)?;
        let n = inputs.len().max(1);
        let start = Instant::now();
        let logits = worker.predict_many(inputs).await?;
        Ok::<_, ServerError>((logits, start.elapsed().as_secs_f64() * 1e3 / n as f64))
    }
    .await;
    match graded {
        Err(e) => {
            pair.stats.failed();
            pair.count("failed");
            tracing::warn!(model = %pair.primary, shadow = %pair.shadow, study = %job.study, error = %e, "shadow request failed");
        }
        Ok((logits, shadow_ms)) => {
            for (p, s) in job.logits.iter().zip(&logits) {
                compare(&pair, p, s, job.ms, shadow_ms, &job.study);
            }
        }
    }
}

/// Adds one comparison of primary and shadow logits to the pair's figures and gauges; logs a
/// disagreement by study handle and grades only.
fn compare(
    pair: &Pair,
    primary: &[f32],
    shadow: &[f32],
    primary_ms: f64,
    shadow_ms: f64,
    study: &str,
) {
    let (Ok(p), Ok(s)) = (
        osteo_pipeline::grade(None, primary),
        osteo_pipeline::grade(None, shadow),
    ) else {
        pair.stats.failed();
        pair.count("failed");
        return;
    };
    let max_abs_diff = p
        .probabilities
        .iter()
        .zip(&s.probabilities)
        .map(|(a, b)| f64::from((a - b).abs()))
        .fold(0.0, f64::max);
    let (agreement, kappa) = pair.stats.compared(Comparison {
        primary: p.grade.index(),
        shadow: s.grade.index(),
        max_abs_diff,
        primary_ms,
        shadow_ms,
    });
    pair.count("compared");
    let labels = [
        ("model", pair.primary.clone()),
        ("shadow", pair.shadow.clone()),
    ];
    metrics::gauge!("osteo_shadow_grade_agreement", &labels).set(agreement);
    metrics::gauge!("osteo_shadow_kappa", &labels).set(kappa);
    metrics::histogram!("osteo_shadow_abs_prob_diff", &labels).record(max_abs_diff);
    if primary_ms > 0.0 {
        metrics::histogram!("osteo_shadow_latency_ratio", &labels).record(shadow_ms / primary_ms);
    }
    if p.grade != s.grade {
        tracing::info!(
            model = %pair.primary,
            shadow = %pair.shadow,
            study = %study,
            primary_grade = p.grade.name(),
            shadow_grade = s.grade.name(),
            max_abs_diff,
            "shadow grade differs from the primary's"
        );
    }
}
