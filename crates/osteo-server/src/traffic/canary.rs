//! Canary splits: a model's requests that name no version divided between (version, backend)
//! targets by weight, the same study always meeting the same target (on every replica: the
//! choice is a hash of the study, not a coin).

use crate::config::{CanarySettings, CanaryTarget};
use crate::error::ServerError;
use crate::models::ModelSet;

/// What a sticky choice is keyed on: the study's own identity when the server knows it before
/// grading (a stored or ingested study), else the client's affinity key; without either the
/// choice is random.
#[derive(Debug, Clone, Default)]
pub struct StickyKey(pub Option<String>);

/// Where a canary sent one request: the version and backend to ask for, and the target's label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The version to serve ("" = the default version).
    pub version: String,
    /// The backend to serve ("" = the default backend).
    pub backend: String,
    /// The target's configured label (`version@backend`).
    pub target: String,
}

/// One model's split, checked against the served models.
pub(super) struct Canary {
    model: String,
    targets: Vec<(CanaryTarget, String)>,
    total: u64,
}

impl Canary {
    /// Checks that the model and every target (version and backend) are served.
    pub(super) fn compile(c: &CanarySettings, models: &ModelSet) -> Result<Self, ServerError> {
        let bad = |e: ServerError| ServerError::Config(format!("canary for {}: {e}", c.model));
        let model = models.get(&c.model).map_err(bad)?;
        if model.name() != c.model {
            return Err(ServerError::Config(format!(
                "canary for {}: name the model as it is served",
                c.model
            )));
        }
        for t in &c.targets {
            let v = models.get_version(&c.model, &t.version).map_err(bad)?;
            v.worker(&t.backend).map_err(bad)?;
        }
        Ok(Self {
            model: c.model.clone(),
            targets: c.targets.iter().map(|t| (t.clone(), t.label())).collect(),
            total: c.targets.iter().map(|t| u64::from(t.weight)).sum(),
        })
    }

    /// The target of a request keyed by `key`: a point in [0, total weight) from a hash of the
    /// model and the key (random without a key), and the target whose share holds it.
    pub(super) fn pick(&self, key: &StickyKey) -> Route {
        let point = match &key.0 {
            Some(k) => {
                let mut h = blake3::Hasher::new();
                h.update(self.model.as_bytes());
                h.update(&[0]);
                h.update(k.as_bytes());
                let bytes = h.finalize();
                let mut first = [0u8; 8];
                first.copy_from_slice(&bytes.as_bytes()[..8]);
                u64::from_le_bytes(first) % self.total.max(1)
            }
            None => rand::random::<u64>() % self.total.max(1),
        };
        let mut upto = 0u64;
        for (t, label) in &self.targets {
            upto += u64::from(t.weight);
            if point < upto {
                return route(t, label);
            }
        }
        // Unreachable with a positive total; the last target otherwise.
        let (t, label) = &self.targets[self.targets.len() - 1];
        route(t, label)
    }
}

fn route(t: &CanaryTarget, label: &str) -> Route {
    Route {
        version: t.version.clone(),
        backend: t.backend.clone(),
        target: label.to_string(),
    }
}

impl super::Traffic {
    /// Whether any canary split is in force (requests skip the routing work when none is).
    pub fn has_canaries(&self) -> bool {
        !self.compiled().canaries.is_empty()
    }

    /// The canary route of a request for `model` (a served name) naming `version` and
    /// `backend`: none when the model has no split or the request names its version.
    pub fn canary(
        &self,
        model: &str,
        version: &str,
        backend: &str,
        key: &StickyKey,
    ) -> Option<Route> {
        if !version.is_empty() {
            return None;
        }
        let compiled = self.compiled();
        let mut r = compiled.canaries.get(model)?.pick(key);
        if !backend.is_empty() {
            r.backend = backend.to_string();
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(weights: &[u32]) -> Canary {
        let targets: Vec<(CanaryTarget, String)> = weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| {
                let t = CanaryTarget {
                    version: (i + 1).to_string(),
                    backend: String::new(),
                    weight,
                };
                let l = t.label();
                (t, l)
            })
            .collect();
        Canary {
            model: "m".into(),
            total: weights.iter().map(|&w| u64::from(w)).sum(),
            targets,
        }
    }

    #[test]
    fn a_study_always_meets_the_same_target_and_shares_follow_the_weights() {
        let c = split(&[90, 10]);
        let mut second = 0;
        for i in 0..2000 {
            let key = StickyKey(Some(format!("1.2.826.0.1.{i}")));
            let r = c.pick(&key);
            assert_eq!(r, c.pick(&key), "sticky");
            if r.version == "2" {
                second += 1;
            }
        }
        // 10% of 2000 = 200; a binomial's 4.5 sigma is about 60.
        assert!(
            (140..=260).contains(&second),
            "{second} of 2000 on the 10% target"
        );
    }

    #[test]
    fn a_zero_weight_target_gets_nothing() {
        let c = split(&[0, 5]);
        for i in 0..200 {
            assert_eq!(c.pick(&StickyKey(Some(i.to_string()))).version, "2");
            assert_eq!(c.pick(&StickyKey(None)).version, "2");
        }
    }
}
