//! Live-traffic experiments: `[[shadow]]` pairs that mirror a model's requests to another
//! (model, version, backend), `[[canary]]` weighted splits of one model's requests, and the
//! `[traffic]` table that bounds the shadows and names the file they may be reloaded from.

use crate::error::ServerError;
use serde::{Deserialize, Serialize};

/// `[traffic]`: where the `[[shadow]]` and `[[canary]]` tables come from and how much shadow
/// work may wait.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrafficSettings {
    /// A TOML file of `[[shadow]]` and `[[canary]]` tables that replaces this file's and is read
    /// again whenever it changes, so weights and shadows change without a restart ("" = this
    /// file's tables, fixed until restart).
    pub file: String,
    /// Seconds between looks at `file` for changes.
    pub poll_s: u64,
    /// Shadow requests waiting at once, across every pair; a mirrored request that finds the
    /// queue full is dropped and counted, never waited for. The shadows run one at a time on
    /// background-priority instances of their targets.
    pub shadow_queue: usize,
    /// Comparisons per shadow pair that GetShadowReport's figures and bootstrap intervals are
    /// computed over (the most recent ones; the counts and the confusion matrix cover all).
    pub report_window: usize,
}

impl Default for TrafficSettings {
    fn default() -> Self {
        Self {
            file: String::new(),
            poll_s: 10,
            shadow_queue: 64,
            report_window: 10_000,
        }
    }
}

/// One `[[shadow]]` table: a fraction of `model`'s Classify, Explain, GradeStudy and ModelInfer
/// requests (optionally only those answered by `version` / `backend`) graded again by the
/// target, after the primary answered, and compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowSettings {
    /// The primary model's name.
    pub model: String,
    /// Only requests answered by this version ("" = any).
    #[serde(default)]
    pub version: String,
    /// Only requests answered by this backend ("" = any).
    #[serde(default)]
    pub backend: String,
    /// The shadow's model ("" = the primary's).
    #[serde(default)]
    pub target_model: String,
    /// The shadow's version ("" = the target model's default version).
    #[serde(default)]
    pub target_version: String,
    /// The shadow's backend ("" = the target model's default backend).
    #[serde(default)]
    pub target_backend: String,
    /// Share of the matching requests mirrored, in (0, 1].
    pub fraction: f64,
}

impl ShadowSettings {
    /// The primary's label: `model[:version][@backend]`, from configuration only.
    pub fn primary_label(&self) -> String {
        label(&self.model, &self.version, &self.backend)
    }

    /// The target's model name.
    pub fn target_name(&self) -> &str {
        if self.target_model.is_empty() {
            &self.model
        } else {
            &self.target_model
        }
    }

    /// The target's label: `model[:version][@backend]`, from configuration only.
    pub fn target_label(&self) -> String {
        label(
            self.target_name(),
            &self.target_version,
            &self.target_backend,
        )
    }
}

/// One `[[canary]]` table: the requests for `model` that name no version (or no backend) split
/// between targets by weight, sticky per study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanarySettings {
    /// The model whose requests are split.
    pub model: String,
    /// The targets and their weights.
    pub targets: Vec<CanaryTarget>,
}

/// One target of a `[[canary]]` split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryTarget {
    /// The version that answers ("" = the model's default version).
    #[serde(default)]
    pub version: String,
    /// The backend that answers ("" = the model's default backend).
    #[serde(default)]
    pub backend: String,
    /// Relative share of the requests (0 = none).
    pub weight: u32,
}

impl CanaryTarget {
    /// The target's label, `version@backend` with `default` for an empty part.
    pub fn label(&self) -> String {
        let or_default = |s: &str| {
            if s.is_empty() {
                "default".to_string()
            } else {
                s.to_string()
            }
        };
        format!(
            "{}@{}",
            or_default(&self.version),
            or_default(&self.backend)
        )
    }
}

/// The tables a traffic file holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrafficPolicy {
    /// `[[shadow]]` pairs.
    pub shadow: Vec<ShadowSettings>,
    /// `[[canary]]` splits.
    pub canary: Vec<CanarySettings>,
}

impl TrafficPolicy {
    /// Parses a traffic file's text (`[[shadow]]` and `[[canary]]` tables only) and checks it.
    pub fn parse(text: &str, what: &str) -> Result<Self, ServerError> {
        let policy: Self = toml::from_str(text)
            .map_err(|e| ServerError::Config(format!("{what}: {}", e.message())))?;
        policy.validate(what)?;
        Ok(policy)
    }

    /// Checks what the types do not: fractions in (0, 1], named models, positive total weights,
    /// one split per model, distinct pairs and targets.
    pub fn validate(&self, what: &str) -> Result<(), ServerError> {
        let bad = |key: String, why: &str| Err(ServerError::Config(format!("{what}: {key} {why}")));
        let mut pairs = std::collections::BTreeSet::new();
        for (i, s) in self.shadow.iter().enumerate() {
            if s.model.is_empty() {
                return bad(
                    format!("shadow[{i}].model"),
                    "is empty: name the primary model",
                );
            }
            if !(s.fraction > 0.0 && s.fraction <= 1.0) {
                return bad(
                    format!("shadow[{i}].fraction"),
                    "must be in (0, 1]: the share of requests mirrored",
                );
            }
            if !pairs.insert((s.primary_label(), s.target_label())) {
                return bad(
                    format!("shadow[{i}]"),
                    "repeats an earlier pair (same primary and target)",
                );
            }
            if s.primary_label() == s.target_label() {
                return bad(format!("shadow[{i}]"), "mirrors a model onto itself");
            }
        }
        let mut models = std::collections::BTreeSet::new();
        for (i, c) in self.canary.iter().enumerate() {
            if c.model.is_empty() {
                return bad(
                    format!("canary[{i}].model"),
                    "is empty: name the model to split",
                );
            }
            if !models.insert(c.model.as_str()) {
                return bad(
                    format!("canary[{i}].model"),
                    "has a split already: one [[canary]] per model",
                );
            }
            if c.targets.iter().map(|t| u64::from(t.weight)).sum::<u64>() == 0 {
                return bad(
                    format!("canary[{i}].targets"),
                    "need a positive total weight (e.g. weight = 90 and weight = 10)",
                );
            }
            let mut labels = std::collections::BTreeSet::new();
            for t in &c.targets {
                if !labels.insert(t.label()) {
                    return bad(
                        format!("canary[{i}].targets"),
                        "name one (version, backend) twice",
                    );
                }
            }
        }
        Ok(())
    }
}

/// `model[:version][@backend]`.
fn label(model: &str, version: &str, backend: &str) -> String {
    let mut s = model.to_string();
    if !version.is_empty() {
        s.push(':');
        s.push_str(version);
    }
    if !backend.is_empty() {
        s.push('@');
        s.push_str(backend);
    }
    s
}
